//! `recovery-points.json`: for every partition, the log end offset the last
//! checkpoint flushed to its segments (Kafka keeps the same per log directory in
//! `recovery-point-offset-checkpoint`).
//!
//! A checkpoint reads each partition's end, `fdatasync`s the segments, writes this
//! file atomically, and only then checkpoints the WAL. So every offset below a
//! partition's recovery point was on stable storage in its segments when the file
//! was written, and start-up can tell a crash's torn tail (above the recovery
//! point, and replayed from the WAL) from flushed batches that were damaged later
//! (below it). Those are rebuilt from WAL entries the log still holds; when it no
//! longer holds them, the strict recovery mode refuses to start.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use super::checked::Checked;
use crate::error::{Error, Result};

/// File name, in the data directory.
pub const FILE: &str = "recovery-points.json";

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPoints {
    /// Format version (1).
    pub version: u32,
    /// By topic name.
    pub topics: BTreeMap<String, TopicPoints>,
    /// CRC32C of the file's other fields (see [`super::checked`]): a flipped
    /// digit in a point would otherwise be obeyed, and a point raised by
    /// damage made a strict start refuse over batches that were never
    /// flushed (or, lowered, let a damaged flushed batch be cut as a torn
    /// tail). Absent in files written before it existed (loaded unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
}

super::checked::checked_by_field!(RecoveryPoints);

/// One topic's recovery points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPoints {
    /// The topic's id: a recreated topic of the same name has another, and the
    /// points of the old one do not apply to it.
    pub id: String,
    /// Flushed log end offset, by partition index.
    pub ends: Vec<i64>,
}

impl RecoveryPoints {
    /// The recovery point of `partition` of the topic `name` with id `id`.
    pub fn get(&self, name: &str, id: &str, partition: usize) -> Option<i64> {
        let t = self.topics.get(name)?;
        if t.id != id {
            return None;
        }
        t.ends.get(partition).copied()
    }
}

/// Reads the file in `data_dir`; `None` when there is none (a new data directory,
/// or one written before recovery points existed).
///
/// # Errors
/// I/O errors, and [`Error::Corrupt`] when it does not parse, has another
/// version or its checksum does not match.
pub fn load(data_dir: &Path) -> Result<Option<RecoveryPoints>> {
    let path = data_dir.join(FILE);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let mut points: RecoveryPoints = serde_json::from_slice(&raw)
        .map_err(|e| Error::corrupt(&path, 0, format!("{FILE} does not parse: {e}")))?;
    if points.version != 1 {
        return Err(Error::corrupt(
            &path,
            0,
            format!("unknown {FILE} version {}", points.version),
        ));
    }
    points.verify(&path, &raw)?;
    points.crc32c = None;
    Ok(Some(points))
}

/// Replaces the file in `data_dir` atomically (temporary file, fsync, rename,
/// directory fsync).
///
/// # Errors
/// I/O errors naming the path.
pub fn store(data_dir: &Path, points: &RecoveryPoints) -> Result<()> {
    let path = data_dir.join(FILE);
    let points = points.clone().sealed();
    let json = serde_json::to_vec(&points).map_err(|e| Error::corrupt(&path, 0, e.to_string()))?;
    crate::wal::files::write_atomic(&path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points for topic `t` (id `a`) alone.
    fn points_of_t(ends: Vec<i64>) -> RecoveryPoints {
        let mut p = RecoveryPoints {
            version: 1,
            ..RecoveryPoints::default()
        };
        p.topics.insert(
            "t".into(),
            TopicPoints {
                id: "a".into(),
                ends,
            },
        );
        p
    }

    #[test]
    fn round_trips_and_ignores_another_incarnation() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(load(tmp.path()).unwrap(), None);
        let p = points_of_t(vec![5, 7]);
        store(tmp.path(), &p).unwrap();
        let back = load(tmp.path()).unwrap().unwrap();
        assert_eq!(back, p);
        assert_eq!(back.get("t", "a", 1), Some(7));
        assert_eq!(back.get("t", "b", 1), None, "another topic id");
        assert_eq!(back.get("t", "a", 2), None);
        assert_eq!(back.get("u", "a", 0), None);
    }

    /// A digit changed in a point (valid JSON still) is found by the
    /// checksum; a file without one (an older build's) loads unchecked.
    #[test]
    fn a_changed_point_fails_its_checksum() {
        let tmp = tempfile::tempdir().unwrap();
        let p = points_of_t(vec![5, 7123]);
        store(tmp.path(), &p).unwrap();
        let path = tmp.path().join(FILE);
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(raw.contains("\"crc32c\":"), "{raw}");
        std::fs::write(&path, raw.replace("7123", "9123")).unwrap();
        let e = load(tmp.path()).unwrap_err().to_string();
        assert!(e.contains(FILE) && e.contains("checksum mismatch"), "{e}");

        let unchecked = serde_json::to_vec(&p).unwrap();
        assert!(!String::from_utf8_lossy(&unchecked).contains("crc32c"));
        std::fs::write(&path, &unchecked).unwrap();
        assert_eq!(load(tmp.path()).unwrap(), Some(p));
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(FILE), b"{\"version\":1,\"top").unwrap();
        let e = load(tmp.path()).unwrap_err().to_string();
        assert!(e.contains(FILE), "{e}");
        std::fs::write(tmp.path().join(FILE), b"{\"version\":9,\"topics\":{}}").unwrap();
        let e = load(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }
}

