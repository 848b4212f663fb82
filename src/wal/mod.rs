//! The group-commit write-ahead log.
//!
//! ```no_run
//! use bytes::Bytes;
//! use streamline::wal::{SyncMode, Wal, WalConfig};
//!
//! # fn main() -> streamline::Result<()> {
//! let config = WalConfig { sync_mode: SyncMode::EveryWrite, ..WalConfig::default() };
//! let (wal, recovery) = Wal::open("data/wal", config)?;
//! for entry in recovery {
//!     let entry = entry?; // entries after the checkpoint, in order
//!     println!("replay {} {}/{}", entry.sequence, entry.topic, entry.partition);
//! }
//! let seq = wal.append("orders", 0, Bytes::from_static(b"hello")).wait()?; // durable now
//! wal.checkpoint(seq)?; // everything up to seq is applied elsewhere
//! wal.close()?;
//! # Ok(()) }
//! ```
//!
//! Producers on any thread call [`Wal::append`]; one commit thread turns everything
//! pending into one aligned write (plus one `fdatasync` in `every_write` mode) and
//! acknowledges every producer of the batch together, in sequence order.

mod backend;
pub(crate) mod buffer;
pub mod checkpoint;
pub mod clean_close;
mod commit;
mod completion;
mod config;
pub mod files;
pub mod format;
pub(crate) mod journal;
pub mod recovery;
pub(crate) mod thread_cpu;

/// The simulated disk for crash tests (feature `sim`): see [`Wal::open_sim`].
#[cfg(all(unix, any(test, feature = "sim")))]
pub use backend::sim;

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc, Mutex, PoisonError},
    thread::JoinHandle,
};

use bytes::Bytes;
use crossbeam_channel::Sender;

pub use commit::NewEntry;
pub use completion::Completion;
pub use config::{BackendKind, RecoveryMode, ShortageHook, SyncMode, WalConfig};
pub use format::{WalEntry, WalEntryType};
pub use recovery::{DirScan, EntryIter, FileInfo, Tail, WalReader};

use crate::error::{Error, Result};
use commit::{ActiveFile, Archived, Committer, Completer, Core, Entries, Request};
use format::{BatchHeader, BatchKind, FileId, BATCH_HEADER_LEN, BLOCK_SIZE};

/// A snapshot of the WAL's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WalStats {
    /// Entries written.
    pub entries: u64,
    /// Batches written (one write each).
    pub batches: u64,
    /// fdatasyncs issued (linked, standalone, rotation and close).
    pub fsyncs: u64,
    /// Bytes written to WAL files, padding included.
    pub bytes_written: u64,
    /// File rotations.
    pub rotations: u64,
    /// Largest number of entries in one batch.
    pub max_batch_entries: u64,
    /// `every_write` batches submitted beside an earlier durable write still in
    /// flight because their cohort of producers had gathered (not because they
    /// were full); see `docs/engine.md`.
    pub early_batches: u64,
    /// `every_write` batches written as part of a group at the commit thread's
    /// next wait, one `pwritev` and one fdatasync for the group: every one with
    /// the `std` backend, with `uring` those written while its group writes are
    /// on (`WalConfig::uring_group_writes`).
    pub grouped_batches: u64,
    /// Batches written where the active file had never been written: space only
    /// reserved (a file prepared after large `O_DIRECT` writes, the part of a
    /// file its background zero-fill had not reached, or the end of a recycled
    /// file that its earlier use left unwritten). A sync covering such a batch
    /// also journals the extent conversion (`docs/format.md`, "Preallocation").
    pub unwritten_batches: u64,
    /// The most fdatasyncs in flight at once: durable writes submitted to the
    /// `uring` backend (each its own sync), a group's shared one, the standalone
    /// one. With page-cache files (`direct_io` off) at most 1, since Linux reports
    /// a failed writeback to one fsync of a file only (`docs/engine.md`).
    pub max_syncs_in_flight: u64,
    /// Bytes accepted but not yet acknowledged. An append's bytes leave this count
    /// before its completion resolves, so once every append made has resolved, it
    /// reads 0.
    pub pending_bytes: u64,
}

struct Handle {
    core: Arc<Core>,
    tx: Sender<Request>,
    thread: Mutex<Option<JoinHandle<()>>>,
    backend: BackendKind,
    direct_io: bool,
    /// The directory lock; released as soon as the WAL is closed, even while other
    /// handles still exist, so the directory can be reopened.
    lock: Mutex<Option<files::DirLock>>,
    /// Closes begun through any handle (tests: a close waiting for another).
    #[cfg(any(test, feature = "sim"))]
    closes_begun: std::sync::atomic::AtomicUsize,
}

impl Handle {
    fn shutdown(&self) -> Result<u64> {
        #[cfg(any(test, feature = "sim"))]
        self.closes_begun.fetch_add(1, Ordering::SeqCst);
        // Held to the end: a close from another clone meanwhile waits, and then
        // sees this one's outcome (a failed final sync is latched) rather than
        // reporting success before the sync has run.
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(thread) = thread.take() else {
            return Err(Error::Closed);
        };
        let (c, slot) = Completion::new();
        // A send fails only once the commit thread is gone; the completion then
        // resolves to `Closed` and the join below says why.
        let _ = self.tx.send(Request::Close(Completer::new(slot)));
        let mut r = c.wait();
        let joined = thread.join();
        // No checkpoint may start from here on, and one in progress ends before the
        // directory is released below.
        self.core.closed.store(true, Ordering::Release);
        drop(
            self.core
                .checkpointed
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if joined.is_err() {
            // The commit thread panicked: what it had not synced may be lost, and a
            // close must not report success for it.
            let cause = Arc::clone(
                self.core
                    .failed
                    .get_or_init(|| Arc::new(Error::CommitThreadPanicked)),
            );
            r = Err(Error::Failed { cause });
        }
        let lock = self
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if self.core.ring_abandoned.load(Ordering::Acquire) {
            // Writes the kernel may still complete: another process (or a
            // reopen here) must not write where they land. The lock file is
            // left open and locked until the process exits.
            tracing::error!(dir = %self.core.dir.display(), "the WAL failed with writes in the kernel that could not be reaped; its directory stays locked until this process exits");
            std::mem::forget(lock);
        } else {
            drop(lock);
        }
        r
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            if !matches!(e, Error::Closed) {
                tracing::error!(error = %e, "closing the WAL on drop failed");
            }
        }
    }
}

/// A cloneable, thread-safe handle to an open WAL. The WAL closes (flushing and
/// syncing everything) when [`Wal::close`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Handle>,
}

#[cfg(test)]
impl Wal {
    /// Makes the next `n` directory fsyncs after retiring files fail (tests).
    pub(crate) fn fail_next_retire_syncs(&self, n: u32) {
        self.inner
            .core
            .fail_retire_syncs
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many of those are still to fail.
    pub(crate) fn retire_syncs_to_fail(&self) -> u32 {
        self.inner
            .core
            .fail_retire_syncs
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.inner.core.dir)
            .field("backend", &self.inner.backend)
            .finish()
    }
}

/// Submission queue entries of the io_uring backend's ring (its completion queue
/// has twice as many). Every operation is submitted as soon as it is queued, so the
/// submission queue holds at most a write and its linked fsync at a time; the
/// completion queue must hold a completion for everything in flight at once: up to
/// `max_in_flight` writes with a linked fsync each, and one standalone fsync. At
/// least 64 (what every configuration up to `max_in_flight` 63 needs); 128 for 64.
fn ring_entries(max_in_flight: usize) -> u32 {
    let completions = 2 * u32::try_from(max_in_flight).unwrap_or(u32::MAX / 4) + 1;
    completions.div_ceil(2).next_power_of_two().max(64)
}

/// What [`Wal::open`] found, and the entries after the checkpoint as a stream.
///
/// Iterating reads one batch at a time, so recovering a large WAL needs little memory.
/// Appends may run meanwhile: the active file is read through a handle opened
/// before the first append, so a rotation that renames it changes nothing here.
pub struct Recovery {
    /// The checkpointed sequence (0 when there is no checkpoint).
    pub checkpoint: u64,
    /// The last valid sequence in the log (0 when empty).
    pub last_sequence: u64,
    /// The sequence the next append gets.
    pub next_sequence: u64,
    /// Where a torn tail was cut: file and byte offset.
    pub truncated: Option<(PathBuf, u64)>,
    /// The scanned files.
    pub files: Vec<FileInfo>,
    /// The files entries are read from.
    replay: Vec<FileInfo>,
    /// The active file, when it holds entries to replay, opened before any append.
    active: Option<(PathBuf, Arc<std::fs::File>)>,
    iter: EntryIter,
}

impl Recovery {
    /// Entries with sequence ≥ `from` that the log still holds, whether or not the
    /// checkpoint covers them (archived files kept by `retention_files` included),
    /// read independently of this iterator. Lets an owner rebuild data it lost
    /// after checkpointing it, for as far back as the log reaches.
    pub fn entries_from(&self, from: u64) -> EntryIter {
        let iter = EntryIter::new(self.replay.clone(), from);
        match &self.active {
            Some((path, file)) => iter.reading_active(path.clone(), Arc::clone(file)),
            None => iter,
        }
    }
}

impl Iterator for Recovery {
    type Item = Result<WalEntry>;
    fn next(&mut self) -> Option<Self::Item> {
        self.iter.next()
    }
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("checkpoint", &self.checkpoint)
            .field("last_sequence", &self.last_sequence)
            .field("next_sequence", &self.next_sequence)
            .field("truncated", &self.truncated)
            .finish_non_exhaustive()
    }
}

/// Where to resume the zero-fill of an active file that a crash (or appends that
/// overtook it) cut short: its first reserved but unwritten block, when that lies
/// at or after `offset`, where the log ends and appends continue. The fill only
/// ever writes from there on, and the commit thread stops it before writing
/// beyond what it has done, as for a new file.
fn resumed_fill(current: &Path, offset: u64, size: u64) -> Result<Option<u64>> {
    let f = files::open_regular(current).map_err(|e| Error::io("open", current, e))?;
    // Recovery's reads left pages cached, and a filesystem reports an unwritten
    // block with a cached page as data: drop them (all clean) to see the holes.
    files::drop_cached_pages(&f);
    let hole = files::first_unwritten(&f).filter(|&h| h >= offset && h < size);
    if let Some(h) = hole {
        tracing::info!(file = %current.display(), from = h, "resuming the zero-fill of the active WAL file");
    }
    Ok(hole)
}

/// Before the scan: syncs the active file and drops its cached pages (all clean
/// then), so that the scan reads what the disk holds. A write-back failure of a
/// process that stopped before its next sync is reported to the next `fsync` by
/// anyone, once (here, as a warning), and one that process saw itself is not
/// reported again; either way the kernel may keep the failed pages cached as
/// written, and a scan of the cache would recover entries the disk does not hold
/// and append after them. Such entries were never acknowledged by an
/// `every_write` sync (a sync after the failure reports it), so the scan treats
/// what the disk lacks as a torn tail. Files written with `O_DIRECT` have no
/// cached pages; for them this is one `fdatasync` of a clean file.
fn settle_active(current: &Path) -> Result<()> {
    // Opened for writing: Windows refuses to sync a read-only handle.
    let f = match files::open_regular_with(current, std::fs::OpenOptions::new().write(true)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("open", current, e)),
    };
    if let Err(e) = files::sync_file(&f, current, true) {
        tracing::warn!(file = %current.display(), error = %e, "an earlier write to the active WAL file failed after the last sync; recovery reads what the disk holds");
        // A sync that reports a write-back failure may return before it flushed the
        // device's write cache, and the commit thread treats every recovered entry
        // as durable (later batches' `synced_through` covers it). The failure was
        // reported now, so a second sync reports only a new one; it flushes what
        // did reach the device. If it fails too, the disk is failing: refuse to open.
        files::sync_file(&f, current, true).map_err(|e| Error::io("fdatasync", current, e))?;
    }
    files::drop_cached_pages(&f);
    Ok(())
}

