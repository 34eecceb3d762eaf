//! `tgt-cli`: the tgt-rs iSCSI target daemon and its admin commands.
//!
//! The library half holds what the binary and its tests share: the configuration schema
//! ([`config`]), the daemon ([`daemon`]) and the logger ([`logger`]).

pub mod config;
pub mod daemon;
pub mod logger;
