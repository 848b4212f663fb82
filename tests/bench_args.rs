//! `streamline-bench` option parsing and validation: defaults, job merging, and
//! impossible combinations rejected before any file is created.

use std::time::Duration;

use clap::Parser;
use streamline::bench::{job::Stop, Cli, EngineKind, JobArgs, RecordSize};
use streamline::wal::{BackendKind, SyncMode, WalConfig};

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("streamline-bench").chain(args.iter().copied()))
        .expect("parses")
}

#[test]
fn defaults_are_one_closed_loop_streamline_writer() {
    let jobs = cli(&[]).resolve_jobs().unwrap();
    assert_eq!(jobs.len(), 1);
    let j = &jobs[0];
    assert_eq!(j.engine, EngineKind::Streamline);
    assert_eq!((j.writers, j.queue_depth), (1, 1));
    assert_eq!(j.record_size, RecordSize::Fixed(1024));
    assert_eq!(j.stop, Stop::Duration(Duration::from_secs(5)));
    assert_eq!(j.wal.sync_mode, SyncMode::EveryWrite);
    assert_eq!(j.wal.backend, BackendKind::Auto);
}

#[test]
fn every_job_option_is_parsed() {
    let c = cli(&[
        "--dir",
        "/tmp/x",
        "--writers",
        "16",
        "--record-size",
        "128..4k",
        "--records",
        "1000",
        "--warmup",
        "0.5",
        "--queue-depth",
        "8",
        "--sync-mode",
        "interval",
        "--sync-ms",
        "20",
        "--backend",
        "std",
        "--max-file-size",
        "8M",
        "--max-batch-bytes",
        "256KiB",
        "--max-pending-bytes",
        "4m",
        "--max-in-flight",
        "2",
        "--direct-io",
        "false",
        "--idle-spin-us",
        "0",
        "--ack-spin-us",
        "25",
        "--checkpoint-ms",
        "40",
        "--async-workers",
        "3",
        "--output-format",
        "json",
        "--quiet",
        "--cleanup",
    ]);
    let j = &c.resolve_jobs().unwrap()[0];
    assert_eq!(j.dir, std::path::PathBuf::from("/tmp/x"));
    assert_eq!((j.writers, j.queue_depth), (16, 8));
    assert_eq!(
        j.record_size,
        RecordSize::Range {
            min: 128,
            max: 4096
        }
    );
    assert_eq!(j.stop, Stop::Records(1000));
    assert_eq!(j.warmup, Duration::from_millis(500));
    assert_eq!(j.wal.sync_mode, SyncMode::Interval);
    assert_eq!(j.wal.sync_interval_ms, 20);
    assert_eq!(j.wal.backend, BackendKind::Std);
    assert_eq!(j.wal.max_file_size, 8 << 20);
    assert_eq!(j.wal.max_batch_bytes, 256 << 10);
    assert_eq!(j.wal.max_pending_bytes, 4 << 20);
    assert_eq!(j.wal.max_in_flight, 2);
    assert_eq!(j.wal.direct_io, Some(false));
    assert_eq!(j.wal.idle_spin_us, 0);
    assert_eq!(j.wal.ack_spin_us, 25);
    assert_eq!(j.checkpoint_every, Some(Duration::from_millis(40)));
    assert_eq!(j.async_workers, Some(3));
    // With checkpoints the WAL's own retention applies.
    assert_eq!(j.wal.retention_files, WalConfig::default().retention_files);
    assert!(c.quiet && c.cleanup);
}

#[test]
fn jobs_override_the_command_line_and_inherit_the_rest() {
    let c = cli(&[
        "--writers",
        "4",
        "--duration",
        "2",
        "--job",
        "engine=naive",
        "--job",
        "writers=64,record-size=128",
    ]);
    let jobs = c.resolve_jobs().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!((jobs[0].engine, jobs[0].writers), (EngineKind::Naive, 4));
    assert_eq!(
        (jobs[1].engine, jobs[1].writers),
        (EngineKind::Streamline, 64)
    );
    assert_eq!(jobs[1].record_size, RecordSize::Fixed(128));
    assert!(jobs
        .iter()
        .all(|j| j.stop == Stop::Duration(Duration::from_secs(2))));
}

