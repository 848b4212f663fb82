//! Disk space kept back for the writes that free space.
//!
//! Retention deletes a partition's expired segments only once a producer
//! snapshot of the segments it keeps is durable (the removed ones may hold
//! the only record of their producers), and a deleted topic's committed
//! positions are dropped by rewriting its groups' files. Both write before
//! they free anything: on a disk that something else filled, every pass
//! failed for want of the few blocks those writes need, and the space that
//! retention was there to give back stayed taken as long as the disk stayed
//! full.
//!
//! So the broker holds [`RESERVE_BYTES`] (`--space-reserve-bytes`) in a file of its own,
//! `space.reserve` in the data directory, allocated at the start (the blocks
//! are taken: `fallocate` on Linux, zeros written elsewhere). A write that
//! frees space and fails for want of it gives the reserve back
//! ([`SpaceReserve::release`]) and is tried again; the reserve is taken
//! again ([`SpaceReserve::refill`]) once the file system has room for it
//! twice over, so that taking it leaves at least as much free (after a start
//! that failed for want of space and was made again, once it has room for
//! it: see `TopicManager::new`). Produces are refused while it is not held
//! for want of room, or held with less than its size free besides
//! ([`SpaceReserve::short`]). Nothing else
//! reads the file: a crash leaves it as it was, and the next start holds it
//! as it finds it (or allocates it again).

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

/// The reserve's default size: room for the producer snapshot or group files
/// that the first pass on a full disk writes before its removals free more
/// (a partition's snapshot larger than this, some 25,000 live idempotent
/// producers, is not covered).
pub(crate) const RESERVE_BYTES: u64 = 4 << 20;

/// The reserve's file in the data directory.
pub(crate) const RESERVE_NAME: &str = "space.reserve";

/// How often a produce refused for want of the reserve
/// ([`SpaceReserve::short`]) has it looked for room again, at most.
const RETAKE_EVERY: Duration = Duration::from_secs(1);

/// The reserve: its file, and whether the file holds its blocks now.
#[derive(Debug)]
pub(crate) struct SpaceReserve {
    path: PathBuf,
    bytes: u64,
    held: Mutex<bool>,
    /// Short of room: not held (given back to a write that failed for want of
    /// space, or not taken because the file system had too little free), or
    /// held with less than its size free besides. Produces are refused
    /// meanwhile (see [`SpaceReserve::short`]).
    short: AtomicBool,
    /// When a produce last had the reserve look for room.
    last_retake: Mutex<Option<Instant>>,
}

impl SpaceReserve {
    /// [`SpaceReserve::open_taking`], taking it (tests).
    #[cfg(test)]
    pub(crate) fn open(data_dir: &Path, bytes: u64) -> SpaceReserve {
        Self::open_taking(data_dir, bytes, true)
    }

    /// The reserve of `bytes` at `space.reserve` in `data_dir`, taken when the
    /// file system has room for it (see [`SpaceReserve::refill`]).
    /// A reserve an earlier run left whole is held as it is, without a new
    /// allocation: a start on a nearly full disk (after produces failed for
    /// want of space) could not take it again, and would hold its blocks
    /// without knowing it, never giving them back. One left in part is
    /// removed first. With `bytes` 0 nothing is kept, and a file an earlier
    /// run left is removed. One left whole at another size (the setting
    /// changed) is cut to `bytes` when larger; when smaller, it is kept at
    /// its size for this run, with a warning, unless the file system has
    /// room to take `bytes` (twice over): removing it first would leave a
    /// nearly full disk without any reserve.
    /// A reserve it does not find whole is left untaken unless `take` (a
    /// start made again for want of space takes it after its own writes, see
    /// `TopicManager::new`).
    pub(crate) fn open_taking(data_dir: &Path, bytes: u64, take: bool) -> SpaceReserve {
        let mut reserve = SpaceReserve {
            path: data_dir.join(RESERVE_NAME),
            bytes,
            held: Mutex::new(false),
            short: AtomicBool::new(false),
            last_retake: Mutex::new(None),
        };
        let whole = std::fs::symlink_metadata(&reserve.path)
            .ok()
            .filter(|m| m.is_file() && m.len() > 0 && holds_blocks(m, m.len()))
            .map(|m| m.len());
        let roomy = || free_bytes(data_dir).is_none_or(|free| free >= bytes.saturating_mul(2));
        if bytes > 0 && whole.is_some_and(|len| len > bytes) {
            let cut = std::fs::OpenOptions::new()
                .write(true)
                .open(&reserve.path)
                .and_then(|f| f.set_len(bytes));
            if let Err(e) = cut {
                tracing::warn!(file = %reserve.path.display(), error = %e, "could not cut the space reserve to its new size; taken again");
            }
        } else if let Some(len) = whole.filter(|&len| bytes > 0 && len < bytes && !roomy()) {
            tracing::warn!(file = %reserve.path.display(), bytes = len, wanted = bytes, "the space reserve stays at its earlier size for this run: the file system has less than twice the new size free");
            reserve.bytes = len;
        }
        if bytes == 0 {
            reserve.remove();
        } else if reserve.in_place() {
            *reserve.held.lock().unwrap_or_else(PoisonError::into_inner) = true;
            reserve.settle_short();
            if reserve.is_short() {
                tracing::warn!(file = %reserve.path.display(), bytes = reserve.bytes, "the space reserve is held, but the file system has less than its size free besides: produces are refused until it has (free space on the data disk, or lower --space-reserve-bytes)");
            }
        } else {
            reserve.remove();
            if !take {
                return reserve;
            }
            reserve.refill();
            if !reserve.is_held_now() {
                tracing::warn!(file = %reserve.path.display(), bytes, "the space reserve is not taken: the file system has less than twice its size free; it is taken once it has, and produces are refused until then (free space on the data disk, or lower --space-reserve-bytes)");
            }
        }
        reserve
    }

