//! The HTTP front: routes requests to loaded functions, enforces the
//! per-request limits, and serves `/healthz` and `/metrics`.
//!
//! The request ABI hands the guest a whole request on stdin and reads a
//! whole response from stdout, so bodies are buffered (and capped) rather
//! than streamed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use thaw_core::abi::{
    FrameRequest, GuestResponse, encode_request_frame, parse_cgi_response, parse_compact_response,
    parse_http1_response,
};
use thaw_core::{ModuleKind, Reference};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::catalog::{Capacity, Catalog, Miss, Routed};
use crate::metrics::{FunctionLabels, Metrics, RequestLabels};
use crate::outbound::{OutboundRules, Policies};
use crate::trace::{TRACEPARENT, TraceContext};
use crate::{
    Function, Invocation, MeteredCall, Metering, Output, ResetWork, RunError, Runner, Source,
    SpentInstance, function_name,
};

/// Default [`RequestLimits::max_body`]: 10 MiB.
pub const DEFAULT_MAX_BODY: usize = 10 << 20;
/// Default [`RequestLimits::body_timeout`].
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the HTTP front accepts of each request before a function runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest request body, in bytes; larger gets 413.
    pub max_body: usize,
    /// Time the whole body has to arrive; slower gets 408. An instance
    /// slot is taken only once the body is in, so a client trickling a
    /// body holds no slot.
    pub body_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

/// Headers that describe one hop, not the message: never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// What one finished request looked like, for callers that want to report it.
#[derive(Clone, Debug)]
pub struct AccessRecord {
    /// The function that served it.
    pub function: String,
    /// The status sent.
    pub status: u16,
    /// What the function's instance used, when one ran.
    pub usage: Option<Usage>,
    /// Time inside the runner.
    pub total: Duration,
}

/// What one request's instance used.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// Time to create the instance, when it was created.
    pub instantiate: Option<Duration>,
    /// Time of the whole call (creating the instance and running the
    /// guest), when it returned output; the rest of the request's time is
    /// the HTTP front's.
    pub call: Option<Duration>,
    /// CPU time and peak memory: what an operator bills from.
    pub metering: Metering,
    /// What the instance's slot reset copied back, when slots are reset
    /// by their dirty pages.
    pub reset: Option<ResetWork>,
}

/// The functions and their environments do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Two functions would be served under one name.
    #[error(
        "two functions would be served as {0:?}; serve them from separate runners or retag one"
    )]
    DuplicateName(String),
    /// An environment or outbound origins were given for a function that
    /// is not served.
    #[error("{0} is given for {1:?}, which is not served (serving: {2})")]
    UnknownFunction(&'static str, String, String),
}

/// The environment functions see, besides per-request metadata. It is
/// where runtime configuration and secrets belong: unlike `--init-env`,
/// nothing here enters a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionEnv {
    /// Variables every function sees.
    pub shared: Vec<(String, String)>,
    /// Variables only one function sees, by its served name; they come
    /// after the shared ones, so they win.
    pub by_function: BTreeMap<String, Vec<(String, String)>>,
}

impl FunctionEnv {
    /// What function `name` sees.
    fn of(&self, name: &str) -> Vec<(String, String)> {
        let mut env = self.shared.clone();
        env.extend(self.by_function.get(name).into_iter().flatten().cloned());
        env
    }
}

/// `env` with each name once, holding its last value. Go's runtime keeps
/// the *first* of duplicate names, so the later, more specific value (a
/// function's own over a shared one, the runner's metadata over both)
/// must be the only one.
fn last_value_wins(env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut position: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut out: Vec<(String, String)> = Vec::with_capacity(env.len());
    for (key, value) in env {
        match position.get(&key) {
            Some(&at) => out[at].1 = value,
            None => {
                position.insert(key.clone(), out.len());
                out.push((key, value));
            }
        }
    }
    out
}

