//! Ed25519 signatures over manifests and releases, so that a runner trusts
//! the registry's key rather than the bucket behind it.
//!
//! A registry signs the *digest* of each manifest it builds. Since a
//! manifest names every blob by digest, one signature covers the whole
//! build. It also signs each [`Release`](crate::release::Release): the
//! record that binds a `name:tag` to a manifest at a sequence number.
//! Runners and `thaw pull` hold a set of [`TrustedKeys`] and refuse a
//! manifest or release that is unsigned, signed by another key, or whose
//! signature does not verify. Each kind of signed message has its own
//! domain-separation prefix, so no signature can be replayed as another.
//!
//! ```
//! use thaw_core::Digest;
//! use thaw_core::signing::{RegistryKey, TrustedKeys};
//!
//! let key = RegistryKey::generate();
//! let digest = Digest::of(b"{\"schema\":1}");
//! let signature = key.sign(&digest);
//! let trusted = TrustedKeys::new(vec![key.public()]);
//! trusted.verify(&digest, Some(&signature)).unwrap();
//! assert!(trusted.verify(&Digest::of(b"other"), Some(&signature)).is_err());
//! ```

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signer, Verifier};

use crate::Digest;

const KEY_PREFIX: &str = "ed25519:";

/// The bytes a manifest signature covers: a domain-separation prefix, then
/// the manifest digest, so a thaw signature cannot be replayed as anything
/// else.
fn manifest_message(manifest: &Digest) -> Vec<u8> {
    format!("thaw-manifest-signature-v1\n{manifest}").into_bytes()
}

/// The bytes a release signature covers: its own prefix, then the exact
/// release payload.
fn release_message(payload: &[u8]) -> Vec<u8> {
    let mut message = b"thaw-release-signature-v1\n".to_vec();
    message.extend_from_slice(payload);
    message
}

/// Why a key, a signature or a verification failed.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// Text that is not a key or a signature.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being parsed.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A manifest with no signature, where one is required.
    #[error("manifest {0} is not signed, and only signed manifests are trusted")]
    Unsigned(Digest),
    /// A signature by a key that is not trusted.
    #[error("manifest {manifest} is signed by {key}, which is not a trusted key")]
    UntrustedKey {
        /// The manifest.
        manifest: Digest,
        /// The key that signed it.
        key: PublicKey,
    },
    /// A release with no signature, where one is required.
    #[error(
        "the release of {0} is not signed; a registry that ran an older thaw signs its tags when \
         it starts"
    )]
    UnsignedRelease(String),
    /// A release signature that is by an untrusted key or does not verify.
    #[error("the release of {tag}: {reason}")]
    BadRelease {
        /// The tag, as the release names it.
        tag: String,
        /// Why.
        reason: String,
    },
    /// A signature that does not verify.
    #[error("manifest {manifest}: the signature by {key} does not verify")]
    BadSignature {
        /// The manifest.
        manifest: Digest,
        /// The key it claims.
        key: PublicKey,
    },
    /// A key file that cannot be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

fn invalid(what: &'static str, reason: impl fmt::Display) -> SignatureError {
    SignatureError::Invalid {
        what,
        reason: reason.to_string(),
    }
}

/// A registry's public key, written `ed25519:<64 hex digits>`. Kept as its
/// 32 bytes (checked to be a valid point when parsed).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).expect("checked when constructed")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let what = "public key (expected ed25519:<64 hex digits>)";
        let hex = s
            .trim()
            .strip_prefix(KEY_PREFIX)
            .ok_or_else(|| invalid(what, format!("{s:?} does not start with {KEY_PREFIX}")))?;
        let bytes: [u8; 32] = hex::decode(hex)
            .map_err(|e| invalid(what, e))?
            .try_into()
            .map_err(|_| invalid(what, "not 32 bytes"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| invalid(what, e))?;
        Ok(PublicKey(bytes))
    }
}

/// A signature over a manifest digest or a release, with the key that made
/// it. Written
/// `ed25519:<public key hex>:<signature hex>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    /// The key that signed.
    pub key: PublicKey,
    signature: ed25519_dalek::Signature,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key, hex::encode(self.signature.to_bytes()))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Signature {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let what = "signature (expected ed25519:<key hex>:<signature hex>)";
        let (key, signature) = s
            .trim()
            .rsplit_once(':')
            .ok_or_else(|| invalid(what, "no ':' before the signature"))?;
        let bytes: [u8; 64] = hex::decode(signature)
            .map_err(|e| invalid(what, e))?
            .try_into()
            .map_err(|_| invalid(what, "not 64 bytes"))?;
        Ok(Self {
            key: key.parse()?,
            signature: ed25519_dalek::Signature::from_bytes(&bytes),
        })
    }
}

/// A registry's signing key. Its file holds the 32-byte secret seed as hex.
/// Every registry process of one deployment uses the same key.
#[derive(Clone)]
pub struct RegistryKey(ed25519_dalek::SigningKey);

