//! Runs one job: writer threads keep `queue_depth` appends outstanding each, every
//! acknowledged append's latency goes into the writer's HdrHistogram, and the
//! engine's counters and the process's CPU time are sampled at the start and end of
//! the measured window.

use std::{
    collections::VecDeque,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;

use super::{
    engine::{self, EngineCounters, Pending},
    job::{EngineKind, JobSpec, RecordSize, Stop},
    sys::{self, CpuSample},
};
use crate::wal::Wal;

/// Highest latency the histograms hold (longer ones are clamped): 100 s, in ns.
const HIST_MAX_NS: u64 = 100_000_000_000;

/// Latency histograms shared by the writers (writer `w` records into `w % 16`).
const HIST_SHARDS: usize = 16;

/// A new latency histogram (nanoseconds, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("static histogram bounds are valid")
}

/// Records a latency of `ns` in `h`, at the ceiling (100 s) when longer. The
/// histogram's slots reach past its ceiling (its last bucket ends at 137 s), so
/// without the clamp an ack of 120 s was recorded as such, not counted as at
/// the ceiling, and ranked above one of 150 s, clamped to 100 s.
pub(crate) fn record_latency(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.min(HIST_MAX_NS));
}

/// Time to reopen a WAL and read back everything in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecoveryResult {
    /// `Wal::open`: scanning and validating every file, cutting the tail, starting.
    pub open: Duration,
    /// Iterating every recovered entry.
    pub replay: Duration,
    /// Entries read back.
    pub entries: u64,
    /// Bytes of WAL validated (up to the end of the last valid batch of each file).
    pub wal_bytes: u64,
    /// Whether the page cache was dropped before reopening (the request
    /// succeeded; the kernel may still have kept pages).
    pub caches_dropped: bool,
    /// Bytes the process read from storage during `Wal::open` (`read_bytes` of
    /// `/proc/self/io`); `None` where that is not available.
    pub device_read_bytes: Option<u64>,
    /// Whether the scan was cold: the cache was dropped and the open read at
    /// least half the WAL's bytes from the device ([`read_from_device`]).
    pub cold: bool,
    /// Resident set size just before the reopen (`VmRSS`), bytes.
    pub rss_before_bytes: Option<u64>,
    /// Peak resident set size from the reopen to the end of the replay (`VmHWM`,
    /// reset just before), bytes: what reading the WAL back added is the
    /// difference from `rss_before_bytes`.
    pub peak_rss_bytes: Option<u64>,
}

/// What one job measured.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// 1-based position in the run.
    pub index: usize,
    /// The job.
    pub spec: JobSpec,
    /// Where its files are (removed with `--cleanup`).
    pub dir: PathBuf,
    /// The I/O path the engine used.
    pub backend: String,
    /// Whether the engine wrote with `O_DIRECT` (engines that choose it themselves only).
    pub direct_io: Option<bool>,
    /// From the start of measuring to the last acknowledgement.
    pub elapsed: Duration,
    /// Records acknowledged in the measured window.
    pub records: u64,
    /// Payload bytes of those records.
    pub bytes: u64,
    /// Records acknowledged per writer, in writer order.
    pub writer_records: Vec<u64>,
    /// Latency of every acknowledged record, in nanoseconds.
    pub hist: Histogram<u64>,
    /// Engine counters over the measured window.
    pub counters: EngineCounters,
    /// CPU time over the measured window.
    pub cpu: Option<CpuSample>,
    /// Peak RSS during the job (process-wide where it cannot be reset per job).
    pub peak_rss_bytes: Option<u64>,
    /// Reopen timing, with `--reopen`.
    pub recovery: Option<RecoveryResult>,
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

