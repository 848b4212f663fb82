//! One partition: its segments, the next offset to assign, and the high watermark.
//!
//! Offsets are assigned by the storage pipeline's submit thread (in WAL order), the
//! segments are appended by its apply thread after the WAL acknowledged the entry, and
//! the high watermark moves only then: a consumer never reads a batch that the
//! configured sync mode could still lose.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::checked::Checked;

use crate::error::{Error, Result};
use crate::file_at::FileAt;

use super::{
    batch::{self, BatchInfo, HEADER_LEN},
    compaction::{self, CompactionPolicy, CompactionStats, Source},
    delete_horizon,
    producers::{ProducerState, Snapshot},
    segment::{self, BatchIndex, CleanedWriter, LogHandle, Segment, SegmentFiles},
    sync_dir,
    watchers::Watchers,
};

/// Batch headers read from the end of the segment before the newest at start-up,
/// for the idempotent producers' state.
const PREVIOUS_SEGMENT_BATCHES: usize = 1000;

/// Where a partition's log start offset is kept once records were deleted.
const LOG_START_FILE: &str = "log-start-offset.json";

/// How many times a timestamp lookup is tried when the partition's segments
/// change under it (see [`Partition::lookup`]).
const LOOKUP_TRIES: u32 = 4;

/// How long [`Partition::log_end_and_size_now`] waits for a `log` lock held by
/// another (an append's write) before it gives the values last read.
const LOCK_PATIENCE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LogStartFile {
    version: u32,
    log_start_offset: i64,
    /// CRC32C of the fields above (see [`super::checked`]): a log start raised
    /// by damage hid every record below it, and the next retention pass
    /// deleted them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<u32>,
}

super::checked::checked_by_field!(LogStartFile);

/// The producers known when the segment starting at `base` was started, the
/// segments before it being `older`: its snapshot; without a readable one, the
/// newest readable snapshot of an older segment, with every batch from that
/// segment on. (A power loss takes the snapshots written since the last
/// checkpoint, renamed into place but not fsynced, while their segments are
/// durable; the checkpoint fsynced the ones it kept.) Without any, those whose
/// last batches went out just before it, in the previous segment. Only the
/// older snapshots in `on_disk` (the bases the directory holds one of) are
/// read, so a partition of many segments and no snapshot opens no file per
/// segment.
fn producers_before(
    dir: &Path,
    base: i64,
    older: &[Segment],
    on_disk: &BTreeSet<i64>,
) -> Result<ProducerState> {
    if let Some(s) = load_snapshot(dir, base)? {
        return Ok(ProducerState::from_snapshot(&s));
    }
    for (i, seg) in older.iter().enumerate().rev() {
        if !on_disk.contains(&seg.base_offset()) {
            continue;
        }
        if let Some(s) = load_snapshot(dir, seg.base_offset())? {
            let mut producers = ProducerState::from_snapshot(&s);
            for later in &older[i..] {
                later.record_producers_tail(usize::MAX, &mut producers)?;
            }
            return Ok(producers);
        }
    }
    let mut producers = ProducerState::default();
    if let Some(prev) = older.last() {
        prev.record_producers_tail(PREVIOUS_SEGMENT_BATCHES, &mut producers)?;
    }
    Ok(producers)
}

/// Saves the time index of `seg`, a segment just closed and synced (see
/// [`Segment::save_time_index`]). A failure is logged, not returned: the
/// segment then opens as one without, its batch headers read when its newest
/// timestamp is needed.
fn save_time_index(topic: &str, partition: i32, seg: &mut Segment) {
    if let Err(e) = seg.save_time_index() {
        tracing::warn!(topic, partition, error = %e, "could not save the segment's time index; its batch headers are read at the next start when its newest timestamp is needed");
    }
}

/// The free space a compaction copy leaves on its file system at least,
/// beyond a quarter of the copy's size (for a recompression that does worse
/// than the client's): room for produces while the copy is written.
const COMPACTION_SPARE_BYTES: u64 = 8 << 20;

/// Whether a compaction copy of about `bytes`, replacing segments of `frees`
/// bytes, fits in `free` bytes (unknown: it fits): with
/// [`COMPACTION_SPARE_BYTES`] to spare, unless installing it frees more than
/// it takes. Such a copy is what gives room back on a disk with less than
/// the spare free (at a full disk, none): held to the spare, a compact-only
/// topic, which retention does not shrink, never shrank there again.
fn copy_fits(bytes: u64, frees: u64, free: Option<u64>) -> bool {
    let copy = bytes.saturating_add(bytes / 4);
    let spare = if frees > copy {
        0
    } else {
        COMPACTION_SPARE_BYTES
    };
    free.is_none_or(|f| f >= copy.saturating_add(spare))
}

/// The producer snapshot of the segment starting at `base` in `dir`, when there
/// is one that parses for it (`None` for none, or for one a power loss emptied
/// or cut, of another version, taken at another offset, or failing its
/// checksum).
///
/// # Errors
/// An error reading the file (but its absence), naming it: the file may be
/// whole, and is neither taken for one a power loss emptied nor removed
/// (a start short of file descriptors, or reading from a failing device,
/// removed every snapshot it read, and producers older than the previous
/// segment's last batches were forgotten: a retry of their last batch was
/// stored twice).
fn load_snapshot(dir: &Path, base: i64) -> Result<Option<Snapshot>> {
    let path = dir.join(segment::producers_name(base));
    // A snapshot that stays unreadable (a damaged block on a checksumming
    // file system) may be removed by hand: the operation says so.
    const READ: &str = "read (a producer snapshot: if it stays unreadable, removing it \
                        is safe, only producers idle since before its segment then lose \
                        their duplicate detection)";
    #[cfg(test)]
    if FAIL_SNAPSHOT_READ.with(|f| f.borrow_mut().remove(&path)) {
        return Err(Error::io(
            READ,
            &path,
            std::io::Error::other("injected read failure"),
        ));
    }
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(READ, &path, e)),
    };
    Ok(match serde_json::from_slice::<Snapshot>(&raw) {
        Ok(s) if s.version() != 1 => {
            tracing::warn!(file = %path.display(), version = s.version(), "ignoring a producer snapshot of an unknown version");
            None
        }
        Ok(s) if s.below() == base => match s.verify(&path, &raw) {
            Ok(()) => Some(s),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring a producer snapshot that fails its checksum");
                None
            }
        },
        Ok(_) => {
            tracing::warn!(file = %path.display(), "ignoring a producer snapshot taken at another offset");
            None
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable producer snapshot");
            None
        }
    })
}

/// The log start offset stored in `dir` (0 when none is).
fn load_log_start(dir: &Path) -> Result<i64> {
    let path = dir.join(LOG_START_FILE);
    let Some(raw) = crate::wal::files::read_if_exists(&path)? else {
        return Ok(0);
    };
    let f: LogStartFile = serde_json::from_slice(&raw)
        .map_err(|e| Error::corrupt(&path, 0, format!("does not parse: {e}")))?;
    if f.version != 1 {
        return Err(Error::corrupt(
            &path,
            0,
            format!("unknown version {} (this build reads version 1)", f.version),
        ));
    }
    f.verify(&path, &raw)?;
    if f.log_start_offset < 0 {
        return Err(Error::corrupt(
            &path,
            0,
            format!("negative log start offset {}", f.log_start_offset),
        ));
    }
    Ok(f.log_start_offset)
}

/// Stores `start` as the log start offset in `dir` (atomic replace, durable).
fn store_log_start(dir: &Path, start: i64) -> Result<()> {
    match store_log_start_renamed(dir, start)? {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// [`store_log_start`], telling a failure after the file was renamed into
/// place (it holds `start` then; see [`crate::wal::files::write_atomic_renamed`]).
fn store_log_start_renamed(dir: &Path, start: i64) -> Result<Option<Error>> {
    let path = dir.join(LOG_START_FILE);
    let json = serde_json::to_vec(
        &LogStartFile {
            version: 1,
            log_start_offset: start,
            crc32c: None,
        }
        .sealed(),
    )
    .map_err(|e| Error::io("encode", &path, std::io::Error::other(e)))?;
    crate::wal::files::write_atomic_renamed(&path, &json)
}

/// The segments of `log` (in base-offset order) that start at `base`: found
/// by a binary search, as a partition may hold many (a linear search per
/// segment made matching a pass's findings back to them quadratic, under the
/// partition's lock).
fn segments_at(log: &mut [Segment], base: i64) -> impl Iterator<Item = &mut Segment> {
    let from = log.partition_point(|s| s.base_offset() < base);
    log[from..]
        .iter_mut()
        .take_while(move |s| s.base_offset() == base)
}

/// An `open` of `path` failing with EMFILE while `count` (a test hook) is
/// above zero, counting it down.
#[cfg(test)]
fn injected_emfile(count: &std::sync::atomic::AtomicU32, path: &Path) -> Result<()> {
    match count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)) {
        Ok(_) => Err(Error::io(
            "open",
            path,
            std::io::Error::from_raw_os_error(libc::EMFILE),
        )),
        Err(_) => Ok(()),
    }
}

/// Why DeleteRecords failed for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteRecordsError {
    /// The offset is above the high watermark (or below -1).
    OutOfRange {
        /// The offset asked for.
        offset: i64,
        /// The partition's high watermark.
        high_watermark: i64,
    },
    /// Storing the new log start failed; the message says how.
    Storage(String),
    /// The partition's topic was deleted.
    Deleted,
}

impl std::fmt::Display for DeleteRecordsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeleteRecordsError::OutOfRange {
                offset,
                high_watermark,
            } => write!(
                f,
                "offset {offset} is outside -1 (the high watermark) and 0..={high_watermark}"
            ),
            DeleteRecordsError::Storage(m) => f.write_str(m),
            DeleteRecordsError::Deleted => f.write_str("the topic was deleted"),
        }
    }
}

/// An older segment the start-up found damaged (see
/// [`Partition::damaged_segments`]), its files still as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedSegment {
    /// Its log file.
    pub log_path: PathBuf,
    /// Its base offset.
    pub base_offset: i64,
    /// The offset after its last valid batch.
    pub end: i64,
    /// The next segment's base offset: offsets `end..next_base` are missing.
    pub next_base: i64,
    /// Bytes of its log holding valid batches.
    pub size: u64,
    /// Where and why its batches stop, when bytes follow them.
    pub cut: Option<super::segment::Cut>,
}

/// A partition of a topic.
#[derive(Debug)]
pub struct Partition {
    topic: String,
    index: i32,
    dir: PathBuf,
    /// Size at which the active segment rolls (the topic's `segment.bytes`).
    segment_bytes: AtomicU64,
    /// Age at which the active segment rolls (the topic's `segment.ms`; see
    /// [`Segment::age_for_roll`]).
    segment_ms: AtomicU64,
    /// Oldest first; every segment but the newest is sealed (see
    /// [`Segment::seal`]).
    log: Mutex<Vec<Segment>>,
    /// Counts the changes that take segments away from `log` (retention,
    /// DeleteRecords, a compaction's copy put in place of segments): bumped
    /// under `log`, before the segments' files are removed or renamed over,
    /// so a reader outside the lock whose segment's file went knows it went
    /// (see [`Partition::lookup`]).
    segments_replaced: AtomicU64,
    /// Held through each [`Partition::sync`]: a sync that finds nothing left to
    /// take has to wait for one whose `fdatasync`s are still running, or it
    /// would answer for data not yet on the disk (a checkpoint moving the WAL
    /// past a topic whose delete is still syncing it).
    syncing: Mutex<()>,
    /// The first segment's base offset, set under `log` wherever the first
    /// segment changes: with `deleted_below`, the log start offset without
    /// taking `log` (see [`Partition::log_start_offset`]).
    first_base: AtomicI64,
    /// Bytes appended to the segments since the partition was opened (added
    /// under `log`): what a waiting Fetch adds to the bytes it last found from
    /// its offset, without taking `log` (see [`Partition::bytes_from_marked`]).
    appended: AtomicU64,
    /// The broker-wide cache of read handles the sealed segments' logs are
    /// opened through.
    open_files: Arc<SegmentFiles>,
    /// Next offset to assign (submit thread only, after recovery).
    next_offset: AtomicI64,
    /// The log end and the bytes of all segments as last read under `log`
    /// (see [`Partition::log_end_and_size_now`]).
    last_seen: (AtomicI64, AtomicU64),
    /// Offset after the last batch a consumer may read.
    high_watermark: AtomicI64,
    /// Records below this offset were deleted (DeleteRecords); 0 when none were.
    deleted_below: AtomicI64,
    /// One DeleteRecords at a time, so that the stored start never goes back;
    /// holds whether the last one renamed its file into place but could not
    /// make the rename durable (its directory fsync failed).
    deleting: Mutex<bool>,
    /// Set when the topic is deleted; the pipeline then refuses produces to it.
    deleted: AtomicBool,
    /// The long-polling Fetches waiting on the partition, woken whenever its
    /// high watermark or log start moves or its topic is deleted (see
    /// [`super::watchers`]).
    watchers: Watchers,
    /// Held shared by each change made to the partition's files by path
    /// (retention, DeleteRecords, compaction), which first checks that the
    /// topic was not deleted; a delete holds it exclusively while it moves the
    /// topic's directory away (see [`Partition::retire`]). So no such change
    /// lands in the directory of a topic created later under the same name.
    /// (Appends and their rolls need no guard: a delete waits until the
    /// pipeline has applied everything accepted for the topic.)
    files: RwLock<()>,
    /// The first failed sync of the partition's segments (set under `log`).
    /// After it no [`Partition::sync`] succeeds: the kernel reports a
    /// write-back failure once, so the next `fdatasync` of the file would
    /// succeed for pages it may have dropped.
    sync_failed: OnceLock<String>,
    /// Why compaction stopped for this partition until a restart: a pass met
    /// a segment that does not validate, which every later pass would read
    /// again, up to the damage, and fail on (Kafka marks such a partition
    /// uncleanable).
    uncleanable: OnceLock<String>,
    /// The producer snapshots written and not fsynced since (the next
    /// [`Partition::sync`] makes them durable, or a trim before it deletes
    /// segments); see [`UnsyncedSnapshots`].
    unsynced_snapshots: Mutex<UnsyncedSnapshots>,
    /// Held through each [`Partition::sync_snapshots_from`] (the checkpoint's,
    /// a trim's, a compaction merge's): a failed fsync is reported to one
    /// descriptor only, and a second sync's fsync of the same file meanwhile
    /// succeeded and counted the snapshot durable before the first marked it
    /// failed. One at a time, the failure is marked before any other sync
    /// looks, and no two write again the same temporary file.
    syncing_snapshots: Mutex<()>,
    /// Segments a trim took out of the log whose files it could not remove
    /// (a producer snapshot that could not be made durable first, a failed
    /// unlink): the next trim (the next retention pass at the latest)
    /// removes them, before the segments it judges itself.
    unremoved: Mutex<Vec<Segment>>,
    /// Held through each write of a segment's producer snapshot: a roll's
    /// ([`Partition::snapshot_producers`]), a compaction merge's of the
    /// newest segment when no snapshot after its group exists (see
    /// [`Partition::ensure_snapshot_from`]), which may be for the same base,
    /// and a sync's of one whose write or fsync failed
    /// ([`Partition::rewrite_failed_snapshots`], taken after
    /// `syncing_snapshots`); one at a time, none renames another's
    /// half-written temporary file into place.
    writing_snapshots: Mutex<()>,
    /// The base offsets of the producer snapshots on disk (found at open, or
    /// written since), for [`Partition::drop_snapshots_below`]. Those found
    /// at open that load wait for the first checkpoint's fsync (a crash may
    /// have left them as dirty pages); those that do not are removed.
    snapshots: Mutex<BTreeSet<i64>>,
    /// Idempotent producers' last batches (judged and updated by the submit thread).
    producers: Mutex<ProducerState>,
    /// Offsets below this were in segments the last compaction pass covered.
    cleaned_through: AtomicI64,
    /// One compaction pass at a time, and when passes covered which offsets
    /// (when a tombstone may go).
    compacting: Mutex<delete_horizon::History>,
    /// When a tombstone the last pass kept, waiting for its delete horizon,
    /// may go (`i64::MAX`: none waits): a pass is then due however few
    /// bytes are new.
    tombstones_due_ms: AtomicI64,
    /// Set when a compaction's copy was put in place on disk but could not be
    /// loaded, or its swap failed part way: the segments in memory no longer match the files (the old ones
    /// were removed or renamed over), so no retention, DeleteRecords or
    /// compaction touches the partition's files until a restart, which loads
    /// what the disk holds. Why, for the errors.
    swap_unloaded: OnceLock<String>,
    /// Makes the next [`Partition::append`] fail (tests).
    #[cfg(test)]
    pub(crate) fail_next_append: AtomicBool,
    /// Makes this many loads of a compaction's installed copy fail (tests).
    #[cfg(test)]
    fail_swap_loads: std::sync::atomic::AtomicU32,
    /// Makes this many creations of the segment an append rolls to fail with
    /// EMFILE (tests).
    #[cfg(test)]
    pub(crate) fail_roll_creates: std::sync::atomic::AtomicU32,
    /// Makes the next [`segment::install_swap`] fail once it has done its work,
    /// as a failed last directory sync does (tests).
    #[cfg(test)]
    fail_swap_finish: AtomicBool,
    /// Swaps to fail with EMFILE once done (tests).
    #[cfg(test)]
    fail_swap_syncs: std::sync::atomic::AtomicU32,
}

/// What a fetch read returns.
#[derive(Debug)]
pub struct ReadResult {
    /// Whole batches, possibly empty.
    pub records: Bytes,
    /// Whether a batch of `records` holds records (compaction leaves batches
    /// without any).
    pub holds_records: bool,
    /// The high watermark when the read was planned.
    pub high_watermark: i64,
    /// First offset still stored.
    pub log_start_offset: i64,
}

/// A segment as [`Partition::visit_batches`] reads it outside the lock.
struct SegmentView {
    base: i64,
    next: i64,
    size: u64,
    log: LogHandle,
    index: Arc<BatchIndex>,
    /// The newest timestamp of all its batches, when known.
    max_timestamp: Option<i64>,
    /// Base offset of the first batch holding it, when known.
    holder: Option<i64>,
}

#[cfg(test)]
thread_local! {
    /// Batch headers [`Partition::visit_batches`] read on this thread (tests).
    static HEADERS_READ: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Run once by the next [`Partition::read_within`] on this thread between
    /// planning its read (under the lock) and performing it (tests).
    static BETWEEN_PLAN_AND_READ: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
    /// Run once by the next [`Partition::visit_batches`] on this thread between
    /// taking its view of the segments (under the lock) and reading them
    /// (tests).
    static BETWEEN_VIEW_AND_READ: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
    /// Run once by the next [`Partition::sync`] on this thread between taking
    /// the segments' sync jobs (under the lock) and running them (tests).
    static BETWEEN_TAKE_AND_SYNC: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
    /// Run once by the next [`Partition::settle_max_timestamps`] on this
    /// thread between taking its jobs (under the lock) and running them
    /// (tests).
    static BETWEEN_JOBS_AND_READS: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
    /// Run once by the next [`Partition::save_time_indexes`] on this thread
    /// between writing its time indexes and putting them in place (tests).
    static BETWEEN_WRITE_AND_INSTALL: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
    /// Run once by the next [`Partition::compact`] on this thread between
    /// writing a group's compacted copy and putting it in place (tests).
    pub(crate) static BETWEEN_COPY_AND_SWAP: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
    /// Run once by the next [`Partition::trim`] on this thread just before it
    /// removes the files of the segments it deletes (tests).
    static BEFORE_TRIM_REMOVES: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
    /// Run once by the next [`Partition::sync_snapshots_from`] on this thread
    /// between its fsyncs and taking the bases it synced off the pending set
    /// (tests).
    static BEFORE_SNAPSHOTS_SYNCED: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
    /// The producer snapshot files renamed into place on this thread and not
    /// fsynced since: what a power loss can take from them (tests).
    static SNAPSHOTS_NOT_FSYNCED: std::cell::RefCell<BTreeSet<PathBuf>> =
        const { std::cell::RefCell::new(BTreeSet::new()) };
    /// The next fsync of each producer snapshot file here fails, once, as a
    /// failed write-back does (tests).
    static FAIL_SNAPSHOT_FSYNC: std::cell::RefCell<BTreeSet<PathBuf>> =
        const { std::cell::RefCell::new(BTreeSet::new()) };
    /// The next read of each producer snapshot file here fails,
    /// once (tests).
    static FAIL_SNAPSHOT_READ: std::cell::RefCell<BTreeSet<PathBuf>> =
        const { std::cell::RefCell::new(BTreeSet::new()) };
    /// The next write of each producer snapshot file here fails, once
    /// (tests).
    static FAIL_SNAPSHOT_WRITE: std::cell::RefCell<BTreeSet<PathBuf>> =
        const { std::cell::RefCell::new(BTreeSet::new()) };
    /// The producer snapshot files whose write-back failed: no later fsync
    /// makes them durable, until a new file is renamed into place (tests).
    static SNAPSHOTS_WRITE_BACK_FAILED: std::cell::RefCell<BTreeSet<PathBuf>> =
        const { std::cell::RefCell::new(BTreeSet::new()) };
}

/// Notes (tests) that `path` was replaced by a new file, renamed into place
/// and not fsynced.
#[cfg(test)]
fn snapshot_renamed_into_place(path: &Path) {
    SNAPSHOTS_NOT_FSYNCED.with(|s| s.borrow_mut().insert(path.to_path_buf()));
    SNAPSHOTS_WRITE_BACK_FAILED.with(|s| s.borrow_mut().remove(path));
}

/// The producer snapshots that wait for their fsync, by base offset. Every
/// one is kept: a trim's snapshot, written outside the log lock, can finish
/// after a later roll's. A base is added before its snapshot is written, and
/// again once it is renamed into place, each time with a new write
/// generation: a sync takes a base off only if its generation is the one it
/// saw before its fsync, so a snapshot renamed into place after that fsync
/// (one the fsync found missing, or whose old contents it fsynced) stays
/// pending. A base whose fsync failed is never taken off by a sync: Linux
/// reports a failed write-back to one fsync only, so the next one of the same
/// file succeeds with the data maybe lost. Only a new write of it (a new
/// file renamed into place) can become durable.
#[derive(Debug, Default)]
struct UnsyncedSnapshots {
    /// Base offset to the generation of its latest write.
    pending: BTreeMap<i64, u64>,
    /// The last generation handed out.
    generation: u64,
}

impl UnsyncedSnapshots {
    /// Marks the snapshot at `base` as waiting for its fsync, with a new
    /// write generation.
    fn add(&mut self, base: i64) {
        self.generation += 1;
        self.pending.insert(base, self.generation);
    }

    /// Whether the snapshot at `base` is not known durable.
    fn contains(&self, base: i64) -> bool {
        self.pending.contains_key(&base)
    }

    /// Takes `base` off for good: its snapshot is gone.
    fn forget(&mut self, base: i64) {
        self.pending.remove(&base);
    }

    /// Takes `base` off once a sync made durable the write it saw at
    /// `generation`; a later write keeps it pending.
    fn synced(&mut self, base: i64, generation: u64) {
        if self.pending.get(&base) == Some(&generation) {
            self.pending.remove(&base);
        }
    }

    /// Marks the write of `base` a sync saw at `generation` as failed: no
    /// later fsync of that file counts. A later write keeps its own
    /// generation.
    fn failed(&mut self, base: i64, generation: u64) {
        if let Some(g) = self.pending.get_mut(&base) {
            if *g == generation {
                *g = FAILED_SNAPSHOT;
            }
        }
    }

    /// Marks the write of `base` as failed: it never reached its file.
    fn write_failed(&mut self, base: i64) {
        self.pending.insert(base, FAILED_SNAPSHOT);
    }

    /// The bases at or above `from` whose fsync failed.
    fn failed_from(&self, from: i64) -> Vec<i64> {
        self.pending
            .range(from..)
            .filter(|&(_, &g)| g == FAILED_SNAPSHOT)
            .map(|(&b, _)| b)
            .collect()
    }
}

/// The generation of a snapshot whose fsync failed (never handed out:
/// generations count up from 1).
const FAILED_SNAPSHOT: u64 = u64::MAX;

/// Writes `snapshot` to `path` as a new file: a temporary one (removed when
/// this fails, or at the next open after a crash), renamed into place. Not
/// fsynced.
fn write_snapshot(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    #[cfg(test)]
    if FAIL_SNAPSHOT_WRITE.with(|f| f.borrow_mut().remove(path)) {
        return Err(std::io::Error::other("injected write failure"));
    }
    let tmp = path.with_extension("producers-tmp");
    serde_json::to_vec(snapshot)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(&tmp, json))
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            // What a failed write got (on a full disk, part of the file) is
            // given back.
            let _ = std::fs::remove_file(&tmp);
        })
}

/// `fsync`s the producer snapshot at `path`.
fn fsync_snapshot(path: &Path) -> std::io::Result<()> {
    #[cfg(test)]
    if FAIL_SNAPSHOT_FSYNC.with(|f| f.borrow_mut().remove(path)) {
        // As the kernel does: the data is lost to this file for good, and
        // only this fsync says so.
        SNAPSHOTS_WRITE_BACK_FAILED.with(|s| s.borrow_mut().insert(path.to_path_buf()));
        return Err(std::io::Error::other("injected write-back failure"));
    }
    // Opened for writing: Windows refuses to sync a read-only handle.
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| crate::wal::journal::sync_all(&f))?;
    #[cfg(test)]
    if !SNAPSHOTS_WRITE_BACK_FAILED.with(|s| s.borrow().contains(path)) {
        SNAPSHOTS_NOT_FSYNCED.with(|s| s.borrow_mut().remove(path));
    }
    Ok(())
}

/// Where a compaction pass starts.
#[derive(Debug, Clone, Copy)]
struct PassFrom {
    /// The first offset the passes since the start did not cover.
    cleaned: i64,
    /// Whether the pass maps keys from `cleaned` on; otherwise it runs only
    /// for tombstones come due, over the segments earlier passes covered.
    map_new: bool,
}

/// A read planned under the lock, performed outside it.
struct ReadPlan {
    log: LogHandle,
    position: u64,
    len: u64,
    /// Whether a batch of the range holds records.
    records: bool,
}

impl Partition {
    /// Opens the partition in `dir` (creating the directory and a first segment when
    /// there is none); the newest segment is scanned and its torn tail cut. Its
    /// sealed segments' logs are opened through a cache of its own of
    /// [`segment::DEFAULT_OPEN_FILES`] handles (a broker shares one cache
    /// among all its partitions: see [`Partition::open_in`]).
    ///
    /// # Errors
    /// I/O errors naming the path.
    pub fn open(topic: &str, index: i32, dir: PathBuf, segment_bytes: u64) -> Result<Partition> {
        Self::open_in(
            topic,
            index,
            dir,
            segment_bytes,
            SegmentFiles::new(segment::DEFAULT_OPEN_FILES),
        )
    }

    /// [`Partition::open`], opening the sealed segments' logs through `files`.
    /// Only the newest segment keeps its files open: each older one is sealed
    /// once loaded, and its files closed.
    ///
    /// # Errors
    /// I/O errors naming the path.
    pub fn open_in(
        topic: &str,
        index: i32,
        dir: PathBuf,
        segment_bytes: u64,
        files: Arc<SegmentFiles>,
    ) -> Result<Partition> {
        Self::open_judged(topic, index, dir, segment_bytes, files, false)
    }

    /// [`Partition::open_in`]; with `defer_cut`, a newest segment whose
    /// batches stop before its end keeps its files as found until
    /// [`Partition::settle_newest`]: a start judges the cut against the
    /// recovery point (a cut below it lost flushed records), and a start
    /// refused changes nothing (the bytes past the damage may be the only
    /// copy of acknowledged records).
    ///
    /// # Errors
    /// I/O errors naming the path.
    pub fn open_judged(
        topic: &str,
        index: i32,
        dir: PathBuf,
        segment_bytes: u64,
        files: Arc<SegmentFiles>,
        defer_cut: bool,
    ) -> Result<Partition> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create_dir_all", &dir, e))?;
        // A compaction a crash interrupted after its copy was complete.
        segment::recover_swaps(&dir)?;
        let mut bases = Vec::new();
        let mut snapshots = BTreeSet::new();
        let mut time_indexes = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("read_dir", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("read_dir", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".log") {
                match segment::base_of(stem) {
                    Some(base) if base > segment::MAX_BASE => {
                        return Err(Error::corrupt(
                            entry.path(),
                            0,
                            format!(
                                "a segment's base offset {base} is beyond the largest a \
                                 partition holds ({})",
                                segment::MAX_BASE
                            ),
                        ));
                    }
                    Some(base) => bases.push(base),
                    None => {
                        tracing::warn!(file = %entry.path().display(), "ignoring a file named like a segment but not as segments are named (20 digits)");
                    }
                }
            } else if let Some(base) = name.strip_suffix(".producers").and_then(segment::base_of) {
                snapshots.insert(base);
            } else if let Some(base) = name.strip_suffix(".timeindex").and_then(segment::base_of) {
                time_indexes.push(base);
            } else if name.ends_with(".producers-tmp")
                || name.ends_with(segment::CLEANING_SUFFIX)
                || name.ends_with(segment::REBUILD_SUFFIX)
                || name.ends_with(segment::TIME_INDEX_TMP_SUFFIX)
            {
                // A snapshot, a compacted copy, a rebuilt log or a time index
                // a crash interrupted; its rename never happened.
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            }
        }
        bases.sort_unstable();
        // A time index whose segment is gone (its removal undone by a crash
        // before the directory was synced) is never read: removed.
        for base in time_indexes {
            if bases.binary_search(&base).is_err() {
                let path = dir.join(segment::time_index_name(base));
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    // Harmless where it is: never read, and a segment
                    // created at this base removes it first.
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "could not remove a time index whose segment is gone");
                    }
                }
            }
        }
        // A snapshot whose segment is gone (its removal undone by a crash
        // before the directory was synced) is never read: removed.
        let orphans: Vec<i64> = snapshots
            .iter()
            .copied()
            .filter(|b| bases.binary_search(b).is_err())
            .collect();
        for base in orphans {
            let path = dir.join(segment::producers_name(base));
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    snapshots.remove(&base);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    snapshots.remove(&base);
                }
                // Never read: kept in the set, for a checkpoint whose recovery
                // point passes it to try again.
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "could not remove a producer snapshot whose segment is gone");
                }
            }
        }
        // A snapshot that does not load (a power loss emptied it) is never
        // read: removed, so no checkpoint counts it as the newest durable
        // one and deletes an older one that loads. (Not made durable: one a
        // crash brings back is removed again.)
        let mut unreadable = Vec::new();
        // (Not the orphans kept above, which nothing reads.)
        for &b in snapshots.iter().filter(|b| bases.binary_search(b).is_ok()) {
            if load_snapshot(&dir, b)?.is_none() {
                unreadable.push(b);
            }
        }
        for base in unreadable {
            snapshots.remove(&base);
            let path = dir.join(segment::producers_name(base));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "could not remove an unreadable producer snapshot");
                }
            }
        }
        // Those that load may be dirty pages of a crash shortly after their
        // write: each waits for the first checkpoint's fsync before it counts
        // as durable.
        let mut unsynced = UnsyncedSnapshots::default();
        for &base in &snapshots {
            unsynced.add(base);
        }
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let mut producers = ProducerState::default();
        for (i, base) in bases.iter().enumerate() {
            let seg = if i + 1 == bases.len() {
                producers = producers_before(&dir, *base, &segments, &snapshots)?;
                Segment::open_newest(&dir, *base, &mut producers, defer_cut)?
            } else {
                // Its files are left as found when its index does not match
                // its log: a segment cut there, or ending before the next one
                // begins, may have lost flushed records, which the start-up
                // judges against the recovery point before anything is cut
                // (see `Partition::damaged_segments`).
                let mut seg = Segment::open_older(&dir, *base)?;
                // Opened from its index, ending past the next segment's base:
                // its last batch's header, read there without its checksum,
                // may be damaged (a larger offset delta), which a scan finds.
                // Before, every start refused the partition in every mode
                // ("segment starts at ... but the previous one ends at ...").
                if !seg.is_unsettled() && seg.next_offset() > bases[i + 1] {
                    drop(seg);
                    seg = Segment::scan_older(&dir, *base)?;
                }
                if seg.cut().is_none() && seg.next_offset() >= bases[i + 1] {
                    // Only its index was out of date: rewritten, and synced
                    // now, so the segment seals with its files closed (every
                    // older segment of every partition may need its index
                    // rebuilt at one start).
                    seg.settle()?;
                }
                // A segment the open scanned (its index rebuilt) knows its
                // newest timestamp: saved, for the next start. Not one the
                // scan cut, which `verify_from` may reopen for appends.
                if seg.cut().is_none() && !seg.is_unsettled() {
                    save_time_index(topic, index, &mut seg);
                }
                seg.seal(&files);
                seg
            };
            segments.push(seg);
        }
        // An empty segment that starts inside the previous one holds nothing: a
        // retention roll whose directory fsync failed, and whose removal of the
        // new segment failed too or was undone by a power loss, left it, and
        // appends went on in the previous segment past its base. It goes, and
        // the partition opens again without it (the previous segment may be
        // the newest then).
        // All such segments go at once, with one directory fsync, and the
        // partition opens once more: one open (and one recursion) per
        // segment made a directory holding many of them slow, and enough of
        // them overflowed the stack at every start.
        let mut end = None;
        let mut removed = false;
        for seg in &segments {
            match end {
                Some(end) if seg.size() == 0 && seg.base_offset() < end => {
                    tracing::warn!(file = %seg.log_path().display(), previous_end = end, "removing an empty segment that starts inside the previous one");
                    seg.remove_files()?;
                    removed = true;
                }
                _ => end = Some(seg.next_offset()),
            }
        }
        if removed {
            sync_dir(&dir)?;
            drop(segments);
            return Self::open_judged(topic, index, dir, segment_bytes, files, defer_cut);
        }
        // An empty newest segment behind a full one is fine; any other segment
        // that starts before the previous one ended means a damaged directory.
        for w in segments.windows(2) {
            if w[1].base_offset() < w[0].next_offset() {
                return Err(Error::corrupt(
                    w[1].log_path(),
                    0,
                    format!(
                        "segment starts at {} but the previous one ends at {}",
                        w[1].base_offset(),
                        w[0].next_offset()
                    ),
                ));
            }
        }
        if segments.is_empty() {
            segments.push(Segment::create(&dir, 0)?);
            sync_dir(&dir)?;
        }
        let end = segments.last().map_or(0, Segment::next_offset);
        let first_base = segments.first().map_or(0, Segment::base_offset);
        let size = segments.iter().map(Segment::size).sum();
        let deleted_below = load_log_start(&dir)?;
        let history = delete_horizon::History::load(&dir, end);
        Ok(Partition {
            topic: topic.to_string(),
            index,
            dir,
            segment_bytes: AtomicU64::new(segment_bytes),
            segment_ms: AtomicU64::new(u64::MAX),
            log: Mutex::new(segments),
            segments_replaced: AtomicU64::new(0),
            syncing: Mutex::new(()),
            first_base: AtomicI64::new(first_base),
            appended: AtomicU64::new(0),
            open_files: files,
            next_offset: AtomicI64::new(end),
            last_seen: (AtomicI64::new(end), AtomicU64::new(size)),
            deleted_below: AtomicI64::new(deleted_below),
            // A stored start may be one whose directory fsync failed before a
            // restart: the first DeleteRecords stores it again before it
            // answers NONE.
            deleting: Mutex::new(deleted_below > 0),
            high_watermark: AtomicI64::new(end),
            deleted: AtomicBool::new(false),
            watchers: Watchers::default(),
            files: RwLock::new(()),
            sync_failed: OnceLock::new(),
            uncleanable: OnceLock::new(),
            producers: Mutex::new(producers),
            unsynced_snapshots: Mutex::new(unsynced),
            syncing_snapshots: Mutex::new(()),
            writing_snapshots: Mutex::new(()),
            unremoved: Mutex::new(Vec::new()),
            snapshots: Mutex::new(snapshots),
            cleaned_through: AtomicI64::new(0),
            compacting: Mutex::new(history),
            tombstones_due_ms: AtomicI64::new(i64::MAX),
            swap_unloaded: OnceLock::new(),
            #[cfg(test)]
            fail_next_append: AtomicBool::new(false),
            #[cfg(test)]
            fail_swap_loads: std::sync::atomic::AtomicU32::new(0),
            #[cfg(test)]
            fail_roll_creates: std::sync::atomic::AtomicU32::new(0),
            #[cfg(test)]
            fail_swap_finish: AtomicBool::new(false),
            #[cfg(test)]
            fail_swap_syncs: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Scans every segment but the newest (which the open scanned) that holds
    /// offsets at or above `from`, the partition's recovery point: below it the
    /// segments were synced by a checkpoint; above it the WAL holds every batch,
    /// and a segment there may have lost what it held to a crash or a failed
    /// write even though a later segment exists (a roll while a checkpoint's
    /// sync of the segment was in flight, or a sync the file system answered
    /// without making the data durable). The first segment found short (cut
    /// where its batches stop) becomes the newest: the segments after it are
    /// removed, and WAL replay appends from where it ends. Returns that end
    /// when it cut. A segment the open already cut (its index did not match
    /// its log) is short too, though a second scan finds nothing to cut; so is
    /// one that ends before the next begins, in a compacted topic too, whose
    /// copies keep every offset (see [`super::compaction`]). Call before the
    /// partition serves anything.
    ///
    /// # Errors
    /// I/O errors naming the file.
    ///
    /// A segment wholly below `from` that the open found damaged (its files
    /// left as found: see [`Partition::damaged_segments`]) is not scanned
    /// again nor made the newest, which would remove the flushed segments
    /// after it: the start-up judges it against the recovery point.
    ///
    /// With `keep_later` (the recovery point is unknown: its file is missing
    /// or was ignored, while the WAL has checkpointed entries it no longer
    /// holds), a short segment is not made the newest either: it is left as
    /// found, [damaged](Partition::damaged_segments), for the start-up to
    /// rebuild from the WAL or refuse, and the segments after it stay.
    ///
    /// With `strict`, a segment that holds the recovery point and whose valid
    /// batches stop below it (flushed batches damaged) is left as found too,
    /// and the segments after it stay, for the start-up to judge the same way:
    /// a strict start that refuses changes nothing.
    pub fn verify_from(&self, from: i64, keep_later: bool, strict: bool) -> Result<Option<i64>> {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        for i in 0..log.len().saturating_sub(1) {
            let next_base = log[i + 1].base_offset();
            if next_base <= from {
                // Durable as synced, or damaged since (left unsettled for the
                // start-up's recovery point check).
                continue;
            }
            let base = log[i].base_offset();
            let straddles = strict && base < from;
            let mut scanned = if keep_later || straddles {
                Segment::scan_older(&self.dir, base)?
            } else {
                Segment::open(&self.dir, base, true)?
            };
            let end = scanned.next_offset();
            let short = log[i].cut().is_some() || scanned.cut().is_some() || end < next_base;
            if straddles && !keep_later {
                if short && end.min(log[i].next_offset()) < from {
                    // Left as found, judged with the damaged segments.
                    if log[i].cut().is_none() {
                        log[i] = scanned;
                    }
                    continue;
                }
                scanned.settle()?;
            }
            if keep_later {
                if short {
                    // Left unsettled, its files as found.
                    if log[i].cut().is_none() {
                        log[i] = scanned;
                    }
                    continue;
                }
                scanned.settle()?;
            }
            if !short {
                scanned.sync()?;
                save_time_index(&self.topic, self.index, &mut scanned);
                scanned.seal(&self.open_files);
                log[i] = scanned;
                continue;
            }
            // It becomes the newest segment: it keeps its files, but not a
            // time index, which no segment appended to may have.
            segment::remove_time_index(&self.dir, scanned.base_offset())?;
            log[i] = scanned;
            self.segments_replaced.fetch_add(1, Ordering::SeqCst);
            let removed: Vec<Segment> = log.drain(i + 1..).collect();
            self.note_first_segment(&log);
            for s in &removed {
                s.remove_files()?;
            }
            self.forget_snapshots_of(&removed);
            sync_dir(&self.dir)?;
            // The producers as of this segment's end, as if it were opened newest.
            let on_disk = self
                .snapshots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let mut producers =
                producers_before(&self.dir, log[i].base_offset(), &log[..i], &on_disk)?;
            log[i].record_producers_tail(usize::MAX, &mut producers)?;
            *self.producers() = producers;
            self.next_offset.store(end, Ordering::Release);
            self.set_high_watermark(end);
            tracing::warn!(
                topic = %self.topic,
                partition = self.index,
                segment = %log[i].log_path().display(),
                end,
                removed = removed.len(),
                "a segment above the recovery point ends short of the next one; cut there, the WAL restores the rest"
            );
            return Ok(Some(end));
        }
        Ok(None)
    }

    /// Takes the producer snapshots of `removed` (whose files are gone) out
    /// of the partition's lists: left there, a base with no file counted as a
    /// durable snapshot once a sync found it missing, and
    /// [`Partition::drop_snapshots_below`] then kept it as the newest durable
    /// one in place of a real one, which it deleted.
    fn forget_snapshots_of(&self, removed: &[Segment]) {
        let mut snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut unsynced = self
            .unsynced_snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for s in removed {
            snapshots.remove(&s.base_offset());
            unsynced.forget(s.base_offset());
        }
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition index.
    pub fn index(&self) -> i32 {
        self.index
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the partition's topic was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Marks the topic deleted, and wakes the Fetches waiting on the
    /// partition: they answer for a partition that left the broker.
    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.watchers.wake();
    }

    /// The long-polling Fetches waiting on the partition.
    pub(crate) fn watchers(&self) -> &Watchers {
        &self.watchers
    }

    /// For a change to the partition's files by path: `None` once the topic was
    /// deleted (its directory may be gone, or be another topic's by now), or
    /// once its segments in memory no longer match its files (see
    /// `swap_unloaded`).
    fn files_guard(&self) -> Option<RwLockReadGuard<'_, ()>> {
        let guard = self.files.read().unwrap_or_else(PoisonError::into_inner);
        (!self.is_deleted() && self.swap_unloaded.get().is_none()).then_some(guard)
    }

    /// [`Partition::files_guard`] without waiting, for work that may be
    /// skipped: `None` also while a topic delete holds the files or waits for
    /// them (a delete runs a checkpoint while it holds them, and a lookup
    /// should not wait behind it).
    fn try_files_guard(&self) -> Option<RwLockReadGuard<'_, ()>> {
        let guard = match self.files.try_read() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        (!self.is_deleted() && self.swap_unloaded.get().is_none()).then_some(guard)
    }

    /// Waits for every change to the partition's files by path in progress,
    /// and (the partition marked deleted first) keeps any from starting while
    /// held and after: a topic being deleted holds it while it moves the
    /// topic's directory away.
    pub(crate) fn retire(&self) -> RwLockWriteGuard<'_, ()> {
        debug_assert!(self.is_deleted());
        self.files.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The idempotent producers' state (see [`super::producers`]).
    pub(crate) fn producers(&self) -> std::sync::MutexGuard<'_, ProducerState> {
        self.producers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every segment but the newest that the open left
    /// [unsettled](Segment::is_unsettled) (damaged: its index did not match,
    /// and it was cut, or ends before the next segment begins), oldest first.
    pub fn damaged_segments(&self) -> Vec<DamagedSegment> {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.windows(2)
            .filter(|w| w[0].is_unsettled())
            .map(|w| DamagedSegment {
                log_path: w[0].log_path().to_path_buf(),
                base_offset: w[0].base_offset(),
                end: w[0].next_offset(),
                next_base: w[1].base_offset(),
                size: w[0].size(),
                cut: w[0].cut().cloned(),
            })
            .collect()
    }

    /// Writes what the open found into the files of the
    /// [damaged](Partition::damaged_segments) segment at `base`: its log is
    /// cut where its valid batches stop, its index rewritten (see
    /// [`Segment::settle`]). Call before the partition serves anything.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn settle_segment(&self, base: i64) -> Result<()> {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        match log.iter_mut().find(|s| s.base_offset() == base) {
            Some(seg) => seg.settle(),
            None => Ok(()),
        }
    }

    /// Restores the [damaged](Partition::damaged_segments) segment at `base`
    /// to whole: its valid batches followed by `tail`, the batches it lost
    /// (continuing it exactly to the next segment's base, as the caller
    /// checked), written as a new log synced and renamed over it (see
    /// [`Segment::replace_tail`]); the segment is then opened again, its index
    /// rewritten. Call before the partition serves anything.
    ///
    /// # Errors
    /// I/O errors naming the file; a segment that is not damaged, or that is
    /// not whole after, is [`Error::Corrupt`].
    pub fn repair_segment(&self, base: i64, tail: &[u8]) -> Result<()> {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(i) = log.iter().position(|s| s.base_offset() == base) else {
            return Ok(());
        };
        let next_base = log.get(i + 1).map_or(i64::MAX, Segment::base_offset);
        log[i].replace_tail(tail)?;
        let mut seg = Segment::open_older(&self.dir, base)?;
        if seg.cut().is_some() || seg.next_offset() != next_base {
            return Err(Error::corrupt(
                seg.log_path(),
                seg.size(),
                format!(
                    "the segment rebuilt from the WAL ends at {} instead of {next_base}",
                    seg.next_offset()
                ),
            ));
        }
        seg.settle()?;
        seg.seal(&self.open_files);
        log[i] = seg;
        self.segments_replaced.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Cuts the newest segment where its opening scan found its batches stop,
    /// when [`Partition::open_judged`] left it as found (logged with file and
    /// position; the log and index synced). Nothing to do otherwise.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn settle_newest(&self) -> Result<()> {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        match log.last_mut() {
            Some(seg) => seg.settle(),
            None => Ok(()),
        }
    }

    /// The newest segment's log file and what the opening scan cut off its end.
    pub fn newest_segment(&self) -> Option<(PathBuf, Option<super::segment::Cut>)> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .map(|s| (s.log_path().to_path_buf(), s.cut().cloned()))
    }

    /// Offset after the last stored batch.
    pub fn log_end_offset(&self) -> i64 {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .map_or(0, Segment::next_offset)
    }

    /// [`Partition::log_end_offset`] and [`Partition::size_bytes`] without
    /// waiting long for the `log` lock: an append holds it for its write, and
    /// is waited for (up to [`LOCK_PATIENCE`]); a roll holds it through four
    /// syncs and a compaction swap through two directory fsyncs, seconds on a
    /// stalled disk, which a metrics scrape must not wait for. Then the values
    /// last read under the lock are given, the log end no lower than the high
    /// watermark (the log holds at least that much).
    pub fn log_end_and_size_now(&self) -> (i64, u64) {
        let (end, size) = &self.last_seen;
        let deadline = Instant::now() + LOCK_PATIENCE;
        loop {
            let log = match self.log.try_lock() {
                Ok(log) => Some(log),
                Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(log) = log {
                let now = (
                    log.last().map_or(0, Segment::next_offset),
                    log.iter().map(Segment::size).sum(),
                );
                // Stored under the lock: a scrape that overlaps this one
                // cannot store an older reading after it.
                end.store(now.0, Ordering::Relaxed);
                size.store(now.1, Ordering::Relaxed);
                return now;
            }
            if Instant::now() >= deadline {
                let last = end.load(Ordering::Relaxed).max(self.high_watermark());
                return (last, size.load(Ordering::Relaxed));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Bytes of all its segments.
    pub fn size_bytes(&self) -> u64 {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(Segment::size)
            .sum()
    }

    /// First offset still served (see `start_of`). Takes no lock: an append
    /// holds `log` through a roll's `fdatasync`, and this is asked on the
    /// server's async threads.
    pub fn log_start_offset(&self) -> i64 {
        self.first_base
            .load(Ordering::Acquire)
            .max(self.deleted_below.load(Ordering::Acquire))
    }

    /// Records where `log`, just changed at its front, now starts (the caller
    /// holds the lock), and wakes the waiting Fetches when that moved.
    fn note_first_segment(&self, log: &[Segment]) {
        let base = log.first().map_or(0, Segment::base_offset);
        if self.first_base.swap(base, Ordering::AcqRel) != base {
            self.watchers.wake();
        }
    }

    /// Holds the partition's `log` lock until the result is dropped, as an
    /// append does through a roll's `fdatasync` (tests).
    #[cfg(test)]
    pub(crate) fn hold_log(&self) -> impl Sized + '_ {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The first offset still served: the first segment's base, or above it
    /// where records were deleted.
    fn start_of(&self, log: &[Segment]) -> i64 {
        log.first()
            .map_or(0, Segment::base_offset)
            .max(self.deleted_below.load(Ordering::Acquire))
    }

    /// Offset after the last batch a consumer may read.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Moves the high watermark (forward as records are applied, or back to
    /// a cut end), and wakes the Fetches waiting on the partition.
    pub(crate) fn set_high_watermark(&self, hw: i64) {
        self.high_watermark.store(hw, Ordering::Release);
        self.watchers.wake();
    }

    /// Reserves offsets for a payload of `infos` (submit thread only); returns the base.
    pub(crate) fn assign(&self, data: &mut [u8], infos: &[BatchInfo]) -> i64 {
        let base = self.next_offset.load(Ordering::Acquire);
        let next = batch::assign_offsets(data, infos, base);
        self.next_offset.store(next, Ordering::Release);
        base
    }

    /// Writes the producer state snapshot for a segment starting at `base`
    /// (`<base>.producers`: temporary file, then rename). Best effort, and
    /// fsynced by the next [`Partition::sync`] (the next checkpoint), or by a
    /// trim before it deletes segments: a start-up that finds it missing or
    /// unreadable starts from the newest readable snapshot before it (see
    /// `producers_before`), and no older snapshot that was fsynced is deleted
    /// while this one is not (see [`Partition::drop_snapshots_below`] and
    /// [`Partition::trim`]). One whose write fails is written again by the
    /// next sync, before that sync counts it (see
    /// [`Partition::rewrite_failed_snapshots`]).
    ///
    /// Called after the roll, outside the partition's log lock: the snapshot
    /// keeps only batches below `base`, so batches appended to the new segment
    /// meanwhile change nothing in it, and reads and appends do not wait for
    /// its encoding and write. (Taking it copies every producer's cached
    /// batches under the producers' lock, which the submit thread holds to
    /// judge each payload: that copy is the one part that cannot move.)
    fn snapshot_producers(&self, base: i64) {
        let _one_at_a_time = self
            .writing_snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.snapshot_producers_locked(base);
    }

    /// [`Partition::snapshot_producers`] under `writing_snapshots`.
    fn snapshot_producers_locked(&self, base: i64) {
        let snapshot = self.producers().snapshot_below(base);
        let path = self.dir.join(segment::producers_name(base));
        let not_synced = || {
            self.unsynced_snapshots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(base);
        };
        not_synced();
        match write_snapshot(&path, &snapshot) {
            Ok(()) => {
                #[cfg(test)]
                snapshot_renamed_into_place(&path);
                not_synced();
                self.snapshots
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(base);
            }
            Err(e) => {
                // As one whose fsync failed: written again, from the producers
                // known then, before any sync counts it (a sync that found no
                // file took it for one removed meanwhile, and a trim then
                // deleted the only snapshots that knew the producers).
                tracing::warn!(file = %path.display(), error = %e, "could not write the producer snapshot; it is written again at the next sync");
                self.snapshots
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(base);
                self.unsynced_snapshots
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write_failed(base);
            }
        }
    }

    /// Deletes the producer snapshots no start-up reads any more, once
    /// `recovery_point` is the partition's durably stored recovery point: a
    /// start reads the newest segment's snapshot, and that of a segment
    /// holding offsets at or above the recovery point which it finds short
    /// ([`Partition::verify_from`]); a segment that ends at or below the
    /// recovery point is never scanned, so its snapshot is never read. As
    /// Kafka deletes the snapshots below its recovery point, this keeps the
    /// snapshots' bytes from growing with every roll, each holding every
    /// producer.
    ///
    /// The removals are not made durable (no directory sync): a snapshot a
    /// crash brings back is as true as when it was written, and is deleted
    /// again by the next call (or at open, when its segment is gone too).
    /// Best effort: a snapshot that cannot be removed is logged and tried
    /// again next time. Skipped while a change to the partition's files holds
    /// them exclusively (a delete, which runs a checkpoint itself while it
    /// holds them).
    ///
    /// The newest snapshot known durable is kept even below that segment:
    /// the snapshots from it on may still wait for their fsync (a roll after
    /// the checkpoint read the partition's end, or one whose snapshot is
    /// still being written), and a power loss then leaves them empty, a
    /// start reading the newest durable one before them with every batch
    /// from its segment on. The next checkpoint, which fsyncs them, drops it.
    pub(crate) fn drop_snapshots_below(&self, recovery_point: i64) {
        let Some(_files) = self.try_files_guard() else {
            return;
        };
        let keep_from = {
            let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            // The first segment that ends above the recovery point, or the newest.
            let i = log
                .windows(2)
                .position(|w| w[1].base_offset() > recovery_point)
                .unwrap_or(log.len().saturating_sub(1));
            match log.get(i) {
                Some(s) => s.base_offset(),
                None => return,
            }
        };
        let dropped: Vec<i64> = {
            let mut snapshots = self
                .snapshots
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let newest_durable = {
                let unsynced = self
                    .unsynced_snapshots
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                snapshots
                    .iter()
                    .rev()
                    .find(|&&b| !unsynced.contains(b))
                    .copied()
            };
            let keep_from = newest_durable.map_or(keep_from, |b| b.min(keep_from));
            let kept = snapshots.split_off(&keep_from);
            std::mem::replace(&mut *snapshots, kept)
                .into_iter()
                .collect()
        };
        for base in dropped {
            let path = self.dir.join(segment::producers_name(base));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "could not remove a producer snapshot no start reads");
                    self.snapshots
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(base);
                }
            }
        }
    }

    /// Sets the size at which the active segment rolls (a topic's `segment.bytes`
    /// altered); the next append judges against it.
    pub(crate) fn set_segment_bytes(&self, bytes: u64) {
        self.segment_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Sets the age at which the active segment rolls (a topic's `segment.ms`, or
    /// the broker's `--log-roll-ms`; never until set); the next append judges
    /// against it.
    pub(crate) fn set_segment_ms(&self, ms: u64) {
        self.segment_ms.store(ms, Ordering::Relaxed);
    }

    /// After recovery (the WAL replayed): a log start stored by DeleteRecords
    /// beyond where the partition now ends (records the crash took that the WAL did
    /// not hold) comes down to the end, durably, so that records appended from
    /// there are served. Until the replay it stays, so that deleted records the
    /// replay brings back into the segment are not served again.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub(crate) fn settle_log_start(&self) -> Result<()> {
        let end = self.log_end_offset();
        let floor = self.deleted_below.load(Ordering::Acquire);
        if floor <= end {
            return Ok(());
        }
        tracing::warn!(topic = %self.topic, partition = self.index, log_start = floor, end, "the log start stored by DeleteRecords is beyond the log end; records appended from the end will be served");
        store_log_start(&self.dir, end)?;
        self.deleted_below.store(end, Ordering::Release);
        self.watchers.wake();
        Ok(())
    }

    /// Re-aligns the next offset to the log end (after recovery).
    pub(crate) fn reset_next_offset(&self) {
        let end = self.log_end_offset();
        self.next_offset.store(end, Ordering::Release);
        self.set_high_watermark(end);
    }

    /// Appends whole batches whose offsets are already assigned, rolling to a new
    /// segment when the active one is full. Returns the new log end offset.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn append(&self, data: &[u8], infos: &[BatchInfo]) -> Result<i64> {
        let (end, rolled) = self.append_locked(data, infos)?;
        if let Some(base) = rolled {
            self.snapshot_producers(base);
        }
        Ok(end)
    }

    /// [`Partition::append`] under the log lock: the new log end offset, and
    /// the base of the segment it rolled to, if it did.
    fn append_locked(&self, data: &[u8], infos: &[BatchInfo]) -> Result<(i64, Option<i64>)> {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        #[cfg(test)]
        if self.fail_next_append.swap(false, Ordering::Relaxed) {
            return Err(Error::io(
                "write",
                &self.dir,
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        let limit = self.segment_bytes.load(Ordering::Relaxed);
        let max_age = i64::try_from(self.segment_ms.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let appending = infos.iter().map(|i| i.max_timestamp).max().unwrap_or(-1);
        let base = infos.first().map_or(0, |i| i.base_offset);
        // A batch that does not continue the active segment (after a tolerated
        // offset gap) starts a new one: each segment holds contiguous offsets,
        // which is how the scan at start-up tells a damaged base offset.
        // Nor may a segment hold a batch whose offset its index cannot
        // address relative to its base (4 bytes), as Kafka rolls then.
        let last_base = infos.last().map_or(base, |i| i.base_offset);
        let needs_roll = log.last().is_none_or(|s| {
            s.next_offset() != base
                || (s.size() > 0
                    && (s.size() + data.len() as u64 > limit
                        || s.age_for_roll(appending, segment::now_ms) > max_age
                        || last_base - s.base_offset() > i64::from(u32::MAX)))
        });
        if needs_roll {
            // The finished segment becomes durable before its successor exists
            // (synced here even when a checkpoint's sync of it is in flight);
            // after a failed sync no later one proves that.
            self.check_sync_failed()?;
            if let Some(s) = log.last_mut() {
                if let Err(e) = s.sync_now() {
                    self.sync_failed.get_or_init(|| e.to_string());
                    return Err(e);
                }
                // Closed for good: its newest timestamp is saved (synced, its
                // directory entry with the successor's below), so a start
                // need not read its batch headers.
                save_time_index(&self.topic, self.index, s);
                // Synced: its files close; reads open its log on demand.
                s.seal(&self.open_files);
            }
            let seg = self.create_rolled(base)?;
            tracing::debug!(topic = %self.topic, partition = self.index, base, "rolled segment");
            log.push(seg);
            self.note_first_segment(&log);
        }
        let seg = log
            .last_mut()
            .ok_or_else(|| Error::corrupt(&self.dir, 0, "partition has no segment"))?;
        let appended = seg.append(data, infos);
        // A roll's snapshot is written even when the append then failed: the
        // new segment is there.
        let rolled = needs_roll.then_some(base);
        match appended {
            Ok(()) => {
                self.appended
                    .fetch_add(data.len() as u64, Ordering::Release);
                Ok((seg.next_offset(), rolled))
            }
            Err(e) => {
                drop(log);
                if let Some(base) = rolled {
                    self.snapshot_producers(base);
                }
                Err(e)
            }
        }
    }

    /// Creates the segment an append rolls to at `base`, its directory entry
    /// synced. Short of file descriptors (EMFILE, ENFILE), a passing shortage
    /// (reads in flight keep the sealed logs they opened, beyond the cache's
    /// bound, until they end), it closes the cache's handles and tries again,
    /// waiting a little longer each time ([`crate::wal::files::FD_RETRY_WAITS_MS`]), before it
    /// fails, and storage with it.
    ///
    /// # Errors
    /// I/O errors naming the file or directory, the shortage's after the
    /// last try.
    fn create_rolled(&self, base: i64) -> Result<Segment> {
        self.short_of_fds_retry(base, "a segment roll", || self.create_segment(base))
    }

    /// One try of [`Partition::create_rolled`].
    fn create_segment(&self, base: i64) -> Result<Segment> {
        #[cfg(test)]
        injected_emfile(
            &self.fail_roll_creates,
            &self.dir.join(segment::log_name(base)),
        )?;
        let seg = Segment::create(&self.dir, base)?;
        sync_dir(&self.dir)?;
        Ok(seg)
    }

    /// Deletes the oldest segments past retention (Kafka's `retention.ms` /
    /// `retention.bytes`): those whose newest record is older than `retention_ms`
    /// before `now_ms`, those whose removal leaves the partition at least
    /// `retention_bytes`, and those wholly below the log start offset (a
    /// DeleteRecords interrupted by a crash). See `Partition::trim`. Returns the
    /// segments and bytes deleted.
    ///
    /// # Errors
    /// I/O errors naming the file; the segments are gone from the partition by then,
    /// and a file left behind is deleted again by the next pass (or the next
    /// start's, after a restart).
    pub fn apply_retention(
        &self,
        now_ms: i64,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    ) -> Result<(usize, u64)> {
        let Some(files) = self.files_guard() else {
            return Ok((0, 0));
        };
        let floor = self.deleted_below.load(Ordering::Acquire);
        let older = |t: i64| {
            retention_ms
                .is_some_and(|r| now_ms.saturating_sub(t) > i64::try_from(r).unwrap_or(i64::MAX))
        };
        if retention_ms.is_some() {
            // A segment opened from its index without a time index that
            // holds knows only its last batch's timestamp, and an earlier
            // batch may be newer: the newest of all is found before the
            // segment can expire by time.
            self.settle_max_timestamps(&files, |s| {
                s.max_timestamp() < 0 || older(s.max_timestamp())
            });
        }
        self.trim("past retention", |s, total| {
            // Records without timestamps (-1), and an empty segment, are
            // judged by the file's last write, as Kafka judges a segment
            // without timestamps (`largestTimestamp` falls back to the file's
            // `lastModified`); one whose newest timestamp is not known (opened
            // from its index since the pass above) not by age.
            let newest = if !s.max_timestamp_is_exact() {
                None
            } else if s.max_timestamp() >= 0 {
                Some(s.max_timestamp())
            } else {
                s.modified_ms()
            };
            let too_old = newest.is_some_and(older);
            let too_big = retention_bytes.is_some_and(|r| total - s.size() >= r);
            too_old || too_big || s.next_offset() <= floor
        })
    }

    /// Finds the newest timestamp of all the batches of each closed segment
    /// opened from its index (which gives only its last batch's) that `wanted`
    /// picks, reading their batch headers outside the partition lock, so that
    /// appends go on meanwhile. A segment whose headers cannot be read is
    /// logged and left unknown, for the next pass to try again. A segment removed or replaced meanwhile
    /// (retention or DeleteRecords on another thread, a compaction's copy put
    /// in its place) is left alone, and a read that failed because it went is
    /// no storage error: nothing is logged for it. What is learned is saved
    /// in each segment's time index (see [`Partition::save_time_indexes`]),
    /// so that the next start need not read the headers again; `files` is
    /// the caller's [`Partition::files_guard`].
    fn settle_max_timestamps(
        &self,
        files: &RwLockReadGuard<'_, ()>,
        wanted: impl Fn(&Segment) -> bool,
    ) {
        let jobs: Vec<segment::MaxTimestampJob> = {
            let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            log[..log.len().saturating_sub(1)]
                .iter()
                .filter(|s| !s.max_timestamp_is_exact() && wanted(s))
                .filter_map(Segment::max_timestamp_job)
                .collect()
        };
        if jobs.is_empty() {
            return;
        }
        #[cfg(test)]
        if let Some(between) = BETWEEN_JOBS_AND_READS.with(|b| b.borrow_mut().take()) {
            between();
        }
        let found: Vec<_> = jobs
            .iter()
            .map(|job| (job.base_offset, job.size, job.run()))
            .collect();
        let mut saves = Vec::new();
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        for (base, size, ts) in found {
            // Gone or replaced meanwhile (retention, compaction: a copy put
            // in place knows its newest timestamp): nothing to do, and a
            // failed read of it failed because its file went.
            let Some(s) = segments_at(&mut log, base)
                .find(|s| s.size() == size && !s.max_timestamp_is_exact())
            else {
                if let Err(e) = ts {
                    tracing::debug!(topic = %self.topic, partition = self.index, base, error = %e, "a segment went while its batch headers were read");
                }
                continue;
            };
            match ts {
                Ok((ts, holder)) => {
                    s.set_max_timestamp(ts, Some(holder));
                    saves.extend(s.time_index_job());
                }
                // Its last batch's timestamp is only a lower bound: taken as the
                // newest, records still inside retention would go with it.
                Err(e) => {
                    tracing::warn!(topic = %self.topic, partition = self.index, base, error = %e, "could not read the segment's batch headers; its newest timestamp stays unknown, and it and the segments after it are not deleted by time until a later pass reads them");
                }
            }
        }
        drop(log);
        self.save_time_indexes(files, saves);
    }

    /// Saves the time indexes `jobs` describe (segments whose newest timestamp
    /// was just learned by reading their batch headers), the caller holding
    /// [`Partition::files_guard`] (or [`Partition::try_files_guard`]), so that
    /// no topic delete moves the directory meanwhile. Each is written and
    /// `fdatasync`ed under a temporary name outside the partition lock, so
    /// appends go on, then renamed into place under the lock only if its
    /// segment is still there as it was: one that retention or DeleteRecords
    /// removed, or a compaction replaced, meanwhile gets none (its removal of
    /// the segment's files, made after the segment left the log under the
    /// lock, or the compaction's swap, made under the lock, comes after any
    /// rename), and nor does any segment once a swap failed part way (the
    /// files no longer match the segments in memory). The directory is then
    /// fsynced. A failure is logged, never an error: the segment only has its
    /// headers read again at the next start.
    fn save_time_indexes(
        &self,
        _files: &RwLockReadGuard<'_, ()>,
        jobs: Vec<segment::TimeIndexJob>,
    ) {
        let written: Vec<segment::TimeIndexJob> = jobs
            .into_iter()
            .filter(|job| match job.write() {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, partition = self.index, base = job.base_offset, error = %e, "could not save the segment's time index; its batch headers are read at the next start when its newest timestamp is needed");
                    false
                }
            })
            .collect();
        if written.is_empty() {
            return;
        }
        #[cfg(test)]
        if let Some(between) = BETWEEN_WRITE_AND_INSTALL.with(|b| b.borrow_mut().take()) {
            between();
        }
        let mut installed = 0;
        let mut discarded = Vec::new();
        {
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            let files_match = !self.is_deleted() && self.swap_unloaded.get().is_none();
            for job in written {
                let done = match segments_at(&mut log, job.base_offset).next() {
                    Some(s) if files_match => s.install_time_index(&job),
                    _ => Ok(false),
                };
                match done {
                    Ok(true) => installed += 1,
                    Ok(false) => discarded.push(job),
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, partition = self.index, base = job.base_offset, error = %e, "could not save the segment's time index; its batch headers are read at the next start when its newest timestamp is needed");
                        discarded.push(job);
                    }
                }
            }
        }
        for job in &discarded {
            job.discard();
        }
        if installed > 0 {
            if let Err(e) = sync_dir(&self.dir) {
                tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "could not sync the directory after saving time indexes; a crash may lose them, and their segments' batch headers are then read again");
            }
        }
    }

    /// Deletes the oldest segments while `deletable(segment, bytes held)` says so,
    /// the caller holding [`Partition::files_guard`],
    /// from the oldest forward, stopping at the first one kept. An empty closed
    /// segment (an offset gap rolled the active segment before anything was
    /// appended to it) holds no record to keep: it never stops the deletion of
    /// the segments after it, going with them when `deletable` does not judge
    /// it deletable by itself. The active segment
    /// goes too once it qualifies and every batch in it is below the high
    /// watermark (readable, so durable): a new empty segment at the log end takes
    /// its place first, as Kafka rolls before it deletes every segment, so an idle
    /// partition does not keep expired records forever. Segments an earlier
    /// trim took out of the log but could not remove go first. Returns the
    /// segments and bytes deleted.
    ///
    /// # Errors
    /// I/O errors naming the path. Segments already out of the log whose
    /// files could not be removed are kept for the next trim.
    fn trim(
        &self,
        why: &str,
        mut deletable: impl FnMut(&Segment, u64) -> bool,
    ) -> Result<(usize, u64)> {
        let mut rolled = None;
        let (removed, kept_from): (Vec<Segment>, i64) = {
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            let mut total: u64 = log.iter().map(Segment::size).sum();
            let hw = self.high_watermark();
            // The segments to delete are `..n`; `..i` have been judged.
            let (mut n, mut i) = (0, 0);
            while i < log.len() {
                let s = &log[i];
                let active = i + 1 == log.len();
                if active && (s.size() == 0 || hw < s.next_offset()) {
                    break;
                }
                i += 1;
                if deletable(s, total) {
                    total -= s.size();
                    n = i;
                } else if active || s.size() > 0 {
                    break;
                }
            }
            if n > 0 && n == log.len() {
                // The active segment leaves the log before its files go, and a
                // checkpoint meanwhile counts its records as durable (they are
                // below the new segment): its data is made durable first, as at
                // a roll. Otherwise a power loss before the unlink is durable
                // brings it back torn below the recovery point, which a strict
                // start refuses. After a failed sync no later one proves it
                // durable: it stays, and the closed segments before it go.
                let synced = self.check_sync_failed().and_then(|()| {
                    log[n - 1].sync_now().inspect_err(|e| {
                        self.sync_failed.get_or_init(|| e.to_string());
                    })
                });
                if let Err(e) = synced {
                    tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "keeping the active segment {why}: a sync of the partition failed");
                    n -= 1;
                }
            }
            if n > 0 && n == log.len() {
                // Appends continue in the new segment; it is durable (its
                // directory entry too) before the old ones are removed, so a crash
                // in between leaves the old files for the next pass.
                let end = log[n - 1].next_offset();
                let seg = Segment::create(&self.dir, end)?;
                if let Err(e) = sync_dir(&self.dir) {
                    // Appends go on in the old active segment, past `end`: an
                    // empty segment left there would stop the next open.
                    if let Err(e) = seg.remove_files() {
                        tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "could not remove the segment a failed retention roll made");
                    }
                    return Err(e);
                }
                tracing::debug!(topic = %self.topic, partition = self.index, base = end, "rolled segment to delete the active one");
                log.push(seg);
                rolled = Some(end);
            }
            if n > 0 {
                self.segments_replaced.fetch_add(1, Ordering::SeqCst);
            }
            let removed = log.drain(..n).collect();
            self.note_first_segment(&log);
            (removed, log.first().map_or(0, Segment::base_offset))
        };
        if let Some(end) = rolled {
            self.snapshot_producers(end);
        }
        let mut removed = {
            let mut unremoved = self
                .unremoved
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !unremoved.is_empty() {
                tracing::info!(topic = %self.topic, partition = self.index, segments = unremoved.len(), "removing again the files of segments an earlier pass could not remove");
            }
            let mut all = std::mem::take(&mut *unremoved);
            all.extend(removed);
            all
        };
        if removed.is_empty() {
            return Ok((0, 0));
        }
        let keep_for_next = |rest: Vec<Segment>| {
            self.unremoved
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(rest);
        };
        // The snapshots of the segments kept (a retention roll's among them)
        // are durable before the removed segments go with theirs: those may
        // be the only durable record of the producers, and a power loss
        // empties a snapshot that was renamed into place but not fsynced.
        // And one must exist: a power loss took the newest segment's, or a
        // kill -9 came between its roll and its snapshot's rename, and no
        // roll may follow (as for a compaction merge, `install_group`).
        // Without that, the removed segments' files are left for the next
        // pass.
        self.ensure_snapshot_from(kept_from);
        if let Err(e) = self.sync_snapshots_from(kept_from) {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "could not make the producer snapshots durable; the files of the segments {why} are left for the next pass");
            keep_for_next(removed);
            return Err(e);
        }
        if !self.durable_snapshot_from(kept_from) {
            tracing::warn!(topic = %self.topic, partition = self.index, "no durable producer snapshot of the segments kept yet; the files of the segments {why} are left for the next pass");
            keep_for_next(removed);
            return Ok((0, 0));
        }
        #[cfg(test)]
        if let Some(before) = BEFORE_TRIM_REMOVES.with(|b| b.borrow_mut().take()) {
            before();
        }
        let bytes = removed.iter().map(Segment::size).sum();
        for i in 0..removed.len() {
            if let Err(e) = removed[i].remove_files() {
                tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "could not remove the files of a segment {why}; they are removed by the next pass");
                let rest = removed.split_off(i);
                self.forget_snapshots_of(&removed);
                keep_for_next(rest);
                return Err(e);
            }
        }
        self.forget_snapshots_of(&removed);
        sync_dir(&self.dir)?;
        tracing::info!(
            topic = %self.topic,
            partition = self.index,
            segments = removed.len(),
            bytes,
            log_start = self.log_start_offset(),
            "deleted segments {why}"
        );
        Ok((removed.len(), bytes))
    }

    /// One log compaction pass (see [`super::compaction`]): copies each cleanable
    /// segment keeping only its keys' newest records and puts the copy in its
    /// place, stopping between two batches once `stop` is set or the topic is
    /// deleted. Returns what it did.
    ///
    /// # Errors
    /// I/O errors naming the file, or a segment that no longer validates; segments
    /// already replaced stay replaced, the rest are left as they were.
    pub fn compact(&self, policy: &CompactionPolicy, stop: &AtomicBool) -> Result<CompactionStats> {
        self.compact_while(policy, &|| stop.load(Ordering::Acquire))
    }

    /// [`Partition::compact`], stopping once `halt` says so (asked before each
    /// batch): the broker shuts down, or the topic's configs changed since
    /// `policy` was read from them.
    ///
    /// # Errors
    /// As [`Partition::compact`].
    pub fn compact_while(
        &self,
        policy: &CompactionPolicy,
        halt: &dyn Fn() -> bool,
    ) -> Result<CompactionStats> {
        let mut history = self
            .compacting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.uncleanable.get().is_some() {
            return Ok(CompactionStats::default());
        }
        // A deleted topic's directory may be renamed away, and its name taken by
        // a new topic, whose files must never be touched.
        let Some(files) = self.files_guard() else {
            return Ok(CompactionStats::default());
        };
        let hw = self.high_watermark();
        let lag = i64::try_from(policy.min_compaction_lag_ms).unwrap_or(i64::MAX);
        let horizon = policy.now_ms.saturating_sub(lag);
        if lag > 0 {
            // As for retention: a segment opened from its index may hold a
            // batch newer than its last.
            self.settle_max_timestamps(&files, |s| {
                s.next_offset() <= hw && s.max_timestamp() <= horizon
            });
        }
        let sources: Vec<Source> = {
            let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            log[..log.len().saturating_sub(1)]
                .iter()
                .take_while(|s| {
                    // A segment without timestamps (-1) by its file's last
                    // write, as Kafka's `largestTimestamp` falls back to the
                    // file's `lastModified`.
                    let newest = || match s.max_timestamp() {
                        t if t >= 0 => Some(t),
                        _ => s.modified_ms(),
                    };
                    s.next_offset() <= hw
                        && !s.is_dirty()
                        && (lag == 0
                            || (s.max_timestamp_is_exact()
                                && newest().is_some_and(|t| t <= horizon)))
                })
                .map(Source::of)
                .collect()
        };
        let total: u64 = sources.iter().map(|s| s.size).sum();
        let cleaned = self.cleaned_through.load(Ordering::Acquire);
        let dirty: u64 = sources
            .iter()
            .filter(|s| s.next > cleaned)
            .map(|s| s.size)
            .sum();
        // A tombstone kept until its delete horizon is removed by a pass once
        // that has passed, however few bytes are new (Kafka's cleaner waits
        // for enough new bytes, so a quiet topic could keep it for ever).
        let tombstones_due = self.tombstones_due_ms.load(Ordering::Acquire) <= policy.now_ms;
        #[allow(clippy::cast_precision_loss)] // a ratio of byte counts
        let dirty_enough =
            dirty > 0 && (dirty as f64) >= policy.min_cleanable_dirty_ratio * total as f64;
        if !tombstones_due && !dirty_enough {
            return Ok(CompactionStats::default());
        }
        // A pass run only for a tombstone come due maps no new key: mapping
        // would cover new tombstones, each due `delete.retention.ms` after
        // this pass, so that such passes, each reading every cleanable
        // segment, would follow one another whatever the dirty ratio.
        let from = PassFrom {
            cleaned,
            map_new: dirty_enough,
        };
        match self.compact_sources(&sources, from, hw, policy, halt, &mut history) {
            // Retention removed a segment the pass was to read (a topic may be
            // both compacted and deleted): the next pass starts over.
            Err(e) if segment::is_gone(&e) => {
                tracing::info!(topic = %self.topic, partition = self.index, error = %e, "a segment went while the compaction pass read it; the next pass starts over");
                Ok(CompactionStats::default())
            }
            Err(e @ Error::Corrupt { .. }) => {
                tracing::error!(topic = %self.topic, partition = self.index, error = %e, "compaction met damaged data (a segment or compacted.json): the partition is not compacted again until a restart");
                let _ = self.uncleanable.set(e.to_string());
                Err(e)
            }
            done => done,
        }
    }

    /// Makes the next compaction pass judge the tombstones the last one kept
    /// for their delete horizon, however few bytes are new: the topic's
    /// `delete.retention.ms` changed, and a lowered one may let them go
    /// before the time the last pass found.
    pub fn recheck_waiting_tombstones(&self) {
        // SeqCst, as the pass's store of the due time and the count of
        // changes each side reads after its own write (see checkpoint::compact).
        let _ = self
            .tombstones_due_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |due| {
                (due != i64::MAX).then_some(i64::MIN)
            });
    }

    /// When a tombstone the last pass kept may go (see
    /// [`Partition::recheck_waiting_tombstones`]).
    #[cfg(test)]
    pub(crate) fn tombstones_due_ms(&self) -> &AtomicI64 {
        &self.tombstones_due_ms
    }

    /// Why compaction stopped for this partition until a restart (a damaged
    /// segment), if it did.
    pub fn uncleanable(&self) -> Option<&str> {
        self.uncleanable.get().map(String::as_str)
    }

    /// The rest of [`Partition::compact`] once it has its `sources` and knows
    /// the pass is worth it.
    fn compact_sources(
        &self,
        sources: &[Source],
        from: PassFrom,
        hw: i64,
        policy: &CompactionPolicy,
        stop: &dyn Fn() -> bool,
        history: &mut delete_horizon::History,
    ) -> Result<CompactionStats> {
        let started = std::time::Instant::now();
        let PassFrom { cleaned, map_new } = from;
        // As Kafka's cleaner: the map covers the segments from the first not
        // covered by the last pass on, as far as it holds; the pass then
        // compacts every segment from the log start to the end of the map
        // against it (a key the map lacks has no newer record there).
        let first_dirty = sources.iter().position(|s| s.next > cleaned).unwrap_or(0);
        // A shutdown or a delete of the topic waits for the pass: it stops
        // between two batches of any step. Stopped before it copies, it
        // covers nothing, as a pass that did not run.
        let halt = || stop() || self.is_deleted();
        let (map, mapped) = if map_new {
            match compaction::build_map(sources, first_dirty, cleaned, policy.map_bytes, &halt) {
                Err(e) if compaction::is_stopped(&e) => return Ok(CompactionStats::default()),
                built => built?,
            }
        } else {
            // No key is mapped: the pass compacts the segments the last ones
            // covered (any part of) again, for their due tombstones alone.
            let covered = sources.iter().take_while(|s| s.base < cleaned).count();
            (compaction::KeyMap::ending_at(cleaned), covered)
        };
        let sources = &sources[..mapped];
        // The producers the partition remembers, as the pass starts: an
        // idempotent producer's batch from which every record goes stays
        // empty while it holds the producer's last sequence.
        let mut producers = compaction::Producers::new(self.producers().newest_below(hw));
        // A tombstone goes once a pass covered it `delete.retention.ms` ago
        // (its delete horizon), and each segment's plan knows the first batch
        // before it that may hold an older value of some key (no tombstone
        // after one may go).
        let changed = history.mature(policy.now_ms, policy.delete_retention_ms);
        let removable = history.removable(policy.now_ms, policy.delete_retention_ms);
        let mut plans = Vec::with_capacity(sources.len());
        let mut tombstones_for = Vec::with_capacity(sources.len());
        let mut first_unsafe = None;
        for src in sources {
            let tombstones = compaction::Tombstones {
                removable: &removable,
                first_unsafe,
            };
            let plan = match compaction::plan_segment(src, &map, tombstones, &mut producers, &halt)
            {
                Err(e) if compaction::is_stopped(&e) => return Ok(CompactionStats::default()),
                planned => planned?,
            };
            tombstones_for.push(tombstones);
            first_unsafe = plan.first_unsafe;
            plans.push(plan);
        }
        let mut stats = CompactionStats::default();
        let mut covered = map.end;
        let mut i = 0;
        while i < sources.len() {
            if halt() {
                covered = sources[i].base;
                break;
            }
            // A group: consecutive segments whose copies fit in one segment,
            // as planned. Merged segments must continue each other: a segment
            // after an offset gap starts a group of its own (a segment holds
            // contiguous offsets, which the start-up scan checks).
            // The copy is written beside the segments it replaces: a group
            // takes no more segments than the file system has room for (with
            // some to spare, see `copy_fits`), so that a copy never fills the
            // disk produces write to (a produce that meets a full disk fails
            // storage for every partition until a restart).
            let free = super::space_reserve::free_bytes(&self.dir);
            let (mut j, mut bytes, mut frees) = (i + 1, plans[i].kept_bytes, sources[i].size);
            while j < sources.len()
                && sources[j].base == sources[j - 1].next
                && bytes + plans[j].kept_bytes <= policy.segment_bytes
                && sources[j].next - sources[i].base <= i64::from(u32::MAX)
                && copy_fits(
                    bytes + plans[j].kept_bytes,
                    frees.saturating_add(sources[j].size),
                    free,
                )
            {
                bytes += plans[j].kept_bytes;
                frees = frees.saturating_add(sources[j].size);
                j += 1;
            }
            if j == i + 1 && !plans[i].changes() {
                i = j;
                continue;
            }
            // Without room for even one segment's copy the pass stops here,
            // as between groups, and the next pass tries again.
            if let Some(free) = free.filter(|&f| !copy_fits(bytes, frees, Some(f))) {
                crate::log_limit::limited!(warn, topic = %self.topic, partition = self.index, free, copy = bytes, "compaction waits for free disk space: the copy of its next segment, and the room kept beside it, do not fit");
                covered = sources[i].base;
                break;
            }
            let copy = match compaction::write_group(
                &self.dir,
                &sources[i..j],
                &map,
                policy,
                tombstones_for[i],
                &mut producers,
                &halt,
            ) {
                // The copy is removed; the pass covers nothing from the group
                // on, as when it stops between groups.
                Err(e) if compaction::is_stopped(&e) => {
                    covered = sources[i].base;
                    break;
                }
                copy => copy?,
            };
            // The copy may end before the planned group does (it would have
            // grown past `segment.bytes`): the rest starts the next group.
            let group = &sources[i..i + copy.segments];
            if group.len() == 1 && !plans[i].changes() {
                CleanedWriter::discard(&self.dir, group[0].base);
                i += 1;
                continue;
            }
            #[cfg(test)]
            if let Some(between) = BETWEEN_COPY_AND_SWAP.with(|b| b.borrow_mut().take()) {
                between();
            }
            if !self.install_group(group, copy.max_timestamp)? {
                // A segment of the group went meanwhile (retention or
                // DeleteRecords): the others stay as they were, older values
                // included, so the pass covers nothing from the group on. Were
                // the tombstones after it counted as covered, a later pass,
                // which maps only what follows, would remove them once
                // `delete.retention.ms` old while those values stayed.
                covered = sources[i].base;
                break;
            }
            i += group.len();
            stats.segments += group.len();
            stats.bytes_before += group.iter().map(|s| s.size).sum::<u64>();
            stats.bytes_after += copy.size;
            stats.records_removed += copy.removed;
        }
        self.cleaned_through.store(covered, Ordering::Release);
        let recorded = history.record(policy.now_ms, covered, policy.delete_retention_ms);
        if changed || recorded {
            // Not stored: the file may say less than memory, which only keeps
            // tombstones longer after a restart.
            if let Err(e) = history.store(&self.dir) {
                tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "could not store the compaction pass history; after a restart tombstones may stay longer");
            }
        }
        let waiting = plans.iter().find_map(|p| p.first_waiting_tombstone);
        let due = waiting.and_then(|o| history.due_ms(o, policy.delete_retention_ms));
        self.tombstones_due_ms
            .store(due.unwrap_or(i64::MAX), Ordering::SeqCst);
        if stats.segments > 0 {
            tracing::info!(
                topic = %self.topic,
                partition = self.index,
                segments = stats.segments,
                bytes_before = stats.bytes_before,
                bytes_after = stats.bytes_after,
                records_removed = stats.records_removed,
                bytes_read = sources.iter().map(|s| s.size).sum::<u64>(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "compacted"
            );
        }
        Ok(stats)
    }

    /// Puts the compacted copy of `group` (written by
    /// [`compaction::write_group`]) in place of its segments, if they are all
    /// still there, unchanged and closed (retention or DeleteRecords may have
    /// deleted some meanwhile); otherwise removes the copy. `max_timestamp` is
    /// the newest timestamp of all the copy's batches, which time retention
    /// judges it by (its index gives only the last batch's). Returns whether
    /// it was installed.
    fn install_group(&self, group: &[Source], max_timestamp: i64) -> Result<bool> {
        let base = group[0].base;
        // The swap removes the merged segments' producer snapshots, the
        // newest durable one among them maybe: the later snapshots (of the
        // segments after the group, which start at or after the group's end)
        // are durable first, or a power loss leaves no snapshot knowing the
        // producers. Without that the group stays as it is.
        if group.len() > 1 {
            let after = group[group.len() - 1].next;
            self.ensure_snapshot_from(after);
            if let Err(e) = self.sync_snapshots_from(after) {
                tracing::warn!(topic = %self.topic, partition = self.index, base, error = %e, "could not make the producer snapshots after a compacted group durable; the group is left as it is");
                CleanedWriter::discard(&self.dir, base);
                return Ok(false);
            }
            // And one of them must exist: the one written above may have
            // failed, or its fsync (both are tried again by the next pass).
            if !self.durable_snapshot_from(after) {
                tracing::info!(topic = %self.topic, partition = self.index, base, "no durable producer snapshot after a compacted group yet; the group is merged once there is one");
                CleanedWriter::discard(&self.dir, base);
                return Ok(false);
            }
        }
        // Before the partition's lock, which the apply thread waits for (and
        // every produce after this partition's with it): the file's write
        // and fsyncs. Should the group then be gone, the file says more than
        // was done, which only keeps a start from rebuilding segments from
        // the WAL that were not compacted.
        let newest = self
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .map_or(base, Segment::base_offset);
        if let Err(e) = segment::note_compacted(&self.dir, base, newest) {
            CleanedWriter::discard(&self.dir, base);
            return Err(e);
        }
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let at = log
            .iter()
            .position(|s| s.base_offset() == base)
            .filter(|&i| {
                i + group.len() < log.len()
                    && group.iter().zip(&log[i..]).all(|(g, s)| {
                        s.base_offset() == g.base && s.next_offset() == g.next && s.size() == g.size
                    })
            });
        let Some(i) = at else {
            CleanedWriter::discard(&self.dir, base);
            return Ok(false);
        };
        let merged: Vec<i64> = group[1..].iter().map(|g| g.base).collect();
        // Counted before any file changes (a failed swap counts too).
        self.segments_replaced.fetch_add(1, Ordering::SeqCst);
        let swapped = self.install_swap(base, &merged);
        if let Err(e) = swapped {
            // Once the copy's log has left its `.cleaning` name the swap is
            // under way on disk (a restart finishes it): the group's segments
            // in memory may name files that are gone or replaced. Before, the
            // group is as it was and the copy goes at once (a failure here is
            // often a full disk, and retention may remove the group before a
            // pass writes the copy again, leaving it until a restart).
            if self.dir.join(segment::cleaning_names(base).0).exists() {
                CleanedWriter::discard(&self.dir, base);
            } else {
                let why = format!(
                    "the compacted copy of segments from offset {base} is being put in place but the swap failed ({e}); restart the broker to finish it"
                );
                tracing::error!(topic = %self.topic, partition = self.index, "{why}");
                let _ = self.swap_unloaded.set(why);
            }
            return Err(e);
        }
        // The copy is in place of the group on disk from here on: the group's
        // segments in memory name files that are gone or replaced.
        let loaded = self.short_of_fds_retry(base, "the load of a compacted copy", || {
            self.load_installed(base)
        });
        let mut seg = match loaded {
            Ok(seg) => seg,
            Err(e) => {
                let why = format!(
                    "the compacted copy of segments from offset {base} is in place but could not be loaded ({e}); restart the broker to load it"
                );
                tracing::error!(topic = %self.topic, partition = self.index, "{why}");
                let _ = self.swap_unloaded.set(why);
                return Err(e);
            }
        };
        // The copy's time index, written with it, gives its newest timestamp
        // (and the batch holding it); without one, the copy's writer did.
        if !seg.max_timestamp_is_exact() {
            seg.set_max_timestamp(max_timestamp, None);
        }
        debug_assert_eq!(seg.max_timestamp(), max_timestamp);
        seg.seal(&self.open_files);
        log.splice(i..i + group.len(), [seg]);
        self.note_first_segment(&log);
        drop(log);
        // The merged segments' snapshots went with them (the copy keeps the
        // first segment's): none may count as the newest durable one.
        {
            let mut snapshots = self
                .snapshots
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut unsynced = self
                .unsynced_snapshots
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for b in &merged {
                snapshots.remove(b);
                unsynced.forget(*b);
            }
        }
        Ok(true)
    }

    /// Puts the compacted copy at `base` in place of its group's segments
    /// (see [`segment::install_swap`]); when that fails short of file
    /// descriptors, it tries again as [`Partition::create_rolled`] does, from
    /// where the swap stopped ([`segment::resume_swap`] once the copy's log
    /// has left its `.cleaning` name).
    fn install_swap(&self, base: i64, merged: &[i64]) -> Result<()> {
        let mut first = true;
        self.short_of_fds_retry(base, "a compaction's swap", || {
            // Again from the start while the copy has its `.cleaning` name. A
            // stat that fails otherwise than NotFound is the error (taken for
            // absence, the resume would load the old segment as the copy).
            let from_start = std::mem::take(&mut first) || {
                let cleaning = self.dir.join(segment::cleaning_names(base).0);
                match std::fs::symlink_metadata(&cleaning) {
                    Ok(_) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                    Err(e) => return Err(Error::io("stat", &cleaning, e)),
                }
            };
            let done = if from_start {
                segment::install_swap(&self.dir, base, merged)
            } else {
                segment::resume_swap(&self.dir, base, merged)
            };
            #[cfg(test)]
            let done = done.and_then(|()| {
                injected_emfile(&self.fail_swap_syncs, &self.dir)?;
                if self.fail_swap_finish.swap(false, Ordering::Relaxed) {
                    return Err(Error::io(
                        "fsync",
                        &self.dir,
                        std::io::Error::from_raw_os_error(libc::EIO),
                    ));
                }
                Ok(())
            });
            done
        })
    }

    /// Runs `op` (`what`, for the segment at `base`), and again while it
    /// fails short of file descriptors, a passing shortage (see
    /// [`Partition::create_rolled`]): each time after closing the cache's
    /// read handles and waiting a little longer ([`crate::wal::files::FD_RETRY_WAITS_MS`]).
    ///
    /// # Errors
    /// `op`'s error: another than the shortage, or the shortage's after the
    /// last try.
    fn short_of_fds_retry<T>(
        &self,
        base: i64,
        what: &str,
        op: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        crate::wal::files::retry_while_short_of_fds(op, |e| {
            let closed = self.open_files.release();
            tracing::warn!(topic = %self.topic, partition = self.index, base, error = %e, closed, "{what} is short of file descriptors: closing the cached read handles and trying again");
        })
    }

    /// Opens the compacted copy [`segment::install_swap`] put in place at `base`.
    fn load_installed(&self, base: i64) -> Result<Segment> {
        #[cfg(test)]
        injected_emfile(&self.fail_swap_loads, &self.dir)?;
        Segment::open(&self.dir, base, false)
    }

    /// DeleteRecords: moves the log start offset up to `before` (`-1`: the high
    /// watermark), durably (`log-start-offset.json`, replaced atomically) before it
    /// returns, then deletes the segments wholly below it. Records below the new
    /// start are never served again; a batch that straddles it stays stored until
    /// its segment goes. Returns the new log start offset.
    ///
    /// # Errors
    /// [`DeleteRecordsError::OutOfRange`] for an offset above the high watermark
    /// (or below -1); [`DeleteRecordsError::Storage`] when the new start could not
    /// be made durable (the log start is then unchanged, or in force but not
    /// known to survive a power loss). Segments below the new start that
    /// cannot be deleted at once are no error: the next retention pass deletes
    /// them.
    pub fn delete_records(&self, before: i64) -> std::result::Result<i64, DeleteRecordsError> {
        self.delete_records_with(before, None)
    }

    /// [`Partition::delete_records`], giving back `reserve` (the broker's space
    /// reserve) when its writes fail for want of space, and running them
    /// again: the new start's file, and the producer snapshot the removal of
    /// the segments below it writes first (see
    /// [`super::space_reserve::SpaceReserve::retry`]). On a disk something
    /// else filled, a DeleteRecords run to free space was otherwise refused.
    pub(crate) fn delete_records_with(
        &self,
        before: i64,
        reserve: Option<&super::space_reserve::SpaceReserve>,
    ) -> std::result::Result<i64, DeleteRecordsError> {
        let with_reserve = |write: &mut dyn FnMut() -> Result<Option<Error>>| match reserve {
            Some(r) => r.retry(write),
            None => write(),
        };
        let mut undurable = self.deleting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = self.swap_unloaded.get() {
            return Err(DeleteRecordsError::Storage(why.clone()));
        }
        let _files = self.files_guard().ok_or(DeleteRecordsError::Deleted)?;
        let hw = self.high_watermark();
        let target = if before == -1 { hw } else { before };
        if target < 0 || target > hw {
            return Err(DeleteRecordsError::OutOfRange {
                offset: before,
                high_watermark: hw,
            });
        }
        if target > self.log_start_offset() {
            // Once the file is renamed into place it holds the new start, which
            // the next open serves: so does the broker from now on, also when
            // the directory fsync after the rename failed.
            let not_durable = with_reserve(&mut || store_log_start_renamed(&self.dir, target))
                .map_err(|e| DeleteRecordsError::Storage(e.to_string()))?;
            *undurable = not_durable.is_some();
            self.deleted_below.store(target, Ordering::Release);
            // A Fetch waiting at an offset below the new start answers now,
            // OFFSET_OUT_OF_RANGE, as Kafka completes such a delayed fetch.
            self.watchers.wake();
            tracing::info!(topic = %self.topic, partition = self.index, log_start = target, "deleted records");
            // The deletion is in force whatever becomes of the files below
            // it, as Kafka deletes them apart from the request: those a
            // failure leaves are deleted by the next retention pass (see
            // `trim` and `apply_retention`'s floor).
            let trimmed = with_reserve(&mut || {
                self.trim("below the log start", |s, _| s.next_offset() <= target)
                    .map(|_| None)
            });
            if let Err(e) = trimmed {
                tracing::warn!(topic = %self.topic, partition = self.index, log_start = target, error = %e, "records deleted, but segments below the new log start could not be deleted yet; the next retention pass deletes them");
            }
            if let Some(e) = not_durable {
                tracing::error!(topic = %self.topic, partition = self.index, log_start = target, error = %e, "records deleted, but the new log start may not survive a power loss");
                return Err(DeleteRecordsError::Storage(format!(
                    "the deletion is in force but may not survive a power loss: {e}"
                )));
            }
        } else if *undurable {
            // A retry of a deletion answered as not durable: the start is in
            // force, and nothing changes in memory, but the answer must hold
            // after a power loss too. The file is stored again (its rename
            // and directory fsync make it durable).
            let start = self.deleted_below.load(Ordering::Acquire);
            let not_durable = with_reserve(&mut || store_log_start_renamed(&self.dir, start))
                .map_err(|e| DeleteRecordsError::Storage(e.to_string()))?;
            if let Some(e) = not_durable {
                return Err(DeleteRecordsError::Storage(format!(
                    "the deletion is in force but may not survive a power loss: {e}"
                )));
            }
            *undurable = false;
        }
        Ok(self.log_start_offset())
    }

    /// Whether a segment changed since its last sync.
    #[cfg(test)]
    pub(crate) fn unsynced(&self) -> bool {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(Segment::is_dirty)
    }

    /// [`Partition::check_sync_failed`], taking `log`.
    fn check_sync_failed_locked(&self) -> Result<()> {
        let _log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        self.check_sync_failed()
    }

    /// Fails once a sync of the partition's segments has failed (the caller
    /// holds `log`, under which that is recorded).
    fn check_sync_failed(&self) -> Result<()> {
        match self.sync_failed.get() {
            None => Ok(()),
            Some(first) => Err(Error::io(
                "fdatasync",
                &self.dir,
                std::io::Error::other(format!(
                    "an earlier sync of the partition's segments failed ({first}); \
                     what it covered may not be on the disk"
                )),
            )),
        }
    }

    /// `fdatasync`s every segment changed since the last sync. Once a sync of
    /// the partition's segments has failed (here, or before a roll), this fails
    /// too, until the partition is opened again.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn sync(&self) -> Result<()> {
        // Taking a job marks its segment clean: another sync running meanwhile
        // must not find it clean and return before the job is done.
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(PoisonError::into_inner);
        // Collect under the lock, fsync outside it: appends and reads go on meanwhile.
        let jobs: Vec<_> = {
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            self.check_sync_failed()?;
            log.iter_mut().filter_map(Segment::take_sync).collect()
        };
        #[cfg(test)]
        if let Some(between) = BETWEEN_TAKE_AND_SYNC.with(|b| b.borrow_mut().take()) {
            between();
        }
        for (i, job) in jobs.iter().enumerate() {
            if let Err(e) = job.run() {
                let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
                for failed in &jobs[i..] {
                    if let Some(s) = log
                        .iter_mut()
                        .find(|s| s.base_offset() == failed.base_offset)
                    {
                        s.mark_dirty();
                    }
                }
                self.sync_failed.get_or_init(|| e.to_string());
                return Err(e);
            }
        }
        // A roll's sync of the same file running meanwhile (under the lock) may
        // have been the one told of a failure that these syncs' data met.
        self.check_sync_failed_locked()?;
        // Best effort, as the snapshots themselves: a start-up copes without
        // them, and one not fsynced keeps the older durable one from being
        // dropped (see `drop_snapshots_below`).
        if let Err(e) = self.sync_snapshots_from(i64::MIN) {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "could not fsync a producer snapshot; the older snapshots are kept until it is");
        }
        Ok(())
    }

    /// Writes the newest segment's producer snapshot when no snapshot at or
    /// above `from` is on disk or being written, and the newest segment
    /// starts at or above `from`. A compaction merge needs one after its
    /// group (see [`Partition::install_group`]), a trim one of the segments
    /// it keeps, and none may come by itself:
    /// a power loss took the newest segment's, or a kill -9 came between its
    /// roll and its snapshot's rename, and no roll follows while producers
    /// are idle. Best effort, as a roll's; the sync that follows counts it.
    fn ensure_snapshot_from(&self, from: i64) {
        // A roll's write of the same base finishes first (its segment was
        // in the log before its write began, so one seen missing here is
        // written below and by that roll again: the same snapshot).
        let _one_at_a_time = self
            .writing_snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .range(from..)
            .next()
            .is_some()
        {
            return;
        }
        let newest = self
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .map(Segment::base_offset);
        if let Some(base) = newest.filter(|&b| b >= from) {
            tracing::info!(topic = %self.topic, partition = self.index, base, "writing the newest segment's missing producer snapshot");
            self.snapshot_producers_locked(base);
        }
    }

    /// Whether a producer snapshot at or above `from` is on disk and known
    /// durable. (A snapshot enters `snapshots` after its write's last mark
    /// as waiting for an fsync: one found there and not waiting was fsynced
    /// after it was in place.)
    fn durable_snapshot_from(&self, from: i64) -> bool {
        let snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let unsynced = self
            .unsynced_snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        snapshots.range(from..).any(|&b| !unsynced.contains(b))
    }

    /// Makes the producer snapshots at or above `from` that wait for their
    /// fsync durable: each file fsynced, then the directory (their renames).
    /// Only the writes it made durable leave
    /// [`Partition::unsynced_snapshots`]: a snapshot written again since it
    /// looked (see [`UnsyncedSnapshots`]) stays. One it finds missing leaves
    /// too, when not written since: removed meanwhile (retention), or its
    /// write failed before the rename; one still being written is renamed
    /// into place and added again after this looked.
    ///
    /// # Errors
    /// The first failed fsync, naming the file or the directory.
    fn sync_snapshots_from(&self, from: i64) -> Result<()> {
        let _one_at_a_time = self
            .syncing_snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut failed = self.rewrite_failed_snapshots(from);
        let pending: Vec<(i64, u64)> = self
            .unsynced_snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pending
            .range(from..)
            .map(|(&b, &g)| (b, g))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let mut done = Vec::with_capacity(pending.len());
        let mut failed_writes = Vec::new();
        for (base, generation) in pending {
            if generation == FAILED_SNAPSHOT {
                // Not written again (see `rewrite_failed_snapshots`, whose
                // failure, when it tried, is the error): no fsync of this
                // file makes it durable.
                let path = self.dir.join(segment::producers_name(base));
                failed.get_or_insert_with(|| {
                    Error::io(
                        "fsync",
                        &path,
                        std::io::Error::other(
                            "an earlier write or fsync of this producer snapshot failed, and it was not written again",
                        ),
                    )
                });
                continue;
            }
            let path = self.dir.join(segment::producers_name(base));
            match fsync_snapshot(&path) {
                Ok(()) => done.push((base, generation)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    done.push((base, generation));
                }
                Err(e) => {
                    failed_writes.push((base, generation));
                    failed.get_or_insert(Error::io("fsync", &path, e));
                }
            }
        }
        if !failed_writes.is_empty() {
            let mut unsynced = self
                .unsynced_snapshots
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (base, generation) in failed_writes {
                unsynced.failed(base, generation);
            }
        }
        sync_dir(&self.dir)?;
        #[cfg(test)]
        if let Some(before) = BEFORE_SNAPSHOTS_SYNCED.with(|b| b.borrow_mut().take()) {
            before();
        }
        let mut unsynced = self
            .unsynced_snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (base, generation) in done {
            unsynced.synced(base, generation);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Writes again, as a new file renamed into place, each producer snapshot
    /// at or above `from` whose write or fsync failed, from what reading it gives (the
    /// kernel keeps the pages of a failed write-back cached as written): the
    /// new file's fsync is then one that counts. One that does not read back
    /// whole (its pages were dropped) is taken again from the producers known
    /// now. One that cannot be written again stays
    /// failed, which keeps the syncs from counting it (and a trim from
    /// deleting segments) until a later try succeeds; the first such failure
    /// is returned (a write that failed for want of space tells retention to
    /// use the space reserve, see [`super::space_reserve`]).
    /// Called by [`Partition::sync_snapshots_from`], under `syncing_snapshots`.
    fn rewrite_failed_snapshots(&self, from: i64) -> Option<Error> {
        // No other write of a snapshot runs meanwhile: a roll's of the newest
        // base may follow a compaction merge's failed one of the same base
        // (see `ensure_snapshot_from`), and the two would share a temporary
        // file.
        let _one_at_a_time = self
            .writing_snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let failed = self
            .unsynced_snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failed_from(from);
        // No other sync runs meanwhile (`syncing_snapshots`), nor any other
        // write: each of these is still failed.
        let mut first_failure = None;
        for base in failed {
            // Gone with its segment, or dropped below the recovery point.
            if !self
                .snapshots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&base)
            {
                self.unsynced_snapshots
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget(base);
                continue;
            }
            let path = self.dir.join(segment::producers_name(base));
            // Read back whole, it is what was written; otherwise the pages
            // were dropped, and it is taken again from the producers known
            // now: their batches below `base` still cached (a producer whose
            // cached batches are all past it is read from the segments from
            // `base` on, as a start after this snapshot does).
            let snapshot = load_snapshot(&self.dir, base).ok().flatten().unwrap_or_else(|| {
                tracing::warn!(file = %path.display(), "a producer snapshot whose write or fsync failed does not read back; taking it again from the producers known now");
                self.producers().snapshot_below(base)
            });
            match write_snapshot(&path, &snapshot) {
                Ok(()) => {
                    #[cfg(test)]
                    snapshot_renamed_into_place(&path);
                    self.unsynced_snapshots
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .add(base);
                    tracing::info!(file = %path.display(), "wrote again a producer snapshot whose write or fsync failed");
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "could not write again a producer snapshot whose write or fsync failed");
                    first_failure.get_or_insert(Error::io("write", &path, e));
                }
            }
        }
        first_failure
    }

    /// Reads whole batches starting at the batch holding `offset`, up to about
    /// `max_bytes` (at least one batch), never past the high watermark. The read
    /// goes on into the following segments while whole batches fit: after
    /// compaction a segment may hold nothing but a batch with no records, and a
    /// response of only such batches makes librdkafka double its fetch size
    /// (failing with "might be too large to fetch" after ten of them).
    ///
    /// The first segment's log is opened (or taken from the cache) under the
    /// partition lock, so the read returns its batches even if retention
    /// removes the segment meanwhile; each following segment's log is opened
    /// only when its turn comes, one at a time, so a read across many small
    /// segments holds at most two files open. A following segment removed or
    /// replaced (compaction) meanwhile ends the read there, with the whole
    /// batches read so far.
    ///
    /// # Errors
    /// `Ok(None)` when `offset` is out of range; I/O errors naming the file.
    pub fn read(&self, offset: i64, max_bytes: u64) -> Result<Option<ReadResult>> {
        self.read_within(offset, max_bytes, true)
    }

    /// About how many bytes of records a read from `offset` could return at
    /// most: from the batch holding `offset` to the end of the log (batches
    /// past the high watermark included, so never less). 0 when `offset` is
    /// at or past the end.
    pub fn bytes_from(&self, offset: i64) -> u64 {
        Self::bytes_in(
            &self.log.lock().unwrap_or_else(PoisonError::into_inner),
            offset,
        )
    }

    /// [`Partition::bytes_from`], and [`Partition::appended_bytes`] at the
    /// same moment: the bytes appended after it add to those from `offset`.
    pub fn bytes_from_marked(&self, offset: i64) -> (u64, u64) {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        (
            Self::bytes_in(&log, offset),
            self.appended.load(Ordering::Acquire),
        )
    }

    /// Bytes appended to the segments since the partition was opened; takes
    /// no lock.
    pub fn appended_bytes(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    /// [`Partition::bytes_from`] over `log`.
    fn bytes_in(log: &[Segment], offset: i64) -> u64 {
        let i = log
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1);
        let mut bytes = 0;
        for seg in log.iter().skip(i) {
            if offset >= seg.next_offset() || seg.size() == 0 {
                continue;
            }
            let from = offset.max(seg.base_offset());
            let at = seg.read_range(from, i64::MAX, 0).map_or(0, |r| r.position);
            bytes += seg.size() - at;
        }
        bytes
    }

    /// [`Partition::read`], returning a first batch larger than `max_bytes` only
    /// when `min_one_batch` (Kafka's KIP-74: only the first partition with data
    /// in a Fetch response may exceed the limits); otherwise no records at all.
    /// Batches without records (what compaction leaves) do not count as that
    /// first batch: the read goes on to the first batch that holds records,
    /// and [`ReadResult::holds_records`] says whether it reached one.
    ///
    /// # Errors
    /// As [`Partition::read`].
    pub fn read_within(
        &self,
        offset: i64,
        max_bytes: u64,
        min_one_batch: bool,
    ) -> Result<Option<ReadResult>> {
        let hw = self.high_watermark();
        let (plans, first, start) = {
            let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            let start = self.start_of(&log);
            if offset < start || offset > hw {
                return Ok(None);
            }
            let mut plans: Vec<ReadPlan> = Vec::new();
            let mut left = max_bytes;
            let mut records = false;
            if offset < hw {
                let i = log
                    .partition_point(|s| s.base_offset() <= offset)
                    .saturating_sub(1);
                for seg in log.iter().skip(i) {
                    if offset >= seg.next_offset() || seg.size() == 0 {
                        continue;
                    }
                    let from = offset.max(seg.base_offset());
                    let Some(range) = seg.read_range(from, hw, left.max(1)) else {
                        break;
                    };
                    let segment::ReadRange { position, len, .. } = range;
                    if len > left && (records || !min_one_batch) {
                        // Batches without records alone, before one that does
                        // not fit: nothing, so that the partition is read
                        // again when it may exceed the limit.
                        if !records {
                            plans.clear();
                        }
                        break;
                    }
                    plans.push(ReadPlan {
                        log: seg.log_handle(),
                        position,
                        len,
                        records: range.records,
                    });
                    records |= range.records;
                    left = left.saturating_sub(len);
                    // The next segment only once this one is read to its end: a
                    // batch that did not fit ends the read, it is not skipped.
                    // No room left ends it too, once a batch holds records.
                    if (left == 0 && (records || !min_one_batch))
                        || seg.next_offset() >= hw
                        || position + len < seg.size()
                    {
                        break;
                    }
                }
            }
            // Opened while the segment is surely there.
            let first = plans.first().map(|p| p.log.open()).transpose()?;
            (plans, first, start)
        };
        #[cfg(test)]
        if let Some(between) = BETWEEN_PLAN_AND_READ.with(|b| b.borrow_mut().take()) {
            between();
        }
        let total: u64 = plans.iter().map(|p| p.len).sum();
        let mut buf = vec![0u8; usize::try_from(total).unwrap_or(usize::MAX)];
        let mut at = 0usize;
        let mut records = false;
        let mut first = first;
        for p in plans {
            let file = match first.take() {
                Some(f) => f,
                None => match p.log.open() {
                    Ok(f) => f,
                    // Gone (retention, compaction), or not to be opened now
                    // (EMFILE): the whole batches read so far are the answer.
                    Err(e) if at > 0 || segment::is_gone(&e) => {
                        if !segment::is_gone(&e) {
                            crate::log_limit::limited!(warn, topic = %self.topic, partition = self.index, error = %e, "a fetch read stops at a segment it cannot open");
                        }
                        buf.truncate(at);
                        break;
                    }
                    Err(e) => return Err(e),
                },
            };
            let len = p.len as usize;
            file.read_exact_at(&mut buf[at..at + len], p.position)
                .map_err(|e| Error::io("read", p.log.path(), e))?;
            at += len;
            records |= p.records;
        }
        Ok(Some(ReadResult {
            records: Bytes::from(buf),
            holds_records: records,
            high_watermark: hw,
            log_start_offset: start,
        }))
    }

    /// Like [`Partition::read`] with no room for records: the positions only.
    ///
    /// # Errors
    /// Never; the signature matches [`Partition::read`].
    pub fn positions(&self, offset: i64) -> Result<Option<ReadResult>> {
        let hw = self.high_watermark();
        let start = self.log_start_offset();
        if offset < start || offset > hw {
            return Ok(None);
        }
        Ok(Some(ReadResult {
            records: Bytes::new(),
            holds_records: false,
            high_watermark: hw,
            log_start_offset: start,
        }))
    }

    /// Runs `find`, a timestamp lookup (which reads the segments outside the
    /// partition lock, from the log start it saw: see
    /// [`Partition::visit_batches`]), again while the partition changed under
    /// it: when the log start moved meanwhile (retention, DeleteRecords), whose
    /// answer may lie below the new start or miss a record (a segment skipped
    /// for one that is gone now), and when it failed while segments were taken
    /// away or replaced (a compaction's copy renamed over a segment's log, or
    /// the segments merged into it removed: the read finds the file gone). A
    /// failure while nothing changed is the answer. After [`LOOKUP_TRIES`]
    /// tries that each met a change, it fails naming the partition.
    ///
    /// # Errors
    /// `find`'s, or an error naming the partition's directory when every try
    /// met a change.
    fn lookup(
        &self,
        mut find: impl FnMut() -> Result<Option<(i64, i64)>>,
    ) -> Result<Option<(i64, i64)>> {
        for tried in 1..=LOOKUP_TRIES {
            let replaced = self.segments_replaced.load(Ordering::SeqCst);
            let start = self.log_start_offset();
            let found = find();
            let moved = self.log_start_offset() != start;
            if !moved
                && (found.is_ok() || self.segments_replaced.load(Ordering::SeqCst) == replaced)
            {
                return found;
            }
            tracing::debug!(
                topic = %self.topic,
                partition = self.index,
                tried,
                log_start_moved = moved,
                error = ?found.as_ref().err(),
                "the segments changed during a timestamp lookup; it starts over"
            );
        }
        Err(Error::io(
            "read",
            &self.dir,
            std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                format!(
                    "a timestamp lookup found the log start moved or its segments replaced during each of {LOOKUP_TRIES} tries"
                ),
            ),
        ))
    }

    /// Reads every readable batch header, oldest first, until `visit` returns
    /// true; gives `visit` the batch's header, its file and position, and the log
    /// start offset. Batches wholly below the log start are skipped, and so is
    /// every segment whose newest timestamp is known and for which `skip(newest,
    /// known)` says so (as Kafka consults a segment's time index), `known`
    /// being the newest timestamp known of the segments wholly readable (at or
    /// above the log start, below the high watermark). With `newest_only`, of
    /// a segment read whose batch holding its newest timestamp is known (its
    /// time index, its appends) only that batch is read when it lies at or
    /// above the log start and below the high watermark: every batch before it
    /// in the segment is older, none after it newer. A segment opened from its
    /// index, whose newest timestamp is not known, is read; once read whole it is
    /// known, and its time index is saved (see
    /// [`Partition::save_time_indexes`]) unless a topic delete holds the files.
    ///
    /// The segments' indexes are shared, not copied (see
    /// [`Segment::shared_index`]): the partition lock is held for a few
    /// pointers per segment, whatever the number of batches, so appends go on.
    fn visit_batches(
        &self,
        newest_only: bool,
        skip: impl Fn(i64, i64) -> bool,
        mut visit: impl FnMut(&BatchInfo, &Arc<File>, &Path, u64, i64) -> Result<bool>,
    ) -> Result<()> {
        let hw = self.high_watermark();
        let (start, views): (i64, Vec<SegmentView>) = {
            let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            let views = log
                .iter()
                .map(|s| SegmentView {
                    base: s.base_offset(),
                    next: s.next_offset(),
                    size: s.size(),
                    log: s.log_handle(),
                    index: s.shared_index(),
                    max_timestamp: s.max_timestamp_is_exact().then(|| s.max_timestamp()),
                    holder: s.max_timestamp_offset(),
                })
                .collect();
            (self.start_of(&log), views)
        };
        #[cfg(test)]
        if let Some(between) = BETWEEN_VIEW_AND_READ.with(|b| b.borrow_mut().take()) {
            between();
        }
        let known = views
            .iter()
            .filter(|v| v.base >= start && v.next <= hw)
            .filter_map(|v| v.max_timestamp)
            .max()
            .unwrap_or(i64::MIN);
        // Segments read whole whose newest timestamp was not known: (base,
        // size, newest, base offset of the first batch holding it).
        let mut learned = Vec::new();
        let visited = (|| {
            let mut head = [0u8; HEADER_LEN];
            for v in &views {
                if v.next <= start || v.max_timestamp.is_some_and(|t| skip(t, known)) {
                    continue;
                }
                // Opened now, one segment at a time.
                let file = match v.log.open() {
                    Ok(f) => f,
                    // Removed since the views were taken (retention): its
                    // records are below the log start now.
                    Err(e) if segment::is_gone(&e) && v.next <= self.log_start_offset() => {
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let path = v.log.path();
                // The batch holding the newest timestamp alone, when that is
                // all that is asked and it is known and readable.
                let holder = v
                    .holder
                    .filter(|&h| newest_only && h >= start && h < hw)
                    .and_then(|h| {
                        let i = v.index.partition_point(|e| e.offset < h);
                        v.index.get(i).filter(|e| e.offset == h)
                    });
                let positions: Box<dyn Iterator<Item = u64>> = match holder {
                    Some(e) => Box::new(std::iter::once(e.position)),
                    None => Box::new(v.index.iter().map(|e| e.position)),
                };
                // (newest, the first batch holding it); None once a header
                // does not parse.
                let mut newest = Some((-1i64, -1i64));
                for position in positions {
                    file.read_exact_at(&mut head, position)
                        .map_err(|e| Error::io("read", path, e))?;
                    #[cfg(test)]
                    HEADERS_READ.with(|c| c.set(c.get() + 1));
                    // Read without their checksums: one the segment could
                    // not hold (damaged), below its base or ending before it
                    // starts, is passed over as one that does not parse.
                    let Some(info) = batch::parse_header(&head)
                        .ok()
                        .filter(|i| i.base_offset >= v.base && i.last_offset_delta >= 0)
                    else {
                        newest = None;
                        continue;
                    };
                    newest = newest.map(|(n, at)| {
                        if info.max_timestamp > n {
                            (info.max_timestamp, info.base_offset)
                        } else {
                            (n, at)
                        }
                    });
                    if info.base_offset >= hw {
                        return Ok(());
                    }
                    if info.last_offset() < start {
                        continue;
                    }
                    if visit(&info, &file, path, position, start)? {
                        return Ok(());
                    }
                }
                if let (None, Some((newest, at))) = (v.max_timestamp, newest) {
                    learned.push((v.base, v.size, newest, at));
                }
            }
            Ok(())
        })();
        if !learned.is_empty() {
            let mut saves = Vec::new();
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            for (base, size, newest, at) in learned {
                if let Some(s) = segments_at(&mut log, base)
                    .find(|s| s.size() == size && !s.max_timestamp_is_exact())
                {
                    s.set_max_timestamp(newest, Some(at));
                    saves.extend(s.time_index_job());
                }
            }
            drop(log);
            // Never waits: a lookup does not wait behind a topic delete.
            if let Some(files) = self.try_files_guard().filter(|_| !saves.is_empty()) {
                self.save_time_indexes(&files, saves);
            }
        }
        visited
    }

    /// The first record of the batch `info` at `position` of `file` at or
    /// above `start` whose timestamp `wanted` accepts, as (offset, timestamp),
    /// decompressing a compressed batch; `Err(())` inside for one whose records
    /// cannot be read. Records are read one at a time, none collected.
    fn find_record(
        info: &BatchInfo,
        file: &File,
        path: &Path,
        position: u64,
        start: i64,
        wanted: impl Fn(i64) -> bool,
    ) -> Result<std::result::Result<Option<(i64, i64)>, ()>> {
        let mut buf = vec![0u8; info.len];
        file.read_exact_at(&mut buf, position)
            .map_err(|e| Error::io("read", path, e))?;
        let Some(payload) = batch::payload(&buf) else {
            return Ok(Err(()));
        };
        let Some(mut records) = batch::records_in(&buf, &payload) else {
            return Ok(Err(()));
        };
        Ok(Ok(records
            .find(|r| r.offset >= start && wanted(r.timestamp))
            .map(|r| (r.offset, r.timestamp))))
    }

    /// ListOffsets by timestamp: the first offset whose record's timestamp is at or
    /// after `timestamp`, with that timestamp. Within a batch (decompressed if
    /// need be) the record itself is found; one whose records cannot be read
    /// answers its first offset (at or
    /// above the log start) and its largest timestamp. `None` when no record is
    /// that new. Segments whose newest timestamp is known to be older are not
    /// read. Tried again when the segments change under it (see
    /// [`Partition::lookup`]).
    ///
    /// # Errors
    /// I/O errors naming the file; one naming the partition's directory when
    /// the segments changed during each of [`LOOKUP_TRIES`] tries.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        self.lookup(|| {
            let mut found = None;
            let older = |newest: i64, _| newest < timestamp;
            self.visit_batches(false, older, |info, file, path, position, start| {
                if info.max_timestamp < timestamp {
                    return Ok(false);
                }
                found = match Self::find_record(info, file, path, position, start, |ts| {
                    ts >= timestamp
                })? {
                    Ok(found) => found,
                    Err(()) => Some((info.base_offset.max(start), info.max_timestamp)),
                };
                Ok(found.is_some())
            })?;
            Ok(found)
        })
    }

    /// ListOffsets `MAX_TIMESTAMP` (-3): the offset of the record with the largest
    /// timestamp (the first of them on a tie), with that timestamp; a batch whose
    /// records cannot be read answers its last offset, as Kafka did before it
    /// read inside batches.
    /// `None` for an empty partition. Reads the batch headers only of the
    /// segments that may hold it: not of one whose newest timestamp is known to
    /// be older than another readable segment's, or no newer than an earlier
    /// one's; and of a segment whose batch holding its newest timestamp is
    /// known (its time index, or its appends), only that batch's. Tried again
    /// when the segments change under it (see [`Partition::lookup`]).
    ///
    /// # Errors
    /// As [`Partition::offset_for_timestamp`].
    pub fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>> {
        self.lookup(|| self.find_max_timestamp())
    }

    /// One try of [`Partition::max_timestamp_offset`].
    fn find_max_timestamp(&self) -> Result<Option<(i64, i64)>> {
        self.max_timestamp_by(true)
    }

    /// [`Partition::find_max_timestamp`], passing over segments (and taking
    /// the batch holding a segment's newest from what it knows) only when
    /// `skip`: tests compare the two.
    fn max_timestamp_by(&self, skip: bool) -> Result<Option<(i64, i64)>> {
        // A batch, where it lies, the log start then, and its largest timestamp
        // at or above that start.
        type Best = (BatchInfo, Arc<File>, PathBuf, u64, i64, i64);
        let mut best: Option<Best> = None;
        // The answer is at least as new as the newest known of a readable
        // segment; a segment no newer than the best so far has no better batch.
        let best_ts = std::cell::Cell::new(i64::MIN);
        self.visit_batches(
            skip,
            |newest, known| skip && (newest < known || newest <= best_ts.get()),
            |info, file, path, position, start| {
                let Some(ts) = Self::served_max_timestamp(info, file, path, position, start)?
                else {
                    return Ok(false);
                };
                if best.as_ref().is_none_or(|b| ts > b.5) {
                    let at = path.to_path_buf();
                    best = Some((*info, Arc::clone(file), at, position, start, ts));
                    best_ts.set(ts);
                }
                Ok(false)
            },
        )?;
        let Some((info, file, path, position, start, max)) = best else {
            // A segment's known newest may be an emptied batch's, as a build
            // before entry 136's fix compacted: every batch is read then.
            return if skip {
                self.max_timestamp_by(false)
            } else {
                Ok(None)
            };
        };
        // A batch whose records cannot be read answers its last offset. One
        // whose header states a newer timestamp than any of its records has
        // (compacted by a build before entry 136's fix) answers its newest
        // record.
        Ok(
            match Self::find_record(&info, &file, &path, position, start, |ts| ts == max)? {
                Ok(Some(found)) => Some(found),
                Ok(None) => match Self::newest_record(&info, &file, &path, position, start)? {
                    Some(Some(newest)) => {
                        Self::find_record(&info, &file, &path, position, start, |ts| ts == newest)?
                            .ok()
                            .flatten()
                    }
                    _ => None,
                },
                Err(()) => Some((info.last_offset(), max)),
            },
        )
    }

    /// The largest timestamp among the records of a batch at or above the log
    /// start `start`: its header's, unless the start lies inside it, where the
    /// header's may be a deleted record's (the records are read then; `None`
    /// when none is at or above the start, the header's when they cannot be
    /// read). `None` for a batch with no records (what compaction leaves):
    /// it holds no record to answer with.
    fn served_max_timestamp(
        info: &BatchInfo,
        file: &File,
        path: &Path,
        position: u64,
        start: i64,
    ) -> Result<Option<i64>> {
        if info.records == 0 {
            return Ok(None);
        }
        if info.base_offset >= start {
            return Ok(Some(info.max_timestamp));
        }
        let newest = Self::newest_record(info, file, path, position, start)?;
        Ok(newest.unwrap_or(Some(info.max_timestamp)))
    }

    /// The largest timestamp among the records of a batch at or above the log
    /// start `start`, read from them (`Some(None)` when none is that new);
    /// `None` when they cannot be read.
    fn newest_record(
        info: &BatchInfo,
        file: &File,
        path: &Path,
        position: u64,
        start: i64,
    ) -> Result<Option<Option<i64>>> {
        let mut buf = vec![0u8; info.len];
        file.read_exact_at(&mut buf, position)
            .map_err(|e| Error::io("read", path, e))?;
        Ok(batch::payload(&buf).and_then(|payload| {
            let records = batch::records_in(&buf, &payload)?;
            Some(
                records
                    .filter(|r| r.offset >= start)
                    .map(|r| r.timestamp)
                    .max(),
            )
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::batch::{
        tests::{make_batch, with_timestamp},
        validate_all,
    };

    fn produce(p: &Partition, values: &[&[u8]]) -> i64 {
        store(p, make_batch(0, values))
    }

    /// Assigns offsets to batch `b`, appends it and publishes it; its base offset.
    pub(crate) fn store(p: &Partition, mut b: Vec<u8>) -> i64 {
        let infos = validate_all(&b).unwrap();
        let base = p.assign(&mut b, &infos);
        let infos = validate_all(&b).unwrap();
        let end = p.append(&b, &infos).unwrap();
        p.set_high_watermark(end);
        base
    }

    /// Taking a segment's sync job marks it clean before its `fdatasync` runs:
    /// a second sync meanwhile (a checkpoint beside a topic delete's own sync)
    /// found nothing to do and answered at once, for data not yet on the disk.
    /// It waits for the first now.
    #[test]
    fn a_sync_waits_for_one_whose_fdatasyncs_are_still_running() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(Partition::open("t", 0, dir.path().join("t-0"), 1 << 20).unwrap());
        produce(&p, &[b"a"]);
        let (taken_tx, taken_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let first = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                BETWEEN_TAKE_AND_SYNC.with(|b| {
                    *b.borrow_mut() = Some(Box::new(move || {
                        taken_tx.send(()).unwrap();
                        go_rx.recv().unwrap();
                    }));
                });
                p.sync()
            })
        };
        taken_rx.recv().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let second = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || done_tx.send(p.sync()).unwrap())
        };
        assert!(
            done_rx
                .recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "a sync answered while the segment's fdatasync had not run"
        );
        go_tx.send(()).unwrap();
        first.join().unwrap().unwrap();
        done_rx.recv().unwrap().unwrap();
        second.join().unwrap();
    }

    /// Produces one batch of `size` bytes whose records carry timestamp `ts`.
    fn produce_at(p: &Partition, ts: i64, size: usize) -> i64 {
        store(p, with_timestamp(make_batch(0, &[&vec![1u8; size]]), ts))
    }

    fn files(dir: &Path, ext: &str) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == ext)
            })
            .count()
    }

    /// Removes the time index files in `dir`, as a directory written before
    /// they were kept has none; returns how many there were.
    fn remove_time_indexes(dir: &Path) -> usize {
        let found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "timeindex"))
            .collect();
        for path in &found {
            std::fs::remove_file(path).unwrap();
        }
        found.len()
    }

    /// A log copy that a crash left while the newest segment was being rebuilt
    /// at start-up (its rename never happened) is removed; the log stays.
    #[test]
    fn a_rebuild_a_crash_interrupted_leaves_the_log_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("t-0");
        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        assert_eq!(produce(&p, &[b"a", b"b"]), 0);
        assert_eq!(produce(&p, &[b"c"]), 2);
        p.sync().unwrap();
        drop(p);
        let log = pdir.join(segment::log_name(0));
        let before = std::fs::read(&log).unwrap();
        let leftover = pdir.join(format!(
            "{}{}",
            segment::log_name(0),
            segment::REBUILD_SUFFIX
        ));
        std::fs::write(&leftover, &before[..before.len() / 2]).unwrap();

        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        assert!(!leftover.exists(), "the interrupted copy was kept");
        assert_eq!(p.log_end_offset(), 3);
        assert_eq!(std::fs::read(&log).unwrap(), before);
    }

    /// A segment of records without timestamps (-1) was never deleted by age, and
    /// time retention stopped at it for every later segment. It is judged by its
    /// file's last write now, as Kafka judges it.
    #[test]
    fn segments_of_records_without_timestamps_expire_by_their_files_age() {
        const DAY: i64 = 24 * 3600 * 1000;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(produce_at(&p, -1, 3000), 0);
        assert_eq!(produce_at(&p, segment::now_ms(), 3000), 1);
        assert_eq!(files(&pdir, "log"), 2);
        let now = segment::now_ms();
        assert_eq!(p.apply_retention(now, Some(DAY as u64), None).unwrap().0, 0);
        let (n, _) = p
            .apply_retention(now + 2 * DAY, Some(DAY as u64), None)
            .unwrap();
        assert_eq!(n, 2, "the segment without timestamps was kept");
        assert_eq!(p.log_start_offset(), 2);
    }

    /// A retention pass that deletes the active segment first rolls to a new
    /// one at its end. When that creation failed part way (here its index
    /// cannot be opened), the empty log it had made stayed; appends went on
    /// in the old active segment past its base, and the next open refused the
    /// partition ("segment starts at ... but the previous one ends at ...").
    #[test]
    fn a_failed_retention_roll_leaves_no_segment_behind() {
        const DAY: i64 = 24 * 3600 * 1000;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        let now = segment::now_ms();
        produce_at(&p, now, 100);
        produce_at(&p, now, 100);
        let end = p.log_end_offset();
        let blocker = pdir.join(segment::index_name(end));
        std::fs::create_dir(&blocker).unwrap();
        p.apply_retention(now + 2 * DAY, Some(DAY as u64), None)
            .expect_err("the roll's index could not be made");
        std::fs::remove_dir(&blocker).unwrap();
        assert!(!pdir.join(segment::log_name(end)).exists());
        produce_at(&p, now, 100);
        drop(p);
        let p = Partition::open("t", 0, pdir, 1 << 20).unwrap();
        assert_eq!(p.log_end_offset(), end + 1);
        assert_eq!(p.log_start_offset(), 0);
    }

    /// An empty segment left inside the previous one (a retention roll whose
    /// cleanup failed, while appends went on in the previous segment) stopped
    /// the open, and with it the broker. It holds nothing: it is removed, as
    /// the newest segment and as a closed one.
    #[test]
    fn an_empty_segment_inside_the_previous_one_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        for _ in 0..3 {
            produce(&p, &[&[7u8; 100]]);
        }
        drop(p);
        let stray = pdir.join(segment::log_name(1));
        std::fs::File::create(&stray).unwrap();
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert!(!stray.exists());
        assert_eq!(p.log_end_offset(), 3);
        assert_eq!(produce(&p, &[b"more"]), 3, "appends go on");
        // Behind a later segment: 2 .. 4 roll over 4096 bytes.
        for _ in 0..40 {
            produce(&p, &[&[7u8; 100]]);
        }
        assert!(files(&pdir, "log") >= 2);
        let end = p.log_end_offset();
        drop(p);
        std::fs::File::create(&stray).unwrap();
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert!(!stray.exists());
        assert_eq!(p.log_end_offset(), end);
    }

    /// Many empty segments inside the previous one (a copied or damaged
    /// directory) go in one pass: the open removed one, then opened the
    /// partition again from the start by calling itself, one stack frame
    /// (and one full open) per segment, and enough of them overflowed the
    /// stack of the thread opening it, aborting every start. Opened here on a
    /// thread with a small stack.
    #[test]
    fn many_empty_segments_inside_the_previous_one_go_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        for _ in 0..300 {
            produce(&p, &[&[7u8; 10]]);
        }
        drop(p);
        for base in 1..300 {
            std::fs::File::create(pdir.join(segment::log_name(base))).unwrap();
        }
        let opened = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn({
                let pdir = pdir.clone();
                move || {
                    Partition::open("t", 0, pdir, 1 << 20)
                        .unwrap()
                        .log_end_offset()
                }
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(opened, 300);
        assert_eq!(files(&pdir, "log"), 1);
    }

    /// A segment named with a base offset near `i64::MAX` is refused as
    /// damage, naming it: the open adds to its offsets, which overflowed (a
    /// panic in debug builds, a log end wrapped to `i64::MIN` in release).
    #[test]
    fn a_segment_base_beyond_what_offsets_can_reach_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        produce(&p, &[b"v"]);
        drop(p);
        let stray = pdir.join(segment::log_name(i64::MAX - 24));
        std::fs::File::create(&stray).unwrap();
        let e = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap_err();
        assert!(
            matches!(&e, Error::Corrupt { file, .. } if *file == stray),
            "{e}"
        );
        std::fs::remove_file(&stray).unwrap();
        let at_most = pdir.join(segment::log_name(segment::MAX_BASE));
        std::fs::File::create(&at_most).unwrap();
        let p = Partition::open("t", 0, pdir, 1 << 20).unwrap();
        assert_eq!(
            p.log_end_offset(),
            segment::MAX_BASE,
            "an empty newest segment"
        );
    }

    /// Reopens the partition in `pdir` as a crash leaves it that lost the first
    /// write to a segment just rolled at `at` (its log created, empty), and
    /// moves its next offset to `gap` (as a WAL replay that tolerated lost
    /// entries goes on after them): the next append seals the empty segment.
    fn with_empty_newest_segment(pdir: &Path, at: i64, gap: i64) -> Partition {
        std::fs::File::create(pdir.join(segment::log_name(at))).unwrap();
        let p = Partition::open("t", 0, pdir.to_path_buf(), 4096).unwrap();
        assert_eq!(p.log_end_offset(), at);
        p.next_offset.store(gap, Ordering::Release);
        p
    }

    /// An empty closed segment (an offset gap rolled the active segment
    /// before anything was appended to it) was judged by nothing under time
    /// retention, which stops at the first segment it keeps: every segment
    /// after it was kept forever, however old, and the disk filled. It is now
    /// judged by its log's last write, as Kafka judges a segment without
    /// timestamps, and never stops the deletion of the segments after it.
    #[test]
    fn an_empty_closed_segment_expires_by_its_files_age_and_holds_back_no_later_segment() {
        const DAY: i64 = 24 * 3600 * 1000;
        let now = segment::now_ms();
        let old = now - 10 * DAY;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        // Old segments 0 and 1; 2 empty; old 5 and 6; 7, of now, active.
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(produce_at(&p, old, 3000), 0);
        assert_eq!(produce_at(&p, old, 3000), 1);
        p.sync().unwrap();
        drop(p);
        let p = with_empty_newest_segment(&pdir, 2, 5);
        for (ts, offset) in [(old, 5), (old, 6), (now, 7)] {
            assert_eq!(produce_at(&p, ts, 3000), offset);
        }
        let segments: Vec<(i64, bool)> = p
            .log
            .lock()
            .unwrap()
            .iter()
            .map(|s| (s.base_offset(), s.size() == 0))
            .collect();
        let empty_2 = [
            (0, false),
            (1, false),
            (2, true),
            (5, false),
            (6, false),
            (7, false),
        ];
        assert_eq!(segments, empty_2);
        // The empty segment's log was written now: it is not past retention.
        assert_eq!(p.apply_retention(now, Some(DAY as u64), None).unwrap().0, 5);
        assert_eq!(p.log_start_offset(), 7);
        assert_eq!(files(&pdir, "log"), 1);
        drop(p);

        // An empty segment whose log is past retention goes by itself too,
        // before a segment that is kept.
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(produce_at(&p, old, 3000), 0);
        p.sync().unwrap();
        drop(p);
        let p = with_empty_newest_segment(&pdir, 1, 4);
        assert_eq!(produce_at(&p, now, 3000), 4);
        assert_eq!(produce_at(&p, now, 3000), 5);
        let retention = Some(DAY as u64);
        assert_eq!(p.apply_retention(now, retention, None).unwrap().0, 1);
        assert_eq!(
            p.log_start_offset(),
            1,
            "the empty segment is a day old at most"
        );
        std::fs::File::options()
            .write(true)
            .open(pdir.join(segment::log_name(1)))
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400))
            .unwrap();
        assert_eq!(p.apply_retention(now, retention, None).unwrap().0, 1);
        assert_eq!(p.log_start_offset(), 4);
        assert_eq!(p.read(4, 1).unwrap().unwrap().log_start_offset, 4);
    }

    /// An empty closed segment that a tolerated WAL gap sealed opens as
    /// itself, not as damage: before, its empty index read as one that does
    /// not match its log, and every start judged it again as offsets lost
    /// (a strict start refused while the recovery point was above them).
    #[test]
    fn an_empty_closed_segment_opens_undamaged() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(produce_at(&p, 1, 3000), 0);
        p.sync().unwrap();
        drop(p);
        let p = with_empty_newest_segment(&pdir, 1, 4);
        assert_eq!(produce_at(&p, 1, 3000), 4);
        p.sync().unwrap();
        drop(p);
        assert_eq!(
            std::fs::metadata(pdir.join(segment::log_name(1)))
                .unwrap()
                .len(),
            0
        );
        let p = Partition::open("t", 0, pdir, 4096).unwrap();
        assert!(p.damaged_segments().is_empty());
        assert_eq!(p.log_end_offset(), 5);
        assert!(!p.read(1, 1 << 20).unwrap().unwrap().records.is_empty());
    }

    /// A partition of four batches of 1,500 bytes in segments of 4 KiB (two
    /// to a segment), synced.
    fn four_batches_in_two_segments() -> (tempfile::TempDir, PathBuf, Partition) {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        for i in 0..4 {
            assert_eq!(produce_at(&p, 1, 1500), i);
        }
        p.sync().unwrap();
        (dir, pdir, p)
    }

    /// An older segment opened from its index whose last batch's header has
    /// its offset delta damaged upwards (read there without its checksum)
    /// ended past the next segment's base, and every open refused the
    /// partition, in every recovery mode. Such a segment is scanned now: the
    /// damaged batch is found by its checksum and left for the start to
    /// judge, as any damaged older segment is.
    #[test]
    fn an_older_segment_ending_past_the_next_one_is_scanned() {
        let (_dir, pdir, p) = four_batches_in_two_segments();
        let (first, second) = {
            let log = p.log.lock().unwrap();
            assert!(log.len() >= 2);
            (log[0].index().last().unwrap(), log[1].base_offset())
        };
        drop(p);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(pdir.join(segment::log_name(0)))
            .unwrap();
        f.write_all_at(&100i32.to_be_bytes(), first.position + 23)
            .unwrap();
        drop(f);
        let p = Partition::open("t", 0, pdir, 4096).unwrap();
        let damaged = p.damaged_segments();
        assert_eq!(damaged.len(), 1, "{damaged:?}");
        assert_eq!((damaged[0].base_offset, damaged[0].end), (0, first.offset));
        assert!(damaged[0].cut.is_some());
        assert!(first.offset < second);
    }

    /// An older segment whose log and index were both emptied from outside,
    /// its time index recording batches, is damage for the start to judge
    /// (rebuilt from the WAL, or refused), not an empty segment.
    #[test]
    fn an_older_segment_emptied_from_outside_is_damage() {
        let (_dir, pdir, p) = four_batches_in_two_segments();
        drop(p);
        assert!(pdir.join(segment::time_index_name(0)).exists());
        for name in [segment::log_name(0), segment::index_name(0)] {
            std::fs::write(pdir.join(name), b"").unwrap();
        }
        let p = Partition::open("t", 0, pdir, 4096).unwrap();
        let damaged = p.damaged_segments();
        assert_eq!(damaged.len(), 1, "{damaged:?}");
        assert_eq!((damaged[0].base_offset, damaged[0].end), (0, 0));
    }

    /// Produces one batch of a record with `key` and a `size`-byte value at
    /// timestamp `ts`.
    fn produce_keyed_at(p: &Partition, key: &str, ts: i64, size: usize) -> i64 {
        let value = vec![1u8; size];
        store(
            p,
            batch::tests::make_keyed_batch(
                0,
                ts,
                &[(0, Some(key.as_bytes()), Some(&value))],
                -1,
                -1,
                -1,
            ),
        )
    }

    /// A segment opened from its index at start-up knew only its last batch's
    /// timestamp: when an earlier batch was newer (producers' clocks differ),
    /// retention deleted it by the older one. The newest of all its batches
    /// is found before it expires by time. (Here without its time index, as a
    /// directory written before they were kept.)
    #[test]
    fn a_segment_opened_from_its_index_expires_by_its_newest_batch_not_its_last() {
        const DAY: i64 = 24 * 3600 * 1000;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        // One closed segment: day 5, then day 1; then the active one.
        assert_eq!(produce_at(&p, 5 * DAY, 1500), 0);
        assert_eq!(produce_at(&p, DAY, 1500), 1);
        assert_eq!(produce_at(&p, DAY, 1500), 2);
        assert_eq!(files(&pdir, "log"), 2);
        p.sync().unwrap();
        drop(p);
        assert_eq!(remove_time_indexes(&pdir), 1);

        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert!(!p.log.lock().unwrap()[0].max_timestamp_is_exact());
        let three_days = Some(3 * DAY as u64);
        // Day 6: the record of day 5 is a day old.
        assert_eq!(
            p.apply_retention(6 * DAY, three_days, None).unwrap(),
            (0, 0),
            "deleted by its last batch's timestamp"
        );
        assert_eq!(p.log_start_offset(), 0);
        assert_eq!(p.log.lock().unwrap()[0].max_timestamp(), 5 * DAY);
        // Day 9: it is past retention.
        assert_eq!(p.apply_retention(9 * DAY, three_days, None).unwrap().0, 2);
        assert_eq!(p.log_start_offset(), 3);
    }

    /// After a restart the first time retention pass read every batch header
    /// of every closed segment (the index gives only a segment's last batch's
    /// timestamp), and so did the first timestamp lookup: one read per batch,
    /// a million for a partition of 1 GiB in 1 KiB batches. Each segment's
    /// newest timestamp is saved in its time index when it rolls: after a
    /// restart the segments know it, retention deletes the right ones
    /// reading no header, a lookup skips the segments older than asked, and
    /// the time indexes go with their segments.
    #[test]
    fn retention_and_lookups_after_a_restart_read_no_batch_header_of_closed_segments() {
        const DAY: i64 = 24 * 3600 * 1000;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        // Two batches a segment: [day 1, day 1], [day 5, day 1] (its newest
        // is not its last), [day 1, day 1], then the active one, [day 1].
        for (i, ts) in [DAY, DAY, 5 * DAY, DAY, DAY, DAY, DAY]
            .into_iter()
            .enumerate()
        {
            assert_eq!(produce_at(&p, ts, 1500), i as i64);
        }
        assert_eq!((files(&pdir, "log"), files(&pdir, "timeindex")), (4, 3));
        p.sync().unwrap();
        drop(p);
        // One whose segment is gone, as a crash may leave it: removed.
        let stray = pdir.join(segment::time_index_name(100));
        std::fs::write(&stray, b"stale").unwrap();

        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert!(!stray.exists());
        assert_eq!(
            newest_timestamps(&p),
            vec![
                (0, true, DAY, Some(0)),
                (2, true, 5 * DAY, Some(2)),
                (4, true, DAY, Some(4)),
                (6, true, DAY, Some(6)),
            ]
        );
        HEADERS_READ.with(|c| c.set(0));
        assert_eq!(p.offset_for_timestamp(5 * DAY).unwrap(), Some((2, 5 * DAY)));
        assert_eq!(HEADERS_READ.with(|c| c.get()), 1, "segment 0 skipped");

        segment::MAX_TIMESTAMP_HEADERS_READ.with(|c| c.set(0));
        let three_days = Some(3 * DAY as u64);
        // Day 6: segment 0 is 5 days old, segment 2 holds a record a day old.
        assert_eq!(p.apply_retention(6 * DAY, three_days, None).unwrap().0, 1);
        assert_eq!(
            segment::MAX_TIMESTAMP_HEADERS_READ.with(|c| c.get()),
            0,
            "batch headers read to judge the segments"
        );
        assert_eq!(p.log_start_offset(), 2);
        assert_eq!(files(&pdir, "timeindex"), 2);
        // Day 9: everything goes, the active segment too (a new one takes
        // its place).
        assert_eq!(p.apply_retention(9 * DAY, three_days, None).unwrap().0, 3);
        assert_eq!(segment::MAX_TIMESTAMP_HEADERS_READ.with(|c| c.get()), 0);
        assert_eq!(p.log_start_offset(), 7);
        assert_eq!((files(&pdir, "log"), files(&pdir, "timeindex")), (1, 0));
    }

    /// Log lines at every level written on this thread while `f` runs, and
    /// what it returned.
    pub(crate) fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = sink.0.lock().unwrap().clone();
        (out, String::from_utf8(text).unwrap())
    }

    /// Three closed segments opened from their indexes, as an older broker
    /// left them (without time indexes), each a batch of day 5 (key "a") then
    /// one of day 1 (a key of its own), and the active one: by their last
    /// batches all are past a retention of three days on day 6, by their
    /// newest none is.
    fn opened_without_time_indexes() -> (tempfile::TempDir, PathBuf, Arc<Partition>) {
        const DAY: i64 = 24 * 3600 * 1000;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Arc::new(Partition::open("t", 0, pdir.clone(), 4096).unwrap());
        for i in 0..3 {
            assert_eq!(produce_keyed_at(&p, "a", 5 * DAY, 1500), 2 * i);
            assert_eq!(produce_keyed_at(&p, &format!("k{i}"), DAY, 1500), 2 * i + 1);
        }
        assert_eq!(produce_keyed_at(&p, "a", 5 * DAY, 1500), 6);
        assert_eq!(p.log.lock().unwrap().len(), 4);
        p.sync().unwrap();
        drop(p);
        assert_eq!(remove_time_indexes(&pdir), 3);
        let p = Arc::new(Partition::open("t", 0, pdir.clone(), 4096).unwrap());
        assert!(p.log.lock().unwrap()[..3]
            .iter()
            .all(|s| !s.max_timestamp_is_exact()));
        (dir, pdir, p)
    }

    /// A lookup by time reads the batch headers of a segment opened from its
    /// index without their checksums. One damaged in its base offset (to
    /// `i64::MIN`) and its last offset delta (negative) made the batch's last
    /// offset overflow: a panic in a debug build, answered
    /// UNKNOWN_SERVER_ERROR, and in release an offset wrapped to the top,
    /// so the batch counted as above the log start. It is passed over now,
    /// as a header that does not parse.
    #[test]
    fn a_lookup_passes_over_a_header_the_segment_could_not_hold() {
        const DAY: i64 = 24 * 3600 * 1000;
        let (_dir, pdir, p) = opened_without_time_indexes();
        let log = pdir.join(format!("{:020}.log", 0));
        let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        file.write_all_at(&i64::MIN.to_be_bytes(), 0).unwrap();
        file.write_all_at(&(-1i32).to_be_bytes(), 23).unwrap();
        drop(file);
        assert_eq!(p.offset_for_timestamp(0).unwrap(), Some((1, DAY)));
        assert_eq!(p.offset_for_timestamp(4 * DAY).unwrap(), Some((2, 5 * DAY)));
    }

    /// Retention reads the batch headers of the segments opened from their
    /// indexes outside the partition lock. A segment that DeleteRecords
    /// removed, or a compaction replaced, meanwhile made that read fail, and
    /// retention logged a storage warning for a normal race (the result was
    /// rightly dropped). Only a segment still in the log whose headers cannot
    /// be read is warned about now.
    #[test]
    fn retention_warns_of_unreadable_batch_headers_only_for_a_segment_still_there() {
        const DAY: i64 = 24 * 3600 * 1000;
        const WARNING: &str = "could not read the segment's batch headers";
        let three_days = Some(3 * DAY as u64);
        let opened = opened_without_time_indexes;
        // Runs `f` once the next retention pass on this thread has taken its
        // jobs, before it reads.
        let between_jobs_and_reads = |p: &Arc<Partition>, f: fn(&Partition)| {
            let p = Arc::clone(p);
            BETWEEN_JOBS_AND_READS.with(|b| *b.borrow_mut() = Some(Box::new(move || f(&p))));
        };
        let hook_ran = || BETWEEN_JOBS_AND_READS.with(|b| b.borrow().is_none());
        let newest = |p: &Partition| -> Vec<(i64, Option<i64>)> {
            p.log
                .lock()
                .unwrap()
                .iter()
                .map(|s| {
                    let ts = s.max_timestamp_is_exact().then(|| s.max_timestamp());
                    (s.base_offset(), ts)
                })
                .collect()
        };

        // A retention pass on day 6 that deletes nothing and logs no
        // warning, the segments left knowing `want`.
        let passes_quietly = |p: &Partition, want: &[(i64, Option<i64>)]| {
            let (kept, log) = logged(|| p.apply_retention(6 * DAY, three_days, None).unwrap());
            assert!(hook_ran());
            assert!(!log.contains(WARNING), "{log}");
            assert_eq!(kept, (0, 0));
            assert_eq!(newest(p), want);
        };

        // DeleteRecords removes the first segment meanwhile: what is learned
        // of the others is saved in their time indexes, nothing for it.
        let (_dir, pdir, p) = opened();
        between_jobs_and_reads(&p, |p| assert_eq!(p.delete_records(2), Ok(2)));
        passes_quietly(
            &p,
            &[(2, Some(5 * DAY)), (4, Some(5 * DAY)), (6, Some(5 * DAY))],
        );
        assert_eq!(time_indexes(&pdir), (vec![2, 4], 0));

        // A compaction puts its copy in place of the first two segments
        // meanwhile (the first two "a" records go); the copy knows its newest
        // timestamp, that of the records it kept (day 1), by which this pass
        // deletes it, with its time index; what is learned of the next
        // segment is saved.
        let (_dir, pdir, p) = opened();
        between_jobs_and_reads(&p, |p| {
            compact_first_two(p);
            let log = p.log.lock().unwrap();
            assert!(log[0].max_timestamp_is_exact());
            assert_eq!((log[0].base_offset(), log[0].max_timestamp()), (0, DAY));
        });
        let (deleted, log) = logged(|| p.apply_retention(6 * DAY, three_days, None).unwrap());
        assert!(hook_ran());
        assert!(!log.contains(WARNING), "{log}");
        assert_eq!(deleted.0, 1, "the copy");
        assert_eq!(newest(&p), [(4, Some(5 * DAY)), (6, Some(5 * DAY))]);
        assert_eq!(time_indexes(&pdir), (vec![4], 0));

        // A log cut short while its segment is still there is still warned
        // of, naming the segment, and its newest timestamp stays unknown: its
        // last batch's (day 1) is only a lower bound, by which it was deleted
        // on day 6 with its record of day 5. The others learn their newest.
        let (_dir, pdir, p) = opened();
        let first = pdir.join(segment::log_name(0));
        between_jobs_and_reads(&p, move |_| {});
        std::fs::OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(100)
            .unwrap();
        let (kept, log) = logged(|| p.apply_retention(6 * DAY, three_days, None).unwrap());
        assert!(hook_ran());
        assert_eq!(kept, (0, 0), "a segment of unknown age deleted by time");
        let warned: Vec<&str> = log.lines().filter(|l| l.contains(WARNING)).collect();
        assert!(warned.len() == 1 && warned[0].contains("base=0"), "{log}");
        assert_eq!(
            newest(&p),
            [
                (0, None),
                (2, Some(5 * DAY)),
                (4, Some(5 * DAY)),
                (6, Some(5 * DAY))
            ]
        );
    }

    /// A compaction pass on day 6 over [`opened_without_time_indexes`]'s
    /// partition: the first two segments (offsets 0 to 3) become one copy
    /// (their records of key "a" go).
    fn compact_first_two(p: &Partition) {
        const DAY: i64 = 24 * 3600 * 1000;
        let policy = CompactionPolicy {
            now_ms: 6 * DAY,
            delete_retention_ms: 0,
            min_compaction_lag_ms: 0,
            min_cleanable_dirty_ratio: 0.0,
            map_bytes: compaction::DEFAULT_MAP_BYTES,
            segment_bytes: 4096,
        };
        let stats = p.compact(&policy, &AtomicBool::new(false)).unwrap();
        assert_eq!((stats.segments, stats.records_removed), (2, 2));
    }

    /// The bases of the time indexes in `dir`, and how many time indexes
    /// being saved are left there under their temporary name.
    fn time_indexes(dir: &Path) -> (Vec<i64>, usize) {
        let mut bases: Vec<i64> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".timeindex").and_then(|b| b.parse().ok())
            })
            .collect();
        bases.sort_unstable();
        (bases, files(dir, "timeindex-tmp"))
    }

    /// The time index of the segment at `base` in `dir`.
    fn time_index_at(dir: &Path, base: i64) -> crate::storage::time_index::TimeIndex {
        let raw = std::fs::read(dir.join(segment::time_index_name(base))).unwrap();
        crate::storage::time_index::TimeIndex::decode(&raw).unwrap()
    }

    /// A closed segment opened without a time index that holds (one from a
    /// broker that kept none, or whose time index was stale or could not be
    /// written) had all its batch headers read again after every restart:
    /// retention (and compaction's lag, and timestamp lookups) learned its
    /// newest timestamp and kept it only in memory. It is saved in the
    /// segment's time index now, with the batch holding it: after a restart
    /// nothing is read.
    #[test]
    fn what_retention_learns_by_reading_batch_headers_is_saved_for_the_next_start() {
        const DAY: i64 = 24 * 3600 * 1000;
        let three_days = Some(3 * DAY as u64);
        let (_dir, pdir, p) = opened_without_time_indexes();
        // One of them torn, as a crash may leave it: ignored, then replaced.
        drop(p);
        std::fs::write(pdir.join(segment::time_index_name(2)), b"torn").unwrap();
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert!(!p.log.lock().unwrap()[1].max_timestamp_is_exact());
        segment::MAX_TIMESTAMP_HEADERS_READ.with(|c| c.set(0));
        assert_eq!(
            p.apply_retention(6 * DAY, three_days, None).unwrap(),
            (0, 0)
        );
        assert_eq!(segment::MAX_TIMESTAMP_HEADERS_READ.with(|c| c.get()), 6);
        assert_eq!(time_indexes(&pdir), (vec![0, 2, 4], 0));
        drop(p);

        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(
            newest_timestamps(&p),
            [
                (0, true, 5 * DAY, Some(0)),
                (2, true, 5 * DAY, Some(2)),
                (4, true, 5 * DAY, Some(4)),
                (6, true, 5 * DAY, Some(6)),
            ]
        );
        segment::MAX_TIMESTAMP_HEADERS_READ.with(|c| c.set(0));
        assert_eq!(
            p.apply_retention(6 * DAY, three_days, None).unwrap(),
            (0, 0)
        );
        assert_eq!(
            segment::MAX_TIMESTAMP_HEADERS_READ.with(|c| c.get()),
            0,
            "batch headers read again after the restart"
        );
        // Day 9: everything goes, the time indexes with it.
        assert_eq!(p.apply_retention(9 * DAY, three_days, None).unwrap().0, 4);
        assert_eq!(time_indexes(&pdir), (vec![], 0));
    }

    /// A time index learned by reading is written outside the partition lock
    /// and renamed into place under it, so its segment may go in between:
    /// removed by DeleteRecords (or retention), replaced by a compaction's
    /// copy at the same base, or its topic deleted. None of them gets the time
    /// index written for the segment that went, a copy keeps its own, and no
    /// temporary file is left.
    #[test]
    fn a_time_index_is_saved_only_for_a_segment_still_there() {
        const DAY: i64 = 24 * 3600 * 1000;
        let three_days = Some(3 * DAY as u64);
        // Runs `f` once the next save of time indexes on this thread has
        // written them, before it puts them in place.
        let between_write_and_install = |p: &Arc<Partition>, f: fn(&Partition)| {
            let p = Arc::clone(p);
            BETWEEN_WRITE_AND_INSTALL.with(|b| *b.borrow_mut() = Some(Box::new(move || f(&p))));
        };
        let pass = |p: &Partition| {
            assert_eq!(
                p.apply_retention(6 * DAY, three_days, None).unwrap(),
                (0, 0)
            );
            assert!(BETWEEN_WRITE_AND_INSTALL.with(|b| b.borrow().is_none()));
        };

        let (_dir, pdir, p) = opened_without_time_indexes();
        between_write_and_install(&p, |p| assert_eq!(p.delete_records(2), Ok(2)));
        pass(&p);
        assert_eq!(time_indexes(&pdir), (vec![2, 4], 0));

        // Learned by a lookup this time: a retention pass would delete the
        // copy, whose records kept are of day 1.
        let (_dir, pdir, p) = opened_without_time_indexes();
        between_write_and_install(&p, compact_first_two);
        assert!(p.max_timestamp_offset().unwrap().is_some());
        assert!(BETWEEN_WRITE_AND_INSTALL.with(|b| b.borrow().is_none()));
        assert_eq!(time_indexes(&pdir), (vec![0, 4], 0));
        let copy = time_index_at(&pdir, 0);
        assert_eq!(
            (copy.next_offset, copy.log_size),
            (4, p.log.lock().unwrap()[0].size()),
            "the copy's own"
        );

        let (_dir, pdir, p) = opened_without_time_indexes();
        between_write_and_install(&p, Partition::mark_deleted);
        pass(&p);
        assert_eq!(time_indexes(&pdir), (vec![], 0));
    }

    /// `MAX_TIMESTAMP` as answered by reading every batch header of every
    /// segment: none skipped, no batch taken from what a segment knows.
    fn max_timestamp_reading_everything(p: &Partition) -> Option<(i64, i64)> {
        p.max_timestamp_by(false).unwrap()
    }

    /// `MAX_TIMESTAMP` read every batch header of the segment holding the
    /// newest timestamp, though its time index (or, for a segment written
    /// since the start, its appends) gives the batch holding it. Only that
    /// batch is read now, with the same answers as reading everything: the
    /// first record with the largest timestamp, the earliest segment's on a
    /// tie, at or above the log start (a batch holding it below the start has
    /// its segment read as before).
    #[test]
    fn max_timestamp_reads_only_the_batch_holding_the_newest_with_the_same_answers() {
        use crate::storage::batch::tests::make_timed_batch;
        const T: i64 = 1_700_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let open = || Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        let p = open();
        // Two batches of two records a segment (the records' timestamps, from
        // T): the newest in segment 0's last batch, its second record (offset
        // 3); segment 4 ties with it in its first batch; the last batch
        // alone in the active segment.
        let batches = [
            [5, 1],
            [40, 90],
            [90, 90],
            [20, 10],
            [30, 60],
            [60, 2],
            [70, 3],
        ];
        let value = [7u8; 900];
        let mut records = Vec::new();
        for (i, ts) in batches.iter().enumerate() {
            let base = store(
                &p,
                make_timed_batch(0, T, &[(ts[0], &value), (ts[1], &value)], -1, -1, -1),
            );
            assert_eq!(base, 2 * i as i64);
            records.extend([(base, T + ts[0]), (base + 1, T + ts[1])]);
        }
        let bases = segment_bases(&p);
        assert_eq!(bases, [0, 4, 8, 12]);
        // The first record with the largest timestamp at or above the log
        // start.
        let expected = |p: &Partition| {
            let start = p.log_start_offset();
            records
                .iter()
                .filter(|r| r.0 >= start)
                .fold(None, |best: Option<(i64, i64)>, &r| match best {
                    Some(b) if b.1 >= r.1 => Some(b),
                    _ => Some(r),
                })
        };
        // The answer, checked against both, and the headers it read.
        let answered = |p: &Partition| {
            HEADERS_READ.with(|c| c.set(0));
            let found = p.max_timestamp_offset().unwrap();
            let read = HEADERS_READ.with(|c| c.get());
            assert_eq!(found, expected(p));
            assert_eq!(found, max_timestamp_reading_everything(p));
            (found, read)
        };

        assert_eq!(answered(&p), (Some((3, T + 90)), 1), "as written");
        p.sync().unwrap();
        drop(p);
        let p = open();
        assert_eq!(
            answered(&p),
            (Some((3, T + 90)), 1),
            "from the time indexes"
        );

        // Without time indexes the closed segments are read once (and their
        // time indexes saved); then only the batch holding the newest is.
        drop(p);
        assert_eq!(remove_time_indexes(&pdir), 3);
        let p = open();
        HEADERS_READ.with(|c| c.set(0));
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((3, T + 90)));
        assert_eq!(HEADERS_READ.with(|c| c.get()), 6);
        assert_eq!(answered(&p), (Some((3, T + 90)), 1));

        // The log start inside segment 4's first batch, past the batch
        // holding its newest: that segment is read whole, as before.
        assert_eq!(p.delete_records(5), Ok(5));
        assert_eq!(answered(&p), (Some((5, T + 90)), 2));
        // Past it: segment 4 read whole finds only older batches, segment 8
        // is older than the active one, whose batch alone is read.
        assert_eq!(p.delete_records(6), Ok(6));
        assert_eq!(answered(&p), (Some((12, T + 70)), 3));
    }

    /// Files of a version this build does not write are not read as its own:
    /// a log start file is refused at open (it was read as version 1, a wrong
    /// log start), a producer snapshot ignored as any unreadable one.
    #[test]
    fn log_start_and_snapshot_files_of_an_unknown_version_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        drop(p);
        std::fs::write(
            pdir.join(LOG_START_FILE),
            r#"{"version":2,"log_start_offset":0}"#,
        )
        .unwrap();
        let e = Partition::open("t", 0, pdir.clone(), 1 << 20)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("unknown version 2")),
            "{e:?}"
        );
        let snapshot = |version: u32| {
            std::fs::write(
                pdir.join(segment::producers_name(5)),
                format!(r#"{{"version":{version},"below":5,"producers":[]}}"#),
            )
            .unwrap();
            load_snapshot(&pdir, 5).unwrap()
        };
        assert!(snapshot(1).is_some(), "version 1 is read");
        assert!(snapshot(2).is_none(), "version 2 is not");
    }

    /// DeleteRecords whose log start file was renamed into place but whose
    /// directory fsync then failed answered an error and kept serving the
    /// records, while the file held the new start: the next open deleted them.
    /// The deletion is in force at once now, and the answer says it may not
    /// survive a power loss. A failure before the rename changes nothing.
    #[test]
    fn delete_records_whose_directory_fsync_fails_is_in_force() {
        use crate::wal::files::{AtomicWriteFailure as Fail, INJECTED_ATOMIC_FAILURES};
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        for _ in 0..4 {
            produce(&p, &[b"r"]);
        }
        let fail = |f: Fail| INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(f));
        fail(Fail::BeforeRename);
        assert!(matches!(
            p.delete_records(1),
            Err(DeleteRecordsError::Storage(_))
        ));
        assert_eq!(p.log_start_offset(), 0, "nothing changed");
        fail(Fail::DirSync);
        match p.delete_records(2) {
            Err(DeleteRecordsError::Storage(why)) => assert!(why.contains("in force"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.log_start_offset(), 2);
        // Its retry changes nothing in memory, but is answered only once the
        // file is durable: it was answered NONE at once, and a power loss
        // could bring the old start back, and the deleted records with it.
        fail(Fail::DirSync);
        match p.delete_records(2) {
            Err(DeleteRecordsError::Storage(why)) => assert!(why.contains("power loss"), "{why}"),
            other => panic!("the retry: {other:?}"),
        }
        assert!(INJECTED_ATOMIC_FAILURES.with(|q| q.borrow().is_empty()));
        assert_eq!(p.delete_records(1), Ok(2), "stored durably");
        assert_eq!(p.delete_records(1), Ok(2));
        fail(Fail::BeforeRename);
        assert_eq!(p.delete_records(2), Ok(2), "nothing left to store");
        INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().clear());
        drop(p);
        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        assert_eq!(p.log_start_offset(), 2, "the file and the broker agree");
        // Failed again, then retried after a restart: the restart does not
        // make the rename durable, so the retry stores the file again too.
        fail(Fail::DirSync);
        assert!(matches!(
            p.delete_records(3),
            Err(DeleteRecordsError::Storage(_))
        ));
        drop(p);
        let p = Partition::open("t", 0, pdir, 1 << 20).unwrap();
        assert_eq!(p.log_start_offset(), 3);
        fail(Fail::DirSync);
        match p.delete_records(3) {
            Err(DeleteRecordsError::Storage(why)) => assert!(why.contains("power loss"), "{why}"),
            other => panic!("the retry after a restart: {other:?}"),
        }
        assert_eq!(p.delete_records(3), Ok(3));
    }

    /// Each segment's base, whether its newest timestamp is known exactly, that
    /// timestamp, and the batch holding it.
    fn newest_timestamps(p: &Partition) -> Vec<(i64, bool, i64, Option<i64>)> {
        p.log
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s.base_offset(),
                    s.max_timestamp_is_exact(),
                    s.max_timestamp(),
                    s.max_timestamp_offset(),
                )
            })
            .collect()
    }

    /// Batch index entries copied by clones on this thread, and batch headers
    /// read by timestamp lookups, since the last call.
    fn copied_and_read() -> (u64, u64) {
        (
            segment::INDEX_ENTRIES_COPIED.with(|c| c.replace(0)),
            HEADERS_READ.with(|c| c.replace(0)),
        )
    }

    /// ListOffsets by timestamp and `MAX_TIMESTAMP` copied every segment's
    /// batch positions under the partition lock, stalling appends for as long
    /// on a large partition, and then read every batch header before the ones
    /// they wanted. They now share the indexes (a few pointers per segment
    /// under the lock), skip segments whose newest timestamp says they cannot
    /// hold the answer, and learn that of a segment opened from its index by
    /// reading it once, saving it in the segment's time index for the next
    /// start; `MAX_TIMESTAMP` reads only the batch holding the newest
    /// timestamp when that is known. An append while a lookup holds the
    /// indexes copies at most the active index's tail.
    #[test]
    fn timestamp_lookups_copy_no_index_under_the_lock_and_skip_older_segments() {
        const T: i64 = 1_700_000_000_000;
        const N: i64 = 6000;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let open = || Partition::open("t", 0, pdir.clone(), 100_000).unwrap();
        let p = open();
        for k in 0..N {
            assert_eq!(store(&p, with_timestamp(make_batch(0, &[b"v"]), T + k)), k);
        }
        let bases = segment_bases(&p);
        assert!(bases.len() >= 4, "{bases:?}");
        let target = N - 10;
        let holding = *bases.iter().rev().find(|&&b| b <= target).unwrap();
        let last = *bases.last().unwrap();
        let lookups = |p: &Partition| {
            assert_eq!(
                p.offset_for_timestamp(T + target).unwrap(),
                Some((target, T + target))
            );
            let by_time = copied_and_read();
            assert_eq!(p.max_timestamp_offset().unwrap(), Some((N - 1, T + N - 1)));
            (by_time, copied_and_read())
        };

        copied_and_read();
        let (by_time, max) = lookups(&p);
        assert_eq!(by_time, (0, (target - holding + 1) as u64));
        assert_eq!(max, (0, 1), "only the batch holding the newest");

        // Reopened, the older segments' time indexes give their newest
        // timestamps: the first lookups skip them already.
        p.sync().unwrap();
        drop(p);
        let p = open();
        assert_eq!(lookups(&p), ((0, (target - holding + 1) as u64), (0, 1)));
        // Opened from their indexes alone (a directory from before time
        // indexes), the older segments' newest timestamps are not known: the
        // first lookups read them, the next ones skip them.
        drop(p);
        assert_eq!(remove_time_indexes(&pdir), bases.len() - 1);
        let p = open();
        let (by_time, _) = lookups(&p);
        assert_eq!(by_time, (0, (target + 1) as u64));
        assert_eq!(lookups(&p), ((0, (target - holding + 1) as u64), (0, 1)));
        // What they learned is saved: after a restart it is known.
        assert_eq!(files(&pdir, "timeindex"), bases.len() - 1);
        drop(p);
        let p = open();
        assert!(p
            .log
            .lock()
            .unwrap()
            .iter()
            .all(Segment::max_timestamp_is_exact));
        assert_eq!(lookups(&p), ((0, (target - holding + 1) as u64), (0, 1)));

        // An append while a lookup holds the indexes.
        let mut appended = false;
        p.visit_batches(
            false,
            |_, _| false,
            |_, _, _, _, _| {
                store(&p, with_timestamp(make_batch(0, &[b"v"]), T + N));
                appended = true;
                Ok(true)
            },
        )
        .unwrap();
        assert!(appended);
        let active = (N - last) as u64;
        let (copied, _) = copied_and_read();
        assert!(
            copied > 0
                && copied <= active / segment::INDEX_CHUNK as u64 + segment::INDEX_CHUNK as u64,
            "{copied} of {active} entries copied"
        );
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((N, T + N)));

        // A compaction pass shares the closed segments' indexes too.
        copied_and_read();
        let policy = CompactionPolicy {
            now_ms: T + N,
            delete_retention_ms: 0,
            min_compaction_lag_ms: 0,
            min_cleanable_dirty_ratio: 0.0,
            map_bytes: compaction::DEFAULT_MAP_BYTES,
            segment_bytes: 100_000,
        };
        let stats = p.compact(&policy, &AtomicBool::new(false)).unwrap();
        assert_eq!(stats.records_removed, last as u64, "keyless records go");
        assert_eq!(copied_and_read().0, 0);
    }

    /// A batch with no records (what compaction leaves, without a timestamp)
    /// counted as holding the partition's largest timestamp when no record
    /// had a newer one than -1, and `MAX_TIMESTAMP` answered its last offset,
    /// where no record is, instead of the first record without a timestamp
    /// after it, or of no offset at all (as Kafka answers) when none follows.
    #[test]
    fn max_timestamp_passes_over_batches_without_records() {
        use crate::storage::batch::{empty_batch, tests::make_timed_batch, NO_TIMESTAMP};
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open("t", 0, dir.path().join("0"), 4096).unwrap();
        // As compaction writes them: validation refuses a produced batch
        // without records (or whose header states another timestamp).
        let written = |p: &Partition, mut b: Vec<u8>| {
            let info = [batch::parse_header(&b).unwrap()];
            let base = p.assign(&mut b, &info);
            // As stored: the base offset assigned.
            let info = [batch::parse_header(&b).unwrap()];
            p.set_high_watermark(p.append(&b, &info).unwrap());
            base
        };
        assert_eq!(written(&p, empty_batch(0, 1, NO_TIMESTAMP)), 0);
        assert_eq!(p.max_timestamp_offset().unwrap(), None);
        assert_eq!(max_timestamp_reading_everything(&p), None);
        let untimed = make_timed_batch(0, NO_TIMESTAMP, &[(0, b"a"), (0, b"b")], -1, -1, -1);
        assert_eq!(store(&p, untimed), 2);
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((2, NO_TIMESTAMP)));
        assert_eq!(
            max_timestamp_reading_everything(&p),
            Some((2, NO_TIMESTAMP))
        );
        // From what a start reads.
        p.sync().unwrap();
        drop(p);
        let p = Partition::open("t", 0, dir.path().join("0"), 4096).unwrap();
        p.set_high_watermark(p.log_end_offset());
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((2, NO_TIMESTAMP)));
        let timed = make_timed_batch(0, 1_700_000_000_000, &[(0, b"c")], -1, -1, -1);
        assert_eq!(store(&p, timed), 4);
        assert_eq!(
            p.max_timestamp_offset().unwrap(),
            Some((4, 1_700_000_000_000))
        );

        // As a build before entry 136's fix compacted: an emptied run with
        // the timestamp of the batches it replaced, and a batch keeping a
        // record older than its header says. Their records are answered.
        let p = Partition::open("t", 1, dir.path().join("1"), 4096).unwrap();
        const T: i64 = 1_700_000_000_000;
        assert_eq!(written(&p, empty_batch(0, 1, T + 900)), 0);
        let mut stale = make_timed_batch(0, T, &[(100, b"a"), (200, b"b")], -1, -1, -1);
        // The header's largest timestamp (Kafka's v2 layout: bytes 35-42).
        stale[35..43].copy_from_slice(&(T + 500).to_be_bytes());
        assert_eq!(written(&p, stale), 2);
        assert_eq!(max_timestamp_reading_everything(&p), Some((3, T + 200)));
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((3, T + 200)));
        assert_eq!(
            store(&p, make_timed_batch(0, T, &[(50, b"c")], -1, -1, -1)),
            4
        );
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((3, T + 200)));
    }

    /// A log start inside a batch: `MAX_TIMESTAMP` is the largest among the
    /// records still there. The batch's header named a deleted record's
    /// timestamp, and the answer was the batch's last offset with it (a
    /// timestamp no served record has).
    #[test]
    fn max_timestamp_leaves_out_records_below_a_start_inside_a_batch() {
        use crate::storage::batch::tests::make_timed_batch;
        const T: i64 = 1_700_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open("t", 0, dir.path().join("0"), 1 << 20).unwrap();
        let v: &[u8] = b"v";
        let first = make_timed_batch(0, T, &[(500, v), (100, v), (100, v)], -1, -1, -1);
        assert_eq!(store(&p, first), 0);
        assert_eq!(
            store(&p, make_timed_batch(0, T, &[(300, v)], -1, -1, -1)),
            3
        );
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((0, T + 500)));
        assert_eq!(p.delete_records(1).unwrap(), 1);
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((3, T + 300)));
        assert_eq!(max_timestamp_reading_everything(&p), Some((3, T + 300)));
        assert_eq!(p.delete_records(3).unwrap(), 3);
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((3, T + 300)));
    }

    /// A segment's newest timestamp may be a batch's below the log start,
    /// which no lookup answers: it never lets a lookup skip another segment.
    #[test]
    fn a_timestamp_below_the_log_start_skips_no_segment() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open("t", 0, dir.path().join("0"), 4096).unwrap();
        for (k, ts) in [100, 10, 50, 5, 20].into_iter().enumerate() {
            assert_eq!(produce_at(&p, ts, 1500), k as i64);
        }
        assert_eq!(p.log.lock().unwrap().len(), 3);
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((0, 100)));
        assert_eq!(p.delete_records(1).unwrap(), 1);
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((2, 50)));
        assert_eq!(p.offset_for_timestamp(40).unwrap(), Some((2, 50)));
        assert_eq!(p.offset_for_timestamp(101).unwrap(), None);
    }

    /// Eight batches of 1500 bytes, two a segment (the fourth segment
    /// active): batch `i` at offset `i` and timestamp `T + i`, but batch 3 at
    /// `T + 100`, the newest.
    fn two_a_segment(t: i64) -> (tempfile::TempDir, PathBuf, Arc<Partition>) {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Arc::new(Partition::open("t", 0, pdir.clone(), 4096).unwrap());
        for i in 0..8 {
            let ts = if i == 3 { t + 100 } else { t + i };
            assert_eq!(produce_at(&p, ts, 1500), i);
        }
        assert_eq!(p.log.lock().unwrap().len(), 4);
        (dir, pdir, p)
    }

    /// Runs `f` on `p` once the next timestamp lookup on this thread has taken
    /// its view of the segments, before it reads them.
    fn between_view_and_read(p: &Arc<Partition>, f: impl FnOnce(&Partition) + 'static) {
        let p = Arc::clone(p);
        BETWEEN_VIEW_AND_READ.with(|b| *b.borrow_mut() = Some(Box::new(move || f(&p))));
    }

    /// A timestamp lookup reads the segments outside the partition lock, from
    /// the log start it saw when it took them. DeleteRecords or retention
    /// moving the start meanwhile made it answer an offset below the new
    /// start, or (`MAX_TIMESTAMP`, whose segment holding the newest record
    /// was deleted after the others were skipped as older) no offset at all.
    /// A lookup during which the log start moved now starts over.
    #[test]
    fn a_timestamp_lookup_never_answers_below_a_log_start_moved_meanwhile() {
        const T: i64 = 1_700_000_000_000;
        let (_dir, _, p) = two_a_segment(T);
        // DeleteRecords inside the first segment: nothing removed.
        between_view_and_read(&p, |p| assert_eq!(p.delete_records(1), Ok(1)));
        assert_eq!(p.offset_for_timestamp(T).unwrap(), Some((1, T + 1)));
        // DeleteRecords removing the first segment.
        between_view_and_read(&p, |p| assert_eq!(p.delete_records(3), Ok(3)));
        assert_eq!(p.offset_for_timestamp(T + 1).unwrap(), Some((3, T + 100)));
        // Retention by size removing the segment of the newest record, for
        // which the later segments were skipped as older.
        let (_dir, _, p) = two_a_segment(T);
        between_view_and_read(&p, |p| {
            let keep: u64 = p.log.lock().unwrap()[2..].iter().map(Segment::size).sum();
            assert_eq!(p.apply_retention(0, None, Some(keep)).unwrap().0, 2);
            assert_eq!(p.log_start_offset(), 4);
        });
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((7, T + 7)));
    }

    /// A lookup interrupted again and again gives up after a few tries with
    /// an error naming the partition, never an answer below the log start;
    /// one that a change interrupted fewer times answers. A log gone from a
    /// partition whose segments did not change is an error at once.
    #[test]
    fn a_timestamp_lookup_interrupted_at_each_try_fails_and_a_missing_log_is_an_error() {
        const T: i64 = 1_700_000_000_000;
        /// Moves the log start one offset on at each of the next `n` lookups'
        /// views.
        fn move_start_at_each_view(p: &Arc<Partition>, n: u32) {
            if n == 0 {
                return;
            }
            let again = Arc::clone(p);
            between_view_and_read(p, move |p| {
                let start = p.log_start_offset();
                assert_eq!(p.delete_records(start + 1), Ok(start + 1));
                move_start_at_each_view(&again, n - 1);
            });
        }
        let ts_of = |i: i64| if i == 3 { T + 100 } else { T + i };
        let (_dir, pdir, p) = two_a_segment(T);
        move_start_at_each_view(&p, LOOKUP_TRIES - 1);
        let start = i64::from(LOOKUP_TRIES - 1);
        assert_eq!(
            p.offset_for_timestamp(T).unwrap(),
            Some((start, ts_of(start)))
        );
        move_start_at_each_view(&p, LOOKUP_TRIES);
        let e = p.offset_for_timestamp(T).unwrap_err().to_string();
        assert!(e.contains(pdir.to_str().unwrap()), "{e}");
        BETWEEN_VIEW_AND_READ.with(|b| assert!(b.borrow().is_none(), "fewer tries"));
        assert_eq!(p.log_start_offset(), 2 * start + 1);

        let (_dir, pdir, p) = two_a_segment(T);
        let log = pdir.join(segment::log_name(0));
        std::fs::remove_file(&log).unwrap();
        let e = p.offset_for_timestamp(T).unwrap_err().to_string();
        assert!(
            e.contains("open") && e.contains(log.to_str().unwrap()),
            "{e}"
        );
        assert_eq!(p.offset_for_timestamp(T + 2).unwrap(), Some((2, T + 2)));
    }

    /// Retention and DeleteRecords removed the only snapshot that knew a
    /// producer: the newest segment's had been emptied by a power loss (and
    /// removed at the open), and the trim synced the snapshots of the
    /// segments it kept without checking that one existed. A restart then
    /// took a retry of the producer's batch for a new one (stored twice).
    /// As a compaction merge does, the trim now writes the missing snapshot
    /// and removes nothing until one is durable.
    #[test]
    fn a_trim_writes_a_missing_snapshot_before_removing_the_only_one_knowing_a_producer() {
        use crate::storage::producers::Verdict;
        for by_retention in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let pdir = dir.path().join("0");
            let (p, first, n) = producer_seven_far_back(&pdir);
            assert_eq!(roll_with(&p, keyed(b"s3", -1, -1)), n + 2);
            let lost = snapshots_not_fsynced();
            let newest = pdir.join(segment::producers_name(n + 2));
            assert!(lost.contains(&newest));
            drop(p);
            power_loss_empties(&lost);
            let p = Partition::open("t", 0, pdir.clone(), 1 << 30).unwrap();
            p.set_high_watermark(p.log_end_offset());
            assert!(!newest.exists());
            p.sync().unwrap();
            p.drop_snapshots_below(p.log_end_offset());
            assert_eq!(
                p.producers().check(&validate_all(&first).unwrap()),
                Ok(Verdict::Duplicate(0)),
                "known after the first restart"
            );
            if by_retention {
                // retention.bytes keeping only the active segment
                let (segs, _) = p.apply_retention(segment::now_ms(), None, Some(1)).unwrap();
                assert_eq!(segs, 2);
            } else {
                assert_eq!(p.delete_records(n + 2), Ok(n + 2));
            }
            assert_eq!(segment_bases(&p), [n + 2]);
            drop(p);
            let p = Partition::open("t", 0, pdir.clone(), 1 << 30).unwrap();
            assert_eq!(
                p.producers().check(&validate_all(&first).unwrap()),
                Ok(Verdict::Duplicate(0)),
                "by retention: {by_retention}: the trim removed the only snapshot knowing producer 7"
            );
        }
    }

    /// After a failed sync of the partition, retention that would take the
    /// active segment too keeps it (no sync proves it durable any more) and
    /// still deletes the closed segments before it. Before, the pass freed
    /// nothing until a restart.
    #[test]
    fn after_a_failed_sync_retention_keeps_the_active_segment_and_deletes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        // 3000-byte batches in 4 KiB segments: one batch per segment.
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        for k in 1..=3 {
            produce_at(&p, k, 3000);
        }
        p.set_high_watermark(3);
        assert_eq!(files(&pdir, "log"), 3);
        p.sync_failed.get_or_init(|| "injected".into());
        let (n, _) = p.apply_retention(0, None, Some(0)).unwrap();
        assert_eq!(n, 2, "the closed segments");
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (2, 3));
        assert_eq!(files(&pdir, "log"), 1);
    }

    /// A log start offset raised by damage hid the records below it, and
    /// retention deleted them; the file carries a checksum now, and one it
    /// does not match is refused. A file without one loads unchecked.
    #[test]
    fn a_damaged_log_start_offset_is_refused_by_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        store_log_start(dir.path(), 500).unwrap();
        let path = dir.path().join(LOG_START_FILE);
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(v["crc32c"].is_u64(), "{v}");
        v["log_start_offset"] = 900.into();
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = load_log_start(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains(LOG_START_FILE),
            "{e}"
        );
        v.as_object_mut().unwrap().remove("crc32c");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(load_log_start(dir.path()).unwrap(), 900);
    }

    /// An older segment's index is trusted at open on its first and last
    /// entries: a position damaged in between made a fetch from that offset
    /// start inside a batch (a corrupt batch for the client). The time index
    /// records the index's checksum for the same log: an index that differs
    /// is now rebuilt from the log.
    #[test]
    fn a_damaged_index_entry_is_rebuilt_when_the_time_index_tells() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        for k in 0..40 {
            assert_eq!(produce_at(&p, k + 1, 200), k);
        }
        p.sync().unwrap();
        drop(p);
        let index = pdir.join(segment::index_name(0));
        assert!(pdir.join(segment::time_index_name(0)).exists());
        let good = std::fs::read(&index).unwrap();
        assert!(good.len() >= 3 * 8, "{} entries", good.len() / 8);
        // The second entry's position 8 bytes on: still in order.
        let mut bad = good.clone();
        let pos = u32::from_be_bytes(bad[12..16].try_into().unwrap()) + 8;
        bad[12..16].copy_from_slice(&pos.to_be_bytes());
        std::fs::write(&index, &bad).unwrap();
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        let read = p.read(1, 1 << 20).unwrap().unwrap();
        let got = validate_all(&read.records).unwrap();
        assert_eq!(got[0].base_offset, 1, "the fetch starts at the batch");
        assert_eq!(std::fs::read(&index).unwrap(), good, "the index rebuilt");
        // The rebuild reads every batch from nothing: the batch holding the
        // newest timestamp is known again. The open from the index had set
        // the newest already, from the last batch, so the scan never found
        // a newer one and the holder stayed unknown (-1): the time index
        // saved from that was stale at every later start.
        let (newest, holder) = {
            let log = p.log.lock().unwrap();
            let first = &log[0];
            (first.max_timestamp(), first.max_timestamp_offset())
        };
        let last_of_first = p.log.lock().unwrap()[1].base_offset() - 1;
        assert_eq!(
            (newest, holder),
            (last_of_first + 1, Some(last_of_first)),
            "timestamps k + 1, ascending"
        );
    }

    /// Files named like segments but not as segments are named (`7.log`,
    /// `+7.log`, `-1.log`, `0.log`, `50.log`: a copy, a hand edit) were read
    /// as segments at the base their number gave: one inside the log sent
    /// the start round the empty-segment cleanup forever (a stack overflow),
    /// `0.log` refused the start naming the real segment, `50.log` made the
    /// log end jump to 50. They are ignored, and left where they are.
    #[test]
    fn stray_files_named_like_segments_are_not_read_as_segments() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        for k in 0..10 {
            assert_eq!(produce_at(&p, k + 1, 100), k);
        }
        p.sync().unwrap();
        drop(p);
        let strays = [
            "7.log",
            "+7.log",
            "-1.log",
            "0.log",
            "50.log",
            "7.producers",
            "7.timeindex",
        ];
        for name in strays {
            std::fs::write(pdir.join(name), b"").unwrap();
        }
        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (0, 10));
        assert_eq!(p.log.lock().unwrap().len(), 1);
        for name in strays {
            assert!(pdir.join(name).exists(), "{name} left where it is");
        }
        for base in [7, 50] {
            assert!(!pdir.join(format!("{base:020}.log")).exists());
        }
    }

    /// Retention that took the active segment out of the log did not fsync
    /// it: a checkpoint between its leaving the log and its unlink counted its
    /// records as durable, and a power loss before the unlink was durable
    /// brought it back torn below the recovery point.
    #[test]
    fn retention_syncs_the_active_segment_before_it_leaves_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        produce_at(&p, 1, 100);
        produce_at(&p, 2, 100);
        p.set_high_watermark(2);
        let active = pdir.join(format!("{:020}.log", 0));
        assert!(active.exists());
        crate::storage::segment::SYNCED_LOGS.with(|s| s.borrow_mut().clear());
        let synced_before_removes = std::rc::Rc::new(std::cell::Cell::new(false));
        let seen = std::rc::Rc::clone(&synced_before_removes);
        let path = active.clone();
        BEFORE_TRIM_REMOVES.with(|b| {
            *b.borrow_mut() = Some(Box::new(move || {
                seen.set(crate::storage::segment::SYNCED_LOGS.with(|s| s.borrow().contains(&path)));
            }));
        });
        assert_eq!(p.apply_retention(0, None, Some(0)).unwrap().0, 1);
        assert!(!active.exists());
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (2, 2));
        assert!(
            synced_before_removes.get(),
            "the active segment was fsynced before its files were removed"
        );
    }

    #[test]
    fn retention_deletes_the_oldest_segments_by_age_and_size_and_the_active_one_once_readable() {
        const DAY: i64 = 24 * 3600 * 1000;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        // 3000-byte batches in 4 KiB segments: one batch per segment.
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        for k in 1..=6 {
            assert_eq!(produce_at(&p, k * DAY, 3000), k - 1);
        }
        assert_eq!(files(&pdir, "log"), 6);
        let seg = p.log.lock().unwrap()[0].size();

        // Age: records of days 1 and 2 are older than 3.5 days at day 6.
        let (n, bytes) = p
            .apply_retention(6 * DAY + 1, Some((DAY * 7 / 2) as u64), None)
            .unwrap();
        assert_eq!((n, bytes), (2, 2 * seg));
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (2, 6));
        assert!(p.read(1, 1 << 20).unwrap().is_none(), "below the log start");
        let r = p.read(2, seg).unwrap().unwrap();
        assert_eq!((r.log_start_offset, r.records.len() as u64), (2, seg));
        assert_eq!((files(&pdir, "log"), files(&pdir, "index")), (4, 4));
        assert_eq!(
            p.apply_retention(6 * DAY + 1, Some((DAY * 7 / 2) as u64), None)
                .unwrap(),
            (0, 0),
            "nothing more is that old"
        );

        // Size: the oldest go while the rest is still at least 2 segments.
        assert_eq!(
            p.apply_retention(0, None, Some(2 * seg)).unwrap(),
            (2, 2 * seg)
        );
        assert_eq!(p.log_start_offset(), 4);

        // The active segment is kept while a batch in it is above the high
        // watermark (not yet readable, so maybe not yet durable)...
        p.set_high_watermark(5);
        assert_eq!(p.apply_retention(100 * DAY, Some(1), None).unwrap().0, 1);
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (5, 6));
        assert_eq!(files(&pdir, "log"), 1);
        // ... and goes once it is all readable: an empty segment at the log end
        // takes its place, so the offsets go on.
        p.set_high_watermark(6);
        assert_eq!(
            p.apply_retention(100 * DAY, Some(1), None).unwrap(),
            (1, seg)
        );
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (6, 6));
        assert_eq!(files(&pdir, "log"), 1);
        assert!(p.read(5, 1 << 20).unwrap().is_none(), "below the log start");
        assert!(p.read(6, 1 << 20).unwrap().unwrap().records.is_empty());
        assert_eq!(
            p.apply_retention(100 * DAY, Some(1), Some(0)).unwrap(),
            (0, 0),
            "an empty active segment stays"
        );
        drop(p);
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (6, 6));
        assert_eq!(produce_at(&p, 101 * DAY, 10), 6);
        assert_eq!(produce_at(&p, 101 * DAY, 10), 7);

        // By size alone the active segment goes too (retention.bytes 0).
        assert_eq!(p.apply_retention(0, None, Some(0)).unwrap().0, 1);
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (8, 8));
        drop(p);
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (8, 8));
        assert_eq!(files(&pdir, "log"), 1);
    }

    #[test]
    fn delete_records_moves_the_log_start_durably_and_deletes_what_lies_below() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        // 3000-byte batches of 2 records in 4 KiB segments: one batch per segment.
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        let big = vec![3u8; 1500];
        for k in 0..4 {
            assert_eq!(
                store(&p, with_timestamp(make_batch(0, &[&big, &big]), k)),
                2 * k
            );
        }
        assert_eq!(p.log_end_offset(), 8);
        p.set_high_watermark(7);
        assert_eq!(
            p.delete_records(8),
            Err(DeleteRecordsError::OutOfRange {
                offset: 8,
                high_watermark: 7
            })
        );
        assert!(p.delete_records(-2).is_err());
        assert_eq!(p.log_start_offset(), 0, "refusals change nothing");

        // Into the second batch: the first segment goes, offset 2 is no longer served.
        assert_eq!(p.delete_records(3), Ok(3));
        assert_eq!(files(&pdir, "log"), 3);
        assert!(p.read(2, 1 << 20).unwrap().is_none());
        let r = p.read(3, 1 << 20).unwrap().unwrap();
        assert_eq!(r.log_start_offset, 3);
        assert_eq!(
            validate_all(&r.records).unwrap()[0].base_offset,
            2,
            "whole batches"
        );
        assert_eq!(
            p.offset_for_timestamp(0).unwrap(),
            Some((3, 1)),
            "nothing deleted is found"
        );
        assert_eq!(p.offset_for_timestamp(2).unwrap(), Some((4, 2)));
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((6, 3)));
        assert_eq!(p.delete_records(1), Ok(3), "the start never goes back");

        drop(p);
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(
            (p.log_start_offset(), p.log_end_offset()),
            (3, 8),
            "kept across a reopen"
        );
        assert!(p.read(2, 1 << 20).unwrap().is_none());

        // -1: up to the high watermark; with everything readable the active segment
        // goes as well, and appends go on at the next offset.
        assert_eq!(p.delete_records(-1), Ok(8));
        assert_eq!(files(&pdir, "log"), 1);
        assert_eq!(store(&p, make_batch(0, &[b"after"])), 8);
        drop(p);
        let p = Partition::open("t", 0, pdir, 4096).unwrap();
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (8, 9));
        assert_eq!(p.read(8, 1 << 20).unwrap().unwrap().log_start_offset, 8);
    }

    #[test]
    fn the_active_segment_rolls_once_records_are_segment_ms_newer_than_its_first() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        p.set_segment_ms(1000);
        let at = |p: &Partition, ts: i64| store(p, with_timestamp(make_batch(0, &[b"v"]), ts));
        let t0 = 1_700_000_000_000;
        at(&p, t0);
        at(&p, t0 + 1000);
        assert_eq!(files(&pdir, "log"), 1, "not more than segment.ms newer");
        // Producer clocks, not the wall clock: a record older than the first does
        // not roll, one more than a second newer does.
        at(&p, t0 - 5000);
        assert_eq!(files(&pdir, "log"), 1);
        assert_eq!(at(&p, t0 + 1001), 3);
        assert_eq!(files(&pdir, "log"), 2);
        at(&p, t0 + 1500);
        assert_eq!(
            files(&pdir, "log"),
            2,
            "the new segment counts from its own first batch"
        );
        drop(p);
        // After a reopen the newest segment's first batch is known again.
        let p = Partition::open("t", 0, pdir.clone(), 1 << 20).unwrap();
        p.set_segment_ms(1000);
        at(&p, t0 + 2000);
        assert_eq!(files(&pdir, "log"), 2);
        at(&p, t0 + 2002);
        assert_eq!(files(&pdir, "log"), 3);
        assert_eq!(p.log_end_offset(), 7);
        // Never without a limit: the partition's default until one is set.
        let q = Partition::open("t", 1, dir.path().join("1"), 1 << 20).unwrap();
        at(&q, 0);
        at(&q, i64::MAX / 2);
        assert_eq!(files(&dir.path().join("1"), "log"), 1);
    }

    /// An orphan snapshot (its segment gone) is never read: one that cannot
    /// be removed at open is logged, not a reason to refuse the partition.
    #[test]
    fn an_orphan_snapshot_that_cannot_be_removed_does_not_stop_the_open() {
        let tmp = tempfile::tempdir().unwrap();
        let pdir = tmp.path().join("t-0");
        drop(Partition::open("t", 0, pdir.clone(), 4096).unwrap());
        let orphan = pdir.join(segment::producers_name(10_000));
        std::fs::create_dir(&orphan).unwrap();
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(p.log_end_offset(), 0);
        assert!(orphan.is_dir());
    }

    /// A power loss takes the producer snapshots written since the last
    /// checkpoint (renamed into place, not fsynced: empty after the restart),
    /// while their segments are durable. A start that found the newest
    /// snapshot unreadable knew only the previous segment's last batches: a
    /// producer seen before them was unknown, and its retry was appended
    /// again. It now starts from the newest readable snapshot and reads every
    /// batch after it.
    #[test]
    fn producers_are_known_from_the_newest_readable_snapshot_when_later_ones_are_lost() {
        use crate::storage::{batch::tests, producers::Verdict};
        let make_producer_batch = |values: &[&[u8]], pid, seq| {
            tests::with_timestamp(
                tests::make_producer_batch(0, values, pid, 0, seq),
                segment::now_ms(),
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let record = |p: &Partition, b: Vec<u8>| {
            let mut infos = validate_all(&b).unwrap();
            infos[0].base_offset = store(p, b);
            p.producers().record(&infos);
            infos[0].base_offset
        };
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        let first = make_producer_batch(&[b"once"], 7, 0);
        assert_eq!(record(&p, first.clone()), 0);
        // [once, big 0], [big 1], [big 2], [big 3]; the checkpoint's sync
        // fsyncs the newest snapshot (4) and drops the older ones.
        for k in 0..4 {
            record(&p, make_producer_batch(&[&[1u8; 3000]], 8, k));
        }
        p.sync().unwrap();
        // [big 4], [big 5]: snapshots 5 and 6, not fsynced.
        let last = make_producer_batch(&[&[1u8; 3000]], 8, 5);
        record(&p, make_producer_batch(&[&[1u8; 3000]], 8, 4));
        assert_eq!(record(&p, last.clone()), 6);
        assert_eq!(files(&pdir, "log"), 6);
        drop(p);
        for base in [5, 6] {
            std::fs::write(pdir.join(segment::producers_name(base)), b"").unwrap();
        }
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        let check = |b: &[u8]| p.producers().check(&validate_all(b).unwrap());
        assert_eq!(check(&first), Ok(Verdict::Duplicate(0)));
        assert_eq!(check(&last), Ok(Verdict::Duplicate(6)));
        assert_eq!(p.producers().len(), 2);
    }

    /// Models a power loss for the producer snapshots in `lost` (those renamed
    /// into place on this thread and not fsynced by then): with ext4's delayed
    /// allocation their renames survive and their contents do not.
    fn power_loss_empties(lost: &BTreeSet<PathBuf>) {
        for path in lost {
            if path.exists() {
                std::fs::write(path, b"").unwrap();
            }
        }
    }

    /// The producer snapshot files renamed into place on this thread and not
    /// fsynced since.
    fn snapshots_not_fsynced() -> BTreeSet<PathBuf> {
        SNAPSHOTS_NOT_FSYNCED.with(|s| s.borrow().clone())
    }

    /// A retention pass that deletes the active segment rolls first, writing
    /// the new segment's producer snapshot, then removes the old segments
    /// (their snapshots with them) and fsyncs the directory. The snapshot was
    /// not fsynced: a power loss before the next checkpoint emptied it, and
    /// the partition started with no producer, no older snapshot or segment
    /// left to read them from. A retry of a batch stored before the roll was
    /// stored again. The snapshot is now fsynced before any segment goes.
    #[test]
    fn a_retention_roll_makes_its_producer_snapshot_durable_before_the_old_segments_go() {
        use crate::storage::{batch::tests, producers::Verdict};
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        let first = tests::with_timestamp(
            tests::make_producer_batch(0, &[b"once"], 7, 0, 0),
            segment::now_ms() - 10_000,
        );
        let mut infos = validate_all(&first).unwrap();
        infos[0].base_offset = store(&p, first.clone());
        p.producers().record(&infos);
        p.sync().unwrap();
        p.set_high_watermark(1);
        // What a power loss takes at the moment the old segments' files go.
        let lost = std::rc::Rc::new(std::cell::RefCell::new(None));
        BEFORE_TRIM_REMOVES.with(|b| {
            let lost = std::rc::Rc::clone(&lost);
            *b.borrow_mut() = Some(Box::new(move || {
                *lost.borrow_mut() = Some(snapshots_not_fsynced());
            }));
        });
        assert_eq!(
            p.apply_retention(segment::now_ms(), Some(0), None)
                .unwrap()
                .0,
            1
        );
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (1, 1));
        assert!(!pdir.join(segment::log_name(0)).exists());
        let snapshot = pdir.join(segment::producers_name(1));
        assert!(snapshot.exists());
        let lost = lost.borrow_mut().take().expect("the trim removed segments");
        drop(p);
        power_loss_empties(&lost);

        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(
            p.producers().check(&validate_all(&first).unwrap()),
            Ok(Verdict::Duplicate(0)),
            "snapshots not fsynced when the old segments went: {lost:?}"
        );
    }

    /// Linux reports a failed write-back to one fsync only: the next fsync of
    /// the same file succeeds with the data maybe gone. A producer snapshot
    /// whose fsync failed at one checkpoint was counted durable at the next,
    /// and retention then deleted the older segments, the only other record
    /// of its producers: after a power loss a retried batch was stored again.
    /// Such a snapshot is now written again as a new file, whose fsync counts
    /// (from what reads back, or, with `pages_dropped`, from the producers
    /// known now). A snapshot whose write failed (no file at all) counted
    /// as durable at the next checkpoint, which found it missing: it is now
    /// marked failed as well, and written from the producers known now
    /// (`write_failed`; that case loses the producer at a plain restart).
    #[test]
    fn a_producer_snapshot_whose_fsync_failed_is_written_again_before_it_counts() {
        use crate::storage::{batch::tests, producers::Verdict};
        for (pages_dropped, write_failed) in [(false, false), (true, false), (false, true)] {
            let make_producer_batch = |values: &[&[u8]], pid, seq| {
                tests::with_timestamp(
                    tests::make_producer_batch(0, values, pid, 0, seq),
                    segment::now_ms(),
                )
            };
            let dir = tempfile::tempdir().unwrap();
            let pdir = dir.path().join("0");
            let record = |p: &Partition, b: Vec<u8>| {
                let mut infos = validate_all(&b).unwrap();
                infos[0].base_offset = store(p, b);
                p.producers().record(&infos);
                infos[0].base_offset
            };
            let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
            let first = make_producer_batch(&[b"once"], 7, 0);
            assert_eq!(record(&p, first.clone()), 0);
            // [once, big 0], [big 1]: snapshot 2 knows producer 7.
            let snapshot = pdir.join(segment::producers_name(2));
            if write_failed {
                FAIL_SNAPSHOT_WRITE.with(|f| f.borrow_mut().insert(snapshot.clone()));
            }
            for k in 0..2 {
                record(&p, make_producer_batch(&[&[1u8; 3000]], 8, k));
            }
            assert_eq!(snapshot.exists(), !write_failed);
            if !write_failed {
                FAIL_SNAPSHOT_FSYNC.with(|f| f.borrow_mut().insert(snapshot.clone()));
            }
            p.sync().unwrap();
            assert!(
                FAIL_SNAPSHOT_FSYNC.with(|f| f.borrow().is_empty())
                    && FAIL_SNAPSHOT_WRITE.with(|f| f.borrow().is_empty()),
                "the failure was met"
            );
            if pages_dropped {
                std::fs::write(&snapshot, b"").unwrap();
            }
            // The next checkpoint's fsync succeeds; then retention deletes
            // the first segment.
            p.sync().unwrap();
            p.drop_snapshots_below(p.log_end_offset());
            p.set_high_watermark(p.log_end_offset());
            assert_eq!(
                p.apply_retention(segment::now_ms(), None, Some(3000))
                    .unwrap()
                    .0,
                1
            );
            assert_eq!(p.log_start_offset(), 2);
            let lost = snapshots_not_fsynced();
            drop(p);
            power_loss_empties(&lost);

            let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
            assert_eq!(
                p.producers().check(&validate_all(&first).unwrap()),
                Ok(Verdict::Duplicate(0)),
                "pages dropped: {pages_dropped}, write failed: {write_failed}; not durable at the power loss: {lost:?}"
            );
            SNAPSHOTS_NOT_FSYNCED.with(|s| s.borrow_mut().clear());
            SNAPSHOTS_WRITE_BACK_FAILED.with(|s| s.borrow_mut().clear());
        }
    }

    /// A start-up that finds a segment above the recovery point short cuts
    /// there and removes the later segments, their producer snapshots with
    /// them. Their bases stayed in the partition's list of snapshots: the
    /// first checkpoint's sync found them missing and counted them durable,
    /// and `drop_snapshots_below` could then keep such a base as the newest
    /// durable snapshot and delete a real one in its place.
    #[test]
    fn a_start_up_cut_forgets_the_snapshots_of_the_segments_it_removes() {
        use crate::storage::batch::tests;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        let batch = |values: &[&[u8]], seq| {
            tests::with_timestamp(
                tests::make_producer_batch(0, values, 8, 0, seq),
                segment::now_ms(),
            )
        };
        let record = |p: &Partition, b: Vec<u8>| {
            let mut infos = validate_all(&b).unwrap();
            infos[0].base_offset = store(p, b);
            p.producers().record(&infos);
        };
        record(&p, batch(&[b"small"], 0));
        for k in 1..4 {
            record(&p, batch(&[&[1u8; 3000]], k));
        }
        // Segments 0 [0, 1], 2 and 3, with snapshots 2 and 3.
        assert_eq!(files(&pdir, "log"), 3);
        p.sync().unwrap();
        drop(p);
        // Segment 2 loses its batch: it ends short of segment 3.
        std::fs::OpenOptions::new()
            .write(true)
            .open(pdir.join(segment::log_name(2)))
            .unwrap()
            .set_len(0)
            .unwrap();
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert!(p.snapshots.lock().unwrap().contains(&3));
        assert_eq!(p.verify_from(0, false, false).unwrap(), Some(2));
        assert!(!pdir.join(segment::producers_name(3)).exists());
        assert!(
            !p.snapshots.lock().unwrap().contains(&3),
            "the removed segment's snapshot is still listed"
        );
        assert!(!p.unsynced_snapshots.lock().unwrap().contains(3));
    }

    /// A checkpoint reads a partition's end, fsyncs its pending snapshots,
    /// then drops the snapshots below the segment holding that end. A roll at
    /// exactly the end in between made the new segment that one: the
    /// previous snapshot, the newest durable one, was dropped while the new
    /// one was not fsynced, and after a power loss the start knew only the
    /// producers of the previous segment's last batches. The newest durable
    /// snapshot is now kept until the next checkpoint fsyncs the later ones.
    #[test]
    fn a_checkpoint_keeps_the_newest_durable_snapshot_while_a_later_one_is_not_fsynced() {
        use crate::storage::{batch::tests, producers::Verdict};
        let make_producer_batch = |values: &[&[u8]], pid, seq| {
            tests::with_timestamp(
                tests::make_producer_batch(0, values, pid, 0, seq),
                segment::now_ms(),
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let record = |p: &Partition, b: Vec<u8>| {
            let mut infos = validate_all(&b).unwrap();
            infos[0].base_offset = store(p, b);
            p.producers().record(&infos);
            infos[0].base_offset
        };
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        let first = make_producer_batch(&[b"once"], 7, 0);
        assert_eq!(record(&p, first.clone()), 0);
        // [once, big 0], [big 1]: snapshot 2 knows producer 7, and is
        // fsynced by a checkpoint.
        for k in 0..2 {
            record(&p, make_producer_batch(&[&[1u8; 3000]], 8, k));
        }
        p.sync().unwrap();
        p.drop_snapshots_below(p.log_end_offset());
        // The next checkpoint reads the end (3) and syncs; a roll at exactly
        // that end follows before it drops the snapshots below it.
        let end = p.log_end_offset();
        assert_eq!(end, 3);
        p.sync().unwrap();
        assert_eq!(record(&p, make_producer_batch(&[&[1u8; 3000]], 8, 2)), 3);
        assert_eq!(files(&pdir, "log"), 3);
        p.drop_snapshots_below(end);
        let lost = snapshots_not_fsynced();
        assert!(lost.contains(&pdir.join(segment::producers_name(3))));
        drop(p);
        power_loss_empties(&lost);

        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        let retry = validate_all(&first).unwrap();
        assert_eq!(p.producers().check(&retry), Ok(Verdict::Duplicate(0)));

        // Once the next checkpoint fsynced the new segment's snapshot, the
        // older one goes.
        assert_eq!(record(&p, make_producer_batch(&[&[1u8; 3000]], 8, 3)), 4);
        p.sync().unwrap();
        p.drop_snapshots_below(p.log_end_offset());
        assert!(!pdir.join(segment::producers_name(2)).exists());
        assert!(pdir.join(segment::producers_name(4)).exists());
    }

    /// A compaction pass merging segments removes the merged ones' producer
    /// snapshots. With the first segment's snapshot dropped by a checkpoint,
    /// the second's was the newest durable one; a roll after that checkpoint
    /// left the third's not fsynced, and a merge of the first two deleted the
    /// second's. A power loss then left no snapshot knowing producer 7, whose
    /// batch was too far back in the merged segment for the start's scan of
    /// its last batches: a retry of it was stored again. The snapshots after
    /// a group are now fsynced before the group is swapped.
    #[test]
    fn a_compaction_merge_makes_the_later_snapshots_durable_before_it_removes_the_merged_ones() {
        use crate::storage::producers::Verdict;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let (p, first, n) = producer_seven_far_back(&pdir);
        // A roll to n+2: its snapshot is not fsynced.
        assert_eq!(roll_with(&p, keyed(b"s3", -1, -1)), n + 2);
        assert!(snapshots_not_fsynced().contains(&pdir.join(segment::producers_name(n + 2))));
        let stats = p.compact(&merge_policy(), &AtomicBool::new(false)).unwrap();
        assert_eq!(stats.segments, 2, "the first two segments merged");
        assert_eq!(files(&pdir, "log"), 2);
        assert!(!p.snapshots.lock().unwrap().contains(&(n + 1)));
        let lost = snapshots_not_fsynced();
        drop(p);
        power_loss_empties(&lost);

        let p = Partition::open("t", 0, pdir.clone(), 1 << 30).unwrap();
        assert_eq!(
            p.producers().check(&validate_all(&first).unwrap()),
            Ok(Verdict::Duplicate(0)),
            "snapshots not fsynced when the merge removed the older ones: {lost:?}"
        );
    }

    /// The base offsets of `p`'s segments, oldest first.
    fn segment_bases(p: &Partition) -> Vec<i64> {
        p.log
            .lock()
            .unwrap()
            .iter()
            .map(Segment::base_offset)
            .collect()
    }

    /// A batch of one keyed record at the clock's time, by producer `pid`.
    fn keyed(key: &[u8], pid: i64, seq: i32) -> Vec<u8> {
        crate::storage::batch::tests::make_keyed_batch(
            0,
            segment::now_ms(),
            &[(0, Some(key), Some(b"v"))],
            pid,
            0,
            seq,
        )
    }

    /// Stores `b` in `p` and records its producer; its base offset.
    fn record_keyed(p: &Partition, b: Vec<u8>) -> i64 {
        let mut infos = validate_all(&b).unwrap();
        infos[0].base_offset = store(p, b);
        p.producers().record(&infos);
        infos[0].base_offset
    }

    /// Stores `b` in `p` in a new segment; its base offset.
    fn roll_with(p: &Partition, b: Vec<u8>) -> i64 {
        p.set_segment_bytes(1);
        let base = record_keyed(p, b);
        p.set_segment_bytes(1 << 30);
        base
    }

    /// A compaction that merges whatever it may.
    fn merge_policy() -> CompactionPolicy {
        CompactionPolicy {
            now_ms: segment::now_ms(),
            delete_retention_ms: 0,
            min_compaction_lag_ms: 0,
            min_cleanable_dirty_ratio: 0.0,
            map_bytes: compaction::DEFAULT_MAP_BYTES,
            segment_bytes: 1 << 30,
        }
    }

    /// A trim whose removal of a segment's files failed (here the producer
    /// snapshot of the first segment kept could not be fsynced, which must
    /// come first) had already taken the segment out of the log: its files
    /// stayed on disk until the next start, no retention pass seeing them,
    /// and DeleteRecords answered a storage error for a deletion in force.
    /// They now go at the next pass, and DeleteRecords answers its new start.
    #[test]
    fn segments_a_trim_could_not_remove_go_at_the_next_pass() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open("t", 0, pdir.clone(), 1 << 30).unwrap();
        record_keyed(&p, keyed(b"a", -1, -1));
        assert_eq!(roll_with(&p, keyed(b"b", -1, -1)), 1);
        assert_eq!(roll_with(&p, keyed(b"c", -1, -1)), 2);
        let first_kept = pdir.join(segment::producers_name(1));
        FAIL_SNAPSHOT_FSYNC.with(|f| f.borrow_mut().insert(first_kept));
        assert_eq!(p.delete_records(1), Ok(1), "the deletion is in force");
        assert!(FAIL_SNAPSHOT_FSYNC.with(|f| f.borrow().is_empty()));
        assert_eq!(segment_bases(&p), [1, 2]);
        let files = [segment::log_name(0), segment::index_name(0)];
        assert!(files.iter().all(|f| pdir.join(f).exists()));
        // The next retention pass (none configured: only the log start's
        // floor) removes them, the snapshot fsynced first.
        assert_eq!(
            p.apply_retention(segment::now_ms(), None, None).unwrap().0,
            1
        );
        assert!(files.iter().all(|f| !pdir.join(f).exists()));
        assert!(!snapshots_not_fsynced().contains(&pdir.join(segment::producers_name(1))));
        assert_eq!(
            p.apply_retention(segment::now_ms(), None, None).unwrap().0,
            0
        );
        assert_eq!(p.log_start_offset(), 1);
    }

    /// A partition in `pdir` holding producer 7's batch (returned) at 0 and
    /// `n` (returned) keyed batches after it, more than a start's scan of
    /// the last batches reads, in segment [0, n+1), then [n+1, n+2) and the
    /// active one: snapshot n+1 knows producer 7 and was fsynced by a
    /// checkpoint, which dropped the older ones.
    fn producer_seven_far_back(pdir: &Path) -> (Partition, Vec<u8>, i64) {
        let p = Partition::open("t", 0, pdir.to_path_buf(), 1 << 30).unwrap();
        let first = keyed(b"once", 7, 0);
        assert_eq!(record_keyed(&p, first.clone()), 0);
        let n = PREVIOUS_SEGMENT_BATCHES as i64 + 100;
        for k in 1..=n {
            record_keyed(&p, keyed(format!("k{k}").as_bytes(), -1, -1));
        }
        assert_eq!(roll_with(&p, keyed(b"s2", -1, -1)), n + 1);
        p.sync().unwrap();
        p.drop_snapshots_below(p.log_end_offset());
        assert!(pdir.join(segment::producers_name(n + 1)).exists());
        (p, first, n)
    }

    /// A producer snapshot whose read failed at the open (a start short of
    /// file descriptors, a failing device) was taken for one a power loss
    /// emptied, and removed: producer 7, whose only batch is further back
    /// than the previous segment's last batches, was forgotten, and the
    /// retry of its batch would have been stored twice. The open now fails,
    /// naming the file, and removes nothing; the next open reads it.
    #[test]
    fn a_producer_snapshot_that_fails_to_read_is_not_removed() {
        use crate::storage::producers::Verdict;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let (p, first, n) = producer_seven_far_back(&pdir);
        drop(p);
        let snapshot = pdir.join(segment::producers_name(n + 1));
        FAIL_SNAPSHOT_READ.with(|f| f.borrow_mut().insert(snapshot.clone()));
        let e = Partition::open("t", 0, pdir.clone(), 1 << 30).unwrap_err();
        assert!(
            e.to_string().contains(&snapshot.display().to_string()),
            "{e}"
        );
        assert!(e.to_string().contains("removing it is safe"), "{e}");
        assert!(snapshot.exists(), "the snapshot was removed");
        let p = Partition::open("t", 0, pdir.clone(), 1 << 30).unwrap();
        assert_eq!(
            p.producers().check(&validate_all(&first).unwrap()),
            Ok(Verdict::Duplicate(0))
        );
    }

    /// The same merge with no snapshot after the group at all: the one of
    /// the segment after it was lost to a power loss (removed at the open,
    /// unreadable), so the merged second segment's was the newest durable
    /// one, and nothing was waiting for an fsync. The merge removed it, and a
    /// restart (a kill -9 will do) found no snapshot knowing producer 7. A
    /// group was then merged only with a durable snapshot after it, which
    /// left an idle partition (no roll to write one) uncompacted for good;
    /// the merge now writes the newest segment's snapshot itself (a failed
    /// write is tried again by the sync that follows), and holds the group
    /// back only when the snapshot cannot be made durable.
    #[test]
    fn a_compaction_merge_writes_the_missing_snapshot_after_its_group() {
        use crate::storage::producers::Verdict;
        // No failure, the write failing once, the fsync failing.
        for (write_fails, fsync_fails) in [(false, false), (true, false), (false, true)] {
            let dir = tempfile::tempdir().unwrap();
            let pdir = dir.path().join("0");
            let (p, first, n) = producer_seven_far_back(&pdir);
            // A roll to n+2 whose snapshot a power loss takes.
            assert_eq!(roll_with(&p, keyed(b"s3", -1, -1)), n + 2);
            let lost = snapshots_not_fsynced();
            let newest = pdir.join(segment::producers_name(n + 2));
            assert!(lost.contains(&newest));
            drop(p);
            power_loss_empties(&lost);
            let p = Partition::open("t", 0, pdir.clone(), 1 << 30).unwrap();
            assert!(!newest.exists());
            p.sync().unwrap();
            p.drop_snapshots_below(p.log_end_offset());
            assert!(pdir.join(segment::producers_name(n + 1)).exists());
            if write_fails {
                FAIL_SNAPSHOT_WRITE.with(|f| f.borrow_mut().insert(newest.clone()));
            }
            if fsync_fails {
                FAIL_SNAPSHOT_FSYNC.with(|f| f.borrow_mut().insert(newest.clone()));
            }
            p.compact(&merge_policy(), &AtomicBool::new(false)).unwrap();
            let bases = segment_bases(&p);
            assert!(
                FAIL_SNAPSHOT_WRITE.with(|f| f.borrow().is_empty())
                    && FAIL_SNAPSHOT_FSYNC.with(|f| f.borrow().is_empty()),
                "the failure was met"
            );
            if fsync_fails {
                assert_eq!(
                    bases,
                    [0, n + 1, n + 2],
                    "merged with no durable snapshot after the group"
                );
            } else {
                assert_eq!(bases, [0, n + 2], "the group was not merged");
                assert!(load_snapshot(&pdir, n + 2).unwrap().is_some());
                assert!(
                    !snapshots_not_fsynced().contains(&newest),
                    "merged with the snapshot not fsynced"
                );
            }
            // A power loss now (the snapshot whose fsync failed is lost).
            drop(p);
            power_loss_empties(&snapshots_not_fsynced());
            let p = Partition::open("t", 0, pdir.clone(), 1 << 30).unwrap();
            assert_eq!(
                p.producers().check(&validate_all(&first).unwrap()),
                Ok(Verdict::Duplicate(0)),
                "the merge removed the only snapshot knowing producer 7 (write fails: {write_fails}, fsync fails: {fsync_fails})"
            );
        }
    }

    /// A partition with producer 7's batch at 0 and two batches of producer
    /// 8 after it, in segments [0, 2) and [2, 3); snapshot 2 (knowing
    /// producer 7) fsynced and the older ones dropped. Returns it with the
    /// first batch and a closure storing and recording a batch.
    #[allow(clippy::type_complexity)]
    fn snapshot_fixture(
        pdir: &Path,
    ) -> (
        Partition,
        Vec<u8>,
        impl Fn(&Partition, Vec<u8>) -> i64,
        impl Fn(&[&[u8]], i64, i32) -> Vec<u8>,
    ) {
        use crate::storage::batch::tests;
        let make_producer_batch = |values: &[&[u8]], pid, seq| {
            tests::with_timestamp(
                tests::make_producer_batch(0, values, pid, 0, seq),
                segment::now_ms(),
            )
        };
        let record = |p: &Partition, b: Vec<u8>| {
            let mut infos = validate_all(&b).unwrap();
            infos[0].base_offset = store(p, b);
            p.producers().record(&infos);
            infos[0].base_offset
        };
        let p = Partition::open("t", 0, pdir.to_path_buf(), 4096).unwrap();
        let first = make_producer_batch(&[b"once"], 7, 0);
        assert_eq!(record(&p, first.clone()), 0);
        for k in 0..2 {
            record(&p, make_producer_batch(&[&[1u8; 3000]], 8, k));
        }
        p.sync().unwrap();
        p.drop_snapshots_below(p.log_end_offset());
        assert!(pdir.join(segment::producers_name(2)).exists());
        assert!(!pdir.join(segment::producers_name(0)).exists());
        (p, first, record, make_producer_batch)
    }

    /// A roll adds its new segment's base to the pending snapshots before it
    /// writes the snapshot, and again once it is renamed into place. A
    /// checkpoint that looked between the two found no file (taken as done),
    /// and the second add, to a set already holding the base, changed
    /// nothing: the checkpoint then took the base off, its contents never
    /// fsynced, and the next `drop_snapshots_below` took it as the newest
    /// durable snapshot and deleted the older one that was. A power loss left
    /// no snapshot knowing producer 7. A base now leaves the pending set only
    /// if it was not written again since the sync looked.
    #[test]
    fn a_snapshot_renamed_into_place_during_a_checkpoint_stays_pending() {
        use crate::storage::producers::Verdict;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let (p, first, record, make_producer_batch) = snapshot_fixture(&pdir);
        // A roll to 3 whose snapshot is not written yet: only its first add.
        assert_eq!(record(&p, make_producer_batch(&[&[1u8; 3000]], 8, 2)), 3);
        let b3 = pdir.join(segment::producers_name(3));
        p.sync().unwrap();
        std::fs::remove_file(&b3).unwrap();
        p.snapshots.lock().unwrap().remove(&3);
        p.unsynced_snapshots.lock().unwrap().add(3);
        let end = p.log_end_offset();
        // The roll's write and rename land between the checkpoint's fsyncs
        // (which found no file) and its taking the bases off.
        let p = Arc::new(p);
        BEFORE_SNAPSHOTS_SYNCED.with(|b| {
            let p = Arc::clone(&p);
            *b.borrow_mut() = Some(Box::new(move || p.snapshot_producers(3)));
        });
        p.sync().unwrap();
        assert!(b3.exists());
        assert!(
            p.unsynced_snapshots.lock().unwrap().contains(3),
            "a snapshot renamed into place after the fsync is not durable"
        );
        p.drop_snapshots_below(end);
        assert!(pdir.join(segment::producers_name(2)).exists());
        let lost = snapshots_not_fsynced();
        assert!(lost.contains(&b3));
        drop(p);
        power_loss_empties(&lost);

        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(
            p.producers().check(&validate_all(&first).unwrap()),
            Ok(Verdict::Duplicate(0))
        );
    }

    /// A power loss emptied the newest snapshot; the start read the older
    /// one. The empty snapshot was taken as durable, having been found at
    /// open, so the first checkpoint deleted the older one as below it, and
    /// the next start (a crash) found no snapshot knowing producer 7. A
    /// snapshot that does not load is now removed at open, and those that
    /// load wait for the first checkpoint's fsync before they count as
    /// durable.
    #[test]
    fn a_snapshot_found_empty_at_open_does_not_replace_the_older_one() {
        use crate::storage::producers::Verdict;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let (p, first, record, make_producer_batch) = snapshot_fixture(&pdir);
        assert_eq!(record(&p, make_producer_batch(&[&[1u8; 3000]], 8, 2)), 3);
        drop(p);
        let b3 = pdir.join(segment::producers_name(3));
        std::fs::write(&b3, b"").unwrap();

        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        let retry = validate_all(&first).unwrap();
        assert_eq!(p.producers().check(&retry), Ok(Verdict::Duplicate(0)));
        assert!(!b3.exists(), "an unreadable snapshot is removed at open");
        let end = p.log_end_offset();
        p.sync().unwrap();
        p.drop_snapshots_below(end);
        assert!(pdir.join(segment::producers_name(2)).exists());
        drop(p);

        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(p.producers().check(&retry), Ok(Verdict::Duplicate(0)));
    }

    /// The snapshot fixture with a third segment rolled (snapshot 3), its
    /// files changed by `edit` (given the partition's directory) once
    /// closed: what opening it again logs, after checking that the retry of
    /// the first batch is known as a duplicate.
    fn reopened_after(edit: impl FnOnce(&Path)) -> String {
        use crate::storage::producers::Verdict;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let (p, first, record, make_producer_batch) = snapshot_fixture(&pdir);
        assert_eq!(record(&p, make_producer_batch(&[&[1u8; 3000]], 8, 2)), 3);
        drop(p);
        edit(&pdir);
        let (p, log) = logged(|| Partition::open("t", 0, pdir.clone(), 4096).unwrap());
        let retry = validate_all(&first).unwrap();
        assert_eq!(
            p.producers().check(&retry),
            Ok(Verdict::Duplicate(0)),
            "{log}"
        );
        log
    }

    /// A producer snapshot carries a CRC32C: one whose digits damage changed
    /// is ignored, as one a power loss emptied, and the older snapshot and
    /// the segments after it give the state. Before, a changed epoch was
    /// obeyed: the retry of a stored batch was refused as fenced.
    #[test]
    fn a_snapshot_that_fails_its_checksum_is_ignored() {
        let log = reopened_after(|pdir| {
            let b3 = pdir.join(segment::producers_name(3));
            let json = std::fs::read_to_string(&b3).unwrap();
            assert!(json.contains("\"crc32c\":"), "{json}");
            let damaged = json.replace("\"id\":7,\"epoch\":0", "\"id\":7,\"epoch\":1");
            assert_ne!(damaged, json, "{json}");
            std::fs::write(&b3, damaged).unwrap();
        });
        assert!(log.contains("fails its checksum"), "{log}");
    }

    /// A snapshot written before snapshots carried a checksum loads unchecked.
    #[test]
    fn a_snapshot_without_a_checksum_loads() {
        let log = reopened_after(|pdir| {
            // Producer 7 is then known from snapshot 3 alone.
            std::fs::remove_file(pdir.join(segment::producers_name(2))).unwrap();
            let b3 = pdir.join(segment::producers_name(3));
            let mut json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&b3).unwrap()).unwrap();
            assert!(json.as_object_mut().unwrap().remove("crc32c").is_some());
            std::fs::write(&b3, serde_json::to_vec(&json).unwrap()).unwrap();
        });
        assert!(!log.contains("ignoring"), "{log}");
    }

    #[test]
    fn a_producer_known_when_the_newest_segment_started_is_known_after_a_reopen() {
        use crate::storage::{batch::tests, producers::Verdict};
        // Timestamped now: a producer is aged by its batches' timestamps when
        // they are read back.
        let make_producer_batch = |base, values: &[&[u8]], pid, epoch, seq| {
            tests::with_timestamp(
                tests::make_producer_batch(base, values, pid, epoch, seq),
                segment::now_ms(),
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let record = |p: &Partition, b: Vec<u8>| {
            let infos = validate_all(&b).unwrap();
            let base = store(p, b.clone());
            let mut infos = infos;
            infos[0].base_offset = base;
            p.producers().record(&infos);
            base
        };
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        let first = make_producer_batch(0, &[b"once"], 7, 0, 0);
        assert_eq!(record(&p, first.clone()), 0);
        // Another producer's 3000-byte batches: one segment each (the first shares
        // producer 7's), so producer 7's batch is neither in the newest segment
        // nor in the one before.
        for k in 0..4 {
            record(&p, make_producer_batch(0, &[&[1u8; 3000]], 8, 0, k));
        }
        // [once, big 0], [big 1], [big 2], [big 3]
        assert_eq!(files(&pdir, "log"), 4);
        // The snapshots wait for the next sync (a checkpoint) to be fsynced,
        // every one of them: a trim's, written outside the log lock, may
        // finish after a later roll's.
        let pending = |p: &Partition| p.unsynced_snapshots.lock().unwrap().pending.clone();
        assert!(pending(&p).contains_key(&4));
        p.snapshot_producers(2);
        let waiting = pending(&p);
        assert!(
            waiting.contains_key(&4) && waiting.contains_key(&2),
            "{waiting:?}"
        );
        p.sync().unwrap();
        assert!(pending(&p).is_empty());
        drop(p);
        let retry = validate_all(&first).unwrap();

        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(p.producers().check(&retry), Ok(Verdict::Duplicate(0)));
        assert_eq!(p.producers().len(), 2);
        drop(p);

        // The segments' snapshots go with them.
        let snapshot = pdir.join(segment::producers_name(4));
        assert!(snapshot.exists());
        assert!(
            !pdir.join(segment::producers_name(0)).exists(),
            "nothing before the first roll"
        );
        // Without a readable snapshot of the newest segment: the newest
        // readable older one (3's) and every batch from its segment on.
        std::fs::write(&snapshot, b"{\"version\":1,\"below\":4,\"produc").unwrap();
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(p.producers().check(&retry), Ok(Verdict::Duplicate(0)));
        assert_eq!(p.producers().len(), 2);
        drop(p);
        // The open removed the unreadable snapshot. Without any: the
        // previous segment's last batches only, so producer 7 is unknown
        // (and may start anywhere).
        assert!(
            !snapshot.exists(),
            "an unreadable snapshot is removed at open"
        );
        let older = [2, 3].map(|b| pdir.join(segment::producers_name(b)));
        for s in &older {
            std::fs::rename(s, s.with_extension("hidden")).unwrap();
        }
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(p.producers().check(&retry), Ok(Verdict::Append));
        assert_eq!(p.producers().len(), 1);
        drop(p);
        for s in &older {
            std::fs::rename(s.with_extension("hidden"), s).unwrap();
        }
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();

        // Retention deletes a segment's snapshot with it, once the segments
        // kept have one.
        let snapshots = || {
            let mut v: Vec<_> = std::fs::read_dir(&pdir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".producers"))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            snapshots(),
            vec![segment::producers_name(2), segment::producers_name(3)]
        );
        p.set_high_watermark(p.log_end_offset());
        assert_eq!(p.apply_retention(0, None, Some(1)).unwrap().0, 3);
        // The newest segment's snapshot, lost above, was written first: the
        // deleted ones were the only snapshots knowing the producers.
        assert_eq!(snapshots(), vec![segment::producers_name(4)]);
        drop(p);
        let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
        assert_eq!(p.producers().check(&retry), Ok(Verdict::Duplicate(0)));
    }

    #[test]
    fn timestamp_lookups_find_records_and_answer_compressed_batches_whole() {
        use crate::storage::batch::tests::make_timed_batch;
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open("t", 0, dir.path().join("0"), 1 << 20).unwrap();
        assert_eq!(p.max_timestamp_offset().unwrap(), None);
        // Offsets 0-2: uncompressed, 3-5: marked gzip (the broker never reads
        // inside it), 6: uncompressed.
        store(
            &p,
            make_timed_batch(0, 100, &[(0, b"a"), (50, b"b"), (10, b"c")], -1, -1, -1),
        );
        let mut gz = make_timed_batch(0, 200, &[(0, b"d"), (900, b"e"), (5, b"f")], -1, -1, -1);
        gz[22] |= 1;
        let crc = crc32c::crc32c(&gz[21..]);
        gz[17..21].copy_from_slice(&crc.to_be_bytes());
        store(&p, gz);
        store(&p, make_timed_batch(0, 1100, &[(0, b"g")], -1, -1, -1));
        assert_eq!(p.offset_for_timestamp(0).unwrap(), Some((0, 100)));
        assert_eq!(p.offset_for_timestamp(105).unwrap(), Some((1, 150)));
        assert_eq!(
            p.offset_for_timestamp(151).unwrap(),
            Some((3, 1100)),
            "the whole batch"
        );
        assert_eq!(p.offset_for_timestamp(1101).unwrap(), None);
        assert_eq!(
            p.max_timestamp_offset().unwrap(),
            Some((5, 1100)),
            "its last offset"
        );
        // Only what is readable counts.
        p.set_high_watermark(3);
        assert_eq!(p.max_timestamp_offset().unwrap(), Some((1, 150)));
        assert_eq!(p.offset_for_timestamp(151).unwrap(), None);
    }

    /// A batch of one record of 5 KiB naming `i`: with 4 KiB segments, one
    /// segment each.
    fn marked(i: i64) -> Vec<u8> {
        make_batch(0, &[format!("{i:08}").repeat(640).as_bytes()])
    }

    /// [`marked`] as stored at offset `i`: what a read from `i` returns.
    fn marked_at(i: i64) -> Vec<u8> {
        let mut b = marked(i);
        let infos = validate_all(&b).unwrap();
        batch::assign_offsets(&mut b, &infos, i);
        b
    }

    /// Thousands of segments (4 KiB segments, 5 KiB batches: one segment a
    /// batch, as any client can set with `segment.bytes`) once held two
    /// descriptors each for as long as the partition was open, and opening the
    /// partition opened them all, until the process ran out. Now only the
    /// active segment keeps its files; a sealed one's log is opened for reads
    /// through the cache: the descriptors on the partition's files stay within
    /// the cache's capacity and a few, whatever the number of segments, and
    /// every segment still reads back its batch, across evictions and after a
    /// reopen (which leaves only the newest segment open).
    #[cfg(target_os = "linux")]
    #[test]
    fn thousands_of_segments_hold_descriptors_bounded_by_the_cache() {
        use crate::storage::segment::tests::fds_under;
        const SEGMENTS: i64 = 2000;
        const CACHE: usize = 32;
        // The active segment's two files, and a read's first and current logs.
        const MORE: usize = 4;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let cache = SegmentFiles::new(CACHE);
        let p = Partition::open_in("t", 0, pdir.clone(), 4096, Arc::clone(&cache)).unwrap();
        for i in 0..SEGMENTS {
            assert_eq!(store(&p, marked(i)), i);
        }
        assert_eq!(files(&pdir, "log"), SEGMENTS as usize);
        let open = fds_under(&pdir);
        assert!(
            open <= 2,
            "{open} descriptors on the partition's files with {SEGMENTS} segments"
        );
        let check = |p: &Partition, when: &str| {
            for i in 0..SEGMENTS {
                let r = p.read(i, 1).unwrap().unwrap();
                assert_eq!(&r.records[..], &marked_at(i)[..], "{when}: offset {i}");
            }
            // One read across a few hundred segments, each opened in turn.
            let r = p.read(0, 1 << 20).unwrap().unwrap();
            let infos = validate_all(&r.records).unwrap();
            assert!(infos.len() > 100, "{when}: {} batches", infos.len());
            let want: Vec<u8> = (0..infos.len() as i64).flat_map(marked_at).collect();
            assert_eq!(&r.records[..], &want[..], "{when}");
            // Timestamp lookups read every segment's headers.
            assert!(p.max_timestamp_offset().unwrap().is_some());
            let open = fds_under(&pdir);
            assert!(
                open <= CACHE + MORE && cache.len() <= CACHE,
                "{when}: {open} descriptors on the partition's files, {} cached",
                cache.len()
            );
        };
        check(&p, "written");
        assert!(cache.opened() >= SEGMENTS as u64 - 1);
        drop(p);
        assert_eq!(fds_under(&pdir), 0, "a dropped segment's handle stays open");
        let p = Partition::open_in("t", 0, pdir.clone(), 4096, Arc::clone(&cache)).unwrap();
        let open = fds_under(&pdir);
        assert!(open <= 2 + 1, "{open} descriptors after the reopen");
        check(&p, "reopened");
        drop(p);
        // Every index file removed: each older segment's index is rebuilt by
        // its open, and synced then, so it seals with its files closed.
        for e in std::fs::read_dir(&pdir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "index") {
                std::fs::remove_file(path).unwrap();
            }
        }
        let p = Partition::open_in("t", 0, pdir.clone(), 4096, Arc::clone(&cache)).unwrap();
        let open = fds_under(&pdir);
        assert!(
            open <= 2 + 1,
            "{open} descriptors after rebuilding every index"
        );
        check(&p, "reopened with rebuilt indexes");
        assert_eq!(store(&p, marked(SEGMENTS)), SEGMENTS);
    }

    /// A read in flight when the cache evicts its logs (other reads) completes
    /// with the right bytes, from the handles it took; the evicted log closes
    /// when the read ends. Retention removing the read's first segment
    /// meanwhile changes nothing for it (its log was opened under the lock, as
    /// before); a following segment removed meanwhile ends the read after the
    /// whole batches before it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_read_in_flight_completes_when_its_logs_are_evicted_or_removed() {
        use crate::storage::segment::tests::{fds_on, fds_under};
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let cache = SegmentFiles::new(1);
        let p =
            Arc::new(Partition::open_in("t", 0, pdir.clone(), 4096, Arc::clone(&cache)).unwrap());
        for i in 0..6 {
            store(&p, marked(i));
        }
        let three = 3 * marked(0).len() as u64;
        let want: Vec<u8> = (0..3).flat_map(marked_at).collect();
        let log0 = pdir.join(segment::log_name(0));
        let during = Arc::new(Mutex::new(Vec::new()));
        {
            let (p, during, log0) = (Arc::clone(&p), Arc::clone(&during), log0.clone());
            BETWEEN_PLAN_AND_READ.with(|b| {
                *b.borrow_mut() = Some(Box::new(move || {
                    for i in [4, 3, 1, 2, 5] {
                        assert_eq!(p.read(i, 1).unwrap().unwrap().records, marked_at(i));
                    }
                    during.lock().unwrap().push(fds_on(&log0));
                }));
            });
        }
        let opened = cache.opened();
        let r = p.read_within(0, three, false).unwrap().unwrap();
        assert_eq!(&r.records[..], &want[..]);
        // The read's own handle on segment 0 was the only one left on it.
        assert_eq!(*during.lock().unwrap(), [1]);
        assert!(
            cache.opened() >= opened + 5,
            "the hook's reads evicted nothing"
        );
        drop(r);
        assert_eq!(
            fds_on(&log0),
            0,
            "the evicted log stayed open after the read"
        );
        assert!(fds_under(&pdir) <= 1 + 2);

        // DeleteRecords removes segments 0 and 1 during the read.
        {
            let p = Arc::clone(&p);
            BETWEEN_PLAN_AND_READ.with(|b| {
                *b.borrow_mut() = Some(Box::new(move || {
                    assert_eq!(p.delete_records(2), Ok(2));
                }));
            });
        }
        let r = p.read_within(0, three, false).unwrap().unwrap();
        assert_eq!(&r.records[..], &marked_at(0)[..]);
        assert!(!log0.exists());
        assert!(p.read(0, 1).unwrap().is_none());
        assert_eq!(p.read(2, 1).unwrap().unwrap().records, marked_at(2));
    }

    /// A segment roll that runs out of file descriptors (EMFILE: reads in
    /// flight keep the sealed logs they opened beyond the cache's bound)
    /// failed the append, and so storage, for every produce until a restart.
    /// It now closes the cache's handles and tries again a few times: the
    /// append succeeds, the cache is empty, and every segment reads back. A
    /// shortage that outlasts the tries fails the append naming the file, as
    /// before.
    #[test]
    fn a_roll_short_of_file_descriptors_closes_the_cached_handles_and_tries_again() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let cache = SegmentFiles::new(8);
        let p = Partition::open_in("t", 0, pdir.clone(), 4096, Arc::clone(&cache)).unwrap();
        for i in 0..4 {
            assert_eq!(store(&p, marked(i)), i);
        }
        for i in 0..3 {
            assert_eq!(p.read(i, 1).unwrap().unwrap().records, marked_at(i));
        }
        assert_eq!(cache.len(), 3);
        // Every try but the last fails.
        let tries = u32::try_from(crate::wal::files::FD_RETRY_WAITS_MS.len()).unwrap();
        p.fail_roll_creates.store(tries, Ordering::Relaxed);
        assert_eq!(store(&p, marked(4)), 4);
        assert_eq!(p.fail_roll_creates.load(Ordering::Relaxed), 0);
        assert_eq!(cache.len(), 0, "the cached handles are still open");
        assert_eq!(files(&pdir, "log"), 5);
        p.sync().unwrap();
        for i in 0..5 {
            assert_eq!(p.read(i, 1).unwrap().unwrap().records, marked_at(i));
        }

        // One more failure than tries: the append fails, naming the file.
        p.fail_roll_creates.store(tries + 1, Ordering::Relaxed);
        let mut b = marked(5);
        let infos = validate_all(&b).unwrap();
        assert_eq!(p.assign(&mut b, &infos), 5);
        let infos = validate_all(&b).unwrap();
        let e = p.append(&b, &infos).unwrap_err().to_string();
        let log5 = pdir.join(segment::log_name(5));
        assert!(
            e.contains("Too many open files") && e.contains(log5.to_str().unwrap()),
            "{e}"
        );
        assert_eq!(p.fail_roll_creates.load(Ordering::Relaxed), 0);
        assert_eq!(p.log_end_offset(), 5);
    }

    /// Through the pipeline: a produce whose roll is short of file
    /// descriptors for a moment is acknowledged, and storage goes on taking
    /// produces. One whose shortage lasts fails storage, as any failed
    /// segment append does.
    #[test]
    fn produces_go_on_after_a_roll_short_of_file_descriptors_for_a_moment() {
        use crate::storage::{producers::pipeline_tests::produce, ProduceError, TopicManager};
        let tmp = tempfile::tempdir().unwrap();
        let mut c = crate::config::Config::default();
        c.storage.data_dir = tmp.path().to_path_buf();
        let m = TopicManager::new(c).unwrap();
        m.create_topic("t", 1).unwrap();
        let p = m.partition("t", 0).unwrap();
        p.set_segment_bytes(4096);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(produce(&rt, &m, &marked(0)), Ok(0));
        p.fail_roll_creates.store(2, Ordering::Relaxed);
        assert_eq!(produce(&rt, &m, &marked(1)), Ok(1));
        assert_eq!(p.fail_roll_creates.load(Ordering::Relaxed), 0);
        assert_eq!(produce(&rt, &m, &marked(2)), Ok(2));
        assert_eq!(p.read(1, 1).unwrap().unwrap().records, marked_at(1));

        p.fail_roll_creates.store(u32::MAX, Ordering::Relaxed);
        let failed = produce(&rt, &m, &marked(3));
        assert!(
            matches!(&failed, Err(ProduceError::Storage(why)) if why.contains("Too many open files")),
            "{failed:?}"
        );
        p.fail_roll_creates.store(0, Ordering::Relaxed);
        let after = produce(&rt, &m, &marked(4));
        assert!(matches!(after, Err(ProduceError::Storage(_))), "{after:?}");
        assert!(m.shutdown().is_err());
    }

    /// A sealed segment's log that cannot be opened when read (here removed
    /// behind the broker's back) fails that read with an error naming it; the
    /// partition goes on taking appends, syncing, and serving its other
    /// segments. (Before, the segment held its log open, and the read was
    /// served from the removed file.)
    #[cfg(unix)]
    #[test]
    fn a_sealed_log_that_cannot_be_opened_fails_only_its_reads() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("0");
        let p = Partition::open_in("t", 0, pdir.clone(), 4096, SegmentFiles::new(1)).unwrap();
        for i in 0..3 {
            store(&p, marked(i));
        }
        // Segment 1's log in the cache; 0's closed.
        assert_eq!(p.read(1, 1).unwrap().unwrap().records, marked_at(1));
        let log0 = pdir.join(segment::log_name(0));
        std::fs::remove_file(&log0).unwrap();
        let e = p.read(0, 1).unwrap_err().to_string();
        assert!(
            e.contains("open") && e.contains(log0.to_str().unwrap()),
            "{e}"
        );
        assert_eq!(store(&p, marked(3)), 3);
        p.sync().unwrap();
        for i in 1..4 {
            assert_eq!(p.read(i, 1).unwrap().unwrap().records, marked_at(i));
        }
        // A later segment of a read that cannot be opened (here a link to
        // itself: ELOOP, not a file gone) ends the read after the whole
        // batches before it, rather than failing them too.
        let log2 = pdir.join(segment::log_name(2));
        std::fs::remove_file(&log2).unwrap();
        std::os::unix::fs::symlink(&log2, &log2).unwrap();
        assert_eq!(p.read(1, 1).unwrap().unwrap().records, marked_at(1));
        let r = p.read_within(1, 1 << 20, false).unwrap().unwrap();
        assert_eq!(r.records, marked_at(1));
        assert!(p.read(2, 1).is_err(), "its own read fails");
    }

    #[test]
    fn rolls_segments_and_reads_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open("t", 0, dir.path().join("0"), 4096).unwrap();
        let big = vec![7u8; 3000];
        for i in 0..5 {
            assert_eq!(produce(&p, &[&big]), i);
        }
        let segs = std::fs::read_dir(dir.path().join("0"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "log")
            .count();
        assert!(segs >= 3, "expected several segments, got {segs}");
        for off in 0..5 {
            let r = p.read(off, 1).unwrap().unwrap();
            let infos = validate_all(&r.records).unwrap();
            assert_eq!(infos[0].base_offset, off);
        }
        assert!(p.read(5, 100).unwrap().unwrap().records.is_empty());
        assert!(p.read(6, 100).unwrap().is_none());
        // Without min-one-batch a batch larger than the limit is not returned;
        // within it, whole batches are, across segments.
        assert!(p
            .read_within(0, 2999, false)
            .unwrap()
            .unwrap()
            .records
            .is_empty());
        let one = p.read(0, 1).unwrap().unwrap().records.len() as u64;
        let r = p.read_within(0, 2 * one + 1, false).unwrap().unwrap();
        assert_eq!(r.records.len() as u64, 2 * one);
        drop(p);
        let p = Partition::open("t", 0, dir.path().join("0"), 4096).unwrap();
        assert_eq!(p.log_end_offset(), 5);
    }

    #[test]
    fn a_read_moves_to_the_next_segment_only_after_reading_this_one_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open("t", 0, dir.path().join("0"), 4096).unwrap();
        for len in [900, 900, 2000, 200, 200] {
            produce(&p, &[&vec![7u8; len]]);
        }
        let segs = std::fs::read_dir(dir.path().join("0"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "log")
            .count();
        assert!(segs >= 2, "expected several segments, got {segs}");
        // Whatever the limit, the batches returned are the next ones, in order:
        // a batch that does not fit ends the read, it is not skipped.
        for max_bytes in (1..6000).step_by(37) {
            for min_one_batch in [true, false] {
                let r = p.read_within(0, max_bytes, min_one_batch).unwrap().unwrap();
                if r.records.is_empty() {
                    assert!(!min_one_batch, "at least one batch");
                    continue;
                }
                let infos = validate_all(&r.records).unwrap();
                for (i, info) in infos.iter().enumerate() {
                    assert_eq!(
                        info.base_offset,
                        i as i64,
                        "max_bytes {max_bytes}, min_one_batch {min_one_batch}: offsets {:?}",
                        infos.iter().map(|i| i.base_offset).collect::<Vec<_>>()
                    );
                }
            }
        }
    }

    #[test]
    fn bytes_from_counts_from_the_batch_holding_the_offset_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open("t", 0, dir.path().join("0"), 4096).unwrap();
        let lens: Vec<u64> = [900, 900, 2000, 200, 200]
            .iter()
            .map(|&n| {
                produce(&p, &[&vec![7u8; n]]);
                p.read(p.log_end_offset() - 1, 1)
                    .unwrap()
                    .unwrap()
                    .records
                    .len() as u64
            })
            .collect();
        for offset in 0..5 {
            let want: u64 = lens[offset..].iter().sum();
            assert_eq!(p.bytes_from(offset as i64), want, "from {offset}");
            assert_eq!(
                p.read(offset as i64, u64::MAX)
                    .unwrap()
                    .unwrap()
                    .records
                    .len() as u64,
                want,
                "what a read returns"
            );
        }
        assert_eq!(p.bytes_from(5), 0);
        assert_eq!(p.bytes_from(100), 0);
    }

    mod compaction_tests {
        use super::*;
        use crate::storage::batch::tests::{make_keyed_batch, KeyedRecord};
        use crate::storage::compaction::DEFAULT_MAP_BYTES;
        use crate::storage::producers::Verdict;
        use std::collections::BTreeMap;

        const TS: i64 = 1_700_000_000_000;

        /// Everything produced: offset → (key, value), `None` for null.
        type Model = BTreeMap<i64, (Option<Vec<u8>>, Option<Vec<u8>>)>;

        fn put(p: &Partition, model: &mut Model, records: &[(Option<&str>, Option<&str>)]) {
            let rs: Vec<KeyedRecord<'_>> = records
                .iter()
                .map(|(k, v)| (0, k.map(str::as_bytes), v.map(str::as_bytes)))
                .collect();
            let base = store(p, make_keyed_batch(0, TS, &rs, -1, -1, -1));
            for (i, (k, v)) in records.iter().enumerate() {
                model.insert(
                    base + i as i64,
                    (
                        k.map(|k| k.as_bytes().to_vec()),
                        v.map(|v| v.as_bytes().to_vec()),
                    ),
                );
            }
        }

        /// A partition with 4 KiB segments in a new temporary directory (kept
        /// while the first value lives), and its directory.
        fn fresh() -> (tempfile::TempDir, PathBuf, Partition) {
            let dir = tempfile::tempdir().unwrap();
            let pdir = dir.path().join("0");
            let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
            (dir, pdir, p)
        }

        fn compact(p: &Partition, policy: &CompactionPolicy) -> CompactionStats {
            p.compact(policy, &AtomicBool::new(false)).unwrap()
        }

        fn policy(now_ms: i64) -> CompactionPolicy {
            CompactionPolicy {
                now_ms,
                delete_retention_ms: 1000,
                min_compaction_lag_ms: 0,
                min_cleanable_dirty_ratio: 0.0,
                map_bytes: DEFAULT_MAP_BYTES,
                segment_bytes: 4096,
            }
        }

        /// A batch as [`read_all`] gives it: base, last offset, and its records
        /// as (offset, key, tombstone) when the broker can read them.
        type ReadBatch = (i64, i64, Option<Vec<(i64, Option<Vec<u8>>, bool)>>);

        /// Every stored batch, read through `read`. Checks that batches are
        /// whole, valid and contiguous from the log start to the high watermark.
        fn read_all(p: &Partition) -> Vec<ReadBatch> {
            let mut out = Vec::new();
            let mut next = p.log_start_offset();
            while next < p.high_watermark() {
                let r = p.read(next, 1 << 20).unwrap().unwrap();
                let mut at = 0;
                assert!(!r.records.is_empty(), "nothing read at {next}");
                while at < r.records.len() {
                    let b = &r.records[at..];
                    let info = batch::validate_stored(b).unwrap();
                    assert_eq!(info.base_offset, next, "batches are contiguous");
                    let b = &b[..info.len];
                    let records = batch::payload(b).and_then(|payload| {
                        batch::records_in(b, &payload).map(|rs| {
                            rs.map(|r| (r.offset, r.key.map(<[u8]>::to_vec), r.tombstone))
                                .collect()
                        })
                    });
                    out.push((info.base_offset, info.last_offset(), records));
                    next = info.last_offset() + 1;
                    at += info.len;
                }
            }
            assert_eq!(next, p.high_watermark());
            out
        }

        fn active_base(p: &Partition) -> i64 {
            p.log.lock().unwrap().last().unwrap().base_offset()
        }

        /// A batch larger than a fetch's limit after a batch compaction
        /// emptied: the read the first batch of a response may exceed the
        /// limit for goes on to it. Before, the answer was the empty batch
        /// alone, on which KafkaJS asks for the same offset again, at once,
        /// for as long as the large batch stays.
        #[test]
        fn a_read_goes_past_a_batch_without_records_to_the_first_batch_with_some() {
            let (_dir, _pdir, p) = fresh();
            let mut model = Model::new();
            put(&p, &mut model, &[(Some("k"), Some("old"))]);
            let big = "v".repeat(6000);
            put(
                &p,
                &mut model,
                &[(Some("k"), Some(&big)), (Some("j"), Some(&big))],
            );
            put(&p, &mut model, &[(Some("x"), Some("rolls"))]);
            let stats = compact(&p, &policy(TS));
            assert_eq!(stats.records_removed, 1, "{stats:?}");
            let batches = read_all(&p);
            assert_eq!(batches[0].2.as_deref(), Some(&[][..]), "{batches:?}");
            for limit in [0, 1, 100, 4096] {
                let r = p.read_within(0, limit, true).unwrap().unwrap();
                assert!(r.holds_records, "limit {limit}");
                let (mut end, mut rest) = (0, &r.records[..]);
                while let Ok(b) = batch::parse_header(rest) {
                    end = b.last_offset() + 1;
                    rest = &rest[b.len..];
                }
                assert!(end >= 3, "limit {limit}: {} bytes", r.records.len());
                // Not the first partition of a response: no records, nor the
                // empty batch alone (100: it fits, the next does not).
                let r = p.read_within(0, limit, false).unwrap().unwrap();
                assert!(!r.holds_records && r.records.is_empty(), "limit {limit}");
            }
        }

        /// [`fresh`], holding 200 records of 7 keys over several segments.
        fn seven_keys_over_segments() -> (tempfile::TempDir, PathBuf, Partition) {
            let (dir, pdir, p) = fresh();
            let mut model = BTreeMap::new();
            for i in 0..200 {
                let (k, v) = (format!("k{}", i % 7), format!("value {i}"));
                put(&p, &mut model, &[(Some(&k), Some(&v))]);
            }
            (dir, pdir, p)
        }

        /// A compaction writes its copy beside the segments it replaces, and
        /// on a file system without room for it the copy filled the disk that
        /// produces write to (one that meets it fails storage for every
        /// partition until a restart), and failed again at every pass. The
        /// pass now waits for the room, changing nothing meanwhile.
        #[test]
        fn a_compaction_without_room_for_its_copy_waits() {
            let (_dir, pdir, p) = seven_keys_over_segments();
            let size = p.size_bytes();
            crate::storage::space_reserve::set_test_free_bytes(Some(0));
            let stats = compact(&p, &policy(TS));
            assert_eq!((stats.segments, p.size_bytes()), (0, size), "{stats:?}");
            assert_eq!(files(&pdir, "cleaning"), 0);
            // With room for a smaller group than the copy of all three (about
            // 600 bytes), a smaller group: what the disk has room for is
            // compacted now, the rest at a later pass.
            crate::storage::space_reserve::set_test_free_bytes(Some(300));
            let stats = compact(&p, &policy(TS));
            crate::storage::space_reserve::set_test_free_bytes(None);
            assert!((1..3).contains(&stats.segments), "{stats:?}");
            assert!(p.size_bytes() < size);
            let stats = compact(&p, &policy(TS));
            assert!(stats.segments > 0, "{stats:?}");
        }

        /// A copy that frees more than it takes needs no room to spare beside
        /// it: held to the 8 MiB spare, a compact-only topic on a disk with
        /// less free (at a full disk, none) never shrank again. One that
        /// frees no more than it takes is still held to it.
        #[test]
        fn a_compaction_that_frees_space_runs_on_a_nearly_full_disk() {
            assert!(!copy_fits(1000, 1000, Some(COMPACTION_SPARE_BYTES)));
            assert!(copy_fits(1000, 1000, Some(1250 + COMPACTION_SPARE_BYTES)));
            assert!(copy_fits(1000, 1251, Some(1250)));
            assert!(!copy_fits(1000, 1251, Some(1249)));
            assert!(!copy_fits(1000, 1250, Some(1250)));
            assert!(
                copy_fits(0, 4096, Some(0)),
                "an emptied group needs no room"
            );
            let (_dir, _pdir, p) = seven_keys_over_segments();
            let size = p.size_bytes();
            crate::storage::space_reserve::set_test_free_bytes(Some(1 << 20));
            let stats = compact(&p, &policy(TS));
            crate::storage::space_reserve::set_test_free_bytes(None);
            assert!(stats.segments > 0, "{stats:?}");
            assert!(p.size_bytes() < size);
        }

        /// A pass reads the modification time of the segments it copies only,
        /// outside the partition lock. Before, it read every closed
        /// segment's, under the lock, at every pass: the apply thread waited
        /// behind 100-300 ms of `stat`s at 100,000 segments, with nothing to
        /// compact.
        #[test]
        fn a_pass_with_nothing_to_do_reads_no_modification_time() {
            let (_dir, _pdir, p) = seven_keys_over_segments();
            assert!(compact(&p, &policy(TS)).segments > 0);
            segment::MODIFIED_READS.with(|n| n.set(0));
            assert_eq!(compact(&p, &policy(TS)).segments, 0);
            assert_eq!(segment::MODIFIED_READS.with(std::cell::Cell::get), 0);
        }

        #[test]
        fn keeps_each_keys_newest_record_drops_keyless_ones_and_keeps_every_offset() {
            let (_dir, pdir, p) = fresh();
            let mut model = Model::new();
            for i in 0..200 {
                let (a, b) = (format!("k{}", i % 7), format!("k{}", (i * 3) % 11));
                let (va, vb) = (format!("value {i} a"), format!("value {i} b"));
                put(
                    &p,
                    &mut model,
                    &[(Some(&a), Some(&va)), (Some(&b), Some(&vb))],
                );
                if i % 40 == 0 {
                    put(&p, &mut model, &[(None, Some("no key"))]);
                }
            }
            let segments = p.log.lock().unwrap().len();
            assert!(segments >= 4, "{segments} segments");
            let (end, hw, size) = (p.log_end_offset(), p.high_watermark(), p.size_bytes());
            let active = active_base(&p);

            let stats = compact(&p, &policy(TS));
            assert!(
                stats.segments >= 3 && stats.records_removed > 100,
                "{stats:?}"
            );
            assert!(stats.bytes_after < stats.bytes_before / 3, "{stats:?}");
            assert_eq!((p.log_end_offset(), p.high_watermark()), (end, hw));
            // The closed segments' copies fit in one segment: merged into one,
            // their files gone.
            assert_eq!(p.log.lock().unwrap().len(), 2);
            assert_eq!((files(&pdir, "log"), files(&pdir, "index")), (2, 2));
            assert_eq!(files(&pdir, "swap"), 0);
            assert!(p.size_bytes() < size);
            assert_eq!(files(&pdir, "cleaning"), 0);

            // The newest offset of each key below the active segment.
            let mut newest: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            for (o, (k, _)) in model.range(..active) {
                if let Some(k) = k {
                    newest.insert(k.clone(), *o);
                }
            }
            let check = |p: &Partition| {
                let batches = read_all(p);
                let mut seen = Vec::new();
                for (_, _, records) in &batches {
                    for (o, k, tombstone) in records.as_ref().unwrap() {
                        let (mk, mv) = &model[o];
                        assert_eq!((k, *tombstone), (mk, mv.is_none()), "offset {o}");
                        if *o < active {
                            assert_eq!(newest.get(k.as_ref().unwrap()), Some(o), "offset {o}");
                        }
                        seen.push(*o);
                    }
                }
                let expected: Vec<i64> = newest
                    .values()
                    .copied()
                    .chain(model.range(active..).map(|(o, _)| *o))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                assert_eq!(seen, expected);
                batches
            };
            let before = check(&p);
            // One read from the log start returns records, however many emptied
            // batches and segments lie before them.
            let first = p.read(0, 1 << 20).unwrap().unwrap().records;
            let mut at = 0;
            let mut records = 0;
            while at < first.len() {
                let info = batch::validate_stored(&first[at..]).unwrap();
                records += batch::records(&first[at..at + info.len]).unwrap().len();
                at += info.len;
            }
            assert!(records > 0);
            // A second pass has nothing new to look at; with the ratio met it finds
            // nothing to remove and rewrites nothing.
            assert_eq!(compact(&p, &policy(TS)), CompactionStats::default());
            p.cleaned_through.store(0, Ordering::Release);
            assert_eq!(compact(&p, &policy(TS)), CompactionStats::default());
            drop(p);
            let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
            p.set_high_watermark(p.log_end_offset());
            assert_eq!(check(&p), before, "the same after a reopen");
            // Appends go on after the compacted log.
            assert_eq!(store(&p, make_batch(0, &[b"x"])), end);
            // A deleted topic's partition is left alone.
            let again = "again".repeat(60);
            for _ in 0..30 {
                put(&p, &mut model, &[(Some("k1"), Some(&again))]);
            }
            p.sync().unwrap();
            p.mark_deleted();
            assert_eq!(compact(&p, &policy(TS)), CompactionStats::default());
            p.deleted.store(false, Ordering::Release);
            assert!(compact(&p, &policy(TS)).records_removed > 0);
        }

        /// One step of [`compaction_keeps_the_newest_of_every_key_and_invents_nothing`].
        #[derive(Debug, Clone)]
        enum Step {
            /// Records (key index or keyless, value or tombstone, value size) in
            /// one batch, compressed with a codec (0: none, 1: gzip, 4: zstd),
            /// from one of three idempotent producers or none.
            Put(Vec<(Option<u8>, bool, usize)>, u8, Option<u8>),
            Compact {
                ratio: f64,
                tombstones_go: bool,
                merge: bool,
                small_map: bool,
            },
            Checkpoint,
            Reopen,
        }

        fn step() -> impl proptest::strategy::Strategy<Value = Step> {
            use proptest::prelude::*;
            let record = (
                prop::option::weighted(0.95, 0u8..6),
                prop::bool::weighted(0.15),
                0usize..400,
            );
            prop_oneof![
                8 => (
                    prop::collection::vec(record, 1..6),
                    prop_oneof![3 => Just(0u8), 1 => Just(1u8), 1 => Just(4u8)],
                    prop::option::weighted(0.5, 0u8..3),
                )
                    .prop_map(|(r, codec, producer)| Step::Put(r, codec, producer)),
                2 => (prop_oneof![Just(0.0), Just(0.5)], any::<bool>(), any::<bool>(), any::<bool>())
                    .prop_map(|(ratio, tombstones_go, merge, small_map)| Step::Compact {
                        ratio, tombstones_go, merge, small_map,
                    }),
                1 => Just(Step::Checkpoint),
                1 => Just(Step::Reopen),
            ]
        }

        /// The property below, on one list of steps.
        fn run_steps(steps: &[Step]) -> Result<(), proptest::test_runner::TestCaseError> {
            let (_dir, pdir, mut p) = fresh();
            let mut model = Model::new();
            // Producer id → (its next sequence, its last batch and base offset).
            let mut producers: BTreeMap<i64, (i32, Vec<u8>, i64)> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Put(records, codec, producer) => {
                        let vals: Vec<(Option<String>, Option<String>)> = records
                            .iter()
                            .map(|&(k, tomb, size)| {
                                (
                                    k.map(|k| format!("k{k}")),
                                    (!tomb).then(|| "v".repeat(size)),
                                )
                            })
                            .collect();
                        let refs: Vec<(Option<&str>, Option<&str>)> = vals
                            .iter()
                            .map(|(k, v)| (k.as_deref(), v.as_deref()))
                            .collect();
                        if *codec == 0 && producer.is_none() {
                            put(&p, &mut model, &refs);
                        } else {
                            let rs: Vec<KeyedRecord<'_>> = refs
                                .iter()
                                .map(|(k, v)| (0, k.map(str::as_bytes), v.map(str::as_bytes)))
                                .collect();
                            let (pid, seq) = match producer {
                                Some(id) => {
                                    let pid = i64::from(*id);
                                    (pid, producers.get(&pid).map_or(0, |e| e.0))
                                }
                                None => (-1, -1),
                            };
                            let mut b = make_keyed_batch(0, TS, &rs, pid, 0, seq);
                            if *codec != 0 {
                                b = crate::storage::batch::tests::compress_batch(&b, *codec);
                            }
                            let base = store(&p, b.clone());
                            if pid >= 0 {
                                let mut infos = validate_all(&b).unwrap();
                                infos[0].base_offset = base;
                                p.producers().record(&infos);
                                producers.insert(pid, (seq + rs.len() as i32, b, base));
                            }
                            for (i, (k, v)) in vals.iter().enumerate() {
                                model.insert(
                                    base + i as i64,
                                    (
                                        k.clone().map(String::into_bytes),
                                        v.clone().map(String::into_bytes),
                                    ),
                                );
                            }
                        }
                    }
                    Step::Compact {
                        ratio,
                        tombstones_go,
                        merge,
                        small_map,
                    } => {
                        let mut pol = policy(TS + 10);
                        pol.min_cleanable_dirty_ratio = *ratio;
                        pol.delete_retention_ms = if *tombstones_go { 0 } else { 1 << 40 };
                        pol.segment_bytes = if *merge { 4096 } else { 1 };
                        // A map of one segment: a pass covers a part of the log.
                        pol.map_bytes = if *small_map { 1 } else { DEFAULT_MAP_BYTES };
                        compact(&p, &pol);
                    }
                    Step::Checkpoint => p.sync().unwrap(),
                    Step::Reopen => {
                        drop(p);
                        p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
                        p.set_high_watermark(p.log_end_offset());
                    }
                }
                let active = active_base(&p);
                let read: Vec<(i64, Option<Vec<u8>>, bool)> = read_all(&p)
                    .into_iter()
                    .flat_map(|(_, _, r)| r.unwrap())
                    .collect();
                for (o, k, tombstone) in &read {
                    let (mk, mv) = &model[o];
                    proptest::prop_assert_eq!((k, *tombstone), (mk, mv.is_none()), "offset {}", o);
                }
                let offsets: std::collections::BTreeSet<i64> = read.iter().map(|r| r.0).collect();
                for o in model.range(active..).map(|(o, _)| o) {
                    proptest::prop_assert!(offsets.contains(o), "active segment lost {}", o);
                }
                let mut newest: BTreeMap<&Vec<u8>, (i64, bool)> = BTreeMap::new();
                for (o, (k, v)) in &model {
                    if let Some(k) = k {
                        newest.insert(k, (*o, v.is_none()));
                    }
                }
                // The last record read of a key is its newest: a
                // tombstone goes only with every older value of its key.
                let mut last_read: BTreeMap<&Vec<u8>, i64> = BTreeMap::new();
                for (o, k, _) in &read {
                    if let Some(k) = k {
                        last_read.insert(k, *o);
                    }
                }
                for (k, (o, tombstone)) in newest {
                    proptest::prop_assert!(
                        tombstone || offsets.contains(&o),
                        "key {:?} lost its newest value at {}",
                        String::from_utf8_lossy(k),
                        o
                    );
                    let last = last_read.get(k).copied();
                    proptest::prop_assert!(
                        last.is_none_or(|l| l == o),
                        "key {:?} reads as its record at {:?}, its newest is at {}",
                        String::from_utf8_lossy(k),
                        last,
                        o
                    );
                }
                // Every producer's last batch is still in the log (empty,
                // maybe), as a start-up without snapshots reads it.
                let mut rebuilt = ProducerState::default();
                rebuilt.recover(&headers(&p), segment::now_ms());
                for (pid, (_, last, base)) in &producers {
                    proptest::prop_assert_eq!(
                        rebuilt.check(&validate_all(last).unwrap()),
                        Ok(Verdict::Duplicate(*base)),
                        "producer {}",
                        pid
                    );
                }
            }
            Ok(())
        }

        /// The cases proptest once found failing, as their step lists: its
        /// saved seeds replay other cases once the strategy changes (a
        /// codec, a producer and a small key map were added since these).
        #[test]
        fn recorded_compaction_cases_still_hold() {
            use Step::{Compact, Put};
            let c = |ratio, tombstones_go, merge, small_map| Compact {
                ratio,
                tombstones_go,
                merge,
                small_map,
            };
            let plain = |r: &[(Option<u8>, bool, usize)]| Put(r.to_vec(), 0, None);
            let cases: Vec<Vec<Step>> = vec![
                vec![
                    plain(&[(None, false, 198)]),
                    plain(&[
                        (Some(0), false, 226),
                        (Some(0), false, 147),
                        (Some(0), false, 0),
                        (Some(0), false, 356),
                        (Some(0), false, 81),
                    ]),
                    plain(&[
                        (Some(0), false, 253),
                        (Some(0), false, 139),
                        (Some(0), false, 0),
                        (Some(0), false, 0),
                        (Some(0), false, 376),
                    ]),
                    plain(&[
                        (Some(0), false, 45),
                        (Some(0), false, 266),
                        (Some(0), false, 281),
                        (Some(0), false, 148),
                        (Some(0), false, 0),
                    ]),
                    plain(&[
                        (Some(2), false, 243),
                        (Some(0), false, 370),
                        (Some(2), false, 187),
                        (Some(3), false, 259),
                        (Some(0), true, 263),
                    ]),
                    c(0.0, true, false, false),
                ],
                vec![
                    plain(&[
                        (None, false, 2),
                        (Some(0), false, 130),
                        (Some(0), false, 147),
                        (Some(0), false, 302),
                    ]),
                    plain(&[
                        (Some(0), false, 349),
                        (None, false, 101),
                        (Some(0), false, 156),
                        (Some(0), false, 328),
                    ]),
                    plain(&[
                        (Some(0), false, 182),
                        (Some(0), false, 275),
                        (Some(0), false, 360),
                        (Some(0), false, 391),
                    ]),
                    plain(&[
                        (Some(0), false, 338),
                        (Some(0), false, 397),
                        (Some(0), false, 236),
                    ]),
                    plain(&[(None, false, 136), (Some(3), false, 389)]),
                    plain(&[
                        (Some(0), true, 170),
                        (Some(3), true, 176),
                        (Some(2), false, 145),
                        (Some(0), false, 304),
                        (Some(5), false, 115),
                    ]),
                    plain(&[
                        (Some(1), false, 327),
                        (Some(1), false, 143),
                        (Some(2), false, 144),
                    ]),
                    plain(&[(Some(2), false, 6), (Some(5), false, 182)]),
                    plain(&[
                        (Some(1), false, 32),
                        (Some(2), false, 115),
                        (Some(4), false, 323),
                        (Some(0), false, 204),
                    ]),
                    c(0.5, true, false, false),
                ],
                vec![
                    Put(
                        vec![
                            (None, false, 347),
                            (Some(0), false, 147),
                            (Some(0), false, 38),
                            (Some(0), false, 74),
                        ],
                        0,
                        None,
                    ),
                    Put(vec![(Some(0), false, 360), (Some(0), false, 104)], 0, None),
                    Put(
                        vec![
                            (Some(0), false, 263),
                            (Some(0), false, 344),
                            (Some(0), false, 0),
                            (Some(0), false, 358),
                            (Some(3), false, 27),
                        ],
                        0,
                        None,
                    ),
                    Put(vec![(None, false, 0)], 0, None),
                    Put(vec![(Some(1), false, 2)], 1, None),
                    Put(
                        vec![
                            (Some(0), false, 52),
                            (Some(2), false, 123),
                            (Some(2), true, 290),
                            (Some(4), false, 368),
                            (Some(0), false, 257),
                        ],
                        4,
                        None,
                    ),
                    Put(
                        vec![
                            (Some(0), true, 117),
                            (Some(4), false, 47),
                            (Some(2), false, 351),
                        ],
                        0,
                        None,
                    ),
                    Put(vec![(Some(4), false, 171), (None, false, 367)], 0, None),
                    Put(
                        vec![
                            (Some(3), true, 387),
                            (Some(5), false, 366),
                            (Some(5), false, 206),
                        ],
                        0,
                        None,
                    ),
                    Put(vec![(Some(0), false, 287), (Some(2), false, 67)], 0, None),
                    Put(
                        vec![
                            (None, false, 390),
                            (Some(5), false, 370),
                            (Some(4), false, 194),
                            (Some(4), false, 398),
                            (Some(0), false, 268),
                        ],
                        0,
                        None,
                    ),
                    Put(
                        vec![
                            (Some(5), false, 28),
                            (None, true, 203),
                            (Some(3), false, 131),
                            (Some(5), false, 175),
                            (Some(5), false, 174),
                        ],
                        1,
                        None,
                    ),
                    Put(
                        vec![
                            (Some(4), false, 67),
                            (Some(3), false, 178),
                            (Some(3), false, 11),
                        ],
                        0,
                        None,
                    ),
                    Put(vec![(Some(0), false, 389), (Some(4), true, 394)], 1, None),
                    Put(
                        vec![
                            (Some(2), false, 183),
                            (Some(0), false, 172),
                            (Some(3), false, 13),
                        ],
                        0,
                        None,
                    ),
                    Put(
                        vec![
                            (Some(2), false, 291),
                            (Some(3), false, 349),
                            (Some(4), false, 306),
                            (Some(2), false, 320),
                            (Some(3), false, 144),
                        ],
                        1,
                        None,
                    ),
                    c(0.5, false, true, false),
                    Put(
                        vec![
                            (Some(0), false, 127),
                            (Some(2), false, 197),
                            (None, false, 164),
                        ],
                        0,
                        None,
                    ),
                    Put(
                        vec![
                            (Some(2), false, 0),
                            (Some(0), false, 130),
                            (Some(0), false, 219),
                            (Some(4), false, 241),
                            (Some(2), false, 326),
                        ],
                        1,
                        None,
                    ),
                    c(0.0, true, true, false),
                ],
                vec![
                    Put(vec![(None, false, 129)], 0, None),
                    Put(vec![(Some(2), false, 134)], 0, Some(1)),
                    Put(
                        vec![
                            (Some(0), false, 357),
                            (Some(0), false, 311),
                            (Some(0), false, 193),
                            (Some(2), false, 0),
                        ],
                        0,
                        None,
                    ),
                    Put(vec![(Some(0), false, 5), (None, false, 131)], 4, None),
                    Put(
                        vec![
                            (None, false, 345),
                            (Some(0), false, 298),
                            (Some(0), false, 250),
                        ],
                        0,
                        None,
                    ),
                    Put(vec![(Some(0), false, 64)], 0, None),
                    Put(vec![(None, false, 160), (Some(0), false, 345)], 0, Some(0)),
                    Put(vec![(Some(2), false, 67)], 1, None),
                    Put(vec![(Some(5), false, 342)], 0, None),
                    Put(vec![(Some(1), false, 127), (None, false, 165)], 0, None),
                    c(0.5, true, true, true),
                    c(0.0, true, false, true),
                    c(0.5, false, true, true),
                ],
            ];
            for (i, steps) in cases.iter().enumerate() {
                if let Err(e) = run_steps(steps) {
                    panic!("recorded case {i}: {e}");
                }
            }
        }

        proptest::proptest! {
            #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

            /// Random appends, compactions (merging or not, removing tombstones or
            /// not), checkpoints and reopens: what is read is always contiguous,
            /// every record read was produced at that offset, every key's newest
            /// value is there, the active segment is untouched, and producer
            /// state read back from the log alone knows each idempotent
            /// producer's last batch.
            #[test]
            fn compaction_keeps_the_newest_of_every_key_and_invents_nothing(
                steps in proptest::collection::vec(step(), 1..60)
            ) {
                run_steps(&steps)?;
            }
        }

        #[test]
        fn compressed_batches_keep_no_stale_record_and_are_compressed_again_when_smaller() {
            use crate::storage::batch::tests::compress_batch;
            let (_dir, _, p) = fresh();
            // Offsets 0-49: k0..k49, very compressible values, gzip.
            let big = vec![b'a'; 1000];
            let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
            let rs: Vec<KeyedRecord<'_>> = keys
                .iter()
                .map(|k| (0, Some(k.as_bytes()), Some(&big[..])))
                .collect();
            let stale = compress_batch(&make_keyed_batch(0, TS, &rs, -1, -1, -1), 1);
            assert_eq!(store(&p, stale.clone()), 0);
            // 50-59: r0..r9 with values that do not compress, zstd.
            let mut seed = 7u64;
            let noise: Vec<Vec<u8>> = (0..10)
                .map(|_| {
                    (0..200)
                        .map(|_| {
                            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                            (seed >> 33) as u8
                        })
                        .collect()
                })
                .collect();
            let rkeys: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
            let rs: Vec<KeyedRecord<'_>> = rkeys
                .iter()
                .zip(&noise)
                .map(|(k, v)| (0, Some(k.as_bytes()), Some(&v[..])))
                .collect();
            assert_eq!(
                store(
                    &p,
                    compress_batch(&make_keyed_batch(0, TS, &rs, -1, -1, -1), 4)
                ),
                50
            );
            // 60-61: x0, x1, lz4; both superseded below.
            let rs: Vec<KeyedRecord<'_>> = vec![
                (0, Some(b"x0"), Some(b"old")),
                (0, Some(b"x1"), Some(b"old")),
            ];
            assert_eq!(
                store(
                    &p,
                    compress_batch(&make_keyed_batch(0, TS, &rs, -1, -1, -1), 3)
                ),
                60
            );
            // 62-: k0 and r0..r4 again, x0 and x1 again, a tombstone for k1.
            let mut model = Model::new();
            put(
                &p,
                &mut model,
                &[(Some("k0"), Some("new")), (Some("k1"), None)],
            );
            for i in 0..5 {
                put(&p, &mut model, &[(Some(&format!("r{i}")), Some("new"))]);
            }
            put(
                &p,
                &mut model,
                &[(Some("x0"), Some("new")), (Some("x1"), Some("new"))],
            );
            for i in 0..30 {
                put(
                    &p,
                    &mut model,
                    &[(Some(&format!("filler{i}")), Some(&"f".repeat(300)))],
                );
            }
            let mut pol = policy(TS + 10);
            pol.delete_retention_ms = 0;
            let stats = compact(&p, &pol);
            assert!(stats.records_removed >= 9, "{stats:?}");
            // k1's tombstone stays until the next pass (its delete horizon).
            assert_eq!(records_of(&p, b"k1"), vec![(63, true)]);
            assert_eq!(compact(&p, &pol).records_removed, 1);
            let batches = read_all(&p);
            // The gzip batch: 48 records left would take ~50 KB uncompressed
            // against its ~1 KB, so they are compressed again with gzip, k0's
            // and k1's old values gone; so the tombstone for k1 goes too.
            let first = p.read(0, 1).unwrap().unwrap().records;
            let info = batch::validate_stored(&first).unwrap();
            let first = &first[..info.len];
            assert_eq!((batch::codec(first), info.last_offset()), (1, 49));
            assert!(first.len() < stale.len(), "{} bytes", first.len());
            let left: Vec<i64> = batches[0].2.as_ref().unwrap().iter().map(|r| r.0).collect();
            assert_eq!(left, (2..50).collect::<Vec<i64>>());
            let all: Vec<(i64, Option<Vec<u8>>, bool)> = batches
                .iter()
                .filter_map(|b| b.2.clone())
                .flatten()
                .collect();
            assert!(
                !all.iter().any(|r| r.1.as_deref() == Some(b"k1")),
                "{all:?}"
            );
            // The zstd batch: r5..r9 stay, uncompressed, at their offsets.
            let r = batches.iter().find(|b| b.0 == 50).unwrap();
            let left: Vec<i64> = r.2.as_ref().unwrap().iter().map(|r| r.0).collect();
            assert_eq!((r.1, left), (59, vec![55, 56, 57, 58, 59]));
            // The lz4 batch: gone.
            assert!(!batches
                .iter()
                .any(|b| b.0 == 60 && b.2.as_ref().is_none_or(|r| !r.is_empty())));
            assert!(!all.iter().any(|r| r.0 == 60 || r.0 == 61));
        }

        /// The offsets and kinds (tombstone or not) of the records of `key`
        /// read from the log start.
        fn records_of(p: &Partition, key: &[u8]) -> Vec<(i64, bool)> {
            read_all(p)
                .into_iter()
                .flat_map(|b| b.2.unwrap())
                .filter(|r| r.1.as_deref() == Some(key))
                .map(|r| (r.0, r.2))
                .collect()
        }

        /// Puts 40 records of distinct keys `other{from}`.. with 300-byte
        /// values (about three segments).
        fn fill(p: &Partition, model: &mut Model, from: usize) {
            let filler = "f".repeat(300);
            for i in from..from + 40 {
                put(p, model, &[(Some(&format!("other{i}")), Some(&filler))]);
            }
        }

        /// A compressed batch from which a pass removed records but whose
        /// rest would have taken more room uncompressed was kept whole, stale
        /// records included, and only that pass kept the tombstones after it.
        /// The next pass without a restart maps only the keys after the last
        /// pass's end: it saw nothing stale in the batch and removed the
        /// tombstone once old, and the stale value became its key's newest.
        /// The batch is now compressed again with its own codec, without them.
        #[test]
        fn a_compressed_batch_keeps_no_value_its_tombstone_outlives_across_passes() {
            use crate::storage::batch::tests::compress_batch;
            let (_dir, _, p) = fresh();
            // Offsets 0-20: gone = v1, then a0..a19 with 1000-byte values, gzip.
            let big = vec![b'a'; 1000];
            let keys: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
            let mut rs: Vec<KeyedRecord<'_>> = vec![(0, Some(b"gone"), Some(b"v1"))];
            rs.extend(keys.iter().map(|k| (0, Some(k.as_bytes()), Some(&big[..]))));
            let gz = compress_batch(&make_keyed_batch(0, TS, &rs, -1, -1, -1), 1);
            assert_eq!(store(&p, gz.clone()), 0);
            let mut model = Model::new();
            put(&p, &mut model, &[(Some("gone"), None)]); // tombstone at 21
            fill(&p, &mut model, 0);
            // The tombstone is younger than delete.retention.ms: it stays.
            compact(&p, &policy(TS + 10));
            assert!(records_of(&p, b"gone").contains(&(21, true)));
            assert!(p.cleaned_through.load(Ordering::Acquire) > 21);
            // A later pass of the same process, the tombstone old by then.
            fill(&p, &mut model, 40);
            assert!(compact(&p, &policy(TS + 10_000)).segments > 0);
            let gone = records_of(&p, b"gone");
            assert!(
                gone.last().is_none_or(|&(_, tombstone)| tombstone),
                "gone reads as v1 again: {gone:?}"
            );
            // The batch holds a0..a19, gzip still, no larger than it was.
            let first = p.read(0, 1).unwrap().unwrap().records;
            let info = batch::validate_stored(&first).unwrap();
            let first = &first[..info.len];
            assert_eq!((batch::codec(first), info.last_offset()), (1, 20));
            assert!(first.len() <= gz.len(), "{} bytes", first.len());
            let left: Vec<i64> = read_all(&p)[0]
                .2
                .as_ref()
                .unwrap()
                .iter()
                .map(|r| r.0)
                .collect();
            assert_eq!(left, (1..21).collect::<Vec<i64>>());
        }

        /// A group whose copy was not put in place (DeleteRecords removed its
        /// first segment meanwhile) was counted as covered by the pass, as far
        /// as the map's end: the next pass mapped only what followed, so it
        /// removed a tombstone once old while its key's older value stayed in
        /// the group's other, uncompacted segment, and read as the newest. The
        /// pass now ends at such a group, and the next one maps from there.
        #[test]
        fn a_group_whose_copy_was_not_put_in_place_is_not_counted_as_compacted() {
            let (_dir, _, p) = fresh();
            let p = Arc::new(p);
            let mut model = Model::new();
            let dup = "d".repeat(300);
            while p.log.lock().unwrap().len() < 2 {
                put(&p, &mut model, &[(Some("dup"), Some(&dup))]);
            }
            // The second segment: gone's older value, then its tombstone.
            let old = p.log_end_offset();
            put(&p, &mut model, &[(Some("gone"), Some("old"))]);
            for _ in 0..3 {
                put(&p, &mut model, &[(Some("dup"), Some(&dup))]);
            }
            put(&p, &mut model, &[(Some("gone"), None)]);
            fill(&p, &mut model, 0);
            let second = p.log.lock().unwrap()[1].base_offset();
            assert!(second <= old, "{second} {old}");
            // Once the first group's copy is written, DeleteRecords removes
            // the first segment: the copy is not put in place.
            let q = Arc::clone(&p);
            BETWEEN_COPY_AND_SWAP.with(|b| {
                *b.borrow_mut() = Some(Box::new(move || {
                    assert_eq!(q.delete_records(second).unwrap(), second);
                }));
            });
            assert_eq!(compact(&p, &policy(TS + 10)).segments, 0);
            assert!(BETWEEN_COPY_AND_SWAP.with(|b| b.borrow().is_none()));
            assert_eq!(p.log.lock().unwrap()[0].base_offset(), second);
            assert!(records_of(&p, b"gone").contains(&(old, false)));
            // A later pass of the same process, the tombstone old by then.
            fill(&p, &mut model, 40);
            assert!(compact(&p, &policy(TS + 10_000)).segments > 0);
            let gone = records_of(&p, b"gone");
            assert!(
                gone.last().is_none_or(|&(_, tombstone)| tombstone),
                "gone reads as its older value again: {gone:?}"
            );
        }

        /// A compacted copy is a new file, so it was aged by the pass that
        /// wrote it: a segment left with only empty batches (no timestamp)
        /// then held back time retention of every segment after it until
        /// `retention.ms` after the pass. The copy now keeps the last
        /// modification time of the newest segment it replaces, as Kafka's
        /// cleaner keeps it.
        #[test]
        fn a_compacted_copy_keeps_the_age_of_the_segments_it_replaces() {
            let (_dir, pdir, p) = fresh();
            let mut model = Model::new();
            let dup = "d".repeat(300);
            while p.log.lock().unwrap().len() < 4 {
                put(&p, &mut model, &[(Some("dup"), Some(&dup))]);
            }
            let closed: Vec<i64> = {
                let log = p.log.lock().unwrap();
                log[..log.len() - 1]
                    .iter()
                    .map(Segment::base_offset)
                    .collect()
            };
            let days_ago = |d: u64| {
                std::time::SystemTime::now() - std::time::Duration::from_secs(d * 24 * 3600)
            };
            for (i, base) in closed.iter().enumerate() {
                let f = std::fs::File::options()
                    .write(true)
                    .open(pdir.join(segment::log_name(*base)))
                    .unwrap();
                f.set_modified(days_ago(10 - i as u64)).unwrap();
            }
            let newest_source = days_ago(10 - (closed.len() as u64 - 1));
            assert!(compact(&p, &policy(TS + 10)).segments > 0);
            let log = p.log.lock().unwrap();
            for s in &log[..log.len() - 1] {
                let ms = s.modified_ms().unwrap();
                let want = i64::try_from(
                    newest_source
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis(),
                )
                .unwrap();
                assert!(
                    (ms - want).abs() < 2000,
                    "segment {} aged {ms}, its sources up to {want}",
                    s.base_offset()
                );
            }
        }

        /// A batch that kept some records kept its header's largest
        /// timestamp, and an emptied run the largest of the batches it
        /// replaced: ListOffsets `MAX_TIMESTAMP` then answered a removed
        /// record's timestamp at an offset that held none of it. A rebuilt
        /// batch's largest timestamp is now its records', and an empty batch
        /// has none; the copy's time index says the same after a restart.
        #[test]
        fn max_timestamp_names_a_record_still_there_after_compaction() {
            let (_dir, pdir, p) = fresh();
            // Offset 0: "x" of TS + 900 alone, which goes (a newer "x" follows).
            // Offsets 1-2: "y" of TS + 500, which goes, and "z" of TS + 100.
            let x = make_keyed_batch(0, TS + 900, &[(0, Some(b"x"), Some(b"old"))], -1, -1, -1);
            assert_eq!(store(&p, x), 0);
            let yz = make_keyed_batch(
                0,
                TS + 100,
                &[
                    (400, Some(b"y"), Some(b"old")),
                    (0, Some(b"z"), Some(b"kept")),
                ],
                -1,
                -1,
                -1,
            );
            assert_eq!(store(&p, yz), 1);
            let mut model = Model::new();
            put(
                &p,
                &mut model,
                &[(Some("x"), Some("new")), (Some("y"), Some("new"))],
            );
            fill(&p, &mut model, 0);
            assert_eq!(p.max_timestamp_offset().unwrap(), Some((0, TS + 900)));
            assert!(compact(&p, &policy(TS + 10)).records_removed >= 2);
            assert_eq!(records_of(&p, b"z"), vec![(2, false)]);
            assert!(records_of(&p, b"x").iter().all(|r| r.0 > 2));
            let check = |p: &Partition| {
                assert_eq!(p.max_timestamp_offset().unwrap(), Some((2, TS + 100)));
                let log = p.log.lock().unwrap();
                assert!(log[0].max_timestamp_is_exact());
                assert_eq!(
                    (log[0].max_timestamp(), log[0].max_timestamp_offset()),
                    (TS + 100, Some(1)),
                    "the batch holding z"
                );
            };
            check(&p);
            // After a restart, from the copy's time index.
            drop(p);
            let p = Partition::open("t", 0, pdir, 4096).unwrap();
            p.set_high_watermark(p.log_end_offset());
            check(&p);
        }

        /// A pass run only because a tombstone came due mapped the new
        /// records too, so each new tombstone it covered came due
        /// `delete.retention.ms` after it and forced the next pass, each
        /// reading every cleanable segment whatever the dirty ratio (with 0
        /// and a tombstone per cleaner round, the cleaner never rested). Such
        /// a pass now maps nothing: it removes the due tombstone alone.
        #[test]
        fn a_pass_for_a_due_tombstone_maps_no_new_key() {
            let (_dir, _, p) = fresh();
            let mut model = Model::new();
            put(&p, &mut model, &[(Some("a"), Some("old"))]);
            put(&p, &mut model, &[(Some("a"), None)]);
            fill(&p, &mut model, 0);
            let pol = |now_ms: i64, ratio: f64| CompactionPolicy {
                delete_retention_ms: 0,
                min_cleanable_dirty_ratio: ratio,
                ..policy(now_ms)
            };
            assert!(compact(&p, &pol(TS, 0.9)).records_removed > 0);
            assert_eq!(
                records_of(&p, b"a"),
                vec![(1, true)],
                "due at the next pass"
            );
            let covered = p.cleaned_through.load(Ordering::Acquire);
            put(&p, &mut model, &[(Some("b"), Some("old"))]);
            put(&p, &mut model, &[(Some("b"), None)]);
            fill(&p, &mut model, 40);

            // Too few new bytes for the ratio: the pass runs for a's tombstone.
            let due = compact(&p, &pol(TS + 1, 0.9));
            assert_eq!(due.records_removed, 1, "{due:?}");
            assert!(records_of(&p, b"a").is_empty());
            assert_eq!(records_of(&p, b"b").len(), 2, "b was not mapped");
            assert_eq!(p.cleaned_through.load(Ordering::Acquire), covered);
            // Nothing is due now, and still too few new bytes: no pass.
            assert_eq!(compact(&p, &pol(TS + 1, 0.9)), CompactionStats::default());
            // A pass for the new bytes maps b.
            assert!(compact(&p, &pol(TS + 2, 0.0)).records_removed > 0);
            assert_eq!(records_of(&p, b"b").len(), 1);
        }

        /// A damaged `compacted.json` (now mostly found by its checksum)
        /// failed every pass at the swap, which marked the partition
        /// uncleanable; nothing mended the file, so after every restart the
        /// first pass wrote a copy and failed again, and the topic grew for
        /// good. The swap now replaces it with one covering every segment,
        /// the cautious reading a start makes of the damaged one.
        #[test]
        fn a_damaged_compacted_file_is_replaced_by_one_covering_every_segment() {
            let (_dir, pdir, p) = fresh();
            let mut model = Model::new();
            put(&p, &mut model, &[(Some("a"), Some("old"))]);
            fill(&p, &mut model, 0);
            put(&p, &mut model, &[(Some("a"), Some("new"))]);
            fill(&p, &mut model, 40);
            assert!(compact(&p, &policy(TS)).records_removed > 0);
            let file = pdir.join(segment::COMPACTED_FILE);
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            v["crc32c"] = (v["crc32c"].as_u64().unwrap() ^ 1).into();
            std::fs::write(&file, serde_json::to_vec(&v).unwrap()).unwrap();
            assert!(segment::compacted_through(&pdir).is_err());

            put(&p, &mut model, &[(Some("a"), Some("newer"))]);
            fill(&p, &mut model, 80);
            let stats = p.compact(&policy(TS + 1), &AtomicBool::new(false));
            assert!(
                stats.as_ref().is_ok_and(|s| s.records_removed > 0),
                "{stats:?}"
            );
            assert!(p.uncleanable().is_none());
            let newest = *segment_bases(&p).last().unwrap();
            assert_eq!(segment::compacted_through(&pdir).unwrap(), Some(newest));
        }

        /// A lowered `delete.retention.ms` let a waiting tombstone go only at
        /// the time the last pass found with the old one (a day by default)
        /// unless new bytes came: a change now makes the next pass judge it.
        #[test]
        fn a_lowered_delete_retention_is_judged_by_the_next_pass() {
            let (_dir, _, p) = fresh();
            let mut model = Model::new();
            put(&p, &mut model, &[(Some("gone"), Some("old"))]);
            put(&p, &mut model, &[(Some("gone"), None)]); // tombstone at 1
            fill(&p, &mut model, 0);
            let day = |now_ms: i64| CompactionPolicy {
                delete_retention_ms: 86_400_000,
                ..policy(now_ms)
            };
            compact(&p, &day(TS));
            assert_eq!(records_of(&p, b"gone"), vec![(1, true)]);
            // An hour on, delete.retention.ms is lowered to 1 s: no pass is
            // due until the change says so.
            let hour = TS + 3_600_000;
            assert_eq!(compact(&p, &policy(hour)), CompactionStats::default());
            assert_eq!(records_of(&p, b"gone"), vec![(1, true)]);
            p.recheck_waiting_tombstones();
            assert_eq!(compact(&p, &policy(hour)).records_removed, 1);
            assert!(records_of(&p, b"gone").is_empty());
            // Nothing waits now: a change forces no pass.
            p.recheck_waiting_tombstones();
            assert_eq!(compact(&p, &policy(hour)), CompactionStats::default());
        }

        /// A compacted copy whose swap failed before it began (its
        /// `compacted.json` could not be written: a full disk) stayed on disk
        /// until a pass wrote it again, or, if retention removed its group
        /// first, until a restart. It is removed at once now; the next pass
        /// compacts the group.
        #[test]
        fn a_copy_whose_swap_fails_before_it_begins_is_removed_at_once() {
            use crate::wal::files::{AtomicWriteFailure as Fail, INJECTED_ATOMIC_FAILURES};
            let (_dir, pdir, p) = fresh();
            let mut model = Model::new();
            put(&p, &mut model, &[(Some("gone"), Some("old"))]);
            fill(&p, &mut model, 0);
            put(&p, &mut model, &[(Some("gone"), Some("new"))]);
            fill(&p, &mut model, 40);
            INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(Fail::BeforeRename));
            let e = p
                .compact(&policy(TS + 10), &AtomicBool::new(false))
                .unwrap_err();
            assert!(e.to_string().contains("compacted.tmp"), "{e}");
            assert_eq!(files(&pdir, "cleaning"), 0, "the copy is gone");
            assert_eq!(records_of(&p, b"gone").len(), 2, "nothing changed");
            p.cleaned_through.store(0, Ordering::Release);
            assert!(compact(&p, &policy(TS + 10)).records_removed > 0);
            assert_eq!(records_of(&p, b"gone"), vec![(41, false)]);
        }

        /// A damaged batch in a cleanable segment failed every pass, each of
        /// which built the key map again and read the partition up to the
        /// damage: the cleaner thread spent its passes on it for as long as
        /// the broker ran. As Kafka marks such a partition uncleanable, the
        /// first failure stops its compaction until a restart.
        #[test]
        fn a_damaged_segment_stops_compaction_of_its_partition_until_a_restart() {
            let (_dir, pdir, p) = fresh();
            let mut model = Model::new();
            fill(&p, &mut model, 0);
            fill(&p, &mut model, 0);
            assert!(segment_bases(&p).len() > 2);
            // A byte of the first batch's records, on the disk.
            let log = pdir.join(format!("{:020}.log", 0));
            let mut bytes = std::fs::read(&log).unwrap();
            bytes[100] ^= 0x40;
            std::fs::write(&log, bytes).unwrap();
            let stop = AtomicBool::new(false);
            let e = p.compact(&policy(TS + 10_000), &stop).unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
            assert!(p.uncleanable().is_some_and(|why| why == e.to_string()));
            let again = p.compact(&policy(TS + 10_000), &stop);
            assert!(
                matches!(again, Ok(CompactionStats { segments: 0, .. })),
                "compacted again: {again:?}"
            );
        }

        #[test]
        fn a_key_map_smaller_than_the_log_goes_on_where_the_last_pass_stopped() {
            let (_dir, _, p) = fresh();
            let mut model = Model::new();
            let v = "v".repeat(40);
            // 400 distinct keys, then every one of them again: twice as many
            // records as keys, over many segments.
            for round in 0..2 {
                for k in 0..400 {
                    put(
                        &p,
                        &mut model,
                        &[(Some(&format!("key{k:04}")), Some(&format!("{round}{v}")))],
                    );
                }
            }
            let active = active_base(&p);
            let mut pol = policy(TS);
            pol.map_bytes = 1; // one segment per pass
            pol.segment_bytes = 1; // no merging: segments keep their bases
            let mut passes = 0;
            while p.cleaned_through.load(Ordering::Acquire) < active {
                compact(&p, &pol);
                passes += 1;
                assert!(passes < 1000, "no progress");
            }
            assert!(passes > 3, "{passes} passes");
            // Every key below the active segment appears once, at its newest.
            let mut newest: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            for (o, (k, _)) in model.range(..active) {
                newest.insert(k.clone().unwrap(), *o);
            }
            let mut seen: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            for (o, k, _) in read_all(&p).into_iter().flat_map(|b| b.2.unwrap()) {
                if o < active {
                    assert!(
                        seen.insert(k.clone().unwrap(), o).is_none(),
                        "key twice: {k:?}"
                    );
                }
            }
            assert_eq!(seen, newest);
        }

        /// A compaction whose copy is in place on disk but cannot be loaded
        /// leaves segments in memory that name removed or replaced files. No
        /// change by path may follow until a restart: DeleteRecords is refused
        /// (it used to delete the first segment's file by path, which was the
        /// copy holding the later segments' records), and the restart loads
        /// the copy with every record compaction kept.
        #[test]
        fn a_compacted_copy_that_cannot_be_loaded_stops_changes_until_a_restart() {
            copy_in_place_not_in_memory(
                |p| p.fail_swap_loads.store(u32::MAX, Ordering::Relaxed),
                "Too many open files",
            );
        }

        /// As above when the swap itself fails once the copy's log has left
        /// its `.cleaning` name (its last directory sync here): the group's
        /// files were removed or renamed over, and a retention pass then
        /// deleted the copy by the first segment's path.
        #[test]
        fn a_compaction_swap_that_fails_part_way_stops_changes_until_a_restart() {
            copy_in_place_not_in_memory(
                |p| p.fail_swap_finish.store(true, Ordering::Relaxed),
                "Input/output error",
            );
            copy_in_place_not_in_memory(
                |p| p.fail_swap_syncs.store(u32::MAX, Ordering::Relaxed),
                "Too many open files",
            );
        }

        /// Compacts every closed segment in one group with `fail` set up to
        /// make the copy's install fail with `message`, then checks that no
        /// change follows and that a restart reads what compaction kept.
        fn copy_in_place_not_in_memory(fail: impl FnOnce(&Partition), message: &str) {
            let (_dir, pdir, p) = fresh();
            let (model, active, pol) = four_keys_in_segments(&p);
            fail(&p);
            let err = p
                .compact(&pol, &AtomicBool::new(false))
                .expect_err("a copy not put in place in memory");
            assert!(err.to_string().contains(message), "{err}");
            assert!(p.swap_unloaded.get().is_some());
            // Between the first segment and the active one: DeleteRecords would
            // remove the first segment's file, the copy.
            let second = p.log.lock().unwrap()[1].base_offset();
            assert!(matches!(
                p.delete_records(second + 1),
                Err(DeleteRecordsError::Storage(_))
            ));
            assert_eq!(
                p.compact(&pol, &AtomicBool::new(false)).unwrap(),
                CompactionStats::default()
            );
            drop(p);

            // The restart loads the copy: each key's newest record below the
            // active segment, and every record from it on.
            let p = Partition::open("t", 0, pdir, 4096).unwrap();
            let read: Vec<(i64, Option<Vec<u8>>, bool)> = read_all(&p)
                .into_iter()
                .flat_map(|b| b.2.unwrap())
                .collect();
            assert_eq!(
                read.iter().map(|r| r.0).collect::<Vec<_>>(),
                compacted_offsets(&model, active)
            );
        }

        /// Puts 40 records of four keys into `p` (several segments); the
        /// model, the active segment's base, and a policy compacting every
        /// closed segment in one group.
        fn four_keys_in_segments(p: &Partition) -> (Model, i64, CompactionPolicy) {
            let mut model = Model::new();
            let v = "v".repeat(300);
            for i in 0..40 {
                put(p, &mut model, &[(Some(&format!("k{}", i % 4)), Some(&v))]);
            }
            let active = active_base(p);
            assert!(p.log.lock().unwrap().len() > 3, "several segments");
            let mut pol = policy(TS);
            pol.segment_bytes = 1 << 20; // every closed segment in one group
            (model, active, pol)
        }

        /// The offsets a compaction of every segment below `active` keeps of
        /// `model` (each key's newest record below it, and every record from
        /// it on).
        fn compacted_offsets(model: &Model, active: i64) -> Vec<i64> {
            let mut newest: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            for (o, (k, _)) in model.range(..active) {
                newest.insert(k.clone().unwrap(), *o);
            }
            let mut expected: Vec<i64> = newest.into_values().collect();
            expected.extend(model.range(active..).map(|(o, _)| *o));
            expected.sort_unstable();
            expected
        }

        /// A compaction's swap, or the load of its copy, short of file
        /// descriptors for a moment (reads in flight hold sealed logs beyond
        /// the cache's bound) closes the cache's read handles and tries
        /// again, as a segment roll does, from where the swap stopped: it
        /// used to leave the partition refusing every change by path, its
        /// retention among them, until a restart.
        #[test]
        fn a_compaction_swap_short_of_fds_for_a_moment_tries_again() {
            let setups: [fn(&Partition) -> &std::sync::atomic::AtomicU32; 2] =
                [|p| &p.fail_swap_syncs, |p| &p.fail_swap_loads];
            for fail in setups {
                let (_dir, _pdir, p) = fresh();
                let (model, active, pol) = four_keys_in_segments(&p);
                fail(&p).store(4, Ordering::Relaxed);
                p.compact(&pol, &AtomicBool::new(false)).unwrap();
                assert_eq!(fail(&p).load(Ordering::Relaxed), 0, "tried again");
                assert!(p.swap_unloaded.get().is_none());
                let read: Vec<i64> = read_all(&p)
                    .into_iter()
                    .flat_map(|b| b.2.unwrap())
                    .map(|r| r.0)
                    .collect();
                assert_eq!(read, compacted_offsets(&model, active));
                let second = p.log.lock().unwrap()[1].base_offset();
                assert_eq!(p.delete_records(second), Ok(second));
            }
        }

        /// The key map's bound holds inside a segment: a segment with more keys
        /// than the map holds is mapped a part per pass, batches past the
        /// map's end (a tombstone among them) stay as they are, and passes go
        /// on from where the last one stopped until the segment is done.
        #[test]
        fn a_segment_with_more_keys_than_the_map_holds_is_mapped_a_part_per_pass() {
            let dir = tempfile::tempdir().unwrap();
            let p = Partition::open("t", 0, dir.path().join("0"), 1 << 20).unwrap();
            let mut model = Model::new();
            put(&p, &mut model, &[(Some("gone"), Some("old"))]);
            // 100 batches of 10 distinct keys each, then a tombstone of "gone":
            // one segment.
            for b in 0..100 {
                let keys: Vec<String> = (0..10).map(|k| format!("key{b:03}-{k}")).collect();
                let records: Vec<(Option<&str>, Option<&str>)> =
                    keys.iter().map(|k| (Some(k.as_str()), Some("v"))).collect();
                put(&p, &mut model, &records);
            }
            put(&p, &mut model, &[(Some("gone"), None)]);
            // The next batch starts a new, active segment.
            p.set_segment_bytes(1);
            put(&p, &mut model, &[(Some("active"), Some("v"))]);
            let active = active_base(&p);
            assert_eq!(active, 1002);

            // A map of about two batches' keys.
            let limit = 2 * 10 * (10 + 80);
            let mut pol = policy(TS + 10);
            pol.map_bytes = limit;
            pol.delete_retention_ms = 0;
            let sources = vec![compaction::Source::of(&p.log.lock().unwrap()[0])];
            let (map, mapped) = compaction::build_map(&sources, 0, 0, limit, &|| false).unwrap();
            assert_eq!(mapped, 1);
            assert!(
                map.end > 1 && map.end < 1001,
                "the map ends at {}, in the segment",
                map.end
            );
            drop(sources);

            // One pass: the map stops inside the segment; the tombstone past it
            // stays, and so does the old value of its key.
            compact(&p, &pol);
            let cleaned = p.cleaned_through.load(Ordering::Acquire);
            assert!(cleaned < 1001, "the first pass covered up to {cleaned}");
            let read: Vec<(i64, Option<Vec<u8>>, bool)> = read_all(&p)
                .into_iter()
                .flat_map(|b| b.2.unwrap())
                .collect();
            assert!(read.contains(&(0, Some(b"gone".to_vec()), false)));
            assert!(read.contains(&(1001, Some(b"gone".to_vec()), true)));

            let mut passes = 1;
            while p.cleaned_through.load(Ordering::Acquire) < active {
                compact(&p, &pol);
                passes += 1;
                assert!(passes < 200, "no progress");
            }
            assert!(passes > 10, "{passes} passes");
            // The tombstone stays until the pass after the one that covered it.
            assert_eq!(records_of(&p, b"gone"), vec![(1001, true)]);
            compact(&p, &pol);
            // Every key once, at its only offset; "gone" and its tombstone gone.
            let read: Vec<(i64, Option<Vec<u8>>, bool)> = read_all(&p)
                .into_iter()
                .flat_map(|b| b.2.unwrap())
                .collect();
            let expected: Vec<(i64, Option<Vec<u8>>, bool)> = model
                .iter()
                .filter(|(_, (k, _))| k.as_deref() != Some(&b"gone"[..]))
                .map(|(o, (k, v))| (*o, k.clone(), v.is_none()))
                .collect();
            assert_eq!(read, expected);
        }

        /// The key map's bound holds inside a batch: one batch with more
        /// keys than the map holds (a changelog's batch of a hundred thousand
        /// tiny keys) was mapped whole, the bound checked only between
        /// batches, so the map grew many times past it, and again at every
        /// pass after a restart. The map now ends inside the batch; the
        /// records of the batch past its end stay as they are, and passes go
        /// on from there until each key keeps only its newest record.
        #[test]
        fn one_batch_with_more_keys_than_the_map_holds_is_mapped_a_part_per_pass() {
            let dir = tempfile::tempdir().unwrap();
            let p = Partition::open("t", 0, dir.path().join("0"), 64 << 20).unwrap();
            let mut model = Model::new();
            put(&p, &mut model, &[(Some("gone"), Some("old"))]);
            // One batch: 100,000 records of 70,000 tiny keys (30,000 of them
            // twice), and a tombstone of "gone".
            let keys: Vec<String> = (0..100_000).map(|i| format!("k{}", i % 70_000)).collect();
            let mut records: Vec<(Option<&str>, Option<&str>)> =
                keys.iter().map(|k| (Some(k.as_str()), Some("v"))).collect();
            records.push((Some("gone"), None));
            put(&p, &mut model, &records);
            p.set_segment_bytes(1);
            put(&p, &mut model, &[(Some("active"), Some("v"))]);
            let active = active_base(&p);
            assert_eq!(active, 100_002);

            let limit = 128 << 10;
            let most = limit + "k69999".len() + compaction::ENTRY_OVERHEAD;
            let mut pol = policy(TS + 10);
            pol.map_bytes = limit;
            pol.delete_retention_ms = 0;
            let mut passes = 0;
            loop {
                let cleaned = p.cleaned_through.load(Ordering::Acquire);
                if cleaned >= active {
                    break;
                }
                // The map this pass builds: within its bound and one key.
                let sources = vec![compaction::Source::of(&p.log.lock().unwrap()[0])];
                let (map, _) =
                    compaction::build_map(&sources, 0, cleaned, limit, &|| false).unwrap();
                drop(sources);
                assert!(map.bytes() <= most, "{} bytes mapped", map.bytes());
                assert!(map.end > cleaned, "the map goes on from {cleaned}");
                if passes == 0 {
                    assert!(
                        map.end > 1 && map.end < 100_001,
                        "the map ends at {}, inside the batch",
                        map.end
                    );
                }
                compact(&p, &pol);
                passes += 1;
                assert!(passes < 200, "no progress");
            }
            assert!(passes > 10, "{passes} passes");
            // The tombstone stays until the pass after the one that covered it.
            assert_eq!(records_of(&p, b"gone"), vec![(100_001, true)]);
            compact(&p, &pol);
            // Every key once, at its newest offset; "gone" and its tombstone gone.
            let mut newest: BTreeMap<Vec<u8>, (i64, bool)> = BTreeMap::new();
            for (o, (k, v)) in model.range(..active) {
                newest.insert(k.clone().unwrap(), (*o, v.is_none()));
            }
            let mut expected: Vec<(i64, Option<Vec<u8>>, bool)> = newest
                .into_iter()
                .filter(|(_, (_, tombstone))| !tombstone)
                .map(|(k, (o, t))| (o, Some(k), t))
                .collect();
            expected.extend(
                model
                    .range(active..)
                    .map(|(o, (k, v))| (*o, k.clone(), v.is_none())),
            );
            expected.sort();
            let read: Vec<(i64, Option<Vec<u8>>, bool)> = read_all(&p)
                .into_iter()
                .flat_map(|b| b.2.unwrap())
                .collect();
            assert_eq!(read.len(), 70_001);
            assert_eq!(read, expected);
        }

        /// Checking a batch compressed again once some of its records went
        /// decompresses the copy: it waited for the decompression budget
        /// while the batch's own decompressed records held it, for good when
        /// both did not fit (a zstd batch of two 48 MiB values in the
        /// broker's 272 MiB), and every compressed produce and the shutdown
        /// waited behind the cleaner. Here with a 4 MiB budget.
        #[test]
        fn a_large_compressed_batch_is_compacted_within_a_small_decompression_budget() {
            use crate::storage::batch::tests::compress_batch;
            static BUDGET: batch::Budget = batch::Budget::new(4 << 20);
            let dir = tempfile::tempdir().unwrap();
            let p = Arc::new(Partition::open("t", 0, dir.path().join("0"), 1 << 20).unwrap());
            let value = vec![b'x'; 1_500_000];
            let rs: Vec<KeyedRecord<'_>> = vec![
                (0, Some(b"a"), Some(&value[..])),
                (0, Some(b"b"), Some(&value[..])),
            ];
            assert_eq!(
                store(
                    &p,
                    compress_batch(&make_keyed_batch(0, TS, &rs, -1, -1, -1), 4)
                ),
                0
            );
            let mut model = Model::new();
            put(&p, &mut model, &[(Some("a"), Some("new"))]);
            p.set_segment_bytes(1);
            put(&p, &mut model, &[(Some("active"), Some("v"))]);
            let (tx, rx) = std::sync::mpsc::channel();
            let q = Arc::clone(&p);
            std::thread::spawn(move || {
                compaction::TEST_BUDGET.with(|b| b.set(Some(&BUDGET)));
                tx.send(compact(&q, &policy(TS + 10))).unwrap();
            });
            let stats = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the pass ends, not left waiting for the decompression budget");
            assert_eq!(stats.records_removed, 1, "{stats:?}");
            assert_eq!(BUDGET.in_use(), 0, "every reservation given back");
            assert!(BUDGET.peak() > 0, "the pass decompressed within the budget");
            let read: Vec<(i64, Option<Vec<u8>>)> = read_all(&p)
                .into_iter()
                .flat_map(|b| b.2.unwrap())
                .map(|r| (r.0, r.1))
                .collect();
            assert_eq!(
                read,
                vec![
                    (1, Some(b"b".to_vec())),
                    (2, Some(b"a".to_vec())),
                    (3, Some(b"active".to_vec()))
                ]
            );
        }

        /// `min.compaction.lag.ms` held back no segment whose records have
        /// no timestamp (-1): its newest timestamp, -1, is always past the
        /// lag. Such a segment now goes by its log's last modification, as
        /// Kafka's `largestTimestamp` falls back to the file's.
        #[test]
        fn the_compaction_lag_holds_back_a_segment_without_timestamps_by_its_last_write() {
            let (_dir, _, p) = fresh();
            let untimed =
                |key: &[u8]| make_keyed_batch(0, -1, &[(0, Some(key), Some(b"v"))], -1, -1, -1);
            assert_eq!(store(&p, untimed(b"k")), 0);
            assert_eq!(store(&p, untimed(b"k")), 1);
            p.set_segment_bytes(1);
            store(&p, untimed(b"active"));
            assert_eq!(active_base(&p), 2);
            assert_eq!(p.log.lock().unwrap()[0].max_timestamp(), -1);
            let now = segment::now_ms();
            let mut pol = policy(now);
            pol.min_compaction_lag_ms = 3_600_000;
            assert_eq!(compact(&p, &pol), CompactionStats::default());
            assert_eq!(records_of(&p, b"k"), vec![(0, false), (1, false)]);
            // Once the log's last write is older than the lag.
            pol.now_ms = now + 2 * 3_600_000;
            assert_eq!(compact(&p, &pol).records_removed, 1);
            assert_eq!(records_of(&p, b"k"), vec![(1, false)]);
        }

        /// ListOffsets by timestamp and `MAX_TIMESTAMP` read the segments
        /// outside the partition lock. A compaction pass that put its copy
        /// in place of a segment after a lookup took its view, and before it
        /// opened the segment's log (renamed over, or removed as merged into
        /// the copy of an earlier one), failed the lookup: the client got
        /// `KAFKA_STORAGE_ERROR`, and the broker logged a storage error. The
        /// lookup now starts over from the segments as they are, and answers
        /// from the copy.
        #[test]
        fn a_timestamp_lookup_that_meets_a_segment_compaction_replaced_answers_from_the_copy() {
            const NEWEST: i64 = TS + 1_000_000;
            let v = "v".repeat(1000);
            // Three batches a segment: offsets 3 to 5 in the second, which
            // compaction merges into the copy of the first. Offset 5, the
            // newest record, has a key of its own; the others share two.
            let build = || {
                let (dir, _, p) = fresh();
                for i in 0..12i64 {
                    let (key, ts) = if i == 5 {
                        ("five".to_string(), NEWEST)
                    } else {
                        (format!("k{}", i % 2), TS + i)
                    };
                    assert_eq!(produce_keyed_at(&p, &key, ts, v.len()), i);
                }
                assert_eq!(p.log.lock().unwrap()[1].base_offset(), 3);
                (dir, Arc::new(p))
            };
            let compact_between_view_and_read = |p: &Arc<Partition>| {
                let p = Arc::clone(p);
                BETWEEN_VIEW_AND_READ.with(|b| {
                    *b.borrow_mut() = Some(Box::new(move || {
                        let stats = compact(&p, &policy(TS + 100));
                        assert!(stats.segments >= 2, "{stats:?}");
                        assert!(p.log.lock().unwrap()[1].base_offset() > 5);
                    }));
                });
            };
            let (_dir, p) = build();
            assert_eq!(p.offset_for_timestamp(TS + 5).unwrap(), Some((5, NEWEST)));
            compact_between_view_and_read(&p);
            assert_eq!(p.offset_for_timestamp(TS + 5).unwrap(), Some((5, NEWEST)));

            // The first segment's log renamed over by the copy.
            let (_dir, p) = build();
            assert_eq!(p.offset_for_timestamp(TS).unwrap(), Some((0, TS)));
            compact_between_view_and_read(&p);
            assert_eq!(p.offset_for_timestamp(TS).unwrap(), Some((5, NEWEST)));

            let (_dir, p) = build();
            assert_eq!(p.max_timestamp_offset().unwrap(), Some((5, NEWEST)));
            compact_between_view_and_read(&p);
            assert_eq!(p.max_timestamp_offset().unwrap(), Some((5, NEWEST)));

            // A Fetch opens its first segment's log under the lock and ends
            // at a later one replaced meanwhile, answering the whole batches
            // of the first (as it did).
            let (_dir, p) = build();
            let first: Vec<u8> = p
                .read_within(0, 4096, false)
                .unwrap()
                .unwrap()
                .records
                .into();
            let q = Arc::clone(&p);
            BETWEEN_PLAN_AND_READ.with(|b| {
                *b.borrow_mut() = Some(Box::new(move || {
                    assert!(compact(&q, &policy(TS + 100)).segments >= 2);
                }));
            });
            let r = p.read_within(0, 1 << 20, false).unwrap().unwrap();
            assert_eq!(&r.records[..], &first[..]);
            assert_eq!(validate_all(&r.records).unwrap().len(), 3);
        }

        #[test]
        fn segments_after_an_offset_gap_are_not_merged_across_it() {
            let (_dir, pdir, p) = fresh();
            let mut model = Model::new();
            let v = "v".repeat(300);
            for i in 0..30 {
                if i == 15 {
                    // An offset gap (as a tolerated WAL gap at recovery leaves).
                    let next = p.next_offset.load(Ordering::Acquire);
                    p.next_offset.store(next + 100, Ordering::Release);
                }
                put(&p, &mut model, &[(Some(&format!("k{}", i % 3)), Some(&v))]);
            }
            let stats = compact(&p, &policy(TS));
            assert!(stats.records_removed > 0, "{stats:?}");
            let bases: Vec<(i64, i64)> = p
                .log
                .lock()
                .unwrap()
                .iter()
                .map(|s| (s.base_offset(), s.next_offset()))
                .collect();
            assert!(
                bases.windows(2).filter(|w| w[1].0 != w[0].1).count() == 1,
                "the gap is still between two segments: {bases:?}"
            );
            let end = p.log_end_offset();
            drop(p);
            let p = Partition::open("t", 0, pdir, 4096).unwrap();
            assert_eq!(p.log_end_offset(), end, "nothing cut at the next start");
            assert!(p.log.lock().unwrap().iter().all(|s| s.cut().is_none()));
        }

        /// A tombstone went in the pass that removed its key's older values
        /// when its own timestamp was `delete.retention.ms` old, so a
        /// consumer that had read an older value before that pass could
        /// never see the delete. It now stays `delete.retention.ms` after
        /// the first pass that covered it (Kafka's delete horizon), across a
        /// restart too; a pass then removes it however few bytes are new.
        #[test]
        fn tombstones_go_delete_retention_after_the_pass_that_covers_them_unless_an_unreadable_batch_lies_before(
        ) {
            let (dir, pdir, p) = fresh();
            let mut model = Model::new();
            let filler = "f".repeat(200);
            put(
                &p,
                &mut model,
                &[(Some("gone"), Some("old")), (Some("kept"), Some("1"))],
            );
            put(&p, &mut model, &[(Some("gone"), None)]); // tombstone at 2
            for i in 0..40 {
                let k = format!("other{i}");
                put(&p, &mut model, &[(Some(&k), Some(&filler))]);
            }
            let records = |p: &Partition| -> Vec<i64> {
                read_all(p)
                    .into_iter()
                    .flat_map(|(_, _, r)| r.unwrap().into_iter().map(|r| r.0))
                    .collect()
            };
            // The tombstone's timestamp is 10 s old, delete.retention.ms 1 s:
            // the pass that removes the value it deletes keeps it.
            let first = TS + 10_000;
            compact(&p, &policy(first));
            let left = records(&p);
            assert!(
                !left.contains(&0) && left.contains(&1) && left.contains(&2),
                "{left:?}"
            );
            // Not yet 1 s after that pass: it stays, even in a full pass.
            p.cleaned_through.store(0, Ordering::Release);
            compact(&p, &policy(first + 999));
            assert!(records(&p).contains(&2));
            // A restart keeps the history; without it the tombstone stays
            // 1 s after the first pass after the restart.
            let forgetful = dir.path().join("forgetful");
            copy_dir(&pdir, &forgetful);
            std::fs::remove_file(forgetful.join(delete_horizon::FILE)).unwrap();
            drop(p);
            let p = Partition::open("t", 0, pdir, 4096).unwrap();
            p.set_high_watermark(p.log_end_offset());
            compact(&p, &policy(first + 999));
            assert!(records(&p).contains(&2));
            // 1 s after the first pass: nothing new, but a pass is due.
            let stats = compact(&p, &policy(first + 1000));
            assert_eq!(stats.records_removed, 1);
            let left = records(&p);
            assert!(left.contains(&1) && !left.contains(&2), "{left:?}");
            let p = Partition::open("t", 0, forgetful, 4096).unwrap();
            p.set_high_watermark(p.log_end_offset());
            let restarted = first + 5000;
            compact(&p, &policy(restarted));
            assert!(records(&p).contains(&2));
            assert_eq!(compact(&p, &policy(restarted + 999)).records_removed, 0);
            assert!(records(&p).contains(&2));
            assert_eq!(compact(&p, &policy(restarted + 1000)).records_removed, 1);
            assert!(!records(&p).contains(&2));

            // A batch whose records cannot be read (flagged gzip, they are not)
            // before a tombstone: the tombstone stays (the batch may hold an
            // older value of its key), and so does the batch.
            let (_dir, _, p) = fresh();
            let mut gz = make_keyed_batch(0, TS, &[(0, Some(b"gone"), Some(b"?"))], -1, -1, -1);
            gz[22] |= 1; // gzip, as far as the broker can tell
            let crc = crc32c::crc32c(&gz[21..]);
            gz[17..21].copy_from_slice(&crc.to_be_bytes());
            assert_eq!(store(&p, gz), 0);
            let mut model = Model::new();
            put(&p, &mut model, &[(Some("gone"), None)]); // tombstone at 1
            for i in 0..40 {
                put(
                    &p,
                    &mut model,
                    &[(Some(&format!("other{i}")), Some(&filler))],
                );
            }
            compact(&p, &policy(TS + 10_000));
            p.cleaned_through.store(0, Ordering::Release);
            compact(&p, &policy(TS + 20_000));
            let first = read_all(&p);
            assert_eq!(
                (first[0].0, &first[0].2),
                (0, &None),
                "the compressed batch is kept whole"
            );
            assert_eq!(first[1].2, Some(vec![(1, Some(b"gone".to_vec()), true)]));
        }

        #[test]
        fn the_dirty_ratio_and_the_compaction_lag_hold_compaction_back() {
            let (_dir, _, p) = fresh();
            let mut model = Model::new();
            let v = "v".repeat(300);
            let fill =
                |p: &Partition, model: &mut Model, n: usize, key: &dyn Fn(usize) -> String| {
                    for i in 0..n {
                        put(p, model, &[(Some(&key(i)), Some(&v))]);
                    }
                };
            // Distinct keys: nothing to remove, but the pass covers them.
            fill(&p, &mut model, 60, &|i| format!("k{i}"));
            let mut strict = policy(TS);
            strict.min_compaction_lag_ms = 60_000;
            let covered = |p: &Partition| p.cleaned_through.load(Ordering::Acquire);
            assert_eq!(compact(&p, &strict), CompactionStats::default());
            assert_eq!(covered(&p), 0, "every record is too new");
            strict.now_ms = TS + 60_000;
            assert_eq!(compact(&p, &strict), CompactionStats::default());
            let first = covered(&p);
            assert!(first > 40, "{first}");

            // A few more closed segments holding one key: a small share of the
            // cleanable bytes.
            fill(&p, &mut model, 30, &|_| "same".into());
            let mut ratio = policy(TS);
            ratio.min_cleanable_dirty_ratio = 0.9;
            assert_eq!(compact(&p, &ratio), CompactionStats::default());
            assert_eq!(covered(&p), first);
            ratio.min_cleanable_dirty_ratio = 0.1;
            // A broker shutting down stops the pass at its first batch: a
            // pass that did nothing, the coverage as it was.
            assert_eq!(
                p.compact(&ratio, &AtomicBool::new(true)).unwrap(),
                CompactionStats::default()
            );
            assert_eq!(covered(&p), first);
            assert!(compact(&p, &ratio).records_removed > 10);
            assert!(covered(&p) > first);
        }

        /// Each step of a pass (map, plan, copy) stops between two batches
        /// once told to (a shutdown, a delete of the topic): each read the
        /// partition's whole cleanable log before the pass looked, so a
        /// shutdown waited 11 s for a pass over 1.6 GB, and a DeleteTopics
        /// 12 s. A copy stopped part way is removed.
        #[test]
        fn each_step_of_a_pass_stops_between_two_batches_when_told_to() {
            let (_dir, pdir, p) = fresh();
            let mut model = Model::new();
            let v = "v".repeat(300);
            for i in 0..40 {
                put(&p, &mut model, &[(Some(&format!("k{}", i % 4)), Some(&v))]);
            }
            let sources: Vec<compaction::Source> = {
                let log = p.log.lock().unwrap();
                log[..log.len() - 1]
                    .iter()
                    .map(compaction::Source::of)
                    .collect()
            };
            assert!(sources.len() >= 3, "{} segments", sources.len());
            let asked = std::cell::Cell::new(0);
            // Stops at the fourth batch.
            let halt = || {
                asked.set(asked.get() + 1);
                asked.get() > 3
            };
            let e = compaction::build_map(&sources, 0, 0, DEFAULT_MAP_BYTES, &halt).unwrap_err();
            assert!(compaction::is_stopped(&e), "{e}");
            assert_eq!(asked.get(), 4);

            let (map, _) =
                compaction::build_map(&sources, 0, 0, DEFAULT_MAP_BYTES, &|| false).unwrap();
            let none = Default::default();
            let tombstones = compaction::Tombstones {
                removable: &none,
                first_unsafe: None,
            };
            let mut producers = compaction::Producers::new(std::collections::HashMap::new());
            asked.set(0);
            let e = compaction::plan_segment(&sources[0], &map, tombstones, &mut producers, &halt)
                .unwrap_err();
            assert!(compaction::is_stopped(&e), "{e}");
            assert_eq!(asked.get(), 4);

            asked.set(0);
            let mut pol = policy(TS);
            pol.segment_bytes = 1 << 20;
            let e = compaction::write_group(
                &pdir,
                &sources,
                &map,
                &pol,
                tombstones,
                &mut producers,
                &halt,
            )
            .unwrap_err();
            assert!(compaction::is_stopped(&e), "{e}");
            assert_eq!(asked.get(), 4);
            assert_eq!(files(&pdir, "cleaning"), 0, "the copy is removed");
            // Nothing changed: a pass not told to stop compacts as before.
            assert!(compact(&p, &policy(TS)).records_removed > 10);
        }

        fn copy_dir(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }

        fn reopened(dir: &Path) -> Vec<ReadBatch> {
            let p = Partition::open("t", 0, dir.to_path_buf(), 4096).unwrap();
            p.set_high_watermark(p.log_end_offset());
            assert_eq!(files(dir, "cleaning") + files(dir, "swap"), 0, "{dir:?}");
            read_all(&p)
        }

        /// Three 1300-byte batches a segment: in the first, "x" of day 1 goes
        /// (a newer "x" follows), "a" of day 5 stays, and "b" of day 1 ends
        /// the copy, whose newest batch is so not its last.
        fn newest_batch_not_last(p: &Partition) {
            const DAY: i64 = 24 * 3600 * 1000;
            produce_keyed_at(p, "x", DAY, 1200);
            produce_keyed_at(p, "a", 5 * DAY, 1200);
            produce_keyed_at(p, "b", DAY, 1200);
            for key in ["x", "c", "d", "e"] {
                produce_keyed_at(p, key, DAY, 1200);
            }
        }

        /// A compacted copy was judged for time retention by its last batch's
        /// timestamp: when an earlier batch of the group was newer (producers'
        /// clocks differ), retention deleted records it should have kept. The
        /// copy's newest timestamp is that of all the batches written.
        #[test]
        fn a_compacted_segment_expires_by_its_newest_batch_not_its_last() {
            const DAY: i64 = 24 * 3600 * 1000;
            let (_dir, pdir, p) = fresh();
            newest_batch_not_last(&p);
            assert_eq!(p.log.lock().unwrap().len(), 3);
            let stats = compact(&p, &policy(6 * DAY));
            assert_eq!((stats.segments, stats.records_removed), (1, 1), "{stats:?}");
            {
                let log = p.log.lock().unwrap();
                assert_eq!(log[0].index().len(), 3, "a gap, \"a\" and \"b\"");
                assert!(log[0].max_timestamp_is_exact());
                assert_eq!(log[0].max_timestamp(), 5 * DAY);
            }
            let three_days = Some(3 * DAY as u64);
            assert_eq!(
                p.apply_retention(6 * DAY, three_days, None).unwrap(),
                (0, 0),
                "deleted by its last batch's timestamp"
            );
            // The same after a restart, where the index gives only the last.
            drop(p);
            let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
            assert_eq!(
                p.apply_retention(6 * DAY, three_days, None).unwrap(),
                (0, 0),
                "deleted by its last batch's timestamp after a restart"
            );
            assert_eq!(p.log_start_offset(), 0);
            assert_eq!(p.apply_retention(9 * DAY, three_days, None).unwrap().0, 3);
        }

        /// A compacted copy is installed with its own time index (its newest
        /// timestamp may be an earlier batch's than its last), and the time
        /// index of the segment it replaced goes: after a restart the copy
        /// knows its newest timestamp without reading a batch header.
        #[test]
        fn a_compacted_copy_is_installed_with_its_time_index() {
            const DAY: i64 = 24 * 3600 * 1000;
            let (_dir, pdir, p) = fresh();
            newest_batch_not_last(&p);
            let time_index = pdir.join(segment::time_index_name(0));
            let before = std::fs::read(&time_index).unwrap();
            let stats = compact(&p, &policy(6 * DAY));
            assert_eq!((stats.segments, stats.records_removed), (1, 1), "{stats:?}");
            assert_eq!(files(&pdir, "cleaning") + files(&pdir, "swap"), 0);
            let expected = {
                let log = p.log.lock().unwrap();
                let s = &log[0];
                assert_eq!(s.max_timestamp_offset(), Some(1), "\"a\"");
                crate::storage::time_index::TimeIndex {
                    base_offset: 0,
                    next_offset: s.next_offset(),
                    log_size: s.size(),
                    index_crc: crc32c::crc32c(
                        &std::fs::read(pdir.join(segment::index_name(0))).unwrap(),
                    ),
                    max_timestamp: 5 * DAY,
                    max_timestamp_offset: 1,
                }
            };
            let saved = std::fs::read(&time_index).unwrap();
            assert_ne!(saved, before);
            assert_eq!(
                crate::storage::time_index::TimeIndex::decode(&saved).unwrap(),
                expected
            );
            drop(p);
            let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
            {
                let log = p.log.lock().unwrap();
                assert!(log[0].max_timestamp_is_exact());
                assert_eq!(log[0].max_timestamp(), 5 * DAY);
            }
            segment::MAX_TIMESTAMP_HEADERS_READ.with(|c| c.set(0));
            let three_days = Some(3 * DAY as u64);
            assert_eq!(
                p.apply_retention(6 * DAY, three_days, None).unwrap(),
                (0, 0)
            );
            assert_eq!(segment::MAX_TIMESTAMP_HEADERS_READ.with(|c| c.get()), 0);
        }

        /// `min.compaction.lag.ms` holds back a segment opened from its index
        /// whose last batch is old enough but an earlier one is not.
        #[test]
        fn the_compaction_lag_goes_by_a_reopened_segments_newest_batch() {
            let (_dir, pdir, p) = fresh();
            let hour = 3_600_000;
            produce_keyed_at(&p, "k", TS, 1200);
            produce_keyed_at(&p, "k", TS - 48 * hour, 1200);
            produce_keyed_at(&p, "k", TS - 48 * hour, 1200);
            produce_keyed_at(&p, "k", TS - 48 * hour, 1200);
            assert_eq!(p.log.lock().unwrap().len(), 2);
            drop(p);
            // As a directory from before time indexes.
            assert_eq!(remove_time_indexes(&pdir), 1);
            let p = Partition::open("t", 0, pdir, 4096).unwrap();
            let mut lagged = policy(TS + 1000);
            lagged.min_compaction_lag_ms = 60_000;
            assert_eq!(compact(&p, &lagged), CompactionStats::default());
            assert_eq!(p.log.lock().unwrap()[0].max_timestamp(), TS);
            lagged.now_ms = TS + 60_000;
            assert_eq!(compact(&p, &lagged).records_removed, 2);
        }

        #[test]
        fn a_crash_during_the_swap_leaves_the_old_segments_or_the_copy() {
            let (dir, pdir, p) = fresh();
            let mut model = Model::new();
            let v = "v".repeat(100);
            for i in 0..100 {
                put(&p, &mut model, &[(Some(&format!("k{}", i % 5)), Some(&v))]);
            }
            let original = read_all(&p);
            let before = dir.path().join("before");
            copy_dir(&pdir, &before);
            let old_bases = segment_bases(&p);
            assert!(old_bases.len() >= 4, "{old_bases:?}");

            // A segment whose index the open rebuilds is synced by the open
            // (it seals with its files closed), and compacted like the others.
            drop(p);
            let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
            p.set_high_watermark(p.log_end_offset());
            std::fs::remove_file(pdir.join(segment::index_name(0))).unwrap();
            drop(p);
            let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
            p.set_high_watermark(p.log_end_offset());
            assert!(!p.log.lock().unwrap()[0].is_dirty(), "segment 0 was synced");
            let stats = compact(&p, &policy(TS));
            assert_eq!(
                stats.segments,
                old_bases.len() - 1,
                "every closed segment, merged"
            );
            let compacted = read_all(&p);
            assert_ne!(compacted, original);
            let bases = segment_bases(&p);
            assert_eq!(bases, vec![0, *old_bases.last().unwrap()]);
            assert_eq!(files(&pdir, "timeindex"), 1, "the merged segments' went");
            let copy_log = pdir.join(segment::log_name(0));
            let copy_index = pdir.join(segment::index_name(0));
            let copy_time_index = pdir.join(segment::time_index_name(0));

            // Before the copy is named .swap: the old segments stay.
            let crash = dir.path().join("crash1");
            copy_dir(&before, &crash);
            std::fs::copy(&copy_log, crash.join(format!("{:020}.log.cleaning", 0))).unwrap();
            std::fs::copy(&copy_index, crash.join(format!("{:020}.index.swap", 0))).unwrap();
            assert_eq!(reopened(&crash), original);

            // Named .swap, some of the merged segments and the first index already
            // removed: the open finishes the swap.
            let crash = dir.path().join("crash2");
            copy_dir(&before, &crash);
            std::fs::copy(&copy_log, crash.join(format!("{:020}.log.swap", 0))).unwrap();
            std::fs::copy(&copy_index, crash.join(format!("{:020}.index.swap", 0))).unwrap();
            std::fs::remove_file(crash.join(segment::index_name(0))).unwrap();
            std::fs::remove_file(crash.join(segment::log_name(old_bases[1]))).unwrap();
            assert_eq!(reopened(&crash), compacted);
            assert_eq!(files(&crash, "log"), 2);
            assert_eq!(files(&crash, "timeindex"), 0, "the old segments' went");
            // The same with the copy's time index named .swap: it takes the
            // first segment's place.
            let crash = dir.path().join("crash2b");
            copy_dir(&before, &crash);
            std::fs::copy(&copy_log, crash.join(format!("{:020}.log.swap", 0))).unwrap();
            std::fs::copy(&copy_index, crash.join(format!("{:020}.index.swap", 0))).unwrap();
            std::fs::copy(
                &copy_time_index,
                crash.join(format!("{:020}.timeindex.swap", 0)),
            )
            .unwrap();
            assert_eq!(reopened(&crash), compacted);
            assert_eq!(files(&crash, "timeindex"), 1);
            assert_eq!(
                std::fs::read(crash.join(segment::time_index_name(0))).unwrap(),
                std::fs::read(&copy_time_index).unwrap()
            );

            // The log renamed, its index not yet: the log is scanned.
            let crash = dir.path().join("crash3");
            copy_dir(&pdir, &crash);
            std::fs::rename(
                crash.join(segment::index_name(0)),
                crash.join(format!("{:020}.index.swap", 0)),
            )
            .unwrap();
            assert_eq!(reopened(&crash), compacted);

            // A damaged .swap copy stops the open, naming it.
            let crash = dir.path().join("crash4");
            copy_dir(&before, &crash);
            let mut bytes = std::fs::read(&copy_log).unwrap();
            bytes[100] ^= 1;
            std::fs::write(crash.join(format!("{:020}.log.swap", 0)), bytes).unwrap();
            let e = Partition::open("t", 0, crash.clone(), 4096)
                .unwrap_err()
                .to_string();
            assert!(e.contains(".log.swap"), "{e}");
        }

        /// Every stored batch's header, read through `read` from the log
        /// start (checked whole, valid and contiguous by [`read_all`]).
        fn headers(p: &Partition) -> Vec<BatchInfo> {
            read_all(p);
            let mut out = Vec::new();
            let mut next = p.log_start_offset();
            while next < p.high_watermark() {
                let r = p.read(next, 1 << 20).unwrap().unwrap();
                let mut at = 0;
                while at < r.records.len() {
                    let info = batch::validate_stored(&r.records[at..]).unwrap();
                    next = info.last_offset() + 1;
                    at += info.len;
                    out.push(info);
                }
            }
            out
        }

        /// A batch of `keys` (values "v") from idempotent producer `pid` at
        /// epoch 0 from sequence `seq`, stored, and recorded in the
        /// partition's producer state as the broker's submit thread records
        /// it. Returns its base offset and the batch as produced (to send
        /// again as a retry).
        fn produce_as(p: &Partition, pid: i64, seq: i32, keys: &[&str]) -> (i64, Vec<u8>) {
            let rs: Vec<KeyedRecord<'_>> = keys
                .iter()
                .map(|k| (0, Some(k.as_bytes()), Some(&b"v"[..])))
                .collect();
            let b = make_keyed_batch(0, TS, &rs, pid, 0, seq);
            let base = store(p, b.clone());
            let mut infos = validate_all(&b).unwrap();
            infos[0].base_offset = base;
            p.producers().record(&infos);
            (base, b)
        }

        /// A keyed batch of 5,000 bytes: a segment of its own.
        fn big(p: &Partition, key: &str) -> i64 {
            let v = vec![b'f'; 5000];
            store(
                p,
                make_keyed_batch(0, TS, &[(0, Some(key.as_bytes()), Some(&v))], -1, -1, -1),
            )
        }

        fn remove_snapshots(dir: &Path) {
            for e in std::fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                if path.extension().is_some_and(|x| x == "producers") {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }

        /// When every record of an idempotent producer's last batch went (its
        /// keys written again by another producer), the batch went too, into
        /// an empty batch without a producer. Producer state read back from
        /// the log at start-up (without snapshots, or from an older one: a
        /// power loss takes those written since the last checkpoint) then
        /// found the producer's older batch, and refused its next batch as out
        /// of order, or none, and stored a retry of its last batch a second
        /// time. The batch now stays, empty, with its offsets, producer, epoch
        /// and base sequence, as Kafka's cleaner keeps it, and passes leave it
        /// alone while it is the producer's last.
        #[test]
        fn a_producers_emptied_last_batch_keeps_its_sequence_across_a_restart_without_snapshots() {
            // (P1 wrote an older batch that stays, the restart reads an older
            // snapshot rather than none)
            for (older, from_snapshot) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                let case = format!("older batch {older}, older snapshot {from_snapshot}");
                let (_dir, pdir, p) = fresh();
                if from_snapshot {
                    // A segment before, so that P1's starts with a snapshot
                    // (taken before P1 wrote) that the restart reads.
                    big(&p, "before");
                }
                // With `older`, P1's first batch ("c", sequence 0) stays.
                let first_seq = if older {
                    produce_as(&p, 1, 0, &["c"]);
                    1
                } else {
                    0
                };
                let (last, retry) = produce_as(&p, 1, first_seq, &["a", "b"]);
                produce_as(&p, 2, 0, &["a", "b"]);
                // The producers' segment closes: the filler starts the next.
                let active = big(&p, "filler");
                assert_eq!(active_base(&p), active);
                let stats = compact(&p, &policy(TS));
                assert_eq!(
                    (stats.segments, stats.records_removed),
                    (1, 2),
                    "{case}: {stats:?}"
                );
                let emptied: Vec<BatchInfo> = headers(&p)
                    .into_iter()
                    .filter(|h| h.producer_id == 1)
                    .collect();
                assert_eq!(
                    emptied.len(),
                    if older { 2 } else { 1 },
                    "{case}: {emptied:?}"
                );
                let e = emptied.last().unwrap();
                assert_eq!(
                    (e.base_offset, e.last_offset(), e.len),
                    (last, last + 1, HEADER_LEN),
                    "{case}"
                );
                assert_eq!(
                    (
                        e.producer_epoch,
                        e.base_sequence,
                        e.last_sequence(),
                        e.max_timestamp
                    ),
                    (0, first_seq, first_seq + 1, -1)
                );
                // A pass over it again finds nothing to change: it stays
                // while it holds the producer's last sequence.
                p.cleaned_through.store(0, Ordering::Release);
                assert_eq!(
                    compact(&p, &policy(TS)),
                    CompactionStats::default(),
                    "{case}"
                );

                drop(p);
                if from_snapshot {
                    // The newest segment's snapshot is lost; the one of the
                    // producers' segment, taken before they wrote, is read,
                    // then every batch from that segment on.
                    let newest = pdir.join(segment::producers_name(active));
                    std::fs::remove_file(newest).unwrap();
                    assert_eq!(files(&pdir, "producers"), 1, "{case}");
                } else {
                    remove_snapshots(&pdir);
                }
                let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
                let check = |b: &[u8]| p.producers().check(&validate_all(b).unwrap());
                let next =
                    make_keyed_batch(0, TS, &[(0, Some(b"d"), Some(b"v"))], 1, 0, first_seq + 2);
                assert_eq!(check(&next), Ok(Verdict::Append), "{case}");
                assert_eq!(check(&retry), Ok(Verdict::Duplicate(last)), "{case}");
            }
        }

        /// The emptied batch of a producer goes once the producer has a newer
        /// batch stored, in the pass's segments or after them, and stays for
        /// a producer the partition no longer remembers only while an older
        /// batch of it stays.
        #[test]
        fn a_producers_emptied_batch_goes_once_a_newer_one_is_stored() {
            let producer_ids = |p: &Partition| -> Vec<(i64, i64)> {
                headers(p)
                    .into_iter()
                    .filter(|h| h.producer_id >= 0)
                    .map(|h| (h.base_offset, h.producer_id))
                    .collect()
            };
            // A newer batch in the active segment, which the pass does not read.
            let (_dir, pdir, p) = fresh();
            produce_as(&p, 1, 0, &["a", "b"]);
            produce_as(&p, 2, 0, &["a", "b"]);
            big(&p, "filler");
            let (newer, retry) = produce_as(&p, 1, 2, &["d"]);
            assert!(newer >= active_base(&p));
            assert_eq!(compact(&p, &policy(TS)).records_removed, 2);
            assert_eq!(producer_ids(&p), vec![(2, 2), (newer, 1)]);
            drop(p);
            remove_snapshots(&pdir);
            let p = Partition::open("t", 0, pdir.clone(), 4096).unwrap();
            let check = |b: &[u8]| p.producers().check(&validate_all(b).unwrap());
            assert_eq!(check(&retry), Ok(Verdict::Duplicate(newer)));
            drop(p);

            // Kept by one pass; the producer writes again; the next pass
            // drops it (its segment alone changes only by that).
            let (_dir, _, p) = fresh();
            produce_as(&p, 1, 0, &["a", "b"]);
            produce_as(&p, 2, 0, &["a", "b"]);
            big(&p, "filler");
            store(
                &p,
                make_keyed_batch(0, TS, &[(0, Some(b"t"), Some(b"v"))], -1, -1, -1),
            );
            assert_eq!(compact(&p, &policy(TS)).records_removed, 2);
            assert_eq!(producer_ids(&p), vec![(0, 1), (2, 2)]);
            let (newer, _) = produce_as(&p, 1, 2, &["d"]);
            big(&p, "filler 2");
            p.cleaned_through.store(0, Ordering::Release);
            let stats = compact(&p, &policy(TS));
            assert_eq!((stats.segments, stats.records_removed), (1, 0), "{stats:?}");
            assert_eq!(producer_ids(&p), vec![(2, 2), (newer, 1)]);
            assert_eq!(read_all(&p)[0], (0, 1, Some(vec![])));

            // A producer the partition does not remember (idle past the
            // expiry): kept while its older batch stays, dropped otherwise.
            for older in [false, true] {
                let (_dir, _, p) = fresh();
                if older {
                    produce_as(&p, 1, 0, &["c"]);
                }
                let (last, _) = produce_as(&p, 1, i32::from(older), &["a", "b"]);
                produce_as(&p, 2, 0, &["a", "b"]);
                big(&p, "filler");
                store(
                    &p,
                    make_keyed_batch(0, TS, &[(0, Some(b"t"), Some(b"v"))], -1, -1, -1),
                );
                *p.producers() = ProducerState::default();
                assert_eq!(compact(&p, &policy(TS)).records_removed, 2);
                let kept = producer_ids(&p).contains(&(last, 1));
                assert_eq!(kept, older);
            }
        }

        /// Writes `records` as one lz4 batch the way a client with large
        /// blocks writes it: one 4 MiB-block frame whose single block can
        /// refer back across the whole records section, where the broker,
        /// compressing again as the Java client does, starts a new block every
        /// 64 KiB.
        fn lz4_one_block(records: &[KeyedRecord<'_>]) -> Vec<u8> {
            let plain = make_keyed_batch(0, TS, records, -1, -1, -1);
            let section = &plain[HEADER_LEN..];
            let (flg, bd) = (0x60u8, 0x70u8);
            let mut out = plain[..HEADER_LEN].to_vec();
            out.extend_from_slice(&0x184D_2204u32.to_le_bytes());
            out.extend_from_slice(&[flg, bd]);
            out.push((twox_hash::XxHash32::oneshot(0, &[flg, bd]) >> 8) as u8);
            let block = lz4_flex::block::compress(section);
            assert!(block.len() < section.len());
            out.extend_from_slice(&u32::try_from(block.len()).unwrap().to_le_bytes());
            out.extend_from_slice(&block);
            out.extend_from_slice(&0u32.to_le_bytes());
            out[22] |= 3;
            batch::seal(&mut out);
            assert_eq!(batch::payload(&out).as_deref(), Some(section));
            out
        }

        /// Groups are planned with what each batch takes now, and a batch
        /// compressed again was counted at its size as the client compressed
        /// it; the broker's compressor may do worse (here lz4 in 64 KiB
        /// blocks against the client's one block), so a merged copy could
        /// grow past `segment.bytes` (and, near the largest `segment.bytes`,
        /// past the 4 GiB a segment index addresses). A copy now ends before
        /// the segment that would take it past the bound, which starts the
        /// next group (and a segment left alone by that, from which nothing
        /// goes, is not rewritten).
        #[test]
        fn a_merged_copy_ends_before_batches_compressed_again_take_it_past_segment_bytes() {
            let (_dir, _, p) = fresh();
            // A segment from which nothing goes, planned in the same group.
            big(&p, "unchanged");
            // 20,000 bytes that do not compress, repeated in each record.
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let noise: Vec<u8> = (0..20_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let keys: Vec<Vec<String>> = (0..2)
                .map(|b| (0..12).map(|k| format!("b{b}k{k}")).collect())
                .collect();
            let mut sizes = Vec::new();
            for ks in &keys {
                let rs: Vec<KeyedRecord<'_>> = ks
                    .iter()
                    .map(|k| (0, Some(k.as_bytes()), Some(&noise[..])))
                    .collect();
                let b = lz4_one_block(&rs);
                sizes.push(b.len() as u64);
                store(&p, b);
            }
            // Each batch loses its first record; a segment of 4 KiB closes
            // the one holding the newer values.
            let mut model = Model::new();
            put(
                &p,
                &mut model,
                &[
                    (Some(&keys[0][0]), Some("new")),
                    (Some(&keys[1][0]), Some("new")),
                ],
            );
            big(&p, "filler");
            store(
                &p,
                make_keyed_batch(0, TS, &[(0, Some(b"t"), Some(b"v"))], -1, -1, -1),
            );
            let before: Vec<(i64, i64)> = {
                let log = p.log.lock().unwrap();
                log.iter()
                    .map(|s| (s.base_offset(), s.next_offset()))
                    .collect()
            };
            assert_eq!(before.len(), 6, "{before:?}");
            // The bound fits the three segments as the client compressed the
            // batches, not as the broker compresses them again.
            let mut pol = policy(TS);
            pol.segment_bytes = sizes[0] + sizes[1] + 8192;
            let stats = compact(&p, &pol);
            // The two with the batches each alone, and the two after them
            // merged; the first is left as it was.
            assert_eq!((stats.segments, stats.records_removed), (4, 2), "{stats:?}");
            let after: Vec<(i64, i64, u64)> = {
                let log = p.log.lock().unwrap();
                log.iter()
                    .map(|s| (s.base_offset(), s.next_offset(), s.size()))
                    .collect()
            };
            assert_eq!(
                &after[..3].iter().map(|a| (a.0, a.1)).collect::<Vec<_>>(),
                &before[..3]
            );
            let grew = after[1].2 + after[2].2;
            assert!(
                grew > pol.segment_bytes,
                "the batches compressed again take {grew} bytes, the bound is {}",
                pol.segment_bytes
            );
            for &(base, next, size) in &after {
                assert!(
                    size <= pol.segment_bytes || before.contains(&(base, next)),
                    "a copy merging segments takes {size} bytes past {}: {after:?}",
                    pol.segment_bytes
                );
            }
            // Nothing lost; every key's newest record is there once.
            for ks in &keys {
                for k in ks {
                    assert_eq!(records_of(&p, k.as_bytes()).len(), 1, "{k}");
                }
            }
            // The next pass leaves the copies as they are.
            p.cleaned_through.store(0, Ordering::Release);
            assert_eq!(compact(&p, &pol), CompactionStats::default());
        }
    }
}
