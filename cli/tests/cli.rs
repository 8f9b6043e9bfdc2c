//! The `thaw` binary, as a user drives it.

mod common;

use std::process::{Command, Output};

use common::thaw;
use thaw_core::{Digest, Manifest};
use thaw_gobuild::BuildMode;
use thaw_tests::{build_go, elf_machine};

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "thaw failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn failed(output: Output) -> String {
    assert!(!output.status.success(), "thaw succeeded unexpectedly");
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn build_inspect_export_and_verify() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let module = home.join("hello.wasm");
    std::fs::write(&module, build_go("examples/hello", BuildMode::Auto)).unwrap();
    let module = module.to_str().unwrap();

    let json = ok(thaw(
        home,
        &[
            "build",
            module,
            "--name",
            "hello:v1",
            "--json",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target",
            "aarch64-unknown-linux-gnu",
        ],
    ));
    let manifest = Manifest::from_bytes(json.as_bytes()).unwrap();
    let digest = Digest::of(json.as_bytes());
    assert_eq!(manifest.artifacts.len(), 2);
    // The default store is under $THAW_HOME.
    assert!(
        home.join("store/manifests/sha256")
            .join(digest.hex())
            .exists()
    );

    // Rebuilding, targets in any order, is a build-cache hit: same digest.
    let again = ok(thaw(
        home,
        &[
            "build",
            module,
            "--target",
            "aarch64-unknown-linux-gnu",
            "--target",
            "x86_64-unknown-linux-gnu",
        ],
    ));
    assert_eq!(again.trim(), digest.to_string());

    assert_eq!(ok(thaw(home, &["inspect", "hello:v1", "--json"])), json);
    let summary = ok(thaw(home, &["inspect", "hello:v1"]));
    assert!(summary.contains("kind       reactor"), "{summary}");
    assert!(ok(thaw(home, &["ls"])).contains(&format!("hello:v1\t{digest}")));

    let out = home.join("hello.aarch64.cwasm");
    ok(thaw(
        home,
        &[
            "export",
            "hello:v1",
            "--target",
            "aarch64-unknown-linux-gnu",
            "-o",
            out.to_str().unwrap(),
        ],
    ));
    let exported = std::fs::read(&out).unwrap();
    assert_eq!(elf_machine(&exported), 183);
    let artifact = manifest.artifact_for("aarch64-unknown-linux-gnu").unwrap();
    assert_eq!(Digest::of(&exported), artifact.blob.digest);

    // Tamper with the stored blob: export refuses and writes nothing.
    let blob_path = home
        .join("store/blobs/sha256")
        .join(artifact.blob.digest.hex());
    let forged = zstd::bulk::compress(b"not the artifact", 3).unwrap();
    std::fs::write(&blob_path, forged).unwrap();
    let refused = home.join("refused.cwasm");
    let err = failed(thaw(
        home,
        &[
            "export",
            "hello:v1",
            "--target",
            "aarch64-unknown-linux-gnu",
            "-o",
            refused.to_str().unwrap(),
        ],
    ));
    assert!(err.contains("failed verification"), "{err}");
    assert!(!refused.exists());
}

#[test]
fn user_errors_are_specific() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let err = failed(thaw(home, &["inspect", "nothing:here"]));
    assert!(err.contains("tag nothing:here not found"), "{err}");
    let err = failed(thaw(home, &["build", "/definitely/missing.wasm"]));
    assert!(
        err.contains("/definitely/missing.wasm does not exist"),
        "{err}"
    );
    let garbage = home.join("garbage.wasm");
    std::fs::write(&garbage, b"garbage").unwrap();
    let err = failed(thaw(home, &["build", garbage.to_str().unwrap()]));
    assert!(err.contains("not a WebAssembly module"), "{err}");
    let err = failed(thaw(
        home,
        &["build", garbage.to_str().unwrap(), "--target", "mips"],
    ));
    assert!(err.contains("unsupported target \"mips\""), "{err}");
    let err = failed(thaw(home, &["inspect", "Bad Name"]));
    assert!(err.contains("invalid reference"), "{err}");
}

#[test]
fn builds_a_go_package_directory() {
    let home = tempfile::tempdir().unwrap();
    let dir = thaw_tests::repo_root().join("examples/hello");
    let digest = ok(thaw(
        home.path(),
        &["build", dir.to_str().unwrap(), "--name", "hello"],
    ));
    assert!(digest.trim().parse::<Digest>().is_ok(), "{digest}");
    let summary = ok(thaw(home.path(), &["inspect", "hello:latest"]));
    assert!(
        summary.contains(&format!("artifact   {}", thaw_core::target::host_triple())),
        "{summary}"
    );
}

