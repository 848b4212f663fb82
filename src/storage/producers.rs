//! Idempotent producers: producer ids, and per partition the sequence numbers each
//! producer wrote last, so that a retried batch is answered with its first offset
//! instead of being stored twice, and a gap in a producer's sequence is refused.
//!
//! The rules are Kafka's for a producer without transactions (`InitProducerId`
//! with no transactional id always gets a new producer id at epoch 0):
//! * a batch from an older epoch than the producer's last one is refused
//!   (`INVALID_PRODUCER_EPOCH`);
//! * a newer epoch must start at sequence 0 (`OUT_OF_ORDER_SEQUENCE_NUMBER`);
//! * within an epoch, a batch equal in first and last sequence to one of the
//!   producer's last [`CACHED_BATCHES`] batches is a duplicate; any other batch must
//!   continue the sequence exactly (`OUT_OF_ORDER_SEQUENCE_NUMBER`);
//! * a producer the partition knows nothing of may start at any sequence (its
//!   state may have been dropped: expired, or only in segments older than the
//!   newest, which start-up does not scan).
//!
//! The state is rebuilt at start-up as Kafka rebuilds it: from the snapshot
//! written when the newest segment of each partition was started (every producer's
//! batches before it; [`ProducerState::snapshot_below`]), then from that segment's
//! batches and what the WAL replay appends.
//!
//! A producer's idle time counts from its last batch: for a batch appended
//! live, from when it was stored; for one read back at start-up, from the
//! later of the batch's largest record timestamp and a bound on when it was
//! stored: the WAL entry's append time for the WAL replay (and the rebuild of
//! flushed batches a crash took), the log file's last write for the newest
//! segment's scan (every batch in it was stored by then). So a restart does not
//! make a day-old producer new again (a snapshot keeps the wall-clock time
//! too), and a producer that writes old timestamps (a mirror keeping its
//! source's, a backfill) is not forgotten at a restart while its retries may
//! still come: forgetting a producer too early stores its retries twice,
//! keeping it too long costs only memory. Clocks are wall-clock milliseconds,
//! which a restart, a reboot included, keeps.
//!
//! Idle producers are dropped by a sweep over the partition's map, which runs
//! when an unknown producer is recorded and either [`SWEEP_INTERVAL`] has passed
//! since the last sweep or the map has doubled since (and holds at least
//! [`SWEEP_MIN_LEN`] producers): recording a new producer costs O(1) amortised,
//! however many the partition knows. The sweep only frees memory: a producer
//! idle past the expiry is unknown from then on, swept or not.
//!
//! A partition remembers at most [`MAX_PRODUCERS`] producers: a new one that
//! finds the map full evicts the least recently used (a tenth of the cap at a
//! time, so that this too costs O(1) amortised), which are unknown from then
//! on, as after their expiry.

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::checked::Checked;

use super::batch::BatchInfo;
use crate::error::{Error, Result};

/// Batches per producer remembered for duplicate detection (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence).
pub const CACHED_BATCHES: usize = 5;

/// A producer that wrote nothing to a partition for this long is forgotten there
/// (Kafka's `producer.id.expiration.ms` default).
const EXPIRY: Duration = Duration::from_secs(24 * 3600);
const EXPIRY_MS: i64 = EXPIRY.as_millis() as i64;

/// The longest a partition's map goes without an expiry sweep while new
/// producers arrive.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
const SWEEP_INTERVAL_MS: u64 = SWEEP_INTERVAL.as_millis() as u64;

/// Below this many producers the map is swept only by time.
const SWEEP_MIN_LEN: usize = 1024;

/// Producers a partition remembers at most. Producer ids are a client's to
/// ask for, as many as it likes: without a bound, a client minting ids makes
/// the map (and every snapshot) grow for a day. A new producer that finds the
/// map full evicts the least recently used tenth of it (after the expired
/// ones), so that eviction costs O(1) amortised per new producer; an evicted
/// producer is unknown from then on, as after its expiry. At about 200 bytes
/// a producer, a full map holds some 20 MB.
pub const MAX_PRODUCERS: usize = 100_000;

/// Why a producer's batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceError {
    /// The batch's epoch is older than the producer's last one.
    StaleEpoch {
        /// The batch's epoch.
        epoch: i16,
        /// The producer's last epoch.
        current: i16,
    },
    /// The batch does not continue the producer's sequence.
    OutOfOrder {
        /// The sequence that would continue the producer's.
        expected: i32,
        /// The batch's first sequence.
        got: i32,
    },
}

impl std::fmt::Display for SequenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SequenceError::StaleEpoch { epoch, current } => {
                write!(
                    f,
                    "producer epoch {epoch} is older than its current epoch {current}"
                )
            }
            SequenceError::OutOfOrder { expected, got } => {
                write!(f, "expected sequence {expected}, got {got}")
            }
        }
    }
}

/// What to do with a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Store it.
    Append,
    /// Already stored at this base offset: answer with it, store nothing.
    Duplicate(i64),
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Clone)]
struct Entry {
    epoch: i16,
    /// Oldest first.
    batches: VecDeque<Cached>,
    /// Wall-clock milliseconds of its newest batch (see the module docs).
    last_used_ms: i64,
    /// The newest batch's largest record timestamp; -1 when restored from a
    /// snapshot, which does not keep it.
    last_timestamp: i64,
}

impl Entry {
    fn expired(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.last_used_ms) >= EXPIRY_MS
    }
}

/// The producers of one partition.
#[derive(Debug)]
pub struct ProducerState {
    producers: HashMap<i64, Entry>,
    /// At most this many ([`MAX_PRODUCERS`]).
    max_producers: usize,
    /// When the last expiry sweep ran, wall-clock milliseconds (`None`: never).
    last_sweep_ms: Option<i64>,
    /// Producers left by the last sweep: the map is swept again once it holds
    /// twice as many (and at least [`SWEEP_MIN_LEN`]).
    swept_len: usize,
    /// Sweeps run.
    #[cfg(test)]
    sweeps: usize,
}

impl Default for ProducerState {
    fn default() -> Self {
        ProducerState {
            producers: HashMap::new(),
            max_producers: MAX_PRODUCERS,
            last_sweep_ms: None,
            swept_len: 0,
            #[cfg(test)]
            sweeps: 0,
        }
    }
}

/// A producer state snapshot as stored (`<base offset>.producers`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    version: u32,
    /// Every batch recorded lies below this offset.
    below: i64,
    producers: Vec<SnapshotProducer>,
    /// CRC32C of the rest (see [`super::checked`]); absent in the snapshots
    /// of builds before it, which load unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<u32>,
}

super::checked::checked_by_field!(Snapshot);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct SnapshotProducer {
    id: i64,
    epoch: i16,
    /// Wall-clock milliseconds of the producer's last batch.
    last_used_ms: i64,
    /// (first sequence, last sequence, base offset), oldest first.
    batches: Vec<(i32, i32, i64)>,
}

impl Snapshot {
    /// Every batch the snapshot records lies below this offset: the base of the
    /// segment it was taken for.
    pub fn below(&self) -> i64 {
        self.below
    }

