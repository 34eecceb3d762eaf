//! PERSISTENT RESERVE IN/OUT, RESERVE/RELEASE (6)/(10) and the reservation check every
//! command passes (see [`crate::pr`] for the model).

use super::*;
use crate::out::Out;
use crate::pr::*;

/// Largest PERSISTENT RESERVE OUT parameter list accepted (basic list, TransportID list).
const PROUT_MAX: u32 = 24 + 4 + 8192;

impl<const TASKS: usize, const NEXUS: usize> LogicalUnit<TASKS, NEXUS> {
    /// [`Self::add_nexus`] with the nexus' identity for persistent reservations: the
    /// initiator port name (the iSCSI initiator name and ISID as a TransportID names them:
    /// `"iqn.example:host,i,0x00023d000001"`) and the relative target port it came through.
    /// Registrations are kept per (initiator port, target port), so a session that logs in
    /// again with the same name and ISID finds its registrations. Calling it for a known
    /// nexus updates its identity. An empty name means "unknown" (a synthetic per-nexus
    /// name is used).
    pub fn add_nexus_with_port(
        &mut self,
        id: NexusId,
        initiator_port: &[u8],
        relative_target_port: u16,
    ) -> Result<(), NexusError> {
        self.add_nexus(id)?;
        if let Some(n) = self.nexus_index(id).and_then(|k| self.nexus[k].as_mut()) {
            n.port = if initiator_port.is_empty() {
                PortName::synthetic(id)
            } else {
                PortName::new(initiator_port)
            };
            n.rtp = relative_target_port;
            if n.fresh
                && self
                    .cold_reset_by
                    .is_some_and(|c| c.as_bytes().eq_ignore_ascii_case(n.port.device_name()))
            {
                n.remove_ua(Asc::POWER_ON_RESET);
                self.cold_reset_by = None;
            }
        }
        Ok(())
    }

    fn nexus_port(&self, id: NexusId) -> (PortName, u16) {
        match self.nexus_index(id).and_then(|k| self.nexus[k].as_ref()) {
            Some(n) => (n.port, n.rtp),
            None => (PortName::synthetic(id), self.cfg.relative_port),
        }
    }

    /// The PR generation (incremented by every registration change).
    pub fn pr_generation(&self) -> u32 {
        self.pr.generation
    }

    /// Number of persistent reservation registrations.
    pub fn pr_registrations(&self) -> usize {
        self.pr.count()
    }

    /// The persistent reservation type, if the LU is reserved.
    pub fn pr_reservation(&self) -> Option<PrType> {
        self.pr.res.map(|r| r.ty)
    }

    /// The nexus holding a RESERVE (6)/(10) reservation.
    pub fn legacy_reservation(&self) -> Option<NexusId> {
        self.legacy
    }

    /// Whether the persistent reservation state changed since the last
    /// [`Self::take_pr_changed`], without clearing it.
    pub fn pr_changed(&self) -> bool {
        self.pr.changed
    }

    /// Whether the persistent reservation state changed since the last call. With APTPL the
    /// runtime then saves [`Self::export_pr`] (and restores it with [`Self::import_pr`] at
    /// start).
    pub fn take_pr_changed(&mut self) -> bool {
        core::mem::replace(&mut self.pr.changed, false)
    }

    /// Write the persistent reservation state to `buf` as a compact image and return its
    /// full length (when longer than `buf`, call again with a buffer that large). Without
    /// APTPL the image holds no registrations (nothing persists through power loss).
    pub fn export_pr(&self, buf: &mut [u8]) -> usize {
        let mut o = Out::new(buf);
        o.bytes(&IMAGE_MAGIC);
        let aptpl = self.pr.aptpl;
        o.u8(u8::from(aptpl));
        o.u32(self.pr.generation);
        let mut holder = 0xFFu8;
        let mut rank = 0u8;
        let mut count = 0u8;
        if aptpl {
            for (k, r) in self.pr.regs.iter().enumerate() {
                if r.is_some() {
                    if self.pr.res.is_some_and(|res| res.holder == k) {
                        holder = rank;
                    }
                    rank = rank.saturating_add(1);
                    count = count.saturating_add(1);
                }
            }
        }
        let ty = match self.pr.res {
            Some(r) if aptpl => r.ty.code(),
            _ => 0,
        };
        o.u8(if ty == 0 { 0xFF } else { holder });
        o.u8(ty);
        o.u8(count);
        if aptpl {
            for r in self.pr.regs.iter().flatten() {
                o.u64(r.key);
                o.u16(r.rtp);
                o.u8(u8::from(r.all_tg_pt));
                let name = r.port.as_bytes();
                o.u8(name.len() as u8);
                o.bytes(name);
            }
        }
        o.pos()
    }

