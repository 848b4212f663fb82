//! kill -9 crash test: a child process (`wal-crash-writer`) appends from several
//! threads and prints every acknowledged sequence; the parent SIGKILLs it at a random
//! moment, reopens the WAL and checks that every acknowledged sequence is recovered
//! with its exact payload, that sequences are contiguous, and that each writer
//! thread's entries are in order with no gap. Runs on both backends, in `every_write`
//! and `interval` mode (a process crash loses nothing the kernel accepted, so
//! `interval` acknowledgements must survive too), and in `every_write` with the
//! uring backend's group writes forced on.
//!
//! `CRASH_CYCLES` (default 20 per backend and mode) sets the cycles, `CRASH_THREADS`
//! (default 4) the child's writer threads; `CRASH_SEED` replays a kill schedule. The summary line
//! `crash: cycles C acknowledged A lost L` is what `scripts/crash-soak.sh` reports.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use streamline::wal::{BackendKind, SyncMode, Wal, WalConfig};

#[path = "../src/bin/wal-crash-writer/payload.rs"]
mod payload;
use payload::payload;

/// (run, thread, counter) from a payload's `run/thread/counter/` prefix.
fn tag(data: &[u8]) -> Option<(u64, u64, u64)> {
    let mut fields = data.splitn(4, |&b| b == b'/');
    let mut num = || -> Option<u64> { std::str::from_utf8(fields.next()?).ok()?.parse().ok() };
    Some((num()?, num()?, num()?))
}

struct Totals {
    cycles: u64,
    acked: u64,
    lost: u64,
}

fn config(backend: BackendKind, mode: SyncMode) -> WalConfig {
    WalConfig {
        backend,
        sync_mode: mode,
        max_file_size: 256 * 1024,
        retention_files: 1,
        max_batch_bytes: 64 * 1024,
        ..WalConfig::default()
    }
}

/// One kill cycle: returns the acknowledged (seq -> (run, thread, counter)).
fn run_child(
    dir: &Path,
    backend: BackendKind,
    mode: SyncMode,
    group: Option<bool>,
    run: u64,
    kill_after: Duration,
) -> HashMap<u64, (u64, u64, u64)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wal-crash-writer"))
        .args([
            dir.to_str().unwrap(),
            backend.as_str(),
            mode.as_str(),
            &threads().to_string(),
            &run.to_string(),
        ])
        .args(group.map(|g| if g { "group" } else { "ring" }))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wal-crash-writer");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait until the child has opened (recovery done), then let it run.
    let first = rx.recv_timeout(Duration::from_secs(30));
    let Ok(first) = first else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "writer did not open: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    assert!(
        first.starts_with(&format!("open {backend} ")),
        "unexpected first line {first:?}"
    );
    std::thread::sleep(kill_after);
    // Child::kill sends SIGKILL on Unix.
    child.kill().expect("SIGKILL");
    let status = child.wait().unwrap();
    assert!(!status.success(), "writer exited by itself: {status:?}");
    reader.join().unwrap();
    let mut acked = HashMap::new();
    for line in rx.try_iter() {
        let f: Vec<&str> = line.split(' ').collect();
        // A line cut by the kill has fewer fields: its append is not counted as seen.
        if f.len() != 6 || f[0] != "ack" {
            continue;
        }
        let p = |i: usize| f[i].parse::<u64>().unwrap();
        acked.insert(p(1), (p(2), p(3), p(4)));
    }
    acked
}