/// Writes a seal batch at `offset` of `path` with plain I/O and fdatasyncs it.
fn seal_in_place(
    path: &Path,
    file: FileId,
    offset: u64,
    next_sequence: u64,
    synced_through: u64,
) -> Result<()> {
    let mut block = vec![0u8; BLOCK_SIZE];
    let h = BatchHeader {
        kind: BatchKind::Seal,
        file_number: file.number,
        first_sequence: next_sequence,
        entry_count: 0,
        payload_len: 0,
        synced_through,
        entries_crc: Some(0),
    };
    format::encode_batch_header(&mut block[..BATCH_HEADER_LEN], &h, file.key);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    // The seal records `synced_through`: make the recovered entries before it
    // durable first, so that claim is true even if power fails before the seal's
    // own fdatasync.
    files::sync_file(&f, path, true).map_err(|e| Error::io("fdatasync", path, e))?;
    files::write_at(&f, path, offset, &block).map_err(|e| Error::io("pwrite seal", path, e))?;
    files::sync_file(&f, path, true).map_err(|e| Error::io("fdatasync", path, e))?;
    // Written through the page cache, perhaps into a reserved block: ext4 can
    // fail the unwritten extent's conversion unseen by the sync (see
    // `journal::check_written_range`), and an archived file whose seal reads
    // as zeros is damaged to every later open. Refuse this one instead.
    journal::check_written_range(&f, offset, offset + BLOCK_SIZE as u64)
        .map_err(|e| Error::io("mapping check after fdatasync", path, e))
}

