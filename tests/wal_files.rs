//! Rotation, retention, checkpoints, concurrency, limits and configuration errors.

mod common;

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use common::{append_payloads, config, open, payload, BACKENDS, WRITE_PATHS};
use streamline::{
    wal::{
        checkpoint, files::list_archived, recovery::scan_dir, BackendKind, RecoveryMode, SyncMode,
        Wal, WalConfig, WalReader,
    },
    Error,
};

#[test]
fn rotates_at_the_configured_size_and_retention_deletes_after_checkpoint() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::Interval);
        let (wal, _) = open(dir.path(), cfg.clone());
        let mut last = 0;
        for i in 0..400u64 {
            last = wal
                .append("r", 0, Bytes::from(payload(i, 3000)))
                .wait()
                .unwrap();
        }
        wal.sync().wait().unwrap();
        let archived = list_archived(dir.path()).unwrap();
        assert!(
            archived.len() >= 4,
            "{backend}: 1.2 MB into 256 KiB files should archive several, got {}",
            archived.len()
        );
        for (_, p) in &archived {
            assert_eq!(
                std::fs::metadata(p).unwrap().len(),
                cfg.max_file_size,
                "{backend}: files are preallocated to max_file_size"
            );
        }
        assert_eq!(
            std::fs::metadata(dir.path().join("current.wal"))
                .unwrap()
                .len(),
            cfg.max_file_size
        );
        // Files are numbered contiguously from 1.
        let numbers: Vec<u64> = archived.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
        // Each archived file was filled before it rotated: what it holds (its
        // seal included) ends less than a batch and two blocks (the seal's and
        // the one rotation keeps free) before max_file_size. (A scan of the
        // open WAL, which writes nothing meanwhile: a reader would be refused.)
        let scan = scan_dir(dir.path(), RecoveryMode::Strict).unwrap();
        assert_eq!(scan.files.len(), archived.len() + 1, "{backend}");
        for f in &scan.files[..archived.len()] {
            assert!(
                f.valid_end <= cfg.max_file_size
                    && f.valid_end + cfg.max_batch_bytes as u64 + 2 * 4096 >= cfg.max_file_size,
                "{backend}: file {} rotated at {} of {} bytes",
                f.number,
                f.valid_end,
                cfg.max_file_size
            );
        }

        // A checkpoint in the middle deletes only files wholly at or below it.
        let mid = last / 2;
        wal.checkpoint(mid).unwrap();
        let after = list_archived(dir.path()).unwrap();
        assert!(after.len() < archived.len(), "{backend}: nothing deleted");
        let scan = scan_dir(dir.path(), RecoveryMode::Strict).unwrap();
        let first = scan.files[0].first_sequence.unwrap();
        assert!(first <= mid + 1, "{backend}: a file above the checkpoint was deleted (log starts at {first}, checkpoint {mid})");

        // Checkpointing everything keeps exactly retention_files archived files.
        wal.checkpoint(last).unwrap();
        assert_eq!(
            list_archived(dir.path()).unwrap().len(),
            cfg.retention_files,
            "{backend}"
        );
        assert!(
            matches!(wal.checkpoint(last + 1), Err(Error::CheckpointAhead { .. })),
            "{backend}"
        );
        wal.close().unwrap();

        // Recovery returns only what follows the checkpoint.
        let (wal, rec) = open(dir.path(), cfg.clone());
        assert!(
            rec.is_empty(),
            "{backend}: {} entries after a full checkpoint",
            rec.len()
        );
        assert_eq!(
            wal.append("r", 0, Bytes::from_static(b"next"))
                .wait()
                .unwrap(),
            last + 1
        );
    }
}

#[test]
fn recovery_streams_entries_after_the_checkpoint_only() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        append_payloads(&wal, "c", 100, 500);
        wal.checkpoint(60).unwrap();
        drop(wal);
        let (_wal, rec) = open(dir.path(), cfg);
        assert_eq!(
            rec.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            (61..=100).collect::<Vec<_>>()
        );
        assert_eq!(&rec[0].data[..], &payload(60, 500)[..]);
    }
}

#[test]
fn entries_the_checkpoint_covers_stay_readable_while_their_files_are_kept() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        // 256 KiB files and ~4 KiB per entry: 200 entries fill several files.
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        append_payloads(&wal, "c", 200, 3000);
        wal.checkpoint(150).unwrap();
        drop(wal);
        let (_wal, rec) = Wal::open(dir.path(), cfg).unwrap();
        let seqs = |from: u64| -> Vec<u64> {
            rec.entries_from(from)
                .map(|e| e.unwrap().sequence)
                .collect()
        };
        // Retention kept one archived file behind the checkpoint: the log reaches
        // back to its first entry, not to 1.
        let oldest = seqs(1)[0];
        assert!(oldest > 1 && oldest <= 150, "{backend}: oldest {oldest}");
        assert_eq!(seqs(1), (oldest..=200).collect::<Vec<_>>(), "{backend}");
        assert_eq!(seqs(170), (170..=200).collect::<Vec<_>>(), "{backend}");
        let e = rec.entries_from(oldest + 3).next().unwrap().unwrap();
        assert_eq!(&e.data[..], &payload(oldest + 2, 3000)[..], "{backend}");
        // The recovery stream itself is unaffected.
        let after: Vec<u64> = rec.map(|e| e.unwrap().sequence).collect();
        assert_eq!(after, (151..=200).collect::<Vec<_>>(), "{backend}");
    }
}

#[test]
fn interrupted_checkpoint_replacement_leaves_the_old_one_valid() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        append_payloads(&wal, "c", 10, 100);
        wal.checkpoint(4).unwrap();
        drop(wal);
        // A crash after writing the temp file but before the rename: a half-written temp.
        std::fs::write(dir.path().join("checkpoint.tmp"), b"{\"version\":1,\"seq").unwrap();
        assert_eq!(checkpoint::load(dir.path()).unwrap().unwrap().sequence, 4);
        let (wal, rec) = open(dir.path(), cfg.clone());
        assert_eq!(rec.first().map(|e| e.sequence), Some(5));
        // The next checkpoint replaces both.
        wal.checkpoint(9).unwrap();
        assert_eq!(checkpoint::load(dir.path()).unwrap().unwrap().sequence, 9);
        // A damaged checkpoint file is reported, not ignored.
        drop(wal);
        std::fs::write(dir.path().join("checkpoint.json"), b"garbage").unwrap();
        assert!(matches!(
            Wal::open(dir.path(), cfg),
            Err(Error::Corrupt { .. })
        ));
    }
}

#[test]
fn many_threads_appending_get_every_completion_and_disk_order_is_sequence_order() {
    for (backend, group) in WRITE_PATHS {
        for mode in [SyncMode::EveryWrite, SyncMode::Interval] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = WalConfig {
                max_file_size: 1 << 20,
                uring_group_writes: group,
                ..config(backend, mode)
            };
            let (wal, _) = open(dir.path(), cfg.clone());
            let threads = 16;
            let per = 300u64;
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let wal = wal.clone();
                    std::thread::spawn(move || {
                        let mut got = Vec::new();
                        // Pipeline a few appends per thread, then wait in order.
                        let mut pending = std::collections::VecDeque::new();
                        for i in 0..per {
                            let key = t * 1_000_000 + i;
                            pending.push_back((
                                key,
                                wal.append(
                                    "c",
                                    t as i32,
                                    Bytes::from(payload(key, 64 + (key % 700) as usize)),
                                ),
                            ));
                            if pending.len() == 4 {
                                let (k, c) = pending.pop_front().unwrap();
                                got.push((c.wait().unwrap(), k));
                            }
                        }
                        for (k, c) in pending {
                            got.push((c.wait().unwrap(), k));
                        }
                        got
                    })
                })
                .collect();
            let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let stats = wal.stats();
            assert_eq!(stats.entries, threads * per);
            // The write path asked for is the one taken.
            let grouped = stats.grouped_batches;
            match (mode, backend, group) {
                (SyncMode::EveryWrite, BackendKind::Std, _) => {
                    assert_eq!(grouped, stats.batches, "std groups every batch")
                }
                (SyncMode::EveryWrite, _, Some(true)) => assert!(grouped > 0, "{stats:?}"),
                _ => assert_eq!(grouped, 0, "{backend} {mode} group writes {group:?}"),
            }
            assert!(
                stats.batches < threads * per,
                "{backend} {mode} group writes {group:?}: no group commit happened"
            );
            drop(wal);
            let what = format!("{backend} {mode} group writes {group:?}");
            check_acks_against_recovery(dir.path(), cfg, got, &what);
        }
    }
}

/// With the `uring` backend's default (`uring_group_writes` unset), a producer
/// that is alone gets its durable writes written by the commit thread itself
/// once 32 of them in a row completed alone; an append that finds another beside
/// it ends that, and the count starts again. Every entry is recovered either way.
#[test]
fn a_lone_producer_gets_its_writes_grouped_until_it_has_company() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        max_file_size: 4 << 20,
        ..config(BackendKind::Uring, SyncMode::EveryWrite)
    };
    assert_eq!(cfg.uring_group_writes, None);
    let (wal, _) = open(dir.path(), cfg.clone());
    let mut expected = Vec::new();
    let mut append = |wal: &Wal, i: u64| {
        expected.push(payload(i, 200));
        wal.append("lone", 0, Bytes::from(payload(i, 200)))
    };
    let mut i = 0;
    for _ in 0..40 {
        append(&wal, i).wait().unwrap();
        i += 1;
    }
    let alone = wal.stats().grouped_batches;
    assert!(
        (1..=8).contains(&alone),
        "40 lone appends: the last 8 at most go out grouped, got {alone}"
    );
    // Two appends at once: the first completes with the second beside it.
    let (a, b) = (append(&wal, i), append(&wal, i + 1));
    i += 2;
    a.wait().unwrap();
    b.wait().unwrap();
    let after_pair = wal.stats().grouped_batches;
    assert!(after_pair <= alone + 2);
    // 20 lone appends are not enough to group again.
    for _ in 0..20 {
        append(&wal, i).wait().unwrap();
        i += 1;
    }
    assert_eq!(wal.stats().grouped_batches, after_pair, "{:?}", wal.stats());
    drop(wal);

    // Forced off, nothing is grouped.
    let dir2 = tempfile::tempdir().unwrap();
    let off = WalConfig {
        uring_group_writes: Some(false),
        ..cfg.clone()
    };
    let (wal2, _) = open(dir2.path(), off);
    for j in 0..40 {
        wal2.append("lone", 0, Bytes::from(payload(j, 200)))
            .wait()
            .unwrap();
    }
    assert_eq!(wal2.stats().grouped_batches, 0);
    drop(wal2);

    let (_wal, recovered) = open(dir.path(), cfg);
    let got: Vec<Vec<u8>> = recovered.iter().map(|e| e.data.to_vec()).collect();
    assert_eq!(got, expected);
}

