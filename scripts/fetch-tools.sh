#!/usr/bin/env bash
# Install / fetch every external tool the fix-monitor test suite needs.
#
#   scripts/fetch-tools.sh            # idempotent; a second run is a fast no-op
#
# (a) Debian bookworm packages via the host's apt (apt-get update only when a
#     package has no install candidate or the install fails on stale lists):
#       prometheus promtool prometheus-node-exporter tmux wrk hyperfine
#       iproute2 (ss) jq python3 curl nftables (nft)
#       podman runc ca-certificates (the container image: scripts/image.sh, tests/system/container.rs)
#       man-db zsh fish debootstrap (the Debian package's checks: scripts/check-package.sh,
#       scripts/check-package-root.sh)
#       stunnel4 (a real TLS tunnel between gateway and venue: tests/system/tls_tunnel.rs)
#       rpm (rpm, rpm2archive: the RPM's check, scripts/check-rpm.sh)
# (b) Debian trixie's victoria-metrics and prometheus (2.53) .debs, fetched with
#     `apt-get download` through a PRIVATE apt state under .tools/apt/ that
#     reuses the host's configured Debian mirror with the suite swapped for
#     trixie, verified against the host's debian-archive-keyring (no
#     [trusted=yes]), and unpacked with `dpkg -x` under .tools/. The host's apt
#     configuration, lists and dpkg database are never touched by this part.
#
# (c) cargo-deb (crates.io, `cargo install --locked`, version pinned in scripts/package-deb.sh)
#     into .tools/cargo-deb/, and cargo-generate-rpm (likewise, pinned in
#     scripts/package-rpm.sh) into .tools/cargo-generate-rpm/.
#
# Results:
#   .tools/bin/cargo-deb            -> .tools/cargo-deb/bin/cargo-deb
#   .tools/bin/cargo-generate-rpm   -> .tools/cargo-generate-rpm/bin/cargo-generate-rpm
#   .tools/bin/victoria-metrics     -> .tools/victoria-metrics/usr/bin/victoria-metrics
#   .tools/bin/prometheus-trixie    -> .tools/prometheus-trixie/usr/bin/prometheus
#   .tools/bin/promtool-trixie      -> .tools/prometheus-trixie/usr/bin/promtool
#                                      (trixie ships promtool as its own package)
#   .tools/versions.txt             one "tool version" line each
#
# Exits non-zero (loudly) if any required tool is missing or does not run.
# Environment:
#   FETCH_TOOLS_FORCE=1   re-download the trixie packages even if present.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
APTDIR="$TOOLS/apt"
TRIXIE_SUITE="${TRIXIE_SUITE:-trixie}"

log() { printf '[fetch-tools] %s\n' "$*" >&2; }
die() { printf '[fetch-tools] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "must run as root (or have sudo) to apt-get install"
    SUDO="sudo"
fi

mkdir -p "$BIN"

# ---------------------------------------------------------------------------
# (a) bookworm packages from the host's apt
# ---------------------------------------------------------------------------
# package -> a command it must provide afterwards
declare -A PKG_CMD=(
    [prometheus]=prometheus
    [prometheus-node-exporter]=prometheus-node-exporter
    [tmux]=tmux
    [wrk]=wrk
    [hyperfine]=hyperfine
    [iproute2]=ss
    [jq]=jq
    [python3]=python3
    [curl]=curl
    [python3-yaml]=python3
    [util-linux]=nsenter
    [systemd]=systemd-analyze
    [stunnel4]=stunnel4
    [podman]=podman
    [runc]=runc
    [ca-certificates]=update-ca-certificates
    [nftables]=nft
    [openssl]=openssl
    [clang]=clang
    [llvm]=llvm-strip
    [bpftool]=bpftool
    [pkg-config]=pkg-config
    [man-db]=man
    [zsh]=zsh
    [fish]=fish
    [debootstrap]=debootstrap
    [rpm]=rpm2archive
)
HOST_PKGS=(prometheus prometheus-node-exporter tmux wrk hyperfine iproute2 jq python3 python3-yaml curl util-linux systemd
    podman runc ca-certificates nftables openssl)
HOST_PKGS+=(clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev pkg-config)  # src/ebpf: build-bpf.sh --check, libbpf-sys
# scripts/check-package.sh: man -w and systemd-analyze verify's Documentation=man: check; the
# packaged zsh and fish completions parsed (and fish's used) by their shells.
HOST_PKGS+=(man-db zsh fish)
HOST_PKGS+=(debootstrap)  # scripts/check-package-root.sh: the package in a minimal Debian root
HOST_PKGS+=(rpm)  # scripts/check-rpm.sh: the RPM read by rpm's own tools (rpm -qp, rpm2archive)
HOST_PKGS+=(faketime)  # tests/system/faults.rs: the wall clock stepped under the real binary
HOST_PKGS+=(stunnel4)  # tests/system/tls_tunnel.rs: a real stunnel between gateway and venue

pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

missing=()
for p in "${HOST_PKGS[@]}"; do
    pkg_installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing bookworm packages: ${missing[*]}"
    need_update=0
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -print -quit 2>/dev/null)" ]; then
        need_update=1
    else
        for p in "${missing[@]}"; do
            cand="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
            if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; break; fi
        done
    fi
    if [ "$need_update" = 1 ]; then
        log "apt-get update (package lists missing or lack a candidate)"
        $SUDO apt-get update -q
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        # Stale lists give 404s on the .debs: refresh once and retry.
        log "apt-get install failed; refreshing lists and retrying once"
        $SUDO apt-get update -q
        $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
