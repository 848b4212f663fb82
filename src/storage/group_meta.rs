//! Durable consumer-group membership: one JSON file per group in
//! `<data>/groups/members/`, named as the group's offsets file in `<data>/groups/`
//! is ([`super::offsets`]), replaced atomically (temp file, fsync, rename, directory
//! fsync). As Kafka keeps a group's metadata in `__consumer_offsets`, the
//! coordinator stores it when a SyncGroup completes a rebalance (generation,
//! protocol type and name, leader and every member with its subscription metadata
//! and assignment), when a static member replaces itself in a stable group and
//! when the group becomes empty (the generation and protocol type stay), and
//! loads it at start: a group with members comes back `Stable`.
//!
//! The files sit in a directory of their own, not beside the offsets files: the
//! offsets store (and every earlier version of it) reads each `*.json` in
//! `groups/` as a group's offsets, and the atomic replace writes its temporary file
//! beside the file it replaces, so a membership file of the same stem would share
//! the offsets file's temporary name.
//!
//! A file holds what the coordinator holds in memory for the group: per member
//! its protocols with their metadata (each from a JoinGroup, so at most one
//! `--max-request-bytes` frame) and its assignment (all of them from the leader's
//! SyncGroup, one frame at most together), in base64.
//!
//! The store only reads and writes files; what a group's membership means, and
//! when it is written, is the coordinator's ([`crate::server::groups`]).

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        MutexGuard,
    },
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    checked::Checked,
    offsets::{file_name, group_files, GroupLocks},
};
use crate::error::{Error, Result};

/// The directory, inside the offsets store's, that holds the membership files.
pub const MEMBERS_DIR: &str = "members";

/// The only version of the file written so far.
const VERSION: u32 = 1;

/// A group's membership as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    /// Generation of the group: the last one formed.
    pub generation: i32,
    /// Protocol type of its members ("consumer"), kept while it is empty.
    pub protocol_type: Option<String>,
    /// The assignment protocol chosen for the generation; `None` without members.
    pub protocol: Option<String>,
    /// The leader's member id; `None` without members.
    pub leader: Option<String>,
    /// When the group became empty, in milliseconds since the Unix epoch; `None`
    /// while it has members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_since_ms: Option<i64>,
    /// The members of the generation, with their assignments.
    pub members: Vec<MemberMeta>,
}

/// A member as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberMeta {
    /// Member id.
    pub member_id: String,
    /// Static membership id (KIP-345).
    pub instance_id: Option<String>,
    /// Client id of its JoinGroup.
    pub client_id: String,
    /// Address its JoinGroup came from (`/<ip>`).
    pub client_host: String,
    /// Session timeout, in milliseconds.
    pub session_timeout_ms: u64,
    /// Rebalance timeout, in milliseconds.
    pub rebalance_timeout_ms: u64,
    /// The protocols it supports with its metadata for each, in its order.
    pub protocols: Vec<ProtocolMeta>,
    /// Its assignment from the leader.
    #[serde(with = "base64_bytes")]
    pub assignment: Bytes,
}

/// One protocol of a member, with the member's metadata for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolMeta {
    /// Protocol name ("range", "cooperative-sticky", ...).
    pub name: String,
    /// The member's metadata for it (its subscription, for consumers).
    #[serde(with = "base64_bytes")]
    pub metadata: Bytes,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MetaFile {
    version: u32,
    group: String,
    #[serde(flatten)]
    meta: GroupMeta,
    /// CRC32C of the file's other fields (see [`super::checked`]): a flipped
    /// digit in the generation or a timeout would otherwise be obeyed. Absent
    /// in files written before it existed (loaded unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<u32>,
}

super::checked::checked_by_field!(MetaFile);

