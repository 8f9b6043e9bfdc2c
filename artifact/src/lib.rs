//! thaw's shared vocabulary: what the snapshotter, compiler, registry and
//! runner must agree on.
//!
//! - [`Digest`]: SHA-256 identities of blobs and manifests.
//! - [`Manifest`]: the record of one build, stored by its own digest.
//! - [`profile`]: the engine profile, the one definition of every wasmtime
//!   setting that must match between compiling and loading an artifact.
//! - [`ArtifactStore`]: the content-addressed store over `object_store`.
//! - [`sandbox`]: the WASI environment guests see at build and run time.
//! - [`signing`]: ed25519 signatures of manifests, and the keys runners trust.
//!
//! This crate links wasmtime's runtime but never its compiler, so the
//! runner can depend on it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use thaw_artifact::{ArtifactStore, Digest};
//!
//! let store = ArtifactStore::open("memory://").unwrap();
//! let blob = store.put_blob(b"hello".to_vec().into()).await.unwrap();
//! assert_eq!(blob.digest, Digest::of(b"hello"));
//! assert_eq!(&store.get_blob(&blob).await.unwrap()[..], b"hello");
//! # }
//! ```

#![warn(missing_docs)]

pub mod abi;
mod digest;
mod manifest;
pub mod paths;
pub mod profile;
mod reference;
pub mod sandbox;
pub mod signing;
mod store;

pub use digest::{Digest, InvalidDigest, Sha256Hasher};
pub use manifest::{
    Artifact, BlobRef, BuildInfo, MANIFEST_SCHEMA, Manifest, ManifestError, ModuleKind, StepTiming,
};
pub use profile::{TargetProfile, UnsupportedTarget};
pub use reference::{DEFAULT_TAG, InvalidReference, Reference, TagRef};
pub use store::{
    ArtifactStore, DEFAULT_S3_RETRY_TIMEOUT, DEFAULT_ZSTD_LEVEL, Record, StoreError, StoredBlob,
    decode_blob,
};

/// The thaw version, recorded in every manifest.
pub const THAW_VERSION: &str = env!("CARGO_PKG_VERSION");
