use super::*;
use crate::login::{ChapError, Digest, DigestSupport};

const INITIATOR: &str = "iqn.1993-08.org.debian:01:abc";
const TARGET: &str = "iqn.2026-11.org.example:disk1";
const CHALLENGE: ChapChallenge = ChapChallenge {
    id: 0x2a,
    challenge: [
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e,
        0x1f,
    ],
};
// python3: hashlib.md5(bytes([0x2a]) + b"alice-secret-123" + bytes(range(0x10, 0x20))).hexdigest()
const ALICE_R: &str = "0xe81c2e98ff8dc0729abea01c6c8300c3";
// python3: hashlib.md5(bytes([0x33]) + b"bob-secret-4567" + bytes(range(0xa0, 0xb0))).hexdigest()
const BOB_R: &str = "0x98a3de42210069cf9d5f31e76bd460c8";
const PEER_C: &str = "0xa0a1a2a3a4a5a6a7a8a9aaabacadaeaf";

struct Hooks {
    auth: Authorization,
    join: JoinDecision,
    tsih: Option<u16>,
    mutual: bool,
    authorize_calls: u32,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            auth: Authorization::Allowed(AuthPolicy::None),
            join: JoinDecision::Join,
            tsih: Some(0x1234),
            mutual: true,
            authorize_calls: 0,
        }
    }
}

impl LoginHooks for Hooks {
    fn authorize(&mut self, i: &str, t: Option<&str>, ty: SessionType) -> Authorization {
        self.authorize_calls += 1;
        assert_eq!(i, INITIATOR);
        match ty {
            SessionType::Normal if t != Some(TARGET) => Authorization::TargetNotFound,
            SessionType::Discovery => {
                assert_eq!(t, None);
                self.auth
            }
            _ => self.auth,
        }
    }
    fn chap_account(&mut self, _t: Option<&str>, user: &str) -> Option<ChapCredentials> {
        (user == "alice").then(|| ChapCredentials::new("alice", b"alice-secret-123").unwrap())
    }
    fn chap_mutual_account(&mut self, _t: Option<&str>) -> Option<ChapCredentials> {
        self.mutual
            .then(|| ChapCredentials::new("bob", b"bob-secret-4567").unwrap())
    }
    fn join_session(&mut self, i: &str, isid: [u8; 6], tsih: u16, cid: u16) -> JoinDecision {
        assert_eq!((i, isid, tsih, cid), (INITIATOR, ISID, 7, 2));
        self.join
    }
    fn allocate_tsih(&mut self, _i: &str, isid: [u8; 6]) -> Option<u16> {
        assert_eq!(isid, ISID);
        self.tsih
    }
}

const ISID: [u8; 6] = [0x80, 0, 0x02, 0x3d, 0, 0];

fn hdr(transit: bool, cont: bool, csg: u8, nsg: u8) -> LoginHeader {
    LoginHeader {
        transit,
        cont,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: ISID,
        tsih: 0,
        itt: 0x11,
        cid: 0,
        cmd_sn: 5,
        exp_stat_sn: 0,
    }
}

type M = LoginMachine<1024>;

fn machine(cfg: LoginConfig) -> M {
    LoginMachine::new(cfg, CHALLENGE)
}

/// Send one request; returns the reply and its text.
fn send(
    m: &mut M,
    h: &mut Hooks,
    header: LoginHeader,
    data: &[u8],
) -> (LoginReply, heapless::Vec<u8, 8192>) {
    let mut out = [0u8; 8192];
    let r = m.handle_request(&header, data, h, &mut out);
    (r, heapless::Vec::from_slice(&out[..r.data_len]).unwrap())
}

fn first_normal(extra: &str) -> heapless::String<1024> {
    let mut s = heapless::String::new();
    for kv in [
        "InitiatorName=iqn.1993-08.org.debian:01:abc",
        "TargetName=iqn.2026-11.org.example:disk1",
        "SessionType=Normal",
    ] {
        s.push_str(kv).unwrap();
        s.push('\0').unwrap();
    }
    s.push_str(extra).unwrap();
    s
}

