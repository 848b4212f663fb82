//! Signals delivered to the WAL's threads while they wait for the disk (a profiler's
//! SIGPROF, an application's own handlers) interrupt `io_uring_enter`, `fdatasync`
//! and the like with EINTR. That is never an I/O failure: no append fails, none is
//! lost, and the log recovers exactly what was acknowledged.
//!
//! A handler installed without `SA_RESTART` counts SIGUSR1s, those the WAL's own
//! threads handled apart; a signalling thread sends one to every WAL thread (and
//! every producer) about every 100 µs. The WAL threads must have been found and
//! have handled a good number of them: the producers alone could make up any
//! total.
#![cfg(target_os = "linux")]

mod common;

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering},
        Once,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{open, payload, BACKENDS};
use streamline::wal::SyncMode;

/// Signals handled by any thread, and by the WAL's threads.
static HANDLED: AtomicU64 = AtomicU64::new(0);
static HANDLED_WAL: AtomicU64 = AtomicU64::new(0);

/// Thread ids of the WAL threads the signalling thread found last (0: free slot).
static WAL_TIDS: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];

extern "C" fn on_signal(_: libc::c_int) {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    // SAFETY: gettid has no arguments and cannot fail; a raw system call and
    // atomic loads and adds are async-signal-safe.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    if WAL_TIDS.iter().any(|t| t.load(Ordering::Relaxed) == tid) {
        HANDLED_WAL.fetch_add(1, Ordering::Relaxed);
    }
}

/// Installs the counting SIGUSR1 handler, without `SA_RESTART`, so that an
/// interrupted system call returns EINTR instead of being restarted by the kernel.
fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the handler is
        // async-signal-safe (one atomic add) and lives for the whole process.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
    });
}

/// Thread ids of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<libc::pid_t> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let tid = t.file_name().to_str()?.parse().ok()?;
            comm.starts_with(prefix).then_some(tid)
        })
        .collect()
}

/// Signals the signalling thread sent, per group of targets.
#[derive(Default)]
struct Sent {
    /// To the WAL's threads, and how many distinct ones it found.
    wal: u64,
    wal_threads: BTreeSet<libc::pid_t>,
    /// To the producers.
    producers: u64,
}

