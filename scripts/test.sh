#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run calls it too).
# Unit, property and integration tests of every crate, doc tests included. Integration tests
# that need libiscsi's tools (Debian package libiscsi-bin) start the daemon on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
cargo test --workspace --doc
# The library examples, each serving a target on a free port and checked with libiscsi.
cargo run -q -p runtime-threads --example memdisk -- --self-test
cargo run -q -p runtime-mio --example multi_lun -- --self-test
cargo run -q -p iscsi-target --example sans_io >/dev/null
