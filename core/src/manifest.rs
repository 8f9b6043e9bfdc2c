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
    ///
    /// Hashing and writing run on a thread of their own, a few chunks
    /// behind decoding: on a fast link decoding is the slowest step, so
    /// this takes hashing and writing (about 40% of the CPU) off its path.
    pub fn decoder<W: std::io::Write + Send + 'static>(&self, out: W) -> BlobDecoder<W> {
        let (full, arriving) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
        let (recycle, empty) = std::sync::mpsc::channel::<Vec<u8>>();
        let verifier = std::thread::Builder::new()
            .name("blob-verify".into())
            .spawn(move || {
                let mut verifying = Verifying {
                    out,
                    hasher: sha2::Sha256::default(),
                    written: 0,
                };
                for mut chunk in arriving {
                    verifying.write(&chunk)?;
                    chunk.clear();
                    // The decoder may be gone already; the chunk just drops.
                    let _ = recycle.send(chunk);
                }
                Ok(verifying)
            })
            .expect("a thread for verifying a blob starts");
        BlobDecoder {
            blob: self.clone(),
            zstd: zstd::stream::write::Decoder::new(Handoff {
                filling: Vec::with_capacity(CHUNK),
                full: Some(full),
                empty,
                decoded: 0,
                limit: self.size,
            })
            .expect("a zstd decoder's context allocates"),
            verifier: Some(verifier),
        }
    }
}

/// Decoded bytes pass to the verifying thread in chunks this large: big
/// enough that the handoff costs nothing, small enough that the thread
/// starts early.
const CHUNK: usize = 1 << 20;
/// How many chunks may wait for the verifying thread, which bounds the
/// memory a decode holds however far ahead it runs.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Decodes and verifies one blob's stored bytes as they arrive; see
/// [`BlobRef::decoder`].
pub struct BlobDecoder<W: std::io::Write> {
    blob: BlobRef,
    zstd: zstd::stream::write::Decoder<'static, Handoff>,
    /// Taken when joined, which happens once: at the end or at an error.
    verifier: Option<Verifier<W>>,
}

impl<W: std::io::Write> BlobDecoder<W> {
    /// Decodes the next stored bytes.
    pub fn write(&mut self, compressed: &[u8]) -> Result<(), BlobError> {
        use std::io::Write;
        self.zstd
            .write_all(compressed)
            .map_err(|source| self.failed(source))
    }

    /// Ends the blob: `out` once what was decoded has the blob's size and
    /// digest, else why not.
    pub fn finish(mut self) -> Result<W, BlobError> {
        use sha2::Digest as _;
        use std::io::Write;
        self.zstd.flush().map_err(|source| self.failed(source))?;
        let decoded = self.zstd.get_ref().decoded;
        self.hang_up();
        let digest = self.blob.digest;
        let Verifying {
            out,
            hasher,
            written,
        } = join(&mut self.verifier).map_err(|source| BlobError::Unwritable { digest, source })?;
        debug_assert_eq!(decoded, written);
        let actual = crate::Digest::from_bytes(hasher.finalize().into());
        if actual != digest || written != self.blob.size {
            return Err(BlobError::Mismatch {
                expected: digest,
                actual,
            });
        }
        Ok(out)
    }

    /// Tells the verifying thread that no more chunks come, so that it ends
    /// once it has written those it has.
    fn hang_up(&mut self) {
        self.zstd.get_mut().full = None;
    }

    /// Why decoding stopped: the verifying thread's error when it is the
    /// one that stopped (the output could not be written), else zstd's.
    fn failed(&mut self, decoding: std::io::Error) -> BlobError {
        let digest = self.blob.digest;
        if decoding.kind() == std::io::ErrorKind::BrokenPipe
            && let Err(source) = join(&mut self.verifier)
        {
            return BlobError::Unwritable { digest, source };
        }
        BlobError::Undecodable {
            digest,
            source: decoding,
        }
    }
}

impl<W: std::io::Write> Drop for BlobDecoder<W> {
    /// Waits for the verifying thread, so that nothing writes to `out`
    /// once the decoder is gone, even when it was abandoned half-way.
    fn drop(&mut self) {
        self.hang_up();
        let _ = join(&mut self.verifier);
    }
}

type Verifier<W> = std::thread::JoinHandle<std::io::Result<Verifying<W>>>;

/// Waits for the verifying thread, which ends once the decoder hangs up or
/// once writing fails.
fn join<W>(verifier: &mut Option<Verifier<W>>) -> std::io::Result<Verifying<W>> {
    match verifier.take() {
        Some(thread) => thread.join().expect("verifying does not panic"),
        // Joined at an earlier failure, which the caller was told about.
        None => Err(std::io::Error::other("writing the blob out failed earlier")),
    }
}

