//! Per-tenant store quotas. A tenant is a token ([`Caller::identity`]);
//! each build it causes (not a cache hit) adds the stored size of the
//! build's blobs to its usage record. A submission from a tenant at or over
//! its quota is refused with 507 before its upload is read.
//!
//! The quota is soft: registry processes sharing a bucket update the record
//! without a lock, so concurrent builds can overshoot it by what they
//! store, and a blob shared with another build is counted for each. Usage
//! never decreases on its own: an operator resets a tenant by deleting its
//! record (`usage/<hex>`, where `<hex>` is the SHA-256 of the identity).

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use thaw_core::error::chain;
use thaw_core::{Digest, Manifest};
use thaw_store::RecordKind;

use crate::{ApiError, Caller, Shared};

/// What each tenant has stored.
pub(crate) const USAGE: RecordKind = RecordKind::new("usage");

#[derive(Default, Serialize, Deserialize)]
struct Usage {
    tenant: String,
    stored_bytes: u64,
    builds: u64,
}

fn record_id(tenant: &str) -> Digest {
    Digest::of(tenant.as_bytes())
}

async fn usage(shared: &Shared, tenant: &str) -> Result<Usage, thaw_store::StoreError> {
    let stored = shared
        .builder
        .store()
        .get_record(USAGE, &record_id(tenant))
        .await?;
    // An unreadable record counts as empty rather than locking the tenant
    // out; it is rewritten at the next build.
    Ok(stored
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| Usage {
            tenant: tenant.to_string(),
            ..Usage::default()
        }))
}

/// Refuses a tenant at or over its quota with 507.
pub(crate) async fn admit(shared: &Shared, caller: &Caller) -> Result<(), ApiError> {
    let Some(quota) = shared.config.tenant_quota else {
        return Ok(());
    };
    let used = usage(shared, caller.identity()).await?;
    if used.stored_bytes < quota {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        format!(
            "tenant {} has stored {} MiB in {} builds, its quota is {} MiB; ask the operator to \
             raise or reset it",
            caller.identity(),
            used.stored_bytes >> 20,
            used.builds,
            quota >> 20
        ),
    ))
}

/// Adds a new build's stored bytes to `tenant`'s usage.
pub(crate) async fn charge(shared: &Shared, tenant: &str, manifest: &Manifest) {
    let added: u64 = manifest.blobs().map(|blob| blob.compressed_size).sum();
    let result = async {
        let mut used = usage(shared, tenant).await?;
        used.stored_bytes = used.stored_bytes.saturating_add(added);
        used.builds += 1;
        let bytes = serde_json::to_vec(&used).expect("usage serializes");
        shared
            .builder
            .store()
            .put_record(USAGE, &record_id(tenant), bytes.into())
            .await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(%tenant, error = %chain(&e), "could not record the tenant's usage");
    }
}
