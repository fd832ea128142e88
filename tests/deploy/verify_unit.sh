#!/usr/bin/env bash
# Checks the deployment files without installing anything:
#   - deploy/zerocopyd.service and deploy/dev-shm-zerocopy.mount pass
#     `systemd-analyze verify` (unknown keys or sections, bad values, a mount
#     name that does not match Where=);
#   - deploy/zerocopy.sysusers.conf and deploy/zerocopy.tmpfiles.conf parse,
#     applied to a scratch root directory, never to this machine;
#   - config/zerocopyd.toml loads (`zerocopyd --config ... --print-config`)
#     and sets every key the daemon knows;
#   - the files agree on the paths (socket directory, segment directory).
#
#   tests/deploy/verify_unit.sh BUILD/daemon/zerocopyd [REPO]
#
# REPO defaults to the checkout holding this script. Exits 0 and prints
# "verify_unit: ok" on success; 77 (ctest's SKIP_RETURN_CODE) when the
# systemd tools are missing; 1 with the reasons otherwise.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 PATH/TO/zerocopyd [REPO]" >&2
  exit 2
fi
[[ -x $1 ]] || { echo "verify_unit: $1 is not an executable (build zerocopyd first)" >&2; exit 1; }
zerocopyd=$(realpath "$1")
repo=$(realpath "${2:-$(dirname "${BASH_SOURCE[0]}")/../..}")
deploy=$repo/deploy

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles systemd-escape; do
  if ! command -v "$tool" >/dev/null; then
    echo "verify_unit: SKIP: $tool is not installed (apt-get install systemd)"
    exit 77
  fi
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failures=0
fail() {
  echo "verify_unit: FAIL: $*" >&2
  failures=$((failures + 1))
}

service=zerocopyd.service
mount=dev-shm-zerocopy.mount

# --- systemd units ----------------------------------------------------------
#
# `systemd-analyze verify` reports most mistakes as warnings ("Unknown key
# ..., ignoring") and still exits 0, so its output is read line by line. It
# also fails when ExecStart='s binary is missing: the copies run the binary
# under test instead of /usr/bin/zerocopyd.

# Prints the lines of verify's output that are problems with UNIT_DIR's
# units; exits non-zero when verify itself failed.
verify_units() {
  local dir=$1 out rc=0
  out=$(systemd-analyze verify --man=no --generators=no "$dir/$service" "$dir/$mount" 2>&1) || rc=$?
  # Lines about our units, except the ones that are expected on a build
  # machine (systemd 252 prints none of them; later versions might): no
  # zerocopy user or group, no /etc/default/zerocopyd.
  printf '%s\n' "$out" \
    | grep -E "$dir/|$service|$mount" \
    | grep -viE "/etc/default/zerocopyd|(user|group) .?zerocopy.? .*(not exist|not found|unknown|resolve)" \
    || true
  return "$rc"
}

units=$scratch/units
mkdir -p "$units"
cp "$deploy/$service" "$deploy/$mount" "$units/"
grep -q '^ExecStart=/usr/bin/zerocopyd ' "$units/$service" \
  || fail "$service: ExecStart= does not start /usr/bin/zerocopyd"
sed -i "s|^ExecStart=/usr/bin/zerocopyd |ExecStart=$zerocopyd |" "$units/$service"

if problems=$(verify_units "$units"); then
  if [[ -n $problems ]]; then
    fail "systemd-analyze verify:"
    printf '  %s\n' "$problems" >&2
  fi
else
  fail "systemd-analyze verify exited non-zero:"
  printf '  %s\n' "$problems" >&2
fi

# The filter above must still see real mistakes (verify's messages change
# between systemd versions): a unit with an unknown key has to be caught.
broken=$scratch/broken
mkdir -p "$broken"
cp "$units/$service" "$units/$mount" "$broken/"
sed -i 's/^Type=notify$/Type=notify\nNoSuchDirective=yes/' "$broken/$service"
if problems=$(verify_units "$broken") && [[ -z $problems ]]; then
  fail "systemd-analyze verify did not report an unknown directive; this check is blind"
fi

# A mount unit is only loaded when its name is the escaped mount point.
where=$(sed -n 's/^Where=//p' "$deploy/$mount")
[[ $(systemd-escape -p --suffix=mount "$where") == "$mount" ]] \
  || fail "$mount: Where=$where needs the unit name $(systemd-escape -p --suffix=mount "$where")"
for key in Wants After; do
  grep -Eq "^$key=(.* )?$mount( |$)" "$deploy/$service" || fail "$service: $key= does not name $mount"
done

