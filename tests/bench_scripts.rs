//! The benchmark helper scripts (`scripts/ab.py`, `scripts/bench_tables.py`,
//! `scripts/bench-broker.sh` and its client, `kafka_client.py bench`,
//! `scripts/bench.sh`), driven with stand-ins for `streamline-bench`, its
//! results and the broker, and the prose of `docs/benchmarks.md` checked
//! against its tables: no benchmark runs here. Also what `scripts/sim-soak.sh`
//! reports of a failed run, with a stand-in for `cargo`.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    process::Command,
};

fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Writes `text` to `path` as an executable script.
fn executable_script(path: &Path, text: impl AsRef<[u8]>) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A stand-in for `streamline-bench`: prints `FAKE_JOBS` (default 1) reports of
/// `FAKE_RATE` records/s, or fails in the rounds listed in `FAKE_FAIL` (counted
/// in `FAKE_COUNTER`); with `FAKE_ORDER` set, appends `FAKE_LABEL` to that file
/// first.
fn fake_bench(dir: &Path) -> String {
    let path = dir.join("fake-bench.sh");
    executable_script(
        &path,
        r#"#!/bin/sh
if [ -n "$FAKE_ORDER" ]; then echo "$FAKE_LABEL" >> "$FAKE_ORDER"; fi
n=$(cat "$FAKE_COUNTER" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$FAKE_COUNTER"
for r in $FAKE_FAIL; do [ "$r" = "$n" ] && { echo "failed in round $n" >&2; exit 3; }; done
for _ in $(seq "${FAKE_JOBS:-1}"); do
  echo "{\"records_per_sec\": $FAKE_RATE, \"latency_us\": {\"p50\": 1.0, \"p99\": 2.0}}"
done
"#,
    );
    path.display().to_string()
}

/// Runs `ab.py ROUNDS` with variants `a` (1000 records/s) and `b` (1100), each
/// failing in the rounds given; returns (exit code, stdout, stderr).
fn ab(rounds: u32, a_fails: &str, b_fails: &str) -> (Option<i32>, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_bench(tmp.path());
    let variant = |label: &str, rate: u32, fails: &str| {
        let counter = tmp.path().join(format!("{label}.count"));
        format!(
            "{label} FAKE_COUNTER={} FAKE_RATE={rate} 'FAKE_FAIL={fails}' {bin}",
            counter.display()
        )
    };
    run_ab(
        tmp.path(),
        rounds,
        &[variant("a", 1000, a_fails), variant("b", 1100, b_fails)],
    )
}

/// Runs `ab.py ROUNDS VARIANTS... --` with its results in `dir`; returns
/// (exit code, stdout, stderr).
fn run_ab(dir: &Path, rounds: u32, variants: &[String]) -> (Option<i32>, String, String) {
    let out = Command::new("python3")
        .arg(script("ab.py"))
        .arg(rounds.to_string())
        .args(variants)
        .arg("--")
        .env("AB_DIR", dir)
        .output()
        .expect("run python3 scripts/ab.py");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ab_counts_failed_rounds_as_lost_and_exits_non_zero() {
    let (code, out, err) = ab(3, "", "");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("b against a: more records/s in 3 of 3 rounds, median round ratio 1.100"),
        "{out}"
    );

    let (code, out, err) = ab(3, "", "2");
    assert_eq!(
        code,
        Some(1),
        "a failed round must fail the script: {out}{err}"
    );
    assert!(out.contains("b            round 2 FAILED"), "{out}");
    assert!(out.contains("(1 of 3 rounds FAILED)"), "{out}");
    assert!(
        out.contains("more records/s in 2 of 3 rounds, median round ratio 1.100 (of the 2 rounds"),
        "the failed round is lost, not left out: {out}"
    );
    assert!(err.contains("1 of 6 runs FAILED"), "{err}");

    let (code, out, err) = ab(2, "", "1 2");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("b            all 2 rounds FAILED"), "{out}");
    assert!(
        out.contains("more records/s in 0 of 2 rounds, no round in which both succeeded"),
        "{out}"
    );

    // The first variant failing loses its round to the other.
    let (code, out, err) = ab(2, "1", "");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("more records/s in 2 of 2 rounds"), "{out}");
}

