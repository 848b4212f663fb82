//! The broker on a filesystem that fills up (a small ext4 image on a loop device;
//! needs root, `mkfs.ext4` and loop devices; CI runs as root).
//!
//! Produces with acks=all until the disk is full: the failing produce gets
//! `KAFKA_STORAGE_ERROR` with a message that says why, never an acknowledgement
//! for data that is not stored; the broker keeps answering other requests and
//! serving every acknowledged record; it shuts down cleanly; and once space is
//! freed a restart serves every acknowledged record at its offset, invents none,
//! and accepts produces again. The same when the filesystem fails under the broker
//! (EIO from every write and fsync).
//!
//! The broker's log sits beside its data directory (see `Broker::start`), on the
//! same filesystem, so writing the log fails too: a log line that cannot be written
//! must not take a thread down with it. The last test makes that deterministic with
//! a log on `/dev/full`.
#![cfg(target_os = "linux")]

mod broker_support;
mod loop_fs;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use broker_support::{
    kcat_from_start,
    wire::{self, connect},
    Broker,
};
use loop_fs::LoopFs;

const TOPIC: &str = "fill";
const VALUE_LEN: usize = 64 * 1024;

/// The value of record `i`: its number, then filler derived from it.
fn value(i: u64) -> String {
    let mut v = format!("{i:08}:");
    let fill = (b'a' + (i % 26) as u8) as char;
    v.extend(std::iter::repeat_n(fill, VALUE_LEN - v.len()));
    v
}

/// Produces record `i` with acks=all; the partition's error code, offset and message.
fn produce(addr: &str, i: u64) -> (i16, i64, String) {
    let req = wire::produce(TOPIC, 0, wire::batch(&[&value(i)]));
    let mut c = connect(addr);
    let r = wire::send_produce(&mut c, 9, 1, &req);
    let p = &r.responses[0].partition_responses[0];
    let msg = p
        .error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    (p.error_code, p.base_offset, msg)
}

/// Metadata for the topic (creating it when `create`); its error code.
fn metadata(addr: &str, create: bool) -> i16 {
    wire::topic_metadata(&mut connect(addr), TOPIC, create)
}

/// Every record of the partition, offset → value, read with a real client.
fn consume(addr: &str) -> BTreeMap<i64, String> {
    kcat_from_start(addr, TOPIC, Some(0)).into_iter().collect()
}

/// After a restart: every acknowledged record (offset → record number) is served at
/// its offset, offsets are contiguous from 0, every value is one of records
/// `0..=last_sent` (nothing invented), and a new record is appended at the next
/// offset.
fn check_restarted(addr: &str, acked: &BTreeMap<i64, u64>, last_sent: u64, what: &str) {
    let seen = consume(addr);
    for (&offset, &i) in acked {
        assert_eq!(
            seen.get(&offset),
            Some(&value(i)),
            "{what}: offset {offset} after restart"
        );
    }
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (0..seen.len() as i64).collect::<Vec<_>>(),
        "{what}: offsets after recovery not contiguous"
    );
    let sent: Vec<String> = (0..=last_sent).map(value).collect();
    for (offset, v) in &seen {
        assert!(
            sent.contains(v),
            "{what}: offset {offset} holds a value never produced"
        );
    }
    let (code, offset, msg) = produce(addr, 1_000_000);
    assert_eq!(code, 0, "{what}: produce after restart: {msg}");
    assert_eq!(offset, seen.len() as i64, "{what}: offsets do not continue");
}

/// Free bytes on the filesystem holding `p`.
fn free_bytes(p: &Path) -> u64 {
    let st = statvfs(p);
    st.f_bavail * st.f_frsize
}

/// The file system statistics of the filesystem holding `p`.
fn statvfs(p: &Path) -> libc::statvfs {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st
}

