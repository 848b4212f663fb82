//! Kafka data on disk: topics, partitions, segments, committed offsets, and the
//! WAL-first produce pipeline.
//!
//! ```text
//! data/
//! ├── meta.json                    cluster id + node id, created once
//! ├── wal/                         the write-ahead log (see crate::wal)
//! ├── groups/<hex(group)>.json     committed offsets, replaced atomically
//! │       /members/<hex(group)>.json   group membership (see group_meta), replaced atomically
//! ├── topics/<topic>~<hex>-stray/  a topic directory without topic.json, set aside by a
//! │                                tolerant start (see [`TopicManager::new`])
//! ├── topics/<topic>/<p>~<hex>-stray/  a partition directory holding data that topic.json
//! │                                did not list, set aside by a growth (see
//! │                                [`TopicManager::add_partitions`])
//! └── topics/<topic>/topic.json    topic id, partition count, config overrides
//!                   /<partition>/<base>.log, <base>.index
//! ```
//!
//! Produce path: the request handler validates the batches and sends them to the
//! *submit* thread, which assigns offsets (rewriting each batch's base offset) and
//! appends the whole payload to the WAL, so WAL order equals offset order in every
//! partition. The *apply* thread takes the WAL completions in the same order, waits
//! for each (per sync mode), appends the batches to the segment (page cache), moves
//! the high watermark and answers the handler. A checkpoint thread periodically
//! `fdatasync`s the segments and then checkpoints the WAL at the last applied sequence.
//! No tokio worker ever blocks on this path.

pub mod batch;
pub(crate) mod checked;
pub mod checkpoint;
pub mod compaction;
pub mod delete_horizon;
pub mod group_meta;
pub mod moment;
pub mod offsets;
pub mod partition;
pub mod producers;
pub mod recovery_points;
pub mod segment;
pub(crate) mod space_reserve;
/// The default of `--space-reserve-bytes` (see [`space_reserve`]).
pub const DEFAULT_SPACE_RESERVE_BYTES: u64 = space_reserve::RESERVE_BYTES;
pub mod time_index;
pub mod topic_config;
pub mod topic_map;
pub(crate) mod watchers;

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{BuildHasher, Hasher},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex, OnceLock, PoisonError, RwLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::wal::files::create_dir_durable;
pub use crate::wal::files::sync_dir;
use crate::{
    config::Config,
    error::{Error, Result},
    wal::{Completion, RecoveryMode, Wal, WalEntryType},
};
use batch::{BatchError, BatchInfo};
use checked::Checked;
pub use offsets::{Committed, OffsetStore, StoredGroup};
pub use partition::{DeleteRecordsError, Partition, ReadResult};
use producers::{ProducerIds, SequenceError, Verdict};
use recovery_points::RecoveryPoints;
pub use topic_config::{ConfigError, TopicConfig};
pub use topic_map::OverBudget;
use topic_map::{FileBudget, TopicMap};

/// The bytes an unprivileged process may still allocate on the file system
/// holding `dir`, when it can be asked (`statvfs`; `None` off Unix).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    space_reserve::free_bytes(dir)
}

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME: usize = 249;

/// Bytes a WAL entry needs besides a produce's records and its topic name.
pub const WAL_ENTRY_OVERHEAD: u64 = 64;

/// Most partitions a topic can have: what CreateTopics and CreatePartitions
/// accept, and what a start accepts from `topic.json`.
pub const MAX_PARTITIONS: i32 = 10_000;

/// The `version` of `topic.json` this broker writes and reads.
const TOPIC_FILE_VERSION: u32 = 1;

/// A topic and its partitions. A clone shares the partitions.
#[derive(Debug, Clone)]
pub struct Topic {
    /// Name.
    pub name: String,
    /// Stable id, created with the topic.
    pub id: uuid::Uuid,
    /// Partitions, by index.
    pub partitions: Vec<Arc<Partition>>,
    /// No WAL entry of this topic has a lower sequence: entries of an earlier
    /// topic of the same name all do. `None` when the topic was created with the
    /// WAL disabled (or before this was recorded); its segments are then never
    /// rebuilt from entries the checkpoint covers. A start lowers a floor
    /// above the WAL's next sequence to it, before anything is appended.
    pub wal_floor: Option<u64>,
    /// The topic's configuration overrides.
    pub configs: TopicConfig,
    /// Why `configs` may not survive a power loss: a change to them was
    /// renamed into place but its directory could not be fsynced. Produces
    /// to the topic are refused meanwhile (a record accepted under the new
    /// configs may break the old ones: a keyless record in a topic that was
    /// compacted), until a retry of the change or a growth stores the file
    /// durably, or a restart reads it as it is.
    pub configs_not_durable: Option<String>,
}

impl Topic {
    /// Applies the topic's segment limits (`segment.bytes`, `segment.ms`, or the
    /// broker's) to `partitions`.
    fn limit_segments(
        configs: &TopicConfig,
        broker: &crate::config::StorageConfig,
        partitions: &[Arc<Partition>],
    ) {
        let (bytes, ms) = (configs.segment_bytes(broker), configs.segment_ms(broker));
        for p in partitions {
            p.set_segment_bytes(bytes);
            p.set_segment_ms(ms);
        }
    }

    /// `topic.json` for this topic.
    fn file(&self) -> TopicFile {
        TopicFile {
            version: TOPIC_FILE_VERSION,
            id: self.id.to_string(),
            partitions: self.partitions.len() as i32,
            wal_floor: self.wal_floor,
            configs: self.configs.overrides().clone(),
            crc32c: None,
        }
        .sealed()
    }

    /// Writes `topic.json` in `dir` (atomic replace).
    fn store(&self, dir: &Path) -> Result<()> {
        match self.store_renamed(dir)? {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Writes `topic.json` in `dir` (atomic replace), telling a failure after
    /// the rename apart: `Ok(Some(e))` when the file holds this topic but its
    /// directory could not be fsynced, so that a power loss may bring back the
    /// file as it was (see [`crate::wal::files::write_atomic_renamed`]).
    ///
    /// # Errors
    /// A failure before the rename: the file is as it was.
    fn store_renamed(&self, dir: &Path) -> Result<Option<Error>> {
        let json = serde_json::to_vec_pretty(&self.file())
            .map_err(|e| Error::io("encode", dir.join("topic.json"), std::io::Error::other(e)))?;
        crate::wal::files::write_atomic_renamed(&dir.join("topic.json"), &json)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TopicFile {
    version: u32,
    id: String,
    partitions: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wal_floor: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    configs: BTreeMap<String, String>,
    /// CRC32C of the file's other fields ([`TopicFile::checksum`]): a flipped
    /// digit in `wal_floor` dropped the topic's WAL entries after the
    /// checkpoint as an earlier topic's, one in `retention.ms` deleted
    /// records, with nothing to tell. Absent in files written before it
    /// existed (loaded unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<u32>,
}

checked::checked_by_field!(TopicFile);

/// Identity of this broker, created once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerMeta {
    /// Cluster id reported in Metadata.
    pub cluster_id: String,
    /// This broker's node id.
    pub node_id: i32,
}

/// Why a produce failed (mapped to Kafka error codes by the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProduceError {
    /// No such topic or partition.
    UnknownTopicOrPartition,
    /// A batch failed validation.
    InvalidBatch(BatchError),
    /// The payload is larger than one WAL entry can hold, or a batch is larger
    /// than the topic's `max.message.bytes`; the message says which.
    TooLarge(String),
    /// A batch is larger than the topic's `segment.bytes` (Kafka's
    /// `RecordBatchTooLargeException`); the message says by how much.
    BatchTooLarge(String),
    /// The WAL or a segment failed; the message says how.
    Storage(String),
    /// The topic's configs were changed in a file that may not survive a
    /// power loss ([`Topic::configs_not_durable`]): refused before the write
    /// until a retry of the change stores it, which may come at any moment
    /// (answered as a storage error, which clients retry).
    ConfigsNotDurable(String),
    /// The disk is nearly full: the space reserve is not held for want of
    /// room, or held with less than its size free besides, and produces are
    /// refused until it is held with that much free
    /// ([`space_reserve::SpaceReserve::short`]; answered as a storage error,
    /// which clients retry).
    SpaceShort(String),
    /// Waiting for pipeline capacity, or for room to decompress the batch,
    /// took longer than the request timeout.
    Timeout,
    /// The broker is shutting down.
    ShuttingDown,
    /// The request's `acks` is not -1, 0 or 1.
    InvalidAcks,
    /// The request names the partition more than once.
    NamedTwice,
    /// Records the topic cannot take: ones without a key, produced to a
    /// compacted topic.
    InvalidRecord {
        /// What is wrong.
        message: String,
        /// Each such record's index within its batch (see
        /// [`batch::MAX_LISTED_FAULTS`]).
        records: Vec<i32>,
    },
    /// An idempotent producer's batch does not continue its sequence.
    OutOfOrderSequence(String),
    /// An idempotent producer's batch carries an epoch older than its last one.
    InvalidProducerEpoch(String),
    /// A transactional batch: transactions are not supported.
    Transactional,
    /// A control batch (a transaction marker), which only a broker writes.
    ControlBatch,
    /// A record timestamp too far ahead of the broker's clock, or too far
    /// behind it (the topic's `message.timestamp.after.max.ms` and
    /// `message.timestamp.before.max.ms`), or a batch a producer flagged
    /// LogAppendTime.
    InvalidTimestamp {
        /// What is wrong.
        message: String,
        /// The records refused, as [`ProduceError::InvalidRecord`] lists them
        /// (records without a key for a compacted topic too, as Kafka lists
        /// every record it refuses).
        records: Vec<i32>,
    },
}

/// How far ahead of the broker's clock a produced record's timestamp may be
/// unless the topic sets `message.timestamp.after.max.ms` (one hour, Kafka's
/// default `log.message.timestamp.after.max.ms` since 4.0).
pub const MAX_TIMESTAMP_AHEAD_MS: i64 = 3_600_000;

impl From<SequenceError> for ProduceError {
    fn from(e: SequenceError) -> Self {
        match e {
            SequenceError::StaleEpoch { .. } => ProduceError::InvalidProducerEpoch(e.to_string()),
            SequenceError::OutOfOrder { .. } => ProduceError::OutOfOrderSequence(e.to_string()),
        }
    }
}

/// Why a topic could not be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    /// The name is empty, too long, `.`/`..`, or has characters outside `[A-Za-z0-9._-]`.
    InvalidName,
    /// Partition count below 1 or above 10000.
    InvalidPartitions,
    /// A topic with this name exists.
    Exists,
    /// A topic of this name is still being deleted (after waiting
    /// [`CREATE_WAITS_FOR_DELETE`] for it); retriable.
    BeingDeleted,
    /// The name differs from that of the topic given only by `.` in place of
    /// `_` or the reverse: as Kafka, which names metrics after topics with
    /// `.` made `_`, the broker refuses it (see [`TopicManager::colliding_topic`]).
    /// On a data directory whose file system does not tell names apart by
    /// case, a name that differs only by case collides too.
    Collides(String),
    /// The topic to grow does not exist (or was deleted meanwhile).
    UnknownTopic,
    /// The new partitions' files would take descriptors the open-file limit
    /// leaves to storage for its WAL, checkpoints and segment rolls (see
    /// [`TopicManager::check_files`]); nothing was created.
    TooManyFiles(OverBudget),
    /// Creating files failed.
    Storage(String),
}

/// Why a topic's configuration could not be changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterError {
    /// No such topic (or it was deleted meanwhile).
    UnknownTopic,
    /// A key or value was refused.
    Invalid(ConfigError),
    /// The request itself is wrong (the message says how).
    InvalidRequest(String),
    /// Storing the change failed.
    Storage(String),
}

impl From<ConfigError> for AlterError {
    fn from(e: ConfigError) -> Self {
        AlterError::Invalid(e)
    }
}

/// Why a topic delete failed.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// The delete failed before the topic's directory moved away, and the
    /// topic is kept (opened again as a start would open it); or its task
    /// failed.
    #[error(transparent)]
    Failed(#[from] Error),
    /// The topic's directory moved to the trash, and the topic is gone from
    /// this run, but the directory fsync after the move failed: a power loss
    /// may bring the topic back. A delete of the topic again fsyncs the
    /// directory again, and succeeds once that does.
    #[error(
        "topic {topic} is deleted, but its deletion may not survive a power loss: {source}; \
         delete the topic again to make its deletion durable"
    )]
    NotDurable {
        /// The topic.
        topic: String,
        /// Its id.
        id: uuid::Uuid,
        /// The failed directory fsync.
        source: Box<Error>,
    },
}

/// A topic whose directory moved to the trash without the directory fsync
/// after the move succeeding (see [`DeleteError::NotDurable`]).
#[derive(Debug)]
struct UndurableDelete {
    name: String,
    id: uuid::Uuid,
    /// Where its directory went.
    trash: PathBuf,
    /// Whether the committed positions in it were dropped: until they are,
    /// its directory stays in the trash, which tells the next start that
    /// they are a deleted topic's.
    positions_dropped: bool,
}

/// A topic deleted from this run whose files are still in the trash because
/// the drop of its committed positions, or the removal of the files, failed:
/// both are tried again by each retention pass (see [`finish_deletes`]).
struct UnfinishedDelete {
    name: String,
    /// Where its directory went.
    trash: PathBuf,
    /// Whether its committed positions were dropped (its files stay until
    /// they are: see [`UndurableDelete::positions_dropped`]).
    positions_dropped: bool,
}

/// How long a create waits for a delete of the same name in progress to finish.
pub const CREATE_WAITS_FOR_DELETE: Duration = Duration::from_secs(30);

/// Bytes of produce payloads accepted but not yet applied, across all connections.
const MAX_INFLIGHT_BYTES: usize = 256 * 1024 * 1024;

/// Checks of compressed produced batches that may hold a thread at once.
/// Each runs in `block_in_place`, which holds its thread, and its wait for
/// the decompression budget may last the request's whole timeout (up to 300
/// s); the others wait for a place without one, in arrival order. (A large
/// uncompressed batch, also checked in `block_in_place`, waits for nothing
/// and takes no place.) Without the bound some 500
/// waiting took every thread tokio's blocking pool has, and the broker
/// answered no one (a Metadata took 50 s).
pub const BLOCKING_VALIDATIONS: usize = 16;

enum Job {
    Produce {
        partition: Arc<Partition>,
        data: Vec<u8>,
        infos: Vec<BatchInfo>,
        reply: oneshot::Sender<Result<i64, ProduceError>>,
        permit: OwnedSemaphorePermit,
    },
    Barrier(oneshot::Sender<()>),
    Stop,
}

enum Applied {
    Produce {
        partition: Arc<Partition>,
        data: Bytes,
        infos: Vec<BatchInfo>,
        base: i64,
        wal: Option<Completion>,
        reply: oneshot::Sender<Result<i64, ProduceError>>,
        _permit: OwnedSemaphorePermit,
    },
    /// A retried batch already stored at `base`: answered once everything before it
    /// in the pipeline (its original among them) is applied.
    Duplicate {
        base: i64,
        reply: oneshot::Sender<Result<i64, ProduceError>>,
        _permit: OwnedSemaphorePermit,
    },
    Barrier(oneshot::Sender<()>),
    Stop,
}

struct Shared {
    _lock: crate::wal::files::DirLock,
    inflight: Arc<Semaphore>,
    config: Config,
    topics_dir: PathBuf,
    topics: RwLock<TopicMap>,
    /// The partitions the open-file limit leaves room for.
    file_budget: FileBudget,
    /// Serialises creates, growths, config changes and the start and end of
    /// deletes; holds the names of the topics being deleted, which a create of
    /// the same name waits for (a delete moves the directory of the name away).
    create_lock: Mutex<BTreeSet<String>>,
    /// The turn of requests whose blocking work takes `create_lock` (see
    /// [`TopicManager::admin_turn`]).
    admin_turn: tokio::sync::Mutex<()>,
    /// Topics out of the map whose delete has not ended: a checkpoint syncs
    /// them too (see [`Shared::checkpoint_topics`]).
    deleting: Mutex<Vec<Arc<Topic>>>,
    /// Notified when a delete ends.
    delete_ended: Condvar,
    /// Topics whose delete failed before their directory moved and that could
    /// not be opened again (see [`TopicManager::restore_topic`]): out of the
    /// map until a restart, which opens them. Each checkpoint keeps their
    /// recovery points as the last one wrote them, so that the restart still
    /// judges their segments against them.
    unopened: Mutex<BTreeSet<String>>,
    /// Topics deleted from this run whose deletion a power loss may undo: the
    /// directory fsync after their move to the trash failed, and no delete of
    /// them again has fsynced it since.
    undurable_deletes: Mutex<Vec<UndurableDelete>>,
    /// Topics deleted from this run (durably) whose files are still in the
    /// trash; see [`UnfinishedDelete`].
    unfinished_deletes: Mutex<Vec<UnfinishedDelete>>,
    /// What the start found in the trash, kept because its drop of the
    /// committed positions in topics without a directory failed (or the
    /// removal of the files did): tried again by each retention pass (see
    /// [`finish_deletes`]).
    start_trash: Mutex<Vec<PathBuf>>,
    wal: Option<Wal>,
    jobs: mpsc::Sender<Job>,
    applied_seq: AtomicU64,
    checkpointed: Mutex<u64>,
    /// What replaying the WAL at the start did.
    replayed: ReplayStats,
    /// The recovery points last written (see [`recovery_points`]).
    points: Mutex<RecoveryPoints>,
    failed: OnceLock<String>,
    /// Set with `failed` when a segment write or sync failed: from then on no
    /// checkpoint is made (see [`fail_segments`]).
    segments_failed: OnceLock<String>,
    closing: AtomicBool,
    /// Counts the `delete.retention.ms` changes: a compaction round that saw
    /// one during a pass makes the partition's next pass judge its waiting
    /// tombstones again, as the change itself does (see
    /// [`checkpoint::compact`]).
    delete_retention_changes: AtomicU64,
    /// Counts the changes of any topic's configs, each once the new configs
    /// are in the map: a compaction pass stops when it moves, and each pass
    /// and each partition's retention read their topic's configs afresh (see
    /// [`checkpoint::compact`], [`checkpoint::retention`]).
    config_changes: AtomicU64,
    /// The read handles on every partition's sealed segments.
    segment_files: Arc<segment::SegmentFiles>,
    meta: BrokerMeta,
    offsets: OffsetStore,
    producer_ids: ProducerIds,
    /// Space kept back for the writes that free space (see [`space_reserve`]).
    reserve: space_reserve::SpaceReserve,
    /// How long the next topic delete waits before it moves the topic's
    /// directory away (tests: to let other work meet a delete in progress);
    /// that delete takes it, so that later ones do not wait (and a test sees
    /// the first one is waiting once it reads zero).
    #[cfg(test)]
    delete_pause: Mutex<Duration>,
    /// How long the next produce's validation takes, at least (tests: a wait
    /// for the decompression budget).
    #[cfg(test)]
    validate_pause: Mutex<Duration>,
    /// How long a topic delete waits before it syncs the topic's segments.
    #[cfg(test)]
    delete_sync_pause: Mutex<Duration>,
    /// Storage fails once the next delete has taken its topic out of the map
    /// (before its barrier): a WAL append failing then (tests).
    #[cfg(test)]
    fail_after_take_for_delete: AtomicBool,
    /// Places for produce validations that hold a thread
    /// ([`BLOCKING_VALIDATIONS`]).
    blocking_validations: tokio::sync::Semaphore,
    /// How long each validation in a place takes at least, and how many are
    /// in one now and at most (tests).
    #[cfg(test)]
    blocking_validation: (
        Mutex<Duration>,
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    ),
    /// The storage thread that panics at its next job (tests of a storage
    /// thread's panic; see [`Shared::panic_if_asked`]).
    #[cfg(test)]
    panic_at_next_job: Mutex<Option<&'static str>>,
    /// Taken by the next compaction round before its first partition's pass:
    /// it signals the first and waits for the second (tests of a change
    /// made during a round).
    #[cfg(test)]
    compaction_pause: Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
    /// How long a retention pass sleeps after each partition (tests of a
    /// long pass).
    #[cfg(test)]
    retention_partition_pause: Mutex<Duration>,
    /// Whether the start was made again after one failed for want of space
    /// ([`TopicManager::new`]): the first retention pass runs at once.
    started_out_of_space: bool,
}

impl Shared {
    /// Counts a produce validation in a place that holds a thread, until the
    /// returned guard drops, after the pause tests set (tests).
    #[cfg(test)]
    fn in_blocking_validation(&self) -> impl Drop + '_ {
        struct Inside<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Inside<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let (pause, now, most) = &self.blocking_validation;
        let inside = now.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(inside, Ordering::SeqCst);
        std::thread::sleep(*pause.lock().unwrap());
        Inside(now)
    }

    /// Topic `t` as the map holds it now (its configs as last changed), if
    /// it is still there, with the same id.
    fn current(&self, t: &Topic) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&t.name)
            .filter(|now| now.id == t.id)
            .cloned()
    }

    /// A snapshot of every topic.
    fn topic_list(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// What a checkpoint syncs and records: every topic in the map, and every
    /// topic whose delete is in progress. Until its directory has moved, a
    /// power loss brings a topic being deleted back, and the checkpoint moves
    /// the WAL's checkpoint past its entries: unsynced, it would come back
    /// short, with nothing left to rebuild it from.
    fn checkpoint_topics(&self) -> Vec<Arc<Topic>> {
        let mut topics = self.topic_list();
        for t in self
            .deleting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            // By name: a delete that failed put the topic back, reopened.
            if !topics.iter().any(|m| m.name == t.name) {
                topics.push(Arc::clone(t));
            }
        }
        topics
    }
}

/// All topics of the broker, the produce pipeline and recovery.
/// Cheap to clone; [`TopicManager::shutdown`] stops it.
#[derive(Clone)]
pub struct TopicManager {
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Stops the checkpoint and log cleaner threads (one message each).
    stop_threads: crossbeam_channel::Sender<()>,
}

impl std::fmt::Debug for TopicManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicManager")
            .field("data_dir", &self.shared.config.storage.data_dir)
            .finish_non_exhaustive()
    }
}

/// 128 random-enough bits (OS-seeded hasher over time, pid and a counter) for ids.
pub fn random_id() -> u128 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = 0u128;
    for half in 0..2u64 {
        // RandomState is seeded from the OS per process.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u64(n);
        h.write_u64(half);
        h.write_u32(std::process::id());
        out = (out << 64) | u128::from(h.finish());
    }
    out
}

/// The length from which a topic's name is not kept whole in its directory's
/// name in the trash (followed by `-` and up to 16 hex digits, within a file
/// name's 255 bytes; see [`trash_key`]), and the most of it a directory set
/// aside keeps.
const TRASH_NAME_PREFIX: usize = 200;

/// The bytes of a longer name that [`trash_key`] keeps before its digest.
const TRASH_KEY_PREFIX: usize = 180;

/// What a delete's directory in the trash is named by (before `-` and its
/// random hex): the topic's name when it has fewer than [`TRASH_NAME_PREFIX`]
/// bytes, else its first [`TRASH_KEY_PREFIX`] bytes, `=` (no topic name
/// holds one) and a 64-bit digest of the whole name, so that two topics
/// sharing a long prefix are told apart (a start takes the entries and
/// positions of a topic in the trash for a deleted topic's).
fn trash_key(name: &str) -> std::borrow::Cow<'_, str> {
    // A name of exactly 200 bytes is keyed too: whole, it is what a build
    // before keys left for every longer name sharing it, which `in_trash`
    // still matches.
    if name.len() < TRASH_NAME_PREFIX {
        return std::borrow::Cow::Borrowed(name);
    }
    // FNV-1a: fixed across builds and platforms, as a name on disk must be.
    let digest = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // Topic names are ASCII (any cut is whole characters); one that is not,
    // never a topic's, is cut at a boundary.
    let mut cut = TRASH_KEY_PREFIX;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!("{}={digest:016x}", &name[..cut]))
}

/// Whether `name` is a legal Kafka topic name.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        && !(cfg!(windows) && windows_cannot_name(name))
}

/// Whether Windows cannot give a directory this (otherwise legal) name as it
/// is: a trailing `.` is dropped from a path (`orders.` would be stored as
/// `orders`, and come back under that name at the next start), and `CON`,
/// `NUL`, `COM1` and the other device names (in any case, with any extension)
/// name devices, not files. Such topics are refused there.
fn windows_cannot_name(name: &str) -> bool {
    const DEVICES: [&str; 4] = ["con", "prn", "aux", "nul"];
    let stem = name.split('.').next().unwrap_or(name).to_ascii_lowercase();
    let numbered = |prefix: &str| {
        stem.strip_prefix(prefix)
            .is_some_and(|n| n.len() == 1 && n.as_bytes()[0].is_ascii_digit())
    };
    name.ends_with('.') || DEVICES.contains(&stem.as_str()) || numbered("com") || numbered("lpt")
}

/// The name of the file [`folds_case`] creates in the `topics` directory: no
/// topic can have it (`~` is not allowed in topic names).
const CASE_PROBE: &str = ".case~probe";

/// Whether the `topics` directory, `topics_dir`, does not tell names apart by
/// case (macOS's and Windows' defaults, an ext4 or tmpfs directory with the
/// casefold attribute): a file created there as [`CASE_PROBE`] is found
/// again by its name in upper case. Topic names that differ only by case are
/// one directory there, and collide (see [`TopicManager::colliding_topic`]).
/// The probe is made in the directory itself, whose file system and
/// attribute may differ from the data directory's. When the probe cannot be
/// made, the data directory's `topics` found again as `TOPICS` decides.
fn folds_case(data_dir: &Path, topics_dir: &Path) -> bool {
    let probe = topics_dir.join(CASE_PROBE);
    let upper = topics_dir.join(CASE_PROBE.to_ascii_uppercase());
    match std::fs::File::create(&probe) {
        Ok(file) => {
            // Closed before the removal: a file removed while open stays as
            // a hidden name on some file systems (`.nfs*` on NFS,
            // `.fuse_hidden*` on FUSE) until it is closed.
            drop(file);
            let folds = same_file(&probe, &upper);
            if let Err(e) = std::fs::remove_file(&probe) {
                tracing::warn!(path = %probe.display(), error = %e, "could not remove the case probe; it is skipped as not a topic");
            }
            folds
        }
        Err(e) => {
            tracing::warn!(path = %probe.display(), error = %e, "could not create the case probe; judging by the data directory");
            same_file(topics_dir, &data_dir.join("TOPICS"))
        }
    }
}

/// Whether `b` names the file `a` names (on platforms without inode numbers:
/// whether `b` exists, as the same kind of file).
fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    }
    #[cfg(not(unix))]
    {
        a.is_dir() == b.is_dir()
    }
}

/// Warns of topics whose names collide (see [`TopicManager::colliding_topic`]):
/// a data directory from before the broker refused them. Both are served.
fn warn_of_colliding_names<'a>(names: impl Iterator<Item = &'a String>) {
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for name in names.filter(|n| n.contains(['.', '_'])) {
        match seen.entry(name.replace('.', "_")) {
            std::collections::hash_map::Entry::Occupied(first) => tracing::warn!(
                topic = %name,
                other = %first.get(),
                "topic names differ only by '.' and '_', which Kafka refuses (their metric names collide); both are kept"
            ),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(name);
            }
        }
    }
}

/// Takes the data directory's lock so two brokers never share a data directory
/// (the WAL has its own lock, but it may be disabled).
fn lock_data_dir(dir: &Path) -> Result<crate::wal::files::DirLock> {
    crate::wal::files::lock_dir(dir)
}

fn load_meta(data_dir: &Path) -> Result<BrokerMeta> {
    let path = data_dir.join("meta.json");
    match std::fs::read(&path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map_err(|e| Error::corrupt(&path, 0, format!("meta.json does not parse: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = random_id().to_be_bytes();
            let cluster_id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let meta = BrokerMeta {
                cluster_id,
                node_id: 0,
            };
            let json = serde_json::to_vec_pretty(&meta)
                .map_err(|e| Error::corrupt(&path, 0, e.to_string()))?;
            crate::wal::files::write_atomic(&path, &json)?;
            tracing::info!(cluster_id = %meta.cluster_id, "created broker identity");
            Ok(meta)
        }
        Err(e) => Err(Error::io("read", &path, e)),
    }
}

/// Opens the topic in `dir`; with `defer_cut`, a newest segment to be cut is
/// left as found until [`settle_newest`] (see [`Partition::open_judged`]).
fn load_topic(
    dir: &Path,
    name: &str,
    broker: &crate::config::StorageConfig,
    files: &Arc<segment::SegmentFiles>,
    defer_cut: bool,
) -> Result<Option<Topic>> {
    let path = dir.join("topic.json");
    let raw = match std::fs::read(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let f: TopicFile = serde_json::from_slice(&raw)
        .map_err(|e| Error::corrupt(&path, 0, format!("topic.json does not parse: {e}")))?;
    // Before anything is created: each partition listed gets a directory and
    // a segment, and a damaged count would fill the disk with them, or leave
    // a topic of no partitions.
    if f.version != TOPIC_FILE_VERSION {
        return Err(Error::corrupt(
            &path,
            0,
            format!(
                "unknown topic.json version {} (this broker reads version {TOPIC_FILE_VERSION})",
                f.version
            ),
        ));
    }
    f.verify(&path, &raw)?;
    if !(1..=MAX_PARTITIONS).contains(&f.partitions) {
        return Err(Error::corrupt(
            &path,
            0,
            format!(
                "topic.json lists {} partitions; a topic has 1 to {MAX_PARTITIONS}",
                f.partitions
            ),
        ));
    }
    let id = uuid::Uuid::parse_str(&f.id)
        .map_err(|e| Error::corrupt(&path, 0, format!("bad topic id: {e}")))?;
    let configs = TopicConfig::from_pairs(f.configs.iter().map(|(k, v)| (k, Some(v))))
        .map_err(|e| Error::corrupt(&path, 0, e.to_string()))?;
    let mut partitions = Vec::new();
    // A topic of thousands of partitions, each newest segment read in full,
    // takes long on its own.
    let mut progress = crate::progress::Progress::new("loading a topic's partitions");
    for p in 0..f.partitions {
        progress.tick(
            p as u64,
            Some(u64::from(f.partitions.unsigned_abs())),
            "partitions",
        );
        partitions.push(Arc::new(Partition::open_judged(
            name,
            p,
            dir.join(p.to_string()),
            configs.segment_bytes(broker),
            Arc::clone(files),
            defer_cut,
        )?));
    }
    Topic::limit_segments(&configs, broker, &partitions);
    Ok(Some(Topic {
        name: name.to_string(),
        id,
        partitions,
        wal_floor: f.wal_floor,
        configs,
        configs_not_durable: None,
    }))
}

/// What marks a topic directory set aside by a tolerant start because its
/// `topic.json` was missing (see [`set_aside`]): `<topic>~<16 hex digits>-stray`.
/// `~` is no character of a topic name, so no topic can have that name, and
/// later starts skip the directory with a warning.
const STRAY_SUFFIX: &str = "-stray";

/// Why the topic directory `dir` (of topic `name`), whose `topic.json` is
/// missing, may hold data: `None` when it holds nothing but what a create
/// interrupted before it wrote `topic.json` leaves (partition directories
/// holding only empty files, a temporary `topic.json`), and no recovery point
/// gives the name a flushed offset.
///
/// A create writes `topic.json` last (atomically), and nothing else removes
/// it: a directory that lacks it but holds records, or whose name the
/// recovery points give flushed offsets (a create drops those its name had
/// from an earlier topic, see [`TopicManager::create_topic_with`]), was
/// damaged from outside.
///
/// # Errors
/// A path that cannot be read, naming it: what it holds is unknown.
fn stray_data(dir: &Path, name: &str, points: Option<&RecoveryPoints>) -> Result<Option<String>> {
    let read = |d: &Path| std::fs::read_dir(d).map_err(|e| Error::io("read_dir", d, e));
    let temporary = Path::new("topic.json").with_extension("tmp");
    for entry in read(dir)? {
        let entry = entry.map_err(|e| Error::io("read_dir", dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| Error::io("stat", &path, e))?;
        if kind.is_dir() {
            for inner in read(&path)? {
                let inner = inner.map_err(|e| Error::io("read_dir", &path, e))?;
                if let Some(why) = non_empty(&inner)? {
                    return Ok(Some(why));
                }
            }
        } else if entry.file_name() != temporary.as_os_str() {
            if let Some(why) = non_empty(&entry)? {
                return Ok(Some(why));
            }
        }
    }
    let flushed = points
        .and_then(|p| p.topics.get(name))
        .and_then(|t| t.ends.iter().enumerate().find(|(_, &end)| end > 0));
    Ok(flushed.map(|(i, end)| {
        format!(
            "{} records offsets 0..{end} of partition {i} as flushed",
            recovery_points::FILE
        )
    }))
}

/// Why the directory entry `entry` may be data: a file that is not empty, or
/// anything but a file (a directory below a partition's, a symbolic link).
///
/// # Errors
/// An entry that cannot be looked up, naming it.
fn non_empty(entry: &std::fs::DirEntry) -> Result<Option<String>> {
    let path = entry.path();
    let meta = entry.metadata().map_err(|e| Error::io("stat", &path, e))?;
    Ok(if !meta.file_type().is_file() {
        Some(format!("{} is not a file", path.display()))
    } else if meta.len() > 0 {
        Some(format!("{} holds {} bytes", path.display(), meta.len()))
    } else {
        None
    })
}

/// Moves the directory of partition `p` in the topic directory `dir` aside
/// (see [`set_aside`]) when it holds data (see [`non_empty`]), before a growth
/// opens the partition: a directory a growth interrupted by a crash left holds
/// only empty files and is reused, but one holding records is a partition
/// `topic.json` lost (see [`check_points_beyond_count`]), whose records
/// would otherwise be served as the new partition's.
///
/// # Errors
/// The directory cannot be read or moved, naming the path.
fn set_aside_partition_data(dir: &Path, p: i32) -> Result<()> {
    let path = dir.join(p.to_string());
    let entries = match std::fs::read_dir(&path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read_dir", &path, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read_dir", &path, e))?;
        if let Some(why) = non_empty(&entry)? {
            let to = set_aside(dir, &p.to_string())?;
            tracing::error!(
                dir = %path.display(),
                moved_to = %to.display(),
                reason = why,
                "a partition directory the topic's topic.json does not list holds data; \
                 moved it aside before the growth opens the partition"
            );
            return Ok(());
        }
    }
    Ok(())
}

/// Moves the directory `name` in `topics_dir` (a topic's, or a partition's in
/// a topic directory) aside, to a name no topic or partition can have (see
/// [`STRAY_SUFFIX`]), durably; returns where it went.
///
/// # Errors
/// The rename or the directory fsync, naming the path.
fn set_aside(topics_dir: &Path, name: &str) -> Result<PathBuf> {
    let from = topics_dir.join(name);
    // The name cut short: within a file name's 255 bytes.
    let to = topics_dir.join(format!(
        "{}~{:016x}{STRAY_SUFFIX}",
        &name[..name.len().min(TRASH_NAME_PREFIX)],
        random_id() as u64
    ));
    std::fs::rename(&from, &to).map_err(|e| Error::io("rename", &from, e))?;
    sync_dir(topics_dir)?;
    Ok(to)
}

/// What a start does with a topic directory whose `topic.json` is missing,
/// when `why` says it may hold data: refuses (strict mode), naming the file
/// and the ways out, or moves the directory aside (tolerant mode, see
/// [`set_aside`]), with an error in the log.
///
/// # Errors
/// In strict mode, always; in tolerant mode, a failed move.
fn refuse_or_set_aside(topics_dir: &Path, name: &str, why: &str, mode: RecoveryMode) -> Result<()> {
    let file = topics_dir.join(name).join("topic.json");
    if mode == RecoveryMode::Strict {
        return Err(Error::io(
            "read",
            &file,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "the file is missing, but the topic's directory is no interrupted create: \
                     {why}; restore the file (the topic's id, partition count and wal_floor), \
                     or start with --recovery-mode tolerate_corruption to move the directory \
                     aside (to {name}~<16 hex digits>{STRAY_SUFFIX}, which starts then skip) \
                     and go on without the topic and its groups' committed positions"
                ),
            ),
        ));
    }
    let to = set_aside(topics_dir, name)?;
    tracing::error!(
        file = %file.display(),
        moved_to = %to.display(),
        reason = why,
        "topic.json is missing from a topic directory that may hold data; moved the \
         directory aside and going on without the topic (--recovery-mode tolerate_corruption)"
    );
    Ok(())
}

/// Removes the topic directories `interrupted` names (without `topic.json`,
/// holding nothing: see [`stray_data`]), which a create interrupted before it
/// wrote `topic.json` left, each given with the number of WAL entries after
/// the checkpoint that name it. One with such entries was no interrupted
/// create (nothing is produced to a topic before its create ends, and an
/// earlier topic's entries lie behind the checkpoint its delete made): a
/// topic whose `topic.json`, and whose records in the segments, are gone. It
/// is refused or moved aside as [`refuse_or_set_aside`] says, before the
/// start's checkpoint moves past its entries.
///
/// # Errors
/// As [`refuse_or_set_aside`]; a directory that cannot be removed, naming it.
fn settle_interrupted_creates(
    topics_dir: &Path,
    interrupted: &BTreeMap<String, u64>,
    mode: RecoveryMode,
) -> Result<()> {
    for (name, &entries) in interrupted {
        if entries > 0 {
            let why = format!("the WAL holds {entries} entries of the topic after its checkpoint");
            refuse_or_set_aside(topics_dir, name, &why, mode)?;
            continue;
        }
        let dir = topics_dir.join(name);
        tracing::warn!(dir = %dir.display(), "removing topic directory left by an interrupted create");
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io("remove_dir_all", &dir, e))?;
    }
    Ok(())
}

/// Fails (strict mode) or warns (tolerant) for each topic whose recovery
/// points (of the same id) give a partition at or above its `topic.json`'s
/// count flushed offsets: the file lost partitions whose records were
/// checkpointed, their WAL entries perhaps retired (damage, or a growth
/// whose `topic.json` a power loss undid under a build that put such a growth
/// in force: see [`TopicManager::add_partitions`]). Before anything is written; a tolerant start's checkpoint then
/// rewrites the points without them, and a later growth sets the partition's
/// directory aside.
///
/// # Errors
/// In strict mode, such a topic, naming its `topic.json`.
fn check_points_beyond_count(
    topics: &BTreeMap<String, Arc<Topic>>,
    topics_dir: &Path,
    points: Option<&RecoveryPoints>,
    mode: RecoveryMode,
) -> Result<()> {
    let Some(points) = points else {
        return Ok(());
    };
    for t in topics.values() {
        let Some(tp) = points
            .topics
            .get(&t.name)
            .filter(|p| p.id == t.id.to_string())
        else {
            continue;
        };
        let count = t.partitions.len();
        let Some((i, end)) = tp
            .ends
            .iter()
            .enumerate()
            .skip(count)
            .find(|(_, &end)| end > 0)
        else {
            continue;
        };
        let file = topics_dir.join(&t.name).join("topic.json");
        let what = format!(
            "topic.json lists {count} partitions, but {} records offsets 0..{end} of \
             partition {i} of the topic as flushed; the file lost partitions of the topic",
            recovery_points::FILE
        );
        if mode == RecoveryMode::Strict {
            return Err(Error::corrupt(
                file,
                0,
                format!(
                    "{what}; set its partitions to {} (keeping its id and wal_floor, and \
                     removing its crc32c field), or \
                     start with --recovery-mode tolerate_corruption to go on without the \
                     partitions it lost",
                    tp.ends.len()
                ),
            ));
        }
        tracing::warn!(
            file = %file.display(),
            "{what}; going on without them (--recovery-mode tolerate_corruption); a growth \
             of the topic sets their directories aside"
        );
    }
    Ok(())
}

/// The name of a directory the delete of topic `name` moves into the trash:
/// its [`trash_key`], `-` and random hex digits (a name deleted again before
/// the first is removed gets another).
fn trash_entry_name(name: &str) -> String {
    format!("{}-{:x}", trash_key(name), random_id() as u64)
}

/// The topics whose delete a crash interrupted after it moved their directory
/// into the trash, `trash` (`topics-deleted/<key>-<hex>`): their
/// [`trash_key`]s, or a long name's first [`TRASH_NAME_PREFIX`] bytes where
/// a build before keys cut it so.
///
/// # Errors
/// A trash that cannot be read, naming it.
fn trashed_names(trash: &Path) -> Result<BTreeSet<String>> {
    Ok(trash_entries(trash)?
        .iter()
        .filter_map(|entry| {
            let name = entry.file_name()?.to_string_lossy();
            let (topic, _) = name.rsplit_once('-')?;
            Some(topic.to_string())
        })
        .collect())
}

/// What is in the trash, `trash` (none when it does not exist).
///
/// # Errors
/// A trash that cannot be read, naming it.
/// Fsyncs each partition's directory, each topic's and `topics_dir`. A process
/// killed between a change to one of them (a topic created or grown, a
/// segment rolled, a topic moved to the trash) and its fsync left the change
/// for this one to serve and checkpoint the WAL over: a power loss then took
/// it (a topic's directory and every record in it, with a strict start
/// finding nothing amiss). As `Wal::open` does for the WAL's directory; cheap
/// where nothing changed.
fn sync_topic_dirs(topics_dir: &Path, topics: &BTreeMap<String, Arc<Topic>>) -> Result<()> {
    for (name, t) in topics {
        for p in &t.partitions {
            sync_dir(p.dir())?;
        }
        sync_dir(&topics_dir.join(name))?;
    }
    sync_dir(topics_dir)
}

fn trash_entries(trash: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(trash) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read_dir", trash, e)),
    };
    entries
        .map(|entry| {
            entry
                .map(|entry| entry.path())
                .map_err(|e| Error::io("read_dir", trash, e))
        })
        .collect()
}

/// Whether the delete of topic `name` was in progress: its directory is in
/// the trash (`trashed`, as [`trashed_names`] reads them).
fn in_trash(trashed: &BTreeSet<String>, name: &str) -> bool {
    if trashed.contains(trash_key(name).as_ref()) {
        return true;
    }
    // A long name's entry from a build before keys: its first 200 bytes (a
    // name that is no topic name, not cut on a character boundary, is
    // compared whole).
    name.len() >= TRASH_NAME_PREFIX
        && name
            .get(..TRASH_NAME_PREFIX)
            .is_some_and(|cut| trashed.contains(cut))
}

/// Whether topic `name` has a directory a start opened (`topics`) or
/// settles otherwise (`interrupted` creates, directories `set_aside`).
fn present<T, U>(
    name: &str,
    topics: &BTreeMap<String, T>,
    interrupted: &BTreeMap<String, U>,
    set_aside: &BTreeSet<String>,
) -> bool {
    topics.contains_key(name) || interrupted.contains_key(name) || set_aside.contains(name)
}

/// What a start does with topics without a directory that the WAL entries
/// after the checkpoint (`entries`: each such topic with its number of
/// entries) or committed positions (`positions`: each topic with its number
/// of positions, some of them of topics that have a directory, `present`)
/// name, before anything moves the checkpoint past the entries or drops the
/// positions.
///
/// A delete moves a topic's directory away only after its checkpoint has
/// moved past the topic's entries, and none is made once storage has failed;
/// it drops the positions in the topic once the directory is in the trash,
/// and removes it from there only then (a start too); commits land only in
/// topics that exist. So the entries and positions of a topic whose delete
/// was in progress (its directory in the trash, `trashed`) are a deleted
/// topic's, dropped. Any other topic lost its directory from outside
/// (removed by hand, moved by a file system check, a volume not mounted),
/// and they are its acknowledged records and its groups' positions: strict
/// mode refuses, naming `topics/<topic>` and the ways out; tolerant mode
/// warns once per topic, with the counts, and drops them. Except for
/// positions alone in a topic the recovery points (`points`, when read) do
/// not list: builds before deletes dropped positions left them, and they are
/// dropped with a warning.
///
/// # Errors
/// In strict mode, such a topic.
fn check_missing_topics(
    topics_dir: &Path,
    entries: &BTreeMap<String, u64>,
    positions: &BTreeMap<String, usize>,
    present: impl Fn(&str) -> bool,
    trashed: &BTreeSet<String>,
    points: Option<&RecoveryPoints>,
    mode: RecoveryMode,
) -> Result<()> {
    let positions = positions.iter().filter(|(name, _)| !present(name));
    let mut missing: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
    for (name, &n) in entries {
        missing.entry(name).or_default().0 = n;
    }
    for (name, &n) in positions {
        missing.entry(name).or_default().1 = n;
    }
    for (name, (entries, positions)) in missing {
        let dir = topics_dir.join(name);
        if in_trash(trashed, name) {
            if entries > 0 {
                tracing::warn!(
                    topic = %name,
                    entries,
                    "dropping the WAL entries after the checkpoint of a topic whose delete was interrupted"
                );
            }
            continue;
        }
        // Positions alone, in a topic the last checkpoint's recovery points
        // do not list: it was gone by then (each checkpoint lists every
        // topic, and commits land only in topics that exist), deleted by an
        // older build, which left its groups' positions behind.
        if entries == 0 && points.is_some_and(|p| !p.topics.contains_key(name)) {
            tracing::warn!(
                topic = %name,
                positions,
                "dropping the committed positions in a topic that was gone at the last checkpoint \
                 ({} does not list it): a delete by an older build left them (or the directory \
                 of a topic created since was lost)",
                recovery_points::FILE
            );
            continue;
        }
        let mut held = Vec::new();
        let mut dropped = Vec::new();
        if entries > 0 {
            held.push(format!(
                "the WAL holds {entries} entries of the topic after its checkpoint"
            ));
            dropped.push("the entries");
        }
        if positions > 0 {
            held.push(format!(
                "consumer groups hold {positions} committed positions in the topic"
            ));
            dropped.push("the positions");
        }
        let what = format!(
            "the topic's directory is missing, but {}, and no delete of the topic was in progress",
            held.join(" and ")
        );
        if mode == RecoveryMode::Strict {
            return Err(Error::io(
                "open topic directory",
                &dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "{what}; restore the directory (or mount the volume holding it), or \
                         start with --recovery-mode tolerate_corruption to drop the entries \
                         and the committed positions in the topic"
                    ),
                ),
            ));
        }
        tracing::warn!(
            topic = %name,
            entries,
            positions,
            dir = %dir.display(),
            "{what}; dropping {} (--recovery-mode tolerate_corruption)",
            dropped.join(" and ")
        );
    }
    Ok(())
}

/// What replaying the WAL did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    /// Entries read after the checkpoint.
    pub entries: u64,
    /// Batches appended to segments.
    pub appended: u64,
    /// Batches already present in the segments.
    pub skipped: u64,
    /// Entries for topics or partitions that no longer exist (an earlier topic
    /// of a recreated name among them).
    pub orphaned: u64,
    /// Last sequence in the WAL.
    pub last_sequence: u64,
    /// Batches rebuilt from WAL entries the checkpoint covered, into segments that
    /// had lost them (see [`recovery_points`]).
    pub rebuilt: u64,
}

/// A partition whose segments end below its recovery point: batches that were
/// flushed are gone (damaged bytes cut by the opening scan, or a missing file).
struct Short {
    topic: Arc<Topic>,
    partition: Arc<Partition>,
    point: i64,
}

fn short_partitions(
    topics: &BTreeMap<String, Arc<Topic>>,
    points: Option<&RecoveryPoints>,
) -> Vec<Short> {
    let Some(points) = points else {
        return Vec::new();
    };
    let mut short = Vec::new();
    for t in topics.values() {
        let id = t.id.to_string();
        for (i, p) in t.partitions.iter().enumerate() {
            if let Some(point) = points.get(&t.name, &id, i) {
                if p.log_end_offset() < point {
                    short.push(Short {
                        topic: Arc::clone(t),
                        partition: Arc::clone(p),
                        point,
                    });
                }
            }
        }
    }
    short
}

/// Rebuilds short partitions from WAL entries the checkpoint covers, as far back as
/// the log still reaches: each entry of such a partition (of this topic, not an
/// earlier one of the same name: see [`Topic::wal_floor`]) that continues the
/// partition exactly where it ends is appended. Entries after the checkpoint are
/// read too: a checkpoint reads the applied sequence before the partitions' ends,
/// so batches applied in between lie below the recovery point but after the
/// checkpoint. The replay that follows skips what is appended here.
fn rebuild_from_wal(
    recovery: &crate::wal::Recovery,
    short: &[Short],
    stats: &mut ReplayStats,
) -> Result<()> {
    let Some(from) = short.iter().map(|s| floor_of(&s.topic, recovery)).min() else {
        return Ok(());
    };
    // By topic and partition, each with its floor: one look-up an entry, not
    // a search of every short partition.
    let by_partition: std::collections::HashMap<(&str, i32), (&Short, u64)> = short
        .iter()
        .map(|s| {
            let key = (s.topic.name.as_str(), s.partition.index());
            (key, (s, floor_of(&s.topic, recovery)))
        })
        .collect();
    // Those still short of their point: the pass ends when none is.
    let mut unfinished = short
        .iter()
        .filter(|s| s.partition.log_end_offset() < s.point)
        .count();
    for entry in recovery.entries_from(from) {
        if unfinished == 0 {
            break;
        }
        let entry = entry?;
        if entry.entry_type != WalEntryType::Record {
            continue;
        }
        let Some(&(s, _)) = by_partition
            .get(&(entry.topic.as_str(), entry.partition))
            .filter(|(_, floor)| entry.sequence >= *floor)
        else {
            continue;
        };
        let Ok(infos) = batch::validate_all(&entry.data) else {
            continue;
        };
        let end = s.partition.log_end_offset();
        let Some(first) = infos.iter().position(|i| i.base_offset >= end) else {
            continue;
        };
        // Only an entry that continues the partition exactly (and does not straddle
        // its end) is used.
        if infos[first].base_offset != end || (first > 0 && infos[first - 1].last_offset() >= end) {
            continue;
        }
        let at: usize = infos[..first].iter().map(|i| i.len).sum();
        // The WAL continues the partition where its batches stop: its
        // newest segment is cut there first.
        s.partition.settle_newest()?;
        s.partition.append(&entry.data[at..], &infos[first..])?;
        // Stored when the WAL took the entry.
        s.partition
            .producers()
            .recover(&infos[first..], entry.timestamp);
        let was_short = end < s.point;
        stats.rebuilt += (infos.len() - first) as u64;
        if was_short && s.partition.log_end_offset() >= s.point {
            unfinished -= 1;
        }
    }
    for s in short {
        let end = s.partition.log_end_offset();
        tracing::warn!(
            topic = %s.topic.name,
            partition = s.partition.index(),
            recovery_point = s.point,
            end,
            "flushed batches were missing from the segments; rebuilt them from the WAL{}",
            if end < s.point { " as far as it reaches" } else { "" }
        );
    }
    Ok(())
}

/// Lowers the WAL floor of every topic whose floor lies above `next`, the
/// sequence the just opened WAL hands out next, to `next`, and stores each such
/// `topic.json` durably (atomic replace, directory fsynced), before replay and
/// before anything is appended.
///
/// A create sets the floor one above the WAL's durable end (see
/// [`new_wal_floor`]), so the log reaches the floor after any crash. A floor
/// written by an older broker may be one above the last acknowledged
/// sequence; in `interval` and `os_default` modes acknowledged entries may not
/// have been synced: after a power loss the log ends below the floor and
/// hands out those sequences again (so does a restart after the WAL failed
/// with entries acknowledged but not written), and the topic's own entries
/// would then be taken for an earlier topic's: skipped by replay and by the
/// rebuild of a short partition, and checkpointed past. A device that loses
/// synced entries does the same. Every entry the log holds now lies below
/// `next`, so none of them is the topic's, and each one appended from now on
/// is.
///
/// # Errors
/// A `topic.json` that cannot be stored, naming it: the start is refused.
fn lower_wal_floors(
    topics: &mut BTreeMap<String, Arc<Topic>>,
    topics_dir: &Path,
    next: u64,
) -> Result<()> {
    for t in topics.values_mut() {
        let Some(floor) = t.wal_floor.filter(|&f| f > next) else {
            continue;
        };
        let lowered = Topic {
            wal_floor: Some(next),
            ..Topic::clone(t)
        };
        let dir = topics_dir.join(&t.name);
        lowered.store(&dir).map_err(|e| {
            Error::io(
                "store the lowered WAL floor in",
                dir.join("topic.json"),
                std::io::Error::other(e),
            )
        })?;
        tracing::warn!(
            topic = %t.name,
            floor,
            next,
            "the topic's WAL floor was above the WAL's next sequence (acknowledged \
             entries lost to a power loss, or a WAL that had failed); lowered it"
        );
        *t = Arc::new(lowered);
    }
    Ok(())
}

/// Gives each topic without a `wal_floor` (created while the WAL was
/// disabled) the floor `next`, the sequence the WAL hands out next, once the
/// replay has put every entry it holds in the segments. Without one, a segment
/// of the topic damaged below its recovery point was never rebuilt from the
/// WAL, even after weeks of running with it; from now on its entries are
/// known as its own. A floor that cannot be stored is a warning (the topic
/// stays without one, as before, and the next start tries again).
fn set_missing_wal_floors(topics: &mut BTreeMap<String, Arc<Topic>>, topics_dir: &Path, next: u64) {
    for t in topics.values_mut().filter(|t| t.wal_floor.is_none()) {
        let floored = Topic {
            wal_floor: Some(next),
            ..Topic::clone(t)
        };
        match floored.store(&topics_dir.join(&t.name)) {
            Ok(()) => *t = Arc::new(floored),
            Err(e) => {
                tracing::warn!(topic = %t.name, error = %e, "could not store the topic's WAL floor; its segments are not rebuilt from the WAL until a start stores one")
            }
        }
    }
}

/// The `wal_floor` of a topic created now: one above every sequence `wal` has
/// handed out, acknowledged or not. A sync resolves, once everything appended
/// before it is durable, to the highest durable sequence; so the floor is
/// also never above the log's durable end, and a power loss cannot make the
/// WAL hand out sequences below it again.
///
/// # Errors
/// The sync's: the WAL has failed (an append's bytes may be on the device,
/// under a sequence not known here), or is closed.
fn new_wal_floor(wal: &Wal) -> Result<u64> {
    Ok(wal.sync().wait()? + 1)
}

/// Cuts every partition's newest segment that the open left as found (see
/// [`Partition::open_judged`]), once the start has judged the cuts
/// ([`check_short`]) and before anything is appended.
fn settle_newest(topics: &BTreeMap<String, Arc<Topic>>) -> Result<()> {
    for t in topics.values() {
        for p in &t.partitions {
            p.settle_newest()?;
        }
    }
    Ok(())
}

/// Fails (strict mode) or warns (tolerant) for each partition still below its
/// recovery point.
fn check_short(short: &[Short], mode: RecoveryMode) -> Result<()> {
    for s in short {
        let end = s.partition.log_end_offset();
        if end >= s.point {
            continue;
        }
        let (segment, cut) = s.partition.newest_segment().unwrap_or_default();
        // Cut only once judged (see `settle_newest`): a refusal leaves it.
        let how = match &cut {
            Some(c) if mode == RecoveryMode::Strict => format!(
                "its newest segment's valid batches stop at byte {} of {} ({}); the file is left as found",
                c.position, c.size, c.reason
            ),
            Some(c) => format!(
                "its newest segment is cut at byte {} of {} ({})",
                c.position, c.size, c.reason
            ),
            None => "its segments end there".to_string(),
        };
        let what = format!(
            "topic {} partition {}: offsets {end}..{} were flushed to the segments ({} in {}) \
             but are gone: {how}; the WAL no longer holds them",
            s.topic.name,
            s.partition.index(),
            s.point,
            "recovery point",
            recovery_points::FILE
        );
        if mode == RecoveryMode::Strict {
            return Err(Error::corrupt(
                segment,
                cut.map_or(0, |c| c.position),
                format!("{what}; start with --recovery-mode tolerate_corruption to continue without them"),
            ));
        }
        tracing::warn!("{what}; continuing without them (--recovery-mode tolerate_corruption)");
    }
    Ok(())
}

/// Judges every older segment the open found damaged (see
/// [`Partition::damaged_segments`]; its files still as found) against its
/// partition's recovery point. Offsets it lost (from where its valid batches
/// stop to the next segment's base) that lie below the point were flushed and
/// acknowledged: they are rebuilt from WAL entries the log still holds
/// (`recovery`, when the WAL is on), as [`rebuild_from_wal`] does for a
/// partition's end; when it no longer holds them all, strict mode refuses,
/// naming the segment file, the byte where its batches stop and the lost
/// offsets, and tolerant mode warns. Otherwise (tolerated, or nothing flushed
/// lost) the segment's files are made to say what the open found: the log cut
/// after its last valid batch, its index rewritten; a gap it leaves before the
/// next segment is served as Kafka serves one, from the next batch.
fn check_damaged(
    topics: &BTreeMap<String, Arc<Topic>>,
    points: PointsAt<'_>,
    recovery: Option<&crate::wal::Recovery>,
    mode: RecoveryMode,
    stats: &mut ReplayStats,
) -> Result<()> {
    for t in topics.values() {
        let id = t.id.to_string();
        for (i, p) in t.partitions.iter().enumerate() {
            let point = match points {
                PointsAt::Known(pts) => pts.and_then(|pts| pts.get(&t.name, &id, i)),
                PointsAt::Unknown => None,
            };
            let unknown = matches!(points, PointsAt::Unknown);
            for d in p.damaged_segments() {
                // Offsets wholly below the log start were deleted on request
                // (a DeleteRecords whose removal of the segment a crash cut
                // short): nothing lost could be served.
                let lost = (unknown || point.is_some_and(|pt| d.end < pt))
                    && d.end < d.next_base
                    && d.next_base > p.log_start_offset();
                if !lost {
                    p.settle_segment(d.base_offset)?;
                    continue;
                }
                // Compaction rewrites segments under their original offsets,
                // so the WAL's records line up with a compacted copy's lost
                // range too: put back, they would bring back values and keys
                // the cleaner removed (a deleted key among them). A segment
                // that may be a compacted copy (its topic compacted now, or
                // when the copy was made) is never rebuilt from the WAL.
                let compacted = compacted_copy(t, &d);
                if let Some(r) = recovery.filter(|_| compacted.is_none()) {
                    if let Some((tail, batches)) = lost_batches(r, t, p.index(), &d)? {
                        p.repair_segment(d.base_offset, &tail)?;
                        stats.rebuilt += batches;
                        tracing::warn!(
                            topic = %t.name,
                            partition = p.index(),
                            segment = %d.log_path.display(),
                            from = d.end,
                            to = d.next_base,
                            "flushed batches were missing from an older segment; rebuilt them from the WAL"
                        );
                        continue;
                    }
                }
                let how = damage(&d);
                let source = compacted.unwrap_or_else(|| "the WAL no longer holds them".into());
                let flushed = if unknown {
                    format!(
                        "may have been flushed to the segments ({} is missing or was ignored, \
                         and the WAL has checkpointed entries it may no longer hold)",
                        recovery_points::FILE
                    )
                } else {
                    format!(
                        "were flushed to the segments (recovery point {} in {})",
                        point.unwrap_or_default(),
                        recovery_points::FILE
                    )
                };
                let what = format!(
                    "topic {} partition {}: offsets {}..{} {flushed} but are gone from {}: {how}; {source}",
                    t.name,
                    p.index(),
                    d.end,
                    d.next_base,
                    d.log_path.display(),
                );
                if mode == RecoveryMode::Strict {
                    return Err(Error::corrupt(
                        &d.log_path,
                        d.cut.as_ref().map_or(d.size, |c| c.position),
                        format!("{what}; start with --recovery-mode tolerate_corruption to continue without them"),
                    ));
                }
                tracing::warn!("{what}; continuing without them (--recovery-mode tolerate_corruption), a fetch in the gap gets the next segment's first batch");
                p.settle_segment(d.base_offset)?;
            }
        }
    }
    Ok(())
}

/// The recovery points damaged segments are judged against.
#[derive(Clone, Copy)]
enum PointsAt<'a> {
    /// As loaded (`None`: no file, on a data directory the WAL holds whole).
    Known(Option<&'a RecoveryPoints>),
    /// Missing or ignored while the WAL has checkpointed entries: every gap a
    /// damaged segment leaves may hold flushed records.
    Unknown,
}

/// Where and why the valid batches of the damaged segment `d` stop.
fn damage(d: &partition::DamagedSegment) -> String {
    match &d.cut {
        Some(c) => format!(
            "its valid batches stop at byte {} of {} ({})",
            c.position, c.size, c.reason
        ),
        None => format!(
            "its valid batches end at byte {}, before the next segment's base",
            d.size
        ),
    }
}

/// Why the damaged segment `d` of topic `t` may be a compacted copy, whose
/// lost batches the WAL's records do not match: the topic is compacted, or
/// its partition's [`segment::COMPACTED_FILE`] says that compaction put a
/// copy in place at or above the segment's base (the topic's policy has
/// changed since). `None` when it is not. A file that cannot be read counts
/// as saying it is, with a warning.
fn compacted_copy(t: &Topic, d: &partition::DamagedSegment) -> Option<String> {
    if t.configs.compact() {
        return Some(
            "the topic is compacted, so the WAL's records are not its segments' own".into(),
        );
    }
    let dir = d.log_path.parent()?;
    let file = dir.join(segment::COMPACTED_FILE);
    match segment::compacted_through(dir) {
        Ok(Some(newest)) if d.base_offset <= newest => Some(format!(
            "the segment may be a compacted copy ({} says the topic, compacted then, had \
             copies put in place up to base offset {newest}), so the WAL's records are not \
             its own",
            file.display()
        )),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot tell which segments are compacted copies; taking them all for ones");
            Some(format!(
                "{} cannot be read ({e}), so the segment may be a compacted copy, whose \
                 records the WAL's are not",
                file.display()
            ))
        }
    }
}

/// Judges the damaged segments found by the open of topic `t` again after its
/// delete failed (see [`TopicManager::restore_topic`]); `old` is the topic as
/// the delete took it. No WAL replay follows to restore what they lost, so
/// any offsets missing before the next segment, or below the log end `old`
/// had, are lost to the topic from now on: strict mode refuses, naming the
/// segment (the topic then stays out of service until a restart, which
/// rebuilds them from the WAL when it still holds them), tolerant mode warns
/// and cuts the segment as a tolerant start does. A segment whose only damage
/// is bytes after its last batch (the newest: after the old log end) is cut.
/// Nothing is cut before it is judged: the open left the newest segment as
/// found ([`load_topic`] with `defer_cut`).
///
/// # Errors
/// In strict mode, a segment that lost offsets; I/O errors cutting one.
fn check_reopened(t: &Topic, old: &Topic, mode: RecoveryMode) -> Result<()> {
    for (p, was) in t.partitions.iter().zip(&old.partitions) {
        let end = p.log_end_offset();
        let old_end = was.log_end_offset();
        if end < old_end {
            let (segment, cut) = p.newest_segment().unwrap_or_default();
            let how = cut.as_ref().map_or_else(
                || "its segments end there".to_string(),
                |c| {
                    format!(
                        "its newest segment's valid batches stop at byte {} of {} ({})",
                        c.position, c.size, c.reason
                    )
                },
            );
            let what = format!(
                "topic {} partition {}: offsets {end}..{old_end} are gone: {how}; the topic was \
                 opened again after its delete failed, where nothing rebuilds them",
                t.name,
                p.index(),
            );
            if mode == RecoveryMode::Strict {
                return Err(Error::corrupt(
                    segment,
                    cut.map_or(0, |c| c.position),
                    format!(
                        "{what}; the file is left as found and the topic stays out of service \
                         until the broker restarts, which rebuilds them from the WAL if it \
                         still holds them"
                    ),
                ));
            }
            tracing::warn!("{what}; continuing without them (--recovery-mode tolerate_corruption)");
        }
    }
    for p in &t.partitions {
        for d in p.damaged_segments() {
            // As at a start (see [`check_damaged`]): offsets wholly below the
            // log start were deleted on request and cannot be served.
            if d.end >= d.next_base || d.next_base <= p.log_start_offset() {
                continue;
            }
            let what = format!(
                "topic {} partition {}: offsets {}..{} are gone from {}: {}; the topic was \
                 opened again after its delete failed, where nothing rebuilds them",
                t.name,
                p.index(),
                d.end,
                d.next_base,
                d.log_path.display(),
                damage(&d),
            );
            if mode == RecoveryMode::Strict {
                return Err(Error::corrupt(
                    &d.log_path,
                    d.cut.as_ref().map_or(d.size, |c| c.position),
                    format!(
                        "{what}; the topic stays out of service until the broker restarts, \
                         which rebuilds them from the WAL if it still holds them"
                    ),
                ));
            }
            tracing::warn!("{what}; continuing without them (--recovery-mode tolerate_corruption), a fetch in the gap gets the next segment's first batch");
        }
    }
    // All judged: the cuts are made only now, a refusal above leaving every
    // file as found.
    for p in &t.partitions {
        for d in p.damaged_segments() {
            p.settle_segment(d.base_offset)?;
        }
        p.settle_newest()?;
    }
    Ok(())
}

/// The first WAL sequence of `topic`'s own entries: its [`Topic::wal_floor`],
/// or for a topic without one (created by a build before floors existed, or
/// while the WAL was disabled) the first after the checkpoint, as the replay
/// takes them; those before may be an earlier topic's of the same name.
fn floor_of(topic: &Topic, recovery: &crate::wal::Recovery) -> u64 {
    topic
        .wal_floor
        .unwrap_or_else(|| recovery.checkpoint.saturating_add(1))
}

/// The batches a [damaged](Partition::damaged_segments) older segment `d` of
/// partition `partition` of `topic` lost, from WAL entries of the topic (at or
/// above its [`Topic::wal_floor`]; without one, after the checkpoint): those continuing it exactly from where its
/// valid batches stop to the next segment's base, back to back, and how many;
/// `None` unless the WAL holds them all.
fn lost_batches(
    recovery: &crate::wal::Recovery,
    topic: &Topic,
    partition: i32,
    d: &partition::DamagedSegment,
) -> Result<Option<(Vec<u8>, u64)>> {
    let floor = floor_of(topic, recovery);
    let mut at = d.end;
    let mut tail = Vec::new();
    let mut batches = 0u64;
    for entry in recovery.entries_from(floor) {
        let entry = entry?;
        if entry.entry_type != WalEntryType::Record
            || entry.topic != topic.name
            || entry.partition != partition
            || entry.sequence < floor
        {
            continue;
        }
        let Ok(infos) = batch::validate_all(&entry.data) else {
            continue;
        };
        let mut pos = 0usize;
        for info in &infos {
            if info.base_offset == at && info.last_offset() < d.next_base {
                tail.extend_from_slice(&entry.data[pos..pos + info.len]);
                at = info.last_offset() + 1;
                batches += 1;
            }
            pos += info.len;
        }
        if at == d.next_base {
            return Ok(Some((tail, batches)));
        }
    }
    Ok(None)
}

/// Applies one WAL record to the partitions idempotently: batches whose offsets the
/// segment already holds are skipped, the rest appended. An entry below its topic's
/// [`Topic::wal_floor`] belongs to an earlier topic of the same name (one whose
/// delete did not get to checkpoint past its entries) and counts as orphaned.
///
/// An entry at or above the floor is the topic's own; one for a partition at
/// or above the topic's count means that `topic.json` lost partitions (a
/// growth undone by a power loss after its directory fsync and its write-back
/// both failed, or damage): strict mode refuses, naming the file; tolerant
/// mode warns (once per partition, `warned`) and counts it orphaned.
fn replay_entry(
    topics: &BTreeMap<String, Arc<Topic>>,
    topics_dir: &Path,
    entry: &crate::wal::WalEntry,
    mode: RecoveryMode,
    stats: &mut ReplayStats,
    warned: &mut BTreeSet<(String, i32)>,
) -> Result<()> {
    let (topic, partition, data) = (entry.topic.as_str(), entry.partition, &entry.data[..]);
    let Some(t) = topics
        .get(topic)
        .filter(|t| t.wal_floor.is_none_or(|f| entry.sequence >= f))
    else {
        stats.orphaned += 1;
        return Ok(());
    };
    let Some(p) = usize::try_from(partition)
        .ok()
        .and_then(|i| t.partitions.get(i))
    else {
        // Without a floor the entry may be an earlier topic's.
        if partition >= 0 && t.wal_floor.is_some() {
            let file = topics_dir.join(topic).join("topic.json");
            let what = format!(
                "topic.json lists {} partitions, but the WAL holds entries of the topic \
                 (sequence {}, at or above its wal_floor) for partition {partition} after the \
                 checkpoint; the file lost partitions of the topic",
                t.partitions.len(),
                entry.sequence
            );
            if mode == RecoveryMode::Strict {
                return Err(Error::corrupt(
                    file,
                    0,
                    format!(
                        "{what}; set its partitions to at least {} (keeping its id and \
                         wal_floor, and removing its crc32c field), or start with --recovery-mode tolerate_corruption to \
                         drop these entries",
                        i64::from(partition) + 1
                    ),
                ));
            }
            if warned.insert((topic.to_string(), partition)) {
                tracing::warn!(
                    file = %file.display(),
                    "{what}; dropping the entries of partition {partition} \
                     (--recovery-mode tolerate_corruption)"
                );
            }
        }
        stats.orphaned += 1;
        return Ok(());
    };
    let infos = match batch::validate_all(data) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(topic, partition, error = %e, "WAL entry holds an invalid batch; skipped");
            stats.orphaned += 1;
            return Ok(());
        }
    };
    let end = p.log_end_offset();
    let mut at = 0usize;
    let mut first = infos.len();
    for (i, info) in infos.iter().enumerate() {
        if info.base_offset >= end {
            first = i;
            break;
        }
        if info.last_offset() >= end {
            // Segments hold whole batches, so this means the segment and the WAL
            // disagree; appending would make offsets go backwards.
            tracing::error!(
                topic,
                partition,
                end,
                base = info.base_offset,
                "WAL batch overlaps the segment end; skipped"
            );
        }
        stats.skipped += 1;
        at += info.len;
    }
    let rest = &infos[first..];
    let Some(head) = rest.first() else {
        return Ok(());
    };
    if head.base_offset != end {
        // Nothing but damage makes a gap: the segments hold every offset up to the
        // checkpoint, and the WAL everything after it.
        if mode == RecoveryMode::Strict {
            let segment = p.newest_segment().map(|(path, _)| path).unwrap_or_default();
            return Err(Error::corrupt(
                segment,
                0,
                format!(
                    "topic {topic} partition {partition} ends at offset {end}, but WAL entry {} \
                     continues it at offset {}: offsets {end}..{} are missing; start with \
                     --recovery-mode tolerate_corruption to continue without them",
                    entry.sequence, head.base_offset, head.base_offset
                ),
            ));
        }
        tracing::warn!(
            topic,
            partition,
            expected = end,
            found = head.base_offset,
            "WAL replay found an offset gap; appending anyway"
        );
    }
    p.append(&data[at..], rest)?;
    // Stored when the WAL took the entry.
    p.producers().recover(rest, entry.timestamp);
    stats.appended += rest.len() as u64;
    Ok(())
}

/// Removes the `topic.json` of the topic directory `dir`, durably (the
/// directory fsynced): a topic directory without it is an interrupted create,
/// removed at the next start. Nothing to remove is done.
fn remove_topic_file(dir: &Path) -> Result<()> {
    let meta = dir.join("topic.json");
    match crate::wal::files::remove(&meta) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", &meta, e)),
    }
}

impl TopicManager {
    /// Opens the data directory: loads topics (cutting torn segment tails), loads the
    /// WAL checkpoint, replays WAL entries after it into the segments idempotently
    /// (streaming, one batch of the log at a time), syncs the segments, checkpoints,
    /// and starts the produce pipeline and the periodic checkpoint.
    ///
    /// With the WAL disabled, an existing WAL directory is still replayed (and closed)
    /// so nothing acknowledged earlier is lost.
    ///
    /// A topic directory without `topic.json` is removed when it holds only what
    /// an interrupted create leaves; one that may hold data stops a strict start
    /// and is moved aside by a tolerant one, to `<topic>~<16 hex digits>-stray`.
    ///
    /// # Errors
    /// I/O errors naming the path; [`Error::Corrupt`] from WAL recovery, and
    /// for a `topic.json` of an unknown version or a partition count outside
    /// 1 to [`MAX_PARTITIONS`] (naming the file). In strict mode also: a
    /// topic directory without `topic.json` that may hold data (naming the
    /// file), WAL entries of a topic for a partition its `topic.json` does
    /// not list, recovery points giving such a partition flushed offsets
    /// (both naming the file), and WAL entries after the checkpoint or
    /// committed positions naming a topic without a directory whose delete
    /// was not in progress (naming the directory).
    ///
    /// A start that fails for want of space (on a disk the last run filled,
    /// the replay appends again what the WAL holds past its checkpoint, and
    /// the start writes its checkpoint) gives back the space reserve an
    /// earlier run left and starts again once: a start that failed is as one
    /// cut by a crash there, which the next start completes. Without this
    /// the reserve, kept for the writes that free space, was held by every
    /// start it made fail, and the broker could not come up to free any.
    pub fn new(config: Config) -> Result<TopicManager> {
        match Self::start(config.clone(), false) {
            Err(e)
                if space_reserve::out_of_space(&e)
                    && space_reserve::give_back_at_start(&config.storage.data_dir, &e) =>
            {
                Self::start(config, true)
            }
            started => started,
        }
    }

    /// [`TopicManager::new`], once; `out_of_space` after a start that failed
    /// for want of space gave back the reserve: once the start's writes are
    /// done it is taken again at once where the file system has room for it
    /// (not only twice over: producers would soon take that room, and the
    /// next start fail with no reserve to give back), and the first retention
    /// pass runs at the first checkpoint.
    fn start(config: Config, out_of_space: bool) -> Result<TopicManager> {
        config.validate()?;
        let started = Instant::now();
        let data_dir = config.storage.data_dir.clone();
        // Durably: a topic or a WAL entry is only as durable as the directories
        // holding it.
        create_dir_durable(&data_dir)?;
        let lock = lock_data_dir(&data_dir)?;
        let meta = load_meta(&data_dir)?;
        let topics_dir = data_dir.join("topics");
        create_dir_durable(&topics_dir)?;
        let fold_case = folds_case(&data_dir, &topics_dir);
        if fold_case {
            tracing::info!(dir = %data_dir.display(), "the data directory's file system does not tell names apart by case: a topic whose name differs from another's only by case is refused");
        }
        // Emptied once the WAL entries after the checkpoint have been judged
        // and the committed positions in its topics dropped: the names of its
        // entries tell which missing topics were being deleted.
        let trash = data_dir.join("topics-deleted");
        let trashed = trashed_names(&trash)?;

        // Every partition's sealed segments are read through one cache.
        let segment_files = segment::SegmentFiles::new(
            config
                .storage
                .segment_open_files
                .unwrap_or_else(segment::default_open_files),
        );
        let mode = config.wal.engine.recovery_mode;
        let mut points = match recovery_points::load(&data_dir) {
            Ok(p) => p,
            Err(e) if mode == RecoveryMode::TolerateCorruption => {
                tracing::warn!(error = %e, "ignoring the recovery points");
                None
            }
            Err(e) => return Err(e),
        };
        let mut topics = BTreeMap::new();
        // Directories without `topic.json` that hold nothing but what an
        // interrupted create leaves: removed once replay has found no WAL
        // entry after the checkpoint naming them.
        let mut interrupted = BTreeMap::new();
        // Directories a tolerant start moved aside just now.
        let mut set_aside_topics = BTreeSet::new();
        let entries = std::fs::read_dir(&topics_dir)
            .and_then(Iterator::collect::<std::io::Result<Vec<_>>>)
            .map_err(|e| Error::io("read_dir", &topics_dir, e))?;
        let mut progress = crate::progress::Progress::new("loading topics");
        let total = entries.len() as u64;
        for (done, entry) in entries.into_iter().enumerate() {
            progress.tick(done as u64, Some(total), "topic directories");
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            if !topic_dir_entry(&entry, &name)? {
                continue;
            }
            match load_topic(&dir, &name, &config.storage, &segment_files, true)? {
                Some(t) => {
                    topics.insert(name, Arc::new(t));
                }
                None => match stray_data(&dir, &name, points.as_ref())? {
                    None => {
                        interrupted.insert(name, 0u64);
                    }
                    Some(why) => {
                        refuse_or_set_aside(&topics_dir, &name, &why, mode)?;
                        set_aside_topics.insert(name);
                    }
                },
            }
        }
        check_points_beyond_count(&topics, &topics_dir, points.as_ref(), mode)?;
        sync_topic_dirs(&topics_dir, &topics)?;
        let offsets = OffsetStore::open(data_dir.join("groups"))?;
        let positions = offsets.positions_by_topic();
        // Dropped below with every topic's that has no directory: said here,
        // as a directory moved back later brings its records, not these.
        for name in &set_aside_topics {
            if let Some(&n) = positions.get(name).filter(|&&n| n > 0) {
                tracing::warn!(
                    topic = %name,
                    positions = n,
                    "dropping the consumer groups' committed positions in the topic whose \
                     directory was set aside; moving the directory back later restores its \
                     records, not these positions"
                );
            }
        }
        let wal_dir = config.wal_dir();
        let has_wal = config.wal.enabled || wal_present(&wal_dir)?;
        let mut stats = ReplayStats::default();
        let mut wal = None;
        if !has_wal {
            check_damaged(
                &topics,
                PointsAt::Known(points.as_ref()),
                None,
                mode,
                &mut stats,
            )?;
            check_short(&short_partitions(&topics, points.as_ref()), mode)?;
            settle_newest(&topics)?;
            check_missing_topics(
                &topics_dir,
                &BTreeMap::new(),
                &positions,
                |t| present(t, &topics, &interrupted, &set_aside_topics),
                &trashed,
                points.as_ref(),
                mode,
            )?;
            settle_interrupted_creates(&topics_dir, &interrupted, mode)?;
        }
        if has_wal {
            // A rotation short of file descriptors closes the cached read
            // handles before it tries again, as a segment roll does.
            let mut engine = config.wal.engine.clone();
            let files = Arc::clone(&segment_files);
            engine.on_descriptor_shortage = Some(crate::wal::ShortageHook::new(move || {
                files.release();
            }));
            let (w, recovery) = Wal::open(&wal_dir, engine)?;
            // Without recovery points (the file missing, or ignored by a
            // tolerant start) while the WAL has checkpointed entries, which
            // it may no longer hold, no partition's durable segments are
            // known: a short one is judged as damaged below a recovery point
            // (rebuilt from the WAL, or refused), not made the newest, which
            // removed every segment after it.
            let points_unknown = points.is_none() && recovery.checkpoint > 0;
            // Above its recovery point (all of it without one) a partition's
            // segments are not known durable, and the WAL holds their batches.
            // Checked once the WAL has opened (its scan validated every
            // entry): the check may durably remove segments that the WAL is to
            // restore, which a start refused for a corrupt WAL must not do.
            for t in topics.values() {
                let id = t.id.to_string();
                for (i, p) in t.partitions.iter().enumerate() {
                    let from = points
                        .as_ref()
                        .and_then(|pts| pts.get(&t.name, &id, i))
                        .unwrap_or(0);
                    p.verify_from(from, points_unknown, mode == RecoveryMode::Strict)?;
                }
            }
            // Before anything is read or appended: every entry the WAL holds
            // lies below the sequence it hands out next.
            lower_wal_floors(&mut topics, &topics_dir, recovery.next_sequence)?;
            let judged = if points_unknown {
                PointsAt::Unknown
            } else {
                PointsAt::Known(points.as_ref())
            };
            check_damaged(&topics, judged, Some(&recovery), mode, &mut stats)?;
            let short = short_partitions(&topics, points.as_ref());
            let checkpoint = recovery.checkpoint;
            let next_sequence = recovery.next_sequence;
            stats.last_sequence = recovery.last_sequence;
            if !short.is_empty() {
                rebuild_from_wal(&recovery, &short, &mut stats)?;
            }
            check_short(&short, mode)?;
            settle_newest(&topics)?;
            let mut warned = BTreeSet::new();
            // Entries of topics without a directory, by topic.
            let mut missing = BTreeMap::new();
            let mut progress = crate::progress::Progress::new("replaying the WAL");
            let after = stats.last_sequence.saturating_sub(checkpoint);
            for entry in recovery {
                let entry = entry?;
                stats.entries += 1;
                let done = entry.sequence.saturating_sub(checkpoint);
                progress.tick(done, Some(after), "entries after the checkpoint");
                if entry.entry_type == WalEntryType::Record {
                    if let Some(n) = interrupted.get_mut(&entry.topic) {
                        *n += 1;
                    } else if !topics.contains_key(&entry.topic)
                        && !set_aside_topics.contains(&entry.topic)
                    {
                        *missing.entry(entry.topic.clone()).or_insert(0u64) += 1;
                    }
                    replay_entry(&topics, &topics_dir, &entry, mode, &mut stats, &mut warned)?;
                }
            }
            // Before anything below removes a directory, moves the checkpoint
            // past the entries found or drops committed positions.
            check_missing_topics(
                &topics_dir,
                &missing,
                &positions,
                |t| present(t, &topics, &interrupted, &set_aside_topics),
                &trashed,
                points.as_ref(),
                mode,
            )?;
            settle_interrupted_creates(&topics_dir, &interrupted, mode)?;
            let mut progress = crate::progress::Progress::new("syncing the replayed partitions");
            let total = topics.values().map(|t| t.partitions.len() as u64).sum();
            let mut done = 0;
            for t in topics.values() {
                for p in &t.partitions {
                    progress.tick(done, Some(total), "partitions");
                    p.sync()?;
                    done += 1;
                }
            }
            if stats.last_sequence > checkpoint {
                // The recovery points first, as every checkpoint writes them:
                // never behind what the WAL's checkpoint lets it drop, should the
                // start fail before its own checkpoint below.
                let now = checkpoint::points_of(topics.values());
                if points.as_ref() != Some(&now) {
                    recovery_points::store(&data_dir, &now)?;
                }
                points = Some(now);
                w.checkpoint(stats.last_sequence)?;
            } else if checkpoint > 0 {
                // Nothing new to checkpoint, but its retention runs now: a WAL
                // file in which a tolerant open skipped damage goes, so that
                // the next strict start does not meet the damage again (see
                // `Wal::checkpoint`). Only what the checkpoint covers goes,
                // after the replay and repairs above have read what they need.
                if let Err(e) = w.checkpoint(checkpoint) {
                    tracing::warn!(error = %e, "could not retire WAL files the checkpoint covers; each periodic checkpoint tries again");
                }
            }
            // Replayed, synced and checkpointed: every entry the WAL holds is
            // in the segments and covered by the checkpoint, so a topic
            // without a floor (created with the WAL disabled) may take
            // `next_sequence` as its floor. Before that, a power loss could
            // leave the floor durable and the replayed batches not, and the
            // next replay would skip the topic's entries below it.
            set_missing_wal_floors(&mut topics, &topics_dir, next_sequence);
            tracing::info!(
                checkpoint,
                entries = stats.entries,
                appended = stats.appended,
                skipped = stats.skipped,
                rebuilt = stats.rebuilt,
                orphaned = stats.orphaned,
                last_sequence = stats.last_sequence,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "replayed WAL"
            );
            if config.wal.enabled {
                wal = Some(w);
            } else {
                w.close()?;
                tracing::info!("WAL disabled: replayed the existing WAL and closed it");
            }
        }
        for t in topics.values() {
            for p in &t.partitions {
                p.reset_next_offset();
                p.settle_log_start()?;
            }
        }
        warn_of_colliding_names(topics.keys());
        // A delete drops the topic's committed positions once its directory has
        // moved to the trash, and removes it from there only then; a crash in
        // between leaves them, dropped here (a commit names a partition that
        // exists, and `check_lost_positions` judged the others). The trash
        // goes only once they are: it is what tells the next start that they
        // are a deleted topic's.
        let mut start_trash = Vec::new();
        match offsets.delete_topic_positions(|t| !topics.contains_key(t)) {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(
                        positions = n,
                        "dropped committed positions in topics without a directory (deleted, or set aside)"
                    );
                }
                // Emptied, not removed: a delete moves a topic's directory
                // into it, and one that had to make it first would fail on a
                // full disk, when an operator deletes a topic to free space.
                if trash
                    .try_exists()
                    .map_err(|e| Error::io("stat", &trash, e))?
                {
                    for entry in trash_entries(&trash)? {
                        #[cfg(test)]
                        let removed =
                            injected_trash_failure().map_or_else(|| remove_entry(&entry), Err);
                        #[cfg(not(test))]
                        let removed = remove_entry(&entry);
                        // As at run time: a warning, and each retention pass
                        // tries again (the positions are dropped; the entry
                        // has nothing more to tell a start). Before, every
                        // start failed, in both recovery modes, over the files
                        // of a topic no one needs (a directory the broker's
                        // user cannot write, a damaged one).
                        if let Err(e) = removed {
                            tracing::warn!(dir = %entry.display(), error = %e, "could not remove a deleted topic's files; each retention pass tries again");
                            start_trash.push(entry);
                        }
                    }
                } else if let Err(e) = create_dir_durable(&trash) {
                    tracing::warn!(dir = %trash.display(), error = %e, "could not make the directory deleted topics move to; the first delete makes it");
                }
            }
            Err(e) => {
                // Kept for the retention passes to finish; no delete of this
                // run has put anything there yet. Their files go now (the
                // moves are durable once the trash is synced), their names
                // stay: the drop may have failed for want of the space they
                // held.
                start_trash = trash_entries(&trash)?;
                if !start_trash.is_empty() {
                    sync_dir(&trash)?;
                    for entry in &start_trash {
                        let name = entry.file_name().map(|n| n.to_string_lossy().into_owned());
                        free_trash_entry(name.as_deref().unwrap_or_default(), entry);
                    }
                }
                tracing::warn!(error = %e, trash = %trash.display(), "could not drop committed positions in deleted topics; each retention pass tries again; their files are removed, and only their (empty) directories stay in the trash until then")
            }
        }
        // A position committed past records a crash then took (read before
        // they were durable) comes down to where the partition now ends, as
        // `settle_log_start` brings a stored log start down, so that a group
        // resuming there reads the records appended from the end.
        offsets.lower_beyond_log_ends(|topic, partition| {
            let p = topics
                .get(topic)?
                .partitions
                .get(usize::try_from(partition).ok()?)?;
            Some(p.log_end_offset())
        })?;
        let producer_ids = ProducerIds::open(&data_dir)?;
        producer_ids.continue_past(
            topics
                .values()
                .flat_map(|t| t.partitions.iter())
                .filter_map(|p| p.producers().largest_id_below(producers::RESERVATION_LIMIT)),
        );
        let reserve = space_reserve::SpaceReserve::open_taking(
            &data_dir,
            config.storage.space_reserve_bytes,
            !out_of_space,
        );

        let (jobs_tx, jobs_rx) = mpsc::channel(1024);
        let (applied_tx, applied_rx) = crossbeam_channel::bounded(4096);
        let shared = Arc::new(Shared {
            _lock: lock,
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT_BYTES)),
            topics_dir,
            topics: RwLock::new(TopicMap::new(topics, fold_case)),
            file_budget: FileBudget::new(config.server.max_connections.unwrap_or(0)),
            create_lock: Mutex::new(BTreeSet::new()),
            admin_turn: tokio::sync::Mutex::new(()),
            deleting: Mutex::new(Vec::new()),
            delete_ended: Condvar::new(),
            unopened: Mutex::new(BTreeSet::new()),
            undurable_deletes: Mutex::new(Vec::new()),
            unfinished_deletes: Mutex::new(Vec::new()),
            start_trash: Mutex::new(start_trash),
            wal,
            jobs: jobs_tx,
            applied_seq: AtomicU64::new(stats.last_sequence),
            checkpointed: Mutex::new(stats.last_sequence),
            replayed: stats,
            points: Mutex::new(points.unwrap_or_default()),
            failed: OnceLock::new(),
            segments_failed: OnceLock::new(),
            started_out_of_space: out_of_space,
            closing: AtomicBool::new(false),
            delete_retention_changes: AtomicU64::new(0),
            config_changes: AtomicU64::new(0),
            segment_files,
            meta,
            offsets,
            producer_ids,
            reserve,
            config,
            #[cfg(test)]
            delete_pause: Mutex::new(Duration::ZERO),
            #[cfg(test)]
            validate_pause: Mutex::new(Duration::ZERO),
            #[cfg(test)]
            delete_sync_pause: Mutex::new(Duration::ZERO),
            #[cfg(test)]
            fail_after_take_for_delete: AtomicBool::new(false),
            blocking_validations: tokio::sync::Semaphore::new(BLOCKING_VALIDATIONS),
            #[cfg(test)]
            blocking_validation: (
                Mutex::new(Duration::ZERO),
                std::sync::atomic::AtomicUsize::new(0),
                std::sync::atomic::AtomicUsize::new(0),
            ),
            #[cfg(test)]
            panic_at_next_job: Mutex::new(None),
            #[cfg(test)]
            compaction_pause: Mutex::new(None),
            #[cfg(test)]
            retention_partition_pause: Mutex::new(Duration::ZERO),
        });
        // Record where the partitions now end (after a repair, or with damage
        // tolerated, lower than before), so that the next start judges against that.
        checkpoint::checkpoint(&shared)?;
        if out_of_space {
            // After the start's last write, which the room it gave back is for.
            shared.reserve.refill_leaving(0);
            if shared.config.storage.space_reserve_bytes > 0 && !shared.reserve.is_held_now() {
                tracing::warn!(
                    bytes = shared.config.storage.space_reserve_bytes,
                    "serving without the space reserve: the start's writes took the room it gave \
                     back; it is taken once the file system has twice its size free, and until \
                     then produces are refused (free space on the data disk)"
                );
            } else if shared.reserve.is_short() {
                tracing::warn!(
                    bytes = shared.config.storage.space_reserve_bytes,
                    "the space reserve is taken again, with less than its size free besides: \
                     produces are refused until that much is free (retention runs at once; \
                     free space on the data disk)"
                );
            }
        }
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(2);
        // Each thread's panic (a bug) fails storage (see [`guarded`]); what the
        // pipeline threads still hold is then answered with that failure.
        let mut threads = Vec::new();
        let s = Arc::clone(&shared);
        threads.push(spawn(SUBMIT_THREAD, move || {
            guarded(
                &s,
                SUBMIT_THREAD,
                jobs_rx,
                |jobs| submit_loop(&s, jobs, &applied_tx),
                |jobs| refuse_jobs(&s, jobs, &applied_tx),
            );
        })?);
        let s = Arc::clone(&shared);
        threads.push(spawn(APPLY_THREAD, move || {
            guarded(
                &s,
                APPLY_THREAD,
                applied_rx,
                |applied| apply_loop(&s, applied),
                |applied| refuse_applied(&s, applied),
            );
        })?);
        let s = Arc::clone(&shared);
        let stop = stop_rx.clone();
        threads.push(spawn(CHECKPOINT_THREAD, move || {
            guarded(
                &s,
                CHECKPOINT_THREAD,
                stop,
                |stop| checkpoint::run(&s, stop),
                |_| {},
            );
        })?);
        let s = Arc::clone(&shared);
        threads.push(spawn(CLEANER_THREAD, move || {
            guarded(
                &s,
                CLEANER_THREAD,
                stop_rx,
                |stop| checkpoint::run_cleaner(&s, stop),
                |_| {},
            );
        })?);
        tracing::info!(
            data_dir = %shared.config.storage.data_dir.display(), topics = shared.topics.read().unwrap_or_else(PoisonError::into_inner).len(),
            wal = shared.wal.is_some(), elapsed_ms = started.elapsed().as_millis() as u64, "storage ready"
        );
        Ok(TopicManager {
            shared,
            threads: Arc::new(Mutex::new(threads)),
            stop_threads: stop_tx,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Cluster id and node id.
    pub fn meta(&self) -> &BrokerMeta {
        &self.shared.meta
    }

    /// The turn of the topic-admin lock (`create_lock`, which a create,
    /// partition growth or topic config change holds while it writes and
    /// fsyncs its files), for a request to hold while its blocking work waits
    /// for the lock: such requests wait for it here, asynchronously, rather
    /// than each in a place for blocking work ([`crate::server::blocking`]).
    /// Auto-creates and CreateTopics queued on the lock held every place, and
    /// every other client's blocking work (commits, group stores,
    /// InitProducerId, DescribeLogDirs) waited behind all of them. Deletes and
    /// the storage threads take the lock without the turn, briefly.
    pub(crate) async fn admin_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.shared.admin_turn.lock().await
    }

    /// Makes each topic delete wait `pause` before it syncs the topic's
    /// segments, with the topic out of the map and its name reserved (tests).
    #[cfg(test)]
    pub(crate) fn set_delete_sync_pause(&self, pause: Duration) {
        *self.shared.delete_sync_pause.lock().unwrap() = pause;
    }

    /// Holds the topic-admin lock until `release` is sent or dropped, on a
    /// thread of its own; returns once it holds it (tests of work queued on
    /// the lock).
    #[cfg(test)]
    pub(crate) fn hold_admin_lock(
        &self,
        release: std::sync::mpsc::Receiver<()>,
    ) -> std::thread::JoinHandle<()> {
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let me = self.clone();
        let holder = std::thread::spawn(move || {
            let _held = me
                .shared
                .create_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            locked_tx.send(()).unwrap();
            let _ = release.recv();
        });
        locked_rx.recv().unwrap();
        holder
    }

    /// Committed group offsets.
    pub fn offsets(&self) -> &OffsetStore {
        &self.shared.offsets
    }

    /// The WAL, when enabled.
    pub fn wal(&self) -> Option<&Wal> {
        self.shared.wal.as_ref()
    }

    /// Why storage failed, once a WAL or segment write has failed (produces are
    /// then refused until a restart).
    pub fn failure(&self) -> Option<&str> {
        self.shared.failed.get().map(String::as_str)
    }

    /// Why storage failed: [`Self::failure`], or the WAL's own failure when
    /// no produce has met it yet.
    pub fn failed_why(&self) -> Option<String> {
        self.shared.failed.get().cloned().or_else(|| {
            let wal = self.shared.wal.as_ref()?;
            wal.failure().map(|e| format!("WAL failed: {e}"))
        })
    }

    /// What replaying the WAL at the start did (all zero without a WAL).
    pub fn replay_stats(&self) -> ReplayStats {
        self.shared.replayed
    }

    /// A snapshot of all topics.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.shared.topic_list()
    }

    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.shared
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// A topic whose name differs from `name` only by `.` in place of `_` or
    /// the reverse (`a.b` and `a_b`). Kafka names a topic's metrics with its
    /// `.` made `_`, so such names collide there, and it refuses to create the
    /// second ("collides with existing topic"); so does this broker. On a data
    /// directory whose file system does not tell names apart by case (macOS's
    /// and Windows' defaults), where `Orders` and `orders` are one directory,
    /// names that differ by case (and those characters) collide too.
    ///
    /// One look-up in an index kept beside the topics, by name with `.` made
    /// `_`, however many topics there are.
    pub fn colliding_topic(&self, name: &str) -> Option<String> {
        self.shared
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .colliding(name)
            .map(str::to_string)
    }

    /// The key under which `name` collides with other names (see
    /// [`Self::colliding_topic`]), when it can collide with any: two names
    /// of one key cannot both be topics. A dry run's checks keep the keys
    /// of the names it passed, as a real create's map holds them.
    pub fn collision_key(&self, name: &str) -> Option<String> {
        self.shared
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .collision_key_of(name)
    }

    /// What a dry run of a create or growth of `new` partitions checks of
    /// storage, as the real one would find it: storage not failed
    /// ([`Self::refuse_if_failed`]), and room in the open-file budget
    /// ([`Self::check_files`]).
    ///
    /// # Errors
    /// [`CreateError::Storage`] or [`CreateError::TooManyFiles`].
    pub fn check_dry_run(&self, new: usize) -> std::result::Result<(), CreateError> {
        self.refuse_if_failed()?;
        self.check_files(new)
    }

    /// Keeps `n` descriptors of the open-file limit for connections (the
    /// server's connection cap, set when it binds) out of what partitions may
    /// take (see [`Self::check_files`]).
    pub fn reserve_files_for_connections(&self, n: usize) {
        self.shared.file_budget.set_connections(n);
    }

    /// Refuses `new` more partitions when their files (two each: the active
    /// segment's log and index) would take descriptors that the soft
    /// `RLIMIT_NOFILE` leaves to storage: the limit less the connections the
    /// server may hold, the sealed segments' read-handle cache
    /// (`--segment-open-files`) and [`topic_map::RESERVED_FILES`] for the WAL,
    /// checkpoints and segment rolls, counting every partition open (topics
    /// being deleted too). Without the bound a create could take every
    /// descriptor, and the next WAL rotation or segment roll failed storage
    /// until a restart, which reopens every partition. No limit, no bound.
    ///
    /// # Errors
    /// [`CreateError::TooManyFiles`] naming the figures.
    pub fn check_files(&self, new: usize) -> std::result::Result<(), CreateError> {
        let open = self
            .shared
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .partitions()
            + self
                .shared
                .deleting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|t| t.partitions.len())
                .sum::<usize>();
        self.shared
            .file_budget
            .check(self.shared.segment_files.capacity(), open, new)
            .map_err(CreateError::TooManyFiles)
    }

    /// Judges [`Self::check_files`] against `limit` in place of
    /// `RLIMIT_NOFILE` (`None`: no limit).
    #[cfg(test)]
    pub(crate) fn set_open_file_limit(&self, limit: Option<u64>) {
        self.shared.file_budget.set_limit(limit);
    }

    /// DeleteRecords on `partition` (see [`Partition::delete_records`]), its
    /// writes given the space reserve when they fail for want of space, as
    /// retention's are: run to free space on a full disk, it was refused.
    ///
    /// # Errors
    /// As [`Partition::delete_records`].
    pub fn delete_records(
        &self,
        partition: &Partition,
        before: i64,
    ) -> std::result::Result<i64, partition::DeleteRecordsError> {
        let deleted = partition.delete_records_with(before, Some(&self.shared.reserve));
        // Given back to it, the reserve is taken again once the deletion
        // freed room for it, so that produces are taken again at once (see
        // `SpaceReserve::short`), not at the next retention pass or a
        // refused produce's look.
        if self.shared.reserve.is_short() {
            self.shared.reserve.refill();
        }
        deleted
    }

    /// The partition `index` of `topic`.
    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        let t = self.topic(topic)?;
        usize::try_from(index)
            .ok()
            .and_then(|i| t.partitions.get(i).cloned())
    }

    /// Creates a topic with `partitions` partitions and the broker's settings
    /// (blocking: creates and fsyncs files).
    ///
    /// # Errors
    /// See [`CreateError`].
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
    ) -> std::result::Result<Arc<Topic>, CreateError> {
        self.create_topic_with(name, partitions, TopicConfig::default())
    }

    /// Creates a topic with `partitions` partitions and the configuration
    /// overrides `configs` (blocking: creates and fsyncs files). While a topic of
    /// the same name is being deleted, waits for the delete to end (up to
    /// [`CREATE_WAITS_FOR_DELETE`]).
    ///
    /// # Errors
    /// See [`CreateError`].
    pub fn create_topic_with(
        &self,
        name: &str,
        partitions: i32,
        configs: TopicConfig,
    ) -> std::result::Result<Arc<Topic>, CreateError> {
        self.create_topic_waiting(name, partitions, configs, CREATE_WAITS_FOR_DELETE)
    }

    /// [`TopicManager::create_topic_with`] with the defaults, refused at once
    /// with [`CreateError::BeingDeleted`] while a topic of the name is being
    /// deleted: a Metadata's auto-create, which clients send again and again
    /// for a topic they use (each wait held one of the broker's places for
    /// blocking work, and the Metadata answer, up to 30 s).
    ///
    /// # Errors
    /// See [`CreateError`].
    pub fn auto_create_topic(
        &self,
        name: &str,
        partitions: i32,
    ) -> std::result::Result<Arc<Topic>, CreateError> {
        self.create_topic_waiting(name, partitions, TopicConfig::default(), Duration::ZERO)
    }

    /// [`TopicManager::create_topic_with`], refused at once with
    /// [`CreateError::BeingDeleted`] while a topic of the name is being
    /// deleted: for a caller that waits for the delete itself, without
    /// holding what a create holds (the topic-admin turn, see
    /// `server::handlers::topics::create_blocking`).
    ///
    /// # Errors
    /// See [`CreateError`].
    pub fn create_topic_now(
        &self,
        name: &str,
        partitions: i32,
        configs: TopicConfig,
    ) -> std::result::Result<Arc<Topic>, CreateError> {
        self.create_topic_waiting(name, partitions, configs, Duration::ZERO)
    }

    /// [`TopicManager::create_topic_with`], waiting at most `wait` for a
    /// delete of the name to end.
    fn create_topic_waiting(
        &self,
        name: &str,
        partitions: i32,
        configs: TopicConfig,
        wait: Duration,
    ) -> std::result::Result<Arc<Topic>, CreateError> {
        if !valid_topic_name(name) {
            return Err(CreateError::InvalidName);
        }
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(CreateError::InvalidPartitions);
        }
        let deleting = self
            .shared
            .create_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The directory of the name is the deleted topic's until its delete ends.
        // On a file system that does not tell names apart by case, a topic
        // being deleted under another case holds this name's directory too.
        // (Fixed for the map's life: read once, not held while waiting.)
        let fold_case = self
            .shared
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .folds_case();
        let busy = |d: &BTreeSet<String>| {
            d.contains(name) || (fold_case && d.iter().any(|n| n.eq_ignore_ascii_case(name)))
        };
        let Some(_guard) = self.wait_for_deletes(deleting, busy, wait) else {
            return Err(CreateError::BeingDeleted);
        };
        if self.topic(name).is_some() {
            return Err(CreateError::Exists);
        }
        if let Some(other) = self.colliding_topic(name) {
            return Err(CreateError::Collides(other));
        }
        self.refuse_if_failed()?;
        // Under `create_lock`: no other create or growth adds partitions
        // between the check and this one's.
        self.check_files(usize::try_from(partitions).unwrap_or(usize::MAX))?;
        let storage = |e: Error| CreateError::Storage(e.to_string());
        let dir = self.shared.topics_dir.join(name);
        // A whole topic out of the map: its delete failed and it could not be
        // opened again. A restart brings it back; a create would remove it.
        // A failed look-up is not "absent": the create would remove the
        // directory below.
        let meta = dir.join("topic.json");
        let holds_topic = meta
            .try_exists()
            .map_err(|e| storage(Error::io("stat", &meta, e)))?;
        if holds_topic {
            return Err(storage(Error::io(
                "create topic",
                &dir,
                std::io::Error::other(
                    "the directory holds a topic not opened (kept after its delete failed, or left by a create that failed); restart the broker to open it again",
                ),
            )));
        }
        // Every entry of an earlier topic of this name was handed out before
        // its delete ended; every entry of this one gets a later sequence.
        let wal_floor = match &self.shared.wal {
            Some(w) => Some(new_wal_floor(w).map_err(|e| {
                CreateError::Storage(format!(
                    "the WAL sync that sets the new topic's wal_floor failed: {e}"
                ))
            })?),
            None => None,
        };
        // Positions committed in an earlier topic of this name would apply to
        // this one: a delete drops them, but a commit that raced it, or a drop
        // that failed, can leave some.
        self.shared
            .offsets
            .delete_topic_positions(|t| t == name)
            .map_err(storage)?;
        // Its recovery points (a delete's checkpoint records the topic it
        // deletes) would make a crash before this create writes topic.json
        // look like damage: a directory without topic.json whose name they
        // give flushed offsets (see `stray_data`).
        self.forget_points_of(name).map_err(storage)?;
        if dir
            .try_exists()
            .map_err(|e| storage(Error::io("stat", &dir, e)))?
        {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| storage(Error::io("remove_dir_all", &dir, e)))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| storage(Error::io("create_dir", &dir, e)))?;
        let id = uuid::Uuid::from_u128(random_id());
        let made = (|| {
            let partitions = self.open_partitions(name, &dir, 0..partitions, &configs)?;
            let topic = Topic {
                name: name.to_string(),
                id,
                partitions,
                wal_floor,
                configs,
                configs_not_durable: None,
            };
            // topic.json last: a topic directory without it is an interrupted create.
            topic.store(&dir).map_err(storage)?;
            sync_dir(&self.shared.topics_dir).map_err(storage)?;
            Ok(topic)
        })();
        let topic = match made {
            Ok(topic) => Arc::new(topic),
            Err(e) => {
                // The partitions opened so far are closed by now (dropped with the
                // closure's state); leave no half-made topic behind. A restart would
                // remove it too (no topic.json), but its files would hold disk space
                // and the name until then. `topic.json` goes first, durably: a
                // failure after its rename (the fsync of its directory, or of the
                // topics directory) left it in place, and a power loss after the
                // removal below, or a removal that failed, brought back at the
                // next start a topic whose create was answered failed.
                if let Err(rm) = remove_topic_file(&dir) {
                    tracing::error!(dir = %dir.display(), error = %rm, "could not durably remove the topic.json of a topic whose creation failed: the next start may open the topic");
                }
                if let Err(rm) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %rm, "could not remove a topic whose creation failed");
                }
                return Err(e);
            }
        };
        self.shared
            .topics
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), Arc::clone(&topic));
        // A topic of the name kept out of the map (its directory held no
        // `topic.json`, so this create replaced it) is gone.
        self.shared
            .unopened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    /// Refuses a create or a growth once storage has failed (a WAL or segment
    /// write or sync): produces are refused until a restart, which recovers
    /// what the WAL holds. A topic created then could get a `wal_floor` at or
    /// below the sequence of a batch whose append failed with its bytes on the
    /// device, which the restart would replay into it.
    fn refuse_if_failed(&self) -> std::result::Result<(), CreateError> {
        match self.failed_why() {
            None => Ok(()),
            Some(why) => Err(CreateError::Storage(format!(
                "storage has failed ({why}); no topic is created or grown until a restart"
            ))),
        }
    }

    /// Refuses a delete of topic `name` once storage has failed, as
    /// [`Self::refuse_if_failed`] refuses creates: a batch of the topic whose
    /// WAL append failed may be on the device above the sequence the delete's
    /// checkpoint would move to, and with the topic's directory gone a restart
    /// could not tell that entry from one of a topic whose directory was lost.
    ///
    /// # Errors
    /// Storage has failed, naming the topic's directory.
    fn refuse_delete_if_failed(&self, name: &str) -> Result<()> {
        match self.failed_why() {
            None => Ok(()),
            Some(why) => Err(Error::io(
                "delete topic",
                self.shared.topics_dir.join(name),
                std::io::Error::other(format!(
                    "storage has failed ({why}); no topic is deleted until a restart, \
                     which recovers what the WAL holds"
                )),
            )),
        }
    }

    /// Drops the recovery points of topic `name` (none in the map) from
    /// `recovery-points.json`, if they are there.
    ///
    /// It does not wait for a checkpoint in progress (which holds its lock
    /// across every partition's sync): one that read a topic of the name
    /// before it left stores no points for it, as it keeps only the topics
    /// in the map or being deleted when it stores (see
    /// [`checkpoint::checkpoint`]), and this create's topic enters the map
    /// with a new id.
    fn forget_points_of(&self, name: &str) -> Result<()> {
        let mut stored = self
            .shared
            .points
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !stored.topics.contains_key(name) {
            return Ok(());
        }
        let mut points = stored.clone();
        points.topics.remove(name);
        recovery_points::store(&self.shared.config.storage.data_dir, &points)?;
        *stored = points;
        Ok(())
    }

    /// Opens (creating) partitions `range` of topic `name` in `dir`, then fsyncs
    /// `dir`.
    fn open_partitions(
        &self,
        name: &str,
        dir: &Path,
        range: std::ops::Range<i32>,
        configs: &TopicConfig,
    ) -> std::result::Result<Vec<Arc<Partition>>, CreateError> {
        let storage = |e: Error| CreateError::Storage(e.to_string());
        let broker = &self.shared.config.storage;
        let parts = range
            .map(|p| {
                Partition::open_in(
                    name,
                    p,
                    dir.join(p.to_string()),
                    configs.segment_bytes(broker),
                    Arc::clone(&self.shared.segment_files),
                )
                .map(Arc::new)
                .map_err(storage)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Topic::limit_segments(configs, broker, &parts);
        sync_dir(dir).map_err(storage)?;
        Ok(parts)
    }

    /// Grows `name` to `count` partitions (blocking: creates and fsyncs files). The
    /// new partitions are created first, then `topic.json` is replaced atomically:
    /// a crash in between leaves empty partition directories the topic does not
    /// count, which a later growth reuses.
    ///
    /// A directory of a new partition that holds data (a partition the file
    /// lost after its records were flushed) is moved aside first, to
    /// `<partition>~<16 hex digits>-stray`, never served as the new partition.
    ///
    /// A `topic.json` renamed into place whose directory cannot then be fsynced
    /// is written back as it was: in force, the new partitions would take
    /// produces that a power loss could take away with the file (their WAL
    /// entries then name partitions the topic does not have), while answered as
    /// refused and left in the file, they would appear at the next start. If the
    /// file cannot be written back (it still holds the growth), the topic keeps
    /// its partitions all the same, and the error says that the next start may
    /// find the new ones, empty: in force, they would take produces that
    /// nothing would ever make durable, since a growth sent again to the same
    /// count would be refused as not growing the topic; kept out, the growth
    /// sent again is made anew and stored durably.
    ///
    /// # Errors
    /// [`CreateError::InvalidPartitions`] unless `count` is above the current count
    /// and at most 10000; [`CreateError::UnknownTopic`] when there is no such
    /// topic (it was deleted meanwhile); [`CreateError::Storage`] for I/O errors
    /// (the topic keeps its partitions).
    pub fn add_partitions(
        &self,
        name: &str,
        count: i32,
    ) -> std::result::Result<Arc<Topic>, CreateError> {
        let _guard = self
            .shared
            .create_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let storage = |e: Error| CreateError::Storage(e.to_string());
        let old = self.topic(name).ok_or(CreateError::UnknownTopic)?;
        self.refuse_if_failed()?;
        let have = old.partitions.len() as i32;
        if count <= have || count > MAX_PARTITIONS {
            return Err(CreateError::InvalidPartitions);
        }
        self.check_files(usize::try_from(count - have).unwrap_or(usize::MAX))?;
        let dir = self.shared.topics_dir.join(name);
        for p in have..count {
            set_aside_partition_data(&dir, p).map_err(storage)?;
        }
        let mut partitions = old.partitions.clone();
        partitions.extend(self.open_partitions(name, &dir, have..count, &old.configs)?);
        // Stored durably below (or the growth is refused), configs and all.
        let topic = Arc::new(Topic {
            partitions,
            configs_not_durable: None,
            ..Topic::clone(&old)
        });
        if let Some(e) = topic.store_renamed(&dir).map_err(storage)? {
            let file = dir.join("topic.json");
            let message = match old.store_renamed(&dir) {
                Ok(None) => {
                    tracing::error!(topic = name, error = %e, "growing the topic failed after topic.json was replaced; it was written back");
                    format!(
                        "{e}; {} was written back: the topic keeps its {have} partitions",
                        file.display()
                    )
                }
                Ok(Some(back)) => {
                    tracing::error!(topic = name, error = %e, write_back = %back, "growing the topic failed after topic.json was replaced; it was written back, but not durably");
                    format!(
                        "{e}; {} was written back: the topic keeps its {have} partitions, \
                         but a power loss may bring back the {count} partitions (empty) ({back})",
                        file.display()
                    )
                }
                Err(back) => {
                    // The file holds the growth, which may or may not survive
                    // a power loss: the new partitions take no produce until
                    // a growth stores it durably.
                    tracing::error!(topic = name, error = %e, write_back = %back, "growing the topic failed after topic.json was replaced, and it could not be written back");
                    format!(
                        "{e}; and {} could not be written back ({back}): the topic keeps its \
                         {have} partitions, but the next start may find the {count} partitions \
                         (empty) the file holds",
                        file.display()
                    )
                }
            };
            return Err(CreateError::Storage(message));
        }
        if !self.replace_topic(&old, &topic) {
            return Err(CreateError::UnknownTopic);
        }
        tracing::info!(topic = name, from = have, to = count, "added partitions");
        Ok(topic)
    }

    /// Puts `new` in place of `old` in the topic map, unless `old` was deleted
    /// meanwhile (a delete removes the topic from the map before it touches its
    /// files): then returns false. Callers hold `create_lock`.
    fn replace_topic(&self, old: &Arc<Topic>, new: &Arc<Topic>) -> bool {
        let mut topics = self
            .shared
            .topics
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match topics.get(&old.name) {
            Some(t) if Arc::ptr_eq(t, old) => {
                topics.insert(old.name.clone(), Arc::clone(new));
                true
            }
            _ => false,
        }
    }

    /// Changes the configuration overrides of topic `name` to what `change` makes
    /// of the current ones (blocking: replaces `topic.json` atomically and fsyncs
    /// it). Changes are serialised with creates, growths and other changes, so two
    /// concurrent incremental changes both take effect. With `validate_only`
    /// nothing is stored. Returns the new overrides.
    ///
    /// A `topic.json` renamed into place whose directory cannot then be fsynced
    /// holds the change: it is put in force, as the file says, and the error
    /// says that it is in force but may not survive a power loss. Writing the
    /// old file back would need the directory fsync that just failed, so that
    /// the broker and its file could disagree again. Until a retry (or a
    /// growth) stores the file durably the topic refuses produces
    /// ([`Topic::configs_not_durable`]): a record accepted under the new
    /// configs could be lost under the old ones a power loss brings back (a
    /// keyless record, once compaction is back).
    ///
    /// # Errors
    /// [`AlterError`]; the topic keeps its configuration, except for an
    /// [`AlterError::Storage`] that says that the change is in force.
    pub fn alter_topic_configs(
        &self,
        name: &str,
        validate_only: bool,
        change: impl FnOnce(&TopicConfig) -> std::result::Result<TopicConfig, AlterError>,
    ) -> std::result::Result<TopicConfig, AlterError> {
        let _guard = self
            .shared
            .create_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.topic(name).ok_or(AlterError::UnknownTopic)?;
        let configs = change(&old.configs)?;
        if validate_only {
            return Ok(configs);
        }
        // An unchanged set is stored all the same: the change that made it
        // may have been renamed into place without its directory fsync
        // (answered as in force but not durable), and the answer to its retry
        // must hold after a power loss too.
        let mut topic = Topic {
            configs: configs.clone(),
            ..Topic::clone(&old)
        };
        let dir = self.shared.topics_dir.join(name);
        let not_durable = topic
            .store_renamed(&dir)
            .map_err(|e| AlterError::Storage(e.to_string()))?;
        topic.configs_not_durable = not_durable.as_ref().map(ToString::to_string);
        let topic = Arc::new(topic);
        // Renamed into place: the file holds the change, and the broker
        // follows it; until the file is durable the topic takes no produce.
        if (configs != old.configs || topic.configs_not_durable != old.configs_not_durable)
            && !self.replace_topic(&old, &topic)
        {
            return Err(AlterError::UnknownTopic);
        }
        if configs != old.configs {
            Topic::limit_segments(&configs, &self.shared.config.storage, &topic.partitions);
            self.shared.config_changes.fetch_add(1, Ordering::SeqCst);
            if configs.delete_retention_ms() != old.configs.delete_retention_ms() {
                // After the new configs are in the map: a round that read the
                // old ones read the count before this (see checkpoint::compact).
                self.shared
                    .delete_retention_changes
                    .fetch_add(1, Ordering::SeqCst);
                for p in &topic.partitions {
                    p.recheck_waiting_tombstones();
                }
            }
        }
        if let Some(e) = not_durable {
            tracing::error!(topic = name, configs = ?configs.overrides(), error = %e, "changed topic configs, but topic.json may not survive a power loss; produces to the topic are refused until a retry of the change stores it durably");
            return Err(AlterError::Storage(format!(
                "the change is in force but may not survive a power loss, and the topic \
                 takes no produce until a retry of the change stores it durably: {e}"
            )));
        }
        tracing::info!(topic = name, configs = ?configs.overrides(), "changed topic configs");
        Ok(configs)
    }

    /// Deletes a topic: stops new produces to it, waits until everything already
    /// accepted for it is applied, checkpoints (so the WAL holds nothing of it past the
    /// checkpoint), then removes its files. Returns false when there is no such topic.
    ///
    /// A create of the same name waits until the delete has ended (see
    /// [`TopicManager::create_topic_with`]), and nothing still holding one of the
    /// topic's partitions changes files under its directory once it is moved away:
    /// the directory of the name is the new topic's from then on.
    ///
    /// Once the directory has moved away the topic is gone from this run. If
    /// the directory fsync after the move then fails, a power loss may bring
    /// the topic back: the delete fails with [`DeleteError::NotDurable`], and a
    /// delete of the topic again (of its name, or of its id, although it is no
    /// longer in the map) fsyncs the directory again, succeeding once that
    /// does, as the retry of a config change stores its file again (see
    /// [`TopicManager::alter_topic_configs`]).
    ///
    /// # Errors
    /// [`DeleteError`], with I/O errors naming the path; storage has failed (a
    /// WAL or segment write or sync), naming the topic's directory: no topic
    /// is deleted until a restart.
    pub async fn delete_topic(&self, name: &str) -> std::result::Result<bool, DeleteError> {
        Ok(self.delete_topic_of_id(name, None).await?.is_some())
    }

    /// Deletes topic `name` as [`TopicManager::delete_topic`] does, if its id
    /// is `id` (whatever its id is when `None`), and returns the id of the
    /// topic deleted. `None` when there is no such topic, or when the topic of
    /// that name has another id: a topic looked up by id earlier and since
    /// deleted and created again under its name is another topic, left alone.
    /// A topic whose deletion is not yet durable
    /// ([`TopicManager::undurable_delete`]) is deleted again.
    ///
    /// # Errors
    /// [`DeleteError`], with I/O errors naming the path.
    pub async fn delete_topic_of_id(
        &self,
        name: &str,
        id: Option<uuid::Uuid>,
    ) -> std::result::Result<Option<uuid::Uuid>, DeleteError> {
        // A task of its own: once begun, a delete runs to its end even when the
        // caller stops waiting for it.
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move { me.run_delete(name, id).await })
            .await
            .map_err(|e| self.task_error(&e))?
    }

    /// Makes the next topic delete wait `pause` before it moves the topic's
    /// directory away (tests: to meet a delete in progress).
    #[cfg(test)]
    pub(crate) fn pause_next_delete(&self, pause: Duration) {
        *self.shared.delete_pause.lock().unwrap() = pause;
    }

    /// Whether a delete took the pause [`TopicManager::pause_next_delete`] set
    /// (it is then waiting, or done).
    #[cfg(test)]
    pub(crate) fn delete_pause_taken(&self) -> bool {
        self.shared.delete_pause.lock().unwrap().is_zero()
    }

    fn task_error(&self, e: &tokio::task::JoinError) -> Error {
        Error::io(
            "delete topic task",
            self.shared.topics_dir.clone(),
            std::io::Error::other(e.to_string()),
        )
    }

    /// The id of topic `name`, when it is out of the map but its deletion may
    /// not survive a power loss (see [`DeleteError::NotDurable`]) and `id`
    /// (when given) is its id: a delete of it again makes its deletion durable.
    pub fn undurable_delete(&self, name: &str, id: Option<uuid::Uuid>) -> Option<uuid::Uuid> {
        self.shared
            .undurable_deletes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|d| d.name == name && id.is_none_or(|id| id == d.id))
            .map(|d| d.id)
    }

    /// The name of the topic of id `id` whose deletion may not survive a power
    /// loss, if there is one (see [`TopicManager::undurable_delete`]).
    pub fn undurable_delete_of_id(&self, id: uuid::Uuid) -> Option<String> {
        self.shared
            .undurable_deletes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.name.clone())
    }

    /// Deletes again topic `name` (of id `id`, when given), out of the map but
    /// whose deletion may not survive a power loss (blocking): fsyncs the
    /// directory it moved out of, then finishes the delete. `None` when there
    /// is no such deletion.
    fn delete_again(
        &self,
        name: &str,
        id: Option<uuid::Uuid>,
    ) -> std::result::Result<Option<uuid::Uuid>, DeleteError> {
        let Some(deleted) = self.undurable_delete(name, id) else {
            return Ok(None);
        };
        let durable = sync_dir(&self.shared.topics_dir).and_then(|()| sync_dir(&self.trash_dir()));
        if let Err(source) = durable {
            tracing::error!(topic = %name, error = %source, "deleting the topic again failed; a power loss may still bring it back");
            return Err(DeleteError::NotDurable {
                topic: name.to_string(),
                id: deleted,
                source: Box::new(source),
            });
        }
        let taken = {
            let mut undurable = self
                .shared
                .undurable_deletes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            undurable
                .iter()
                .position(|d| d.name == name && d.id == deleted)
                .map(|i| undurable.swap_remove(i))
        };
        // Finished by the delete that took it (another may have meanwhile, or
        // a retention pass).
        if let Some(d) = taken {
            finish_delete(&self.shared, d.name, d.trash, d.positions_dropped);
        }
        Ok(Some(deleted))
    }

    /// Where deletes move topic directories: `topics-deleted/` in the data
    /// directory, emptied by the next start.
    fn trash_dir(&self) -> PathBuf {
        trash_dir(&self.shared)
    }

    /// Waits, holding `deleting` (the names reserved by deletes) between
    /// looks, until `busy` is false or `wait` (at most
    /// [`CREATE_WAITS_FOR_DELETE`]) has passed (`None`).
    fn wait_for_deletes<'a>(
        &self,
        mut deleting: std::sync::MutexGuard<'a, BTreeSet<String>>,
        busy: impl Fn(&BTreeSet<String>) -> bool,
        wait: Duration,
    ) -> Option<std::sync::MutexGuard<'a, BTreeSet<String>>> {
        let deadline = Instant::now() + wait;
        while busy(&deleting) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            deleting = self
                .shared
                .delete_ended
                .wait_timeout(deleting, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Some(deleting)
    }

    /// Takes topic `name` out of the map, reserves the name until the returned
    /// [`Deleting`] is dropped, and marks the partitions deleted (blocking: waits
    /// for `create_lock`, which a create holds while it writes files). `None`
    /// when there is no such topic, or its id is not `id` (when given), or a
    /// failed delete of the name has not ended within [`CREATE_WAITS_FOR_DELETE`].
    fn take_for_delete(
        &self,
        name: &str,
        id: Option<uuid::Uuid>,
    ) -> Option<(Arc<Topic>, Deleting)> {
        let deleting = self
            .shared
            .create_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A delete that failed puts the topic back in the map before its
        // reservation of the name ends: another delete taking it meanwhile
        // would share that reservation, and the first one's end would free
        // the name while the second still runs (a create could then make a
        // topic whose positions the second delete drops). It waits for the
        // first to end.
        let mut deleting = self.wait_for_deletes(
            deleting,
            |d| d.contains(name) && self.topic(name).is_some(),
            CREATE_WAITS_FOR_DELETE,
        )?;
        let topic = {
            let mut topics = self
                .shared
                .topics
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let topic = Arc::clone(topics.get(name)?);
            if id.is_some_and(|id| id != topic.id) {
                return None;
            }
            // On the delete list before it leaves the map: a checkpoint reads
            // the map first, then the list, so it finds the topic in one of them.
            self.shared
                .deleting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::clone(&topic));
            topics.remove(name);
            topic
        };
        deleting.insert(name.to_string());
        // Out of the map and marked deleted, each partition wakes the long
        // polls waiting on it, which find it gone and answer, as Kafka
        // completes a delayed fetch whose partition left the broker (not at
        // its deadline, nor at the first append to a topic created again under
        // the name).
        for p in &topic.partitions {
            p.mark_deleted();
        }
        let reserved = Deleting {
            shared: Arc::clone(&self.shared),
            name: name.to_string(),
            topic: Arc::clone(&topic),
        };
        Some((topic, reserved))
    }

    async fn run_delete(
        self,
        name: String,
        id: Option<uuid::Uuid>,
    ) -> std::result::Result<Option<uuid::Uuid>, DeleteError> {
        self.refuse_delete_if_failed(&name)?;
        let me = self.clone();
        let n = name.clone();
        let taken = tokio::task::spawn_blocking(move || me.take_for_delete(&n, id))
            .await
            .map_err(|e| self.task_error(&e))?;
        let Some((topic, reserved)) = taken else {
            let me = self.clone();
            return tokio::task::spawn_blocking(move || me.delete_again(&name, id))
                .await
                .map_err(|e| self.task_error(&e))?;
        };
        let deleted = topic.id;
        #[cfg(test)]
        if self
            .shared
            .fail_after_take_for_delete
            .swap(false, Ordering::SeqCst)
        {
            fail(&self.shared, "a WAL append failed (injected)".into());
        }
        let (tx, rx) = oneshot::channel();
        if self.shared.jobs.send(Job::Barrier(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || -> std::result::Result<(), DeleteError> {
            // Released last, on every path (even when this task is dropped
            // unrun): the name is free again once nothing of the delete is left.
            let _reserved = reserved;
            // Retention, DeleteRecords and compaction of the topic in progress
            // end first; later ones find the partitions deleted and do nothing.
            let retired: Vec<_> = topic.partitions.iter().map(|p| p.retire()).collect();
            let from = me.shared.topics_dir.join(&name);
            // A produce to the topic that failed before the barrier failed storage.
            if let Err(e) = me.refuse_delete_if_failed(&name) {
                // Synced first, as on the paths below: the topic may not come
                // back into the map (its reopen can fail), and the checkpoints,
                // which go on after a WAL failure, sync only the topics there
                // while they move the WAL past the entries it applied.
                for p in &topic.partitions {
                    if let Err(e) = p.sync() {
                        fail_segments(&me.shared, format!("segment sync failed: {e}"));
                        break;
                    }
                }
                drop(retired);
                me.restore_topic(&name, &from, &topic);
                return Err(e.into());
            }
            // The checkpoint moves the WAL's checkpoint past the topic's entries
            // but syncs only the topics in the map, which this one has left. Until
            // the move of its directory below is durable a power loss brings the
            // topic back, and without this sync it would come back without the
            // batches no sync covered, their WAL entries gone: silently short.
            #[cfg(test)]
            std::thread::sleep(*me.shared.delete_sync_pause.lock().unwrap());
            for p in &topic.partitions {
                if let Err(e) = p.sync() {
                    fail_segments(&me.shared, format!("segment sync failed: {e}"));
                    // Kept, as after any delete that failed before the move:
                    // out of the map, its name free, a create would take its
                    // directory, and with it what a restart recovers.
                    drop(retired);
                    me.restore_topic(&name, &from, &topic);
                    return Err(e.into());
                }
            }
            let moved = me.checkpoint().and_then(|()| {
                #[cfg(test)]
                {
                    let pause = std::mem::take(&mut *me.shared.delete_pause.lock().unwrap());
                    std::thread::sleep(pause);
                }
                // Durably: once the move is, the trash is what tells a start
                // that the topic's committed positions, dropped next, are a
                // deleted topic's (see `check_lost_positions`).
                let trash = me.trash_dir();
                create_dir_durable(&trash)?;
                // A long name by its key: with the suffix a 249-byte name
                // would pass the file system's 255.
                let to = trash.join(trash_entry_name(&name));
                std::fs::rename(&from, &to).map_err(|e| Error::io("rename", &from, e))?;
                Ok(to)
            });
            let to = match moved {
                Ok(to) => to,
                Err(e) => {
                    // The directory is where it was, so a restart would bring
                    // the topic back: it comes back now, as a restart would
                    // open it, rather than being gone until then.
                    drop(retired);
                    me.restore_topic(&name, &from, &topic);
                    return Err(e.into());
                }
            };
            // Both ends of the move.
            let durable =
                sync_dir(&me.shared.topics_dir).and_then(|()| sync_dir(&me.trash_dir()));
            let positions_dropped = drop_positions(&me.shared, &name);
            if let Err(source) = durable {
                // Moved: gone from this run, as a restart without a power
                // loss finds it, and its name free. Its files stay in the
                // trash (the next start removes them) until a delete of it
                // again makes the move durable.
                tracing::error!(topic = %name, error = %source, "deleted topic, but a power loss may bring it back");
                me.shared
                    .undurable_deletes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(UndurableDelete {
                        name: name.clone(),
                        id: topic.id,
                        trash: to,
                        positions_dropped,
                    });
                return Err(DeleteError::NotDurable {
                    topic: name,
                    id: topic.id,
                    source: Box::new(source),
                });
            }
            finish_delete(&me.shared, name, to, positions_dropped);
            Ok(())
        })
        .await
        .map_err(|e| self.task_error(&e))??;
        Ok(Some(deleted))
    }

    /// Puts topic `name` back in the map, opened from `dir` as a start would
    /// open it, after its delete failed before its directory moved (blocking);
    /// `old` is the topic as the delete took it. The delete still holds the
    /// name, so nothing else can have taken it. Damaged segments the open
    /// finds, the newest included, are judged as a start judges them, without
    /// the WAL (see [`check_reopened`]). If the topic cannot be
    /// opened, or strict mode refuses such a segment, it stays out of the map
    /// until a restart, its files left as found and its recovery points kept.
    fn restore_topic(&self, name: &str, dir: &Path, old: &Topic) {
        let configs_not_durable = old.configs_not_durable.clone();
        let loaded = load_topic(
            dir,
            name,
            &self.shared.config.storage,
            &self.shared.segment_files,
            true,
        )
        .and_then(|t| {
            if let Some(t) = &t {
                check_reopened(t, old, self.shared.config.wal.engine.recovery_mode)?;
            }
            Ok(t)
        });
        // A tolerant judgement may have cut the log: as a start does, a log
        // start and committed positions beyond the new end come down to it,
        // so that the offsets appended next are served and read.
        let loaded = loaded.and_then(|t| {
            let cut = t.as_ref().is_some_and(|t| {
                t.partitions
                    .iter()
                    .zip(&old.partitions)
                    .any(|(p, was)| p.log_end_offset() < was.log_end_offset())
            });
            if let Some(t) = t.as_ref().filter(|_| cut) {
                for p in &t.partitions {
                    p.settle_log_start()?;
                }
                let ends: Vec<i64> = t.partitions.iter().map(|p| p.log_end_offset()).collect();
                self.shared
                    .offsets
                    .lower_beyond_log_ends(|topic, partition| {
                        (topic == name)
                            .then(|| ends.get(usize::try_from(partition).ok()?).copied())
                            .flatten()
                    })?;
            }
            Ok(t)
        });
        if !matches!(loaded, Ok(Some(_))) {
            // Still the delete's (on its list): no checkpoint has missed it.
            self.shared
                .unopened
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name.to_string());
        }
        match loaded {
            Ok(Some(mut t)) => {
                // Read back as it is, a config change whose file may not
                // survive a power loss still takes no produce.
                t.configs_not_durable = configs_not_durable;
                self.shared
                    .topics
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.to_string(), Arc::new(t));
                tracing::warn!(topic = %name, "topic delete failed; the topic is kept");
            }
            Ok(None) => {
                tracing::error!(topic = %name, dir = %dir.display(), "topic delete failed and the topic has no topic.json; it is gone until a restart");
            }
            Err(e) => {
                tracing::error!(topic = %name, error = %e, "topic delete failed and the topic cannot be opened again; it is gone until a restart");
            }
        }
    }

    /// Validates `records` (one record batch, see [`batch::validate_produce`]) and
    /// queues them for `topic`/`partition`, waiting up to
    /// `timeout` for pipeline capacity. The returned receiver resolves to the assigned
    /// base offset once the batch is durable per the sync mode and readable.
    ///
    /// # Errors
    /// See [`ProduceError`].
    pub async fn submit(
        &self,
        topic: &str,
        partition: i32,
        records: &[u8],
        timeout: Duration,
    ) -> std::result::Result<oneshot::Receiver<std::result::Result<i64, ProduceError>>, ProduceError>
    {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(ProduceError::ShuttingDown);
        }
        if let Some(f) = self.shared.failed.get() {
            return Err(ProduceError::Storage(f.clone()));
        }
        let t = self
            .topic(topic)
            .ok_or(ProduceError::UnknownTopicOrPartition)?;
        if let Some(why) = &t.configs_not_durable {
            return Err(ProduceError::ConfigsNotDurable(format!(
                "a change to the topic's configs may not survive a power loss ({why}); \
                 produces are refused until a retry of the change stores it durably"
            )));
        }
        if let Some(why) = self.shared.reserve.short() {
            if self.shared.reserve.retake_due() {
                // Looked for on a blocking thread (statvfs, fallocate); this
                // produce is refused all the same, and its retry finds the
                // answer.
                let me = self.clone();
                tokio::task::spawn_blocking(move || me.shared.reserve.refill());
            }
            return Err(ProduceError::SpaceShort(why));
        }
        let p = usize::try_from(partition)
            .ok()
            .and_then(|i| t.partitions.get(i).cloned())
            .ok_or(ProduceError::UnknownTopicOrPartition)?;
        // Refused for its size before anything is decompressed or walked, as
        // Kafka refuses a batch over `max.message.bytes` before its CRC: its
        // header is enough. A batch answered MESSAGE_TOO_LARGE is split by
        // the client (the Java producer does); one answered REQUEST_TIMED_OUT
        // while the decompression budget was busy, or CORRUPT_MESSAGE, was
        // sent again whole.
        // As Kafka, only for one batch alone with a base offset of 0 (a
        // malformed request gets validation's answer, INVALID_RECORD).
        if let (Some(max), Ok(head)) = (t.configs.max_message_bytes(), batch::parse_header(records))
        {
            if head.len as u64 > max && head.base_offset == 0 && head.len == records.len() {
                return Err(ProduceError::TooLarge(format!(
                    "a batch of {} bytes is larger than topic {topic}'s max.message.bytes ({max})",
                    head.len
                )));
            }
        }
        if let Some(w) = &self.shared.wal {
            let overhead = WAL_ENTRY_OVERHEAD + topic.len() as u64;
            if records.len() as u64 + overhead > w.max_entry_bytes() {
                return Err(ProduceError::TooLarge(format!(
                    "{} bytes of batches for one partition exceed the WAL entry limit ({} bytes)",
                    records.len(),
                    w.max_entry_bytes().saturating_sub(overhead)
                )));
            }
        }
        // Decompressing or walking a large batch on a runtime worker would stall
        // every connection that worker serves: the multi-threaded runtime (the
        // server's) hands the worker's other tasks to another thread meanwhile.
        let may_block = batch::validation_may_block(records)
            && tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread;
        // A compressed batch waits for room in the decompression budget no
        // longer than the request may take.
        let deadline = Instant::now().checked_add(timeout);
        // Each record is judged as validation walks it, so that a refusal
        // names every record at fault, as Kafka's does.
        let rules = batch::RecordRules {
            keyed: t.configs.compact(),
            now: segment::now_ms(),
            ahead_ms: t.configs.timestamp_after_max_ms(),
            behind_ms: t.configs.timestamp_before_max_ms(),
        };
        // Only a compressed batch may wait (for the decompression budget):
        // a large uncompressed one takes no place, so that it never waits
        // behind those.
        let produced = if may_block && !batch::is_compressed(records) {
            tokio::task::block_in_place(|| {
                batch::validate_produce_by(records, deadline, Some(&rules))
            })
        } else if may_block {
            let place = self.shared.blocking_validations.acquire();
            let place = match deadline {
                Some(d) => tokio::time::timeout_at(tokio::time::Instant::from_std(d), place)
                    .await
                    .map_err(|_| ProduceError::Timeout)?,
                None => place.await,
            }
            .map_err(|_| ProduceError::ShuttingDown)?;
            let produced = tokio::task::block_in_place(|| {
                #[cfg(test)]
                let _inside = self.shared.in_blocking_validation();
                batch::validate_produce_by(records, deadline, Some(&rules))
            });
            drop(place);
            produced
        } else {
            batch::validate_produce_by(records, deadline, Some(&rules))
        }
        .map_err(|e| match e {
            batch::BatchError::DecompressionBusy => ProduceError::Timeout,
            e => ProduceError::InvalidBatch(e),
        })?;
        #[cfg(test)]
        std::thread::sleep(std::mem::take(
            &mut *self.shared.validate_pause.lock().unwrap(),
        ));
        // As Kafka (4.0 on) refuses by default, with `log.message.timestamp.after.max.ms`
        // at one hour: a timestamp far ahead would keep its segment, and every
        // later one, from ever expiring by time. A topic may set its own bound,
        // and one for timestamps behind the clock (none by default). Records
        // without timestamps (-1) are not judged, as in Kafka.
        // Each record was judged as validation walked it (see
        // [`batch::RecordRules::timestamp_refused`]), a record without a key
        // for a compacted topic by its key alone: as Kafka, INVALID_TIMESTAMP
        // only when some record was refused for its timestamp.
        // The message names a timestamp refused, not one of a record
        // refused for its key.
        if let Some((oldest, newest)) = produced.timestamp_refused {
            let (now, ahead) = (rules.now, rules.ahead_ms);
            let message = if newest > now.saturating_add(ahead) {
                format!(
                    "record timestamp {newest} is more than {ahead} ms ahead of the broker's clock (topic {topic}'s message.timestamp.after.max.ms)"
                )
            } else if now.checked_sub(oldest).is_none() {
                // Kafka judges `now - timestamp` in 64 bits: a timestamp so far
                // behind that the difference overflows reads to Kafka as far
                // ahead: refused.
                format!(
                    "record timestamp {oldest} is more than {} ms behind the broker's clock",
                    i64::MAX
                )
            } else {
                let behind = rules.behind_ms.unwrap_or(i64::MAX);
                format!(
                    "record timestamp {oldest} is more than {behind} ms behind the broker's clock (topic {topic}'s message.timestamp.before.max.ms)"
                )
            };
            return Err(ProduceError::InvalidTimestamp {
                message,
                records: produced.faults.iter().map(|&(i, _)| i).collect(),
            });
        }
        // A batch flagged LogAppendTime: Kafka reads each of its records'
        // timestamps as the batch's stated largest, and with none stated (-1)
        // refuses the flag as a producer's to set. One with a stated timestamp
        // is stored as CreateTime ([`batch::rewrite_at_append`]).
        if produced.info.attributes & batch::ATTR_LOG_APPEND_TIME != 0
            && produced.info.max_timestamp == -1
        {
            // Every record is refused (Kafka reads each one's timestamp as
            // the batch's: none).
            let count = usize::try_from(produced.info.last_offset_delta).map_or(0, |d| {
                d.saturating_add(1)
                    .min(batch::MAX_LISTED_FAULTS)
                    .min(records.len() / batch::BYTES_PER_LISTED_FAULT)
            });
            return Err(ProduceError::InvalidTimestamp {
                message: format!(
                    "a batch for topic {topic} is flagged LogAppendTime without a timestamp; a producer should not set the timestamp type to LogAppendTime"
                ),
                records: (0..count as i32).collect(),
            });
        }
        let mut info = produced.info;
        info.max_timestamp = produced.max_timestamp;
        let infos = vec![info];
        // Control batches first: a transaction marker is transactional too, and
        // Kafka refuses it as a record no client may write.
        if infos
            .iter()
            .any(|i| i.attributes & batch::ATTR_CONTROL != 0)
        {
            return Err(ProduceError::ControlBatch);
        }
        if infos
            .iter()
            .any(|i| i.attributes & batch::ATTR_TRANSACTIONAL != 0)
        {
            return Err(ProduceError::Transactional);
        }
        // A compacted topic keeps each key's newest record, so a record without
        // a key has no place in it: Kafka refuses it with INVALID_RECORD, and so
        // does this broker, compressed batches included. Validation walked every
        // record (offsets counted from 0, never from the client's base offset).
        if !produced.faults.is_empty() {
            return Err(ProduceError::InvalidRecord {
                message: format!("compacted topic {topic} cannot accept a record without a key"),
                records: produced.faults.iter().map(|&(i, _)| i).collect(),
            });
        }
        // As Kafka's append refuses it, after validation: a segment holds a
        // batch whole.
        let segment_bytes = t.configs.segment_bytes(&self.shared.config.storage);
        if let Some(b) = infos.iter().find(|i| i.len as u64 > segment_bytes) {
            return Err(ProduceError::BatchTooLarge(format!(
                "Message batch size is {} bytes in append to partition {topic}-{partition} which \
                 exceeds the maximum configured segment size of {segment_bytes}.",
                b.len
            )));
        }
        let (tx, rx) = oneshot::channel();
        let want = u32::try_from(records.len().min(MAX_INFLIGHT_BYTES)).unwrap_or(u32::MAX);
        let enqueue = async {
            // Memory stays bounded: wait for in-flight bytes to drain below the cap.
            let permit = Arc::clone(&self.shared.inflight)
                .acquire_many_owned(want)
                .await
                .map_err(|_| ProduceError::ShuttingDown)?;
            let mut data = records.to_vec();
            // The header's largest timestamp is what retention, segment rolls and
            // ListOffsets by time go by: it is made the records' own, as Kafka's
            // LogValidator makes it, whatever the client wrote there; so are the
            // timestamp type and the leader epoch.
            batch::rewrite_at_append(&mut data, produced.max_timestamp);
            let job = Job::Produce {
                partition: p,
                data,
                infos,
                reply: tx,
                permit,
            };
            self.shared
                .jobs
                .send(job)
                .await
                .map_err(|_| ProduceError::ShuttingDown)
        };
        // What the request has left after the wait for the decompression
        // budget: the two waits share one deadline (each had `timeout`, so a
        // compressed batch could wait twice as long as its client, which by
        // then had given up and would retry it into a duplicate). Past the
        // deadline a batch still goes in if there is room at once.
        let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(left, enqueue).await {
            Ok(Ok(())) => Ok(rx),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProduceError::Timeout),
        }
    }

    /// Takes all of the pipeline's capacity until the permit is dropped, so that
    /// every produce waits for room (tests of the capacity wait).
    #[cfg(test)]
    pub(crate) fn hold_capacity(&self) -> tokio::sync::OwnedSemaphorePermit {
        Arc::clone(&self.shared.inflight)
            .try_acquire_many_owned(u32::try_from(MAX_INFLIGHT_BYTES).unwrap_or(u32::MAX))
            .expect("nothing in flight")
    }

    /// Makes the next produce's validation take at least `pause` (tests: a
    /// wait for the decompression budget).
    #[cfg(test)]
    pub(crate) fn pause_next_validation(&self, pause: Duration) {
        *self.shared.validate_pause.lock().unwrap() = pause;
    }

    /// Makes every produce validation that holds a thread take `pause` at
    /// least (tests).
    #[cfg(test)]
    pub(crate) fn pause_blocking_validations(&self, pause: Duration) {
        *self.shared.blocking_validation.0.lock().unwrap() = pause;
    }

    /// The most produce validations that held a thread at once (tests).
    #[cfg(test)]
    pub(crate) fn most_blocking_validations(&self) -> usize {
        self.shared.blocking_validation.2.load(Ordering::SeqCst)
    }

    /// A new producer id for an idempotent producer (blocking: may write and fsync
    /// the id reservation).
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn allocate_producer_id(&self) -> Result<i64> {
        self.shared.producer_ids.allocate()
    }

    /// Runs one compaction pass over every compacted topic now (blocking: reads
    /// and rewrites segments), as the cleaner thread does every
    /// `cleaner_backoff_ms`. Failures are logged per partition.
    pub fn compact(&self) -> compaction::CompactionStats {
        checkpoint::compact(&self.shared)
    }

    /// Applies log retention to every partition now (blocking: deletes files and
    /// fsyncs directories); the checkpoint thread does so every
    /// `retention_check_interval_ms`. Returns the segments and bytes deleted.
    ///
    /// # Errors
    /// I/O errors naming the path.
    pub fn apply_retention(&self) -> Result<(usize, u64)> {
        checkpoint::retention(&self.shared)
    }

    /// Syncs every segment, then checkpoints the WAL at the last applied sequence
    /// (blocking: fsyncs).
    ///
    /// # Errors
    /// I/O errors; the WAL's checkpoint errors.
    pub fn checkpoint(&self) -> Result<()> {
        checkpoint::checkpoint(&self.shared)
    }

    /// Stops the pipeline after everything accepted is applied, syncs the segments,
    /// checkpoints and closes the WAL (blocking; call from a blocking context).
    ///
    /// # Errors
    /// [`Error::StorageThreadPanicked`] naming the storage threads that
    /// panicked, if any did (storage failed then, so no final checkpoint is
    /// made); otherwise the first error from the final sync, checkpoint or WAL
    /// close.
    pub fn shutdown(&self) -> Result<()> {
        if self.shared.closing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _ = self.shared.jobs.blocking_send(Job::Stop);
        // One stop for each of the checkpoint and cleaner threads.
        let _ = self.stop_threads.try_send(());
        let _ = self.stop_threads.try_send(());
        let threads: Vec<_> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        let mut panicked = Vec::new();
        for t in threads {
            let name = t.thread().name().unwrap_or("storage").to_string();
            if t.join().is_err() {
                panicked.push(name);
            }
        }
        let r = self.checkpoint();
        let closed = match &self.shared.wal {
            Some(w) => w.clone().close(),
            None => Ok(()),
        };
        tracing::info!(
            applied_sequence = self.shared.applied_seq.load(Ordering::Acquire),
            "storage shut down"
        );
        if panicked.is_empty() {
            return r.and(closed);
        }
        // The panic is what the caller must see; the final checkpoint was
        // refused because of it.
        if let Err(e) = r.and(closed) {
            tracing::error!(error = %e, "the final checkpoint or WAL close failed after a storage thread panicked");
        }
        Err(Error::StorageThreadPanicked {
            thread: panicked.join(", "),
        })
    }
}

/// Drops the committed positions in topic `name`, whose directory moved away,
/// before the name is free (blocking): consumers of a topic created again
/// under the name start where their reset policy says, not at positions in
/// data that is gone. One that fails is dropped by the next retention pass
/// ([`finish_deletes`]), the next start or a create of the name, for which
/// the topic's directory stays in the trash. Done whether or not the move is
/// durable: once the name is free they could be a new topic's. Returns
/// whether they were dropped.
fn drop_positions(shared: &Shared, name: &str) -> bool {
    match shared
        .reserve
        .retry(|| shared.offsets.delete_topic_positions(|t| t == name))
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(topic = %name, error = %e, "could not drop the deleted topic's committed positions; the next retention pass tries again (its files are removed; only its empty directory stays in the trash until then)");
            false
        }
    }
}

/// Removes `trash`, where the directory of deleted topic `name` moved, once
/// the move is durable and the topic's positions are dropped (blocking): the
/// topic is deleted for good. Whether it is gone.
fn remove_trash(name: &str, trash: &Path) -> bool {
    match std::fs::remove_dir_all(trash) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %trash.display(), error = %e, "could not remove a deleted topic's files; the next retention pass tries again");
            return false;
        }
    }
    tracing::info!(topic = %name, "deleted topic");
    true
}

/// Removes what the trash entry `trash` of deleted topic `name` holds (its
/// partitions' files), keeping the entry itself (blocking): its name is what
/// tells a start that committed positions in the topic are a deleted one's,
/// and it must stay while they do, but the files need not. The positions are
/// dropped by rewriting their group's file, which needs free space: on a full
/// disk the files were kept for the drop, and the drop failed for want of the
/// very space they held. Call only once the move into the trash is durable.
fn free_trash_entry(name: &str, trash: &Path) {
    let emptied = std::fs::read_dir(trash).and_then(|entries| {
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    });
    match emptied {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(topic = %name, dir = %trash.display(), error = %e, "could not remove a deleted topic's files; the next retention pass tries again");
        }
    }
}

/// Ends the delete of topic `name`, whose directory moved to `trash` durably:
/// removes the trash once the positions are dropped, or keeps the delete for
/// [`finish_deletes`] to try again, its files removed (see
/// [`free_trash_entry`]).
fn finish_delete(shared: &Shared, name: String, trash: PathBuf, positions_dropped: bool) {
    if positions_dropped && remove_trash(&name, &trash) {
        return;
    }
    if !positions_dropped {
        free_trash_entry(&name, &trash);
    }
    shared
        .unfinished_deletes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(UnfinishedDelete {
            name,
            trash,
            positions_dropped,
        });
}

/// Tries again the deletes of this run whose positions could not be dropped
/// or whose files could not be removed (a full disk, a passing I/O error), so
/// that their space comes back without a restart (run by each retention
/// pass). A position drop runs under `create_lock`, and not while a delete
/// of the name is in progress: no create of the name runs meanwhile, so
/// only the deleted topic's positions go. A topic of the name created since
/// had them dropped by its create.
///
/// Likewise the start's drop of the positions in every topic without a
/// directory, when it failed: what the start found in the trash goes once
/// it succeeds. A name reserved (being created or deleted), in the map or
/// in `unopened` keeps its positions.
fn finish_deletes(shared: &Shared) {
    finish_undurable_deletes(shared);
    let pending = std::mem::take(
        &mut *shared
            .unfinished_deletes
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let start_trash = std::mem::take(
        &mut *shared
            .start_trash
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    if pending.is_empty() && start_trash.is_empty() {
        return;
    }
    let reserved = shared
        .create_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if !start_trash.is_empty() {
        let start_trash = finish_start_trash(shared, &reserved, start_trash);
        shared
            .start_trash
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(start_trash);
    }
    let mut kept = Vec::new();
    for mut d in pending {
        if !d.positions_dropped && !reserved.contains(&d.name) {
            // Created again since: in the map, or out of it until a restart
            // after a failed delete of its own (`unopened`, its positions
            // kept for it).
            let created = shared
                .topics
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&d.name)
                .is_some()
                || shared
                    .unopened
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(&d.name);
            d.positions_dropped = created || drop_positions(shared, &d.name);
        }
        if !(d.positions_dropped && remove_trash(&d.name, &d.trash)) {
            if !d.positions_dropped {
                free_trash_entry(&d.name, &d.trash);
            }
            kept.push(d);
        }
    }
    drop(reserved);
    shared
        .unfinished_deletes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(kept);
}

/// Where deletes move topic directories: `topics-deleted/` in the data
/// directory, emptied by the next start.
fn trash_dir(shared: &Shared) -> PathBuf {
    shared.config.storage.data_dir.join("topics-deleted")
}

/// Makes the deletes whose directory fsync failed durable (run by each
/// retention pass, from [`finish_deletes`]): fsyncs both ends of their moves
/// again, and once that succeeds finishes each as any delete (its files go
/// from the trash). Before, they waited for a delete of the same topic again,
/// or a restart, however many fsyncs succeeded since. A delete of one again
/// after that finds no such topic, as for any topic deleted.
fn finish_undurable_deletes(shared: &Shared) {
    let list = || {
        shared
            .undurable_deletes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    };
    // Those listed before the fsyncs, whose moves they make durable; taken
    // after them (a delete of one again may take it meanwhile). The list's
    // lock is not held across the fsyncs: DeleteTopics looks at it.
    let before: Vec<(String, uuid::Uuid)> = list().iter().map(|d| (d.name.clone(), d.id)).collect();
    if before.is_empty() {
        return;
    }
    if let Err(e) = sync_dir(&shared.topics_dir).and_then(|()| sync_dir(&trash_dir(shared))) {
        tracing::warn!(error = %e, "the deleted topics' directory moves are still not durable");
        return;
    }
    let done: Vec<UndurableDelete> = {
        let mut undurable = list();
        let (done, kept) = std::mem::take(&mut *undurable)
            .into_iter()
            .partition(|d| before.iter().any(|(n, id)| *n == d.name && *id == d.id));
        *undurable = kept;
        done
    };
    for d in done {
        tracing::info!(topic = %d.name, "the topic's delete is durable now");
        finish_delete(shared, d.name, d.trash, d.positions_dropped);
    }
}

/// The part of [`finish_deletes`] for what the start left in the trash,
/// `start_trash`, with `create_lock` held (`reserved`): what is still there.
fn finish_start_trash(
    shared: &Shared,
    reserved: &BTreeSet<String>,
    start_trash: Vec<PathBuf>,
) -> Vec<PathBuf> {
    // Stable while `create_lock` is held: a create holds it throughout, and
    // a failed delete puts its topic back (in the map or `unopened`) while
    // the name is reserved.
    let mut kept_names: BTreeSet<String> = shared
        .topics
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .cloned()
        .collect();
    kept_names.extend(
        shared
            .unopened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned(),
    );
    match shared
        .offsets
        .delete_topic_positions(|t| !kept_names.contains(t) && !reserved.contains(t))
    {
        Ok(n) => {
            if n > 0 {
                tracing::info!(
                    positions = n,
                    "dropped committed positions in deleted topics"
                );
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not drop committed positions in deleted topics; the next retention pass tries again; only the deleted topics' (empty) directories stay in the trash until then");
            return start_trash;
        }
    }
    start_trash
        .into_iter()
        .filter(|dir| match remove_entry(dir) {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a deleted topic's files; the next retention pass tries again");
                true
            }
        })
        .collect()
}

#[cfg(test)]
thread_local! {
    /// Whether a start's removal of the trash's entries fails on this thread
    /// (tests: as for a directory the broker's user cannot write).
    static FAIL_TRASH_REMOVAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The failure [`FAIL_TRASH_REMOVAL`] makes a start's removal of a trash
/// entry meet, the entry left as it is.
#[cfg(test)]
fn injected_trash_failure() -> Option<std::io::Error> {
    FAIL_TRASH_REMOVAL
        .with(std::cell::Cell::get)
        .then(|| std::io::Error::from(std::io::ErrorKind::PermissionDenied))
}

/// Removes the trash entry `entry`: a directory with all it holds, or a
/// file (the trash holds directories, but a file found there is removed
/// too).
fn remove_entry(entry: &Path) -> std::io::Result<()> {
    if entry.is_dir() {
        std::fs::remove_dir_all(entry)
    } else {
        std::fs::remove_file(entry)
    }
}

/// A topic name being deleted, reserved in `create_lock` until dropped.
struct Deleting {
    shared: Arc<Shared>,
    name: String,
    topic: Arc<Topic>,
}

impl Drop for Deleting {
    fn drop(&mut self) {
        self.shared
            .deleting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|t| !Arc::ptr_eq(t, &self.topic));
        self.shared
            .create_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.name);
        self.shared.delete_ended.notify_all();
    }
}

/// Whether `dir` holds a WAL to replay: `current.wal`, or archived files only
/// (a stop between a rotation's two renames leaves no `current.wal`).
///
/// # Errors
/// A path that cannot be looked up (a permission, an I/O error, a symbolic
/// link leading nowhere), naming it: whether a WAL is there is unknown, and
/// going on without its entries would lose them.
fn wal_present(dir: &Path) -> Result<bool> {
    if !dir.try_exists().map_err(|e| Error::io("stat", dir, e))? {
        // `try_exists` follows links and takes one leading nowhere for nothing.
        return match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("stat", dir, e)),
            Ok(_) => Err(Error::io(
                "stat",
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "a symbolic link to nothing where the WAL directory belongs",
                ),
            )),
        };
    }
    let current = dir.join(crate::wal::files::CURRENT);
    if current
        .try_exists()
        .map_err(|e| Error::io("stat", &current, e))?
    {
        return Ok(true);
    }
    Ok(!crate::wal::files::list_archived(dir)?.is_empty())
}

/// Whether the entry `name` of the topics directory is a topic's directory.
/// What is not (a file, a name Kafka refuses) is logged and skipped.
///
/// # Errors
/// An entry whose type cannot be learnt (an I/O error, a symbolic link leading
/// nowhere), naming it: it may be a topic, and a start without it would drop
/// its committed positions and skip its WAL entries as orphaned.
fn topic_dir_entry(entry: &std::fs::DirEntry, name: &str) -> Result<bool> {
    let path = entry.path();
    if name.ends_with(STRAY_SUFFIX) && name.contains('~') {
        tracing::warn!(path = %path.display(), "a topic directory set aside by an earlier start (its topic.json was missing); skipped");
        return Ok(false);
    }
    if !valid_topic_name(name) {
        tracing::warn!(path = %path.display(), "not a topic name; skipped");
        return Ok(false);
    }
    let kind = match entry.file_type() {
        Ok(kind) => kind,
        // Gone since the listing (a file system that gives no type with the
        // listing looks it up): there is nothing there to recover.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "gone since the directory was listed; skipped");
            return Ok(false);
        }
        Err(e) => return Err(Error::io("stat", &path, e)),
    };
    let is_dir = if kind.is_symlink() {
        // What the link leads to; nowhere is an error.
        std::fs::metadata(&path)
            .map_err(|e| Error::io("stat (following the link)", &path, e))?
            .is_dir()
    } else {
        kind.is_dir()
    };
    if !is_dir {
        tracing::warn!(path = %path.display(), "not a directory, so not a topic; skipped");
    }
    Ok(is_dir)
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::io("spawn thread", PathBuf::from(name), e))
}

/// The storage threads, by name.
const SUBMIT_THREAD: &str = "streamline-submit";
const APPLY_THREAD: &str = "streamline-apply";
const CHECKPOINT_THREAD: &str = "streamline-checkpoint";
const CLEANER_THREAD: &str = "streamline-cleaner";

/// Runs `body` on `input` (the thread's channel), a storage thread's work.
/// When it panics (a bug), storage fails with a message naming `thread`, as
/// after a failed segment write (see [`fail_segments`]: the thread may have
/// left a partition half updated, so no checkpoint is made until a restart,
/// which recovers from the WAL); then `after_panic` answers what `input` still
/// holds, and the panic goes on, so that [`TopicManager::shutdown`] finds it
/// when it joins the thread. Without this, a dead submit thread made every produce "shutting
/// down" (retried by clients until their delivery timeout), a dead apply thread
/// left produces unanswered, a dead checkpoint thread stopped checkpoints
/// silently, and the broker still exited 0.
fn guarded<I>(
    shared: &Shared,
    thread: &'static str,
    mut input: I,
    body: impl FnOnce(&mut I),
    after_panic: impl FnOnce(&mut I),
) {
    let run = std::panic::AssertUnwindSafe(|| body(&mut input));
    let Err(panic) = std::panic::catch_unwind(run) else {
        return;
    };
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    fail_segments(shared, format!("storage thread {thread} panicked: {what}"));
    after_panic(&mut input);
    std::panic::resume_unwind(panic);
}

/// The storage failure, for a produce refused because of it.
fn storage_failure(shared: &Shared) -> ProduceError {
    ProduceError::Storage(shared.failed.get().cloned().unwrap_or_default())
}

/// The submit thread's work once it has panicked: each job queued or still to
/// come is refused with the storage failure, barriers and the stop pass on to
/// the apply thread, until the stop.
fn refuse_jobs(
    shared: &Shared,
    jobs: &mut mpsc::Receiver<Job>,
    applied: &crossbeam_channel::Sender<Applied>,
) {
    while let Some(job) = jobs.blocking_recv() {
        match job {
            Job::Produce { reply, .. } => {
                let _ = reply.send(Err(storage_failure(shared)));
            }
            Job::Barrier(tx) => {
                let _ = applied.send(Applied::Barrier(tx));
            }
            Job::Stop => break,
        }
    }
    let _ = applied.send(Applied::Stop);
}

/// The apply thread's work once it has panicked: each produce passed on to it
/// is answered with the storage failure (nothing more is appended), barriers
/// are answered, until the stop.
fn refuse_applied(shared: &Shared, applied: &crossbeam_channel::Receiver<Applied>) {
    while let Ok(item) = applied.recv() {
        match item {
            Applied::Produce { reply, .. } | Applied::Duplicate { reply, .. } => {
                let _ = reply.send(Err(storage_failure(shared)));
            }
            Applied::Barrier(tx) => {
                let _ = tx.send(());
            }
            Applied::Stop => return,
        }
    }
}

#[cfg(test)]
impl Shared {
    /// Panics when `thread` was asked to panic at its next job (once).
    fn panic_if_asked(&self, thread: &str) {
        let mut asked = self
            .panic_at_next_job
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *asked == Some(thread) {
            *asked = None;
            drop(asked);
            panic!("{thread} was asked to panic at its next job");
        }
    }
}

/// Assigns offsets and appends to the WAL, in arrival order.
fn submit_loop(
    shared: &Shared,
    jobs: &mut mpsc::Receiver<Job>,
    applied: &crossbeam_channel::Sender<Applied>,
) {
    while let Some(job) = jobs.blocking_recv() {
        let next = match job {
            Job::Produce {
                partition,
                mut data,
                mut infos,
                reply,
                permit,
            } => {
                // A delete marks the partition, then sends a barrier through this thread:
                // nothing for a deleted partition gets past it.
                if partition.is_deleted() {
                    let _ = reply.send(Err(ProduceError::UnknownTopicOrPartition));
                    continue;
                }
                if let Some(f) = shared.failed.get() {
                    let _ = reply.send(Err(ProduceError::Storage(f.clone())));
                    continue;
                }
                // Judged and recorded here, in the order offsets are assigned.
                let mut producers = partition.producers();
                match producers.check(&infos) {
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        continue;
                    }
                    Ok(Verdict::Duplicate(base)) => {
                        drop(producers);
                        tracing::debug!(
                            topic = partition.topic(),
                            partition = partition.index(),
                            base,
                            "retried batch already stored"
                        );
                        if applied
                            .send(Applied::Duplicate {
                                base,
                                reply,
                                _permit: permit,
                            })
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    Ok(Verdict::Append) => {}
                }
                let base = partition.assign(&mut data, &infos);
                let mut next = base;
                for info in &mut infos {
                    info.base_offset = next;
                    next += info.offset_count();
                }
                producers.record(&infos);
                drop(producers);
                let data = Bytes::from(data);
                let wal = shared
                    .wal
                    .as_ref()
                    .map(|w| w.append(partition.topic(), partition.index(), data.clone()));
                Applied::Produce {
                    partition,
                    data,
                    infos,
                    base,
                    wal,
                    reply,
                    _permit: permit,
                }
            }
            Job::Barrier(tx) => Applied::Barrier(tx),
            Job::Stop => {
                let _ = applied.send(Applied::Stop);
                return;
            }
        };
        if applied.send(next).is_err() {
            return;
        }
    }
    let _ = applied.send(Applied::Stop);
}

fn fail(shared: &Shared, what: String) -> String {
    let msg = shared.failed.get_or_init(|| {
        tracing::error!(error = %what, "storage failed; refusing further produces until restart");
        what.clone()
    });
    msg.clone()
}

/// A segment write or sync failed: storage fails (see [`fail`]), and no
/// checkpoint is made until a restart, which recovers from the WAL whatever the
/// segments lack. A failed `fdatasync` is never retried into a success: the
/// kernel reports a write-back failure once, and the next sync of the file
/// succeeds whether or not the pages reached the disk.
fn fail_segments(shared: &Shared, what: String) -> String {
    shared.segments_failed.get_or_init(|| what.clone());
    fail(shared, what)
}

/// Waits for each WAL completion in order, then appends to the segment and publishes.
fn apply_loop(shared: &Shared, applied: &crossbeam_channel::Receiver<Applied>) {
    while let Ok(item) = applied.recv() {
        match item {
            Applied::Produce {
                partition,
                data,
                infos,
                base,
                wal,
                reply,
                _permit,
            } => {
                #[cfg(test)]
                shared.panic_if_asked(APPLY_THREAD);
                let durable = match wal {
                    Some(c) => c.wait().map(Some),
                    None => Ok(None),
                };
                let result = match durable {
                    Err(e) => Err(ProduceError::Storage(fail(
                        shared,
                        format!("WAL append failed: {e}"),
                    ))),
                    Ok(seq) => match shared.failed.get() {
                        // Accepted before an earlier batch failed: appended, it
                        // would land past the offsets the failed one left
                        // empty. Its WAL entry is durable; a restart applies both.
                        Some(f) => Err(ProduceError::Storage(f.clone())),
                        None => match partition.append(&data, &infos) {
                            Ok(end) => {
                                // Wakes the Fetches waiting on this partition only.
                                partition.set_high_watermark(end);
                                if let Some(seq) = seq {
                                    shared.applied_seq.fetch_max(seq, Ordering::AcqRel);
                                }
                                Ok(base)
                            }
                            Err(e) => Err(ProduceError::Storage(fail_segments(
                                shared,
                                format!("segment append failed: {e}"),
                            ))),
                        },
                    },
                };
                let _ = reply.send(result);
            }
            Applied::Duplicate { base, reply, .. } => {
                // Its original was applied before it, or storage has failed.
                let _ = reply.send(match shared.failed.get() {
                    Some(f) => Err(ProduceError::Storage(f.clone())),
                    None => Ok(base),
                });
            }
            Applied::Barrier(tx) => {
                let _ = tx.send(());
            }
            Applied::Stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{storage::batch::tests::make_batch, wal::SyncMode};

    /// The runtime the pipeline tests produce on: two workers, like the broker's.
    fn two_worker_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn config(dir: &Path) -> Config {
        let mut c = Config::default();
        c.storage.data_dir = dir.to_path_buf();
        c.wal.engine.max_file_size = 1 << 20;
        c.wal.engine.sync_mode = SyncMode::EveryWrite;
        c
    }

    fn batch_at(base: i64, values: &[&[u8]]) -> Vec<u8> {
        let mut b = make_batch(0, values);
        let infos = batch::validate_all(&b).unwrap();
        batch::assign_offsets(&mut b, &infos, base);
        b
    }

    /// A start fsyncs the topics' directories before it serves: a process
    /// killed between a create (or a roll, a growth) and its directory fsync
    /// left the change for the next one to serve, and nothing fsynced it
    /// again, so a power loss later took a topic and all its records with a
    /// strict start finding nothing amiss.
    #[test]
    fn a_start_makes_the_topic_directories_durable() {
        use crate::wal::files::SYNCED_DIRS;
        let tmp = tempfile::tempdir().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 2).unwrap();
        m.shutdown().unwrap();
        drop(m);
        SYNCED_DIRS.with(|s| s.borrow_mut().clear());
        let m = TopicManager::new(config(tmp.path())).unwrap();
        let synced = SYNCED_DIRS.with(|s| s.borrow().clone());
        let topics = tmp.path().join("topics");
        for dir in [
            topics.join("t").join("0"),
            topics.join("t").join("1"),
            topics.join("t"),
            topics,
        ] {
            assert!(
                synced.contains(&dir),
                "{} not fsynced: {synced:?}",
                dir.display()
            );
        }
        m.shutdown().unwrap();
    }

    /// A create that failed after its `topic.json` was renamed into place
    /// (the fsync of a directory) removes the file durably before the
    /// directory: the removal of the directory alone is not durable, and a
    /// power loss brought the topic back at the next start.
    #[cfg(unix)]
    #[test]
    fn a_failed_creates_topic_file_is_removed_durably() {
        use crate::wal::files::{AtomicWriteFailure as Fail, INJECTED_ATOMIC_FAILURES};
        use crate::wal::sim::{SimDisk, SimPlan};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t");
        let disk = SimDisk::new(SimPlan::plain(1));
        disk.watch_dir(&dir).unwrap();
        crate::wal::files::write_atomic(&dir.join("topic.json"), b"{}").unwrap();
        remove_topic_file(&dir).unwrap();
        remove_topic_file(&dir).unwrap();
        disk.power_loss_keeping(false, Some(0)).unwrap();
        assert!(!dir.join("topic.json").exists(), "brought back");

        let m = TopicManager::new(config(tmp.path())).unwrap();
        INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(Fail::DirSync));
        assert!(m.create_topic("u", 1).is_err());
        assert!(INJECTED_ATOMIC_FAILURES.with(|q| q.borrow().is_empty()));
        assert!(!tmp.path().join("topics/u").exists());
        assert!(m.topic("u").is_none());
        m.create_topic("u", 1).unwrap();
        m.shutdown().unwrap();
    }

    /// A start on a disk the last run filled failed for want of space at its
    /// first write (the replay, its checkpoint) while the space reserve, kept
    /// for the writes that free space, stayed held: the broker never came up
    /// to free any. It gives the reserve back and starts again.
    #[test]
    fn a_start_out_of_space_gives_back_the_reserve_and_starts_again() {
        use crate::wal::files::{AtomicWriteFailure as Fail, INJECTED_ATOMIC_FAILURES};
        let tmp = tempfile::tempdir().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let reserve = tmp.path().join(space_reserve::RESERVE_NAME);
        assert!(reserve.exists());
        // Entries past the checkpoint, as a run latched by a full disk
        // leaves them: the start replays and checkpoints them.
        let (wal, _) = Wal::open(tmp.path().join("wal"), config(tmp.path()).wal.engine).unwrap();
        for (base, v) in [(0, b"a"), (1, b"b")] {
            wal.append("t", 0, Bytes::from(batch_at(base, &[v])))
                .wait()
                .unwrap();
        }
        wal.close().unwrap();

        INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(Fail::Full));
        // The start's own checkpoint may need the room the reserve holds:
        // taken before it (its recovery points to store, without a WAL), the
        // reserve made that start fail too, and every later one.
        let (reserve_, checkpoints) = (reserve.clone(), Arc::new(AtomicU64::new(0)));
        let reserve_seen = Arc::new(AtomicBool::new(false));
        {
            let (checkpoints, reserve_seen) = (Arc::clone(&checkpoints), Arc::clone(&reserve_seen));
            checkpoint::BEFORE_POINTS_STORED.with(|h| {
                *h.borrow_mut() = Some(Box::new(move || {
                    checkpoints.fetch_add(1, Ordering::SeqCst);
                    reserve_seen.fetch_or(reserve_.exists(), Ordering::SeqCst);
                }));
            });
        }
        // Room for the reserve, not twice over: it is taken again at once
        // (producers would take the room otherwise, and the next start fail
        // with no reserve to give back).
        space_reserve::set_test_free_bytes(Some(DEFAULT_SPACE_RESERVE_BYTES + (1 << 20)));
        let m = TopicManager::new(config(tmp.path()));
        space_reserve::set_test_free_bytes(None);
        checkpoint::BEFORE_POINTS_STORED.with(|h| h.borrow_mut().take());
        let m = m.unwrap();
        assert!(
            checkpoints.load(Ordering::SeqCst) > 0,
            "the start's checkpoint ran"
        );
        assert!(
            !reserve_seen.load(Ordering::SeqCst),
            "the reserve taken before the start's checkpoint"
        );
        assert!(INJECTED_ATOMIC_FAILURES.with(|q| q.borrow().is_empty()));
        assert!(
            m.shared.reserve.is_held(),
            "the reserve taken again after the start's writes"
        );
        assert!(
            m.shared.reserve.is_short(),
            "1 MiB free besides the reserve: produces are refused until its size is"
        );
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.log_end_offset(), 2, "both entries replayed");
        m.shutdown().unwrap();
        drop(m);

        // Without a reserve to give back, the failure is the start's.
        let mut c = config(tmp.path());
        c.storage.space_reserve_bytes = 0;
        let m = TopicManager::new(c.clone()).unwrap();
        m.shutdown().unwrap();
        drop(m);
        assert!(!reserve.exists());
        let (wal, _) = Wal::open(tmp.path().join("wal"), c.wal.engine.clone()).unwrap();
        wal.append("t", 0, Bytes::from(batch_at(2, &[b"c"])))
            .wait()
            .unwrap();
        wal.close().unwrap();
        INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(Fail::Full));
        let Err(e) = TopicManager::new(c.clone()) else {
            panic!("the start fails");
        };
        assert!(space_reserve::out_of_space(&e), "{e}");
        let m = TopicManager::new(c).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 3);
        m.shutdown().unwrap();
    }

    /// While the space reserve is given back (or found no room), produces
    /// are refused, so that the room it would take is not filled: the writes
    /// that free space had none left, and a start after them (one made again
    /// for want of space finds no room to take the reserve) nothing to give
    /// back. A refused produce has the reserve look for room again (once a
    /// second), and produces are taken again once it holds it with its size
    /// free besides.
    #[test]
    fn produces_are_refused_while_the_reserve_is_short() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce_to(&rt, &m, "t", &batch_at(0, &[b"a"])), Ok(0));
        assert!(m.shared.reserve.release());
        match produce_to(&rt, &m, "t", &batch_at(0, &[b"b"])) {
            Err(ProduceError::SpaceShort(why)) => {
                assert!(why.contains("produces are refused"), "{why}");
            }
            other => panic!("a produce while the reserve is short: {other:?}"),
        }
        // The disk has room: a later produce finds the reserve taken again
        // (by a refused one's look) and is stored.
        let deadline = Instant::now() + Duration::from_secs(10);
        let offset = loop {
            match produce_to(&rt, &m, "t", &batch_at(0, &[b"c"])) {
                Ok(offset) => break offset,
                Err(ProduceError::SpaceShort(_)) => {
                    assert!(Instant::now() < deadline, "the reserve never taken again");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{e:?}"),
            }
        };
        assert_eq!(offset, 1, "the refused produces stored nothing");
        assert!(m.shared.reserve.is_held());
        m.shutdown().unwrap();
    }

    /// Checkpoints go on during a long retention pass: it ran on the
    /// checkpoint thread, and without a WAL acknowledged records stayed in
    /// the page cache alone (`--checkpoint-ms` promises them durable within
    /// it) for as long as the pass took.
    #[test]
    fn checkpoints_go_on_during_a_long_retention_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.wal.enabled = false;
        c.storage.checkpoint_interval_ms = 20;
        c.storage.retention_check_interval_ms = 20;
        let m = TopicManager::new(c).unwrap();
        m.create_topic("t", 100).unwrap();
        // A pass of 100 partitions takes 100 s (a shutdown stops it at the
        // next partition).
        *m.shared.retention_partition_pause.lock().unwrap() = Duration::from_secs(1);
        std::thread::sleep(Duration::from_millis(300));
        let rt = two_worker_runtime();
        assert_eq!(produce_to(&rt, &m, "t", &batch_at(0, &[b"a"])), Ok(0));
        let p = m.partition("t", 0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.unsynced() {
            assert!(
                Instant::now() < deadline,
                "no checkpoint synced the record during the pass"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        m.shutdown().unwrap();
    }

    /// After a start out of space the first retention pass runs at once,
    /// not a retention interval (5 minutes) later: until it frees space,
    /// producers fill what the reserve gave back.
    #[test]
    fn a_start_out_of_space_runs_retention_at_once() {
        use crate::storage::batch::tests::make_timed_batch;
        use crate::wal::files::{AtomicWriteFailure as Fail, INJECTED_ATOMIC_FAILURES};
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.storage.checkpoint_interval_ms = 20;
        c.storage.retention_check_interval_ms = 3_600_000;
        let m = TopicManager::new(c.clone()).unwrap();
        let configs = TopicConfig::from_pairs([("retention.ms", Some("60000"))]).unwrap();
        m.create_topic_with("t", 1, configs).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let (wal, _) = Wal::open(tmp.path().join("wal"), c.wal.engine.clone()).unwrap();
        let old = segment::now_ms() - 3_600_000;
        let b = make_timed_batch(0, old, &[(0, b"old")], -1, -1, -1);
        wal.append("t", 0, Bytes::from(b)).wait().unwrap();
        wal.close().unwrap();
        INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(Fail::Full));
        let m = TopicManager::new(c).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.log_end_offset(), 1, "replayed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.log_start_offset() < 1 {
            assert!(Instant::now() < deadline, "no retention pass ran");
            std::thread::sleep(Duration::from_millis(20));
        }
        m.shutdown().unwrap();
    }

    /// Invariant 7: replaying WAL entries into segments that already hold some of them
    /// leaves the partition exactly as if each batch were written once.
    #[test]
    fn replay_skips_what_segments_hold_and_appends_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);

        let batches = [
            batch_at(0, &[b"a"]),
            batch_at(1, &[b"b", b"c"]),
            batch_at(3, &[b"d"]),
        ];
        let (wal, rec) = Wal::open(tmp.path().join("wal"), config(tmp.path()).wal.engine).unwrap();
        assert_eq!(rec.count(), 0);
        for b in &batches {
            wal.append("t", 0, Bytes::from(b.clone())).wait().unwrap();
        }
        wal.close().unwrap();
        // The segment already holds the first two batches (as after a kill -9).
        let p = Partition::open("t", 0, tmp.path().join("topics/t/0"), 1 << 20).unwrap();
        for b in &batches[..2] {
            p.append(b, &batch::validate_all(b).unwrap()).unwrap();
        }
        drop(p);

        for round in 0..2 {
            let m = TopicManager::new(config(tmp.path())).unwrap();
            let p = m.partition("t", 0).unwrap();
            assert_eq!(p.log_end_offset(), 4, "round {round}");
            assert_eq!(p.high_watermark(), 4);
            let r = p.read(0, 1 << 20).unwrap().unwrap();
            assert_eq!(
                &r.records[..],
                &batches.concat()[..],
                "round {round}: each batch exactly once, byte for byte"
            );
            m.shutdown().unwrap();
        }
    }

    /// A topic created under the name of one being deleted: the delete must not
    /// take the new topic's directory (before, it renamed it away, and the new
    /// topic's acknowledged produces were gone at the next start).
    #[test]
    fn a_topic_recreated_while_its_delete_runs_keeps_its_files() {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"old"])), Ok(0));
        *m.shared.delete_pause.lock().unwrap() = Duration::from_millis(300);
        let delete = {
            let m = m.clone();
            rt.spawn(async move { m.delete_topic("t").await })
        };
        loop {
            match m.create_topic("t", 1) {
                Err(CreateError::Exists) => std::thread::sleep(Duration::from_millis(1)),
                created => {
                    created.unwrap();
                    break;
                }
            }
        }
        assert!(rt.block_on(delete).unwrap().unwrap());
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"new"])), Ok(0));
        assert!(tmp.path().join("topics/t/topic.json").exists());
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 1);
        m.shutdown().unwrap();
    }

    /// Produces batch `b` to partition 0 of `topic`: its base offset, or why
    /// it was refused.
    fn produce_to(
        rt: &tokio::runtime::Runtime,
        m: &TopicManager,
        topic: &str,
        b: &[u8],
    ) -> std::result::Result<i64, ProduceError> {
        rt.block_on(async {
            m.submit(topic, 0, b, Duration::from_secs(5))
                .await?
                .await
                .unwrap()
        })
    }

    /// A batch over the topic's `max.message.bytes` is refused for its size by
    /// its header, before its CRC or records are looked at, as Kafka refuses
    /// it: MESSAGE_TOO_LARGE, which a client answers by splitting the batch.
    /// Before, it was decompressed and walked first (a place among the
    /// blocking checks, the decompression budget), and one that was also
    /// damaged got CORRUPT_MESSAGE or INVALID_RECORD, so the client sent it
    /// again whole.
    #[test]
    fn a_batch_over_max_message_bytes_is_refused_for_its_size_first() {
        use crate::storage::batch::tests::with_section;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        let limited = TopicConfig::from_pairs([("max.message.bytes", Some("1000"))]);
        m.create_topic_with("t", 1, limited.unwrap()).unwrap();
        // A zstd section that does not decode, 2,000 bytes long.
        let mut section = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58];
        section.resize(2_000, 0xff);
        let undecodable = with_section(&make_batch(0, &[b"v"]), 4, &section);
        let mut bad_crc = make_batch(0, &[&[7u8; 1_500]]);
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        for b in [&undecodable, &bad_crc] {
            match produce_to(&rt, &m, "t", b) {
                Err(ProduceError::TooLarge(message)) => {
                    assert!(message.contains("max.message.bytes (1000)"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        // A malformed one gets validation's answer, as from Kafka.
        let at_five = make_batch(5, &[&[7u8; 1_500]]);
        assert!(
            matches!(
                produce_to(&rt, &m, "t", &at_five),
                Err(ProduceError::InvalidBatch(batch::BatchError::BaseOffset(5)))
            ),
            "a base offset that is not 0"
        );
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 0);
        m.shutdown().unwrap();
    }

    /// A refused batch named only its first record without a key, and no
    /// record at all for timestamps out of range, so that the Java producer
    /// failed every record of the batch as if each were at fault (its
    /// innocent records get the generic "part of a batch with invalid
    /// records" only when the refusal names the guilty ones). Every record at
    /// fault is now listed, as Kafka's LogValidator lists them, each judged
    /// by its key first on a compacted topic (INVALID_TIMESTAMP only when
    /// some record is refused for its timestamp); at most
    /// [`batch::MAX_LISTED_FAULTS`] of them, and fewer for a small
    /// (compressed) batch, so that a refusal stays in proportion to the
    /// request.
    #[test]
    fn a_refusal_lists_every_record_at_fault() {
        use crate::storage::batch::tests::{compress_batch, make_keyed_batch};
        let produce = produce_to;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        let bounded =
            TopicConfig::from_pairs([("message.timestamp.before.max.ms", Some("600000"))]);
        m.create_topic_with("t", 1, bounded.unwrap()).unwrap();
        let compacted = TopicConfig::from_pairs([("cleanup.policy", Some("compact"))]);
        m.create_topic_with("c", 1, compacted.unwrap()).unwrap();
        let now = segment::now_ms();
        let (k, v): (Option<&[u8]>, Option<&[u8]>) = (Some(b"k"), Some(b"v"));
        let (day, two_hours) = (86_400_000, 2 * 3_600_000);
        let refusal = |topic: &str, records: &[batch::tests::KeyedRecord<'_>]| match produce(
            &rt,
            &m,
            topic,
            &make_keyed_batch(0, now, records, -1, -1, -1),
        ) {
            Err(ProduceError::InvalidTimestamp { records, .. }) => ("timestamp", records),
            Err(ProduceError::InvalidRecord { records, .. }) => ("record", records),
            other => panic!("{other:?}"),
        };
        // Records 1 (two hours ahead) and 3 (a day behind).
        let late_and_early = [(0, k, v), (two_hours, k, v), (0, k, v), (-day, k, v)];
        assert_eq!(refusal("t", &late_and_early), ("timestamp", vec![1, 3]));
        // Records 1 and 3 without keys, to a compacted topic.
        let keyless = [(0, k, v), (0, None, v), (0, k, v), (0, None, v)];
        assert_eq!(refusal("c", &keyless), ("record", vec![1, 3]));
        // Judged by its key: a record without a key two hours ahead is an
        // invalid record, not an invalid timestamp, as Kafka judges it; with
        // another record ahead, both are listed and the timestamp decides.
        assert_eq!(
            refusal("c", &[(0, k, v), (two_hours, None, v)]),
            ("record", vec![1])
        );
        assert_eq!(
            refusal("c", &[(two_hours, k, v), (two_hours, None, v)]),
            ("timestamp", vec![0, 1])
        );
        // The message names a timestamp refused, not that of a record
        // refused for its key.
        let b = make_keyed_batch(
            0,
            now,
            &[(two_hours + 5, None, v), (two_hours, k, v)],
            -1,
            -1,
            -1,
        );
        match produce(&rt, &m, "c", &b) {
            Err(ProduceError::InvalidTimestamp { message, records }) => {
                assert_eq!(records, [0, 1]);
                assert!(
                    message.contains(&(now + two_hours).to_string()),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The smallest records (7 bytes: no key, no value): every one named.
        let smallest: Vec<_> = (0..100).map(|_| (0, None, None)).collect();
        let expected: Vec<i32> = (0..100).collect();
        assert_eq!(refusal("c", &smallest), ("record", expected));
        // More than the cap: the first ones.
        let many: Vec<_> = (0..1500).map(|_| (0, None, v)).collect();
        let expected: Vec<i32> = (0..batch::MAX_LISTED_FAULTS as i32).collect();
        assert_eq!(refusal("c", &many), ("record", expected));
        // A compressed batch of many: no more than one per 7 bytes sent.
        let small = compress_batch(&make_keyed_batch(0, now, &many[..1000], -1, -1, -1), 1);
        match produce(&rt, &m, "c", &small) {
            Err(ProduceError::InvalidRecord { records, .. }) => {
                assert_eq!(records.len(), small.len() / batch::BYTES_PER_LISTED_FAULT);
                assert!(records.len() < 1000, "{} bytes", small.len());
            }
            other => panic!("{other:?}"),
        }
        let fine = make_keyed_batch(0, now, &[(0, k, v)], -1, -1, -1);
        assert_eq!(produce(&rt, &m, "c", &fine), Ok(0));
        m.shutdown().unwrap();
    }

    /// A topic sets how far ahead of the broker's clock (and behind it) a
    /// record's timestamp may be: `message.timestamp.after.max.ms` (an hour by
    /// default) and `message.timestamp.before.max.ms` (no bound by default).
    /// Every record counts, not only the batch's first or last; records
    /// without timestamps are not judged.
    #[test]
    fn a_topic_bounds_record_timestamps_ahead_of_and_behind_the_clock() {
        use crate::storage::batch::tests::make_timed_batch;
        let produce = produce_to;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        let bounded = TopicConfig::from_pairs([
            ("message.timestamp.after.max.ms", Some("60000")),
            ("message.timestamp.before.max.ms", Some("600000")),
        ])
        .unwrap();
        m.create_topic_with("bounded", 1, bounded).unwrap();
        m.create_topic("free", 1).unwrap();
        let now = segment::now_ms();
        let records = |first: i64, deltas: &[i64]| {
            let r: Vec<(i64, &[u8])> = deltas.iter().map(|&d| (d, &b"v"[..])).collect();
            make_timed_batch(0, first, &r, -1, -1, -1)
        };
        let invalid = |r: Result<i64, ProduceError>| matches!(&r, Err(ProduceError::InvalidTimestamp { message: m, .. }) if m.contains("message.timestamp"));
        // Ahead: 10 minutes passes the default hour, not the topic's minute.
        let ahead = records(now, &[0, 600_000]);
        assert_eq!(produce(&rt, &m, "free", &ahead), Ok(0));
        assert!(invalid(produce(&rt, &m, "bounded", &ahead)));
        // Behind: a day behind passes without a bound; the topic's 10 minutes
        // refuse it, also when only a later record of the batch is that old.
        let behind = records(now, &[0, -86_400_000]);
        assert_eq!(produce(&rt, &m, "free", &behind), Ok(2));
        assert!(invalid(produce(&rt, &m, "bounded", &behind)));
        assert!(invalid(produce(
            &rt,
            &m,
            "bounded",
            &records(now - 86_400_000, &[0])
        )));
        // A record without a timestamp (-1) exempts only itself, as in Kafka:
        // not the day-old records beside it, nor a later record whose delta
        // from a first timestamp of -1 dates it, nor other negative times.
        let day_ago = now - 86_400_000;
        let mixed = records(day_ago, &[0, -day_ago - 1]);
        assert!(invalid(produce(&rt, &m, "bounded", &mixed)));
        let dated = records(-1, &[0, 1_000_000_000_000]);
        assert!(invalid(produce(&rt, &m, "bounded", &dated)));
        assert!(invalid(produce(&rt, &m, "bounded", &records(-5, &[0]))));
        // Within both bounds, and records without timestamps.
        assert_eq!(
            produce(&rt, &m, "bounded", &records(now - 60_000, &[0, 30_000])),
            Ok(0)
        );
        assert_eq!(produce(&rt, &m, "bounded", &records(-1, &[0])), Ok(2));
        // With no bound behind, a timestamp so far behind that `now - it`
        // overflows is refused all the same, as Kafka's check reads it as far
        // ahead; one that does not overflow passes.
        let overflowing = |r: Result<i64, ProduceError>| matches!(&r, Err(ProduceError::InvalidTimestamp { message: m, .. }) if m.contains(&i64::MAX.to_string()));
        assert!(overflowing(produce(
            &rt,
            &m,
            "free",
            &records(i64::MIN, &[0])
        )));
        assert!(overflowing(produce(
            &rt,
            &m,
            "free",
            &records(0, &[0, i64::MIN])
        )));
        assert_eq!(
            produce(&rt, &m, "free", &records(now - i64::MAX + 600_000, &[0])),
            Ok(4)
        );
        m.shutdown().unwrap();
    }

    /// A batch flagged LogAppendTime whose header states no timestamp (-1)
    /// was stored with the flag cleared; Kafka reads each record's timestamp
    /// as the header's and refuses such a batch with INVALID_TIMESTAMP. With a
    /// timestamp stated it is accepted, as in Kafka, and stored as CreateTime.
    #[test]
    fn a_batch_flagged_log_append_time_without_a_timestamp_is_refused() {
        use crate::storage::{batch::tests::make_timed_batch, producers::pipeline_tests::produce};
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        let now = segment::now_ms();
        let flagged = |first: i64, header: i64| {
            let mut b = make_timed_batch(0, first, &[(0, b"v")], -1, -1, -1);
            batch::set_max_timestamp(&mut b, header);
            b[22] |= 0x08; // the attributes' LogAppendTime bit
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            assert!(batch::validate(&b).is_ok());
            b
        };
        for first in [-1, now] {
            let refused = produce(&rt, &m, &flagged(first, -1));
            assert!(
                matches!(&refused, Err(ProduceError::InvalidTimestamp { message: msg, records }) if msg.contains("LogAppendTime") && records == &[0]),
                "{refused:?}"
            );
        }
        assert_eq!(produce(&rt, &m, &flagged(now, now)), Ok(0));
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.log_end_offset(), 1, "only the batch with a timestamp");
        let stored = p.read(0, 1 << 20).unwrap().unwrap().records;
        let info = batch::validate(&stored).unwrap();
        assert_eq!(info.attributes & batch::ATTR_LOG_APPEND_TIME, 0);
        m.shutdown().unwrap();
    }

    /// The header's largest timestamp, which retention, segment rolls and
    /// ListOffsets by time go by, was taken from the client as sent: one saying
    /// 0 over records of now hid them from ListOffsets by time (and let retention
    /// delete them early), and one far ahead kept the partition from expiring by
    /// time at all. It is now the records' own, and a record more than an hour
    /// ahead of the broker's clock is refused, as Kafka refuses it.
    #[test]
    fn a_batchs_max_timestamp_is_its_records_and_one_far_ahead_is_refused() {
        use crate::storage::{batch::tests::make_timed_batch, producers::pipeline_tests::produce};
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        let now = segment::now_ms();
        let at = |ts: i64, header: Option<i64>| {
            let mut b = make_timed_batch(0, ts, &[(0, b"v")], -1, -1, -1);
            if let Some(h) = header {
                batch::set_max_timestamp(&mut b, h);
            }
            b
        };
        assert_eq!(produce(&rt, &m, &at(now - 5000, Some(0))), Ok(0));
        assert_eq!(produce(&rt, &m, &at(now, Some(i64::MAX))), Ok(1));
        assert_eq!(produce(&rt, &m, &at(now + 600_000, None)), Ok(2));
        let refused = produce(&rt, &m, &at(now + 2 * MAX_TIMESTAMP_AHEAD_MS, None));
        assert!(
            matches!(refused, Err(ProduceError::InvalidTimestamp { .. })),
            "{refused:?}"
        );
        let p = m.partition("t", 0).unwrap();
        assert_eq!(
            p.offset_for_timestamp(now - 5000).unwrap().map(|f| f.0),
            Some(0)
        );
        assert_eq!(p.offset_for_timestamp(now).unwrap().map(|f| f.0), Some(1));
        let stored = p.read(0, 1 << 20).unwrap().unwrap().records;
        let mut at = 0;
        for want in [now - 5000, now, now + 600_000] {
            let max = i64::from_be_bytes(stored[at + 35..at + 43].try_into().unwrap());
            assert_eq!(max, want);
            let len = i32::from_be_bytes(stored[at + 8..at + 12].try_into().unwrap());
            at += 12 + len as usize;
        }
        assert_eq!(at, stored.len());
        m.shutdown().unwrap();
    }

    /// Committed positions in a deleted topic used to outlive it: a consumer
    /// group of a topic created again under the name resumed at the old topic's
    /// position, skipping the new topic's first records. They are dropped with
    /// the topic, and at the next start when a crash came in between.
    #[test]
    fn a_deleted_topics_committed_positions_go_with_it() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        m.create_topic("kept", 1).unwrap();
        let at = |topic: &str, offset| Committed {
            topic: topic.into(),
            partition: 0,
            offset,
            leader_epoch: -1,
            metadata: None,
        };
        let offsets = m.offsets();
        // "kept" is empty: a position beyond its end would come down to it at
        // the restart below.
        offsets
            .commit("g", None, vec![at("t", 1000), at("kept", 0)])
            .unwrap();
        offsets.commit("h", None, vec![at("t", 5)]).unwrap();
        assert!(rt.block_on(m.delete_topic("t")).unwrap());
        assert_eq!(offsets.fetch("g", "t", 0), None);
        assert_eq!(offsets.fetch("h", "t", 0), None);
        assert_eq!(offsets.fetch("g", "kept", 0).map(|c| c.offset), Some(0));
        m.create_topic("t", 1).unwrap();
        assert_eq!(offsets.fetch("g", "t", 0), None);
        // Positions left behind by a crash between the delete's move of the
        // directory to the trash and its drop of them (here committed to a
        // topic of no directory, with one in the trash) are dropped at the
        // next start.
        offsets.commit("g", None, vec![at("gone", 3)]).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let trash = tmp.path().join("topics-deleted");
        std::fs::create_dir_all(trash.join("gone-1a2b3c")).unwrap();
        let m = TopicManager::new(c).unwrap();
        assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0, "emptied");
        assert_eq!(m.offsets().fetch("g", "gone", 0), None);
        assert_eq!(m.offsets().fetch("g", "kept", 0).map(|c| c.offset), Some(0));
        m.shutdown().unwrap();
    }

    /// A commit that failed once its group's file was renamed into place (its
    /// directory fsync failed) left the position in the file but not in
    /// memory: the topic's delete found nothing to drop, and after a restart
    /// the group resumed a topic created again under the name at the old
    /// topic's position.
    #[test]
    fn a_failed_commit_in_its_file_goes_with_its_deleted_topic() {
        use crate::wal::files::{AtomicWriteFailure, INJECTED_ATOMIC_FAILURES};
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(AtomicWriteFailure::DirSync));
        assert!(m
            .offsets()
            .commit("g", None, vec![position("t", 0)])
            .is_err());
        assert!(rt.block_on(m.delete_topic("t")).unwrap());
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c).unwrap();
        assert_eq!(m.offsets().fetch("g", "t", 0), None);
        m.shutdown().unwrap();
    }

    /// A partition of a deleted topic, still held by work that began before the
    /// delete (retention, DeleteRecords), changes nothing in the directory of a
    /// topic created later under the name. Before, retention of the old
    /// partition removed the new topic's segment by its path.
    #[test]
    fn a_deleted_topics_partition_leaves_the_new_topics_files_alone() {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"old"])), Ok(0));
        let old = m.partition("t", 0).unwrap();
        assert!(rt.block_on(m.delete_topic("t")).unwrap());
        m.create_topic("t", 1).unwrap();
        let new = make_batch(0, &[b"new"]);
        assert_eq!(produce(&rt, &m, &new), Ok(0));

        assert_eq!(
            old.apply_retention(segment::now_ms(), None, Some(0))
                .unwrap(),
            (0, 0)
        );
        assert_eq!(old.delete_records(1), Err(DeleteRecordsError::Deleted));
        m.shutdown().unwrap();
        drop((m, old));
        let m = TopicManager::new(c).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (0, 1));
        assert_eq!(&p.read(0, 1 << 20).unwrap().unwrap().records[..], &new[..]);
        m.shutdown().unwrap();
    }

    /// A broker on `data` with topic `t` holding batch "a" at offset 0, making
    /// only the checkpoints a test asks for.
    fn with_batch_a(data: &Path) -> (tokio::runtime::Runtime, Config, TopicManager) {
        use crate::storage::producers::pipeline_tests::produce;
        let rt = two_worker_runtime();
        let mut c = config(data);
        c.storage.checkpoint_interval_ms = 3_600_000;
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"a"])), Ok(0));
        (rt, c, m)
    }

    /// Why storage failed, once it has (waiting up to 10 s).
    fn wait_for_failure(m: &TopicManager) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(why) = m.failure() {
                return why.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "storage did not fail within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// After storage thread `thread` panicked: storage has failed naming it,
    /// the next produce is refused with that failure (KAFKA_STORAGE_ERROR, not
    /// the retriable "shutting down"), `shutdown` reports the panic, and a
    /// restart brings back the `end` offsets the WAL holds.
    fn after_a_panic_of(
        thread: &str,
        rt: &tokio::runtime::Runtime,
        c: Config,
        m: TopicManager,
        end: i64,
    ) {
        use crate::storage::producers::pipeline_tests::produce;
        let why = wait_for_failure(&m);
        assert!(why.contains(thread) && why.contains("panicked"), "{why}");
        match produce(rt, &m, &make_batch(0, &[b"refused"])) {
            Err(ProduceError::Storage(e)) => assert!(e.contains(thread), "{e}"),
            other => panic!("a produce after {thread} panicked: {other:?}"),
        }
        let e = m.shutdown().unwrap_err();
        assert!(
            matches!(&e, Error::StorageThreadPanicked { thread: t } if t == thread),
            "{e}"
        );
        assert!(e.to_string().contains(thread), "{e}");
        drop(m);
        let m = TopicManager::new(c).unwrap();
        assert!(m.failure().is_none());
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), end);
        m.shutdown().unwrap();
    }

    /// A panic of the apply thread (a bug) fails storage. Before, nothing
    /// latched: the batches queued behind it were never answered, the next
    /// produce was answered "shutting down" (retried by clients until their
    /// delivery timeout), and `shutdown` succeeded, so the broker exited 0.
    #[test]
    fn a_panicking_apply_thread_fails_storage_and_the_shutdown() {
        let tmp = tempfile::tempdir().unwrap();
        let (rt, c, m) = with_batch_a(tmp.path());
        *m.shared.panic_at_next_job.lock().unwrap() = Some(APPLY_THREAD);
        // Its answer is lost with the thread; its WAL entry is durable.
        let lost = rt.block_on(async {
            m.submit("t", 0, &make_batch(0, &[b"b"]), Duration::from_secs(5))
                .await
                .unwrap()
                .await
        });
        assert!(!matches!(lost, Ok(Ok(_))), "{lost:?}");
        after_a_panic_of(APPLY_THREAD, &rt, c, m, 2);
    }

    /// A panic of the checkpoint thread (a bug) fails storage. Before, the
    /// checkpoints stopped unseen (the WAL's files were never retired, until
    /// the disk filled), and the broker exited 0.
    #[test]
    fn a_panicking_checkpoint_thread_fails_storage_and_the_shutdown() {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let mut c = config(tmp.path());
        c.storage.checkpoint_interval_ms = 10;
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"a"])), Ok(0));
        *m.shared.panic_at_next_job.lock().unwrap() = Some(CHECKPOINT_THREAD);
        after_a_panic_of(CHECKPOINT_THREAD, &rt, c, m, 1);
    }

    /// [`with_batch_a`] on a [`crate::file_at::FailingFs`].
    #[cfg(target_os = "linux")]
    fn on_failing_fs() -> (
        crate::file_at::FailingFs,
        tokio::runtime::Runtime,
        Config,
        TopicManager,
    ) {
        let fs = crate::file_at::FailingFs::mount();
        let (rt, c, m) = with_batch_a(&fs.path().join("data"));
        (fs, rt, c, m)
    }

    /// A real write-back failure of a segment (`FailingFs`), met by a
    /// checkpoint's sync: storage fails (produces are refused), and no later
    /// checkpoint moves past the lost batch, although the kernel reports the
    /// failure only once and the next `fdatasync` of the file succeeds. Before,
    /// the next checkpoint advanced the WAL's checkpoint over it. A restart
    /// recovers the batch from the WAL.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_segment_sync_stops_checkpoints_until_a_restart() {
        use crate::storage::producers::pipeline_tests::produce;
        let (fs, rt, c, m) = on_failing_fs();
        m.checkpoint().unwrap();
        let checkpoint = fs.path().join("data/wal/checkpoint.json");
        let points = fs.path().join("data").join(recovery_points::FILE);
        let before = (
            std::fs::read(&checkpoint).unwrap(),
            std::fs::read(&points).unwrap(),
        );
        // In the WAL (synced) and in the segment's pages, not yet written back.
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"b"])), Ok(1));

        fs.fail(Some(libc::EIO));
        let e = m.checkpoint().unwrap_err().to_string();
        assert!(e.contains("Input/output error"), "{e}");
        fs.fail(None);
        assert!(m.failure().is_some(), "storage did not fail");
        assert!(
            m.checkpoint().is_err(),
            "a checkpoint succeeded after a failed segment sync"
        );
        assert_eq!(
            (
                std::fs::read(&checkpoint).unwrap(),
                std::fs::read(&points).unwrap()
            ),
            before,
            "the checkpoint moved"
        );
        assert!(matches!(
            produce(&rt, &m, &make_batch(0, &[b"c"])),
            Err(ProduceError::Storage(_))
        ));
        assert!(m.shutdown().is_err());
        drop(m);

        let m = TopicManager::new(c).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.log_end_offset(), 2);
        assert_eq!(
            &p.read(0, 1 << 20).unwrap().unwrap().records[..],
            &[batch_at(0, &[b"a"]), batch_at(1, &[b"b"])].concat()[..]
        );
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"d"])), Ok(2));
        m.shutdown().unwrap();
    }

    /// A delete that fails before the topic's directory moves (here the trash
    /// directory cannot be made: a file holds its name) keeps the topic, as a
    /// restart would find it: readable, and taking produces at the next offset.
    /// Before, the topic was gone until a restart brought it back.
    #[test]
    fn a_delete_that_cannot_move_the_directory_keeps_the_topic() {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 2).unwrap();
        let first = make_batch(0, &[b"a"]);
        assert_eq!(produce(&rt, &m, &first), Ok(0));
        let id = m.topic("t").unwrap().id;
        let blocker = block_trash(tmp.path());

        let e = rt.block_on(m.delete_topic("t")).unwrap_err().to_string();
        assert!(e.contains("topics-deleted"), "{e}");
        let t = m.topic("t").expect("the topic was not kept");
        assert_eq!((t.id, t.partitions.len()), (id, 2));
        assert!(!t.partitions[0].is_deleted());
        assert_eq!(
            &m.partition("t", 0)
                .unwrap()
                .read(0, 1 << 20)
                .unwrap()
                .unwrap()
                .records[..],
            &batch_at(0, &[b"a"])[..]
        );
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"b"])), Ok(1));
        m.shutdown().unwrap();
        drop(m);

        std::fs::remove_file(&blocker).unwrap();
        let m = TopicManager::new(c.clone()).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 2);
        assert!(rt.block_on(m.delete_topic("t")).unwrap());
        assert!(m.topic("t").is_none());
        assert!(!tmp.path().join("topics/t").exists());
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c).unwrap();
        assert!(m.topic("t").is_none());
        m.shutdown().unwrap();
    }

    /// Makes every delete in the data directory `dir` fail before its move:
    /// a file takes the trash directory's name. Returns the file.
    fn block_trash(dir: &Path) -> PathBuf {
        let blocker = dir.join("topics-deleted");
        std::fs::remove_dir(&blocker).unwrap(); // made empty by the start
        std::fs::write(&blocker, b"not a directory").unwrap();
        blocker
    }

    /// Stops `m`, lets deletes through again (`blocker`, see [`block_trash`])
    /// and starts storage with `c`: partition 0 of `t` holds `before` again,
    /// rebuilt from the WAL.
    fn restart_holds(m: TopicManager, c: Config, blocker: &Path, before: &[u8]) {
        m.shutdown().unwrap();
        drop(m);
        std::fs::remove_file(blocker).unwrap();
        let m = TopicManager::new(c).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert!(
            p.read(0, 1 << 30).unwrap().unwrap().records[..] == before[..],
            "rebuilt from the WAL"
        );
        m.shutdown().unwrap();
    }

    /// A topic reopened after its delete failed, one of its older segments
    /// damaged meanwhile (a batch's bytes and the index): the reopen judges
    /// it as a start does, without the WAL. Strict, the topic stays out of
    /// service (a create of its name refused), its files as found and its
    /// recovery points kept by later checkpoints, and the restart rebuilds the
    /// lost batches from the WAL; tolerant, the segment is cut where its valid
    /// batches stop. Before, the topic served the segment cut in memory, a
    /// fetch in the lost range getting the next segment's first batch.
    #[test]
    fn a_topic_reopened_after_a_failed_delete_judges_its_damaged_segments() {
        use crate::storage::producers::pipeline_tests::produce;
        for mode in [RecoveryMode::Strict, RecoveryMode::TolerateCorruption] {
            let tmp = tempfile::tempdir().unwrap();
            let rt = two_worker_runtime();
            let mut c = config(tmp.path());
            c.storage.segment_bytes = 4096;
            c.wal.engine.recovery_mode = mode;
            let m = TopicManager::new(c.clone()).unwrap();
            m.create_topic("t", 1).unwrap();
            for i in 0..40 {
                let v = format!("v{i}-{}", "x".repeat(200));
                assert_eq!(produce(&rt, &m, &make_batch(0, &[v.as_bytes()])), Ok(i));
            }
            let p = m.partition("t", 0).unwrap();
            let before = p.read(0, 1 << 30).unwrap().unwrap().records.to_vec();
            drop(p);
            let pdir = tmp.path().join("topics/t/0");
            let seg = pdir.join(segment::log_name(0));
            let mut raw = std::fs::read(&seg).unwrap();
            let infos = batch::validate_all(&raw).unwrap();
            let k = infos.len() / 2;
            let pos: usize = infos[..k].iter().map(|i| i.len).sum();
            raw[pos + infos[k].len - 1] ^= 0x40;
            std::fs::write(&seg, &raw).unwrap();
            std::fs::remove_file(pdir.join(segment::index_name(0))).unwrap();
            let (lost, next_base) = (
                infos[k].base_offset,
                infos.last().unwrap().last_offset() + 1,
            );
            let blocker = block_trash(tmp.path());

            assert!(rt.block_on(m.delete_topic("t")).is_err(), "{mode:?}");
            if mode == RecoveryMode::Strict {
                assert!(
                    m.topic("t").is_none(),
                    "served with offsets {lost}..{next_base} cut"
                );
                assert!(matches!(
                    m.create_topic("t", 1),
                    Err(CreateError::Storage(e)) if e.contains("kept after its delete failed")
                ));
                assert!(std::fs::read(&seg).unwrap() == raw, "left as found");
                m.checkpoint().unwrap();
                let points = recovery_points::load(tmp.path()).unwrap().unwrap();
                assert!(points.topics.contains_key("t"), "{points:?}");
                restart_holds(m, c, &blocker, &before);
            } else {
                let p = m.partition("t", 0).expect("kept");
                assert_eq!(std::fs::metadata(&seg).unwrap().len(), pos as u64, "cut");
                let next = p.read(lost, 1 << 20).unwrap().unwrap();
                let first = batch::validate_all(&next.records).unwrap()[0].base_offset;
                assert_eq!(first, next_base, "a fetch in the gap gets the next batch");
                m.shutdown().unwrap();
            }
        }
    }

    /// A segment wholly below the log start that a DeleteRecords left behind
    /// (its removal failed, or a crash cut it short) is settled, not refused,
    /// when the topic is opened again after a failed delete, as at a start:
    /// its offsets were deleted on request and can never be served.
    #[test]
    fn a_topic_reopened_after_a_failed_delete_settles_damage_below_its_log_start() {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let mut c = config(tmp.path());
        c.storage.segment_bytes = 4096;
        let m = TopicManager::new(c).unwrap();
        m.create_topic("t", 1).unwrap();
        for i in 0..40 {
            let v = format!("v{i}-{}", "x".repeat(200));
            assert_eq!(produce(&rt, &m, &make_batch(0, &[v.as_bytes()])), Ok(i));
        }
        let pdir = tmp.path().join("topics/t/0");
        let (seg, idx) = (
            pdir.join(segment::log_name(0)),
            pdir.join(segment::index_name(0)),
        );
        let (log0, idx0) = (std::fs::read(&seg).unwrap(), std::fs::read(&idx).unwrap());
        let second = batch::validate_all(&log0)
            .unwrap()
            .last()
            .unwrap()
            .last_offset()
            + 1;
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.delete_records(second), Ok(second));
        assert!(!seg.exists());
        let after = p.read(second, 1 << 30).unwrap().unwrap().records.to_vec();
        drop(p);
        // The first segment back, as a removal that failed leaves it, its
        // tail torn since.
        std::fs::write(&seg, &log0[..log0.len() / 2]).unwrap();
        std::fs::write(&idx, &idx0).unwrap();
        let _blocker = block_trash(tmp.path());

        assert!(rt.block_on(m.delete_topic("t")).is_err());
        let p = m.partition("t", 0).expect("back in service");
        assert_eq!(p.log_start_offset(), second);
        assert_eq!(
            p.read(second, 1 << 30).unwrap().unwrap().records.to_vec(),
            after
        );
        drop(p);
        m.shutdown().unwrap();
    }

    /// The newest segment of a topic opened again after a failed delete is
    /// judged before it is cut: damage in its middle (bit rot in flushed
    /// bytes) made the open cut it at once, on disk and synced, so a strict
    /// broker that then kept the topic out of service had already destroyed
    /// every valid batch after the damage, which the restart it asks for
    /// would have rebuilt from the WAL. Strict mode now leaves the file as
    /// found; tolerant mode cuts it and warns.
    #[test]
    fn a_topic_reopened_after_a_failed_delete_judges_its_newest_segment() {
        use crate::storage::producers::pipeline_tests::produce;
        for mode in [RecoveryMode::Strict, RecoveryMode::TolerateCorruption] {
            let tmp = tempfile::tempdir().unwrap();
            let rt = two_worker_runtime();
            let mut c = config(tmp.path());
            c.wal.engine.recovery_mode = mode;
            let m = TopicManager::new(c.clone()).unwrap();
            m.create_topic("t", 1).unwrap();
            for i in 0..20 {
                let v = format!("v{i}-{}", "x".repeat(200));
                assert_eq!(produce(&rt, &m, &make_batch(0, &[v.as_bytes()])), Ok(i));
            }
            let p = m.partition("t", 0).unwrap();
            let before = p.read(0, 1 << 30).unwrap().unwrap().records.to_vec();
            if mode == RecoveryMode::TolerateCorruption {
                assert_eq!(p.delete_records(15), Ok(15));
            }
            drop(p);
            m.offsets()
                .commit("g", None, vec![position("t", 20)])
                .unwrap();
            let seg = tmp.path().join("topics/t/0").join(segment::log_name(0));
            let mut raw = std::fs::read(&seg).unwrap();
            let infos = batch::validate_all(&raw).unwrap();
            assert_eq!(infos.len(), 20, "one segment");
            let pos: usize = infos[..10].iter().map(|i| i.len).sum();
            raw[pos + infos[10].len - 1] ^= 0x40;
            std::fs::write(&seg, &raw).unwrap();
            let blocker = block_trash(tmp.path());

            assert!(rt.block_on(m.delete_topic("t")).is_err(), "{mode:?}");
            if mode == RecoveryMode::Strict {
                assert!(m.topic("t").is_none(), "served with offsets 10..20 cut");
                assert!(std::fs::read(&seg).unwrap() == raw, "left as found");
                restart_holds(m, c, &blocker, &before);
            } else {
                let p = m.partition("t", 0).expect("kept");
                assert_eq!(std::fs::metadata(&seg).unwrap().len(), pos as u64, "cut");
                assert_eq!(p.log_end_offset(), 10);
                // As a tolerant start brings them down, and the log start.
                assert_eq!(m.offsets().fetch("g", "t", 0).map(|c| c.offset), Some(10));
                assert_eq!(p.log_start_offset(), 10);
                m.shutdown().unwrap();
            }
        }
    }

    /// A delete's checkpoint moves the WAL's checkpoint past the topic's
    /// entries, so the topic's segments must be synced before it: until the
    /// move of its directory is durable, a power loss brings the topic back,
    /// and it must come back whole. (The checkpoint syncs only the topics in
    /// the map, which the deleted one has left.)
    #[test]
    fn a_delete_syncs_the_topics_segments_before_its_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let (rt, _, m) = with_batch_a(tmp.path());
        let old = m.partition("t", 0).unwrap();
        assert!(old.unsynced());
        assert!(rt.block_on(m.delete_topic("t")).unwrap());
        assert!(!old.unsynced(), "the checkpoint passed unsynced segments");
        m.shutdown().unwrap();
    }

    /// A checkpoint (the periodic one) that runs while a delete has taken the
    /// topic out of the map but not yet synced it syncs it too: it moves the
    /// WAL's checkpoint past the topic's entries, and until the delete has
    /// moved the directory a power loss brings the topic back. Before, it
    /// synced only the topics in the map, and the topic came back short, its
    /// missing batches below the checkpoint and without a recovery point.
    #[test]
    fn a_checkpoint_during_a_delete_syncs_the_topic_being_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let (rt, _, m) = with_batch_a(tmp.path());
        let old = m.partition("t", 0).unwrap();
        assert!(old.unsynced());
        *m.shared.delete_sync_pause.lock().unwrap() = Duration::from_millis(500);
        let delete = {
            let m = m.clone();
            rt.spawn(async move { m.delete_topic("t").await })
        };
        while m.partition("t", 0).is_some() {
            std::thread::sleep(Duration::from_millis(1));
        }
        m.checkpoint().unwrap();
        assert!(
            !old.unsynced(),
            "a checkpoint moved past a topic being deleted without syncing it"
        );
        let points = recovery_points::load(tmp.path()).unwrap().unwrap();
        assert!(rt.block_on(delete).unwrap().unwrap());
        assert!(
            points.topics.contains_key("t"),
            "the recovery points left out a topic being deleted"
        );
        m.shutdown().unwrap();
    }

    /// A delete refused after its barrier because storage failed meanwhile
    /// (a WAL append) gave the topic back without syncing it: when the
    /// reopen then failed, the topic left the checkpoints' list while they
    /// went on moving the WAL past its applied entries, whose segment bytes a
    /// power loss could take. It syncs the partitions first, as the other
    /// paths that give a topic back do.
    #[test]
    fn a_delete_refused_after_its_barrier_syncs_the_topic_it_gives_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (rt, _c, m) = with_batch_a(tmp.path());
        let p = m.partition("t", 0).unwrap();
        assert!(p.unsynced(), "the produce is in the page cache only");
        // A config change whose file may not survive a power loss: the topic
        // given back still refuses produces (its reopen read the file as it
        // is, and knew nothing of it).
        {
            use crate::wal::files::{AtomicWriteFailure as Fail, INJECTED_ATOMIC_FAILURES};
            INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(Fail::DirSync));
        }
        assert!(m
            .alter_topic_configs("t", false, |c| Ok(c.clone()))
            .is_err());
        m.shared
            .fail_after_take_for_delete
            .store(true, Ordering::SeqCst);
        let e = rt.block_on(m.delete_topic("t")).unwrap_err().to_string();
        assert!(e.contains("injected"), "{e}");
        assert!(!p.unsynced(), "given back unsynced");
        assert!(
            m.topic("t").unwrap().configs_not_durable.is_some(),
            "given back taking produces"
        );
        // The injected failure fails no file: the shutdown's own result is
        // not what this test is about.
        let _ = m.shutdown();
    }

    /// A delete whose sync of the topic's segments fails keeps the topic (as
    /// any delete that fails before the directory moves): storage has failed,
    /// and a create of the same name is refused instead of taking the
    /// directory. Before, the topic was left out of the map with its name free,
    /// and a create removed the directory with what a restart would recover.
    /// Its files, opened again, lack the batch whose write-back failed, so it
    /// stays out of service until the restart, which recovers the batch.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_delete_whose_sync_fails_keeps_the_topic() {
        let (fs, rt, c, m) = on_failing_fs();

        fs.fail(Some(libc::EIO));
        let e = rt.block_on(m.delete_topic("t")).unwrap_err().to_string();
        fs.fail(None);
        assert!(e.contains("Input/output error"), "{e}");
        assert!(m.failure().is_some(), "storage did not fail");
        // The batch whose write-back failed is not in the file opened again:
        // the topic is out of service until the restart, not served short.
        assert!(m.partition("t", 0).is_none(), "served without offset 0");
        let created = m.create_topic("t", 1);
        assert!(
            matches!(&created, Err(CreateError::Storage(e)) if e.contains("no topic is created")),
            "{created:?}"
        );
        assert!(fs.path().join("data/topics/t/topic.json").exists());
        assert!(m.shutdown().is_err());
        drop(m);

        let m = TopicManager::new(c).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.log_end_offset(), 1);
        assert_eq!(
            &p.read(0, 1 << 20).unwrap().unwrap().records[..],
            &batch_at(0, &[b"a"])[..]
        );
        m.shutdown().unwrap();
    }

    /// Positions committed in a deleted topic that outlived its delete (a commit
    /// that raced it, or a drop that failed) do not apply to a topic created
    /// again under the name: the create drops them. Before, the group resumed
    /// the new topic at the old topic's offset.
    #[test]
    fn a_created_topic_starts_without_positions_left_from_its_name_before() {
        let tmp = tempfile::tempdir().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        let old = crate::storage::Committed {
            topic: "t".into(),
            partition: 0,
            offset: 42,
            leader_epoch: -1,
            metadata: None,
        };
        // As a commit that passed its check just before the delete leaves it.
        m.offsets()
            .commit("g", Some("consumer"), vec![old])
            .unwrap();
        m.offsets()
            .commit(
                "g",
                Some("consumer"),
                vec![crate::storage::Committed {
                    topic: "other".into(),
                    partition: 0,
                    offset: 7,
                    leader_epoch: -1,
                    metadata: None,
                }],
            )
            .unwrap();
        m.create_topic("t", 1).unwrap();
        assert!(m.offsets().fetch("g", "t", 0).is_none());
        assert_eq!(m.offsets().fetch("g", "other", 0).unwrap().offset, 7);
        m.shutdown().unwrap();
    }

    /// A topic of the longest valid name (249 bytes) is deleted like any
    /// other. Before, its directory's name in the trash (name, `-`, 16 hex
    /// digits) passed the file system's 255 bytes: the rename failed with
    /// ENAMETOOLONG, and every delete of it failed.
    #[test]
    fn a_topic_of_the_longest_name_can_be_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        let name = "t".repeat(MAX_TOPIC_NAME);
        m.create_topic(&name, 1).unwrap();
        let p = m.partition(&name, 0).unwrap();
        let batch = make_batch(0, &[b"a"]);
        rt.block_on(async {
            let done = m.submit(&name, 0, &batch, Duration::from_secs(5)).await;
            done.unwrap().await.unwrap().unwrap()
        });
        assert_eq!(p.log_end_offset(), 1);
        assert!(rt.block_on(m.delete_topic(&name)).unwrap());
        assert!(m.partition(&name, 0).is_none());
        m.create_topic(&name, 1).unwrap();
        assert_eq!(m.partition(&name, 0).unwrap().log_end_offset(), 0);
        m.shutdown().unwrap();
    }

    /// A topic whose delete failed and which could not be opened again is out
    /// of the map, its directory kept for the next start: a create of its name
    /// is refused and leaves the files. Before, the create removed them.
    #[test]
    fn a_create_does_not_remove_a_kept_topic_out_of_the_map() {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"a"])), Ok(0));
        // As `restore_topic` leaves it when the topic cannot be opened again.
        m.shared.topics.write().unwrap().remove("t");
        m.shared.unopened.lock().unwrap().insert("t".to_string());
        let e = m.create_topic("t", 1).unwrap_err();
        assert!(
            matches!(&e, CreateError::Storage(m) if m.contains("restart")),
            "{e:?}"
        );
        assert!(tmp.path().join("topics/t/topic.json").exists());
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 1);
        // Kept out of the map with no `topic.json` left (the restore found
        // none): a create replaces it, and it is no longer kept (a later
        // delete's retried position drop would take the new topic for it).
        m.shared.topics.write().unwrap().remove("t");
        m.shared.unopened.lock().unwrap().insert("t".to_string());
        std::fs::remove_file(tmp.path().join("topics/t/topic.json")).unwrap();
        m.create_topic("t", 1).unwrap();
        assert!(!m.shared.unopened.lock().unwrap().contains("t"));
        m.shutdown().unwrap();
    }

    /// Without a WAL, one partition's failed segment append stopped the syncs
    /// of every partition, the shutdown's included: what the others had
    /// acknowledged was left in the page cache at a "clean" exit, and the
    /// error spoke of a WAL to recover from. They are synced now, by every
    /// checkpoint and the shutdown, which still fails (nothing recovers what
    /// the failed one lost).
    #[test]
    fn without_a_wal_a_failed_segment_leaves_the_others_synced() {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let c = without_wal(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        m.create_topic("b", 1).unwrap();
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"kept"])).unwrap(), 0);
        let to_b = |v: &[u8]| produce_to(&rt, &m, "b", &make_batch(0, &[v]));
        assert_eq!(to_b(b"acknowledged"), Ok(0));
        let b = m.partition("b", 0).unwrap();
        assert!(b.unsynced());
        let a = m.partition("t", 0).unwrap();
        a.fail_next_append.store(true, Ordering::Relaxed);
        assert!(matches!(
            produce(&rt, &m, &make_batch(0, &[b"lost"])),
            Err(ProduceError::Storage(_))
        ));
        let e = m.checkpoint().unwrap_err().to_string();
        assert!(!b.unsynced(), "a checkpoint synced b: {e}");
        assert!(
            !e.contains("WAL") || e.contains("without a WAL"),
            "no WAL to recover from: {e}"
        );
        assert!(e.contains("every partition's segments were synced"), "{e}");
        assert_eq!(to_b(b"refused").map_err(|_| ()), Err(()));
        let e = m.shutdown().unwrap_err().to_string();
        assert!(e.contains("without a WAL nothing recovers"), "{e}");
        drop((m, a, b));
        let m = TopicManager::new(c).unwrap();
        let b = m.partition("b", 0).unwrap();
        assert_eq!(
            &b.read(0, 1 << 20).unwrap().unwrap().records[..],
            &batch_at(0, &[b"acknowledged"])[..]
        );
        m.shutdown().unwrap();
    }

    /// `config` with the WAL disabled and only the test's own checkpoints.
    fn without_wal(dir: &Path) -> Config {
        let mut c = config(dir);
        c.wal.enabled = false;
        c.storage.checkpoint_interval_ms = 3_600_000;
        c
    }

    /// Without a WAL, a partition's sync failing inside a checkpoint (the
    /// shutdown's last one too) returned at once: the partitions after it
    /// were never synced, and the error spoke of a WAL. They are synced now.
    #[test]
    fn without_a_wal_a_sync_failing_in_a_checkpoint_leaves_the_others_synced() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let m = TopicManager::new(without_wal(tmp.path())).unwrap();
        let names = ["a", "b", "c", "d"];
        for t in names {
            m.create_topic(t, 1).unwrap();
            let b = make_batch(0, &[t.as_bytes()]);
            assert_eq!(produce_to(&rt, &m, t, &b), Ok(0), "{t}");
        }
        // The sync of one in the middle fails, whichever order the
        // checkpoint takes them in.
        let failing = m.partition("b", 0).unwrap();
        let log = failing.dir().join(segment::log_name(0));
        segment::FAIL_LOG_SYNCS.with(|f| f.borrow_mut().push(log));
        let e = m.shutdown().unwrap_err().to_string();
        assert!(e.contains("without a WAL nothing recovers"), "{e}");
        assert!(e.contains("injected fdatasync failure"), "{e}");
        for t in names.iter().filter(|t| **t != "b") {
            assert!(!m.partition(t, 0).unwrap().unsynced(), "{t} synced: {e}");
        }
    }

    /// A produce already in the pipeline when an earlier one's segment append
    /// fails is refused too: appended, it would start a segment past the
    /// offsets the failed batch left empty and move the high watermark over
    /// them. Both are in the WAL, and a restart applies both, in order.
    #[test]
    fn produces_behind_a_failed_segment_append_are_refused() {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"a"])), Ok(0));
        let p = m.partition("t", 0).unwrap();
        p.fail_next_append.store(true, Ordering::Relaxed);
        let (first, second) = rt.block_on(async {
            let timeout = Duration::from_secs(5);
            let first = m.submit("t", 0, &make_batch(0, &[b"b"]), timeout).await;
            let second = m.submit("t", 0, &make_batch(0, &[b"c"]), timeout).await;
            (
                first.unwrap().await.unwrap(),
                second.unwrap().await.unwrap(),
            )
        });
        assert!(matches!(first, Err(ProduceError::Storage(_))), "{first:?}");
        assert!(
            matches!(second, Err(ProduceError::Storage(_))),
            "{second:?}"
        );
        assert_eq!((p.log_end_offset(), p.high_watermark()), (1, 1));
        assert!(m.shutdown().is_err());
        drop((m, p));

        let m = TopicManager::new(c).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.log_end_offset(), 3);
        assert_eq!(
            &p.read(0, 1 << 20).unwrap().unwrap().records[..],
            &[
                batch_at(0, &[b"a"]),
                batch_at(1, &[b"b"]),
                batch_at(2, &[b"c"])
            ]
            .concat()[..]
        );
        m.shutdown().unwrap();
    }

    /// WAL entries below a topic's `wal_floor` belong to an earlier topic of the
    /// same name (deleted, but its entries left past the checkpoint: the
    /// delete's checkpoint failed). Replay must leave them out of the new topic.
    #[test]
    fn replay_skips_entries_below_the_topics_wal_floor() {
        let tmp = tempfile::tempdir().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);

        let (wal, _) = Wal::open(tmp.path().join("wal"), config(tmp.path()).wal.engine).unwrap();
        for (base, v) in [(0, b"a"), (1, b"b"), (2, b"c")] {
            wal.append("t", 0, Bytes::from(batch_at(base, &[v])))
                .wait()
                .unwrap();
        }
        let last = wal.last_acked_sequence();
        wal.close().unwrap();
        // The topic now in place is a new one, created after those entries.
        let path = tmp.path().join("topics/t/topic.json");
        let mut f: TopicFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f.id = uuid::Uuid::from_u128(random_id()).to_string();
        f.wal_floor = Some(last + 1);
        std::fs::write(&path, serde_json::to_vec(&f.clone().sealed()).unwrap()).unwrap();
        std::fs::File::options()
            .write(true)
            .open(tmp.path().join("topics/t/0").join(segment::log_name(0)))
            .unwrap()
            .set_len(0)
            .unwrap();

        let m = TopicManager::new(config(tmp.path())).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 0);
        m.shutdown().unwrap();
    }

    /// An older broker set a created topic's `wal_floor` one above the last
    /// acknowledged sequence; in `interval` mode those entries may be unsynced,
    /// and after a power loss the WAL ends below the floor and hands out the lower
    /// sequences again (modelled by a floor set 10 above the end). The start
    /// lowers the floor before anything is appended, so the topic's new
    /// entries are its own at the next recovery: replayed after the WAL's
    /// checkpoint, and rebuilt into a partition short of its recovery point.
    /// Before, both took them for an earlier topic's, and they were lost.
    #[test]
    fn a_wal_floor_above_the_wals_next_sequence_is_lowered_before_anything_is_appended() {
        floor_above_the_wal_end(true);
        floor_above_the_wal_end(false);
    }

    /// See above: with `replayed` the topic's entries lie after the WAL's
    /// checkpoint (a crash before the checkpoint that followed them), without
    /// it behind the checkpoint, in a partition that lost them.
    fn floor_above_the_wal_end(replayed: bool) {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        let last = m.wal().unwrap().last_acked_sequence();
        m.shutdown().unwrap();
        drop(m);
        let path = tmp.path().join("topics/t/topic.json");
        let read_floor = || {
            serde_json::from_slice::<TopicFile>(&std::fs::read(&path).unwrap())
                .unwrap()
                .wal_floor
        };
        let mut f: TopicFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f.wal_floor = Some(last + 10);
        std::fs::write(&path, serde_json::to_vec(&f.clone().sealed()).unwrap()).unwrap();
        let kept = [
            tmp.path()
                .join("wal")
                .join(crate::wal::checkpoint::CHECKPOINT_FILE),
            tmp.path().join(recovery_points::FILE),
        ]
        .map(|p| {
            let bytes = crate::wal::files::read_if_exists(&p).unwrap();
            (p, bytes)
        });

        let m = TopicManager::new(c.clone()).unwrap();
        let floor = m.topic("t").unwrap().wal_floor.unwrap();
        assert_eq!(floor, last + 1, "the WAL continues after its last entry");
        assert_eq!(
            read_floor(),
            Some(floor),
            "topic.json holds the lowered floor"
        );
        for v in [b"a", b"b", b"c"] {
            produce(&rt, &m, &make_batch(0, &[v])).unwrap();
        }
        let p = m.partition("t", 0).unwrap();
        let records = p.read(0, 1 << 20).unwrap().unwrap().records;
        assert_eq!(batch::validate_all(&records).unwrap().len(), 3);
        m.shutdown().unwrap();
        drop((m, p));

        let dir = tmp.path().join("topics/t/0");
        std::fs::File::options()
            .write(true)
            .open(dir.join(segment::log_name(0)))
            .unwrap()
            .set_len(0)
            .unwrap();
        let _ = std::fs::remove_file(dir.join(segment::index_name(0)));
        if replayed {
            // The WAL's checkpoint and the recovery points from before the
            // produces, as a crash before the next checkpoint leaves them.
            for (p, bytes) in &kept {
                match bytes {
                    Some(b) => std::fs::write(p, b).unwrap(),
                    None => std::fs::remove_file(p).unwrap(),
                }
            }
        }
        let m = TopicManager::new(c).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.log_end_offset(), 3, "replayed: {replayed}");
        assert!(
            p.read(0, 1 << 20).unwrap().unwrap().records == records,
            "replayed: {replayed}: the produced batches, byte for byte"
        );
        assert_eq!(read_floor(), Some(floor));
        m.shutdown().unwrap();
    }

    /// A topic directory whose type cannot be learnt (here a symbolic link
    /// leading nowhere, as a volume not mounted leaves it) refuses the start,
    /// naming it. Before, it was skipped as not a directory: the start dropped
    /// every committed position in the topic and took its WAL entries for
    /// orphans. A file or a name Kafka refuses is still skipped, with a
    /// warning.
    #[cfg(unix)]
    #[test]
    fn a_topic_directory_that_cannot_be_looked_up_refuses_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("X", 1).unwrap();
        // X is empty: a position beyond its end would come down to it.
        let at = Committed {
            topic: "X".into(),
            partition: 0,
            offset: 0,
            leader_epoch: -1,
            metadata: None,
        };
        m.offsets().commit("g", None, vec![at]).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let topics = tmp.path().join("topics");
        std::fs::rename(topics.join("X"), tmp.path().join("X-elsewhere")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", topics.join("X")).unwrap();
        std::fs::write(topics.join("notes"), b"not a topic").unwrap();
        std::fs::create_dir(topics.join("not a topic")).unwrap();

        let e = TopicManager::new(c.clone()).unwrap_err().to_string();
        assert!(e.contains(&topics.join("X").display().to_string()), "{e}");
        let stored = OffsetStore::open(tmp.path().join("groups")).unwrap();
        assert_eq!(stored.fetch("g", "X", 0).map(|c| c.offset), Some(0));

        // The topic back in place: the file and the other name are skipped
        // with a warning each, and the position is kept.
        std::fs::remove_file(topics.join("X")).unwrap();
        std::fs::rename(tmp.path().join("X-elsewhere"), topics.join("X")).unwrap();
        let (m, log) = crate::storage::partition::tests::logged(|| TopicManager::new(c).unwrap());
        assert!(log.contains("not a directory, so not a topic"), "{log}");
        assert!(log.contains("not a topic name"), "{log}");
        assert_eq!(m.offsets().fetch("g", "X", 0).map(|c| c.offset), Some(0));
        assert!(m.topic("X").is_some());
        m.shutdown().unwrap();
    }

    /// A dangling symbolic link where a disabled WAL's directory belongs
    /// refuses the start, as one that cannot be looked up: before, it read as
    /// no WAL, and the entries of the WAL it stood for were never replayed.
    #[cfg(unix)]
    #[test]
    fn a_disabled_wals_directory_that_cannot_be_looked_up_refuses_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.wal.enabled = false;
        let wal = c.wal_dir();
        std::os::unix::fs::symlink("/nonexistent", &wal).unwrap();
        let e = TopicManager::new(c.clone()).unwrap_err().to_string();
        assert!(e.contains(&wal.display().to_string()), "{e}");
        std::fs::remove_file(&wal).unwrap();
        TopicManager::new(c).unwrap().shutdown().unwrap();
    }

    /// `topic.json` after a change, as a restart would read it.
    /// A digit of `topic.json` changed by damage: with `wal_floor` raised, the
    /// topic's WAL entries after the checkpoint were taken for an earlier
    /// topic's and dropped, a strict start included (4 acknowledged records
    /// gone); with `retention.ms` lowered, records would be deleted. The file
    /// carries a checksum now, and a start refuses a file it does not match,
    /// naming it; a file without one (an older build's, or one edited by
    /// hand with the field removed) loads unchecked.
    #[test]
    fn a_damaged_topic_file_is_refused_by_its_checksum() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        two_worker_runtime().block_on(async {
            for v in [b"a", b"b", b"c", b"d"] {
                produce_acked(&m, "t", &make_batch(0, &[v])).await;
            }
        });
        m.shutdown().unwrap();
        drop(m);
        let path = tmp.path().join("topics/t/topic.json");
        let good = std::fs::read(&path).unwrap();
        let f = stored_topic(tmp.path());
        assert_eq!(f.crc32c, Some(f.checksum()));
        let floor = f.wal_floor.unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["wal_floor"] = (floor + 4).into();
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        for c in [c.clone(), tolerant(c.clone())] {
            let e = TopicManager::new(c).unwrap_err().to_string();
            assert!(
                e.contains(&path.display().to_string()) && e.contains("checksum mismatch"),
                "{e}"
            );
        }
        // The same file without its checksum loads unchecked.
        v.as_object_mut().unwrap().remove("crc32c");
        v["wal_floor"] = floor.into();
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let m = TopicManager::new(c).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 4);
        m.shutdown().unwrap();
    }

    fn stored_topic(dir: &Path) -> TopicFile {
        serde_json::from_slice(&std::fs::read(dir.join("topics/t/topic.json")).unwrap()).unwrap()
    }

    /// A CreatePartitions whose `topic.json` was renamed into place but whose
    /// directory fsync failed was answered with an error and left the topic
    /// as it was, while the file held the growth, in force after a restart.
    /// The file is now written back. When that fails too, the topic keeps its
    /// partitions and the answer says the next start may find the growth: the
    /// growth was put in force, where it took produces nothing made durable (a
    /// growth sent again to the same count was refused as not growing the
    /// topic); sent again now, it is made anew and stored durably.
    #[test]
    fn a_growth_whose_directory_fsync_fails_is_written_back() {
        use crate::wal::files::{AtomicWriteFailure as Fail, INJECTED_ATOMIC_FAILURES};
        let inject = |f: &[Fail]| {
            INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().extend(f.iter().copied()))
        };
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();

        // Written back.
        inject(&[Fail::DirSync]);
        let Err(CreateError::Storage(e)) = m.add_partitions("t", 2) else {
            panic!("the growth is refused");
        };
        assert!(
            e.contains("written back") && e.contains("keeps its 1 partitions"),
            "{e}"
        );
        assert_eq!(m.topic("t").unwrap().partitions.len(), 1);
        assert_eq!(stored_topic(tmp.path()).partitions, 1);
        // Written back, the write-back's own directory fsync failing.
        inject(&[Fail::DirSync, Fail::DirSync]);
        let Err(CreateError::Storage(e)) = m.add_partitions("t", 2) else {
            panic!("the growth is refused");
        };
        assert!(
            e.contains("keeps its 1 partitions") && e.contains("power loss"),
            "{e}"
        );
        assert_eq!(m.topic("t").unwrap().partitions.len(), 1);
        assert_eq!(stored_topic(tmp.path()).partitions, 1);
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c.clone()).unwrap();
        assert_eq!(m.topic("t").unwrap().partitions.len(), 1, "after a restart");

        // Not written back: the file holds the growth, kept out of force
        // until a growth sent again stores it durably.
        inject(&[Fail::DirSync, Fail::BeforeRename]);
        let Err(CreateError::Storage(e)) = m.add_partitions("t", 3) else {
            panic!("the growth is answered with an error");
        };
        assert!(
            e.contains("keeps its 1 partitions") && e.contains("next start may find the 3"),
            "{e}"
        );
        assert_eq!(m.topic("t").unwrap().partitions.len(), 1);
        assert_eq!(stored_topic(tmp.path()).partitions, 3);
        assert!(
            m.partition("t", 2).is_none(),
            "a new partition takes produces"
        );
        // Sent again, it is made and stored durably.
        m.add_partitions("t", 3).unwrap();
        assert_eq!(m.topic("t").unwrap().partitions.len(), 3);
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c).unwrap();
        assert_eq!(m.topic("t").unwrap().partitions.len(), 3, "after a restart");
        m.shutdown().unwrap();
    }

    /// A change of a topic's `delete.retention.ms` makes the next compaction
    /// pass of each of its partitions judge the tombstones waiting for their
    /// delete horizon; a change of another setting does not.
    #[test]
    fn a_delete_retention_change_rechecks_waiting_tombstones() {
        let tmp = tempfile::tempdir().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        let due = || {
            m.topic("t").unwrap().partitions[0]
                .tombstones_due_ms()
                .load(Ordering::Acquire)
        };
        let partition = m.topic("t").unwrap().partitions[0].clone();
        partition
            .tombstones_due_ms()
            .store(5_000, Ordering::Release);
        let set = |k: &str, v: &str| {
            TopicConfig::from_pairs([("cleanup.policy", Some("compact")), (k, Some(v))]).unwrap()
        };
        m.alter_topic_configs("t", false, |_| Ok(set("retention.ms", "1000")))
            .unwrap();
        assert_eq!(due(), 5_000);
        m.alter_topic_configs("t", false, |_| Ok(set("delete.retention.ms", "1000")))
            .unwrap();
        assert_eq!(due(), i64::MIN);
        m.shutdown().unwrap();
    }

    /// Produces one keyed record (`None`: a tombstone) to partition 0 of
    /// `topic` and waits for its acknowledgement.
    pub(super) async fn produce_keyed_record(
        m: &TopicManager,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) {
        let b = batch::tests::make_keyed_batch(0, 0, &[(0, Some(key), value)], -1, -1, -1);
        produce_acked(m, topic, &b).await;
    }

    /// A damaged batch in an older segment, started without recovery points
    /// (the file lost, or ignored by a tolerant start as damaged) while the
    /// WAL had checkpointed past the segments: the start scanned every
    /// segment from offset 0 and made the damaged one the newest, removing
    /// every intact segment after it, a strict start included (60 records
    /// down to 7), though the WAL no longer held them. A strict start now
    /// refuses, naming the segment; a tolerant one keeps the later segments
    /// and loses only the damaged segment's tail.
    #[test]
    fn a_damaged_segment_without_recovery_points_does_not_take_the_later_segments() {
        let logs = |dir: &Path| recovery_points::repair_tests::segment_logs(dir, "t");
        for points_damaged in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let mut c = config(tmp.path());
            c.wal.engine.max_file_size = 64 << 10;
            c.storage.segment_bytes = 4096;
            let m = TopicManager::new(c.clone()).unwrap();
            m.create_topic("t", 1).unwrap();
            two_worker_runtime().block_on(async {
                for i in 0..60 {
                    let v = format!("a-{i}-{}", "x".repeat(200)).into_bytes();
                    produce_acked(&m, "t", &make_batch(0, &[&v])).await;
                }
            });
            m.checkpoint().unwrap();
            m.shutdown().unwrap();
            drop(m);
            let segments = logs(tmp.path());
            assert!(segments.len() >= 4, "{} segments", segments.len());
            // A bit flipped in the middle batch of the first segment, its
            // index gone.
            let first = &segments[0];
            let mut raw = std::fs::read(first).unwrap();
            let infos = batch::validate_all(&raw).unwrap();
            let k = infos.len() / 2;
            let pos: usize = infos[..k].iter().map(|i| i.len).sum();
            raw[pos + infos[k].len - 1] ^= 0x40;
            std::fs::write(first, &raw).unwrap();
            std::fs::remove_file(first.with_extension("index")).unwrap();
            let points = tmp.path().join(recovery_points::FILE);
            if points_damaged {
                std::fs::write(&points, b"{\"version\":1,\"top").unwrap();
            } else {
                std::fs::remove_file(&points).unwrap();
            }
            if !points_damaged {
                let Err(e) = TopicManager::new(c.clone()) else {
                    panic!("a strict start refuses");
                };
                let msg = e.to_string();
                assert!(msg.contains(&first.display().to_string()), "{msg}");
                assert!(msg.contains("missing or was ignored"), "{msg}");
                assert_eq!(logs(tmp.path()), segments, "nothing removed");
            }
            c.wal.engine.recovery_mode = RecoveryMode::TolerateCorruption;
            let m = TopicManager::new(c).unwrap();
            let p = m.partition("t", 0).unwrap();
            assert_eq!(p.log_end_offset(), 60, "points damaged: {points_damaged}");
            assert_eq!(logs(tmp.path()), segments, "the later segments kept");
            let second = infos.len() as i64;
            let read = p.read(second, 1 << 20).unwrap().unwrap();
            let got = batch::validate_all(&read.records).unwrap();
            assert_eq!(got[0].base_offset, second, "the second segment reads");
            m.shutdown().unwrap();
        }
    }

    /// A topic without a `wal_floor` (an older build's, from before floors)
    /// whose older segment lost batches the WAL holds after its checkpoint,
    /// without recovery points (that build wrote none): every start judged
    /// the segment lost (the search for its batches needed a floor), a strict
    /// one refusing over batches the WAL held, a tolerant one cutting them
    /// though the replay takes those entries as the topic's own. The batches
    /// are rebuilt from the entries after the checkpoint now.
    #[test]
    fn a_topic_without_a_floor_rebuilds_an_older_segment_from_entries_after_the_checkpoint() {
        let logs = |dir: &Path| recovery_points::repair_tests::segment_logs(dir, "t");
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.storage.segment_bytes = 4096;
        let value = |i: usize| format!("a-{i}-{}", "x".repeat(200)).into_bytes();
        stopped_as_after_a_crash_past_a_checkpoint(&c, 60, value, false);
        let segments = logs(tmp.path());
        assert!(segments.len() >= 3, "{} segments", segments.len());
        // The first segment's second-to-last batch damaged, its index gone.
        let first = &segments[0];
        let mut raw = std::fs::read(first).unwrap();
        let infos = batch::validate_all(&raw).unwrap();
        assert!(infos.len() > 5, "{} batches", infos.len());
        let k = infos.len() - 2;
        let pos: usize = infos[..k].iter().map(|i| i.len).sum();
        raw[pos + infos[k].len - 1] ^= 0x40;
        std::fs::write(first, &raw).unwrap();
        std::fs::remove_file(first.with_extension("index")).unwrap();
        std::fs::remove_file(tmp.path().join(recovery_points::FILE)).unwrap();
        without_wal_floor(tmp.path());

        let m = TopicManager::new(c).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.log_end_offset(), 60);
        for i in 0..60 {
            let read = p.read(i, 1).unwrap().unwrap();
            let got = batch::validate_all(&read.records).unwrap();
            assert_eq!(got[0].base_offset, i);
        }
        assert_eq!(
            std::fs::read(first).unwrap().len(),
            raw.len(),
            "rebuilt whole"
        );
        m.shutdown().unwrap();
    }

    /// The same for a partition short of its recovery point (its newest
    /// segment cut), the WAL's checkpoint behind the points (a crash between
    /// the two writes): the rebuild from the WAL needed a floor too, and a
    /// strict start refused over batches the replay then restores.
    #[test]
    fn a_topic_without_a_floor_rebuilds_a_short_partition_from_entries_after_the_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        stopped_as_after_a_crash_past_a_checkpoint(&c, 10, |i| format!("v-{i}").into_bytes(), true);
        let point = recovery_points::load(tmp.path()).unwrap().unwrap().get(
            "t",
            &stored_topic(tmp.path()).id,
            0,
        );
        assert_eq!(point, Some(10));
        // The segment cut after its fifth batch, its index gone.
        let log = recovery_points::repair_tests::segment_logs(tmp.path(), "t")[0].clone();
        let raw = std::fs::read(&log).unwrap();
        let infos = batch::validate_all(&raw).unwrap();
        let keep: usize = infos[..5].iter().map(|i| i.len).sum();
        std::fs::write(&log, &raw[..keep]).unwrap();
        std::fs::remove_file(log.with_extension("index")).unwrap();
        without_wal_floor(tmp.path());

        let m = TopicManager::new(c).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.log_end_offset(), 10);
        assert!(p.read(0, 1 << 20).unwrap().unwrap().records[..] == raw[..]);
        m.shutdown().unwrap();
    }

    /// Creates topic `t` of one partition, produces `n` one-record batches
    /// (of `value(i)`) with a checkpoint after the third, checkpoints again
    /// at the end when `points_at_end` (the recovery points then cover every
    /// batch), stops, and puts the WAL's checkpoint back as the first left
    /// it: as a crash before the WAL's next checkpoint leaves the directory.
    fn stopped_as_after_a_crash_past_a_checkpoint(
        c: &Config,
        n: usize,
        value: impl Fn(usize) -> Vec<u8>,
        points_at_end: bool,
    ) {
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        let rt = two_worker_runtime();
        let produce_values = |range: std::ops::Range<usize>| {
            rt.block_on(async {
                for i in range {
                    produce_acked(&m, "t", &make_batch(0, &[&value(i)])).await;
                }
            });
        };
        produce_values(0..3);
        m.checkpoint().unwrap();
        let wal_checkpoint = c.storage.data_dir.join("wal/checkpoint.json");
        let kept = std::fs::read(&wal_checkpoint).unwrap();
        let sequence: serde_json::Value = serde_json::from_slice(&kept).unwrap();
        assert!(sequence["sequence"].as_u64().unwrap() > 0, "{sequence}");
        produce_values(3..n);
        if points_at_end {
            m.checkpoint().unwrap();
        }
        m.shutdown().unwrap();
        drop(m);
        std::fs::write(&wal_checkpoint, &kept).unwrap();
    }

    /// Removes `wal_floor` (and the checksum) from topic `t`'s `topic.json`
    /// in `data`, as a build before floors wrote it.
    fn without_wal_floor(data: &Path) {
        let path = data.join("topics/t/topic.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("crc32c");
        assert!(o.remove("wal_floor").is_some());
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    /// Produces `batch` to partition 0 of `topic` and waits for its
    /// acknowledgement.
    pub(super) async fn produce_acked(m: &TopicManager, topic: &str, batch: &[u8]) {
        m.submit(topic, 0, batch, Duration::from_secs(5))
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
    }

    /// A `delete.retention.ms` lowered while a compaction round was under way:
    /// a pass of that round ran with the value the round had read at its
    /// start and then stored when its waiting tombstones came due by that
    /// value, over the change's own recheck. On a quiet partition they then
    /// stayed until that time (a day by default). The round now sees the
    /// change and leaves the next pass to judge them. (A change before a pass
    /// starts is read by the pass itself: entry 255.)
    #[test]
    fn a_delete_retention_lowered_during_a_compaction_round_is_judged_by_the_next_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.storage.segment_bytes = 4096;
        // Only this test's rounds.
        c.storage.cleaner_backoff_ms = 3_600_000;
        let m = TopicManager::new(c).unwrap();
        let retention = |ms: &str| {
            TopicConfig::from_pairs([
                ("cleanup.policy", Some("compact")),
                ("delete.retention.ms", Some(ms)),
            ])
            .unwrap()
        };
        m.create_topic_with("t", 1, retention("86400000")).unwrap();
        let filler = vec![b'f'; 300];
        let names: Vec<String> = (0..40).map(|i| format!("other{i}")).collect();
        let mut records: Vec<(&[u8], Option<&[u8]>)> =
            vec![(b"gone", Some(b"old")), (b"gone", None)];
        records.extend(names.iter().map(|k| (k.as_bytes(), Some(&filler[..]))));
        let rt = runtime();
        rt.block_on(async {
            for (k, v) in records {
                produce_keyed_record(&m, "t", k, v).await;
            }
        });
        m.checkpoint().unwrap();
        let p = m.topic("t").unwrap().partitions[0].clone();
        let due = || p.tombstones_due_ms().load(Ordering::SeqCst);
        // The value is lowered to 0 while the round's pass copies its first
        // group, by a day: the pass removes the old value, keeps the
        // tombstone, and stores when it comes due by the day, after the
        // change's own recheck.
        let round = compact_changing_mid_copy(&m, move |m| {
            m.alter_topic_configs("t", false, |_| Ok(retention("0")))
                .unwrap();
        });
        assert_eq!(round.records_removed, 1, "the old value");
        assert_eq!(m.topic("t").unwrap().configs, retention("0"));
        assert_eq!(due(), i64::MIN, "judged again by the next pass");
        assert_eq!(m.compact().records_removed, 1, "the tombstone goes");
        assert_eq!(due(), i64::MAX, "nothing waits");
        m.shutdown().unwrap();
    }

    /// A compaction round of `m` on a thread of its own, whose pass runs
    /// `change` once it has written its first group's copy.
    fn compact_changing_mid_copy(
        m: &TopicManager,
        change: impl FnOnce(&TopicManager) + Send + 'static,
    ) -> compaction::CompactionStats {
        let (changer, runner) = (m.clone(), m.clone());
        std::thread::spawn(move || {
            crate::storage::partition::BETWEEN_COPY_AND_SWAP.with(|b| {
                *b.borrow_mut() = Some(Box::new(move || change(&changer)));
            });
            runner.compact()
        })
        .join()
        .unwrap()
    }

    /// A pass under way stops at its next batch when its own topic's configs
    /// change (what it removes is judged by them), and goes on when another
    /// topic's do: any change stopped every pass, so a tool changing some
    /// topic's configs more often than a pass takes would keep every
    /// compacted topic from being compacted.
    #[test]
    fn a_pass_stops_at_a_change_of_its_own_topic_s_configs_only() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.storage.segment_bytes = 4096;
        c.storage.cleaner_backoff_ms = 3_600_000;
        let m = TopicManager::new(c).unwrap();
        let compacted = |retention: &str| {
            TopicConfig::from_pairs([
                ("cleanup.policy", Some("compact")),
                ("delete.retention.ms", Some(retention)),
            ])
            .unwrap()
        };
        m.create_topic("u", 1).unwrap();
        let filler = vec![b'f'; 300];
        let rt = runtime();
        // (topic changed mid-pass, records the round removes)
        let mut removed = Vec::new();
        for (topic, changed) in [("z", ""), ("a", "u"), ("b", "b")] {
            m.create_topic_with(topic, 1, compacted("1000")).unwrap();
            rt.block_on(async {
                for i in 0..80 {
                    // Each key twice in a row: every segment holds records
                    // that go, so every group of the pass removes some.
                    produce_keyed_record(
                        &m,
                        topic,
                        format!("k{}", i / 2).as_bytes(),
                        Some(&filler),
                    )
                    .await;
                }
            });
            m.checkpoint().unwrap();
            // No change: what a whole pass removes.
            let round = if changed.is_empty() {
                m.compact()
            } else {
                compact_changing_mid_copy(&m, move |m| {
                    m.alter_topic_configs(changed, false, |old| {
                        let mut pairs: Vec<(String, Option<String>)> = old
                            .overrides()
                            .iter()
                            .map(|(k, v)| (k.clone(), Some(v.clone())))
                            .collect();
                        pairs.push(("retention.ms".into(), Some("7200000".into())));
                        Ok(TopicConfig::from_pairs(pairs).unwrap())
                    })
                    .unwrap();
                })
            };
            removed.push(round.records_removed);
        }
        let whole = removed[0];
        assert!(whole > 20, "{removed:?}");
        assert_eq!(
            removed[1], whole,
            "another topic's change: the pass goes on"
        );
        assert!(
            removed[2] < whole,
            "its own topic's change: the pass stops ({removed:?})"
        );
        // The next pass does the rest.
        let rest = m.compact().records_removed;
        assert_eq!(removed[2] + rest, whole, "{removed:?} then {rest}");
        m.shutdown().unwrap();
    }

    /// A compaction round that read a topic as compacted went on with it
    /// after a change to `cleanup.policy=delete` was answered: the keyless
    /// records produced after the change (accepted then) were removed by the
    /// round's pass, acknowledged records lost. Each pass now reads its
    /// topic's configs afresh, and one under way stops at a change.
    #[test]
    fn a_compaction_round_keeps_records_produced_after_its_topic_stopped_being_compacted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.storage.segment_bytes = 4096;
        // Only this test's rounds.
        c.storage.cleaner_backoff_ms = 3_600_000;
        let m = TopicManager::new(c).unwrap();
        let compacted = TopicConfig::from_pairs([("cleanup.policy", Some("compact"))]).unwrap();
        m.create_topic_with("t", 1, compacted).unwrap();
        let filler = vec![b'f'; 300];
        let rt = runtime();
        rt.block_on(async {
            for i in 0..20 {
                produce_keyed_record(&m, "t", format!("k{}", i % 2).as_bytes(), Some(&filler))
                    .await;
            }
        });
        let (reached_tx, reached) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        *m.shared.compaction_pause.lock().unwrap() = Some((reached_tx, go_rx));
        let p = m.topic("t").unwrap().partitions[0].clone();
        std::thread::scope(|s| {
            let round = s.spawn(|| m.compact());
            reached.recv().unwrap();
            m.alter_topic_configs("t", false, |_| {
                Ok(TopicConfig::from_pairs([("cleanup.policy", Some("delete"))]).unwrap())
            })
            .unwrap();
            rt.block_on(async {
                for _ in 0..40 {
                    produce_acked(&m, "t", &make_batch(0, &[&filler])).await;
                }
            });
            m.checkpoint().unwrap();
            let end = p.log_end_offset();
            go.send(()).unwrap();
            assert_eq!(
                round.join().unwrap(),
                compaction::CompactionStats::default()
            );
            assert_eq!(p.log_end_offset(), end);
        });
        // Every record is still there: 20 keyed, 40 keyless.
        let mut at = 0;
        let mut records = 0;
        while at < p.high_watermark() {
            let r = p.read(at, 1 << 20).unwrap().unwrap();
            for info in batch::validate_all(&r.records).unwrap() {
                records += info.records;
                at = info.last_offset() + 1;
            }
        }
        assert_eq!(records, 60);
        m.shutdown().unwrap();
    }

    /// An AlterConfigs whose `topic.json` was renamed into place but whose
    /// directory fsync failed was answered with an error and left the old
    /// configuration in force, while the file held the change, in force after
    /// a restart. The change is now in force at once, and the answer says
    /// that it may not survive a power loss. Until a retry stores the file
    /// durably the topic takes no produce: a record accepted under the new
    /// configs could be lost under the old ones a power loss brings back (a
    /// keyless record in a topic changed from compact to delete).
    #[test]
    fn a_config_change_whose_directory_fsync_fails_is_in_force() {
        use crate::wal::files::{AtomicWriteFailure as Fail, INJECTED_ATOMIC_FAILURES};
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        let retention = |ms: &str| TopicConfig::from_pairs([("retention.ms", Some(ms))]).unwrap();

        INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(Fail::DirSync));
        let Err(AlterError::Storage(e)) =
            m.alter_topic_configs("t", false, |_| Ok(retention("1000")))
        else {
            panic!("the change is answered with an error");
        };
        assert!(e.contains("in force") && e.contains("power loss"), "{e}");
        assert_eq!(m.topic("t").unwrap().configs, retention("1000"));
        let rt = tokio::runtime::Runtime::new().unwrap();
        let refused = produce_to(&rt, &m, "t", &batch_at(0, &[b"a"]));
        assert!(
            matches!(&refused, Err(ProduceError::ConfigsNotDurable(e)) if e.contains("power loss")),
            "{refused:?}"
        );
        assert_eq!(
            stored_topic(tmp.path()).configs,
            *retention("1000").overrides()
        );
        // Its retry changes nothing in memory, but is answered only once the
        // file is durable: it was answered NONE at once, and a power loss
        // could bring the old configs back.
        INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(Fail::DirSync));
        let retried = m.alter_topic_configs("t", false, |_| Ok(retention("1000")));
        assert!(
            matches!(&retried, Err(AlterError::Storage(e)) if e.contains("power loss")),
            "{retried:?}"
        );
        assert!(INJECTED_ATOMIC_FAILURES.with(|q| q.borrow().is_empty()));
        assert!(produce_to(&rt, &m, "t", &batch_at(0, &[b"a"])).is_err());
        assert_eq!(
            m.alter_topic_configs("t", false, |_| Ok(retention("1000"))),
            Ok(retention("1000"))
        );
        assert_eq!(
            produce_to(&rt, &m, "t", &batch_at(0, &[b"a"])),
            Ok(0),
            "durable: produces are taken again"
        );
        // A failure before the rename changes nothing.
        INJECTED_ATOMIC_FAILURES.with(|q| q.borrow_mut().push_back(Fail::BeforeRename));
        assert!(matches!(
            m.alter_topic_configs("t", false, |_| Ok(retention("2000"))),
            Err(AlterError::Storage(_))
        ));
        assert_eq!(m.topic("t").unwrap().configs, retention("1000"));
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c).unwrap();
        assert_eq!(
            m.topic("t").unwrap().configs,
            retention("1000"),
            "after a restart"
        );
        m.shutdown().unwrap();
    }

    /// A segment that is not the newest but lost its batches (the disk holds
    /// zeros where they were: a roll while a checkpoint's sync of it was in
    /// flight, then a crash; or a sync the file system answered without making
    /// the data durable), above the recovery point, where the WAL holds every
    /// batch: the open must cut the partition there, drop the later segments
    /// and let replay restore the rest, byte for byte. Before, the open
    /// trusted every segment but the newest, and replay skipped the lost
    /// offsets as held by the segments.
    #[test]
    fn a_lost_segment_above_the_recovery_point_is_restored_from_the_wal() {
        lost_segment_is_restored(TopicConfig::default(), |log| {
            let len = std::fs::metadata(log).unwrap().len() as usize;
            std::fs::write(log, vec![0u8; len]).unwrap();
        });
    }

    /// As above, in a compacted topic: the open had already cut the damaged
    /// segment's tail (its index no longer matched), so a second scan found
    /// nothing to cut, and a compacted topic's segments were allowed to end
    /// before the next began. The batches were lost. Compaction keeps a
    /// segment's offsets contiguous (empty batches span removed records).
    #[test]
    fn a_compacted_topics_segment_that_lost_its_tail_or_its_file_is_restored_from_the_wal() {
        use crate::file_at::FileAt;
        let compact = || TopicConfig::from_pairs([("cleanup.policy", Some("compact"))]).unwrap();
        lost_segment_is_restored(compact(), |log| {
            let len = std::fs::metadata(log).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(log).unwrap();
            f.write_all_at(&[0u8; 100], len - 100).unwrap();
        });
        lost_segment_is_restored(compact(), |log| std::fs::remove_file(log).unwrap());
    }

    /// A topic `t` of one partition, with `configs`, whose 12 batches (of
    /// one record: 300 bytes of `i + 1`) are both in the WAL after its
    /// checkpoint and in segments of 1000 bytes (several), as a crash before
    /// a checkpoint leaves them: the batches and the partition's directory.
    fn in_wal_and_segments(
        root: &std::path::Path,
        configs: TopicConfig,
    ) -> (Vec<Vec<u8>>, std::path::PathBuf) {
        let m = TopicManager::new(config(root)).unwrap();
        m.create_topic_with("t", 1, configs).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let batches: Vec<Vec<u8>> = (0..12u8)
            .map(|i| batch_at(i64::from(i), &[&[i + 1; 300]]))
            .collect();
        let (wal, _) = Wal::open(root.join("wal"), config(root).wal.engine).unwrap();
        for b in &batches {
            wal.append("t", 0, Bytes::from(b.clone())).wait().unwrap();
        }
        wal.close().unwrap();
        let dir = root.join("topics/t/0");
        let p = Partition::open("t", 0, dir.clone(), 1000).unwrap();
        for b in &batches {
            p.append(b, &batch::validate_all(b).unwrap()).unwrap();
        }
        (batches, dir)
    }

    /// Writes 12 batches to the WAL and to topic "t" (with `configs`), in
    /// segments of about three, `damage`s the second segment's log, and checks
    /// that two starts in a row restore every batch once, in order.
    fn lost_segment_is_restored(configs: TopicConfig, damage: impl FnOnce(&std::path::Path)) {
        let tmp = tempfile::tempdir().unwrap();
        let (batches, dir) = in_wal_and_segments(tmp.path(), configs);
        let mut logs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        assert!(logs.len() >= 4, "{logs:?}");
        damage(&logs[1]);
        for round in 0..2 {
            let m = TopicManager::new(config(tmp.path())).unwrap();
            // No segment appended to keeps a time index: the newest has none.
            let newest = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .max()
                .unwrap();
            assert!(
                !newest.with_extension("timeindex").exists(),
                "round {round}: {} has a time index",
                newest.display()
            );
            let p = m.partition("t", 0).unwrap();
            assert_eq!(p.log_end_offset(), 12, "round {round}");
            let mut got = Vec::new();
            let mut next = 0;
            while next < 12 {
                let r = p.read(next, 1 << 20).unwrap().unwrap();
                let infos = batch::validate_all(&r.records).unwrap();
                next = infos.last().unwrap().last_offset() + 1;
                got.extend_from_slice(&r.records);
            }
            assert!(
                got == batches.concat(),
                "round {round}: every batch once, in order ({} bytes read, {} produced)",
                got.len(),
                batches.concat().len()
            );
            m.shutdown().unwrap();
        }
    }

    /// A segment above its recovery point that lost its batches, beside a WAL
    /// with a corrupt entry followed by valid ones: the strict start refuses,
    /// and changes nothing. Before, the segment check ran before the WAL's
    /// open and removed every later segment, intact ones too, durably, before
    /// the WAL refused: the tolerant start the refusal points to then skipped
    /// the corrupt entry, and its batches, held by the removed segments, were
    /// lost.
    #[test]
    fn a_start_refused_for_a_corrupt_wal_removes_no_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, dir) = in_wal_and_segments(tmp.path(), TopicConfig::default());
        let files = || {
            let mut v: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .map(|p| {
                    let bytes = std::fs::read(&p).unwrap();
                    (p, bytes)
                })
                .collect();
            v.sort();
            v
        };
        let logs = files();
        assert!(logs.len() >= 4, "{logs:?}");
        std::fs::write(&logs[1].0, vec![0u8; logs[1].1.len()]).unwrap();
        // One bit of the fourth batch's record flipped in the WAL.
        let current = tmp.path().join("wal/current.wal");
        let mut w = std::fs::read(&current).unwrap();
        let at = w.windows(300).position(|x| x == [4u8; 300]).unwrap();
        w[at + 150] ^= 1;
        std::fs::write(&current, &w).unwrap();
        let before = files();
        let Err(err) = TopicManager::new(config(tmp.path())) else {
            panic!("a strict start refuses");
        };
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert!(files() == before, "the refused start changed the segments");
    }

    /// A partition short of its recovery point whose missing batches the WAL
    /// holds after its checkpoint (a checkpoint reads the applied sequence
    /// before the partitions' ends, so batches applied in between lie below the
    /// point but after the checkpoint): the start restores them. Before, the
    /// rebuild stopped at the checkpoint and a strict start refused to run,
    /// saying the WAL no longer held what it did.
    #[test]
    fn a_short_partition_is_rebuilt_from_entries_after_the_checkpoint_too() {
        let tmp = tempfile::tempdir().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);

        let batches: Vec<Vec<u8>> = (0..12u8)
            .map(|i| batch_at(i64::from(i), &[&[i; 300]]))
            .collect();
        let (wal, _) = Wal::open(tmp.path().join("wal"), config(tmp.path()).wal.engine).unwrap();
        let mut seqs = Vec::new();
        for b in &batches {
            seqs.push(wal.append("t", 0, Bytes::from(b.clone())).wait().unwrap());
        }
        wal.checkpoint(seqs[5]).unwrap();
        wal.close().unwrap();
        let dir = tmp.path().join("topics/t/0");
        let p = Partition::open("t", 0, dir.clone(), 1 << 20).unwrap();
        for b in &batches {
            p.append(b, &batch::validate_all(b).unwrap()).unwrap();
        }
        p.sync().unwrap();
        drop(p);
        let mut points = recovery_points::load(tmp.path()).unwrap().unwrap();
        points.topics.get_mut("t").unwrap().ends = vec![12];
        recovery_points::store(tmp.path(), &points).unwrap();
        // A flipped byte in batch 8: the opening scan cuts the log there.
        let log = dir.join(segment::log_name(0));
        let mut bytes = std::fs::read(&log).unwrap();
        let at: usize = batches[..8].iter().map(Vec::len).sum::<usize>() + 100;
        bytes[at] ^= 0x40;
        std::fs::write(&log, &bytes).unwrap();

        let m = TopicManager::new(config(tmp.path())).expect("the WAL holds what was lost");
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.log_end_offset(), 12);
        let r = p.read(8, 1 << 20).unwrap().unwrap();
        assert_eq!(
            &r.records[..],
            &batches[8..].concat()[..],
            "restored byte for byte"
        );
        m.shutdown().unwrap();
    }

    #[test]
    fn a_partition_whose_retention_fails_does_not_stop_the_others() {
        use crate::storage::{batch::tests::with_timestamp, partition::tests::store};
        const DAY: i64 = 24 * 3600 * 1000;
        let tmp = tempfile::tempdir().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        let short = TopicConfig::from_pairs([("retention.ms", Some("86400000"))]).unwrap();
        m.create_topic_with("t", 2, short).unwrap();
        let now = segment::now_ms();
        for i in 0..2 {
            let p = m.partition("t", i).unwrap();
            store(&p, with_timestamp(make_batch(0, &[b"old"]), now - 2 * DAY));
        }
        // Partition 0 cannot roll its expired active segment away: a directory
        // holds the new segment's name.
        let blocked = tmp.path().join("topics/t/0").join(segment::log_name(1));
        std::fs::create_dir(&blocked).unwrap();
        let err = m.apply_retention().expect_err("partition 0 fails");
        assert!(
            err.to_string().contains(&blocked.display().to_string()),
            "{err}"
        );
        let (p0, p1) = (m.partition("t", 0).unwrap(), m.partition("t", 1).unwrap());
        assert_eq!(p0.log_start_offset(), 0, "partition 0 kept its records");
        assert_eq!(
            p1.log_start_offset(),
            1,
            "partition 1's expired records went all the same"
        );
        std::fs::remove_dir(&blocked).unwrap();
        m.apply_retention().unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_start_offset(), 1);
        m.shutdown().unwrap();
    }

    /// A retention pass stops once the broker is closing: a shutdown joins
    /// the thread running it, and waited for the whole pass, each partition
    /// with expired segments costing its fsyncs.
    #[test]
    fn a_retention_pass_stops_once_the_broker_is_closing() {
        use crate::storage::checkpoint::AFTER_PARTITION_RETENTION;
        let tmp = tempfile::tempdir().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 20).unwrap();
        let shared = Arc::clone(&m.shared);
        let visited = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&visited);
        AFTER_PARTITION_RETENTION.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                shared.closing.store(true, Ordering::Release);
            }));
        });
        let passed = checkpoint::retention(&m.shared);
        AFTER_PARTITION_RETENTION.with(|h| h.borrow_mut().take());
        passed.unwrap();
        assert_eq!(visited.load(Ordering::SeqCst), 1);
        m.shared.closing.store(false, Ordering::Release);
        m.shutdown().unwrap();
    }

    /// A retention pass reads each partition's topic configs afresh: a change
    /// answered during the pass (here a retention.ms of -1, keep forever,
    /// after partition 0) is in force for the partitions after it. Before, the
    /// pass deleted them by the configs it had read at its start.
    #[test]
    fn a_retention_pass_follows_a_config_change_made_during_it() {
        use crate::storage::{
            batch::tests::with_timestamp, checkpoint::AFTER_PARTITION_RETENTION,
            partition::tests::store,
        };
        const DAY: i64 = 24 * 3600 * 1000;
        let tmp = tempfile::tempdir().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        let short = TopicConfig::from_pairs([("retention.ms", Some("86400000"))]).unwrap();
        m.create_topic_with("t", 2, short).unwrap();
        let now = segment::now_ms();
        for i in 0..2 {
            let p = m.partition("t", i).unwrap();
            store(&p, with_timestamp(make_batch(0, &[b"old"]), now - 2 * DAY));
        }
        let changer = m.clone();
        let mut changed = false;
        AFTER_PARTITION_RETENTION.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                if !std::mem::replace(&mut changed, true) {
                    changer
                        .alter_topic_configs("t", false, |_| {
                            TopicConfig::from_pairs([("retention.ms", Some("-1"))])
                                .map_err(AlterError::Invalid)
                        })
                        .unwrap();
                }
            }));
        });
        let deleted = m.apply_retention();
        AFTER_PARTITION_RETENTION.with(|h| h.borrow_mut().take());
        assert_eq!(deleted.unwrap().0, 1, "partition 0's segment only");
        assert_eq!(m.partition("t", 0).unwrap().log_start_offset(), 1);
        assert_eq!(
            m.partition("t", 1).unwrap().log_start_offset(),
            0,
            "kept, as the change answered before its turn says"
        );
        m.shutdown().unwrap();
    }

    #[test]
    fn topic_configs_are_durable_and_govern_rolls_and_retention() {
        use crate::storage::{
            batch::tests::with_timestamp, partition::tests::store, topic_config::ConfigError,
        };
        const DAY: i64 = 24 * 3600 * 1000;
        let tmp = tempfile::tempdir().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        let small = TopicConfig::from_pairs([
            ("segment.bytes", Some("4096")),
            ("retention.ms", Some("86400000")),
        ])
        .unwrap();
        m.create_topic_with("small", 1, small.clone()).unwrap();
        m.create_topic("plain", 1).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        // 3000-byte batches two days old: one per segment in "small".
        for t in ["small", "plain"] {
            let p = m.partition(t, 0).unwrap();
            for _ in 0..3 {
                store(
                    &p,
                    with_timestamp(make_batch(0, &[&[5u8; 3000]]), now - 2 * DAY),
                );
            }
        }
        let segments = |t: &str| {
            std::fs::read_dir(tmp.path().join("topics").join(t).join("0"))
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "log")
                .count()
        };
        assert_eq!((segments("small"), segments("plain")), (3, 1));

        // Only "small" keeps records for one day; the broker keeps them for 7.
        let (n, _) = m.apply_retention().unwrap();
        assert_eq!(n, 3, "every segment of small, the active one too");
        let (s, p) = (
            m.partition("small", 0).unwrap(),
            m.partition("plain", 0).unwrap(),
        );
        assert_eq!((s.log_start_offset(), s.log_end_offset()), (3, 3));
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (0, 3));

        // A change is checked, stored and applied to the next roll.
        let bigger = |c: &TopicConfig| {
            let mut c = c.clone();
            c.set("segment.bytes", "1048576")?;
            c.remove("retention.ms")?;
            Ok(c)
        };
        assert_eq!(
            m.alter_topic_configs("nope", false, bigger),
            Err(AlterError::UnknownTopic)
        );
        let dry = m.alter_topic_configs("small", true, bigger).unwrap();
        assert_eq!(dry.get("segment.bytes"), Some("1048576"));
        assert_eq!(
            m.topic("small").unwrap().configs,
            small,
            "a dry run stores nothing"
        );
        let refused = m.alter_topic_configs("small", false, |c| {
            let mut c = c.clone();
            c.set("retention.ms", "1")?;
            c.set("cleanup.policy", "archive")?;
            Ok(c)
        });
        assert!(matches!(
            refused,
            Err(AlterError::Invalid(ConfigError::Invalid { .. }))
        ));
        assert_eq!(m.topic("small").unwrap().configs, small, "all or nothing");
        let now_configs = m.alter_topic_configs("small", false, bigger).unwrap();
        for _ in 0..3 {
            store(&s, make_batch(0, &[&[6u8; 3000]]));
        }
        assert_eq!(segments("small"), 1, "no roll below the new segment.bytes");
        m.shutdown().unwrap();
        drop((m, s, p));

        let m = TopicManager::new(config(tmp.path())).unwrap();
        let t = m.topic("small").unwrap();
        assert_eq!(t.configs, now_configs);
        assert_eq!(t.configs.get("segment.bytes"), Some("1048576"));
        assert!(m.topic("plain").unwrap().configs.overrides().is_empty());
        let s = m.partition("small", 0).unwrap();
        assert_eq!((s.log_start_offset(), s.log_end_offset()), (3, 6));
        store(&s, make_batch(0, &[&[7u8; 3000]]));
        assert_eq!(segments("small"), 1, "the reloaded segment.bytes applies");
        // segment.ms: records a second newer than the active segment's first roll it.
        m.alter_topic_configs("plain", false, |c| {
            let mut c = c.clone();
            c.set("segment.ms", "1000")?;
            Ok(c)
        })
        .unwrap();
        let p = m.partition("plain", 0).unwrap();
        store(
            &p,
            with_timestamp(make_batch(0, &[b"x"]), now - 2 * DAY + 1001),
        );
        assert_eq!(segments("plain"), 2);
        m.shutdown().unwrap();
        drop((m, t, s, p));

        // A value this broker cannot honour in topic.json stops the start with
        // the file named, rather than being ignored.
        let path = tmp.path().join("topics/small/topic.json");
        // (Edited by hand, its checksum removed, as the mismatch error says.)
        let text = std::fs::read_to_string(&path).unwrap();
        let mut v: serde_json::Value =
            serde_json::from_str(&text.replace("1048576", "12")).unwrap();
        v.as_object_mut().unwrap().remove("crc32c").unwrap();
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = TopicManager::new(config(tmp.path()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("topic.json") && e.contains("segment.bytes"),
            "{e}"
        );
    }

    /// A start that replays the WAL and then fails (here: a `producer-ids.json`
    /// that does not parse, read once the WAL is checkpointed) leaves recovery
    /// points that cover what the WAL's checkpoint let it drop. Before, the
    /// start moved the WAL's checkpoint right after the replay and wrote the
    /// points only at its end: a failed start left the old points, and damage
    /// between them and the true ends went unseen.
    #[test]
    fn a_start_that_fails_after_replay_leaves_points_covering_the_wal_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let (wal, _) = Wal::open(tmp.path().join("wal"), config(tmp.path()).wal.engine).unwrap();
        for i in 0..12u8 {
            let b = batch_at(i64::from(i), &[&[i; 300]]);
            wal.append("t", 0, Bytes::from(b)).wait().unwrap();
        }
        wal.close().unwrap();
        let bad = tmp.path().join(ProducerIds::FILE);
        std::fs::write(&bad, b"{ not json").unwrap();
        let err = TopicManager::new(config(tmp.path()))
            .expect_err("the producer id file stops the start");
        assert!(err.to_string().contains(ProducerIds::FILE), "{err}");

        let (wal, recovery) =
            Wal::open(tmp.path().join("wal"), config(tmp.path()).wal.engine).unwrap();
        let still_in_wal = recovery.count() as i64;
        wal.close().unwrap();
        assert!(
            still_in_wal < 12,
            "the start failed after the WAL's checkpoint moved ({still_in_wal} entries left)"
        );
        let point = recovery_points::load(tmp.path())
            .unwrap()
            .and_then(|p| p.topics.get("t").map(|t| t.ends[0]))
            .unwrap_or(0);
        assert!(
            point >= 12 - still_in_wal,
            "recovery point {point}, but the WAL dropped {} of 12 batches",
            12 - still_in_wal
        );
        std::fs::remove_file(&bad).unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 12);
        m.shutdown().unwrap();
    }

    /// DeleteRecords and a crash: records the WAL brings back into the segment
    /// stay deleted; a stored start beyond what survived comes down to the end.
    #[test]
    fn deleted_records_stay_deleted_when_recovery_brings_them_back() {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let c = config(tmp.path());
        let m = one_partition_with(&c, &rt, 3, b"gone");
        // Into the active segment: it stays, holding the deleted batches too.
        assert_eq!(m.partition("t", 0).unwrap().delete_records(2), Ok(2));
        m.shutdown().unwrap();
        drop(m);
        // The segment loses everything (as a power loss before its fsync could);
        // the WAL still holds the three batches.
        let seg = tmp.path().join("topics/t/0").join(segment::log_name(0));
        std::fs::File::options()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(0)
            .unwrap();
        let m = TopicManager::new(c.clone()).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (2, 3));
        assert!(p.read(1, 1 << 20).unwrap().is_none(), "not served again");
        assert!(p.read(2, 1 << 20).unwrap().is_some());
        m.shutdown().unwrap();
        drop((m, p));

        // Without the WAL the batches are gone for good; the start comes down to
        // the end, durably, and what is appended next is served.
        let mut lossy = c.clone();
        lossy.wal.enabled = false;
        lossy.wal.engine.recovery_mode = RecoveryMode::TolerateCorruption;
        std::fs::remove_dir_all(tmp.path().join("wal")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(0)
            .unwrap();
        let m = TopicManager::new(lossy.clone()).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (0, 0));
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"new"])), Ok(0));
        m.shutdown().unwrap();
        drop((m, p));
        let m = TopicManager::new(lossy).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (0, 1));
        assert_eq!(
            p.read(0, 1 << 20).unwrap().unwrap().records.len(),
            make_batch(0, &[b"new"]).len()
        );
        m.shutdown().unwrap();
    }

    /// A power loss can take records a group had read and committed past (read
    /// before they were durable: `interval`, `os_default` or the WAL disabled),
    /// while the commit itself was durable. The group then resumed beyond the
    /// recovered log end and skipped the records producers were given those
    /// offsets for. The start brings such a position down to the end, durably,
    /// keeping its metadata, leader epoch and commit times; a write that fails
    /// stops the start naming the file; and a start with nothing beyond an end
    /// rewrites no group's file.
    /// A current-thread runtime for the tests' produces.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A manager on `c` with topic "t" of one partition holding `n` batches
    /// of one record `value`, each acknowledged before the next.
    fn one_partition_with(
        c: &Config,
        rt: &tokio::runtime::Runtime,
        n: i64,
        value: &[u8],
    ) -> TopicManager {
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        for i in 0..n {
            assert_eq!(
                producers::pipeline_tests::produce(rt, &m, &make_batch(0, &[value])),
                Ok(i)
            );
        }
        m
    }

    /// A checkpoint with nothing new applied did not call the WAL's, so what a
    /// failed WAL checkpoint whose error was only logged had left (the one at
    /// the end of a start: a directory fsync after retiring files, a file it
    /// could not retire) waited for the next produce: on an idle broker until
    /// a restart, and a power loss meanwhile could bring back some of the
    /// retired files and not others, a gap the next start refuses. Such a
    /// retry's failure is a warning: the checkpoint itself was stored.
    #[test]
    fn a_checkpoint_with_nothing_new_retries_what_the_last_one_left() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.wal.engine.max_file_size = 64 << 10;
        c.wal.engine.retention_files = 0;
        // Only this test's checkpoints.
        c.storage.checkpoint_interval_ms = 3_600_000;
        let m = one_partition_with(&c, &runtime(), 40, &[b'x'; 4000]);
        let wal = m.shared.wal.as_ref().unwrap();
        // As at the end of a start: the WAL's checkpoint fails after it
        // retired files, and the broker counts everything as checkpointed.
        let applied = m.shared.applied_seq.load(Ordering::SeqCst);
        wal.fail_next_retire_syncs(1);
        assert!(
            wal.checkpoint(applied).is_err(),
            "the injected fsync failure"
        );
        *m.shared.checkpointed.lock().unwrap() = applied;
        wal.fail_next_retire_syncs(1);
        let (done, log) = partition::tests::logged(|| m.checkpoint());
        done.unwrap();
        assert_eq!(wal.retire_syncs_to_fail(), 0, "the fsync was tried again");
        assert!(log.contains("could not retire WAL files"), "{log}");
        m.checkpoint().unwrap();
        // Done now: nothing more to try.
        wal.fail_next_retire_syncs(1);
        m.checkpoint().unwrap();
        assert_eq!(wal.retire_syncs_to_fail(), 1);
        m.shutdown().unwrap();
    }

    /// A tolerant start that skipped damage in a WAL file whose entries the
    /// checkpoint already covered left the file in place (nothing was replayed,
    /// so no checkpoint ran its retention): every strict start refused the same
    /// damage again. The start now retires it; the next strict start is clean
    /// and the records, in the segments, are all there.
    #[test]
    fn a_strict_start_after_a_tolerant_one_does_not_meet_skipped_wal_damage_again() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let m = one_partition_with(&c, &runtime(), 5, b"kept");
        m.shutdown().unwrap();
        drop(m);
        // The payload of the WAL's second batch; valid ones follow.
        let current = tmp.path().join("wal/current.wal");
        let mut bytes = std::fs::read(&current).unwrap();
        bytes[2 * 4096 + 100] ^= 1;
        std::fs::write(&current, &bytes).unwrap();
        let e = TopicManager::new(c.clone()).unwrap_err();
        assert!(e.to_string().contains("current.wal"), "{e}");

        let mut tolerant = c.clone();
        tolerant.wal.engine.recovery_mode = RecoveryMode::TolerateCorruption;
        let m = TopicManager::new(tolerant).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c).expect("a strict start");
        let p = &m.topic("t").unwrap().partitions[0];
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (0, 5));
        m.shutdown().unwrap();
    }

    #[test]
    fn committed_positions_beyond_the_recovered_log_end_come_down_to_it() {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let mut c = config(tmp.path());
        c.wal.enabled = false;
        c.wal.engine.recovery_mode = RecoveryMode::TolerateCorruption;
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        for i in 0..3 {
            assert_eq!(produce(&rt, &m, &make_batch(0, &[b"lost"])), Ok(i));
        }
        let at = |offset| Committed {
            topic: "t".into(),
            partition: 0,
            offset,
            leader_epoch: 7,
            metadata: Some("read".into()),
        };
        m.offsets()
            .commit("g", Some("consumer"), vec![at(3)])
            .unwrap();
        m.offsets().commit("behind", None, vec![at(0)]).unwrap();
        let last_commits = |m: &TopicManager| {
            let mut l: Vec<(String, i64)> = m
                .offsets()
                .last_commits()
                .into_iter()
                .map(|(g, at)| (g, offsets::to_ms(at.wall())))
                .collect();
            l.sort();
            l
        };
        let committed_at = last_commits(&m);
        m.shutdown().unwrap();
        drop(m);
        // The segment loses its batches, as a power loss before its fsync
        // could; with the WAL disabled nothing brings them back.
        let seg = tmp.path().join("topics/t/0").join(segment::log_name(0));
        std::fs::File::options()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(0)
            .unwrap();
        let groups = tmp.path().join("groups");
        let file = |g: &str| {
            let path = groups.join(offsets::file_name(g));
            let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
            (std::fs::read(&path).unwrap(), modified)
        };
        let behind = file("behind");

        // The rewrite cannot be written: the start stops, naming the file.
        let blocked = groups.join(offsets::file_name("g")).with_extension("tmp");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"x").unwrap();
        let err = TopicManager::new(c.clone())
            .expect_err("a start that cannot rewrite the group's file goes on");
        assert!(
            err.to_string().contains(&blocked.display().to_string()),
            "{err}"
        );
        std::fs::remove_dir_all(&blocked).unwrap();

        let m = TopicManager::new(c.clone()).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 0);
        assert_eq!(
            m.offsets().fetch("g", "t", 0),
            Some(at(0)),
            "brought down to the log end, metadata and leader epoch kept"
        );
        assert_eq!(last_commits(&m), committed_at, "commit times kept");
        assert_eq!(
            file("behind"),
            behind,
            "a group within the end is not rewritten"
        );
        // What is produced next lands where the group resumes.
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"new"])), Ok(0));
        let resumed = m
            .partition("t", 0)
            .unwrap()
            .read(m.offsets().fetch("g", "t", 0).unwrap().offset, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(resumed.records.len(), make_batch(0, &[b"new"]).len());
        m.shutdown().unwrap();
        drop(m);

        // Durably; and a start with nothing beyond an end rewrites nothing.
        let g = file("g");
        let m = TopicManager::new(c).unwrap();
        assert_eq!(m.offsets().fetch("g", "t", 0), Some(at(0)));
        assert_eq!(file("g"), g);
        assert_eq!(file("behind"), behind);
        m.shutdown().unwrap();
    }

    /// With the WAL disabled, an existing WAL is replayed (and closed) even
    /// when it has no `current.wal`: a stop between a rotation's two renames
    /// leaves only archived files, and WAL recovery accepts that. Before, such
    /// a WAL was taken for none, and its entries after the checkpoint were
    /// lost, their offsets given to new batches.
    #[test]
    fn a_disabled_wal_without_a_current_file_is_still_replayed() {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);

        let dir = tmp.path().join("wal");
        let (wal, _) = Wal::open(&dir, c.wal.engine.clone()).unwrap();
        for (base, v) in [(0, b"a"), (1, b"b")] {
            wal.append("t", 0, Bytes::from(batch_at(base, &[v])))
                .wait()
                .unwrap();
        }
        wal.close().unwrap();
        let current = dir.join(crate::wal::files::CURRENT);
        let head = std::fs::read(&current).unwrap();
        let number = crate::wal::format::decode_file_header(&head[..4096])
            .unwrap()
            .file_number;
        std::fs::rename(&current, crate::wal::files::archived_path(&dir, number)).unwrap();

        let mut off = c.clone();
        off.wal.enabled = false;
        let m = TopicManager::new(off).unwrap();
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.log_end_offset(), 2, "the WAL was not replayed");
        assert_eq!(
            &p.read(0, 1 << 20).unwrap().unwrap().records[..],
            &[batch_at(0, &[b"a"]), batch_at(1, &[b"b"])].concat()[..]
        );
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"c"])), Ok(2));
        m.shutdown().unwrap();
    }

    #[test]
    fn a_data_dir_is_used_by_one_broker_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.wal.enabled = false;
        let m = TopicManager::new(c.clone()).unwrap();
        assert!(matches!(
            TopicManager::new(c.clone()),
            Err(Error::Locked { .. })
        ));
        m.shutdown().unwrap();
        drop(m);
        TopicManager::new(c).unwrap().shutdown().unwrap();
    }

    /// Validating a compressed batch (a few KiB may decompress to 128 MiB) does
    /// not hold the runtime worker the produce arrived on: on a one-worker
    /// runtime, a task ticking every millisecond keeps ticking while a submit
    /// decompresses 32 MiB.
    #[test]
    fn validating_a_compressed_batch_leaves_the_runtime_worker_free() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        let zeros = vec![0u8; 32 << 20];
        let b = crate::storage::batch::tests::compress_batch(&make_batch(0, &[&zeros]), 1);
        assert!(b.len() < 256 << 10, "{} bytes compressed", b.len());
        let ticks = Arc::new(AtomicU64::new(0));
        let t = Arc::clone(&ticks);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        let m2 = m.clone();
        let (during, base) = rt.block_on(async move {
            // Submitted from a task, as the server does: block_on's own future
            // does not run on the worker.
            tokio::spawn(async move {
                while ticks.load(Ordering::Relaxed) == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let before = ticks.load(Ordering::Relaxed);
                let rx = m2.submit("t", 0, &b, Duration::from_secs(30)).await;
                let during = ticks.load(Ordering::Relaxed) - before;
                (during, rx.unwrap().await.unwrap())
            })
            .await
            .unwrap()
        });
        assert_eq!(base, Ok(0));
        assert!(
            during > 0,
            "the ticker stood still while the batch was validated"
        );
        drop(rt);
        m.shutdown().unwrap();
    }

    #[test]
    fn produce_pipeline_assigns_offsets_and_survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("orders", 2).unwrap();
        let bases = rt.block_on(async {
            let mut rxs = Vec::new();
            for i in 0..10u8 {
                let b = make_batch(0, &[&[i], &[i, i]]);
                rxs.push(
                    m.submit("orders", i32::from(i % 2), &b, Duration::from_secs(5))
                        .await
                        .unwrap(),
                );
            }
            let mut bases = Vec::new();
            for rx in rxs {
                bases.push(rx.await.unwrap().unwrap());
            }
            let unknown = m
                .submit("orders", 7, &make_batch(0, &[b"x"]), Duration::from_secs(1))
                .await;
            assert_eq!(unknown.err(), Some(ProduceError::UnknownTopicOrPartition));
            let mut bad = make_batch(0, &[b"x"]);
            let n = bad.len();
            bad[n - 1] ^= 1;
            let corrupt = m.submit("orders", 0, &bad, Duration::from_secs(1)).await;
            assert!(matches!(
                corrupt.err(),
                Some(ProduceError::InvalidBatch(BatchError::Crc { .. }))
            ));
            bases
        });
        assert_eq!(bases, vec![0, 0, 2, 2, 4, 4, 6, 6, 8, 8]);
        m.shutdown().unwrap();
        // The WAL directory lock is released with the last handle.
        drop(m);
        let m = TopicManager::new(config(tmp.path())).unwrap();
        assert_eq!(m.partition("orders", 0).unwrap().log_end_offset(), 10);
        assert_eq!(m.partition("orders", 1).unwrap().log_end_offset(), 10);
        m.shutdown().unwrap();
    }
    /// A device that starts failing writes at a random moment under the
    /// broker's storage (`FailingExt4`: ext4 on a loop device whose writes
    /// fail). Four producers on two partitions produce one-record batches of
    /// 50 B to 3 KB (`every_write`, 16 KiB segments, 128 KiB WAL files, a
    /// checkpoint every 20 ms: segment rolls, checkpoints, WAL rotations and
    /// deletions all happen) until their produces fail; the device fails with
    /// EIO or ENOSPC after a seeded 0-600 acknowledgements, meeting the WAL,
    /// a segment's sync, a roll or a checkpoint. Then the device works again,
    /// the file system is remounted (what the device holds, as after a crash)
    /// and the storage recovers: each partition's offsets are contiguous from
    /// 0, every batch read back was produced, every acknowledged batch is at
    /// its offset byte for byte, and produces continue after it. A failing
    /// run reports what was lost and keeps a copy of the remounted data
    /// directory; the other seeds go on. Before the checks after syncs
    /// (`crate::wal::journal`) and the scan of segments above the recovery
    /// point this lost acknowledged batches in about one run in 150
    /// (`docs/reliability.md`, "Syncs that return success for data that is not
    /// durable"). Four seeds per backend; `scripts/device-failure-soak.sh`
    /// runs more (`STORAGE_FAILURE_SEEDS`, `STORAGE_FAILURE_FIRST_SEED`).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_device_failing_at_random_moments_loses_no_acknowledged_produce() {
        use crate::file_at::device_failure::{env, mix, payload};
        use crate::wal::BackendKind;
        use std::collections::HashMap;
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let value = |t: u64, i: u64| payload(t, i, 50, 3000);
        let (seeds, first_seed) = (
            env("STORAGE_FAILURE_SEEDS", 4),
            env("STORAGE_FAILURE_FIRST_SEED", 1),
        );
        let rt = two_worker_runtime();
        let mut failures = Vec::new();
        for backend in [BackendKind::Std, BackendKind::Uring] {
            for seed in first_seed..first_seed + seeds {
                let z = mix(seed.wrapping_add(backend as u64 * 1000 + 500));
                let fail_after = ((z >> 8) % 600) as usize;
                let errno = if z & 1 == 0 { libc::EIO } else { libc::ENOSPC };
                let what =
                    format!("{backend} seed {seed} (after {fail_after} acks, errno {errno})");

                let fs = crate::file_at::FailingExt4::mount();
                let mut cfg = config(&fs.path().join("data"));
                cfg.wal.engine.backend = backend;
                cfg.wal.engine.max_file_size = 128 << 10;
                cfg.storage.segment_bytes = 16 << 10;
                cfg.storage.checkpoint_interval_ms = 20;
                let m = Arc::new(TopicManager::new(cfg.clone()).unwrap());
                m.create_topic("t", 2).unwrap();
                let acked = Arc::new(AtomicUsize::new(0));
                // Per producer: (base offset, batch) acknowledged, batches tried, the error.
                type Outcome = (Vec<(i64, Vec<u8>)>, Vec<Vec<u8>>, String);
                let results: Vec<Outcome> = rt.block_on(async {
                    let producers: Vec<_> = (0..4u64)
                        .map(|t| {
                            let (m, acked) = (Arc::clone(&m), Arc::clone(&acked));
                            tokio::spawn(async move {
                                let (mut ok, mut tried) = (Vec::new(), Vec::new());
                                for i in 0.. {
                                    let b = make_batch(0, &[&value(t, i)]);
                                    tried.push(b.clone());
                                    let part = (t % 2) as i32;
                                    let r = match m
                                        .submit("t", part, &b, Duration::from_secs(30))
                                        .await
                                    {
                                        Ok(rx) => {
                                            rx.await.unwrap_or(Err(ProduceError::ShuttingDown))
                                        }
                                        Err(e) => Err(e),
                                    };
                                    match r {
                                        Ok(base) => {
                                            ok.push((base, b));
                                            acked.fetch_add(1, Relaxed);
                                        }
                                        Err(e) => return (ok, tried, format!("{e:?}")),
                                    }
                                }
                                unreachable!()
                            })
                        })
                        .collect();
                    // Producers stop at their first error: one before the
                    // injected failure is a defect, not a wait without end.
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while acked.load(Relaxed) < fail_after
                        && !producers.iter().all(tokio::task::JoinHandle::is_finished)
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    let reached = acked.load(Relaxed) >= fail_after;
                    fs.fail(Some(errno));
                    let mut out: Vec<Outcome> = Vec::new();
                    for p in producers {
                        out.push(p.await.unwrap());
                    }
                    assert!(
                        reached,
                        "{what}: {} of {fail_after} produces acknowledged before the producers \
                         stopped or 120 s passed: {:?}",
                        acked.load(Relaxed),
                        out.iter().map(|o| &o.2).collect::<Vec<_>>()
                    );
                    out
                });
                let _ = m.shutdown(); // fails, unless the failure met nothing unsynced
                drop(m);
                fs.fail(None);
                fs.remount();
                // What the device holds, kept for a look if the run fails.
                let kept =
                    std::env::temp_dir().join(format!("storage-device-failure-{backend}-{seed}"));
                let _ = std::fs::remove_dir_all(&kept);
                let copied = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(fs.path().join("data"))
                    .arg(&kept)
                    .status();
                assert!(copied.is_ok_and(|s| s.success()), "{what}: cp -a");
                // And how the segments' extents stand (`filefrag -v`: unwritten ones).
                let extents = std::process::Command::new("sh")
                    .arg("-c")
                    .arg("filefrag -v topics/*/*/*.log")
                    .current_dir(fs.path().join("data"))
                    .output();
                if let Ok(out) = extents {
                    let _ = std::fs::write(kept.join("filefrag.txt"), out.stdout);
                }

                let m = TopicManager::new(cfg.clone())
                    .unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
                // Which producer's which batch each produced batch is.
                let produced: HashMap<&Vec<u8>, (usize, usize)> = results
                    .iter()
                    .enumerate()
                    .flat_map(|(t, r)| r.1.iter().enumerate().map(move |(i, b)| (b, (t, i))))
                    .collect();
                let mut problems = Vec::new();
                let mut next = [0i64; 2];
                let mut got: [HashMap<i64, Vec<u8>>; 2] = Default::default();
                // Each producer's last batch read back.
                let mut last_of: HashMap<usize, usize> = HashMap::new();
                for part in 0..2 {
                    let p = m.partition("t", part as i32).unwrap();
                    while let Some(r) = p.read(next[part], 1 << 20).unwrap() {
                        if r.records.is_empty() {
                            break;
                        }
                        let mut at = 0;
                        for info in batch::validate_all(&r.records).unwrap() {
                            if info.base_offset != next[part] {
                                problems.push(format!(
                                    "partition {part}: offset {} follows {}",
                                    info.base_offset, next[part]
                                ));
                            }
                            let mut raw = r.records[at..at + info.len].to_vec();
                            batch::assign_offsets(&mut raw, &[info], 0);
                            match produced.get(&raw) {
                                None => problems.push(format!(
                                    "partition {part}: offset {} holds a batch never produced",
                                    info.base_offset
                                )),
                                // Each producer's batches once each, in the
                                // order sent (its next only after its last
                                // was answered): a batch replayed twice, or
                                // one reordered, is data invented.
                                Some(&(t, i)) => {
                                    if let Some(before) = last_of.insert(t, i) {
                                        if before >= i {
                                            problems.push(format!(
                                                "partition {part}: offset {} holds producer {t}'s \
                                                 batch {i} after its batch {before}",
                                                info.base_offset
                                            ));
                                        }
                                    }
                                }
                            }
                            got[part].insert(info.base_offset, raw);
                            next[part] = info.last_offset() + 1;
                            at += info.len;
                        }
                    }
                    if next[part] != p.log_end_offset() {
                        problems.push(format!(
                            "partition {part}: read to {}, log end offset {}",
                            next[part],
                            p.log_end_offset()
                        ));
                    }
                }
                let acked: usize = results.iter().map(|r| r.0.len()).sum();
                eprintln!(
                    "storage-device-failure: {what}: acknowledged {acked} recovered {} + {}; first error: {}",
                    next[0], next[1], results[0].2
                );
                for (t, (ok, _, _)) in results.iter().enumerate() {
                    for (k, (base, b)) in ok.iter().enumerate() {
                        let part = t % 2;
                        if got[part].get(base) != Some(b) {
                            let holds = got[part].get(base).map(|h| produced.get(h));
                            problems.push(format!(
                                "partition {part}: acknowledged offset {base} (producer {t}'s \
                                 batch {k} of {} acknowledged) lost; the offset holds {holds:?} \
                                 (producer, batch)",
                                ok.len()
                            ));
                        }
                    }
                }
                if !problems.is_empty() {
                    let errors: Vec<_> = results.iter().map(|r| &r.2).collect();
                    eprintln!(
                        "storage-device-failure FAILED: {what}: {problems:?}; producers' errors: {errors:?}; the data directory as remounted: {}",
                        kept.display()
                    );
                    failures.push(what.clone());
                    let _ = m.shutdown();
                    continue;
                }
                let bases = rt.block_on(async {
                    let mut bases = Vec::new();
                    for part in 0..2 {
                        let b = make_batch(0, &[b"after"]);
                        let rx = m
                            .submit("t", part, &b, Duration::from_secs(5))
                            .await
                            .unwrap();
                        bases.push(rx.await.unwrap().unwrap());
                    }
                    bases
                });
                assert_eq!(bases, next.to_vec(), "{what}");
                m.shutdown().unwrap();
                let _ = std::fs::remove_dir_all(&kept);
            }
        }
        assert!(failures.is_empty(), "failed: {failures:?}");
    }

    /// `config(dir)` with `--recovery-mode tolerate_corruption`.
    fn tolerant(mut c: Config) -> Config {
        c.wal.engine.recovery_mode = RecoveryMode::TolerateCorruption;
        c
    }

    /// The directories in `topics/` set aside by a tolerant start.
    fn set_aside_dirs(data: &Path) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(data.join("topics"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with("t~") && name.ends_with(STRAY_SUFFIX)
            })
            .collect();
        dirs.sort();
        dirs
    }

    /// A topic directory whose `topic.json` is missing (no crash loses it: it
    /// is written last at create and replaced atomically) but whose segment
    /// holds records. A strict start refuses, naming the file, and changes
    /// nothing: restored, the topic is back whole, with its group's position.
    /// A tolerant start moves the directory aside with its records, and later
    /// starts skip it with a warning. Before, every start removed the
    /// directory as left by an interrupted create, with a warning, and
    /// dropped the positions committed in the topic.
    #[test]
    fn a_topic_directory_without_topic_json_that_holds_records_is_refused_or_set_aside() {
        use crate::storage::{partition::tests::logged, producers::pipeline_tests::produce};
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        for v in [b"a", b"b", b"c"] {
            produce(&rt, &m, &make_batch(0, &[v])).unwrap();
        }
        m.checkpoint().unwrap();
        for v in [b"d", b"e"] {
            produce(&rt, &m, &make_batch(0, &[v])).unwrap();
        }
        let position = Committed {
            topic: "t".into(),
            partition: 0,
            offset: 4,
            leader_epoch: -1,
            metadata: None,
        };
        m.offsets().commit("g", None, vec![position]).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let dir = tmp.path().join("topics/t");
        let file = dir.join("topic.json");
        let log = dir.join("0").join(segment::log_name(0));
        let records = std::fs::read(&log).unwrap();
        assert_eq!(batch::validate_all(&records).unwrap().len(), 5);
        let meta = std::fs::read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();

        let e = TopicManager::new(c.clone()).unwrap_err().to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains(&format!("holds {} bytes", records.len())), "{e}");
        assert!(
            e.contains("restore the file") && e.contains("tolerate_corruption"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(&log).unwrap(),
            records,
            "the records are kept"
        );
        std::fs::write(&file, &meta).unwrap();
        let m = TopicManager::new(c.clone()).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 5);
        assert_eq!(m.offsets().fetch("g", "t", 0).map(|c| c.offset), Some(4));
        m.shutdown().unwrap();
        drop(m);

        std::fs::remove_file(&file).unwrap();
        let (m, log_lines) = logged(|| TopicManager::new(tolerant(c.clone())).unwrap());
        assert!(
            log_lines.contains("ERROR")
                && log_lines.contains("topic.json is missing from a topic directory"),
            "{log_lines}"
        );
        // Its groups' positions go (the name is free), and the log says so.
        assert!(
            log_lines.contains("WARN")
                && log_lines.contains("dropping the consumer groups' committed positions")
                && log_lines.contains("positions=1"),
            "{log_lines}"
        );
        assert_eq!(m.offsets().fetch("g", "t", 0), None);
        assert!(m.topic("t").is_none());
        assert!(!dir.exists());
        let aside = set_aside_dirs(tmp.path());
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(
            std::fs::read(aside[0].join("0").join(segment::log_name(0))).unwrap(),
            records,
            "the records are kept where the directory went"
        );
        // The name is free: the directory set aside cannot be a topic's.
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let (m, log_lines) = logged(|| TopicManager::new(c.clone()).unwrap());
        assert!(
            log_lines.contains("set aside by an earlier start"),
            "{log_lines}"
        );
        assert_eq!(set_aside_dirs(tmp.path()), aside);
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 0);
        m.shutdown().unwrap();
    }

    /// Where the file system does not tell names apart by case, a create of
    /// `orders` while `Orders` is being deleted would take the directory the
    /// delete has yet to move (it was told the directory held a topic kept
    /// after a failed delete): it waits for the delete, as for its own name.
    #[cfg(unix)]
    #[test]
    fn where_case_folds_a_create_waits_for_the_delete_of_its_other_case() {
        let tmp = tempfile::tempdir().unwrap();
        let topics = tmp.path().join("topics");
        std::fs::create_dir(&topics).unwrap();
        std::os::unix::fs::symlink(CASE_PROBE, topics.join(CASE_PROBE.to_ascii_uppercase()))
            .unwrap();
        let rt = two_worker_runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("Orders", 1).unwrap();
        m.pause_next_delete(Duration::from_secs(2));
        let delete = {
            let m = m.clone();
            rt.spawn(async move { m.delete_topic("Orders").await })
        };
        while !m.delete_pause_taken() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let started = Instant::now();
        m.create_topic("orders", 1).unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "the create did not wait for the delete ({:?})",
            started.elapsed()
        );
        assert!(rt.block_on(delete).unwrap().unwrap());
        m.shutdown().unwrap();
    }

    /// Names Windows stores under another name or takes for a device.
    #[test]
    fn names_windows_cannot_give_a_directory_are_known() {
        for name in ["orders.", "CON", "nul", "Aux.logs", "com1", "LPT9.x", "a.."] {
            assert!(windows_cannot_name(name), "{name}");
        }
        for name in ["orders", "console", "com", "com10", "nulls", "a.b", "lpt-1"] {
            assert!(!windows_cannot_name(name), "{name}");
        }
        assert_eq!(valid_topic_name("orders."), !cfg!(windows));
    }

    /// The case probe: a file created in the `topics` directory found again
    /// by its name in upper case (here through a symbolic link, as a
    /// case-folding directory would find it) makes names that differ only by
    /// case collide; another file of that name, or none, does not. The probe
    /// is removed. It is made in `topics` itself: before, `TOPICS` was looked
    /// up beside it, which a `topics` directory that folds case under a data
    /// directory that does not (ext4's casefold attribute) never showed.
    #[cfg(unix)]
    #[test]
    fn a_data_directory_that_folds_case_makes_names_differing_by_case_collide() {
        let tmp = tempfile::tempdir().unwrap();
        let topics = tmp.path().join("topics");
        std::fs::create_dir(&topics).unwrap();
        let upper = topics.join(CASE_PROBE.to_ascii_uppercase());
        assert!(!folds_case(tmp.path(), &topics));
        std::fs::write(&upper, b"").unwrap();
        assert!(!folds_case(tmp.path(), &topics), "another file");
        std::fs::remove_file(&upper).unwrap();
        std::os::unix::fs::symlink(CASE_PROBE, &upper).unwrap();
        assert!(folds_case(tmp.path(), &topics));
        assert!(!topics.join(CASE_PROBE).exists(), "the probe is removed");
        // Beside `topics`, as before: it does not decide.
        std::os::unix::fs::symlink(&topics, tmp.path().join("TOPICS")).unwrap();
        std::fs::remove_file(&upper).unwrap();
        assert!(
            !folds_case(tmp.path(), &topics),
            "judged beside the directory"
        );
        std::os::unix::fs::symlink(CASE_PROBE, &upper).unwrap();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("Orders", 1).unwrap();
        assert!(
            matches!(m.create_topic("orders", 1), Err(CreateError::Collides(ref o)) if o == "Orders")
        );
        m.shutdown().unwrap();
    }

    /// Appends two entries for partition 0 of `t` (offsets 0 and 1) straight
    /// to the WAL of the stopped broker in `dir`: after its checkpoint.
    fn append_two_to_t(dir: &Path, c: &Config) {
        let (wal, _) = Wal::open(dir.join("wal"), c.wal.engine.clone()).unwrap();
        for (base, v) in [(0, b"a"), (1, b"b")] {
            wal.append("t", 0, Bytes::from(batch_at(base, &[v])))
                .wait()
                .unwrap();
        }
        wal.close().unwrap();
    }

    /// A start over many partitions or a large WAL said nothing until it was
    /// done (minutes, before the broker listened): it says how far it got,
    /// every 10 s while topics load and the WAL is scanned and replayed (here
    /// at every step, the interval set to zero).
    #[test]
    fn a_long_start_says_how_far_it_got() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        m.create_topic("u", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);
        append_two_to_t(tmp.path(), &c);
        crate::progress::TEST_EVERY.with(|e| e.set(Some(Duration::ZERO)));
        let (m, lines) = partition::tests::logged(|| TopicManager::new(c).unwrap());
        crate::progress::TEST_EVERY.with(|e| e.set(None));
        for want in [
            "loading topics: 0 of 2 topic directories",
            "loading topics: 1 of 2 topic directories",
            "scanning the WAL: 0 of 1 files",
            "replaying the WAL: 1 of 2 entries after the checkpoint",
            "replaying the WAL: 2 of 2 entries after the checkpoint",
            "loading a topic's partitions: 0 of 1 partitions",
            "syncing the replayed partitions: 1 of 2 partitions",
        ] {
            assert!(lines.contains(want), "no {want:?} in {lines}");
        }
        assert_eq!(m.replay_stats().appended, 2);
        m.shutdown().unwrap();
    }

    /// A topic directory without `topic.json` whose segment is empty but whose
    /// records the WAL holds after its checkpoint (a power loss took the
    /// segment's pages, and the file went too) is no interrupted create: a
    /// strict start refuses, and a tolerant one moves it aside. Before, the
    /// start removed it and checkpointed past the entries as orphans.
    #[test]
    fn a_topic_directory_without_topic_json_whose_records_the_wal_holds_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);
        append_two_to_t(tmp.path(), &c);
        let dir = tmp.path().join("topics/t");
        let file = dir.join("topic.json");
        std::fs::remove_file(&file).unwrap();
        let checkpoint = tmp
            .path()
            .join("wal")
            .join(crate::wal::checkpoint::CHECKPOINT_FILE);
        let before = crate::wal::files::read_if_exists(&checkpoint).unwrap();

        let e = TopicManager::new(c.clone()).unwrap_err().to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains("the WAL holds 2 entries"), "{e}");
        assert!(dir.join("0").exists());
        assert_eq!(
            crate::wal::files::read_if_exists(&checkpoint).unwrap(),
            before
        );

        let m = TopicManager::new(tolerant(c)).unwrap();
        assert_eq!(m.replay_stats().orphaned, 2);
        assert!(m.topic("t").is_none());
        assert_eq!(set_aside_dirs(tmp.path()).len(), 1);
        m.shutdown().unwrap();
    }

    /// A create interrupted before it wrote `topic.json` leaves partition
    /// directories of empty segments (and maybe the file's temporary): the
    /// next start removes them, in strict mode too. So also right after a
    /// delete of a topic of the name that held records, whose checkpoint
    /// recorded them in the recovery points: the create drops those points
    /// before it makes files, or the start would take the directory for a
    /// topic that lost its `topic.json`.
    #[test]
    fn a_directory_left_by_an_interrupted_create_is_removed() {
        use crate::storage::{partition::tests::logged, producers::pipeline_tests::produce};
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let mut c = config(tmp.path());
        c.storage.checkpoint_interval_ms = 3_600_000;
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        for v in [b"a", b"b"] {
            produce(&rt, &m, &make_batch(0, &[v])).unwrap();
        }
        assert!(rt.block_on(m.delete_topic("t")).unwrap());
        let points = || recovery_points::load(tmp.path()).unwrap().unwrap();
        assert_eq!(points().get("t", &points().topics["t"].id, 0), Some(2));
        m.create_topic("t", 2).unwrap();
        // What a crash before the create wrote topic.json leaves.
        let at_crash = std::fs::read(tmp.path().join(recovery_points::FILE)).unwrap();
        m.shutdown().unwrap();
        drop(m);
        std::fs::write(tmp.path().join(recovery_points::FILE), at_crash).unwrap();
        let dir = tmp.path().join("topics/t");
        std::fs::remove_file(dir.join("topic.json")).unwrap();
        std::fs::write(dir.join("topic.tmp"), b"{\"version\":1,").unwrap();

        let (m, log_lines) = logged(|| TopicManager::new(c).unwrap());
        assert!(
            log_lines.contains("left by an interrupted create"),
            "{log_lines}"
        );
        assert!(m.topic("t").is_none());
        assert!(!dir.exists());
        assert!(set_aside_dirs(tmp.path()).is_empty());
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
    }

    /// A create does not wait for a checkpoint in progress, which holds its
    /// lock across every partition's sync (seconds with thousands of
    /// partitions written since the last one): it dropped its name's recovery
    /// points under that lock, and every create and growth queued behind it.
    /// The checkpoint stores points only for topics still in the map.
    #[test]
    fn a_create_does_not_wait_for_a_checkpoint_in_progress() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.storage.checkpoint_interval_ms = 3_600_000;
        let m = TopicManager::new(c).unwrap();
        m.create_topic("t", 1).unwrap();
        let (inside_tx, inside) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(AtomicBool::new(false));
        let checkpointing = {
            let (m, released) = (m.clone(), Arc::clone(&released));
            std::thread::spawn(move || {
                checkpoint::BEFORE_POINTS_STORED.with(|h| {
                    *h.borrow_mut() = Some(Box::new(move || {
                        inside_tx.send(()).unwrap();
                        let _ = release_rx.recv_timeout(Duration::from_secs(10));
                        released.store(true, Ordering::SeqCst);
                    }));
                });
                m.checkpoint().unwrap();
            })
        };
        inside.recv().unwrap();
        m.create_topic("u", 1).unwrap();
        assert!(
            !released.load(Ordering::SeqCst),
            "the create waited for the checkpoint"
        );
        release.send(()).unwrap();
        checkpointing.join().unwrap();
        m.checkpoint().unwrap();
        let points = recovery_points::load(tmp.path()).unwrap().unwrap();
        assert!(points.topics.contains_key("t") && points.topics.contains_key("u"));
        m.shutdown().unwrap();
    }

    /// A topic whose delete fails, and whose reopening fails too, while a
    /// checkpoint syncs it (it goes from the delete list to `unopened`) keeps
    /// the ends that checkpoint synced: the first version of 325's filter
    /// dropped them, and the loop for `unopened` topics put back the older
    /// stored ones while the WAL checkpoint moved past the topic's entries.
    #[test]
    fn a_topic_gone_unopened_during_a_checkpoint_keeps_the_ends_it_synced() {
        use crate::storage::producers::pipeline_tests::produce;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let mut c = config(tmp.path());
        c.storage.checkpoint_interval_ms = 3_600_000;
        let m = TopicManager::new(c).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"a"])), Ok(0));
        m.checkpoint().unwrap();
        let ends = || {
            recovery_points::load(tmp.path()).unwrap().unwrap().topics["t"]
                .ends
                .clone()
        };
        assert_eq!(ends(), vec![1]);
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"b"])), Ok(1));
        // As `take_for_delete` leaves it.
        let t = m.topic("t").unwrap();
        {
            let mut topics = m.shared.topics.write().unwrap();
            m.shared.deleting.lock().unwrap().push(Arc::clone(&t));
            topics.remove("t");
        }
        // Its delete fails and `restore_topic` cannot open it while the
        // checkpoint syncs.
        let shared = Arc::clone(&m.shared);
        checkpoint::BEFORE_POINTS_STORED.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                shared.unopened.lock().unwrap().insert("t".to_string());
                shared.deleting.lock().unwrap().clear();
            }));
        });
        m.checkpoint().unwrap();
        checkpoint::BEFORE_POINTS_STORED.with(|h| *h.borrow_mut() = None);
        assert_eq!(
            ends(),
            vec![2],
            "the ends this checkpoint synced (as before 325)"
        );
        m.shutdown().unwrap();
    }

    /// The broker keeps `--space-reserve-bytes` in `space.reserve` in its data
    /// directory, and none with 0 (a file an earlier run left is removed).
    #[test]
    fn the_space_reserve_is_as_large_as_configured() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(space_reserve::RESERVE_NAME);
        let mut c = config(tmp.path());
        c.storage.space_reserve_bytes = 1 << 20;
        TopicManager::new(c.clone()).unwrap().shutdown().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        c.storage.space_reserve_bytes = 0;
        TopicManager::new(c).unwrap().shutdown().unwrap();
        assert!(!path.exists());
    }

    /// An entry of the topics directory gone between the listing and the look
    /// up of its type is skipped: FUSE gives no type with the listing, and a
    /// file removed while open there stays as `.fuse_hidden*` until it is
    /// closed (the case probe was, once). Before, the start failed on the
    /// look up, naming the vanished file.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_topics_entry_gone_since_the_listing_is_skipped() {
        use crate::storage::partition::tests::logged;
        let fs = crate::file_at::FailingFs::mount();
        let dir = fs.path().join("topics");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("gone"), b"").unwrap();
        let entry = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap();
        std::fs::remove_file(dir.join("gone")).unwrap();
        let (kept, log_lines) = logged(|| topic_dir_entry(&entry, "gone"));
        assert!(!kept.unwrap());
        assert!(
            log_lines.contains("gone since the directory was listed"),
            "{log_lines}"
        );
    }

    /// A batch whose WAL append failed (its fdatasync failed, `FailingFs`)
    /// after its bytes reached the device, answered KAFKA_STORAGE_ERROR: no
    /// topic is deleted, created or grown until a restart. Before, the create
    /// succeeded with a `wal_floor` at the failed batch's sequence, and the
    /// restart replayed the batch into the new topic; and the delete
    /// succeeded, leaving the batch's entry above the checkpoint for a topic
    /// without a directory, which a start cannot tell from a topic whose
    /// directory was lost. After the restart the topic is deleted, and the
    /// name takes a new, empty topic.
    #[cfg(target_os = "linux")]
    #[test]
    fn after_a_wal_failure_no_topic_is_created_or_grown() {
        use crate::storage::producers::pipeline_tests::produce;
        let fs = crate::file_at::FailingFs::mount();
        let rt = two_worker_runtime();
        let mut c = config(&fs.path().join("data"));
        c.storage.checkpoint_interval_ms = 3_600_000;
        // `pwritev` and `fdatasync`, which FailingFs fails.
        c.wal.engine.backend = crate::wal::BackendKind::Std;
        c.wal.engine.direct_io = Some(false);
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"a"])), Ok(0));
        m.create_topic("u", 1).unwrap();
        fs.fail_fsyncs(Some(libc::EIO));
        let failed = produce(&rt, &m, &make_batch(0, &[b"failed"]));
        assert!(
            matches!(failed, Err(ProduceError::Storage(_))),
            "{failed:?}"
        );
        fs.fail_fsyncs(None);
        assert!(m.wal().unwrap().failure().is_some());
        let e = rt.block_on(m.delete_topic("t")).unwrap_err().to_string();
        assert!(
            e.contains("storage has failed") && e.contains("topics/t"),
            "{e}"
        );
        assert!(m.topic("t").is_some());
        assert!(fs.path().join("data/topics/t/topic.json").exists());

        for refused in [m.create_topic("v", 1), m.add_partitions("u", 2)] {
            match refused {
                Err(CreateError::Storage(e)) => {
                    assert!(e.contains("storage has failed"), "{e}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(m.topic("v").is_none());
        assert_eq!(m.topic("u").unwrap().partitions.len(), 1);
        assert!(m.shutdown().is_err());
        drop(m);

        let m = TopicManager::new(c).unwrap();
        assert_eq!(m.replay_stats().orphaned, 0);
        assert!(m.partition("t", 0).unwrap().log_end_offset() >= 1);
        assert!(rt.block_on(m.delete_topic("t")).unwrap());
        m.create_topic("t", 1).unwrap();
        assert_eq!(produce(&rt, &m, &make_batch(0, &[b"new"])), Ok(0));
        let p = m.partition("t", 0).unwrap();
        assert_eq!(
            &p.read(0, 1 << 20).unwrap().unwrap().records[..],
            &batch_at(0, &[b"new"])[..]
        );
        m.shutdown().unwrap();
    }

    /// A topic's `wal_floor` lies above every sequence the WAL has handed out
    /// when it is created, acknowledged or not: here an append whose sync the
    /// device holds. Before, it was one above the last acknowledged sequence,
    /// at the held append's.
    #[cfg(unix)]
    #[test]
    fn a_new_topics_wal_floor_is_above_every_sequence_handed_out() {
        use crate::wal::sim::{SimDisk, SimPlan};
        let tmp = tempfile::tempdir().unwrap();
        let disk = SimDisk::new(SimPlan::plain(1));
        let (wal, _) = Wal::open_sim(tmp.path(), config(tmp.path()).wal.engine, &disk).unwrap();
        let first = wal.append("t", 0, Bytes::from_static(b"a")).wait().unwrap();
        disk.hold_syncs();
        let held = wal.append("t", 0, Bytes::from_static(b"b"));
        while !disk.sync_held() {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(wal.last_acked_sequence(), first);
        let (started, starting) = std::sync::mpsc::channel();
        let floor = {
            let wal = wal.clone();
            std::thread::spawn(move || {
                started.send(()).unwrap();
                new_wal_floor(&wal)
            })
        };
        // Once the thread is about to read it, time for the floor to be read
        // if it does not wait for the held sync (a sleep alone let a late
        // thread read it after the release, and pass with the bug back).
        starting.recv().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        disk.release_syncs();
        let seq = held.wait().unwrap();
        assert_eq!(seq, first + 1);
        assert_eq!(floor.join().unwrap().unwrap(), seq + 1);
        wal.close().unwrap();
    }

    /// WAL entries of a topic (at or above its `wal_floor`) for a partition
    /// its `topic.json` does not list (a growth the file lost: here rewritten
    /// with 3 of its 4 partitions). A strict start refuses, naming the file,
    /// and moves no checkpoint; a tolerant one warns and counts them
    /// orphaned. Before, every start dropped them silently.
    #[test]
    fn wal_entries_for_a_partition_topic_json_does_not_list_refuse_a_strict_start() {
        use crate::storage::partition::tests::logged;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let mut c = config(tmp.path());
        c.storage.checkpoint_interval_ms = 3_600_000;
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 4).unwrap();
        m.checkpoint().unwrap();
        let wal_checkpoint = tmp
            .path()
            .join("wal")
            .join(crate::wal::checkpoint::CHECKPOINT_FILE);
        let kept = [
            wal_checkpoint.clone(),
            tmp.path().join(recovery_points::FILE),
        ]
        .map(|p| (crate::wal::files::read_if_exists(&p).unwrap(), p));
        let base = rt.block_on(async {
            m.submit("t", 3, &make_batch(0, &[b"p3"]), Duration::from_secs(5))
                .await
                .unwrap()
                .await
                .unwrap()
        });
        assert_eq!(base, Ok(0));
        m.shutdown().unwrap();
        drop(m);
        // A crash before the checkpoint after the produce.
        for (bytes, p) in &kept {
            match bytes {
                Some(b) => std::fs::write(p, b).unwrap(),
                None => std::fs::remove_file(p).unwrap(),
            }
        }
        let mut f = stored_topic(tmp.path());
        assert!(f.wal_floor.is_some());
        f.partitions = 3;
        let file = tmp.path().join("topics/t/topic.json");
        std::fs::write(&file, serde_json::to_vec(&f.clone().sealed()).unwrap()).unwrap();

        let e = TopicManager::new(c.clone()).unwrap_err().to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(
            e.contains("lists 3 partitions")
                && e.contains("for partition 3")
                && e.contains("removing its crc32c field"),
            "{e}"
        );
        assert_eq!(
            crate::wal::files::read_if_exists(&wal_checkpoint).unwrap(),
            kept[0].0
        );

        let (m, log_lines) = logged(|| TopicManager::new(tolerant(c)).unwrap());
        assert!(
            log_lines.contains("dropping the entries of partition 3"),
            "{log_lines}"
        );
        assert!(log_lines.contains("orphaned=1"), "{log_lines}");
        assert_eq!(m.topic("t").unwrap().partitions.len(), 3);
        m.shutdown().unwrap();
    }

    /// A `topic.json` whose `version` is unknown or whose partition count is
    /// outside 1 to [`MAX_PARTITIONS`] refuses the start, naming the file,
    /// before any partition directory is made, in tolerant mode too. Before,
    /// each partition listed was opened, its directory and segment created:
    /// a damaged count of 2000000000 filled the disk with them, and a count
    /// of 0 or less loaded a topic of no partitions.
    #[test]
    fn a_topic_json_with_an_unknown_version_or_a_partition_count_out_of_bounds_refuses_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let dir = tmp.path().join("topics/t");
        let file = dir.join("topic.json");
        let good = stored_topic(tmp.path());
        let listing = || {
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            names
        };
        let before = listing();
        let damaged = [
            (-1, 1, "lists -1 partitions"),
            (0, 1, "lists 0 partitions"),
            (2_000_000_000, 1, "lists 2000000000 partitions"),
            (MAX_PARTITIONS + 1, 1, "lists 10001 partitions"),
            (1, 2, "unknown topic.json version 2"),
        ];
        for (partitions, version, says) in damaged {
            let f = TopicFile {
                version,
                partitions,
                id: good.id.clone(),
                wal_floor: good.wal_floor,
                configs: good.configs.clone(),
                crc32c: None,
            };
            std::fs::write(&file, serde_json::to_vec(&f).unwrap()).unwrap();
            for c in [c.clone(), tolerant(c.clone())] {
                let e = TopicManager::new(c).unwrap_err().to_string();
                assert!(e.contains(&file.display().to_string()), "{e}");
                assert!(e.contains(says), "{e}");
                assert_eq!(listing(), before, "{says}: nothing is created");
            }
        }
        std::fs::write(&file, serde_json::to_vec(&good).unwrap()).unwrap();
        let m = TopicManager::new(c).unwrap();
        assert_eq!(m.topic("t").unwrap().partitions.len(), 1);
        m.shutdown().unwrap();
    }

    /// Every file of `groups/` (committed positions), by name.
    fn group_files_of(data: &Path) -> BTreeMap<std::ffi::OsString, Vec<u8>> {
        std::fs::read_dir(data.join("groups"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read(e.path()).unwrap())
            })
            .collect()
    }

    /// Creates topics `t` and `u` of one partition, commits offset 0 in `t`
    /// for each of `groups` (and in `u` for the first), checkpoints and
    /// stops.
    fn stopped_with_positions_in_t_and_u(c: &Config, groups: &[&str]) {
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        m.create_topic("u", 1).unwrap();
        for (i, g) in groups.iter().enumerate() {
            let mut positions = vec![position("t", 0)];
            if i == 0 {
                positions.push(position("u", 0));
            }
            m.offsets().commit(g, None, positions).unwrap();
        }
        m.checkpoint().unwrap();
        m.shutdown().unwrap();
    }

    /// A topic directory gone from outside (removed by hand, moved by a file
    /// system check, a volume not mounted) while the WAL holds acknowledged
    /// entries of the topic after its checkpoint: a strict start refuses,
    /// naming `topics/t`, and changes nothing (the WAL's checkpoint, the
    /// committed positions), so that the directory restored brings the topic
    /// back whole; a tolerant start warns and drops them. Before, every start
    /// counted the entries as orphans, checkpointed past them and dropped the
    /// positions in the topic, with no more than `orphaned=2` in the log.
    /// Entries of a topic whose delete a crash interrupted after it moved the
    /// directory to the trash are still orphans in strict mode.
    #[test]
    fn wal_entries_of_a_topic_whose_directory_is_missing_refuse_a_strict_start() {
        use crate::storage::partition::tests::logged;
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        let position = Committed {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            leader_epoch: -1,
            metadata: None,
        };
        m.offsets().commit("g", None, vec![position]).unwrap();
        m.shutdown().unwrap();
        drop(m);
        append_two_to_t(tmp.path(), &c);
        let dir = tmp.path().join("topics/t");
        let kept = tmp.path().join("kept-t");
        std::fs::rename(&dir, &kept).unwrap();
        let checkpoint = tmp
            .path()
            .join("wal")
            .join(crate::wal::checkpoint::CHECKPOINT_FILE);
        let before = crate::wal::files::read_if_exists(&checkpoint).unwrap();
        let groups = group_files_of(tmp.path());

        let e = TopicManager::new(c.clone()).unwrap_err().to_string();
        assert!(e.contains(&dir.display().to_string()), "{e}");
        assert!(
            e.contains("the WAL holds 2 entries") && e.contains("tolerate_corruption"),
            "{e}"
        );
        assert_eq!(
            crate::wal::files::read_if_exists(&checkpoint).unwrap(),
            before
        );
        assert_eq!(group_files_of(tmp.path()), groups);

        // Restored, the topic is back whole, with its group's position.
        std::fs::rename(&kept, &dir).unwrap();
        let m = TopicManager::new(c.clone()).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 2);
        assert_eq!(m.offsets().fetch("g", "t", 0).map(|c| c.offset), Some(1));
        m.shutdown().unwrap();
        drop(m);

        // A delete interrupted after the move: the entries are orphans.
        let (wal, _) = Wal::open(tmp.path().join("wal"), c.wal.engine.clone()).unwrap();
        wal.append("t", 0, Bytes::from(batch_at(2, &[b"c"])))
            .wait()
            .unwrap();
        wal.close().unwrap();
        let trash = tmp.path().join("topics-deleted");
        std::fs::create_dir_all(&trash).unwrap();
        std::fs::rename(&dir, trash.join("t-1a2b3c")).unwrap();
        let (m, log_lines) = logged(|| TopicManager::new(c.clone()).unwrap());
        assert!(log_lines.contains("orphaned=1"), "{log_lines}");
        assert!(m.topic("t").is_none());
        assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0, "emptied");
        m.create_topic("t", 1).unwrap();
        m.offsets()
            .commit(
                "g",
                None,
                vec![Committed {
                    topic: "t".into(),
                    partition: 0,
                    offset: 0,
                    leader_epoch: -1,
                    metadata: None,
                }],
            )
            .unwrap();
        m.shutdown().unwrap();
        drop(m);

        let (wal, _) = Wal::open(tmp.path().join("wal"), c.wal.engine.clone()).unwrap();
        wal.append("t", 0, Bytes::from(batch_at(0, &[b"d"])))
            .wait()
            .unwrap();
        wal.close().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(TopicManager::new(c.clone()).is_err());
        let (m, log_lines) = logged(|| TopicManager::new(tolerant(c)).unwrap());
        assert!(
            log_lines.contains("WARN")
                && log_lines.contains("the WAL holds 1 entries of the topic")
                && log_lines.contains("dropping the entries"),
            "{log_lines}"
        );
        assert!(log_lines.contains("orphaned=1"), "{log_lines}");
        assert!(m.topic("t").is_none());
        assert_eq!(m.offsets().fetch("g", "t", 0), None);
        m.shutdown().unwrap();
    }

    /// Two topics whose names share their first 200 bytes: the delete of one
    /// interrupted after its directory moved to the trash, the other's
    /// directory gone from outside (a volume not mounted), the WAL holding
    /// entries of both. A strict start refuses, naming the second, and
    /// leaves its entries; the first's are a deleted topic's, dropped.
    /// Before, the trash kept only a name's first 200 bytes and a start
    /// matched by them: it took the second for a deleted topic too and
    /// dropped its acknowledged entries with a warning. A trash entry a
    /// build before keys left (the first 200 bytes) still counts.
    #[test]
    fn a_long_named_topic_in_the_trash_is_told_from_another_of_its_prefix() {
        use crate::storage::partition::tests::logged;
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let prefix = "x".repeat(TRASH_NAME_PREFIX);
        let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
        // A name of exactly 200 bytes is keyed too: whole, it would match
        // every longer name sharing it, as entries of builds before keys do.
        assert_ne!(trash_key(&prefix), prefix.as_str());
        let trashed = BTreeSet::from([trash_key(&prefix).into_owned()]);
        assert!(in_trash(&trashed, &prefix) && !in_trash(&trashed, &a));
        let trashed = BTreeSet::from([prefix.clone()]);
        assert!(
            in_trash(&trashed, &prefix) && in_trash(&trashed, &a),
            "a build before keys"
        );
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic(&a, 1).unwrap();
        m.create_topic(&b, 1).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let (wal, _) = Wal::open(tmp.path().join("wal"), c.wal.engine.clone()).unwrap();
        for t in [&a, &b] {
            wal.append(t, 0, Bytes::from(batch_at(0, &[b"v"])))
                .wait()
                .unwrap();
        }
        wal.close().unwrap();
        let entry = trash_entry_name(&a);
        assert!(entry.len() <= 255 && !entry.starts_with(&prefix), "{entry}");
        assert_ne!(trash_key(&a), trash_key(&b));
        assert_eq!(trash_key("t"), "t");
        let trash = tmp.path().join("topics-deleted");
        std::fs::create_dir_all(&trash).unwrap();
        std::fs::rename(tmp.path().join("topics").join(&a), trash.join(&entry)).unwrap();
        let gone = tmp.path().join("topics").join(&b);
        let kept = tmp.path().join("kept-b");
        std::fs::rename(&gone, &kept).unwrap();

        let e = TopicManager::new(c.clone()).unwrap_err().to_string();
        assert!(
            e.contains(&gone.display().to_string()) && e.contains("the WAL holds 1 entries"),
            "{e}"
        );
        assert!(!e.contains(&format!("{prefix}a")), "{e}");

        // The volume back, the start drops only the deleted topic's entry.
        std::fs::rename(&kept, &gone).unwrap();
        let (m, log_lines) = logged(|| TopicManager::new(c.clone()).unwrap());
        assert!(log_lines.contains("orphaned=1"), "{log_lines}");
        assert!(m.topic(&a).is_none());
        assert_eq!(m.partition(&b, 0).unwrap().log_end_offset(), 1);
        m.shutdown().unwrap();
        drop(m);

        // An entry named by the first 200 bytes, as builds before keys left
        // it, is still the delete of a topic of that prefix.
        let (wal, _) = Wal::open(tmp.path().join("wal"), c.wal.engine.clone()).unwrap();
        wal.append(&b, 0, Bytes::from(batch_at(1, &[b"w"])))
            .wait()
            .unwrap();
        wal.close().unwrap();
        std::fs::rename(&gone, trash.join(format!("{prefix}-1a2b3c"))).unwrap();
        let (m, log_lines) = logged(|| TopicManager::new(c).unwrap());
        assert!(log_lines.contains("orphaned=1"), "{log_lines}");
        assert!(m.topic(&b).is_none());
        m.shutdown().unwrap();
    }

    /// A position of group `g` at `offset` in partition 0 of `topic`.
    fn position(topic: &str, offset: i64) -> Committed {
        Committed {
            topic: topic.into(),
            partition: 0,
            offset,
            leader_epoch: -1,
            metadata: None,
        }
    }

    /// A topic directory gone from outside while the WAL holds nothing of the
    /// topic after its checkpoint (everything checkpointed), its groups'
    /// positions being all that names it: a strict start refuses, naming
    /// `topics/t`, before it drops them or moves the WAL's checkpoint, so
    /// that the directory restored brings the topic back with them; a
    /// tolerant start drops them with a warning naming the topic and the
    /// count. Before, every start dropped them, with an info line.
    #[test]
    fn committed_positions_of_a_topic_whose_directory_is_missing_refuse_a_strict_start() {
        use crate::storage::partition::tests::logged;
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        stopped_with_positions_in_t_and_u(&c, &["g", "h"]);
        let dir = tmp.path().join("topics/t");
        let kept = tmp.path().join("kept-t");
        std::fs::rename(&dir, &kept).unwrap();
        let groups = group_files_of(tmp.path());

        let e = TopicManager::new(c.clone()).unwrap_err().to_string();
        assert!(e.contains(&dir.display().to_string()), "{e}");
        assert!(
            e.contains("consumer groups hold 2 committed positions in the topic")
                && e.contains("tolerate_corruption"),
            "{e}"
        );
        assert_eq!(group_files_of(tmp.path()), groups);

        // Restored, the topic is back with its groups' positions.
        std::fs::rename(&kept, &dir).unwrap();
        let m = TopicManager::new(c.clone()).unwrap();
        assert_eq!(m.offsets().fetch("g", "t", 0).map(|c| c.offset), Some(0));
        m.shutdown().unwrap();
        drop(m);

        std::fs::remove_dir_all(&dir).unwrap();
        assert!(TopicManager::new(c.clone()).is_err());
        let (m, log_lines) = logged(|| TopicManager::new(tolerant(c.clone())).unwrap());
        assert!(
            log_lines.contains("WARN")
                && log_lines.contains("topic=t")
                && log_lines.contains("positions=2")
                && log_lines.contains("dropping the positions"),
            "{log_lines}"
        );
        assert_eq!(m.offsets().fetch("g", "t", 0), None);
        assert_eq!(m.offsets().fetch("h", "t", 0), None);
        assert_eq!(m.offsets().fetch("g", "u", 0).map(|c| c.offset), Some(0));
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c).unwrap();
        m.shutdown().unwrap();
    }

    /// Builds before deletes dropped a topic's committed positions left them
    /// in the groups' files; the first start of a later build refused
    /// strictly, as for a directory lost from outside, though there was
    /// nothing to restore. Positions alone in a topic the last checkpoint's
    /// recovery points do not list are dropped with a warning; a topic they
    /// list still refuses (the test above).
    #[test]
    fn positions_an_older_builds_delete_left_are_dropped() {
        use crate::storage::partition::tests::logged;
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        stopped_with_positions_in_t_and_u(&c, &["g"]);
        let groups = group_files_of(tmp.path());
        // As the older build's delete left it: the directory gone, and a
        // checkpoint after it, whose recovery points no longer list `t`.
        let m = TopicManager::new(c.clone()).unwrap();
        assert!(runtime().block_on(m.delete_topic("t")).unwrap());
        m.shutdown().unwrap();
        drop(m);
        for (name, raw) in &groups {
            std::fs::write(tmp.path().join("groups").join(name), raw).unwrap();
        }
        assert!(!recovery_points::load(tmp.path())
            .unwrap()
            .unwrap()
            .topics
            .contains_key("t"));

        let (m, log_lines) = logged(|| TopicManager::new(c.clone()).unwrap());
        assert!(
            log_lines.contains("WARN")
                && log_lines.contains("topic=t")
                && log_lines.contains("a delete by an older build left them"),
            "{log_lines}"
        );
        assert_eq!(m.offsets().fetch("g", "t", 0), None);
        assert_eq!(m.offsets().fetch("g", "u", 0).map(|c| c.offset), Some(0));
        m.shutdown().unwrap();
    }

    /// A delete a crash interrupted after each of its steps on disk (the move
    /// of the directory to the trash, the drop of the positions in the topic,
    /// the removal of the trash) leaves nothing a strict start refuses, and
    /// the positions are gone after it.
    #[test]
    fn a_delete_interrupted_after_each_step_starts_strict_without_its_positions() {
        for step in ["moved", "positions dropped", "trash removed"] {
            let tmp = tempfile::tempdir().unwrap();
            let c = config(tmp.path());
            let m = TopicManager::new(c.clone()).unwrap();
            m.create_topic("t", 1).unwrap();
            m.create_topic("u", 1).unwrap();
            m.offsets()
                .commit("g", None, vec![position("t", 0), position("u", 0)])
                .unwrap();
            m.checkpoint().unwrap();
            let trash = tmp.path().join("topics-deleted");
            // As the delete moves it.
            std::fs::create_dir_all(&trash).unwrap();
            std::fs::rename(tmp.path().join("topics/t"), trash.join("t-1a2b3c")).unwrap();
            if step != "moved" {
                m.offsets().delete_topic_positions(|t| t == "t").unwrap();
            }
            if step == "trash removed" {
                std::fs::remove_dir_all(&trash).unwrap();
            }
            m.shutdown().unwrap();
            drop(m);

            let m = TopicManager::new(c.clone()).unwrap_or_else(|e| panic!("{step}: {e}"));
            assert!(m.topic("t").is_none(), "{step}");
            assert_eq!(m.offsets().fetch("g", "t", 0), None, "{step}");
            assert_eq!(
                m.offsets().fetch("g", "u", 0).map(|c| c.offset),
                Some(0),
                "{step}"
            );
            assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0, "{step}");
            m.shutdown().unwrap();
        }
    }

    /// Creates topics "t" and "u" in `m` (data directory `dir`), with group
    /// "g"'s positions at 0 in both, then makes the group's file impossible
    /// to rewrite: its temporary file's name is taken by a directory, which
    /// is returned (remove it to let writes through again).
    fn positions_in_t_and_u_unwritable(m: &TopicManager, dir: &Path) -> PathBuf {
        m.create_topic("t", 1).unwrap();
        m.create_topic("u", 1).unwrap();
        m.offsets()
            .commit("g", None, vec![position("t", 0), position("u", 0)])
            .unwrap();
        let blocker = dir
            .join("groups")
            .join(offsets::file_name("g"))
            .with_extension("tmp");
        std::fs::create_dir(&blocker).unwrap();
        blocker
    }

    /// A data directory in `dir` where topic `t` was deleted while the
    /// positions group `g` committed in `t` and `u` could not be dropped
    /// (its files in the trash): its config and what keeps the positions
    /// unwritable.
    fn t_deleted_with_positions_unwritable(dir: &Path) -> (Config, PathBuf) {
        let rt = two_worker_runtime();
        let c = config(dir);
        let m = TopicManager::new(c.clone()).unwrap();
        let blocker = positions_in_t_and_u_unwritable(&m, dir);
        assert!(rt.block_on(m.delete_topic("t")).unwrap());
        assert!(m.topic("t").is_none());
        assert_eq!(m.offsets().fetch("g", "t", 0).map(|c| c.offset), Some(0));
        let in_trash = std::fs::read_dir(dir.join("topics-deleted")).map_or(0, Iterator::count);
        assert_eq!(in_trash, 1, "kept while the positions are");
        m.shutdown().unwrap();
        (c, blocker)
    }

    /// The trash is what tells a start that positions naming a topic without
    /// a directory are a deleted topic's, so it stays until they are
    /// dropped: at a delete whose drop of them failed, and at a start whose
    /// drop failed. Before, both removed it anyway, and the next start found
    /// positions of a topic with no directory and nothing showing its delete.
    #[test]
    fn a_deleted_topics_files_stay_in_the_trash_until_its_positions_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, blocker) = t_deleted_with_positions_unwritable(tmp.path());
        let trash = tmp.path().join("topics-deleted");
        let in_trash = || std::fs::read_dir(&trash).map_or(0, Iterator::count);

        // A start whose drop fails keeps the trash too, not the files (here
        // as a crash between the move and the drop leaves them).
        assert_eq!(files_in_trash(&trash), 0, "the delete removed them");
        let entry = std::fs::read_dir(&trash)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::create_dir(entry.join("0")).unwrap();
        std::fs::write(entry.join("0").join(segment::log_name(0)), b"x").unwrap();
        std::fs::write(entry.join("topic.json"), b"{}").unwrap();
        let m = TopicManager::new(c.clone()).unwrap();
        assert_eq!(m.offsets().fetch("g", "t", 0).map(|c| c.offset), Some(0));
        assert_eq!(in_trash(), 1);
        assert_eq!(files_in_trash(&trash), 0);
        m.shutdown().unwrap();
        drop(m);

        std::fs::remove_dir(&blocker).unwrap();
        let m = TopicManager::new(c).unwrap();
        assert_eq!(m.offsets().fetch("g", "t", 0), None);
        assert_eq!(m.offsets().fetch("g", "u", 0).map(|c| c.offset), Some(0));
        assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0, "emptied");
        m.shutdown().unwrap();
    }

    /// A delete whose drop of the topic's positions failed (a full disk, a
    /// passing error) kept the topic's files in the trash until the next
    /// start: a broker that went on running never got their space back. The
    /// next retention pass now drops them and removes the files; one that
    /// finds a topic of the name created since (whose create dropped them)
    /// only removes the files, the new topic's positions untouched, also
    /// when that topic is out of the map after a failed delete of its own.
    #[test]
    fn a_deletes_failed_position_drop_is_finished_by_the_next_retention_pass() {
        // Not created again; created again; created again, then out of the
        // map until a restart.
        for (created_again, unopened) in [(false, false), (true, false), (true, true)] {
            let tmp = tempfile::tempdir().unwrap();
            let rt = two_worker_runtime();
            let m = TopicManager::new(config(tmp.path())).unwrap();
            let blocker = positions_in_t_and_u_unwritable(&m, tmp.path());
            let trash = tmp.path().join("topics-deleted");
            let in_trash = || std::fs::read_dir(&trash).map_or(0, Iterator::count);
            assert!(rt.block_on(m.delete_topic("t")).unwrap());
            assert_eq!(in_trash(), 1, "kept while the positions are");
            assert_eq!(files_in_trash(&trash), 0, "the files are not kept");
            still_failing_then_finished(&m, &trash, &blocker, created_again, || {
                if unopened {
                    // As `restore_topic` leaves it when it cannot open it again.
                    m.shared.topics.write().unwrap().remove("t");
                    m.shared.unopened.lock().unwrap().insert("t".to_string());
                }
            });
        }
    }

    /// What the entries of the trash `trash` hold.
    fn files_in_trash(trash: &Path) -> usize {
        std::fs::read_dir(trash)
            .unwrap()
            .map(|e| std::fs::read_dir(e.unwrap().path()).unwrap().count())
            .sum()
    }

    /// For the tests of a delete of topic `t` whose drop of group `g`'s
    /// positions failed (`blocker` keeping them unwritable) and whose files
    /// are in `trash`: a retention pass changes nothing while the drop still
    /// fails; once it can succeed, with `t` created again with a position of
    /// 5 (`created_again`) and then `meanwhile` run, the next pass removes the
    /// files, leaving the new topic's position and `u`'s.
    fn still_failing_then_finished(
        m: &TopicManager,
        trash: &Path,
        blocker: &Path,
        created_again: bool,
        meanwhile: impl FnOnce(),
    ) {
        let in_trash = || std::fs::read_dir(trash).map_or(0, Iterator::count);
        m.apply_retention().unwrap();
        assert_eq!(in_trash(), 1, "still failing");
        assert_eq!(m.offsets().fetch("g", "t", 0).map(|c| c.offset), Some(0));
        std::fs::remove_dir(blocker).unwrap();
        if created_again {
            m.create_topic("t", 1).unwrap();
            assert_eq!(
                m.offsets().fetch("g", "t", 0),
                None,
                "dropped by the create"
            );
            m.offsets()
                .commit("g", None, vec![position("t", 5)])
                .unwrap();
        }
        meanwhile();
        m.apply_retention().unwrap();
        assert_eq!(in_trash(), 0, "the deleted topic's files are gone");
        let expected = created_again.then_some(5);
        assert_eq!(m.offsets().fetch("g", "t", 0).map(|c| c.offset), expected);
        assert_eq!(m.offsets().fetch("g", "u", 0).map(|c| c.offset), Some(0));
        m.shutdown().unwrap();
    }

    /// A start whose drop of the positions in topics without a directory
    /// failed kept the deleted topics' files in the trash until the next
    /// start. Each retention pass now tries again: once the drop succeeds the
    /// files go, the positions of a topic created since the start (here one
    /// of the deleted name) untouched.
    #[test]
    fn a_starts_failed_position_drop_is_finished_by_a_retention_pass() {
        for created_again in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let (c, blocker) = t_deleted_with_positions_unwritable(tmp.path());
            let trash = tmp.path().join("topics-deleted");
            let in_trash = || std::fs::read_dir(&trash).map_or(0, Iterator::count);
            let m = TopicManager::new(c).unwrap();
            assert_eq!(in_trash(), 1, "kept while the positions are");
            still_failing_then_finished(&m, &trash, &blocker, created_again, || {});
        }
    }

    /// A trash entry a start cannot remove is kept, with a warning, for the
    /// retention passes to remove, as at run time. Before, every start
    /// failed over it, in both recovery modes.
    #[test]
    fn a_trash_entry_a_start_cannot_remove_is_left_to_the_retention_passes() {
        use crate::storage::partition::tests::logged;
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let entry = tmp.path().join("topics-deleted").join("t-1a2b");
        std::fs::create_dir_all(entry.join("0")).unwrap();
        // A file in the trash too, which a retention pass removed as a
        // directory (and failed, at every pass).
        let file = tmp.path().join("topics-deleted").join("u-3c4d");
        std::fs::write(&file, b"x").unwrap();
        FAIL_TRASH_REMOVAL.with(|f| f.set(true));
        let started = logged(|| TopicManager::new(c.clone()));
        FAIL_TRASH_REMOVAL.with(|f| f.set(false));
        let (m, log_lines) = (started.0.unwrap(), started.1);
        assert!(
            log_lines.contains("could not remove a deleted topic's files"),
            "{log_lines}"
        );
        assert!(entry.exists() && file.exists());
        m.apply_retention().unwrap();
        assert!(!entry.exists(), "removed by a retention pass");
        assert!(!file.exists(), "removed by a retention pass");
        m.shutdown().unwrap();
    }

    /// Recovery points of the topic's id that give a partition beyond its
    /// `topic.json`'s count flushed offsets (a growth in force whose file a
    /// power loss undid, after the partition's records were checkpointed and
    /// their WAL entries retired): a strict start refuses, naming the file; a
    /// tolerant one warns, and a later growth sets the partition's old
    /// directory aside rather than serve its records as the new partition's.
    /// Before, every start went on silently, and the growth reopened the
    /// directory with the old records at offsets 0 and on.
    #[test]
    fn recovery_points_beyond_topic_jsons_partitions_refuse_a_strict_start() {
        use crate::storage::partition::tests::logged;
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 2).unwrap();
        let base = rt.block_on(async {
            m.submit("t", 1, &make_batch(0, &[b"p1"]), Duration::from_secs(5))
                .await
                .unwrap()
                .await
                .unwrap()
        });
        assert_eq!(base, Ok(0));
        m.checkpoint().unwrap();
        m.shutdown().unwrap();
        drop(m);
        let mut f = stored_topic(tmp.path());
        f.partitions = 1;
        let file = tmp.path().join("topics/t/topic.json");
        std::fs::write(&file, serde_json::to_vec(&f.clone().sealed()).unwrap()).unwrap();
        let points = std::fs::read(tmp.path().join(recovery_points::FILE)).unwrap();

        let e = TopicManager::new(c.clone()).unwrap_err().to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(
            e.contains("lists 1 partitions")
                && e.contains("partition 1")
                && e.contains("removing its crc32c field"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(tmp.path().join(recovery_points::FILE)).unwrap(),
            points
        );

        let (m, log_lines) = logged(|| TopicManager::new(tolerant(c.clone())).unwrap());
        assert!(
            log_lines.contains("the file lost partitions of the topic"),
            "{log_lines}"
        );
        assert_eq!(m.topic("t").unwrap().partitions.len(), 1);
        let (grown, log_lines) = logged(|| m.add_partitions("t", 2));
        grown.unwrap();
        let p = m.partition("t", 1).unwrap();
        assert_eq!(p.high_watermark(), 0);
        assert_eq!(p.log_end_offset(), 0);
        assert!(log_lines.contains("moved it aside"), "{log_lines}");
        let aside: Vec<_> = std::fs::read_dir(tmp.path().join("topics/t"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("1~") && n.ends_with(STRAY_SUFFIX))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        let kept = tmp.path().join("topics/t").join(&aside[0]);
        let records = std::fs::read(kept.join(segment::log_name(0))).unwrap();
        assert_eq!(batch::validate_all(&records).unwrap().len(), 1);
        m.shutdown().unwrap();
        drop(m);
        // The next start, strict, opens the topic's two partitions.
        let m = TopicManager::new(c).unwrap();
        assert_eq!(m.topic("t").unwrap().partitions.len(), 2);
        assert_eq!(m.partition("t", 1).unwrap().log_end_offset(), 0);
        m.shutdown().unwrap();
    }

    /// Topics could be created until one failed with EMFILE, leaving storage
    /// a descriptor or none: the next WAL rotation, checkpoint or segment roll
    /// then failed storage until a restart. A create or growth whose
    /// partitions' files would pass what the open-file limit leaves them is
    /// now refused before anything is created, exactly past the bound.
    #[test]
    fn a_create_or_growth_past_the_open_file_budget_is_refused_at_the_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let mut c = config(tmp.path());
        c.server.max_connections = Some(100);
        c.storage.segment_open_files = Some(16);
        let m = TopicManager::new(c).unwrap();
        // 200 - 100 connections - 16 cached - 64 kept = 20 files: 10 partitions.
        m.set_open_file_limit(Some(200));
        m.create_topic("a", 4).unwrap();
        m.create_topic("b", 6).unwrap();
        let refused = |r: std::result::Result<Arc<Topic>, CreateError>| match r {
            Err(CreateError::TooManyFiles(e)) => e,
            other => panic!("not refused for its files: {other:?}"),
        };
        let e = refused(m.create_topic("c", 1));
        assert_eq!(
            (e.limit, e.connections, e.cache, e.open, e.new, e.most()),
            (200, 100, 16, 10, 1, 10)
        );
        assert!(m.topic("c").is_none());
        assert!(!tmp.path().join("topics/c").exists(), "nothing is created");
        let e = refused(m.add_partitions("b", 7));
        assert_eq!((e.open, e.new), (10, 1));
        assert_eq!(m.topic("b").unwrap().partitions.len(), 6);
        assert!(!tmp.path().join("topics/b/6").exists());
        // A deleted topic's partitions are given back.
        assert!(rt.block_on(m.delete_topic("a")).unwrap());
        assert_eq!(m.add_partitions("b", 10).unwrap().partitions.len(), 10);
        refused(m.create_topic("c", 1));
        // The server's connection cap, set when it binds, replaces the
        // configured one.
        m.reserve_files_for_connections(98);
        m.create_topic("c", 1).unwrap();
        refused(m.create_topic("d", 1));
        refused(m.add_partitions("c", 2));
        // No limit, no bound.
        m.set_open_file_limit(None);
        m.create_topic("d", 1000).unwrap();
        m.shutdown().unwrap();
    }

    /// A name colliding with a topic's (`.` for `_` or the reverse) is
    /// refused whichever came first, and free again once that topic is
    /// deleted: the index of names by metric name follows creates and
    /// deletes.
    #[test]
    fn colliding_names_are_refused_both_ways_and_freed_by_a_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = two_worker_runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        for (first, second) in [("a.b", "a_b"), ("a_b", "a.b")] {
            m.create_topic(first, 1).unwrap();
            assert_eq!(m.colliding_topic(second).as_deref(), Some(first));
            assert_eq!(m.colliding_topic(first), None, "not with itself");
            assert_eq!(
                m.create_topic(second, 1).unwrap_err(),
                CreateError::Collides(first.to_string())
            );
            assert!(m.topic(second).is_none());
            assert!(rt.block_on(m.delete_topic(first)).unwrap());
            assert_eq!(m.colliding_topic(second), None);
            m.create_topic(second, 1).unwrap();
            assert_eq!(m.colliding_topic(first).as_deref(), Some(second));
            assert!(rt.block_on(m.delete_topic(second)).unwrap());
        }
        assert_eq!(m.colliding_topic("ab"), None);
        m.shutdown().unwrap();
    }
}
