//! Checkpoint policy: `fdatasync` every changed segment, then record in the WAL that
//! every entry up to the last applied sequence is in the segments, which lets the WAL
//! delete files the checkpoint covers. With the WAL disabled this is the only thing
//! that makes produced data durable.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc, PoisonError},
    time::{Duration, Instant},
};

use crate::error::{Error, Result};

use super::{
    compaction::{CompactionPolicy, CompactionStats},
    recovery_points::{self, RecoveryPoints, TopicPoints},
    Shared, Topic,
};

#[cfg(test)]
thread_local! {
    /// Called after each partition of a retention pass on this thread (tests).
    pub(crate) static AFTER_PARTITION_RETENTION: std::cell::RefCell<Option<Box<dyn FnMut()>>> =
        const { std::cell::RefCell::new(None) };
    /// Called by a checkpoint on this thread once its segments are synced,
    /// before it stores the recovery points (tests).
    pub(crate) static BEFORE_POINTS_STORED: std::cell::RefCell<Option<Box<dyn FnMut()>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs one checkpoint.
///
/// The applied sequence is read *before* the segments are synced: every entry at or
/// below it was written to its segment before it was published, so the syncs below
/// cover it.
///
/// A failed segment sync fails storage and stops checkpoints until a restart
/// (see [`super::fail_segments`]): neither the recovery points nor the WAL's
/// checkpoint move past data a failed sync covered.
pub(super) fn checkpoint(shared: &Shared) -> Result<()> {
    let mut done = shared
        .checkpointed
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    stopped(shared)?;
    let seq = shared.applied_seq.load(Ordering::Acquire);
    let topics = shared.checkpoint_topics();
    // Each partition's end is read before its segments are synced, so the syncs
    // cover it; the recovery points are written before the WAL checkpoint, so they
    // are never behind what the checkpoint lets the WAL drop.
    let mut points = RecoveryPoints {
        version: 1,
        ..RecoveryPoints::default()
    };
    let mut synced = Vec::with_capacity(topics.len());
    for t in topics {
        let ends = topic_points(&t);
        for p in &t.partitions {
            if let Err(e) = p.sync() {
                super::fail_segments(shared, format!("segment sync failed: {e}"));
                if shared.wal.is_none() {
                    // The others synced all the same, the shutdown's last
                    // checkpoint too (see `stopped`).
                    return stopped(shared);
                }
                return Err(e);
            }
        }
        synced.push((Arc::clone(&t), ends.ends.clone()));
        points.topics.insert(t.name.clone(), ends);
    }
    #[cfg(test)]
    BEFORE_POINTS_STORED.with(|h| {
        if let Some(h) = h.borrow_mut().as_mut() {
            h();
        }
    });
    // A segment that failed meanwhile (an append's roll) may hold less than the
    // ends read above.
    stopped(shared)?;
    {
        let mut stored = shared.points.lock().unwrap_or_else(PoisonError::into_inner);
        // Only topics still in the map or being deleted, as they are now: a
        // topic that left since the syncs above (its delete ended, or its name
        // was created anew, with another id) is recorded by no checkpoint
        // from here on, and a create drops its name's points without waiting
        // for this checkpoint to end (`TopicManager::forget_points_of`).
        // (A topic that went to `unopened` meanwhile, its delete failed and
        // its reopening too, keeps the ends synced above: the loop below
        // takes the stored ones only for a topic this checkpoint did not
        // read.)
        let live: HashMap<String, String> = shared
            .checkpoint_topics()
            .iter()
            .map(|t| (t.name.clone(), t.id.to_string()))
            .collect();
        let unopened = shared
            .unopened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        points
            .topics
            .retain(|name, tp| live.get(name) == Some(&tp.id) || unopened.contains(name));
        // A topic out of the map because it could not be opened again after
        // its delete failed keeps its points (see `Shared::unopened`).
        for name in shared
            .unopened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            if let (false, Some(kept)) = (points.topics.contains_key(name), stored.topics.get(name))
            {
                points.topics.insert(name.clone(), kept.clone());
            }
        }
        if *stored != points {
            recovery_points::store(&shared.config.storage.data_dir, &points)?;
            *stored = points;
        }
    }
    // The recovery points are durable: producer snapshots below them are read
    // by no start any more.
    for (t, ends) in &synced {
        for (p, &end) in t.partitions.iter().zip(ends) {
            p.drop_snapshots_below(end);
        }
    }
    if let Some(wal) = &shared.wal {
        if seq > *done {
            wal.checkpoint(seq)?;
            *done = seq;
        } else if let Err(e) = wal.checkpoint(seq) {
            // Nothing new: the call's retention retries what an earlier one
            // left (a file it could not retire, a directory fsync), and costs
            // nothing when there is nothing to do. Its failure is a warning:
            // the checkpoint itself is stored.
            tracing::warn!(error = %e, "could not retire WAL files the checkpoint covers; the next checkpoint tries again");
        }
    }
    Ok(())
}

