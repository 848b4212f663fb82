//! A short real run of `streamline-bench`: the JSON report is well-formed and its
//! counts add up; the table, `.hgrm` and SVG outputs are written.

use clap::Parser;
use serde_json::Value;
use streamline::bench::{report, run_cli, Cli};

fn run(args: &[&str]) -> (String, String) {
    let c = Cli::try_parse_from(std::iter::once("streamline-bench").chain(args.iter().copied()))
        .expect("parses");
    let mut out = Vec::new();
    let mut err = Vec::new();
    run_cli(&c, &mut out, &mut err).expect("run succeeds");
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

const FIELDS: [&str; 14] = [
    "engine",
    "backend",
    "sync_mode",
    "writers",
    "queue_depth",
    "record_size",
    "duration_s",
    "records",
    "records_per_sec",
    "mb_per_sec",
    "fsyncs",
    "records_per_batch_mean",
    "latency_us",
    "peak_rss_bytes",
];

fn check_counts(j: &Value) {
    for f in FIELDS {
        assert!(j.get(f).is_some(), "field {f} missing in {j}");
    }
    let records = j["records"].as_u64().unwrap();
    assert!(records > 0, "nothing acknowledged: {j}");
    let per_writer: Vec<u64> = j["writer_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(per_writer.len() as u64, j["writers"].as_u64().unwrap());
    assert_eq!(
        per_writer.iter().sum::<u64>(),
        records,
        "acked = sum over writers"
    );
    assert_eq!(
        j["latency_us"]["count"].as_u64().unwrap(),
        records,
        "histogram count = acked"
    );
    let l = &j["latency_us"];
    let order =
        ["min", "p50", "p90", "p99", "p999", "p9999", "max"].map(|k| l[k].as_f64().unwrap());
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "percentiles ascend: {l}"
    );
    assert!(order[0] > 0.0);
    let size = j["record_size"].as_u64().unwrap();
    assert_eq!(j["bytes"].as_u64().unwrap(), records * size);
    let rate = records as f64 / j["duration_s"].as_f64().unwrap();
    let reported = j["records_per_sec"].as_f64().unwrap();
    assert!(
        (reported - rate).abs() <= rate * 0.01 + 1.0,
        "records_per_sec {reported} vs {rate}"
    );
}

#[test]
fn tiny_run_reports_consistent_json() {
    // On the checkout's filesystem, which takes O_DIRECT.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path().to_str().unwrap();
    let hist = dir.path().join("lat.hgrm");
    let svg = dir.path().join("lat.svg");
    let (out, err) = run(&[
        "--dir",
        d,
        "--output-format",
        "json",
        "--duration",
        "0.6",
        "--record-size",
        "256",
        "--max-file-size",
        "1M",
        "--hist-file",
        hist.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
        "--job",
        "writers=3,sync-mode=every_write,backend=std",
        "--job",
        "writers=2,queue-depth=4,sync-mode=interval,sync-ms=5",
        "--job",
        "engine=naive,writers=2",
        "--job",
        "engine=nowal,writers=2,records=500",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "one JSON object per job per line:\n{out}");
    let jobs: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("well-formed JSON"))
        .collect();
    for j in &jobs {
        check_counts(j);
    }
    assert_eq!(jobs[0]["backend"], "std");
    assert_eq!(
        jobs[0]["direct_io"], true,
        "every_write writes with O_DIRECT"
    );
    assert_eq!(
        jobs[1]["direct_io"], false,
        "interval writes through the page cache"
    );
    assert_eq!(jobs[2]["direct_io"], Value::Null);
    // The interval job's period, and the WAL file size of the WAL engines
    // only: the others take neither.
    assert_eq!(jobs[1]["sync_ms"], 5);
    assert_eq!(jobs[0]["sync_ms"], Value::Null);
    assert_eq!(jobs[0]["max_file_size"], 1 << 20);
    assert_eq!(jobs[2]["max_file_size"], Value::Null);
    assert_eq!(jobs[0]["sync_mode"], "every_write");
    // every_write: each acknowledged record was covered by an fdatasync.
    assert!(jobs[0]["fsyncs"].as_u64().unwrap() > 0);
    assert_eq!(jobs[1]["queue_depth"], 4);
    assert_eq!(jobs[1]["sync_mode"], "interval");
    // Early batches are an every_write rule: a count for the WAL, 0 in interval
    // mode, and no count at all for an engine without them.
    assert!(jobs[0]["early_batches"].is_u64(), "{}", jobs[0]);
    assert_eq!(jobs[1]["early_batches"], 0);
    assert_eq!(jobs[2]["early_batches"], Value::Null);
    // std writes every every_write batch in a group at the commit thread's wait.
    assert_eq!(
        jobs[0]["grouped_batches"], jobs[0]["batches"],
        "{}",
        jobs[0]
    );
    assert_eq!(jobs[1]["grouped_batches"], 0);
    assert_eq!(jobs[2]["grouped_batches"], Value::Null);
    assert_eq!(
        jobs[2]["fsyncs"].as_u64().unwrap(),
        jobs[2]["records"].as_u64().unwrap(),
        "naive syncs each append"
    );
    assert_eq!(jobs[3]["records"], 500);
    assert_eq!(jobs[3]["sync_mode"], "none");
    // Each line a progress line: a warning or an error printed beside one
    // would otherwise pass.
    assert!(
        err.lines()
            .all(|l| l.starts_with("[job ") && l.ends_with("us (so far)")),
        "progress lines only: {err}"
    );

    for i in 1..=4 {
        let text = std::fs::read_to_string(dir.path().join(format!("lat-{i}.hgrm"))).unwrap();
        let count = jobs[i - 1]["records"].as_u64().unwrap();
        assert!(
            text.contains(&format!("Total count    = {count:>12}")),
            "hgrm {i} total:\n{text}"
        );
        // HdrHistogram's footer: sub-buckets per bucket at 3 significant
        // digits, not the number of distinct values.
        assert!(
            text.contains(&format!("SubBuckets     = {:>12}", 2048)),
            "hgrm {i} footer:\n{text}"
        );
    }
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 4);
    // Files stay for inspection without --cleanup.
    assert!(dir
        .path()
        .join("job1-streamline")
        .join("current.wal")
        .exists());
    assert!(dir.path().join("job3-naive").join("naive.log").exists());
}

