//! The build API: submissions, the bounded queue, build records and leases
//! in the store, status, and live progress as Server-Sent Events.
//!
//! A build's id is its build key, so identical submissions share one build:
//! in one process through the table of live builds, and across processes
//! through a lease object created with `PutMode::Create` (on stores that
//! honour conditional create; see `docs/deployment.md`). The holder renews
//! its lease while it builds; a build whose lease has lapsed without a final
//! record is reported failed, so a crashed process never leaves a build
//! "running" forever.

use std::collections::HashMap;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::FutureExt;
use futures::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use thaw_builder::{BuildError, BuildEvent, BuildRequest, PendingBuild};
use thaw_core::api::{BuildResponse, BuildState, BuildStatus, StepStatus};
use thaw_core::error::chain;
use thaw_core::settings::parse_key_value;
use thaw_core::{Digest, TagRef, TargetProfile};
use thaw_store::{RecordKind, StoreError};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::tags::{TagMove, check_push_scope, now_ms, publish, signed_by_us};
use crate::{ApiError, Caller, Service, Shared};

/// A build's status, for readers in any registry process.
pub(crate) const BUILD_RECORDS: RecordKind = RecordKind::new("builds");
/// Which registry process holds a build.
pub(crate) const LEASES: RecordKind = RecordKind::new("leases");

/// How often a follower re-reads a build record another process writes.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A build this process is running or following.
struct LiveBuild {
    status: watch::Sender<BuildStatus>,
    /// Tags to point at the result: every identical submission's.
    tags: Mutex<Vec<TagMove>>,
}

impl LiveBuild {
    /// Changes the status (and its time) for every watcher; returns it.
    fn update(&self, change: impl FnOnce(&mut BuildStatus)) -> BuildStatus {
        self.status.send_modify(|status| {
            change(status);
            status.updated_at = now_ms() / 1000;
        });
        self.status.borrow().clone()
    }
}

struct Job {
    build: PendingBuild,
    live: Arc<LiveBuild>,
    /// The tenant whose quota the build's storage counts against.
    tenant: String,
}

/// The live builds of this process and its queue.
pub(super) struct Builds {
    live: Mutex<HashMap<Digest, Arc<LiveBuild>>>,
    queue: mpsc::Sender<Job>,
    /// Names this process in leases.
    instance: String,
}

pub(super) struct Jobs(mpsc::Receiver<Job>);

impl Builds {
    pub(super) fn new(capacity: usize) -> (Self, Jobs) {
        let (queue, jobs) = mpsc::channel(capacity);
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).expect("the operating system has a random source");
        let instance = format!("{}-{}", std::process::id(), hex::encode(nonce));
        let builds = Self {
            live: Mutex::default(),
            queue,
            instance,
        };
        (builds, Jobs(jobs))
    }

    fn get(&self, id: &Digest) -> Option<Arc<LiveBuild>> {
        self.live.lock().unwrap().get(id).cloned()
    }

    fn remove(&self, id: &Digest) {
        self.live.lock().unwrap().remove(id);
    }
}

/// The lease object: who builds, and until when unless renewed.
#[derive(Serialize, Deserialize)]
struct Lease {
    owner: String,
    expires_at_ms: u64,
}

fn status_url(id: &Digest) -> String {
    format!("/v1/builds/{id}")
}

fn response(
    status: StatusCode,
    build: BuildStatus,
    manifest: Option<thaw_core::Manifest>,
) -> Response {
    let body = BuildResponse {
        status_url: status_url(&build.id),
        events_url: format!("{}/events", status_url(&build.id)),
        build,
        manifest,
    };
    let location = body.status_url.clone();
    (status, [(LOCATION, location)], axum::Json(body)).into_response()
}

/// What a submission asks for, from its query string.
struct Submission {
    tag: Option<TagRef>,
    targets: Vec<&'static TargetProfile>,
    init_env: Vec<(String, String)>,
    keep_names: bool,
}

