//! `streamline-wal`: read-only inspection of a Streamline WAL directory, for
//! operators (like `pg_waldump`).
//!
//! ```text
//! streamline-wal inspect DIR                      files, sizes, sequence ranges, checkpoint, free space
//! streamline-wal dump DIR [--from SEQ] [--format text|json]   one entry per line
//! streamline-wal verify DIR                       exit 0 when consistent; 1 with the first problem
//! ```
//!
//! Exit codes of every command: 0 done (consistent, for `verify`); 1 the WAL is
//! corrupt; 2 a usage error, a WAL in use, or an I/O error (reading the WAL, or
//! writing the output: output that stops early is an error, except when its
//! reader went away, as with `dump DIR | head`).
//!
//! Nothing here writes to the directory: it scans with [`WalReader`] / `scan_dir_uncached`,
//! which never truncate or seal (that is `Wal::open`'s job). A directory a process
//! has open (its `LOCK` held) is refused: rotations and retention change its files
//! under a scan, which would report damage that is not there. While the tool runs
//! it holds a shared lock on `LOCK`, so a broker starting meanwhile finds the WAL
//! in use (a directory without a `LOCK` file, a copy made without it, has
//! nothing to lock). A file at a WAL name that is not a regular file is an
//! error naming it, never a wait for a FIFO's writer.
//! Like recovery, it reads what the disk holds: it drops the WAL files' cached
//! pages first (`scan_dir_uncached`), since ext4 keeps pages whose write-back
//! failed cached as if written; it syncs nothing.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand, ValueEnum};
use streamline::{
    wal::{
        format::BLOCK_SIZE, recovery::scan_dir_uncached, EntryIter, FileInfo, RecoveryMode, Tail,
        WalEntry, WalReader,
    },
    Error,
};

#[derive(Parser)]
#[command(
    name = "streamline-wal",
    version,
    about = "Inspect, dump and verify a Streamline WAL directory (read-only)",
    after_help = "Exit codes: 0 done (for verify: consistent); 1 the WAL is corrupt; 2 a usage error, a WAL in use, or an I/O error reading the WAL or writing the output (output cut short is an error, unless its reader went away, as with `dump DIR | head`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Files, sizes, sequence ranges, the checkpoint and free space in the current file.
    Inspect {
        /// The WAL directory (e.g. data/wal).
        dir: PathBuf,
    },
    /// Every entry, one per line, in sequence order.
    Dump {
        /// The WAL directory.
        dir: PathBuf,
        /// First sequence to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Checks every file, batch and entry. Exit 0 when consistent; 1 with the file,
    /// byte offset and reason of the first problem and how many entries are
    /// recoverable before it.
    Verify {
        /// The WAL directory.
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Human-readable, with a short escaped data preview.
    Text,
    /// One JSON object per line, data as hex.
    Json,
}

/// Takes a shared lock on `<dir>/LOCK` when the file exists (a WAL that was
/// never opened has none, and nothing holds it). Only reads: the tool may run
/// where the directory is read-only.
fn lock_shared(dir: &Path) -> Result<Option<std::fs::File>, String> {
    let path = dir.join("LOCK");
    let f = match streamline::wal::files::open_regular(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    match f.try_lock_shared() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "{} is in use by a running process (its LOCK is held): stop it first, or check a copy taken from a file system snapshot (a copy made file by file while it runs is not one moment of the log, and reads as damaged)",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("lock {}: {e}", path.display())),
    }
}

