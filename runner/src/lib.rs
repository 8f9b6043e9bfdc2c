//! The edge runner: loads verified precompiled functions and runs every
//! request in a fresh sandboxed instance.
//!
//! This crate links wasmtime's runtime but not its compiler: it can only
//! load artifacts the compiler produced, never compile code itself.
//!
//! Loading ([`Runner::load`]) resolves a reference to a manifest, picks the
//! artifact built for this host, checks its SHA-256 against the manifest,
//! and memory-maps it from a local cache that is only ever written by
//! write-to-temp, fsync and rename. Calling ([`Function::call`]) creates a
//! new instance from a pre-linked [`InstancePre`] in the pooling allocator,
//! whose copy-on-write memory image makes a snapshotted Go heap cost
//! nothing to restore.
//!
//! ```no_run
//! # async fn demo() -> Result<(), thaw_runner::RunError> {
//! use thaw_runner::{Runner, RunnerConfig};
//! use thaw_store::ArtifactStore;
//!
//! let store = ArtifactStore::open("/var/lib/thaw").unwrap();
//! let runner = Runner::new(RunnerConfig::new("/var/cache/thaw"))?;
//! let hello = runner.load(&store, &"hello:v1".parse().unwrap()).await?;
//! let output = hello.call(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[]).await?;
//! println!("{}", String::from_utf8_lossy(&output.stdout));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod cache;
pub mod catalog;
pub mod http;
mod metrics;
#[cfg(feature = "cli")]
pub mod options;
pub mod outbound;
pub mod reset;
mod source;
mod trace;

pub use reset::{ResetWork, SlotReset};
pub use source::{ArtifactSource, Source};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thaw_core::abi::COMPACT_HANDLE_EXPORT;
use thaw_core::error::BoxError;
use thaw_core::target::host_triple;
use thaw_core::{Artifact, Digest, Manifest, ModuleKind, Reference};
use thaw_engine::guest::{self, GuestFailure, GuestState};
use thaw_engine::outbound::{OutboundPolicy, OutboundSession, OutboundTally, Transport};
use thaw_engine::profile::{self, EPOCH_TICK, EpochTicker};
use thaw_engine::sandbox;
use thaw_store::StoreError;
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, InstancePre, Linker, Memory, Module,
    PoolingAllocationConfig, Store,
};
use wasmtime_wasi::FsPerms;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

/// Why loading or calling a function failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store failed (including a blob that failed verification).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry failed, or what it sent failed verification.
    #[error(transparent)]
    Registry(#[from] thaw_client::ClientError),
    /// The manifest has no artifact for this host.
    #[error("{reference} has no artifact for this host ({host}); it was built for: {available}")]
    NoArtifactForHost {
        /// What was loaded.
        reference: String,
        /// This host's triple.
        host: String,
        /// The manifest's targets.
        available: String,
    },
    /// wasmtime refused the artifact: another wasmtime version, engine
    /// settings, or CPU features this host lacks.
    #[error("artifact {artifact} cannot load on this host ({host})")]
    Incompatible {
        /// The artifact: digest, target, ISA flags and the wasmtime that built it.
        artifact: String,
        /// This host: triple and this runner's wasmtime.
        host: String,
        /// What wasmtime said.
        #[source]
        source: BoxError,
    },
    /// The local artifact cache failed.
    #[error("artifact cache {path}: {source}")]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The engine, the linker or a guest's sandbox could not be set up.
    #[error("runner setup failed: {what}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// What wasmtime said.
        #[source]
        source: BoxError,
    },
    /// The guest trapped (a Go panic that escaped the SDK ends here).
    #[error("function trapped: {message}")]
    Trap {
        /// The trap.
        message: String,
        /// What the guest wrote to stderr.
        stderr: Bytes,
    },
    /// The guest exited with a non-zero status.
    #[error("function exited with status {code}")]
    Exit {
        /// The status.
        code: i32,
        /// What the guest wrote to stderr.
        stderr: Bytes,
    },
    /// The request ran past its deadline.
    #[error("function exceeded its {0:?} deadline")]
    Timeout(Duration),
    /// The guest tried to grow memory past its cap.
    #[error("function exceeded its {} MiB memory cap", .0 >> 20)]
    MemoryLimit(u64),
}

