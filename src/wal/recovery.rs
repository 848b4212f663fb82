//! Scanning WAL files: validation of every batch and entry, torn-tail detection,
//! corruption reports with file and byte offset, and the streaming entry iterator
//! used by recovery and tools. Read-only: [`super::Wal::open`] acts on the result.
//!
//! How the end of the log is decided in the newest file: scanning stops at the first
//! block that does not hold a valid batch continuing the sequence. The rest of the
//! file is then probed for valid batch headers of the same file. Every batch header
//! records `synced_through`, the highest sequence its writer knew to be durable. If a
//! later batch says the missing sequences had been synced, the bad bytes are damage to
//! durable data (an error naming file and offset); otherwise they are a torn tail of
//! unsynced writes, and the log ends there. Archived files end with a seal batch, so
//! any bad batch before the seal is corruption.

use std::{
    collections::VecDeque,
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    checkpoint::{self, Checkpoint},
    clean_close::{self, CleanClose},
    config::RecoveryMode,
    files::{self, list_archived, CURRENT},
    format::{
        decode_batch_header, decode_file_header, for_each_entry, BadBatch, BatchHeader, BatchKind,
        FileId, WalEntry, BATCH_HEADER_LEN, BLOCK_SIZE, ENTRY_HEADER_LEN,
    },
};
use crate::error::{Error, Result};
use crate::file_at::FileAt;

/// How a file's log ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// A seal batch ends the file (archived files).
    Sealed,
    /// Never-written (zero or stale) space follows the last valid batch.
    Clean,
    /// A partly written batch follows the last valid batch (newest file only).
    Torn {
        /// Where the torn batch starts.
        offset: u64,
        /// What check failed.
        reason: String,
    },
}

/// What a scan learned about one WAL file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// The file number from its header.
    pub number: u64,
    /// The key from its header (0 for a version 1 file): see [`FileId`].
    pub key: u64,
    /// Where the file is.
    pub path: PathBuf,
    /// Size of the file in bytes.
    pub size: u64,
    /// Offset just past the last valid batch (where the next batch would go).
    pub valid_end: u64,
    /// Sequence of the first valid entry, if any.
    pub first_sequence: Option<u64>,
    /// Sequence of the last valid entry, if any.
    pub last_sequence: Option<u64>,
    /// Sequence the next entry after this file must have.
    pub next_sequence: Option<u64>,
    /// Valid entry batches.
    pub batches: u64,
    /// Valid entries.
    pub entries: u64,
    /// Payload bytes of valid entries (without framing).
    pub data_bytes: u64,
    /// How the log in this file ends.
    pub tail: Tail,
    /// Whether valid batch headers of this file exist after the end of the log
    /// (unsynced writes that outlived a torn one). Appending in place would then risk
    /// resurrecting them, so the WAL seals the file instead.
    pub stale_after_end: bool,
    /// Byte ranges skipped in tolerant mode: (offset, end, reason).
    pub skipped: Vec<(u64, u64, String)>,
}

impl FileInfo {
    /// What a batch header of this file must match.
    pub fn id(&self) -> FileId {
        FileId {
            number: self.number,
            key: self.key,
        }
    }
}

/// The result of scanning a WAL directory.
#[derive(Debug, Clone)]
pub struct DirScan {
    /// Files in log order (archived by number, then `current.wal`).
    pub files: Vec<FileInfo>,
    /// The checkpoint, if any.
    pub checkpoint: Option<Checkpoint>,
    /// Sequence of the last valid entry in the whole log (0 when empty).
    pub last_sequence: u64,
    /// Sequence the next appended entry gets (contiguous with the log).
    pub next_sequence: u64,
}

/// Positional reader with a large buffer: WAL files are read in 4 MiB chunks.
pub(crate) struct ChunkReader {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    /// Reads do not go past here unless a caller asks for those bytes (the end of
    /// what is worth reading: the file's valid end, or its clean-close end).
    limit: u64,
    buf: Vec<u8>,
    start: u64,
}

const CHUNK: usize = 4 << 20;
/// How far past the current chunk a scan asks the kernel to read ahead.
const PREFETCH: u64 = 2 * CHUNK as u64;

#[cfg(test)]
thread_local! {
    /// Bytes the [`ChunkReader`]s of this thread have read from their files, so
    /// tests can bound what a scan reads.
    static BYTES_READ: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl ChunkReader {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = files::open_regular(path).map_err(|e| Error::io("open", path, e))?;
        Self::with_file(Arc::new(file), path)
    }

    /// Reads `file`, opened earlier from `path`.
    fn with_file(file: Arc<File>, path: &Path) -> Result<Self> {
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        Ok(ChunkReader {
            file,
            path: path.to_path_buf(),
            len,
            limit: len,
            buf: Vec::new(),
            start: 0,
        })
    }

    /// Reads whole chunks and read-ahead only up to `limit` from now on.
    pub(crate) fn limit_to(&mut self, limit: u64) {
        self.limit = limit.min(self.len);
    }

    /// Bytes `[off, off+len)`, which the caller has checked lie inside the file.
    pub(crate) fn get(&mut self, off: u64, len: usize) -> Result<&[u8]> {
        let have = off >= self.start && off + len as u64 <= self.start + self.buf.len() as u64;
        if !have {
            let worth = (CHUNK as u64).min(self.limit.saturating_sub(off));
            let want = (len as u64).max(worth).min(self.len - off) as usize;
            self.buf.resize(want, 0);
            self.file
                .read_exact_at(&mut self.buf, off)
                .map_err(|e| Error::io("read", &self.path, e))?;
            #[cfg(test)]
            BYTES_READ.with(|n| n.set(n.get() + want as u64));
            // Overlap the device's read of what follows with validating this
            // chunk: a cold 1 GiB scan went from ~0.65 to ~1.0 GB/s (docs/engine.md).
            let next = off + want as u64;
            if next < self.limit {
                files::prefetch(&self.file, next, PREFETCH.min(self.limit - next));
            }
            self.start = off;
        }
        let s = (off - self.start) as usize;
        Ok(&self.buf[s..s + len])
    }
}