# --- sysusers.d and tmpfiles.d, applied to a scratch root --------------------
#
# Both tools take --root; configuration files given by path would be looked
# up inside the root, so the files are copied into its search path. Parse
# errors are printed as "FILE:LINE: message" (sysusers still exits 0).

root=$scratch/root
mkdir -p "$root/etc" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
cp "$deploy/zerocopy.sysusers.conf" "$root/usr/lib/sysusers.d/zerocopy.conf"
cp "$deploy/zerocopy.tmpfiles.conf" "$root/usr/lib/tmpfiles.d/zerocopy.conf"

if ! out=$(systemd-sysusers --root="$root" 2>&1); then
  fail "systemd-sysusers exited non-zero:"
  printf '  %s\n' "$out" >&2
elif grep -E '\.conf:[0-9]+:' <<<"$out" >&2; then
  fail "zerocopy.sysusers.conf has the errors above"
fi
grep -q '^zerocopy:' "$root/etc/passwd" 2>/dev/null || fail "zerocopy.sysusers.conf does not create the user zerocopy"
grep -q '^zerocopy:' "$root/etc/group" 2>/dev/null || fail "zerocopy.sysusers.conf does not create the group zerocopy"

# As root, create the directory in the scratch root and check it; otherwise
# (chown would be refused) --remove, which parses every line and leaves a
# `d` entry alone.
if [[ $(id -u) -eq 0 ]]; then tmpfiles_action=--create; else tmpfiles_action=--remove; fi
if ! out=$(systemd-tmpfiles --root="$root" "$tmpfiles_action" 2>&1) || grep -qE '\.conf:[0-9]+:' <<<"$out"; then
  fail "systemd-tmpfiles $tmpfiles_action:"
  printf '  %s\n' "$out" >&2
fi
tmpfiles_dir=$(awk '$1 == "d" { print $2 }' "$deploy/zerocopy.tmpfiles.conf")
if [[ $tmpfiles_action == --create && -f $root/etc/passwd && -f $root/etc/group ]]; then
  uid=$(awk -F: '$1 == "zerocopy" { print $3 }' "$root/etc/passwd")
  gid=$(awk -F: '$1 == "zerocopy" { print $3 }' "$root/etc/group")
  got=$(stat -c '%a %u:%g' "$root$tmpfiles_dir" 2>/dev/null || echo missing)
  [[ $got == "710 $uid:$gid" ]] || fail "tmpfiles made $tmpfiles_dir '$got', want '710 $uid:$gid'"
fi

# --- config/zerocopyd.toml ---------------------------------------------------

config=$repo/config/zerocopyd.toml
loaded=1
if ! printed=$("$zerocopyd" --config "$config" --print-config 2>&1); then
  fail "zerocopyd does not load $config:"
  printf '  %s\n' "$printed" >&2
  loaded=0
fi
# Every key the daemon prints is set (and so documented) in the example.
defaults=$("$zerocopyd" --print-config 2>&1) || fail "zerocopyd --print-config: $defaults"
want=$(sed -n 's/^\([a-z_]*\) = .*/\1/p' <<<"$defaults" | sort)
have=$(sed -n 's/^\([a-z_]*\) *= .*/\1/p' "$config" | sort)
if [[ $want != "$have" ]]; then
  fail "config/zerocopyd.toml keys differ from zerocopyd --print-config (< missing, > unknown):"
  diff <(echo "$want") <(echo "$have") | grep '^[<>]' >&2 || true
fi

# The paths have to agree across the files.
value() { sed -n "s/^$1 = ['\"]\\(.*\\)['\"]\$/\\1/p" <<<"$printed"; }
if ((loaded)); then
  socket=$(value socket)
  segment_dir=$(value segment_dir)
  runtime_dir=/run/$(sed -n 's/^RuntimeDirectory=//p' "$deploy/$service")
  [[ $(dirname "$socket") == "$runtime_dir" ]] \
    || fail "socket '$socket' is not in the unit's RuntimeDirectory $runtime_dir"
  [[ $segment_dir == "$where" ]] || fail "segment_dir '$segment_dir' is not the mount's Where=$where"
  [[ $segment_dir == "$tmpfiles_dir" ]] || fail "segment_dir '$segment_dir' is not tmpfiles' $tmpfiles_dir"
  grep -Eq "^ReadWritePaths=-?$segment_dir\$" "$deploy/$service" \
    || fail "$service: ReadWritePaths= is not segment_dir '$segment_dir'"
  for key in socket_group segment_group; do
    [[ $(value "$key") == zerocopy ]] || fail "$key is '$(value "$key")', want the unit's group zerocopy"
  done
fi

if ((failures)); then
  echo "verify_unit: $failures check(s) failed" >&2
  exit 1
fi
echo "verify_unit: ok"