/// Each round runs the variants in an order rotated by one from the round
/// before, so that what a run leaves behind does not always fall on the same
/// variant; the first variant given stays the base of every ratio.
#[test]
fn ab_rotates_the_variants_order_each_round_and_keeps_the_first_as_base() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_bench(tmp.path());
    let order = tmp.path().join("order");
    let variant = |label: &str, rate: u32| {
        let counter = tmp.path().join(format!("{label}.count"));
        format!(
            "{label} FAKE_LABEL={label} FAKE_ORDER={} FAKE_COUNTER={} FAKE_RATE={rate} {bin}",
            order.display(),
            counter.display()
        )
    };
    let (code, stdout, stderr) = run_ab(
        tmp.path(),
        4,
        &[variant("a", 1000), variant("b", 1100), variant("c", 900)],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let runs: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let rounds: Vec<String> = runs.chunks(3).map(|r| r.concat()).collect();
    assert_eq!(rounds, ["abc", "bca", "cab", "abc"], "{stdout}");
    // The ratios are still to `a`, whatever its place in the round.
    assert!(
        stdout.contains("b against a: more records/s in 4 of 4 rounds, median round ratio 1.100"),
        "{stdout}"
    );
    assert!(
        stdout.contains("c against a: more records/s in 0 of 4 rounds, median round ratio 0.900"),
        "{stdout}"
    );
}

/// A run of several jobs prints one report line per job; `ab.py` compares one
/// job per run, so it refuses such a run rather than compare only its last job.
#[test]
fn ab_refuses_runs_of_several_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_bench(tmp.path());
    let counter = tmp.path().join("count");
    let variant = |label: &str, jobs: u32| {
        format!(
            "{label} FAKE_COUNTER={} FAKE_RATE=1000 FAKE_JOBS={jobs} {bin}",
            counter.display()
        )
    };
    let (code, stdout, stderr) = run_ab(tmp.path(), 2, &[variant("a", 1), variant("b", 2)]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("b: the run printed 2 report lines"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("against"),
        "no comparison is made: {stdout}"
    );
}

/// One report line of `streamline-bench --output-format json`, with only what
/// `bench_tables.py` reads.
fn report(
    job: u32,
    engine: &str,
    backend: &str,
    sync: &str,
    qd: u32,
    writers: u32,
    rps: f64,
) -> String {
    format!(
        r#"{{"job":{job},"engine":"{engine}","backend":"{backend}","sync_mode":"{sync}","writers":{writers},"queue_depth":{qd},"record_size":1024,"records_per_sec":{rps}}}"#
    )
}

