//! The daemon with `bstype = "nbd"` LUNs served by real `qemu-nbd` processes (Debian
//! `qemu-utils`), reached by libiscsi's tools and iscsi-proto's test initiator, on both
//! runtimes; and `physical_block_size` as READ CAPACITY (16) reports it.
//!
//! The tests skip with a message when `qemu-nbd` is not installed; CI installs it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

use iscsi_proto::session::initiator::{CommandSpec, Initiator, write_text};
use iscsi_proto::wire::{DataInFlags, Digests, Pdu, Stage, Status, pdu_len};

const IQN: &str = "iqn.2026-11.org.tgt-rs:nbd";

fn have_qemu_nbd() -> bool {
    let ok = Command::new("qemu-nbd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: qemu-nbd is not installed (apt-get install qemu-utils)");
    }
    ok
}

/// A qemu-nbd serving `file` as export `exp` on a TCP port or a unix socket.
struct QemuNbd {
    child: Child,
    url: String,
}

impl QemuNbd {
    fn start(file: &Path, unix: Option<&Path>) -> QemuNbd {
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["-f", "raw", "-x", "exp", "--persistent", "-e", "8"]);
        let url = match unix {
            Some(sock) => {
                cmd.arg("-k").arg(sock);
                format!("nbd+unix:///exp?socket={}", sock.display())
            }
            None => {
                let port = free_port();
                cmd.args(["-b", "127.0.0.1", "-p", &port.to_string()]);
                format!("nbd://127.0.0.1:{port}/exp")
            }
        };
        let child = cmd
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu-nbd");
        let q = QemuNbd { child, url };
        let deadline = Instant::now() + Duration::from_secs(15);
        let opts = backstore::NbdOptions {
            connect_timeout: Duration::from_secs(1),
            ..backstore::NbdOptions::default()
        };
        while backstore::NbdStore::open(&q.url, &opts).is_err() {
            assert!(Instant::now() < deadline, "qemu-nbd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        q
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

/// An image of `size` bytes whose first MiB holds `pattern(seed)`.
fn image(dir: &Path, name: &str, size: u64, seed: u8) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(&pattern(seed, 1 << 20)).unwrap();
    f.set_len(size).unwrap();
    p
}

/// A logged-in session of iscsi-proto's test initiator.
struct Client {
    sock: TcpStream,
    ini: Initiator,
    rx: Vec<u8>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut c = Client {
            sock,
            ini: Initiator::new([0x80, 0, 0, 0, 2, 1], 1),
            rx: Vec::new(),
        };
        let mut text = [0u8; 512];
        let n = write_text(
            &mut text,
            &[
                ("InitiatorName", "iqn.2026-11.org.tgt-rs:nbd-client"),
                ("TargetName", IQN),
                ("SessionType", "Normal"),
                ("ImmediateData", "No"),
                ("InitialR2T", "Yes"),
            ],
        )
        .unwrap();
        let mut pdu = vec![0u8; 1024];
        let len = c
            .ini
            .login(
                &mut pdu,
                Stage::LoginOperational,
                Some(Stage::FullFeature),
                &text[..n],
            )
            .unwrap();
        c.sock.write_all(&pdu[..len]).unwrap();
        c.recv(&mut |p| matches!(p, Pdu::LoginResponse(r) if r.status.class == 0).then_some(0))
            .unwrap();
        c
    }

    /// Consumes the POWER ON unit attention a LUN reports first to a new I_T nexus.
    fn clear_unit_attention(&mut self, lun: u16, bs: u32) {
        let _ = self.read(lun, 0, 1, bs);
    }

    /// Reads PDUs until `f` returns a value.
    fn recv<T>(&mut self, f: &mut dyn FnMut(&Pdu<'_>) -> Option<T>) -> Option<T> {
        loop {
            if let Status::Complete(n) = pdu_len(&self.rx, Digests::NONE) {
                if self.rx.len() >= n {
                    let buf: Vec<u8> = self.rx.drain(..n).collect();
                    let (pdu, _) = self.ini.receive(&buf).unwrap();
                    if let Some(v) = f(&pdu) {
                        return Some(v);
                    }
                    continue;
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.sock.read(&mut chunk).unwrap();
            assert!(n > 0, "daemon closed the connection");
            self.rx.extend_from_slice(&chunk[..n]);
        }
    }

    /// READ(10) of `blocks` blocks of `bs` bytes: the data, or the SCSI status.
    fn read(&mut self, lun: u16, lba: u32, blocks: u16, bs: u32) -> Result<Vec<u8>, u8> {
        let l = lba.to_be_bytes();
        let b = blocks.to_be_bytes();
        let cdb = [0x28, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0];
        let len = u32::from(blocks) * bs;
        let mut pdu = vec![0u8; 1024];
        let (_, n) = self
            .ini
            .command(
                &mut pdu,
                &CommandSpec::read(u64::from(lun) << 48, &cdb, len),
            )
            .unwrap();
        self.sock.write_all(&pdu[..n]).unwrap();
        let mut data = vec![0u8; len as usize];
        let status = self
            .recv(&mut |p| match p {
                Pdu::DataIn(d) => {
                    let at = d.buffer_offset as usize;
                    data[at..at + d.data.len()].copy_from_slice(d.data);
                    d.flags.contains(DataInFlags::STATUS).then_some(d.status)
                }
                Pdu::ScsiResponse(r) => Some(r.status),
                _ => None,
            })
            .unwrap();
        if status == 0 { Ok(data) } else { Err(status) }
    }

    /// WRITE(10) of `data` (whole blocks of `bs` bytes), answering R2Ts; the SCSI status.
    fn write(&mut self, lun: u16, lba: u32, data: &[u8], bs: u32) -> u8 {
        let l = lba.to_be_bytes();
        let b = ((data.len() as u32 / bs) as u16).to_be_bytes();
        let cdb = [0x2a, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0];
        let lun = u64::from(lun) << 48;
        let mut pdu = vec![0u8; 1024];
        let (itt, n) = self
            .ini
            .command(
                &mut pdu,
                &CommandSpec::write(lun, &cdb, data.len() as u32, &[]),
            )
            .unwrap();
        self.sock.write_all(&pdu[..n]).unwrap();
        loop {
            enum Next {
                R2t(u32, u32, u32),
                Done(u8),
            }
            let next = self
                .recv(&mut |p| match p {
                    Pdu::R2t(r) => Some(Next::R2t(r.ttt, r.buffer_offset, r.desired_len)),
                    Pdu::ScsiResponse(r) => Some(Next::Done(r.status)),
                    _ => None,
                })
                .unwrap();
            match next {
                Next::Done(s) => return s,
                Next::R2t(ttt, off, len) => {
                    // One Data-Out per 8 KiB (the default MaxRecvDataSegmentLength).
                    let mut sent = 0u32;
                    let mut sn = 0;
                    while sent < len {
                        let k = (len - sent).min(8192);
                        let at = (off + sent) as usize;
                        let mut out = vec![0u8; k as usize + 128];
                        let n = self
                            .ini
                            .data_out(
                                &mut out,
                                itt,
                                ttt,
                                lun,
                                sn,
                                off + sent,
                                &data[at..at + k as usize],
                                sent + k == len,
                            )
                            .unwrap();
                        self.sock.write_all(&out[..n]).unwrap();
                        sent += k;
                        sn += 1;
                    }
                }
            }
        }
    }
}

fn readcap16(d: &Daemon, lun: u32) -> String {
    let o = run("iscsi-readcapacity16", &[&d.url(IQN, lun)]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    out
}

fn file_bytes(p: &Path, off: usize, len: usize) -> Vec<u8> {
    std::fs::read(p).unwrap()[off..off + len].to_vec()
}

fn serves_nbd_luns(runtime: &str) {
    if !have_qemu_nbd() {
        return;
    }
    require_libiscsi();
    let dir = tempdir();
    let img1 = image(dir.path(), "one.img", 32 << 20, 1);
    let img2 = image(dir.path(), "two.img", 16 << 20, 2);
    let tcp = QemuNbd::start(&img1, None);
    let unix = QemuNbd::start(&img2, Some(&dir.path().join("two.sock")));
    let body = format!(
        "[[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n\
         [[target.lun]]\nlun = 1\nbstype = \"nbd\"\nbacking_store = \"{}\"\n\
         physical_block_size = 4096\nthin = true\n\
         [[target.lun]]\nlun = 2\nbstype = \"nbd\"\nbacking_store = \"{}\"\n\
         size = \"16M\"\nblock_size = 4096\n",
        tcp.url, unix.url
    );
    let d = Daemon::start(dir.path(), runtime, &body);

    // Capacity from the servers; the physical block exponent from the config.
    let out = readcap16(&d, 1);
    assert!(
        out.contains(&format!("Total size:{}", 32u64 << 20)),
        "{out}"
    );
    assert!(out.contains("LOGICAL BLOCK LENGTH IN BYTES:512"), "{out}");
    assert!(
        out.contains("LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:3\n"),
        "4096-byte physical blocks: {out}"
    );
    assert!(out.contains("LBPME:1"), "thin: {out}");
    let out = readcap16(&d, 2);
    assert!(
        out.contains(&format!("Total size:{}", 16u64 << 20)),
        "{out}"
    );
    assert!(out.contains("LOGICAL BLOCK LENGTH IN BYTES:4096"), "{out}");
    assert!(
        out.contains("LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:0\n"),
        "{out}"
    );
    let o = run("iscsi-inq", &[&d.url(IQN, 1)]);
    assert!(o.status.success(), "{}", text(&o));

    // What the servers hold reads back through the target.
    let mut c = Client::connect(d.port);
    c.clear_unit_attention(1, 512);
    c.clear_unit_attention(2, 4096);
    let got = c.read(1, 0, 64, 512);
    assert!(got == Ok(pattern(1, 64 * 512)), "LUN 1 LBA 0");
    let got = c.read(2, 1, 4, 4096);
    assert!(
        got == Ok(pattern(2, 1 << 20)[4096..5 * 4096].to_vec()),
        "LUN 2 LBA 1"
    );

    // A write lands on the server and reads back.
    let w = pattern(77, 128 << 10);
    assert_eq!(c.write(1, 4096, &w, 512), 0);
    assert!(
        c.read(1, 4096, 256, 512) == Ok(w.clone()),
        "LUN 1 read back"
    );
    assert!(
        file_bytes(&img1, 4096 * 512, w.len()) == w,
        "on qemu-nbd's file"
    );
    let w2 = pattern(78, 3 * 4096);
    assert_eq!(c.write(2, 100, &w2, 4096), 0);
    assert!(c.read(2, 100, 3, 4096) == Ok(w2.clone()), "LUN 2 read back");
    assert!(
        file_bytes(&img2, 100 * 4096, w2.len()) == w2,
        "on qemu-nbd's file"
    );
    // Past the end: ILLEGAL REQUEST (CHECK CONDITION), nothing sent to the server.
    assert_eq!(c.read(2, 4096, 1, 4096), Err(2));
    drop(c);

    // libiscsi's own write/read tests.
    let o = run(
        "iscsi-test-cu",
        &[
            "--test=SCSI.Write10.Simple,SCSI.Read10.Simple,SCSI.Write16.Simple,SCSI.Verify16.Simple",
            &d.url(IQN, 1),
        ],
    );
    let out = text(&o);
    assert!(o.status.success() && !out.contains("FAILED"), "{out}");

    // `lun new` over the admin socket: an nbd URL (left as given) and a physical block size.
    d.ok(&[
        "lun",
        "new",
        "--tid",
        "1",
        "--lun",
        "3",
        "--bstype",
        "nbd",
        "--backing-store",
        &tcp.url,
        "--physical-block-size",
        "8192",
    ]);
    let out = readcap16(&d, 3);
    assert!(
        out.contains("LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:4\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("Total size:{}", 32u64 << 20)),
        "{out}"
    );
    let err = d.fails(&[
        "lun",
        "new",
        "--tid",
        "1",
        "--lun",
        "4",
        "--bstype",
        "nbd",
        "--backing-store",
        "nbd://127.0.0.1:1/exp",
    ]);
    assert!(
        err.starts_with("tgt-cli: --backing-store: nbd://127.0.0.1:1/exp: "),
        "{err}"
    );
    let err = d.fails(&[
        "lun",
        "new",
        "--tid",
        "1",
        "--lun",
        "4",
        "--bstype",
        "memory",
        "--size",
        "1M",
        "--physical-block-size",
        "1000",
    ]);
    assert_eq!(
        err.trim_end(),
        "tgt-cli: --physical-block-size 1000: must be a power-of-two multiple of block_size \
         512, at most 32768 blocks"
    );
    let saved = dir.path().join("saved.toml");
    d.ok(&["config", "save", saved.to_str().unwrap()]);
    let text = std::fs::read_to_string(&saved).unwrap();
    assert_eq!(
        text.matches("physical_block_size = 4096").count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("physical_block_size = 8192").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains(&format!("backing_store = \"{}\"", unix.url)),
        "{text}"
    );
    assert_eq!(text.matches("bstype = \"nbd\"").count(), 3, "{text}");

    let (code, log) = d.stop();
    assert_eq!(code, 0, "SIGTERM exits 0: {log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn threads_runtime_serves_nbd_luns() {
    serves_nbd_luns("threads");
}

#[test]
fn mio_runtime_serves_nbd_luns() {
    serves_nbd_luns("mio");
}

#[test]
fn unreachable_nbd_server_is_a_one_line_startup_error() {
    let dir = tempdir();
    let config = dir.path().join("bad.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = [\"127.0.0.1:{}\"]\n\
             [[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n\
             [[target.lun]]\nlun = 1\nbstype = \"nbd\"\nbacking_store = \"nbd://127.0.0.1:{port}/exp\"\n",
            free_port()
        ),
    )
    .unwrap();
    // check-config accepts it (the server is only contacted when the daemon starts).
    let o = Command::new(env!("CARGO_BIN_EXE_tgt-cli"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_tgt-cli"))
        .args(["daemon", "--log", "error", "--config"])
        .arg(&config)
        .arg("--control")
        .arg(dir.path().join("ctl.sock"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(
        last.starts_with(&format!(
            "tgt-cli: target 1 lun 1: nbd://127.0.0.1:{port}/exp: "
        )),
        "{err}"
    );
    assert!(last.contains("refused"), "{err}");
}

/// Bytes that depend on their absolute offset `at` (and `seed`): a misplaced block differs.
fn pattern_at(seed: u8, at: u64, len: usize) -> Vec<u8> {
    (at..at + len as u64)
        .map(|o| {
            let x = (o / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(seed);
            (x >> ((o % 8) * 8)) as u8 ^ (x >> 59) as u8
        })
        .collect()
}

/// Data written through iSCSI to an nbd LUN survives SIGTERM and a restart of the daemon:
/// read back through iSCSI by the new daemon and straight from qemu-nbd's image file.
fn nbd_data_survives_restart(runtime: &str) {
    use common::client::Client as Session;
    if !have_qemu_nbd() {
        return;
    }
    const LUN1: u64 = 1 << 48;
    let dir = tempdir();
    let size = 16usize << 20;
    let img = dir.path().join("restart.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(size as u64)
        .unwrap();
    let server = QemuNbd::start(&img, Some(&dir.path().join("restart.sock")));
    let body = format!(
        "[[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n\
         [[target.lun]]\nlun = 1\nbstype = \"nbd\"\nbacking_store = \"{}\"\n",
        server.url
    );
    let login = |d: &Daemon, tail: u8| {
        let mut c =
            Session::login(d.port, IQN, "iqn.2026-11.org.tgt-rs:nbd-client", tail).expect("login");
        c.clear_unit_attentions(LUN1).expect("unit attentions");
        c
    };
    // (LBA, blocks, seed, FUA): 4 MiB from LBA 0, odd places, the last 64 KiB, one FUA
    // block and an overwrite inside the first range.
    let writes: [(u64, u64, u8, bool); 5] = [
        (0, 8192, 11, false),
        (10_001, 77, 12, false),
        ((size / 512 - 128) as u64, 128, 13, false),
        (20_000, 1, 14, true),
        (4000, 300, 15, false),
    ];
    let mut model = vec![0u8; size];
    let d = Daemon::start(dir.path(), runtime, &body);
    let mut c = login(&d, 1);
    for (lba, blocks, seed, fua) in writes {
        let data = pattern_at(seed, lba * 512, blocks as usize * 512);
        c.write_blocks(LUN1, lba, &data, 512, fua, 8)
            .unwrap_or_else(|e| panic!("write LBA {lba}: {e}"));
        model[lba as usize * 512..][..data.len()].copy_from_slice(&data);
    }
    c.sync_cache(LUN1).expect("SYNCHRONIZE CACHE");
    let got = c.read_blocks(LUN1, 0, (size / 512) as u64, 512, 8).unwrap();
    assert!(got == model, "read back before the restart");
    drop(c);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "SIGTERM exits 0: {log}");

    let d = Daemon::start(dir.path(), runtime, &body);
    let mut c = login(&d, 2);
    let got = c.read_blocks(LUN1, 0, (size / 512) as u64, 512, 8).unwrap();
    let diff = got.iter().zip(&model).position(|(a, b)| a != b);
    assert!(
        got == model,
        "iSCSI read after the restart: first difference at {diff:?}"
    );
    drop(c);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "SIGTERM exits 0: {log}");
    assert!(!log.contains("panicked"), "{log}");
    let file = std::fs::read(&img).unwrap();
    let diff = file.iter().zip(&model).position(|(a, b)| a != b);
    assert!(
        file == model,
        "qemu-nbd's image file: first difference at {diff:?}"
    );
}

#[test]
fn mio_nbd_data_survives_daemon_restart() {
    nbd_data_survives_restart("mio");
}

#[test]
fn threads_nbd_data_survives_daemon_restart() {
    nbd_data_survives_restart("threads");
}