/// Tunables of a [`Runner`]. Defaults are documented on each constant.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Directory of verified artifacts (`<hex digest>.cwasm`).
    pub cache_dir: PathBuf,
    /// Instances that may exist at once (pooling allocator slots).
    pub max_instances: u32,
    /// Linear-memory cap per instance, in bytes.
    pub max_memory: u64,
    /// Wall-clock deadline per request.
    pub request_timeout: Duration,
    /// Cap on captured stdout (the response) per request.
    pub max_stdout: usize,
    /// Cap on captured stderr per request.
    pub max_stderr: usize,
    /// Bytes of each instance slot's linear memory kept mapped between
    /// requests and reset in place: the whole region, or at most this many
    /// bytes of written pages (see [`reset`]).
    pub keep_resident: u64,
    /// How slots are reset between requests.
    pub slot_reset: SlotReset,
    /// How instances get their memory.
    pub allocator: Allocator,
    /// Hash every cached artifact at every load, rather than trusting a
    /// file verified before whose identity is unchanged.
    pub verify_on_load: bool,
    /// How the HTTP front hands requests to SDK functions.
    pub request_abi: RequestAbi,
}

/// How requests reach an SDK function (`docs/abi.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum RequestAbi {
    /// Length-prefixed fields in and out (`thaw_handle_compact`), for
    /// functions whose SDK has them; HTTP/1.1 text for the others.
    #[default]
    Compact,
    /// HTTP/1.1 text in and out (`thaw_handle`) for every function: what
    /// hosts did before the compact entry point, kept to measure it.
    Text,
}

/// How instances get their memory and tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Allocator {
    /// Preallocated slots, reused across requests with copy-on-write
    /// memory images: the fast path, and the default.
    #[default]
    Pooling,
    /// A fresh mapping per instance: slower, kept to measure what pooling
    /// buys (`docs/benchmarks.md`).
    OnDemand,
}

/// Default [`RunnerConfig::max_instances`].
pub const DEFAULT_MAX_INSTANCES: u32 = 64;
/// Default [`RunnerConfig::max_memory`]: 512 MiB.
pub const DEFAULT_MAX_MEMORY: u64 = 512 << 20;
/// Default [`RunnerConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`RunnerConfig::max_stdout`]: 16 MiB.
pub const DEFAULT_MAX_STDOUT: usize = 16 << 20;
/// Default [`RunnerConfig::max_stderr`]: 64 KiB.
pub const DEFAULT_MAX_STDERR: usize = 64 << 10;
/// Default [`RunnerConfig::keep_resident`]: 8 MiB.
pub const DEFAULT_KEEP_RESIDENT: u64 = 8 << 20;
/// Go's own wasm test runner gives 8 MiB of wasm stack; Go code expects it.
pub const WASM_STACK: usize = 8 << 20;

impl RunnerConfig {
    /// Defaults, with the given cache directory.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            max_instances: DEFAULT_MAX_INSTANCES,
            max_memory: DEFAULT_MAX_MEMORY,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_stdout: DEFAULT_MAX_STDOUT,
            max_stderr: DEFAULT_MAX_STDERR,
            keep_resident: DEFAULT_KEEP_RESIDENT,
            slot_reset: SlotReset::Auto,
            request_abi: RequestAbi::Compact,
            allocator: Allocator::Pooling,
            verify_on_load: false,
        }
    }
}

/// Loads functions and runs requests. One per process.
pub struct Runner {
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
    config: RunnerConfig,
    reset: reset::ResetChoice,
    outbound: Arc<dyn Transport>,
}