struct Shared {
    phase: AtomicU8,
    claimed: AtomicU64,
    limit: Option<u64>,
    acked: AtomicU64,
    acked_bytes: AtomicU64,
    error: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, e: String) {
        let mut g = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if g.is_none() {
            *g = Some(e);
        }
        self.phase.store(STOP, Ordering::Release);
    }

    /// May this writer issue another append, and is it measured?
    fn next_issue(&self) -> Option<bool> {
        match self.phase.load(Ordering::Acquire) {
            WARMUP => Some(false),
            MEASURE => {
                if let Some(n) = self.limit {
                    if self.claimed.fetch_add(1, Ordering::Relaxed) >= n {
                        self.phase.store(STOP, Ordering::Release);
                        return None;
                    }
                }
                Some(true)
            }
            _ => None,
        }
    }
}

#[derive(Default)]
struct WriterOut {
    records: u64,
    bytes: u64,
    last_ack: Option<Instant>,
}

/// Small, fast, deterministic generator for record sizes and payload offsets.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Pseudo-random payload bytes that records are sliced out of without copying,
/// at random offsets: 4 MiB beside the largest record, wide enough that the
/// records of one WAL batch seldom share bytes, so that nothing
/// below (a compressing file system: ZFS with lz4, btrfs) can compress them
/// much (zlib: 1-2% on a 256 KiB batch of 4 KiB records). It was the largest
/// record and 64 KiB: such a batch held each byte about four times and
/// compressed 1.4-1.7 times.
fn payload_pool(max_record: usize) -> Bytes {
    const SPREAD: usize = 4 << 20;
    // A record larger than a batch is written alone, its bytes contiguous
    // random ones: no wider pool for it (five times a 1 GiB record was 5 GiB).
    let len = max_record.saturating_add(SPREAD);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// One writer's record generator and counters, shared by the thread and task loops.
struct Writer<'a> {
    w: usize,
    shared: &'a Shared,
    hist: &'a Mutex<Histogram<u64>>,
    pool: &'a Bytes,
    size: RecordSize,
    rng: XorShift,
    out: WriterOut,
}

impl<'a> Writer<'a> {
    fn new(
        w: usize,
        shared: &'a Shared,
        hist: &'a Mutex<Histogram<u64>>,
        pool: &'a Bytes,
        size: RecordSize,
    ) -> Self {
        Writer {
            w,
            shared,
            hist,
            pool,
            size,
            rng: XorShift(0x2545_F491_4F6C_DD1D ^ ((w as u64 + 1) * 0x9E37_79B9)),
            out: WriterOut {
                records: 0,
                bytes: 0,
                last_ack: None,
            },
        }
    }

    /// The next record to append, unless the job is over: whether it is measured,
    /// its length and its bytes.
    fn issue(&mut self) -> Option<(bool, usize, Bytes)> {
        let measured = self.shared.next_issue()?;
        let len = match self.size {
            RecordSize::Fixed(n) => n,
            RecordSize::Range { min, max } => min + self.rng.below(max - min + 1),
        };
        let off = self.rng.below(self.pool.len() - self.size.max()) & !7;
        Some((measured, len, self.pool.slice(off..off + len)))
    }

    /// Records every append at the head of `queue` that is already acknowledged,
    /// each timestamped as it is seen done. Acknowledgements come in order: the
    /// first append not done ends the collection.
    ///
    /// # Errors
    /// The error of a failed append (the collection stops at it).
    fn collect_done(&mut self, queue: &mut VecDeque<Issued>) -> Result<(), String> {
        while queue.front().is_some_and(|q| q.3.is_done()) {
            let now = Instant::now();
            let Some((started, measured, len, p)) = queue.pop_front() else {
                break;
            };
            p.wait()?;
            self.acked(measured, len, started, now);
        }
        Ok(())
    }

