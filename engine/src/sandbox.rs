//! The WASI environment a guest sees, at snapshot time and at run time.
//! Capabilities are granted here and nowhere else: a clock that survives
//! snapshots, exactly the given environment, and stdio the caller supplies.

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

#[cfg(test)]
mod tests {
    use super::*;

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
