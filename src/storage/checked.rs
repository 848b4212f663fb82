//! Small JSON state files that carry a CRC32C of their other fields, as
//! `checkpoint.json` does: a digit changed by damage in one of them (a topic's
//! `wal_floor` or `retention.ms`, a partition's log start offset, the producer id
//! reservation, a group's committed position) would otherwise be obeyed, losing
//! records, handing out ids again or skipping records, with nothing to tell. A file without the field (written before it
//! existed, or edited by hand with it removed) loads unchecked.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

/// A JSON file with an optional `crc32c` field over the rest of it.
pub(crate) trait Checked: Serialize + Clone {
    /// The stored checksum.
    fn crc32c(&self) -> Option<u32>;

    /// Sets the stored checksum.
    fn set_crc32c(&mut self, crc: Option<u32>);

    /// CRC32C of the compact JSON of the file without its checksum (the same
    /// bytes whatever the file's layout: fields in their declared order, maps
    /// by key).
    fn checksum(&self) -> u32 {
        let json = if self.crc32c().is_none() {
            serde_json::to_vec(self)
        } else {
            let mut bare = self.clone();
            bare.set_crc32c(None);
            serde_json::to_vec(&bare)
        };
        crc32c::crc32c(&json.expect("a state file serialises"))
    }

    /// The file with its checksum set.
    fn sealed(mut self) -> Self {
        self.set_crc32c(None);
        let crc = self.checksum();
        self.set_crc32c(Some(crc));
        self
    }

    /// Checks the stored checksum, when there is one, of the file read from
    /// `path`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the file when the checksum does not match.
    fn verify(&self, path: &Path) -> Result<()> {
        let Some(stored) = self.crc32c() else {
            return Ok(());
        };
        let computed = self.checksum();
        if stored == computed {
            return Ok(());
        }
        Err(Error::corrupt(
            path,
            0,
            format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file \
                 is damaged (after an edit by hand, remove its crc32c field to load it \
                 unchecked)"
            ),
        ))
    }
}
