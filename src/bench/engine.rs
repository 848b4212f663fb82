//! The engines a job can measure, behind one small trait so the writer loop is the
//! same for all of them.

use std::{
    fs::File,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError,
    },
};

use bytes::Bytes;

use super::job::{EngineKind, JobSpec, BENCH_TOPIC};
use crate::wal::{Completion, Wal};

/// An append that is either finished or still waiting for the commit thread.
#[derive(Debug)]
pub enum Pending {
    /// The engine finished the append before returning.
    Done(Result<(), String>),
    /// The WAL acknowledges it later.
    Wal(Completion),
}

impl Pending {
    /// Blocks until the append is acknowledged.
    ///
    /// # Errors
    /// The engine's error, as text.
    pub fn wait(self) -> Result<(), String> {
        match self {
            Pending::Done(r) => r,
            Pending::Wal(c) => c.wait().map(|_| ()).map_err(|e| e.to_string()),
        }
    }

    /// Waits for the acknowledgement without blocking the thread.
    ///
    /// # Errors
    /// The engine's error, as text.
    pub async fn wait_async(self) -> Result<(), String> {
        match self {
            Pending::Done(r) => r,
            Pending::Wal(c) => c.await.map(|_| ()).map_err(|e| e.to_string()),
        }
    }

    /// True when [`Pending::wait`] would not block.
    pub fn is_done(&self) -> bool {
        match self {
            Pending::Done(_) => true,
            Pending::Wal(c) => c.is_done(),
        }
    }
}

/// Counters an engine can report; `None` where the engine does not expose them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// fdatasyncs issued.
    pub fsyncs: Option<u64>,
    /// Writes (batches) issued.
    pub batches: Option<u64>,
    /// Bytes written to files, framing and padding included.
    pub bytes_written: Option<u64>,
    /// Largest number of records in one batch since open.
    pub max_batch_records: Option<u64>,
    /// Batches submitted beside an earlier durable write still in flight because
    /// their cohort had gathered (streamline `every_write`).
    pub early_batches: Option<u64>,
    /// `every_write` batches written in a group at the commit thread's next wait
    /// (streamline: every one with std, with uring while its group writes are on).
    pub grouped_batches: Option<u64>,
}

impl EngineCounters {
    /// `self - before`, field by field (the max is kept as is).
    pub fn since(&self, before: &EngineCounters) -> EngineCounters {
        let d = |a: Option<u64>, b: Option<u64>| a.map(|a| a.saturating_sub(b.unwrap_or(0)));
        EngineCounters {
            fsyncs: d(self.fsyncs, before.fsyncs),
            batches: d(self.batches, before.batches),
            bytes_written: d(self.bytes_written, before.bytes_written),
            max_batch_records: self.max_batch_records,
            early_batches: d(self.early_batches, before.early_batches),
            grouped_batches: d(self.grouped_batches, before.grouped_batches),
        }
    }
}

/// Something records are appended to, from many writer threads at once.
pub trait Engine: Send + Sync {
    /// Appends one record for `writer`. Engines without a completion queue finish
    /// the append (durably, per their mode) before returning.
    fn append(&self, writer: usize, data: Bytes) -> Pending;
    /// Counters since open.
    fn counters(&self) -> EngineCounters;
    /// The I/O path in use (`uring`, `std`, `pwrite`, ...).
    fn backend(&self) -> String;
    /// Whether the engine writes with `O_DIRECT`, where it is the engine's choice.
    fn direct_io(&self) -> Option<bool> {
        None
    }
    /// Flushes and closes.
    ///
    /// # Errors
    /// The engine's error, as text.
    fn close(self: Box<Self>) -> Result<(), String>;
}

/// Opens the engine a job names in `dir` (created by the caller).
///
/// # Errors
/// The engine's open error, as text.
pub fn open(spec: &JobSpec, dir: &Path) -> Result<Box<dyn Engine>, String> {
    match spec.engine {
        EngineKind::Streamline => {
            let (wal, recovery) = Wal::open(dir, spec.wal.clone()).map_err(|e| e.to_string())?;
            drop(recovery);
            let checkpointer = spec
                .checkpoint_every
                .map(|every| {
                    let wal = wal.clone();
                    Periodic::start("bench-checkpoint", every, move || {
                        let through = wal.last_acked_sequence();
                        if through > 0 {
                            wal.checkpoint(through)
                                .map_err(|e| format!("checkpoint {through}: {e}"))?;
                        }
                        Ok(())
                    })
                })
                .transpose()?;
            Ok(Box::new(StreamlineEngine { wal, checkpointer }))
        }
        EngineKind::Naive => Ok(Box::new(FileEngine::open(dir, true)?)),
        EngineKind::Nowal => Ok(Box::new(FileEngine::open(dir, false)?)),
        #[cfg(feature = "compare")]
        EngineKind::Okaywal => Ok(Box::new(compare::OkayWalEngine::open(dir)?)),
        #[cfg(feature = "compare")]
        EngineKind::RaftEngine => Ok(Box::new(compare::RaftEngineEngine::open(
            dir,
            spec.wal.max_file_size,
            spec.checkpoint_every,
        )?)),
        #[cfg(not(feature = "compare"))]
        EngineKind::Okaywal | EngineKind::RaftEngine => Err(format!(
            "--engine {} needs a build with --features compare",
            spec.engine
        )),
    }
}

