//! The target-side login stage machine (RFC 7143 sections 6 and 11.12/11.13).

use crate::storage::Storage;
use crate::text::{self, KeyValue, Special, TextError, TextWriter};

use super::chap::{self, ChapChallenge, ChapCredentials};
use super::keys::{self, Answer, Key, KeyClass, SessionParams};
use super::{
    AuthPolicy, Authorization, JoinDecision, LoginConfig, LoginHeader, LoginHooks, LoginReply,
    LoginStatus, MAX_NAME_LEN, MAX_VALUE_LEN, SessionType, Stage, stage_from_bits,
};

/// Smallest reply buffer the machine can work with (a reply that does not fit fails the
/// login with 0x0300). Use the initiator's login MaxRecvDataSegmentLength (8192) in practice.
pub const MIN_REPLY_BUF: usize = 512;

/// Most key=value pairs accepted in one login request.
pub const MAX_LOGIN_KEYS: usize = 64;

/// Where the login is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginPhase {
    /// More requests are expected.
    InProgress,
    /// The last reply moved the connection to full feature phase; see
    /// [`LoginMachine::outcome`].
    Complete,
    /// The last reply carried a failure status; close the connection after sending it.
    Failed,
}

/// Result of a successful login, for the connection / session machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOutcome {
    /// Normal or discovery.
    pub session_type: SessionType,
    /// InitiatorName.
    pub initiator_name: heapless::String<MAX_NAME_LEN>,
    /// InitiatorAlias (empty when not sent).
    pub initiator_alias: heapless::String<MAX_VALUE_LEN>,
    /// TargetName (empty for discovery sessions).
    pub target_name: heapless::String<MAX_NAME_LEN>,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH of the session (newly assigned when `new_session`).
    pub tsih: u16,
    /// Whether the login created a new session (TSIH was 0). The caller handles session
    /// reinstatement: a new session with the ISID and InitiatorName of an existing one
    /// replaces it (RFC 7143 section 6.3.5).
    pub new_session: bool,
    /// CID of the connection.
    pub cid: u16,
    /// CmdSN of the final Login Request (the session's ExpCmdSN starts here).
    pub cmd_sn: u32,
    /// ExpStatSN of the final Login Request.
    pub exp_stat_sn: u32,
    /// Negotiated parameters.
    pub params: SessionParams,
    /// The CHAP user the initiator authenticated as (empty for AuthMethod=None).
    pub chap_user: heapless::String<{ chap::MAX_USER_LEN }>,
    /// Whether the target authenticated itself too (mutual CHAP).
    pub mutual_chap: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Start,
    NoneChosen,
    ChapChosen,
    ChallengeSent,
    Done,
}

#[derive(Debug, Clone)]
struct Core {
    config: LoginConfig,
    challenge: ChapChallenge,
    phase: LoginPhase,
    stage: Stage,
    started: bool,
    authorized: bool,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    session_type: SessionType,
    initiator_name: heapless::String<MAX_NAME_LEN>,
    initiator_alias: heapless::String<MAX_VALUE_LEN>,
    target_name: heapless::String<MAX_NAME_LEN>,
    policy: AuthPolicy,
    auth: Auth,
    chap_user: heapless::String<{ chap::MAX_USER_LEN }>,
    mutual: bool,
    params: SessionParams,
    /// Keys already sent by the initiator in this login.
    seen: u64,
    /// Keys the target offered and awaits an answer for.
    offered: u64,
    declared_mrdsl: bool,
    pdus: u16,
    outcome: Option<LoginOutcome>,
}

/// The login machine of one connection. `BUF` bounds the text of one multi-PDU (C bit)
/// request, which is kept in a `B` (see [`crate::storage`]) until its last PDU.
///
/// See the [module docs](super) for the call order.
#[derive(Debug, Clone)]
pub struct LoginMachine<const BUF: usize, B = heapless::Vec<u8, BUF>> {
    core: Core,
    pending: B,
}

type Step = Result<(bool, Stage, usize), LoginStatus>;

