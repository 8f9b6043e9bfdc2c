//! The WASI environment a guest sees, at snapshot time and at run time.
//! Capabilities are granted here and nowhere else: a clock that survives
//! snapshots, exactly the given environment, and stdio the caller supplies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

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

/// Where the clock that init sees at build time starts:
/// 2025-01-01T00:00:00Z, in Unix nanoseconds.
pub const BUILD_EPOCH_NANOS: u64 = 1_735_689_600_000_000_000;

/// How far that clock moves at each reading: far enough that a sleep or
/// timeout in init ends after a few readings, since no real time passes.
pub const BUILD_CLOCK_STEP_NANOS: u64 = 1_000_000;

/// The seed of the entropy init sees at build time (`random_get`).
const BUILD_ENTROPY_SEED: u64 = u64::from_le_bytes(*b"thawinit");

/// The clock init sees at build time, wall and monotonic alike: it starts
/// at [`BUILD_EPOCH_NANOS`] and moves [`BUILD_CLOCK_STEP_NANOS`] at each
/// reading, whatever time it is. Init then reads the same times on every
/// build, so the same module gives the same snapshot; and it stays behind
/// any run-time [`ContinuousClock`] reading, so monotonic time still only
/// increases from the snapshot to the edge.
#[derive(Clone, Debug, Default)]
pub struct BuildClock {
    readings: Arc<AtomicU64>,
}

impl BuildClock {
    fn read(&self) -> u64 {
        BUILD_EPOCH_NANOS + self.readings.fetch_add(1, Ordering::Relaxed) * BUILD_CLOCK_STEP_NANOS
    }
}

impl HostMonotonicClock for BuildClock {
    fn resolution(&self) -> u64 {
        BUILD_CLOCK_STEP_NANOS
    }

    fn now(&self) -> u64 {
        self.read()
    }
}

impl HostWallClock for BuildClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(BUILD_CLOCK_STEP_NANOS)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.read())
    }
}

/// [`wasi_builder`] for init at build time: [`BuildClock`] for both clocks
/// and `random_get` from a fixed seed, so that building the same module with
/// the same environment twice, anywhere, gives the same snapshot. Nothing
/// secret may come from init's entropy: anything init computes is in the
/// artifact anyway, and run-time randomness is reseeded per instance.
pub fn init_wasi_builder<K: AsRef<str>, V: AsRef<str>>(env: &[(K, V)]) -> WasiCtxBuilder {
    let mut builder = wasi_builder(env);
    let clock = BuildClock::default();
    builder
        .wall_clock(clock.clone())
        .monotonic_clock(clock)
        .secure_random(StdRng::seed_from_u64(BUILD_ENTROPY_SEED))
        .insecure_random(StdRng::seed_from_u64(BUILD_ENTROPY_SEED.rotate_left(1)))
        .insecure_random_seed(u128::from(BUILD_ENTROPY_SEED));
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

    #[test]
    fn the_build_clock_is_the_same_on_every_build_and_behind_the_run_time_clock() {
        let readings = |clock: BuildClock| -> Vec<u64> {
            (0..3)
                .map(|i| match i {
                    1 => HostWallClock::now(&clock).as_nanos() as u64,
                    _ => HostMonotonicClock::now(&clock),
                })
                .collect()
        };
        let first = readings(BuildClock::default());
        assert_eq!(first, readings(BuildClock::default()));
        assert_eq!(
            first,
            [0, 1, 2].map(|i| BUILD_EPOCH_NANOS + i * BUILD_CLOCK_STEP_NANOS)
        );
        assert!(first[2] < ContinuousClock.now());
    }
}
