//! The broker with Debian's kcat (librdkafka): produce/consume round trips, metadata,
//! WAL disabled, command-line validation.

mod broker_support;

use std::{collections::BTreeMap, process::Command, time::Duration};

use broker_support::{kcat, python_client_env, records, run, Broker};

/// Messages for partition `p`: printable ASCII, UTF-8, tabs and long values.
fn messages(p: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("p{p}-m{i}-plain"),
            1 => format!("p{p}-m{i}-ünïcødé-✓"),
            2 => format!("p{p}-m{i}\twith\ttabs  and  spaces"),
            _ => format!("p{p}-m{i}-{}", "x".repeat(3000 + i)),
        })
        .collect()
}

/// Consumes everything with kcat and returns partition -> [(offset, value)].
fn consume_all(addr: &str, topic: &str) -> BTreeMap<i32, Vec<(i64, String)>> {
    let out = kcat(
        &[
            "-C",
            "-b",
            addr,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%p|%o|%s\n",
        ],
        b"",
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    let mut by_part: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.splitn(3, '|');
        let p: i32 = it.next().unwrap().parse().unwrap();
        let o: i64 = it.next().unwrap().parse().unwrap();
        by_part
            .entry(p)
            .or_default()
            .push((o, it.next().unwrap_or("").to_string()));
    }
    by_part
}

#[test]
fn kcat_round_trip_is_byte_exact_across_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--default-partitions",
            "3",
            "--wal-sync-mode",
            "every_write",
        ],
    );
    let mut sent = BTreeMap::new();
    for p in 0..3 {
        let msgs = messages(p, 25 + p * 10);
        let input = msgs.iter().map(|m| format!("{m}\n")).collect::<String>();
        kcat(
            &[
                "-P",
                "-b",
                &broker.addr,
                "-t",
                "rt",
                "-p",
                &p.to_string(),
                "-X",
                "acks=all",
            ],
            input.as_bytes(),
        );
        sent.insert(p as i32, msgs);
    }
    let got = consume_all(&broker.addr, "rt");
    assert_eq!(got.len(), 3, "all partitions hold data");
    for (p, msgs) in &sent {
        let part = &got[p];
        assert_eq!(part.len(), msgs.len(), "partition {p} message count");
        for (i, (off, value)) in part.iter().enumerate() {
            assert_eq!(*off, i as i64, "partition {p}: offsets contiguous from 0");
            assert_eq!(
                value, &msgs[i],
                "partition {p} offset {off}: byte-exact value"
            );
        }
    }
    // Metadata names this broker, at the port it really listens on, with 3 partitions.
    let meta =
        String::from_utf8(kcat(&["-L", "-b", &broker.addr, "-t", "rt"], b"").stdout).unwrap();
    assert!(
        meta.contains(&format!("broker 0 at {}", broker.addr)),
        "{meta}"
    );
    assert!(meta.contains("topic \"rt\" with 3 partitions"), "{meta}");

    // After a clean restart the same bytes are there, and producing continues after them.
    assert!(broker.sigterm().success(), "clean exit");
    let broker = broker.restart();
    kcat(
        &[
            "-P",
            "-b",
            &broker.addr,
            "-t",
            "rt",
            "-p",
            "0",
            "-X",
            "acks=all",
        ],
        b"after-restart\n",
    );
    let got = consume_all(&broker.addr, "rt");
    assert_eq!(got.len(), 3, "all partitions hold data after the restart");
    for (p, msgs) in &sent {
        let mut want: Vec<(i64, String)> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| (i as i64, m.clone()))
            .collect();
        if *p == 0 {
            want.push((msgs.len() as i64, "after-restart".to_string()));
        }
        assert!(
            got[p] == want,
            "partition {p} after the restart: every value at its offset ({} read, {} expected)",
            got[p].len(),
            want.len()
        );
    }
}

#[test]
fn wal_disabled_still_serves_and_keeps_data_across_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut broker = Broker::start(
        &data,
        &["--wal-enabled", "false", "--default-partitions", "2"],
    );
    let msgs: Vec<String> = (0..40).map(|i| format!("nowal-{i}")).collect();
    let input = msgs.iter().map(|m| format!("{m}\n")).collect::<String>();
    kcat(
        &[
            "-P",
            "-b",
            &broker.addr,
            "-t",
            "nowal",
            "-p",
            "1",
            "-X",
            "acks=all",
        ],
        input.as_bytes(),
    );
    let got = consume_all(&broker.addr, "nowal");
    assert_eq!(
        got[&1].iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        msgs
    );
    assert!(
        !data.join("wal").exists(),
        "no WAL directory is created when the WAL is disabled"
    );
    assert!(broker.sigterm().success());
    let broker = broker.restart();
    let got = consume_all(&broker.addr, "nowal");
    assert_eq!(
        got[&1].iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        msgs,
        "segments were flushed at shutdown"
    );
}