    /// The snapshot's format version (1 is the only one written).
    pub fn version(&self) -> u32 {
        self.version
    }
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerState {
    /// Judges a payload's batches (offsets not yet assigned). Batches without a
    /// producer id are always appended. A payload is a duplicate only when its
    /// first batch is one of the cached ones (clients send one batch per
    /// partition); its later batches must then be cached too.
    ///
    /// # Errors
    /// The first batch that breaks the rules above.
    pub fn check(&self, infos: &[BatchInfo]) -> std::result::Result<Verdict, SequenceError> {
        self.check_at(infos, super::segment::now_ms())
    }

    fn check_at(
        &self,
        infos: &[BatchInfo],
        now_ms: i64,
    ) -> std::result::Result<Verdict, SequenceError> {
        let mut duplicate_of = None;
        // Later batches of the payload are judged as if the earlier ones were stored.
        let mut last: HashMap<i64, (i16, Option<i32>)> = HashMap::new();
        for (i, b) in infos.iter().enumerate() {
            if b.producer_id < 0 {
                continue;
            }
            let known = self
                .producers
                .get(&b.producer_id)
                .filter(|e| !e.expired(now_ms));
            if let Some(e) = known.filter(|e| e.epoch == b.producer_epoch) {
                if let Some(c) = e
                    .batches
                    .iter()
                    .find(|c| c.first_seq == b.base_sequence && c.last_seq == b.last_sequence())
                {
                    if i == 0 {
                        duplicate_of = Some(c.base_offset);
                    }
                    if duplicate_of.is_some() {
                        continue;
                    }
                }
            }
            if duplicate_of.is_some() {
                // A duplicate first batch followed by a new one: the client is
                // not sending what it sent before.
                let expected = known
                    .and_then(|e| e.batches.back())
                    .map_or(0, |c| next_seq(c.last_seq));
                return Err(SequenceError::OutOfOrder {
                    expected,
                    got: b.base_sequence,
                });
            }
            let (epoch, last_seq) = match last.get(&b.producer_id) {
                Some(&(epoch, seq)) => (Some(epoch), seq),
                None => match known {
                    Some(e) => (Some(e.epoch), e.batches.back().map(|c| c.last_seq)),
                    None => (None, None),
                },
            };
            let expected = match epoch {
                // Unknown producer: any sequence starts it.
                None => None,
                Some(current) if b.producer_epoch < current => {
                    return Err(SequenceError::StaleEpoch {
                        epoch: b.producer_epoch,
                        current,
                    })
                }
                // A new epoch starts at 0.
                Some(current) if b.producer_epoch > current => Some(0),
                Some(_) => Some(last_seq.map_or(0, next_seq)),
            };
            if let Some(expected) = expected.filter(|e| *e != b.base_sequence) {
                return Err(SequenceError::OutOfOrder {
                    expected,
                    got: b.base_sequence,
                });
            }
            last.insert(b.producer_id, (b.producer_epoch, Some(b.last_sequence())));
        }
        Ok(duplicate_of.map_or(Verdict::Append, Verdict::Duplicate))
    }

    /// Records batches just stored (offsets assigned): each producer's newest
    /// batches, used now.
    pub fn record(&mut self, infos: &[BatchInfo]) {
        self.record_at(infos, super::segment::now_ms(), None);
    }

    /// Records batches read back at start-up (a segment's scan, the WAL
    /// replay), stored no later than `stored_by_ms` (wall-clock milliseconds:
    /// the WAL entry's append time, the segment file's last write). Each
    /// producer is used at the later of that and its batch's largest record
    /// timestamp, no later than now. A producer whose batch is older than the
    /// expiry by both is forgotten.
    pub fn recover(&mut self, infos: &[BatchInfo], stored_by_ms: i64) {
        self.record_at(infos, super::segment::now_ms(), Some(stored_by_ms));
    }

    /// [`Self::record`] at `now_ms`; with `read_back` (the `stored_by_ms`),
    /// [`Self::recover`].
    fn record_at(&mut self, infos: &[BatchInfo], now_ms: i64, read_back: Option<i64>) {
        for b in infos.iter().filter(|b| b.producer_id >= 0) {
            let used_ms = match read_back {
                // Neither known: now.
                Some(stored_by_ms) => match b.max_timestamp.max(stored_by_ms) {
                    t if t < 0 => now_ms,
                    t => t.min(now_ms),
                },
                None => now_ms,
            };
            if now_ms.saturating_sub(used_ms) >= EXPIRY_MS {
                self.producers.remove(&b.producer_id);
                continue;
            }
            let known = self
                .producers
                .get(&b.producer_id)
                .is_some_and(|e| !e.expired(now_ms));
            if !known {
                self.sweep_if_due(now_ms);
                if self.producers.len() >= self.max_producers
                    && !self.producers.contains_key(&b.producer_id)
                {
                    self.evict(now_ms);
                }
            }
            let e = self.producers.entry(b.producer_id).or_insert(Entry {
                epoch: b.producer_epoch,
                batches: VecDeque::with_capacity(CACHED_BATCHES),
                last_used_ms: used_ms,
                last_timestamp: -1,
            });
            // A producer back after the expiry starts afresh, as a new one.
            if !known || b.producer_epoch != e.epoch {
                e.epoch = b.producer_epoch;
                e.batches.clear();
            }
            if e.batches.len() == CACHED_BATCHES {
                e.batches.pop_front();
            }
            e.batches.push_back(Cached {
                first_seq: b.base_sequence,
                last_seq: b.last_sequence(),
                base_offset: b.base_offset,
            });
            e.last_used_ms = used_ms;
            e.last_timestamp = b.max_timestamp;
        }
    }

    /// Drops the producers idle past the expiry, when a sweep is due: once per
    /// [`SWEEP_INTERVAL`] (or when the clock moved back as far), or when the map
    /// has doubled since the last sweep. A sweep costs O(len) and the next one
    /// by size comes at least as many insertions later, so each insertion pays
    /// O(1) amortised.
    fn sweep_if_due(&mut self, now_ms: i64) {
        let by_time = self
            .last_sweep_ms
            .is_none_or(|t| now_ms.abs_diff(t) >= SWEEP_INTERVAL_MS);
        let by_size = self.producers.len() >= self.swept_len.saturating_mul(2).max(SWEEP_MIN_LEN);
        if !(by_time || by_size) {
            return;
        }
        self.producers.retain(|_, e| !e.expired(now_ms));
        self.last_sweep_ms = Some(now_ms);
        self.swept_len = self.producers.len();
        #[cfg(test)]
        {
            self.sweeps += 1;
        }
    }

    /// Makes room in a full map: drops the expired producers and then, while
    /// it holds more than nine tenths of [`MAX_PRODUCERS`], the least recently
    /// used ones (oldest `last_used_ms` first). O(len), and the next eviction
    /// comes at least a tenth of the cap of new producers later.
    fn evict(&mut self, now_ms: i64) {
        self.producers.retain(|_, e| !e.expired(now_ms));
        let keep = self
            .max_producers
            .saturating_sub((self.max_producers / 10).max(1));
        let excess = self.producers.len().saturating_sub(keep);
        if excess > 0 {
            let mut by_use: Vec<(i64, i64)> = self
                .producers
                .iter()
                .map(|(&id, e)| (e.last_used_ms, id))
                .collect();
            // The `excess` least recently used come first (`excess` < len,
            // since `keep` < the cap <= len).
            let _ = by_use.select_nth_unstable(excess);
            for &(_, id) in &by_use[..excess] {
                self.producers.remove(&id);
            }
            tracing::warn!(
                evicted = excess,
                cap = self.max_producers,
                "a partition remembers too many idempotent producers; the least recently used are forgotten"
            );
        }
        self.last_sweep_ms = Some(now_ms);
        self.swept_len = self.producers.len();
        #[cfg(test)]
        {
            self.sweeps += 1;
        }
    }

    /// Each producer remembered (not expired), by id: its epoch, the last
    /// sequence of its newest batch (-1 if none is cached) and that batch's
    /// largest record timestamp (when restored from a snapshot, which does not
    /// keep it, the wall-clock milliseconds when the producer was last seen).
    /// In no order: a caller sorts after letting the state go (the submit
    /// thread takes it for every produce, and there may be 100,000).
    pub fn describe_unsorted(&self) -> Vec<(i64, i16, i32, i64)> {
        let now_ms = super::segment::now_ms();
        self.producers
            .iter()
            .filter(|(_, e)| !e.expired(now_ms))
            .map(|(&id, e)| {
                let last_seq = e.batches.back().map_or(-1, |c| c.last_seq);
                let last_ms = if e.last_timestamp >= 0 {
                    e.last_timestamp
                } else {
                    e.last_used_ms
                };
                (id, e.epoch, last_seq, last_ms)
            })
            .collect()
    }

    /// The largest producer id remembered below `limit`, expired or not.
    pub fn largest_id_below(&self, limit: i64) -> Option<i64> {
        self.producers
            .keys()
            .filter(|&&id| id < limit)
            .max()
            .copied()
    }

    /// [`ProducerState::describe_unsorted`], by id.
    #[cfg(test)]
    pub fn describe(&self) -> Vec<(i64, i16, i32, i64)> {
        let mut out = self.describe_unsorted();
        out.sort_unstable();
        out
    }

    /// Each producer remembered (not expired), by id, with the base offset of
    /// its newest remembered batch below `below` (the high watermark: stored
    /// and acknowledged), if any. Compaction keeps the empty batch that holds
    /// a producer's last sequence by it (see [`super::compaction`]).
    pub fn newest_below(&self, below: i64) -> HashMap<i64, Option<i64>> {
        let now_ms = super::segment::now_ms();
        self.producers
            .iter()
            .filter(|(_, e)| !e.expired(now_ms))
            .map(|(&id, e)| {
                let newest = e
                    .batches
                    .iter()
                    .map(|c| c.base_offset)
                    .filter(|&o| o < below)
                    .max();
                (id, newest)
            })
            .collect()
    }

    /// What a snapshot taken where a segment starting at `below` begins holds:
    /// every producer's cached batches below that offset (batches already given
    /// offsets at or above it are left to that segment's scan, since they may never
    /// become durable).
    pub fn snapshot_below(&self, below: i64) -> Snapshot {
        let mut producers: Vec<SnapshotProducer> = self
            .producers
            .iter()
            .filter_map(|(&id, e)| {
                let batches: Vec<_> = e
                    .batches
                    .iter()
                    .filter(|c| c.base_offset < below)
                    .map(|c| (c.first_seq, c.last_seq, c.base_offset))
                    .collect();
                (!batches.is_empty()).then_some(SnapshotProducer {
                    id,
                    epoch: e.epoch,
                    last_used_ms: e.last_used_ms,
                    batches,
                })
            })
            .collect();
        producers.sort_by_key(|p| p.id);
        Snapshot {
            version: 1,
            below,
            producers,
            crc32c: None,
        }
        .sealed()
    }

    /// The state a snapshot holds, less producers idle longer than the expiry.
    /// (See [`Snapshot::below`] for the offset it was taken at.)
    pub fn from_snapshot(snapshot: &Snapshot) -> ProducerState {
        let now_ms = super::segment::now_ms();
        let producers = snapshot
            .producers
            .iter()
            .filter_map(|p| {
                // A time ahead of the clock counts as now.
                let last_used_ms = p.last_used_ms.min(now_ms);
                if now_ms.saturating_sub(last_used_ms) >= EXPIRY_MS {
                    return None;
                }
                let batches = p
                    .batches
                    .iter()
                    .rev()
                    .take(CACHED_BATCHES)
                    .rev()
                    .map(|&(first_seq, last_seq, base_offset)| Cached {
                        first_seq,
                        last_seq,
                        base_offset,
                    })
                    .collect();
                Some((
                    p.id,
                    Entry {
                        epoch: p.epoch,
                        batches,
                        last_used_ms,
                        last_timestamp: -1,
                    },
                ))
            })
            .collect::<HashMap<_, _>>();
        let mut state = ProducerState {
            swept_len: producers.len(),
            producers,
            max_producers: MAX_PRODUCERS,
            last_sweep_ms: Some(now_ms),
            #[cfg(test)]
            sweeps: 0,
        };
        // Written with a larger cap (or none): the most recently used are kept.
        if state.producers.len() > state.max_producers {
            state.evict(now_ms);
        }
        state
    }

    /// An empty state that remembers at most `max` producers (tests).
    #[cfg(test)]
    fn with_max_producers(max: usize) -> ProducerState {
        ProducerState {
            max_producers: max,
            ..ProducerState::default()
        }
    }

    /// Producers known to this partition.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

/// Producer ids are handed out in blocks whose end is made durable before the
/// first id of a block is used, so an id is never given twice, across restarts
/// included.
const ID_BLOCK: i64 = 1000;

/// No producer id reservation ends past this: a stored one that does was
/// damaged (refused at open), and no block is reserved past it (the
/// allocator then answers [`Error::ProducerIdsExhausted`]), so what the
/// allocator stores always opens again.
pub(crate) const RESERVATION_LIMIT: i64 = i64::MAX - ID_BLOCK;

/// `producer-ids.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdFile {
    version: u32,
    /// Every id below this may have been handed out.
    reserved_below: i64,
    /// CRC32C of the fields above (see [`super::checked`]): a reservation
    /// lowered by damage handed ids out again, and a partition still knowing
    /// the old holder of one answered the new producer's first batch as a
    /// duplicate, acknowledged and never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<u32>,
}

super::checked::checked_by_field!(IdFile);

/// Hands out producer ids.
#[derive(Debug)]
pub struct ProducerIds {
    path: PathBuf,
    /// (next id, end of the durable reservation)
    state: Mutex<(i64, i64)>,
    /// Whether the file was missing at open (see
    /// [`ProducerIds::continue_past`]).
    missing: bool,
}

impl ProducerIds {
    /// File name, in the data directory.
    pub const FILE: &'static str = "producer-ids.json";