/// Outcome of validating the batch at one offset.
enum Step {
    Batch(BatchHeader),
    Bad(String, bool),
}

/// Validates the batch at `pos`: header, bounds, contiguity and every entry.
fn check_batch(r: &mut ChunkReader, file: FileId, pos: u64, expected: Option<u64>) -> Result<Step> {
    let hdr = match decode_batch_header(r.get(pos, BATCH_HEADER_LEN)?, file) {
        Ok(h) => h,
        Err(BadBatch::Zero) => {
            return Ok(Step::Bad("zeroed block (end of written data)".into(), true))
        }
        Err(BadBatch::Foreign(n)) => {
            return Ok(Step::Bad(
                format!("stale batch of file {n} (recycled space, end of written data)"),
                true,
            ))
        }
        Err(BadBatch::Invalid(why)) => return Ok(Step::Bad(why, false)),
    };
    if let Some(exp) = expected {
        let ok = match hdr.kind {
            BatchKind::Entries => hdr.first_sequence == exp,
            BatchKind::Seal => hdr.first_sequence >= exp,
        };
        if !ok {
            return Ok(Step::Bad(
                format!(
                    "batch starts at sequence {}, expected {exp}",
                    hdr.first_sequence
                ),
                false,
            ));
        }
    }
    if pos + hdr.disk_len() > r.len {
        return Ok(Step::Bad(
            format!(
                "batch of {} bytes runs past the end of the file",
                hdr.disk_len()
            ),
            false,
        ));
    }
    if hdr.kind == BatchKind::Entries {
        let payload = r.get(pos + BATCH_HEADER_LEN as u64, hdr.payload_len as usize)?;
        if let Err((at, why)) = for_each_entry(&hdr, payload, |_| {}) {
            return Ok(Step::Bad(format!("{why} (payload offset {at})"), false));
        }
    }
    Ok(Step::Batch(hdr))
}

/// First offset at or after `from` holding a valid batch header of `file` whose
/// first sequence is at least `min_sequence`. A header of earlier sequences after
/// the end of the log is no continuation of it: its writer had moved on past those
/// sequences, so the header is an older copy (a misdirected write, a block copied
/// over another), and resuming there would return entries twice.
fn probe(
    r: &mut ChunkReader,
    file: FileId,
    from: u64,
    min_sequence: Option<u64>,
) -> Result<Option<(u64, BatchHeader)>> {
    let mut pos = from;
    while pos + BLOCK_SIZE as u64 <= r.len {
        if let Ok(h) = decode_batch_header(r.get(pos, BATCH_HEADER_LEN)?, file) {
            if min_sequence.is_none_or(|min| h.first_sequence >= min) {
                return Ok(Some((pos, h)));
            }
        }
        pos += BLOCK_SIZE as u64;
    }
    Ok(None)
}

/// Highest `synced_through` among the valid batch headers of `file` from
/// `first` (found at `at`) to the end of the file. Follows each batch's length,
/// probing block by block past anything that does not decode, so the payload of a
/// valid batch is not read as headers. In `interval` mode every batch written
/// between two fdatasyncs carries the same value, so the first batch after damage
/// may predate the sync that a later one records.
fn max_synced_through(
    r: &mut ChunkReader,
    file: FileId,
    at: u64,
    first: &BatchHeader,
) -> Result<u64> {
    let mut best = first.synced_through;
    let mut pos = at + first.disk_len();
    while pos + BLOCK_SIZE as u64 <= r.len {
        let (found_at, h) = match decode_batch_header(r.get(pos, BATCH_HEADER_LEN)?, file) {
            Ok(h) => (pos, h),
            Err(_) => match probe(r, file, pos + BLOCK_SIZE as u64, None)? {
                Some(found) => found,
                None => break,
            },
        };
        best = best.max(h.synced_through);
        pos = found_at + h.disk_len();
    }
    Ok(best)
}

/// The valid batch headers of one file from `start` to its end, read once: the
/// first time a scan needs proof that bad bytes had been synced, it reads every
/// block from there on (as [`probe`] does), and later probes and proofs in that
/// range are answered from here, rather than by reading the rest of the file for
/// each damaged stretch (quadratic in the file's size for a file with many). Holds
/// one record per header (at most one per block: a 100 MiB file has 25,600), no
/// file contents.
struct HeaderIndex {
    /// Every block at or after this offset is covered.
    start: u64,
    /// By offset: each block whose header decodes as one of the file's, with the
    /// highest `synced_through` along the walk [`max_synced_through`] takes from
    /// there (the header itself, then the next one at or after its end, and so on).
    headers: Vec<(u64, BatchHeader, u64)>,
}

impl HeaderIndex {
    /// Reads the headers of `file` from `start` (a block offset) to the end.
    fn build(r: &mut ChunkReader, file: FileId, start: u64) -> Result<Self> {
        let mut headers = Vec::new();
        let mut pos = start;
        while pos + BLOCK_SIZE as u64 <= r.len {
            if let Ok(h) = decode_batch_header(r.get(pos, BATCH_HEADER_LEN)?, file) {
                headers.push((pos, h, h.synced_through));
            }
            pos += BLOCK_SIZE as u64;
        }
        // From the last header back: each one's walk goes on at the first header
        // at or after its end (a later one: every batch takes at least a block),
        // whose maximum is known by then.
        for i in (0..headers.len()).rev() {
            let (at, h, own) = headers[i];
            let next = headers.partition_point(|&(a, _, _)| a < at + h.disk_len());
            let after = headers.get(next).map_or(0, |&(_, _, best)| best);
            headers[i].2 = own.max(after);
        }
        Ok(HeaderIndex { start, headers })
    }

    /// Whether [`probe`] from `from` can be answered here.
    fn covers(&self, from: u64) -> bool {
        from >= self.start
    }

