//! Progress lines for the long phases of a start: loading topics, scanning the
//! WAL, replaying it. A start over many partitions or a large WAL can take
//! minutes before the broker listens; a line every [`EVERY`] tells an operator
//! it is working, and how far it got, rather than hung.

use std::time::{Duration, Instant};

/// How often a long phase says how far it got.
pub(crate) const EVERY: Duration = Duration::from_secs(10);

#[cfg(test)]
thread_local! {
    /// The interval on this thread (tests set it to zero to see every line).
    pub(crate) static TEST_EVERY: std::cell::Cell<Option<Duration>> = const { std::cell::Cell::new(None) };
}

/// One phase's progress: [`Progress::tick`] logs at most once every [`EVERY`].
pub(crate) struct Progress {
    what: &'static str,
    started: Instant,
    next: Instant,
    every: Duration,
}

impl Progress {
    /// A phase called `what` (as in "loading topics"), starting now.
    pub(crate) fn new(what: &'static str) -> Progress {
        #[cfg(test)]
        let every = TEST_EVERY.with(std::cell::Cell::get).unwrap_or(EVERY);
        #[cfg(not(test))]
        let every = EVERY;
        let started = Instant::now();
        Progress {
            what,
            started,
            next: started + every,
            every,
        }
    }

    /// Says that `done` of `total` (`None`: not known) `unit` are done, when
    /// the last line is [`EVERY`] old.
    pub(crate) fn tick(&mut self, done: u64, total: Option<u64>, unit: &str) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + self.every;
        let elapsed_s = self.started.elapsed().as_secs();
        match total {
            Some(total) => {
                tracing::info!(
                    done,
                    total,
                    elapsed_s,
                    "{}: {done} of {total} {unit}",
                    self.what
                );
            }
            None => tracing::info!(done, elapsed_s, "{}: {done} {unit}", self.what),
        }
    }
}