/// Why [`App::load`] (or the options that lead to it) failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadAppError {
    /// No artifact cache directory is known.
    #[error("no cache directory: set THAW_HOME or pass --cache-dir")]
    NoCacheDir,
    /// An environment file cannot be read or parsed.
    #[error("environment file {path}: {reason}")]
    EnvFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The store could not be opened.
    #[error("opening the store")]
    Store(#[from] thaw_store::StoreError),
    /// The registry client could not be set up.
    #[error("opening the registry")]
    Registry(#[from] thaw_client::ClientError),
    /// The runner could not start or a function could not load.
    #[error("loading {reference}")]
    Load {
        /// The function (`*` for the runner itself).
        reference: String,
        /// Why.
        #[source]
        source: RunError,
    },
    /// The functions and their environments do not fit together.
    #[error(transparent)]
    App(#[from] AppError),
}

/// Called after every request, e.g. to report the first one.
pub type ResponseHook = Box<dyn Fn(&AccessRecord) + Send + Sync>;

/// The functions served, and how.
pub struct App {
    catalog: Catalog,
    env: FunctionEnv,
    outbound: Policies,
    limits: RequestLimits,
    slots: Arc<Semaphore>,
    max_concurrency: usize,
    /// This host's cores: up to this many running instances, teardown
    /// moves off the request's path.
    cores: usize,
    /// KiB of request bodies that may be held at once: as many full bodies
    /// as there are slots, so reading bodies before taking a slot costs no
    /// more memory than taking the slot first did.
    body_budget: Arc<Semaphore>,
    /// Slots whose answer went out but whose instance is still being torn
    /// down: a request finding every slot taken waits for these rather
    /// than being refused, so a client sending one request after another
    /// never sees a 503.
    retiring: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    request_ids: AtomicU64,
    on_response: Option<ResponseHook>,
}

impl App {
    /// Serves `functions` (by name; names must be unique) with `env`,
    /// before per-request metadata. At most `max_concurrency` requests run
    /// at once; the rest get 503.
    pub fn new(
        functions: impl IntoIterator<Item = (String, Function)>,
        env: FunctionEnv,
        limits: RequestLimits,
        max_concurrency: usize,
    ) -> Result<Self, AppError> {
        let mut by_name = BTreeMap::new();
        for (name, function) in functions {
            if by_name.insert(name.clone(), function).is_some() {
                return Err(AppError::DuplicateName(name));
            }
        }
        check_names("an environment", env.by_function.keys(), by_name.keys())?;
        let metrics = Arc::new(Metrics::default());
        let capacity = Capacity {
            max_loaded: by_name.len(),
            function_instances: max_concurrency,
        };
        let catalog = Catalog::fixed(by_name, capacity, metrics.clone());
        Ok(Self::with(catalog, env, limits, max_concurrency, metrics))
    }

    fn with(
        catalog: Catalog,
        env: FunctionEnv,
        limits: RequestLimits,
        max_concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            catalog,
            env,
            outbound: Policies::new(&OutboundRules::default()),
            limits,
            slots: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            body_budget: Arc::new(Semaphore::new(
                (max_concurrency * kib(limits.max_body as u64) as usize)
                    .min(Semaphore::MAX_PERMITS),
            )),
            retiring: Arc::default(),
            metrics,
            request_ids: AtomicU64::new(1),
            on_response: None,
        }
    }

    /// Loads every reference from `source` into `runner` and serves them
    /// by name ([`function_name`]) with `env`, following each tag as it
    /// moves. With `on_demand`, also serves every other name `source`
    /// resolves, loaded on first request within `capacity`. At most as
    /// many requests as the runner has instance slots run at once.
    pub async fn load(
        runner: Arc<Runner>,
        source: Source,
        references: &[Reference],
        env: FunctionEnv,
        limits: RequestLimits,
        serving: Serving,
    ) -> Result<Self, LoadAppError> {
        let mut pinned: Vec<(String, Reference, Function)> = Vec::new();
        for reference in references {
            let function =
                runner
                    .load(&source, reference)
                    .await
                    .map_err(|source| LoadAppError::Load {
                        reference: reference.to_string(),
                        source,
                    })?;
            let name = function_name(reference);
            if pinned.iter().any(|(n, _, _)| *n == name) {
                return Err(AppError::DuplicateName(name).into());
            }
            pinned.push((name, reference.clone(), function));
        }
        if !serving.on_demand {
            let names = pinned.iter().map(|(name, _, _)| name);
            check_names("an environment", env.by_function.keys(), names)?;
        }
        let slots = runner.config().max_instances as usize;
        let metrics = Arc::new(Metrics::default());
        let catalog = Catalog::live(
            runner,
            source,
            pinned,
            serving.on_demand,
            serving.capacity,
            metrics.clone(),
        );
        Ok(Self::with(catalog, env, limits, slots, metrics))
    }

    /// Lets functions reach the origins `rules` allows; without it, every
    /// outbound request is denied.
    pub fn allow_outbound(mut self, rules: &OutboundRules) -> Result<Self, AppError> {
        let policies = Policies::new(rules);
        if !self.on_demand() {
            let names = self.names();
            check_names("an outbound origin", policies.names(), names.iter())?;
        }
        self.outbound = policies;
        Ok(self)
    }

    /// Calls `hook` after every request.
    pub fn on_response(mut self, hook: impl Fn(&AccessRecord) + Send + Sync + 'static) -> Self {
        self.on_response = Some(Box::new(hook));
        self
    }

    /// The names loaded now.
    pub fn names(&self) -> Vec<String> {
        self.catalog.names()
    }

    /// Whether names not loaded at start are loaded on first request.
    pub fn on_demand(&self) -> bool {
        self.catalog.on_demand()
    }

    /// The axum router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(metrics))
            .fallback(handle)
            .with_state(Arc::new(self))
    }
}