    /// [`probe`] from `from` (covered).
    fn probe(&self, from: u64, min_sequence: Option<u64>) -> Option<(u64, BatchHeader)> {
        let first = self.headers.partition_point(|&(a, _, _)| a < from);
        self.headers
            .get(first..)?
            .iter()
            .find(|(_, h, _)| min_sequence.is_none_or(|min| h.first_sequence >= min))
            .map(|&(at, h, _)| (at, h))
    }

    /// [`max_synced_through`] from the header at `at`, if the index holds it.
    fn max_synced_through(&self, at: u64) -> Option<u64> {
        let i = self
            .headers
            .binary_search_by_key(&at, |&(a, _, _)| a)
            .ok()?;
        self.headers.get(i).map(|&(_, _, best)| best)
    }
}

/// Scans one file. `expected_number` is checked against the header when given;
/// `expected_next` is the sequence the file's first batch must start at.
///
/// # Errors
/// I/O errors; [`Error::Corrupt`] for damage (see the module docs).
pub fn scan_file(
    path: &Path,
    expected_number: Option<u64>,
    newest: bool,
    expected_next: Option<u64>,
    mode: RecoveryMode,
) -> Result<FileInfo> {
    scan_file_after_close(path, expected_number, newest, expected_next, mode, None)
}

/// [`scan_file`], told where the log ended at the last clean close (see
/// [`super::clean_close`]): a log that ends exactly there, followed by never-written
/// space, needs no probe of the rest of the file.
///
/// # Errors
/// As [`scan_file`].
pub fn scan_file_after_close(
    path: &Path,
    expected_number: Option<u64>,
    newest: bool,
    expected_next: Option<u64>,
    mode: RecoveryMode,
    clean: Option<CleanClose>,
) -> Result<FileInfo> {
    let mut r = ChunkReader::open(path)?;
    let clean = clean.filter(|_| newest);
    if let Some(c) = clean.filter(|c| c.end < r.len) {
        // After a clean close nothing past the recorded end is worth reading but
        // its first block (undone below if the marker is not this file's).
        r.limit_to(c.end + BLOCK_SIZE as u64);
    }
    if r.len < BLOCK_SIZE as u64 {
        return Err(Error::corrupt(
            path,
            0,
            format!("file of {} bytes is shorter than its header block", r.len),
        ));
    }
    let header =
        decode_file_header(r.get(0, BLOCK_SIZE)?).map_err(|why| Error::corrupt(path, 0, why))?;
    if let Some(n) = expected_number {
        if header.file_number != n {
            return Err(Error::corrupt(
                path,
                0,
                format!("header says file {}, expected {n}", header.file_number),
            ));
        }
    }
    let number = header.file_number;
    let file = header.id();
    let clean = clean.filter(|c| c.file_number == number && c.file_key == header.key);
    if clean.is_none() {
        r.limit_to(r.len);
    }
    let mut info = FileInfo {
        number,
        key: header.key,
        path: path.to_path_buf(),
        size: r.len,
        valid_end: BLOCK_SIZE as u64,
        first_sequence: None,
        last_sequence: None,
        next_sequence: expected_next,
        batches: 0,
        entries: 0,
        data_bytes: 0,
        tail: Tail::Clean,
        stale_after_end: false,
        skipped: Vec::new(),
    };
    // Built the first time the scan needs proof that bad bytes had been synced.
    let mut index: Option<HeaderIndex> = None;
    let mut pos = BLOCK_SIZE as u64;
    loop {
        if pos + BLOCK_SIZE as u64 > r.len {
            if !newest {
                let reason = "archived file ends without a seal";
                if mode == RecoveryMode::Strict {
                    return Err(Error::corrupt(path, pos, reason));
                }
                // Tolerant: as a cut inside a batch is, a cut at a batch
                // boundary is damage skipped to the end of the file.
                tracing::warn!(file = %path.display(), offset = pos, reason, "WAL file ends without its seal (tolerant recovery)");
                info.skipped.push((pos, r.len, reason.to_string()));
                break;
            }
            if let Some(c) = clean.filter(|c| pos < c.end) {
                // The file was cut short (a partial copy, a truncation) where a
                // batch boundary fell: what the close had fdatasynced is lost.
                let reason = format!(
                    "file ends at offset {}, before the end of the log the last clean close recorded (offset {}, next sequence {})",
                    r.len, c.end, c.next_sequence
                );
                if mode == RecoveryMode::Strict {
                    return Err(Error::corrupt(path, pos, reason));
                }
                // Tolerant: the log goes on at the cut, as after any damage
                // that ends a file.
                tracing::warn!(file = %path.display(), offset = pos, reason = %reason, "WAL file cut short (tolerant recovery)");
                info.skipped.push((pos, c.end, reason));
            } else if let Some(c) = clean.filter(|c| pos == c.end) {
                // The file ends exactly where the last clean close left the log
                // (a file holding no entries cut to its header): as at the
                // marker's end below, where the log goes on is the close's.
                info.next_sequence.get_or_insert(c.next_sequence);
            }
            break;
        }
        match check_batch(&mut r, file, pos, info.next_sequence)? {
            Step::Batch(h) if h.kind == BatchKind::Seal => {
                info.next_sequence = Some(h.first_sequence);
                info.valid_end = pos + h.disk_len();
                info.tail = Tail::Sealed;
                break;
            }
            Step::Batch(h) => {
                info.first_sequence.get_or_insert(h.first_sequence);
                info.last_sequence = Some(h.last_sequence());
                info.next_sequence = Some(h.last_sequence() + 1);
                info.batches += 1;
                info.entries += u64::from(h.entry_count);
                info.data_bytes += u64::from(h.payload_len);
                pos += h.disk_len();
                info.valid_end = pos;
            }
            Step::Bad(..)
                if clean.is_some_and(|c| {
                    c.end == pos && info.next_sequence.is_none_or(|n| n == c.next_sequence)
                }) =>
            {
                // The log ends where the last clean close left it: no later batch of
                // this file can exist (the next open removes the marker before it
                // writes). What follows is never-written space: zeros, a stale
                // batch header, or, in a recycled file, the middle of an old batch,
                // whose bytes are no header at all. A file that holds no entries,
                // with no earlier file to say where it starts, starts where the
                // close recorded the log going on: the entries before are in files
                // that must still be there or that a checkpoint covers.
                if let Some(c) = clean {
                    info.next_sequence.get_or_insert(c.next_sequence);
                }
                break;
            }
            Step::Bad(reason, zero) => {
                // The probe reads the rest of the file, in whole chunks again.
                r.limit_to(r.len);
                let from = pos + BLOCK_SIZE as u64;
                let next = match &index {
                    Some(ix) if ix.covers(from) => ix.probe(from, info.next_sequence),
                    _ => probe(&mut r, file, from, info.next_sequence)?,
                };
                // The last clean close recorded the log ending further on: it had
                // fdatasynced everything before that end, and nothing is written to
                // the file between the close and the next open (which removes the
                // marker first). Bad bytes before it are damage, not a torn write.
                let before_clean_end = clean.is_some_and(|c| pos < c.end);
                // Evidence that the bad bytes had been synced: a later batch of this
                // file (any of them, not only the first) recorded a synced_through
                // covering the sequence expected here. Not looked for (a read of
                // the rest of the file) where the bytes are damage anyway, and read
                // once for all the damaged stretches of the file (`HeaderIndex`).
                let synced = match next {
                    Some((at, h)) if newest && !before_clean_end => {
                        if index.as_ref().is_none_or(|ix| !ix.covers(at)) {
                            index = Some(HeaderIndex::build(&mut r, file, at)?);
                        }
                        // The index holds `at`, a header past its start; read
                        // again should it not.
                        match index.as_ref().and_then(|ix| ix.max_synced_through(at)) {
                            Some(s) => Some(s),
                            None => Some(max_synced_through(&mut r, file, at, &h)?),
                        }
                    }
                    _ => None,
                };
                let synced_over = match (next, synced, info.next_sequence) {
                    (Some(_), Some(s), Some(exp)) => s >= exp,
                    // The log's first batch is bad: damaged if everything before the
                    // first later batch had been synced.
                    (Some((_, h)), Some(s), None) => {
                        s > 0 && s.saturating_add(1) >= h.first_sequence
                    }
                    _ => false,
                };
                let damaged = !newest || synced_over || before_clean_end;
                if damaged {
                    let mut err_reason = match next {
                        Some((at, h)) => format!(
                            "{reason}; a valid batch (sequence {}) follows at offset {at}",
                            h.first_sequence
                        ),
                        None => reason.clone(),
                    };
                    if let Some(c) = clean.filter(|_| before_clean_end) {
                        err_reason.push_str(&format!(
                            "; the last clean close recorded the log ending at offset {} (next sequence {})",
                            c.end, c.next_sequence
                        ));
                    }
                    if mode == RecoveryMode::Strict {
                        return Err(Error::corrupt(path, pos, err_reason));
                    }
                    match next {
                        Some((at, h)) => {
                            tracing::warn!(file = %path.display(), offset = pos, reason = %err_reason, "skipping corrupt WAL bytes (tolerant recovery)");
                            info.skipped.push((pos, at, err_reason));
                            info.next_sequence = Some(h.first_sequence);
                            // The log goes on at `at`: should nothing valid
                            // follow, appends continue there, after the skip,
                            // not over the skipped bytes (a later open would
                            // take them for more damage and skip them too).
                            info.valid_end = at;
                            pos = at;
                            continue;
                        }
                        None => {
                            tracing::warn!(file = %path.display(), offset = pos, reason = %err_reason, "WAL file ends in corrupt bytes (tolerant recovery)");
                            info.skipped.push((pos, r.len, err_reason));
                            break;
                        }
                    }
                }
                info.stale_after_end = next.is_some();
                if !zero || next.is_some() {
                    info.tail = Tail::Torn {
                        offset: pos,
                        reason,
                    };
                }
                break;
            }
        }
    }
    Ok(info)
}

