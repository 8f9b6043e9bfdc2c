//! Ahead-of-time compiles Wasm modules with Cranelift, one artifact per
//! [`TargetProfile`], all targets in parallel.
//!
//! Every engine starts from [`thaw_engine::profile::engine_config`], the
//! same settings the runner loads with, then names its target and ISA flags
//! explicitly, so nothing about the build host's CPU leaks into an artifact.
//!
//! ```no_run
//! use thaw_core::TargetProfile;
//! use thaw_compiler::Compiler;
//!
//! let compiler = Compiler::new();
//! let wasm = std::fs::read("snapshot.wasm").unwrap();
//! let targets = [TargetProfile::by_name("aarch64-unknown-linux-gnu").unwrap()];
//! for artifact in compiler.compile(&wasm, &targets, |_| {}).unwrap() {
//!     println!("{}: {} bytes", artifact.target.name, artifact.bytes.len());
//! }
//! ```

#![warn(missing_docs)]

mod cache;
pub mod worker;

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cranelift_codegen::settings::{self, Configurable};
use thaw_core::error::BoxError;
use thaw_core::{Digest, Sha256Hasher, TargetProfile};
use thaw_engine::profile;
use wasmtime::{Config, Engine, OptLevel};

pub use cache::{DEFAULT_MEMORY_CACHE_BYTES, IncrementalCache};
pub use worker::Worker;

/// Why a compile failed.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Cranelift does not know the target or one of its flags.
    #[error("invalid target profile {triple}: {what}")]
    InvalidProfile {
        /// The profile's triple.
        triple: String,
        /// What was refused: the triple, or one flag.
        what: String,
        /// What Cranelift said.
        #[source]
        source: BoxError,
    },
    /// The engine could not be built.
    #[error("cannot build an engine for {triple}")]
    Engine {
        /// The target.
        triple: String,
        /// What wasmtime said.
        #[source]
        source: BoxError,
    },
    /// A compile child ran past its deadline and was killed.
    #[error(
        "compiling took longer than {} and was stopped (the registry's --compile-timeout)",
        format_secs(*deadline)
    )]
    TimedOut {
        /// The deadline.
        deadline: Duration,
    },
    /// A compile child failed to start, crashed, or broke the protocol.
    #[error("{reason}")]
    Worker {
        /// What happened, with what the child said.
        reason: String,
    },
    /// Cranelift failed on the module.
    #[error("compiling for {triple} failed")]
    Compile {
        /// The target.
        triple: String,
        /// What wasmtime said.
        #[source]
        source: BoxError,
    },
}

/// One target's compiled module.
#[derive(Debug)]
pub struct CompiledArtifact {
    /// The target it was compiled for.
    pub target: &'static TargetProfile,
    /// The serialized module (`.cwasm`, an ELF object).
    pub bytes: Vec<u8>,
    /// SHA-256 of the compiling engine's `precompile_compatibility_hash()`.
    pub compatibility_hash: Digest,
    /// Wall time of the compile.
    pub elapsed: Duration,
}

fn format_secs(duration: Duration) -> String {
    format!("{:.3}s", duration.as_secs_f64())
}

/// Compiles modules; holds one engine per target and a shared incremental
/// cache, and with a [`Worker`], compiles in a child process instead.
pub struct Compiler {
    cache: Arc<IncrementalCache>,
    engines: Mutex<HashMap<&'static str, Engine>>,
    worker: Option<Worker>,
}

impl Default for Compiler {
    fn default() -> Self {
        Self::new()
    }
}

impl Compiler {
    /// A compiler with an in-memory incremental cache.
    pub fn new() -> Self {
        Self::with_cache(IncrementalCache::in_memory(DEFAULT_MEMORY_CACHE_BYTES))
    }

    /// A compiler with the given incremental cache.
    pub fn with_cache(cache: IncrementalCache) -> Self {
        Self {
            cache: Arc::new(cache),
            engines: Mutex::default(),
            worker: None,
        }
    }