#[test]
fn invalid_flags_exit_2_naming_flag_and_values_touching_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("never-created");
    let cases: [(&[&str], &str, &str); 12] = [
        (
            &["--wal-sync-mode", "sometimes"],
            "--wal-sync-mode",
            "every_write",
        ),
        (&["--wal-enabled", "perhaps"], "--wal-enabled", "true"),
        (
            &["--wal-max-file-size", "1000"],
            "--wal-max-file-size",
            "4096",
        ),
        (&["--wal-backend", "magic"], "--wal-backend", "uring"),
        (
            &["--group-min-session-timeout-ms", "0"],
            "--group-min-session-timeout-ms",
            "1 to",
        ),
        (
            &[
                "--group-min-session-timeout-ms",
                "7000",
                "--group-max-session-timeout-ms",
                "6999",
            ],
            "--group-max-session-timeout-ms",
            "7000",
        ),
        (
            &["--max-connections", "0"],
            "--max-connections",
            "1 or more",
        ),
        (
            &["--max-connections", "many"],
            "--max-connections",
            "accepted values: 1 or more",
        ),
        (&["--fetch-max-bytes", "10"], "--fetch-max-bytes", "1024 to"),
        (
            &["--fetch-response-memory-bytes", "1000"],
            "--fetch-response-memory-bytes",
            "1024 or more",
        ),
        // Kafka's segment.bytes is an INT, as the topic-level setting.
        (
            &["--segment-bytes", "2147483648"],
            "--segment-bytes",
            "4096 to 2147483647",
        ),
        (
            &["--segment-bytes", "4294967295"],
            "--segment-bytes",
            "4096 to 2147483647",
        ),
    ];
    for (args, flag, accepted) in cases {
        let out = run(
            Command::new(broker_support::broker_bin())
                .arg("--data-dir")
                .arg(&data)
                .args(args),
            b"",
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(flag) && err.contains(accepted),
            "{args:?}: message must name {flag} and {accepted}: {err}"
        );
        assert!(
            !err.contains("STREAMLINE_"),
            "{args:?}: a flag's value is no variable's: {err}"
        );
        assert!(!data.exists(), "{args:?}: nothing may be created on disk");
    }
    // Environment variables are validated the same way.
    let out = run(
        Command::new(broker_support::broker_bin())
            .arg("--data-dir")
            .arg(&data)
            .env("STREAMLINE_WAL_SYNC_MODE", "bogus"),
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--wal-sync-mode"));
    assert!(!data.exists());
    // A value from a variable is reported naming the variable, its value, the
    // flag and the accepted values: one that does not parse, and one out of
    // range, whether the broker's validation or the WAL's own checks refuse it;
    // STREAMLINE_LOG, read by the broker itself, as well.
    for (var, value, accepted) in [
        ("STREAMLINE_WAL_BACKEND", "bogus", "auto, uring, std"),
        ("STREAMLINE_SEGMENT_BYTES", "lots", "100m"),
        ("STREAMLINE_LOG", "streamline=loud", "expected one of"),
        ("STREAMLINE_LOG", "info,[", "invalid filter directive"),
        ("STREAMLINE_MAX_CONNECTIONS", "0", "1 or more"),
        ("STREAMLINE_MAX_CONNECTIONS", "-1", "1 or more"),
        ("STREAMLINE_CHECKPOINT_MS", "soon", "1 or more"),
        ("STREAMLINE_LISTEN", "localhost:9092", "IP:PORT"),
        ("STREAMLINE_FETCH_MAX_BYTES", "512", "1024 to"),
        ("STREAMLINE_FETCH_MAX_BYTES", "0k", "1024 to"),
        (
            "STREAMLINE_FETCH_RESPONSE_MEMORY_BYTES",
            "0k",
            "1024 or more",
        ),
        ("STREAMLINE_SEGMENT_BYTES", "2g", "4096 to 2147483647"),
        ("STREAMLINE_DEFAULT_PARTITIONS", "0", "1 to 10000"),
        ("STREAMLINE_WAL_MAX_FILE_SIZE", "1000", "4096"),
        ("STREAMLINE_GROUP_MAX_SESSION_TIMEOUT_MS", "5000", "6000"),
        // An empty path: clap names no accepted values.
        ("STREAMLINE_SASL_USERS", "", "the value is empty"),
    ] {
        let out = run(
            Command::new(broker_support::broker_bin())
                .arg("--data-dir")
                .arg(&data)
                .env(var, value),
            b"",
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert!(
            err.contains(var) && err.contains(value) && err.contains(accepted),
            "{var}={value}: message must name the variable, the value and {accepted:?}: {err}"
        );
        assert!(
            !data.exists(),
            "{var}={value}: nothing may be created on disk"
        );
    }
    // The flag wins over its variable, and its value is the one named.
    let out = run(
        Command::new(broker_support::broker_bin())
            .arg("--data-dir")
            .arg(&data)
            .args(["--max-connections", "0"])
            .env("STREAMLINE_MAX_CONNECTIONS", "5"),
        b"",
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--max-connections = \"0\"") && !err.contains("STREAMLINE_"),
        "{err}"
    );
    assert!(!data.exists());
    // A negative number is the flag's value, refused by its range and named,
    // not an unknown option "-1".
    for (flag, accepted) in [
        ("--max-connections", "invalid value '-1'"),
        ("--default-partitions", "1 to 10000"),
        ("--checkpoint-ms", "invalid value '-1'"),
    ] {
        let out = run(
            Command::new(broker_support::broker_bin())
                .arg("--data-dir")
                .arg(&data)
                .args([flag, "-1"]),
            b"",
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} -1: {err}");
        assert!(
            err.contains(flag) && err.contains(accepted) && !err.contains("unexpected argument"),
            "{flag} -1: {err}"
        );
        assert!(!data.exists());
    }
}

