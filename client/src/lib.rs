//! A client for thaw's registry that trusts nothing it downloads until it
//! has checked it.
//!
//! - Manifests are accepted only with a valid signature by one of the
//!   [`TrustedKeys`], and only if their bytes hash to the digest asked for.
//! - Blobs are decoded and hashed against the signed manifest before they
//!   are returned; a download cut off midway resumes with an HTTP `Range`
//!   request, and the partial bytes are never handed out.
//! - A tag resolves only through a signed [`Release`] that names that tag
//!   and a sequence no lower than the highest this client accepted before
//!   for it, so a registry or bucket rolled back to an older, validly
//!   signed state is refused (and, with
//!   [`RegistryClient::with_max_release_age`], a release that is too old).
//! - With [`RegistryClient::with_cache_root`], every verified manifest and
//!   release is kept on disk, so a runner restarted during a registry
//!   outage still resolves what it ran before (re-verifying the cached
//!   signatures), and the highest release seen survives restarts.
//!
//! ```no_run
//! # async fn demo() -> Result<(), thaw_client::ClientError> {
//! use thaw_core::signing::TrustedKeys;
//! use thaw_client::RegistryClient;
//!
//! let key = "ed25519:3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
//! let trusted = TrustedKeys::new(vec![key.parse()?]);
//! let registry = RegistryClient::new("http://127.0.0.1:7070", trusted)?;
//! let (digest, manifest) = registry.resolve(&"hello:v1".parse().unwrap()).await?;
//! let blob = registry.fetch_blob(&manifest.artifacts[0].blob).await?;
//! println!("{digest}: {} bytes", blob.raw.len());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod push;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, RANGE, RETRY_AFTER};
use thaw_core::api::{ErrorBody, SIGNATURE_HEADER, TagEntry};
use thaw_core::error::chain;
use thaw_core::release::{Release, ReleaseError, TagRecord};
use thaw_core::signing::{Signature, SignatureError, TrustedKeys};
use thaw_core::{BlobError, BlobRef, Digest, Manifest, ManifestError, Reference, TagRef};

pub use push::PushRequest;

/// How many times a download is resumed before giving up.
const MAX_RESUMES: usize = 4;

/// The largest manifest a client reads; real ones are a few KiB.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The largest JSON answer (a tag list, a build status) a client reads.
pub const MAX_JSON_BYTES: usize = 16 << 20;
/// The most of an error answer a client reads; the rest is cut.
const MAX_ERROR_BYTES: usize = 64 << 10;
/// The most a client reads of one build's event stream.
pub const MAX_EVENT_STREAM_BYTES: usize = 16 << 20;