/// A topic's recovery points: where each partition ends now.
fn topic_points(t: &Topic) -> TopicPoints {
    TopicPoints {
        id: t.id.to_string(),
        ends: t.partitions.iter().map(|p| p.log_end_offset()).collect(),
    }
}

/// The recovery points of `topics` as they end now, for a start that has
/// synced every partition itself (nothing is appended meanwhile).
pub(super) fn points_of<'a>(topics: impl Iterator<Item = &'a Arc<Topic>>) -> RecoveryPoints {
    RecoveryPoints {
        version: 1,
        topics: topics.map(|t| (t.name.clone(), topic_points(t))).collect(),
        crc32c: None,
    }
}

/// Fails once a segment write or sync has failed.
///
/// Without a WAL the segments are the only copy of what was acknowledged:
/// every partition's segments are still synced (a partition whose own sync
/// failed refuses, see `Partition::sync`), each checkpoint and the
/// shutdown's, though none is recorded. Before, one partition's failure
/// stopped the syncs of all of them, the shutdown's too, and the exit
/// message spoke of a WAL to recover from.
fn stopped(shared: &Shared) -> Result<()> {
    let Some(why) = shared.segments_failed.get() else {
        return Ok(());
    };
    let then = if shared.wal.is_some() {
        "a restart recovers from the WAL".to_string()
    } else {
        let unsynced = sync_without_wal(shared);
        let synced = if unsynced == 0 {
            "every partition's segments were synced".to_string()
        } else {
            format!("the segments of {unsynced} partition(s) could not be synced (the first of them logged), the others' were")
        };
        format!("without a WAL nothing recovers what the failed segment lost; {synced}")
    };
    Err(Error::io(
        "checkpoint",
        &shared.config.storage.data_dir,
        std::io::Error::other(format!(
            "no checkpoint after a failed segment write or sync ({why}); {then}"
        )),
    ))
}

/// Syncs every partition's segments, after a segment write or sync failed
/// with no WAL to recover from; returns how many partitions could not be
/// synced (each logged: the one that failed, and any other).
fn sync_without_wal(shared: &Shared) -> usize {
    let mut unsynced = 0;
    for t in shared.checkpoint_topics() {
        for (i, p) in t.partitions.iter().enumerate() {
            if let Err(e) = p.sync() {
                unsynced += 1;
                crate::log_limit::limited!(warn, topic = %t.name, partition = i, error = %e, "could not sync the partition's segments");
            }
        }
    }
    unsynced
}

/// The periodic checkpoint thread: one checkpoint every `checkpoint_interval_ms` until
/// `stop` fires or is dropped.
pub(super) fn run(shared: &Shared, stop: &crossbeam_channel::Receiver<()>) {
    let storage = &shared.config.storage;
    let every = Duration::from_millis(storage.checkpoint_interval_ms);
    let retention_every = Duration::from_millis(storage.retention_check_interval_ms);
    // Every pass, even with no limit set for the broker: a topic may have its
    // own. At once after a start out of space (see `TopicManager::new`).
    let mut next_retention = Instant::now()
        + if shared.started_out_of_space {
            Duration::ZERO
        } else {
            retention_every
        };
    let mut periodic = Periodic {
        synced_after_failure: false,
        last: Instant::now(),
    };
    loop {
        let wait = every
            .saturating_sub(periodic.last.elapsed())
            .min(next_retention.saturating_duration_since(Instant::now()));
        match stop.recv_timeout(wait) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        #[cfg(test)]
        shared.panic_if_asked(super::CHECKPOINT_THREAD);
        if periodic.last.elapsed() >= every {
            periodic.run(shared);
        }
        if Instant::now() >= next_retention {
            // Checkpoints go on between its partitions: a pass over many
            // partitions, each with its fsyncs, held them back (without a
            // WAL, acknowledged records stayed in the page cache alone for
            // as long as the pass took).
            let mut between = || {
                if periodic.last.elapsed() >= every {
                    periodic.run(shared);
                }
            };
            // Each failing partition was logged.
            let _ = retention_between(shared, &mut between);
            next_retention = Instant::now() + retention_every;
        }
    }
}