/// Why `dir`, a directory that can be read, is not a WAL directory: it holds
/// no WAL file (current, next or archived), no `checkpoint.json` and no `clean-close.json`
/// (every WAL opened once has its `current.wal`; one whose files were all
/// removed keeps its checkpoint). So `verify data` (the broker's data
/// directory, not its `data/wal`) is refused rather than reported consistent.
fn not_a_wal(dir: &Path) -> Option<String> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut names = entries.filter_map(|e| e.ok().map(|e| e.file_name()));
    let is_wal = names.any(|n| {
        use streamline::wal::{checkpoint, clean_close, files};
        let n = n.to_string_lossy();
        [
            files::CURRENT,
            files::NEXT,
            checkpoint::CHECKPOINT_FILE,
            clean_close::CLEAN_CLOSE_FILE,
        ]
        .contains(&n.as_ref())
            || files::parse_archived_name(&n).is_some()
    });
    if is_wal {
        return None;
    }
    let hint = if dir.join("wal").is_dir() {
        format!(
            " (the broker keeps its WAL in {})",
            dir.join("wal").display()
        )
    } else {
        String::new()
    };
    Some(format!(
        "{} holds no WAL file, checkpoint.json or clean-close.json: not a WAL directory{hint}",
        dir.display()
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = match &cli.command {
        Cmd::Inspect { dir } | Cmd::Dump { dir, .. } | Cmd::Verify { dir } => dir.clone(),
    };
    let _lock = match lock_shared(&dir) {
        Ok(l) => l,
        Err(why) => {
            eprintln!("streamline-wal: {why}");
            return ExitCode::from(2);
        }
    };
    if let Some(why) = not_a_wal(&dir) {
        eprintln!("streamline-wal: {why}");
        return ExitCode::from(2);
    }
    let r = match cli.command {
        Cmd::Inspect { dir } => inspect(&dir).map(|()| ExitCode::SUCCESS),
        Cmd::Dump { dir, from, format } => dump(&dir, from, format).map(|()| ExitCode::SUCCESS),
        Cmd::Verify { dir } => verify(&dir),
    };
    match r {
        Ok(code) => code,
        Err(Failed::Wal(e)) => {
            eprintln!("streamline-wal: {e}");
            if matches!(e, Error::Corrupt { .. }) {
                eprintln!("streamline-wal: run `streamline-wal verify` for details");
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
        Err(Failed::Output(e)) => {
            eprintln!("streamline-wal: writing to standard output: {e}");
            ExitCode::from(2)
        }
    }
}

/// Why a command stopped.
enum Failed {
    /// Reading the WAL failed: exit 1 when it is corrupt, 2 for an I/O error.
    Wal(Error),
    /// Writing the output failed (other than its reader going away): exit 2.
    Output(std::io::Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed::Wal(e)
    }
}

/// The outcome of writing to standard output: a reader that went away (`dump |
/// head`) ends the output quietly (`Ok(false)`: stop writing); any other error
/// (a full disk, a closed descriptor) fails the command, since what was written
/// is incomplete.
fn written(r: std::io::Result<()>) -> Result<bool, Failed> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Failed::Output(e)),
    }
}

fn tail_text(t: &Tail) -> String {
    match t {
        Tail::Sealed => "sealed".into(),
        Tail::Clean => "clean".into(),
        Tail::Torn { offset, reason } => format!("torn at byte {offset}: {reason}"),
    }
}

fn range(f: &FileInfo) -> String {
    match (f.first_sequence, f.last_sequence) {
        (Some(a), Some(b)) => format!("{a}..={b}"),
        _ => "-".into(),
    }
}

