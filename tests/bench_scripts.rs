//! The benchmark helper scripts (`scripts/ab.py`, `scripts/bench_tables.py`),
//! driven with stand-ins for `streamline-bench` and its results: no benchmark
//! runs here.

use std::{path::Path, process::Command};

fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A stand-in for `streamline-bench`: prints a report of `FAKE_RATE` records/s,
/// or fails in the rounds listed in `FAKE_FAIL` (counted in `FAKE_COUNTER`).
fn fake_bench(dir: &Path) -> String {
    let path = dir.join("fake-bench.sh");
    std::fs::write(
        &path,
        r#"#!/bin/sh
n=$(cat "$FAKE_COUNTER" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$FAKE_COUNTER"
for r in $FAKE_FAIL; do [ "$r" = "$n" ] && { echo "failed in round $n" >&2; exit 3; }; done
echo "{\"records_per_sec\": $FAKE_RATE, \"latency_us\": {\"p50\": 1.0, \"p99\": 2.0}}"
"#,
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
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
    let out = Command::new("python3")
        .arg(script("ab.py"))
        .arg(rounds.to_string())
        .arg(variant("a", 1000, a_fails))
        .arg(variant("b", 1100, b_fails))
        .arg("--")
        .env("AB_DIR", tmp.path())
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
