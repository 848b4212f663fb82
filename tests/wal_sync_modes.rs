//! What each sync mode promises about durability, observed through the WAL's own
//! durable-sequence counter, plus backpressure and the README example.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{config, open, payload, BACKENDS, WRITE_PATHS};
use streamline::wal::{BackendKind, SyncMode, WalConfig};

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Checks the engine's own account (`durable_sequence`, `stats().fsyncs`)
/// against its acknowledgements; that the syncs it reports really happened
/// before them is proven by cutting the power (`tests/wal_crash.rs`,
/// `power_cut_every_write_*`).
#[test]
fn every_write_acknowledges_only_synced_entries() {
    for (backend, group) in WRITE_PATHS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig {
            uring_group_writes: group,
            ..config(backend, SyncMode::EveryWrite)
        };
        let (wal, _) = open(dir.path(), cfg);
        for _ in 0..50 {
            let seq = wal
                .append("s", 0, Bytes::from_static(b"durable"))
                .wait()
                .unwrap();
            assert!(
                wal.durable_sequence() >= seq,
                "{backend} group writes {group:?}: acked {seq} before it was synced"
            );
        }
        let s = wal.stats();
        assert!(
            s.fsyncs >= s.batches,
            "{backend} group writes {group:?}: {s:?}"
        );
        // From several threads at once every acknowledgement is durable too.
        std::thread::scope(|sc| {
            for t in 0..8 {
                let wal = wal.clone();
                sc.spawn(move || {
                    for _ in 0..50 {
                        let seq = wal.append("s", t, Bytes::from_static(b"x")).wait().unwrap();
                        assert!(
                            wal.durable_sequence() >= seq,
                            "{backend} group writes {group:?}: acked {seq} before it was synced"
                        );
                    }
                });
            }
        });
    }
}

#[test]
fn interval_mode_syncs_within_the_interval_without_further_appends() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig {
            sync_interval_ms: 20,
            ..config(backend, SyncMode::Interval)
        };
        let (wal, _) = open(dir.path(), cfg);
        // Each round leaves the WAL idle and dirty: the commit thread must
        // wake up on its own to sync it, within the interval. The bound is
        // checked on the median of the rounds, with a slack far above a
        // sync's cost (a noisy host delays a round now and then), and far
        // below what a WAL that synced only every few seconds would take.
        let mut waits = Vec::new();
        for _ in 0..5 {
            let mut last = 0;
            for _ in 0..20 {
                last = wal
                    .append("s", 0, Bytes::from_static(b"soon durable"))
                    .wait()
                    .unwrap();
            }
            let acked = std::time::Instant::now();
            wait_until("interval fsync", Duration::from_secs(5), || {
                wal.durable_sequence() >= last
            });
            waits.push(acked.elapsed());
        }
        waits.sort();
        assert!(
            waits[2] <= Duration::from_millis(20 + 500),
            "{backend}: durable {:?} after the last acknowledgement (median of {waits:?}), with a 20 ms interval",
            waits[2]
        );
        assert!(wal.stats().fsyncs >= 5);
    }
}

#[test]
fn os_default_never_syncs_until_asked() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), config(backend, SyncMode::OsDefault));
        let mut last = 0;
        for _ in 0..20 {
            last = wal
                .append("s", 0, Bytes::from_static(b"page cache"))
                .wait()
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            wal.stats().fsyncs,
            0,
            "{backend}: os_default issued an fsync on its own"
        );
        assert!(wal.durable_sequence() < last);
        assert_eq!(wal.sync().wait().unwrap(), last);
        assert_eq!(wal.durable_sequence(), last);
        assert_eq!(wal.stats().fsyncs, 1);
    }
}

/// `every_write` with at most `cap` bytes accepted but not yet acknowledged.
fn capped(backend: BackendKind, cap: usize) -> WalConfig {
    WalConfig {
        max_pending_bytes: cap,
        max_batch_bytes: 16 * 1024,
        max_file_size: 4 << 20,
        ..config(backend, SyncMode::EveryWrite)
    }
}

