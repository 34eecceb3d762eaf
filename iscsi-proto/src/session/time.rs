//! Time as data: the crate never reads a clock.
//!
//! The runtime passes a [`Timestamp`] (milliseconds since any fixed origin it likes, e.g.
//! process start) into every `handle_*` / `poll_*` call; deadlines come back as
//! [`Timestamp`]s from `poll_timeout`.

use core::fmt;

/// A point in time, in milliseconds since an origin chosen by the runtime.
///
/// Only differences matter. Arithmetic saturates, so a deadline computed from a huge
/// timestamp never wraps into the past.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The timestamp `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + ms`, saturating at the far future.
    pub const fn add_millis(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub const fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// One optional deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timer {
    deadline: Option<Timestamp>,
}

impl Timer {
    /// Arm the timer to fire `ms` after `now`.
    pub(crate) fn set(&mut self, now: Timestamp, ms: u64) {
        self.deadline = Some(now.add_millis(ms));
    }

    /// Disarm the timer.
    pub(crate) fn stop(&mut self) {
        self.deadline = None;
    }

    /// The deadline, if armed.
    pub(crate) const fn deadline(&self) -> Option<Timestamp> {
        self.deadline
    }

    /// Whether the timer is armed and its deadline is at or before `now`.
    pub(crate) fn expired(&self, now: Timestamp) -> bool {
        matches!(self.deadline, Some(d) if d <= now)
    }
}

/// The earlier of two optional deadlines.
pub(crate) fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if x <= y { x } else { y }),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturating_arithmetic() {
        assert_eq!(Timestamp(u64::MAX - 1).add_millis(10), Timestamp(u64::MAX));
        assert_eq!(Timestamp(5).millis_since(Timestamp(9)), 0);
        assert_eq!(Timestamp(9).millis_since(Timestamp(5)), 4);
    }

    #[test]
    fn timer_fires_at_deadline() {
        let mut t = Timer::default();
        assert!(!t.expired(Timestamp(0)));
        t.set(Timestamp(100), 50);
        assert_eq!(t.deadline(), Some(Timestamp(150)));
        assert!(!t.expired(Timestamp(149)));
        assert!(t.expired(Timestamp(150)));
        t.stop();
        assert!(!t.expired(Timestamp(1000)));
    }

    #[test]
    fn earliest_of_two() {
        assert_eq!(
            earliest(Some(Timestamp(3)), Some(Timestamp(2))),
            Some(Timestamp(2))
        );
        assert_eq!(earliest(None, Some(Timestamp(2))), Some(Timestamp(2)));
        assert_eq!(earliest(Some(Timestamp(7)), None), Some(Timestamp(7)));
        assert_eq!(earliest(None, None), None);
    }
}
