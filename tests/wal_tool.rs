//! `streamline-wal inspect | dump | verify` on healthy, torn and corrupt directories.

use std::{path::Path, process::Command};

use bytes::Bytes;
use streamline::wal::{clean_close::CLEAN_CLOSE_FILE, BackendKind, SyncMode, Wal, WalConfig};

fn tool(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_streamline-wal"))
        .args(args)
        .output()
        .expect("run streamline-wal");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// 120 entries over several 64 KiB files; checkpoint at 10 (retention keeps them all).
fn make_wal(dir: &Path) {
    let cfg = WalConfig {
        backend: BackendKind::Std,
        sync_mode: SyncMode::EveryWrite,
        max_file_size: WalConfig::MIN_FILE_SIZE,
        retention_files: 100,
        max_batch_bytes: 4096,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(dir, cfg).unwrap();
    for i in 0..120u32 {
        wal.append(
            "orders",
            (i % 3) as i32,
            Bytes::from(format!("entry-{i}-{}", "x".repeat(1500))),
        )
        .wait()
        .unwrap();
    }
    wal.checkpoint(10).unwrap();
    wal.close().unwrap();
}

#[test]
fn inspect_dump_and_verify_a_healthy_wal() {
    let dir = tempfile::tempdir().unwrap();
    make_wal(dir.path());
    let d = dir.path().to_str().unwrap();

    let (code, out, err) = tool(&["inspect", d]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("checkpoint  sequence 10"), "{out}");
    assert!(out.contains("last close  clean: file "), "{out}");
    assert!(
        out.contains("00000001.wal") && out.contains("current.wal"),
        "{out}"
    );
    assert!(
        out.contains("sealed") && out.contains("bytes free"),
        "{out}"
    );

    let (code, out, err) = tool(&["dump", d, "--from", "100", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 21);
    assert_eq!(lines[0]["sequence"], 100);
    assert_eq!(lines[0]["topic"], "orders");
    assert_eq!(lines[0]["partition"], 0); // entry index 99
    let data = hex_decode(lines[0]["data_hex"].as_str().unwrap());
    assert!(data.starts_with(b"entry-99-xxx"));

    let (code, out, _) = tool(&["dump", d]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 120);
    assert!(out.lines().next().unwrap().starts_with("seq=1 "), "{out}");

    let (code, out, err) = tool(&["verify", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("ok: ") && out.contains("120 entries"),
        "{out}"
    );
}

/// [`make_wal`] with a byte flipped inside the third batch (block 3) of
/// archived file `name`.
fn damaged_in_third_batch_of(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    make_wal(dir.path());
    let victim = dir.path().join(name);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[3 * 4096 + 100] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();
    dir
}

/// Damage past the checkpoint: the count of entries before it that a
/// tolerant open would replay leaves out the ones the checkpoint covers
/// (before, only the count of all of them was given, so an operator could
/// not tell how many unapplied entries were at stake).
#[test]
fn verify_counts_the_entries_before_damage_after_the_checkpoint() {
    let dir = damaged_in_third_batch_of("00000002.wal");
    let (code, out, err) = tool(&["verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("recoverable before it: "))
        .unwrap_or_else(|| panic!("{out}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    // All of file 1's entries and two of file 2's, of which all but the 10
    // the checkpoint covers.
    assert_eq!(numbers.len(), 3, "{line}");
    assert!(numbers[0] > 12, "{line}");
    assert_eq!(numbers[1], numbers[0] - 10, "{line}");
    assert_eq!(numbers[2], 10, "{line}");
}

#[test]
fn verify_names_file_offset_and_recoverable_count_of_corruption() {
    let dir = damaged_in_third_batch_of("00000001.wal");
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tool(&["verify", d]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("CORRUPT: ") && out.contains("00000001.wal at byte offset 12288"),
        "{out}"
    );
    // One closed-loop producer: one entry per batch; blocks 1 and 2 are
    // intact, and the checkpoint (10) covers both: a tolerant open would
    // replay none of them.
    assert!(
        out.contains("recoverable before it: 2 entries, 0 of them after the checkpoint (10)"),
        "{out}"
    );
    let (code, _, err) = tool(&["inspect", d]);
    assert_eq!(code, 1);
    assert!(
        err.contains("corrupt data in") && err.contains(".wal") && err.contains("verify"),
        "{err}"
    );
}

#[test]
fn verify_accepts_a_torn_tail_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    make_wal(dir.path());
    let d = dir.path().to_str().unwrap();
    // Garble the last batch of current.wal: an interrupted, never-synced write.
    let cur = dir.path().join("current.wal");
    let info = newest_file(dir.path());
    let mut bytes = std::fs::read(&cur).unwrap();
    let last_batch = info.valid_end as usize - 4096;
    bytes[last_batch + 200] ^= 1;
    std::fs::write(&cur, &bytes).unwrap();
    // As after a crash: no clean-close marker (which would prove the batch synced).
    std::fs::remove_file(dir.path().join(CLEAN_CLOSE_FILE)).unwrap();
    let (code, out, err) = tool(&["verify", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("torn write at byte"), "{out}");
}

/// Asserts that `verify` reports damage before the end the last clean close
/// recorded (exit 1) and that `Wal::open` refuses the log; returns the report.
fn assert_lost_synced_data(dir: &Path, case: &str) -> String {
    let (code, out, err) = tool(&["verify", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{case}: {out}{err}");
    assert!(
        out.contains("CORRUPT: ") && out.contains("last clean close"),
        "{case}: {out}"
    );
    assert!(
        matches!(
            Wal::open(dir, WalConfig::default()),
            Err(streamline::Error::Corrupt { .. })
        ),
        "{case}: the WAL opened over lost synced data"
    );
    out
}

/// After a clean close everything before the recorded end was fdatasynced: a lost
/// or damaged last batch is damage to synced data, reported, not a torn tail.
#[test]
fn verify_reports_damage_before_the_end_a_clean_close_recorded() {
    for damage in ["zeroed", "flipped"] {
        let dir = tempfile::tempdir().unwrap();
        make_wal(dir.path());
        assert!(dir.path().join(CLEAN_CLOSE_FILE).exists());
        let cur = dir.path().join("current.wal");
        let info = newest_file(dir.path());
        let mut bytes = std::fs::read(&cur).unwrap();
        let last_batch = info.valid_end as usize - 4096;
        match damage {
            "zeroed" => bytes[last_batch..last_batch + 4096].fill(0),
            _ => bytes[last_batch + 200] ^= 1,
        }
        std::fs::write(&cur, &bytes).unwrap();
        let out = assert_lost_synced_data(dir.path(), damage);
        assert!(
            out.contains(&format!("at byte offset {last_batch}")),
            "{damage}: {out}"
        );
    }
}

/// A `current.wal` cut short after a clean close (a partial copy, a truncation)
/// lost batches the close had fdatasynced, whether the cut fell on a batch
/// boundary, inside a batch's first block or further inside a batch: `verify`
/// reports it and `Wal::open` refuses it. A tolerant open goes on at the cut,
/// and the log it leaves opens strictly, with what it appended.
#[test]
fn a_current_file_cut_short_after_a_clean_close_is_corruption() {
    for into_last_batch in [0u64, 1000, 5000] {
        let dir = tempfile::tempdir().unwrap();
        make_wal(dir.path());
        let cur = dir.path().join("current.wal");
        // A last batch of three blocks, after the clean close's reopen.
        let last_batch = newest_file(dir.path()).valid_end;
        let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
        wal.append("orders", 0, Bytes::from(vec![7u8; 10_000]))
            .wait()
            .unwrap();
        wal.close().unwrap();
        let info = newest_file(dir.path());
        assert_eq!(info.valid_end, last_batch + 3 * 4096);
        // The 10,000-byte entry is lost; the one before it is kept.
        let kept = info.next_sequence.unwrap() - 2;
        let cut = last_batch + into_last_batch;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&cur)
            .unwrap()
            .set_len(cut)
            .unwrap();
        assert_lost_synced_data(dir.path(), &format!("cut at {cut}"));
        let tolerant = WalConfig {
            recovery_mode: streamline::wal::RecoveryMode::TolerateCorruption,
            ..WalConfig::default()
        };
        let (wal, _) = Wal::open(dir.path(), tolerant).unwrap();
        let seq = wal
            .append("orders", 0, Bytes::from_static(b"after the cut"))
            .wait()
            .unwrap();
        assert_eq!(seq, kept + 1, "cut at {cut}");
        wal.close().unwrap();
        let (wal, rec) = Wal::open(dir.path(), WalConfig::default()).unwrap();
        let got: Vec<_> = rec.map(|e| e.unwrap()).collect();
        let last = got.last().unwrap();
        assert_eq!(
            (last.sequence, &last.data[..]),
            (seq, &b"after the cut"[..]),
            "cut at {cut}"
        );
        wal.close().unwrap();
    }
}

/// A WAL a process has open changes under a scan (rotation, retention): the tool
/// refuses it rather than report damage that is not there.
#[test]
fn a_wal_in_use_is_refused_and_checked_once_closed() {
    let dir = tempfile::tempdir().unwrap();
    make_wal(dir.path());
    let d = dir.path().to_str().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    for cmd in ["verify", "inspect", "dump"] {
        let (code, out, err) = tool(&[cmd, d]);
        assert_eq!(code, 2, "{cmd}: {out}{err}");
        assert!(err.contains("in use by a running process"), "{cmd}: {err}");
        // A copy made file by file while it runs is no better than the
        // directory itself: the message sends no one to make one.
        assert!(
            err.contains("stop it first") && !err.contains("copy the directory"),
            "{cmd}: {err}"
        );
    }
    wal.close().unwrap();
    let (code, out, err) = tool(&["verify", d]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn usage_and_read_errors_exit_2() {
    let (code, _, err) = tool(&["verify"]);
    assert_eq!(code, 2, "{err}");
    // A directory that cannot be read is an I/O error for every command.
    for cmd in ["verify", "inspect", "dump"] {
        let (code, _, err) = tool(&[cmd, "/nonexistent/streamline-wal-dir"]);
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(
            err.contains("/nonexistent/streamline-wal-dir"),
            "{cmd}: {err}"
        );
    }
}

/// `verify data`, the broker's data directory instead of its `data/wal`, said
/// `ok: 0 files, 0 entries` and exited 0, as for an empty WAL. A directory
/// holding no WAL file, checkpoint or clean-close record is refused now by
/// every command (exit 2), with a hint when it has a `wal` directory.
#[test]
fn a_directory_that_holds_no_wal_is_refused() {
    let data = tempfile::tempdir().unwrap();
    make_wal(&data.path().join("wal"));
    let d = data.path().to_str().unwrap();
    for cmd in ["verify", "inspect", "dump"] {
        let (code, out, err) = tool(&[cmd, d]);
        assert_eq!(code, 2, "{cmd}: {out}{err}");
        assert!(err.contains("not a WAL directory"), "{cmd}: {err}");
        assert!(err.contains(&format!("{d}/wal")), "{cmd}: {err}");
    }
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = tool(&["verify", empty.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not a WAL directory") && !err.contains("keeps its WAL"),
        "{err}"
    );
    let (code, out, err) = tool(&["verify", &format!("{d}/wal")]);
    assert_eq!(code, 0, "{out}{err}");
    // A file that only ends in `.wal` makes no WAL directory; an archived
    // file alone does (the tool then judges it).
    let stray = tempfile::tempdir().unwrap();
    std::fs::write(stray.path().join("notes.wal"), b"not a WAL").unwrap();
    let (code, _, err) = tool(&["verify", stray.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a WAL directory"), "{err}");
    let archived = tempfile::tempdir().unwrap();
    std::fs::copy(
        data.path().join("wal").join("current.wal"),
        archived.path().join("00000001.wal"),
    )
    .unwrap();
    let (_, out, err) = tool(&["verify", archived.path().to_str().unwrap()]);
    assert!(!err.contains("not a WAL directory"), "{out}{err}");
    assert!(
        out.contains("00000001.wal") || err.contains("00000001.wal"),
        "{out}{err}"
    );
}

/// Output cut short is an error (exit 2, naming what failed), so `dump DIR >
/// file` on a full disk does not pass for a complete dump; a reader that goes
/// away (`dump DIR | head -1`) ends the dump quietly.
#[test]
fn output_that_cannot_be_written_fails_except_into_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    make_wal(dir.path());
    let d = dir.path().to_str().unwrap();
    for args in [
        &["dump", d][..],
        &["dump", d, "--format", "json"],
        &["inspect", d],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full");
        let out = Command::new(env!("CARGO_BIN_EXE_streamline-wal"))
            .args(args)
            .stdout(full)
            .output()
            .expect("run streamline-wal");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("writing to standard output") && err.contains("No space left"),
            "{args:?}: {err}"
        );
    }

    // JSON lines with the data as hex: about 360 KB, far more than a pipe holds,
    // so the dump is still writing when the reader leaves.
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamline-wal"))
        .args(["dump", d, "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run streamline-wal");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["sequence"], 1);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `verify` printed its verdict with a panicking print: output it could not
/// write made it exit 101 (a panic) on a healthy or a corrupt WAL alike,
/// where the exit codes say 2. Into a reader that went away its verdict (0 or
/// 1) is its exit code, as for the other commands.
#[test]
fn verify_answers_by_its_exit_code_whatever_happens_to_its_output() {
    let healthy = tempfile::tempdir().unwrap();
    make_wal(healthy.path());
    let corrupt = tempfile::tempdir().unwrap();
    make_wal(corrupt.path());
    let info = newest_file(corrupt.path());
    let cur = corrupt.path().join("current.wal");
    let mut bytes = std::fs::read(&cur).unwrap();
    bytes[info.valid_end as usize - 4096 + 200] ^= 1;
    std::fs::write(&cur, &bytes).unwrap();
    for (dir, verdict) in [(healthy.path(), 0), (corrupt.path(), 1)] {
        let run = |stdout: std::process::Stdio| {
            Command::new(env!("CARGO_BIN_EXE_streamline-wal"))
                .args(["verify", dir.to_str().unwrap()])
                .stdout(stdout)
                .output()
                .expect("run streamline-wal")
        };
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full");
        let out = run(full.into());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "verdict {verdict}: {err}");
        assert!(
            err.contains("writing to standard output") && err.contains("No space left"),
            "verdict {verdict}: {err}"
        );
        // A pipe whose reader is gone before anything is written.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = run(writer.into());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(verdict), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// What a scan finds of the WAL's newest file.
fn newest_file(dir: &Path) -> streamline::wal::FileInfo {
    streamline::wal::WalReader::open(dir)
        .unwrap()
        .scan()
        .files
        .last()
        .unwrap()
        .clone()
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// [`tool`] with a time limit: `None` when it had to be killed.
fn tool_within(args: &[&str], limit: std::time::Duration) -> Option<(i32, String)> {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamline-wal"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run streamline-wal");
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Some((status.code().unwrap_or(-1), err));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A FIFO at a WAL name (the lock, the checkpoint, the clean-close record, a
/// WAL file) made every command wait forever for a writer, and a link to
/// `/dev/zero` read until memory ran out: each is an error naming the file
/// now (exit 2).
#[cfg(unix)]
#[test]
fn a_special_file_at_a_wal_name_is_an_error_not_a_wait() {
    let names = [
        "LOCK",
        "checkpoint.json",
        CLEAN_CLOSE_FILE,
        "current.wal",
        "00000001.wal",
    ];
    for name in names {
        for special in ["fifo", "/dev/zero"] {
            let dir = tempfile::tempdir().unwrap();
            make_wal(dir.path());
            let path = dir.path().join(name);
            assert!(path.exists(), "{name}: the WAL has no such file");
            std::fs::remove_file(&path).unwrap();
            if special == "fifo" {
                let made = Command::new("mkfifo").arg(&path).status().unwrap();
                assert!(made.success(), "mkfifo {}", path.display());
            } else {
                std::os::unix::fs::symlink(special, &path).unwrap();
            }
            let d = dir.path().to_str().unwrap();
            for cmd in ["verify", "inspect"] {
                let (code, err) = tool_within(&[cmd, d], std::time::Duration::from_secs(20))
                    .unwrap_or_else(|| {
                        panic!("{cmd} with a {special} at {name}: still waiting after 20 s")
                    });
                assert_eq!(code, 2, "{cmd} with a {special} at {name}: {err}");
                assert!(
                    err.contains(name) && err.contains("not a regular file"),
                    "{cmd} with a {special} at {name}: {err}"
                );
            }
        }
    }
}

/// The WAL's own open takes its lock and syncs its active file with write
/// opens, which wait for a FIFO's reader: a FIFO at `LOCK` or `current.wal`
/// hung the broker's start. Both are errors naming the file now.
#[cfg(unix)]
#[test]
fn the_wal_open_refuses_a_fifo_at_its_lock_or_active_file() {
    for name in ["LOCK", "current.wal"] {
        let dir = tempfile::tempdir().unwrap();
        make_wal(dir.path());
        let path = dir.path().join(name);
        std::fs::remove_file(&path).unwrap();
        let made = Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(made.success(), "mkfifo {}", path.display());
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(Wal::open(&d, WalConfig::default()).map(drop));
        });
        let opened = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("a FIFO at {name}: the open still waits after 20 s"));
        let err = opened.expect_err(name).to_string();
        assert!(
            err.contains(name) && err.contains("not a regular file"),
            "{name}: {err}"
        );
    }
}

/// `inspect` printed whatever `clean-close.json` held as the log's close,
/// though the scan believes only a record naming the newest file (one copied
/// from another WAL names another), and printed an unreadable one as "not
/// recorded".
#[test]
fn inspect_shows_a_clean_close_record_only_as_the_open_takes_it() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    make_wal(a.path());
    make_wal(b.path());
    let (code, out, err) = tool(&["inspect", a.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("last close  clean: file"), "{out}");

    std::fs::copy(
        b.path().join(CLEAN_CLOSE_FILE),
        a.path().join(CLEAN_CLOSE_FILE),
    )
    .unwrap();
    let (code, out, err) = tool(&["inspect", a.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("clean: file"), "{out}");
    assert!(out.contains("not the newest file: ignored"), "{out}");

    std::fs::write(a.path().join(CLEAN_CLOSE_FILE), b"{").unwrap();
    let (code, out, err) = tool(&["inspect", a.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("unreadable, damaged or of another version: ignored"),
        "{out}"
    );
}

/// A checkpoint past the end of the log (its files retired, or lost): the
/// open goes on after the checkpoint, and `inspect` said the next sequence
/// was the log's, `verify` nothing.
#[test]
fn a_checkpoint_past_the_log_gives_the_next_sequence_the_open_takes() {
    let dir = tempfile::tempdir().unwrap();
    make_wal(dir.path());
    streamline::wal::checkpoint::store(dir.path(), 1000).unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = tool(&["inspect", d]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sequences   last 120 next 1001"), "{out}");
    let (code, out, err) = tool(&["verify", d]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("goes on at sequence 1001, not 121"), "{out}");
    let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    let seq = wal.append("t", 0, Bytes::from_static(b"x")).wait().unwrap();
    assert_eq!(seq, 1001);
    wal.close().unwrap();
}

/// A topic is printed escaped, as the data is: the WAL takes any name, and
/// one holding a line break forged a line of `dump`'s text, which promises
/// one entry per line.
#[test]
fn dump_text_escapes_topics() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    for _ in 0..3 {
        wal.append(
            "a\nseq=99 ts=0 type=record topic=evil",
            0,
            Bytes::from_static(b"x"),
        )
        .wait()
        .unwrap();
    }
    wal.close().unwrap();
    let (code, out, err) = tool(&["dump", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(!out.contains("\nseq=99"), "{out}");
}
