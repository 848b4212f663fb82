//! Log compaction (`cleanup.policy=compact`): keeps the newest record of every key
//! in a partition's closed segments and drops the older ones, as Kafka's log
//! cleaner does.
//!
//! One pass over a partition ([`super::Partition::compact`]):
//!
//! 1. The *cleanable* segments are the closed ones, oldest first, up to the first
//!    that is not wholly below the high watermark, not yet synced, or (with
//!    `min.compaction.lag.ms`) holds a record newer than the lag (one whose
//!    records have no timestamp: last written within it). The active segment
//!    is never compacted.
//! 2. The pass runs only when the bytes of cleanable segments not compacted since
//!    the broker started (or since the last pass) are at least
//!    `min.cleanable.dirty.ratio` of all cleanable bytes.
//! 3. A key map (key → offset of its newest record) is built from the cleanable
//!    records after the last pass, a record at a time, until it holds
//!    [`CompactionPolicy::map_bytes`] (at least one record, so a segment, or
//!    a batch, with more keys than the map holds is mapped a part per pass);
//!    the pass compacts every segment from the log start to the end of the map
//!    against it, keeping every record past the map's end as it is (a batch
//!    the map ends in keeps those of its records, and loses only stale ones
//!    before), and the next one goes on from there.
//! 4. Each mapped segment is read once to see what would stay (`plan_segment`).
//!    Consecutive segments whose copies fit in `segment.bytes` together form a
//!    group, so that compacted segments do not pile up as ever smaller files.
//! 5. Each group is copied into one segment beside the first
//!    (`<base>.log.cleaning`, `write_group`) keeping a record only if it is
//!    its key's newest, and dropping records without a key. The plan only
//!    estimates a batch compressed again (at its size as the client
//!    compressed it; this compressor may do worse), so a segment whose copy
//!    would take a copy of several past `segment.bytes` is cut out of it again
//!    and starts the next group: a copy holds at most `segment.bytes`, or one
//!    segment's copy. A tombstone (null value) that is its key's newest goes
//!    once a pass covered it `delete.retention.ms` ago
//!    ([`super::delete_horizon`]; a pass is due then, however few bytes are
//!    new), unless a batch whose records cannot be read lies before it (see
//!    below). The copy is fsynced, renamed to
//!    `<base>.log.swap`, and then put in place of the group
//!    ([`super::segment::install_swap`]). A lone segment from which nothing
//!    would go is left alone. A group whose copy cannot be put in place (a
//!    segment of it went meanwhile: retention, DeleteRecords) ends the pass
//!    there, and the next pass maps from that group's start again.
//!
//! Offsets never move: a batch that keeps some of its records keeps its header
//! (base offset, last offset delta, first timestamp, producer) with fewer
//! records and their largest timestamp, and a run of batches that keep none
//! becomes one batch with no records and no timestamp (-1) spanning their
//! offsets (Kafka's cleaner drops such a run). So a segment still holds
//! contiguous offsets, fetches still return whole batches, consumers step over
//! the gaps, and the largest timestamp of a batch, a segment or the partition
//! (ListOffsets `MAX_TIMESTAMP`, time retention) is always that of a record
//! still there.
//!
//! One batch that keeps none stays on its own: an idempotent producer's last
//! (`Judge::holds_last_sequence`), kept empty with its offsets, producer id,
//! epoch and base sequence ([`batch::empty_producer_batch`]; no timestamp
//! either), as Kafka's cleaner keeps it (`BatchRetention.RETAIN_EMPTY`).
//! Producer state read back from the log at start-up (the snapshots lost, or
//! an older one read: see [`super::producers`]) then still finds the
//! producer's last sequence, where it would find an older batch of it, or
//! none, and refuse its next batch as out of order, or store a retry of its
//! last batch twice. It goes once the partition remembers a newer batch of the
//! producer stored (anywhere after it, the active segment included), or, for a
//! producer the partition no longer remembers, once no older batch of the
//! producer stays.
//!
//! Compressed batches are decompressed ([`batch::payload`]): one from which
//! every record goes is dropped like any other; one from which some go is
//! written back with the rest uncompressed if that is no larger, and otherwise
//! compressed again with its own codec ([`batch::compress_records`]), as
//! Kafka's cleaner rebuilds every batch. So no record that a pass finds stale
//! is ever kept: a later pass, whose map holds only the keys after the last
//! pass's end, could not tell it stale, nor keep the tombstone after it.
//! The one batch kept whole with records that may be stale is one whose
//! records cannot be read at all (transactional, undecodable); every pass reads
//! the log from its start and keeps every tombstone after such a batch, since
//! it might hold an older value of that key which would then reappear.

use std::{collections::HashMap, path::Path, sync::Arc};

use crate::error::{Error, Result};
use crate::file_at::FileAt;

use super::{
    batch::{
        self, BatchInfo, ATTR_CONTROL, ATTR_LOG_APPEND_TIME, ATTR_TRANSACTIONAL, HEADER_LEN,
        NO_TIMESTAMP,
    },
    delete_horizon::Removable,
    segment::{read_batch_header, BatchIndex, CleanedWriter, LogHandle, Segment},
};

/// Default bound of one pass's key map (`--log-cleaner-dedupe-buffer-size`;
/// Kafka's `log.cleaner.dedupe.buffer.size` is 128 MiB for all cleaner threads).
pub const DEFAULT_MAP_BYTES: usize = 64 << 20;