/// Which names a live [`App`] serves, and within what.
#[derive(Clone, Copy, Debug)]
pub struct Serving {
    /// Serve every name the source resolves, loaded on first request.
    pub on_demand: bool,
    /// How many functions stay loaded, and each one's share of instances.
    pub capacity: Capacity,
}

/// Settings (`what`) given for a name that is not served are a mistake.
fn check_names<'a>(
    what: &'static str,
    mut given: impl Iterator<Item = &'a String>,
    names: impl Iterator<Item = &'a String> + Clone,
) -> Result<(), AppError> {
    if let Some(unknown) = given.find(|n| !names.clone().any(|name| name == *n)) {
        let served: Vec<_> = names.map(String::as_str).collect();
        return Err(AppError::UnknownFunction(
            what,
            unknown.clone(),
            served.join(", "),
        ));
    }
    Ok(())
}

/// Picks the entry of `functions` for a request: by `Host`
/// (`name.example.com`), then by path prefix (`/name/...`, stripped), then
/// (with `sole`) the only one. Returns its name, the entry and the path the
/// guest sees.
pub(crate) fn route<'a, F>(
    functions: &'a BTreeMap<String, F>,
    host: Option<&str>,
    path: &str,
    sole: bool,
) -> Option<(&'a str, &'a F, String)> {
    if let Some(host) = host {
        let label = host.split([':', '.']).next().unwrap_or_default();
        if let Some((name, f)) = functions.get_key_value(label) {
            return Some((name, f, path.to_string()));
        }
    }
    let by_prefix = functions
        .iter()
        .filter_map(|(name, f)| {
            let rest = path.strip_prefix('/')?.strip_prefix(name.as_str())?;
            (rest.is_empty() || rest.starts_with(['/', '?'])).then_some((name, f, rest))
        })
        .max_by_key(|(name, _, _)| name.len());
    if let Some((name, f, rest)) = by_prefix {
        let guest_path = if rest.starts_with('/') {
            rest.to_string()
        } else {
            format!("/{rest}")
        };
        return Some((name, f, guest_path));
    }
    if sole && functions.len() == 1 {
        let (name, f) = functions.iter().next()?;
        return Some((name, f, path.to_string()));
    }
    None
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics.response()
}

