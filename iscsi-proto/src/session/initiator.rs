//! A small iSCSI *initiator* built on this crate, for tests and load generators
//! (feature `initiator`).
//!
//! It is deliberately thin: it writes initiator PDUs with the [`wire`](crate::wire) reprs
//! (keeping ITT, CmdSN and ExpStatSN straight) and reads target PDUs back, tracking
//! ExpStatSN, ExpCmdSN and MaxCmdSN. It does not decide anything: the caller drives the
//! login text, answers R2Ts with Data-Out, and checks responses. Everything is written into
//! caller buffers; no heap is used.
//!
//! ```
//! use iscsi_proto::session::initiator::{Initiator, CommandSpec, write_text};
//! use iscsi_proto::wire::{Pdu, Stage};
//!
//! let mut ini = Initiator::new([0x40, 0, 0, 0, 0, 1], 1);
//! let mut text = [0u8; 256];
//! let n = write_text(&mut text, &[("InitiatorName", "iqn.2026-11.test:ini"),
//!                                 ("SessionType", "Discovery"),
//!                                 ("AuthMethod", "None")]).unwrap();
//! let mut pdu = [0u8; 512];
//! let len = ini.login(&mut pdu, Stage::SecurityNegotiation, Some(Stage::FullFeature),
//!                     &text[..n]).unwrap();
//! let (parsed, used) = Pdu::parse(&pdu[..len], ini.digests()).unwrap();
//! assert_eq!(used, len);
//! assert!(matches!(parsed, Pdu::LoginRequest(_)));
//! # let _ = CommandSpec::read(0, &[0x12, 0, 0, 0, 36, 0], 36);
//! ```

use crate::wire::{
    DataOut, Digests, Error, LoginRequest, LogoutReason, LogoutRequest, NopOut, Pdu, RESERVED_TAG,
    ScsiCommand, ScsiCommandFlags, Stage, TaskAttr, TaskMgmtRequest, TextFlags, TextRequest,
    TmfFunction, emit_header, emit_pdu,
};

/// Write `key=value\0` pairs into `out`; returns the length, or `None` if `out` is too
/// small.
pub fn write_text(out: &mut [u8], pairs: &[(&str, &str)]) -> Option<usize> {
    let mut pos = 0usize;
    for (k, v) in pairs {
        let need = k.len() + 1 + v.len() + 1;
        let dst = out.get_mut(pos..pos.checked_add(need)?)?;
        dst[..k.len()].copy_from_slice(k.as_bytes());
        dst[k.len()] = b'=';
        dst[k.len() + 1..need - 1].copy_from_slice(v.as_bytes());
        dst[need - 1] = 0;
        pos += need;
    }
    Some(pos)
}

/// The value of `key` in a `key=value\0` text segment.
pub fn find_key<'t>(text: &'t [u8], key: &str) -> Option<&'t str> {
    text.split(|&b| b == 0).find_map(|kv| {
        let eq = kv.iter().position(|&b| b == b'=')?;
        if &kv[..eq] == key.as_bytes() {
            core::str::from_utf8(&kv[eq + 1..]).ok()
        } else {
            None
        }
    })
}

/// What a SCSI Command carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandSpec<'a> {
    /// LUN field.
    pub lun: u64,
    /// The CDB (up to 260 bytes).
    pub cdb: &'a [u8],
    /// R bit.
    pub read: bool,
    /// W bit.
    pub write: bool,
    /// Expected Data Transfer Length.
    pub edtl: u32,
    /// Immediate data.
    pub data: &'a [u8],
    /// F bit: no unsolicited Data-Out follows.
    pub final_bit: bool,
    /// I bit: immediate delivery.
    pub immediate: bool,
}

impl<'a> CommandSpec<'a> {
    /// A read of `len` bytes.
    pub fn read(lun: u64, cdb: &'a [u8], len: u32) -> Self {
        CommandSpec {
            lun,
            cdb,
            read: len > 0,
            write: false,
            edtl: len,
            data: &[],
            final_bit: true,
            immediate: false,
        }
    }

    /// A write of `len` bytes, with `immediate` data and no unsolicited Data-Out.
    pub fn write(lun: u64, cdb: &'a [u8], len: u32, immediate: &'a [u8]) -> Self {
        CommandSpec {
            lun,
            cdb,
            read: false,
            write: true,
            edtl: len,
            data: immediate,
            final_bit: true,
            immediate: false,
        }
    }
}

/// Initiator-side sequence state of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initiator {
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    login_itt: u32,
    next_itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    digests: Digests,
}

