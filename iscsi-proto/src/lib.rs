//! # iscsi-proto
//!
//! A sans-IO, `no_std`, allocation-free implementation of the iSCSI protocol (RFC 7143),
//! target side.
//!
//! Layers, bottom up:
//! - [`wire`]: a checked view over the 48-byte Basic Header Segment and a validated repr per
//!   PDU (`parse` / `emit` / `buffer_len`), AHS, and framing ([`wire::pdu_len`]);
//! - [`digest`]: CRC32C header and data digests (table-driven; hardware with `std`);
//! - [`serial`]: RFC 1982 serial number arithmetic for CmdSN / StatSN / DataSN;
//! - [`text`]: `key=value\0` text segments parsed into caller-provided arrays;
//! - [`login`]: login stages, operational negotiation (RFC 7143 section 13) and CHAP;
//! - [`session`]: the connection and session state machines for the full feature phase;
//! - [`storage`]: the buffers those machines keep (fixed-capacity by default; a runtime may
//!   plug in heap-backed ones that hold memory only while in use).
//!
//! Nothing here performs I/O or reads a clock: the runtime feeds bytes and time in, and
//! drains PDUs, events and timeouts out.
//!
//! ## Call order
//!
//! A target runtime owns one [`session::Connection`] per TCP connection and loops:
//! `handle_input(now, bytes, hooks)` (one PDU per call; write payloads come back as
//! [`session::Ingress::Data`] to copy into the task's buffer) → `poll_event()` (log-in done,
//! SCSI commands, task management, logout) → its answers through the mutators
//! (`send_data_in`, `request_data_out`, `respond`, ...) → `poll_transmit(now, hdr)` until
//! `None`, sending each header followed by the task data it names → `poll_timeout()` /
//! `handle_timeout(now)`. The login phase asks the runtime's [`login::LoginHooks`] for
//! policy (which targets exist, CHAP accounts, session identifiers). The [`session`] module
//! documents each step; `iscsi-target/examples/sans_io.rs` in the repository runs the
//! whole loop (with scsi-core executing the commands) over in-memory pipes.
//!
//! ## Features
//!
//! - `std`: `std::error::Error` impls and the hardware CRC32C path.
//! - `initiator`: `session::initiator`, a minimal heap-free iSCSI *initiator* (login text,
//!   SCSI commands, Data-Out, NOP-Out, task management, logout; it tracks CmdSN and
//!   ExpStatSN). It is what this workspace's own tests use against a real target, and is
//!   meant for other projects' integration tests:
//!   `iscsi-proto = { version = "0.1", features = ["initiator"] }` under
//!   `[dev-dependencies]`, then write its PDUs to a `TcpStream` and feed what comes back to
//!   `Initiator::receive`.
#![no_std]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    clippy::std_instead_of_core,
    clippy::alloc_instead_of_core
)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(feature = "std")]
extern crate std;

pub mod digest;
pub mod login;
pub mod serial;
pub mod session;
pub mod storage;
pub mod text;
pub mod wire;
