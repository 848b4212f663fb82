//! Engine bugs found by the fault tests, each pinned by a minimal deterministic case
//! (`--features sim`).

use std::{sync::mpsc, time::Duration};

use bytes::Bytes;
use streamline::wal::{
    format::{decode_batch_header, BatchKind, BLOCK_SIZE},
    recovery::scan_file,
    sim::{Fault, SimDisk, SimPlan},
    BackendKind, RecoveryMode, SyncMode, Wal, WalConfig,
};

fn interval_config() -> WalConfig {
    WalConfig {
        backend: BackendKind::Std,
        sync_mode: SyncMode::Interval,
        // Long enough that no interval fsync runs during the test.
        sync_interval_ms: 600_000,
        max_file_size: WalConfig::MIN_FILE_SIZE,
        max_batch_bytes: 4096,
        ..WalConfig::default()
    }
}

/// An `interval` WAL holding one acknowledged entry, on a disk whose first
/// fdatasync (the final one of a close) fails.
fn one_entry_whose_sync_fails() -> (tempfile::TempDir, SimDisk, Wal) {
    let dir = tempfile::tempdir().unwrap();
    let disk = SimDisk::new(SimPlan {
        seed: 1,
        crash_after_ops: None,
        fault: Some((0, Fault::SyncEio)),
        short_write_pct: 0,
    });
    let (wal, _rec) = Wal::open_sim(dir.path(), interval_config(), &disk).unwrap();
    wal.append("t", 0, Bytes::from_static(b"written, not yet synced"))
        .wait()
        .unwrap();
    (dir, disk, wal)
}

/// A failed fdatasync during close must make `close` return the error, promptly.
/// (It used to hang: the commit thread answered the close, then waited forever for
/// requests from the very handle that was joining it.)
#[test]
fn close_after_failed_final_fsync_returns_the_error() {
    let (_dir, disk, wal) = one_entry_whose_sync_fails();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(wal.close());
    });
    let closed = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("close hung after a failed fdatasync");
    let err = closed.expect_err("close reported success although its fdatasync failed");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(disk.injected().is_some());
}

/// A second `close()` while the first is still syncing waits for its outcome:
/// when the final fdatasync fails, both report the failure. Before, the second
/// found the commit thread taken and, with no failure latched yet, reported
/// success at once, for entries whose sync then failed.
#[test]
fn a_close_during_another_close_reports_its_failed_final_sync() {
    let (_dir, disk, wal) = one_entry_whose_sync_fails();
    disk.hold_syncs();
    let (tx, rx) = mpsc::channel();
    let first = {
        let (wal, tx) = (wal.clone(), tx.clone());
        std::thread::spawn(move || tx.send(("first", wal.close())).unwrap())
    };
    while !disk.sync_held() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let begun = wal.clone();
    let second = std::thread::spawn(move || tx.send(("second", wal.close())).unwrap());
    // Once the second close has begun, time for it to answer if it does not
    // wait for the first (a sleep alone let a late second close find the
    // failure latched, and pass with the bug back).
    while begun.closes_begun() < 2 {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(200));
    disk.release_syncs();
    for _ in 0..2 {
        let (who, closed) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a close hung");
        closed.expect_err(&format!(
            "the {who} close reported success for a failed sync"
        ));
    }
    first.join().unwrap();
    second.join().unwrap();
    assert!(disk.injected().is_some());
}