/// `acks` holds, per producer and in the order it appended, the sequence each
/// append was acknowledged with and the key its payload was made from (the producer
/// times 1,000,000 plus its index, the producer being the partition). Checks that
/// each producer's sequences increase, that no sequence was given twice, and that
/// reopening recovers exactly these entries, in sequence order, with their payloads.
fn check_acks_against_recovery(
    dir: &std::path::Path,
    cfg: WalConfig,
    acks: Vec<Vec<(u64, u64)>>,
    what: &str,
) {
    let mut by_seq = HashMap::new();
    for got in acks {
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "{what}");
        for (s, k) in got {
            assert!(
                by_seq.insert(s, k).is_none(),
                "{what}: sequence {s} given twice"
            );
        }
    }
    let (_wal, rec) = open(dir, cfg);
    assert_eq!(rec.len(), by_seq.len(), "{what}");
    for (i, e) in rec.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1, "{what}");
        let key = by_seq[&e.sequence];
        assert_eq!(
            &e.data[..],
            &payload(key, 64 + (key % 700) as usize)[..],
            "{what}: seq {}",
            e.sequence
        );
        assert_eq!(e.partition as u64, key / 1_000_000, "{what}");
    }
}

/// The same contract for tasks that `.await` their acknowledgements, on both kinds
/// of tokio runtime, with awaited completions polling for their whole wait (500
/// µs), for a moment (1 µs, then a `Waker`), or not at all.
#[test]
fn many_tasks_awaiting_appends_get_every_completion_and_disk_order_is_sequence_order() {
    for backend in BACKENDS {
        for mode in [SyncMode::EveryWrite, SyncMode::Interval] {
            for ack_spin_us in [0, 1, 500] {
                for workers in [0, 2] {
                    let what = format!("{backend} {mode} spin {ack_spin_us} workers {workers}");
                    let dir = tempfile::tempdir().unwrap();
                    let cfg = WalConfig {
                        max_file_size: 1 << 20,
                        ack_spin_us,
                        ..config(backend, mode)
                    };
                    let (wal, _) = open(dir.path(), cfg.clone());
                    let rt = common::runtime(workers);
                    let tasks = 16u64;
                    let per = 100u64;
                    let got: Vec<Vec<(u64, u64)>> = rt.block_on(async {
                        let handles: Vec<_> = (0..tasks)
                            .map(|t| {
                                let wal = wal.clone();
                                tokio::spawn(async move {
                                    let mut got = Vec::new();
                                    for i in 0..per {
                                        let key = t * 1_000_000 + i;
                                        let data =
                                            Bytes::from(payload(key, 64 + (key % 700) as usize));
                                        // Both ways in: the completion itself, and the
                                        // variant that also awaits pending capacity.
                                        let seq = if i % 2 == 0 {
                                            wal.append("a", t as i32, data).await
                                        } else {
                                            wal.append_async("a", t as i32, data).await
                                        };
                                        got.push((seq.unwrap(), key));
                                    }
                                    got
                                })
                            })
                            .collect();
                        let mut all = Vec::new();
                        for h in handles {
                            // A completion that never wakes its task hangs here.
                            let joined =
                                tokio::time::timeout(std::time::Duration::from_secs(60), h);
                            all.push(
                                joined
                                    .await
                                    .expect("an awaited append never resolved")
                                    .unwrap(),
                            );
                        }
                        all
                    });
                    assert_eq!(got.iter().map(Vec::len).sum::<usize>() as u64, tasks * per);
                    drop(wal);
                    check_acks_against_recovery(dir.path(), cfg, got, &what);
                }
            }
        }
    }
}

#[test]
fn oversized_entries_are_rejected_and_large_ones_fit() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        let limit = wal.max_entry_bytes() as usize;
        let too_big = Bytes::from(vec![7u8; limit]);
        assert!(
            matches!(
                wal.append("big", 0, too_big).wait(),
                Err(Error::EntryTooLarge { .. })
            ),
            "{backend}"
        );
        // Larger than a batch buffer but smaller than a file: written alone.
        let big = Bytes::from(payload(1, 200 * 1024));
        let s = wal.append("big", 0, big.clone()).wait().unwrap();
        let s2 = wal.append("big", 0, big.clone()).wait().unwrap();
        assert_eq!(s2, s + 1);
        drop(wal);
        let (_wal, rec) = open(dir.path(), cfg);
        assert_eq!(rec.len(), 2);
        assert_eq!(rec[1].data, big);
    }
}

/// Appends the WAL cannot take are answered with an error naming why, and take no
/// sequence: a topic name longer than the format's 16-bit length, an empty batch,
/// a batch larger than an entry may be. Batches appended asynchronously land
/// together.
#[test]
fn invalid_appends_are_rejected_and_take_no_sequence() {
    use streamline::wal::{format::MAX_TOPIC_LEN, NewEntry};
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        let long = "t".repeat(MAX_TOPIC_LEN + 1);
        match wal.append(&long, 0, Bytes::from_static(b"x")).wait() {
            Err(e @ Error::InvalidArgument { name: "topic", .. }) => {
                assert!(e.to_string().contains("limited to 65535 bytes"), "{e}");
            }
            other => panic!("{backend}: topic of {} bytes: {other:?}", long.len()),
        }
        let longest = "t".repeat(MAX_TOPIC_LEN);
        assert_eq!(
            wal.append(&longest, 0, Bytes::from_static(b"x"))
                .wait()
                .unwrap(),
            1
        );
        for r in [
            wal.append_batch(Vec::new()).wait(),
            futures_lite_block_on(wal.append_batch_async(Vec::new())),
        ] {
            assert!(
                matches!(
                    r,
                    Err(Error::InvalidArgument {
                        name: "entries",
                        ..
                    })
                ),
                "{backend}: empty batch: {r:?}"
            );
        }
        let half = Bytes::from(vec![1u8; wal.max_entry_bytes() as usize / 2]);
        let too_big = vec![
            NewEntry::record("b", 0, half.clone()),
            NewEntry::record("b", 0, half.clone()),
            NewEntry::record("b", 0, half),
        ];
        assert!(
            matches!(
                wal.append_batch(too_big).wait(),
                Err(Error::EntryTooLarge { .. })
            ),
            "{backend}: oversized batch"
        );
        let batch: Vec<NewEntry> = (0..3u64)
            .map(|i| NewEntry::record("b", i as i32, Bytes::from(payload(i, 100))))
            .collect();
        assert_eq!(
            futures_lite_block_on(wal.append_batch_async(batch)).unwrap(),
            2,
            "{backend}: rejected appends took sequences"
        );
        wal.close().unwrap();
        let (_wal, rec) = open(dir.path(), cfg);
        assert_eq!(rec.len(), 4, "{backend}");
        assert_eq!(rec[0].topic, longest);
        for (i, e) in rec[1..].iter().enumerate() {
            assert_eq!(e.sequence, i as u64 + 2);
            assert_eq!(e.partition, i as i32);
            assert_eq!(&e.data[..], &payload(i as u64, 100)[..]);
        }
    }
}

/// Topic names of every length around the size `append` carries inline (64
/// bytes) and beyond it, through `append`, `try_append` and `append_async` and
/// beside `append_entry` and `append_batch`, come back byte for byte, with their
/// partitions and payloads, after a reopen.
#[test]
fn topics_of_every_length_round_trip_through_each_append_call() {
    use streamline::wal::NewEntry;
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        let mut want = Vec::new();
        for (i, len) in [0usize, 1, 23, 24, 63, 64, 65, 200, 4096]
            .into_iter()
            .enumerate()
        {
            // Multi-byte UTF-8 characters too: the inline copy is of bytes.
            let topic: String = "é".repeat(len / 2) + &"t".repeat(len % 2);
            let data = Bytes::from(payload(i as u64, 10 + i));
            let p = i as i32;
            let seqs = [
                wal.append(&topic, p, data.clone()).wait().unwrap(),
                wal.try_append(&topic, p, data.clone()).wait().unwrap(),
                futures_lite_block_on(wal.append_async(&topic, p, data.clone())).unwrap(),
                wal.append_entry(NewEntry::record(topic.clone(), p, data.clone()))
                    .wait()
                    .unwrap(),
                wal.append_batch(vec![NewEntry::record(topic.clone(), p, data.clone())])
                    .wait()
                    .unwrap(),
            ];
            for s in seqs {
                want.push((s, topic.clone(), p, data.clone()));
            }
        }
        wal.close().unwrap();
        let (_wal, rec) = open(dir.path(), cfg);
        let got: Vec<_> = rec
            .into_iter()
            .map(|e| (e.sequence, e.topic, e.partition, e.data))
            .collect();
        assert_eq!(got, want, "{backend}");
    }
}