/// What one compaction pass may remove.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionPolicy {
    /// Wall-clock milliseconds now.
    pub now_ms: i64,
    /// A tombstone that a pass covered this long before `now_ms` may go.
    pub delete_retention_ms: u64,
    /// A segment holding a record newer than this is not compacted yet.
    pub min_compaction_lag_ms: u64,
    /// The share of cleanable bytes that must be new since the last pass.
    pub min_cleanable_dirty_ratio: f64,
    /// Bound of the key map (keys plus per-entry overhead); at least one
    /// record is mapped, and the map may end inside a batch.
    pub map_bytes: usize,
    /// The topic's `segment.bytes`: consecutive segments whose copies fit in it
    /// together are merged into one.
    pub segment_bytes: u64,
}

/// What one compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Segments rewritten.
    pub segments: usize,
    /// Their bytes before.
    pub bytes_before: u64,
    /// Their bytes after.
    pub bytes_after: u64,
    /// Records removed.
    pub records_removed: u64,
}

/// A closed segment as a pass reads it (outside the partition lock).
#[derive(Debug)]
pub(crate) struct Source {
    pub base: i64,
    pub next: i64,
    pub size: u64,
    /// Its log, opened when the segment is read (one at a time).
    pub log: LogHandle,
    /// The segment's index, shared (a closed segment's never changes).
    pub index: Arc<BatchIndex>,
}

impl Source {
    /// The closed segment `s`, to read outside the partition lock.
    pub(crate) fn of(s: &Segment) -> Source {
        Source {
            base: s.base_offset(),
            next: s.next_offset(),
            size: s.size(),
            log: s.log_handle(),
            index: s.shared_index(),
        }
    }

    /// Calls `f` with every batch of the segment, whole, and its header.
    fn for_each_batch(&self, mut f: impl FnMut(&[u8], &BatchInfo) -> Result<()>) -> Result<()> {
        self.batches_while(0, |buf, info| f(buf, info).map(|()| true))
    }

    /// Calls `f` with every batch of the segment that ends at or after offset
    /// `from`, whole, and its header, until `f` answers false.
    fn batches_while(
        &self,
        from: i64,
        mut f: impl FnMut(&[u8], &BatchInfo) -> Result<bool>,
    ) -> Result<()> {
        let mut buf = Vec::new();
        let file = self.log.open()?;
        let path = self.log.path();
        // The batch holding `from` at the latest starts at the index entry
        // before the first one past it.
        let first = self
            .index
            .partition_point(|e| e.offset <= from)
            .saturating_sub(1);
        for position in self.index.iter().skip(first).map(|e| e.position) {
            buf.resize(HEADER_LEN, 0);
            let info = read_batch_header(&file, path, position, self.size, &mut buf)?;
            buf.resize(info.len, 0);
            file.read_exact_at(&mut buf[HEADER_LEN..], position + HEADER_LEN as u64)
                .map_err(|e| Error::io("read", path, e))?;
            batch::validate_stored(&buf)
                .map_err(|e| Error::corrupt(path, position, e.to_string()))?;
            if info.last_offset() >= from && !f(&buf, &info)? {
                break;
            }
        }
        Ok(())
    }
}

/// The decompression budget a pass reserves from: the broker's
/// ([`batch::decompression_budget`]), or in tests the one [`TEST_BUDGET`]
/// names on this thread.
fn budget() -> &'static batch::Budget {
    #[cfg(test)]
    if let Some(b) = TEST_BUDGET.with(std::cell::Cell::get) {
        return b;
    }
    batch::decompression_budget()
}

#[cfg(test)]
thread_local! {
    /// The decompression budget compaction reserves from on this thread,
    /// when not the broker's.
    pub(crate) static TEST_BUDGET: std::cell::Cell<Option<&'static batch::Budget>> =
        const { std::cell::Cell::new(None) };
}