/// Start-up against recovery points, through [`super::TopicManager`].
#[cfg(test)]
pub(crate) mod repair_tests {
    use std::path::{Path, PathBuf};

    use crate::{
        config::Config,
        error::Error,
        storage::{batch, batch::tests::make_batch, TopicManager},
        wal::{RecoveryMode, SyncMode},
    };

    fn config(dir: &Path) -> Config {
        let mut c = Config::default();
        c.storage.data_dir = dir.to_path_buf();
        c.wal.engine.max_file_size = 1 << 20;
        c.wal.engine.sync_mode = SyncMode::EveryWrite;
        c
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Produces one batch per value to partition 0 of `topic`, each acknowledged
    /// before the next.
    fn produce(rt: &tokio::runtime::Runtime, m: &TopicManager, topic: &str, values: &[Vec<u8>]) {
        rt.block_on(async {
            for v in values {
                crate::storage::tests::produce_acked(m, topic, &make_batch(0, &[v])).await;
            }
        });
    }

    fn stored(m: &TopicManager, topic: &str) -> Vec<u8> {
        let p = m.partition(topic, 0).unwrap();
        p.read(0, 1 << 30)
            .unwrap()
            .map(|r| r.records.to_vec())
            .unwrap_or_default()
    }

    fn segment(dir: &Path, topic: &str) -> PathBuf {
        dir.join("topics")
            .join(topic)
            .join("0")
            .join(crate::storage::segment::log_name(0))
    }

    /// The batches of a segment's log, empty ones (a compacted copy's) too.
    fn stored_batches(raw: &[u8]) -> Vec<batch::BatchInfo> {
        let mut infos = Vec::new();
        let mut at = 0;
        while at < raw.len() {
            let info = batch::validate_stored(&raw[at..]).unwrap();
            at += info.len;
            infos.push(info);
        }
        infos
    }

    /// Flips the last byte of the `k`-th batch of a segment (its CRC then fails);
    /// returns the batch's byte position.
    fn damage_batch(path: &Path, k: usize) -> u64 {
        let mut raw = std::fs::read(path).unwrap();
        let infos = stored_batches(&raw);
        let pos: usize = infos[..k].iter().map(|i| i.len).sum();
        raw[pos + infos[k].len - 1] ^= 0x40;
        std::fs::write(path, &raw).unwrap();
        pos as u64
    }

    fn values(prefix: &str, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{prefix}-{i}-{}", "x".repeat(200)).into_bytes())
            .collect()
    }

    /// Produces 8 batches to topic "t" of `m` (on `dir`, holding the topic),
    /// stops it, damages the fourth batch, and starts again: every batch is
    /// back, rebuilt from the WAL. Returns the new manager.
    fn damaged_batch_rebuilt(
        dir: &Path,
        rt: &tokio::runtime::Runtime,
        m: TopicManager,
    ) -> TopicManager {
        produce(rt, &m, "t", &values("a", 8));
        let before = stored(&m, "t");
        m.shutdown().unwrap();
        drop(m);
        // Flushed and checkpointed: the replay after the checkpoint has nothing
        // for this partition, so only the recovery point shows the loss.
        damage_batch(&segment(dir, "t"), 3);

        let m = TopicManager::new(config(dir)).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 8);
        assert!(stored(&m, "t") == before, "every batch back, byte for byte");
        m
    }