/// What the checkpoint thread does every `checkpoint_interval_ms`.
struct Periodic {
    /// Without a WAL, the segments were synced once after a segment failed.
    synced_after_failure: bool,
    /// When it last ended: the interval runs from there (a checkpoint as
    /// long as the interval would otherwise run again at once, after each of
    /// a retention pass's partitions).
    last: Instant,
}

impl Periodic {
    fn run(&mut self, shared: &Shared) {
        // Once a segment failed, none is made (and that was logged then);
        // without a WAL every partition's segments are synced once more, the
        // batches acknowledged before the failure (produces are refused from
        // then on) made durable without waiting for the shutdown.
        if shared.segments_failed.get().is_none() {
            if let Err(e) = checkpoint(shared) {
                tracing::error!(error = %e, "periodic checkpoint failed");
            }
        } else if shared.wal.is_none() && !self.synced_after_failure {
            self.synced_after_failure = true;
            match sync_without_wal(shared) {
                0 => tracing::info!(
                    "synced every partition's segments after a failed segment write or sync (no WAL)"
                ),
                unsynced => tracing::warn!(
                    partitions_not_synced = unsynced,
                    "synced the partitions' segments after a failed segment write or sync (no WAL); some could not be (the first of them logged)"
                ),
            }
        }
        self.last = Instant::now();
    }
}

/// The log cleaner thread: one compaction pass every `cleaner_backoff_ms` until
/// `stop` fires or is dropped. It has its own thread so that a long pass does
/// not hold back checkpoints (which, with the WAL disabled, are what makes
/// produced data durable).
pub(super) fn run_cleaner(shared: &Shared, stop: &crossbeam_channel::Receiver<()>) {
    let every = Duration::from_millis(shared.config.storage.cleaner_backoff_ms);
    loop {
        match stop.recv_timeout(every) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        compact(shared);
    }
}

/// One compaction pass over every partition of every compacted topic, each by its
/// topic's settings (see [`super::compaction`]), until the broker starts shutting
/// down. A partition that fails is logged and left for the next pass; the others
/// go on. Returns the sum of what was done.
pub(super) fn compact(shared: &Shared) -> CompactionStats {
    let mut total = CompactionStats::default();
    // Read before the topics' configs: a pass that used a `delete.retention.ms`
    // changed meanwhile sees the count move once it has stored when its
    // waiting tombstones come due, and makes them judged again (the change's
    // own recheck may have come before that store, and been overwritten).
    let retention_changes = shared.delete_retention_changes.load(Ordering::SeqCst);
    #[cfg(test)]
    let mut pause = shared.compaction_pause.lock().unwrap().take();
    for listed in shared.topic_list() {
        if !listed.configs.compact() {
            continue;
        }
        // Each partition's pass by its own start, which its tombstones' delete
        // horizon counts from (a round over many partitions may take long).
        let policy = |t: &Topic, now_ms| CompactionPolicy {
            now_ms,
            delete_retention_ms: t.configs.delete_retention_ms(),
            min_compaction_lag_ms: t.configs.min_compaction_lag_ms(),
            min_cleanable_dirty_ratio: t.configs.min_cleanable_dirty_ratio(),
            map_bytes: usize::try_from(shared.config.storage.cleaner_dedupe_buffer_bytes)
                .unwrap_or(usize::MAX),
            segment_bytes: t.configs.segment_bytes(&shared.config.storage),
        };
        for p in &listed.partitions {
            if p.is_deleted() {
                continue;
            }
            if shared.closing.load(Ordering::Acquire) {
                return total;
            }
            #[cfg(test)]
            if let Some((reached, go)) = pause.take() {
                let _ = reached.send(());
                let _ = go.recv();
            }
            // The topic's configs as they are now, not as the round found
            // them: a change answered since (`cleanup.policy=delete`, after
            // which keyless records are taken) is in force for this pass.
            // Read after the count of changes, so that a change after the
            // read moves it, and the pass stops at its next batch if it
            // changed this topic's configs (another topic's goes on).
            let changes = std::cell::Cell::new(shared.config_changes.load(Ordering::SeqCst));
            let Some(t) = shared.current(&listed).filter(|t| t.configs.compact()) else {
                break;
            };
            let halt = || {
                if shared.closing.load(Ordering::Acquire) {
                    return true;
                }
                let now = shared.config_changes.load(Ordering::SeqCst);
                if now == changes.get() {
                    return false;
                }
                changes.set(now);
                shared
                    .current(&listed)
                    .is_none_or(|c| c.configs != t.configs)
            };
            let done = p.compact_while(&policy(&t, super::segment::now_ms()), &halt);
            if shared.delete_retention_changes.load(Ordering::SeqCst) != retention_changes {
                p.recheck_waiting_tombstones();
            }
            match done {
                Ok(s) => {
                    total.segments += s.segments;
                    total.bytes_before += s.bytes_before;
                    total.bytes_after += s.bytes_after;
                    total.records_removed += s.records_removed;
                }
                Err(e) => {
                    tracing::error!(topic = %t.name, partition = p.index(), error = %e, "compaction failed");
                }
            }
        }
    }
    total
}