    /// Compiles in child processes started by `worker`, each killed at the
    /// worker's deadline. A service that compiles untrusted modules wants
    /// this; the child shares the incremental cache when it is a directory.
    pub fn isolated(mut self, worker: Worker) -> Self {
        self.worker = Some(worker);
        self
    }

    /// The incremental cache, for statistics.
    pub fn cache(&self) -> &IncrementalCache {
        &self.cache
    }

    /// The engine for `target`: the engine profile plus the target, its ISA
    /// flags and the incremental cache.
    pub fn engine(&self, target: &'static TargetProfile) -> Result<Engine, CompileError> {
        let mut engines = self.engines.lock().unwrap();
        if let Some(engine) = engines.get(target.name) {
            return Ok(engine.clone());
        }
        let engine = Engine::new(&self.config(target)?).map_err(|e| CompileError::Engine {
            triple: target.triple.into(),
            source: e.into(),
        })?;
        engines.insert(target.name, engine.clone());
        Ok(engine)
    }

    fn config(&self, target: &TargetProfile) -> Result<Config, CompileError> {
        validate_profile(target)?;
        let engine_error = |e: wasmtime::Error| CompileError::Engine {
            triple: target.triple.into(),
            source: e.into(),
        };
        let mut config = profile::engine_config();
        config.target(target.triple).map_err(engine_error)?;
        for flag in target.isa_flags {
            // SAFETY: each flag was validated against Cranelift's settings for
            // this ISA above, and the loader checks the same flags against the
            // host CPU before running any code compiled with them.
            unsafe {
                config.cranelift_flag_enable(flag);
            }
        }
        config
            .cranelift_opt_level(OptLevel::Speed)
            .cranelift_nan_canonicalization(false)
            .parallel_compilation(true)
            .enable_incremental_compilation(self.cache.clone())
            .map_err(engine_error)?;
        Ok(config)
    }

