//! WAL file names, preparation (preallocation + header) and directory fsync.
//!
//! Every change to the directory's entries (creating, renaming and removing files,
//! fsyncing the directory) goes through [`rename`], `remove`, `tracked` and
//! [`sync_dir`], and every write to a file outside the backend through [`write_at`]
//! and [`sync_file`], so that the simulated disk (feature `sim`) can model which of
//! them a power loss undoes.
//!
//! ```text
//! <dir>/current.wal     active file
//! <dir>/00000001.wal    archived files, named by file number
//! <dir>/next.wal        the next file, prepared ahead of rotation (holds no entries)
//! <dir>/checkpoint.json
//! <dir>/clean-close.json  the end of the log at the last clean close (see `clean_close`)
//! ```

use std::{
    fs::{self, File, OpenOptions},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex, PoisonError,
    },
};

use super::config::ShortageHook;
use super::format::{
    decode_file_header, encode_file_header, new_file_key, FileHeader, FormatVersion, BLOCK_SIZE,
};
use crate::error::{Error, Result};
use crate::file_at::FileAt;

/// Name of the active file.
pub const CURRENT: &str = "current.wal";
/// Name of the prepared next file.
pub const NEXT: &str = "next.wal";
/// What a next file is called while it is prepared.
pub const NEXT_TMP: &str = "next.wal.tmp";
/// Prefix of obsolete files kept for reuse as future WAL files.
pub const RECYCLE_PREFIX: &str = "recycle-";
/// How many obsolete files are kept for reuse.
pub const MAX_RECYCLED: usize = 2;