/// A short plain-text error, with the reason the client may act on.
fn error(status: StatusCode, reason: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
        .into_response()
}

async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let started = Instant::now();
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let routed = match app.catalog.route(host.as_deref(), &path_and_query).await {
        Ok(routed) => routed,
        Err(Miss::NotFound(reason)) => return error(StatusCode::NOT_FOUND, &reason),
        Err(Miss::Unavailable(reason)) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, &reason);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Err(Miss::Failed(reason)) => return error(StatusCode::BAD_GATEWAY, &reason),
    };
    let name = routed.name.clone();
    let request_id = app.request_ids.fetch_add(1, Ordering::Relaxed);
    let method = request.method().to_string();
    let trace = TraceContext::for_request(request.headers());
    request.headers_mut().insert(TRACEPARENT, trace.header());
    let span = tracing::info_span!(
        "request",
        request_id,
        function = %name,
        trace_id = %trace.trace_id,
        span_id = %trace.span_id
    );

    let (response, ran) = run(&app, &routed, remote, request_id, request)
        .instrument(span.clone())
        .await;
    let (usage, teardown) = ran.unzip();
    let finished = Finished {
        name,
        method,
        path_and_query,
        status: response.status().as_u16(),
        total: started.elapsed(),
        usage,
    };
    finished.count(&app);
    match teardown {
        // After the answer goes out. One task for the teardown and the
        // log: it waits in this worker's next-task slot, where a second
        // spawn would push it out and wake another worker to steal it
        // (measured, hello at c=1: 2.5 → 0.6 context switches per request,
        // p50 204 → 182 µs).
        Some(teardown) if teardown.off_path => {
            let retiring = app.retiring.clone();
            retiring.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let reset = teardown.retire();
                retiring.fetch_sub(1, Ordering::Relaxed);
                span.in_scope(|| finished.log(&app, reset));
            });
        }
        teardown => {
            let reset = teardown.and_then(Teardown::retire);
            span.in_scope(|| finished.log(&app, reset));
        }
    }
    response
}

/// A request that has been answered: counted at once, and logged once its
/// instance (if any) is retired, so that the log includes the reset.
struct Finished {
    name: String,
    method: String,
    path_and_query: String,
    status: u16,
    total: Duration,
    usage: Option<Usage>,
}

impl Finished {
    /// Counts the request in the metrics: before the answer goes out, so
    /// a client that reads `/metrics` next sees its own request.
    fn count(&self, app: &App) {
        let metrics = &app.metrics;
        metrics
            .requests
            .get_or_create(&RequestLabels {
                function: self.name.clone(),
                status: self.status,
            })
            .inc();
        let labels = FunctionLabels {
            function: self.name.clone(),
        };
        metrics
            .latency
            .get_or_create(&labels)
            .observe(self.total.as_secs_f64());
        let Some(usage) = &self.usage else {
            return;
        };
        if let Some(instantiate) = usage.instantiate {
            metrics
                .instantiation
                .get_or_create(&labels)
                .observe(instantiate.as_secs_f64());
        }
        metrics
            .cpu
            .get_or_create(&labels)
            .inc_by(usage.metering.cpu.as_secs_f64());
        metrics
            .peak_memory
            .get_or_create(&labels)
            .observe(usage.metering.peak_memory as f64);
        metrics.outbound(&self.name, &usage.metering.outbound);
    }