fn status_of(r: &LoginReply) -> u16 {
    u16::from(r.status.class) << 8 | u16::from(r.status.detail)
}

#[test]
fn auth_none_full_login() {
    let mut m = machine(LoginConfig::default());
    let mut h = Hooks::default();
    let (r, t) = send(
        &mut m,
        &mut h,
        hdr(true, false, 0, 1),
        first_normal("AuthMethod=None\0").as_bytes(),
    );
    assert_eq!(status_of(&r), 0);
    assert_eq!(
        (r.transit, r.csg, r.nsg, r.tsih, r.itt, r.isid),
        (true, 0, 1, 0, 0x11, ISID)
    );
    assert_eq!(&t[..], b"TargetPortalGroupTag=1\0AuthMethod=None\0");
    assert_eq!(m.stage(), Stage::LoginOperational);
    let ops = b"HeaderDigest=CRC32C,None\0DataDigest=None\0MaxRecvDataSegmentLength=262144\0\
MaxBurstLength=1048576\0FirstBurstLength=262144\0InitialR2T=No\0ImmediateData=Yes\0\
MaxConnections=4\0MaxOutstandingR2T=8\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0\
DefaultTime2Wait=0\0DefaultTime2Retain=0\0ErrorRecoveryLevel=2\0IFMarker=No\0OFMarker=No\0\
X-com.example.foo=bar\0UnknownKey=1\0";
    let (r, t) = send(&mut m, &mut h, hdr(true, false, 1, 3), ops);
    assert_eq!(status_of(&r), 0);
    assert_eq!((r.transit, r.csg, r.nsg, r.tsih), (true, 1, 3, 0x1234));
    assert_eq!(
        &t[..],
        &b"HeaderDigest=CRC32C\0DataDigest=None\0MaxRecvDataSegmentLength=8192\0\
MaxBurstLength=262144\0InitialR2T=Yes\0ImmediateData=Yes\0MaxConnections=1\0\
MaxOutstandingR2T=1\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0DefaultTime2Wait=2\0\
DefaultTime2Retain=0\0ErrorRecoveryLevel=0\0IFMarker=No\0OFMarker=No\0\
X-com.example.foo=NotUnderstood\0UnknownKey=NotUnderstood\0FirstBurstLength=65536\0"[..]
    );
    assert_eq!(m.phase(), LoginPhase::Complete);
    let o = m.outcome().unwrap();
    assert_eq!(o.session_type, SessionType::Normal);
    assert_eq!(
        (o.initiator_name.as_str(), o.target_name.as_str()),
        (INITIATOR, TARGET)
    );
    assert_eq!(
        (o.isid, o.tsih, o.new_session, o.cid, o.cmd_sn),
        (ISID, 0x1234, true, 0, 5)
    );
    let p = o.params;
    assert_eq!(p.header_digest, Digest::Crc32c);
    assert_eq!(p.data_digest, Digest::None);
    assert_eq!(
        (
            p.max_recv_data_segment_length,
            p.max_xmit_data_segment_length
        ),
        (8192, 262_144)
    );
    assert_eq!(
        (p.max_burst_length, p.first_burst_length),
        (262_144, 65_536)
    );
    assert_eq!(
        (p.initial_r2t, p.immediate_data, p.error_recovery_level),
        (true, true, 0)
    );
    assert_eq!((p.default_time2wait, p.default_time2retain), (2, 0));
    assert!(o.chap_user.is_empty());
    // Further requests are invalid.
    let (r, _) = send(&mut m, &mut h, hdr(true, false, 1, 3), b"");
    assert_eq!(status_of(&r), 0x020b);
    assert_eq!(m.phase(), LoginPhase::Complete);
    assert_eq!(m.outcome().unwrap().tsih, 0x1234);
}