    #[test]
    fn flushed_batches_a_segment_lost_are_rebuilt_from_the_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        let m = damaged_batch_rebuilt(tmp.path(), &rt, m);
        let p = m.partition("t", 0).unwrap();
        produce(&rt, &m, "t", &values("b", 1));
        assert_eq!(p.log_end_offset(), 9);
        m.shutdown().unwrap();
    }

    /// A topic created while the WAL was disabled had no `wal_floor`, so its
    /// segments were never rebuilt from the WAL however long it then ran with
    /// it: a batch damaged below the recovery point stopped a strict start
    /// though the WAL held it. A start gives such a topic a floor after its
    /// replay.
    #[test]
    fn a_topic_created_with_the_wal_disabled_is_rebuilt_once_the_wal_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let mut off = config(tmp.path());
        off.wal.enabled = false;
        let m = TopicManager::new(off).unwrap();
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(config(tmp.path())).unwrap();
        damaged_batch_rebuilt(tmp.path(), &rt, m)
            .shutdown()
            .unwrap();
    }

    /// A damaged segment wholly below the stored log start (left by a
    /// DeleteRecords that a crash stopped between storing the start and
    /// removing the files) does not stop a strict start: its offsets were
    /// deleted on request. Before, the start was refused, pointing the
    /// operator at the tolerant mode.
    #[test]
    fn damage_below_the_log_start_does_not_stop_a_strict_start() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let mut c = config(tmp.path());
        c.wal.engine.max_file_size = 64 << 10;
        c.wal.engine.retention_files = 0;
        c.storage.segment_bytes = 4096;
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        produce(&rt, &m, "t", &values("a", 60));
        m.checkpoint().unwrap();
        let seg = segment(tmp.path(), "t");
        let idx = seg.with_extension("index");
        let (log0, idx0) = (std::fs::read(&seg).unwrap(), std::fs::read(&idx).unwrap());
        let p = m.partition("t", 0).unwrap();
        let second = stored_batches(&log0)
            .last()
            .map(|i| i.last_offset() + 1)
            .unwrap();
        assert_eq!(p.delete_records(second), Ok(second));
        assert!(!seg.exists());
        drop(p);
        m.shutdown().unwrap();
        drop(m);
        // As a crash between the log start's rename and the removals leaves
        // it, its tail then torn.
        std::fs::write(&seg, &log0[..log0.len() / 2]).unwrap();
        std::fs::write(&idx, &idx0).unwrap();
        let m = TopicManager::new(c).unwrap_or_else(|e| panic!("start refused: {e}"));
        let p = m.partition("t", 0).unwrap();
        assert_eq!(p.log_start_offset(), second);
        assert!(
            p.read(second - 1, 1 << 20).unwrap().is_none(),
            "below the start"
        );
        assert!(p.read(second, 1 << 20).unwrap().is_some());
        drop(p);
        m.shutdown().unwrap();
    }

    #[test]
    fn flushed_batches_the_wal_no_longer_holds_stop_a_strict_start() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let mut c = config(tmp.path());
        c.wal.engine.max_file_size = 64 << 10;
        c.wal.engine.retention_files = 0;
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        // ~600 entries of ~330 bytes, each in a 4 KiB block: several 64 KiB files.
        let vals = values("a", 60);
        produce(&rt, &m, "t", &vals);
        m.checkpoint().unwrap();
        let before = stored(&m, "t");
        m.shutdown().unwrap();
        drop(m);
        let seg = segment(tmp.path(), "t");
        let pos = damage_batch(&seg, 1);
        let damaged = std::fs::read(&seg).unwrap();
        // The log no longer reaches back to the damaged batch's entry (the topic's
        // first entries have the first sequences).
        let oldest = crate::wal::WalReader::open(tmp.path().join("wal"))
            .unwrap()
            .entries_from(0)
            .next()
            .unwrap()
            .unwrap();
        assert!(oldest.sequence > 10, "oldest entry {}", oldest.sequence);

        let e = TopicManager::new(c.clone()).unwrap_err();
        match &e {
            Error::Corrupt { file, offset, .. } => {
                assert_eq!(file, &seg);
                assert_eq!(*offset, pos);
            }
            other => panic!("expected a corruption error, got {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("offsets 1..60")
                && msg.contains("the file is left as found")
                && msg.contains("--recovery-mode tolerate_corruption"),
            "{msg}"
        );
        // The refusal changed nothing: the batches after the damaged one may
        // be the only copy of acknowledged records (the scan cut them here
        // before the start judged the cut).
        assert!(
            std::fs::read(&seg).unwrap() == damaged,
            "the refused start changed the segment"
        );
        assert_eq!(TopicManager::new(c.clone()).unwrap_err().to_string(), msg);
        assert!(std::fs::read(&seg).unwrap() == damaged);

        // Tolerated: the start goes on with what is left, and the next start
        // judges against the new end.
        let mut tolerant = c.clone();
        tolerant.wal.engine.recovery_mode = RecoveryMode::TolerateCorruption;
        let m = TopicManager::new(tolerant).unwrap();
        let first = batch::validate_all(&before).unwrap()[0].len;
        assert!(
            stored(&m, "t") == before[..first],
            "only the first batch is left"
        );
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 1);
        m.shutdown().unwrap();
    }

    /// 4 KiB segments, WAL files of 64 KiB none of which is kept after a
    /// checkpoint: what the WAL drops is only in the segments.
    fn small_segments(dir: &Path) -> Config {
        let mut c = config(dir);
        c.storage.segment_bytes = 4096;
        c.wal.engine.max_file_size = 64 << 10;
        c.wal.engine.retention_files = 0;
        c
    }

    /// The partition's segment logs, oldest first.
    pub(crate) fn segment_logs(dir: &Path, topic: &str) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(dir.join("topics").join(topic).join("0"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        logs
    }

    /// Produces to "t" until it has at least 3 segments, checkpoints and shuts
    /// down; returns what the partition held and its segment logs.
    fn three_segments(c: &Config, rt: &tokio::runtime::Runtime) -> (Vec<u8>, Vec<PathBuf>) {
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        produce(rt, &m, "t", &values("a", 60));
        m.checkpoint().unwrap();
        let before = stored(&m, "t");
        m.shutdown().unwrap();
        drop(m);
        let logs = segment_logs(&c.storage.data_dir, "t");
        assert!(logs.len() >= 3, "{} segments", logs.len());
        (before, logs)
    }

    /// The first offset of the oldest entry the WAL still holds.
    fn oldest_wal_offset(dir: &Path) -> i64 {
        let oldest = crate::wal::WalReader::open(dir.join("wal"))
            .unwrap()
            .entries_from(0)
            .next()
            .unwrap()
            .unwrap();
        batch::validate_all(&oldest.data).unwrap()[0].base_offset
    }

    /// `before` without the batches at bytes `from..to`.
    fn without(before: &[u8], from: u64, to: u64) -> Vec<u8> {
        let (from, to) = (from as usize, to as usize);
        [&before[..from], &before[to..]].concat()
    }

    /// `e` is a corruption error naming `seg` at byte `pos`.
    fn assert_corrupt_at(e: &Error, seg: &Path, pos: u64) {
        match e {
            Error::Corrupt { file, offset, .. } => {
                assert_eq!(file, seg);
                assert_eq!(*offset, pos);
            }
            other => panic!("expected a corruption error, got {other:?}"),
        }
    }

    /// Checks a start over an older segment damaged at byte `pos`, which lost
    /// offsets `lost..next_base` (its batches from `pos` to its end, `len`
    /// bytes): a strict start refuses naming the segment and changes none of
    /// its bytes; a tolerant one warns, cuts it, and serves the rest, a fetch in
    /// the gap getting the next segment's first batch; the next strict start
    /// accepts that.
    fn damaged_older_segment_is_refused(
        c: &Config,
        before: &[u8],
        seg: &Path,
        pos: u64,
        lost: i64,
        next_base: i64,
    ) {
        let damaged = std::fs::read(seg).unwrap();
        assert!(
            oldest_wal_offset(&c.storage.data_dir) >= next_base,
            "the WAL still holds the lost batches"
        );
        let e = TopicManager::new(c.clone()).unwrap_err();
        assert_corrupt_at(&e, seg, pos);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("offsets {lost}..{next_base}"))
                && msg.contains("--recovery-mode tolerate_corruption"),
            "{msg}"
        );
        assert!(
            std::fs::read(seg).unwrap() == damaged,
            "the refused start changed the segment"
        );

        let mut tolerant = c.clone();
        tolerant.wal.engine.recovery_mode = RecoveryMode::TolerateCorruption;
        let (m, log_lines) =
            crate::storage::partition::tests::logged(|| TopicManager::new(tolerant).unwrap());
        assert!(log_lines.contains("continuing without them"), "{log_lines}");
        let p = m.partition("t", 0).unwrap();
        assert!(
            stored(&m, "t") == without(before, pos, damaged.len() as u64),
            "everything but the damaged segment's tail"
        );
        let next = p.read(lost, 1 << 20).unwrap().unwrap();
        let first = batch::validate_all(&next.records).unwrap()[0].base_offset;
        assert_eq!(first, next_base, "a fetch in the gap gets the next batch");
        let end = p.log_end_offset();
        m.shutdown().unwrap();
        drop(m);
        assert_eq!(std::fs::metadata(seg).unwrap().len(), pos, "cut on disk");
        let m = TopicManager::new(c.clone()).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), end);
        assert!(stored(&m, "t") == without(before, pos, damaged.len() as u64));
        m.shutdown().unwrap();
    }

    /// A data directory as a kill -9 leaves it after 60 records, a
    /// checkpoint (the recovery point 60) and 80 more records that rolled the
    /// first segment (32 KiB): its config, what the partition held, and its
    /// segment logs, the first of which holds the recovery point.
    fn crashed_past_the_point(tmp: &Path) -> (Config, Vec<u8>, Vec<PathBuf>) {
        fn copy_dir(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                let target = to.join(e.file_name());
                if e.file_type().unwrap().is_dir() {
                    copy_dir(&e.path(), &target);
                } else {
                    std::fs::copy(e.path(), &target).unwrap();
                }
            }
        }
        let rt = runtime();
        let mut c = small_segments(&tmp.join("live"));
        c.storage.segment_bytes = 32 << 10;
        c.storage.checkpoint_interval_ms = 3_600_000;
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        produce(&rt, &m, "t", &values("a", 60));
        m.checkpoint().unwrap();
        produce(&rt, &m, "t", &values("b", 80));
        let before = stored(&m, "t");
        // What was written, no checkpoint since.
        let dir = tmp.join("crashed");
        copy_dir(&c.storage.data_dir, &dir);
        m.shutdown().unwrap();
        drop(m);
        c.storage.data_dir = dir.clone();
        let logs = segment_logs(&dir, "t");
        assert!(logs.len() >= 2, "{} segments", logs.len());
        let infos = batch::validate_all(&std::fs::read(&logs[0]).unwrap()).unwrap();
        assert!(
            infos[0].base_offset < 60 && infos.last().unwrap().last_offset() >= 60,
            "the first segment holds the recovery point"
        );
        (c, before, logs)
    }

    /// A segment that holds the recovery point (older since a roll after the
    /// last checkpoint, a crash then) with a batch damaged below the point:
    /// the start's scan of the segments above the point cut it at the damage,
    /// synced, made it the newest and removed the segments after it, before
    /// the strict start refused; acknowledged, flushed batches the WAL no
    /// longer held were gone. It is now left as found and judged as a damaged
    /// older segment: the refusal changes no byte.
    #[test]
    fn a_segment_holding_the_recovery_point_damaged_below_it_is_refused_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, _, logs) = crashed_past_the_point(tmp.path());
        let seg = &logs[0];
        assert!(
            oldest_wal_offset(&c.storage.data_dir) > 5,
            "the WAL holds the damaged batch"
        );
        let pos = damage_batch(seg, 5);
        let files: Vec<(PathBuf, Vec<u8>)> = logs
            .iter()
            .map(|l| (l.clone(), std::fs::read(l).unwrap()))
            .collect();

        let e = TopicManager::new(c.clone()).unwrap_err();
        assert_corrupt_at(&e, seg, pos);
        assert!(e.to_string().contains("offsets 5.."), "{e}");
        for (path, bytes) in &files {
            assert!(
                std::fs::read(path).is_ok_and(|now| now == *bytes),
                "the refused start changed or removed {}",
                path.display()
            );
        }
    }

    /// The same segment damaged below the point at a batch the WAL still
    /// holds: the strict start rebuilds it from the WAL and keeps the
    /// segments after it; every record is served.
    #[test]
    fn a_segment_holding_the_recovery_point_damaged_where_the_wal_reaches_is_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, before, logs) = crashed_past_the_point(tmp.path());
        let oldest = oldest_wal_offset(&c.storage.data_dir);
        assert!(
            oldest < 59,
            "the WAL holds offsets below the point from {oldest}"
        );
        let pos = damage_batch(&logs[0], usize::try_from(oldest).unwrap() + 1);
        assert!(pos > 0);
        let m = TopicManager::new(c.clone()).unwrap();
        assert!(stored(&m, "t") == before, "every record, as produced");
        m.shutdown().unwrap();
        drop(m);
        let m = TopicManager::new(c).unwrap();
        assert!(stored(&m, "t") == before);
        m.shutdown().unwrap();
    }

    #[test]
    fn a_damaged_base_offset_in_an_older_segment_stops_a_strict_start() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let c = small_segments(tmp.path());
        let (before, logs) = three_segments(&c, &rt);
        let seg = &logs[0];
        let mut raw = std::fs::read(seg).unwrap();
        let infos = batch::validate_all(&raw).unwrap();
        let last = infos.last().unwrap();
        let pos: usize = raw.len() - last.len;
        // The base offset is not covered by the CRC: only the open's check
        // that the batch continues the segment sees it.
        raw[pos + 7] ^= 0x01;
        std::fs::write(seg, &raw).unwrap();
        damaged_older_segment_is_refused(
            &c,
            &before,
            seg,
            pos as u64,
            last.base_offset,
            last.last_offset() + 1,
        );
    }

    /// Damage in a middle batch, or in the first: the tolerant start cuts the
    /// segment to nothing then, and the next strict start accepts the empty
    /// segment as it accepts a shorter prefix. Before, an empty older log
    /// with its empty index read as an index that does not match its log:
    /// the segment was scanned and judged again at every start, and every
    /// strict start refused with the same error for good (until retention
    /// removed the empty segment, never on a compact-only topic).
    #[test]
    fn a_lost_index_and_a_damaged_batch_in_an_older_segment_stop_a_strict_start() {
        for first in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let rt = runtime();
            let c = small_segments(tmp.path());
            let (before, logs) = three_segments(&c, &rt);
            let seg = &logs[0];
            let infos = batch::validate_all(&std::fs::read(seg).unwrap()).unwrap();
            let k = if first { 0 } else { infos.len() / 2 };
            let pos = damage_batch(seg, k);
            std::fs::remove_file(seg.with_extension("index")).unwrap();
            damaged_older_segment_is_refused(
                &c,
                &before,
                seg,
                pos,
                infos[k].base_offset,
                infos.last().unwrap().last_offset() + 1,
            );
        }
    }

    #[test]
    fn an_older_segment_damaged_below_the_recovery_point_is_rebuilt_from_the_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let mut c = config(tmp.path());
        c.storage.segment_bytes = 4096;
        let (before, logs) = three_segments(&c, &rt);
        let seg = &logs[1];
        let whole = std::fs::read(seg).unwrap();
        let infos = batch::validate_all(&whole).unwrap();
        // A lost index: the open scans the log, and finds the damaged batch.
        damage_batch(seg, infos.len() / 2);
        std::fs::remove_file(seg.with_extension("index")).unwrap();

        let m = TopicManager::new(c.clone()).unwrap();
        assert!(stored(&m, "t") == before, "every batch back, byte for byte");
        m.shutdown().unwrap();
        assert!(std::fs::read(seg).unwrap() == whole);
    }

    /// A compacted topic's older segment damaged below the recovery point is
    /// not rebuilt from the WAL, which holds it all: compaction rewrites
    /// segments under their original offsets, so the WAL's records would fit
    /// a compacted copy's lost range and bring back what the cleaner removed
    /// (a deleted key among them). A strict start refuses instead.
    #[test]
    fn a_compacted_topics_damaged_older_segment_is_never_rebuilt_from_the_wal() {
        use crate::storage::{tests::produce_keyed_record, topic_config::TopicConfig};
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let mut c = config(tmp.path());
        c.storage.segment_bytes = 4096;
        let m = TopicManager::new(c.clone()).unwrap();
        let configs = TopicConfig::from_pairs([("cleanup.policy", Some("compact"))]).unwrap();
        m.create_topic_with("t", 1, configs).unwrap();
        rt.block_on(async {
            for i in 0..60 {
                let key = format!("k{i}");
                let value = format!("v{i}-{}", "x".repeat(200));
                produce_keyed_record(&m, "t", key.as_bytes(), Some(value.as_bytes())).await;
            }
        });
        m.checkpoint().unwrap();
        m.shutdown().unwrap();
        drop(m);
        let logs = segment_logs(&c.storage.data_dir, "t");
        assert!(logs.len() >= 3, "{} segments", logs.len());
        let seg = &logs[1];
        let infos = batch::validate_all(&std::fs::read(seg).unwrap()).unwrap();
        let pos = damage_batch(seg, infos.len() / 2);
        std::fs::remove_file(seg.with_extension("index")).unwrap();
        let damaged = std::fs::read(seg).unwrap();

        let e = TopicManager::new(c.clone()).unwrap_err();
        assert_corrupt_at(&e, seg, pos);
        assert!(e.to_string().contains("the topic is compacted"), "{e}");
        assert!(std::fs::read(seg).unwrap() == damaged, "left as found");
    }

    /// Produces to partition 0 of `topic` one keyed batch per `(key, value)`,
    /// each acknowledged before the next.
    fn produce_keyed(
        rt: &tokio::runtime::Runtime,
        m: &TopicManager,
        topic: &str,
        records: &[(String, String)],
    ) {
        rt.block_on(async {
            for (k, v) in records {
                crate::storage::tests::produce_keyed_record(
                    m,
                    topic,
                    k.as_bytes(),
                    Some(v.as_bytes()),
                )
                .await;
            }
        });
    }

    /// Half the records under one key, written again and again, and half
    /// under keys of their own: compaction keeps about half of each segment.
    fn half_repeated(prefix: &str, n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| {
                let key = if i % 2 == 0 {
                    format!("{prefix}-again")
                } else {
                    format!("{prefix}-{i}")
                };
                (key, format!("{prefix}-v{i}-{}", "x".repeat(200)))
            })
            .collect()
    }

    /// A segment compacted while its topic was compacted keeps the cleaner's
    /// work once the topic's `cleanup.policy` is `delete`: damaged below the
    /// recovery point, it is still not rebuilt from the WAL, whose records
    /// would bring back what the cleaner removed (a strict start refuses, a
    /// tolerant one cuts it), while a segment written after the change is.
    /// Before, the start judged by the policy in force and rebuilt it.
    #[test]
    fn a_segment_compacted_before_its_topics_policy_changed_is_never_rebuilt_from_the_wal() {
        use crate::storage::topic_config::TopicConfig;
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let mut c = config(tmp.path());
        c.storage.segment_bytes = 4096;
        let m = TopicManager::new(c.clone()).unwrap();
        let policy = |p: &str| TopicConfig::from_pairs([("cleanup.policy", Some(p))]).unwrap();
        m.create_topic_with("t", 1, policy("compact")).unwrap();
        produce_keyed(&rt, &m, "t", &half_repeated("a", 60));
        // Synced, so the pass takes every closed segment.
        m.checkpoint().unwrap();
        let stats = m.compact();
        assert!(stats.segments > 0 && stats.records_removed > 0, "{stats:?}");
        m.alter_topic_configs("t", false, |_| Ok(policy("delete")))
            .unwrap();
        m.checkpoint().unwrap();
        m.shutdown().unwrap();
        drop(m);
        let logs = segment_logs(&c.storage.data_dir, "t");
        let seg = &logs[0];
        let infos = stored_batches(&std::fs::read(seg).unwrap());
        assert!(infos.len() >= 2, "{} batches", infos.len());
        let pos = damage_batch(seg, infos.len() / 2);
        std::fs::remove_file(seg.with_extension("index")).unwrap();
        let damaged = std::fs::read(seg).unwrap();

        let e = TopicManager::new(c.clone()).unwrap_err();
        assert_corrupt_at(&e, seg, pos);
        assert!(
            e.to_string().contains("may be a compacted copy")
                && e.to_string()
                    .contains(crate::storage::segment::COMPACTED_FILE),
            "{e}"
        );
        assert!(std::fs::read(seg).unwrap() == damaged, "left as found");

        let mut tolerant = c.clone();
        tolerant.wal.engine.recovery_mode = RecoveryMode::TolerateCorruption;
        let (m, log_lines) =
            crate::storage::partition::tests::logged(|| TopicManager::new(tolerant).unwrap());
        assert!(log_lines.contains("continuing without them"), "{log_lines}");
        assert_eq!(
            std::fs::metadata(seg).unwrap().len(),
            pos,
            "cut, not rebuilt"
        );

        // Segments written after the change are the WAL's records: one of
        // them damaged is rebuilt.
        produce(&rt, &m, "t", &values("b", 60));
        m.checkpoint().unwrap();
        let before = stored(&m, "t");
        m.shutdown().unwrap();
        drop(m);
        let logs = segment_logs(&c.storage.data_dir, "t");
        let seg = &logs[logs.len() - 2];
        let whole = std::fs::read(seg).unwrap();
        let infos = batch::validate_all(&whole).unwrap();
        damage_batch(seg, infos.len() / 2);
        std::fs::remove_file(seg.with_extension("index")).unwrap();
        let m = TopicManager::new(c).unwrap();
        assert!(stored(&m, "t") == before, "every batch back, byte for byte");
        m.shutdown().unwrap();
        assert!(std::fs::read(seg).unwrap() == whole);
    }

    #[test]
    fn a_recreated_topic_is_never_rebuilt_from_the_deleted_ones_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let m = TopicManager::new(config(tmp.path())).unwrap();
        m.create_topic("t", 1).unwrap();
        produce(&rt, &m, "t", &values("old", 6));
        assert!(rt.block_on(m.delete_topic("t")).unwrap());
        m.create_topic("t", 1).unwrap();
        produce(&rt, &m, "t", &values("new", 4));
        let before = stored(&m, "t");
        m.shutdown().unwrap();
        drop(m);
        damage_batch(&segment(tmp.path(), "t"), 1);

        // The WAL still holds the old topic's batches at the same offsets, earlier
        // in the log than the new one's.
        let m = TopicManager::new(config(tmp.path())).unwrap();
        assert!(
            stored(&m, "t") == before,
            "the new topic's batches, not the old one's"
        );
        m.shutdown().unwrap();
    }

    #[test]
    fn a_wal_entry_that_does_not_continue_its_partition_stops_a_strict_start() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let m = TopicManager::new(c.clone()).unwrap();
        m.create_topic("t", 1).unwrap();
        m.shutdown().unwrap();
        drop(m);
        let at = |base: i64, v: &[u8]| {
            let mut b = make_batch(0, &[v]);
            let infos = batch::validate_all(&b).unwrap();
            batch::assign_offsets(&mut b, &infos, base);
            bytes::Bytes::from(b)
        };
        let (wal, _) = crate::wal::Wal::open(tmp.path().join("wal"), c.wal.engine.clone()).unwrap();
        for (base, v) in [(0, b"a"), (1, b"b"), (3, b"d")] {
            wal.append("t", 0, at(base, v)).wait().unwrap();
        }
        wal.close().unwrap();

        let e = TopicManager::new(c.clone()).unwrap_err().to_string();
        assert!(
            e.contains("offsets 2..3 are missing") && e.contains("tolerate_corruption"),
            "{e}"
        );
        let mut tolerant = c;
        tolerant.wal.engine.recovery_mode = RecoveryMode::TolerateCorruption;
        let m = TopicManager::new(tolerant).unwrap();
        assert_eq!(m.partition("t", 0).unwrap().log_end_offset(), 4);
        m.shutdown().unwrap();
    }
}
