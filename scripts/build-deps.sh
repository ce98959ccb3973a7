#!/usr/bin/env bash
# What building fix-monitor needs beyond Rust and a C compiler: the eBPF loader (libbpf-rs)
# compiles its vendored libbpf against libelf and zlib, found with pkg-config. On Debian or
# Ubuntu, installs libelf-dev, zlib1g-dev and pkg-config when they are missing (as root, or
# with sudo); elsewhere says what to install. Quiet when everything is there.
set -euo pipefail

have() { command -v pkg-config >/dev/null && pkg-config --exists libelf zlib; }
have && exit 0

pkgs=(libelf-dev zlib1g-dev pkg-config)
if ! command -v apt-get >/dev/null; then
    echo "building fix-monitor needs libelf and zlib headers and pkg-config (Debian: ${pkgs[*]}; Fedora: elfutils-libelf-devel zlib-devel pkgconf)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || {
        echo "building fix-monitor needs ${pkgs[*]}: install them as root (apt-get install ${pkgs[*]})" >&2
        exit 1
    }
    SUDO="sudo"
fi
echo "[build-deps] installing ${pkgs[*]} (libbpf, the eBPF loader, builds against them)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2; then
    # A fresh machine has no package lists yet.
    $SUDO apt-get update -q >&2
    $SUDO apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2
fi
have || { echo "pkg-config still finds no libelf or zlib after installing ${pkgs[*]}" >&2; exit 1; }