fn inspect(dir: &Path) -> Result<(), Failed> {
    use std::fmt::Write as _;
    let reader = WalReader::open(dir)?;
    let scan = reader.scan();
    // Built whole, then written at once: writing into a String cannot fail.
    let mut out = String::new();
    let _ = writeln!(out, "directory   {}", dir.display());
    match &scan.checkpoint {
        Some(c) => {
            let _ = writeln!(
                out,
                "checkpoint  sequence {} (taken at {} ms)",
                c.sequence, c.timestamp_ms
            );
        }
        None => {
            let _ = writeln!(out, "checkpoint  none");
        }
    }
    let _ = writeln!(
        out,
        "sequences   last {} next {}",
        scan.last_sequence,
        next_after_open(scan)
    );
    let _ = writeln!(out, "last close  {}", last_close(dir, scan)?);
    let _ = writeln!(
        out,
        "{:<14} {:>6} {:>11} {:>21} {:>8} {:>8} {:>11}  tail",
        "file", "number", "size", "sequences", "batches", "entries", "data bytes"
    );
    for f in &scan.files {
        let name = f
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<14} {:>6} {:>11} {:>21} {:>8} {:>8} {:>11}  {}",
            name,
            f.number,
            f.size,
            range(f),
            f.batches,
            f.entries,
            f.data_bytes,
            tail_text(&f.tail)
        );
    }
    if let Some(cur) = scan.files.last().filter(|f| f.tail != Tail::Sealed) {
        if is_current(cur) {
            // The last block stays reserved for the seal that ends the file.
            let free = cur
                .size
                .saturating_sub(cur.valid_end)
                .saturating_sub(BLOCK_SIZE as u64);
            let _ = writeln!(
                out,
                "current file: {} of {} bytes free ({} used)",
                free, cur.size, cur.valid_end
            );
        } else {
            let _ = writeln!(
                out,
                "newest file: {} is archived and not sealed (no {}): the next open seals it and starts a new file",
                cur.path.display(),
                streamline::wal::files::CURRENT
            );
        }
    }
    let mut stdout = std::io::stdout().lock();
    written(
        stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush()),
    )?;
    Ok(())
}

/// The sequence `Wal::open` gives the next entry: past the checkpoint when
/// the checkpoint is past the end of the log (its entries were applied and
/// their files retired, or the files were lost).
fn next_after_open(scan: &streamline::wal::recovery::DirScan) -> u64 {
    scan.checkpoint
        .map_or(0, |c| c.sequence.saturating_add(1))
        .max(scan.next_sequence)
}

/// Whether `f` is the active file, `current.wal`.
fn is_current(f: &FileInfo) -> bool {
    f.path.file_name() == Some(std::ffi::OsStr::new(streamline::wal::files::CURRENT))
}

/// What the clean-close record of `dir` says, as the scan takes it: it is
/// believed only when it names the newest file, by number and key (see
/// `clean_close`); one that names another file, or that cannot be read, is
/// shown as ignored, not as the log's close.
fn last_close(dir: &Path, scan: &streamline::wal::recovery::DirScan) -> Result<String, Failed> {
    use streamline::wal::clean_close;
    let newest = scan.files.last();
    Ok(match clean_close::load(dir)? {
        Some(m) if newest.is_some_and(|f| f.number == m.file_number && f.key == m.file_key) => {
            format!(
                "clean: file {} ended at byte {}, next sequence {}",
                m.file_number, m.end, m.next_sequence
            )
        }
        Some(m) => format!(
            "a record names file {} (key {:#018x}), not the newest file: ignored (the next open looks past the end of the log as after a crash)",
            m.file_number, m.file_key
        ),
        None if dir.join(clean_close::CLEAN_CLOSE_FILE).exists() => format!(
            "{} is there but unreadable, damaged or of another version: ignored (the next open looks past the end of the log as after a crash)",
            clean_close::CLEAN_CLOSE_FILE
        ),
        None => "not recorded (open now, or it crashed)".to_string(),
    })
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn entry_type(e: &WalEntry) -> &'static str {
    match e.entry_type {
        streamline::wal::WalEntryType::Record => "record",
        streamline::wal::WalEntryType::Checkpoint => "checkpoint",
        streamline::wal::WalEntryType::Truncate => "truncate",
    }
}

fn dump(dir: &Path, from: u64, format: Format) -> Result<(), Failed> {
    let reader = WalReader::open(dir)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for e in reader.entries_from(from) {
        let e = e?;
        let line = match format {
            Format::Json => serde_json::json!({
                "sequence": e.sequence,
                "timestamp": e.timestamp,
                "type": entry_type(&e),
                "topic": e.topic,
                "partition": e.partition,
                "len": e.data.len(),
                "crc32": e.crc32,
                "data_hex": hex(&e.data),
            })
            .to_string(),
            Format::Text => {
                let preview: String = e
                    .data
                    .iter()
                    .take(32)
                    .flat_map(|&b| std::ascii::escape_default(b))
                    .map(char::from)
                    .collect();
                let more = if e.data.len() > 32 { "..." } else { "" };
                // The topic escaped as the data is: the WAL takes any name,
                // and one holding a line break would forge a line.
                format!(
                    "seq={} ts={} type={} topic={} partition={} len={} crc32={:#010x} data=\"{preview}{more}\"",
                    e.sequence,
                    e.timestamp,
                    entry_type(&e),
                    e.topic.escape_debug(),
                    e.partition,
                    e.data.len(),
                    e.crc32
                )
            }
        };
        if !written(writeln!(out, "{line}"))? {
            return Ok(()); // e.g. piped into `head`
        }
    }
    written(out.flush())?;
    Ok(())
}

