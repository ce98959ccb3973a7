#!/usr/bin/env bash
# Builds fix-monitor's container image from Containerfile with podman, pulling nothing: the
# context is a root file system staged here from the host's build.
#
#   scripts/image.sh                   # release build, tag localhost/fix-monitor:VERSION
#   scripts/image.sh --stage-only DIR BINARY   # only stage the root file system (tests use it)
#
# Environment: IMAGE_PROFILE (release | debug; debug reuses the test build), IMAGE_TAG.
set -euo pipefail
cd "$(dirname "$0")/.."

# stage DIR BINARY: DIR becomes the image's root file system.
stage() {
    local dir="$1" bin="$2" lib
    rm -rf "$dir"
    mkdir -p "$dir/usr/local/bin" "$dir/etc/ssl/certs" "$dir/etc/fix-monitor"
    # Without its symbols (a debug build's are most of its size); strip is binutils, which any
    # Rust toolchain on Linux has.
    strip -o "$dir/usr/local/bin/fix-monitor" "$bin"
    # The shared libraries the binary loads (glibc, libgcc_s, libm and the loader), at the
    # paths the loader looks for them. glibc 2.34+ has its files and dns NSS modules built in.
    while read -r lib; do
        mkdir -p "$dir$(dirname "$lib")"
        cp -L "$lib" "$dir$lib"
    done < <(ldd "$bin" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }')
    [ -e "$dir/lib64/ld-linux-x86-64.so.2" ] || [ -n "$(find "$dir" -name 'ld-linux*' -print -quit)" ] \
        || { echo "image: no dynamic loader found by ldd for $bin" >&2; exit 1; }
    [ -s /etc/ssl/certs/ca-certificates.crt ] \
        || { echo "image: /etc/ssl/certs/ca-certificates.crt missing (apt-get install ca-certificates)" >&2; exit 1; }
    cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
    printf 'root:x:0:0:root:/nonexistent:/sbin/nologin\nfix-monitor:x:65532:65532:fix-monitor:/nonexistent:/sbin/nologin\n' > "$dir/etc/passwd"
    printf 'root:x:0:\nfix-monitor:x:65532:\n' > "$dir/etc/group"
    printf 'hosts: files dns\n' > "$dir/etc/nsswitch.conf"
    cp config/config.toml "$dir/etc/fix-monitor/config.toml"
}

if [ "${1:-}" = "--stage-only" ]; then
    stage "$2" "$3"
    exit 0
fi

command -v podman >/dev/null || { echo "image: podman not found: run scripts/fetch-tools.sh" >&2; exit 1; }
profile="${IMAGE_PROFILE:-release}"
case "$profile" in
    release) cargo build --release --locked --bin fix-monitor; bin=target/release/fix-monitor ;;
    debug) cargo build --locked --bin fix-monitor; bin=target/debug/fix-monitor ;;
    *) echo "image: IMAGE_PROFILE must be release or debug" >&2; exit 64 ;;
esac
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
tag="${IMAGE_TAG:-localhost/fix-monitor:$version}"
ctx="target/image-rootfs"
stage "$ctx" "$bin"
podman build --pull=never -f Containerfile -t "$tag" "$ctx"
size="$(podman image inspect --format '{{.Size}}' "$tag")"
echo "image: $tag, $(( size / 1024 / 1024 )) MiB ($size bytes), from the $profile build"
