//! # scsi-core
//!
//! SCSI SPC/SBC logical unit emulation as a sans-IO, `no_std`, allocation-free state machine.
#![no_std]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    clippy::std_instead_of_core,
    clippy::alloc_instead_of_core
)]

#[cfg(feature = "std")]
extern crate std;