#[test]
fn irrelevant_first_burst_and_alias() {
    let mut cfg = LoginConfig::default();
    cfg.target_alias.push_str("disk one").unwrap();
    let mut m = machine(cfg);
    let mut h = Hooks::default();
    let (r, t) = send(
        &mut m,
        &mut h,
        hdr(false, false, 1, 0),
        first_normal("InitiatorAlias=host\0").as_bytes(),
    );
    assert_eq!((status_of(&r), r.transit), (0, false));
    assert_eq!(
        &t[..],
        b"TargetPortalGroupTag=1\0TargetAlias=disk one\0MaxRecvDataSegmentLength=8192\0"
    );
    let (r, t) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        b"FirstBurstLength=4096\0InitialR2T=Yes\0ImmediateData=No\0",
    );
    assert_eq!(status_of(&r), 0);
    assert_eq!(
        &t[..],
        b"InitialR2T=Yes\0ImmediateData=No\0FirstBurstLength=Irrelevant\0"
    );
    assert_eq!(m.outcome().unwrap().initiator_alias.as_str(), "host");
}

#[test]
fn chap_one_way() {
    let mut m = machine(LoginConfig::default());
    let mut h = Hooks {
        auth: Authorization::Allowed(AuthPolicy::Chap),
        ..Hooks::default()
    };
    let (r, t) = send(
        &mut m,
        &mut h,
        hdr(false, false, 0, 0),
        first_normal("AuthMethod=None,CHAP\0").as_bytes(),
    );
    assert_eq!((status_of(&r), r.transit), (0, false));
    assert_eq!(&t[..], b"TargetPortalGroupTag=1\0AuthMethod=CHAP\0");
    let (r, t) = send(&mut m, &mut h, hdr(false, false, 0, 0), b"CHAP_A=7,5\0");
    assert_eq!((status_of(&r), r.transit), (0, false));
    assert_eq!(
        &t[..],
        &b"CHAP_A=5\0CHAP_I=42\0CHAP_C=0x101112131415161718191a1b1c1d1e1f\0"[..]
    );
    let mut req: heapless::String<256> = heapless::String::new();
    req.push_str("CHAP_N=alice\0CHAP_R=").unwrap();
    req.push_str(ALICE_R).unwrap();
    req.push('\0').unwrap();
    let (r, t) = send(&mut m, &mut h, hdr(true, false, 0, 1), req.as_bytes());
    assert_eq!((status_of(&r), r.transit, r.nsg), (0, true, 1));
    assert!(t.is_empty());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        b"MaxRecvDataSegmentLength=65536\0",
    );
    assert_eq!((status_of(&r), r.tsih), (0, 0x1234));
    let o = m.outcome().unwrap();
    assert_eq!((o.chap_user.as_str(), o.mutual_chap), ("alice", false));
}

fn chap_until_challenge(h: &mut Hooks) -> M {
    let mut m = machine(LoginConfig::default());
    h.auth = Authorization::Allowed(AuthPolicy::Chap);
    let (r, _) = send(
        &mut m,
        h,
        hdr(false, false, 0, 0),
        first_normal("AuthMethod=CHAP\0").as_bytes(),
    );
    assert_eq!(status_of(&r), 0);
    let (r, _) = send(&mut m, h, hdr(false, false, 0, 0), b"CHAP_A=5\0");
    assert_eq!(status_of(&r), 0);
    m
}

fn chap_answer(m: &mut M, h: &mut Hooks, kvs: &[&str]) -> (LoginReply, heapless::Vec<u8, 8192>) {
    let mut req: heapless::String<512> = heapless::String::new();
    for kv in kvs {
        req.push_str(kv).unwrap();
        req.push('\0').unwrap();
    }
    send(m, h, hdr(true, false, 0, 1), req.as_bytes())
}

#[test]
fn chap_mutual() {
    let mut h = Hooks::default();
    let mut m = chap_until_challenge(&mut h);
    let r_kv = ["CHAP_R=", ALICE_R].concat_into::<64>();
    let c_kv = ["CHAP_C=", PEER_C].concat_into::<64>();
    let (r, t) = chap_answer(&mut m, &mut h, &["CHAP_N=alice", &r_kv, "CHAP_I=51", &c_kv]);
    assert_eq!((status_of(&r), r.transit, r.nsg), (0, true, 1));
    let want = ["CHAP_N=bob\0CHAP_R=", BOB_R, "\0"].concat_into::<128>();
    assert_eq!(&t[..], want.as_bytes());
    let (r, _) = send(&mut m, &mut h, hdr(true, false, 1, 3), b"");
    assert_eq!(status_of(&r), 0);
    assert!(m.outcome().unwrap().mutual_chap);
}

