//! End-to-end tests: a tiny runtime plays the initiator and the backing store (an in-memory
//! disk) around a `LogicalUnit` / `Target`.

use std::vec;
use std::vec::Vec;

use crate::*;

type Lu = LogicalUnit<16, 4>;

const N0: NexusId = NexusId(1);
const N1: NexusId = NexusId(2);

struct Disk {
    data: Vec<u8>,
    mapped: Vec<bool>,
    bs: usize,
    fail_next: Option<IoResult>,
    ios: Vec<IoRequest>,
}

impl Disk {
    fn new(cfg: &LuConfig) -> Disk {
        let bs = cfg.block_bytes() as usize;
        // Huge LUs are only used for commands without I/O.
        let n = cfg.num_blocks.min(1 << 20) as usize;
        Disk {
            data: vec![0; bs * n],
            mapped: vec![false; n],
            bs,
            fail_next: None,
            ios: Vec::new(),
        }
    }
    fn range(&self, lba: u64, blocks: u64) -> core::ops::Range<usize> {
        let s = lba as usize * self.bs;
        s..s + blocks as usize * self.bs
    }
    fn write(&mut self, lba: u64, src: &[u8]) {
        let r = self.range(lba, (src.len() / self.bs) as u64);
        self.data[r].copy_from_slice(src);
        for b in lba..lba + (src.len() / self.bs) as u64 {
            self.mapped[b as usize] = true;
        }
    }
    fn unmap(&mut self, lba: u64, n: u64) {
        let r = self.range(lba, n);
        self.data[r].fill(0);
        for b in lba..lba + n {
            self.mapped[b as usize] = false;
        }
    }
}

#[derive(Debug)]
struct Outcome {
    status: ScsiStatus,
    sense: Option<SenseData>,
    residual: Residual,
    data: Vec<u8>,
    asked_data_out: Option<u32>,
}

impl Outcome {
    fn good(&self) -> &Self {
        assert_eq!(self.status, ScsiStatus::Good, "{self:?}");
        self
    }
    fn sense(&self, key: SenseKey, asc: Asc) -> &SenseData {
        assert_eq!(self.status, ScsiStatus::CheckCondition, "{self:?}");
        let s = self.sense.as_ref().expect("sense");
        assert_eq!((s.key(), s.asc()), (key, asc), "{s:?}");
        s
    }
    fn invalid_cdb(&self, byte: u16, bit: Option<u8>) {
        let s = self.sense(SenseKey::IllegalRequest, Asc::INVALID_FIELD_IN_CDB);
        assert_eq!(
            s.sense_key_specific(),
            Some(FieldPointer::cdb(byte, bit).to_bytes())
        );
    }
    fn oob(&self) {
        self.sense(SenseKey::IllegalRequest, Asc::LBA_OUT_OF_RANGE);
    }
}

struct H {
    lu: Lu,
    disk: Disk,
    tag: u32,
}

impl H {
    fn new(cfg: LuConfig) -> H {
        let mut h = H {
            lu: Lu::new(cfg),
            disk: Disk::new(&cfg),
            tag: 0,
        };
        h.lu.add_nexus(N0).unwrap();
        h.lu.add_nexus(N1).unwrap();
        // Clear POWER ON unit attentions.
        h.run(N0, &[0, 0, 0, 0, 0, 0], 0, &[]);
        h.run(N1, &[0, 0, 0, 0, 0, 0], 0, &[]);
        h
    }
    fn thin() -> H {
        H::new(LuConfig::new(1024).thin(true).serial("SER123"))
    }

    fn run(&mut self, nexus: NexusId, cdb: &[u8], expected: u32, data_out: &[u8]) -> Outcome {
        self.tag += 1;
        let task = TaskId {
            nexus,
            tag: TaskTag(self.tag),
        };
        self.lu
            .submit(
                nexus,
                task.tag,
                cdb,
                if data_out.is_empty() {
                    DataDirection::Read
                } else {
                    DataDirection::Write
                },
                expected,
                TaskAttr::Simple,
            )
            .unwrap();
        self.drive(task, data_out)
    }

    fn drive(&mut self, task: TaskId, data_out: &[u8]) -> Outcome {
        let mut data = Vec::new();
        let mut asked = None;
        loop {
            let a = self.lu.poll_action().expect("an action");
            assert_eq!(a.task(), task);
            match a {
                Action::NeedDataOut { len, .. } => {
                    asked = Some(len);
                    assert!(len as usize <= data_out.len(), "asked {len}");
                    self.lu
                        .data_out_ready(task, &data_out[..len as usize])
                        .unwrap();
                }
                Action::DataIn { len, .. } => {
                    let mut buf = vec![0xEE; len as usize + 7];
                    let n = self.lu.emit_data_in(task, &mut buf).unwrap();
                    assert_eq!(n, len as usize);
                    data.extend_from_slice(&buf[..n]);
                }
                Action::Io(io) => self.io(io, data_out, &mut data),
                Action::Complete {
                    status,
                    sense,
                    residual,
                    ..
                } => {
                    assert!(!self.lu.has_task(task));
                    return Outcome {
                        status,
                        sense,
                        residual,
                        data,
                        asked_data_out: asked,
                    };
                }
            }
        }
    }

    fn io(&mut self, io: IoRequest, data_out: &[u8], data: &mut Vec<u8>) {
        self.disk.ios.push(io);
        let t = io.task;
        if let Some(e) = self.disk.fail_next.take() {
            self.lu.complete_io(t, e).unwrap();
            return;
        }
        let r = self.disk.range(io.lba, io.blocks);
        let bs = self.disk.bs;
        match io.op {
            IoOp::Read => {
                data.extend_from_slice(&self.disk.data[r][..io.transfer_len as usize]);
                self.lu.complete_io(t, IoResult::Ok).unwrap();
            }
            IoOp::Write => {
                let off = io.data_offset as usize;
                let src = data_out[off..off + r.len()].to_vec();
                self.disk.write(io.lba, &src);
                self.lu.complete_io(t, IoResult::Ok).unwrap();
            }
            IoOp::Flush | IoOp::Prefetch => self.lu.complete_io(t, IoResult::Ok).unwrap(),
            IoOp::Unmap { descriptors } => {
                assert_eq!(UnmapRanges::new(data_out).count(), descriptors as usize);
                for (lba, n) in UnmapRanges::new(data_out) {
                    self.disk.unmap(lba, u64::from(n));
                }
                self.lu.complete_io(t, IoResult::Ok).unwrap();
            }
            IoOp::WriteSame { unmap, ndob, zero } => {
                let block = if ndob {
                    vec![0; bs]
                } else {
                    data_out[..bs].to_vec()
                };
                assert_eq!(zero, block.iter().all(|b| *b == 0));
                if unmap {
                    self.disk.unmap(io.lba, io.blocks);
                } else {
                    for k in 0..io.blocks {
                        self.disk.write(io.lba + k, &block);
                    }
                }
                self.lu.complete_io(t, IoResult::Ok).unwrap();
            }
            IoOp::Verify { mode } => {
                let read = self.disk.data[r].to_vec();
                match mode {
                    VerifyMode::Medium => self.lu.complete_io(t, IoResult::Ok).unwrap(),
                    _ => self.lu.compare_data(t, &read, data_out).unwrap(),
                }
            }
            IoOp::CompareAndWrite => {
                let read = self.disk.data[r.clone()].to_vec();
                self.lu
                    .compare_data(t, &read, &data_out[..r.len()])
                    .unwrap();
            }
            IoOp::OrWrite => {
                let mut cur = self.disk.data[r].to_vec();
                or_into(&mut cur, data_out);
                self.disk.write(io.lba, &cur);
                self.lu.complete_io(t, IoResult::Ok).unwrap();
            }
            IoOp::Sanitize { kind } => {
                match kind {
                    SanitizeKind::Erase => self.disk.unmap(0, io.blocks),
                    SanitizeKind::Overwrite {
                        pattern_len,
                        invert,
                        passes,
                    } => {
                        let off = io.data_offset as usize;
                        let pat = &data_out[off..off + usize::from(pattern_len)];
                        let mut block: Vec<u8> = pat.iter().copied().cycle().take(bs).collect();
                        if invert && passes % 2 == 0 {
                            block.iter_mut().for_each(|b| *b = !*b);
                        }
                        for k in 0..io.blocks {
                            self.disk.write(k, &block);
                        }
                    }
                }
                self.lu.complete_io(t, IoResult::Ok).unwrap();
            }
            IoOp::Copy {
                src_lun,
                src_lba,
                dst_lun,
            } => {
                assert_eq!(src_lun, dst_lun);
                let src = self.disk.range(src_lba, io.blocks);
                let block = self.disk.data[src].to_vec();
                self.disk.write(io.lba, &block);
                self.lu.complete_io(t, IoResult::Ok).unwrap();
            }
            IoOp::LbaStatus => {
                let m = self.disk.mapped[io.lba as usize];
                let n = self.disk.mapped[io.lba as usize..]
                    .iter()
                    .take_while(|x| **x == m)
                    .count();
                self.lu.lba_status_result(t, m, n as u64).unwrap();
            }
        }
    }
}

