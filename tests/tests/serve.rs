//! The runner's HTTP front over real loopback HTTP: routing, status codes,
//! per-request isolation and every per-request limit.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use thaw_builder::thaw_compiler::Compiler;
use thaw_builder::{BuildRequest, Builder};
use thaw_core::{Reference, TargetProfile};
use thaw_gobuild::BuildMode;
use thaw_http::ConnectionLimits;
use thaw_runner::http::{App, AppError, FunctionEnv, RequestLimits};
use thaw_runner::outbound::OutboundRules;
use thaw_runner::{RequestAbi, Runner, RunnerConfig, SlotReset, function_name};
use thaw_store::ArtifactStore;
use thaw_tests::build_go;
use tokio::sync::oneshot;

/// Builds the given Go packages into one store, tagged by their last path
/// segment.
async fn store_with(packages: &[&str]) -> ArtifactStore {
    let modes: Vec<_> = packages.iter().map(|p| (*p, BuildMode::Auto)).collect();
    store_built(&modes).await
}

/// [`store_with`], each package built in the mode given.
async fn store_built(packages: &[(&str, BuildMode)]) -> ArtifactStore {
    let store = ArtifactStore::open("memory://").unwrap();
    let builder = Builder::new(store.clone(), Compiler::new()).unwrap();
    for &(package, mode) in packages {
        let name = package.rsplit('/').next().unwrap();
        let mut request = BuildRequest::new(vec![TargetProfile::host().unwrap()]);
        request.tag = Some(format!("{name}:v1").parse().unwrap());
        builder
            .build(build_go(package, mode).into(), &request, |_| {})
            .await
            .unwrap();
    }
    store
}

struct Server {
    base: String,
    _stop: oneshot::Sender<()>,
    _cache: tempfile::TempDir,
}

async fn serve(
    store: &ArtifactStore,
    names: &[&str],
    configure: impl FnOnce(&mut RunnerConfig),
    max_body: usize,
) -> Server {
    let limits = RequestLimits {
        max_body,
        ..RequestLimits::default()
    };
    serve_within(store, names, configure, limits, ConnectionLimits::default()).await
}

/// The server's `/metrics` text.
async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The environment every test server gives its functions.
fn live_env() -> FunctionEnv {
    FunctionEnv {
        shared: vec![("FUNCTION_MODE".into(), "live".into())],
        ..FunctionEnv::default()
    }
}

async fn serve_within(
    store: &ArtifactStore,
    names: &[&str],
    configure: impl FnOnce(&mut RunnerConfig),
    limits: RequestLimits,
    connections: ConnectionLimits,
) -> Server {
    let outbound = OutboundRules::default();
    serve_with_env(
        store,
        names,
        configure,
        live_env(),
        limits,
        connections,
        &outbound,
    )
    .await
}

