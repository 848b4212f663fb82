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

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::files::{self, write_atomic};
use crate::error::{Error, Result};

/// File name of the marker inside the WAL directory.
pub const CLEAN_CLOSE_FILE: &str = "clean-close.json";

/// Contents of `clean-close.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanClose {
    /// Format version of this file (1).
    pub version: u32,
    /// Number of the file that was active at the close.
    pub file_number: u64,
    /// Offset just past its last batch: where the next batch would have gone.
    pub end: u64,
    /// Sequence the next entry would have had.
    pub next_sequence: u64,
}

/// Records a clean close (everything written and fdatasynced).
///
/// # Errors
/// I/O errors naming the file.
pub(crate) fn store(dir: &Path, file_number: u64, end: u64, next_sequence: u64) -> Result<()> {
    let m = CleanClose {
        version: 1,
        file_number,
        end,
        next_sequence,
    };
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
    match serde_json::from_slice::<CleanClose>(&bytes) {
        Ok(m) if m.version == 1 => Ok(Some(m)),
        Ok(m) => {
            tracing::warn!(path = %path.display(), version = m.version, "ignoring clean-close marker of an unknown version");
            Ok(None)
        }
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
        store(dir.path(), 3, 8192, 17).unwrap();
        let m = load(dir.path()).unwrap().unwrap();
        assert_eq!((m.file_number, m.end, m.next_sequence), (3, 8192, 17));
        let path = dir.path().join(CLEAN_CLOSE_FILE);
        for contents in [
            br#"{"version":2,"file_number":3,"end":8192,"next_sequence":17}"#.as_slice(),
            b"{not json".as_slice(),
        ] {
            std::fs::write(&path, contents).unwrap();
            assert_eq!(load(dir.path()).unwrap(), None);
        }
        remove(dir.path()).unwrap();
        assert!(!path.exists());
        remove(dir.path()).unwrap();
    }
}