fn copy_str<const N: usize>(s: &str) -> Option<heapless::String<N>> {
    let mut out = heapless::String::new();
    out.push_str(s).ok()?;
    Some(out)
}

fn write_answer(w: &mut TextWriter<'_>, key: &str, a: Answer) -> Result<(), LoginStatus> {
    let r = match a {
        Answer::Num(n) => w.push_u64(key, n),
        Answer::Str(s) => w.push(key, s),
        Answer::Special(s) => w.push_special(key, s),
    };
    r.map_err(|_| LoginStatus::TARGET_ERROR)
}

fn answer_matches(a: Answer, value: &str) -> bool {
    match a {
        Answer::Num(n) => text::parse_number(value) == Ok(n),
        Answer::Str(s) => s == value,
        Answer::Special(_) => false,
    }
}

impl<const BUF: usize, B: Storage<u8>> LoginMachine<BUF, B> {
    /// A machine for a new connection. `challenge` is fresh randomness for this login.
    pub fn new(config: LoginConfig, challenge: ChapChallenge) -> Self {
        LoginMachine {
            core: Core {
                config,
                challenge,
                phase: LoginPhase::InProgress,
                stage: Stage::SecurityNegotiation,
                started: false,
                authorized: false,
                isid: [0; 6],
                tsih: 0,
                cid: 0,
                session_type: SessionType::Normal,
                initiator_name: heapless::String::new(),
                initiator_alias: heapless::String::new(),
                target_name: heapless::String::new(),
                policy: AuthPolicy::None,
                auth: Auth::Start,
                chap_user: heapless::String::new(),
                mutual: false,
                params: SessionParams::RFC_DEFAULTS,
                seen: 0,
                offered: 0,
                declared_mrdsl: false,
                pdus: 0,
                outcome: None,
            },
            pending: B::default(),
        }
    }

    /// Where the login is.
    pub fn phase(&self) -> LoginPhase {
        self.core.phase
    }

    /// The current stage (the CSG the next request must carry).
    pub fn stage(&self) -> Stage {
        self.core.stage
    }

    /// The result, once [`LoginPhase::Complete`].
    pub fn outcome(&self) -> Option<&LoginOutcome> {
        self.core.outcome.as_ref()
    }

    /// Handle one Login Request; writes the response text into `out` and returns the
    /// response fields. After a reply with a failure status, [`Self::phase`] is
    /// [`LoginPhase::Failed`]. Once the login is over (complete or failed), every further
    /// request gets 0x020b (invalid during login) and changes nothing: the outcome of a
    /// complete login stays available.
    pub fn handle_request<H: LoginHooks>(
        &mut self,
        hdr: &LoginHeader,
        data: &[u8],
        hooks: &mut H,
        out: &mut [u8],
    ) -> LoginReply {
        let csg_bits = hdr.csg & 3;
        let fail = |status| LoginReply {
            transit: false,
            cont: false,
            csg: csg_bits,
            nsg: 0,
            version_max: 0,
            version_active: 0,
            isid: hdr.isid,
            tsih: hdr.tsih,
            itt: hdr.itt,
            status,
            data_len: 0,
        };
        if self.core.phase != LoginPhase::InProgress {
            // The login is over: state (and the outcome) stay as they are.
            return fail(LoginStatus::INVALID_DURING_LOGIN);
        }
        let result = self.step(hdr, data, hooks, out);
        let c = &mut self.core;
        match result {
            Ok((transit, nsg, len)) => LoginReply {
                transit,
                cont: false,
                csg: csg_bits,
                nsg: if transit { nsg.to_u8() } else { 0 },
                version_max: 0,
                version_active: 0,
                isid: hdr.isid,
                tsih: if c.phase == LoginPhase::Complete {
                    c.outcome.as_ref().map_or(hdr.tsih, |o| o.tsih)
                } else {
                    hdr.tsih
                },
                itt: hdr.itt,
                status: LoginStatus::SUCCESS,
                data_len: len,
            },
            Err(status) => {
                c.phase = LoginPhase::Failed;
                c.outcome = None;
                self.pending.reset();
                fail(status)
            }
        }
    }

