//! Durable, atomic file writes.
//!
//! Readers of thaw's files (artifact caches that get memory-mapped, cached
//! manifests, exported blobs) must never see half a file, and a power loss
//! must not leave a truncated file under the final name. So every write
//! goes to a temporary file in the same directory, is flushed to disk, and
//! is renamed over the target.

use std::io::Write;
use std::path::Path;

/// Whether a write must survive a power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Flushed to disk, rename included, before the write returns: for
    /// anything that is loaded or trusted later.
    Synced,
    /// Left to the page cache: for caches that recompute a lost entry,
    /// where thousands of small writes cannot each wait for the disk.
    Cached,
}

/// Writes `bytes` to `path` atomically: a reader sees either the old file
/// or the whole new one, never a part. Creates the parent directory if it
/// is missing.
pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    if durability == Durability::Synced {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if durability == Durability::Synced {
        sync_directory(dir)?;
    }
    Ok(())
}

/// Flushes `file`, then every directory from its parent up to `root`, so
/// that the file and each name leading to it (a rename, a directory just
/// created) survive a power loss.
pub fn sync_with_parents(file: &Path, root: &Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    for dir in file.ancestors().skip(1) {
        sync_directory(dir)?;
        if dir == root {
            break;
        }
    }
    Ok(())
}

/// Flushes a directory's entries. Where directories cannot be synced (not
/// Unix, or a file system that refuses it), there is nothing more to do.
fn sync_directory(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    match std::fs::File::open(dir)?.sync_all() {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_creates_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/file");
        write_atomic(&path, b"first", Durability::Synced).unwrap();
        write_atomic(&path, b"second", Durability::Cached).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        // Only the file itself is left: no temporary files behind.
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }
}
