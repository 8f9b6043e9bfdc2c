//! thaw's shared vocabulary, as plain data: what the builder, registry,
//! client and runner must agree on. It links neither wasmtime nor
//! `object_store`, so every crate can use it.
//!
//! - [`Digest`]: SHA-256 identities of blobs and manifests.
//! - [`Manifest`]: the record of one build, stored by its own digest.
//! - [`Reference`] and [`TagRef`]: `name:tag` and digest references, and
//!   where a tag lives in a store ([`TagRef::storage_key`]).
//! - [`target`]: the compilation targets thaw builds for.
//! - [`signing`]: ed25519 signatures of manifests and releases, and the keys
//!   runners trust.
//! - [`release`]: the signed, ordered record that a tag points at a manifest.
//! - [`api`]: the registry's wire types.
//! - [`abi`]: the names and wire formats a guest and its host share.
//! - [`settings`]: parsing of `KEY=VALUE` and duration settings.
//! - [`fs`]: the one way thaw writes a file others may read.
//! - [`error`]: boxed causes, and showing a cause chain on one line.
//!
//! ```
//! use thaw_core::{Digest, Reference};
//!
//! let digest = Digest::of(b"hello");
//! let reference: Reference = digest.to_string().parse().unwrap();
//! assert_eq!(reference, Reference::Digest(digest));
//! let tag: Reference = "team/api:prod".parse().unwrap();
//! assert_eq!(tag.to_string(), "team/api:prod");
//! ```

#![warn(missing_docs)]

pub mod abi;
pub mod api;
mod digest;
pub mod error;
pub mod fs;
mod manifest;
pub mod paths;
mod reference;
pub mod release;
pub mod settings;
pub mod signing;
pub mod target;

pub use digest::{Digest, InvalidDigest, Sha256Hasher};
pub use manifest::{
    Artifact, BlobDecoder, BlobError, BlobRef, BuildInfo, MANIFEST_SCHEMA, Manifest, ManifestError,
    ModuleKind, StepTiming, verify_manifest_bytes,
};
pub use reference::{DEFAULT_TAG, InvalidReference, Reference, TAGS_PREFIX, TagRef};
pub use target::{TargetProfile, UnsupportedTarget};

/// The thaw version, recorded in every manifest.
pub const THAW_VERSION: &str = env!("CARGO_PKG_VERSION");
