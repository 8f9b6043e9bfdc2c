//! Prometheus metrics of the HTTP front.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub function: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundLabels {
    pub function: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub function: String,
    pub limit: &'static str,
}

fn latency_histogram() -> Histogram {
    // 10 µs to ~23 s: instantiation is microseconds, a slow request seconds.
    Histogram::new(exponential_buckets(0.000_01, 2.5, 17))
}

/// Every metric the runner exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    pub instantiation: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    pub traps: Family<FunctionLabels, Counter>,
    pub limit_hits: Family<LimitLabels, Counter>,
    pub in_flight: Gauge,
    pub loaded: Gauge,
    pub loads: Family<LoadLabels, Counter>,
    pub load_time: Histogram,
    pub evictions: Counter,
    pub deploys: Counter,
    pub cpu: Family<FunctionLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub peak_memory: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    pub reset_bytes: Histogram,
    pub merged_pages: Counter,
    pub outbound: Family<OutboundLabels, Counter>,
}

fn memory_histogram() -> Histogram {
    // 1 MiB to 4 GiB.
    Histogram::new(exponential_buckets(1048576.0, 2.0, 13))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("thaw");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let instantiation = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let traps = Family::<FunctionLabels, Counter>::default();
        let limit_hits = Family::<LimitLabels, Counter>::default();
        let in_flight = Gauge::default();
        let loaded = Gauge::default();
        let loads = Family::<LoadLabels, Counter>::default();
        let load_time = latency_histogram();
        let evictions = Counter::default();
        let deploys = Counter::default();
        let cpu = Family::<FunctionLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let peak_memory = Family::new_with_constructor(memory_histogram as fn() -> Histogram);
        // 64 KiB to 64 MiB.
        let reset_bytes = Histogram::new(exponential_buckets(65536.0, 2.0, 11));
        let merged_pages = Counter::default();
        let outbound = Family::<OutboundLabels, Counter>::default();
        registry.register(
            "outbound_requests",
            "Outbound HTTP requests functions made, by function and outcome (completed, denied, \
             limited, timed_out, too_large, failed, malformed, unavailable)",
            outbound.clone(),
        );
        registry.register(
            "slot_reset_bytes",
            "Bytes each instance's slot reset copies back (the dirty-page reset only)",
            reset_bytes.clone(),
        );
        registry.register(
            "slot_merged_pages",
            "Pages made private to join runs of dirty pages, so that the reset keeps them all",
            merged_pages.clone(),
        );
        registry.register(
            "function_cpu_seconds",
            "CPU time requests took on the host's threads (guest code and its host calls), by function",
            cpu.clone(),
        );
        registry.register(
            "function_memory_peak_bytes",
            "Largest linear memory of each request's instance, by function",
            peak_memory.clone(),
        );
        registry.register("functions_loaded", "Functions loaded now", loaded.clone());
        registry.register(
            "function_loads",
            "First loads of functions on demand, by outcome (loaded, not_found, unavailable, failed)",
            loads.clone(),
        );
        registry.register(
            "function_load_duration_seconds",
            "Time to load a function on demand (resolve, fetch if not cached, map)",
            load_time.clone(),
        );
        registry.register(
            "function_evictions",
            "Idle functions unloaded to make room (--max-loaded)",
            evictions.clone(),
        );
        registry.register(
            "function_deploys",
            "New versions swapped in after their tag moved",
            deploys.clone(),
        );
        registry.register(
            "requests",
            "Requests served, by function and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency inside the runner, by function",
            latency.clone(),
        );
        registry.register(
            "instantiation_duration_seconds",
            "Time to create a fresh instance, by function",
            instantiation.clone(),
        );
        registry.register("traps", "Requests that trapped, by function", traps.clone());
        registry.register(
            "limit_hits",
            "Requests refused or stopped by a limit (deadline, memory, body, response, concurrency)",
            limit_hits.clone(),
        );
        registry.register(
            "instances_in_flight",
            "Instances running now",
            in_flight.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            instantiation,
            traps,
            limit_hits,
            in_flight,
            loaded,
            loads,
            load_time,
            evictions,
            deploys,
            cpu,
            peak_memory,
            reset_bytes,
            merged_pages,
            outbound,
        }
    }
}

impl Metrics {
    /// The `/metrics` answer.
    pub fn response(&self) -> axum::response::Response {
        thaw_http::metrics_response(&self.registry)
    }

    pub fn load(&self, outcome: &'static str, elapsed: std::time::Duration) {
        self.loads.get_or_create(&LoadLabels { outcome }).inc();
        self.load_time.observe(elapsed.as_secs_f64());
    }

    /// Counts one instance's outbound requests.
    pub fn outbound(&self, function: &str, tally: &thaw_engine::outbound::OutboundTally) {
        for outcome in thaw_engine::outbound::Outcome::ALL {
            let count = tally.count(outcome);
            if count > 0 {
                self.outbound
                    .get_or_create(&OutboundLabels {
                        function: function.to_string(),
                        outcome: outcome.label(),
                    })
                    .inc_by(count.into());
            }
        }
    }

    pub fn limit_hit(&self, function: &str, limit: &'static str) {
        self.limit_hits
            .get_or_create(&LimitLabels {
                function: function.to_string(),
                limit,
            })
            .inc();
    }
}