/// Reopens in-process and checks the invariants; returns how many acknowledged
/// entries are missing.
fn verify(
    dir: &Path,
    backend: BackendKind,
    mode: SyncMode,
    all_acked: &mut HashMap<u64, (u64, u64, u64)>,
    what: &str,
) -> u64 {
    let (wal, rec) = Wal::open(dir, config(backend, mode))
        .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
    assert_eq!(
        wal.backend(),
        backend,
        "{what}: requested backend not in use"
    );
    let checkpoint = rec.checkpoint;
    let entries = rec
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{what}: recovery stream failed: {e}"));
    let mut by_seq = HashMap::new();
    let mut last_counter: HashMap<(u64, u64), u64> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            e.sequence,
            checkpoint + 1 + i as u64,
            "{what}: sequences not contiguous after checkpoint {checkpoint}"
        );
        let t = tag(&e.data)
            .unwrap_or_else(|| panic!("{what}: seq {}: not a writer payload", e.sequence));
        assert_eq!(
            &e.data[..],
            &payload(t.0, t.1, t.2)[..],
            "{what}: seq {}: payload garbled",
            e.sequence
        );
        assert_eq!(
            e.partition as u64, t.1,
            "{what}: seq {}: partition",
            e.sequence
        );
        if let Some(prev) = last_counter.insert((t.0, t.1), t.2) {
            assert_eq!(
                t.2,
                prev + 1,
                "{what}: seq {}: writer {:?} skipped from {prev}",
                e.sequence,
                (t.0, t.1)
            );
        }
        by_seq.insert(e.sequence, t);
    }
    let mut lost = 0;
    for (&seq, t) in all_acked.iter() {
        if seq <= checkpoint {
            continue;
        }
        match by_seq.get(&seq) {
            Some(r) => assert_eq!(r, t, "{what}: acknowledged seq {seq} holds another entry"),
            None => {
                lost += 1;
                eprintln!(
                    "{what}: LOST acknowledged seq {seq} {t:?} (log ends at {})",
                    checkpoint + entries.len() as u64
                );
            }
        }
    }
    all_acked.retain(|&s, _| s > checkpoint);
    wal.close().unwrap_or_else(|e| panic!("{what}: close: {e}"));
    lost
}

/// `group`: the uring backend's group writes forced on or off (unset: by load).
fn crash_cycles(backend: BackendKind, mode: SyncMode, group: Option<bool>, cycles: u64) -> Totals {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let path = match group {
        None => String::new(),
        Some(true) => "+group-writes".into(),
        Some(false) => "+ring-writes".into(),
    };
    eprintln!("crash {backend}{path} {mode}: seed {seed} (replay with CRASH_SEED={seed})");
    let mut x = seed | 1;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let dir = tempfile::tempdir().unwrap();
    let mut all_acked = HashMap::new();
    let mut totals = Totals {
        cycles: 0,
        acked: 0,
        lost: 0,
    };
    let started = Instant::now();
    for run in 1..=cycles {
        let kill_after = Duration::from_millis(5 + rand(120));
        let acked = run_child(dir.path(), backend, mode, group, run, kill_after);
        totals.acked += acked.len() as u64;
        all_acked.extend(acked);
        let what = format!(
            "{backend}{path} {mode} cycle {run} (seed {seed}, killed after {kill_after:?})"
        );
        totals.lost += verify(dir.path(), backend, mode, &mut all_acked, &what);
        totals.cycles += 1;
    }
    eprintln!(
        "crash: {backend}{path} {mode} cycles {} acknowledged {} lost {} ({:.1}s)",
        totals.cycles,
        totals.acked,
        totals.lost,
        started.elapsed().as_secs_f64()
    );
    totals
}

/// Writer threads in the child: 4 by default; soaks may ask for as many as the
/// 64-writer benchmarks run (`CRASH_THREADS=64`).
fn threads() -> u64 {
    std::env::var("CRASH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(4)
}

fn cycles(default: u64) -> u64 {
    std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn check(t: &Totals) {
    assert!(
        t.acked > 0,
        "no append was acknowledged in {} cycles: the test proved nothing",
        t.cycles
    );
    assert_eq!(t.lost, 0, "acknowledged entries lost");
}

#[test]
fn kill9_every_write_std() {
    check(&crash_cycles(
        BackendKind::Std,
        SyncMode::EveryWrite,
        None,
        cycles(20),
    ));
}

#[test]
fn kill9_every_write_uring() {
    check(&crash_cycles(
        BackendKind::Uring,
        SyncMode::EveryWrite,
        None,
        cycles(20),
    ));
}

#[test]
fn kill9_interval_std() {
    check(&crash_cycles(
        BackendKind::Std,
        SyncMode::Interval,
        None,
        cycles(20),
    ));
}

#[test]
fn kill9_interval_uring() {
    check(&crash_cycles(
        BackendKind::Uring,
        SyncMode::Interval,
        None,
        cycles(20),
    ));
}

#[test]
fn kill9_every_write_uring_group_writes() {
    check(&crash_cycles(
        BackendKind::Uring,
        SyncMode::EveryWrite,
        Some(true),
        cycles(20),
    ));
}
