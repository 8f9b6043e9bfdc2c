//! Releases: the signed record that a tag points at a manifest.
//!
//! A manifest signature says "this registry built these bytes"; it says
//! nothing about which name they belong to or whether they are current. A
//! [`Release`] binds a `name:tag` to a manifest digest at a per-tag
//! `sequence` that only increases, with the time the push was accepted and
//! the time it was signed. A tag's stored object is a [`TagRecord`]: the
//! release's exact JSON text and the registry's signature over it.
//!
//! A client checks a record against the tag it asked for and against the
//! highest release it has seen for that tag ([`Release::check`]), so a
//! bucket rolled back to an older, validly signed state, or a record copied
//! from another tag, is refused, as in TUF.
//!
//! ```
//! use thaw_core::release::{Release, TagRecord};
//! use thaw_core::signing::{RegistryKey, TrustedKeys};
//! use thaw_core::{Digest, TagRef};
//!
//! let key = RegistryKey::generate();
//! let tag: TagRef = "hello:prod".parse().unwrap();
//! let v1 = Release::first(&tag, Digest::of(b"v1"), 1_000, None);
//! let v2 = Release::after(Some(&v1), &tag, Digest::of(b"v2"), 2_000, None).unwrap();
//! let record = TagRecord::signed(&v2, &key);
//! let trusted = TrustedKeys::new(vec![key.public()]);
//! let verified = record.verify(&trusted).unwrap();
//! verified.check(&tag, Some(&v1), None).unwrap();
//! // Once v2 was seen, v1 is a rollback.
//! assert!(v1.check(&tag, Some(&v2), None).is_err());
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::signing::{PublicKey, RegistryKey, Signature, SignatureError, TrustedKeys};
use crate::{Digest, TagRef};

/// The release format version.
pub const RELEASE_SCHEMA: u32 = 1;

/// The largest tag record accepted: real ones are a few hundred bytes.
pub const MAX_TAG_RECORD_BYTES: usize = 64 << 10;

/// One move of a tag: `name:tag` points at `manifest` from `sequence` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// [`RELEASE_SCHEMA`].
    pub schema: u32,
    /// The function name.
    pub name: String,
    /// The tag.
    pub tag: String,
    /// The manifest the tag points at.
    pub manifest: Digest,
    /// Counts the tag's moves: each release of a tag has a higher one.
    pub sequence: u64,
    /// When the push that made this release was accepted (Unix ms): a push
    /// accepted earlier never replaces one accepted later.
    pub requested_at_ms: u64,
    /// When the release was made (Unix seconds).
    pub issued_at: u64,
    /// Who moved the tag: a token's fingerprint, never the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Release {
    /// The first release of `tag`.
    pub fn first(tag: &TagRef, manifest: Digest, requested_at_ms: u64, by: Option<String>) -> Self {
        Self {
            schema: RELEASE_SCHEMA,
            name: tag.name().to_string(),
            tag: tag.tag().to_string(),
            manifest,
            sequence: 1,
            requested_at_ms,
            issued_at: unix_now().as_secs(),
            by,
        }
    }

    /// The release that follows `previous` (or the first), unless
    /// `previous` came from a push accepted later than this one: a slow
    /// build never overwrites a newer push.
    pub fn after(
        previous: Option<&Release>,
        tag: &TagRef,
        manifest: Digest,
        requested_at_ms: u64,
        by: Option<String>,
    ) -> Result<Self, ReleaseError> {
        let mut release = Self::first(tag, manifest, requested_at_ms, by);
        if let Some(previous) = previous {
            if previous.requested_at_ms > requested_at_ms {
                return Err(ReleaseError::Superseded {
                    tag: tag.to_string(),
                    sequence: previous.sequence,
                    manifest: previous.manifest,
                });
            }
            release.sequence = previous.sequence.checked_add(1).ok_or_else(|| {
                ReleaseError::Malformed(format!("{tag} has used every sequence number"))
            })?;
        }
        Ok(release)
    }

    /// `name:tag`, as the release names it.
    pub fn tag_ref(&self) -> Result<TagRef, ReleaseError> {
        TagRef::new(&self.name, &self.tag).map_err(|e| ReleaseError::Malformed(e.to_string()))
    }

    fn label(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }

    /// Checks a verified release against what the client asked for:
    /// - it names `expected`, not another tag;
    /// - it is not older than `highest_seen`, the newest release of this tag
    ///   the client accepted before (a lower sequence is a rollback; the same
    ///   sequence naming another manifest is a fork);
    /// - with `max_age`, it was made no longer ago than that.
    pub fn check(
        &self,
        expected: &TagRef,
        highest_seen: Option<&Release>,
        max_age: Option<Duration>,
    ) -> Result<(), ReleaseError> {
        if self.schema != RELEASE_SCHEMA {
            return Err(ReleaseError::Malformed(format!(
                "release schema {} (this thaw reads {RELEASE_SCHEMA})",
                self.schema
            )));
        }
        if self.name != expected.name() || self.tag != expected.tag() {
            return Err(ReleaseError::WrongTag {
                expected: expected.to_string(),
                found: self.label(),
            });
        }
        if let Some(seen) = highest_seen {
            if self.sequence < seen.sequence {
                return Err(ReleaseError::RolledBack {
                    tag: self.label(),
                    offered: self.sequence,
                    seen: seen.sequence,
                });
            }
            if self.sequence == seen.sequence && self.manifest != seen.manifest {
                return Err(ReleaseError::Forked {
                    tag: self.label(),
                    sequence: self.sequence,
                    offered: self.manifest,
                    seen: seen.manifest,
                });
            }
        }
        if let Some(max_age) = max_age {
            let age = unix_now().saturating_sub(Duration::from_secs(self.issued_at));
            if age > max_age {
                return Err(ReleaseError::TooOld {
                    tag: self.label(),
                    age,
                    max_age,
                });
            }
        }
        Ok(())
    }
}

