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
use thaw_core::{Digest, Reference, TagRef};
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

type Load = Shared<BoxFuture<'static, Result<(Arc<Function>, Arc<Semaphore>), Miss>>>;

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
    not_found: Mutex<NotFoundCache>,
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
            not_found: Mutex::default(),
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

    fn tick(&self) -> u64 {
        self.0
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds (or replaces) a function, starting its tag watcher; returns
    /// what a request needs of it.
    fn insert(
        &self,
        name: String,
        function: Arc<Function>,
        pinned: bool,
        reference: Option<&Reference>,
    ) -> (Arc<Function>, Arc<Semaphore>) {
        let watcher = match (reference, &self.0.live) {
            (Some(Reference::Tag(tag)), Some(_)) => {
                Some(self.watch(name.clone(), tag.clone(), *function.manifest_digest()))
            }
            _ => None,
        };
        let share = Arc::new(Semaphore::new(self.0.capacity.function_instances));
        let loaded = Loaded {
            function: function.clone(),
            share: share.clone(),
            pinned,
            last_used: self.tick(),
            _watcher: watcher,
        };
        let mut functions = self.0.functions.lock().unwrap();
        functions.insert(name, loaded);
        self.0.metrics.loaded.set(functions.len() as i64);
        (function, share)
    }

    /// Finds the function for a request. A fixed set: among the loaded
    /// ones, by `Host` label, then path prefix, then the only one. On
    /// demand: the `Host` label's name (loaded if need be), then a loaded
    /// function by path prefix, then the first path segment's name (loaded
    /// if need be).
    pub(crate) async fn route(&self, host: Option<&str>, path: &str) -> Result<Routed, Miss> {
        if !self.on_demand() {
            return self.route_loaded(host, path, true).ok_or_else(|| {
                Miss::NotFound(format!(
                    "no function serves {path}; serving: {}",
                    self.names().join(", ")
                ))
            });
        }
        let (by_host, by_path) = candidates(host, path);
        let mut miss = Miss::NotFound(format!("no function serves {path}"));
        if let Some((name, guest_path)) = by_host {
            match self.find_or_load(&name, guest_path).await {
                Err(Miss::NotFound(reason)) => miss = Miss::NotFound(reason),
                found => return found,
            }
        }
        if let Some(found) = self.route_loaded(None, path, false) {
            return Ok(found);
        }
        if let Some((name, guest_path)) = by_path {
            match self.find_or_load(&name, guest_path).await {
                Err(Miss::NotFound(reason)) => miss = Miss::NotFound(reason),
                found => return found,
            }
        }
        Err(miss)
    }

    /// The loaded function the router picks (see [`crate::http::route`]).
    fn route_loaded(&self, host: Option<&str>, path: &str, sole: bool) -> Option<Routed> {
        let now = self.tick();
        let mut functions = self.0.functions.lock().unwrap();
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

    /// `name`, loaded already or now.
    async fn find_or_load(&self, name: &str, guest_path: String) -> Result<Routed, Miss> {
        let loaded = {
            let now = self.tick();
            let mut functions = self.0.functions.lock().unwrap();
            functions.get_mut(name).map(|loaded| {
                loaded.last_used = now;
                (loaded.function.clone(), loaded.share.clone())
            })
        };
        let (function, share) = match loaded {
            Some(found) => found,
            None => self.load(name).await?,
        };
        Ok(Routed {
            name: name.to_string(),
            function,
            share,
            guest_path,
        })
    }

    /// Loads `name:latest` once however many requests ask at once. The load
    /// runs as its own task, so it finishes (and frees its permit) even if
    /// every request waiting for it goes away.
    async fn load(&self, name: &str) -> Result<(Arc<Function>, Arc<Semaphore>), Miss> {
        let live = self.0.live.as_ref().expect("only live catalogs load");
        if let Some(reason) = live.not_found.lock().unwrap().get(name) {
            return Err(reason.clone());
        }
        let shared = {
            let mut loads = live.loads.lock().unwrap();
            match loads.get(name) {
                Some(load) => load.clone(),
                None => {
                    let task = tokio::spawn(self.clone().start_load(name.to_string()));
                    let load = async move {
                        task.await
                            .unwrap_or_else(|e| Err(Miss::Failed(format!("loading failed: {e}"))))
                    }
                    .boxed()
                    .shared();
                    loads.insert(name.to_string(), load.clone());
                    load
                }
            }
        };
        shared.await
    }

    async fn start_load(self, name: String) -> Result<(Arc<Function>, Arc<Semaphore>), Miss> {
        let live = self.0.live.as_ref().expect("only live catalogs load");
        let result = self.load_uncached(&name).await;
        if let Err(miss @ Miss::NotFound(_)) = &result {
            live.not_found.lock().unwrap().remember(&name, miss.clone());
        }
        live.loads.lock().unwrap().remove(&name);
        result
    }

    async fn load_uncached(&self, name: &str) -> Result<(Arc<Function>, Arc<Semaphore>), Miss> {
        let live = self.0.live.as_ref().expect("only live catalogs load");
        let tag = TagRef::new(name, thaw_core::DEFAULT_TAG)
            .map_err(|_| Miss::NotFound(format!("{name:?} is not a function name")))?;
        let Ok(_permit) = live.load_permits.clone().try_acquire_owned() else {
            return Err(Miss::Unavailable(
                "too many functions are loading; retry shortly".into(),
            ));
        };
        let reference = Reference::Tag(tag);
        let started = Instant::now();
        let loaded = live.runner.load(&live.source, &reference).await;
        let metrics = &self.0.metrics;
        match loaded {
            Ok(function) => {
                metrics.load("loaded", started.elapsed());
                tracing::info!(function = %name, manifest = %function.manifest_digest(), load_us = started.elapsed().as_micros() as u64, "function loaded");
                let entry = self.insert(
                    name.to_string(),
                    Arc::new(function),
                    false,
                    Some(&reference),
                );
                // Room is made only for functions that exist, so requests
                // for unknown names evict nothing. When every other one is
                // in use, the budget is exceeded by at most the loads that
                // can run at once.
                if !self.make_room() {
                    tracing::warn!(
                        max_loaded = self.0.capacity.max_loaded,
                        "every loaded function is in use; over --max-loaded until one is idle"
                    );
                }
                Ok(entry)
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

    /// Evicts least recently used idle on-demand functions until at most
    /// `max_loaded` are loaded; `false` when every one left is in use.
    fn make_room(&self) -> bool {
        let mut functions = self.0.functions.lock().unwrap();
        loop {
            let unpinned = functions.values().filter(|l| !l.pinned).count();
            if unpinned <= self.0.capacity.max_loaded {
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

    /// Follows `tag` from `current`: when it moves, loads the new version
    /// and swaps it in under `name`.
    fn watch(&self, name: String, tag: TagRef, mut current: Digest) -> AbortOnDrop {
        let live = self.0.live.as_ref().expect("only live catalogs watch");
        let (source, runner) = (live.source.clone(), live.runner.clone());
        // Only a weak handle: the watcher must not keep the catalog alive;
        // evicting the function aborts it.
        let catalog = Arc::downgrade(&self.0);
        let task = tokio::spawn(async move {
            loop {
                let next = match source.wait_for_move(&tag, &current, WATCH_WAIT).await {
                    Ok(Some(next)) => next,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(%tag, error = %thaw_core::error::chain(&e), "watching the tag failed; retrying");
                        tokio::time::sleep(WATCH_RETRY).await;
                        continue;
                    }
                };
                let started = Instant::now();
                let function = match runner.load(&source, &Reference::Digest(next)).await {
                    Ok(function) => Arc::new(function),
                    Err(e) => {
                        tracing::warn!(%tag, manifest = %next, error = %thaw_core::error::chain(&e), "loading the new version failed; keeping the old one");
                        tokio::time::sleep(WATCH_RETRY).await;
                        continue;
                    }
                };
                let Some(inner) = catalog.upgrade() else {
                    return;
                };
                let mut functions = inner.functions.lock().unwrap();
                let Some(loaded) = functions.get_mut(&name) else {
                    return;
                };
                loaded.function = function;
                current = next;
                inner.metrics.deploys.inc();
                tracing::info!(function = %name, %tag, manifest = %next, load_us = started.elapsed().as_micros() as u64, "new version deployed");
            }
        });
        AbortOnDrop(task.abort_handle())
    }
}

/// Names recently found not to exist, so requests for them (scanners
/// asking for `/wp-login.php`) do not each cost a lookup.
#[derive(Default)]
struct NotFoundCache(HashMap<String, (Instant, Miss)>);

/// How long a name stays known not to exist.
const NOT_FOUND_TTL: Duration = Duration::from_secs(5);
/// How many such names are kept.
const NOT_FOUND_ENTRIES: usize = 4096;

impl NotFoundCache {
    fn get(&mut self, name: &str) -> Option<&Miss> {
        let fresh = self
            .0
            .get(name)
            .is_some_and(|(at, _)| at.elapsed() < NOT_FOUND_TTL);
        if !fresh {
            self.0.remove(name);
            return None;
        }
        self.0.get(name).map(|(_, miss)| miss)
    }

    fn remember(&mut self, name: &str, miss: Miss) {
        if self.0.len() >= NOT_FOUND_ENTRIES {
            self.0.retain(|_, (at, _)| at.elapsed() < NOT_FOUND_TTL);
            if self.0.len() >= NOT_FOUND_ENTRIES {
                self.0.clear();
            }
        }
        self.0.insert(name.to_string(), (Instant::now(), miss));
    }
}

/// The names a request may mean, each with the path the guest then sees:
/// the `Host` label when the host is a DNS name (`hello.edge.example`),
/// and the first path segment (`/hello/...`, stripped).
type Candidate = Option<(String, String)>;

fn candidates(host: Option<&str>, path: &str) -> (Candidate, Candidate) {
    let by_host = host.and_then(|host| {
        let hostname = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let is_ip = hostname.parse::<std::net::IpAddr>().is_ok() || hostname.starts_with('[');
        let (label, _) = hostname.split_once('.')?;
        (!is_ip && !label.is_empty()).then(|| (label.to_ascii_lowercase(), path.to_string()))
    });
    let by_path = path.strip_prefix('/').and_then(|rest| {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (segment, tail) = rest.split_at(end);
        if segment.is_empty() {
            return None;
        }
        let guest = if tail.starts_with('/') {
            tail.to_string()
        } else {
            format!("/{tail}")
        };
        Some((segment.to_string(), guest))
    });
    (by_host, by_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str, path: &str) -> Candidate {
        Some((name.to_string(), path.to_string()))
    }

    #[test]
    fn candidates_come_from_dns_host_labels_and_the_first_path_segment() {
        assert_eq!(
            candidates(Some("hello.edge.example:8080"), "/x?y"),
            (pair("hello", "/x?y"), pair("x", "/?y"))
        );
        assert_eq!(
            candidates(Some("127.0.0.1:8080"), "/api/v1"),
            (None, pair("api", "/v1"))
        );
        assert_eq!(candidates(Some("localhost"), "/"), (None, None));
        assert_eq!(candidates(None, "/hello"), (None, pair("hello", "/")));
    }

    proptest::proptest! {
        #[test]
        fn any_host_and_path_give_candidates_whose_guest_path_is_absolute(
            host in proptest::option::of("\\PC{0,60}"),
            path in "/\\PC{0,80}",
        ) {
            let (by_host, by_path) = candidates(host.as_deref(), &path);
            for (name, guest) in by_host.into_iter().chain(by_path) {
                proptest::prop_assert!(!name.is_empty());
                proptest::prop_assert!(guest.starts_with('/'), "{guest:?}");
            }
        }
    }
}
