#!/usr/bin/env bash
# Build the RPM and check it with rpm's own tools (Debian's `rpm` package: rpm, rpm2archive).
#
#   scripts/check-rpm.sh          # scripts/test.sh (CI) runs it after the .deb's checks
#
# What it proves, in order (each check prints "ok" or "FAIL"; the count is the last line):
#   - `rpm -K` reads the package and its digests are right; `rpm -qp --qf` gives the name,
#     version (Cargo.toml's), release 1, this machine's architecture and the license;
#   - `rpm -qlp` lists exactly the expected paths (below; the drop-in examples are the tree's
#     examples/systemd/fix-monitor.service.d/*.conf): any path missing or extra fails, with the
#     difference shown; every entry is owned by root:root, the binary 0755, every other file
#     0644 (the package owns no directory: Cargo.toml says why);
#   - `rpm -qcp` lists only /etc/fix-monitor/config.toml, and its flags say noreplace;
#     `rpm -qdp` lists the man page, README.md, DEPLOYING.md and the drop-in examples;
#   - `rpm -qp --scripts`: the four scriptlets are scripts/rpm/{pre,post,preun,postun} byte for
#     byte (cargo-generate-rpm would take a mistyped path as the script's text), run by
#     /bin/sh; %pre holds the user creation (getent ... || groupadd -r / useradd -r -s
#     /sbin/nologin -d /var/lib/fix-monitor); and each is run by dash with stub commands that
#     log their arguments: %pre makes the group and user when getent finds none and nothing
#     when it finds them; %post only reloads systemd (never enable, never start); %preun
#     disables and stops on erase, nothing on upgrade; %postun reloads, and on upgrade
#     try-restarts; without systemctl on PATH all four exit 0 doing nothing;
#   - `rpm -qp --requires`: /bin/sh, /usr/sbin/useradd, /usr/sbin/groupadd, rpmlib() features,
#     and one 64-bit soname for each library `ldd` says the packaged binary loads (libc, libelf,
#     libz, libgcc_s among them): nothing else, no Debian package name; `--provides`:
#     fix-monitor and fix-monitor(ARCH) at VERSION-RELEASE, nothing else;
#   - `rpm2archive` extracts the payload: it holds the paths `rpm -qlp` lists; the binary runs
#     (`--version` names the version) and `fix-monitor config --config` with the packaged
#     config exits 0 and shows its targets; the config, README.md, DEPLOYING.md and the drop-ins
#     are the tree's files; the man page has its .TH line; the completions are not empty;
#   - the packaged unit: `systemd-analyze verify` says nothing (on a copy whose two command
#     lines name the extracted binary, as the package is not installed; man-db finds the
#     payload's man page for Documentation= through MANPATH), `systemd-analyze security
#     --offline` rates it <= 2.0 like the example, and it runs as User=fix-monitor with empty
#     capability sets;
#   - `rpm -i --root` into an empty directory (--nodeps, --noscripts: no RPM distribution
#     here to satisfy Requires or run scriptlets in) installs it: `rpm -V` finds every file as
#     packaged; an edited config survives `rpm -e` as config.toml.rpmsave and the erase leaves
#     nothing else of the package.
# Exits 1 if any check failed.
#
# What it cannot prove here: that the package installs and runs on an RPM distribution
# (Fedora, RHEL, SUSE): Requires resolved by dnf or zypper, the scriptlets run by rpm on such
# a system, systemd starting the unit. This is a Debian machine with Debian's rpm.
#
# Environment: RPM=path/to/fix-monitor-*.rpm skips the build (default: scripts/package-rpm.sh,
# which reads PACKAGE_PROFILE).
# SC2016: the `sh -c '...'` checks expand their own "$1" on purpose. SC2015: ok() returns 0.
# shellcheck disable=SC2016,SC2015
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECK_NAME=check-rpm
# shellcheck source=scripts/checks-lib.sh
source "$ROOT/scripts/checks-lib.sh"
# check DESCRIPTION COMMAND...: ok when COMMAND exits 0, else FAIL with its output.
check() {
    local what="$1" out
    shift
    if out="$("$@" 2>&1)"; then ok "$what"; else bad "$what"; printf '%s\n' "$out" | tail -n 20 | indent; fi
}