/// Samples the WAL's pending bytes on a thread of its own until `run` returns, and
/// returns the largest value seen.
fn max_pending_while(wal: &streamline::wal::Wal, run: impl FnOnce()) -> u64 {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Stops the sampler however `run` ends, so that a failing `run` fails the
    /// test instead of leaving the scope waiting for the sampler.
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                max = max.max(wal.stats().pending_bytes);
                std::hint::spin_loop();
            }
            max
        });
        {
            let _stop = Stop(&stop);
            run();
        }
        sampler.join().unwrap()
    })
}

#[test]
fn pending_bytes_never_exceed_the_cap() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cap = 128 * 1024;
        let cfg = capped(backend, cap);
        let (wal, _) = open(dir.path(), cfg);
        let mut n = 0;
        let max = max_pending_while(&wal, || {
            // Producers that never wait for their completions would grow without
            // bound if append did not block at the cap.
            let producers: Vec<_> = (0..4)
                .map(|_| {
                    let wal = wal.clone();
                    std::thread::spawn(move || {
                        let cs: Vec<_> = (0..400)
                            .map(|_| wal.append("p", 0, Bytes::from(vec![1u8; 2000])))
                            .collect();
                        let mut acked = 0;
                        for c in cs {
                            c.wait().unwrap();
                            acked += 1;
                        }
                        acked
                    })
                })
                .collect();
            n = producers.into_iter().map(|p| p.join().unwrap()).sum();
        });
        assert_eq!(n, 1600);
        assert!(max > 0, "{backend}: sampler saw nothing pending");
        assert!(
            max <= cap as u64,
            "{backend}: {max} pending bytes exceed the cap of {cap}"
        );
        assert_eq!(wal.stats().pending_bytes, 0);
    }
}

/// `append_async` waits for pending capacity as a future: tasks far beyond the cap
/// all get their capacity and their acknowledgement, on one runtime thread or two,
/// and the cap holds.
#[test]
fn async_appends_wait_for_pending_capacity_and_all_complete() {
    for backend in BACKENDS {
        for workers in [0, 2] {
            let dir = tempfile::tempdir().unwrap();
            let cap = 64 * 1024;
            let cfg = capped(backend, cap);
            let (wal, _) = open(dir.path(), cfg);
            let rt = common::runtime(workers);
            // 64 tasks × 8 KiB: room for 8 at a time, so most wait for capacity.
            let (tasks, per) = (64u64, 20u64);
            let mut seqs = Vec::new();
            let max = max_pending_while(&wal, || {
                seqs = rt.block_on(async {
                    let handles: Vec<_> = (0..tasks)
                        .map(|t| {
                            let wal = wal.clone();
                            tokio::spawn(async move {
                                let mut got = Vec::new();
                                for i in 0..per {
                                    let data = Bytes::from(vec![(t + i) as u8; 8192]);
                                    got.push(wal.append_async("c", t as i32, data).await.unwrap());
                                }
                                got
                            })
                        })
                        .collect();
                    let mut all = Vec::new();
                    for h in handles {
                        // A waiter whose waker is lost hangs here.
                        let joined = tokio::time::timeout(Duration::from_secs(60), h).await;
                        all.extend(joined.expect("a task never got capacity").unwrap());
                    }
                    all
                });
            });
            seqs.sort_unstable();
            assert_eq!(
                seqs,
                (1..=tasks * per).collect::<Vec<_>>(),
                "{backend} workers {workers}: sequences"
            );
            assert!(
                max <= cap as u64,
                "{backend} workers {workers}: {max} pending bytes exceed the cap of {cap}"
            );
            assert_eq!(wal.stats().pending_bytes, 0);
        }
    }
}