#[test]
fn a_full_disk_fails_produces_with_a_storage_error_and_loses_no_acknowledged_record() {
    for mode in ["every_write", "interval"] {
        let fs = LoopFs::new(48);
        let data = fs.mount.join("data");
        let mut broker = Broker::start(&data, &["--segment-bytes", "1m", "--wal-sync-mode", mode]);
        assert_eq!(metadata(&broker.addr, true), 0, "{mode}: topic not created");

        // Leave ~6 MiB free: room for a few WAL files and segments, then full.
        let ballast = fs.mount.join("ballast");
        let keep = 6 << 20;
        let size = free_bytes(&fs.mount).saturating_sub(keep);
        let f = std::fs::File::create(&ballast).unwrap();
        // SAFETY: fallocate on an fd we own, with no pointers.
        let r = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                size as libc::off_t,
            )
        };
        assert_eq!(
            r,
            0,
            "fallocate ballast: {}",
            std::io::Error::last_os_error()
        );
        drop(f);

        let mut acked: BTreeMap<i64, u64> = BTreeMap::new();
        let mut failure = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0.. {
            assert!(
                Instant::now() < deadline,
                "{mode}: the disk never filled up"
            );
            let (code, offset, msg) = produce(&broker.addr, i);
            if code == 0 {
                assert!(
                    acked.insert(offset, i).is_none(),
                    "{mode}: offset {offset} given twice"
                );
            } else {
                failure = Some((i, code, msg));
                break;
            }
        }
        let (failed_at, code, msg) = failure.unwrap();
        assert_eq!(
            code, 56,
            "{mode}: KAFKA_STORAGE_ERROR expected, got {code}: {msg}"
        );
        assert!(
            msg.contains("No space left") || msg.contains("os error 28"),
            "{mode}: the error message does not say the disk is full: {msg}"
        );
        assert!(
            acked.len() >= 10,
            "{mode}: only {} acknowledged",
            acked.len()
        );
        assert_eq!(
            acked.keys().copied().collect::<Vec<_>>(),
            (0..acked.len() as i64).collect::<Vec<_>>(),
            "{mode}: acknowledged offsets not contiguous from 0"
        );

        // Still serving: metadata, and every acknowledged record.
        assert_eq!(
            metadata(&broker.addr, false),
            0,
            "{mode}: metadata after the failure"
        );
        let seen = consume(&broker.addr);
        for (&offset, &i) in &acked {
            assert_eq!(
                seen.get(&offset),
                Some(&value(i)),
                "{mode}: offset {offset} while full"
            );
        }
        // A later produce fails too, the same way, rather than hang or half-succeed.
        let (code, _, msg) = produce(&broker.addr, failed_at + 1);
        assert_eq!(
            code, 56,
            "{mode}: a produce after the failure: {code} {msg}"
        );

        // Storage failed: the shutdown makes no checkpoint, logs `broker
        // failed` and exits 1 (docs/broker.md).
        let status = broker.sigterm();
        assert_eq!(
            status.code(),
            Some(1),
            "{mode}: {status:?}; log:\n{}",
            broker.log_text()
        );

        // Free the space; a restart serves what was acknowledged, and nothing that was
        // not produced, and takes new records after it.
        std::fs::remove_file(&ballast).unwrap();
        let broker = broker.restart();
        check_restarted(&broker.addr, &acked, failed_at + 1, mode);
    }
}

