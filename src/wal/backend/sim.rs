//! A fault-injecting backend (the engine's `Backend` trait) for crash tests
//! (feature `sim`, and `cfg(test)`).
//!
//! It writes exactly the bytes the engine hands it into the real file (so recovery
//! reads ordinary WAL files afterwards), and keeps beside them a model of a disk with
//! a volatile write cache:
//!
//! - every applied write is remembered per 512-byte sector, together with the
//!   sector's *durable* content (what it held before its first unsynced write);
//! - a standalone `fdatasync` that completes makes durable the writes that had
//!   completed when it was submitted, and nothing else: not a write still in
//!   flight then (nor the pieces of it already applied), even one submitted
//!   before it, and not a write submitted after it, even one that completed first
//!   (the kernel promises nothing for writes that overlap the sync). The sync does
//!   not wait for earlier writes (the uring backend submits it without
//!   `IOSQE_IO_DRAIN`), so it may complete before them; a write submitted with
//!   `sync` makes only its own sectors durable (the `RWF_DSYNC` contract), however
//!   the real backend implements it;
//! - [`SimDisk::power_loss`] picks, independently for every unsynced sector, either
//!   its durable content or one of the versions written since: unsynced writes are
//!   lost wholly or partly, torn at any sector boundary, or persisted out of order;
//!   writes still in flight at the crash count as unsynced versions too;
//! - operations complete in a random order, syncs included, and writes may
//!   complete in several short pieces;
//! - one injected error per run: EIO on a write (part of it may have reached the
//!   cache), EIO on fdatasync, ENOSPC on a write, a short write that stops making
//!   progress (`WriteZero`), or a panic in a write (the commit thread unwinds);
//! - a simulated crash after a given number of completed operations (or at a
//!   directory fsync, [`SimDisk::crash_at_dir_sync_after`]): the in-flight
//!   writes may be partly applied, and every later operation fails without touching
//!   the file, as if the process had died. The crash is a power loss
//!   ([`SimDisk::power_loss`]) or only the process's death: [`SimDisk::restart`]
//!   starts another process on the same disk, whose cache still holds everything
//!   unsynced, for a power loss later.
//!
//! All decisions come from one seeded generator, so a failing seed replays the same
//! fault schedule (thread scheduling of the producers is not part of the seed).
//!
//! The sim reports itself as [`BackendKind::Std`], but the commit thread drives it
//! as it drives the O_DIRECT io_uring backend: each durable write submitted on its
//! own (`writes_at_reap` false, so no group written at the reap with one shared
//! fdatasync) and syncs that may overlap, each reporting its own error. The std
//! backend's grouped path and the rule that page-cache syncs never overlap (a
//! write-back error reported to one fsync only) meet the real device's faults
//! instead: the power-cut, full-disk and failing-device tests, which run per
//! backend.
//!
//! Directory entries are modelled too. [`crate::wal::Wal::open_sim`] watches the WAL
//! directory: every create, rename and remove the engine makes there (all of them
//! go through `files::tracked`) is recorded, and every directory fsync makes the
//! entries as they are durable (hard links to them are kept in a sibling directory
//! `<dir>.sim-ns`). [`SimDisk::power_loss`] then puts the directory back to its
//! last fsynced entries plus a prefix of the changes since — none, all, or any
//! number in between — as a small directory, written back as one block, survives
//! a crash. After the simulated crash the directory refuses further changes, like
//! a dead process. The directory's own entry in its parent is modelled as well: a
//! directory the watch had to create is lost whole by a power loss, at random,
//! until its parent is fsynced ([`SimDisk::watch_dir`]).
//!
//! So are the contents of the files the engine writes in the watched directory
//! outside the backend: file preparation (header and zero-fill), a recycled file's
//! new header, the seal written at open, `checkpoint.json` and `clean-close.json`
//! (all through `files::write_at` and `files::sync_file`). Their writes enter the
//! same per-sector cache as the backend's and are rolled back by a power loss
//! unless an fsync covered them; after the simulated crash they fail too. Every
//! version in the cache remembers whether the backend or such a write made it, so
//! the statistics of a power loss say whose writes it discarded.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    ffi::OsString,
    fs::{self, File, OpenOptions},
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, PoisonError, Weak},
};

use super::{Backend, BufLookup, Done, Op};
use crate::error::{Error, Result};
use crate::wal::config::BackendKind;
use crate::wal::files::MetaOp;
use crate::wal::format::{BATCH_HEADER_LEN, BATCH_MAGIC};

/// Sector size of the simulated disk: the unit of tearing.
pub const SECTOR: usize = 512;

/// One injected I/O failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A write fails with EIO; a random part of it may already sit in the cache.
    WriteEio,
    /// The fdatasync (standalone, or linked to a write) fails with EIO.
    SyncEio,
    /// A write fails with ENOSPC before any byte was written.
    WriteEnospc,
    /// A write makes partial progress, then stops (`WriteZero`).
    ShortWrite,
    /// The backend panics in a write, after part of it reached the cache, as a bug
    /// in the engine would: the commit thread unwinds.
    Panic,
}

impl Fault {
    /// The errno a caller should see (`None` for `ShortWrite`, which has no errno).
    pub fn errno(self) -> Option<i32> {
        match self {
            Fault::WriteEio | Fault::SyncEio => Some(libc::EIO),
            Fault::WriteEnospc => Some(libc::ENOSPC),
            Fault::ShortWrite | Fault::Panic => None,
        }
    }
}

/// What a run of the sim does: all of it is derived from the seed by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimPlan {
    /// Seed of every random decision.
    pub seed: u64,
    /// Simulated crash when this many operations have completed.
    pub crash_after_ops: Option<u64>,
    /// Injected failure: (n, kind): the first fitting operation after `n` completed
    /// ones fails (a sync fault waits for an operation with an fdatasync).
    pub fault: Option<(u64, Fault)>,
    /// Percent chance that a write completes in more than one piece.
    pub short_write_pct: u8,
}

impl SimPlan {
    /// A plan of no crash, no injected fault and whole writes, seeded with `seed`.
    pub fn plain(seed: u64) -> SimPlan {
        SimPlan {
            seed,
            crash_after_ops: None,
            fault: None,
            short_write_pct: 0,
        }
    }
}

/// What happened to the injected fault, for the test's assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    /// The fault.
    pub fault: Fault,
    /// No append with a sequence above this may be acknowledged after the fault:
    /// for a failed write, the sequence before its batch; for a failed standalone
    /// sync, the last sequence submitted before it, or less: the sequence before
    /// the first of those writes still in flight when the sync failed (the WAL
    /// acknowledges in order, and nothing once it failed).
    pub ack_bound: u64,
}

