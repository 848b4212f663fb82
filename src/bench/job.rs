//! Job options: parsed from the command line, from `--job` strings and job files,
//! merged (job values override the command line's), then resolved and validated
//! into a [`JobSpec`] before anything touches the disk.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, Parser, ValueEnum};

use crate::wal::{format, BackendKind, SyncMode, WalConfig};

/// What a job measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// The group-commit WAL.
    Streamline,
    /// One mutex, one `pwrite` and one `fdatasync` per append: no group commit.
    Naive,
    /// The same appends written to a plain file in the page cache, no WAL and no
    /// sync: the ceiling the WAL's overhead is measured against.
    Nowal,
    /// okaywal, committing every append (needs the `compare` feature).
    Okaywal,
    /// raft-engine, writing every append with `sync = true` (needs `compare`).
    RaftEngine,
}

impl EngineKind {
    /// The spelling used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Streamline => "streamline",
            EngineKind::Naive => "naive",
            EngineKind::Nowal => "nowal",
            EngineKind::Okaywal => "okaywal",
            EngineKind::RaftEngine => "raft-engine",
        }
    }

    /// True for the engines compiled only with the `compare` feature.
    pub fn needs_compare_feature(self) -> bool {
        matches!(self, EngineKind::Okaywal | EngineKind::RaftEngine)
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sync mode as spelled on the command line (mirrors [`SyncMode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SyncArg {
    /// Ack after write + fdatasync.
    EveryWrite,
    /// Ack after the write; fdatasync every `--sync-ms`.
    Interval,
    /// Ack after the write; the OS flushes when it likes.
    OsDefault,
}

impl From<SyncArg> for SyncMode {
    fn from(s: SyncArg) -> Self {
        match s {
            SyncArg::EveryWrite => SyncMode::EveryWrite,
            SyncArg::Interval => SyncMode::Interval,
            SyncArg::OsDefault => SyncMode::OsDefault,
        }
    }
}

/// Backend as spelled on the command line (mirrors [`BackendKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// io_uring, falling back to std.
    Auto,
    /// io_uring + O_DIRECT.
    Uring,
    /// pwrite + fdatasync.
    Std,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Auto => BackendKind::Auto,
            BackendArg::Uring => BackendKind::Uring,
            BackendArg::Std => BackendKind::Std,
        }
    }
}

/// Size of each appended record: fixed, or drawn uniformly from an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordSize {
    /// Every record has this many bytes.
    Fixed(usize),
    /// Each record's size is drawn uniformly from `min..=max`.
    Range {
        /// Smallest size.
        min: usize,
        /// Largest size.
        max: usize,
    },
}

impl RecordSize {
    /// Largest size a record can have.
    pub fn max(self) -> usize {
        match self {
            RecordSize::Fixed(n) => n,
            RecordSize::Range { max, .. } => max,
        }
    }

    /// Smallest size a record can have.
    pub fn min(self) -> usize {
        match self {
            RecordSize::Fixed(n) => n,
            RecordSize::Range { min, .. } => min,
        }
    }
}

impl fmt::Display for RecordSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordSize::Fixed(n) => write!(f, "{n}"),
            RecordSize::Range { min, max } => write!(f, "{min}..{max}"),
        }
    }
}

/// Parses a byte count with an optional binary suffix: `4096`, `4k`, `64KiB`, `1m`, `1G`.
///
/// # Errors
/// A message naming the bad value.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (examples: 1024, 4k, 64KiB, 1M)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit (accepted: none, k, KiB, m, MiB, g, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Largest record size: a WAL entry's length is a `u32`.
pub const MAX_RECORD_SIZE: u64 = 4 << 30;

/// Longest `--duration` and `--warmup`, in seconds: 365 days.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Largest `--queue-depth`.
pub const MAX_QUEUE_DEPTH: u64 = 65_536;

/// Most appends outstanding at once over all writers (`--writers` times
/// `--queue-depth`): each writer allocates its queue up front.
pub const MAX_OUTSTANDING: usize = 1 << 20;

impl FromStr for RecordSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let to_usize = |v: &str| {
            parse_bytes(v).and_then(|n| {
                usize::try_from(n)
                    .ok()
                    .filter(|_| n <= MAX_RECORD_SIZE)
                    .ok_or_else(|| format!("`{v}` is out of range: give 1 to 4g bytes"))
            })
        };
        if let Some((a, b)) = s.split_once("..") {
            let (min, max) = (to_usize(a)?, to_usize(b.trim_start_matches('='))?);
            if min > max {
                return Err(format!("record size range `{s}` is empty: {min} > {max}"));
            }
            Ok(if min == max {
                RecordSize::Fixed(min)
            } else {
                RecordSize::Range { min, max }
            })
        } else {
            Ok(RecordSize::Fixed(to_usize(s)?))
        }
    }
}