#[test]
fn a_filesystem_shut_down_under_the_broker_keeps_every_acknowledged_record() {
    let fs = LoopFs::new(64);
    let data = fs.mount.join("data");
    let mut broker = Broker::start(
        &data,
        &["--segment-bytes", "1m", "--wal-sync-mode", "every_write"],
    );
    assert_eq!(metadata(&broker.addr, true), 0, "topic not created");

    // Two producers, one record in flight each, until their first error.
    let acked = std::sync::Mutex::new(BTreeMap::<i64, u64>::new());
    let errors = std::thread::scope(|s| {
        let producers: Vec<_> = (0..2u64)
            .map(|p| {
                let (addr, acked) = (&broker.addr, &acked);
                s.spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    for i in (p..).step_by(2) {
                        assert!(Instant::now() < deadline, "producer {p} never failed");
                        let (code, offset, msg) = produce(addr, i);
                        if code != 0 {
                            return (code, msg);
                        }
                        let dup = acked.lock().unwrap().insert(offset, i);
                        assert!(dup.is_none(), "offset {offset} given twice");
                    }
                    unreachable!()
                })
            })
            .collect();
        // Producers stop at their first error (or panic after 60 s): one
        // before the shutdown is a defect, not a wait without end.
        while acked.lock().unwrap().len() < 40 && !producers.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let reached = acked.lock().unwrap().len() >= 40;
        fs.shut_down();
        let errors = producers
            .into_iter()
            .map(|h| h.join().expect("producer panicked"))
            .collect::<Vec<_>>();
        assert!(
            reached,
            "the producers stopped before the file system was shut down: {errors:?}"
        );
        errors
    });
    for (code, msg) in &errors {
        assert_eq!(*code, 56, "KAFKA_STORAGE_ERROR expected, got {code}: {msg}");
        assert!(
            msg.contains("os error 5") || msg.contains("Input/output error"),
            "the error message does not carry the I/O error: {msg}"
        );
    }
    let acked = acked.into_inner().unwrap();
    assert_eq!(
        metadata(&broker.addr, false),
        0,
        "metadata after the failure"
    );
    let status = broker.sigterm();
    assert_eq!(
        status.code(),
        Some(1),
        "storage failed: the shutdown exits 1, {status:?}; log:\n{}",
        broker.log_text()
    );

    // As after a crash: unmount, mount, restart. Every acknowledged record is there
    // at its offset, and nothing that was never produced.
    fs.remount();
    let broker = broker.restart();
    let last = acked.values().max().copied().unwrap_or(0);
    check_restarted(&broker.addr, &acked, last + 2, "shutdown");
}

#[test]
fn a_log_that_cannot_be_written_does_not_stop_the_broker() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let tmp = tempfile::tempdir().unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    let mut child = Command::new(broker_support::broker_bin())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(["--wal-sync-mode", "every_write"])
        .env("STREAMLINE_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(full)
        .spawn()
        .expect("spawn streamline");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read stdout");
    let addr = line
        .trim()
        .strip_prefix("streamline listening on ")
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("broker did not start: {line:?} {:?}", child.wait());
        })
        .to_string();

    assert_eq!(metadata(&addr, true), 0, "metadata");
    for i in 0..20 {
        let (code, offset, msg) = produce(&addr, i);
        assert_eq!((code, offset), (0, i as i64), "produce {i}: {msg}");
    }
    let seen = consume(&addr);
    assert_eq!(seen.len(), 20);
    for (offset, v) in &seen {
        assert_eq!(*v, value(*offset as u64));
    }
    broker_support::signal(child.id(), "TERM");
    let status = broker_support::wait_timeout(&mut child, Duration::from_secs(30))
        .expect("broker did not exit within 30 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

/// The bytes of the `.log` files of partition 0 of `TOPIC` under `data`.
fn segment_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("topics").join(TOPIC).join("0"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Fills the file system of `path` to the last block a root process may take
/// (root may use the blocks ext4 keeps back from others) with a new file
/// there.
fn fill_to_the_last_block(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(path).unwrap();
    let mut end: libc::off_t = 0;
    for chunk in [1 << 20, 4096] {
        loop {
            // SAFETY: fallocate on an fd we own, with no pointers.
            let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, end, chunk) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "fallocate: {e}");
                break;
            }
            end += chunk;
        }
    }
    f.sync_all().unwrap();
}

/// Free bytes on the filesystem holding `p`, for root: with the blocks ext4
/// keeps back from other users.
fn free_bytes_for_root(p: &Path) -> u64 {
    let st = statvfs(p);
    st.f_bfree * st.f_frsize
}