    /// Once the instance is retired: counts its slot's reset, writes the
    /// access line and calls the response hook.
    fn log(self, app: &App, reset: Option<ResetWork>) {
        let Finished {
            name,
            method,
            path_and_query,
            status,
            total,
            usage,
        } = self;
        if let Some(reset) = reset {
            app.metrics.reset_bytes.observe(reset.bytes as f64);
            app.metrics.merged_pages.inc_by(reset.merged_pages);
        }
        let usage = usage.map(|usage| Usage { reset, ..usage });
        tracing::info!(
            target: "thaw::access",
            // The path without its query: query strings can carry tokens.
            %method, path = %path_only(&path_and_query), status,
            total_us = total.as_micros() as u64,
            instantiate_us = usage.and_then(|u| u.instantiate).map(|d| d.as_micros() as u64),
            call_us = usage.and_then(|u| u.call).map(|d| d.as_micros() as u64),
            cpu_us = usage.map(|u| u.metering.cpu.as_micros() as u64),
            page_faults = usage.and_then(|u| u.metering.page_faults),
            memory_peak = usage.map(|u| u.metering.peak_memory),
            reset_bytes = usage.and_then(|u| u.reset).map(|r| r.bytes),
            outbound = usage.map(|u| u.metering.outbound.total()),
            "request"
        );
        if let Some(hook) = &app.on_response {
            hook(&AccessRecord {
                function: name,
                status,
                usage,
                total,
            });
        }
    }
}

/// A spent instance and the permits its pool slot and its function's share
/// hold until it is torn down.
struct Teardown {
    instance: SpentInstance,
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    /// Whether cores were idle when the request was admitted: then the
    /// teardown waits until the answer has gone out. Under load it runs
    /// inline, where the CPU is spent either way and any hand-off costs
    /// throughput.
    off_path: bool,
}

impl Teardown {
    fn retire(self) -> Option<ResetWork> {
        let reset = self.instance.retire();
        drop(self.permits);
        reset
    }
}

async fn run(
    app: &App,
    routed: &Routed,
    remote: SocketAddr,
    request_id: u64,
    request: Request,
) -> (Response, Option<(Usage, Teardown)>) {
    let (name, function, guest_path) = (&routed.name, &*routed.function, &routed.guest_path);
    let (parts, body) = request.into_parts();
    let limits = app.limits;
    // A body is reserved against the budget before it is read: its
    // declared size, or the most it may be when it declares none.
    let reserve = match thaw_http::declared_length(&parts.headers) {
        Some(length) => kib(length.min(limits.max_body as u64)),
        None if parts.headers.contains_key(header::TRANSFER_ENCODING) => {
            kib(limits.max_body as u64)
        }
        None => 0,
    };
    let _body_budget = match reserve {
        0 => None,
        kib => match app.body_budget.clone().try_acquire_many_owned(kib) {
            Ok(permit) => Some(permit),
            Err(_) => {
                let reason = "too many request bodies are being read; retry shortly";
                return (busy(app, name, "body_budget", reason), None);
            }
        },
    };
    let body = match thaw_http::read_body(
        &parts.headers,
        body,
        limits.max_body,
        limits.body_timeout,
    )
    .await
    {
        Ok(body) => body,
        Err(e @ thaw_http::BodyError::TooLarge { .. }) => {
            app.metrics.limit_hit(name, "body");
            return (error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()), None);
        }
        Err(e @ thaw_http::BodyError::TimedOut(_)) => {
            app.metrics.limit_hit(name, "body_timeout");
            return (error(StatusCode::REQUEST_TIMEOUT, &e.to_string()), None);
        }
        Err(e) => {
            let reason = thaw_core::error::chain(&e);
            return (error(StatusCode::BAD_REQUEST, &reason), None);
        }
    };
    // Only now, with the whole request in hand: a slow client holds no
    // instance slot.
    let Some(slot) = admit(&app.slots, &app.retiring).await else {
        let reason = "all instances are busy; retry shortly";
        return (busy(app, name, "concurrency", reason), None);
    };
    let Some(share) = admit(&routed.share, &app.retiring).await else {
        let reason = "this function is using its whole share of instances; retry shortly";
        return (busy(app, name, "function_share", reason), None);
    };

    let remote_addr = remote.to_string();
    let method = parts.method.as_str();
    let wire = Wire::of(function);
    let mut env = app.env.of(name);
    env.push(("THAW_FUNCTION".into(), name.to_string()));
    env.push(("THAW_REQUEST_ID".into(), request_id.to_string()));
    env.push(("THAW_REMOTE_ADDR".into(), remote_addr.clone()));
    if let Wire::Cgi = wire {
        env.extend(cgi_env(method, guest_path, &parts.headers, &body, remote));
    }
    let env = last_value_wins(env);
    let (invocation, env) = match wire {
        Wire::Compact => {
            let headers: Vec<(&str, &[u8])> = forwarded_headers(&parts.headers)
                .map(|(name, value)| (name.as_str(), value.as_bytes()))
                .collect();
            let request = FrameRequest {
                method,
                target: guest_path,
                remote_addr: &remote_addr,
                env: &env,
                body: &body,
            };
            let frame = encode_request_frame(request, &headers);
            // The frame carries the environment, so WASI's stays empty.
            (Invocation::Compact(frame), Vec::new())
        }
        Wire::Http1 => {
            let text = http1_request(method, guest_path, &parts.headers, &body);
            (Invocation::Entry(text), env)
        }
        Wire::Cgi => (Invocation::Entry(body.to_vec()), env),
    };

    // A guard, because hyper drops this future when the client goes away.
    let _in_flight = InFlight::enter(&app.metrics);
    let off_path = app.max_concurrency - app.slots.available_permits() <= app.cores;
    let outbound = app.outbound.of(name);
    let MeteredCall {
        result,
        metering,
        instance,
    } = function.call_metered(invocation, &env, outbound).await;
    let teardown = Teardown {
        instance,
        permits: (slot, share),
        off_path,
    };
    let (instantiate, call, response) = match result {
        Ok(output) => (
            Some(output.instantiate),
            Some(output.total),
            guest_response(app, name, function, wire, method, output),
        ),
        Err(e) => (None, None, run_error(app, name, e)),
    };
    let usage = Usage {
        instantiate,
        call,
        metering,
        reset: None,
    };
    (response, Some((usage, teardown)))
}