/// `Completion::wait_timeout` answers `None` while the append is not durable,
/// `is_done` turns true once it is, the result is then returned at once, and a
/// second call after it was taken answers `Closed`.
#[test]
fn wait_timeout_and_is_done_follow_the_completion() {
    use std::time::{Duration, Instant};
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig {
            max_file_size: 64 << 20,
            ..config(backend, SyncMode::EveryWrite)
        };
        let (wal, _) = open(dir.path(), cfg);
        // A woken waiter: the result arrives while it is parked.
        let mut c = wal.append("w", 0, Bytes::from_static(b"first"));
        assert_eq!(c.wait_timeout(Duration::from_secs(60)).unwrap().unwrap(), 1);
        let mut saw_pending = false;
        for attempt in 0..3u8 {
            // A 32 MiB entry ahead keeps the small append from being durable for
            // milliseconds (acknowledgements go in order). A test thread that is
            // preempted for longer may find it done: try again.
            let big = wal.append("w", 0, Bytes::from(vec![attempt; 32 << 20]));
            let mut small = wal.append("w", 0, Bytes::from_static(b"small"));
            let first = small.wait_timeout(Duration::ZERO);
            let big_seq = big.wait().unwrap();
            let seq = match first {
                Some(r) => r.unwrap(),
                None => {
                    saw_pending = true;
                    let start = Instant::now();
                    while !small.is_done() {
                        assert!(
                            start.elapsed() < Duration::from_secs(60),
                            "{backend}: never done"
                        );
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    small
                        .wait_timeout(Duration::ZERO)
                        .expect("done, yet not returned")
                        .unwrap()
                }
            };
            assert_eq!(seq, big_seq + 1, "{backend}");
            assert!(
                matches!(small.wait_timeout(Duration::ZERO), Some(Err(Error::Closed))),
                "{backend}: a taken result was returned again"
            );
            if saw_pending {
                break;
            }
        }
        assert!(saw_pending, "{backend}: never saw an unresolved completion");
    }
}

/// Sequences never go back below the checkpoint: with every log file gone (lost,
/// or removed by hand) the next append gets the sequence after the checkpoint, so
/// that a reader that applied everything up to the checkpoint does not skip it.
#[test]
fn a_log_whose_files_are_gone_continues_after_its_checkpoint() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        append_payloads(&wal, "c", 10, 100);
        assert!(matches!(
            wal.checkpoint(11),
            Err(Error::CheckpointAhead {
                sequence: 11,
                acknowledged: 10
            })
        ));
        wal.checkpoint(10).unwrap();
        wal.close().unwrap();
        remove_wal_files(dir.path());
        let (wal, rec) = open(dir.path(), cfg.clone());
        assert!(rec.is_empty(), "{backend}");
        assert_eq!(
            wal.append("c", 0, Bytes::from_static(b"after"))
                .wait()
                .unwrap(),
            11,
            "{backend}: sequences went back below the checkpoint"
        );
        wal.close().unwrap();
        let (_wal, rec) = open(dir.path(), cfg);
        assert_eq!(rec.len(), 1, "{backend}");
        assert_eq!((rec[0].sequence, &rec[0].data[..]), (11, &b"after"[..]));
    }
}

/// An operator may change the file size between runs: the active file keeps the
/// size it has, files made afterwards get the new one, retired files of the old
/// size are removed instead of recycled, and the log reads back whole under
/// either setting.
/// A directory left with only recycled files (every log file, the checkpoint and
/// the clean-close record lost or removed by hand) starts a new log at file 1.
/// Its first files must not be made from recycled files whose old batches carry
/// file numbers the new log reaches again: those batches would decode as its
/// entries.
#[test]
fn recycled_files_from_before_a_restart_at_file_one_never_decode() {
    use streamline::wal::files::list_recycled;
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        let mut last = 0;
        for i in 0..300u64 {
            last = wal
                .append("old", 0, Bytes::from(payload(i, 3000)))
                .wait()
                .unwrap();
        }
        wal.checkpoint(last).unwrap();
        wal.close().unwrap();
        assert!(
            !list_recycled(dir.path()).unwrap().is_empty(),
            "{backend}: no file was recycled"
        );
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if !name.starts_with("recycle-") {
                std::fs::remove_file(&path).unwrap();
            }
        }
        for round in 0..2 {
            let (wal, rec) = open(dir.path(), cfg.clone());
            assert!(
                rec.is_empty(),
                "{backend}: open {round} recovered {} stale entries, the first {:?}",
                rec.len(),
                rec.first().map(|e| (e.sequence, e.topic.clone()))
            );
            wal.close().unwrap();
        }
        let (wal, _) = open(dir.path(), cfg.clone());
        let mut new = Vec::new();
        for i in 0..100u64 {
            let s = wal
                .append("new", 1, Bytes::from(payload(1000 + i, 2000)))
                .wait()
                .unwrap();
            new.push((s, 1000 + i));
        }
        drop(wal);
        let (_wal, rec) = open(dir.path(), cfg);
        assert_eq!(rec.len(), new.len(), "{backend}");
        for (e, (s, k)) in rec.iter().zip(&new) {
            assert_eq!((e.sequence, e.topic.as_str()), (*s, "new"), "{backend}");
            assert_eq!(&e.data[..], &payload(*k, 2000)[..], "{backend}");
        }
    }
}

#[test]
fn changing_the_file_size_between_opens_keeps_the_log_and_uses_the_new_size() {
    use streamline::wal::files::list_recycled;
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let small = WalConfig {
            retention_files: 0,
            ..config(backend, SyncMode::EveryWrite)
        };
        let large = WalConfig {
            max_file_size: 2 * small.max_file_size,
            ..small.clone()
        };
        let (wal, _) = open(dir.path(), small.clone());
        let mut last = 0;
        for i in 0..150u64 {
            last = wal
                .append("s", 0, Bytes::from(payload(i, 3000)))
                .wait()
                .unwrap();
        }
        wal.checkpoint(last - 10).unwrap();
        assert!(
            !list_recycled(dir.path()).unwrap().is_empty(),
            "{backend}: no file was recycled"
        );
        wal.close().unwrap();

        let (wal, rec) = open(dir.path(), large.clone());
        assert_eq!(rec.len(), 10, "{backend}");
        let rotations_before = wal.stats().rotations;
        for i in 150..450u64 {
            last = wal
                .append("s", 0, Bytes::from(payload(i, 3000)))
                .wait()
                .unwrap();
        }
        assert!(wal.stats().rotations >= rotations_before + 2, "{backend}");
        wal.close().unwrap();
        assert!(
            list_recycled(dir.path()).unwrap().is_empty(),
            "{backend}: files of the old size were kept for reuse"
        );
        let sizes: Vec<u64> = list_archived(dir.path())
            .unwrap()
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .collect();
        assert!(
            sizes.last() == Some(&large.max_file_size),
            "{backend}: newest archived sizes {sizes:?}"
        );
        for cfg in [large, small] {
            let (wal, rec) = open(dir.path(), cfg);
            assert_eq!(rec.len(), 300 + 10, "{backend}");
            assert_eq!(rec.last().unwrap().sequence, last);
            for (e, i) in rec.iter().zip(140u64..) {
                assert_eq!(
                    &e.data[..],
                    &payload(i, 3000)[..],
                    "{backend}: seq {}",
                    e.sequence
                );
            }
            wal.close().unwrap();
        }
    }
}

#[test]
fn invalid_configuration_is_rejected_before_touching_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("wal");
    let rejected = |bad: WalConfig, expected: &str| {
        match Wal::open(&target, bad) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, expected),
            other => panic!("expected InvalidConfig, got {:?}", other.map(|_| ())),
        }
        assert!(!target.exists(), "a rejected config created the directory");
    };
    rejected(
        WalConfig {
            max_file_size: 1000,
            ..WalConfig::default()
        },
        "--wal-max-file-size",
    );
    rejected(
        WalConfig {
            ack_spin_us: 1_000_000,
            ..WalConfig::default()
        },
        "ack_spin_us",
    );
    rejected(
        WalConfig {
            sync_mode: SyncMode::Interval,
            sync_interval_ms: 0,
            ..WalConfig::default()
        },
        "--wal-sync-ms",
    );
    for max_batch_bytes in [4095, (64 << 20) + 1] {
        rejected(
            WalConfig {
                max_batch_bytes,
                max_pending_bytes: 128 << 20,
                ..WalConfig::default()
            },
            "max_batch_bytes",
        );
    }
    rejected(
        WalConfig {
            max_pending_bytes: WalConfig::default().max_batch_bytes - 1,
            ..WalConfig::default()
        },
        "max_pending_bytes",
    );
    rejected(
        WalConfig {
            idle_spin_us: 10_001,
            ..WalConfig::default()
        },
        "idle_spin_us",
    );
    for max_in_flight in [0, 65] {
        rejected(
            WalConfig {
                max_in_flight,
                ..WalConfig::default()
            },
            "max_in_flight",
        );
    }
    assert_eq!("uring".parse::<BackendKind>().unwrap(), BackendKind::Uring);
    assert_eq!("std".parse::<BackendKind>().unwrap(), BackendKind::Std);
    assert_eq!("auto".parse::<BackendKind>().unwrap(), BackendKind::Auto);
    let e = "fast".parse::<BackendKind>().unwrap_err().to_string();
    assert!(
        e.contains("--wal-backend") && e.contains("auto, uring, std"),
        "{e}"
    );
    let e = "sometimes".parse::<SyncMode>().unwrap_err().to_string();
    assert!(
        e.contains("--wal-sync-mode") && e.contains("every_write"),
        "{e}"
    );
}

#[test]
fn a_directory_is_opened_by_one_wal_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(streamline::wal::BackendKind::Std, SyncMode::Interval);
    let (wal, _) = open(dir.path(), cfg.clone());
    assert!(matches!(
        Wal::open(dir.path(), cfg.clone()),
        Err(Error::Locked { .. })
    ));
    drop(wal);
    let (_wal, _) = open(dir.path(), cfg);
}

