//! Durable committed offsets of consumer groups: one JSON file per group in
//! `<data>/groups/`, replaced atomically (temp file, fsync, rename, directory fsync)
//! on every commit, so an acknowledged OffsetCommit survives any crash. Deleting a
//! group removes its file and fsyncs the directory, so a deleted group's offsets
//! never come back after a restart.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::SystemTime,
};

use crate::log_limit::Shown;
use serde::{Deserialize, Serialize};

use super::{checked::Checked, moment::Moment};
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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupFile {
    version: u32,
    group: String,
    /// The protocol type of the group's members ("consumer") when members of a
    /// group using the broker's coordination committed; absent for simple groups
    /// (offsets committed without membership). Files written before the field
    /// existed read as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol_type: Option<String>,
    /// When the group last committed, in ms since the epoch. Files written
    /// before the field existed read as absent: the newest position's commit
    /// time is taken then (the file's modification time is not: deleting
    /// positions rewrites the file without a commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_commit_ms: Option<i64>,
    offsets: Vec<StoredOffset>,
    /// CRC32C of the fields above (see [`super::checked`]): a digit changed by
    /// damage in a position made the group's consumers skip records or read
    /// them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<u32>,
}

super::checked::checked_by_field!(GroupFile);

/// A committed position as stored, with when it was committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredOffset {
    #[serde(flatten)]
    committed: Committed,
    /// Milliseconds since the Unix epoch; files written before it was recorded
    /// read as their modification time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commit_timestamp_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct GroupOffsets {
    protocol_type: Option<String>,
    /// Each position with when it was committed.
    offsets: BTreeMap<(String, i32), (Committed, Moment)>,
    /// When the group last committed: the file's modification time after a
    /// restart, for a file older than its field.
    last_commit: Moment,
}

/// `t` in milliseconds since the Unix epoch (0 before it).
pub(crate) fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The instant `ms` milliseconds after the Unix epoch (the epoch for a negative `ms`).
pub(crate) fn from_ms(ms: i64) -> SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl Default for GroupOffsets {
    fn default() -> Self {
        GroupOffsets {
            protocol_type: None,
            offsets: BTreeMap::new(),
            last_commit: Moment::now(),
        }
    }
}

/// A group that has committed offsets, as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGroup {
    /// Group id.
    pub group: String,
    /// The protocol type recorded with its commits (see [`OffsetStore::commit`]).
    pub protocol_type: Option<String>,
}

/// Committed offsets of every group.
#[derive(Debug)]
pub struct OffsetStore {
    dir: PathBuf,
    /// What every group holds. Held only to read or swap a group's state, never
    /// across a file write: readers (OffsetFetch, ListGroups, ...) run on the
    /// server's runtime threads and must not wait for another group's fsyncs.
    groups: Mutex<HashMap<String, Arc<GroupOffsets>>>,
    /// Writers of one group's file (and state) hold its lock for the whole
    /// read-modify-write, so two writers of one group never lose each other's
    /// change.
    writers: GroupLocks,
    /// Groups whose first commit is being judged and stored (under their
    /// writer lock), not yet in `groups`: a deleted topic's positions are
    /// dropped from these too (see [`OffsetStore::delete_topic_positions`]).
    first_commits: Mutex<std::collections::HashSet<String>>,
    /// Files renamed into place whose directory fsync then failed, counted
    /// (see [`OffsetStore::store_as`]): until a directory fsync succeeds
    /// after them, a power loss may bring back what they replaced, so every
    /// removal of positions makes one first.
    renames_unsynced: std::sync::atomic::AtomicU64,
    /// The most of `renames_unsynced` a directory fsync that succeeded is
    /// known to cover: one that began after the count was read covers every
    /// rename counted by then. Both only grow, so a failure counted while a
    /// fsync ran is never taken for covered.
    renames_synced: std::sync::atomic::AtomicU64,
    /// The bytes of the ids of the groups in `groups`, judged against
    /// [`OffsetStore::max_group_id_bytes`].
    id_bytes: std::sync::atomic::AtomicUsize,
    /// The most groups the store takes a first commit for
    /// ([`MAX_STORED_GROUPS`], or a test's own).
    max_groups: std::sync::atomic::AtomicUsize,
    /// The most bytes of group ids it holds ([`MAX_STORED_GROUP_ID_BYTES`], or a
    /// test's own).
    max_group_id_bytes: std::sync::atomic::AtomicUsize,
}

/// The most groups whose committed positions the store holds: a first commit
/// of one more gets `COORDINATOR_NOT_AVAILABLE` ([`OffsetStore::has_room_for`]).
/// A commit with generation -1 to a new group id is stored at once, outside
/// the coordinator and its limit, and kept for `offsets.retention.minutes`:
/// one client created some 800 groups a second, each about 1.5 KB in memory
/// and a file, without bound.
pub const MAX_STORED_GROUPS: usize = 250_000;

/// How many times [`MAX_STORED_GROUPS`] and [`MAX_STORED_GROUP_ID_BYTES`] a
/// member's first commit may find held (see [`OffsetStore::has_room_for`]).
pub const MEMBER_COMMIT_ROOM: usize = 4;

/// The most bytes of group ids the store holds (ids may be 32 KiB long: 2,000
/// groups of 30,000-byte ids took 66 MB of memory and 83 MB of files).
pub const MAX_STORED_GROUP_ID_BYTES: usize = 64 << 20;

/// A group listed in [`OffsetStore::first_commits`] while its first commit is
/// judged and stored; unlisted when dropped (after the group is in the map).
struct FirstCommit<'a> {
    store: &'a OffsetStore,
    group: String,
}

impl<'a> FirstCommit<'a> {
    fn new(store: &'a OffsetStore, group: &str) -> FirstCommit<'a> {
        store
            .first_commits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group.to_string());
        FirstCommit {
            store,
            group: group.to_string(),
        }
    }
}

impl Drop for FirstCommit<'_> {
    fn drop(&mut self) {
        self.store
            .first_commits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.group);
    }
}

/// Locks serialising the writers of each group's file: one of 64, chosen by
/// the group's name.
#[derive(Debug)]
pub(crate) struct GroupLocks {
    locks: Box<[Mutex<()>]>,
    /// One turn per lock, awaited by requests before they take a place for
    /// blocking work that will wait for the lock (see [`GroupLocks::turn`]).
    turns: Box<[tokio::sync::Mutex<()>]>,
    /// Calls of [`GroupLocks::lock`] so far (tests: a thread about to wait).
    #[cfg(test)]
    asked: std::sync::atomic::AtomicUsize,
}