/// An output file in a directory that does not exist is refused before any
/// job runs (it stopped the run after the first job, the others not run).
#[test]
fn an_output_file_in_a_missing_directory_is_refused_before_any_job() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for flag in ["--hist-file", "--plot"] {
        let missing = dir.path().join("missing").join("out");
        let c = Cli::try_parse_from([
            "streamline-bench",
            "--dir",
            data.to_str().unwrap(),
            "--records",
            "10",
            "--quiet",
            flag,
            missing.to_str().unwrap(),
        ])
        .expect("parses");
        let e = run_cli(&c, &mut Vec::new(), &mut Vec::new()).expect_err("refused");
        assert!(e.contains(flag) && e.contains("does not exist"), "{e}");
        assert!(!data.exists(), "{flag}: a job ran");
    }
}

/// An output file naming an existing directory is refused before any job
/// runs, and the files the check tried are not left behind: it was found
/// when the first job's histogram was written, the later jobs not run.
#[test]
fn an_output_file_that_cannot_be_written_is_refused_before_any_job() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    let fine = dir.path().join("lat.hgrm");
    for (flag, other) in [("--hist-file", "--plot"), ("--plot", "--hist-file")] {
        let c = Cli::try_parse_from([
            "streamline-bench",
            "--dir",
            data.to_str().unwrap(),
            "--records",
            "10",
            "--quiet",
            flag,
            taken.to_str().unwrap(),
            other,
            fine.to_str().unwrap(),
        ])
        .expect("parses");
        let e = run_cli(&c, &mut Vec::new(), &mut Vec::new()).expect_err("refused");
        assert!(
            e.contains(flag) && e.contains(taken.to_str().unwrap()),
            "{e}"
        );
        assert!(!data.exists(), "{flag}: a job ran");
        assert!(!fine.exists(), "{other}: the check left its file");
    }
}

#[test]
fn table_output_and_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (out, _) = run(&[
        "--dir",
        data.to_str().unwrap(),
        "--records",
        "200",
        "--writers",
        "2",
        "--record-size",
        "100..300",
        "--max-file-size",
        "1M",
        "--quiet",
        "--cleanup",
        "--reopen",
    ]);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(header.split_whitespace().eq([
        "job",
        "engine",
        "backend",
        "sync",
        "wr",
        "qd",
        "size",
        "rec/s",
        "MB/s",
        "fsync/s",
        "rec/batch",
        "p50us",
        "p90us",
        "p99us",
        "p99.9us",
        "p99.99us",
        "maxus",
        "cpu-us/rec",
        "rss-MiB"
    ]));
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[1], "streamline");
    assert_eq!(row[6], "100..300");
    assert!(out.contains("reopen:"), "{out}");
    let reopen_row: Vec<&str> = out.lines().last().unwrap().split_whitespace().collect();
    assert_eq!(
        reopen_row[2], "200",
        "every record read back after reopen: {out}"
    );
    assert!(
        !data.join("job1-streamline").exists(),
        "--cleanup removes the job's files"
    );
}