/// Files waiting to be reused, oldest first.
pub fn list_recycled(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| Error::io("read_dir", dir, e))? {
        let ent = ent.map_err(|e| Error::io("read_dir", dir, e))?;
        if ent
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(RECYCLE_PREFIX) && n.ends_with(".wal"))
        {
            out.push(ent.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Retires an archived file the checkpoint made obsolete: kept for reuse (renamed to
/// `recycle-<number>.wal`) while fewer than [`MAX_RECYCLED`] wait and its size is
/// `size`, deleted otherwise. The caller fsyncs the directory.
///
/// A file already gone (removed by hand to free space) counts as retired, and
/// one that cannot be kept for reuse (its recycled name taken by something
/// that cannot be renamed over) is deleted: otherwise it would stay first in
/// line and stop retention for good, every later checkpoint failing on it
/// while the log's files piled up.
pub fn retire(dir: &Path, path: &Path, number: u64, size: u64) -> Result<()> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "WAL file covered by the checkpoint is already gone");
            return Ok(());
        }
        Err(e) => return Err(Error::io("stat", path, e)),
    };
    if len == size && list_recycled(dir)?.len() < MAX_RECYCLED {
        let dst = dir.join(format!("{RECYCLE_PREFIX}{number:08}.wal"));
        match rename(path, &dst) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep a WAL file for reuse; deleting it");
            }
        }
    }
    match remove(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// The file number a recycled file had (`recycle-<number>.wal`): the highest file
/// number any batch in it carries.
fn recycled_number(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix(RECYCLE_PREFIX)?
        .strip_suffix(".wal")?
        .parse()
        .ok()
}

/// Turns a recycled file of exactly `size` bytes into `next.wal` with a new header.
/// Its old batches carry its old file numbers, which the checksummed batch headers
/// tie them to, so they can never decode as entries of the new file: a file is
/// reused only as a higher number than it had. A log started again at file 1 (every
/// log file lost) would otherwise reach the old numbers again, and a recycled file
/// made its file 1 would read back as the old file 1's entries; such files are
/// removed.
fn reuse_recycled(dir: &Path, number: u64, size: u64) -> Result<Option<PathBuf>> {
    let tmp = dir.join(NEXT_TMP);
    for old in list_recycled(dir)? {
        // Reuse saves zero-filling a file; one that cannot be looked at or
        // removed is passed over (a new file is made instead), never the
        // reason a rotation fails.
        let len = match fs::metadata(&old) {
            Ok(m) => m.len(),
            Err(e) => {
                tracing::warn!(path = %old.display(), error = %e, "cannot read a recycled WAL file; not reusing it");
                continue;
            }
        };
        if len != size || recycled_number(&old).is_none_or(|was| was >= number) {
            if let Err(e) = remove(&old) {
                tracing::warn!(path = %old.display(), error = %e, "cannot remove a recycled WAL file that does not fit");
            }
            continue;
        }
        if rename(&old, &tmp).is_err() {
            continue;
        }
        // The header is about to change: the rename that retired this file (from
        // its archived name) must be durable first, or a power loss could bring the
        // archived name back over a header naming another file, which recovery
        // rightly calls corrupt. When that fsync fails the file goes back under
        // its recycled name, unchanged: left as `next.wal.tmp`, the next try
        // wrote a header into it (the same inode) with the retirement still
        // not durable.
        if let Err(e) = sync_dir(dir) {
            if let Err(back) = rename(&tmp, &old) {
                tracing::warn!(path = %tmp.display(), error = %back, "cannot give a recycled WAL file back its name after a failed directory fsync; the next preparation makes a new file");
            }
            return Err(e);
        }
        let f = OpenOptions::new()
            .write(true)
            .open(&tmp)
            .map_err(|e| Error::io("open", &tmp, e))?;
        let mut block = vec![0u8; BLOCK_SIZE];
        encode_file_header(&mut block, number, now_ms(), new_file_key());
        write_at(&f, &tmp, 0, &block).map_err(|e| Error::io("write header", &tmp, e))?;
        sync_file(&f, &tmp, true).map_err(|e| Error::io("fdatasync", &tmp, e))?;
        drop_cached_pages(&f);
        drop(f);
        let dst = dir.join(NEXT);
        rename(&tmp, &dst)?;
        return Ok(Some(dst));
    }
    Ok(None)
}

/// How long an operation of a rotation that is short of file descriptors
/// waits before each try again, in milliseconds ([`retry_fd_shortage`]):
/// under 70 ms in all, the bound a segment roll keeps too.
pub(crate) const FD_RETRY_WAITS_MS: [u64; 4] = [0, 2, 10, 50];

/// Whether `e` is a shortage of file descriptors, the process's (EMFILE) or
/// the system's (ENFILE).
pub(crate) fn out_of_descriptors(e: &Error) -> bool {
    if cfg!(windows) {
        // A Win32 code there, not an errno: ERROR_TOO_MANY_OPEN_FILES. (23,
        // ENFILE's errno, is ERROR_CRC, a failing device, on Windows.)
        e.raw_os_error() == Some(4)
    } else {
        matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
    }
}

/// Runs `op`, the step `what` of a rotation on `path`, and when it fails
/// short of file descriptors (EMFILE, ENFILE) runs it again, waiting a little
/// longer each time ([`FD_RETRY_WAITS_MS`]), with a warning naming the path.
/// The shortage may pass: the broker's reads keep the segment files they
/// opened until they end, beyond the bound of its cache of open files. `op`
/// must be safe to run again after it failed so (each step opens its file
/// before it changes anything, or starts over from scratch).
///
/// # Errors
/// `op`'s, the shortage's after the last try.
///
/// Before each try again it calls `release` when given (the WAL's
/// [`super::config::WalConfig::on_descriptor_shortage`]), which lets the
/// application close descriptors it can do without, such as cached read handles.
pub(crate) fn retry_fd_shortage<T>(
    what: &str,
    path: &Path,
    release: Option<&ShortageHook>,
    op: impl FnMut() -> Result<T>,
) -> Result<T> {
    retry_while_short_of_fds(op, |e| {
        tracing::warn!(path = %path.display(), step = what, error = %e, "a WAL rotation is short of file descriptors: trying again");
        if let Some(release) = release {
            release.call();
        }
    })
}

/// Runs `op`, and again while it fails short of file descriptors (EMFILE,
/// ENFILE), calling `before_retry` with the error and then waiting a little
/// longer each time ([`FD_RETRY_WAITS_MS`]): the loop of
/// [`retry_fd_shortage`] and of storage's segment rolls and compaction swaps.
///
/// # Errors
/// `op`'s, the shortage's after the last try.
pub(crate) fn retry_while_short_of_fds<T>(
    mut op: impl FnMut() -> Result<T>,
    mut before_retry: impl FnMut(&Error),
) -> Result<T> {
    let mut waits = FD_RETRY_WAITS_MS.iter();
    loop {
        match op() {
            Err(e) if out_of_descriptors(&e) => {
                let Some(&wait) = waits.next() else {
                    return Err(e);
                };
                before_retry(&e);
                std::thread::sleep(std::time::Duration::from_millis(wait));
            }
            done => return done,
        }
    }
}

/// Fails with EMFILE, as `op` on `path` would without a file descriptor to
/// spare, while `count` is above zero, counting it down (tests).
#[cfg(test)]
pub(crate) fn injected_emfile(
    count: &std::sync::atomic::AtomicU32,
    op: &'static str,
    path: &Path,
) -> Result<()> {
    match count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
        Ok(_) => Err(Error::io(
            op,
            path,
            std::io::Error::from_raw_os_error(libc::EMFILE),
        )),
        Err(_) => Ok(()),
    }
}

/// Milliseconds since the Unix epoch (0 before it), the WAL's timestamp unit.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Path of the archived file `number`.
pub fn archived_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:08}.wal"))
}

/// Parses an archived file name (`00000001.wal`) into its number.
pub fn parse_archived_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".wal")?;
    if stem.len() < 8 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Archived files in `dir`, sorted by number.
pub fn list_archived(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| Error::io("read_dir", dir, e))? {
        let ent = ent.map_err(|e| Error::io("read_dir", dir, e))?;
        if let Some(n) = ent.file_name().to_str().and_then(parse_archived_name) {
            out.push((n, ent.path()));
        }
    }
    out.sort_unstable_by_key(|(n, _)| *n);
    Ok(out)
}

/// A directory kept open for its fsyncs ([`DirHandle::sync`]), which then need
/// no file descriptor: the commit thread's, so that a rotation short of
/// descriptors can still make its renames durable.
#[derive(Debug)]
pub(crate) struct DirHandle {
    path: PathBuf,
    #[cfg(unix)]
    file: File,
}

