//! Emulated data: standard INQUIRY, VPD pages, mode pages (MODE SENSE / MODE SELECT) and
//! READ CAPACITY (16).

use crate::lu::{LogicalUnit, ModeState};
use crate::out::Out;
use crate::sense::{Asc, Sense, SenseKey};
use crate::types::NexusId;

/// VPD pages supported, in ascending order (VPD 0x00 lists them).
pub(crate) const VPD_PAGES: [u8; 7] = [0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2];

/// MAXIMUM COMPARE AND WRITE LENGTH reported in VPD 0xB0.
pub(crate) const MAX_COMPARE_AND_WRITE: u8 = 255;

/// Page codes with subpage 0, in ascending order.
const PAGES: [u8; 4] = [0x01, 0x08, 0x0A, 0x1C];

pub(crate) fn mode_page_known(page: u8, sub: u8) -> bool {
    match (page, sub) {
        (0x3F, 0x00) | (0x3F, 0xFF) => true,
        (0x0A, 0x01) | (0x0A, 0xFF) => true,
        (p, 0x00) | (p, 0xFF) => PAGES.contains(&p),
        _ => false,
    }
}

/// Page control of MODE SENSE.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

/// Mode page bytes (header included) for one page, and its length.
fn page_bytes(page: u8, sub: u8, m: ModeState, pc: Pc) -> ([u8; 32], usize) {
    let mut b = [0u8; 32];
    let len = match (page, sub) {
        (0x01, 0) => {
            b[0] = 0x01;
            b[1] = 0x0A;
            if pc != Pc::Changeable {
                b[2] = 0xC0; // AWRE, ARRE
            }
            12
        }
        (0x08, 0) => {
            b[0] = 0x08;
            b[1] = 0x12;
            match pc {
                Pc::Current => b[2] = if m.wce { 0x04 } else { 0 },
                Pc::Default => b[2] = 0x04,
                Pc::Changeable => b[2] = 0x04,
            }
            20
        }
        (0x0A, 0) => {
            b[0] = 0x0A;
            b[1] = 0x0A;
            match pc {
                Pc::Current => {
                    b[2] = 0x02 | if m.d_sense { 0x04 } else { 0 };
                    b[3] = 0x10; // QAM = 1: unrestricted reordering allowed
                    b[4] = if m.swp { 0x08 } else { 0 };
                }
                Pc::Default => {
                    b[2] = 0x02;
                    b[3] = 0x10;
                }
                Pc::Changeable => {
                    b[2] = 0x04; // D_SENSE
                    b[4] = 0x08; // SWP
                }
            }
            12
        }
        (0x0A, 1) => {
            b[0] = 0x4A;
            b[1] = 0x01;
            b[2] = 0x00;
            b[3] = 0x1C;
            32
        }
        (0x1C, 0) => {
            b[0] = 0x1C;
            b[1] = 0x0A;
            if pc != Pc::Changeable {
                b[2] = 0x08; // DEXCPT
            }
            12
        }
        _ => 0,
    };
    (b, len)
}

impl<const TASKS: usize, const NEXUS: usize> LogicalUnit<TASKS, NEXUS> {
    pub(crate) fn emit_std_inquiry(&self, byte0: u8, o: &mut Out<'_>) {
        let start = o.pos();
        o.u8(byte0);
        o.u8(if self.cfg.removable { 0x80 } else { 0 });
        o.u8(0x06); // SPC-4
        o.u8(0x12); // HISUP, response data format 2
        o.u8(0); // additional length, patched
        o.u8(0);
        o.u8(0);
        o.u8(0x02); // CMDQUE
        o.bytes(self.cfg.vendor.as_bytes());
        o.bytes(self.cfg.product.as_bytes());
        o.bytes(self.cfg.revision.as_bytes());
        o.zeros(20); // vendor specific
        o.zeros(2);
        // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
        for v in [0x00A0u16, 0x0960, 0x0460, 0x04C0] {
            o.u16(v);
        }
        o.zeros(8);
        o.zeros(22);
        let total = o.pos() - start;
        o.patch(start + 4, (total - 5) as u8);
    }