impl Runner {
    /// Builds the engine from the shared engine profile, with the pooling
    /// allocator sized by `config`.
    pub fn new(config: RunnerConfig) -> Result<Self, RunError> {
        let setup = |what| {
            move |e: wasmtime::Error| RunError::Setup {
                what,
                source: e.into(),
            }
        };
        let reset = reset::choose(config.slot_reset, config.keep_resident).map_err(|e| {
            RunError::Setup {
                what: "the slot reset",
                source: e.into(),
            }
        })?;
        tracing::info!(strategy = reset.strategy(), reason = %reset.reason, "slot reset");
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_memories(config.max_instances)
            .total_tables(config.max_instances)
            .total_core_instances(config.max_instances)
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_memory as usize)
            // Go's function table holds every address-taken function.
            .table_elements(1 << 17)
            // Resetting a slot in place (memcpy from the image, memset
            // beyond it) instead of madvise avoids a page fault per touched
            // page on the next request and the mmap-lock contention of many
            // concurrent madvise calls: measured 1.2k -> 7.4k req/s at
            // concurrency 32 on examples/hello. Without the dirty-page scan
            // the whole kept region is copied every time, so it stays small:
            // 64 -> 8 MiB took init-heavy (a 23 MB image) from 781 to 515 µs
            // at c=1.
            .linear_memory_keep_resident(config.keep_resident as usize)
            .table_keep_resident(1 << 20)
            .pagemap_scan(if reset.dirty_pages.is_some() {
                Enabled::Yes
            } else {
                Enabled::No
            });
        let strategy = match config.allocator {
            Allocator::Pooling => InstanceAllocationStrategy::Pooling(pooling),
            Allocator::OnDemand => InstanceAllocationStrategy::OnDemand,
        };
        let mut engine_config = profile::engine_config();
        engine_config
            .allocation_strategy(strategy)
            .max_wasm_stack(WASM_STACK)
            // Guest code runs on a fiber: its stack holds the wasm stack plus
            // room for host calls (WASI) made from the deepest frame.
            .async_stack_size(WASM_STACK + (1 << 20));
        let engine = Engine::new(&engine_config).map_err(setup("the engine"))?;
        let linker = guest::linker(&engine).map_err(setup("the WASI linker"))?;
        cache::prepare_dir(&config.cache_dir).map_err(|source| RunError::Cache {
            path: config.cache_dir.clone(),
            source,
        })?;
        EpochTicker::start(&engine);
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            config,
            reset,
            outbound: Arc::new(outbound::HttpTransport::default()),
        })
    }

    /// The engine, for inspection.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The configuration the runner was built with.
    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// Resolves `reference` in `source` (a trusted store, or a registry
    /// whose signatures are checked) and loads the best artifact for this
    /// host: the one for its triple with the most ISA flags this CPU has.
    pub async fn load(
        &self,
        source: &impl ArtifactSource,
        reference: &Reference,
    ) -> Result<Function, RunError> {
        self.load_profile(source, reference, None).await
    }

    /// Like [`Runner::load`], but loads the artifact of the target profile
    /// named `profile` when one is given (wasmtime still refuses it if this
    /// CPU lacks its features).
    pub async fn load_profile(
        &self,
        source: &impl ArtifactSource,
        reference: &Reference,
        profile: Option<&str>,
    ) -> Result<Function, RunError> {
        let (digest, manifest) = source.resolve(reference).await?;
        let host = host_triple();
        let chosen = match profile {
            Some(name) => manifest.artifact_for(name),
            None => best_artifact_for_host(&manifest),
        };
        let artifact = chosen
            .ok_or_else(|| RunError::NoArtifactForHost {
                reference: reference.to_string(),
                host: host.clone(),
                available: manifest
                    .artifacts
                    .iter()
                    .map(|a| format!("{} ({})", a.profile, a.target))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?
            .clone();
        let incompatible = {
            let artifact = format!(
                "{} (built for {} with wasmtime {}, ISA flags [{}])",
                artifact.blob.digest,
                artifact.target,
                artifact.wasmtime_version,
                artifact.isa_flags.join(", ")
            );
            move |e: wasmtime::Error| RunError::Incompatible {
                artifact: artifact.clone(),
                host: format!("{host}, wasmtime {}", profile::WASMTIME_VERSION),
                source: e.into(),
            }
        };
        let (engine, linker) = (self.engine.clone(), self.linker.clone());
        let pre = self
            .cached_artifact(source, &artifact, move |file| {
                // SAFETY: `file` is a handle whose bytes matched the
                // artifact's digest (hashed now, or before with its
                // identity unchanged since; see `cache`), from a manifest
                // read from the trusted store or signed by a trusted
                // registry key. Cache files are only created by rename,
                // read-only, in a directory private to this account, and
                // never rewritten in place, so the mapping cannot change
                // under us.
                let module = unsafe { Module::deserialize_open_file(&engine, file) }
                    .map_err(&incompatible)?;
                linker.instantiate_pre(&module).map_err(&incompatible)
            })
            .await?;
        let module = pre.module();
        let compact = self.config.request_abi == RequestAbi::Compact
            && manifest.kind == ModuleKind::Reactor
            && matches!(
                module.get_export(COMPACT_HANDLE_EXPORT),
                Some(wasmtime::ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0
            );
        Ok(Function {
            manifest_digest: digest,
            manifest,
            pre,
            compact,
            config: self.config.clone(),
            dirty_pages: self
                .reset
                .dirty_pages
                .clone()
                .map(|pages| Arc::new(reset::SlotScans::new(pages))),
            outbound: self.outbound.clone(),
        })
    }

    /// `load` applied, on the blocking pool, to an open handle to the
    /// verified local copy of `artifact`, fetched first when missing or
    /// when the cached copy fails verification (see [`cache`] for how a
    /// cached copy is trusted). The handle that was checked is the one
    /// that gets mapped, so a file swapped in the cache after the check is
    /// never loaded. Loading (about 0.5 ms for a Go module, mostly
    /// wasmtime decoding the artifact's metadata) happens in the same
    /// hand-off as the check, off the async workers, where it would hold
    /// up every other request on the worker.
    async fn cached_artifact<T: Send + 'static>(
        &self,
        source: &impl ArtifactSource,
        artifact: &Artifact,
        load: impl FnOnce(std::fs::File) -> Result<T, RunError> + Send + 'static,
    ) -> Result<T, RunError> {
        let entry = Arc::new(cache::Entry::new(
            &self.config.cache_dir,
            artifact.blob.digest,
        ));
        let cache_error = {
            let path = entry.file.clone();
            move |source| RunError::Cache {
                path: path.clone(),
                source,
            }
        };
        let (cached, rehash, error) = (
            entry.clone(),
            self.config.verify_on_load,
            cache_error.clone(),
        );
        // The load comes back unused when there is no trusted copy.
        let opened = tokio::task::spawn_blocking(move || {
            match cache::open_trusted(&cached, rehash).map_err(error)? {
                cache::Cached::Trusted(file) => load(file).map(Ok),
                cache::Cached::Missing => Ok(Err(load)),
            }
        })
        .await
        .expect("opening does not panic")?;
        let load = match opened {
            Ok(loaded) => return Ok(loaded),
            Err(load) => load,
        };
        let incoming = cache::incoming(&entry).map_err(cache_error.clone())?;
        let written = source.fetch_blob_into(&artifact.blob, incoming).await?;
        let target = entry.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            load(cache::admit(&target, written).map_err(cache_error)?)
        })
        .await
        .expect("admitting does not panic")?;
        tokio::spawn(cache::settle(entry));
        Ok(loaded)
    }
}

