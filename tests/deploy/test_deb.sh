#!/usr/bin/env bash
# The Debian packages as an operator meets them, on this machine:
#   1. `cpack -G DEB` from BUILD (what `make deb` runs), into a scratch dir;
#   2. lintian finds no error or warning (overrides carry their reasons:
#      deploy/debian/*.lintian-overrides); the runtime dependencies come
#      from dpkg-shlibdeps; nothing in either package points into a venv;
#   3. `apt-get install ./zerocopy_*.deb ./zerocopy-dev_*.deb`: the postinst
#      made the user, the group and the segment directory;
#   4. the daemon started as the unit starts it (no systemd here): the
#      unit's ExecStart with /etc/default/zerocopyd's flags, as its
#      User=/Group=, with its UMask= and RuntimeDirectory=, over the tmpfs
#      that dev-shm-zerocopy.mount mounts (its Options=, so huge pages).
#      Not reproduced: the unit's sandbox (SystemCallFilter=,
#      ProtectSystem=, CapabilityBoundingSet=, RestrictAddressFamilies=,
#      PrivateTmp=...), which only systemd applies; `systemd-analyze verify`
#      checks the installed units;
#   5. an unprivileged member of the group preloads a model with the
#      packaged CLI and maps it with a program built against zerocopy-dev
#      (find_package(zerocopy)): same checksum as the file; a user outside
#      the group is refused; a TorchScript preload says how to get the
#      LibTorch build the package leaves out;
#   6. `apt-get purge` leaves none of the packages' files or directories,
#      no configuration, no segments, no socket directory, no enablement or
#      mask of the unit (the system user stays, as Debian's policy asks;
#      the test removes it when it made it).
#
#   tests/deploy/test_deb.sh BUILD PYTHON
#
# Needs root (or password-less sudo) since it installs packages. Refuses to
# run where a zerocopy package is installed already (in any state, even only
# its configuration), or where /dev/shm/zerocopy or /run/zerocopy exist: it
# would replace or purge an operator's. Limits itself to 10 minutes, so that
# its cleanup runs before ctest's timeout would kill it outright.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR VENV_PYTHON" >&2
  exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
  if ! sudo -n true 2>/dev/null; then
    echo "test_deb: needs root or password-less sudo (it installs packages)" >&2
    exit 1
  fi
  exec sudo -n -E "$0" "$@"
fi
if [[ -z ${ZC_TEST_DEB_TIMED:-} ]]; then
  ZC_TEST_DEB_TIMED=1 exec timeout -s TERM 600 "$0" "$@"
fi
build=$(realpath "$1")
python=$2
repo=$(realpath "$(dirname "${BASH_SOURCE[0]}")/../..")
export DEBIAN_FRONTEND=noninteractive

say() { echo "test_deb: $*"; }
die() { echo "test_deb: FAIL: $*" >&2; exit 1; }

for p in zerocopy zerocopy-dev; do
  if status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null); then
    die "package $p is on this machine ($status); this test installs and purges its own: purge it first"
  fi
done
for d in /dev/shm/zerocopy /run/zerocopy; do
  [[ -e $d ]] && die "$d exists (a zerocopyd installed by hand?); this test would take it over: remove it first"
done