fn bytes_u64(s: &str) -> Result<u64, String> {
    parse_bytes(s)
}

fn bytes_usize(s: &str) -> Result<usize, String> {
    parse_bytes(s).and_then(|n| usize::try_from(n).map_err(|_| format!("`{s}` is too large")))
}

/// Parses seconds as a float: `2`, `0.5`, `1.5s`; 0 to [`MAX_SECONDS`].
fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    in_range(&format!("`{s}`"), v)
}

/// `secs` when within 0 to [`MAX_SECONDS`]; otherwise an error naming `what`.
fn in_range(what: &str, secs: f64) -> Result<f64, String> {
    if !(0.0..=MAX_SECONDS).contains(&secs) {
        return Err(format!(
            "{what} is out of range: give 0 to {MAX_SECONDS} seconds (365 days)"
        ));
    }
    Ok(secs)
}

/// `secs` seconds of `flag` as a [`Duration`], when within 0 to [`MAX_SECONDS`]
/// (the parser's range; a [`JobArgs`] built in code may hold anything).
fn duration_of(flag: &str, secs: f64) -> Result<Duration, String> {
    in_range(&format!("{flag} {secs}"), secs).map(Duration::from_secs_f64)
}

/// Parses `--queue-depth`: 1 to [`MAX_QUEUE_DEPTH`].
fn queue_depth(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_QUEUE_DEPTH).contains(n))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("`{s}` is out of range: give 1 to {MAX_QUEUE_DEPTH}"))
}

/// Options of one job. Every field is optional so that a `--job` string can override
/// only what it names; [`JobArgs::merged_over`] combines, [`JobArgs::resolve`] fills in
/// defaults and validates.
#[derive(Debug, Clone, Default, Args, PartialEq)]
pub struct JobArgs {
    /// Directory the job's files go to (each job gets a subdirectory). Default: ./bench-data
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// What to measure: streamline, naive, nowal, okaywal, raft-engine. Default: streamline
    #[arg(long, value_enum)]
    pub engine: Option<EngineKind>,
    /// Concurrent writer threads. Default: 1
    #[arg(long)]
    pub writers: Option<usize>,
    /// Record size in bytes (at most 4g), or a range `MIN..MAX` drawn uniformly.
    /// Default: 1024
    #[arg(long, value_parser = RecordSize::from_str)]
    pub record_size: Option<RecordSize>,
    /// Measure for this many seconds (after warm-up), at most 31536000 (365
    /// days). Default: 5 (unless --records)
    #[arg(long, value_parser = seconds)]
    pub duration: Option<f64>,
    /// Measure this many acknowledged records in total instead of a duration.
    #[arg(long)]
    pub records: Option<u64>,
    /// Seconds of load before measuring starts, at most 31536000. Default: 0
    #[arg(long, value_parser = seconds)]
    pub warmup: Option<f64>,
    /// Outstanding appends per writer (1: wait for each ack), 1 to 65536, and
    /// at most 1048576 over all writers. Default: 1
    #[arg(long, value_parser = queue_depth)]
    pub queue_depth: Option<usize>,
    /// every_write, interval or os_default (streamline only). Default: every_write
    #[arg(long, value_enum)]
    pub sync_mode: Option<SyncArg>,
    /// fdatasync period in interval mode, in ms. Default: 100
    #[arg(long)]
    pub sync_ms: Option<u64>,
    /// auto, uring or std (streamline only). Default: auto
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// WAL file size (`100M`, `1G`, ...). Default: 100 MiB
    #[arg(long, value_parser = bytes_u64)]
    pub max_file_size: Option<u64>,
    /// Largest batch the commit thread writes at once. Default: 256 KiB
    #[arg(long, value_parser = bytes_usize)]
    pub max_batch_bytes: Option<usize>,
    /// Cap on accepted but unacknowledged bytes. Default: 64 MiB
    #[arg(long, value_parser = bytes_usize)]
    pub max_pending_bytes: Option<usize>,
    /// Batches in flight at once (streamline). Default: 8
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Write with O_DIRECT (`true`/`false`). Default: the WAL's own choice (on for
    /// every_write, off otherwise)
    #[arg(long)]
    pub direct_io: Option<bool>,
    /// Write every_write batches in groups on the commit thread (`true`) or each
    /// through the ring (`false`), uring backend with O_DIRECT. Default: the WAL's
    /// own choice (groups while early batches do not pay)
    #[arg(long)]
    pub uring_group_writes: Option<bool>,
    /// How long the idle commit thread polls before sleeping, µs (0: never). Default: the
    /// WAL's (50)
    #[arg(long)]
    pub idle_spin_us: Option<u64>,
    /// How long a writer waiting for its acknowledgement polls before sleeping, µs
    /// (0: never). Default: the WAL's (500)
    #[arg(long)]
    pub ack_spin_us: Option<u64>,
    /// Checkpoint everything acknowledged every this many ms, as a broker does once
    /// its segments are flushed: archived files are then retired and recycled
    /// instead of new files being prepared. With raft-engine: purge expired files
    /// this often (purge threshold two files; they are recycled). okaywal always
    /// checkpoints on its own. Default: never (every file is kept)
    #[arg(long)]
    pub checkpoint_ms: Option<u64>,
    /// Run the writers as tasks on a tokio runtime with this many threads, each
    /// `.await`ing its acknowledgements, instead of one blocked thread per writer
    /// (streamline only). Default: threads
    #[arg(long)]
    pub async_workers: Option<usize>,
    /// After the job, close the WAL and time reopening it and reading every entry
    /// back (streamline only).
    #[arg(long)]
    pub reopen: bool,
    /// With --reopen: write back and drop the page cache first, so the reopen reads
    /// from the device (needs root; the report says whether it happened).
    #[arg(long)]
    pub drop_caches: bool,
}

