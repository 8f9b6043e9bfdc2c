//! thaw's build pipeline: inspect → snapshot → compile → store.
//!
//! [`Builder::build`] takes a submitted Wasm module and leaves a complete
//! build in the [`ArtifactStore`]: the source, the Wizer snapshot (for
//! reactors), one precompiled artifact per target, and a manifest naming
//! them all, optionally tagged. Writes go blobs first, then the manifest,
//! then the build-cache entry and tag, so a crash at any point leaves nothing
//! that points at missing data.
//!
//! Resubmitting a module with the same [build key](PendingBuild::key)
//! returns the stored manifest without running anything.
//!
//! A service that must decide between its own steps (the registry signs
//! only what it built, and answers a submission before building) drives the
//! same pipeline in parts: [`Builder::prepare`], [`Builder::inspect`],
//! [`Builder::cached`] and [`Builder::run`]. Each step runs once per build.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use thaw_builder::{BuildRequest, Builder};
//! use thaw_core::TargetProfile;
//! use thaw_store::ArtifactStore;
//!
//! let store = ArtifactStore::open("/var/lib/thaw")?;
//! let builder = Builder::new(store, thaw_compiler::Compiler::new())?;
//! let wasm = std::fs::read("hello.wasm")?;
//! let request = BuildRequest::new(vec![TargetProfile::host()?]);
//! let outcome = builder.build(wasm.into(), &request, |event| println!("{event:?}")).await?;
//! println!("{}", outcome.manifest_digest);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod names;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thaw_compiler::{CompileError, Compiler};
use thaw_core::{
    Artifact, BuildInfo, Digest, MANIFEST_SCHEMA, Manifest, ModuleKind, StepTiming, THAW_VERSION,
    TagRef, TargetProfile,
};
use thaw_engine::profile::{self, WASMTIME_VERSION};
use thaw_snapshotter::{ModuleInfo, SnapshotError, SnapshotOptions, Snapshotter};
use thaw_store::{ArtifactStore, StoreError};

pub use thaw_compiler;
pub use thaw_snapshotter;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The module was refused or its init failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Cranelift failed.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No target was requested.
    #[error("no target requested")]
    NoTargets,
    /// The host is not a supported target (the snapshotter runs on it).
    #[error(transparent)]
    UnsupportedHost(#[from] thaw_core::UnsupportedTarget),
    /// A step panicked: a bug in thaw or in a library it drives (Wizer,
    /// Cranelift, wasmparser), not necessarily in the module. The build
    /// fails and stores nothing; the process goes on.
    #[error("the {step} step crashed ({message}); this is a bug in thaw, please report it")]
    Panicked {
        /// The step (`inspect`, `snapshot`, `compile`).
        step: &'static str,
        /// The panic's message.
        message: String,
    },
}

/// A step of the pipeline, for progress reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Validating and classifying the module.
    Inspect,
    /// Running init under Wizer.
    Snapshot,
    /// Compiling for one target profile.
    Compile(&'static TargetProfile),
    /// Writing blobs, manifest and tag.
    Store,
}

impl Step {
    /// The step without its target (`compile` for every target): a label
    /// of fixed cardinality, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Inspect => "inspect",
            Step::Snapshot => "snapshot",
            Step::Compile(_) => "compile",
            Step::Store => "store",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Compile(target) => write!(f, "compile {}", target.name),
            other => f.write_str(other.kind()),
        }
    }
}

/// Progress of a build, in order.
#[derive(Clone, Debug)]
pub enum BuildEvent {
    /// A step began.
    Started(Step),
    /// A step ended.
    Finished(Step, Duration),
    /// The build key was found in the build cache: nothing will run.
    CacheHit(Digest),
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// Targets to compile for (order and duplicates do not matter).
    pub targets: Vec<&'static TargetProfile>,
    /// Init limits and environment.
    pub snapshot: SnapshotOptions,
    /// The tag [`Builder::build`] points at the result.
    pub tag: Option<TagRef>,
    /// Whether artifacts keep the module's function names. Off by default:
    /// they cost every cold load time (see the `names` module), and the
    /// stored snapshot keeps them.
    pub keep_names: bool,
}