/// A reader of a directory a WAL has open would read files that rotation and
/// retention change under it (a healthy log read as damaged): it is refused.
/// Its lock lasts while it or an iterator of it reads, and keeps a WAL from
/// opening the directory meanwhile.
#[test]
fn a_reader_is_refused_while_a_wal_has_the_directory_open_and_holds_it_while_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(streamline::wal::BackendKind::Std, SyncMode::EveryWrite);
    let (wal, _) = open(dir.path(), cfg.clone());
    assert_eq!(append_payloads(&wal, "t", 5, 100), 5);
    assert!(matches!(
        WalReader::open(dir.path()),
        Err(Error::Locked { .. })
    ));
    wal.close().unwrap();
    let reader = WalReader::open(dir.path()).unwrap();
    let entries = reader.entries_from(1);
    drop(reader);
    assert!(matches!(
        Wal::open(dir.path(), cfg.clone()),
        Err(Error::Locked { .. })
    ));
    assert_eq!(
        entries.map(|e| e.unwrap().sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let (_wal, replayed) = open(dir.path(), cfg);
    assert_eq!(replayed.len(), 5);
}

/// A process forked while the WAL was open (any thread running a command) holds a
/// copy of the lock file until it execs: closing must release the lock all the
/// same, so that an immediate reopen is not refused as "in use".
#[cfg(unix)]
#[test]
fn a_closed_wal_can_be_reopened_while_a_forked_child_still_holds_its_files() {
    use std::io::{pipe, Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(streamline::wal::BackendKind::Std, SyncMode::Interval);
    let (wal, _) = open(dir.path(), cfg.clone());
    // The child tells the parent it has forked, then waits for the parent's word
    // before it execs (and its copies of the descriptors, all close-on-exec as
    // every descriptor std makes, close).
    let (mut forked_r, forked_w) = pipe().unwrap();
    let (go_r, mut go_w) = pipe().unwrap();
    let (fw, gr, gw) = (forked_w.as_raw_fd(), go_r.as_raw_fd(), go_w.as_raw_fd());
    let mut cmd = std::process::Command::new("true");
    // SAFETY: the closure runs in the forked child before exec and calls only
    // close, write and read (async-signal-safe) on descriptors it inherited.
    unsafe {
        cmd.pre_exec(move || {
            // Its copy of the word's end closed, the read below also returns when
            // the parent's closes (a panicking test), not only on its byte.
            libc::close(gw);
            if libc::write(fw, b"f".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            let mut b = 0u8;
            while libc::read(gr, (&raw mut b).cast(), 1) < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            Ok(())
        });
    }
    // spawn returns only once the child has exec'd: fork from another thread.
    let spawner = std::thread::spawn(move || {
        let child = cmd.spawn();
        // Ends the parent's wait below if the fork never happened.
        drop((forked_w, go_r));
        child.expect("spawn").wait().unwrap();
    });
    let mut b = [0u8; 1];
    assert_eq!(
        forked_r.read(&mut b).expect("read"),
        1,
        "the child did not fork"
    );
    // The child holds copies of every file descriptor of this process, the WAL's
    // lock file among them, and keeps them until the word below.
    wal.close().unwrap();
    let reopened = Wal::open(dir.path(), cfg);
    go_w.write_all(b"g").unwrap();
    drop(go_w);
    spawner.join().unwrap();
    let (wal, _) = reopened.unwrap_or_else(|e| panic!("reopen while the child held the lock: {e}"));
    wal.close().unwrap();
}

#[test]
fn closed_wal_rejects_appends_and_async_appends_work() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(streamline::wal::BackendKind::Std, SyncMode::EveryWrite);
    let (wal, _) = open(dir.path(), cfg);
    let other = wal.clone();
    let seq = futures_lite_block_on(other.append_async("a", 0, Bytes::from_static(b"x"))).unwrap();
    assert_eq!(seq, 1);
    wal.close().unwrap();
    assert!(matches!(
        other.append("a", 0, Bytes::from_static(b"y")).wait(),
        Err(Error::Closed)
    ));
    let again = other.clone();
    let other = Arc::new(other);
    assert!(matches!(other.sync().wait(), Err(Error::Closed)));
    // Closing a WAL another handle closed cleanly is no error.
    again.close().unwrap();
}

/// Producers appending while another handle closes the WAL: each append resolves,
/// either acknowledged (and then recovered, since closing syncs everything in any
/// mode) or `Closed`, and nothing is acknowledged to a producer after it saw
/// `Closed`. The close comes a moment after the first acknowledgement, not a
/// fixed time after the producers were started, so that a producer thread that
/// the scheduler runs late cannot leave nothing acknowledged.
#[test]
fn appends_racing_a_close_are_acknowledged_or_closed_never_lost_or_stuck() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    for backend in BACKENDS {
        for mode in [SyncMode::EveryWrite, SyncMode::Interval] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = config(backend, mode);
            let (wal, _) = open(dir.path(), cfg.clone());
            let (tx, rx) = mpsc::channel();
            // Acknowledgements the producers have seen so far.
            let acks = Arc::new(AtomicU64::new(0));
            for p in 0..4u64 {
                let (wal, tx, acks) = (wal.clone(), tx.clone(), acks.clone());
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0.. {
                        match wal
                            .append("r", p as i32, Bytes::from(payload(p * 1_000_000 + i, 300)))
                            .wait()
                        {
                            Ok(seq) => {
                                acked.push((seq, p * 1_000_000 + i));
                                acks.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(Error::Closed) => break,
                            Err(e) => panic!("{backend} {mode}: producer {p}: {e}"),
                        }
                    }
                    // Closed stays closed.
                    assert!(matches!(
                        wal.append("r", 0, Bytes::from_static(b"late")).wait(),
                        Err(Error::Closed)
                    ));
                    tx.send(acked).unwrap();
                });
            }
            drop(tx);
            let deadline = Instant::now() + Duration::from_secs(60);
            while acks.load(Ordering::SeqCst) == 0 {
                assert!(
                    Instant::now() < deadline,
                    "{backend} {mode}: nothing acknowledged in 60 s"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            // The producers are appending when the close comes.
            std::thread::sleep(Duration::from_millis(30));
            wal.close().unwrap();
            let mut acked = Vec::new();
            for _ in 0..4 {
                acked.extend(
                    rx.recv_timeout(Duration::from_secs(60))
                        .unwrap_or_else(|_| {
                            panic!("{backend} {mode}: a producer is stuck after close")
                        }),
                );
            }
            assert!(
                !acked.is_empty(),
                "{backend} {mode}: nothing acknowledged before the close"
            );
            acked.sort_unstable();
            let (_wal, rec) = open(dir.path(), cfg);
            assert_eq!(
                rec.len(),
                acked.len(),
                "{backend} {mode}: recovered entries differ from the acknowledged ones"
            );
            for (e, (seq, key)) in rec.iter().zip(&acked) {
                assert_eq!(e.sequence, *seq);
                assert_eq!(
                    &e.data[..],
                    &payload(*key, 300)[..],
                    "{backend} {mode}: seq {seq}"
                );
            }
        }
    }
}

/// Minimal executor for one future (the crate has no async runtime dependency).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn changing_max_file_size_between_runs_takes_effect_at_the_next_file() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let small = config(backend, SyncMode::Interval);
        let (wal, _) = open(dir.path(), small.clone());
        wal.append("s", 0, Bytes::from(payload(0, 1000)))
            .wait()
            .unwrap();
        drop(wal);
        let big = WalConfig {
            max_file_size: 1 << 20,
            ..small.clone()
        };
        let (wal, rec) = open(dir.path(), big.clone());
        assert_eq!(rec.len(), 1);
        for i in 1..700u64 {
            wal.append("s", 0, Bytes::from(payload(i, 1000)))
                .wait()
                .unwrap();
        }
        drop(wal);
        let sizes: Vec<u64> = list_archived(dir.path())
            .unwrap()
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .collect();
        assert_eq!(
            sizes.first(),
            Some(&small.max_file_size),
            "{backend}: the old active file keeps its size"
        );
        assert!(
            sizes.iter().skip(1).all(|s| *s == big.max_file_size),
            "{backend}: {sizes:?}"
        );
        let (_wal, rec) = open(dir.path(), big);
        assert_eq!(rec.len(), 700);
    }
}

#[test]
fn retired_files_are_recycled_and_their_stale_batches_never_decode() {
    use streamline::wal::files::{list_recycled, MAX_RECYCLED};
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        let mut last = 0;
        for i in 0..300u64 {
            last = wal
                .append("old", 0, Bytes::from(payload(i, 3000)))
                .wait()
                .unwrap();
        }
        wal.checkpoint(last).unwrap();
        assert_eq!(
            list_recycled(dir.path()).unwrap().len(),
            MAX_RECYCLED,
            "{backend}"
        );
        // The next file prepared in the background was made before the checkpoint;
        // the rotations after it take the recycled ones.
        let mut new = Vec::new();
        for i in 0..300u64 {
            let s = wal
                .append("new", 1, Bytes::from(payload(1000 + i, 2000)))
                .wait()
                .unwrap();
            new.push((s, 1000 + i));
        }
        assert!(
            list_recycled(dir.path()).unwrap().len() < MAX_RECYCLED,
            "{backend}: no recycled file was reused"
        );
        drop(wal);
        let (_wal, rec) = open(dir.path(), cfg);
        assert_eq!(
            rec.len(),
            new.len(),
            "{backend}: stale entries of recycled files decoded"
        );
        for (e, (s, k)) in rec.iter().zip(&new) {
            assert_eq!(e.sequence, *s);
            assert_eq!(e.topic, "new");
            assert_eq!(&e.data[..], &payload(*k, 2000)[..]);
        }
    }
}

#[test]
fn close_releases_the_directory_even_while_clones_exist() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(streamline::wal::BackendKind::Std, SyncMode::EveryWrite);
    let (wal, _) = open(dir.path(), cfg.clone());
    let clone = wal.clone();
    wal.append("c", 0, Bytes::from_static(b"one"))
        .wait()
        .unwrap();
    wal.close().unwrap();
    let (reopened, rec) = open(dir.path(), cfg);
    assert_eq!(rec.len(), 1);
    assert!(matches!(
        clone.append("c", 0, Bytes::from_static(b"x")).wait(),
        Err(Error::Closed)
    ));
    drop(clone);
    assert_eq!(
        reopened
            .append("c", 0, Bytes::from_static(b"two"))
            .wait()
            .unwrap(),
        2
    );
}