/// A seal names the sequence the next file starts at. It may skip sequences only
/// when the WAL sealed a file whose log ended before the checkpoint (the entries
/// skipped are then covered by it); any other skip means the seal is not where the
/// writer put it (a stale or misplaced block), and the entries it would hide are lost.
fn check_seal_skip(
    info: &FileInfo,
    expected_next: Option<u64>,
    checkpoint: u64,
    mode: RecoveryMode,
) -> Result<()> {
    if info.tail != Tail::Sealed {
        return Ok(());
    }
    let (Some(before), Some(after)) = (
        info.last_sequence.map(|l| l + 1).or(expected_next),
        info.next_sequence,
    ) else {
        return Ok(());
    };
    if after <= before || after <= checkpoint + 1 {
        return Ok(());
    }
    let at = info.valid_end - BLOCK_SIZE as u64;
    let reason = format!("seal says the next file starts at sequence {after}, but this file ends at {before} and the checkpoint is {checkpoint}");
    if mode == RecoveryMode::Strict {
        return Err(Error::corrupt(&info.path, at, reason));
    }
    tracing::warn!(file = %info.path.display(), offset = at, reason = %reason, "accepting a seal that skips entries (tolerant recovery)");
    Ok(())
}

/// The start of a log whose files hold no entries, checked as [`scan_dir`] checks
/// the first entry of one that holds some: entries are gone only once a checkpoint
/// covers them. Where the next entry goes is known from a seal (an archived file
/// retired only once the checkpoint covers its entries, so the file after it starts
/// at checkpoint + 1 or below) or from the last clean close (which recorded where
/// the log went on, the entries before it in files that are gone only if a
/// checkpoint covers them). Without a checkpoint no file has been retired (see
/// [`super::Wal::checkpoint`]), so the oldest file must be the first one.
fn check_empty_log_start(
    files: &[FileInfo],
    oldest: &FileInfo,
    next: Option<u64>,
    has_checkpoint: bool,
    cp_sequence: u64,
    mode: RecoveryMode,
) -> Result<()> {
    if !has_checkpoint && oldest.number > 1 {
        return Err(Error::corrupt(
            &oldest.path,
            0,
            format!(
                "the log holds no entries and its oldest file is number {}, but there is no checkpoint (files are retired only once one covers them): files 1 to {} and their entries are missing",
                oldest.number,
                oldest.number - 1
            ),
        ));
    }
    let Some(next) = next.filter(|&n| n > cp_sequence.saturating_add(1)) else {
        return Ok(());
    };
    // Tolerant recovery that skipped damage lost the entries there, as many as
    // the skipped bytes can hold (see the check of a log's first entry).
    let skipped: u64 = files
        .iter()
        .flat_map(|f| &f.skipped)
        .map(|(at, end, _)| end - at)
        .sum();
    let explained = mode == RecoveryMode::TolerateCorruption
        && next - (cp_sequence + 1) <= skipped / ENTRY_HEADER_LEN as u64;
    if explained {
        tracing::warn!(file = %oldest.path.display(), from = cp_sequence + 1, to = next - 1, "sequences lost to corruption in a log left without entries (tolerant recovery)");
        return Ok(());
    }
    Err(Error::corrupt(
        &oldest.path,
        BLOCK_SIZE as u64,
        format!("the log holds no entries and goes on at sequence {next} but the checkpoint is {cp_sequence}: entries are missing"),
    ))
}