/// Calls `f` with the records of a batch the broker can read (uncompressed or
/// decompressed, see [`batch::payload`]; neither transactional nor a control
/// batch; records that parse), their records section, and whether the batch is
/// compressed; with `None` for any other batch, which compaction keeps whole.
///
/// The decompressed records hold their reservation of the decompression
/// budget while `f` runs: `f` must not decompress anything (nothing may wait
/// for a reservation while holding another, see [`batch::Budget`]).
fn with_records<T>(
    buf: &[u8],
    info: &BatchInfo,
    f: impl FnOnce(Option<(batch::Records<'_>, &[u8], bool)>) -> T,
) -> T {
    if info.attributes & (ATTR_TRANSACTIONAL | ATTR_CONTROL) != 0 {
        return f(None);
    }
    let Some(payload) = batch::payload_in(buf, budget()) else {
        return f(None);
    };
    match batch::records_in(buf, &payload) {
        Some(records) => f(Some((records, &payload, batch::is_compressed(buf)))),
        None => f(None),
    }
}

/// Key → offset of its newest record, over the mapped records.
#[derive(Debug, Default)]
pub(crate) struct KeyMap {
    latest: HashMap<Vec<u8>, i64>,
    bytes: usize,
    /// The first offset not mapped (the map may end inside a batch): a pass
    /// judges no record at or past it (the map does not know whether a newer
    /// record of its key follows), so every such record is kept as it is.
    pub end: i64,
}

impl KeyMap {
    /// A map of no key ending at `end`: a pass with it judges no record at or
    /// past `end`, and keeps every other record but for due tombstones.
    pub(crate) fn ending_at(end: i64) -> KeyMap {
        KeyMap {
            end,
            ..KeyMap::default()
        }
    }

    /// Bytes counted against the map's bound: its keys, and
    /// [`ENTRY_OVERHEAD`] for each.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Why a pass stopped part way: a shutdown, or a delete of the topic, which
/// both wait for it (see [`stopped`]).
const STOPPED: &str = "the compaction pass stopped (shutdown or topic delete)";

/// The error a pass's step returns when `halt` says to stop, between two
/// batches of `src`: a pass reads a partition's whole cleanable log, up to
/// three times (map, plan, copy), and a shutdown or a delete of the topic
/// waited for all of it.
fn stopped(src: &Source) -> Error {
    Error::io(
        "compact",
        src.log.path(),
        std::io::Error::new(std::io::ErrorKind::Interrupted, STOPPED),
    )
}

/// Whether `e` is [`stopped`]'s.
pub(crate) fn is_stopped(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. }
        if source.kind() == std::io::ErrorKind::Interrupted && source.to_string() == STOPPED)
}

/// Per-entry overhead counted against the map's bound: the table's slot (the
/// key's `Vec` and the offset, at the table's load factor) and the key's own
/// allocation's header and rounding.
pub(crate) const ENTRY_OVERHEAD: usize = 80;

/// Maps the keys of `sources[first..]` from offset `from` on, in order, a
/// record at a time, until the map holds `limit` bytes (at least one record,
/// so every pass goes on; so it holds at most `limit` and one key). The map
/// may end inside a batch, however many records the batch holds. Returns the
/// map and the index after the last segment it covers, wholly or in part (see
/// [`KeyMap::end`]). A batch whose records cannot be read adds no key (its
/// records all stay).
///
/// # Errors
/// A segment's read; [`is_stopped`] once `halt` says to stop (asked before
/// each batch).
pub(crate) fn build_map(
    sources: &[Source],
    first: usize,
    from: i64,
    limit: usize,
    halt: &dyn Fn() -> bool,
) -> Result<(KeyMap, usize)> {
    let mut map = KeyMap {
        end: from,
        ..KeyMap::default()
    };
    let mut end = first;
    let mut full = false;
    for src in &sources[first..] {
        if full || (end > first && map.bytes >= limit) {
            break;
        }
        src.batches_while(from, |buf, info| {
            if halt() {
                return Err(stopped(src));
            }
            if map.end > from && map.bytes >= limit {
                full = true;
                return Ok(false);
            }
            with_records(buf, info, |records| {
                // Records below `from` (a batch the last pass's map ended in)
                // were judged by that pass.
                for r in records
                    .into_iter()
                    .flat_map(|r| r.0)
                    .filter(|r| r.offset >= from)
                {
                    if map.end > from && map.bytes >= limit {
                        full = true;
                        map.end = r.offset;
                        return;
                    }
                    map.end = r.offset + 1;
                    if let Some(k) = r.key {
                        match map.latest.get_mut(k) {
                            Some(o) => *o = r.offset,
                            None => {
                                map.bytes += k.len() + ENTRY_OVERHEAD;
                                map.latest.insert(k.to_vec(), r.offset);
                            }
                        }
                    }
                }
            });
            if full {
                return Ok(false);
            }
            map.end = info.last_offset() + 1;
            Ok(true)
        })?;
        end += 1;
    }
    Ok((map, end))
}

/// A run of batches from which every record went, written as one empty batch
/// without a timestamp: it holds no record for ListOffsets `MAX_TIMESTAMP` or
/// time retention to go by.
#[derive(Debug, Clone, Copy)]
struct Gap {
    first: i64,
    last: i64,
}

impl Gap {
    /// Empty batches [`Gap::flush`] writes.
    fn batches(self) -> u64 {
        let batches = (self.last - self.first) / (i64::from(i32::MAX) + 1) + 1;
        u64::try_from(batches).unwrap_or(u64::MAX)
    }

    /// Bytes [`Gap::flush`] writes.
    fn bytes(self) -> u64 {
        self.batches().saturating_mul(HEADER_LEN as u64)
    }

    fn flush(self, out: &mut CleanedWriter) -> Result<()> {
        // An empty batch spans at most i32::MAX + 1 offsets.
        let mut first = self.first;
        while first <= self.last {
            let last = self.last.min(first + i64::from(i32::MAX));
            out.push(
                &batch::empty_batch(first, last, NO_TIMESTAMP),
                first,
                NO_TIMESTAMP,
            )?;
            first = last + 1;
        }
        Ok(())
    }
}

/// What a pass does with one batch.
enum Decision {
    /// Copied as it is: nothing goes, or its records cannot be read.
    Whole,
    /// No record stays (or it had none): it becomes part of an empty batch.
    Drop { removed: u64 },
    /// No record stays, but the batch holds its producer's last sequence (see
    /// [`Judge::holds_last_sequence`]): it is written back with none
    /// ([`batch::empty_producer_batch`]). One already without records that
    /// still does is [`Decision::Whole`].
    Emptied { removed: u64 },
    /// Some records go: the batch with the rest (see [`Judge::decide`]), about
    /// `bytes` long; the batch itself only when it is to be written.
    Partial {
        batch: Option<Rebuilt>,
        bytes: u64,
        removed: u64,
    },
}

/// A batch written back with fewer records.
struct Rebuilt {
    bytes: Vec<u8>,
    /// Its records' largest timestamp.
    max_timestamp: i64,
}

/// What a pass knows of the partition's idempotent producers, to keep the
/// batch that holds a producer's last sequence (see
/// [`Judge::holds_last_sequence`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct Producers {
    /// Every producer the partition remembers when the pass starts, with the
    /// base offset of its newest batch below the high watermark that it
    /// remembers, if any ([`super::producers::ProducerState::newest_below`]).
    pub newest: HashMap<i64, Option<i64>>,
    /// The base offset of each producer's first batch that stays, over the
    /// segments planned so far (in offset order, from the log start): filled
    /// by [`plan_segment`], read by [`write_group`]; at most
    /// [`first_kept_cap`] producers.
    first_kept: HashMap<i64, i64>,
    /// The base offset of the first batch that stays whose producer was left
    /// out of `first_kept` for its bound, if any: after it, an emptied batch
    /// of a producer it does not hold is kept (empty), as one whose earlier
    /// batch stays would be. An offset, not a flag: a write, which runs once
    /// every segment is planned, judges each batch as its plan did.
    overflowed_at: Option<i64>,
}

