//! The functions a runner serves: loaded at start, or on first request,
//! kept within a budget, and swapped when their tag moves.
//!
//! - **Named at start** (pinned): loaded before the listener opens and
//!   never evicted.
//! - **On demand** (when the runner has a source and serves every name it
//!   can resolve): a request for an unknown name loads `name:latest`.
//!   Concurrent first requests share one load. A name the source does not
//!   know gets 404, a source that is down 503; loaded functions keep
//!   serving either way.
//! - **Bounded**: at most `max_loaded` on-demand functions stay loaded; to
//!   make room, the least recently used one that serves no request is
//!   evicted. Each function may hold at most `function_instances` instance
//!   slots at once, so one hot function cannot take them all.
//! - **Live**: every loaded tag is watched (a long poll on a registry, a
//!   poll of a store); when it moves, the new version is loaded and swapped
//!   in. Requests already running finish on the version they started with.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use thaw_core::{Reference, TagRef};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::{Function, RunError, Runner, Source};

/// How long one watch of a tag waits for a move before asking again.
const WATCH_WAIT: Duration = Duration::from_secs(20);
/// How long a failed watch waits before retrying.
const WATCH_RETRY: Duration = Duration::from_secs(1);
/// First loads that may run at once; more get 503.
const MAX_CONCURRENT_LOADS: usize = 8;

/// How many functions a runner holds, and how it shares its instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// On-demand functions kept loaded (pinned ones do not count).
    pub max_loaded: usize,
    /// Instance slots one function may hold at once.
    pub function_instances: usize,
}

/// Why a request found no function.
#[derive(Clone, Debug)]
pub(crate) enum Miss {
    /// No such function: 404.
    NotFound(String),
    /// The source is down, or the runner is at a limit: 503.
    Unavailable(String),
    /// The function exists but cannot be loaded here: 502.
    Failed(String),
}

impl Miss {
    fn of(name: &str, e: &RunError) -> Self {
        let message = format!("loading {name}: {}", thaw_core::error::chain(e));
        match e {
            RunError::Registry(c) if c.is_not_found() || c.is_forbidden() => {
                Miss::NotFound(format!("no function is named {name}"))
            }
            RunError::Store(thaw_store::StoreError::NotFound(_)) => {
                Miss::NotFound(format!("no function is named {name}"))
            }
            RunError::Registry(c) if c.is_unavailable() => Miss::Unavailable(message),
            RunError::Store(thaw_store::StoreError::Backend(_)) => Miss::Unavailable(message),
            _ => Miss::Failed(message),
        }
    }
}

/// A function found for a request.
pub(crate) struct Routed {
    pub(crate) name: String,
    pub(crate) function: Arc<Function>,
    /// The function's share of instance slots.
    pub(crate) share: Arc<Semaphore>,
    pub(crate) guest_path: String,
}

struct Loaded {
    function: Arc<Function>,
    share: Arc<Semaphore>,
    pinned: bool,
    last_used: u64,
    /// Stops the tag watcher when the function is evicted.
    _watcher: Option<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Load = Shared<BoxFuture<'static, Result<Arc<Function>, Miss>>>;

struct Inner {
    functions: Mutex<BTreeMap<String, Loaded>>,
    clock: std::sync::atomic::AtomicU64,
    /// What loads on demand and follows tags; `None` serves a fixed set.
    live: Option<Live>,
    capacity: Capacity,
    metrics: Arc<Metrics>,
}

struct Live {
    runner: Arc<Runner>,
    source: Source,
    on_demand: bool,
    loads: Mutex<HashMap<String, Load>>,
    load_permits: Arc<Semaphore>,
}

/// The functions a runner serves. Cheap to clone.
#[derive(Clone)]
pub struct Catalog(Arc<Inner>);

impl Catalog {
    /// Exactly `functions`, by name: no loading, no watching.
    pub(crate) fn fixed(
        functions: BTreeMap<String, Function>,
        capacity: Capacity,
        metrics: Arc<Metrics>,
    ) -> Self {
        let catalog = Self::with(None, capacity, metrics);
        for (name, function) in functions {
            catalog.insert(name, Arc::new(function), true, None);
        }
        catalog
    }

    /// `pinned` (already loaded from `source`, by name and reference), each
    /// tag followed as it moves; with `on_demand`, also every name
    /// `source` resolves, loaded on first request.
    pub(crate) fn live(
        runner: Arc<Runner>,
        source: Source,
        pinned: Vec<(String, Reference, Function)>,
        on_demand: bool,
        capacity: Capacity,
        metrics: Arc<Metrics>,
    ) -> Self {
        let live = Live {
            runner,
            source,
            on_demand,
            loads: Mutex::default(),
            load_permits: Arc::new(Semaphore::new(MAX_CONCURRENT_LOADS)),
        };
        let catalog = Self::with(Some(live), capacity, metrics);
        for (name, reference, function) in pinned {
            catalog.insert(name, Arc::new(function), true, Some(&reference));
        }
        catalog
    }

    fn with(live: Option<Live>, capacity: Capacity, metrics: Arc<Metrics>) -> Self {
        Self(Arc::new(Inner {
            functions: Mutex::default(),
            clock: Default::default(),
            live,
            capacity,
            metrics,
        }))
    }

