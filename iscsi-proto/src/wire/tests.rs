//! Round-trip properties (`parse(emit(x)) == x`) for every PDU repr, and rejection tests for
//! reserved values, inconsistent fields and malformed input.

extern crate std;

use std::string::ToString;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

/// Emit `pdu` whole with `digests`, parse it back, and compare; also check the repr's own
/// `emit` writes the same header and `buffer_len` bytes.
fn round_trip(pdu: Pdu<'_>, digests: Digests) -> Result<(), TestCaseError> {
    let len = pdu.wire_len(digests);
    let mut buf = vec![0u8; len];
    prop_assert_eq!(emit_pdu(&pdu, digests, &mut buf), Ok(len));
    prop_assert_eq!(pdu_len(&buf, digests), Status::Complete(len));
    let (back, used) = Pdu::parse(&buf, digests).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(used, len);
    prop_assert_eq!(back, pdu);
    let mut hdr = vec![0u8; pdu.buffer_len()];
    prop_assert_eq!(pdu.emit(&mut hdr), Ok(pdu.buffer_len()));
    prop_assert_eq!(&hdr[..], &buf[..pdu.buffer_len()]);
    // One byte short is a typed error, not a panic.
    prop_assert_eq!(
        emit_pdu(&pdu, digests, &mut buf[..len - 1]),
        Err(Error::BufferTooSmall { required: len })
    );
    Ok(())
}

