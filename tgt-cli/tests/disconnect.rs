//! Initiators that vanish mid-command: the daemon must neither panic nor hang, and must keep
//! serving others. Uses iscsi-proto's test initiator over a real socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

mod common;
use common::*;

use iscsi_proto::session::initiator::{CommandSpec, Initiator, write_text};
use iscsi_proto::wire::{Digests, Pdu, Stage, Status, pdu_len};

const IQN: &str = "iqn.2026-11.org.tgt-rs:cut";

fn start(dir: &std::path::Path, runtime: &str) -> Daemon {
    let body = format!(
        "[[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n\
         [[target.lun]]\nlun = 1\nbacking_store = \"DIR/d.img\"\nsize = \"64M\"\n"
    );
    Daemon::start(dir, runtime, &body)
}

struct Client {
    sock: TcpStream,
    ini: Initiator,
    rx: Vec<u8>,
}

impl Client {
    fn connect(port: u16, isid_tail: u8) -> Client {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut c = Client {
            sock,
            ini: Initiator::new([0x80, 0, 0, 0, 1, isid_tail], 1),
            rx: Vec::new(),
        };
        let mut text = [0u8; 512];
        let n = write_text(
            &mut text,
            &[
                ("InitiatorName", "iqn.2026-11.org.tgt-rs:cutter"),
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
        let (kind, _) = c.next();
        assert_eq!(kind, "login", "login answered");
        // Consume the POWER ON unit attention of the new I_T nexus.
        c.send_command(&CommandSpec::read(1 << 48, &[0; 6], 0));
        assert_eq!(c.next().0, "response");
        c
    }

    /// Reads the next PDU; returns its kind and, for R2T, (ttt, offset, len).
    fn next(&mut self) -> (&'static str, (u32, u32, u32)) {
        loop {
            if let Status::Complete(n) = pdu_len(&self.rx, Digests::NONE) {
                if self.rx.len() >= n {
                    let buf: Vec<u8> = self.rx.drain(..n).collect();
                    let (pdu, _) = self.ini.receive(&buf).unwrap();
                    return match pdu {
                        Pdu::LoginResponse(r) => {
                            assert_eq!(r.status.class, 0, "login status {:?}", r.status);
                            ("login", (0, 0, 0))
                        }
                        Pdu::R2t(r) => ("r2t", (r.ttt, r.buffer_offset, r.desired_len)),
                        Pdu::DataIn(_) => ("data-in", (0, 0, 0)),
                        Pdu::ScsiResponse(_) => ("response", (0, 0, 0)),
                        _ => ("other", (0, 0, 0)),
                    };
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.sock.read(&mut chunk).unwrap();
            assert!(n > 0, "daemon closed the connection");
            self.rx.extend_from_slice(&chunk[..n]);
        }
    }

    fn send_command(&mut self, spec: &CommandSpec<'_>) -> u32 {
        let mut pdu = vec![0u8; 1024];
        let (itt, len) = self.ini.command(&mut pdu, spec).unwrap();
        self.sock.write_all(&pdu[..len]).unwrap();
        itt
    }
}

fn inquiry_works(port: u16) {
    let o = Command::new("iscsi-inq")
        .arg(format!("iscsi://127.0.0.1:{port}/{IQN}/1"))
        .output()
        .expect("iscsi-inq (apt-get install -y libiscsi-bin)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn cut_mid_write_and_read(runtime: &str) {
    let dir = tempdir();
    let d = start(dir.path(), runtime);
    for round in 0..3u8 {
        // A WRITE(10) of 1 MiB: take the R2T, send half the burst, vanish.
        let mut c = Client::connect(d.port, round);
        let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0x08, 0, 0];
        let itt = c.send_command(&CommandSpec::write(1 << 48, &cdb, 1 << 20, &[]));
        let (kind, (ttt, off, len)) = c.next();
        assert_eq!(kind, "r2t");
        let half = vec![0xabu8; (len / 2) as usize];
        let mut pdu = vec![0u8; half.len() + 128];
        let n = c
            .ini
            .data_out(&mut pdu, itt, ttt, 1 << 48, 0, off, &half, false)
            .unwrap();
        c.sock.write_all(&pdu[..n]).unwrap();
        drop(c);

        // A READ(10) of 8 MiB: vanish before reading the answer.
        let mut c = Client::connect(d.port, 100 + round);
        let cdb = [0x28, 0, 0, 0, 0, 0, 0, 0x40, 0, 0];
        c.send_command(&CommandSpec::read(1 << 48, &cdb, 8 << 20));
        drop(c);

        // Half a PDU header, then gone.
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        s.write_all(&[0x43, 0x87, 0, 0, 0, 0]).unwrap();
        drop(s);

        inquiry_works(d.port);
    }
    let mut d = d;
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "daemon still running"
    );
}

#[test]
fn threads_survive_disconnects_mid_command() {
    cut_mid_write_and_read("threads");
}

#[test]
fn mio_survives_disconnects_mid_command() {
    cut_mid_write_and_read("mio");
}