/// The seal that ends a file must not claim, in `synced_through`, entries whose
/// fdatasync has not completed: a power loss could keep the seal's sector and drop
/// an earlier unsynced batch, and recovery would then refuse to open the WAL
/// ("zeroed block ...; a valid batch follows") instead of cutting the torn tail.
/// The seal's own durable write covers only the seal, so the engine syncs what is
/// before it first: after a power loss right behind a rotation, the archived file
/// is complete and the WAL opens.
#[test]
fn seal_does_not_claim_unsynced_entries_as_durable() {
    for seed in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let disk = plain_disk_seeded(seed);
        let (wal, _rec) = Wal::open_sim(dir.path(), interval_config(), &disk).unwrap();
        let mut last = 0;
        while wal.stats().rotations == 0 {
            last = wal
                .append("t", 0, Bytes::from(vec![7u8; 3000]))
                .wait()
                .unwrap();
        }
        disk.crash_now();
        drop(wal);
        disk.power_loss(false).unwrap();

        let archived = dir.path().join("00000001.wal");
        let info = scan_file(&archived, Some(1), false, None, RecoveryMode::Strict).unwrap();
        let seal_at = info.valid_end - BLOCK_SIZE as u64;
        let bytes = std::fs::read(&archived).unwrap();
        let seal = decode_batch_header(&bytes[seal_at as usize..], info.id()).unwrap();
        assert_eq!(seal.kind, BatchKind::Seal, "seed {seed}");
        assert_eq!(seal.synced_through, seal.first_sequence - 1, "seed {seed}");
        let (_wal, rec) = Wal::open(dir.path(), interval_config())
            .unwrap_or_else(|e| panic!("seed {seed}: reopen after power loss: {e}"));
        let n = rec.collect::<Result<Vec<_>, _>>().unwrap().len() as u64;
        assert!(
            n >= seal.first_sequence - 1 && n <= last,
            "seed {seed}: recovered {n} entries, sealed {}, acknowledged {last}",
            seal.first_sequence - 1
        );
    }
}

/// The append whose arrival triggers a rotation that fails must get the I/O error,
/// like every other producer. (It used to get "WAL is closed": its request was
/// dropped unanswered when the rotation returned the error.)
#[test]
fn append_that_triggers_a_failing_rotation_gets_the_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        sync_mode: SyncMode::EveryWrite,
        ..interval_config()
    };
    // One 3000-byte entry per block: 14 batches fill a 64 KiB file (header block and
    // seal block aside), so operation 14 (counting from 0) is the seal of rotation.
    let disk = SimDisk::new(SimPlan {
        seed: 1,
        crash_after_ops: None,
        fault: Some((14, Fault::WriteEio)),
        short_write_pct: 0,
    });
    let (wal, _rec) = Wal::open_sim(dir.path(), cfg, &disk).unwrap();
    for i in 0..14 {
        wal.append("t", 0, Bytes::from(vec![i; 3000]))
            .wait()
            .unwrap();
    }
    let err = wal
        .append("t", 0, Bytes::from(vec![14; 3000]))
        .wait()
        .expect_err("append after a failed seal succeeded");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "the producer got {err}"
    );
    assert!(disk.injected().is_some_and(|i| i.fault == Fault::WriteEio));
}

/// A `sync()` that arrives while another fdatasync is in flight must still be
/// answered. (It used to wait for the next request to wake the idle commit thread,
/// forever if none came: concurrent `sync()` callers hung.)
#[test]
fn concurrent_syncs_are_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SimDisk::new(SimPlan::plain(7));
    let (wal, _rec) = Wal::open_sim(dir.path(), interval_config(), &disk).unwrap();
    syncs_answered(&wal);
}

/// The same on the real io_uring backend, where an fdatasync stays in flight while
/// the commit thread takes the next request.
#[test]
fn concurrent_syncs_are_all_answered_uring() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _rec) = Wal::open(
        dir.path(),
        WalConfig {
            backend: BackendKind::Uring,
            ..interval_config()
        },
    )
    .unwrap();
    assert_eq!(wal.backend(), BackendKind::Uring);
    syncs_answered(&wal);
}