/// Default [`ClientTimeouts::read`].
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ClientTimeouts::request`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a client waits on a registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// The longest silence while reading any answer (a blob, an event
    /// stream); the registry's event streams send a keep-alive every 15 s.
    /// Uploads are exempt: the registry bounds them with its body timeout.
    /// `THAW_REGISTRY_READ_TIMEOUT` overrides it.
    pub read: Duration,
    /// The whole of a small request: a tag, a tag list, a manifest, a
    /// build's status. `THAW_REGISTRY_REQUEST_TIMEOUT` overrides it.
    pub request: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            read: DEFAULT_READ_TIMEOUT,
            request: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl ClientTimeouts {
    /// The defaults, overridden by `THAW_REGISTRY_READ_TIMEOUT` and
    /// `THAW_REGISTRY_REQUEST_TIMEOUT` (`30s`, `500ms`, ...).
    pub fn from_env() -> Result<Self, ClientError> {
        let mut timeouts = Self::default();
        for (name, slot) in [
            ("THAW_REGISTRY_READ_TIMEOUT", &mut timeouts.read),
            ("THAW_REGISTRY_REQUEST_TIMEOUT", &mut timeouts.request),
        ] {
            if let Ok(text) = std::env::var(name) {
                *slot = thaw_core::settings::parse_duration(&text)
                    .map_err(|reason| ClientError::InvalidSetting { name, reason })?;
            }
        }
        Ok(timeouts)
    }
}

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The registry address is not an `http://` or `https://` URL.
    #[error("invalid registry URL {0:?}: expected http://host[:port] or https://...")]
    InvalidUrl(String),
    /// An environment setting does not parse.
    #[error("{name}: {reason}")]
    InvalidSetting {
        /// The variable.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The registry sent more than a client reads of that kind of answer.
    #[error("{url}: the answer is larger than the {limit}-byte limit for it")]
    TooLarge {
        /// The request.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// No trusted key is configured, so no manifest could be accepted.
    #[error("no trusted registry key: pass --trust-key ed25519:<hex> (printed by `thaw keygen`)")]
    NoTrustedKeys,
    /// The registry could not be reached, or the connection broke.
    #[error("{url}: {source}")]
    Transport {
        /// The request.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The registry answered with an error.
    #[error("{url}: {status}: {message}")]
    Status {
        /// The request.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's message.
        message: String,
        /// How long the registry asked clients to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The signature check failed.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A tag's release is unsigned, for another tag, a rollback, or too old.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// A manifest failed verification or does not parse.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A downloaded blob failed verification.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The registry answered something that does not follow the protocol.
    #[error("{url}: {reason}")]
    Protocol {
        /// The request.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The local manifest cache failed.
    #[error("manifest cache {path}: {source}")]
    Cache {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ClientError {
    /// Whether the registry said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { status: 404, .. })
    }

    /// Whether the registry refused the token for this name.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Status { status: 403, .. })
    }

    /// Whether the registry was unreachable or failing, rather than the
    /// request being wrong: worth a retry, or a fall-back to the cache.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// A blob's bytes, verified against the manifest's digest.
#[derive(Clone, Debug)]
pub struct VerifiedBlob {
    /// The stored (zstd) bytes as downloaded.
    pub compressed: Bytes,
    /// The decoded bytes; their SHA-256 is the blob's digest.
    pub raw: Bytes,
}

/// A client of one registry. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    /// For uploads: reqwest's read timeout runs from the first byte sent,
    /// so a large module on a slow link would trip it; the registry bounds
    /// an upload with its own body timeout instead.
    uploads: reqwest::Client,
    timeouts: ClientTimeouts,
    token: Option<String>,
    trusted: TrustedKeys,
    cache_dir: Option<PathBuf>,
    /// Where the highest release seen per tag is kept on disk.
    release_dir: Option<PathBuf>,
    max_release_age: Option<Duration>,
    /// The newest release accepted per tag by this client (and its
    /// clones); with a cache directory, also kept on disk.
    seen: Arc<Mutex<HashMap<TagRef, Release>>>,
}

impl RegistryClient {
    /// A client of the registry at `base` (`http://host:port`), accepting
    /// manifests signed by `trusted` keys, with [`ClientTimeouts::from_env`].
    pub fn new(base: &str, trusted: TrustedKeys) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::InvalidUrl(base));
        }
        let timeouts = ClientTimeouts::from_env()?;
        Ok(Self {
            http: http_client(&base, Some(timeouts.read))?,
            uploads: http_client(&base, None)?,
            base,
            timeouts,
            token: None,
            trusted,
            cache_dir: None,
            release_dir: None,
            max_release_age: None,
            seen: Arc::default(),
        })
    }

    /// Waits on the registry as `timeouts` say.
    pub fn with_timeouts(mut self, timeouts: ClientTimeouts) -> Result<Self, ClientError> {
        self.http = http_client(&self.base, Some(timeouts.read))?;
        self.timeouts = timeouts;
        Ok(self)
    }

    /// Sends `token` as a bearer token with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// Keeps verified manifests under `<root>/registries/<hash of the
    /// URL>` and falls back to them when the registry is unavailable; keeps
    /// the highest release seen per tag under `<root>/releases/<hash of
    /// the trusted keys>`, so the rollback floor holds across restarts and
    /// across every address of one registry (a fleet shares its key).
    pub fn with_cache_root(mut self, root: &Path) -> Self {
        let url = Digest::of(self.base.as_bytes()).short();
        self.cache_dir = Some(root.join("registries").join(url));
        let keys = self.trusted.fingerprint().short();
        self.release_dir = Some(root.join("releases").join(keys));
        self
    }

    /// Refuses releases made longer than `max_age` ago (none: no limit).
    pub fn with_max_release_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_release_age = max_age;
        self
    }

    /// The registry's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.authorize(self.http.get(url))
    }

    /// A GET for a small answer, bounded in time as a whole.
    fn get_small(&self, url: &str) -> reqwest::RequestBuilder {
        self.get(url).timeout(self.timeouts.request)
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request and turns an error status into [`ClientError::Status`].
    async fn send(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let transport = |source| ClientError::Transport {
            url: url.to_string(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_of(url, response).await)
    }

    /// Resolves a reference to a manifest whose digest and signature are
    /// verified. Falls back to the local cache when the registry is
    /// unavailable and a cache directory is set.
    pub async fn resolve(&self, reference: &Reference) -> Result<(Digest, Manifest), ClientError> {
        match self.resolve_remote(reference).await {
            Err(e) if e.is_unavailable() && self.cache_dir.is_some() => {
                match self.resolve_cached(reference)? {
                    Some(found) => {
                        tracing::warn!(%reference, error = %chain(&e), "registry unavailable; using the cached manifest");
                        Ok(found)
                    }
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    async fn resolve_remote(
        &self,
        reference: &Reference,
    ) -> Result<(Digest, Manifest), ClientError> {
        let digest = match reference {
            Reference::Digest(digest) => *digest,
            Reference::Tag(tag) => self.tag(tag).await?.0.manifest,
        };
        let (manifest, bytes, signature) = self.manifest(&digest).await?;
        if let Some(dir) = &self.cache_dir {
            cache::store_manifest(dir, &digest, &bytes, &signature)?;
        }
        Ok((digest, manifest))
    }

    fn resolve_cached(
        &self,
        reference: &Reference,
    ) -> Result<Option<(Digest, Manifest)>, ClientError> {
        let Some(dir) = &self.cache_dir else {
            return Ok(None);
        };
        let digest = match reference {
            Reference::Digest(digest) => *digest,
            Reference::Tag(tag) => match self.highest_seen(&mut self.seen.lock().unwrap(), tag)? {
                Some(release) => {
                    release.check(tag, None, self.max_release_age)?;
                    release.manifest
                }
                None => return Ok(None),
            },
        };
        let Some((bytes, signature)) = cache::load_manifest(dir, &digest)? else {
            return Ok(None);
        };
        Ok(Some((
            digest,
            self.verify_manifest(&digest, &bytes, &signature)?,
        )))
    }

    /// The newest release of `tag` this client accepted: in `seen`, else
    /// from the cache directory (its signature checked again, then kept in
    /// `seen`).
    fn highest_seen(
        &self,
        seen: &mut HashMap<TagRef, Release>,
        tag: &TagRef,
    ) -> Result<Option<Release>, ClientError> {
        if let Some(release) = seen.get(tag) {
            return Ok(Some(release.clone()));
        }
        let Some(dir) = &self.release_dir else {
            return Ok(None);
        };
        let Some(record) = cache::load_release(dir, tag)? else {
            return Ok(None);
        };
        // Only this client's account writes its cache; a record that no
        // longer verifies is a bug or a disk fault, and is then ignored.
        match record.verify(&self.trusted) {
            Ok(release) if release.check(tag, None, None).is_ok() => {
                seen.insert(tag.clone(), release.clone());
                Ok(Some(release))
            }
            _ => {
                tracing::warn!(%tag, "a cached release does not verify; ignoring it");
                Ok(None)
            }
        }
    }

    /// The current release of a tag: its signature verified, checked to
    /// name `tag`, to be no older than the highest release of `tag` this
    /// client accepted before, and (with a maximum age) recent enough.
    /// It becomes the highest seen. Returns the record too, as signed.
    pub async fn tag(&self, tag: &TagRef) -> Result<(Release, TagRecord), ClientError> {
        if self.trusted.is_empty() {
            return Err(ClientError::NoTrustedKeys);
        }
        let url = self.url(&format!("/v1/tags/{tag}"));
        let response = self.send(&url, self.get_small(&url)).await?;
        let entry: TagEntry = json(&url, response).await?;
        self.accept(tag, entry)
    }

    /// Waits up to `wait` (at most 25 s) for `tag` to get a release newer
    /// than the highest this client has seen (a long poll), and returns
    /// the tag's current release, verified and checked like
    /// [`RegistryClient::tag`]: newer if it moved, the same if not.
    pub async fn watch_tag(&self, tag: &TagRef, wait: Duration) -> Result<Release, ClientError> {
        if self.trusted.is_empty() {
            return Err(ClientError::NoTrustedKeys);
        }
        let after = self
            .highest_seen(&mut self.seen.lock().unwrap(), tag)?
            .map_or(0, |r| r.sequence);
        let wait = wait.min(thaw_core::api::MAX_TAG_WATCH);
        let url = self.url(&format!(
            "/v1/tags/{tag}?after={after}&wait={}ms",
            wait.as_millis()
        ));
        let request = self.get(&url).timeout(wait + self.timeouts.request);
        let response = self.send(&url, request).await?;
        let entry: TagEntry = json(&url, response).await?;
        Ok(self.accept(tag, entry)?.0)
    }

    /// Verifies and checks a tag's release, and remembers it as the highest
    /// seen.
    fn accept(&self, tag: &TagRef, entry: TagEntry) -> Result<(Release, TagRecord), ClientError> {
        let release = entry.release.verify(&self.trusted)?;
        // One lock from the check to the update, so that two answers
        // accepted at once cannot lower the floor.
        let mut seen = self.seen.lock().unwrap();
        let highest = self.highest_seen(&mut seen, tag)?;
        release.check(tag, highest.as_ref(), self.max_release_age)?;
        if highest.as_ref() != Some(&release) {
            if let Some(dir) = &self.release_dir {
                cache::store_release(dir, tag, &entry.release)?;
            }
            seen.insert(tag.clone(), release.clone());
        }
        Ok((release, entry.release))
    }

    /// Every release `tag` has had, newest first, each signature verified
    /// and checked to name `tag`.
    pub async fn tag_history(&self, tag: &TagRef) -> Result<Vec<Release>, ClientError> {
        if self.trusted.is_empty() {
            return Err(ClientError::NoTrustedKeys);
        }
        let url = self.url(&format!("/v1/history/{tag}"));
        let response = self.send(&url, self.get_small(&url)).await?;
        let entries: Vec<TagEntry> = json(&url, response).await?;
        entries
            .iter()
            .map(|entry| {
                let release = entry.release.verify(&self.trusted)?;
                release.check(tag, None, None)?;
                Ok(release)
            })
            .collect()
    }

    /// Points `tag` at a manifest the registry already signed (needs a
    /// token whose scopes cover the name). Returns the new release,
    /// verified, which becomes the highest seen.
    pub async fn move_tag(&self, tag: &TagRef, manifest: &Digest) -> Result<Release, ClientError> {
        if self.trusted.is_empty() {
            return Err(ClientError::NoTrustedKeys);
        }
        let url = self.url(&format!("/v1/tags/{tag}"));
        let request = self
            .authorize(self.http.put(&url))
            .timeout(self.timeouts.request)
            .json(&thaw_core::api::TagMoveRequest {
                manifest: *manifest,
            });
        let response = self.send(&url, request).await?;
        let (release, _) = self.accept(tag, json(&url, response).await?)?;
        Ok(release)
    }

    /// Every tag the registry holds.
    pub async fn tags(&self) -> Result<Vec<TagEntry>, ClientError> {
        let url = self.url("/v1/tags");
        let response = self.send(&url, self.get_small(&url)).await?;
        json(&url, response).await
    }

    /// A manifest by digest, verified: its bytes, and its signature.
    pub async fn manifest(
        &self,
        digest: &Digest,
    ) -> Result<(Manifest, Bytes, Signature), ClientError> {
        if self.trusted.is_empty() {
            return Err(ClientError::NoTrustedKeys);
        }
        let url = self.url(&format!("/v1/manifests/{digest}"));
        let response = self.send(&url, self.get_small(&url)).await?;
        let signature = response
            .headers()
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::parse::<Signature>)
            .transpose()?;
        let bytes = read_capped(&url, response, MAX_MANIFEST_BYTES).await?;
        let signature = signature.ok_or(SignatureError::Unsigned(*digest))?;
        let manifest = self.verify_manifest(digest, &bytes, &signature)?;
        Ok((manifest, bytes, signature))
    }

    fn verify_manifest(
        &self,
        digest: &Digest,
        bytes: &[u8],
        signature: &Signature,
    ) -> Result<Manifest, ClientError> {
        self.trusted.verify(digest, Some(signature))?;
        Ok(Manifest::from_verified_bytes(digest, bytes)?)
    }

    /// Downloads a blob and verifies it against `blob` (from a verified
    /// manifest). A broken download resumes where it stopped, up to
    /// five attempts; nothing unverified is ever returned.
    pub async fn fetch_blob(&self, blob: &BlobRef) -> Result<VerifiedBlob, ClientError> {
        let mut buffer = Vec::with_capacity(blob.compressed_size as usize);
        self.download_resuming(blob, &mut |chunk| {
            buffer.extend_from_slice(&chunk);
            true
        })
        .await?;
        let compressed = Bytes::from(buffer);
        let expected = blob.clone();
        let check = compressed.clone();
        let raw = tokio::task::spawn_blocking(move || expected.decode(&check))
            .await
            .expect("decoding does not panic")?;
        Ok(VerifiedBlob { compressed, raw })
    }

    /// Downloads a blob, decoding it into `out` on a blocking thread as
    /// its bytes arrive, so decoding and hashing overlap the transfer.
    /// `out` is handed back only once its bytes have been verified against
    /// `blob`; on an error it is dropped holding unverified bytes, so it
    /// should be somewhere nothing else reads (a temporary file).
    pub async fn fetch_blob_into<W>(&self, blob: &BlobRef, out: W) -> Result<W, ClientError>
    where
        W: std::io::Write + Send + 'static,
    {
        // Unbounded, but never beyond the blob's compressed size: the
        // download refuses more.
        let (chunks, mut arriving) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let mut decoder = blob.decoder(out);
        let decoding = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = arriving.blocking_recv() {
                decoder.write(&chunk)?;
            }
            decoder.finish()
        });
        let downloaded = self
            .download_resuming(blob, &mut |chunk| chunks.send(chunk).is_ok())
            .await;
        drop(chunks);
        let decoded = decoding.await.expect("decoding does not panic");
        // A download that failed explains a short blob better than its
        // digest; one stopped by a decoding error ends without error.
        downloaded?;
        Ok(decoded?)
    }

    /// Downloads a blob's stored bytes into `sink`, resuming a broken
    /// transfer where it stopped. `sink` returns false to stop early.
    async fn download_resuming(
        &self,
        blob: &BlobRef,
        sink: &mut (dyn FnMut(Bytes) -> bool + Send),
    ) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/blobs/{}", blob.digest));
        // Shared by the attempts: each resumes where the last one stopped.
        let progress = tokio::sync::Mutex::new((0u64, sink));
        let download = || async {
            let (received, sink) = &mut *progress.lock().await;
            self.download(&url, blob, received, &mut **sink).await
        };
        download
            .retry(resume_backoff())
            .when(ClientError::is_unavailable)
            .notify(|e, wait| {
                tracing::warn!(%url, ?wait, error = %chain(e), "download interrupted; resuming");
            })
            .await
    }

    /// Passes the rest of the blob to `sink`, asking only for the bytes
    /// after the `received` it already has.
    async fn download(
        &self,
        url: &str,
        blob: &BlobRef,
        received: &mut u64,
        sink: &mut (dyn FnMut(Bytes) -> bool + Send),
    ) -> Result<(), ClientError> {
        let mut request = self.get(url);
        if *received > 0 {
            // If-Range: a blob never changes, but a registry serving other
            // bytes under the same name must not be spliced onto ours.
            request = request
                .header(RANGE, format!("bytes={received}-"))
                .header(IF_RANGE, format!("\"{}\"", blob.digest));
        }
        let response = self.send(url, request).await?;
        let protocol = |reason: String| ClientError::Protocol {
            url: url.to_string(),
            reason,
        };
        // Bytes at the start of the body that `sink` already has: all of
        // them when the registry ignored the range and sent the whole blob.
        let mut skip = 0;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let start = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(*received) {
                    return Err(protocol(format!(
                        "asked for bytes from {received}, got Content-Range {start:?}"
                    )));
                }
            }
            _ => skip = *received,
        }
        if let Some(etag) = response.headers().get(ETAG)
            && etag.as_bytes() != format!("\"{}\"", blob.digest).as_bytes()
        {
            return Err(protocol(format!("ETag {etag:?} is not the blob's digest")));
        }
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|source| ClientError::Transport {
                url: url.to_string(),
                source,
            })?;
            let already = skip.min(chunk.len() as u64);
            skip -= already;
            let _ = chunk.split_to(already as usize);
            if *received + chunk.len() as u64 > blob.compressed_size {
                return Err(protocol(format!(
                    "blob {} is larger than the {} bytes its manifest gives",
                    blob.digest, blob.compressed_size
                )));
            }
            if chunk.is_empty() {
                continue;
            }
            *received += chunk.len() as u64;
            if !sink(chunk) {
                break;
            }
        }
        Ok(())
    }
}