/// The most producers [`Producers::first_kept`] holds in one pass: a client
/// may put any producer id on its batches, and 10 million one-record batches
/// of distinct ids made each pass hold some 285 MB. As many as a partition
/// remembers ([`super::producers`]).
const FIRST_KEPT_CAP: usize = super::producers::MAX_PRODUCERS;

#[cfg(test)]
thread_local! {
    /// [`FIRST_KEPT_CAP`] on this thread (tests).
    static TEST_FIRST_KEPT_CAP: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

fn first_kept_cap() -> usize {
    #[cfg(test)]
    if let Some(cap) = TEST_FIRST_KEPT_CAP.with(std::cell::Cell::get) {
        return cap;
    }
    FIRST_KEPT_CAP
}

impl Producers {
    /// What a pass knows when the partition remembers `newest` (see
    /// [`Producers::newest`]).
    pub fn new(newest: HashMap<i64, Option<i64>>) -> Producers {
        Producers {
            newest,
            first_kept: HashMap::new(),
            overflowed_at: None,
        }
    }
}

/// Which records stay.
struct Judge<'a> {
    map: &'a KeyMap,
    producers: &'a mut Producers,
    /// Where tombstones go: a pass covered them at least
    /// `delete.retention.ms` ago (see [`super::delete_horizon`]).
    removable: &'a Removable,
    /// The first tombstone kept only because no pass covered it
    /// `delete.retention.ms` ago yet.
    first_waiting: std::cell::Cell<Option<i64>>,
    /// The first batch seen so far in this pass (which reads from the log start,
    /// in offset order) that may hold an older value of some key: one whose
    /// records cannot be read (every other batch keeps no record the pass
    /// finds stale).
    first_unsafe: Option<i64>,
    /// Whether batches that keep some records are built ([`write_group`]),
    /// or only their size told ([`plan_segment`]).
    build: bool,
}