    /// Loads the reservation in `data_dir` (none yet: ids start at 0).
    ///
    /// # Errors
    /// I/O errors; [`Error::Corrupt`] when the file does not parse.
    pub fn open(data_dir: &Path) -> Result<ProducerIds> {
        let path = data_dir.join(Self::FILE);
        let mut missing = false;
        let below = match std::fs::read(&path) {
            Ok(raw) => {
                let f: IdFile = serde_json::from_slice(&raw).map_err(|e| {
                    Error::corrupt(&path, 0, format!("{} does not parse: {e}", Self::FILE))
                })?;
                if f.version != 1 {
                    return Err(Error::corrupt(
                        &path,
                        0,
                        format!("unknown version {} (this build reads version 1)", f.version),
                    ));
                }
                f.verify(&path, &raw)?;
                if f.reserved_below < 0 {
                    return Err(Error::corrupt(&path, 0, "negative producer id reservation"));
                }
                if f.reserved_below > RESERVATION_LIMIT {
                    return Err(Error::corrupt(
                        &path,
                        0,
                        format!(
                            "producer id reservation {} is past the last one the broker \
                             stores ({RESERVATION_LIMIT})",
                            f.reserved_below
                        ),
                    ));
                }
                f.reserved_below
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing = true;
                0
            }
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        Ok(ProducerIds {
            path,
            state: Mutex::new((below, below)),
            missing,
        })
    }

    /// When the file was missing at open (removed, or the data directory
    /// restored without it: read as no id handed out yet), continues past
    /// the largest of `known`, the producer ids the partitions remember, that
    /// this allocator could have handed out (below [`RESERVATION_LIMIT`]).
    /// Handed out again, an id whose old holder a partition still knows had
    /// the new producer's first batch answered as the old one's retry,
    /// acknowledged and never stored, or refused out of order.
    ///
    /// A file read is trusted as it is: clients may put any producer id in
    /// their batches, and one near `i64::MAX` taken for a reservation would
    /// leave no id to hand out.
    pub fn continue_past(&self, known: impl Iterator<Item = i64>) {
        if !self.missing {
            return;
        }
        let Some(known) = known.filter(|&id| id < RESERVATION_LIMIT).max() else {
            return;
        };
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known < st.1 {
            return;
        }
        tracing::warn!(
            path = %self.path.display(),
            reserved_below = st.1,
            known_producer = known,
            "the producer id reservation is missing (its file removed, or the data directory restored without it) and partitions know producers: ids continue past them"
        );
        let next = known.saturating_add(1);
        *st = (next, next);
    }

    /// A producer id never handed out before (blocking: may write and fsync).
    ///
    /// # Errors
    /// I/O errors from making a new block durable;
    /// [`Error::ProducerIdsExhausted`] once the next block would end past
    /// [`RESERVATION_LIMIT`] (nothing is stored then).
    pub fn allocate(&self) -> Result<i64> {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.0 >= st.1 {
            let end =
                st.1.checked_add(ID_BLOCK)
                    .filter(|&end| end <= RESERVATION_LIMIT)
                    .ok_or_else(|| Error::ProducerIdsExhausted {
                        path: self.path.clone(),
                        reserved_below: st.1,
                        block: ID_BLOCK,
                    })?;
            let json = serde_json::to_vec(
                &IdFile {
                    version: 1,
                    reserved_below: end,
                    crc32c: None,
                }
                .sealed(),
            )
            .map_err(|e| Error::corrupt(&self.path, 0, e.to_string()))?;
            crate::wal::files::write_atomic(&self.path, &json)?;
            st.1 = end;
        }
        let id = st.0;
        // Below the reservation's end, an i64: no overflow.
        st.0 = id + 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::{tests::make_producer_batch, validate_all};

    fn batch(pid: i64, epoch: i16, seq: i32, records: usize, base: i64) -> Vec<BatchInfo> {
        let values: Vec<&[u8]> = (0..records).map(|_| &b"v"[..]).collect();
        let mut infos = validate_all(&make_producer_batch(0, &values, pid, epoch, seq)).unwrap();
        infos[0].base_offset = base;
        infos
    }

    /// A reservation lowered by damage handed ids out again; the file
    /// carries a checksum now, and one it does not match is refused. A file
    /// without one (an older build's) loads unchecked.
    #[test]
    fn a_damaged_producer_id_reservation_is_refused_by_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ProducerIds::open(dir.path()).unwrap().allocate().unwrap(),
            0
        );
        let path = dir.path().join(ProducerIds::FILE);
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(v["crc32c"].is_u64(), "{v}");
        v["reserved_below"] = 0.into();
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = ProducerIds::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains(ProducerIds::FILE),
            "{e}"
        );
        v.as_object_mut().unwrap().remove("crc32c");
        v["reserved_below"] = 2000.into();
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            ProducerIds::open(dir.path()).unwrap().allocate().unwrap(),
            2000
        );
    }

    #[test]
    fn described_producers_carry_their_newest_batch_and_its_timestamp() {
        let mut st = ProducerState::default();
        let mut b = batch(9, 1, 0, 3, 0);
        b[0].max_timestamp = 1_600_000_000_123;
        st.record(&b);
        st.record(&batch(4, 0, 0, 1, 3));
        let mut b = batch(9, 1, 3, 2, 4);
        b[0].max_timestamp = 1_600_000_000_456;
        st.record(&b);
        let described = st.describe();
        assert_eq!(described.len(), 2);
        assert_eq!(described[1], (9, 1, 4, 1_600_000_000_456));
        // Restored from a snapshot, which keeps no timestamps: when last seen.
        let restored = ProducerState::from_snapshot(&st.snapshot_below(10)).describe();
        let now = crate::storage::segment::now_ms();
        assert_eq!((restored[1].0, restored[1].1, restored[1].2), (9, 1, 4));
        assert!(
            (now - restored[1].3).abs() < 60_000,
            "{restored:?} at {now}"
        );
    }

    #[test]
    fn a_new_producer_is_recorded_in_amortised_constant_time() {
        // Each unknown producer swept the whole map: 200,000 new ids made
        // 200,000 sweeps, 2 * 10^10 entry visits. (Uncapped here: the cap's
        // evictions are tested apart.)
        let mut st = ProducerState::with_max_producers(usize::MAX);
        let template = batch(0, 0, 0, 1, 0);
        let n = 200_000;
        let t0 = crate::storage::segment::now_ms();
        let at = |st: &mut ProducerState, id: i64, now_ms: i64| {
            let mut b = template.clone();
            b[0].producer_id = id;
            b[0].base_offset = id;
            st.record_at(&b, now_ms, None);
        };
        // At most one sweep per doubling of the map (and one per minute).
        let bound = 2 + (n as f64).log2() as usize;
        for id in 0..n {
            at(&mut st, id, t0);
            assert!(
                st.sweeps <= bound,
                "{} sweeps after {} new producers",
                st.sweeps,
                id + 1
            );
        }
        assert_eq!(st.len(), n as usize);
        // Known producers never sweep.
        let swept = st.sweeps;
        for id in 0..1000 {
            at(&mut st, id, t0 + 3_600_000);
        }
        assert_eq!(st.sweeps, swept);

        // A day later, the first new producer sweeps (a minute has passed):
        // everyone idle since is dropped, the 1,000 used an hour in are kept.
        let later = t0 + EXPIRY_MS + 60_000;
        at(&mut st, n, later);
        assert_eq!(st.sweeps, swept + 1);
        assert_eq!(st.len(), 1001);
        // A producer idle past the expiry and not swept yet (the last sweep was
        // 20 s before) is unknown, and starts afresh when it comes back.
        let mut st = ProducerState::default();
        st.record_at(&batch(7, 0, 0, 3, 0), t0, None);
        let t1 = t0 + EXPIRY_MS - 10_000;
        st.record_at(&batch(8, 0, 0, 1, 3), t1, None);
        let t2 = t0 + EXPIRY_MS + 10_000;
        assert_eq!(
            st.check_at(&batch(7, 0, 0, 3, -1), t1),
            Ok(Verdict::Duplicate(0))
        );
        assert_eq!(st.check_at(&batch(7, 0, 0, 3, -1), t2), Ok(Verdict::Append));
        assert_eq!(st.check_at(&batch(7, 0, 9, 1, -1), t2), Ok(Verdict::Append));
        st.record_at(&batch(7, 0, 0, 3, 5), t2, None);
        assert_eq!(st.len(), 2, "not swept");
        assert_eq!(
            st.check_at(&batch(7, 0, 0, 3, -1), t2),
            Ok(Verdict::Duplicate(5)),
            "started afresh when it came back"
        );
    }

    #[test]
    fn a_partition_remembers_at_most_max_producers_evicting_the_least_recently_used() {
        let t0 = crate::storage::segment::now_ms();
        let at = |st: &mut ProducerState, id: i64, now_ms: i64| {
            st.record_at(&batch(id, 0, 0, 1, id), now_ms, None);
        };
        // Ten producers, used a second apart; then 0 again.
        let mut st = ProducerState::with_max_producers(10);
        for id in 0..10 {
            at(&mut st, id, t0 + id * 1000);
        }
        st.record_at(&batch(0, 0, 1, 1, 10), t0 + 10_000, None);
        assert_eq!(st.len(), 10);
        // An eleventh evicts the least recently used: 1, not 0.
        at(&mut st, 10, t0 + 11_000);
        assert_eq!(st.len(), 10);
        let now = t0 + 12_000;
        assert_eq!(
            st.check_at(&batch(0, 0, 1, 1, -1), now),
            Ok(Verdict::Duplicate(10))
        );
        assert!(st.check_at(&batch(2, 0, 0, 1, -1), now).is_ok());
        assert!(
            st.check_at(&batch(2, 0, 5, 1, -1), now).is_err(),
            "2 is still known"
        );
        // 1 is unknown: its retry is new, and any sequence starts it.
        assert_eq!(
            st.check_at(&batch(1, 0, 0, 1, -1), now),
            Ok(Verdict::Append)
        );
        assert_eq!(
            st.check_at(&batch(1, 0, 7, 1, -1), now),
            Ok(Verdict::Append)
        );

        // The cap as shipped: a client minting producer ids never grows the map
        // past it, and evictions stay amortised O(1).
        let mut st = ProducerState::default();
        let n = (MAX_PRODUCERS as i64) * 5 / 2;
        for id in 0..n {
            at(&mut st, id, t0);
            assert!(st.len() <= MAX_PRODUCERS, "{} producers", st.len());
        }
        assert!(st.len() > MAX_PRODUCERS * 8 / 10);
        // One eviction per tenth of the cap of new producers, and the sweeps
        // by size before the map first filled.
        let bound =
            2 + (MAX_PRODUCERS as f64).log2() as usize + (n as usize / (MAX_PRODUCERS / 10));
        assert!(st.sweeps <= bound, "{} sweeps", st.sweeps);
        // The newest are the ones kept.
        assert!(st.check_at(&batch(n - 1, 0, 0, 1, -1), t0).is_ok());
        assert_eq!(
            st.check_at(&batch(n - 1, 0, 5, 1, -1), t0),
            Err(SequenceError::OutOfOrder {
                expected: 1,
                got: 5
            })
        );

        // A snapshot holding more (written with a larger cap) keeps the most
        // recently used.
        let mut big = ProducerState::with_max_producers(usize::MAX);
        let now = crate::storage::segment::now_ms();
        for id in 0..(MAX_PRODUCERS as i64 + 10) {
            at(&mut big, id, now - 1_000_000 + id);
        }
        let restored = ProducerState::from_snapshot(&big.snapshot_below(i64::MAX));
        assert!(restored.len() <= MAX_PRODUCERS);
        let last = MAX_PRODUCERS as i64 + 9;
        assert!(restored.producers.contains_key(&last));
        assert!(!restored.producers.contains_key(&0));
    }

    #[test]
    fn batches_read_back_at_start_up_age_their_producers_by_their_timestamps() {
        let now = crate::storage::segment::now_ms();
        let hour = 3_600_000;
        let at = |pid: i64, base: i64, ts: i64| {
            let mut b = batch(pid, 0, 0, 1, base);
            b[0].max_timestamp = ts;
            b
        };
        // Stored long ago: the timestamps decide.
        let long_ago = now - 30 * hour;
        let mut st = ProducerState::default();
        st.recover(&at(1, 0, now - 23 * hour), long_ago);
        st.recover(&at(2, 1, now - 25 * hour), long_ago);
        st.recover(&at(3, 2, -1), -1);
        st.recover(&at(4, 3, now + hour), long_ago);
        let ids = |st: &ProducerState| st.describe().iter().map(|d| d.0).collect::<Vec<_>>();
        // 2 was idle past the expiry when its batch was written.
        assert_eq!(ids(&st), vec![1, 3, 4]);
        assert_eq!(st.producers[&1].last_used_ms, now - 23 * hour);
        // Neither a timestamp nor a time stored by, or a timestamp ahead of the
        // clock: used now.
        assert!(st.producers[&3].last_used_ms >= now);
        assert!(st.producers[&4].last_used_ms >= now);
        // Two hours on, 1 has expired (a day after its batch), 3 and 4 have not.
        assert_eq!(
            st.check_at(&batch(1, 0, 7, 1, -1), now + 2 * hour),
            Ok(Verdict::Append)
        );
        assert!(st.check_at(&batch(3, 0, 7, 1, -1), now + 2 * hour).is_err());
        // A newer batch of a producer read back ages it from that batch.
        st.recover(&at(1, 5, now - hour), long_ago);
        assert_eq!(st.producers[&1].last_used_ms, now - hour);
        // A snapshot keeps when the producer was used, not when it was read.
        let snap = st.snapshot_below(10);
        let restored = ProducerState::from_snapshot(&snap);
        assert_eq!(restored.producers[&1].last_used_ms, now - hour);
        // Batches stored live are used now, whatever their timestamps.
        st.record(&at(5, 6, now - 25 * hour));
        assert_eq!(ids(&st), vec![1, 3, 4, 5]);
    }

    #[test]
    fn a_batch_read_back_dates_its_producer_no_earlier_than_it_was_stored() {
        let now = crate::storage::segment::now_ms();
        let hour = 3_600_000;
        let at = |pid: i64, base: i64, ts: i64| {
            let mut b = batch(pid, 0, 0, 1, base);
            b[0].max_timestamp = ts;
            b
        };
        let mut st = ProducerState::default();
        // Timestamps two days old (a mirror keeping its source's), stored a
        // minute ago: known, idle for a minute.
        st.recover(&at(1, 0, now - 48 * hour), now - 60_000);
        // Without timestamps: from when it was stored.
        st.recover(&at(2, 1, -1), now - 2 * hour);
        // Stored more than a day ago, whatever its timestamp says: forgotten.
        st.recover(&at(3, 2, now - 48 * hour), now - 25 * hour);
        st.recover(&at(4, 3, -1), now - 25 * hour);
        let ids: Vec<i64> = st.describe().iter().map(|d| d.0).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(st.producers[&1].last_used_ms, now - 60_000);
        assert_eq!(st.producers[&2].last_used_ms, now - 2 * hour);
        assert_eq!(
            st.check(&batch(1, 0, 0, 1, -1)),
            Ok(Verdict::Duplicate(0)),
            "its retry is recognised"
        );
        // A time stored by that is ahead of the clock counts as now.
        st.recover(&at(5, 4, now - 48 * hour), now + hour);
        assert!(st.producers[&5].last_used_ms <= crate::storage::segment::now_ms());
    }

    #[test]
    fn a_snapshot_keeps_what_lies_below_its_offset_and_drops_expired_producers() {
        let mut st = ProducerState::default();
        for (seq, base) in [(0, 0), (1, 1), (2, 10), (3, 11)] {
            st.record(&batch(7, 2, seq, 1, base));
        }
        st.record(&batch(8, 0, 0, 1, 12));
        let snap = st.snapshot_below(10);
        assert_eq!(snap.below(), 10);
        let json = serde_json::to_vec(&snap).unwrap();
        let back: Snapshot = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, snap);
        let restored = ProducerState::from_snapshot(&back);
        // Producer 8 has nothing below 10; producer 7 continues after sequence 1.
        assert_eq!(restored.len(), 1);
        assert_eq!(
            restored.check(&batch(7, 2, 1, 1, -1)),
            Ok(Verdict::Duplicate(1))
        );
        assert_eq!(restored.check(&batch(7, 2, 2, 1, -1)), Ok(Verdict::Append));
        assert!(
            restored.check(&batch(7, 1, 0, 1, -1)).is_err(),
            "epoch 2 is kept"
        );

        let mut old = snap;
        old.producers[0].last_used_ms -= (EXPIRY.as_millis() as i64) + 1;
        assert!(
            ProducerState::from_snapshot(&old).is_empty(),
            "expired while stored"
        );
    }

    #[test]
    fn duplicates_gaps_and_epochs_follow_kafka() {
        let mut s = ProducerState::default();
        // Unknown producer: any first sequence.
        let b = batch(7, 0, 5, 3, 0);
        assert_eq!(s.check(&b), Ok(Verdict::Append));
        s.record(&b);
        // Retried: answered with its offset.
        assert_eq!(s.check(&batch(7, 0, 5, 3, -1)), Ok(Verdict::Duplicate(0)));
        // Same first sequence, other length: not a duplicate, and out of order.
        assert_eq!(
            s.check(&batch(7, 0, 5, 2, -1)),
            Err(SequenceError::OutOfOrder {
                expected: 8,
                got: 5
            })
        );
        // A gap.
        assert_eq!(
            s.check(&batch(7, 0, 9, 1, -1)),
            Err(SequenceError::OutOfOrder {
                expected: 8,
                got: 9
            })
        );
        let mut base = 3;
        for k in 0..CACHED_BATCHES as i32 {
            let b = batch(7, 0, 8 + k * 2, 2, base);
            assert_eq!(s.check(&b), Ok(Verdict::Append));
            s.record(&b);
            base += 2;
        }
        // The first batch fell out of the cache: now just out of order.
        assert!(matches!(
            s.check(&batch(7, 0, 5, 3, -1)),
            Err(SequenceError::OutOfOrder { .. })
        ));
        // The oldest cached one is still a duplicate.
        assert_eq!(s.check(&batch(7, 0, 8, 2, -1)), Ok(Verdict::Duplicate(3)));
        // A newer epoch starts at 0; an older one is refused.
        assert_eq!(
            s.check(&batch(7, 1, 3, 1, -1)),
            Err(SequenceError::OutOfOrder {
                expected: 0,
                got: 3
            })
        );
        let b = batch(7, 1, 0, 1, 20);
        assert_eq!(s.check(&b), Ok(Verdict::Append));
        s.record(&b);
        assert_eq!(
            s.check(&batch(7, 0, 18, 1, -1)),
            Err(SequenceError::StaleEpoch {
                epoch: 0,
                current: 1
            })
        );
        // Non-idempotent batches are never judged; other producers are separate.
        assert_eq!(s.check(&batch(-1, -1, -1, 1, -1)), Ok(Verdict::Append));
        assert_eq!(s.check(&batch(8, 0, 0, 1, -1)), Ok(Verdict::Append));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut s = ProducerState::default();
        let b = batch(1, 0, i32::MAX - 1, 3, 0);
        assert_eq!(b[0].last_sequence(), 0);
        s.record(&b);
        assert_eq!(s.check(&batch(1, 0, 1, 1, -1)), Ok(Verdict::Append));
        assert!(s.check(&batch(1, 0, 0, 1, -1)).is_err());
    }

    #[test]
    fn two_batches_of_one_payload_are_judged_in_order() {
        let s = ProducerState::default();
        let mut two = batch(3, 0, 0, 2, 0);
        two.extend(batch(3, 0, 2, 1, 2));
        assert_eq!(s.check(&two), Ok(Verdict::Append));
        let mut gap = batch(3, 0, 0, 2, 0);
        gap.extend(batch(3, 0, 3, 1, 2));
        assert_eq!(
            s.check(&gap),
            Err(SequenceError::OutOfOrder {
                expected: 2,
                got: 3
            })
        );
    }

    /// A reservation file of a version this build does not write is refused
    /// at open, not read as version 1 (a reservation read wrongly hands out
    /// producer ids twice).
    #[test]
    fn a_producer_id_file_of_an_unknown_version_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(ProducerIds::FILE);
        std::fs::write(&path, "{\"version\":2,\"reserved_below\":10}").unwrap();
        let e = ProducerIds::open(tmp.path()).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("unknown version 2")),
            "{e:?}"
        );
        std::fs::write(&path, "{\"version\":1,\"reserved_below\":10}").unwrap();
        assert!(ProducerIds::open(tmp.path()).is_ok());
    }

    /// A damaged `producer-ids.json` whose reservation lay near i64::MAX
    /// made the allocator's sums wrap (release builds): negative producer ids
    /// were handed out, and a negative reservation stored that the next start
    /// refused. Such a file is refused at open, naming it, and an allocation
    /// that would pass i64::MAX is refused, storing nothing.
    #[test]
    fn a_producer_id_reservation_at_the_end_of_the_id_space_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(ProducerIds::FILE);
        let store = |below: i64| {
            std::fs::write(
                &path,
                format!("{{\"version\":1,\"reserved_below\":{below}}}"),
            )
            .unwrap();
        };
        for below in [i64::MAX, i64::MAX - 5, RESERVATION_LIMIT + 1] {
            store(below);
            let e = ProducerIds::open(tmp.path()).unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
            let e = e.to_string();
            assert!(
                e.contains(ProducerIds::FILE) && e.contains(&below.to_string()),
                "{e}"
            );
        }
        // The last whole block is handed out, then nothing more.
        let last = RESERVATION_LIMIT - ID_BLOCK;
        store(last);
        let ids = ProducerIds::open(tmp.path()).unwrap();
        let handed: Vec<i64> = (0..ID_BLOCK).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(handed.first(), Some(&last));
        assert_eq!(handed.last(), Some(&(RESERVATION_LIMIT - 1)));
        let stored = std::fs::read(&path).unwrap();
        for _ in 0..2 {
            let e = ids.allocate().unwrap_err();
            assert!(
                matches!(e, Error::ProducerIdsExhausted { reserved_below, .. } if reserved_below == RESERVATION_LIMIT),
                "{e}"
            );
            assert!(e.to_string().contains(ProducerIds::FILE), "{e}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), stored, "nothing stored");
        drop(ids);
        // What it stored opens again (and hands out nothing more); so does
        // a reservation a block short of it, which cannot fit another whole
        // block.
        for below in [RESERVATION_LIMIT, RESERVATION_LIMIT - 5] {
            store(below);
            let ids = ProducerIds::open(tmp.path()).unwrap();
            assert!(matches!(
                ids.allocate(),
                Err(Error::ProducerIdsExhausted { .. })
            ));
        }
    }

    #[test]
    fn producer_ids_are_never_reused_across_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(tmp.path()).unwrap();
        let first: Vec<i64> = (0..3).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(first, vec![0, 1, 2]);
        drop(ids);
        let ids = ProducerIds::open(tmp.path()).unwrap();
        let next = ids.allocate().unwrap();
        assert!(
            next >= ID_BLOCK,
            "a restart starts past the reserved block: {next}"
        );
        std::fs::write(tmp.path().join(ProducerIds::FILE), b"{").unwrap();
        assert!(ProducerIds::open(tmp.path())
            .unwrap_err()
            .to_string()
            .contains(ProducerIds::FILE));
    }
}