/// Longest a request waits for a slot that is being torn down; a teardown
/// takes a few milliseconds at most.
const RETIRING_WAIT: Duration = Duration::from_millis(250);

/// A permit from `permits` at once; or, when all are taken but some
/// instance is being torn down, the first one freed within
/// [`RETIRING_WAIT`]. `None` when the request should be refused.
async fn admit(permits: &Arc<Semaphore>, retiring: &AtomicUsize) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    if retiring.load(Ordering::Relaxed) == 0 {
        return None;
    }
    tokio::time::timeout(RETIRING_WAIT, permits.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// A 503 with `Retry-After: 1` for a request refused by `limit`.
fn busy(app: &App, name: &str, limit: &'static str, reason: &str) -> Response {
    app.metrics.limit_hit(name, limit);
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, reason);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// `bytes` in whole KiB, rounded up: the unit of the body budget.
fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Counts a running instance for as long as it lives.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

fn run_error(app: &App, name: &str, e: RunError) -> Response {
    let (status, reason) = match &e {
        RunError::Timeout(limit) => {
            app.metrics.limit_hit(name, "deadline");
            (
                StatusCode::GATEWAY_TIMEOUT,
                format!("function exceeded its {limit:?} deadline"),
            )
        }
        RunError::MemoryLimit(limit) => {
            app.metrics.limit_hit(name, "memory");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("function exceeded its {} MiB memory cap", limit >> 20),
            )
        }
        RunError::Trap { .. } | RunError::Exit { .. } => {
            app.metrics
                .traps
                .get_or_create(&FunctionLabels {
                    function: name.to_string(),
                })
                .inc();
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "function crashed".to_string(),
            )
        }
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error".to_string(),
        ),
    };
    let stderr = match &e {
        RunError::Trap { stderr, .. } | RunError::Exit { stderr, .. } => {
            String::from_utf8_lossy(stderr).into_owned()
        }
        _ => String::new(),
    };
    tracing::warn!(
        function = %name, error = %thaw_core::error::chain(&e), guest_stderr = %stderr,
        "request failed"
    );
    error(status, &reason)
}