/// Sends SIGUSR1 to every WAL thread and producer about every 100 µs until `stop`.
fn pester(stop: &AtomicBool) -> Sent {
    let mut sent = Sent::default();
    let mut wal = Vec::new();
    let mut producers = Vec::new();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if round.is_multiple_of(50) {
            // Thread names are cut to 15 bytes: "streamline-wal-" covers the commit
            // and prepare threads.
            wal = threads_named("streamline-wal");
            wal.truncate(WAL_TIDS.len());
            // Published before any signal goes to them, for the handler.
            for (i, slot) in WAL_TIDS.iter().enumerate() {
                slot.store(wal.get(i).copied().unwrap_or(0), Ordering::Relaxed);
            }
            sent.wal_threads.extend(&wal);
            producers = threads_named("sig-producer");
        }
        round += 1;
        for (group, targets) in [(&mut sent.wal, &wal), (&mut sent.producers, &producers)] {
            for &tid in targets {
                // SAFETY: tgkill with this process's id; a thread that has exited in
                // the meantime gives ESRCH, which is ignored.
                if unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) }
                    == 0
                {
                    *group += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    sent
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

const PRODUCERS: u64 = 4;
/// Appends per producer at least; they go on until the WAL threads and the
/// producers have each handled `MIN_HANDLED` signals (for up to `SIGNALS_WITHIN`).
const PER_PRODUCER: u64 = 600;
const MIN_HANDLED: u64 = 1000;
const SIGNALS_WITHIN: Duration = Duration::from_secs(60);
const LEN: usize = 1000;

/// The payload key of producer `p`'s append `i`.
fn key(p: u64, i: u64) -> u64 {
    (p << 32) | i
}

#[test]
fn signals_interrupting_the_wal_threads_fail_nothing_and_lose_nothing() {
    install_handler();
    for backend in BACKENDS {
        for mode in [SyncMode::EveryWrite, SyncMode::Interval] {
            let t = tempfile::tempdir().expect("tempdir");
            // Small files: rotations (renames, directory fsyncs, the preparer's
            // zero-fill) happen under the signals too.
            let cfg = || common::config(backend, mode);
            let (wal, _) = open(t.path(), cfg());
            let stop = AtomicBool::new(false);
            let handled_before = HANDLED.load(Ordering::Relaxed);
            let handled_wal_before = HANDLED_WAL.load(Ordering::Relaxed);
            let enough = AtomicBool::new(false);
            let handled_wal = || HANDLED_WAL.load(Ordering::Relaxed) - handled_wal_before;
            let handled_producers =
                || HANDLED.load(Ordering::Relaxed) - handled_before - handled_wal();
            let (sent, mut acked) = std::thread::scope(|s| {
                let pest = s.spawn(|| pester(&stop));
                // Stops the signalling thread however this scope ends (a producer's
                // panic included), or the scope would wait for it forever.
                let _stop = StopOnDrop(&stop);
                let producers: Vec<_> = (0..PRODUCERS)
                    .map(|p| {
                        let (wal, enough) = (wal.clone(), &enough);
                        std::thread::Builder::new()
                            .name(format!("sig-producer-{p}"))
                            .spawn_scoped(s, move || {
                                let topic = format!("p{p}");
                                let mut seqs = Vec::new();
                                // At least PER_PRODUCER appends, and on until both
                                // groups of threads have handled enough signals.
                                for i in 0.. {
                                    if i >= PER_PRODUCER && enough.load(Ordering::Relaxed) {
                                        break;
                                    }
                                    let data = Bytes::from(payload(key(p, i), LEN));
                                    let seq =
                                        wal.append(&topic, 0, data).wait().unwrap_or_else(|e| {
                                            panic!("{backend:?} {mode:?}: append {i}: {e}")
                                        });
                                    seqs.push((seq, p, i));
                                    if i % 50 == 49 {
                                        wal.sync().wait().unwrap_or_else(|e| {
                                            panic!("{backend:?} {mode:?}: sync: {e}")
                                        });
                                    }
                                }
                                seqs
                            })
                            .expect("spawn producer")
                    })
                    .collect();
                let deadline = Instant::now() + SIGNALS_WITHIN;
                while (handled_wal() < MIN_HANDLED || handled_producers() < MIN_HANDLED)
                    && Instant::now() < deadline
                    // Before `enough`, a producer ends only by panicking.
                    && !producers.iter().any(|h| h.is_finished())
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                enough.store(true, Ordering::Relaxed);
                let acked: Vec<_> = producers
                    .into_iter()
                    .flat_map(|h| h.join().expect("producer panicked"))
                    .collect();
                stop.store(true, Ordering::Relaxed);
                (pest.join().expect("signaller panicked"), acked)
            });
            let rotations = wal.stats().rotations;
            wal.close()
                .unwrap_or_else(|e| panic!("{backend:?} {mode:?}: close: {e}"));
            let (handled_wal, handled_producers) = (handled_wal(), handled_producers());
            eprintln!(
                "{backend:?} {mode:?}: {} appends; {} WAL threads found, {} signals sent to them, {handled_wal} handled; {} sent to the producers, {handled_producers} handled",
                acked.len(),
                sent.wal_threads.len(),
                sent.wal,
                sent.producers
            );
            assert!(
                !sent.wal_threads.is_empty(),
                "{backend:?} {mode:?}: no streamline-wal* thread found to signal"
            );
            assert!(
                handled_wal >= MIN_HANDLED,
                "{backend:?} {mode:?}: too few signals at the WAL threads to mean anything in {SIGNALS_WITHIN:?}: {} sent, {handled_wal} handled",
                sent.wal
            );
            assert!(
                handled_producers >= MIN_HANDLED,
                "{backend:?} {mode:?}: too few signals at the producers in {SIGNALS_WITHIN:?}: {} sent, {handled_producers} handled",
                sent.producers
            );
            assert!(rotations >= 2, "{backend:?} {mode:?}: no rotation");

            acked.sort_unstable();
            let total = acked.len() as u64;
            let seqs: Vec<u64> = acked.iter().map(|a| a.0).collect();
            assert_eq!(
                seqs,
                (1..=total).collect::<Vec<_>>(),
                "{backend:?} {mode:?}"
            );
            let (wal, entries) = open(t.path(), cfg());
            assert_eq!(entries.len() as u64, total, "{backend:?} {mode:?}");
            for (e, &(seq, p, i)) in entries.iter().zip(&acked) {
                assert_eq!(e.sequence, seq);
                assert_eq!(e.topic, format!("p{p}"), "{backend:?} {mode:?} seq {seq}");
                assert_eq!(
                    e.data,
                    payload(key(p, i), LEN),
                    "{backend:?} {mode:?} seq {seq}"
                );
            }
            wal.close().expect("close");
        }
    }
}