/// `try_append` / `try_append_batch` under producers that keep the cap reached:
/// each either is accepted (and recovered) or fails at once with `Full` (and takes
/// no sequence, nor appears after recovery); with nothing pending it is accepted.
#[test]
fn try_append_refuses_at_the_cap_instead_of_blocking_and_appends_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use streamline::{wal::NewEntry, Error};
    const CAP: usize = 128 * 1024;
    const TRY_LEN: usize = CAP / 2;
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), capped(backend, CAP));
        let stop = AtomicBool::new(false);
        let (mut accepted, mut refused) = (Vec::new(), 0u32);
        std::thread::scope(|s| {
            // Eight closed-loop producers of 16 KiB keep ~7 of them pending, which
            // leaves no room for a try of half the cap.
            for _ in 0..8 {
                let (wal, stop) = (wal.clone(), &stop);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        wal.append("load", 0, Bytes::from(vec![7u8; 16 * 1024]))
                            .wait()
                            .expect("append");
                    }
                });
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut i = 0u64;
            while refused < 20 || accepted.len() < 2 {
                assert!(
                    Instant::now() < deadline,
                    "{backend:?}: {refused} refused, {} accepted in 10 s",
                    accepted.len()
                );
                let data = |k: u64| Bytes::from(common::payload(k, TRY_LEN));
                let started = Instant::now();
                let c = if i.is_multiple_of(2) {
                    wal.try_append("try", 0, data(i))
                } else {
                    wal.try_append_batch(vec![NewEntry::record("try", 0, data(i))])
                };
                let call = started.elapsed();
                let resolved = c.is_done();
                match c.wait() {
                    Ok(seq) => accepted.push((seq, i)),
                    Err(Error::Full { pending, cap, .. }) => {
                        assert_eq!(cap, CAP as u64, "{backend:?}");
                        assert!(pending > 0, "{backend:?}: refused with nothing pending");
                        // Refused at once: resolved when the call returned, not later
                        // by the commit thread; and the call did not stall (a bound of
                        // seconds: CI machines are loaded, latency is not asserted).
                        assert!(
                            resolved,
                            "{backend:?}: a refusal was not resolved when the call returned"
                        );
                        assert!(
                            call < Duration::from_secs(5),
                            "{backend:?}: a refusing call took {call:?}"
                        );
                        refused += 1;
                    }
                    Err(e) => panic!("{backend:?}: {e}"),
                }
                i += 1;
            }
            stop.store(true, Ordering::Relaxed);
        });
        // Nothing pending now: accepted.
        let last = wal
            .try_append("try", 0, Bytes::from(common::payload(u64::MAX, TRY_LEN)))
            .wait()
            .unwrap_or_else(|e| panic!("{backend:?}: with nothing pending: {e}"));
        accepted.push((last, u64::MAX));
        wal.close().unwrap();

        let (wal, entries) = open(dir.path(), capped(backend, CAP));
        let seqs: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{backend:?}: gaps");
        let tried: Vec<(u64, Bytes)> = entries
            .iter()
            .filter(|e| e.topic == "try")
            .map(|e| (e.sequence, e.data.clone()))
            .collect();
        let want: Vec<(u64, Bytes)> = accepted
            .iter()
            .map(|&(seq, i)| (seq, Bytes::from(common::payload(i, TRY_LEN))))
            .collect();
        assert_eq!(
            tried, want,
            "{backend:?}: recovered tries differ from the accepted ones"
        );
        wal.close().unwrap();
    }
}

#[test]
fn readme_example_is_the_compiled_example() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/embed.rs");
    let start = readme.find("```rust\n").expect("README has a rust block") + 8;
    let end = start + readme[start..].find("```").unwrap();
    assert!(
        example.ends_with(&readme[start..end]),
        "examples/embed.rs differs from the README example"
    );
}

#[test]
fn sync_requested_while_writes_are_in_flight_is_answered_without_further_appends() {
    for backend in BACKENDS {
        for mode in [SyncMode::OsDefault, SyncMode::Interval] {
            let dir = tempfile::tempdir().unwrap();
            // A long interval: only the sync() itself may make the data durable.
            let cfg = WalConfig {
                sync_interval_ms: 60_000,
                ..config(backend, mode)
            };
            let (wal, _) = open(dir.path(), cfg);
            for round in 0..50 {
                // The append's write is typically still in flight when sync() arrives.
                let c = wal.append("s", 0, Bytes::from(vec![round as u8; 3000]));
                let s = wal.sync();
                let seq = c.wait().unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || tx.send(s.wait()));
                let synced = rx
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| {
                        panic!("{backend} {mode}: sync() stranded in round {round}")
                    })
                    .unwrap();
                assert!(
                    synced >= seq,
                    "{backend} {mode}: sync() reported {synced} before {seq}"
                );
            }
        }
    }
}

