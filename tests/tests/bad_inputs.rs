//! Every kind of bad input gets its own precise error, leaves nothing in the
//! store, and leaves the builder working for the next build.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use thaw_builder::thaw_compiler::Compiler;
use thaw_builder::thaw_snapshotter::SnapshotError;
use thaw_builder::{BuildError, BuildRequest, Builder};
use thaw_core::TargetProfile;
use thaw_gobuild::BuildMode;
use thaw_store::ArtifactStore;
use thaw_tests::{build_go, go, repo_root};

fn request() -> BuildRequest {
    let mut request = BuildRequest::new(vec![TargetProfile::host().unwrap()]);
    request.snapshot.init_timeout = Duration::from_secs(3);
    request.snapshot.max_memory = 128 << 20;
    request
}

async fn object_count(objects: &InMemory) -> usize {
    objects
        .list(None)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len()
}

async fn build_error(builder: &Builder, wasm: Vec<u8>) -> SnapshotError {
    match builder.build(wasm.into(), &request(), |_| {}).await {
        Err(BuildError::Snapshot(e)) => e,
        other => panic!("expected a snapshot error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_fail_precisely_and_disturb_nothing() {
    let objects = Arc::new(InMemory::new());
    let store = ArtifactStore::new(objects.clone(), "memory://");
    let builder = Builder::new(store.clone(), Compiler::new()).unwrap();

    let err = build_error(&builder, b"#!/bin/sh\necho hi\n".to_vec()).await;
    assert!(matches!(err, SnapshotError::NotWasm { .. }), "{err}");
    assert!(err.to_string().contains("Wasm magic"), "{err}");

    let err = build_error(&builder, b"\0asm\x01\0\0\0\x01\x05".to_vec()).await;
    assert!(matches!(err, SnapshotError::Invalid(_)), "{err}");

    let js = go()
        .build_for(
            "js",
            &repo_root().join("tests/fixtures/go/js-target"),
            false,
        )
        .unwrap();
    let err = build_error(&builder, js).await;
    assert!(matches!(err, SnapshotError::NotWasip1 { .. }), "{err}");
    assert!(err.to_string().contains("GOOS=js"), "{err}");

    let err = build_error(
        &builder,
        build_go("tests/fixtures/go/bad-import", BuildMode::Auto),
    )
    .await;
    match &err {
        SnapshotError::UnsupportedImport { module, name } => {
            assert_eq!(
                (module.as_str(), name.as_str()),
                ("env", "thaw_fixture_missing")
            )
        }
        other => panic!("{other}"),
    }

    let err = build_error(
        &builder,
        build_go("tests/fixtures/go/reactor-no-sdk", BuildMode::Reactor),
    )
    .await;
    assert!(matches!(err, SnapshotError::MissingEntryPoint), "{err}");

    let err = build_error(
        &builder,
        build_go("tests/fixtures/go/panic-init", BuildMode::Auto),
    )
    .await;
    match &err {
        SnapshotError::InitTrap { panic, stderr, .. } => {
            assert_eq!(panic.as_deref(), Some("panic: thaw-fixture: init exploded"));
            assert!(stderr.contains("goroutine 1"), "{stderr}");
        }
        other => panic!("{other}"),
    }

    let err = build_error(
        &builder,
        build_go("tests/fixtures/go/warmup-panic", BuildMode::Auto),
    )
    .await;
    assert!(
        err.to_string()
            .starts_with("init failed: panic: thaw-fixture: warmup exploded"),
        "{err}"
    );

    let err = build_error(
        &builder,
        build_go("tests/fixtures/go/loop-init", BuildMode::Auto),
    )
    .await;
    assert!(
        matches!(err, SnapshotError::InitTimeout { limit, .. } if limit == Duration::from_secs(3)),
        "{err}"
    );

    let err = build_error(
        &builder,
        build_go("tests/fixtures/go/grow-init", BuildMode::Auto),
    )
    .await;
    assert!(
        matches!(err, SnapshotError::InitMemoryLimit { limit, .. } if limit == 128 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("128 MiB"), "{err}");

    let err = builder
        .build(b"x".to_vec().into(), &BuildRequest::new(vec![]), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::NoTargets), "{err}");

    // Nothing of any failed build became visible.
    assert_eq!(object_count(&objects).await, 0);

    // The same builder still builds a good module.
    let mut good = request();
    good.tag = Some("hello:v1".parse().unwrap());
    let outcome = builder
        .build(
            build_go("examples/hello", BuildMode::Auto).into(),
            &good,
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_tag(&"hello:v1".parse().unwrap()).await.unwrap(),
        outcome.manifest_digest
    );
}