#[test]
fn bench_tables_compares_like_with_like_and_gives_round_ratios() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    std::fs::create_dir(&raw).unwrap();
    // Two rounds; in each, one invocation at queue depth 1 and one at 64, each
    // with its own nowal job (at queue depth 1: nowal has no other).
    let mut sync = Vec::new();
    for nowal in [100.0, 120.0] {
        sync.push(report(1, "nowal", "pwrite", "none", 1, 4, nowal));
        sync.push(report(
            2,
            "streamline",
            "uring",
            "interval",
            1,
            4,
            nowal / 2.0,
        ));
        sync.push(report(1, "nowal", "pwrite", "none", 1, 4, nowal));
        sync.push(report(
            2,
            "streamline",
            "uring",
            "interval",
            64,
            4,
            nowal * 1.5,
        ));
    }
    std::fs::write(raw.join("syncmodes.jsonl"), sync.join("\n") + "\n").unwrap();
    // Three rounds of uring against std, 64 writers: the ratio of the medians
    // (70 / 90) differs from the median of the round ratios (100 / 90).
    let mut scaling = Vec::new();
    for (u, s) in [(100.0, 90.0), (50.0, 40.0), (70.0, 100.0)] {
        scaling.push(report(1, "streamline", "uring", "every_write", 1, 64, u));
        scaling.push(report(2, "streamline", "std", "every_write", 1, 64, s));
    }
    std::fs::write(raw.join("scaling.jsonl"), scaling.join("\n") + "\n").unwrap();
    // Queue depth 64 into new files (no checkpoints), two runs, and fio's
    // ceiling for the same pattern into reserved space, two repetitions.
    let qd64: Vec<String> = [700.0, 900.0]
        .iter()
        .map(|mbs| {
            format!(
                r#"{{"job":1,"engine":"streamline","backend":"uring","sync_mode":"every_write","writers":4,"queue_depth":64,"record_size":4096,"records_per_sec":{},"mb_per_sec":{mbs}}}"#,
                mbs * 244.0
            )
        })
        .collect();
    std::fs::write(raw.join("qd64.jsonl"), qd64.join("\n") + "\n").unwrap();
    for (rep, bw) in [(1, 1.0e9), (2, 1.2e9)] {
        std::fs::write(
            raw.join(format!("fio-dsync-reserved-{rep}.json")),
            format!(r#"{{"jobs":[{{"write":{{"bw_bytes":{bw}}}}}]}}"#),
        )
        .unwrap();
    }
    let doc = tmp.path().join("doc.md");
    std::fs::write(&doc, "<!-- BEGIN targets -->\n<!-- END targets -->\n").unwrap();
    let out = Command::new("python3")
        .arg(script("bench_tables.py"))
        .arg(tmp.path())
        .arg(&doc)
        .output()
        .expect("run python3 scripts/bench_tables.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&doc).unwrap();
    let row = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no row with {needle:?}:\n{text}"))
            .to_string()
    };
    let qd1 = row("interval < 3% below nowal (uring, queue depth 1)");
    assert!(qd1.contains("| 0.50× | 0.50× (2) | **missed** |"), "{qd1}");
    let qd64 = row("interval at queue depth 64");
    assert!(
        qd64.contains("not a ceiling") && qd64.ends_with("| (context) |") && !qd64.contains("met"),
        "queue depth 64 is no like-for-like comparison with nowal: {qd64}"
    );
    assert!(qd64.contains("| 1.50× | 1.50× (2) |"), "{qd64}");
    // Medians: 800 MB/s against fio's 1,100 MB/s into reserved space.
    let ceiling = row("device's ceiling for this pattern");
    assert!(
        ceiling.contains("into reserved space (uring)")
            && ceiling.contains("| 800 vs 1,100 MB/s | 0.73× | – | (context) |"),
        "{ceiling}"
    );
    let u64 = row("uring beats std (64 writers × 1024 B)");
    assert!(u64.contains("| 0.78× | 1.11× (3) | **missed** |"), "{u64}");
}

/// The 1-writer target against fio compares means: fio's 4 KiB write +
/// fdatasync mean (1/IOPS) against streamline's mean latency, not its p50. Here
/// the two pairs give opposite verdicts: streamline's p50 (100 µs) is within
/// 1.2× of fio's median write + median fdatasync (40 + 40 µs) and of its mean
/// (200 µs), its mean (300 µs) is not within 1.2× of fio's mean.
#[test]
fn bench_tables_compares_streamline_with_fio_mean_against_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    std::fs::create_dir(&raw).unwrap();
    let scaling: Vec<String> = ["uring", "std"]
        .iter()
        .map(|be| {
            format!(
                r#"{{"job":1,"engine":"streamline","backend":"{be}","sync_mode":"every_write","writers":1,"queue_depth":1,"record_size":1024,"records_per_sec":3333,"latency_us":{{"mean":300.0,"p50":100.0,"p99":900.0}}}}"#
            )
        })
        .collect();
    std::fs::write(raw.join("scaling.jsonl"), scaling.join("\n") + "\n").unwrap();
    // 5,000 IOPS: 200 µs per operation on average; medians 40 µs each.
    std::fs::write(
        raw.join("fio-sync-4k-1.json"),
        r#"{"jobs":[{"write":{"iops":5000.0,"bw_bytes":20480000,"clat_ns":{"mean":30000,"percentile":{"50.000000":40000}}},"sync":{"lat_ns":{"mean":160000,"percentile":{"50.000000":40000}}}}]}"#,
    )
    .unwrap();
    let doc = tmp.path().join("doc.md");
    std::fs::write(&doc, "<!-- BEGIN targets -->\n<!-- END targets -->\n").unwrap();
    let out = Command::new("python3")
        .arg(script("bench_tables.py"))
        .arg(tmp.path())
        .arg(&doc)
        .output()
        .expect("run python3 scripts/bench_tables.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&doc).unwrap();
    for be in ["uring", "std"] {
        let row = text
            .lines()
            .find(|l| l.contains("fio 4 KiB") && l.contains(&format!("({be})")))
            .unwrap_or_else(|| panic!("no fio row for {be}:\n{text}"));
        assert!(
            row.contains("1 writer × 1 KiB mean ≤ 1.2× fio 4 KiB write+fdatasync mean")
                && row.contains("| 300.0 vs 200.0 µs | 1.50× | – | **missed** |"),
            "{row}"
        );
    }
}