    /// Compiles `wasm` for every target, in parallel (in a child process
    /// when [`Compiler::isolated`]). `on_done` is called as each target
    /// finishes. Fails with the first target that fails.
    pub fn compile(
        &self,
        wasm: &[u8],
        targets: &[&'static TargetProfile],
        on_done: impl Fn(&CompiledArtifact) + Sync,
    ) -> Result<Vec<CompiledArtifact>, CompileError> {
        match &self.worker {
            Some(worker) => worker.compile(wasm, targets, &self.cache, on_done),
            None => self.compile_here(wasm, targets, on_done),
        }
    }

    /// [`Compiler::compile`] in this process.
    fn compile_here(
        &self,
        wasm: &[u8],
        targets: &[&'static TargetProfile],
        on_done: impl Fn(&CompiledArtifact) + Sync,
    ) -> Result<Vec<CompiledArtifact>, CompileError> {
        let engines = targets
            .iter()
            .map(|t| self.engine(t).map(|e| (*t, e)))
            .collect::<Result<Vec<_>, _>>()?;
        std::thread::scope(|scope| {
            let handles: Vec<_> = engines
                .into_iter()
                .map(|(target, engine)| {
                    let on_done = &on_done;
                    scope.spawn(move || {
                        let artifact = compile_one(&engine, target, wasm)?;
                        on_done(&artifact);
                        Ok(artifact)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a compile thread panicked"))
                .collect()
        })
    }
}

fn compile_one(
    engine: &Engine,
    target: &'static TargetProfile,
    wasm: &[u8],
) -> Result<CompiledArtifact, CompileError> {
    let start = Instant::now();
    let bytes = engine
        .precompile_module(wasm)
        .map_err(|e| CompileError::Compile {
            triple: target.triple.into(),
            source: e.into(),
        })?;
    Ok(CompiledArtifact {
        target,
        bytes,
        compatibility_hash: compatibility_hash(engine),
        elapsed: start.elapsed(),
    })
}

/// SHA-256 over an engine's `precompile_compatibility_hash()`: equal for
/// engines whose artifacts are interchangeable.
pub fn compatibility_hash(engine: &Engine) -> Digest {
    let mut hasher = Sha256Hasher::default();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.digest()
}

/// Checks a target profile against Cranelift's own ISA definitions: the
/// triple must name a backend compiled in, and every flag must exist for it.
pub fn validate_profile(target: &TargetProfile) -> Result<(), CompileError> {
    let invalid = |what: String| {
        move |e: Box<dyn std::error::Error + Send + Sync>| CompileError::InvalidProfile {
            triple: target.triple.into(),
            what,
            source: e,
        }
    };
    let mut isa = cranelift_codegen::isa::lookup_by_name(target.triple)
        .map_err(|e| invalid("no such Cranelift backend".into())(e.into()))?;
    for flag in target.isa_flags {
        isa.enable(flag)
            .map_err(|e| invalid(format!("flag {flag:?}"))(e.into()))?;
    }
    isa.finish(settings::Flags::new(settings::builder()))
        .map_err(|e| invalid("the flags do not combine".into())(e.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_are_valid() {
        for target in thaw_core::target::TARGETS {
            validate_profile(target).unwrap();
        }
    }

    #[test]
    fn unknown_flags_and_triples_are_refused() {
        let bad_flag = TargetProfile {
            name: "bad-flag",
            triple: "aarch64-unknown-linux-gnu",
            isa_flags: &["has_avx512f"],
            description: "",
        };
        let err = validate_profile(&bad_flag).unwrap_err().to_string();
        assert!(err.contains("has_avx512f"), "{err}");
        let bad_triple = TargetProfile {
            name: "bad-triple",
            triple: "mips-unknown-linux-gnu",
            isa_flags: &[],
            description: "",
        };
        assert!(validate_profile(&bad_triple).is_err());
    }

    // The smallest module with a function: (module (func (export "f") (result i32) i32.const 42))
    const TINY: &[u8] = &[
        0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 127, 3, 2, 1, 0, 7, 5, 1, 1, 102, 0, 0, 10,
        6, 1, 4, 0, 65, 42, 11,
    ];

    #[test]
    fn compiles_every_target_to_its_own_elf_machine() {
        let compiler = Compiler::new();
        let targets: Vec<_> = thaw_core::target::TARGETS.iter().collect();
        let done = Mutex::new(Vec::new());
        let artifacts = compiler
            .compile(TINY, &targets, |a| done.lock().unwrap().push(a.target.name))
            .unwrap();
        assert_eq!(done.into_inner().unwrap().len(), targets.len());
        for artifact in &artifacts {
            assert_eq!(&artifact.bytes[..4], b"\x7fELF");
            // e_machine: 62 = x86-64, 183 = AArch64.
            let machine = u16::from_le_bytes([artifact.bytes[18], artifact.bytes[19]]);
            let expected = if artifact.target.triple.starts_with("x86_64") {
                62
            } else {
                183
            };
            assert_eq!(machine, expected, "{}", artifact.target.triple);
        }
        assert_ne!(
            artifacts[0].compatibility_hash,
            artifacts[1].compatibility_hash
        );
    }

    #[test]
    fn recompiling_hits_the_incremental_cache() {
        let compiler = Compiler::new();
        let target = TargetProfile::host().unwrap();
        compiler.compile(TINY, &[target], |_| {}).unwrap();
        let (hits_before, _) = compiler.cache().stats();
        compiler.compile(TINY, &[target], |_| {}).unwrap();
        assert!(compiler.cache().stats().0 > hits_before);
    }

    #[test]
    fn invalid_wasm_names_the_target() {
        let err = Compiler::new()
            .compile(
                b"\0asm\x01\0\0\0\x01",
                &[TargetProfile::host().unwrap()],
                |_| {},
            )
            .unwrap_err();
        assert!(matches!(err, CompileError::Compile { .. }), "{err}");
    }
}
