//! When compaction passes first covered each offset of a partition, so that a
//! tombstone stays `delete.retention.ms` after the first pass that removed the
//! older values of its key, as Kafka's delete horizon (KIP-534) keeps it.
//!
//! A consumer that read a key's older value before that pass still finds the
//! tombstone if it reads on within `delete.retention.ms`; were the tombstone
//! removed in the same pass (its own timestamp may be old already: a quiet
//! topic whose segment rolled late, records mirrored or reprocessed with their
//! original timestamps), it would keep the value the key deleted.
//!
//! Kafka stamps the horizon into each batch that holds a tombstone
//! (`hasDeleteHorizonMs`); here the partition keeps the history of its passes
//! instead, in [`FILE`] in its directory: the offset below which every record
//! was covered by a pass at least `delete.retention.ms` ago, and, for the
//! passes since, the time of each and the offset it covered up to. Passes
//! less than `delete.retention.ms / 32` apart share one entry, timed by the
//! later one (a tombstone may stay that much longer), so the history holds
//! about 33 entries at most. Each entry comes of age on its own, and one
//! stamped after the time of a later pass counts as covered then: a clock that
//! once ran ahead holds back only the offsets covered while it did, and those
//! no more than `delete.retention.ms` after it is right again.
//! Losing the file, or an older copy of it coming back after a power loss,
//! only makes tombstones stay longer: the next pass counts as the first for
//! every offset the file lacks.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::checked::Checked;
use crate::error::{Error, Result};

/// The history's file in a partition's directory.
pub const FILE: &str = "delete-horizon.json";

/// Entries a history holds at most: past it (a clock stepped back and forth)
/// a new pass joins the newest entry, timed by the later of the two, which
/// only keeps tombstones longer.
const MAX_ENTRIES: usize = 64;

/// Passes within `delete.retention.ms / SPAN_DIVISOR` after an entry's first
/// join it.
const SPAN_DIVISOR: i64 = 32;

/// Passes covering offsets up to `end`, the newest at `last_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// When the first of its passes ran (wall-clock milliseconds).
    first_ms: i64,
    /// When the newest of its passes ran: every offset below `end` not
    /// covered by an earlier entry was first covered no later than this
    /// (and no earlier than `first_ms`, unless the clock was set back).
    last_ms: i64,
    /// The first offset its passes did not cover.
    end: i64,
}

/// See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Format version (1).
    version: u32,
    /// Every offset below this was covered by a pass at least
    /// `delete.retention.ms` ago (as of the last pass).
    matured_below: i64,
    /// The passes since, oldest first, their ends increasing and above
    /// `matured_below` (their times increase unless the clock was set back).
    recent: Vec<Entry>,
    /// CRC32C of the file's other fields (see [`super::checked`]): a digit
    /// raised by damage in `matured_below` would remove tombstones before
    /// `delete.retention.ms`. Absent in files written before it existed
    /// (loaded unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<u32>,
}

super::checked::checked_by_field!(History);