/// Criterion's table comes only from this run: `scripts/bench.sh` with
/// `SKIP_CRITERION=1` calls `bench_tables.py` with `CRITERION_DIR` empty, and
/// the table then says it was not measured, rather than keep an earlier run's
/// rows or read results an earlier build left in `target/criterion`.
#[test]
fn bench_tables_fills_the_criterion_table_only_from_this_run() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    std::fs::create_dir_all(results.join("raw")).unwrap();
    // Results of a criterion run made by an earlier build.
    let crit = tmp.path().join("criterion");
    let bench = crit.join("crc32c").join("1024").join("new");
    std::fs::create_dir_all(&bench).unwrap();
    std::fs::write(
        bench.join("benchmark.json"),
        r#"{"full_id":"crc32c/1024","throughput":{"Bytes":1024}}"#,
    )
    .unwrap();
    std::fs::write(
        bench.join("estimates.json"),
        r#"{"median":{"point_estimate":57.8}}"#,
    )
    .unwrap();
    let doc = tmp.path().join("doc.md");
    let old_table =
        "<!-- BEGIN criterion -->\n| `old/row` | 1.0 ns | – |\n<!-- END criterion -->\n";
    let tables = |criterion_dir: &Path| {
        std::fs::write(&doc, old_table).unwrap();
        let out = Command::new("python3")
            .arg(script("bench_tables.py"))
            .arg(&results)
            .arg(&doc)
            .env("CRITERION_DIR", criterion_dir)
            .output()
            .expect("run python3 scripts/bench_tables.py");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(&doc).unwrap()
    };

    // As the skip path calls it.
    let text = tables(Path::new(""));
    assert!(
        text.contains("Not measured in this run.")
            && !text.contains("old/row")
            && !text.contains("crc32c/1024"),
        "{text}"
    );

    // After criterion ran.
    let text = tables(&crit);
    assert!(
        text.contains("| `crc32c/1024` | 57.8 ns | 17.72 GB/s |") && !text.contains("old/row"),
        "{text}"
    );
}

/// `python3` with confluent-kafka (installed by scripts/install-test-deps.sh).
fn python_with_kafka() -> String {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import confluent_kafka"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{py} with confluent-kafka is not available: run scripts/install-test-deps.sh"
    );
    py
}

/// An address that accepts connections and never answers a request, as a
/// broker that takes no produce requests: nothing is ever acknowledged.
fn silent_listener() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// `kafka_client.py bench`'s rates count delivered messages only; messages
/// that failed or were still unacknowledged when it stopped waiting are reported
/// and fail it.
#[test]
fn kafka_client_bench_counts_only_delivered_messages() {
    let py = python_with_kafka();
    let (_listener, addr) = silent_listener();
    let client = format!(
        "{}/tests/clients/kafka_client.py",
        env!("CARGO_MANIFEST_DIR")
    );
    for (env, failed, remaining) in [
        // Still waiting for acknowledgements when the flush gives up.
        (("BENCH_FLUSH_SECONDS", "1"), 0, 50),
        // Timed out in the client, reported failed.
        (
            ("BENCH_CLIENT_CONFIG", r#"{"message.timeout.ms": 1000}"#),
            50,
            0,
        ),
    ] {
        let out = Command::new(&py)
            .args([&client, "bench", &addr, "bench", "50", "10", "2"])
            .env(env.0, env.1)
            .output()
            .expect("run kafka_client.py bench");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(1), "{env:?}: {stdout}{stderr}");
        let report: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{env:?}: no JSON report ({e}): {stdout}{stderr}"));
        assert_eq!(report["messages"], 50, "{report}");
        assert_eq!(report["failed"], failed, "{env:?}: {report}");
        assert_eq!(report["remaining"], remaining, "{env:?}: {report}");
        assert_eq!(report["delivered"], 0, "{env:?}: {report}");
        assert_eq!(report["msgs_per_s"], 0, "{env:?}: {report}");
        assert!(
            stderr.contains("50 of 50 messages not delivered"),
            "{stderr}"
        );
    }
}

