#!/usr/bin/env bash
# A throwaway single-node Ceph cluster on 127.0.0.1 for the rbd tests.
#
#   scripts/ceph-test-cluster.sh start DIR [--osds N] [--watch PID]
#   scripts/ceph-test-cluster.sh stop DIR
#
# `start` creates DIR (it must not exist or be empty), starts one ceph-mon and N (default 1,
# at most 9) memstore ceph-osds (no ceph-mgr, no systemd: the daemons run in the foreground
# in the background of this script, their PIDs kept in DIR/pids), creates the replicated
# pool `rbd` (size N, min_size N - N/2, i.e. 1 of 1, 2 of 3: one OSD of three may die
# without stopping I/O; initialised for rbd) and one image with a unique name, then prints
# on stdout:
#
#   conf=DIR/ceph.conf
#   pool=rbd
#   image=NAME
#   size=BYTES
#   osd_pids=PID0,PID1,...     (osd.0's PID first; for a test that kill -9s one)
#
# DIR/pids has one `NAME PID` line per process: `watch PID`, `mon PID`, `osd.I PID`.
# With several OSDs, failure detection is tuned for tests: an OSD whose peers cannot reach
# it is marked down after about 4 s (one reporter suffices), and a kill -9'd one at once
# (its peers see connection refused).
#
# Clients use the conf file (it names the client.admin keyring; cephx is on). With
# `--watch PID` a small watcher stops the cluster and removes DIR once process PID is gone,
# so a test process that dies still cleans up.
#
# `stop` kills the daemons (and the watcher) by the PIDs recorded in DIR/pids and removes DIR.
#
# Installs nothing: needs Debian's ceph-mon, ceph-osd and ceph-common (ceph, rbd,
# ceph-authtool, monmaptool). Ports: CEPH_TEST_PORT (v2; v1 is the next one) or a free pair
# found from 20000 up. The image size is RBD_TEST_IMAGE_SIZE (default 64M).
set -euo pipefail

die() {
    echo "ceph-test-cluster: $*" >&2
    exit 1
}

usage() {
    die "usage: $0 start DIR [--osds N] [--watch PID] | stop DIR"
}

# Ceph's Python tools must run under the system interpreter.
export PATH="/usr/bin:/bin:/usr/sbin:/sbin:$PATH"
unset PYTHONPATH PYTHONHOME

port_free() {
    # Free when nothing accepts a connection on it.
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_ports() {
    if [ -n "${CEPH_TEST_PORT:-}" ]; then
        echo "$CEPH_TEST_PORT"
        return
    fi
    local p=$((20000 + (RANDOM % 2000) * 2))
    local tries=0
    while [ $tries -lt 200 ]; do
        if port_free "$p" && port_free $((p + 1)); then
            echo "$p"
            return
        fi
        p=$((p + 2))
        tries=$((tries + 1))
    done
    die "no free port pair found"
}

# Whether PID is still one of the processes of the cluster in DIR: its command line names
# DIR (the daemons' `-c DIR/ceph.conf`, the watcher's arguments). A process that exited
# (an OSD a test killed, a daemon that stopped on TERM) may have left its PID to an
# unrelated process by now (PIDs wrap quickly on a busy machine): never signal that one.
ours() {
    local pid=$1 dir=$2 cmd
    # Never signal ourselves (the watcher execs this stop).
    [ -n "$pid" ] && [ "$pid" != $$ ] || return 1
    cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ $cmd == *"$dir"* ]]
}

stop_cluster() {
    local dir=$1
    [ -d "$dir" ] || return 0
    if [ -f "$dir/pids" ]; then
        local pid
        # Watcher first (it would otherwise run stop itself), then the daemons.
        while read -r _name pid; do
            if ours "$pid" "$dir"; then kill -TERM "$pid" 2>/dev/null || true; fi
        done <"$dir/pids"
        # Wait up to 3 s (a memstore OSD has nothing worth a clean stop), then KILL.
        local i
        for i in $(seq 1 15); do
            local alive=0
            while read -r _name pid; do
                if ours "$pid" "$dir"; then alive=1; fi
            done <"$dir/pids"
            [ $alive -eq 1 ] || break
            sleep 0.2
        done
        while read -r _name pid; do
            if ours "$pid" "$dir"; then kill -KILL "$pid" 2>/dev/null || true; fi
        done <"$dir/pids"
    fi
    rm -rf "$dir"
}