    /// Restore the persistent reservation state from an [`Self::export_pr`] image (call it
    /// before the first command). The image is checked completely before anything changes.
    pub fn import_pr(&mut self, img: &[u8]) -> Result<(), PrImageError> {
        let get = |at: usize, n: usize| img.get(at..at + n).ok_or(PrImageError::Truncated);
        if get(0, 4)? != IMAGE_MAGIC {
            return Err(PrImageError::BadFormat);
        }
        let h = get(4, 8)?;
        let aptpl = h[0] & 1 != 0;
        let generation = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        let (holder, ty, count) = (h[5], h[6], usize::from(h[7]));
        if count > NEXUS {
            return Err(PrImageError::TooManyRegistrations);
        }
        let mut st: PrState<NEXUS> = PrState::new();
        st.aptpl = aptpl;
        st.generation = generation;
        let mut p = 12usize;
        for slot in st.regs.iter_mut().take(count) {
            let d = get(p, 12)?;
            let key = u64_at(d, 0);
            let rtp = u16::from_be_bytes([d[8], d[9]]);
            let all = d[10] & 1 != 0;
            let n = usize::from(d[11]);
            if n == 0 || n > PORT_NAME_MAX {
                return Err(PrImageError::Truncated);
            }
            let name = get(p + 12, n)?;
            *slot = Some(Registration {
                port: PortName::new(name),
                rtp,
                all_tg_pt: all,
                key,
            });
            p += 12 + n;
        }
        if ty != 0 {
            let ty = PrType::from_code(ty).ok_or(PrImageError::Truncated)?;
            if usize::from(holder) >= count {
                return Err(PrImageError::Truncated);
            }
            st.res = Some(Reservation {
                holder: usize::from(holder),
                ty,
            });
        }
        self.pr = st;
        Ok(())
    }

    /// Whether `t` conflicts with a reservation held through another I_T nexus.
    pub(super) fn reservation_conflict(&self, t: &Task) -> bool {
        let c = t.cdb;
        let id = t.id.nexus;
        if let Some(h) = self.legacy {
            if h != id {
                let ok = matches!(
                    c.opcode(),
                    op::INQUIRY
                        | op::REPORT_LUNS
                        | op::REQUEST_SENSE
                        | op::RELEASE_6
                        | op::RELEASE_10
                        | op::PERSISTENT_RESERVE_IN
                        | op::MAINTENANCE_IN
                );
                if !ok {
                    return true;
                }
            }
        }
        let Some(res) = self.pr.res else {
            return false;
        };
        let (port, rtp) = self.nexus_port(id);
        let reg = self.pr.find(&port, rtp);
        let holder = reg.is_some_and(|k| self.pr.is_holder(k));
        pr_conflict(res.ty, reg.is_some(), holder, access_class(&c))
    }

    pub(super) fn conflict(&self, i: usize) -> Pend {
        let expected = self.tasks[i].as_ref().map_or(0, |t| t.expected);
        Pend::Complete {
            status: ScsiStatus::ReservationConflict,
            sense: None,
            residual: Residual::between(expected, 0),
        }
    }

    fn task_nexus(&self, i: usize) -> NexusId {
        self.tasks[i].as_ref().map_or(NexusId(0), |t| t.id.nexus)
    }