/// `thaw new` makes a directory, outside any checkout, that builds and
/// answers with no edits: its go.mod has no `require` or `replace` for the
/// SDK, which comes from the thaw binary.
#[test]
fn a_new_function_builds_from_anywhere_without_a_replace() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("edge-hello");
    let dir_arg = dir.to_str().unwrap();
    ok(thaw(home.path(), &["new", dir_arg]));
    let go_mod = std::fs::read_to_string(dir.join("go.mod")).unwrap();
    assert!(!go_mod.contains("thaw.dev/thaw"), "{go_mod}");
    ok(thaw(
        home.path(),
        &["build", dir_arg, "--name", "edge-hello:v1"],
    ));
    let response = ok(thaw(
        home.path(),
        &["call", "edge-hello:v1", "--path", "/from/anywhere"],
    ));
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("hello from /from/anywhere\n"),
        "{response}"
    );
    // Nothing was written into the user's directory.
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, [".gitignore", "go.mod", "main.go"]);
    let error = failed(thaw(home.path(), &["new", dir_arg]));
    assert!(error.contains("already exists and is not empty"), "{error}");
    let error = failed(thaw(home.path(), &["new", "Bad Name!"]));
    assert!(error.contains("cannot name a function"), "{error}");
}

/// Init sees a fixed clock and fixed entropy, so rebuilding a stored
/// function from its source gives the same snapshot and artifacts, byte for
/// byte; a rebuild whose init sees something else is caught.
#[test]
fn a_rebuild_from_the_stored_source_reproduces_every_byte() {
    let home = tempfile::tempdir().unwrap();
    let dir = thaw_tests::repo_root().join("tests/fixtures/go/entropy");
    ok(thaw(
        home.path(),
        &[
            "build",
            dir.to_str().unwrap(),
            "--name",
            "entropy:v1",
            "--init-env",
            "GREETING=hi",
        ],
    ));
    let report = ok(thaw(
        home.path(),
        &[
            "verify",
            "entropy:v1",
            "--rebuild",
            "--init-env",
            "GREETING=hi",
        ],
    ));
    let host = thaw_core::target::host_triple();
    assert!(report.contains("snapshot"), "{report}");
    assert_eq!(report.matches("identical").count(), 2, "{report}");
    assert!(report.contains(&format!("artifact {host}")), "{report}");

    // The names init saw are in the manifest; their values are not.
    let error = failed(thaw(home.path(), &["verify", "entropy:v1", "--rebuild"]));
    assert!(error.contains("GREETING"), "{error}");
    // Another value is another snapshot: Go keeps init's environment.
    let output = thaw(
        home.path(),
        &[
            "verify",
            "entropy:v1",
            "--rebuild",
            "--init-env",
            "GREETING=bye",
        ],
    );
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let error = failed(output);
    assert!(report.contains("DIFFERENT"), "{report}");
    assert!(error.contains("differ from a rebuild"), "{error}");

    // A manifest written before builds recorded whether artifacts keep
    // function names came from a build that kept them: it is rebuilt so.
    ok(thaw(
        home.path(),
        &[
            "build",
            dir.to_str().unwrap(),
            "--name",
            "entropy:named",
            "--keep-names",
            "--init-env",
            "GREETING=hi",
        ],
    ));
    let store =
        thaw_store::ArtifactStore::open(home.path().join("store").to_str().unwrap()).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let named = "entropy:named".parse().unwrap();
        let (_, mut manifest) = store.resolve(&named).await.unwrap();
        assert_eq!(manifest.build.keep_names, Some(true));
        manifest.build.keep_names = None;
        let legacy = store.put_manifest(&manifest).await.unwrap();
        store
            .set_tag(&"entropy:legacy".parse().unwrap(), &legacy)
            .await
            .unwrap();
    });
    let report = ok(thaw(
        home.path(),
        &[
            "verify",
            "entropy:legacy",
            "--rebuild",
            "--init-env",
            "GREETING=hi",
        ],
    ));
    assert_eq!(report.matches("identical").count(), 2, "{report}");
}

#[test]
fn exec_propagates_arguments_and_exit_status() {
    let home = tempfile::tempdir().unwrap();
    let module = home.path().join("command.wasm");
    std::fs::write(
        &module,
        build_go("tests/fixtures/go/command", BuildMode::Auto),
    )
    .unwrap();
    let module = module.to_str().unwrap();
    let out = thaw(home.path(), &["exec", module]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from a command\n"
    );
    let out = thaw(home.path(), &["exec", module, "7"]);
    assert_eq!(out.status.code(), Some(7));
    let reactor = home.path().join("hello.wasm");
    std::fs::write(&reactor, build_go("examples/hello", BuildMode::Auto)).unwrap();
    let err = failed(thaw(home.path(), &["exec", reactor.to_str().unwrap()]));
    assert!(err.contains("is a reactor"), "{err}");
}

