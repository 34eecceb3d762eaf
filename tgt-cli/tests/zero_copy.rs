//! Zero-copy reads: on the mio runtime a READ of at least 32 KiB that the page cache holds
//! goes from the LUN's file to the socket with sendfile, never through a task buffer. These
//! tests check the bytes an initiator receives on that path (Data-In split by the
//! initiator's MaxRecvDataSegmentLength, padding after a segment of odd length, reads
//! beside writes in flight, buffers reused between reads and writes), that `stats` counts
//! the path, and that data digests and the threads runtime keep to the copying path.

mod common;

use backstore::testing::pattern;
use common::client::Client;
use common::*;

const IQN: &str = "iqn.2026-11.org.tgt-rs:zero-copy";
const HOST: &str = "iqn.2026-11.org.tgt-rs:zc-host";
/// LUN 1 in the single-level LUN format of the SCSI Command PDU.
const LUN: u64 = 1 << 48;
const BS: u32 = 512;
/// Blocks of the 16 MiB LUN.
const BLOCKS: u64 = 32768;

fn config() -> String {
    format!(
        "[[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n\n\
         [[target.lun]]\nlun = 1\nbacking_store = \"DIR/lun.img\"\nsize = \"16M\"\n"
    )
}

/// Whether the kernel has cachestat(2) (Linux 6.5), without which nothing is zero-copy.
fn has_cachestat() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 5)
}

fn zero_copy_reads(d: &Daemon) -> u64 {
    let stats = d.json(&["stats", "--json"]);
    stats[0]["luns"][0]["zero_copy_reads"].as_u64().unwrap()
}

/// A session with ISID tail `tail` (distinct tails: distinct sessions).
fn session(d: &Daemon, tail: u8, keys: &[(&str, &str)]) -> Client {
    let mut c = Client::login_with(d.port, IQN, HOST, tail, keys).unwrap();
    c.clear_unit_attentions(LUN).unwrap();
    c
}

/// Writes the whole LUN, then reads it back in pieces of many sizes (below and above the
/// zero-copy threshold) with several in flight; every byte must match.
fn round_trip(c: &mut Client, seed: u64) -> Vec<u8> {
    let image = pattern(seed, (BLOCKS * u64::from(BS)) as usize);
    c.write_blocks(LUN, 0, &image, BS, false, 8).unwrap();
    let whole = c.read_blocks(LUN, 0, BLOCKS, BS, 4).unwrap();
    assert!(whole == image, "whole-LUN read differs");
    // Odd sizes and offsets: 4 KiB (copied), 33 KiB, 127.5 KiB, 1 MiB.
    for (lba, blocks) in [(7u64, 8u64), (1001, 66), (5000, 255), (9999, 2048)] {
        let got = c.read_blocks(LUN, lba, blocks, BS, 1).unwrap();
        let at = (lba * u64::from(BS)) as usize;
        assert!(
            got == image[at..at + got.len()],
            "read of {blocks} blocks at {lba} differs"
        );
    }
    image
}

#[test]
fn mio_reads_from_the_page_cache_arrive_intact() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), "mio", &config());
    assert_eq!(zero_copy_reads(&d), 0);

    // Default MaxRecvDataSegmentLength (8 KiB): a 256 KiB read is 32 Data-In PDUs, each a
    // header then a file range.
    let mut c = session(&d, 1, &[]);
    let image = round_trip(&mut c, 1);
    let n = zero_copy_reads(&d);
    if n == 0 && !has_cachestat() {
        eprintln!("skipping the zero-copy counts: cachestat(2) needs Linux 6.5");
        return;
    }
    assert!(n > 0, "no read took the zero-copy path");

    // A segment length that is not a multiple of 4: every Data-In but the last is followed
    // by padding after its file range.
    let mut odd = session(&d, 2, &[("MaxRecvDataSegmentLength", "4099")]);
    let got = odd.read_blocks(LUN, 3, 700, BS, 2).unwrap();
    assert!(got == image[3 * 512..703 * 512], "odd-segment read differs");
    assert!(zero_copy_reads(&d) > n);

    // Overwrite half the LUN and read everything back: reads see the new data, and the
    // reused buffers carry nothing over between reads and writes.
    let fresh = pattern(2, BLOCKS as usize * 256);
    c.write_blocks(LUN, BLOCKS / 2, &fresh, BS, true, 8)
        .unwrap();
    let mut want = image;
    want[(BLOCKS as usize / 2) * 512..].copy_from_slice(&fresh);
    let got = c.read_blocks(LUN, 0, BLOCKS, BS, 8).unwrap();
    assert!(got == want, "read after overwrite differs");

    // Data digests: the digest is over bytes the target holds, so those reads copy.
    let before = zero_copy_reads(&d);
    let mut dig = session(
        &d,
        3,
        &[("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")],
    );
    let got = dig.read_blocks(LUN, 0, BLOCKS, BS, 4).unwrap();
    assert!(got == want, "read with digests differs");
    assert_eq!(
        zero_copy_reads(&d),
        before,
        "digest reads must not be zero-copy"
    );
}

#[test]
fn threads_runtime_copies_and_counts_no_zero_copy_reads() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), "threads", &config());
    let mut c = session(&d, 1, &[]);
    let image = round_trip(&mut c, 3);
    // Long segments of odd length (padding follows each), many PDUs per read; then with
    // data digests.
    for (tail, keys) in [
        (2, &[("MaxRecvDataSegmentLength", "65537")][..]),
        (
            3,
            &[
                ("MaxRecvDataSegmentLength", "65537"),
                ("HeaderDigest", "CRC32C"),
                ("DataDigest", "CRC32C"),
            ][..],
        ),
    ] {
        let mut s = session(&d, tail, keys);
        let got = s.read_blocks(LUN, 3, 4093, BS, 4).unwrap();
        assert!(
            got == image[3 * 512..4096 * 512],
            "read with {keys:?} differs"
        );
        let whole = s.read_blocks(LUN, 0, BLOCKS, BS, 8).unwrap();
        assert!(whole == image, "whole-LUN read with {keys:?} differs");
    }
    assert_eq!(zero_copy_reads(&d), 0);
}
