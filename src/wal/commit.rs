//! The commit thread: drains pending appends, encodes them into one aligned buffer
//! per batch, submits it through the [`Backend`] (as a durable write in `every_write`
//! mode), keeps up to `max_in_flight` batches in flight while filling the next,
//! acknowledges strictly in order, rotates files and latches the first I/O error.

use std::{
    collections::VecDeque,
    fs::File,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Condvar, Mutex, OnceLock, PoisonError,
    },
    task::Waker,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use smallvec::SmallVec;

use super::{
    backend::{Backend, Done, Op},
    buffer::AlignedBuf,
    completion::{Completion, Slot},
    config::{SyncMode, WalConfig},
    files::{self, Prealloc, TailFill},
    format::{
        align_up, encode_batch_header, encode_entry, entries_crc, entry_len, BatchHeader,
        BatchKind, WalEntryType, BATCH_HEADER_LEN, BLOCK_SIZE,
    },
    journal::{self, JournalCheck},
};
use crate::error::{Error, Result};

/// An entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Kind of entry.
    pub entry_type: WalEntryType,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Payload.
    pub data: Bytes,
}

impl NewEntry {
    /// A `Record` entry.
    pub fn record(topic: impl Into<String>, partition: i32, data: Bytes) -> Self {
        NewEntry {
            entry_type: WalEntryType::Record,
            topic: topic.into(),
            partition,
            data,
        }
    }

    /// Bytes this entry occupies in a batch.
    pub fn encoded_len(&self) -> usize {
        entry_len(self.topic.len(), self.data.len())
    }
}

/// Completes its slot exactly once; if dropped unused (a request lost in a closed
/// channel), completes it with [`Error::Closed`] so no waiter hangs, or, dropped
/// while the commit thread unwinds from a panic (the only thread that holds
/// completers), with [`Error::CommitThreadPanicked`] as the cause of
/// [`Error::Failed`].
pub(crate) struct Completer(Option<Arc<Slot>>);

impl Completer {
    pub(crate) fn new(slot: Arc<Slot>) -> Self {
        Completer(Some(slot))
    }
    pub(crate) fn complete(mut self, r: Result<u64>) {
        if let Some(s) = self.0.take() {
            s.complete(r);
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.complete(Err(if std::thread::panicking() {
                Error::Failed {
                    cause: Arc::new(Error::CommitThreadPanicked),
                }
            } else {
                Error::Closed
            }));
        }
    }
}

/// Held by [`Committer::run`] for the commit thread's whole life: if the thread
/// unwinds from a panic (a bug), latches [`Error::CommitThreadPanicked`] and wakes producers
/// waiting for capacity. The bytes of the appends the thread dropped are never
/// released, so without it those producers would wait until someone closed the
/// WAL, and every later append would wait for capacity too.
struct PanicLatch(Arc<Core>);

impl Drop for PanicLatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .failed
                .get_or_init(|| Arc::new(Error::CommitThreadPanicked));
            self.0.closed.store(true, Ordering::Release);
            self.0.wake_waiters();
        }
    }
}

/// Topic names up to this many bytes travel inline in an [`Entries::Record`].
const INLINE_TOPIC: usize = 64;

pub(crate) enum Entries {
    One(NewEntry),
    Many(Vec<NewEntry>),
    /// A `Record` from [`super::Wal::append`], its topic copied inline when it is
    /// at most [`INLINE_TOPIC`] bytes: then neither the producer allocates for it
    /// nor the commit thread, whose time per entry bounds many closed-loop
    /// producers, frees anything (`docs/engine.md`).
    Record {
        topic: SmallVec<[u8; INLINE_TOPIC]>,
        partition: i32,
        data: Bytes,
    },
}

impl Entries {
    /// One `Record` entry.
    pub(crate) fn record(topic: &str, partition: i32, data: Bytes) -> Self {
        Entries::Record {
            topic: SmallVec::from_slice(topic.as_bytes()),
            partition,
            data,
        }
    }

    /// Calls `f` with each entry's type, topic, partition and payload, in order.
    fn for_each(&self, mut f: impl FnMut(WalEntryType, &[u8], i32, &[u8])) {
        match self {
            Entries::One(e) => f(e.entry_type, e.topic.as_bytes(), e.partition, &e.data),
            Entries::Many(v) => {
                for e in v {
                    f(e.entry_type, e.topic.as_bytes(), e.partition, &e.data);
                }
            }
            Entries::Record {
                topic,
                partition,
                data,
            } => f(WalEntryType::Record, topic, *partition, data),
        }
    }
}

pub(crate) enum Request {
    Append {
        entries: Entries,
        timestamp: i64,
        bytes: usize,
        done: Completer,
    },
    Sync(Completer),
    Close(Completer),
}

/// Counters, updated with relaxed atomics off the producers' path.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub entries: AtomicU64,
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub bytes_written: AtomicU64,
    pub rotations: AtomicU64,
    pub max_batch_entries: AtomicU64,
    pub early_batches: AtomicU64,
    pub grouped_batches: AtomicU64,
    pub unwritten_batches: AtomicU64,
    pub max_syncs_in_flight: AtomicU64,
}

/// An archived file the retention policy may delete.
#[derive(Debug, Clone)]
pub(crate) struct Archived {
    pub number: u64,
    pub path: PathBuf,
    /// Every entry in the file has a sequence at or below this.
    pub covers_through: u64,
    /// Tolerant recovery skipped damage in it: retired as soon as a checkpoint
    /// covers it, whatever `retention_files` keeps, so that a strict open does
    /// not meet the same damage again.
    pub damaged: bool,
}

/// State shared by the handles and the commit thread.
pub(crate) struct Core {
    pub config: WalConfig,
    pub dir: PathBuf,
    pending: AtomicUsize,
    /// Bytes claimed by the one waiter at the head of the pending-bytes cap
    /// (0: none). While a claim stands, other reservations leave room for it,
    /// so that a large append is not passed over forever by small ones that
    /// keep the pending bytes just under the cap.
    claim: AtomicUsize,
    waiters: AtomicUsize,
    space_lock: Mutex<()>,
    space_cv: Condvar,
    async_wakers: Mutex<Vec<Waker>>,
    pub failed: OnceLock<Arc<Error>>,
    pub closed: AtomicBool,
    /// Set when a failure left operations in the kernel that could not be
    /// reaped: the ring was leaked with them, and its writes may still land.
    /// The directory then stays locked until the process exits.
    pub ring_abandoned: AtomicBool,
    /// How many more of a rotation's file opens fail with EMFILE (tests, see
    /// [`files::injected_emfile`]).
    #[cfg(test)]
    pub(crate) fail_rotation_opens: Arc<std::sync::atomic::AtomicU32>,
    /// How many tries of a rotation's file opens succeed before
    /// `fail_rotation_opens` counts (tests).
    #[cfg(test)]
    pub(crate) skip_rotation_opens: std::sync::atomic::AtomicU32,
    /// Tries of a rotation's file opens so far (tests).
    #[cfg(test)]
    pub(crate) rotation_open_tries: std::sync::atomic::AtomicU32,
    pub counters: Counters,
    pub archived: Mutex<Vec<Archived>>,
    /// Highest acknowledged sequence.
    pub acked_through: AtomicU64,
    /// Highest sequence covered by a completed fdatasync.
    pub synced_through: AtomicU64,
    /// The sequence `checkpoint.json` holds. The lock serialises
    /// [`super::Wal::checkpoint`] calls, so the file never moves backwards past files
    /// already retired.
    pub checkpointed: Mutex<u64>,
    /// Files were retired (renamed for reuse or removed) and the directory
    /// fsync that makes that durable has not succeeded since: the next
    /// checkpoint fsyncs the directory even when it has nothing to retire.
    pub retired_unsynced: AtomicBool,
    /// How many more of a checkpoint's directory fsyncs after retiring files
    /// fail (tests).
    #[cfg(test)]
    pub(crate) fail_retire_syncs: std::sync::atomic::AtomicU32,
}

impl Core {
    /// A completion that polls for `ack_spin_us` before its waiter sleeps.
    pub(crate) fn completion(&self) -> (Completion, Arc<Slot>) {
        Completion::spinning(Duration::from_micros(self.config.ack_spin_us))
    }

    pub(crate) fn new(
        config: WalConfig,
        dir: PathBuf,
        archived: Vec<Archived>,
        last_sequence: u64,
        checkpoint: u64,
    ) -> Self {
        Core {
            config,
            dir,
            pending: AtomicUsize::new(0),
            claim: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            space_lock: Mutex::new(()),
            space_cv: Condvar::new(),
            async_wakers: Mutex::new(Vec::new()),
            failed: OnceLock::new(),
            closed: AtomicBool::new(false),
            ring_abandoned: AtomicBool::new(false),
            #[cfg(test)]
            fail_rotation_opens: Arc::new(std::sync::atomic::AtomicU32::new(0)),
            #[cfg(test)]
            skip_rotation_opens: std::sync::atomic::AtomicU32::new(0),
            #[cfg(test)]
            rotation_open_tries: std::sync::atomic::AtomicU32::new(0),
            counters: Counters::default(),
            archived: Mutex::new(archived),
            acked_through: AtomicU64::new(last_sequence),
            synced_through: AtomicU64::new(last_sequence),
            checkpointed: Mutex::new(checkpoint),
            retired_unsynced: AtomicBool::new(false),
            #[cfg(test)]
            fail_retire_syncs: std::sync::atomic::AtomicU32::new(0),
        }
    }

