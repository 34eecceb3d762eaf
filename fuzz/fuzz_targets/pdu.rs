//! Fuzz the PDU framer and parser.
//!
//! Input: one selector byte (bit 0: header digest, bit 1: data digest on receive), then a
//! byte stream. The stream is framed PDU by PDU with `pdu_len_checked` and parsed with
//! `Pdu::parse`; whatever parses must re-emit (with and without digests, via `emit_pdu`
//! and via `emit_header` + data + `DataTrailer`) to bytes that parse back to the same PDU.
#![no_main]

use iscsi_proto::wire::{
    Bhs, DataTrailer, Digests, MAX_DATA_SEGMENT_LEN, Pdu, Status, emit_header, emit_pdu, pdu_len,
    pdu_len_checked,
};
use libfuzzer_sys::fuzz_target;

fn check_round_trip(pdu: &Pdu<'_>, digests: Digests) {
    let len = pdu.wire_len(digests);
    let mut out = vec![0u8; len];
    let n = emit_pdu(pdu, digests, &mut out).expect("a parsed PDU must re-emit");
    assert_eq!(n, len);
    assert_eq!(pdu_len(&out, digests), Status::Complete(n));
    let (again, used) = Pdu::parse(&out, digests).expect("a re-emitted PDU must parse");
    assert_eq!(used, n);
    assert_eq!(&again, pdu);

    // The writev path produces the same bytes.
    let data = pdu.data();
    let mut hdr = vec![0u8; pdu.buffer_len() + digests.header_len()];
    let h = emit_header(pdu, data.len(), digests, &mut hdr).expect("header must emit");
    let trailer = DataTrailer::new(data, digests);
    let mut joined = Vec::with_capacity(n);
    joined.extend_from_slice(&hdr[..h]);
    joined.extend_from_slice(data);
    joined.extend_from_slice(trailer.as_bytes());
    assert_eq!(joined, out);

    // A buffer one byte short is an error, never a panic.
    if n > 0 {
        assert!(emit_pdu(pdu, digests, &mut out[..n - 1]).is_err());
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, mut rest)) = input.split_first() else {
        return;
    };
    let digests = Digests {
        header: sel & 1 != 0,
        data: sel & 2 != 0,
    };
    // Accessors on an arbitrary (possibly short) header never panic.
    let view = Bhs::new_unchecked(rest);
    let _ = (
        view.opcode(),
        view.itt(),
        view.data_segment_len(),
        view.cdb(),
    );

    while !rest.is_empty() {
        let len = match pdu_len_checked(rest, digests, MAX_DATA_SEGMENT_LEN) {
            Ok(Status::Complete(len)) => len,
            Ok(Status::Partial) | Err(_) => break,
        };
        assert_eq!(pdu_len(rest, digests), Status::Complete(len));
        match Pdu::parse(rest, digests) {
            Ok((pdu, used)) => {
                assert_eq!(used, len);
                check_round_trip(&pdu, digests);
                check_round_trip(&pdu, Digests::NONE);
                check_round_trip(&pdu, Digests::ALL);
                rest = &rest[used..];
            }
            Err(_) => {
                if rest.len() < len {
                    break;
                }
                // Skip the bad PDU, as a target that Rejects it would.
                rest = &rest[len..];
            }
        }
    }
});