    fn acked(&mut self, measured: bool, len: usize, started: Instant, now: Instant) {
        if !measured {
            return;
        }
        let ns = u64::try_from(now.duration_since(started).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        record_latency(
            &mut self.hist.lock().unwrap_or_else(PoisonError::into_inner),
            ns,
        );
        self.out.records += 1;
        self.out.bytes += len as u64;
        self.out.last_ack = Some(now);
        self.shared.acked.fetch_add(1, Ordering::Relaxed);
        self.shared
            .acked_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// How a writer waits for an acknowledgement.
#[derive(Clone, Copy)]
enum Wait {
    /// Blocks its thread ([`Pending::wait`]).
    Block,
    /// `.await`s it ([`Pending::wait_async`]), yielding its runtime thread.
    Await,
}

impl Wait {
    async fn wait(self, p: Pending) -> Result<(), String> {
        match self {
            Wait::Block => p.wait(),
            Wait::Await => p.wait_async().await,
        }
    }
}

/// An append in flight: when it was issued, whether it is measured, its length.
type Issued = (Instant, bool, usize, Pending);

/// Keeps `queue_depth` appends outstanding until the job ends, recording each
/// acknowledgement's latency. Runs as a task, or on a thread under [`block_on`].
///
/// An acknowledgement is timestamped when the writer first sees it: after its
/// wait on the oldest append returns, and before each further append it
/// issues, it collects every append already done, each with a fresh
/// timestamp. Issuing can take long (an append blocks while the WAL's
/// pending-bytes cap is reached), and what was acknowledged before it must not
/// be charged for it. An acknowledgement arriving while an append call blocks
/// is seen when that call returns.
async fn writer_loop(
    mut wr: Writer<'_>,
    engine: &dyn engine::Engine,
    queue_depth: usize,
    how: Wait,
) -> WriterOut {
    let w = wr.w;
    let mut queue: VecDeque<Issued> = VecDeque::with_capacity(queue_depth);
    loop {
        let mut outcome = Ok(());
        while queue.len() < queue_depth {
            outcome = wr.collect_done(&mut queue);
            if outcome.is_err() {
                break;
            }
            let Some((measured, len, data)) = wr.issue() else {
                break;
            };
            let started = Instant::now();
            let p = engine.append(w, data);
            queue.push_back((started, measured, len, p));
        }
        if outcome.is_ok() {
            let Some((started, measured, len, p)) = queue.pop_front() else {
                break;
            };
            outcome = how.wait(p).await;
            if outcome.is_ok() {
                wr.acked(measured, len, started, Instant::now());
                outcome = wr.collect_done(&mut queue);
            }
        }
        if let Err(e) = outcome {
            wr.shared.fail(format!("writer {w}: append failed: {e}"));
            for (_, _, _, p) in queue.drain(..) {
                let _ = how.wait(p).await;
            }
            break;
        }
    }
    wr.out
}

/// Runs a future that never returns `Pending` (a [`Wait::Block`] writer loop,
/// whose every wait blocks the thread instead).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Noop));
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(&waker);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("a blocking writer loop never yields"),
    }
}

/// Runs the job's writers as tasks on a tokio runtime with `workers` threads, each
/// `.await`ing its acknowledgements, and returns their outcomes.
fn run_tasks(
    workers: usize,
    spec: &JobSpec,
    engine: &Arc<Box<dyn engine::Engine>>,
    shared: &Arc<Shared>,
    hists: &Arc<Vec<Mutex<Histogram<u64>>>>,
    pool: &Bytes,
) -> Vec<WriterOut> {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("bench-worker")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            shared.fail(format!("starting the async runtime: {e}"));
            return Vec::new();
        }
    };
    let tasks: Vec<_> = (0..spec.writers)
        .map(|w| {
            let (engine, shared, hists, pool) = (
                Arc::clone(engine),
                Arc::clone(shared),
                Arc::clone(hists),
                pool.clone(),
            );
            let (size, queue_depth) = (spec.record_size, spec.queue_depth);
            rt.spawn(async move {
                let wr = Writer::new(w, &shared, &hists[w % hists.len()], &pool, size);
                writer_loop(wr, engine.as_ref().as_ref(), queue_depth, Wait::Await).await
            })
        })
        .collect();
    rt.block_on(async {
        let mut outs = Vec::with_capacity(tasks.len());
        for (w, t) in tasks.into_iter().enumerate() {
            match t.await {
                Ok(out) => outs.push(out),
                Err(e) if e.is_panic() => shared.fail(format!(
                    "writer {w} panicked: {}",
                    panic_text(e.into_panic().as_ref())
                )),
                Err(e) => shared.fail(format!("writer {w}: {e}")),
            }
        }
        outs
    })
}