trait ConcatInto {
    fn concat_into<const N: usize>(&self) -> heapless::String<N>;
}

impl ConcatInto for [&str] {
    fn concat_into<const N: usize>(&self) -> heapless::String<N> {
        let mut s = heapless::String::new();
        for p in self {
            s.push_str(p).unwrap();
        }
        s
    }
}

#[test]
fn chap_failures() {
    let r_kv = ["CHAP_R=", ALICE_R].concat_into::<64>();
    let c_kv = ["CHAP_C=", PEER_C].concat_into::<64>();
    let reflected = "CHAP_C=0x101112131415161718191a1b1c1d1e1f";
    let cases: [(&[&str], bool, u16); 9] = [
        // Wrong response.
        (
            &["CHAP_N=alice", "CHAP_R=0x00000000000000000000000000000000"],
            true,
            0x0201,
        ),
        // Unknown user.
        (&["CHAP_N=mallory", &r_kv], true, 0x0201),
        // Missing CHAP_R.
        (&["CHAP_N=alice"], true, 0x0201),
        // Response not hex/base64.
        (&["CHAP_N=alice", "CHAP_R=zz"], true, 0x0201),
        // Reflected challenge.
        (
            &["CHAP_N=alice", &r_kv, "CHAP_I=51", reflected],
            true,
            0x0201,
        ),
        // Mutual identifier out of range.
        (&["CHAP_N=alice", &r_kv, "CHAP_I=256", &c_kv], true, 0x0201),
        // CHAP_I without CHAP_C.
        (&["CHAP_N=alice", &r_kv, "CHAP_I=51"], true, 0x0201),
        // Mutual requested but no outgoing account.
        (&["CHAP_N=alice", &r_kv, "CHAP_I=51", &c_kv], false, 0x0201),
        // Key repeated.
        (&["CHAP_N=alice", "CHAP_N=alice", &r_kv], true, 0x0200),
    ];
    for (kvs, mutual, status) in cases {
        let mut h = Hooks {
            mutual,
            ..Hooks::default()
        };
        let mut m = chap_until_challenge(&mut h);
        let (r, t) = chap_answer(&mut m, &mut h, kvs);
        assert_eq!(status_of(&r), status, "{kvs:?}");
        assert!(t.is_empty());
        assert_eq!(m.phase(), LoginPhase::Failed);
    }
}

#[test]
fn chap_wrong_identifier_fails() {
    // A response computed with another identifier (0x2b) does not verify.
    let mut h = Hooks::default();
    let mut m = chap_until_challenge(&mut h);
    let wrong = crate::login::chap::chap_response(0x2b, b"alice-secret-123", &CHALLENGE.challenge);
    let mut kv: heapless::String<64> = heapless::String::new();
    kv.push_str("CHAP_R=0x").unwrap();
    for b in wrong {
        core::fmt::write(&mut kv, format_args!("{b:02x}")).unwrap();
    }
    let (r, _) = chap_answer(&mut m, &mut h, &["CHAP_N=alice", &kv]);
    assert_eq!(status_of(&r), 0x0201);
}

