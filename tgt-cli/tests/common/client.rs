//! A minimal blocking iSCSI client for the integration tests, on iscsi-proto's test
//! initiator and a real socket: log in to one target, send SCSI commands, read what comes
//! back. For the cases libiscsi's command-line tools do not cover (persistent
//! reservations, hand-built PDUs).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use iscsi_proto::session::initiator::{CommandSpec, Initiator, find_key, write_text};
use iscsi_proto::wire::{DataInFlags, Digests, Pdu, Stage, Status, pdu_len};

/// One logged-in session (one connection).
pub struct Client {
    sock: TcpStream,
    ini: Initiator,
    rx: Vec<u8>,
    /// Digests in force after login.
    digests: Digests,
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
        Client::login_with(port, target, initiator, isid_tail, &[])
    }

    /// [`Client::login`] offering `keys` as well (e.g. `MaxRecvDataSegmentLength`, or
    /// `HeaderDigest` / `DataDigest` = `CRC32C`, which the client then checks on every PDU).
    pub fn login_with(
        port: u16,
        target: &str,
        initiator: &str,
        isid_tail: u8,
        keys: &[(&str, &str)],
    ) -> io::Result<Client> {
        let sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut c = Client {
            sock,
            ini: Initiator::new([0x80, 0, 0xc0, 0xde, 0, isid_tail], 1),
            rx: Vec::new(),
            digests: Digests::NONE,
        };
        let mut text = [0u8; 1024];
        let mut all = vec![
            ("InitiatorName", initiator),
            ("TargetName", target),
            ("SessionType", "Normal"),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "Yes"),
        ];
        all.extend_from_slice(keys);
        let n =
            write_text(&mut text, &all).ok_or_else(|| io::Error::other("login text too long"))?;
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
        let digests = match c.ini.receive(&buf) {
            Ok((Pdu::LoginResponse(r), _)) if r.status.class == 0 => Digests {
                header: find_key(r.data, "HeaderDigest") == Some("CRC32C"),
                data: find_key(r.data, "DataDigest") == Some("CRC32C"),
            },
            _ => return Err(io::Error::other("login failed")),
        };
        c.ini.set_digests(digests);
        c.digests = digests;
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
            if let Status::Complete(n) = pdu_len(&self.rx, self.digests) {
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

/// The largest piece [`Client::write_blocks`] sends in one command: all of it as immediate
/// data, within the default FirstBurstLength (64 KiB) this client leaves un-negotiated.
pub const WRITE_PIECE: usize = 64 << 10;

/// The largest piece [`Client::read_blocks`] asks for in one command.
pub const READ_PIECE: usize = 256 << 10;

/// The sense key, ASC and ASCQ of fixed (0x70/0x71) or descriptor (0x72/0x73) sense data.
pub fn sense_code(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first().map(|b| b & 0x7f) {
        Some(0x70 | 0x71) if sense.len() >= 14 => Some((sense[2] & 0x0f, sense[12], sense[13])),
        Some(0x72 | 0x73) if sense.len() >= 4 => Some((sense[1] & 0x0f, sense[2], sense[3])),
        _ => None,
    }
}

/// A command that did not end GOOD, as an `io::Error` naming the LBA, status and sense.
fn failed(what: &str, lba: u64, status: u8, sense: &[u8]) -> io::Error {
    io::Error::other(format!(
        "{what} at LBA {lba}: status {status:#04x}, sense {:02x?}",
        sense_code(sense)
    ))
}

/// READ(16) / WRITE(16) CDB.
pub fn rw16(opcode: u8, lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    cdb[1] = if fua { 0x08 } else { 0 };
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

impl Client {
    /// Sets how long a read of the socket may block (10 s after login).
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.sock.set_read_timeout(Some(timeout))
    }

    /// Writes `data` (whole blocks of `bs` bytes) at `lba` of `lun` with WRITE(16)s of at
    /// most [`WRITE_PIECE`] bytes, `depth` of them in flight; an error at the first command
    /// that does not end GOOD (after all sent ones have answered).
    pub fn write_blocks(
        &mut self,
        lun: u64,
        lba: u64,
        data: &[u8],
        bs: u32,
        fua: bool,
        depth: usize,
    ) -> io::Result<()> {
        assert_eq!(data.len() % bs as usize, 0, "whole blocks");
        let pieces: Vec<(u64, &[u8])> = data
            .chunks(WRITE_PIECE)
            .enumerate()
            .map(|(i, d)| (lba + (i * WRITE_PIECE / bs as usize) as u64, d))
            .collect();
        let mut inflight: Vec<(u32, u64)> = Vec::new();
        let mut next = 0;
        let mut first_err = None;
        while next < pieces.len() || !inflight.is_empty() {
            while next < pieces.len() && inflight.len() < depth.max(1) && first_err.is_none() {
                let (at, d) = pieces[next];
                let cdb = rw16(0x8a, at, (d.len() / bs as usize) as u32, fua);
                let itt = self.send(&CommandSpec::write(lun, &cdb, d.len() as u32, d))?;
                inflight.push((itt, at));
                next += 1;
            }
            if inflight.is_empty() {
                break;
            }
            if let Got::Status(itt, st, sense) = self.next()? {
                if let Some(i) = inflight.iter().position(|&(t, _)| t == itt) {
                    let (_, at) = inflight.swap_remove(i);
                    if st != 0 && first_err.is_none() {
                        first_err = Some(failed("WRITE(16)", at, st, &sense));
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Reads `blocks` blocks of `bs` bytes at `lba` of `lun` with READ(16)s of at most
    /// [`READ_PIECE`] bytes, `depth` of them in flight.
    pub fn read_blocks(
        &mut self,
        lun: u64,
        lba: u64,
        blocks: u64,
        bs: u32,
        depth: usize,
    ) -> io::Result<Vec<u8>> {
        let total = (blocks * u64::from(bs)) as usize;
        let mut out = vec![0u8; total];
        let per = (READ_PIECE / bs as usize) as u64;
        // (ITT, first LBA, byte offset in `out`, length)
        let mut inflight: Vec<(u32, u64, usize, usize)> = Vec::new();
        let mut at = 0u64;
        let mut first_err = None;
        while at < blocks || !inflight.is_empty() {
            while at < blocks && inflight.len() < depth.max(1) && first_err.is_none() {
                let n = per.min(blocks - at);
                let len = (n * u64::from(bs)) as usize;
                let cdb = rw16(0x88, lba + at, n as u32, false);
                let itt = self.send(&CommandSpec::read(lun, &cdb, len as u32))?;
                inflight.push((itt, lba + at, (at * u64::from(bs)) as usize, len));
                at += n;
            }
            if inflight.is_empty() {
                break;
            }
            let (itt, status, sense, data) = match self.next()? {
                Got::Status(itt, st, sense) => (itt, Some(st), sense, None),
                Got::Data(itt, off, d, st) => (itt, st, Vec::new(), Some((off as usize, d))),
                Got::Other => continue,
            };
            let Some(i) = inflight.iter().position(|&(t, ..)| t == itt) else {
                continue;
            };
            let (_, first, base, len) = inflight[i];
            if let Some((off, d)) = data {
                if off + d.len() > len {
                    return Err(io::Error::other("Data-In past the transfer length"));
                }
                out[base + off..base + off + d.len()].copy_from_slice(&d);
            }
            if let Some(st) = status {
                inflight.swap_remove(i);
                if st != 0 && first_err.is_none() {
                    first_err = Some(failed("READ(16)", first, st, &sense));
                }
            }
        }
        first_err.map_or(Ok(out), Err)
    }

    /// SYNCHRONIZE CACHE (10) of the whole of `lun`; an error unless GOOD.
    pub fn sync_cache(&mut self, lun: u64) -> io::Result<()> {
        let (st, sense, _) = self.run(&CommandSpec::read(
            lun,
            &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            0,
        ))?;
        if st == 0 {
            Ok(())
        } else {
            Err(failed("SYNCHRONIZE CACHE", 0, st, &sense))
        }
    }
}