/// Counters of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Operations completed (including failed ones).
    pub ops: u64,
    /// Writes applied to the cache.
    pub writes: u64,
    /// Syncs that made the cache durable.
    pub syncs: u64,
    /// Sectors rewritten by the last power loss with something other than their
    /// newest version.
    pub sectors_rolled_back: u64,
    /// Whether the simulated crash happened.
    pub crashed: bool,
    /// Directory-entry changes recorded in the watched directory.
    pub meta_ops: u64,
    /// Fsyncs of the watched directory (counted in `meta_ops` too).
    pub dir_syncs: u64,
    /// Of the changes not yet fsynced at the last power loss, how many it undid.
    pub meta_ops_undone: u64,
    /// Writes applied to files the engine wrote outside the backend (counted in
    /// `writes` too).
    pub outside_writes: u64,
    /// Of `sectors_rolled_back`, those where the power loss discarded a version
    /// written outside the backend.
    pub outside_sectors_rolled_back: u64,
    /// Of `sectors_rolled_back`, those where the power loss discarded a version
    /// the backend wrote (a sector may count in both).
    pub backend_sectors_rolled_back: u64,
    /// Whether the watched directory's own entry was durable when the watch ended
    /// (see [`SimDisk::watch_dir`]).
    pub dir_entry_durable: bool,
    /// Whether the last power loss took the whole watched directory away (its entry
    /// in its parent was never fsynced).
    pub dir_vanished: bool,
}

/// splitmix64: small, fast, and good enough to drive a fault schedule (the sim
/// tests drive their producers with it too).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `p` percent.
    pub fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// The `done` of a version whose write has not completed.
const NOT_DONE: u64 = u64::MAX;

/// One unsynced content of a sector: the whole sector as a write left it.
struct Version {
    /// Submission stamp of the write that made it.
    op: u64,
    /// When that write completed: the disk's completion count just after it
    /// ([`NOT_DONE`] while it has not).
    done: u64,
    /// Made by a write outside the backend (see the module docs).
    outside: bool,
    bytes: Vec<u8>,
}

/// Unsynced history of one sector.
struct SectorHist {
    durable: Vec<u8>,
    /// In the order they were applied.
    versions: Vec<Version>,
}

struct SimFile {
    file: File,
    path: PathBuf,
    /// Unsynced sectors by index.
    dirty: BTreeMap<u64, SectorHist>,
}

struct DiskState {
    plan: SimPlan,
    rng: Rng,
    files: HashMap<(u64, u64), SimFile>,
    stats: SimStats,
    injected: Option<Injected>,
    fault_armed: Option<Fault>,
    /// Highest sequence of any write submitted so far.
    last_submitted: u64,
    /// Order of submission of writes (the backend's, and those made outside it),
    /// which tells a write's versions apart from another's.
    next_stamp: u64,
    /// Writes completed so far (a version's `done`): a sync covers the versions
    /// of writes that had completed when it was submitted.
    completions: u64,
    /// The watched directory's entries.
    ns: Option<Namespace>,
    /// The first failure to record a directory change (reported by `power_loss`).
    ns_error: Option<String>,
    /// The first fsync of the watched directory once this many operations
    /// completed crashes the disk instead.
    crash_at_dir_sync: Option<u64>,
    /// The next fsync of the watched directory fails, the disk going on
    /// ([`SimDisk::fail_next_dir_sync`]).
    fail_dir_sync: bool,
    /// How long each standalone fdatasync takes ([`SimDisk::slow_syncs`]).
    sync_latency: std::time::Duration,
    /// When each standalone fdatasync was submitted.
    sync_submits: Vec<std::time::Instant>,
}

/// The simulated disk, shared by the backends it creates and the test driving it.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    gate: Arc<SyncGate>,
}

/// Holds back operations that sync ([`SimDisk::hold_syncs`]); apart from the
/// state so that a test can open it while the commit thread waits at it.
#[derive(Default)]
struct SyncGate {
    /// (held, a thread waits at the gate)
    state: Mutex<(bool, bool)>,
    opened: Condvar,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("SimDisk")
            .field("plan", &s.plan)
            .field("stats", &s.stats)
            .finish_non_exhaustive()
    }
}

/// An OS error with `code` (kept raw so callers can see the errno). `_why` documents
/// the cause at the call site; the operation name in [`Error::Io`] says "(sim)".
fn io_err(code: i32, _why: &str) -> std::io::Error {
    std::io::Error::from_raw_os_error(code)
}

