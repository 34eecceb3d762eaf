//! `tgt-cli`: the iSCSI target daemon and its admin commands.
fn main() {}