impl<'a> Judge<'a> {
    fn new(
        map: &'a KeyMap,
        tombstones: Tombstones<'a>,
        producers: &'a mut Producers,
        build: bool,
    ) -> Judge<'a> {
        Judge {
            map,
            producers,
            removable: tombstones.removable,
            first_waiting: std::cell::Cell::new(None),
            first_unsafe: tombstones.first_unsafe,
            build,
        }
    }

    /// A record goes if the map holds a newer record of its key; one whose key
    /// the map does not hold (it maps only the segments after the last pass)
    /// is its key's newest as far as this pass knows. A newest record stays,
    /// unless it is a tombstone that a pass covered `delete.retention.ms` ago
    /// with no batch before it that may hold an older value of its key.
    /// Keyless records go. A record at or past the map's end (in the batch
    /// the map ends in) stays.
    fn keep(&self, r: &batch::RecordView<'_>) -> bool {
        if r.offset >= self.map.end {
            return true;
        }
        let Some(k) = r.key else { return false };
        if self.map.latest.get(k).is_some_and(|&o| o != r.offset) {
            return false;
        }
        if !r.tombstone || self.first_unsafe.is_some_and(|o| o < r.offset) {
            return true;
        }
        if self.removable.contains(r.offset) {
            return false;
        }
        if self.first_waiting.get().is_none_or(|o| o > r.offset) {
            self.first_waiting.set(Some(r.offset));
        }
        true
    }

    /// Whether the batch `info` of an idempotent producer, from which every
    /// record goes, must stay (empty) because it holds the producer's last
    /// sequence: producer state read back from the log at start-up (when the
    /// producer snapshots are lost, see [`super::producers`]) would otherwise
    /// find an older batch of the producer, or none, and refuse its next batch
    /// as out of order, or store a retry of this one twice. Kafka's cleaner
    /// keeps the last batch of each producer it remembers; here:
    ///
    /// * a producer the partition remembers keeps it unless it remembers a
    ///   newer batch of the producer below the high watermark (stored and
    ///   acknowledged: anywhere in the log after it, in this pass's segments or
    ///   later ones, the active one included);
    /// * a producer it does not remember (idle past the expiry, evicted, or
    ///   not read back at start-up) keeps it while an older batch of the
    ///   producer stays, which a restart would otherwise take for its last; a
    ///   producer with no batch left is unknown after a restart as it is now.
    fn holds_last_sequence(&self, info: &BatchInfo) -> bool {
        match self.producers.newest.get(&info.producer_id) {
            Some(newest) => newest.is_none_or(|n| n <= info.base_offset),
            None => match self.producers.first_kept.get(&info.producer_id) {
                Some(&o) => o < info.base_offset,
                // Past the bound a producer's earlier batch that stays may
                // not be held: kept, the safe way.
                None => self
                    .producers
                    .overflowed_at
                    .is_some_and(|o| o < info.base_offset),
            },
        }
    }

    /// Decides the batch `buf` (batches must be judged in offset order, and a
    /// write judges only batches its plan judged: see [`Producers`]). A
    /// batch that keeps some of its records is written back with them alone,
    /// its largest timestamp theirs (as Kafka's cleaner rebuilds it; a batch
    /// flagged LogAppendTime keeps its own, which its records read as theirs):
    /// uncompressed if that is no larger than the batch was, and otherwise
    /// compressed again with its own codec unless that is larger still. An
    /// idempotent producer's batch from which every record goes stays empty
    /// while it holds the producer's last sequence.
    fn decide(&mut self, buf: &[u8], info: &BatchInfo) -> Decision {
        let d = self.decide_records(buf, info);
        if info.producer_id >= 0 && !self.build && !matches!(d, Decision::Drop { .. }) {
            let p = &mut *self.producers;
            if p.first_kept.len() < first_kept_cap() || p.first_kept.contains_key(&info.producer_id)
            {
                p.first_kept
                    .entry(info.producer_id)
                    .or_insert(info.base_offset);
            } else {
                p.overflowed_at.get_or_insert(info.base_offset);
            }
        }
        d
    }

    /// [`Judge::decide`], but for what the pass learns of producers.
    fn decide_records(&mut self, buf: &[u8], info: &BatchInfo) -> Decision {
        if info.base_offset >= self.map.end {
            // Past the map: a newer record of any of its keys may follow.
            return Decision::Whole;
        }
        let mut recompress = false;
        let mut d = self.decide_read(buf, info, &mut recompress);
        // Compressed again only here, once the batch's decompressed records
        // are given back: the copy is checked by decompressing it, which
        // reserves from the same budget, and a wait for a reservation while
        // holding another may never end (see [`batch::Budget`]).
        if let (
            true,
            Decision::Partial {
                batch: Some(b),
                bytes,
                ..
            },
        ) = (recompress, &mut d)
        {
            if let Some(c) = compressed_again(&b.bytes, batch::codec(buf)) {
                *bytes = c.len() as u64;
                b.bytes = c;
            }
        }
        d
    }

    /// [`Judge::decide_records`] with the batch's records read (decompressed
    /// when it is compressed); a batch rebuilt with fewer of them is built
    /// uncompressed, `recompress` set when it is to be compressed again.
    fn decide_read(&mut self, buf: &[u8], info: &BatchInfo, recompress: &mut bool) -> Decision {
        with_records(buf, info, |records| {
            let Some((records, payload, compressed)) = records else {
                self.first_unsafe.get_or_insert(info.base_offset);
                return Decision::Whole;
            };
            // Counted first, then copied: the records are read twice rather
            // than collected (a batch may hold millions).
            let n = records.len();
            let (mut kept, mut kept_bytes, mut newest) = (0usize, 0usize, NO_TIMESTAMP);
            for r in records.clone().filter(|r| self.keep(r)) {
                kept += 1;
                kept_bytes += r.bytes.len();
                newest = newest.max(r.timestamp);
            }
            let removed = (n - kept) as u64;
            if n == 0 || kept == 0 {
                return match (info.producer_id >= 0 && self.holds_last_sequence(info), n) {
                    (false, _) => Decision::Drop { removed },
                    (true, 0) => Decision::Whole,
                    (true, _) => Decision::Emptied { removed },
                };
            }
            if removed == 0 {
                return Decision::Whole;
            }
            let plain = HEADER_LEN + kept_bytes;
            let compress_again = compressed && plain > buf.len();
            if !self.build {
                // About what compressing the fewer records again gives.
                let bytes = if compress_again { buf.len() } else { plain };
                return Decision::Partial {
                    batch: None,
                    bytes: bytes as u64,
                    removed,
                };
            }
            let max_timestamp = if info.attributes & ATTR_LOG_APPEND_TIME != 0 {
                info.max_timestamp
            } else {
                newest
            };
            let keep = records.filter(|r| self.keep(r)).map(|r| r.bytes);
            let bytes = batch::retain_records(buf, payload, keep, max_timestamp);
            *recompress = compress_again;
            Decision::Partial {
                bytes: bytes.len() as u64,
                batch: Some(Rebuilt {
                    bytes,
                    max_timestamp,
                }),
                removed,
            }
        })
    }
}

/// The uncompressed batch `plain` compressed again with `codec`, when that is
/// smaller and reads back as exactly its records; `None` otherwise (it is then
/// written uncompressed). The compressed bytes replace the client's for good,
/// so a compressor that panics (a cleaner thread that panics fails storage)
/// or writes what does not read back never gets to put them in place.
fn compressed_again(plain: &[u8], codec: u8) -> Option<Vec<u8>> {
    let c = std::panic::catch_unwind(|| {
        #[cfg(test)]
        let broken = BROKEN_COMPRESSOR.with(std::cell::Cell::get);
        #[cfg(test)]
        if broken == Some(true) {
            panic!("compressor failure injected by the test");
        }
        #[allow(unused_mut)]
        let mut c = batch::compress_records(plain, codec);
        #[cfg(test)]
        if let (Some(false), Some(c)) = (broken, c.as_mut()) {
            // A frame that decodes to other bytes: the last record byte.
            let at = c.len() - 1;
            c[at] ^= 0x55;
            batch::seal(c);
        }
        c
    })
    .map_err(|_| {
        tracing::warn!(
            codec,
            "compressing a compacted batch again panicked; it is written uncompressed"
        );
    })
    .ok()??;
    if c.len() >= plain.len() {
        return None;
    }
    let records = plain.get(batch::HEADER_LEN..)?;
    if batch::payload_in(&c, budget()).as_deref() != Some(records) {
        tracing::warn!(
            codec,
            "a compacted batch compressed again does not read back as its records; it is written uncompressed"
        );
        return None;
    }
    Some(c)
}