/// Scans every file of the WAL directory in order and checks they form one log.
///
/// # Errors
/// I/O errors; [`Error::Corrupt`] for damaged files, missing files, sequence gaps
/// between files, or a checkpoint that refers to entries no longer present.
pub fn scan_dir(dir: &Path, mode: RecoveryMode) -> Result<DirScan> {
    let checkpoint = checkpoint::load(dir)?;
    let clean = clean_close::load(dir)?;
    let mut paths: Vec<(Option<u64>, PathBuf)> = list_archived(dir)?
        .into_iter()
        .map(|(n, p)| (Some(n), p))
        .collect();
    let current = dir.join(CURRENT);
    // Anything at the name counts, a dangling link too (reading it then fails,
    // naming it): taken as absent, the open would put a new file over it and the
    // log would go on without the entries it holds.
    match std::fs::symlink_metadata(&current) {
        Ok(_) => paths.push((None, current)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("stat", &current, e)),
    }
    let mut files: Vec<FileInfo> = Vec::with_capacity(paths.len());
    let mut expected_next: Option<u64> = None;
    let count = paths.len();
    let mut progress = crate::progress::Progress::new("scanning the WAL");
    for (i, (number, path)) in paths.into_iter().enumerate() {
        progress.tick(i as u64, Some(count as u64), "files");
        let newest = i + 1 == count;
        if let (Some(n), Some(prev)) = (number, files.last()) {
            if n != prev.number + 1 {
                return Err(Error::corrupt(
                    &path,
                    0,
                    format!("file {n} follows file {}: files are missing", prev.number),
                ));
            }
        }
        let want_number = number.or_else(|| files.last().map(|f| f.number + 1));
        // Tolerant recovery that skipped to the end of the previous file (its last
        // batches and seal lost) cannot know where this file starts: its first
        // batch may start later, as after any skip, but never earlier.
        let after_skip = files.last().is_some_and(|f| {
            mode == RecoveryMode::TolerateCorruption
                && f.skipped.last().is_some_and(|(_, end, _)| *end == f.size)
        });
        let want_next = if after_skip { None } else { expected_next };
        let info = scan_file_after_close(&path, want_number, newest, want_next, mode, clean)?;
        if info.number == u64::MAX {
            return Err(Error::corrupt(
                &path,
                0,
                format!("file number {} leaves none for a next file", info.number),
            ));
        }
        if let (true, Some(exp), Some(first)) = (after_skip, expected_next, info.first_sequence) {
            if first < exp {
                return Err(Error::corrupt(
                    &path,
                    BLOCK_SIZE as u64,
                    format!("file starts at sequence {first}, before {exp}, where the previous file's entries reached"),
                ));
            }
            if first > exp {
                tracing::warn!(file = %path.display(), from = exp, to = first - 1, "sequences lost to corruption at the end of the previous file (tolerant recovery)");
            }
        }
        check_seal_skip(
            &info,
            expected_next,
            checkpoint.map_or(0, |c| c.sequence),
            mode,
        )?;
        // A gap before the active file shows in its header: the scan above checked
        // it against `want_number`.
        expected_next = info.next_sequence;
        files.push(info);
    }
    let last_sequence = files
        .iter()
        .rev()
        .find_map(|f| f.last_sequence)
        .unwrap_or(0);
    // Files are deleted only once a checkpoint covers them, so the log starts right
    // after the checkpoint (at 1 without one); a later start means lost files.
    let cp_sequence = checkpoint.map_or(0, |c| c.sequence);
    if let Some(i) = files.iter().position(|f| f.first_sequence.is_some()) {
        let first = files[i].first_sequence.expect("found above");
        // Tolerant recovery that skipped damage before the log's first valid batch
        // (in a file before it, or at the start of its own: batches start at the
        // block after the header) lost the entries there, as after any skip: as
        // many as the skipped bytes can hold (each entry takes at least its
        // header), never more. More are missing files.
        let skipped: u64 = files[..i]
            .iter()
            .flat_map(|f| &f.skipped)
            .chain(
                files[i]
                    .skipped
                    .first()
                    .filter(|(at, _, _)| *at == BLOCK_SIZE as u64),
            )
            .map(|(at, end, _)| end - at)
            .sum();
        let explained = mode == RecoveryMode::TolerateCorruption
            && first.saturating_sub(cp_sequence.saturating_add(1))
                <= skipped / ENTRY_HEADER_LEN as u64;
        if first > cp_sequence + 1 && explained {
            tracing::warn!(file = %files[i].path.display(), from = cp_sequence + 1, to = first - 1, "sequences lost to corruption at the start of the log (tolerant recovery)");
        } else if first > cp_sequence + 1 {
            return Err(Error::corrupt(
                &files[i].path,
                BLOCK_SIZE as u64,
                format!("log starts at sequence {first} but the checkpoint is {cp_sequence}: entries are missing"),
            ));
        }
    } else if let Some(oldest) = files.first() {
        check_empty_log_start(
            &files,
            oldest,
            expected_next,
            checkpoint.is_some(),
            cp_sequence,
            mode,
        )?;
    } else if let Some(c) = clean.filter(|c| c.next_sequence > cp_sequence.saturating_add(1)) {
        // An open makes `current.wal` durable before anything else, and
        // neither a checkpoint nor retention removes it: with no file left,
        // the last clean close saying the log went on past the checkpoint
        // means the entries in between are gone with the files. (A log whose
        // every entry the checkpoint covers may lose its files, by hand too:
        // it goes on after the checkpoint. Without a marker, where the log
        // ended is recorded nowhere; see Known limits.) Tolerant recovery
        // refuses it too: nothing it skipped explains it.
        return Err(Error::corrupt(
            dir.join(CURRENT),
            0,
            format!(
                "no WAL file is left, but the last clean close recorded the log going on at \
                 sequence {} and the checkpoint is {cp_sequence}: the entries after the \
                 checkpoint are missing with the files; to start a new log anyway, accepting \
                 that loss, remove clean-close.json",
                c.next_sequence
            ),
        ));
    }
    let next_sequence = expected_next.unwrap_or(1).max(last_sequence + 1);
    Ok(DirScan {
        files,
        checkpoint,
        last_sequence,
        next_sequence,
    })
}