/// `scripts/bench-broker.sh COUNT 10 2 2` (10-byte messages, 2 partitions, 2
/// producers) with `bin` as the broker, `python` for the clients, running
/// `mode`, with its data under `tmp`.
fn bench_broker(
    count: &str,
    bin: impl AsRef<std::ffi::OsStr>,
    python: impl AsRef<std::ffi::OsStr>,
    mode: &str,
    tmp: &Path,
) -> Command {
    let mut c = Command::new("bash");
    c.arg(script("bench-broker.sh"))
        .args([count, "10", "2", "2"]) // COUNT SIZE PARTITIONS PRODUCERS
        .env("STREAMLINE_BIN", bin)
        .env("PYTHON", python)
        .env("MODES", mode)
        .env("TMPDIR", tmp);
    c
}

/// `scripts/bench-broker.sh` against a stand-in broker that answers nothing:
/// the line for the mode counts no message as delivered, and the script fails.
#[test]
fn bench_broker_fails_when_messages_are_not_delivered() {
    let py = python_with_kafka();
    let (_listener, addr) = silent_listener();
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake-broker.sh");
    executable_script(
        &fake,
        // Exits 0 at the script's SIGTERM, as a broker that stopped cleanly:
        // the run fails for the undelivered messages alone.
        format!(
            "#!/bin/sh\necho \"streamline listening on {addr}\"\nsleep 60 &\ns=$!\ntrap 'kill $s; exit 0' TERM\nwait\n"
        ),
    );
    let out = bench_broker("30", &fake, &py, "wal_disabled", tmp.path())
        .env("BENCH_CLIENT_CONFIG", r#"{"message.timeout.ms": 1000}"#)
        .output()
        .expect("run scripts/bench-broker.sh");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("msgs=60 delivered=0 failed=60 remaining=0")
            && stdout.contains(" msgs/s=0 "),
        "undelivered messages counted: {stdout}"
    );
    assert!(
        stderr.contains("60 of 60 messages not delivered") && !stderr.contains("the broker exited"),
        "{stderr}"
    );
}