#[test]
fn job_strings_accept_both_spellings() {
    let a = JobArgs::parse_job("engine=nowal writers=2 sync_mode=every_write reopen drop-caches")
        .unwrap();
    let b = JobArgs::parse_job(
        "--engine nowal --writers 2 --reopen --sync-mode every_write --drop-caches",
    )
    .unwrap();
    assert_eq!(a, b);
    assert!(a.reopen && a.drop_caches);
    assert_eq!(a.engine, Some(EngineKind::Nowal));
}

#[test]
fn job_file_has_one_job_per_line_and_comments() {
    let jobs = JobArgs::parse_job_file("# scaling\nwriters=1\n\nwriters=4 # four\n").unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.writers).collect::<Vec<_>>(),
        vec![Some(1), Some(4)]
    );
    let e = JobArgs::parse_job_file("writers=1\nwriters=x\n").unwrap_err();
    assert!(e.starts_with("line 2:"), "{e}");
}

#[test]
fn record_sizes_and_byte_units() {
    assert_eq!("4096".parse::<RecordSize>(), Ok(RecordSize::Fixed(4096)));
    assert_eq!("1KiB".parse::<RecordSize>(), Ok(RecordSize::Fixed(1024)));
    assert_eq!("64..64".parse::<RecordSize>(), Ok(RecordSize::Fixed(64)));
    assert_eq!(
        "128..=1k".parse::<RecordSize>(),
        Ok(RecordSize::Range {
            min: 128,
            max: 1024
        })
    );
    assert!("4k..1k".parse::<RecordSize>().is_err());
    assert!("12 parsecs".parse::<RecordSize>().is_err());
    assert_eq!(streamline::bench::job::parse_bytes("1G"), Ok(1 << 30));
}

fn rejected(args: &[&str], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("never-created");
    let mut full = vec!["--dir", target.to_str().unwrap()];
    full.extend_from_slice(args);
    let c = Cli::try_parse_from(std::iter::once("streamline-bench").chain(full.iter().copied()));
    let msg = match c {
        Err(e) => e.to_string(),
        Ok(c) => {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let e =
                streamline::bench::run_cli(&c, &mut out, &mut err).expect_err("must be rejected");
            assert!(out.is_empty(), "nothing reported for a rejected run");
            e
        }
    };
    assert!(msg.contains(needle), "`{msg}` should mention `{needle}`");
    assert!(
        !target.exists(),
        "a rejected run created {}",
        target.display()
    );
}