/// The backend named by the broker's "opened WAL" log line.
fn backend_in_use(broker: &Broker) -> String {
    let log = broker.log_text();
    let line = log
        .lines()
        .rfind(|l| l.contains("opened WAL"))
        .unwrap_or_else(|| panic!("no \"opened WAL\" line in the log:\n{log}"));
    let value = line
        .split(' ')
        .find_map(|w| w.strip_prefix("backend="))
        .unwrap_or_else(|| panic!("no backend in {line:?}"));
    if value == "std" && log.contains("io_uring backend unavailable") {
        // `auto` fell back: io_uring cannot be set up here.
        return "std (auto fell back)".into();
    }
    value.to_string()
}

#[test]
fn wal_backend_flag_wins_over_the_variable() {
    let tmp = tempfile::tempdir().unwrap();
    // (variable, flag, backend in use). `auto` is io_uring where it can be set
    // up, std otherwise (with a warning).
    let cases: [(&str, Option<&str>, &[&str]); 5] = [
        ("std", Some("uring"), &["uring"]),
        ("std", Some("auto"), &["uring", "std (auto fell back)"]),
        ("uring", Some("std"), &["std"]),
        // A variable overridden by the flag is not read, as for every flag.
        ("bogus", Some("std"), &["std"]),
        // Without the flag, the variable sets it.
        ("std", None, &["std"]),
    ];
    for (i, (var, flag, expected)) in cases.into_iter().enumerate() {
        let data = tmp.path().join(format!("data-{i}"));
        let mut args = Vec::new();
        if let Some(flag) = flag {
            args.extend(["--wal-backend", flag]);
        }
        let mut broker = Broker::start_env(&data, &args, &[("STREAMLINE_WAL_BACKEND", var)]);
        let used = backend_in_use(&broker);
        assert!(
            expected.contains(&used.as_str()),
            "STREAMLINE_WAL_BACKEND={var} --wal-backend {flag:?}: {used} in use, expected {expected:?}"
        );
        assert!(broker.sigterm().success());
    }
}

