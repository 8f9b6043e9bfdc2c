#!/usr/bin/env bash
# Keeps the crate graph of docs/architecture.md true: each crate links only
# what its concern needs. Fails, naming the crate and the dependency, when a
# change pulls a compiler into the runner, a runtime into the data crate, or
# the HTTP service into the build pipeline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

failed=0

# forbid CRATE PATTERN WHY: CRATE's normal dependency tree must not contain
# a package whose name matches PATTERN (an extended regex).
forbid() {
    local crate="$1" pattern="$2" why="$3" found
    found="$(cargo tree -p "$crate" -e normal --prefix none --locked \
        | awk '{print $1}' | sort -u | grep -E "^($pattern)$" || true)"
    if [ -n "$found" ]; then
        echo "crate graph: $crate depends on $(echo "$found" | tr '\n' ' ')- $why" >&2
        failed=1
    fi
}

compilers='cranelift-codegen|wasmtime-internal-cranelift|wasmtime-internal-winch|winch-codegen|wasmtime-wizer'
runtimes='wasmtime|wasmtime-wasi|object_store|tokio'
service='axum|utoipa|prometheus-client|thaw-http|thaw-registry'

forbid thaw-runner "$compilers" "the runner must never compile code"
forbid thaw-engine "$compilers" "the runtime layer is shared with the runner"
forbid thaw-engine "reqwest|hyper|$service" "the runtime layer is shared with the build pipeline, which links no HTTP client"
forbid thaw-core "$runtimes|reqwest|$service" "the core is plain data, usable by every crate"
forbid thaw-store "wasmtime|wasmtime-wasi|$service" "the store holds bytes, it never runs them"
forbid thaw-client "wasmtime|wasmtime-wasi|object_store|$service" "clients need only the wire types and the verifier"
forbid thaw-builder "$service|reqwest|thaw-client" "a local build must not link the service"
forbid thaw-registry "thaw-client" "the server takes its wire types from thaw-core, not from the client"

# Test-only fault injection must never reach a binary.
for binary in thaw thaw-runner; do
    if cargo tree -p "$binary" -e normal,features --prefix none --locked \
        | grep -q 'feature "test-hooks"'; then
        echo "crate graph: $binary links thaw-builder's test-hooks feature" >&2
        failed=1
    fi
done

if [ "$failed" -ne 0 ]; then
    exit 1
fi
echo "crate graph: ok"
