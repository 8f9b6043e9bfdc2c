use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use thaw_core::release::{Release, TagRecord};
use thaw_core::{
    Artifact, BlobError, BlobRef, BuildInfo, Digest, MANIFEST_SCHEMA, Manifest, ModuleKind,
    Reference, TagRef,
};
use thaw_store::{ArtifactStore, RecordKind, StoreError};

fn manifest_for(source: &BlobRef) -> Manifest {
    Manifest {
        schema: MANIFEST_SCHEMA,
        kind: ModuleKind::Command,
        entry: "_start".into(),
        source: source.clone(),
        snapshot: None,
        artifacts: vec![Artifact {
            profile: "x86_64-unknown-linux-gnu".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            isa_flags: vec![],
            blob: source.clone(),
            wasmtime_version: "48.0.8".into(),
            compatibility_hash: Digest::of(b"h"),
            compile_ms: 1,
        }],
        build: BuildInfo {
            cache_key: Digest::of(b"k"),
            thaw_version: "test".into(),
            wasmtime_version: "48.0.8".into(),
            init_env: vec![],
            keep_names: None,
            steps: vec![],
        },
    }
}

#[tokio::test]
async fn blobs_round_trip_compressed_and_deduplicated() {
    let objects = Arc::new(InMemory::new());
    let store = ArtifactStore::new(objects.clone(), "memory://");
    let data = vec![7u8; 1 << 20];
    let blob = store.put_blob(data.clone().into()).await.unwrap();
    assert_eq!(blob.digest, Digest::of(&data));
    assert_eq!(blob.size, data.len() as u64);
    assert!(blob.compressed_size < blob.size / 100, "{blob:?}");
    assert_eq!(store.put_blob(data.clone().into()).await.unwrap(), blob);
    assert_eq!(&store.get_blob(&blob).await.unwrap()[..], &data[..]);
    let stored: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(objects.list(None))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
}

#[tokio::test]
async fn tampered_blob_is_refused() {
    let objects = Arc::new(InMemory::new());
    let store = ArtifactStore::new(objects.clone(), "memory://");
    let blob = store
        .put_blob(b"genuine bytes".to_vec().into())
        .await
        .unwrap();
    let forged = zstd::bulk::compress(b"forged bytes!", 3).unwrap();
    objects
        .put(
            &Path::from(format!("blobs/sha256/{}", blob.digest.hex())),
            PutPayload::from(forged),
        )
        .await
        .unwrap();
    let err = store.get_blob(&blob).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Blob(BlobError::Mismatch { .. })),
        "{err}"
    );
    let problems = store.check_integrity(&[]).await.unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].key.contains(&blob.digest.hex()), "{problems:?}");

    // A blob that decompresses to more than the manifest says is cut off
    // rather than expanded.
    let bomb = zstd::bulk::compress(&vec![0u8; 10 << 20], 3).unwrap();
    objects
        .put(
            &Path::from(format!("blobs/sha256/{}", blob.digest.hex())),
            PutPayload::from(bomb),
        )
        .await
        .unwrap();
    let err = store.get_blob(&blob).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Blob(BlobError::Undecodable { .. })),
        "{err}"
    );
}