impl SimDisk {
    /// A fresh disk following `plan`.
    pub fn new(plan: SimPlan) -> Self {
        let state = DiskState {
            plan,
            rng: Rng(plan.seed ^ 0x005E_ED0F_D15C),
            files: HashMap::new(),
            stats: SimStats::default(),
            injected: None,
            fault_armed: None,
            last_submitted: 0,
            next_stamp: 0,
            completions: 0,
            ns: None,
            ns_error: None,
            crash_at_dir_sync: None,
            fail_dir_sync: false,
            sync_latency: std::time::Duration::ZERO,
            sync_submits: Vec::new(),
        };
        SimDisk {
            state: Arc::new(Mutex::new(state)),
            gate: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A backend writing through this disk.
    pub(crate) fn backend(&self) -> SimBackend {
        SimBackend {
            disk: self.clone(),
            file: None,
            queue: VecDeque::new(),
            done: Vec::new(),
        }
    }

    /// The injected fault, once it has fired.
    pub fn injected(&self) -> Option<Injected> {
        self.lock().injected
    }

    /// Counters so far (since [`SimDisk::replan`]). `dir_entry_durable` is
    /// current while the directory is watched.
    pub fn stats(&self) -> SimStats {
        let s = self.lock();
        let mut stats = s.stats;
        if let Some(ns) = &s.ns {
            stats.dir_entry_durable = ns.entry_durable;
        }
        stats
    }

    /// Whether the simulated crash has happened.
    pub fn crashed(&self) -> bool {
        self.lock().stats.crashed
    }

    /// Crashes now (if not yet crashed): every later operation fails untouched.
    pub fn crash_now(&self) {
        self.lock().stats.crashed = true;
    }

    /// Crashes the disk at the next fsync of the watched directory, before it:
    /// the process dies with the directory changes since the last one pending.
    pub fn crash_at_next_dir_sync(&self) {
        self.crash_at_dir_sync_after(0);
    }

    /// Crashes the disk at the first fsync of the watched directory once `ops`
    /// operations have completed, before that fsync (see
    /// [`SimDisk::crash_at_next_dir_sync`]). A crash point of its own beside
    /// the plan's: the plan's counts only the backend's operations, and the
    /// engine fsyncs its directory between them, so the plan alone never stops
    /// a process between a rename and the directory fsync after it.
    pub fn crash_at_dir_sync_after(&self, ops: u64) {
        self.lock().crash_at_dir_sync = Some(ops);
    }

    /// The next fsync of the watched directory fails with EIO, changing
    /// nothing, and the disk goes on (a process short of file descriptors
    /// cannot open the directory to fsync it).
    pub fn fail_next_dir_sync(&self) {
        self.lock().fail_dir_sync = true;
    }

    /// Another process starts on the disk after the crash, without a power
    /// loss: sectors keep their newest versions (the page cache outlives a
    /// process), the directory changes the dead process did not fsync stay
    /// pending for a later power loss, and operations work again (with no
    /// crash point left).
    ///
    /// Nothing unsynced becomes durable, but whatever the dead process's writes
    /// put in the cache, in-flight ones included (the crash applied a random
    /// part of each, or none), now counts as completed: its I/O ended with it,
    /// and a sync the new process submits covers the cached pages, whoever wrote
    /// them. Call only after the dead process's WAL is closed.
    pub fn restart(&self) {
        let mut s = self.lock();
        s.stats.crashed = false;
        s.plan.crash_after_ops = None;
        s.crash_at_dir_sync = None;
        s.last_submitted = 0;
        s.completions += 1;
        let now = s.completions;
        for f in s.files.values_mut() {
            for h in f.dirty.values_mut() {
                for v in &mut h.versions {
                    if v.done == NOT_DONE {
                        v.done = now;
                    }
                }
            }
        }
    }

    /// Follows `plan` from now on, as [`SimDisk::new`] would (its seed, crash
    /// point, fault and short writes), keeping the cache, the directory watch and
    /// everything unsynced: for the next process after [`SimDisk::restart`]. The
    /// counters start again from zero, the injected fault is forgotten.
    pub fn replan(&self, plan: SimPlan) {
        let mut s = self.lock();
        s.plan = plan;
        s.rng = Rng(plan.seed ^ 0x005E_ED0F_D15C);
        s.stats = SimStats::default();
        s.injected = None;
        s.fault_armed = None;
        s.crash_at_dir_sync = None;
    }

    /// From now on an operation that syncs (a standalone fdatasync or a
    /// durable write) waits before it completes until [`SimDisk::release_syncs`]:
    /// the device is slow to flush.
    pub fn hold_syncs(&self) {
        self.gate
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0 = true;
    }

    /// From now on each standalone fdatasync takes `latency` to complete (the
    /// commit thread that reaps it waits that long, as it would for a slow
    /// device): unlike [`SimDisk::hold_syncs`], the WAL keeps running.
    pub fn slow_syncs(&self, latency: std::time::Duration) {
        self.lock().sync_latency = latency;
    }

    /// When each standalone fdatasync so far was submitted.
    pub fn sync_submit_times(&self) -> Vec<std::time::Instant> {
        self.lock().sync_submits.clone()
    }

    /// Lets operations held by [`SimDisk::hold_syncs`] complete.
    pub fn release_syncs(&self) {
        let mut g = self
            .gate
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        g.0 = false;
        self.gate.opened.notify_all();
    }

    /// Whether an operation that syncs is waiting at the held gate.
    pub fn sync_held(&self) -> bool {
        self.gate
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
    }

    fn pass_sync_gate(&self) {
        let mut g = self
            .gate
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while g.0 {
            g.1 = true;
            g = self
                .gate
                .opened
                .wait(g)
                .unwrap_or_else(PoisonError::into_inner);
        }
        g.1 = false;
    }

    /// Changes to the watched directory made since its last fsync.
    pub fn pending_dir_changes(&self) -> usize {
        self.lock().ns.as_ref().map_or(0, |ns| ns.since.len())
    }

    /// Models the directory entries of `dir` from now on (see the module docs);
    /// its present entries count as durable. [`SimDisk::power_loss`] ends the watch.
    ///
    /// So does `dir`'s own entry in its parent when `dir` exists already. A `dir`
    /// this call has to create stands for one an earlier run created and died
    /// before making durable: its entry becomes durable only once its parent is
    /// fsynced (through `files::sync_dir`), and until then a power loss takes the
    /// whole directory away or leaves it, at random.
    ///
    /// # Errors
    /// I/O errors creating the directory or its shadow.
    pub fn watch_dir(&self, dir: &Path) -> Result<()> {
        let existed = dir.exists();
        fs::create_dir_all(dir).map_err(|e| Error::io("create_dir_all", dir, e))?;
        let mut ns =
            Namespace::watch(dir).map_err(|e| Error::io("sim: watch directory", dir, e))?;
        ns.entry_durable = existed;
        self.lock().ns = Some(ns);
        let mut w = WATCHED.lock().unwrap_or_else(PoisonError::into_inner);
        w.retain(|(p, d)| p != dir && d.strong_count() > 0);
        w.push((dir.to_path_buf(), Arc::downgrade(&self.state)));
        Ok(())
    }

    /// Applies the power-loss model to every file written through this disk: each
    /// unsynced sector gets its durable content or one of its unsynced versions,
    /// and the watched directory gets its fsynced entries plus a random prefix of
    /// the changes since. With `keep_cache`, every sector keeps its newest version
    /// and the directory stays as it is instead (a process crash without power
    /// loss). Ends the directory watch. Call only after the WAL using the disk is
    /// closed. Returns the number of sectors rolled back, not counting those of
    /// files the power loss leaves without a name in the watched directory (a
    /// removal made durable): nothing can read those.
    ///
    /// `keep_cache` forgets what was unsynced: to keep it at risk of a later
    /// power loss, let another process start on the disk with
    /// [`SimDisk::restart`] instead.
    ///
    /// # Errors
    /// I/O errors from rewriting sectors or entries; a directory change that could
    /// not be recorded.
    pub fn power_loss(&self, keep_cache: bool) -> Result<u64> {
        self.power_loss_keeping(keep_cache, None)
    }

    /// [`SimDisk::power_loss`], keeping exactly `meta_prefix` of the directory
    /// changes made since its last fsync (all of them when it is larger), when given.
    ///
    /// # Errors
    /// As [`SimDisk::power_loss`].
    pub fn power_loss_keeping(&self, keep_cache: bool, meta_prefix: Option<usize>) -> Result<u64> {
        let mut s = self.lock();
        let mut vanish = None;
        // The files that have a name in the watched directory after the power loss.
        let mut named: Option<HashSet<(u64, u64)>> = None;
        if let Some(ns) = s.ns.take() {
            WATCHED
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(p, _)| *p != ns.dir);
            if let Some(e) = s.ns_error.take() {
                return Err(Error::io(
                    "sim: record directory change",
                    &ns.dir,
                    std::io::Error::other(e),
                ));
            }
            if !keep_cache {
                let n = ns.since.len();
                let keep = meta_prefix.map_or_else(
                    || match s.rng.below(3) {
                        0 => 0,
                        1 => n,
                        _ => s.rng.below(n as u64 + 1) as usize,
                    },
                    |k| k.min(n),
                );
                ns.restore(keep)
                    .map_err(|e| Error::io("sim power loss: restore entries", &ns.dir, e))?;
                s.stats.meta_ops_undone = (n - keep) as u64;
                named = Some(
                    inodes_in(&ns.dir)
                        .map_err(|e| Error::io("sim power loss: list entries", &ns.dir, e))?,
                );
            }
            s.stats.dir_entry_durable = ns.entry_durable;
            if !keep_cache && !ns.entry_durable && s.rng.pct(50) {
                vanish = Some(ns.dir.clone());
            }
        }
        let DiskState {
            rng, files, stats, ..
        } = &mut *s;
        let (mut rolled, mut outside, mut backend) = (0, 0, 0);
        for (key, f) in files.iter_mut() {
            let counted = named.as_ref().is_none_or(|n| n.contains(key));
            for (idx, h) in std::mem::take(&mut f.dirty) {
                if keep_cache {
                    continue;
                }
                let n = h.versions.len() as u64;
                // Durable, newest, or any version: a third each.
                let pick = match rng.below(3) {
                    0 => 0,
                    1 => n,
                    _ => rng.below(n + 1),
                };
                if pick == n {
                    continue; // the newest version is already in the file
                }
                let bytes = if pick == 0 {
                    &h.durable
                } else {
                    &h.versions[(pick - 1) as usize].bytes
                };
                f.file
                    .write_all_at(bytes, idx * SECTOR as u64)
                    .map_err(|e| Error::io("sim power loss", &f.path, e))?;
                if !counted {
                    continue;
                }
                rolled += 1;
                // Whose writes it undid: those of the versions after the one kept.
                let undone = &h.versions[pick as usize..];
                outside += u64::from(undone.iter().any(|v| v.outside));
                backend += u64::from(undone.iter().any(|v| !v.outside));
            }
        }
        stats.sectors_rolled_back = rolled;
        stats.outside_sectors_rolled_back = outside;
        stats.backend_sectors_rolled_back = backend;
        // Last: the sectors above belong to files that then lose their names.
        if let Some(dir) = vanish {
            fs::remove_dir_all(&dir).map_err(|e| Error::io("sim power loss: remove", &dir, e))?;
            stats.dir_vanished = true;
        }
        Ok(rolled)
    }
}

impl DiskState {
    /// A new submission stamp.
    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// Applies `data` at `offset` of file `key` to the cache (and the real file),
    /// as part of the backend's write submitted with `stamp`, not completed yet
    /// ([`DiskState::complete_write`]).
    fn apply(
        &mut self,
        key: (u64, u64),
        stamp: u64,
        offset: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        self.apply_version(key, stamp, false, offset, data)
    }