/// `scripts/bench-broker.sh` ignored the broker's own exit status: a broker
/// whose final flush failed at SIGTERM (exit 1) after every message was
/// delivered left the run passing. Against the real broker the run passes;
/// against the same broker made to exit 1 once stopped, it fails and says so.
#[test]
fn bench_broker_fails_when_the_broker_exits_with_an_error() {
    let py = python_with_kafka();
    let tmp = tempfile::tempdir().unwrap();
    let failing = tmp.path().join("failing-broker.sh");
    executable_script(
        &failing,
        format!(
            "#!/bin/bash\n\"{}\" \"$@\" &\nchild=$!\ntrap 'kill -TERM $child; wait $child; exit 1' TERM\nwait $child\n",
            env!("CARGO_BIN_EXE_streamline")
        ),
    );
    let run = |bin: &std::path::Path| {
        let out = bench_broker("30", bin, &py, "every_write", tmp.path())
            .output()
            .expect("run scripts/bench-broker.sh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(std::path::Path::new(env!("CARGO_BIN_EXE_streamline")));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("delivered=60 failed=0"), "{text}");
    let (code, text) = run(&failing);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("delivered=60 failed=0") && text.contains("the broker exited with 1"),
        "{text}"
    );
}

/// `scripts/bench-broker.sh` took its rates over its wall time, which counts
/// starting the Python producers (the interpreter, imports, connecting): the
/// same time in every mode, shrinking the differences between modes. Here
/// each producer starts 1.5 s late; the rates are over the producers' own
/// window, printed as `produce=` beside `wall=`.
#[test]
fn bench_broker_rates_are_over_the_producers_own_window() {
    let py = python_with_kafka();
    let tmp = tempfile::tempdir().unwrap();
    let slow = tmp.path().join("slow-python.sh");
    executable_script(
        &slow,
        format!("#!/bin/bash\nif [ \"$1\" != - ]; then sleep 1.5; fi\nexec \"{py}\" \"$@\"\n"),
    );
    let out = bench_broker(
        "300",
        env!("CARGO_BIN_EXE_streamline"),
        &slow,
        "interval",
        tmp.path(),
    )
    .output()
    .expect("run scripts/bench-broker.sh");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> f64 {
        let v = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {text}"));
        v.trim_end_matches('s').parse().unwrap()
    };
    let (produce, wall, rate) = (field("produce"), field("wall"), field("msgs/s"));
    assert!(text.contains("delivered=600 failed=0"), "{text}");
    assert!(produce + 1.4 <= wall, "{text}");
    // The rate is of the window, not of the wall time.
    assert!(rate >= 600.0 / (wall - 1.4), "{text}");
}

/// `scripts/bench.sh` runs several jobs in one `streamline-bench` invocation
/// and repeats it `REPS` times; the jobs' order rotates with the repetition
/// (the first keeps the order written in the script), so that what a job
/// leaves behind does not always fall on the same job. Run here in a copy of
/// the scripts with stand-ins for cargo, `streamline-bench` (which records its
/// arguments and reports nothing) and the tools the machine table calls: every
/// invocation of several jobs must come back `REPS` times, each rotated by one
/// more than the one before.
#[test]
fn bench_sh_rotates_the_jobs_of_every_invocation_with_the_repetition() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("scripts")).unwrap();
    std::fs::create_dir_all(tree.join("docs")).unwrap();
    for name in ["bench.sh", "bench_tables.py"] {
        std::fs::copy(script(name), tree.join("scripts").join(name)).unwrap();
    }
    std::fs::write(tree.join("docs/benchmarks.md"), "").unwrap();
    let tools = tmp.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    for (name, text) in [
        ("cargo", "#!/bin/sh\nexit 0\n"),
        ("lscpu", "#!/bin/sh\necho 'Model name: stand-in'\n"),
        ("findmnt", "#!/bin/sh\necho 'ext4 /dev/stand-in'\n"),
        ("free", "#!/bin/sh\necho 'Mem: 1 0 1'\n"),
    ] {
        executable_script(&tools.join(name), text);
    }
    let target = tmp.path().join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    let calls = tmp.path().join("calls");
    executable_script(
        &target.join("release/streamline-bench"),
        format!("#!/bin/sh\necho \"$*\" >> '{}'\n", calls.display()),
    );
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(tree.join("scripts/bench.sh"))
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", &target)
        .env("BENCH_DIR", tmp.path().join("scratch"))
        .env("REPS", "3")
        .env("SKIP_FIO", "1")
        .env("SKIP_CRITERION", "1")
        .output()
        .expect("run scripts/bench.sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Invocations grouped by everything but the jobs' order (and the plot
    // files only the first repetition writes), in the order first seen.
    let mut groups: Vec<(String, Vec<Vec<String>>)> = Vec::new();
    for call in std::fs::read_to_string(&calls).unwrap().lines() {
        let mut words = call.split_whitespace();
        let (mut jobs, mut rest) = (Vec::new(), Vec::new());
        while let Some(w) = words.next() {
            match w {
                "--job" => jobs.push(words.next().unwrap().to_string()),
                "--plot" | "--hist-file" => {
                    words.next();
                }
                _ => rest.push(w),
            }
        }
        if jobs.len() < 2 {
            continue;
        }
        let mut sorted = jobs.clone();
        sorted.sort();
        let key = format!("{} {}", rest.join(" "), sorted.join(" "));
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, runs)) => runs.push(jobs),
            None => groups.push((key, vec![jobs])),
        }
    }
    for needle in [
        "engine=nowal",
        "engine=raft-engine",
        "async-workers=1",
        "--warmup 4",
        "--queue-depth 64",
    ] {
        assert!(
            groups.iter().any(|(k, _)| k.contains(needle)),
            "no invocation of several jobs with {needle}: {groups:?}"
        );
    }
    for (key, runs) in &groups {
        assert_eq!(runs.len(), 3, "{key}: {runs:?}");
        for (rep, jobs) in runs.iter().enumerate() {
            let mut want = runs[0].clone();
            let n = want.len();
            want.rotate_left(rep % n);
            assert_eq!(*jobs, want, "{key}: repetition {}: {runs:?}", rep + 1);
        }
    }
}

/// Numbers of `text` written with a decimal point or grouped thousands
/// (`1.27`, `1,658`, `1,304.7`), as they stand.
fn figures(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_digit()
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || matches!(b[i - 1], b'.' | b',')));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        while j + 3 < b.len()
            && b[j] == b','
            && b[j + 1..j + 4].iter().all(u8::is_ascii_digit)
            && !b.get(j + 4).is_some_and(u8::is_ascii_digit)
        {
            j += 4;
        }
        if j + 1 < b.len() && b[j] == b'.' && b[j + 1].is_ascii_digit() {
            j += 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
        }
        let figure = &text[i..j];
        if figure.contains(['.', ',']) {
            out.push(figure.to_string());
        }
        i = j;
    }
    out
}