impl DirHandle {
    /// Opens `dir`.
    ///
    /// # Errors
    /// The open's, naming `dir`.
    pub(crate) fn open(dir: &Path) -> Result<DirHandle> {
        Ok(DirHandle {
            path: dir.to_path_buf(),
            #[cfg(unix)]
            file: File::open(dir).map_err(|e| Error::io("open", dir, e))?,
        })
    }

    /// [`sync_dir`] through the open directory.
    ///
    /// # Errors
    /// The fsync's (or the journal check's), naming the directory.
    pub(crate) fn sync(&self) -> Result<()> {
        tracked(MetaOp::SyncDir(&self.path), || {
            #[cfg(unix)]
            {
                super::backend::std_backend::file_sync(&self.file)?;
                super::journal::check_after_sync(&self.file)?;
            }
            Ok(())
        })
        .map_err(|e| Error::io("fsync dir", &self.path, e))
    }
}

#[cfg(test)]
thread_local! {
    /// The directories [`sync_dir`] fsynced on this thread (tests).
    pub(crate) static SYNCED_DIRS: std::cell::RefCell<Vec<PathBuf>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// fsyncs a directory so that creations, renames and deletions in it are durable
/// (and checks that the file system's journal had not aborted, [`super::journal`]).
pub fn sync_dir(dir: &Path) -> Result<()> {
    tracked(MetaOp::SyncDir(dir), || {
        #[cfg(unix)]
        {
            let d = File::open(dir)?;
            super::backend::std_backend::file_sync(&d)?;
            super::journal::check_after_sync(&d)?;
        }
        #[cfg(not(unix))]
        let _ = dir;
        #[cfg(test)]
        SYNCED_DIRS.with(|s| s.borrow_mut().push(dir.to_path_buf()));
        Ok(())
    })
    .map_err(|e| Error::io("fsync dir", dir, e))
}

/// Creates `dir` and any missing parents, fsyncing the parent of every directory
/// it created: a new WAL directory must not vanish with a power loss after its
/// first acknowledged entry. When `dir` already exists its parent is fsynced all
/// the same: the run that created it may have died before that fsync, and the
/// entries appended from now on are only as durable as the directory's own entry.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        // A failed look-up is not "absent": it would count an existing
        // directory as one this call created.
        if d.as_os_str().is_empty() || d.try_exists().map_err(|e| Error::io("stat", d, e))? {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    fs::create_dir_all(dir).map_err(|e| Error::io("create_dir_all", dir, e))?;
    let existed = missing.is_empty();
    if existed {
        missing.push(dir);
    }
    for d in missing.iter().rev() {
        // A filesystem root has no entry to make durable.
        let Some(parent) = parent_dir(d) else {
            continue;
        };
        match sync_dir(parent) {
            // A directory that was already there may sit in a parent this process
            // cannot open (mode 711, say): say so rather than refuse to start.
            Err(Error::Io { source, .. })
                if existed && source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                tracing::warn!(
                    dir = %dir.display(),
                    parent = %parent.display(),
                    "cannot fsync the parent directory; the directory's own entry is \
                     durable only if the run that created it synced it"
                );
            }
            r => r?,
        }
    }
    Ok(())
}

/// The directory holding `p`: `.` for a relative path of one component (where
/// [`Path::parent`] gives an empty path), `None` for a filesystem root.
pub(crate) fn parent_dir(p: &Path) -> Option<&Path> {
    p.parent().map(|q| {
        if q.as_os_str().is_empty() {
            Path::new(".")
        } else {
            q
        }
    })
}

/// A change to a directory entry of the WAL (see the module docs).
// Only the simulated disk reads the paths.
#[cfg_attr(not(all(unix, any(test, feature = "sim"))), allow(dead_code))]
#[derive(Debug, Clone, Copy)]
pub(crate) enum MetaOp<'a> {
    /// A file is created (or truncated) at this path.
    Create(&'a Path),
    /// A rename within one directory.
    Rename(&'a Path, &'a Path),
    /// A file is removed.
    Remove(&'a Path),
    /// The directory is fsynced.
    SyncDir(&'a Path),
}

/// Performs the directory-entry operation `op` with `f`. Under the simulated disk a
/// watched directory refuses it after the simulated crash and records it otherwise.
pub(crate) fn tracked<T>(
    op: MetaOp<'_>,
    f: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    #[cfg(all(unix, any(test, feature = "sim")))]
    return super::backend::sim::meta_tracked(op, f);
    #[cfg(not(all(unix, any(test, feature = "sim"))))]
    {
        let _ = op;
        f()
    }
}

/// Writes `data` at `offset` of `f`, the file at `path` in the WAL directory, outside
/// the backend: file preparation, headers, seals and the JSON state files. Under the
/// simulated disk the write is modelled like the backend's (`offset` must then be
/// a multiple of 512).
pub fn write_at(f: &File, path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    #[cfg(all(unix, any(test, feature = "sim")))]
    return super::backend::sim::content_write(f, path, offset, data);
    #[cfg(not(all(unix, any(test, feature = "sim"))))]
    {
        let _ = path;
        f.write_all_at(data, offset)
    }
}

/// Makes what was written to `f` (the file at `path`) durable: `fdatasync`, or its
/// strongest equivalent on the platform, when `data_only`, otherwise `fsync`; then
/// checks that the file system's journal had not aborted ([`super::journal`]).
pub fn sync_file(f: &File, path: &Path, data_only: bool) -> std::io::Result<()> {
    super::journal::assert_writable(f);
    let sync = |f: &File| {
        if data_only {
            super::backend::std_backend::data_sync(f)
        } else {
            super::backend::std_backend::file_sync(f)
        }
    };
    #[cfg(all(unix, any(test, feature = "sim")))]
    super::backend::sim::content_sync(f, path, sync)?;
    #[cfg(not(all(unix, any(test, feature = "sim"))))]
    {
        let _ = path;
        sync(f)?;
    }
    super::journal::check_after_sync(f)
}

/// Renames `from` to `to` (same directory).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    tracked(MetaOp::Rename(from, to), || fs::rename(from, to))
        .map_err(|e| Error::io("rename", from, e))
}

/// Removes the file `path`; the caller decides whether `NotFound` matters.
pub(crate) fn remove(path: &Path) -> std::io::Result<()> {
    tracked(MetaOp::Remove(path), || fs::remove_file(path))
}

/// How a new file's space is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prealloc {
    /// Reserve and write zeroes over the whole file, so that steady-state
    /// `fdatasync` has no extent conversion (metadata) to journal.
    ZeroFill,
    /// Only reserve (fallocate / set_len): cheaper to prepare, dearer to sync.
    Reserve,
}

