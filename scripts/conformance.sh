#!/usr/bin/env bash
# Runs libiscsi's conformance suite (../shared/conformance) against this target, the way
# ../shared/conformance/README.md lays it out: one target with three LUNs
#   LUN 1: thin, writable (whole suite; reached twice for the MultipathIO tests)
#   LUN 2: read-only      (SCSI.ReadOnly only)
#   LUN 3: removable, thin, 4 KiB physical blocks (whole suite)
# and prints the merged summary; the last line is passed=N failed=N notimpl=N skipped=N total=N.
#
#   scripts/conformance.sh [mio|threads] [OUTDIR]
#
# CONFORMANCE_LUN_SIZE (default: 256M for LUN 1, 64M for LUN 3) sizes the two writable LUNs.
# Sanitize.Reset expects a SANITIZE that is still running 3 and 5 seconds after it started,
# as on a real disk; that takes a LUN of several GiB here (e.g. 8G; the files are sparse
# until the SANITIZE OVERWRITE fills them, and are removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=${1:-mio}
out=${2:-target/conformance-$runtime}
shared=${SHARED_DIR:-../shared}
conf="$shared/conformance"
mkdir -p "$out"
out=$(cd "$out" && pwd)

# TGT_CLI_BIN: a daemon binary already built (CI reuses the test build); default: build release.
bin=${TGT_CLI_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release -p tgt-cli >/dev/null
    bin=${CARGO_TARGET_DIR:-target}/release/tgt-cli
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
iqn=iqn.2026-11.org.tgt-rs:conformance
rm -f "$out"/lun*.img
cat >"$out/target.toml" <<TOML
[daemon]
listen = ["127.0.0.1:$port"]
runtime = "$runtime"
reactors = 2

[[target]]
tid = 1
name = "$iqn"
initiators = ["ALL"]

[[target.lun]]
lun = 1
backing_store = "$out/lun1.img"
size = "${CONFORMANCE_LUN_SIZE:-256M}"
thin = true

[[target.lun]]
lun = 2
backing_store = "$out/lun2.img"
size = "64M"
readonly = true

[[target.lun]]
lun = 3
backing_store = "$out/lun3.img"
size = "${CONFORMANCE_LUN_SIZE:-64M}"
removable = true
thin = true
# 512-byte blocks in 4 KiB physical blocks (LBPPB 8): the tests that need LBPPB > 1 run here.
physical_block_size = 4096
TOML
# The read-only LUN's file must exist before start (a read-only LUN is never created).
truncate -s 64M "$out/lun2.img"

"$bin" daemon --config "$out/target.toml" --control "$out/control.sock" >"$out/daemon.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    if (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null; then break; fi
    sleep 0.1
done

url=iscsi://127.0.0.1:$port/$iqn
"$conf/run-libiscsi.sh" "$out/thin" "$url/1" "$url/1" | tail -1
SUITE_TESTS=SCSI.ReadOnly "$conf/run-libiscsi.sh" "$out/readonly" "$url/2" | tail -1
"$conf/run-libiscsi.sh" "$out/removable" "$url/3" | tail -1

kill -TERM $pid
wait $pid && echo "daemon exited 0 on SIGTERM" || echo "daemon exit status $?"
trap - EXIT
rm -f "$out"/lun*.img
echo "merged ($runtime):"
python3 "$conf/summarize.py" "$out/thin/suite.log" "$out/readonly/suite.log" "$out/removable/suite.log" \
    | tee "$out/summary.txt"
if grep -q ' total=0$' "$out/summary.txt"; then
    echo "conformance ($runtime): the suite did not run completely (see $out/daemon.log)" >&2
    exit 1
fi
# With KNOWN_FAILURES=FILE: fail when a test fails that the file does not list.
if [ -n "${KNOWN_FAILURES:-}" ]; then
    new=$(grep '^fail ' "$out/summary.txt" | awk '{print $2}' | sed 's/:$//' \
        | grep -vxF -f <(grep -v '^#' "$KNOWN_FAILURES" | awk '{print $1}') || true)
    if [ -n "$new" ]; then
        echo "conformance ($runtime): unexpected failures:" >&2
        echo "$new" >&2
        exit 1
    fi
fi
