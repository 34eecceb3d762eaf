//! Reservations: persistent reservations (PERSISTENT RESERVE IN/OUT, SPC-4 5.13 and 6.15/6.16)
//! and the older RESERVE/RELEASE (6)/(10) of SPC-2, with the conflict rules every other
//! command is checked against.
//!
//! Registrations belong to I_T nexuses, identified by their initiator port (the iSCSI
//! TransportID `"iqn...,i,0x<ISID>"`) and relative target port, so they survive session loss,
//! logout and resets: the runtime tells the LU a nexus' port with
//! [`crate::LogicalUnit::add_nexus_with_port`]. A nexus registered without a port name gets
//! a synthetic one (`"nexus-<id>"`).
//!
//! With APTPL set the runtime keeps the state across restarts: after commands, when
//! [`crate::LogicalUnit::take_pr_changed`] says so, save
//! [`crate::LogicalUnit::export_pr`]'s image, and feed it back at start with
//! [`crate::LogicalUnit::import_pr`].

use core::fmt;

use crate::cdb::{Cdb, op};
use crate::sense::{Asc, Sense, SenseKey};

/// Longest initiator port name kept (an iSCSI name of up to 223 bytes, ",i,0x" and 12 hex
/// digits of ISID).
pub const PORT_NAME_MAX: usize = 240;

/// An initiator port name in a fixed buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PortName {
    buf: [u8; PORT_NAME_MAX],
    len: u8,
}

impl fmt::Debug for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.as_bytes() {
            write!(f, "{}", char::from(b))?;
        }
        Ok(())
    }
}

impl PortName {
    /// An empty name.
    pub const EMPTY: PortName = PortName {
        buf: [0; PORT_NAME_MAX],
        len: 0,
    };

    /// A name from bytes (truncated to [`PORT_NAME_MAX`]; a NUL ends it).
    pub fn new(name: &[u8]) -> PortName {
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        let n = end.min(PORT_NAME_MAX);
        let mut p = PortName::EMPTY;
        p.buf[..n].copy_from_slice(&name[..n]);
        p.len = n as u8;
        p
    }

    /// The synthetic name of a nexus registered without a port name.
    pub fn synthetic(id: crate::types::NexusId) -> PortName {
        let mut b = *b"nexus-00000000";
        for k in 0..8 {
            let d = ((id.0 >> (28 - 4 * k)) & 0xF) as u8;
            b[6 + k] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        }
        PortName::new(&b)
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The initiator device name: the port name without its `,i,0x<ISID>` part.
    pub fn device_name(&self) -> &[u8] {
        let b = self.as_bytes();
        match find(b, b",i,0x") {
            Some(k) => &b[..k],
            None => b,
        }
    }

    /// Whether the name carries an ISID (",i,0x" form).
    fn has_isid(&self) -> bool {
        find(self.as_bytes(), b",i,0x").is_some()
    }

    /// Whether a registration made for `self` covers the port `port`: the same name (ASCII
    /// case-insensitive), or `self` is a bare iSCSI name and `port` is that name with an ISID.
    fn covers(&self, port: &PortName) -> bool {
        let a = self.as_bytes();
        let b = port.as_bytes();
        if a.eq_ignore_ascii_case(b) {
            return true;
        }
        !self.has_isid()
            && b.len() > a.len()
            && b[..a.len()].eq_ignore_ascii_case(a)
            && b[a.len()..].starts_with(b",i,0x")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// Persistent reservation types (SPC-4 table 170).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrType {
    /// Write Exclusive.
    WriteExclusive,
    /// Exclusive Access.
    ExclusiveAccess,
    /// Write Exclusive – Registrants Only.
    WriteExclusiveRegistrantsOnly,
    /// Exclusive Access – Registrants Only.
    ExclusiveAccessRegistrantsOnly,
    /// Write Exclusive – All Registrants.
    WriteExclusiveAllRegistrants,
    /// Exclusive Access – All Registrants.
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    /// The type from the TYPE field.
    pub const fn from_code(c: u8) -> Option<PrType> {
        Some(match c {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }
    /// The TYPE field value.
    pub const fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 1,
            PrType::ExclusiveAccess => 3,
            PrType::WriteExclusiveRegistrantsOnly => 5,
            PrType::ExclusiveAccessRegistrantsOnly => 6,
            PrType::WriteExclusiveAllRegistrants => 7,
            PrType::ExclusiveAccessAllRegistrants => 8,
        }
    }
    /// Every registrant is a reservation holder.
    pub const fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }
    /// Registered I_T nexuses have full access (registrants-only and all-registrants types).
    pub(crate) const fn registrants_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }
    /// Reads by others conflict too.
    const fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// One registration: an I_T nexus (initiator port, target port) and its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registration {
    pub(crate) port: PortName,
    pub(crate) rtp: u16,
    pub(crate) all_tg_pt: bool,
    pub(crate) key: u64,
}

