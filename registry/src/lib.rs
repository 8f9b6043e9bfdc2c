//! The registry: an HTTP service over the build pipeline. The build API
//! submits modules to [`thaw_builder`], the read API serves signed
//! manifests and their blobs to edge runners, and the OpenAPI document
//! describes both (`docs/api.md` is rendered from it).
//!
//! A registry process holds no state of its own: builds, their records,
//! their leases, signatures and tags all live in the [`ArtifactStore`], so
//! any number of processes can share one bucket behind a load balancer.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use thaw_builder::{Builder, thaw_compiler::Compiler};
//! use thaw_core::signing::RegistryKey;
//! use thaw_registry::{Service, ServiceConfig, Tokens};
//! use thaw_store::ArtifactStore;
//!
//! let store = ArtifactStore::open("/var/lib/thaw")?;
//! let builder = Builder::new(store, Compiler::new())?;
//! let config = ServiceConfig::new(Tokens::parse("secret-token team-a-*")?);
//! let service = Service::start(builder, RegistryKey::generate(), config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7070").await?;
//! let limits = thaw_http::ConnectionLimits::default();
//! thaw_http::serve(listener, service.router(), limits, thaw_http::shutdown_signal()).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod auth;
mod builds;
mod metrics;
pub mod openapi;
mod quota;
mod read;
mod tags;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use thaw_builder::Builder;
use thaw_builder::thaw_snapshotter::SnapshotOptions;
use thaw_core::TargetProfile;
use thaw_core::api::ErrorBody;
use thaw_core::error::chain;
use thaw_core::signing::RegistryKey;
use thaw_store::StoreError;

pub use auth::{Caller, Tokens, TokensError};

/// Default [`ServiceConfig::max_module_bytes`]: 128 MiB, well above the
/// largest Go modules seen (12 MB for `examples/init-heavy`).
pub const DEFAULT_MAX_MODULE_BYTES: usize = 128 << 20;
/// Default [`ServiceConfig::body_timeout`]: a 128 MiB module at about
/// 1 MB/s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(120);
/// Default [`ServiceConfig::max_uploads`].
pub const DEFAULT_MAX_UPLOADS: usize = 4;
/// Default [`ServiceConfig::queue_capacity`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 8;
/// Default [`ServiceConfig::workers`]: one, because a build already
/// compiles its targets in parallel on every core.
pub const DEFAULT_WORKERS: usize = 1;
/// Default [`ServiceConfig::lease_ttl`].
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// The kinds of record the registry keeps in its store, beside the builds:
/// what a store check must expect to find there.
pub const RECORD_KINDS: &[thaw_store::RecordKind] =
    &[builds::BUILD_RECORDS, builds::LEASES, quota::USAGE];
/// Default [`ServiceConfig::tenant_quota`]: 10 GiB per token, hundreds of
/// builds of a large Go module.
pub const DEFAULT_TENANT_QUOTA: u64 = 10 << 30;

/// The targets built when a submission names none.
pub const DEFAULT_TARGETS: [&str; 2] = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"];

/// The registry's tunables.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Tokens, and the names each may push and pull.
    pub tokens: Tokens,
    /// Whether anyone may read without a token. Off by default: then tags
    /// are readable only by tokens whose scopes cover their names, and
    /// manifests, blobs (source modules and snapshots, with their
    /// `--init-env` values) and build statuses only with a valid token, by
    /// digest.
    pub public_reads: bool,
    /// Largest module accepted; larger gets 413.
    pub max_module_bytes: usize,
    /// Time a whole upload has to arrive; slower gets 408.
    pub body_timeout: Duration,
    /// Uploads read at once; more get 503 with `Retry-After` before their
    /// bodies are buffered. With the queue, this bounds the memory modules
    /// take: `(max_uploads + queue_capacity + workers) × max_module_bytes`.
    pub max_uploads: usize,
    /// Builds that may wait for a worker; more get 503 with `Retry-After`.
    pub queue_capacity: usize,
    /// Builds run at once by this process.
    pub workers: usize,
    /// How long a build's lease lasts without renewal. A build whose lease
    /// lapses is reported failed (its process died) and may be resubmitted.
    pub lease_ttl: Duration,
    /// Init limits for every build.
    pub snapshot: SnapshotOptions,
    /// Bytes each token may store through builds (soft; see
    /// `docs/deployment.md`); a token at its quota gets 507. `None`: no
    /// quota.
    pub tenant_quota: Option<u64>,
}