impl Initiator {
    /// A new initiator connection with this ISID, starting at CmdSN `cmd_sn`.
    pub fn new(isid: [u8; 6], cmd_sn: u32) -> Self {
        Initiator {
            isid,
            tsih: 0,
            cid: 0,
            login_itt: 0,
            next_itt: 0x100,
            cmd_sn,
            exp_stat_sn: 0,
            exp_cmd_sn: cmd_sn,
            max_cmd_sn: cmd_sn,
            digests: Digests::NONE,
        }
    }

    /// Digests used to write and read PDUs (switch them on after the login completes).
    pub fn digests(&self) -> Digests {
        self.digests
    }

    /// Set the digests in use.
    pub fn set_digests(&mut self, d: Digests) {
        self.digests = d;
    }

    /// The next CmdSN.
    pub fn cmd_sn(&self) -> u32 {
        self.cmd_sn
    }

    /// Force the next CmdSN (to test the target's window).
    pub fn set_cmd_sn(&mut self, sn: u32) {
        self.cmd_sn = sn;
    }

    /// ExpStatSN: one past the last StatSN received.
    pub fn exp_stat_sn(&self) -> u32 {
        self.exp_stat_sn
    }

    /// The last ExpCmdSN received.
    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
    }

    /// The last MaxCmdSN received.
    pub fn max_cmd_sn(&self) -> u32 {
        self.max_cmd_sn
    }

    /// TSIH (from the final Login Response).
    pub fn tsih(&self) -> u16 {
        self.tsih
    }

    /// A fresh Initiator Task Tag.
    pub fn next_itt(&mut self) -> u32 {
        let itt = self.next_itt;
        self.next_itt = match self.next_itt.wrapping_add(1) {
            RESERVED_TAG => 0,
            n => n,
        };
        itt
    }

    fn take_cmd_sn(&mut self, immediate: bool) -> u32 {
        let sn = self.cmd_sn;
        if !immediate {
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        sn
    }

    /// Write a Login Request (T bit when `nsg` is set). Login requests of one login share
    /// an ITT and are sent immediate, so they do not advance CmdSN.
    pub fn login(
        &mut self,
        out: &mut [u8],
        csg: Stage,
        nsg: Option<Stage>,
        text: &[u8],
    ) -> Result<usize, Error> {
        let pdu = Pdu::LoginRequest(LoginRequest {
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: self.isid,
            tsih: self.tsih,
            itt: self.login_itt,
            cid: self.cid,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: text,
        });
        emit_pdu(&pdu, Digests::NONE, out)
    }

    /// Write a SCSI Command; returns its ITT and length.
    pub fn command(
        &mut self,
        out: &mut [u8],
        spec: &CommandSpec<'_>,
    ) -> Result<(u32, usize), Error> {
        self.emit_command(out, spec, true)
    }

    /// Like [`Initiator::command`], but writes only the header (BHS, AHS and header
    /// digest), declaring `spec.data.len()` bytes of immediate data: the caller sends
    /// the data from its own buffer next, then a [`DataTrailer`](crate::wire::DataTrailer).
    pub fn command_header(
        &mut self,
        out: &mut [u8],
        spec: &CommandSpec<'_>,
    ) -> Result<(u32, usize), Error> {
        self.emit_command(out, spec, false)
    }

    fn emit_command(
        &mut self,
        out: &mut [u8],
        spec: &CommandSpec<'_>,
        with_data: bool,
    ) -> Result<(u32, usize), Error> {
        let itt = self.next_itt();
        let mut flags = ScsiCommandFlags::empty();
        flags.set(ScsiCommandFlags::FINAL, spec.final_bit);
        flags.set(ScsiCommandFlags::READ, spec.read);
        flags.set(ScsiCommandFlags::WRITE, spec.write);
        let mut cmd = ScsiCommand {
            immediate: spec.immediate,
            flags,
            attr: TaskAttr::Simple,
            lun: spec.lun,
            itt,
            expected_data_transfer_len: spec.edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: [0; 16],
            extended_cdb: &[],
            bidi_read_len: None,
            data: spec.data,
        };
        cmd.set_cdb(spec.cdb)?;
        let pdu = Pdu::ScsiCommand(cmd);
        let len = if with_data {
            emit_pdu(&pdu, self.digests, out)?
        } else {
            emit_header(&pdu, spec.data.len(), self.digests, out)?
        };
        let _ = self.take_cmd_sn(spec.immediate);
        Ok((itt, len))
    }

    /// Write a Data-Out PDU.
    #[allow(clippy::too_many_arguments)]
    pub fn data_out(
        &mut self,
        out: &mut [u8],
        itt: u32,
        ttt: u32,
        lun: u64,
        data_sn: u32,
        offset: u32,
        data: &[u8],
        final_bit: bool,
    ) -> Result<usize, Error> {
        let pdu = self.data_out_pdu(itt, ttt, lun, data_sn, offset, data, final_bit);
        emit_pdu(&pdu, self.digests, out)
    }

    /// Like [`Initiator::data_out`], but writes only the header, declaring `data_len`
    /// bytes of data that the caller sends from its own buffer next (then a
    /// [`DataTrailer`](crate::wire::DataTrailer)).
    #[allow(clippy::too_many_arguments)]
    pub fn data_out_header(
        &mut self,
        out: &mut [u8],
        itt: u32,
        ttt: u32,
        lun: u64,
        data_sn: u32,
        offset: u32,
        data_len: usize,
        final_bit: bool,
    ) -> Result<usize, Error> {
        let pdu = self.data_out_pdu(itt, ttt, lun, data_sn, offset, &[], final_bit);
        emit_header(&pdu, data_len, self.digests, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn data_out_pdu<'d>(
        &self,
        itt: u32,
        ttt: u32,
        lun: u64,
        data_sn: u32,
        buffer_offset: u32,
        data: &'d [u8],
        final_bit: bool,
    ) -> Pdu<'d> {
        Pdu::DataOut(DataOut {
            final_bit,
            lun,
            itt,
            ttt,
            exp_stat_sn: self.exp_stat_sn,
            data_sn,
            buffer_offset,
            data,
        })
    }

    /// Write a NOP-Out. `itt` = [`RESERVED_TAG`] with `ttt` of a target ping answers that
    /// ping; a real `itt` with `ttt` = [`RESERVED_TAG`] asks for a NOP-In.
    pub fn nop_out(
        &mut self,
        out: &mut [u8],
        itt: u32,
        ttt: u32,
        data: &[u8],
    ) -> Result<usize, Error> {
        let pdu = Pdu::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt,
            ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data,
        });
        emit_pdu(&pdu, self.digests, out)
    }

    /// Write an immediate Task Management request; returns its ITT and length.
    pub fn task_mgmt(
        &mut self,
        out: &mut [u8],
        function: TmfFunction,
        lun: u64,
        referenced_itt: u32,
        ref_cmd_sn: u32,
    ) -> Result<(u32, usize), Error> {
        let itt = self.next_itt();
        let pdu = Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function,
            lun,
            itt,
            referenced_task_tag: referenced_itt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn,
            exp_data_sn: 0,
        });
        Ok((itt, emit_pdu(&pdu, self.digests, out)?))
    }

    /// Write a (final, non-immediate) Text Request.
    pub fn text(
        &mut self,
        out: &mut [u8],
        itt: u32,
        ttt: u32,
        data: &[u8],
    ) -> Result<usize, Error> {
        let pdu = Pdu::TextRequest(TextRequest {
            immediate: false,
            flags: TextFlags::FINAL,
            lun: 0,
            itt,
            ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data,
        });
        let len = emit_pdu(&pdu, self.digests, out)?;
        let _ = self.take_cmd_sn(false);
        Ok(len)
    }

    /// Write an immediate Logout Request; returns its ITT and length.
    pub fn logout(&mut self, out: &mut [u8], reason: LogoutReason) -> Result<(u32, usize), Error> {
        let itt = self.next_itt();
        let pdu = Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason,
            itt,
            cid: self.cid,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        });
        Ok((itt, emit_pdu(&pdu, self.digests, out)?))
    }

    /// Parse the target PDU at the start of `buf` and track its sequence numbers.
    pub fn receive<'b>(&mut self, buf: &'b [u8]) -> Result<(Pdu<'b>, usize), Error> {
        let (pdu, used) = Pdu::parse(buf, self.digests)?;
        let (stat_sn, exp, max) = match &pdu {
            Pdu::ScsiResponse(r) => (Some(r.stat_sn), r.exp_cmd_sn, r.max_cmd_sn),
            Pdu::DataIn(d) => (
                d.flags
                    .contains(crate::wire::DataInFlags::STATUS)
                    .then_some(d.stat_sn),
                d.exp_cmd_sn,
                d.max_cmd_sn,
            ),
            Pdu::NopIn(n) => (
                (n.itt != RESERVED_TAG).then_some(n.stat_sn),
                n.exp_cmd_sn,
                n.max_cmd_sn,
            ),
            Pdu::TaskMgmtResponse(r) => (Some(r.stat_sn), r.exp_cmd_sn, r.max_cmd_sn),
            Pdu::LoginResponse(r) => {
                if r.nsg == Some(Stage::FullFeature) && r.status.is_success() {
                    self.tsih = r.tsih;
                }
                (Some(r.stat_sn), r.exp_cmd_sn, r.max_cmd_sn)
            }
            Pdu::TextResponse(r) => (Some(r.stat_sn), r.exp_cmd_sn, r.max_cmd_sn),
            Pdu::LogoutResponse(r) => (Some(r.stat_sn), r.exp_cmd_sn, r.max_cmd_sn),
            Pdu::R2t(r) => (None, r.exp_cmd_sn, r.max_cmd_sn),
            Pdu::AsyncMessage(a) => (Some(a.stat_sn), a.exp_cmd_sn, a.max_cmd_sn),
            Pdu::Reject(r) => (Some(r.stat_sn), r.exp_cmd_sn, r.max_cmd_sn),
            _ => (None, self.exp_cmd_sn, self.max_cmd_sn),
        };
        if let Some(s) = stat_sn {
            self.exp_stat_sn = s.wrapping_add(1);
        }
        // RFC 7143 4.2.2.1: ignore a window update with MaxCmdSN < ExpCmdSN - 1.
        if !crate::serial::sn_lt(max, exp.wrapping_sub(1)) {
            self.exp_cmd_sn = exp;
            self.max_cmd_sn = max;
        }
        Ok((pdu, used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_helpers() {
        let mut out = [0u8; 64];
        let n = write_text(&mut out, &[("A", "1"), ("Key", "v")]).unwrap();
        assert_eq!(&out[..n], b"A=1\0Key=v\0");
        assert_eq!(find_key(&out[..n], "Key"), Some("v"));
        assert_eq!(find_key(&out[..n], "B"), None);
        assert_eq!(write_text(&mut out[..5], &[("Key", "v")]), None);
    }

    #[test]
    fn header_only_emitters_match_whole_pdus() {
        use crate::wire::DataTrailer;
        for digests in [
            Digests::NONE,
            Digests {
                header: true,
                data: true,
            },
        ] {
            let data = [0xa5u8; 10]; // padded to 12 on the wire
            let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
            let spec = CommandSpec::write(0, &cdb, 512, &data);
            let (mut a, mut b) = (Initiator::new([0; 6], 1), Initiator::new([0; 6], 1));
            a.set_digests(digests);
            b.set_digests(digests);
            let (mut whole, mut split) = ([0u8; 128], [0u8; 128]);
            let (itt, n) = a.command(&mut whole, &spec).unwrap();
            let (itt2, h) = b.command_header(&mut split, &spec).unwrap();
            assert_eq!(itt, itt2);
            assert_eq!(a.cmd_sn(), b.cmd_sn());
            let mut joined = split[..h].to_vec();
            joined.extend_from_slice(&data);
            joined.extend_from_slice(DataTrailer::new(&data, digests).as_bytes());
            assert_eq!(&whole[..n], &joined[..]);

            let n = a
                .data_out(&mut whole, itt, 9, 0, 0, 10, &data, true)
                .unwrap();
            let h = b
                .data_out_header(&mut split, itt, 9, 0, 0, 10, data.len(), true)
                .unwrap();
            let mut joined = split[..h].to_vec();
            joined.extend_from_slice(&data);
            joined.extend_from_slice(DataTrailer::new(&data, digests).as_bytes());
            assert_eq!(&whole[..n], &joined[..]);
        }
    }

    #[test]
    fn command_advances_cmd_sn_unless_immediate() {
        let mut ini = Initiator::new([0; 6], 7);
        let mut out = [0u8; 128];
        let (itt, len) = ini
            .command(&mut out, &CommandSpec::read(0, &[0; 6], 512))
            .unwrap();
        assert_eq!(len, 48);
        assert_eq!(ini.cmd_sn(), 8);
        let (pdu, _) = Pdu::parse(&out[..len], Digests::NONE).unwrap();
        let Pdu::ScsiCommand(c) = pdu else {
            panic!("not a command")
        };
        assert_eq!(
            (c.itt, c.cmd_sn, c.expected_data_transfer_len),
            (itt, 7, 512)
        );
        let mut spec = CommandSpec::read(0, &[0; 6], 0);
        spec.immediate = true;
        ini.command(&mut out, &spec).unwrap();
        assert_eq!(ini.cmd_sn(), 8);
    }
}