/// Parses the options of one `--job` string or job-file line on their own.
#[derive(Debug, Parser)]
#[command(no_binary_name = true, disable_help_flag = true)]
struct JobLine {
    #[command(flatten)]
    args: JobArgs,
}

impl JobArgs {
    /// Parses a job description: `key=value` pairs separated by commas or spaces,
    /// keys named like the long options (`engine=naive,writers=4`); `--key value`
    /// spelling is accepted too, and so is a bare `reopen`.
    ///
    /// # Errors
    /// A message naming the bad key or value.
    pub fn parse_job(spec: &str) -> Result<JobArgs, String> {
        let mut argv: Vec<String> = Vec::new();
        for tok in spec
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
        {
            let tok = tok.trim_start_matches("--");
            match tok.split_once('=') {
                Some((k, v)) => {
                    argv.push(format!("--{}", k.replace('_', "-")));
                    argv.push(v.to_string());
                }
                None if argv.last().is_some_and(|a| {
                    a.starts_with("--") && !is_flag_name(a.trim_start_matches("--"))
                }) && !is_flag_name(tok) =>
                {
                    // The value of a `--key value` pair.
                    argv.push(tok.to_string());
                }
                None => argv.push(format!("--{}", tok.replace('_', "-"))),
            }
        }
        JobLine::try_parse_from(&argv).map(|l| l.args).map_err(|e| {
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("invalid job")
                .trim_start_matches("error: ")
                .to_string();
            format!("job `{spec}`: {first}")
        })
    }

