#!/usr/bin/env bash
# End-to-end benchmark of this daemon (mio and threads runtimes) against tgt on the same
# machine with the same clients (libiscsi's iscsi-perf and benches' iscsi-load).
#
#   scripts/bench-vs-tgt.sh [--secs 5] [--rounds 2] [--store rdwr|aio] [--only SUBSTR]
#                           [--runtimes mio,threads] [--markdown FILE]
#
# Needs: apt-get install -y tgt libiscsi-bin; runs as root (tgtd). TGT_CLI_BIN / ISCSI_LOAD_BIN
# reuse binaries already built; by default both are built in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
daemon=${TGT_CLI_BIN:-}
load=${ISCSI_LOAD_BIN:-}
if [ -z "$daemon" ]; then
    cargo build --release -p tgt-cli >/dev/null
    daemon=$target/release/tgt-cli
fi
if [ -z "$load" ]; then
    cargo build --release -p benches --bin iscsi-load >/dev/null
    load=$target/release/iscsi-load
fi
exec python3 scripts/bench_vs_tgt.py --daemon "$daemon" --load "$load" "$@"