/// Creates `<dir>/next.wal` with file number `number`: a recycled file of the right
/// size if one waits (only its header is rewritten), otherwise a new file
/// preallocated to `size`; header written, data fsynced, renamed into place. The directory is not fsynced
/// here; rotation fsyncs it after renaming the file to `current.wal`.
pub fn prepare_file(dir: &Path, number: u64, size: u64, prealloc: Prealloc) -> Result<PathBuf> {
    prepare_file_until(dir, number, size, prealloc, &AtomicBool::new(false))
}

/// Bytes zero-filled per write. A prepared file's chunk is written back, and the
/// writeback waited for, before the next chunk is written ([`write_back`]).
const ZERO_CHUNK: usize = 1 << 20;

/// [`prepare_file`], except that a zero-fill stops early once `stop` is set (the file
/// is needed now): the rest of the file stays reserved but unwritten. It reads as
/// zeros like the rest; an fdatasync covering a first write there also journals the
/// extent conversion, which costs more per sync than the wait would have.
pub fn prepare_file_until(
    dir: &Path,
    number: u64,
    size: u64,
    prealloc: Prealloc,
    stop: &AtomicBool,
) -> Result<PathBuf> {
    let zero_to = match prealloc {
        Prealloc::ZeroFill => size,
        Prealloc::Reserve => 0,
    };
    prepare(dir, number, size, zero_to, stop).map(|(p, _)| p)
}

/// Prepares a file for `Wal::open` to make active (a new log's first file),
/// zero-filling only its head (a quarter of it, at most [`FIRST_FILE_HEAD`]) so
/// that opening does not wait for the whole file to be written; [`fill_tail`]
/// zero-fills the rest in the background.
/// Returns the prepared file and how far it is zero-filled (all of it when a
/// prepared or recycled file was reused).
pub fn prepare_head(dir: &Path, number: u64, size: u64) -> Result<(PathBuf, u64)> {
    let head = (size / 4 / BLOCK_SIZE as u64 * BLOCK_SIZE as u64).min(FIRST_FILE_HEAD);
    prepare(dir, number, size, head, &AtomicBool::new(false))
}

/// The largest head of a new active file that [`prepare_head`] zero-fills itself.
pub const FIRST_FILE_HEAD: u64 = 4 << 20;

fn prepare(
    dir: &Path,
    number: u64,
    size: u64,
    zero_to: u64,
    stop: &AtomicBool,
) -> Result<(PathBuf, u64)> {
    let zero_to = zero_to.min(size);
    let tmp = dir.join(NEXT_TMP);
    let dst = dir.join(NEXT);
    // A `next.wal` left by a run that failed, or was killed, while zero-filling
    // it is written only in part: its fill goes on from where it stopped, so
    // that it is never taken as written where it is not. One written in its
    // header only was prepared by reservation (for large direct writes) and is
    // taken as it is.
    let resume = match already_prepared(dir, number, size)? {
        Some((p, zeroed)) if zeroed <= BLOCK_SIZE as u64 => return Ok((p, size)),
        Some((p, zeroed)) if zeroed >= zero_to => return Ok((p, zeroed)),
        Some((p, zeroed)) => {
            rename(&p, &tmp)?;
            Some(zeroed)
        }
        None => None,
    };
    if resume.is_none() {
        if let Some(p) = reuse_recycled(dir, number, size)? {
            return Ok((p, size));
        }
    }
    let f = if resume.is_some() {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tmp)
            .map_err(|e| Error::io("open", &tmp, e))?
    } else {
        // A new file, never one left under this name: that may be a recycled
        // file whose retirement is not yet durable (see `reuse_recycled`),
        // which a power loss could bring back under its archived name.
        remove_prepared(dir)?;
        tracked(MetaOp::Create(&tmp), || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
        })
        .map_err(|e| Error::io("create", &tmp, e))?
    };
    let filled = fill_prepared(&f, &tmp, number, size, zero_to, resume, stop);
    drop(f);
    let at = match filled {
        Ok(at) => at,
        Err(e) => {
            // Not left holding what it got: a reservation that failed for
            // want of space (ENOSPC) keeps the blocks it had allocated, on
            // ext4 all the space there was, until the next open removes it.
            if let Err(r) = remove(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %r, "could not remove the WAL file whose preparation failed");
            }
            return Err(e);
        }
    };
    rename(&tmp, &dst)?;
    Ok((dst, at))
}