/// The group-commit WAL.
struct StreamlineEngine {
    wal: Wal,
    checkpointer: Option<Periodic>,
}

/// Runs a step at a fixed period on its own thread until finished: streamline's
/// checkpoints, raft-engine's purges.
struct Periodic {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Periodic {
    fn start(
        name: &str,
        every: std::time::Duration,
        mut step: impl FnMut() -> Result<(), String> + Send + 'static,
    ) -> Result<Self, String> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                match stopped.recv_timeout(every) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => step()?,
                    _ => return Ok(()),
                }
            })
            .map_err(|e| format!("spawn {name} thread: {e}"))?;
        Ok(Periodic { stop, thread })
    }

    /// Stops the thread; the first error a step returned, if any.
    fn finish(self) -> Result<(), String> {
        drop(self.stop);
        self.thread
            .join()
            .map_err(|_| "periodic thread panicked".to_string())?
    }
}

impl Engine for StreamlineEngine {
    fn append(&self, writer: usize, data: Bytes) -> Pending {
        let partition = i32::try_from(writer).unwrap_or(i32::MAX);
        Pending::Wal(self.wal.append(BENCH_TOPIC, partition, data))
    }

    fn counters(&self) -> EngineCounters {
        let s = self.wal.stats();
        EngineCounters {
            fsyncs: Some(s.fsyncs),
            batches: Some(s.batches),
            bytes_written: Some(s.bytes_written),
            max_batch_records: Some(s.max_batch_entries),
            early_batches: Some(s.early_batches),
            grouped_batches: Some(s.grouped_batches),
        }
    }

    fn backend(&self) -> String {
        self.wal.backend().to_string()
    }

    fn direct_io(&self) -> Option<bool> {
        Some(self.wal.direct_io())
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        let StreamlineEngine { wal, checkpointer } = *self;
        let checkpointed = checkpointer.map_or(Ok(()), Periodic::finish);
        wal.close().map_err(|e| e.to_string())?;
        checkpointed
    }
}

/// One file behind one mutex: `pwrite` at the end, then `fdatasync` (`naive`) or
/// nothing (`nowal`). No group commit: each append holds the lock through its sync.
struct FileEngine {
    file: Mutex<(File, u64)>,
    sync: bool,
    fsyncs: AtomicU64,
    writes: AtomicU64,
    bytes: AtomicU64,
}

