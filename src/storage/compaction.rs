//! Log compaction (`cleanup.policy=compact`): keeps the newest record of every key
//! in a partition's closed segments and drops the older ones, as Kafka's log
//! cleaner does.
//!
//! One pass over a partition ([`super::Partition::compact`]):
//!
//! 1. The *cleanable* segments are the closed ones, oldest first, up to the first
//!    that is not wholly below the high watermark, not yet synced, or (with
//!    `min.compaction.lag.ms`) holds a record newer than the lag. The active
//!    segment is never compacted.
//! 2. The pass runs only when the bytes of cleanable segments not compacted since
//!    the broker started (or since the last pass) are at least
//!    `min.cleanable.dirty.ratio` of all cleanable bytes.
//! 3. A key map (key → offset of its newest record) is built from the cleanable
//!    records after the last pass, a batch at a time, until it holds about
//!    [`CompactionPolicy::map_bytes`] (at least one batch, so a segment with more
//!    keys than the map holds is mapped a part per pass); the pass compacts every
//!    segment from the log start to the end of the map against it, keeping every
//!    batch past the map's end as it is, and the next one goes on from there.
//! 4. Each mapped segment is read once to see what would stay (`plan_segment`).
//!    Consecutive segments whose copies fit in `segment.bytes` together form a
//!    group, so that compacted segments do not pile up as ever smaller files.
//! 5. Each group is copied into one segment beside the first
//!    (`<base>.log.cleaning`, `write_group`) keeping a record only if it is
//!    its key's newest, and dropping records without a key. A tombstone (null
//!    value) that is its key's newest goes once its timestamp is
//!    `delete.retention.ms` old, unless a batch whose records cannot be read
//!    lies before it (see below). The copy is fsynced, renamed to
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
//! offsets, as Kafka's cleaner leaves empty batches. So a segment still holds
//! contiguous offsets, fetches still return whole batches, consumers step over
//! the gaps, and the largest timestamp of a batch, a segment or the partition
//! (ListOffsets `MAX_TIMESTAMP`, time retention) is always that of a record
//! still there.
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
    batch::{self, BatchInfo, ATTR_CONTROL, ATTR_LOG_APPEND_TIME, ATTR_TRANSACTIONAL, HEADER_LEN},
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
    /// A tombstone whose timestamp is this much older than `now_ms` may go.
    pub delete_retention_ms: u64,
    /// A segment holding a record newer than this is not compacted yet.
    pub min_compaction_lag_ms: u64,
    /// The share of cleanable bytes that must be new since the last pass.
    pub min_cleanable_dirty_ratio: f64,
    /// Bound of the key map (keys plus per-entry overhead); at least one
    /// batch is mapped whatever its size.
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
    /// Its log's last modification time, when it can be read.
    pub modified: Option<std::time::SystemTime>,
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
            modified: s.modified_ms().and_then(|ms| {
                std::time::UNIX_EPOCH
                    .checked_add(std::time::Duration::from_millis(u64::try_from(ms).ok()?))
            }),
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