impl History {
    /// The history stored in `dir`, its offsets cut to `log_end` (the
    /// partition's next offset: no pass covered more). A missing file is an
    /// empty history; one that cannot be read or does not validate is logged
    /// and taken as empty, which only keeps tombstones longer.
    pub fn load(dir: &Path, log_end: i64) -> History {
        let path = dir.join(FILE);
        let mut h = match Self::read(&path) {
            Ok(Some(h)) => h,
            Ok(None) => return History::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring the compaction pass history: tombstones stay delete.retention.ms after the next pass");
                return History::new();
            }
        };
        h.matured_below = h.matured_below.min(log_end);
        for e in &mut h.recent {
            e.end = e.end.min(log_end);
        }
        let below = h.matured_below;
        h.recent.retain(|e| e.end > below);
        h.recent.dedup_by_key(|e| e.end);
        h
    }

    /// An empty history: no offset covered yet.
    pub fn new() -> History {
        History {
            version: 1,
            ..History::default()
        }
    }

    fn read(path: &Path) -> Result<Option<History>> {
        let Some(raw) = crate::wal::files::read_if_exists(path)? else {
            return Ok(None);
        };
        let mut h: History = serde_json::from_slice(&raw)
            .map_err(|e| Error::corrupt(path, 0, format!("does not parse: {e}")))?;
        let bad = |why: String| Err(Error::corrupt(path, 0, why));
        if h.version != 1 {
            return bad(format!(
                "unknown version {} (this build reads version 1)",
                h.version
            ));
        }
        h.verify(path, &raw)?;
        h.crc32c = None;
        let mut below = h.matured_below;
        if below < 0 {
            return bad(format!("negative offset {below}"));
        }
        for e in &h.recent {
            if e.end <= below || e.last_ms < e.first_ms {
                return bad(format!("entry {e:?} out of order"));
            }
            below = e.end;
        }
        Ok(Some(h))
    }

    /// Stores the history in `dir` (atomic replace, durable).
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let path = dir.join(FILE);
        let json = serde_json::to_vec(&self.clone().sealed())
            .map_err(|e| Error::io("encode", &path, std::io::Error::other(e)))?;
        crate::wal::files::write_atomic(&path, &json)
    }

    /// Folds the oldest entries that have come of age at `now_ms` (covered at
    /// least `delete_retention_ms` before it) into `matured_below`; returns
    /// whether the history changed.
    /// An entry stamped after `now_ms` (the clock ran ahead then, or was set
    /// back since) counts as covered at `now_ms` from then on: its passes ran
    /// no later than now, so it still keeps tombstones at least
    /// `delete_retention_ms`, and it comes of age once that has passed,
    /// without holding back the entries after it for as long as the clock
    /// had been off.
    pub fn mature(&mut self, now_ms: i64, delete_retention_ms: u64) -> bool {
        let mut changed = false;
        for e in self.recent.iter_mut().filter(|e| e.last_ms > now_ms) {
            e.first_ms = e.first_ms.min(now_ms);
            e.last_ms = now_ms;
            changed = true;
        }
        let cutoff = cutoff(now_ms, delete_retention_ms);
        let ripe = self
            .recent
            .iter()
            .take_while(|e| e.last_ms <= cutoff)
            .count();
        if ripe == 0 {
            return changed;
        }
        self.matured_below = self.recent[ripe - 1].end;
        self.recent.drain(..ripe);
        true
    }

    /// The offsets whose tombstones may go at `now_ms` (a tombstone that is
    /// its key's newest record): those a pass covered at least
    /// `delete_retention_ms` before it.
    pub fn removable(&self, now_ms: i64, delete_retention_ms: u64) -> Removable {
        let cutoff = cutoff(now_ms, delete_retention_ms);
        let mut ranges: Vec<(i64, i64)> = Vec::new();
        let mut push = |start: i64, end: i64| match ranges.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => ranges.push((start, end)),
        };
        if self.matured_below > 0 {
            push(0, self.matured_below);
        }
        let mut start = self.matured_below;
        for e in &self.recent {
            if e.last_ms <= cutoff {
                push(start, e.end);
            }
            start = e.end;
        }
        Removable(ranges)
    }

    /// Records a pass at `now_ms` that covered every offset below `covered`
    /// (returns whether the history changed).
    pub fn record(&mut self, now_ms: i64, covered: i64, delete_retention_ms: u64) -> bool {
        let end = self.recent.last().map_or(self.matured_below, |e| e.end);
        if covered <= end {
            return false;
        }
        let span = i64::try_from(delete_retention_ms).unwrap_or(i64::MAX) / SPAN_DIVISOR;
        let full = self.recent.len() >= MAX_ENTRIES;
        match self.recent.last_mut() {
            Some(last)
                if full
                    || (now_ms >= last.first_ms && now_ms.saturating_sub(last.first_ms) < span) =>
            {
                last.last_ms = last.last_ms.max(now_ms);
                last.end = covered;
            }
            _ => self.recent.push(Entry {
                first_ms: now_ms,
                last_ms: now_ms,
                end: covered,
            }),
        }
        true
    }

    /// When a tombstone at `offset` may go: `delete_retention_ms` after the
    /// first pass that covered it (`None` when no pass covered it yet).
    pub fn due_ms(&self, offset: i64, delete_retention_ms: u64) -> Option<i64> {
        if offset < self.matured_below {
            return Some(i64::MIN);
        }
        let dr = i64::try_from(delete_retention_ms).unwrap_or(i64::MAX);
        self.recent
            .iter()
            .find(|e| e.end > offset)
            .map(|e| e.last_ms.saturating_add(dr))
    }
}

/// The latest time a pass may have run for what it covered to come of age
/// at `now_ms`.
fn cutoff(now_ms: i64, delete_retention_ms: u64) -> i64 {
    now_ms.saturating_sub(i64::try_from(delete_retention_ms).unwrap_or(i64::MAX))
}

/// Offset ranges whose tombstones may go ([`History::removable`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removable(Vec<(i64, i64)>);

