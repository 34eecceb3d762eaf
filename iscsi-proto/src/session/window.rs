//! The session-wide command window (RFC 7143 section 4.2.2.1).
//!
//! The target advertises `[ExpCmdSN, MaxCmdSN]` in every response. Non-immediate commands
//! must carry a CmdSN inside that window; the target silently ignores (drops) any
//! non-immediate command outside it and any duplicate inside it. Immediate commands are not
//! subject to the window (their CmdSN is not advanced).
//!
//! [`CmdWindow`] keeps the window sized so that at most `depth` non-immediate commands are
//! ever outstanding: `MaxCmdSN = ExpCmdSN - 1 + depth - retained`, where `retained` counts
//! the commands below ExpCmdSN that have not completed yet. A command arriving in order
//! moves ExpCmdSN and `retained` up together, so MaxCmdSN never decreases; completing a
//! command ([`CmdWindow::retire`]) opens one more slot. Commands that arrive ahead of
//! ExpCmdSN but inside the window (possible with several connections, or after a rejected
//! command left a gap) are remembered in a bitmap and ExpCmdSN jumps over them once the gap
//! is filled.
//!
//! The window is session state, separate from any connection, so a multi-connection session
//! shares one.

use crate::serial::Serial;

/// The largest queue depth a [`CmdWindow`] supports (the width of its bitmap).
pub const MAX_QUEUE_DEPTH: u32 = 128;

/// What to do with an incoming command, by its CmdSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdSnCheck {
    /// Inside the window and not seen before (or an immediate command): execute it.
    Accept,
    /// A non-immediate command already received (CmdSN below ExpCmdSN, or a repeat inside
    /// the window): drop it silently.
    Duplicate,
    /// A non-immediate command beyond MaxCmdSN: drop it silently.
    OutOfWindow,
}

/// The CmdSN window of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdWindow {
    exp: Serial,
    depth: u32,
    retained: u32,
    /// Bit `i`: CmdSN `exp + i` has been received (bit 0 is always clear between calls).
    ahead_rx: u128,
    /// Bit `i`: the command with CmdSN `exp + i` has already completed.
    ahead_done: u128,
}

impl CmdWindow {
    /// A window starting at `exp_cmd_sn` (the CmdSN of the leading login request) that
    /// admits `depth` outstanding non-immediate commands (clamped to
    /// `1..=`[`MAX_QUEUE_DEPTH`]).
    pub fn new(exp_cmd_sn: u32, depth: u32) -> CmdWindow {
        CmdWindow {
            exp: Serial(exp_cmd_sn),
            depth: depth.clamp(1, MAX_QUEUE_DEPTH),
            retained: 0,
            ahead_rx: 0,
            ahead_done: 0,
        }
    }

    /// The queue depth this window admits.
    pub const fn depth(&self) -> u32 {
        self.depth
    }

    /// ExpCmdSN: the next CmdSN the target expects.
    pub const fn exp_cmd_sn(&self) -> u32 {
        self.exp.0
    }

    /// MaxCmdSN: the largest CmdSN the initiator may send now. When every slot is taken
    /// this is `ExpCmdSN - 1`, which closes the window.
    pub const fn max_cmd_sn(&self) -> u32 {
        let free = self.depth.saturating_sub(self.retained);
        self.exp.0.wrapping_add(free).wrapping_sub(1)
    }

    /// Non-immediate commands received and not yet retired.
    pub const fn outstanding(&self) -> u32 {
        self.retained + self.ahead_pending()
    }

    const fn ahead_pending(&self) -> u32 {
        (self.ahead_rx & !self.ahead_done).count_ones()
    }

    /// Classify a command without changing the window.
    pub fn check(&self, cmd_sn: u32, immediate: bool) -> CmdSnCheck {
        if immediate {
            return CmdSnCheck::Accept;
        }
        let d = self.exp.distance_to(Serial(cmd_sn));
        if d >= 1 << 31 {
            // Behind ExpCmdSN (serially): already received.
            return CmdSnCheck::Duplicate;
        }
        let free = self.depth.saturating_sub(self.retained);
        if d >= free {
            return CmdSnCheck::OutOfWindow;
        }
        // d < free <= 128, so the shift is in range.
        if self.ahead_rx & (1u128 << d) != 0 {
            CmdSnCheck::Duplicate
        } else {
            CmdSnCheck::Accept
        }
    }

    /// Classify a command and, when it is accepted and non-immediate, record it (advancing
    /// ExpCmdSN over every command now received in order).
    pub fn receive(&mut self, cmd_sn: u32, immediate: bool) -> CmdSnCheck {
        let verdict = self.check(cmd_sn, immediate);
        if verdict != CmdSnCheck::Accept || immediate {
            return verdict;
        }
        let d = self.exp.distance_to(Serial(cmd_sn));
        self.ahead_rx |= 1u128 << d;
        while self.ahead_rx & 1 != 0 {
            let done = self.ahead_done & 1 != 0;
            self.ahead_rx >>= 1;
            self.ahead_done >>= 1;
            self.exp = self.exp.wrapping_add(1);
            if !done {
                self.retained += 1;
            }
        }
        verdict
    }

