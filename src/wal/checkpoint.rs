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
    /// CRC32C of the fields above ([`Checkpoint::checksum`]): a flipped digit in
    /// `sequence` would otherwise skip the replay of entries never applied.
    /// Absent in checkpoints written before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
}

impl Checkpoint {
    /// CRC32C of `version` (u32), `sequence` (u64) and `timestamp_ms` (i64), each
    /// little-endian, in that order.
    pub fn checksum(&self) -> u32 {
        let mut b = [0u8; 20];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[4..12].copy_from_slice(&self.sequence.to_le_bytes());
        b[12..20].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        crc32c::crc32c(&b)
    }
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
    if let Some(stored) = cp.crc32c {
        let computed = cp.checksum();
        if stored != computed {
            return Err(Error::corrupt(
                &path,
                0,
                format!("checkpoint checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"),
            ));
        }
    }
    if cp.sequence > MAX_SEQUENCE {
        // The log continues at `sequence + 1`, which must exist, with room
        // for the appends after it: a log takes centuries to pass this bound,
        // and one beyond it (a hand edit, or an old checkpoint without a
        // checksum damaged) would wrap the sequences to 0.
        return Err(Error::corrupt(
            &path,
            0,
            format!("checkpoint sequence {} is out of range", cp.sequence),
        ));
    }
    Ok(Some(cp))
}

/// The highest checkpoint sequence loaded: 2^32 below `u64::MAX`.
pub const MAX_SEQUENCE: u64 = u64::MAX - (1 << 32);

/// Atomically replaces the checkpoint with `sequence`.
///
/// # Errors
/// I/O errors naming the file.
pub fn store(dir: &Path, sequence: u64) -> Result<Checkpoint> {
    let mut cp = Checkpoint {
        version: 1,
        sequence,
        timestamp_ms: super::files::now_ms(),
        crc32c: None,
    };
    cp.crc32c = Some(cp.checksum());
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
                br#"{"version":1,"sequence":43,"timestamp_ms":0,"crc32c":3141592653}"#.as_slice(),
                "checkpoint checksum mismatch",
            ),
            (
                br#"{"version":1,"sequence":18446744073709551615,"timestamp_ms":0}"#.as_slice(),
                "checkpoint sequence 18446744073709551615 is out of range",
            ),
            // Two below the largest: the next appends would wrap to 0.
            (
                br#"{"version":1,"sequence":18446744073709551613,"timestamp_ms":0}"#.as_slice(),
                "checkpoint sequence 18446744073709551613 is out of range",
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

    /// A digit changed in the stored file fails the checksum; a checkpoint written
    /// before the checksum existed still loads.
    #[test]
    fn a_changed_digit_fails_the_checksum_and_old_checkpoints_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        let stored = store(dir.path(), 4242).unwrap();
        assert_eq!(stored.crc32c, Some(stored.checksum()));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"crc32c\""), "{text}");
        std::fs::write(&path, text.replace("4242", "4243")).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        std::fs::write(&path, br#"{"version":1,"sequence":7,"timestamp_ms":5}"#).unwrap();
        assert_eq!(
            load(dir.path()).unwrap(),
            Some(Checkpoint {
                version: 1,
                sequence: 7,
                timestamp_ms: 5,
                crc32c: None
            })
        );
    }
}