impl Submission {
    fn parse(query: Option<&str>, defaults: &[&'static TargetProfile]) -> Result<Self, ApiError> {
        let (mut name, mut tag, mut targets, mut init_env) = (None, None, Vec::new(), Vec::new());
        let mut keep_names = false;
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "name" => name = Some(value.into_owned()),
                "tag" => tag = Some(value.into_owned()),
                "targets" => {
                    for target in value.split(',').filter(|t| !t.is_empty()) {
                        targets.push(
                            TargetProfile::by_name(target)
                                .map_err(|e| ApiError::bad_request(e.to_string()))?,
                        );
                    }
                }
                "init_env" => init_env.push(
                    parse_key_value(&value)
                        .map_err(|e| ApiError::bad_request(format!("init_env: {e}")))?,
                ),
                "keep_names" => {
                    keep_names = value.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "keep_names must be true or false, not {value:?}"
                        ))
                    })?
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown parameter {other:?} (expected name, tag, targets, init_env, \
                         keep_names)"
                    )));
                }
            }
        }
        let tag = match (name, tag) {
            (Some(name), tag) => Some(
                TagRef::new(&name, tag.as_deref().unwrap_or(thaw_core::DEFAULT_TAG))
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
            (None, Some(_)) => return Err(ApiError::bad_request("tag given without name")),
            (None, None) => None,
        };
        if targets.is_empty() {
            targets = defaults.to_vec();
        }
        Ok(Self {
            tag,
            targets,
            init_env,
            keep_names,
        })
    }
}

fn check_submission(
    headers: &HeaderMap,
    query: Option<&str>,
    defaults: &[&'static TargetProfile],
) -> Result<Submission, ApiError> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if content_type != Some("application/wasm") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/wasm, not {content_type:?}"),
        ));
    }
    Submission::parse(query, defaults)
}

/// Reads the module, refusing more than `max` bytes with 413 and an upload
/// slower than `within` with 408.
async fn read_module(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    within: Duration,
) -> Result<Bytes, ApiError> {
    match thaw_http::read_body(headers, body, max, within).await {
        Ok(bytes) if bytes.is_empty() => Err(ApiError::bad_request("the request body is empty")),
        Ok(bytes) => Ok(bytes),
        Err(thaw_http::BodyError::TooLarge { .. }) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the module is larger than the {max}-byte limit"),
        )),
        Err(e @ thaw_http::BodyError::TimedOut(_)) => {
            Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, e.to_string()))
        }
        Err(e) => Err(ApiError::bad_request(chain(&e))),
    }
}

