//! The engine profile: the one place that decides every setting wasmtime
//! checks when it loads a precompiled artifact.
//!
//! The compiler builds its engines from [`engine_config`] and then adds a
//! target and ISA flags; the runner builds its engine from the same function
//! and adds only runtime choices (allocator, stack size) that wasmtime allows
//! to differ. If the two disagreed, `Module::deserialize` would refuse every
//! artifact, so nothing here may depend on the build host.

use std::time::Duration;

use wasmtime::{Config, Engine, WasmFeatures};

/// A compilation target: a triple plus the exact Cranelift ISA flags.
///
/// Flags are explicit so that an artifact never silently requires the build
/// host's CPU features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetProfile {
    /// What users type (`--target`). A baseline profile is named by its
    /// triple; a profile for newer CPUs of the same triple has its own name.
    pub name: &'static str,
    /// The target triple.
    pub triple: &'static str,
    /// Cranelift ISA flags enabled on top of the architecture's baseline.
    pub isa_flags: &'static [&'static str],
    /// What hardware this runs on, for humans.
    pub description: &'static str,
}

/// The targets thaw builds for.
pub const TARGETS: &[TargetProfile] = &[
    TargetProfile {
        name: "x86_64-unknown-linux-gnu",
        triple: "x86_64-unknown-linux-gnu",
        // x86-64-v2: every x86-64 server CPU since Nehalem (2008) has these,
        // and Cranelift's SIMD lowering leans on SSE4.1.
        isa_flags: &[
            "has_sse3",
            "has_ssse3",
            "has_cmpxchg16b",
            "has_sse41",
            "has_sse42",
            "has_popcnt",
        ],
        description: "x86-64-v2 (SSE4.2, POPCNT): any x86-64 CPU since 2008",
    },
    TargetProfile {
        name: "x86_64-v3",
        triple: "x86_64-unknown-linux-gnu",
        // x86-64-v3 as far as Cranelift has flags for it: AVX2, FMA, BMI1/2
        // and LZCNT on top of v2. Opt-in; a runner uses it only on CPUs that
        // have every flag, and falls back to the baseline otherwise.
        isa_flags: &[
            "has_sse3",
            "has_ssse3",
            "has_cmpxchg16b",
            "has_sse41",
            "has_sse42",
            "has_popcnt",
            "has_avx",
            "has_avx2",
            "has_fma",
            "has_bmi1",
            "has_bmi2",
            "has_lzcnt",
        ],
        description: "x86-64-v3 (AVX2, FMA, BMI2): Haswell (2013), Zen and newer",
    },
    TargetProfile {
        name: "aarch64-unknown-linux-gnu",
        triple: "aarch64-unknown-linux-gnu",
        isa_flags: &[],
        description: "ARMv8.0-A baseline: Graviton, Ampere, Raspberry Pi 4 and newer",
    },
];

/// A target triple thaw has no profile for.
#[derive(Debug, thiserror::Error)]
#[error(
    "unsupported target {name:?}; supported targets: {}",
    supported_names()
)]
pub struct UnsupportedTarget {
    /// The requested name.
    pub name: String,
}

fn supported_names() -> String {
    TARGETS
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl TargetProfile {
    /// The profile called `name` (a baseline's name is its triple).
    pub fn by_name(name: &str) -> Result<&'static TargetProfile, UnsupportedTarget> {
        TARGETS
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| UnsupportedTarget {
                name: name.to_string(),
            })
    }

    /// The baseline profile for the machine this process runs on.
    pub fn host() -> Result<&'static TargetProfile, UnsupportedTarget> {
        Self::by_name(&host_triple())
    }
}

/// The triple of the machine this process runs on.
pub fn host_triple() -> String {
    target_lexicon::HOST.to_string()
}

/// Linear memory reserved per instance. With 32-bit Wasm and this plus the
/// guard, bounds checks are elided and memory never moves.
pub const MEMORY_RESERVATION: u64 = 4 << 30;