#[test]
fn chap_policy_failures() {
    // CHAP required but only None offered.
    let mut m = machine(LoginConfig::default());
    let mut h = Hooks {
        auth: Authorization::Allowed(AuthPolicy::Chap),
        ..Hooks::default()
    };
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 0, 1),
        first_normal("AuthMethod=None\0").as_bytes(),
    );
    assert_eq!(status_of(&r), 0x0201);
    // CHAP required, initiator skips the security stage.
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        first_normal("").as_bytes(),
    );
    assert_eq!(status_of(&r), 0x0201);
    // CHAP required, no AuthMethod and T=1.
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 0, 1),
        first_normal("").as_bytes(),
    );
    assert_eq!(status_of(&r), 0x0201);
    // CHAP_A without MD5.
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(false, false, 0, 0),
        first_normal("AuthMethod=CHAP\0").as_bytes(),
    );
    assert_eq!(status_of(&r), 0);
    let (r, _) = send(&mut m, &mut h, hdr(false, false, 0, 0), b"CHAP_A=6\0");
    assert_eq!(status_of(&r), 0x0201);
    // CHAP_N before a challenge was sent is a protocol error.
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(false, false, 0, 0),
        first_normal("AuthMethod=CHAP\0").as_bytes(),
    );
    assert_eq!(status_of(&r), 0);
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 0, 1),
        b"CHAP_N=alice\0CHAP_R=0x00\0",
    );
    assert_eq!(status_of(&r), 0x0200);
    // Transit requested while CHAP is in progress: target stays (T=0).
    let mut m = machine(LoginConfig::default());
    let (r, t) = send(
        &mut m,
        &mut h,
        hdr(true, false, 0, 1),
        first_normal("AuthMethod=CHAP,None\0").as_bytes(),
    );
    assert_eq!((status_of(&r), r.transit), (0, false));
    assert_eq!(&t[..], b"TargetPortalGroupTag=1\0AuthMethod=CHAP\0");
}

#[test]
fn short_secret_is_a_constructor_error() {
    assert_eq!(
        ChapCredentials::new("alice", b"short-11byt").unwrap_err(),
        ChapError::SecretTooShort
    );
}

#[test]
fn header_errors() {
    let cases: [(LoginHeader, u16); 6] = [
        (hdr(true, true, 0, 1), 0x0200),   // T and C
        (hdr(false, false, 2, 0), 0x0200), // reserved CSG
        (hdr(false, false, 3, 0), 0x0200), // CSG = FFP
        (hdr(true, false, 1, 1), 0x0200),  // NSG not forward
        (hdr(true, false, 0, 2), 0x0200),  // reserved NSG
        (
            LoginHeader {
                version_min: 1,
                version_max: 2,
                ..hdr(true, false, 0, 1)
            },
            0x0205,
        ),
    ];
    for (header, status) in cases {
        let mut m = machine(LoginConfig::default());
        let mut h = Hooks::default();
        let (r, _) = send(
            &mut m,
            &mut h,
            header,
            first_normal("AuthMethod=None\0").as_bytes(),
        );
        assert_eq!(status_of(&r), status, "{header:?}");
        assert_eq!(r.data_len, 0);
        assert_eq!(m.phase(), LoginPhase::Failed);
    }
}

#[test]
fn stage_and_identity_errors() {
    // Second request with a different CSG than the current stage.
    let mut m = machine(LoginConfig::default());
    let mut h = Hooks::default();
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(false, false, 0, 0),
        first_normal("AuthMethod=None\0").as_bytes(),
    );
    assert_eq!(status_of(&r), 0);
    let (r, _) = send(&mut m, &mut h, hdr(true, false, 1, 3), b"");
    assert_eq!(status_of(&r), 0x0200);
    // ISID changed mid-login.
    let mut m = machine(LoginConfig::default());
    let (_, _) = send(
        &mut m,
        &mut h,
        hdr(false, false, 0, 0),
        first_normal("AuthMethod=None\0").as_bytes(),
    );
    let mut h2 = hdr(false, false, 0, 0);
    h2.isid = [1, 2, 3, 4, 5, 6];
    let (r, _) = send(&mut m, &mut h, h2, b"");
    assert_eq!(status_of(&r), 0x0200);
    // Operational key in the security stage; security key in the operational stage.
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(false, false, 0, 0),
        first_normal("MaxBurstLength=512\0").as_bytes(),
    );
    assert_eq!(status_of(&r), 0x0200);
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(false, false, 1, 0),
        first_normal("AuthMethod=None\0").as_bytes(),
    );
    assert_eq!(status_of(&r), 0x0200);
    // SendTargets during login.
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(false, false, 1, 0),
        first_normal("SendTargets=All\0").as_bytes(),
    );
    assert_eq!(status_of(&r), 0x0200);
}