/// Directory of job `index` inside the spec's `--dir`.
pub fn job_dir(spec: &JobSpec, index: usize) -> PathBuf {
    spec.dir.join(format!("job{index}-{}", spec.engine))
}

fn prepare_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("clearing {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))
}

/// Runs job number `index` (1-based). Progress lines go to `progress` once a second.
///
/// # Errors
/// Engine open, append or close errors, as text.
pub fn run_job(
    index: usize,
    spec: &JobSpec,
    progress: Option<&mut dyn Write>,
) -> Result<JobResult, String> {
    let dir = job_dir(spec, index);
    prepare_dir(&dir)?;
    let engine = engine::open(spec, &dir)?;
    run_engine(index, spec, progress, dir, engine)
}

/// The text of a panic's payload (`panic!` with a literal or a format string).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs job `index` against an engine already open in `dir`.
fn run_engine(
    index: usize,
    spec: &JobSpec,
    progress: Option<&mut dyn Write>,
    dir: PathBuf,
    engine: Box<dyn engine::Engine>,
) -> Result<JobResult, String> {
    let engine: Arc<Box<dyn engine::Engine>> = Arc::new(engine);
    let backend = engine.backend();
    let direct_io = engine.direct_io();
    let pool = payload_pool(spec.record_size.max());
    // A few shared shards rather than one histogram per writer: each histogram is
    // ~230 KB, which at 256 writers would dominate the peak RSS being measured.
    let shards = spec.writers.min(HIST_SHARDS);
    let hists: Arc<Vec<Mutex<Histogram<u64>>>> =
        Arc::new((0..shards).map(|_| Mutex::new(new_histogram())).collect());
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(if spec.warmup.is_zero() {
            MEASURE
        } else {
            WARMUP
        }),
        claimed: AtomicU64::new(0),
        limit: match spec.stop {
            Stop::Records(n) => Some(n),
            Stop::Duration(_) => None,
        },
        acked: AtomicU64::new(0),
        acked_bytes: AtomicU64::new(0),
        error: Mutex::new(None),
    });
    sys::reset_peak_rss();

    let mut before_counters = engine.counters();
    let mut before_cpu = sys::cpu_sample();
    let mut start = Instant::now();
    let engine_ref: &dyn engine::Engine = engine.as_ref().as_ref();
    // Every handle yields the outcomes of the writers it ran: one for a writer
    // thread, all of them for the thread driving an async runtime.
    let outs: Vec<WriterOut> = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(spec.writers);
        if let Some(workers) = spec.async_workers {
            let (engine, shared, hists, pool) = (&engine, &shared, &hists, &pool);
            handles.push((
                "the async writers' runtime thread".to_string(),
                s.spawn(move || run_tasks(workers, spec, engine, shared, hists, pool)),
            ));
        } else {
            for w in 0..spec.writers {
                let (shared, pool, hist) = (&*shared, &pool, &hists[w % shards]);
                let h = std::thread::Builder::new()
                    .name(format!("bench-writer-{w}"))
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        let wr = Writer::new(w, shared, hist, pool, spec.record_size);
                        // A panicking writer fails the job at once: it stops the
                        // other writers and the monitor, which with `--records`
                        // would otherwise wait for records no writer is left to
                        // append.
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            block_on(writer_loop(wr, engine_ref, spec.queue_depth, Wait::Block))
                        }))
                        .map(|out| vec![out])
                        .unwrap_or_else(|payload| {
                            shared.fail(format!(
                                "writer {w} panicked: {}",
                                panic_text(payload.as_ref())
                            ));
                            Vec::new()
                        })
                    });
                match h {
                    Ok(h) => handles.push((format!("writer {w}"), h)),
                    Err(e) => {
                        shared.fail(format!("spawning writer {w}: {e}"));
                        break;
                    }
                }
            }
        }
        if !spec.warmup.is_zero() && shared.phase.load(Ordering::Acquire) == WARMUP {
            // In steps: a writer failing (a full disk, a panic) stops the job
            // at once, not after the rest of the warm-up.
            let until = Instant::now().checked_add(spec.warmup);
            while shared.phase.load(Ordering::Acquire) == WARMUP {
                let left = until.map_or(Duration::MAX, |u| {
                    u.saturating_duration_since(Instant::now())
                });
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(Duration::from_millis(10)));
            }
            before_counters = engine_ref.counters();
            before_cpu = sys::cpu_sample();
            start = Instant::now();
            let _ =
                shared
                    .phase
                    .compare_exchange(WARMUP, MEASURE, Ordering::AcqRel, Ordering::Acquire);
        }
        monitor(index, spec, &shared, &hists, start, progress);
        let mut outs = Vec::with_capacity(spec.writers);
        for (who, h) in handles {
            match h.join() {
                Ok(o) => outs.extend(o),
                // A job missing a writer's results is no result.
                Err(payload) => {
                    shared.fail(format!("{who} panicked: {}", panic_text(payload.as_ref())));
                }
            }
        }
        outs
    });
    let after_counters = engine.counters();
    let after_cpu = sys::cpu_sample();
    let peak_rss_bytes = sys::peak_rss_bytes();
    let end = outs
        .iter()
        .filter_map(|o| o.last_ack)
        .max()
        .unwrap_or(start);
    let close = Arc::try_unwrap(engine)
        .map_err(|_| "an engine handle outlived its writers".to_string())?
        .close();
    if let Some(e) = shared
        .error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        return Err(e);
    }
    close?;

    let hists = Arc::try_unwrap(hists)
        .map_err(|_| "a histogram handle outlived its writers".to_string())?;
    let mut hist = new_histogram();
    for h in hists {
        let h = h.into_inner().unwrap_or_else(PoisonError::into_inner);
        hist.add(&h)
            .map_err(|e| format!("merging histograms: {e:?}"))?;
    }
    let recovery = if spec.reopen {
        Some(reopen(spec, &dir)?)
    } else {
        None
    };
    Ok(JobResult {
        index,
        spec: spec.clone(),
        dir,
        backend,
        direct_io,
        elapsed: end.saturating_duration_since(start),
        records: outs.iter().map(|o| o.records).sum(),
        bytes: outs.iter().map(|o| o.bytes).sum(),
        writer_records: outs.iter().map(|o| o.records).collect(),
        hist,
        counters: after_counters.since(&before_counters),
        cpu: match (after_cpu, before_cpu) {
            (Some(a), Some(b)) => Some(a.since(&b)),
            _ => None,
        },
        peak_rss_bytes,
        recovery,
    })
}