impl Registration {
    pub(crate) fn covers_port(&self, port: &PortName, rtp: u16) -> bool {
        self.port.covers(port) && (self.all_tg_pt || self.rtp == rtp)
    }
}

/// The persistent reservation: its holder (a registration slot; any registrant for the
/// all-registrants types) and type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub(crate) holder: usize,
    pub(crate) ty: PrType,
}

/// Persistent reservation state of one LU with room for `R` registrations.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PrState<const R: usize> {
    pub(crate) regs: [Option<Registration>; R],
    pub(crate) generation: u32,
    pub(crate) res: Option<Reservation>,
    pub(crate) aptpl: bool,
    pub(crate) changed: bool,
}

impl<const R: usize> PrState<R> {
    pub(crate) const fn new() -> Self {
        PrState {
            regs: [None; R],
            generation: 0,
            res: None,
            aptpl: false,
            changed: false,
        }
    }

    pub(crate) fn find(&self, port: &PortName, rtp: u16) -> Option<usize> {
        self.regs
            .iter()
            .position(|r| r.is_some_and(|r| r.covers_port(port, rtp)))
    }

    pub(crate) fn count(&self) -> usize {
        self.regs.iter().flatten().count()
    }

    /// Whether the registration in slot `k` holds the reservation.
    pub(crate) fn is_holder(&self, k: usize) -> bool {
        match self.res {
            Some(r) if r.ty.all_registrants() => self.regs.get(k).is_some_and(|r| r.is_some()),
            Some(r) => r.holder == k,
            None => false,
        }
    }

    /// Remove the registration in slot `k`, releasing a reservation it held. Returns the
    /// released reservation's type when the removal released it.
    pub(crate) fn remove(&mut self, k: usize) -> Option<PrType> {
        if let Some(s) = self.regs.get_mut(k) {
            *s = None;
        }
        let res = self.res?;
        let released = if res.ty.all_registrants() {
            self.count() == 0
        } else {
            res.holder == k
        };
        if released {
            self.res = None;
            Some(res.ty)
        } else {
            None
        }
    }

    pub(crate) fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.changed = true;
    }
}

/// How a command is treated while a reservation exists (SPC-4 tables 62/63, SBC-3 table 13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Never conflicts.
    Allowed,
    /// Reads the medium: conflicts under the exclusive-access types.
    Read,
    /// Modifies the medium or the LU's state: conflicts under every type.
    Write,
}

