//! thaw's build pipeline: inspect → snapshot → compile → store.
//!
//! [`Builder::build`] takes a submitted Wasm module and leaves a complete
//! build in the [`ArtifactStore`]: the source, the Wizer snapshot (for
//! reactors), one precompiled artifact per target, and a manifest naming
//! them all, optionally tagged. Writes go blobs first, then the manifest,
//! then the build-cache entry and tag, so a crash at any point leaves nothing
//! that points at missing data.
//!
//! Resubmitting a module with the same [build key](build_key) returns the
//! stored manifest without running anything.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use thaw_artifact::{ArtifactStore, TargetProfile};
//! use thaw_registry::{BuildRequest, Builder};
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

pub mod service;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thaw_artifact::profile::{self, WASMTIME_VERSION};
use thaw_artifact::{
    Artifact, ArtifactStore, BuildInfo, Digest, MANIFEST_SCHEMA, Manifest, ModuleKind, StepTiming,
    StoreError, THAW_VERSION, TagRef, TargetProfile,
};
use thaw_compiler::{CompileError, Compiler};
use thaw_snapshotter::{SnapshotError, SnapshotOptions, Snapshotter};

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
    UnsupportedHost(#[from] thaw_artifact::UnsupportedTarget),
}

/// A step of the pipeline, for progress reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Validating and classifying the module.
    Inspect,
    /// Running init under Wizer.
    Snapshot,
    /// Compiling for one target.
    Compile(&'static str),
    /// Writing blobs, manifest and tag.
    Store,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Inspect => f.write_str("inspect"),
            Step::Snapshot => f.write_str("snapshot"),
            Step::Compile(triple) => write!(f, "compile {triple}"),
            Step::Store => f.write_str("store"),
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
    /// Targets to compile for (duplicates are ignored).
    pub targets: Vec<&'static TargetProfile>,
    /// Init limits and environment.
    pub snapshot: SnapshotOptions,
    /// The tag to point at the result.
    pub tag: Option<TagRef>,
    /// Whether a stored build with the same build key may be returned
    /// instead of building. The registry turns this off when the stored
    /// build is not signed by its own key, so that it never signs what it
    /// did not build.
    pub reuse_cached: bool,
}

