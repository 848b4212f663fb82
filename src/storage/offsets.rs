//! Durable committed offsets of consumer groups: one JSON file per group in
//! `<data>/groups/`, replaced atomically (temp file, fsync, rename, directory fsync)
//! on every commit, so an acknowledged OffsetCommit survives any crash.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Mutex, PoisonError},
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One committed position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset the group will consume.
    pub offset: i64,
    /// Leader epoch sent with the commit (-1 when none).
    pub leader_epoch: i32,
    /// Client metadata string.
    pub metadata: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct GroupFile {
    version: u32,
    group: String,
    offsets: Vec<Committed>,
}

type GroupOffsets = BTreeMap<(String, i32), Committed>;

/// Committed offsets of every group.
#[derive(Debug)]
pub struct OffsetStore {
    dir: PathBuf,
    groups: Mutex<HashMap<String, GroupOffsets>>,
}

fn file_name(group: &str) -> String {
    let hex: String = group.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.json")
}

impl OffsetStore {
    /// Loads every group file in `dir` (created when missing).
    ///
    /// # Errors
    /// I/O errors, or [`Error::Corrupt`] for a file that does not parse.
    pub fn open(dir: PathBuf) -> Result<OffsetStore> {
        crate::wal::files::create_dir_durable(&dir)?;
        let mut groups = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("read_dir", &dir, e))? {
            let path = entry.map_err(|e| Error::io("read_dir", &dir, e))?.path();
            // By name, not `extension()`: the empty group's file is `.json`, which
            // has no extension.
            let is_group_file = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".json"));
            if !is_group_file {
                continue;
            }
            let raw = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
            let f: GroupFile = serde_json::from_slice(&raw).map_err(|e| {
                Error::corrupt(&path, 0, format!("group offsets do not parse: {e}"))
            })?;
            let map = f
                .offsets
                .into_iter()
                .map(|c| ((c.topic.clone(), c.partition), c))
                .collect();
            groups.insert(f.group, map);
        }
        Ok(OffsetStore {
            dir,
            groups: Mutex::new(groups),
        })
    }

    /// Stores `commits` for `group` durably (blocking: fsyncs).
    ///
    /// # Errors
    /// I/O errors; the in-memory state is unchanged then.
    pub fn commit(&self, group: &str, commits: Vec<Committed>) -> Result<()> {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = groups.get(group).cloned().unwrap_or_default();
        for c in commits {
            next.insert((c.topic.clone(), c.partition), c);
        }
        let file = GroupFile {
            version: 1,
            group: group.to_string(),
            offsets: next.values().cloned().collect(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::corrupt(&self.dir, 0, e.to_string()))?;
        crate::wal::files::write_atomic(&self.dir.join(file_name(group)), &json)?;
        groups.insert(group.to_string(), next);
        Ok(())
    }

    /// The committed position of `topic`/`partition` in `group`.
    pub fn fetch(&self, group: &str, topic: &str, partition: i32) -> Option<Committed> {
        let groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        groups
            .get(group)?
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Every committed position of `group`.
    pub fn fetch_all(&self, group: &str) -> Vec<Committed> {
        let groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        groups
            .get(group)
            .map(|g| g.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = OffsetStore::open(dir.path().join("groups")).unwrap();
        let c = |p, o| Committed {
            topic: "t".into(),
            partition: p,
            offset: o,
            leader_epoch: -1,
            metadata: None,
        };
        s.commit("g/1", vec![c(0, 5), c(1, 7)]).unwrap();
        s.commit("g/1", vec![c(0, 9)]).unwrap();
        s.commit("", vec![c(0, 3)]).unwrap();
        drop(s);
        let s = OffsetStore::open(dir.path().join("groups")).unwrap();
        assert_eq!(s.fetch("", "t", 0).unwrap().offset, 3, "the empty group");
        assert_eq!(s.fetch("g/1", "t", 0).unwrap().offset, 9);
        assert_eq!(s.fetch("g/1", "t", 1).unwrap().offset, 7);
        assert!(s.fetch("other", "t", 0).is_none());
        assert_eq!(s.fetch_all("g/1").len(), 2);
    }
}
