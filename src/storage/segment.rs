//! Append-only segment files of one partition.
//!
//! `<base offset, 20 digits>.log` holds RecordBatch v2 bytes back to back, exactly as
//! produced except the base offset. `<base>.index` holds one 8-byte entry per batch:
//! `(offset - base) as u32 BE, file position u32 BE`. A closed segment also has
//! `<base>.timeindex` ([`super::time_index`]): the newest timestamp of its batches,
//! which its index does not give. The index of the newest segment
//! is rebuilt on open by scanning the log (cutting a torn tail at the last batch whose
//! CRC checks); older segments trust their index when it is consistent with the log,
//! and are otherwise scanned at start-up without changing either file until the
//! start-up has judged what they lost (see [`Segment::open_older`]).
//! Nothing here syncs implicitly but the opening of the newest segment (see
//! [`Segment::open_newest`]): [`Segment::sync`] is `fdatasync`, called by the
//! checkpoint.
//!
//! Only a segment being written holds its files open. A sealed one
//! ([`Segment::seal`]: rolled past, or older than the newest at start-up)
//! closes them once synced, and its log is opened on demand for reads through
//! the broker-wide [`SegmentFiles`] cache, so the descriptors storage holds do
//! not grow with the number of segments.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use crate::error::{Error, Result};
use crate::file_at::FileAt;
use crate::wal::journal::{check_written, sync_all, sync_data};

use super::{
    batch::{self, BatchInfo, HEADER_LEN},
    producers::ProducerState,
    time_index::TimeIndex,
};

const INDEX_ENTRY: usize = 8;

/// One indexed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the batch.
    pub offset: i64,
    /// Position of the batch in the log file.
    pub position: u64,
}

/// Entries in each shared chunk of a [`BatchIndex`].
pub const INDEX_CHUNK: usize = 1024;

/// A segment's batch index in memory, oldest batch first: append-only, held as
/// full chunks of [`INDEX_CHUNK`] entries, each shared by `Arc` and never changed
/// again, and a tail of fewer. A clone copies the tail and one pointer per
/// chunk, never the chunks' entries; a segment keeps its index behind an `Arc`
/// too, so a reader outside the partition lock takes a closed segment's for the
/// cost of a pointer, and an append after a reader took the active one's copies
/// at most that much (see [`Segment::shared_index`]).
#[derive(Debug, Default)]
pub struct BatchIndex {
    /// Full chunks, each exactly [`INDEX_CHUNK`] entries.
    chunks: Vec<Arc<[IndexEntry]>>,
    /// The entries after the last chunk; fewer than [`INDEX_CHUNK`].
    tail: Vec<IndexEntry>,
}

#[cfg(test)]
thread_local! {
    /// Entries and chunk pointers copied by [`BatchIndex`] clones on this
    /// thread (tests).
    pub(crate) static INDEX_ENTRIES_COPIED: std::cell::Cell<u64> =
        const { std::cell::Cell::new(0) };
}

#[cfg(test)]
thread_local! {
    /// The log files [`SyncJob::run`] synced on this thread (tests).
    pub(crate) static SYNCED_LOGS: std::cell::RefCell<Vec<PathBuf>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// Log files whose next sync by [`SyncJob::run`] on this thread fails
    /// (tests).
    pub(crate) static FAIL_LOG_SYNCS: std::cell::RefCell<Vec<PathBuf>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Batch headers [`MaxTimestampJob::run`] read on this thread (tests).
    pub(crate) static MAX_TIMESTAMP_HEADERS_READ: std::cell::Cell<u64> =
        const { std::cell::Cell::new(0) };
}

impl Clone for BatchIndex {
    fn clone(&self) -> Self {
        #[cfg(test)]
        INDEX_ENTRIES_COPIED
            .with(|c| c.set(c.get() + (self.chunks.len() + self.tail.len()) as u64));
        BatchIndex {
            chunks: self.chunks.clone(),
            tail: self.tail.clone(),
        }
    }
}

impl BatchIndex {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.chunks.len() * INDEX_CHUNK + self.tail.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.tail.is_empty()
    }

    /// The entry at `i`.
    pub fn get(&self, i: usize) -> Option<IndexEntry> {
        let (chunk, at) = (i / INDEX_CHUNK, i % INDEX_CHUNK);
        match self.chunks.get(chunk) {
            Some(c) => c.get(at).copied(),
            None if chunk == self.chunks.len() => self.tail.get(at).copied(),
            None => None,
        }
    }

    /// The newest entry.
    pub fn last(&self) -> Option<IndexEntry> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    /// As [`slice::partition_point`]: the index of the first entry for which
    /// `pred` is false, the entries being ordered so that it is true before
    /// false.
    pub fn partition_point(&self, pred: impl Fn(&IndexEntry) -> bool) -> usize {
        let chunk = self.chunks.partition_point(|c| c.last().is_some_and(&pred));
        let within = match self.chunks.get(chunk) {
            Some(c) => c.partition_point(&pred),
            None => self.tail.partition_point(&pred),
        };
        chunk * INDEX_CHUNK + within
    }

    /// Every entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &IndexEntry> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .chain(self.tail.iter())
    }

    /// Appends `e` (newer than every entry).
    pub fn push(&mut self, e: IndexEntry) {
        self.tail.push(e);
        if self.tail.len() == INDEX_CHUNK {
            let full = std::mem::replace(&mut self.tail, Vec::with_capacity(INDEX_CHUNK));
            self.chunks.push(full.into());
        }
    }
}

impl FromIterator<IndexEntry> for BatchIndex {
    fn from_iter<I: IntoIterator<Item = IndexEntry>>(entries: I) -> Self {
        let mut index = BatchIndex::default();
        for e in entries {
            index.push(e);
        }
        index
    }
}

/// The `fdatasync`s that make a segment durable, runnable outside the partition lock.
#[derive(Debug)]
pub struct SyncJob {
    /// Base offset of the segment.
    pub base_offset: i64,
    /// The log and the index, each with the handle the segment held (a sealed
    /// segment hands its handles over: they close when the job is done), or
    /// `None` for one the job opens (a sealed segment whose last sync failed).
    files: [(Option<Arc<File>>, PathBuf); 2],
    /// The log's size when the job was taken: what its sync covers.
    log_len: u64,
}

impl SyncJob {
    /// Runs `fdatasync` on the log and the index.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn run(&self) -> Result<()> {
        let synced = |(f, path): &(Option<Arc<File>>, PathBuf)| -> Result<Arc<File>> {
            let f = match f {
                Some(f) => Arc::clone(f),
                None => Arc::new(
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(path)
                        .map_err(|e| Error::io("open", path, e))?,
                ),
            };
            sync_data(&f).map_err(|e| Error::io("fdatasync", path, e))?;
            Ok(f)
        };
        let [log, index] = &self.files;
        #[cfg(test)]
        if FAIL_LOG_SYNCS.with(|f| {
            let mut f = f.borrow_mut();
            let at = f.iter().position(|p| *p == log.1);
            at.map(|i| f.swap_remove(i)).is_some()
        }) {
            let e = std::io::Error::other("injected fdatasync failure");
            return Err(Error::io("fdatasync", &log.1, e));
        }
        let log_file = synced(log)?;
        synced(index)?;
        // The index is rebuilt from the log when it is short; the log must be whole.
        check_written(&log_file, self.log_len).map_err(|e| Error::io("fdatasync", &log.1, e))?;
        #[cfg(test)]
        SYNCED_LOGS.with(|s| s.borrow_mut().push(log.1.clone()));
        Ok(())
    }
}

/// Finds the newest timestamp of a closed segment's batches by reading each
/// batch header, runnable outside the partition lock.
#[derive(Debug)]
pub struct MaxTimestampJob {
    /// Base offset of the segment.
    pub base_offset: i64,
    /// The log's size when the job was taken: the batches it reads.
    pub size: u64,
    log: LogHandle,
}

impl MaxTimestampJob {
    /// Reads every batch header (batches lie back to back) and returns the
    /// newest `max_timestamp` and the base offset of the first batch holding
    /// it (what a time index keeps); `(-1, -1)` when none has one.
    ///
    /// # Errors
    /// I/O errors naming the file (a sealed segment's log is opened on
    /// demand); a header that does not parse, or a batch that extends past
    /// `size`, is [`Error::Corrupt`].
    pub fn run(&self) -> Result<(i64, i64)> {
        let file = self.log.open()?;
        let path = self.log.path();
        let mut head = [0u8; HEADER_LEN];
        let (mut pos, mut max, mut holder) = (0u64, -1i64, -1i64);
        while pos < self.size {
            let info = read_batch_header(&file, path, pos, self.size, &mut head)?;
            #[cfg(test)]
            MAX_TIMESTAMP_HEADERS_READ.with(|c| c.set(c.get() + 1));
            if info.max_timestamp > max {
                (max, holder) = (info.max_timestamp, info.base_offset);
            }
            pos += info.len as u64;
        }
        Ok((max, holder))
    }
}

/// A closed segment's time index, written outside the partition lock once
/// its newest timestamp was learned by reading its batch headers (see
/// [`Segment::time_index_job`]): [`TimeIndexJob::write`] writes it whole and
/// `fdatasync`s it under a temporary name (`<base>.timeindex-tmp`), and
/// [`Segment::install_time_index`], under the lock, renames it into place
/// only if the segment is still the one it describes.
#[derive(Debug)]
pub struct TimeIndexJob {
    /// Which segment (see `Segment::id`).
    segment: u64,
    /// Base offset of the segment.
    pub base_offset: i64,
    bytes: [u8; super::time_index::LEN],
    tmp: PathBuf,
}

impl TimeIndexJob {
    /// Writes the time index under its temporary name and `fdatasync`s it;
    /// on failure the temporary file is removed.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn write(&self) -> Result<()> {
        write_synced(&self.tmp, &self.bytes).inspect_err(|_| self.discard())
    }

    /// Removes the temporary file, if there is one (the segment went or
    /// changed, or the write failed).
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Read handles [`SegmentFiles`] keeps open by default, at most.
pub const DEFAULT_OPEN_FILES: usize = 256;

/// The default bound of [`SegmentFiles`]: a quarter of the soft open-file
/// limit in force (the broker raises it to the hard limit at start), at most
/// [`DEFAULT_OPEN_FILES`] and at least 1; [`DEFAULT_OPEN_FILES`] where there
/// is no limit to ask for.
pub fn default_open_files() -> usize {
    open_file_limit().map_or(DEFAULT_OPEN_FILES, |limit| {
        usize::try_from(limit / 4)
            .unwrap_or(usize::MAX)
            .clamp(1, DEFAULT_OPEN_FILES)
    })
}

/// The soft limit on open files (`RLIMIT_NOFILE`), when there is one.
#[cfg(unix)]
#[allow(
    clippy::useless_conversion,
    reason = "the conversion is the identity only where rlim_t is u64"
)]
pub(crate) fn open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft == RLIM_INFINITY {
        return None;
    }
    u64::try_from(soft).ok()
}

#[cfg(not(unix))]
pub(crate) fn open_file_limit() -> Option<u64> {
    None
}

/// Which file a path named when a segment was opened: device and inode, so
/// that a sealed segment's log opened again by path is known to be the same
/// file (compaction renames its copy over a segment's log). `None` where the
/// platform does not say.
type FileId = Option<(u64, u64)>;

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> FileId {
    None
}

/// The broker-wide cache of open read handles on sealed segments' logs.
///
/// Only a partition's active segment (and a segment being written: a
/// compacted copy, a rebuilt log) keeps its files open for good. A sealed
/// segment (rolled, synced) closes both: its batch index is in memory
/// ([`BatchIndex`]), and its log is opened on demand for reads through this
/// cache, which keeps at most `capacity` handles, closing the least recently
/// used beyond that. A reader holds the `Arc<File>` it got: eviction never
/// breaks a read in flight, the descriptor closes when the last holder drops
/// it. So the descriptors storage holds are bounded by the partitions' active
/// segments, this cache and the reads in flight, not by the number of
/// segments.
#[derive(Debug)]
pub struct SegmentFiles {
    capacity: usize,
    lru: Mutex<Lru>,
    /// Logs opened on demand since the cache was made (tests, diagnostics).
    opened: AtomicU64,
}

/// The cached handles by segment id, and the ids by last use.
#[derive(Debug, Default)]
struct Lru {
    /// Segment id → (handle, the tick of its last use).
    entries: HashMap<u64, (Arc<File>, u64)>,
    /// Tick of last use → segment id, oldest first.
    by_use: BTreeMap<u64, u64>,
    tick: u64,
}

impl Lru {
    fn touch(&mut self, id: u64) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        let (file, used) = self.entries.get_mut(&id)?;
        self.by_use.remove(used);
        *used = tick;
        self.by_use.insert(tick, id);
        Some(Arc::clone(file))
    }

    fn remove(&mut self, id: u64) -> Option<Arc<File>> {
        let (file, used) = self.entries.remove(&id)?;
        self.by_use.remove(&used);
        Some(file)
    }
}

/// Source of the ids of sealed segments: each sealed segment is one cache
/// entry, whatever its path.
static NEXT_SEALED_ID: AtomicU64 = AtomicU64::new(0);

impl SegmentFiles {
    /// A cache keeping at most `capacity` handles open (at least 1).
    pub fn new(capacity: usize) -> Arc<SegmentFiles> {
        Arc::new(SegmentFiles {
            capacity: capacity.max(1),
            lru: Mutex::new(Lru::default()),
            opened: AtomicU64::new(0),
        })
    }

    /// The most handles kept open.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The handles open in the cache now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no handle is open in the cache.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Logs opened on demand so far (a read the cache answered opens none).
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The handle on `log`, opening it on a miss (outside the cache's lock).
    fn get(&self, log: &SealedLog) -> Result<Arc<File>> {
        if let Some(f) = self.lock().touch(log.id) {
            return Ok(f);
        }
        let file = File::open(&log.path).map_err(|e| Error::io("open", &log.path, e))?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        if log.file_id.is_some() {
            let meta = file
                .metadata()
                .map_err(|e| Error::io("stat", &log.path, e))?;
            if file_id(&meta) != log.file_id {
                return Err(Error::io(
                    "open",
                    &log.path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the segment's log was replaced since it was sealed",
                    ),
                ));
            }
        }
        let file = Arc::new(file);
        let evicted = {
            let mut lru = self.lock();
            // A segment dropped meanwhile (removed, replaced) gets no entry:
            // its reader keeps this handle, and it closes with the read.
            if log.retired.load(Ordering::Acquire) {
                return Ok(file);
            }
            if let Some(f) = lru.touch(log.id) {
                // Another reader opened it meanwhile: one handle is enough.
                return Ok(f);
            }
            lru.tick += 1;
            let tick = lru.tick;
            lru.entries.insert(log.id, (Arc::clone(&file), tick));
            lru.by_use.insert(tick, log.id);
            let mut evicted = Vec::new();
            while lru.entries.len() > self.capacity {
                let Some((_, id)) = lru.by_use.pop_first() else {
                    break;
                };
                evicted.extend(lru.entries.remove(&id).map(|(f, _)| f));
            }
            evicted
        };
        // Closed outside the lock (a reader may still hold some).
        drop(evicted);
        Ok(file)
    }

    /// Closes every handle the cache holds (a read in flight keeps the one it
    /// took, which closes when the read ends), for a segment roll short of
    /// file descriptors. Returns how many the cache held.
    pub fn release(&self) -> usize {
        let entries = {
            let mut lru = self.lock();
            lru.by_use.clear();
            std::mem::take(&mut lru.entries)
        };
        let held = entries.len();
        // Closed outside the lock.
        drop(entries);
        held
    }

    /// Closes the cache's handle on a segment that is gone or replaced.
    fn forget(&self, log: &SealedLog) {
        let file = {
            let mut lru = self.lock();
            log.retired.store(true, Ordering::Release);
            lru.remove(log.id)
        };
        drop(file);
    }
}

/// A sealed segment's log as [`SegmentFiles`] opens it.
#[derive(Debug)]
pub struct SealedLog {
    id: u64,
    path: PathBuf,
    file_id: FileId,
    /// Set when the segment is dropped: no entry is made for it after that.
    retired: AtomicBool,
    files: Arc<SegmentFiles>,
}

