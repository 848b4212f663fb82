//! Checkpoint policy: `fdatasync` every changed segment, then record in the WAL that
//! every entry up to the last applied sequence is in the segments, which lets the WAL
//! delete files the checkpoint covers. With the WAL disabled this is the only thing
//! that makes produced data durable.

use std::{
    sync::{atomic::Ordering, PoisonError},
    time::Duration,
};

use crate::error::Result;

use super::Shared;

/// Runs one checkpoint.
///
/// The applied sequence is read *before* the segments are synced: every entry at or
/// below it was written to its segment before it was published, so the syncs below
/// cover it.
pub(super) fn checkpoint(shared: &Shared) -> Result<()> {
    let mut done = shared.checkpointed.lock().unwrap_or_else(PoisonError::into_inner);
    let seq = shared.applied_seq.load(Ordering::Acquire);
    let topics: Vec<_> = shared.topics.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
    for t in topics {
        for p in &t.partitions {
            p.sync()?;
        }
    }
    if let Some(wal) = &shared.wal {
        if seq > *done {
            wal.checkpoint(seq)?;
            *done = seq;
        }
    }
    Ok(())
}

/// The periodic checkpoint thread: one checkpoint every `checkpoint_interval_ms` until
/// `stop` fires or is dropped.
pub(super) fn run(shared: &Shared, stop: &crossbeam_channel::Receiver<()>) {
    let every = Duration::from_millis(shared.config.storage.checkpoint_interval_ms);
    loop {
        match stop.recv_timeout(every) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if let Err(e) = checkpoint(shared) {
            tracing::error!(error = %e, "periodic checkpoint failed");
        }
    }
}
