//! Names shared between the Go SDK (`sdk/go`), the snapshotter and the runner.
//! See `docs/abi.md`.

/// The SDK's request entry point: `[] -> []`. It reads one HTTP/1.1 request
/// from stdin and writes one HTTP/1.1 response to stdout.
pub const HANDLE_EXPORT: &str = "thaw_handle";

/// The SDK's pre-snapshot hook: `[] -> []`. Runs the user's warm-up
/// functions, then `runtime.GC()`. Called once, after `_initialize`.
pub const PRE_SNAPSHOT_EXPORT: &str = "thaw_pre_snapshot";

/// A WASI reactor's initializer (Go runtime init plus every package `init()`).
pub const REACTOR_INIT_EXPORT: &str = "_initialize";

/// A WASI command's entry point.
pub const COMMAND_EXPORT: &str = "_start";

/// The only import module a thaw host provides.
pub const WASI_P1_MODULE: &str = "wasi_snapshot_preview1";