impl RegistryKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system has a random source");
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// Reads a key file written by [`RegistryKey::write`].
    pub fn read(path: &Path) -> Result<Self, SignatureError> {
        let text = std::fs::read_to_string(path).map_err(|source| SignatureError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let what = "signing key file (expected 64 hex digits)";
        let seed: [u8; 32] = hex::decode(text.trim())
            .map_err(|e| invalid(what, e))?
            .try_into()
            .map_err(|_| invalid(what, "not 32 bytes"))?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Writes the key to a new file readable only by its owner. Refuses to
    /// overwrite an existing file, so a key is never lost by mistake.
    pub fn write(&self, path: &Path) -> Result<(), SignatureError> {
        use std::io::Write;
        let io = |source| SignatureError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        writeln!(file, "{}", hex::encode(self.0.to_bytes())).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// The public key, to give to runners.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs a manifest digest.
    pub fn sign(&self, manifest: &Digest) -> Signature {
        Signature {
            key: self.public(),
            signature: self.0.sign(&manifest_message(manifest)),
        }
    }

    /// Signs a release payload (see [`crate::release::TagRecord::signed`]).
    pub(crate) fn sign_release(&self, payload: &[u8]) -> Signature {
        Signature {
            key: self.public(),
            signature: self.0.sign(&release_message(payload)),
        }
    }
}

/// The keys a runner or `thaw pull` accepts manifests from.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(Vec<PublicKey>);

impl TrustedKeys {
    /// Trusts exactly `keys`.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self(keys)
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One digest for the set of keys, whatever their order: names state
    /// kept per set of trusted keys (such as the highest release seen).
    pub fn fingerprint(&self) -> Digest {
        let mut keys: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        keys.sort();
        keys.dedup();
        Digest::of(keys.join("\n").as_bytes())
    }

    /// Checks that `signature` is a valid signature of `manifest` by a
    /// trusted key.
    pub fn verify(
        &self,
        manifest: &Digest,
        signature: Option<&Signature>,
    ) -> Result<(), SignatureError> {
        let signature = signature.ok_or(SignatureError::Unsigned(*manifest))?;
        if !self.0.contains(&signature.key) {
            return Err(SignatureError::UntrustedKey {
                manifest: *manifest,
                key: signature.key,
            });
        }
        signature
            .key
            .verifying_key()
            .verify(&manifest_message(manifest), &signature.signature)
            .map_err(|_| SignatureError::BadSignature {
                manifest: *manifest,
                key: signature.key,
            })
    }

    /// Checks that `signature` is a valid signature of a release payload by
    /// a trusted key; `tag` names the release in errors.
    pub(crate) fn verify_release(
        &self,
        tag: &str,
        payload: &[u8],
        signature: Option<&Signature>,
    ) -> Result<(), SignatureError> {
        let signature = signature.ok_or_else(|| SignatureError::UnsignedRelease(tag.into()))?;
        let bad = |reason: String| SignatureError::BadRelease {
            tag: tag.into(),
            reason,
        };
        if !self.0.contains(&signature.key) {
            return Err(bad(format!(
                "signed by {}, which is not a trusted key",
                signature.key
            )));
        }
        signature
            .key
            .verifying_key()
            .verify(&release_message(payload), &signature.signature)
            .map_err(|_| {
                bad(format!(
                    "the signature by {} does not verify",
                    signature.key
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_round_trip_and_bind_key_and_digest() {
        let key = RegistryKey::generate();
        let other = RegistryKey::generate();
        let digest = Digest::of(b"manifest");
        let signature = key.sign(&digest);
        let parsed: Signature = signature.to_string().parse().unwrap();
        assert_eq!(parsed, signature);
        assert_eq!(
            key.public().to_string().parse::<PublicKey>().unwrap(),
            key.public()
        );

        let trusted = TrustedKeys::new(vec![key.public()]);
        trusted.verify(&digest, Some(&parsed)).unwrap();
        assert!(matches!(
            trusted.verify(&digest, None),
            Err(SignatureError::Unsigned(_))
        ));
        assert!(matches!(
            trusted.verify(&digest, Some(&other.sign(&digest))),
            Err(SignatureError::UntrustedKey { .. })
        ));
        assert!(matches!(
            trusted.verify(&Digest::of(b"other"), Some(&signature)),
            Err(SignatureError::BadSignature { .. })
        ));
        // A signature by another key, relabelled with the trusted key.
        let forged: Signature = format!(
            "{}:{}",
            key.public(),
            other.sign(&digest).to_string().rsplit_once(':').unwrap().1
        )
        .parse()
        .unwrap();
        assert!(matches!(
            trusted.verify(&digest, Some(&forged)),
            Err(SignatureError::BadSignature { .. })
        ));
    }

    #[test]
    fn key_files_round_trip_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.key");
        let key = RegistryKey::generate();
        key.write(&path).unwrap();
        assert_eq!(RegistryKey::read(&path).unwrap().public(), key.public());
        assert!(RegistryKey::generate().write(&path).is_err());
        assert_eq!(RegistryKey::read(&path).unwrap().public(), key.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key file is private");
        }
        assert!("ed25519:zz".parse::<PublicKey>().is_err());
        assert!("rsa:00".parse::<PublicKey>().is_err());
    }
}
