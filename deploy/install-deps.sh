#!/usr/bin/env bash
# Installs everything zerocopy needs to build, test and run its demo on
# Debian 12: the C++ libraries from Debian's packages, and the project's
# Python virtual environment (outside the clone, so clean clones reuse it).
#
# Idempotent: packages already installed are not touched, and the venv is
# only updated when requirements.txt changed since its last install.
#
#   ZEROCOPY_VENV   where the venv lives (default ~/.cache/zerocopy/venv)
#   ZEROCOPY_SKIP_VENV=1   C++ only (e.g. inside a minimal build image)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

debian_packages=(
  build-essential cmake pkg-config ccache git
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libboost-dev libspdlog-dev libfmt-dev catch2 libtomlplusplus-dev
  libxxhash-dev libdlpack-dev libcli11-dev nlohmann-json3-dev pybind11-dev
  libsystemd-dev systemd util-linux
  prometheus-cpp-dev      # zerocopyd's metrics endpoint
  lintian                 # make deb: the package checked (tests/deploy)
  clang libclang-rt-dev   # libFuzzer targets (make fuzz)
  clang-format            # make lint: the C++ (.clang-format)
  python3 python3-venv python3-dev
  iproute2                # ip, tc: the simulated multi-host cluster (bench/simcluster.py, python_simcluster)
)

missing=()
for p in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: Debian packages present"
fi

[[ ${ZEROCOPY_SKIP_VENV:-0} == 1 ]] && exit 0

venv=${ZEROCOPY_VENV:-$HOME/.cache/zerocopy/venv}
req=$root/requirements.txt
stamp=$venv/.zerocopy-requirements
# Debian's interpreter, never whatever python3 comes first on PATH.
if [[ ! -x $venv/bin/python ]]; then
  echo "install-deps: creating venv at $venv"
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
fi
if ! cmp -s "$req" "$stamp"; then
  echo "install-deps: installing Python packages into $venv (pinned in requirements.txt)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$req"
  cp "$req" "$stamp"
else
  echo "install-deps: venv up to date ($venv)"
fi

# The published ray-zerocopy is our baseline and has our import name: it
# lives in its own directory, imported only by processes that put it first.
baseline=$venv/baseline-ray-zerocopy
if [[ ! -d $baseline/ray_zerocopy ]]; then
  echo "install-deps: installing baseline ray-zerocopy==0.2.0 into $baseline"
  "$venv/bin/python" -m pip install -q --no-deps --target "$baseline" ray-zerocopy==0.2.0
fi