#[cfg(test)]
thread_local! {
    /// Makes [`compressed_again`]'s compressor panic (`Some(true)`) or write
    /// bytes that decode to something else (`Some(false)`), on this thread.
    static BROKEN_COMPRESSOR: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
mod recompression_tests {
    use super::*;

    /// Compressed bytes written again replace the client's for good: a
    /// compressor that panicked failed storage (the cleaner thread's panic),
    /// and one whose output did not read back would have stored a batch no
    /// consumer can read. Either now leaves the batch uncompressed.
    #[test]
    fn a_batch_compressed_again_is_kept_only_when_it_reads_back() {
        let value = vec![b'x'; 4000];
        let plain = batch::tests::make_keyed_batch(
            0,
            1000,
            &[
                (0, Some(b"a"), Some(&value[..])),
                (1, Some(b"b"), Some(&value[..])),
            ],
            -1,
            -1,
            -1,
        );
        for codec in 1..=4u8 {
            let c = compressed_again(&plain, codec).expect("smaller and reads back");
            assert_eq!(batch::codec(&c), codec);
            assert_eq!(
                batch::payload(&c).as_deref(),
                Some(&plain[batch::HEADER_LEN..])
            );
            for broken in [true, false] {
                BROKEN_COMPRESSOR.with(|b| b.set(Some(broken)));
                assert_eq!(
                    compressed_again(&plain, codec),
                    None,
                    "codec {codec}, panic {broken}"
                );
                BROKEN_COMPRESSOR.with(|b| b.set(None));
            }
        }
    }

    /// A batch from which some records go, written back compressed again,
    /// was checked by decompressing the copy while its own decompressed
    /// records still held their reservation of the decompression budget. A
    /// zstd batch of two 48 MiB values holds 128 MiB, and the check of its
    /// copy asks for up to 257 MiB of the 272: the cleaner waited for good,
    /// at the head of the line, and every compressed produce and the
    /// shutdown waited behind it. Here with a 4 MiB budget, which the first
    /// decompression fills.
    #[test]
    fn a_batch_compressed_again_is_checked_once_its_records_are_given_back() {
        static BUDGET: batch::Budget = batch::Budget::new(4 << 20);
        let value = vec![b'x'; 1_500_000];
        let plain = batch::tests::make_keyed_batch(
            0,
            1000,
            &[
                (0, Some(b"a"), Some(&value[..])),
                (1, Some(b"b"), Some(&value[..])),
            ],
            -1,
            -1,
            -1,
        );
        let zstd = batch::tests::compress_batch(&plain, 4);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            TEST_BUDGET.with(|b| b.set(Some(&BUDGET)));
            let info = batch::validate_stored(&zstd).unwrap();
            // "a" has a newer record, at offset 2.
            let mut map = KeyMap {
                end: 3,
                ..KeyMap::default()
            };
            map.latest.insert(b"a".to_vec(), 2);
            let mut producers = Producers::default();
            let none = Removable::default();
            let tombstones = Tombstones {
                removable: &none,
                first_unsafe: None,
            };
            let mut judge = Judge::new(&map, tombstones, &mut producers, true);
            let d = judge.decide(&zstd, &info);
            let rebuilt = match d {
                Decision::Partial {
                    batch: Some(b),
                    removed: 1,
                    ..
                } => Some(b.bytes),
                _ => None,
            };
            tx.send(rebuilt).unwrap();
        });
        let rebuilt = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the batch is judged and written in time, not left waiting for the budget")
            .expect("one record goes, the batch is rebuilt");
        assert_eq!(BUDGET.in_use(), 0, "every reservation given back");
        assert_eq!(batch::codec(&rebuilt), 4, "compressed again with zstd");
        let payload = batch::payload(&rebuilt).unwrap();
        let left: Vec<(i64, Option<Vec<u8>>)> = batch::records_in(&rebuilt, &payload)
            .unwrap()
            .map(|r| (r.offset, r.key.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(left, vec![(1, Some(b"b".to_vec()))]);
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    /// A segment in a new directory holding `batches`, and the directory.
    fn segment(batches: &[Vec<u8>]) -> (tempfile::TempDir, Segment) {
        let dir = tempfile::tempdir().unwrap();
        let first = batch::validate_stored(&batches[0]).unwrap().base_offset;
        let mut seg = Segment::create(dir.path(), first).unwrap();
        for b in batches {
            let info = batch::validate_stored(b).unwrap();
            seg.append(b, &[info]).unwrap();
        }
        (dir, seg)
    }

    fn plan(seg: &Segment) -> Plan {
        let map = KeyMap {
            end: seg.next_offset(),
            ..KeyMap::default()
        };
        let none = Removable::default();
        let tombstones = Tombstones {
            removable: &none,
            first_unsafe: None,
        };
        plan_segment(
            &Source::of(seg),
            &map,
            tombstones,
            &mut Producers::default(),
            &|| false,
        )
        .unwrap()
    }

    /// A pass holds the first batch that stays of at most so many producers
    /// (a client may put any producer id on its batches: 10 million
    /// one-record batches of distinct ids made each pass hold some 285 MB).
    /// Past the bound, an emptied batch of a producer it does not hold is
    /// kept, empty, as one whose earlier batch stays must be.
    #[test]
    fn the_producers_a_pass_holds_are_bounded_and_past_the_bound_batches_stay() {
        TEST_FIRST_KEPT_CAP.with(|c| c.set(Some(2)));
        let map = KeyMap {
            latest: HashMap::from([(b"k".to_vec(), 10)]),
            end: 100,
            ..KeyMap::default()
        };
        let none = Removable::default();
        let tombstones = Tombstones {
            removable: &none,
            first_unsafe: None,
        };
        let mut producers = Producers::default();
        let decide = |judge: &mut Judge<'_>, base: i64, key: &[u8], pid: i64| {
            let b = batch::tests::make_keyed_batch(
                base,
                1_700_000_000_000,
                &[(0, Some(key), Some(b"v".as_slice()))],
                pid,
                0,
                0,
            );
            let info = batch::validate_stored(&b).unwrap();
            match judge.decide(&b, &info) {
                Decision::Whole => "whole",
                Decision::Drop { .. } => "drop",
                Decision::Emptied { .. } => "emptied",
                Decision::Partial { .. } => "partial",
            }
        };
        // Producer 9's only batch goes; producers 0, 1 and 2 each keep one,
        // 2 past the bound; producer 2's next batch, all of whose records go,
        // holds its last sequence after its earlier batch that stays: kept,
        // empty. So is producer 3's, the safe way, though it has no batch
        // before it.
        let batches: [(i64, &[u8], i64, &str); 6] = [
            (0, b"k", 9, "drop"),
            (1, b"a", 0, "whole"),
            (2, b"b", 1, "whole"),
            (3, b"c", 2, "whole"),
            (4, b"k", 2, "emptied"),
            (5, b"k", 3, "emptied"),
        ];
        let mut plan = Judge::new(&map, tombstones, &mut producers, false);
        for (base, key, pid, decided) in batches {
            assert_eq!(decide(&mut plan, base, key, pid), decided, "plan, {base}");
        }
        // The write, once everything is planned, judges each batch alike:
        // before, producer 9's batch, before the bound was passed, was kept
        // empty by the write, and every pass copied it again.
        let mut write = Judge::new(&map, tombstones, &mut producers, true);
        for (base, key, pid, decided) in batches {
            assert_eq!(decide(&mut write, base, key, pid), decided, "write, {base}");
        }
        TEST_FIRST_KEPT_CAP.with(|c| c.set(None));
        assert_eq!(producers.first_kept.len(), 2);
        assert_eq!(producers.overflowed_at, Some(3));
    }

    /// A run of removed offsets longer than one empty batch spans (2^31
    /// offsets) is written as several; a plan took any two empty batches in
    /// a row for a run to merge, so every pass copied the segment unchanged
    /// and put the copy in its place. Empty batches in a row that the copy
    /// writes as fewer are still merged.
    #[test]
    fn empty_batches_a_copy_would_write_again_as_they_are_change_nothing() {
        let span = i64::from(i32::MAX) + 1;
        let (_dir, seg) = segment(&[
            batch::empty_batch(0, span - 1, NO_TIMESTAMP),
            batch::empty_batch(span, 2 * span - 1, NO_TIMESTAMP),
        ]);
        let p = plan(&seg);
        assert!(!p.changes(), "{p:?}");
        assert_eq!(p.kept_bytes, 2 * HEADER_LEN as u64);

        let (_dir, seg) = segment(&[
            batch::empty_batch(0, 9, NO_TIMESTAMP),
            batch::empty_batch(10, 19, NO_TIMESTAMP),
        ]);
        let p = plan(&seg);
        assert!(p.merges_empty && p.changes(), "{p:?}");
        assert_eq!(p.kept_bytes, HEADER_LEN as u64);

        // Three that fit in two.
        let (_dir, seg) = segment(&[
            batch::empty_batch(0, span - 1, NO_TIMESTAMP),
            batch::empty_batch(span, span + 9, NO_TIMESTAMP),
            batch::empty_batch(span + 10, span + 19, NO_TIMESTAMP),
        ]);
        let p = plan(&seg);
        assert!(p.merges_empty, "{p:?}");
        assert_eq!(p.kept_bytes, 2 * HEADER_LEN as u64);
    }
}

/// What a pass would make of one segment, from a first read of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Records that would go.
    pub removable: u64,
    /// Whether a run of batches in a row that would hold no record (some left
    /// by earlier passes) takes more batches than a copy writes for it (one
    /// per `i32::MAX + 1` offsets, see [`Gap::flush`]): the copy merges them.
    pub merges_empty: bool,
    /// Whether an empty batch kept for its producer's last sequence would go
    /// (a newer batch of the producer is stored since).
    pub releases_empty: bool,
    /// About the size of the copy.
    pub kept_bytes: u64,
    /// The first batch up to the end of the segment that may hold an older
    /// value of some key (see `Judge::first_unsafe`), if any: what the next
    /// segment's plan starts from.
    pub first_unsafe: Option<i64>,
    /// The segment's first tombstone kept only until a pass covered it
    /// `delete.retention.ms` ago, if any.
    pub first_waiting_tombstone: Option<i64>,
}