    /// [`DiskState::apply`], for a write of the backend (`outside` false) or one
    /// made outside it.
    fn apply_version(
        &mut self,
        key: (u64, u64),
        stamp: u64,
        outside: bool,
        offset: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        let Some(f) = self.files.get_mut(&key) else {
            return Ok(());
        };
        debug_assert_eq!(offset % SECTOR as u64, 0);
        for (i, chunk) in data.chunks(SECTOR).enumerate() {
            let at = offset + (i * SECTOR) as u64;
            let idx = at / SECTOR as u64;
            if !f.dirty.contains_key(&idx) {
                // Files are preallocated, so the sector exists; past the end reads as zero.
                let mut durable = vec![0u8; SECTOR];
                read_at_most(&f.file, &mut durable, at)?;
                f.dirty.insert(
                    idx,
                    SectorHist {
                        durable,
                        versions: Vec::new(),
                    },
                );
            }
            let h = f.dirty.get_mut(&idx).expect("inserted above");
            let mut bytes = h.versions.last().map_or(&h.durable, |v| &v.bytes).clone();
            bytes[..chunk.len()].copy_from_slice(chunk);
            h.versions.push(Version {
                op: stamp,
                done: NOT_DONE,
                outside,
                bytes,
            });
            f.file.write_all_at(chunk, at)?;
        }
        self.stats.writes += 1;
        Ok(())
    }

    /// The write submitted with `stamp`, over `offset..offset + len` of file
    /// `key`, completed: a sync submitted from now on covers its versions.
    fn complete_write(&mut self, key: (u64, u64), stamp: u64, offset: u64, len: usize) {
        self.completions += 1;
        let done = self.completions;
        if let Some(f) = self.files.get_mut(&key) {
            let first = offset / SECTOR as u64;
            let end = (offset + len as u64).div_ceil(SECTOR as u64);
            for (_, h) in f.dirty.range_mut(first..end) {
                for v in h.versions.iter_mut().filter(|v| v.op == stamp) {
                    v.done = done;
                }
            }
        }
    }

    /// Applies a random subset of the sectors of `data` (an interrupted write).
    fn apply_some(
        &mut self,
        key: (u64, u64),
        stamp: u64,
        offset: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        let sectors = data.len().div_ceil(SECTOR);
        for i in 0..sectors {
            if self.rng.pct(50) {
                let end = ((i + 1) * SECTOR).min(data.len());
                self.apply(
                    key,
                    stamp,
                    offset + (i * SECTOR) as u64,
                    &data[i * SECTOR..end],
                )?;
            }
        }
        Ok(())
    }

    /// A durable write: only the sectors of `offset..offset + len` become durable.
    fn sync_range(&mut self, key: (u64, u64), offset: u64, len: usize) {
        if let Some(f) = self.files.get_mut(&key) {
            let first = offset / SECTOR as u64;
            let end = (offset + len as u64).div_ceil(SECTOR as u64);
            let doomed: Vec<u64> = f.dirty.range(first..end).map(|(k, _)| *k).collect();
            for k in doomed {
                f.dirty.remove(&k);
            }
        }
        self.stats.syncs += 1;
    }

    /// A completed fdatasync of file `key`, submitted when `covers` writes had
    /// completed: each sector becomes durable as the last of those writes left
    /// it (with whatever earlier versions that content holds); the versions
    /// after it stay unsynced, those of writes that completed later or not at all.
    fn sync(&mut self, key: (u64, u64), covers: u64) {
        if let Some(f) = self.files.get_mut(&key) {
            f.dirty.retain(|_, h| {
                if let Some(last) = h.versions.iter().rposition(|v| v.done <= covers) {
                    let rest = h.versions.split_off(last + 1);
                    h.durable = h.versions.pop().expect("rposition found it").bytes;
                    h.versions = rest;
                }
                !h.versions.is_empty()
            });
        }
        self.stats.syncs += 1;
    }

    /// Counts a completed operation; returns whether the crash point was reached.
    fn tick(&mut self) -> bool {
        self.stats.ops += 1;
        if self
            .plan
            .crash_after_ops
            .is_some_and(|n| self.stats.ops > n)
        {
            self.stats.crashed = true;
        }
        self.stats.crashed
    }

