//! Tag moves: every move is a signed [`Release`] with the next sequence
//! number, stored in the tag's history and logged with the token that asked
//! for it. A push accepted earlier never replaces a release made for a push
//! accepted later, so a slow build that finishes after a newer push loses,
//! and says so.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use thaw_core::api::TagMoveRequest;
use thaw_core::release::{Release, ReleaseError, TagRecord};
use thaw_core::signing::TrustedKeys;
use thaw_core::{Digest, TagRef};
use thaw_store::StoreError;

use crate::{ApiError, Caller, Service, Shared};

/// One tag a push asked to move.
#[derive(Clone, Debug)]
pub(crate) struct TagMove {
    pub(crate) tag: TagRef,
    /// When the push was accepted: what orders competing moves.
    pub(crate) requested_at_ms: u64,
    /// The token's fingerprint.
    pub(crate) by: String,
}

impl TagMove {
    pub(crate) fn now(tag: TagRef, caller: &Caller) -> Self {
        Self {
            tag,
            requested_at_ms: now_ms(),
            by: caller.identity().to_string(),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This registry's own key, as the only trusted one.
fn ours(shared: &Shared) -> TrustedKeys {
    TrustedKeys::new(vec![shared.key.public()])
}

/// Whether the stored signature of `manifest` is a valid one by this
/// registry's key.
pub(crate) async fn signed_by_us(shared: &Shared, manifest: &Digest) -> Result<bool, StoreError> {
    let signature = shared.builder.store().get_signature(manifest).await?;
    Ok(ours(shared).verify(manifest, signature.as_ref()).is_ok())
}

/// Points each of `moves` at a manifest, signing the manifest first when
/// this process built it (`sign`); otherwise it must already carry this
/// registry's signature, so that a forged record or cache entry in the
/// bucket never gets signed or tagged. Tags move only after the signature
/// is stored, so a runner never resolves a tag to an unsigned manifest.
///
/// Returns why each move that lost to a later push was not made.
pub(crate) async fn publish(
    shared: &Shared,
    manifest: &Digest,
    moves: &[TagMove],
    sign: bool,
) -> Result<Vec<ReleaseError>, StoreError> {
    let store = shared.builder.store();
    if sign {
        store
            .put_signature(manifest, &shared.key.sign(manifest))
            .await?;
    } else if !signed_by_us(shared, manifest).await? {
        return Err(StoreError::Corrupt {
            what: format!("manifest {manifest}"),
            reason: "it is not signed by this registry's key".into(),
        });
    }
    let mut lost = Vec::new();
    for request in moves {
        if let Err(e) = move_one(shared, manifest, request).await? {
            tracing::warn!(tag = %request.tag, %manifest, by = %request.by, error = %e, "tag not moved");
            lost.push(e);
        }
    }
    Ok(lost)
}

/// The newest release of `tag` this registry signed: the one a move must
/// follow. Only signed releases count, so nothing written to the bucket
/// without the key can set the next sequence number or the order.
async fn newest_signed(shared: &Shared, tag: &TagRef) -> Result<Option<Release>, StoreError> {
    let ours = ours(shared);
    shared
        .builder
        .store()
        .newest_in_history(tag, |record| {
            record
                .verify(&ours)
                .ok()
                .filter(|release| release.name == tag.name() && release.tag == tag.tag())
        })
        .await
}

/// Makes and stores the release that follows the tag's newest one;
/// `Ok(Err(_))` when a later push already moved the tag.
async fn move_one(
    shared: &Shared,
    manifest: &Digest,
    request: &TagMove,
) -> Result<Result<TagRecord, ReleaseError>, StoreError> {
    let store = shared.builder.store();
    let _serialized = shared.tag_moves.lock().await;
    // Another registry process on the bucket may take the same sequence
    // number at the same moment: the history entry is created only once,
    // and the loser reads again.
    let mut attempts = 0;
    let record = loop {
        let previous = newest_signed(shared, &request.tag).await?;
        let release = match Release::after(
            previous.as_ref(),
            &request.tag,
            *manifest,
            request.requested_at_ms,
            Some(request.by.clone()),
        ) {
            Ok(release) => release,
            Err(e) => return Ok(Err(e)),
        };
        let record = TagRecord::signed(&release, &shared.key);
        match store.put_tag_record(&record).await {
            Ok(()) => break record,
            Err(StoreError::ReleaseTaken(_)) if attempts < 5 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    let release = record.release_unverified().expect("made just above");
    shared.tag_moves_seen.send_modify(|moves| *moves += 1);
    tracing::info!(
        tag = %request.tag,
        %manifest,
        sequence = release.sequence,
        by = %request.by,
        "tag moved"
    );
    Ok(Ok(record))
}

/// Signs the tags an older thaw wrote: bare digests, in tags that have no
/// release history, pointing at manifests this registry signed. Anything
/// else unsigned (an unsigned release record, a tag with history) is left
/// alone and logged: re-signing what someone wrote to the bucket would let
/// them choose a release. Returns how many were signed.
pub(crate) async fn sign_legacy_tags(shared: &Shared) -> Result<usize, StoreError> {
    let store = shared.builder.store();
    let mut signed = 0;
    let listing = store.list_tags().await?;
    for (tag, manifest) in &listing.tags {
        let (tag, manifest) = (tag.clone(), *manifest);
        let record = listing.record(&tag).expect("listed tags have records");
        if record.is_signed_by(&shared.key.public()) {
            continue;
        }
        // A bare digest reads as an unsigned release with sequence 0.
        let legacy = record.signature.is_none()
            && record.release_unverified().is_ok_and(|r| r.sequence == 0)
            && store.tag_history(&tag).await?.is_empty();
        if !legacy || !signed_by_us(shared, &manifest).await? {
            tracing::warn!(%tag, %manifest, "an unsigned tag that is not an older thaw's, or names a manifest this registry did not sign; left alone, and runners refuse it until it is pushed again");
            continue;
        }
        let release = Release::first(&tag, manifest, 0, None);
        store
            .put_tag_record(&TagRecord::signed(&release, &shared.key))
            .await?;
        tracing::info!(%tag, %manifest, "signed a tag written by an older thaw");
        signed += 1;
    }
    Ok(signed)
}

/// Point a tag at a manifest this registry already signed: a rollback to
/// an earlier release, or a promotion (`thaw tag`).
#[utoipa::path(put, path = "/v1/tags/{reference}", tag = "build",
    params(("reference" = String, Path, description = "`name:tag`")),
    request_body = TagMoveRequest,
    responses(
        (status = 200, description = "Moved: the new release", body = thaw_core::api::TagEntry),
        (status = 403, description = "The token's scopes do not cover the name", body = thaw_core::api::ErrorBody),
        (status = 404, description = "No such manifest", body = thaw_core::api::ErrorBody),
        (status = 409, description = "The manifest is not signed by this registry, or a later push moved the tag meanwhile", body = thaw_core::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn move_tag(
    State(service): State<Service>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    axum::Json(body): axum::Json<TagMoveRequest>,
) -> Result<Response, ApiError> {
    let shared = &service.0;
    let tag = crate::read::parse_tag(&reference)?;
    check_push_scope(&caller, &tag)?;
    shared.builder.store().get_manifest(&body.manifest).await?;
    if !signed_by_us(shared, &body.manifest).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "manifest {} is not signed by this registry; push its module instead",
                body.manifest
            ),
        ));
    }
    let request = TagMove::now(tag.clone(), &caller);
    let record = move_one(shared, &body.manifest, &request)
        .await?
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
    Ok(axum::Json(crate::read::entry(&tag, record)?).into_response())
}

/// The 403 for a tag outside the caller's scopes.
pub(crate) fn check_push_scope(caller: &Caller, tag: &TagRef) -> Result<(), ApiError> {
    if caller.may_push(tag.name()) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "token {} may push only {}, not {}",
            caller.identity(),
            caller.scopes(),
            tag.name()
        ),
    ))
}