impl FileEngine {
    fn open(dir: &Path, sync: bool) -> Result<Self, String> {
        let path = dir.join(if sync { "naive.log" } else { "nowal.log" });
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        Ok(FileEngine {
            file: Mutex::new((file, 0)),
            sync,
            fsyncs: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    fn write(&self, data: &[u8]) -> Result<(), String> {
        let mut g = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let (file, offset) = &mut *g;
        write_at(file, data, *offset).map_err(|e| format!("pwrite: {e}"))?;
        *offset += data.len() as u64;
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.sync {
            file.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(unix)]
fn write_at(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, data, offset)
}

#[cfg(not(unix))]
fn write_at(mut file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(data)
}

impl Engine for FileEngine {
    fn append(&self, _writer: usize, data: Bytes) -> Pending {
        Pending::Done(self.write(&data))
    }

    fn counters(&self) -> EngineCounters {
        let writes = self.writes.load(Ordering::Relaxed);
        EngineCounters {
            fsyncs: Some(self.fsyncs.load(Ordering::Relaxed)),
            batches: Some(writes),
            bytes_written: Some(self.bytes.load(Ordering::Relaxed)),
            max_batch_records: Some(u64::from(writes > 0)),
            early_batches: None,
            grouped_batches: None,
        }
    }

    fn backend(&self) -> String {
        if self.sync {
            "pwrite+fdatasync"
        } else {
            "pwrite"
        }
        .to_string()
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        let g = self
            .file
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        if self.sync {
            g.0.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(feature = "compare")]
mod compare {
    //! The anchors, driven through their public APIs with durability per append.

    use std::{path::Path, sync::Arc, time::Duration};

    use bytes::Bytes;

    use super::{Engine, EngineCounters, Pending, Periodic};

    /// okaywal 0.3: `begin_entry` → `write_chunk` → `commit` (which waits for the
    /// fsync; concurrent commits share one).
    pub(super) struct OkayWalEngine {
        wal: okaywal::WriteAheadLog,
    }

    impl OkayWalEngine {
        pub(super) fn open(dir: &Path) -> Result<Self, String> {
            let wal = okaywal::WriteAheadLog::recover(dir, okaywal::LogVoid)
                .map_err(|e| format!("okaywal open: {e}"))?;
            Ok(OkayWalEngine { wal })
        }

        fn write(&self, data: &[u8]) -> Result<(), String> {
            let mut entry = self
                .wal
                .begin_entry()
                .map_err(|e| format!("okaywal begin_entry: {e}"))?;
            entry
                .write_chunk(data)
                .map_err(|e| format!("okaywal write_chunk: {e}"))?;
            entry
                .commit()
                .map(|_| ())
                .map_err(|e| format!("okaywal commit: {e}"))
        }
    }

    impl Engine for OkayWalEngine {
        fn append(&self, _writer: usize, data: Bytes) -> Pending {
            Pending::Done(self.write(&data))
        }

        fn counters(&self) -> EngineCounters {
            EngineCounters::default()
        }

        fn backend(&self) -> String {
            "okaywal".into()
        }

        fn close(self: Box<Self>) -> Result<(), String> {
            self.wal
                .shutdown()
                .map_err(|e| format!("okaywal shutdown: {e}"))
        }
    }

    /// raft-engine 0.4: one `LogBatch` with one `put` per append (each writer is a
    /// region and overwrites one key, so the memtable stays small), written with
    /// `sync = true`; concurrent writers are grouped by its write barrier. With a
    /// purge period, a thread calls `purge_expired_files` that often, with the
    /// purge threshold at two files, so that files holding only overwritten
    /// values are retired and recycled (its `enable_log_recycle`, on by default)
    /// as streamline's are under `--checkpoint-ms`.
    pub(super) struct RaftEngineEngine {
        engine: Arc<raft_engine::Engine>,
        purger: Option<Periodic>,
    }

    impl RaftEngineEngine {
        pub(super) fn open(
            dir: &Path,
            file_size: u64,
            purge_every: Option<Duration>,
        ) -> Result<Self, String> {
            let mut cfg = raft_engine::Config {
                dir: dir.to_string_lossy().into_owned(),
                target_file_size: raft_engine::ReadableSize(file_size),
                ..raft_engine::Config::default()
            };
            if purge_every.is_some() {
                cfg.purge_threshold = raft_engine::ReadableSize(file_size.saturating_mul(2));
            } else {
                // It refuses a threshold below the file size (10 GiB by
                // default, below `--max-file-size`'s 1 TiB); nothing purges.
                cfg.purge_threshold =
                    raft_engine::ReadableSize(cfg.purge_threshold.0.max(file_size));
            }
            let engine = Arc::new(
                raft_engine::Engine::open(cfg).map_err(|e| format!("raft-engine open: {e}"))?,
            );
            let purger = purge_every
                .map(|every| {
                    let engine = Arc::clone(&engine);
                    Periodic::start("bench-purge", every, move || {
                        engine
                            .purge_expired_files()
                            .map(|_| ())
                            .map_err(|e| format!("raft-engine purge: {e}"))
                    })
                })
                .transpose()?;
            Ok(RaftEngineEngine { engine, purger })
        }

        fn write(&self, writer: usize, data: &[u8]) -> Result<(), String> {
            let mut batch = raft_engine::LogBatch::with_capacity(1);
            batch
                .put(writer as u64 + 1, b"k".to_vec(), data.to_vec())
                .map_err(|e| format!("raft-engine put: {e}"))?;
            self.engine
                .write(&mut batch, true)
                .map(|_| ())
                .map_err(|e| format!("raft-engine write: {e}"))
        }
    }

    impl Engine for RaftEngineEngine {
        fn append(&self, writer: usize, data: Bytes) -> Pending {
            Pending::Done(self.write(writer, &data))
        }

        fn counters(&self) -> EngineCounters {
            EngineCounters::default()
        }

        fn backend(&self) -> String {
            "raft-engine".into()
        }

        fn close(self: Box<Self>) -> Result<(), String> {
            let RaftEngineEngine { engine, purger } = *self;
            let purged = purger.map_or(Ok(()), Periodic::finish);
            engine
                .sync()
                .map_err(|e| format!("raft-engine sync: {e}"))?;
            purged
        }
    }
}