/// A prepared file is zero-filled to its end, chunk by chunk, each written back
/// before the next: nothing of it is left reserved but unwritten (an append there
/// would have its fdatasync convert extents), and it reads as its header, then zeros.
/// Linux: unwritten space is found with `SEEK_HOLE`.
#[cfg(target_os = "linux")]
#[test]
fn a_prepared_file_is_written_through_to_its_end() {
    use streamline::wal::{
        files::{first_unwritten, prepare_file, Prealloc},
        format::{decode_file_header, BLOCK_SIZE},
    };
    // On the checkout's file system (ext4 here), which reports reserved but
    // unwritten extents, unlike a possibly tmpfs-backed /tmp.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // Several 1 MiB chunks and a partial one.
    let size = (5 << 20) + 3 * BLOCK_SIZE as u64;
    let next = prepare_file(dir.path(), 4, size, Prealloc::ZeroFill).unwrap();
    let f = std::fs::File::open(&next).unwrap();
    let hole = first_unwritten(&f).expect("the file system reports unwritten extents");
    assert_eq!(hole, size, "reserved but unwritten from byte {hole}");
    let bytes = std::fs::read(&next).unwrap();
    assert_eq!(bytes.len() as u64, size);
    assert_eq!(decode_file_header(&bytes).unwrap().file_number, 4);
    assert!(bytes[BLOCK_SIZE..].iter().all(|&b| b == 0));
}

/// A close cuts the preparation of `next.wal` short; the file it leaves must
/// not be taken by the next run as prepared while most of it was never
/// written (each sync there would convert extents, which zero-filling is
/// for). After a close in the middle of the zero-fills, `next.wal` is either
/// gone (prepared again, whole, later) or written to its end.
#[test]
fn a_close_leaves_no_next_file_whose_zero_fill_it_cut_short() {
    use streamline::wal::files::{first_unwritten, NEXT};
    // On the checkout's file system (ext4 here), which reports never-written
    // blocks, unlike a possibly tmpfs-backed /tmp.
    let on_disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for backend in BACKENDS {
        let dir = on_disk.path().join(backend.to_string());
        // Zero-filling the new file's 252 MiB tail and then the next file's
        // 256 MiB takes far longer than an append and a close.
        let cfg = WalConfig {
            max_file_size: 256 << 20,
            ..config(backend, SyncMode::EveryWrite)
        };
        let (wal, _) = open(&dir, cfg.clone());
        wal.append("t", 0, Bytes::from(payload(0, 100)))
            .wait()
            .unwrap();
        wal.close().unwrap();
        let next = dir.join(NEXT);
        if next.exists() {
            let hole = first_unwritten(&std::fs::File::open(&next).unwrap());
            assert_eq!(hole, Some(cfg.max_file_size), "{backend}: kept cut short");
        }
        let (_wal, got) = open(&dir, cfg);
        assert_eq!(got.len(), 1, "{backend}");
    }
}

/// A `next.wal` whose zero-fill was cut short (a run that failed or was killed
/// while preparing it, or that was killed inside `Wal::open` between preparing
/// a new log's first file and making it current) is prepared on from where its
/// fill stopped when it is taken (one written in its header only was reserved
/// on purpose, and is taken as it is): as a new log's first file, its tail is
/// zero-filled in the background, and no stretch of it stays never-written
/// (each sync there would convert extents, which zero-filling is for).
#[test]
fn a_next_file_whose_zero_fill_was_cut_short_is_filled_on_when_taken() {
    use std::os::unix::fs::FileExt;
    use streamline::wal::files::{first_unwritten, prepare_file, Prealloc, CURRENT, NEXT};
    // On the checkout's file system (ext4 here), which reports never-written
    // blocks, unlike a possibly tmpfs-backed /tmp.
    let on_disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for backend in BACKENDS {
        let dir = on_disk.path().join(backend.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let size: u64 = 32 << 20;
        // Reserved, then zero-filled through its first MiB only, as a fill cut
        // short leaves it.
        let next = prepare_file(&dir, 1, size, Prealloc::Reserve).unwrap();
        assert_eq!(next, dir.join(NEXT));
        let f = std::fs::OpenOptions::new().write(true).open(&next).unwrap();
        f.write_all_at(&vec![0u8; 1 << 20], 4096).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let hole = first_unwritten(&std::fs::File::open(&next).unwrap());
        assert!(hole.is_some_and(|h| h < size), "{backend}: {hole:?}");
        let cfg = WalConfig {
            max_file_size: size,
            ..config(backend, SyncMode::EveryWrite)
        };
        let (wal, _) = open(&dir, cfg);
        wal.append("t", 0, Bytes::from(payload(0, 100)))
            .wait()
            .unwrap();
        let current = dir.join(CURRENT);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let hole = first_unwritten(&std::fs::File::open(&current).unwrap());
            if hole == Some(size) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{backend}: current.wal still unwritten from {hole:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        wal.close().unwrap();
    }
}

/// A rotation that needs the next file while it is still being zero-filled cuts the
/// fill short (waiting would stall every producer). Such a file has its full size and
/// header, reads as zeros after it, and works as the active file on both backends.
#[test]
fn a_zero_fill_cut_short_leaves_a_usable_file() {
    use std::sync::atomic::AtomicBool;
    use streamline::wal::{
        files::{prepare_file_until, Prealloc, CURRENT},
        format::{decode_file_header, BLOCK_SIZE},
    };
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let size = WalConfig::MIN_FILE_SIZE;
        let stop = AtomicBool::new(true);
        let next = prepare_file_until(dir.path(), 1, size, Prealloc::ZeroFill, &stop).unwrap();
        let bytes = std::fs::read(&next).unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(decode_file_header(&bytes).unwrap().file_number, 1);
        assert!(bytes[BLOCK_SIZE..].iter().all(|&b| b == 0));
        std::fs::rename(&next, dir.path().join(CURRENT)).unwrap();

        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, rec) = open(dir.path(), cfg.clone());
        assert!(rec.is_empty(), "{backend}");
        for i in 0..50u64 {
            let seq = wal
                .append("t", 0, Bytes::from(payload(i, 700)))
                .wait()
                .unwrap();
            assert_eq!(seq, i + 1);
        }
        wal.close().unwrap();
        let (_wal, got) = open(dir.path(), cfg);
        assert_eq!(got.len(), 50, "{backend}");
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.data, Bytes::from(payload(i as u64, 700)), "{backend}");
        }
    }
}

/// Whether this process holds a descriptor of `path` opened with O_DIRECT
/// (read from `/proc/self/fdinfo`; panics when it holds none at all).
#[cfg(target_os = "linux")]
fn opened_direct(path: &std::path::Path) -> bool {
    let path = path.canonicalize().unwrap();
    let mut flags = Vec::new();
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        // Descriptors may close meanwhile (other tests' threads).
        if std::fs::read_link(fd.path()).ok().as_deref() != Some(path.as_path()) {
            continue;
        }
        let Ok(info) =
            std::fs::read_to_string(std::path::Path::new("/proc/self/fdinfo").join(fd.file_name()))
        else {
            continue;
        };
        let octal = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .expect("a flags line")
            .trim();
        flags.push(i32::from_str_radix(octal, 8).unwrap());
    }
    assert!(!flags.is_empty(), "no descriptor of {}", path.display());
    flags.iter().any(|f| f & libc::O_DIRECT != 0)
}

/// Linux: O_DIRECT is written only there.
#[cfg(target_os = "linux")]
#[test]
fn both_backends_write_with_o_direct_in_every_write_unless_configured_otherwise() {
    // The target directory is on the checkout's filesystem (ext4 here), unlike a
    // possibly tmpfs-backed /tmp.
    let on_disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for backend in BACKENDS {
        for (mode, direct_io, want) in [
            (SyncMode::EveryWrite, None, true),
            (SyncMode::Interval, None, false),
            (SyncMode::Interval, Some(true), true),
            (SyncMode::EveryWrite, Some(false), false),
        ] {
            let dir = on_disk
                .path()
                .join(format!("{backend}-{mode}-{direct_io:?}"));
            let cfg = WalConfig {
                direct_io,
                ..config(backend, mode)
            };
            let (wal, _) = open(&dir, cfg.clone());
            assert_eq!(
                wal.direct_io(),
                want,
                "{backend} {mode} direct_io={direct_io:?}"
            );
            // What the engine says, and what the kernel holds: a descriptor of
            // `current.wal` opened O_DIRECT (its writes), or none.
            assert_eq!(
                opened_direct(&dir.join("current.wal")),
                want,
                "{backend} {mode} direct_io={direct_io:?}: the file's descriptors"
            );
            for i in 0..120u64 {
                wal.append("d", 0, Bytes::from(payload(i, 5000)))
                    .wait()
                    .unwrap();
            }
            // Rotated (256 KiB files): the next file is opened the same way.
            assert!(dir.join("00000001.wal").exists(), "{backend} {mode}");
            assert_eq!(
                opened_direct(&dir.join("current.wal")),
                want,
                "{backend} {mode} direct_io={direct_io:?}: after a rotation"
            );
            wal.close().unwrap();
            let (_, entries) = open(&dir, cfg);
            assert_eq!(
                entries.len(),
                120,
                "{backend} {mode} direct_io={direct_io:?}"
            );
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(&e.data[..], &payload(i as u64, 5000)[..]);
            }
        }
    }
}

/// Copies the newest file's first batch block far past the end of its log, where
/// only the probe that follows a log's end can see it.
/// Plants at 128 KiB of the newest file a valid batch header of it that would
/// continue its log (sequence 100, nothing claimed synced): what unsynced
/// pipelined writes that outlived a torn one leave after the end of the log.
fn plant_stale_batch(dir: &std::path::Path) {
    use streamline::{
        file_at::FileAt,
        wal::format::{decode_batch_header, decode_file_header, encode_batch_header},
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("current.wal"))
        .unwrap();
    let mut block = vec![0u8; 4096];
    f.read_exact_at(&mut block, 0).unwrap();
    let file = decode_file_header(&block).unwrap().id();
    f.read_exact_at(&mut block, 4096).unwrap();
    let mut h = decode_batch_header(&block, file).unwrap();
    assert_eq!(h.synced_through, 0);
    h.first_sequence = 100;
    encode_batch_header(&mut block[..48], &h, file.key);
    f.write_all_at(&block, 128 * 1024).unwrap();
}

fn newest(dir: &std::path::Path) -> streamline::wal::FileInfo {
    WalReader::open(dir)
        .unwrap()
        .scan()
        .files
        .last()
        .cloned()
        .unwrap()
}