    pub(crate) fn emit_vpd(&self, page: u8, o: &mut Out<'_>) {
        let start = o.pos();
        o.u8(0x00);
        o.u8(page);
        o.u16(0);
        let cfg = &self.cfg;
        let lbppb: u32 = 1u32 << (cfg.physical_block_exponent & 0x0F);
        match page {
            0x00 => o.bytes(&VPD_PAGES),
            0x80 => o.bytes(cfg.serial.trimmed()),
            0x83 => {
                // NAA (logical unit).
                o.bytes(&[0x01, 0x03, 0x00, 0x08]);
                o.u64(cfg.naa);
                // T10 vendor ID (logical unit): vendor + serial.
                let serial = cfg.serial.trimmed();
                o.bytes(&[0x02, 0x01, 0x00, (8 + serial.len()) as u8]);
                o.bytes(cfg.vendor.as_bytes());
                o.bytes(serial);
                // Relative target port (iSCSI, target port).
                o.bytes(&[0x51, 0x94, 0x00, 0x04, 0x00, 0x00]);
                o.u16(cfg.relative_port);
                // Target port group.
                o.bytes(&[0x51, 0x95, 0x00, 0x04, 0x00, 0x00]);
                o.u16(cfg.port_group);
                // SCSI name string (target device), NUL terminated, padded to 4.
                if self.scsi_name_len > 0 {
                    let n = self.scsi_name_len;
                    let padded = (n + 1).div_ceil(4) * 4;
                    o.bytes(&[0x53, 0xA8, 0x00, padded as u8]);
                    o.bytes(&self.scsi_name[..n]);
                    o.zeros(padded - n);
                }
            }
            0x86 => {
                o.u8(0x00);
                o.u8(0x07); // HEADSUP, ORDSUP, SIMPSUP
                o.zeros(58);
            }
            0xB0 => {
                o.u8(0x00); // WSNZ = 0
                o.u8(MAX_COMPARE_AND_WRITE);
                o.u16(lbppb as u16);
                o.u32(cfg.max_transfer_blocks);
                o.u32(cfg.optimal_transfer_blocks);
                o.u32(cfg.max_transfer_blocks); // maximum prefetch length
                if cfg.thin {
                    o.u32(cfg.max_unmap_lba_count);
                    o.u32(cfg.max_unmap_descriptors);
                    o.u32(lbppb);
                    o.u32(0x8000_0000); // UGAVALID, alignment 0
                } else {
                    o.zeros(16);
                }
                o.u64(cfg.max_write_same_blocks);
                // WRITE ATOMIC (16): maximum atomic transfer length, alignment and
                // granularity 1, no atomic boundaries.
                o.u32(cfg.max_transfer_blocks);
                o.u32(1);
                o.u32(1);
                o.u32(0);
                o.u32(0);
            }
            0xB1 => {
                o.u16(0x0001); // non-rotating medium
                o.u8(0);
                // WABEREQ and WACEREQ = 01b (the erases exist on thin LUs only): reads
                // after a sanitize erase succeed (zeros).
                o.u8(if cfg.thin { 0x50 } else { 0 });
                o.zeros(56);
            }
            0xB2 => {
                o.u8(0); // threshold exponent
                if cfg.thin {
                    o.u8(0xE0 | if cfg.lbprz { 0x04 } else { 0 });
                    o.u8(0x02); // thin provisioned
                } else {
                    o.u8(0);
                    o.u8(0);
                }
                o.u8(0);
            }
            _ => {}
        }
        let len = o.pos() - start - 4;
        o.patch_u16(start + 2, len as u16);
    }

    pub(crate) fn emit_read_capacity_16(&self, o: &mut Out<'_>) {
        o.u64(self.cfg.num_blocks.saturating_sub(1));
        o.u32(self.cfg.block_bytes());
        o.u8(0);
        o.u8(self.cfg.physical_block_exponent & 0x0F);
        let mut b14 = 0u8;
        if self.cfg.thin {
            b14 |= 0x80;
            if self.cfg.lbprz {
                b14 |= 0x40;
            }
        }
        o.u8(b14);
        o.u8(0);
        o.zeros(16);
    }

