//! The WASI environment a guest sees, at snapshot time and at run time.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime_wasi::{HostMonotonicClock, WasiCtxBuilder};

/// A monotonic clock that reads "Unix-epoch nanoseconds at process start,
/// plus time elapsed since".
///
/// wasmtime-wasi's default monotonic clock starts near zero in every
/// `WasiCtx`. A Go runtime restored from a snapshot remembers the clock
/// value of the build host, so with the default clock it would see time run
/// backwards (`m=-3.6s`) and its timers would misfire. Anchoring both the
/// snapshotting and the serving clock to the wall clock keeps it increasing
/// across hosts, as long as their wall clocks roughly agree.
#[derive(Clone, Copy, Debug, Default)]
pub struct ContinuousClock;

fn anchor() -> &'static (u64, Instant) {
    static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        (since_epoch, Instant::now())
    })
}

impl HostMonotonicClock for ContinuousClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        let (start, at) = anchor();
        start + at.elapsed().as_nanos() as u64
    }
}

/// A WASI context builder with thaw's sandbox defaults: the continuous
/// clock, exactly the given environment, no arguments, no preopened
/// directories and no sockets. Callers add stdio.
pub fn wasi_builder<K: AsRef<str>, V: AsRef<str>>(env: &[(K, V)]) -> WasiCtxBuilder {
    let mut builder = WasiCtxBuilder::new();
    builder.monotonic_clock(ContinuousClock).envs(env);
    builder
}

/// How a guest call failed, sorted out of a wasmtime error.
#[derive(Debug, PartialEq, Eq)]
pub enum GuestFailure {
    /// It tried to grow memory past its [`MemoryCap`].
    MemoryLimit,
    /// Its epoch deadline fired.
    Timeout,
    /// It called `proc_exit` with this status.
    Exit(i32),
    /// It trapped; the message carries the wasm backtrace.
    Trap(String),
}

impl GuestFailure {
    /// Classifies `error`, raised by a call into a store limited by `memory`.
    pub fn of(error: &wasmtime::Error, memory: &MemoryCap) -> Self {
        if memory.was_hit() {
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
pub struct MemoryCap {
    limit: u64,
    hit: bool,
}

impl MemoryCap {
    /// A cap of `limit` bytes per linear memory.
    pub fn new(limit: u64) -> Self {
        Self { limit, hit: false }
    }

    /// Whether a growth was refused.
    pub fn was_hit(&self) -> bool {
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

    #[test]
    fn clock_is_anchored_to_the_unix_epoch_and_increases() {
        let clock = ContinuousClock;
        let a = clock.now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        // Within a minute of the wall clock, so a second host agrees with the first.
        assert!(a.abs_diff(wall) < 60_000_000_000, "{a} vs {wall}");
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(clock.now() > a);
    }
}
