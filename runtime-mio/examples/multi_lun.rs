//! Several LUNs served by the mio reactor runtime: a custom logged RAM device with 4 KiB
//! blocks, a thin [`MemoryStore`](backstore::MemoryStore) and a read-only LUN.
//!
//! ```text
//! cargo run -p runtime-mio --example multi_lun                # serve on 127.0.0.1:3260
//! cargo run -p runtime-mio --example multi_lun -- --self-test # CI: libiscsi checks
//! ```
//!
//! `--self-test` serves on a free port with two reactors, lists the LUNs with `iscsi-ls`,
//! checks each LUN's geometry with `iscsi-readcapacity16`, runs libiscsi's WRITE(16)/READ(16)
//! tests on LUN 0 and its read-only tests on LUN 2, checks the custom device's write log
//! and exits 0 (non-zero on any failure).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstore::{BlockDevice, DeviceStore, MemoryStore, StoreError};
use iscsi_target::driver::DriverConfig;
use iscsi_target::{LunOptions, TargetBuilder};
use runtime_mio::MioConfig;

const IQN: &str = "iqn.2026-11.org.tgt-rs.example:multi-lun";
const BLOCK: u32 = 4096;
const BLOCKS: u64 = 4096; // 16 MiB

/// RAM blocks that count the blocks written to them.
struct CountingDisk {
    data: Mutex<Vec<u8>>,
    written: AtomicU64,
}

impl BlockDevice for CountingDisk {
    fn block_size(&self) -> u32 {
        BLOCK
    }

    fn num_blocks(&self) -> u64 {
        BLOCKS
    }

    // The adapter only passes ranges inside the device.
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let at = (lba * u64::from(BLOCK)) as usize;
        let data = self.data.lock().map_err(|_| StoreError::IO)?;
        buf.copy_from_slice(&data[at..at + buf.len()]);
        Ok(())
    }

    fn write(&self, lba: u64, buf: &[u8], _fua: bool) -> Result<(), StoreError> {
        let at = (lba * u64::from(BLOCK)) as usize;
        self.data.lock().map_err(|_| StoreError::IO)?[at..at + buf.len()].copy_from_slice(buf);
        self.written
            .fetch_add(buf.len() as u64 / u64::from(BLOCK), Ordering::Relaxed);
        Ok(())
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e} (install libiscsi-bin)"))?;
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if o.status.success() && !out.contains("FAILED") {
        Ok(out)
    } else {
        Err(format!("{cmd} {args:?} failed:\n{out}"))
    }
}

fn expect(out: &str, what: &str) -> Result<(), String> {
    if out.contains(what) {
        Ok(())
    } else {
        Err(format!("expected {what:?} in:\n{out}"))
    }
}

fn self_test(addr: SocketAddr, disk: &CountingDisk) -> Result<(), String> {
    let url = |lun: u32| format!("iscsi://{addr}/{IQN}/{lun}");
    let ls = run("iscsi-ls", &["-s", &format!("iscsi://{addr}")])?;
    for lun in ["Lun:0", "Lun:1", "Lun:2"] {
        expect(&ls, lun)?;
    }
    let cap = run("iscsi-readcapacity16", &[&url(0)])?;
    expect(&cap, "LOGICAL BLOCK LENGTH IN BYTES:4096")?;
    expect(&cap, &format!("Total size:{}", BLOCKS * u64::from(BLOCK)))?;
    let cap = run("iscsi-readcapacity16", &[&url(1)])?;
    expect(&cap, "LOGICAL BLOCK LENGTH IN BYTES:512")?;
    expect(&cap, "LBPME:1")?;
    run(
        "iscsi-test-cu",
        &[
            "--dataloss",
            "--test=SCSI.Write16.Simple,SCSI.Read16.Simple",
            &url(0),
        ],
    )?;
    run(
        "iscsi-test-cu",
        &["--dataloss", "--test=SCSI.ReadOnly", &url(2)],
    )?;
    let written = disk.written.load(Ordering::Relaxed);
    if written == 0 {
        return Err("no write reached the custom device".into());
    }
    println!(
        "self-test ok: 3 LUNs listed, geometry checked, WRITE/READ(16) on LUN 0 \
         ({written} blocks written), read-only LUN 2 refuses writes"
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = std::env::args().nth(1);
    let testing = arg.as_deref() == Some("--self-test");
    let listen: SocketAddr = match arg.as_deref() {
        Some("--self-test") => "127.0.0.1:0".parse()?,
        Some(a) => a.parse()?,
        None => "127.0.0.1:3260".parse()?,
    };

    let disk = Arc::new(CountingDisk {
        data: Mutex::new(vec![0; (BLOCKS * u64::from(BLOCK)) as usize]),
        written: AtomicU64::new(0),
    });
    let registry = TargetBuilder::new(IQN)
        .lun(0, Arc::new(DeviceStore::new(disk.clone())))
        .lun_labeled(
            1,
            Arc::new(MemoryStore::new(32 << 20, 512)?),
            LunOptions::default().thin(true),
            "memory",
        )
        .lun_with(
            2,
            Arc::new(MemoryStore::new(8 << 20, 512)?),
            LunOptions::default().readonly(true),
        )
        .build()?;
    let server = runtime_mio::Server::start(
        registry,
        DriverConfig::default(),
        &[listen],
        MioConfig {
            reactors: 2,
            ..MioConfig::default()
        },
    )?;
    let addr = server.local_addrs()[0];
    println!("serving {IQN} (LUNs 0, 1, 2) on {addr}");

    let result = if testing {
        self_test(addr, &disk)
    } else {
        println!("press Enter to stop");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(())
    };
    server.shutdown(Duration::from_secs(1));
    result.map_err(Into::into)
}