#[test]
fn impossible_combinations_are_rejected_before_any_file_exists() {
    rejected(&["--writers", "0"], "--writers");
    rejected(&["--queue-depth", "0"], "--queue-depth");
    rejected(&["--engine", "teapot"], "teapot");
    rejected(&["--record-size", "0"], "--record-size");
    rejected(
        &["--record-size", "2M", "--max-file-size", "1M"],
        "does not fit",
    );
    // A file larger than 4 GiB does not make room for an entry of 4 GiB: a
    // batch stays below 4 GiB, and the WAL refuses such an entry at its first
    // append.
    rejected(
        &["--record-size", "4g", "--max-file-size", "5g"],
        "does not fit",
    );
    rejected(
        &["--duration", "1", "--records", "5"],
        "either --duration or --records",
    );
    rejected(
        &["--engine", "naive", "--queue-depth", "4"],
        "--queue-depth 4 needs --engine streamline",
    );
    rejected(
        &["--engine", "naive", "--sync-mode", "interval"],
        "needs --engine streamline",
    );
    rejected(
        &["--engine", "nowal", "--backend", "uring"],
        "needs --engine streamline",
    );
    rejected(&["--sync-mode", "interval", "--sync-ms", "0"], "--sync-ms");
    rejected(&["--max-file-size", "1000"], "--max-file-size");
    rejected(&["--max-file-size", "1025g"], "at most 1 TiB");
    // The WAL's own limits, named by this harness's options and with their
    // bounds.
    let wal_limits: [(&[&str], &str); 6] = [
        (
            &["--max-batch-bytes", "10"],
            "--max-batch-bytes 10: must be between 4096 and 64 MiB",
        ),
        (
            &["--max-batch-bytes", "1M", "--max-pending-bytes", "64k"],
            "--max-pending-bytes 65536: must be at least --max-batch-bytes",
        ),
        (
            &["--max-in-flight", "0"],
            "--max-in-flight 0: must be between 1 and 64",
        ),
        (
            &["--max-in-flight", "65"],
            "--max-in-flight 65: must be between 1 and 64",
        ),
        (
            &["--idle-spin-us", "10001"],
            "--idle-spin-us 10001: must be at most 10000",
        ),
        (
            &["--ack-spin-us", "100001"],
            "--ack-spin-us 100001: must be at most 100000",
        ),
    ];
    for (args, needle) in wal_limits {
        rejected(args, needle);
    }
    rejected(&["--job", "writers=2", "--job", "writers=0"], "job 2");
    rejected(&["--drop-caches"], "--reopen");
    rejected(
        &["--engine", "naive", "--max-in-flight", "2"],
        "--max-in-flight needs --engine streamline",
    );
    rejected(
        &["--engine", "naive", "--direct-io", "true"],
        "--direct-io needs --engine streamline",
    );
    rejected(
        &["--engine", "naive", "--reopen"],
        "--reopen needs --engine streamline",
    );
    rejected(
        &["--engine", "naive", "--checkpoint-ms", "10"],
        "--checkpoint-ms needs --engine streamline or raft-engine",
    );
    rejected(
        &["--engine", "okaywal", "--checkpoint-ms", "10"],
        "okaywal checkpoints and recycles its files on its own",
    );
    rejected(
        &["--checkpoint-ms", "0"],
        "--checkpoint-ms must be at least 1",
    );
    rejected(&["--async-workers", "0"], "--async-workers 0: give 1 to 64");
    rejected(
        &["--async-workers", "65"],
        "--async-workers 65: give 1 to 64",
    );
    rejected(
        &["--engine", "naive", "--async-workers", "2"],
        "--async-workers needs --engine streamline",
    );
    // Numbers that would overflow a `Duration`, or an allocation sized by them:
    // refused naming the option and its range, on the command line and in a job.
    let out_of_range: [(&[&str], &str); 12] = [
        (&["--duration", "1e20"], "--duration"),
        (&["--duration", "1e20"], "0 to 31536000 seconds"),
        (&["--duration", "inf"], "--duration"),
        (&["--warmup", "1e20"], "--warmup"),
        (&["--warmup", "31536001"], "0 to 31536000 seconds"),
        (&["--job", "duration=1e20"], "--duration"),
        (&["--queue-depth", "18446744073709551615"], "--queue-depth"),
        (&["--queue-depth", "65537"], "give 1 to 65536"),
        (&["--job", "queue-depth=65537"], "--queue-depth"),
        (
            &["--writers", "32", "--queue-depth", "65536"],
            "--writers 32 times --queue-depth 65536 is more than the 1048576",
        ),
        (&["--record-size", "18446744073709551615"], "--record-size"),
        (&["--record-size", "1..5g"], "give 1 to 4g bytes"),
    ];
    for (args, needle) in out_of_range {
        rejected(args, needle);
    }
}

/// The largest durations and queue depth accepted resolve; a job built in
/// code, past the parser, is range-checked too (an error, not a panic).
#[test]
fn largest_accepted_numbers_resolve_and_jobs_built_in_code_are_checked() {
    let c = cli(&["--duration", "31536000", "--warmup", "31536000"]);
    let j = &c.resolve_jobs().unwrap()[0];
    assert_eq!(j.stop, Stop::Duration(Duration::from_secs(31_536_000)));
    assert_eq!(j.warmup, Duration::from_secs(31_536_000));
    let c = cli(&["--writers", "16", "--queue-depth", "65536"]);
    assert_eq!(c.resolve_jobs().unwrap()[0].queue_depth, 65_536);
    // Built in code, past the parser: still refused, not a panic.
    let j = JobArgs {
        duration: Some(1e20),
        ..JobArgs::default()
    };
    assert!(j.resolve().unwrap_err().contains("--duration"));
    let j = JobArgs {
        record_size: Some(RecordSize::Fixed(usize::MAX)),
        ..JobArgs::default()
    };
    assert!(j.resolve().unwrap_err().contains("--record-size"));
}

#[cfg(not(feature = "compare"))]
#[test]
fn anchors_need_the_compare_feature() {
    rejected(&["--engine", "okaywal"], "--features compare");
    rejected(&["--engine", "raft-engine"], "--features compare");
}

#[test]
fn a_file_in_place_of_the_directory_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let c = cli(&["--dir", file.to_str().unwrap()]);
    let e = c.resolve_jobs().unwrap_err();
    assert!(e.contains("not a directory"), "{e}");
}
