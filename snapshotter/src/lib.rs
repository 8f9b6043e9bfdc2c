//! Pre-initializes WASI reactors with Wizer, in a sandbox.
//!
//! A Go reactor's `_initialize` runs the Go runtime's init and every
//! package's `init()`; the SDK's pre-snapshot hook then runs warm-ups and a
//! GC. [`Snapshotter::snapshot`] runs both once, at build time, under a
//! wall-clock deadline and a memory cap, and returns a module whose memory
//! and globals start in the initialized state, so no instance pays for init
//! again. It then repairs what Wizer leaves behind on Go modules (see
//! [`strip_empty_passive_segments`]) and validates the result.
//!
//! ```no_run
//! # async fn demo(engine: wasmtime::Engine, wasm: &[u8]) -> Result<(), thaw_snapshotter::SnapshotError> {
//! use thaw_snapshotter::{SnapshotOptions, Snapshotter};
//!
//! let snapshotter = Snapshotter::new(engine)?;
//! let info = snapshotter.inspect(wasm)?;
//! let snapshot = snapshotter.snapshot(wasm, &info, &SnapshotOptions::default()).await?;
//! println!("{} bytes, {} dead segments dropped", snapshot.wasm.len(), snapshot.removed_segments);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod inspect;
mod segments;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use thaw_core::ModuleKind;
use thaw_core::abi::{PRE_SNAPSHOT_EXPORT, REACTOR_INIT_EXPORT};
use thaw_core::error::BoxError;
use thaw_engine::guest::{self, GuestFailure, GuestState};
use thaw_engine::outbound::OutboundSession;
use thaw_engine::profile::EpochTicker;
use thaw_engine::sandbox;
use wasmtime::{Engine, Linker};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

pub use inspect::{ModuleInfo, inspect};
pub use segments::{MalformedModule, Stripped, strip_empty_passive_segments};

/// Why a module cannot be snapshotted. Every variant names the cause
/// precisely enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The input is not a WebAssembly binary.
    #[error("not a WebAssembly module: {reason}")]
    NotWasm {
        /// What was found instead.
        reason: String,
    },
    /// A component, not a core module.
    #[error("this is a WebAssembly component; thaw takes core modules (GOOS=wasip1 GOARCH=wasm)")]
    Component,
    /// Malformed, or uses Wasm features outside thaw's profile.
    #[error("invalid WebAssembly module")]
    Invalid(#[source] wasmparser::BinaryReaderError),
    /// Wasm, but not a WASI preview 1 program.
    #[error("not a wasip1 module: {reason}")]
    NotWasip1 {
        /// Why.
        reason: String,
    },
    /// An import no thaw host provides.
    #[error(
        "unsupported import `{module}::{name}`: a thaw host provides only \
         `wasi_snapshot_preview1` functions"
    )]
    UnsupportedImport {
        /// The import's module.
        module: String,
        /// The import's name.
        name: String,
    },
    /// A reactor without the SDK's request entry point.
    #[error(
        "the reactor does not export `thaw_handle`: register a handler with the thaw Go SDK \
         (thaw.Serve or thaw.HandleFunc in init)"
    )]
    MissingEntryPoint,
    /// A command module: commands run `_start` per request, so there is
    /// no init to snapshot.
    #[error("only reactors are snapshotted; commands run `_start` per request")]
    NotAReactor,
    /// Wizer cannot snapshot this module.
    #[error("cannot snapshot this module")]
    Unsupported(#[source] BoxError),
    /// Init trapped. A Go panic or fatal error ends in a trap; its text,
    /// taken from stderr, leads the message.
    #[error("{}{}", trap_headline(.panic, .trap), stderr_suffix(.stderr))]
    InitTrap {
        /// The Go panic or fatal error line (`panic: …`), if stderr has one.
        panic: Option<String>,
        /// The trap, with its wasm backtrace.
        trap: String,
        /// What the module wrote to stderr (a Go panic's text and stack).
        stderr: String,
    },
    /// Init called `proc_exit`.
    #[error("init exited with status {code}{}", stderr_suffix(.stderr))]
    InitExit {
        /// The exit status.
        code: i32,
        /// What the module wrote to stderr.
        stderr: String,
    },
    /// Init ran past its deadline.
    #[error("init did not finish within {limit:?} (raise the init timeout if it is legitimately slow){}", stderr_suffix(.stderr))]
    InitTimeout {
        /// The deadline.
        limit: Duration,
        /// What the module wrote to stderr.
        stderr: String,
    },
    /// Init tried to grow memory past the cap.
    #[error("init tried to grow linear memory beyond the {} MiB cap{}", .limit >> 20, stderr_suffix(.stderr))]
    InitMemoryLimit {
        /// The cap in bytes.
        limit: u64,
        /// What the module wrote to stderr.
        stderr: String,
    },
    /// The snapshot failed validation: a bug in the pipeline, never stored.
    #[error("the snapshot is not valid WebAssembly")]
    InvalidSnapshot(#[source] BoxError),
    /// The engine or linker could not be set up.
    #[error("snapshotter setup failed")]
    Setup(#[source] BoxError),
}

fn trap_headline(panic: &Option<String>, trap: &str) -> String {
    match panic {
        Some(panic) => format!("init failed: {panic}"),
        None => format!("init trapped: {trap}"),
    }
}

/// The first `panic: …` or `fatal error: …` line Go printed.
fn go_panic_line(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find(|l| l.starts_with("panic: ") || l.starts_with("fatal error: "))
        .map(str::to_string)
}

fn stderr_suffix(stderr: &str) -> String {
    let trimmed = stderr.trim_end();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("\n--- guest stderr ---\n{trimmed}")
    }
}

/// Limits and inputs for one snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotOptions {
    /// Wall-clock deadline for `_initialize` plus the pre-snapshot hook.
    pub init_timeout: Duration,
    /// Largest linear memory init may grow to, in bytes.
    pub max_memory: u64,
    /// The environment init sees. Empty by default: the build host's
    /// environment never leaks into a snapshot unless asked for.
    pub env: Vec<(String, String)>,
    /// Cap on captured stdout and stderr, each.
    pub max_output: usize,
}