impl Removable {
    /// Whether a tombstone at `offset` may go.
    pub fn contains(&self, offset: i64) -> bool {
        let i = self.0.partition_point(|&(_, end)| end <= offset);
        self.0.get(i).is_some_and(|&(start, _)| start <= offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;
    const D: i64 = DAY as i64;

    /// The offsets below `to` whose tombstones may go at `now_ms`.
    fn goes(h: &History, now_ms: i64, dr: u64, to: i64) -> Vec<i64> {
        let r = h.removable(now_ms, dr);
        (0..to).filter(|&o| r.contains(o)).collect()
    }

    #[test]
    fn a_tombstone_goes_only_delete_retention_after_the_first_pass_covering_it() {
        let mut h = History::new();
        assert!(!h.mature(1_000, DAY));
        assert!(goes(&h, 1_000, DAY, 10).is_empty());
        assert_eq!(h.due_ms(5, DAY), None);
        assert!(h.record(1_000, 100, DAY));
        // The same pass, or any before a day has passed: nothing may go.
        assert!(goes(&h, 1_000, DAY, 200).is_empty());
        assert!(goes(&h, 1_000 + D - 1, DAY, 200).is_empty());
        assert_eq!(h.due_ms(5, DAY), Some(1_000 + D));
        assert_eq!(h.due_ms(100, DAY), None);
        assert!(!h.mature(1_000 + D - 1, DAY));
        // A later pass covering more, half a day on.
        let half = 1_000 + D / 2;
        assert!(h.record(half, 250, DAY));
        assert!(!h.record(half + 1, 250, DAY), "nothing new covered");
        assert_eq!(h.due_ms(100, DAY), Some(half + D));
        assert_eq!(goes(&h, 1_000 + D, DAY, 300), (0..100).collect::<Vec<_>>());
        assert!(h.mature(1_000 + D, DAY));
        assert_eq!(h.matured_below, 100);
        assert_eq!(h.due_ms(99, DAY), Some(i64::MIN));
        assert_eq!(
            goes(&h, half + D - 1, DAY, 300),
            (0..100).collect::<Vec<_>>()
        );
        assert_eq!(goes(&h, half + D, DAY, 300), (0..250).collect::<Vec<_>>());
        assert!(h.mature(half + D, DAY));
        assert!(h.recent.is_empty());
        // With delete.retention.ms = 0 a tombstone still waits for the next
        // pass, as in Kafka.
        assert!(h.record(5_000 + D, 300, 0));
        assert_eq!(goes(&h, 4_999 + D, 0, 400), (0..250).collect::<Vec<_>>());
        assert_eq!(goes(&h, 5_000 + D, 0, 400), (0..300).collect::<Vec<_>>());
    }

    #[test]
    fn close_passes_share_an_entry_timed_by_the_later_and_the_history_stays_small() {
        let mut h = History::new();
        let span = D / SPAN_DIVISOR;
        let mut now = 0;
        for end in 1..=10_000 {
            now += 15_000;
            h.record(now, end, DAY);
            h.mature(now, DAY);
            assert!(
                h.recent.len() <= SPAN_DIVISOR as usize + 2,
                "{}",
                h.recent.len()
            );
        }
        // Offset 9 999 was first covered at `now`; a joined entry times it by
        // its newest pass, never earlier than its own.
        assert_eq!(h.due_ms(9_999, DAY), Some(now + D));
        assert!(now - h.recent.last().unwrap().first_ms < span);
        // Every offset first covered over a day (and a span) ago may go, and
        // none covered within the day.
        let r = h.removable(now, DAY);
        let first_kept = (0..10_000).find(|&o| !r.contains(o)).unwrap();
        assert!(
            first_kept >= 10_000 - (D + span) / 15_000 - 1,
            "{first_kept}"
        );
        assert!(first_kept <= 10_000 - D / 15_000, "{first_kept}");
        assert!((first_kept..10_000).all(|o| !r.contains(o)));
        // Entries that never mature (passes spaced past the span): the
        // history still holds at most MAX_ENTRIES, the newest covering all.
        let mut many = History::new();
        for end in 1..=1_000 {
            many.record(end * 10, end, 0);
        }
        assert_eq!(many.recent.len(), MAX_ENTRIES);
        assert_eq!(many.recent.last().unwrap().end, 1_000);
        assert_eq!(many.due_ms(999, 0), Some(10_000));
    }

    /// A clock that once ran a year ahead holds back only what a pass
    /// covered while it did; one set back starts an entry of its own, timed
    /// by the clock as it is.
    #[test]
    fn a_clock_stepped_forward_and_back_holds_back_only_what_was_covered_meanwhile() {
        let year = 365 * D;
        let mut h = History::new();
        h.record(D, 100, DAY);
        h.record(D + year, 200, DAY); // the clock a year ahead
        h.record(D + 10, 300, DAY); // and back
        h.record(D + 20, 400, DAY);
        assert_eq!(h.recent.len(), 3);
        assert_eq!(h.due_ms(250, DAY), Some(D + 20 + D));
        let mut want: Vec<i64> = (0..100).collect();
        want.extend(200..400);
        assert_eq!(goes(&h, 2 * D + 20, DAY, 500), want);
        assert!(h.mature(2 * D + 20, DAY));
        assert_eq!(h.matured_below, 100);
        assert_eq!(goes(&h, 2 * D + 20, DAY, 500), want);
        assert_eq!(
            goes(&h, 2 * D + year, DAY, 500),
            (0..400).collect::<Vec<_>>()
        );
    }

    /// An entry stamped in the future (the clock ran ahead, or was set back
    /// since) came of age only once the clock caught up with it, and held
    /// back every entry after it from maturing: the history filled (64
    /// entries), and from then on each pass joined its newest entry, so
    /// tombstones covered days after the clock was right again stayed for as
    /// long as it had run ahead. Such an entry now counts as covered at the
    /// first pass that finds it ahead.
    #[test]
    fn an_entry_stamped_in_the_future_comes_of_age_once_the_clock_is_back() {
        const HOUR: i64 = D / 24;
        let decade = 3650 * D;
        let mut h = History::new();
        // As a pass does: mature at its start, record at its end.
        let pass = |h: &mut History, now: i64, covered: i64| {
            h.mature(now, DAY);
            h.record(now, covered, DAY);
        };
        pass(&mut h, D, 100);
        pass(&mut h, D + decade, 200); // ten years ahead
                                       // Back, then a pass every hour (more than DAY / 32 apart: an entry
                                       // each) for ten days, covering 10 offsets each.
        for i in 1..=240 {
            pass(&mut h, D + i * HOUR, 200 + 10 * i);
        }
        let now = D + 240 * HOUR;
        assert!(h.recent.len() <= 25, "{} entries", h.recent.len());
        // What a pass covered three days after the step back went a day
        // later; so did the offsets covered while the clock was ahead (found
        // ahead by the first pass after the step back).
        assert!(h.matured_below >= 200 + 10 * 216, "{}", h.matured_below);
        assert_eq!(
            goes(&h, now, DAY, 2_600),
            (0..200 + 10 * 216).collect::<Vec<_>>()
        );
        // Not before: a day after the step back, nothing covered ahead had
        // gone yet.
        let mut early = History::new();
        pass(&mut early, D, 100);
        pass(&mut early, D + decade, 200);
        pass(&mut early, D + HOUR, 210);
        assert_eq!(
            goes(&early, D + HOUR + D - 1, DAY, 300),
            (0..100).collect::<Vec<_>>()
        );
        assert_eq!(
            goes(&early, D + HOUR + D, DAY, 300),
            (0..210).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_stored_history_loads_cut_to_the_log_and_a_damaged_one_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(History::load(dir.path(), 1_000), History::new());
        let mut h = History::new();
        h.record(10, 100, DAY);
        h.record(10 + D, 200, DAY);
        h.mature(10 + D, DAY);
        h.record(10 + 2 * D, 300, DAY);
        h.store(dir.path()).unwrap();
        assert_eq!(History::load(dir.path(), 1_000), h);
        // A log that ends earlier than the history says (never, unless the
        // directory was damaged): nothing past its end counts as covered.
        let cut = History::load(dir.path(), 250);
        assert_eq!(cut.matured_below, 100);
        assert_eq!(cut.due_ms(249, DAY), Some(10 + 3 * D));
        assert_eq!(cut.due_ms(250, DAY), None);
        let cut = History::load(dir.path(), 50);
        assert_eq!(cut.matured_below, 50);
        assert!(cut.recent.is_empty());
        // A digit raised in `matured_below` (valid JSON still) fails the
        // checksum; the file without one (an older build's) loads unchecked.
        let raw = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(
            raw.contains("\"matured_below\":100,") && raw.contains("\"crc32c\":"),
            "{raw}"
        );
        let raised = raw.replace("\"matured_below\":100,", "\"matured_below\":190,");
        std::fs::write(dir.path().join(FILE), raised).unwrap();
        let e = History::read(&dir.path().join(FILE))
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert_eq!(History::load(dir.path(), 1_000), History::new());
        std::fs::write(dir.path().join(FILE), serde_json::to_vec(&h).unwrap()).unwrap();
        assert_eq!(History::load(dir.path(), 1_000), h);
        for bad in [
            &b"{"[..],
            br#"{"version":2,"matured_below":0,"recent":[]}"#,
            br#"{"version":1,"matured_below":-1,"recent":[]}"#,
            br#"{"version":1,"matured_below":10,"recent":[{"first_ms":0,"last_ms":0,"end":10}]}"#,
            br#"{"version":1,"matured_below":0,"recent":[{"first_ms":5,"last_ms":4,"end":10}]}"#,
        ] {
            std::fs::write(dir.path().join(FILE), bad).unwrap();
            assert!(History::read(&dir.path().join(FILE)).is_err());
            assert_eq!(History::load(dir.path(), 1_000), History::new());
        }
    }
}
