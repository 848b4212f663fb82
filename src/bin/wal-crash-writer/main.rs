//! Test helper for the kill -9 crash test (`tests/wal_crash.rs`, `scripts/crash-soak.sh`):
//! opens a WAL and appends deterministic payloads from several threads until killed,
//! printing one line per acknowledged append (stdout flushed per line).
//!
//! ```text
//! wal-crash-writer DIR BACKEND(std|uring) MODE(every_write|interval) THREADS RUN
//! stdout: "open BACKEND NEXT_SEQUENCE"
//!         "ack SEQ RUN THREAD COUNTER LEN" per acknowledged append
//!         "checkpoint SEQ" before each checkpoint (of an acknowledged SEQ)
//! ```
//!
//! Payload of (run, thread, counter): see [`payload()`]; the crash test recomputes it.

use std::io::Write;

use bytes::Bytes;
use streamline::wal::{BackendKind, SyncMode, Wal, WalConfig};

mod payload;
use payload::payload;

/// Whichever thread's append gets a multiple of this checkpoints it: a few
/// checkpoints per kill cycle, however the sequences fall on the threads.
const CHECKPOINT_EVERY: u64 = 64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 && args.len() != 7 {
        eprintln!(
            "usage: wal-crash-writer DIR std|uring every_write|interval THREADS RUN [ring|group]"
        );
        std::process::exit(2);
    }
    // uring only: force each durable write through the ring, or group writes.
    let uring_group_writes = match args.get(6).map(String::as_str) {
        None => None,
        Some("ring") => Some(false),
        Some("group") => Some(true),
        Some(other) => panic!("write path {other:?}: ring or group"),
    };
    let backend: BackendKind = args[2].parse().unwrap_or_else(|e| panic!("{e}"));
    let mode: SyncMode = args[3].parse().unwrap_or_else(|e| panic!("{e}"));
    let threads: u64 = args[4].parse().expect("THREADS");
    let run: u64 = args[5].parse().expect("RUN");
    let cfg = WalConfig {
        backend,
        sync_mode: mode,
        sync_interval_ms: 5,
        max_file_size: 256 * 1024,
        retention_files: 1,
        max_batch_bytes: 64 * 1024,
        uring_group_writes,
        ..WalConfig::default()
    };
    let (wal, rec) = Wal::open(&args[1], cfg).unwrap_or_else(|e| panic!("open: {e}"));
    assert_eq!(wal.backend(), backend, "requested backend not in use");
    let next = rec.next_sequence;
    drop(rec);
    println!("open {} {next}", wal.backend());
    std::io::stdout().flush().expect("stdout");
    std::thread::scope(|s| {
        for t in 0..threads {
            let wal = wal.clone();
            s.spawn(move || {
                let out = std::io::stdout();
                for counter in 0.. {
                    let data = payload(run, t, counter);
                    let len = data.len();
                    let seq = wal
                        .append("crash", t as i32, Bytes::from(data))
                        .wait()
                        .unwrap_or_else(|e| panic!("append: {e}"));
                    // One write per line: the parent may kill us between any two.
                    let line = format!("ack {seq} {run} {t} {counter} {len}\n");
                    let mut lock = out.lock();
                    lock.write_all(line.as_bytes()).expect("stdout");
                    lock.flush().expect("stdout");
                    drop(lock);
                    if seq % CHECKPOINT_EVERY == 0 {
                        // Checkpoint and retention also run under the kill. The
                        // checkpoint is this thread's own acknowledged sequence, whose
                        // line is out already, and is announced before it is taken:
                        // the parent bounds the recovered checkpoint by both.
                        let line = format!("checkpoint {seq}\n");
                        let mut lock = out.lock();
                        lock.write_all(line.as_bytes()).expect("stdout");
                        lock.flush().expect("stdout");
                        drop(lock);
                        wal.checkpoint(seq)
                            .unwrap_or_else(|e| panic!("checkpoint: {e}"));
                    }
                }
            });
        }
    });
}
