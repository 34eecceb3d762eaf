//! The command table REPORT SUPPORTED OPERATION CODES reports (SPC-4 6.35): every
//! operation code (and service action) the LU implements with its CDB usage data — a mask
//! of the CDB bits the device server looks at.

use crate::cdb::op;
use crate::out::Out;

/// When an entry applies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    Always,
    Thin,
    NotThin,
}

struct OpInfo {
    op: u8,
    sa: Option<u16>,
    when: When,
    usage: &'static [u8],
}

const fn e(op: u8, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        op,
        sa: None,
        when: When::Always,
        usage,
    }
}

const fn sa(op: u8, sa: u16, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        op,
        sa: Some(sa),
        when: When::Always,
        usage,
    }
}

const fn thin(mut i: OpInfo, yes: bool) -> OpInfo {
    i.when = if yes { When::Thin } else { When::NotThin };
    i
}

const F: u8 = 0xFF;

/// Sorted by operation code, then service action.
static TABLE: &[OpInfo] = &[
    e(op::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, 0]),
    e(op::REQUEST_SENSE, &[0x03, 0x01, 0, 0, F, 0]),
    e(op::READ_6, &[0x08, 0x1F, F, F, F, 0]),
    e(op::WRITE_6, &[0x0A, 0x1F, F, F, F, 0]),
    e(op::INQUIRY, &[0x12, 0x01, F, F, F, 0]),
    e(op::MODE_SELECT_6, &[0x15, 0x10, 0, 0, F, 0]),
    e(op::RESERVE_6, &[0x16, 0, 0, 0, 0, 0]),
    e(op::RELEASE_6, &[0x17, 0, 0, 0, 0, 0]),
    e(op::MODE_SENSE_6, &[0x1A, 0x08, F, F, F, 0]),
    e(op::START_STOP_UNIT, &[0x1B, 0x01, 0, 0x0F, 0xF7, 0]),
    e(op::PREVENT_ALLOW, &[0x1E, 0, 0, 0, 0x03, 0]),
    e(op::READ_CAPACITY_10, &[0x25, 0, F, F, F, F, 0, 0, 0x01, 0]),
    e(op::READ_10, &[0x28, 0x18, F, F, F, F, 0, F, F, 0]),
    e(op::WRITE_10, &[0x2A, 0x18, F, F, F, F, 0, F, F, 0]),
    e(op::WRITE_VERIFY_10, &[0x2E, 0x16, F, F, F, F, 0, F, F, 0]),
    e(op::VERIFY_10, &[0x2F, 0x16, F, F, F, F, 0, F, F, 0]),
    e(op::PRE_FETCH_10, &[0x34, 0x02, F, F, F, F, 0, F, F, 0]),
    e(op::SYNC_CACHE_10, &[0x35, 0x02, F, F, F, F, 0, F, F, 0]),
    e(
        op::READ_DEFECT_DATA_10,
        &[0x37, 0, 0x1F, 0, 0, 0, 0, F, F, 0],
    ),
    thin(
        e(op::WRITE_SAME_10, &[0x41, 0x08, F, F, F, F, 0, F, F, 0]),
        true,
    ),
    thin(
        e(op::WRITE_SAME_10, &[0x41, 0x00, F, F, F, F, 0, F, F, 0]),
        false,
    ),
    thin(e(op::UNMAP, &[0x42, 0, 0, 0, 0, 0, 0, F, F, 0]), true),
    sa(op::SANITIZE, 0x01, &[0x48, 0xBF, 0, 0, 0, 0, 0, F, F, 0]),
    thin(
        sa(op::SANITIZE, 0x02, &[0x48, 0xBF, 0, 0, 0, 0, 0, F, F, 0]),
        true,
    ),
    thin(
        sa(op::SANITIZE, 0x03, &[0x48, 0xBF, 0, 0, 0, 0, 0, F, F, 0]),
        true,
    ),
    sa(op::SANITIZE, 0x1F, &[0x48, 0xBF, 0, 0, 0, 0, 0, F, F, 0]),
    e(op::MODE_SELECT_10, &[0x55, 0x10, 0, 0, 0, 0, 0, F, F, 0]),
    e(op::RESERVE_10, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    e(op::RELEASE_10, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    e(op::MODE_SENSE_10, &[0x5A, 0x18, F, F, 0, 0, 0, F, F, 0]),
    sa(
        op::PERSISTENT_RESERVE_IN,
        0,
        &[0x5E, 0x1F, 0, 0, 0, 0, 0, F, F, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        1,
        &[0x5E, 0x1F, 0, 0, 0, 0, 0, F, F, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        2,
        &[0x5E, 0x1F, 0, 0, 0, 0, 0, F, F, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        3,
        &[0x5E, 0x1F, 0, 0, 0, 0, 0, F, F, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        0,
        &[0x5F, 0x1F, F, 0, 0, F, F, F, F, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        1,
        &[0x5F, 0x1F, F, 0, 0, F, F, F, F, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        2,
        &[0x5F, 0x1F, F, 0, 0, F, F, F, F, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        3,
        &[0x5F, 0x1F, F, 0, 0, F, F, F, F, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        4,
        &[0x5F, 0x1F, F, 0, 0, F, F, F, F, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        5,
        &[0x5F, 0x1F, F, 0, 0, F, F, F, F, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        6,
        &[0x5F, 0x1F, F, 0, 0, F, F, F, F, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        7,
        &[0x5F, 0x1F, F, 0, 0, F, F, F, F, 0],
    ),
    sa(
        op::EXTENDED_COPY,
        0,
        &[0x83, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    sa(
        op::RECEIVE_COPY_RESULTS,
        0,
        &[0x84, 0x1F, F, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    sa(
        op::RECEIVE_COPY_RESULTS,
        3,
        &[0x84, 0x1F, F, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    sa(
        op::RECEIVE_COPY_RESULTS,
        4,
        &[0x84, 0x1F, F, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    e(
        op::READ_16,
        &[0x88, 0x18, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    e(
        op::COMPARE_AND_WRITE,
        &[0x89, 0x18, F, F, F, F, F, F, F, F, 0, 0, 0, F, 0, 0],
    ),
    e(
        op::WRITE_16,
        &[0x8A, 0x18, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    e(
        op::ORWRITE_16,
        &[0x8B, 0x18, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    e(
        op::WRITE_VERIFY_16,
        &[0x8E, 0x16, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    e(
        op::VERIFY_16,
        &[0x8F, 0x16, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    e(
        op::PRE_FETCH_16,
        &[0x90, 0x02, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    e(
        op::SYNC_CACHE_16,
        &[0x91, 0x02, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    thin(
        e(
            op::WRITE_SAME_16,
            &[0x93, 0x09, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
        ),
        true,
    ),
    thin(
        e(
            op::WRITE_SAME_16,
            &[0x93, 0x01, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
        ),
        false,
    ),
    e(
        op::WRITE_ATOMIC_16,
        &[0x9C, 0x18, F, F, F, F, F, F, F, F, 0, 0, F, F, 0, 0],
    ),
    sa(
        op::SERVICE_ACTION_IN_16,
        op::SA_READ_CAPACITY_16 as u16,
        &[0x9E, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    thin(
        sa(
            op::SERVICE_ACTION_IN_16,
            op::SA_GET_LBA_STATUS as u16,
            &[0x9E, 0x1F, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
        ),
        true,
    ),
    e(op::REPORT_LUNS, &[0xA0, 0, F, 0, 0, 0, F, F, F, F, 0, 0]),
    sa(
        op::MAINTENANCE_IN,
        op::SA_REPORT_SUPPORTED_OPCODES as u16,
        &[0xA3, 0x1F, 0x87, F, F, F, F, F, F, F, 0, 0],
    ),
    sa(
        op::MAINTENANCE_IN,
        op::SA_REPORT_SUPPORTED_TMFS as u16,
        &[0xA3, 0x1F, 0x80, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    e(op::READ_12, &[0xA8, 0x18, F, F, F, F, F, F, F, F, 0, 0]),
    e(op::WRITE_12, &[0xAA, 0x18, F, F, F, F, F, F, F, F, 0, 0]),
    e(
        op::WRITE_VERIFY_12,
        &[0xAE, 0x16, F, F, F, F, F, F, F, F, 0, 0],
    ),
    e(op::VERIFY_12, &[0xAF, 0x16, F, F, F, F, F, F, F, F, 0, 0]),
    e(
        op::READ_DEFECT_DATA_12,
        &[0xB7, 0x1F, 0, 0, 0, 0, F, F, F, F, 0, 0],
    ),
];

fn applies(i: &OpInfo, is_thin: bool) -> bool {
    match i.when {
        When::Always => true,
        When::Thin => is_thin,
        When::NotThin => !is_thin,
    }
}

/// Whether `opcode` has service actions in the table.
fn has_sa(opcode: u8) -> bool {
    TABLE.iter().any(|i| i.op == opcode && i.sa.is_some())
}

fn timeouts(o: &mut Out<'_>) {
    o.u16(0x0A);
    o.u8(0);
    o.u8(0);
    // Nominal processing timeout not specified; recommended timeout 30 s.
    o.u32(0);
    o.u32(30);
}

/// Why a REPORT SUPPORTED OPERATION CODES request is invalid: the CDB byte and bit of the
/// offending field.
pub(crate) type Invalid = (u16, Option<u8>);

/// Validate the CDB fields (REPORTING OPTIONS vs the requested operation code).
pub(crate) fn check(options: u8, opcode: u8) -> Result<(), Invalid> {
    match options {
        0 | 3 => Ok(()),
        1 if has_sa(opcode) => Err((3, None)),
        2 if !has_sa(opcode) && TABLE.iter().any(|i| i.op == opcode) => Err((3, None)),
        1 | 2 => Ok(()),
        _ => Err((2, Some(2))),
    }
}

/// The response for REPORTING OPTIONS `options`, with timeout descriptors when `rctd`.
pub(crate) fn emit(o: &mut Out<'_>, is_thin: bool, rctd: bool, options: u8, opcode: u8, sa: u16) {
    if options == 0 {
        let start = o.pos();
        o.u32(0);
        for i in TABLE.iter().filter(|i| applies(i, is_thin)) {
            o.u8(i.op);
            o.u8(0);
            o.u16(i.sa.unwrap_or(0));
            o.u8(0);
            o.u8(if rctd { 0x02 } else { 0 } | u8::from(i.sa.is_some()));
            o.u16(i.usage.len() as u16);
            if rctd {
                timeouts(o);
            }
        }
        let len = o.pos() - start - 4;
        let b = (len as u32).to_be_bytes();
        for (k, x) in b.iter().enumerate() {
            o.patch(start + k, *x);
        }
        return;
    }
    let want_sa = options == 2 || (options == 3 && has_sa(opcode));
    let found = TABLE
        .iter()
        .find(|i| applies(i, is_thin) && i.op == opcode && (!want_sa || i.sa == Some(sa)));
    o.u8(0);
    match found {
        Some(i) => {
            o.u8(if rctd { 0x80 } else { 0 } | 0x03);
            o.u16(i.usage.len() as u16);
            o.bytes(i.usage);
            if rctd {
                timeouts(o);
            }
        }
        None => {
            o.u8(0x01);
            o.u16(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_usage_names_its_opcode() {
        for w in TABLE.windows(2) {
            assert!(
                (w[0].op, w[0].sa) <= (w[1].op, w[1].sa),
                "{:02x} {:?}",
                w[1].op,
                w[1].sa
            );
        }
        for i in TABLE {
            assert_eq!(i.usage[0], i.op);
            assert_eq!(i.usage.len(), crate::cdb::cdb_len(i.op), "{:02x}", i.op);
        }
    }
}