/// A segment's log for a reader outside the partition lock: the file the
/// segment holds open, or the way to open a sealed one through the cache.
#[derive(Debug, Clone)]
pub enum LogHandle {
    /// The segment holds its log open (active, being written or not yet synced).
    Held {
        /// The open log.
        file: Arc<File>,
        /// Its path.
        path: PathBuf,
    },
    /// A sealed segment's log, opened on demand through [`SegmentFiles`].
    Sealed(Arc<SealedLog>),
}

impl LogHandle {
    /// The open log.
    ///
    /// # Errors
    /// Opening a sealed segment's log fails naming the path: `NotFound` when
    /// it was removed (retention) or replaced (compaction) since the handle was
    /// taken; `EMFILE` and the like as the system says.
    pub fn open(&self) -> Result<Arc<File>> {
        match self {
            LogHandle::Held { file, .. } => Ok(Arc::clone(file)),
            LogHandle::Sealed(log) => log.files.get(log),
        }
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        match self {
            LogHandle::Held { path, .. } => path,
            LogHandle::Sealed(log) => &log.path,
        }
    }

    /// The log's last modification, when it can be read (`None` for one
    /// removed or replaced since the handle was taken).
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        match self {
            LogHandle::Held { file, .. } => file.metadata(),
            LogHandle::Sealed(log) => std::fs::metadata(&log.path),
        }
        .and_then(|m| m.modified())
        .ok()
    }
}

/// Whether `e` says a segment's file is gone: removed by retention or
/// DeleteRecords, or replaced by compaction, since its handle was taken.
pub fn is_gone(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Reads and parses the header of the batch at `position` of the log `file`
/// (`path`) into `head` (its first [`HEADER_LEN`] bytes), checking that the
/// batch ends within the log's first `size` bytes.
///
/// # Errors
/// I/O errors naming the file; a header that does not parse, or a batch that
/// extends past `size`, is [`Error::Corrupt`] at `position`.
pub(crate) fn read_batch_header(
    file: &File,
    path: &Path,
    position: u64,
    size: u64,
    head: &mut [u8],
) -> Result<BatchInfo> {
    let head = &mut head[..HEADER_LEN];
    file.read_exact_at(head, position)
        .map_err(|e| Error::io("read", path, e))?;
    let info =
        batch::parse_header(head).map_err(|e| Error::corrupt(path, position, e.to_string()))?;
    if position + info.len as u64 > size {
        return Err(Error::corrupt(
            path,
            position,
            "batch extends past the end of the segment",
        ));
    }
    Ok(info)
}

/// One segment: a log file and its offset index.
///
/// While it is written (the active segment of its partition) it holds both
/// files open. Once [sealed](Segment::seal) and synced it holds neither: its
/// index is in memory, and its log is opened on demand through the
/// broker-wide [`SegmentFiles`].
#[derive(Debug)]
pub struct Segment {
    /// Tells this segment from every other one opened or created by the
    /// process, a later one at the same base included (a compacted copy, a
    /// segment created again): what a [`TimeIndexJob`] is for.
    id: u64,
    base_offset: i64,
    log_path: PathBuf,
    index_path: PathBuf,
    /// Its files: held open, or sealed.
    files: LogFiles,
    /// Which file the log is (see [`FileId`]).
    log_id: FileId,
    /// Shared with readers outside the partition lock (see [`BatchIndex`]).
    index: Arc<BatchIndex>,
    /// CRC32C of the index file's bytes (those `index` encodes).
    index_crc: u32,
    size: u64,
    next_offset: i64,
    dirty: bool,
    /// The opening sync of the index failed: the scan rewrites it whatever it
    /// holds.
    index_suspect: bool,
    /// What the opening scan cut off, if anything.
    cut: Option<Cut>,
    /// Opened by [`Segment::open_older`] with an index that did not match its
    /// log, and both files left as found: the index file not rewritten, and
    /// the log's bytes past `size` (a cut) kept, until the start-up judges the
    /// damage (see [`Segment::settle`]).
    unsettled: bool,
    /// The newest record timestamp of the segment's batches; -1 when none. For
    /// an older segment opened from its index, that of its time index when it
    /// holds; without one, that of its last batch until
    /// [`Segment::max_timestamp_job`] finds the newest of all
    /// (`max_timestamp_exact` false until then).
    max_timestamp: i64,
    /// Whether `max_timestamp` is the newest of all the segment's batches.
    max_timestamp_exact: bool,
    /// Base offset of the first batch holding `max_timestamp` (-1 when none
    /// has a timestamp), when known: with `max_timestamp_exact`, unless that
    /// was set without it (a compacted copy whose time index could not be
    /// written).
    max_timestamp_offset: Option<i64>,
    /// Whether the time index file says what this segment is now (loaded from
    /// it, or saved by [`Segment::save_time_index`]).
    time_index_saved: bool,
    /// The newest record timestamp of the segment's first batch; -1 when it has
    /// none (or, for an older segment opened from its index, unknown).
    first_timestamp: i64,
    /// Wall-clock milliseconds when this segment was created or opened.
    opened_ms: i64,
    /// Wall-clock milliseconds by which every batch it held when opened had
    /// been stored: the log file's modification time as found (before the open
    /// syncs, rebuilds or cuts it); now for a created segment, or when the
    /// filesystem does not say. Idempotent producers read back at start-up are
    /// aged from no earlier than this (see [`super::producers`]).
    stored_by_ms: i64,
}

/// The next [`Segment`]'s `id`.
static NEXT_SEGMENT_ID: AtomicU64 = AtomicU64::new(0);

/// The files a segment holds open while it is written, or sealed but not yet
/// synced.
#[derive(Debug, Clone)]
struct Held {
    log: Arc<File>,
    index: Arc<File>,
}

/// A segment's files: open for good, or opened on demand once sealed.
#[derive(Debug)]
enum LogFiles {
    /// Written to: both files held open.
    Open(Held),
    /// Sealed with changes not yet synced: held until its [`SyncJob`] is
    /// taken, which closes them when it is done.
    SealedOpen(Held, Arc<SealedLog>),
    /// Sealed and synced: nothing held; the log is opened for reads through
    /// [`SegmentFiles`].
    Sealed(Arc<SealedLog>),
}

impl Drop for Segment {
    fn drop(&mut self) {
        // The cache's handle on a segment that is gone or replaced closes now
        // (a reader holding one keeps it until its read ends), so a removed
        // log's space is freed.
        if let LogFiles::SealedOpen(_, log) | LogFiles::Sealed(log) = &self.files {
            log.files.forget(log);
        }
    }
}

#[cfg(test)]
thread_local! {
    /// The calls of [`Segment::modified_ms`] on this thread (tests).
    pub(crate) static MODIFIED_READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A file's modification time in milliseconds since the Unix epoch, if the
/// filesystem says.
fn modified_ms(meta: &std::fs::Metadata) -> Option<i64> {
    let t = meta.modified().ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Bytes the opening scan of a segment removed from its end (or, for an
/// older segment not yet [settled](Segment::settle), left out of it while
/// keeping them on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Byte position of the first batch not accepted: the file's new size,
    /// or, in an unsettled segment, where the bytes left out begin.
    pub position: u64,
    /// The file's size before the cut.
    pub size: u64,
    /// Why the batch at `position` was not accepted.
    pub reason: String,
}

/// Name of the log file of the segment starting at `base`.
pub fn log_name(base: i64) -> String {
    format!("{base:020}.log")
}

/// Name of the index file of the segment starting at `base`.
pub fn index_name(base: i64) -> String {
    format!("{base:020}.index")
}

/// Name of the time index of the segment starting at `base` (see
/// [`super::time_index`]).
pub fn time_index_name(base: i64) -> String {
    format!("{base:020}.timeindex")
}

/// Suffix of the time index a [`TimeIndexJob`] writes before it is renamed to
/// [`time_index_name`]; left over only by a crash or a segment that went
/// meanwhile, and removed when the partition opens.
pub const TIME_INDEX_TMP_SUFFIX: &str = ".timeindex-tmp";

/// Name of the time index of the segment starting at `base` while a
/// [`TimeIndexJob`] writes it (`<base>.timeindex-tmp`).
fn time_index_tmp_name(base: i64) -> String {
    format!("{base:020}{TIME_INDEX_TMP_SUFFIX}")
}

/// Name of the producer state snapshot taken when the segment starting at `base`
/// was started.
pub fn producers_name(base: i64) -> String {
    format!("{base:020}.producers")
}

/// Name of the compacted copy of a segment's log being written beside it
/// (`<base>.log.cleaning`), and of its index; left over only by a crash, and
/// removed when the partition opens.
pub fn cleaning_names(base: i64) -> (String, String) {
    (
        format!("{base:020}.log.cleaning"),
        format!("{base:020}.index.cleaning"),
    )
}

/// Suffix of the files [`cleaning_names`] makes.
pub const CLEANING_SUFFIX: &str = ".cleaning";

/// Name of the time index of a compacted copy being written
/// (`<base>.timeindex.cleaning`), removed with the other [`cleaning_names`].
fn cleaning_time_index_name(base: i64) -> String {
    format!("{}{CLEANING_SUFFIX}", time_index_name(base))
}

/// Name of the time index of a finished compacted copy waiting to replace the
/// segments it covers (`<base>.timeindex.swap`).
fn swap_time_index_name(base: i64) -> String {
    format!("{}.swap", time_index_name(base))
}

/// Name of the copy of a segment's log written when the segment is rebuilt at
/// start-up (`<base>.log.rebuild`; see [`Segment::open_newest`]); left over only by
/// a crash, and removed when the partition opens.
fn rebuild_name(base: i64) -> String {
    format!("{base:020}.log{REBUILD_SUFFIX}")
}

/// Suffix of the file [`rebuild_name`] makes.
pub const REBUILD_SUFFIX: &str = ".rebuild";

/// Names of a finished compacted copy waiting to replace the segments it covers
/// (`<base>.log.swap`, `<base>.index.swap`).
fn swap_names(base: i64) -> (String, String) {
    (
        format!("{base:020}.log.swap"),
        format!("{base:020}.index.swap"),
    )
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Name of the file in a partition's directory recording that compaction put
/// copies in place there, whatever the topic's `cleanup.policy` is now (see
/// [`compacted_through`]).
pub const COMPACTED_FILE: &str = "compacted.json";

/// [`COMPACTED_FILE`]'s contents.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CompactedFile {
    /// Format version (1).
    version: u32,
    /// The largest base offset of a compacted copy ever put in place.
    newest_copy_base: i64,
    /// CRC32C of the file's other fields (see [`super::checked`]): a digit
    /// lowered by damage would let a damaged compacted copy be rebuilt from
    /// the WAL, bringing back records the cleaner removed. Absent in files
    /// written before it existed (loaded unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<u32>,
}

super::checked::checked_by_field!(CompactedFile);

/// The largest base offset of a compacted copy ever put in place in the
/// partition directory `dir` (`None`: never): a segment based at or below it
/// may be a compacted copy, whose records the WAL's no longer match (the
/// copy keeps its original offsets, without the records the cleaner
/// removed). Kept when the topic's policy changes to `delete`, and never
/// lowered.
///
/// # Errors
/// I/O errors naming the file; [`Error::Corrupt`] when it does not parse,
/// has another version or its checksum does not match.
pub fn compacted_through(dir: &Path) -> Result<Option<i64>> {
    let path = dir.join(COMPACTED_FILE);
    let Some(raw) = crate::wal::files::read_if_exists(&path)? else {
        return Ok(None);
    };
    let f: CompactedFile = serde_json::from_slice(&raw)
        .map_err(|e| Error::corrupt(&path, 0, format!("{COMPACTED_FILE} does not parse: {e}")))?;
    if f.version != 1 {
        return Err(Error::corrupt(
            &path,
            0,
            format!("unknown {COMPACTED_FILE} version {}", f.version),
        ));
    }
    super::checked::Checked::verify(&f, &path, &raw)?;
    Ok(Some(f.newest_copy_base))
}

/// Records durably in `dir` (atomic replace, directory fsync) that a
/// compacted copy based at `base` is about to be put in place, unless
/// [`COMPACTED_FILE`] already covers it. A damaged file (one that does not
/// parse or check) is replaced by one covering `ceiling` too, the base of
/// the partition's newest segment: no copy was ever put in place above it.
///
/// # Errors
/// I/O errors naming the file.
pub(crate) fn note_compacted(dir: &Path, base: i64, ceiling: i64) -> Result<()> {
    let path = dir.join(COMPACTED_FILE);
    let newest_copy_base = match compacted_through(dir) {
        Ok(Some(b)) if b >= base => return Ok(()),
        Ok(_) => base,
        // Damaged (or a later build's): what it held is unknown, so the new
        // file covers every segment there is, which a start takes as it
        // takes the damaged file. Left as it was, every pass would fail here
        // for as long as the broker ran, and after every restart.
        Err(e @ Error::Corrupt { .. }) => {
            tracing::warn!(file = %path.display(), error = %e, "replacing a damaged compacted.json with one covering every segment of the partition");
            base.max(ceiling)
        }
        Err(e) => return Err(e),
    };
    let f = super::checked::Checked::sealed(CompactedFile {
        version: 1,
        newest_copy_base,
        crc32c: None,
    });
    let json = serde_json::to_vec(&f).map_err(|e| Error::corrupt(&path, 0, e.to_string()))?;
    crate::wal::files::write_atomic(&path, &json)
}

/// Puts the finished compacted copy of the segments starting at `base` and at
/// each of `merged` (the later segments of its group, if any) in their place.
///
/// 0. [`COMPACTED_FILE`] is made to cover `base`, durably, so that a start
///    never rebuilds the copy's lost batches from the WAL (see
///    [`compacted_through`]); if that fails nothing else changes (the
///    caller removes the `.cleaning` copy; a start would). A caller that did
///    this itself ([`note_compacted`], outside its partition's lock) does
///    it again at the cost of a read.
/// 1. The copy is renamed from `.cleaning` to `.swap` and the directory fsynced:
///    from then on the copy is the segment, and an open that finds it finishes
///    the swap ([`recover_swaps`]).
/// 2. The merged segments' files and the first segment's index are removed,
///    the copy is renamed to `<base>.log` and `<base>.index`, and the directory
///    is fsynced.
///
/// A crash before step 1 leaves the old segments (and a `.cleaning` copy that the
/// next open removes); one after it, the copy.
///
/// # Errors
/// I/O errors naming the file.
pub fn install_swap(dir: &Path, base: i64, merged: &[i64]) -> Result<()> {
    note_compacted(dir, base, base)?;
    let (cleaning_log, cleaning_index) = cleaning_names(base);
    let (swap_log, swap_index) = swap_names(base);
    let cleaning_time_index = dir.join(cleaning_time_index_name(base));
    let swap_time_index = dir.join(swap_time_index_name(base));
    match std::fs::rename(&cleaning_time_index, &swap_time_index) {
        Ok(()) => {}
        // The copy's time index could not be written: it opens without one.
        // A `.timeindex.swap` an earlier swap left when it failed before its
        // log was renamed describes another copy, and `finish_swap` would
        // put it in place with this one: it goes, durably with the directory
        // fsync below, before this copy's log takes the `.swap` name.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            remove_if_present(&swap_time_index)?;
        }
        Err(e) => return Err(Error::io("rename", &cleaning_time_index, e)),
    }
    for (from, to) in [(cleaning_index, swap_index), (cleaning_log, swap_log)] {
        let (from, to) = (dir.join(from), dir.join(to));
        std::fs::rename(&from, &to).map_err(|e| Error::io("rename", &from, e))?;
    }
    super::sync_dir(dir)?;
    finish_swap(dir, base, merged)
}

/// Step 2 of [`install_swap`].
fn finish_swap(dir: &Path, base: i64, merged: &[i64]) -> Result<()> {
    for &b in merged {
        for name in [
            time_index_name(b),
            producers_name(b),
            index_name(b),
            log_name(b),
        ] {
            remove_if_present(&dir.join(name))?;
        }
    }
    // The first segment's time index describes the log the copy replaces: it
    // goes before the copy takes the log's name.
    remove_if_present(&dir.join(time_index_name(base)))?;
    remove_if_present(&dir.join(index_name(base)))?;
    let (swap_log, swap_index) = swap_names(base);
    let swap_log = dir.join(swap_log);
    let log = dir.join(log_name(base));
    std::fs::rename(&swap_log, &log).map_err(|e| Error::io("rename", &swap_log, e))?;
    finish_swap_indexes(dir, base, &swap_index)
}

/// The end of [`finish_swap`], once the copy's log has its name: its index
/// and time index are renamed into place (either may be missing) and the
/// directory is fsynced.
fn finish_swap_indexes(dir: &Path, base: i64, swap_index: &str) -> Result<()> {
    let swap_index = dir.join(swap_index);
    match std::fs::rename(&swap_index, dir.join(index_name(base))) {
        Ok(()) => {}
        // A log without an index is scanned at open.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("rename", &swap_index, e)),
    }
    let swap_time_index = dir.join(swap_time_index_name(base));
    match std::fs::rename(&swap_time_index, dir.join(time_index_name(base))) {
        Ok(()) => {}
        // A copy without a time index has its batch headers read when needed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("rename", &swap_time_index, e)),
    }
    super::sync_dir(dir)
}

/// Finishes the swap of the copy of the segments starting at `base` and at
/// each of `merged` after [`install_swap`] failed once the copy's log had
/// left its `.cleaning` name (a passing shortage of file descriptors for a
/// directory fsync, say), as a start would ([`recover_swaps`]): from the
/// directory fsync of step 1 while the copy's log is still named `.swap`,
/// and otherwise from the renames of its indexes after it.
///
/// # Errors
/// I/O errors naming the file or directory.
pub fn resume_swap(dir: &Path, base: i64, merged: &[i64]) -> Result<()> {
    let (swap_log, swap_index) = swap_names(base);
    let swap_log = dir.join(swap_log);
    match std::fs::symlink_metadata(&swap_log) {
        Ok(_) => {
            super::sync_dir(dir)?;
            finish_swap(dir, base, merged)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            finish_swap_indexes(dir, base, &swap_index)
        }
        Err(e) => Err(Error::io("stat", &swap_log, e)),
    }
}

/// The offset after the last batch of a segment log file, reading every batch.
fn end_of(path: &Path, base: i64) -> Result<i64> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let size = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let (mut pos, mut next) = (0u64, base);
    let mut buf = vec![0u8; HEADER_LEN];
    while pos < size {
        buf.resize(HEADER_LEN, 0);
        let info = read_batch_header(&file, path, pos, size, &mut buf)?;
        buf.resize(info.len, 0);
        file.read_exact_at(&mut buf, pos)
            .map_err(|e| Error::io("read", path, e))?;
        batch::validate_stored(&buf).map_err(|e| Error::corrupt(path, pos, e.to_string()))?;
        if info.base_offset != next {
            return Err(Error::corrupt(
                path,
                pos,
                format!(
                    "batch offset {} does not continue the copy (expected {next})",
                    info.base_offset
                ),
            ));
        }
        next = info.last_offset() + 1;
        pos += info.len as u64;
    }
    Ok(next)
}

/// The base offset a segment file's name stem gives: exactly the 20 digits its
/// files are named with (`{base:020}`), nothing else. A stray file named
/// otherwise (`7.log`, `+7.log`, `-1.log`) is not a segment: read as one, its
/// base made the start open and create files at the canonical name, and one
/// inside the log sent the empty-segment cleanup round forever (a stack
/// overflow at every start).
pub(crate) fn base_of(stem: &str) -> Option<i64> {
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse::<i64>().ok())
        .flatten()
}