    /// Whether the reserve's file is there, a regular file of the reserve's
    /// size holding its blocks (one left by a run with another size is not:
    /// it is taken again at this size).
    fn in_place(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.is_file() && m.len() == self.bytes && holds_blocks(&m, self.bytes))
    }

    /// Whether the reserve holds its blocks.
    #[cfg(test)]
    pub(crate) fn is_held(&self) -> bool {
        self.is_held_now()
    }

    pub(crate) fn is_held_now(&self) -> bool {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the reserve's blocks back to the file system, so that a write
    /// that failed for want of space can be tried again: whether there was
    /// anything to give.
    pub(crate) fn release(&self) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if !*held {
            return false;
        }
        *held = false;
        self.short.store(true, Ordering::Release);
        tracing::warn!(file = %self.path.display(), bytes = self.bytes, "the disk is full: giving back the space kept for the writes that free space; produces are refused until it is taken again");
        // Under the lock: a refill meanwhile would make the file anew, and
        // this removal would then take it away from a reserve marked held.
        self.remove();
        true
    }

    /// Runs `write`, a write that frees space; when it fails for want of
    /// space and the reserve has blocks to give, gives them back and runs it
    /// again.
    ///
    /// # Errors
    /// The last run's.
    pub(crate) fn retry<T>(&self, mut write: impl FnMut() -> crate::Result<T>) -> crate::Result<T> {
        match write() {
            Err(e) if out_of_space(&e) && self.release() => write(),
            done => done,
        }
    }

    /// Takes the reserve's blocks when it does not hold them and the file
    /// system has room for the reserve twice over (taking it leaves as much
    /// for the writes it does not cover); a failed allocation removes the
    /// file, which would otherwise keep whatever part it got.
    pub(crate) fn refill(&self) {
        self.refill_leaving(self.bytes);
    }

    /// [`SpaceReserve::refill`], taking the reserve when the file system has
    /// room for it and `leaving` more.
    pub(crate) fn refill_leaving(&self, leaving: u64) {
        if self.bytes == 0 {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if *held {
            if self.in_place() {
                // Taken with less than its size free besides (a start made
                // again for want of space): short until that much is free.
                if self.is_short() {
                    self.settle_short();
                }
                return;
            }
            // Removed from outside (by hand, on a full disk): taken again.
            tracing::warn!(file = %self.path.display(), "the space reserve's file went; taking it again");
            *held = false;
        }
        match free_bytes(self.path.parent().unwrap_or(Path::new("."))) {
            Some(free) if free < self.bytes.saturating_add(leaving) => {
                tracing::debug!(
                    free,
                    bytes = self.bytes,
                    "no room to keep the space reserve yet"
                );
                self.short.store(true, Ordering::Release);
                return;
            }
            _ => {}
        }
        match take(&self.path, self.bytes) {
            Ok(()) => {
                *held = true;
                tracing::debug!(file = %self.path.display(), bytes = self.bytes, "space reserve taken");
                // The free space tests set is taken from as the file system's is.
                #[cfg(test)]
                TEST_FREE_BYTES
                    .with(|f| f.set(f.get().map(|free| free.saturating_sub(self.bytes))));
                self.settle_short();
            }
            Err(e) => {
                // For want of room, produces wait for it; otherwise (a file
                // system that cannot allocate it) they do not: nothing would
                // ever give it.
                let for_room = matches!(
                    e.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                );
                self.short.store(for_room, Ordering::Release);
                tracing::warn!(file = %self.path.display(), bytes = self.bytes, error = %e, "could not take the space kept for the writes that free space; tried again after each retention pass");
                self.remove();
            }
        }
    }

    /// With the reserve held: short (produces refused) unless the file system
    /// has as much again free, so that producers cannot fill the room the
    /// writes it does not cover need (a start made again for want of space
    /// takes it with less).
    fn settle_short(&self) {
        let roomy = free_bytes(self.path.parent().unwrap_or(Path::new(".")))
            .is_none_or(|free| free >= self.bytes);
        let was = self.short.swap(!roomy, Ordering::AcqRel);
        if was && roomy {
            tracing::info!(file = %self.path.display(), bytes = self.bytes, "space reserve taken again, with as much again free: produces are taken again");
        }
    }

    /// Why produces are refused, while the reserve is not held for want of
    /// room, or held with less than its size free besides: producers filling
    /// the space it would take left the writes that free space nothing to
    /// write with, and a start after them nothing to give back (a start that
    /// failed for want of space and was made again often finds no room to
    /// take the reserve). `None` once it is held with its size free besides,
    /// or when it is not kept (`bytes` 0), or could not be taken for another
    /// reason than room.
    pub(crate) fn short(&self) -> Option<String> {
        if !self.is_short() {
            return None;
        }
        Some(format!(
            "the disk is nearly full: produces are refused until the {} bytes kept for \
             the writes that free space ({}) can be taken again, with as much again free \
             (retention frees space, or free some by hand)",
            self.bytes,
            self.path.display()
        ))
    }

    /// Whether the reserve is short of room ([`SpaceReserve::short`]).
    pub(crate) fn is_short(&self) -> bool {
        self.short.load(Ordering::Acquire)
    }

    /// Whether a produce refused for want of the reserve should have it look
    /// for room again now (at most every [`RETAKE_EVERY`]); the look is the
    /// caller's ([`SpaceReserve::refill`], blocking).
    pub(crate) fn retake_due(&self) -> bool {
        let mut last = self
            .last_retake
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < RETAKE_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    fn remove(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "could not remove the space reserve");
            }
        }
    }
}