/// [`scan_dir`] of what the disk holds: first drops the cached pages of every WAL
/// file, as [`super::Wal::open`] does for the active file before its scan, so that
/// a tool reads what recovery would. ext4 keeps pages whose write-back failed
/// cached as if written (clean: the advice drops them); without the drop a tool
/// would report entries the disk lacks and recovery does not return. Writes
/// nothing: no sync is asked for. Dirty pages (writes not yet written back) are
/// not dropped; the kernel only starts writing them back, as it would anyway.
///
/// # Errors
/// As [`scan_dir`]; listing the directory or opening a file can fail too.
pub fn scan_dir_uncached(dir: &Path, mode: RecoveryMode) -> Result<DirScan> {
    let mut paths: Vec<PathBuf> = list_archived(dir)?.into_iter().map(|(_, p)| p).collect();
    paths.push(dir.join(CURRENT));
    for path in paths {
        // Absent, or unreadable: the scan reports it, naming the file.
        if let Ok(f) = files::open_regular(&path) {
            files::drop_cached_pages(&f);
        }
    }
    scan_dir(dir, mode)
}

/// Streams the entries of scanned files, from a sequence on, one batch in memory at a time.
pub struct EntryIter {
    files: VecDeque<FileInfo>,
    /// A file opened before appends could rename it, read through this handle
    /// instead of by its path (see [`EntryIter::reading_active`]).
    active: Option<(PathBuf, Arc<File>)>,
    from: u64,
    reader: Option<(ChunkReader, FileInfo, u64)>,
    ready: VecDeque<WalEntry>,
    failed: bool,
    /// A [`WalReader`]'s shared lock on the directory, kept while the
    /// iterator reads.
    lock: Option<Arc<File>>,
}

impl EntryIter {
    /// Iterates entries with sequence ≥ `from` in `files`.
    pub fn new(files: Vec<FileInfo>, from: u64) -> Self {
        let files = files
            .into_iter()
            .filter(|f| f.last_sequence.is_some_and(|l| l >= from))
            .collect();
        EntryIter {
            files,
            active: None,
            from,
            reader: None,
            ready: VecDeque::new(),
            failed: false,
            lock: None,
        }
    }

    /// Reads the file at `path` through `file`, opened before the WAL could append:
    /// a rotation renames the active file and puts a new one at its path, while the
    /// open handle keeps reading the file the scan validated.
    pub(crate) fn reading_active(mut self, path: PathBuf, file: Arc<File>) -> Self {
        self.active = Some((path, file));
        self
    }

    fn fill(&mut self) -> Result<bool> {
        loop {
            if self.reader.is_none() {
                let Some(f) = self.files.pop_front() else {
                    return Ok(false);
                };
                let mut r = match &self.active {
                    Some((path, file)) if *path == f.path => {
                        ChunkReader::with_file(Arc::clone(file), &f.path)?
                    }
                    _ => ChunkReader::open(&f.path)?,
                };
                r.limit_to(f.valid_end);
                self.reader = Some((r, f, BLOCK_SIZE as u64));
            }
            let (r, f, pos) = self.reader.as_mut().expect("set above");
            if *pos >= f.valid_end {
                self.reader = None;
                continue;
            }
            if let Some((_, end, _)) = f.skipped.iter().find(|(s, _, _)| *s == *pos) {
                *pos = *end;
                continue;
            }
            let hdr = decode_batch_header(r.get(*pos, BATCH_HEADER_LEN)?, f.id()).map_err(|e| {
                Error::corrupt(
                    &f.path,
                    *pos,
                    format!("batch changed since it was validated: {e:?}"),
                )
            })?;
            let at = *pos;
            *pos += hdr.disk_len();
            if hdr.kind != BatchKind::Entries || hdr.last_sequence() < self.from {
                continue;
            }
            let payload = r.get(at + BATCH_HEADER_LEN as u64, hdr.payload_len as usize)?;
            let from = self.from;
            let ready = &mut self.ready;
            let before = ready.len();
            for_each_entry(&hdr, payload, |e| {
                if e.sequence >= from {
                    ready.push_back(e.to_owned_entry());
                }
            })
            .map_err(|(_, why)| {
                // Nothing of a batch that fails its checks is returned.
                ready.truncate(before);
                Error::corrupt(&f.path, at, why)
            })?;
            return Ok(true);
        }
    }
}

