//! The manifest: the content-addressed record of one build. See `docs/manifest.md`.

use serde::{Deserialize, Serialize};

use crate::Digest;

/// The manifest schema this build of thaw writes and reads.
pub const MANIFEST_SCHEMA: u32 = 1;

/// Everything a runner needs to pick, verify and load a built function.
///
/// A manifest is stored under the digest of its own JSON bytes, so it can
/// never change once written; `name:tag` references point at it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_SCHEMA`] at the time of writing.
    pub schema: u32,
    /// Whether the module was snapshotted (reactor) or runs `_start` per request (command).
    pub kind: ModuleKind,
    /// The export a runner calls per request.
    pub entry: String,
    /// The module as submitted.
    pub source: BlobRef,
    /// The Wizer snapshot, for reactors.
    pub snapshot: Option<BlobRef>,
    /// One precompiled artifact per target.
    pub artifacts: Vec<Artifact>,
    /// How, with what and how fast it was built.
    pub build: BuildInfo,
}

/// How a module is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// A WASI reactor (`_initialize` + the SDK's exports): snapshotted after
    /// init; each request calls [`crate::abi::HANDLE_EXPORT`] in a fresh instance.
    Reactor,
    /// A WASI command (`_start`): not snapshotted; each request runs `_start`.
    Command,
}

impl std::fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModuleKind::Reactor => "reactor",
            ModuleKind::Command => "command",
        })
    }
}

/// A stored blob. Blobs are stored zstd-compressed under the digest of their
/// *uncompressed* bytes, which is what every reader verifies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// SHA-256 of the uncompressed bytes.
    pub digest: Digest,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// Stored (zstd) size in bytes.
    pub compressed_size: u64,
}

impl BlobRef {
    /// Decompresses a blob's stored (zstd) bytes and verifies them against
    /// this reference. Decompression stops at `size` bytes, so a forged
    /// blob cannot expand without bound; bytes that fail are never
    /// returned.
    pub fn decode(&self, compressed: &[u8]) -> Result<bytes::Bytes, BlobError> {
        let mut decoder = self.decoder(Vec::with_capacity(self.size as usize));
        decoder.write(compressed)?;
        Ok(decoder.finish()?.into())
    }

    /// A decoder that takes this blob's stored bytes piece by piece, as
    /// they arrive, and writes the decoded bytes to `out` while hashing
    /// them, so decoding and verifying overlap the download.
    /// [`BlobDecoder::finish`] says whether what was written is this blob;
    /// until it has said yes, `out` holds unverified bytes.
    pub fn decoder<W: std::io::Write>(&self, out: W) -> BlobDecoder<W> {
        BlobDecoder {
            blob: self.clone(),
            zstd: zstd::stream::write::Decoder::new(Verifying {
                out,
                hasher: sha2::Sha256::default(),
                written: 0,
                limit: self.size,
            })
            .expect("a zstd decoder's context allocates"),
        }
    }
}

/// Decodes and verifies one blob's stored bytes as they arrive; see
/// [`BlobRef::decoder`].
pub struct BlobDecoder<W: std::io::Write> {
    blob: BlobRef,
    zstd: zstd::stream::write::Decoder<'static, Verifying<W>>,
}

impl<W: std::io::Write> BlobDecoder<W> {
    /// Decodes the next stored bytes.
    pub fn write(&mut self, compressed: &[u8]) -> Result<(), BlobError> {
        use std::io::Write;
        self.zstd
            .write_all(compressed)
            .map_err(|source| self.undecodable(source))
    }

    /// Ends the blob: `out` once what was decoded has the blob's size and
    /// digest, else why not.
    pub fn finish(mut self) -> Result<W, BlobError> {
        use sha2::Digest as _;
        use std::io::Write;
        self.zstd
            .flush()
            .map_err(|source| self.undecodable(source))?;
        let Verifying {
            out,
            hasher,
            written,
            ..
        } = self.zstd.into_inner();
        let actual = crate::Digest::from_bytes(hasher.finalize().into());
        if actual != self.blob.digest || written != self.blob.size {
            return Err(BlobError::Mismatch {
                expected: self.blob.digest,
                actual,
            });
        }
        Ok(out)
    }

    fn undecodable(&self, source: std::io::Error) -> BlobError {
        BlobError::Undecodable {
            digest: self.blob.digest,
            source,
        }
    }
}

