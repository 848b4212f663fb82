//! On a real filesystem: a small ext4 image mounted through a loop device (needs
//! root, `mkfs.ext4` and loop devices; CI runs as root).
//!
//! Full disk: the WAL fills it until appends fail; every producer then gets an
//! error carrying ENOSPC, nothing acknowledged is lost, and after space is freed
//! the WAL reopens, recovers everything and accepts appends again. Both backends.
//!
//! A filesystem shut down under the WAL (`EXT4_IOC_SHUTDOWN`, as xfstests'
//! `godown` does): from that moment every write and fsync fails with EIO. Every
//! producer still waiting gets an error, none is acknowledged after it, and after
//! a remount recovery returns everything acknowledged (`every_write`) or a clean
//! prefix (`interval`) reaching at least the durable sequence the WAL reported
//! just before the shutdown, never data that was not appended. Both backends.
//!
//! A new log's first file: `Wal::open` zero-fills its head, the preparer thread the
//! rest, and the two never write the same block; a fill a crash cut short resumes
//! at the next open (ext4 reports a reserved but unwritten extent as a hole, which
//! tells the two kinds of block apart).

mod loop_fs;

use std::{
    collections::BTreeMap,
    os::unix::fs::FileExt,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use loop_fs::LoopFs;
use streamline::wal::{
    files::{self, TailFill, FIRST_FILE_HEAD},
    BackendKind, SyncMode, Wal, WalConfig,
};

fn config(backend: BackendKind) -> WalConfig {
    WalConfig {
        backend,
        sync_mode: SyncMode::EveryWrite,
        max_file_size: 512 * 1024,
        retention_files: 1000,
        max_batch_bytes: 64 * 1024,
        ..WalConfig::default()
    }
}

fn data(p: u64, i: u64) -> Vec<u8> {
    let len = 1000 + (p * 7919 + i * 104_729) % 3000;
    (0..len).map(|j| (p * 31 + i * 17 + j) as u8).collect()
}

fn fill_until_enospc(dir: &Path, backend: BackendKind) -> BTreeMap<u64, Vec<u8>> {
    let (wal, _) = Wal::open(dir, config(backend)).unwrap();
    assert_eq!(wal.backend(), backend, "requested backend not in use");
    let acked = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for p in 0..4u64 {
            let (wal, acked) = (&wal, &acked);
            s.spawn(move || {
                let mut failed = false;
                for i in 0.. {
                    let d = data(p, i);
                    match wal.append("full", p as i32, Bytes::from(d.clone())).wait() {
                        Ok(seq) => {
                            assert!(!failed, "append acknowledged after an earlier failure");
                            acked.lock().unwrap().insert(seq, d);
                        }
                        Err(e) => {
                            assert_eq!(
                                e.raw_os_error(),
                                Some(libc::ENOSPC),
                                "producer {p}: error does not carry ENOSPC: {e}"
                            );
                            assert!(e.to_string().contains("No space left on device"), "{e}");
                            if failed {
                                break; // a second append after the failure also failed
                            }
                            failed = true;
                        }
                    }
                    assert!(i < 1_000_000, "the disk never filled up");
                }
            });
        }
    });
    let cause = wal.failure().expect("the WAL did not latch the failure");
    assert_eq!(cause.raw_os_error(), Some(libc::ENOSPC), "{cause}");
    let _ = wal.close();
    acked.into_inner().unwrap()
}

fn check_recovered(dir: &Path, backend: BackendKind, acked: &BTreeMap<u64, Vec<u8>>) -> Wal {
    let (wal, rec) = Wal::open(dir, config(backend))
        .unwrap_or_else(|e| panic!("reopen after freeing space: {e}"));
    let entries = rec.collect::<Result<Vec<_>, _>>().unwrap();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1, "sequences not contiguous");
    }
    for (seq, d) in acked {
        let e = entries
            .get(*seq as usize - 1)
            .unwrap_or_else(|| panic!("acknowledged seq {seq} lost"));
        assert_eq!(&e.data[..], &d[..], "seq {seq} garbled");
    }
    wal
}