impl Iterator for EntryIter {
    type Item = Result<WalEntry>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            if self.failed {
                return None;
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Read-only access to a WAL directory for tools: file summaries and entries.
///
/// A WAL that is open (by this process or another) changes its files under a
/// reader: rotation renames `current.wal` and puts a new file at its path,
/// retention removes or recycles archived files. So a reader takes a shared
/// lock on the directory's `LOCK` ([`super::files::lock_dir_shared`]), held
/// by the reader and by every iterator it returns: opening one while a WAL
/// has the directory open fails with [`Error::Locked`](crate::error::Error),
/// and opening a WAL while one is held does too.
pub struct WalReader {
    scan: DirScan,
    lock: Option<Arc<File>>,
}

impl WalReader {
    /// Scans `dir` strictly.
    ///
    /// # Errors
    /// As [`scan_dir`]; [`Error::Locked`](crate::error::Error) while a WAL
    /// has `dir` open.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, RecoveryMode::Strict)
    }

    /// Scans `dir` with the given handling of corruption, reading what the disk
    /// holds (see [`scan_dir_uncached`]).
    ///
    /// # Errors
    /// As [`scan_dir`]; [`Error::Locked`](crate::error::Error) while a WAL
    /// has `dir` open.
    pub fn open_with(dir: impl AsRef<Path>, mode: RecoveryMode) -> Result<Self> {
        let lock = super::files::lock_dir_shared(dir.as_ref())?.map(Arc::new);
        Ok(WalReader {
            scan: scan_dir_uncached(dir.as_ref(), mode)?,
            lock,
        })
    }

    /// The scan result: files, checkpoint, sequence range.
    pub fn scan(&self) -> &DirScan {
        &self.scan
    }

    /// Entries with sequence ≥ `from`, in order. The iterator holds the
    /// reader's lock on the directory until it is dropped.
    pub fn entries_from(&self, from: u64) -> EntryIter {
        let mut entries = EntryIter::new(self.scan.files.clone(), from);
        entries.lock = self.lock.clone();
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::{
        max_synced_through, probe, scan_file, ChunkReader, EntryIter, HeaderIndex, Tail, BYTES_READ,
    };
    use crate::error::Error;
    use crate::wal::config::RecoveryMode;
    use crate::wal::format::{
        decode_batch_header, encode_batch_header, encode_entry, encode_file_header, entries_crc,
        entry_len, BatchHeader, BatchKind, FileId, WalEntryType, BATCH_HEADER_LEN, BLOCK_SIZE,
    };

    const KEY: u64 = 0x5eed_cafe_f00d_0001;
    /// Entry data per batch: with its headers, a batch of 8 blocks.
    const DATA: usize = 32_000;
    const BATCH_BLOCKS: usize = 8;
    /// Batches written between two fdatasyncs (`interval` mode): each records the
    /// sync before its group.
    const GROUP: u64 = 6;

    fn data_for(seq: u64) -> Vec<u8> {
        (0..DATA).map(|i| (seq as usize * 31 + i) as u8).collect()
    }

    /// Writes at `at` a batch of one entry of `data` with sequence `seq`; returns
    /// its length on disk.
    fn put_batch(file: &mut [u8], at: usize, seq: u64, synced_through: u64, data: &[u8]) -> usize {
        let payload = entry_len(1, data.len());
        let crc = encode_entry(
            &mut file[at + BATCH_HEADER_LEN..at + BATCH_HEADER_LEN + payload],
            seq,
            0,
            WalEntryType::Record,
            b"t",
            0,
            data,
        );
        let h = BatchHeader {
            kind: BatchKind::Entries,
            file_number: 1,
            first_sequence: seq,
            entry_count: 1,
            payload_len: payload as u32,
            synced_through,
            entries_crc: Some(entries_crc(0, crc)),
        };
        encode_batch_header(&mut file[at..at + BATCH_HEADER_LEN], &h, KEY);
        h.disk_len() as usize
    }

    /// A newest file of `count` one-entry batches (sequence `s` at block
    /// `1 + (s - 1) * 8`), then 16 never-written blocks.
    fn file_of_batches(count: u64) -> Vec<u8> {
        let len = (1 + count as usize * BATCH_BLOCKS + 16) * BLOCK_SIZE;
        let mut file = vec![0u8; len];
        encode_file_header(&mut file[..BLOCK_SIZE], 1, 0, KEY);
        for s in 1..=count {
            let at = batch_offset(s) as usize;
            let len = put_batch(&mut file, at, s, (s - 1) / GROUP * GROUP, &data_for(s));
            assert_eq!(len, BATCH_BLOCKS * BLOCK_SIZE);
        }
        file
    }

    fn batch_offset(seq: u64) -> u64 {
        (1 + (seq - 1) * BATCH_BLOCKS as u64) * BLOCK_SIZE as u64
    }

    /// A newest file with a damaged batch every other batch (a failing disk):
    /// every damaged stretch a later batch's `synced_through` covers is skipped,
    /// the first one none covers is the torn tail, and the scan reads the file a
    /// bounded number of times, not once per damaged stretch.
    #[test]
    fn a_tolerant_scan_of_a_file_damaged_every_other_batch_reads_it_a_bounded_number_of_times() {
        const COUNT: u64 = 300;
        let mut bytes = file_of_batches(COUNT);
        let damage = |s: u64| match s % 3 {
            // Zeroed header block, garbage header, flipped entry bytes.
            0 => ("zeroed block (end of written data)", Some(0u8)),
            1 => ("bad batch magic", Some(0xa5)),
            _ => ("entry 0: ", None),
        };
        for s in (2..=COUNT).step_by(2) {
            let at = batch_offset(s) as usize;
            match damage(s).1 {
                Some(b) => bytes[at..at + BLOCK_SIZE].fill(b),
                None => bytes[at + BATCH_HEADER_LEN + 100] ^= 0xff,
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("current.wal");
        std::fs::write(&path, &bytes).unwrap();
        let len = bytes.len() as u64;
        drop(bytes);

        let before = BYTES_READ.with(std::cell::Cell::get);
        let info = scan_file(
            &path,
            Some(1),
            true,
            Some(1),
            RecoveryMode::TolerateCorruption,
        )
        .unwrap();
        let read = BYTES_READ.with(std::cell::Cell::get) - before;

        // The last group's batches record no sync covering it: its first damaged
        // batch is a torn write, and the log ends there.
        let last_group = (COUNT - 1) / GROUP * GROUP + 1;
        let torn = (last_group..=COUNT).find(|s| s % 2 == 0).unwrap();
        let skipped: Vec<(u64, u64)> = info.skipped.iter().map(|&(a, e, _)| (a, e)).collect();
        let expected: Vec<(u64, u64)> = (2..torn)
            .step_by(2)
            .map(|s| (batch_offset(s), batch_offset(s + 1)))
            .collect();
        assert_eq!(skipped, expected);
        for ((_, _, reason), s) in info.skipped.iter().zip((2..torn).step_by(2)) {
            let (why, _) = damage(s);
            assert!(reason.starts_with(why), "{s}: {reason}");
            assert!(
                reason.ends_with(&format!(
                    "; a valid batch (sequence {}) follows at offset {}",
                    s + 1,
                    batch_offset(s + 1)
                )),
                "{s}: {reason}"
            );
        }
        assert!(
            matches!(&info.tail, Tail::Torn { offset, reason }
                if *offset == batch_offset(torn) && reason.starts_with(damage(torn).0)),
            "{:?}",
            info.tail
        );
        assert!(info.stale_after_end);
        assert_eq!(info.valid_end, batch_offset(torn));
        assert_eq!(info.first_sequence, Some(1));
        assert_eq!(info.last_sequence, Some(torn - 1));
        assert_eq!(info.next_sequence, Some(torn));
        assert_eq!(info.batches, torn / 2);
        assert_eq!(info.entries, torn / 2);
        let entries: Vec<_> = EntryIter::new(vec![info], 1)
            .collect::<crate::error::Result<_>>()
            .unwrap();
        let seqs: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, (1..torn).step_by(2).collect::<Vec<_>>());
        for e in &entries {
            assert_eq!(&e.data[..], &data_for(e.sequence)[..], "{}", e.sequence);
        }

        // Strict mode stops at the first damaged batch.
        match scan_file(&path, Some(1), true, Some(1), RecoveryMode::Strict) {
            Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, batch_offset(2)),
            other => panic!("expected corruption, got {other:?}"),
        }

        assert!(
            read <= 4 * len,
            "the scan read {read} bytes of a file of {len}"
        );
    }

    /// The header index answers every probe and every proof of synced bytes as
    /// the block-by-block reads it replaces do, on files with batches of several
    /// sizes, `synced_through` in any order, and damage: zeroed and garbage
    /// blocks, and copies of header blocks elsewhere (inside other batches too),
    /// whose batches overlap the ones around them.
    #[test]
    fn the_header_index_answers_as_the_reads_it_replaces() {
        let file_id = FileId {
            number: 1,
            key: KEY,
        };
        for seed in 1..=60u64 {
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = |n: u64| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % n
            };
            let blocks = 48 + next(48) as usize;
            let mut bytes = vec![0u8; blocks * BLOCK_SIZE];
            encode_file_header(&mut bytes[..BLOCK_SIZE], 1, 0, KEY);
            let mut at = BLOCK_SIZE;
            let mut seq = 1;
            let mut headers = Vec::new();
            while at + 3 * BLOCK_SIZE <= bytes.len() - 2 * BLOCK_SIZE {
                let data = vec![seq as u8; next(3 * BLOCK_SIZE as u64 - 200) as usize];
                let synced = next(seq + 3);
                headers.push(at);
                at += put_batch(&mut bytes, at, seq, synced, &data);
                seq += 1 + next(2);
            }
            for _ in 0..1 + next(6) {
                let block = (1 + next(blocks as u64 - 1) as usize) * BLOCK_SIZE;
                match next(3) {
                    0 => bytes[block..block + BLOCK_SIZE].fill(0),
                    1 => bytes[block..block + BATCH_HEADER_LEN].fill(0xa5),
                    2 if next(2) == 0 => {
                        let from = headers[next(headers.len() as u64) as usize];
                        let copy = bytes[from..from + BLOCK_SIZE].to_vec();
                        bytes[block..block + BLOCK_SIZE].copy_from_slice(&copy);
                    }
                    _ => {
                        // A header of this file that no batch around it knows
                        // of, recording more synced than any of them.
                        let h = BatchHeader {
                            kind: BatchKind::Entries,
                            file_number: 1,
                            first_sequence: 1 + next(seq + 1),
                            entry_count: 1,
                            payload_len: 36 + next(4 * BLOCK_SIZE as u64) as u32,
                            synced_through: seq + next(seq),
                            entries_crc: None,
                        };
                        encode_batch_header(&mut bytes[block..block + BATCH_HEADER_LEN], &h, KEY);
                    }
                }
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("current.wal");
            std::fs::write(&path, &bytes).unwrap();
            let mut r = ChunkReader::open(&path).unwrap();
            let block = BLOCK_SIZE as u64;
            let start = block * (1 + next(8));
            let index = HeaderIndex::build(&mut r, file_id, start).unwrap();
            let mut decodable = 0;
            for from in (start..bytes.len() as u64).step_by(BLOCK_SIZE) {
                assert!(index.covers(from));
                let mins = [None, Some(1), Some(1 + next(seq + 1)), Some(seq + 1)];
                for min in mins {
                    assert_eq!(
                        index.probe(from, min),
                        probe(&mut r, file_id, from, min).unwrap(),
                        "seed {seed}: probe from {from}, min {min:?}"
                    );
                }
                let at = from as usize;
                if let Ok(h) = decode_batch_header(&bytes[at..at + BATCH_HEADER_LEN], file_id) {
                    decodable += 1;
                    assert_eq!(
                        index.max_synced_through(from),
                        Some(max_synced_through(&mut r, file_id, from, &h).unwrap()),
                        "seed {seed}: synced_through from {from}"
                    );
                } else {
                    assert_eq!(index.max_synced_through(from), None);
                }
            }
            assert!(decodable > 0, "seed {seed}");
        }
    }
}