/// Where a [`BlobDecoder`] writes: hashes and counts what passes, and
/// refuses to pass more than the blob's size.
struct Verifying<W> {
    out: W,
    hasher: sha2::Sha256,
    written: u64,
    limit: u64,
}

impl<W: std::io::Write> std::io::Write for Verifying<W> {
    fn write(&mut self, decoded: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        if self.written + decoded.len() as u64 > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("decodes to more than {} bytes", self.limit),
            ));
        }
        self.out.write_all(decoded)?;
        self.hasher.update(decoded);
        self.written += decoded.len() as u64;
        Ok(decoded.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Why stored blob bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// They are not zstd, or decode to more than the blob's size.
    #[error("blob {digest} is corrupt: it does not decode to its size")]
    Undecodable {
        /// The blob.
        digest: Digest,
        /// What zstd said.
        #[source]
        source: std::io::Error,
    },
    /// They decode to other bytes: tampering or corruption.
    #[error("blob {expected} failed verification: its bytes hash to {actual}")]
    Mismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of the bytes found.
        actual: Digest,
    },
}

/// A precompiled module for one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// The target profile's name, e.g. `x86_64-unknown-linux-gnu` or `x86_64-v3`.
    pub profile: String,
    /// The target triple, e.g. `x86_64-unknown-linux-gnu`.
    pub target: String,
    /// The Cranelift ISA flags the code was compiled with: the CPU features a
    /// host needs to load it.
    pub isa_flags: Vec<String>,
    /// The `.cwasm` bytes.
    #[serde(flatten)]
    pub blob: BlobRef,
    /// The wasmtime version that compiled it; a loader of another major version refuses it.
    pub wasmtime_version: String,
    /// SHA-256 over `Engine::precompile_compatibility_hash()` of the compiling engine.
    pub compatibility_hash: Digest,
    /// Wall time of this target's compile, in milliseconds.
    pub compile_ms: u64,
}

/// Provenance of a build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// The build-cache key: the source digest plus everything that changes the output.
    pub cache_key: Digest,
    /// The thaw version that built it.
    pub thaw_version: String,
    /// The wasmtime (and Wizer, and Cranelift) release train used.
    pub wasmtime_version: String,
    /// Environment variables visible to init, by name only (values may be secrets).
    pub init_env: Vec<String>,
    /// Wall time per step, in pipeline order.
    pub steps: Vec<StepTiming>,
}

/// The wall time of one build step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTiming {
    /// `inspect`, `snapshot`, `compile <target>` or `store`.
    pub step: String,
    /// Milliseconds.
    pub millis: u64,
}

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The bytes do not hash to the digest they were asked for by:
    /// tampering or corruption.
    #[error("manifest {expected} failed verification: its bytes hash to {actual}")]
    Mismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of the bytes found.
        actual: Digest,
    },
    /// Not JSON of the manifest shape.
    #[error("malformed manifest: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Written by a thaw whose schema this one does not read.
    #[error("manifest schema {found} is not supported (this thaw reads schema {MANIFEST_SCHEMA})")]
    UnsupportedSchema {
        /// The schema in the manifest.
        found: u32,
    },
}

/// Checks that `bytes` hash to `digest`, the manifest digest they were
/// fetched by.
pub fn verify_manifest_bytes(digest: &Digest, bytes: &[u8]) -> Result<(), ManifestError> {
    let actual = Digest::of(bytes);
    if actual != *digest {
        return Err(ManifestError::Mismatch {
            expected: *digest,
            actual,
        });
    }
    Ok(())
}