/// Idempotent produces through [`super::TopicManager`]'s pipeline, across restarts.
#[cfg(test)]
pub(crate) mod pipeline_tests {
    use std::time::Duration;

    use crate::{
        config::Config,
        storage::{
            batch::{self, tests::make_producer_batch},
            ProduceError, TopicManager,
        },
        wal::SyncMode,
    };

    /// The runtime the pipeline tests submit on (one thread).
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn config(dir: &std::path::Path) -> Config {
        let mut c = Config::default();
        c.storage.data_dir = dir.to_path_buf();
        c.wal.engine.max_file_size = 1 << 20;
        c.wal.engine.sync_mode = SyncMode::EveryWrite;
        c
    }

    /// Produces `b` to partition 0 of topic `t` through the pipeline.
    pub(crate) fn produce(
        rt: &tokio::runtime::Runtime,
        m: &TopicManager,
        b: &[u8],
    ) -> Result<i64, ProduceError> {
        rt.block_on(async {
            m.submit("t", 0, b, Duration::from_secs(5))
                .await?
                .await
                .unwrap()
        })
    }

    /// `records` one-byte records from producer 5, first sequence `seq`,
    /// timestamped now.
    fn idem(epoch: i16, seq: i32, records: usize) -> Vec<u8> {
        let values: Vec<&[u8]> = (0..records).map(|_| &b"r"[..]).collect();
        batch::tests::with_timestamp(
            make_producer_batch(0, &values, 5, epoch, seq),
            crate::storage::segment::now_ms(),
        )
    }

