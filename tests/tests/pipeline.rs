//! The whole pipeline on the repo's Go examples: Go → Wizer snapshot →
//! Cranelift artifacts for x86_64 and aarch64 → store → runner.

use std::time::{SystemTime, UNIX_EPOCH};

use thaw_builder::thaw_compiler::Compiler;
use thaw_builder::{BuildEvent, BuildRequest, Builder};
use thaw_core::{ModuleKind, Reference, TargetProfile};
use thaw_gobuild::BuildMode;
use thaw_runner::{Runner, RunnerConfig};
use thaw_store::ArtifactStore;
use thaw_tests::{Response, build_go, elf_machine, exports, request};

const X86_64: &str = "x86_64-unknown-linux-gnu";
const AARCH64: &str = "aarch64-unknown-linux-gnu";

fn both_targets() -> Vec<&'static TargetProfile> {
    vec![
        TargetProfile::by_name(X86_64).unwrap(),
        TargetProfile::by_name(AARCH64).unwrap(),
    ]
}

fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn init_heavy_snapshot_compiles_for_both_isas_and_serves_without_rerunning_init() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(dir.path().join("store").to_str().unwrap()).unwrap();
    let builder = Builder::new(store.clone(), Compiler::new()).unwrap();
    let wasm = build_go("examples/init-heavy", BuildMode::Auto);

    let mut request_spec = BuildRequest::new(both_targets());
    request_spec.tag = Some("init-heavy:v1".parse().unwrap());
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    let outcome = builder
        .build(wasm.clone().into(), &request_spec, move |e| {
            sink.lock().unwrap().push(format!("{e:?}"))
        })
        .await
        .unwrap();
    let built_before = unix_ns();
    assert!(!outcome.cache_hit);
    let manifest = &outcome.manifest;
    assert_eq!(manifest.kind, ModuleKind::Reactor);
    assert_eq!(manifest.entry, "thaw_handle");
    let steps: Vec<_> = manifest
        .build
        .steps
        .iter()
        .map(|s| s.step.as_str())
        .collect();
    assert_eq!(
        steps,
        [
            "inspect",
            "snapshot",
            &format!("compile {AARCH64}"),
            &format!("compile {X86_64}")
        ]
    );
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("Snapshot"))
    );

    // The snapshot no longer exports init, so no host can run it again.
    let snapshot = store
        .get_blob(manifest.snapshot.as_ref().unwrap())
        .await
        .unwrap();
    let snapshot_exports = exports(&snapshot);
    assert!(snapshot_exports.contains(&"thaw_handle".to_string()));
    assert!(
        !snapshot_exports.contains(&"_initialize".to_string()),
        "{snapshot_exports:?}"
    );
    assert!(!snapshot_exports.contains(&"thaw_pre_snapshot".to_string()));

    for (triple, machine) in [(X86_64, 62), (AARCH64, 183)] {
        let artifact = manifest.artifact_for(triple).unwrap();
        let bytes = store.get_blob(&artifact.blob).await.unwrap();
        assert_eq!(elf_machine(&bytes), machine, "{triple}");
        assert!(artifact.blob.compressed_size < artifact.blob.size);
        assert_eq!(artifact.wasmtime_version, "48.0.8");
    }
    assert_ne!(
        manifest.artifact_for(X86_64).unwrap().compatibility_hash,
        manifest.artifact_for(AARCH64).unwrap().compatibility_hash
    );

    // Load the host artifact in an engine built from the runner's profile.
    let runner = Runner::new(RunnerConfig::new(dir.path().join("cache"))).unwrap();
    let function = runner
        .load(&store, &"init-heavy:v1".parse::<Reference>().unwrap())
        .await
        .unwrap();
    assert_eq!(function.manifest_digest(), &outcome.manifest_digest);

    let stable = function
        .call(request("GET", "/stable", b""), &[])
        .await
        .unwrap();
    let response = Response::parse(&stable.stdout);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "entries=200000\n");

    let prime = Response::parse(
        &function
            .call(request("GET", "/prime?n=97", b""), &[])
            .await
            .unwrap()
            .stdout,
    );
    assert_eq!(prime.text().trim(), r#"{"n":97,"prime":true}"#);

    // Two fresh instances report the same init start time, taken before the
    // build finished: init ran once, at build time, never per instance.
    let mut stamps = Vec::new();
    for _ in 0..2 {
        let out = function.call(request("GET", "/", b""), &[]).await.unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&Response::parse(&out.stdout).body).unwrap();
        assert_eq!(body["entries"], 200000);
        stamps.push(body["init_started_at_ns"].as_i64().unwrap());
    }
    assert_eq!(stamps[0], stamps[1]);
    assert!(
        stamps[0] < built_before,
        "init ran after the build: {stamps:?}"
    );

    // Resubmitting the same module is a cache hit with the same manifest.
    let again = builder
        .build(wasm.into(), &request_spec, |_| {})
        .await
        .unwrap();
    assert!(again.cache_hit);
    assert_eq!(again.manifest_digest, outcome.manifest_digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_api_routes_status_codes_and_fresh_env() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open("memory://").unwrap();
    let builder = Builder::new(store.clone(), Compiler::new()).unwrap();
    let mut spec = BuildRequest::new(vec![TargetProfile::host().unwrap()]);
    spec.tag = Some("json-api:v1".parse().unwrap());
    spec.snapshot.env = vec![("FUNCTION_MODE".into(), "build-time".into())];
    let wasm = build_go("examples/json-api", BuildMode::Auto);
    let outcome = builder.build(wasm.into(), &spec, |_| {}).await.unwrap();
    assert_eq!(outcome.manifest.build.init_env, ["FUNCTION_MODE"]);

    let runner = Runner::new(RunnerConfig::new(dir.path())).unwrap();
    let function = runner
        .load(&store, &"json-api:v1".parse().unwrap())
        .await
        .unwrap();
    let call = |method: &'static str,
                path: &'static str,
                body: &'static [u8],
                env: Vec<(String, String)>| {
        let function = &function;
        async move {
            Response::parse(
                &function
                    .call(request(method, path, body), &env)
                    .await
                    .unwrap()
                    .stdout,
            )
        }
    };

    let health = call("GET", "/health", b"", vec![]).await;
    assert_eq!(
        (health.status, health.text().trim()),
        (200, r#"{"ok":true}"#)
    );
    assert_eq!(health.headers["content-type"], "application/json");

    let echo = call("POST", "/echo", br#"{"name":"edge"}"#, vec![]).await;
    assert_eq!(
        (echo.status, echo.text().trim()),
        (200, r#"{"greeting":"hello, edge"}"#)
    );
    assert_eq!(
        call("POST", "/echo", b"{not json", vec![]).await.status,
        400
    );
    assert_eq!(call("POST", "/echo", b"{}", vec![]).await.status, 422);
    assert_eq!(call("GET", "/items/2", b"", vec![]).await.status, 200);
    let missing = call("GET", "/items/7", b"", vec![]).await;
    assert_eq!(
        (missing.status, missing.text().trim()),
        (404, r#"{"error":"item 7 not found"}"#)
    );
    assert_eq!(call("GET", "/nowhere", b"", vec![]).await.status, 404);

    // The SDK refreshes the environment per request: the build-time value
    // is gone, and each request sees exactly what the host passed.
    let env = call("GET", "/env", b"", vec![]).await;
    assert_eq!(env.text().trim(), r#"{"FUNCTION_MODE":""}"#);
    let env = call(
        "GET",
        "/env",
        b"",
        vec![("FUNCTION_MODE".into(), "edge".into())],
    )
    .await;
    assert_eq!(env.text().trim(), r#"{"FUNCTION_MODE":"edge"}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn command_modules_are_compiled_not_snapshotted_and_run_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open("memory://").unwrap();
    let builder = Builder::new(store.clone(), Compiler::new()).unwrap();
    let wasm = build_go("tests/fixtures/go/command", BuildMode::Auto);
    let outcome = builder
        .build(
            wasm.into(),
            &BuildRequest::new(vec![TargetProfile::host().unwrap()]),
            |e| {
                assert!(!matches!(
                    e,
                    BuildEvent::Started(thaw_builder::Step::Snapshot)
                ))
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome.manifest.kind, ModuleKind::Command);
    assert_eq!(outcome.manifest.entry, "_start");
    assert!(outcome.manifest.snapshot.is_none());

    let runner = Runner::new(RunnerConfig::new(dir.path())).unwrap();
    let function = runner
        .load(&store, &Reference::Digest(outcome.manifest_digest))
        .await
        .unwrap();
    let out = function.call(Vec::new(), &[]).await.unwrap();
    assert_eq!(&out.stdout[..], b"hello from a command\n");

    // Regression: a build-cache entry was trusted without checking that its
    // manifest is a build of the submitted module. One that a bucket writer
    // points at another module's build is a miss.
    let other = build_go("tests/fixtures/go/cgi", BuildMode::Auto);
    let request = BuildRequest::new(vec![TargetProfile::host().unwrap()]);
    let key = *builder
        .prepare(other.clone().into(), &request)
        .unwrap()
        .key();
    store
        .put_cached_build(&key, &outcome.manifest_digest)
        .await
        .unwrap();
    let rebuilt = builder
        .build(other.clone().into(), &request, |_| {})
        .await
        .unwrap();
    assert!(!rebuilt.cache_hit);
    assert_eq!(
        rebuilt.manifest.source.digest,
        thaw_core::Digest::of(&other)
    );
    assert_ne!(rebuilt.manifest_digest, outcome.manifest_digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn runner_refuses_tampered_artifacts_and_replaces_a_tampered_cache_file() {
    use object_store::{ObjectStoreExt, PutPayload, memory::InMemory, path::Path};

    let dir = tempfile::tempdir().unwrap();
    let objects = std::sync::Arc::new(InMemory::new());
    let store = ArtifactStore::new(objects.clone(), "memory://");
    let builder = Builder::new(store.clone(), Compiler::new()).unwrap();
    let wasm = build_go("examples/hello", BuildMode::Auto);
    let mut spec = BuildRequest::new(vec![TargetProfile::host().unwrap()]);
    spec.tag = Some("hello:v1".parse().unwrap());
    let outcome = builder.build(wasm.into(), &spec, |_| {}).await.unwrap();
    let artifact = outcome
        .manifest
        .artifact_for(&thaw_core::target::host_triple())
        .unwrap()
        .clone();
    let reference: Reference = "hello:v1".parse().unwrap();

    // A loaded, then tampered, cache file is discarded and fetched again.
    let cache = dir.path().join("cache");
    let runner = Runner::new(RunnerConfig::new(&cache)).unwrap();
    drop(runner.load(&store, &reference).await.unwrap());
    let cached = cache.join(format!("{}.cwasm", artifact.blob.digest.hex()));
    let mut bytes = std::fs::read(&cached).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&cached, &bytes).unwrap();
    let function = runner.load(&store, &reference).await.unwrap();
    let hello = Response::parse(
        &function
            .call(request("GET", "/", b""), &[])
            .await
            .unwrap()
            .stdout,
    );
    assert_eq!(hello.text(), "hello from thaw\n");
    assert_eq!(
        thaw_core::Digest::of(&std::fs::read(&cached).unwrap()),
        artifact.blob.digest
    );

    // A forged blob in the store never reaches the cache or the loader.
    let mut forged = store.get_blob(&artifact.blob).await.unwrap().to_vec();
    forged[middle] ^= 0xff;
    objects
        .put(
            &Path::from(format!("blobs/sha256/{}", artifact.blob.digest.hex())),
            PutPayload::from(zstd_compress(&forged)),
        )
        .await
        .unwrap();
    let fresh_cache = dir.path().join("fresh");
    let runner = Runner::new(RunnerConfig::new(&fresh_cache)).unwrap();
    let err = runner.load(&store, &reference).await.err().unwrap();
    assert!(err.to_string().contains("failed verification"), "{err}");
    assert_eq!(std::fs::read_dir(&fresh_cache).unwrap().count(), 0);
}

fn zstd_compress(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, 3).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn loading_on_a_host_without_a_matching_artifact_names_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open("memory://").unwrap();
    let builder = Builder::new(store.clone(), Compiler::new()).unwrap();
    let host = thaw_core::target::host_triple();
    let other = if host == X86_64 { AARCH64 } else { X86_64 };
    let wasm = build_go("examples/hello", BuildMode::Auto);
    let outcome = builder
        .build(
            wasm.into(),
            &BuildRequest::new(vec![TargetProfile::by_name(other).unwrap()]),
            |_| {},
        )
        .await
        .unwrap();
    let runner = Runner::new(RunnerConfig::new(dir.path())).unwrap();
    let err = runner
        .load(&store, &Reference::Digest(outcome.manifest_digest))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&host) && err.contains(other), "{err}");
}