else
    log "bookworm packages already installed"
fi

# The Debian packages ship services (ports 9090 / 9100). Tests start their own
# instances on other ports; do not leave the packaged daemons enabled, and stop
# them if they were started (in containers policy-rc.d usually prevents that).
for svc in prometheus prometheus-node-exporter; do
    if [ -e "/etc/systemd/system/multi-user.target.wants/$svc.service" ] \
       || ls /etc/rc[2-5].d/S[0-9][0-9]"$svc" >/dev/null 2>&1; then
        log "disabling packaged service $svc"
        if [ -d /run/systemd/system ]; then
            $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
        else
            [ -x "/etc/init.d/$svc" ] && { $SUDO "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; }
            $SUDO update-rc.d "$svc" disable >/dev/null 2>&1 || true
            command -v systemctl >/dev/null && { $SUDO systemctl disable "$svc" >/dev/null 2>&1 || true; }
        fi
    fi
done

for p in "${HOST_PKGS[@]}"; do
    pkg_installed "$p" || die "package $p is not installed after apt-get install"
    c="${PKG_CMD[$p]:-}"  # libraries (libbpf-dev, libelf-dev, zlib1g-dev) have no command
    [ -z "$c" ] || command -v "$c" >/dev/null || die "package $p installed but command '$c' not on PATH"
done
command -v promtool >/dev/null || die "promtool missing (package prometheus)"

# ---------------------------------------------------------------------------
# (b) trixie packages via a private apt state
# ---------------------------------------------------------------------------
# Find the host's Debian mirror: first URI whose suite is the plain release
# (no -security/-updates/-backports), from deb822 .sources or sources.list.
host_mirror() {
    local f uri=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822 stanzas: remember URIs and Suites per stanza.
        uri="$(awk '
            BEGIN { IGNORECASE = 1 }
            /^[[:space:]]*$/ { if (u != "" && s ~ /(^| )(bookworm|stable|trixie|bullseye)( |$)/ && t ~ /(^| )deb( |$)/) { print u; exit } u=""; s=""; t=""; next }
            /^URIs:/   { sub(/^URIs:[[:space:]]*/, ""); u=$1 }
            /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); s=$0 }
            /^Types:/  { sub(/^Types:[[:space:]]*/, ""); t=$0 }
            END { if (u != "" && s ~ /(^| )(bookworm|stable|trixie|bullseye)( |$)/ && t ~ /(^| )deb( |$)/) print u }
        ' "$f" | head -n1)"
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [opts] URI SUITE COMPONENTS...
        uri="$(sed -E 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && $3 ~ /^(bookworm|stable|trixie|bullseye)$/ { print $2; exit }')"
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    echo "http://deb.debian.org/debian"
}

# Keyring that can verify trixie's Release file. debian-archive-keyring.gpg
# (bookworm 2023.3+deb12u1 and later) contains the trixie archive keys.
pick_keyring() {
    local k=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -f "$k" ] && { echo "$k"; return; }
    die "no /usr/share/keyrings/debian-archive-keyring.gpg on the host (apt-get install debian-archive-keyring)"
}

# Version of a package unpacked under $1, as recorded by us in $1/.version
unpacked_version() { cat "$1/.version" 2>/dev/null || true; }

private_apt() {
    APT_CONFIG="$APTDIR/apt.conf" apt-get "$@"
}

