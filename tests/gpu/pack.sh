#!/usr/bin/env bash
# Packs what tests/gpu/run.sh needs from a build into DEST, for a GPU
# machine that lacks the build dependencies (gRPC, protobuf, abseil from
# Debian): the daemon, map_worker and the C++ test program, stripped; the
# Python package with its extension; and the shared libraries they load
# (DEST/lib; glibc, libstdc++ and other base libraries excepted).
#
#   tests/gpu/pack.sh BUILD DEST [PYTHON_INCLUDES...]
#
# PYTHON_INCLUDES: include directories of another Python (e.g. 3.12 headers
# copied from the GPU machine) to build the extension for that interpreter
# instead of copying BUILD's (which is for the project venv's Python).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "$1" && pwd)
rm -rf "$2"
mkdir -p "$2"/{daemon,client/cpp,tests/cpp,python,lib}
dest=$(cd "$2" && pwd)
shift 2
strip -g -o "$dest/daemon/zerocopyd" "$build/daemon/zerocopyd"
strip -g -o "$dest/client/cpp/zerocopy_map_worker" "$build/client/cpp/zerocopy_map_worker"
strip -g -o "$dest/tests/cpp/zerocopy_daemon_tests" "$build/tests/cpp/zerocopy_daemon_tests"
cp -r "$build/python/ray_zerocopy" "$dest/python/"
rm -f "$dest"/python/ray_zerocopy/_zerocopy*.so

ext=$(ls "$build"/python/ray_zerocopy/_zerocopy*.so)
if (($#)); then
  # Recompile module.cc for the other interpreter: the flags of this build
  # with its Python include directories replaced.
  venv_python=$(grep -m1 ZEROCOPY_PYTHON:FILEPATH "$build/CMakeCache.txt" | cut -d= -f2)
  own_includes=$("$venv_python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  flags=$(cd "$build/client/python" && sed -n 's/^CXX_FLAGS = //p;s/^CXX_DEFINES = //p;s/^CXX_INCLUDES = //p' \
          CMakeFiles/zerocopy_python.dir/flags.make | tr '\n' ' ' | sed "s#-isystem $own_includes##g;s#-I$own_includes##g")
  incs=()
  for i in "$@"; do incs+=(-isystem "$i"); done
  suffix=$(basename "$1" | sed 's/^python\([0-9]\)\.\([0-9]*\).*/cpython-\1\2-x86_64-linux-gnu.so/')
  link=$(cd "$build/client/python" && cat CMakeFiles/zerocopy_python.dir/link.txt)
  objdir=$(mktemp -d)
  # eval: the flags are quoted for a shell (-DNAME=\"value\").
  eval "g++ $flags ${incs[*]} -c '$root/client/python/src/module.cc' -o '$objdir/module.o'"
  # The link line of the build, with our object and output name.
  link=${link//CMakeFiles\/zerocopy_python.dir\/src\/module.cc.o/$objdir/module.o}
  link=$(echo "$link" | sed "s# -o [^ ]*_zerocopy[^ ]*\.so # -o $dest/python/ray_zerocopy/_zerocopy.$suffix #")
  (cd "$build/client/python" && eval "$link")
  strip -g "$dest"/python/ray_zerocopy/_zerocopy.*.so
  rm -rf "$objdir"
else
  cp "$ext" "$dest/python/ray_zerocopy/"
fi

# Shared libraries outside the base system.
base='^(linux-vdso|libc\.|libm\.|libdl\.|librt\.|libpthread\.|ld-linux|libstdc\+\+|libgcc_s|libz\.|libssl|libcrypto|libsystemd|liblzma|libzstd|liblz4|libcap|libgcrypt|libgpg-error)'
for f in "$dest/daemon/zerocopyd" "$dest/client/cpp/zerocopy_map_worker" "$dest/tests/cpp/zerocopy_daemon_tests" \
         "$dest"/python/ray_zerocopy/_zerocopy*.so; do
  ldd "$f" | awk '/=> \// {print $1, $3}' | while read -r name path; do
    [[ $name =~ $base ]] || cp -nL "$path" "$dest/lib/"
  done
done
du -sh "$dest"
