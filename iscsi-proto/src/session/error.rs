//! Errors of the connection state machine.

use core::fmt;

/// Why a connection ended (carried by [`Event::Closed`](super::Event::Closed) and
/// [`ConnError::Closed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The initiator logged out (the Logout Response was sent).
    LoggedOut,
    /// The login failed (the failure Login Response was sent).
    LoginFailed,
    /// The login did not complete in time.
    LoginTimeout,
    /// The initiator did not answer a NOP-In ping in time.
    PingTimeout,
    /// The initiator did not log out in time after an Asynchronous Message asked it to.
    LogoutTimeout,
    /// A header digest error (RFC 7143 section 7.8; ErrorRecoveryLevel 0 cannot recover).
    HeaderDigest,
    /// A protocol error that cannot be answered with a Reject (e.g. a malformed BHS during
    /// login, a Login Request in full feature phase).
    ProtocolError,
    /// The runtime closed the connection ([`Connection::close`](super::Connection::close)).
    Local,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::LoggedOut => "logged out",
            CloseReason::LoginFailed => "login failed",
            CloseReason::LoginTimeout => "login timed out",
            CloseReason::PingTimeout => "NOP-In ping timed out",
            CloseReason::LogoutTimeout => "initiator did not log out in time",
            CloseReason::HeaderDigest => "header digest error",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::Local => "closed locally",
        })
    }
}

/// An error from [`Connection::handle_input`](super::Connection::handle_input): the
/// connection is finished and the runtime should close the socket (after draining
/// `poll_transmit` and `poll_event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnError {
    /// The connection is closed, for this reason.
    Closed(CloseReason),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Closed(r) => write!(f, "connection closed: {r}"),
        }
    }
}

impl core::error::Error for ConnError {}

/// An error from a mutator that names a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskError {
    /// The handle does not name a live task (it finished, was aborted, or failed and its
    /// slot was reused).
    Stale,
    /// The task is already finishing (status given, aborted, or failed): nothing more can
    /// be queued for it.
    Closing,
    /// The range lies outside the command's expected transfer length, or goes backwards.
    OutOfRange,
    /// A different range is still pending; queue the next one once it has been sent (or
    /// make it contiguous with the pending one).
    Busy,
    /// Sense data longer than [`MAX_SENSE_LEN`](super::MAX_SENSE_LEN).
    SenseTooLong,
    /// The command has no data in that direction.
    WrongDirection,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskError::Stale => "stale task handle",
            TaskError::Closing => "task is already finishing",
            TaskError::OutOfRange => "range outside the expected transfer length",
            TaskError::Busy => "another range is pending for this task",
            TaskError::SenseTooLong => "sense data too long",
            TaskError::WrongDirection => "command has no data in that direction",
        })
    }
}

impl core::error::Error for TaskError {}

/// The buffer given to [`Connection::poll_transmit`](super::Connection::poll_transmit) is
/// too small for the next PDU; nothing was dequeued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferTooSmall {
    /// Bytes the next PDU needs.
    pub required: usize,
}

impl fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "transmit buffer too small: {} bytes required",
            self.required
        )
    }
}

impl core::error::Error for BufferTooSmall {}

/// A mutator that does not name a task was called at the wrong time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateError {
    /// Nothing is waiting for this answer (no such Task Management or Logout request).
    NotPending,
    /// The connection is not in full feature phase (still logging in, or closed).
    NotFullFeature,
    /// The output queue is full; drain `poll_transmit` first.
    QueueFull,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateError::NotPending => "no such request is pending",
            StateError::NotFullFeature => "connection is not in full feature phase",
            StateError::QueueFull => "output queue full",
        })
    }
}

impl core::error::Error for StateError {}