/// Submit a module to build.
#[utoipa::path(post, path = "/v1/builds", tag = "build",
    params(
        ("name" = Option<String>, Query, description = "Function name to tag the result with"),
        ("tag" = Option<String>, Query, description = "Tag (default `latest`); needs `name`"),
        ("targets" = Option<String>, Query, description = "Comma-separated target profiles (default `x86_64-unknown-linux-gnu,aarch64-unknown-linux-gnu`)"),
        ("init_env" = Option<String>, Query, description = "`KEY=VALUE` visible to init; repeatable. Baked into the snapshot"),
        ("keep_names" = Option<bool>, Query, description = "`true` keeps the module's function names in the artifacts, for traps and native profilers (default `false`: names cost every cold load about 90 µs; the snapshot keeps them)")),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "A wasip1 core module (Go `GOOS=wasip1`)"),
    responses(
        (status = 200, description = "Already built (cache hit): the manifest is included", body = BuildResponse),
        (status = 202, description = "Accepted; follow `status_url` or `events_url`", body = BuildResponse),
        (status = 400, description = "Not a module thaw can build (the precise reason), or bad parameters", body = thaw_core::api::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = thaw_core::api::ErrorBody),
        (status = 408, description = "The upload did not arrive within the body timeout", body = thaw_core::api::ErrorBody),
        (status = 413, description = "Larger than the module size limit", body = thaw_core::api::ErrorBody),
        (status = 415, description = "Content-Type is not application/wasm", body = thaw_core::api::ErrorBody),
        (status = 503, description = "The build queue is full, too many uploads are being read, or the store is down; see `Retry-After`", body = thaw_core::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn submit(
    State(service): State<Service>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let shared = &service.0;
    let checked = check_submission(&headers, query.as_deref(), &shared.default_targets).and_then(
        |submission| match &submission.tag {
            Some(tag) => check_push_scope(&caller, tag).map(|()| submission),
            None => Ok(submission),
        },
    );
    let submission = match checked {
        Ok(submission) => submission,
        Err(e) => {
            crate::discard_body(body, shared.config.max_module_bytes).await;
            return Err(e);
        }
    };
    if let Err(e) = crate::quota::admit(shared, &caller).await {
        crate::discard_body(body, shared.config.max_module_bytes).await;
        shared.metrics.build("rejected");
        return Err(e);
    }
    let config = &shared.config;
    // Admission before buffering: a module is held in memory from here
    // until this submission is answered (queued, joined or refused).
    let Ok(_upload) = shared.uploads.clone().try_acquire_owned() else {
        crate::discard_body(body, config.max_module_bytes).await;
        shared.metrics.build("rejected");
        return Err(ApiError::unavailable(
            format!(
                "{} uploads are being read already; retry later",
                config.max_uploads
            ),
            5,
        ));
    };
    let wasm = read_module(&headers, body, config.max_module_bytes, config.body_timeout).await?;

    let mut snapshot = shared.config.snapshot.clone();
    snapshot.env = submission.init_env;
    let request = BuildRequest {
        targets: submission.targets,
        snapshot,
        tag: None,
        keep_names: submission.keep_names,
    };
    // Hashing a large module takes a while: not on an async worker.
    let prepared = {
        let service = service.clone();
        tokio::task::spawn_blocking(move || service.0.builder.prepare(wasm, &request))
            .await
            .expect("hashing does not panic")
    };
    let inspected = match prepared {
        Ok(build) => shared.builder.inspect(build).await,
        Err(e) => Err(e),
    };
    let build = match inspected {
        Ok(build) => build,
        Err(e @ BuildError::Panicked { .. }) => {
            shared.metrics.build("failed");
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, chain(&e)));
        }
        Err(e) => {
            shared.metrics.build("rejected");
            return Err(ApiError::bad_request(chain(&e)));
        }
    };
    let id = *build.key();
    let moves: Vec<TagMove> = submission
        .tag
        .iter()
        .map(|tag| TagMove::now(tag.clone(), &caller))
        .collect();
    let now = now_ms() / 1000;
    let initial = BuildStatus {
        id,
        reference: submission.tag.as_ref().map(ToString::to_string),
        targets: build.targets().iter().map(|t| t.name.to_string()).collect(),
        state: BuildState::Queued,
        steps: Vec::new(),
        submitted_at: now,
        updated_at: now,
    };

    // Join an identical build already live here, or claim the id.
    let live = {
        let mut live = shared.builds.live.lock().unwrap();
        if let Some(existing) = live.get(&id) {
            existing.tags.lock().unwrap().extend(moves);
            let status = existing.status.borrow().clone();
            return Ok(response(StatusCode::ACCEPTED, status, None));
        }
        let claimed = Arc::new(LiveBuild {
            status: watch::channel(initial.clone()).0,
            tags: Mutex::new(moves),
        });
        live.insert(id, claimed.clone());
        claimed
    };
    let release = |e: StoreError| {
        shared.builds.remove(&id);
        ApiError::from(e)
    };

    let store = shared.builder.store();
    if let Some((manifest_digest, manifest)) =
        shared.builder.cached(&build).await.map_err(release)?
    {
        // Built by someone else into this store (`thaw build`, or a
        // registry with another key) is built again rather than signed.
        if signed_by_us(shared, &manifest_digest)
            .await
            .map_err(release)?
        {
            let tags = live.tags.lock().unwrap().clone();
            let published = publish(shared, &manifest_digest, &tags, false).await;
            shared.builds.remove(&id);
            let lost = published.map_err(ApiError::from)?;
            if !lost.is_empty() {
                return Err(ApiError::new(StatusCode::CONFLICT, not_moved(&lost)));
            }
            shared.metrics.build("cache_hit");
            let status = BuildStatus {
                state: BuildState::Succeeded {
                    manifest: manifest_digest,
                    cache_hit: true,
                },
                ..initial
            };
            live.status.send_replace(status.clone());
            return Ok(response(StatusCode::OK, status, Some(manifest)));
        }
    }

    if !acquire_lease(shared, &id).await.map_err(release)? {
        // Another process builds it: follow its record, and tag the result.
        let status = stored_status(shared, &id)
            .await
            .map_err(release)?
            .unwrap_or(initial);
        live.status.send_replace(status.clone());
        tokio::spawn(follow_remote(service.clone(), id, live));
        return Ok(response(StatusCode::ACCEPTED, status, None));
    }

    let job = Job {
        build,
        live: live.clone(),
        tenant: caller.identity().to_string(),
    };
    match shared.builds.queue.try_send(job) {
        Ok(()) => {
            shared.metrics.queue_depth.inc();
            write_record(shared, &initial).await;
            tracing::info!(build = %id, reference = ?initial.reference, "build queued");
            Ok(response(StatusCode::ACCEPTED, initial, None))
        }
        Err(_) => {
            shared.builds.remove(&id);
            let _ = store.delete_record(LEASES, &id).await;
            shared.metrics.build("rejected");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the build queue is full ({} waiting); retry later",
                    shared.config.queue_capacity
                ),
            )
            .retry_after(10))
        }
    }
}

