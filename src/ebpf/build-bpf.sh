#!/usr/bin/env bash
# Regenerate bpf/fix_monitor.bpf.o (committed, so `cargo build` needs no clang) from
# bpf/fix_monitor.bpf.c, or check that the committed object is what the source builds to.
#
#   src/ebpf/build-bpf.sh             # rebuild the object and its inputs stamp
#   src/ebpf/build-bpf.sh --check     # rebuild twice in a temporary folder; fail if either
#                                     # build differs from the other or from the committed object
#   src/ebpf/build-bpf.sh --vmlinux   # regenerate bpf/vmlinux.h from this kernel's BTF, then
#                                     # rebuild
#
# bpf/vmlinux.h (the kernel's types as C, 2.8 MB, made with bpftool from VMLINUX_BTF, default
# /sys/kernel/btf/vmlinux) is committed, as libbpf-tools commit theirs: the object's own BTF
# carries the kernel types the programs use, so the object depends on the vmlinux.h it was
# built against, and with it committed a machine with another kernel builds the same object
# (CO-RE relocates it at load). bpf/fix_monitor.bpf.o.inputs records the tool versions and the
# sources' sha256 (vmlinux.h's too); --check says so plainly when they differ.
#
# Reproducible: the compile runs in a fixed folder on relative paths, debug paths are mapped
# (-fdebug-prefix-map), and llvm-strip drops DWARF (the .BTF and .BTF.ext sections the loader
# needs stay). Needs Debian bookworm's clang, llvm, libbpf-dev, bpftool.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BPF="$HERE/bpf"
OBJ="$BPF/fix_monitor.bpf.o"
STAMP="$OBJ.inputs"
VMLINUX_BTF="${VMLINUX_BTF:-/sys/kernel/btf/vmlinux}"

die() { printf 'build-bpf: %s\n' "$*" >&2; exit 1; }
for tool in clang llvm-strip sha256sum; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install -y clang llvm libbpf-dev bpftool)"
done
[ -f /usr/include/bpf/bpf_helpers.h ] || die "missing libbpf headers (apt-get install -y libbpf-dev)"

if [ "${1:-}" = "--vmlinux" ]; then
    command -v bpftool >/dev/null || die "missing bpftool (apt-get install -y bpftool)"
    [ -r "$VMLINUX_BTF" ] || die "no kernel BTF at $VMLINUX_BTF"
    bpftool btf dump file "$VMLINUX_BTF" format c >"$BPF/vmlinux.h"
    echo "build-bpf: wrote $BPF/vmlinux.h from $VMLINUX_BTF"
    shift
fi

inputs() {
    printf 'clang %s\n' "$(clang --version | head -1)"
    printf 'libbpf-dev %s\n' "$(dpkg-query -W -f='${Version}' libbpf-dev 2>/dev/null || echo unknown)"
    (cd "$BPF" && sha256sum fix_monitor.bpf.c fix_monitor.h vmlinux.h)
}

# build OUT_DIR: compile the object into OUT_DIR/fix_monitor.bpf.o
build() {
    local out="$1" work
    work="$(mktemp -d)"
    cp "$BPF/fix_monitor.bpf.c" "$BPF/fix_monitor.h" "$BPF/vmlinux.h" "$work/"
    # -mcpu=v3: atomic fetch-and-add with its result (the live table's slots), 32-bit jumps;
    # every kernel the programs need (6.10+) takes it.
    (cd "$work" && clang -target bpf -mcpu=v3 -O2 -g -D__TARGET_ARCH_x86 -I. \
        -fdebug-prefix-map="$work"=. -fno-ident \
        -c fix_monitor.bpf.c -o fix_monitor.bpf.o &&
        llvm-strip -g fix_monitor.bpf.o)
    cp "$work/fix_monitor.bpf.o" "$out/"
    rm -rf "$work"
}

if [ "${1:-}" = "--check" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir "$tmp/a" "$tmp/b"
    build "$tmp/a"
    build "$tmp/b"
    cmp -s "$tmp/a/fix_monitor.bpf.o" "$tmp/b/fix_monitor.bpf.o" ||
        die "two builds of the same source differ: the build is not reproducible"
    if ! diff -u "$STAMP" <(inputs) >"$tmp/inputs.diff"; then
        cat "$tmp/inputs.diff" >&2
        die "the inputs differ from those recorded in $(basename "$STAMP") (above): a rebuild here is not comparable"
    fi
    cmp -s "$tmp/a/fix_monitor.bpf.o" "$OBJ" ||
        die "bpf/fix_monitor.bpf.o is not what bpf/fix_monitor.bpf.c builds to: run src/ebpf/build-bpf.sh and commit"
    echo "build-bpf: the committed object matches its source (two identical rebuilds)"
    exit 0
fi

build "$BPF"
inputs >"$STAMP"
echo "build-bpf: wrote $OBJ ($(stat -c %s "$OBJ") bytes)"
