//! `STREAMLINE_*` variables as the broker binary reads them from its
//! environment: values that are not UTF-8, and sync settings that
//! `--wal-enabled false` makes ignored.
#![cfg(unix)]

mod broker_support;

use std::{ffi::OsStr, os::unix::ffi::OsStrExt, process::Command, time::Duration};

use broker_support::{run, Broker};

/// A variable holding bytes that are not UTF-8 made clap print "invalid UTF-8
/// was detected in one or more arguments" and its usage, naming nothing. The
/// variable is now named, with its flag, as any other invalid value from a
/// variable; a path's variable, which need not be UTF-8, is not blamed; and
/// such a value typed on the command line is left to clap's message.
#[test]
fn a_variable_that_is_not_utf8_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join(OsStr::from_bytes(b"data-\xff"));
    let bad = OsStr::from_bytes(b"a\xff");
    let out = run(
        Command::new(broker_support::broker_bin())
            .env("STREAMLINE_DATA_DIR", &data)
            .env("STREAMLINE_MAX_CONNECTIONS", bad),
        b"",
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "STREAMLINE_MAX_CONNECTIONS = \"a\\xFF\" (the environment variable of \
             --max-connections): not valid UTF-8"
        ) && !err.contains("STREAMLINE_DATA_DIR"),
        "{err}"
    );
    assert!(!data.exists(), "nothing may be created on disk");

    let out = run(
        Command::new(broker_support::broker_bin())
            .env("STREAMLINE_DATA_DIR", &data)
            .arg("--max-connections")
            .arg(bad),
        b"",
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid UTF-8") && !err.contains("STREAMLINE_"),
        "{err}"
    );
    assert!(!data.exists(), "nothing may be created on disk");
}

/// `STREAMLINE_WAL_SYNC_MS=0` with `--wal-enabled false` on the command line
/// was announced as ignored, then refused (exit 2, "must be at least 1 in
/// interval mode"). The broker now starts, warning that it ignores it.
#[test]
fn an_ignored_sync_variable_the_broker_would_refuse_does_not_stop_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut broker = Broker::start_env(
        &data,
        &["--wal-enabled", "false"],
        &[("STREAMLINE_WAL_SYNC_MS", "0")],
    );
    let log = broker.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("ignoring STREAMLINE_WAL_SYNC_MS = \"0\"")),
        "{log}"
    );
    assert!(broker.sigterm().success());
}