fn digests() -> impl Strategy<Value = Digests> {
    (any::<bool>(), any::<bool>()).prop_map(|(header, data)| Digests { header, data })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn stage() -> impl Strategy<Value = Stage> {
    prop::sample::select(vec![
        Stage::SecurityNegotiation,
        Stage::LoginOperational,
        Stage::FullFeature,
    ])
}

/// (cont, nsg) pairs that are valid together (T and C are exclusive).
fn login_transit() -> impl Strategy<Value = (bool, Option<Stage>)> {
    prop_oneof![
        Just((true, None)),
        Just((false, None)),
        stage().prop_map(|s| (false, Some(s))),
    ]
}

fn text_flags() -> impl Strategy<Value = TextFlags> {
    prop::sample::select(vec![
        TextFlags::empty(),
        TextFlags::FINAL,
        TextFlags::CONTINUE,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn nop_out(d in digests(), immediate: bool, lun: u64, itt: u32, ttt: u32, cmd_sn: u32,
               exp_stat_sn: u32, data in bytes(64)) {
        round_trip(NopOut { immediate, lun, itt, ttt, cmd_sn, exp_stat_sn, data: &data }.into(), d)?;
    }

    #[test]
    fn nop_in(d in digests(), lun: u64, itt: u32, ttt: u32, stat_sn: u32, exp_cmd_sn: u32,
              max_cmd_sn: u32, data in bytes(64)) {
        round_trip(NopIn { lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, data: &data }.into(), d)?;
    }

    #[test]
    fn scsi_command(d in digests(), immediate: bool, flags in any::<u8>(), attr in 0u8..5,
                    lun: u64, itt: u32, edtl: u32, cmd_sn: u32, exp_stat_sn: u32,
                    cdb: [u8; 16], ext in bytes(245), bidi: Option<u32>, data in bytes(600)) {
        let cmd = ScsiCommand {
            immediate,
            flags: ScsiCommandFlags::from_bits_truncate(flags),
            attr: TaskAttr::from_u8(attr).map_err(|e| TestCaseError::fail(e.to_string()))?,
            lun, itt, expected_data_transfer_len: edtl, cmd_sn, exp_stat_sn, cdb,
            extended_cdb: &ext, bidi_read_len: bidi, data: &data,
        };
        let mut whole = [0u8; MAX_CDB_LEN];
        prop_assert_eq!(cmd.copy_cdb(&mut whole), Ok(16 + ext.len()));
        prop_assert_eq!(&whole[16..16 + ext.len()], &ext[..]);
        round_trip(cmd.into(), d)?;
    }

    #[test]
    fn scsi_command_set_cdb(cdb in bytes(MAX_CDB_LEN + 1)) {
        let mut cmd = ScsiCommand {
            immediate: false, flags: ScsiCommandFlags::FINAL, attr: TaskAttr::Simple,
            lun: 0, itt: 0, expected_data_transfer_len: 0, cmd_sn: 0, exp_stat_sn: 0,
            cdb: [0xff; 16], extended_cdb: &[], bidi_read_len: None, data: &[],
        };
        let r = cmd.set_cdb(&cdb);
        if cdb.len() > MAX_CDB_LEN {
            prop_assert!(r.is_err());
        } else {
            prop_assert!(r.is_ok());
            let mut out = [0u8; MAX_CDB_LEN];
            let n = cmd.copy_cdb(&mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(n, cdb.len().max(16));
            prop_assert_eq!(&out[..cdb.len()], &cdb[..]);
            prop_assert!(out[cdb.len()..n].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn scsi_response(d in digests(), flags in any::<u8>(), response in any::<u8>(), status: u8,
                     itt: u32, snack_tag: u32, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32,
                     exp_data_sn: u32, bidi_read_residual: u32, residual: u32,
                     data in bytes(300)) {
        let mut flags = ResponseFlags::from_bits_truncate(flags);
        if flags.contains(ResponseFlags::OVERFLOW) { flags.remove(ResponseFlags::UNDERFLOW); }
        if flags.contains(ResponseFlags::BIDI_OVERFLOW) { flags.remove(ResponseFlags::BIDI_UNDERFLOW); }
        let Ok(response) = ScsiResponseCode::from_u8(response) else { return Ok(()); };
        round_trip(ScsiResponse {
            flags, response, status, itt, snack_tag, stat_sn, exp_cmd_sn, max_cmd_sn,
            exp_data_sn, bidi_read_residual, residual, data: &data,
        }.into(), d)?;
    }

    #[test]
    fn sense_round_trip(sense in bytes(260)) {
        let mut seg = [0u8; 262];
        let n = ScsiResponse::encode_sense(&sense, &mut seg)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let resp = ScsiResponse {
            flags: ResponseFlags::empty(), response: ScsiResponseCode::CommandCompleted,
            status: 2, itt: 0, snack_tag: 0, stat_sn: 0, exp_cmd_sn: 0, max_cmd_sn: 0,
            exp_data_sn: 0, bidi_read_residual: 0, residual: 0, data: &seg[..n],
        };
        prop_assert_eq!(resp.sense(), Ok(&sense[..]));
    }

    #[test]
    fn task_mgmt_request(d in digests(), immediate: bool, function in any::<u8>(), lun: u64,
                         itt: u32, rtt: u32, cmd_sn: u32, exp_stat_sn: u32, ref_cmd_sn: u32,
                         exp_data_sn: u32) {
        round_trip(TaskMgmtRequest {
            immediate, function: TmfFunction::from_u8(function), lun, itt,
            referenced_task_tag: rtt, cmd_sn, exp_stat_sn, ref_cmd_sn, exp_data_sn,
        }.into(), d)?;
    }

    #[test]
    fn task_mgmt_response(d in digests(), response: u8, itt: u32, stat_sn: u32,
                          exp_cmd_sn: u32, max_cmd_sn: u32) {
        round_trip(TaskMgmtResponse {
            response: TmfResponse::from_u8(response), itt, stat_sn, exp_cmd_sn, max_cmd_sn,
        }.into(), d)?;
    }

    #[test]
    fn login_request(d in digests(), (cont, nsg) in login_transit(), csg in stage(),
                     version_max: u8, version_min: u8, isid: [u8; 6], tsih: u16, itt: u32,
                     cid: u16, cmd_sn: u32, exp_stat_sn: u32, data in bytes(300)) {
        round_trip(LoginRequest {
            cont, csg, nsg, version_max, version_min, isid, tsih, itt, cid, cmd_sn,
            exp_stat_sn, data: &data,
        }.into(), d)?;
    }

    #[test]
    fn login_response(d in digests(), (cont, nsg) in login_transit(), csg in stage(),
                      version_max: u8, version_active: u8, isid: [u8; 6], tsih: u16,
                      itt: u32, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32,
                      class: u8, detail: u8, data in bytes(300)) {
        round_trip(LoginResponse {
            cont, csg, nsg, version_max, version_active, isid, tsih, itt, stat_sn,
            exp_cmd_sn, max_cmd_sn, status: LoginStatus::new(class, detail), data: &data,
        }.into(), d)?;
    }

    #[test]
    fn text_request(d in digests(), immediate: bool, flags in text_flags(), lun: u64, itt: u32,
                    ttt: u32, cmd_sn: u32, exp_stat_sn: u32, data in bytes(300)) {
        round_trip(TextRequest {
            immediate, flags, lun, itt, ttt, cmd_sn, exp_stat_sn, data: &data,
        }.into(), d)?;
    }

    #[test]
    fn text_response(d in digests(), flags in text_flags(), lun: u64, itt: u32, ttt: u32,
                     stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32, data in bytes(300)) {
        round_trip(TextResponse {
            flags, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, data: &data,
        }.into(), d)?;
    }

    #[test]
    fn data_out(d in digests(), final_bit: bool, lun: u64, itt: u32, ttt: u32,
                exp_stat_sn: u32, data_sn: u32, buffer_offset: u32, data in bytes(600)) {
        round_trip(DataOut {
            final_bit, lun, itt, ttt, exp_stat_sn, data_sn, buffer_offset, data: &data,
        }.into(), d)?;
    }

    #[test]
    fn data_in(d in digests(), flags in any::<u8>(), status: u8, lun: u64, itt: u32,
               ttt: u32, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32, data_sn: u32,
               buffer_offset: u32, residual: u32, data in bytes(600)) {
        let mut flags = DataInFlags::from_bits_truncate(flags);
        if flags.contains(DataInFlags::STATUS) { flags.insert(DataInFlags::FINAL); }
        if flags.contains(DataInFlags::OVERFLOW) { flags.remove(DataInFlags::UNDERFLOW); }
        let status = if flags.contains(DataInFlags::STATUS) { status } else { 0 };
        round_trip(DataIn {
            flags, status, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn,
            buffer_offset, residual, data: &data,
        }.into(), d)?;
    }

    #[test]
    fn logout_request(d in digests(), immediate: bool, reason in 0u8..3, itt: u32, cid: u16,
                      cmd_sn: u32, exp_stat_sn: u32) {
        let reason = LogoutReason::from_u8(reason).map_err(|e| TestCaseError::fail(e.to_string()))?;
        round_trip(LogoutRequest { immediate, reason, itt, cid, cmd_sn, exp_stat_sn }.into(), d)?;
    }

    #[test]
    fn logout_response(d in digests(), response: u8, itt: u32, stat_sn: u32, exp_cmd_sn: u32,
                       max_cmd_sn: u32, time2wait: u16, time2retain: u16) {
        round_trip(LogoutResponse {
            response: LogoutResponseCode::from_u8(response), itt, stat_sn, exp_cmd_sn,
            max_cmd_sn, time2wait, time2retain,
        }.into(), d)?;
    }

    #[test]
    fn r2t(d in digests(), lun: u64, itt: u32, ttt: u32, stat_sn: u32, exp_cmd_sn: u32,
           max_cmd_sn: u32, r2t_sn: u32, buffer_offset: u32, desired_len: u32) {
        round_trip(R2t {
            lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, r2t_sn, buffer_offset, desired_len,
        }.into(), d)?;
    }

    #[test]
    fn snack(d in digests(), ty in 0u8..4, lun: u64, itt: u32, ttt: u32, exp_stat_sn: u32,
             beg_run: u32, run_length: u32) {
        let snack_type = SnackType::from_u8(ty).map_err(|e| TestCaseError::fail(e.to_string()))?;
        round_trip(Snack { snack_type, lun, itt, ttt, exp_stat_sn, beg_run, run_length }.into(), d)?;
    }

    #[test]
    fn async_message(d in digests(), lun: u64, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32,
                     event: u8, vcode: u8, parameter1: u16, parameter2: u16, parameter3: u16,
                     data in bytes(100)) {
        round_trip(AsyncMessage {
            lun, stat_sn, exp_cmd_sn, max_cmd_sn, event: AsyncEvent::from_u8(event), vcode,
            parameter1, parameter2, parameter3, data: &data,
        }.into(), d)?;
    }

    #[test]
    fn reject(d in digests(), reason: u8, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32,
              data_sn: u32, data in bytes(100)) {
        round_trip(Reject {
            reason: RejectReason::from_u8(reason), stat_sn, exp_cmd_sn, max_cmd_sn, data_sn,
            data: &data,
        }.into(), d)?;
    }

    /// Arbitrary bytes never panic the framer or the parser, and whatever parses re-emits
    /// to bytes that parse to the same PDU.
    #[test]
    fn garbage_never_panics(d in digests(), buf in bytes(400)) {
        let _ = pdu_len(&buf, d);
        let _ = pdu_len_checked(&buf, d, 256);
        if let Ok((pdu, used)) = Pdu::parse(&buf, d) {
            prop_assert!(used <= buf.len());
            round_trip(pdu, d)?;
        }
    }

    /// Codes from `from_u8` always encode back to the same byte.
    #[test]
    fn code_points(v: u8) {
        prop_assert_eq!(Opcode::from_u8(v).to_u8(), v & 0x3f);
        prop_assert_eq!(TmfFunction::from_u8(v).to_u8(), v & 0x7f);
        prop_assert_eq!(TmfResponse::from_u8(v).to_u8(), v);
        prop_assert_eq!(LogoutResponseCode::from_u8(v).to_u8(), v);
        prop_assert_eq!(AsyncEvent::from_u8(v).to_u8(), v);
        prop_assert_eq!(RejectReason::from_u8(v).to_u8(), v);
        if let Ok(c) = ScsiResponseCode::from_u8(v) { prop_assert_eq!(c.to_u8(), v); }
    }
}

/// A 48-byte header with the given opcode byte and flags byte, the rest zero.
fn header(op: u8, flags: u8) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0] = op;
    b[1] = flags;
    b
}

fn parse(b: &[u8]) -> Result<Pdu<'_>, Error> {
    Pdu::parse(b, Digests::NONE).map(|(p, _)| p)
}

#[test]
fn reserved_code_values_are_errors() {
    // SCSI Command task attribute 5-7.
    for attr in 5..8 {
        assert_eq!(
            parse(&header(0x01, 0x80 | attr)),
            Err(Error::ReservedValue {
                field: "ATTR",
                value: u32::from(attr)
            })
        );
    }
    // Login CSG 2, and NSG 2 with T set.
    assert_eq!(
        parse(&header(0x43, 0x08)),
        Err(Error::ReservedValue {
            field: "CSG",
            value: 2
        })
    );
    assert_eq!(
        parse(&header(0x43, 0x82)),
        Err(Error::ReservedValue {
            field: "NSG",
            value: 2
        })
    );
    // Logout reason 3..127.
    assert_eq!(
        parse(&header(0x46, 0x83)),
        Err(Error::ReservedValue {
            field: "Reason Code",
            value: 3
        })
    );
    // SNACK type 4..15.
    assert_eq!(
        parse(&header(0x10, 0x84)),
        Err(Error::ReservedValue {
            field: "Type",
            value: 4
        })
    );
    // SCSI Response code 0x02..0x7f.
    let mut b = header(0x21, 0x80);
    b[2] = 0x02;
    assert_eq!(
        parse(&b),
        Err(Error::ReservedValue {
            field: "Response",
            value: 2
        })
    );
    // AHS type 3.
    let mut b = [0u8; 52];
    b[0] = 0x01;
    b[1] = 0x81;
    b[4] = 1;
    b[48..52].copy_from_slice(&[0, 1, 3, 0]);
    assert_eq!(
        parse(&b),
        Err(Error::ReservedValue {
            field: "AHSType",
            value: 3
        })
    );
    assert_eq!(
        parse(&b).unwrap_err().reject_reason(),
        Some(RejectReason::InvalidPduField)
    );
}

#[test]
fn inconsistent_fields_are_errors() {
    // Login with both T and C.
    assert_eq!(
        parse(&header(0x43, 0xc7)),
        Err(Error::InvalidField {
            field: "T/C",
            value: 0xc7
        })
    );
    // Text with both F and C.
    assert_eq!(
        parse(&header(0x04, 0xc0)),
        Err(Error::InvalidField {
            field: "F/C",
            value: 0xc0
        })
    );
    // Data-In with S but not F; with both O and U.
    assert_eq!(
        parse(&header(0x25, 0x01)),
        Err(Error::InvalidField {
            field: "Flags",
            value: 0x01
        })
    );
    assert_eq!(
        parse(&header(0x25, 0x86)),
        Err(Error::InvalidField {
            field: "Flags",
            value: 0x86
        })
    );
    // SCSI Response with both o and u.
    assert_eq!(
        parse(&header(0x21, 0x98)),
        Err(Error::InvalidField {
            field: "Flags",
            value: 0x98
        })
    );
    // PDUs whose DataSegmentLength must be 0.
    for op in [0x02u8, 0x06, 0x10, 0x22, 0x26, 0x31] {
        let mut b = [0u8; 52];
        b[..48].copy_from_slice(&header(op, 0x80));
        b[7] = 4;
        assert_eq!(
            parse(&b),
            Err(Error::InvalidField {
                field: "DataSegmentLength",
                value: 4
            }),
            "opcode {op:#x}"
        );
    }
    // Duplicate extended CDB AHS.
    let mut b = [0u8; 64];
    b[0] = 0x01;
    b[4] = 4;
    b[48..56].copy_from_slice(&[0, 2, 1, 0, 0xaa, 0, 0, 0]);
    b[56..64].copy_from_slice(&[0, 2, 1, 0, 0xbb, 0, 0, 0]);
    assert_eq!(parse(&b), Err(Error::InvalidAhs));
    // Per-repr parse checks the opcode.
    let b = header(0x20, 0x80);
    let bhs = Bhs::new_checked(&b[..]).unwrap();
    assert_eq!(
        NopOut::parse(&bhs, &[], &[]),
        Err(Error::InvalidField {
            field: "Opcode",
            value: 0x20
        })
    );
    assert!(NopIn::parse(&bhs, &[], &[]).is_ok());
}

#[test]
fn reserved_bits_and_fields_are_ignored() {
    // RFC 7143 11.1: receivers ignore reserved bits and fields. A NOP-Out with every
    // reserved byte set parses to the same repr as a clean one.
    let mut clean = header(0x00, 0x80);
    clean[16..20].copy_from_slice(&[0, 0, 0, 1]);
    let mut dirty = clean;
    dirty[0] |= 0x80; // reserved bit before I
    dirty[1] = 0x7f | 0x80;
    dirty[2] = 0xff;
    dirty[3] = 0xff;
    for b in &mut dirty[32..48] {
        *b = 0xee;
    }
    assert_eq!(parse(&dirty), parse(&clean));
    // Login: NSG is ignored when T is clear, even the reserved value 2.
    let login = header(0x43, 0x06);
    let Ok(Pdu::LoginRequest(l)) = parse(&login) else {
        panic!("login")
    };
    assert_eq!((l.csg, l.nsg), (Stage::LoginOperational, None));
    // Data-In: the status byte is ignored without S.
    let mut b = header(0x25, 0x80);
    b[3] = 0x02;
    let Ok(Pdu::DataIn(d)) = parse(&b) else {
        panic!("data-in")
    };
    assert_eq!(d.status, 0);
}

#[test]
fn unknown_tmf_function_parses() {
    let b = header(0x02, 0x80 | 0x0e);
    let Ok(Pdu::TaskMgmtRequest(t)) = parse(&b) else {
        panic!("tmf")
    };
    assert_eq!(t.function, TmfFunction::Unknown(0x0e));
}

#[test]
fn oversized_and_truncated() {
    // A data segment over the caller's limit is refused before buffering.
    let mut b = header(0x01, 0xa1);
    b[5..8].copy_from_slice(&[0x01, 0x00, 0x00]); // 64 KiB
    assert_eq!(
        pdu_len_checked(&b, Digests::NONE, 8192),
        Err(Error::DataSegmentTooLong {
            len: 65536,
            max: 8192
        })
    );
    assert_eq!(parse(&b), Err(Error::Truncated));
    // AHS declared but missing.
    let mut b = header(0x01, 0x81);
    b[4] = 1;
    assert_eq!(parse(&b), Err(Error::Truncated));
    // Extended CDB AHS running past TotalAHSLength.
    let mut b = [0u8; 56];
    b[0] = 0x01;
    b[4] = 2;
    b[48..52].copy_from_slice(&[0, 20, 1, 0]);
    assert_eq!(parse(&b), Err(Error::InvalidAhs));
    // Sense length longer than the data segment.
    let mut b = [0u8; 52];
    b[..48].copy_from_slice(&header(0x21, 0x80));
    b[7] = 4;
    b[48..52].copy_from_slice(&[0, 9, 0x70, 0]);
    let Ok(Pdu::ScsiResponse(r)) = parse(&b) else {
        panic!("response")
    };
    assert_eq!(
        r.sense(),
        Err(Error::InvalidField {
            field: "SenseLength",
            value: 9
        })
    );
    // A data segment of 1 byte cannot hold SenseLength.
    let one = ScsiResponse { data: &[0], ..r };
    assert_eq!(
        one.sense(),
        Err(Error::InvalidField {
            field: "SenseLength",
            value: 0
        })
    );
}

#[test]
fn emit_rejects_unencodable_reprs() {
    // T and C together cannot be encoded.
    let req = LoginRequest {
        cont: true,
        csg: Stage::SecurityNegotiation,
        nsg: Some(Stage::LoginOperational),
        version_max: 0,
        version_min: 0,
        isid: [0; 6],
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn: 0,
        exp_stat_sn: 0,
        data: &[],
    };
    assert!(matches!(
        req.emit(&mut [0u8; 48]),
        Err(Error::InvalidField { .. })
    ));
    let text = TextResponse {
        flags: TextFlags::FINAL | TextFlags::CONTINUE,
        lun: 0,
        itt: 0,
        ttt: 0,
        stat_sn: 0,
        exp_cmd_sn: 0,
        max_cmd_sn: 0,
        data: &[],
    };
    assert!(matches!(
        text.emit(&mut [0u8; 48]),
        Err(Error::InvalidField { .. })
    ));
    // An extended CDB longer than 244 bytes.
    let ext = [0u8; 245];
    let cmd = ScsiCommand {
        immediate: false,
        flags: ScsiCommandFlags::FINAL,
        attr: TaskAttr::Simple,
        lun: 0,
        itt: 0,
        expected_data_transfer_len: 0,
        cmd_sn: 0,
        exp_stat_sn: 0,
        cdb: [0; 16],
        extended_cdb: &ext,
        bidi_read_len: None,
        data: &[],
    };
    assert_eq!(cmd.emit(&mut [0u8; 400]), Err(Error::InvalidAhs));
    assert_eq!(
        cmd.emit(&mut [0u8; 47]),
        Err(Error::BufferTooSmall { required: 48 + 252 })
    );
}