for c in rpm rpm2archive tar systemd-analyze dash python3 man readelf ldd; do
    command -v "$c" >/dev/null || die "$c not found (scripts/fetch-tools.sh installs the tools)"
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fix-check-rpm.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# ---- build --------------------------------------------------------------------------------
if [ -n "${RPM:-}" ]; then
    pkg="$RPM"
else
    pkg="$(bash "$ROOT/scripts/package-rpm.sh" | tail -n1)" || die "scripts/package-rpm.sh failed"
fi
[ -f "$pkg" ] || die "no package at '$pkg'"
pkg="$(realpath "$pkg")"  # the payload is extracted from another directory
ok "built $(basename "$pkg") ($(du -h "$pkg" | cut -f1))"

version="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "fix-monitor"))')"
arch="$(uname -m)"
q() { rpm -qp "$@" "$pkg" 2>/dev/null; }

# ---- header -------------------------------------------------------------------------------
check "rpm -K: digests OK (unsigned)" sh -c 'rpm -K --nosignature "$1" | grep -q "digests OK"' _ "$pkg"
nva="$(q --qf '%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{LICENSE}')"
[ "$nva" = "fix-monitor $version 1 $arch Apache-2.0" ] \
    && ok "rpm -qp --qf '%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{LICENSE}': $nva" \
    || bad "name version release arch license: '$nva', want 'fix-monitor $version 1 $arch Apache-2.0'"