    /// Parses a job file: one job per non-empty line in the [`JobArgs::parse_job`]
    /// syntax; `#` starts a comment.
    ///
    /// # Errors
    /// A message naming the line.
    pub fn parse_job_file(text: &str) -> Result<Vec<JobArgs>, String> {
        let mut jobs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            jobs.push(JobArgs::parse_job(line).map_err(|e| format!("line {}: {e}", i + 1))?);
        }
        Ok(jobs)
    }

    /// This job's values, with `base`'s where this one has none. `--duration` and
    /// `--records` count as one setting: a job naming either replaces both.
    pub fn merged_over(&self, base: &JobArgs) -> JobArgs {
        let stop_from = if self.duration.is_some() || self.records.is_some() {
            self
        } else {
            base
        };
        JobArgs {
            dir: self.dir.clone().or_else(|| base.dir.clone()),
            engine: self.engine.or(base.engine),
            writers: self.writers.or(base.writers),
            record_size: self.record_size.or(base.record_size),
            duration: stop_from.duration,
            records: stop_from.records,
            warmup: self.warmup.or(base.warmup),
            queue_depth: self.queue_depth.or(base.queue_depth),
            sync_mode: self.sync_mode.or(base.sync_mode),
            sync_ms: self.sync_ms.or(base.sync_ms),
            backend: self.backend.or(base.backend),
            max_file_size: self.max_file_size.or(base.max_file_size),
            max_batch_bytes: self.max_batch_bytes.or(base.max_batch_bytes),
            max_pending_bytes: self.max_pending_bytes.or(base.max_pending_bytes),
            max_in_flight: self.max_in_flight.or(base.max_in_flight),
            direct_io: self.direct_io.or(base.direct_io),
            uring_group_writes: self.uring_group_writes.or(base.uring_group_writes),
            idle_spin_us: self.idle_spin_us.or(base.idle_spin_us),
            ack_spin_us: self.ack_spin_us.or(base.ack_spin_us),
            checkpoint_ms: self.checkpoint_ms.or(base.checkpoint_ms),
            async_workers: self.async_workers.or(base.async_workers),
            reopen: self.reopen || base.reopen,
            drop_caches: self.drop_caches || base.drop_caches,
        }
    }

    /// Fills in defaults and rejects impossible combinations. Touches no files.
    ///
    /// # Errors
    /// A message naming the option and what is accepted.
    pub fn resolve(&self) -> Result<JobSpec, String> {
        let engine = self.engine.unwrap_or(EngineKind::Streamline);
        let defaults = WalConfig::default();
        // Wrong in any build, so said before what this build lacks.
        if self.checkpoint_ms.is_some()
            && !matches!(engine, EngineKind::Streamline | EngineKind::RaftEngine)
        {
            return Err(if engine == EngineKind::Okaywal {
                "--checkpoint-ms: okaywal checkpoints and recycles its files on its own (every 768 KiB)".into()
            } else {
                "--checkpoint-ms needs --engine streamline or raft-engine".into()
            });
        }
        if engine.needs_compare_feature() && !cfg!(feature = "compare") {
            return Err(format!(
                "--engine {engine} is not in this build: rebuild with `cargo build --release --features compare`"
            ));
        }
        let writers = self.writers.unwrap_or(1);
        if writers == 0 {
            return Err("--writers must be at least 1".into());
        }
        if writers > 4096 {
            return Err(format!(
                "--writers {writers} is more than the 4096 supported"
            ));
        }
        let queue_depth = self.queue_depth.unwrap_or(1);
        if queue_depth == 0 {
            return Err("--queue-depth must be at least 1".into());
        }
        if writers.saturating_mul(queue_depth) > MAX_OUTSTANDING {
            return Err(format!(
                "--writers {writers} times --queue-depth {queue_depth} is more than the {MAX_OUTSTANDING} appends outstanding at once supported"
            ));
        }
        if queue_depth > 1 && engine != EngineKind::Streamline {
            return Err(format!(
                "--queue-depth {queue_depth} needs --engine streamline: {engine} appends block until durable, so each writer has one append outstanding"
            ));
        }
        let record_size = self.record_size.unwrap_or(RecordSize::Fixed(1024));
        if record_size.min() == 0 {
            return Err("--record-size must be at least 1 byte".into());
        }
        if record_size.max() as u64 > MAX_RECORD_SIZE {
            return Err(format!(
                "--record-size {record_size} is out of range: give 1 to 4g bytes"
            ));
        }
        let stop = match (self.duration, self.records) {
            (Some(_), Some(_)) => {
                return Err("give either --duration or --records, not both".into())
            }
            (_, Some(0)) => return Err("--records must be at least 1".into()),
            (_, Some(n)) => Stop::Records(n),
            (d, None) => {
                let d = d.unwrap_or(5.0);
                if d <= 0.0 {
                    return Err("--duration must be more than 0 seconds".into());
                }
                Stop::Duration(duration_of("--duration", d)?)
            }
        };
        let sync_mode: SyncMode = self.sync_mode.map_or(SyncMode::EveryWrite, SyncMode::from);
        if engine != EngineKind::Streamline && sync_mode != SyncMode::EveryWrite {
            return Err(format!(
                "--sync-mode {sync_mode} needs --engine streamline: {engine} has a fixed durability (see docs/benchmarks.md)"
            ));
        }
        let backend: BackendKind = self.backend.map_or(BackendKind::Auto, BackendKind::from);
        if engine != EngineKind::Streamline && backend != BackendKind::Auto {
            return Err(format!("--backend {backend} needs --engine streamline"));
        }
        let wal_only = [
            ("--max-batch-bytes", self.max_batch_bytes.is_some()),
            ("--max-pending-bytes", self.max_pending_bytes.is_some()),
            ("--max-in-flight", self.max_in_flight.is_some()),
            ("--direct-io", self.direct_io.is_some()),
            ("--uring-group-writes", self.uring_group_writes.is_some()),
            ("--idle-spin-us", self.idle_spin_us.is_some()),
            ("--ack-spin-us", self.ack_spin_us.is_some()),
            ("--async-workers", self.async_workers.is_some()),
        ];
        if let Some((flag, _)) = wal_only
            .iter()
            .find(|(_, set)| *set)
            .filter(|_| engine != EngineKind::Streamline)
        {
            return Err(format!("{flag} needs --engine streamline"));
        }
        if let Some(n) = self.async_workers {
            if n == 0 || n > 64 {
                return Err(format!("--async-workers {n}: give 1 to 64 runtime threads"));
            }
        }
        if self.reopen && engine != EngineKind::Streamline {
            return Err("--reopen needs --engine streamline".into());
        }
        if self.drop_caches && !self.reopen {
            return Err("--drop-caches only applies with --reopen".into());
        }
        if self.checkpoint_ms == Some(0) {
            return Err("--checkpoint-ms must be at least 1".into());
        }
        let sync_ms = self.sync_ms.unwrap_or(defaults.sync_interval_ms);
        if sync_ms == 0 && sync_mode == SyncMode::Interval {
            return Err("--sync-ms must be at least 1 with --sync-mode interval".into());
        }
        let max_file_size = self.max_file_size.unwrap_or(defaults.max_file_size);
        if !(WalConfig::MIN_FILE_SIZE..=WalConfig::MAX_FILE_SIZE).contains(&max_file_size)
            || !max_file_size.is_multiple_of(4096)
        {
            return Err(format!(
                "--max-file-size {max_file_size} must be a multiple of 4096, at least 64 KiB and at most 1 TiB"
            ));
        }
        // The WAL's own bound: a file less its header, seal and batch header,
        // and a batch below 4 GiB whatever the file size.
        let limit = crate::wal::max_entry_bytes_for(max_file_size);
        let largest = format::entry_len(BENCH_TOPIC.len(), record_size.max()) as u64;
        if largest > limit {
            return Err(format!(
                "--record-size {} does not fit in a WAL entry with --max-file-size {max_file_size} (largest record: {} bytes)",
                record_size,
                limit - format::entry_len(BENCH_TOPIC.len(), 0) as u64
            ));
        }
        let wal = WalConfig {
            sync_mode,
            sync_interval_ms: sync_ms.max(1),
            max_file_size,
            backend,
            max_batch_bytes: self.max_batch_bytes.unwrap_or(defaults.max_batch_bytes),
            max_pending_bytes: self.max_pending_bytes.unwrap_or(defaults.max_pending_bytes),
            max_in_flight: self.max_in_flight.unwrap_or(defaults.max_in_flight),
            direct_io: self.direct_io.or(defaults.direct_io),
            uring_group_writes: self.uring_group_writes.or(defaults.uring_group_writes),
            idle_spin_us: self.idle_spin_us.unwrap_or(defaults.idle_spin_us),
            ack_spin_us: self.ack_spin_us.unwrap_or(defaults.ack_spin_us),
            // Without checkpoints every file is kept; with them, the WAL's own
            // retention applies and retired files are recycled.
            retention_files: if self.checkpoint_ms.is_some() {
                defaults.retention_files
            } else {
                usize::MAX
            },
            ..defaults
        };
        if engine == EngineKind::Streamline {
            wal.validate().map_err(|e| match e {
                crate::Error::InvalidConfig {
                    field,
                    value,
                    reason,
                } => format!(
                    "{} {value}: {}",
                    bench_flag(field),
                    reason.replace("max_batch_bytes", "--max-batch-bytes")
                ),
                e => format!("invalid WAL settings: {e}"),
            })?;
        }
        let warmup = duration_of("--warmup", self.warmup.unwrap_or(0.0))?;
        Ok(JobSpec {
            dir: self
                .dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("bench-data")),
            engine,
            writers,
            record_size,
            stop,
            warmup,
            queue_depth,
            wal,
            checkpoint_every: self.checkpoint_ms.map(Duration::from_millis),
            async_workers: self.async_workers,
            reopen: self.reopen,
            drop_caches: self.drop_caches,
        })
    }
}