#[test]
fn missing_parameters_and_lookup_failures() {
    let mut h = Hooks::default();
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 0, 1),
        b"TargetName=iqn.2026-11.org.example:disk1\0",
    );
    assert_eq!(status_of(&r), 0x0207);
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 0, 1),
        b"InitiatorName=iqn.1993-08.org.debian:01:abc\0",
    );
    assert_eq!(status_of(&r), 0x0207);
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 0, 1),
        b"InitiatorName=iqn.1993-08.org.debian:01:abc\0TargetName=iqn.nope\0",
    );
    assert_eq!(status_of(&r), 0x0203);
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 0, 1),
        b"InitiatorName=iqn.1993-08.org.debian:01:abc\0SessionType=Bogus\0",
    );
    assert_eq!(status_of(&r), 0x0209);
    for (auth, status) in [
        (Authorization::TargetRemoved, 0x0204),
        (Authorization::NotAllowed, 0x0202),
        (Authorization::ServiceUnavailable, 0x0301),
    ] {
        let mut h = Hooks {
            auth,
            ..Hooks::default()
        };
        let mut m = machine(LoginConfig::default());
        let (r, _) = send(
            &mut m,
            &mut h,
            hdr(true, false, 0, 1),
            first_normal("").as_bytes(),
        );
        assert_eq!(status_of(&r), status);
    }
    // TSIH assignment failure: out of resources.
    let mut h = Hooks {
        tsih: None,
        ..Hooks::default()
    };
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        first_normal("").as_bytes(),
    );
    assert_eq!(status_of(&r), 0x0302);
    // Malformed text.
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(&mut m, &mut h, hdr(true, false, 1, 3), b"InitiatorName");
    assert_eq!(status_of(&r), 0x0200);
}

#[test]
fn add_connection_rules() {
    for (join, status) in [
        (JoinDecision::DoesNotExist, 0x020a),
        (JoinDecision::CannotInclude, 0x0208),
        (JoinDecision::TooManyConnections, 0x0206),
    ] {
        let mut h = Hooks {
            join,
            ..Hooks::default()
        };
        let mut m = machine(LoginConfig::default());
        let header = LoginHeader {
            tsih: 7,
            cid: 2,
            ..hdr(true, false, 1, 3)
        };
        let (r, _) = send(&mut m, &mut h, header, first_normal("").as_bytes());
        assert_eq!(status_of(&r), status);
    }
    let mut h = Hooks::default();
    let mut m = machine(LoginConfig::default());
    let header = LoginHeader {
        tsih: 7,
        cid: 2,
        ..hdr(true, false, 1, 3)
    };
    let (r, t) = send(
        &mut m,
        &mut h,
        header,
        first_normal("MaxBurstLength=4096\0HeaderDigest=None\0").as_bytes(),
    );
    assert_eq!((status_of(&r), r.tsih), (0, 7));
    assert_eq!(
        &t[..],
        &b"TargetPortalGroupTag=1\0MaxBurstLength=Irrelevant\0HeaderDigest=None\0MaxRecvDataSegmentLength=8192\0"[..]
    );
    let o = m.outcome().unwrap();
    assert_eq!((o.new_session, o.tsih, o.cid), (false, 7, 2));
}

#[test]
fn key_repeated_across_requests() {
    let mut m = machine(LoginConfig::default());
    let mut h = Hooks::default();
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(false, false, 1, 0),
        first_normal("MaxBurstLength=4096\0").as_bytes(),
    );
    assert_eq!(status_of(&r), 0);
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        b"MaxBurstLength=8192\0",
    );
    assert_eq!(status_of(&r), 0x0200);
    // InitiatorName sent twice in the first request.
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(false, false, 1, 0),
        first_normal("InitiatorName=iqn.1993-08.org.debian:01:abc\0").as_bytes(),
    );
    assert_eq!(status_of(&r), 0x0200);
}

#[test]
fn out_of_range_values_are_rejected() {
    let mut m = machine(LoginConfig::default());
    let mut h = Hooks::default();
    let (r, t) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        first_normal("MaxRecvDataSegmentLength=100\0MaxBurstLength=99999999\0ErrorRecoveryLevel=7\0ImmediateData=Maybe\0TargetAddress=1.2.3.4:3260,1\0").as_bytes(),
    );
    assert_eq!(status_of(&r), 0);
    assert_eq!(
        &t[..],
        &b"TargetPortalGroupTag=1\0MaxRecvDataSegmentLength=Reject\0MaxBurstLength=Reject\0\
ErrorRecoveryLevel=Reject\0ImmediateData=Reject\0TargetAddress=Irrelevant\0\
MaxRecvDataSegmentLength=8192\0"[..]
    );
    let p = m.outcome().unwrap().params;
    assert_eq!(
        (p.max_xmit_data_segment_length, p.max_burst_length),
        (8192, 262_144)
    );
}