    pub(crate) fn check_usable(&self) -> Result<()> {
        if let Some(e) = self.failed.get() {
            return Err(Error::Failed {
                cause: Arc::clone(e),
            });
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Reserves `bytes` of pending capacity without blocking, leaving room for
    /// a waiter's claim (see [`Core::reserve_blocking`]).
    ///
    /// `pending` and `waiters` are accessed `SeqCst` where a waiter's look at
    /// `pending` (after counting itself in `waiters`) pairs with `release`'s look at
    /// `waiters` (after lowering `pending`): in one total order at least one of the
    /// two sees the other, so an async waiter is never left without a wake-up
    /// (plain `x86` instructions either way).
    pub(crate) fn try_reserve(&self, bytes: usize) -> bool {
        self.reserve_within(bytes, false)
    }

    /// Reserves `bytes` of pending capacity without blocking: for the holder of
    /// the claim (`claimed`) up to the cap, for others up to the cap less the
    /// claim. A request larger than the cap passes alone, so that it cannot wait
    /// forever; one that holds no claim does not while a claim stands.
    fn reserve_within(&self, bytes: usize, claimed: bool) -> bool {
        let cap = self.config.max_pending_bytes;
        let mut cur = self.pending.load(Ordering::SeqCst);
        loop {
            let fits = if claimed {
                cur == 0 || cur + bytes <= cap
            } else {
                match self.claim.load(Ordering::SeqCst) {
                    0 => cur == 0 || cur + bytes <= cap,
                    claim => cur.saturating_add(bytes).saturating_add(claim) <= cap,
                }
            };
            if !fits {
                return false;
            }
            match self.pending.compare_exchange_weak(
                cur,
                cur + bytes,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// The bytes a waiter claims at the cap now (0: none).
    pub(crate) fn claimed_bytes(&self) -> usize {
        self.claim.load(Ordering::SeqCst)
    }

    /// Reserves `bytes`, blocking while the pending cap is reached. The first
    /// waiter to find no claim standing claims its bytes: later reservations
    /// then leave that much room below the cap, so the pending bytes drain to
    /// where it fits (or to none, for a request larger than the cap) however
    /// many small appends keep coming, and it passes. Waiters behind it take
    /// the claim in turn.
    pub(crate) fn reserve_blocking(&self, bytes: usize) -> Result<()> {
        if self.try_reserve(bytes) {
            return Ok(());
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut claimed = false;
        let mut guard = self
            .space_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let r = loop {
            if let Err(e) = self.check_usable() {
                break Err(e);
            }
            // The claim goes to the first waiter to find none standing.
            claimed = claimed
                || self
                    .claim
                    .compare_exchange(0, bytes.max(1), Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok();
            if self.reserve_within(bytes, claimed) {
                break Ok(());
            }
            // Timed wait: a release that races with this check costs at most 5 ms.
            guard = self
                .space_cv
                .wait_timeout(guard, Duration::from_millis(5))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        if claimed {
            // Reserved, failed or closed: the waiters it held back may fit.
            self.claim.store(0, Ordering::SeqCst);
            self.wake_waiters();
        }
        r
    }

    /// Registers a waker to be woken when capacity is released.
    pub(crate) fn register_waker(&self, w: &Waker) {
        let mut wakers = self
            .async_wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A task polled again before it was woken (beside a timer in a
        // `select!`, say) is registered once: the list grew by one waker per
        // poll while the device stalled.
        if wakers.iter().any(|x| x.will_wake(w)) {
            return;
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        wakers.push(w.clone());
    }

    /// Takes back `w`, registered by an async append whose wait was dropped
    /// (see `CapacityWait`), when it is still listed, and wakes it: another
    /// wait of the same task may share the registration (one per task).
    pub(crate) fn unregister_waker(&self, w: &Waker) {
        let taken = {
            let mut wakers = self
                .async_wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let at = wakers.iter().position(|x| x.will_wake(w));
            at.map(|i| {
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                wakers.swap_remove(i)
            })
        };
        if let Some(w) = taken {
            w.wake();
        }
    }

    /// Wakers registered by async appends waiting for room.
    #[cfg(test)]
    pub(crate) fn registered_wakers(&self) -> usize {
        self.async_wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub(crate) fn release(&self, bytes: usize) {
        self.pending.fetch_sub(bytes, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.wake_waiters();
        }
    }

    pub(crate) fn wake_waiters(&self) {
        let _g = self
            .space_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.space_cv.notify_all();
        let wakers = std::mem::take(
            &mut *self
                .async_wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.waiters.fetch_sub(wakers.len(), Ordering::SeqCst);
        for w in wakers {
            w.wake();
        }
    }

    pub(crate) fn pending_bytes(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

struct Ack {
    done: Completer,
    sequence: u64,
    bytes: usize,
}

/// A batch write submitted to the backend.
struct WriteFlight {
    token: u64,
    buf: AlignedBuf,
    acks: Vec<Ack>,
    first: u64,
    last: u64,
    /// Submitted as a durable write (`every_write`): on success its own entries are
    /// durable; with everything before `first` already durable, all up to `last` is.
    durable: bool,
    /// Written as part of a group at the next reap ([`Backend::writes_at_reap`]):
    /// one fdatasync for the whole group, run by this thread.
    grouped: bool,
    result: Option<Result<()>>,
}

/// Durable writes in flight at most for a batch submitted before its predecessor
/// completed (a full batch may go out up to `max_in_flight`). Two overlapping
/// durable writes completed at twice the rate of one on the test device, four at
/// 2.8 times (fio, 32 KiB `--sync=dsync`), and two did as well as four for
/// closed-loop writers (`docs/engine.md`).
const EARLY_OVERLAP: usize = 2;

/// Polls for an early batch judged together ([`EarlyPollGate`]).
const EARLY_POLL_WINDOW: u32 = 32;

/// Batches submitted without polling for early batches after a window in which
/// polling seldom paid (~0.1 s at 64 writer threads on the test VM).
const EARLY_POLL_BACKOFF: u32 = 1024;

/// Whether the commit thread may poll for an early batch
/// ([`Committer::polls_for_early_batch`]): it counts its polls in windows of
/// [`EARLY_POLL_WINDOW`], and after a window in which fewer than a quarter of
/// them ended with the batch going out early it refuses for the next
/// [`EARLY_POLL_BACKOFF`] batches, then tries again.
#[derive(Debug, Default)]
struct EarlyPollGate {
    polls: u32,
    hits: u32,
    /// Batches still to submit before polling is allowed again.
    off: u32,
}

impl EarlyPollGate {
    /// A new poll wants to start: whether it may.
    fn start(&mut self) -> bool {
        // A full window is judged once (a backoff starts with an empty window).
        if self.polls == EARLY_POLL_WINDOW {
            if self.hits * 4 < self.polls {
                self.off = EARLY_POLL_BACKOFF;
            }
            self.polls = 0;
            self.hits = 0;
        }
        if self.off > 0 {
            return false;
        }
        self.polls += 1;
        true
    }

    /// A wait no poll could judge ([`Committer::unseen_wait`]): counted as a poll
    /// that did not pay.
    fn unjudged_wait(&mut self) {
        let _ = self.start();
    }

    /// A batch was submitted; `after_poll`: early, ending a poll.
    fn submitted(&mut self, after_poll: bool) {
        if after_poll {
            self.hits += 1;
        }
        self.off = self.off.saturating_sub(1);
    }
}

/// Smallest cohort (entries, exclusive) behind which a wait with nothing staged
/// counts against polling ([`Committer::unseen_wait`]). At 64 writer threads with
/// data retired that turned the group writes on in runs where the gate had stayed
/// on (1.12× records/s, 10 of 12 interleaved rounds; 256 threads 1.06×); counted
/// for every cohort it also took early batches away at 4-8 threads, where they pay.
const UNSEEN_WAIT_MIN_COHORT: u64 = 16;

/// Largest cohort (entries) for which a batch may go out early. Small
/// cohorts gather within microseconds of their acknowledgements, and overlapping
/// their writes gained up to 45% records/s at 2-8 closed-loop writers, and 15-20%
/// at 64 writers as tasks (cohorts of ~32); large ones gather over the whole
/// write, and the extra writes and the commit thread's polling cost the CPU the
/// producers need: at 128-256 writers (cohorts of ~35-65) a bound of 64 or none
/// lost 15-20%, with either early-batch rule. See `docs/engine.md`.
const EARLY_MAX_COHORT: u64 = 40;

/// Durable writes in a row that went out alone (one append, nothing else in
/// flight, staged or queued when it completed) before the next ones are written
/// by the commit thread itself ([`Committer::wants_group_writes`]). A lone
/// producer has nothing for the ring to overlap, and an `RWF_DSYNC` write through
/// the ring hands its flush to a kernel worker: at 1 writer × 1 KiB the thread's
/// own `pwrite` + `fdatasync` had p50 114 against 126 µs (AMD host, 6
/// interleaved rounds), while at 2 and 4 writers the ring made ~5% more records/s.
/// Any write that was not alone starts the count again.
const LONE_WRITES_TO_GROUP: u32 = 32;

/// The batch being assembled.
struct Staged {
    buf: AlignedBuf,
    acks: Vec<Ack>,
    /// Where the next entry goes (the header is written at submission).
    pos: usize,
    first_seq: u64,
    /// The entries' `crc` fields folded so far ([`entries_crc`]).
    entries_crc: u32,
    /// Bytes the batch may use: the buffer, or what is left of the file.
    limit: usize,
}

/// The one standalone fdatasync that may be in flight.
struct SyncFlight {
    token: u64,
    /// Every write up to this sequence had completed when the fsync was submitted.
    through: u64,
    result: Option<Result<()>>,
}

/// The active file.
pub(crate) struct ActiveFile {
    pub number: u64,
    /// The file's key, which seeds the checksum of every batch header written
    /// to it (never 0: an open ends a version 1 file rather than append to it).
    pub key: u64,
    /// Where the next batch goes.
    pub offset: u64,
    pub size: u64,
    /// Everything below is written (no unwritten extent) with that state
    /// committed: a sync that covers only writes below needs no metadata, and so
    /// no journal check ([`super::journal`]).
    pub confirmed: u64,
}

/// The commit thread's state. Field order matters: `backend` is dropped before the
/// buffers it may have registered with the kernel.
///
/// Pipeline: in `interval` / `os_default` mode batch writes are submitted as soon as
/// they are assembled (up to `max_in_flight`); at most one standalone fdatasync is in
/// flight at a time and covers every write that had completed when it was submitted.
/// In `every_write` mode each batch is one durable write (`RWF_DSYNC`, or a write
/// and its fdatasync), submitted when no other is in flight or when the batch is
/// full, so a lone producer pays one submission per append. Acknowledgements go out
/// strictly in sequence order.
pub(crate) struct Committer {
    backend: Box<dyn Backend>,
    pool: Vec<AlignedBuf>,
    staged: Option<Staged>,
    writes: VecDeque<WriteFlight>,
    sync_op: Option<SyncFlight>,
    /// `every_write` batches whose write completed, waiting for a covering fsync.
    awaiting_sync: VecDeque<(Vec<Ack>, u64)>,
    core: Arc<Core>,
    rx: Receiver<Request>,
    file: ActiveFile,
    next_seq: u64,
    /// Highest sequence whose write completed, all earlier ones included.
    written_through: u64,
    /// Highest sequence covered by a completed fdatasync.
    synced_through: u64,
    carry: Option<Request>,
    /// `sync()` callers and the sequence their fsync must cover.
    sync_waiters: Vec<(Completer, u64)>,
    close: Option<Completer>,
    next_token: u64,
    /// When the last standalone fdatasync started: `interval` counts from there,
    /// so a slow sync does not stretch the period by its own length.
    last_sync: Instant,
    preparer: Option<Preparer>,
    spare_acks: Vec<Vec<Ack>>,
    /// When the thread started polling for an early batch (`polls_for_early_batch`).
    early_poll_since: Option<Instant>,
    /// Whether polling for early batches has paid lately.
    early_gate: EarlyPollGate,
    /// Entries of the batch acknowledged last: the cohort of producers it released,
    /// which the early-batch rule expects back.
    acked_cohort: u64,
    /// Durable writes in a row that completed alone ([`LONE_WRITES_TO_GROUP`]).
    lone_writes: u32,
    done_buf: Vec<Done>,
    batch_capacity: usize,
    every_write: bool,
    /// Present where a sync's success must be checked against an aborted journal.
    journal: Option<JournalCheck>,
    /// The WAL directory, open for the rotations' directory fsyncs: a
    /// rotation needs no file descriptor once it has renamed files.
    dir: files::DirHandle,
    /// Highest sequence written beyond `file.confirmed`: a sync covering it needs
    /// the journal check.
    unconfirmed_through: u64,
    /// The active file, opened for the mapping check, when its writes go through
    /// the page cache: there ext4 converts an unwritten extent after the write
    /// returned, and a conversion that fails is reported to no sync
    /// ([`journal::check_written_range`]). `None` with `O_DIRECT`, whose write
    /// converts and reports a failure itself, and under the simulated disk.
    mapping: Option<File>,
    /// Page-cache writes beyond `file.confirmed` that no sync has covered yet:
    /// (last sequence, start, end) in file order. A sync that covers them is
    /// followed by the mapping check of `start..end`, which then confirms them.
    unmapped: VecDeque<(u64, u64, u64)>,
    /// `counters.fsyncs` when the active file became active: how many durable
    /// writes it took is what [`next_file_prealloc`] judges it by.
    file_start_syncs: u64,
}

/// Average bytes per sync of the file just filled from which the file after the
/// next is only reserved instead of zero-filled ([`next_file_prealloc`]).
pub(crate) const RESERVE_FROM_BYTES_PER_SYNC: u64 = 128 << 10;

/// How to prepare the next file, from how the one just filled was written.
///
/// Zero-filling writes every byte of a file twice (zeros, then entries) and
/// saves each sync the metadata of a first write into reserved space. Small
/// durable writes gain (many syncs per byte); large ones, as with many appends
/// outstanding, lose more to the doubled bytes: on the Intel Xeon host at queue
/// depth 64 × 4 KiB (~245 KiB per write) reserved files made 1.45× the records/s
/// of zero-filled ones, while 64 writers × 1 KiB (~25 KiB per write) and 1
/// writer did 3% and 7% worse (`docs/engine.md`, "Reserving the next file
/// after large writes"). Only for `O_DIRECT` writes, whose extent conversion is
/// done and reported by the write itself; a page-cache write's conversion can
/// fail after the write returned, unseen by the sync.
pub(crate) fn next_file_prealloc(direct_io: bool, bytes: u64, syncs: u64) -> Prealloc {
    if direct_io && syncs > 0 && bytes / syncs >= RESERVE_FROM_BYTES_PER_SYNC {
        Prealloc::Reserve
    } else {
        Prealloc::ZeroFill
    }
}

/// The active file of `dir`, opened to ask the file system how it is mapped.
fn open_for_mapping(dir: &Path) -> Result<File> {
    let path = dir.join(files::CURRENT);
    File::open(&path).map_err(|e| Error::io("open", &path, e))
}

/// The next active file, opened by a rotation before its renames
/// ([`Committer::open_next`]).
struct NextFile {
    key: u64,
    size: u64,
    confirmed: u64,
    /// The file opened for the mapping check ([`Committer::mapping`]).
    mapping: Option<File>,
}

/// The background preparation of the next file, after the zero-fill of the active
/// file's tail when it has one.
pub(crate) struct Preparer {
    /// Taken by [`Preparer::finish`].
    handle: Option<JoinHandle<Result<PathBuf>>>,
    stop: Arc<AtomicBool>,
    /// The zero-fill of the active file's tail, until the commit thread needs space
    /// it has not reached ([`Committer::claim_active`]).
    tail: Option<Arc<TailFill>>,
    /// Whether the next file is to be zero-filled whole, and its size.
    zero_fill: bool,
    size: u64,
}

impl Preparer {
    /// Waits for the prepared file, cutting a zero-fill still in progress short: a
    /// rotation that waits for it stalls every producer (at ~1 GB/s of appends a
    /// 100 MiB file is full before its successor is zero-filled).
    fn finish(mut self) -> Option<Result<PathBuf>> {
        self.stop_and_join()
    }

    /// At a close: stops the preparer as [`Preparer::finish`] does, and removes
    /// a next file whose zero-fill it cut short. A kept `next.wal` is taken as
    /// prepared by the next run; one left reserved but never written would make
    /// every sync there convert extents, which zero-filling is for. The next
    /// run prepares it again, whole.
    fn abandon(mut self) {
        let (zero_fill, size) = (self.zero_fill, self.size);
        let Some(Ok(path)) = self.stop_and_join() else {
            return;
        };
        let cut_short = zero_fill
            && File::open(&path)
                .ok()
                .and_then(|f| files::first_unwritten(&f))
                .is_some_and(|hole| hole < size);
        if cut_short {
            if let Err(e) = files::remove(&path) {
                tracing::warn!(file = %path.display(), error = %e, "removing a next WAL file whose zero-fill was cut short failed; it is used as it is");
            }
        }
    }

    fn stop_and_join(&mut self) -> Option<Result<PathBuf>> {
        if let Some(t) = &self.tail {
            t.stop();
        }
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take()?.join().ok()
    }
}

impl Drop for Preparer {
    /// A preparer dropped unfinished (an open that failed after starting it, or a
    /// commit thread unwinding) must not go on writing zeros into an active file
    /// that a later open in this process appends to.
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// The rest of a new active file to zero-fill before preparing the next one.
pub(crate) struct TailJob {
    pub file: std::fs::File,
    pub path: PathBuf,
    pub size: u64,
    pub fill: Arc<TailFill>,
}

/// Starts preparing file `number` in the background, after zero-filling `tail`.
pub(crate) fn spawn_preparer(
    dir: &Path,
    number: u64,
    size: u64,
    prealloc: Prealloc,
    tail: Option<TailJob>,
) -> Option<Preparer> {
    let dir = dir.to_path_buf();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let fill = tail.as_ref().map(|t| Arc::clone(&t.fill));
    std::thread::Builder::new()
        .name("streamline-wal-prepare".into())
        .spawn(move || {
            if let Some(t) = tail {
                if let Err(e) = files::fill_tail(&t.file, &t.path, t.size, &t.fill) {
                    // Not fatal: the unwritten rest reads as zeros and only syncs slower.
                    tracing::warn!(error = %e, "zero-filling the rest of the active WAL file failed");
                }
            }
            let prepared = files::prepare_file_until(&dir, number, size, prealloc, &flag);
            if let Err(e) = &prepared {
                // Said now: the rotation that needs the file tries again, and
                // fails the WAL only if that fails too, perhaps much later.
                tracing::warn!(file = number, error = %e, "preparing the next WAL file failed; the rotation will try again");
            }
            // Its CPU time stays counted once it is gone (see `thread_cpu`).
            super::thread_cpu::report_this_thread();
            prepared
        })
        .ok()
        .map(|handle| Preparer {
            handle: Some(handle),
            stop,
            tail: fill,
            zero_fill: prealloc == Prealloc::ZeroFill,
            size,
        })
}

impl Drop for Committer {
    /// Every path but a panic reaps each operation before the committer goes
    /// ([`Committer::run`] ends with nothing in flight; a failure waits or
    /// leaks). Unwinding from a panic drops it with writes the kernel may still
    /// be reading from their buffers: wait for them here, and when the wait
    /// fails leak those buffers and the backend (ring) as a failure does, so no
    /// buffer is freed, and no ring closed, under an operation in the kernel.
    /// The backend's own drop would only close the ring, and the buffers would
    /// then be freed after it.
    fn drop(&mut self) {
        if self.backend.in_flight() == 0 {
            return;
        }
        // As a failure: what was not yet handed to the kernel never is (a
        // reap would submit it, and resubmit the rest of a short write), for
        // the appends are answered with the panic's error.
        self.backend.stop_submitting();
        let mut done = Vec::new();
        while self.backend.in_flight() > 0 {
            if self.backend.reap(true, &mut done, &|_| None).is_ok() {
                continue;
            }
            self.core.ring_abandoned.store(true, Ordering::Release);
            for w in self.writes.drain(..) {
                // The kernel might still write from it; never free it.
                std::mem::forget(w.buf);
            }
            let backend = std::mem::replace(
                &mut self.backend,
                Box::new(super::backend::std_backend::StdBackend::new(false)),
            );
            std::mem::forget(backend);
            return;
        }
    }
}

impl Committer {
    pub(crate) fn new(
        mut backend: Box<dyn Backend>,
        core: Arc<Core>,
        rx: Receiver<Request>,
        file: ActiveFile,
        next_seq: u64,
        preparer: Option<Preparer>,
    ) -> Result<Self> {
        // No batch is larger than a file holds between its header and its
        // seal: a larger `max_batch_bytes` would only pin memory (the whole
        // pool is registered with io_uring).
        let file_room = usize::try_from(core.config.max_file_size - 2 * BLOCK_SIZE as u64)
            .unwrap_or(usize::MAX);
        let cap = align_up(core.config.max_batch_bytes.min(file_room));
        let mut pool: Vec<AlignedBuf> = (0..core.config.max_in_flight + 1)
            .map(|_| AlignedBuf::new(cap))
            .collect();
        let every_write = core.config.sync_mode == SyncMode::EveryWrite;
        let journal =
            JournalCheck::for_dir(&core.dir).map_err(|e| Error::io("open", &core.dir, e))?;
        let dir = files::DirHandle::open(&core.dir)?;
        let mapping = if backend.direct_io() || !backend.syncs_the_real_file() {
            None
        } else {
            Some(open_for_mapping(&core.dir)?)
        };
        // Registered buffers are charged to the user's RLIMIT_MEMLOCK, which a
        // few WALs (or a large pool) exceed without CAP_IPC_LOCK: the writes then
        // go from unregistered buffers, a little slower, rather than not at all.
        // Last, after every step that can fail: from here on the backend is
        // dropped before the pool (the `Committer`'s field order), as
        // `register_buffers` requires.
        if let Err(e) = backend.register_buffers(&mut pool) {
            tracing::warn!(error = %e, "registering the WAL's buffers with io_uring failed (see RLIMIT_MEMLOCK, `ulimit -l`); writing from unregistered buffers");
        }
        let file_start_syncs = core.counters.fsyncs.load(Ordering::Relaxed);
        Ok(Committer {
            backend,
            pool,
            staged: None,
            writes: VecDeque::new(),
            sync_op: None,
            awaiting_sync: VecDeque::new(),
            core,
            rx,
            file,
            next_seq,
            written_through: next_seq - 1,
            // `Wal::open` synced what the scan found (`settle_active`), and sequences
            // between the last entry and `next_seq` (a checkpoint ahead of the log)
            // have no entries: nothing before `next_seq` is left to sync.
            synced_through: next_seq - 1,
            carry: None,
            sync_waiters: Vec::new(),
            close: None,
            next_token: 1,
            last_sync: Instant::now(),
            preparer,
            spare_acks: Vec::new(),
            early_poll_since: None,
            early_gate: EarlyPollGate::default(),
            acked_cohort: 0,
            lone_writes: 0,
            done_buf: Vec::new(),
            batch_capacity: cap,
            every_write,
            journal,
            dir,
            unconfirmed_through: 0,
            mapping,
            unmapped: VecDeque::new(),
            file_start_syncs,
        })
    }

    /// Runs until closed or every handle is gone.
    pub(crate) fn run(mut self) {
        // A local is dropped before the parameter `self` when a panic unwinds this
        // frame: the failure is latched before the held appends are answered and
        // the channel is dropped, so nothing sees `Closed` in between.
        let _latch = PanicLatch(Arc::clone(&self.core));
        self.serve();
        self.answer_queued();
        // No file work may outlive the thread: the directory lock is released
        // right after it is joined.
        if let Some(p) = self.preparer.take() {
            if self.core.failed.get().is_none() {
                p.abandon();
            } else {
                // A failed WAL changes nothing more on its disk.
                let _ = p.finish();
            }
        }
    }

    fn serve(&mut self) {
        loop {
            match self.step() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    // A failure while closing ends the thread: the closer is
                    // answered by fail() and waits to join it.
                    let closing = self.core.closed.load(Ordering::Acquire) || self.close.is_some();
                    self.fail(e);
                    if !closing {
                        self.serve_failed();
                    }
                    break;
                }
            }
        }
    }

    /// Nothing submitted and not yet acknowledged.
    fn quiescent(&self) -> bool {
        self.writes.is_empty() && self.sync_op.is_none() && self.awaiting_sync.is_empty()
    }

    fn dirty(&self) -> bool {
        self.written_through > self.synced_through || !self.writes.is_empty()
    }

    /// One round: take requests, submit a batch, reap, acknowledge. Returns false to stop.
    fn step(&mut self) -> Result<bool> {
        if self.close.is_none() && self.carry.is_none() {
            // Sleep only when nothing is in flight, nothing is staged, and no sync()
            // caller waits for an fdatasync that maybe_sync has yet to submit.
            let first = if self.quiescent() && self.staged.is_none() && self.sync_waiters.is_empty()
            {
                match self.spin_for_request() {
                    Some(r) => Some(r),
                    None => match self.idle_timeout() {
                        None => match self.rx.recv() {
                            Ok(r) => Some(r),
                            Err(_) => return self.shutdown(None),
                        },
                        Some(t) => match self.rx.recv_timeout(t) {
                            Ok(r) => Some(r),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => return self.shutdown(None),
                        },
                    },
                }
            } else {
                match self.rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => {
                        self.close_when_drained_without_handle();
                        None
                    }
                }
            };
            if let Some(first) = first {
                self.fill(first)?;
            }
        } else if let Some(c) = self.carry.take() {
            // A carried request starts the next batch once there is room for it.
            self.fill(c)?;
        }
        let submitted = self.maybe_submit_staged()?;
        self.maybe_sync()?;
        let mut wait = !submitted && self.backend.in_flight() > 0;
        if wait && self.unseen_wait() {
            self.early_gate.unjudged_wait();
        }
        if wait && self.polls_for_early_batch() {
            wait = false;
            // Let the producers that are about to append run first.
            std::thread::yield_now();
        }
        self.reap(wait)?;
        if self.close.is_some() && self.quiescent() && self.staged.is_none() && self.carry.is_none()
        {
            let done = self.close.take();
            return self.shutdown(done);
        }
        Ok(true)
    }

    /// Polls the channel for up to `idle_spin_us` before the thread sleeps: a
    /// producer that appends again right after its acknowledgement is then picked up
    /// without a wake-up (futex) round trip.
    fn spin_for_request(&self) -> Option<Request> {
        let budget = Duration::from_micros(self.core.config.idle_spin_us);
        if budget.is_zero() {
            return None;
        }
        let start = Instant::now();
        loop {
            match self.rx.try_recv() {
                Ok(r) => return Some(r),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if start.elapsed() >= budget {
                return None;
            }
            // Yield rather than burn the core: on a busy machine the producers this
            // thread just woke need it to send their next append.
            std::thread::yield_now();
        }
    }

    /// With every handle dropped and requests still in flight, finish them, then stop.
    fn close_when_drained_without_handle(&mut self) {
        if self.close.is_none() {
            let (_c, slot) = super::completion::Completion::new();
            self.close = Some(Completer::new(slot));
        }
    }

    /// How long the idle thread may sleep before an interval fsync is due.
    fn idle_timeout(&self) -> Option<Duration> {
        if self.core.config.sync_mode == SyncMode::Interval && self.dirty() {
            let due = self.last_sync + Duration::from_millis(self.core.config.sync_interval_ms);
            return Some(due.saturating_duration_since(Instant::now()));
        }
        None
    }

    /// Encodes `first` and whatever else is pending into the staged batch, until the
    /// channel is empty or the batch is full (the request that does not fit is carried).
    fn fill(&mut self, first: Request) -> Result<()> {
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Request::Sync(c) => {
                    let target = self.next_seq - 1;
                    if target <= self.synced_through {
                        c.complete(Ok(self.synced_through));
                    } else {
                        self.sync_waiters.push((c, target));
                    }
                }
                Request::Close(c) => {
                    self.close = Some(c);
                    return Ok(());
                }
                Request::Append {
                    entries,
                    timestamp,
                    bytes,
                    done,
                } => {
                    if let Err(e) = self.core.check_usable() {
                        self.core.release(bytes);
                        done.complete(Err(e));
                    } else if !self.stage(entries, timestamp, bytes, done)? {
                        return Ok(());
                    }
                }
            }
            next = self.rx.try_recv().ok();
        }
        Ok(())
    }

    /// Encodes one append into the staged batch, starting one (and rotating the file)
    /// if needed. Returns false when it did not fit and was carried to a later batch.
    fn stage(
        &mut self,
        entries: Entries,
        timestamp: i64,
        bytes: usize,
        done: Completer,
    ) -> Result<bool> {
        if self.staged.is_none() {
            let disk = align_up(BATCH_HEADER_LEN + bytes) as u64;
            let oversized = BATCH_HEADER_LEN + bytes > self.batch_capacity;
            let needs_rotation = self.file.offset + disk + BLOCK_SIZE as u64 > self.file.size;
            if (needs_rotation && !self.quiescent()) || (!oversized && self.pool.is_empty()) {
                self.carry = Some(Request::Append {
                    entries,
                    timestamp,
                    bytes,
                    done,
                });
                return Ok(false);
            }
            if needs_rotation {
                if let Err(e) = self.rotate() {
                    // fail() answers the carried append with this error.
                    self.carry = Some(Request::Append {
                        entries,
                        timestamp,
                        bytes,
                        done,
                    });
                    return Err(e);
                }
            }
            // Not cut to 32 bits: on a 32-bit target a file over 4 GiB had
            // room read as nothing at every 4 GiB, and the batch went out
            // with no entries, which recovery reads as damage.
            let room = usize::try_from(self.file.size - self.file.offset - BLOCK_SIZE as u64)
                .unwrap_or(usize::MAX);
            let buf = if oversized {
                AlignedBuf::new(BATCH_HEADER_LEN + bytes)
            } else {
                self.pool.pop().expect("pool checked non-empty")
            };
            let limit = buf.capacity().min(room);
            let acks = self.spare_acks.pop().unwrap_or_default();
            self.staged = Some(Staged {
                buf,
                acks,
                pos: BATCH_HEADER_LEN,
                first_seq: self.next_seq,
                entries_crc: 0,
                limit,
            });
        }
        let st = self.staged.as_mut().expect("staged above");
        // The first append of a batch always fits (checked above): a batch
        // is never submitted empty.
        debug_assert!(st.pos > BATCH_HEADER_LEN || st.pos + bytes <= st.limit);
        if st.pos + bytes > st.limit {
            self.carry = Some(Request::Append {
                entries,
                timestamp,
                bytes,
                done,
            });
            return Ok(false);
        }
        let out = st.buf.as_mut_slice();
        let sequence = self.next_seq;
        let next_seq = &mut self.next_seq;
        entries.for_each(|entry_type, topic, partition, data| {
            let len = entry_len(topic.len(), data.len());
            let crc = encode_entry(
                &mut out[st.pos..st.pos + len],
                *next_seq,
                timestamp,
                entry_type,
                topic,
                partition,
                data,
            );
            st.entries_crc = entries_crc(st.entries_crc, crc);
            st.pos += len;
            *next_seq += 1;
        });
        st.acks.push(Ack {
            done,
            sequence,
            bytes,
        });
        Ok(true)
    }

    /// Submits the staged batch when the pipeline allows (see [`Committer`]).
    /// Returns whether a batch was submitted.
    fn maybe_submit_staged(&mut self) -> Result<bool> {
        if self.staged.is_none() || self.writes.len() >= self.core.config.max_in_flight {
            return Ok(false);
        }
        // every_write: while a durable write is in flight the batch keeps collecting
        // (fewer, larger device flushes; measured 10-20% more records/s at 4 and 16
        // writers than submitting each batch at once) unless it is full, or it may
        // go out beside the one in flight (see `early_batch_ready`). With a backend
        // whose writes start only when reaped, nothing is at the device yet: the
        // batch joins the writes queued before it, written and flushed with them.
        let durable = self.every_write;
        if durable {
            let group = self.wants_group_writes();
            self.backend.prefer_group_writes(group);
        }
        let grouped = durable && self.backend.writes_at_reap();
        if durable && !grouped && self.syncs_must_not_overlap() && self.syncs_in_flight() > 0 {
            return Ok(false);
        }
        let early = self.every_write
            && !grouped
            && !self.writes.is_empty()
            && self.carry.is_none()
            && self.close.is_none();
        if early && !self.early_batch_ready() {
            return Ok(false);
        }
        self.early_gate
            .submitted(early && self.early_poll_since.is_some());
        self.early_poll_since = None;
        let Staged {
            mut buf,
            acks,
            pos,
            first_seq,
            entries_crc,
            ..
        } = self.staged.take().expect("checked");
        let entry_count = (self.next_seq - first_seq) as u32;
        let payload_len = (pos - BATCH_HEADER_LEN) as u32;
        let header = BatchHeader {
            kind: BatchKind::Entries,
            file_number: self.file.number,
            first_sequence: first_seq,
            entry_count,
            payload_len,
            synced_through: self.synced_through,
            entries_crc: Some(entries_crc),
        };
        let len = align_up(pos);
        let out = buf.as_mut_slice();
        encode_batch_header(&mut out[..BATCH_HEADER_LEN], &header, self.file.key);
        out[pos..len].fill(0);
        let offset = self.file.offset;
        self.file.offset += len as u64;
        if self.claim_active(self.file.offset) {
            self.unconfirmed_through = self.next_seq - 1;
            self.note_unmapped(self.next_seq - 1, offset, self.file.offset);
            self.core
                .counters
                .unwritten_batches
                .fetch_add(1, Ordering::Relaxed);
        }
        let token = self.token();
        let submitted = self.backend.submit(
            token,
            Op::Write {
                buf: &buf,
                len,
                offset,
                sync: durable,
            },
        );
        let flight = WriteFlight {
            token,
            buf,
            acks,
            first: first_seq,
            last: self.next_seq - 1,
            durable,
            grouped,
            result: None,
        };
        if let Err(e) = submitted {
            // In the queue, so that fail() answers this batch's producers with the
            // error (dropped, they would only see `Closed`) and keeps the buffer if
            // the kernel may still hold it.
            self.writes.push_back(flight);
            return Err(e);
        }
        let c = &self.core.counters;
        c.entries
            .fetch_add(u64::from(entry_count), Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
        c.max_batch_entries
            .fetch_max(u64::from(entry_count), Ordering::Relaxed);
        if durable {
            c.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        if early {
            c.early_batches.fetch_add(1, Ordering::Relaxed);
        }
        if grouped {
            c.grouped_batches.fetch_add(1, Ordering::Relaxed);
        }
        self.writes.push_back(flight);
        self.count_syncs_in_flight();
        Ok(true)
    }

    /// Whether at most one fdatasync may be in flight at a time: with page-cache
    /// files (`direct_io` off), whose durable writes in the ring are each a write
    /// linked to an fsync of the whole file. Linux reports a failed writeback to
    /// one fsync of an open file only: with two in flight, the later batch's fsync
    /// may write back the earlier batch's pages, fail, and use up the error, and
    /// the earlier batch's own fsync then finds nothing left to write and succeeds,
    /// acknowledging entries that are not on the disk. `O_DIRECT` durable writes
    /// (`RWF_DSYNC`) report their own write and flush errors
    /// ([`Backend::syncs_may_overlap`]), and grouped writes share one fsync run by
    /// this thread.
    fn syncs_must_not_overlap(&self) -> bool {
        !self.backend.syncs_may_overlap()
    }

    /// fdatasyncs submitted and not yet completed: durable writes in the ring, a
    /// group's (one for all of its writes), the standalone one.
    fn syncs_in_flight(&self) -> usize {
        let ring = self
            .writes
            .iter()
            .filter(|w| w.durable && !w.grouped)
            .count();
        let group = self.writes.iter().any(|w| w.durable && w.grouped);
        ring + usize::from(group) + usize::from(self.sync_op.is_some())
    }

    fn count_syncs_in_flight(&self) {
        self.core
            .counters
            .max_syncs_in_flight
            .fetch_max(self.syncs_in_flight() as u64, Ordering::Relaxed);
    }

    /// In `every_write` mode, with a batch staged and a durable write in flight that
    /// the staged batch may join (fewer than [`EARLY_OVERLAP`] in flight, within
    /// `max_in_flight`): the cohort the staged batch waits for, when it is at most
    /// [`EARLY_MAX_COHORT`] entries. Closed-loop producers fall into cohorts, one
    /// per batch; once the next cohort has gathered, waiting for the previous write
    /// to complete only idles the device, which completes two overlapping durable
    /// writes about as fast as one. The producers appending now are the ones the
    /// batch acknowledged last released, so its size is the cohort (the write in
    /// flight's own size before anything was acknowledged; two cohorts of unequal
    /// size would otherwise have the smaller never go out early, and the larger
    /// split).
    fn early_cohort(&self) -> Option<u64> {
        let newest = self.writes.back()?;
        let cohort = if self.acked_cohort > 0 {
            self.acked_cohort
        } else {
            newest.last + 1 - newest.first
        };
        (self.every_write
            && !self.backend.writes_at_reap()
            && self.staged.is_some()
            && self.carry.is_none()
            && self.close.is_none()
            && self.writes.len() < EARLY_OVERLAP.min(self.core.config.max_in_flight)
            && cohort <= EARLY_MAX_COHORT)
            .then_some(cohort)
    }

    /// Whether the staged batch may go out beside the write in flight: it holds at
    /// least as many entries as its cohort ([`Committer::early_cohort`]).
    fn early_batch_ready(&self) -> bool {
        let staged = self
            .staged
            .as_ref()
            .map_or(0, |st| self.next_seq - st.first_seq);
        self.early_cohort().is_some_and(|c| staged >= c)
    }

    /// Whether the thread should poll (reap without blocking, take new requests)
    /// rather than sleep until a write completes: while the staged batch may still
    /// gather enough entries to go out early, for up to `idle_spin_us` in a row.
    ///
    /// Polling pays when the producers of a cohort append again within the
    /// device's write time (tasks, or a few threads); with many threads on few
    /// CPUs they are still waiting to be scheduled when the write completes, and a
    /// commit thread that yields among them only falls behind them (measured at 64
    /// threads on 2 vCPUs: 279k against 347k records/s, `docs/engine.md`), so
    /// polling stops for a while when it seldom pays ([`EarlyPollGate`]).
    fn polls_for_early_batch(&mut self) -> bool {
        if self.early_cohort().is_none() {
            self.early_poll_since = None;
            return false;
        }
        if self.early_poll_since.is_none() && !self.early_gate.start() {
            return false;
        }
        let since = *self.early_poll_since.get_or_insert_with(Instant::now);
        since.elapsed() < Duration::from_micros(self.core.config.idle_spin_us)
    }

    /// Whether the thread is about to wait in a way the early-poll gate does not
    /// see: one durable write in flight and nothing staged, behind a large cohort
    /// ([`UNSEEN_WAIT_MIN_COHORT`]). The gate judges the polls it starts, and it
    /// starts one only when a batch is staged as the thread would wait; when the
    /// producers of a large cohort have not appended yet by then (many threads on
    /// few CPUs), no poll ever starts, the gate stays on, and the writes stay in
    /// the ring where groups would take them (`docs/engine.md`, "Group writes in
    /// the `uring` backend"). Such a wait counts as a poll that did not pay.
    fn unseen_wait(&self) -> bool {
        self.every_write
            && self.staged.is_none()
            && self.carry.is_none()
            && self.writes.len() == 1
            && !self.backend.writes_at_reap()
            && self.early_poll_since.is_none()
            && self.acked_cohort > UNSEEN_WAIT_MIN_COHORT
    }

    /// Whether durable writes should be written in groups by this thread
    /// ([`Backend::prefer_group_writes`]): as configured (`uring_group_writes`),
    /// or else while polling for early batches does not pay and no full batch
    /// waits. Many producer threads on few CPUs then release one cohort per write
    /// whatever the ring could overlap, and a group written at the thread's next
    /// wait takes in the producers that append while the batch is submitted
    /// (`docs/engine.md`); a full batch waiting means streaming, where the ring's
    /// writes in flight side by side are faster.
    /// So does a lone producer ([`LONE_WRITES_TO_GROUP`]).
    fn wants_group_writes(&self) -> bool {
        self.core.config.uring_group_writes.unwrap_or(
            self.lone_writes >= LONE_WRITES_TO_GROUP
                || (self.early_gate.off > 0 && self.carry.is_none()),
        )
    }

    /// Counts a completed durable write of `appends` appends toward
    /// [`LONE_WRITES_TO_GROUP`]: alone when it held one append and, as it
    /// completes, nothing else is in flight, staged, carried or queued.
    fn count_lone_write(&mut self, appends: usize) {
        let alone = appends == 1
            && self.writes.is_empty()
            && self.staged.is_none()
            && self.carry.is_none()
            && self.rx.is_empty();
        self.lone_writes = if alone {
            self.lone_writes.saturating_add(1)
        } else {
            0
        };
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Submits the standalone fdatasync when one is needed and none is in flight:
    /// `every_write` batches wait for it, a `sync()` caller asked, or the interval is up.
    fn maybe_sync(&mut self) -> Result<()> {
        if self.sync_op.is_some() {
            return Ok(());
        }
        if self.written_through <= self.synced_through {
            return Ok(());
        }
        let interval_due = self.core.config.sync_mode == SyncMode::Interval
            && self.last_sync.elapsed() >= Duration::from_millis(self.core.config.sync_interval_ms);
        if self.awaiting_sync.is_empty() && self.sync_waiters.is_empty() && !interval_due {
            return Ok(());
        }
        if self.syncs_must_not_overlap() && self.syncs_in_flight() > 0 {
            // After the durable write in flight (see `syncs_must_not_overlap`).
            return Ok(());
        }
        self.submit_sync()
    }

    fn submit_sync(&mut self) -> Result<()> {
        let token = self.token();
        self.backend.submit(token, Op::Sync)?;
        self.core.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.last_sync = Instant::now();
        self.sync_op = Some(SyncFlight {
            token,
            through: self.written_through,
            result: None,
        });
        self.count_syncs_in_flight();
        Ok(())
    }

    fn reap(&mut self, wait: bool) -> Result<()> {
        let mut done = std::mem::take(&mut self.done_buf);
        let writes = &self.writes;
        let bufs = |t: u64| writes.iter().find(|w| w.token == t).map(|w| &w.buf);
        let reaped = self.backend.reap(wait, &mut done, &bufs);
        let shared = self.backend.take_shared_flushes();
        if shared > 0 {
            self.core
                .counters
                .fsyncs
                .fetch_sub(shared, Ordering::Relaxed);
        }
        reaped?;
        for d in done.drain(..) {
            if let Some(w) = self.writes.iter_mut().find(|w| w.token == d.token) {
                w.result = Some(d.result);
            } else if let Some(s) = self.sync_op.as_mut().filter(|s| s.token == d.token) {
                s.result = Some(d.result);
            }
        }
        self.done_buf = done;
        self.advance()
    }

    /// Moves completed operations forward and acknowledges, strictly in order.
    fn advance(&mut self) -> Result<()> {
        if let Some(s) = self.sync_op.as_mut() {
            if let Some(r) = s.result.take() {
                // Put the failure where fail() finds nothing left to wait for.
                let through = s.through;
                self.sync_op = None;
                r?;
                self.set_synced(through)?;
            }
        }
        // A write submitted after the in-flight fdatasync is acknowledged only once
        // that fsync succeeded: if it fails, nothing after it may be acknowledged.
        let sync_token = self.sync_op.as_ref().map_or(u64::MAX, |s| s.token);
        while self
            .writes
            .front()
            .is_some_and(|w| w.result.is_some() && w.token < sync_token)
        {
            let mut w = self.writes.pop_front().expect("front checked");
            if let Some(Err(e)) = w.result.take() {
                // Back in the queue (finished) so fail() answers its producers.
                w.result = Some(Ok(()));
                self.writes.push_front(w);
                return Err(e);
            }
            self.written_through = w.last;
            // A durable write covers its own batch only: it moves `synced_through`
            // when everything before it was already durable.
            if w.durable && self.synced_through + 1 >= w.first {
                if let Err(e) = self.set_synced(w.last) {
                    w.result = Some(Ok(()));
                    self.writes.push_front(w);
                    return Err(e);
                }
            }
            // Oversized one-off buffers are freed; pool buffers go back.
            if w.buf.capacity() == self.batch_capacity {
                self.pool.push(w.buf);
            }
            if w.durable {
                self.count_lone_write(w.acks.len());
            }
            // Behind an earlier write still awaiting its sync, a write waits too:
            // acknowledgements go out in sequence order.
            if self.every_write && (self.synced_through < w.last || !self.awaiting_sync.is_empty())
            {
                self.awaiting_sync.push_back((w.acks, w.last));
            } else {
                self.acknowledge(w.acks, w.last);
            }
        }
        while self
            .awaiting_sync
            .front()
            .is_some_and(|(_, last)| *last <= self.synced_through)
        {
            let (acks, last) = self.awaiting_sync.pop_front().expect("front checked");
            self.acknowledge(acks, last);
        }
        if !self.sync_waiters.is_empty() {
            let synced = self.synced_through;
            let mut i = 0;
            while i < self.sync_waiters.len() {
                if self.sync_waiters[i].1 <= synced {
                    let (c, _) = self.sync_waiters.swap_remove(i);
                    c.complete(Ok(synced));
                } else {
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// Records that a sync made everything through `through` durable, once the
    /// journal check passes when the sync covered writes beyond the confirmed part
    /// of the file ([`super::journal`]).
    fn set_synced(&mut self, through: u64) -> Result<()> {
        if through > self.synced_through {
            if self.unconfirmed_through > self.synced_through {
                self.check_journal()?;
            }
            self.check_mapped(through)?;
            self.synced_through = through;
            self.core.synced_through.store(through, Ordering::Release);
        }
        Ok(())
    }

    /// Records a page-cache write of `offset..end` of the active file, of
    /// entries through `last`, that reached beyond its confirmed part.
    fn note_unmapped(&mut self, last: u64, offset: u64, end: u64) {
        if self.mapping.is_some() {
            let start = offset.max(self.file.confirmed);
            self.unmapped.push_back((last, start, end));
        }
    }

    /// After a sync that covered every write through sequence `through`: asks
    /// the file system whether the page-cache writes it covered beyond the
    /// confirmed part are mapped to written blocks, and confirms them if so.
    fn check_mapped(&mut self, through: u64) -> Result<()> {
        let Some(f) = &self.mapping else {
            return Ok(());
        };
        let mut range: Option<(u64, u64)> = None;
        while let Some(&(last, start, end)) = self.unmapped.front() {
            if last > through {
                break;
            }
            self.unmapped.pop_front();
            range = Some(range.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
        }
        let Some((start, end)) = range else {
            return Ok(());
        };
        journal::check_written_range(f, start, end).map_err(|e| {
            Error::io(
                "mapping check after fdatasync",
                self.core.dir.join(files::CURRENT),
                e,
            )
        })?;
        // The writes are contiguous: from the confirmed part on, all is written now.
        if start <= self.file.confirmed {
            self.file.confirmed = self.file.confirmed.max(end);
        }
        Ok(())
    }

    fn check_journal(&self) -> Result<()> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        j.check().map_err(|e| {
            Error::io(
                "journal check after fdatasync",
                self.core.dir.join(files::CURRENT),
                e,
            )
        })
    }

    fn acknowledge(&mut self, mut acks: Vec<Ack>, last: u64) {
        debug_assert!(
            last >= self.core.acked_through.load(Ordering::Relaxed),
            "acknowledgements out of order: {last} after {}",
            self.core.acked_through.load(Ordering::Relaxed)
        );
        self.core.acked_through.store(last, Ordering::Release);
        if let Some(first) = acks.first() {
            self.acked_cohort = last + 1 - first.sequence;
        }
        // Capacity first: whoever sees its append acknowledged also sees its bytes
        // no longer pending (`Stats::pending_bytes`), and a producer blocked on the
        // cap gets its wake-up no later than the acknowledged ones.
        self.core.release(acks.iter().map(|a| a.bytes).sum());
        for a in acks.drain(..) {
            a.done.complete(Ok(a.sequence));
        }
        self.spare_acks.push(acks);
    }

    /// Waits for everything submitted, syncing what `every_write` batches need.
    fn drain(&mut self) -> Result<()> {
        while !self.quiescent() {
            self.maybe_sync()?;
            self.reap(true)?;
        }
        Ok(())
    }

    /// Called before writing the active file up to `end`: once that passes what the
    /// background zero-fill has done, the fill stops (waiting for a zero write in
    /// progress) so that it never writes where entries go. The rest of the file
    /// then stays unwritten, like a prepared file whose zero-fill a rotation cut
    /// short. Returns whether the write reaches beyond the file's confirmed part
    /// (`ActiveFile::confirmed`).
    fn claim_active(&mut self, end: u64) -> bool {
        if let Some(fill) = self.preparer.as_ref().and_then(|p| p.tail.as_ref()) {
            // Each zero-filled chunk was synced and checked before it counted.
            self.file.confirmed = self.file.confirmed.max(fill.zeroed_through());
        }
        let beyond = end > self.file.confirmed;
        let Some(p) = &mut self.preparer else {
            return beyond;
        };
        let Some(fill) = &p.tail else { return beyond };
        if end > fill.zeroed_through() {
            fill.stop();
            tracing::debug!(
                file = self.file.number,
                zeroed = fill.zeroed_through(),
                "appends overtook the zero-fill of the active WAL file; the rest stays unwritten"
            );
            p.tail = None;
        }
        beyond
    }

    /// Writes a seal batch at the current offset and fdatasyncs it (nothing in flight).
    fn seal(&mut self, next_sequence: u64) -> Result<()> {
        // The seal's own sync covers the seal only: make everything before it durable first.
        if self.written_through > self.synced_through {
            self.submit_sync()?;
            self.drain()?;
        }
        let mut buf = self
            .pool
            .pop()
            .expect("pool is full when nothing is in flight");
        let header = BatchHeader {
            kind: BatchKind::Seal,
            file_number: self.file.number,
            first_sequence: next_sequence,
            entry_count: 0,
            payload_len: 0,
            // Everything before the seal is durable (above).
            synced_through: self.synced_through,
            entries_crc: Some(0),
        };
        let out = buf.as_mut_slice();
        encode_batch_header(&mut out[..BATCH_HEADER_LEN], &header, self.file.key);
        out[BATCH_HEADER_LEN..BLOCK_SIZE].fill(0);
        let beyond = self.claim_active(self.file.offset + BLOCK_SIZE as u64);
        if beyond {
            let at = self.file.offset;
            self.note_unmapped(u64::MAX, at, at + BLOCK_SIZE as u64);
        }
        let token = self.token();
        let r = self.backend.submit(
            token,
            Op::Write {
                buf: &buf,
                len: BLOCK_SIZE,
                offset: self.file.offset,
                sync: true,
            },
        );
        let r = r.and_then(|()| {
            let mut done = Vec::new();
            let seal = |t: u64| (t == token).then_some(&buf);
            while done.is_empty() {
                self.backend.reap(true, &mut done, &seal)?;
            }
            done.pop().expect("one op").result
        });
        if r.is_ok() {
            self.pool.push(buf);
        } else {
            // A failed reap may leave the write with the kernel, which could still
            // read from the buffer: never reuse or free it (the WAL fails anyway).
            std::mem::forget(buf);
        }
        r?;
        if beyond {
            self.check_journal()?;
            self.check_mapped(u64::MAX)?;
        }
        self.core.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.file.offset += BLOCK_SIZE as u64;
        self.set_synced(self.next_seq - 1)
    }

    /// Seals the active file, archives it and switches to the prepared next file.
    ///
    /// Every file descriptor the switch needs is taken before the renames that
    /// archive the active file and make the prepared one active, and none after:
    /// a rotation short of descriptors fails, if the shortage outlasts its tries,
    /// with the files as they were (the active file sealed, the next one
    /// prepared), which the next open takes as they are.
    fn rotate(&mut self) -> Result<()> {
        self.drain()?;
        self.seal(self.next_seq)?;
        let dir = self.core.dir.clone();
        // New files get the configured size (the active one may predate a change).
        let new_size = self.core.config.max_file_size;
        // Every step below that opens a file is tried again while the process
        // is short of file descriptors for a moment (`with_descriptors`).
        // This also stops the active file's zero-fill, if any, before it returns.
        let prepared = match self.preparer.take().and_then(Preparer::finish) {
            Some(Ok(p)) => p,
            finished => {
                if let Some(Err(e)) = finished {
                    tracing::warn!(error = %e, "background preparation of the next WAL file failed; retrying inline");
                }
                let number = self.file.number + 1;
                self.with_descriptors("prepare", &dir.join(files::NEXT), |_| {
                    files::prepare_file(&dir, number, new_size, Prealloc::ZeroFill)
                })?
            }
        };
        // An open file stays the same file when its name changes: the backend
        // writes the prepared file under its name as the active one.
        let next = self.with_descriptors("open", &prepared, |c| c.open_next(&prepared))?;
        let current = dir.join(files::CURRENT);
        let archived = files::archived_path(&dir, self.file.number);
        files::rename(&current, &archived)?;
        files::rename(&prepared, &current)?;
        self.backend.renamed(&current);
        // Both renames become durable together with the directory, fsynced
        // through the descriptor the commit thread keeps open for it.
        self.dir.sync()?;
        self.mapping = next.mapping;
        // The seal's sync covered every write to the file before.
        self.unmapped.clear();
        self.core
            .archived
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Archived {
                number: self.file.number,
                path: archived,
                covers_through: self.next_seq - 1,
                damaged: false,
            });
        tracing::info!(
            file = self.file.number,
            next = self.file.number + 1,
            "rotated WAL file"
        );
        let syncs_now = self.core.counters.fsyncs.load(Ordering::Relaxed);
        let prealloc = next_file_prealloc(
            self.backend.direct_io(),
            self.file.offset,
            syncs_now.saturating_sub(self.file_start_syncs),
        );
        self.file_start_syncs = syncs_now;
        self.file.number += 1;
        self.file.key = next.key;
        self.file.offset = BLOCK_SIZE as u64;
        (self.file.size, self.file.confirmed) = (next.size, next.confirmed);
        self.core.counters.rotations.fetch_add(1, Ordering::Relaxed);
        self.preparer = spawn_preparer(&dir, self.file.number + 1, new_size, prealloc, None);
        Ok(())
    }

    /// Opens the prepared file at `path` to become the active one, before it is
    /// renamed: reads its key and written extent, and makes it the backend's
    /// file (nothing is in flight after the seal). The backend's open comes
    /// last, so that a failure leaves it on the active file.
    fn open_next(&mut self, path: &Path) -> Result<NextFile> {
        let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let key = files::read_header_of(&f, path)?.key;
        let (size, confirmed) = files::written_extent_of(&f, path)?;
        self.backend.open(path)?;
        // The new file may have lost direct I/O (see backend::open_active).
        let mapping =
            (!self.backend.direct_io() && self.backend.syncs_the_real_file()).then_some(f);
        Ok(NextFile {
            key,
            size,
            confirmed,
            mapping,
        })
    }

    /// Runs `op`, a step of a rotation that opens a file (`what` on `path`),
    /// trying it again while the process is short of file descriptors for a
    /// moment ([`files::retry_fd_shortage`]), after calling the configured
    /// [`WalConfig::on_descriptor_shortage`].
    fn with_descriptors<T>(
        &mut self,
        what: &'static str,
        path: &Path,
        mut op: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let release = self.core.config.on_descriptor_shortage.clone();
        files::retry_fd_shortage(what, path, release.as_ref(), || {
            #[cfg(test)]
            {
                self.core.rotation_open_tries.fetch_add(1, Ordering::SeqCst);
                let skip = &self.core.skip_rotation_opens;
                if skip
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_err()
                {
                    files::injected_emfile(&self.core.fail_rotation_opens, what, path)?;
                }
            }
            op(self)
        })
    }

    /// Clean stop: finish everything, fdatasync whatever is not yet durable, answer `done`.
    fn shutdown(&mut self, done: Option<Completer>) -> Result<bool> {
        // Appends sent from now on are refused with Closed; those already
        // queued behind the close are answered when the thread stops
        // (`answer_queued`): with the failure if this flush fails.
        self.core.closed.store(true, Ordering::Release);
        match self.flush_for_close() {
            Ok(()) => {
                // Everything is durable and nothing follows: let the next open skip
                // probing the rest of the file. Only a hint, so a failure just warns.
                if let Err(e) = super::clean_close::store(
                    &self.core.dir,
                    self.file.number,
                    self.file.key,
                    self.file.offset,
                    self.next_seq,
                ) {
                    tracing::warn!(error = %e, "could not record the clean close; the next open probes the newest file");
                }
                if let Some(d) = done {
                    d.complete(Ok(self.next_seq - 1));
                }
                self.core.wake_waiters();
                Ok(false)
            }
            Err(e) => {
                // fail() answers the closer with the error (never a false success).
                self.close = done;
                Err(e)
            }
        }
    }

    /// Writes and fdatasyncs everything accepted before the close.
    fn flush_for_close(&mut self) -> Result<()> {
        loop {
            self.maybe_submit_staged()?;
            self.drain()?;
            match self.carry.take() {
                Some(c) => self.fill(c)?,
                None if self.staged.is_some() => {}
                None => break,
            }
        }
        if self.written_through > self.synced_through {
            self.submit_sync()?;
            self.drain()?;
        }
        for (c, _) in std::mem::take(&mut self.sync_waiters) {
            c.complete(Ok(self.synced_through));
        }
        if let Some(p) = self.preparer.take() {
            p.abandon();
        }
        Ok(())
    }

    /// Latches `e`: every pending and in-flight request fails, now and later.
    fn fail(&mut self, e: Error) {
        tracing::error!(error = %e, "WAL failed; every pending and later append is rejected until reopen");
        // Batches answered with the failure below must not land: what the
        // kernel has not taken yet never goes to it.
        self.backend.stop_submitting();
        let cause = Arc::new(e);
        let _ = self.core.failed.set(Arc::clone(&cause));
        let cause = Arc::clone(self.core.failed.get().unwrap_or(&cause));
        let err = || Error::Failed {
            cause: Arc::clone(&cause),
        };
        // The kernel may still own buffers of other operations: wait for them.
        // Writes not started yet (std, a uring write group, entries the ring
        // never handed over) are not performed: their buffers are not offered.
        let mut done = Vec::new();
        let mut reap_failed = false;
        while self.backend.in_flight() > 0 {
            if self.backend.reap(true, &mut done, &|_| None).is_err() {
                reap_failed = true;
                break;
            }
        }
        let answer = |acks: Vec<Ack>| {
            for a in acks {
                self.core.release(a.bytes);
                a.done.complete(Err(err()));
            }
        };
        for (acks, _) in self.awaiting_sync.drain(..) {
            answer(acks);
        }
        if let Some(st) = self.staged.take() {
            answer(st.acks);
            if st.buf.capacity() == self.batch_capacity {
                self.pool.push(st.buf);
            }
        }
        for w in self.writes.drain(..) {
            answer(w.acks);
            if reap_failed {
                // The kernel might still write from it; never free it.
                std::mem::forget(w.buf);
            } else {
                self.pool.push(w.buf);
            }
        }
        self.sync_op = None;
        if reap_failed {
            self.core.ring_abandoned.store(true, Ordering::Release);
            // Registered buffers must outlive the ring: leak the ring's owner too.
            let backend = std::mem::replace(
                &mut self.backend,
                Box::new(super::backend::std_backend::StdBackend::new(false)),
            );
            std::mem::forget(backend);
        }
        for (w, _) in std::mem::take(&mut self.sync_waiters) {
            w.complete(Err(err()));
        }
        if let Some(Request::Append { done, bytes, .. }) = self.carry.take() {
            self.core.release(bytes);
            done.complete(Err(err()));
        }
        if let Some(c) = self.close.take() {
            c.complete(Err(err()));
        }
        self.core.wake_waiters();
    }

    /// Answers the requests still queued when the thread stops (sent behind a
    /// close, or while it stopped): with the latched failure when the WAL
    /// failed, a close's final flush included, so that a caller whose
    /// acknowledged entries that flush did not make durable is told so;
    /// otherwise with [`Error::Closed`]. None of them was written. Their bytes
    /// leave the pending count. The queue is then closed: a request sent
    /// later finds no receiver and is answered `Closed`, or is refused by the
    /// check of the latched state that comes first.
    fn answer_queued(&mut self) {
        let answer = || match self.core.check_usable() {
            Err(e) => e,
            Ok(()) => Error::Closed,
        };
        while let Ok(req) = self.rx.try_recv() {
            match req {
                Request::Append { done, bytes, .. } => {
                    self.core.release(bytes);
                    done.complete(Err(answer()));
                }
                Request::Sync(c) | Request::Close(c) => c.complete(Err(answer())),
            }
        }
        drop(std::mem::replace(&mut self.rx, crossbeam_channel::never()));
    }

    /// After a failure: answer every request with the latched error until closed.
    fn serve_failed(&mut self) {
        let cause = match self.core.failed.get() {
            Some(c) => Arc::clone(c),
            None => return,
        };
        while let Ok(req) = self.rx.recv() {
            let err = Error::Failed {
                cause: Arc::clone(&cause),
            };
            match req {
                Request::Append { done, bytes, .. } => {
                    self.core.release(bytes);
                    done.complete(Err(err));
                }
                Request::Sync(c) => c.complete(Err(err)),
                Request::Close(c) => {
                    c.complete(Err(err));
                    break;
                }
            }
        }
        self.core.closed.store(true, Ordering::Release);
        // A failed WAL changes nothing more on its disk.
        if let Some(p) = self.preparer.take() {
            let _ = p.finish();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{
        next_file_prealloc, Core, EarlyPollGate, Prealloc, EARLY_POLL_BACKOFF, EARLY_POLL_WINDOW,
        RESERVE_FROM_BYTES_PER_SYNC,
    };
    use crate::wal::WalConfig;
    use std::sync::{atomic::Ordering, Arc};
    use std::time::{Duration, Instant};

    /// A core whose pending-bytes cap is `cap`, for the capacity tests.
    pub(crate) fn core_with_cap(cap: usize) -> Core {
        let config = WalConfig {
            max_pending_bytes: cap,
            ..WalConfig::default()
        };
        Core::new(config, std::env::temp_dir(), Vec::new(), 0, 0)
    }

    /// Waits (at most 10 s) until a waiter claims room at the cap.
    pub(crate) fn wait_for_claim(core: &Core) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let claim = core.claimed_bytes();
            if claim != 0 {
                return claim;
            }
            assert!(Instant::now() < deadline, "no waiter claimed room");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A thread blocked reserving `bytes` of `core`.
    pub(crate) fn blocked_reserve(
        core: &Arc<Core>,
        bytes: usize,
    ) -> std::thread::JoinHandle<crate::error::Result<()>> {
        let core = Arc::clone(core);
        std::thread::spawn(move || core.reserve_blocking(bytes))
    }

    /// A large append blocked at the cap claims its bytes: small reservations
    /// that would fit under the cap but eat into the claimed room are refused,
    /// so they cannot keep the large one waiting forever. Once it passes, the
    /// claim is gone.
    #[test]
    fn a_blocked_append_claims_the_room_it_needs_and_small_ones_leave_it() {
        const K: usize = 1024;
        let core = Arc::new(core_with_cap(1024 * K));
        assert!(core.try_reserve(512 * K));
        let large = blocked_reserve(&core, 768 * K);
        assert_eq!(wait_for_claim(&core), 768 * K);
        // 512 + 256 fits the cap of 1024, but not with 768 claimed.
        assert!(
            !core.try_reserve(256 * K),
            "a small append took claimed room"
        );
        core.release(512 * K);
        large.join().unwrap().unwrap();
        assert_eq!(core.pending_bytes(), 768 * K);
        assert_eq!(core.claimed_bytes(), 0, "the claim stayed");
        assert!(core.try_reserve(256 * K));
    }

    /// A claim larger than the cap passes alone: while it stands nothing else
    /// is reserved, and it passes once the pending bytes drain to none.
    #[test]
    fn a_claim_larger_than_the_cap_waits_for_the_cap_to_drain_and_passes_alone() {
        const K: usize = 1024;
        let core = Arc::new(core_with_cap(1024 * K));
        assert!(core.try_reserve(K));
        let huge = blocked_reserve(&core, 2048 * K);
        assert_eq!(wait_for_claim(&core), 2048 * K);
        assert!(!core.try_reserve(K), "a small append took claimed room");
        core.release(K);
        huge.join().unwrap().unwrap();
        assert_eq!(core.pending_bytes(), 2048 * K);
        assert_eq!(core.claimed_bytes(), 0);
    }

    /// A waiter that gives up (the WAL failed or closed) gives its claim up too.
    #[test]
    fn a_waiter_that_fails_gives_its_claim_up() {
        const K: usize = 1024;
        let core = Arc::new(core_with_cap(1024 * K));
        assert!(core.try_reserve(512 * K));
        let large = blocked_reserve(&core, 768 * K);
        wait_for_claim(&core);
        core.closed.store(true, Ordering::Release);
        core.wake_waiters();
        assert!(matches!(
            large.join().unwrap(),
            Err(crate::error::Error::Closed)
        ));
        assert_eq!(core.claimed_bytes(), 0);
        assert!(core.try_reserve(256 * K));
    }

    #[test]
    fn only_large_direct_writes_make_the_next_files_reserved() {
        let big = RESERVE_FROM_BYTES_PER_SYNC;
        // 100 MiB in 100 durable writes of 1 MiB; in 4,000 of ~26 KiB.
        assert_eq!(next_file_prealloc(true, 100 << 20, 100), Prealloc::Reserve);
        assert_eq!(
            next_file_prealloc(true, 100 << 20, 4_000),
            Prealloc::ZeroFill
        );
        assert_eq!(next_file_prealloc(true, big * 10, 10), Prealloc::Reserve);
        assert_eq!(
            next_file_prealloc(true, big * 10 - 1, 10),
            Prealloc::ZeroFill
        );
        // Page-cache writes, whose extent conversion a sync may not see fail.
        assert_eq!(
            next_file_prealloc(false, 100 << 20, 100),
            Prealloc::ZeroFill
        );
        // No sync counted (nothing to divide by): zero-fill, the safe default.
        assert_eq!(next_file_prealloc(true, 100 << 20, 0), Prealloc::ZeroFill);
    }

    /// Runs one window of polls, `hits` of which end with an early batch.
    fn window(gate: &mut EarlyPollGate, hits: u32) {
        for i in 0..EARLY_POLL_WINDOW {
            assert!(gate.start(), "poll {i} of a window refused");
            gate.submitted(i < hits);
        }
    }

    #[test]
    fn polling_that_pays_goes_on() {
        let mut gate = EarlyPollGate::default();
        for _ in 0..10 {
            window(&mut gate, EARLY_POLL_WINDOW / 4);
        }
        assert!(gate.start());
    }

    #[test]
    fn polling_that_seldom_pays_stops_for_a_while_then_is_tried_again() {
        let mut gate = EarlyPollGate::default();
        window(&mut gate, EARLY_POLL_WINDOW / 4 - 1);
        // The window is judged when the next poll wants to start; then no poll
        // starts until that many batches went out without one.
        for _ in 0..EARLY_POLL_BACKOFF {
            assert!(!gate.start());
            gate.submitted(false);
        }
        // Tried again: a fresh window, judged on its own polls only.
        window(&mut gate, EARLY_POLL_WINDOW);
        assert!(gate.start());
    }

    #[test]
    fn waits_no_poll_judged_count_as_polls_that_did_not_pay() {
        let mut gate = EarlyPollGate::default();
        // A quarter of the window pays; the rest are waits with nothing staged.
        for _ in 0..EARLY_POLL_WINDOW / 4 {
            assert!(gate.start());
            gate.submitted(true);
        }
        for _ in EARLY_POLL_WINDOW / 4..EARLY_POLL_WINDOW {
            gate.unjudged_wait();
            gate.submitted(false);
        }
        assert!(gate.start(), "a quarter paid");
        gate.submitted(false);

        let mut gate = EarlyPollGate::default();
        for _ in 0..EARLY_POLL_WINDOW {
            gate.unjudged_wait();
            gate.submitted(false);
        }
        assert!(!gate.start(), "no poll paid, and polling goes on");
        assert!(gate.off > 0);
        // While polling is off they count nothing.
        gate.unjudged_wait();
        assert_eq!((gate.polls, gate.hits), (0, 0));
    }
}
