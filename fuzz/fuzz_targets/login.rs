//! Fuzz the target login machine with arbitrary sequences of Login Requests (and, after a
//! discovery login, Text Requests through the discovery exchange).
//!
//! Input: byte 0 configures the hooks (bit 0: CHAP required, bit 1: mutual account exists,
//! bit 2: TSIH assignment fails, bits 3-4: join decision, bit 5: strict config); then records
//! `[flags][version_max][version_min][tsih_sel][len_hi][len_lo][data; len]` where `flags` is
//! byte 1 of the Login Request BHS (T, C, CSG, NSG).
#![no_main]

use iscsi_proto::login::discovery::{NO_TTT, Portal, TargetInfo, TextExchange, TextHeader};
use iscsi_proto::login::{
    AuthPolicy, Authorization, ChapChallenge, ChapCredentials, DigestSupport, JoinDecision,
    LoginConfig, LoginHeader, LoginHooks, LoginMachine, LoginPhase, SessionType,
};
use iscsi_proto::text::{self, KeyValue};
use libfuzzer_sys::fuzz_target;

struct Hooks {
    bits: u8,
}

impl LoginHooks for Hooks {
    fn authorize(&mut self, _i: &str, t: Option<&str>, ty: SessionType) -> Authorization {
        match (ty, t) {
            (SessionType::Normal, Some("iqn.2026-11.org.example:gone")) => {
                Authorization::TargetRemoved
            }
            (SessionType::Normal, Some(t)) if !t.starts_with("iqn.2026-11.org.example:") => {
                Authorization::TargetNotFound
            }
            _ if self.bits & 1 != 0 => Authorization::Allowed(AuthPolicy::Chap),
            _ => Authorization::Allowed(AuthPolicy::None),
        }
    }
    fn chap_account(&mut self, _t: Option<&str>, user: &str) -> Option<ChapCredentials> {
        (user == "alice").then(|| ChapCredentials::new("alice", b"alice-secret-123").ok())?
    }
    fn chap_mutual_account(&mut self, _t: Option<&str>) -> Option<ChapCredentials> {
        if self.bits & 2 != 0 {
            ChapCredentials::new("bob", b"bob-secret-4567").ok()
        } else {
            None
        }
    }
    fn join_session(&mut self, _i: &str, _isid: [u8; 6], _tsih: u16, _cid: u16) -> JoinDecision {
        match (self.bits >> 3) & 3 {
            0 => JoinDecision::Join,
            1 => JoinDecision::DoesNotExist,
            2 => JoinDecision::CannotInclude,
            _ => JoinDecision::TooManyConnections,
        }
    }
    fn allocate_tsih(&mut self, _i: &str, _isid: [u8; 6]) -> Option<u16> {
        (self.bits & 4 == 0).then_some(0x1234)
    }
}

const PORTALS: [Portal<'static>; 1] = [Portal {
    address: "127.0.0.1:3260",
    tpgt: 1,
}];
const TARGETS: [TargetInfo<'static>; 2] = [
    TargetInfo {
        name: "iqn.2026-11.org.example:disk1",
        portals: &PORTALS,
    },
    TargetInfo {
        name: "iqn.2026-11.org.example:disk2",
        portals: &PORTALS,
    },
];

fn check_text(out: &[u8]) {
    let mut kvs = [KeyValue::EMPTY; 128];
    text::parse_pairs(out, &mut kvs).expect("target emitted malformed text");
}

fuzz_target!(|data: &[u8]| {
    let Some((&bits, mut rest)) = data.split_first() else {
        return;
    };
    let mut cfg = LoginConfig::default();
    if bits & 0x20 != 0 {
        cfg.max_burst_length = 65536;
        cfg.first_burst_length = 16384;
        cfg.immediate_data = false;
        cfg.default_time2retain = 0;
        cfg.header_digests = DigestSupport {
            none: false,
            crc32c: true,
        };
        cfg.max_login_pdus = 8;
    }
    let challenge = ChapChallenge {
        id: 0x2a,
        challenge: core::array::from_fn(|i| 0x10 + i as u8),
    };
    let mut m = LoginMachine::<2048>::new(cfg, challenge);
    let mut hooks = Hooks { bits };
    let mut ex = TextExchange::<1024>::new();
    let mut out = [0u8; 8192];
    let mut itt = 0u32;
    while rest.len() >= 6 {
        let (h, r) = rest.split_at(6);
        let len = usize::from(u16::from_be_bytes([h[4], h[5]])).min(r.len());
        let (payload, r) = r.split_at(len);
        rest = r;
        itt = itt.wrapping_add(1);
        match m.phase() {
            LoginPhase::Complete => {
                let o = m.outcome().expect("complete login has an outcome");
                assert_ne!(o.tsih, 0);
                assert!(o.params.first_burst_length <= o.params.max_burst_length);
                let ty = o.session_type;
                let hdr = TextHeader {
                    final_: h[0] & 0x80 != 0,
                    cont: h[0] & 0x40 != 0,
                    itt: u32::from(h[1] & 3),
                    ttt: if h[2] & 1 == 0 {
                        NO_TTT
                    } else {
                        u32::from(h[3])
                    },
                };
                let mrdsl = 1 + usize::from(h[3]) * 16;
                let buf = &mut out[..mrdsl];
                if let Ok(r) = ex.handle_request(&hdr, payload, ty, None, &TARGETS, buf) {
                    assert!(r.data_len <= mrdsl);
                    assert!(!(r.final_ && r.cont));
                }
            }
            LoginPhase::Failed | LoginPhase::InProgress => {
                let hdr = LoginHeader {
                    transit: h[0] & 0x80 != 0,
                    cont: h[0] & 0x40 != 0,
                    csg: (h[0] >> 2) & 3,
                    nsg: h[0] & 3,
                    version_max: h[1],
                    version_min: h[2],
                    isid: [0x80, 0, 0, 0, 0, h[3] >> 7],
                    tsih: u16::from(h[3] & 0x7f),
                    itt,
                    cid: 0,
                    cmd_sn: 1,
                    exp_stat_sn: 0,
                };
                let was_failed = m.phase() == LoginPhase::Failed;
                let reply = m.handle_request(&hdr, payload, &mut hooks, &mut out);
                assert!(reply.data_len <= out.len());
                assert!(!reply.cont);
                if reply.status.is_success() {
                    assert!(!was_failed);
                    assert_ne!(m.phase(), LoginPhase::Failed);
                    check_text(&out[..reply.data_len]);
                    if m.phase() == LoginPhase::Complete {
                        assert!(reply.transit && reply.nsg == 3 && reply.tsih != 0);
                    }
                } else {
                    assert_eq!(m.phase(), LoginPhase::Failed);
                    assert_eq!(reply.data_len, 0);
                }
            }
        }
    }
});
