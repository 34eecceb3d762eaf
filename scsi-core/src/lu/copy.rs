//! EXTENDED COPY (LID1) with identification target descriptors and block-to-block segment
//! descriptors, and RECEIVE COPY RESULTS (copy status, operating parameters, failed
//! segment details).
//!
//! Target descriptors name LUs by their NAA designator (VPD 0x83); through a
//! [`crate::Target`] any LU of the target can be source or destination. The copy itself is
//! one [`IoOp::Copy`] the runtime performs with a bounded buffer.

use super::*;
use crate::out::Out;

/// Target descriptors one EXTENDED COPY may carry (a source and a destination).
pub(crate) const MAX_TARGET_DESCRIPTORS: u16 = 2;
/// Segment descriptors one EXTENDED COPY may carry.
pub(crate) const MAX_SEGMENT_DESCRIPTORS: u16 = 1;
/// Longest target + segment descriptor list.
pub(crate) const MAX_DESCRIPTOR_LIST: u32 = 1024;
/// Copy results kept for RECEIVE COPY RESULTS (the oldest is forgotten first).
pub(crate) const COPY_RESULTS: usize = 4;

/// An LU that EXTENDED COPY can address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CopyPeer {
    pub(crate) naa: u64,
    pub(crate) lun: u16,
    pub(crate) block_size: u32,
    pub(crate) num_blocks: u64,
    pub(crate) writable: bool,
    pub(crate) ready: bool,
}

impl CopyPeer {
    pub(crate) const EMPTY: CopyPeer = CopyPeer {
        naa: 0,
        lun: 0,
        block_size: 0,
        num_blocks: 0,
        writable: false,
        ready: false,
    };
}

/// The outcome of one EXTENDED COPY, kept per (nexus, list identifier).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CopyResult {
    nexus: NexusId,
    list_id: u8,
    ok: bool,
    segments: u16,
    bytes: u64,
    sense: Option<Sense>,
}

fn aborted(asc: Asc) -> Sense {
    Sense::new(SenseKey::CopyAborted, asc)
}

impl<const TASKS: usize, const NEXUS: usize> LogicalUnit<TASKS, NEXUS> {
    pub(crate) fn copy_peer(&self, lun: u16) -> CopyPeer {
        CopyPeer {
            naa: self.cfg.naa,
            lun,
            block_size: self.cfg.block_bytes(),
            num_blocks: self.cfg.num_blocks,
            writable: !self.write_protected(),
            ready: self.medium_loaded,
        }
    }