setup_private_apt() {
    local mirror keyring
    mirror="$(host_mirror)"
    keyring="$(pick_keyring)"
    mkdir -p "$APTDIR/etc/sources.list.d" "$APTDIR/etc/apt.conf.d" "$APTDIR/etc/preferences.d" \
             "$APTDIR/etc/trusted.gpg.d" \
             "$APTDIR/state/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/dl"
    : > "$APTDIR/state/status"
    cat > "$APTDIR/etc/sources.list.d/trixie.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $TRIXIE_SUITE
Components: main
Signed-By: $keyring
EOF
    # APT_CONFIG is read before /etc/apt/apt.conf.d, so pointing Dir::Etc::parts
    # at our own empty directory keeps the host's apt.conf.d out entirely.
    cat > "$APTDIR/apt.conf" <<EOF
Dir::Etc "$APTDIR/etc/";
Dir::Etc::main "/dev/null";
Dir::Etc::parts "$APTDIR/etc/apt.conf.d/";
Dir::Etc::sourcelist "/dev/null";
Dir::Etc::sourceparts "$APTDIR/etc/sources.list.d/";
Dir::Etc::preferences "/dev/null";
Dir::Etc::preferencesparts "$APTDIR/etc/preferences.d/";
Dir::Etc::trusted "/dev/null";
Dir::Etc::trustedparts "$APTDIR/etc/trusted.gpg.d/";
Dir::State "$APTDIR/state/";
Dir::State::lists "$APTDIR/state/lists/";
Dir::State::status "$APTDIR/state/status";
Dir::Cache "$APTDIR/cache/";
Dir::Cache::archives "$APTDIR/cache/archives/";
Dir::Log "$APTDIR/log/";
APT::Architecture "$(dpkg --print-architecture)";
APT::Architectures { "$(dpkg --print-architecture)"; };
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
Acquire::IndexTargets::deb::CNF::DefaultEnabled "false";
APT::Sandbox::User "root";
EOF
    log "private apt: $TRIXIE_SUITE from $mirror, keyring $keyring"
}