/// Client bytes in a JSON file: standard base64 with padding.
mod base64_bytes {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// A membership file read at start.
#[derive(Debug)]
pub struct LoadedMeta {
    /// The file.
    pub path: PathBuf,
    /// The group it holds, or why it could not be read: the group then starts
    /// without membership.
    pub group: std::result::Result<(String, GroupMeta), String>,
}

/// The membership files of every group.
#[derive(Debug)]
pub struct GroupMetaStore {
    dir: PathBuf,
    /// Whoever writes or removes a group's file holds one of these, chosen by
    /// the group's name, from reading the group's state until the file is in
    /// place, so that the file written last holds the newest state.
    writers: GroupLocks,
    /// Removals whose directory fsync failed, or was left for
    /// [`GroupMetaStore::sync_removals`] ([`GroupMetaStore::remove_unsynced`]),
    /// counted. While a directory fsync begun after the last of them has not
    /// succeeded ([`GroupMetaStore::synced_removals`]), a removal whose file
    /// is gone already (the failed one's, tried again) fsyncs the directory
    /// all the same, so that it is done only once the file's removal is
    /// durable.
    unsynced_removals: AtomicU64,
    /// The count of [`GroupMetaStore::unsynced_removals`] when the newest
    /// directory fsync of a removal that succeeded began: the removals it
    /// counted are durable.
    synced_removals: AtomicU64,
}

impl GroupMetaStore {
    /// Opens `dir` (created, durably, when missing) and reads every membership
    /// file in it. A file that cannot be read or does not parse is reported in
    /// its [`LoadedMeta`], not as an error: membership can be formed again,
    /// and the file is replaced the next time the group is stored.
    ///
    /// # Errors
    /// I/O errors creating or listing `dir`.
    pub fn open(dir: PathBuf) -> Result<(GroupMetaStore, Vec<LoadedMeta>)> {
        let mut loaded = Vec::new();
        for path in group_files(&dir)? {
            let group = read(&path);
            loaded.push(LoadedMeta { path, group });
        }
        loaded.sort_by(|a, b| a.path.cmp(&b.path));
        // As the offsets store's open: a removal (or a rename into place)
        // before a crash, its directory fsync not done, is loaded as the
        // state, and a removal sent again finds nothing to remove and answers
        // done; a power loss then brought the membership of a group answered
        // deleted back. This makes what was loaded durable.
        crate::wal::files::sync_dir(&dir)?;
        let store = GroupMetaStore {
            dir,
            writers: GroupLocks::new(),
            unsynced_removals: AtomicU64::new(0),
            synced_removals: AtomicU64::new(0),
        };
        Ok((store, loaded))
    }

    /// The file of `group`.
    pub fn path(&self, group: &str) -> PathBuf {
        self.dir.join(file_name(group))
    }

    /// The lock every writer of `group` holds from reading the group's state
    /// until its file is written or removed, so that the file written last
    /// holds the newest state.
    pub fn writer(&self, group: &str) -> MutexGuard<'_, ()> {
        self.writers.lock(group)
    }

    /// Stores `meta` as `group`'s membership, durably (blocking: fsyncs). The
    /// caller holds [`GroupMetaStore::writer`] for `group`.
    ///
    /// # Errors
    /// I/O errors, naming the file; the previous file is in place then, except
    /// when the directory fsync after the rename failed: the new file is in
    /// place but may not survive a power loss (see `write_atomic_renamed`;
    /// `GroupCoordinator::stored` handles that case).
    pub fn write(&self, group: &str, meta: &GroupMeta) -> Result<()> {
        let path = self.path(group);
        let file = MetaFile {
            version: VERSION,
            group: group.to_string(),
            meta: meta.clone(),
            crc32c: None,
        }
        .sealed();
        let json =
            serde_json::to_vec(&file).map_err(|e| Error::corrupt(&path, 0, e.to_string()))?;
        crate::wal::files::write_atomic(&path, &json)
    }

