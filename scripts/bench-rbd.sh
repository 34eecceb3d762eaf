#!/usr/bin/env bash
# Ceph RBD benchmark (issue #11): one image on a throwaway single-node cluster, driven
#   - directly with `rbd bench` (librbd, no iSCSI),
#   - through this daemon's rbd store (bstype = "rbd"; mio and threads runtimes),
#   - through tgt's rbd store (tgtd -E rbd, Debian tgt-rbd),
# with the same workloads (4 KiB random read/write QD32, 128 KiB sequential read QD8;
# iscsi-load and, for reads, libiscsi's iscsi-perf), alternating targets within each round.
# Reports IOPS, MB/s, the daemon's CPU per I/O (for `rbd bench`: the rbd process's own), the
# ratios against tgt and the ceph-osd's CPU per I/O.
#
#   scripts/bench-rbd.sh [--secs 5] [--rounds 2] [--only SUBSTR] [--runtimes mio,threads]
#                        [--tgt-threads 16,32] [--io-threads 16,32]
#                        [--extra NAME=BINARY:RUNTIME[:VAR=VALUE,...]]
#                        [--markdown FILE]
#
# Needs: apt-get install -y tgt tgt-rbd libiscsi-bin ceph-mon ceph-osd ceph-common
# librbd-dev; runs as root (tgtd). The image is RBD_BENCH_IMAGE_SIZE (default 1G), prefilled
# with `rbd bench --io-type write --io-pattern seq` so reads hit data; the memstore OSD gets
# RBD_BENCH_OSD_BYTES (default 4 GiB) of memory. TGT_CLI_BIN (built with --features rbd) /
# ISCSI_LOAD_BIN reuse binaries already built; by default both are built in release mode.
# RBD_BENCH_OSD_DELAY=SECONDS makes the OSD hold every client message up to that long
# (Ceph's ms_inject_delay_*), standing in for a cluster across a network: then IOPS follow
# the requests each target keeps in flight rather than the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
daemon=${TGT_CLI_BIN:-}
load=${ISCSI_LOAD_BIN:-}
if [ -z "$daemon" ]; then
    cargo build --release -p tgt-cli --features rbd >/dev/null
    daemon=$target/release/tgt-cli
fi
if [ -z "$load" ]; then
    cargo build --release -p benches --bin iscsi-load >/dev/null
    load=$target/release/iscsi-load
fi
[ -e /usr/lib/tgt/backing-store/bs_rbd.so ] || {
    echo "bench-rbd: tgtd has no rbd store (apt-get install -y tgt-rbd)" >&2
    exit 1
}

cluster=$(mktemp -d /tmp/bench-rbd-ceph.XXXXXX)
rmdir "$cluster"
cleanup() { scripts/ceph-test-cluster.sh stop "$cluster"; }
trap cleanup EXIT
# The memstore OSD holds the whole image in memory: give it room (CEPH_ARGS reaches the
# daemons the cluster script starts).
out=$(CEPH_ARGS="--memstore_device_bytes=${RBD_BENCH_OSD_BYTES:-4294967296}" \
    RBD_TEST_IMAGE_SIZE=${RBD_BENCH_IMAGE_SIZE:-1G} \
    scripts/ceph-test-cluster.sh start "$cluster" --watch $$)
conf=$(sed -n 's/^conf=//p' <<<"$out")
pool=$(sed -n 's/^pool=//p' <<<"$out")
image=$(sed -n 's/^image=//p' <<<"$out")
size=$(sed -n 's/^size=//p' <<<"$out")
# osd.0's PID (DIR/pids names it `osd` or `osd.0`, depending on the cluster script's age).
osd=$(awk '$1 == "osd" || $1 == "osd.0" { print $2; exit }' "$cluster/pids")
echo "bench-rbd: cluster $cluster, image $pool/$image ($size bytes); prefilling" >&2
rbd -c "$conf" bench --io-type write --io-size 4M --io-threads 8 --io-total "$size" \
    --io-pattern seq "$pool/$image" >/dev/null
if [ -n "${RBD_BENCH_OSD_DELAY:-}" ]; then
    for kv in "ms_inject_delay_type client" "ms_inject_delay_max $RBD_BENCH_OSD_DELAY" \
        "ms_inject_delay_probability 1"; do
        # shellcheck disable=SC2086 # two words: name and value
        timeout 30 ceph -c "$conf" tell osd.0 config set $kv >/dev/null
    done
    echo "bench-rbd: the OSD delays client messages by up to $RBD_BENCH_OSD_DELAY s" >&2
    set -- --note "OSD delays client messages up to $RBD_BENCH_OSD_DELAY s" "$@"
fi
python3 scripts/bench_vs_tgt.py rbd --daemon "$daemon" --load "$load" --conf "$conf" \
    --pool "$pool" --image "$image" --osd-pid "$osd" "$@"
