#!/usr/bin/env bash
# Build the Debian package, install it on this machine, check it, and purge it.
#
#   scripts/check-package.sh          # as root; scripts/test.sh (CI) runs it
#
# What it proves, in order (each check prints "ok" or "FAIL"; the count is the last line):
#   - the .deb (scripts/package-deb.sh) declares its shared-library dependencies (libc6,
#     libelf1, zlib1g, libgcc-s1: the binary loads them) and adduser, and /etc/fix-monitor/config.toml as a conffile;
#   - `dpkg -i` installs it: every file dpkg lists exists, the binary runs and finds its
#     libraries, the conffile is config/config.toml, the system user and group fix-monitor
#     exist (system uid, no shell, no home), the unit is installed but neither enabled nor
#     started;
#   - the unit: `systemd-analyze verify` says nothing (this also checks that the binaries of
#     ExecStart=/ExecStartPre= exist and that the man page of Documentation= is installed, with
#     man-db), `systemd-analyze security --offline` rates it <= 2.0 like the example, it runs as
#     User=fix-monitor with empty capability sets; each drop-in the docs give for more
#     (examples/systemd/fix-monitor.service.d, shipped in /usr/share/doc/fix-monitor/examples/)
#     verifies on top of it, and rates <= 2.0 too;
#   - as the package's user (runuser, no capabilities): `fix-monitor config` exits 0 and prints
#     the installed configuration; the unit's own ExecStartPre= command line passes with the
#     state directory StateDirectory= would make; the unit's ExecStart= command line serves
#     /health (on a free port instead of 9464) with the netlink source, and stops on SIGTERM
#     with status 0; with exactly CAP_BPF and CAP_PERFMON (what ebpf.conf grants; setpriv)
#     `--source ebpf` serves /health with the eBPF source, and without them it refuses;
#   - the man page (`man -w`, its .TH line), the bash and fish completions (loaded by their
#     shells from where the package put them, they complete `fix-monitor ge` to `generate`),
#     the zsh completion (its #compdef line, and zsh -n parses it);
#   - a reinstall keeps an edited conffile and the user; `dpkg --remove` keeps the conffile;
#   - `dpkg --purge` leaves nothing: no file dpkg listed, no user or group, no /etc/fix-monitor,
#     no /var/lib/fix-monitor, and no path under /etc /usr /var/lib /var/cache /var/log /opt
#     whose name contains "fix-monitor" that was not there before the install (man-db's
#     cached copy of the man page included; the ebpf.conf drop-in is left in
#     /etc/systemd/system/fix-monitor.service.d for the purge to remove).
# Whatever fails, the package is purged on exit (trap). Exits 1 if any check failed.
#
# What it cannot prove here: that systemd starts the unit (this container has no systemd as
# PID 1; `systemd-analyze verify` loads the unit offline, and the ExecStart= line is run by hand
# as the unit's user instead, without the unit's sandbox).
#
# Environment: DEB=path/to/fix-monitor_*.deb skips the build (default: scripts/package-deb.sh).
# SC2016: the `sh -c '...'` checks expand their own "$1" on purpose. SC2015: ok() returns 0.
# shellcheck disable=SC2016,SC2015
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG=fix-monitor
UNIT=/lib/systemd/system/fix-monitor.service
CHECK_NAME=check-package
# shellcheck source=scripts/checks-lib.sh
source "$ROOT/scripts/checks-lib.sh"
# check DESCRIPTION COMMAND...: ok when COMMAND exits 0, else FAIL with its output.
check() {
    local what="$1" out
    shift
    if out="$("$@" 2>&1)"; then ok "$what"; else bad "$what"; printf '%s\n' "$out" | tail -n 20 | indent; fi
}

[ "$(id -u)" = 0 ] || die "must run as root (dpkg -i, adduser)"
for c in dpkg dpkg-deb dpkg-query systemd-analyze runuser setpriv getent curl python3 man zsh fish; do
    command -v "$c" >/dev/null || die "$c not found (scripts/fetch-tools.sh installs the tools)"
done

