#!/usr/bin/env bash
# Builds Debian's own Abseil and gRPC (the exact source packages behind the
# installed libabsl20220623 and libgrpc29/libgrpc++1.51) as shared libraries
# instrumented with ThreadSanitizer, for `make test-tsan`.
#
# Why: zerocopy guards its state with absl::Mutex, and gRPC hands each call
# from one thread to the next through its completion queues. Debian's
# builds are not instrumented, so TSan would see neither: every field we
# guard, and every object gRPC passes between its threads, would look like
# a race. These libraries have the same SONAMEs and configuration (Debian's
# patches and CMake options), so putting their directory first on
# LD_LIBRARY_PATH swaps them in under the unchanged binaries. Protobuf,
# re2, c-ares and OpenSSL stay Debian's (tests/tsan/suppressions.txt).
#
# The sources come from Debian's repository (deb-src, through a private apt
# configuration: the system's sources are not touched). The result is kept
# outside the clone, like the venv, and rebuilt only when a version
# changes: about 1 minute for Abseil and 10 for gRPC on 2 cores.
#
#   deploy/build-tsan-deps.sh        -> prints the library directory
#   ZEROCOPY_TSAN_DEPS=DIR   where builds are kept (default ~/.cache/zerocopy)
set -euo pipefail

version_of() {
  dpkg-query -W -f='${source:Version}' "$1" 2>/dev/null ||
    { echo "build-tsan-deps: $1 is not installed (run deploy/install-deps.sh)" >&2; exit 1; }
}
absl_version=$(version_of libabsl20220623)
grpc_version=$(version_of libgrpc29)
prefix=${ZEROCOPY_TSAN_DEPS:-$HOME/.cache/zerocopy}/tsan-abseil-$absl_version-grpc-$grpc_version
if [[ -f $prefix/.complete ]]; then
  echo "$prefix/lib"
  exit 0
fi

work=$prefix.work  # a fixed path, so that ccache hits when it is rebuilt
rm -rf "$work"
mkdir -p "$work/etc" "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
{
  echo "build-tsan-deps: building Abseil $absl_version and gRPC $grpc_version with -fsanitize=thread into $prefix"
  for suite in "debian bookworm bookworm-updates" "debian-security bookworm-security"; do
    read -r path suites <<<"$suite"
    printf 'Types: deb-src\nURIs: http://deb.debian.org/%s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n' \
      "$path" "$suites"
  done >"$work/etc/debian-src.sources"
  apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/etc"
            -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
            -o APT::Sandbox::User=root -qq)
  apt-get "${apt_opts[@]}" update
  (cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only "abseil=$absl_version" "grpc=$grpc_version")
  dpkg-source -x --no-check "$work/src"/abseil_*.dsc "$work/abseil"
  dpkg-source -x --no-check "$work/src"/grpc_*.dsc "$work/grpc"

  common=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_SHARED_LIBS=ON
          "-DCMAKE_C_FLAGS=-fsanitize=thread -fno-omit-frame-pointer"
          "-DCMAKE_CXX_FLAGS=-fsanitize=thread -fno-omit-frame-pointer"
          -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread
          "-DCMAKE_INSTALL_PREFIX=$prefix" -DCMAKE_INSTALL_LIBDIR=lib)
  if command -v ccache >/dev/null; then
    common+=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  fi

  # Abseil as debian/rules configures it (C++17, shared, its patched
  # options.h), without the tests and the static build.
  cmake -S "$work/abseil" -B "$work/abseil-build" "${common[@]}" \
    -DCMAKE_CXX_STANDARD=17 -DBUILD_TESTING=OFF >/dev/null
  cmake --build "$work/abseil-build" -j"${JOBS:-2}" >/dev/null
  cmake --install "$work/abseil-build" >/dev/null

  # gRPC as debian/rules configures it (every dependency from Debian), only
  # the libraries zerocopy loads; compiled against the instrumented Abseil.
  # Not libgrpc++_reflection (it needs gRPC's code generators; Debian's
  # runs over the instrumented libgrpc++).
  cmake -S "$work/grpc" -B "$work/grpc-build" "${common[@]}" \
    "-DCMAKE_PREFIX_PATH=$prefix" -DgRPC_BUILD_TESTS=OFF \
    -DgRPC_ABSL_PROVIDER=package -DgRPC_CARES_PROVIDER=package -DgRPC_PROTOBUF_PROVIDER=package \
    -DgRPC_RE2_PROVIDER=package -DgRPC_SSL_PROVIDER=package -DgRPC_ZLIB_PROVIDER=package \
    -DgRPC_BACKWARDS_COMPATIBILITY_MODE=OFF -DgRPC_BUILD_CODEGEN=OFF \
    "-DProtobuf_PROTOC_LIBRARY=$(ls /usr/lib/*/libprotoc.so.* | head -1)" >/dev/null
  cmake --build "$work/grpc-build" -j"${JOBS:-2}" \
    --target gpr grpc grpc++ upb address_sorting >/dev/null
  cp -P "$work/grpc-build"/lib{gpr,grpc,grpc++,upb,address_sorting}.so* "$prefix/lib/"
  touch "$prefix/.complete"
  rm -rf "$work"
} >&2
echo "$prefix/lib"