fn cdb10(opc: u8, b1: u8, lba: u32, len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = opc;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb12(opc: u8, b1: u8, lba: u32, len: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = opc;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb16(opc: u8, b1: u8, lba: u64, len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opc;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

// ------------------------------------------------------------------- basics, UA

#[test]
fn power_on_unit_attention_then_good() {
    let mut lu = Lu::new(LuConfig::new(100));
    lu.add_nexus(N0).unwrap();
    let disk = Disk::new(lu.config());
    let mut h = H { lu, disk, tag: 0 };
    // INQUIRY is not affected by the unit attention.
    h.run(N0, &[0x12, 0, 0, 0, 36, 0], 36, &[]).good();
    let o = h.run(N0, &[0; 6], 0, &[]);
    let s = o.sense(SenseKey::UnitAttention, Asc::POWER_ON_RESET);
    assert_eq!(s.as_bytes()[0], 0x70);
    h.run(N0, &[0; 6], 0, &[]).good();
}

#[test]
fn request_sense_reports_and_clears_unit_attention() {
    let mut h = H::thin();
    h.lu.raise_unit_attention(UnitAttention::CapacityChanged);
    let o = h.run(N0, &[0x03, 0, 0, 0, 252, 0], 252, &[]);
    o.good();
    assert_eq!(o.data.len(), 18);
    assert_eq!(o.data[0], 0x70);
    assert_eq!(o.data[2], 0x06);
    assert_eq!((o.data[12], o.data[13]), (0x2A, 0x09));
    assert_eq!(o.residual, Residual::Underflow(252 - 18));
    // Cleared: next command is fine, nothing pending.
    h.run(N0, &[0; 6], 0, &[]).good();
    // Descriptor format on request.
    let o = h.run(N0, &[0x03, 1, 0, 0, 252, 0], 252, &[]);
    assert_eq!(o.data, vec![0x72, 0, 0, 0, 0, 0, 0, 0]);
    // Other nexus still has it.
    h.run(N1, &[0; 6], 0, &[])
        .sense(SenseKey::UnitAttention, Asc::CAPACITY_DATA_HAS_CHANGED);
    // Reserved bits.
    h.run(N0, &[0x03, 2, 0, 0, 252, 0], 252, &[])
        .invalid_cdb(1, Some(7));
}

#[test]
fn unknown_opcode_and_control_byte() {
    let mut h = H::thin();
    let o = h.run(N0, &[0xC7, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[]);
    let s = o.sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    assert_eq!(s.sense_key_specific(), Some([0xC0, 0, 0]));
    // NACA set in the control byte.
    h.run(N0, &[0, 0, 0, 0, 0, 0x04], 0, &[])
        .invalid_cdb(5, Some(2));
    // Empty CDB.
    h.run(N0, &[], 0, &[]).sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
}

// ------------------------------------------------------------------- INQUIRY

#[test]
fn standard_inquiry() {
    let mut h = H::new(
        LuConfig::new(64)
            .removable(true)
            .vendor("ACME")
            .product("DISK"),
    );
    let o = h.run(N0, &[0x12, 0, 0, 0x01, 0xFF, 0], 511, &[]);
    o.good();
    let d = &o.data;
    assert_eq!(d.len(), 96);
    assert_eq!(&d[..8], &[0x00, 0x80, 0x06, 0x12, 91, 0, 0, 0x02]);
    assert_eq!(&d[8..16], b"ACME    ");
    assert_eq!(&d[16..32], b"DISK            ");
    assert_eq!(&d[32..36], b"0001");
    assert_eq!(
        &d[58..66],
        &[0x00, 0xA0, 0x09, 0x60, 0x04, 0x60, 0x04, 0xC0]
    );
    assert!(d[66..].iter().all(|b| *b == 0));
    assert_eq!(o.residual, Residual::Underflow(511 - 96));
    // Allocation length truncates; expected length smaller than allocation: overflow.
    let o = h.run(N0, &[0x12, 0, 0, 0, 5, 0], 5, &[]);
    assert_eq!(o.data, vec![0x00, 0x80, 0x06, 0x12, 91]);
    assert_eq!(o.residual, Residual::None);
    let o = h.run(N0, &[0x12, 0, 0, 0, 96, 0], 10, &[]);
    assert_eq!(o.data.len(), 10);
    assert_eq!(o.residual, Residual::Overflow(86));
    // EVPD = 0 with a page code, CMDDT.
    h.run(N0, &[0x12, 0, 0x80, 0, 96, 0], 96, &[])
        .invalid_cdb(2, None);
    h.run(N0, &[0x12, 2, 0, 0, 96, 0], 96, &[])
        .invalid_cdb(1, Some(1));
    // Unsupported VPD page.
    h.run(N0, &[0x12, 1, 0x99, 0, 96, 0], 96, &[])
        .invalid_cdb(2, None);
}

#[test]
fn vpd_pages() {
    let mut h = H::new(
        LuConfig::new(1 << 20)
            .thin(true)
            .serial("SER123")
            .naa(0x5001_4050_1234_5678)
            .physical_block_exponent(3),
    );
    h.lu.set_scsi_name("iqn.x");
    let vpd = |h: &mut H, p: u8| h.run(N0, &[0x12, 1, p, 0x10, 0, 0], 4096, &[]).data;
    assert_eq!(
        vpd(&mut h, 0x00),
        vec![0, 0, 0, 7, 0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2]
    );
    assert_eq!(vpd(&mut h, 0x80), b"\x00\x80\x00\x06SER123".to_vec());
    let d = vpd(&mut h, 0x83);
    let mut want = vec![0, 0x83, 0, 0];
    want.extend_from_slice(&[1, 3, 0, 8, 0x50, 0x01, 0x40, 0x50, 0x12, 0x34, 0x56, 0x78]);
    want.extend_from_slice(&[2, 1, 0, 14]);
    want.extend_from_slice(b"TGT-RS  SER123");
    want.extend_from_slice(&[0x51, 0x94, 0, 4, 0, 0, 0, 1]);
    want.extend_from_slice(&[0x51, 0x95, 0, 4, 0, 0, 0, 1]);
    want.extend_from_slice(&[0x53, 0xA8, 0, 8]);
    want.extend_from_slice(b"iqn.x\0\0\0");
    want[3] = (want.len() - 4) as u8;
    assert_eq!(d, want);
    let d = vpd(&mut h, 0x86);
    assert_eq!(d.len(), 64);
    assert_eq!(&d[..6], &[0, 0x86, 0, 60, 0, 7]);
    let d = vpd(&mut h, 0xB0);
    assert_eq!(d.len(), 64);
    assert_eq!(&d[..4], &[0, 0xB0, 0, 0x3C]);
    assert_eq!(d[4], 0); // WSNZ
    assert_eq!(d[5], 255);
    assert_eq!(&d[6..8], &[0, 8]);
    assert_eq!(&d[8..12], &16384u32.to_be_bytes());
    assert_eq!(&d[20..24], &0x10_0000u32.to_be_bytes());
    assert_eq!(&d[24..28], &256u32.to_be_bytes());
    assert_eq!(&d[28..32], &8u32.to_be_bytes());
    assert_eq!(&d[36..44], &0x40_0000u64.to_be_bytes());
    let d = vpd(&mut h, 0xB1);
    assert_eq!(&d[..6], &[0, 0xB1, 0, 0x3C, 0, 1]);
    assert_eq!(vpd(&mut h, 0xB2), vec![0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]);
    // Fully provisioned: no UNMAP limits, LBPU clear.
    let mut h = H::new(LuConfig::new(64));
    let d = vpd(&mut h, 0xB0);
    assert!(d[20..36].iter().all(|b| *b == 0));
    assert_eq!(vpd(&mut h, 0xB2), vec![0, 0xB2, 0, 4, 0, 0, 0, 0]);
}

// ------------------------------------------------------------------- READ CAPACITY

#[test]
fn read_capacity() {
    let mut h = H::new(
        LuConfig::new(1000)
            .block_size(BlockSize::B4096)
            .thin(true)
            .physical_block_exponent(0),
    );
    let o = h.run(N0, &cdb10(0x25, 0, 0, 0), 8, &[]);
    assert_eq!(o.good().data, vec![0, 0, 0x03, 0xE7, 0, 0, 0x10, 0]);
    h.run(N0, &cdb10(0x25, 0, 5, 0), 8, &[])
        .invalid_cdb(2, None);
    let mut c = cdb16(0x9E, 0x10, 0, 32);
    let o = h.run(N0, &c, 32, &[]);
    let mut want = vec![0, 0, 0, 0, 0, 0, 0x03, 0xE7, 0, 0, 0x10, 0, 0, 0, 0xC0, 0];
    want.extend_from_slice(&[0; 16]);
    assert_eq!(o.good().data, want);
    // Allocation length 0..15 is fine (truncated).
    for n in 0..16u32 {
        c[10..14].copy_from_slice(&n.to_be_bytes());
        let o = h.run(N0, &c, n, &[]);
        o.good();
        assert_eq!(o.data, want[..n as usize].to_vec());
    }
    // Bad service action.
    h.run(N0, &cdb16(0x9E, 0x1F, 0, 32), 32, &[])
        .invalid_cdb(1, Some(4));
    // Large capacity saturates READ CAPACITY (10).
    let mut h = H::new(LuConfig::new(0x1_0000_0005));
    let o = h.run(N0, &cdb10(0x25, 0, 0, 0), 8, &[]);
    assert_eq!(&o.data[..4], &[0xFF; 4]);
}

// ------------------------------------------------------------------- READ / WRITE

#[test]
fn write_then_read_all_sizes() {
    let mut h = H::thin();
    let data = pattern(4 * 512, 3);
    h.run(N0, &[0x0A, 0, 0, 10, 4, 0], 2048, &data).good();
    assert_eq!(&h.disk.data[10 * 512..14 * 512], &data[..]);
    let o = h.run(N0, &[0x08, 0, 0, 10, 4, 0], 2048, &[]);
    assert_eq!(o.good().data, data);
    let d2 = pattern(2 * 512, 9);
    h.run(N0, &cdb10(0x2A, 0x18, 100, 2), 1024, &d2).good();
    let io = *h.disk.ios.last().unwrap();
    assert!(io.fua && io.dpo);
    assert_eq!(h.run(N0, &cdb10(0x28, 0, 100, 2), 1024, &[]).data, d2);
    h.run(N0, &cdb12(0xAA, 0, 200, 2), 1024, &d2).good();
    assert_eq!(h.run(N0, &cdb12(0xA8, 0, 200, 2), 1024, &[]).data, d2);
    h.run(N0, &cdb16(0x8A, 0, 300, 2), 1024, &d2).good();
    assert_eq!(h.run(N0, &cdb16(0x88, 0, 300, 2), 1024, &[]).data, d2);
    // READ(6) length 0 means 256 blocks.
    let o = h.run(N0, &[0x08, 0, 0, 0, 0, 0], 256 * 512, &[]);
    assert_eq!(o.good().data.len(), 256 * 512);
}

#[test]
fn read_write_range_and_field_errors() {
    let mut h = H::thin();
    // Beyond the end, at 2^31 and -1.
    h.run(N0, &cdb10(0x28, 0, 1024, 1), 512, &[]).oob();
    h.run(N0, &cdb10(0x28, 0, 1023, 2), 1024, &[]).oob();
    h.run(N0, &cdb10(0x28, 0, 1025, 0), 0, &[]).oob();
    h.run(N0, &cdb16(0x88, 0, u64::MAX, 1), 512, &[]).oob();
    h.run(N0, &cdb16(0x88, 0, 1 << 63, 1), 512, &[]).oob();
    h.run(N0, &[0x08, 0, 0x04, 0, 1, 0], 512, &[]).oob();
    h.run(N0, &cdb10(0x2A, 0, 0xFFFF_FFFF, 1), 512, &vec![0; 512])
        .oob();
    // 0 blocks at LBA 0 and at the end are fine.
    h.run(N0, &cdb10(0x28, 0, 0, 0), 0, &[]).good();
    h.run(N0, &cdb10(0x2A, 0, 1024, 0), 0, &[]).good();
    // RDPROTECT / WRPROTECT without protection information.
    h.run(N0, &cdb10(0x28, 0x20, 0, 1), 512, &[])
        .invalid_cdb(1, Some(7));
    h.run(N0, &cdb16(0x8A, 0xE0, 0, 1), 512, &vec![0; 512])
        .invalid_cdb(1, Some(7));
    // Above the maximum transfer length.
    let mut h = H::new(LuConfig::new(1 << 20).transfer_lengths(8, 16));
    h.run(N0, &cdb10(0x28, 0, 0, 17), 17 * 512, &[])
        .invalid_cdb(7, None);
    h.run(N0, &cdb16(0x88, 0, 0, 17), 17 * 512, &[])
        .invalid_cdb(10, None);
    assert!(h.disk.ios.is_empty());
}

#[test]
fn read_residuals() {
    let mut h = H::thin();
    // EDTL 0: nothing sent, overflow of one block.
    let o = h.run(N0, &cdb10(0x28, 0, 0, 1), 0, &[]);
    assert!(o.good().data.is_empty());
    assert_eq!(o.residual, Residual::Overflow(512));
    let o = h.run(N0, &cdb10(0x28, 0, 0, 1), 10000, &[]);
    assert_eq!(o.good().data.len(), 512);
    assert_eq!(o.residual, Residual::Underflow(10000 - 512));
    let o = h.run(N0, &cdb10(0x28, 0, 0, 2), 512, &[]);
    assert_eq!(o.good().data.len(), 512);
    assert_eq!(o.residual, Residual::Overflow(512));
}

#[test]
fn write_residuals() {
    let mut h = H::thin();
    h.disk.data[..1024].fill(b'a');
    // EDTL not a whole number of blocks: refused without writing, overflow reported.
    let o = h.run(N0, &cdb10(0x2A, 0, 0, 1), 200, &[b'b'; 200]);
    o.sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT,
    );
    assert_eq!(o.residual, Residual::Overflow(312));
    assert_eq!(o.asked_data_out, None);
    // EDTL 0: nothing written, GOOD, overflow of one block.
    let o = h.run(N0, &cdb10(0x2E, 0x02, 0, 1), 0, &[]);
    o.good();
    assert_eq!(
        (o.residual, o.asked_data_out),
        (Residual::Overflow(512), None)
    );
    assert!(h.disk.data[..1024].iter().all(|b| *b == b'a'));
    // Two blocks with EDTL of one block: only the first block is written.
    let o = h.run(N0, &cdb16(0x8A, 0, 0, 2), 512, &[b'b'; 512]);
    o.good();
    assert_eq!(
        (o.residual, o.asked_data_out),
        (Residual::Overflow(512), Some(512))
    );
    assert_eq!(h.disk.ios.last().unwrap().blocks, 1);
    assert!(h.disk.data[..512].iter().all(|b| *b == b'b'));
    assert!(h.disk.data[512..1024].iter().all(|b| *b == b'a'));
    // EDTL > SPDTL: one block written, underflow.
    h.disk.data[..1024].fill(b'a');
    let o = h.run(N0, &cdb10(0x2A, 0, 0, 1), 1024, &[b'b'; 1024]);
    o.good();
    assert_eq!(o.asked_data_out, Some(512));
    assert_eq!(o.residual, Residual::Underflow(512));
    assert!(h.disk.data[..512].iter().all(|b| *b == b'b'));
    assert!(h.disk.data[512..1024].iter().all(|b| *b == b'a'));
}

#[test]
fn io_errors_map_to_sense() {
    let mut h = H::thin();
    let cases = [
        (
            IoResult::ReadError,
            SenseKey::MediumError,
            Asc::UNRECOVERED_READ_ERROR,
        ),
        (
            IoResult::WriteError,
            SenseKey::MediumError,
            Asc::WRITE_ERROR,
        ),
        (
            IoResult::NoSpace,
            SenseKey::DataProtect,
            Asc::SPACE_ALLOCATION_FAILED,
        ),
        (
            IoResult::OutOfRange,
            SenseKey::IllegalRequest,
            Asc::LBA_OUT_OF_RANGE,
        ),
        (
            IoResult::Failed,
            SenseKey::HardwareError,
            Asc::INTERNAL_TARGET_FAILURE,
        ),
    ];
    for (r, k, a) in cases {
        h.disk.fail_next = Some(r);
        let o = h.run(N0, &cdb10(0x28, 0, 0, 1), 512, &[]);
        o.sense(k, a);
        assert_eq!(o.residual, Residual::Underflow(512));
    }
    h.disk.fail_next = Some(IoResult::Miscompare { offset: 77 });
    let o = h.run(N0, &cdb10(0x28, 0, 0, 1), 512, &[]);
    let s = o.sense(SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY);
    assert_eq!(s.information(), Some(77));
}

// ------------------------------------------------------------------- VERIFY, WRITE AND VERIFY

#[test]
fn verify_compare_and_miscompare() {
    let mut h = H::thin();
    let d = pattern(3 * 512, 1);
    h.disk.write(5, &d);
    // BYTCHK = 0: medium verification only.
    let o = h.run(N0, &cdb10(0x2F, 0, 5, 3), 0, &[]);
    o.good();
    assert_eq!(o.asked_data_out, None);
    // BYTCHK = 1: match.
    h.run(N0, &cdb10(0x2F, 0x02, 5, 3), 1536, &d).good();
    h.run(N0, &cdb12(0xAF, 0x02, 5, 3), 1536, &d).good();
    h.run(N0, &cdb16(0x8F, 0x12, 5, 3), 1536, &d).good();
    // Flip a bit at offset 700.
    let mut bad = d.clone();
    bad[700] ^= 1;
    let o = h.run(N0, &cdb10(0x2F, 0x02, 5, 3), 1536, &bad);
    let s = o.sense(SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY);
    assert_eq!(s.information(), Some(700));
    // BYTCHK = 3: one block compared with each.
    let one = vec![0x11u8; 512];
    for k in 0..3 {
        h.disk.write(20 + k, &one);
    }
    let o = h.run(N0, &cdb10(0x2F, 0x06, 20, 3), 512, &one);
    o.good();
    assert_eq!(o.asked_data_out, Some(512));
    h.disk.data[21 * 512 + 3] = 0;
    let o = h.run(N0, &cdb10(0x2F, 0x06, 20, 3), 512, &one);
    assert_eq!(
        o.sense(SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY)
            .information(),
        Some(515)
    );
    // BYTCHK = 2 is reserved; VRPROTECT; range.
    h.run(N0, &cdb10(0x2F, 0x04, 0, 1), 512, &one)
        .invalid_cdb(1, Some(2));
    h.run(N0, &cdb10(0x2F, 0x20, 0, 1), 0, &[])
        .invalid_cdb(1, Some(7));
    h.run(N0, &cdb10(0x2F, 0, 1025, 0), 0, &[]).oob();
    h.run(N0, &cdb16(0x8F, 0, u64::MAX, 1), 0, &[]).oob();
    h.run(N0, &cdb10(0x2F, 0x02, 0, 0), 0, &[]).good();
}

#[test]
fn write_and_verify() {
    let mut h = H::thin();
    let d = pattern(2 * 512, 5);
    h.run(N0, &cdb10(0x2E, 0x02, 7, 2), 1024, &d).good();
    let io = *h.disk.ios.last().unwrap();
    assert_eq!((io.op, io.fua), (IoOp::Write, true));
    assert_eq!(&h.disk.data[7 * 512..9 * 512], &d[..]);
    h.run(N0, &cdb12(0xAE, 0, 9, 2), 1024, &d).good();
    h.run(N0, &cdb16(0x8E, 0x10, 11, 2), 1024, &d).good();
    h.run(N0, &cdb16(0x8E, 0, 1023, 2), 1024, &d).oob();
    h.run(N0, &cdb10(0x2E, 0x04, 0, 1), 512, &d)
        .invalid_cdb(1, Some(2));
}

// ------------------------------------------------------------------- WRITE SAME

#[test]
fn write_same_writes_and_unmaps() {
    let mut h = H::thin();
    let block = vec![0xA5u8; 512];
    h.run(N0, &cdb10(0x41, 0, 10, 5), 512, &block).good();
    assert!(h.disk.data[10 * 512..15 * 512].iter().all(|b| *b == 0xA5));
    assert!(h.disk.mapped[10..15].iter().all(|m| *m));
    // UNMAP with a zero block deallocates.
    let zero = vec![0u8; 512];
    h.run(N0, &cdb10(0x41, 0x08, 10, 5), 512, &zero).good();
    let io = *h.disk.ios.last().unwrap();
    assert_eq!(
        io.op,
        IoOp::WriteSame {
            unmap: true,
            ndob: false,
            zero: true
        }
    );
    assert!(h.disk.mapped[10..15].iter().all(|m| !*m));
    // WRITE SAME 16 with NDOB: no data out.
    h.disk.write(30, &block);
    let o = h.run(N0, &cdb16(0x93, 0x09, 30, 1), 0, &[]);
    o.good();
    assert_eq!(o.asked_data_out, None);
    assert!(!h.disk.mapped[30]);
    // 0 blocks: to the end of the LU.
    h.run(N0, &cdb16(0x93, 0, 1020, 0), 512, &block).good();
    assert_eq!(h.disk.ios.last().unwrap().blocks, 4);
}

#[test]
fn write_same_errors() {
    let mut h = H::new(LuConfig::new(1024).thin(true).max_write_same(64));
    let block = vec![1u8; 512];
    // ANCHOR without UNMAP, ANCHOR unsupported, PBDATA, LBDATA.
    h.run(N0, &cdb10(0x41, 0x10, 0, 1), 512, &block)
        .invalid_cdb(1, Some(4));
    h.run(N0, &cdb10(0x41, 0x18, 0, 1), 512, &block)
        .invalid_cdb(1, Some(4));
    h.run(N0, &cdb10(0x41, 0x04, 0, 1), 512, &block)
        .invalid_cdb(1, Some(2));
    h.run(N0, &cdb10(0x41, 0x02, 0, 1), 512, &block)
        .invalid_cdb(1, Some(1));
    // Over the limit, also via 0 = to the end.
    h.run(N0, &cdb10(0x41, 0, 0, 65), 512, &block)
        .invalid_cdb(7, None);
    h.run(N0, &cdb10(0x41, 0, 0, 0), 512, &block)
        .invalid_cdb(7, None);
    h.run(N0, &cdb10(0x41, 0, 1024 - 64, 64), 512, &block)
        .good();
    // Range.
    h.run(N0, &cdb10(0x41, 0, 1025, 0), 512, &block).oob();
    h.run(N0, &cdb10(0x41, 0, 1023, 2), 512, &block).oob();
    h.run(N0, &cdb16(0x93, 0, u64::MAX, 1), 512, &block).oob();
    // Wrong Data-Out size.
    h.run(N0, &cdb10(0x41, 0x08, 0, 1), 256, &block[..256])
        .sense(SenseKey::IllegalRequest, Asc::INVALID_FIELD_IN_CDB);
    h.run(N0, &cdb10(0x41, 0x08, 0, 1), 1024, &[1u8; 1024])
        .sense(SenseKey::IllegalRequest, Asc::INVALID_FIELD_IN_CDB);
}

// ------------------------------------------------------------------- UNMAP / GET LBA STATUS

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut v = vec![0u8; 8];
    for (l, n) in ranges {
        v.extend_from_slice(&l.to_be_bytes());
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&[0; 4]);
    }
    let bd = (ranges.len() * 16) as u16;
    v[0..2].copy_from_slice(&(bd + 6).to_be_bytes());
    v[2..4].copy_from_slice(&bd.to_be_bytes());
    v
}

fn unmap_cdb(len: u16) -> [u8; 10] {
    cdb10(0x42, 0, 0, len)
}

#[test]
fn unmap_and_lba_status() {
    let mut h = H::thin();
    h.disk.write(0, &vec![b'a'; 16 * 512]);
    let l = unmap_list(&[(2, 3), (10, 1)]);
    h.run(N0, &unmap_cdb(l.len() as u16), l.len() as u32, &l)
        .good();
    assert_eq!(
        &h.disk.mapped[..12],
        &[
            true, true, false, false, false, true, true, true, true, true, false, true
        ]
    );
    let gls = |h: &mut H, lba: u64| h.run(N0, &cdb16(0x9E, 0x12, lba, 24), 24, &[]);
    let o = gls(&mut h, 2);
    let mut want = vec![0, 0, 0, 20, 0, 0, 0, 0];
    want.extend_from_slice(&2u64.to_be_bytes());
    want.extend_from_slice(&3u32.to_be_bytes());
    want.extend_from_slice(&[1, 0, 0, 0]);
    assert_eq!(o.good().data, want);
    let o = gls(&mut h, 5);
    assert_eq!(&o.data[8..16], &5u64.to_be_bytes());
    assert_eq!(&o.data[16..20], &5u32.to_be_bytes());
    assert_eq!(o.data[20], 0);
    gls(&mut h, 1024).oob();
    gls(&mut h, u64::MAX).oob();
    gls(&mut h, 1 << 63).oob();
    // 0-block descriptors, no descriptors, zero parameter list length.
    let l = unmap_list(&[(1024, 0), (5, 0)]);
    h.run(N0, &unmap_cdb(l.len() as u16), l.len() as u32, &l)
        .good();
    let l = unmap_list(&[]);
    h.run(N0, &unmap_cdb(8), 8, &l).good();
    h.run(N0, &unmap_cdb(0), 0, &[]).good();
}

#[test]
fn unmap_errors() {
    let mut h = H::new(LuConfig::new(1024).thin(true).unmap_limits(16, 2));
    let l = unmap_list(&[(1020, 5)]);
    h.run(N0, &unmap_cdb(l.len() as u16), l.len() as u32, &l)
        .oob();
    let l = unmap_list(&[(0, 1), (1, 1), (2, 1)]);
    let o = h.run(N0, &unmap_cdb(l.len() as u16), l.len() as u32, &l);
    let s = o.sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(s.sense_key_specific(), Some([0x80, 0, 2]));
    let l = unmap_list(&[(0, 10), (100, 7)]);
    let o = h.run(N0, &unmap_cdb(l.len() as u16), l.len() as u32, &l);
    let s = o.sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(s.sense_key_specific(), Some([0x80, 0, 32]));
    h.run(N0, &unmap_cdb(4), 4, &[0; 4])
        .sense(SenseKey::IllegalRequest, Asc::PARAMETER_LIST_LENGTH_ERROR);
    h.run(N0, &[0x42, 1, 0, 0, 0, 0, 0, 0, 24, 0], 24, &[0; 24])
        .invalid_cdb(1, Some(0));
    assert!(h.disk.ios.is_empty());
    // A fully provisioned LU does not implement UNMAP; GET LBA STATUS says "mapped".
    let mut h = H::new(LuConfig::new(64));
    let l = unmap_list(&[(0, 1)]);
    h.run(N0, &unmap_cdb(24), 24, &l).sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    let o = h.run(N0, &cdb16(0x9E, 0x12, 10, 24), 24, &[]);
    assert_eq!(&o.good().data[16..21], &[0, 0, 0, 54, 0]);
    assert!(h.disk.ios.is_empty());
}

// ------------------------------------------------------------------- ORWRITE, COMPARE AND WRITE

#[test]
fn orwrite() {
    let mut h = H::thin();
    h.run(N0, &cdb16(0x8B, 0, 3, 2), 1024, &[0xA5; 1024]).good();
    h.run(N0, &cdb16(0x8B, 0x08, 3, 2), 1024, &[0x5A; 1024])
        .good();
    assert!(h.disk.data[3 * 512..5 * 512].iter().all(|b| *b == 0xFF));
    assert!(h.disk.ios.last().unwrap().fua);
    h.run(N0, &cdb16(0x8B, 0, 0, 0), 0, &[]).good();
    h.run(N0, &cdb16(0x8B, 0, 1025, 0), 0, &[]).oob();
    h.run(N0, &cdb16(0x8B, 0, u64::MAX, 0), 0, &[]).oob();
    h.run(N0, &cdb16(0x8B, 0x20, 0, 1), 512, &[0; 512])
        .invalid_cdb(1, Some(7));
}

#[test]
fn compare_and_write() {
    let mut h = H::thin();
    h.disk.write(4, &[7u8; 1024]);
    let mut d = vec![7u8; 1024];
    d.extend_from_slice(&[9u8; 1024]);
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&4u64.to_be_bytes());
    c[13] = 2;
    h.run(N0, &c, 2048, &d).good();
    assert!(h.disk.data[4 * 512..6 * 512].iter().all(|b| *b == 9));
    // Now the compare half no longer matches: miscompare at 0.
    let o = h.run(N0, &c, 2048, &d);
    assert_eq!(
        o.sense(SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY)
            .information(),
        Some(0)
    );
    // Wrong Data-Out size.
    h.run(N0, &c, 4096, &[0; 4096]).invalid_cdb(13, None);
    h.run(N0, &c, 1024, &[0; 1024]).sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT,
    );
}

