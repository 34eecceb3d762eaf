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
//! - [`session`]: the connection and session state machines for the full feature phase.
//!
//! Nothing here performs I/O or reads a clock: the runtime feeds bytes and time in, and
//! drains PDUs, events and timeouts out.
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
pub mod text;
pub mod wire;