    /// Changes `group`'s file as it is by `change`, which returns whether it
    /// changed anything, and stores the result as [`GroupMetaStore::write`]
    /// does. Nothing is written when there is no file, or one that does not
    /// load (a start would not load it either; the group's next store
    /// replaces it). The caller holds [`GroupMetaStore::writer`] for `group`.
    ///
    /// # Errors
    /// I/O errors, naming the file, as [`GroupMetaStore::write`].
    pub fn update(&self, group: &str, change: impl FnOnce(&mut GroupMeta) -> bool) -> Result<()> {
        let path = self.path(group);
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let mut meta = match parse(&path, &raw) {
            Ok((_, meta)) => meta,
            Err(why) => {
                tracing::warn!(file = %path.display(), "a group's membership file {why}; not updated");
                return Ok(());
            }
        };
        if change(&mut meta) {
            self.write(group, &meta)?;
        }
        Ok(())
    }

    /// Removes `group`'s membership, durably (blocking: removes its file and
    /// fsyncs the directory, when there was a file, or when an earlier
    /// removal's directory fsync failed). The caller holds
    /// [`GroupMetaStore::writer`] for `group`.
    ///
    /// # Errors
    /// I/O errors, naming the file or directory. When only the directory fsync
    /// failed the file is gone from this run but may come back after a crash;
    /// the removal tried again fsyncs the directory again.
    pub fn remove(&self, group: &str) -> Result<()> {
        let path = self.path(group);
        // Read before the removal: the fsync below covers the removals whose
        // failures it counts, all made before.
        let failed = self.unsynced_removals.load(Ordering::Acquire);
        match crate::wal::files::remove(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if failed <= self.synced_removals.load(Ordering::Acquire) {
                    return Ok(());
                }
            }
            Err(e) => return Err(Error::io("remove", &path, e)),
        }
        // Without this a crash could bring the group's membership back.
        if let Err(e) = crate::wal::files::sync_dir(&self.dir) {
            self.unsynced_removals.fetch_add(1, Ordering::AcqRel);
            return Err(e);
        }
        self.synced_removals.fetch_max(failed, Ordering::AcqRel);
        Ok(())
    }
}

impl GroupMetaStore {
    /// Removes `group`'s membership file, leaving the directory fsync that
    /// makes the removal durable to [`GroupMetaStore::sync_removals`] (or to
    /// the next removal's): a pass that removes many files syncs the
    /// directory once. The caller holds [`GroupMetaStore::writer`] for
    /// `group`.
    ///
    /// # Errors
    /// The removal's, naming the file.
    pub fn remove_unsynced(&self, group: &str) -> Result<()> {
        let path = self.path(group);
        match crate::wal::files::remove(&path) {
            Ok(()) => {
                self.unsynced_removals.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path, e)),
        }
    }

    /// Makes the removals before it durable (one directory fsync), when any
    /// is not yet.
    ///
    /// # Errors
    /// The fsync's, naming the directory; the removals stay counted as not
    /// durable, and the next removal fsyncs the directory.
    pub fn sync_removals(&self) -> Result<()> {
        let failed = self.unsynced_removals.load(Ordering::Acquire);
        if failed <= self.synced_removals.load(Ordering::Acquire) {
            return Ok(());
        }
        crate::wal::files::sync_dir(&self.dir)?;
        self.synced_removals.fetch_max(failed, Ordering::AcqRel);
        Ok(())
    }
}

/// Reads the membership file `path`: the group and its membership, or why not.
fn read(path: &Path) -> std::result::Result<(String, GroupMeta), String> {
    let raw = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    parse(path, &raw)
}