/// Calls `f` with the records of a batch the broker can read (uncompressed or
/// decompressed, see [`batch::payload`]; neither transactional nor a control
/// batch; records that parse), their records section, and whether the batch is
/// compressed; with `None` for any other batch, which compaction keeps whole.
fn with_records<T>(
    buf: &[u8],
    info: &BatchInfo,
    f: impl FnOnce(Option<(batch::Records<'_>, &[u8], bool)>) -> T,
) -> T {
    if info.attributes & (ATTR_TRANSACTIONAL | ATTR_CONTROL) != 0 {
        return f(None);
    }
    let Some(payload) = batch::payload(buf) else {
        return f(None);
    };
    match batch::records_in(buf, &payload) {
        Some(records) => f(Some((records, &payload, batch::is_compressed(buf)))),
        None => f(None),
    }
}

/// Key → offset of its newest record, over the mapped batches.
#[derive(Debug, Default)]
pub(crate) struct KeyMap {
    latest: HashMap<Vec<u8>, i64>,
    bytes: usize,
    /// The offset after the last mapped batch: a pass judges no record at or
    /// past it (the map does not know whether a newer record of its key
    /// follows), so every batch from there on is kept as it is.
    pub end: i64,
}

/// Per-entry overhead counted against the map's bound: the table's slot (the
/// key's `Vec` and the offset, at the table's load factor) and the key's own
/// allocation's header and rounding.
const ENTRY_OVERHEAD: usize = 80;

/// Maps the keys of `sources[first..]` from offset `from` on, in order, a batch
/// at a time, until the map holds `limit` bytes (at least one batch). Returns
/// the map and the index after the last segment it covers, wholly or in part
/// (see [`KeyMap::end`]). A batch whose records cannot be read adds no key
/// (its records all stay).
pub(crate) fn build_map(
    sources: &[Source],
    first: usize,
    from: i64,
    limit: usize,
) -> Result<(KeyMap, usize)> {
    let mut map = KeyMap {
        end: from,
        ..KeyMap::default()
    };
    let mut end = first;
    for src in &sources[first..] {
        if end > first && map.bytes >= limit {
            break;
        }
        src.batches_while(from, |buf, info| {
            if map.end > from && map.bytes >= limit {
                return Ok(false);
            }
            map.end = info.last_offset() + 1;
            with_records(buf, info, |records| {
                for r in records.into_iter().flat_map(|r| r.0) {
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
            Ok(true)
        })?;
        end += 1;
    }
    Ok((map, end))
}

/// The timestamp of a batch without records: none (Kafka's `NO_TIMESTAMP`).
const NO_TIMESTAMP: i64 = -1;

/// A run of batches from which every record went, written as one empty batch
/// without a timestamp: it holds no record for ListOffsets `MAX_TIMESTAMP` or
/// time retention to go by.
#[derive(Debug, Clone, Copy)]
struct Gap {
    first: i64,
    last: i64,
}

impl Gap {
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

/// Which records stay.
struct Judge<'a> {
    map: &'a KeyMap,
    /// Tombstones older than this go.
    tombstone_horizon: i64,
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
        policy: &CompactionPolicy,
        first_unsafe: Option<i64>,
        build: bool,
    ) -> Judge<'a> {
        Judge {
            map,
            tombstone_horizon: policy
                .now_ms
                .saturating_sub(i64::try_from(policy.delete_retention_ms).unwrap_or(i64::MAX)),
            first_unsafe,
            build,
        }
    }

    /// A record goes if the map holds a newer record of its key; one whose key
    /// the map does not hold (it maps only the segments after the last pass)
    /// is its key's newest as far as this pass knows. A newest record stays,
    /// unless it is a tombstone past `delete.retention.ms` with no batch before
    /// it that may hold an older value of its key. Keyless records go.
    fn keep(&self, r: &batch::RecordView<'_>) -> bool {
        let Some(k) = r.key else { return false };
        if self.map.latest.get(k).is_some_and(|&o| o != r.offset) {
            return false;
        }
        !(r.tombstone
            && r.timestamp < self.tombstone_horizon
            && self.first_unsafe.is_none_or(|o| o > r.offset))
    }

    /// Decides the batch `buf` (batches must be judged in offset order). A
    /// batch that keeps some of its records is written back with them alone,
    /// its largest timestamp theirs (as Kafka's cleaner rebuilds it; a batch
    /// flagged LogAppendTime keeps its own, which its records read as theirs):
    /// uncompressed if that is no larger than the batch was, and otherwise
    /// compressed again with its own codec unless that is larger still.
    fn decide(&mut self, buf: &[u8], info: &BatchInfo) -> Decision {
        if info.base_offset >= self.map.end {
            // Past the map: a newer record of any of its keys may follow.
            return Decision::Whole;
        }
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
                return Decision::Drop { removed };
            }
            if removed == 0 {
                return Decision::Whole;
            }
            let plain = HEADER_LEN + kept_bytes;
            let recompress = compressed && plain > buf.len();
            if !self.build {
                // About what compressing the fewer records again gives.
                let bytes = if recompress { buf.len() } else { plain };
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
            let mut bytes = batch::retain_records(buf, payload, keep, max_timestamp);
            if recompress {
                if let Some(c) = compressed_again(&bytes, batch::codec(buf)) {
                    bytes = c;
                }
            }
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
    if batch::payload(&c).as_deref() != Some(records) {
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
}

/// What a pass would make of one segment, from a first read of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Records that would go.
    pub removable: u64,
    /// Whether two or more batches in a row would hold no record (some left by
    /// earlier passes), which a copy merges into one.
    pub merges_empty: bool,
    /// About the size of the copy.
    pub kept_bytes: u64,
    /// The first batch up to the end of the segment that may hold an older
    /// value of some key (see `Judge::first_unsafe`), if any: what the next
    /// segment's plan starts from.
    pub first_unsafe: Option<i64>,
}

impl Plan {
    /// Whether copying the segment changes anything.
    pub fn changes(&self) -> bool {
        self.removable > 0 || self.merges_empty
    }
}

/// Reads `src` once to see what compacting it would do; `first_unsafe` is the
/// first batch that may hold an older value of some key in the segments before
/// it (the pass reads every segment from the log start, in order).
pub(crate) fn plan_segment(
    src: &Source,
    map: &KeyMap,
    policy: &CompactionPolicy,
    first_unsafe: Option<i64>,
) -> Result<Plan> {
    let mut judge = Judge::new(map, policy, first_unsafe, false);
    let mut plan = Plan::default();
    let mut prev_empty = false;
    src.for_each_batch(|buf, info| {
        let (empty, bytes) = match judge.decide(buf, info) {
            Decision::Whole => (false, info.len as u64),
            Decision::Drop { removed } => {
                plan.removable += removed;
                (true, HEADER_LEN as u64)
            }
            Decision::Partial { bytes, removed, .. } => {
                plan.removable += removed;
                (false, bytes)
            }
        };
        if empty && prev_empty {
            plan.merges_empty = true;
        } else {
            plan.kept_bytes += bytes;
        }
        prev_empty = empty;
        Ok(())
    })?;
    plan.first_unsafe = judge.first_unsafe;
    Ok(plan)
}

/// What [`write_group`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupCopy {
    /// Records removed.
    pub removed: u64,
    /// Bytes of the copy.
    pub size: u64,
    /// The newest timestamp of all the copy's batches (-1 when none has one),
    /// which may be an earlier batch's rather than the last one's: what time
    /// retention judges the copy by.
    pub max_timestamp: i64,
}

/// Writes the compacted copy of the consecutive segments `group` as one segment
/// starting at the first one's base, beside it ([`CleanedWriter`] files, made
/// durable); `first_unsafe` as for [`plan_segment`].
pub(crate) fn write_group(
    dir: &Path,
    group: &[Source],
    map: &KeyMap,
    policy: &CompactionPolicy,
    first_unsafe: Option<i64>,
) -> Result<GroupCopy> {
    let mut judge = Judge::new(map, policy, first_unsafe, true);
    let base = group[0].base;
    let mut out = CleanedWriter::create(dir, base)?;
    out.keep_modified(group.iter().filter_map(|s| s.modified).max());
    let mut gap: Option<Gap> = None;
    let mut removed_total = 0u64;
    let mut copy = |buf: &[u8], info: &BatchInfo| -> Result<()> {
        let d = judge.decide(buf, info);
        if let Decision::Drop { removed } = d {
            removed_total += removed;
            let g = gap.get_or_insert(Gap {
                first: info.base_offset,
                last: info.last_offset(),
            });
            g.last = info.last_offset();
            return Ok(());
        }
        if let Some(g) = gap.take() {
            g.flush(&mut out)?;
        }
        match d {
            Decision::Partial {
                batch: Some(batch),
                removed,
                ..
            } => {
                removed_total += removed;
                out.push(&batch.bytes, info.base_offset, batch.max_timestamp)
            }
            _ => out.push(buf, info.base_offset, info.max_timestamp),
        }
    };
    let mut written = Ok(());
    for src in group {
        written = src.for_each_batch(&mut copy);
        if written.is_err() {
            break;
        }
    }
    let written = written.and_then(|()| match gap.take() {
        Some(g) => g.flush(&mut out),
        None => Ok(()),
    });
    if let Err(e) = written {
        drop(out);
        CleanedWriter::discard(dir, base);
        return Err(e);
    }
    let (size, max_timestamp) = (out.size(), out.max_timestamp());
    out.finish()?;
    Ok(GroupCopy {
        removed: removed_total,
        size,
        max_timestamp,
    })
}
