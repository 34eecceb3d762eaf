#!/usr/bin/env bash
# The daemon's memory, side by side with tgt: resident set size (VmRSS) idle with one target
# and one LUN, then holding 100 and 1,000 idle sessions (each logged in, unit attentions
# cleared, capacity read, then silent but answering NOP-In pings), and under a 4 KiB random
# read load (4 sessions x QD16). Each figure is taken from a fresh daemon.
#
#   scripts/bench-memory.sh [--rounds N] [--no-tgt] [--targets ours-mio,ours-threads,tgt]
#
# Prints one line per target and case, then a markdown table. Needs tgtd (Debian tgt) for
# the comparison; builds tgt-cli and iscsi-load in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=1
with_tgt=1
only=
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --no-tgt) with_tgt=0; shift ;;
    --targets) only=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--no-tgt] [--targets LIST]" >&2; exit 2 ;;
    esac
done
command -v tgtd >/dev/null || with_tgt=0
cargo build -q --release -p tgt-cli -p benches
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d /var/tmp/bench-memory.XXXXXX)
daemon_pid=
cleanup() {
    [ -n "$daemon_pid" ] && kill -KILL "$daemon_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
iqn=iqn.2026-11.org.tgt-rs:memory
# tgtd's control channel (-C): one of our own, so another tgtd on the machine is no obstacle.
tgt_ctl=$((1000 + $$ % 60000))
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
wait_port() {
    for _ in $(seq 100); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

start_ours() { # runtime port
    truncate -s 1G "$work/lun.img"
    cat >"$work/ours.toml" <<TOML
[daemon]
listen = ["127.0.0.1:$2"]
runtime = "$1"

[[target]]
tid = 1
name = "$iqn"
initiators = ["ALL"]

[[target.lun]]
lun = 1
backing_store = "$work/lun.img"
thin = true

[limits]
max_connections_per_portal = 2048
max_connections_per_initiator = 2048
max_sessions_per_target = 1024
TOML
    "$bin/tgt-cli" daemon --config "$work/ours.toml" --control "$work/c.sock" \
        >"$work/ours.log" 2>&1 &
    daemon_pid=$!
}

start_tgt() { # port
    truncate -s 1G "$work/lun.img"
    tgtd -f -C "$tgt_ctl" --iscsi "portal=127.0.0.1:$1" >"$work/tgtd.log" 2>&1 &
    daemon_pid=$!
    wait_port "$1"
    tgtadm -C "$tgt_ctl" --lld iscsi --mode target --op new --tid 1 --targetname "$iqn"
    tgtadm -C "$tgt_ctl" --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 -b "$work/lun.img"
    tgtadm -C "$tgt_ctl" --lld iscsi --mode target --op bind --tid 1 -I ALL
}

# measure NAME CASE: prints "NAME CASE rss_kib delta_kib per_session_kib"
measure() {
    local name=$1 case=$2 port sessions=0 args=()
    port=$(free_port)
    case $name in
    tgt) start_tgt "$port" ;;
    *) start_ours "${name#ours-}" "$port" ;;
    esac
    wait_port "$port"
    sleep 0.5
    local base now
    base=$(rss "$daemon_pid")
    case $case in
    idle) now=$base ;;
    sessions-*)
        sessions=${case#sessions-}
        "$bin/iscsi-load" --portal "127.0.0.1:$port" --target "$iqn" --sessions "$sessions" \
            --idle --secs 8 >"$work/load.out" 2>&1 &
        local lp=$!
        for _ in $(seq 200); do
            grep -q logged-in "$work/load.out" && break
            sleep 0.2
        done
        grep -q logged-in "$work/load.out" || { cat "$work/load.out" >&2; return 1; }
        sleep 1
        now=$(rss "$daemon_pid")
        wait "$lp"
        ;;
    load)
        "$bin/iscsi-load" --portal "127.0.0.1:$port" --target "$iqn" --sessions 4 --qd 16 \
            --secs 6 >"$work/load.out" 2>&1 &
        local lp=$!
        sleep 4
        now=$(rss "$daemon_pid")
        wait "$lp"
        ;;
    esac
    # tgtd does not exit on SIGTERM while it has targets.
    if [ "$name" = tgt ]; then kill -KILL "$daemon_pid"; else kill "$daemon_pid"; fi
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=
    local per=-
    [ "$sessions" -gt 0 ] && per=$(((now - base) / sessions))
    echo "$name $case $now $((now - base)) $per"
}

targets=(ours-mio ours-threads)
[ "$with_tgt" = 1 ] && targets+=(tgt)
[ -n "$only" ] && IFS=, read -r -a targets <<<"$only"
results=$work/results
: >"$results"
for _ in $(seq "$rounds"); do
    for t in "${targets[@]}"; do
        for c in idle sessions-100 sessions-1000 load; do
            measure "$t" "$c" | tee -a "$results"
        done
    done
done
echo
echo "| target | idle RSS | 100 idle sessions | 1,000 idle sessions | per idle session | 4x QD16 randread |"
echo "|---|---|---|---|---|---|"
for t in "${targets[@]}"; do
    python3 - "$results" "$t" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.split()[0] == sys.argv[2]]
def best(case, col):
    v = [int(r[col]) for r in rows if r[1] == case and r[col] != "-"]
    return min(v) if v else None
mib = lambda k: f"{k / 1024:.1f} MiB"
i, s100, s1k, per, load = best("idle", 2), best("sessions-100", 2), best("sessions-1000", 2), best("sessions-1000", 4), best("load", 2)
print(f"| {sys.argv[2]} | {mib(i)} | {mib(s100)} | {mib(s1k)} | {per} KiB | {mib(load)} |")
PY
done