/// The largest base offset a segment may have: room above it for any batch's
/// offsets (a 32-bit delta) and for the offset after its last, twice over.
/// The open adds to a segment's offsets, so a larger base (and a batch
/// rewritten to match it, which its CRC does not cover) near `i64::MAX`
/// overflowed: a panic in debug builds, and in release a log end wrapped to
/// `i64::MIN`.
pub(crate) const MAX_BASE: i64 = i64::MAX - 2 * (u32::MAX as i64) - 2;

/// Finishes every swap a crash interrupted in `dir` (see [`install_swap`]): a
/// `<base>.log.swap` replaces `<base>.log` and every segment whose base lies
/// after `base` and before the copy's end. Leftover `.index.swap` and
/// `.timeindex.swap` files whose log was already renamed are removed.
///
/// # Errors
/// I/O errors naming the file; a copy that does not validate (it was fsynced
/// before it was named `.swap`, so this is damage) is [`Error::Corrupt`].
pub fn recover_swaps(dir: &Path) -> Result<()> {
    let mut swaps = Vec::new();
    let mut logs = Vec::new();
    let mut stray_indexes = Vec::new();
    let mut stray_time_indexes = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io("read_dir", dir, e))? {
        let entry = entry.map_err(|e| Error::io("read_dir", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let base = |suffix: &str| name.strip_suffix(suffix).and_then(base_of);
        if let Some(b) = base(".log.swap") {
            swaps.push(b);
        } else if let Some(b) = base(".log") {
            logs.push(b);
        } else if let Some(b) = base(".index.swap") {
            stray_indexes.push(b);
        } else if let Some(b) = base(".timeindex.swap") {
            stray_time_indexes.push(b);
        }
    }
    for &b in &swaps {
        let (swap_log, _) = swap_names(b);
        let path = dir.join(&swap_log);
        let end = end_of(&path, b).map_err(|e| match e {
            Error::Corrupt { offset, reason, .. } => Error::corrupt(
                &path,
                offset,
                format!(
                    "{reason}: this compacted copy was to replace {} and the segments after it \
                     up to its end, some of which may already be removed; remove it to keep \
                     the segments that are left, or restore the partition",
                    log_name(b)
                ),
            ),
            other => other,
        })?;
        let merged: Vec<i64> = logs.iter().copied().filter(|&x| x > b && x < end).collect();
        tracing::warn!(dir = %dir.display(), base = b, end, merged = merged.len(), "finishing a compaction a crash interrupted");
        finish_swap(dir, b, &merged)?;
    }
    for b in stray_indexes.into_iter().filter(|b| !swaps.contains(b)) {
        remove_if_present(&dir.join(swap_names(b).1))?;
    }
    for b in stray_time_indexes
        .into_iter()
        .filter(|b| !swaps.contains(b))
    {
        remove_if_present(&dir.join(swap_time_index_name(b)))?;
    }
    Ok(())
}

/// Where a [`CleanedWriter`]'s copy stood ([`CleanedWriter::mark`]).
#[derive(Debug, Clone, Copy)]
pub struct CopyMark {
    size: u64,
    index_len: usize,
    next_offset: i64,
    max_timestamp: i64,
    max_timestamp_offset: i64,
}

/// Writes the compacted copy of one segment beside it: whole batches in order,
/// the index for them, and its time index. [`CleanedWriter::finish`] makes
/// them durable; [`install_swap`] puts them in place of the segments they
/// cover.
#[derive(Debug)]
pub struct CleanedWriter {
    base: i64,
    log: std::io::BufWriter<File>,
    log_path: PathBuf,
    index_path: PathBuf,
    index: Vec<u8>,
    size: u64,
    /// The offset after the last batch written.
    next_offset: i64,
    /// The newest `max_timestamp` of the batches written; -1 when none has one.
    max_timestamp: i64,
    /// Base offset of the first batch written with `max_timestamp`; -1 when
    /// none has one.
    max_timestamp_offset: i64,
    /// The last modification time the copy's log is given
    /// ([`CleanedWriter::keep_modified`]).
    modified: Option<std::time::SystemTime>,
}

impl CleanedWriter {
    /// Gives the copy's log the last modification time `t` when it is
    /// finished: that of the newest segment it replaces, as Kafka's cleaner
    /// does. A segment left with only empty batches is aged by it for time
    /// retention, and the pass's own time would hold back the retention of
    /// every segment after it.
    pub fn keep_modified(&mut self, t: Option<std::time::SystemTime>) {
        self.modified = t;
    }

    /// Starts the copy of the segment starting at `base` in `dir` (replacing a
    /// copy a crash left).
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn create(dir: &Path, base: i64) -> Result<CleanedWriter> {
        let (log, index) = cleaning_names(base);
        let log_path = dir.join(log);
        let file = File::create(&log_path).map_err(|e| Error::io("create", &log_path, e))?;
        Ok(CleanedWriter {
            base,
            log: std::io::BufWriter::with_capacity(1 << 20, file),
            log_path,
            index_path: dir.join(index),
            index: Vec::new(),
            size: 0,
            next_offset: base,
            max_timestamp: -1,
            max_timestamp_offset: -1,
            modified: None,
        })
    }

    /// Appends one whole batch whose base offset is `offset` and whose header's
    /// largest timestamp is `max_timestamp`.
    ///
    /// # Errors
    /// I/O errors naming the file; a batch whose header does not parse is
    /// [`Error::Corrupt`].
    pub fn push(&mut self, batch: &[u8], offset: i64, max_timestamp: i64) -> Result<()> {
        use std::io::Write;
        let info = batch::parse_header(batch)
            .map_err(|e| Error::corrupt(&self.log_path, self.size, e.to_string()))?;
        // The index holds both as 32 bits: a copy that outgrew them could not
        // be read back (never written, rather than indexed wrongly).
        let (Ok(rel), Ok(position)) = (u32::try_from(offset - self.base), u32::try_from(self.size))
        else {
            return Err(Error::io(
                "write",
                &self.log_path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "a batch at offset {offset} would lie at byte {} of the compacted copy \
                         starting at offset {}, past what a segment index addresses (4 GiB and \
                         2^32 offsets)",
                        self.size, self.base
                    ),
                ),
            ));
        };
        self.log
            .write_all(batch)
            .map_err(|e| Error::io("write", &self.log_path, e))?;
        self.index.extend_from_slice(&rel.to_be_bytes());
        self.index.extend_from_slice(&position.to_be_bytes());
        self.size += batch.len() as u64;
        self.next_offset = info.last_offset() + 1;
        if max_timestamp > self.max_timestamp {
            self.max_timestamp = max_timestamp;
            self.max_timestamp_offset = offset;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the copy stands now, to [`CleanedWriter::rewind`] to.
    pub fn mark(&self) -> CopyMark {
        CopyMark {
            size: self.size,
            index_len: self.index.len(),
            next_offset: self.next_offset,
            max_timestamp: self.max_timestamp,
            max_timestamp_offset: self.max_timestamp_offset,
        }
    }

    /// Takes out every batch pushed since `mark`: the log is cut back to it
    /// and the copy goes on from there.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn rewind(&mut self, mark: CopyMark) -> Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        self.log
            .flush()
            .map_err(|e| Error::io("write", &self.log_path, e))?;
        self.log
            .get_ref()
            .set_len(mark.size)
            .map_err(|e| Error::io("truncate", &self.log_path, e))?;
        self.log
            .seek(SeekFrom::Start(mark.size))
            .map_err(|e| Error::io("seek", &self.log_path, e))?;
        self.size = mark.size;
        self.index.truncate(mark.index_len);
        self.next_offset = mark.next_offset;
        self.max_timestamp = mark.max_timestamp;
        self.max_timestamp_offset = mark.max_timestamp_offset;
        Ok(())
    }

    /// The newest timestamp of the batches written so far (-1 when none has
    /// one): the copy's [`Segment::max_timestamp`], which its index alone does
    /// not give when it is opened.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// Writes the index and `fdatasync`s both files, then writes the copy's
    /// time index and `fdatasync`s it; a copy whose time index cannot be
    /// written goes without one (logged), its batch headers read when its
    /// newest timestamp is needed after a restart.
    ///
    /// # Errors
    /// I/O errors naming the file (the copy is removed then).
    pub fn finish(self) -> Result<()> {
        let (log_path, index_path) = (self.log_path.clone(), self.index_path.clone());
        let dir = log_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let time_index = TimeIndex {
            base_offset: self.base,
            next_offset: self.next_offset,
            log_size: self.size,
            index_crc: crc32c::crc32c(&self.index),
            max_timestamp: self.max_timestamp,
            max_timestamp_offset: self.max_timestamp_offset,
        };
        let time_index_path = dir.join(cleaning_time_index_name(self.base));
        // The index of a copy of one batch gives its timestamp.
        let needed = self.index.len() > INDEX_ENTRY;
        let done = (|| {
            let log = self
                .log
                .into_inner()
                .map_err(|e| Error::io("write", &log_path, e.into_error()))?;
            if let Some(t) = self.modified {
                log.set_modified(t)
                    .map_err(|e| Error::io("set the modification time of", &log_path, e))?;
            }
            sync_data(&log)
                .and_then(|()| check_written(&log, log.metadata()?.len()))
                .map_err(|e| Error::io("fdatasync", &log_path, e))?;
            std::fs::write(&index_path, &self.index)
                .map_err(|e| Error::io("write", &index_path, e))?;
            // Opened for writing: Windows refuses to sync a read-only handle.
            OpenOptions::new()
                .write(true)
                .open(&index_path)
                .and_then(|f| sync_data(&f))
                .map_err(|e| Error::io("fdatasync", &index_path, e))
        })();
        if done.is_err() {
            let _ = std::fs::remove_file(&log_path);
            let _ = std::fs::remove_file(&index_path);
            return done;
        }
        if needed {
            if let Err(e) = write_synced(&time_index_path, &time_index.encode()) {
                tracing::warn!(file = %time_index_path.display(), error = %e, "could not write the compacted copy's time index; its batch headers are read when its newest timestamp is needed");
                let _ = std::fs::remove_file(&time_index_path);
            }
        }
        done
    }

    /// Removes the copy (the segment changed or went while it was written).
    pub fn discard(dir: &Path, base: i64) {
        let (log, index) = cleaning_names(base);
        for name in [log, index, cleaning_time_index_name(base)] {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
}

/// Removes the time index of the segment starting at `base` in `dir`, if
/// there is one, durably (the directory fsynced), before its log is written
/// or cut: it describes the log as it was when closed, and a log written again
/// could reach the same size and batch offsets with other batches, which the
/// time index cannot tell.
///
/// # Errors
/// I/O errors naming the file or directory.
pub(crate) fn remove_time_index(dir: &Path, base: i64) -> Result<()> {
    let path = dir.join(time_index_name(base));
    match std::fs::remove_file(&path) {
        Ok(()) => super::sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", &path, e)),
    }
}

/// A time index file's bytes, reading no more than one byte past its length:
/// a damaged file's size is not trusted.
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut raw = Vec::with_capacity(super::time_index::LEN + 1);
    File::open(path)?
        .take(super::time_index::LEN as u64 + 1)
        .read_to_end(&mut raw)?;
    Ok(raw)
}

/// Writes `bytes` as the whole of the file at `path` (created or truncated)
/// and `fdatasync`s it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io("create", path, e))?;
    file.write_all_at(bytes, 0)
        .map_err(|e| Error::io("write", path, e))?;
    sync_data(&file).map_err(|e| Error::io("fdatasync", path, e))
}

/// Copies the first `len` bytes of `from` to the same positions of `to`, 1
/// MiB at a time. Read and write, never `copy_file_range`: a filesystem may
/// share the disk's blocks for that, and the disk's blocks are what is in
/// doubt.
fn copy_prefix(from: &File, from_path: &Path, to: &File, to_path: &Path, len: u64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        from.read_exact_at(&mut buf[..n], pos)
            .map_err(|e| Error::io("read", from_path, e))?;
        to.write_all_at(&buf[..n], pos)
            .map_err(|e| Error::io("write", to_path, e))?;
        pos += n as u64;
    }
    Ok(())
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("open", path, e))
}

/// When an opening scan makes a segment's files say what it found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// At once: the log cut after its last valid batch, the index rewritten.
    Yes,
    /// Never: the files are left as found when the index does not match (an
    /// older segment, judged by the start-up).
    No,
    /// At once, unless the log is to be cut: then left as found (a newest
    /// segment the start-up judges before anything is cut).
    UnlessCut,
}