    #[test]
    fn a_producer_whose_last_batch_is_behind_a_segment_roll_is_known_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let mut c = config(tmp.path());
        c.storage.segment_bytes = 4096;
        let big = vec![7u8; 3000];
        let retried = make_producer_batch(0, &[&big], 5, 0, 0);
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &retried), Ok(0));
        // Another client's batch rolls the partition to a new segment.
        assert_eq!(
            produce(&rt, &m, &batch::tests::make_batch(0, &[&big])),
            Ok(1)
        );
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c).unwrap();
        assert_eq!(
            produce(&rt, &m, &retried),
            Ok(0),
            "a retry, not a new batch"
        );
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 2);
        m.shutdown().unwrap();
    }

    #[test]
    fn a_restart_ages_producers_by_their_batches_timestamps() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let now = crate::storage::segment::now_ms();
        let hour = 3_600_000;
        // One record from producer `pid`, written `hours` ago.
        let old = |pid: i64, hours: i64| {
            batch::tests::with_timestamp(
                make_producer_batch(0, &[b"r"], pid, 0, 0),
                now - hours * hour,
            )
        };
        let ids = |m: &TopicManager| -> Vec<i64> {
            let p = m.partition("t", 0).unwrap();
            let described = p.producers().describe();
            described.iter().map(|d| d.0).collect()
        };
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &old(1, 25)), Ok(0));
        assert_eq!(produce(&rt, &m, &old(2, 23)), Ok(1));
        // Stored live: used now.
        assert_eq!(ids(&m), vec![1, 2]);
        let (segment, _) = m.partition("t", 0).unwrap().newest_segment().unwrap();
        m.shutdown().unwrap();
        drop(m);
        // The batches were stored 30 hours ago (the segment last written then),
        // so their timestamps decide.
        let stored =
            std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(now - 30 * hour).unwrap());
        std::fs::File::options()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_modified(stored)
            .unwrap();

        // The newest segment's scan: 1's batch is more than a day old.
        let m = TopicManager::new(config(tmp.path())).unwrap();
        assert_eq!(ids(&m), vec![2]);
        m.shutdown().unwrap();
        drop(m);

        // The WAL replay likewise (batches the segments lacked at a crash),
        // appended to the WAL 30 hours ago.
        let (wal, _) =
            crate::wal::Wal::open(tmp.path().join("wal"), config(tmp.path()).wal.engine).unwrap();
        for (pid, hours, base) in [(3, 25, 2), (4, 23, 3)] {
            let mut b = old(pid, hours);
            let infos = batch::validate_all(&b).unwrap();
            batch::assign_offsets(&mut b, &infos, base);
            wal.append_stamped("t", 0, bytes::Bytes::from(b), now - 30 * hour)
                .wait()
                .unwrap();
        }
        wal.close().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 4);
        assert_eq!(ids(&m), vec![2, 4]);
        m.shutdown().unwrap();
    }

    #[test]
    fn a_producer_writing_day_old_timestamps_is_known_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        // Records written two days ago by their producers' clocks (as a mirror
        // keeps its source's timestamps), each batch stored now.
        let two_days_ago = crate::storage::segment::now_ms() - 48 * 3_600_000;
        let old = |pid: i64| {
            batch::tests::with_timestamp(
                make_producer_batch(0, &[b"r", b"s"], pid, 0, 0),
                two_days_ago,
            )
        };
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &old(1)), Ok(0));
        m.shutdown().unwrap();
        drop(m);

        // Clean restart: the newest segment's scan finds the batch.
        let m = TopicManager::new(config(tmp.path())).unwrap();
        assert_eq!(produce(&rt, &m, &old(1)), Ok(0), "a retry, not a new batch");
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 2);
        m.shutdown().unwrap();
        drop(m);

        // The batch only in the WAL (as after a kill before the segment had
        // it): the replay stores it again.
        let mut b = old(2);
        let infos = batch::validate_all(&b).unwrap();
        batch::assign_offsets(&mut b, &infos, 2);
        let (wal, _) =
            crate::wal::Wal::open(tmp.path().join("wal"), config(tmp.path()).wal.engine).unwrap();
        wal.append("t", 0, bytes::Bytes::from(b)).wait().unwrap();
        wal.close().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 4);
        assert_eq!(produce(&rt, &m, &old(2)), Ok(2), "a retry, not a new batch");
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 4);
        m.shutdown().unwrap();
    }

    #[test]
    fn producer_snapshots_below_the_recovery_point_are_deleted_by_a_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let mut c = config(tmp.path());
        c.storage.segment_bytes = 4096;
        let pdir = tmp.path().join("topics").join("t").join("0");
        let snapshots = || -> (usize, u64) {
            std::fs::read_dir(&pdir)
                .unwrap()
                .map(Result::unwrap)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".producers"))
                .fold((0, 0), |(n, bytes), e| {
                    (n + 1, bytes + e.metadata().unwrap().len())
                })
        };
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        // 60 producers, one 3000-byte batch each: a segment each, and each
        // roll's snapshot holds every producer before it.
        let big = vec![7u8; 3000];
        let n = 60;
        for pid in 0..n {
            let b = batch::tests::with_timestamp(
                make_producer_batch(0, &[&big], 100 + pid, 0, 0),
                crate::storage::segment::now_ms(),
            );
            assert_eq!(produce(&rt, &m, &b), Ok(pid));
        }
        let (count, _) = snapshots();
        assert_eq!(count, n as usize - 1, "one snapshot per roll");
        m.checkpoint().unwrap();
        // Only the newest segment's is read at a start now that the recovery
        // point is past every other segment.
        let (count, bytes) = snapshots();
        assert_eq!(count, 1);
        assert!(bytes < 16 * 1024, "{bytes} bytes of snapshots");
        m.shutdown().unwrap();
        drop(m);

        // The newest snapshot is what a restart needs: a producer whose batch
        // is two segments back is still known.
        let m = TopicManager::new(c.clone()).unwrap();
        let retry = batch::tests::with_timestamp(
            make_producer_batch(0, &[&big], 100 + n - 3, 0, 0),
            crate::storage::segment::now_ms(),
        );
        assert_eq!(produce(&rt, &m, &retry), Ok(n - 3));
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), n);
        m.shutdown().unwrap();
        drop(m);

        // A snapshot whose segment is gone (a removal a crash undid) is
        // removed at open; one of an older segment by the next checkpoint.
        std::fs::write(
            pdir.join(crate::storage::segment::producers_name(10_000)),
            b"{}",
        )
        .unwrap();
        let older = pdir.join(crate::storage::segment::producers_name(5));
        std::fs::write(&older, b"{}").unwrap();
        let m = TopicManager::new(c).unwrap();
        assert!(!pdir
            .join(crate::storage::segment::producers_name(10_000))
            .exists());
        m.checkpoint().unwrap();
        assert!(!older.exists());
        assert_eq!(snapshots().0, 1);
        m.shutdown().unwrap();
    }

    /// `producer-ids.json` gone (removed by hand, a data directory restored
    /// without it) read as no id handed out: ids started again at 0, and a
    /// new client handed producer 0 had its first batch answered as the old
    /// producer 0's retry, acknowledged and never stored. A start now
    /// continues past every producer a partition remembers.
    #[test]
    fn a_lost_producer_id_reservation_continues_past_the_producers_partitions_know() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        let old = m.allocate_producer_id().unwrap();
        assert_eq!(old, 0);
        assert_eq!(
            produce(&rt, &m, &make_producer_batch(0, &[b"old"], old, 0, 0)),
            Ok(0)
        );
        // One from past the first block the reservation covered.
        let high = make_producer_batch(0, &[b"high"], 1500, 0, 0);
        assert_eq!(produce(&rt, &m, &high), Ok(1));
        // And one no allocator hands out: a client may put any id in its
        // batch. Continued past, it would leave no id to hand out.
        let forged = make_producer_batch(0, &[b"forged"], i64::MAX - 10, 0, 0);
        assert_eq!(produce(&rt, &m, &forged), Ok(2));
        m.shutdown().unwrap();
        drop(m);
        // A file read is trusted as it is: ids go on from its reservation
        // (the first block, 0 to 999, may have been handed out).
        let m = TopicManager::new(c.clone()).unwrap();
        assert_eq!(m.allocate_producer_id().unwrap(), 1000);
        m.shutdown().unwrap();
        drop(m);
        std::fs::remove_file(tmp.path().join(super::ProducerIds::FILE)).unwrap();
        let m = TopicManager::new(c.clone()).unwrap();
        let new = m.allocate_producer_id().unwrap();
        assert!(new > 1500 && new < 3000, "producer {new}");
        assert_eq!(
            produce(&rt, &m, &make_producer_batch(0, &[b"new"], new, 0, 0)),
            Ok(3)
        );
        // And the reservation is stored from there.
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c).unwrap();
        assert!(m.allocate_producer_id().unwrap() > new);
        m.shutdown().unwrap();
    }

    #[test]
    fn retries_are_answered_with_the_first_offset_and_gaps_refused_across_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &idem(0, 0, 3)), Ok(0));
        assert_eq!(produce(&rt, &m, &idem(0, 3, 2)), Ok(3));
        // Retried batches: their first offsets, nothing stored.
        assert_eq!(produce(&rt, &m, &idem(0, 0, 3)), Ok(0));
        assert_eq!(produce(&rt, &m, &idem(0, 3, 2)), Ok(3));
        assert!(matches!(
            produce(&rt, &m, &idem(0, 9, 1)),
            Err(ProduceError::OutOfOrderSequence(m)) if m.contains("expected sequence 5")
        ));
        // A producer that is not idempotent is never judged.
        let plain = batch::tests::make_batch(0, &[b"p"]);
        assert_eq!(produce(&rt, &m, &plain), Ok(5));
        assert_eq!(produce(&rt, &m, &plain), Ok(6));
        // Transactions are refused.
        let mut txn = idem(0, 5, 1);
        txn[22] |= 0x10;
        let crc = crc32c::crc32c(&txn[21..]);
        txn[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(produce(&rt, &m, &txn), Err(ProduceError::Transactional));
        // Control batches (transaction markers, transactional too) are no client's.
        let mut control = idem(0, 5, 1);
        control[22] |= 0x20;
        let crc = crc32c::crc32c(&control[21..]);
        control[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(produce(&rt, &m, &control), Err(ProduceError::ControlBatch));
        txn[22] |= 0x20;
        let crc = crc32c::crc32c(&txn[21..]);
        txn[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(produce(&rt, &m, &txn), Err(ProduceError::ControlBatch));
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 7);
        m.shutdown().unwrap();
        drop(m);

        // The state comes back from the newest segment's scan.
        let m = TopicManager::new(config(tmp.path())).unwrap();
        assert_eq!(produce(&rt, &m, &idem(0, 3, 2)), Ok(3));
        assert_eq!(produce(&rt, &m, &idem(0, 5, 1)), Ok(7));
        let id = m.allocate_producer_id().unwrap();
        m.shutdown().unwrap();
        drop(m);

        // And from what the WAL replay appends (as after a crash before the
        // segments had the batch).
        let mut next = idem(0, 6, 2);
        let infos = batch::validate_all(&next).unwrap();
        batch::assign_offsets(&mut next, &infos, 8);
        let (wal, _) =
            crate::wal::Wal::open(tmp.path().join("wal"), config(tmp.path()).wal.engine).unwrap();
        wal.append("t", 0, bytes::Bytes::from(next)).wait().unwrap();
        wal.close().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 10);
        assert_eq!(produce(&rt, &m, &idem(0, 6, 2)), Ok(8));
        // A new epoch starts at sequence 0; the old one is then fenced.
        assert_eq!(produce(&rt, &m, &idem(1, 0, 1)), Ok(10));
        assert!(matches!(
            produce(&rt, &m, &idem(0, 8, 1)),
            Err(ProduceError::InvalidProducerEpoch(_))
        ));
        assert!(
            m.allocate_producer_id().unwrap() > id,
            "producer ids are not reused"
        );
        m.shutdown().unwrap();
    }
}