#[test]
fn multi_pdu_login_with_c_bit() {
    let mut m = machine(LoginConfig::default());
    let mut h = Hooks::default();
    let text = first_normal("AuthMethod=None\0");
    let bytes = text.as_bytes();
    let (a, rest) = bytes.split_at(10);
    let (b, c) = rest.split_at(30);
    for part in [a, b] {
        let (r, t) = send(&mut m, &mut h, hdr(false, true, 0, 1), part);
        assert_eq!(
            (status_of(&r), r.transit, r.cont, r.csg),
            (0, false, false, 0)
        );
        assert!(t.is_empty());
        assert_eq!(h.authorize_calls, 0);
    }
    let (r, t) = send(&mut m, &mut h, hdr(true, false, 0, 1), c);
    assert_eq!((status_of(&r), r.transit, r.nsg), (0, true, 1));
    assert_eq!(&t[..], b"TargetPortalGroupTag=1\0AuthMethod=None\0");
    assert_eq!(h.authorize_calls, 1);
    // The accumulation bound: 1024 bytes.
    let mut m = machine(LoginConfig::default());
    let big = [b'a'; 600];
    let (r, _) = send(&mut m, &mut h, hdr(false, true, 0, 1), &big);
    assert_eq!(status_of(&r), 0);
    let (r, _) = send(&mut m, &mut h, hdr(false, true, 0, 1), &big);
    assert_eq!(status_of(&r), 0x0302);
}

#[test]
fn discovery_session_login() {
    let mut m = machine(LoginConfig::default());
    let mut h = Hooks::default();
    let (r, t) = send(
        &mut m,
        &mut h,
        hdr(true, false, 0, 1),
        b"InitiatorName=iqn.1993-08.org.debian:01:abc\0SessionType=Discovery\0AuthMethod=None\0",
    );
    assert_eq!(status_of(&r), 0);
    assert_eq!(&t[..], b"AuthMethod=None\0");
    let (r, t) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        b"HeaderDigest=None\0MaxBurstLength=4096\0ImmediateData=No\0DefaultTime2Wait=5\0",
    );
    assert_eq!(status_of(&r), 0);
    assert_eq!(
        &t[..],
        &b"HeaderDigest=None\0MaxBurstLength=Irrelevant\0ImmediateData=Irrelevant\0DefaultTime2Wait=5\0\
MaxRecvDataSegmentLength=8192\0"[..]
    );
    let o = m.outcome().unwrap();
    assert_eq!(o.session_type, SessionType::Discovery);
    assert!(o.target_name.is_empty());
}

#[test]
fn target_offers_keys_it_cannot_leave_at_default() {
    let cfg = LoginConfig {
        max_burst_length: 65536,
        first_burst_length: 16384,
        immediate_data: false,
        initial_r2t: false,
        data_digests: DigestSupport {
            none: false,
            crc32c: true,
        },
        ..LoginConfig::default()
    };
    let mut m = machine(cfg.clone());
    let mut h = Hooks::default();
    let (r, t) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        first_normal("InitialR2T=No\0").as_bytes(),
    );
    assert_eq!((status_of(&r), r.transit), (0, false));
    assert_eq!(
        &t[..],
        &b"TargetPortalGroupTag=1\0InitialR2T=No\0MaxRecvDataSegmentLength=8192\0\
MaxBurstLength=65536\0FirstBurstLength=16384\0ImmediateData=No\0DataDigest=CRC32C\0"[..]
    );
    let (r, t) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        b"MaxBurstLength=32768\0FirstBurstLength=16384\0ImmediateData=No\0DataDigest=CRC32C\0",
    );
    assert_eq!((status_of(&r), r.transit, r.nsg), (0, true, 3));
    assert!(t.is_empty());
    let p = m.outcome().unwrap().params;
    assert_eq!(
        (p.max_burst_length, p.first_burst_length, p.immediate_data),
        (32768, 16384, false)
    );
    assert_eq!(p.data_digest, Digest::Crc32c);
    // An answer that violates the offer fails the login; so does ignoring it.
    let mut m = machine(cfg.clone());
    let (_, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        first_normal("InitialR2T=No\0").as_bytes(),
    );
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        b"MaxBurstLength=262144\0FirstBurstLength=16384\0ImmediateData=No\0DataDigest=CRC32C\0",
    );
    assert_eq!(status_of(&r), 0x0200);
    let mut m = machine(cfg);
    let (_, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        first_normal("InitialR2T=No\0").as_bytes(),
    );
    let (r, _) = send(&mut m, &mut h, hdr(true, false, 1, 3), b"");
    assert_eq!(status_of(&r), 0x0200);
}