/// Job options that take no value.
fn is_flag_name(tok: &str) -> bool {
    matches!(tok, "reopen" | "drop-caches" | "drop_caches")
}

/// Topic every benchmark record is appended to.
pub const BENCH_TOPIC: &str = "bench";

/// When a job stops measuring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this long.
    Duration(Duration),
    /// After this many records were issued (and then acknowledged).
    Records(u64),
}

/// The option of this harness that sets the WAL setting `field`, as
/// [`WalConfig::validate`] names it (after the broker's flags where the broker
/// has one, after the config's fields otherwise).
fn bench_flag(field: &str) -> &str {
    match field {
        "--wal-sync-ms" => "--sync-ms",
        "--wal-max-file-size" => "--max-file-size",
        "--wal-backend" => "--backend",
        "max_batch_bytes" => "--max-batch-bytes",
        "max_pending_bytes" => "--max-pending-bytes",
        "max_in_flight" => "--max-in-flight",
        "idle_spin_us" => "--idle-spin-us",
        "ack_spin_us" => "--ack-spin-us",
        other => other,
    }
}

/// A validated job, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Parent directory; the job writes into its own subdirectory.
    pub dir: PathBuf,
    /// What is measured.
    pub engine: EngineKind,
    /// Writer threads.
    pub writers: usize,
    /// Record sizes.
    pub record_size: RecordSize,
    /// When measuring stops.
    pub stop: Stop,
    /// Load before measuring.
    pub warmup: Duration,
    /// Outstanding appends per writer.
    pub queue_depth: usize,
    /// WAL settings (streamline), sync mode and file size for the others.
    pub wal: WalConfig,
    /// Checkpoint what is acknowledged this often (streamline).
    pub checkpoint_every: Option<Duration>,
    /// Writers are tasks on a runtime with this many threads (streamline).
    pub async_workers: Option<usize>,
    /// Time a reopen + full read after the run.
    pub reopen: bool,
    /// Drop the page cache before the reopen.
    pub drop_caches: bool,
}