# dpkg, waiting (up to 2 minutes) while another dpkg or apt holds its lock: another job on the
# machine, or our own dpkg -i still finishing when a signal runs the exit trap.
dpkg_wait() {
    local out
    for _ in $(seq 60); do
        if out="$(dpkg "$@" 2>&1)"; then
            printf '%s\n' "$out"
            return 0
        fi
        case "$out" in
            *lock*) sleep 2 ;;
            *) printf '%s\n' "$out"; return 1 ;;
        esac
    done
    printf '%s\n' "$out"
    return 1
}

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fix-check-package.XXXXXX")"
server_pid=""
# The package is known to dpkg (installed, or removed with its conffiles left).
known() { dpkg-query -W -f='${db:Status-Status}' "$PKG" 2>/dev/null | grep -qv '^not-installed$'; }
# The script's own stderr, for the exit trap: a signal can run it inside a redirected command.
exec 3>&2
cleanup() {
    [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null
    if known; then
        echo "check-package: purging $PKG (exit trap)" >&3
        dpkg_wait --purge "$PKG" >/dev/null 2>&1 || echo "check-package: dpkg --purge $PKG FAILED" >&3
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
# A signal ends the run through the exit trap, once the command under way has finished (a dpkg
# run is never cut off halfway).
trap 'exit 130' INT
trap 'exit 143' TERM

# A package left by an earlier run that was killed is purged first; a user fix-monitor that
# no package made is someone's: the purge would delete it, so stop.
if known; then
    echo "check-package: $PKG is already known to dpkg (a killed earlier run?); purging it first" >&2
    dpkg_wait --purge "$PKG" >/dev/null || die "dpkg --purge $PKG (the leftover) failed"
fi
if getent passwd "$PKG" >/dev/null || getent group "$PKG" >/dev/null; then
    die "a user or group $PKG exists and no package made it; this check would delete it on purge"
fi

# Paths whose name mentions the package, outside the work trees, before anything is installed.
leftovers() {
    find /etc /usr /var/lib /var/cache /var/log /opt -xdev \
        \( -path /var/lib/containers -o -path /var/lib/docker \) -prune -o \
        \( -name '*fix-monitor*' -o -name '*fix_monitor*' \) -print 2>/dev/null | sort
}
leftovers > "$tmp/before.txt"

# ---- build --------------------------------------------------------------------------------
if [ -n "${DEB:-}" ]; then
    deb="$DEB"
else
    deb="$(bash "$ROOT/scripts/package-deb.sh" | tail -n1)" || die "scripts/package-deb.sh failed"
fi
[ -f "$deb" ] || die "no package at '$deb'"
ok "built $(basename "$deb") ($(du -h "$deb" | cut -f1))"

depends="$(dpkg-deb -f "$deb" Depends)"
check "Depends: libc6, libelf1, zlib1g, libgcc-s1 (loaded by the binary), adduser: $depends" \
    sh -c 'for p in libc6 libelf1 zlib1g libgcc-s1 adduser; do printf "%s\n" "$1" | grep -qw "$p" || exit 1; done' _ "$depends"
check "conffiles: /etc/fix-monitor/config.toml" \
    sh -c 'dpkg-deb --ctrl-tarfile "$1" | tar -xO ./conffiles | grep -qx /etc/fix-monitor/config.toml' _ "$deb"

# ---- install ------------------------------------------------------------------------------
dpkg_wait -i "$deb" > "$tmp/install.log" 2>&1 || { cat "$tmp/install.log" >&2; die "dpkg -i failed"; }
check "dpkg -i: status installed" sh -c '[ "$(dpkg-query -W -f="\${db:Status-Status}" fix-monitor)" = installed ]'
dpkg -L "$PKG" > "$tmp/files.txt"

missing=""
for f in /usr/bin/fix-monitor /usr/lib/systemd/system/fix-monitor.service /etc/fix-monitor/config.toml \
    /usr/share/man/man1/fix-monitor.1.gz /usr/share/bash-completion/completions/fix-monitor \
    /usr/share/zsh/vendor-completions/_fix-monitor /usr/share/fish/vendor_completions.d/fix-monitor.fish \
    /usr/share/doc/fix-monitor/copyright /usr/share/doc/fix-monitor/README.md \
    /usr/share/doc/fix-monitor/DEPLOYING.md; do
    grep -qx "$f" "$tmp/files.txt" && [ -f "$f" ] || missing="$missing $f"
done
[ -z "$missing" ] && ok "dpkg -L: binary, unit, conffile, man page, 3 completions, docs" \
    || bad "dpkg -L: missing or not installed:$missing"
absent=""
while read -r f; do [ -e "$f" ] || absent="$absent $f"; done < "$tmp/files.txt"
[ -z "$absent" ] && ok "every path dpkg -L lists ($(wc -l < "$tmp/files.txt")) exists" \
    || bad "dpkg -L lists paths that do not exist:$absent"
check "/lib/systemd/system/fix-monitor.service is the installed unit" test -f "$UNIT"

check "fix-monitor --version" /usr/bin/fix-monitor --version
check "ldd /usr/bin/fix-monitor: every library found, libelf and zlib among them" \
    sh -c 'out="$(ldd /usr/bin/fix-monitor)" && ! printf "%s\n" "$out" | grep -q "not found" && printf "%s\n" "$out" | grep -q libelf && printf "%s\n" "$out" | grep -q libz'
check "the conffile is config/config.toml, listed in dpkg's conffiles" \
    sh -c 'cmp /etc/fix-monitor/config.toml "$1/config/config.toml" && dpkg-query -W -f="\${Conffiles}\n" fix-monitor | grep -q "^ /etc/fix-monitor/config.toml "' _ "$ROOT"

pw="$(getent passwd "$PKG")"
grp="$(getent group "$PKG")"
uid="$(printf '%s' "$pw" | cut -d: -f3)"
gid="$(printf '%s' "$pw" | cut -d: -f4)"
if [ -n "$pw" ] && [ -n "$grp" ] && [ "$uid" -lt 1000 ] && [ "$gid" = "$(printf '%s' "$grp" | cut -d: -f3)" ] \
    && [ "$(printf '%s' "$pw" | cut -d: -f7)" = /usr/sbin/nologin ] \
    && [ "$(printf '%s' "$pw" | cut -d: -f6)" = /nonexistent ] && [ ! -e /nonexistent ]; then
    ok "system user and group fix-monitor ($pw)"
else
    bad "user fix-monitor: '$pw', group: '$grp' (want a system uid, its own group, nologin, /nonexistent)"
fi
check "the unit is not enabled on install" \
    sh -c '! ls /etc/systemd/system/*.wants/fix-monitor.service >/dev/null 2>&1'

# ---- the unit -----------------------------------------------------------------------------
if out="$(systemd-analyze verify "$UNIT" 2>&1)" && [ -z "$out" ]; then
    ok "systemd-analyze verify $UNIT"
else
    bad "systemd-analyze verify $UNIT"
    printf '%s\n' "$out" | indent
fi
check_unit_exposure "$UNIT"
check "unit: User=fix-monitor, Group=fix-monitor, no DynamicUser=, empty capability sets" \
    sh -c 'grep -qx User=fix-monitor "$1" && grep -qx Group=fix-monitor "$1" && ! grep -q "^DynamicUser=" "$1" \
        && grep -qx CapabilityBoundingSet= "$1" && grep -qx AmbientCapabilities= "$1" \
        && [ "$(grep -c "^CapabilityBoundingSet=\|^AmbientCapabilities=" "$1")" = 2 ]' _ "$UNIT"

# The drop-ins the docs give for more capabilities (shipped as examples): each must verify,
# on top of the installed unit, where systemd would read it from.
dropdir=/etc/systemd/system/fix-monitor.service.d
for conf in /usr/share/doc/fix-monitor/examples/*.conf; do
    name="$(basename "$conf")"
    install -D -m 0644 "$conf" "$dropdir/$name"
    # verify reads the drop-ins (an unknown key in one is reported); security rates the result.
    if out="$(systemd-analyze verify "$UNIT" 2>&1)" && [ -z "$out" ] \
        && sec="$(systemd-analyze security --offline=yes --threshold=20 "$UNIT" 2>&1)"; then
        ok "systemd-analyze verify and security with drop-in $name: $(printf '%s\n' "$sec" | grep -o 'exposure level.*' | head -n1)"
    else
        bad "systemd-analyze verify or security (<= 2.0) with drop-in $name"
        printf '%s\n' "$out" "${sec:-}" | grep -v '✓' | tail -n 20 | indent
    fi
    rm -f "$dropdir/$name"
done
# Left in place for the purge to remove (the postrm deletes the drop-in directory).
install -D -m 0644 /usr/share/doc/fix-monitor/examples/ebpf.conf "$dropdir/ebpf.conf"

# ---- as the package's user ----------------------------------------------------------------
if out="$(runuser -u "$PKG" -- fix-monitor config 2>&1)" \
    && printf '%s\n' "$out" | grep -q 'venue-a' \
    && printf '%s\n' "$out" | grep -q '/etc/fix-monitor/config.toml'; then
    ok "runuser -u fix-monitor -- fix-monitor config (exit 0, the installed config)"
else
    bad "runuser -u fix-monitor -- fix-monitor config"
    printf '%s\n' "$out" | tail -n 20 | indent
fi

# The unit's own command lines, as systemd would run them but without its sandbox: the state
# directory first (StateDirectory=fix-monitor, StateDirectoryMode=0700, owned by User=).
install -d -o "$PKG" -g "$PKG" -m 0700 /var/lib/fix-monitor
pre="$(sed -n 's/^ExecStartPre=//p' "$UNIT")"
start="$(sed -n 's/^ExecStart=//p' "$UNIT")"
# The URL a sidecar started in the background says it listens on in LOG, waiting up to TRIES
# tenths of a second while PID lives; empty if it never says.
listen_url() {
    local log="$1" pid="$2" tries="$3" u=""
    for _ in $(seq "$tries"); do
        u="$(sed -n 's|.*listening on \(http://[0-9.]*:[0-9]*\).*|\1|p' "$log" | head -n1)"
        [ -n "$u" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    printf '%s' "$u"
}

# Whether URL's /health says the source is WANT; leaves the body in $health.
health_source_is() {
    local url="$1" want="$2"
    health=""
    [ -n "$url" ] && health="$(curl -fsS --max-time 5 "$url/health")" \
        && printf '%s' "$health" \
        | python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["source"] != sys.argv[1])' "$want"
}

# SIGTERM to the sidecar in $server_pid (WHAT, its log LOG): it must exit 0.
stop_server() {
    local what="$1" log="$2" rc
    kill -TERM "$server_pid" 2>/dev/null
    wait "$server_pid"
    rc=$?
    server_pid=""
    if [ "$rc" = 0 ]; then
        ok "SIGTERM: $what exited 0"
    else
        bad "SIGTERM: $what exited $rc"
        tail -n 5 "$log" | indent
    fi
}

# serves_source WHAT WANT LOG TRIES COMMAND...: starts COMMAND (a sidecar on 127.0.0.1:0) in the
# background with its output in LOG; it must say where it listens within TRIES tenths of a
# second, serve /health with source WANT, and exit 0 on SIGTERM.
serves_source() {
    local what="$1" want="$2" log="$3" tries="$4" url
    shift 4
    "$@" > "$log" 2>&1 &
    server_pid=$!
    url="$(listen_url "$log" "$server_pid" "$tries")"
    if health_source_is "$url" "$want"; then
        ok "$what: /health at $url says source $want"
    else
        bad "$what: no /health with source $want (url '$url')"
        { printf '%s\n' "${health:-}"; tail -n 20 "$log"; } | indent
    fi
    stop_server "$what" "$log"
}

# shellcheck disable=SC2086 # the unit's command line, split on spaces as systemd does here
check "ExecStartPre= as fix-monitor: $pre" runuser -u "$PKG" -- $pre
# shellcheck disable=SC2086
# setpriv, not runuser, in the background: runuser would stand between the signal and
# fix-monitor (it forwards SIGTERM, then dies of it itself, 143), and its status is what is checked.
serves_source "ExecStart= as fix-monitor (--listen 127.0.0.1:0)" netlink "$tmp/run.log" 100 \
    setpriv --reuid "$PKG" --regid "$PKG" --clear-groups $start --listen 127.0.0.1:0
check "the state directory was written as fix-monitor" \
    sh -c '[ "$(stat -c %U /var/lib/fix-monitor)" = fix-monitor ] && [ -n "$(ls -A /var/lib/fix-monitor)" ]'

# The capabilities ebpf.conf grants are enough for eBPF mode, and needed: as fix-monitor
# with exactly CAP_BPF and CAP_PERFMON (bounding, inheritable and ambient sets; setpriv, as
# AmbientCapabilities= does), `--source ebpf` loads its programs and serves /health with
# source ebpf; with neither it refuses, naming them. Without systemd's sandbox.
# shellcheck disable=SC2054 # setpriv's capability lists are comma-separated
caps=(--reuid "$PKG" --regid "$PKG" --clear-groups --inh-caps -all,+bpf,+perfmon
    --ambient-caps -all,+bpf,+perfmon --bounding-set -all,+bpf,+perfmon)
serves_source "as fix-monitor with only CAP_BPF and CAP_PERFMON, --source ebpf" ebpf "$tmp/ebpf.log" 150 \
    setpriv "${caps[@]}" fix-monitor run --config /etc/fix-monitor/config.toml --source ebpf \
    --listen 127.0.0.1:0
if out="$(timeout 30 runuser -u "$PKG" -- fix-monitor run --config /etc/fix-monitor/config.toml --source ebpf \
    --listen 127.0.0.1:0 2>&1)"; then
    bad "as fix-monitor without capabilities, --source ebpf should refuse to start"
elif printf '%s\n' "$out" | grep -q 'CAP_BPF'; then
    ok "as fix-monitor without capabilities, --source ebpf refuses, naming CAP_BPF"
else
    bad "as fix-monitor without capabilities, --source ebpf failed without naming CAP_BPF"
    printf '%s\n' "$out" | tail -n 10 | indent
fi

# ---- man page and completions -------------------------------------------------------------
check "man -w fix-monitor" sh -c '[ "$(man -w fix-monitor)" = /usr/share/man/man1/fix-monitor.1.gz ]'
check "man page: zcat | head has .TH fix-monitor" \
    sh -c 'zcat /usr/share/man/man1/fix-monitor.1.gz | head -n 5 | grep -q "^\.TH fix-monitor"'
check "bash completion: sourced, completes 'fix-monitor ge' to generate" bash -c '
    source /usr/share/bash-completion/completions/fix-monitor || exit 1
    complete -p fix-monitor || exit 1
    fn="$(complete -p fix-monitor | sed -n "s/.*-F \([^ ]*\).*/\1/p")"
    COMP_WORDS=(fix-monitor ge); COMP_CWORD=1; COMP_LINE="fix-monitor ge"; COMP_POINT=${#COMP_LINE}
    "$fn" fix-monitor ge fix-monitor
    printf "%s\n" "${COMPREPLY[@]}" | grep -qx generate'
check "zsh completion: #compdef fix-monitor, zsh -n parses it" \
    sh -c 'head -n1 /usr/share/zsh/vendor-completions/_fix-monitor | grep -qx "#compdef fix-monitor" \
        && zsh -n /usr/share/zsh/vendor-completions/_fix-monitor'
check "fish completion: fish -n parses it, fish (autoloading it) completes 'fix-monitor ge' to generate" \
    sh -c 'fish -n /usr/share/fish/vendor_completions.d/fix-monitor.fish \
        && HOME="$1" fish -c "complete -C \"fix-monitor ge\"" | cut -f1 | grep -qx generate' _ "$tmp"

# ---- reinstall, remove --------------------------------------------------------------------
echo '# edited by check-package.sh' >> /etc/fix-monitor/config.toml
if dpkg_wait -i "$deb" > "$tmp/reinstall.log" 2>&1 && grep -q 'edited by check-package' /etc/fix-monitor/config.toml \
    && [ "$(getent passwd "$PKG" | cut -d: -f3)" = "$uid" ]; then
    ok "reinstall: the edited conffile and the user are kept"
else
    bad "reinstall"
    tail -n 20 "$tmp/reinstall.log" | indent
fi
if dpkg_wait --remove "$PKG" > "$tmp/remove.log" 2>&1 && [ ! -e /usr/bin/fix-monitor ] \
    && grep -q 'edited by check-package' /etc/fix-monitor/config.toml \
    && [ "$(dpkg-query -W -f='${db:Status-Status}' "$PKG")" = config-files ]; then
    ok "dpkg --remove: binary gone, conffile kept (status config-files)"
else
    bad "dpkg --remove"
    tail -n 20 "$tmp/remove.log" | indent
fi

# ---- purge --------------------------------------------------------------------------------
if dpkg_wait --purge "$PKG" > "$tmp/purge.log" 2>&1; then
    ok "dpkg --purge"
else
    bad "dpkg --purge"
    tail -n 20 "$tmp/purge.log" | indent
fi
check "dpkg no longer knows $PKG" sh -c '! dpkg-query -W -f="\${db:Status-Status}" fix-monitor 2>/dev/null | grep -qv "^not-installed$"'
left=""
while read -r f; do
    # Directories other packages share (/usr/bin, /etc, ...) stay; the package's own go.
    if [ -d "$f" ] && [ ! -L "$f" ]; then
        case "$f" in *fix-monitor*) [ -e "$f" ] && left="$left $f" ;; esac
    elif [ -e "$f" ] || [ -L "$f" ]; then
        left="$left $f"
    fi
done < "$tmp/files.txt"
[ -z "$left" ] && ok "purge: nothing dpkg -L listed is left" || bad "purge left:$left"
check "purge: no user, no group fix-monitor" \
    sh -c '! getent passwd fix-monitor && ! getent group fix-monitor && ! grep -q "^fix-monitor:" /etc/passwd /etc/group /etc/shadow /etc/gshadow'
check "purge: no /etc/fix-monitor, no /var/lib/fix-monitor" \
    sh -c '[ ! -e /etc/fix-monitor ] && [ ! -e /var/lib/fix-monitor ] && [ ! -e /var/lib/private/fix-monitor ]'
leftovers > "$tmp/after.txt"
if cmp -s "$tmp/before.txt" "$tmp/after.txt"; then
    ok "purge: no new path named *fix-monitor* under /etc /usr /var/lib /var/cache /var/log /opt"
else
    bad "purge: paths named *fix-monitor* that were not there before"
    diff "$tmp/before.txt" "$tmp/after.txt" | indent
fi

printf '%d passed, %d failed\n' "$pass" "$fail"
[ "$fail" = 0 ]
