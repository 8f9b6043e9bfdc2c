//! One guest instance's store: its WASI context, its memory cap, its
//! deadline, and how a call into it failed.
//!
//! The snapshotter (init, once per build) and the runner (every request)
//! run guests through this module, so a limit or a failure means the same
//! thing at build time and at run time.
//!
//! ```no_run
//! # async fn demo(module: wasmtime::Module) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::{Duration, Instant};
//! use thaw_engine::guest::{self, GuestFailure};
//!
//! let linker = guest::linker(module.engine())?;
//! let wasi = thaw_engine::sandbox::wasi_builder::<&str, &str>(&[]).build_p1();
//! let outbound = thaw_engine::outbound::OutboundSession::unavailable();
//! let mut store = guest::store(module.engine(), wasi, outbound, 64 << 20);
//! guest::set_deadline(&mut store, Some(Instant::now() + Duration::from_secs(1)));
//! let instance = linker.instantiate_async(&mut store, &module).await?;
//! let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
//! if let Err(e) = start.call_async(&mut store, ()).await {
//!     println!("{:?}", GuestFailure::of(&e, &store));
//! }
//! # Ok(()) }
//! ```

use std::time::Instant;

use wasmtime::{Engine, Linker, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::outbound::{self, OutboundSession, OutboundTally};

/// What a guest's store holds: its WASI context, its outbound HTTP and its
/// memory cap.
pub struct GuestState {
    wasi: WasiP1Ctx,
    outbound: OutboundSession,
    memory: MemoryCap,
}

impl GuestState {
    /// The largest linear memory the guest had, in bytes (including its
    /// initial size: wasmtime asks the limiter for that too).
    pub fn peak_memory(&self) -> u64 {
        self.memory.peak
    }

    /// What the guest's outbound requests came to.
    pub fn outbound(&self) -> OutboundTally {
        self.outbound.tally()
    }
}

/// A linker that provides what a thaw host offers guests run with
/// [`store`]: WASI preview 1, and outbound HTTP ([`outbound`]), which
/// refuses every request unless the store was granted some.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut GuestState| &mut s.wasi)?;
    outbound::add_to_linker(&mut linker, |s: &mut GuestState| &mut s.outbound)?;
    Ok(linker)
}

/// A store for one guest instance: `wasi` and `outbound` are everything it
/// may reach, and its linear memory may grow to `max_memory` bytes. Until
/// [`set_deadline`] says otherwise, it has no deadline.
pub fn store(
    engine: &Engine,
    wasi: WasiP1Ctx,
    outbound: OutboundSession,
    max_memory: u64,
) -> Store<GuestState> {
    let mut store = Store::new(
        engine,
        GuestState {
            wasi,
            outbound,
            memory: MemoryCap::new(max_memory),
        },
    );
    store.limiter(|s| &mut s.memory);
    set_deadline(&mut store, None);
    store
}

/// Bounds the guest's wasm execution by the wall clock: at every epoch
/// tick ([`crate::profile::EPOCH_TICK`]) guest code yields its async
/// worker, so a few spinning guests cannot starve a server, and it traps
/// once `deadline` has passed. `None` sets no deadline (a program run from
/// a shell).
///
/// A guest blocked in a host call (Go's `time.Sleep` waits in
/// `poll_oneoff`) runs no wasm, so no tick reaches it: callers also bound
/// the whole call with a timer.
pub fn set_deadline(store: &mut Store<GuestState>, deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => {
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(move |_| {
                Ok(if Instant::now() >= deadline {
                    UpdateDeadline::Interrupt
                } else {
                    UpdateDeadline::Yield(1)
                })
            });
        }
        // Epoch interruption is part of the engine profile, so "none" is a
        // deadline far beyond any run.
        None => store.set_epoch_deadline(u64::MAX / 2),
    }
}

/// How a guest call failed, sorted out of a wasmtime error.
#[derive(Debug, PartialEq, Eq)]
pub enum GuestFailure {
    /// It tried to grow memory past its cap.
    MemoryLimit,
    /// Its epoch deadline fired.
    Timeout,
    /// It called `proc_exit` with this status.
    Exit(i32),
    /// It trapped; the message carries the wasm backtrace.
    Trap(String),
}

impl GuestFailure {
    /// Classifies `error`, raised by a call into `store`.
    pub fn of(error: &wasmtime::Error, store: &Store<GuestState>) -> Self {
        if store.data().memory.was_hit() {
            // Go turns a refused memory.grow into its own crash; the cap is
            // the cause worth reporting.
            GuestFailure::MemoryLimit
        } else if error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
            GuestFailure::Timeout
        } else if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
            GuestFailure::Exit(exit.0)
        } else {
            GuestFailure::Trap(format!("{error:#}"))
        }
    }
}

/// A [`wasmtime::ResourceLimiter`] that caps linear memory and remembers
/// refusing, so the failure that follows (Go crashes with "out of memory"
/// when `memory.grow` fails) can be reported as the limit it is.
#[derive(Debug)]
struct MemoryCap {
    limit: u64,
    hit: bool,
    /// The largest size granted (memories never shrink: the peak).
    peak: u64,
}

impl MemoryCap {
    /// A cap of `limit` bytes per linear memory.
    fn new(limit: u64) -> Self {
        Self {
            limit,
            hit: false,
            peak: 0,
        }
    }

    /// Whether a growth was refused.
    fn was_hit(&self) -> bool {
        self.hit
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired as u64 <= self.limit;
        self.hit |= !allowed;
        if allowed {
            self.peak = self.peak.max(desired as u64);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Go never grows its table; this only stops a hostile module.
        Ok(desired <= 1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_cap_refuses_and_remembers() {
        use wasmtime::ResourceLimiter;
        let mut cap = MemoryCap::new(1 << 20);
        assert!(cap.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!cap.was_hit());
        assert!(!cap.memory_growing(0, (1 << 20) + 1, None).unwrap());
        assert!(cap.was_hit());
    }
}
