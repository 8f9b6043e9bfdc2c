//! The registry service over real loopback HTTP: push → build → pull → run,
//! signatures, tokens, bad input, deduplication across processes, the
//! bounded queue, interrupted downloads and registry outages.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use thaw_builder::Builder;
use thaw_builder::thaw_compiler::Compiler;
use thaw_client::{ClientError, PushRequest, RegistryClient};
use thaw_core::api::{BuildResponse, BuildState, BuildStatus};
use thaw_core::signing::{RegistryKey, TrustedKeys};
use thaw_core::{Reference, TargetProfile};
use thaw_gobuild::BuildMode;
use thaw_registry::{Service, ServiceConfig, Tokens};
use thaw_runner::{RunError, Runner, RunnerConfig};
use thaw_store::ArtifactStore;
use thaw_tests::{Response, build_go, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const TOKEN: &str = "test-push-token";

struct Registry {
    base: String,
    service: Service,
    key: thaw_core::signing::PublicKey,
    store: ArtifactStore,
    stop: Option<oneshot::Sender<()>>,
}

impl Registry {
    async fn start(store: ArtifactStore, configure: impl FnOnce(&mut ServiceConfig)) -> Registry {
        Self::start_with_key(store, RegistryKey::generate(), configure).await
    }

    async fn start_with_key(
        store: ArtifactStore,
        key: RegistryKey,
        configure: impl FnOnce(&mut ServiceConfig),
    ) -> Registry {
        let builder = Builder::new(store.clone(), Compiler::new()).unwrap();
        let public = key.public();
        let mut config = ServiceConfig::new(Tokens::parse(TOKEN).unwrap());
        configure(&mut config);
        let service = Service::start(builder, key, config).unwrap();
        let router = service.router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = thaw_http::ConnectionLimits::default();
        tokio::spawn(thaw_http::serve(listener, router, limits, async {
            let _ = stopped.await;
        }));
        Registry {
            base: format!("http://{address}"),
            service,
            key: public,
            store,
            stop: Some(stop),
        }
    }

    fn client(&self) -> RegistryClient {
        RegistryClient::new(&self.base, TrustedKeys::new(vec![self.key]))
            .unwrap()
            .with_token(Some(TOKEN.into()))
    }

    /// A GET with the token, as an edge host or a tenant sends it.
    async fn get(&self, path: &str) -> reqwest::Response {
        authorized()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    fn stop(&mut self) {
        self.stop.take();
    }
}

/// An HTTP client that sends [`TOKEN`] with every request.
fn authorized() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

fn host_only(reference: &str) -> PushRequest {
    PushRequest {
        reference: Some(reference.parse().unwrap()),
        targets: vec![TargetProfile::host().unwrap().name.to_string()],
        init_env: Vec::new(),
        keep_names: false,
    }
}

fn hello() -> Bytes {
    build_go("examples/hello", BuildMode::Auto).into()
}

async fn post_module(
    base: &str,
    query: &str,
    token: Option<&str>,
    content_type: &str,
    body: Bytes,
) -> reqwest::Response {
    let mut post = reqwest::Client::new()
        .post(format!("{base}/v1/builds?{query}"))
        .header("content-type", content_type)
        .body(body);
    if let Some(token) = token {
        post = post.bearer_auth(token);
    }
    post.send().await.unwrap()
}

async fn error_of(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["error"].as_str().unwrap().to_string()
}

fn runner(cache: &std::path::Path) -> Runner {
    Runner::new(RunnerConfig::new(cache)).unwrap()
}

async fn get_root(function: &thaw_runner::Function) -> Response {
    let output = function.call(request("GET", "/", b""), &[]).await.unwrap();
    Response::parse(&output.stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn push_pull_and_run_with_signed_manifests_and_a_cache_hit() {
    let registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |_| {}).await;
    let client = registry.client();

    let seen = Arc::new(Mutex::new(Vec::<BuildStatus>::new()));
    let record = seen.clone();
    let status = client
        .push(hello(), &host_only("hello:v1"), move |s| {
            record.lock().unwrap().push(s.clone())
        })
        .await
        .unwrap();
    let BuildState::Succeeded {
        manifest,
        cache_hit,
    } = status.state
    else {
        panic!("{status:?}");
    };
    assert!(!cache_hit);
    let steps: Vec<String> = status.steps.iter().map(|s| s.step.clone()).collect();
    assert_eq!(
        steps[..2],
        ["inspect".to_string(), "snapshot".to_string()],
        "{steps:?}"
    );
    assert!(status.steps.iter().all(|s| s.millis.is_some()), "{steps:?}");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|s| s.state == BuildState::Running),
        "live progress reported the running build: {seen:?}"
    );

    // The same module again: answered at once, with the manifest.
    let again = post_module(
        &registry.base,
        &format!(
            "name=hello&tag=v2&targets={}",
            TargetProfile::host().unwrap().name
        ),
        Some(TOKEN),
        "application/wasm",
        hello(),
    )
    .await;
    assert_eq!(again.status(), 200);
    let again: BuildResponse = again.json().await.unwrap();
    assert!(matches!(
        again.build.state,
        BuildState::Succeeded {
            cache_hit: true,
            ..
        }
    ));
    assert!(again.manifest.is_some());
    assert_eq!(
        client
            .tag(&"hello:v2".parse().unwrap())
            .await
            .unwrap()
            .0
            .manifest,
        manifest
    );

    // Pull and run through the runner, verifying the signature.
    let cache = tempfile::tempdir().unwrap();
    let hello_v1: Reference = "hello:v1".parse().unwrap();
    let function = runner(cache.path()).load(&client, &hello_v1).await.unwrap();
    assert_eq!(*function.manifest_digest(), manifest);
    let response = get_root(&function).await;
    assert_eq!(response.status, 200);
    assert!(response.text().contains("hello"), "{}", response.text());

    // Another registry's key is not trusted.
    let stranger = RegistryClient::new(
        &registry.base,
        TrustedKeys::new(vec![RegistryKey::generate().public()]),
    )
    .unwrap()
    .with_token(Some(TOKEN.into()));
    let refused = runner(tempfile::tempdir().unwrap().path())
        .load(&stranger, &hello_v1)
        .await
        .err()
        .unwrap();
    assert!(
        refused.to_string().contains("not a trusted key"),
        "{refused}"
    );

    // A build written straight to the store, not by the registry, is
    // unsigned and refused.
    let builder = Builder::new(registry.store.clone(), Compiler::new()).unwrap();
    let mut unsigned = thaw_builder::BuildRequest::new(vec![TargetProfile::host().unwrap()]);
    unsigned.tag = Some("sneaky:v1".parse().unwrap());
    builder
        .build(
            build_go("tests/fixtures/go/command", BuildMode::Auto).into(),
            &unsigned,
            |_| {},
        )
        .await
        .unwrap();
    let refused = client
        .resolve(&"sneaky:v1".parse().unwrap())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("is not signed"), "{refused}");
    // Pushing that module makes the registry build it itself rather than
    // sign the build it found in the store.
    let command = build_go("tests/fixtures/go/command", BuildMode::Auto);
    let rebuilt = client
        .push(command.into(), &host_only("mine:v1"), |_| {})
        .await
        .unwrap();
    assert!(
        matches!(
            rebuilt.state,
            BuildState::Succeeded {
                cache_hit: false,
                ..
            }
        ),
        "{rebuilt:?}"
    );
    client.resolve(&"mine:v1".parse().unwrap()).await.unwrap();

    let metrics = registry.metrics().await;
    for line in [
        "thaw_registry_builds_total{outcome=\"succeeded\"} 2",
        "thaw_registry_builds_total{outcome=\"cache_hit\"} 1",
        "thaw_registry_build_step_duration_seconds_count{step=\"snapshot\"} 1",
        "thaw_registry_build_queue_depth 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("thaw_registry_served_bytes_total{kind=\"blob\"}"));

    // HEAD answers for manifests and blobs, with the digest as ETag and
    // immutable caching.
    let http = authorized();
    let manifest_url = format!("{}/v1/manifests/{manifest}", registry.base);
    let head = http.head(&manifest_url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["etag"], format!("\"{manifest}\"").as_str());
    assert!(head.headers().contains_key("thaw-signature"));
    let blob = &function.manifest().artifacts[0].blob;
    let blob_url = format!("{}/v1/blobs/{}", registry.base, blob.digest);
    let head = http.head(&blob_url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        blob.compressed_size.to_string().as_str()
    );
    assert!(
        head.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let tail = http
        .get(&blob_url)
        .header("range", format!("bytes={}-", blob.compressed_size - 10))
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap().len(), 10);
    let past_end = http
        .get(&blob_url)
        .header("range", format!("bytes={}-", blob.compressed_size))
        .send()
        .await
        .unwrap();
    assert_eq!(past_end.status(), 416);

    let openapi: serde_json::Value = registry.get("/openapi.json").await.json().await.unwrap();
    assert!(openapi["paths"]["/v1/builds"]["post"].is_object());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_specific_errors_and_the_registry_keeps_serving() {
    let registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |_| {}).await;
    let base = &registry.base;
    let wasm = "application/wasm";
    let garbage = Bytes::from_static(b"\0asm but not really a module");

    let missing = post_module(base, "", None, wasm, garbage.clone()).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    // A whole module sent with a wrong token gets its 401, not a reset
    // connection (regression: the registry answered before reading it).
    let wrong = post_module(base, "", Some("guess"), wasm, hello()).await;
    assert_eq!(wrong.status(), 401);
    assert!(!error_of(wrong).await.contains("guess"));

    let text = post_module(base, "", Some(TOKEN), "text/plain", garbage.clone()).await;
    assert_eq!(text.status(), 415);
    let bad = post_module(base, "", Some(TOKEN), wasm, garbage.clone()).await;
    assert_eq!(bad.status(), 400);
    let message = error_of(bad).await;
    assert!(message.contains("WebAssembly"), "{message}");
    // An oversize upload is refused from its declared length, before the
    // registry reads (or buffers) any of it.
    let mut socket = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/builds HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/wasm\r\nContent-Length: {}\r\n\r\n",
        200 << 20
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = socket.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("limit"), "{answer}");
    let target = post_module(base, "targets=riscv64", Some(TOKEN), wasm, hello()).await;
    assert_eq!(target.status(), 400);
    assert!(error_of(target).await.contains("riscv64"));

    let tag = registry.get("/v1/tags/nope:v9").await;
    assert_eq!(tag.status(), 404);
    assert!(error_of(tag).await.contains("nope:v9"));
    let manifest = registry
        .get(&format!("/v1/manifests/{}", thaw_core::Digest::of(b"x")))
        .await;
    assert_eq!(manifest.status(), 404);
    assert_eq!(registry.get("/v1/blobs/sha256:zz").await.status(), 400);

    // A Go panic in init fails the build with the panic line.
    let failed = registry
        .client()
        .push(
            build_go("tests/fixtures/go/panic-init", BuildMode::Auto).into(),
            &host_only("boom:v1"),
            |_| {},
        )
        .await
        .unwrap_err();
    assert!(
        failed
            .to_string()
            .contains("panic: thaw-fixture: init exploded"),
        "{failed}"
    );

    // Nothing above disturbed the registry.
    assert_eq!(registry.get("/healthz").await.status(), 200);
    let tags = registry.get("/v1/tags").await;
    assert_eq!(tags.status(), 200);
    assert_eq!(tags.text().await.unwrap(), "[]");
    let metrics = registry.metrics().await;
    assert!(
        metrics.contains("thaw_registry_builds_total{outcome=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("thaw_registry_builds_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );

    // Reads need a token by default; with public reads, they do not.
    let anonymous = reqwest::get(format!("{base}/v1/tags")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let public = Registry::start(ArtifactStore::open("memory://").unwrap(), |config| {
        config.public_reads = true;
    })
    .await;
    let anonymous = reqwest::get(format!("{}/v1/tags", public.base))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 200);
    assert_eq!(public.get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_submissions_share_one_build_across_registry_processes() {
    // Two registries on one store with one key, as two processes of one
    // deployment on one bucket would be.
    let dir = tempfile::tempdir().unwrap();
    let store = || ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
    let key = RegistryKey::generate();
    let a = Registry::start_with_key(store(), key.clone(), |_| {}).await;
    let b = Registry::start_with_key(store(), key, |_| {}).await;
    let module = hello();
    let host = TargetProfile::host().unwrap().name;

    let first = post_module(
        &a.base,
        &format!("name=one&targets={host}"),
        Some(TOKEN),
        "application/wasm",
        module.clone(),
    )
    .await;
    assert_eq!(first.status(), 202);
    let first: BuildResponse = first.json().await.unwrap();
    let same_process = post_module(
        &a.base,
        &format!("name=two&targets={host}"),
        Some(TOKEN),
        "application/wasm",
        module.clone(),
    )
    .await;
    assert_eq!(same_process.status(), 202);
    let same_process: BuildResponse = same_process.json().await.unwrap();
    let other_process = post_module(
        &b.base,
        &format!("name=three&targets={host}"),
        Some(TOKEN),
        "application/wasm",
        module.clone(),
    )
    .await;
    assert_eq!(other_process.status(), 202);
    let other_process: BuildResponse = other_process.json().await.unwrap();
    assert_eq!(first.build.id, same_process.build.id);
    assert_eq!(first.build.id, other_process.build.id);

    // Wait for the result through the process that did not build.
    let status = loop {
        let status: BuildStatus = b.get(&other_process.status_url).await.json().await.unwrap();
        if status.state.is_terminal() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let BuildState::Succeeded { manifest, .. } = status.state else {
        panic!("{status:?}");
    };
    // Every submission's tag points at the one build, once B's follower
    // has caught up.
    for name in ["one", "two", "three"] {
        let tag = format!("{name}:latest").parse().unwrap();
        let mut found = None;
        for _ in 0..50 {
            found = a.store.get_tag(&tag).await.ok();
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(found, Some(manifest), "{name}");
    }
    let (a_metrics, b_metrics) = (a.metrics().await, b.metrics().await);
    assert!(
        a_metrics.contains("thaw_registry_builds_total{outcome=\"succeeded\"} 1"),
        "{a_metrics}"
    );
    assert!(
        !b_metrics.contains("outcome=\"succeeded\""),
        "B built nothing:\n{b_metrics}"
    );
    assert_eq!(
        store()
            .check_integrity(thaw_registry::RECORD_KINDS)
            .await
            .unwrap(),
        Vec::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_503_with_retry_after() {
    let registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |config| {
        config.queue_capacity = 1;
        config.workers = 1;
    })
    .await;
    let module = hello();
    let host = TargetProfile::host().unwrap().name;
    let mut statuses = Vec::new();
    // Different init environments make different builds of one module.
    for i in 0..4 {
        let response = post_module(
            &registry.base,
            &format!("targets={host}&init_env=RUN={i}"),
            Some(TOKEN),
            "application/wasm",
            module.clone(),
        )
        .await;
        let retry_after = response.headers().get("retry-after").cloned();
        statuses.push((response.status().as_u16(), retry_after));
    }
    let accepted = statuses.iter().filter(|(s, _)| *s == 202).count();
    let refused: Vec<_> = statuses.iter().filter(|(s, _)| *s == 503).collect();
    assert!((1..=2).contains(&accepted), "{statuses:?}");
    assert_eq!(accepted + refused.len(), 4, "{statuses:?}");
    assert!(
        refused.iter().all(|(_, retry)| retry.is_some()),
        "{statuses:?}"
    );
    assert_eq!(registry.get("/healthz").await.status(), 200);
}

/// Regression (slowloris): an upload whose body never came held its
/// connection, and the module buffer, forever.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_that_stalls_gets_408_at_its_deadline() {
    let registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |config| {
        config.body_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = stalled_upload(&registry).await;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("the stalled upload was never answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1s"), "{answer}");
    assert_eq!(registry.get("/healthz").await.status(), 200);
}

/// Serves `router` on a loopback port (a stand-in registry, an edge
/// runner); returns its base URL.
async fn serve_on_loopback(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let limits = thaw_http::ConnectionLimits::default();
    tokio::spawn(thaw_http::serve(
        listener,
        router,
        limits,
        std::future::pending(),
    ));
    base
}

/// Regression: the client read manifests, tags and error bodies whole,
/// whatever their size, and only a connect timeout applied. A hostile or
/// broken registry could make a runner buffer without bound or hang.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_refuses_oversized_answers_and_gives_up_on_a_silent_registry() {
    let digest = thaw_core::Digest::of(b"manifest");
    // A validly signed release, so the client goes on to the manifest.
    let key = RegistryKey::generate();
    let tag: thaw_core::TagRef = "a:b".parse().unwrap();
    let release = thaw_core::release::Release::first(&tag, digest, 0, None);
    let entry = thaw_core::api::TagEntry {
        reference: tag.to_string(),
        manifest: digest,
        sequence: 1,
        release: thaw_core::release::TagRecord::signed(&release, &key),
    };
    let huge = |size: usize| move || async move { vec![b' '; size] };
    let hostile = axum::Router::new()
        .route(
            "/v1/tags/{*reference}",
            axum::routing::get(move || async move { axum::Json(entry) }),
        )
        .route("/v1/manifests/{digest}", axum::routing::get(huge(8 << 20)))
        .route("/v1/tags", axum::routing::get(huge(32 << 20)));
    let base = serve_on_loopback(hostile).await;
    let client = RegistryClient::new(&base, TrustedKeys::new(vec![key.public()])).unwrap();
    let err = client.resolve(&"a:b".parse().unwrap()).await.unwrap_err();
    assert!(
        matches!(err, ClientError::TooLarge { limit, .. } if limit == thaw_client::MAX_MANIFEST_BYTES),
        "{err}"
    );
    let err = client.tags().await.unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");

    let silent = axum::Router::new().route(
        "/v1/tags/{*reference}",
        axum::routing::get(std::future::pending::<&'static str>),
    );
    let base = serve_on_loopback(silent).await;
    let client = RegistryClient::new(&base, TrustedKeys::new(vec![key.public()]))
        .unwrap()
        .with_timeouts(thaw_client::ClientTimeouts {
            read: Duration::from_millis(300),
            request: Duration::from_millis(500),
        })
        .unwrap();
    let started = std::time::Instant::now();
    let err = client.tag(&"a:b".parse().unwrap()).await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Regression: every authenticated upload was buffered (up to 128 MiB)
/// before any admission check, with no cap on how many at once.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_beyond_the_cap_get_503_before_their_bodies_are_buffered() {
    let registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |config| {
        config.max_uploads = 1;
        config.body_timeout = Duration::from_secs(2);
    })
    .await;
    // One upload that is slow to arrive holds the only upload slot.
    let mut slow = stalled_upload(&registry).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = post_module(&registry.base, "", Some(TOKEN), "application/wasm", hello()).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(error_of(refused).await.contains("uploads are being read"));
    // Once the slow one times out, its slot is free again.
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let admitted = post_module(
        &registry.base,
        "",
        Some(TOKEN),
        "application/wasm",
        Bytes::from_static(b"not wasm"),
    )
    .await;
    assert_eq!(admitted.status(), 400, "read and inspected");
}

/// Regression: a panic inside a build (Wizer, Cranelift or wasmparser)
/// killed the only build worker, left the build "running" with its lease
/// renewed forever, and wedged the queue. Now the build fails with a clear
/// message and the next build runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_a_build_fails_that_build_and_the_next_one_succeeds() {
    let registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |config| {
        config.workers = 1;
    })
    .await;
    let client = registry.client();
    for step in ["snapshot", "compile"] {
        let mut request = host_only("hello:v1");
        request.init_env = vec![("THAW_TEST_PANIC".into(), step.into())];
        let err = client.push(hello(), &request, |_| {}).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("the {step} step crashed")) && text.contains("bug in thaw"),
            "{text}"
        );
        // The build's record is final, for this process and any other.
        let id = text
            .split("build ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap();
        let record: serde_json::Value = registry
            .get(&format!("/v1/builds/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(record["state"], "failed", "{record}");
    }
    // The worker survived: an ordinary build runs and is tagged.
    let status = client
        .push(hello(), &host_only("hello:v1"), |_| {})
        .await
        .unwrap();
    assert!(
        matches!(status.state, BuildState::Succeeded { .. }),
        "{status:?}"
    );
    let metrics = registry.metrics().await;
    assert!(
        metrics.contains("thaw_registry_builds_total{outcome=\"failed\"} 2"),
        "{metrics}"
    );
}

/// An authenticated upload that declares 100 bytes and sends 4.
async fn stalled_upload(registry: &Registry) -> tokio::net::TcpStream {
    let address = registry.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/builds HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/wasm\r\nContent-Length: 100\r\n\r\n\0asm"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Regression: the push client honoured `Retry-After` in a way that also
/// lifted its retry limit, so a registry that stays busy held `thaw push`
/// forever. It must give up after its retries, with the registry's answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_push_to_a_registry_that_stays_busy_gives_up() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let busy = axum::Router::new().route(
        "/v1/builds",
        axum::routing::post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "1")],
                    r#"{"error":"the build queue is full"}"#,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let limits = thaw_http::ConnectionLimits::default();
    tokio::spawn(thaw_http::serve(
        listener,
        busy,
        limits,
        std::future::pending(),
    ));
    let client = RegistryClient::new(&base, TrustedKeys::default())
        .unwrap()
        .with_token(Some(TOKEN.into()));
    let pushed = tokio::time::timeout(
        Duration::from_secs(60),
        client.push(
            Bytes::from_static(b"\0asm"),
            &PushRequest::default(),
            |_| {},
        ),
    )
    .await
    .expect("the push gave up within a minute");
    let err = pushed.unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status: 503, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("queue is full"), "{err}");
    // The first attempt and five retries, one second apart as asked.
    assert_eq!(attempts.load(Ordering::SeqCst), 6);
}