/// Removes the reserve an earlier run left in `data_dir` after a start failed
/// with `error` for want of space, so that the start can be made again:
/// whether there was a reserve to give back.
pub(crate) fn give_back_at_start(data_dir: &Path, error: &crate::Error) -> bool {
    let path = data_dir.join(RESERVE_NAME);
    let Some(len) = std::fs::symlink_metadata(&path)
        .ok()
        .filter(|m| m.is_file() && m.len() > 0)
        .map(|m| m.len())
    else {
        return false;
    };
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(file = %path.display(), error = %e, "the start failed for want of space, and the space reserve could not be given back");
        return false;
    }
    tracing::warn!(file = %path.display(), bytes = len, %error, "the start failed for want of space: giving back the space kept for the writes that free space, and starting again");
    true
}

/// Allocates `bytes` for the file at `path`, made anew.
fn take(path: &Path, bytes: u64) -> std::io::Result<()> {
    let f = File::create(path)?;
    allocate(&f, bytes)
}

#[cfg(target_os = "linux")]
fn allocate(f: &File, bytes: u64) -> std::io::Result<()> {
    match crate::wal::files::reserve(f, bytes) {
        // A file system without `fallocate` (the fallback made the file
        // sparse): its blocks are written.
        Ok(()) if !f.metadata().is_ok_and(|m| holds_blocks(&m, bytes)) => write_zeros(f, bytes),
        r => r,
    }
}

/// Whether a file of metadata `m` has `bytes` allocated (where that cannot be
/// asked, its length is taken for it: the reserve is written there).
fn holds_blocks(m: &std::fs::Metadata, bytes: u64) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        m.blocks().saturating_mul(512) >= bytes
    }
    #[cfg(not(unix))]
    {
        m.len() >= bytes
    }
}

#[cfg(not(target_os = "linux"))]
fn allocate(f: &File, bytes: u64) -> std::io::Result<()> {
    write_zeros(f, bytes)
}

fn write_zeros(f: &File, bytes: u64) -> std::io::Result<()> {
    use std::io::Write;
    let zeros = vec![0u8; 1 << 20];
    let mut w = f;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        w.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    crate::wal::journal::sync_data(f)
}

