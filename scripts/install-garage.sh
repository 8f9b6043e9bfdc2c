#!/usr/bin/env bash
# Installs Garage, the S3-compatible object store the registry tests run
# against, into .toolchain/garage when missing. The first install compiles it
# from crates.io (about 10 minutes on 2 cores); later runs reuse the binary.
# Prints the path of the garage binary on its last line.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
garage_version="2.5.0"
root="$repo_root/.toolchain/garage"
bin="$root/bin/garage"

if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "v$garage_version"; then
    echo "install-garage.sh: installing garage $garage_version into $root (about 10 minutes the first time)" >&2
    cargo install --quiet --locked garage --version "$garage_version" --root "$root" >&2
fi
echo "$bin"