/// Applies retention to every partition (see [`super::Partition::apply_retention`]),
/// each topic by its own `retention.ms` / `retention.bytes` or the broker's; a
/// topic whose `cleanup.policy` lacks `delete` (compact only) loses only what lies
/// below its log start.
/// A partition that fails is logged and the others still get theirs: one failing
/// directory does not keep the rest from freeing space. Deletes of this run
/// whose files are still in the trash are tried again first.
/// Returns the segments and bytes deleted, or the first partition's error.
pub(super) fn retention(shared: &Shared) -> Result<(usize, u64)> {
    retention_between(shared, &mut || {})
}

/// [`retention`], calling `between` after each partition.
fn retention_between(shared: &Shared, between: &mut dyn FnMut()) -> Result<(usize, u64)> {
    super::finish_deletes(shared);
    let storage = &shared.config.storage;
    let now_ms = super::segment::now_ms();
    let topics = shared.topic_list();
    let (mut segments, mut bytes) = (0, 0);
    let mut failed = None;
    'topics: for listed in topics {
        for p in &listed.partitions {
            // A shutdown waits for the pass (it joins this thread), which
            // over many partitions, each with its fsyncs, may take long: a
            // supervisor's grace period could end in a SIGKILL. The rest is
            // left for the next start's pass.
            if shared.closing.load(Ordering::Acquire) {
                break 'topics;
            }
            if p.is_deleted() {
                continue;
            }
            // The topic's configs as they are now: a pass over many
            // partitions may take long, and a change answered meanwhile (a
            // longer retention.ms, `delete` taken out of cleanup.policy) is in
            // force for the partitions after it.
            let Some(t) = shared.current(&listed) else {
                break;
            };
            let (by_age, by_size) = if t.configs.delete() {
                (
                    t.configs.retention_ms(storage),
                    t.configs.retention_bytes(storage),
                )
            } else {
                (None, None)
            };
            // A snapshot, which must be durable before the expired segments
            // go, that could not be written for want of space is tried again
            // with the reserve's.
            match shared
                .reserve
                .retry(|| p.apply_retention(now_ms, by_age, by_size))
            {
                Ok((n, b)) => {
                    segments += n;
                    bytes += b;
                }
                Err(e) => {
                    tracing::error!(topic = %t.name, partition = p.index(), error = %e, "retention failed");
                    failed.get_or_insert(e);
                }
            }
            #[cfg(test)]
            AFTER_PARTITION_RETENTION.with(|h| {
                if let Some(f) = h.borrow_mut().as_mut() {
                    f();
                }
            });
            #[cfg(test)]
            std::thread::sleep(*shared.retention_partition_pause.lock().unwrap());
            between();
        }
    }
    // Taken again once there is room for it (at once, when it was not
    // needed).
    shared.reserve.refill();
    failed.map_or(Ok((segments, bytes)), Err)
}