#[test]
fn full_ext4_fails_appends_with_enospc_and_recovers_after_space_is_freed() {
    for backend in [BackendKind::Std, BackendKind::Uring] {
        let fs = LoopFs::new(8);
        // Ballast to free later; the WAL fills the rest.
        let ballast = fs.mount.join("ballast");
        std::fs::write(&ballast, vec![0xAA; 2 << 20]).unwrap();
        let dir = fs.mount.join("wal");
        let acked = fill_until_enospc(&dir, backend);
        assert!(
            acked.len() > 100,
            "{backend}: only {} appends before the disk filled",
            acked.len()
        );

        // Still full: recovery must not mistake the failure for corruption.
        match Wal::open(&dir, config(backend)) {
            Ok((wal, rec)) => {
                assert!(rec.last_sequence >= *acked.keys().last().unwrap());
                drop(wal);
            }
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(libc::ENOSPC),
                "{backend}: reopen on a full disk: {e}"
            ),
        }

        std::fs::remove_file(&ballast).unwrap();
        let wal = check_recovered(&dir, backend, &acked);
        let last = *acked.keys().last().unwrap();
        let seq = wal
            .append("full", 9, Bytes::from_static(b"after free"))
            .wait()
            .unwrap_or_else(|e| panic!("{backend}: append after freeing space: {e}"));
        assert!(seq > last);
        wal.close().unwrap();
        let wal = check_recovered(&dir, backend, &acked);
        wal.close().unwrap();
        eprintln!(
            "full disk {backend}: {} acknowledged before ENOSPC, none lost",
            acked.len()
        );
    }
}

/// A next file whose preparation fails for want of space is removed, not
/// left holding the blocks its reservation got: ext4 keeps what a failed
/// `fallocate` allocated, all the free space there was, and the file stayed
/// until the WAL's next open, failing writes elsewhere on the disk (a topic's
/// directory, the recovery points) meanwhile.
#[test]
fn a_next_file_that_does_not_fit_is_removed_with_its_reservation() {
    let fs = LoopFs::new(8);
    let dir = fs.mount.join("wal");
    std::fs::create_dir(&dir).unwrap();
    for prealloc in [files::Prealloc::ZeroFill, files::Prealloc::Reserve] {
        let r = files::prepare_file(&dir, 2, 64 << 20, prealloc);
        assert!(
            matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENOSPC)),
            "{prealloc:?}: {r:?}"
        );
        assert!(
            !dir.join(files::NEXT_TMP).exists() && !dir.join(files::NEXT).exists(),
            "{prealloc:?}: the file was left"
        );
        // The space its reservation got is free again.
        let ballast = fs.mount.join("ballast");
        std::fs::write(&ballast, vec![0xAA; 4 << 20])
            .unwrap_or_else(|e| panic!("{prealloc:?}: {e}"));
        std::fs::remove_file(&ballast).unwrap();
    }
}

/// Where the first hole at or after 0 is: the first block that is reserved but
/// was never written, or the file's size.
fn first_hole(path: &Path) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    files::first_unwritten(&f).unwrap_or_else(|| {
        panic!(
            "lseek(SEEK_HOLE) {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )
    })
}

