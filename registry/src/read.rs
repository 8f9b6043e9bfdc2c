//! The read API: tags, manifests (with their signatures) and blobs (with
//! `ETag`, immutable caching and `Range`, so an interrupted pull resumes).

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE,
    RANGE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use thaw_core::api::{MAX_TAG_WATCH, SIGNATURE_HEADER, TagEntry};
use thaw_core::release::TagRecord;
use thaw_core::{Digest, TagRef};

use crate::{ApiError, Reader, Service};

/// Content-addressed answers never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn parse_digest(text: &str) -> Result<Digest, ApiError> {
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("{text:?} is not a digest: {e}")))
}

fn etag(digest: &Digest) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{digest}\"")).expect("digests are header-safe")
}

/// A `name:tag` from a path, or 400.
pub(crate) fn parse_tag(text: &str) -> Result<TagRef, ApiError> {
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("{e}")))
}

/// A tag's answer: its release record and what it says.
pub(crate) fn entry(tag: &TagRef, release: TagRecord) -> Result<TagEntry, ApiError> {
    let parsed = release.release_unverified().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("tag {tag} is corrupt: {e}"),
        )
    })?;
    Ok(TagEntry {
        reference: tag.to_string(),
        manifest: parsed.manifest,
        sequence: parsed.sequence,
        release,
    })
}

/// Every tag the caller may read, with its release. A tag whose object is
/// corrupt is left out (and logged), so it hides no other.
#[utoipa::path(get, path = "/v1/tags", tag = "read",
    responses((status = 200, description = "Every tag in the token's scopes, sorted", body = [TagEntry])))]
pub async fn list_tags(
    State(service): State<Service>,
    Extension(reader): Extension<Reader>,
) -> Result<Response, ApiError> {
    let listing = service.0.builder.store().list_tags().await?;
    for (tag, e) in &listing.unreadable {
        tracing::warn!(%tag, error = %thaw_core::error::chain(e), "an unreadable tag left out of the list");
    }
    let mut entries = Vec::new();
    for (tag, _) in &listing.tags {
        if !reader.may_pull(tag.name()) {
            continue;
        }
        let record = listing.record(tag).expect("listed tags have records");
        entries.push(entry(tag, record.clone())?);
    }
    Ok(axum::Json(entries).into_response())
}

/// How often a held watch re-reads the store, for moves made by other
/// registry processes (moves made by this one wake it at once).
const WATCH_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// A tag read that may wait for the tag to move.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Watch {
    /// Hold the answer until the tag's release sequence is above this.
    after: Option<u64>,
    /// How long to hold it (`20s`, `500ms`; at most 25 s). Then the
    /// current release is answered, moved or not.
    wait: Option<String>,
}

/// A tag's current release; with `after`, a long poll that answers as soon
/// as the tag moves past that sequence (edge runners use it to deploy new
/// versions within a second or two).
#[utoipa::path(get, path = "/v1/tags/{reference}", tag = "read",
    params(("reference" = String, Path, description = "`name:tag`, e.g. `hello:v1` or `team/api:prod`"), Watch),
    responses(
        (status = 200, description = "The tag and its signed release", body = TagEntry),
        (status = 400, description = "Not a `name:tag` reference", body = thaw_core::api::ErrorBody),
        (status = 403, description = "The token's scopes do not cover the name", body = thaw_core::api::ErrorBody),
        (status = 404, description = "No such tag (the message names it)", body = thaw_core::api::ErrorBody)))]
pub async fn get_tag(
    State(service): State<Service>,
    Extension(reader): Extension<Reader>,
    Path(reference): Path<String>,
    axum::extract::Query(watch): axum::extract::Query<Watch>,
) -> Result<Response, ApiError> {
    let tag = parse_tag(&reference)?;
    if !reader.may_pull(tag.name()) {
        return Err(reader.refuse(tag.name()));
    }
    let store = service.0.builder.store();
    let mut current = entry(&tag, store.get_tag_record(&tag).await?)?;
    if let Some(after) = watch.after {
        let wait = match &watch.wait {
            Some(text) => thaw_core::settings::parse_duration(text)
                .map_err(|e| ApiError::bad_request(format!("wait: {e}")))?,
            None => MAX_TAG_WATCH,
        };
        let deadline = tokio::time::Instant::now() + wait.min(MAX_TAG_WATCH);
        let mut moves = service.0.tag_moves_seen.subscribe();
        while current.sequence <= after && tokio::time::Instant::now() < deadline {
            let poll = deadline.min(tokio::time::Instant::now() + WATCH_POLL);
            let _ = tokio::time::timeout_at(poll, moves.changed()).await;
            current = entry(&tag, store.get_tag_record(&tag).await?)?;
        }
    }
    Ok(axum::Json(current).into_response())
}

/// Every release a tag has had, newest first: what an operator rolls back
/// to with `PUT /v1/tags/{reference}` (`thaw tag`).
#[utoipa::path(get, path = "/v1/history/{reference}", tag = "read",
    params(("reference" = String, Path, description = "`name:tag`")),
    responses(
        (status = 200, description = "The tag's releases, newest first", body = [TagEntry]),
        (status = 403, description = "The token's scopes do not cover the name", body = thaw_core::api::ErrorBody)))]