#[cfg(test)]
thread_local! {
    /// What [`free_bytes`] answers on this thread (tests).
    static TEST_FREE_BYTES: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Makes [`free_bytes`] answer `free` on this thread (`None`: asks the file
/// system again) (tests).
#[cfg(test)]
pub(crate) fn set_test_free_bytes(free: Option<u64>) {
    TEST_FREE_BYTES.with(|f| f.set(free));
}

/// The bytes an unprivileged process may still allocate on the file system
/// holding `dir`, when it can be asked.
#[cfg(unix)]
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(test)]
    if let Some(free) = TEST_FREE_BYTES.with(std::cell::Cell::get) {
        return Some(free);
    }
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    #[allow(
        clippy::useless_conversion,
        reason = "the field types vary by platform"
    )]
    let (blocks, size) = (
        u64::from(s.blocks_available()),
        u64::from(s.fragment_size()),
    );
    Some(blocks.saturating_mul(size))
}

#[cfg(not(unix))]
pub(crate) fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

/// Whether `e` failed for want of space (`ENOSPC`, or a quota's `EDQUOT`, and
/// their equivalents elsewhere).
pub(crate) fn out_of_space(e: &crate::Error) -> bool {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    match e {
        crate::Error::Io { source, .. } => matches!(source.kind(), StorageFull | QuotaExceeded),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_holds_its_blocks_until_released_and_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let r = SpaceReserve::open(dir.path(), 1 << 20);
        assert!(r.is_held());
        let path = dir.path().join(RESERVE_NAME);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert!(std::fs::metadata(&path).unwrap().blocks() * 512 >= 1 << 20);
        }
        assert!(r.release());
        assert!(!path.exists());
        assert!(!r.release(), "nothing left to give");
        r.refill();
        assert!(r.is_held());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
    }

    /// The reserve is short (produces are refused) from when it is given
    /// back, or finds no room, until it is taken again; a reserve not kept
    /// is never short.
    #[test]
    fn the_reserve_is_short_while_not_held_for_want_of_room() {
        let dir = tempfile::tempdir().unwrap();
        let r = SpaceReserve::open(dir.path(), 1 << 20);
        assert!(r.short().is_none());
        assert!(r.release());
        let why = r.short().expect("short once given back");
        assert!(why.contains("produces are refused"), "{why}");
        assert!(why.contains(RESERVE_NAME), "{why}");
        set_test_free_bytes(Some(3 << 19));
        r.refill();
        assert!(!r.is_held());
        assert!(r.short().is_some(), "still short without room twice over");
        set_test_free_bytes(None);
        r.refill();
        assert!(r.is_held());
        assert!(r.short().is_none());
        // Taken with less than its size free besides (a start made again for
        // want of space takes it with room for it alone): short until that
        // much is free, and then no longer.
        assert!(r.release());
        set_test_free_bytes(Some(3 << 19));
        r.refill_leaving(0);
        assert!(r.is_held());
        assert!(
            r.short().is_some(),
            "taken, with half its size free besides"
        );
        set_test_free_bytes(Some(1 << 20));
        r.refill();
        assert!(r.short().is_none(), "its size free besides");
        // Found in place on a disk without its size free besides: short.
        drop(r);
        set_test_free_bytes(Some(0));
        let r = SpaceReserve::open(dir.path(), 1 << 20);
        assert!(r.is_held());
        assert!(r.short().is_some(), "held, with nothing free besides");
        set_test_free_bytes(None);
        r.refill();
        assert!(r.short().is_none());
        // Found without room at the start: short until taken.
        let other = tempfile::tempdir().unwrap();
        set_test_free_bytes(Some(1 << 20));
        let r = SpaceReserve::open(other.path(), 1 << 20);
        set_test_free_bytes(None);
        assert!(!r.is_held());
        assert!(r.short().is_some());
        let none = tempfile::tempdir().unwrap();
        let r = SpaceReserve::open(none.path(), 0);
        assert!(!r.release());
        r.refill();
        assert!(r.short().is_none(), "no reserve kept, none wanted");
    }

    /// A reserve an earlier run left is held as it is: a start on a nearly
    /// full disk could not allocate it again, and held its blocks without
    /// knowing it, so it never gave them back. One left in part is removed.
    #[test]
    fn a_reserve_left_by_an_earlier_run_is_held_and_a_partial_one_removed() {
        let dir = tempfile::tempdir().unwrap();
        drop(SpaceReserve::open(dir.path(), 1 << 20));
        // The file system has no room left for another reserve.
        TEST_FREE_BYTES.with(|f| f.set(Some(0)));
        let r = SpaceReserve::open(dir.path(), 1 << 20);
        TEST_FREE_BYTES.with(|f| f.set(None));
        assert!(r.is_held());
        assert!(r.release());
        assert!(!dir.path().join(RESERVE_NAME).exists());

        std::fs::write(dir.path().join(RESERVE_NAME), b"part").unwrap();
        let r = SpaceReserve {
            path: dir.path().join(RESERVE_NAME),
            bytes: 1 << 20,
            held: Mutex::new(false),
            short: AtomicBool::new(false),
            last_retake: Mutex::new(None),
        };
        assert!(!r.in_place());
        let r = SpaceReserve::open(dir.path(), 1 << 20);
        assert!(r.is_held());
        assert!(r.in_place());
    }

    /// A reserve left by a run with another size is cut to this one, or taken
    /// again at it, or (larger, on a disk without room for it) kept at its
    /// own: before, a larger one passed as in place, and a restart with a
    /// smaller `--space-reserve-bytes` kept the larger file.
    #[test]
    fn a_reserve_left_at_another_size_takes_this_one_where_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESERVE_NAME);
        drop(SpaceReserve::open(dir.path(), 1 << 20));
        let r = SpaceReserve::open(dir.path(), 64 << 10);
        assert!(r.is_held());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 10);
        drop(r);
        let r = SpaceReserve::open(dir.path(), 2 << 20);
        assert!(r.is_held());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 << 20);
        drop(r);
        // Larger again, on a disk without room for it: the reserve found is
        // kept, at its size, rather than removed for one that cannot be taken.
        TEST_FREE_BYTES.with(|f| f.set(Some(5 << 20)));
        let r = SpaceReserve::open(dir.path(), 8 << 20);
        TEST_FREE_BYTES.with(|f| f.set(None));
        assert!(r.is_held());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 << 20);
        assert!(r.release());
        assert!(!path.exists());
    }

    /// A reserve of 0 bytes keeps nothing: the file an earlier run left is
    /// removed, no refill takes one, and a write failing for want of space
    /// runs once.
    #[test]
    fn a_reserve_of_no_bytes_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        drop(SpaceReserve::open(dir.path(), 1 << 20));
        let path = dir.path().join(RESERVE_NAME);
        assert!(path.exists());
        let r = SpaceReserve::open(dir.path(), 0);
        assert!(!path.exists());
        r.refill();
        assert!(!path.exists());
        assert!(!r.is_held());
        let mut runs = 0;
        let e = r.retry(|| -> crate::Result<()> {
            runs += 1;
            Err(crate::Error::io(
                "write",
                "/x",
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ))
        });
        assert!(e.is_err());
        assert_eq!(runs, 1);
    }

    /// A held reserve whose file went (removed by hand) is taken again by the
    /// next refill; before, it stayed marked held with nothing to give.
    #[test]
    fn a_held_reserve_whose_file_went_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let r = SpaceReserve::open(dir.path(), 1 << 20);
        std::fs::remove_file(dir.path().join(RESERVE_NAME)).unwrap();
        r.refill();
        assert!(r.is_held());
        assert!(r.in_place());
    }

    /// A write that failed for want of space runs again once the reserve is
    /// given back, and only then: not after another failure, nor when the
    /// reserve has nothing to give.
    #[test]
    fn retry_runs_a_write_again_only_after_giving_back_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let r = SpaceReserve::open(dir.path(), 1 << 20);
        let failing = |code| {
            let mut runs = 0;
            let result = r.retry(|| {
                runs += 1;
                if runs == 1 {
                    Err(crate::Error::io(
                        "write",
                        "/x",
                        std::io::Error::from_raw_os_error(code),
                    ))
                } else {
                    Ok(runs)
                }
            });
            (result.ok(), runs)
        };
        assert_eq!(failing(libc::EIO), (None, 1));
        assert_eq!(failing(libc::ENOSPC), (Some(2), 2));
        assert!(!dir.path().join(RESERVE_NAME).exists());
        assert_eq!(failing(libc::ENOSPC), (None, 1), "nothing left to give");
    }

    #[test]
    fn out_of_space_knows_enospc_from_other_failures() {
        let io = |code| crate::Error::io("write", "/x", std::io::Error::from_raw_os_error(code));
        assert!(out_of_space(&io(libc::ENOSPC)));
        #[cfg(unix)]
        assert!(out_of_space(&io(libc::EDQUOT)));
        assert!(!out_of_space(&io(libc::EIO)));
        assert!(!out_of_space(&crate::Error::corrupt("/x", 0, "bad")));
    }
}