pub(crate) fn access_class(c: &Cdb) -> Access {
    match c.opcode() {
        op::INQUIRY
        | op::REPORT_LUNS
        | op::REQUEST_SENSE
        | op::TEST_UNIT_READY
        | op::READ_CAPACITY_10
        | op::PERSISTENT_RESERVE_IN
        | op::PERSISTENT_RESERVE_OUT
        | op::MAINTENANCE_IN
        | op::RESERVE_6
        | op::RELEASE_6
        | op::RESERVE_10
        | op::RELEASE_10 => Access::Allowed,
        op::SERVICE_ACTION_IN_16 if c.b(1) & 0x1F == op::SA_READ_CAPACITY_16 => Access::Allowed,
        // PREVENT ALLOW with PREVENT = 0 and START STOP UNIT starting without loading.
        op::PREVENT_ALLOW if c.b(4) & 0x03 == 0 => Access::Allowed,
        op::START_STOP_UNIT if c.b(4) & 0xF3 == 0x01 => Access::Allowed,
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::PRE_FETCH_10
        | op::PRE_FETCH_16
        | op::SERVICE_ACTION_IN_16
        | op::READ_DEFECT_DATA_10
        | op::READ_DEFECT_DATA_12 => Access::Read,
        _ => Access::Write,
    }
}

/// Whether a nexus (`registered`: its registration slot; `holder`: it holds the
/// reservation) may run a command of class `a` under reservation `res`.
pub(crate) fn pr_conflict(res: PrType, registered: bool, holder: bool, a: Access) -> bool {
    if holder || a == Access::Allowed {
        return false;
    }
    if registered && res.registrants_access() {
        return false;
    }
    match a {
        Access::Allowed => false,
        Access::Read => res.exclusive_access(),
        Access::Write => true,
    }
}

/// A parsed iSCSI TransportID (SPC-4 7.6.4.6).
pub(crate) fn parse_transport_id(d: &[u8]) -> Result<(PortName, usize), ()> {
    if d.len() < 4 {
        return Err(());
    }
    let format = d[0] >> 6;
    if d[0] & 0x0F != 0x05 || format > 1 {
        return Err(());
    }
    let add = usize::from(u16::from_be_bytes([d[2], d[3]]));
    let total = 4usize.checked_add(add).ok_or(())?;
    if add < 4 || add % 4 != 0 || total > d.len() {
        return Err(());
    }
    let body = &d[4..total];
    let end = body.iter().position(|b| *b == 0).ok_or(())?;
    if end == 0 || end > PORT_NAME_MAX {
        return Err(());
    }
    let name = PortName::new(&body[..end]);
    if (format == 1) != name.has_isid() {
        return Err(());
    }
    Ok((name, total))
}

/// The TransportID of a port name, as READ FULL STATUS reports it.
pub(crate) fn emit_transport_id(name: &PortName, o: &mut crate::out::Out<'_>) {
    let n = name.as_bytes().len();
    let padded = (n + 1).div_ceil(4) * 4;
    o.u8(if name.has_isid() { 0x45 } else { 0x05 });
    o.u8(0);
    o.u16(padded as u16);
    o.bytes(name.as_bytes());
    o.zeros(padded - n);
}

pub(crate) fn transport_id_len(name: &PortName) -> usize {
    4 + (name.as_bytes().len() + 1).div_ceil(4) * 4
}

/// The parsed basic PERSISTENT RESERVE OUT parameter list.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProutParams {
    pub(crate) key: u64,
    pub(crate) sa_key: u64,
    pub(crate) spec_i_pt: bool,
    pub(crate) all_tg_pt: bool,
    pub(crate) aptpl: bool,
}

pub(crate) fn u64_at(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = d.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_be_bytes(b)
}

pub(crate) fn plle() -> Sense {
    Sense::new(SenseKey::IllegalRequest, Asc::PARAMETER_LIST_LENGTH_ERROR)
}

/// Errors of [`crate::LogicalUnit::import_pr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrImageError {
    /// Not an image of this format (magic or version).
    BadFormat,
    /// The image ends early or a field is out of range.
    Truncated,
    /// More registrations than the LU has room for.
    TooManyRegistrations,
}

impl fmt::Display for PrImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrImageError::BadFormat => "not a persistent reservation image",
            PrImageError::Truncated => "persistent reservation image truncated or corrupt",
            PrImageError::TooManyRegistrations => "more registrations than the LU can hold",
        })
    }
}

impl core::error::Error for PrImageError {}

/// Magic and version of the APTPL image.
pub(crate) const IMAGE_MAGIC: [u8; 4] = *b"PRS1";