/// In memory, and in a directory, whose small objects are read directly
/// rather than through object_store.
#[tokio::test]
async fn manifests_tags_and_cache() {
    manifests_tags_and_cache_in(ArtifactStore::open("memory://").unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let location = format!("file://{}", dir.path().join("store").display());
    manifests_tags_and_cache_in(ArtifactStore::open(&location).unwrap()).await;
}

async fn manifests_tags_and_cache_in(store: ArtifactStore) {
    let missing = BlobRef {
        digest: Digest::of(b"never stored"),
        size: 1,
        compressed_size: 1,
    };
    let err = store
        .put_manifest(&manifest_for(&missing))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");

    let blob = store.put_blob(b"module".to_vec().into()).await.unwrap();
    let manifest = manifest_for(&blob);
    let digest = store.put_manifest(&manifest).await.unwrap();
    assert_eq!(digest, manifest.digest());

    let tag: TagRef = "hello:v1".parse().unwrap();
    store.set_tag(&tag, &digest).await.unwrap();
    let (resolved, got) = store
        .resolve(&"hello:v1".parse::<Reference>().unwrap())
        .await
        .unwrap();
    assert_eq!((resolved, &got), (digest, &manifest));
    assert_eq!(store.list_tags().await.unwrap().tags, vec![(tag, digest)]);

    let err = store
        .resolve(&"hello:v2".parse::<Reference>().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "tag hello:v2 not found");

    let err = store
        .set_tag(&"x:y".parse().unwrap(), &Digest::of(b"nothing"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");

    assert_eq!(store.check_integrity(&[]).await.unwrap(), Vec::new());

    let key = Digest::of(b"cache key");
    assert_eq!(store.cached_build(&key).await.unwrap(), None);
    store.put_cached_build(&key, &digest).await.unwrap();
    assert_eq!(
        store.cached_build(&key).await.unwrap(),
        Some((digest, manifest))
    );
}

#[tokio::test]
async fn nested_names_do_not_collide_with_tags() {
    // Regression: with `tags/<name>/<tag>` keys, `a:b` was a file where
    // `a/b:v1` needed a directory.
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
    let blob = store.put_blob(b"module".to_vec().into()).await.unwrap();
    let digest = store.put_manifest(&manifest_for(&blob)).await.unwrap();
    let short: TagRef = "a:b".parse().unwrap();
    let nested: TagRef = "a/b:v1".parse().unwrap();
    store.set_tag(&short, &digest).await.unwrap();
    store.set_tag(&nested, &digest).await.unwrap();
    assert_eq!(
        store.list_tags().await.unwrap().tags,
        vec![(short, digest), (nested, digest)]
    );
}

#[tokio::test]
async fn file_store_persists_across_opens() {
    let dir = tempfile::tempdir().unwrap();
    let location = format!("file://{}", dir.path().join("store").display());
    let blob = {
        let store = ArtifactStore::open(&location).unwrap();
        store.put_blob(b"persisted".to_vec().into()).await.unwrap()
    };
    let store = ArtifactStore::open(&location).unwrap();
    assert_eq!(&store.get_blob(&blob).await.unwrap()[..], b"persisted");
    assert!(
        dir.path()
            .join("store/blobs/sha256")
            .join(blob.digest.hex())
            .exists()
    );
}

#[test]
fn unsupported_locations_are_named() {
    let err = ArtifactStore::open("ftp://x").unwrap_err();
    assert!(err.to_string().contains("\"ftp\""), "{err}");
}

#[tokio::test]
async fn records_are_expected_only_of_the_kinds_a_service_declares() {
    const BUILDS: RecordKind = RecordKind::new("builds");
    let store = ArtifactStore::open("memory://").unwrap();
    let id = Digest::of(b"build");
    store
        .put_record(BUILDS, &id, b"{}".to_vec().into())
        .await
        .unwrap();
    assert_eq!(
        store.get_record(BUILDS, &id).await.unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    assert!(store.check_integrity(&[BUILDS]).await.unwrap().is_empty());
    let problems = store.check_integrity(&[]).await.unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].key.starts_with("builds/"), "{problems:?}");
    assert!(!problems[0].untrusted, "{problems:?}");
    // Conditional create: one winner.
    assert!(
        !store
            .create_record(BUILDS, &id, b"x".to_vec().into())
            .await
            .unwrap()
    );
    store.delete_record(BUILDS, &id).await.unwrap();
    assert!(
        store
            .create_record(BUILDS, &id, b"x".to_vec().into())
            .await
            .unwrap()
    );
}

/// Regression: one corrupt tag object made every listing fail, so
/// `GET /v1/tags` failed for every tenant.
#[tokio::test]
async fn a_corrupt_tag_is_reported_and_the_others_still_list() {
    let objects = Arc::new(InMemory::new());
    let store = ArtifactStore::new(objects.clone(), "memory://");
    let blob = store.put_blob(b"module".to_vec().into()).await.unwrap();
    let digest = store.put_manifest(&manifest_for(&blob)).await.unwrap();
    let good: TagRef = "good:v1".parse().unwrap();
    let bad: TagRef = "bad:v1".parse().unwrap();
    store.set_tag(&good, &digest).await.unwrap();
    objects
        .put(
            &Path::from(bad.storage_key()),
            PutPayload::from_static(b"not a digest"),
        )
        .await
        .unwrap();
    let listing = store.list_tags().await.unwrap();
    assert_eq!(listing.tags, vec![(good, digest)]);
    assert_eq!(listing.unreadable.len(), 1, "{listing:?}");
    assert_eq!(listing.unreadable[0].0, bad);
    assert!(
        matches!(listing.unreadable[0].1, StoreError::Corrupt { .. }),
        "{listing:?}"
    );
}

/// Regression: `put_blob` counted any stored file as present, so a blob
/// torn by a power loss was never rewritten and every later build reused it.
#[tokio::test]
async fn a_truncated_blob_is_replaced_by_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
    let bytes = b"a module worth keeping".repeat(100);
    let blob = store.put_blob(bytes.clone().into()).await.unwrap();
    let file = dir
        .path()
        .join(format!("blobs/sha256/{}", blob.digest.hex()));
    let stored = std::fs::read(&file).unwrap();
    std::fs::write(&file, &stored[..stored.len() / 2]).unwrap();
    assert!(store.get_blob(&blob).await.is_err());

    let again = store.put_blob(bytes.clone().into()).await.unwrap();
    assert_eq!(again.digest, blob.digest);
    assert_eq!(&store.get_blob(&again).await.unwrap()[..], &bytes[..]);
}

#[tokio::test]
async fn repair_removes_a_corrupt_blob_and_everything_that_trusts_it() {
    let objects = Arc::new(InMemory::new());
    let store = ArtifactStore::new(objects.clone(), "memory://");
    let blob = store.put_blob(b"module".to_vec().into()).await.unwrap();
    let manifest = store.put_manifest(&manifest_for(&blob)).await.unwrap();
    let tag: TagRef = "hello:v1".parse().unwrap();
    store.set_tag(&tag, &manifest).await.unwrap();
    store
        .put_cached_build(&Digest::of(b"key"), &manifest)
        .await
        .unwrap();
    let key = thaw_core::signing::RegistryKey::generate();
    store
        .put_signature(&manifest, &key.sign(&manifest))
        .await
        .unwrap();
    // Something that is not thaw's stays, reported.
    objects
        .put(&Path::from("stray/file"), PutPayload::from_static(b"x"))
        .await
        .unwrap();
    objects
        .put(
            &Path::from(format!("blobs/sha256/{}", blob.digest.hex())),
            PutPayload::from(zstd::bulk::compress(b"forged", 3).unwrap()),
        )
        .await
        .unwrap();

    let removed = store.repair(&[]).await.unwrap();
    let removed: Vec<_> = removed
        .iter()
        .map(|p| p.key.split('/').next().unwrap())
        .collect();
    for folder in ["blobs", "manifests", "signatures", "tags", "build-cache"] {
        assert!(
            removed.contains(&folder),
            "{folder} not removed: {removed:?}"
        );
    }
    let left = store.check_integrity(&[]).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].key, "stray/file");
    assert!(store.list_tags().await.unwrap().tags.is_empty());
}