    /// Whether the injected fault fires for this operation (`has_sync`: it syncs).
    fn take_fault(&mut self, has_write: bool, has_sync: bool) -> Option<Fault> {
        if self.injected.is_some() {
            return None;
        }
        if self.fault_armed.is_none() {
            if let Some((at, f)) = self.plan.fault {
                if self.stats.ops > at {
                    self.fault_armed = Some(f);
                }
            }
        }
        let f = self.fault_armed?;
        let fits = match f {
            Fault::SyncEio => has_sync,
            Fault::WriteEio | Fault::WriteEnospc | Fault::ShortWrite | Fault::Panic => has_write,
        };
        fits.then_some(f)
    }
}

/// Watched directories and the disks modelling them.
static WATCHED: Mutex<Vec<(PathBuf, Weak<Mutex<DiskState>>)>> = Mutex::new(Vec::new());

/// Runs `f` with the state of the disk watching `dir`, locked, or with `None` when
/// no disk watches it (or `dir` is `None`). After that disk's simulated crash it
/// fails with EIO instead: a dead process changes nothing. Every operation the model tracks outside the backend (directory
/// changes, file writes and syncs) goes through here.
fn with_watcher<T>(
    dir: Option<&Path>,
    f: impl FnOnce(Option<&mut DiskState>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let disk = dir.and_then(|dir| {
        let w = WATCHED.lock().unwrap_or_else(PoisonError::into_inner);
        w.iter()
            .find(|(p, _)| p == dir)
            .and_then(|(_, d)| d.upgrade())
    });
    let Some(disk) = disk else {
        return f(None);
    };
    let mut st = disk.lock().unwrap_or_else(PoisonError::into_inner);
    if st.ns.is_none() {
        drop(st);
        return f(None);
    }
    if st.stats.crashed {
        return Err(io_err(libc::EIO, "I/O after the simulated crash"));
    }
    f(Some(&mut st))
}

/// Makes the directory change `op` with `f` and records it, when a disk watches
/// the directory; refuses it after that disk's simulated crash. The disk stays
/// locked from the check to the record, so changes by concurrent threads (the
/// preparer, a checkpoint, the commit thread) are recorded in the order they
/// were made and a directory fsync sees none of them half done.
pub(crate) fn meta_tracked<T>(
    op: MetaOp<'_>,
    f: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let dir = match op {
        MetaOp::SyncDir(d) => Some(d),
        MetaOp::Create(p) | MetaOp::Rename(p, _) | MetaOp::Remove(p) => p.parent(),
    };
    let out = with_watcher(dir, |mut st| {
        if let Some(st) = st
            .as_mut()
            .filter(|st| st.fail_dir_sync && matches!(op, MetaOp::SyncDir(_)))
        {
            st.fail_dir_sync = false;
            return Err(io_err(libc::EIO, "injected directory fsync failure"));
        }
        if let Some(st) = st
            .as_mut()
            .filter(|st| st.crash_at_dir_sync.is_some_and(|n| st.stats.ops >= n))
        {
            if matches!(op, MetaOp::SyncDir(_)) {
                st.crash_at_dir_sync = None;
                st.stats.crashed = true;
                return Err(io_err(libc::EIO, "killed before the directory fsync"));
            }
        }
        let out = f()?;
        if let Some(st) = st {
            st.stats.meta_ops += 1;
            if matches!(op, MetaOp::SyncDir(_)) {
                st.stats.dir_syncs += 1;
            }
            if let Err(e) = st.ns.as_mut().expect("watched").record(op) {
                st.ns_error.get_or_insert_with(|| format!("{op:?}: {e}"));
            }
        }
        Ok(out)
    })?;
    if let MetaOp::SyncDir(d) = op {
        parent_synced(d);
    }
    Ok(out)
}

/// `parent` was fsynced: the entry of every watched directory in it is durable,
/// unless that directory's disk already crashed (a dead process syncs nothing).
fn parent_synced(parent: &Path) {
    let disks: Vec<_> = {
        let w = WATCHED.lock().unwrap_or_else(PoisonError::into_inner);
        w.iter()
            .filter(|(p, _)| crate::wal::files::parent_dir(p) == Some(parent))
            .filter_map(|(_, d)| d.upgrade())
            .collect()
    };
    for disk in disks {
        let mut st = disk.lock().unwrap_or_else(PoisonError::into_inner);
        if st.stats.crashed {
            continue;
        }
        if let Some(ns) = st.ns.as_mut() {
            ns.entry_durable = true;
        }
    }
}

/// The model's key for `f`, registering it on first sight.
fn register(st: &mut DiskState, f: &File, path: &Path) -> std::io::Result<(u64, u64)> {
    let md = f.metadata()?;
    let key = (md.dev(), md.ino());
    if let std::collections::hash_map::Entry::Vacant(slot) = st.files.entry(key) {
        // The model reads sectors back (their durable content) and rewrites them at
        // a power loss: it needs a handle that can do both, to the same file.
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let md = file.metadata()?;
        if (md.dev(), md.ino()) != key {
            return Err(std::io::Error::other(format!(
                "sim: {} is no longer the file being written",
                path.display()
            )));
        }
        slot.insert(SimFile {
            file,
            path: path.to_path_buf(),
            dirty: BTreeMap::new(),
        });
    }
    Ok(key)
}

/// `files::write_at` under the simulated disk: a write to a file of a watched
/// directory enters the disk's cache (and the real file) sector by sector, as the
/// backend's writes do; elsewhere it is a plain positioned write. `offset` must be
/// sector-aligned.
pub(crate) fn content_write(
    f: &File,
    path: &Path,
    offset: u64,
    data: &[u8],
) -> std::io::Result<()> {
    with_watcher(path.parent(), |st| {
        let Some(st) = st else {
            return f.write_all_at(data, offset);
        };
        if !offset.is_multiple_of(SECTOR as u64) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("sim: write at {offset} is not sector-aligned"),
            ));
        }
        let key = register(st, f, path)?;
        let stamp = st.stamp();
        st.apply_version(key, stamp, true, offset, data)?;
        // Synchronous: complete as it returns.
        st.complete_write(key, stamp, offset, data.len());
        st.stats.outside_writes += 1;
        Ok(())
    })
}