impl ApiError {
    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

/// Why the tags in `lost` were not moved, in one message.
fn not_moved(lost: &[thaw_core::release::ReleaseError]) -> String {
    let reasons: Vec<String> = lost.iter().map(ToString::to_string).collect();
    reasons.join("; ")
}

/// Takes the build's lease: `Ok(false)` if a live process holds it.
async fn acquire_lease(shared: &Shared, id: &Digest) -> Result<bool, StoreError> {
    let store = shared.builder.store();
    let lease = lease_bytes(shared);
    if store.create_record(LEASES, id, lease.clone()).await? {
        return Ok(true);
    }
    if lease_is_live(shared, id).await? {
        return Ok(false);
    }
    // The holder died: clear its lease and race for a new one.
    store.delete_record(LEASES, id).await?;
    store.create_record(LEASES, id, lease).await
}

fn lease_bytes(shared: &Shared) -> Bytes {
    let lease = Lease {
        owner: shared.builds.instance.clone(),
        expires_at_ms: now_ms() + shared.config.lease_ttl.as_millis() as u64,
    };
    serde_json::to_vec(&lease).expect("leases serialize").into()
}

async fn lease_is_live(shared: &Shared, id: &Digest) -> Result<bool, StoreError> {
    let bytes = shared.builder.store().get_record(LEASES, id).await?;
    Ok(bytes
        .and_then(|b| serde_json::from_slice::<Lease>(&b).ok())
        .is_some_and(|lease| lease.expires_at_ms > now_ms()))
}

/// Writes the build record. A failure is logged, not fatal: the record is
/// for status readers, and the build itself reports store failures.
async fn write_record(shared: &Shared, status: &BuildStatus) {
    let bytes = serde_json::to_vec(status).expect("statuses serialize");
    if let Err(e) = shared
        .builder
        .store()
        .put_record(BUILD_RECORDS, &status.id, bytes.into())
        .await
    {
        tracing::warn!(build = %status.id, error = %chain(&e), "could not write the build record");
    }
}

/// A build's status from its record in the store. A record that is not
/// final while no live lease backs it belongs to a process that died.
async fn stored_status(shared: &Shared, id: &Digest) -> Result<Option<BuildStatus>, StoreError> {
    let Some(bytes) = shared.builder.store().get_record(BUILD_RECORDS, id).await? else {
        return Ok(None);
    };
    let mut status: BuildStatus =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            what: format!("build record {id}"),
            reason: e.to_string(),
        })?;
    if !status.state.is_terminal() && !lease_is_live(shared, id).await? {
        status.state = BuildState::Failed {
            error: "abandoned: the registry process running this build stopped before it \
                    finished; submit the module again to rebuild"
                .into(),
        };
    }
    Ok(Some(status))
}

