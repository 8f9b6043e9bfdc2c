//! Cranelift's incremental compilation cache.
//!
//! Cranelift keys each function by its body and the compiler settings, so a
//! rebuild of the same or a slightly changed module reuses the functions it
//! already compiled. (Init runs on Winch, so a first build starts cold.)

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use thaw_core::Digest;
use thaw_core::fs::{Durability, write_atomic};
use wasmtime::CacheStore;

/// Default cap of an in-memory cache.
pub const DEFAULT_MEMORY_CACHE_BYTES: usize = 512 << 20;

/// An incremental cache in memory (bounded) or in a directory (one file per
/// entry, written atomically so concurrent processes can share it).
#[derive(Debug)]
pub struct IncrementalCache {
    backend: Backend,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug)]
enum Backend {
    Memory {
        entries: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
        bytes: AtomicU64,
        cap: usize,
    },
    Directory(PathBuf),
}

impl IncrementalCache {
    /// A cache held in memory, which stops growing at `cap` bytes.
    pub fn in_memory(cap: usize) -> Self {
        Self::with(Backend::Memory {
            entries: Mutex::default(),
            bytes: AtomicU64::new(0),
            cap,
        })
    }

    /// A cache persisted under `dir` (created if missing).
    pub fn in_directory(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self::with(Backend::Directory(dir)))
    }

    fn with(backend: Backend) -> Self {
        Self {
            backend,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The directory of a persisted cache.
    pub fn directory(&self) -> Option<&std::path::Path> {
        match &self.backend {
            Backend::Directory(dir) => Some(dir),
            Backend::Memory { .. } => None,
        }
    }

    /// Adds lookups made elsewhere (by a compile child) to the statistics.
    pub(crate) fn count(&self, hits: u64, misses: u64) {
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);
    }

    /// (hits, misses) since creation.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn lookup(&self, key: &[u8]) -> Option<Vec<u8>> {
        match &self.backend {
            Backend::Memory { entries, .. } => entries.lock().unwrap().get(key).cloned(),
            Backend::Directory(dir) => std::fs::read(dir.join(Digest::of(key).hex())).ok(),
        }
    }
}

impl CacheStore for IncrementalCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let found = self.lookup(key);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found.map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        match &self.backend {
            Backend::Memory {
                entries,
                bytes,
                cap,
            } => {
                let size = (key.len() + value.len()) as u64;
                if bytes.fetch_add(size, Ordering::Relaxed) + size > *cap as u64 {
                    bytes.fetch_sub(size, Ordering::Relaxed);
                    return false;
                }
                entries.lock().unwrap().insert(key.to_vec(), value);
                true
            }
            // Atomic, so a concurrent reader never sees a partial entry;
            // unsynced, because a compile writes thousands of entries and a
            // lost one is only recompiled.
            Backend::Directory(dir) => {
                write_atomic(&dir.join(Digest::of(key).hex()), &value, Durability::Cached).is_ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_cache_stores_and_respects_its_cap() {
        let cache = IncrementalCache::in_memory(10);
        assert!(cache.insert(b"k", b"value".to_vec()));
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"value"[..]));
        assert!(!cache.insert(b"k2", b"too large".to_vec()));
        assert!(cache.get(b"k2").is_none());
        assert_eq!(cache.stats(), (1, 1));
    }

    #[test]
    fn directory_cache_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            IncrementalCache::in_directory(dir.path())
                .unwrap()
                .insert(b"k", b"v".to_vec())
        );
        let reopened = IncrementalCache::in_directory(dir.path()).unwrap();
        assert_eq!(reopened.get(b"k").as_deref(), Some(&b"v"[..]));
    }
}
