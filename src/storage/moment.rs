//! The times committed offsets and groups expire from, and their ages when the
//! wall clock is stepped.
//!
//! Offsets expire (Kafka's `offsets.retention.minutes`) by the age of wall-clock
//! times: a position's commit, a group's last commit, when a group became empty.
//! Those times are stored, so they are wall-clock times; but a clock stepped while
//! the broker runs, or between two runs (a VM booted a year ahead or at the epoch,
//! then set right by NTP), would make them look far older or younger than they
//! are. So an age is taken as follows, and no stored time is ever rewritten:
//!
//! - A time this process took ([`Moment::now`]) carries its monotonic instant,
//!   and ages by monotonic time: a clock stepped after it, either way, changes
//!   nothing.
//! - A time read back from disk ([`Moment::stored`]) at or behind the clock ages
//!   by the clock.
//! - A stored time ahead of the clock (taken while the clock was ahead, which was
//!   then set back) ages by monotonic time from the first expiry pass that found
//!   it ahead, or by the clock once that gives more. Without this, such a time
//!   kept its group until the clock caught up with it: a year, for a clock booted
//!   a year ahead. It starts aging up to one check interval late, and again at
//!   each start (when it was first found ahead is not stored): a broker
//!   restarted more often than the retention keeps such a group until the
//!   clock catches up, as before.
//!
//! A stored time taken while the clock was behind, read back after the clock was
//! set forward, still looks older than it is (by the error): nothing on disk
//! tells such a time from an old one, as in Kafka.

use std::{
    cell::RefCell,
    collections::HashMap,
    ops::Add,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use super::offsets::to_ms;

/// A moment the broker recorded: its wall-clock time, stored with what it
/// dates, and its monotonic instant when this process took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    wall: SystemTime,
    mono: Option<Instant>,
}

impl Moment {
    /// Now, by both clocks.
    pub fn now() -> Moment {
        Moment {
            wall: SystemTime::now(),
            mono: Some(Instant::now()),
        }
    }

    /// A wall-clock time read back from disk (or taken by another process).
    pub fn stored(wall: SystemTime) -> Moment {
        Moment { wall, mono: None }
    }

    /// Its wall-clock time, as stored.
    pub fn wall(&self) -> SystemTime {
        self.wall
    }
}

/// The time of an expiry pass by both clocks.
#[derive(Debug, Clone, Copy)]
pub struct PassTime {
    /// The wall clock.
    pub wall: SystemTime,
    /// The monotonic clock.
    pub mono: Instant,
}

impl PassTime {
    /// Now, by both clocks.
    pub fn now() -> PassTime {
        PassTime {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

/// Later by `d` on both clocks (tests: a pass days from now).
impl Add<Duration> for PassTime {
    type Output = PassTime;

    fn add(self, d: Duration) -> PassTime {
        PassTime {
            wall: self.wall + d,
            mono: self.mono + d,
        }
    }
}

/// What expiry passes remember between them: the stored times found ahead of
/// the clock, each with the monotonic instant of the pass that first did.
#[derive(Debug, Default)]
pub struct Ages {
    ahead: Mutex<HashMap<i64, Instant>>,
}

impl Ages {
    /// A pass at `at`. The times it does not age are forgotten when it ends:
    /// the map holds no more entries than one pass's times (at most the
    /// groups' and positions' count).
    pub fn pass(&self, at: PassTime) -> Pass<'_> {
        let previous = std::mem::take(&mut *self.lock());
        Pass {
            ages: self,
            at,
            previous,
            current: RefCell::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Instant>> {
        self.ahead.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many stored times are aged from the pass that found them ahead.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// One expiry pass: ages [`Moment`]s as the module documentation says.
#[derive(Debug)]
pub struct Pass<'a> {
    ages: &'a Ages,
    at: PassTime,
    previous: HashMap<i64, Instant>,
    current: RefCell<HashMap<i64, Instant>>,
}

impl Pass<'_> {
    /// The age of `m` at this pass.
    pub fn age(&self, m: Moment) -> Duration {
        if let Some(i) = m.mono {
            return self.at.mono.saturating_duration_since(i);
        }
        let by_clock = self.at.wall.duration_since(m.wall).unwrap_or_default();
        let key = to_ms(m.wall);
        let first = self.previous.get(&key).copied();
        if first.is_none() && m.wall <= self.at.wall {
            return by_clock;
        }
        let first = *self
            .current
            .borrow_mut()
            .entry(key)
            .or_insert(first.unwrap_or(self.at.mono));
        by_clock.max(self.at.mono.saturating_duration_since(first))
    }

    /// The wall-clock time of this pass.
    pub fn wall(&self) -> SystemTime {
        self.at.wall
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        *self.ages.lock() = std::mem::take(self.current.get_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    #[test]
    fn a_time_this_process_took_ages_by_the_monotonic_clock_whatever_the_wall_clock_does() {
        let ages = Ages::default();
        let m = Moment::now();
        let at = PassTime::now();
        // The wall clock set forward a month, a day passing.
        let later = PassTime {
            wall: at.wall + 30 * DAY,
            mono: at.mono + DAY,
        };
        let age = ages.pass(later).age(m);
        assert!(
            (DAY..DAY + Duration::from_secs(60)).contains(&age),
            "{age:?}"
        );
        // Set back a year, eight days passing.
        let later = PassTime {
            wall: at.wall - YEAR,
            mono: at.mono + 8 * DAY,
        };
        assert!(ages.pass(later).age(m) >= 8 * DAY);
        assert_eq!(ages.tracked(), 0, "nothing to remember");
    }

    #[test]
    fn a_stored_time_ahead_of_the_clock_ages_from_the_pass_that_first_found_it_ahead() {
        let ages = Ages::default();
        let at = PassTime::now();
        // Stored while the clock was a year ahead; the clock was then set right.
        let m = Moment::stored(at.wall + YEAR);
        assert_eq!(ages.pass(at).age(m), Duration::ZERO);
        assert_eq!(ages.tracked(), 1);
        assert_eq!(ages.pass(at + 3 * DAY).age(m), 3 * DAY);
        assert_eq!(ages.pass(at + 8 * DAY).age(m), 8 * DAY, "not a year more");
        // A pass that does not age it forgets it: found ahead again, it
        // starts again.
        drop(ages.pass(at + 9 * DAY));
        assert_eq!(ages.tracked(), 0);
        assert_eq!(ages.pass(at + 10 * DAY).age(m), Duration::ZERO);
    }

    #[test]
    fn a_stored_time_behind_the_clock_ages_by_the_clock_and_is_not_remembered() {
        let ages = Ages::default();
        let at = PassTime::now();
        let m = Moment::stored(at.wall - 8 * DAY);
        assert_eq!(ages.pass(at).age(m), 8 * DAY);
        assert_eq!(ages.tracked(), 0);
        // Once the clock has caught up with a time found ahead, the clock's
        // age counts when it is the greater.
        let ahead = Moment::stored(at.wall + DAY);
        assert_eq!(ages.pass(at).age(ahead), Duration::ZERO);
        let caught_up = PassTime {
            wall: at.wall + 3 * DAY,
            mono: at.mono + DAY,
        };
        assert_eq!(ages.pass(caught_up).age(ahead), 2 * DAY);
        let slow = PassTime {
            wall: at.wall + 3 * DAY,
            mono: at.mono + 5 * DAY,
        };
        assert_eq!(ages.pass(slow).age(ahead), 5 * DAY);
    }
}
