//! Small JSON state files that carry a CRC32C of their other fields, as
//! `checkpoint.json` does: a digit changed by damage in one of them would
//! otherwise be obeyed with nothing to tell. Those are a topic's `topic.json`
//! (its `wal_floor`, `retention.ms`), a partition's `log-start-offset.json`,
//! `compacted.json` and `delete-horizon.json`, `producer-ids.json`,
//! `recovery-points.json`, each group's offsets and membership files, and
//! each segment's producer snapshot: records lost, ids handed out again,
//! records skipped or brought back, tombstones removed early, a producer's
//! retry stored twice or refused. (A snapshot that fails its checksum is
//! ignored, as one a power loss emptied: the state comes from an older one
//! and the segments after it.) A file without the field (written before it
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
    /// `path` as `raw`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the file when the checksum does not match:
    /// as written by a later build when `raw` holds fields this build does
    /// not know (which the checksum covered, and this build cannot), else as
    /// damaged. (Later builds add fields without a new `version`, as the
    /// checksum itself was added.)
    fn verify(&self, path: &Path, raw: &[u8]) -> Result<()> {
        let Some(stored) = self.crc32c() else {
            return Ok(());
        };
        let computed = self.checksum();
        if stored == computed {
            return Ok(());
        }
        let unknown = unknown_fields(raw, self);
        let why = if unknown.is_empty() {
            "the file is damaged (after an edit by hand, remove its crc32c field to load it \
             unchecked)"
                .to_string()
        } else {
            format!(
                "the file holds fields this build does not know ({}): a later build wrote \
                 it (or damage changed a field's name), and this one can neither check nor \
                 keep them; start that build, or remove the crc32c field to load the file \
                 unchecked without them",
                unknown.join(", ")
            )
        };
        Err(Error::corrupt(
            path,
            0,
            format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): {why}"),
        ))
    }
}

/// Implements [`Checked`] for a struct whose checksum is its field `crc32c:
/// Option<u32>`.
macro_rules! checked_by_field {
    ($t:ty) => {
        impl $crate::storage::checked::Checked for $t {
            fn crc32c(&self) -> Option<u32> {
                self.crc32c
            }

            fn set_crc32c(&mut self, crc: Option<u32>) {
                self.crc32c = crc;
            }
        }
    };
}
pub(crate) use checked_by_field;

/// At most this many unknown fields are named.
const NAMED_FIELDS: usize = 5;

/// The fields (as `a.b[2].c` paths) of the JSON `raw` that `parsed`, read
/// from it, does not serialise: those of a later build.
fn unknown_fields<T: Serialize>(raw: &[u8], parsed: &T) -> Vec<String> {
    let (Ok(raw), Ok(ours)) = (
        serde_json::from_slice::<serde_json::Value>(raw),
        serde_json::to_value(parsed),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(&raw, &ours, String::new(), &mut out);
    out
}

fn walk(raw: &serde_json::Value, ours: &serde_json::Value, at: String, out: &mut Vec<String>) {
    use serde_json::Value;
    match (raw, ours) {
        (Value::Object(raw), Value::Object(ours)) => {
            for (key, value) in raw {
                if out.len() == NAMED_FIELDS {
                    return;
                }
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match ours.get(key) {
                    Some(ours) => walk(value, ours, path, out),
                    // A field this build leaves out when it is empty.
                    None if value.is_null() => {}
                    None => out.push(path),
                }
            }
        }
        (Value::Array(raw), Value::Array(ours)) => {
            for (i, (raw, ours)) in raw.iter().zip(ours).enumerate() {
                walk(raw, ours, format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct File {
        version: u32,
        items: Vec<Item>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        crc32c: Option<u32>,
    }

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Item {
        offset: i64,
    }

    checked_by_field!(File);

    /// A file a later build wrote with a field this one does not know
    /// (covered by its checksum) is refused as such, naming the field, not
    /// as damaged; a changed digit is damage.
    #[test]
    fn a_later_builds_fields_are_named_not_called_damage() {
        let path = Path::new("state.json");
        let file = File {
            version: 1,
            items: vec![Item { offset: 5 }, Item { offset: 6 }],
            crc32c: None,
        }
        .sealed();
        let raw = serde_json::to_vec(&file).unwrap();
        let back: File = serde_json::from_slice(&raw).unwrap();
        back.verify(path, &raw).unwrap();

        // A later build's file: its checksum covers its new fields.
        let mut later = serde_json::to_value(&file).unwrap();
        later["epoch"] = 3.into();
        later["items"][1]["leader"] = 2.into();
        later.as_object_mut().unwrap().remove("crc32c");
        let crc = crc32c::crc32c(&serde_json::to_vec(&later).unwrap());
        later["crc32c"] = crc.into();
        let raw = serde_json::to_vec(&later).unwrap();
        let back: File = serde_json::from_slice(&raw).unwrap();
        let e = back.verify(path, &raw).unwrap_err().to_string();
        assert!(
            e.contains("fields this build does not know (epoch, items[1].leader)")
                && e.contains("a later build wrote")
                && !e.contains("damaged"),
            "{e}"
        );

        let damaged = String::from_utf8(serde_json::to_vec(&file).unwrap())
            .unwrap()
            .replace("\"offset\":6", "\"offset\":7");
        let back: File = serde_json::from_slice(damaged.as_bytes()).unwrap();
        let e = back
            .verify(path, damaged.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the file is damaged") && !e.contains("later build"),
            "{e}"
        );
    }
}