/// Default [`SnapshotOptions::init_timeout`].
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`SnapshotOptions::max_memory`]: 1 GiB.
pub const DEFAULT_INIT_MAX_MEMORY: u64 = 1 << 30;

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self {
            init_timeout: DEFAULT_INIT_TIMEOUT,
            max_memory: DEFAULT_INIT_MAX_MEMORY,
            env: Vec::new(),
            max_output: 64 << 10,
        }
    }
}

/// A pre-initialized module.
#[derive(Debug)]
pub struct Snapshot {
    /// The snapshot, validated.
    pub wasm: Vec<u8>,
    /// How many empty passive data segments the post-pass dropped.
    pub removed_segments: usize,
    /// What init wrote to stdout.
    pub stdout: String,
    /// What init wrote to stderr.
    pub stderr: String,
}

/// Runs init under Wizer. Cheap to share: one per engine.
pub struct Snapshotter {
    engine: Engine,
    linker: Linker<GuestState>,
    provided_imports: HashSet<(String, String)>,
}

impl Snapshotter {
    /// The engine init runs on: the engine profile with wasmtime's Winch
    /// baseline compiler. Init runs once per build, so compiling it fast
    /// matters more than running it fast; the snapshot is plain Wasm, so
    /// this engine never shapes an artifact.
    pub fn baseline_engine() -> Result<Engine, SnapshotError> {
        let mut config = thaw_engine::profile::engine_config();
        config.strategy(wasmtime::Strategy::Winch);
        Engine::new(&config).map_err(|e| SnapshotError::Setup(e.into()))
    }

    /// A snapshotter on `engine`, which must come from the engine profile
    /// (epoch interruption on) with a compiler. Starts the engine's epoch
    /// ticker.
    pub fn new(engine: Engine) -> Result<Self, SnapshotError> {
        let linker = guest::linker(&engine).map_err(|e| SnapshotError::Setup(e.into()))?;
        let mut store = guest::store(
            &engine,
            sandbox::wasi_builder::<&str, &str>(&[]).build_p1(),
            OutboundSession::unavailable(),
            0,
        );
        let provided_imports = linker
            .iter(&mut store)
            .map(|(module, name, _)| (module.to_string(), name.to_string()))
            .collect();
        EpochTicker::start(&engine);
        Ok(Self {
            engine,
            linker,
            provided_imports,
        })
    }

    /// Classifies `wasm` (see [`inspect`]) against this host's imports.
    pub fn inspect(&self, wasm: &[u8]) -> Result<ModuleInfo, SnapshotError> {
        inspect(wasm, &self.provided_imports)
    }

