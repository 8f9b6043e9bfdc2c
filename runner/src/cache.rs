//! The local artifact cache: verified once, then trusted by identity.
//!
//! An artifact enters the cache decoded into a temporary file as it
//! downloads, hashed on the way against its manifest's digest, and renamed
//! into place only once it matched. The handle that was written is the one
//! mapped for that first load. What is recorded later is the file's
//! identity, as the kernel reports it for an open handle: device, inode,
//! size, modification and change times, and the boot it was seen in. A
//! later load opens the file, and maps it without hashing if the handle's
//! identity still matches the record; anything else (another file renamed
//! into place, a write in place, a `touch`) changes the inode or the times
//! and the file is hashed again, then refetched if it no longer matches.
//!
//! Timestamps are coarse (a kernel tick), so a change made in the same tick
//! as the verification would keep them: as git does for "racily clean"
//! files, the identity is recorded only for a file last changed more than
//! [`RACY_WINDOW`] ago. A younger file is hashed at each load until then,
//! and the runner hashes and records each file it wrote once the window has
//! passed, in the background ([`settle`]).
//!
//! Nothing is fsynced on this path: within one boot the page cache is what
//! every reader sees, and a power loss that tore a file also changes the
//! boot id, which voids every record written before it, so the first load
//! after a reboot hashes again. Where the kernel has no boot id, files are
//! synced before they are renamed into place.
//!
//! Files are made read-only and the cache directory private (0700) to the
//! runner's account. Only that account (or root) can change a file without
//! changing its change time, which no user can set; so the record cannot be
//! fooled by anyone other than the runner's own account. `verify_on_load`
//! hashes at every load regardless. fs-verity would let the kernel check
//! every page as it is read; the filesystems these hosts were tested on do
//! not offer it, so it is not used.

use std::fs::File;
use std::path::{Path, PathBuf};

use thaw_core::Digest;
use thaw_core::fs::{Durability, write_atomic};

/// How old a file's last change must be before its identity is trusted.
const RACY_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// This boot's id, which a crash or power loss changes; `None` where the
/// kernel does not offer one.
fn boot_id() -> Option<&'static str> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty())
        })
        .as_deref()
}

/// What [`open_trusted`] found.
pub(crate) enum Cached {
    /// The verified file, as an open handle: map this one, not the path.
    Trusted(File),
    /// No usable file (missing, or wrong bytes and removed).
    Missing,
}

/// The cache's paths for one artifact.
pub(crate) struct Entry {
    pub(crate) file: PathBuf,
    identity: PathBuf,
    digest: Digest,
}

impl Entry {
    pub(crate) fn new(dir: &Path, digest: Digest) -> Self {
        Self {
            file: dir.join(format!("{}.cwasm", digest.hex())),
            identity: dir.join(format!("{}.verified", digest.hex())),
            digest,
        }
    }
}

/// The identity the kernel reports for an open file, and whether its last
/// change is old enough to trust it.
fn identity(file: &File) -> std::io::Result<(String, bool)> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    let changed = std::time::UNIX_EPOCH
        + std::time::Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().max(0) as u32);
    let settled = changed.elapsed().is_ok_and(|age| age > RACY_WINDOW);
    let text = format!(
        "boot={} dev={} ino={} size={} mtime={}.{:09} ctime={}.{:09}\n",
        boot_id().unwrap_or("unknown"),
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    );
    Ok((text, settled))
}

/// Opens the cached artifact; trusts it when its identity matches the
/// record written when it was verified (unless `rehash`), else hashes it,
/// and on a match records its identity. A file holding other bytes is
/// removed.
pub(crate) fn open_trusted(entry: &Entry, rehash: bool) -> std::io::Result<Cached> {
    let mut file = match File::open(&entry.file) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cached::Missing),
        Err(e) => return Err(e),
    };
    let (current, settled) = identity(&file)?;
    if !rehash
        && settled
        && std::fs::read_to_string(&entry.identity).ok().as_deref() == Some(&current)
    {
        return Ok(Cached::Trusted(file));
    }
    let actual = Digest::of_reader(&mut file)?;
    if actual != entry.digest {
        tracing::warn!(
            path = %entry.file.display(), expected = %entry.digest, %actual,
            "cached artifact failed verification; discarding it"
        );
        let _ = std::fs::remove_file(&entry.identity);
        std::fs::remove_file(&entry.file)?;
        return Ok(Cached::Missing);
    }
    if settled {
        // Unsynced: a lost record only costs one more hash.
        write_atomic(&entry.identity, current.as_bytes(), Durability::Cached)?;
    }
    Ok(Cached::Trusted(file))
}