    pub(super) fn extended_copy_start(&mut self, i: usize, c: Cdb) -> Step {
        if c.b(1) & 0x1F != 0 {
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        let len = c.u32(10);
        if len == 0 {
            return Ok(self.good(i));
        }
        if !(16..=16 + MAX_DESCRIPTOR_LIST + 64).contains(&len) {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                Asc::PARAMETER_LIST_LENGTH_ERROR,
            ));
        }
        self.want_data_out(i, len)?;
        Ok(Pend::DataOut(len))
    }

    fn record_copy(&mut self, nexus: NexusId, data: &[u8], r: (bool, u64, Option<Sense>)) {
        let list_id = data.first().copied().unwrap_or(0);
        let usage = (data.get(1).copied().unwrap_or(0) >> 3) & 3;
        self.record_copy_id(nexus, list_id, usage == 0, r);
    }

    fn record_copy_id(
        &mut self,
        nexus: NexusId,
        list_id: u8,
        hold: bool,
        r: (bool, u64, Option<Sense>),
    ) {
        if !hold {
            // LIST ID USAGE 10b/11b: the initiator does not want the results held.
            return;
        }
        let res = CopyResult {
            nexus,
            list_id,
            ok: r.0,
            segments: u16::from(r.0),
            bytes: r.1,
            sense: r.2,
        };
        let slot = self
            .copy_results
            .iter()
            .position(|x| x.is_some_and(|x| x.nexus == nexus && x.list_id == list_id));
        let k = match slot {
            Some(k) => k,
            None => {
                let k = self.copy_next % COPY_RESULTS;
                self.copy_next = self.copy_next.wrapping_add(1);
                k
            }
        };
        self.copy_results[k] = Some(res);
    }

    fn copy_result(&self, nexus: NexusId, list_id: u8) -> Option<CopyResult> {
        self.copy_results
            .iter()
            .flatten()
            .find(|x| x.nexus == nexus && x.list_id == list_id)
            .copied()
    }

    pub(super) fn copy_data(&mut self, i: usize, t: Task, data: &[u8], peers: &[CopyPeer]) -> Step {
        let r = self.copy_parse(i, t, data, peers);
        match &r {
            Err(s) => self.record_copy(t.id.nexus, data, (false, 0, Some(*s))),
            Ok(Pend::Complete { .. }) => self.record_copy(t.id.nexus, data, (true, 0, None)),
            _ => {}
        }
        r
    }

    fn copy_parse(&mut self, i: usize, t: Task, data: &[u8], peers: &[CopyPeer]) -> Step {
        let plle = Sense::new(SenseKey::IllegalRequest, Asc::PARAMETER_LIST_LENGTH_ERROR);
        if data.len() < 16 {
            return Err(plle);
        }
        let list_id = data[0];
        let usage = (data[1] >> 3) & 3;
        let tgt_len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        let seg_len = u32::from_be_bytes([data[8], data[9], data[10], data[11]]) as usize;
        let inline = u32::from_be_bytes([data[12], data[13], data[14], data[15]]) as usize;
        let total = 16usize
            .saturating_add(tgt_len)
            .saturating_add(seg_len)
            .saturating_add(inline);
        if total > data.len() {
            return Err(plle);
        }
        if tgt_len.saturating_add(seg_len) > MAX_DESCRIPTOR_LIST as usize {
            return Err(plle);
        }
        if inline != 0 {
            return Err(Sense::invalid_param(12, None));
        }
        if usage == 3 && list_id != 0 {
            return Err(Sense::invalid_param(0, None));
        }
        if usage == 1 {
            return Err(Sense::invalid_param(1, Some(4)));
        }
        if usage == 0
            && self.tasks.iter().flatten().any(|o| {
                o.id != t.id
                    && o.id.nexus == t.id.nexus
                    && o.cdb.opcode() == op::EXTENDED_COPY
                    && o.phase == Phase::WaitIo
                    && matches!(o.extra, Extra::Copy { list_id: l, .. } if l == list_id)
            })
        {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                Asc::OPERATION_IN_PROGRESS,
            ));
        }
        // Target descriptors: 32 bytes each, identification descriptors only.
        let tgts = &data[16..16 + tgt_len];
        if tgt_len % 32 != 0 {
            return Err(plle);
        }
        for (k, d) in tgts.chunks(32).enumerate() {
            if d[0] != 0xE4 {
                return Err(Sense {
                    key: SenseKey::IllegalRequest,
                    asc: Asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
                    info: None,
                    sks: Some(
                        crate::sense::FieldPointer::param((16 + 32 * k) as u16, None).to_bytes(),
                    ),
                });
            }
        }
        if tgts.len() / 32 > usize::from(MAX_TARGET_DESCRIPTORS) {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                Asc::TOO_MANY_TARGET_DESCRIPTORS,
            ));
        }
        // Segment descriptors: block to block (type 02h, 28 bytes) only.
        let segs = &data[16 + tgt_len..16 + tgt_len + seg_len];
        let mut p = 0usize;
        let mut nseg = 0usize;
        let mut first: Option<&[u8]> = None;
        while p < segs.len() {
            let d = &segs[p..];
            if d.len() < 4 {
                return Err(plle);
            }
            let at = (16 + tgt_len + p) as u16;
            if d[0] != 0x02 {
                return Err(Sense {
                    key: SenseKey::IllegalRequest,
                    asc: Asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
                    info: None,
                    sks: Some(crate::sense::FieldPointer::param(at, None).to_bytes()),
                });
            }
            let dl = usize::from(u16::from_be_bytes([d[2], d[3]]));
            if dl != 0x18 {
                return Err(Sense::invalid_param(at + 2, None));
            }
            if d.len() < 28 {
                return Err(plle);
            }
            if first.is_none() {
                first = Some(&d[..28]);
            }
            nseg += 1;
            p += 28;
        }
        if nseg > usize::from(MAX_SEGMENT_DESCRIPTORS) {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                Asc::TOO_MANY_SEGMENT_DESCRIPTORS,
            ));
        }
        // Resolve the target descriptors to LUs (the LU ID TYPE and NUL bits are ignored,
        // as SPC-4 has them).
        let own = [self.copy_peer(t.lun.number().unwrap_or(0))];
        let peers = if peers.is_empty() { &own[..] } else { peers };
        let mut resolved = [CopyPeer::EMPTY; MAX_TARGET_DESCRIPTORS as usize];
        for (k, d) in tgts.chunks(32).enumerate() {
            let desig = &d[4..24];
            let naa = (desig[1] & 0x0F == 3 && desig[3] == 8).then(|| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&desig[4..12]);
                u64::from_be_bytes(b)
            });
            let Some(peer) = naa.and_then(|n| peers.iter().find(|p| p.naa == n)) else {
                return Err(aborted(Asc::UNREACHABLE_COPY_TARGET));
            };
            if let Some(r) = resolved.get_mut(k) {
                *r = *peer;
            }
        }
        let Some(seg) = first else {
            return Ok(self.good(i));
        };
        let src_idx = usize::from(u16::from_be_bytes([seg[4], seg[5]]));
        let dst_idx = usize::from(u16::from_be_bytes([seg[6], seg[7]]));
        let ntgt = tgts.len() / 32;
        if src_idx >= ntgt || dst_idx >= ntgt {
            return Err(aborted(Asc::COPY_TARGET_DEVICE_NOT_REACHABLE));
        }
        let (src, dst) = (resolved[src_idx], resolved[dst_idx]);
        let blocks = u64::from(u16::from_be_bytes([seg[10], seg[11]]));
        let src_lba = crate::pr::u64_at(seg, 12);
        let dst_lba = crate::pr::u64_at(seg, 20);
        if !src.ready || !dst.ready {
            return Err(Sense::new(SenseKey::NotReady, Asc::MEDIUM_NOT_PRESENT));
        }
        if src.block_size != dst.block_size {
            return Err(aborted(Asc::NO_ADDITIONAL_SENSE));
        }
        let fits =
            |lba: u64, p: &CopyPeer| lba.checked_add(blocks).is_some_and(|e| e <= p.num_blocks);
        if !fits(src_lba, &src) || !fits(dst_lba, &dst) {
            return Err(aborted(Asc::NO_ADDITIONAL_SENSE));
        }
        if !dst.writable {
            return Err(Sense::new(SenseKey::DataProtect, Asc::WRITE_PROTECTED));
        }
        if blocks == 0 {
            return Ok(self.good(i));
        }
        if let Some(tm) = self.tasks[i].as_mut() {
            tm.extra = Extra::Copy {
                list_id,
                hold: usage == 0,
            };
        }
        self.set_io(i, dst_lba, blocks, false, false);
        let mut p = self.io(
            i,
            IoOp::Copy {
                src_lun: src.lun,
                src_lba,
                dst_lun: dst.lun,
            },
        );
        if let Pend::Io(io) = &mut p {
            io.block_size = src.block_size;
        }
        Ok(p)
    }

    /// The end of an EXTENDED COPY's I/O.
    pub(super) fn copy_done(&mut self, i: usize, t: Task, result: IoResult) -> Pend {
        let bytes = t.blocks.saturating_mul(u64::from(self.cfg.block_bytes()));
        let (list_id, hold) = match t.extra {
            Extra::Copy { list_id, hold } => (list_id, hold),
            _ => (0, false),
        };
        match result {
            IoResult::Ok => {
                self.record_copy_id(t.id.nexus, list_id, hold, (true, bytes, None));
                self.good(i)
            }
            e => {
                let s = io_sense(op::EXTENDED_COPY, e);
                let s = Sense::new(SenseKey::CopyAborted, s.asc);
                self.record_copy_id(t.id.nexus, list_id, hold, (false, 0, Some(s)));
                self.fail(i, s)
            }
        }
    }

    pub(super) fn receive_copy_results_start(&mut self, i: usize, c: Cdb) -> Step {
        let nexus = self.task_nexus_id(i);
        match c.b(1) & 0x1F {
            3 => {}
            0 | 4 => {
                if self.copy_result(nexus, c.b(2)).is_none() {
                    return Err(Sense::invalid_cdb(2, None));
                }
            }
            _ => return Err(Sense::invalid_cdb(1, Some(4))),
        }
        self.data_in(i, c, c.u32(10))
    }

    fn task_nexus_id(&self, i: usize) -> NexusId {
        self.tasks[i].as_ref().map_or(NexusId(0), |t| t.id.nexus)
    }

    pub(super) fn emit_copy_results(&self, t: &Task, c: Cdb, o: &mut Out<'_>) {
        match c.b(1) & 0x1F {
            3 => {
                let codes = [0x02u8, 0xE4];
                o.u32(44 + codes.len() as u32 - 4);
                o.u8(0); // SNLID = 0
                o.zeros(3);
                o.u16(MAX_TARGET_DESCRIPTORS);
                o.u16(MAX_SEGMENT_DESCRIPTORS);
                o.u32(MAX_DESCRIPTOR_LIST);
                o.u32(0xFFFFu32.saturating_mul(self.cfg.block_bytes()));
                o.u32(0); // inline data
                o.u32(0); // held data
                o.u32(0); // stream transfer size
                o.u16(0);
                o.u16(1); // total concurrent copies
                o.u8(1); // maximum concurrent copies
                o.u8(9); // data segment granularity: 512 bytes
                o.u8(0);
                o.u8(0);
                o.zeros(3);
                o.u8(codes.len() as u8);
                o.bytes(&codes);
            }
            sa => {
                let Some(r) = self.copy_result(t.id.nexus, c.b(2)) else {
                    return;
                };
                if sa == 0 {
                    o.u32(8);
                    o.u8(if r.ok { 0x01 } else { 0x02 });
                    o.u16(r.segments);
                    match u32::try_from(r.bytes) {
                        Ok(b) => {
                            o.u8(0x00);
                            o.u32(b);
                        }
                        Err(_) => {
                            o.u8(0xF1);
                            o.u32(u32::try_from(r.bytes >> 10).unwrap_or(u32::MAX));
                        }
                    }
                } else {
                    let sense = r.sense.map(|s| s.encode(false));
                    let sl = sense.as_ref().map_or(0, |s| s.as_bytes().len());
                    o.u32((60 + sl - 4) as u32);
                    o.zeros(52);
                    o.u8(if r.ok { 0x00 } else { 0x02 });
                    o.u8(0);
                    o.u16(sl as u16);
                    if let Some(s) = sense {
                        o.bytes(s.as_bytes());
                    }
                }
            }
        }
    }
}