    /// Runs init and the pre-snapshot hook once and snapshots the result.
    ///
    /// Blocks its thread while Wizer compiles the instrumented module (with
    /// Winch, about half a second for a 6 MB Go module): call it from a
    /// blocking-friendly context.
    pub async fn snapshot(
        &self,
        wasm: &[u8],
        info: &ModuleInfo,
        options: &SnapshotOptions,
    ) -> Result<Snapshot, SnapshotError> {
        if info.kind != ModuleKind::Reactor {
            return Err(SnapshotError::NotAReactor);
        }
        let stdout = MemoryOutputPipe::new(options.max_output);
        let stderr = MemoryOutputPipe::new(options.max_output);
        let wasi = sandbox::init_wasi_builder(&options.env)
            .stdin(MemoryInputPipe::new(&b""[..]))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build_p1();
        // Init runs offline: a snapshot must not depend on the network.
        let mut store = guest::store(
            &self.engine,
            wasi,
            OutboundSession::unavailable(),
            options.max_memory,
        );

        // Wizer always calls `_initialize` first, and runs it only once when
        // it is also the init function. (The Wizer CLI calls it a second time
        // in that case, which Go aborts with "randinit twice".)
        let init_func = if info.has_pre_snapshot_hook {
            PRE_SNAPSHOT_EXPORT
        } else {
            REACTOR_INIT_EXPORT
        };
        let mut wizer = wasmtime_wizer::Wizer::new();
        wizer.init_func(init_func);

        let mut started = false;
        let run = wizer.run(&mut store, wasm, async |store, module| {
            // Counted from here: Wizer's compile of the instrumented module
            // before this point is not init.
            guest::set_deadline(store, Some(Instant::now() + options.init_timeout));
            let instance = self.linker.instantiate_async(store, module).await?;
            // Only now does guest code run; failures before are the module's
            // shape (unsupported instructions, imports of the wrong type).
            started = true;
            Ok(instance)
        });
        // Init blocked in a host call (Go's time.Sleep waits in
        // poll_oneoff) runs no wasm, so no epoch check fires: the wall clock
        // bounds the whole run too. Wizer's compile of the instrumented
        // module counts against it, hence the extra minute.
        let Ok(result) =
            tokio::time::timeout(options.init_timeout + Duration::from_secs(60), run).await
        else {
            return Err(SnapshotError::InitTimeout {
                limit: options.init_timeout,
                stderr: String::from_utf8_lossy(&stderr.contents()).into_owned(),
            });
        };
        let captured =
            |pipe: &MemoryOutputPipe| String::from_utf8_lossy(&pipe.contents()).into_owned();
        let raw = match result {
            Ok(raw) => raw,
            Err(error) => {
                let stderr = captured(&stderr);
                return Err(if !started {
                    SnapshotError::Unsupported(error.into())
                } else {
                    match GuestFailure::of(&error, &store) {
                        GuestFailure::MemoryLimit => SnapshotError::InitMemoryLimit {
                            limit: options.max_memory,
                            stderr,
                        },
                        GuestFailure::Timeout => SnapshotError::InitTimeout {
                            limit: options.init_timeout,
                            stderr,
                        },
                        GuestFailure::Exit(code) => SnapshotError::InitExit { code, stderr },
                        GuestFailure::Trap(trap) => SnapshotError::InitTrap {
                            panic: go_panic_line(&stderr),
                            trap,
                            stderr,
                        },
                    }
                });
            }
        };

        let stripped = strip_empty_passive_segments(&raw)
            .map_err(|e| SnapshotError::InvalidSnapshot(e.into()))?;
        // Wizer's release build does not validate what it writes; a snapshot
        // wasmtime would refuse must fail the build, not every edge host.
        wasmparser::Validator::new_with_features(thaw_engine::profile::wasm_features())
            .validate_all(&stripped.wasm)
            .map_err(|e| SnapshotError::InvalidSnapshot(e.into()))?;
        Ok(Snapshot {
            wasm: stripped.wasm,
            removed_segments: stripped.removed,
            stdout: captured(&stdout),
            stderr: captured(&stderr),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_panic_leads_the_error() {
        let err = SnapshotError::InitTrap {
            panic: go_panic_line("noise\npanic: boom\n\ngoroutine 1 [running]:\n"),
            trap: "wasm `unreachable` instruction executed".into(),
            stderr: "panic: boom\n".into(),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("init failed: panic: boom\n--- guest stderr ---"),
            "{text}"
        );
        assert_eq!(
            go_panic_line("fatal error: out of memory").as_deref(),
            Some("fatal error: out of memory")
        );
        assert_eq!(go_panic_line("all fine"), None);
    }
}