# fetch_trixie DESTDIR PKG... : download the PKGs' .debs for trixie and
# dpkg -x them all into DESTDIR (replaced atomically). DESTDIR/.version records
# "pkg=version ..." so a re-run with the same candidates is a no-op.
fetch_trixie() {
    local dest="$1"; shift
    local pkg cand want="" deb
    for pkg in "$@"; do
        cand="$(private_apt_candidate "$pkg")"
        [ -n "$cand" ] || die "$pkg has no candidate in $TRIXIE_SUITE (private apt lists under $APTDIR)"
        want="${want:+$want }$pkg=$cand"
    done
    if [ "${FETCH_TOOLS_FORCE:-0}" != 1 ] && [ "$(unpacked_version "$dest")" = "$want" ]; then
        log "$want already unpacked in ${dest#"$ROOT"/}"
        return
    fi
    log "downloading $want from $TRIXIE_SUITE"
    rm -f "$APTDIR"/dl/*.deb
    # shellcheck disable=SC2086 # $want is a list of pkg=version words
    (cd "$APTDIR/dl" && private_apt download -q $want) || die "apt-get download $want failed"
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp"
    for pkg in "$@"; do
        deb="$(find "$APTDIR/dl" -maxdepth 1 -name "${pkg}_*.deb" -print -quit)"
        [ -n "$deb" ] || die "apt-get download $pkg produced no .deb"
        dpkg -x "$deb" "$dest.tmp" || die "dpkg -x $deb failed"
    done
    echo "$want" > "$dest.tmp/.version"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    rm -f "$APTDIR"/dl/*.deb
}

private_apt_candidate() {
    APT_CONFIG="$APTDIR/apt.conf" apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '^(none)$' || true
}

VM_DIR="$TOOLS/victoria-metrics"
PT_DIR="$TOOLS/prometheus-trixie"

trixie_ok=0
if [ "${FETCH_TOOLS_FORCE:-0}" != 1 ] \
   && [ -n "$(unpacked_version "$VM_DIR")" ] && [ -n "$(unpacked_version "$PT_DIR")" ] \
   && [ -x "$VM_DIR/usr/bin/victoria-metrics" ] && [ -x "$PT_DIR/usr/bin/prometheus" ] \
   && [ -x "$PT_DIR/usr/bin/promtool" ]; then
    # Already fetched: no network needed for a re-run.
    trixie_ok=1
    log "trixie packages already unpacked (FETCH_TOOLS_FORCE=1 to refresh)"
fi

if [ "$trixie_ok" = 0 ]; then
    setup_private_apt
    log "apt-get update (private, $TRIXIE_SUITE only)"
    private_apt update -q -o APT::Update::Error-Mode=any \
        || die "private apt-get update for $TRIXIE_SUITE failed (signature or mirror problem?)"
    # A tree with a .version but no binary (partly deleted) must be refetched.
    [ -x "$VM_DIR/usr/bin/victoria-metrics" ] || rm -f "$VM_DIR/.version"
    { [ -x "$PT_DIR/usr/bin/prometheus" ] && [ -x "$PT_DIR/usr/bin/promtool" ]; } || rm -f "$PT_DIR/.version"
    fetch_trixie "$VM_DIR" victoria-metrics
    # trixie split promtool out of the prometheus package.
    fetch_trixie "$PT_DIR" prometheus promtool
    # The unpacked trees are all we keep; the ~130 MB of lists are re-fetched
    # only if a refresh is ever needed.
    rm -rf "$APTDIR/state/lists" "$APTDIR/cache"
fi

[ -x "$VM_DIR/usr/bin/victoria-metrics" ] || die "victoria-metrics binary not found in $VM_DIR/usr/bin"
ln -sfn ../victoria-metrics/usr/bin/victoria-metrics "$BIN/victoria-metrics"
[ -x "$PT_DIR/usr/bin/prometheus" ] || die "prometheus binary not found in $PT_DIR/usr/bin"
ln -sfn ../prometheus-trixie/usr/bin/prometheus "$BIN/prometheus-trixie"
[ -x "$PT_DIR/usr/bin/promtool" ] || die "promtool binary not found in $PT_DIR/usr/bin"
ln -sfn ../prometheus-trixie/usr/bin/promtool "$BIN/promtool-trixie"

# ---------------------------------------------------------------------------
# (c) cargo-deb, for the Debian package (scripts/package-deb.sh, scripts/check-package.sh):
#     `cargo install --locked` of the version package-deb.sh pins, into .tools/cargo-deb/;
#     a no-op when that version is there.
# ---------------------------------------------------------------------------
bash "$ROOT/scripts/package-deb.sh" --install-cargo-deb
ln -sfn ../cargo-deb/bin/cargo-deb "$BIN/cargo-deb"
# cargo-generate-rpm, for the RPM (scripts/package-rpm.sh, scripts/check-rpm.sh), the same way.
bash "$ROOT/scripts/package-rpm.sh" --install-tool
ln -sfn ../cargo-generate-rpm/bin/cargo-generate-rpm "$BIN/cargo-generate-rpm"

# ---------------------------------------------------------------------------
# Verify everything runs; summary
# ---------------------------------------------------------------------------
first_line() { "$@" 2>&1 | sed -n '1p'; }
ver() {
    # ver NAME CMD... : run CMD, fail loudly if it does not exit 0
    local name="$1"; shift
    local out
    if ! out="$("$@" 2>&1)"; then
        printf '%s\n' "$out" >&2
        die "$name does not run: $*"
    fi
    printf '%-26s %s\n' "$name" "$(printf '%s\n' "$out" | sed -n '/./{p;q}')"
}

{
    ver prometheus                prometheus --version
    ver promtool                  promtool --version
    ver prometheus-node-exporter  prometheus-node-exporter --version
    # Debian's build embeds no version string: -version exits 0 but prints an
    # empty line, so report the .deb version alongside.
    "$BIN/victoria-metrics" -version >/dev/null 2>&1 || die "victoria-metrics -version failed"
    printf '%-26s %s\n' victoria-metrics "$(unpacked_version "$VM_DIR") (.deb; binary's -version is empty)"
    ver prometheus-trixie         "$BIN/prometheus-trixie" --version
    ver promtool-trixie           "$BIN/promtool-trixie" --version
    ver tmux                      tmux -V
    ver wrk                       sh -c 'wrk -v 2>&1; true'
    ver hyperfine                 hyperfine --version
    ver ss                        ss -V
    ver jq                        jq --version
    ver python3                   /usr/bin/python3 --version
    ver curl                      curl --version
    ver podman                    podman --version
    ver runc                      runc --version
    ver cargo-deb                 "$BIN/cargo-deb" --version
    ver cargo-generate-rpm        "$BIN/cargo-generate-rpm" --version
    ver rpm                       rpm --version
} > "$TOOLS/versions.txt.tmp"
mv "$TOOLS/versions.txt.tmp" "$TOOLS/versions.txt"

# wrk -v always exits 1; make sure it at least printed its banner.
grep -q '^wrk .*wrk ' "$TOOLS/versions.txt" || die "wrk did not print a version"

echo "fix-monitor tools (.tools/bin: victoria-metrics, prometheus-trixie, promtool-trixie, cargo-deb, cargo-generate-rpm):"
cat "$TOOLS/versions.txt"