// ------------------------------------------------------------------- PRE-FETCH, SYNC CACHE

#[test]
fn prefetch_and_sync_cache() {
    let mut h = H::thin();
    h.run(N0, &cdb10(0x34, 0x02, 0, 8), 0, &[]).good();
    assert_eq!(h.disk.ios.last().unwrap().op, IoOp::Prefetch);
    h.run(N0, &cdb16(0x90, 0, 1000, 24), 0, &[]).good();
    h.run(N0, &cdb10(0x34, 0, 0, 0), 0, &[]).good();
    h.run(N0, &cdb10(0x34, 0, 1025, 0), 0, &[]).oob();
    h.run(N0, &cdb16(0x90, 0, u64::MAX, 1), 0, &[]).oob();
    h.run(N0, &cdb10(0x35, 0, 0, 0), 0, &[]).good();
    let io = *h.disk.ios.last().unwrap();
    assert_eq!((io.op, io.lba, io.blocks), (IoOp::Flush, 0, 1024));
    h.run(N0, &cdb16(0x91, 0, 10, 5), 0, &[]).good();
    h.run(N0, &cdb16(0x91, 0, 1020, 5), 0, &[]).oob();
}

// ------------------------------------------------------------------- MODE SENSE / SELECT

#[test]
fn mode_sense_pages() {
    let mut h = H::new(LuConfig::new(1000).read_only(true));
    let o = h.run(N0, &[0x1A, 0, 0x3F, 0, 255, 0], 255, &[]);
    let d = &o.good().data;
    // header 4 + bd 8 + 12 + 20 + 12 + 12
    assert_eq!(d.len(), 68);
    assert_eq!(&d[..4], &[67, 0, 0x90, 8]);
    assert_eq!(&d[4..12], &[0, 0, 0x03, 0xE8, 0, 0, 0x02, 0]);
    assert_eq!(&d[12..16], &[0x01, 0x0A, 0xC0, 0]);
    assert_eq!(&d[24..27], &[0x08, 0x12, 0x04]);
    assert_eq!(&d[44..50], &[0x0A, 0x0A, 0x02, 0x10, 0, 0]);
    assert_eq!(&d[56..59], &[0x1C, 0x0A, 0x08]);
    assert_eq!(o.residual, Residual::Underflow(255 - 68));
    // All pages and subpages include the control extension.
    let o = h.run(N0, &[0x1A, 0x08, 0x3F, 0xFF, 255, 0], 255, &[]);
    assert_eq!(o.data.len(), 4 + 56 + 32);
    assert_eq!(&o.data[..4], &[91, 0, 0x90, 0]);
    assert_eq!(&o.data[48..52], &[0x4A, 0x01, 0x00, 0x1C]);
    // Changeable values of the control page; 4-byte allocation gets 4 bytes, no residual.
    let o = h.run(N0, &[0x1A, 0x08, 0x4A, 0, 255, 0], 255, &[]);
    assert_eq!(
        o.data,
        vec![
            15, 0, 0x90, 0, 0x0A, 0x0A, 0x04, 0, 0x08, 0, 0, 0, 0, 0, 0, 0
        ]
    );
    let o = h.run(N0, &[0x1A, 0, 0x3F, 0, 4, 0], 4, &[]);
    assert_eq!((o.data.len(), o.residual), (4, Residual::None));
    // MODE SENSE (10) with LLBAA.
    let o = h.run(N0, &[0x5A, 0x10, 0x08, 0, 0, 0, 0, 0, 255, 0], 255, &[]);
    assert_eq!(&o.data[..8], &[0, 42, 0, 0x90, 1, 0, 0, 16]);
    assert_eq!(
        &o.data[8..24],
        &[0, 0, 0, 0, 0, 0, 3, 0xE8, 0, 0, 0, 0, 0, 0, 2, 0]
    );
    assert_eq!(&o.data[24..27], &[0x08, 0x12, 0x04]);
    // Saved values, unknown page, unknown subpage.
    let o = h.run(N0, &[0x1A, 0, 0xC8, 0, 255, 0], 255, &[]);
    let s = o.sense(
        SenseKey::IllegalRequest,
        Asc::SAVING_PARAMETERS_NOT_SUPPORTED,
    );
    assert_eq!(s.sense_key_specific(), Some([0xCF, 0, 2]));
    h.run(N0, &[0x1A, 0, 0x19, 0, 255, 0], 255, &[])
        .invalid_cdb(2, Some(5));
    h.run(N0, &[0x1A, 0, 0x08, 0x05, 255, 0], 255, &[])
        .invalid_cdb(3, None);
}

fn control_page_select(d_sense: bool, swp: bool) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 0, 0x0A, 0x0A, 0x02, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
    if d_sense {
        v[6] |= 0x04;
    }
    if swp {
        v[8] |= 0x08;
    }
    v
}

#[test]
fn mode_select_swp_dsense_wce() {
    let mut h = H::thin();
    let p = control_page_select(true, true);
    h.run(
        N0,
        &[0x15, 0x10, 0, 0, p.len() as u8, 0],
        p.len() as u32,
        &p,
    )
    .good();
    assert!(h.lu.write_protected());
    // Descriptor sense now, and writes are refused.
    let o = h.run(N0, &cdb10(0x2A, 0, 0, 1), 512, &[0; 512]);
    let s = o.sense(SenseKey::DataProtect, Asc::WRITE_PROTECTED);
    assert!(s.is_descriptor());
    h.run(N0, &cdb10(0x28, 0, 0, 1), 512, &[]).good();
    // The other nexus gets MODE PARAMETERS CHANGED, this one does not.
    h.run(N1, &[0; 6], 0, &[])
        .sense(SenseKey::UnitAttention, Asc::MODE_PARAMETERS_CHANGED);
    h.run(N0, &[0; 6], 0, &[]).good();
    let o = h.run(N0, &[0x1A, 0, 0x0A, 0, 255, 0], 255, &[]);
    assert_eq!(o.data[2], 0x90);
    assert_eq!(&o.data[12..17], &[0x0A, 0x0A, 0x06, 0x10, 0x08]);
    let p = control_page_select(false, false);
    h.run(
        N0,
        &[0x15, 0x10, 0, 0, p.len() as u8, 0],
        p.len() as u32,
        &p,
    )
    .good();
    assert!(!h.lu.write_protected());
    // Caching page WCE off via MODE SELECT (10): writes then carry FUA.
    let mut p = vec![0u8; 8];
    p.extend_from_slice(&[0x08, 0x12]);
    p.extend_from_slice(&[0; 18]);
    h.run(
        N0,
        &[0x55, 0x10, 0, 0, 0, 0, 0, 0, p.len() as u8, 0],
        p.len() as u32,
        &p,
    )
    .good();
    assert!(!h.lu.write_cache_enabled());
    h.run(N0, &cdb10(0x2A, 0, 0, 1), 512, &[0; 512]).good();
    assert!(h.disk.ios.last().unwrap().fua);
}