/// The group and membership that `raw`, the bytes of the membership file
/// `path`, holds, or why not.
fn parse(path: &Path, raw: &[u8]) -> std::result::Result<(String, GroupMeta), String> {
    let f: MetaFile = serde_json::from_slice(raw).map_err(|e| format!("does not parse: {e}"))?;
    if f.version != VERSION {
        return Err(format!(
            "has version {}, and this broker reads version {VERSION}",
            f.version
        ));
    }
    // Another name than the group's would leave a second file beside it when
    // the group is stored.
    let want = file_name(&f.group);
    if path.file_name().and_then(|n| n.to_str()) != Some(want.as_str()) {
        return Err(format!("holds group {:?}, whose file is {want}", f.group));
    }
    f.verify(path, raw)
        .map_err(|e| format!("does not check: {e}"))?;
    Ok((f.group, f.meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(members: usize) -> GroupMeta {
        GroupMeta {
            generation: 7,
            protocol_type: Some("consumer".into()),
            protocol: (members > 0).then(|| "range".into()),
            leader: (members > 0).then(|| "m-0".into()),
            empty_since_ms: (members == 0).then_some(1_700_000_000_000),
            members: (0..members)
                .map(|i| MemberMeta {
                    member_id: format!("m-{i}"),
                    instance_id: (i == 1).then(|| "static".into()),
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    session_timeout_ms: 10_000,
                    rebalance_timeout_ms: 30_000,
                    protocols: vec![
                        ProtocolMeta {
                            name: "range".into(),
                            metadata: Bytes::from(vec![0, 1, 0xff, i as u8]),
                        },
                        ProtocolMeta {
                            name: "roundrobin".into(),
                            metadata: Bytes::new(),
                        },
                    ],
                    assignment: Bytes::from(vec![9; i + 1]),
                })
                .collect(),
        }
    }

    #[test]
    fn membership_survives_reopen_and_removal_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups").join(MEMBERS_DIR);
        let (s, loaded) = GroupMetaStore::open(path.clone()).unwrap();
        assert!(loaded.is_empty());
        let long = "g".repeat(300);
        for (g, m) in [("a", meta(2)), ("", meta(0)), (long.as_str(), meta(1))] {
            let _w = s.writer(g);
            s.write(g, &m).unwrap();
        }
        {
            let _w = s.writer("a");
            s.write("a", &meta(3)).unwrap();
        }
        drop(s);
        let (s, loaded) = GroupMetaStore::open(path.clone()).unwrap();
        let mut got: Vec<(String, GroupMeta)> =
            loaded.into_iter().map(|l| l.group.unwrap()).collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                (String::new(), meta(0)),
                ("a".into(), meta(3)),
                (long.clone(), meta(1))
            ]
        );
        {
            let _w = s.writer("a");
            s.remove("a").unwrap();
            s.remove("a").unwrap();
            s.remove("never").unwrap();
        }
        assert!(!s.path("a").exists());
        drop(s);
        let (_, loaded) = GroupMetaStore::open(path).unwrap();
        assert_eq!(loaded.len(), 2);
    }

    #[test]
    fn a_file_that_does_not_parse_is_reported_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MEMBERS_DIR);
        let (s, _) = GroupMetaStore::open(path.clone()).unwrap();
        s.write("good", &meta(1)).unwrap();
        std::fs::write(s.path("bad"), b"{\"version\":1,\"gro").unwrap();
        std::fs::write(
            s.path("future"),
            br#"{"version":2,"group":"future","generation":1,"protocol_type":null,"protocol":null,"leader":null,"members":[]}"#,
        )
        .unwrap();
        std::fs::copy(s.path("good"), s.path("elsewhere")).unwrap();
        drop(s);
        let (_, loaded) = GroupMetaStore::open(path).unwrap();
        let errors: Vec<(String, String)> = loaded
            .iter()
            .filter_map(|l| {
                let name = l.path.file_name()?.to_str()?.to_string();
                l.group.as_ref().err().map(|e| (name, e.clone()))
            })
            .collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        let hex = |g: &str| file_name(g);
        assert!(errors
            .iter()
            .any(|(n, e)| *n == hex("bad") && e.contains("does not parse")));
        assert!(errors
            .iter()
            .any(|(n, e)| *n == hex("future") && e.contains("version 2")));
        assert!(errors
            .iter()
            .any(|(n, e)| *n == hex("elsewhere") && e.contains("\"good\"")));
        assert_eq!(
            loaded
                .iter()
                .filter_map(|l| l.group.as_ref().ok())
                .map(|(g, _)| g.as_str())
                .collect::<Vec<_>>(),
            vec!["good"]
        );
    }

    /// A digit changed in a stored generation (valid JSON still) is found by
    /// the checksum, and the group starts without membership as for a file
    /// that does not parse; a file without a checksum (an older build's)
    /// loads unchecked.
    #[test]
    fn a_changed_generation_fails_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MEMBERS_DIR);
        let (s, _) = GroupMetaStore::open(path.clone()).unwrap();
        s.write("g", &meta(2)).unwrap();
        let raw = std::fs::read_to_string(s.path("g")).unwrap();
        assert!(raw.contains("\"generation\":7,"), "{raw}");
        assert!(raw.contains("\"crc32c\":"), "{raw}");
        std::fs::write(
            s.path("g"),
            raw.replace("\"generation\":7,", "\"generation\":9,"),
        )
        .unwrap();
        let unchecked = MetaFile {
            version: VERSION,
            group: "old".into(),
            meta: meta(1),
            crc32c: None,
        };
        std::fs::write(s.path("old"), serde_json::to_vec(&unchecked).unwrap()).unwrap();
        drop(s);
        let (_, loaded) = GroupMetaStore::open(path).unwrap();
        let got: Vec<_> = loaded.iter().map(|l| l.group.clone()).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        let bad = loaded
            .iter()
            .find(|l| l.path.ends_with(file_name("g")))
            .unwrap();
        let e = bad.group.as_ref().unwrap_err();
        assert!(e.contains("checksum mismatch"), "{e}");
        let old = loaded
            .iter()
            .find(|l| l.path.ends_with(file_name("old")))
            .unwrap();
        assert_eq!(old.group.as_ref().unwrap(), &("old".to_string(), meta(1)));
    }

    /// A power loss right after a group's membership was stored or removed
    /// keeps the change: the directory was fsynced after each (the simulated
    /// disk keeps exactly the directory entries as of the last fsync here).
    #[cfg(unix)]
    #[test]
    fn stores_and_removals_survive_a_power_loss() {
        use crate::wal::sim::{SimDisk, SimPlan};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MEMBERS_DIR);
        let (s, _) = GroupMetaStore::open(path.clone()).unwrap();
        s.write("gone", &meta(1)).unwrap();
        let disk = SimDisk::new(SimPlan::plain(1));
        disk.watch_dir(&path).unwrap();
        s.write("new", &meta(2)).unwrap();
        s.remove("gone").unwrap();
        drop(s);
        disk.power_loss_keeping(false, Some(0)).unwrap();
        let (_, loaded) = GroupMetaStore::open(path).unwrap();
        let groups: Vec<(String, GroupMeta)> =
            loaded.into_iter().map(|l| l.group.unwrap()).collect();
        assert_eq!(groups, vec![("new".to_string(), meta(2))]);
    }

    /// A removal whose directory fsync failed, then a restart: the removal
    /// sent again finds no file and answers done, and a power loss must not
    /// bring the file back (the open makes what it loaded durable).
    #[cfg(unix)]
    #[test]
    fn a_removal_cut_before_its_directory_fsync_is_made_durable_by_the_restart() {
        use crate::wal::sim::{SimDisk, SimPlan};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MEMBERS_DIR);
        let (s, _) = GroupMetaStore::open(path.clone()).unwrap();
        s.write("g", &meta(1)).unwrap();
        s.write("kept", &meta(2)).unwrap();
        let disk = SimDisk::new(SimPlan::plain(1));
        disk.watch_dir(&path).unwrap();
        disk.crash_at_next_dir_sync();
        assert!(s.remove("g").is_err());
        drop(s);
        disk.restart();
        let (s, loaded) = GroupMetaStore::open(path.clone()).unwrap();
        assert_eq!(loaded.len(), 1, "the file removed before the crash");
        s.remove("g").unwrap();
        drop(s);
        disk.power_loss_keeping(false, Some(0)).unwrap();
        let (_, loaded) = GroupMetaStore::open(path).unwrap();
        let groups: Vec<(String, GroupMeta)> =
            loaded.into_iter().map(|l| l.group.unwrap()).collect();
        assert_eq!(
            groups,
            vec![("kept".to_string(), meta(2))],
            "a removal answered done came back after a power loss"
        );
    }
}