impl BuildRequest {
    /// A request for `targets` with default init limits and no tag.
    pub fn new(targets: Vec<&'static TargetProfile>) -> Self {
        Self {
            targets,
            snapshot: SnapshotOptions::default(),
            tag: None,
            reuse_cached: true,
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

/// The build key of a module: its digest plus everything else that changes
/// the output (targets and their flags, init environment, thaw and wasmtime
/// versions, manifest schema). Limits that only decide success do not count.
pub fn build_key(source: &Digest, request: &BuildRequest) -> Digest {
    let mut targets: Vec<_> = request
        .targets
        .iter()
        .map(|t| (t.name, t.triple, t.isa_flags))
        .collect();
    targets.sort();
    targets.dedup();
    let mut env = request.snapshot.env.clone();
    env.sort();
    let key = serde_json::json!({
        "source": source,
        "targets": targets,
        "init_env": env,
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

    /// Validates and classifies a module without building it: the checks a
    /// build would fail first, cheap enough to answer a submission with.
    pub fn inspect(&self, wasm: &[u8]) -> Result<thaw_snapshotter::ModuleInfo, BuildError> {
        Ok(self.snapshotter.inspect(wasm)?)
    }

    /// Builds `wasm` as `request` says, reporting progress to `progress`.
    pub async fn build(
        &self,
        wasm: Bytes,
        request: &BuildRequest,
        progress: impl Fn(BuildEvent) + Send + Sync + 'static,
    ) -> Result<BuildOutcome, BuildError> {
        let progress = Arc::new(progress);
        let mut targets = request.targets.clone();
        targets.sort_by_key(|t| t.name);
        targets.dedup();
        if targets.is_empty() {
            return Err(BuildError::NoTargets);
        }
        let source_digest = Digest::of(&wasm);
        let key = build_key(&source_digest, request);
        let cached = match request.reuse_cached {
            true => self.store.cached_build(&key).await?,
            false => None,
        };
        if let Some(digest) = cached {
            progress(BuildEvent::CacheHit(digest));
            let manifest = self.store.get_manifest(&digest).await?;
            if let Some(tag) = &request.tag {
                self.store.set_tag(tag, &digest).await?;
            }
            return Ok(BuildOutcome {
                manifest_digest: digest,
                manifest,
                cache_hit: true,
            });
        }

        let mut steps = Vec::new();
        let mut timed = StepClock {
            progress: progress.clone(),
            steps: &mut steps,
        };

        let started = timed.start(Step::Inspect);
        let info = self.snapshotter.inspect(&wasm)?;
        timed.finish(Step::Inspect, started);

        let snapshot = match info.kind {
            ModuleKind::Reactor => {
                let started = timed.start(Step::Snapshot);
                let snapshotter = self.snapshotter.clone();
                let (input, info, options) = (wasm.clone(), info.clone(), request.snapshot.clone());
                let runtime = tokio::runtime::Handle::current();
                // Wizer compiles and runs guest code for seconds: keep it off
                // the async workers so the service stays responsive.
                let snapshot = tokio::task::spawn_blocking(move || {
                    runtime.block_on(snapshotter.snapshot(&input, &info, &options))
                })
                .await
                .expect("the snapshot task panicked")?;
                timed.finish(Step::Snapshot, started);
                Some(Bytes::from(snapshot.wasm))
            }
            ModuleKind::Command => None,
        };

        let to_compile = snapshot.clone().unwrap_or_else(|| wasm.clone());
        let (hits_before, misses_before) = self.compiler.cache().stats();
        for target in &targets {
            progress(BuildEvent::Started(Step::Compile(target.name)));
        }
        let compiler = self.compiler.clone();
        let compile_progress = progress.clone();
        let compile_targets = targets.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            compiler.compile(&to_compile, &compile_targets, |artifact| {
                compile_progress(BuildEvent::Finished(
                    Step::Compile(artifact.target.name),
                    artifact.elapsed,
                ))
            })
        })
        .await
        .expect("the compile task panicked")?;
        let (hits, misses) = self.compiler.cache().stats();
        tracing::info!(
            hits = hits - hits_before,
            misses = misses - misses_before,
            "Cranelift incremental cache"
        );
        for artifact in &compiled {
            timed.steps.push(StepTiming {
                step: Step::Compile(artifact.target.name).to_string(),
                millis: artifact.elapsed.as_millis() as u64,
            });
        }

        let started = timed.start(Step::Store);
        let source = self.store.put_blob(wasm).await?;
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
                cache_key: key,
                thaw_version: THAW_VERSION.to_string(),
                wasmtime_version: WASMTIME_VERSION.to_string(),
                init_env: request
                    .snapshot
                    .env
                    .iter()
                    .map(|(k, _)| k.clone())
                    .collect(),
                steps: timed.steps.clone(),
            },
        };
        let manifest_digest = self.store.put_manifest(&manifest).await?;
        self.store.put_cached_build(&key, &manifest_digest).await?;
        if let Some(tag) = &request.tag {
            self.store.set_tag(tag, &manifest_digest).await?;
        }
        progress(BuildEvent::Finished(Step::Store, started.elapsed()));
        tracing::info!(manifest = %manifest_digest, kind = %manifest.kind, "build stored");
        Ok(BuildOutcome {
            manifest_digest,
            manifest,
            cache_hit: false,
        })
    }
}

/// Reports steps to the progress callback and records their timings.
struct StepClock<'a, P> {
    progress: Arc<P>,
    steps: &'a mut Vec<StepTiming>,
}

impl<P: Fn(BuildEvent)> StepClock<'_, P> {
    fn start(&mut self, step: Step) -> Instant {
        (self.progress)(BuildEvent::Started(step));
        Instant::now()
    }

    fn finish(&mut self, step: Step, started: Instant) {
        let elapsed = started.elapsed();
        self.steps.push(StepTiming {
            step: step.to_string(),
            millis: elapsed.as_millis() as u64,
        });
        (self.progress)(BuildEvent::Finished(step, elapsed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(triples: &[&str]) -> BuildRequest {
        BuildRequest::new(
            triples
                .iter()
                .map(|t| TargetProfile::by_name(t).unwrap())
                .collect(),
        )
    }

    #[test]
    fn build_key_covers_what_changes_the_output_and_nothing_else() {
        let source = Digest::of(b"module");
        let x86 = "x86_64-unknown-linux-gnu";
        let arm = "aarch64-unknown-linux-gnu";
        let base = build_key(&source, &request(&[x86, arm]));
        // Order and duplicates of targets do not matter.
        assert_eq!(base, build_key(&source, &request(&[arm, x86, arm])));
        // Limits only decide success, so they do not change the key.
        let mut limits = request(&[x86, arm]);
        limits.snapshot.init_timeout = Duration::from_secs(1);
        limits.snapshot.max_memory = 1 << 20;
        limits.tag = Some("a:b".parse().unwrap());
        assert_eq!(base, build_key(&source, &limits));
        // Source, targets and init environment do.
        assert_ne!(
            base,
            build_key(&Digest::of(b"other"), &request(&[x86, arm]))
        );
        assert_ne!(base, build_key(&source, &request(&[x86])));
        let mut env = request(&[x86, arm]);
        env.snapshot.env = vec![("MODE".into(), "prod".into())];
        assert_ne!(base, build_key(&source, &env));
    }
}
