//! Per-partition wake-ups for long-polling Fetches.
//!
//! A waiting Fetch registers one [`Notify`] with each of its partitions (a
//! [`Watch`]); a partition notifies the Fetches registered with it whenever
//! what a read of it can return changes: its high watermark moves (records
//! applied, or the end cut back), its log start moves (DeleteRecords,
//! retention, a compaction that changes the first segment), or its topic is
//! deleted. An append wakes only the Fetches watching its partition, as
//! Kafka's delayed-fetch purgatory is keyed by partition. A [`Watch`]
//! deregisters when dropped (the Fetch answered, or its connection closed and
//! its future was dropped), so a partition holds only the Fetches waiting on
//! it now.

use std::sync::{
    atomic::{fence, AtomicUsize, Ordering},
    Arc, Mutex, PoisonError, Weak,
};

use tokio::sync::Notify;

use super::Partition;

/// The Fetches waiting on one partition (see the [module](self) docs).
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    /// How many are registered (changed under `list`): a change with none
    /// waiting takes no lock.
    count: AtomicUsize,
    /// One [`Notify`] per waiting Fetch, shared with its other partitions.
    list: Mutex<Vec<Arc<Notify>>>,
}

impl Watchers {
    /// Registers `notify`. The caller issues a `SeqCst` fence after its last
    /// registration and before it reads the positions it compares against
    /// (see [`Watch::new`]).
    fn add(&self, notify: &Arc<Notify>) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.push(Arc::clone(notify));
        self.count.store(list.len(), Ordering::Relaxed);
    }

    /// Removes one registration of `notify`, if there is one.
    fn remove(&self, notify: &Arc<Notify>) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = list.iter().position(|n| Arc::ptr_eq(n, notify)) {
            list.swap_remove(i);
        }
        self.count.store(list.len(), Ordering::Relaxed);
    }

    /// Notifies every registered Fetch. Call after the change is stored: the
    /// fence pairs with the one [`Watch::new`] issues after registering, so
    /// either this sees the registration or the Fetch sees the change.
    pub(crate) fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        for n in self
            .list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            // Stores a permit when the Fetch is not waiting right now (it is
            // reading): it looks again as soon as it waits.
            n.notify_one();
        }
    }

    /// How many Fetches are registered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// A long poll's registration with each of its partitions, removed when
/// dropped. It keeps no partition open: a partition dropped meanwhile took
/// its registrations with it.
#[derive(Debug)]
pub(crate) struct Watch {
    notify: Arc<Notify>,
    partitions: Vec<Weak<Partition>>,
}

impl Watch {
    /// Registers with each of `partitions`. A change stored after this returns
    /// wakes [`Watch::changed`]; one stored before may not, so the caller
    /// compares the positions it read before with those it reads now.
    pub(crate) fn new<'a>(partitions: impl IntoIterator<Item = &'a Arc<Partition>>) -> Watch {
        let notify = Arc::new(Notify::new());
        let partitions = partitions
            .into_iter()
            .map(|p| {
                p.watchers().add(&notify);
                Arc::downgrade(p)
            })
            .collect();
        // Pairs with the fence in `Watchers::wake`: the positions read after
        // this are at least those of any change that did not see us.
        fence(Ordering::SeqCst);
        Watch { notify, partitions }
    }

    /// Resolves once one of the partitions changed since the last call
    /// returned (or since [`Watch::new`], for the first), perhaps spuriously.
    pub(crate) async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        for p in &self.partitions {
            if let Some(p) = p.upgrade() {
                p.watchers().remove(&self.notify);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::{batch::tests::make_batch, partition::tests::store};

    /// Whether `watch` has been notified since it was last found so (polls
    /// [`Watch::changed`] once, without waiting).
    fn notified(rt: &tokio::runtime::Runtime, watch: &Watch) -> bool {
        rt.block_on(async { tokio::time::timeout(Duration::ZERO, watch.changed()).await })
            .is_ok()
    }

    /// A partition's watchers are notified at each change to what a read of
    /// it can return, and only then: records applied, the end cut back, the
    /// log start moved by DeleteRecords or by retention, the topic deleted.
    /// Another partition's changes notify none of them, and a dropped watch
    /// leaves no registration behind.
    #[test]
    fn a_partition_wakes_its_own_watchers_at_each_change_of_its_readable_state() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // 3000-byte batches in 4 KiB segments: one batch per segment.
        let p = Arc::new(Partition::open("t", 0, dir.path().join("t-0"), 4096).unwrap());
        let q = Arc::new(Partition::open("t", 1, dir.path().join("t-1"), 4096).unwrap());
        let big = || make_batch(0, &[&[7u8; 3000]]);
        let watch = Watch::new([&p]);
        let other = Watch::new([&p, &q]);
        assert_eq!((p.watchers().len(), q.watchers().len()), (2, 1));
        assert!(!notified(&rt, &watch), "nothing changed yet");

        for _ in 0..3 {
            store(&q, big());
        }
        assert!(!notified(&rt, &watch), "another partition's appends");
        assert!(notified(&rt, &other), "a watch of both partitions");

        for _ in 0..4 {
            store(&p, big());
        }
        assert!(notified(&rt, &watch), "records applied");
        assert!(
            !notified(&rt, &watch),
            "one wake-up stored for many changes"
        );

        p.set_high_watermark(3);
        assert!(notified(&rt, &watch), "the end cut back");

        p.set_high_watermark(4);
        assert!(notified(&rt, &watch));
        assert_eq!(p.delete_records(1).unwrap(), 1);
        assert!(notified(&rt, &watch), "DeleteRecords");

        // Retention by size removes the first segments.
        let (removed, _) = p.apply_retention(0, None, Some(4096)).unwrap();
        assert!(removed > 0);
        assert!(p.log_start_offset() > 1);
        assert!(notified(&rt, &watch), "retention");

        p.mark_deleted();
        assert!(notified(&rt, &watch), "topic deleted");

        drop(other);
        assert_eq!((p.watchers().len(), q.watchers().len()), (1, 0));
        drop(watch);
        assert_eq!(p.watchers().len(), 0);
    }

    /// Nobody waiting: a change takes no lock and stores no wake-up for a
    /// watch registered later, which compares positions instead.
    #[test]
    fn a_watch_registered_after_a_change_is_not_woken_by_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(Partition::open("t", 0, dir.path().join("t-0"), 1 << 20).unwrap());
        store(&p, make_batch(0, &[b"a"]));
        let watch = Watch::new([&p]);
        assert!(!notified(&rt, &watch));
        store(&p, make_batch(0, &[b"b"]));
        assert!(notified(&rt, &watch));
    }
}