impl Segment {
    /// Creates an empty segment starting at `base` in `dir` (the caller syncs `dir`).
    ///
    /// # Errors
    /// I/O errors naming the file.
    /// A failure removes the files it made: an empty log left behind at a base
    /// that appends to the previous segment then pass would stop the next open
    /// ("segment starts at ... but the previous one ends at ...").
    pub fn create(dir: &Path, base: i64) -> Result<Segment> {
        remove_time_index(dir, base)?;
        let log_path = dir.join(log_name(base));
        let index_path = dir.join(index_name(base));
        let made = (|| {
            let log = open_rw(&log_path)?;
            log.set_len(0)
                .map_err(|e| Error::io("truncate", &log_path, e))?;
            let index_file = open_rw(&index_path)?;
            index_file
                .set_len(0)
                .map_err(|e| Error::io("truncate", &index_path, e))?;
            let log_id = file_id(
                &log.metadata()
                    .map_err(|e| Error::io("stat", &log_path, e))?,
            );
            Ok((log, index_file, log_id))
        })();
        let (log, index_file, log_id) = made.inspect_err(|_| {
            for path in [&index_path, &log_path] {
                if let Err(e) = remove_if_present(path) {
                    tracing::warn!(error = %e, "could not remove a segment file whose creation failed");
                }
            }
        })?;
        Ok(Segment {
            id: NEXT_SEGMENT_ID.fetch_add(1, Ordering::Relaxed),
            base_offset: base,
            log_path,
            index_path,
            files: LogFiles::Open(Held {
                log: Arc::new(log),
                index: Arc::new(index_file),
            }),
            log_id,
            index: Arc::default(),
            index_crc: 0,
            size: 0,
            next_offset: base,
            dirty: true,
            index_suspect: false,
            cut: None,
            unsettled: false,
            max_timestamp: -1,
            max_timestamp_exact: true,
            max_timestamp_offset: Some(-1),
            time_index_saved: false,
            first_timestamp: -1,
            opened_ms: now_ms(),
            stored_by_ms: now_ms(),
        })
    }