impl ServiceConfig {
    /// The defaults, with `tokens` allowed to push.
    pub fn new(tokens: Tokens) -> Self {
        Self {
            tokens,
            public_reads: false,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_uploads: DEFAULT_MAX_UPLOADS,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            workers: DEFAULT_WORKERS,
            lease_ttl: DEFAULT_LEASE_TTL,
            snapshot: SnapshotOptions::default(),
            tenant_quota: Some(DEFAULT_TENANT_QUOTA),
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No token is configured.
    #[error("no token configured")]
    NoTokens,
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
}

/// Shared by every handler.
struct Shared {
    builder: Builder,
    key: RegistryKey,
    config: ServiceConfig,
    builds: builds::Builds,
    metrics: metrics::Metrics,
    default_targets: Vec<&'static TargetProfile>,
    /// One permit per upload being read.
    uploads: Arc<tokio::sync::Semaphore>,
    /// Held while a tag's current release is read and replaced, so two
    /// moves in this process never take the same sequence number.
    tag_moves: tokio::sync::Mutex<()>,
    /// Counts this process's tag moves, to wake tag watches at once.
    tag_moves_seen: tokio::sync::watch::Sender<u64>,
}

/// A running registry service. Cheap to clone.
#[derive(Clone)]
pub struct Service(Arc<Shared>);

impl Service {
    /// Starts the build workers. Must be called inside a Tokio runtime.
    pub fn start(
        builder: Builder,
        key: RegistryKey,
        config: ServiceConfig,
    ) -> Result<Self, ServiceError> {
        if config.tokens.is_empty() {
            return Err(ServiceError::NoTokens);
        }
        if config.workers == 0 || config.queue_capacity == 0 || config.max_uploads == 0 {
            return Err(ServiceError::Config(
                "workers, queue capacity and uploads must each be at least 1".into(),
            ));
        }
        let default_targets = DEFAULT_TARGETS
            .iter()
            .map(|name| TargetProfile::by_name(name).expect("default targets exist"))
            .collect();
        let (builds, jobs) = builds::Builds::new(config.queue_capacity);
        let uploads = Arc::new(tokio::sync::Semaphore::new(config.max_uploads));
        let service = Self(Arc::new(Shared {
            builder,
            key,
            config,
            builds,
            metrics: metrics::Metrics::default(),
            default_targets,
            uploads,
            tag_moves: tokio::sync::Mutex::new(()),
            tag_moves_seen: tokio::sync::watch::Sender::new(0),
        }));
        builds::spawn_workers(&service, jobs);
        Ok(service)
    }

    /// Signs the tags an older thaw wrote (bare digests with no release
    /// history, naming manifests this registry signed; anything else
    /// unsigned is logged and left alone). An operator's step, once after
    /// an upgrade; returns how many were signed.
    pub async fn sign_legacy_tags(&self) -> Result<usize, StoreError> {
        tags::sign_legacy_tags(&self.0).await
    }

    /// The HTTP routes.
    pub fn router(&self) -> axum::Router {
        let reads = axum::Router::new()
            .route("/v1/tags", get(read::list_tags))
            .route("/v1/tags/{*reference}", get(read::get_tag))
            .route("/v1/history/{*reference}", get(read::tag_history))
            .route("/v1/manifests/{digest}", get(read::get_manifest))
            .route(
                "/v1/blobs/{digest}",
                get(read::get_blob).head(read::head_blob),
            )
            .route("/v1/builds/{id}", get(builds::status))
            .route("/v1/builds/{id}/events", get(builds::events))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                require_pull_token,
            ));
        let pushes = axum::Router::new()
            .route("/v1/builds", post(builds::submit))
            .route("/v1/tags/{*reference}", axum::routing::put(tags::move_tag))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                require_push_token,
            ));
        axum::Router::new()
            .merge(reads)
            .merge(pushes)
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(metrics_text))
            .route("/openapi.json", get(openapi::serve))
            .layer(thaw_http::access_log())
            .with_state(self.clone())
    }
}

async fn metrics_text(State(service): State<Service>) -> Response {
    service.0.metrics.response()
}

/// Who may read, as the read handlers see it (a request extension).
#[derive(Clone, Debug)]
pub(crate) enum Reader {
    /// Anyone (`--public-reads`).
    Anyone,
    /// The holder of this token.
    Token(Caller),
}

impl Reader {
    /// Whether tags of `name` are visible to this reader.
    fn may_pull(&self, name: &str) -> bool {
        match self {
            Reader::Anyone => true,
            Reader::Token(caller) => caller.may_pull(name),
        }
    }

    /// The 403 for a name outside the reader's scopes.
    fn refuse(&self, name: &str) -> ApiError {
        let scopes = match self {
            Reader::Anyone => String::new(),
            Reader::Token(caller) => caller.scopes(),
        };
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this token may read only {scopes}, not {name}"),
        )
    }
}

async fn require_push_token(
    State(service): State<Service>,
    mut request: Request,
    next: Next,
) -> Response {
    match authorize(&service, request.headers()) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refused) => refuse(&service, request, refused).await,
    }
}

async fn require_pull_token(
    State(service): State<Service>,
    mut request: Request,
    next: Next,
) -> Response {
    let reader = match authorize(&service, request.headers()) {
        Ok(caller) => Reader::Token(caller),
        Err(_) if service.0.config.public_reads => Reader::Anyone,
        Err(refused) => return refuse(&service, request, refused).await,
    };
    request.extensions_mut().insert(reader);
    next.run(request).await
}

fn authorize(service: &Service, headers: &axum::http::HeaderMap) -> Result<Caller, &'static str> {
    match auth::check(headers, &service.0.config.tokens) {
        auth::Credentials::Valid(caller) => Ok(caller),
        auth::Credentials::Missing => {
            Err("a bearer token is required (Authorization: Bearer <token>)")
        }
        auth::Credentials::Invalid => Err("the bearer token is not valid"),
    }
}

async fn refuse(service: &Service, request: Request, message: &'static str) -> Response {
    discard_body(request.into_body(), service.0.config.max_module_bytes).await;
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// How long a refused upload is read and thrown away before the answer.
const DISCARD_TIME: Duration = Duration::from_secs(10);

/// Drops the body of a refused upload (see [`thaw_http::discard_body`]).
async fn discard_body(body: axum::body::Body, max: usize) {
    thaw_http::discard_body(body, max, DISCARD_TIME).await;
}

/// An error answer: a status and a JSON [`ErrorBody`].
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::Backend(_) => {
                Self::unavailable(format!("the store failed: {}", chain(&e)), 5)
            }
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, chain(&e)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), error = %self.message, "request failed");
        }
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