#[test]
fn a_clean_close_lets_the_next_open_skip_probing_the_rest_of_the_newest_file() {
    use streamline::wal::{clean_close, Tail};
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        append_payloads(&wal, "c", 5, 1000);
        wal.close().unwrap();
        let marker = dir.path().join(clean_close::CLEAN_CLOSE_FILE);
        let m = clean_close::load(dir.path())
            .unwrap()
            .expect("a clean close leaves the marker");
        let cur = newest(dir.path());
        assert_eq!(
            (m.file_number, m.end, m.next_sequence),
            (cur.number, cur.valid_end, 6),
            "{backend}"
        );

        plant_stale_batch(dir.path());
        // With the marker the scan trusts the close and reads no further.
        let cur = newest(dir.path());
        assert_eq!(cur.tail, Tail::Clean, "{backend}");
        assert!(!cur.stale_after_end, "{backend}");
        // Without it, as after a crash, the probe finds the planted batch.
        let saved = std::fs::read(&marker).unwrap();
        std::fs::remove_file(&marker).unwrap();
        let cur = newest(dir.path());
        assert!(
            cur.stale_after_end,
            "{backend}: the probe missed a later batch"
        );
        assert!(matches!(cur.tail, Tail::Torn { .. }), "{backend}");

        // Opening removes the marker before anything can be appended.
        std::fs::write(&marker, &saved).unwrap();
        let (wal, entries) = open(dir.path(), cfg.clone());
        assert_eq!(entries.len(), 5, "{backend}");
        assert!(!marker.exists(), "{backend}: open left the marker");
        let seq = wal
            .append("c", 0, Bytes::from(payload(5, 1000)))
            .wait()
            .unwrap();
        assert_eq!(seq, 6);
        assert!(!marker.exists(), "{backend}");
        wal.close().unwrap();
        let m = clean_close::load(dir.path()).unwrap().unwrap();
        assert_eq!(m.next_sequence, 7, "{backend}");
        let (wal, entries) = open(dir.path(), cfg);
        assert_eq!(entries.len(), 6, "{backend}");
        wal.close().unwrap();
    }
}

/// After a clean close, a log that ends in front of bytes that are no batch
/// header at all (in a recycled file: the middle of an old batch's payload) is
/// clean too: the scan stops there and reports no torn tail. Without the
/// marker, as after a crash, it is a torn tail and the rest of the file is probed.
#[test]
fn a_clean_close_in_front_of_an_old_batchs_payload_is_clean() {
    use streamline::{
        file_at::FileAt,
        wal::{clean_close, Tail},
    };
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        append_payloads(&wal, "c", 5, 1000);
        wal.close().unwrap();
        let end = clean_close::load(dir.path()).unwrap().unwrap().end;
        plant_stale_batch(dir.path());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("current.wal"))
            .unwrap();
        f.write_all_at(&payload(99, 8192), end).unwrap();
        drop(f);
        let cur = newest(dir.path());
        assert_eq!(cur.tail, Tail::Clean, "{backend}");
        assert!(
            !cur.stale_after_end,
            "{backend}: probed after a clean close"
        );
        let marker = dir.path().join(clean_close::CLEAN_CLOSE_FILE);
        let saved = std::fs::read(&marker).unwrap();
        std::fs::remove_file(&marker).unwrap();
        let cur = newest(dir.path());
        assert!(
            matches!(cur.tail, Tail::Torn { offset, .. } if offset == end),
            "{backend}"
        );
        assert!(cur.stale_after_end, "{backend}");
        std::fs::write(&marker, saved).unwrap();
        let (wal, entries) = open(dir.path(), cfg);
        assert_eq!(entries.len(), 5, "{backend}");
        wal.close().unwrap();
    }
}

#[test]
fn a_clean_close_marker_that_does_not_match_is_ignored() {
    use streamline::wal::clean_close::{self, CLEAN_CLOSE_FILE};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(streamline::wal::BackendKind::Std, SyncMode::EveryWrite);
    let (wal, _) = open(dir.path(), cfg.clone());
    append_payloads(&wal, "c", 3, 1000);
    wal.close().unwrap();
    plant_stale_batch(dir.path());
    let marker = dir.path().join(CLEAN_CLOSE_FILE);
    let m = clean_close::load(dir.path()).unwrap().unwrap();
    let rewrite = |json: String| std::fs::write(&marker, json).unwrap();
    // A whole marker (its checksum matches) with one field changed.
    let whole = |change: fn(&mut clean_close::CleanClose)| {
        let mut c = m;
        change(&mut c);
        c.crc32c = c.checksum();
        serde_json::to_string(&c).unwrap()
    };
    let v1 = format!(
        r#"{{"version":1,"file_number":{},"end":{},"next_sequence":{}}}"#,
        m.file_number, m.end, m.next_sequence
    );
    for (what, json) in [
        ("another file", whole(|c| c.file_number += 1)),
        ("another key", whole(|c| c.file_key ^= 1)),
        ("an earlier end", whole(|c| c.end -= 4096)),
        ("another sequence", whole(|c| c.next_sequence += 1)),
        (
            "a checksum that does not match",
            serde_json::to_string(&clean_close::CleanClose {
                crc32c: m.crc32c ^ 1,
                ..m
            })
            .unwrap(),
        ),
        ("version 1 (no key, no checksum)", v1),
        ("unknown version", r#"{"version":3}"#.to_string()),
        ("garbage", "not json".to_string()),
    ] {
        rewrite(json);
        assert!(
            newest(dir.path()).stale_after_end,
            "a marker with {what} was trusted"
        );
    }
    // A marker of this file whose end lies beyond where the log ends says that
    // everything before that end was synced at the close: the log lost synced
    // batches, which is damage, never a tail to cut quietly.
    rewrite(whole(|c| {
        c.end += 4096;
        c.next_sequence += 1;
    }));
    match WalReader::open(dir.path()) {
        Err(Error::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, m.end);
            assert!(reason.contains("last clean close"), "{reason}");
        }
        other => panic!(
            "a log ending before its clean close's end was accepted: {:?}",
            other.err()
        ),
    }
    rewrite("not json".to_string());
    // Opening still works, and ends the file that holds stale batches.
    let (wal, entries) = open(dir.path(), cfg);
    assert_eq!(entries.len(), 3);
    assert!(!marker.exists());
    wal.close().unwrap();
}

#[test]
fn a_prepared_next_file_survives_a_restart_and_is_used_when_it_fits() {
    use std::os::unix::fs::MetadataExt;
    use streamline::wal::{
        files::{self, Prealloc},
        format::decode_file_header,
    };
    let next_header = |dir: &std::path::Path| {
        let b = std::fs::read(dir.join("next.wal")).unwrap();
        decode_file_header(&b[..4096]).unwrap().file_number
    };
    // Waits until file `number` is prepared whole: a close removes a next
    // file whose zero-fill it cut short. Only the header is read (a cached
    // page of a never-written block would count as written).
    let prepared = |dir: &std::path::Path, number: u64| {
        use std::os::unix::fs::FileExt;
        let mut header = vec![0u8; 4096];
        for _ in 0..5000 {
            let read = std::fs::File::open(dir.join("next.wal"))
                .and_then(|f| f.read_exact_at(&mut header, 0));
            if read.is_ok() && decode_file_header(&header).unwrap().file_number == number {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        panic!("file {number} was never prepared");
    };
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        wal.append("n", 0, Bytes::from_static(b"one"))
            .wait()
            .unwrap();
        let next = dir.path().join("next.wal");
        prepared(dir.path(), 2);
        wal.close().unwrap();
        assert_eq!(next_header(dir.path()), 2, "{backend}");
        let ino = std::fs::metadata(&next).unwrap().ino();

        // Reopened, the WAL rotates into the very file prepared before the restart.
        let (wal, entries) = open(dir.path(), cfg.clone());
        assert_eq!(entries.len(), 1);
        let before = wal.stats().rotations;
        let mut i = 0;
        while wal.stats().rotations == before {
            wal.append("n", 0, Bytes::from(payload(i, 3000)))
                .wait()
                .unwrap();
            i += 1;
        }
        assert_eq!(
            std::fs::metadata(dir.path().join("current.wal"))
                .unwrap()
                .ino(),
            ino,
            "{backend}: the kept next.wal became current.wal"
        );
        prepared(dir.path(), 3);
        wal.close().unwrap();

        // One that does not fit (another file number) is replaced.
        std::fs::remove_file(&next).unwrap();
        let p = files::prepare_file(dir.path(), 99, cfg.max_file_size, Prealloc::Reserve).unwrap();
        assert_eq!(p, next);
        let (wal, _) = open(dir.path(), cfg.clone());
        prepared(dir.path(), 3);
        wal.close().unwrap();
        assert_eq!(
            next_header(dir.path()),
            3,
            "{backend}: a misfit next.wal was kept"
        );
    }
}

/// A checkpoint below the stored one is still true and changes nothing: it must
/// not move `checkpoint.json` back below files already retired, which would leave
/// a log that starts after its checkpoint and refuses to open.
#[test]
fn a_lower_checkpoint_changes_nothing_and_the_log_still_opens() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig {
            retention_files: 0,
            ..config(backend, SyncMode::EveryWrite)
        };
        let (wal, _) = open(dir.path(), cfg.clone());
        let mut last = 0;
        let mut i = 0u64;
        while wal.stats().rotations < 3 {
            last = wal
                .append("c", 0, Bytes::from(payload(i, 8000)))
                .wait()
                .unwrap();
            i += 1;
        }
        wal.checkpoint(last).unwrap();
        assert!(
            !list_archived(dir.path())
                .unwrap()
                .iter()
                .any(|(n, _)| *n == 1),
            "{backend}: the first file should have been retired"
        );
        // From another handle, as a racing checkpointer would.
        let other = wal.clone();
        other.checkpoint(1).unwrap();
        other.checkpoint(0).unwrap();
        let stored = checkpoint::load(dir.path()).unwrap().unwrap();
        assert_eq!(stored.sequence, last, "{backend}");
        drop(other);
        wal.close().unwrap();
        let (wal, rec) = open(dir.path(), cfg);
        assert!(rec.is_empty(), "{backend}: {} entries replayed", rec.len());
        assert_eq!(
            wal.append("c", 0, Bytes::from_static(b"next"))
                .wait()
                .unwrap(),
            last + 1,
            "{backend}"
        );
    }
}