/// A tag's stored object: a release's exact JSON text, and the registry's
/// signature over it (absent in a local store, which is trusted as a whole).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TagRecord {
    /// The [`Release`] as JSON text: what the signature covers, byte for
    /// byte.
    pub release: String,
    /// `ed25519:<key hex>:<signature hex>`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "signature_text",
        deserialize_with = "parse_signature"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub signature: Option<Signature>,
}

fn signature_text<S: Serializer>(signature: &Option<Signature>, s: S) -> Result<S::Ok, S::Error> {
    match signature {
        Some(signature) => s.serialize_str(&signature.to_string()),
        None => s.serialize_none(),
    }
}

fn parse_signature<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Signature>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| text.parse().map_err(serde::de::Error::custom))
        .transpose()
}

impl fmt::Debug for TagRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagRecord")
            .field("release", &self.release)
            .field("signed", &self.signature.is_some())
            .finish()
    }
}

impl TagRecord {
    fn payload(release: &Release) -> String {
        serde_json::to_string(release).expect("a release serializes")
    }

    /// A record no one signed, for a store that is trusted as a whole.
    pub fn unsigned(release: &Release) -> Self {
        Self {
            release: Self::payload(release),
            signature: None,
        }
    }

    /// A record signed by a registry's key.
    pub fn signed(release: &Release, key: &RegistryKey) -> Self {
        let release = Self::payload(release);
        let signature = Some(key.sign_release(release.as_bytes()));
        Self { release, signature }
    }