    /// Opens an existing segment. With `scan`, every batch is read and CRC-checked, a
    /// torn or corrupt tail is cut off (logged with file and position), and the index
    /// is rewritten; without it, a consistent index file is trusted.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn open(dir: &Path, base: i64, scan: bool) -> Result<Segment> {
        Self::open_with(dir, base, scan, None, Settle::Yes)
    }

    /// Opens an older segment of a partition at start-up, changing none of its
    /// files: a consistent index is trusted as by [`Segment::open`]; otherwise
    /// the log is scanned and indexed up to its first invalid batch, or the first
    /// that does not continue the segment, and what lies from there on is left
    /// out ([`Segment::cut`]) but kept on disk, nor is the index file rewritten
    /// ([`Segment::is_unsettled`]). Whether those bytes held flushed records is
    /// for the caller to judge, against the recovery point and the next
    /// segment's base, before [`Segment::settle`] writes what the scan found.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn open_older(dir: &Path, base: i64) -> Result<Segment> {
        Self::open_with(dir, base, false, None, Settle::No)
    }

    /// [`Segment::open_older`], scanning every batch whatever its index says.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn scan_older(dir: &Path, base: i64) -> Result<Segment> {
        Self::open_with(dir, base, true, None, Settle::No)
    }

    /// Opens the newest segment of a partition: scans it as [`Segment::open`] with
    /// `scan`, recording every idempotent producer's batches in `producers`.
    ///
    /// First it syncs both files, which reports a write-back failure the kernel kept
    /// for them from before this process: one that wrote them and stopped before
    /// its next sync (killed, or its storage failed first; the kernel reports such
    /// a failure to the next `fsync` by anyone, once). The pages that failed may
    /// be held in the page cache as written, which is what reads return, without
    /// being on the disk. The log is then rebuilt: its bytes as read now are copied
    /// into a new file, which is synced and renamed over it, so what the scan then
    /// validates is what the disk holds; the index is rewritten by the scan anyway.
    /// When the sync succeeds, the log's (now clean) cached pages are dropped, so
    /// that the scan reads the disk, not pages whose write-back failed in a way the
    /// process before was told of and this one is not.
    ///
    /// With `defer_cut`, a log whose batches stop before its end is not cut:
    /// the segment is left [unsettled](Segment::is_unsettled), its files as
    /// found, until [`Segment::settle`] (a start judges the cut against the
    /// partition's recovery point first, and a refused start changes nothing).
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn open_newest(
        dir: &Path,
        base: i64,
        producers: &mut ProducerState,
        defer_cut: bool,
    ) -> Result<Segment> {
        let settle = if defer_cut {
            Settle::UnlessCut
        } else {
            Settle::Yes
        };
        Self::open_with(dir, base, true, Some(producers), settle)
    }

    /// Opens the segment; `settle` says when its files are made to say what
    /// the scan found (see [`Settle`]).
    fn open_with(
        dir: &Path,
        base: i64,
        scan: bool,
        producers: Option<&mut ProducerState>,
        settle: Settle,
    ) -> Result<Segment> {
        let log_path = dir.join(log_name(base));
        let index_path = dir.join(index_name(base));
        let log = open_rw(&log_path)?;
        let index_file = open_rw(&index_path)?;
        let meta = log
            .metadata()
            .map_err(|e| Error::io("stat", &log_path, e))?;
        let mut seg = Segment {
            id: NEXT_SEGMENT_ID.fetch_add(1, Ordering::Relaxed),
            base_offset: base,
            log_path,
            index_path,
            files: LogFiles::Open(Held {
                log: Arc::new(log),
                index: Arc::new(index_file),
            }),
            log_id: file_id(&meta),
            index: Arc::default(),
            index_crc: 0,
            size: meta.len(),
            next_offset: base,
            dirty: false,
            index_suspect: false,
            cut: None,
            unsettled: false,
            max_timestamp: -1,
            max_timestamp_exact: false,
            max_timestamp_offset: None,
            time_index_saved: false,
            first_timestamp: -1,
            opened_ms: now_ms(),
            stored_by_ms: modified_ms(&meta).unwrap_or_else(now_ms),
        };
        if producers.is_some() {
            // The newest segment is written again: a time index saved when it
            // was last closed (before a crash undid the roll past it) would
            // no longer describe it.
            remove_time_index(dir, base)?;
        }
        if scan {
            seg.settle_earlier_writes()?;
        }
        if scan || !seg.load_index()? {
            seg.scan(producers, settle)?;
        }
        Ok(seg)
    }

    /// The sync at the start of [`Segment::open_newest`].
    fn settle_earlier_writes(&mut self) -> Result<()> {
        self.settle_with(sync_data)
    }

    /// [`Segment::settle_earlier_writes`] with `sync` for `fdatasync` (tests
    /// inject the failure the kernel reports).
    fn settle_with(&mut self, sync: impl Fn(&File) -> std::io::Result<()>) -> Result<()> {
        let held = self.held("fdatasync")?.clone();
        if let Err(e) = sync(&held.index) {
            self.index_suspect = true;
            tracing::warn!(file = %self.index_path.display(), error = %e, "an earlier write to the segment index failed after the last sync; the index is rewritten from the log");
        }
        match sync(&held.log) {
            Ok(()) => {
                // Every page is clean now. A failure the process before saw itself
                // is not reported again, and after EIO the kernel may keep the
                // failed pages cached as written: drop the clean pages so that the
                // scan reads what the disk holds (cutting where it lacks batches,
                // which replay restores from the WAL).
                crate::wal::files::drop_cached_pages(&held.log);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(file = %self.log_path.display(), size = self.size, error = %e, "an earlier write to the segment failed after the last sync; rebuilding the segment from what it holds");
                self.rebuild_log()
            }
        }
    }

    /// Copies the log into a new file, syncs it and renames it over the log.
    fn rebuild_log(&mut self) -> Result<()> {
        let dir = self
            .log_path
            .parent()
            .ok_or_else(|| Error::corrupt(&self.log_path, 0, "segment path has no directory"))?;
        let tmp = dir.join(rebuild_name(self.base_offset));
        let log = Arc::clone(&self.held("read")?.log);
        let copy = open_rw(&tmp)?;
        copy.set_len(0)
            .map_err(|e| Error::io("truncate", &tmp, e))?;
        copy_prefix(&log, &self.log_path, &copy, &tmp, self.size)?;
        let pos = self.size;
        sync_all(&copy)
            .and_then(|()| check_written(&copy, pos))
            .map_err(|e| Error::io("fsync", &tmp, e))?;
        let meta = copy.metadata().map_err(|e| Error::io("stat", &tmp, e))?;
        std::fs::rename(&tmp, &self.log_path).map_err(|e| Error::io("rename", &tmp, e))?;
        super::sync_dir(dir)?;
        self.log_id = file_id(&meta);
        if let LogFiles::Open(held) | LogFiles::SealedOpen(held, _) = &mut self.files {
            held.log = Arc::new(copy);
        }
        Ok(())
    }

    /// Loads the index file; false when it is missing or inconsistent with the log.
    fn load_index(&mut self) -> Result<bool> {
        let raw =
            std::fs::read(&self.index_path).map_err(|e| Error::io("read", &self.index_path, e))?;
        if raw.is_empty() && self.size == 0 && !self.time_index_says_held() {
            // An empty log with its empty index matches: a tolerant start
            // cut the segment to nothing (damage in its first batch), or a
            // tolerated WAL gap sealed an empty newest segment. Its fields
            // are a created segment's, as a scan would leave them. Not when
            // its time index recorded batches: both files emptied from
            // outside, judged as damage (repaired from the WAL, or refused).
            self.next_offset = self.base_offset;
            self.index = Arc::default();
            self.index_crc = crc32c::crc32c(&[]);
            self.max_timestamp = -1;
            self.max_timestamp_exact = true;
            self.max_timestamp_offset = Some(-1);
            return Ok(true);
        }
        if raw.is_empty() || raw.len() % INDEX_ENTRY != 0 {
            return Ok(false);
        }
        let mut index = Vec::with_capacity(raw.len() / INDEX_ENTRY);
        for c in raw.chunks_exact(INDEX_ENTRY) {
            let rel = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let pos = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
            let e = IndexEntry {
                offset: self.base_offset + i64::from(rel),
                position: u64::from(pos),
            };
            if let Some(prev) = index.last() {
                let prev: &IndexEntry = prev;
                if e.offset <= prev.offset || e.position <= prev.position {
                    return Ok(false);
                }
            }
            index.push(e);
        }
        let Some(last) = index.last().copied() else {
            return Ok(false);
        };
        // The first batch starts the log: an index saying otherwise is
        // damaged (only its last entry is checked against a header below).
        if index[0].position != 0 {
            return Ok(false);
        }
        let mut head = [0u8; HEADER_LEN];
        let log = &self.held("read")?.log;
        if log.read_exact_at(&mut head, last.position).is_err() {
            return Ok(false);
        }
        let Ok(info) = batch::parse_header(&head) else {
            return Ok(false);
        };
        // Read without its checksum: a negative delta is damage too.
        if info.base_offset != last.offset
            || info.last_offset_delta < 0
            || last.position + info.len as u64 != self.size
        {
            return Ok(false);
        }
        self.next_offset = info.last_offset() + 1;
        self.index_crc = crc32c::crc32c(&raw);
        // Only the last batch's header is read here: the newest timestamp of
        // the others is in the time index, or found when it matters (see
        // `max_timestamp_job`).
        self.max_timestamp = info.max_timestamp;
        self.max_timestamp_exact = index.len() == 1;
        if self.max_timestamp_exact {
            self.max_timestamp_offset = Some(if info.max_timestamp == -1 {
                -1
            } else {
                info.base_offset
            });
        }
        self.index = Arc::new(index.into_iter().collect());
        if self.load_time_index(info.max_timestamp) {
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether the segment's time index file is there and records anything
    /// but an empty log (one that cannot be read or decoded counts: it is
    /// never written for an empty segment, nor for one of a single batch).
    fn time_index_says_held(&self) -> bool {
        match read_small(&self.time_index_path()) {
            Ok(raw) => TimeIndex::decode(&raw).map_or(true, |t| t.log_size != 0),
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
    }

    /// Path of the time index file.
    fn time_index_path(&self) -> PathBuf {
        self.log_path
            .with_file_name(time_index_name(self.base_offset))
    }

    /// What the time index of the segment says as it is now.
    fn time_index_now(&self) -> TimeIndex {
        TimeIndex {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            log_size: self.size,
            index_crc: self.index_crc,
            max_timestamp: self.max_timestamp,
            max_timestamp_offset: self.max_timestamp_offset.unwrap_or(-1),
        }
    }

    /// Takes the newest timestamp of all the batches from the time index file
    /// when it validates and describes the segment as loaded from its index
    /// (whose last batch's timestamp is `last_batch_timestamp`); otherwise
    /// (missing, damaged, stale) leaves it unknown, to be read when needed.
    /// Returns whether the index is suspect: the time index validates and
    /// describes the segment's base, end and log size, but recorded another
    /// index checksum (the log is as it was when the index was last written
    /// whole, so the index changed since: damage in an entry the open does
    /// not check, which made a fetch from that offset start inside a batch).
    fn load_time_index(&mut self, last_batch_timestamp: i64) -> bool {
        let path = self.time_index_path();
        let raw = match read_small(&path) {
            Ok(raw) => raw,
            // A segment closed before time indexes were kept, or whose time
            // index could not be written.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not read the segment's time index; its batch headers are read when its newest timestamp is needed");
                return false;
            }
        };
        let now = self.time_index_now();
        if let Ok(t) = TimeIndex::decode(&raw) {
            if (t.base_offset, t.next_offset, t.log_size)
                == (now.base_offset, now.next_offset, now.log_size)
                && t.index_crc != now.index_crc
            {
                tracing::warn!(file = %self.index_path.display(), "the segment's index differs from what its time index recorded for the same log; rebuilding it from the log");
                return true;
            }
        }
        match TimeIndex::decode(&raw).and_then(|t| t.check(&now, last_batch_timestamp).map(|()| t))
        {
            Ok(t) => {
                self.max_timestamp = t.max_timestamp;
                self.max_timestamp_offset = Some(t.max_timestamp_offset);
                self.max_timestamp_exact = true;
                self.time_index_saved = true;
            }
            Err(why) => {
                tracing::warn!(file = %path.display(), reason = %why, "ignoring the segment's time index; its batch headers are read when its newest timestamp is needed");
            }
        }
        false
    }

    /// Saves the newest timestamp of all the segment's batches in its time
    /// index file (see [`super::time_index`]), written whole and
    /// `fdatasync`ed, for a closed segment: once synced, before the directory
    /// sync that makes its successor (or its sealing at start-up) durable, so
    /// that a start knows it without reading every batch header. Returns
    /// whether it wrote the file: nothing is written for a segment of one
    /// batch or none (its index gives that batch's timestamp), one whose
    /// newest timestamp is not known exactly (or whose batch holding it is
    /// not), or one whose file already says so.
    ///
    /// A file that a crash or a failure leaves torn does not validate, and one
    /// that no longer describes the log and index (a cut, a replaced log) is
    /// stale: either is ignored at open, never trusted.
    ///
    /// # Errors
    /// I/O errors naming the file; the segment then opens as one without.
    pub fn save_time_index(&mut self) -> Result<bool> {
        if !self.wants_time_index() {
            return Ok(false);
        }
        let bytes = self.time_index_now().encode();
        let path = self.time_index_path();
        if read_small(&path).is_ok_and(|found| found == bytes) {
            self.time_index_saved = true;
            return Ok(false);
        }
        write_synced(&path, &bytes)?;
        self.time_index_saved = true;
        Ok(true)
    }

    /// Whether a time index would tell a start something the segment's index
    /// does not and is not saved yet: its newest timestamp and the batch
    /// holding it are known, and it has more than one batch.
    fn wants_time_index(&self) -> bool {
        !self.time_index_saved
            && self.max_timestamp_exact
            && self.max_timestamp_offset.is_some()
            && self.index.len() > 1
    }

    /// The time index of a closed segment whose newest timestamp was learned
    /// by reading its batch headers (it opened without a time index that
    /// holds), to write outside the partition lock: `None` when nothing is to
    /// be saved (see [`Segment::save_time_index`]). The caller writes it
    /// ([`TimeIndexJob::write`]) and, under the lock again, puts it in place
    /// with [`Segment::install_time_index`] (or discards it when the segment
    /// went), then syncs the directory.
    pub fn time_index_job(&self) -> Option<TimeIndexJob> {
        self.wants_time_index().then(|| TimeIndexJob {
            segment: self.id,
            base_offset: self.base_offset,
            bytes: self.time_index_now().encode(),
            tmp: self
                .log_path
                .with_file_name(time_index_tmp_name(self.base_offset)),
        })
    }

    /// Puts the time index `job` wrote in place (a rename; the caller syncs
    /// the directory), if it was taken from this very segment and still says
    /// what the segment is: a job for a segment removed or replaced
    /// meanwhile (another segment at the same base, a compacted copy) is never
    /// installed. Returns whether it was; the caller discards the job's file
    /// otherwise.
    ///
    /// # Errors
    /// The rename's, naming the file; the segment then stays without.
    pub fn install_time_index(&mut self, job: &TimeIndexJob) -> Result<bool> {
        if job.segment != self.id
            || !self.wants_time_index()
            || job.bytes != self.time_index_now().encode()
        {
            return Ok(false);
        }
        let path = self.time_index_path();
        std::fs::rename(&job.tmp, &path).map_err(|e| Error::io("rename", &job.tmp, e))?;
        self.time_index_saved = true;
        Ok(true)
    }

    /// Reads every batch, validating each; cuts the file after the last valid one
    /// and rewrites the index, or, as `settle` says, leaves both files as found
    /// (the segment is then [unsettled](Segment::is_unsettled)).
    fn scan(&mut self, mut producers: Option<&mut ProducerState>, settle: Settle) -> Result<()> {
        let Held {
            log,
            index: index_file,
        } = self.held("read")?.clone();
        let mut pos = 0u64;
        let mut index = Vec::new();
        let mut next = self.base_offset;
        let mut head = [0u8; HEADER_LEN];
        let mut buf = Vec::new();
        let mut cut_reason = None;
        // From nothing: an open from the index may have set them already
        // (the last batch's, which a scan after a damaged index or a cut
        // must not keep: the holder of the newest stayed unknown, or the
        // newest was a batch cut away).
        self.max_timestamp = -1;
        self.first_timestamp = -1;
        self.max_timestamp_offset = Some(-1);
        while pos < self.size {
            if self.size - pos < HEADER_LEN as u64 {
                cut_reason = Some("partial batch header".to_string());
                break;
            }
            log.read_exact_at(&mut head, pos)
                .map_err(|e| Error::io("read", &self.log_path, e))?;
            let info = match batch::parse_header(&head) {
                Ok(i) => i,
                Err(e) => {
                    cut_reason = Some(e.to_string());
                    break;
                }
            };
            if pos + info.len as u64 > self.size {
                cut_reason = Some("batch extends past the end of the file".to_string());
                break;
            }
            buf.resize(info.len, 0);
            log.read_exact_at(&mut buf, pos)
                .map_err(|e| Error::io("read", &self.log_path, e))?;
            if let Err(e) = batch::validate_stored(&buf) {
                cut_reason = Some(e.to_string());
                break;
            }
            // A partition appends each batch right after the one before, and
            // starts a new segment where it does not (a tolerated gap): a base
            // offset that does not continue the segment is damage (the CRC does not
            // cover it).
            if info.base_offset != next {
                cut_reason = Some(format!(
                    "batch offset {} does not continue the segment (expected {next})",
                    info.base_offset
                ));
                break;
            }
            index.push(IndexEntry {
                offset: info.base_offset,
                position: pos,
            });
            if let Some(p) = producers.as_deref_mut() {
                p.recover(std::slice::from_ref(&info), self.stored_by_ms);
            }
            if index.len() == 1 {
                self.first_timestamp = info.max_timestamp;
            }
            next = info.last_offset() + 1;
            if info.max_timestamp > self.max_timestamp {
                self.max_timestamp = info.max_timestamp;
                self.max_timestamp_offset = Some(info.base_offset);
            }
            pos += info.len as u64;
        }
        self.next_offset = next;
        self.max_timestamp_exact = true;
        let leave = match settle {
            Settle::Yes => false,
            Settle::No => true,
            Settle::UnlessCut => cut_reason.is_some(),
        };
        if leave {
            if let Some(reason) = cut_reason {
                if settle == Settle::No {
                    tracing::warn!(file = %self.log_path.display(), position = pos, size = self.size, %reason, "an older segment is damaged; its bytes from the damage on are left out and kept until the start-up judges them");
                } else {
                    // Logged when settled ("cut segment tail"), which a
                    // torn tail of a crash always is.
                    tracing::debug!(file = %self.log_path.display(), position = pos, size = self.size, %reason, "the newest segment's batches stop before its end; its files are left as found until the start-up judges the cut");
                }
                self.cut = Some(Cut {
                    position: pos,
                    size: self.size,
                    reason,
                });
                self.size = pos;
            }
            self.index = Arc::new(index.into_iter().collect());
            self.index_crc = crc32c::crc32c(&self.index_bytes());
            self.unsettled = true;
            return Ok(());
        }
        if let Some(reason) = cut_reason {
            tracing::warn!(file = %self.log_path.display(), position = pos, size = self.size, %reason, "cut segment tail");
            if let Some(dir) = self.log_path.parent() {
                remove_time_index(dir, self.base_offset)?;
            }
            self.cut = Some(Cut {
                position: pos,
                size: self.size,
                reason,
            });
            log.set_len(pos)
                .map_err(|e| Error::io("truncate", &self.log_path, e))?;
            sync_all(&log).map_err(|e| Error::io("fsync", &self.log_path, e))?;
            self.size = pos;
        }
        // Rewrite the index from what was scanned.
        self.index = Arc::new(index.into_iter().collect());
        let raw = self.index_bytes();
        self.index_crc = crc32c::crc32c(&raw);
        // An index file that already says so is left alone (nothing to sync),
        // unless its opening sync failed: what it reads may not be on the disk.
        let same = !self.index_suspect
            && std::fs::read(&self.index_path)
                .map_err(|e| Error::io("read", &self.index_path, e))?
                == raw;
        if !same {
            index_file
                .set_len(0)
                .map_err(|e| Error::io("truncate", &self.index_path, e))?;
            index_file
                .write_all_at(&raw, 0)
                .map_err(|e| Error::io("write", &self.index_path, e))?;
            self.dirty = true;
        }
        Ok(())
    }

    /// The index file's bytes for the index in memory.
    fn index_bytes(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.index.len() * INDEX_ENTRY);
        for e in self.index.iter() {
            raw.extend_from_slice(&((e.offset - self.base_offset) as u32).to_be_bytes());
            raw.extend_from_slice(&(e.position as u32).to_be_bytes());
        }
        raw
    }

    /// Whether [`Segment::open_older`] left this segment's files as found (its
    /// index did not match its log), or [`Segment::open_newest`] with
    /// `defer_cut` did (its log is to be cut); [`Segment::settle`] writes them.
    pub fn is_unsettled(&self) -> bool {
        self.unsettled
    }

    /// Makes an [unsettled](Segment::is_unsettled) segment's files say what its
    /// opening scan found: the log is cut at [`Segment::cut`] (logged with file
    /// and position) and synced, its time index removed, and the index file
    /// rewritten and synced. Works on a sealed segment (by path). Nothing to do
    /// for any other segment.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn settle(&mut self) -> Result<()> {
        if !self.unsettled {
            return Ok(());
        }
        if let Some(cut) = &self.cut {
            tracing::warn!(file = %self.log_path.display(), position = cut.position, size = cut.size, reason = %cut.reason, "cut segment tail");
            if let Some(dir) = self.log_path.parent() {
                remove_time_index(dir, self.base_offset)?;
            }
            let log = OpenOptions::new()
                .write(true)
                .open(&self.log_path)
                .map_err(|e| Error::io("open", &self.log_path, e))?;
            log.set_len(cut.position)
                .map_err(|e| Error::io("truncate", &self.log_path, e))?;
            sync_all(&log).map_err(|e| Error::io("fsync", &self.log_path, e))?;
        }
        write_synced(&self.index_path, &self.index_bytes())?;
        self.unsettled = false;
        Ok(())
    }

    /// Replaces the log of an [unsettled](Segment::is_unsettled) segment by its
    /// valid batches followed by `tail` (whole batches continuing it): written
    /// to `<base>.log.rebuild`, synced, renamed over the log, and the directory
    /// synced. The segment is then stale: open it again.
    ///
    /// # Errors
    /// I/O errors naming the file; a segment that is not unsettled is refused.
    pub fn replace_tail(&self, tail: &[u8]) -> Result<()> {
        if !self.unsettled {
            return Err(Error::corrupt(
                &self.log_path,
                self.size,
                "only a damaged older segment's tail is replaced",
            ));
        }
        let dir = self
            .log_path
            .parent()
            .ok_or_else(|| Error::corrupt(&self.log_path, 0, "segment path has no directory"))?;
        let tmp = dir.join(rebuild_name(self.base_offset));
        let log = File::open(&self.log_path).map_err(|e| Error::io("open", &self.log_path, e))?;
        let copy = open_rw(&tmp)?;
        // The valid batches are copied 1 MiB at a time: a segment may be
        // 2 GiB, and a start that repairs one must not need that much memory.
        let copy_kept = || -> Result<()> {
            copy.set_len(0)
                .map_err(|e| Error::io("truncate", &tmp, e))?;
            copy_prefix(&log, &self.log_path, &copy, &tmp, self.size)?;
            copy.write_all_at(tail, self.size)
                .map_err(|e| Error::io("write", &tmp, e))
        };
        let whole = self.size + tail.len() as u64;
        let written = copy_kept().and_then(|()| {
            sync_all(&copy)
                .and_then(|()| check_written(&copy, whole))
                .map_err(|e| Error::io("fsync", &tmp, e))
        });
        if let Err(e) = written {
            drop(remove_if_present(&tmp));
            return Err(e);
        }
        std::fs::rename(&tmp, &self.log_path).map_err(|e| Error::io("rename", &tmp, e))?;
        super::sync_dir(dir)
    }

    /// Appends whole batches (already validated, offsets assigned) to the page cache.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn append(&mut self, data: &[u8], infos: &[BatchInfo]) -> Result<()> {
        if self.unsettled {
            // Its file may hold bytes past `size` that a later scan would
            // read after the appended batches.
            return Err(Error::corrupt(
                &self.log_path,
                self.size,
                "an append to a segment whose files were left as found (not yet settled)",
            ));
        }
        let Held {
            log,
            index: index_file,
        } = self.held("write")?.clone();
        log.write_all_at(data, self.size)
            .map_err(|e| Error::io("write", &self.log_path, e))?;
        let mut raw = Vec::with_capacity(infos.len() * INDEX_ENTRY);
        let mut pos = self.size;
        for info in infos {
            raw.extend_from_slice(&((info.base_offset - self.base_offset) as u32).to_be_bytes());
            raw.extend_from_slice(&(pos as u32).to_be_bytes());
            pos += info.len as u64;
        }
        let first_entry = self.index.len();
        index_file
            .write_all_at(&raw, (first_entry * INDEX_ENTRY) as u64)
            .map_err(|e| Error::io("write", &self.index_path, e))?;
        // Both written: only now does the segment take the batches (a failed
        // write leaves it as it was; the bytes past `size` are overwritten by
        // the next append).
        if first_entry == 0 {
            self.first_timestamp = infos.first().map_or(-1, |i| i.max_timestamp);
        }
        // Copies the tail and the chunk pointers only while a reader holds the
        // index (see `shared_index`).
        let index = Arc::make_mut(&mut self.index);
        let mut pos = self.size;
        for info in infos {
            index.push(IndexEntry {
                offset: info.base_offset,
                position: pos,
            });
            pos += info.len as u64;
            self.next_offset = info.last_offset() + 1;
            if info.max_timestamp > self.max_timestamp {
                self.max_timestamp = info.max_timestamp;
                self.max_timestamp_offset = Some(info.base_offset);
            }
        }
        self.index_crc = crc32c::crc32c_append(self.index_crc, &raw);
        self.size = pos;
        self.dirty = true;
        self.time_index_saved = false;
        Ok(())
    }

    /// `fdatasync`s the log and the index if anything changed since the last sync.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn sync(&mut self) -> Result<()> {
        if let Some(job) = self.take_sync() {
            if let Err(e) = job.run() {
                self.dirty = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Syncs the segment whether or not it changed since its last sync: a
    /// checkpoint may have taken its [`SyncJob`] and not finished it yet.
    ///
    /// # Errors
    /// I/O errors naming the file; the segment stays dirty then.
    pub fn sync_now(&mut self) -> Result<()> {
        self.dirty = true;
        self.sync()
    }

    /// Marks the segment clean and returns the syncs that make it so, to run without
    /// holding the partition lock; `None` when nothing changed since the last sync.
    /// If the returned job fails, call [`Segment::mark_dirty`].
    ///
    /// A sealed segment hands its files over to the job, which closes them when
    /// it is done; one whose earlier job failed has none left, and the job opens
    /// them again.
    pub fn take_sync(&mut self) -> Option<SyncJob> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let held = match &self.files {
            LogFiles::Open(held) => Some(held.clone()),
            LogFiles::SealedOpen(held, log) => {
                let held = held.clone();
                self.files = LogFiles::Sealed(Arc::clone(log));
                Some(held)
            }
            LogFiles::Sealed(_) => None,
        };
        let (log, index) = held.map_or((None, None), |h| (Some(h.log), Some(h.index)));
        Some(SyncJob {
            base_offset: self.base_offset,
            files: [
                (log, self.log_path.clone()),
                (index, self.index_path.clone()),
            ],
            log_len: self.size,
        })
    }

    /// Seals the segment: nothing is written to it any more (its partition
    /// rolled past it, or it is an older segment opened at start-up). Its
    /// files close now, or, while it has changes not yet synced, when its
    /// [`SyncJob`] is done; from then on its log is opened for reads through
    /// `files`.
    pub fn seal(&mut self, files: &Arc<SegmentFiles>) {
        let (held, log) = match &self.files {
            LogFiles::Open(held) => {
                let log = Arc::new(SealedLog {
                    id: NEXT_SEALED_ID.fetch_add(1, Ordering::Relaxed),
                    path: self.log_path.clone(),
                    file_id: self.log_id,
                    retired: AtomicBool::new(false),
                    files: Arc::clone(files),
                });
                (held.clone(), log)
            }
            LogFiles::SealedOpen(held, log) => (held.clone(), Arc::clone(log)),
            LogFiles::Sealed(_) => return,
        };
        self.files = if self.dirty {
            LogFiles::SealedOpen(held, log)
        } else {
            LogFiles::Sealed(log)
        };
    }

    /// Whether the segment holds its files open (it is written, or sealed with
    /// changes not yet synced).
    pub fn holds_files(&self) -> bool {
        !matches!(self.files, LogFiles::Sealed(_))
    }

    /// The files held open, for a write (or a read during the open) that
    /// needs them; `op` names it in the error of a sealed segment.
    fn held(&self, op: &'static str) -> Result<&Held> {
        match &self.files {
            LogFiles::Open(held) | LogFiles::SealedOpen(held, _) => Ok(held),
            LogFiles::Sealed(_) => Err(Error::io(
                op,
                &self.log_path,
                std::io::Error::other("the segment is sealed: its files are closed"),
            )),
        }
    }

    /// Whether the segment changed since its last sync.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Forgets that the segment was synced (after a failed [`SyncJob`]).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// First offset of the segment.
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// Offset after the last batch (the base offset when empty).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Bytes in the log file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The indexed batches.
    pub fn index(&self) -> &BatchIndex {
        &self.index
    }

    /// The indexed batches as they are now, for a reader outside the partition
    /// lock: a pointer, whatever the number of batches. A closed segment's
    /// index never changes; an append to the active one while a reader holds
    /// its index copies only its tail and chunk pointers (see [`BatchIndex`]).
    pub fn shared_index(&self) -> Arc<BatchIndex> {
        Arc::clone(&self.index)
    }

    /// A shared handle to the log file, for reads outside the partition lock:
    /// the one the segment holds, or for a sealed segment one from the cache
    /// (opened on a miss). The handle stays valid after the segment is removed.
    ///
    /// # Errors
    /// Opening a sealed segment's log fails naming the path.
    pub fn file(&self) -> Result<Arc<File>> {
        self.log_handle().open()
    }

    /// The log for a reader that opens it later, outside the partition lock
    /// (see [`LogHandle::open`]): nothing is opened until then.
    pub fn log_handle(&self) -> LogHandle {
        match &self.files {
            LogFiles::Open(held) | LogFiles::SealedOpen(held, _) => LogHandle::Held {
                file: Arc::clone(&held.log),
                path: self.log_path.clone(),
            },
            LogFiles::Sealed(log) => LogHandle::Sealed(Arc::clone(log)),
        }
    }

    /// Records in `producers` the idempotent producers' batches among the last
    /// `batches` of this segment, oldest first (one header read each), as
    /// batches read back at start-up: stored by when the log was last written
    /// before it was opened.
    ///
    /// # Errors
    /// I/O errors naming the file (a sealed segment's log is opened on demand).
    pub fn record_producers_tail(
        &self,
        batches: usize,
        producers: &mut ProducerState,
    ) -> Result<()> {
        let mut head = [0u8; HEADER_LEN];
        let len = self.index.len();
        if len == 0 || batches == 0 {
            return Ok(());
        }
        let log = self.file()?;
        for e in (len.saturating_sub(batches)..len).filter_map(|i| self.index.get(i)) {
            log.read_exact_at(&mut head, e.position)
                .map_err(|err| Error::io("read", &self.log_path, err))?;
            if let Ok(info) = batch::parse_header(&head) {
                producers.recover(std::slice::from_ref(&info), self.stored_by_ms);
            }
        }
        Ok(())
    }

    /// The newest record timestamp of its batches (ms; -1 when none): what
    /// time-based retention judges the segment by. For an older segment opened
    /// from its index without a time index that holds, that of its last batch
    /// until the newest of all is known (see [`Segment::max_timestamp_is_exact`]).
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// Whether [`Segment::max_timestamp`] is the newest timestamp of all the
    /// segment's batches rather than only that of its last.
    pub fn max_timestamp_is_exact(&self) -> bool {
        self.max_timestamp_exact
    }

    /// Records `max_timestamp` as the newest timestamp of all the segment's
    /// batches (found by a [`MaxTimestampJob`] on it, or known to whoever wrote
    /// it), and `holder` as the base offset of the first batch holding it (-1
    /// when no batch has a timestamp) when that is known. With `holder` the
    /// segment can then have its time index saved (see
    /// [`Segment::time_index_job`]).
    pub fn set_max_timestamp(&mut self, max_timestamp: i64, holder: Option<i64>) {
        self.max_timestamp = max_timestamp;
        self.max_timestamp_exact = true;
        self.max_timestamp_offset = holder;
    }

    /// Base offset of the first batch holding [`Segment::max_timestamp`] (-1
    /// when no batch has a timestamp), when that is known.
    pub fn max_timestamp_offset(&self) -> Option<i64> {
        self.max_timestamp_offset
            .filter(|_| self.max_timestamp_exact)
    }

    /// The reads that find the newest timestamp of all the segment's batches, to
    /// run without holding the partition lock; `None` when it is known already.
    pub fn max_timestamp_job(&self) -> Option<MaxTimestampJob> {
        (!self.max_timestamp_exact).then(|| MaxTimestampJob {
            base_offset: self.base_offset,
            size: self.size,
            log: self.log_handle(),
        })
    }

    /// When the log file was last written (ms since the Unix epoch), if the
    /// filesystem says (by path for a sealed segment: no file is opened).
    pub fn modified_ms(&self) -> Option<i64> {
        #[cfg(test)]
        MODIFIED_READS.with(|n| n.set(n.get() + 1));
        let meta = match &self.files {
            LogFiles::Open(held) | LogFiles::SealedOpen(held, _) => held.log.metadata(),
            LogFiles::Sealed(_) => std::fs::metadata(&self.log_path),
        };
        modified_ms(&meta.ok()?)
    }

    /// How long this segment has been taking records, as Kafka judges when to roll
    /// by time: the newest timestamp being appended (`appending`) less that of the
    /// segment's first batch, both the producers' clock; when the first batch has
    /// no timestamp, the wall-clock time since the segment was created or opened
    /// (`now_ms` is asked only then).
    pub fn age_for_roll(&self, appending: i64, now_ms: impl FnOnce() -> i64) -> i64 {
        if self.first_timestamp >= 0 {
            appending.saturating_sub(self.first_timestamp)
        } else {
            now_ms().saturating_sub(self.opened_ms)
        }
    }

    /// Removes the segment's files (its time index, producer snapshot and index
    /// first: a log without them is opened as before they were kept, an index
    /// without its log would stay behind).
    /// Open handles keep reading until dropped. The caller syncs the directory.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn remove_files(&self) -> Result<()> {
        let snapshot = self
            .log_path
            .with_file_name(producers_name(self.base_offset));
        let time_index = self.time_index_path();
        for path in [&time_index, &snapshot, &self.index_path, &self.log_path] {
            remove_if_present(path)?;
        }
        Ok(())
    }

    /// What the opening scan cut off this segment's end, if anything.
    pub fn cut(&self) -> Option<&Cut> {
        self.cut.as_ref()
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The byte range to read for offsets starting at `from` (from the batch
    /// holding it), stopping before `limit` and after about `max_bytes`: at
    /// least one batch, and while the first ones hold no records (what
    /// compaction leaves of batches whose records all went), up to the first
    /// that holds some, whatever `max_bytes`. A consumer given only batches
    /// without records has nothing to step past: KafkaJS asks for the same
    /// offset again, at once, for as long as the batch after them is larger
    /// than its limit.
    pub fn read_range(&self, from: i64, limit: i64, max_bytes: u64) -> Option<ReadRange> {
        let i = self.index.partition_point(|e| e.offset <= from);
        let start = i.saturating_sub(1);
        let first = self.index.get(start)?;
        if first.offset >= limit {
            return None;
        }
        let end_of = |j: usize| self.index.get(j + 1).map_or(self.size, |e| e.position);
        // A stored batch of no more than a header holds no records (a batch
        // with records has their bytes after it).
        let holds_records = |j: usize, at: u64| end_of(j) - at > HEADER_LEN as u64;
        let mut records = holds_records(start, first.position);
        let mut last = start;
        while let Some(e) = self.index.get(last + 1) {
            if e.offset >= limit || (records && end_of(last + 1) - first.position > max_bytes) {
                break;
            }
            last += 1;
            records |= holds_records(last, e.position);
        }
        Some(ReadRange {
            position: first.position,
            len: end_of(last) - first.position,
            records,
        })
    }
}

/// Whole batches of a segment's log to read: see [`Segment::read_range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRange {
    /// Where the first batch starts in the log.
    pub position: u64,
    /// Bytes of the batches.
    pub len: u64,
    /// Whether a batch of them holds records.
    pub records: bool,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::file_at::cached_bytes;
    use crate::storage::batch::{assign_offsets, tests::make_batch, validate_all};

    fn append(seg: &mut Segment, base: i64, values: &[&[u8]]) -> Vec<u8> {
        let mut b = make_batch(0, values);
        let infos = validate_all(&b).unwrap();
        assign_offsets(&mut b, &infos, base);
        let infos = validate_all(&b).unwrap();
        seg.append(&b, &infos).unwrap();
        b
    }

    /// Descriptors this process holds open on files under `dir` (tests on
    /// other threads keep theirs in directories of their own).
    #[cfg(target_os = "linux")]
    pub(crate) fn fds_under(dir: &Path) -> usize {
        let dir = dir.canonicalize().unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(&dir))
            .count()
    }

    /// Descriptors this process holds open on the file `path` (by name, as
    /// the system lists them: a removed file's name ends in " (deleted)").
    #[cfg(target_os = "linux")]
    pub(crate) fn fds_on(path: &Path) -> usize {
        let path = path.canonicalize().unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| *target == path)
            .count()
    }

    /// A base offset lowered by damage in `compacted.json` (valid JSON still)
    /// fails the checksum, which the start takes as "every segment may be a
    /// compacted copy"; a file without one (an older build's) loads
    /// unchecked.
    #[test]
    fn a_lowered_compacted_base_fails_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        note_compacted(dir.path(), 5000, 5000).unwrap();
        note_compacted(dir.path(), 4000, 9000).unwrap();
        assert_eq!(compacted_through(dir.path()).unwrap(), Some(5000));
        let path = dir.path().join(COMPACTED_FILE);
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(raw.contains("\"crc32c\":"), "{raw}");
        std::fs::write(&path, raw.replace("5000", "50")).unwrap();
        let e = compacted_through(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains(COMPACTED_FILE),
            "{e}"
        );
        std::fs::write(&path, br#"{"version":1,"newest_copy_base":50}"#).unwrap();
        assert_eq!(compacted_through(dir.path()).unwrap(), Some(50));
    }

    /// A sealed segment holds no file once synced: one sealed with changes not
    /// yet synced keeps both until its sync job, which takes them over and
    /// closes them when done (so the fsync of a sealed segment is never
    /// skipped). Reads open a sealed log through the cache, which keeps at
    /// most its capacity open and closes the least recently used first; a
    /// handle taken before its eviction still reads, and closes when dropped;
    /// a dropped segment's handle leaves the cache at once. Before, every
    /// segment held both files for as long as it existed.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_sealed_segment_closes_its_files_and_reads_through_a_bounded_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SegmentFiles::new(2);
        let mut segs: Vec<Segment> = (0..3)
            .map(|i| {
                let mut s = Segment::create(dir.path(), 10 * i).unwrap();
                append(&mut s, 10 * i, &[format!("segment {i}").as_bytes()]);
                s
            })
            .collect();
        let log = |i: usize| dir.path().join(log_name(10 * i as i64));
        let index = |i: usize| dir.path().join(index_name(10 * i as i64));
        let contents: Vec<Vec<u8>> = (0..3).map(|i| std::fs::read(log(i)).unwrap()).collect();

        // Sealed with its appends not yet synced: held until its sync job.
        assert!(segs[0].is_dirty());
        segs[0].seal(&cache);
        assert!(segs[0].holds_files());
        assert_eq!((fds_on(&log(0)), fds_on(&index(0))), (1, 1));
        let job = segs[0]
            .take_sync()
            .expect("a sealed dirty segment is synced");
        assert!(!segs[0].holds_files());
        job.run().unwrap();
        assert_eq!((fds_on(&log(0)), fds_on(&index(0))), (1, 1), "the job's");
        drop(job);
        assert_eq!((fds_on(&log(0)), fds_on(&index(0))), (0, 0));
        // Synced, then sealed: closed at once.
        for s in &mut segs[1..] {
            s.sync().unwrap();
            s.seal(&cache);
            assert!(!s.holds_files());
        }
        assert_eq!(fds_under(dir.path()), 0);
        assert!(segs.iter_mut().all(|s| s.take_sync().is_none()));

        let read = |s: &Segment| {
            let f = s.file().unwrap();
            let mut buf = vec![0u8; s.size() as usize];
            f.read_exact_at(&mut buf, 0).unwrap();
            buf
        };
        assert_eq!(read(&segs[0]), contents[0]);
        assert_eq!(read(&segs[1]), contents[1]);
        assert_eq!((cache.len(), cache.opened()), (2, 2));
        // A hit opens nothing and makes 0 the most recently used.
        assert_eq!(read(&segs[0]), contents[0]);
        assert_eq!(cache.opened(), 2);
        // 1 is closed for 2.
        assert_eq!(read(&segs[2]), contents[2]);
        assert_eq!((cache.len(), cache.opened()), (2, 3));
        assert_eq!([0, 1, 2].map(|i| fds_on(&log(i))), [1, 0, 1]);
        // A reader holding 0's handle keeps reading it after its eviction.
        let held = segs[0].file().unwrap();
        assert_eq!(read(&segs[1]), contents[1]); // evicts 2
        assert_eq!(read(&segs[2]), contents[2]); // evicts 0
        assert_eq!((cache.len(), cache.opened()), (2, 5));
        assert_eq!(fds_on(&log(0)), 1, "only the reader's handle");
        let mut buf = vec![0u8; contents[0].len()];
        held.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, contents[0]);
        drop(held);
        assert_eq!(fds_on(&log(0)), 0);
        // A dropped segment's handle is closed at once, and a reader that
        // still opens it afterwards makes no entry.
        let handle = segs[2].log_handle();
        drop(segs.pop());
        assert_eq!((cache.len(), fds_on(&log(2))), (1, 0));
        let late = handle.open().unwrap();
        assert_eq!(cache.len(), 1);
        drop(late);
        assert_eq!(fds_on(&log(2)), 0);
        assert_eq!(fds_under(dir.path()), 1, "segment 1's, in the cache");
    }

    /// A sealed log that is gone when a read opens it (retention removed it,
    /// compaction replaced it, or something else did) fails that read with an
    /// error naming the file, which [`is_gone`] recognises; no panic, and the
    /// segment reads again once its log is back.
    #[cfg(unix)]
    #[test]
    fn a_sealed_log_that_is_gone_fails_the_read_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SegmentFiles::new(4);
        let mut s = Segment::create(dir.path(), 0).unwrap();
        append(&mut s, 0, &[b"a"]);
        s.sync().unwrap();
        s.seal(&cache);
        let log = dir.path().join(log_name(0));
        let kept = dir.path().join("kept");
        std::fs::rename(&log, &kept).unwrap();
        let e = s.file().unwrap_err();
        assert!(is_gone(&e), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("open") && msg.contains(log.to_str().unwrap()),
            "{msg}"
        );
        // Another file by that name is not the segment's log.
        std::fs::write(&log, b"another file").unwrap();
        let e = s.file().unwrap_err();
        assert!(is_gone(&e) && e.to_string().contains("replaced"), "{e}");
        assert!(cache.is_empty());
        std::fs::rename(&kept, &log).unwrap();
        assert_eq!(s.file().unwrap().metadata().unwrap().len(), s.size());
    }

    #[cfg(target_os = "linux")]
    /// A new segment in `dir` holding records "a", "b" and "c", synced.
    fn three_synced(dir: &Path) -> Segment {
        let mut s = Segment::create(dir, 0).unwrap();
        append(&mut s, 0, &[b"a", b"b", b"c"]);
        s.sync().unwrap();
        s
    }

    /// A write-back failure reported when the newest segment opens (left by the
    /// process before): the log is copied into a new file that replaces it, with
    /// the same bytes; later appends go to the new file.
    #[test]
    fn a_failed_earlier_write_back_rebuilds_the_log() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 0).unwrap();
        append(&mut s, 0, &[b"a", b"b", b"c"]);
        append(&mut s, 3, &[b"d"]);
        s.sync().unwrap();
        drop(s);
        let log = dir.path().join(log_name(0));
        let before = std::fs::read(&log).unwrap();
        let old_inode = std::fs::metadata(&log).unwrap().ino();

        let mut s = Segment::open(dir.path(), 0, false).unwrap();
        let eio = |f: &File| {
            if f.metadata()?.ino() == old_inode {
                Err(std::io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        };
        s.settle_with(eio).unwrap();
        let new_inode = std::fs::metadata(&log).unwrap().ino();
        assert_ne!(new_inode, old_inode, "the log was not replaced");
        assert_eq!(s.file().unwrap().metadata().unwrap().ino(), new_inode);
        assert_eq!(std::fs::read(&log).unwrap(), before);
        assert!(!dir.path().join(rebuild_name(0)).exists());

        s.scan(None, Settle::Yes).unwrap();
        assert_eq!(s.next_offset(), 4);
        append(&mut s, 4, &[b"e"]);
        s.sync().unwrap();
        drop(s);
        let s = Segment::open(dir.path(), 0, true).unwrap();
        assert_eq!(s.next_offset(), 5);
        assert_eq!(s.index().len(), 3);
        assert!(s.cut().is_none());

        // Only the index failing: nothing is copied (the scan rewrites the index).
        let mut s = Segment::open(dir.path(), 0, false).unwrap();
        let index_inode = std::fs::metadata(dir.path().join(index_name(0)))
            .unwrap()
            .ino();
        s.settle_with(|f: &File| {
            if f.metadata()?.ino() == index_inode {
                Err(std::io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(std::fs::metadata(&log).unwrap().ino(), new_inode);
    }

    /// The same with a real write-back failure (a FUSE file system failing writes,
    /// `FailingFs`), EIO and ENOSPC: the process before appended a batch and
    /// closed the log without syncing it, and the kernel could not write the
    /// pages back. The next open meets that failure at its first sync of the log,
    /// rebuilds the log from what it reads and keeps exactly what the store
    /// holds; later appends sync. Before the rebuild existed, this open failed.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_real_write_back_failure_left_behind_is_repaired_at_open() {
        use std::os::unix::fs::MetadataExt;
        for errno in [libc::EIO, libc::ENOSPC] {
            let fs = crate::file_at::FailingFs::mount();
            let dir = fs.path();
            drop(three_synced(&dir));
            let log = dir.join(log_name(0));
            let durable = std::fs::read(&log).unwrap();
            // Held open to the end, so the kernel keeps the inode and the failure
            // recorded on it.
            let pinned = File::open(&log).unwrap();

            fs.fail(Some(errno));
            let mut s = Segment::open(&dir, 0, false).unwrap();
            s.scan(None, Settle::Yes).unwrap();
            append(&mut s, 3, &[b"d"]); // into the page cache: succeeds
            drop(s); // the write-back at close fails, and nobody is told
            fs.fail(None);
            assert_eq!(
                std::fs::read(fs.backing().join(log_name(0))).unwrap(),
                durable,
                "errno {errno}: the store took the unsynced append after all"
            );

            let mut s = Segment::open_newest(&dir, 0, &mut ProducerState::default(), false)
                .unwrap_or_else(|e| panic!("errno {errno}: {e}"));
            assert_ne!(
                std::fs::metadata(&log).unwrap().ino(),
                pinned.metadata().unwrap().ino(),
                "errno {errno}: the open met no failure: the log was not rebuilt"
            );
            assert_eq!(s.next_offset(), 3, "errno {errno}");
            assert_eq!(std::fs::read(&log).unwrap(), durable, "errno {errno}");
            append(&mut s, 3, &[b"e"]);
            s.sync().unwrap();
            drop(s);
            let s = Segment::open_newest(&dir, 0, &mut ProducerState::default(), false).unwrap();
            assert_eq!(s.next_offset(), 4, "errno {errno}");
            assert!(s.cut().is_none(), "errno {errno}");
        }
    }

    /// A write-back failure the process saw itself, on ext4 (`FailingExt4`):
    /// the sync of an append fails, and ext4 keeps the append's pages cached as
    /// written while the disk lacks them. The next open's sync succeeds (the
    /// failure was reported once, to that sync), so only dropping the log's
    /// pages makes the scan read what the disk holds: the three synced records,
    /// the failed one cut as a torn tail. Without the drop the scan found four.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_append_whose_write_back_failed_on_ext4_is_not_read_back_from_the_cache() {
        let fs = crate::file_at::FailingExt4::mount();
        let dir = fs.path();
        let mut s = three_synced(&dir);

        fs.fail(Some(libc::EIO));
        append(&mut s, 3, &[b"d"]); // into the page cache: succeeds
        let e = s.sync().unwrap_err();
        assert!(e.to_string().contains("Input/output error"), "{e}");
        drop(s);
        fs.fail(None);
        let log = dir.join(log_name(0));
        assert_ne!(
            std::fs::read(&log).unwrap(),
            crate::file_at::read_direct(&log),
            "the kernel kept no page as written that the disk lacks"
        );

        let mut s = Segment::open_newest(&dir, 0, &mut ProducerState::default(), false).unwrap();
        assert_eq!(s.next_offset(), 3);
        assert!(s.cut().is_some(), "the failed append left no torn tail");
        append(&mut s, 3, &[b"e"]);
        s.sync().unwrap();
        drop(s);
        assert_eq!(
            std::fs::read(&log).unwrap(),
            crate::file_at::read_direct(&log)
        );
        let s = Segment::open_newest(&dir, 0, &mut ProducerState::default(), false).unwrap();
        assert_eq!(s.next_offset(), 4);
        assert!(s.cut().is_none());
    }

    /// A real read error while the newest segment opens (`FailingExt4`, reads
    /// failing at the device): the open fails naming the log, and the error
    /// never passes for a torn tail; the log is unchanged and opens whole once
    /// reads work again.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_real_read_error_at_open_fails_the_open_and_cuts_nothing() {
        let fs = crate::file_at::FailingExt4::mount();
        let dir = fs.path();
        drop(three_synced(&dir));
        let log = dir.join(log_name(0));
        let before = std::fs::read(&log).unwrap();

        fs.fail_reads(Some(libc::EIO));
        let e = Segment::open_newest(&dir, 0, &mut ProducerState::default(), false)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        fs.fail_reads(None);
        assert!(
            e.contains("read")
                && e.contains(log.to_str().unwrap())
                && e.contains("Input/output error"),
            "{e}"
        );
        assert_eq!(std::fs::read(&log).unwrap(), before);
        let s = Segment::open_newest(&dir, 0, &mut ProducerState::default(), false).unwrap();
        assert_eq!(s.next_offset(), 3);
        assert!(s.cut().is_none());
    }

    /// Once the opening sync succeeds, the log's pages leave the page cache, so
    /// the scan reads the disk rather than pages whose write-back failed where
    /// the process before was told and this one is not. (Its temporary directory
    /// must be on a disk filesystem: a tmpfs keeps its pages.)
    #[test]
    fn the_opening_sync_drops_the_logs_cached_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 0).unwrap();
        append(&mut s, 0, &[&[7u8; 40_000], &[8u8; 40_000]]);
        drop(s);
        let log = dir.path().join(log_name(0));
        let mut s = Segment::open(dir.path(), 0, false).unwrap();
        assert!(cached_bytes(&log) > 0, "the appends left no cached page");
        s.settle_with(File::sync_data).unwrap();
        assert_eq!(cached_bytes(&log), 0);
        // And the full open reads it back from the disk, whole.
        drop(s);
        let s = Segment::open_newest(dir.path(), 0, &mut ProducerState::default(), false).unwrap();
        assert_eq!(s.next_offset(), 2);
        assert!(s.cut().is_none());
    }

    /// A rebuild that cannot write its copy fails the open, naming the copy.
    #[test]
    fn a_rebuild_that_cannot_write_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 0).unwrap();
        append(&mut s, 0, &[b"a"]);
        s.sync().unwrap();
        drop(s);
        // A directory where the copy goes.
        std::fs::create_dir(dir.path().join(rebuild_name(0))).unwrap();
        let mut s = Segment::open(dir.path(), 0, false).unwrap();
        let err = s
            .settle_with(|_: &File| Err(std::io::Error::from_raw_os_error(libc::EIO)))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&rebuild_name(0)), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join(log_name(0))).unwrap().len() as u64,
            s.size()
        );
    }

    /// A batch index answers as a slice would across its chunks, and a clone
    /// copies its tail and chunk pointers, not the chunks' entries.
    #[test]
    fn a_batch_index_shares_its_full_chunks() {
        let n = 2 * INDEX_CHUNK + 10;
        let entries: Vec<IndexEntry> = (0..n)
            .map(|i| IndexEntry {
                offset: 3 * i as i64,
                position: 100 * i as u64,
            })
            .collect();
        let index: BatchIndex = entries.iter().copied().collect();
        assert_eq!(index.len(), n);
        assert!(!index.is_empty() && BatchIndex::default().is_empty());
        assert!(index.iter().copied().eq(entries.iter().copied()));
        for i in [
            0,
            1,
            INDEX_CHUNK - 1,
            INDEX_CHUNK,
            2 * INDEX_CHUNK,
            n - 1,
            n,
            n + INDEX_CHUNK,
        ] {
            assert_eq!(index.get(i), entries.get(i).copied(), "{i}");
        }
        assert_eq!(index.last(), entries.last().copied());
        for offset in [
            -1,
            0,
            1,
            3 * INDEX_CHUNK as i64,
            3 * INDEX_CHUNK as i64 + 1,
            3 * n as i64,
        ] {
            let pred = |e: &IndexEntry| e.offset <= offset;
            assert_eq!(
                index.partition_point(pred),
                entries.partition_point(pred),
                "{offset}"
            );
        }
        let copied = || INDEX_ENTRIES_COPIED.with(std::cell::Cell::get);
        let before = copied();
        let mut clone = index.clone();
        assert_eq!(copied() - before, 2 + 10);
        clone.push(IndexEntry {
            offset: 3 * n as i64,
            position: 100 * n as u64,
        });
        assert_eq!((index.len(), clone.len()), (n, n + 1));
    }

    /// Appends one batch of one record at timestamp `ts` at `base`.
    fn append_at(seg: &mut Segment, base: i64, ts: i64) {
        use crate::storage::batch::tests::with_timestamp;
        let mut b = with_timestamp(make_batch(0, &[b"v"]), ts);
        let infos = validate_all(&b).unwrap();
        assign_offsets(&mut b, &infos, base);
        let infos = validate_all(&b).unwrap();
        seg.append(&b, &infos).unwrap();
    }

    /// A closed segment of batches at `timestamps` (offsets 0.., one each),
    /// synced and its time index saved.
    fn closed_at(dir: &Path, timestamps: &[i64]) -> Segment {
        let mut seg = Segment::create(dir, 0).unwrap();
        for (i, &ts) in timestamps.iter().enumerate() {
            append_at(&mut seg, i as i64, ts);
        }
        seg.sync().unwrap();
        assert!(seg.save_time_index().unwrap(), "written");
        assert!(!seg.save_time_index().unwrap(), "written once");
        seg
    }

    /// A closed segment opened from its index knew only its last batch's
    /// timestamp, and every start read all its batch headers (one read per
    /// batch) the first time retention, compaction's lag or a timestamp
    /// lookup needed its newest. The time index saved when it closed gives
    /// it, and the batch holding it, with no header read.
    #[test]
    fn a_closed_segment_reopens_knowing_its_newest_timestamp_from_its_time_index() {
        const DAY: i64 = 24 * 3600 * 1000;
        let dir = tempfile::tempdir().unwrap();
        let closed = closed_at(dir.path(), &[DAY, 5 * DAY, 5 * DAY, 2 * DAY, DAY]);
        assert_eq!(
            closed.max_timestamp_offset(),
            Some(1),
            "the first holding it"
        );
        let size = closed.size();
        drop(closed);
        let saved = std::fs::read(dir.path().join(time_index_name(0))).unwrap();
        assert_eq!(
            TimeIndex::decode(&saved).unwrap(),
            TimeIndex {
                base_offset: 0,
                next_offset: 5,
                log_size: size,
                index_crc: crc32c::crc32c(&std::fs::read(dir.path().join(index_name(0))).unwrap()),
                max_timestamp: 5 * DAY,
                max_timestamp_offset: 1,
            }
        );

        let seg = Segment::open(dir.path(), 0, false).unwrap();
        assert!(seg.max_timestamp_is_exact(), "not known without reading");
        assert_eq!(seg.max_timestamp(), 5 * DAY);
        assert_eq!(seg.max_timestamp_offset(), Some(1));
        assert!(seg.max_timestamp_job().is_none(), "nothing left to read");

        // Without it (a directory from before time indexes): as before.
        std::fs::remove_file(dir.path().join(time_index_name(0))).unwrap();
        let seg = Segment::open(dir.path(), 0, false).unwrap();
        assert!(!seg.max_timestamp_is_exact());
        assert_eq!(seg.max_timestamp(), DAY, "the last batch's");
        MAX_TIMESTAMP_HEADERS_READ.with(|c| c.set(0));
        assert_eq!(
            seg.max_timestamp_job().unwrap().run().unwrap(),
            (5 * DAY, 1),
            "the newest and the first batch holding it"
        );
        assert_eq!(MAX_TIMESTAMP_HEADERS_READ.with(|c| c.get()), 5);
        // Removed with the segment.
        let mut seg = Segment::open(dir.path(), 0, true).unwrap();
        assert!(seg.save_time_index().unwrap(), "a scanned segment saves it");
        seg.remove_files().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        // One batch: its index gives its timestamp, nothing is saved.
        let mut one = Segment::create(dir.path(), 0).unwrap();
        append_at(&mut one, 0, DAY);
        one.sync().unwrap();
        assert!(!one.save_time_index().unwrap());
        drop(one);
        let one = Segment::open(dir.path(), 0, false).unwrap();
        assert_eq!(
            (one.max_timestamp_is_exact(), one.max_timestamp()),
            (true, DAY)
        );
        assert_eq!(one.max_timestamp_offset(), Some(0));
    }

    /// A time index that does not describe its segment as it is (the log cut
    /// short with its index, as a cut at start-up leaves it, or grown since)
    /// or whose bytes are damaged is ignored, never trusted: the newest
    /// timestamp is found by reading the batch headers.
    #[test]
    fn a_stale_or_damaged_time_index_is_ignored_and_the_headers_are_read() {
        const DAY: i64 = 24 * 3600 * 1000;
        let dir = tempfile::tempdir().unwrap();
        let (log, index, time_index) = (
            dir.path().join(log_name(0)),
            dir.path().join(index_name(0)),
            dir.path().join(time_index_name(0)),
        );
        // The last batch is the newest.
        let seg = closed_at(dir.path(), &[DAY, 5 * DAY, 2 * DAY, 9 * DAY]);
        let cut_at = seg.index().get(3).unwrap().position;
        drop(seg);
        let saved = std::fs::read(&time_index).unwrap();
        let opened = || {
            let seg = Segment::open(dir.path(), 0, false).unwrap();
            let job = seg.max_timestamp_job();
            (
                seg.max_timestamp_is_exact(),
                job.map(|j| j.run().unwrap().0),
            )
        };
        assert_eq!(opened(), (true, None));

        // Cut before the newest batch, the index with it: 5 days, not 9.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(cut_at)
            .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&index)
            .unwrap()
            .set_len(3 * INDEX_ENTRY as u64)
            .unwrap();
        assert_eq!(opened(), (false, Some(5 * DAY)));

        // Written again, which removes it (durably); grown past it by two
        // batches of day 3, it is stale as a crash may leave it.
        std::fs::write(&time_index, &saved).unwrap();
        let mut producers = ProducerState::default();
        let mut seg = Segment::open_newest(dir.path(), 0, &mut producers, false).unwrap();
        assert!(!time_index.exists(), "kept for a segment written again");
        append_at(&mut seg, 3, 3 * DAY);
        append_at(&mut seg, 4, 3 * DAY);
        seg.sync().unwrap();
        drop(seg);
        std::fs::write(&time_index, &saved).unwrap();
        assert_eq!(opened(), (false, Some(5 * DAY)));
        // A scan that cuts the log removes it.
        let size = std::fs::metadata(&log).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(size - 1)
            .unwrap();
        let seg = Segment::open(dir.path(), 0, true).unwrap();
        assert!(seg.cut().is_some());
        assert!(!time_index.exists(), "kept for a cut segment");
        drop(seg);

        // Every bit of a time index that describes the segment, flipped.
        let mut seg = Segment::open(dir.path(), 0, false).unwrap();
        seg.set_max_timestamp(5 * DAY, Some(1));
        assert!(seg.save_time_index().unwrap());
        drop(seg);
        let good = std::fs::read(&time_index).unwrap();
        assert_eq!(opened(), (true, None));
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 1 << (i % 8);
            std::fs::write(&time_index, &bad).unwrap();
            assert_eq!(opened(), (false, Some(5 * DAY)), "byte {i}");
        }
        // Torn.
        std::fs::write(&time_index, &good[..good.len() - 1]).unwrap();
        assert_eq!(opened(), (false, Some(5 * DAY)));
        // A segment created at its base removes it.
        std::fs::write(&time_index, &good).unwrap();
        drop(Segment::create(dir.path(), 0).unwrap());
        assert!(!time_index.exists(), "kept for a new segment");
    }

    /// A compacted copy cut back to a mark holds what was pushed before it,
    /// and goes on from there; a batch its index could not address (an
    /// offset or a position past 32 bits) is refused, where it was indexed
    /// at the largest value and read back as another batch.
    #[test]
    fn a_compacted_copy_rewinds_to_a_mark_and_refuses_what_its_index_cannot_address() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let at = |base: i64, ts: i64, v: &[u8]| {
            let mut b = batch::tests::with_timestamp(make_batch(0, &[v]), ts);
            b[..8].copy_from_slice(&base.to_be_bytes());
            b
        };
        let mut w = CleanedWriter::create(d, 0).unwrap();
        w.push(&at(0, 100, b"kept"), 0, 100).unwrap();
        let mark = w.mark();
        let size = w.size();
        w.push(&at(1, 900, b"taken out"), 1, 900).unwrap();
        w.push(&at(2, 800, b"taken out too"), 2, 800).unwrap();
        assert_eq!(w.max_timestamp(), 900);
        w.rewind(mark).unwrap();
        assert_eq!((w.size(), w.max_timestamp()), (size, 100));
        let last = at(1, 200, b"after");
        w.push(&last, 1, 200).unwrap();
        let e = w.push(&at(1 << 32, 300, b"far"), 1 << 32, 300).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains(".log.cleaning") && message.contains("4 GiB"),
            "{message}"
        );
        w.finish().unwrap();
        install_swap(d, 0, &[]).unwrap();
        let seg = Segment::open(d, 0, false).unwrap();
        assert_eq!(
            (seg.next_offset(), seg.max_timestamp(), seg.index().len()),
            (2, 200, 2)
        );
        let log = std::fs::read(d.join(log_name(0))).unwrap();
        assert_eq!(&log[log.len() - last.len()..], &last[..]);
        assert_eq!(log.len() as u64, size + last.len() as u64);
    }

    /// A swap that failed after its copy's log left the `.cleaning` name is
    /// finished by [`resume_swap`] from either point: before the copy's log
    /// took its final name (step 1's directory fsync failed), and after it
    /// (step 2's renames of the indexes or its fsync failed).
    #[test]
    fn a_swap_stopped_part_way_is_resumed_from_where_it_stopped() {
        const DAY: i64 = 24 * 3600 * 1000;
        for stopped_after_the_log in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let seg = closed_at(d, &[DAY, 3 * DAY, 2 * DAY]);
            let log = std::fs::read(d.join(log_name(0))).unwrap();
            let at: Vec<usize> = seg.index().iter().map(|e| e.position as usize).collect();
            drop(seg);
            let mut w = CleanedWriter::create(d, 0).unwrap();
            let two = &log[..at[2]];
            for b in [&two[..at[1]], &two[at[1]..]] {
                let info = batch::parse_header(b).unwrap();
                w.push(b, info.base_offset, info.max_timestamp).unwrap();
            }
            w.finish().unwrap();
            // Step 1, by hand.
            let (cleaning_log, cleaning_index) = cleaning_names(0);
            let (swap_log, swap_index) = swap_names(0);
            for (from, to) in [
                (cleaning_time_index_name(0), swap_time_index_name(0)),
                (cleaning_index, swap_index),
                (cleaning_log, swap_log.clone()),
            ] {
                std::fs::rename(d.join(from), d.join(to)).unwrap();
            }
            if stopped_after_the_log {
                std::fs::remove_file(d.join(index_name(0))).unwrap();
                std::fs::remove_file(d.join(time_index_name(0))).unwrap();
                std::fs::rename(d.join(&swap_log), d.join(log_name(0))).unwrap();
            }
            resume_swap(d, 0, &[]).unwrap();
            let names: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                names.iter().all(|n| !n.ends_with(".swap")),
                "{stopped_after_the_log}: {names:?}"
            );
            assert_eq!(std::fs::read(d.join(log_name(0))).unwrap(), two);
            assert!(d.join(index_name(0)).exists() && d.join(time_index_name(0)).exists());
            let seg = Segment::open(d, 0, false).unwrap();
            assert_eq!(
                (
                    seg.next_offset(),
                    seg.max_timestamp(),
                    seg.max_timestamp_is_exact()
                ),
                (2, 3 * DAY, true)
            );
        }
    }

    /// A compaction swap that fails after renaming its copy's time index to
    /// `<base>.timeindex.swap` but before its log takes the `.swap` name
    /// leaves the segments as they were, and the broker goes on. The next
    /// swap at that base whose copy had no time index of its own (one batch,
    /// or its time index could not be written) then put the one left in
    /// place, describing another copy. It is removed now, and a copy with a
    /// time index of its own replaces it.
    #[test]
    fn a_stale_time_index_swap_is_never_put_in_place_with_a_copy() {
        const DAY: i64 = 24 * 3600 * 1000;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let seg = closed_at(d, &[DAY, 5 * DAY, 2 * DAY]);
        let log = std::fs::read(d.join(log_name(0))).unwrap();
        let starts: Vec<usize> = seg.index().iter().map(|e| e.position as usize).collect();
        let ends = starts.iter().skip(1).copied().chain([log.len()]);
        let batches: Vec<Vec<u8>> = starts
            .iter()
            .zip(ends)
            .map(|(&a, b)| log[a..b].to_vec())
            .collect();
        drop(seg);
        let (time_index, stale_swap) =
            (d.join(time_index_name(0)), d.join(swap_time_index_name(0)));
        let stale = std::fs::read(&time_index).unwrap();
        let copy = |batches: &[Vec<u8>]| {
            let mut w = CleanedWriter::create(d, 0).unwrap();
            for b in batches {
                let info = batch::parse_header(b).unwrap();
                w.push(b, info.base_offset, info.max_timestamp).unwrap();
            }
            w.finish().unwrap();
        };

        // A copy of the first batch alone: its index gives its timestamp.
        std::fs::write(&stale_swap, &stale).unwrap();
        copy(&batches[..1]);
        assert!(!d.join(cleaning_time_index_name(0)).exists());
        install_swap(d, 0, &[]).unwrap();
        assert!(!stale_swap.exists());
        assert!(
            !time_index.exists(),
            "another copy's time index put in place"
        );
        let seg = Segment::open(d, 0, false).unwrap();
        assert_eq!(
            (
                seg.next_offset(),
                seg.max_timestamp_is_exact(),
                seg.max_timestamp()
            ),
            (1, true, DAY)
        );
        drop(seg);

        // A copy of the first two batches, with its own.
        std::fs::write(&stale_swap, &stale).unwrap();
        copy(&batches[..2]);
        install_swap(d, 0, &[]).unwrap();
        assert!(!stale_swap.exists());
        let saved = TimeIndex::decode(&std::fs::read(&time_index).unwrap()).unwrap();
        assert_eq!(
            (
                saved.next_offset,
                saved.max_timestamp,
                saved.max_timestamp_offset
            ),
            (2, 5 * DAY, 1)
        );
        let seg = Segment::open(d, 0, false).unwrap();
        assert_eq!(
            (seg.max_timestamp_is_exact(), seg.max_timestamp_offset()),
            (true, Some(1))
        );
    }

    /// A time index learned by reading a segment's batch headers is put in
    /// place only for the very segment it was taken from, as it still is:
    /// not for another segment opened at the same base since (a compacted
    /// copy, a segment created again), nor once the segment has one.
    #[test]
    fn a_time_index_job_is_installed_only_for_its_own_segment() {
        const DAY: i64 = 24 * 3600 * 1000;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        drop(closed_at(d, &[DAY, 5 * DAY, 2 * DAY]));
        std::fs::remove_file(d.join(time_index_name(0))).unwrap();
        let learned = || {
            let mut seg = Segment::open(d, 0, false).unwrap();
            assert!(seg.time_index_job().is_none(), "nothing learned yet");
            let found = seg.max_timestamp_job().unwrap().run().unwrap();
            assert_eq!(found, (5 * DAY, 1));
            seg.set_max_timestamp(found.0, Some(found.1));
            let job = seg.time_index_job().unwrap();
            job.write().unwrap();
            (seg, job)
        };
        let tmp = d.join(time_index_tmp_name(0));

        let (_first, job) = learned();
        let (mut other, _) = learned();
        assert!(!other.install_time_index(&job).unwrap());
        job.discard();
        assert!(!tmp.exists() && !d.join(time_index_name(0)).exists());

        let (mut seg, job) = learned();
        assert!(seg.install_time_index(&job).unwrap());
        assert!(!tmp.exists());
        assert!(seg.time_index_job().is_none(), "saved once");
        drop(seg);
        let seg = Segment::open(d, 0, false).unwrap();
        assert_eq!(
            (
                seg.max_timestamp_is_exact(),
                seg.max_timestamp(),
                seg.max_timestamp_offset()
            ),
            (true, 5 * DAY, Some(1))
        );
    }

    /// An index whose first entry does not point at the log's start is
    /// damaged: the log is scanned and the index rebuilt. Before, only its
    /// last entry was checked, and reads of the first batch went to the
    /// damaged position.
    #[test]
    fn an_index_whose_first_entry_is_damaged_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 0).unwrap();
        append(&mut s, 0, &[b"a"]);
        append(&mut s, 1, &[b"b"]);
        append(&mut s, 2, &[b"c"]);
        s.sync().unwrap();
        let index_path = s.index_path.clone();
        drop(s);
        let f = OpenOptions::new().write(true).open(&index_path).unwrap();
        f.write_all_at(&3u32.to_be_bytes(), 4).unwrap();
        drop(f);
        let s = Segment::open(dir.path(), 0, false).unwrap();
        let positions: Vec<u64> = s.index().iter().map(|e| e.position).collect();
        assert_eq!(positions[0], 0, "{positions:?}");
        assert_eq!(s.next_offset(), 3);
    }

    /// A segment opened from its index reads its last batch's header
    /// without the checksum. One whose last offset delta was damaged to a
    /// negative count was taken as read: the segment ended at that batch's
    /// base, the batch still in its log and index. The log is scanned now,
    /// and the damaged batch cut there.
    #[test]
    fn a_last_header_with_a_negative_delta_makes_the_open_scan() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 0).unwrap();
        append(&mut s, 0, &[b"a"]);
        append(&mut s, 1, &[b"b"]);
        let last = s.size();
        append(&mut s, 2, &[b"c"]);
        s.sync().unwrap();
        let path = s.log_path().to_path_buf();
        drop(s);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&(-1i32).to_be_bytes(), last + 23).unwrap();
        drop(f);
        let s = Segment::open(dir.path(), 0, false).unwrap();
        assert_eq!((s.next_offset(), s.index().len(), s.size()), (2, 2, last));
    }

    #[test]
    fn reopen_computes_end_from_last_offset_delta() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 0).unwrap();
        append(&mut s, 0, &[b"a", b"b", b"c"]);
        append(&mut s, 3, &[b"d", b"e"]);
        assert_eq!(s.next_offset(), 5);
        s.sync().unwrap();
        drop(s);
        for scan in [true, false] {
            let s = Segment::open(dir.path(), 0, scan).unwrap();
            assert_eq!(s.next_offset(), 5, "scan={scan}");
            assert_eq!(s.index().len(), 2);
        }
    }

    /// A base offset is not covered by the batch CRC: one that does not continue
    /// the segment is damage, cut there, even when it jumps forwards.
    #[test]
    fn a_base_offset_that_does_not_continue_the_segment_is_cut() {
        for (first_base, flipped_in) in [(0i64, 1usize), (0, 0), (7, 0)] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Segment::create(dir.path(), first_base).unwrap();
            let a = append(&mut s, first_base, &[b"a"]);
            append(&mut s, first_base + 1, &[b"b"]);
            append(&mut s, first_base + 2, &[b"c"]);
            let path = s.log_path().to_path_buf();
            drop(s);
            // A high bit of a batch's base offset flips.
            let at = flipped_in as u64 * a.len() as u64 + 1;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut byte = [0u8; 1];
            f.read_exact_at(&mut byte, at).unwrap();
            f.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
            drop(f);
            let s = Segment::open(dir.path(), first_base, true).unwrap();
            let cut = s.cut().expect("cut").clone();
            assert!(cut.reason.contains("does not continue"), "{}", cut.reason);
            assert_eq!(cut.position, flipped_in as u64 * a.len() as u64);
            assert_eq!(s.next_offset(), first_base + flipped_in as i64);
        }
    }

    #[test]
    fn torn_tail_is_cut_at_last_valid_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 0).unwrap();
        let first = append(&mut s, 0, &[b"keep"]);
        append(&mut s, 1, &[b"torn-away"]);
        let path = s.log_path().to_path_buf();
        let full = s.size();
        drop(s);
        // Tear the second batch: cut three bytes off the end.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - 3).unwrap();
        drop(f);
        let s = Segment::open(dir.path(), 0, true).unwrap();
        assert_eq!(s.next_offset(), 1);
        assert_eq!(s.size(), first.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), first);
    }

    #[test]
    fn corrupt_batch_crc_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 0).unwrap();
        let first = append(&mut s, 0, &[b"one"]);
        append(&mut s, 1, &[b"two"]);
        let path = s.log_path().to_path_buf();
        drop(s);
        let mut raw = std::fs::read(&path).unwrap();
        let n = raw.len();
        raw[n - 2] ^= 0x55;
        std::fs::write(&path, &raw).unwrap();
        let s = Segment::open(dir.path(), 0, true).unwrap();
        assert_eq!(s.next_offset(), 1);
        assert_eq!(s.size(), first.len() as u64);
    }

    #[test]
    fn read_range_starts_at_the_batch_holding_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 0).unwrap();
        let a = append(&mut s, 0, &[b"a", b"b"]);
        let b = append(&mut s, 2, &[b"c"]);
        let range = |position: usize, len: usize| ReadRange {
            position: position as u64,
            len: len as u64,
            records: true,
        };
        assert_eq!(
            s.read_range(1, 100, 1 << 20),
            Some(range(0, a.len() + b.len()))
        );
        assert_eq!(s.read_range(2, 100, 1 << 20), Some(range(a.len(), b.len())));
        // The limit hides the second batch; a tiny max_bytes still returns one batch.
        assert_eq!(s.read_range(0, 2, 1 << 20), Some(range(0, a.len())));
        assert_eq!(s.read_range(0, 100, 1), Some(range(0, a.len())));
        assert_eq!(s.read_range(2, 2, 1 << 20), None);
    }

    /// Batches without records at the start of a range (compaction's) do not
    /// count as the one batch a read always returns: the range goes on to the
    /// first batch that holds records, however small `max_bytes` is.
    #[test]
    fn read_range_goes_past_batches_without_records_to_one_with_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::create(dir.path(), 0).unwrap();
        let mut stored = |b: Vec<u8>| {
            let infos = vec![batch::validate_stored(&b).unwrap()];
            s.append(&b, &infos).unwrap();
            b.len()
        };
        let e1 = stored(batch::empty_batch(0, 1, -1));
        let e2 = stored(batch::empty_batch(2, 2, -1));
        let mut b = make_batch(0, &[b"c", b"d", b"e"]);
        let infos = validate_all(&b).unwrap();
        assign_offsets(&mut b, &infos, 3);
        let full = b.len();
        let infos = validate_all(&b).unwrap();
        s.append(&b, &infos).unwrap();
        assert_eq!((e1, e2), (HEADER_LEN, HEADER_LEN));
        let range = |position: usize, len: usize, records: bool| {
            Some(ReadRange {
                position: position as u64,
                len: len as u64,
                records,
            })
        };
        for max in [0, 1, HEADER_LEN as u64, 2 * HEADER_LEN as u64] {
            assert_eq!(
                s.read_range(0, 100, max),
                range(0, e1 + e2 + full, true),
                "{max}"
            );
            assert_eq!(
                s.read_range(2, 100, max),
                range(e1, e2 + full, true),
                "{max}"
            );
        }
        // Up to the limit only: no batch with records below it.
        assert_eq!(s.read_range(0, 3, 0), range(0, e1 + e2, false));
    }
}
