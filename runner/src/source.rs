//! Where a runner gets manifests and artifacts: a store it trusts (a local
//! directory or a bucket it owns), or a registry whose manifests must carry
//! a trusted signature. Either way the blob bytes are checked against the
//! manifest's digest before they reach the cache.

use bytes::Bytes;
use thaw_artifact::{ArtifactStore, BlobRef, Digest, Manifest, Reference};
use thaw_client::RegistryClient;

use crate::RunError;

/// A source of verified manifests and blobs.
pub trait ArtifactSource: Send + Sync {
    /// The manifest `reference` names, verified.
    fn resolve(
        &self,
        reference: &Reference,
    ) -> impl Future<Output = Result<(Digest, Manifest), RunError>> + Send;

    /// The decoded bytes of `blob`, verified against its digest.
    fn fetch_blob(&self, blob: &BlobRef) -> impl Future<Output = Result<Bytes, RunError>> + Send;
}

impl ArtifactSource for ArtifactStore {
    async fn resolve(&self, reference: &Reference) -> Result<(Digest, Manifest), RunError> {
        Ok(ArtifactStore::resolve(self, reference).await?)
    }

    async fn fetch_blob(&self, blob: &BlobRef) -> Result<Bytes, RunError> {
        Ok(self.get_blob(blob).await?)
    }
}

impl ArtifactSource for RegistryClient {
    async fn resolve(&self, reference: &Reference) -> Result<(Digest, Manifest), RunError> {
        Ok(RegistryClient::resolve(self, reference).await?)
    }

    async fn fetch_blob(&self, blob: &BlobRef) -> Result<Bytes, RunError> {
        Ok(RegistryClient::fetch_blob(self, blob).await?.raw)
    }
}