# ---- files --------------------------------------------------------------------------------
{
    cat <<'EOF'
/etc/fix-monitor/config.toml
/usr/bin/fix-monitor
/usr/lib/systemd/system/fix-monitor.service
/usr/share/bash-completion/completions/fix-monitor
/usr/share/doc/fix-monitor/DEPLOYING.md
/usr/share/doc/fix-monitor/README.md
/usr/share/fish/vendor_completions.d/fix-monitor.fish
/usr/share/man/man1/fix-monitor.1.gz
/usr/share/zsh/site-functions/_fix-monitor
EOF
    for conf in "$ROOT"/examples/systemd/fix-monitor.service.d/*.conf; do
        printf '/usr/share/doc/fix-monitor/examples/%s\n' "$(basename "$conf")"
    done
} | LC_ALL=C sort > "$tmp/expected.txt"
q -l | LC_ALL=C sort > "$tmp/files.txt"
if diff -u "$tmp/expected.txt" "$tmp/files.txt" > "$tmp/files.diff"; then
    ok "rpm -qlp: exactly the $(wc -l < "$tmp/expected.txt") expected paths"
else
    bad "rpm -qlp: not the expected paths (- missing, + extra)"
    grep '^[-+]/' "$tmp/files.diff" | indent
fi

# Owner and mode of each entry: root:root; 0755 for the binary (and a directory), else 0644.
wrong="$(q --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]' | awk '
    $3 == "/usr/bin/fix-monitor" { want = "-rwxr-xr-x" }
    $3 != "/usr/bin/fix-monitor" { want = (substr($1, 1, 1) == "d") ? "drwxr-xr-x" : "-rw-r--r--" }
    $1 != want || $2 != "root:root" { print }')"
[ -z "$wrong" ] && ok "every entry root:root, the binary 0755, the other files 0644" \
    || { bad "owner or mode not as packaged:"; printf '%s\n' "$wrong" | indent; }

check "rpm -qcp: only /etc/fix-monitor/config.toml, %config(noreplace)" sh -c '
    [ "$(rpm -qcp "$1" 2>/dev/null)" = /etc/fix-monitor/config.toml ] \
    && rpm -qp --qf "[%{FILEFLAGS:fflags} %{FILENAMES}\n]" "$1" 2>/dev/null | grep -qx "cn /etc/fix-monitor/config.toml"' _ "$pkg"
{
    printf '%s\n' /usr/share/doc/fix-monitor/DEPLOYING.md /usr/share/doc/fix-monitor/README.md \
        /usr/share/man/man1/fix-monitor.1.gz
    grep '^/usr/share/doc/fix-monitor/examples/' "$tmp/expected.txt"
} | LC_ALL=C sort > "$tmp/docs-expected.txt"
check "rpm -qdp: the man page, README.md, DEPLOYING.md, the drop-in examples" \
    sh -c 'rpm -qdp "$1" 2>/dev/null | LC_ALL=C sort | diff -u "$2" -' _ "$pkg" "$tmp/docs-expected.txt"

# ---- scriptlets ---------------------------------------------------------------------------
q --scripts > "$tmp/scripts.txt"
for s in PREIN:pre:preinstall POSTIN:post:postinstall PREUN:preun:preuninstall POSTUN:postun:postuninstall; do
    IFS=: read -r tag name label <<< "$s"
    diff <(q --qf "%{$tag}") "$ROOT/scripts/rpm/$name" > "$tmp/s.diff"
    same=$?
    if [ "$same" = 0 ] && grep -qx "$label scriptlet (using /bin/sh):" "$tmp/scripts.txt"; then
        ok "%{$tag}: scripts/rpm/$name byte for byte, run by /bin/sh"
    else
        bad "%{$tag} is not scripts/rpm/$name, or not run by /bin/sh"
        { indent < "$tmp/s.diff"; grep "^$label scriptlet" "$tmp/scripts.txt" | indent; }
    fi
done
check "rpm -qp --scripts: preinstall creates the user (getent || groupadd -r / useradd -r, nologin, /var/lib/fix-monitor)" \
    sh -c 'sed -n "/^preinstall scriptlet/,/^postinstall scriptlet/p" "$1" > "$1.pre" \
        && grep -q "getent group fix-monitor >/dev/null || groupadd -r fix-monitor" "$1.pre" \
        && grep -q "getent passwd fix-monitor >/dev/null || useradd -r " "$1.pre" \
        && grep -q -- "-s /sbin/nologin" "$1.pre" && grep -q -- "-d /var/lib/fix-monitor" "$1.pre"' _ "$tmp/scripts.txt"

# Each scriptlet run by dash (rpm runs /bin/sh, here dash as on Debian; on Fedora bash) with a
# PATH of stubs only: each stub appends its name and arguments to the log; `getent` answers as
# STUB_GETENT says (0: the user exists, 2: it does not). With no systemctl stub, the scriptlet
# must see no systemctl at all.
stubs="$tmp/stubs"
mkdir -p "$stubs"
for c in getent groupadd useradd systemctl; do
    printf '#!/bin/sh\necho "%s $*" >> "$STUB_LOG"\n[ %s != getent ] || exit "${STUB_GETENT:-0}"\n' "$c" "$c" \
        > "$stubs/$c"
done
chmod +x "$stubs"/*
mkdir -p "$tmp/nostubs"
# run_scriptlet NAME ARG GETENT [nosystemctl]: prints the commands it ran (one line each, with
# the exit status last), or fails.
run_scriptlet() {
    local path="$stubs"
    [ "${4:-}" = nosystemctl ] && { cp "$stubs/getent" "$stubs/groupadd" "$stubs/useradd" "$tmp/nostubs/"; path="$tmp/nostubs"; }
    : > "$tmp/stub.log"
    env -i PATH="$path" STUB_LOG="$tmp/stub.log" STUB_GETENT="$3" /bin/dash "$ROOT/scripts/rpm/$1" "$2" \
        > "$tmp/stub.out" 2>&1
    local rc=$?
    cat "$tmp/stub.log"
    echo "exit $rc"
}
# expect_scriptlet WHAT NAME ARG GETENT WANT [nosystemctl]
expect_scriptlet() {
    local what="$1" got want="$5"
    got="$(run_scriptlet "$2" "$3" "$4" "${6:-}")"
    if [ "$got" = "$want" ]; then
        ok "$what"
    else
        bad "$what"
        { echo "want:"; printf '%s\n' "$want"; echo "got:"; printf '%s\n' "$got"; cat "$tmp/stub.out"; } | indent
    fi
}
nl=$'\n'
expect_scriptlet "%pre 1, no such user: groupadd -r, useradd -r (system, nologin, no home made)" pre 1 2 \
    "getent group fix-monitor${nl}groupadd -r fix-monitor${nl}getent passwd fix-monitor${nl}useradd -r -g fix-monitor -M -d /var/lib/fix-monitor -s /sbin/nologin -c fix-monitor sidecar fix-monitor${nl}exit 0"
expect_scriptlet "%pre 2, the user exists: nothing made" pre 2 0 \
    "getent group fix-monitor${nl}getent passwd fix-monitor${nl}exit 0"
expect_scriptlet "%post 1: systemctl daemon-reload only (not enabled, not started)" post 1 0 \
    "systemctl daemon-reload${nl}exit 0"
expect_scriptlet "%preun 0 (erase): systemctl --no-reload disable --now" preun 0 0 \
    "systemctl --no-reload disable --now fix-monitor.service${nl}exit 0"
expect_scriptlet "%preun 1 (upgrade): nothing" preun 1 0 "exit 0"
expect_scriptlet "%postun 0 (erase): daemon-reload" postun 0 0 "systemctl daemon-reload${nl}exit 0"
expect_scriptlet "%postun 1 (upgrade): daemon-reload, try-restart" postun 1 0 \
    "systemctl daemon-reload${nl}systemctl try-restart fix-monitor.service${nl}exit 0"
for s in "post 1" "preun 0" "postun 1"; do
    # shellcheck disable=SC2086 # "name arg"
    expect_scriptlet "%${s% *} ${s#* } without systemctl: nothing, exit 0" ${s} 0 "exit 0" nosystemctl
done

# ---- dependencies -------------------------------------------------------------------------
q --requires | LC_ALL=C sort -u > "$tmp/requires.txt"
mkdir -p "$tmp/root"
(cd "$tmp/root" && rpm2archive - < "$pkg" | tar -xzf -) || die "rpm2archive | tar -x failed"
root="$tmp/root"
# The sonames ldd finds for the packaged binary, as rpm names them (name()(64bit)).
# The dynamic loader is listed by its path; vdso is no file.
ldd "$root/usr/bin/fix-monitor" | awk '$1 ~ /\.so/ && $1 !~ /^linux-vdso/ { n = split($1, p, "/"); print p[n] "()(64bit)" }' \
    | LC_ALL=C sort -u > "$tmp/sonames.txt"
# Besides sonames (with their symbol versions): what rpmbuild adds too, rtld(GNU_HASH) (the
# loader must know GNU hash tables) and config(fix-monitor) (the package has a config file).
unexpected="$(grep -v -e '^rpmlib(' -e '^/bin/sh$' -e '^/usr/sbin/useradd$' -e '^/usr/sbin/groupadd$' \
    -e '^rtld(GNU_HASH)$' -e "^config(fix-monitor) = $version-1\$" \
    -e '^l[a-z0-9_-]*\.so[.0-9]*(' "$tmp/requires.txt")"
sonames_required() { grep '^l[a-z0-9_-]*\.so' "$tmp/requires.txt" | sed 's/(.*//' | LC_ALL=C sort -u; }
missing_so="$(sonames_required | LC_ALL=C comm -13 - <(sed 's/(.*//' "$tmp/sonames.txt"))"
extra_so="$(sonames_required | LC_ALL=C comm -23 - <(sed 's/(.*//' "$tmp/sonames.txt"))"
have() { grep -qx "$1" "$tmp/requires.txt"; }
if [ -z "$unexpected" ] && [ -z "$missing_so" ] && [ -z "$extra_so" ] && have /bin/sh \
    && have /usr/sbin/useradd && have /usr/sbin/groupadd && grep -q '^libelf\.so' "$tmp/requires.txt" \
    && grep -q '^libz\.so' "$tmp/requires.txt" && grep -q '^libgcc_s\.so' "$tmp/requires.txt"; then
    ok "rpm -qp --requires: /bin/sh, useradd, groupadd, rpmlib(), rtld(GNU_HASH), config(), the $(wc -l < "$tmp/sonames.txt") sonames ldd finds ($(tr '\n' ' ' < "$tmp/sonames.txt" | sed 's/()(64bit)//g; s/ $//'))"
else
    bad "rpm -qp --requires: unexpected '$unexpected', sonames missing '$missing_so', extra '$extra_so'"
    indent < "$tmp/requires.txt"
fi
provides="$(q --provides | LC_ALL=C sort | tr '\n' ';')"
want_provides="$(printf 'config(fix-monitor) = %s-1\nfix-monitor = %s-1\nfix-monitor(%s) = %s-1\n' \
    "$version" "$version" "${arch//_/-}" "$version" | LC_ALL=C sort | tr '\n' ';')"
[ "$provides" = "$want_provides" ] && ok "rpm -qp --provides: ${provides//;/ }" \
    || bad "rpm -qp --provides: '$provides', want '$want_provides'"

# ---- the payload --------------------------------------------------------------------------
(cd "$root" && find . -mindepth 1 | sed 's|^\.||' | LC_ALL=C sort) > "$tmp/extracted.txt"
# The archive holds the package's paths and the directories above them (tar makes those).
check "rpm2archive: every path rpm -qlp lists was extracted" \
    sh -c 'LC_ALL=C comm -23 "$1" "$2" | grep . && exit 1 || exit 0' _ "$tmp/files.txt" "$tmp/extracted.txt"
check "the packaged binary runs: --version names $version" \
    sh -c '"$1/usr/bin/fix-monitor" --version | grep -qw "$2"' _ "$root" "$version"
check "the packaged binary is stripped (no .symtab)" sh -c '! readelf -S "$1" | grep -q "\.symtab"' _ "$root/usr/bin/fix-monitor"
check "fix-monitor config --config <packaged config.toml>: exit 0, its targets" \
    sh -c 'out="$("$1/usr/bin/fix-monitor" config --config "$1/etc/fix-monitor/config.toml")" && printf "%s\n" "$out" | grep -q venue-a' _ "$root"
check "config.toml, README.md, DEPLOYING.md and the drop-ins are the tree's files" sh -c '
    cmp "$1/config/config.toml" "$2/etc/fix-monitor/config.toml" && cmp "$1/README.md" "$2/usr/share/doc/fix-monitor/README.md" \
    && cmp "$1/examples/README.md" "$2/usr/share/doc/fix-monitor/DEPLOYING.md" \
    && for c in "$1"/examples/systemd/fix-monitor.service.d/*.conf; do cmp "$c" "$2/usr/share/doc/fix-monitor/examples/${c##*/}" || exit 1; done' \
    _ "$ROOT" "$root"
check "man page: .TH fix-monitor" sh -c 'zcat "$1" | head -n 5 | grep -q "^\.TH fix-monitor"' _ "$root/usr/share/man/man1/fix-monitor.1.gz"
check "completions: bash (complete -F), zsh (#compdef), fish (complete -c)" sh -c '
    grep -q "complete -F" "$1/usr/share/bash-completion/completions/fix-monitor" \
    && head -n 1 "$1/usr/share/zsh/site-functions/_fix-monitor" | grep -q "^#compdef fix-monitor" \
    && grep -q "^complete -c fix-monitor" "$1/usr/share/fish/vendor_completions.d/fix-monitor.fish"' _ "$root"

# ---- the unit -----------------------------------------------------------------------------
unit="$root/usr/lib/systemd/system/fix-monitor.service"
# Verified as a copy whose /usr/bin/fix-monitor is the extracted binary (verify checks that the
# commands exist: the package is not installed here), with man-db looking in the payload's man
# pages for Documentation=man:fix-monitor(1) (MANPATH); the copy differs in those paths only.
mkdir -p "$tmp/unit"
sed "s|/usr/bin/fix-monitor |$root/usr/bin/fix-monitor |g" "$unit" > "$tmp/unit/fix-monitor.service"
rewritten="$(diff "$unit" "$tmp/unit/fix-monitor.service" | grep -c '^>')"
if [ "$rewritten" = 2 ] && out="$(MANPATH="$root/usr/share/man" systemd-analyze verify "$tmp/unit/fix-monitor.service" 2>&1)" \
    && [ -z "$out" ]; then
    ok "systemd-analyze verify: the packaged unit (ExecStartPre=, ExecStart= at the extracted binary)"
else
    bad "systemd-analyze verify: the packaged unit ($rewritten command lines pointed at the extracted binary, want 2)"
    printf '%s\n' "$out" | indent
fi
check_unit_exposure "$unit"
check "unit: User=fix-monitor, Group=fix-monitor, no DynamicUser=, no LoadCredential=, empty capability sets" \
    sh -c 'grep -qx User=fix-monitor "$1" && grep -qx Group=fix-monitor "$1" && ! grep -q "^DynamicUser=\|^LoadCredential=" "$1" \
        && grep -qx CapabilityBoundingSet= "$1" && grep -qx AmbientCapabilities= "$1" \
        && grep -q "^# fix-monitor as a hardened systemd service, from the RPM" "$1"' _ "$unit"

# ---- rpm -i, -V, -e in an empty root ------------------------------------------------------
inst="$tmp/instroot"
mkdir -p "$inst"
# The database in the root's /rpmdb (Debian's rpm keeps it in ~/.rpmdb by default).
r() { rpm --root "$inst" --dbpath /rpmdb "$@"; }
if out="$(r --initdb 2>&1 && r -i --nodeps --noscripts "$pkg" 2>&1)"; then
    ok "rpm --root <empty> -i --nodeps --noscripts"
    check "rpm --root -V --nodeps: every file as packaged" r -V --nodeps fix-monitor
    check "rpm --root -qc: /etc/fix-monitor/config.toml" \
        sh -c '[ "$(rpm --root "$1" --dbpath /rpmdb -qc fix-monitor)" = /etc/fix-monitor/config.toml ]' _ "$inst"
    echo '# edited' >> "$inst/etc/fix-monitor/config.toml"
    check "rpm --root -V sees the edited config (size, digest; c)" \
        sh -c 'rpm --root "$1" --dbpath /rpmdb -V --nodeps fix-monitor | grep -q "^S\.5.* c /etc/fix-monitor/config.toml$"' _ "$inst"
    if out="$(r -e --nodeps --noscripts fix-monitor 2>&1)"; then
        left="$(cd "$inst" && find . -path ./rpmdb -prune -o -type f -print | sed 's|^\.||')"
        [ "$left" = /etc/fix-monitor/config.toml.rpmsave ] \
            && ok "rpm --root -e: only the edited config is left, as config.toml.rpmsave" \
            || { bad "rpm --root -e left: $(printf '%s' "$left" | tr '\n' ' ')"; }
    else
        bad "rpm --root -e fix-monitor"
        printf '%s\n' "$out" | indent
    fi
else
    bad "rpm --root <empty> -i --nodeps --noscripts"
    printf '%s\n' "$out" | indent
fi

printf '%d passed, %d failed\n' "$pass" "$fail"
[ "$fail" = 0 ]