/// After an open whose checkpoint is ahead of the log (its files gone), pipelined
/// `every_write` appends are acknowledged in sequence order: the highest
/// acknowledged sequence ends at the last one, and a checkpoint there is accepted.
#[test]
fn appends_after_a_checkpoint_ahead_of_the_log_are_acknowledged_in_order() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig {
            max_batch_bytes: 4096,
            max_in_flight: 2,
            ..config(backend, SyncMode::EveryWrite)
        };
        let (wal, _) = open(dir.path(), cfg.clone());
        append_payloads(&wal, "c", 10, 100);
        wal.checkpoint(10).unwrap();
        wal.close().unwrap();
        remove_wal_files(dir.path());
        let (wal, _) = open(dir.path(), cfg.clone());
        for round in 0..20u64 {
            let pending: Vec<_> = (0..6u64)
                .map(|i| wal.append("c", 0, Bytes::from(payload(round * 6 + i, 3000))))
                .collect();
            let mut last = 0;
            for (i, c) in pending.into_iter().enumerate() {
                last = c.wait().unwrap();
                assert_eq!(last, 11 + round * 6 + i as u64, "{backend}");
            }
            assert_eq!(
                wal.last_acked_sequence(),
                last,
                "{backend}: the highest acknowledged sequence went back"
            );
        }
        wal.checkpoint(wal.last_acked_sequence()).unwrap();
        wal.close().unwrap();
    }
}

/// Appends may start as soon as `Wal::open` returns, before the recovery stream is
/// read: a rotation that renames the active file meanwhile must not hide its
/// entries from the stream, nor from `entries_from` iterators made before it.
#[test]
fn recovery_reads_the_active_file_after_appends_rotated_it() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        append_payloads(&wal, "r", 5, 1000);
        wal.close().unwrap();
        let (wal, rec) = Wal::open(dir.path(), cfg).unwrap();
        let from_two = rec.entries_from(2);
        let mut i = 0u64;
        while wal.stats().rotations < 2 {
            wal.append("r", 0, Bytes::from(payload(100 + i, 8000)))
                .wait()
                .unwrap();
            i += 1;
        }
        let got: Vec<_> = rec.collect::<Result<Vec<_>, _>>().unwrap();
        let want: Vec<_> = (0..5u64).map(|i| (i + 1, payload(i, 1000))).collect();
        assert_eq!(
            got.iter()
                .map(|e| (e.sequence, e.data.to_vec()))
                .collect::<Vec<_>>(),
            want,
            "{backend}"
        );
        let got: Vec<_> = from_two.collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(
            got.iter()
                .map(|e| (e.sequence, e.data.to_vec()))
                .collect::<Vec<_>>(),
            want[1..],
            "{backend}"
        );
        wal.close().unwrap();
    }
}

/// Deletes every WAL file of `dir`, leaving `checkpoint.json`: a log whose files
/// were lost.
fn remove_wal_files(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wal") {
            std::fs::remove_file(path).unwrap();
        }
    }
}

/// Once a file has been filled by large durable writes, the files prepared after
/// it are only reserved, not zero-filled (zeros would double the bytes written,
/// which costs those writes more than the metadata each sync then carries); the
/// entries written into reserved space are recovered like any others. Linux:
/// unwritten space is found with `SEEK_HOLE`.
#[cfg(target_os = "linux")]
#[test]
fn files_after_large_durable_writes_are_reserved_and_their_entries_recover() {
    use streamline::wal::files::{archived_path, first_unwritten};
    const ENTRY: usize = 190 << 10;
    const FILE: u64 = 2 << 20;
    for (backend, group) in WRITE_PATHS {
        // On the checkout's filesystem: O_DIRECT needs one that supports it.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let cfg = WalConfig {
            max_file_size: FILE,
            uring_group_writes: group,
            ..config(backend, SyncMode::EveryWrite)
        };
        let (wal, _) = open(dir.path(), cfg.clone());
        assert!(
            wal.direct_io(),
            "{backend}: the rule is for O_DIRECT writes"
        );
        // Ten entries of 192 KiB on disk fill a 2 MiB file: file 1 (large writes)
        // makes the rotation into file 2 prepare file 3 reserved only; file 3 is
        // archived once file 4 is active.
        let mut n = 0u64;
        while list_archived(dir.path()).unwrap().len() < 3 {
            wal.append("t", 0, Bytes::from(payload(n, ENTRY)))
                .wait()
                .expect("append");
            n += 1;
            assert!(n < 100, "{backend}: no third rotation after {n} entries");
        }
        // File 3 alone takes about ten batches where nothing was written before.
        let unwritten = wal.stats().unwritten_batches;
        assert!(
            unwritten >= 9,
            "{backend} {group:?}: {unwritten} batches into unwritten space"
        );
        wal.close().unwrap();

        let third = std::fs::File::open(archived_path(dir.path(), 3)).unwrap();
        let size = third.metadata().unwrap().len();
        assert_eq!(size, FILE);
        let hole = first_unwritten(&third).expect("SEEK_HOLE");
        // Its seal ends before the last 192 KiB; only a reserved file leaves the
        // rest unwritten (a zero-filled one is written to its end).
        assert!(
            hole > 1 << 20 && hole < size,
            "{backend} {group:?}: file 3 written up to {hole} of {size}"
        );

        let (_wal, got) = open(dir.path(), cfg);
        assert_eq!(got.len() as u64, n, "{backend} {group:?}");
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.sequence, i as u64 + 1);
            assert!(
                e.data == payload(i as u64, ENTRY),
                "{backend} {group:?}: entry {} differs",
                i + 1
            );
        }
    }
}

/// With page-cache files (`direct_io` off) at most one fdatasync is in flight:
/// Linux reports a failed writeback to one fsync of a file only, so a later
/// batch's fsync could take the error for an earlier batch's pages and leave the
/// earlier batch's own fsync a success for bytes that are not on the disk. With
/// `O_DIRECT` the `uring` backend keeps durable writes in flight side by side,
/// which shows that this load overlaps them when allowed to. 400 appends made at
/// once from one thread, in batches of at most 16 KiB.
#[test]
fn page_cache_files_never_have_two_fdatasyncs_in_flight() {
    for backend in BACKENDS {
        for direct in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = WalConfig {
                direct_io: Some(direct),
                max_batch_bytes: 16 << 10,
                max_file_size: 4 << 20,
                uring_group_writes: Some(false),
                ..config(backend, SyncMode::EveryWrite)
            };
            let (wal, _) = open(dir.path(), cfg.clone());
            let pending: Vec<_> = (0..400u64)
                .map(|i| (i, wal.append("p", 0, Bytes::from(payload(i, 3000)))))
                .collect();
            let mut seqs = Vec::new();
            for (i, c) in pending {
                seqs.push((c.wait().unwrap(), i));
            }
            let stats = wal.stats();
            assert!(stats.batches >= 50, "{backend} direct {direct}: {stats:?}");
            match (backend, direct) {
                (BackendKind::Uring, true) => assert!(
                    stats.max_syncs_in_flight >= 2,
                    "{backend}: O_DIRECT durable writes never overlapped: {stats:?}"
                ),
                _ => assert_eq!(
                    stats.max_syncs_in_flight, 1,
                    "{backend} direct {direct}: {stats:?}"
                ),
            }
            wal.close().unwrap();
            let (_wal, rec) = open(dir.path(), cfg);
            assert_eq!(rec.len(), 400, "{backend} direct {direct}");
            for (e, (s, i)) in rec.iter().zip(&seqs) {
                assert_eq!(e.sequence, *s);
                assert_eq!(&e.data[..], &payload(*i, 3000)[..]);
            }
        }
    }
}

/// `path`'s bytes with every clock reading zeroed (the file header's `created_ms`,
/// each entry's `timestamp`), the file's random key zeroed, and the checksums over
/// them zeroed (the header's and each batch's `header_crc`, `entries_crc`, each
/// entry's `crc`). Walks the
/// batches by the layout in docs/format.md; everything else, padding and the
/// zero-filled rest of the file included, is kept as it is.
fn without_clock_readings(path: &std::path::Path) -> Vec<u8> {
    fn u32_at(b: &[u8], at: usize) -> usize {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
    }
    let mut b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"STRMLWAL", "{}", path.display());
    assert_eq!(&b[8..10], &2u16.to_le_bytes(), "{}", path.display());
    b[24..44].fill(0);
    let mut pos = 4096;
    while pos + 48 <= b.len() && &b[pos..pos + 4] == b"SLB1" {
        let count = u32_at(&b, pos + 24);
        let payload_len = u32_at(&b, pos + 28);
        b[pos + 40..pos + 48].fill(0);
        let mut at = pos + 48;
        for _ in 0..count {
            let len = u32_at(&b, at + 4);
            b[at..at + 4].fill(0);
            b[at + 16..at + 24].fill(0);
            at += 8 + len;
        }
        assert_eq!(
            at,
            pos + 48 + payload_len,
            "{} batch at {pos}",
            path.display()
        );
        pos = at.div_ceil(4096) * 4096;
    }
    b
}

/// A WAL directory's files: name and contents.
type Files = Vec<(String, Vec<u8>)>;

