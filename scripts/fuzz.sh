#!/usr/bin/env bash
# Short fuzz pass: builds every cargo-fuzz target in fuzz/ and runs each for SECONDS (default
# 60) on a copy of its committed corpus (fuzz/corpus/NAME; the checkout is not modified).
# Prints one line per target
#   NAME: N execs in S s, corpus C, crashes K
# and exits non-zero if any target crashed (the reproducer is kept and its path printed).
#
#   scripts/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain (`cargo +nightly`); installs cargo-fuzz if it is missing.
# Long campaigns: `cd fuzz && cargo +nightly fuzz run NAME -- -max_total_time=1800`.
set -euo pipefail
secs=${1:-60}
cd "$(dirname "$0")/../fuzz"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is required (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# The sanitizer build has its own target dir (FUZZ_TARGET_DIR, default fuzz/target), whatever
# CARGO_TARGET_DIR the caller uses for the main workspace.
target_dir=${FUZZ_TARGET_DIR:-$PWD/target}
cargo +nightly fuzz build -O --target-dir "$target_dir" >&2
targets=$(cargo +nightly fuzz list)
# Run the binaries just built (`cargo fuzz run` would rebuild if sources changed meanwhile).
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$host/release
work=$(mktemp -d "${TMPDIR:-/tmp}/tgt-rs-fuzz.XXXXXX")
failed=0
for t in $targets; do
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    if [ -d "corpus/$t" ]; then
        cp -r "corpus/$t/." "$work/$t/corpus/"
    fi
    start=$(date +%s)
    set +e
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0} "$bin_dir/$t" "$work/$t/corpus" \
        -max_total_time="$secs" -timeout=60 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$work/$t/artifacts/" >"$work/$t/log" 2>&1
    rc=$?
    set -e
    took=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/log" | tail -1)
    corpus=$(find "$work/$t/corpus" -type f | wc -l)
    # slow-unit-* files are reports, not failures.
    crashes=$(find "$work/$t/artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' \
        -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1
    fi
    echo "$t: ${execs:-0} execs in $took s, corpus $corpus, crashes $crashes"
    if [ "$crashes" -ne 0 ]; then
        failed=1
        echo "--- $t failed (exit $rc); log: $work/$t/log" >&2
        grep -E "ERROR|panicked|SUMMARY|Test unit written" "$work/$t/log" | head -20 >&2 || true
        find "$work/$t/artifacts" -type f >&2
    fi
done
if [ "$failed" -eq 0 ]; then
    rm -rf "$work"
else
    echo "fuzz.sh: crashes found; reproduce with: cd fuzz && cargo +nightly fuzz run NAME ARTIFACT" >&2
fi
exit "$failed"
