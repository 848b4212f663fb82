//! Test helper for the kill -9 crash test (`tests/wal_crash.rs`, `scripts/crash-soak.sh`):
//! opens a WAL and appends deterministic payloads from several threads until killed,
//! printing one line per acknowledged append (stdout flushed per line).
//!
//! ```text
//! wal-crash-writer DIR BACKEND(std|uring) MODE(every_write|interval) THREADS RUN [ring|group] [large] [nocheckpoint]
//! stdout: "open BACKEND NEXT_SEQUENCE"
//!         "torn OFFSET" after it when the open cut a torn tail at OFFSET of
//!                     the newest file
//!         "ack SEQ RUN THREAD COUNTER LEN" per acknowledged append
//!         "checkpoint SEQ" before each checkpoint (of an acknowledged SEQ)
//!         "unwritten N" when `WalStats::unwritten_batches` grew to N
//!         "durable N" when `Wal::durable_sequence` grew to N (printed after the
//!                     WAL reported it: everything through N must survive a power cut)
//! ```
//!
//! Payload of (run, thread, counter): see [`payload()`]; the crash test recomputes it.
//! `ring` / `group` force the uring backend's durable writes through the ring or
//! into groups; `large` writes entries of 64-224 KiB into 2 MiB files;
//! `nocheckpoint` takes no checkpoint, so that every acknowledged entry stays
//! in the log for the parent to read back.

use std::{
    io::Write,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use streamline::wal::{BackendKind, SyncMode, Wal, WalConfig};

mod payload;
use payload::{file_and_batch_size, payload};

/// Whichever thread's append gets a multiple of this checkpoints it: a few
/// checkpoints per kill cycle, however the sequences fall on the threads.
const CHECKPOINT_EVERY: u64 = 64;
/// The same for large entries: about 9 files (~18 MiB) apart. Retention then
/// keeps the disk use bounded, while most new files are prepared, and so
/// reserved, rather than recycled (a checkpoint recycles at most 2 files).
const LARGE_CHECKPOINT_EVERY: u64 = 128;

fn usage() -> ! {
    eprintln!(
        "usage: wal-crash-writer DIR std|uring every_write|interval THREADS RUN [ring|group] [large] [nocheckpoint]"
    );
    std::process::exit(2);
}

fn main() {
    // Any error (an append, a checkpoint, stdout) panics its thread; the others
    // would go on acknowledging, and the parent, which kills the process on its
    // own schedule, would not see it. The process ends at once instead, by
    // SIGABRT, which the parent reports with this stderr.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        usage();
    }
    // uring only: force each durable write through the ring, or group writes.
    let mut uring_group_writes = None;
    let mut large = false;
    let mut checkpoints = true;
    for flag in &args[6..] {
        match flag.as_str() {
            "ring" => uring_group_writes = Some(false),
            "group" => uring_group_writes = Some(true),
            "large" => large = true,
            "nocheckpoint" => checkpoints = false,
            _ => usage(),
        }
    }
    let backend: BackendKind = args[2].parse().unwrap_or_else(|e| panic!("{e}"));
    let mode: SyncMode = args[3].parse().unwrap_or_else(|e| panic!("{e}"));
    let threads: u64 = args[4].parse().expect("THREADS");
    let run: u64 = args[5].parse().expect("RUN");
    let (max_file_size, max_batch_bytes) = file_and_batch_size(large);
    let checkpoint_every = if large {
        LARGE_CHECKPOINT_EVERY
    } else {
        CHECKPOINT_EVERY
    };
    let cfg = WalConfig {
        backend,
        sync_mode: mode,
        sync_interval_ms: 5,
        max_file_size,
        retention_files: 1,
        max_batch_bytes,
        uring_group_writes,
        ..WalConfig::default()
    };
    let (wal, rec) = Wal::open(&args[1], cfg).unwrap_or_else(|e| panic!("open: {e}"));
    assert_eq!(wal.backend(), backend, "requested backend not in use");
    let next = rec.next_sequence;
    let torn = rec.truncated.as_ref().map(|(_, offset)| *offset);
    drop(rec);
    println!("open {} {next}", wal.backend());
    if let Some(offset) = torn {
        println!("torn {offset}");
    }
    std::io::stdout().flush().expect("stdout");
    // The highest `unwritten_batches` printed: how many batches went where the
    // file had never been written (reserved space), which the test requires of
    // its `large` runs.
    let unwritten_printed = AtomicU64::new(0);
    // The highest durable sequence printed. The writers look after each
    // acknowledgement, and a watcher every millisecond, so that a sync completing
    // while every writer waits is reported too.
    let durable_printed = AtomicU64::new(0);
    std::thread::scope(|s| {
        {
            let wal = wal.clone();
            let durable_printed = &durable_printed;
            s.spawn(move || loop {
                print_durable(&wal, durable_printed);
                std::thread::sleep(std::time::Duration::from_millis(1));
            });
        }
        for t in 0..threads {
            let wal = wal.clone();
            let unwritten_printed = &unwritten_printed;
            let durable_printed = &durable_printed;
            s.spawn(move || {
                let out = std::io::stdout();
                for counter in 0.. {
                    let data = payload(run, t, counter, large);
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
                    print_durable(&wal, durable_printed);
                    let unwritten = wal.stats().unwritten_batches;
                    if unwritten_printed.fetch_max(unwritten, Ordering::Relaxed) < unwritten {
                        let line = format!("unwritten {unwritten}\n");
                        let mut lock = out.lock();
                        lock.write_all(line.as_bytes()).expect("stdout");
                        lock.flush().expect("stdout");
                    }
                    if checkpoints && seq % checkpoint_every == 0 {
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

/// Prints `durable N` when the WAL's durable sequence has grown beyond the
/// highest one printed. The value is read from the WAL before the line goes
/// out, so every printed value is one the WAL reported as on the disk.
fn print_durable(wal: &Wal, printed: &AtomicU64) {
    let durable = wal.durable_sequence();
    if printed.fetch_max(durable, Ordering::Relaxed) < durable {
        let mut lock = std::io::stdout().lock();
        lock.write_all(format!("durable {durable}\n").as_bytes())
            .expect("stdout");
        lock.flush().expect("stdout");
    }
}