/// A loopback proxy in front of the registry that cuts blob downloads
/// short: the first one only (`cut_once`), or all of them.
struct CuttingProxy {
    base: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl CuttingProxy {
    async fn start(upstream: &str, cut_once: bool) -> CuttingProxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            let cuts_left = Arc::new(Mutex::new(if cut_once { 1 } else { usize::MAX }));
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                let (upstream, seen, cuts_left) =
                    (upstream.clone(), seen.clone(), cuts_left.clone());
                tokio::spawn(async move {
                    // One request per connection: read its head (GETs have
                    // no body) and ask the registry to close afterwards.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    seen.lock().unwrap().push(text.to_ascii_lowercase());
                    let head = text.replacen("\r\n", "\r\nConnection: close\r\n", 1);
                    let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                    server.write_all(head.as_bytes()).await.unwrap();
                    let cut = text.starts_with("GET /v1/blobs/") && {
                        let mut left = cuts_left.lock().unwrap();
                        let cut = *left > 0;
                        *left = left.saturating_sub(1);
                        cut
                    };
                    let mut limit = if cut { 64 * 1024 } else { usize::MAX };
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        let n = server.read(&mut buffer).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let n = n.min(limit);
                        if client.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                        limit -= n;
                        if limit == 0 {
                            break;
                        }
                    }
                });
            }
        });
        CuttingProxy { base, requests }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_pull_resumes_and_a_partial_blob_is_never_loaded() {
    let registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |_| {}).await;
    registry
        .client()
        .push(hello(), &host_only("hello:v1"), |_| {})
        .await
        .unwrap();
    let hello_v1: Reference = "hello:v1".parse().unwrap();
    let trusted = TrustedKeys::new(vec![registry.key]);

    let once = CuttingProxy::start(&registry.base, true).await;
    let client = RegistryClient::new(&once.base, trusted.clone())
        .unwrap()
        .with_token(Some(TOKEN.into()));
    let cache = tempfile::tempdir().unwrap();
    let function = runner(cache.path()).load(&client, &hello_v1).await.unwrap();
    assert_eq!(get_root(&function).await.status, 200);
    let requests = once.requests.lock().unwrap().clone();
    let blob_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.starts_with("get /v1/blobs/"))
        .collect();
    assert_eq!(blob_requests.len(), 2, "{requests:?}");
    assert!(!blob_requests[0].contains("range:"));
    assert!(
        blob_requests[1].contains("range: bytes=65"),
        "resumed: {}",
        blob_requests[1]
    );

    let always = CuttingProxy::start(&registry.base, false).await;
    let client = RegistryClient::new(&always.base, trusted)
        .unwrap()
        .with_token(Some(TOKEN.into()));
    let cache = tempfile::tempdir().unwrap();
    let error = runner(cache.path())
        .load(&client, &hello_v1)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, RunError::Registry(ClientError::Transport { .. })),
        "{error}"
    );
    let cached: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert!(
        cached.is_empty(),
        "nothing loadable was written: {cached:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_functions_keep_loading_while_the_registry_is_down() {
    let mut registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |_| {}).await;
    registry
        .client()
        .push(hello(), &host_only("hello:v1"), |_| {})
        .await
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (base, key) = (registry.base.clone(), registry.key);
    let client = || {
        RegistryClient::new(&base, TrustedKeys::new(vec![key]))
            .unwrap()
            .with_token(Some(TOKEN.into()))
            .with_cache_root(&cache.path().join("manifests"))
    };
    let hello_v1: Reference = "hello:v1".parse().unwrap();
    runner(cache.path())
        .load(&client(), &hello_v1)
        .await
        .unwrap();

    registry.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A restarted runner (new engine, new client) still loads it.
    let function = runner(cache.path())
        .load(&client(), &hello_v1)
        .await
        .unwrap();
    assert_eq!(get_root(&function).await.status, 200);
    // What was never cached fails with the outage, not something vaguer.
    let error = runner(cache.path())
        .load(&client(), &"other:v1".parse().unwrap())
        .await
        .err()
        .unwrap();
    match error {
        RunError::Registry(e) => assert!(e.is_unavailable(), "{e}"),
        other => panic!("{other}"),
    }
}

