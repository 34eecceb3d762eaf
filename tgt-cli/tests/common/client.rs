//! A minimal blocking iSCSI client for the integration tests, on iscsi-proto's test
//! initiator and a real socket: log in to one target, send SCSI commands, read what comes
//! back. For the cases libiscsi's command-line tools do not cover (persistent
//! reservations, hand-built PDUs).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use iscsi_proto::session::initiator::{CommandSpec, Initiator, write_text};
use iscsi_proto::wire::{DataInFlags, Digests, Pdu, Stage, Status, pdu_len};

/// One logged-in session (one connection).
pub struct Client {
    sock: TcpStream,
    ini: Initiator,
    rx: Vec<u8>,
}

/// A PDU from the target, reduced to what the tests look at.
pub enum Got {
    /// SCSI Response: ITT, status, sense data (empty without CHECK CONDITION).
    Status(u32, u8, Vec<u8>),
    /// Data-In: ITT, offset, data, and the status when it carries one.
    Data(u32, u32, Vec<u8>, Option<u8>),
    /// Anything else (NOP-In pings are answered).
    Other,
}

impl Client {
    /// Logs in to `target` on 127.0.0.1:`port` as `initiator` with ISID tail `isid_tail`.
    pub fn login(port: u16, target: &str, initiator: &str, isid_tail: u8) -> io::Result<Client> {
        let sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut c = Client {
            sock,
            ini: Initiator::new([0x80, 0, 0xc0, 0xde, 0, isid_tail], 1),
            rx: Vec::new(),
        };
        let mut text = [0u8; 512];
        let n = write_text(
            &mut text,
            &[
                ("InitiatorName", initiator),
                ("TargetName", target),
                ("SessionType", "Normal"),
                ("ImmediateData", "Yes"),
                ("InitialR2T", "Yes"),
            ],
        )
        .ok_or_else(|| io::Error::other("login text too long"))?;
        let mut pdu = vec![0u8; 1024];
        let len = c
            .ini
            .login(
                &mut pdu,
                Stage::LoginOperational,
                Some(Stage::FullFeature),
                &text[..n],
            )
            .map_err(io::Error::other)?;
        c.sock.write_all(&pdu[..len])?;
        let buf = c.next_pdu()?;
        match c.ini.receive(&buf) {
            Ok((Pdu::LoginResponse(r), _)) if r.status.class == 0 => {}
            _ => return Err(io::Error::other("login failed")),
        }
        c.ini.set_digests(Digests::NONE);
        Ok(c)
    }

    /// Sends one command; returns its ITT.
    pub fn send(&mut self, spec: &CommandSpec<'_>) -> io::Result<u32> {
        let mut pdu = vec![0u8; spec.data.len() + 256];
        let (itt, len) = self.ini.command(&mut pdu, spec).map_err(io::Error::other)?;
        self.sock.write_all(&pdu[..len])?;
        Ok(itt)
    }

    /// The next whole PDU, as bytes.
    pub fn next_pdu(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Status::Complete(n) = pdu_len(&self.rx, Digests::NONE) {
                if self.rx.len() >= n {
                    return Ok(self.rx.drain(..n).collect());
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.sock.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.rx.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next PDU, reduced.
    pub fn next(&mut self) -> io::Result<Got> {
        let buf = self.next_pdu()?;
        Ok(match self.ini.receive(&buf).map_err(io::Error::other)?.0 {
            Pdu::ScsiResponse(r) => {
                Got::Status(r.itt, r.status, r.sense().unwrap_or_default().to_vec())
            }
            Pdu::DataIn(d) => Got::Data(
                d.itt,
                d.buffer_offset,
                d.data.to_vec(),
                d.flags.contains(DataInFlags::STATUS).then_some(d.status),
            ),
            Pdu::NopIn(n) if n.ttt != 0xffff_ffff => {
                let mut pdu = vec![0u8; 128];
                let len = self
                    .ini
                    .nop_out(&mut pdu, 0xffff_ffff, n.ttt, &[])
                    .map_err(io::Error::other)?;
                self.sock.write_all(&pdu[..len])?;
                Got::Other
            }
            _ => Got::Other,
        })
    }

    /// Runs one command to completion: its status, sense data and Data-In.
    pub fn run(&mut self, spec: &CommandSpec<'_>) -> io::Result<(u8, Vec<u8>, Vec<u8>)> {
        let itt = self.send(spec)?;
        let mut data = Vec::new();
        loop {
            match self.next()? {
                Got::Status(i, st, sense) if i == itt => return Ok((st, sense, data)),
                Got::Data(i, _, d, st) if i == itt => {
                    data.extend_from_slice(&d);
                    if let Some(st) = st {
                        return Ok((st, Vec::new(), data));
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends TEST UNIT READY to `lun` until it is GOOD (clears unit attentions).
    pub fn clear_unit_attentions(&mut self, lun: u64) -> io::Result<()> {
        for _ in 0..16 {
            if self.run(&CommandSpec::read(lun, &[0; 6], 0))?.0 == 0 {
                return Ok(());
            }
        }
        Err(io::Error::other("TEST UNIT READY never became GOOD"))
    }
}