fn guest_response(
    app: &App,
    name: &str,
    function: &Function,
    wire: Wire,
    method: &str,
    output: Output,
) -> Response {
    if !output.stderr.is_empty() {
        tracing::info!(function = %name, stderr = %String::from_utf8_lossy(&output.stderr), "guest stderr");
    }
    if output.stdout.len() > function.config.max_stdout {
        app.metrics.limit_hit(name, "response");
        return error(
            StatusCode::BAD_GATEWAY,
            &format!(
                "function response exceeds {} bytes",
                function.config.max_stdout
            ),
        );
    }
    let parsed = match wire {
        Wire::Http1 => parse_http1_response(&output.stdout, method),
        Wire::Compact => parse_compact_response(&output.stdout, method),
        Wire::Cgi => parse_cgi_response(&output.stdout),
    };
    match parsed.map_err(|e| e.to_string()).and_then(into_response) {
        Ok(response) => response,
        Err(reason) => {
            tracing::warn!(function = %name, %reason, "malformed function response");
            error(
                StatusCode::BAD_GATEWAY,
                &format!("function sent a malformed response: {reason}"),
            )
        }
    }
}

/// The form a request and its response take between the front and a
/// guest (`docs/abi.md`).
#[derive(Clone, Copy, Debug)]
enum Wire {
    /// HTTP/1.1 text, for SDK functions without the compact entry point.
    Http1,
    /// Request and response frames (`thaw_handle_compact`).
    Compact,
    /// CGI/1.1, for command modules.
    Cgi,
}

impl Wire {
    fn of(function: &Function) -> Self {
        match function.kind() {
            ModuleKind::Command => Wire::Cgi,
            ModuleKind::Reactor if function.speaks_compact() => Wire::Compact,
            ModuleKind::Reactor => Wire::Http1,
        }
    }
}

fn path_only(path_and_query: &str) -> &str {
    path_and_query.split('?').next().unwrap_or_default()
}

/// The request headers an SDK function receives: all but hop-by-hop ones.
fn forwarded_headers(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    headers
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
}

/// Serializes a request in HTTP/1.1 wire format for the SDK to parse.
fn http1_request(method: &str, path: &str, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
    for (name, value) in forwarded_headers(headers) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// CGI/1.1 meta-variables (RFC 3875) for a command module.
fn cgi_env(
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    remote: SocketAddr,
) -> Vec<(String, String)> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut env = vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        ("SERVER_PROTOCOL".into(), "HTTP/1.1".into()),
        (
            "SERVER_SOFTWARE".into(),
            format!("thaw-runner/{}", env!("CARGO_PKG_VERSION")),
        ),
        ("REQUEST_METHOD".into(), method.to_string()),
        ("SCRIPT_NAME".into(), String::new()),
        ("PATH_INFO".into(), path.to_string()),
        ("QUERY_STRING".into(), query.to_string()),
        ("REQUEST_URI".into(), path_and_query.to_string()),
        ("REMOTE_ADDR".into(), remote.ip().to_string()),
        ("REMOTE_PORT".into(), remote.port().to_string()),
        ("CONTENT_LENGTH".into(), body.len().to_string()),
    ];
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        let (name, port) = host.split_once(':').unwrap_or((host, "80"));
        env.push(("SERVER_NAME".into(), name.to_string()));
        env.push(("SERVER_PORT".into(), port.to_string()));
    }
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
    {
        env.push(("CONTENT_TYPE".into(), ct.to_string()));
    }
    for (name, value) in headers {
        // `X_Forwarded_For` would collide with `X-Forwarded-For`, and
        // `Proxy` would become HTTP_PROXY, which CGI programs read as
        // their outbound proxy ("httpoxy").
        if HOP_BY_HOP.contains(&name.as_str())
            || name == header::CONTENT_TYPE
            || name.as_str().contains('_')
            || name.as_str() == "proxy"
        {
            continue;
        }
        if let Ok(value) = value.to_str() {
            let key = format!(
                "HTTP_{}",
                name.as_str().to_ascii_uppercase().replace('-', "_")
            );
            env.push((key, value.to_string()));
        }
    }
    env
}