/// Tenants: a token pushes and reads only the names its scopes cover, an
/// edge host's `pull:*` token reads everything and pushes nothing, and each
/// release names the token that moved the tag (by fingerprint).
#[tokio::test(flavor = "multi_thread")]
async fn tenants_push_and_read_only_the_names_their_tokens_cover() {
    const TOKENS: &str = "team-a-secret team-a-*\nteam-b-secret team-b-*\nedge-secret pull:*\n";
    let registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |config| {
        config.tokens = Tokens::parse(TOKENS).unwrap();
    })
    .await;
    let base = &registry.base;
    let as_token = |token: &str| {
        RegistryClient::new(base, TrustedKeys::new(vec![registry.key]))
            .unwrap()
            .with_token(Some(token.into()))
    };

    // Tenant B cannot push over tenant A's function; the scope is named.
    let refused = post_module(
        base,
        "name=team-a-api&tag=prod",
        Some("team-b-secret"),
        "application/wasm",
        hello(),
    )
    .await;
    assert_eq!(refused.status(), 403);
    let message = error_of(refused).await;
    assert!(
        message.contains("team-b-*") && message.contains("team-a-api"),
        "{message}"
    );

    let team_a = as_token("team-a-secret");
    let pushed = team_a
        .push(hello(), &host_only("team-a-api:prod"), |_| {})
        .await
        .unwrap();
    let BuildState::Succeeded { manifest, .. } = pushed.state else {
        panic!("{pushed:?}");
    };
    let tag = "team-a-api:prod".parse().unwrap();

    // The edge host reads every tenant's tags; the release says who moved
    // the tag, without the secret.
    let edge = as_token("edge-secret");
    let (release, _) = edge.tag(&tag).await.unwrap();
    assert_eq!(release.manifest, manifest);
    let by = release.by.unwrap();
    assert!(by.starts_with("token:") && !by.contains("secret"), "{by}");
    assert_eq!(edge.tags().await.unwrap().len(), 1);

    // Tenant B sees none of A's tags, and cannot read or move them.
    assert!(as_token("team-b-secret").tags().await.unwrap().is_empty());
    let err = as_token("team-b-secret").tag(&tag).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status: 403, .. }),
        "{err}"
    );
    let err = as_token("team-b-secret")
        .move_tag(&tag, &manifest)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status: 403, .. }),
        "{err}"
    );
    // A pull-only token pushes nothing.
    let err = edge.move_tag(&tag, &manifest).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status: 403, .. }),
        "{err}"
    );
    // Nobody reads without a token.
    let anonymous = reqwest::get(format!("{base}/v1/tags/team-a-api:prod"))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Tenant A promotes its build to another tag with one command, and
    // the history lists both releases of prod after a re-push.
    let canary = "team-a-api:canary".parse().unwrap();
    let promoted = team_a.move_tag(&canary, &manifest).await.unwrap();
    assert_eq!((promoted.manifest, promoted.sequence), (manifest, 1));
    team_a
        .push(hello(), &host_only("team-a-api:prod"), |_| {})
        .await
        .unwrap();
    let history = edge.tag_history(&tag).await.unwrap();
    let sequences: Vec<u64> = history.iter().map(|r| r.sequence).collect();
    assert_eq!(sequences, vec![2, 1]);
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Someone who can write the bucket restores an old copy of it: every
/// object still carries a valid signature, but a runner that has seen the
/// newer release refuses the older one. A release copied under another
/// tag's key is refused too.
#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_restored_from_an_old_copy_cannot_roll_runners_back() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let key = RegistryKey::generate();
    let open = || ArtifactStore::open(bucket.to_str().unwrap()).unwrap();
    let mut registry = Registry::start_with_key(open(), key.clone(), |_| {}).await;
    let prod: Reference = "hello:prod".parse().unwrap();
    registry
        .client()
        .push(hello(), &host_only("hello:prod"), |_| {})
        .await
        .unwrap();
    let snapshot = dir.path().join("bucket-after-v1");
    copy_tree(&bucket, &snapshot);
    let mut v2 = host_only("hello:prod");
    v2.init_env = vec![("RELEASE".into(), "2".into())];
    registry.client().push(hello(), &v2, |_| {}).await.unwrap();

    let cache = tempfile::tempdir().unwrap();
    let edge = |base: &str| {
        RegistryClient::new(base, TrustedKeys::new(vec![key.public()]))
            .unwrap()
            .with_token(Some(TOKEN.into()))
            .with_cache_root(cache.path())
    };
    let seen = runner(cache.path())
        .load(&edge(&registry.base), &prod)
        .await
        .unwrap();
    let v2_digest = *seen.manifest_digest();

    // The rollback: the old copy, served by the same key at a new address.
    registry.stop();
    std::fs::remove_dir_all(&bucket).unwrap();
    copy_tree(&snapshot, &bucket);
    let restored = Registry::start_with_key(open(), key.clone(), |_| {}).await;
    let error = runner(cache.path())
        .load(&edge(&restored.base), &prod)
        .await
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(
        matches!(
            error,
            RunError::Registry(ClientError::Release(
                thaw_core::release::ReleaseError::RolledBack {
                    offered: 1,
                    seen: 2,
                    ..
                }
            ))
        ),
        "{message}"
    );
    // A client that never saw v2 has no floor: that is what the runner's
    // cache is for (and --max-release-age bounds how stale it can be).
    let fresh = tempfile::tempdir().unwrap();
    let (old, _) = RegistryClient::new(&restored.base, TrustedKeys::new(vec![key.public()]))
        .unwrap()
        .with_token(Some(TOKEN.into()))
        .with_cache_root(fresh.path())
        .tag(&"hello:prod".parse().unwrap())
        .await
        .unwrap();
    assert_ne!(old.manifest, v2_digest);

    // A release copied under another tag's key names the wrong tag.
    let store = open();
    let record = store
        .get_tag_record(&"hello:prod".parse().unwrap())
        .await
        .unwrap();
    let copied = bucket.join("tags/billing/_tag/prod");
    std::fs::create_dir_all(copied.parent().unwrap()).unwrap();
    std::fs::write(&copied, record.to_bytes()).unwrap();
    let error = edge(&restored.base)
        .tag(&"billing:prod".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Release(thaw_core::release::ReleaseError::WrongTag { .. })
        ),
        "{error}"
    );
}