    /// RESERVE (6)/(10).
    pub(super) fn reserve_legacy(&mut self, i: usize, c: Cdb) -> Step {
        let ten = c.opcode() == op::RESERVE_10;
        // Third-party and extent reservations are not supported.
        if (ten && c.b(1) & 0x12 != 0) || (!ten && c.b(1) & 0x11 != 0) {
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        let id = self.task_nexus(i);
        if self.pr.res.is_some() {
            // SPC-4 5.13.3 (CRH = 1): a persistent reservation holder's RESERVE succeeds
            // without effect; anyone else conflicts.
            let (port, rtp) = self.nexus_port(id);
            let holder = self
                .pr
                .find(&port, rtp)
                .is_some_and(|k| self.pr.is_holder(k));
            return Ok(if holder {
                self.good(i)
            } else {
                self.conflict(i)
            });
        }
        match self.legacy {
            Some(h) if h != id => Ok(self.conflict(i)),
            _ => {
                self.legacy = Some(id);
                Ok(self.good(i))
            }
        }
    }

    /// RELEASE (6)/(10): releases the nexus' own reservation; from others it is a no-op.
    pub(super) fn release_legacy(&mut self, i: usize, c: Cdb) -> Step {
        let ten = c.opcode() == op::RELEASE_10;
        if (ten && c.b(1) & 0x12 != 0) || (!ten && c.b(1) & 0x11 != 0) {
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        let id = self.task_nexus(i);
        if self.pr.res.is_some() {
            let (port, rtp) = self.nexus_port(id);
            let holder = self
                .pr
                .find(&port, rtp)
                .is_some_and(|k| self.pr.is_holder(k));
            return Ok(if holder {
                self.good(i)
            } else {
                self.conflict(i)
            });
        }
        if self.legacy == Some(id) {
            self.legacy = None;
        }
        Ok(self.good(i))
    }

    /// PERSISTENT RESERVE IN: checks, then the emulated Data-In.
    pub(super) fn prin_start(&mut self, i: usize, c: Cdb) -> Step {
        if c.b(1) & 0x1F > 3 {
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        self.data_in(i, c, u32::from(c.u16(7)))
    }

    pub(super) fn emit_prin(&self, c: Cdb, o: &mut Out<'_>) {
        let pr = &self.pr;
        match c.b(1) & 0x1F {
            0 => {
                o.u32(pr.generation);
                o.u32((pr.count() * 8) as u32);
                for r in pr.regs.iter().flatten() {
                    o.u64(r.key);
                }
            }
            1 => {
                o.u32(pr.generation);
                match pr.res {
                    Some(res) => {
                        o.u32(16);
                        let key = if res.ty.all_registrants() {
                            0
                        } else {
                            pr.regs
                                .get(res.holder)
                                .and_then(|r| r.as_ref())
                                .map_or(0, |r| r.key)
                        };
                        o.u64(key);
                        o.u32(0);
                        o.u8(0);
                        o.u8(res.ty.code());
                        o.u16(0);
                    }
                    None => o.u32(0),
                }
            }
            2 => {
                o.u16(8);
                // CRH, SIP_C, ATP_C, PTPL_C.
                o.u8(0x1D);
                // TMV, ALLOW COMMANDS 001b, PTPL_A.
                o.u8(0x90 | u8::from(pr.aptpl));
                // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; EX_AC_AR.
                o.u8(0xEA);
                o.u8(0x01);
                o.u16(0);
            }
            _ => {
                o.u32(pr.generation);
                let len: usize = pr
                    .regs
                    .iter()
                    .flatten()
                    .map(|r| 24 + transport_id_len(&r.port))
                    .sum();
                o.u32(u32::try_from(len).unwrap_or(u32::MAX));
                for (k, r) in pr.regs.iter().enumerate() {
                    let Some(r) = r else { continue };
                    let holder = pr.is_holder(k);
                    o.u64(r.key);
                    o.u32(0);
                    o.u8(if r.all_tg_pt { 0x02 } else { 0 } | u8::from(holder));
                    o.u8(match (holder, pr.res) {
                        (true, Some(res)) => res.ty.code(),
                        _ => 0,
                    });
                    o.u32(0);
                    o.u16(if r.all_tg_pt { 0 } else { r.rtp });
                    o.u32(transport_id_len(&r.port) as u32);
                    emit_transport_id(&r.port, o);
                }
            }
        }
    }

    /// PERSISTENT RESERVE OUT: CDB checks, then ask for the parameter list.
    pub(super) fn prout_start(&mut self, i: usize, c: Cdb) -> Step {
        let sa = c.b(1) & 0x1F;
        if sa > 7 {
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        if matches!(sa, 1 | 2 | 4 | 5) {
            if c.b(2) >> 4 != 0 {
                return Err(Sense::invalid_cdb(2, Some(7)));
            }
            if PrType::from_code(c.b(2) & 0x0F).is_none() {
                return Err(Sense::invalid_cdb(2, Some(3)));
            }
        }
        let len = c.u32(5);
        if !(24..=PROUT_MAX).contains(&len) {
            return Err(plle());
        }
        self.want_data_out(i, len)?;
        Ok(Pend::DataOut(len))
    }

    /// Queue `asc` for every nexus covered by a registration, but `except`.
    fn ua_registrants(&mut self, except: NexusId, asc: Asc) {
        let regs = &self.pr.regs;
        for n in self.nexus.iter_mut().flatten() {
            if n.id != except && regs.iter().flatten().any(|r| r.covers_port(&n.port, n.rtp)) {
                n.push_ua(asc);
            }
        }
    }

    /// Queue `asc` for the nexuses covered by one registration (but `except`); mark them in
    /// `hit` (indices of the nexus table).
    fn ua_registration(&mut self, r: Registration, except: NexusId, asc: Asc, hit: &mut [bool]) {
        for (k, n) in self.nexus.iter_mut().enumerate() {
            let Some(n) = n else { continue };
            if n.id != except && r.covers_port(&n.port, n.rtp) {
                n.push_ua(asc);
                if let Some(h) = hit.get_mut(k) {
                    *h = true;
                }
            }
        }
    }

    pub(super) fn prout_data(&mut self, i: usize, t: Task, data: &[u8]) -> Step {
        let c = t.cdb;
        let sa = c.b(1) & 0x1F;
        let id = t.id.nexus;
        let (port, rtp) = self.nexus_port(id);
        let reg = self.pr.find(&port, rtp);
        if sa == 7 {
            return self.register_and_move(i, id, data, reg, port, rtp);
        }
        let flags = data.get(20).copied().unwrap_or(0);
        let p = ProutParams {
            key: u64_at(data, 0),
            sa_key: u64_at(data, 8),
            spec_i_pt: flags & 0x08 != 0,
            all_tg_pt: flags & 0x04 != 0,
            aptpl: flags & 0x01 != 0,
        };
        if p.spec_i_pt {
            if sa != 0 {
                return Err(Sense::invalid_param(20, Some(3)));
            }
            if data.len() < 28 {
                return Err(plle());
            }
        } else if data.len() != 24 {
            return Err(plle());
        }
        let ty = PrType::from_code(c.b(2) & 0x0F).unwrap_or(PrType::WriteExclusive);
        match sa {
            0 | 6 => self.register(i, id, port, rtp, reg, p, sa == 6, data),
            _ => {
                let Some(k) = reg else {
                    return Ok(self.conflict(i));
                };
                if self.pr.regs[k].is_some_and(|r| r.key != p.key) {
                    return Ok(self.conflict(i));
                }
                match sa {
                    1 => self.pr_reserve(i, k, ty),
                    2 => self.pr_release(i, id, k, ty),
                    3 => {
                        self.ua_registrants(id, Asc::RESERVATIONS_PREEMPTED);
                        self.pr.regs = [None; NEXUS];
                        self.pr.res = None;
                        self.pr.bump();
                        Ok(self.good(i))
                    }
                    _ => self.preempt(i, id, k, ty, p.sa_key, sa == 5),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        i: usize,
        id: NexusId,
        port: PortName,
        rtp: u16,
        reg: Option<usize>,
        p: ProutParams,
        ignore: bool,
        data: &[u8],
    ) -> Step {
        if let Some(k) = reg {
            let Some(r) = self.pr.regs[k] else {
                return Ok(self.conflict(i));
            };
            if !ignore && r.key != p.key {
                return Ok(self.conflict(i));
            }
            if p.spec_i_pt {
                return Err(Sense::invalid_param(20, Some(3)));
            }
            if p.sa_key == 0 {
                if let Some(ty) = self.pr.remove(k) {
                    if matches!(
                        ty,
                        PrType::WriteExclusiveRegistrantsOnly
                            | PrType::ExclusiveAccessRegistrantsOnly
                    ) {
                        self.ua_registrants(id, Asc::RESERVATIONS_RELEASED);
                    }
                }
            } else if let Some(r) = self.pr.regs[k].as_mut() {
                r.key = p.sa_key;
            }
            self.pr.aptpl = p.aptpl;
            self.pr.bump();
            return Ok(self.good(i));
        }
        if !ignore && p.key != 0 {
            return Ok(self.conflict(i));
        }
        if p.sa_key == 0 {
            return Ok(self.good(i));
        }
        if p.spec_i_pt && ignore {
            return Err(Sense::invalid_param(20, Some(3)));
        }
        // Validate the TransportID list completely and count the new registrations.
        let mut needed = 1usize;
        let tids: &[u8] = if p.spec_i_pt {
            let len = u32::from_be_bytes([data[24], data[25], data[26], data[27]]) as usize;
            match data.get(28..28usize.saturating_add(len)) {
                Some(d) => d,
                None => return Err(plle()),
            }
        } else {
            &[]
        };
        let mut off = 0usize;
        while off < tids.len() {
            let Ok((name, n)) = parse_transport_id(&tids[off..]) else {
                return Err(Sense::invalid_param((28 + off) as u16, None));
            };
            if self.pr.find(&name, rtp).is_some() {
                return Err(Sense::invalid_param((28 + off) as u16, None));
            }
            if !name.as_bytes().eq_ignore_ascii_case(port.as_bytes()) {
                needed += 1;
            }
            off += n;
        }
        let free = self.pr.regs.iter().filter(|r| r.is_none()).count();
        if needed > free {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                Asc::INSUFFICIENT_REGISTRATION_RESOURCES,
            ));
        }
        let insert = |name: PortName, pr: &mut PrState<NEXUS>| {
            if let Some(s) = pr.regs.iter_mut().find(|r| r.is_none()) {
                *s = Some(Registration {
                    port: name,
                    rtp,
                    all_tg_pt: p.all_tg_pt,
                    key: p.sa_key,
                });
            }
        };
        insert(port, &mut self.pr);
        let mut off = 0usize;
        while off < tids.len() {
            let Ok((name, n)) = parse_transport_id(&tids[off..]) else {
                break;
            };
            if !name.as_bytes().eq_ignore_ascii_case(port.as_bytes()) {
                insert(name, &mut self.pr);
            }
            off += n;
        }
        self.pr.aptpl = p.aptpl;
        self.pr.bump();
        Ok(self.good(i))
    }

    fn pr_reserve(&mut self, i: usize, k: usize, ty: PrType) -> Step {
        match self.pr.res {
            Some(r) => Ok(if self.pr.is_holder(k) && r.ty == ty {
                self.good(i)
            } else {
                self.conflict(i)
            }),
            None => {
                self.pr.res = Some(Reservation { holder: k, ty });
                self.pr.changed = true;
                Ok(self.good(i))
            }
        }
    }

    fn pr_release(&mut self, i: usize, id: NexusId, k: usize, ty: PrType) -> Step {
        let Some(r) = self.pr.res else {
            return Ok(self.good(i));
        };
        if !self.pr.is_holder(k) {
            return Ok(self.good(i));
        }
        if r.ty != ty {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                Asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
            ));
        }
        self.pr.res = None;
        self.pr.changed = true;
        if r.ty.registrants_access() {
            self.ua_registrants(id, Asc::RESERVATIONS_RELEASED);
        }
        Ok(self.good(i))
    }

    /// Remove every registration with `key` but `keep`; returns how many went.
    fn remove_by_key(&mut self, key: u64, keep: usize, id: NexusId, hit: &mut [bool]) -> usize {
        let mut n = 0;
        for j in 0..NEXUS {
            if j == keep {
                continue;
            }
            let Some(r) = self.pr.regs[j] else { continue };
            if r.key != key {
                continue;
            }
            self.ua_registration(r, id, Asc::REGISTRATIONS_PREEMPTED, hit);
            self.pr.remove(j);
            n += 1;
        }
        n
    }

    fn preempt(
        &mut self,
        i: usize,
        id: NexusId,
        k: usize,
        ty: PrType,
        sa_key: u64,
        abort: bool,
    ) -> Step {
        let mut hit = [false; NEXUS];
        match self.pr.res {
            None => {
                if sa_key == 0 {
                    return Err(Sense::invalid_param(8, None));
                }
                if self.remove_by_key(sa_key, k, id, &mut hit) == 0 {
                    return Ok(self.conflict(i));
                }
            }
            Some(r) if r.ty.all_registrants() => {
                if sa_key == 0 {
                    for j in 0..NEXUS {
                        if j == k {
                            continue;
                        }
                        if let Some(reg) = self.pr.regs[j] {
                            self.ua_registration(reg, id, Asc::REGISTRATIONS_PREEMPTED, &mut hit);
                            self.pr.regs[j] = None;
                        }
                    }
                    self.pr.res = Some(Reservation { holder: k, ty });
                } else if self.remove_by_key(sa_key, k, id, &mut hit) == 0 {
                    return Ok(self.conflict(i));
                }
            }
            Some(r) => {
                let holder_key = self.pr.regs[r.holder].map_or(0, |h| h.key);
                if self.pr.regs[r.holder].is_some() && sa_key == holder_key {
                    self.remove_by_key(sa_key, k, id, &mut hit);
                    if r.ty != ty {
                        // Registrants that stay lose the old reservation.
                        let mut n = hit;
                        self.ua_registrants_marked(id, Asc::RESERVATIONS_RELEASED, &mut n);
                    }
                    self.pr.res = Some(Reservation { holder: k, ty });
                } else {
                    if sa_key == 0 {
                        return Err(Sense::invalid_param(8, None));
                    }
                    if self.remove_by_key(sa_key, k, id, &mut hit) == 0 {
                        return Ok(self.conflict(i));
                    }
                }
            }
        }
        self.pr.bump();
        if abort {
            self.abort_preempted(i, &hit);
        }
        Ok(self.good(i))
    }

    /// RESERVATIONS RELEASED for registrants not already marked in `done`.
    fn ua_registrants_marked(&mut self, except: NexusId, asc: Asc, done: &mut [bool]) {
        let regs = &self.pr.regs;
        for (k, n) in self.nexus.iter_mut().enumerate() {
            let Some(n) = n else { continue };
            if n.id == except || done.get(k).copied().unwrap_or(false) {
                continue;
            }
            if regs.iter().flatten().any(|r| r.covers_port(&n.port, n.rtp)) {
                n.push_ua(asc);
            }
        }
    }

    /// PREEMPT AND ABORT: tasks of the preempted nexuses that have not started yet end with
    /// TASK ABORTED (tasks already running finish normally).
    fn abort_preempted(&mut self, me: usize, hit: &[bool]) {
        let ids: [Option<NexusId>; NEXUS] = core::array::from_fn(|k| {
            if hit.get(k).copied().unwrap_or(false) {
                self.nexus[k].as_ref().map(|n| n.id)
            } else {
                None
            }
        });
        for j in 0..TASKS {
            if j == me {
                continue;
            }
            let Some(t) = self.tasks[j] else { continue };
            if t.phase != Phase::Queued || !ids.contains(&Some(t.id.nexus)) {
                continue;
            }
            let p = Pend::Complete {
                status: ScsiStatus::TaskAborted,
                sense: None,
                residual: Residual::between(t.expected, 0),
            };
            self.set_pend(j, p);
        }
    }

    fn register_and_move(
        &mut self,
        i: usize,
        id: NexusId,
        data: &[u8],
        reg: Option<usize>,
        port: PortName,
        rtp: u16,
    ) -> Step {
        let key = u64_at(data, 0);
        let sa_key = u64_at(data, 8);
        let unreg = data[17] & 0x02 != 0;
        let aptpl = data[17] & 0x01 != 0;
        let dest_rtp = u16::from_be_bytes([data[18], data[19]]);
        let tid_len = u32::from_be_bytes([data[20], data[21], data[22], data[23]]) as usize;
        let Some(tid) = data.get(24..24usize.saturating_add(tid_len)) else {
            return Err(plle());
        };
        let Some(k) = reg else {
            return Ok(self.conflict(i));
        };
        if self.pr.regs[k].is_none_or(|r| r.key != key) {
            return Ok(self.conflict(i));
        }
        let Some(res) = self.pr.res else {
            return Ok(self.conflict(i));
        };
        if !self.pr.is_holder(k) || res.ty.all_registrants() {
            return Ok(self.conflict(i));
        }
        if sa_key == 0 {
            return Err(Sense::invalid_param(8, None));
        }
        let Ok((name, _)) = parse_transport_id(tid) else {
            return Err(Sense::invalid_param(24, None));
        };
        if name.as_bytes().eq_ignore_ascii_case(port.as_bytes()) && dest_rtp == rtp {
            return Err(Sense::invalid_param(24, None));
        }
        let dest = match self.pr.find(&name, dest_rtp) {
            Some(d) => d,
            None => match self.pr.regs.iter().position(|r| r.is_none()) {
                Some(d) => d,
                None => {
                    return Err(Sense::new(
                        SenseKey::IllegalRequest,
                        Asc::INSUFFICIENT_REGISTRATION_RESOURCES,
                    ));
                }
            },
        };
        let all = self.pr.regs[dest].is_some_and(|r| r.all_tg_pt);
        self.pr.regs[dest] = Some(Registration {
            port: name,
            rtp: dest_rtp,
            all_tg_pt: all,
            key: sa_key,
        });
        self.pr.res = Some(Reservation {
            holder: dest,
            ty: res.ty,
        });
        if unreg {
            self.pr.regs[k] = None;
        }
        let _ = id;
        self.pr.aptpl = aptpl;
        self.pr.bump();
        Ok(self.good(i))
    }
}