/// Which tombstones that are their key's newest record a pass removes: those
/// in `removable` (see [`super::delete_horizon`]) and before `first_unsafe`,
/// the first batch that may hold an older value of some key, if any (from
/// the log start up to the segment judged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tombstones<'a> {
    pub removable: &'a Removable,
    pub first_unsafe: Option<i64>,
}

impl Plan {
    /// Whether copying the segment changes anything.
    pub fn changes(&self) -> bool {
        self.removable > 0 || self.merges_empty || self.releases_empty
    }
}

/// Reads `src` once to see what compacting it would do; `tombstones` tells
/// which may go, from the segments before it (the pass reads every segment
/// from the log start, in order), and `producers` what the pass knows of
/// producers, which this plan adds to (the segments must be planned in
/// order, from the log start, with the same `producers`).
pub(crate) fn plan_segment(
    src: &Source,
    map: &KeyMap,
    tombstones: Tombstones<'_>,
    producers: &mut Producers,
    halt: &dyn Fn() -> bool,
) -> Result<Plan> {
    let mut judge = Judge::new(map, tombstones, producers, false);
    let mut plan = Plan::default();
    // The run of batches that would hold no record, and how many they are.
    let mut run: Option<(Gap, u64)> = None;
    let end_run = |plan: &mut Plan, run: Option<(Gap, u64)>| {
        if let Some((gap, batches)) = run {
            plan.kept_bytes += gap.bytes();
            plan.merges_empty |= batches > gap.batches();
        }
    };
    src.for_each_batch(|buf, info| {
        if halt() {
            return Err(stopped(src));
        }
        let bytes = match judge.decide(buf, info) {
            Decision::Whole => info.len as u64,
            Decision::Drop { removed } => {
                plan.removable += removed;
                // Only an empty batch kept for its producer has a producer
                // and no records.
                plan.releases_empty |= removed == 0 && info.producer_id >= 0;
                let (gap, batches) = run.get_or_insert((
                    Gap {
                        first: info.base_offset,
                        last: info.last_offset(),
                    },
                    0,
                ));
                gap.last = info.last_offset();
                *batches += 1;
                return Ok(());
            }
            Decision::Emptied { removed } => {
                plan.removable += removed;
                HEADER_LEN as u64
            }
            Decision::Partial { bytes, removed, .. } => {
                plan.removable += removed;
                bytes
            }
        };
        end_run(&mut plan, run.take());
        plan.kept_bytes += bytes;
        Ok(())
    })?;
    end_run(&mut plan, run.take());
    plan.first_unsafe = judge.first_unsafe;
    plan.first_waiting_tombstone = judge.first_waiting.get();
    Ok(plan)
}