/// Waits for the job to end (stopping it when its duration is up) and prints one
/// progress line per second.
fn monitor(
    index: usize,
    spec: &JobSpec,
    shared: &Shared,
    hists: &[Mutex<Histogram<u64>>],
    start: Instant,
    mut progress: Option<&mut dyn Write>,
) {
    let tick = Duration::from_secs(1);
    let mut next_tick = start + tick;
    let (mut last_records, mut last_bytes) = (0u64, 0u64);
    loop {
        let now = Instant::now();
        if let Stop::Duration(d) = spec.stop {
            if now.duration_since(start) >= d {
                shared.phase.store(STOP, Ordering::Release);
            }
        }
        if shared.phase.load(Ordering::Acquire) == STOP {
            return;
        }
        if now >= next_tick {
            next_tick += tick;
            let records = shared.acked.load(Ordering::Relaxed);
            let bytes = shared.acked_bytes.load(Ordering::Relaxed);
            if let Some(out) = progress.as_deref_mut() {
                let mut merged = new_histogram();
                for h in hists {
                    let _ = merged.add(&*h.lock().unwrap_or_else(PoisonError::into_inner));
                }
                let p99 = if merged.is_empty() {
                    0.0
                } else {
                    merged.value_at_quantile(0.99) as f64 / 1000.0
                };
                let _ = writeln!(
                    out,
                    "[job {index} {}] {:>4.0}s  {:>10.0} rec/s  {:>8.1} MB/s  p99 {:>9.1} us (so far)",
                    spec.engine,
                    now.duration_since(start).as_secs_f64(),
                    (records - last_records) as f64,
                    (bytes - last_bytes) as f64 / 1e6,
                    p99
                );
            }
            last_records = records;
            last_bytes = bytes;
        }
        let wait = match spec.stop {
            Stop::Duration(d) => (start + d).saturating_duration_since(now),
            Stop::Records(_) => Duration::from_millis(10),
        };
        std::thread::sleep(
            wait.min(next_tick.saturating_duration_since(now))
                .clamp(Duration::from_micros(100), Duration::from_millis(10)),
        );
    }
}