/// Retention frees space on a full disk. A partition whose whole log has
/// expired rolls a new segment and writes its producer snapshot before the
/// expired segments go; on a disk filled by something else that write
/// failed, so every pass kept the files, and the one thing that could free
/// space never did (reproduced: 6 MB past `retention.ms` stayed as long as
/// the disk was full). The broker keeps a reserve of space for that.
#[test]
fn retention_frees_space_on_a_full_disk() {
    let fs = LoopFs::new(48);
    let data = fs.mount.join("data");
    let broker = Broker::start(
        &data,
        &[
            "--segment-bytes",
            "1m",
            "--log-retention-ms",
            "4000",
            "--log-retention-check-interval-ms",
            "200",
        ],
    );
    assert_eq!(metadata(&broker.addr, true), 0, "topic not created");
    // Timestamped now: the records expire 4 s from now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut c = connect(&broker.addr);
    for i in 0..96 {
        let records = wire::timed_batch(&[(now, &value(i))]);
        let r = wire::send_produce(&mut c, 9, 1, &wire::produce(TOPIC, 0, records));
        assert_eq!(wire::partition_result(&r), (0, i as i64), "produce {i}");
    }
    let held = segment_bytes(&data);
    assert!(held >= 6 << 20, "{held} bytes in segments");
    fill_to_the_last_block(&fs.mount.join("ballast"));
    let full = free_bytes_for_root(&fs.mount);

    // The records expire 4 s after they were produced; passes run every 200 ms.
    let deadline = Instant::now() + Duration::from_secs(30);
    while segment_bytes(&data) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        segment_bytes(&data),
        0,
        "the expired segments stayed on the full disk; log:\n{}",
        broker.log_text()
    );
    assert!(
        free_bytes_for_root(&fs.mount) >= full + (2 << 20),
        "{} bytes free, {full} when full",
        free_bytes_for_root(&fs.mount)
    );
    // Still serving: a new record takes the next offset.
    let (code, offset, msg) = produce(&broker.addr, 96);
    assert_eq!((code, offset), (0, 96), "produce after retention: {msg}");
}

/// DeleteRecords run to free space on a disk something else filled frees it:
/// its writes (the new log start's file, the producer snapshot of the
/// segments kept) get the broker's space reserve as retention's do. Before,
/// the start's file could not be written and the request was answered
/// KAFKA_STORAGE_ERROR with every segment kept.
#[test]
fn delete_records_frees_space_on_a_full_disk() {
    use kafka_protocol::{
        messages::{
            delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic},
            ApiKey, DeleteRecordsRequest, DeleteRecordsResponse, TopicName,
        },
        protocol::StrBytes,
    };
    let fs = LoopFs::new(48);
    let data = fs.mount.join("data");
    let broker = Broker::start(&data, &["--segment-bytes", "1m"]);
    assert_eq!(metadata(&broker.addr, true), 0, "topic not created");
    for i in 0..96 {
        let (code, offset, msg) = produce(&broker.addr, i);
        assert_eq!((code, offset), (0, i as i64), "produce {i}: {msg}");
    }
    let held = segment_bytes(&data);
    assert!(held >= 6 << 20, "{held} bytes in segments");
    fill_to_the_last_block(&fs.mount.join("ballast"));
    let full = free_bytes_for_root(&fs.mount);

    let req = DeleteRecordsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(0)
                .with_offset(-1)])]);
    let mut c = connect(&broker.addr);
    use std::io::Write;
    c.write_all(&wire::request_frame(ApiKey::DeleteRecords, 2, 7, &req))
        .unwrap();
    let (_, r): (i32, DeleteRecordsResponse) = wire::response(&mut c, ApiKey::DeleteRecords, 2);
    let p = &r.topics[0].partitions[0];
    assert_eq!(
        (p.error_code, p.low_watermark),
        (0, 96),
        "log:\n{}",
        broker.log_text()
    );
    assert!(
        segment_bytes(&data) < 1 << 20,
        "{} bytes in segments after the deletion",
        segment_bytes(&data)
    );
    assert!(
        free_bytes_for_root(&fs.mount) >= full + (4 << 20),
        "{} bytes free, {full} when full",
        free_bytes_for_root(&fs.mount)
    );
    // Still serving: a new record takes the next offset.
    let (code, offset, msg) = produce(&broker.addr, 96);
    assert_eq!((code, offset), (0, 96), "produce after the deletion: {msg}");
}
