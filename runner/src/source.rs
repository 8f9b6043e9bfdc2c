//! Where a runner gets manifests and artifacts: a store it trusts (a local
//! directory or a bucket it owns), or a registry whose manifests must carry
//! a trusted signature. Either way the blob bytes are checked against the
//! manifest's digest before they reach the cache.

use std::path::Path;
use std::time::Duration;

use thaw_client::{ClientError, RegistryClient};
use thaw_core::signing::{PublicKey, TrustedKeys};
use thaw_core::{BlobRef, Digest, Manifest, Reference, TagRef};
use thaw_store::{ArtifactStore, StoreError};

use crate::RunError;

/// A source of verified manifests and blobs.
pub trait ArtifactSource: Send + Sync {
    /// The manifest `reference` names, verified.
    fn resolve(
        &self,
        reference: &Reference,
    ) -> impl Future<Output = Result<(Digest, Manifest), RunError>> + Send;

    /// Decodes `blob` into `out`, which is handed back only once its bytes
    /// were verified against the blob's digest.
    fn fetch_blob_into<W: std::io::Write + Send + 'static>(
        &self,
        blob: &BlobRef,
        out: W,
    ) -> impl Future<Output = Result<W, RunError>> + Send;
}

impl ArtifactSource for ArtifactStore {
    async fn resolve(&self, reference: &Reference) -> Result<(Digest, Manifest), RunError> {
        Ok(ArtifactStore::resolve(self, reference).await?)
    }

    async fn fetch_blob_into<W: std::io::Write + Send + 'static>(
        &self,
        blob: &BlobRef,
        out: W,
    ) -> Result<W, RunError> {
        Ok(self.get_blob_into(blob, out).await?)
    }
}

impl ArtifactSource for RegistryClient {
    async fn resolve(&self, reference: &Reference) -> Result<(Digest, Manifest), RunError> {
        Ok(RegistryClient::resolve(self, reference).await?)
    }

    async fn fetch_blob_into<W: std::io::Write + Send + 'static>(
        &self,
        blob: &BlobRef,
        out: W,
    ) -> Result<W, RunError> {
        Ok(RegistryClient::fetch_blob_into(self, blob, out).await?)
    }
}

/// How often a store's tag is read while waiting for it to move.
const STORE_POLL: Duration = Duration::from_millis(500);

/// A trusted store or a registry, chosen at run time.
#[derive(Clone, Debug)]
pub enum Source {
    /// A store read directly.
    Store(ArtifactStore),
    /// A registry; verified manifests are cached for outages.
    Registry(RegistryClient),
}

impl Source {
    /// The trusted store at `location`, or the default store.
    pub fn store(location: Option<&str>) -> Result<Self, StoreError> {
        ArtifactStore::open_or_default(location).map(Source::Store)
    }

    /// The registry at `url`, trusting manifests and releases signed by
    /// `keys`. Its verified manifests and the highest release seen per tag
    /// are kept under `cache_dir` (one folder per registry), so functions
    /// it served keep loading through an outage, and a rolled-back
    /// registry is refused across restarts.
    pub fn registry(
        url: &str,
        keys: Vec<PublicKey>,
        token: Option<String>,
        cache_dir: &Path,
        max_release_age: Option<Duration>,
    ) -> Result<Self, ClientError> {
        if keys.is_empty() {
            return Err(ClientError::NoTrustedKeys);
        }
        let client = RegistryClient::new(url, TrustedKeys::new(keys))?
            .with_token(token)
            .with_cache_root(cache_dir)
            .with_max_release_age(max_release_age);
        Ok(Source::Registry(client))
    }
}

impl Source {
    /// Waits up to `wait` for `tag` to point at a manifest other than
    /// `current`; returns it, or `None` if the tag did not move. A registry
    /// answers a long poll (and its release is checked as every release
    /// is); a store is read every half second.
    pub async fn wait_for_move(
        &self,
        tag: &TagRef,
        current: &Digest,
        wait: Duration,
    ) -> Result<Option<Digest>, RunError> {
        let moved = |digest: Digest| (digest != *current).then_some(digest);
        match self {
            Source::Registry(client) => Ok(moved(client.watch_tag(tag, wait).await?.manifest)),
            Source::Store(store) => {
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    if let Some(next) = moved(store.get_tag(tag).await?) {
                        return Ok(Some(next));
                    }
                    if tokio::time::Instant::now() + STORE_POLL > deadline {
                        return Ok(None);
                    }
                    tokio::time::sleep(STORE_POLL).await;
                }
            }
        }
    }
}

impl ArtifactSource for Source {
    async fn resolve(&self, reference: &Reference) -> Result<(Digest, Manifest), RunError> {
        match self {
            Source::Store(store) => ArtifactSource::resolve(store, reference).await,
            Source::Registry(client) => ArtifactSource::resolve(client, reference).await,
        }
    }

    async fn fetch_blob_into<W: std::io::Write + Send + 'static>(
        &self,
        blob: &BlobRef,
        out: W,
    ) -> Result<W, RunError> {
        match self {
            Source::Store(store) => ArtifactSource::fetch_blob_into(store, blob, out).await,
            Source::Registry(client) => ArtifactSource::fetch_blob_into(client, blob, out).await,
        }
    }
}
