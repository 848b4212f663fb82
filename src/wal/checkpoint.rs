//! `checkpoint.json`: the last sequence the application has applied durably elsewhere.
//! Replaced atomically (temp file, fsync, rename, directory fsync).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::files::write_atomic;
use crate::error::{Error, Result};

/// File name of the checkpoint inside the WAL directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// Contents of `checkpoint.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version of this file (1).
    pub version: u32,
    /// Every entry with a sequence at or below this one has been applied.
    pub sequence: u64,
    /// When the checkpoint was taken, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// Loads the checkpoint; `None` when there is none yet.
///
/// # Errors
/// I/O errors, and [`Error::Corrupt`] when the file does not parse (the previous
/// checkpoint is never half-replaced, so this means outside damage).
pub fn load(dir: &Path) -> Result<Option<Checkpoint>> {
    let path = dir.join(CHECKPOINT_FILE);
    let Some(bytes) = super::files::read_if_exists(&path)? else {
        return Ok(None);
    };
    let cp: Checkpoint = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(&path, 0, format!("checkpoint does not parse: {e}")))?;
    if cp.version != 1 {
        return Err(Error::corrupt(
            &path,
            0,
            format!("unsupported checkpoint version {}", cp.version),
        ));
    }
    if cp.sequence == u64::MAX {
        // The log continues at `sequence + 1`, which must exist.
        return Err(Error::corrupt(
            &path,
            0,
            format!("checkpoint sequence {} is out of range", cp.sequence),
        ));
    }
    Ok(Some(cp))
}

/// Atomically replaces the checkpoint with `sequence`.
///
/// # Errors
/// I/O errors naming the file.
pub fn store(dir: &Path, sequence: u64) -> Result<Checkpoint> {
    let cp = Checkpoint {
        version: 1,
        sequence,
        timestamp_ms: super::files::now_ms(),
    };
    let mut json = serde_json::to_vec_pretty(&cp).expect("checkpoint serialises");
    json.push(b'\n');
    write_atomic(&dir.join(CHECKPOINT_FILE), &json)?;
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_or_newer_checkpoint_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let stored = store(dir.path(), 42).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(stored));
        let path = dir.path().join(CHECKPOINT_FILE);
        for (contents, why) in [
            (
                br#"{"version":2,"sequence":42,"timestamp_ms":0}"#.as_slice(),
                "unsupported checkpoint version 2",
            ),
            (
                br#"{"version":1,"sequence":"#.as_slice(),
                "checkpoint does not parse",
            ),
            (
                br#"{"version":1,"sequence":18446744073709551615,"timestamp_ms":0}"#.as_slice(),
                "checkpoint sequence 18446744073709551615 is out of range",
            ),
        ] {
            std::fs::write(&path, contents).unwrap();
            let err = load(dir.path()).unwrap_err();
            assert!(
                matches!(&err, Error::Corrupt { file, .. } if file == &path),
                "{err}"
            );
            assert!(err.to_string().contains(why), "{err}");
        }
    }
}