/// The response a guest wrote, as sent on: hop-by-hop headers dropped,
/// and anything that is not valid HTTP refused.
fn into_response(guest: GuestResponse) -> Result<Response, String> {
    let status = StatusCode::from_u16(guest.status).map_err(|e| e.to_string())?;
    let mut response = Response::new(Body::from(guest.body));
    *response.status_mut() = status;
    for (name, value) in guest.headers {
        if HOP_BY_HOP.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_bytes(&value).map_err(|e| e.to_string())?;
        response.headers_mut().append(name, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_requests_without_hop_by_hop_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("x"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let raw = http1_request("POST", "/a?b=1", &headers, b"hi");
        assert_eq!(
            String::from_utf8(raw).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nhost: x\r\nContent-Length: 2\r\n\r\nhi"
        );
    }

    #[test]
    fn a_later_value_replaces_an_earlier_one_in_place() {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let env = last_value_wins(vec![
            pair("MODE", "shared"),
            pair("A", "1"),
            pair("MODE", "own"),
            pair("THAW_FUNCTION", "spoofed"),
            pair("THAW_FUNCTION", "api"),
        ]);
        assert_eq!(
            env,
            vec![
                pair("MODE", "own"),
                pair("A", "1"),
                pair("THAW_FUNCTION", "api")
            ]
        );
    }

    #[test]
    fn drops_hop_by_hop_headers_from_guest_responses() {
        let guest = GuestResponse {
            status: 200,
            headers: vec![
                ("Connection".into(), b"close".to_vec()),
                ("X-A".into(), b"1".to_vec()),
            ],
            body: bytes::Bytes::from_static(b"ok"),
        };
        let response = into_response(guest).unwrap();
        assert_eq!(response.headers()["x-a"], "1");
        assert!(response.headers().get("connection").is_none());
        let bad = GuestResponse {
            status: 99,
            headers: vec![],
            body: bytes::Bytes::new(),
        };
        assert!(into_response(bad).is_err());
    }

    #[test]
    fn cgi_env_follows_rfc_3875() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.com:8080"));
        headers.insert("x-trace", HeaderValue::from_static("abc"));
        let env: BTreeMap<_, _> = cgi_env(
            "GET",
            "/p/q?x=1",
            &headers,
            b"",
            "127.0.0.1:5000".parse().unwrap(),
        )
        .into_iter()
        .collect();
        assert_eq!(env["PATH_INFO"], "/p/q");
        assert_eq!(env["QUERY_STRING"], "x=1");
        assert_eq!(env["SERVER_PORT"], "8080");
        assert_eq!(env["HTTP_X_TRACE"], "abc");
        assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    }

    proptest::proptest! {
        /// Routing takes any `Host` and path a client sends: it never
        /// panics, picks only a served name, and hands the guest a path
        /// that starts with `/` whenever the request's did.
        #[test]
        fn routing_takes_any_host_and_path(
            names in proptest::collection::btree_set("[a-z][a-z0-9-]{0,8}", 1..4),
            host in proptest::option::of(".{0,40}"),
            path in "/.{0,60}",
        ) {
            let functions: BTreeMap<String, ()> = names.into_iter().map(|n| (n, ())).collect();
            if let Some((name, _, guest_path)) = route(&functions, host.as_deref(), &path, true) {
                proptest::prop_assert!(functions.contains_key(name));
                proptest::prop_assert!(guest_path.starts_with('/'), "{guest_path:?}");
            }
        }
    }
}
