//! The registry as processes: a crash mid-build, and the whole service over
//! Garage, a real S3 server (one node, then a 3-node cluster with a node
//! down).

mod common;

use std::time::{Duration, Instant};

use std::path::Path;
use std::process::Command;

use common::{thaw, thaw_with_env};
use thaw_gobuild::BuildMode;
use thaw_tests::build_go;
use thaw_tests::garage::{BUCKET, Garage};

/// A `thaw` server process (registry or runner), killed when dropped.
/// Its stderr is drained to the test's stderr so it never blocks.
pub struct Server {
    child: std::process::Child,
    /// `http://<address>`.
    pub base: String,
}

impl Server {
    /// Runs `thaw args...` and waits for the line announcing its address:
    /// the first `http://` URL printed on stderr.
    pub fn start(home: &Path, args: &[&str], env: &[(&str, String)]) -> Server {
        use std::io::{BufRead, BufReader};
        let mut command = Command::new(env!("CARGO_BIN_EXE_thaw"));
        command
            .args(args)
            .env("THAW_HOME", home)
            .env_remove("THAW_STORE")
            .stderr(std::process::Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let base = loop {
            line.clear();
            if stderr.read_line(&mut line).unwrap() == 0 {
                let status = child.wait().unwrap();
                panic!("thaw {args:?} exited ({status}) before listening");
            }
            if let Some(at) = line.find("http://") {
                let url = line[at..].split_whitespace().next().unwrap();
                break url.trim_end_matches('/').to_string();
            }
        };
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("  | {line}");
            }
        });
        Server { child, base }
    }

    /// Sends SIGTERM, as a service manager stopping it would, and returns
    /// how the process exited (within ten seconds).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The token [`registry_credentials`] allows: every name, push and pull.
const TOKEN: &str = "registry-test-token";