#[tokio::test]
async fn tag_moves_keep_a_history_and_a_copied_or_legacy_record_reads_as_what_it_is() {
    let objects = Arc::new(InMemory::new());
    let store = ArtifactStore::new(objects.clone(), "memory://");
    let tag: TagRef = "hello:prod".parse().unwrap();
    let mut digests = Vec::new();
    for content in [&b"one"[..], b"two"] {
        let blob = store.put_blob(content.to_vec().into()).await.unwrap();
        digests.push(store.put_manifest(&manifest_for(&blob)).await.unwrap());
    }
    let first = store.set_tag(&tag, &digests[0]).await.unwrap();
    let second = store.set_tag(&tag, &digests[1]).await.unwrap();
    assert_eq!((first.sequence, second.sequence), (1, 2));
    assert!(second.requested_at_ms >= first.requested_at_ms);
    let history: Vec<_> = store
        .tag_history(&tag)
        .await
        .unwrap()
        .iter()
        .map(|record| record.release_unverified().unwrap().manifest)
        .collect();
    assert_eq!(history, vec![digests[1], digests[0]]);
    // A second writer making release 2 again loses, whatever it names.
    let again = Release {
        manifest: digests[0],
        ..second.clone()
    };
    let err = store
        .put_tag_record(&TagRecord::unsigned(&again))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ReleaseTaken(_)), "{err}");
    assert_eq!(store.get_tag(&tag).await.unwrap(), digests[1]);
    assert_eq!(store.check_integrity(&[]).await.unwrap(), vec![]);

    // A record copied under another tag's key is not that tag's.
    let record = store.get_tag_record(&tag).await.unwrap();
    let other: TagRef = "billing:prod".parse().unwrap();
    objects
        .put(
            &Path::from(other.storage_key()),
            PutPayload::from(record.to_bytes()),
        )
        .await
        .unwrap();
    let err = store.get_tag(&other).await.unwrap_err();
    assert!(err.to_string().contains("hello:prod"), "{err}");
    let problems = store.check_integrity(&[]).await.unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].untrusted && problems[0].key == other.storage_key());

    // A bare digest from a thaw before releases reads as sequence 0, and
    // the next move continues from it.
    let legacy: TagRef = "hello:old".parse().unwrap();
    objects
        .put(
            &Path::from(legacy.storage_key()),
            PutPayload::from(digests[0].to_string()),
        )
        .await
        .unwrap();
    assert_eq!(store.get_tag(&legacy).await.unwrap(), digests[0]);
    let moved = store.set_tag(&legacy, &digests[1]).await.unwrap();
    assert_eq!(moved.sequence, 1);
}