/// `files::sync_file` under the simulated disk: the real `sync`, after which the
/// file's cached sectors are durable.
pub(crate) fn content_sync(
    f: &File,
    path: &Path,
    sync: impl FnOnce(&File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    with_watcher(path.parent(), |st| {
        sync(f)?;
        if let Some(st) = st {
            let key = register(st, f, path)?;
            // A synchronous fsync: it covers every write completed so far (the
            // writes made outside the backend all are; a write of the backend
            // still in flight is not).
            let covers = st.completions;
            st.sync(key, covers);
        }
        Ok(())
    })
}

/// Left alone by the model: the directory lock is not part of the WAL's state.
const UNTRACKED: &str = "LOCK";

/// One change to a directory entry since the last directory fsync.
enum NsOp {
    /// A file was created at `name`; its inode is linked in the shadow as `op-<id>`.
    Link {
        name: OsString,
        id: u64,
    },
    Rename {
        from: OsString,
        to: OsString,
    },
    Remove {
        name: OsString,
    },
}

/// The model of one watched directory's entries.
struct Namespace {
    dir: PathBuf,
    /// Sibling directory holding hard links to every inode the model may restore.
    shadow: PathBuf,
    /// Entry names durable as of the last directory fsync (`snap-<name>` in the shadow).
    durable: Vec<OsString>,
    /// Changes since, in order.
    since: Vec<NsOp>,
    next_id: u64,
    /// Whether the directory's own entry in its parent is durable.
    entry_durable: bool,
}

fn name_of(p: &Path) -> OsString {
    p.file_name().unwrap_or_default().to_os_string()
}

fn snap_name(name: &OsString) -> OsString {
    let mut s = OsString::from("snap-");
    s.push(name);
    s
}

fn remove_if_exists(p: &Path) -> std::io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Namespace {
    fn watch(dir: &Path) -> std::io::Result<Self> {
        let mut name = name_of(dir);
        name.push(".sim-ns");
        let shadow = dir.with_file_name(name);
        if shadow.exists() {
            fs::remove_dir_all(&shadow)?;
        }
        fs::create_dir_all(&shadow)?;
        let mut ns = Namespace {
            dir: dir.to_path_buf(),
            shadow,
            durable: Vec::new(),
            since: Vec::new(),
            next_id: 0,
            entry_durable: true,
        };
        ns.snapshot()?;
        Ok(ns)
    }

    /// The directory was fsynced: its entries as they are now are durable.
    fn snapshot(&mut self) -> std::io::Result<()> {
        for e in fs::read_dir(&self.shadow)? {
            fs::remove_file(e?.path())?;
        }
        self.durable.clear();
        self.since.clear();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            if !e.file_type()?.is_file() || e.file_name() == UNTRACKED {
                continue;
            }
            fs::hard_link(e.path(), self.shadow.join(snap_name(&e.file_name())))?;
            self.durable.push(e.file_name());
        }
        Ok(())
    }

    fn record(&mut self, op: MetaOp<'_>) -> std::io::Result<()> {
        match op {
            MetaOp::SyncDir(_) => self.snapshot()?,
            MetaOp::Create(p) => {
                let id = self.next_id;
                self.next_id += 1;
                fs::hard_link(p, self.shadow.join(format!("op-{id}")))?;
                self.since.push(NsOp::Link {
                    name: name_of(p),
                    id,
                });
            }
            MetaOp::Rename(a, b) => self.since.push(NsOp::Rename {
                from: name_of(a),
                to: name_of(b),
            }),
            MetaOp::Remove(p) => self.since.push(NsOp::Remove { name: name_of(p) }),
        }
        Ok(())
    }

    /// Puts the directory back to its durable entries plus the first `keep` changes.
    fn restore(&self, keep: usize) -> std::io::Result<()> {
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            if e.file_type()?.is_file() && e.file_name() != UNTRACKED {
                fs::remove_file(e.path())?;
            }
        }
        for n in &self.durable {
            fs::hard_link(self.shadow.join(snap_name(n)), self.dir.join(n))?;
        }
        for op in &self.since[..keep] {
            match op {
                NsOp::Link { name, id } => {
                    let to = self.dir.join(name);
                    remove_if_exists(&to)?;
                    fs::hard_link(self.shadow.join(format!("op-{id}")), to)?;
                }
                NsOp::Rename { from, to } => {
                    let from = self.dir.join(from);
                    if from.exists() {
                        fs::rename(from, self.dir.join(to))?;
                    }
                }
                NsOp::Remove { name } => remove_if_exists(&self.dir.join(name))?,
            }
        }
        Ok(())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.shadow);
    }
}

/// (device, inode) of every file in `dir`.
fn inodes_in(dir: &Path) -> std::io::Result<HashSet<(u64, u64)>> {
    let mut out = HashSet::new();
    for e in fs::read_dir(dir)? {
        let md = e?.metadata()?;
        if md.is_file() {
            out.insert((md.dev(), md.ino()));
        }
    }
    Ok(out)
}