/// An append's bytes leave `Stats::pending_bytes` before its completion resolves:
/// read right after each acknowledgement, from a lone producer and from several
/// at once, the count holds nothing of the acknowledged appends.
#[test]
fn an_acknowledged_append_is_no_longer_pending() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig {
            max_file_size: 64 << 20,
            ..config(backend, SyncMode::OsDefault)
        };
        let (wal, _) = open(dir.path(), cfg);
        let data = Bytes::from(vec![7u8; 512]);
        for i in 0..3000 {
            wal.append("p", 0, data.clone()).wait().unwrap();
            let pending = wal.stats().pending_bytes;
            assert_eq!(
                pending, 0,
                "{backend}: append {i} acknowledged, {pending} bytes still pending"
            );
        }
        // With several producers, the other two may each have one append pending
        // (an entry's bytes: its data plus under 64 of header and topic).
        let others = 2 * (data.len() as u64 + 64);
        std::thread::scope(|s| {
            for t in 0..3 {
                let (wal, data) = (wal.clone(), data.clone());
                s.spawn(move || {
                    for _ in 0..1000 {
                        wal.append("p", t, data.clone()).wait().unwrap();
                        let pending = wal.stats().pending_bytes;
                        assert!(
                            pending <= others,
                            "{backend}: {pending} bytes pending with 2 other producers"
                        );
                    }
                });
            }
        });
        assert_eq!(wal.stats().pending_bytes, 0, "{backend}");
    }
}

/// Invariant 2 of the design, observed from outside: acknowledgements arrive
/// in sequence order. One thread makes thousands of appends without waiting
/// (so that several batches are in flight at once, `max_in_flight` of them),
/// and watches their completions while they resolve, scanning from the newest
/// to the oldest: an older append still unresolved after a newer one was seen
/// resolved is an acknowledgement out of order. In every mode and write path;
/// each run must have caught batches in flight (some completions seen
/// unresolved) for the check to mean anything.
#[test]
fn acknowledgements_arrive_in_sequence_order() {
    use streamline::wal::Completion;
    for (backend, group) in WRITE_PATHS {
        for mode in [SyncMode::EveryWrite, SyncMode::Interval] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = WalConfig {
                uring_group_writes: group,
                max_batch_bytes: 4096,
                max_in_flight: 4,
                ..config(backend, mode)
            };
            let (wal, _) = open(dir.path(), cfg);
            let mut pending: Vec<Completion> = (0..4000u64)
                .map(|i| wal.append("o", 0, Bytes::from(payload(i, 200))))
                .collect();
            let mut unresolved_seen = 0u64;
            let start = Instant::now();
            loop {
                let mut seen_done: Option<usize> = None;
                let mut all_done = true;
                for i in (0..pending.len()).rev() {
                    if pending[i].is_done() {
                        seen_done.get_or_insert(i);
                    } else {
                        all_done = false;
                        unresolved_seen += 1;
                        if let Some(j) = seen_done {
                            panic!(
                                "{backend} {group:?} {mode}: append {i} unresolved after append {j} was acknowledged"
                            );
                        }
                    }
                }
                if all_done {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "{backend} {group:?} {mode}: appends unresolved after 60 s"
                );
            }
            let seqs: Vec<u64> = pending.drain(..).map(|c| c.wait().unwrap()).collect();
            assert_eq!(seqs, (1..=4000).collect::<Vec<_>>(), "{backend} {mode}");
            assert!(
                unresolved_seen > 0,
                "{backend} {group:?} {mode}: every append was resolved before it was looked at"
            );
            wal.close().unwrap();
        }
    }
}