    /// Parses a stored record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReleaseError> {
        if bytes.len() > MAX_TAG_RECORD_BYTES {
            return Err(ReleaseError::Malformed(format!(
                "{} bytes, more than the {MAX_TAG_RECORD_BYTES} a tag record may have",
                bytes.len()
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| ReleaseError::Malformed(e.to_string()))
    }

    /// The record as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a tag record serializes")
    }

    /// The release, without checking the signature: only for a store that
    /// is trusted as a whole.
    pub fn release_unverified(&self) -> Result<Release, ReleaseError> {
        serde_json::from_str(&self.release).map_err(|e| ReleaseError::Malformed(e.to_string()))
    }

    /// The release, once its signature is checked against `keys`.
    pub fn verify(&self, keys: &TrustedKeys) -> Result<Release, ReleaseError> {
        let label = self
            .release_unverified()
            .map(|r| r.label())
            .unwrap_or_else(|_| "an unreadable tag".into());
        keys.verify_release(&label, self.release.as_bytes(), self.signature.as_ref())?;
        self.release_unverified()
    }

    /// Whether `key` made a valid signature of this record.
    pub fn is_signed_by(&self, key: &PublicKey) -> bool {
        self.verify(&TrustedKeys::new(vec![*key])).is_ok()
    }
}

/// Why a release is refused.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Not a release this thaw can read.
    #[error("malformed release: {0}")]
    Malformed(String),
    /// The signature is missing, untrusted or wrong.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A release of another tag, put in this tag's place.
    #[error(
        "the release is for {found}, not {expected}: refusing a record copied from another tag"
    )]
    WrongTag {
        /// The tag asked for.
        expected: String,
        /// The tag the release names.
        found: String,
    },
    /// A release older than one already seen.
    #[error(
        "{tag} offers release {offered}, but release {seen} was already seen: refusing a rollback \
         (the store or registry may have been restored from an old copy)"
    )]
    RolledBack {
        /// The tag.
        tag: String,
        /// The sequence offered now.
        offered: u64,
        /// The highest sequence seen before.
        seen: u64,
    },
    /// Two different releases with one sequence number.
    #[error("{tag} release {sequence} names {offered}, but {seen} was seen under that number")]
    Forked {
        /// The tag.
        tag: String,
        /// The sequence both claim.
        sequence: u64,
        /// The manifest offered now.
        offered: Digest,
        /// The manifest seen before.
        seen: Digest,
    },
    /// A release older than the client's limit.
    #[error(
        "{tag}'s release was made {} ago, more than the {} allowed (--max-release-age)",
        humantime::format_duration(Duration::from_secs(age.as_secs())),
        humantime::format_duration(*max_age)
    )]
    TooOld {
        /// The tag.
        tag: String,
        /// How old the release is.
        age: Duration,
        /// The limit.
        max_age: Duration,
    },
    /// A push accepted earlier than the tag's current release.
    #[error(
        "{tag} was not moved: a push accepted later already moved it (release {sequence}, \
         {manifest})"
    )]
    Superseded {
        /// The tag.
        tag: String,
        /// The current release's sequence.
        sequence: u64,
        /// The manifest it names.
        manifest: Digest,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> TagRef {
        "billing:prod".parse().unwrap()
    }

    #[test]
    fn a_signed_record_verifies_only_as_written() {
        let key = RegistryKey::generate();
        let trusted = TrustedKeys::new(vec![key.public()]);
        let release = Release::first(&tag(), Digest::of(b"m"), 5, Some("token:ab".into()));
        let record = TagRecord::signed(&release, &key);
        let parsed = TagRecord::from_bytes(&record.to_bytes()).unwrap();
        assert_eq!(parsed.verify(&trusted).unwrap(), release);
        assert!(record.is_signed_by(&key.public()));
        assert!(!record.is_signed_by(&RegistryKey::generate().public()));

        // Any change to the signed text is caught.
        let mut tampered = record.clone();
        tampered.release = tampered.release.replace("\"sequence\":1", "\"sequence\":9");
        assert!(matches!(
            tampered.verify(&trusted),
            Err(ReleaseError::Signature(SignatureError::BadRelease { .. }))
        ));
        // A manifest signature is not a release signature.
        let replayed = TagRecord {
            signature: Some(key.sign(&Digest::of(record.release.as_bytes()))),
            ..record.clone()
        };
        assert!(replayed.verify(&trusted).is_err());
        assert!(matches!(
            TagRecord::unsigned(&release).verify(&trusted),
            Err(ReleaseError::Signature(SignatureError::UnsignedRelease(_)))
        ));
    }

    #[test]
    fn checks_refuse_other_tags_rollbacks_forks_and_stale_releases() {
        let v1 = Release::first(&tag(), Digest::of(b"1"), 10, None);
        let v2 = Release::after(Some(&v1), &tag(), Digest::of(b"2"), 20, None).unwrap();
        assert_eq!(v2.sequence, 2);
        v2.check(&tag(), Some(&v1), None).unwrap();
        v2.check(&tag(), Some(&v2), None).unwrap();
        assert!(matches!(
            v1.check(&tag(), Some(&v2), None),
            Err(ReleaseError::RolledBack {
                offered: 1,
                seen: 2,
                ..
            })
        ));
        let fork = Release {
            manifest: Digest::of(b"other"),
            ..v2.clone()
        };
        assert!(matches!(
            fork.check(&tag(), Some(&v2), None),
            Err(ReleaseError::Forked { .. })
        ));
        let other: TagRef = "billing:staging".parse().unwrap();
        assert!(matches!(
            v2.check(&other, None, None),
            Err(ReleaseError::WrongTag { .. })
        ));
        let old = Release {
            issued_at: v2.issued_at - 3600,
            ..v2.clone()
        };
        old.check(&tag(), None, Some(Duration::from_secs(7200)))
            .unwrap();
        let err = old
            .check(&tag(), None, Some(Duration::from_secs(60)))
            .unwrap_err();
        assert!(err.to_string().contains("--max-release-age"), "{err}");
    }

    #[test]
    fn a_push_accepted_earlier_does_not_replace_a_later_one() {
        let later = Release::first(&tag(), Digest::of(b"new"), 200, None);
        let err = Release::after(Some(&later), &tag(), Digest::of(b"old"), 100, None).unwrap_err();
        assert!(
            matches!(err, ReleaseError::Superseded { sequence: 1, .. }),
            "{err}"
        );
        assert!(TagRecord::from_bytes(&vec![b' '; MAX_TAG_RECORD_BYTES + 1]).is_err());
    }
}
