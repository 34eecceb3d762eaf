//! A custom in-memory block device with a write log, served with the thread-per-connection
//! runtime: the shortest path from "I have blocks" to "initiators can use them".
//!
//! ```text
//! cargo run -p runtime-threads --example memdisk                # serve on 127.0.0.1:3260
//! cargo run -p runtime-threads --example memdisk -- 0.0.0.0:3260
//! cargo run -p runtime-threads --example memdisk -- --self-test # CI: libiscsi round trip
//! ```
//!
//! `--self-test` serves on a free port, runs libiscsi's `iscsi-inq`,
//! `iscsi-readcapacity16` and its WRITE(10)/READ(10) tests against it, checks that the
//! writes reached the device's log, stops the server and exits 0 (non-zero on any failure).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstore::{BlockDevice, DeviceStore, StoreError};
use iscsi_target::TargetBuilder;
use iscsi_target::driver::DriverConfig;

const IQN: &str = "iqn.2026-11.org.tgt-rs.example:memdisk";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 32768; // 16 MiB

/// One logged write.
#[derive(Debug, Clone, Copy)]
struct Write {
    lba: u64,
    blocks: u64,
    fua: bool,
}

/// RAM blocks plus a log of every write.
struct LoggedDisk {
    data: Mutex<Vec<u8>>,
    log: Mutex<Vec<Write>>,
}

impl LoggedDisk {
    fn new() -> Self {
        LoggedDisk {
            data: Mutex::new(vec![0; (BLOCKS * u64::from(BLOCK)) as usize]),
            log: Mutex::new(Vec::new()),
        }
    }
}

impl BlockDevice for LoggedDisk {
    fn block_size(&self) -> u32 {
        BLOCK
    }

    fn num_blocks(&self) -> u64 {
        BLOCKS
    }

    // The adapter only passes ranges inside the device, so the slicing cannot go out of
    // bounds.
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let at = (lba * u64::from(BLOCK)) as usize;
        let data = self.data.lock().map_err(|_| StoreError::IO)?;
        buf.copy_from_slice(&data[at..at + buf.len()]);
        Ok(())
    }

    fn write(&self, lba: u64, buf: &[u8], fua: bool) -> Result<(), StoreError> {
        let at = (lba * u64::from(BLOCK)) as usize;
        self.data.lock().map_err(|_| StoreError::IO)?[at..at + buf.len()].copy_from_slice(buf);
        self.log.lock().map_err(|_| StoreError::IO)?.push(Write {
            lba,
            blocks: buf.len() as u64 / u64::from(BLOCK),
            fua,
        });
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

fn self_test(addr: SocketAddr, disk: &DeviceStore<Arc<LoggedDisk>>) -> Result<(), String> {
    let url = format!("iscsi://{addr}/{IQN}/0");
    let inq = run("iscsi-inq", &[&url])?;
    if !inq.contains("TGT-RS") {
        return Err(format!("unexpected INQUIRY data:\n{inq}"));
    }
    let cap = run("iscsi-readcapacity16", &[&url])?;
    let size = BLOCKS * u64::from(BLOCK);
    if !cap.contains(&format!("Total size:{size}")) {
        return Err(format!("unexpected capacity:\n{cap}"));
    }
    run(
        "iscsi-test-cu",
        &[
            "--dataloss",
            "--test=SCSI.Write10.Simple,SCSI.Read10.Simple",
            &url,
        ],
    )?;
    let log = disk.device().log.lock().map_err(|e| e.to_string())?;
    let blocks: u64 = log.iter().map(|w| w.blocks).sum();
    if log.is_empty() {
        return Err("no write reached the device".into());
    }
    println!(
        "self-test ok: INQUIRY, READ CAPACITY(16), WRITE/READ(10); {} writes, {blocks} blocks \
         logged (first: lba {} x{} fua={})",
        log.len(),
        log[0].lba,
        log[0].blocks,
        log[0].fua
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

    // The device, shared with the target (Arc<LoggedDisk> is a BlockDevice too).
    let disk = Arc::new(LoggedDisk::new());
    let store = Arc::new(DeviceStore::new(disk.clone()));
    let registry = TargetBuilder::new(IQN).lun(0, store.clone()).build()?;
    let server = runtime_threads::Server::start(registry, DriverConfig::default(), &[listen])?;
    let addr = server.local_addrs()[0];
    println!("serving {IQN} on {addr}");

    let result = if testing {
        self_test(addr, &store)
    } else {
        println!("press Enter to stop");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        println!(
            "{} writes logged",
            disk.log.lock().map(|l| l.len()).unwrap_or(0)
        );
        Ok(())
    };
    server.shutdown(Duration::from_secs(1));
    result.map_err(Into::into)
}