#[test]
fn go_test_runs_through_thaw_exec() {
    // With thaw on PATH as `go_wasip1_wasm_exec`, `GOOS=wasip1 go test`
    // runs each test binary through the AOT pipeline.
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_thaw"), bin.join("go_wasip1_wasm_exec"))
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sdk = thaw_tests::repo_root().join("sdk/go");
    let out = thaw_tests::go()
        .command(&sdk, "wasip1")
        // The SDK's per-instance reseed links runtime internals.
        .args(["test", "-count=1", "-ldflags=-checklinkname=0", "./..."])
        .env("PATH", path)
        .env("THAW_HOME", home.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok  \tthaw.dev/thaw"), "{stdout}");
    // The test binary went through the store as a command build.
    let manifests = std::fs::read_dir(home.path().join("store/manifests/sha256")).unwrap();
    assert_eq!(manifests.count(), 1);
}

#[test]
fn up_builds_and_serves_then_shuts_down_gracefully() {
    use std::io::{BufRead, BufReader, Read, Write};

    let home = tempfile::tempdir().unwrap();
    let dir = thaw_tests::repo_root().join("examples/hello");
    let mut child = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["up", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("THAW_HOME", home.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let address = loop {
        line.clear();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "thaw up exited early"
        );
        if let Some(rest) = line.strip_prefix("serving hello on http://") {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("hello from thaw\n"), "{response}");
    // The access log may come first.
    loop {
        line.clear();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "no first-request line"
        );
        if line.starts_with("first request: ") {
            break;
        }
    }
    assert!(line.starts_with("first request: 200 in "), "{line}");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_build_killed_at_any_point_leaves_a_consistent_store() {
    let home = tempfile::tempdir().unwrap();
    let module = home.path().join("json-api.wasm");
    std::fs::write(&module, build_go("examples/json-api", BuildMode::Auto)).unwrap();
    let args = [
        "build",
        module.to_str().unwrap(),
        "--name",
        "api:v1",
        "--target",
        "x86_64-unknown-linux-gnu",
        "--target",
        "aarch64-unknown-linux-gnu",
    ];
    // Kill points spread over inspect, snapshot, compile and store.
    for delay_ms in [300, 1500, 4000, 7000, 9000, 11000] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_thaw"))
            .args(args)
            .env("THAW_HOME", home.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let finished = child.wait().unwrap().success();
        let fsck = thaw(home.path(), &["fsck"]);
        assert!(
            fsck.status.success(),
            "killed after {delay_ms} ms: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        // A tag exists only if the whole build was stored.
        let tags = ok(thaw(home.path(), &["ls"]));
        if !tags.is_empty() {
            assert!(tags.starts_with("api:v1\t"), "{tags}");
            ok(thaw(home.path(), &["inspect", "api:v1"]));
        }
        if finished {
            break;
        }
    }
    // Whatever was interrupted, a final build completes from the same store.
    ok(thaw(home.path(), &args));
    assert!(ok(thaw(home.path(), &["ls"])).starts_with("api:v1\t"));
}

#[test]
fn fsck_repair_removes_what_cannot_be_trusted_and_leaves_foreign_keys() {
    let home = tempfile::tempdir().unwrap();
    let store = home.path().join("store");
    let tag = store.join("tags/hello/_tag/v1");
    std::fs::create_dir_all(tag.parent().unwrap()).unwrap();
    std::fs::write(&tag, "not a digest").unwrap();
    std::fs::create_dir_all(store.join("stray")).unwrap();
    std::fs::write(store.join("stray/file"), "x").unwrap();
    let store_arg = store.to_str().unwrap();

    let err = failed(thaw(home.path(), &["fsck", "--store", store_arg]));
    assert!(err.contains("2 problem(s)"), "{err}");
    let repaired = thaw(home.path(), &["fsck", "--repair", "--store", store_arg]);
    let stdout = String::from_utf8_lossy(&repaired.stdout);
    assert!(stdout.contains("removed tags/hello/_tag/v1"), "{stdout}");
    assert!(stdout.contains("stray/file"), "{stdout}");
    assert!(!tag.exists());
    assert!(store.join("stray/file").exists());
    std::fs::remove_file(store.join("stray/file")).unwrap();
    let consistent = thaw(home.path(), &["fsck", "--store", store_arg]);
    let stderr = String::from_utf8_lossy(&consistent.stderr);
    assert!(consistent.status.success(), "{stderr}");
    assert!(stderr.contains("consistent"), "{stderr}");
}

#[test]
fn init_env_is_flagged_public_and_runtime_env_flags_are_checked() {
    let home = tempfile::tempdir().unwrap();
    // The warning comes before anything is built, and names only the keys.
    let err = failed(thaw(
        home.path(),
        &["build", "/nonexistent", "--init-env", "DB_PASSWORD=hunter2"],
    ));
    assert!(
        err.contains("baked into the snapshot") && err.contains("DB_PASSWORD"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let err = failed(thaw(
        home.path(),
        &["run", "hello:v1", "--function-env", "no-separator"],
    ));
    assert!(err.contains("is not NAME:KEY=VALUE"), "{err}");
    let err = failed(thaw(
        home.path(),
        &[
            "run",
            "hello:v1",
            "--function-env-file",
            "hello:/nonexistent/secrets.env",
        ],
    ));
    assert!(
        err.contains("environment file /nonexistent/secrets.env"),
        "{err}"
    );
}
