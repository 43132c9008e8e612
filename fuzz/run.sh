#!/usr/bin/env bash
# Builds one fuzz target and runs it for a fixed time; prints its executions and coverage.
#
#   fuzz/run.sh TARGET [SECONDS]        (default 60 s; targets: fuzz/fuzz_targets/*.rs)
#
# Stable toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer=..., sancov passes), so
# this sets RUSTC_BOOTSTRAP=1, which lets a stable rustc accept them. AddressSanitizer works
# that way too (the stable toolchain ships librustc-stable_rt.asan.a); set
# FUZZ_SANITIZER=none for a faster, uninstrumented-for-memory run.
# New inputs go to fuzz/target/corpus/TARGET (ignored by git); the checked-in seeds in
# fuzz/corpus/TARGET are only read. A crash is written to fuzz/artifacts/TARGET/ and makes this
# script fail; reproduce it with `RUSTC_BOOTSTRAP=1 cargo fuzz run -O TARGET <file>` in fuzz/.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET [SECONDS]}
seconds=${2:-60}
sanitizer=${FUZZ_SANITIZER:-address}
[ -f "fuzz_targets/$target.rs" ] || { echo "no target $target" >&2; exit 2; }
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

work="target/corpus/$target"
log="target/logs/$target.log"
mkdir -p "$work" "$(dirname "$log")" "artifacts/$target"
cargo fuzz build -O -s "$sanitizer" "$target"
status=0
# -timeout: one input taking over 10 s is a hang worth a report. -max_len: frames up to 4 KiB
# (the decoder's larger frames are covered by the unit and golden tests).
cargo fuzz run -O -s "$sanitizer" "$target" "$work" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -max_len=4096 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
cov=$(sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\/[^ ]*\).*/cov=\1 ft=\2 corpus=\3/p' \
    <<<"$done_line")
echo "$target: ${seconds}s sanitizer=$sanitizer executions=${execs:-?} exec/s=${rate:-?} ${cov:-(no final stats)}"
if [ "$status" -ne 0 ]; then
    echo "$target: FAILED (exit $status); last lines of $log:" >&2
    tail -40 "$log" >&2
    exit "$status"
fi
