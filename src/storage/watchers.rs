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
    list: Mutex<Slots>,
    /// Registrations compared with the one being removed, by
    /// [`Watchers::holds`] (for tests of the removals' cost).
    #[cfg(test)]
    probes: AtomicUsize,
    /// `notify_one` calls made by [`Watchers::wake`] (for tests).
    #[cfg(test)]
    notifies: AtomicUsize,
}

/// Registrations by slot: each [`Watch`] keeps the slot of each of its
/// registrations, so removing one is a look at that slot, not a search of the
/// list (the list is locked by the apply thread's wake-ups, and a burst of K
/// answered Fetches would otherwise make K²/2 comparisons under it).
#[derive(Debug, Default)]
struct Slots {
    slots: Vec<Option<Arc<Notify>>>,
    /// Empty slots, reused before the list grows.
    free: Vec<usize>,
    /// Occupied slots.
    len: usize,
}

impl Watchers {
    /// Registers `notify`, returning its slot for [`Watchers::remove`]. The
    /// caller issues a `SeqCst` fence after its last registration and before
    /// it reads the positions it compares against (see [`Watch::new`]).
    fn add(&self, notify: &Arc<Notify>) -> usize {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let notify = Some(Arc::clone(notify));
        let slot = match list.free.pop() {
            Some(slot) => {
                list.slots[slot] = notify;
                slot
            }
            None => {
                list.slots.push(notify);
                list.slots.len() - 1
            }
        };
        list.len += 1;
        self.count.store(list.len, Ordering::Relaxed);
        slot
    }

    /// Removes the registration of `notify` at `slot` (from [`Watchers::add`]),
    /// if it is there.
    fn remove(&self, slot: usize, notify: &Arc<Notify>) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = list.slots.get_mut(slot) else {
            return;
        };
        if !self.holds(entry, notify) {
            return;
        }
        *entry = None;
        list.len -= 1;
        if list.len == 0 {
            // Nobody waits: the next burst starts from an empty list, and a
            // wake-up walks no slots left over from this one.
            list.slots.clear();
            list.free.clear();
        } else {
            list.free.push(slot);
        }
        self.count.store(list.len, Ordering::Relaxed);
    }

    /// Whether `entry` is the registration of `notify`: every comparison a
    /// removal makes goes through here, and is counted in tests.
    fn holds(&self, entry: &Option<Arc<Notify>>, notify: &Arc<Notify>) -> bool {
        #[cfg(test)]
        self.probes.fetch_add(1, Ordering::Relaxed);
        entry.as_ref().is_some_and(|n| Arc::ptr_eq(n, notify))
    }

    /// Notifies every registered Fetch. Call after the change is stored: the
    /// fence pairs with the one [`Watch::new`] issues after registering, so
    /// either this sees the registration or the Fetch sees the change.
    ///
    /// The list is locked only to copy the handles out: the notifications
    /// (each taking its own lock, and waking a task) are made after, so the
    /// Fetches answering and deregistering do not wait behind them.
    pub(crate) fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let waiting: Vec<Arc<Notify>> = {
            let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
            list.slots.iter().flatten().cloned().collect()
        };
        for n in &waiting {
            // Stores a permit when the Fetch is not waiting right now (it is
            // reading): it looks again as soon as it waits.
            n.notify_one();
            #[cfg(test)]
            self.notifies.fetch_add(1, Ordering::Relaxed);
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
    /// Each partition, with the slot of the registration there.
    partitions: Vec<(Weak<Partition>, usize)>,
}

impl Watch {
    /// Registers with each of `partitions`. A change stored after this returns
    /// wakes [`Watch::changed`]; one stored before may not, so the caller
    /// compares the positions it read before with those it reads now.
    pub(crate) fn new<'a>(partitions: impl IntoIterator<Item = &'a Arc<Partition>>) -> Watch {
        let notify = Arc::new(Notify::new());
        let partitions = partitions
            .into_iter()
            .map(|p| (Arc::downgrade(p), p.watchers().add(&notify)))
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
        for (p, slot) in &self.partitions {
            if let Some(p) = p.upgrade() {
                p.watchers().remove(*slot, &self.notify);
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

    /// Many long polls on one partition: each deregisters by comparing its
    /// own slot only (one comparison each, not a search of those still
    /// registered), and one change notifies each of them exactly once.
    #[test]
    fn many_watches_of_one_partition_are_woken_once_each_and_removed_in_constant_time() {
        const K: usize = 10_000;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(Partition::open("t", 0, dir.path().join("t-0"), 1 << 20).unwrap());
        let watches: Vec<Watch> = (0..K).map(|_| Watch::new([&p])).collect();
        assert_eq!(p.watchers().len(), K);

        store(&p, make_batch(0, &[b"a"]));
        assert_eq!(p.watchers().notifies.load(Ordering::Relaxed), K);
        for (i, w) in watches.iter().enumerate() {
            assert!(notified(&rt, w), "watch {i} not woken");
            assert!(!notified(&rt, w), "watch {i} woken twice");
        }

        // Dropped in the order they registered: a search of the list from the
        // front would make K²/2 comparisons.
        drop(watches);
        assert_eq!(p.watchers().len(), 0);
        let probes = p.watchers().probes.load(Ordering::Relaxed);
        assert_eq!(probes, K, "comparisons to remove {K} watches");

        // The slots are reused: a second round registers and leaves as
        // cheaply, the newest first (a search from the back, or one shifting
        // the list at each removal, would show here or above).
        let watches: Vec<Watch> = (0..K).map(|_| Watch::new([&p])).collect();
        for w in watches.into_iter().rev() {
            drop(w);
        }
        assert_eq!(p.watchers().len(), 0);
        let probes = p.watchers().probes.load(Ordering::Relaxed);
        assert_eq!(probes, 2 * K, "comparisons to remove {} watches", 2 * K);
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