/// The artifact for this host's triple whose ISA flags this CPU all has,
/// preferring the one with the most flags (e.g. x86-64-v3 over v2).
pub fn best_artifact_for_host(manifest: &Manifest) -> Option<&Artifact> {
    let host = host_triple();
    manifest
        .artifacts
        .iter()
        .filter(|a| a.target == host && a.isa_flags.iter().all(|f| cpu_has(f)))
        .max_by_key(|a| a.isa_flags.len())
}

/// Whether this CPU has the feature a Cranelift ISA flag requires. Unknown
/// flags count as missing, so an artifact is never picked on a guess.
pub fn cpu_has(flag: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match flag {
            "has_sse3" => std::arch::is_x86_feature_detected!("sse3"),
            "has_ssse3" => std::arch::is_x86_feature_detected!("ssse3"),
            "has_cmpxchg16b" => std::arch::is_x86_feature_detected!("cmpxchg16b"),
            "has_sse41" => std::arch::is_x86_feature_detected!("sse4.1"),
            "has_sse42" => std::arch::is_x86_feature_detected!("sse4.2"),
            "has_popcnt" => std::arch::is_x86_feature_detected!("popcnt"),
            "has_avx" => std::arch::is_x86_feature_detected!("avx"),
            "has_avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "has_fma" => std::arch::is_x86_feature_detected!("fma"),
            "has_bmi1" => std::arch::is_x86_feature_detected!("bmi1"),
            "has_bmi2" => std::arch::is_x86_feature_detected!("bmi2"),
            "has_lzcnt" => std::arch::is_x86_feature_detected!("lzcnt"),
            _ => false,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        match flag {
            "has_lse" => std::arch::is_aarch64_feature_detected!("lse"),
            "has_pauth" => std::arch::is_aarch64_feature_detected!("paca"),
            "has_fp16" => std::arch::is_aarch64_feature_detected!("fp16"),
            _ => false,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = flag;
        false
    }
}

/// The name a function is served under: the tag's name, or the digest's
/// short form.
pub fn function_name(reference: &Reference) -> String {
    match reference {
        Reference::Tag(tag) => tag.name().to_string(),
        Reference::Digest(digest) => digest.short(),
    }
}

/// Serves `app` on `listener` within `limits` until Ctrl-C or SIGTERM,
/// then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: http::App,
    limits: thaw_http::ConnectionLimits,
) -> std::io::Result<()> {
    thaw_http::serve(listener, app.router(), limits, thaw_http::shutdown_signal()).await
}