impl GroupLocks {
    pub(crate) fn new() -> GroupLocks {
        GroupLocks {
            locks: (0..64).map(|_| Mutex::new(())).collect(),
            turns: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            #[cfg(test)]
            asked: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The lock of `group`.
    pub(crate) fn lock(&self, group: &str) -> MutexGuard<'_, ()> {
        #[cfg(test)]
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.locks[self.index(group)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The turn of `group`'s lock: one holder at a time, awaited without
    /// blocking a thread.
    pub(crate) async fn turn(&self, group: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.turns[self.index(group)].lock().await
    }

    /// Which of the locks is `group`'s.
    fn index(&self, group: &str) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        group.hash(&mut h);
        (h.finish() % self.locks.len() as u64) as usize
    }

    /// Calls of [`GroupLocks::lock`] so far (tests).
    #[cfg(test)]
    pub(crate) fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The group files in `dir` (created, durably, when missing): every file named
/// `*.json`. By name, not `extension()`: the empty group's file is `.json`,
/// which has no extension. Removes every `*.tmp`, a write left unfinished.
///
/// # Errors
/// I/O errors creating or listing `dir`.
pub(crate) fn group_files(dir: &Path) -> Result<Vec<PathBuf>> {
    crate::wal::files::create_dir_durable(dir)?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io("read_dir", dir, e))? {
        let path = entry.map_err(|e| Error::io("read_dir", dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".json") {
            files.push(path);
        } else if name.ends_with(".tmp") {
            // A write of a group's file that a crash or an error stopped
            // before its rename (see `write_atomic`): nothing reads it, and
            // a group that is never written again would keep it for good.
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "could not remove an unfinished group file");
            }
        }
    }
    Ok(files)
}

/// The file of `group`: its name in hex, or for a name whose hex would not fit a
/// file name (255 bytes), the hex of its first [`LONG_NAME_PREFIX`] bytes and the
/// first 128 bits of its SHA-256. The group's name is read back from the file.
/// (A 64-bit FNV-1a hash was used before: a client could find two long names
/// sharing a file in some 2^32 tries, and each group's commits would replace the
/// other's. [`OffsetStore::open`] renames such files.)
pub(crate) fn file_name(group: &str) -> String {
    let hex = |b: &[u8]| -> String { b.iter().map(|b| format!("{b:02x}")).collect() };
    let bytes = group.as_bytes();
    if 2 * bytes.len() + ".json".len() <= 255 {
        return format!("{}.json", hex(bytes));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    format!(
        "h{}-{}.json",
        hex(&bytes[..LONG_NAME_PREFIX]),
        hex(&digest.as_ref()[..16])
    )
}

/// Whether `path` is named as the file of the long group name `group` was
/// before its hash changed (see [`file_name`]): `h`, the hex of the name's first
/// [`LONG_NAME_PREFIX`] bytes, `-`, 16 hex digits (a 64-bit FNV-1a hash).
fn old_long_name(path: &Path, group: &str) -> bool {
    let bytes = group.as_bytes();
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if bytes.len() <= LONG_NAME_PREFIX || !file_name(group).starts_with('h') {
        return false;
    }
    let prefix: String = bytes[..LONG_NAME_PREFIX]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    name.strip_prefix('h')
        .and_then(|n| n.strip_prefix(prefix.as_str()))
        .and_then(|n| n.strip_prefix('-'))
        .and_then(|n| n.strip_suffix(".json"))
        .is_some_and(|hash| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Bytes of a long group name kept in its file name (see [`file_name`]).
const LONG_NAME_PREFIX: usize = 100;

/// The groups a start names, one warning each, when it lowers their committed
/// positions to their partitions' log ends
/// ([`OffsetStore::lower_beyond_log_ends`]); the rest are counted in one line.
const LOWERED_NAMED: usize = 20;

/// Counts stored positions compared with the positions an OffsetDelete names
/// (tests check that this work does not grow with the two counts' product).
#[cfg(test)]
fn compared(n: usize) {
    COMPARED.with(|c| c.set(c.get() + n));
}

#[cfg(not(test))]
#[inline]
fn compared(_: usize) {}

#[cfg(test)]
thread_local! {
    /// What [`compared`] counted on this thread.
    static COMPARED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Run once by the next [`OffsetStore::delete_topic_positions`] on this
    /// thread, once it has listed the groups it goes through.
    static AFTER_GROUPS_LISTED: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
    /// Run once by the next [`OffsetStore::store_as`] on this thread, once
    /// its file is written.
    static AFTER_STORE: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
}

impl OffsetStore {
    /// Loads every group file in `dir` (created when missing).
    ///
    /// # Errors
    /// I/O errors, or [`Error::Corrupt`] for a file that does not parse.
    pub fn open(dir: PathBuf) -> Result<OffsetStore> {
        let mut groups = HashMap::new();
        for path in group_files(&dir)? {
            let raw = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
            let f: GroupFile = serde_json::from_slice(&raw).map_err(|e| {
                Error::corrupt(
                    &path,
                    0,
                    format!(
                        "group offsets do not parse: {e} (the file is damaged; to start \
                         without this group's committed positions, move the file out of \
                         the directory: its consumers then start where their reset \
                         policy says)"
                    ),
                )
            })?;
            if f.version != 1 {
                return Err(Error::corrupt(
                    &path,
                    0,
                    format!("unknown version {} (this build reads version 1)", f.version),
                ));
            }
            f.verify(&path, &raw)?;
            // Files older than the field and its positions' times: the file's
            // modification time, which was the last commit's then.
            let last_commit = f
                .last_commit_ms
                .or_else(|| f.offsets.iter().filter_map(|o| o.commit_timestamp_ms).max())
                .map(from_ms)
                .map_or_else(
                    || {
                        std::fs::metadata(&path)
                            .and_then(|m| m.modified())
                            .map_or_else(|_| Moment::now(), Moment::stored)
                    },
                    Moment::stored,
                );
            let offsets = f
                .offsets
                .into_iter()
                .map(|o| {
                    let at = o
                        .commit_timestamp_ms
                        .map_or(last_commit, |ms| Moment::stored(from_ms(ms)));
                    let c = o.committed;
                    ((c.topic.clone(), c.partition), (c, at))
                })
                .collect();
            // A long name's file from before its hash changed is renamed, so
            // that commits replace it rather than leave it beside a new one.
            // Any other file named otherwise than its group's name gives (a
            // copy left in the directory, a name damaged in the file) is
            // refused: renamed, it replaced the group's own file, or moved its
            // positions to another group.
            let want = dir.join(file_name(&f.group));
            if path != want {
                if !old_long_name(&path, &f.group) || want.exists() {
                    return Err(Error::corrupt(
                        &path,
                        0,
                        format!(
                            "holds the offsets of group {:?}, whose file is {}: a copy, or a \
                             damaged file? Move it out of the directory",
                            f.group,
                            want.display()
                        ),
                    ));
                }
                std::fs::rename(&path, &want).map_err(|e| Error::io("rename", &path, e))?;
            }
            groups.insert(
                f.group,
                Arc::new(GroupOffsets {
                    protocol_type: f.protocol_type,
                    offsets,
                    last_commit,
                }),
            );
        }
        // Always, not only after an older build's long name was renamed: a
        // file renamed into place (or removed) before a crash, its directory
        // fsync not done, is loaded as the state, and a removal
        // sent again finds nothing to remove and answers done; this makes
        // what was loaded durable (see [`OffsetStore::store_as`]).
        crate::wal::files::sync_dir(&dir)?;
        let id_bytes = groups.keys().map(String::len).sum();
        Ok(OffsetStore {
            dir,
            groups: Mutex::new(groups),
            writers: GroupLocks::new(),
            first_commits: Mutex::new(std::collections::HashSet::new()),
            renames_unsynced: std::sync::atomic::AtomicU64::new(0),
            renames_synced: std::sync::atomic::AtomicU64::new(0),
            id_bytes: std::sync::atomic::AtomicUsize::new(id_bytes),
            max_groups: std::sync::atomic::AtomicUsize::new(MAX_STORED_GROUPS),
            max_group_id_bytes: std::sync::atomic::AtomicUsize::new(MAX_STORED_GROUP_ID_BYTES),
        })
    }

    /// Gives this store limits of its own (tests of [`MAX_STORED_GROUPS`] and
    /// [`MAX_STORED_GROUP_ID_BYTES`]).
    #[cfg(test)]
    pub(crate) fn set_limits(&self, groups: usize, id_bytes: usize) {
        use std::sync::atomic::Ordering;
        self.max_groups.store(groups, Ordering::Release);
        self.max_group_id_bytes.store(id_bytes, Ordering::Release);
    }

    /// Whether a commit to `group` may be stored: it holds positions, or its
    /// first commit is under way, or there is room for one more group (fewer
    /// than [`MAX_STORED_GROUPS`], and its id within
    /// [`MAX_STORED_GROUP_ID_BYTES`] with the others', for a `simple` commit,
    /// one with no membership; [`MEMBER_COMMIT_ROOM`] times those for a
    /// member's commit, which takes a join and a sync first, so that what
    /// simple commits filled does not hold joined groups back, and joining,
    /// committing and leaving does not fill the store without bound either).
    /// Judged before the commit waits for its group's writer lock: first
    /// commits under way at once may pass it together (one per place for
    /// blocking work at most).
    pub fn has_room_for(&self, group: &str, simple: bool) -> bool {
        use std::sync::atomic::Ordering;
        let held = {
            let groups = self.lock();
            if groups.contains_key(group) {
                return true;
            }
            groups.len()
        };
        let firsts = self
            .first_commits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if firsts.contains(group) {
            return true;
        }
        let times = if simple { 1 } else { MEMBER_COMMIT_ROOM };
        let max_groups = self
            .max_groups
            .load(Ordering::Acquire)
            .saturating_mul(times);
        let max_bytes = self
            .max_group_id_bytes
            .load(Ordering::Acquire)
            .saturating_mul(times);
        held + firsts.len() < max_groups
            && self
                .id_bytes
                .load(Ordering::Acquire)
                .saturating_add(group.len())
                <= max_bytes
    }

    /// Puts `next` in force as `group`'s state, counting its id when it is new.
    fn put(&self, group: &str, next: GroupOffsets) {
        use std::sync::atomic::Ordering;
        if self
            .lock()
            .insert(group.to_string(), Arc::new(next))
            .is_none()
        {
            self.id_bytes.fetch_add(group.len(), Ordering::AcqRel);
        }
    }

    /// The directory holding the groups' files.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<GroupOffsets>>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock every writer of `group` holds (see [`OffsetStore::writers`]).
    pub(crate) fn writer(&self, group: &str) -> MutexGuard<'_, ()> {
        self.writers.lock(group)
    }

    /// The turn of `group`'s writer lock, for a request to hold while its
    /// blocking work waits for the lock: such requests wait for it here,
    /// asynchronously, rather than each in a place for blocking work
    /// ([`crate::server::blocking`]). Commits queued on one group's lock held
    /// every place, and every other client's blocking work (group stores,
    /// InitProducerId, CreateTopics) waited behind all of them.
    pub(crate) async fn writer_turn(&self, group: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.writers.turn(group).await
    }

    /// Writer locks asked for so far, held or waited for (tests: a thread
    /// about to wait for one).
    #[cfg(test)]
    pub(crate) fn writers_asked(&self) -> usize {
        self.writers.asked()
    }

    /// Stores `commits` for `group` durably (blocking: fsyncs). `protocol_type`,
    /// when given, is recorded as the group's protocol type (the protocol type of
    /// the members whose group this is); `None` keeps what was recorded before.
    ///
    /// # Errors
    /// I/O errors; as [`OffsetStore::commit_where`].
    pub fn commit(
        &self,
        group: &str,
        protocol_type: Option<&str>,
        commits: Vec<Committed>,
    ) -> Result<()> {
        self.commit_where(group, protocol_type, commits, |_| true)
            .map(|_| ())
    }

    /// [`OffsetStore::commit`] of the `commits` that `still` accepts, judged
    /// under the group's writer lock (each commit in turn, before anything is
    /// written), which a deleted topic's positions are dropped under too: a
    /// commit checked against a topic before it waited for the lock is judged
    /// again, so that it cannot land in a topic of the same name created
    /// meanwhile (the server judges there the committing member's generation
    /// too). Returns the positions refused.
    ///
    /// # Errors
    /// I/O errors. The in-memory state is unchanged when the file was not
    /// replaced; once it was renamed into place, a failure of the directory
    /// fsync after it leaves the commit in force, as the file holds it (see
    /// [`OffsetStore::store_as`]), and a commit sent again writes it again,
    /// directory fsync included.
    pub fn commit_where(
        &self,
        group: &str,
        protocol_type: Option<&str>,
        commits: Vec<Committed>,
        still: impl Fn(&Committed) -> bool,
    ) -> Result<Vec<(String, i32)>> {
        let _writer = self.writer(group);
        // Listed before the commits are judged, until the group is in the map
        // (or the commit failed): a delete that drops positions from the groups
        // it lists after its topic left the broker finds this one.
        let _first = (!self.lock().contains_key(group)).then(|| FirstCommit::new(self, group));
        let (commits, refused): (Vec<Committed>, Vec<Committed>) =
            commits.into_iter().partition(|c| still(c));
        let refused: Vec<(String, i32)> = refused
            .into_iter()
            .map(|c| (c.topic, c.partition))
            .collect();
        if commits.is_empty() {
            return Ok(refused);
        }
        // Copied outside the lock: a group may hold many positions, and readers
        // of every other group wait for the lock.
        let current = self.lock().get(group).cloned();
        let mut next = current.map_or_else(GroupOffsets::default, |g| (*g).clone());
        if let Some(t) = protocol_type {
            next.protocol_type = Some(t.to_string());
        }
        let now = Moment::now();
        for c in commits {
            next.offsets
                .insert((c.topic.clone(), c.partition), (c, now));
        }
        next.last_commit = now;
        self.store_as(group, next)?;
        Ok(refused)
    }

    /// Makes `next` the state of `group`, its file first (atomic replace).
    /// The caller holds the group's writer lock. A failure before the rename
    /// leaves both as they were. Once the file is renamed into place, `next`
    /// is put in force whatever follows, as the file holds it: a state kept
    /// behind its file let a later removal of positions the file held find
    /// nothing to remove in memory and write nothing, and a start brought
    /// them back (an OffsetDelete answered NONE, or a deleted topic's
    /// positions applied to a new topic of its name). A failed directory fsync
    /// is then still the error, and is counted in `renames_unsynced`.
    ///
    /// # Errors
    /// I/O errors, naming the file or directory.
    fn store_as(&self, group: &str, next: GroupOffsets) -> Result<()> {
        use std::sync::atomic::Ordering;
        let counted = self.renames_unsynced.load(Ordering::Acquire);
        let failed = self.store(group, &next)?;
        #[cfg(test)]
        if let Some(hook) = AFTER_STORE.with(|h| h.borrow_mut().take()) {
            hook();
        }
        self.put(group, next);
        match failed {
            None => {
                // Its directory fsync came after every rename counted then.
                self.renames_synced.fetch_max(counted, Ordering::AcqRel);
                Ok(())
            }
            Some(e) => {
                self.renames_unsynced.fetch_add(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Makes the renames counted in `renames_unsynced` durable, with a
    /// directory fsync, when any is not known to be.
    ///
    /// # Errors
    /// The fsync's.
    fn sync_renames(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let counted = self.renames_unsynced.load(Ordering::Acquire);
        if counted > self.renames_synced.load(Ordering::Acquire) {
            crate::wal::files::sync_dir(&self.dir)?;
            self.renames_synced.fetch_max(counted, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Whether a rename counted in `renames_unsynced` is not known to be
    /// durable (tests).
    #[cfg(test)]
    fn renames_pending(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.renames_unsynced.load(Ordering::Acquire) > self.renames_synced.load(Ordering::Acquire)
    }

    /// Writes `group`'s file (atomic replace); `Some` for a failure after the
    /// rename (see [`crate::wal::files::write_atomic_renamed`]).
    fn store(&self, group: &str, offsets: &GroupOffsets) -> Result<Option<Error>> {
        crate::wal::files::write_atomic_renamed(
            &self.dir.join(file_name(group)),
            &self.file_bytes(group, offsets)?,
        )
    }

    /// What `group`'s file holds for `offsets`.
    fn file_bytes(&self, group: &str, offsets: &GroupOffsets) -> Result<Vec<u8>> {
        let file = GroupFile {
            version: 1,
            group: group.to_string(),
            protocol_type: offsets.protocol_type.clone(),
            last_commit_ms: Some(to_ms(offsets.last_commit.wall())),
            offsets: offsets
                .offsets
                .values()
                .map(|(c, at)| StoredOffset {
                    committed: c.clone(),
                    commit_timestamp_ms: Some(to_ms(at.wall())),
                })
                .collect(),
            crc32c: None,
        }
        .sealed();
        serde_json::to_vec_pretty(&file).map_err(|e| Error::corrupt(&self.dir, 0, e.to_string()))
    }

    /// Deletes the positions `which` of `group` that `still` accepts, durably
    /// (blocking: rewrites its file, or removes it with the last position).
    /// `still` judges each of `which` under the group's writer lock, before
    /// anything is written: a deletion checked against the group before it
    /// waited for the lock (held across the fsyncs of every group sharing it)
    /// is judged again there, so that the server can refuse the positions of
    /// a topic a member subscribed to meanwhile, as OffsetDelete refuses them.
    /// Returns how many positions it deleted and those `still` refused. Its
    /// work is linear in `which` and the group's positions: each position is
    /// looked up in `which`, not compared with each of its entries (the writer
    /// lock holds up the commits of every group sharing it meanwhile).
    ///
    /// # Errors
    /// I/O errors. The positions are kept when the file was not replaced;
    /// once it was, they are gone, as from the file (see
    /// [`OffsetStore::store_as`]).
    pub fn delete_positions_where(
        &self,
        group: &str,
        which: &HashSet<(String, i32)>,
        still: impl Fn(&(String, i32)) -> bool,
    ) -> Result<(usize, Vec<(String, i32)>)> {
        let _writer = self.writer(group);
        let mut doomed: HashSet<&(String, i32)> = HashSet::with_capacity(which.len());
        let mut refused = Vec::new();
        for key in which {
            if still(key) {
                doomed.insert(key);
            } else {
                refused.push(key.clone());
            }
        }
        if doomed.is_empty() {
            return Ok((0, refused));
        }
        let removed = self.remove_positions_locked(
            group,
            |_| true,
            |key, _| {
                compared(1);
                !doomed.contains(key)
            },
        )?;
        Ok((removed, refused))
    }

    /// Deletes the positions of a simple group (one whose offsets were committed
    /// without membership: no protocol type recorded) whose commit time `stale`
    /// accepts, each on its own, as Kafka expires a standalone group's offsets; the group
    /// goes with its last position. Durable before it returns (blocking). Returns
    /// how many positions were deleted; 0 for a group with a protocol type.
    ///
    /// # Errors
    /// I/O errors. The positions are kept when the file was not replaced;
    /// once it was, they are gone, as from the file (see
    /// [`OffsetStore::store_as`]).
    pub fn expire_simple(&self, group: &str, stale: impl Fn(Moment) -> bool) -> Result<usize> {
        self.remove_positions(group, |g| g.protocol_type.is_none(), |_, at| !stale(*at))
    }

    /// Deletes the positions of `group` in topics outside those `subscribed`
    /// gives whose commit time `stale` accepts, each on its own: Kafka's expiry of the
    /// offsets a stable consumer group no longer subscribes to (KIP-496); none
    /// when it gives `None`. The group goes with its last position. Durable
    /// before it returns (blocking). Returns how many positions were deleted.
    /// `subscribed` is asked under the group's writer lock, just before the
    /// positions are judged (when the group has any): a member that subscribed
    /// to a topic while the expiry waited for the lock keeps its positions.
    ///
    /// # Errors
    /// I/O errors. The positions are kept when the file was not replaced;
    /// once it was, they are gone, as from the file (see
    /// [`OffsetStore::store_as`]).
    pub fn expire_unsubscribed(
        &self,
        group: &str,
        subscribed: impl FnOnce() -> Option<BTreeSet<String>>,
        stale: impl Fn(Moment) -> bool,
    ) -> Result<usize> {
        let topics = std::cell::OnceCell::new();
        self.remove_positions(
            group,
            |_| topics.get_or_init(subscribed).is_some(),
            |(topic, _), at| {
                topics
                    .get()
                    .and_then(Option::as_ref)
                    .is_none_or(|s| s.contains(topic))
                    || !stale(*at)
            },
        )
    }

    /// How many positions the groups hold in each topic, by topic name.
    pub fn positions_by_topic(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for g in self.lock().values() {
            for (topic, _) in g.offsets.keys() {
                *counts.entry(topic.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Deletes, durably (blocking), every group's positions in the topics `gone`
    /// says are gone: a deleted topic's, as Kafka drops a deleted partition's
    /// offsets. Returns how many positions were deleted.
    ///
    /// # Errors
    /// I/O errors; the positions of the group being rewritten, and of the groups
    /// after it, are kept then.
    ///
    /// Called once the topic has left the broker, it lists the groups whose
    /// first commit is under way as well as those with positions (in that
    /// order: a group leaves the first list only once it is in the map), and
    /// waits for each one's writer lock: a commit judged against the topic
    /// before it left (see [`OffsetStore::commit_where`]) is then stored, and
    /// its position dropped here; one judged after is refused. A group's
    /// first commit used to be stored after this had listed the groups,
    /// leaving a position in a deleted topic behind.
    pub fn delete_topic_positions(&self, gone: impl Fn(&str) -> bool) -> Result<usize> {
        let mut groups: Vec<String> = self
            .first_commits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        groups.extend(self.lock().keys().cloned());
        groups.sort_unstable();
        groups.dedup();
        #[cfg(test)]
        if let Some(listed) = AFTER_GROUPS_LISTED.with(|h| h.borrow_mut().take()) {
            listed();
        }
        let mut removed = 0;
        for g in groups {
            removed += self.remove_positions(&g, |_| true, |(topic, _), _| !gone(topic))?;
        }
        Ok(removed)
    }

    /// At start-up, once every partition is recovered: brings each committed
    /// position beyond its partition's log end (`end` gives it; `None` for a
    /// partition that does not exist, whose positions stay) down to that end.
    /// In `interval` or `os_default` mode, or with the WAL disabled, a consumer
    /// can read records before they are durable and commit a position past
    /// them, and the commit is durable at once: after a power loss the log ends
    /// below the position, producers are given its offsets again, and a group
    /// resuming there would skip their records. Each affected group's file is
    /// rewritten once, durably, keeping each position's metadata, leader epoch
    /// and commit time and the group's last commit time, with a warning naming
    /// the group and each position moved (the first [`LOWERED_NAMED`] groups;
    /// the rest are counted in one line). The files are renamed into place
    /// with one directory fsync for all of them: a start lowering thousands
    /// of groups (a client can commit past the end on purpose) took two
    /// fsyncs and a line each, minutes before the broker served. Returns how
    /// many positions moved.
    ///
    /// # Errors
    /// I/O errors writing a group's file, naming it; the groups before it are
    /// rewritten, it and those after it keep their positions (and a crash
    /// before the directory fsync may bring back some of those rewritten:
    /// the next start lowers them again).
    pub(crate) fn lower_beyond_log_ends(
        &self,
        end: impl Fn(&str, i32) -> Option<i64>,
    ) -> Result<usize> {
        let mut groups: Vec<String> = self.lock().keys().cloned().collect();
        groups.sort_unstable();
        let mut lowered = 0;
        let mut named = 0;
        let mut unnamed = (0usize, 0usize);
        for group in groups {
            let _writer = self.writer(&group);
            let Some(current) = self.lock().get(&group).cloned() else {
                continue;
            };
            let beyond: Vec<((String, i32), i64)> = current
                .offsets
                .iter()
                .filter_map(|(key, (c, _))| {
                    end(&key.0, key.1)
                        .filter(|&end| c.offset > end)
                        .map(|end| (key.clone(), end))
                })
                .collect();
            if beyond.is_empty() {
                continue;
            }
            let mut next = (*current).clone();
            let mut moved = Vec::with_capacity(beyond.len());
            for (key, end) in beyond {
                if let Some((c, _)) = next.offsets.get_mut(&key) {
                    moved.push(format!("{}/{}: {} -> {end}", key.0, key.1, c.offset));
                    c.offset = end;
                }
            }
            self.store_unsynced(&group, next)?;
            if named < LOWERED_NAMED {
                named += 1;
                tracing::warn!(
                    group = %Shown(&group),
                    positions = %moved.join(", "),
                    "committed positions beyond their partition's log end (records a crash took, or a position committed past the end) were brought down to it"
                );
            } else {
                unnamed.0 += 1;
                unnamed.1 += moved.len();
            }
            lowered += moved.len();
        }
        self.sync_renames()?;
        if unnamed.0 > 0 {
            tracing::warn!(
                groups = unnamed.0,
                positions = unnamed.1,
                "committed positions of more groups beyond their partition's log end were brought down to it (the first {LOWERED_NAMED} groups are named above)"
            );
        }
        Ok(lowered)
    }

    /// Makes `next` the state of `group`, as [`OffsetStore::store_as`] does,
    /// but leaves the directory fsync to [`OffsetStore::sync_renames`] (the
    /// rename is counted as not yet durable).
    fn store_unsynced(&self, group: &str, next: GroupOffsets) -> Result<()> {
        use std::sync::atomic::Ordering;
        crate::wal::files::write_renamed(
            &self.dir.join(file_name(group)),
            &self.file_bytes(group, &next)?,
        )?;
        self.renames_unsynced.fetch_add(1, Ordering::AcqRel);
        self.put(group, next);
        Ok(())
    }

    /// Keeps the positions of `group` (when `applies` to it) that `keep` says
    /// to, durably: the file is rewritten, or removed with the last position.
    /// Returns how many were removed.
    fn remove_positions(
        &self,
        group: &str,
        applies: impl FnOnce(&GroupOffsets) -> bool,
        keep: impl FnMut(&(String, i32), &Moment) -> bool,
    ) -> Result<usize> {
        let _writer = self.writer(group);
        self.remove_positions_locked(group, applies, keep)
    }

    /// [`OffsetStore::remove_positions`] for a caller holding `group`'s
    /// writer lock.
    fn remove_positions_locked(
        &self,
        group: &str,
        applies: impl FnOnce(&GroupOffsets) -> bool,
        mut keep: impl FnMut(&(String, i32), &Moment) -> bool,
    ) -> Result<usize> {
        // `applies` runs with the map unlocked: it may take the group
        // coordinator's lock (expiry reads the members' subscriptions), and
        // the map's lock is held only to read or swap a group's state, by
        // OffsetFetch on the runtime's threads among others. The writer lock
        // keeps the group as read.
        // A removal that finds nothing to remove is durable only once the
        // files renamed before are.
        self.sync_renames()?;
        // Two statements: the map's guard ends with the first.
        let current = self.lock().get(group).cloned();
        let Some(current) = current.filter(|g| applies(g)) else {
            return Ok(0);
        };
        // Looked for before the group is copied: a topic's create or delete
        // asks every group, and most hold none of its positions.
        let gone: Vec<&(String, i32)> = current
            .offsets
            .iter()
            .filter(|(key, (_, at))| !keep(key, at))
            .map(|(key, _)| key)
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let removed = gone.len();
        let mut next = (*current).clone();
        for key in gone {
            next.offsets.remove(key);
        }
        if next.offsets.is_empty() {
            self.delete_file(group)?;
        } else {
            self.store_as(group, next)?;
        }
        Ok(removed)
    }

    /// Deletes every committed offset of `group` durably (blocking: removes its
    /// file and fsyncs the directory). Returns whether the group had any.
    ///
    /// # Errors
    /// I/O errors; the group keeps its offsets then, even when its file was
    /// removed before the directory fsync failed (a power loss could bring the
    /// file back), so that a deletion tried again finds the group and fsyncs
    /// the directory again.
    pub fn delete(&self, group: &str) -> Result<bool> {
        let _writer = self.writer(group);
        if !self.lock().contains_key(group) {
            return Ok(false);
        }
        self.delete_file(group)?;
        Ok(true)
    }

    /// Removes `group`'s file and state, durably. The caller holds its writer lock.
    ///
    /// The state goes only once the removal is durable. A failed directory
    /// fsync leaves the group as it was in memory, though its file may be gone
    /// (it comes back after a power loss, or stays gone after a restart): the
    /// removal was not done, and whoever removes the group again (a deletion
    /// sent again, the next expiry) finds it and fsyncs the directory again,
    /// the file being gone already, before the group is answered deleted.
    /// (The reverse of a rewrite renamed into place, which is in force at
    /// once, see [`OffsetStore::store_as`]: here the state in memory is the
    /// larger, so that the removal is tried again.)
    fn delete_file(&self, group: &str) -> Result<()> {
        let path = self.dir.join(file_name(group));
        match crate::wal::files::remove(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &path, e)),
        }
        // The removal is durable only once the directory entry is: without this a
        // crash could bring the group's offsets back.
        crate::wal::files::sync_dir(&self.dir)?;
        if self.lock().remove(group).is_some() {
            self.id_bytes
                .fetch_sub(group.len(), std::sync::atomic::Ordering::AcqRel);
        }
        Ok(())
    }

    /// Like [`OffsetStore::delete`], but only when `group` has not committed since
    /// `last_commit` (a commit racing an expiry keeps the group). Returns whether
    /// the group was deleted. Any other last commit time counts as a commit
    /// since, an earlier one too: a clock set back between the listing and a
    /// commit stamps the commit earlier.
    ///
    /// # Errors
    /// As [`OffsetStore::delete`].
    pub fn delete_unless_committed_since(&self, group: &str, last_commit: Moment) -> Result<bool> {
        let _writer = self.writer(group);
        if self
            .lock()
            .get(group)
            .is_none_or(|g| g.last_commit != last_commit)
        {
            return Ok(false);
        }
        self.delete_file(group)?;
        Ok(true)
    }

    /// The committed position of `topic`/`partition` in `group`.
    pub fn fetch(&self, group: &str, topic: &str, partition: i32) -> Option<Committed> {
        self.lock()
            .get(group)?
            .offsets
            .get(&(topic.to_string(), partition))
            .map(|(c, _)| c.clone())
    }

    /// Every committed position of `group`.
    pub fn fetch_all(&self, group: &str) -> Vec<Committed> {
        self.lock()
            .get(group)
            .map(|g| g.offsets.values().map(|(c, _)| c.clone()).collect())
            .unwrap_or_default()
    }

    /// `group`, when it has committed offsets.
    pub fn group(&self, group: &str) -> Option<StoredGroup> {
        self.lock().get(group).map(|g| StoredGroup {
            group: group.to_string(),
            protocol_type: g.protocol_type.clone(),
        })
    }

    /// Every group with committed offsets and when it last committed.
    pub fn last_commits(&self) -> Vec<(String, Moment)> {
        self.lock()
            .iter()
            .map(|(g, o)| (g.clone(), o.last_commit))
            .collect()
    }

    /// Every group with committed offsets, by group id.
    pub fn groups(&self) -> Vec<StoredGroup> {
        let mut all: Vec<StoredGroup> = self
            .lock()
            .iter()
            .map(|(group, g)| StoredGroup {
                group: group.clone(),
                protocol_type: g.protocol_type.clone(),
            })
            .collect();
        all.sort_by(|a, b| a.group.cmp(&b.group));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expiry asks a group's members' subscriptions (the coordinator's
    /// lock) with the offsets map unlocked: a change that left the map's guard
    /// alive through the question made it wait for the coordinator while
    /// OffsetDelete's `forget_if_empty`, holding the coordinator's lock, waited
    /// for the map, and the two threads, then every group and offset request,
    /// hung.
    #[test]
    fn the_expiry_asks_the_subscriptions_with_the_map_unlocked() {
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(OffsetStore::open(dir.path().join("groups")).unwrap());
        let c = Committed {
            topic: "t".into(),
            partition: 0,
            offset: 5,
            leader_epoch: -1,
            metadata: None,
        };
        s.commit("g", Some("consumer"), vec![c]).unwrap();
        // Stands for the group coordinator's lock.
        let coordinator = Arc::new(std::sync::Mutex::new(()));
        let held = coordinator.lock().unwrap();
        let (inside_tx, inside) = mpsc::channel();
        let expiry = {
            let (s, coordinator) = (Arc::clone(&s), Arc::clone(&coordinator));
            std::thread::spawn(move || {
                s.expire_unsubscribed(
                    "g",
                    || {
                        inside_tx.send(()).unwrap();
                        let _c = coordinator.lock().unwrap();
                        None
                    },
                    |_| true,
                )
                .unwrap()
            })
        };
        inside.recv().unwrap();
        let (done_tx, done) = mpsc::channel();
        {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let _ = s.group("other");
                done_tx.send(()).unwrap();
            });
        }
        let r = done.recv_timeout(std::time::Duration::from_secs(2));
        drop(held);
        expiry.join().unwrap();
        assert!(
            r.is_ok(),
            "a look-up of the map waited for the coordinator's lock: forget_if_empty, holding it, deadlocks"
        );
    }

    /// A start lowering the positions of many groups beyond their log ends
    /// fsyncs their directory once, not once a group, and names the first
    /// groups only: 7,000 groups committed past the end took 34 s (two
    /// fsyncs and a warning line each) before the broker served.
    #[test]
    fn positions_beyond_the_log_end_are_lowered_with_one_directory_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let s = OffsetStore::open(path.clone()).unwrap();
        let groups = LOWERED_NAMED + 30;
        for i in 0..groups {
            s.commit(
                &format!("g{i}"),
                None,
                vec![committed(0, 5), committed(1, 2)],
            )
            .unwrap();
        }
        crate::wal::files::SYNCED_DIRS.with(|d| d.borrow_mut().clear());
        let (lowered, log) = crate::storage::partition::tests::logged(|| {
            s.lower_beyond_log_ends(|_, p| Some(if p == 0 { 0 } else { 9 }))
        });
        assert_eq!(lowered.unwrap(), groups, "partition 0 of each");
        let syncs = crate::wal::files::SYNCED_DIRS
            .with(|d| d.borrow().iter().filter(|p| **p == path).count());
        assert_eq!(syncs, 1, "one directory fsync for {groups} groups");
        assert_eq!(
            log.matches("were brought down to it").count(),
            LOWERED_NAMED + 1,
            "{log}"
        );
        assert!(log.contains("groups=30 positions=30"), "{log}");
        drop(s);
        let s = OffsetStore::open(path).unwrap();
        for i in 0..groups {
            let g = format!("g{i}");
            assert_eq!(s.fetch(&g, "t", 0).unwrap().offset, 0, "{g}");
            assert_eq!(s.fetch(&g, "t", 1).unwrap().offset, 2, "{g}");
        }
    }

    /// The store takes first commits of at most so many groups, with ids of
    /// so many bytes in all: a commit with generation -1 stored a new group
    /// per request, outside the coordinator's limit, for a week.
    #[test]
    fn first_commits_past_the_store_limits_find_no_room() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let s = OffsetStore::open(path.clone()).unwrap();
        s.set_limits(3, 10);
        for g in ["a", "bb", "ccc"] {
            assert!(s.has_room_for(g, true), "{g}");
            s.commit(g, None, vec![committed(0, 1)]).unwrap();
        }
        assert!(!s.has_room_for("d", true), "three groups held");
        assert!(s.has_room_for("d", false), "a member's commit: four times");
        assert!(s.has_room_for("a", true), "a group held commits on");
        s.delete("a").unwrap();
        assert!(s.has_room_for("d", true));
        assert!(s.has_room_for("ddddd", true), "10 bytes of ids");
        assert!(!s.has_room_for("dddddd", true), "11 bytes of ids");
        drop(s);
        // Counted again at a start.
        let s = OffsetStore::open(path).unwrap();
        s.set_limits(3, 10);
        assert!(s.has_room_for("ddddd", true));
        assert!(!s.has_room_for("dddddd", true));
        // A member's first commit has four times the room, and no more.
        s.set_limits(1, usize::MAX / 8);
        assert!(!s.has_room_for("e", true));
        for g in ["e", "f"] {
            assert!(s.has_room_for(g, false), "{g}");
            s.commit(g, None, vec![committed(0, 1)]).unwrap();
        }
        assert!(!s.has_room_for("g", false), "four groups held");
    }

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
        s.commit("g/1", None, vec![c(0, 5), c(1, 7)]).unwrap();
        s.commit("g/1", None, vec![c(0, 9)]).unwrap();
        s.commit("", None, vec![c(0, 3)]).unwrap();
        drop(s);
        let s = OffsetStore::open(dir.path().join("groups")).unwrap();
        assert_eq!(s.fetch("", "t", 0).unwrap().offset, 3, "the empty group");
        assert_eq!(s.fetch("g/1", "t", 0).unwrap().offset, 9);
        assert_eq!(s.fetch("g/1", "t", 1).unwrap().offset, 7);
        assert!(s.fetch("other", "t", 0).is_none());
        assert_eq!(s.fetch_all("g/1").len(), 2);
    }

    /// A group's last commit time survives a restart. It was taken from its
    /// file's modification time, which a rewrite without a commit (a deleted
    /// topic's positions dropped, an OffsetDelete, an expiry) moved forward:
    /// an idle group's offsets were then kept up to a retention period longer.
    #[test]
    fn the_last_commit_time_survives_rewrites_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = OffsetStore::open(dir.path().join("groups")).unwrap();
        let mut other = committed(0, 1);
        other.topic = "u".into();
        let before = to_ms(SystemTime::now());
        s.commit("g", Some("consumer"), vec![committed(0, 5), other])
            .unwrap();
        let after = to_ms(SystemTime::now());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(s.delete_topic_positions(|t| t == "u").unwrap(), 1);
        drop(s);
        let s = OffsetStore::open(dir.path().join("groups")).unwrap();
        let last = s.last_commits();
        assert_eq!(last.len(), 1);
        let at = to_ms(last[0].1.wall());
        assert!(
            (before..=after).contains(&at),
            "last commit {at}, committed within {before}..={after}"
        );
    }

    /// An expiry that listed a group's last commit, and a commit after it
    /// stamped earlier (the clock set back meanwhile): the group was deleted
    /// with the commit just acknowledged, as the check was "a later commit".
    /// Any other time now keeps it; the listed time still lets it go.
    #[test]
    fn a_commit_stamped_before_the_listed_one_still_keeps_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let s = OffsetStore::open(dir.path().join("groups")).unwrap();
        s.commit("g", Some("consumer"), vec![committed(0, 5)])
            .unwrap();
        let listed = s.last_commits()[0].1;
        // The listing as a clock an hour ahead made it: the commit's own time
        // is earlier.
        let ahead = Moment::stored(listed.wall() + std::time::Duration::from_secs(3600));
        assert!(!s.delete_unless_committed_since("g", ahead).unwrap());
        assert_eq!(s.fetch("g", "t", 0).map(|c| c.offset), Some(5));
        assert!(s.delete_unless_committed_since("g", listed).unwrap());
        assert!(s.fetch("g", "t", 0).is_none());
    }

    /// A group file's write that fails before its rename leaves no temporary
    /// file behind, and one a crash left is removed when the store opens.
    /// Before, each lay in `groups/` for good once its group was never
    /// written again (expired, deleted): on a full disk, every committing
    /// group left one.
    #[test]
    fn unfinished_group_files_are_not_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let groups = dir.path().join("groups");
        let tmps = || {
            std::fs::read_dir(&groups)
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().ends_with(".tmp")
                })
                .count()
        };
        let s = OffsetStore::open(groups.clone()).unwrap();
        // The rename fails: a directory that is not empty stands where the
        // file goes.
        let target = groups.join(file_name("g"));
        std::fs::create_dir_all(target.join("x")).unwrap();
        assert!(s.commit("g", None, vec![committed(0, 1)]).is_err());
        assert_eq!(tmps(), 0);
        std::fs::remove_dir_all(&target).unwrap();
        drop(s);
        for name in ["6868.tmp", ".json.tmp"] {
            std::fs::write(groups.join(name), b"{\"gr").unwrap();
        }
        let s = OffsetStore::open(groups.clone()).unwrap();
        assert_eq!(tmps(), 0);
        s.commit("g", None, vec![committed(0, 2)]).unwrap();
        assert_eq!(s.fetch("g", "t", 0).unwrap().offset, 2);
    }

    /// A commit whose file was renamed into place before its directory fsync
    /// failed is in force, as the file holds it: memory left behind its file
    /// let an OffsetDelete of the position find nothing, write nothing and
    /// answer NONE, and the restart brought the position back. A removal
    /// that finds nothing to remove makes the rename durable first.
    #[test]
    fn a_commit_renamed_before_its_directory_fsync_failed_is_in_force() {
        use crate::wal::files::{AtomicWriteFailure as Fail, INJECTED_ATOMIC_FAILURES};
        let dir = tempfile::tempdir().unwrap();
        let s = OffsetStore::open(dir.path().to_path_buf()).unwrap();
        s.commit("g", Some("consumer"), vec![committed(0, 1)])
            .unwrap();
        let fail_next =
            || INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(Fail::DirSync));
        fail_next();
        assert!(s
            .commit("g", Some("consumer"), vec![committed(1, 5)])
            .is_err());
        assert_eq!(s.fetch("g", "t", 1).map(|c| c.offset), Some(5), "in force");
        assert!(s.renames_pending());
        let which: HashSet<(String, i32)> = [("t".to_string(), 1)].into_iter().collect();
        assert_eq!(
            s.delete_positions_where("g", &which, |_| true).unwrap().0,
            1
        );
        assert!(!s.renames_pending(), "synced since");

        // A first commit so: the group is known, to a delete of it too.
        fail_next();
        assert!(s.commit("h", None, vec![committed(0, 7)]).is_err());
        assert_eq!(s.fetch("h", "t", 0).map(|c| c.offset), Some(7));
        // A removal with nothing to remove syncs the rename.
        assert_eq!(s.delete_topic_positions(|t| t == "other").unwrap(), 0);
        assert!(!s.renames_pending());
        assert!(s.delete("h").unwrap());
        drop(s);
        let s = OffsetStore::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(s.fetch("g", "t", 1).map(|c| c.offset), None, "deleted");
        assert_eq!(s.fetch("g", "t", 0).map(|c| c.offset), Some(1));
        assert!(s.group("h").is_none(), "deleted");
    }

    /// A rename whose directory fsync failed while another group's write was
    /// under way stays counted as not durable when that write's own fsync
    /// succeeds: that fsync came before the rename. One count reset by
    /// compare-and-swap took it for covered when a sync in between had
    /// brought the count back to the value the write read.
    #[test]
    fn a_rename_counted_during_another_groups_write_stays_pending() {
        use crate::wal::files::{AtomicWriteFailure as Fail, INJECTED_ATOMIC_FAILURES};
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(OffsetStore::open(dir.path().to_path_buf()).unwrap());
        let fail_next =
            || INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(Fail::DirSync));
        fail_next();
        assert!(s.commit("x", None, vec![committed(0, 1)]).is_err());
        assert!(s.renames_pending());
        // A group under another writer lock than "a".
        let other = (0..)
            .map(|i| format!("b{i}"))
            .find(|b| s.writers.index(b) != s.writers.index("a"))
            .unwrap();
        let during = Arc::clone(&s);
        AFTER_STORE.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                // Once "a"'s write (and its directory fsync) is done: a sync,
                // then a rename of another group that is not synced.
                during.sync_renames().unwrap();
                assert!(!during.renames_pending());
                fail_next();
                assert!(during.commit(&other, None, vec![committed(0, 2)]).is_err());
            }));
        });
        s.commit("a", None, vec![committed(0, 3)]).unwrap();
        assert!(
            s.renames_pending(),
            "the other group's rename taken for synced"
        );
    }

    /// A removal renamed into place before a crash (its directory fsync not
    /// done) is loaded by the restart; the removal sent again finds nothing
    /// to remove and answers done. The open now fsyncs the directory, so a
    /// power loss after that cannot bring the positions back.
    #[test]
    fn a_removal_renamed_before_a_crash_is_made_durable_by_the_restart() {
        use crate::wal::sim::{SimDisk, SimPlan};
        let dir = tempfile::tempdir().unwrap();
        let groups = dir.path().join("groups");
        let s = OffsetStore::open(groups.clone()).unwrap();
        s.commit(
            "g",
            Some("consumer"),
            vec![committed(0, 5), committed(1, 7)],
        )
        .unwrap();
        let disk = SimDisk::new(SimPlan::plain(1));
        disk.watch_dir(&groups).unwrap();
        disk.crash_at_next_dir_sync();
        let which: HashSet<(String, i32)> = [("t".to_string(), 0)].into_iter().collect();
        assert!(s.delete_positions_where("g", &which, |_| true).is_err());
        drop(s);
        disk.restart();
        let s = OffsetStore::open(groups.clone()).unwrap();
        assert_eq!(s.fetch("g", "t", 0), None, "the file renamed into place");
        assert_eq!(
            s.delete_positions_where("g", &which, |_| true).unwrap().0,
            0
        );
        drop(s);
        disk.power_loss_keeping(false, Some(0)).unwrap();
        let s = OffsetStore::open(groups).unwrap();
        assert_eq!(
            s.fetch("g", "t", 0).map(|c| c.offset),
            None,
            "a deletion answered done came back after a power loss"
        );
        assert_eq!(s.fetch("g", "t", 1).map(|c| c.offset), Some(7));
    }

    fn committed(p: i32, o: i64) -> Committed {
        Committed {
            topic: "t".into(),
            partition: p,
            offset: o,
            leader_epoch: -1,
            metadata: None,
        }
    }

    /// A commit whose file write is stuck (its temporary file is a FIFO nobody
    /// reads, so creating it blocks) holds up neither readers of the store nor
    /// commits of other groups: they run on the server's runtime threads.
    #[cfg(unix)]
    #[test]
    fn a_stuck_commit_blocks_neither_readers_nor_other_groups() {
        use std::{io::Read, sync::Arc, time::Duration};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let s = Arc::new(OffsetStore::open(path.clone()).unwrap());
        // A group that does not share the stuck group's writer lock.
        let stripe = |g: &str| std::ptr::from_ref(&*s.writer(g));
        let other = (0..)
            .map(|i| format!("other-{i}"))
            .find(|g| stripe(g) != stripe("stuck"))
            .unwrap();
        s.commit(&other, None, vec![committed(0, 1)]).unwrap();
        let fifo = path.join(file_name("stuck")).with_extension("tmp");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let asked = s.writers_asked();
        let stuck = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || s.commit("stuck", None, vec![committed(0, 2)]))
        };
        // Once the commit holds its writer lock, time to reach the FIFO (a
        // sleep alone let a late commit start after the readers, and pass
        // whatever the locking does).
        while s.writers_asked() == asked {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(200));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let s = Arc::clone(&s);
            let other = other.clone();
            std::thread::spawn(move || {
                let fetched = s.fetch(&other, "t", 0).map(|c| c.offset);
                let groups = s.groups().len();
                s.commit(&other, None, vec![committed(0, 3)]).unwrap();
                tx.send((fetched, groups)).unwrap();
            });
        }
        let got = rx.recv_timeout(Duration::from_secs(20));
        // Unblock the stuck commit: its write to a FIFO then fails.
        let mut r = std::fs::File::open(&fifo).unwrap();
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
        assert!(stuck.join().unwrap().is_err());
        assert_eq!(
            got.expect("readers and other groups waited for a stuck commit"),
            (Some(1), 1)
        );
        assert_eq!(s.fetch(&other, "t", 0).unwrap().offset, 3);
        assert!(s.fetch("stuck", "t", 0).is_none());
    }

    /// An OffsetDelete names up to 100,000 partitions, any of them many times,
    /// and a group may hold thousands of positions; the deletion runs under the
    /// group's writer lock, which every commit of the groups sharing it waits
    /// for. Each stored position was compared with every named one (10,000
    /// positions and 100,000 names of long topics: some 10^9 string
    /// comparisons). Each is now looked up once. Work counted, not timed.
    #[test]
    fn deleting_positions_looks_each_stored_position_up_once() {
        const STORED: usize = 2_000;
        const NAMED: usize = 20_000;
        let dir = tempfile::tempdir().unwrap();
        let s = OffsetStore::open(dir.path().join("groups")).unwrap();
        let topic = |i: usize| format!("{}-{}", "t".repeat(200), i % 10);
        let key = |i: usize| (topic(i), i32::try_from(i / 10).unwrap());
        let stored: Vec<Committed> = (0..STORED)
            .map(|i| {
                let (topic, partition) = key(i);
                Committed {
                    topic,
                    partition,
                    offset: 1,
                    leader_epoch: -1,
                    metadata: None,
                }
            })
            .collect();
        s.commit("g", None, stored).unwrap();
        // Every other stored position, and 19,000 the group does not hold.
        let named: HashSet<(String, i32)> = (0..STORED)
            .step_by(2)
            .chain(STORED..STORED + NAMED - STORED / 2)
            .map(key)
            .collect();
        assert_eq!(named.len(), NAMED);
        COMPARED.with(|c| c.set(0));
        let (deleted, refused) = s.delete_positions_where("g", &named, |_| true).unwrap();
        let compared = COMPARED.with(std::cell::Cell::get);
        assert!(
            compared <= STORED,
            "{compared} comparisons for {STORED} stored positions"
        );
        assert!(refused.is_empty());
        let kept = s.fetch_all("g");
        assert_eq!(deleted + kept.len(), STORED);
        assert!(kept
            .iter()
            .all(|c| !named.contains(&(c.topic.clone(), c.partition))));
        assert_eq!(deleted, STORED / 2);
    }

    /// Group ids are not limited in length; their files' names are.
    #[test]
    fn long_group_names_commit_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let s = OffsetStore::open(path.clone()).unwrap();
        let long = |last: char| format!("{}{last}", "g".repeat(299));
        let edge = "e".repeat(125); // 250 hex digits + ".json": the longest plain name
        for (i, g) in [long('a'), long('b'), edge.clone(), "é".repeat(2000)]
            .iter()
            .enumerate()
        {
            assert!(file_name(g).len() <= 255, "{}", file_name(g).len());
            s.commit(g, None, vec![committed(0, i as i64)]).unwrap();
        }
        assert_eq!(file_name(&edge), format!("{}.json", "65".repeat(125)));
        assert_ne!(file_name(&long('a')), file_name(&long('b')));
        drop(s);
        let s = OffsetStore::open(path).unwrap();
        for (i, g) in [long('a'), long('b'), edge, "é".repeat(2000)]
            .iter()
            .enumerate()
        {
            assert_eq!(s.fetch(g, "t", 0).unwrap().offset, i as i64);
        }
        assert!(s.delete(&long('a')).unwrap());
        assert_eq!(s.fetch(&long('b'), "t", 0).unwrap().offset, 1);
    }

    /// A long name's file is named by a cryptographic hash of the name, so no two
    /// groups can be made to share one; a file named by the 64-bit FNV-1a hash
    /// used before is renamed when the store opens, and commits then replace it.
    #[test]
    fn long_names_are_hashed_with_sha256_and_older_files_renamed() {
        let long = format!("{}x", "g".repeat(299));
        let sha = ring::digest::digest(&ring::digest::SHA256, long.as_bytes());
        let sha: String = sha.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let prefix = "67".repeat(LONG_NAME_PREFIX);
        assert_eq!(file_name(&long), format!("h{prefix}-{sha}.json"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let s = OffsetStore::open(path.clone()).unwrap();
        s.commit(&long, None, vec![committed(0, 5)]).unwrap();
        drop(s);
        let fnv = long.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let old = path.join(format!("h{prefix}-{fnv:016x}.json"));
        std::fs::rename(path.join(file_name(&long)), &old).unwrap();
        let s = OffsetStore::open(path.clone()).unwrap();
        assert!(!old.exists(), "the older file was left under its name");
        assert_eq!(s.fetch(&long, "t", 0).unwrap().offset, 5);
        s.commit(&long, None, vec![committed(0, 6)]).unwrap();
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 1);
        drop(s);
        let s = OffsetStore::open(path).unwrap();
        assert_eq!(s.fetch(&long, "t", 0).unwrap().offset, 6);
    }

    /// A group file named otherwise than its group's name gives was renamed to
    /// that name, over whatever was there: a copy left in the directory
    /// (`backup.json`) replaced the group's newer positions with its own, and
    /// a bit flipped in the name inside a file moved the group's positions to
    /// another group (the group itself reset to `auto.offset.reset`). Only a
    /// long name's file from before its hash changed is renamed now, never
    /// over another; any other mismatch refuses the open, naming the file,
    /// and changes nothing.
    #[test]
    fn a_group_file_named_otherwise_than_its_group_is_refused_not_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let s = OffsetStore::open(path.clone()).unwrap();
        s.commit("orders", None, vec![committed(0, 5)]).unwrap();
        let real = path.join(file_name("orders"));
        let copy = path.join("backup.json");
        std::fs::copy(&real, &copy).unwrap();
        s.commit("orders", None, vec![committed(0, 100)]).unwrap();
        drop(s);
        let newest = std::fs::read(&real).unwrap();
        let e = OffsetStore::open(path.clone()).unwrap_err().to_string();
        assert!(e.contains("backup.json") && e.contains("orders"), "{e}");
        assert_eq!(
            std::fs::read(&real).unwrap(),
            newest,
            "the group's file is as it was"
        );
        assert!(copy.exists());
        std::fs::remove_file(&copy).unwrap();
        assert_eq!(
            OffsetStore::open(path.clone())
                .unwrap()
                .fetch("orders", "t", 0)
                .unwrap()
                .offset,
            100
        );

        // One bit flipped in the name inside the file ('r' to 's'): its
        // checksum tells; in a file without one (an older build's), the name.
        let text = std::fs::read_to_string(&real).unwrap();
        let damaged = text.replacen("\"orders\"", "\"osders\"", 1);
        assert_ne!(text, damaged);
        std::fs::write(&real, &damaged).unwrap();
        let e = OffsetStore::open(path.clone()).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&damaged).unwrap();
        v.as_object_mut().unwrap().remove("crc32c").unwrap();
        std::fs::write(&real, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = OffsetStore::open(path.clone()).unwrap_err().to_string();
        assert!(e.contains("osders"), "{e}");
        assert!(real.exists() && !path.join(file_name("osders")).exists());

        // An older long name's file is not renamed over the group's own.
        let long = format!("{}x", "g".repeat(299));
        std::fs::write(&real, &text).unwrap();
        let s = OffsetStore::open(path.clone()).unwrap();
        s.commit(&long, None, vec![committed(0, 7)]).unwrap();
        drop(s);
        let fnv = long.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let prefix = "67".repeat(LONG_NAME_PREFIX);
        let old = path.join(format!("h{prefix}-{fnv:016x}.json"));
        std::fs::copy(path.join(file_name(&long)), &old).unwrap();
        assert!(OffsetStore::open(path.clone()).is_err());
        assert!(old.exists());
    }

    /// A digit of a committed position changed by damage made the group's
    /// consumers skip records (or read them again); the file carries a
    /// checksum now, and one it does not match refuses the open.
    #[test]
    fn a_damaged_position_is_refused_by_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let s = OffsetStore::open(path.clone()).unwrap();
        s.commit("g", None, vec![committed(0, 5)]).unwrap();
        drop(s);
        let file = path.join(file_name("g"));
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert!(v["crc32c"].is_u64(), "{v}");
        v["offsets"][0]["offset"] = 9.into();
        std::fs::write(&file, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = OffsetStore::open(path.clone()).unwrap_err().to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains(&file.display().to_string()),
            "{e}"
        );
    }

    /// A file that does not parse names its way out, as a checksum mismatch
    /// does: moved out of the directory, the others load.
    #[test]
    fn a_file_that_does_not_parse_says_how_to_start_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let s = OffsetStore::open(path.clone()).unwrap();
        s.commit("g", None, vec![committed(0, 5)]).unwrap();
        s.commit("kept", None, vec![committed(0, 7)]).unwrap();
        drop(s);
        let file = path.join(file_name("g"));
        let raw = std::fs::read(&file).unwrap();
        std::fs::write(&file, &raw[..raw.len() / 2]).unwrap();
        let e = OffsetStore::open(path.clone()).unwrap_err().to_string();
        assert!(
            e.contains("do not parse")
                && e.contains("move the file out of the directory")
                && e.contains(&file.display().to_string()),
            "{e}"
        );
        std::fs::rename(&file, dir.path().join("g.json.damaged")).unwrap();
        let s = OffsetStore::open(path).unwrap();
        assert_eq!(s.fetch("kept", "t", 0).unwrap().offset, 7);
        assert!(s.fetch("g", "t", 0).is_none());
    }

    #[test]
    fn protocol_type_is_recorded_kept_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = OffsetStore::open(dir.path().join("groups")).unwrap();
        s.commit("members", Some("consumer"), vec![committed(0, 1)])
            .unwrap();
        s.commit("members", None, vec![committed(0, 2)]).unwrap();
        s.commit("simple", None, vec![committed(0, 3)]).unwrap();
        drop(s);
        let s = OffsetStore::open(dir.path().join("groups")).unwrap();
        let want = vec![
            StoredGroup {
                group: "members".into(),
                protocol_type: Some("consumer".into()),
            },
            StoredGroup {
                group: "simple".into(),
                protocol_type: None,
            },
        ];
        assert_eq!(s.groups(), want, "a later commit without one keeps it");
        assert_eq!(s.group("simple"), Some(want[1].clone()));
        assert_eq!(s.group("other"), None);
        assert_eq!(s.fetch("members", "t", 0).unwrap().offset, 2);
    }

    #[test]
    fn a_file_without_a_protocol_type_loads_as_a_simple_group() {
        let dir = tempfile::tempdir().unwrap();
        let groups = dir.path().join("groups");
        std::fs::create_dir_all(&groups).unwrap();
        std::fs::write(
            groups.join(file_name("old")),
            br#"{"version":1,"group":"old","offsets":[{"topic":"t","partition":0,"offset":4,"leader_epoch":-1,"metadata":null}]}"#,
        )
        .unwrap();
        let s = OffsetStore::open(groups.clone()).unwrap();
        assert_eq!(s.group("old").unwrap().protocol_type, None);
        assert_eq!(s.fetch("old", "t", 0).unwrap().offset, 4);
        drop(s);
        // A version this build does not write is refused, not read as its own
        // (the file was read as version 1, whatever its fields meant).
        std::fs::write(
            groups.join(file_name("old")),
            br#"{"version":2,"group":"old","offsets":[{"topic":"t","partition":0,"offset":4,"leader_epoch":-1,"metadata":null}]}"#,
        )
        .unwrap();
        let e = OffsetStore::open(groups).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("unknown version 2")),
            "{e:?}"
        );
    }

    #[test]
    fn deleted_groups_stay_deleted_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let s = OffsetStore::open(path.clone()).unwrap();
        s.commit("gone", Some("consumer"), vec![committed(0, 5)])
            .unwrap();
        s.commit("", None, vec![committed(0, 6)]).unwrap();
        s.commit("kept", None, vec![committed(0, 7)]).unwrap();
        assert!(s.delete("gone").unwrap());
        assert!(s.delete("").unwrap(), "the empty group too");
        assert!(!s.delete("gone").unwrap(), "nothing left to delete");
        assert!(!s.delete("never").unwrap());
        assert!(s.fetch("gone", "t", 0).is_none());
        assert!(s.fetch_all("").is_empty());
        assert!(!path.join(file_name("gone")).exists());
        assert!(!path.join(file_name("")).exists());
        drop(s);
        let s = OffsetStore::open(path).unwrap();
        assert_eq!(
            s.groups().into_iter().map(|g| g.group).collect::<Vec<_>>(),
            vec!["kept".to_string()]
        );
        assert!(s.fetch("gone", "t", 0).is_none());
        // A group deleted and committed to again starts afresh.
        s.commit("gone", None, vec![committed(1, 1)]).unwrap();
        assert_eq!(s.fetch_all("gone").len(), 1);
        assert_eq!(s.group("gone").unwrap().protocol_type, None);
    }

    /// A power loss right after DeleteGroups answered keeps the deletion: the
    /// directory was fsynced after the removal (the simulated disk keeps exactly
    /// the directory entries as of the last fsync here).
    #[cfg(unix)]
    #[test]
    fn a_deletion_survives_a_power_loss() {
        use crate::wal::sim::{SimDisk, SimPlan};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let s = OffsetStore::open(path.clone()).unwrap();
        s.commit("gone", Some("consumer"), vec![committed(0, 5)])
            .unwrap();
        s.commit("kept", None, vec![committed(0, 7)]).unwrap();
        let disk = SimDisk::new(SimPlan::plain(1));
        disk.watch_dir(&path).unwrap();
        assert!(s.delete("gone").unwrap());
        drop(s);
        disk.power_loss_keeping(false, Some(0)).unwrap();
        let s = OffsetStore::open(path).unwrap();
        assert_eq!(
            s.groups().into_iter().map(|g| g.group).collect::<Vec<_>>(),
            vec!["kept".to_string()]
        );
        assert!(s.fetch("gone", "t", 0).is_none());
    }

    /// A group's first commit, judged against its topic before the topic left
    /// the broker and stored after the delete had listed the groups, stayed
    /// behind: the drop passed over a group it did not know yet, and the
    /// position named a deleted topic (which a strict start then refuses as a
    /// lost topic directory). A group's first commit is now listed while it
    /// is judged, and the drop waits for it and drops its position.
    #[test]
    fn a_first_commit_judged_before_a_topic_delete_is_dropped_with_the_topic() {
        use std::sync::{mpsc, Arc};
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(OffsetStore::open(dir.path().join("groups")).unwrap());
        let (judged_tx, judged_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let committer = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                s.commit_where("new", None, vec![committed(0, 5)], |_| {
                    // Judged: the topic is still there.
                    judged_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    true
                })
                .unwrap()
            })
        };
        judged_rx.recv().unwrap();
        let (listed_tx, listed_rx) = mpsc::channel();
        let deleter = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                AFTER_GROUPS_LISTED.with(|h| {
                    *h.borrow_mut() = Some(Box::new(move || listed_tx.send(()).unwrap()));
                });
                s.delete_topic_positions(|t| t == "t").unwrap()
            })
        };
        // The commit is stored only once the drop has listed the groups.
        listed_rx.recv().unwrap();
        go_tx.send(()).unwrap();
        assert!(committer.join().unwrap().is_empty());
        assert_eq!(deleter.join().unwrap(), 1, "the drop saw the commit");
        assert!(s.fetch("new", "t", 0).is_none());
        drop(s);
        let s = OffsetStore::open(dir.path().join("groups")).unwrap();
        assert!(s.positions_by_topic().is_empty());
    }
}