/// Reserves (unless `resume`d) and zero-fills the file `f` being prepared at
/// `tmp` up to `zero_to`, and syncs it; returns how far it is zero-filled.
fn fill_prepared(
    f: &File,
    tmp: &Path,
    number: u64,
    size: u64,
    zero_to: u64,
    resume: Option<u64>,
    stop: &AtomicBool,
) -> Result<u64> {
    let mut at = BLOCK_SIZE as u64;
    if let Some(zeroed) = resume {
        at = zeroed.max(at);
    } else {
        reserve(f, size).map_err(|e| Error::io("fallocate", tmp, e))?;
        let mut block = vec![0u8; BLOCK_SIZE];
        encode_file_header(&mut block, number, now_ms(), new_file_key());
        write_at(f, tmp, 0, &block).map_err(|e| Error::io("write header", tmp, e))?;
    }
    if at < zero_to {
        let zeros = vec![0u8; ZERO_CHUNK];
        while at < zero_to {
            if stop.load(Ordering::Relaxed) {
                tracing::debug!(
                    file = number,
                    zeroed = at,
                    size,
                    "zero-fill of the next WAL file cut short: it is needed now"
                );
                break;
            }
            let n = (zero_to - at).min(ZERO_CHUNK as u64) as usize;
            write_at(f, tmp, at, &zeros[..n]).map_err(|e| Error::io("zero-fill", tmp, e))?;
            write_back(f, at, n).map_err(|e| Error::io("zero-fill writeback", tmp, e))?;
            at += n as u64;
        }
    }
    sync_file(f, tmp, false).map_err(|e| Error::io("fsync", tmp, e))?;
    drop_cached_pages(f);
    Ok(at)
}

/// The background zero-fill of the active file's tail ([`fill_tail`]) and the
/// commit thread's claim on the space it writes. A zero write and an entry write
/// never meet: the commit thread writes freely below [`TailFill::zeroed_through`]
/// and stops the fill before it writes anywhere beyond.
#[derive(Debug)]
pub struct TailFill {
    /// Set once no zero write may start. A zero write holds the lock from the look
    /// at this flag until it counts as done, so [`TailFill::stop`] returns only
    /// when none is in progress.
    stopped: Mutex<bool>,
    /// Everything below is zero-filled, written back, durable and out of the page
    /// cache.
    zeroed_through: AtomicU64,
}

impl TailFill {
    /// A fill that continues from `zeroed_through`.
    pub fn new(zeroed_through: u64) -> Self {
        TailFill {
            stopped: Mutex::new(false),
            zeroed_through: AtomicU64::new(zeroed_through),
        }
    }

    /// How far the file is zero-filled.
    pub fn zeroed_through(&self) -> u64 {
        self.zeroed_through.load(Ordering::Acquire)
    }

    /// Stops the fill: when this returns no zero write is in progress, and none
    /// starts later.
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }
}

/// Zero-fills `f` (the active file at `path`, `size` bytes) from where `fill` says
/// up to its end, one chunk at a time, each made durable and dropped from the page
/// cache before it counts, until the end or until [`TailFill::stop`]. Steady-state
/// appends then overwrite written, zeroed blocks, as in files prepared whole.
pub fn fill_tail(f: &File, path: &Path, size: u64, fill: &TailFill) -> Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK];
    loop {
        let stopped = fill.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        let at = fill.zeroed_through.load(Ordering::Relaxed);
        if *stopped || at >= size {
            return Ok(());
        }
        let n = (size - at).min(ZERO_CHUNK as u64) as usize;
        write_at(f, path, at, &zeros[..n]).map_err(|e| Error::io("zero-fill", path, e))?;
        // The commit thread counts what is filled as written (no extent to
        // convert): the zeros went through the page cache, whose conversion
        // can fail unseen by the sync, so the file system is asked.
        sync_file(f, path, true)
            .and_then(|()| super::journal::check_written_range(f, at, at + n as u64))
            .map_err(|e| Error::io("fdatasync", path, e))?;
        // The commit thread may write here with O_DIRECT: no cached pages in its way.
        advise(f, at, n as u64, Advice::DontNeed);
        fill.zeroed_through.store(at + n as u64, Ordering::Release);
    }
}

/// Where the first block of `f` that is reserved but was never written starts, as
/// the filesystem reports it (`lseek(SEEK_HOLE)`: ext4 and XFS report such blocks
/// as holes); `None` where that cannot be asked. The file's size when it has none.
#[cfg(target_os = "linux")]
pub fn first_unwritten(f: &File) -> Option<u64> {
    use std::os::fd::AsRawFd;
    #[expect(unsafe_code, reason = "lseek(SEEK_HOLE) has no std wrapper")]
    // SAFETY: lseek takes no pointers; the fd is owned by `f` for the whole call.
    let r = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    u64::try_from(r).ok()
}