scratch=$(mktemp -d /tmp/zc-deb-XXXXXX)
chmod 0755 "$scratch"
member=zcdebtest$$
outsider=zcdebout$$
daemon_pid=
cleanup() {
  set +e
  [[ -n $daemon_pid ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  dpkg-query -W zerocopy >/dev/null 2>&1 && apt-get purge -y -qq zerocopy zerocopy-dev >/dev/null 2>&1
  mountpoint -q /dev/shm/zerocopy && umount /dev/shm/zerocopy
  userdel "$member" 2>/dev/null
  userdel "$outsider" 2>/dev/null
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # the cleanup runs on the way out

# --- 1. build the packages ---------------------------------------------------
(cd "$build" && cpack -G DEB -B "$scratch/pkg" >"$scratch/cpack.log" 2>&1) || { cat "$scratch/cpack.log"; die "cpack failed"; }
version=$(sed -n "s/^project(zerocopy VERSION \([0-9.]*\).*/\1/p" "$repo/CMakeLists.txt")
deb=$scratch/pkg/zerocopy_${version}_amd64.deb
dev=$scratch/pkg/zerocopy-dev_${version}_amd64.deb
[[ -f $deb && -f $dev ]] || die "cpack made $(ls "$scratch/pkg"), not zerocopy_${version}_amd64.deb and zerocopy-dev_${version}_amd64.deb"
head -1 "$repo/deploy/debian/changelog" | grep -q "^zerocopy ($version)" ||
  die "deploy/debian/changelog's first entry is not version $version (CMakeLists.txt's)"
say "built $(basename "$deb") ($(du -h "$deb" | cut -f1)) and $(basename "$dev") ($(du -h "$dev" | cut -f1))"

# --- 2. lintian, dependencies, no venv ---------------------------------------
if ! lintian --fail-on error,warning --tag-display-limit 0 "$deb" "$dev" >"$scratch/lintian.log" 2>&1; then
  cat "$scratch/lintian.log"
  die "lintian found errors or warnings"
fi
say "lintian: clean$( [[ -s $scratch/lintian.log ]] && echo " but for: $(tr '\n' ';' <"$scratch/lintian.log")")"
depends=$(dpkg-deb -f "$deb" Depends)
# Whole package names (regexes): shlibdeps' libraries, and systemd itself.
for lib in 'libgrpc\+\+[0-9.]+' 'libprotobuf[0-9]+' libsystemd0 libc6 systemd; do
  grep -qE "(^|, )$lib( \(|,|\$)" <<<"$depends" || die "Depends: lacks $lib: $depends"
done
dpkg-deb -x "$deb" "$scratch/root"
dpkg-deb -x "$dev" "$scratch/root"
[[ -e $scratch/root/usr/bin/zerocopy-torchscript ]] && die "the package holds zerocopy-torchscript (it links a venv's LibTorch)"
if grep -rlaE '/(venv|site-packages)/|libtorch' "$scratch/root" >"$scratch/venv.log"; then
  cat "$scratch/venv.log"
  die "files in the packages name a venv or LibTorch"
fi
for bin in "$scratch"/root/usr/bin/*; do
  readelf -d "$bin" | grep -qE 'RPATH|RUNPATH' && die "$bin has an RPATH/RUNPATH"
done
say "Depends: $depends"

# --- 3. install ----------------------------------------------------------------
user_before=$(getent passwd zerocopy || true)
apt-get install -y -qq "$deb" "$dev" >"$scratch/apt.log" 2>&1 || { cat "$scratch/apt.log"; die "apt-get install failed"; }
getent passwd zerocopy >/dev/null || die "the postinst made no user zerocopy"
getent group zerocopy >/dev/null || die "the postinst made no group zerocopy"
[[ -n $user_before ]] && say "the user zerocopy existed before: the postinst's making it is not checked this time"
[[ $(stat -c '%a %U %G' /dev/shm/zerocopy) == "710 zerocopy zerocopy" ]] ||
  die "/dev/shm/zerocopy is $(stat -c '%a %U %G' /dev/shm/zerocopy), not 710 zerocopy zerocopy"
conffiles=$(dpkg-query -W -f='${Conffiles}' zerocopy)
for f in /etc/zerocopy/zerocopyd.toml /etc/default/zerocopyd; do
  [[ $conffiles == *"$f "* ]] || die "$f is not a conffile: $conffiles"
done
unit=/usr/lib/systemd/system/zerocopyd.service
mount_unit=/usr/lib/systemd/system/dev-shm-zerocopy.mount
[[ -f $unit && -f $mount_unit ]] || die "the units are not installed under /usr/lib/systemd/system"
verify=$(systemd-analyze verify --man=no --generators=no "$unit" "$mount_unit" 2>&1 | grep -E 'zerocopy' || true)
[[ -z $verify ]] || die "systemd-analyze verify of the installed units: $verify"
dpkg -L zerocopy zerocopy-dev | sort -u >"$scratch/files"
say "installed: $(wc -l <"$scratch/files") paths; user, group, /dev/shm/zerocopy and conffiles in place"

# --- 4. the daemon, as the unit starts it --------------------------------------
# KEY=VALUE of a unit (the last one); this parser knows no line
# continuations, specifiers or variables beyond $ZEROCOPYD_ARGS: a unit
# that starts using them fails here loudly rather than being misread.
unit_value() {
  local v
  v=$(sed -n "s/^$2[[:space:]]*=[[:space:]]*//p" "$1" | tail -1)
  [[ $v == *\\* || $v == *'${'* || $v =~ %[^,] ]] && die "$1: $2=$v needs a real unit parser"
  printf '%s' "$v"
}
# The mount unit's tmpfs, with its options (libmount turns uid=/gid= names
# into ids, as it does for systemd).
mount -t "$(unit_value "$mount_unit" Type)" -o "$(unit_value "$mount_unit" Options)" \
  "$(unit_value "$mount_unit" What)" "$(unit_value "$mount_unit" Where)"
[[ $(stat -c '%a %U %G' /dev/shm/zerocopy) == "710 zerocopy zerocopy" ]] || die "the mount unit's tmpfs is $(stat -c '%a %U %G' /dev/shm/zerocopy)"
user=$(unit_value "$unit" User)
group=$(unit_value "$unit" Group)
runtime_dir=/run/$(unit_value "$unit" RuntimeDirectory)
install -d -m "$(unit_value "$unit" RuntimeDirectoryMode)" -o "$user" -g "$group" "$runtime_dir"
exec_start=$(unit_value "$unit" ExecStart)
# EnvironmentFile=-/etc/default/zerocopyd, then $ZEROCOPYD_ARGS split into words.
ZEROCOPYD_ARGS=
# shellcheck disable=SC1091
source /etc/default/zerocopyd
exec_start=${exec_start//\$ZEROCOPYD_ARGS/$ZEROCOPYD_ARGS}
say "starting as $user:$group: $exec_start"
# shellcheck disable=SC2086
(umask "$(unit_value "$unit" UMask)" &&
  exec setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs --inh-caps=-all $exec_start) \
  >"$scratch/zerocopyd.log" 2>&1 &
daemon_pid=$!
socket=/run/zerocopy/zerocopyd.sock
for _ in $(seq 200); do
  [[ -S $socket ]] && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$scratch/zerocopyd.log"; die "zerocopyd exited"; }
  sleep 0.05
done
[[ -S $socket ]] || { cat "$scratch/zerocopyd.log"; die "no socket at $socket"; }
[[ $(stat -c '%a %G' "$socket") == "660 zerocopy" ]] || die "socket is $(stat -c '%a %G' "$socket")"

# --- 5. an unprivileged member of the group, and one outside it --------------
useradd -M -N -s /usr/sbin/nologin -G zerocopy "$member"
useradd -M -N -s /usr/sbin/nologin "$outsider"
as() { local who=$1; shift; setpriv --reuid="$who" --regid="$(id -g "$who")" --init-groups env -u ZEROCOPY_SOCKET HOME=/ "$@"; }
"$python" - "$scratch/model.safetensors" "$scratch/model.pt" <<'EOF'
import sys, torch
from safetensors.torch import save_file
torch.manual_seed(7)
save_file({"layer.weight": torch.randn(512, 1024), "layer.bias": torch.randn(1024),
           "embed": torch.randn(4096, 256).to(torch.float16)}, sys.argv[1])
torch.jit.save(torch.jit.script(torch.nn.Linear(4, 4)), sys.argv[2])
EOF
chmod 0644 "$scratch/model.safetensors" "$scratch/model.pt"
as "$member" zerocopy doctor >"$scratch/doctor.log" 2>&1 || { cat "$scratch/doctor.log"; die "zerocopy doctor failed for a member"; }
as "$member" zerocopy preload "$scratch/model.safetensors" --name deb-test >"$scratch/preload.log" 2>&1 ||
  { cat "$scratch/preload.log" "$scratch/zerocopyd.log"; die "a member's preload failed"; }
as "$member" zerocopy stats | grep -q 'huge pages yes' || die "the daemon does not see huge pages on the mount unit's tmpfs"
if as "$outsider" zerocopy ls >"$scratch/outsider.log" 2>&1; then die "a user outside the group listed the models"; fi
grep -q 'members of the group zerocopy' "$scratch/outsider.log" || die "the outsider's error does not say why: $(cat "$scratch/outsider.log")"
if as "$member" zerocopy preload "$scratch/model.pt" --name ts >"$scratch/ts.log" 2>&1; then die "a TorchScript preload worked without LibTorch"; fi
grep -q 'Debian package' "$scratch/ts.log" || die "the TorchScript preload does not say how to get LibTorch: $(cat "$scratch/ts.log")"

# A program built against zerocopy-dev, the way a user builds one.
mkdir -p "$scratch/app"
cp "$repo/client/cpp/examples/map_worker.cc" "$scratch/app/"
cat >"$scratch/app/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.25)
project(app CXX)
set(CMAKE_CXX_STANDARD 17)
find_package(zerocopy 0.1 REQUIRED)
add_executable(map_worker map_worker.cc)
target_link_libraries(map_worker PRIVATE zerocopy::zerocopy zerocopy::zerocopy_formats xxhash)
EOF
(cmake -S "$scratch/app" -B "$scratch/app/build" -DCMAKE_BUILD_TYPE=Release && cmake --build "$scratch/app/build" -j2) \
  >"$scratch/app.log" 2>&1 || { tail -40 "$scratch/app.log"; die "a program does not build against zerocopy-dev"; }
mapped=$(as "$member" "$scratch/app/build/map_worker" --model deb-test) || die "the member could not map the model: $mapped"
from_file=$("$scratch/app/build/map_worker" --file "$scratch/model.safetensors")
checksum() { "$python" -c 'import json,sys; print(json.loads(sys.argv[1])["checksum"])' "$1"; }
[[ $(checksum "$mapped") == "$(checksum "$from_file")" ]] || die "mapped checksum differs from the file's: $mapped vs $from_file"
say "a member preloaded and mapped the model (checksum $(checksum "$mapped")); the outsider was refused"

kill "$daemon_pid"
wait "$daemon_pid" || die "zerocopyd exited with $? on SIGTERM: $(tail -5 "$scratch/zerocopyd.log")"
daemon_pid=

# --- 6. purge -----------------------------------------------------------------
apt-get purge -y -qq zerocopy zerocopy-dev >"$scratch/purge.log" 2>&1 || { cat "$scratch/purge.log"; die "apt-get purge failed"; }
left=()
while read -r f; do
  # The packages' own directories too (shared ones like /usr/bin stay).
  [[ -e $f ]] && ! { [[ -d $f ]] && dpkg -S "$f" >/dev/null 2>&1; } && left+=("$f")
done <"$scratch/files"
for f in /etc/zerocopy /etc/default/zerocopyd /dev/shm/zerocopy /run/zerocopy \
  /etc/systemd/system/zerocopyd.service /etc/systemd/system/multi-user.target.wants/zerocopyd.service; do
  [[ -e $f || -L $f ]] && left+=("$f")
done
for f in /var/lib/systemd/deb-systemd-helper-enabled/*zerocopyd* /var/lib/systemd/deb-systemd-helper-masked/*zerocopyd*; do
  [[ -e $f || -L $f ]] && left+=("$f")
done
mountpoint -q /dev/shm/zerocopy && left+=("the tmpfs on /dev/shm/zerocopy")
((${#left[@]} == 0)) || die "purge left: ${left[*]}"
if [[ -z $user_before ]]; then  # made by this test's install: not left to the next run
  userdel zerocopy 2>/dev/null || true
  groupdel zerocopy 2>/dev/null || true
fi
say "ok (purge left nothing; the system user zerocopy stays, as Debian's policy asks)"