/// Where a [`BlobDecoder`]'s zstd writes: counts what is decoded, refuses
/// more than the blob's size (so a forged blob stops expanding at once),
/// and hands full chunks to the verifying thread.
struct Handoff {
    filling: Vec<u8>,
    /// `None` once the decoder has hung up.
    full: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    /// Chunks the verifying thread is done with, so that decoding writes
    /// into memory that is already mapped.
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    decoded: u64,
    limit: u64,
}

impl Handoff {
    fn hand_over(&mut self) -> std::io::Result<()> {
        let next = self
            .empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let chunk = std::mem::replace(&mut self.filling, next);
        match &self.full {
            Some(full) if full.send(chunk).is_ok() => Ok(()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the verifying thread stopped",
            )),
        }
    }
}

impl std::io::Write for Handoff {
    fn write(&mut self, decoded: &[u8]) -> std::io::Result<usize> {
        if self.decoded + decoded.len() as u64 > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("decodes to more than {} bytes", self.limit),
            ));
        }
        let taken = decoded.len().min(CHUNK - self.filling.len());
        self.filling.extend_from_slice(&decoded[..taken]);
        self.decoded += taken as u64;
        if self.filling.len() == CHUNK {
            self.hand_over()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.filling.is_empty() {
            return Ok(());
        }
        self.hand_over()
    }
}

/// The verifying thread's end: writes decoded bytes to the output and
/// hashes and counts them.
struct Verifying<W> {
    out: W,
    hasher: sha2::Sha256,
    written: u64,
}

impl<W: std::io::Write> Verifying<W> {
    fn write(&mut self, decoded: &[u8]) -> std::io::Result<()> {
        use sha2::Digest as _;
        self.out.write_all(decoded)?;
        self.hasher.update(decoded);
        self.written += decoded.len() as u64;
        Ok(())
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
    /// Their decoded bytes could not be written out (a full disk, say).
    #[error("blob {digest} could not be written out")]
    Unwritable {
        /// The blob.
        digest: Digest,
        /// What the output said.
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
    /// Whether the artifacts keep the module's function names (the
    /// snapshot always does). Absent from manifests written before thaw
    /// recorded it, whose artifacts all kept them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_names: Option<bool>,
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

    /// An output that takes `room` bytes and then fails, as a full disk does.
    struct FillsUp {
        room: usize,
    }

    impl std::io::Write for FillsUp {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if buf.len() > self.room {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "no space left",
                ));
            }
            self.room -= buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_output_that_fails_is_named_as_the_cause_however_far_decoding_got() {
        // Several chunks' worth, so the failure happens while decoding runs
        // ahead of the verifying thread.
        let raw: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 249).to_le_bytes())
            .collect();
        let (blob, compressed) = stored(&raw);
        for room in [0, CHUNK + 1, raw.len() - 1] {
            let mut decoder = blob.decoder(FillsUp { room });
            let outcome = compressed
                .chunks(64 * 1024)
                .try_for_each(|piece| decoder.write(piece))
                .and_then(|()| decoder.finish().map(drop));
            match outcome {
                Err(BlobError::Unwritable { digest, source }) => {
                    assert_eq!(digest, blob.digest);
                    assert_eq!(source.kind(), std::io::ErrorKind::StorageFull);
                }
                other => panic!("room {room}: expected Unwritable, got {other:?}"),
            }
        }
        let mut fits = blob.decoder(FillsUp { room: raw.len() });
        fits.write(&compressed).unwrap();
        assert_eq!(fits.finish().unwrap().room, 0);
    }

    /// An output that is slow to take each write; the count of `_alive`
    /// says when it is gone.
    struct Slow {
        _alive: std::sync::Arc<()>,
    }

    impl std::io::Write for Slow {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(std::time::Duration::from_millis(5));
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_abandoned_decoder_writes_nothing_more_once_dropped() {
        let raw: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let (blob, compressed) = stored(&raw);
        let alive = std::sync::Arc::new(());
        let mut decoder = blob.decoder(Slow {
            _alive: alive.clone(),
        });
        // Most of the blob: several chunks wait for the slow output.
        decoder
            .write(&compressed[..compressed.len() * 3 / 4])
            .unwrap();
        drop(decoder);
        assert_eq!(
            std::sync::Arc::strong_count(&alive),
            1,
            "the output is still held, so still written to"
        );
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
                keep_names: None,
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