/// A temporary file in the cache directory for `entry`'s bytes to be
/// decoded into; nothing loads it until [`admit`] renames it into place.
pub(crate) fn incoming(entry: &Entry) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = entry.file.parent().unwrap_or(std::path::Path::new("."));
    tempfile::NamedTempFile::new_in(dir)
}

/// Puts a file whose bytes were verified as they were written into place,
/// read-only, and returns the handle that wrote them, for mapping.
pub(crate) fn admit(entry: &Entry, file: tempfile::NamedTempFile) -> std::io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(&entry.identity);
    if boot_id().is_none() {
        file.as_file().sync_all()?;
    }
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o444))?;
    file.persist(&entry.file).map_err(|e| e.error)
}

/// Once a file the runner wrote is older than [`RACY_WINDOW`], hashes it
/// once more and records its identity, so that the next load maps it
/// without hashing. Runs off any request's path.
pub(crate) async fn settle(entry: std::sync::Arc<Entry>) {
    tokio::time::sleep(RACY_WINDOW + std::time::Duration::from_millis(50)).await;
    let path = entry.file.clone();
    let settled = tokio::task::spawn_blocking(move || open_trusted(&entry, false)).await;
    if let Ok(Err(error)) = settled {
        tracing::warn!(path = %path.display(), %error, "could not record a cached artifact's identity");
    }
}

/// Creates the cache directory, private to this account.
pub(crate) fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_changed_after_verification_is_hashed_again_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        prepare_dir(dir.path()).unwrap();
        let bytes = b"artifact bytes".to_vec();
        let entry = Entry::new(dir.path(), Digest::of(&bytes));
        assert!(matches!(
            open_trusted(&entry, false).unwrap(),
            Cached::Missing
        ));
        let mut incoming = incoming(&entry).unwrap();
        std::io::Write::write_all(&mut incoming, &bytes).unwrap();
        admit(&entry, incoming).unwrap();
        assert!(matches!(
            open_trusted(&entry, false).unwrap(),
            Cached::Trusted(_)
        ));
        assert!(
            !entry.identity.exists(),
            "a file changed just now is not trusted yet"
        );
        std::thread::sleep(RACY_WINDOW + std::time::Duration::from_millis(100));
        assert!(matches!(
            open_trusted(&entry, false).unwrap(),
            Cached::Trusted(_)
        ));
        assert!(
            entry.identity.exists(),
            "verified once, then trusted by identity"
        );
        assert!(matches!(
            open_trusted(&entry, false).unwrap(),
            Cached::Trusted(_)
        ));

        // A record from another boot (the file may have been torn by a
        // crash since) is not trusted: the file is hashed again, and the
        // record rewritten for this boot.
        let record = std::fs::read_to_string(&entry.identity).unwrap();
        assert!(record.starts_with(&format!("boot={} ", boot_id().unwrap())));
        let earlier_boot = record.replacen("boot=", "boot=earlier-", 1);
        std::fs::write(&entry.identity, &earlier_boot).unwrap();
        assert!(matches!(
            open_trusted(&entry, false).unwrap(),
            Cached::Trusted(_)
        ));
        assert_eq!(std::fs::read_to_string(&entry.identity).unwrap(), record);

        // The owner can still write it in place (after chmod): the change
        // time moves, so the identity no longer matches, the file is hashed
        // and, holding other bytes, removed.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&entry.file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&entry.file, b"tampered bytes").unwrap();
        assert!(matches!(
            open_trusted(&entry, false).unwrap(),
            Cached::Missing
        ));
        assert!(!entry.file.exists());
    }
}