/// Where the first never-written block of `f` starts: not asked outside Linux.
#[cfg(not(target_os = "linux"))]
pub fn first_unwritten(_f: &File) -> Option<u64> {
    None
}

/// The header of the WAL file at `path`, which a scan or its preparation checked.
pub(crate) fn read_header(path: &Path) -> Result<FileHeader> {
    let f = open_regular(path).map_err(|e| Error::io("open", path, e))?;
    read_header_of(&f, path)
}

/// [`read_header`] of the open file `f` (the file at `path`).
pub(crate) fn read_header_of(f: &File, path: &Path) -> Result<FileHeader> {
    let mut block = vec![0u8; BLOCK_SIZE];
    f.read_exact_at(&mut block, 0)
        .map_err(|e| Error::io("read header", path, e))?;
    decode_file_header(&block).map_err(|why| Error::corrupt(path, 0, why))
}

/// The size of the WAL file at `path` and how far from its start it is written
/// (the first unwritten block, [`first_unwritten`]; 0 where that cannot be
/// asked). Its cached pages are dropped first: a filesystem reports an unwritten
/// block with a cached page as data.
pub(crate) fn written_extent(path: &Path) -> Result<(u64, u64)> {
    let f = open_regular(path).map_err(|e| Error::io("open", path, e))?;
    written_extent_of(&f, path)
}

/// [`written_extent`] of the open file `f` (the file at `path`).
pub(crate) fn written_extent_of(f: &File, path: &Path) -> Result<(u64, u64)> {
    let size = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    drop_cached_pages(f);
    Ok((size, first_unwritten(f).unwrap_or(0).min(size)))
}

/// Drops the (clean, just synced) cached pages of a prepared file. The zero-fill
/// goes through the page cache, and an `O_DIRECT` write over cached pages must
/// invalidate them first, which io_uring cannot do without blocking: every such
/// write went to an io-wq worker thread (one more thread hop per batch) and paid
/// for the invalidation. A hint only: failing leaves the pages cached.
pub(crate) fn drop_cached_pages(f: &File) {
    advise(f, 0, 0, Advice::DontNeed);
}

/// Asks the kernel to start reading `len` bytes at `offset` into the page cache
/// without waiting, so the next sequential read of a scan finds them there while
/// this one is being validated. A hint only.
pub(crate) fn prefetch(f: &File, offset: u64, len: u64) {
    advise(f, offset, len, Advice::WillNeed);
}

enum Advice {
    DontNeed,
    WillNeed,
}

/// `posix_fadvise` over `[offset, offset + len)` (`len` 0: to the end of the file).
/// Advice is a hint: errors are ignored.
#[cfg(target_os = "linux")]
fn advise(f: &File, offset: u64, len: u64, advice: Advice) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    let advice = match advice {
        Advice::DontNeed => libc::POSIX_FADV_DONTNEED,
        Advice::WillNeed => libc::POSIX_FADV_WILLNEED,
    };
    #[expect(unsafe_code, reason = "posix_fadvise has no std wrapper")]
    // SAFETY: posix_fadvise takes no pointers; the fd is owned by `f` for the whole call.
    let _ = unsafe { libc::posix_fadvise(f.as_raw_fd(), off, n, advice) };
}

#[cfg(not(target_os = "linux"))]
fn advise(_f: &File, _offset: u64, _len: u64, _advice: Advice) {}

/// Writes back `len` bytes at `offset` and waits until that writeback is done
/// (no device flush; the prepared file's final fsync makes it durable). The
/// zero-fill then has at most one chunk at the device ahead of the WAL's own
/// writes. Started without waiting, a whole file of zeros queued ahead of them,
/// and the one or two WAL flushes that met it took 40-190 ms at 64 writers; paced
/// like this the zeros are spread over the flushes of the ~90 ms the fill takes,
/// a millisecond or so each (`docs/engine.md`). A filesystem without
/// `sync_file_range` just does not pace; a failed writeback is an error.
#[cfg(target_os = "linux")]
pub(crate) fn write_back(f: &File, offset: u64, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Ok(());
    };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    #[expect(unsafe_code, reason = "sync_file_range has no std wrapper")]
    // SAFETY: sync_file_range takes no pointers; the fd is owned by `f` for the whole call.
    let r = unsafe { libc::sync_file_range(f.as_raw_fd(), off, n, flags) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::ESPIPE) => Ok(()),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn write_back(_f: &File, _offset: u64, _len: usize) -> std::io::Result<()> {
    Ok(())
}

#[cfg(target_os = "linux")]
pub(crate) fn reserve(f: &File, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(size)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    #[expect(unsafe_code, reason = "fallocate has no std wrapper")]
    // SAFETY: fallocate takes no pointers; the fd is owned by `f` for the whole call.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return f.set_len(size);
    }
    Err(e)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn reserve(f: &File, size: u64) -> std::io::Result<()> {
    f.set_len(size)
}