/// Adds the archived file after `prev` (the newest file, archived and sealed),
/// holding only a seal that says the log continues at `next_sequence`, a sequence
/// the checkpoint has reached ([`recovery`] accepts such a skip). Renamed into
/// place before it is sealed: a crash in between leaves the newest file archived
/// without a seal, which the next open seals the same way.
fn seal_only_file(dir: &Path, prev: &FileInfo, next_sequence: u64, size: u64) -> Result<FileInfo> {
    let number = prev.number + 1;
    // Its head is zero-filled, so the seal overwrites written blocks.
    let (prepared, _) = files::prepare_head(dir, number, size)?;
    let path = files::archived_path(dir, number);
    files::rename(&prepared, &path)?;
    files::sync_dir(dir)?;
    let header = files::read_header(&path)?;
    let id = FileId {
        number,
        key: header.key,
    };
    let at = BLOCK_SIZE as u64;
    seal_in_place(&path, id, at, next_sequence, 0)?;
    tracing::info!(file = number, next = next_sequence, dir = %dir.display(), "sealed an empty WAL file to record that the log continues after the checkpoint");
    let size = std::fs::metadata(&path)
        .map_err(|e| Error::io("stat", &path, e))?
        .len();
    Ok(FileInfo {
        number,
        key: header.key,
        path,
        size,
        valid_end: at + BLOCK_SIZE as u64,
        first_sequence: None,
        last_sequence: None,
        next_sequence: Some(next_sequence),
        batches: 0,
        entries: 0,
        data_bytes: 0,
        tail: Tail::Sealed,
        stale_after_end: false,
        skipped: Vec::new(),
    })
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`: validates every file, cuts a torn tail,
    /// and starts the commit thread. The returned [`Recovery`] streams the entries
    /// after the checkpoint; appends may start at once and get sequences after them.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad configuration, [`Error::Locked`] when the
    /// directory is open elsewhere, [`Error::Corrupt`] for damaged data (with file
    /// and offset), and I/O errors naming the path.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<(Wal, Recovery)> {
        Self::open_with(dir.as_ref(), config, |config, kind, path| {
            let entries = ring_entries(config.max_in_flight);
            backend::create(kind, path, entries, config.uses_direct_io())
        })
    }

    /// Opens the WAL with all data-file I/O going through the simulated disk `disk`,
    /// which also models the directory's entries and the files written outside the
    /// backend from now on (see [`sim`]); otherwise exactly [`Wal::open`]. The disk
    /// keeps every unsynced 512-byte sector in memory, zero-fills included: use small
    /// files (`max_file_size`), as the crash tests do.
    ///
    /// # Errors
    /// As [`Wal::open`].
    #[cfg(all(unix, any(test, feature = "sim")))]
    pub fn open_sim(
        dir: impl AsRef<Path>,
        config: WalConfig,
        disk: &sim::SimDisk,
    ) -> Result<(Wal, Recovery)> {
        disk.watch_dir(dir.as_ref())?;
        Self::open_sim_restarted(dir, config, disk)
    }

    /// [`Wal::open_sim`] for a process started on `disk` after another died
    /// ([`sim::SimDisk::restart`]): the directory stays watched, with the
    /// changes the dead process did not make durable still pending.
    ///
    /// # Errors
    /// As [`Wal::open`].
    #[cfg(all(unix, any(test, feature = "sim")))]
    pub fn open_sim_restarted(
        dir: impl AsRef<Path>,
        config: WalConfig,
        disk: &sim::SimDisk,
    ) -> Result<(Wal, Recovery)> {
        Self::open_with(dir.as_ref(), config, |_, _, path| {
            let mut b = disk.backend();
            backend::Backend::open(&mut b, path)?;
            Ok(Box::new(b))
        })
    }

    fn open_with(
        dir: &Path,
        config: WalConfig,
        make_backend: impl FnOnce(&WalConfig, BackendKind, &Path) -> Result<Box<dyn backend::Backend>>,
    ) -> Result<(Wal, Recovery)> {
        // Everything, STREAMLINE_WAL_BACKEND included (read once), is checked
        // before the directory is touched.
        let env_backend = std::env::var_os(BackendKind::ENV);
        config.validate_with_env(env_backend.as_deref())?;
        let backend_kind = config.resolve_backend(env_backend.as_deref())?;
        let dir = dir.to_path_buf();
        files::create_dir_durable(&dir)?;
        let lock = files::lock_dir(&dir)?;
        files::remove_prepared(&dir)?;
        settle_active(&dir.join(files::CURRENT))?;
        let scan = recovery::scan_dir(&dir, config.recovery_mode)?;
        // The clean-close marker describes the files as they are now; it must be
        // gone for good before anything is written to them again.
        clean_close::remove(&dir)?;
        let checkpoint = scan.checkpoint.map_or(0, |c| c.sequence);
        let mut next_seq = scan.next_sequence;
        let mut files = scan.files;
        let current = dir.join(files::CURRENT);
        let mut truncated = None;

        // Decide whether appends continue in the newest file or in a fresh one.
        let mut need_new_file = true;
        let mut offset = BLOCK_SIZE as u64;
        if let Some(last) = files.last_mut() {
            // No `current.wal` (a crash between a rotation's two renames, or a
            // lost file) leaves the newest file archived.
            let in_current = last.path == current;
            if let Tail::Torn { offset: at, reason } = &last.tail {
                tracing::warn!(file = %last.path.display(), offset = at, reason = %reason, "cut torn WAL tail");
                truncated = Some((last.path.clone(), *at));
            }
            let jump = checkpoint >= next_seq;
            if jump {
                tracing::warn!(
                    checkpoint,
                    next = next_seq,
                    "checkpoint is ahead of the log; continuing after it"
                );
                next_seq = checkpoint + 1;
            }
            let was_sealed = last.tail == Tail::Sealed;
            // An archived newest file is followed by a new one: its end names
            // where that one starts (the next scan checks it). `current.wal` is
            // sealed when bytes beyond the cut could decode later, and when it
            // is a version 1 file (no key, format.md "Why the key"): what is
            // appended from now on goes to a keyed file. So is one in which
            // tolerant recovery skipped damage: archived, it is retired once a
            // checkpoint covers it, and a strict open does not meet the damage
            // again.
            let seal = !was_sealed
                && (!in_current
                    || last.stale_after_end
                    || jump
                    || last.key == 0
                    || !last.skipped.is_empty());
            if seal {
                seal_in_place(
                    &last.path,
                    last.id(),
                    last.valid_end,
                    next_seq,
                    last.last_sequence.unwrap_or(0),
                )?;
                last.valid_end += BLOCK_SIZE as u64;
                last.next_sequence = Some(next_seq);
                last.tail = Tail::Sealed;
            }
            if in_current {
                if was_sealed || seal {
                    // Complete (a crash during rotation) or sealed just now.
                    let archived = files::archived_path(&dir, last.number);
                    files::rename(&current, &archived)?;
                    files::sync_dir(&dir)?;
                    last.path = archived;
                } else {
                    need_new_file = false;
                    offset = last.valid_end;
                }
            } else if was_sealed && jump {
                // Its seal names the sequence after its own entries, which the
                // checkpoint has passed (the entries after them were in the lost
                // `current.wal`). A file holding only a seal records the jump, as
                // a sealed empty `current.wal` does.
                let sealed = seal_only_file(&dir, last, next_seq, config.max_file_size)?;
                files.push(sealed);
            }
        } else if checkpoint >= next_seq {
            next_seq = checkpoint + 1;
        }
        let number = files.last().map_or(1, |f| {
            if need_new_file {
                f.number + 1
            } else {
                f.number
            }
        });
        // A new active file is zero-filled only in part here; the preparer thread
        // zero-fills the rest ahead of the appends (`files::fill_tail`).
        let created_zeroed = if need_new_file {
            let (p, zeroed) = files::prepare_head(&dir, number, config.max_file_size)?;
            files::rename(&p, &current)?;
            files::sync_dir(&dir)?;
            tracing::info!(file = number, dir = %dir.display(), "created WAL file");
            Some(zeroed)
        } else {
            // The process before may have died between renames and the fsync of
            // the directory (a rotation's); a power loss could still undo them
            // and take the entries about to be acknowledged in this file away.
            files::sync_dir(&dir)?;
            None
        };
        // The active file keeps its original size (max_file_size may have changed).
        let key = files::read_header(&current)?.key;
        let (size, confirmed) = files::written_extent(&current)?;
        let zeroed_through = match created_zeroed {
            Some(zeroed) => Some(zeroed),
            None => resumed_fill(&current, offset, size)?,
        };

        let archived: Vec<Archived> = files
            .iter()
            .zip(files.iter().skip(1).map(Some).chain([None]))
            .filter(|(f, _)| f.path != current)
            .map(|(f, after)| {
                let mut covers_through = f.next_sequence.unwrap_or(1).saturating_sub(1);
                // Damage skipped to its end took the file's last entries with
                // it: they run up to where the next file's go on, and retired
                // before a checkpoint covers them, the file would leave the
                // next open a log starting past its checkpoint.
                if f.skipped.last().is_some_and(|(_, end, _)| *end == f.size) {
                    if let Some(goes_on) = after.and_then(|a| a.first_sequence.or(a.next_sequence))
                    {
                        covers_through = covers_through.max(goes_on.saturating_sub(1));
                    }
                }
                Archived {
                    number: f.number,
                    path: f.path.clone(),
                    covers_through,
                    damaged: !f.skipped.is_empty(),
                }
            })
            .collect();
        let last_sequence = next_seq - 1;
        let core = Arc::new(Core::new(
            config.clone(),
            dir.clone(),
            archived,
            last_sequence,
            checkpoint,
        ));
        let mut backend = make_backend(&config, backend_kind, &current)?;
        if let Err(e) = backend.hold_lock(lock.file()) {
            tracing::warn!(error = %e, "the WAL's lock is released at once if the process dies, before its last writes complete");
        }
        let kind = backend.kind();
        let direct_io = backend.direct_io();
        let (tx, rx) = crossbeam_channel::unbounded();
        let tail = match zeroed_through {
            Some(zeroed) if zeroed < size => Some(commit::TailJob {
                file: std::fs::OpenOptions::new()
                    .write(true)
                    .open(&current)
                    .map_err(|e| Error::io("open", &current, e))?,
                path: current.clone(),
                size,
                fill: Arc::new(files::TailFill::new(zeroed)),
            }),
            _ => None,
        };
        // Opened before the commit thread exists, so no rotation can have renamed it.
        let active_file = if need_new_file {
            None
        } else {
            Some(Arc::new(
                files::open_regular(&current).map_err(|e| Error::io("open", &current, e))?,
            ))
        };
        let preparer = commit::spawn_preparer(
            &dir,
            number + 1,
            config.max_file_size,
            files::Prealloc::ZeroFill,
            tail,
        );
        let committer = Committer::new(
            backend,
            Arc::clone(&core),
            rx,
            ActiveFile {
                number,
                key,
                offset,
                size,
                confirmed,
            },
            next_seq,
            preparer,
        )?;
        let thread = std::thread::Builder::new()
            .name("streamline-wal-commit".into())
            .spawn(move || {
                committer.run();
                thread_cpu::report_this_thread();
            })
            .map_err(|e| Error::io("spawn commit thread", &dir, e))?;
        tracing::info!(
            dir = %dir.display(), backend = %kind, direct_io, sync_mode = %config.sync_mode,
            checkpoint, last_sequence = scan.last_sequence, next = next_seq, "opened WAL"
        );
        // Files older than the checkpoint hold nothing to replay.
        let replay: Vec<FileInfo> = files
            .iter()
            .filter(|f| f.path != current || !need_new_file)
            .cloned()
            .collect();
        let iter = EntryIter::new(replay.clone(), checkpoint + 1);
        let (iter, active) = match active_file {
            Some(file) if replay.iter().any(|f| f.path == current) => (
                iter.reading_active(current.clone(), Arc::clone(&file)),
                Some((current.clone(), file)),
            ),
            _ => (iter, None),
        };
        let wal = Wal {
            inner: Arc::new(Handle {
                core,
                tx,
                thread: Mutex::new(Some(thread)),
                backend: kind,
                direct_io,
                lock: Mutex::new(Some(lock)),
                #[cfg(any(test, feature = "sim"))]
                closes_begun: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        let rec = Recovery {
            checkpoint,
            last_sequence: scan.last_sequence,
            next_sequence: next_seq,
            truncated,
            files,
            replay,
            active,
            iter,
        };
        Ok((wal, rec))
    }

    fn send_append(&self, entries: Entries, bytes: usize) -> Completion {
        let core = &self.inner.core;
        if let Err(e) = core.check_usable() {
            return Completion::ready(Err(e));
        }
        if let Err(e) = core.reserve_blocking(bytes) {
            return Completion::ready(Err(e));
        }
        self.send_reserved(entries, bytes)
    }

    fn try_send_append(&self, entries: Entries, bytes: usize) -> Completion {
        let core = &self.inner.core;
        if let Err(e) = core.check_usable() {
            return Completion::ready(Err(e));
        }
        if !core.try_reserve(bytes) {
            return Completion::ready(Err(Error::Full {
                pending: core.pending_bytes() as u64,
                claimed: core.claimed_bytes() as u64,
                cap: core.config.max_pending_bytes as u64,
            }));
        }
        self.send_reserved(entries, bytes)
    }

    fn send_reserved(&self, entries: Entries, bytes: usize) -> Completion {
        self.send_reserved_at(entries, bytes, files::now_ms())
    }

    /// [`Wal::append`] of an entry stamped `timestamp_ms` rather than now, for
    /// tests of what start-up makes of an entry's age.
    #[cfg(test)]
    pub(crate) fn append_stamped(
        &self,
        topic: &str,
        partition: i32,
        data: Bytes,
        timestamp_ms: i64,
    ) -> Completion {
        let core = &self.inner.core;
        let reserved = self.check_record(topic, &data).and_then(|bytes| {
            core.check_usable()?;
            core.reserve_blocking(bytes)?;
            Ok(bytes)
        });
        match reserved {
            Ok(bytes) => {
                self.send_reserved_at(Entries::record(topic, partition, data), bytes, timestamp_ms)
            }
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// Sends an append whose room is reserved, its entries stamped `timestamp`.
    fn send_reserved_at(&self, entries: Entries, bytes: usize, timestamp: i64) -> Completion {
        let (c, slot) = self.inner.core.completion();
        let req = Request::Append {
            entries,
            timestamp,
            bytes,
            done: Completer::new(slot),
        };
        if let Err(crossbeam_channel::SendError(req)) = self.inner.tx.send(req) {
            // The commit thread is gone (a close ended after this append was
            // found usable, or the thread panicked): its room is given back.
            // A thread that panicked latched its failure before its channel
            // went, and the append gets that failure; otherwise its Completer
            // answers Closed when dropped (it answered Closed after a panic
            // too, when the append was sent between the two).
            self.inner.core.release(bytes);
            if let (Request::Append { done, .. }, Some(e)) = (req, self.inner.core.failed.get()) {
                done.complete(Err(Error::Failed {
                    cause: Arc::clone(e),
                }));
            }
        }
        c
    }

    fn check_size(&self, entries: &[NewEntry]) -> Result<usize> {
        let mut total = 0usize;
        for e in entries {
            check_topic(&e.topic)?;
            total = total.saturating_add(e.encoded_len());
        }
        self.check_total(total)
    }

    /// [`Wal::check_size`] of one `Record` entry.
    fn check_record(&self, topic: &str, data: &Bytes) -> Result<usize> {
        check_topic(topic)?;
        self.check_total(format::entry_len(topic.len(), data.len()))
    }

    fn check_total(&self, total: usize) -> Result<usize> {
        let limit = self.max_entry_bytes();
        if total as u64 > limit {
            return Err(Error::EntryTooLarge {
                size: total as u64,
                limit,
            });
        }
        Ok(total)
    }

    /// Largest encoded size of one append (or one `append_batch`): a file minus its
    /// header block, the batch header and the seal block.
    pub fn max_entry_bytes(&self) -> u64 {
        max_entry_bytes_for(self.inner.core.config.max_file_size)
    }

    /// Appends a `Record` entry. Blocks only while the pending-bytes cap is reached.
    /// The completion resolves to the entry's sequence once it is durable per the
    /// sync mode, or to the error that prevented it.
    pub fn append(&self, topic: &str, partition: i32, data: Bytes) -> Completion {
        match self.check_record(topic, &data) {
            Ok(bytes) => self.send_append(Entries::record(topic, partition, data), bytes),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// Appends one entry of any type (see [`Wal::append`]).
    pub fn append_entry(&self, entry: NewEntry) -> Completion {
        match self.check_size(std::slice::from_ref(&entry)) {
            Ok(bytes) => self.send_append(Entries::One(entry), bytes),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// Appends several entries atomically: they get contiguous sequences, land in one
    /// batch, and recovery returns all of them or none. Resolves to the first sequence.
    pub fn append_batch(&self, entries: Vec<NewEntry>) -> Completion {
        if entries.is_empty() {
            return Completion::ready(Err(Error::InvalidArgument {
                name: "entries",
                reason: "a batch needs at least one entry".into(),
            }));
        }
        match self.check_size(&entries) {
            Ok(bytes) => self.send_append(Entries::Many(entries), bytes),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// Like [`Wal::append`], but never blocks for capacity: when the pending-bytes
    /// cap is reached it resolves at once to [`Error::Full`], and the entry is not
    /// appended (it takes no sequence). For callers that would rather shed load
    /// than wait.
    pub fn try_append(&self, topic: &str, partition: i32, data: Bytes) -> Completion {
        match self.check_record(topic, &data) {
            Ok(bytes) => self.try_send_append(Entries::record(topic, partition, data), bytes),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// Like [`Wal::append_batch`], but resolves at once to [`Error::Full`] instead of
    /// blocking when the pending-bytes cap is reached (see [`Wal::try_append`]).
    pub fn try_append_batch(&self, entries: Vec<NewEntry>) -> Completion {
        if entries.is_empty() {
            return self.append_batch(entries);
        }
        match self.check_size(&entries) {
            Ok(bytes) => self.try_send_append(Entries::Many(entries), bytes),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// Like [`Wal::append`], but waits for pending capacity without blocking the
    /// thread (for async callers), then for durability.
    ///
    /// A future dropped while it waits for capacity appends nothing; once it
    /// has capacity, the entry is handed to the commit thread in the same poll,
    /// and a drop after that (a timeout, a `select!` taking another branch)
    /// does not withdraw it: the outcome is then unknown, as for a dropped
    /// [`Completion`].
    ///
    /// # Errors
    /// As the completion of [`Wal::append`].
    pub async fn append_async(&self, topic: &str, partition: i32, data: Bytes) -> Result<u64> {
        let bytes = self.check_record(topic, &data)?;
        CapacityWait {
            core: &self.inner.core,
            bytes,
            registered: None,
        }
        .await?;
        self.send_reserved(Entries::record(topic, partition, data), bytes)
            .await
    }

    /// Like [`Wal::append_batch`], waiting for capacity without blocking the thread.
    /// A drop of the future withdraws the batch only while it waits for capacity
    /// (see [`Wal::append_async`]).
    ///
    /// # Errors
    /// As the completion of [`Wal::append_batch`].
    pub async fn append_batch_async(&self, entries: Vec<NewEntry>) -> Result<u64> {
        if entries.is_empty() {
            return self.append_batch(entries).await;
        }
        let bytes = self.check_size(&entries)?;
        CapacityWait {
            core: &self.inner.core,
            bytes,
            registered: None,
        }
        .await?;
        self.send_reserved(Entries::Many(entries), bytes).await
    }

    /// Makes everything appended before this call durable (one fdatasync), in any
    /// sync mode. Resolves to the highest durable sequence.
    pub fn sync(&self) -> Completion {
        if let Err(e) = self.inner.core.check_usable() {
            return Completion::ready(Err(e));
        }
        let (c, slot) = self.inner.core.completion();
        let _ = self.inner.tx.send(Request::Sync(Completer::new(slot)));
        c
    }

    /// Records that every entry up to `sequence` has been applied durably elsewhere:
    /// replaces `checkpoint.json` atomically, then deletes archived files wholly at or
    /// below it, keeping the newest `retention_files`. A sequence at or below the
    /// current checkpoint leaves `checkpoint.json` as it is (it is still true, and
    /// files it would need may already be gone): calls from several threads may
    /// race. Every call retires what the stored checkpoint covers, so files an
    /// earlier call failed to retire are retried.
    ///
    /// # Errors
    /// [`Error::CheckpointAhead`] for a sequence not yet acknowledged,
    /// [`Error::Closed`] once the WAL is closed; I/O errors.
    pub fn checkpoint(&self, sequence: u64) -> Result<()> {
        let core = &self.inner.core;
        let acked = core.acked_through.load(Ordering::Acquire);
        if sequence > acked {
            return Err(Error::CheckpointAhead {
                sequence,
                acknowledged: acked,
            });
        }
        let mut checkpointed = core
            .checkpointed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Once closed, the directory (its lock released) may be another WAL's, whose
        // checkpoint this one must not overwrite. `Handle::shutdown` takes this lock
        // after the close and before releasing the directory.
        if core.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if sequence > *checkpointed {
            checkpoint::store(&core.dir, sequence)?;
            *checkpointed = sequence;
        }
        // Retention runs at every call, so files a failed call left are retried.
        let through = *checkpointed;
        let mut doomed: Vec<Archived> = {
            let mut archived = core.archived.lock().unwrap_or_else(PoisonError::into_inner);
            let keep = core.config.retention_files;
            // Files are retired oldest first (a gap is refused by the next
            // open), so those before a damaged one go with it.
            let until = archived
                .iter()
                .rposition(|a| a.damaged)
                .map_or(0, |i| i + 1)
                .max(archived.len().saturating_sub(keep));
            let mut n = 0;
            // Nothing is retired before a checkpoint is stored (a file holding no
            // entries is covered by checkpoint 0): without one, recovery takes an
            // oldest file other than the first as files missing.
            while through > 0 && n < until && archived[n].covers_through <= through {
                n += 1;
            }
            archived.drain(..n).collect()
        };
        if doomed.is_empty() && !core.retired_unsynced.load(Ordering::Acquire) {
            return Ok(());
        }
        for i in 0..doomed.len() {
            let a = &doomed[i];
            if i > 0 {
                core.retired_unsynced.store(true, Ordering::Release);
            }
            if let Err(e) = files::retire(&core.dir, &a.path, a.number, core.config.max_file_size) {
                // This file and the ones after it stay on disk: back to the front of
                // the list, so that a later checkpoint retires them. Dropped from
                // it, they would outlive the files retired after them, and the next
                // open would find the log's files missing in between.
                let left = doomed.split_off(i);
                let mut archived = core.archived.lock().unwrap_or_else(PoisonError::into_inner);
                archived.splice(0..0, left);
                return Err(e);
            }
            tracing::info!(file = a.number, "retired WAL file covered by checkpoint");
        }
        // The renames and deletions become durable with the directory. Until
        // an fsync of it succeeds, every later checkpoint fsyncs it again (the
        // files it retired are off the list, so it would have nothing to do):
        // a power loss could otherwise bring back some of them and not others,
        // a gap the next open refuses.
        core.retired_unsynced.store(true, Ordering::Release);
        #[cfg(test)]
        if core
            .fail_retire_syncs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::io(
                "fsync dir",
                &core.dir,
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        files::sync_dir(&core.dir)?;
        core.retired_unsynced.store(false, Ordering::Release);
        Ok(())
    }

    /// Stops the commit thread after everything accepted so far is written and
    /// fdatasynced (in every sync mode). Other handles see [`Error::Closed`] afterwards.
    ///
    /// # Errors
    /// The latched failure if the WAL failed (also when another handle closed it
    /// first), or an error from the final sync.
    pub fn close(self) -> Result<()> {
        match self.inner.shutdown() {
            Ok(_) => Ok(()),
            // Closed by another handle, or the WAL's thread had stopped: the
            // latched failure, if there is one, is still this WAL's outcome.
            Err(Error::Closed) => match self.inner.core.failed.get() {
                Some(cause) => Err(Error::Failed {
                    cause: Arc::clone(cause),
                }),
                None => Ok(()),
            },
            Err(e) => Err(e),
        }
    }

    /// The backend in use (`Uring` or `Std`, never `Auto`).
    pub fn backend(&self) -> BackendKind {
        self.inner.backend
    }

    /// Whether the WAL's files are written with `O_DIRECT` (see
    /// [`WalConfig::direct_io`]); false where the file active at open got no
    /// direct I/O (the filesystem refuses `O_DIRECT`, or would buffer it).
    pub fn direct_io(&self) -> bool {
        self.inner.direct_io
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.inner.core.dir
    }

    /// The configuration the WAL was opened with.
    pub fn config(&self) -> &WalConfig {
        &self.inner.core.config
    }

    /// How many closes (or drops of the last handle) have begun (tests).
    #[cfg(any(test, feature = "sim"))]
    #[doc(hidden)]
    pub fn closes_begun(&self) -> usize {
        self.inner.closes_begun.load(Ordering::SeqCst)
    }

    /// The highest acknowledged sequence.
    pub fn last_acked_sequence(&self) -> u64 {
        self.inner.core.acked_through.load(Ordering::Acquire)
    }

    /// The highest sequence covered by a completed fdatasync.
    pub fn durable_sequence(&self) -> u64 {
        self.inner.core.synced_through.load(Ordering::Acquire)
    }

    /// The latched failure, if the WAL has failed.
    pub fn failure(&self) -> Option<Arc<Error>> {
        self.inner.core.failed.get().cloned()
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        let c = &self.inner.core.counters;
        WalStats {
            entries: c.entries.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            rotations: c.rotations.load(Ordering::Relaxed),
            max_batch_entries: c.max_batch_entries.load(Ordering::Relaxed),
            early_batches: c.early_batches.load(Ordering::Relaxed),
            grouped_batches: c.grouped_batches.load(Ordering::Relaxed),
            unwritten_batches: c.unwritten_batches.load(Ordering::Relaxed),
            max_syncs_in_flight: c.max_syncs_in_flight.load(Ordering::Relaxed),
            pending_bytes: self.inner.core.pending_bytes() as u64,
        }
    }
}

/// Refuses a topic name longer than the format can hold.
fn check_topic(topic: &str) -> Result<()> {
    if topic.len() > format::MAX_TOPIC_LEN {
        return Err(Error::InvalidArgument {
            name: "topic",
            reason: format!(
                "{} bytes; topic names are limited to {} bytes",
                topic.len(),
                format::MAX_TOPIC_LEN
            ),
        });
    }
    Ok(())
}

/// [`Wal::max_entry_bytes`] for files of `max_file_size` bytes. A write's length is
/// a `u32` for the kernel (`io_uring`) and the batch header, so a batch, block
/// padding included, stays below 4 GiB whatever the file size.
pub(crate) fn max_entry_bytes_for(max_file_size: u64) -> u64 {
    let header = BATCH_HEADER_LEN as u64;
    (max_file_size - 2 * BLOCK_SIZE as u64 - header).min((1 << 32) - BLOCK_SIZE as u64 - header)
}

/// Waits (asynchronously) until `bytes` of pending capacity are reserved,
/// leaving room for a blocked waiter's claim (see `Core::reserve_blocking`).
/// It takes no claim itself: a claim holds every other append back until its
/// holder passes, and a future may not be polled again for as long as the
/// threads that would poll it are blocked appending.
///
/// A wait dropped before it is woken (a timeout, a `select!` taking another
/// branch) takes its waker back: left registered until the next release, it
/// held its task's memory, and a stalled device kept every timed-out one's.
struct CapacityWait<'a> {
    core: &'a Core,
    bytes: usize,
    /// The waker this wait registered last, while it may still be listed.
    registered: Option<std::task::Waker>,
}

impl Drop for CapacityWait<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.registered.take() {
            self.core.unregister_waker(&w);
        }
    }
}

impl CapacityWait<'_> {
    fn attempt(&self) -> Option<Result<()>> {
        if let Err(e) = self.core.check_usable() {
            return Some(Err(e));
        }
        self.core.try_reserve(self.bytes).then_some(Ok(()))
    }
}

impl std::future::Future for CapacityWait<'_> {
    type Output = Result<()>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        use std::task::Poll;
        if let Some(r) = self.attempt() {
            return Poll::Ready(r);
        }
        self.core.register_waker(cx.waker());
        let me = self.as_mut().get_mut();
        if !me
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            me.registered = Some(cx.waker().clone());
        }
        // Again after registering so that a release, a failure or a close in
        // between (whose wake-up found no waker yet) is not missed.
        match self.attempt() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{max_entry_bytes_for, ring_entries, settle_active, CapacityWait};
    use crate::wal::commit::tests::{blocked_reserve, core_with_cap, wait_for_claim};
    use crate::wal::format::{align_up, BATCH_HEADER_LEN, BLOCK_SIZE};

    /// An async append waiting at the cap leaves a blocked waiter's claim
    /// alone, and takes none itself: a blocking append is never held back by
    /// a future that nothing polls.
    #[test]
    fn an_async_wait_at_the_cap_respects_claims_and_takes_none() {
        use std::future::Future;
        use std::sync::Arc;
        use std::task::{Context, Poll, Waker};
        const K: usize = 1024;
        let core = Arc::new(core_with_cap(1024 * K));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(core.try_reserve(512 * K));
        let mut wait = Box::pin(CapacityWait {
            core: &core,
            bytes: 768 * K,
            registered: None,
        });
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        // Polled again before any wake-up (a `select!` beside a timer): its
        // task is registered once, not once per poll.
        for _ in 0..100 {
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(core.registered_wakers(), 1);
        // Unpolled from here on: a blocking append that fits passes.
        assert!(core.try_reserve(256 * K), "the async wait claimed room");
        core.release(256 * K);
        let blocked = blocked_reserve(&core, 768 * K);
        assert_eq!(wait_for_claim(&core), 768 * K);
        let mut small = Box::pin(CapacityWait {
            core: &core,
            bytes: 256 * K,
            registered: None,
        });
        assert!(
            small.as_mut().poll(&mut cx).is_pending(),
            "an async append took claimed room"
        );
        core.release(512 * K);
        blocked.join().unwrap().unwrap();
        assert_eq!(core.claimed_bytes(), 0);
        assert!(matches!(small.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
        drop(wait);
    }

    /// An async wait dropped before it is woken takes its waker back (a
    /// stall held every timed-out task's waker, and its memory, until the
    /// next release), and wakes it: another wait of the same task, which
    /// shares the registration, registers again when polled.
    #[test]
    fn a_dropped_async_wait_takes_its_waker_back() {
        use std::future::Future;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::task::{Context, Wake, Waker};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        const K: usize = 1024;
        let core = Arc::new(core_with_cap(1024 * K));
        assert!(core.try_reserve(1024 * K));
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        let wait = |bytes| {
            Box::pin(CapacityWait {
                core: &core,
                bytes,
                registered: None,
            })
        };
        let (mut first, mut second) = (wait(K), wait(2 * K));
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(core.registered_wakers(), 1, "one per task");
        drop(first);
        assert_eq!(core.registered_wakers(), 0, "taken back");
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the task woken");
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(core.registered_wakers(), 1, "registered again");
        core.release(1024 * K);
        assert_eq!(core.registered_wakers(), 0);
        assert_eq!(woken.0.load(Ordering::SeqCst), 2);
        assert!(second.as_mut().poll(&mut cx).is_ready());
        // Woken and done: nothing left to take back.
        drop(second);
        assert_eq!(woken.0.load(Ordering::SeqCst), 2);
    }

    /// The largest append fills a file but for its header and seal blocks, and with
    /// files of 4 GiB or more its batch (padding included) still fits a `u32` write.
    #[test]
    fn the_largest_append_fits_its_file_and_one_write() {
        for size in [
            64 << 10,
            100 << 20,
            (4 << 30) - 4096,
            4 << 30,
            8 << 30,
            1 << 40,
        ] {
            let max = max_entry_bytes_for(size);
            let batch = align_up(BATCH_HEADER_LEN + usize::try_from(max).unwrap()) as u64;
            assert!(batch <= u64::from(u32::MAX), "{size}: batch of {batch}");
            assert!(
                batch + 2 * BLOCK_SIZE as u64 <= size,
                "{size}: batch of {batch}"
            );
        }
        assert_eq!(max_entry_bytes_for(100 << 20), (100 << 20) - 8192 - 48);
    }
    use crate::file_at::cached_bytes;

    /// The active file's pages leave the page cache before the scan (which then
    /// reads the disk); a missing file is no error. (The temporary directory must
    /// be on a disk filesystem: a tmpfs keeps its pages.)
    #[test]
    fn the_active_file_is_synced_and_dropped_from_the_cache_before_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join(super::files::CURRENT);
        settle_active(&current).unwrap();
        std::fs::write(&current, vec![5u8; 256 << 10]).unwrap();
        assert!(cached_bytes(&current) > 0, "the write left no cached page");
        settle_active(&current).unwrap();
        assert_eq!(cached_bytes(&current), 0);
        assert_eq!(std::fs::read(&current).unwrap(), vec![5u8; 256 << 10]);
    }

    #[cfg(target_os = "linux")]
    /// Payload `i` of the write-back failure tests.
    fn payload(i: u64) -> bytes::Bytes {
        bytes::Bytes::from(vec![i as u8; 3000])
    }

    #[cfg(target_os = "linux")]
    /// The write-back failure tests' WAL (`FailingFs`): `interval`, so writes go
    /// through the page cache, synced only when asked; 1 MiB files.
    fn page_cache_config(backend: crate::wal::BackendKind) -> crate::wal::WalConfig {
        crate::wal::WalConfig {
            backend,
            sync_mode: crate::wal::SyncMode::Interval,
            sync_interval_ms: 60_000,
            max_file_size: 1 << 20,
            ..crate::wal::WalConfig::default()
        }
    }

    #[cfg(target_os = "linux")]
    /// A page-cache WAL of `backend` on a new `FailingExt4` (returned with the
    /// WAL's directory and configuration) whose first file is only reserved,
    /// never written: every batch lands in an unwritten extent.
    fn on_a_reserved_file(
        backend: crate::wal::BackendKind,
    ) -> (
        crate::file_at::FailingExt4,
        std::path::PathBuf,
        crate::wal::WalConfig,
        crate::wal::Wal,
    ) {
        let fs = crate::file_at::FailingExt4::mount();
        let dir = fs.path().join("wal");
        std::fs::create_dir(&dir).unwrap();
        let cfg = page_cache_config(backend);
        super::files::prepare_file(&dir, 1, cfg.max_file_size, super::files::Prealloc::Reserve)
            .unwrap();
        let (wal, _) = crate::wal::Wal::open(&dir, cfg.clone()).unwrap();
        (fs, dir, cfg, wal)
    }

    #[cfg(target_os = "linux")]
    /// Recovery yields exactly entries 1..=n, with their payloads.
    fn assert_recovers(rec: super::Recovery, n: u64, backend: crate::wal::BackendKind) {
        let got: Vec<_> = rec.map(|e| e.unwrap()).collect();
        assert_eq!(
            got.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "{backend}"
        );
        for e in &got {
            assert_eq!(e.data, payload(e.sequence - 1), "{backend}");
        }
    }

    #[cfg(target_os = "linux")]
    /// Appends entries `range` (waiting for each) and syncs.
    fn append_synced(wal: &crate::wal::Wal, range: std::ops::Range<u64>) {
        for i in range {
            wal.append("t", 0, payload(i)).wait().unwrap();
        }
        wal.sync().wait().unwrap();
    }

    /// Leaves what a process that stopped after a failed write-back leaves in
    /// `fs`: 10 synced entries, then a block written after the last sync that the
    /// kernel could not write back (the store lacks it, and nobody was told).
    /// Returns the active file held open, so that the kernel keeps the inode and
    /// the failure recorded on it.
    #[cfg(target_os = "linux")]
    fn leave_a_failed_write_back(
        fs: &crate::file_at::FailingFs,
        cfg: &crate::wal::WalConfig,
    ) -> std::fs::File {
        use crate::wal::Wal;
        let dir = fs.path();
        let (wal, _) = Wal::open(&dir, cfg.clone()).unwrap();
        append_synced(&wal, 0..10);
        wal.close().unwrap();
        let (wal, rec) = Wal::open(&dir, cfg.clone()).unwrap();
        let end = rec.files.last().unwrap().valid_end;
        drop(rec);
        wal.close().unwrap();
        let current = dir.join(super::files::CURRENT);
        let pinned = std::fs::File::open(&current).unwrap();

        fs.fail(Some(libc::EIO));
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&current)
                .unwrap();
            f.write_all_at(&[0xab; 4096], end).unwrap(); // into the page cache
        } // the write-back at close fails, and nobody is told
        fs.fail(None);
        let stored = std::fs::read(fs.backing().join(super::files::CURRENT)).unwrap();
        assert!(
            !stored[end as usize..][..4096].iter().all(|&b| b == 0xab),
            "{}: the store took the unsynced write after all",
            cfg.backend
        );
        pinned
    }

    /// A real write-back failure in the active file, left by the process before
    /// (`FailingFs`). The open's own sync meets the failure (a warning) and a
    /// second sync flushes what reached the disk, so the WAL's first sync after
    /// it does not fail for it; recovery returns what the store holds and later
    /// appends are durable. Both backends, writing through the page cache
    /// (`interval`). Without `settle_active` the first sync after the open failed
    /// with EIO and latched the WAL.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_real_write_back_failure_in_the_active_file_is_met_at_open() {
        use crate::wal::{BackendKind, Wal};
        for backend in [BackendKind::Std, BackendKind::Uring] {
            let fs = crate::file_at::FailingFs::mount();
            let dir = fs.path();
            let cfg = page_cache_config(backend);
            let _pinned = leave_a_failed_write_back(&fs, &cfg);
            let (wal, rec) = Wal::open(&dir, cfg.clone()).unwrap();
            assert_eq!(wal.backend(), backend);
            assert_recovers(rec, 10, backend);
            append_synced(&wal, 10..15);
            wal.close().unwrap();
            let (wal, rec) = Wal::open(&dir, cfg).unwrap();
            assert_recovers(rec, 15, backend);
            wal.close().unwrap();
        }
    }

    /// The same failure left behind, and the disk still failing at the open: the
    /// sync after the reported failure fails too, and the open refuses with an
    /// error naming the file, instead of treating entries it cannot make durable
    /// as synced. Once the disk works, the log opens with its 10 entries.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_open_whose_syncs_keep_failing_refuses_to_start() {
        use crate::wal::{BackendKind, Wal};
        for backend in [BackendKind::Std, BackendKind::Uring] {
            let fs = crate::file_at::FailingFs::mount();
            let dir = fs.path();
            let cfg = page_cache_config(backend);
            let _pinned = leave_a_failed_write_back(&fs, &cfg);
            fs.fail_fsyncs(Some(libc::EIO));
            match Wal::open(&dir, cfg.clone()) {
                Err(crate::Error::Io { op, path, .. }) => {
                    assert_eq!(op, "fdatasync", "{backend}");
                    assert_eq!(path, dir.join(super::files::CURRENT), "{backend}");
                }
                other => panic!("{backend}: open gave {:?}", other.map(|_| ())),
            }
            fs.fail_fsyncs(None);
            let (wal, rec) = Wal::open(&dir, cfg).unwrap();
            assert_recovers(rec, 10, backend);
            wal.close().unwrap();
        }
    }

    /// A write-back failure while the WAL runs (`FailingFs`, `interval`: entries
    /// are acknowledged once written to the page cache): the sync that covers
    /// them reports the failure, the WAL latches (later appends and syncs fail,
    /// never a false success), and a reopen recovers what the store holds, the
    /// entries synced before, and nothing the failed write-back lost.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_real_write_back_failure_fails_the_sync_and_latches_the_wal() {
        use crate::wal::{BackendKind, Wal};
        for backend in [BackendKind::Std, BackendKind::Uring] {
            let fs = crate::file_at::FailingFs::mount();
            let dir = fs.path();
            let cfg = page_cache_config(backend);
            let (wal, _) = Wal::open(&dir, cfg.clone()).unwrap();
            for i in 0..10 {
                wal.append("t", 0, payload(i)).wait().unwrap();
            }
            wal.sync().wait().unwrap();

            let other = wal.clone();
            fs.fail(Some(libc::EIO));
            for i in 10..15 {
                // Written to the page cache: acknowledged in interval mode.
                wal.append("t", 0, payload(i)).wait().unwrap();
            }
            let e = wal.sync().wait().unwrap_err();
            assert!(
                e.to_string().contains("Input/output error"),
                "{backend}: {e}"
            );
            fs.fail(None);
            assert!(
                wal.append("t", 0, payload(15)).wait().is_err(),
                "{backend}: an append after the failed sync succeeded"
            );
            assert!(
                wal.sync().wait().is_err(),
                "{backend}: a later sync succeeded"
            );
            assert!(
                wal.close().is_err(),
                "{backend}: the failed WAL closed cleanly"
            );
            // Nor does another handle's close report success for it.
            let e = other.close().unwrap_err();
            assert!(matches!(e, crate::Error::Failed { .. }), "{backend}: {e}");

            let (wal, rec) = Wal::open(&dir, cfg).unwrap();
            assert_recovers(rec, 10, backend);
            wal.close().unwrap();
        }
    }

    /// `every_write` through the page cache (`direct_io` off) with batches
    /// pipelined, and writes that start failing while they are in flight
    /// (`FailingFs`): no append is acknowledged whose bytes the store lacks. With
    /// two linked fsyncs of the file in flight, the later could take the error
    /// for the earlier batch's pages and the earlier then succeed
    /// (`Committer::syncs_must_not_overlap`). A reopen recovers every
    /// acknowledged entry, with its payload, and nothing after a gap.
    #[cfg(target_os = "linux")]
    #[test]
    fn no_append_is_acknowledged_past_a_failed_writeback_with_batches_pipelined() {
        use crate::wal::{BackendKind, SyncMode, Wal, WalConfig};
        for backend in [BackendKind::Std, BackendKind::Uring] {
            for round in 0..6u64 {
                let fs = crate::file_at::FailingFs::mount();
                let dir = fs.path();
                let cfg = WalConfig {
                    sync_mode: SyncMode::EveryWrite,
                    direct_io: Some(false),
                    max_batch_bytes: 16 << 10,
                    uring_group_writes: Some(false),
                    ..page_cache_config(backend)
                };
                let (wal, _) = Wal::open(&dir, cfg.clone()).unwrap();
                let pending: Vec<_> = (0..120u64)
                    .map(|i| {
                        if i == 20 + 15 * round {
                            fs.fail(Some(libc::EIO));
                        }
                        (i, wal.append("t", 0, payload(i)))
                    })
                    .collect();
                let acked: Vec<(u64, u64)> = pending
                    .into_iter()
                    .filter_map(|(i, c)| c.wait().ok().map(|s| (s, i)))
                    .collect();
                fs.fail(None);
                assert!(
                    acked.len() < 120,
                    "{backend} round {round}: no append failed"
                );
                drop(wal);
                let (wal, rec) = Wal::open(&dir, cfg).unwrap();
                let got: Vec<_> = rec.map(|e| e.unwrap()).collect();
                for (s, i) in &acked {
                    let e = got.iter().find(|e| e.sequence == *s).unwrap_or_else(|| {
                        panic!(
                            "{backend} round {round}: acknowledged entry {s} lost \
                             ({} acknowledged, {} recovered)",
                            acked.len(),
                            got.len()
                        )
                    });
                    assert_eq!(e.data, payload(*i), "{backend} round {round}");
                }
                wal.close().unwrap();
            }
        }
    }

    /// The same failure on ext4 (`FailingExt4`), which keeps the pages whose
    /// write-back failed cached as written, and reports the failure once: to
    /// the WAL's own sync, not to the next opener. So the reopen's sync
    /// succeeds and the cache still holds five entries the disk lacks; recovery
    /// must read the disk (`settle_active` drops the active file's pages) and
    /// return the ten synced entries, and appends after it must be durable.
    /// Without the drop the reopen failed: the scan validated the five cached
    /// entries, and replay, reading them again, found the disk's zeros ("batch
    /// changed since it was validated").
    #[cfg(target_os = "linux")]
    #[test]
    fn entries_whose_write_back_failed_on_ext4_are_not_read_back_from_the_cache() {
        use crate::wal::{BackendKind, Wal};
        for backend in [BackendKind::Std, BackendKind::Uring] {
            let fs = crate::file_at::FailingExt4::mount();
            let dir = fs.path().join("wal");
            let cfg = page_cache_config(backend);
            let append = |wal: &Wal, range: std::ops::Range<u64>| {
                for i in range {
                    wal.append("t", 0, payload(i)).wait().unwrap();
                }
            };
            // A clean close and a reopen leave the preparer thread nothing to
            // write while writes fail (the active file filled, next.wal kept),
            // once it has prepared next.wal: it fills the active file's tail
            // first, and a close cuts either short (a cut-short next.wal is
            // removed, to be prepared again by the reopened WAL).
            let (wal, _) = Wal::open(&dir, cfg.clone()).unwrap();
            append(&wal, 0..10);
            while !dir.join(super::files::NEXT).exists() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            wal.close().unwrap();
            let (wal, rec) = Wal::open(&dir, cfg.clone()).unwrap();
            assert_recovers(rec, 10, backend);

            fs.fail(Some(libc::EIO));
            append(&wal, 10..15); // acknowledged from the page cache
            let e = wal.sync().wait().unwrap_err();
            assert!(
                e.to_string().contains("Input/output error"),
                "{backend}: {e}"
            );
            assert!(
                wal.close().is_err(),
                "{backend}: the failed WAL closed cleanly"
            );
            fs.fail(None);
            let current = dir.join(super::files::CURRENT);
            assert_ne!(
                std::fs::read(&current).unwrap(),
                crate::file_at::read_direct(&current),
                "{backend}: the kernel kept no page as written that the disk lacks"
            );

            let (wal, rec) = Wal::open(&dir, cfg.clone()).unwrap();
            assert_recovers(rec, 10, backend);
            append(&wal, 10..13);
            wal.sync().wait().unwrap();
            wal.close().unwrap();
            assert_eq!(
                std::fs::read(&current).unwrap(),
                crate::file_at::read_direct(&current),
                "{backend}"
            );
            let (wal, rec) = Wal::open(&dir, cfg).unwrap();
            assert_recovers(rec, 13, backend);
            wal.close().unwrap();
        }
    }

    /// `streamline-wal` (through `WalReader` and `scan_dir_uncached`) reads
    /// what the disk holds, as recovery does: after the failure above, with the
    /// five entries cached as written and absent from the disk, it reports the
    /// ten synced entries, and the file's bytes on disk are unchanged. It used
    /// to read the cache, reporting fifteen entries recovery does not return.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_wal_tool_reads_the_disk_not_pages_whose_write_back_failed() {
        use crate::wal::{recovery, BackendKind, RecoveryMode, Wal, WalReader};
        let fs = crate::file_at::FailingExt4::mount();
        let dir = fs.path().join("wal");
        let cfg = page_cache_config(BackendKind::Std);
        let (wal, _) = Wal::open(&dir, cfg.clone()).unwrap();
        for i in 0..10 {
            wal.append("t", 0, payload(i)).wait().unwrap();
        }
        while !dir.join(super::files::NEXT).exists() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        wal.close().unwrap();
        let (wal, _) = Wal::open(&dir, cfg).unwrap();
        fs.fail(Some(libc::EIO));
        for i in 10..15 {
            wal.append("t", 0, payload(i)).wait().unwrap();
        }
        assert!(wal.sync().wait().is_err());
        assert!(wal.close().is_err());
        fs.fail(None);
        let current = dir.join(super::files::CURRENT);
        let on_disk = crate::file_at::read_direct(&current);
        assert_ne!(std::fs::read(&current).unwrap(), on_disk, "nothing cached");

        let reader = WalReader::open(&dir).unwrap();
        assert_eq!(reader.scan().last_sequence, 10);
        let seqs: Vec<u64> = reader
            .entries_from(1)
            .map(|e| e.unwrap().sequence)
            .collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        let scan = recovery::scan_dir_uncached(&dir, RecoveryMode::Strict).unwrap();
        assert_eq!(scan.last_sequence, 10);
        assert_eq!(crate::file_at::read_direct(&current), on_disk);
        assert_eq!(std::fs::read(&current).unwrap(), on_disk);
    }

    /// A sync that ext4 answers from an aborted journal (`super::journal`): the
    /// active file is reserved but never written, so each batch needs its extent
    /// converted. Five entries are written back (converted in the running
    /// transaction) but not synced when another file's journal commit fails and
    /// the journal aborts. The WAL's next sync must fail: its `fdatasync` finds
    /// the failed transaction gone and returns success (Linux 6.18), and after a
    /// remount the five entries are not on the disk. Recovery returns the ten
    /// entries synced before. Both backends, `interval` (so the test can write
    /// back without a sync). Without the journal check the sync succeeded.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_sync_answered_from_an_aborted_journal_fails() {
        use crate::wal::{BackendKind, Wal};
        for backend in [BackendKind::Std, BackendKind::Uring] {
            let (fs, dir, cfg, wal) = on_a_reserved_file(backend);
            for i in 0..10 {
                wal.append("t", 0, payload(i)).wait().unwrap();
            }
            wal.sync().wait().unwrap();
            // The next file's preparation is done (renamed into place after its
            // fsync, which would commit the conversions below).
            while !dir.join(super::files::NEXT).exists() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            for i in 10..15 {
                wal.append("t", 0, payload(i)).wait().unwrap();
            }
            let current = dir.join(super::files::CURRENT);
            let f = std::fs::File::open(&current).unwrap();
            super::files::write_back(&f, 0, cfg.max_file_size as usize).unwrap();
            drop(f);

            fs.fail(Some(libc::EIO));
            std::fs::write(fs.path().join("other"), b"x").unwrap();
            let dir_sync = std::fs::File::open(fs.path()).unwrap().sync_all();
            assert!(dir_sync.is_err(), "{backend}: the journal commit succeeded");
            let e = wal.sync().wait().unwrap_err();
            assert!(
                e.to_string().contains("journal check after fdatasync"),
                "{backend}: {e}"
            );
            assert!(
                wal.close().is_err(),
                "{backend}: the failed WAL closed cleanly"
            );
            fs.fail(None);
            fs.remount();

            let (wal, rec) = Wal::open(&dir, cfg).unwrap();
            assert_recovers(rec, 10, backend);
            wal.close().unwrap();
        }
    }

    /// A page-cache write into reserved, never-written space whose extent
    /// conversion failed after the data I/O (`docs/reliability.md`, "Syncs that
    /// return success for data that is not durable", cause 2): ext4 leaves the
    /// extent unwritten, `fdatasync` returns success, and the bytes read as
    /// zeros. Made here by turning the blocks of five written, unsynced entries
    /// back into an unwritten extent (`FALLOC_FL_ZERO_RANGE`) before the sync.
    /// The sync must fail, naming the file, and the WAL latch; recovery returns
    /// the ten entries synced before. The first sync, of ten entries written
    /// into reserved space and converted, passes. Both backends, `interval`
    /// with page-cache files, the active file only reserved (as appends leave
    /// it once they overtake its zero-fill). Without the mapping check the
    /// second sync and the close succeeded, and the reopen found zeros where
    /// the five entries had been (and refused the log, whose clean close had
    /// recorded them).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_sync_of_page_cache_writes_left_unmapped_fails() {
        use crate::wal::{BackendKind, Wal};
        for backend in [BackendKind::Std, BackendKind::Uring] {
            let (fs, dir, cfg, wal) = on_a_reserved_file(backend);
            assert!(!wal.direct_io(), "{backend}");
            append_synced(&wal, 0..10);
            let synced_end = super::BLOCK_SIZE as u64 + wal.stats().bytes_written;
            for i in 10..15 {
                wal.append("t", 0, payload(i)).wait().unwrap();
            }
            let stats = wal.stats();
            assert_eq!(stats.unwritten_batches, 15, "{backend}");
            let end = super::BLOCK_SIZE as u64 + stats.bytes_written;

            let current = dir.join(super::files::CURRENT);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&current)
                .unwrap();
            nix::fcntl::fallocate(
                &f,
                nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                synced_end as libc::off_t,
                (end - synced_end) as libc::off_t,
            )
            .unwrap();
            drop(f);
            let e = wal.sync().wait().unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("not all on the disk") && msg.contains("current.wal"),
                "{backend}: {e}"
            );
            assert!(
                wal.append("t", 0, payload(15)).wait().is_err(),
                "{backend}: the WAL took an append after a failed sync"
            );
            assert!(
                wal.close().is_err(),
                "{backend}: the failed WAL closed cleanly"
            );
            fs.remount();

            let (wal, rec) = Wal::open(&dir, cfg).unwrap();
            assert_recovers(rec, 10, backend);
            wal.close().unwrap();
        }
    }

    /// A device that starts failing writes at a random moment
    /// (`FailingExt4`: ext4 on a loop device whose writes fail). Four threads
    /// append entries of 100 B to 6 KB until their appends fail, into files of
    /// 128 KiB (a rotation every ~40 entries), so the failure meets a data
    /// write, a seal, a rename, a directory sync or the next file's
    /// preparation; the device fails with EIO or ENOSPC after 0-1,500
    /// acknowledgements. Odd seeds use `every_write` (`O_DIRECT`: the error
    /// comes back from the write itself), even ones `interval` (page-cache
    /// writes, acknowledged before they are durable) with the test thread
    /// calling `sync` in a loop. Every append after the failure fails with an
    /// error naming a WAL file. A reopen while the device still fails must not
    /// harm what it holds (in the runs looked at it failed, at the directory
    /// sync, or on a file system ext4 had turned read-only). Then the device
    /// works again and the file system is remounted, so the reopen reads what
    /// the device holds (the journal replayed, nothing cached), as after a
    /// crash. The sequences come back contiguous, nothing comes back that was never appended, every
    /// acknowledged entry (`every_write`) or every one a successful sync
    /// covered (`interval`) comes back with its payload, and the WAL takes
    /// appends after it. Six seeds per backend; `scripts/device-failure-soak.sh`
    /// runs more (`DEVICE_FAILURE_SEEDS`, `DEVICE_FAILURE_FIRST_SEED`).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_device_failing_at_random_moments_loses_no_acknowledged_entry() {
        use crate::file_at::device_failure::{env, mix, payload};
        use crate::wal::{BackendKind, SyncMode, Wal, WalConfig};
        use std::collections::HashMap;
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let data = |t: u64, i: u64| bytes::Bytes::from(payload(t, i, 100, 6000));
        // scripts/device-failure-soak.sh runs more seeds.
        let (seeds, first_seed) = (
            env("DEVICE_FAILURE_SEEDS", 6),
            env("DEVICE_FAILURE_FIRST_SEED", 1),
        );
        for backend in [BackendKind::Std, BackendKind::Uring] {
            for seed in first_seed..first_seed + seeds {
                let z = mix(seed.wrapping_add(backend as u64 * 1000));
                let fail_after = ((z >> 8) % 1500) as usize;
                let errno = if z & 1 == 0 { libc::EIO } else { libc::ENOSPC };
                let mode = if seed % 2 == 1 {
                    SyncMode::EveryWrite
                } else {
                    SyncMode::Interval
                };
                let what = format!(
                    "{backend} {mode:?} seed {seed} (after {fail_after} acks, errno {errno})"
                );

                let fs = crate::file_at::FailingExt4::mount();
                let dir = fs.path().join("wal");
                let cfg = WalConfig {
                    backend,
                    sync_mode: mode,
                    max_file_size: 128 << 10,
                    ..WalConfig::default()
                };
                let (wal, _) = Wal::open(&dir, cfg.clone()).unwrap();
                let acked = AtomicUsize::new(0);
                let mut synced = 0;
                let results: Vec<_> = std::thread::scope(|scope| {
                    let writers: Vec<_> = (0..4u64)
                        .map(|t| {
                            let (wal, acked) = (wal.clone(), &acked);
                            scope.spawn(move || {
                                let mut ok = Vec::new();
                                for i in 0.. {
                                    match wal.append("t", 0, data(t, i)).wait() {
                                        Ok(seq) => {
                                            ok.push((seq, i));
                                            acked.fetch_add(1, Relaxed);
                                        }
                                        Err(e) => return (ok, i, e.to_string()),
                                    }
                                }
                                unreachable!()
                            })
                        })
                        .collect();
                    // Writers stop at their first error: one before the
                    // injected failure is a defect, not a wait without end.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                    while acked.load(Relaxed) < fail_after
                        && !writers.iter().all(|w| w.is_finished())
                        && std::time::Instant::now() < deadline
                    {
                        match mode {
                            SyncMode::Interval => {
                                synced = synced.max(wal.sync().wait().unwrap());
                            }
                            _ => std::thread::sleep(std::time::Duration::from_micros(200)),
                        }
                    }
                    let reached = acked.load(Relaxed) >= fail_after;
                    fs.fail(Some(errno));
                    let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
                    assert!(
                        reached,
                        "{what}: {} of {fail_after} appends acknowledged before the writers \
                         stopped or 120 s passed: {:?}",
                        acked.load(Relaxed),
                        results.iter().map(|r| &r.2).collect::<Vec<_>>()
                    );
                    results
                });
                for (_, _, e) in &results {
                    assert!(e.contains(dir.to_str().unwrap()), "{what}: {e}");
                }
                let _ = wal.close(); // fails, unless the failure met nothing unsynced
                                     // A reopen while the device still fails may read but must not
                                     // harm what the device holds (checked after the remount).
                let early = match Wal::open(&dir, cfg.clone()) {
                    Err(e) => format!("fails: {e}"),
                    Ok((wal, rec)) => {
                        let recovered = rec.count();
                        let appended = wal.append("t", 0, data(8, 0)).wait();
                        let synced = wal.sync().wait();
                        let closed = wal.close();
                        format!("opens ({recovered} recovered), append {appended:?}, sync {synced:?}, close {closed:?}")
                    }
                };
                fs.fail(None);
                fs.remount();

                let (wal, rec) =
                    Wal::open(&dir, cfg.clone()).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
                let got: HashMap<u64, bytes::Bytes> = rec
                    .map(|e| e.unwrap())
                    .map(|e| (e.sequence, e.data))
                    .collect();
                let n = got.len() as u64;
                assert!((1..=n).all(|s| got.contains_key(&s)), "{what}: a gap");
                assert!(n >= synced, "{what}: {n} recovered, {synced} synced");
                let acked = results.iter().map(|r| r.0.len()).sum::<usize>();
                eprintln!("device-failure: {what}: acknowledged {acked} synced {synced} recovered {n}; first error: {}; reopen while failing {early}", results[0].2);
                let durable = |seq: u64| mode == SyncMode::EveryWrite || seq <= synced;
                // Every entry appended: which writer's which append it was.
                let mut appended = HashMap::new();
                for (t, (ok, tried, _)) in results.iter().enumerate() {
                    for (seq, i) in ok.iter().filter(|(seq, _)| durable(*seq)) {
                        let d = data(t as u64, *i);
                        assert_eq!(got.get(seq), Some(&d), "{what}: acknowledged {seq} lost");
                    }
                    appended.extend((0..=*tried).map(|i| (data(t as u64, i), (t as u64, i))));
                }
                appended.insert(data(8, 0), (8, 0)); // by the reopen while failing
                                                     // Each writer's entries once each, in the order appended (its
                                                     // next only after its last was answered): an entry recovered
                                                     // twice, or reordered, is data invented.
                let mut last_of: HashMap<u64, u64> = HashMap::new();
                for seq in 1..=n {
                    let Some(&(t, i)) = appended.get(&got[&seq]) else {
                        panic!("{what}: recovery returned at {seq} an entry never appended");
                    };
                    if let Some(before) = last_of.insert(t, i) {
                        assert!(
                            before < i,
                            "{what}: at {seq} writer {t}'s append {i} after its append {before}"
                        );
                    }
                }
                for i in 0..10 {
                    let seq = wal.append("t", 0, data(9, i)).wait().unwrap();
                    assert_eq!(seq, n + 1 + i, "{what}");
                }
                wal.close().unwrap();
                let (wal, rec) = Wal::open(&dir, cfg).unwrap();
                assert_eq!(rec.count() as u64, n + 10, "{what}");
                wal.close().unwrap();
            }
        }
    }

    /// A real read error while the WAL opens (`FailingExt4`, reads failing at
    /// the device): the open fails with an I/O error naming the file and
    /// changes nothing, and once reads work again everything is recovered.
    /// A read error must never pass for the end of the log. Both backends.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_real_read_error_at_open_fails_the_open_and_loses_nothing() {
        use crate::wal::{BackendKind, Wal};
        for backend in [BackendKind::Std, BackendKind::Uring] {
            let fs = crate::file_at::FailingExt4::mount();
            let dir = fs.path().join("wal");
            let cfg = page_cache_config(backend);
            let (wal, _) = Wal::open(&dir, cfg.clone()).unwrap();
            for i in 0..10 {
                wal.append("t", 0, payload(i)).wait().unwrap();
            }
            wal.close().unwrap();
            let snapshot = |dir: &std::path::Path| {
                let mut files: Vec<_> = std::fs::read_dir(dir)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
                    .collect();
                files.sort();
                files
            };
            let before = snapshot(&dir);

            fs.fail_reads(Some(libc::EIO));
            let e = Wal::open(&dir, cfg.clone())
                .map(|_| ())
                .unwrap_err()
                .to_string();
            fs.fail_reads(None);
            assert!(
                e.contains("Input/output error") && e.contains(dir.to_str().unwrap()),
                "{backend}: {e}"
            );
            assert!(
                snapshot(&dir) == before,
                "{backend}: the failed open changed the WAL"
            );

            let (wal, rec) = Wal::open(&dir, cfg).unwrap();
            assert_recovers(rec, 10, backend);
            wal.close().unwrap();
        }
    }

    #[test]
    fn the_ring_holds_a_completion_for_everything_in_flight() {
        for in_flight in 1..=64 {
            let entries = ring_entries(in_flight);
            assert!(entries.is_power_of_two() && entries >= 64);
            // The completion queue has 2 × entries slots.
            assert!(
                2 * entries as usize > 2 * in_flight,
                "max_in_flight {in_flight}"
            );
        }
        assert_eq!(ring_entries(8), 64);
        assert_eq!(ring_entries(63), 64);
        assert_eq!(ring_entries(64), 128);
    }

    #[cfg(target_os = "linux")]
    /// The rotation tests' WAL: durable page-cache writes (the rotation also
    /// opens the new file for the mapping check), 64 KiB files of 14 entries
    /// of [`payload`]'s size, one per batch.
    fn rotating_config(backend: crate::wal::BackendKind) -> crate::wal::WalConfig {
        crate::wal::WalConfig {
            backend,
            sync_mode: crate::wal::SyncMode::EveryWrite,
            direct_io: Some(false),
            max_file_size: crate::wal::WalConfig::MIN_FILE_SIZE,
            max_batch_bytes: 4096,
            ..crate::wal::WalConfig::default()
        }
    }

    /// A checkpoint whose directory fsync after retiring files failed left
    /// nothing to retire for the next one, which returned without an fsync:
    /// the retirements stayed undurable with every later checkpoint a
    /// success. Each later checkpoint fsyncs the directory until one does.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_fsync_after_retiring_files_is_done_again_by_the_next_checkpoint() {
        use crate::wal::{BackendKind, Wal};
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::wal::WalConfig {
            retention_files: 0,
            ..rotating_config(BackendKind::Std)
        };
        let (wal, _) = Wal::open(dir.path(), cfg).unwrap();
        let mut last = 0;
        for i in 0..40 {
            last = wal.append("t", 0, payload(i)).wait().unwrap();
        }
        assert!(wal.stats().rotations >= 2);
        let failing = &wal.inner.core.fail_retire_syncs;
        failing.store(1, SeqCst);
        assert!(wal.checkpoint(last).is_err(), "the injected fsync failure");
        assert!(crate::wal::files::list_archived(dir.path())
            .unwrap()
            .is_empty());
        // Nothing left to retire: the next checkpoint still fsyncs (here it
        // fails again), and the one after it succeeds.
        failing.store(1, SeqCst);
        assert!(wal.checkpoint(last).is_err(), "the fsync is tried again");
        wal.checkpoint(last).unwrap();
        // Durable now: a checkpoint with nothing to retire fsyncs nothing.
        failing.store(1, SeqCst);
        wal.checkpoint(last).unwrap();
        assert_eq!(failing.load(SeqCst), 1);
        wal.close().unwrap();
    }

    /// A rotation that met a passing shortage of file descriptors (EMFILE)
    /// failed the WAL for good: every later append was refused until a
    /// restart. Its steps that open a file are tried again now: a shortage
    /// that passes within the last try costs nothing, and every entry is
    /// recovered in order.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_rotation_short_of_file_descriptors_for_a_moment_goes_on() {
        use crate::wal::{files::FD_RETRY_WAITS_MS, BackendKind, Wal};
        use std::sync::atomic::Ordering::SeqCst;
        for backend in [BackendKind::Std, BackendKind::Uring] {
            let dir = tempfile::tempdir().unwrap();
            let (wal, _) = Wal::open(dir.path(), rotating_config(backend)).unwrap();
            // Every try but the last fails.
            let shortage = &wal.inner.core.fail_rotation_opens;
            shortage.store(FD_RETRY_WAITS_MS.len() as u32, SeqCst);
            for i in 0..40 {
                let seq = wal.append("t", 0, payload(i)).wait().unwrap();
                assert_eq!(seq, i + 1, "{backend}");
            }
            assert_eq!(shortage.load(SeqCst), 0, "{backend}: the shortage was met");
            assert!(wal.stats().rotations >= 2, "{backend}");
            assert!(wal.failure().is_none(), "{backend}");
            wal.close().unwrap();
            let (wal, rec) = Wal::open(dir.path(), rotating_config(backend)).unwrap();
            assert_recovers(rec, 40, backend);
            wal.close().unwrap();
        }
    }

    /// The files of a WAL whose first rotation failed, as they were before it:
    /// `current.wal` is still file 1 (sealed), nothing is archived, and the
    /// prepared `next.wal` is file 2.
    #[cfg(target_os = "linux")]
    fn assert_first_rotation_undone(dir: &std::path::Path, why: &str) {
        use crate::wal::files;
        assert_eq!(
            files::list_archived(dir).unwrap(),
            Vec::new(),
            "{why}: a file was archived"
        );
        let number = |name| files::read_header(&dir.join(name)).unwrap().file_number;
        assert_eq!(number(files::CURRENT), 1, "{why}: current.wal");
        assert_eq!(number(files::NEXT), 2, "{why}: next.wal");
    }

    /// A shortage of file descriptors that outlasts the last try fails the
    /// WAL with the error of the step that met it, naming its path: every
    /// append waiting for the rotation and every later one gets it, and every
    /// acknowledged entry is recovered, nothing else. Every step of a
    /// rotation that takes a descriptor comes before its renames: a shortage
    /// for good at any of them (the first `skip` tries succeed) leaves
    /// `current.wal` in place and nothing archived. The directory fsync after
    /// the renames opened the directory, and the new file was opened under
    /// its new name: a shortage there failed the WAL with the active file
    /// archived and the next one active.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_rotation_short_of_file_descriptors_for_good_fails_the_wal() {
        use crate::error::Error;
        use crate::wal::{files::FD_RETRY_WAITS_MS, BackendKind, Wal};
        use std::sync::atomic::Ordering::SeqCst;
        for backend in [BackendKind::Std, BackendKind::Uring] {
            // How many opens a rotation tries when nothing is short.
            let dir = tempfile::tempdir().unwrap();
            let (wal, _) = Wal::open(dir.path(), rotating_config(backend)).unwrap();
            for i in 0..20 {
                wal.append("t", 0, payload(i)).wait().unwrap();
            }
            assert_eq!(wal.stats().rotations, 1, "{backend}");
            let steps = wal.inner.core.rotation_open_tries.load(SeqCst);
            assert!(steps >= 1, "{backend}: {steps} opens");
            wal.close().unwrap();

            for skip in 0..steps {
                let why = format!("{backend}, short from open {skip} of {steps}");
                let dir = tempfile::tempdir().unwrap();
                let (wal, _) = Wal::open(dir.path(), rotating_config(backend)).unwrap();
                let core = &wal.inner.core;
                core.skip_rotation_opens.store(skip, SeqCst);
                core.fail_rotation_opens
                    .store(FD_RETRY_WAITS_MS.len() as u32 + 1, SeqCst);
                // Many appends outstanding when the rotation fails.
                let pending: Vec<_> = (0..40).map(|i| wal.append("t", 0, payload(i))).collect();
                let results: Vec<_> = pending.into_iter().map(|c| c.wait()).collect();
                let acked = results.iter().take_while(|r| r.is_ok()).count();
                assert!(acked > 0 && acked < 40, "{why}: {acked} acknowledged");
                assert_first_rotation_undone(dir.path(), &why);
                for (i, r) in results.iter().enumerate().take(acked) {
                    assert_eq!(*r.as_ref().unwrap(), i as u64 + 1, "{why}");
                }
                for r in &results[acked..] {
                    let Err(Error::Failed { cause }) = r else {
                        panic!("{why}: {r:?} after a failed rotation");
                    };
                    assert_eq!(cause.raw_os_error(), Some(libc::EMFILE), "{why}");
                    let text = cause.to_string();
                    assert!(text.contains(dir.path().to_str().unwrap()), "{why}: {text}");
                    if skip == 0 {
                        assert!(
                            text.contains("open") && text.contains(crate::wal::files::NEXT),
                            "{why}: {text}"
                        );
                    }
                }
                assert_eq!(core.fail_rotation_opens.load(SeqCst), 0, "{why}: tries");
                let later = wal.append("t", 0, payload(99)).wait();
                assert!(matches!(later, Err(Error::Failed { .. })), "{why}");
                assert!(wal.close().is_err(), "{why}");
                assert_first_rotation_undone(dir.path(), &why);
                let (wal, rec) = Wal::open(dir.path(), rotating_config(backend)).unwrap();
                assert_recovers(rec, acked as u64, backend);
                // Appends go on, into the prepared file.
                for i in acked as u64..40 {
                    assert_eq!(
                        wal.append("t", 0, payload(i)).wait().unwrap(),
                        i + 1,
                        "{why}"
                    );
                }
                wal.close().unwrap();
                let (wal, rec) = Wal::open(dir.path(), rotating_config(backend)).unwrap();
                assert_recovers(rec, 40, backend);
                wal.close().unwrap();
            }
        }
    }

    /// A rotation short of file descriptors calls the configured
    /// `on_descriptor_shortage` before each try again (the broker closes its
    /// cached segment read handles there): a shortage that would outlast
    /// every try passes once the hook has freed descriptors, and the rotation
    /// goes on. The hook finds the files as they were: nothing is renamed
    /// before every descriptor is taken. Before, a rotation waited ~62 ms for
    /// descriptors that nothing released and failed the WAL.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_rotation_short_of_file_descriptors_asks_for_descriptors_and_goes_on() {
        use crate::wal::{BackendKind, ShortageHook, Wal, WalConfig};
        use std::sync::{
            atomic::{AtomicU32, Ordering::SeqCst},
            Arc, OnceLock,
        };
        for backend in [BackendKind::Std, BackendKind::Uring] {
            let dir = tempfile::tempdir().unwrap();
            // The injected shortage the hook ends: what it frees.
            let shortage: Arc<OnceLock<Arc<AtomicU32>>> = Arc::new(OnceLock::new());
            let calls = Arc::new(AtomicU32::new(0));
            let after_renames = Arc::new(AtomicU32::new(0));
            let hook = {
                let (shortage, calls) = (Arc::clone(&shortage), Arc::clone(&calls));
                let after_renames = Arc::clone(&after_renames);
                let dir = dir.path().to_path_buf();
                ShortageHook::new(move || {
                    calls.fetch_add(1, SeqCst);
                    if !crate::wal::files::list_archived(&dir).unwrap().is_empty() {
                        after_renames.fetch_add(1, SeqCst);
                    }
                    if let Some(s) = shortage.get() {
                        s.store(0, SeqCst);
                    }
                })
            };
            let cfg = WalConfig {
                on_descriptor_shortage: Some(hook),
                ..rotating_config(backend)
            };
            assert!(format!("{cfg:?}").contains("on_descriptor_shortage: Some("));
            let (wal, _) = Wal::open(dir.path(), cfg.clone()).unwrap();
            let injected = Arc::clone(&wal.inner.core.fail_rotation_opens);
            // Short for good, as far as the tries go.
            injected.store(u32::MAX, SeqCst);
            shortage.set(injected).unwrap();
            for i in 0..20 {
                let seq = wal.append("t", 0, payload(i)).wait().unwrap();
                assert_eq!(seq, i + 1, "{backend}");
            }
            assert_eq!(wal.stats().rotations, 1, "{backend}");
            assert!(wal.failure().is_none(), "{backend}");
            assert_eq!(calls.load(SeqCst), 1, "{backend}: hook calls");
            assert_eq!(
                after_renames.load(SeqCst),
                0,
                "{backend}: short of descriptors after the renames"
            );
            wal.close().unwrap();
            let (wal, rec) = Wal::open(dir.path(), cfg).unwrap();
            assert_recovers(rec, 20, backend);
            wal.close().unwrap();
        }
    }

    /// Requests queued behind a close whose final fdatasync failed were
    /// dropped with the channel and answered `Closed`, as after a clean
    /// close: a sync among them read as if the close had made the entries
    /// durable, and the appends' bytes stayed in the pending count. They get
    /// the failure now, and after a clean close `Closed`, with their bytes
    /// released either way.
    #[test]
    fn requests_queued_behind_a_close_get_its_outcome() {
        use crate::error::Error;
        use crate::wal::sim::{Fault, SimDisk, SimPlan};
        use crate::wal::{BackendKind, SyncMode, Wal, WalConfig};
        let config = WalConfig {
            backend: BackendKind::Std,
            sync_mode: SyncMode::Interval,
            // No interval fsync runs during the test.
            sync_interval_ms: 600_000,
            max_file_size: WalConfig::MIN_FILE_SIZE,
            max_batch_bytes: 4096,
            ..WalConfig::default()
        };
        for close_fails in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            // Operations: the first entry's write, the sync held below, the
            // second entry's write, and the close's fdatasync, which fails.
            let disk = SimDisk::new(SimPlan {
                fault: close_fails.then_some((2, Fault::SyncEio)),
                ..SimPlan::plain(1)
            });
            let (wal, _) = Wal::open_sim(dir.path(), config.clone(), &disk).unwrap();
            let bytes = |b: &'static [u8]| bytes::Bytes::from_static(b);
            wal.append("t", 0, bytes(b"first")).wait().unwrap();
            // The commit thread waits at the held sync while requests queue.
            disk.hold_syncs();
            let sync = wal.sync();
            while !disk.sync_held() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let written = wal.append("t", 0, bytes(b"written before the close"));
            let closer = {
                let wal = wal.clone();
                std::thread::spawn(move || wal.close())
            };
            while wal.inner.tx.len() < 2 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let behind = wal.append("t", 0, bytes(b"behind the close"));
            let sync_behind = wal.sync();
            assert_eq!(wal.inner.tx.len(), 4);
            disk.release_syncs();
            sync.wait().unwrap();
            written.wait().unwrap();
            let closed = closer.join().unwrap();
            let behind = behind.wait();
            let sync_behind = sync_behind.wait();
            if close_fails {
                let e = closed.expect_err("the close's fdatasync failed");
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                for r in [behind, sync_behind] {
                    let Err(Error::Failed { cause }) = r else {
                        panic!("{r:?} behind a failed close");
                    };
                    assert_eq!(cause.raw_os_error(), Some(libc::EIO), "{cause}");
                }
            } else {
                closed.unwrap();
                assert!(matches!(behind, Err(Error::Closed)), "{behind:?}");
                assert!(matches!(sync_behind, Err(Error::Closed)), "{sync_behind:?}");
            }
            assert_eq!(wal.stats().pending_bytes, 0, "close fails: {close_fails}");
        }
    }

    /// An append found usable before a close, and sent once the commit
    /// thread had gone, was answered `Closed` with its bytes left in the
    /// pending count for good (`stats().pending_bytes` never came back to 0).
    /// Its room is given back now.
    #[test]
    fn an_append_sent_after_the_commit_thread_ended_gives_its_room_back() {
        use crate::error::Error;
        use crate::wal::commit::Entries;
        use crate::wal::{BackendKind, Wal, WalConfig};
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            backend: BackendKind::Std,
            max_file_size: WalConfig::MIN_FILE_SIZE,
            ..WalConfig::default()
        };
        let (wal, _) = Wal::open(dir.path(), config).unwrap();
        let late = wal.clone();
        wal.close().unwrap();
        // As an append that passed its checks and reserved its room just
        // before the close ended.
        let data = bytes::Bytes::from_static(b"late");
        let bytes = late.check_record("t", &data).unwrap();
        late.inner.core.reserve_blocking(bytes).unwrap();
        assert_eq!(late.stats().pending_bytes, bytes as u64);
        let r = late
            .send_reserved(Entries::record("t", 0, data), bytes)
            .wait();
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
        assert_eq!(late.stats().pending_bytes, 0);
    }

    /// A backend that panics in `reap` once armed, with the write it was given
    /// still in flight (a bug in the commit thread, unwinding), and whose
    /// waits fail afterwards (as an `io_uring_enter` refused at that point).
    struct PanicsInReap {
        inner: crate::wal::backend::std_backend::StdBackend,
        armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
        dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
        panicked: bool,
    }

    impl Drop for PanicsInReap {
        fn drop(&mut self) {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl crate::wal::backend::Backend for PanicsInReap {
        fn kind(&self) -> crate::wal::BackendKind {
            self.inner.kind()
        }
        fn open(&mut self, path: &std::path::Path) -> crate::wal::Result<()> {
            self.inner.open(path)
        }
        fn renamed(&mut self, path: &std::path::Path) {
            self.inner.renamed(path);
        }
        fn submit(
            &mut self,
            token: u64,
            op: crate::wal::backend::Op<'_>,
        ) -> crate::wal::Result<()> {
            self.inner.submit(token, op)
        }
        fn reap(
            &mut self,
            wait: bool,
            out: &mut Vec<crate::wal::backend::Done>,
            bufs: crate::wal::backend::BufLookup<'_>,
        ) -> crate::wal::Result<()> {
            if self.panicked {
                return Err(crate::wal::Error::io(
                    "io_uring_enter (wait)",
                    "test",
                    std::io::Error::from_raw_os_error(libc::EIO),
                ));
            }
            if self.armed.load(std::sync::atomic::Ordering::SeqCst) && self.inner.in_flight() > 0 {
                self.panicked = true;
                panic!("injected: a bug in the commit thread with a write in flight");
            }
            self.inner.reap(wait, out, bufs)
        }
        fn writes_at_reap(&self) -> bool {
            self.inner.writes_at_reap()
        }
        fn in_flight(&self) -> usize {
            self.inner.in_flight()
        }
    }

    /// A commit thread that panics with a write in flight and cannot wait for
    /// it leaks the backend and the write's buffer, as a failure whose reap
    /// fails does: freeing them could close a ring, or free a buffer, the
    /// kernel is still using. Before, the committer's fields were dropped in
    /// order, the backend (closing the ring) and then the buffers.
    #[cfg(unix)]
    #[test]
    fn a_commit_thread_panic_that_cannot_wait_for_its_writes_leaks_them() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let (armed, dropped) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let config = super::WalConfig {
            sync_mode: super::SyncMode::EveryWrite,
            ..super::WalConfig::default()
        };
        let (a, d) = (Arc::clone(&armed), Arc::clone(&dropped));
        let (wal, _) = super::Wal::open_with(dir.path(), config, move |_, _, path| {
            let mut inner = crate::wal::backend::std_backend::StdBackend::new(false);
            crate::wal::backend::Backend::open(&mut inner, path)?;
            Ok(Box::new(PanicsInReap {
                inner,
                armed: a,
                dropped: d,
                panicked: false,
            }))
        })
        .unwrap();
        assert_eq!(
            wal.append("t", 0, bytes::Bytes::from_static(b"a"))
                .wait()
                .unwrap(),
            1
        );
        armed.store(true, SeqCst);
        let r = wal.append("t", 0, bytes::Bytes::from_static(b"b")).wait();
        assert!(r.is_err(), "{r:?}");
        let core = Arc::clone(&wal.inner.core);
        assert!(wal.close().is_err());
        assert!(core.ring_abandoned.load(SeqCst));
        assert!(
            !dropped.load(SeqCst),
            "the backend was dropped with a write in flight"
        );
    }
}