#[test]
fn a_new_logs_first_file_is_zero_filled_in_part_then_in_the_background_even_after_a_crash() {
    let fs = LoopFs::new(256);
    let size = 32u64 << 20;

    // Preparing the first file writes its head only: the rest is a hole.
    let dir = fs.mount.join("parts");
    std::fs::create_dir(&dir).unwrap();
    let (prepared, zeroed) = files::prepare_head(&dir, 1, size).unwrap();
    assert_eq!(zeroed, FIRST_FILE_HEAD);
    assert_eq!(std::fs::metadata(&prepared).unwrap().len(), size);
    assert_eq!(first_hole(&prepared), FIRST_FILE_HEAD);

    // A fill stopped before it starts writes nothing, and never touches a block
    // the commit thread has written since.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&prepared)
        .unwrap();
    let marker = vec![0xA5u8; 4096];
    f.write_all_at(&marker, zeroed).unwrap();
    f.sync_data().unwrap();
    let fill = TailFill::new(zeroed);
    fill.stop();
    files::fill_tail(&f, &prepared, size, &fill).unwrap();
    assert_eq!(fill.zeroed_through(), zeroed);
    assert_eq!(first_hole(&prepared), zeroed + 4096);
    let mut read_back = vec![0u8; 4096];
    std::fs::File::open(&prepared)
        .unwrap()
        .read_exact_at(&mut read_back, zeroed)
        .unwrap();
    assert_eq!(read_back, marker);

    // A fill left alone writes every block up to the end.
    let fill = TailFill::new(zeroed + 4096);
    files::fill_tail(&f, &prepared, size, &fill).unwrap();
    assert_eq!(fill.zeroed_through(), size);
    assert_eq!(first_hole(&prepared), size);
    std::fs::File::open(&prepared)
        .unwrap()
        .read_exact_at(&mut read_back, zeroed)
        .unwrap();
    assert_eq!(read_back, marker);

    // Through `Wal::open`, on both backends: the preparer thread finishes the
    // zero-fill while the WAL serves appends, and everything acknowledged is there.
    // Then again for an active file whose fill a crash cut short right after it was
    // made (only its head written): the next open resumes the fill.
    for backend in [BackendKind::Std, BackendKind::Uring] {
        // `interval` writes through the page cache: nothing drops the pages the
        // recovery scan cached before the open looks for the first hole.
        for (cut_short, mode) in [
            (false, SyncMode::EveryWrite),
            (true, SyncMode::EveryWrite),
            (true, SyncMode::Interval),
        ] {
            let dir = fs.mount.join(format!("wal-{backend}-{cut_short}-{mode}"));
            if cut_short {
                std::fs::create_dir(&dir).unwrap();
                let (p, _) = files::prepare_head(&dir, 1, size).unwrap();
                std::fs::rename(p, dir.join("current.wal")).unwrap();
                assert_eq!(first_hole(&dir.join("current.wal")), FIRST_FILE_HEAD);
            }
            let cfg = WalConfig {
                max_file_size: size,
                sync_mode: mode,
                ..config(backend)
            };
            let (wal, rec) = Wal::open(&dir, cfg.clone()).unwrap();
            assert_eq!(rec.count(), 0);
            let mut acked = BTreeMap::new();
            for i in 0..200 {
                let seq = wal.append("z", 0, Bytes::from(data(0, i))).wait().unwrap();
                acked.insert(seq, data(0, i));
            }
            let current = dir.join("current.wal");
            let deadline = Instant::now() + Duration::from_secs(60);
            while first_hole(&current) < size {
                assert!(
                    Instant::now() < deadline,
                    "{backend} {mode} (cut short: {cut_short}): {} still has a hole at {} of {size} after 60 s",
                    current.display(),
                    first_hole(&current)
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            wal.close().unwrap();
            check_recovered(&dir, backend, &acked).close().unwrap();
            // Room on the small image for the next round's two 32 MiB files.
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

/// A payload that names its producer and index, so that any recovered entry can be
/// checked against what was appended.
fn tagged(p: u64, i: u64) -> Vec<u8> {
    let mut d = i.to_le_bytes().to_vec();
    d.extend(data(p, i));
    d
}

#[test]
fn a_filesystem_shut_down_under_the_wal_fails_waiting_appends_and_keeps_every_ack() {
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    };
    for backend in [BackendKind::Std, BackendKind::Uring] {
        for mode in [SyncMode::EveryWrite, SyncMode::Interval] {
            let fs = LoopFs::new(64);
            let dir = fs.mount.join("wal");
            // Small files, so that rotations (and the preparer's writes) run too.
            let cfg = WalConfig {
                sync_mode: mode,
                sync_interval_ms: 5,
                ..config(backend)
            };
            let (wal, _) = Wal::open(&dir, cfg.clone()).unwrap();
            assert_eq!(wal.backend(), backend, "requested backend not in use");
            let acked = Arc::new(Mutex::new(BTreeMap::new()));
            let count = Arc::new(AtomicUsize::new(0));
            let shut = Arc::new(AtomicBool::new(false));
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            for p in 0..4u64 {
                let (wal, acked, count, shut, done_tx) = (
                    wal.clone(),
                    Arc::clone(&acked),
                    Arc::clone(&count),
                    Arc::clone(&shut),
                    done_tx.clone(),
                );
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    for i in 0.. {
                        let d = tagged(p, i);
                        match wal.append("down", p as i32, Bytes::from(d.clone())).wait() {
                            Ok(seq) => {
                                assert!(
                                    errors.is_empty(),
                                    "producer {p}: append acknowledged after an earlier failure"
                                );
                                acked.lock().unwrap().insert(seq, d);
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                errors.push(e);
                                if errors.len() == 2 {
                                    break; // a second append after the failure failed too
                                }
                            }
                        }
                        assert!(
                            i < 10_000_000,
                            "producer {p}: no failure after the shutdown"
                        );
                    }
                    done_tx
                        .send((p, errors, shut.load(Ordering::Acquire)))
                        .unwrap();
                });
            }
            drop(done_tx);
            // Until a sync has made some of the appends durable too (one runs
            // every 5 ms in `interval` mode), so that the durable check below
            // has entries to hold.
            let deadline = Instant::now() + Duration::from_secs(60);
            while count.load(Ordering::Relaxed) < 2_000 || wal.durable_sequence() == 0 {
                assert!(
                    Instant::now() < deadline,
                    "{backend} {mode}: appends too slow, or none made durable"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            // What the WAL reports durable is on the disk: the shutdown (which
            // drops whatever the file system had not written) cannot take it.
            let durable = wal.durable_sequence();
            shut.store(true, Ordering::Release);
            fs.shut_down();
            for _ in 0..4 {
                let (p, errors, shut_before) = done_rx
                    .recv_timeout(Duration::from_secs(60))
                    .unwrap_or_else(|_| {
                        panic!("{backend} {mode}: a producer still waits 60 s after the shutdown")
                    });
                assert!(
                    shut_before,
                    "{backend} {mode}: producer {p} failed before the shutdown: {errors:?}"
                );
                // The first failure carries the filesystem's EIO; the WAL then
                // answers every later append with its latched failure.
                let first = &errors[0];
                assert_eq!(
                    first.raw_os_error(),
                    Some(libc::EIO),
                    "{backend} {mode}: producer {p}: first error does not carry EIO: {first}"
                );
                assert!(
                    errors[1].to_string().contains("Input/output error"),
                    "{}",
                    errors[1]
                );
            }
            let cause = wal.failure().expect("the WAL did not latch the failure");
            assert_eq!(cause.raw_os_error(), Some(libc::EIO), "{cause}");
            assert!(
                wal.append("down", 0, Bytes::from_static(b"late"))
                    .wait()
                    .is_err(),
                "{backend} {mode}: an append after the failure succeeded"
            );
            assert!(
                wal.close().is_err(),
                "{backend} {mode}: close reported success on a dead filesystem"
            );

            fs.remount();
            let acked = std::mem::take(&mut *acked.lock().unwrap());
            let (wal, rec) = Wal::open(&dir, cfg)
                .unwrap_or_else(|e| panic!("{backend} {mode}: reopen after the shutdown: {e}"));
            let mut recovered = 0u64;
            for (n, e) in rec.enumerate() {
                let e = e.unwrap_or_else(|err| panic!("{backend} {mode}: recovery: {err}"));
                assert_eq!(
                    e.sequence,
                    n as u64 + 1,
                    "{backend} {mode}: sequences not contiguous"
                );
                // Recovery never invents data: each entry is what its producer appended.
                let p = u64::try_from(e.partition).unwrap();
                let i = u64::from_le_bytes(e.data[..8].try_into().unwrap());
                assert_eq!(
                    &e.data[..],
                    &tagged(p, i)[..],
                    "{backend} {mode}: seq {} garbled",
                    e.sequence
                );
                if let Some(d) = acked.get(&e.sequence) {
                    assert_eq!(
                        &e.data[..],
                        &d[..],
                        "{backend} {mode}: seq {} is not what was acknowledged",
                        e.sequence
                    );
                }
                recovered = e.sequence;
            }
            let last_acked = *acked.keys().last().unwrap();
            assert!(
                recovered >= durable,
                "{backend} {mode}: the WAL reported {durable} durable before the shutdown, recovered only {recovered}"
            );
            if mode == SyncMode::EveryWrite {
                assert!(
                    recovered >= last_acked,
                    "{backend} {mode}: acknowledged up to {last_acked}, recovered only {recovered}"
                );
            }
            let seq = wal
                .append("down", 9, Bytes::from(tagged(9, 0)))
                .wait()
                .unwrap_or_else(|e| panic!("{backend} {mode}: append after the remount: {e}"));
            assert_eq!(seq, recovered + 1);
            wal.close().unwrap();
            eprintln!(
                "shutdown {backend} {mode}: {} acknowledged (last {last_acked}), durable {durable} before the shutdown, {recovered} recovered",
                acked.len()
            );
        }
    }
}