/// A loaded function, ready to serve requests.
pub struct Function {
    manifest_digest: Digest,
    manifest: Manifest,
    pre: InstancePre<GuestState>,
    /// Whether requests take the compact entry point.
    compact: bool,
    config: RunnerConfig,
    dirty_pages: Option<Arc<reset::SlotScans>>,
    outbound: Arc<dyn Transport>,
}

/// What one call produced.
#[derive(Debug)]
pub struct Output {
    /// Everything written to stdout (for SDK functions, an HTTP/1.1 response).
    pub stdout: Bytes,
    /// Everything written to stderr, capped.
    pub stderr: Bytes,
    /// Time to create the instance.
    pub instantiate: Duration,
    /// Total time of the call.
    pub total: Duration,
}

/// What a call hands the guest, and so which of its exports runs.
#[derive(Debug)]
pub enum Invocation {
    /// The manifest's entry, with this stdin: HTTP/1.1 text for an SDK
    /// function (`thaw_handle`), the request body for a CGI command.
    Entry(Vec<u8>),
    /// The SDK's compact entry (`thaw_handle_compact`), with a request
    /// frame ([`thaw_core::abi::encode_request_frame`]) as stdin; stdout
    /// is then a response frame. Only for a function that
    /// [`Function::speaks_compact`].
    Compact(Vec<u8>),
}

/// A call's instance once it has stopped, not yet torn down.
/// [`SpentInstance::retire`] tears it down: it readies the slot for the
/// dirty-page reset (a page-table scan when the instance took page faults,
/// about 0.1 ms) and resets the slot, copying back up to the keep-resident
/// size of memory (about 4 ms the first time a slot holds a module, ~0.1
/// ms after), on the thread that retires it. Retire it where that costs
/// least: off the request's path while cores are idle (measured: a cold
/// first request 5 → 1.5 ms), inline under load, where any hand-off costs
/// throughput. Dropping it unretired resets the slot just as safely, but
/// skips the run merging that keeps later requests in the slot free of
/// page faults (see [`reset`]).
pub struct SpentInstance {
    store: Store<GuestState>,
    memory: Option<Memory>,
    page_faults: Option<u64>,
    dirty_pages: Option<Arc<reset::SlotScans>>,
}

impl SpentInstance {
    /// Tears the instance down and frees its pool slot; returns what the
    /// slot's reset copied back, when slots are reset by their dirty pages.
    pub fn retire(mut self) -> Option<ResetWork> {
        let work = self.prepare_reset();
        drop(self.store);
        work
    }