/// A `next.wal` left by an earlier run (a clean close keeps the prepared file, and
/// so does a crash between a rotation's renames) when it is file `number` of
/// `size` bytes, written in the current format (an older build's has no key);
/// removed when it is not. It is only ever renamed into place after its header
/// and zero-fill were fsynced, so a complete one is as good as new.
/// A complete `next.wal` for file `number` of `size` bytes, with how far from
/// its start it is written (zero-filled; all of it where that cannot be asked),
/// or `None` (one that does not fit is removed).
fn already_prepared(dir: &Path, number: u64, size: u64) -> Result<Option<(PathBuf, u64)>> {
    let path = dir.join(NEXT);
    let f = match open_regular(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    let len = f.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
    let mut block = vec![0u8; BLOCK_SIZE];
    let fits = len == size
        && f.read_exact_at(&mut block, 0).is_ok()
        && decode_file_header(&block)
            .is_ok_and(|h| h.file_number == number && h.version == FormatVersion::CURRENT);
    // Asked once its pages are dropped: a cached page reads as written.
    drop_cached_pages(&f);
    let zeroed = first_unwritten(&f)
        .filter(|&z| z >= BLOCK_SIZE as u64)
        .map_or(size, |z| {
            (z / BLOCK_SIZE as u64 * BLOCK_SIZE as u64).min(size)
        });
    drop(f);
    if fits {
        return Ok(Some((path, zeroed)));
    }
    remove(&path).map_err(|e| Error::io("remove", &path, e))?;
    Ok(None)
}

/// Removes leftovers of an interrupted preparation (they never hold entries). A
/// complete `next.wal` stays: [`prepare_file`] reuses it when it fits.
pub fn remove_prepared(dir: &Path) -> Result<()> {
    let p = dir.join(NEXT_TMP);
    match remove(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", &p, e)),
        _ => Ok(()),
    }
}

/// Opens the file at `path` for reading, refusing anything but a regular
/// file (following symbolic links): a FIFO put at a WAL or state file's name
/// made the open wait for a writer forever, and `/dev/zero` behind a link
/// read until memory ran out. On Unix the open does not wait (`O_NONBLOCK`,
/// which means nothing for a regular file's reads).
///
/// # Errors
/// The open's; `InvalidInput` for a file that is not a regular file.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    open_regular_with(path, OpenOptions::new().read(true))
}

/// [`open_regular`] with `options` (a write open of a FIFO waits for a
/// reader as a read open waits for a writer).
///
/// # Errors
/// As [`open_regular`].
pub fn open_regular_with(path: &Path, options: &mut OpenOptions) -> std::io::Result<File> {
    let not_regular =
        || std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
    // Looked at first as well: a write open of a FIFO without a reader fails
    // (ENXIO) rather than say what the file is.
    if fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(not_regular());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let f = options.open(path)?;
    if !f.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(f)
}

/// The contents of the regular file `path` (see [`open_regular`]), of at
/// most `limit` bytes: a configuration file given by path (TLS material, the
/// SASL users) that turned out to be a FIFO, a device or a huge file is
/// refused rather than waited for or read until memory runs out.
///
/// # Errors
/// I/O errors; a file that is not a regular file; one larger than `limit`
/// (`InvalidData`, saying so).
pub fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(path)?;
    let mut bytes = Vec::new();
    f.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// The contents of `path`, or `None` when there is no such file.
///
/// # Errors
/// Other I/O errors, naming the path; a file that is not a regular file
/// (see [`open_regular`]).
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut f = match open_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let mut b = Vec::new();
    f.read_to_end(&mut b)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(Some(b))
}

/// Writes `bytes` to `path` atomically: temp file, fsync (and a check that its
/// bytes are on the disk, [`super::journal::check_written`]), rename, directory fsync.
///
/// # Errors
/// I/O errors naming the path. A failure of the directory fsync comes after
/// the rename: `path` holds `bytes` then (see [`write_atomic_renamed`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    match write_atomic_renamed(path, bytes)? {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// [`write_atomic`], telling a failure before the rename from one after it. A
/// failure before the rename is returned as an error, `path` as it was. Once
/// the temporary file is renamed, `path` holds `bytes` whatever follows: a
/// failure of the directory fsync then (or of the journal check after it) is
/// returned as `Ok(Some(e))`, and a power loss may still bring back the file
/// as it was, since the rename may not be durable.
///
/// # Errors
/// I/O errors before the rename, naming the path; `path` is unchanged.
pub fn write_atomic_renamed(path: &Path, bytes: &[u8]) -> Result<Option<Error>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    #[cfg(test)]
    let injected = INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().pop_front());
    #[cfg(test)]
    if injected == Some(AtomicWriteFailure::BeforeRename) {
        let e = std::io::Error::other("injected failure before the rename");
        return Err(Error::io("create", path.with_extension("tmp"), e));
    }
    #[cfg(test)]
    if injected == Some(AtomicWriteFailure::Full) {
        let e = std::io::Error::from(std::io::ErrorKind::StorageFull);
        return Err(Error::io("write", path.with_extension("tmp"), e));
    }
    write_renamed(path, bytes)?;
    #[cfg(test)]
    if injected == Some(AtomicWriteFailure::DirSync) {
        let e = std::io::Error::other("injected directory fsync failure");
        return Ok(Some(Error::io("fsync dir", dir, e)));
    }
    // The rename is durable only once the directory entry is.
    Ok(sync_dir(dir).err())
}