/// A sync setting from the environment (a container image's, a service
/// unit's) stopped a broker started with `--wal-enabled false`: it now starts,
/// its log warning that the variable is ignored. Both from the environment,
/// the start is refused, naming the sync variable.
#[test]
fn wal_enabled_false_on_the_command_line_starts_despite_a_sync_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut broker = Broker::start_env(
        &data,
        &["--wal-enabled", "false"],
        &[("STREAMLINE_WAL_SYNC_MODE", "every_write")],
    );
    let log = broker.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("ignoring STREAMLINE_WAL_SYNC_MODE = \"every_write\"")),
        "{log}"
    );
    assert!(!data.join("wal").exists(), "the WAL is off");
    assert!(broker.sigterm().success());

    let refused = tmp.path().join("refused");
    broker_support::assert_refused_at_start_env(
        &refused,
        &[],
        &[
            ("STREAMLINE_WAL_ENABLED", "false"),
            ("STREAMLINE_WAL_SYNC_MODE", "every_write"),
        ],
        "STREAMLINE_WAL_SYNC_MODE = \"every_write\"",
    );
    broker_support::assert_refused_at_start_env(
        &refused,
        &["--wal-sync-ms", "10"],
        &[("STREAMLINE_WAL_ENABLED", "false")],
        "--wal-sync-ms",
    );
}

/// The codec of every batch of a segment log file, in order.
fn stored_codecs(log: &std::path::Path) -> Vec<u8> {
    let bytes = std::fs::read(log).unwrap();
    let mut at = 0;
    let mut codecs = Vec::new();
    while at + 61 <= bytes.len() {
        let len = i32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        codecs.push(bytes[at + 22] & 0x07);
        at += 12 + len;
    }
    codecs
}

/// kcat (librdkafka 2.0.2 here) compresses with gzip and snappy: librdkafka up
/// to 2.11 turns them off against a broker whose lowest listed Produce version
/// is above 0, and this one listed v3 (Kafka 4.0 lists v0, refusing v0-v2
/// when sent). The batches were stored uncompressed.
#[test]
fn kcat_compresses_with_gzip_and_snappy() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--default-partitions", "1"]);
    for codec in ["gzip", "snappy"] {
        let input = (0..20)
            .map(|i| format!("{codec}-{i}-{}\n", "compressible ".repeat(20)))
            .collect::<String>();
        kcat(
            &[
                "-P",
                "-b",
                &broker.addr,
                "-t",
                "squeezed",
                "-z",
                codec,
                "-X",
                "acks=all",
            ],
            input.as_bytes(),
        );
    }
    let log = tmp
        .path()
        .join("data/topics/squeezed/0")
        .join(format!("{:020}.log", 0));
    let codecs: std::collections::BTreeSet<u8> = stored_codecs(&log).into_iter().collect();
    assert_eq!(
        codecs,
        [1, 2].into(),
        "gzip and snappy batches, as kcat compressed them"
    );
    assert_eq!(consume_all(&broker.addr, "squeezed")[&0].len(), 40);
}

/// Batches compressed with each codec by librdkafka 2.16 (confluent-kafka)
/// are stored as produced and read back by kcat.
#[test]
fn compressed_batches_round_trip_with_every_codec() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--default-partitions", "1"]);
    let mut expected = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let prefix = format!("{codec}-{}", "compressible ".repeat(20));
        let out = python_client_env(
            "kafka_client.py",
            &["produce", &broker.addr, "zipped", "30", "1", &prefix],
            &[("COMPRESSION", codec)],
        );
        assert_eq!(records(&out, "ACK").len(), 30, "{out}");
        expected.extend((0..30).map(|i| format!("{prefix}-{i}")));
    }
    let log = tmp
        .path()
        .join("data/topics/zipped/0")
        .join(format!("{:020}.log", 0));
    let codecs: std::collections::BTreeSet<u8> = stored_codecs(&log).into_iter().collect();
    assert_eq!(
        codecs,
        (0..=4).collect(),
        "every codec stored as the producer compressed it"
    );
    let got = consume_all(&broker.addr, "zipped");
    let values: Vec<String> = got[&0].iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(
        values, expected,
        "every codec's batches come back as produced"
    );
    let offsets: Vec<i64> = got[&0].iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..expected.len() as i64).collect::<Vec<_>>());
    // A consumer starting inside a compressed batch gets the right records.
    let out = kcat(
        &[
            "-C",
            "-b",
            &broker.addr,
            "-t",
            "zipped",
            "-p",
            "0",
            "-o",
            "75",
            "-c",
            "2",
            "-q",
            "-f",
            "%o:%s\n",
        ],
        b"",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, format!("75:{}\n76:{}\n", expected[75], expected[76]));
}
