//! `tgt-cli`: the tgt-rs iSCSI target daemon and its admin commands.
//!
//! The library half holds what the binary and its tests share: the configuration schema
//! ([`config`]), the daemon ([`daemon`]), its control socket ([`control`]), the admin
//! commands that talk to it ([`admin`]) and the logger ([`logger`]).

pub mod admin;
pub mod config;
pub mod control;
pub mod daemon;
pub mod limits;
pub mod logger;