async fn serve_with_env(
    store: &ArtifactStore,
    names: &[&str],
    configure: impl FnOnce(&mut RunnerConfig),
    env: FunctionEnv,
    limits: RequestLimits,
    connections: ConnectionLimits,
    outbound: &OutboundRules,
) -> Server {
    let cache = tempfile::tempdir().unwrap();
    let mut config = RunnerConfig::new(cache.path());
    configure(&mut config);
    let max_instances = config.max_instances as usize;
    let runner = Runner::new(config).unwrap();
    let mut functions = Vec::new();
    for name in names {
        let reference: Reference = format!("{name}:v1").parse().unwrap();
        functions.push((
            function_name(&reference),
            runner.load(store, &reference).await.unwrap(),
        ));
    }
    let app = App::new(functions, env, limits, max_instances)
        .unwrap()
        .allow_outbound(outbound)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(thaw_http::serve(
        listener,
        app.router(),
        connections,
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        base: format!("http://{address}"),
        _stop: stop,
        _cache: cache,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_json_api_and_hello_over_http_with_routing_and_metrics() {
    let store = store_with(&["examples/json-api", "examples/hello"]).await;
    let server = serve(&store, &["json-api", "hello"], |_| {}, 1 << 20).await;
    let client = reqwest::Client::new();
    let base = &server.base;

    // Path-prefix routing strips the prefix.
    let health = client
        .get(format!("{base}/json-api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.headers()["content-type"], "application/json");
    assert_eq!(health.text().await.unwrap().trim(), r#"{"ok":true}"#);

    let echo = client
        .post(format!("{base}/json-api/echo"))
        .header("content-type", "application/json")
        .body(r#"{"name":"edge"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(echo.status(), 200);
    assert_eq!(
        echo.text().await.unwrap().trim(),
        r#"{"greeting":"hello, edge"}"#
    );

    let invalid = client
        .post(format!("{base}/json-api/echo"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    let missing = client
        .get(format!("{base}/json-api/items/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.text().await.unwrap().trim(),
        r#"{"error":"item 7 not found"}"#
    );
    let wrong_method = client
        .put(format!("{base}/json-api/items/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "GET, HEAD");

    // The configured environment reaches the function through the SDK.
    let env = client
        .get(format!("{base}/json-api/env"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        env.text().await.unwrap().trim(),
        r#"{"FUNCTION_MODE":"live"}"#
    );

    // Host-header routing.
    let hello = client
        .get(format!("{base}/"))
        .header("host", "hello.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(hello.text().await.unwrap(), "hello from thaw\n");

    let nowhere = client
        .get(format!("{base}/nothing/here"))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), 404);
    assert!(
        nowhere
            .text()
            .await
            .unwrap()
            .contains("serving: hello, json-api")
    );

    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = metrics(base).await;
    assert!(
        metrics.contains(r#"thaw_requests_total{function="json-api",status="404"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("thaw_instantiation_duration_seconds_count{function=\"hello\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compact_and_text_abis_answer_alike_and_text_only_functions_still_serve() {
    let store = store_built(&[
        ("examples/json-api", BuildMode::Auto),
        ("tests/fixtures/go/text-only", BuildMode::Reactor),
    ])
    .await;
    let cache = tempfile::tempdir().unwrap();
    for (abi, sdk_speaks_compact) in [(RequestAbi::Compact, true), (RequestAbi::Text, false)] {
        let mut config = RunnerConfig::new(cache.path());
        config.request_abi = abi;
        let runner = Runner::new(config).unwrap();
        for (name, compact) in [("json-api", sdk_speaks_compact), ("text-only", false)] {
            let function = runner
                .load(&store, &format!("{name}:v1").parse().unwrap())
                .await
                .unwrap();
            assert_eq!(function.speaks_compact(), compact, "{name} under {abi:?}");
        }
    }

    let names = ["json-api", "text-only"];
    let compact = serve(&store, &names, |_| {}, 1 << 20).await;
    let text = serve(
        &store,
        &names,
        |c| c.request_abi = RequestAbi::Text,
        1 << 20,
    )
    .await;
    let client = reqwest::Client::new();
    let requests = [
        ("GET", "/json-api/health", ""),
        ("HEAD", "/json-api/health", ""),
        ("POST", "/json-api/echo", r#"{"name":"frame"}"#),
        ("POST", "/json-api/echo", "{"),
        ("GET", "/json-api/items/1?verbose=1", ""),
        ("GET", "/json-api/items/7", ""),
        ("PUT", "/json-api/items/1", "x"),
        ("GET", "/json-api/env", ""),
        ("POST", "/text-only/old", "body"),
    ];
    for (method, path, body) in requests {
        let mut answers = Vec::new();
        for server in [&compact, &text] {
            let response = client
                .request(method.parse().unwrap(), format!("{}{path}", server.base))
                .header("content-type", "application/json")
                .header("x-multi", "one")
                .header("x-multi", "two")
                .body(body)
                .send()
                .await
                .unwrap();
            let headers: Vec<_> = ["content-type", "content-length", "allow"]
                .iter()
                .map(|h| response.headers().get(*h).cloned())
                .collect();
            answers.push((response.status(), headers, response.text().await.unwrap()));
        }
        assert_eq!(
            answers[0], answers[1],
            "{method} {path}: compact, then text"
        );
        assert!(answers[0].0.as_u16() < 500, "{method} {path}: {answers:?}");
    }
    let old = client
        .get(format!("{}/text-only/x", compact.base))
        .send()
        .await
        .unwrap();
    assert_eq!(old.text().await.unwrap(), "text entry: GET /x");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_a_fresh_instance() {
    let store = store_with(&["examples/json-api"]).await;
    let server = serve(&store, &["json-api"], |_| {}, 1 << 20).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let visits = client
            .post(format!("{}/visits", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(visits.text().await.unwrap().trim(), r#"{"visits":1}"#);
    }
}

/// Request N never sees request N-1's writes, low in memory or far above
/// the kept region, whichever way slots are reset: one slot, so every
/// request reuses the memory the previous one wrote.
#[tokio::test(flavor = "multi_thread")]
async fn no_request_sees_what_the_previous_one_wrote_under_any_slot_reset() {
    let store = store_with(&["tests/fixtures/go/isolation"]).await;
    let client = reqwest::Client::new();
    for (reset, keep_resident) in [
        (SlotReset::WholeRegion, 8 << 20),
        (SlotReset::DirtyPages, 8 << 20),
        // Fewer dirty pages allowed than a request writes: the rest of the
        // slot is unmapped instead.
        (SlotReset::DirtyPages, 1 << 20),
    ] {
        let server = serve(
            &store,
            &["isolation"],
            |config| {
                config.max_instances = 1;
                config.slot_reset = reset;
                config.keep_resident = keep_resident;
            },
            1 << 20,
        )
        .await;
        for token in 1..=12 {
            let answer = client
                .get(format!("{}/?token={token}", server.base))
                .send()
                .await
                .unwrap();
            let status = answer.status();
            assert_eq!(
                (status.as_u16(), answer.text().await.unwrap().as_str()),
                (200, "clean\n"),
                "request {token} under {reset:?} with {keep_resident} bytes kept resident"
            );
        }
    }
}

/// An instance is retired after its answer has gone out, and its slot's
/// reset is still accounted for: the request is counted before the
/// answer, the reset (scanned after the answer, since the first request in
/// a slot takes page faults) right after it, once per request.
#[tokio::test(flavor = "multi_thread")]
async fn requests_are_counted_before_the_answer_and_their_slot_reset_once_retired() {
    const REQUESTS: usize = 3;
    let store = store_with(&["examples/hello"]).await;
    let server = serve(
        &store,
        &["hello"],
        |config| {
            config.max_instances = 1;
            config.slot_reset = SlotReset::DirtyPages;
        },
        1 << 20,
    )
    .await;
    let client = reqwest::Client::new();
    for sent in 1..=REQUESTS {
        let answer = client.get(&server.base).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        answer.text().await.unwrap();
        let counted = format!(r#"thaw_requests_total{{function="hello",status="200"}} {sent}"#);
        let text = metrics(&server.base).await;
        assert!(text.contains(&counted), "{counted} missing:\n{text}");
    }
    let resets = format!("thaw_slot_reset_bytes_count {REQUESTS}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics(&server.base).await;
        if text.contains(&resets) || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(text.contains(&resets), "{resets} missing:\n{text}");
    let copied: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("thaw_slot_reset_bytes_sum "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(copied > 0.0, "the resets copied nothing back:\n{text}");
}

/// Artifacts leave the module's function names out unless the build keeps
/// them: a trap then names the wasm function by index only, and with
/// `keep_names` by its name. The manifest says which, so a rebuild can
/// reproduce it.
#[tokio::test(flavor = "multi_thread")]
async fn artifacts_name_wasm_functions_only_when_the_build_keeps_names() {
    use wasm_encoder::{
        CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction, Module,
        NameMap, NameSection, TypeSection,
    };
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], []);
    module.section(&types);
    let mut functions = FunctionSection::new();
    functions.function(0);
    module.section(&functions);
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 0);
    module.section(&exports);
    let mut code = CodeSection::new();
    let mut body = Function::new([]);
    body.instruction(&Instruction::Unreachable);
    body.instruction(&Instruction::End);
    code.function(&body);
    module.section(&code);
    let mut names = NameSection::new();
    let mut function_names = NameMap::new();
    function_names.append(0, "named_boom");
    names.functions(&function_names);
    module.section(&names);
    let wasm = bytes::Bytes::from(module.finish());

    let store = ArtifactStore::open("memory://").unwrap();
    let builder = Builder::new(store.clone(), Compiler::new()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let runner = Runner::new(RunnerConfig::new(cache.path())).unwrap();
    for keep_names in [false, true] {
        let mut request = BuildRequest::new(vec![TargetProfile::host().unwrap()]);
        request.keep_names = keep_names;
        let built = builder.build(wasm.clone(), &request, |_| {}).await.unwrap();
        assert_eq!(built.manifest.build.keep_names, Some(keep_names));
        let function = runner
            .load(&store, &Reference::Digest(built.manifest_digest))
            .await
            .unwrap();
        let trap = match function.call(Vec::new(), &[]).await {
            Err(thaw_runner::RunError::Trap { message, .. }) => message,
            other => panic!("expected a trap, got {other:?}"),
        };
        assert!(trap.contains("unreachable"), "{trap}");
        assert_eq!(
            trap.contains("named_boom"),
            keep_names,
            "keep_names {keep_names}: {trap}"
        );
    }
}

/// Every instance restored from one snapshot draws its own randomness:
/// math/rand (v1 and v2), hash/maphash seeds and map iteration order all
/// differ between requests, while a map built before the snapshot still
/// finds its keys.
#[tokio::test(flavor = "multi_thread")]
async fn every_instance_gets_fresh_runtime_randomness() {
    const REQUESTS: usize = 1000;
    let store = store_with(&["tests/fixtures/go/entropy"]).await;
    let server = serve(&store, &["entropy"], |_| {}, 1 << 20).await;
    let client = reqwest::Client::new();
    let answers: Vec<String> = futures::stream::iter(0..REQUESTS)
        .map(|_| {
            let request = client.get(format!("{}/", server.base)).send();
            async move {
                let answer = request.await.unwrap();
                assert_eq!(answer.status(), 200);
                answer.text().await.unwrap()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut distinct: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for answer in &answers {
        for line in answer.lines() {
            let (what, value) = line.split_once(' ').unwrap();
            distinct.entry(what).or_default().insert(value);
        }
    }
    let count = |what: &str| distinct.get(what).map_or(0, HashSet::len);
    assert_eq!(count("v2"), REQUESTS, "math/rand/v2 repeated a value");
    assert_eq!(count("v1"), REQUESTS, "math/rand repeated a value");
    assert_eq!(count("maphash"), REQUESTS, "hash/maphash repeated a seed");
    // Go starts iterating a small map at a random one of its 8 slots: a
    // thousand requests see every start.
    assert!(
        count("order") >= 8,
        "map orders: {:?}",
        distinct.get("order")
    );
    assert_eq!(
        distinct.get("init-map"),
        Some(&HashSet::from(["true"])),
        "a map filled during init lost keys"
    );
    // Init ran on the fixed build clock, a few readings past its start.
    let init_clock: Vec<u64> = distinct["init-clock"]
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let epoch = thaw_engine::sandbox::BUILD_EPOCH_NANOS;
    assert!(
        matches!(init_clock[..], [t] if (epoch..epoch + 3_600_000_000_000).contains(&t)),
        "{init_clock:?}"
    );
}

/// An unmodified net/http program (its own ServeMux, middleware and
/// http.Server, configuration read in main) answers through thaw exactly
/// as the same program built natively does, `Date` aside.
#[tokio::test(flavor = "multi_thread")]
async fn an_unmodified_net_http_program_answers_as_it_does_natively() {
    // Its /upstream route calls out with http.Get, natively and through
    // the runner alike.
    let allowed = format!("http://{}", origin().await);
    let upstream = format!("{allowed}/hello");
    let outbound = OutboundRules {
        shared: vec![allowed.parse().unwrap()],
        ..OutboundRules::default()
    };
    let thaw = answers_as_natively(
        "tests/fixtures/go/netserver",
        |port| ("ADDR", format!("127.0.0.1:{port}")),
        &[("UPSTREAM", upstream)],
        &outbound,
        &[
            (reqwest::Method::GET, "/items/7?full=1"),
            (reqwest::Method::POST, "/items"),
            (reqwest::Method::DELETE, "/items/7"),
            (reqwest::Method::GET, "/missing"),
            (reqwest::Method::GET, "/upstream"),
        ],
    )
    .await;
    let (status, headers, body) = &thaw[0];
    assert_eq!(
        (*status, body.as_str()),
        (200, "hello, item 7 (GET /items/7?full=1)\n")
    );
    assert_eq!(headers["x-served-by"], "middleware");
    assert_eq!(
        (thaw[4].0, thaw[4].2.as_str()),
        (200, "upstream said: hello from the origin\n")
    );
}

/// The standard demo: `http.HandleFunc` and `http.ListenAndServe(":"+port, nil)`.
#[tokio::test(flavor = "multi_thread")]
async fn the_standard_net_http_demo_answers_as_it_does_natively() {
    let thaw = answers_as_natively(
        "tests/fixtures/go/plainserver",
        |port| ("PORT", port.to_string()),
        &[],
        &OutboundRules::default(),
        &[
            (reqwest::Method::GET, "/gopher"),
            (reqwest::Method::POST, "/json?x=1"),
            (reqwest::Method::GET, "/"),
        ],
    )
    .await;
    assert_eq!((thaw[0].0, thaw[0].2.as_str()), (200, "Hello, gopher!\n"));
    assert_eq!(thaw[1].1["content-type"], "application/json");
}

/// Status, headers (but `Date` and `Connection`) and body of one answer.
type Answer = (u16, BTreeMap<String, String>, String);

/// Serves the unmodified program `package` through thaw (with `outbound`)
/// and runs it natively (told its port by the variable `listen` names),
/// both with the variables `env`; sends both the same `requests` and
/// asserts they answer the same. Returns thaw's answers.
async fn answers_as_natively(
    package: &str,
    listen: impl FnOnce(u16) -> (&'static str, String),
    env: &[(&str, String)],
    outbound: &OutboundRules,
    requests: &[(reqwest::Method, &str)],
) -> Vec<Answer> {
    let name = package.rsplit('/').next().unwrap();
    let store = store_with(&[package]).await;
    let (_, manifest) = store
        .resolve(&format!("{name}:v1").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(manifest.kind, thaw_core::ModuleKind::Reactor);
    let server = serve_with_env(
        &store,
        &[name],
        |_| {},
        FunctionEnv {
            shared: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..FunctionEnv::default()
        },
        RequestLimits::default(),
        ConnectionLimits::default(),
        outbound,
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let native = dir.path().join(name);
    let go = thaw_tests::go();
    let built = std::process::Command::new(&go.binary)
        .args(["build", "-o"])
        .arg(&native)
        .arg(".")
        .current_dir(thaw_tests::repo_root().join(package))
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (variable, value) = listen(port);
    let _native = KillOnDrop(
        std::process::Command::new(&native)
            .env_clear()
            .env(variable, value)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let native_base = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if client.get(&native_base).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = |base: String, method: reqwest::Method, path: &str| {
        let request = client
            .request(method, format!("{base}{path}"))
            .body("twelve bytes");
        async move {
            let answer = request.send().await.unwrap();
            let mut headers: BTreeMap<String, String> = answer
                .headers()
                .iter()
                .filter(|(name, _)| *name != "date")
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
                .collect();
            // Connection management is the runner's, not the program's.
            headers.remove("connection");
            (
                answer.status().as_u16(),
                headers,
                answer.text().await.unwrap(),
            )
        }
    };
    let mut answers = Vec::new();
    for (method, path) in requests {
        let thaw = answer(server.base.clone(), method.clone(), path).await;
        let native = answer(native_base.clone(), method.clone(), path).await;
        assert_eq!(thaw, native, "{method} {path}");
        answers.push(thaw);
    }
    answers
}

/// A child process stopped however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_give_the_right_status_while_good_requests_succeed() {
    let store = store_with(&["tests/fixtures/go/misbehave"]).await;
    let server = serve(
        &store,
        &["misbehave"],
        |config| {
            config.request_timeout = Duration::from_secs(2);
            config.max_memory = 128 << 20;
            config.max_stdout = 1 << 20;
        },
        1024,
    )
    .await;
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let get = |path: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            let response = client.get(format!("{base}{path}")).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    // Two spinning guests (one per core here) and a sleeping one: with
    // guest code yielding at every epoch tick, none of them starves the
    // server.
    let spin = get("/spin");
    let second_spin = get("/spin");
    let sleep = get("/sleep");
    let panic = get("/panic");
    let grow = get("/grow");
    let big = get("/big?n=xx");
    // While the spinning request holds its instance, others are served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = get("/ok").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "fine\n"));
    assert!(!spin.is_finished(), "the deadline fired early");
    let oversize = client
        .post(format!("{base}/ok"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(oversize.status(), 413);

    let (status, body) = spin.await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("deadline"), "{body}");
    assert_eq!(second_spin.await.unwrap().0, 504);
    let (status, body) = sleep.await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(panic.await.unwrap().0, 500);
    let (status, body) = grow.await.unwrap();
    assert_eq!(status, 500);
    assert!(body.contains("memory cap"), "{body}");
    let (status, body) = big.await.unwrap();
    assert_eq!(status, 502);
    assert!(body.contains("exceeds"), "{body}");

    let (status, _) = get("/ok").await.unwrap();
    assert_eq!(status, 200);
    let metrics = metrics(&base).await;
    for (limit, hits) in [("deadline", 3), ("memory", 1), ("body", 1), ("response", 1)] {
        assert!(
            metrics.contains(&format!(
                r#"thaw_limit_hits_total{{function="misbehave",limit="{limit}"}} {hits}"#
            )),
            "{limit}: {metrics}"
        );
    }
    // Usage is metered for every request, those stopped at a limit too:
    // the two spinning guests alone ran for most of their 2 s deadlines.
    let cpu: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"thaw_function_cpu_seconds_total{function="misbehave"} "#))
        .expect("a CPU counter for misbehave")
        .parse()
        .unwrap();
    assert!(cpu > 1.0, "{cpu} s of CPU metered");
    assert!(
        metrics.contains(r#"thaw_function_memory_peak_bytes_count{function="misbehave"}"#),
        "{metrics}"
    );

    // The caller's trace reaches the guest, with the runner as the parent.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = client
        .get(format!("{base}/trace"))
        .header("traceparent", caller)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        traced.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && traced != caller,
        "{traced}"
    );
}

/// Runtime configuration and secrets reach one function through the
/// runner, never through a snapshot, and no other function sees them.
#[tokio::test(flavor = "multi_thread")]
async fn a_function_sees_its_own_environment_and_no_other_functions() {
    let store = store_with(&["examples/json-api"]).await;
    let (digest, _) = store
        .resolve(&"json-api:v1".parse().unwrap())
        .await
        .unwrap();
    store
        .set_tag(&"vault:v1".parse().unwrap(), &digest)
        .await
        .unwrap();
    let mut env = live_env();
    env.by_function.insert(
        "vault".into(),
        vec![("FUNCTION_MODE".into(), "secret-for-vault".into())],
    );
    let server = serve_with_env(
        &store,
        &["json-api", "vault"],
        |_| {},
        env,
        RequestLimits::default(),
        ConnectionLimits::default(),
        &OutboundRules::default(),
    )
    .await;
    let get = |path: &str| reqwest::get(format!("{}{path}", server.base));
    let vault = get("/vault/env").await.unwrap().text().await.unwrap();
    assert_eq!(vault.trim(), r#"{"FUNCTION_MODE":"secret-for-vault"}"#);
    let other = get("/json-api/env").await.unwrap().text().await.unwrap();
    assert_eq!(other.trim(), r#"{"FUNCTION_MODE":"live"}"#);

    // An environment for a function that is not served is a mistake.
    let cache = tempfile::tempdir().unwrap();
    let runner = Runner::new(RunnerConfig::new(cache.path())).unwrap();
    let function = runner
        .load(&store, &"json-api:v1".parse().unwrap())
        .await
        .unwrap();
    let mut typo = FunctionEnv::default();
    typo.by_function.insert("jsn-api".into(), vec![]);
    let err = App::new(
        [("json-api".to_string(), function)],
        typo,
        RequestLimits::default(),
        1,
    )
    .err()
    .unwrap();
    assert!(matches!(err, AppError::UnknownFunction(..)), "{err}");
    assert!(err.to_string().contains("json-api"), "{err}");
}

/// Regression (slowloris): four POSTs that never sent their bodies held
/// all four instance slots, and thousands of half-sent requests stayed
/// open with no timeout. Slots are now taken only once a body is in, bodies
/// and heads have deadlines, and a normal client is served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_hold_no_slot_and_time_out_while_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let store = store_with(&["tests/fixtures/go/misbehave"]).await;
    let server = serve_within(
        &store,
        &["misbehave"],
        |config| config.max_instances = 4,
        RequestLimits {
            body_timeout: Duration::from_secs(2),
            ..RequestLimits::default()
        },
        ConnectionLimits {
            header_timeout: Duration::from_secs(2),
            ..ConnectionLimits::default()
        },
    )
    .await;
    let address = server.base.trim_start_matches("http://").to_string();
    let mut half_open = Vec::new();
    for _ in 0..1000 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        half_open.push(stream);
    }
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            .await
            .unwrap();
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = std::time::Instant::now();
    let ok = reqwest::get(format!("{}/ok", server.base)).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(ok.status(), 200);
    assert!(waited < Duration::from_secs(1), "served after {waited:?}");

    // The stalled bodies end with 408 at their deadline, and the half-sent
    // heads are closed at theirs.
    for mut stream in stalled {
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .expect("a stalled body was never answered")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    for mut stream in half_open.into_iter().step_by(100) {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a half-sent request is still open");
    }
}

/// Regression: with bodies read before a slot is taken, every connection
/// could buffer a full body at once. Bodies now draw on a budget of as many
/// full bodies as there are slots; requests without a body are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_draw_on_a_budget_of_one_full_body_per_slot() {
    use tokio::io::AsyncWriteExt;
    let store = store_with(&["tests/fixtures/go/misbehave"]).await;
    let server = serve(
        &store,
        &["misbehave"],
        |config| config.max_instances = 1,
        4096,
    )
    .await;
    let address = server.base.trim_start_matches("http://").to_string();
    // A client declaring a full-size body, then sending none, holds the
    // whole budget...
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    stalled
        .write_all(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::new();
    // ...so another body is refused at once, not buffered...
    let refused = client
        .post(format!("{}/ok", server.base))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    // ...while a request without a body is served.
    let ok = client
        .get(format!("{}/ok", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_runner_answers_503_with_retry_after() {
    let store = store_with(&["tests/fixtures/go/misbehave"]).await;
    let server = serve(
        &store,
        &["misbehave"],
        |config| {
            config.max_instances = 1;
            config.request_timeout = Duration::from_secs(2);
        },
        1024,
    )
    .await;
    let client = reqwest::Client::new();
    let spin = tokio::spawn({
        let url = format!("{}/spin", server.base);
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    });
    // Wait until the spinning request holds the only instance.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if metrics(&server.base)
            .await
            .contains("thaw_instances_in_flight 1")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spinning request never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = client
        .get(format!("{}/ok", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers()["retry-after"], "1");
    assert_eq!(spin.await.unwrap(), 504);
    // Once the deadline freed the instance, the runner serves again (a
    // client honours Retry-After, so a 503 in between is retried).
    let mut last = (0, String::new());
    for _ in 0..5 {
        let ok = client
            .get(format!("{}/ok", server.base))
            .send()
            .await
            .unwrap();
        last = (ok.status().as_u16(), ok.text().await.unwrap());
        if last.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(last, (200, "fine\n".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn unmodified_cgi_commands_are_served() {
    let store = store_with(&["tests/fixtures/go/cgi"]).await;
    let server = serve(&store, &["cgi"], |_| {}, 1 << 20).await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/echo/path?q=snow", server.base))
        .body("flake")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-cgi"], "yes");
    assert_eq!(
        response.text().await.unwrap(),
        "POST /echo/path q=snow body=flake\n"
    );
    let missing = client
        .get(format!("{}/missing", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sdk_function_built_as_a_command_serves_through_thaw_main() {
    // The same source as the reactor, linked as a wasip1 command: its main
    // calls thaw.Main, which serves the request as CGI.
    let store = ArtifactStore::open("memory://").unwrap();
    let builder = Builder::new(store.clone(), Compiler::new()).unwrap();
    let mut request = BuildRequest::new(vec![TargetProfile::host().unwrap()]);
    request.tag = Some("hello:v1".parse().unwrap());
    let outcome = builder
        .build(
            build_go("examples/hello", BuildMode::Command).into(),
            &request,
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(outcome.manifest.kind, thaw_core::ModuleKind::Command);
    let server = serve(&store, &["hello"], |_| {}, 1 << 20).await;
    let response = reqwest::get(format!("{}/", server.base)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello from thaw\n");
}

/// A runner over a trusted store with no functions named serves every tag
/// on demand, and deploys a tag moved in the store without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_runner_serves_on_demand_and_deploys_a_moved_tag() {
    use thaw_runner::catalog::Capacity;
    use thaw_runner::http::Serving;
    let store = store_with(&["examples/hello", "examples/json-api"]).await;
    let hello = store.get_tag(&"hello:v1".parse().unwrap()).await.unwrap();
    let json_api = store
        .get_tag(&"json-api:v1".parse().unwrap())
        .await
        .unwrap();
    store
        .set_tag(&"hello:latest".parse().unwrap(), &hello)
        .await
        .unwrap();
    let latest = "api:latest".parse().unwrap();
    store.set_tag(&latest, &json_api).await.unwrap();

    let cache = tempfile::tempdir().unwrap();
    let runner = std::sync::Arc::new(Runner::new(RunnerConfig::new(cache.path())).unwrap());
    let serving = Serving {
        on_demand: true,
        capacity: Capacity {
            max_loaded: 4,
            function_instances: 4,
        },
    };
    let source = thaw_runner::Source::Store(store.clone());
    let app = App::load(
        runner,
        source,
        &[],
        live_env(),
        RequestLimits::default(),
        serving,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(thaw_http::serve(
        listener,
        app.router(),
        ConnectionLimits::default(),
        std::future::pending(),
    ));
    let get = |path: &str| {
        let url = format!("{base}{path}");
        async move {
            let response = reqwest::get(url).await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    assert_eq!(get("/hello/").await, (200, "hello from thaw\n".into()));
    let (status, body) = get("/api/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get("/missing/").await.0, 404);

    // Point api:latest at hello's build: the runner follows.
    store.set_tag(&latest, &hello).await.unwrap();
    let moved = std::time::Instant::now();
    loop {
        if get("/api/").await == (200, "hello from thaw\n".into()) {
            break;
        }
        assert!(moved.elapsed() < Duration::from_secs(20), "never deployed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cached artifact changed in place after it was verified is never
/// mapped as it is: on the identity path (verified once, trusted while its
/// identity holds) and with `verify_on_load`, it is hashed, dropped and
/// fetched again.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_artifact_changed_after_verification_is_refetched() {
    use std::os::unix::fs::PermissionsExt;
    let store = store_with(&["examples/hello"]).await;
    let hello: Reference = "hello:v1".parse().unwrap();
    for verify_on_load in [false, true] {
        let cache = tempfile::tempdir().unwrap();
        let load = || async {
            let mut config = RunnerConfig::new(cache.path());
            config.verify_on_load = verify_on_load;
            let function = Runner::new(config)
                .unwrap()
                .load(&store, &hello)
                .await
                .unwrap();
            let output = function
                .call(thaw_tests::request("GET", "/", b""), &[])
                .await
                .unwrap();
            thaw_tests::Response::parse(&output.stdout).text()
        };
        assert_eq!(load().await, "hello from thaw\n");
        // Old enough to be trusted by identity, then loaded again: that
        // load records the identity.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(load().await, "hello from thaw\n");
        let artifact = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .unwrap();
        let original = std::fs::read(&artifact).unwrap();
        // The runner's own account changes it in place, same size.
        std::fs::set_permissions(&artifact, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut tampered = original.clone();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 0xff;
        std::fs::write(&artifact, &tampered).unwrap();
        assert_eq!(
            load().await,
            "hello from thaw\n",
            "verify_on_load={verify_on_load}"
        );
        assert_eq!(std::fs::read(&artifact).unwrap(), original);
    }
}

/// Regression: a request's instance slot was released by a task spawned
/// after the answer, so a client that sent its next request at once could
/// find every slot still taken and get 503 from a runner with exactly as
/// many clients as slots (seen as wrk errors at 256 connections).
#[tokio::test(flavor = "multi_thread")]
async fn as_many_clients_as_slots_are_all_served() {
    let store = store_with(&["examples/hello"]).await;
    let server = serve(&store, &["hello"], |c| c.max_instances = 32, 1 << 20).await;
    let mut clients = Vec::new();
    for _ in 0..32 {
        let base = server.base.clone();
        clients.push(tokio::spawn(async move {
            // One keep-alive connection per client, requests back to back.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut refused = 0;
            for _ in 0..100 {
                let status = client
                    .get(format!("{base}/"))
                    .send()
                    .await
                    .unwrap()
                    .status();
                if status != 200 {
                    refused += 1;
                }
            }
            refused
        }));
    }
    for client in clients {
        assert_eq!(client.await.unwrap(), 0, "requests refused");
    }
}

/// An origin on loopback for outbound HTTP: `/hello` answers, `/echo`
/// returns the method and body it got, `/slow` answers after 30 s,
/// `/huge` sends 1 MiB, `/loop` redirects to itself.
async fn origin() -> SocketAddr {
    use axum::routing::{any, get};
    let app =
        axum::Router::new()
            .route(
                "/hello",
                get(|| async { ([("content-type", "text/plain")], "hello from the origin\n") }),
            )
            .route(
                "/echo",
                any(|method: axum::http::Method, body: String| async move {
                    format!("{method} {body}")
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route("/huge", get(|| async { vec![b'x'; 1 << 20] }))
            .route(
                "/loop",
                get(|| async { axum::response::Redirect::temporary("/loop") }),
            );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_reach_only_their_allowed_origins_within_the_limits() {
    let store = store_with(&["examples/fetch"]).await;
    let (digest, _) = store.resolve(&"fetch:v1".parse().unwrap()).await.unwrap();
    for name in ["sneaky", "down"] {
        let tag = format!("{name}:v1").parse().unwrap();
        store.set_tag(&tag, &digest).await.unwrap();
    }
    let origin = format!("http://{}", origin().await);
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);

    let mut env = FunctionEnv::default();
    for (name, upstream) in [("fetch", &origin), ("sneaky", &origin), ("down", &down)] {
        env.by_function
            .insert(name.into(), vec![("UPSTREAM".into(), upstream.clone())]);
    }
    // The origin is fetch's alone; sneaky, given the same URL, is denied it.
    let mut outbound = OutboundRules {
        shared: vec![down.parse().unwrap()],
        ..OutboundRules::default()
    };
    outbound
        .by_function
        .insert("fetch".into(), vec![origin.parse().unwrap()]);
    outbound.limits.timeout = Duration::from_secs(1);
    outbound.limits.max_response_bytes = 64 << 10;
    outbound.limits.max_requests = 3;
    let server = serve_with_env(
        &store,
        &["fetch", "sneaky", "down"],
        |config| config.max_instances = 8,
        env,
        RequestLimits::default(),
        ConnectionLimits::default(),
        &outbound,
    )
    .await;
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        let request = client
            .request(method, format!("{}{path}", server.base))
            .body("ping");
        async move {
            let started = std::time::Instant::now();
            let answer = request.send().await.unwrap();
            let edge = answer.headers().get("x-edge").cloned();
            let status = answer.status().as_u16();
            let body = answer.text().await.unwrap();
            (status, body, edge.is_some(), started.elapsed())
        }
    };

    let (status, body, edge, _) = call(reqwest::Method::GET, "/fetch/hello").await;
    assert_eq!(
        (status, body.as_str(), edge),
        (200, "hello from the origin\n", true)
    );
    let (status, body, _, _) = call(reqwest::Method::POST, "/fetch/echo").await;
    assert_eq!((status, body.as_str()), (200, "POST ping"));

    let (status, body, _, _) = call(reqwest::Method::GET, "/sneaky/hello").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(&format!("outbound HTTP to {origin} is not allowed")),
        "{body}"
    );

    let (status, body, _, elapsed) = call(reqwest::Method::GET, "/fetch/slow").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("no answer within"), "{body}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    let (status, body, _, _) = call(reqwest::Method::GET, "/fetch/huge").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("larger than 65536 bytes"), "{body}");

    // Each redirect is a request of its own: the fourth is refused.
    let (status, body, _, _) = call(reqwest::Method::GET, "/fetch/loop").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("already made 3 outbound requests"), "{body}");

    let (status, body, _, _) = call(reqwest::Method::GET, "/down/hello").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains(&format!("outbound HTTP to {down}")), "{body}");

    // Whatever its calls came to, the function kept answering.
    let (status, _, _, _) = call(reqwest::Method::GET, "/fetch/hello").await;
    assert_eq!(status, 200);

    let metrics = metrics(&server.base).await;
    for (function, outcome, count) in [
        ("fetch", "completed", 6),
        ("fetch", "timed_out", 1),
        ("fetch", "too_large", 1),
        ("fetch", "limited", 1),
        ("sneaky", "denied", 1),
        ("down", "failed", 1),
    ] {
        let line = format!(
            r#"thaw_outbound_requests_total{{function="{function}",outcome="{outcome}"}} {count}"#
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}