pub async fn tag_history(
    State(service): State<Service>,
    Extension(reader): Extension<Reader>,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let tag = parse_tag(&reference)?;
    if !reader.may_pull(tag.name()) {
        return Err(reader.refuse(tag.name()));
    }
    let records = service.0.builder.store().tag_history(&tag).await?;
    let entries = records
        .into_iter()
        .map(|record| entry(&tag, record))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(entries).into_response())
}

/// A manifest by digest, with the registry's signature in the
/// `thaw-signature` header.
#[utoipa::path(get, path = "/v1/manifests/{digest}", tag = "read",
    params(("digest" = String, Path, description = "`sha256:<hex>`")),
    responses(
        (status = 200, description = "The manifest's exact bytes (JSON). Header `thaw-signature`: `ed25519:<key hex>:<signature hex>`; `ETag`: the digest", content_type = "application/json"),
        (status = 404, description = "No such manifest", body = thaw_core::api::ErrorBody)))]
pub async fn get_manifest(
    State(service): State<Service>,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    let digest = parse_digest(&digest)?;
    let store = service.0.builder.store();
    let bytes = store.get_manifest_bytes(&digest).await?;
    let signature = store.get_signature(&digest).await?;
    service.0.metrics.served("manifest", bytes.len() as u64);
    let mut response = (
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
            (ETAG, etag(&digest)),
        ],
        bytes,
    )
        .into_response();
    if let Some(signature) = signature {
        let value = HeaderValue::from_str(&signature.to_string()).expect("signatures are hex");
        response.headers_mut().insert(SIGNATURE_HEADER, value);
    }
    Ok(response)
}

/// The byte range a `Range` header asks for: a single `bytes=N-` or
/// `bytes=N-M`. Anything else is served whole, as RFC 9110 allows.
fn requested_range(headers: &HeaderMap, digest: &Digest) -> Option<(u64, Option<u64>)> {
    if let Some(if_range) = headers.get(IF_RANGE)
        && if_range != etag(digest)
    {
        return None;
    }
    let spec = headers.get(RANGE)?.to_str().ok()?.strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        end => Some(end.parse::<u64>().ok()?),
    };
    Some((start, end))
}

/// A blob's stored (zstd) bytes. Clients decode them and check the digest
/// against a signed manifest; the registry does not vouch for them.
#[utoipa::path(get, path = "/v1/blobs/{digest}", tag = "read",
    params(
        ("digest" = String, Path, description = "`sha256:<hex>` of the decoded bytes"),
        ("Range" = Option<String>, Header, description = "`bytes=N-` or `bytes=N-M`, to resume a download"),
        ("If-Range" = Option<String>, Header, description = "The blob's ETag; the range is ignored if it differs")),
    responses(
        (status = 200, description = "The whole blob, zstd-compressed. `ETag`: the digest; cached as immutable", content_type = "application/zstd"),
        (status = 206, description = "The requested range, with `Content-Range`", content_type = "application/zstd"),
        (status = 404, description = "No such blob", body = thaw_core::api::ErrorBody),
        (status = 416, description = "The range starts past the end", body = thaw_core::api::ErrorBody)))]
pub async fn get_blob(
    State(service): State<Service>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let digest = parse_digest(&digest)?;
    let store = service.0.builder.store();
    let range = match requested_range(&headers, &digest) {
        Some((start, end)) => {
            let size = store
                .stored_blob_size(&digest)
                .await?
                .ok_or_else(|| thaw_store::StoreError::NotFound(format!("blob {digest}")))?;
            let end = end.map_or(size, |end| end.saturating_add(1).min(size));
            if start >= end {
                let mut response = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("blob {digest} has {size} bytes; the range starts at {start}"),
                )
                .into_response();
                response.headers_mut().insert(
                    CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
                );
                return Ok(response);
            }
            Some(start..end)
        }
        None => None,
    };
    let partial = range.is_some();
    let blob = store.stored_blob(&digest, range).await?;
    let metrics = service.clone();
    let body = blob.bytes.map(move |chunk| {
        if let Ok(bytes) = &chunk {
            metrics.0.metrics.served("blob", bytes.len() as u64);
        }
        chunk
    });
    let mut response = Response::new(Body::from_stream(body));
    let out = response.headers_mut();
    out.insert(CONTENT_TYPE, HeaderValue::from_static("application/zstd"));
    out.insert(CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    out.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(ETAG, etag(&digest));
    out.insert(
        CONTENT_LENGTH,
        HeaderValue::from(blob.range.end - blob.range.start),
    );
    if partial {
        out.insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&format!(
                "bytes {}-{}/{}",
                blob.range.start,
                blob.range.end - 1,
                blob.size
            ))
            .expect("ascii"),
        );
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

/// A blob's size and ETag, without its bytes.
#[utoipa::path(head, path = "/v1/blobs/{digest}", tag = "read",
    params(("digest" = String, Path, description = "`sha256:<hex>`")),
    responses(
        (status = 200, description = "Present; `Content-Length` is the stored size"),
        (status = 404, description = "No such blob")))]
pub async fn head_blob(
    State(service): State<Service>,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    let digest = parse_digest(&digest)?;
    let size = service
        .0
        .builder
        .store()
        .stored_blob_size(&digest)
        .await?
        .ok_or_else(|| thaw_store::StoreError::NotFound(format!("blob {digest}")))?;
    Ok((
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/zstd")),
            (CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
            (ACCEPT_RANGES, HeaderValue::from_static("bytes")),
            (ETAG, etag(&digest)),
            (CONTENT_LENGTH, HeaderValue::from(size)),
        ],
        Body::empty(),
    )
        .into_response())
}
