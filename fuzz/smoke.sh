#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 10) and fails on any crash.
#
#   fuzz/smoke.sh [SECONDS]
#
# See fuzz/run.sh for the stable-toolchain set-up (RUSTC_BOOTSTRAP=1) and FUZZ_SANITIZER.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-10}
failed=()
for file in fuzz_targets/*.rs; do
    target=$(basename "$file" .rs)
    ./run.sh "$target" "$seconds" || failed+=("$target")
done
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz smoke: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz smoke: every target ran ${seconds}s without a crash"