#[test]
fn table_columns_line_up() {
    let mut h = streamline::bench::run::new_histogram();
    h.record(150_000).unwrap();
    let r = report::JobReport {
        job: 1,
        engine: "naive".into(),
        backend: "pwrite+fdatasync".into(),
        sync_mode: "every_write".into(),
        direct_io: None,
        sync_ms: None,
        max_file_size: None,
        writers: 64,
        queue_depth: 1,
        checkpoint_ms: None,
        async_workers: None,
        record_size: Value::from(1024),
        duration_s: 2.0,
        records: 20,
        writer_records: vec![20],
        bytes: 20 * 1024,
        records_per_sec: 10.0,
        mb_per_sec: 0.01,
        fsyncs: None,
        fsyncs_per_sec: None,
        batches: None,
        records_per_batch_mean: None,
        records_per_batch_max: None,
        grouped_batches: None,
        early_batches: None,
        bytes_written: None,
        latency_us: report::LatencyUs::from_hist(&h),
        cpu_us_per_record: Some(12.345),
        wal_thread_cpu_us_per_record: None,
        cpu_cores_busy: None,
        peak_rss_bytes: Some(3 << 20),
        recovery: None,
    };
    let t = report::table(&[
        r.clone(),
        report::JobReport {
            job: 2,
            writers: 1,
            ..r
        },
    ]);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines.iter().all(|l| l.len() == lines[0].len()),
        "aligned:\n{t}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[9..12],
        &["-", "-", "150.0"],
        "unknown counters print as '-': {t}"
    );
    assert_eq!(row[17], "12.35");
    assert_eq!(row[18], "3.0");
}

/// A reopen after a successful cache drop whose open still read less than half
/// the WAL from the device is reported warm, with a note; one that read it is
/// cold.
#[test]
fn a_dropped_cache_that_did_not_make_the_scan_read_the_device_is_reported_warm() {
    let mut h = streamline::bench::run::new_histogram();
    h.record(150_000).unwrap();
    let recovery = |device_read_bytes: u64, cold_cache: bool| report::RecoveryReport {
        open_ms: 100.0,
        replay_ms: 50.0,
        entries: 1000,
        wal_bytes: 1_000_000_000,
        scan_mb_per_sec: 10_000.0,
        recovery_mb_per_sec: 6_666.67,
        cold_cache,
        caches_dropped: true,
        device_read_bytes: Some(device_read_bytes),
        rss_before_bytes: None,
        peak_rss_bytes: None,
    };
    let r = report::JobReport {
        job: 1,
        engine: "streamline".into(),
        backend: "uring".into(),
        sync_mode: "os_default".into(),
        direct_io: Some(true),
        sync_ms: None,
        max_file_size: Some(100 << 20),
        writers: 4,
        queue_depth: 16,
        checkpoint_ms: None,
        async_workers: None,
        record_size: Value::from(65536),
        duration_s: 1.0,
        records: 1000,
        writer_records: vec![250; 4],
        bytes: 1000 * 65536,
        records_per_sec: 1000.0,
        mb_per_sec: 65.5,
        fsyncs: None,
        fsyncs_per_sec: None,
        batches: None,
        records_per_batch_mean: None,
        records_per_batch_max: None,
        grouped_batches: None,
        early_batches: None,
        bytes_written: None,
        latency_us: report::LatencyUs::from_hist(&h),
        cpu_us_per_record: None,
        wal_thread_cpu_us_per_record: None,
        cpu_cores_busy: None,
        peak_rss_bytes: None,
        recovery: Some(recovery(40_000_000, false)),
    };
    let t = report::table(&[
        r.clone(),
        report::JobReport {
            job: 2,
            recovery: Some(recovery(1_000_000_000, true)),
            ..r
        },
    ]);
    let row = |job: &str| -> Vec<&str> {
        t.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|c| c.len() == 11 && c[0] == job)
            .unwrap_or_else(|| panic!("no reopen row of job {job}:\n{t}"))
    };
    assert_eq!(&row("1")[7..9], &["warm", "40"], "{t}");
    assert_eq!(&row("2")[7..9], &["cold", "1000"], "{t}");
    assert!(
        t.contains(
            "note: job 1: the page cache was dropped, yet the open read 40 MB of the WAL's \
             1000 MB from the device (less than half): reported as warm"
        ) && !t.contains("note: job 2"),
        "{t}"
    );
}

