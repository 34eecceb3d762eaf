#!/usr/bin/env bash
# Runs the no_std crates' unit tests (iscsi-proto, scsi-core) under Miri, which checks for
# undefined behaviour in them and in the dependencies they call (zerocopy, crc, heapless,
# md-5). Property tests run with few cases (PROPTEST_CASES, default 4): Miri is ~1000x
# slower than native code, and the point here is UB, not coverage (the fuzzers do that).
#
#   scripts/miri.sh [CRATE...]      # default: iscsi-proto scsi-core
#
# Needs the nightly toolchain; installs its miri and rust-src components if missing.
# Uses CARGO_TARGET_DIR if set (default target/miri).
set -euo pipefail
cd "$(dirname "$0")/.."
crates=("$@")
if [ ${#crates[@]} -eq 0 ]; then
    crates=(iscsi-proto scsi-core)
fi
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    rustup +nightly component add miri rust-src
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/miri}
export PROPTEST_CASES=${PROPTEST_CASES:-4}
# proptest persists failures to files and reads the clock: let Miri reach the host.
export MIRIFLAGS=${MIRIFLAGS:--Zmiri-disable-isolation}
# Property tests are skipped: their strategies (regex-generated strings, hundreds of cases
# pinned with `with_cases`) take hours under Miri; the fuzz targets cover the same round
# trips natively. Every example-based unit test runs.
skip_proptests=(
    serial::tests::add_is_greater serial::tests::antisymmetric
    digest::tests::soft_and_hard_agree digest::tests::soft_and_hard_agree_incrementally
    text::tests::emit_parse_round_trip session::window::tests::window_invariants
    wire::tests::nop_out wire::tests::nop_in wire::tests::scsi_command
    wire::tests::scsi_command_set_cdb wire::tests::scsi_response wire::tests::sense_round_trip
    wire::tests::task_mgmt_request wire::tests::task_mgmt_response wire::tests::login_request
    wire::tests::login_response wire::tests::text_request wire::tests::text_response
    wire::tests::data_out wire::tests::data_in wire::tests::logout_request
    wire::tests::logout_response wire::tests::r2t wire::tests::snack wire::tests::async_message
    wire::tests::reject wire::tests::garbage_never_panics wire::tests::code_points
    tests::arbitrary_commands_complete lun::tests::round_trip
)
skips=()
for t in "${skip_proptests[@]}"; do
    skips+=(--skip "$t")
done
cargo +nightly miri setup >/dev/null
for c in "${crates[@]}"; do
    echo "== miri: $c ${MIRI_FILTER:-}"
    # shellcheck disable=SC2086
    cargo +nightly miri test -p "$c" --lib -- --exact "${skips[@]}" ${MIRI_FILTER:-}
done
