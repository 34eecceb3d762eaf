//! SCSI Task Management Function Request and Response PDUs (RFC 7143 11.5, 11.6).

use super::bhs::{BHS_LEN, Bhs, Word, begin_emit, expect_no_data, expect_opcode};
use super::{Error, Opcode};

/// The task management function (byte 1, bits 6-0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TmfFunction {
    /// 1: ABORT TASK.
    AbortTask,
    /// 2: ABORT TASK SET.
    AbortTaskSet,
    /// 3: CLEAR ACA.
    ClearAca,
    /// 4: CLEAR TASK SET.
    ClearTaskSet,
    /// 5: LOGICAL UNIT RESET.
    LogicalUnitReset,
    /// 6: TARGET WARM RESET.
    TargetWarmReset,
    /// 7: TARGET COLD RESET.
    TargetColdReset,
    /// 8: TASK REASSIGN.
    TaskReassign,
    /// Any other value: answered with "Task management function not supported".
    Unknown(u8),
}

impl TmfFunction {
    /// Decode the 7-bit function code.
    pub const fn from_u8(v: u8) -> Self {
        match v & 0x7f {
            1 => TmfFunction::AbortTask,
            2 => TmfFunction::AbortTaskSet,
            3 => TmfFunction::ClearAca,
            4 => TmfFunction::ClearTaskSet,
            5 => TmfFunction::LogicalUnitReset,
            6 => TmfFunction::TargetWarmReset,
            7 => TmfFunction::TargetColdReset,
            8 => TmfFunction::TaskReassign,
            other => TmfFunction::Unknown(other),
        }
    }

    /// The 7-bit function code.
    pub const fn to_u8(self) -> u8 {
        match self {
            TmfFunction::AbortTask => 1,
            TmfFunction::AbortTaskSet => 2,
            TmfFunction::ClearAca => 3,
            TmfFunction::ClearTaskSet => 4,
            TmfFunction::LogicalUnitReset => 5,
            TmfFunction::TargetWarmReset => 6,
            TmfFunction::TargetColdReset => 7,
            TmfFunction::TaskReassign => 8,
            TmfFunction::Unknown(v) => v & 0x7f,
        }
    }
}

/// A Task Management Function Request PDU (opcode 0x02).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskMgmtRequest {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// The function.
    pub function: TmfFunction,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag of this request.
    pub itt: u32,
    /// Referenced Task Tag (ABORT TASK, TASK REASSIGN), else 0xffffffff.
    pub referenced_task_tag: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// RefCmdSN.
    pub ref_cmd_sn: u32,
    /// ExpDataSN.
    pub exp_data_sn: u32,
}

impl TaskMgmtRequest {
    /// Parse from a checked header; the data segment must be empty.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>, _ahs: &[u8], data: &[u8]) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::TaskMgmtRequest)?;
        expect_no_data(data.len())?;
        Ok(TaskMgmtRequest {
            immediate: bhs.immediate(),
            function: TmfFunction::from_u8(bhs.flags()),
            lun: bhs.lun(),
            itt: bhs.itt(),
            referenced_task_tag: bhs.word(Word::W20),
            cmd_sn: bhs.word(Word::W24),
            exp_stat_sn: bhs.word(Word::W28),
            ref_cmd_sn: bhs.word(Word::W32),
            exp_data_sn: bhs.word(Word::W36),
        })
    }

    /// Header length: BHS only.
    pub const fn buffer_len(&self) -> usize {
        BHS_LEN
    }

    /// Write the BHS.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.emit_with_data_len(out, 0)
    }

    pub(super) fn emit_with_data_len(
        &self,
        out: &mut [u8],
        data_len: usize,
    ) -> Result<usize, Error> {
        expect_no_data(data_len)?;
        let mut bhs = begin_emit(out, Opcode::TaskMgmtRequest, 0, 0)?;
        bhs.set_immediate(self.immediate);
        bhs.set_flags(0x80 | self.function.to_u8());
        bhs.set_lun(self.lun);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, self.referenced_task_tag);
        bhs.set_word(Word::W24, self.cmd_sn);
        bhs.set_word(Word::W28, self.exp_stat_sn);
        bhs.set_word(Word::W32, self.ref_cmd_sn);
        bhs.set_word(Word::W36, self.exp_data_sn);
        Ok(BHS_LEN)
    }
}

/// The response of a task management function (byte 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TmfResponse {
    /// 0: Function complete.
    FunctionComplete,
    /// 1: Task does not exist.
    TaskDoesNotExist,
    /// 2: LUN does not exist.
    LunDoesNotExist,
    /// 3: Task still allegiant.
    TaskStillAllegiant,
    /// 4: Task allegiance reassignment not supported.
    ReassignmentNotSupported,
    /// 5: Task management function not supported.
    NotSupported,
    /// 6: Function authorization failed.
    AuthorizationFailed,
    /// 255: Function rejected.
    Rejected,
    /// Any other value.
    Unknown(u8),
}

impl TmfResponse {
    /// Decode.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            0 => TmfResponse::FunctionComplete,
            1 => TmfResponse::TaskDoesNotExist,
            2 => TmfResponse::LunDoesNotExist,
            3 => TmfResponse::TaskStillAllegiant,
            4 => TmfResponse::ReassignmentNotSupported,
            5 => TmfResponse::NotSupported,
            6 => TmfResponse::AuthorizationFailed,
            255 => TmfResponse::Rejected,
            other => TmfResponse::Unknown(other),
        }
    }

    /// The code on the wire.
    pub const fn to_u8(self) -> u8 {
        match self {
            TmfResponse::FunctionComplete => 0,
            TmfResponse::TaskDoesNotExist => 1,
            TmfResponse::LunDoesNotExist => 2,
            TmfResponse::TaskStillAllegiant => 3,
            TmfResponse::ReassignmentNotSupported => 4,
            TmfResponse::NotSupported => 5,
            TmfResponse::AuthorizationFailed => 6,
            TmfResponse::Rejected => 255,
            TmfResponse::Unknown(v) => v,
        }
    }
}

/// A Task Management Function Response PDU (opcode 0x22).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskMgmtResponse {
    /// The response.
    pub response: TmfResponse,
    /// Initiator Task Tag of the request.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

impl TaskMgmtResponse {
    /// Parse from a checked header; the data segment must be empty.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>, _ahs: &[u8], data: &[u8]) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::TaskMgmtResponse)?;
        expect_no_data(data.len())?;
        Ok(TaskMgmtResponse {
            response: TmfResponse::from_u8(bhs.byte2()),
            itt: bhs.itt(),
            stat_sn: bhs.word(Word::W24),
            exp_cmd_sn: bhs.word(Word::W28),
            max_cmd_sn: bhs.word(Word::W32),
        })
    }

    /// Header length: BHS only.
    pub const fn buffer_len(&self) -> usize {
        BHS_LEN
    }

    /// Write the BHS.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.emit_with_data_len(out, 0)
    }

    pub(super) fn emit_with_data_len(
        &self,
        out: &mut [u8],
        data_len: usize,
    ) -> Result<usize, Error> {
        expect_no_data(data_len)?;
        let mut bhs = begin_emit(out, Opcode::TaskMgmtResponse, 0, 0)?;
        bhs.set_flags(0x80);
        bhs.set_byte2(self.response.to_u8());
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W24, self.stat_sn);
        bhs.set_word(Word::W28, self.exp_cmd_sn);
        bhs.set_word(Word::W32, self.max_cmd_sn);
        Ok(BHS_LEN)
    }
}