#[test]
fn checkpointing_jobs_retire_files_as_they_go() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // ~3 MiB through 64 KiB files: about 50 rotations.
    let (out, _) = run(&[
        "--dir",
        d,
        "--output-format",
        "json",
        "--quiet",
        "--records",
        "3000",
        "--writers",
        "2",
        "--record-size",
        "1024",
        "--max-file-size",
        "64K",
        "--sync-mode",
        "os_default",
        "--backend",
        "std",
        "--checkpoint-ms",
        "2",
    ]);
    let j: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    check_counts(&j);
    assert_eq!(j["checkpoint_ms"], 2);
    let wal_dir = dir.path().join("job1-streamline");
    let cp: Value =
        serde_json::from_slice(&std::fs::read(wal_dir.join("checkpoint.json")).unwrap()).unwrap();
    let through = cp["sequence"].as_u64().unwrap();
    assert!(
        through > 0 && through <= 3000,
        "checkpoint {through} within what was acknowledged"
    );
    let archived = std::fs::read_dir(&wal_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 12 && n.ends_with(".wal"))
        .count();
    assert!(
        archived < 40,
        "checkpoints retired files during the run: {archived} archived files left"
    );
}

#[test]
fn writers_can_run_as_tasks_awaiting_their_acknowledgements() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = run(&[
        "--dir",
        dir.path().to_str().unwrap(),
        "--output-format",
        "json",
        "--quiet",
        "--cleanup",
        "--records",
        "600",
        "--max-file-size",
        "1M",
        "--job",
        "writers=16,async-workers=2,backend=std",
        "--job",
        "writers=16,async-workers=1,queue-depth=4,backend=uring",
    ]);
    let jobs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("well-formed JSON"))
        .collect();
    assert_eq!(jobs.len(), 2);
    for (j, workers) in jobs.iter().zip([2, 1]) {
        check_counts(j);
        assert_eq!(j["async_workers"], workers);
        assert_eq!(j["records"], 600, "every issued record acknowledged");
        assert_eq!(j["writer_records"].as_array().unwrap().len(), 16);
        assert!(j["fsyncs"].as_u64().unwrap() > 0, "every_write synced");
    }
    assert_eq!(jobs[0]["backend"], "std");
    assert_eq!(jobs[1]["backend"], "uring");
    assert_eq!(jobs[1]["queue_depth"], 4);
}

/// `--reopen` reads back what the job wrote and reports the memory that took: the
/// process's RSS before the reopen and its peak during it.
#[test]
fn reopen_reports_the_recovery_and_its_memory() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (out, _) = run(&[
        "--dir",
        dir.path().to_str().unwrap(),
        "--output-format",
        "json",
        "--sync-mode",
        "os_default",
        "--writers",
        "2",
        "--records",
        "300",
        "--record-size",
        "4k",
        "--max-file-size",
        "1M",
        "--reopen",
    ]);
    let j: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    check_counts(&j);
    let r = &j["recovery"];
    let records = j["records"].as_u64().unwrap();
    let entries = r["entries"].as_u64().unwrap();
    // Each writer may have had one more append in flight when the count was reached.
    assert!(
        (records..=records + 2).contains(&entries),
        "{entries} entries read back, {records} acknowledged: {r}"
    );
    assert!(r["wal_bytes"].as_u64().unwrap() >= entries * 4096, "{r}");
    assert_eq!(r["cold_cache"], false);
    // No --drop-caches: none dropped; what the open read from the device is
    // measured all the same.
    assert_eq!(r["caches_dropped"], false);
    assert!(r["device_read_bytes"].is_u64(), "{r}");
    // Other tests of this binary run beside it, so only the presence and sense of
    // the two numbers are checked here (tests/recovery_memory.rs bounds them).
    assert!(r["rss_before_bytes"].as_u64().unwrap() > 1 << 20, "{r}");
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{r}");
}