on_start_exit() {
    if [ "${START_OK:-0}" != 1 ]; then
        echo "ceph-test-cluster: start failed; last log lines:" >&2
        tail -n 20 "$START_DIR"/log/*.log "$START_DIR"/log/*.out >&2 2>/dev/null || true
        stop_cluster "$START_DIR"
    fi
}

ceph_cmd() {
    timeout 30 ceph -c "$CONF" --connect-timeout 10 "$@"
}

start_cluster() {
    local dir=$1 watch=${2:-} osds=${3:-1}
    case "$osds" in [1-9]) ;; *) die "--osds: expected 1 to 9, got '$osds'" ;; esac
    for tool in ceph-mon ceph-osd ceph rbd ceph-authtool monmaptool; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install ceph-mon ceph-osd ceph-common)"
    done
    if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
        die "$dir exists and is not empty"
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    CONF="$dir/ceph.conf"
    : >"$dir/pids"
    # From here on any failure (a failed command or `die`) tears everything down.
    START_DIR=$dir
    START_OK=0
    trap on_start_exit EXIT

    local port fsid i
    port=$(pick_ports)
    fsid=$(cat /proc/sys/kernel/random/uuid)
    mkdir -p "$dir/mon/ceph-a" "$dir/run" "$dir/log"
    for i in $(seq 0 $((osds - 1))); do mkdir -p "$dir/osd/ceph-$i"; done
    # ceph-mon --mkfs is a silent no-op on a non-empty data dir: it must be empty here.
    rmdir "$dir/mon/ceph-a"

    cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]
public network = 127.0.0.0/8
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $dir/keyring
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
log to stderr = false
err to stderr = false
osd pool default size = $osds
osd pool default min size = $((osds - osds / 2))
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# A nearly full CI disk must not stop the monitor (its default limit is 5 % free).
mon data avail warn = 2
mon data avail crit = 1
# Tests kill OSDs: notice a dead one in seconds, on one peer's word.
osd heartbeat interval = 1
osd heartbeat grace = 4
mon osd min down reporters = 1
mon osd adjust heartbeat grace = false
[mon]
mon data = $dir/mon/\$cluster-\$id
mon cluster log file = $dir/log/cluster.log
[osd]
osd data = $dir/osd/\$cluster-\$id
keyring = $dir/osd/\$cluster-\$id/keyring
osd objectstore = memstore
memstore device bytes = 1073741824
osd max object name len = 256
osd max object namespace len = 64
EOF

    # Keys: mon., client.admin (in the mon keyring too) and one per OSD.
    ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$dir/keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
    ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/keyring" >/dev/null
    for i in $(seq 0 $((osds - 1))); do
        printf '[osd.%s]\n\tkey = %s\n' "$i" "$(ceph-authtool --gen-print-key)" \
            >"$dir/osd/ceph-$i/keyring"
    done

    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]" \
        "$dir/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring"
    [ -f "$dir/mon/ceph-a/keyring" ] || die "ceph-mon --mkfs did not populate $dir/mon/ceph-a"

    if [ -n "$watch" ]; then
        # Stop the cluster when the watched process is gone. setsid: survive its group.
        setsid bash -c '
            while kill -0 "$1" 2>/dev/null; do sleep 1; done
            exec "$2" stop "$3"
        ' ceph-test-cluster-watch "$watch" "$(cd "$(dirname "$0")" && pwd)/$(basename "$0")" "$dir" \
            </dev/null >/dev/null 2>&1 &
        echo "watch $!" >>"$dir/pids"
    fi

    setsid ceph-mon -f -c "$CONF" -i a </dev/null >>"$dir/log/mon.out" 2>&1 &
    local mon_pid=$!
    echo "mon $mon_pid" >>"$dir/pids"

    for i in $(seq 1 60); do
        kill -0 "$mon_pid" 2>/dev/null || die "ceph-mon exited (port taken?)"
        if ceph_cmd mon stat >/dev/null 2>&1; then break; fi
        sleep 0.5
    done
    ceph_cmd mon stat >/dev/null

    # Register every OSD with the monitor, then mkfs and start them all in parallel.
    local osd_pids=() uuid id key
    for i in $(seq 0 $((osds - 1))); do
        uuid=$(cat /proc/sys/kernel/random/uuid)
        key=$(sed -n 's/^[[:space:]]*key = //p' "$dir/osd/ceph-$i/keyring")
        printf '{"cephx_secret": "%s"}\n' "$key" >"$dir/osd/ceph-$i/secret.json"
        id=$(ceph_cmd osd new "$uuid" -i "$dir/osd/ceph-$i/secret.json")
        [ "$id" = "$i" ] || die "ceph osd new returned '$id', expected $i"
        echo "$uuid" >"$dir/osd/ceph-$i/uuid"
    done
    local mkfs_pids=()
    for i in $(seq 0 $((osds - 1))); do
        ceph-osd -c "$CONF" -i "$i" --mkfs --osd-uuid "$(cat "$dir/osd/ceph-$i/uuid")" \
            --no-mon-config >>"$dir/log/osd-mkfs.$i.out" 2>&1 &
        mkfs_pids+=($!)
    done
    for i in "${!mkfs_pids[@]}"; do
        wait "${mkfs_pids[$i]}" || die "ceph-osd --mkfs of osd.$i failed"
    done
    for i in $(seq 0 $((osds - 1))); do
        setsid ceph-osd -f -c "$CONF" -i "$i" </dev/null >>"$dir/log/osd.$i.out" 2>&1 &
        osd_pids+=($!)
        echo "osd.$i $!" >>"$dir/pids"
    done

    local up=0
    for _ in $(seq 1 120); do
        for i in "${!osd_pids[@]}"; do
            kill -0 "${osd_pids[$i]}" 2>/dev/null || die "ceph-osd osd.$i exited"
        done
        up=$(ceph_cmd osd dump 2>/dev/null | grep -c '^osd\.[0-9]* up' || true)
        [ "$up" -lt "$osds" ] || break
        sleep 0.5
    done
    [ "$up" -ge "$osds" ] || die "only $up of $osds OSDs came up"

    ceph_cmd osd pool create rbd 8 8 replicated >/dev/null 2>&1
    ceph_cmd osd pool set rbd size "$osds" --yes-i-really-mean-it >/dev/null 2>&1
    ceph_cmd osd pool set rbd min_size $((osds - osds / 2)) >/dev/null 2>&1
    timeout 60 rbd -c "$CONF" pool init rbd

    local image="tgt-test-$(date +%s)-$$-$RANDOM"
    local size=${RBD_TEST_IMAGE_SIZE:-64M}
    timeout 60 rbd -c "$CONF" create "rbd/$image" --size "$size"
    local bytes
    bytes=$(timeout 30 rbd -c "$CONF" info "rbd/$image" --format json | sed -n 's/.*"size": *\([0-9]*\).*/\1/p')
    START_OK=1
    echo "conf=$CONF"
    echo "pool=rbd"
    echo "image=$image"
    echo "size=$bytes"
    echo "osd_pids=$(IFS=,; echo "${osd_pids[*]}")"
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2
case "$cmd" in
start)
    watch=
    osds=1
    while [ $# -gt 0 ]; do
        [ $# -ge 2 ] || usage
        case "$1" in
        --watch) watch=$2 ;;
        --osds) osds=$2 ;;
        *) usage ;;
        esac
        shift 2
    done
    start_cluster "$dir" "$watch" "$osds"
    ;;
stop)
    [ $# -eq 0 ] || usage
    stop_cluster "$dir"
    ;;
*)
    usage
    ;;
esac