impl BuildRequest {
    /// A request for `targets` with default init limits, no tag, and
    /// artifacts without function names.
    pub fn new(targets: Vec<&'static TargetProfile>) -> Self {
        Self {
            targets,
            snapshot: SnapshotOptions::default(),
            tag: None,
            keep_names: false,
        }
    }
}

/// A finished build.
#[derive(Clone, Debug)]
pub struct BuildOutcome {
    /// Where the manifest is stored.
    pub manifest_digest: Digest,
    /// The manifest.
    pub manifest: Manifest,
    /// Whether it came from the build cache.
    pub cache_hit: bool,
}

/// A module accepted for building, with its targets settled and its build
/// key computed: what [`Builder::prepare`] returns and [`Builder::run`]
/// builds.
#[derive(Clone, Debug)]
pub struct PendingBuild {
    wasm: Bytes,
    source: Digest,
    key: Digest,
    targets: Vec<&'static TargetProfile>,
    snapshot: SnapshotOptions,
    keep_names: bool,
    inspected: Option<(ModuleInfo, Duration)>,
}

impl PendingBuild {
    /// The build key: the module's digest plus everything else that changes
    /// the output (targets and their flags, init environment, whether
    /// artifacts keep names, thaw and wasmtime versions, manifest schema).
    /// Limits that only decide success do not count. Identical submissions
    /// share it.
    pub fn key(&self) -> &Digest {
        &self.key
    }

    /// The targets, sorted by name, without duplicates.
    pub fn targets(&self) -> &[&'static TargetProfile] {
        &self.targets
    }
}

