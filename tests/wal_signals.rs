//! Signals delivered to the WAL's threads while they wait for the disk (a profiler's
//! SIGPROF, an application's own handlers) interrupt `io_uring_enter`, `fdatasync`
//! and the like with EINTR. That is never an I/O failure: no append fails, none is
//! lost, and the log recovers exactly what was acknowledged.
//!
//! A handler installed without `SA_RESTART` counts SIGUSR1s; a signalling thread
//! sends one to every WAL thread (and every producer) about every 100 µs.
#![cfg(target_os = "linux")]

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Once,
    },
    time::Duration,
};

use bytes::Bytes;
use common::{open, payload, BACKENDS};
use streamline::wal::SyncMode;

static HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    HANDLED.fetch_add(1, Ordering::Relaxed);
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

/// Sends SIGUSR1 to every WAL thread and producer about every 100 µs until `stop`;
/// returns how many were sent.
fn pester(stop: &AtomicBool) -> u64 {
    let mut sent = 0;
    let mut targets = Vec::new();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if round.is_multiple_of(50) {
            // Thread names are cut to 15 bytes: "streamline-wal-" covers the commit
            // and prepare threads.
            targets = threads_named("streamline-wal");
            targets.extend(threads_named("sig-producer"));
        }
        round += 1;
        for &tid in &targets {
            // SAFETY: tgkill with this process's id; a thread that has exited in the
            // meantime gives ESRCH, which is ignored.
            if unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) } == 0 {
                sent += 1;
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
const PER_PRODUCER: u64 = 600;
const LEN: usize = 1000;

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
            let (sent, mut acked) = std::thread::scope(|s| {
                let pest = s.spawn(|| pester(&stop));
                // Stops the signalling thread however this scope ends (a producer's
                // panic included), or the scope would wait for it forever.
                let _stop = StopOnDrop(&stop);
                let producers: Vec<_> = (0..PRODUCERS)
                    .map(|p| {
                        let wal = wal.clone();
                        std::thread::Builder::new()
                            .name(format!("sig-producer-{p}"))
                            .spawn_scoped(s, move || {
                                let topic = format!("p{p}");
                                let mut seqs = Vec::new();
                                for i in 0..PER_PRODUCER {
                                    let data = Bytes::from(payload(p * PER_PRODUCER + i, LEN));
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
            let handled = HANDLED.load(Ordering::Relaxed) - handled_before;
            assert!(
                sent >= 500 && handled >= 500,
                "{backend:?} {mode:?}: too few signals to mean anything: {sent} sent, {handled} handled"
            );
            assert!(rotations >= 2, "{backend:?} {mode:?}: no rotation");

            acked.sort_unstable();
            let total = PRODUCERS * PER_PRODUCER;
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
                    payload(p * PER_PRODUCER + i, LEN),
                    "{backend:?} {mode:?} seq {seq}"
                );
            }
            wal.close().expect("close");
        }
    }
}
