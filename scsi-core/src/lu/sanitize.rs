//! SANITIZE (SBC-4 5.30): OVERWRITE, BLOCK ERASE, CRYPTOGRAPHIC ERASE and EXIT FAILURE MODE.
//! The erases deallocate every block, so they exist on thin LUs only (LBPME = 1).
//!
//! The whole medium is rewritten by one [`IoOp::Sanitize`]. While it runs, every command
//! but INQUIRY, REPORT LUNS and REQUEST SENSE ends with NOT READY, SANITIZE IN PROGRESS
//! (REQUEST SENSE reports the same with a progress indication); aborting the SANITIZE task or
//! resetting the LU does not stop it. A failed sanitize leaves the LU in failure mode (MEDIUM
//! ERROR, SANITIZE COMMAND FAILED for medium access) until a sanitize succeeds or EXIT FAILURE
//! MODE is requested. IMMED is accepted; status is returned when the operation ends.

use super::*;
use crate::pr::Access;

/// State of the LU's sanitize operation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SanitizeState {
    /// The SANITIZE task whose I/O is running.
    pub(crate) running: Option<TaskId>,
    /// The last sanitize failed (failure mode).
    pub(crate) failed: bool,
}

impl<const TASKS: usize, const NEXUS: usize> LogicalUnit<TASKS, NEXUS> {
    /// Whether a sanitize operation is in progress.
    pub fn sanitize_in_progress(&self) -> bool {
        self.sanitize.running.is_some()
    }

    /// NOT READY, SANITIZE IN PROGRESS with a progress indication (none is known: 0).
    pub(super) fn sanitize_sense() -> Sense {
        Sense {
            key: SenseKey::NotReady,
            asc: Asc::SANITIZE_IN_PROGRESS,
            info: None,
            sks: Some([0x80, 0, 0]),
        }
    }

    /// The check every command passes while a sanitize runs or failed.
    pub(super) fn sanitize_check(&self, c: &Cdb) -> Result<(), Sense> {
        if self.sanitize.running.is_some() {
            return match c.opcode() {
                op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE => Ok(()),
                _ => Err(Self::sanitize_sense()),
            };
        }
        if self.sanitize.failed
            && c.opcode() != op::SANITIZE
            && crate::pr::access_class(c) != Access::Allowed
        {
            return Err(Sense::new(
                SenseKey::MediumError,
                Asc::SANITIZE_COMMAND_FAILED,
            ));
        }
        Ok(())
    }

    pub(super) fn sanitize_start(&mut self, i: usize, c: Cdb) -> Step {
        let sa = c.b(1) & 0x1F;
        let plen = u32::from(c.u16(7));
        if c.b(1) & 0x40 != 0 {
            return Err(Sense::invalid_cdb(1, Some(6)));
        }
        if let Some(k) = (2..7).find(|&k| c.b(k) != 0) {
            return Err(Sense::invalid_cdb(k as u16, None));
        }
        let bs = self.cfg.block_bytes();
        match sa {
            0x01 => {
                if !(5..=bs + 4).contains(&plen) {
                    return Err(Sense::invalid_cdb(7, None));
                }
            }
            // The erases deallocate: they need logical block provisioning management.
            0x02 | 0x03 if self.cfg.thin => {}
            0x1F => {}
            _ => return Err(Sense::invalid_cdb(1, Some(4))),
        }
        if sa != 0x01 && plen != 0 {
            return Err(Sense::invalid_cdb(7, None));
        }
        if sa == 0x1F {
            self.sanitize.failed = false;
            return Ok(self.good(i));
        }
        self.need_medium()?;
        self.need_writable()?;
        if sa == 0x01 {
            self.want_data_out(i, plen)?;
            return Ok(Pend::DataOut(plen));
        }
        Ok(self.sanitize_io(i, SanitizeKind::Erase, 0))
    }

    pub(super) fn sanitize_data(&mut self, i: usize, data: &[u8]) -> Step {
        if data.len() < 5 {
            return Err(Sense::invalid_cdb(7, None));
        }
        let invert = data[0] & 0x80 != 0;
        let test = (data[0] >> 5) & 0x03;
        let passes = data[0] & 0x1F;
        let plen = u16::from_be_bytes([data[2], data[3]]);
        if test != 0 {
            return Err(Sense::invalid_param(0, Some(6)));
        }
        if passes == 0 || plen == 0 || u32::from(plen) > self.cfg.block_bytes() {
            return Err(Sense::invalid_cdb(7, None));
        }
        if usize::from(plen) + 4 != data.len() {
            return Err(Sense::invalid_cdb(7, None));
        }
        Ok(self.sanitize_io(
            i,
            SanitizeKind::Overwrite {
                pattern_len: plen,
                invert,
                passes,
            },
            4,
        ))
    }

    fn sanitize_io(&mut self, i: usize, kind: SanitizeKind, data_offset: u32) -> Pend {
        let blocks = self.cfg.num_blocks;
        self.set_io(i, 0, blocks, false, false);
        self.sanitize.running = self.tasks[i].as_ref().map(|t| t.id);
        let mut p = self.io(i, IoOp::Sanitize { kind });
        if let Pend::Io(io) = &mut p {
            io.data_offset = data_offset;
            io.fua = true;
        }
        p
    }

    /// The sanitize I/O of task `id` ended (`ok`): leave the in-progress state.
    pub(super) fn sanitize_done(&mut self, id: TaskId, ok: bool) {
        if self.sanitize.running == Some(id) {
            self.sanitize.running = None;
            self.sanitize.failed = !ok;
        }
    }
}
