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
# CONFORMANCE_STORE picks what backs the two writable LUNs (1 and 3): one kind for both, or
# KIND1+KIND3 for one each (e.g. rbd+nbd: LUN 1 on rbd, LUN 3 on nbd, one run for both):
#   file (default): sparse files in OUTDIR (bstype rdwr);
#   rbd: an image on a throwaway Ceph cluster started with scripts/ceph-test-cluster.sh
#        (needs Debian ceph-mon, ceph-osd, ceph-common, and a daemon built with
#        `--features rbd`);
#   nbd: a file served by qemu-nbd (Debian qemu-utils) on a unix socket, with
#        --discard=unmap so that UNMAP reaches the file.
# The read-only LUN 2 stays a file. Everything started here is stopped at exit.
#
# CONFORMANCE_LUN_SIZE (default: 256M for LUN 1, 64M for LUN 3) sizes the two writable LUNs.
# Sanitize.Reset expects a SANITIZE that is still running 3 and 5 seconds after it started,
# as on a real disk; that takes a LUN of several GiB here (e.g. 8G; the files are sparse
# until the SANITIZE OVERWRITE fills them, and are removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=${1:-mio}
store=${CONFORMANCE_STORE:-file}
kind1=${store%%+*}
kind3=${store#*+}
for k in "$kind1" "$kind3"; do
    case "$k" in
    file | rbd | nbd) ;;
    *)
        echo "CONFORMANCE_STORE: expected file, rbd, nbd or KIND1+KIND3, got '$store'" >&2
        exit 2
        ;;
    esac
done
if [ "$store" = file ]; then
    out=${2:-target/conformance-$runtime}
else
    out=${2:-target/conformance-$runtime-$store}
fi
shared=${SHARED_DIR:-../shared}
conf="$shared/conformance"
mkdir -p "$out"
out=$(cd "$out" && pwd)

# TGT_CLI_BIN: a daemon binary already built (CI reuses the test build); default: build release.
bin=${TGT_CLI_BIN:-}
if [ -z "$bin" ]; then
    features=()
    [ "$kind1" != rbd ] && [ "$kind3" != rbd ] || features=(--features rbd)
    cargo build --release -p tgt-cli "${features[@]}" >/dev/null
    bin=${CARGO_TARGET_DIR:-target}/release/tgt-cli
fi

# Whatever this script starts (daemon, Ceph cluster, qemu-nbd) is stopped on any exit.
pid=
nbd_pids=()
cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    if [ -d "$out/ceph" ]; then
        scripts/ceph-test-cluster.sh stop "$out/ceph" || true
    fi
    local p
    for p in "${nbd_pids[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -f "$out"/lun*.img "$out"/lun*.sock
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
iqn=iqn.2026-11.org.tgt-rs:conformance
rm -f "$out"/lun*.img "$out"/lun*.sock
size1=${CONFORMANCE_LUN_SIZE:-256M}
size3=${CONFORMANCE_LUN_SIZE:-64M}
# Sets storeN to the [[target.lun]] lines naming LUN N's store (and its size, for a file).
setup_lun() {
    local n=$1 kind=$2 size=size$1
    case "$kind" in
    file)
        printf -v "store$n" 'backing_store = "%s"\nsize = "%s"' "$out/lun$n.img" "${!size}"
        ;;
    rbd)
        if [ ! -d "$out/ceph" ]; then
            scripts/ceph-test-cluster.sh start "$out/ceph" --watch $$ >"$out/ceph.txt"
        fi
        local ceph_conf image
        ceph_conf=$(sed -n 's/^conf=//p' "$out/ceph.txt")
        image=conformance-lun$n-$$-$RANDOM
        PATH="/usr/bin:$PATH" rbd -c "$ceph_conf" create "rbd/$image" --size "${!size}"
        # The image's size is the LUN's: no size line.
        printf -v "store$n" 'bstype = "rbd"\nbacking_store = "rbd:rbd/%s:conf=%s"' \
            "$image" "$ceph_conf"
        ;;
    nbd)
        command -v qemu-nbd >/dev/null || { echo "qemu-nbd not found: apt-get install -y qemu-utils" >&2; exit 2; }
        truncate -s "${!size}" "$out/lun$n.img"
        qemu-nbd -f raw -x "lun$n" --persistent --shared=8 --discard=unmap -k "$out/lun$n.sock" \
            "$out/lun$n.img" </dev/null >"$out/qemu-nbd-$n.log" 2>&1 &
        nbd_pids+=($!)
        local _
        for _ in $(seq 100); do
            [ -S "$out/lun$n.sock" ] && break
            sleep 0.1
        done
        [ -S "$out/lun$n.sock" ] || { echo "qemu-nbd for LUN $n did not start" >&2; exit 1; }
        printf -v "store$n" 'bstype = "nbd"\nbacking_store = "nbd+unix:///lun%s?socket=%s"' \
            "$n" "$out/lun$n.sock"
        ;;
    esac
}
rm -rf "$out/ceph"
setup_lun 1 "$kind1"
setup_lun 3 "$kind3"
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
$store1
thin = true

[[target.lun]]
lun = 2
backing_store = "$out/lun2.img"
size = "64M"
readonly = true

[[target.lun]]
lun = 3
$store3
removable = true
thin = true
# 512-byte blocks in 4 KiB physical blocks (LBPPB 8): the tests that need LBPPB > 1 run here.
physical_block_size = 4096
TOML
# The read-only LUN's file must exist before start (a read-only LUN is never created).
truncate -s 64M "$out/lun2.img"

"$bin" daemon --config "$out/target.toml" --control "$out/control.sock" >"$out/daemon.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    if (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null; then break; fi
    kill -0 $pid 2>/dev/null || { echo "the daemon exited:" >&2; cat "$out/daemon.log" >&2; exit 1; }
    sleep 0.1
done

url=iscsi://127.0.0.1:$port/$iqn
"$conf/run-libiscsi.sh" "$out/thin" "$url/1" "$url/1" | tail -1
SUITE_TESTS=SCSI.ReadOnly "$conf/run-libiscsi.sh" "$out/readonly" "$url/2" | tail -1
"$conf/run-libiscsi.sh" "$out/removable" "$url/3" | tail -1

kill -TERM $pid
wait $pid && echo "daemon exited 0 on SIGTERM" || echo "daemon exit status $?"
pid=
cleanup
trap - EXIT
echo "merged ($runtime, $store store):"
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
