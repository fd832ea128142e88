#!/usr/bin/env bash
# The GPU tests: the C++ cases tagged [.gpu] (zerocopy_daemon_tests) and the
# Python tests marked gpu (tests/python/test_gpu.py), against the real daemon
# with its CUDA backend. Run on a machine with an NVIDIA GPU, after `make
# build` (the toolkit in /usr/local/cuda makes a CUDA build):
#
#   tests/gpu/run.sh [BUILD]        BUILD defaults to build/
#
#   ZEROCOPY_PYTHON   interpreter with a CUDA torch (default: the project venv's)
#
# A copy of the build made by tests/gpu/pack.sh runs the same way on a GPU
# machine without the build dependencies: tests/gpu/run.sh PACK.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
python=${ZEROCOPY_PYTHON:-${ZEROCOPY_VENV:-$HOME/.cache/zerocopy/venv}/bin/python}
[[ -d $build/lib ]] && export LD_LIBRARY_PATH=$build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# The programs the tests start, from this build (its paths may differ from
# those compiled in).
export ZEROCOPYD_BIN=$build/daemon/zerocopyd
export ZEROCOPY_MAP_WORKER_BIN=$build/client/cpp/zerocopy_map_worker
export ZEROCOPY_BUILD=$build RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
unset CUDA_VISIBLE_DEVICES ZEROCOPY_FAKE_GPUS

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv
status=0
echo "== C++ [.gpu] and [gpu-fake]"
"$build/tests/cpp/zerocopy_daemon_tests" "[.gpu],[gpu-fake]" --durations yes || status=1
echo "== Python -m gpu"
(cd "$root/tests/python" && "$python" -m pytest -q -s -p no:cacheprovider -m gpu .) || status=1
exit $status