/// Follows a build another process holds, then points this submission's
/// tags at its result.
async fn follow_remote(service: Service, id: Digest, live: Arc<LiveBuild>) {
    let shared = &service.0;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let status = match stored_status(shared, &id).await {
            Ok(Some(status)) => status,
            // No record yet: fine while the holder's lease lives.
            Ok(None) if lease_is_live(shared, &id).await.unwrap_or(true) => continue,
            Ok(None) => {
                let mut abandoned = live.status.borrow().clone();
                abandoned.state = BuildState::Failed {
                    error: "abandoned: the registry process holding this build stopped before \
                            recording it; submit the module again to rebuild"
                        .into(),
                };
                live.status.send_replace(abandoned);
                break;
            }
            Err(e) => {
                tracing::warn!(build = %id, error = %chain(&e), "following a remote build");
                continue;
            }
        };
        let terminal = status.state.clone();
        live.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
        match terminal {
            BuildState::Succeeded { manifest, .. } => {
                let tags = live.tags.lock().unwrap().clone();
                // `publish` logs the moves a later push won.
                if let Err(e) = publish(shared, &manifest, &tags, false).await {
                    tracing::warn!(build = %id, error = %chain(&e), "tagging a remote build's result");
                }
                break;
            }
            BuildState::Failed { .. } => break,
            _ => {}
        }
    }
    shared.builds.remove(&id);
}

pub(super) fn spawn_workers(service: &Service, jobs: Jobs) {
    let jobs = Arc::new(tokio::sync::Mutex::new(jobs.0));
    for _ in 0..service.0.config.workers {
        let service = service.clone();
        let jobs = jobs.clone();
        tokio::spawn(async move {
            loop {
                let Some(job) = jobs.lock().await.recv().await else {
                    return;
                };
                service.0.metrics.queue_depth.dec();
                let id = job.live.status.borrow().id;
                run_job(&service, job)
                    .instrument(tracing::info_span!("build", id = %id.short()))
                    .await;
            }
        });
    }
}

/// Stops a task when dropped, unwinding included.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one queued build to its end. Whatever happens inside, a panic
/// included, the build gets a final record, its lease is released and its
/// live entry cleared, so the worker goes on with the next job.
async fn run_job(service: &Service, job: Job) {
    let shared = &service.0;
    let live = job.live;
    let id = live.status.borrow().id;
    write_record(shared, &live.update(|s| s.state = BuildState::Running)).await;
    tracing::info!("build started");

    let renewal = AbortOnDrop({
        let service = service.clone();
        tokio::spawn(async move {
            let shared = &service.0;
            loop {
                tokio::time::sleep(shared.config.lease_ttl / 3).await;
                let lease = lease_bytes(shared);
                if let Err(e) = shared.builder.store().put_record(LEASES, &id, lease).await {
                    tracing::warn!(error = %chain(&e), "could not renew the build lease");
                }
            }
        })
    });
    let built = AssertUnwindSafe(build_and_publish(shared, job.build, &job.tenant, &live))
        .catch_unwind()
        .await;
    drop(renewal);
    let state = built.unwrap_or_else(|_| BuildState::Failed {
        error: "the registry crashed while running this build; this is a bug in thaw, please \
                report it"
            .into(),
    });
    match &state {
        BuildState::Succeeded { manifest, .. } => {
            shared.metrics.build("succeeded");
            tracing::info!(%manifest, "build succeeded");
        }
        BuildState::Failed { error } => {
            shared.metrics.build("failed");
            tracing::warn!(%error, "build failed");
        }
        _ => {}
    }
    let last = live.update(|s| s.state = state);
    write_record(shared, &last).await;
    if let Err(e) = shared.builder.store().delete_record(LEASES, &id).await {
        tracing::warn!(error = %chain(&e), "could not release the build lease");
    }
    shared.builds.remove(&id);
}

