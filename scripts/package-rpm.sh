#!/usr/bin/env bash
# Build the RPM of fix-monitor (cargo-generate-rpm, from [package.metadata.generate-rpm] in
# Cargo.toml), beside the Debian package (scripts/package-deb.sh).
#
#   scripts/package-rpm.sh                   # release build -> target/package/fix-monitor-*.rpm
#   scripts/package-rpm.sh --install-tool    # only install the pinned cargo-generate-rpm
#
# Steps: install cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION into .tools/cargo-generate-rpm/
# unless that version is already there; `cargo build --release --locked --bin fix-monitor` (a
# no-op when it is up to date); generate into target/package/rpm/ what the package ships that
# is not in the tree, with package-deb.sh's code (scripts/package-lib.sh: the man page, the
# bash, zsh and fish completions, the packaged unit), and a stripped copy of the binary
# (cargo-generate-rpm strips nothing); then `cargo generate-rpm --auto-req builtin` (the
# shared libraries the binary loads, found with ldd, whether or not rpm's own
# /usr/lib/rpm/find-requires is on this machine) and print the .rpm's path as the last line of
# stdout.
#
# Environment: CARGO_GENERATE_RPM_VERSION (default below); PACKAGE_PROFILE (release | debug:
# package the test build instead, as CI's check does to save a release build; stripped all
# the same, but unoptimized: not for use); PACKAGE_BIN=path/to/fix-monitor packages that
# binary instead, with no cargo build; RPM_PAYLOAD_COMPRESS (zstd | gzip | none; default zstd,
# gzip for PACKAGE_PROFILE=debug).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARGO_GENERATE_RPM_VERSION="${CARGO_GENERATE_RPM_VERSION:-0.21.1}"
TOOL_ROOT="$ROOT/.tools/cargo-generate-rpm"
TOOL="$TOOL_ROOT/bin/cargo-generate-rpm"

log() { printf '[package-rpm] %s\n' "$*" >&2; }
die() { printf '[package-rpm] ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/package-lib.sh
source "$ROOT/scripts/package-lib.sh"

# cargo-generate-rpm at the pinned version, from crates.io, built with its own lock file; a
# second run with that version present does nothing.
tool_version() { "$TOOL" --version 2>/dev/null; }
install_tool() {
    if [ -x "$TOOL" ] && tool_version | grep -qw "$CARGO_GENERATE_RPM_VERSION"; then
        log "cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION already in .tools/cargo-generate-rpm"
        return
    fi
    log "installing cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION into .tools/cargo-generate-rpm (a few minutes, once)"
    cargo install --locked --force --root "$TOOL_ROOT" --version "$CARGO_GENERATE_RPM_VERSION" \
        cargo-generate-rpm || die "cargo install cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION failed"
    tool_version | grep -qw "$CARGO_GENERATE_RPM_VERSION" \
        || die "cargo-generate-rpm does not say $CARGO_GENERATE_RPM_VERSION: $(tool_version 2>&1)"
}

install_tool
if [ "${1:-}" = --install-tool ]; then
    exit 0
fi
[ $# -eq 0 ] || die "unknown argument: $1 (see the header of this script)"

if [ -n "${PACKAGE_BIN:-}" ]; then
    bin="$PACKAGE_BIN"
    [ -x "$bin" ] || die "PACKAGE_BIN=$bin is not an executable"
    log "packaging $bin (PACKAGE_BIN: no cargo build)"
else
    package_build
fi
# Cargo.toml names the generated files under target/package/rpm/ (relative to the package
# root, whatever CARGO_TARGET_DIR says), so they are written there.
out="$ROOT/target/package/rpm"
rm -f "$ROOT"/target/package/fix-monitor-*.rpm "$out/fix-monitor"
package_assets "$out" "the RPM" "The RPM"
strip -o "$out/fix-monitor" "$bin" || die "strip $bin failed"
"$out/fix-monitor" --version >/dev/null || die "the stripped binary does not run"

# zstd, cargo-generate-rpm's default (and Fedora's and RHEL's), for a release package; the
# test build's 38 MB binary takes zstd 45 s on the 2-core machine and gzip 5, so CI's uses gzip.
compress="${RPM_PAYLOAD_COMPRESS:-$([ "${profile:-release}" = debug ] && echo gzip || echo zstd)}"
log "cargo generate-rpm --auto-req builtin --payload-compress $compress"
PATH="$TOOL_ROOT/bin:$PATH" cargo generate-rpm --auto-req builtin --payload-compress "$compress" \
    --output "$ROOT/target/package/" >&2 \
    || die "cargo generate-rpm failed"
rpms=("$ROOT"/target/package/fix-monitor-*.rpm)
if [ "${#rpms[@]}" != 1 ] || [ ! -f "${rpms[0]}" ]; then
    die "cargo generate-rpm made no single .rpm: ${rpms[*]}"
fi
log "built ${rpms[0]} ($(du -h "${rpms[0]}" | cut -f1))"
printf '%s\n' "${rpms[0]}"
