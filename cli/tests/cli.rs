//! The `thaw` binary, as a user drives it.

use std::path::Path;
use std::process::{Command, Output};

use thaw_artifact::{Digest, Manifest};
use thaw_gobuild::BuildMode;
use thaw_tests::{build_go, elf_machine};

fn thaw(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(args)
        .env("THAW_HOME", home)
        .env_remove("THAW_STORE")
        .output()
        .unwrap()
}

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
        summary.contains(&format!(
            "artifact   {}",
            thaw_artifact::profile::host_triple()
        )),
        "{summary}"
    );
}
