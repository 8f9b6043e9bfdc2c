//! The wire types of the registry's HTTP API, shared by the server and
//! `thaw-client`. `docs/api.md` describes them.

use serde::{Deserialize, Serialize};

use crate::release::TagRecord;
use crate::{Digest, Manifest};

/// The longest a registry holds a tag watch
/// (`GET /v1/tags/{reference}?after=N&wait=D`) open.
pub const MAX_TAG_WATCH: std::time::Duration = std::time::Duration::from_secs(25);

/// The response header carrying a manifest's signature,
/// `ed25519:<key hex>:<signature hex>`.
pub const SIGNATURE_HEADER: &str = "thaw-signature";

/// Where a build is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BuildState {
    /// Waiting for a build worker.
    Queued,
    /// Running; `steps` says which.
    Running,
    /// Done: the manifest is stored (and signed, and tagged if asked).
    Succeeded {
        /// The manifest's digest.
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        manifest: Digest,
        /// Whether an earlier identical build was reused.
        cache_hit: bool,
    },
    /// Failed; `error` is the precise reason (a Go panic from init leads
    /// with the panic line).
    Failed {
        /// Why.
        error: String,
    },
}

impl BuildState {
    /// Whether the build can no longer change.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Succeeded { .. } | Self::Failed { .. })
    }
}

/// One step of a build (`inspect`, `snapshot`, `compile <profile>`,
/// `store`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepStatus {
    /// The step.
    pub step: String,
    /// Its duration in milliseconds, once finished.
    pub millis: Option<u64>,
}

/// A build, as the registry reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildStatus {
    /// The build id: the build key, so identical submissions share it.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: Digest,
    /// The tag to point at the result, if any.
    pub reference: Option<String>,
    /// Target profiles requested.
    pub targets: Vec<String>,
    /// Where the build is.
    #[serde(flatten)]
    pub state: BuildState,
    /// Steps started so far, in order.
    pub steps: Vec<StepStatus>,
    /// Seconds since the Unix epoch when it was accepted.
    pub submitted_at: u64,
    /// Seconds since the Unix epoch of the last change.
    pub updated_at: u64,
}

/// The answer to a submission.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildResponse {
    /// The build.
    pub build: BuildStatus,
    /// Where to poll its status.
    pub status_url: String,
    /// Where to follow it live (Server-Sent Events, one `status` event per
    /// change, each a [`BuildStatus`]).
    pub events_url: String,
    /// The manifest, when the build is already done (a cache hit).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub manifest: Option<Manifest>,
}

/// A tag, the manifest it points at, and the signed release that says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TagEntry {
    /// `name:tag`.
    pub reference: String,
    /// The manifest digest (as the release says; clients trust only the
    /// verified release).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub manifest: Digest,
    /// The release's sequence number: each move of the tag increases it.
    pub sequence: u64,
    /// The signed release record: check its signature, and that it names
    /// this tag and a sequence no lower than one seen before.
    pub release: TagRecord,
}

/// The body of `PUT /v1/tags/{reference}`: point a tag at a manifest the
/// registry already signed (a rollback, or a promotion).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TagMoveRequest {
    /// The manifest digest.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub manifest: Digest,
}

/// An error body: every 4xx and 5xx answer carries one.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong, precisely.
    pub error: String,
}