/// A build that finishes after a newer push of the same tag does not move
/// it back, and its push says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_build_does_not_overwrite_a_newer_push() {
    let registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |_| {}).await;
    let client = registry.client();
    // Build the newer module once, so pushing it later is a cache hit.
    let newer = client
        .push(hello(), &host_only("hello:warmup"), |_| {})
        .await
        .unwrap();
    let BuildState::Succeeded {
        manifest: newer, ..
    } = newer.state
    else {
        panic!("{newer:?}");
    };
    // The slow build is accepted first…
    let mut slow = host_only("hello:prod");
    slow.init_env = vec![("SLOW".into(), "1".into())];
    let slow_push = {
        let client = registry.client();
        tokio::spawn(async move { client.push(hello(), &slow, |_| {}).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // …then the newer push lands at once, as a cache hit.
    let fast = client
        .push(hello(), &host_only("hello:prod"), |_| {})
        .await
        .unwrap();
    assert!(matches!(
        fast.state,
        BuildState::Succeeded {
            cache_hit: true,
            ..
        }
    ));
    let error = slow_push.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("hello:prod was not moved"), "{error}");
    let (release, _) = client.tag(&"hello:prod".parse().unwrap()).await.unwrap();
    assert_eq!(release.manifest, newer);
}

/// A store whose tags an older thaw wrote (bare digests) keeps working once
/// the operator asks the registry to sign them; an unsigned release a
/// bucket writer planted is never signed.
#[tokio::test(flavor = "multi_thread")]
async fn legacy_tags_are_signed_on_request_and_planted_releases_never() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
    let key = RegistryKey::generate();
    let registry = Registry::start_with_key(store.clone(), key.clone(), |_| {}).await;
    let pushed = registry
        .client()
        .push(hello(), &host_only("hello:v1"), |_| {})
        .await
        .unwrap();
    let BuildState::Succeeded { manifest, .. } = pushed.state else {
        panic!("{pushed:?}");
    };
    // What an older thaw left: the bare digest, no release.
    let legacy = dir.path().join("tags/hello/_tag/old");
    std::fs::write(&legacy, manifest.to_string()).unwrap();
    let err = registry
        .client()
        .tag(&"hello:old".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");
    // An unsigned release a bucket writer planted, with a high sequence,
    // is not what an older thaw wrote: it is never signed.
    let planted = thaw_core::release::Release {
        sequence: 99,
        ..thaw_core::release::Release::first(&"hello:planted".parse().unwrap(), manifest, 0, None)
    };
    let planted_path = dir.path().join("tags/hello/_tag/planted");
    std::fs::write(
        &planted_path,
        thaw_core::release::TagRecord::unsigned(&planted).to_bytes(),
    )
    .unwrap();
    let again = Registry::start_with_key(store.clone(), key, |_| {}).await;
    assert_eq!(again.service.sign_legacy_tags().await.unwrap(), 1);
    let err = again
        .client()
        .tag(&"hello:planted".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");
    let (release, _) = again
        .client()
        .tag(&"hello:old".parse().unwrap())
        .await
        .unwrap();
    assert_eq!((release.manifest, release.sequence), (manifest, 1));
}

/// Regression: the store had no per-tenant bound, so varying `init_env`
/// made new builds without end. A token at its quota gets 507 before its
/// upload is read; other tenants are not affected.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_over_its_store_quota_gets_507_and_others_build_on() {
    let registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |config| {
        config.tokens = Tokens::parse("greedy greedy-*\nother other-*\n").unwrap();
        config.tenant_quota = Some(1);
    })
    .await;
    let as_token = |token: &str| {
        RegistryClient::new(&registry.base, TrustedKeys::new(vec![registry.key]))
            .unwrap()
            .with_token(Some(token.into()))
    };
    as_token("greedy")
        .push(hello(), &host_only("greedy-a:v1"), |_| {})
        .await
        .unwrap();
    let over = post_module(
        &registry.base,
        "name=greedy-a&tag=v2&init_env=VARIANT%3D2",
        Some("greedy"),
        "application/wasm",
        hello(),
    )
    .await;
    assert_eq!(over.status(), 507);
    let message = error_of(over).await;
    assert!(message.contains("quota"), "{message}");
    as_token("other")
        .push(hello(), &host_only("other-a:v1"), |_| {})
        .await
        .unwrap();
}