/// What [`write_group`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupCopy {
    /// How many of the group's segments the copy replaces, from the first:
    /// all, or fewer when the next would have taken it past `segment.bytes`.
    pub segments: usize,
    /// Records removed.
    pub removed: u64,
    /// Bytes of the copy.
    pub size: u64,
    /// The newest timestamp of all the copy's batches (-1 when none has one),
    /// which may be an earlier batch's rather than the last one's: what time
    /// retention judges the copy by.
    pub max_timestamp: i64,
}

/// The copy [`write_group`] is writing: the batches judged so far, and the
/// run of emptied batches not yet written.
struct Copier<'a> {
    judge: Judge<'a>,
    out: CleanedWriter,
    gap: Option<Gap>,
    removed: u64,
}

impl Copier<'_> {
    /// Judges one batch and writes what stays of it.
    fn batch(&mut self, buf: &[u8], info: &BatchInfo) -> Result<()> {
        let d = self.judge.decide(buf, info);
        if let Decision::Drop { removed } = d {
            self.removed += removed;
            let g = self.gap.get_or_insert(Gap {
                first: info.base_offset,
                last: info.last_offset(),
            });
            g.last = info.last_offset();
            return Ok(());
        }
        if let Some(g) = self.gap.take() {
            g.flush(&mut self.out)?;
        }
        match d {
            Decision::Partial {
                batch: Some(batch),
                removed,
                ..
            } => {
                self.removed += removed;
                self.out
                    .push(&batch.bytes, info.base_offset, batch.max_timestamp)
            }
            Decision::Emptied { removed } => {
                self.removed += removed;
                self.out.push(
                    &batch::empty_producer_batch(info, NO_TIMESTAMP),
                    info.base_offset,
                    NO_TIMESTAMP,
                )
            }
            _ => self.out.push(buf, info.base_offset, info.max_timestamp),
        }
    }

    /// The size of the copy once the run of emptied batches is written.
    fn size(&self) -> u64 {
        self.out.size() + self.gap.map_or(0, Gap::bytes)
    }
}

/// Writes the compacted copy of the consecutive segments `group` as one segment
/// starting at the first one's base, beside it ([`CleanedWriter`] files, made
/// durable); `tombstones` as for [`plan_segment`], and `producers` as every
/// segment of the pass was planned with.
///
/// The copy holds at most `segment.bytes`, or the first segment's copy alone:
/// the plan only estimates what a batch compressed again takes (its
/// compressor is not the client's and may do worse), so a segment whose copy
/// takes the copy past the bound is taken out again (the copy cut back to
/// where it began) and left to the next group ([`GroupCopy::segments`]).
/// A copy never merges segments into one larger than a segment may grow,
/// which the 32-bit file positions of its index could not address.
pub(crate) fn write_group(
    dir: &Path,
    group: &[Source],
    map: &KeyMap,
    policy: &CompactionPolicy,
    tombstones: Tombstones<'_>,
    producers: &mut Producers,
    halt: &dyn Fn() -> bool,
) -> Result<GroupCopy> {
    let base = group[0].base;
    let mut c = Copier {
        judge: Judge::new(map, tombstones, producers, true),
        out: CleanedWriter::create(dir, base)?,
        gap: None,
        removed: 0,
    };
    let mut segments = 0;
    let mut written = Ok(());
    for src in group {
        let (mark, gap, removed) = (c.out.mark(), c.gap, c.removed);
        written = src.for_each_batch(|buf, info| {
            if halt() {
                return Err(stopped(src));
            }
            c.batch(buf, info)
        });
        if written.is_err() {
            break;
        }
        if segments > 0 && c.size() > policy.segment_bytes {
            written = c.out.rewind(mark);
            (c.gap, c.removed) = (gap, removed);
            break;
        }
        segments += 1;
    }
    let written = written.and_then(|()| match c.gap.take() {
        Some(g) => g.flush(&mut c.out),
        None => Ok(()),
    });
    let mut out = c.out;
    if let Err(e) = written {
        drop(out);
        CleanedWriter::discard(dir, base);
        return Err(e);
    }
    // Read here, for the group copied only, outside the partition lock: a
    // `stat` of every closed segment under it at every pass held back the
    // apply thread (100-300 ms a pass at 100,000 segments).
    out.keep_modified(
        group[..segments]
            .iter()
            .filter_map(|s| s.log.modified())
            .max(),
    );
    let (size, max_timestamp) = (out.size(), out.max_timestamp());
    out.finish()?;
    Ok(GroupCopy {
        segments,
        removed: c.removed,
        size,
        max_timestamp,
    })
}