fn syncs_answered(wal: &Wal) {
    let (tx, rx) = mpsc::channel();
    // Each round leaves batches in flight, then asks for two syncs a moment apart
    // and goes quiet until they are answered: a stranded sync hangs the round.
    let w = wal.clone();
    std::thread::spawn(move || {
        for round in 0..300u32 {
            let appends: Vec<_> = (0..4)
                .map(|_| w.append("t", 0, Bytes::from(vec![1; 100])))
                .collect();
            let first = w.sync();
            for _ in 0..round % 50 {
                std::hint::spin_loop();
            }
            let second = w.sync();
            appends.into_iter().for_each(|c| {
                c.wait().unwrap();
            });
            first.wait().unwrap();
            second.wait().unwrap();
        }
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("a sync() was never answered");
    assert!(wal.durable_sequence() >= 1);
}

fn plain_disk() -> SimDisk {
    plain_disk_seeded(7)
}

/// A simulated disk without faults or a crash point, its power loss drawn from `seed`.
fn plain_disk_seeded(seed: u64) -> SimDisk {
    SimDisk::new(SimPlan::plain(seed))
}

/// The model itself: a power loss keeps the entries of the last directory fsync
/// plus the chosen prefix of the changes made since, and refuses changes after
/// the simulated crash.
#[test]
fn power_loss_undoes_directory_changes_made_since_the_last_directory_fsync() {
    use streamline::wal::files;
    for keep in 0..=2 {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("wal");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a"), b"a").unwrap();
        let disk = plain_disk();
        disk.watch_dir(&dir).unwrap();
        files::write_atomic(&dir.join("checkpoint.json"), b"{}").unwrap(); // fsyncs the directory
        files::rename(&dir.join("a"), &dir.join("b")).unwrap();
        files::rename(&dir.join("b"), &dir.join("c")).unwrap();
        disk.power_loss_keeping(false, Some(keep)).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let expect = ["a", "b", "c"][keep];
        assert_eq!(names, vec![expect, "checkpoint.json"], "keeping {keep}");
        assert_eq!(std::fs::read(dir.join(expect)).unwrap(), b"a");
        assert_eq!(disk.stats().meta_ops_undone, 2 - keep as u64);
        assert!(!root.path().join("wal.sim-ns").exists(), "shadow removed");
    }

    let dir = tempfile::tempdir().unwrap();
    let disk = plain_disk();
    disk.watch_dir(dir.path()).unwrap();
    disk.crash_now();
    let e = files::write_atomic(&dir.path().join("checkpoint.json"), b"{}").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(!dir.path().join("checkpoint.tmp").exists());
}

/// The model of files written outside the backend: their writes are cached per
/// sector like the backend's, a power loss gives every unsynced sector its durable
/// content or its written one (never anything else), a synced file keeps what was
/// written, and writes fail after the simulated crash.
#[test]
fn power_loss_rolls_back_unsynced_writes_made_outside_the_backend() {
    use std::fs::OpenOptions;
    use streamline::wal::{files, sim::SECTOR};
    let (old, new) = (vec![1u8; 8 * SECTOR], vec![2u8; 8 * SECTOR]);
    let mut reverted = 0;
    for seed in 0..16 {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("wal");
        std::fs::create_dir(&dir).unwrap();
        let (synced, unsynced) = (dir.join("synced"), dir.join("unsynced"));
        for p in [&synced, &unsynced] {
            std::fs::write(p, &old).unwrap(); // durable: written before the watch
        }
        let disk = plain_disk_seeded(seed);
        disk.watch_dir(&dir).unwrap();
        for p in [&synced, &unsynced] {
            let f = OpenOptions::new().write(true).open(p).unwrap();
            files::write_at(&f, p, 0, &new).unwrap();
            if p == &synced {
                files::sync_file(&f, p, true).unwrap();
            }
        }
        assert_eq!(disk.stats().outside_writes, 2);
        disk.power_loss(false).unwrap();
        assert_eq!(std::fs::read(&synced).unwrap(), new, "seed {seed}: synced");
        let got = std::fs::read(&unsynced).unwrap();
        let mut this_seed = 0;
        for (i, sector) in got.chunks(SECTOR).enumerate() {
            assert!(
                sector == &old[..SECTOR] || sector == &new[..SECTOR],
                "seed {seed}: sector {i} is neither its durable nor its written content"
            );
            this_seed += u64::from(sector == &old[..SECTOR]);
        }
        assert_eq!(disk.stats().outside_sectors_rolled_back, this_seed);
        reverted += this_seed;
    }
    assert!(reverted > 0, "no unsynced sector was ever rolled back");

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, &old).unwrap();
    let disk = plain_disk();
    disk.watch_dir(dir.path()).unwrap();
    disk.crash_now();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    let e = files::write_at(&f, &p, 0, &new).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(
        std::fs::read(&p).unwrap(),
        old,
        "a write after the crash changed the file"
    );
}

/// A retired file is renamed to `recycle-N.wal` and later rewritten as another
/// file's `next.wal`. If the rewrite could reach the disk while the retiring rename
/// did not, a power loss would bring back `0000000N.wal` holding a header of
/// another file, and recovery would refuse the directory as corrupt. The preparer
/// now fsyncs the directory before it touches a recycled file's header.
#[test]
fn a_recycled_file_is_rewritten_only_after_its_retirement_is_durable() {
    use streamline::wal::{
        files::{self, Prealloc},
        format::decode_file_header,
    };
    let size = WalConfig::MIN_FILE_SIZE;
    for keep in [0, 1, 2, 3] {
        let root = tempfile::tempdir().unwrap();
        let (dir, archived) = archived_file_three(root.path());

        let disk = plain_disk();
        disk.watch_dir(&dir).unwrap();
        // Retire (a checkpoint covered it), then prepare file 7 before the
        // checkpoint's own directory fsync: the preparer runs concurrently.
        files::retire(&dir, &archived, 3, size).unwrap();
        let next = files::prepare_file(&dir, 7, size, Prealloc::ZeroFill).unwrap();
        assert_eq!(
            decode_file_header(&std::fs::read(&next).unwrap()[..BLOCK_SIZE])
                .unwrap()
                .file_number,
            7,
            "the recycled file was reused"
        );
        disk.power_loss_keeping(false, Some(keep)).unwrap();
        archived_file_three_survives(&dir, &archived, keep);
    }
}

/// A WAL directory in `root` holding file 3 under its archived name, durably:
/// the directory and the archived file's path.
fn archived_file_three(root: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use streamline::wal::files::{self, Prealloc};
    let dir = root.join("wal");
    std::fs::create_dir(&dir).unwrap();
    let p = files::prepare_file(&dir, 3, WalConfig::MIN_FILE_SIZE, Prealloc::ZeroFill).unwrap();
    let archived = files::archived_path(&dir, 3);
    files::rename(&p, &archived).unwrap();
    files::sync_dir(&dir).unwrap();
    (dir, archived)
}

/// After a power loss that kept `keep` directory changes: file 3, if back under
/// its archived name, still has its own header, and the directory opens.
fn archived_file_three_survives(dir: &std::path::Path, archived: &std::path::Path, keep: usize) {
    use streamline::wal::format::decode_file_header;
    if archived.exists() {
        let h = decode_file_header(&std::fs::read(archived).unwrap()[..BLOCK_SIZE]).unwrap();
        assert_eq!(
            h.file_number, 3,
            "keeping {keep} changes: 00000003.wal came back with the header of file {}",
            h.file_number
        );
    }
    // Whatever survived, the directory opens.
    let (wal, _) =
        Wal::open(dir, interval_config()).unwrap_or_else(|e| panic!("keeping {keep}: {e}"));
    wal.close().unwrap();
}

/// The directory fsync after a recycled file was renamed to `next.wal.tmp` failed
/// (a process short of file descriptors): the file stayed under that name, and the
/// next preparation opened it again (the same inode), truncated it and wrote the
/// next file's header, its retirement still not durable; a power loss could then
/// bring `00000003.wal` back holding file 7's header, which refuses every start.
/// The file now goes back under its recycled name, and a preparation never
/// writes into a file it finds left under the temporary name.
#[test]
fn a_recycled_file_whose_retirement_fsync_failed_is_not_rewritten_by_the_next_try() {
    use streamline::wal::{
        files::{self, Prealloc},
        format::decode_file_header,
    };
    let size = WalConfig::MIN_FILE_SIZE;
    for keep in [0, 1, 2, 3, 4, 5] {
        let root = tempfile::tempdir().unwrap();
        let (dir, archived) = archived_file_three(root.path());

        let disk = plain_disk();
        disk.watch_dir(&dir).unwrap();
        files::retire(&dir, &archived, 3, size).unwrap();
        disk.fail_next_dir_sync();
        assert!(files::prepare_file(&dir, 7, size, Prealloc::ZeroFill).is_err());
        let next = files::prepare_file(&dir, 7, size, Prealloc::ZeroFill).unwrap();
        assert_eq!(
            decode_file_header(&std::fs::read(&next).unwrap()[..BLOCK_SIZE])
                .unwrap()
                .file_number,
            7
        );
        disk.power_loss_keeping(false, Some(keep)).unwrap();
        archived_file_three_survives(&dir, &archived, keep);
    }
}

/// The model of the watched directory's own entry: a directory `watch_dir` had to
/// create (as a run that died before fsyncing its parent left it) vanishes with a
/// power loss in some seeds and stays in others, until its parent is fsynced.
#[test]
fn a_directory_whose_parent_was_never_fsynced_may_vanish_with_a_power_loss() {
    use streamline::wal::files;
    let (mut vanished, mut stayed) = (0, 0);
    for seed in 1..=32 {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("wal");
        let disk = plain_disk_seeded(seed);
        disk.watch_dir(&dir).unwrap();
        files::write_atomic(&dir.join("checkpoint.json"), b"{}").unwrap(); // fsyncs `dir`, not its parent
        disk.power_loss(false).unwrap();
        let st = disk.stats();
        assert!(!st.dir_entry_durable, "seed {seed}");
        assert_eq!(st.dir_vanished, !dir.exists(), "seed {seed}");
        if st.dir_vanished {
            vanished += 1;
        } else {
            stayed += 1;
            assert_eq!(std::fs::read(dir.join("checkpoint.json")).unwrap(), b"{}");
        }
    }
    assert!(
        vanished > 0 && stayed > 0,
        "vanished {vanished}, stayed {stayed}"
    );

    for seed in 1..=8 {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("wal");
        let disk = plain_disk_seeded(seed);
        disk.watch_dir(&dir).unwrap();
        files::sync_dir(root.path()).unwrap();
        disk.power_loss(false).unwrap();
        assert!(disk.stats().dir_entry_durable, "seed {seed}");
        assert!(
            dir.exists(),
            "seed {seed}: vanished after its parent was fsynced"
        );
    }
}

/// A WAL directory that exists but whose entry an earlier run never made durable
/// (it died between `mkdir` and the parent's fsync): opening the WAL fsyncs the
/// parent, so entries acknowledged afterwards survive a power loss.
#[test]
fn opening_a_wal_makes_its_directory_entry_durable_even_when_it_exists() {
    for seed in 1..=16 {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("wal");
        let disk = plain_disk_seeded(seed);
        let cfg = WalConfig {
            sync_mode: SyncMode::EveryWrite,
            ..interval_config()
        };
        // open_sim watches `dir` first, which creates it with its entry not durable.
        let (wal, _) = Wal::open_sim(&dir, cfg.clone(), &disk).unwrap();
        let seq = wal
            .append("t", 0, Bytes::from_static(b"acknowledged"))
            .wait()
            .unwrap();
        disk.crash_now();
        drop(wal);
        disk.power_loss(false).unwrap();
        assert!(disk.stats().dir_entry_durable, "seed {seed}");
        let (wal, rec) = Wal::open(&dir, cfg).unwrap();
        let entries: Vec<_> = rec.collect::<Result<_, _>>().unwrap();
        assert_eq!(entries.len(), 1, "seed {seed}: acknowledged entry lost");
        assert_eq!(entries[0].sequence, seq);
        assert_eq!(&entries[0].data[..], b"acknowledged");
        wal.close().unwrap();
    }
}

/// A process killed before it fsynced the directory after renames (a rotation's,
/// or the preparer's `next.wal`) leaves changes a power loss can still undo. The
/// next process must make them durable when it opens, before it acknowledges
/// anything: it may continue in the file such a rename made `current.wal`, and
/// a power loss undoing the rename would take its entries away (the file
/// returns as a blank prepared `next.wal`). Before, an open that continued in
/// `current.wal` fsynced the directory only when something of its own changed.
#[test]
fn an_open_after_a_kill_makes_the_dead_processs_directory_changes_durable() {
    let cfg = WalConfig {
        sync_mode: SyncMode::EveryWrite,
        ..interval_config()
    };
    let mut pending_seen = 0;
    for armed_after in 0..8u64 {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("wal");
        let disk = plain_disk_seeded(armed_after);
        let (wal, _) = Wal::open_sim(&dir, cfg.clone(), &disk).unwrap();
        let payload = Bytes::from(vec![7u8; 1000]);
        for i in 0.. {
            if i == armed_after {
                disk.crash_at_next_dir_sync();
            }
            if wal.append("t", 0, payload.clone()).wait().is_err() {
                break;
            }
            assert!(i < 10_000, "no directory fsync in 10,000 appends");
        }
        assert!(disk.crashed());
        drop(wal);
        disk.restart();
        let pending = disk.pending_dir_changes();
        pending_seen += pending;

        let syncs = disk.stats().dir_syncs;
        let (wal, _) = Wal::open_sim_restarted(&dir, cfg.clone(), &disk).unwrap();
        // The preparer the open starts leaves the directory to the next
        // rotation's fsync: the open itself must make it durable.
        assert!(
            disk.stats().dir_syncs > syncs,
            "armed after {armed_after}: the open left {pending} changes of the dead process pending"
        );
        let acked: Vec<(u64, Bytes)> = (0..5u8)
            .map(|i| {
                let data = Bytes::from(vec![i; 100]);
                (wal.append("t", 1, data.clone()).wait().unwrap(), data)
            })
            .collect();
        disk.crash_now();
        drop(wal);
        disk.power_loss_keeping(false, Some(0)).unwrap();
        let (wal, rec) = Wal::open(&dir, cfg.clone()).unwrap();
        let entries: Vec<_> = rec.collect::<Result<_, _>>().unwrap();
        for (seq, data) in &acked {
            let found = entries.iter().find(|e| e.sequence == *seq);
            assert_eq!(
                found.map(|e| &e.data),
                Some(data),
                "armed after {armed_after}: acknowledged entry {seq} lost"
            );
        }
        wal.close().unwrap();
    }
    assert!(pending_seen > 0, "no run left a directory change pending");
}

/// A panic on the commit thread (a bug; injected in a write) must not leave a
/// producer waiting or report success. The appends the thread held fail, so do
/// producers waiting for capacity (the held appends' bytes are never released; they
/// used to wait until someone closed the WAL) and every later append, `close` on
/// every handle reports the panic, and the log reopens with every acknowledged
/// append, in a contiguous prefix, after a power loss.
#[test]
fn a_panicking_commit_thread_fails_every_waiter_and_the_close() {
    use std::sync::{Arc, Mutex};
    use streamline::Error;
    fn is_panic(e: &Error) -> bool {
        matches!(e, Error::Failed { cause } if matches!(**cause, Error::CommitThreadPanicked))
    }
    for seed in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let disk = SimDisk::new(SimPlan {
            seed,
            crash_after_ops: None,
            fault: Some((20 + seed * 3, Fault::Panic)),
            short_write_pct: 20,
        });
        let cfg = WalConfig {
            sync_mode: SyncMode::EveryWrite,
            max_file_size: 256 * 1024,
            max_batch_bytes: 8 * 1024,
            // A few appends fill it: producers wait for capacity when the thread dies.
            max_pending_bytes: 8 * 1024,
            ..interval_config()
        };
        let (wal, _rec) = Wal::open_sim(dir.path(), cfg.clone(), &disk).unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for t in 0..6u8 {
            let (wal, acked, tx) = (wal.clone(), Arc::clone(&acked), tx.clone());
            std::thread::spawn(move || {
                for i in 0u32.. {
                    let data = Bytes::from(vec![t ^ i as u8; 3000 + usize::from(t) * 100]);
                    match wal.append("t", 0, data.clone()).wait() {
                        Ok(seq) => acked.lock().unwrap().push((seq, data)),
                        Err(e) => {
                            let _ = tx.send(e);
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);
        for _ in 0..6 {
            let e = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("seed {seed}: a producer still waits"));
            assert!(is_panic(&e), "seed {seed}: a producer got {e}");
        }
        assert_eq!(disk.injected().map(|i| i.fault), Some(Fault::Panic));
        let later = wal.append("t", 0, Bytes::from_static(b"x")).wait();
        assert!(
            matches!(&later, Err(e) if is_panic(e)),
            "seed {seed}: {later:?}"
        );
        let other = wal.clone();
        let e = wal.close().expect_err("close reported success");
        assert!(is_panic(&e), "seed {seed}: close gave {e}");
        let e = other.close().expect_err("second close reported success");
        assert!(is_panic(&e), "seed {seed}: second close gave {e}");

        disk.power_loss(false).unwrap();
        let (wal, rec) = Wal::open(dir.path(), cfg).unwrap();
        let got: Vec<_> = rec.collect::<Result<Vec<_>, _>>().unwrap();
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.sequence, i as u64 + 1, "seed {seed}: not contiguous");
        }
        let acked = acked.lock().unwrap();
        assert!(
            !acked.is_empty(),
            "seed {seed}: nothing acknowledged before the panic"
        );
        for (seq, data) in acked.iter() {
            let e = got
                .get(*seq as usize - 1)
                .unwrap_or_else(|| panic!("seed {seed}: acknowledged {seq} lost"));
            assert_eq!(&e.data, data, "seed {seed}: entry {seq}");
        }
        wal.close().unwrap();
    }
}

/// `interval`: the period counts from the start of the last fdatasync, so one
/// runs every `sync_interval_ms` however long each takes (up to its own length).
/// Before, it counted from the end of the last one, and a slow device got one
/// every interval plus the sync's own time: data stayed unsynced longer than
/// the interval promised.
#[test]
fn interval_syncs_start_one_interval_apart_however_long_each_takes() {
    const INTERVAL_MS: u64 = 200;
    const LATENCY_MS: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let disk = plain_disk_seeded(3);
    disk.slow_syncs(Duration::from_millis(LATENCY_MS));
    let config = WalConfig {
        sync_interval_ms: INTERVAL_MS,
        max_file_size: 16 << 20,
        ..interval_config()
    };
    let (wal, _rec) = Wal::open_sim(dir.path(), config, &disk).unwrap();
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        wal.append("t", 0, Bytes::from_static(b"steady"))
            .wait()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let starts = disk.sync_submit_times();
    wal.close().unwrap();
    let mut gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_millis())
        .collect();
    assert!(gaps.len() >= 4, "{} syncs in 2.5 s", starts.len());
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    // One interval apart (plus the commit thread's wake-up); counted from each
    // sync's end they are at least INTERVAL_MS + LATENCY_MS apart.
    assert!(
        median < u128::from(INTERVAL_MS + LATENCY_MS - 20),
        "median gap between fdatasync starts {median} ms: {gaps:?}"
    );
}