/// Guard region after each linear memory.
pub const MEMORY_GUARD_SIZE: u64 = 32 << 20;

/// The Wasm feature set thaw accepts: Wasm 2.0 (what Go's wasip1 port emits),
/// nothing newer, so that compiler and runner agree whatever wasmtime
/// features each was built with.
pub fn wasm_features() -> WasmFeatures {
    WasmFeatures::WASM2
}

/// The engine settings wasmtime checks when it loads an artifact, as data,
/// so that [`engine_config`] and [`wasmtime_cli_args`] cannot drift apart.
#[derive(Clone, Copy, Debug)]
struct LoadChecked {
    memory_reservation: u64,
    memory_guard_size: u64,
    memory_may_move: bool,
    guard_before_linear_memory: bool,
    memory_init_cow: bool,
    table_lazy_init: bool,
    epoch_interruption: bool,
    consume_fuel: bool,
    signals_based_traps: bool,
    debug_info: bool,
    gc_support: bool,
    concurrency_support: bool,
}

const LOAD_CHECKED: LoadChecked = LoadChecked {
    memory_reservation: MEMORY_RESERVATION,
    memory_guard_size: MEMORY_GUARD_SIZE,
    memory_may_move: false,
    guard_before_linear_memory: true,
    memory_init_cow: true,
    table_lazy_init: true,
    // Deadlines are enforced by epochs, not fuel: epochs cost a load per
    // loop header, fuel costs an add per basic block.
    epoch_interruption: true,
    consume_fuel: false,
    signals_based_traps: true,
    debug_info: false,
    gc_support: false,
    // Its default depends on which wasmtime cargo features a binary was
    // built with; the wasmtime CLI has it on, thaw's crates off.
    concurrency_support: false,
};

/// A wasmtime [`Config`] holding every setting that must match between the
/// engine that compiles an artifact and the engine that loads it.
pub fn engine_config() -> Config {
    let mut config = Config::new();
    let enabled = wasm_features();
    for feature in WasmFeatures::all().iter() {
        config.wasm_features(feature, enabled.contains(feature));
    }
    let p = LOAD_CHECKED;
    config
        .memory_reservation(p.memory_reservation)
        .memory_guard_size(p.memory_guard_size)
        .memory_may_move(p.memory_may_move)
        .guard_before_linear_memory(p.guard_before_linear_memory)
        .memory_init_cow(p.memory_init_cow)
        .table_lazy_init(p.table_lazy_init)
        .epoch_interruption(p.epoch_interruption)
        .consume_fuel(p.consume_fuel)
        .signals_based_traps(p.signals_based_traps)
        .debug_info(p.debug_info)
        .gc_support(p.gc_support)
        .concurrency_support(p.concurrency_support);
    config
}

/// Wasm proposals the wasmtime CLI can toggle with `-W <name>=y|n`; each
/// name is the [`WasmFeatures`] flag's name in kebab case.
const CLI_WASM_FEATURES: &[&str] = &[
    "bulk-memory",
    "multi-memory",
    "reference-types",
    "simd",
    "relaxed-simd",
    "tail-call",
    "threads",
    "memory64",
    "function-references",
    "gc",
    "exceptions",
    "extended-const",
    "wide-arithmetic",
    "custom-page-sizes",
    "stack-switching",
    "component-model",
];