    /// Readies the slot for wasmtime's dirty-page reset (see [`reset`]).
    fn prepare_reset(&mut self) -> Option<ResetWork> {
        let (dirty_pages, memory) = (self.dirty_pages.as_ref()?, self.memory?);
        // Only a page fault makes a page private, so an instance that
        // took none left its slot's private pages as the last scan found
        // them (unknown counts as some).
        let unchanged = self.page_faults == Some(0);
        match dirty_pages.prepare(memory.data_mut(&mut self.store), unchanged) {
            Ok(work) => Some(work),
            Err(e) => {
                // The reset itself does not depend on this: it only costs
                // page faults on the next request.
                tracing::warn!(error = %e, "scanning an instance's dirty pages failed");
                None
            }
        }
    }
}

/// One call's outcome, what it used, and its instance to tear down.
pub struct MeteredCall {
    /// The answer, or why there is none.
    pub result: Result<Output, RunError>,
    /// What the instance used.
    pub metering: Metering,
    /// The instance; its pool slot is free again once this is dropped.
    pub instance: SpentInstance,
}

/// What one call's instance used, whatever its outcome: what an operator
/// bills from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metering {
    /// CPU time the call took on this host's threads: the guest's code and
    /// the host calls it made.
    pub cpu: Duration,
    /// Page faults taken while the instance was created and ran, on the
    /// threads that ran it: pages it touched for the first time in its
    /// slot. `None` when the kernel does not count them.
    pub page_faults: Option<u64>,
    /// The guest's largest linear memory, in bytes.
    pub peak_memory: u64,
    /// What its outbound HTTP requests came to.
    pub outbound: OutboundTally,
}

/// A future that adds up the thread CPU time spent polling it (the time a
/// guest runs, whichever worker thread polls it, without its waits) and
/// the page faults taken meanwhile.
struct MeteredRun<F> {
    inner: std::pin::Pin<Box<F>>,
    spent: Duration,
    /// `None` once the kernel failed to say.
    faults: Option<u64>,
}

impl<F> MeteredRun<F> {
    fn new(inner: F) -> Self {
        Self {
            inner: Box::pin(inner),
            spent: Duration::ZERO,
            faults: Some(0),
        }
    }
}

impl<F: Future> Future for MeteredRun<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let started = cpu_time::ThreadTime::try_now().ok();
        let faults_before = reset::thread_page_faults();
        let polled = self.inner.as_mut().poll(cx);
        if let Some(elapsed) = started.and_then(|s| s.try_elapsed().ok()) {
            self.spent += elapsed;
        }
        let taken = faults_before
            .zip(reset::thread_page_faults())
            .map(|(before, after)| after - before);
        self.faults = self.faults.zip(taken).map(|(sum, taken)| sum + taken);
        polled
    }
}

