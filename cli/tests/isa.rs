//! Every target's artifact is executed, not just inspected: aarch64 under
//! QEMU user mode with the official aarch64 wasmtime CLI, and x86_64 under
//! QEMU with a CPU model from 2008, each answering byte-for-byte like the
//! host artifact run natively. The test command installs QEMU and the CLI
//! (`scripts/install-isa-tools.sh`).

mod common;

use std::path::Path;

use common::thaw;
use thaw_gobuild::BuildMode;
use thaw_tests::build_go;

const TARGETS: [&str; 2] = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"];

fn build(home: &Path, package: &str, name: &str) {
    let module = home.join(format!("{name}.wasm"));
    std::fs::write(&module, build_go(package, BuildMode::Auto)).unwrap();
    let tag = format!("{name}:v1");
    let mut args = vec!["build", module.to_str().unwrap(), "--name", &tag];
    for target in TARGETS {
        args.extend(["--target", target]);
    }
    let out = thaw(home, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn verify(home: &Path, name: &str, target: &str, extra: &[&str]) -> String {
    let tag = format!("{name}:v1");
    let mut args = vec!["verify", &tag, "--target", target];
    args.extend(extra);
    let out = thaw(home, &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "verify {name} {target} {extra:?}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("identical responses\n"), "{stdout}");
    stdout
}

#[test]
fn every_example_answers_identically_on_every_isa() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    build(home, "examples/hello", "hello");
    build(home, "examples/json-api", "json-api");
    build(home, "examples/init-heavy", "init-heavy");
    build(home, "tests/fixtures/go/command", "command");

    let cases: &[(&str, &[&str])] = &[
        ("hello", &[]),
        ("json-api", &["--path", "/items/2"]),
        ("json-api", &["--path", "/items/9"]),
        ("init-heavy", &["--path", "/"]),
        ("init-heavy", &["--path", "/prime?n=1999993"]),
        ("init-heavy", &["--path", "/match?s=a@b.io"]),
        ("command", &[]),
    ];
    for (name, extra) in cases {
        let out = verify(home, name, "aarch64-unknown-linux-gnu", extra);
        assert!(out.contains("qemu-aarch64-static"), "{out}");
        let out = verify(home, name, "x86_64-unknown-linux-gnu", extra);
        assert!(out.contains("-cpu Nehalem"), "{out}");
    }

    // The optional x86-64-v3 profile: picked natively on a CPU that has
    // AVX2 (this machine), runs on Haswell, and is refused on Nehalem.
    let module = home.join("hello.wasm");
    let out = thaw(
        home,
        &[
            "build",
            module.to_str().unwrap(),
            "--name",
            "hello:v3",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target",
            "x86_64-v3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = thaw(
        home,
        &[
            "verify",
            "hello:v3",
            "--target",
            "x86_64-v3",
            "--cpu",
            "Haswell",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("native: x86_64-v3 artifact"), "{stdout}");
    let out = thaw(
        home,
        &[
            "verify",
            "hello:v3",
            "--target",
            "x86_64-v3",
            "--cpu",
            "Nehalem",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"has_avx\" is enabled, but not available")
    );

    // The check has teeth: a CPU without SSSE3 cannot load the x86-64-v2
    // artifact, and says which feature is missing.
    let out = thaw(
        home,
        &[
            "verify",
            "hello:v1",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--cpu",
            "qemu64",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"has_ssse3\" is enabled, but not available"),
        "{err}"
    );
}
