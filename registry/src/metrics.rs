//! Prometheus metrics of the registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

fn step_histogram() -> Histogram {
    // 1 ms to ~9 min: inspect takes milliseconds, a large compile minutes.
    Histogram::new(exponential_buckets(0.001, 2.5, 15))
}

/// Every metric the registry exports.
pub struct Metrics {
    registry: Registry,
    /// Builds by outcome: `succeeded`, `failed`, `cache_hit`, `rejected`.
    pub builds: Family<OutcomeLabels, Counter>,
    /// Build step durations.
    pub step_seconds: Family<StepLabels, Histogram, fn() -> Histogram>,
    /// Builds waiting for a worker.
    pub queue_depth: Gauge,
    /// Bytes served, by kind (`blob`, `manifest`).
    pub bytes_served: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("thaw_registry");
        let builds = Family::<OutcomeLabels, Counter>::default();
        let step_seconds = Family::new_with_constructor(step_histogram as fn() -> Histogram);
        let queue_depth = Gauge::default();
        let bytes_served = Family::<KindLabels, Counter>::default();
        registry.register(
            "builds",
            "Submissions by outcome (succeeded, failed, cache_hit, rejected)",
            builds.clone(),
        );
        registry.register(
            "build_step_duration_seconds",
            "Duration of each build step",
            step_seconds.clone(),
        );
        registry.register(
            "build_queue_depth",
            "Builds accepted and waiting for a worker",
            queue_depth.clone(),
        );
        registry.register(
            "served_bytes",
            "Bytes served by the read API, by kind",
            bytes_served.clone(),
        );
        Self {
            registry,
            builds,
            step_seconds,
            queue_depth,
            bytes_served,
        }
    }
}

impl Metrics {
    /// The `/metrics` answer.
    pub fn response(&self) -> axum::response::Response {
        thaw_http::metrics_response(&self.registry)
    }

    pub fn build(&self, outcome: &'static str) {
        self.builds.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn served(&self, kind: &'static str, bytes: u64) {
        self.bytes_served
            .get_or_create(&KindLabels { kind })
            .inc_by(bytes);
    }
}
