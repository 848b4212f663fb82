//! What each sync mode promises about durability, observed through the WAL's own
//! durable-sequence counter, plus backpressure and the README example.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{config, open, BACKENDS};
use streamline::wal::{SyncMode, WalConfig};

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn every_write_acknowledges_only_synced_entries() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), config(backend, SyncMode::EveryWrite));
        for _ in 0..50 {
            let seq = wal
                .append("s", 0, Bytes::from_static(b"durable"))
                .wait()
                .unwrap();
            assert!(
                wal.durable_sequence() >= seq,
                "{backend}: acked {seq} before it was synced"
            );
        }
        let s = wal.stats();
        assert!(s.fsyncs >= s.batches, "{backend}: {s:?}");
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
        let mut last = 0;
        for _ in 0..20 {
            last = wal
                .append("s", 0, Bytes::from_static(b"soon durable"))
                .wait()
                .unwrap();
        }
        // The commit thread must wake up on its own to sync the idle, dirty WAL.
        wait_until("interval fsync", Duration::from_secs(5), || {
            wal.durable_sequence() >= last
        });
        assert!(wal.stats().fsyncs >= 1);
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

#[test]
fn pending_bytes_never_exceed_the_cap() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cap = 128 * 1024;
        let cfg = WalConfig {
            max_pending_bytes: cap,
            max_batch_bytes: 16 * 1024,
            max_file_size: 4 << 20,
            ..config(backend, SyncMode::EveryWrite)
        };
        let (wal, _) = open(dir.path(), cfg);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (wal, stop) = (wal.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut max = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    max = max.max(wal.stats().pending_bytes);
                    std::hint::spin_loop();
                }
                max
            })
        };
        // Producers that never wait for their completions would grow without bound
        // if append did not block at the cap.
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
        let n: usize = producers.into_iter().map(|p| p.join().unwrap()).sum();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let max = sampler.join().unwrap();
        assert_eq!(n, 1600);
        assert!(max > 0, "{backend}: sampler saw nothing pending");
        assert!(
            max <= cap as u64,
            "{backend}: {max} pending bytes exceed the cap of {cap}"
        );
        assert_eq!(wal.stats().pending_bytes, 0);
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