/// Whether a reopen that read `device_read_bytes` of a WAL of `wal_bytes` ran
/// on a cold cache: only when the cache was dropped and at least half the WAL
/// came from the device. A successful drop alone proves nothing: the kernel
/// may keep pages it was asked to drop. (What the kernel sends to the block
/// device counts as read from it, even where a cache below it, such as a VM
/// host's, serves the read.)
pub fn read_from_device(
    caches_dropped: bool,
    device_read_bytes: Option<u64>,
    wal_bytes: u64,
) -> bool {
    caches_dropped && device_read_bytes.is_some_and(|read| read.saturating_mul(2) >= wal_bytes)
}

fn reopen(spec: &JobSpec, dir: &Path) -> Result<RecoveryResult, String> {
    debug_assert_eq!(spec.engine, EngineKind::Streamline);
    let caches_dropped = spec.drop_caches && sys::drop_page_cache();
    let reset = sys::reset_peak_rss();
    let rss_before_bytes = sys::rss_bytes().filter(|_| reset);
    let read_before = sys::device_read_bytes();
    let t0 = Instant::now();
    let (wal, rec) = Wal::open(dir, spec.wal.clone()).map_err(|e| format!("reopen: {e}"))?;
    let open = t0.elapsed();
    let device_read_bytes = read_before
        .zip(sys::device_read_bytes())
        .map(|(before, after)| after.saturating_sub(before));
    let wal_bytes = rec.files.iter().map(|f| f.valid_end).sum();
    let t1 = Instant::now();
    let mut entries = 0u64;
    for e in rec {
        e.map_err(|e| format!("replay: {e}"))?;
        entries += 1;
    }
    let replay = t1.elapsed();
    let peak_rss_bytes = sys::peak_rss_bytes().filter(|_| reset);
    wal.close()
        .map_err(|e| format!("closing after reopen: {e}"))?;
    Ok(RecoveryResult {
        open,
        replay,
        entries,
        wal_bytes,
        caches_dropped,
        device_read_bytes,
        cold: read_from_device(caches_dropped, device_read_bytes, wal_bytes),
        rss_before_bytes,
        peak_rss_bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// An engine whose `append` panics for the writers in `panics`; the others'
    /// appends succeed once one has panicked (so that they cannot finish the job
    /// before it), or after 10 s.
    struct PanickingEngine {
        panics: Vec<usize>,
        panicked: std::sync::atomic::AtomicBool,
    }

    impl engine::Engine for PanickingEngine {
        fn append(&self, writer: usize, _data: Bytes) -> Pending {
            if self.panics.contains(&writer) {
                self.panicked.store(true, Ordering::Release);
                panic!("append of writer {writer} panics");
            }
            let t0 = Instant::now();
            while !self.panicked.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Pending::Done(Ok(()))
        }
        fn counters(&self) -> EngineCounters {
            EngineCounters::default()
        }
        fn backend(&self) -> String {
            "test".into()
        }
        fn close(self: Box<Self>) -> Result<(), String> {
            Ok(())
        }
    }

    /// Runs a job of `writers` writers (tasks on a runtime with `async_workers`)
    /// that stops after `records` records, against an engine whose append panics
    /// for the writers in `panics`. `None` when the job has not ended after 30 s.
    fn run_panicking(
        writers: usize,
        async_workers: Option<usize>,
        records: u64,
        panics: Vec<usize>,
    ) -> Option<Result<JobResult, String>> {
        run_panicking_after(writers, async_workers, records, panics, Duration::ZERO)
    }

    /// [`run_panicking`] with a warm-up of `warmup`.
    fn run_panicking_after(
        writers: usize,
        async_workers: Option<usize>,
        records: u64,
        panics: Vec<usize>,
        warmup: Duration,
    ) -> Option<Result<JobResult, String>> {
        let dir = tempfile::tempdir().unwrap();
        let spec = JobSpec {
            dir: dir.path().to_path_buf(),
            engine: EngineKind::Nowal,
            writers,
            record_size: RecordSize::Fixed(64),
            stop: Stop::Records(records),
            warmup,
            queue_depth: 4,
            wal: crate::wal::WalConfig::default(),
            checkpoint_every: None,
            async_workers,
            reopen: false,
            drop_caches: false,
        };
        let (tx, rx) = mpsc::channel();
        // On its own thread, so that a job that never ends fails the test
        // instead of hanging it.
        std::thread::spawn(move || {
            let engine: Box<dyn engine::Engine> = Box::new(PanickingEngine {
                panics,
                panicked: false.into(),
            });
            let r = run_engine(1, &spec, None, dir.path().join("job1"), engine);
            let _ = tx.send(r);
        });
        rx.recv_timeout(Duration::from_secs(30)).ok()
    }

    /// A writer failing during the warm-up ends the job at once: the harness
    /// slept the whole warm-up first (`--warmup 600` on a full disk reported
    /// its error ten minutes later).
    #[test]
    fn a_writer_failing_during_the_warm_up_ends_the_job_at_once() {
        let started = Instant::now();
        let r = run_panicking_after(2, None, 10_000, vec![1], Duration::from_secs(25))
            .expect("the job ends");
        let e = r.map(|r| r.writer_records).expect_err("the job fails");
        assert!(e.contains("writer 1 panicked"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "ended {:?} after the start, in a warm-up of 25 s",
            started.elapsed()
        );
    }

    /// A writer thread (or, with `tasks`, a writer task) that panics fails
    /// the job, naming the writer and the panic.
    fn a_panicking_writer_fails_a_job_of(tasks: Option<usize>) {
        let r = run_panicking(2, tasks, 10_000, vec![1]).expect("the job ends");
        let e = r
            .map(|r| r.writer_records)
            .expect_err("a job that lost a writer reports no result");
        assert!(
            e.contains("writer 1 panicked") && e.contains("append of writer 1 panics"),
            "{e}"
        );
    }

    #[test]
    fn a_panicking_writer_fails_the_job() {
        a_panicking_writer_fails_a_job_of(None);
    }

    #[test]
    fn a_job_whose_writers_all_panic_ends_and_fails() {
        // With a record limit no writer is left to reach, only the failure can
        // stop the monitor.
        let r = run_panicking(3, None, 1_000_000, vec![0, 1, 2]).expect("the job ends");
        let e = r.map(|r| r.records).expect_err("no writer finished");
        assert!(e.contains("panicked"), "{e}");
    }

    #[test]
    fn a_panicking_writer_task_fails_the_job() {
        a_panicking_writer_fails_a_job_of(Some(2));
    }

    /// An engine whose every append first completes all earlier ones (as the
    /// commit thread does while a writer issues more), and notes how many
    /// acknowledgements the writer had recorded by then. The last append is
    /// done at once.
    struct CompletingEngine<'a> {
        shared: &'a Shared,
        appends: u64,
        state: Mutex<CompletingState>,
    }

    #[derive(Default)]
    struct CompletingState {
        /// Completes an outstanding append.
        open: Vec<Box<dyn FnOnce() + Send>>,
        /// `Shared::acked` at the start of each append.
        recorded_at_append: Vec<u64>,
    }

    impl engine::Engine for CompletingEngine<'_> {
        fn append(&self, _writer: usize, _data: Bytes) -> Pending {
            let mut st = self.state.lock().unwrap();
            st.recorded_at_append
                .push(self.shared.acked.load(Ordering::Relaxed));
            for complete in st.open.drain(..) {
                complete();
            }
            let (c, slot) = crate::wal::Completion::new();
            let complete = move || slot.complete(Ok(1));
            if st.recorded_at_append.len() as u64 == self.appends {
                complete();
            } else {
                st.open.push(Box::new(complete));
            }
            Pending::Wal(c)
        }
        fn counters(&self) -> EngineCounters {
            EngineCounters::default()
        }
        fn backend(&self) -> String {
            "test".into()
        }
        fn close(self: Box<Self>) -> Result<(), String> {
            Ok(())
        }
    }

    /// A WAL batch of records drawn as a writer draws them (4 KiB records at
    /// random offsets of the pool, 256 KiB in all) does not compress: the
    /// pool was so narrow that a batch held each byte about four times.
    #[test]
    fn a_batch_of_drawn_records_does_not_compress() {
        use std::io::Write;
        const RECORD: usize = 4096;
        let pool = payload_pool(RECORD);
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut batch = Vec::new();
        while batch.len() < 256 << 10 {
            let off = rng.below(pool.len() - RECORD) & !7;
            batch.extend_from_slice(&pool[off..off + RECORD]);
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&batch).unwrap();
        let packed = z.finish().unwrap().len();
        assert!(
            packed as f64 >= 0.97 * batch.len() as f64,
            "{} bytes of records compressed to {packed}",
            batch.len()
        );
    }

    /// At queue depth 8, every append the engine completed during one append
    /// call is recorded before the writer issues the next: an acknowledgement is
    /// not timestamped after the writer has refilled its queue.
    fn acknowledgements_are_recorded_before_the_next_append(how: Wait) {
        const APPENDS: u64 = 40;
        let shared = Shared {
            phase: AtomicU8::new(MEASURE),
            claimed: AtomicU64::new(0),
            limit: Some(APPENDS),
            acked: AtomicU64::new(0),
            acked_bytes: AtomicU64::new(0),
            error: Mutex::new(None),
        };
        let hist = Mutex::new(new_histogram());
        let pool = payload_pool(64);
        let engine = CompletingEngine {
            shared: &shared,
            appends: APPENDS,
            state: Mutex::default(),
        };
        let wr = Writer::new(0, &shared, &hist, &pool, RecordSize::Fixed(64));
        let out = block_on(writer_loop(wr, &engine, 8, how));
        assert_eq!(shared.error.lock().unwrap().take(), None);
        assert_eq!(out.records, APPENDS);
        assert_eq!(hist.lock().unwrap().len(), APPENDS);
        let seen = engine.state.into_inner().unwrap().recorded_at_append;
        assert_eq!(seen.len() as u64, APPENDS);
        // Append n completed appends 0..n-1; by append n + 1 all of them are
        // recorded.
        for (n, &recorded) in seen.iter().enumerate().skip(1) {
            assert_eq!(
                recorded,
                n as u64 - 1,
                "append {n}: the writer had recorded {recorded} acknowledgements of the \
                 {} completed before its previous append returned (all: {seen:?})",
                n - 1
            );
        }
    }

    #[test]
    fn acknowledgements_are_recorded_before_the_next_append_blocking() {
        acknowledgements_are_recorded_before_the_next_append(Wait::Block);
    }

    #[test]
    fn acknowledgements_are_recorded_before_the_next_append_awaiting() {
        acknowledgements_are_recorded_before_the_next_append(Wait::Await);
    }

    #[test]
    fn a_reopen_is_cold_only_when_it_read_half_the_wal_from_the_device() {
        let gib = 1 << 30;
        assert!(read_from_device(true, Some(gib / 2), gib));
        assert!(read_from_device(true, Some(gib), gib));
        // Dropped, yet served from a cache: warm.
        assert!(!read_from_device(true, Some(gib / 2 - 1), gib));
        assert!(!read_from_device(true, Some(0), gib));
        // Not measured: not proven cold.
        assert!(!read_from_device(true, None, gib));
        // Not dropped: warm, whatever was read.
        assert!(!read_from_device(false, Some(gib), gib));
    }
}
