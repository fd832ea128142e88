#!/bin/bash
# Runs every fuzz target for SECONDS each, starting from the seed corpus in
# tests/fuzz/corpus/<target> (kept read-only) plus what earlier runs found
# (BUILD/fuzz-corpus/<target>). A crash, leak or sanitizer report fails
# the run and leaves the input in BUILD/fuzz-artifacts/.
#   tests/fuzz/run.sh BUILD_DIR SECONDS
set -euo pipefail
build=${1:?build directory}
seconds=${2:?seconds per target}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$build/fuzz-artifacts"
status=0
for target in safetensors shard_index torch_save pt2 manifest requests; do
  bin="$build/tests/fuzz/fuzz_$target"
  work="$build/fuzz-corpus/$target"
  mkdir -p "$work"
  log="$build/fuzz-artifacts/$target.log"
  if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
       -artifact_prefix="$build/fuzz-artifacts/$target-" "$work" "$here/corpus/$target" >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz_$target: ${execs:-?} executions in ${seconds}s, no crash (corpus $(ls "$work" | wc -l) inputs)"
  else
    echo "fuzz_$target: FAILED, see $log"
    tail -40 "$log"
    status=1
  fi
done
exit $status
