//! `clean-close.json`: where the log ended when the WAL was last closed cleanly.
//!
//! To tell a torn tail from damage, recovery probes the rest of the newest file
//! for later valid batches after the first block that does not continue the log
//! (see [`super::recovery`]): with 100 MiB files that is ~100 MiB read at every
//! open. After a clean close nothing can follow the end of the log, so the close
//! records that end here; a scan whose newest file ends exactly there skips the
//! probe. [`super::Wal::open`] removes the marker (durably) before anything is
//! appended, so it never describes a file that has been written since. Bytes
//! damaged before the recorded end still stop the scan early and are probed and
//! reported as before.
//!
//! The marker is believed only when it is whole and about this very file: its
//! checksum must match, and it names the file by number and by the random key in
//! the file's header (a marker copied from another WAL directory, or left by a
//! log started again, names another key). A marker that said the log ended
//! further on than it does would make a healthy log read as damaged.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::files::{self, write_atomic};
use crate::error::{Error, Result};

/// File name of the marker inside the WAL directory.
pub const CLEAN_CLOSE_FILE: &str = "clean-close.json";

/// Version of the marker this build writes and believes. Version 1 markers (no
/// key, no checksum) are ignored: the open then probes, as after a crash.
const VERSION: u32 = 2;

/// Contents of `clean-close.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanClose {
    /// Format version of this file (2).
    pub version: u32,
    /// Number of the file that was active at the close.
    pub file_number: u64,
    /// That file's key, from its header (0 for a version 1 file).
    pub file_key: u64,
    /// Offset just past its last batch: where the next batch would have gone.
    pub end: u64,
    /// Sequence the next entry would have had.
    pub next_sequence: u64,
    /// [`CleanClose::checksum`] of the fields above.
    pub crc32c: u32,
}

impl CleanClose {
    /// CRC32C of `version` (u32), `file_number`, `file_key`, `end` and
    /// `next_sequence` (u64 each), little-endian, in that order.
    pub fn checksum(&self) -> u32 {
        let mut b = [0u8; 36];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[4..12].copy_from_slice(&self.file_number.to_le_bytes());
        b[12..20].copy_from_slice(&self.file_key.to_le_bytes());
        b[20..28].copy_from_slice(&self.end.to_le_bytes());
        b[28..36].copy_from_slice(&self.next_sequence.to_le_bytes());
        crc32c::crc32c(&b)
    }
}

/// Records a clean close (everything written and fdatasynced).
///
/// # Errors
/// I/O errors naming the file.
pub(crate) fn store(
    dir: &Path,
    file_number: u64,
    file_key: u64,
    end: u64,
    next_sequence: u64,
) -> Result<()> {
    let mut m = CleanClose {
        version: VERSION,
        file_number,
        file_key,
        end,
        next_sequence,
        crc32c: 0,
    };
    m.crc32c = m.checksum();
    let mut json = serde_json::to_vec_pretty(&m).expect("marker serialises");
    json.push(b'\n');
    write_atomic(&dir.join(CLEAN_CLOSE_FILE), &json)
}

/// The marker, if there is a readable one. It is only a hint: one that does not
/// parse is ignored with a warning (the scan then probes as after a crash).
///
/// # Errors
/// I/O errors other than a missing file.
pub fn load(dir: &Path) -> Result<Option<CleanClose>> {
    let path = dir.join(CLEAN_CLOSE_FILE);
    let Some(bytes) = files::read_if_exists(&path)? else {
        return Ok(None);
    };
    // Only the version first: a version 1 marker lacks fields of version 2.
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    match serde_json::from_slice::<Version>(&bytes).map(|v| v.version) {
        Ok(VERSION) => {}
        Ok(version) => {
            tracing::warn!(path = %path.display(), version, "ignoring clean-close marker of another version");
            return Ok(None);
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable clean-close marker");
            return Ok(None);
        }
    }
    match serde_json::from_slice::<CleanClose>(&bytes) {
        Ok(m) if m.crc32c != m.checksum() => {
            tracing::warn!(path = %path.display(), "ignoring clean-close marker whose checksum does not match");
            Ok(None)
        }
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable clean-close marker");
            Ok(None)
        }
    }
}

/// Removes the marker durably (no-op when there is none).
///
/// # Errors
/// I/O errors naming the file or directory.
pub(crate) fn remove(dir: &Path) -> Result<()> {
    let path = dir.join(CLEAN_CLOSE_FILE);
    match files::remove(&path) {
        Ok(()) => files::sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", &path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The marker only lets an open skip work: one it cannot trust is ignored.
    #[test]
    fn an_unreadable_or_newer_marker_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        store(dir.path(), 3, 0xfeed, 8192, 17).unwrap();
        let m = load(dir.path()).unwrap().unwrap();
        assert_eq!(
            (m.file_number, m.file_key, m.end, m.next_sequence),
            (3, 0xfeed, 8192, 17)
        );
        let path = dir.path().join(CLEAN_CLOSE_FILE);
        let written = std::fs::read_to_string(&path).unwrap();
        let edited = written.replace("8192", "12288");
        assert_ne!(edited, written);
        for contents in [
            br#"{"version":1,"file_number":3,"end":8192,"next_sequence":17}"#.as_slice(),
            br#"{"version":3,"file_number":3,"end":8192,"next_sequence":17}"#.as_slice(),
            b"{not json".as_slice(),
            // A changed field without a matching checksum.
            edited.as_bytes(),
        ] {
            std::fs::write(&path, contents).unwrap();
            assert_eq!(
                load(dir.path()).unwrap(),
                None,
                "{}",
                String::from_utf8_lossy(contents)
            );
        }
        remove(dir.path()).unwrap();
        assert!(!path.exists());
        remove(dir.path()).unwrap();
    }
}