/// `targets` sorted by name, without duplicates: the one order a build,
/// its key and its status list them in.
fn settled(targets: &[&'static TargetProfile]) -> Vec<&'static TargetProfile> {
    let mut targets = targets.to_vec();
    targets.sort_by_key(|t| t.name);
    targets.dedup();
    targets
}

fn build_key(
    source: &Digest,
    targets: &[&'static TargetProfile],
    snapshot: &SnapshotOptions,
    keep_names: bool,
) -> Digest {
    let targets: Vec<_> = targets
        .iter()
        .map(|t| (t.name, t.triple, t.isa_flags))
        .collect();
    let mut env = snapshot.env.clone();
    env.sort();
    let key = serde_json::json!({
        "source": source,
        "targets": targets,
        "init_env": env,
        "keep_names": keep_names,
        "thaw": THAW_VERSION,
        "wasmtime": WASMTIME_VERSION,
        "schema": MANIFEST_SCHEMA,
        "wasm_features": profile::wasm_features().bits(),
    });
    Digest::of(key.to_string().as_bytes())
}

/// Runs builds against one store. Share it: it holds the engines and the
/// Cranelift incremental cache.
pub struct Builder {
    store: ArtifactStore,
    compiler: Arc<Compiler>,
    snapshotter: Arc<Snapshotter>,
}

impl Builder {
    /// A builder writing to `store`. Init runs on Winch, wasmtime's
    /// baseline compiler ([`Snapshotter::baseline_engine`]).
    pub fn new(store: ArtifactStore, compiler: Compiler) -> Result<Self, BuildError> {
        Ok(Self {
            store,
            compiler: Arc::new(compiler),
            snapshotter: Arc::new(Snapshotter::new(Snapshotter::baseline_engine()?)?),
        })
    }

    /// The store builds go to.
    pub fn store(&self) -> &ArtifactStore {
        &self.store
    }

    /// Accepts `wasm` for building as `request` says: settles the targets
    /// and computes the build key. Cheap: nothing is parsed or run.
    pub fn prepare(&self, wasm: Bytes, request: &BuildRequest) -> Result<PendingBuild, BuildError> {
        let targets = settled(&request.targets);
        if targets.is_empty() {
            return Err(BuildError::NoTargets);
        }
        let source = Digest::of(&wasm);
        let key = build_key(&source, &targets, &request.snapshot, request.keep_names);
        Ok(PendingBuild {
            wasm,
            source,
            key,
            targets,
            snapshot: request.snapshot.clone(),
            keep_names: request.keep_names,
            inspected: None,
        })
    }

    /// Validates and classifies the module: the checks a build would fail
    /// first, cheap enough to answer a submission with (tens of
    /// milliseconds for a large module, on the blocking pool). Runs once
    /// per build, however often it is called.
    pub async fn inspect(&self, mut build: PendingBuild) -> Result<PendingBuild, BuildError> {
        if build.inspected.is_none() {
            let snapshotter = self.snapshotter.clone();
            let wasm = build.wasm.clone();
            let inspected = off_thread(Step::Inspect, move || {
                let started = Instant::now();
                snapshotter
                    .inspect(&wasm)
                    .map(|info| (info, started.elapsed()))
            })
            .await??;
            build.inspected = Some(inspected);
        }
        Ok(build)
    }

    /// The manifest stored for this build's key, with its digest, if a
    /// complete one is and it is a build of this very module for this key.
    /// A cache entry that names another module's build (a bucket writer's
    /// doing) is a miss, so it is built rather than reused.
    pub async fn cached(
        &self,
        build: &PendingBuild,
    ) -> Result<Option<(Digest, Manifest)>, StoreError> {
        let Some((digest, manifest)) = self.store.cached_build(&build.key).await? else {
            return Ok(None);
        };
        if manifest.source.digest != build.source || manifest.build.cache_key != build.key {
            tracing::warn!(
                key = %build.key, manifest = %digest,
                "the build-cache entry names a build of another module or key; building instead"
            );
            return Ok(None);
        }
        Ok(Some((digest, manifest)))
    }

    /// Builds `wasm` as `request` says, reporting progress to `progress`:
    /// the whole pipeline, reusing a cached build when there is one, then
    /// points `request.tag` at the result.
    pub async fn build(
        &self,
        wasm: Bytes,
        request: &BuildRequest,
        progress: impl Fn(BuildEvent) + Send + Sync + 'static,
    ) -> Result<BuildOutcome, BuildError> {
        let pending = self.prepare(wasm, request)?;
        let outcome = match self.cached(&pending).await? {
            Some((digest, manifest)) => {
                progress(BuildEvent::CacheHit(digest));
                BuildOutcome {
                    manifest,
                    manifest_digest: digest,
                    cache_hit: true,
                }
            }
            None => self.run(pending, progress).await?,
        };
        if let Some(tag) = &request.tag {
            self.store.set_tag(tag, &outcome.manifest_digest).await?;
        }
        Ok(outcome)
    }

    /// Runs the pipeline on `build` without consulting the build cache:
    /// inspect (unless done already), snapshot, compile, store, and record
    /// the result in the build cache. Tags nothing.
    pub async fn run(
        &self,
        build: PendingBuild,
        progress: impl Fn(BuildEvent) + Send + Sync + 'static,
    ) -> Result<BuildOutcome, BuildError> {
        let progress = Arc::new(progress);
        let mut steps = Vec::new();
        let mut timed = StepClock {
            progress: progress.clone(),
            steps: &mut steps,
        };

        // Inspect may have run before the build was queued; it is reported
        // here either way, so every build's record lists every step.
        timed.started(Step::Inspect);
        let build = self.inspect(build).await?;
        let (info, inspect_time) = build.inspected.clone().expect("inspected just above");
        timed.finished(Step::Inspect, inspect_time);

        let snapshot = match info.kind {
            ModuleKind::Reactor => {
                let started = Instant::now();
                timed.started(Step::Snapshot);
                let snapshotter = self.snapshotter.clone();
                let (input, info, options) =
                    (build.wasm.clone(), info.clone(), build.snapshot.clone());
                let runtime = tokio::runtime::Handle::current();
                // Wizer compiles and runs guest code for seconds: keep it off
                // the async workers so a service stays responsive.
                let snapshot = off_thread(Step::Snapshot, move || {
                    #[cfg(feature = "test-hooks")]
                    test_hooks::panic_if_asked(&options, Step::Snapshot);
                    runtime.block_on(snapshotter.snapshot(&input, &info, &options))
                })
                .await??;
                timed.finished(Step::Snapshot, started.elapsed());
                Some(Bytes::from(snapshot.wasm))
            }
            ModuleKind::Command => None,
        };

        let mut to_compile = snapshot.clone().unwrap_or_else(|| build.wasm.clone());
        if !build.keep_names
            && let Some(stripped) = names::without_names(&to_compile)
        {
            to_compile = Bytes::from(stripped);
        }
        let (hits_before, misses_before) = self.compiler.cache().stats();
        for target in &build.targets {
            progress(BuildEvent::Started(Step::Compile(target)));
        }
        let compiler = self.compiler.clone();
        let compile_progress = progress.clone();
        let compile_targets = build.targets.clone();
        #[cfg(feature = "test-hooks")]
        let hook_options = build.snapshot.clone();
        let compiled = off_thread(Step::Compile(build.targets[0]), move || {
            #[cfg(feature = "test-hooks")]
            test_hooks::panic_if_asked(&hook_options, Step::Compile(compile_targets[0]));
            compiler.compile(&to_compile, &compile_targets, |artifact| {
                compile_progress(BuildEvent::Finished(
                    Step::Compile(artifact.target),
                    artifact.elapsed,
                ))
            })
        })
        .await??;
        let (hits, misses) = self.compiler.cache().stats();
        tracing::info!(
            hits = hits - hits_before,
            misses = misses - misses_before,
            "Cranelift incremental cache"
        );
        for artifact in &compiled {
            timed.record(Step::Compile(artifact.target), artifact.elapsed);
        }

        let started = Instant::now();
        progress(BuildEvent::Started(Step::Store));
        let source = self.store.put_blob(build.wasm).await?;
        let snapshot = match snapshot {
            Some(bytes) => Some(self.store.put_blob(bytes).await?),
            None => None,
        };
        let mut artifacts = Vec::new();
        for c in compiled {
            let elapsed = c.elapsed;
            let blob = self.store.put_blob(Bytes::from(c.bytes)).await?;
            artifacts.push(Artifact {
                profile: c.target.name.to_string(),
                target: c.target.triple.to_string(),
                isa_flags: c.target.isa_flags.iter().map(|f| f.to_string()).collect(),
                blob,
                wasmtime_version: WASMTIME_VERSION.to_string(),
                compatibility_hash: c.compatibility_hash,
                compile_ms: elapsed.as_millis() as u64,
            });
        }
        // The store step's own time cannot be inside the manifest it writes;
        // it is reported as progress only.
        let manifest = Manifest {
            schema: MANIFEST_SCHEMA,
            kind: info.kind,
            entry: info.entry.clone(),
            source,
            snapshot,
            artifacts,
            build: BuildInfo {
                cache_key: build.key,
                thaw_version: THAW_VERSION.to_string(),
                wasmtime_version: WASMTIME_VERSION.to_string(),
                init_env: build.snapshot.env.iter().map(|(k, _)| k.clone()).collect(),
                keep_names: Some(build.keep_names),
                steps,
            },
        };
        let manifest_digest = self.store.put_manifest(&manifest).await?;
        self.store
            .put_cached_build(&build.key, &manifest_digest)
            .await?;
        progress(BuildEvent::Finished(Step::Store, started.elapsed()));
        tracing::info!(manifest = %manifest_digest, kind = %manifest.kind, "build stored");
        Ok(BuildOutcome {
            manifest_digest,
            manifest,
            cache_hit: false,
        })
    }
}

/// Runs CPU-bound `work` of `step` on the blocking pool, so async workers
/// stay responsive. A panic in it fails the build with
/// [`BuildError::Panicked`] instead of taking down the caller.
async fn off_thread<T: Send + 'static>(
    step: Step,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BuildError::Panicked {
            step: step.kind(),
            message: match e.try_into_panic() {
                Ok(payload) => payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into()),
                Err(e) => e.to_string(),
            },
        })
}