    fn step<H: LoginHooks>(
        &mut self,
        hdr: &LoginHeader,
        data: &[u8],
        hooks: &mut H,
        out: &mut [u8],
    ) -> Step {
        let c = &mut self.core;
        c.pdus = c.pdus.saturating_add(1);
        if c.pdus > c.config.max_login_pdus {
            return Err(LoginStatus::INITIATOR_ERROR);
        }
        if hdr.transit && hdr.cont {
            return Err(LoginStatus::INITIATOR_ERROR);
        }
        let csg = match stage_from_bits(hdr.csg) {
            Some(Stage::FullFeature) | None => return Err(LoginStatus::INITIATOR_ERROR),
            Some(s) => s,
        };
        let nsg = if hdr.transit {
            match (csg, stage_from_bits(hdr.nsg)) {
                (
                    Stage::SecurityNegotiation,
                    Some(n @ (Stage::LoginOperational | Stage::FullFeature)),
                ) => n,
                (Stage::LoginOperational, Some(Stage::FullFeature)) => Stage::FullFeature,
                _ => return Err(LoginStatus::INITIATOR_ERROR),
            }
        } else {
            csg
        };
        if !c.started {
            if hdr.version_min > 0 {
                return Err(LoginStatus::UNSUPPORTED_VERSION);
            }
            if hdr.version_max < hdr.version_min {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            c.started = true;
            c.isid = hdr.isid;
            c.tsih = hdr.tsih;
            c.cid = hdr.cid;
            c.stage = csg;
        } else if hdr.isid != c.isid || hdr.tsih != c.tsih || hdr.cid != c.cid || csg != c.stage {
            return Err(LoginStatus::INITIATOR_ERROR);
        }
        if hdr.cont {
            self.pending
                .try_extend(data, BUF)
                .map_err(|_| LoginStatus::OUT_OF_RESOURCES)?;
            return Ok((false, csg, 0));
        }
        let r = if self.pending.items().is_empty() {
            self.core.process(hdr, nsg, data, hooks, out)
        } else {
            self.pending
                .try_extend(data, BUF)
                .map_err(|_| LoginStatus::OUT_OF_RESOURCES)?;
            self.core
                .process(hdr, nsg, self.pending.items(), hooks, out)
        };
        self.pending.reset();
        r
    }
}

impl Core {
    fn first_request<H: LoginHooks>(
        &mut self,
        pairs: &[KeyValue<'_>],
        hooks: &mut H,
    ) -> Result<(), LoginStatus> {
        let mut iname = None;
        let mut tname = None;
        let mut stype = None;
        for kv in pairs {
            let key = Key::from_name(kv.key);
            if key.class() != KeyClass::Declarative {
                continue;
            }
            if self.seen & key.bit() != 0 {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            self.seen |= key.bit();
            match key {
                Key::InitiatorName => iname = Some(kv.value),
                Key::TargetName => tname = Some(kv.value),
                Key::SessionType => stype = Some(kv.value),
                _ => {
                    self.initiator_alias =
                        copy_str(kv.value).ok_or(LoginStatus::INITIATOR_ERROR)?;
                }
            }
        }
        let iname = match iname {
            Some(n) if !n.is_empty() => n,
            _ => return Err(LoginStatus::MISSING_PARAMETER),
        };
        self.initiator_name = copy_str(iname).ok_or(LoginStatus::INITIATOR_ERROR)?;
        self.session_type = match stype {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Err(LoginStatus::SESSION_TYPE_NOT_SUPPORTED),
        };
        let target = match self.session_type {
            SessionType::Normal => {
                let t = match tname {
                    Some(t) if !t.is_empty() => t,
                    _ => return Err(LoginStatus::MISSING_PARAMETER),
                };
                self.target_name = copy_str(t).ok_or(LoginStatus::NOT_FOUND)?;
                Some(t)
            }
            SessionType::Discovery => None,
        };
        self.policy = match hooks.authorize(iname, target, self.session_type) {
            Authorization::Allowed(p) => p,
            Authorization::TargetNotFound => return Err(LoginStatus::NOT_FOUND),
            Authorization::TargetRemoved => return Err(LoginStatus::TARGET_REMOVED),
            Authorization::NotAllowed => return Err(LoginStatus::AUTHORIZATION_FAILURE),
            Authorization::ServiceUnavailable => return Err(LoginStatus::SERVICE_UNAVAILABLE),
        };
        if self.tsih != 0 {
            match hooks.join_session(iname, self.isid, self.tsih, self.cid) {
                JoinDecision::Join => {}
                JoinDecision::DoesNotExist => return Err(LoginStatus::SESSION_DOES_NOT_EXIST),
                JoinDecision::CannotInclude => return Err(LoginStatus::CANT_INCLUDE_IN_SESSION),
                JoinDecision::TooManyConnections => {
                    return Err(LoginStatus::TOO_MANY_CONNECTIONS);
                }
            }
        }
        if self.stage == Stage::LoginOperational && self.policy == AuthPolicy::Chap {
            // The initiator skipped security negotiation but the target requires CHAP.
            return Err(LoginStatus::AUTHENTICATION_FAILURE);
        }
        self.authorized = true;
        Ok(())
    }

    fn target(&self) -> Option<&str> {
        match self.session_type {
            SessionType::Normal => Some(self.target_name.as_str()),
            SessionType::Discovery => None,
        }
    }

    fn process<H: LoginHooks>(
        &mut self,
        hdr: &LoginHeader,
        nsg: Stage,
        data: &[u8],
        hooks: &mut H,
        out: &mut [u8],
    ) -> Step {
        let mut kvs = [KeyValue::EMPTY; MAX_LOGIN_KEYS];
        let pairs = text::parse_pairs(data, &mut kvs).map_err(|e| match e {
            TextError::TooManyKeys => LoginStatus::OUT_OF_RESOURCES,
            _ => LoginStatus::INITIATOR_ERROR,
        })?;
        let first = !self.authorized;
        if first {
            self.first_request(pairs, hooks)?;
        }
        let mut w = TextWriter::new(out);
        if first && self.session_type == SessionType::Normal {
            write_answer(
                &mut w,
                "TargetPortalGroupTag",
                Answer::Num(u64::from(self.config.target_portal_group_tag)),
            )?;
            if !self.config.target_alias.is_empty() {
                w.push("TargetAlias", &self.config.target_alias)
                    .map_err(|_| LoginStatus::TARGET_ERROR)?;
            }
        }
        let challenge_was_sent = self.auth == Auth::ChallengeSent;
        let (mut chap_a, mut chap_n, mut chap_r, mut chap_i, mut chap_c) =
            (None, None, None, None, None);
        let mut first_burst = None;
        for kv in pairs {
            let key = Key::from_name(kv.key);
            let class = key.class();
            if class == KeyClass::Declarative && first {
                continue;
            }
            let answers_offer = class == KeyClass::Operational && self.offered & key.bit() != 0;
            if class != KeyClass::Other && !answers_offer {
                if self.seen & key.bit() != 0 {
                    return Err(LoginStatus::INITIATOR_ERROR);
                }
                self.seen |= key.bit();
            }
            match class {
                KeyClass::Declarative => {}
                KeyClass::TargetDeclarative => {
                    write_answer(&mut w, kv.key, Answer::Special(Special::Irrelevant))?;
                }
                KeyClass::FullFeatureOnly => return Err(LoginStatus::INITIATOR_ERROR),
                KeyClass::Other => {
                    write_answer(&mut w, kv.key, Answer::Special(Special::NotUnderstood))?;
                }
                KeyClass::Security => {
                    if self.stage != Stage::SecurityNegotiation {
                        return Err(LoginStatus::INITIATOR_ERROR);
                    }
                    match key {
                        Key::AuthMethod => self.auth_method(kv.value, &mut w)?,
                        Key::ChapA => chap_a = Some(kv.value),
                        Key::ChapN => chap_n = Some(kv.value),
                        Key::ChapR => chap_r = Some(kv.value),
                        Key::ChapI => chap_i = Some(kv.value),
                        _ => chap_c = Some(kv.value),
                    }
                }
                KeyClass::Operational => {
                    if self.stage != Stage::LoginOperational {
                        return Err(LoginStatus::INITIATOR_ERROR);
                    }
                    if self.tsih != 0 && key.leading_only() {
                        write_answer(&mut w, kv.key, Answer::Special(Special::Irrelevant))?;
                        continue;
                    }
                    if self.offered & key.bit() != 0 {
                        // The initiator's answer to a key the target offered.
                        self.offered &= !key.bit();
                        let mut p = self.params;
                        let a =
                            keys::negotiate(key, kv.value, &self.config, &mut p, self.session_type);
                        if !answer_matches(a, kv.value) {
                            return Err(LoginStatus::INITIATOR_ERROR);
                        }
                        self.params = p;
                        continue;
                    }
                    if key == Key::FirstBurstLength {
                        first_burst = Some(kv.value);
                        continue;
                    }
                    let a = keys::negotiate(
                        key,
                        kv.value,
                        &self.config,
                        &mut self.params,
                        self.session_type,
                    );
                    if key == Key::MaxRecvDataSegmentLength && a != Answer::Special(Special::Reject)
                    {
                        self.declared_mrdsl = true;
                    }
                    write_answer(&mut w, kv.key, a)?;
                }
            }
        }
        if let Some(v) = first_burst {
            let a = keys::negotiate(
                Key::FirstBurstLength,
                v,
                &self.config,
                &mut self.params,
                self.session_type,
            );
            write_answer(&mut w, "FirstBurstLength", a)?;
        }
        if self.stage == Stage::SecurityNegotiation {
            if let Some(a) = chap_a {
                self.chap_algorithm(a, &mut w)?;
            }
            if chap_n.is_some() || chap_r.is_some() || chap_i.is_some() || chap_c.is_some() {
                if !challenge_was_sent {
                    return Err(LoginStatus::INITIATOR_ERROR);
                }
                self.chap_verify(hooks, chap_n, chap_r, chap_i, chap_c, &mut w)?;
            }
        }
        if self.stage == Stage::LoginOperational && !self.declared_mrdsl {
            self.declared_mrdsl = true;
            self.params.max_recv_data_segment_length = self.config.max_recv_data_segment_length;
            write_answer(
                &mut w,
                "MaxRecvDataSegmentLength",
                Answer::Num(u64::from(self.config.max_recv_data_segment_length)),
            )?;
        }
        if !hdr.transit {
            return Ok((false, self.stage, w.len()));
        }
        // The initiator asks to leave the current stage.
        if self.stage == Stage::SecurityNegotiation {
            match self.auth {
                Auth::NoneChosen | Auth::Done => {}
                Auth::Start if self.policy == AuthPolicy::None => {}
                Auth::Start => return Err(LoginStatus::AUTHENTICATION_FAILURE),
                // CHAP still in progress: stay in the security stage.
                Auth::ChapChosen | Auth::ChallengeSent => return Ok((false, self.stage, w.len())),
            }
        }
        if self.stage == Stage::LoginOperational || nsg == Stage::FullFeature {
            if self.offered != 0 {
                // An offer was not answered.
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            if self.stage == Stage::LoginOperational && self.make_offers(&mut w)? {
                return Ok((false, self.stage, w.len()));
            }
        }
        let mut nsg = nsg;
        if self.stage == Stage::SecurityNegotiation
            && nsg == Stage::FullFeature
            && self.offer_list().iter().any(|o| o.2)
        {
            // The target has operational keys to offer: it answers with the lower next stage
            // (RFC 7143 section 6.3: the target may pick an NSG below the initiator's).
            nsg = Stage::LoginOperational;
        }
        if nsg == Stage::FullFeature {
            self.complete(hdr, hooks)?;
        } else {
            self.stage = nsg;
        }
        Ok((true, nsg, w.len()))
    }

    fn auth_method(&mut self, value: &str, w: &mut TextWriter<'_>) -> Result<(), LoginStatus> {
        let want = match self.policy {
            AuthPolicy::None => "None",
            AuthPolicy::Chap => "CHAP",
        };
        if !text::list_items(value).any(|v| v == want) {
            return Err(LoginStatus::AUTHENTICATION_FAILURE);
        }
        self.auth = match self.policy {
            AuthPolicy::None => Auth::NoneChosen,
            AuthPolicy::Chap => Auth::ChapChosen,
        };
        w.push("AuthMethod", want)
            .map_err(|_| LoginStatus::TARGET_ERROR)
    }

    fn chap_algorithm(&mut self, value: &str, w: &mut TextWriter<'_>) -> Result<(), LoginStatus> {
        if self.auth != Auth::ChapChosen {
            return Err(LoginStatus::INITIATOR_ERROR);
        }
        if !text::list_items(value).any(|v| text::parse_number(v) == Ok(5)) {
            return Err(LoginStatus::AUTHENTICATION_FAILURE);
        }
        let ch = self.challenge;
        (|| {
            w.push_u64("CHAP_A", u64::from(chap::CHAP_ALGORITHM_MD5))?;
            w.push_u64("CHAP_I", u64::from(ch.id))?;
            w.push_hex("CHAP_C", &ch.challenge)
        })()
        .map_err(|_| LoginStatus::TARGET_ERROR)?;
        self.auth = Auth::ChallengeSent;
        Ok(())
    }

    fn chap_verify<H: LoginHooks>(
        &mut self,
        hooks: &mut H,
        n: Option<&str>,
        r: Option<&str>,
        i: Option<&str>,
        c: Option<&str>,
        w: &mut TextWriter<'_>,
    ) -> Result<(), LoginStatus> {
        let (Some(n), Some(r)) = (n, r) else {
            return Err(LoginStatus::AUTHENTICATION_FAILURE);
        };
        let account: ChapCredentials = hooks
            .chap_account(self.target(), n)
            .ok_or(LoginStatus::AUTHENTICATION_FAILURE)?;
        if account.user() != n {
            return Err(LoginStatus::AUTHENTICATION_FAILURE);
        }
        let mut rbuf = [0u8; 16];
        let got =
            text::decode_binary(r, &mut rbuf).map_err(|_| LoginStatus::AUTHENTICATION_FAILURE)?;
        let expect = chap::chap_response(
            self.challenge.id,
            account.secret().as_bytes(),
            &self.challenge.challenge,
        );
        if !chap::ct_eq(got, &expect) {
            return Err(LoginStatus::AUTHENTICATION_FAILURE);
        }
        self.chap_user = copy_str(n).ok_or(LoginStatus::AUTHENTICATION_FAILURE)?;
        match (i, c) {
            (None, None) => {}
            (Some(i), Some(c)) => {
                let id = match text::parse_number(i) {
                    Ok(v) if v <= 255 => {
                        u8::try_from(v).map_err(|_| LoginStatus::AUTHENTICATION_FAILURE)?
                    }
                    _ => return Err(LoginStatus::AUTHENTICATION_FAILURE),
                };
                let mut cbuf = [0u8; chap::MAX_PEER_CHALLENGE_LEN];
                let peer = text::decode_binary(c, &mut cbuf)
                    .map_err(|_| LoginStatus::AUTHENTICATION_FAILURE)?;
                if peer.is_empty() || chap::ct_eq(peer, &self.challenge.challenge) {
                    // Empty or reflected challenge.
                    return Err(LoginStatus::AUTHENTICATION_FAILURE);
                }
                let mutual = hooks
                    .chap_mutual_account(self.target())
                    .ok_or(LoginStatus::AUTHENTICATION_FAILURE)?;
                if chap::ct_eq(mutual.secret().as_bytes(), account.secret().as_bytes()) {
                    return Err(LoginStatus::AUTHENTICATION_FAILURE);
                }
                let resp = chap::chap_response(id, mutual.secret().as_bytes(), peer);
                (|| {
                    w.push("CHAP_N", mutual.user())?;
                    w.push_hex("CHAP_R", &resp)
                })()
                .map_err(|_| LoginStatus::TARGET_ERROR)?;
                self.mutual = true;
            }
            _ => return Err(LoginStatus::AUTHENTICATION_FAILURE),
        }
        self.auth = Auth::Done;
        Ok(())
    }

    /// Keys the initiator did not negotiate whose RFC default the target cannot accept, with
    /// the value the target offers.
    fn offer_list(&self) -> [(Key, Answer, bool); 7] {
        let cfg = &self.config;
        let d = SessionParams::RFC_DEFAULTS;
        let normal_leading = self.session_type == SessionType::Normal && self.tsih == 0;
        let unseen = |k: Key| self.seen & k.bit() == 0;
        let list = [
            (
                Key::MaxBurstLength,
                Answer::Num(u64::from(cfg.max_burst_length)),
                normal_leading && cfg.max_burst_length < d.max_burst_length,
            ),
            (
                Key::FirstBurstLength,
                Answer::Num(u64::from(cfg.first_burst_length)),
                normal_leading
                    && cfg.first_burst_length < d.first_burst_length
                    // Relevant unless InitialR2T=Yes and ImmediateData=No (counting the
                    // ImmediateData=No offer below).
                    && (!self.params.initial_r2t
                        || (self.params.immediate_data && cfg.immediate_data)),
            ),
            (
                Key::ImmediateData,
                Answer::Str("No"),
                normal_leading && !cfg.immediate_data,
            ),
            (
                Key::DefaultTime2Wait,
                Answer::Num(u64::from(cfg.default_time2wait)),
                self.tsih == 0 && cfg.default_time2wait > d.default_time2wait,
            ),
            (
                Key::DefaultTime2Retain,
                Answer::Num(u64::from(cfg.default_time2retain)),
                self.tsih == 0 && cfg.default_time2retain < d.default_time2retain,
            ),
            (
                Key::HeaderDigest,
                Answer::Str("CRC32C"),
                !cfg.header_digests.none,
            ),
            (
                Key::DataDigest,
                Answer::Str("CRC32C"),
                !cfg.data_digests.none,
            ),
        ];
        list.map(|(k, a, wanted)| (k, a, wanted && unseen(k)))
    }

    /// Write the offers of [`Self::offer_list`]; returns whether anything was offered.
    fn make_offers(&mut self, w: &mut TextWriter<'_>) -> Result<bool, LoginStatus> {
        let mut any = false;
        for (key, ans, wanted) in self.offer_list() {
            if wanted {
                write_answer(w, key.name(), ans)?;
                self.offered |= key.bit();
                self.seen |= key.bit();
                any = true;
            }
        }
        Ok(any)
    }

    fn complete<H: LoginHooks>(
        &mut self,
        hdr: &LoginHeader,
        hooks: &mut H,
    ) -> Result<(), LoginStatus> {
        if !self.authorized {
            return Err(LoginStatus::MISSING_PARAMETER);
        }
        let new_session = self.tsih == 0;
        let tsih = if new_session {
            match hooks.allocate_tsih(&self.initiator_name, self.isid) {
                Some(t) if t != 0 => t,
                _ => return Err(LoginStatus::OUT_OF_RESOURCES),
            }
        } else {
            self.tsih
        };
        if !self.declared_mrdsl {
            // Operational stage skipped: both directions keep the default.
            self.params.max_recv_data_segment_length =
                SessionParams::RFC_DEFAULTS.max_recv_data_segment_length;
        }
        self.params.first_burst_length = self
            .params
            .first_burst_length
            .min(self.params.max_burst_length);
        self.stage = Stage::FullFeature;
        self.phase = LoginPhase::Complete;
        self.outcome = Some(LoginOutcome {
            session_type: self.session_type,
            initiator_name: self.initiator_name.clone(),
            initiator_alias: self.initiator_alias.clone(),
            target_name: self.target_name.clone(),
            isid: self.isid,
            tsih,
            new_session,
            cid: self.cid,
            cmd_sn: hdr.cmd_sn,
            exp_stat_sn: hdr.exp_stat_sn,
            params: self.params,
            chap_user: self.chap_user.clone(),
            mutual_chap: self.mutual,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
