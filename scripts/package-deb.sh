#!/usr/bin/env bash
# Build the Debian package of fix-monitor (cargo-deb, from [package.metadata.deb] in Cargo.toml).
#
#   scripts/package-deb.sh                     # release build -> target/package/fix-monitor_*.deb
#   scripts/package-deb.sh --install-cargo-deb # only install the pinned cargo-deb (fetch-tools.sh)
#
# Steps: install cargo-deb $CARGO_DEB_VERSION into .tools/cargo-deb/ unless that version is
# already there; `cargo build --release --locked --bin fix-monitor` (a no-op when it is up to
# date); generate into target/package/ what the package ships that is not in the tree (the
# man page, the bash, zsh and fish completions, and the packaged unit made from
# examples/systemd/fix-monitor.service: scripts/package-lib.sh, shared with package-rpm.sh);
# then `cargo deb --no-build` (cargo-deb strips the binary it packages) and print the .deb's
# path as the last line of stdout.
#
# Environment: CARGO_DEB_VERSION (default below); PACKAGE_PROFILE (release | debug: package the
# test build instead, as CI's check does to save a release build; cargo-deb strips it all the
# same, but it is unoptimized: not for use).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARGO_DEB_VERSION="${CARGO_DEB_VERSION:-3.8.0}"
TOOL_ROOT="$ROOT/.tools/cargo-deb"
CARGO_DEB="$TOOL_ROOT/bin/cargo-deb"

log() { printf '[package-deb] %s\n' "$*" >&2; }
die() { printf '[package-deb] ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/package-lib.sh
source "$ROOT/scripts/package-lib.sh"

# cargo-deb at the pinned version, from crates.io, built with its own lock file; a second run
# with that version present does nothing.
install_cargo_deb() {
    if [ -x "$CARGO_DEB" ] && "$CARGO_DEB" --version 2>/dev/null | grep -qw "$CARGO_DEB_VERSION"; then
        log "cargo-deb $CARGO_DEB_VERSION already in .tools/cargo-deb"
        return
    fi
    log "installing cargo-deb $CARGO_DEB_VERSION into .tools/cargo-deb (a few minutes, once)"
    cargo install --locked --force --root "$TOOL_ROOT" --version "$CARGO_DEB_VERSION" cargo-deb \
        || die "cargo install cargo-deb $CARGO_DEB_VERSION failed"
    "$CARGO_DEB" --version | grep -qw "$CARGO_DEB_VERSION" \
        || die "cargo-deb --version does not say $CARGO_DEB_VERSION: $("$CARGO_DEB" --version 2>&1)"
}

install_cargo_deb
if [ "${1:-}" = --install-cargo-deb ]; then
    exit 0
fi
[ $# -eq 0 ] || die "unknown argument: $1 (see the header of this script)"

package_build
# Generated assets (scripts/package-lib.sh). Cargo.toml names them under target/package/
# (relative to the package root, whatever CARGO_TARGET_DIR says), so they are written there.
out="$ROOT/target/package"
rm -f "$out"/fix-monitor_*.deb
package_assets "$out" "the Debian package" "The Debian package"

log "cargo deb --no-build"
deb="$(PATH="$TOOL_ROOT/bin:$PATH" cargo deb --no-build --profile "$cargo_profile" --output "$out/" | tail -n1)"
[ -f "$deb" ] || die "cargo deb printed no .deb path (got: $deb)"
log "built $deb ($(du -h "$deb" | cut -f1))"
printf '%s\n' "$deb"