fn read_at_most(f: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Sequences of the batch whose header starts `data`: (first, last); (first, first-1)
/// for a seal. Zero when the bytes do not hold a batch header. The writes come from
/// the commit thread, so the header is read without checking its checksum (which
/// needs the file's key).
fn batch_sequences(data: &[u8]) -> (u64, u64) {
    let Some(h) = data.get(..BATCH_HEADER_LEN) else {
        return (0, 0);
    };
    let field = |at: usize, len: usize| {
        let mut v = [0u8; 8];
        v[..len].copy_from_slice(&h[at..at + len]);
        u64::from_le_bytes(v)
    };
    if h[..4] != BATCH_MAGIC.to_le_bytes() {
        return (0, 0);
    }
    let (first, count) = (field(16, 8), field(24, 4));
    match h[4] {
        1 if first > 0 && count > 0 => (first, first + count - 1),
        2 if first > 0 => (first, first - 1),
        _ => (0, 0),
    }
}

enum Queued {
    Write {
        token: u64,
        key: (u64, u64),
        stamp: u64,
        data: Vec<u8>,
        offset: u64,
        done_len: usize,
        sync: bool,
        first: u64,
    },
    Sync {
        token: u64,
        key: (u64, u64),
        /// Writes completed when it was submitted: what it covers.
        covers: u64,
        /// Highest sequence of any write submitted before it.
        last_before: u64,
    },
}

impl Queued {
    fn token(&self) -> u64 {
        match self {
            Queued::Write { token, .. } | Queued::Sync { token, .. } => *token,
        }
    }
}

pub(crate) struct SimBackend {
    disk: SimDisk,
    file: Option<((u64, u64), PathBuf)>,
    queue: VecDeque<Queued>,
    done: Vec<Done>,
}

impl SimBackend {
    /// Completes the queued operation at `i`.
    fn complete(&mut self, i: usize, st: &mut DiskState) {
        let path = self
            .file
            .as_ref()
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        let crashed_before = st.stats.crashed;
        if crashed_before || st.tick() {
            // Power is gone: this and every queued write may have partly reached the
            // cache; none of them completes.
            if !crashed_before {
                for q in &self.queue {
                    if let Queued::Write {
                        key,
                        stamp,
                        data,
                        offset,
                        done_len,
                        ..
                    } = q
                    {
                        let _ = st.apply_some(
                            *key,
                            *stamp,
                            offset + *done_len as u64,
                            &data[*done_len..],
                        );
                    }
                }
            }
            for q in self.queue.drain(..) {
                let e = io_err(libc::EIO, "simulated crash");
                self.done.push(Done {
                    token: q.token(),
                    result: Err(Error::io("sim", &path, e)),
                });
            }
            return;
        }
        let Some(q) = self.queue.remove(i) else {
            return;
        };
        match q {
            Queued::Write {
                token,
                key,
                stamp,
                data,
                offset,
                done_len,
                sync,
                first,
            } => {
                let rest = &data[done_len..];
                let at = offset + done_len as u64;
                let fault = st.take_fault(true, sync);
                let bound = || first.saturating_sub(1);
                let result = match fault {
                    Some(Fault::WriteEio) => {
                        let _ = st.apply_some(key, stamp, at, rest);
                        st.injected = Some(Injected {
                            fault: Fault::WriteEio,
                            ack_bound: bound(),
                        });
                        Err(Error::io(
                            "pwrite (sim)",
                            &path,
                            io_err(libc::EIO, "injected"),
                        ))
                    }
                    Some(Fault::WriteEnospc) => {
                        st.injected = Some(Injected {
                            fault: Fault::WriteEnospc,
                            ack_bound: bound(),
                        });
                        Err(Error::io(
                            "pwrite (sim)",
                            &path,
                            io_err(libc::ENOSPC, "injected"),
                        ))
                    }
                    Some(Fault::ShortWrite) => {
                        let sectors = rest.len().div_ceil(SECTOR) as u64;
                        let n = (st.rng.below(sectors) as usize * SECTOR).min(rest.len());
                        let _ = st.apply(key, stamp, at, &rest[..n]);
                        st.injected = Some(Injected {
                            fault: Fault::ShortWrite,
                            ack_bound: bound(),
                        });
                        let e = std::io::Error::new(
                            std::io::ErrorKind::WriteZero,
                            "short write made no further progress (injected)",
                        );
                        Err(Error::io("pwrite (sim)", &path, e))
                    }
                    Some(Fault::Panic) => {
                        let _ = st.apply_some(key, stamp, at, rest);
                        st.injected = Some(Injected {
                            fault: Fault::Panic,
                            ack_bound: bound(),
                        });
                        // The disk's lock is poisoned by this; it is taken ignoring that.
                        panic!("injected panic in a write to {}", path.display());
                    }
                    Some(Fault::SyncEio) => match st.apply(key, stamp, at, rest) {
                        Ok(()) => {
                            // The write completed; its fdatasync failed.
                            st.complete_write(key, stamp, offset, data.len());
                            st.injected = Some(Injected {
                                fault: Fault::SyncEio,
                                ack_bound: bound(),
                            });
                            Err(Error::io(
                                "fdatasync (sim)",
                                &path,
                                io_err(libc::EIO, "injected"),
                            ))
                        }
                        Err(e) => Err(Error::io("pwrite (sim)", &path, e)),
                    },
                    None => {
                        // Sometimes only part of the write completes now; the rest
                        // stays queued, as a backend resubmits a short write.
                        let sectors = rest.len().div_ceil(SECTOR) as u64;
                        let plan_pct = st.plan.short_write_pct;
                        if sectors > 1 && st.rng.pct(u64::from(plan_pct)) {
                            let n = (1 + st.rng.below(sectors - 1)) as usize * SECTOR;
                            if let Err(e) = st.apply(key, stamp, at, &rest[..n]) {
                                self.done.push(Done {
                                    token,
                                    result: Err(Error::io("pwrite (sim)", &path, e)),
                                });
                                return;
                            }
                            // The remaining piece is a new operation for the crash counter.
                            self.queue.insert(
                                i,
                                Queued::Write {
                                    token,
                                    key,
                                    stamp,
                                    data,
                                    offset,
                                    done_len: done_len + n,
                                    sync,
                                    first,
                                },
                            );
                            return;
                        }
                        match st.apply(key, stamp, at, rest) {
                            Ok(()) => {
                                st.complete_write(key, stamp, offset, data.len());
                                if sync {
                                    st.sync_range(key, offset, data.len());
                                }
                                Ok(())
                            }
                            Err(e) => Err(Error::io("pwrite (sim)", &path, e)),
                        }
                    }
                };
                self.done.push(Done { token, result });
            }
            Queued::Sync {
                token,
                key,
                covers,
                last_before,
            } => {
                let result = match st.take_fault(false, true) {
                    Some(f) => {
                        // Writes submitted before the sync and still in flight are
                        // never acknowledged: the WAL fails at this result, and it
                        // acknowledges in sequence order.
                        let in_flight = self
                            .queue
                            .iter()
                            .filter_map(|q| match q {
                                Queued::Write { first, .. }
                                    if *first > 0 && *first <= last_before =>
                                {
                                    Some(first - 1)
                                }
                                _ => None,
                            })
                            .min();
                        st.injected = Some(Injected {
                            fault: f,
                            ack_bound: in_flight.map_or(last_before, |b| b.min(last_before)),
                        });
                        Err(Error::io(
                            "fdatasync (sim)",
                            &path,
                            io_err(libc::EIO, "injected"),
                        ))
                    }
                    None => {
                        if !st.sync_latency.is_zero() {
                            std::thread::sleep(st.sync_latency);
                        }
                        st.sync(key, covers);
                        Ok(())
                    }
                };
                self.done.push(Done { token, result });
            }
        }
    }
}

impl Backend for SimBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Std
    }

    fn syncs_the_real_file(&self) -> bool {
        false
    }

    fn open(&mut self, path: &Path) -> Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        let md = f.metadata().map_err(|e| Error::io("stat", path, e))?;
        let key = (md.dev(), md.ino());
        self.disk
            .lock()
            .files
            .entry(key)
            .or_insert_with(|| SimFile {
                file: f,
                path: path.to_path_buf(),
                dirty: BTreeMap::new(),
            });
        self.file = Some((key, path.to_path_buf()));
        Ok(())
    }

    fn renamed(&mut self, path: &Path) {
        if let Some((_, p)) = &mut self.file {
            *p = path.to_path_buf();
        }
    }

    fn submit(&mut self, token: u64, op: Op<'_>) -> Result<()> {
        let (key, _) = self.file.clone().ok_or(Error::Closed)?;
        let mut st = self.disk.lock();
        match op {
            Op::Write {
                buf,
                len,
                offset,
                sync,
            } => {
                let data = buf.as_slice()[..len].to_vec();
                let (first, last) = batch_sequences(&data);
                st.last_submitted = st.last_submitted.max(last);
                let stamp = st.stamp();
                self.queue.push_back(Queued::Write {
                    token,
                    key,
                    stamp,
                    data,
                    offset,
                    done_len: 0,
                    sync,
                    first,
                });
            }
            Op::Sync => {
                st.sync_submits.push(std::time::Instant::now());
                let last_before = st.last_submitted;
                let covers = st.completions;
                self.queue.push_back(Queued::Sync {
                    token,
                    key,
                    covers,
                    last_before,
                });
            }
        }
        Ok(())
    }

    fn reap(&mut self, wait: bool, out: &mut Vec<Done>, _bufs: BufLookup<'_>) -> Result<()> {
        let disk = self.disk.clone();
        if self
            .queue
            .iter()
            .any(|q| matches!(q, Queued::Sync { .. } | Queued::Write { sync: true, .. }))
        {
            disk.pass_sync_gate();
        }
        let mut st = disk.lock();
        // Any queued operation may complete next, a sync before the writes
        // submitted ahead of it included: nothing drains the queue for it.
        while !self.queue.is_empty() {
            let pick = st.rng.below(self.queue.len() as u64) as usize;
            self.complete(pick, &mut st);
            // Keep going while the coin says so, or until something finished when waiting.
            let need_more = wait && self.done.is_empty();
            if !need_more && !st.rng.pct(50) {
                break;
            }
        }
        out.append(&mut self.done);
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.queue.len() + self.done.len()
    }

    /// Its durable writes have the `RWF_DSYNC` contract (module docs): each makes
    /// its own sectors durable and reports its own errors.
    fn syncs_may_overlap(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::buffer::AlignedBuf;

    /// A standalone sync covers the writes that had completed when it was
    /// submitted: not one still in flight then, though submitted before it, and
    /// not one submitted after it, even when that one completes first. It does
    /// not wait for the earlier write: it may complete before it.
    #[test]
    fn a_sync_covers_only_writes_completed_before_it() {
        let (mut sync_before_earlier, mut later_before_sync, mut earlier_before_sync) = (0, 0, 0);
        for seed in 0..64 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            std::fs::write(&path, vec![0u8; 3 * 4096]).unwrap();
            let disk = SimDisk::new(SimPlan::plain(seed));
            let mut b = disk.backend();
            b.open(&path).unwrap();
            let buf = |byte: u8| {
                let mut b = AlignedBuf::new(4096);
                b.as_mut_slice().fill(byte);
                b
            };
            let (done, earlier, later) = (buf(1), buf(2), buf(3));
            let write = |buf, offset| Op::Write {
                buf,
                len: 4096,
                offset,
                sync: false,
            };
            let mut order = Vec::new();
            let reap_until = |b: &mut SimBackend, n: usize, order: &mut Vec<u64>| {
                while order.len() < n {
                    let mut done = Vec::new();
                    b.reap(true, &mut done, &|_| None).unwrap();
                    assert!(done.iter().all(|d| d.result.is_ok()));
                    order.extend(done.iter().map(|d| d.token));
                }
            };
            b.submit(1, write(&done, 0)).unwrap();
            reap_until(&mut b, 1, &mut order);
            b.submit(2, write(&earlier, 4096)).unwrap();
            b.submit(3, Op::Sync).unwrap();
            b.submit(4, write(&later, 2 * 4096)).unwrap();
            reap_until(&mut b, 4, &mut order);
            let at = |t: u64| order.iter().position(|&x| x == t).unwrap();
            sync_before_earlier += u32::from(at(3) < at(2));
            earlier_before_sync += u32::from(at(2) < at(3));
            later_before_sync += u32::from(at(4) < at(3));
            let st = disk.lock();
            let f = st.files.values().next().unwrap();
            let dirty: Vec<u64> = f.dirty.keys().copied().collect();
            assert_eq!(
                dirty,
                (8..24).collect::<Vec<u64>>(),
                "seed {seed}, completion order {order:?}: the writes in flight when the sync was submitted stay unsynced"
            );
        }
        assert!(
            sync_before_earlier > 0,
            "no seed completed the sync before a write submitted ahead of it"
        );
        assert!(
            earlier_before_sync > 0,
            "no seed completed the earlier write before the sync"
        );
        assert!(
            later_before_sync > 0,
            "no seed completed the later write before the sync"
        );
    }

    /// A sync that fails while a write submitted before it is still in flight
    /// bounds the acknowledgements by that write: the WAL fails at the sync's
    /// result and never acknowledges the write.
    #[test]
    fn a_failed_sync_bounds_acknowledgements_by_the_writes_still_in_flight() {
        use crate::wal::format::{encode_batch_header, BatchHeader, BatchKind, BLOCK_SIZE};
        let batch = |first: u64, count: u32| {
            let mut buf = AlignedBuf::new(BLOCK_SIZE);
            let h = BatchHeader {
                kind: BatchKind::Entries,
                file_number: 1,
                first_sequence: first,
                entry_count: count,
                payload_len: 0,
                synced_through: 0,
                entries_crc: Some(0),
            };
            encode_batch_header(&mut buf.as_mut_slice()[..BATCH_HEADER_LEN], &h, 0);
            buf
        };
        let (mut bounded, mut unbounded) = (0, 0);
        for seed in 0..64 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            std::fs::write(&path, vec![0u8; 2 * BLOCK_SIZE]).unwrap();
            let disk = SimDisk::new(SimPlan {
                fault: Some((0, Fault::SyncEio)),
                ..SimPlan::plain(seed)
            });
            let mut b = disk.backend();
            b.open(&path).unwrap();
            let (w1, w2) = (batch(1, 3), batch(4, 2));
            let write = |buf, offset| Op::Write {
                buf,
                len: BLOCK_SIZE,
                offset,
                sync: false,
            };
            b.submit(1, write(&w1, 0)).unwrap();
            b.submit(2, Op::Sync).unwrap();
            b.submit(3, write(&w2, BLOCK_SIZE as u64)).unwrap();
            let mut order = Vec::new();
            while order.len() < 3 {
                let mut done = Vec::new();
                b.reap(true, &mut done, &|_| None).unwrap();
                order.extend(done.iter().map(|d| d.token));
            }
            let inj = disk.injected().expect("the sync failed");
            assert_eq!(inj.fault, Fault::SyncEio);
            let w1_first = order.iter().position(|&t| t == 1) < order.iter().position(|&t| t == 2);
            let want = if w1_first { 3 } else { 0 };
            assert_eq!(
                inj.ack_bound, want,
                "seed {seed}, completion order {order:?}"
            );
            if w1_first {
                unbounded += 1;
            } else {
                bounded += 1;
            }
        }
        assert!(bounded > 0 && unbounded > 0, "{bounded} {unbounded}");
    }
    /// A power loss counts a rolled-back sector by whose writes it undid: the
    /// backend's, those made outside it, or both, whichever wrote the file first.
    #[test]
    fn a_rollback_counts_by_the_writes_it_undid() {
        let (mut backend_seen, mut both_seen) = (0, 0);
        for seed in 0..32 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            std::fs::write(&path, vec![0u8; 2 * 4096]).unwrap();
            let disk = SimDisk::new(SimPlan::plain(seed));
            disk.watch_dir(dir.path()).unwrap();
            // Prepared outside the backend (ones), then half of it rewritten by
            // the backend (twos): sectors 0..8 hold both, 8..16 ones only.
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            crate::wal::files::write_at(&f, &path, 0, &[1u8; 2 * 4096]).unwrap();
            let mut b = disk.backend();
            b.open(&path).unwrap();
            let mut buf = AlignedBuf::new(4096);
            buf.as_mut_slice().fill(2);
            let op = Op::Write {
                buf: &buf,
                len: 4096,
                offset: 0,
                sync: false,
            };
            b.submit(1, op).unwrap();
            let mut done = Vec::new();
            while done.is_empty() {
                b.reap(true, &mut done, &|_| None).unwrap();
            }
            drop(b);
            disk.power_loss(false).unwrap();
            let got = std::fs::read(&path).unwrap();
            let sector = |i: usize| got[i * SECTOR];
            let (mut backend, mut outside) = (0, 0);
            for i in 0..16 {
                let newest = if i < 8 { 2 } else { 1 };
                backend += u64::from(i < 8 && sector(i) != newest);
                outside += u64::from(sector(i) == 0);
            }
            let st = disk.stats();
            assert_eq!(st.backend_sectors_rolled_back, backend, "seed {seed}");
            assert_eq!(st.outside_sectors_rolled_back, outside, "seed {seed}");
            backend_seen += backend;
            both_seen += (0..8).filter(|&i| sector(i) == 0).count();
        }
        assert!(
            backend_seen > 0 && both_seen > 0,
            "{backend_seen} {both_seen}"
        );
    }
}