/// How an interrupted download is resumed: up to four more attempts,
/// 400 ms apart at first, doubling.
fn resume_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(400))
        .with_max_times(MAX_RESUMES)
}

/// The [`ClientError::Status`] of an error answer, with the registry's message.
async fn error_of(url: &str, response: reqwest::Response) -> ClientError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let message = match read_capped(url, response, MAX_ERROR_BYTES).await {
        Ok(body) => serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned()),
        Err(e) => format!("(no readable message: {})", chain(&e)),
    };
    ClientError::Status {
        url: url.to_string(),
        status,
        message,
        retry_after,
    }
}

/// A reqwest client for `base`: a connect timeout, a read timeout when
/// given, and thaw's user agent.
fn http_client(base: &str, read: Option<Duration>) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("thaw/", env!("CARGO_PKG_VERSION")));
    if let Some(read) = read {
        builder = builder.read_timeout(read);
    }
    builder.build().map_err(|source| ClientError::Transport {
        url: base.to_string(),
        source,
    })
}

/// The whole body of `response`, refused as soon as it is known to be
/// larger than `limit`: a hostile registry cannot make a client buffer
/// without bound.
async fn read_capped(
    url: &str,
    response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, ClientError> {
    let too_large = || ClientError::TooLarge {
        url: url.to_string(),
        limit,
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|source| ClientError::Transport {
            url: url.to_string(),
            source,
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

async fn json<T: serde::de::DeserializeOwned>(
    url: &str,
    response: reqwest::Response,
) -> Result<T, ClientError> {
    let bytes = read_capped(url, response, MAX_JSON_BYTES).await?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
        url: url.to_string(),
        reason: format!("unexpected answer: {e}"),
    })
}

/// The on-disk cache of verified manifests, for registry outages. Files are
/// written atomically, and every load re-verifies the signature and digest,
/// so the cache itself is not trusted.
mod cache {
    use thaw_core::fs::{Durability, write_atomic};

    use super::*;

    fn manifest_path(dir: &Path, digest: &Digest) -> PathBuf {
        dir.join("manifests").join(digest.hex())
    }

    fn tag_path(dir: &Path, tag: &TagRef) -> PathBuf {
        dir.join(tag.storage_key())
    }

    /// Unsynced: a torn entry fails its re-verification and is refetched,
    /// and every resolve writes here, on a runner's cold path.
    fn write(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
        write_atomic(path, bytes, Durability::Cached).map_err(|source| ClientError::Cache {
            path: path.to_path_buf(),
            source,
        })
    }

    fn read(path: &Path) -> Result<Option<Vec<u8>>, ClientError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ClientError::Cache {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub(super) fn store_manifest(
        dir: &Path,
        digest: &Digest,
        bytes: &[u8],
        signature: &Signature,
    ) -> Result<(), ClientError> {
        let path = manifest_path(dir, digest);
        write(
            &path.with_extension("sig"),
            signature.to_string().as_bytes(),
        )?;
        write(&path, bytes)
    }

    pub(super) fn load_manifest(
        dir: &Path,
        digest: &Digest,
    ) -> Result<Option<(Vec<u8>, Signature)>, ClientError> {
        let path = manifest_path(dir, digest);
        let (Some(bytes), Some(signature)) = (read(&path)?, read(&path.with_extension("sig"))?)
        else {
            return Ok(None);
        };
        let signature = String::from_utf8_lossy(&signature).parse()?;
        Ok(Some((bytes, signature)))
    }

    /// Synced, unlike the rest: it is the rollback floor, and losing it
    /// to a power cut would let an older release through.
    pub(super) fn store_release(
        dir: &Path,
        tag: &TagRef,
        record: &TagRecord,
    ) -> Result<(), ClientError> {
        let path = tag_path(dir, tag);
        write_atomic(&path, &record.to_bytes(), Durability::Synced)
            .map_err(|source| ClientError::Cache { path, source })
    }

    pub(super) fn load_release(dir: &Path, tag: &TagRef) -> Result<Option<TagRecord>, ClientError> {
        Ok(read(&tag_path(dir, tag))?.and_then(|bytes| TagRecord::from_bytes(&bytes).ok()))
    }
}