/// The prose under "What the numbers say" describes the run whose tables
/// `scripts/bench.sh` wrote into docs/benchmarks.md, and quotes earlier runs
/// dated with their run. It once kept quoting older runs as "this run" after
/// the tables had moved on, so: a sentence there that says "this run" (or
/// "the same run") may quote a figure with a decimal point or grouped
/// thousands only if that figure stands in those tables (between
/// `<!-- BEGIN … -->` and `<!-- END … -->`). Figures of other runs go in
/// sentences that name their run.
#[test]
fn benchmarks_prose_quotes_this_runs_figures_from_its_tables() {
    let doc = std::fs::read_to_string(format!("{}/docs/benchmarks.md", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    let mut in_tables = HashSet::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with("<!-- BEGIN ") {
            inside = true;
        } else if line.starts_with("<!-- END ") {
            inside = false;
        } else if inside {
            in_tables.extend(figures(line));
        }
    }
    assert!(in_tables.contains("1,658"), "no tables found");
    let section = doc
        .split("\n## What the numbers say\n")
        .nth(1)
        .expect("docs/benchmarks.md has no \"What the numbers say\"");
    let section = section.split("\n## ").next().unwrap();
    // The prose alone: no table rows, no code blocks, no inline code.
    let mut prose = String::new();
    let mut fenced = false;
    for line in section.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && !line.starts_with('|') {
            prose.push_str(line);
            prose.push(' ');
            continue;
        }
        prose.push_str("\n\n");
    }
    let prose: String = prose.split('`').step_by(2).collect();
    let mut stale: HashMap<String, Vec<String>> = HashMap::new();
    for sentence in prose.split(". ").flat_map(|s| s.split("\n\n")) {
        let lower = sentence.to_lowercase();
        if !(lower.contains("this run") || lower.contains("the same run")) {
            continue;
        }
        let missing: Vec<String> = figures(sentence)
            .into_iter()
            .filter(|f| !in_tables.contains(f))
            .collect();
        if !missing.is_empty() {
            stale.insert(sentence.trim().to_string(), missing);
        }
    }
    assert!(
        stale.is_empty(),
        "sentences quoting as this run's figures that its tables do not hold: {stale:#?}"
    );
}

/// Runs `scripts/sim-soak.sh 1 1` with a stand-in `cargo` first on `PATH`
/// that prints `output` and exits with `code`; returns (exit code, stdout).
fn sim_soak_with_cargo(output: &str, code: i32) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("output"), output).unwrap();
    executable_script(
        &tmp.path().join("cargo"),
        format!(
            "#!/bin/sh\ncat '{}'\nexit {code}\n",
            tmp.path().join("output").display()
        ),
    );
    let path = format!(
        "{}:{}",
        tmp.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(script("sim-soak.sh"))
        .args(["1", "1"])
        .env("PATH", path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A failed soak says why: a panic's message (on the line after "panicked
/// at") and, when nothing panicked (a build error), the end of the output;
/// the exit code is cargo's.
#[test]
fn sim_soak_prints_why_a_run_failed() {
    let (code, out) = sim_soak_with_cargo(
        "running 1 test\nsim: 1 seeds in 0.1s, 0 failed\n\
         thread 'sim_crash' panicked at tests/sim_crash.rs:10:5:\n\
         no recovery cut a torn tail\ntest sim_crash ... FAILED\n\
         test result: FAILED. 0 passed; 1 failed\n",
        101,
    );
    assert_eq!(code, Some(101), "{out}");
    assert!(out.contains("no recovery cut a torn tail"), "{out}");
    assert!(out.contains("sim: 1 seeds"), "{out}");
    let (code, out) = sim_soak_with_cargo(
        "   Compiling streamline\nerror[E0425]: cannot find value `x` in this scope\n",
        101,
    );
    assert_eq!(code, Some(101), "{out}");
    assert!(out.contains("error[E0425]: cannot find value"), "{out}");
    let (code, out) = sim_soak_with_cargo(
        "sim: 1 seeds in 0.1s, 0 failed\ntest result: ok. 1 passed; 0 failed\n",
        0,
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out,
        "sim: 1 seeds in 0.1s, 0 failed\ntest result: ok. 1 passed; 0 failed\n"
    );
}