#[test]
fn login_pdu_bound() {
    let cfg = LoginConfig {
        max_login_pdus: 3,
        ..LoginConfig::default()
    };
    let mut m = machine(cfg);
    let mut h = Hooks::default();
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(false, false, 1, 0),
        first_normal("").as_bytes(),
    );
    assert_eq!(status_of(&r), 0);
    for _ in 0..2 {
        let (r, _) = send(&mut m, &mut h, hdr(false, false, 1, 0), b"");
        assert_eq!(status_of(&r), 0);
    }
    let (r, _) = send(&mut m, &mut h, hdr(false, false, 1, 0), b"");
    assert_eq!(status_of(&r), 0x0200);
}

#[test]
fn too_many_keys_is_out_of_resources() {
    let mut m = machine(LoginConfig::default());
    let mut h = Hooks::default();
    let mut text: heapless::String<1024> = first_normal("");
    for _ in 0..MAX_LOGIN_KEYS {
        text.push_str("X-a=1\0").unwrap();
    }
    let (r, _) = send(&mut m, &mut h, hdr(false, false, 1, 0), text.as_bytes());
    assert_eq!(status_of(&r), 0x0302);
}

#[test]
fn security_to_full_feature_is_lowered_when_target_has_offers() {
    let cfg = LoginConfig {
        header_digests: DigestSupport {
            none: false,
            crc32c: true,
        },
        ..LoginConfig::default()
    };
    let mut m = machine(cfg);
    let mut h = Hooks::default();
    let (r, t) = send(
        &mut m,
        &mut h,
        hdr(true, false, 0, 3),
        first_normal("AuthMethod=None\0").as_bytes(),
    );
    assert_eq!((status_of(&r), r.transit, r.csg, r.nsg), (0, true, 0, 1));
    assert_eq!(&t[..], b"TargetPortalGroupTag=1\0AuthMethod=None\0");
    assert_eq!(m.stage(), Stage::LoginOperational);
    let (r, t) = send(&mut m, &mut h, hdr(true, false, 1, 3), b"");
    assert_eq!((status_of(&r), r.transit), (0, false));
    assert_eq!(
        &t[..],
        b"MaxRecvDataSegmentLength=8192\0HeaderDigest=CRC32C\0"
    );
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 1, 3),
        b"HeaderDigest=CRC32C\0",
    );
    assert_eq!((status_of(&r), r.transit, r.nsg), (0, true, 3));
    assert_eq!(m.outcome().unwrap().params.header_digest, Digest::Crc32c);
    // Without offers, security goes straight to full feature phase.
    let mut m = machine(LoginConfig::default());
    let (r, _) = send(
        &mut m,
        &mut h,
        hdr(true, false, 0, 3),
        first_normal("AuthMethod=None\0").as_bytes(),
    );
    assert_eq!(
        (status_of(&r), r.transit, r.nsg, r.tsih),
        (0, true, 3, 0x1234)
    );
    let p = m.outcome().unwrap().params;
    assert_eq!(
        (
            p.max_recv_data_segment_length,
            p.max_xmit_data_segment_length
        ),
        (8192, 8192)
    );
}