/// An edge runner that serves every function the registry resolves,
/// loading each on its first request. Returns its base URL.
async fn edge_runner(registry: &Registry, cache: &std::path::Path, max_loaded: usize) -> String {
    use thaw_runner::catalog::Capacity;
    use thaw_runner::http::{App, FunctionEnv, RequestLimits, Serving};
    let runner = Arc::new(Runner::new(RunnerConfig::new(cache)).unwrap());
    let source = thaw_runner::Source::registry(
        &registry.base,
        vec![registry.key],
        Some(TOKEN.into()),
        cache,
        None,
    )
    .unwrap();
    let serving = Serving {
        on_demand: true,
        capacity: Capacity {
            max_loaded,
            function_instances: 32,
        },
    };
    let app = App::load(
        runner,
        source,
        &[],
        FunctionEnv::default(),
        RequestLimits::default(),
        serving,
    )
    .await
    .unwrap();
    serve_on_loopback(app.router()).await
}

/// GET `path` on a runner with `Host: <host>`; returns status and body.
async fn fetch(http: &reqwest::Client, base: &str, host: &str, path: &str) -> (u16, String) {
    let response = http
        .get(format!("{base}{path}"))
        .header("host", host)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn versioned(version: &str, name: &str) -> PushRequest {
    let mut request = host_only(name);
    request.init_env = vec![("VERSION".into(), version.into())];
    request
}

/// Two edge runners serve whatever the registry holds without naming it,
/// follow a tag move under load with no failed request, and keep serving
/// what they loaded when the registry goes away.
#[tokio::test(flavor = "multi_thread")]
async fn edge_runners_serve_on_demand_and_deploy_a_pushed_version_live() {
    let mut registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |_| {}).await;
    let client = registry.client();
    let module: Bytes = build_go("tests/fixtures/go/versioned", BuildMode::Auto).into();
    client
        .push(hello(), &host_only("hello:latest"), |_| {})
        .await
        .unwrap();
    client
        .push(module.clone(), &versioned("1", "versioned:latest"), |_| {})
        .await
        .unwrap();

    let caches = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut runners = Vec::new();
    for cache in &caches {
        runners.push(edge_runner(&registry, cache.path(), 8).await);
    }
    let http = reqwest::Client::new();
    for base in &runners {
        // By path prefix and by Host label, neither named at start.
        let (status, body) = fetch(&http, base, "127.0.0.1", "/hello/").await;
        assert_eq!((status, body.as_str()), (200, "hello from thaw\n"));
        let (status, body) = fetch(&http, base, "versioned.edge.test", "/").await;
        assert_eq!((status, body.as_str()), (200, "version 1\n"));
        let (status, body) = fetch(&http, base, "127.0.0.1", "/nope/").await;
        assert_eq!(status, 404, "{body}");
    }

    // Drive both runners while version 2 is pushed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut drivers = Vec::new();
    for base in runners.clone() {
        for _ in 0..3 {
            let (http, stop, base) = (http.clone(), stop.clone(), base.clone());
            drivers.push(tokio::spawn(async move {
                let (mut served, mut failed) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, body) = fetch(&http, &base, "versioned.edge.test", "/").await;
                    served += 1;
                    if status != 200 || !body.starts_with("version ") {
                        failed.push(format!("{status} {body}"));
                    }
                }
                (served, failed)
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .push(module.clone(), &versioned("2", "versioned:latest"), |_| {})
        .await
        .unwrap();
    let moved = std::time::Instant::now();
    let mut propagation = Vec::new();
    for base in &runners {
        loop {
            let (_, body) = fetch(&http, base, "versioned.edge.test", "/").await;
            if body == "version 2\n" {
                propagation.push(moved.elapsed());
                break;
            }
            assert!(
                moved.elapsed() < Duration::from_secs(20),
                "{base} still serves {body:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for driver in drivers {
        let (served, failed) = driver.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed during the swap: {failed:?}"
        );
        total += served;
    }
    eprintln!(
        "tag move to both runners: {propagation:?} ({total} requests during the swap, none failed)"
    );
    let (_, metrics) = fetch(&http, &runners[0], "127.0.0.1", "/metrics").await;
    for line in [
        "thaw_function_deploys_total 1",
        "thaw_functions_loaded 2",
        "thaw_function_loads_total{outcome=\"loaded\"} 2",
        "thaw_function_loads_total{outcome=\"not_found\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // The registry goes away: loaded functions serve on; a name never
    // loaded gets 503 with the reason.
    registry.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = fetch(&http, &runners[0], "127.0.0.1", "/hello/").await;
    assert_eq!((status, body.as_str()), (200, "hello from thaw\n"));
    let (status, body) = fetch(&http, &runners[0], "127.0.0.1", "/other/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("loading other"), "{body}");
}

/// Thirty functions through a runner that keeps eight: each answers, in
/// turn and again, and the least recently used idle ones make room.
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_holds_many_functions_within_max_loaded() {
    let registry = Registry::start(ArtifactStore::open("memory://").unwrap(), |_| {}).await;
    let client = registry.client();
    // One build, thirty names: every push after the first is a cache hit.
    for i in 0..30 {
        client
            .push(hello(), &host_only(&format!("fn{i}:latest")), |_| {})
            .await
            .unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let base = edge_runner(&registry, cache.path(), 8).await;
    let http = reqwest::Client::new();
    for _round in 0..2 {
        for i in 0..30 {
            let (status, body) = fetch(&http, &base, &format!("fn{i}.edge.test"), "/").await;
            assert_eq!((status, body.as_str()), (200, "hello from thaw\n"), "fn{i}");
        }
    }
    // Requests for names that do not exist (a scanner's) evict nothing.
    for i in 0..20 {
        let (status, _) = fetch(&http, &base, "127.0.0.1", &format!("/wp-{i}.php")).await;
        assert_eq!(status, 404);
    }
    let (_, metrics) = fetch(&http, &base, "127.0.0.1", "/metrics").await;
    assert!(metrics.contains("thaw_functions_loaded 8"), "{metrics}");
    assert!(
        metrics.contains("thaw_function_evictions_total 52"),
        "60 loads into 8 places evict 52: {metrics}"
    );
}
