#!/usr/bin/env bash
# The Debian package in a minimal Debian root: what a bare host needs that this one has.
#
#   scripts/check-package-root.sh        # as root; needs debootstrap and the Debian mirror
#
# scripts/check-package.sh (CI) installs the package on the test machine itself, which already
# has every library; this one makes a `debootstrap --variant=minbase bookworm` root in a
# temporary directory and checks there that:
#   - `dpkg -i` alone refuses to configure the package, naming the library the minimal root
#     lacks (libelf1): the Depends line is what protects a bare host;
#   - `apt-get -f install` then pulls in what it names and configures it; the user exists;
#   - `runuser -u fix-monitor -- fix-monitor config` exits 0 (the binary loads in that root);
#   - with systemd and man-db installed in the root, `systemd-analyze verify` of the unit says
#     nothing (run inside the root: ExecStart= binaries and the man page are looked up there);
#   - `dpkg --purge` leaves no path named *fix-monitor* and no user or group in the root (the
#     shadow backups /etc/passwd- and /etc/group- excepted, see examples/README.md).
# scripts/test.sh runs it after check-package.sh (reusing its .deb: package-deb.sh finds the
# build and cargo-deb in place); it downloads about 60 MB from the Debian mirror and
# took 38 s on the 2-core machine.
#
# Environment: DEB (default: scripts/package-deb.sh builds it), MIRROR (default: the Debian
# mirror of the host's apt sources, else deb.debian.org), SUITE (default bookworm).
# SC2016: dpkg-query's ${field} formats are meant for dpkg-query.
# shellcheck disable=SC2016
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE="${SUITE:-bookworm}"
CHECK_NAME=check-package-root
# shellcheck source=scripts/checks-lib.sh
source "$ROOT/scripts/checks-lib.sh"

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
if [ -z "${MIRROR:-}" ]; then
    MIRROR="$(grep -rhs '^URIs:.*debian\|^deb .*debian' /etc/apt/sources.list /etc/apt/sources.list.d/ \
        | grep -v security | sed -E 's/^URIs:[[:space:]]*//; s/^deb (\[[^]]*\] )?//' | awk '{print $1; exit}')"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/fix-package-root.XXXXXX")"
r="$dir/root"
cleanup() {
    mountpoint -q "$r/proc" && umount "$r/proc"
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
in_root() { chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }

if [ -n "${DEB:-}" ]; then
    deb="$DEB"
else
    deb="$(bash "$ROOT/scripts/package-deb.sh" | tail -n1)" || die "scripts/package-deb.sh failed"
fi
[ -f "$deb" ] || die "no package at '$deb'"

debootstrap --variant=minbase "$SUITE" "$r" "$MIRROR" > "$dir/debootstrap.log" 2>&1 \
    || { tail -n 20 "$dir/debootstrap.log" >&2; die "debootstrap $SUITE from $MIRROR failed"; }
ok "debootstrap --variant=minbase $SUITE ($(du -sh "$r" | cut -f1))"
cp /etc/resolv.conf "$r/etc/resolv.conf"
mount -t proc proc "$r/proc"
cp "$deb" "$r/tmp/fix-monitor.deb"

if out="$(in_root dpkg -i /tmp/fix-monitor.deb 2>&1)"; then
    bad "dpkg -i in the minimal root should stop on a missing dependency"
elif printf '%s\n' "$out" | grep -q 'depends on libelf1'; then
    ok "dpkg -i in the minimal root: not configured, it names libelf1"
else
    bad "dpkg -i in the minimal root failed, but not on libelf1"
    printf '%s\n' "$out" | tail -n 10 | indent
fi
if in_root sh -c 'apt-get update -q && apt-get -f install -y -q' > "$dir/apt.log" 2>&1 \
    && [ "$(in_root dpkg-query -W -f='${db:Status-Status}' fix-monitor)" = installed ] \
    && in_root getent passwd fix-monitor >/dev/null; then
    ok "apt-get -f install: $(in_root dpkg-query -W -f='${Depends}' fix-monitor); installed, user fix-monitor"
else
    bad "apt-get -f install"
    tail -n 20 "$dir/apt.log" | indent
fi
if out="$(in_root runuser -u fix-monitor -- fix-monitor config 2>&1)" \
    && printf '%s\n' "$out" | grep -q '/etc/fix-monitor/config.toml'; then
    ok "runuser -u fix-monitor -- fix-monitor config in the root"
else
    bad "runuser -u fix-monitor -- fix-monitor config in the root"
    printf '%s\n' "$out" | tail -n 10 | indent
fi
if ! in_root sh -c 'apt-get install -y -q --no-install-recommends systemd man-db' > "$dir/systemd.log" 2>&1; then
    bad "apt-get install systemd man-db in the root"
    tail -n 10 "$dir/systemd.log" | indent
elif out="$(in_root systemd-analyze verify /lib/systemd/system/fix-monitor.service 2>&1)" && [ -z "$out" ]; then
    ok "systemd-analyze verify in the root (systemd $(in_root dpkg-query -W -f='${Version}' systemd))"
else
    bad "systemd-analyze verify in the root"
    printf '%s\n' "$out" | indent
fi
if out="$(in_root dpkg --purge fix-monitor 2>&1)"; then
    ok "dpkg --purge in the root"
else
    bad "dpkg --purge in the root"
    printf '%s\n' "$out" | tail -n 10 | indent
fi
left="$(find "$r" -xdev \( -path "$r/tmp" -o -path "$r/proc" \) -prune -o \
    \( -name '*fix-monitor*' -o -name '*fix_monitor*' \) -print 2>/dev/null)"
left="$left$(grep -l '^fix-monitor:' "$r"/etc/passwd "$r"/etc/group "$r"/etc/shadow "$r"/etc/gshadow 2>/dev/null)"
if [ -z "$left" ] && ! in_root dpkg-query -W fix-monitor >/dev/null 2>&1; then
    ok "purge left nothing in the root (no path named *fix-monitor*, no user or group)"
else
    bad "purge left in the root:"
    printf '%s\n' "$left" | indent
fi

printf '%d passed, %d failed\n' "$pass" "$fail"
[ "$fail" = 0 ]