#[test]
fn mode_select_errors() {
    let mut h = H::thin();
    // A non-changeable bit (QAM cleared).
    let mut p = control_page_select(false, false);
    p[7] = 0;
    let o = h.run(N0, &[0x15, 0x10, 0, 0, 16, 0], 16, &p);
    let s = o.sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(s.sense_key_specific(), Some([0x80, 0, 7]));
    // Wrong page length.
    let mut p = control_page_select(false, false);
    p[5] = 0x0B;
    let o = h.run(N0, &[0x15, 0x10, 0, 0, 16, 0], 16, &p);
    let s = o.sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(s.sense_key_specific(), Some([0x80, 0, 5]));
    // Unknown page.
    let mut p = control_page_select(false, false);
    p[4] = 0x19;
    let o = h.run(N0, &[0x15, 0x10, 0, 0, 16, 0], 16, &p);
    let s = o.sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(s.sense_key_specific(), Some([0x88 | 5, 0, 4]));
    // Truncated page.
    let p = control_page_select(false, false);
    h.run(N0, &[0x15, 0x10, 0, 0, 10, 0], 10, &p[..10])
        .sense(SenseKey::IllegalRequest, Asc::PARAMETER_LIST_LENGTH_ERROR);
    // Header too short, SP set.
    h.run(N0, &[0x15, 0x10, 0, 0, 2, 0], 2, &p[..2])
        .sense(SenseKey::IllegalRequest, Asc::PARAMETER_LIST_LENGTH_ERROR);
    h.run(N0, &[0x15, 0x11, 0, 0, 16, 0], 16, &p)
        .invalid_cdb(1, Some(0));
    // Block descriptor with a wrong block length.
    let mut p = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
    let o = h.run(N0, &[0x15, 0x10, 0, 0, 12, 0], 12, &p);
    let s = o.sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(s.sense_key_specific(), Some([0x80, 0, 9]));
    p[10] = 0x02;
    h.run(N0, &[0x15, 0x10, 0, 0, 12, 0], 12, &p).good();
    assert!(!h.lu.write_protected());
}

// ------------------------------------------------------------------- removable media

#[test]
fn start_stop_prevent_allow() {
    let mut h = H::new(LuConfig::new(100).removable(true));
    let ssu = |loej_start: u8| [0x1B, 1, 0, 0, loej_start, 0];
    // Eject, then medium commands fail with NOT READY.
    h.run(N0, &ssu(0x02), 0, &[]).good();
    assert!(!h.lu.medium_loaded());
    let nm = |o: Outcome| {
        o.sense(SenseKey::NotReady, Asc::MEDIUM_NOT_PRESENT);
    };
    nm(h.run(N0, &[0; 6], 0, &[]));
    nm(h.run(N0, &cdb10(0x28, 0, 0, 1), 512, &[]));
    nm(h.run(N0, &cdb10(0x2A, 0, 0, 1), 512, &[0; 512]));
    nm(h.run(N0, &cdb10(0x25, 0, 0, 0), 8, &[]));
    nm(h.run(N0, &cdb16(0x9E, 0x10, 0, 32), 32, &[]));
    nm(h.run(N0, &cdb10(0x35, 0, 0, 0), 0, &[]));
    nm(h.run(N0, &cdb10(0x2F, 0, 0, 1), 0, &[]));
    nm(h.run(N0, &cdb10(0x34, 0, 0, 1), 0, &[]));
    nm(h.run(N0, &cdb16(0x93, 0, 0, 1), 512, &[0; 512]));
    // REQUEST SENSE reports it; INQUIRY still works.
    let o = h.run(N0, &[0x03, 0, 0, 0, 18, 0], 18, &[]);
    assert_eq!((o.data[2], o.data[12]), (0x02, 0x3A));
    h.run(N0, &[0x12, 0, 0, 0, 36, 0], 36, &[]).good();
    // Load.
    h.run(N0, &ssu(0x03), 0, &[]).good();
    h.run(N0, &[0; 6], 0, &[]).good();
    // LOEJ = 0 or a power condition: no change.
    h.run(N0, &ssu(0x00), 0, &[]).good();
    h.run(N0, &ssu(0x32), 0, &[]).good();
    assert!(h.lu.medium_loaded());
    // PREVENT on one nexus blocks eject from any nexus.
    h.run(N0, &[0x1E, 0, 0, 0, 1, 0], 0, &[]).good();
    h.run(N1, &ssu(0x02), 0, &[])
        .sense(SenseKey::IllegalRequest, Asc::MEDIUM_REMOVAL_PREVENTED);
    h.run(N0, &ssu(0x02), 0, &[])
        .sense(SenseKey::IllegalRequest, Asc::MEDIUM_REMOVAL_PREVENTED);
    h.run(N0, &[0x1E, 0, 0, 0, 2, 0], 0, &[])
        .invalid_cdb(4, Some(1));
    // Nexus loss releases the prevent.
    h.lu.remove_nexus(N0);
    assert!(!h.lu.removal_prevented());
    h.run(N1, &ssu(0x02), 0, &[]).good();
    h.run(N1, &ssu(0x03), 0, &[]).good();
    // ALLOW clears it too.
    h.run(N1, &[0x1E, 0, 0, 0, 1, 0], 0, &[]).good();
    h.run(N1, &[0x1E, 0, 0, 0, 0, 0], 0, &[]).good();
    h.run(N1, &ssu(0x02), 0, &[]).good();
}

#[test]
fn read_only_lu() {
    let mut h = H::new(LuConfig::new(100).read_only(true).thin(true));
    let wp = |o: Outcome| {
        o.sense(SenseKey::DataProtect, Asc::WRITE_PROTECTED);
        assert_eq!(o.asked_data_out, None);
    };
    wp(h.run(N0, &cdb10(0x2A, 0, 0, 1), 512, &[0; 512]));
    wp(h.run(N0, &cdb12(0xAA, 0, 0, 1), 512, &[0; 512]));
    wp(h.run(N0, &cdb16(0x8A, 0, 0, 1), 512, &[0; 512]));
    wp(h.run(N0, &[0x0A, 0, 0, 0, 1, 0], 512, &[0; 512]));
    wp(h.run(N0, &cdb10(0x2E, 0, 0, 1), 512, &[0; 512]));
    wp(h.run(N0, &cdb10(0x41, 0, 0, 1), 512, &[0; 512]));
    wp(h.run(N0, &cdb16(0x93, 0x08, 0, 1), 512, &[0; 512]));
    wp(h.run(N0, &cdb16(0x8B, 0, 0, 1), 512, &[0; 512]));
    wp(h.run(N0, &unmap_cdb(24), 24, &unmap_list(&[(0, 1)])));
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[13] = 1;
    wp(h.run(N0, &c, 1024, &[0; 1024]));
    h.run(N0, &cdb10(0x28, 0, 0, 1), 512, &[]).good();
    assert!(h.disk.ios.iter().all(|io| io.op == IoOp::Read));
}