    /// Whether names unknown at start are loaded on first request.
    pub fn on_demand(&self) -> bool {
        self.0.live.as_ref().is_some_and(|live| live.on_demand)
    }

    /// The names loaded now.
    pub fn names(&self) -> Vec<String> {
        self.0.functions.lock().unwrap().keys().cloned().collect()
    }

    /// The function loaded as `name`, if any.
    pub fn get(&self, name: &str) -> Option<Arc<Function>> {
        let functions = self.0.functions.lock().unwrap();
        functions.get(name).map(|loaded| loaded.function.clone())
    }

    fn tick(&self) -> u64 {
        self.0
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds (or replaces) a function, starting its tag watcher.
    fn insert(
        &self,
        name: String,
        function: Arc<Function>,
        pinned: bool,
        reference: Option<&Reference>,
    ) {
        let watcher = match (reference, &self.0.live) {
            (Some(Reference::Tag(tag)), Some(_)) => Some(self.watch(name.clone(), tag.clone())),
            _ => None,
        };
        let share = Arc::new(Semaphore::new(self.0.capacity.function_instances));
        let loaded = Loaded {
            function,
            share,
            pinned,
            last_used: self.tick(),
            _watcher: watcher,
        };
        let mut functions = self.0.functions.lock().unwrap();
        functions.insert(name, loaded);
        self.0.metrics.loaded.set(functions.len() as i64);
    }

    /// Finds the function for a request: among the loaded ones first
    /// (by `Host` label, then path prefix, then the only one when the set
    /// is fixed), then, on demand, by loading the `Host` label's or the
    /// first path segment's name.
    pub(crate) async fn route(&self, host: Option<&str>, path: &str) -> Result<Routed, Miss> {
        if let Some(found) = self.route_loaded(host, path) {
            return Ok(found);
        }
        if !self.on_demand() {
            return Err(Miss::NotFound(format!(
                "no function serves {path}; serving: {}",
                self.names().join(", ")
            )));
        }
        let mut last = Miss::NotFound(format!("no function serves {path}"));
        for (name, guest_path) in candidates(host, path) {
            match self.load(&name).await {
                Ok(_) => {
                    if let Some(found) = self.route_loaded(Some(&format!("{name}.")), &guest_path) {
                        return Ok(found);
                    }
                }
                Err(miss @ Miss::NotFound(_)) => last = miss,
                Err(miss) => return Err(miss),
            }
        }
        Err(last)
    }

    fn route_loaded(&self, host: Option<&str>, path: &str) -> Option<Routed> {
        let now = self.tick();
        let mut functions = self.0.functions.lock().unwrap();
        let sole = !self.on_demand();
        let (name, _, guest_path) = crate::http::route(&functions, host, path, sole)?;
        let name = name.to_string();
        let loaded = functions.get_mut(&name).expect("just routed");
        loaded.last_used = now;
        Some(Routed {
            function: loaded.function.clone(),
            share: loaded.share.clone(),
            name,
            guest_path,
        })
    }

    /// Loads `name:latest` once however many requests ask at once.
    async fn load(&self, name: &str) -> Result<Arc<Function>, Miss> {
        let live = self.0.live.as_ref().expect("only live catalogs load");
        let shared = {
            let mut loads = live.loads.lock().unwrap();
            match loads.get(name) {
                Some(load) => load.clone(),
                None => {
                    let load = self.clone().start_load(name.to_string()).boxed().shared();
                    loads.insert(name.to_string(), load.clone());
                    load
                }
            }
        };
        shared.await
    }

    async fn start_load(self, name: String) -> Result<Arc<Function>, Miss> {
        let live = self.0.live.as_ref().expect("only live catalogs load");
        let result = self.load_uncached(&name).await;
        live.loads.lock().unwrap().remove(&name);
        result
    }

    async fn load_uncached(&self, name: &str) -> Result<Arc<Function>, Miss> {
        let live = self.0.live.as_ref().expect("only live catalogs load");
        let tag = TagRef::new(name, thaw_core::DEFAULT_TAG)
            .map_err(|_| Miss::NotFound(format!("{name:?} is not a function name")))?;
        let Ok(_permit) = live.load_permits.clone().try_acquire_owned() else {
            return Err(Miss::Unavailable(
                "too many functions are loading; retry shortly".into(),
            ));
        };
        if !self.make_room(1) {
            return Err(Miss::Unavailable(format!(
                "all {} loaded functions are serving requests; retry shortly",
                self.0.capacity.max_loaded
            )));
        }
        let reference = Reference::Tag(tag);
        let started = Instant::now();
        let loaded = live.runner.load(&live.source, &reference).await;
        let metrics = &self.0.metrics;
        match loaded {
            Ok(function) => {
                metrics.load("loaded", started.elapsed());
                tracing::info!(function = %name, manifest = %function.manifest_digest(), load_us = started.elapsed().as_micros() as u64, "function loaded");
                let function = Arc::new(function);
                self.insert(name.to_string(), function.clone(), false, Some(&reference));
                // Another load may have filled the place this one made.
                self.make_room(0);
                Ok(function)
            }
            Err(e) => {
                let miss = Miss::of(name, &e);
                let outcome = match miss {
                    Miss::NotFound(_) => "not_found",
                    Miss::Unavailable(_) => "unavailable",
                    Miss::Failed(_) => "failed",
                };
                metrics.load(outcome, started.elapsed());
                if !matches!(miss, Miss::NotFound(_)) {
                    tracing::warn!(function = %name, error = %thaw_core::error::chain(&e), "loading failed");
                }
                Err(miss)
            }
        }
    }

    /// Evicts least recently used idle on-demand functions until `more`
    /// more fit; `false` when every one is busy.
    fn make_room(&self, more: usize) -> bool {
        let mut functions = self.0.functions.lock().unwrap();
        loop {
            let unpinned = functions.values().filter(|l| !l.pinned).count();
            if unpinned + more <= self.0.capacity.max_loaded {
                return true;
            }
            // Idle: no request holds the function (only the catalog does).
            let victim = functions
                .iter()
                .filter(|(_, l)| !l.pinned && Arc::strong_count(&l.function) == 1)
                .min_by_key(|(_, l)| l.last_used)
                .map(|(name, _)| name.clone());
            let Some(victim) = victim else {
                return false;
            };
            functions.remove(&victim);
            self.0.metrics.evictions.inc();
            self.0.metrics.loaded.set(functions.len() as i64);
            tracing::info!(function = %victim, "function evicted");
        }
    }

    /// Follows `tag`: when it moves, loads the new version and swaps it in
    /// under `name`.
    fn watch(&self, name: String, tag: TagRef) -> AbortOnDrop {
        // The watcher holds only a weak handle, so an evicted function's
        // catalog entry (and its watcher) can go.
        let catalog = Arc::downgrade(&self.0);
        let task = tokio::spawn(async move {
            loop {
                let Some(inner) = catalog.upgrade() else {
                    return;
                };
                let this = Catalog(inner);
                // The digest only: holding the function while waiting would
                // keep it from ever being idle (evictable).
                let Some(current) = this.get(&name).map(|f| *f.manifest_digest()) else {
                    return;
                };
                let live = this.0.live.as_ref().expect("only live catalogs watch");
                let source = live.source.clone();
                let runner = live.runner.clone();
                drop(this);
                let moved = source.wait_for_move(&tag, &current, WATCH_WAIT).await;
                let next = match moved {
                    Ok(Some(next)) => next,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(%tag, error = %thaw_core::error::chain(&e), "watching the tag failed; retrying");
                        tokio::time::sleep(WATCH_RETRY).await;
                        continue;
                    }
                };
                let started = Instant::now();
                match runner.load(&source, &Reference::Digest(next)).await {
                    Ok(function) => {
                        let Some(inner) = catalog.upgrade() else {
                            return;
                        };
                        let mut functions = inner.functions.lock().unwrap();
                        if let Some(loaded) = functions.get_mut(&name) {
                            loaded.function = Arc::new(function);
                            inner.metrics.deploys.inc();
                            tracing::info!(function = %name, %tag, manifest = %next, load_us = started.elapsed().as_micros() as u64, "new version deployed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%tag, manifest = %next, error = %thaw_core::error::chain(&e), "loading the new version failed; keeping the old one");
                        tokio::time::sleep(WATCH_RETRY).await;
                    }
                }
            }
        });
        AbortOnDrop(task.abort_handle())
    }
}

/// The names a request may mean, with the path the guest then sees: the
/// `Host` label when the host is a DNS name (`hello.edge.example`), then
/// the first path segment (`/hello/...`).
fn candidates(host: Option<&str>, path: &str) -> Vec<(String, String)> {
    let mut names = Vec::new();
    if let Some(host) = host {
        let hostname = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let is_ip = hostname.parse::<std::net::IpAddr>().is_ok() || hostname.starts_with('[');
        if let Some((label, _)) = hostname.split_once('.')
            && !is_ip
        {
            names.push((label.to_ascii_lowercase(), path.to_string()));
        }
    }
    if let Some(rest) = path.strip_prefix('/') {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (segment, tail) = rest.split_at(end);
        if !segment.is_empty() {
            let guest = if tail.starts_with('/') {
                tail.to_string()
            } else {
                format!("/{tail}")
            };
            names.push((segment.to_string(), guest));
        }
    }
    names.dedup_by(|a, b| a.0 == b.0);
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_come_from_dns_host_labels_then_the_first_path_segment() {
        assert_eq!(
            candidates(Some("hello.edge.example:8080"), "/x?y"),
            vec![
                ("hello".to_string(), "/x?y".to_string()),
                ("x".to_string(), "/?y".to_string())
            ]
        );
        assert_eq!(
            candidates(Some("127.0.0.1:8080"), "/api/v1"),
            vec![("api".to_string(), "/v1".to_string())]
        );
        assert_eq!(candidates(Some("localhost"), "/"), vec![]);
        assert_eq!(
            candidates(None, "/hello"),
            vec![("hello".to_string(), "/".to_string())]
        );
    }
}