impl Manifest {
    /// The canonical bytes: the ones stored and digested.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parses manifest bytes and checks the schema.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        struct Schema {
            schema: u32,
        }
        let Schema { schema } = serde_json::from_slice(bytes)?;
        if schema != MANIFEST_SCHEMA {
            return Err(ManifestError::UnsupportedSchema { found: schema });
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Checks that `bytes` are the manifest stored under `digest`, then
    /// parses them.
    pub fn from_verified_bytes(digest: &Digest, bytes: &[u8]) -> Result<Self, ManifestError> {
        verify_manifest_bytes(digest, bytes)?;
        Self::from_bytes(bytes)
    }

    /// The digest the manifest is stored under.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_bytes())
    }

    /// The artifact built for the target profile called `profile`, if any.
    pub fn artifact_for(&self, profile: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.profile == profile)
    }

    /// The target profiles built, comma-separated, for messages.
    pub fn profile_names(&self) -> String {
        self.artifacts
            .iter()
            .map(|a| a.profile.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every blob the manifest depends on.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        std::iter::once(&self.source)
            .chain(self.snapshot.as_ref())
            .chain(self.artifacts.iter().map(|a| &a.blob))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(raw: &[u8]) -> (BlobRef, Vec<u8>) {
        let compressed = zstd::bulk::compress(raw, 3).unwrap();
        let blob = BlobRef {
            digest: Digest::of(raw),
            size: raw.len() as u64,
            compressed_size: compressed.len() as u64,
        };
        (blob, compressed)
    }

    #[test]
    fn a_blob_decoded_piece_by_piece_is_its_bytes_and_anything_else_is_refused() {
        let raw: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let (blob, compressed) = stored(&raw);
        let mut decoder = blob.decoder(Vec::new());
        for piece in compressed.chunks(977) {
            decoder.write(piece).unwrap();
        }
        assert_eq!(decoder.finish().unwrap(), raw);
        assert_eq!(blob.decode(&compressed).unwrap(), raw);

        // Cut short: decodes to fewer bytes than the blob's size.
        let mut decoder = blob.decoder(Vec::new());
        decoder.write(&compressed[..compressed.len() / 2]).unwrap();
        assert!(matches!(decoder.finish(), Err(BlobError::Mismatch { .. })));

        // Other bytes of the same size.
        let mut other = raw.clone();
        other[7] ^= 1;
        let (_, forged) = stored(&other);
        assert!(matches!(
            blob.decode(&forged),
            Err(BlobError::Mismatch { expected, .. }) if expected == blob.digest
        ));

        // More than the size: stopped while decoding, not after.
        let small = BlobRef {
            size: 1000,
            ..blob.clone()
        };
        assert!(matches!(
            small.decode(&compressed),
            Err(BlobError::Undecodable { .. })
        ));

        // Not zstd at all.
        assert!(matches!(
            blob.decode(b"not a zstd frame"),
            Err(BlobError::Undecodable { .. })
        ));
    }

    pub(crate) fn sample() -> Manifest {
        let blob = |b: &[u8]| BlobRef {
            digest: Digest::of(b),
            size: b.len() as u64,
            compressed_size: 1,
        };
        Manifest {
            schema: MANIFEST_SCHEMA,
            kind: ModuleKind::Reactor,
            entry: "thaw_handle".into(),
            source: blob(b"source"),
            snapshot: Some(blob(b"snapshot")),
            artifacts: vec![Artifact {
                profile: "x86_64-unknown-linux-gnu".into(),
                target: "x86_64-unknown-linux-gnu".into(),
                isa_flags: vec!["has_sse3".into()],
                blob: blob(b"cwasm"),
                wasmtime_version: "48.0.8".into(),
                compatibility_hash: Digest::of(b"hash"),
                compile_ms: 12,
            }],
            build: BuildInfo {
                cache_key: Digest::of(b"key"),
                thaw_version: "0.1.0".into(),
                wasmtime_version: "48.0.8".into(),
                init_env: vec![],
                steps: vec![StepTiming {
                    step: "snapshot".into(),
                    millis: 3,
                }],
            },
        }
    }

    #[test]
    fn round_trips_and_digest_is_of_the_stored_bytes() {
        let m = sample();
        let bytes = m.to_bytes();
        assert_eq!(Manifest::from_bytes(&bytes).unwrap(), m);
        assert_eq!(m.digest(), Digest::of(&bytes));
        assert_eq!(m.blobs().count(), 3);
        assert!(m.artifact_for("x86_64-unknown-linux-gnu").is_some());
        assert!(m.artifact_for("riscv64gc-unknown-linux-gnu").is_none());
    }

    #[test]
    fn refuses_other_schemas_and_garbage() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["schema"] = 99.into();
        let err = Manifest::from_bytes(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(
            matches!(err, ManifestError::UnsupportedSchema { found: 99 }),
            "{err}"
        );
        assert!(matches!(
            Manifest::from_bytes(b"{not json").unwrap_err(),
            ManifestError::Malformed(_)
        ));
    }
}
