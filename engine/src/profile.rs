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

/// How often [`EpochTicker`] advances the epoch. Deadlines are checked at
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