/// Faults the tests inject, behind the `test-hooks` feature that only test
/// builds enable: a build whose init environment sets `THAW_TEST_PANIC` to
/// a step's kind panics in that step, standing in for a bug in Wizer or
/// Cranelift that no known module triggers.
#[cfg(feature = "test-hooks")]
mod test_hooks {
    use super::*;

    pub(crate) fn panic_if_asked(options: &SnapshotOptions, step: Step) {
        let asked = options
            .env
            .iter()
            .any(|(key, value)| key == "THAW_TEST_PANIC" && value == step.kind());
        if asked {
            panic!("injected by a test in the {} step", step.kind());
        }
    }
}

/// Reports steps to the progress callback and records their timings for
/// the manifest.
struct StepClock<'a, P> {
    progress: Arc<P>,
    steps: &'a mut Vec<StepTiming>,
}

impl<P: Fn(BuildEvent)> StepClock<'_, P> {
    fn started(&mut self, step: Step) {
        (self.progress)(BuildEvent::Started(step));
    }

    fn finished(&mut self, step: Step, elapsed: Duration) {
        self.record(step, elapsed);
        (self.progress)(BuildEvent::Finished(step, elapsed));
    }

    fn record(&mut self, step: Step, elapsed: Duration) {
        self.steps.push(StepTiming {
            step: step.to_string(),
            millis: elapsed.as_millis() as u64,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(triples: &[&str], snapshot: &SnapshotOptions, source: &[u8]) -> Digest {
        let targets: Vec<_> = triples
            .iter()
            .map(|t| TargetProfile::by_name(t).unwrap())
            .collect();
        build_key(&Digest::of(source), &settled(&targets), snapshot, false)
    }

    #[test]
    fn build_key_covers_what_changes_the_output_and_nothing_else() {
        let x86 = "x86_64-unknown-linux-gnu";
        let arm = "aarch64-unknown-linux-gnu";
        let defaults = SnapshotOptions::default();
        let base = key(&[x86, arm], &defaults, b"module");
        // Order and duplicates of targets do not matter.
        assert_eq!(base, key(&[arm, x86, arm], &defaults, b"module"));
        // Limits only decide success, so they do not change the key.
        let limits = SnapshotOptions {
            init_timeout: Duration::from_secs(1),
            max_memory: 1 << 20,
            ..SnapshotOptions::default()
        };
        assert_eq!(base, key(&[x86, arm], &limits, b"module"));
        // Source, targets and init environment do.
        assert_ne!(base, key(&[x86, arm], &defaults, b"other"));
        assert_ne!(base, key(&[x86], &defaults, b"module"));
        let env = SnapshotOptions {
            env: vec![("MODE".into(), "prod".into())],
            ..SnapshotOptions::default()
        };
        assert_ne!(base, key(&[x86, arm], &env, b"module"));
        // So does keeping function names.
        let targets = settled(&[TargetProfile::by_name(x86).unwrap()]);
        assert_ne!(
            build_key(&Digest::of(b"module"), &targets, &defaults, false),
            build_key(&Digest::of(b"module"), &targets, &defaults, true)
        );
    }

    #[test]
    fn steps_name_their_target_but_not_their_kind() {
        let arm = TargetProfile::by_name("aarch64-unknown-linux-gnu").unwrap();
        assert_eq!(
            Step::Compile(arm).to_string(),
            "compile aarch64-unknown-linux-gnu"
        );
        assert_eq!(Step::Compile(arm).kind(), "compile");
        assert_eq!(Step::Inspect.to_string(), "inspect");
    }
}