/// [`write_atomic`] without the directory fsync: `path` holds `bytes` (written
/// to a temporary file, fsynced, renamed over it), but the rename is durable
/// only once the caller fsyncs the directory, once for many files.
///
/// # Errors
/// I/O errors naming the path; `path` is unchanged.
pub fn write_renamed(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let renamed = (|| {
        let f = tracked(MetaOp::Create(&tmp), || File::create(&tmp))
            .map_err(|e| Error::io("create", &tmp, e))?;
        write_at(&f, &tmp, 0, bytes).map_err(|e| Error::io("write", &tmp, e))?;
        sync_file(&f, &tmp, false)
            .and_then(|()| super::journal::check_written(&f, bytes.len() as u64))
            .map_err(|e| Error::io("fsync", &tmp, e))?;
        drop(f);
        rename(&tmp, path)
    })();
    if let Err(e) = renamed {
        // Not left behind (a file of a name never written again would stay
        // for good); a removal a power loss undoes leaves a file nothing reads.
        let _ = tracked(MetaOp::Remove(&tmp), || fs::remove_file(&tmp));
        return Err(e);
    }
    Ok(())
}

/// A failure [`write_atomic_renamed`] is made to have (tests of what callers
/// do with each).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtomicWriteFailure {
    /// Before the rename: the file is unchanged.
    BeforeRename,
    /// Before the rename, for want of space: the file is unchanged.
    Full,
    /// The directory fsync after the rename: the file is replaced.
    DirSync,
}

#[cfg(test)]
thread_local! {
    /// The failures that the next atomic writes on this thread have, one per
    /// write, in order; once it is empty, writes run as usual.
    pub(crate) static INJECTED_ATOMIC_FAILURES: std::cell::RefCell<std::collections::VecDeque<AtomicWriteFailure>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

/// Takes an exclusive, non-blocking lock on `<dir>/LOCK` (`flock` on Unix,
/// `LockFileEx` on Windows), held while the returned file is open, so that one
/// directory is never used by two processes (or two owners in one process) at once.
/// Dropping the returned [`DirLock`] releases it.
///
/// A lock found held is tried again for [`LOCK_GRACE`]: a process killed with
/// writes in flight keeps it until the kernel has finished them (see
/// [`DirLock`]).
///
/// # Errors
/// [`Error::Locked`] when another owner holds it; I/O errors naming the path (a
/// filesystem without locks among them).
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    let path = dir.join("LOCK");
    let f = open_regular_with(
        &path,
        OpenOptions::new().create(true).truncate(false).write(true),
    )
    .map_err(|e| Error::io("open", &path, e))?;
    lock_within_grace(dir, &path, || f.try_lock())?;
    Ok(DirLock(f))
}

/// Runs `try_lock` on `path`, the lock file of `dir`, until it succeeds or
/// [`LOCK_GRACE`] has passed.
///
/// # Errors
/// [`Error::Locked`] when the lock stayed held; an I/O error naming `path`.
fn lock_within_grace(
    dir: &Path,
    path: &Path,
    try_lock: impl Fn() -> std::result::Result<(), fs::TryLockError>,
) -> Result<()> {
    let until = std::time::Instant::now() + LOCK_GRACE;
    loop {
        match try_lock() {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
        }
    }
}

/// How long [`lock_dir`] waits for a lock found held before it gives up.
pub const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes a shared lock on `<dir>/LOCK` for a reader of the directory, held
/// while the returned file is open: refused while an owner ([`lock_dir`]) has
/// the WAL open, whose rotations, recycling and retention would change the
/// files under the reader (a healthy log then reads as damaged), and keeping
/// an owner from opening it meanwhile. `None` when there is no `LOCK` (no WAL
/// ever opened the directory, so none has it open). Opens the file read-only,
/// so a read-only directory can be read. A lock found held is tried again for
/// [`LOCK_GRACE`], as [`lock_dir`] does.
///
/// # Errors
/// [`Error::Locked`] when an owner holds it; I/O errors naming the path.
pub fn lock_dir_shared(dir: &Path) -> Result<Option<File>> {
    let path = dir.join("LOCK");
    let f = match open_regular(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    lock_within_grace(dir, &path, || f.try_lock_shared())?;
    Ok(Some(f))
}

/// The lock [`lock_dir`] took, released when dropped. Closing the file alone is
/// not enough: a child process forked by any thread of this process (to run a
/// command, say) shares the locked file until it execs or exits, and the lock
/// lasts as long as any copy is open, so an immediate reopen could find the
/// directory "in use". The explicit unlock releases it for every copy.
///
/// A process that dies holds it no longer than its files stay open, except
/// where the `uring` backend holds the lock file in its ring
/// ([`DirLock::file`]): there it lasts until the kernel has completed the
/// writes the dead process left in flight, which must not land after another
/// process has opened the WAL and written where they go.
#[derive(Debug)]
pub struct DirLock(File);

impl DirLock {
    /// The locked file.
    pub(crate) fn file(&self) -> &File {
        &self.0
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_names() {
        assert_eq!(parse_archived_name("00000001.wal"), Some(1));
        assert_eq!(parse_archived_name("123456789.wal"), Some(123_456_789));
        assert_eq!(parse_archived_name("current.wal"), None);
        assert_eq!(parse_archived_name("0001.wal"), None);
        assert_eq!(
            archived_path(Path::new("/x"), 7),
            PathBuf::from("/x/00000007.wal")
        );
    }
}