#[test]
fn read_defect_data() {
    let mut h = H::thin();
    let o = h.run(N0, &[0x37, 0, 0x1D, 0, 0, 0, 0, 0, 255, 0], 255, &[]);
    assert_eq!(o.good().data, vec![0, 0x1D, 0, 0]);
    assert_eq!(o.residual, Residual::Underflow(251));
    let o = h.run(N0, &[0xB7, 0x0C, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256, &[]);
    assert_eq!(o.good().data, vec![0, 0x0C, 0, 0, 0, 0, 0, 0]);
}

// ------------------------------------------------------------------- Target / LUNs

type T = Target<4, 8, 4>;

fn target_run(t: &mut T, lun: Lun, cdb: &[u8], expected: u32) -> (Action, Vec<u8>) {
    let task = TaskId::new(1, 77);
    t.submit(
        lun,
        task.nexus,
        task.tag,
        cdb,
        DataDirection::Read,
        expected,
        TaskAttr::Simple,
    )
    .unwrap();
    let mut data = Vec::new();
    loop {
        let a = t.poll_action().unwrap();
        assert_eq!(a.lun, lun);
        match a.action {
            Action::DataIn { len, .. } => {
                let mut b = vec![0; len as usize];
                let n = t.emit_data_in(lun, task, &mut b).unwrap();
                data.extend_from_slice(&b[..n]);
            }
            Action::Complete { .. } => return (a.action, data),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Actions of several LUs come out round robin (an LU with more work goes to the back of
/// the queue), an absent LUN is answered too, and once everything is drained a poll finds
/// nothing until a new command arrives.
#[test]
fn target_polls_lus_round_robin() {
    let mut t = T::new();
    for n in [0u16, 1, 2] {
        t.add_lun(n, LogicalUnit::new(LuConfig::new(10))).unwrap();
    }
    while t.poll_action().is_some() {}
    let tur = [0u8; 6];
    // Two TEST UNIT READYs on LUN 0, one on LUN 2, one on an absent LUN 7.
    for (lun, tag) in [(0u16, 1u32), (0, 2), (2, 3), (7, 4)] {
        t.submit(
            Lun::from_number(lun),
            NexusId(1),
            TaskTag(tag),
            &tur,
            DataDirection::None,
            0,
            TaskAttr::Simple,
        )
        .unwrap();
    }
    let mut order = Vec::new();
    while let Some(a) = t.poll_action() {
        let Action::Complete { task, .. } = a.action else {
            panic!("unexpected {a:?}");
        };
        order.push((a.lun.number().unwrap(), task.tag.0));
    }
    assert_eq!(order.len(), 4, "{order:?}");
    assert!(order.contains(&(7, 4)), "{order:?}");
    let lu0: Vec<u32> = order.iter().filter(|o| o.0 == 0).map(|o| o.1).collect();
    assert_eq!(lu0, vec![1, 2], "one LU's tasks in their order");
    // LUN 2 is served between LUN 0's two tasks, not after both.
    let at = |x: (u16, u32)| order.iter().position(|o| *o == x).unwrap();
    assert!(
        at((0, 1)) < at((2, 3)) && at((2, 3)) < at((0, 2)),
        "{order:?}"
    );
    assert!(t.poll_action().is_none());
}

#[test]
fn target_report_luns_and_absent_lun() {
    let mut t = T::new();
    t.add_lun(0, LogicalUnit::new(LuConfig::new(10))).unwrap();
    t.add_lun(300, LogicalUnit::new(LuConfig::new(10))).unwrap();
    assert_eq!(
        t.add_lun(0, LogicalUnit::new(LuConfig::new(10))).err(),
        Some(TargetError::LunExists)
    );
    let rl = [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let (a, d) = target_run(&mut t, Lun::from_number(0), &rl, 256);
    assert_eq!(
        d,
        vec![
            0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x41, 0x2C, 0, 0, 0, 0, 0, 0
        ]
    );
    let Action::Complete {
        status, residual, ..
    } = a
    else {
        panic!()
    };
    assert_eq!(
        (status, residual),
        (ScsiStatus::Good, Residual::Underflow(232))
    );
    // Select report 1 (well known only): empty. Invalid select report.
    let mut rl1 = rl;
    rl1[2] = 1;
    assert_eq!(
        target_run(&mut t, Lun::from_number(0), &rl1, 256).1,
        vec![0; 8]
    );
    rl1[2] = 7;
    let (a, _) = target_run(&mut t, Lun::from_number(0), &rl1, 256);
    let Action::Complete { sense, .. } = a else {
        panic!()
    };
    assert_eq!(sense.unwrap().asc(), Asc::INVALID_FIELD_IN_CDB);
    // REPORT LUNS to an absent LUN works too.
    let (_, d) = target_run(&mut t, Lun::from_number(9), &rl, 256);
    assert_eq!(d.len(), 24);
    // INQUIRY to an absent LUN: peripheral qualifier 011b.
    let (_, d) = target_run(&mut t, Lun::from_number(9), &[0x12, 0, 0, 0, 36, 0], 36);
    assert_eq!(d[0], 0x7F);
    // Anything else: LOGICAL UNIT NOT SUPPORTED (also for unsupported addressing).
    for lun in [Lun::from_number(9), Lun(0xC000_0000_0000_0000)] {
        let (a, _) = target_run(&mut t, lun, &[0; 6], 0);
        let Action::Complete { status, sense, .. } = a else {
            panic!()
        };
        assert_eq!(status, ScsiStatus::CheckCondition);
        let s = sense.unwrap();
        assert_eq!(
            (s.key(), s.asc()),
            (SenseKey::IllegalRequest, Asc::LOGICAL_UNIT_NOT_SUPPORTED)
        );
    }
    // LUN inventory change: REPORTED LUNS DATA HAS CHANGED, cleared by REPORT LUNS.
    let _ = target_run(&mut t, Lun::from_number(300), &[0; 6], 0); // POWER ON UA
    t.add_lun(5, LogicalUnit::new(LuConfig::new(10))).unwrap();
    let (a, _) = target_run(&mut t, Lun::from_number(300), &rl, 256);
    assert!(matches!(
        a,
        Action::Complete {
            status: ScsiStatus::Good,
            ..
        }
    ));
    let (a, _) = target_run(&mut t, Lun::from_number(300), &[0; 6], 0);
    assert!(matches!(
        a,
        Action::Complete {
            status: ScsiStatus::Good,
            ..
        }
    ));
    assert_eq!(t.lun_numbers(), &[0, 5, 300]);
    assert!(t.remove_lun(5).is_ok());
    assert_eq!(t.remove_lun(5).err(), Some(TargetError::NoSuchLun));
}

// ------------------------------------------------------------------- ordering and TMF

fn submit(lu: &mut Lu, tag: u32, cdb: &[u8], expected: u32, attr: TaskAttr) -> TaskId {
    lu.submit(N0, TaskTag(tag), cdb, DataDirection::Read, expected, attr)
        .unwrap();
    TaskId {
        nexus: N0,
        tag: TaskTag(tag),
    }
}

fn fresh_lu() -> Lu {
    let mut lu = Lu::new(LuConfig::new(1024));
    lu.add_nexus(N0).unwrap();
    assert_eq!(lu.pending_unit_attentions(N0), &[Asc::POWER_ON_RESET]);
    // TEST UNIT READY consumes the unit attention.
    submit(&mut lu, 999, &[0; 6], 0, TaskAttr::Simple);
    while lu.poll_action().is_some() {}
    assert_eq!(lu.pending_unit_attentions(N0), &[]);
    lu
}

#[test]
fn overlapping_writes_serialize_and_simple_reads_run_together() {
    let mut lu = fresh_lu();
    let a = submit(&mut lu, 1, &cdb10(0x28, 0, 0, 8), 4096, TaskAttr::Simple);
    let b = submit(&mut lu, 2, &cdb10(0x28, 0, 4, 8), 4096, TaskAttr::Simple);
    let w = submit(&mut lu, 3, &cdb10(0x2A, 0, 6, 1), 512, TaskAttr::Simple);
    let c = submit(&mut lu, 4, &cdb10(0x28, 0, 100, 1), 512, TaskAttr::Simple);
    // Both reads and the unrelated read go; the overlapping write waits.
    let mut got = Vec::new();
    while let Some(x) = lu.poll_action() {
        got.push(x.task());
    }
    assert_eq!(got, vec![a, b, c]);
    lu.complete_io(a, IoResult::Ok).unwrap();
    assert!(matches!(lu.poll_action(), Some(Action::Complete { task, .. }) if task == a));
    assert_eq!(lu.poll_action(), None);
    lu.complete_io(b, IoResult::Ok).unwrap();
    assert!(matches!(lu.poll_action(), Some(Action::Complete { task, .. }) if task == b));
    assert!(matches!(lu.poll_action(), Some(Action::NeedDataOut { task, len: 512 }) if task == w));
    // Callbacks in the wrong state are refused.
    assert_eq!(
        lu.complete_io(w, IoResult::Ok),
        Err(CallbackError::WrongState)
    );
    assert_eq!(
        lu.complete_io(TaskId::new(9, 9), IoResult::Ok),
        Err(CallbackError::UnknownTask)
    );
}

#[test]
fn ordered_and_head_of_queue() {
    let mut lu = fresh_lu();
    let a = submit(&mut lu, 1, &cdb10(0x28, 0, 0, 1), 512, TaskAttr::Simple);
    let o = submit(&mut lu, 2, &cdb10(0x28, 0, 50, 1), 512, TaskAttr::Ordered);
    let b = submit(&mut lu, 3, &cdb10(0x28, 0, 60, 1), 512, TaskAttr::Simple);
    let h = submit(&mut lu, 4, &[0; 6], 0, TaskAttr::HeadOfQueue);
    // HEAD OF QUEUE first, then the older SIMPLE; ORDERED and the newer SIMPLE wait.
    assert!(matches!(lu.poll_action(), Some(Action::Complete { task, .. }) if task == h));
    assert!(matches!(lu.poll_action(), Some(Action::Io(io)) if io.task == a));
    assert_eq!(lu.poll_action(), None);
    lu.complete_io(a, IoResult::Ok).unwrap();
    assert!(matches!(lu.poll_action(), Some(Action::Complete { task, .. }) if task == a));
    assert!(matches!(lu.poll_action(), Some(Action::Io(io)) if io.task == o));
    assert_eq!(lu.poll_action(), None);
    lu.complete_io(o, IoResult::Ok).unwrap();
    assert!(matches!(lu.poll_action(), Some(Action::Complete { task, .. }) if task == o));
    assert!(matches!(lu.poll_action(), Some(Action::Io(io)) if io.task == b));
}

#[test]
fn task_set_full_and_duplicate_tag() {
    let mut lu = fresh_lu();
    for k in 0..16 {
        submit(&mut lu, k, &[0; 6], 0, TaskAttr::Simple);
    }
    assert_eq!(
        lu.submit(
            N0,
            TaskTag(100),
            &[0; 6],
            DataDirection::None,
            0,
            TaskAttr::Simple
        ),
        Err(SubmitError::TaskSetFull)
    );
    while lu.poll_action().is_some() {}
    submit(&mut lu, 1, &cdb10(0x28, 0, 0, 1), 512, TaskAttr::Simple);
    assert_eq!(
        lu.submit(
            N0,
            TaskTag(1),
            &[0; 6],
            DataDirection::None,
            0,
            TaskAttr::Simple
        ),
        Err(SubmitError::DuplicateTag)
    );
    let mut small = LogicalUnit::<4, 1>::new(LuConfig::new(8));
    small.add_nexus(N0).unwrap();
    assert_eq!(small.add_nexus(N1), Err(NexusError::TableFull));
    assert_eq!(
        small.submit(
            N1,
            TaskTag(1),
            &[0; 6],
            DataDirection::None,
            0,
            TaskAttr::Simple
        ),
        Err(SubmitError::NexusTableFull)
    );
}

#[test]
fn task_management() {
    let mut lu = fresh_lu();
    lu.add_nexus(N1).unwrap();
    let a = submit(&mut lu, 1, &cdb10(0x28, 0, 0, 1), 512, TaskAttr::Simple);
    let b = submit(&mut lu, 2, &cdb10(0x2A, 0, 0, 1), 512, TaskAttr::Simple);
    assert!(matches!(lu.poll_action(), Some(Action::Io(_))));
    assert_eq!(lu.poll_action(), None);
    // b is queued behind a: abort it at once.
    assert_eq!(
        lu.abort_task(b),
        TmfOutcome {
            aborted: 1,
            in_flight: 0
        }
    );
    // a's I/O is in flight: it stays until the runtime reports it, without a response.
    assert_eq!(
        lu.abort_task_set(N0),
        TmfOutcome {
            aborted: 0,
            in_flight: 1
        }
    );
    assert!(lu.has_task(a));
    lu.complete_io(a, IoResult::Ok).unwrap();
    assert!(!lu.has_task(a));
    assert_eq!(lu.poll_action(), None);
    // CLEAR TASK SET by N1 raises COMMANDS CLEARED for N0.
    submit(&mut lu, 3, &cdb10(0x28, 0, 0, 1), 512, TaskAttr::Ordered);
    submit(&mut lu, 4, &cdb10(0x28, 0, 0, 1), 512, TaskAttr::Ordered);
    let out = lu.clear_task_set(N1);
    assert_eq!(out.aborted, 2);
    assert_eq!(
        lu.pending_unit_attentions(N0),
        &[Asc::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR]
    );
    // LU reset: BUS DEVICE RESET for everyone, supersedes the rest; mode parameters reset.
    lu.lu_reset();
    assert_eq!(lu.pending_unit_attentions(N0), &[Asc::BUS_DEVICE_RESET]);
    assert_eq!(lu.pending_unit_attentions(N1), &[Asc::BUS_DEVICE_RESET]);
    lu.nexus_reset(N1);
    assert_eq!(lu.pending_unit_attentions(N1), &[Asc::I_T_NEXUS_LOSS]);
    assert_eq!(lu.active_tasks(), 0);
}

#[test]
fn capacity_change_raises_ua() {
    let mut h = H::thin();
    h.lu.set_num_blocks(2048);
    h.run(N0, &[0; 6], 0, &[])
        .sense(SenseKey::UnitAttention, Asc::CAPACITY_DATA_HAS_CHANGED);
    let o = h.run(N0, &cdb10(0x25, 0, 0, 0), 8, &[]);
    assert_eq!(&o.data[..4], &2047u32.to_be_bytes());
}

#[test]
fn unmap_ranges_iterator_and_or_into() {
    let l = unmap_list(&[(1, 2), (u64::MAX, 7)]);
    let v: Vec<_> = UnmapRanges::new(&l).collect();
    assert_eq!(v, vec![(1, 2), (u64::MAX, 7)]);
    assert_eq!(UnmapRanges::new(&l[..30]).count(), 1);
    assert_eq!(UnmapRanges::new(&l[..5]).count(), 0);
    let mut a = [0x0F, 0xF0, 0];
    or_into(&mut a, &[0xF0, 0x0F]);
    assert_eq!(a, [0xFF, 0xFF, 0]);
}

proptest::proptest! {
    /// Arbitrary CDBs and parameter lists never panic and always finish.
    #[test]
    fn arbitrary_commands_complete(cdb in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                                   data in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
                                   expected in 0u32..4096) {
        let mut h = H::new(LuConfig::new(64).thin(true).removable(true));
        let mut data = data;
        data.resize(4096, 0);
        h.tag += 1;
        let task = TaskId { nexus: N0, tag: TaskTag(h.tag) };
        h.lu.submit(N0, task.tag, &cdb, DataDirection::Write, expected, TaskAttr::Simple).unwrap();
        let o = h.drive(task, &data);
        proptest::prop_assert!(o.data.len() <= expected as usize);
    }
}

#[test]
fn target_routes_io_callbacks() {
    let mut t = T::new();
    t.add_lun(3, LogicalUnit::new(LuConfig::new(16))).unwrap();
    let lun = Lun::from_bytes([0x40, 3, 0, 0, 0, 0, 0, 0]); // flat addressing
    let task = TaskId::new(5, 1);
    // First command: POWER ON unit attention.
    t.submit(
        lun,
        task.nexus,
        task.tag,
        &[0; 6],
        DataDirection::None,
        0,
        TaskAttr::Simple,
    )
    .unwrap();
    let a = t.poll_action().unwrap();
    assert!(matches!(
        a.action,
        Action::Complete {
            status: ScsiStatus::CheckCondition,
            ..
        }
    ));
    t.submit(
        lun,
        task.nexus,
        task.tag,
        &cdb10(0x2A, 0, 2, 1),
        DataDirection::Write,
        512,
        TaskAttr::Simple,
    )
    .unwrap();
    let a = t.poll_action().unwrap();
    assert_eq!(a.lun, lun);
    assert_eq!(a.action, Action::NeedDataOut { task, len: 512 });
    t.data_out_ready(lun, task, &[1; 512]).unwrap();
    let a = t.poll_action().unwrap();
    let Action::Io(io) = a.action else { panic!() };
    assert_eq!(
        (io.op, io.lba, io.blocks, io.byte_offset(), io.byte_len()),
        (IoOp::Write, 2, 1, 1024, 512)
    );
    t.complete_io(lun, task, IoResult::Ok).unwrap();
    let a = t.poll_action().unwrap();
    assert_eq!(
        a.action,
        Action::Complete {
            task,
            status: ScsiStatus::Good,
            sense: None,
            residual: Residual::None
        }
    );
    assert_eq!(t.poll_action(), None);
    // REQUEST SENSE to an absent LUN: GOOD with LOGICAL UNIT NOT SUPPORTED sense data.
    let (_, d) = target_run(&mut t, Lun::from_number(1), &[0x03, 0, 0, 0, 18, 0], 18);
    assert_eq!((d[2], d[12], d[13]), (0x05, 0x25, 0x00));
}

#[test]
fn descriptor_sense_after_d_sense() {
    let mut h = H::thin();
    let p = control_page_select(true, false);
    h.run(N0, &[0x15, 0x10, 0, 0, 16, 0], 16, &p).good();
    let o = h.run(N0, &cdb10(0x28, 0x40, 0, 1), 512, &[]);
    let s = o.sense.unwrap();
    assert_eq!(
        s.as_bytes(),
        &[
            0x72, 0x05, 0x24, 0x00, 0, 0, 0, 8, 0x02, 0x06, 0, 0, 0xCF, 0x00, 0x01, 0
        ]
    );
    // LU reset restores fixed format.
    h.lu.lu_reset();
    h.run(N0, &[0; 6], 0, &[])
        .sense(SenseKey::UnitAttention, Asc::BUS_DEVICE_RESET);
    let o = h.run(N0, &cdb10(0x28, 0x40, 0, 1), 512, &[]);
    assert_eq!(o.sense.unwrap().as_bytes()[0], 0x70);
}

#[test]
fn get_lba_status_truncated_and_aborted_data_out() {
    let mut h = H::thin();
    h.disk.write(0, &[1u8; 512]);
    let o = h.run(N0, &cdb16(0x9E, 0x12, 0, 16), 16, &[]);
    let mut want = vec![0, 0, 0, 20, 0, 0, 0, 0];
    want.extend_from_slice(&0u64.to_be_bytes());
    assert_eq!(o.good().data, want);
    assert_eq!(o.residual, Residual::None);
    // Allocation length 0: no data, no I/O.
    let n = h.disk.ios.len();
    let o = h.run(N0, &cdb16(0x9E, 0x12, 0, 0), 0, &[]);
    assert!(o.good().data.is_empty());
    assert_eq!(h.disk.ios.len(), n);
    // A task aborted while waiting for Data-Out is gone at once.
    let task = TaskId {
        nexus: N0,
        tag: TaskTag(4242),
    };
    h.lu.submit(
        N0,
        task.tag,
        &cdb10(0x2A, 0, 0, 1),
        DataDirection::Write,
        512,
        TaskAttr::Simple,
    )
    .unwrap();
    assert!(matches!(
        h.lu.poll_action(),
        Some(Action::NeedDataOut { .. })
    ));
    assert_eq!(
        h.lu.abort_task(task),
        TmfOutcome {
            aborted: 1,
            in_flight: 0
        }
    );
    assert_eq!(
        h.lu.data_out_ready(task, &[0; 512]),
        Err(CallbackError::UnknownTask)
    );
    assert_eq!(h.lu.poll_action(), None);
}

#[test]
fn target_without_lun0_has_a_controller() {
    let mut t = T::new();
    t.add_lun(5, LogicalUnit::new(LuConfig::new(10))).unwrap();
    let rl = [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let (_, d) = target_run(&mut t, Lun::from_number(5), &rl, 256);
    assert_eq!(
        d,
        vec![
            0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0
        ]
    );
    let l0 = Lun::from_number(0);
    let (_, d) = target_run(&mut t, l0, &[0x12, 0, 0, 0, 96, 0], 96);
    assert_eq!(&d[..3], &[0x0C, 0, 6]);
    let (_, d) = target_run(&mut t, l0, &[0x12, 1, 0, 0, 96, 0], 96);
    assert_eq!(d, vec![0x0C, 0, 0, 1, 0]);
    let (a, _) = target_run(&mut t, l0, &[0; 6], 0);
    assert!(matches!(
        a,
        Action::Complete {
            status: ScsiStatus::Good,
            ..
        }
    ));
    let (a, _) = target_run(&mut t, l0, &cdb10(0x28, 0, 0, 1), 512);
    let Action::Complete { sense, .. } = a else {
        panic!()
    };
    assert_eq!(sense.unwrap().asc(), Asc::INVALID_COMMAND_OPERATION_CODE);
    let (_, d) = target_run(&mut t, l0, &rl, 256);
    assert_eq!(d.len(), 24);
    let (_, d) = target_run(&mut t, Lun::from_number(9), &[0x12, 0, 0, 0, 96, 0], 96);
    assert_eq!(d[0], 0x7F);
    // Configuring LUN 0 replaces the controller.
    t.add_lun(0, LogicalUnit::new(LuConfig::new(10))).unwrap();
    let (_, d) = target_run(&mut t, l0, &[0x12, 0, 0, 0, 96, 0], 96);
    assert_eq!(d[0], 0x00);
    let (_, d) = target_run(&mut t, Lun::from_number(5), &rl, 256);
    assert_eq!(&d[..4], &[0, 0, 0, 16]);
}

// ------------------------------------------------------------------- reservations

fn prout_cdb(sa: u8, ty: u8, len: u32) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5F;
    c[1] = sa;
    c[2] = ty;
    c[5..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn prin_cdb(sa: u8, len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5E;
    c[1] = sa;
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn prout_params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    p
}

const WE: u8 = 1;
const EA: u8 = 3;
const WERO: u8 = 5;
const EAAR: u8 = 8;

impl H {
    fn prout(&mut self, n: NexusId, sa: u8, ty: u8, key: u64, sa_key: u64) -> Outcome {
        let p = prout_params(key, sa_key, 0);
        self.run(n, &prout_cdb(sa, ty, 24), 24, &p)
    }
    fn prin(&mut self, n: NexusId, sa: u8) -> Vec<u8> {
        let o = self.run(n, &prin_cdb(sa, 1024), 1024, &[]);
        o.good();
        o.data
    }
    fn write1(&mut self, n: NexusId) -> Outcome {
        self.run(n, &cdb10(0x2A, 0, 1, 1), 512, &[0x11; 512])
    }
    fn read1(&mut self, n: NexusId) -> Outcome {
        self.run(n, &cdb10(0x28, 0, 1, 1), 512, &[])
    }
    fn tur(&mut self, n: NexusId) -> Outcome {
        self.run(n, &[0; 6], 0, &[])
    }
}

fn conflict(o: &Outcome) {
    assert_eq!(o.status, ScsiStatus::ReservationConflict, "{o:?}");
    assert!(o.sense.is_none());
}

#[test]
fn pr_register_read_keys_and_generation() {
    let mut h = H::thin();
    assert_eq!(h.prin(N0, 0), [0, 0, 0, 0, 0, 0, 0, 0]);
    // REGISTER with a non-zero RESERVATION KEY from an unregistered nexus conflicts.
    conflict(&h.prout(N0, 0, 0, 5, 0xAA));
    h.prout(N0, 0, 0, 0, 0xAA).good();
    h.prout(N1, 6, 0, 0x1234, 0xBB).good(); // REGISTER AND IGNORE EXISTING KEY
    let d = h.prin(N0, 0);
    assert_eq!(&d[..8], &[0, 0, 0, 2, 0, 0, 0, 16]);
    assert_eq!(&d[8..16], &0xAAu64.to_be_bytes());
    assert_eq!(&d[16..24], &0xBBu64.to_be_bytes());
    // Re-registering with the wrong key conflicts; the right key changes it.
    conflict(&h.prout(N0, 0, 0, 0xAB, 0xCC));
    h.prout(N0, 0, 0, 0xAA, 0xCC).good();
    assert_eq!(h.lu.pr_generation(), 3);
    // Unregister (service action key 0).
    h.prout(N0, 0, 0, 0xCC, 0).good();
    let d = h.prin(N1, 0);
    assert_eq!(&d[..8], &[0, 0, 0, 4, 0, 0, 0, 8]);
    assert_eq!(h.lu.pr_registrations(), 1);
    // Registering key 0 from an unregistered nexus is a no-op (no generation change).
    h.prout(N0, 0, 0, 0, 0).good();
    assert_eq!(h.lu.pr_generation(), 4);
    // Truncated READ KEYS keeps ADDITIONAL LENGTH.
    let o = h.run(N0, &prin_cdb(0, 8), 8, &[]);
    assert_eq!(o.good().data, [0, 0, 0, 4, 0, 0, 0, 8]);
}

#[test]
fn pr_cdb_and_parameter_errors() {
    let mut h = H::thin();
    for sa in 4..0x20u8 {
        h.run(N0, &prin_cdb(sa, 64), 64, &[])
            .invalid_cdb(1, Some(4));
    }
    h.run(N0, &prout_cdb(8, 0, 24), 24, &[0; 24])
        .invalid_cdb(1, Some(4));
    h.run(N0, &prout_cdb(1, 2, 24), 24, &[0; 24])
        .invalid_cdb(2, Some(3));
    h.run(N0, &prout_cdb(1, 0x11, 24), 24, &[0; 24])
        .invalid_cdb(2, Some(7));
    h.run(N0, &prout_cdb(0, 0, 20), 20, &[0; 20])
        .sense(SenseKey::IllegalRequest, Asc::PARAMETER_LIST_LENGTH_ERROR);
    h.run(N0, &prout_cdb(0, 0, 28), 28, &[0; 28])
        .sense(SenseKey::IllegalRequest, Asc::PARAMETER_LIST_LENGTH_ERROR);
    // SPEC_I_PT on RESERVE is refused.
    h.prout(N0, 0, 0, 0, 1).good();
    let p = prout_params(1, 0, 0x08);
    let mut p28 = p.clone();
    p28.extend_from_slice(&[0; 4]);
    h.run(N0, &prout_cdb(1, WE, 28), 28, &p28).sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
}

#[test]
fn pr_write_exclusive_conflicts() {
    let mut h = H::thin();
    h.prout(N0, 6, 0, 0, 0xA).good();
    // RESERVE needs a registration and the right key.
    conflict(&h.prout(N1, 1, WE, 0, 0));
    conflict(&h.prout(N0, 1, WE, 0xB, 0));
    h.prout(N0, 1, WE, 0xA, 0).good();
    // Reserving again with the same type is fine; another type conflicts.
    h.prout(N0, 1, WE, 0xA, 0).good();
    conflict(&h.prout(N0, 1, EA, 0xA, 0));
    let d = h.prin(N1, 1);
    assert_eq!(
        d,
        [
            0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xA, 0, 0, 0, 0, 0, WE, 0, 0
        ]
    );
    h.write1(N0).good();
    h.read1(N1).good();
    conflict(&h.write1(N1));
    conflict(&h.run(N1, &[0x1A, 0, 0x3F, 0, 255, 0], 255, &[]));
    h.tur(N1).good();
    h.run(N1, &[0x12, 0, 0, 0, 36, 0], 36, &[]).good();
    // A registered non-holder is no better off under WRITE EXCLUSIVE.
    h.prout(N1, 6, 0, 0, 0xB).good();
    conflict(&h.write1(N1));
    // RELEASE by a non-holder is a no-op; with the wrong type it is an error.
    h.prout(N1, 2, WE, 0xB, 0).good();
    assert_eq!(h.lu.pr_reservation(), Some(PrType::WriteExclusive));
    h.prout(N0, 2, EA, 0xA, 0).sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
    );
    h.prout(N0, 2, WE, 0xA, 0).good();
    assert_eq!(h.lu.pr_reservation(), None);
    h.write1(N1).good();
    // Releasing WRITE EXCLUSIVE raises no unit attention; RESERVE/RELEASE did not count.
    assert!(h.lu.pending_unit_attentions(N1).is_empty());
    assert_eq!(h.lu.pr_generation(), 2);
}

#[test]
fn pr_exclusive_access_and_registrants_only() {
    let mut h = H::thin();
    h.prout(N0, 6, 0, 0, 0xA).good();
    h.prout(N0, 1, EA, 0xA, 0).good();
    conflict(&h.read1(N1));
    conflict(&h.write1(N1));
    h.run(N1, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8, &[]).good();
    h.prout(N0, 2, EA, 0xA, 0).good();

    h.prout(N0, 1, WERO, 0xA, 0).good();
    h.read1(N1).good();
    conflict(&h.write1(N1));
    h.prout(N1, 6, 0, 0, 0xB).good();
    h.write1(N1).good();
    // The holder unregisters: a registrants-only reservation goes, and the other
    // registrants hear RESERVATIONS RELEASED.
    h.prout(N0, 0, 0, 0xA, 0).good();
    assert_eq!(h.lu.pr_reservation(), None);
    h.tur(N1)
        .sense(SenseKey::UnitAttention, Asc::RESERVATIONS_RELEASED);
    assert!(h.lu.pending_unit_attentions(N0).is_empty());
}

#[test]
fn pr_all_registrants() {
    let mut h = H::thin();
    h.prout(N0, 6, 0, 0, 0xA).good();
    h.prout(N1, 6, 0, 0, 0xB).good();
    h.prout(N0, 1, EAAR, 0xA, 0).good();
    // Every registrant holds it: READ RESERVATION reports key 0.
    let d = h.prin(N1, 1);
    assert_eq!(&d[8..16], &[0; 8]);
    assert_eq!(d[21], EAAR);
    h.write1(N1).good();
    // The reserving nexus leaves; the reservation stays with the other registrant.
    h.prout(N0, 0, 0, 0xA, 0).good();
    assert_eq!(
        h.lu.pr_reservation(),
        Some(PrType::ExclusiveAccessAllRegistrants)
    );
    conflict(&h.read1(N0));
    // ... and goes with the last one.
    h.prout(N1, 0, 0, 0xB, 0).good();
    assert_eq!(h.lu.pr_reservation(), None);
    h.read1(N0).good();
}

#[test]
fn pr_clear_and_preempt() {
    let mut h = H::thin();
    h.prout(N0, 6, 0, 0, 0xA).good();
    h.prout(N1, 6, 0, 0, 0xB).good();
    h.prout(N0, 1, WE, 0xA, 0).good();
    // N1 preempts the holder: it now holds an EXCLUSIVE ACCESS reservation, N0's
    // registration is gone and N0 hears REGISTRATIONS PREEMPTED.
    h.prout(N1, 4, EA, 0xB, 0xA).good();
    assert_eq!(h.lu.pr_registrations(), 1);
    assert_eq!(h.lu.pr_reservation(), Some(PrType::ExclusiveAccess));
    assert_eq!(h.lu.pr_generation(), 3);
    h.tur(N0)
        .sense(SenseKey::UnitAttention, Asc::REGISTRATIONS_PREEMPTED);
    conflict(&h.read1(N0));
    // Preempting a key nobody holds conflicts; key 0 is an invalid parameter.
    conflict(&h.prout(N1, 4, EA, 0xB, 0x77));
    h.prout(N1, 4, EA, 0xB, 0).sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    // Without a reservation, PREEMPT removes registrations only.
    h.prout(N0, 6, 0, 0, 0xC).good();
    h.prout(N1, 2, EA, 0xB, 0).good();
    h.prout(N1, 4, EA, 0xB, 0xC).good();
    assert_eq!(h.lu.pr_reservation(), None);
    assert_eq!(h.lu.pr_registrations(), 1);
    h.tur(N0)
        .sense(SenseKey::UnitAttention, Asc::REGISTRATIONS_PREEMPTED);
    // CLEAR drops everything and tells the other registrants.
    h.prout(N0, 6, 0, 0, 0xD).good();
    h.prout(N1, 1, WE, 0xB, 0).good();
    let g = h.lu.pr_generation();
    h.prout(N1, 3, 0, 0xB, 0).good();
    assert_eq!(h.lu.pr_generation(), g + 1);
    assert_eq!(h.lu.pr_registrations(), 0);
    assert_eq!(h.lu.pr_reservation(), None);
    h.tur(N0)
        .sense(SenseKey::UnitAttention, Asc::RESERVATIONS_PREEMPTED);
    assert!(h.lu.pending_unit_attentions(N1).is_empty());
}

#[test]
fn pr_preempt_and_abort_ends_queued_tasks() {
    let mut h = H::thin();
    h.prout(N0, 6, 0, 0, 0xA).good();
    h.prout(N1, 6, 0, 0, 0xB).good();
    // An ORDERED task of N0 waits behind a running read of N1.
    let r = submit(&mut h.lu, 900, &cdb10(0x28, 0, 0, 1), 512, TaskAttr::Simple);
    let a = h.lu.poll_action().unwrap();
    assert!(matches!(a, Action::Io(_)));
    h.lu.submit(
        N0,
        TaskTag(901),
        &cdb10(0x2A, 0, 5, 1),
        DataDirection::Write,
        512,
        TaskAttr::Ordered,
    )
    .unwrap();
    assert!(h.lu.poll_action().is_none());
    // PREEMPT AND ABORT from N1 (HEAD OF QUEUE so it runs now).
    let p = prout_params(0xB, 0xA, 0);
    h.lu.submit(
        N1,
        TaskTag(902),
        &prout_cdb(5, WE, 24),
        DataDirection::Write,
        24,
        TaskAttr::HeadOfQueue,
    )
    .unwrap();
    let t = TaskId::new(N1.0, 902);
    assert_eq!(
        h.lu.poll_action(),
        Some(Action::NeedDataOut { task: t, len: 24 })
    );
    h.lu.data_out_ready(t, &p).unwrap();
    let mut seen = Vec::new();
    while let Some(a) = h.lu.poll_action() {
        if let Action::Complete { task, status, .. } = a {
            seen.push((task.tag.0, status));
        }
    }
    assert!(seen.contains(&(902, ScsiStatus::Good)), "{seen:?}");
    assert!(seen.contains(&(901, ScsiStatus::TaskAborted)), "{seen:?}");
    assert_eq!(h.lu.pr_reservation(), None);
    assert_eq!(h.lu.pr_registrations(), 1);
    h.lu.complete_io(r, IoResult::Ok).unwrap();
}

#[test]
fn pr_report_capabilities_and_full_status() {
    let mut h = H::thin();
    h.lu.add_nexus_with_port(N0, b"iqn.2000-01.test:a,i,0x00023d000001", 1)
        .unwrap();
    let d = h.prin(N0, 2);
    assert_eq!(d, [0, 8, 0x1D, 0x90, 0xEA, 0x01, 0, 0]);
    h.prout(N0, 6, 0, 0, 0x1122).good();
    h.prout(N0, 1, WERO, 0x1122, 0).good();
    let d = h.prin(N1, 3);
    let name = b"iqn.2000-01.test:a,i,0x00023d000001";
    let tid_len = 4 + (name.len() + 1).div_ceil(4) * 4;
    let mut want = vec![0, 0, 0, 1];
    want.extend_from_slice(&((24 + tid_len) as u32).to_be_bytes());
    want.extend_from_slice(&0x1122u64.to_be_bytes());
    want.extend_from_slice(&[0, 0, 0, 0, 0x01, WERO, 0, 0, 0, 0, 0, 1]);
    want.extend_from_slice(&(tid_len as u32).to_be_bytes());
    want.extend_from_slice(&[0x45, 0, 0, (tid_len - 4) as u8]);
    want.extend_from_slice(name);
    want.resize(8 + 24 + tid_len, 0);
    assert_eq!(d, want);
}

fn tid(name: &[u8]) -> Vec<u8> {
    let padded = (name.len() + 1).div_ceil(4) * 4;
    let isid = name.windows(5).any(|w| w == b",i,0x");
    let mut t = vec![if isid { 0x45 } else { 0x05 }, 0, 0, padded as u8];
    t.extend_from_slice(name);
    t.resize(4 + padded, 0);
    t
}

#[test]
fn pr_spec_i_pt_register_and_move_and_identity() {
    let mut h = H::thin();
    let a = b"iqn.2000-01.test:a,i,0x000000000001";
    h.lu.add_nexus_with_port(N0, a, 1).unwrap();
    // N0 registers itself and (by bare name) every port of initiator b.
    let t = tid(b"iqn.2000-01.test:b");
    let mut p = prout_params(0, 0x77, 0x08);
    p.extend_from_slice(&(t.len() as u32).to_be_bytes());
    p.extend_from_slice(&t);
    let len = p.len() as u32;
    h.run(N0, &prout_cdb(0, 0, len), len, &p).good();
    assert_eq!(h.lu.pr_registrations(), 2);
    // N1 turns out to be a port of b: it is registered (with the key N0 gave it).
    h.lu.add_nexus_with_port(N1, b"iqn.2000-01.test:b,i,0x000000000009", 1)
        .unwrap();
    conflict(&h.prout(N1, 1, WE, 0x78, 0));
    h.prout(N1, 1, WE, 0x77, 0).good();
    // Move the reservation to a, registering a with key 0x99, and drop b's registration.
    let t = tid(a);
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&0x77u64.to_be_bytes());
    p[8..16].copy_from_slice(&0x99u64.to_be_bytes());
    p[17] = 0x02;
    p[18..20].copy_from_slice(&1u16.to_be_bytes());
    p[20..24].copy_from_slice(&(t.len() as u32).to_be_bytes());
    p.extend_from_slice(&t);
    let len = p.len() as u32;
    h.run(N1, &prout_cdb(7, WE, len), len, &p).good();
    let d = h.prin(N1, 1);
    assert_eq!(&d[8..16], &0x99u64.to_be_bytes());
    assert_eq!(h.lu.pr_registrations(), 1);
    conflict(&h.write1(N1));
    h.write1(N0).good();
    // A session that comes back with the same port name is the same I_T nexus.
    h.lu.remove_nexus(N0);
    let n9 = NexusId(9);
    h.lu.add_nexus_with_port(n9, a, 1).unwrap();
    h.tur(n9)
        .sense(SenseKey::UnitAttention, Asc::POWER_ON_RESET);
    h.write1(n9).good();
    // Resets do not touch persistent reservations.
    h.lu.lu_reset();
    assert_eq!(h.lu.pr_reservation(), Some(PrType::WriteExclusive));
}

#[test]
fn pr_aptpl_image_round_trip() {
    let mut h = H::thin();
    h.lu.add_nexus_with_port(N0, b"iqn.x:a,i,0x000000000001", 1)
        .unwrap();
    assert!(!h.lu.take_pr_changed());
    let p = prout_params(0, 0x55, 0x01);
    h.run(N0, &prout_cdb(6, 0, 24), 24, &p).good();
    h.prout(N0, 1, EA, 0x55, 0).good();
    assert!(h.lu.take_pr_changed());
    assert!(!h.lu.take_pr_changed());
    assert_eq!(h.prin(N0, 2)[3], 0x91);
    let mut img = [0u8; 256];
    let n = h.lu.export_pr(&mut img);
    assert_eq!(&img[..12], b"PRS1\x01\x00\x00\x00\x01\x00\x03\x01");
    assert_eq!(n, 12 + 12 + 24);
    // A fresh LU restores it: the same port is the holder.
    let mut h2 = H::thin();
    h2.lu.import_pr(&img[..n]).unwrap();
    h2.lu
        .add_nexus_with_port(N0, b"iqn.x:a,i,0x000000000001", 1)
        .unwrap();
    assert_eq!(h2.lu.pr_generation(), 1);
    h2.write1(N0).good();
    conflict(&h2.read1(N1));
    // Power loss without APTPL forgets everything; with it the state stays.
    h2.lu.power_on_reset(None);
    assert_eq!(h2.lu.pr_reservation(), Some(PrType::ExclusiveAccess));
    assert_eq!(h2.lu.import_pr(b"XXXX"), Err(PrImageError::BadFormat));
    assert_eq!(h2.lu.import_pr(&img[..n - 1]), Err(PrImageError::Truncated));
    let mut h3 = H::thin();
    h3.prout(N0, 6, 0, 0, 0x1).good();
    h3.prout(N0, 1, EA, 0x1, 0).good();
    h3.lu.power_on_reset(None);
    assert_eq!(h3.lu.pr_reservation(), None);
    assert_eq!(h3.lu.pr_registrations(), 0);
    let n = h3.lu.export_pr(&mut img);
    assert_eq!(&img[..n], b"PRS1\x00\x00\x00\x00\x01\xFF\x00\x00");
}

#[test]
fn reserve_release_6_and_10() {
    let mut h = H::thin();
    let res6 = [0x16, 0, 0, 0, 0, 0];
    let rel6 = [0x17, 0, 0, 0, 0, 0];
    h.run(N0, &res6, 0, &[]).good();
    h.run(N0, &res6, 0, &[]).good();
    conflict(&h.run(N1, &res6, 0, &[]));
    conflict(&h.run(N1, &[0x1A, 0, 0x3F, 0, 255, 0], 255, &[]));
    conflict(&h.tur(N1));
    conflict(&h.prout(N1, 6, 0, 0, 1));
    h.run(N1, &[0x12, 0, 0, 0, 36, 0], 36, &[]).good();
    h.run(N1, &rel6, 0, &[]).good();
    assert_eq!(h.lu.legacy_reservation(), Some(N0));
    h.run(N0, &[0x1A, 0, 0x3F, 0, 255, 0], 255, &[]).good();
    h.run(N0, &rel6, 0, &[]).good();
    h.run(N1, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[]).good();
    h.run(N1, &[0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[])
        .invalid_cdb(1, Some(4));
    // Nexus loss and LU reset release it.
    h.lu.nexus_reset(N1);
    assert_eq!(h.lu.legacy_reservation(), None);
    h.run(N0, &res6, 0, &[]).good();
    h.lu.lu_reset();
    assert_eq!(h.lu.legacy_reservation(), None);
    // With a persistent reservation, RESERVE conflicts except for its holder.
    h.tur(N0);
    h.tur(N1);
    h.prout(N0, 6, 0, 0, 0xA).good();
    h.prout(N0, 1, WE, 0xA, 0).good();
    h.run(N0, &res6, 0, &[]).good();
    assert_eq!(h.lu.legacy_reservation(), None);
    conflict(&h.run(N1, &res6, 0, &[]));
}

#[test]
fn reset_unit_attention_spares_the_requester() {
    let mut h = H::thin();
    h.lu.lu_reset_by(Some(N0));
    h.tur(N0).good();
    h.tur(N1)
        .sense(SenseKey::UnitAttention, Asc::BUS_DEVICE_RESET);
    h.lu.power_on_reset(Some(N1));
    h.tur(N1).good();
    h.tur(N0)
        .sense(SenseKey::UnitAttention, Asc::POWER_ON_RESET);
    h.lu.target_reset_by(Some(N0), false);
    h.tur(N0).good();
    h.tur(N1)
        .sense(SenseKey::UnitAttention, Asc::POWER_ON_RESET);
    // A plain LOGICAL UNIT RESET tells everybody.
    h.lu.lu_reset();
    h.tur(N0)
        .sense(SenseKey::UnitAttention, Asc::BUS_DEVICE_RESET);
    h.tur(N1)
        .sense(SenseKey::UnitAttention, Asc::BUS_DEVICE_RESET);
}

#[test]
fn mode_change_undone_withdraws_unit_attention() {
    let mut h = H::thin();
    let on = control_page_select(false, true);
    let off = control_page_select(false, false);
    let sel = |len: usize| [0x15, 0x10, 0, 0, len as u8, 0];
    h.run(N0, &sel(on.len()), on.len() as u32, &on).good();
    assert_eq!(
        h.lu.pending_unit_attentions(N1),
        &[Asc::MODE_PARAMETERS_CHANGED]
    );
    h.run(N0, &sel(off.len()), off.len() as u32, &off).good();
    assert!(h.lu.pending_unit_attentions(N1).is_empty());
    h.run(N0, &sel(on.len()), on.len() as u32, &on).good();
    h.tur(N1)
        .sense(SenseKey::UnitAttention, Asc::MODE_PARAMETERS_CHANGED);
    h.run(N0, &sel(off.len()), off.len() as u32, &off).good();
    h.tur(N1)
        .sense(SenseKey::UnitAttention, Asc::MODE_PARAMETERS_CHANGED);
}

#[test]
fn compare_and_write_zero_blocks_with_data_and_write_same_unmap_without_lbpme() {
    let mut h = H::thin();
    let mut c = cdb16(0x89, 0, 0, 0);
    c[13] = 0;
    h.run(N0, &c, 1024, &[0; 1024]).invalid_cdb(13, None);
    h.run(N0, &c, 0, &[]).good();
    let mut h = H::new(LuConfig::new(1024));
    h.run(N0, &cdb10(0x41, 0x08, 0, 1), 512, &[0; 512])
        .invalid_cdb(1, Some(3));
    // Write protection is reported first.
    let mut h = H::new(LuConfig::new(1024).read_only(true));
    h.run(N0, &cdb10(0x41, 0x08, 0, 1), 512, &[0; 512])
        .sense(SenseKey::DataProtect, Asc::WRITE_PROTECTED);
    // Thin: UNMAP deallocates whatever the block holds.
    let mut h = H::thin();
    h.write1(N0).good();
    h.run(N0, &cdb10(0x41, 0x08, 1, 1), 512, &[0xFF; 512])
        .good();
    assert!(!h.disk.mapped[1]);
}

fn rsoc(rctd: bool, options: u8, opcode: u8, sa: u16, len: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xA3;
    c[1] = 0x0C;
    c[2] = if rctd { 0x80 } else { 0 } | options;
    c[3] = opcode;
    c[4..6].copy_from_slice(&sa.to_be_bytes());
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

#[test]
fn report_supported_opcodes() {
    let mut h = H::thin();
    let o = h.run(N0, &rsoc(false, 0, 0, 0, 4096), 4096, &[]);
    let d = &o.good().data;
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(len + 4, d.len());
    assert_eq!(len % 8, 0);
    // TEST UNIT READY first; PERSISTENT RESERVE IN reported per service action.
    assert_eq!(&d[4..12], &[0x00, 0, 0, 0, 0, 0x00, 0, 6]);
    let descs: Vec<&[u8]> = d[4..].chunks(8).collect();
    assert!(descs.contains(&&[0x5E, 0, 0, 3, 0, 0x01, 0, 10][..]));
    assert!(descs.contains(&&[0x42, 0, 0, 0, 0, 0x00, 0, 10][..]));
    // With timeouts: 20 bytes per command.
    let o = h.run(N0, &rsoc(true, 0, 0, 0, 8192), 8192, &[]);
    let d = &o.good().data;
    assert_eq!(
        &d[4..24],
        &[
            0, 0, 0, 0, 0, 0x02, 0, 6, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30
        ]
    );
    assert_eq!((d.len() - 4) / 20, descs.len());
    // One command: READ (10) with its CDB usage data (DPO, FUA).
    let o = h.run(N0, &rsoc(false, 1, 0x28, 0, 64), 64, &[]);
    assert_eq!(
        o.good().data,
        [
            0, 0x03, 0, 10, 0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0
        ]
    );
    // An operation code with service actions needs options 2; one without needs 1.
    h.run(N0, &rsoc(false, 1, 0x5E, 0, 64), 64, &[])
        .invalid_cdb(3, None);
    h.run(N0, &rsoc(false, 2, 0x28, 0, 64), 64, &[])
        .invalid_cdb(3, None);
    let o = h.run(N0, &rsoc(true, 2, 0x9E, 0x10, 64), 64, &[]);
    let d = &o.good().data;
    assert_eq!(&d[..6], &[0, 0x83, 0, 16, 0x9E, 0x1F]);
    assert_eq!(d.len(), 4 + 16 + 12);
    // Unsupported: SUPPORT = 001b.
    let o = h.run(N0, &rsoc(false, 1, 0xC0, 0, 64), 64, &[]);
    assert_eq!(o.good().data, [0, 0x01, 0, 0]);
    h.run(N0, &rsoc(false, 4, 0, 0, 64), 64, &[])
        .invalid_cdb(2, Some(2));
    // A fully provisioned LU does not list UNMAP.
    let mut h = H::new(LuConfig::new(64));
    let o = h.run(N0, &rsoc(false, 0, 0, 0, 4096), 4096, &[]);
    assert!(!o.good().data[4..].chunks(8).any(|c| c[0] == 0x42));
    // REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
    let mut c = rsoc(false, 0, 0, 0, 4);
    c[1] = 0x0D;
    assert_eq!(h.run(N0, &c, 4, &[]).good().data, [0xDA, 0x00, 0, 0]);
}

#[test]
fn write_atomic_16() {
    let mut h = H::thin();
    let mut c = [0u8; 16];
    c[0] = 0x9C;
    c[1] = 0x08;
    c[2..10].copy_from_slice(&3u64.to_be_bytes());
    c[12..14].copy_from_slice(&2u16.to_be_bytes());
    let data = pattern(1024, 5);
    h.run(N0, &c, 1024, &data).good();
    assert_eq!(&h.disk.data[3 * 512..5 * 512], &data[..]);
    let io = h.disk.ios.last().copied().unwrap();
    assert_eq!(
        (io.op, io.lba, io.blocks, io.fua),
        (IoOp::Write, 3, 2, true)
    );
    // Atomic boundaries are not supported.
    c[10] = 1;
    h.run(N0, &c, 1024, &data).invalid_cdb(10, None);
    c[10] = 0;
    c[2..10].copy_from_slice(&1023u64.to_be_bytes());
    h.run(N0, &c, 1024, &data).oob();
    // Zero blocks: only the LBA is checked.
    c[12..14].copy_from_slice(&0u16.to_be_bytes());
    c[2..10].copy_from_slice(&1024u64.to_be_bytes());
    h.run(N0, &c, 0, &[]).good();
    c[2..10].copy_from_slice(&1025u64.to_be_bytes());
    h.run(N0, &c, 0, &[]).oob();
    // VPD 0xB0 reports the atomic limits.
    let o = h.run(N0, &[0x12, 1, 0xB0, 0, 64, 0], 64, &[]);
    let d = &o.good().data;
    assert_eq!(
        &d[44..64],
        &[
            0, 0, 0x40, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0
        ]
    );
}

fn xcopy_list(
    list_id: u8,
    usage: u8,
    naa: &[u64],
    seg: Option<(u16, u16, u16, u64, u64)>,
) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0] = list_id;
    p[1] = usage << 3;
    p[2..4].copy_from_slice(&((naa.len() * 32) as u16).to_be_bytes());
    let seg_len: u32 = if seg.is_some() { 28 } else { 0 };
    p[8..12].copy_from_slice(&seg_len.to_be_bytes());
    for n in naa {
        let mut d = vec![0u8; 32];
        d[0] = 0xE4;
        d[4..8].copy_from_slice(&[0x01, 0x03, 0x00, 0x08]);
        d[8..16].copy_from_slice(&n.to_be_bytes());
        d[29..32].copy_from_slice(&[0, 2, 0]);
        p.extend_from_slice(&d);
    }
    if let Some((src, dst, blocks, sl, dl)) = seg {
        let mut d = vec![0u8; 28];
        d[0] = 0x02;
        d[3] = 0x18;
        d[4..6].copy_from_slice(&src.to_be_bytes());
        d[6..8].copy_from_slice(&dst.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&sl.to_be_bytes());
        d[20..28].copy_from_slice(&dl.to_be_bytes());
        p.extend_from_slice(&d);
    }
    p
}

fn xcopy_cdb(len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn rcr_cdb(sa: u8, list_id: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x84;
    c[1] = sa;
    c[2] = list_id;
    c[10..14].copy_from_slice(&1024u32.to_be_bytes());
    c
}

#[test]
fn extended_copy_within_one_lu_and_copy_results() {
    let mut h = H::new(LuConfig::new(1024).naa(0x6001_4050_0000_0042));
    let naa = 0x6001_4050_0000_0042u64;
    let data = pattern(4 * 512, 9);
    h.run(N0, &cdb10(0x2A, 0, 10, 4), 2048, &data).good();
    // Unknown list: INVALID FIELD IN CDB.
    h.run(N0, &rcr_cdb(0, 7), 1024, &[]).invalid_cdb(2, None);
    let p = xcopy_list(7, 0, &[naa], Some((0, 0, 4, 10, 500)));
    let len = p.len() as u32;
    h.run(N0, &xcopy_cdb(len), len, &p).good();
    assert_eq!(&h.disk.data[500 * 512..504 * 512], &data[..]);
    let io = h.disk.ios.last().copied().unwrap();
    assert_eq!(
        (io.op, io.lba, io.blocks),
        (
            IoOp::Copy {
                src_lun: 0,
                src_lba: 10,
                dst_lun: 0
            },
            500,
            4
        )
    );
    let o = h.run(N0, &rcr_cdb(0, 7), 1024, &[]);
    assert_eq!(o.good().data, [0, 0, 0, 8, 0x01, 0, 1, 0, 0, 0, 0x08, 0]);
    // The other nexus has no results under that list id.
    h.run(N1, &rcr_cdb(0, 7), 1024, &[]).invalid_cdb(2, None);
    let o = h.run(N0, &rcr_cdb(3, 0), 1024, &[]);
    let d = &o.good().data;
    assert_eq!(&d[..4], &[0, 0, 0, 42]);
    assert_eq!(&d[8..16], &[0, 2, 0, 1, 0, 0, 4, 0]);
    assert_eq!(&d[43..], &[2, 0x02, 0xE4]);
    // Zero-length parameter list: nothing to do.
    h.run(N0, &xcopy_cdb(0), 0, &[]).good();
}

#[test]
fn extended_copy_errors() {
    let naa = 0x6001_4050_0000_0042u64;
    let mut h = H::new(LuConfig::new(1024).naa(naa));
    let run = |h: &mut H, p: &[u8]| {
        let len = p.len() as u32;
        h.run(N0, &xcopy_cdb(len), len, p)
    };
    // Truncated list.
    let p = xcopy_list(1, 0, &[naa], Some((0, 0, 4, 10, 500)));
    let len = p.len() as u32 - 1;
    h.run(N0, &xcopy_cdb(len), len, &p[..len as usize])
        .sense(SenseKey::IllegalRequest, Asc::PARAMETER_LIST_LENGTH_ERROR);
    // Too many descriptors.
    run(
        &mut h,
        &xcopy_list(1, 0, &[naa, naa, naa], Some((0, 0, 1, 0, 1))),
    )
    .sense(SenseKey::IllegalRequest, Asc::TOO_MANY_TARGET_DESCRIPTORS);
    let mut p = xcopy_list(1, 0, &[naa], Some((0, 0, 1, 0, 1)));
    let seg = p[48..76].to_vec();
    p.extend_from_slice(&seg);
    p[8..12].copy_from_slice(&56u32.to_be_bytes());
    run(&mut h, &p).sense(SenseKey::IllegalRequest, Asc::TOO_MANY_SEGMENT_DESCRIPTORS);
    // Unsupported descriptor types.
    let mut p = xcopy_list(1, 0, &[naa], Some((0, 0, 1, 0, 1)));
    p[16] = 0xE0;
    run(&mut h, &p).sense(
        SenseKey::IllegalRequest,
        Asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
    );
    let mut p = xcopy_list(1, 0, &[naa], Some((0, 0, 1, 0, 1)));
    p[48] = 0x03;
    run(&mut h, &p).sense(
        SenseKey::IllegalRequest,
        Asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
    );
    // A designator no LU has, a descriptor index out of range, a range past the end.
    run(&mut h, &xcopy_list(1, 0, &[naa + 1], Some((0, 0, 1, 0, 1))))
        .sense(SenseKey::CopyAborted, Asc::UNREACHABLE_COPY_TARGET);
    run(&mut h, &xcopy_list(1, 0, &[naa], Some((0, 1, 1, 0, 1))))
        .sense(SenseKey::CopyAborted, Asc::COPY_TARGET_DEVICE_NOT_REACHABLE);
    run(&mut h, &xcopy_list(2, 0, &[naa], Some((0, 0, 8, 0, 1020))))
        .sense(SenseKey::CopyAborted, Asc::NO_ADDITIONAL_SENSE);
    // The failure is held for RECEIVE COPY RESULTS (copy status and failed segment).
    let o = h.run(N0, &rcr_cdb(0, 2), 1024, &[]);
    assert_eq!(o.good().data[4], 0x02);
    let o = h.run(N0, &rcr_cdb(4, 2), 1024, &[]);
    let d = &o.good().data;
    assert_eq!(&d[56..60], &[0x02, 0, 0, 18]);
    assert_eq!((d[60], d[62] & 0x0F), (0x70, 0x0A));
    // Inline data is not supported; LIST ID USAGE 11b needs list id 0.
    let mut p = xcopy_list(1, 0, &[naa], None);
    p[12..16].copy_from_slice(&4u32.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    run(&mut h, &p).sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    run(&mut h, &xcopy_list(1, 3, &[naa], None)).sense(
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    // A read-only destination.
    let mut h = H::new(LuConfig::new(64).naa(naa).read_only(true));
    run(&mut h, &xcopy_list(1, 0, &[naa], Some((0, 0, 1, 0, 1))))
        .sense(SenseKey::DataProtect, Asc::WRITE_PROTECTED);
}

#[test]
fn extended_copy_between_luns_of_a_target() {
    let mut t: T = Target::new();
    t.add_lun(
        1,
        LogicalUnit::new(LuConfig::new(64).naa(0x6000_0000_0000_0001)),
    )
    .unwrap();
    t.add_lun(
        2,
        LogicalUnit::new(LuConfig::new(64).naa(0x6000_0000_0000_0002)),
    )
    .unwrap();
    let lun = Lun::from_number(1);
    t.add_nexus(N0).unwrap();
    // Clear the POWER ON unit attention.
    let _ = target_run(&mut t, lun, &[0, 0, 0, 0, 0, 0], 0);
    let p = xcopy_list(
        3,
        0,
        &[0x6000_0000_0000_0002, 0x6000_0000_0000_0001],
        Some((0, 1, 8, 4, 16)),
    );
    let len = p.len() as u32;
    t.submit(
        lun,
        N0,
        TaskTag(77),
        &xcopy_cdb(len),
        DataDirection::Write,
        len,
        TaskAttr::Simple,
    )
    .unwrap();
    let task = TaskId::new(N0.0, 77);
    let a = t.poll_action().unwrap();
    assert_eq!(a.action, Action::NeedDataOut { task, len });
    t.data_out_ready(lun, task, &p).unwrap();
    let a = t.poll_action().unwrap();
    let Action::Io(io) = a.action else {
        panic!("{a:?}")
    };
    assert_eq!(
        (io.op, io.lba, io.blocks, io.block_size),
        (
            IoOp::Copy {
                src_lun: 2,
                src_lba: 4,
                dst_lun: 1
            },
            16,
            8,
            512
        )
    );
    t.complete_io(lun, task, IoResult::Ok).unwrap();
    let a = t.poll_action().unwrap();
    assert!(
        matches!(
            a.action,
            Action::Complete {
                status: ScsiStatus::Good,
                ..
            }
        ),
        "{a:?}"
    );
}

fn sanitize_cdb(sa: u8, len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x48;
    c[1] = sa;
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

#[test]
fn sanitize_overwrite_erase_and_errors() {
    let mut h = H::new(LuConfig::new(64).thin(true));
    h.write1(N0).good();
    let mut p = vec![0x01, 0, 0, 4, 0xDE, 0xAD, 0xBE, 0xEF];
    h.run(N0, &sanitize_cdb(1, 8), 8, &p).good();
    let io = h.disk.ios.last().copied().unwrap();
    assert_eq!(
        (io.lba, io.blocks, io.data_offset, io.fua),
        (0, 64, 4, true)
    );
    assert_eq!(
        &h.disk.data[..8],
        &[0xDE, 0xAD, 0xBE, 0xEF, 0xDE, 0xAD, 0xBE, 0xEF]
    );
    assert_eq!(
        &h.disk.data[63 * 512 + 508..64 * 512],
        &[0xDE, 0xAD, 0xBE, 0xEF]
    );
    // Parameter list length: 5..=block size + 4; pass count and pattern length checked.
    for len in [0u16, 1, 4, 517] {
        h.run(
            N0,
            &sanitize_cdb(1, len),
            u32::from(len),
            &vec![1; usize::from(len)],
        )
        .invalid_cdb(7, None);
    }
    p[0] = 0x00;
    h.run(N0, &sanitize_cdb(1, 8), 8, &p).invalid_cdb(7, None);
    p[0] = 0x01;
    p[3] = 5;
    h.run(N0, &sanitize_cdb(1, 8), 8, &p).invalid_cdb(7, None);
    // Erases take no parameter list.
    h.run(N0, &sanitize_cdb(2, 8), 8, &[0; 8])
        .invalid_cdb(7, None);
    h.run(N0, &sanitize_cdb(0x1F, 8), 8, &[0; 8])
        .invalid_cdb(7, None);
    for sa in [0u8, 4, 0x10, 0x1E] {
        h.run(N0, &sanitize_cdb(sa, 0), 0, &[])
            .invalid_cdb(1, Some(4));
    }
    // Reserved CDB fields.
    let mut c = sanitize_cdb(3, 0);
    c[1] |= 0x40;
    h.run(N0, &c, 0, &[]).invalid_cdb(1, Some(6));
    for k in 2..7 {
        let mut c = sanitize_cdb(3, 0);
        c[k] = 1;
        h.run(N0, &c, 0, &[]).invalid_cdb(k as u16, None);
    }
    h.run(N0, &sanitize_cdb(2, 0), 0, &[]).good();
    assert!(h.disk.mapped.iter().all(|m| !m));
    assert_eq!(h.disk.data[0], 0);
    h.run(N0, &sanitize_cdb(3, 0), 0, &[]).good();
    h.run(N0, &sanitize_cdb(0x1F, 0), 0, &[]).good();
    // WABEREQ and WACEREQ in VPD 0xB1: reads after an erase succeed.
    let o = h.run(N0, &[0x12, 1, 0xB1, 0, 64, 0], 64, &[]);
    assert_eq!(o.good().data[7], 0x50);
    // BLOCK ERASE needs logical block provisioning.
    let mut h = H::new(LuConfig::new(64));
    h.run(N0, &sanitize_cdb(2, 0), 0, &[])
        .invalid_cdb(1, Some(4));
    h.run(N0, &sanitize_cdb(3, 0), 0, &[])
        .invalid_cdb(1, Some(4));
    let o = h.run(N0, &[0x12, 1, 0xB1, 0, 64, 0], 64, &[]);
    assert_eq!(o.good().data[7], 0);
    // Write protection and reservations.
    let mut h = H::new(LuConfig::new(64).thin(true).read_only(true));
    h.run(N0, &sanitize_cdb(3, 0), 0, &[])
        .sense(SenseKey::DataProtect, Asc::WRITE_PROTECTED);
    let mut h = H::new(LuConfig::new(64));
    h.run(N1, &[0x16, 0, 0, 0, 0, 0], 0, &[]).good();
    conflict(&h.run(N0, &sanitize_cdb(3, 0), 0, &[]));
}

#[test]
fn sanitize_in_progress_survives_resets_and_failure_mode() {
    let mut h = H::new(LuConfig::new(64).thin(true));
    let s = TaskId::new(N0.0, 500);
    h.lu.submit(
        N0,
        s.tag,
        &sanitize_cdb(3, 0),
        DataDirection::None,
        0,
        TaskAttr::Simple,
    )
    .unwrap();
    let Some(Action::Io(io)) = h.lu.poll_action() else {
        panic!()
    };
    assert_eq!(
        io.op,
        IoOp::Sanitize {
            kind: SanitizeKind::Erase
        }
    );
    assert!(h.lu.sanitize_in_progress());
    h.tur(N1)
        .sense(SenseKey::NotReady, Asc::SANITIZE_IN_PROGRESS);
    let o = h.run(N1, &[0x03, 0, 0, 0, 18, 0], 18, &[]);
    assert_eq!(&o.good().data[12..18], &[0x04, 0x1B, 0, 0x80, 0, 0]);
    h.run(N1, &[0x12, 0, 0, 0, 36, 0], 36, &[]).good();
    // Aborting the task and resetting the LU do not stop the operation.
    h.lu.abort_task(s);
    h.lu.lu_reset();
    assert!(h.lu.sanitize_in_progress());
    h.run(N1, &[0x03, 0, 0, 0, 18, 0], 18, &[]).good();
    h.tur(N1)
        .sense(SenseKey::NotReady, Asc::SANITIZE_IN_PROGRESS);
    h.lu.complete_io(s, IoResult::Ok).unwrap();
    assert!(!h.lu.sanitize_in_progress());
    h.tur(N0)
        .sense(SenseKey::UnitAttention, Asc::BUS_DEVICE_RESET);
    h.tur(N0).good();
    // A failed sanitize: failure mode until EXIT FAILURE MODE.
    let s = TaskId::new(N0.0, 501);
    h.lu.submit(
        N0,
        s.tag,
        &sanitize_cdb(3, 0),
        DataDirection::None,
        0,
        TaskAttr::Simple,
    )
    .unwrap();
    let Some(Action::Io(_)) = h.lu.poll_action() else {
        panic!()
    };
    h.lu.complete_io(s, IoResult::WriteError).unwrap();
    let Some(Action::Complete { status, .. }) = h.lu.poll_action() else {
        panic!()
    };
    assert_eq!(status, ScsiStatus::CheckCondition);
    h.read1(N1)
        .sense(SenseKey::MediumError, Asc::SANITIZE_COMMAND_FAILED);
    h.tur(N1).good();
    h.run(N0, &sanitize_cdb(0x1F, 0), 0, &[]).good();
    h.read1(N1).good();
}

#[test]
fn cold_reset_requester_reconnects_without_unit_attention() {
    let mut h = H::thin();
    h.lu.add_nexus_with_port(N0, b"iqn.x:host,i,0x000000000001", 1)
        .unwrap();
    h.lu.add_nexus_with_port(N1, b"iqn.x:other,i,0x000000000002", 1)
        .unwrap();
    h.lu.target_reset_by(Some(N0), true);
    // The connections are dropped; the requester comes back with another ISID.
    h.lu.remove_nexus(N0);
    h.lu.remove_nexus(N1);
    let (a, b, c) = (NexusId(7), NexusId(8), NexusId(9));
    h.lu.add_nexus_with_port(a, b"iqn.x:host,i,0x000000000003", 1)
        .unwrap();
    h.lu.add_nexus_with_port(b, b"iqn.x:other,i,0x000000000002", 1)
        .unwrap();
    h.tur(a).good();
    h.tur(b).sense(SenseKey::UnitAttention, Asc::POWER_ON_RESET);
    // Only its first new nexus.
    h.lu.add_nexus_with_port(c, b"iqn.x:host,i,0x000000000004", 1)
        .unwrap();
    h.tur(c).sense(SenseKey::UnitAttention, Asc::POWER_ON_RESET);
}