/// Entries recoverable before `offset` of `file`, from a tolerant scan (which
/// continues past the damage): all of them, those after the checkpoint (what
/// a tolerant open would replay of them: the rest were applied), and the
/// checkpoint's sequence. `None` when even that scan fails.
fn recoverable_before(dir: &Path, file: &Path, offset: u64) -> Option<(u64, u64, u64)> {
    let scan = scan_dir_uncached(dir, RecoveryMode::TolerateCorruption).ok()?;
    let checkpoint = scan.checkpoint.as_ref().map_or(0, |c| c.sequence);
    let mut count = 0;
    let mut before = Vec::new();
    for f in &scan.files {
        if f.path == file {
            let mut cut = f.clone();
            cut.valid_end = cut.valid_end.min(offset);
            cut.skipped.clear();
            let n = EntryIter::new(vec![cut.clone()], 0)
                .take_while(Result::is_ok)
                .count() as u64;
            before.push(cut);
            let after = EntryIter::new(before, checkpoint + 1)
                .take_while(Result::is_ok)
                .count() as u64;
            return Some((count + n, after, checkpoint));
        }
        count += f.entries;
        before.push(f.clone());
    }
    None
}

fn verify(dir: &Path) -> Result<ExitCode, Failed> {
    use std::fmt::Write as _;
    // The verdict is the exit code; its text goes out through `written`, so
    // output that cannot be written is exit 2 (not a panic), and a reader
    // that went away leaves the verdict's own code.
    let mut text = String::new();
    let verdict = match scan_dir_uncached(dir, RecoveryMode::Strict) {
        Ok(scan) => {
            // The scan validated every batch and entry; a torn tail of the newest
            // file is an interrupted write that recovery cuts, not damage.
            let entries: u64 = scan.files.iter().map(|f| f.entries).sum();
            let _ = writeln!(
                text,
                "ok: {} files, {entries} entries, sequences up to {}, checkpoint {}",
                scan.files.len(),
                scan.last_sequence,
                scan.checkpoint.map_or(0, |c| c.sequence)
            );
            if let Some(f) = scan.files.last() {
                if let Tail::Torn { offset, reason } = &f.tail {
                    let _ = writeln!(text, "note: {} ends in a torn write at byte {offset} ({reason}); opening the WAL ends the log there (the tear is cut, or the file sealed)", f.path.display());
                }
            }
            let next = next_after_open(&scan);
            if next != scan.next_sequence {
                let _ = writeln!(text, "note: the checkpoint ({}) is past the end of the log: opening the WAL goes on at sequence {next}, not {}", next - 1, scan.next_sequence);
            }
            ExitCode::SUCCESS
        }
        Err(Error::Corrupt {
            file,
            offset,
            reason,
        }) => {
            let _ = writeln!(
                text,
                "CORRUPT: {} at byte offset {offset}: {reason}",
                file.display()
            );
            let _ = match recoverable_before(dir, &file, offset) {
                Some((n, after, checkpoint)) => writeln!(
                    text,
                    "recoverable before it: {n} entries, {after} of them after the checkpoint ({checkpoint})"
                ),
                None => writeln!(text, "recoverable before it: unknown (the directory cannot be scanned past the problem)"),
            };
            ExitCode::from(1)
        }
        Err(e) => return Err(Failed::Wal(e)),
    };
    let mut out = std::io::stdout().lock();
    written(out.write_all(text.as_bytes()).and_then(|()| out.flush()))?;
    Ok(verdict)
}