/// The whole command line of `streamline-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "streamline-bench",
    about = "fio-style benchmark of the Streamline WAL and its baselines",
    after_help = "Several jobs: repeat --job 'engine=naive,writers=4' (options not named in a job come from the command line), or --job-file F with one job per line. See docs/benchmarks.md."
)]
pub struct Cli {
    /// Options shared by every job (and the whole job when there is no --job).
    #[command(flatten)]
    pub job: JobArgs,
    /// A job as `key=value` pairs (`engine=naive,writers=4`); repeat for several jobs.
    #[arg(long = "job", value_name = "SPEC")]
    pub jobs: Vec<String>,
    /// A file with one job per line, in the --job syntax.
    #[arg(long)]
    pub job_file: Option<PathBuf>,
    /// `table` (default) or `json` (one object per job per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output_format: OutputFormat,
    /// Write each job's latency distribution as HdrHistogram percentiles (.hgrm);
    /// with several jobs, `-N` is inserted before the extension.
    #[arg(long)]
    pub hist_file: Option<PathBuf>,
    /// Draw every job's latency percentile curve into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Remove each job's files after it ran.
    #[arg(long)]
    pub cleanup: bool,
}

/// Report format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON object per job per line.
    Json,
}

impl Cli {
    /// Every job of the run, resolved and validated (nothing is created yet).
    ///
    /// # Errors
    /// A message naming the job and the bad option.
    pub fn resolve_jobs(&self) -> Result<Vec<JobSpec>, String> {
        let mut raw: Vec<JobArgs> = Vec::new();
        for spec in &self.jobs {
            raw.push(JobArgs::parse_job(spec)?);
        }
        if let Some(path) = &self.job_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--job-file {}: {e}", path.display()))?;
            let jobs = JobArgs::parse_job_file(&text)
                .map_err(|e| format!("--job-file {}: {e}", path.display()))?;
            if jobs.is_empty() {
                return Err(format!("--job-file {} holds no job", path.display()));
            }
            raw.extend(jobs);
        }
        if raw.is_empty() {
            raw.push(JobArgs::default());
        }
        let mut out = Vec::with_capacity(raw.len());
        for (i, j) in raw.iter().enumerate() {
            let spec = j.merged_over(&self.job).resolve().map_err(|e| {
                if raw.len() > 1 {
                    format!("job {}: {e}", i + 1)
                } else {
                    e
                }
            })?;
            if spec.dir.exists() && !spec.dir.is_dir() {
                return Err(format!(
                    "--dir {} exists and is not a directory",
                    spec.dir.display()
                ));
            }
            out.push(spec);
        }
        Ok(out)
    }
}