#[test]
fn every_backend_and_write_path_writes_the_same_bytes() {
    use streamline::wal::{NewEntry, WalEntryType};
    // O_DIRECT needs a real filesystem, unlike a possibly tmpfs-backed /tmp.
    let on_disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sizes = [1usize, 100, 4000, 4049, 4096, 9000, 20_000, 0, 60_000];
    for mode in [SyncMode::EveryWrite, SyncMode::OsDefault] {
        // The std backend first: every other path is compared with it.
        let mut paths: Vec<(BackendKind, Option<bool>, Option<bool>)> = WRITE_PATHS
            .iter()
            .map(|&(backend, group)| (backend, group, None))
            .collect();
        paths.push((BackendKind::Uring, None, Some(false)));
        let mut reference: Option<(String, Files)> = None;
        for (backend, group, direct_io) in paths {
            let name = format!("{mode}-{backend}-group={group:?}-direct_io={direct_io:?}");
            let dir = on_disk.path().join(&name);
            let cfg = WalConfig {
                uring_group_writes: group,
                direct_io,
                ..config(backend, mode)
            };
            let (wal, _) = open(&dir, cfg.clone());
            // One writer waiting for each ack: every append is a batch of its own,
            // so the batches do not depend on timing.
            let mut written = Vec::new();
            for round in 0..6u64 {
                for (k, &len) in sizes.iter().enumerate() {
                    let i = round * 100 + k as u64;
                    wal.append(&format!("t{k}"), k as i32, Bytes::from(payload(i, len)))
                        .wait()
                        .unwrap();
                    written.push(payload(i, len));
                }
                let batch: Vec<NewEntry> = (0..5u64)
                    .map(|j| {
                        let data = payload(round * 100 + 50 + j, 700 * j as usize);
                        written.push(data.to_vec());
                        let mut e = NewEntry::record("batch", j as i32, Bytes::from(data));
                        if j == 4 {
                            e.entry_type = WalEntryType::Truncate;
                        }
                        e
                    })
                    .collect();
                wal.append_batch(batch).wait().unwrap();
            }
            wal.close().unwrap();
            assert!(
                list_archived(&dir).unwrap().len() >= 2,
                "{name}: the load should rotate"
            );
            let (wal, entries) = open(&dir, cfg);
            let got: Vec<Vec<u8>> = entries.iter().map(|e| e.data.to_vec()).collect();
            assert_eq!(got, written, "{name}: recovered entries");
            wal.close().unwrap();
            // Compared: every archived file and the active one. A prepared
            // `next.wal` holds a header only; whether it exists yet at close depends
            // on timing.
            let mut files: Files = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|f| f.ends_with(".wal") && f != "next.wal")
                .map(|f| {
                    let bytes = without_clock_readings(&dir.join(&f));
                    (f, bytes)
                })
                .collect();
            files.sort();
            match &reference {
                None => reference = Some((name, files)),
                Some((ref_name, ref_files)) => {
                    let names =
                        |v: &[(String, Vec<u8>)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
                    assert_eq!(names(&files), names(ref_files), "{name} against {ref_name}");
                    for ((file, got), (_, want)) in files.iter().zip(ref_files) {
                        assert_eq!(got.len(), want.len(), "{name} {file}: size");
                        if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
                            panic!("{name} {file}: first difference from {ref_name} at byte {at}");
                        }
                    }
                }
            }
        }
    }
}

/// A checkpoint whose retirement of a file fails keeps that file and the ones
/// after it listed for retention: the next checkpoint retires them, even at the
/// same sequence, and the log still opens. (They used to be dropped from the list
/// and outlive newer files that were retired, and the next open refused the log:
/// files missing in between.) A file already removed by hand counts as retired,
/// one whose recycled name is taken is deleted instead, and a recycled entry
/// that cannot be removed is passed over by the preparer of the next file:
/// each used to fail every later checkpoint (retention stopped for good) or
/// the next rotation (the WAL failed).
#[test]
fn files_a_failed_retirement_left_are_retired_by_the_next_checkpoint() {
    use std::time::{Duration, Instant};
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        let mut last = 0;
        let mut i = 0u64;
        while wal.stats().rotations < 4 {
            last = wal
                .append("c", 0, Bytes::from(payload(i, 8000)))
                .wait()
                .unwrap();
            i += 1;
        }
        // The preparer of the next file, which looks at recycled files too, is done.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dir.path().join("next.wal").exists() {
            assert!(
                Instant::now() < deadline,
                "{backend}: next.wal not prepared"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let numbers = |dir: &std::path::Path| -> Vec<u64> {
            list_archived(dir)
                .unwrap()
                .iter()
                .map(|(n, _)| *n)
                .collect()
        };
        assert_eq!(numbers(dir.path()), [1, 2, 3, 4], "{backend}");
        // A directory where file 1 would be renamed to for recycling (it is
        // deleted instead), file 2 removed by hand, and a directory in place of
        // file 3, which cannot be removed: retiring file 3 fails.
        let blocker = dir.path().join("recycle-00000001.wal");
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("x"), b"x").unwrap();
        std::fs::remove_file(dir.path().join("00000002.wal")).unwrap();
        let third = dir.path().join("00000003.wal");
        std::fs::remove_file(&third).unwrap();
        std::fs::create_dir(&third).unwrap();
        std::fs::write(third.join("x"), b"x").unwrap();
        let e = wal
            .checkpoint(last)
            .expect_err("retiring file 3 should have failed");
        assert!(e.to_string().contains("00000003.wal"), "{backend}: {e}");
        assert_eq!(numbers(dir.path()), [3, 4], "{backend}");
        std::fs::remove_dir_all(&third).unwrap();
        wal.checkpoint(last).unwrap();
        assert_eq!(
            numbers(dir.path()),
            [4],
            "{backend}: retention kept one file"
        );
        // The recycled entry that is a directory stays; the next files are
        // made afresh.
        let rotations = wal.stats().rotations;
        while wal.stats().rotations < rotations + 2 {
            last = wal
                .append("c", 0, Bytes::from(payload(i, 8000)))
                .wait()
                .unwrap();
            i += 1;
        }
        assert!(blocker.is_dir(), "{backend}");
        for _ in 0..40 {
            last = wal
                .append("c", 0, Bytes::from(payload(i, 8000)))
                .wait()
                .unwrap();
            i += 1;
        }
        wal.checkpoint(last - 3).unwrap();
        wal.close().unwrap();
        let (wal, rec) = open(dir.path(), cfg);
        assert_eq!(
            rec.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            (last - 2..=last).collect::<Vec<_>>(),
            "{backend}"
        );
        wal.close().unwrap();
    }
}

/// After a close, a checkpoint from a handle still held is refused: the
/// directory may already be another WAL's, whose checkpoint it must not move.
#[test]
fn a_closed_wal_refuses_checkpoints_and_leaves_the_next_owners_alone() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        append_payloads(&wal, "c", 10, 100);
        wal.checkpoint(2).unwrap();
        let stale = wal.clone();
        wal.close().unwrap();
        assert!(
            matches!(stale.checkpoint(3), Err(Error::Closed)),
            "{backend}"
        );
        let (wal, rec) = open(dir.path(), cfg);
        assert_eq!(rec.len(), 8, "{backend}");
        wal.checkpoint(10).unwrap();
        assert!(
            matches!(stale.checkpoint(5), Err(Error::Closed)),
            "{backend}"
        );
        assert_eq!(
            checkpoint::load(dir.path()).unwrap().unwrap().sequence,
            10,
            "{backend}"
        );
        wal.close().unwrap();
    }
}

/// A `current.wal` that is a dangling link (moved to a volume not mounted) is
/// refused at open, naming it: taken as absent, the open put a new file over
/// it and went on without its entries.
#[cfg(unix)]
#[test]
fn a_dangling_current_wal_link_is_refused_not_replaced() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let away = tempfile::tempdir().unwrap();
        let cfg = config(backend, SyncMode::EveryWrite);
        let (wal, _) = open(dir.path(), cfg.clone());
        append_payloads(&wal, "c", 10, 100);
        wal.close().unwrap();
        let current = dir.path().join("current.wal");
        let moved = away.path().join("current.wal");
        std::fs::rename(&current, &moved).unwrap();
        std::os::unix::fs::symlink(away.path().join("missing.wal"), &current).unwrap();
        let e = Wal::open(dir.path(), cfg.clone())
            .map(|_| ())
            .expect_err("a dangling current.wal must not be replaced");
        assert!(e.to_string().contains("current.wal"), "{backend}: {e}");
        assert!(
            std::fs::symlink_metadata(&current)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{backend}: the link is left alone"
        );
        std::fs::remove_file(&current).unwrap();
        std::fs::rename(&moved, &current).unwrap();
        let (wal, rec) = open(dir.path(), cfg);
        assert_eq!(
            rec.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>(),
            "{backend}"
        );
        wal.close().unwrap();
    }
}

/// A file whose (checksummed) header carries the largest file number is
/// refused as corrupt: the next file's number would wrap to 0.
#[test]
fn a_file_number_with_no_successor_is_refused() {
    use streamline::wal::format::{encode_file_header, new_file_key, BLOCK_SIZE};
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let mut file = vec![0u8; 4 * BLOCK_SIZE];
        encode_file_header(&mut file, u64::MAX, 1, new_file_key());
        std::fs::write(dir.path().join("current.wal"), &file).unwrap();
        let e = Wal::open(dir.path(), config(backend, SyncMode::EveryWrite))
            .map(|_| ())
            .expect_err("file number u64::MAX must be refused");
        assert!(
            e.to_string().contains("leaves none for a next file"),
            "{backend}: {e}"
        );
    }
}

/// A `max_file_size` past the largest accepted (1 TiB) is refused by the
/// configuration check, naming the setting, before the directory is created: a
/// size past i64::MAX used to fail only at `fallocate`, once the directory had
/// been created and locked.
#[test]
fn a_file_size_past_the_largest_accepted_is_refused_before_the_directory_is_touched() {
    for backend in BACKENDS {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("wal");
        for size in [u64::MAX - 4095, (1u64 << 40) + 4096] {
            let cfg = WalConfig {
                max_file_size: size,
                ..config(backend, SyncMode::EveryWrite)
            };
            let err = cfg
                .validate()
                .expect_err("an oversized file size was accepted");
            assert!(
                matches!(&err, Error::InvalidConfig { field: "--wal-max-file-size", value, .. } if *value == size.to_string()),
                "{backend}: {err}"
            );
            assert!(err.to_string().contains("at most 1099511627776"), "{err}");
            let err = streamline::wal::Wal::open(&dir, cfg)
                .map(|_| ())
                .expect_err("an oversized file size was accepted");
            assert!(
                matches!(
                    err,
                    Error::InvalidConfig {
                        field: "--wal-max-file-size",
                        ..
                    }
                ),
                "{backend}: {err}"
            );
            assert!(!dir.exists(), "{backend}: the directory was created");
        }
        let largest = WalConfig {
            max_file_size: 1 << 40,
            ..config(backend, SyncMode::EveryWrite)
        };
        largest.validate().unwrap();
    }
}