    /// A non-immediate command with `cmd_sn` completed: its slot in the window opens.
    pub fn retire(&mut self, cmd_sn: u32) {
        let d = self.exp.distance_to(Serial(cmd_sn));
        if d < MAX_QUEUE_DEPTH && self.ahead_rx & (1u128 << d) != 0 {
            self.ahead_done |= 1u128 << d;
        } else {
            self.retained = self.retained.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_commands_keep_max_cmd_sn_and_retire_opens_it() {
        let mut w = CmdWindow::new(10, 4);
        assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (10, 13));
        assert_eq!(w.receive(10, false), CmdSnCheck::Accept);
        assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (11, 13));
        for sn in 11..=13 {
            assert_eq!(w.receive(sn, false), CmdSnCheck::Accept);
        }
        // Window closed: MaxCmdSN = ExpCmdSN - 1.
        assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (14, 13));
        assert_eq!(w.receive(14, false), CmdSnCheck::OutOfWindow);
        w.retire(11);
        assert_eq!(w.max_cmd_sn(), 14);
        assert_eq!(w.receive(14, false), CmdSnCheck::Accept);
        assert_eq!(w.outstanding(), 4);
    }

    #[test]
    fn duplicates_and_old_commands_are_dropped() {
        let mut w = CmdWindow::new(1, 8);
        assert_eq!(w.receive(1, false), CmdSnCheck::Accept);
        assert_eq!(w.receive(1, false), CmdSnCheck::Duplicate);
        assert_eq!(w.receive(0, false), CmdSnCheck::Duplicate);
        assert_eq!(w.receive(0x8000_0000, false), CmdSnCheck::OutOfWindow);
        // Ahead inside the window, then a repeat of it.
        assert_eq!(w.receive(4, false), CmdSnCheck::Accept);
        assert_eq!(w.exp_cmd_sn(), 2);
        assert_eq!(w.receive(4, false), CmdSnCheck::Duplicate);
        assert_eq!(w.receive(9, false), CmdSnCheck::OutOfWindow);
    }

    #[test]
    fn immediate_commands_bypass_the_window() {
        let mut w = CmdWindow::new(5, 2);
        assert_eq!(w.receive(5, true), CmdSnCheck::Accept);
        assert_eq!(w.receive(1000, true), CmdSnCheck::Accept);
        assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (5, 6));
    }

    #[test]
    fn gap_fill_jumps_exp_cmd_sn() {
        let mut w = CmdWindow::new(100, 8);
        assert_eq!(w.receive(102, false), CmdSnCheck::Accept);
        assert_eq!(w.receive(101, false), CmdSnCheck::Accept);
        assert_eq!(w.exp_cmd_sn(), 100);
        // 101 completes while still ahead of ExpCmdSN.
        w.retire(101);
        assert_eq!(w.max_cmd_sn(), 107);
        assert_eq!(w.receive(100, false), CmdSnCheck::Accept);
        assert_eq!(w.exp_cmd_sn(), 103);
        // 100 and 102 are retained, 101 already completed.
        assert_eq!(w.outstanding(), 2);
        assert_eq!(w.max_cmd_sn(), 103 + 6 - 1);
    }

    #[test]
    fn wraps_around_zero() {
        let mut w = CmdWindow::new(u32::MAX, 4);
        assert_eq!(w.max_cmd_sn(), 2);
        assert_eq!(w.receive(u32::MAX, false), CmdSnCheck::Accept);
        assert_eq!(w.receive(0, false), CmdSnCheck::Accept);
        assert_eq!(w.exp_cmd_sn(), 1);
        assert_eq!(w.receive(3, false), CmdSnCheck::OutOfWindow);
        assert_eq!(w.receive(2, false), CmdSnCheck::Accept);
    }

    #[test]
    fn depth_is_clamped() {
        assert_eq!(CmdWindow::new(0, 0).depth(), 1);
        assert_eq!(CmdWindow::new(0, 100_000).depth(), MAX_QUEUE_DEPTH);
    }

    proptest::proptest! {
        /// Against any sequence of arrivals and completions: MaxCmdSN never moves back,
        /// outstanding commands never exceed the depth, and every accepted CmdSN was inside
        /// the advertised window.
        #[test]
        fn window_invariants(
            start in proptest::prelude::any::<u32>(),
            depth in 1u32..16,
            ops in proptest::collection::vec((0u8..3, 0u32..24), 0..200),
        ) {
            let mut w = CmdWindow::new(start, depth);
            let mut live: [Option<u32>; 64] = [None; 64];
            for (kind, arg) in ops {
                let before_max = w.max_cmd_sn();
                match kind {
                    0 | 1 => {
                        let sn = w.exp_cmd_sn().wrapping_add(arg);
                        let inside = Serial(sn).in_window(
                            Serial(w.exp_cmd_sn()), Serial(w.max_cmd_sn()));
                        if w.receive(sn, false) == CmdSnCheck::Accept {
                            proptest::prop_assert!(inside);
                            if let Some(slot) = live.iter_mut().find(|s| s.is_none()) {
                                *slot = Some(sn);
                            }
                        }
                    }
                    _ => {
                        let i = arg as usize % live.len();
                        if let Some(sn) = live[i].take() {
                            w.retire(sn);
                        }
                    }
                }
                proptest::prop_assert!(!Serial(w.max_cmd_sn()).lt(Serial(before_max)));
                proptest::prop_assert!(w.outstanding() <= w.depth());
                let live_count = live.iter().filter(|s| s.is_some()).count() as u32;
                proptest::prop_assert_eq!(w.outstanding(), live_count);
            }
        }
    }
}