    pub(crate) fn emit_mode_sense(&self, c: crate::cdb::Cdb, o: &mut Out<'_>) {
        let ten = c.opcode() == crate::cdb::op::MODE_SENSE_10;
        let dbd = c.b(1) & 0x08 != 0;
        let llbaa = ten && c.b(1) & 0x10 != 0;
        let pc = match c.b(2) >> 6 {
            1 => Pc::Changeable,
            2 => Pc::Default,
            _ => Pc::Current,
        };
        let page = c.b(2) & 0x3F;
        let sub = c.b(3);
        let dev = if self.write_protected() { 0x80 } else { 0 } | 0x10; // WP, DPOFUA
        let bd_len: usize = if dbd {
            0
        } else if llbaa {
            16
        } else {
            8
        };
        let start = o.pos();
        if ten {
            o.u16(0);
            o.u8(0);
            o.u8(dev);
            o.u8(if llbaa { 0x01 } else { 0 });
            o.u8(0);
            o.u16(bd_len as u16);
        } else {
            o.u8(0);
            o.u8(0);
            o.u8(dev);
            o.u8(bd_len as u8);
        }
        let blocks = self.cfg.num_blocks;
        if bd_len == 8 {
            o.u32(u32::try_from(blocks).unwrap_or(u32::MAX));
            o.u8(0);
            o.u8((self.cfg.block_bytes() >> 16) as u8);
            o.u16(self.cfg.block_bytes() as u16);
        } else if bd_len == 16 {
            o.u64(blocks);
            o.u32(0);
            o.u32(self.cfg.block_bytes());
        }
        let mut put = |p: u8, s: u8| {
            let (b, n) = page_bytes(p, s, self.mode, pc);
            o.bytes(&b[..n]);
        };
        match (page, sub) {
            (0x3F, s) => {
                for p in PAGES {
                    put(p, 0);
                    if p == 0x0A && s == 0xFF {
                        put(0x0A, 0x01);
                    }
                }
            }
            (0x0A, 0xFF) => {
                put(0x0A, 0);
                put(0x0A, 1);
            }
            (p, 0xFF) => put(p, 0),
            (p, s) => put(p, s),
        }
        let total = o.pos() - start;
        if ten {
            o.patch_u16(start, (total - 2) as u16);
        } else {
            o.patch(start, (total - 1).min(255) as u8);
        }
    }

    /// Validate a MODE SELECT parameter list completely, then apply it.
    pub(crate) fn mode_select_apply(
        &mut self,
        nexus: NexusId,
        ten: bool,
        data: &[u8],
    ) -> Result<(), Sense> {
        let plle = Sense::new(SenseKey::IllegalRequest, Asc::PARAMETER_LIST_LENGTH_ERROR);
        let hdr = if ten { 8 } else { 4 };
        if data.len() < hdr {
            return Err(plle);
        }
        let (bd_len, bd_at) = if ten {
            (usize::from(u16::from_be_bytes([data[6], data[7]])), 6u16)
        } else {
            (usize::from(data[3]), 3u16)
        };
        let long = ten && data[4] & 0x01 != 0;
        match (bd_len, long) {
            (0, _) | (8, false) | (16, true) => {}
            _ => return Err(Sense::invalid_param(bd_at, None)),
        }
        if data.len() < hdr + bd_len {
            return Err(plle);
        }
        if bd_len > 0 {
            let d = &data[hdr..hdr + bd_len];
            let bl = if long {
                u32::from_be_bytes([d[12], d[13], d[14], d[15]])
            } else {
                u32::from_be_bytes([0, d[5], d[6], d[7]])
            };
            if bl != self.cfg.block_bytes() {
                let at = hdr + if long { 12 } else { 5 };
                return Err(Sense::invalid_param(at as u16, None));
            }
        }
        let mut new = self.mode;
        let mut p = hdr + bd_len;
        while p < data.len() {
            let b0 = data[p];
            if b0 & 0x80 != 0 {
                return Err(Sense::invalid_param(p as u16, Some(7)));
            }
            let code = b0 & 0x3F;
            let spf = b0 & 0x40 != 0;
            let (sub, body_len, head) = if spf {
                if p + 4 > data.len() {
                    return Err(plle);
                }
                (
                    data[p + 1],
                    usize::from(u16::from_be_bytes([data[p + 2], data[p + 3]])),
                    4,
                )
            } else {
                if p + 2 > data.len() {
                    return Err(plle);
                }
                (0, usize::from(data[p + 1]), 2)
            };
            let (cur, n) = page_bytes(code, sub, self.mode, Pc::Current);
            if n == 0 || (spf && sub == 0) {
                return Err(Sense::invalid_param(p as u16, Some(5)));
            }
            if head + body_len != n {
                return Err(Sense::invalid_param((p + head - 1) as u16, None));
            }
            if p + n > data.len() {
                return Err(plle);
            }
            let (mask, _) = page_bytes(code, sub, self.mode, Pc::Changeable);
            let page = &data[p..p + n];
            for k in head..n {
                if (page[k] ^ cur[k]) & !mask[k] != 0 {
                    return Err(Sense::invalid_param((p + k) as u16, None));
                }
            }
            match (code, sub) {
                (0x08, 0) => new.wce = page[2] & 0x04 != 0,
                (0x0A, 0) => {
                    new.d_sense = page[2] & 0x04 != 0;
                    new.swp = page[4] & 0x08 != 0;
                }
                _ => {}
            }
            p += n;
        }
        if new != self.mode {
            let old = self.mode;
            self.mode = new;
            self.mode_changed(nexus, old);
        }
        Ok(())
    }
}