/// Arguments for `wasmtime run` (the official CLI, same major version) that
/// reproduce this profile, so it loads thaw's artifacts with
/// `--allow-precompiled`. `timeout` becomes `-W timeout`, which the CLI
/// needs to drive epochs.
pub fn wasmtime_cli_args(timeout: Duration) -> Vec<String> {
    let p = LOAD_CHECKED;
    // The CLI has no switch to turn fuel on without a budget (`-W fuel=N`),
    // and it is off by default, as in the profile.
    assert!(!p.consume_fuel, "a fuel profile needs `-W fuel=N`");
    let yn = |b: bool| if b { "y" } else { "n" };
    let features = wasm_features();
    let mut wasm = vec![
        format!("epoch-interruption={}", yn(p.epoch_interruption)),
        format!("timeout={}ms", timeout.as_millis()),
        format!("gc-support={}", yn(p.gc_support)),
        format!("concurrency-support={}", yn(p.concurrency_support)),
    ];
    for name in CLI_WASM_FEATURES {
        let flag = WasmFeatures::from_name(&name.to_ascii_uppercase().replace('-', "_"))
            .expect("every CLI feature name is a WasmFeatures flag");
        wasm.push(format!("{name}={}", yn(features.contains(flag))));
    }
    let optimize = [
        format!("memory-reservation={}", p.memory_reservation),
        format!("memory-guard-size={}", p.memory_guard_size),
        format!("memory-may-move={}", yn(p.memory_may_move)),
        format!(
            "guard-before-linear-memory={}",
            yn(p.guard_before_linear_memory)
        ),
        format!("memory-init-cow={}", yn(p.memory_init_cow)),
        format!("table-lazy-init={}", yn(p.table_lazy_init)),
        format!("signals-based-traps={}", yn(p.signals_based_traps)),
    ];
    let debug = format!("debug-info={}", yn(p.debug_info));
    vec![
        "-W".into(),
        wasm.join(","),
        "-O".into(),
        optimize.join(","),
        "-D".into(),
        debug,
    ]
}

/// The version of wasmtime compiled into this binary.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// How often [`EpochTicker`] advances the epoch. Deadlines are counted in
/// these ticks, so a deadline is accurate to about one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Advances an engine's epoch every [`EPOCH_TICK`] on a background thread,
/// for as long as the engine lives.
///
/// One ticker serves every store of the engine; a per-store ticker would
/// make every other store's deadline run fast.
pub struct EpochTicker;

impl EpochTicker {
    /// Starts ticking `engine`. The thread exits when the engine is dropped.
    pub fn start(engine: &Engine) {
        let engine = engine.weak();
        std::thread::Builder::new()
            .name("thaw-epoch".into())
            .spawn(move || {
                while let Some(engine) = engine.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .expect("spawning the epoch thread");
    }
}

/// Converts a deadline into epoch ticks.
pub fn deadline_ticks(deadline: Duration) -> u64 {
    // Rounded up, plus one: the first tick comes at an arbitrary point of
    // the current period, so this never fires before `deadline`.
    deadline.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_is_found_by_its_triple() {
        for t in TARGETS {
            assert_eq!(TargetProfile::by_name(t.name).unwrap(), t);
        }
        let v3 = TargetProfile::by_name("x86_64-v3").unwrap();
        assert_eq!(v3.triple, "x86_64-unknown-linux-gnu");
        let err = TargetProfile::by_name("riscv64gc-unknown-linux-gnu").unwrap_err();
        assert!(
            err.to_string().contains("aarch64-unknown-linux-gnu"),
            "{err}"
        );
    }

    #[test]
    fn the_profile_builds_an_engine() {
        // Fails if two settings of the profile contradict each other.
        Engine::new(&engine_config()).unwrap();
    }

    #[test]
    fn cli_args_name_every_load_checked_setting() {
        let args = wasmtime_cli_args(Duration::from_secs(5)).join(" ");
        for expected in [
            "epoch-interruption=y",
            "timeout=5000ms",
            "simd=y",
            "threads=n",
            "concurrency-support=n",
            "memory-reservation=4294967296",
            "memory-guard-size=33554432",
            "memory-init-cow=y",
            "debug-info=n",
        ] {
            assert!(args.contains(expected), "{expected} missing from {args}");
        }
    }

    #[test]
    fn deadlines_round_to_ticks() {
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(15)), 3);
        assert_eq!(deadline_ticks(Duration::from_secs(1)), 101);
    }
}
