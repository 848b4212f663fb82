//! The broker-wide budget of Fetch response memory (`--fetch-response-memory-bytes`).
//!
//! A Fetch response is read into memory whole and held until the connection's
//! writer has written it to the socket: a client that asks and then reads its
//! socket slowly holds its response for as long as it likes (Kafka sends fetch
//! data from the page cache and holds nothing). So each Fetch read pass takes
//! the record bytes it may read from this budget first, as a [`Lease`] that
//! travels with the response and gives the bytes back when dropped: once the
//! frame is written, or with the response when its connection goes (an aborted
//! writer included).
//!
//! A pass the budget cannot give its whole `max_bytes` reads only what is free,
//! but the first partition with records still gets its first batch whole (as
//! Kafka's fetch does for a batch larger than the limits), overdrawing the
//! budget for it. Such a batch takes the shares of the partitions after it:
//! what it took beyond its own is taken from the budget again, as far as it
//! is free, before they are read. No Fetch ever waits for budget, every
//! consumer progresses, and the record bytes held are at most the budget plus
//! one batch per connection (a connection's writer computes and writes one
//! response at a time). The count is of record bytes: encoding copies them
//! into the response frame, and the records read are freed as soon as it is
//! encoded.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

/// The budget: `limit` bytes, of which leases hold `in_use` (more than `limit`
/// only by what first batches overdrew).
#[derive(Debug)]
pub(crate) struct FetchMemory {
    limit: u64,
    in_use: AtomicU64,
}

impl FetchMemory {
    /// A budget of `limit` bytes, none of it in use.
    pub(crate) fn new(limit: u64) -> Arc<FetchMemory> {
        Arc::new(FetchMemory {
            limit,
            in_use: AtomicU64::new(0),
        })
    }

    /// The budget's size.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes the leases hold now.
    pub(crate) fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Acquire)
    }

    /// Takes `want` bytes, or as many as are free when fewer are (possibly
    /// none); never waits. The grants together never pass the limit.
    pub(crate) fn take_up_to(self: &Arc<FetchMemory>, want: u64) -> Lease {
        Lease {
            memory: Arc::clone(self),
            bytes: self.grant(want),
        }
    }

    /// Counts up to `want` more bytes in use, as many as are free: the bytes
    /// granted.
    fn grant(&self, want: u64) -> u64 {
        let mut used = self.in_use.load(Ordering::Acquire);
        loop {
            let grant = want.min(self.limit.saturating_sub(used));
            if grant == 0 {
                return 0;
            }
            match self.in_use.compare_exchange_weak(
                used,
                used + grant,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return grant,
                Err(now) => used = now,
            }
        }
    }
}

/// Bytes held of a [`FetchMemory`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    memory: Arc<FetchMemory>,
    bytes: u64,
}

impl Lease {
    /// The bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes up to `want` more bytes, as [`FetchMemory::take_up_to`] does
    /// (possibly none, never past the limit): the bytes added to the lease.
    pub(crate) fn take_more(&mut self, want: u64) -> u64 {
        let more = self.memory.grant(want);
        self.bytes += more;
        more
    }

    /// Holds exactly `bytes` from now on: gives back what the read left
    /// unused, or takes what it read beyond the grant (a first batch larger
    /// than what was free), even past the limit.
    pub(crate) fn settle(&mut self, bytes: u64) {
        if bytes > self.bytes {
            self.memory
                .in_use
                .fetch_add(bytes - self.bytes, Ordering::AcqRel);
        } else {
            self.memory
                .in_use
                .fetch_sub(self.bytes - bytes, Ordering::AcqRel);
        }
        self.bytes = bytes;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.settle(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_stop_at_the_limit_and_come_back_when_dropped() {
        let m = FetchMemory::new(1000);
        let a = m.take_up_to(600);
        assert_eq!((a.bytes(), m.in_use()), (600, 600));
        let b = m.take_up_to(600);
        assert_eq!(b.bytes(), 400, "what is free, not what was asked");
        assert_eq!(m.in_use(), 1000);
        let c = m.take_up_to(1);
        assert_eq!(c.bytes(), 0, "nothing free: an empty lease, at once");
        assert_eq!(m.in_use(), 1000);
        drop(a);
        assert_eq!(m.in_use(), 400);
        let d = m.take_up_to(10_000);
        assert_eq!(d.bytes(), 600);
        drop((b, c, d));
        assert_eq!(m.in_use(), 0);
    }

    #[test]
    fn settling_gives_back_what_was_not_read_and_overdraws_for_a_first_batch() {
        let m = FetchMemory::new(1000);
        let full = m.take_up_to(1000);
        let mut first = m.take_up_to(500);
        assert_eq!(first.bytes(), 0);
        // The first batch, 300 bytes, is read all the same.
        first.settle(300);
        assert_eq!(first.bytes(), 300);
        assert_eq!(m.in_use(), 1300, "past the limit by the one batch");
        // Nothing more is granted while the budget is overdrawn.
        assert_eq!(m.take_up_to(1).bytes(), 0);
        drop(full);
        assert_eq!(m.in_use(), 300);
        let mut partial = m.take_up_to(700);
        assert_eq!(partial.bytes(), 700);
        partial.settle(120);
        assert_eq!(m.in_use(), 420, "the unread rest is given back at once");
        drop(first);
        drop(partial);
        assert_eq!(m.in_use(), 0);
    }

    #[test]
    fn a_lease_takes_more_only_from_what_is_free() {
        let m = FetchMemory::new(1000);
        let mut a = m.take_up_to(300);
        assert_eq!(a.take_more(200), 200);
        assert_eq!((a.bytes(), m.in_use()), (500, 500));
        let other = m.take_up_to(400);
        assert_eq!(a.take_more(500), 100, "what is free, not what was asked");
        assert_eq!((a.bytes(), m.in_use()), (600, 1000));
        assert_eq!(a.take_more(1), 0);
        // Overdrawn by a first batch: nothing more until bytes come back.
        a.settle(900);
        assert_eq!(a.take_more(1), 0);
        assert_eq!(m.in_use(), 1300);
        drop(other);
        assert_eq!(a.take_more(1000), 100);
        assert_eq!(m.in_use(), 1000);
        drop(a);
        assert_eq!(m.in_use(), 0);
    }

    #[test]
    fn concurrent_grants_never_pass_the_limit() {
        let m = FetchMemory::new(10_000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let mut l = m.take_up_to(1 + i % 3000);
                        assert!(m.in_use() <= m.limit(), "{}", m.in_use());
                        l.settle(l.bytes() / 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.in_use(), 0);
    }
}
