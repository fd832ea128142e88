#!/bin/bash
# `make test-tsan`: the C++ suite (the daemon, the client, the load, fault,
# GPU-pool and security tests: every concurrent path we have) under
# ThreadSanitizer, from a build configured with ZEROCOPY_SANITIZE=thread.
#
# TSan must see Abseil's mutexes (our locks) and gRPC's hand-offs between
# its threads, so the run swaps in Debian's Abseil and gRPC rebuilt with
# TSan (deploy/build-tsan-deps.sh) through LD_LIBRARY_PATH. What stays
# uninstrumented is handled by suppressions.txt. Every process (the tests,
# each zerocopyd they start, the clients they fork) writes its reports to
# BUILD/tsan-reports, so a race in a daemon whose stderr a test never reads
# still fails the run.
#   tests/tsan/run.sh BUILD_DIR [ctest args...]
set -euo pipefail
build=$(cd "${1:?build directory}" && pwd)
shift
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$(dirname "$here")")

# A copy inside the build directory: the security tests run clients as
# unprivileged users, who cannot read $HOME/.cache, and a library they cannot
# read is silently replaced by Debian's uninstrumented one.
libs=$build/tsan-libs
rm -rf "$libs"
cp -a "$("$root/deploy/build-tsan-deps.sh")" "$libs"
chmod -R a+rX "$libs"
reports=$build/tsan-reports
rm -rf "$reports"
mkdir -p "$reports"
chmod 1777 "$reports"  # the security tests' unprivileged clients write here too

export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export TSAN_OPTIONS="suppressions=$here/suppressions.txt log_path=$reports/report second_deadlock_stack=1 history_size=4 ${TSAN_OPTIONS:-}"
status=0
(cd "$build" && ctest --output-on-failure --timeout 900 -E '^python_' "$@") || status=$?

found=$(find "$reports" -type f | sort)
if [[ -n $found ]]; then
  echo "test-tsan: ThreadSanitizer reports in $(echo "$found" | wc -l) process(es):"
  for f in $found; do
    echo "== $f"
    grep -E '^SUMMARY|^WARNING' "$f" | sort | uniq -c
  done
  echo "first report:"
  head -60 "$(echo "$found" | head -1)"
  status=1
else
  echo "test-tsan: no ThreadSanitizer report from any process"
fi
exit $status