impl Function {
    /// The manifest's digest.
    pub fn manifest_digest(&self) -> &Digest {
        &self.manifest_digest
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Runs one request in a fresh instance: `stdin` is the guest's stdin,
    /// `env` its whole environment. It may make no outbound request.
    /// Nothing survives the call.
    pub async fn call(&self, stdin: Vec<u8>, env: &[(String, String)]) -> Result<Output, RunError> {
        let deny_all = Arc::new(OutboundPolicy::default());
        let MeteredCall {
            result, instance, ..
        } = self
            .call_metered(Invocation::Entry(stdin), env, &deny_all)
            .await;
        instance.retire();
        result
    }

    /// Whether requests should take the compact entry point
    /// ([`Invocation::Compact`]): the function has it, and the runner's
    /// [`RunnerConfig::request_abi`] allows it.
    pub fn speaks_compact(&self) -> bool {
        self.compact
    }

    /// [`Function::call`], with outbound HTTP as `outbound` allows, and
    /// with what the instance used whatever the outcome (a request stopped
    /// at its deadline used CPU too). The instance comes back to be
    /// retired where the caller likes; hold whatever counts pool slots
    /// until it is ([`SpentInstance::retire`]).
    pub async fn call_metered(
        &self,
        invocation: Invocation,
        env: &[(String, String)],
        outbound: &Arc<OutboundPolicy>,
    ) -> MeteredCall {
        let (result, metering, instance) = self.run_instance(invocation, env, outbound).await;
        MeteredCall {
            result,
            metering,
            instance,
        }
    }

    /// One request in a fresh instance; returns the instance for the
    /// caller to retire where it likes.
    async fn run_instance(
        &self,
        invocation: Invocation,
        env: &[(String, String)],
        outbound: &Arc<OutboundPolicy>,
    ) -> (Result<Output, RunError>, Metering, SpentInstance) {
        let started = Instant::now();
        let (export, stdin) = match invocation {
            Invocation::Entry(stdin) => (&*self.manifest.entry, stdin),
            Invocation::Compact(frame) => (COMPACT_HANDLE_EXPORT, frame),
        };
        // One byte over the cap, so that a response of exactly the cap is
        // told apart from a truncated one.
        let stdout = MemoryOutputPipe::new(self.config.max_stdout + 1);
        let stderr = MemoryOutputPipe::new(self.config.max_stderr);
        let wasi = sandbox::wasi_builder(env)
            .stdin(MemoryInputPipe::new(stdin))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build_p1();
        let timeout = self.config.request_timeout;
        let deadline = started + timeout;
        let outbound =
            OutboundSession::new(self.outbound.clone(), outbound.clone(), Some(deadline));
        let mut store = guest::store(
            self.pre.module().engine(),
            wasi,
            outbound,
            self.config.max_memory,
        );
        guest::set_deadline(&mut store, Some(deadline));

        let mut memory: Option<Memory> = None;
        let mut run = MeteredRun::new(async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let instantiated = started.elapsed();
            memory = instance.get_memory(&mut store, "memory");
            let entry = instance.get_typed_func::<(), ()>(&mut store, export)?;
            entry.call_async(&mut store, ()).await?;
            Ok::<_, wasmtime::Error>(instantiated)
        });
        // A guest blocked in a host call (Go's time.Sleep waits in
        // poll_oneoff) runs no wasm, so no epoch check fires: bound the
        // whole call by the wall clock too.
        let finished = tokio::time::timeout(timeout + 2 * EPOCH_TICK, &mut run).await;
        let (cpu, page_faults) = (run.spent, run.faults);
        drop(run);
        let metering = Metering {
            cpu,
            page_faults,
            peak_memory: store.data().peak_memory(),
            outbound: store.data().outbound(),
        };
        let spent = |store| SpentInstance {
            store,
            memory,
            page_faults,
            dirty_pages: self.dirty_pages.clone(),
        };
        let Ok(result) = finished else {
            return (Err(RunError::Timeout(timeout)), metering, spent(store));
        };
        let stderr_bytes = stderr.contents();
        let instantiate = match result {
            Ok(instantiated) => instantiated,
            Err(e) => {
                let failure = match GuestFailure::of(&e, &store) {
                    // `proc_exit(0)` is how a Go command returns successfully.
                    GuestFailure::Exit(0) => None,
                    GuestFailure::Exit(code) => Some(RunError::Exit {
                        code,
                        stderr: stderr_bytes.clone(),
                    }),
                    GuestFailure::MemoryLimit => {
                        Some(RunError::MemoryLimit(self.config.max_memory))
                    }
                    GuestFailure::Timeout => Some(RunError::Timeout(timeout)),
                    GuestFailure::Trap(message) => Some(RunError::Trap {
                        message,
                        stderr: stderr_bytes.clone(),
                    }),
                };
                match failure {
                    Some(e) => return (Err(e), metering, spent(store)),
                    None => started.elapsed(),
                }
            }
        };
        let output = Output {
            stdout: stdout.contents(),
            stderr: stderr_bytes,
            instantiate,
            total: started.elapsed(),
        };
        (Ok(output), metering, spent(store))
    }