/// A signing key and a token file in `home`; returns (public key, token).
pub fn registry_credentials(home: &Path) -> (String, String) {
    let key = home.join("registry.key");
    let out = thaw(home, &["keygen", "--out", key.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let token = TOKEN.to_string();
    std::fs::write(home.join("tokens.txt"), format!("# test\n{token}\n")).unwrap();
    (public, token)
}

/// Starts `thaw registry` on a free port over `store`.
pub fn start_registry(home: &Path, store: &str, extra: &[&str], env: &[(&str, String)]) -> Server {
    let key = home.join("registry.key");
    let tokens = home.join("tokens.txt");
    let mut args = vec![
        "registry",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store,
        "--signing-key",
        key.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(home, &args, env)
}

/// Polls a build's status until `done` accepts it (at most `limit`).
pub fn wait_for_build(
    base: &str,
    id: &str,
    limit: std::time::Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let status: serde_json::Value = reqwest::blocking::Client::new()
            .get(format!("{base}/v1/builds/{id}"))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .json()
            .unwrap();
        if done(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "build never reached the expected state: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Posts a module to a registry's build API; returns (HTTP status, body).
pub fn submit(base: &str, token: &str, query: &str, module: Vec<u8>) -> (u16, serde_json::Value) {
    let response = reqwest::blocking::Client::new()
        .post(format!("{base}/v1/builds?{query}"))
        .bearer_auth(token)
        .header("content-type", "application/wasm")
        .body(module)
        .send()
        .unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

/// Submits a module and waits until a step starting with `step` has begun;
/// returns the build id.
fn submit_and_wait_for_step(
    base: &str,
    token: &str,
    query: &str,
    module: Vec<u8>,
    step: &str,
) -> String {
    let (code, accepted) = submit(base, token, query, module);
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["build"]["id"].as_str().unwrap().to_string();
    wait_for_build(base, &id, Duration::from_secs(60), |status| {
        status["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"].as_str().unwrap().starts_with(step))
    });
    id
}

fn ok(output: std::process::Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

fn host() -> &'static str {
    thaw_core::TargetProfile::host().unwrap().name
}

fn state(status: &serde_json::Value) -> &str {
    status["state"].as_str().unwrap()
}

/// Regression: the registry stopped only on Ctrl-C, so SIGTERM (what
/// systemd and Kubernetes send) killed it without draining requests.
#[test]
fn a_registry_shuts_down_cleanly_on_sigterm() {
    let home = tempfile::tempdir().unwrap();
    registry_credentials(home.path());
    let store = home.path().join("store");
    let registry = start_registry(home.path(), store.to_str().unwrap(), &[], &[]);
    let health = reqwest::blocking::get(format!("{}/healthz", registry.base)).unwrap();
    assert_eq!(health.status(), 200);
    let status = registry.terminate();
    assert!(
        status.success(),
        "the registry exited with {status} on SIGTERM"
    );
}

#[test]
fn a_registry_killed_mid_build_reports_the_build_failed_and_rebuilds_it() {
    let home = tempfile::tempdir().unwrap();
    let store = home.path().join("store");
    let store = store.to_str().unwrap();
    let (_, token) = registry_credentials(home.path());
    let module = build_go("examples/init-heavy", BuildMode::Auto);
    let ttl = ["--lease-ttl", "2s"];

    let registry = start_registry(home.path(), store, &ttl, &[]);
    let query = format!("name=heavy&targets={}", host());
    let id = submit_and_wait_for_step(&registry.base, &token, &query, module.clone(), "snapshot");
    registry.kill();

    let registry = start_registry(home.path(), store, &ttl, &[]);
    let status = wait_for_build(&registry.base, &id, Duration::from_secs(20), |s| {
        state(s) == "failed"
    });
    assert!(
        status["error"].as_str().unwrap().contains("abandoned"),
        "{status}"
    );
    let (_, fsck) = ok(thaw(home.path(), &["fsck", "--store", store]));
    assert!(fsck.contains("consistent"), "{fsck}");

    let (code, again) = submit(&registry.base, &token, &query, module);
    assert_eq!(code, 202, "{again}");
    assert_eq!(again["build"]["id"], id.as_str());
    let status = wait_for_build(&registry.base, &id, Duration::from_secs(180), |s| {
        state(s) != "queued" && state(s) != "running"
    });
    assert_eq!(state(&status), "succeeded", "{status}");
    ok(thaw(home.path(), &["fsck", "--store", store]));
}

/// Runs `thaw run --registry` and asks it for `/`.
fn run_from_registry(home: &std::path::Path, base: &str, key: &str, reference: &str) -> String {
    let server = Server::start(
        home,
        &[
            "run",
            reference,
            "--registry",
            base,
            "--trust-key",
            key,
            "--registry-token",
            TOKEN,
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let response = reqwest::blocking::get(format!("{}/", server.base)).unwrap();
    assert_eq!(response.status(), 200);
    response.text().unwrap()
}

#[test]
fn push_pull_and_run_over_garage_and_a_tampered_blob_is_refused() {
    let garage = Garage::single();
    let home = tempfile::tempdir().unwrap();
    let (key, token) = registry_credentials(home.path());
    let env = garage.env();
    let store = format!("s3://{BUCKET}");
    let registry = start_registry(home.path(), &store, &[], &env);
    let base = registry.base.clone();
    let hello = thaw_tests::repo_root().join("examples/hello");
    let push = |name: &str| {
        let started = Instant::now();
        let output = thaw(
            home.path(),
            &[
                "push",
                hello.to_str().unwrap(),
                "--registry",
                &base,
                "--name",
                name,
                "--token",
                &token,
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target",
                "aarch64-unknown-linux-gnu",
            ],
        );
        let elapsed = started.elapsed();
        let (stdout, stderr) = ok(output);
        eprintln!("push {name}: {elapsed:?}");
        (stdout.trim().to_string(), stderr)
    };
    let (digest, _) = push("hello:v1");
    assert!(digest.starts_with("sha256:"), "{digest}");
    let (again, stderr) = push("hello:v2");
    assert_eq!(again, digest);
    assert!(stderr.contains("cache hit"), "{stderr}");

    // Pull into a local store: verified, complete, consistent.
    let local = tempfile::tempdir().unwrap();
    let local_store = local.path().join("store");
    let local_store = local_store.to_str().unwrap();
    let started = Instant::now();
    let (pulled, _) = ok(thaw(
        local.path(),
        &[
            "pull",
            "hello:v1",
            "--registry",
            &base,
            "--trust-key",
            &key,
            "--token",
            TOKEN,
            "--store",
            local_store,
        ],
    ));
    eprintln!("pull: {:?}", started.elapsed());
    assert_eq!(pulled.trim(), digest);
    let (tags, _) = ok(thaw(local.path(), &["ls", "--store", local_store]));
    assert!(tags.contains(&format!("hello:v1\t{digest}")), "{tags}");
    ok(thaw(local.path(), &["fsck", "--store", local_store]));
    // A wrong trust key pulls nothing.
    let stranger = "ed25519:".to_string() + &"11".repeat(32);
    let refused = thaw(
        local.path(),
        &[
            "pull",
            "hello:v2",
            "--registry",
            &base,
            "--trust-key",
            &stranger,
            "--token",
            TOKEN,
            "--store",
            local_store,
        ],
    );
    assert!(!refused.status.success());

    // Serve it on an edge host that pulls on first use.
    let edge = tempfile::tempdir().unwrap();
    let body = run_from_registry(edge.path(), &base, &key, "hello:v1");
    assert!(body.contains("hello"), "{body}");

    // Replace the host artifact in the bucket: a fresh edge host refuses it.
    let (manifest, _) = ok(thaw(
        local.path(),
        &["inspect", "hello:v1", "--json", "--store", local_store],
    ));
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let artifact = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["profile"] == "x86_64-unknown-linux-gnu")
        .unwrap();
    let hex = artifact["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let forged = zstd::bulk::compress(b"not the artifact", 3).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use object_store::ObjectStoreExt;
        garage
            .bucket()
            .put(&format!("blobs/sha256/{hex}").into(), forged.into())
            .await
            .unwrap();
    });
    let fresh = tempfile::tempdir().unwrap();
    let refused = thaw(
        fresh.path(),
        &[
            "run",
            "hello:v1",
            "--registry",
            &base,
            "--trust-key",
            &key,
            "--registry-token",
            TOKEN,
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("failed verification"), "{stderr}");
}

#[test]
fn an_unreachable_bucket_mid_build_fails_the_build_and_leaves_nothing_partial() {
    let mut garage = Garage::single();
    let home = tempfile::tempdir().unwrap();
    let (_, token) = registry_credentials(home.path());
    let env = garage.env();
    let store = format!("s3://{BUCKET}");
    let registry = start_registry(home.path(), &store, &[], &env);
    let module = build_go("examples/init-heavy", BuildMode::Auto);
    let query = format!("name=heavy&targets={}", host());
    let id = submit_and_wait_for_step(&registry.base, &token, &query, module, "compile");
    garage.nodes[0].stop();
    let status = wait_for_build(&registry.base, &id, Duration::from_secs(120), |s| {
        state(s) == "failed" || state(s) == "succeeded"
    });
    assert_eq!(state(&status), "failed", "{status}");
    assert!(
        status["error"].as_str().unwrap().contains("object store"),
        "{status}"
    );

    garage.nodes[0].resume();
    let (_, fsck) = ok(thaw_with_env(
        home.path(),
        &["fsck", "--store", &store],
        &env,
    ));
    assert!(fsck.contains("consistent"), "{fsck}");
    let tags: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!("{}/v1/tags", registry.base))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(tags, serde_json::json!([]));
    // The registry still builds once the bucket is back.
    let (code, hello) = submit(
        &registry.base,
        &token,
        &format!("name=hello&targets={}", host()),
        build_go("examples/hello", BuildMode::Auto),
    );
    assert_eq!(code, 202, "{hello}");
    let id = hello["build"]["id"].as_str().unwrap();
    let status = wait_for_build(&registry.base, id, Duration::from_secs(120), |s| {
        state(s) == "failed" || state(s) == "succeeded"
    });
    assert_eq!(state(&status), "succeeded", "{status}");
}

#[test]
fn a_three_node_garage_cluster_with_one_node_down_still_serves_push_pull_and_run() {
    let mut garage = Garage::cluster(3);
    garage.nodes[2].stop();
    let home = tempfile::tempdir().unwrap();
    let (key, token) = registry_credentials(home.path());
    let env = garage.env();
    let registry = start_registry(home.path(), &format!("s3://{BUCKET}"), &[], &env);
    let hello = thaw_tests::repo_root().join("examples/hello");
    let (digest, _) = ok(thaw(
        home.path(),
        &[
            "push",
            hello.to_str().unwrap(),
            "--registry",
            &registry.base,
            "--name",
            "hello:v1",
            "--token",
            &token,
            "--target",
            host(),
        ],
    ));
    let local = tempfile::tempdir().unwrap();
    let (pulled, _) = ok(thaw(
        local.path(),
        &[
            "pull",
            "hello:v1",
            "--registry",
            &registry.base,
            "--trust-key",
            &key,
            "--token",
            TOKEN,
        ],
    ));
    assert_eq!(pulled.trim(), digest.trim());
    let edge = tempfile::tempdir().unwrap();
    let body = run_from_registry(edge.path(), &registry.base, &key, "hello:v1");
    assert!(body.contains("hello"), "{body}");
}

/// Regression: a compile had no deadline, so a module that keeps Cranelift
/// busy held a build worker and its CPU for as long as it liked. Compiles
/// now run in a child process that is killed at `--compile-timeout`.
#[test]
fn a_compile_past_its_deadline_is_killed_and_the_build_fails_clearly() {
    let home = tempfile::tempdir().unwrap();
    let (_, token) = registry_credentials(home.path());
    let store = home.path().join("store");
    let registry = start_registry(
        home.path(),
        store.to_str().unwrap(),
        &["--compile-timeout", "1ms"],
        &[],
    );
    let query = format!("name=hello&targets={}", host());
    let (code, accepted) = submit(
        &registry.base,
        &token,
        &query,
        build_go("examples/hello", BuildMode::Auto),
    );
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["build"]["id"].as_str().unwrap();
    let status = wait_for_build(&registry.base, id, Duration::from_secs(120), |s| {
        state(s) == "failed" || state(s) == "succeeded"
    });
    assert_eq!(state(&status), "failed", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("--compile-timeout"), "{error}");
    // The child is gone, and the registry serves on.
    let home_text = home.path().to_str().unwrap();
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| std::fs::read(entry.ok()?.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains("compile-worker") && cmdline.contains(home_text))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let health = reqwest::blocking::get(format!("{}/healthz", registry.base)).unwrap();
    assert_eq!(health.status(), 200);
}