/// Builds, reporting every step to the live status and the build record,
/// then signs the result and moves the tags: the build's final state.
async fn build_and_publish(
    shared: &Shared,
    build: PendingBuild,
    tenant: &str,
    live: &LiveBuild,
) -> BuildState {
    let (events, mut received) = mpsc::unbounded_channel();
    let build = shared.builder.run(build, move |event| {
        let _ = events.send(event);
    });
    tokio::pin!(build);
    let apply = |event: BuildEvent| match event {
        BuildEvent::Started(step) => live.update(|s| {
            s.steps.push(StepStatus {
                step: step.to_string(),
                millis: None,
            })
        }),
        BuildEvent::Finished(step, elapsed) => {
            let name = step.to_string();
            shared
                .metrics
                .step_seconds
                .get_or_create(&crate::metrics::StepLabels { step: step.kind() })
                .observe(elapsed.as_secs_f64());
            live.update(|s| {
                if let Some(entry) = s.steps.iter_mut().rev().find(|e| e.step == name) {
                    entry.millis = Some(elapsed.as_millis() as u64);
                }
            })
        }
        BuildEvent::CacheHit(_) => live.status.borrow().clone(),
    };
    let result = loop {
        tokio::select! {
            result = &mut build => break result,
            Some(event) = received.recv() => {
                let status = apply(event);
                write_record(shared, &status).await;
            }
        }
    };
    while let Ok(event) = received.try_recv() {
        apply(event);
    }
    match result {
        Ok(outcome) => {
            if !outcome.cache_hit {
                crate::quota::charge(shared, tenant, &outcome.manifest).await;
            }
            let tags = live.tags.lock().unwrap().clone();
            match publish(shared, &outcome.manifest_digest, &tags, true).await {
                Ok(lost) if lost.is_empty() => BuildState::Succeeded {
                    manifest: outcome.manifest_digest,
                    cache_hit: outcome.cache_hit,
                },
                Ok(lost) => BuildState::Failed {
                    error: format!(
                        "built {}, but {}",
                        outcome.manifest_digest,
                        not_moved(&lost)
                    ),
                },
                Err(e) => BuildState::Failed {
                    error: format!("publishing the build: {}", chain(&e)),
                },
            }
        }
        Err(e) => BuildState::Failed { error: chain(&e) },
    }
}

/// A build's status.
#[utoipa::path(get, path = "/v1/builds/{id}", tag = "build",
    params(("id" = String, Path, description = "The build id (`sha256:<hex>`)")),
    responses(
        (status = 200, description = "The build's status", body = BuildStatus),
        (status = 404, description = "No such build", body = thaw_core::api::ErrorBody)))]
pub async fn status(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let status = current_status(&service.0, &id).await?;
    Ok(axum::Json(status).into_response())
}

fn parse_id(text: &str) -> Result<Digest, ApiError> {
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("{text:?} is not a build id: {e}")))
}

async fn current_status(shared: &Shared, id: &Digest) -> Result<BuildStatus, ApiError> {
    if let Some(live) = shared.builds.get(id) {
        return Ok(live.status.borrow().clone());
    }
    stored_status(shared, id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("build {id} not found")))
}

/// A build's progress, live.
#[utoipa::path(get, path = "/v1/builds/{id}/events", tag = "build",
    params(("id" = String, Path, description = "The build id")),
    responses(
        (status = 200, description = "Server-Sent Events: a `status` event (a BuildStatus as JSON) now and at every change, ending after the final one", content_type = "text/event-stream"),
        (status = 404, description = "No such build", body = thaw_core::api::ErrorBody)))]
pub async fn events(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let statuses: BoxStream<'static, BuildStatus> = match service.0.builds.get(&id) {
        Some(live) => tokio_stream::wrappers::WatchStream::new(live.status.subscribe()).boxed(),
        None => {
            let first = current_status(&service.0, &id).await?;
            let service = service.clone();
            stream::unfold(Some(first), move |last| {
                let service = service.clone();
                async move {
                    let last = last?;
                    if last.state.is_terminal() {
                        return Some((last, None));
                    }
                    tokio::time::sleep(POLL_INTERVAL).await;
                    let next = current_status(&service.0, &id).await.ok()?;
                    Some((last, Some(next)))
                }
            })
            .boxed()
        }
    };
    let until_final = statuses
        .scan(false, |ended, status| {
            let emit = (!*ended).then(|| {
                *ended = status.state.is_terminal();
                status
            });
            futures::future::ready(emit)
        })
        .map(|status| {
            Ok::<_, Infallible>(
                Event::default()
                    .event("status")
                    .json_data(&status)
                    .expect("statuses serialize"),
            )
        })
        .boxed();
    Ok(Sse::new(until_final)
        .keep_alive(KeepAlive::default())
        .into_response())
}