    /// Runs a command module like a local program, for `thaw exec`: the
    /// host's stdio, the host's `/` preopened read-write, `args` as argv
    /// (the first is the program name) and `env` as the whole environment.
    /// No deadline. Returns the exit status.
    pub async fn exec(&self, args: &[String], env: &[(String, String)]) -> Result<i32, RunError> {
        let mut builder = sandbox::wasi_builder(env);
        builder
            .args(args)
            .inherit_stdio()
            .preopened_dir("/", "/", FsPerms::ReadWrite)
            .map_err(|e| RunError::Setup {
                what: "preopening /",
                source: e.into(),
            })?;
        // A program run from a shell: no deadline, and no outbound HTTP.
        let mut store = guest::store(
            self.pre.module().engine(),
            builder.build_p1(),
            OutboundSession::unavailable(),
            self.config.max_memory,
        );
        let result = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let entry = instance.get_typed_func::<(), ()>(&mut store, &self.manifest.entry)?;
            entry.call_async(&mut store, ()).await
        }
        .await;
        match result {
            Ok(()) => Ok(0),
            Err(e) => match GuestFailure::of(&e, &store) {
                GuestFailure::Exit(code) => Ok(code),
                GuestFailure::MemoryLimit => Err(RunError::MemoryLimit(self.config.max_memory)),
                // `exec` sets no deadline, so an interrupt is just a trap.
                GuestFailure::Timeout | GuestFailure::Trap(_) => Err(RunError::Trap {
                    message: format!("{e:#}"),
                    stderr: Bytes::new(),
                }),
            },
        }
    }

    /// Whether requests run the SDK entry point in a snapshot (reactor) or
    /// `_start` per request (command).
    pub fn kind(&self) -> ModuleKind {
        self.manifest.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thaw_core::target::TARGETS;
    use thaw_core::{BlobRef, BuildInfo, MANIFEST_SCHEMA};

    fn artifact(name: &str, target: &str, flags: &[&str]) -> Artifact {
        Artifact {
            profile: name.into(),
            target: target.into(),
            isa_flags: flags.iter().map(|f| f.to_string()).collect(),
            blob: BlobRef {
                digest: Digest::of(name.as_bytes()),
                size: 1,
                compressed_size: 1,
            },
            wasmtime_version: profile::WASMTIME_VERSION.into(),
            compatibility_hash: Digest::of(b"h"),
            compile_ms: 1,
        }
    }

    fn manifest(artifacts: Vec<Artifact>) -> Manifest {
        let source = artifacts[0].blob.clone();
        Manifest {
            schema: MANIFEST_SCHEMA,
            kind: ModuleKind::Reactor,
            entry: "thaw_handle".into(),
            source,
            snapshot: None,
            artifacts,
            build: BuildInfo {
                cache_key: Digest::of(b"k"),
                thaw_version: "test".into(),
                wasmtime_version: profile::WASMTIME_VERSION.into(),
                init_env: vec![],
                keep_names: None,
                steps: vec![],
            },
        }
    }

    #[test]
    fn picks_the_richest_artifact_this_cpu_can_run() {
        let host = host_triple();
        let other = if host.starts_with("x86_64") {
            "aarch64-unknown-linux-gnu"
        } else {
            "x86_64-unknown-linux-gnu"
        };
        let mut artifacts: Vec<Artifact> = TARGETS
            .iter()
            .filter(|t| t.triple == host)
            .map(|t| artifact(t.name, t.triple, t.isa_flags))
            .collect();
        artifacts.push(artifact(
            "future",
            &host,
            &["has_sse3", "has_flag_no_cpu_has"],
        ));
        artifacts.push(artifact("other", other, &[]));
        let m = manifest(artifacts);
        let best = best_artifact_for_host(&m).unwrap();
        let runnable = TARGETS
            .iter()
            .filter(|t| t.triple == host && t.isa_flags.iter().all(|f| cpu_has(f)))
            .max_by_key(|t| t.isa_flags.len())
            .unwrap();
        assert_eq!(best.profile, runnable.name);
        assert!(!cpu_has("has_flag_no_cpu_has"));

        let only_foreign = manifest(vec![artifact("other", other, &[])]);
        assert!(best_artifact_for_host(&only_foreign).is_none());
    }
}
