//! Randomized power-loss and I/O-fault test of the real engine over the simulated
//! disk (`--features sim`).
//!
//! The simulated disk stands behind the std backend's file operations only; it
//! cannot drive io_uring. The commit thread drives it with durable writes one
//! at a time and overlapping syncs (the O_DIRECT contract; see the sim's module
//! docs): the std backend's grouped writes meet their faults on the real
//! device tests below. The io_uring backend's power losses are the real ones
//! of `tests/wal_crash.rs` (`power_cut_*`: a device that drops, keeps or tears
//! unflushed sectors), its short writes those of `tests/short_writes.rs`, and
//! its write and sync errors those of `tests/full_disk.rs`,
//! `tests/uring_ring_failure.rs` and the failing-device tests
//! (`a_device_failing_at_random_moments_loses_no_acknowledged_entry`, run per
//! backend; `scripts/device-failure-soak.sh`).
//!
//! Each seed picks a sync mode and a small configuration (64 KiB files, so batches
//! rotate often; small batch and pending caps; checkpoints with retention), then runs
//! one to three rounds. In a round several producers append tagged, self-checking
//! payloads (single entries and atomic `append_batch` groups) through a WAL opened
//! over a [`SimDisk`], while the main thread checkpoints. The disk crashes after a
//! random number of operations or at a directory fsync, and/or injects one I/O
//! error; afterwards the power-loss model drops, tears or reorders every unsynced
//! sector and undoes directory changes not fsynced. In a fifth of those rounds only
//! the process dies: the next round starts another process on the same disk, with
//! the dead one's unsynced writes and directory changes still pending, and a later
//! power loss (at the latest before the final check) may take whatever the new
//! process did not make durable. The next round (and a final reopen over the real
//! std backend) recovers and checks DESIGN.md's invariants:
//!
//! - every entry acknowledged under `every_write`, or covered by a durable sequence
//!   the WAL reported (`durable_sequence`, `sync()`), or recovered by an earlier
//!   round (so made durable by the open that recovered it), is recovered with its
//!   exact bytes (unless a checkpoint covers it);
//! - recovered entries are contiguous from the checkpoint on, each one a payload some
//!   producer really appended, none twice, each producer's in its order, groups whole;
//! - after an injected error every producer's pending and later appends fail (with
//!   the injected errno), no append after the failed operation is acknowledged, and
//!   the WAL reports the failure;
//! - a clean close leaves nothing for a power loss to take.
//!
//! `SIM_SEEDS` (default 2000) seeds run from `SIM_SEED_START` (default 1);
//! `SIM_SEED=N` replays one seed. A failure prints its seed (a hang too, past
//! the test harness's capture). Without any of them the test runs seeds 1-1000, the same
//! at every run, and 1,000 more that change every day (from 1,000,001 + 1,000 ×
//! the days since the Unix epoch, printed), so that CI runs meet fault
//! schedules no run met before.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use bytes::Bytes;
use streamline::wal::{
    sim::{Fault, Rng, SimDisk, SimPlan, SimStats},
    BackendKind, NewEntry, SyncMode, Wal, WalConfig, WalEntry,
};

/// Who appended an entry: round, producer, producer-local counter, and its place in
/// an atomic group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Tag {
    round: u32,
    producer: u32,
    counter: u64,
    group_len: u16,
    group_idx: u16,
}

const TAG_MAGIC: &[u8; 4] = b"TAGP";
const TAG_LEN: usize = 4 + 4 + 4 + 8 + 2 + 2 + 4;

fn body_byte(t: &Tag, i: usize) -> u8 {
    let x = (u64::from(t.round) << 48)
        ^ (u64::from(t.producer) << 40)
        ^ t.counter.wrapping_mul(0x9E37_79B9)
        ^ i as u64;
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
}

fn encode(t: &Tag, body_len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(TAG_LEN + body_len + 4);
    v.extend_from_slice(TAG_MAGIC);
    v.extend_from_slice(&t.round.to_le_bytes());
    v.extend_from_slice(&t.producer.to_le_bytes());
    v.extend_from_slice(&t.counter.to_le_bytes());
    v.extend_from_slice(&t.group_len.to_le_bytes());
    v.extend_from_slice(&t.group_idx.to_le_bytes());
    v.extend_from_slice(&(body_len as u32).to_le_bytes());
    v.extend((0..body_len).map(|i| body_byte(t, i)));
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

fn decode(b: &[u8]) -> Result<Tag, String> {
    if b.len() < TAG_LEN + 4 || &b[..4] != TAG_MAGIC {
        return Err(format!(
            "payload of {} bytes is not a tagged payload",
            b.len()
        ));
    }
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
    let t = Tag {
        round: u32_at(4),
        producer: u32_at(8),
        counter: u64::from_le_bytes(b[12..20].try_into().unwrap()),
        group_len: u16_at(20),
        group_idx: u16_at(22),
    };
    let body_len = u32_at(24) as usize;
    if b.len() != TAG_LEN + body_len + 4 {
        return Err(format!(
            "payload length {} disagrees with its body length {body_len}",
            b.len()
        ));
    }
    let crc = u32_at(TAG_LEN + body_len);
    if crc != crc32c::crc32c(&b[..TAG_LEN + body_len]) {
        return Err("payload checksum mismatch".into());
    }
    if (0..body_len).any(|i| b[TAG_LEN + i] != body_byte(&t, i)) {
        return Err("payload body differs from what was appended".into());
    }
    Ok(t)
}

/// What the checker knows across rounds.
#[derive(Default)]
struct Model {
    /// Sequences whose tag is known (acknowledged or recovered earlier).
    known: BTreeMap<u64, Tag>,
    /// Sequences that must be recovered unless a checkpoint covers them.
    must: BTreeMap<u64, &'static str>,
    /// Checkpoints that returned Ok (0 = none).
    checkpoints: HashSet<u64>,
    last_checkpoint: u64,
    /// Tags each (round, producer) appended: counter -> issued.
    issued: HashMap<(u32, u32), u64>,
    /// Known sequences (acknowledged, none of them required) that recoveries
    /// did not return: what power losses took.
    dropped: u64,
    /// The end of the log the last recovery returned, and the round that
    /// appended after it: every entry a later recovery returns beyond that
    /// end is that round's or a later one's. An older round's entry there is
    /// stale (left on the disk past where a recovery cut the log), though its
    /// tag checks out and its sequences may have been forgotten as lost.
    floor: (u64, u32),
}

impl Model {
    /// Checks a recovery's checkpoint and entries; `round` is the round that
    /// appends after it.
    fn verify(&mut self, what: &str, checkpoint: u64, entries: &[WalEntry], round: u32) {
        assert!(
            checkpoint == 0 || self.checkpoints.contains(&checkpoint),
            "{what}: recovered checkpoint {checkpoint} was never taken"
        );
        assert!(
            checkpoint >= self.last_checkpoint,
            "{what}: checkpoint went back from {} to {checkpoint}",
            self.last_checkpoint
        );
        self.last_checkpoint = checkpoint;
        if let Some(first) = entries.first() {
            assert_eq!(
                first.sequence,
                checkpoint + 1,
                "{what}: log does not continue right after the checkpoint"
            );
        }
        let mut seen: HashSet<Tag> = HashSet::new();
        let mut last_of: HashMap<(u32, u32), Tag> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.sequence,
                checkpoint + 1 + i as u64,
                "{what}: sequence gap"
            );
            let t = decode(&e.data)
                .unwrap_or_else(|why| panic!("{what}: seq {}: garbage entry: {why}", e.sequence));
            assert_eq!(
                e.topic,
                format!("t{}", t.producer),
                "{what}: seq {} topic",
                e.sequence
            );
            assert_eq!(
                e.partition, t.round as i32,
                "{what}: seq {} partition",
                e.sequence
            );
            assert!(
                seen.insert(t),
                "{what}: seq {}: entry {t:?} appears twice",
                e.sequence
            );
            assert!(
                e.sequence <= self.floor.0 || t.round >= self.floor.1,
                "{what}: seq {}: entry {t:?} of an older round, beyond the end {} of the \
                 log round {} appended after",
                e.sequence,
                self.floor.0,
                self.floor.1
            );
            let issued = self
                .issued
                .get(&(t.round, t.producer))
                .copied()
                .unwrap_or(0);
            assert!(
                t.counter < issued,
                "{what}: seq {}: {t:?} was never appended",
                e.sequence
            );
            if let Some(k) = self.known.get(&e.sequence) {
                assert_eq!(
                    k, &t,
                    "{what}: seq {} holds a different entry than acknowledged",
                    e.sequence
                );
            }
            if let Some(prev) = last_of.get(&(t.round, t.producer)) {
                assert_eq!(
                    t.counter,
                    prev.counter + 1,
                    "{what}: seq {}: producer order broken after {prev:?}",
                    e.sequence
                );
            } else {
                assert_eq!(
                    t.group_idx, 0,
                    "{what}: seq {}: first recovered entry of a producer starts mid-group",
                    e.sequence
                );
            }
            last_of.insert((t.round, t.producer), t);
        }
        for t in last_of.values() {
            assert_eq!(
                t.group_idx + 1,
                t.group_len,
                "{what}: atomic group of {t:?} recovered partly"
            );
        }
        let end = checkpoint + entries.len() as u64;
        for (&s, why) in self.must.range(checkpoint + 1..) {
            assert!(
                s <= end,
                "{what}: lost sequence {s} ({why}); log ends at {end}, checkpoint {checkpoint}"
            );
        }
        // Whatever lies beyond the recovered end was lost legitimately (checked above);
        // those sequences will be reused.
        self.dropped += self.known.range(end + 1..).count() as u64;
        self.known.retain(|&s, _| s <= end);
        self.must.retain(|&s, _| s <= end);
        // A checkpoint in the lost range is gone with it (the sequences are
        // reused), and none taken there may be recovered later.
        self.checkpoints.retain(|&c| c <= end);
        self.floor = (end, round);
        for e in entries {
            let t = decode(&e.data).expect("checked");
            self.known.insert(e.sequence, t);
            self.must.entry(e.sequence).or_insert("recovered earlier");
        }
    }
}

/// The round of the final append, over the real disk.
const FINAL_ROUND: u32 = 99;

/// Over which disk a round opens the WAL.
enum Over<'a> {
    /// The real one (std backend).
    Real,
    /// A fresh simulated disk: what is on the real one is durable.
    Fresh(&'a SimDisk),
    /// The simulated disk of the process that died before, whose unsynced
    /// writes and directory changes are still pending.
    Restarted(&'a SimDisk),
}

fn open_collect(dir: &Path, cfg: WalConfig, over: Over<'_>) -> (Wal, u64, Vec<WalEntry>) {
    try_open_collect(dir, cfg, over).unwrap_or_else(|e| panic!("recovery failed: {e}"))
}

/// [`open_collect`], with the open's error returned: the process may be killed
/// inside the open (a crash at its directory fsync).
fn try_open_collect(
    dir: &Path,
    cfg: WalConfig,
    over: Over<'_>,
) -> streamline::Result<(Wal, u64, Vec<WalEntry>)> {
    let (wal, rec) = match over {
        Over::Real => Wal::open(dir, cfg),
        Over::Fresh(d) => Wal::open_sim(dir, cfg, d),
        Over::Restarted(d) => Wal::open_sim_restarted(dir, cfg, d),
    }?;
    if rec.truncated.is_some() {
        TORN_TAILS.fetch_add(1, Ordering::Relaxed);
    }
    let cp = rec.checkpoint;
    let entries = rec
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("recovery stream failed: {e}"));
    Ok((wal, cp, entries))
}

struct Outcome {
    /// (sequence, tag of the first entry, entries, durable sequence seen after the ack)
    acked: Vec<(u64, Vec<Tag>, u64)>,
    errors: Vec<streamline::Error>,
    /// Tags issued (the producer's counter at the end).
    issued: u64,
    /// Highest sequence a successful `sync()` reported durable.
    synced: u64,
}

fn producer(
    wal: &Wal,
    round: u32,
    id: u32,
    mut rng: Rng,
    appends: u64,
    stop: &AtomicBool,
) -> Outcome {
    let mut out = Outcome {
        acked: Vec::new(),
        errors: Vec::new(),
        issued: 0,
        synced: 0,
    };
    let mut counter = 0u64;
    let pipelined = rng.pct(40);
    let mut pending: Vec<(streamline::wal::Completion, Vec<Tag>)> = Vec::new();
    let finish = |c: streamline::wal::Completion, tags: Vec<Tag>, out: &mut Outcome| match c.wait()
    {
        Ok(seq) => {
            assert!(
                out.errors.is_empty(),
                "producer {id}: append acknowledged (seq {seq}) after an earlier one failed"
            );
            out.acked.push((seq, tags, wal.durable_sequence()));
        }
        Err(e) => out.errors.push(e),
    };
    let mut n = 0;
    // After the first error: a few more appends, all of which must fail too.
    let mut after_error = 3;
    while n < appends && !(stop.load(Ordering::Relaxed) && out.errors.is_empty()) {
        n += 1;
        let group = if rng.pct(15) {
            rng.range(2, 4) as u16
        } else {
            1
        };
        let mut tags = Vec::new();
        let mut entries = Vec::new();
        for g in 0..group {
            let t = Tag {
                round,
                producer: id,
                counter,
                group_len: group,
                group_idx: g,
            };
            counter += 1;
            let len = match rng.below(10) {
                0 => rng.range(5000, 12000) as usize,
                1 => 0,
                _ => rng.below(2500) as usize,
            };
            entries.push(NewEntry::record(
                format!("t{id}"),
                round as i32,
                Bytes::from(encode(&t, len)),
            ));
            tags.push(t);
        }
        let c = if group == 1 {
            let e = entries.pop().unwrap();
            wal.append(&e.topic, e.partition, e.data)
        } else {
            wal.append_batch(entries)
        };
        pending.push((c, tags));
        if !pipelined || pending.len() >= 4 || rng.pct(30) {
            for (c, tags) in pending.drain(..) {
                finish(c, tags, &mut out);
            }
            // Sometimes ask for durability explicitly: what sync() reports as
            // durable must survive a power loss.
            if rng.pct(8) {
                match wal.sync().wait() {
                    Ok(through) => {
                        assert!(
                            out.errors.is_empty(),
                            "producer {id}: sync succeeded after an earlier failure"
                        );
                        out.synced = out.synced.max(through);
                    }
                    Err(e) => out.errors.push(e),
                }
            }
        }
        if !out.errors.is_empty() {
            after_error -= 1;
            if after_error == 0 {
                break;
            }
        }
    }
    for (c, tags) in pending.drain(..) {
        finish(c, tags, &mut out);
    }
    out.issued = counter;
    out
}

/// Directory-entry changes recorded by the simulated disks, and how many of them
/// power losses undid, over all seeds; the same for the writes to files the engine
/// makes outside the backend (preparation, headers, checkpoints) and the sectors of
/// those files power losses rolled back: the run must have exercised both models.
static META_OPS: AtomicU64 = AtomicU64::new(0);
static META_UNDONE: AtomicU64 = AtomicU64::new(0);
static OUTSIDE_WRITES: AtomicU64 = AtomicU64::new(0);
static OUTSIDE_ROLLED: AtomicU64 = AtomicU64::new(0);
static EARLY_BATCHES: AtomicU64 = AtomicU64::new(0);
/// What the power-loss model did to the WAL's own data, over all seeds: rounds
/// that ended in the simulated crash; sectors of the backend's writes (not those
/// outside it) that power losses rolled back; recoveries that cut a torn tail;
/// appends acknowledged in a round that did not end cleanly, beyond every
/// durable sequence reported (so not required to survive); and acknowledged
/// appends that the next recovery did not return.
static CRASHED_ROUNDS: AtomicU64 = AtomicU64::new(0);
/// Rounds that started on the disk of a process that died without a power loss.
static RESTARTED_ROUNDS: AtomicU64 = AtomicU64::new(0);
static BACKEND_ROLLED: AtomicU64 = AtomicU64::new(0);
static TORN_TAILS: AtomicU64 = AtomicU64::new(0);
static UNSYNCED_ACKS: AtomicU64 = AtomicU64::new(0);
static DROPPED_ACKS: AtomicU64 = AtomicU64::new(0);
/// Rounds whose process was killed inside the WAL's open.
static OPEN_CRASHES: AtomicU64 = AtomicU64::new(0);

/// Adds what a power loss undid to the totals.
fn count_power_loss(st: &SimStats) {
    META_UNDONE.fetch_add(st.meta_ops_undone, Ordering::Relaxed);
    OUTSIDE_ROLLED.fetch_add(st.outside_sectors_rolled_back, Ordering::Relaxed);
    BACKEND_ROLLED.fetch_add(st.backend_sectors_rolled_back, Ordering::Relaxed);
}

fn run_seed(seed: u64, root: &Path) {
    let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0xA5A5);
    let mode = match rng.below(20) {
        0..=9 => SyncMode::EveryWrite,
        10..=16 => SyncMode::Interval,
        _ => SyncMode::OsDefault,
    };
    let batch = 4096 * rng.range(1, 4) as usize;
    let cfg = WalConfig {
        backend: BackendKind::Std,
        sync_mode: mode,
        sync_interval_ms: rng.range(1, 3),
        max_file_size: WalConfig::MIN_FILE_SIZE,
        retention_files: rng.below(3) as usize,
        max_batch_bytes: batch,
        max_pending_bytes: batch * rng.range(1, 8) as usize,
        max_in_flight: rng.range(1, 8) as usize,
        ..WalConfig::default()
    };
    let dir = root.join(format!("seed-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut model = Model::default();
    let rounds = rng.range(1, 3) as u32;
    let mut carried: Option<SimDisk> = None;
    for round in 1..=rounds {
        let crash = rng.pct(70).then(|| rng.range(1, 60));
        let fault = rng.pct(35).then(|| {
            let f = match rng.below(4) {
                0 => Fault::WriteEio,
                1 => Fault::SyncEio,
                2 => Fault::WriteEnospc,
                _ => Fault::ShortWrite,
            };
            (rng.range(0, 60), f)
        });
        let plan = SimPlan {
            seed: rng.next_u64(),
            crash_after_ops: crash,
            fault,
            short_write_pct: rng.below(30) as u8,
        };
        // Or a crash at a directory fsync (a rotation's, a checkpoint's), with the
        // renames before it pending: the plan's crash point never falls there.
        // At 0 operations it is the open's own (after its repairs: a seal in
        // place, a rotation finished, a new head file), which the backend's
        // operations never reach.
        let dir_crash = rng
            .pct(30)
            .then(|| if rng.pct(25) { 0 } else { rng.range(1, 60) });
        // After a process crash without a power loss the next process starts on
        // the same disk: what the dead one left unsynced is still at risk.
        let (disk, over_what) = match carried.take() {
            Some(disk) => {
                disk.restart();
                disk.replan(plan);
                RESTARTED_ROUNDS.fetch_add(1, Ordering::Relaxed);
                (disk, ", restarted after a process crash")
            }
            None => (SimDisk::new(plan), ""),
        };
        if let Some(ops) = dir_crash {
            disk.crash_at_dir_sync_after(ops);
        }
        let at_dir_sync = dir_crash
            .map(|n| format!(", crash at the first directory fsync after {n} operations"))
            .unwrap_or_default();
        let what = format!("seed {seed} round {round} ({mode}, {plan:?}{at_dir_sync}{over_what})");
        let over = if over_what.is_empty() {
            Over::Fresh(&disk)
        } else {
            Over::Restarted(&disk)
        };
        let (wal, cp, entries) = match try_open_collect(&dir, cfg.clone(), over) {
            Ok(opened) => opened,
            Err(e) if disk.crashed() => {
                // Killed inside the open: nothing appended this round. The next
                // open (or the final one) recovers from what it left.
                assert!(
                    dir_crash == Some(0),
                    "{what}: the open crashed without a crash point in it: {e}"
                );
                OPEN_CRASHES.fetch_add(1, Ordering::Relaxed);
                if rng.pct(20) {
                    carried = Some(disk.clone());
                } else {
                    disk.power_loss(false).unwrap();
                    count_power_loss(&disk.stats());
                }
                continue;
            }
            Err(e) => panic!("{what}: recovery failed: {e}"),
        };
        model.verify(&format!("{what}: open"), cp, &entries, round);

        let producers = rng.range(2, 4) as u32;
        let stop = AtomicBool::new(false);
        let checkpoints = Mutex::new(Vec::new());
        let max_durable = AtomicU64::new(0);
        let outcomes: Vec<(u32, Outcome, u64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..producers)
                .map(|p| {
                    let prng = Rng(rng.next_u64());
                    let appends = rng.range(5, 40);
                    let (wal, stop) = (&wal, &stop);
                    s.spawn(move || {
                        let o = producer(wal, round, p, prng, appends, stop);
                        let issued = o.issued;
                        (p, o, issued)
                    })
                })
                .collect();
            let mut crng = Rng(rng.next_u64());
            while handles.iter().any(|h| !h.is_finished()) {
                std::thread::sleep(std::time::Duration::from_micros(300));
                if crng.pct(10) {
                    // Recorded before the call: a call failing after its atomic
                    // replace still leaves this checkpoint on disk.
                    let s = wal.last_acked_sequence();
                    checkpoints.lock().unwrap().push(s);
                    let _ = wal.checkpoint(s);
                }
                max_durable.fetch_max(wal.durable_sequence(), Ordering::Relaxed);
                if disk.crashed() || disk.injected().is_some() {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            handles
                .into_iter()
                .map(|h| h.join().expect("producer panicked"))
                .collect()
        });
        model.checkpoints.extend(checkpoints.into_inner().unwrap());
        for (p, _, issued) in &outcomes {
            model.issued.insert((round, *p), *issued);
        }

        let probe = wal.clone();
        EARLY_BATCHES.fetch_add(wal.stats().early_batches, Ordering::Relaxed);
        let closed = wal.close();
        let crashed = disk.crashed();
        let injected = disk.injected();
        let clean = !crashed && injected.is_none();
        if let Some(inj) = injected {
            // The engine latched the failure, fails later appends...
            let cause = probe
                .failure()
                .unwrap_or_else(|| panic!("{what}: injected {inj:?} but the WAL did not fail"));
            assert!(
                closed.is_err(),
                "{what}: close succeeded after the injected {inj:?}"
            );
            let later = probe.append("t0", 0, Bytes::from_static(b"late")).wait();
            assert!(later.is_err(), "{what}: append after the failure succeeded");
            if let (false, Some(errno)) = (crashed, inj.fault.errno()) {
                assert_eq!(
                    cause.raw_os_error(),
                    Some(errno),
                    "{what}: failure {cause} does not carry the injected errno"
                );
                // Every producer that failed was told why.
                for e in outcomes.iter().flat_map(|o| &o.1.errors) {
                    assert_eq!(
                        e.raw_os_error(),
                        Some(errno),
                        "{what}: a producer got {e}, not the injected errno"
                    );
                }
            }
            // ...and acknowledged nothing after the failed operation.
            for (_, o, _) in &outcomes {
                for (seq, tags, _) in &o.acked {
                    let last = seq + tags.len() as u64 - 1;
                    assert!(
                        last <= inj.ack_bound,
                        "{what}: seq {last} acknowledged after the injected {inj:?}"
                    );
                }
            }
        }
        if clean {
            let errors: Vec<_> = outcomes.iter().flat_map(|o| &o.1.errors).collect();
            assert!(
                errors.is_empty(),
                "{what}: errors without a fault: {errors:?}"
            );
            closed
                .as_ref()
                .unwrap_or_else(|e| panic!("{what}: clean close failed: {e}"));
        }
        drop(probe);

        // Acknowledged entries; which of them must survive a power loss.
        let durable_seen = outcomes
            .iter()
            .flat_map(|o| o.1.acked.iter().map(|a| a.2).chain([o.1.synced]))
            .max()
            .unwrap_or(0)
            .max(max_durable.load(Ordering::Relaxed));
        for (_, o, _) in &outcomes {
            for (seq, tags, _) in &o.acked {
                for (i, t) in tags.iter().enumerate() {
                    let s = seq + i as u64;
                    if let Some(prev) = model.known.insert(s, *t) {
                        assert_eq!(prev, *t, "{what}: sequence {s} acknowledged twice");
                    }
                    if mode == SyncMode::EveryWrite {
                        model.must.insert(s, "acknowledged under every_write");
                    } else if s <= durable_seen {
                        model
                            .must
                            .insert(s, "covered by the reported durable sequence");
                    } else if clean {
                        model.must.insert(s, "acknowledged before a clean close");
                    } else {
                        UNSYNCED_ACKS.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if std::env::var_os("SIM_VERBOSE").is_some() {
            let acked: usize = outcomes.iter().map(|o| o.1.acked.len()).sum();
            let errors: usize = outcomes.iter().map(|o| o.1.errors.len()).sum();
            eprintln!(
                "{what}: recovered {} acked {acked} errors {errors} {:?} injected {injected:?}",
                entries.len(),
                disk.stats()
            );
        }
        if clean {
            let rolled = disk.power_loss(false).unwrap();
            assert_eq!(
                rolled, 0,
                "{what}: a power loss after a clean close changed {rolled} sectors"
            );
        } else if rng.pct(20) {
            // The process died, the machine did not: the next round (or the final
            // check, after a power loss) carries on with this disk.
            carried = Some(disk.clone());
        } else {
            disk.power_loss(false).unwrap();
        }
        let st = disk.stats();
        // Round 1 starts without the directory: watch_dir creates it with its entry
        // not durable, and the WAL's open must have fsynced the parent.
        assert!(
            st.dir_entry_durable && !st.dir_vanished,
            "{what}: the WAL directory's own entry was never made durable"
        );
        META_OPS.fetch_add(st.meta_ops, Ordering::Relaxed);
        OUTSIDE_WRITES.fetch_add(st.outside_writes, Ordering::Relaxed);
        CRASHED_ROUNDS.fetch_add(u64::from(st.crashed), Ordering::Relaxed);
        if carried.is_none() {
            count_power_loss(&st);
        }
    }
    if let Some(disk) = carried.take() {
        // The last process died without a power loss: the power fails now, before
        // the final check, taking whatever no one synced.
        disk.power_loss(false).unwrap();
        count_power_loss(&disk.stats());
    }
    // Final: recover over the real std backend, append, and recover again.
    let what = format!("seed {seed} final");
    let cfg = WalConfig {
        sync_mode: SyncMode::EveryWrite,
        ..cfg
    };
    let (wal, cp, entries) = open_collect(&dir, cfg.clone(), Over::Real);
    model.verify(&what, cp, &entries, FINAL_ROUND);
    let t = Tag {
        round: FINAL_ROUND,
        producer: 0,
        counter: 0,
        group_len: 1,
        group_idx: 0,
    };
    model.issued.insert((FINAL_ROUND, 0), 1);
    let seq = wal
        .append("t0", FINAL_ROUND as i32, Bytes::from(encode(&t, 100)))
        .wait()
        .unwrap_or_else(|e| panic!("{what}: append after recovery: {e}"));
    assert_eq!(
        seq,
        cp + entries.len() as u64 + 1,
        "{what}: append after recovery got a non-contiguous sequence"
    );
    model.known.insert(seq, t);
    model.must.insert(seq, "appended after recovery");
    wal.close().unwrap();
    let (wal, cp, entries) = open_collect(&dir, cfg, Over::Real);
    model.verify(&format!("{what} reopen"), cp, &entries, FINAL_ROUND);
    DROPPED_ACKS.fetch_add(model.dropped, Ordering::Relaxed);
    drop(wal);
    let _ = std::fs::remove_dir_all(&dir);
}

fn scratch_root() -> tempfile::TempDir {
    // tmpfs keeps the real fsyncs of file preparation cheap; fall back to the default.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("streamline-sim")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn sim_power_loss_and_faults_keep_every_invariant() {
    let root = scratch_root();
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(s) => vec![s],
        None => match (env_u64("SIM_SEED_START"), env_u64("SIM_SEEDS")) {
            (None, None) => {
                let days = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() / 86_400);
                let today = 1_000_001 + 1_000 * days;
                // Past the test harness's capture: a hang aborts the process,
                // and its output would go with it.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "sim: seeds 1-1000 and {today}-{} (today's; replay one with SIM_SEED=N)",
                    today + 999
                );
                (1..=1000).chain(today..today + 1000).collect()
            }
            (start, seeds) => {
                let start = start.unwrap_or(1);
                (start..start + seeds.unwrap_or(2000)).collect()
            }
        },
    };
    let total = seeds.len();
    let next = AtomicU64::new(0);
    let failed: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    let default_hook = Arc::new(std::panic::take_hook());
    {
        let h = Arc::clone(&default_hook);
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("sim-seed"))
            {
                return; // reported with its seed below
            }
            h(info);
        }));
    }
    // A seed that hangs is a failure too: the watchdog names it and aborts.
    let running: Mutex<HashMap<u64, Instant>> = Mutex::new(HashMap::new());
    let all_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !all_done.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let hung: Vec<u64> = running.lock().unwrap().iter().filter(|(_, t)| t.elapsed().as_secs() >= 30).map(|(s, _)| *s).collect();
                if !hung.is_empty() {
                    // Past the capture: the abort ends the process with it.
                    use std::io::Write;
                    let _ = writeln!(std::io::stderr(), "FAILED seeds {hung:?}: still running after 30 s (hang)\n  replay: SIM_SEED={} cargo test --features sim --test sim_crash", hung[0]);
                    std::process::abort();
                }
            }
        });
        let mut workers_done = Vec::new();
        for w in 0..workers {
            let (seeds, next, failed, root, running) =
                (&seeds, &next, &failed, root.path(), &running);
            let h = std::thread::Builder::new()
                .name(format!("sim-worker-{w}"))
                .spawn_scoped(s, move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&seed) = seeds.get(i) else { break };
                    let root = root.to_path_buf();
                    running.lock().unwrap().insert(seed, Instant::now());
                    let r = std::thread::Builder::new()
                        .name(format!("sim-seed-{seed}"))
                        .spawn(move || run_seed(seed, &root))
                        .unwrap()
                        .join();
                    running.lock().unwrap().remove(&seed);
                    if let Err(p) = r {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                            .unwrap_or_default();
                        eprintln!("FAILED seed {seed}: {msg}\n  replay: SIM_SEED={seed} cargo test --features sim --test sim_crash");
                        failed.lock().unwrap().push((seed, msg));
                        if failed.lock().unwrap().len() >= 5 {
                            break;
                        }
                    }
                })
                .unwrap();
            workers_done.push(h);
        }
        for h in workers_done {
            let _ = h.join();
        }
        all_done.store(true, Ordering::Relaxed);
    });
    let _ = std::panic::take_hook();
    let failed = failed.into_inner().unwrap();
    let (meta_ops, undone) = (
        META_OPS.load(Ordering::Relaxed),
        META_UNDONE.load(Ordering::Relaxed),
    );
    let (outside, rolled) = (
        OUTSIDE_WRITES.load(Ordering::Relaxed),
        OUTSIDE_ROLLED.load(Ordering::Relaxed),
    );
    let early = EARLY_BATCHES.load(Ordering::Relaxed);
    let [crashed, restarted, backend_rolled, torn, unsynced, dropped, open_crashes] = [
        &CRASHED_ROUNDS,
        &RESTARTED_ROUNDS,
        &BACKEND_ROLLED,
        &TORN_TAILS,
        &UNSYNCED_ACKS,
        &DROPPED_ACKS,
        &OPEN_CRASHES,
    ]
    .map(|c| c.load(Ordering::Relaxed));
    eprintln!(
        "sim: {total} seeds in {:.1}s, {} failed; {meta_ops} directory changes recorded, {undone} undone by power losses; {outside} writes outside the backend, {rolled} of their sectors rolled back; {early} batches submitted early; {crashed} rounds crashed, {restarted} restarted on a dead process's disk without a power loss, {backend_rolled} sectors of the backend's writes rolled back, {torn} torn tails cut; {unsynced} appends acknowledged beyond the durable sequence before a crash or fault, {dropped} acknowledged appends not recovered; {open_crashes} opens killed at their directory fsync",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    if total >= 100 {
        assert!(
            undone > 0,
            "no power loss undid a directory change: the directory model was not exercised"
        );
        assert!(
            rolled > 0,
            "no power loss rolled back a file written outside the backend: that model was not exercised"
        );
        assert!(
            early > 0,
            "no batch went out beside a durable write in flight: that path was not exercised"
        );
        assert!(crashed > 0, "no round ended in the simulated crash");
        assert!(
            open_crashes > 0,
            "no open was killed at its directory fsync: the open's repairs were never interrupted"
        );
        assert!(
            restarted > 0,
            "no round restarted after a process crash without a power loss"
        );
        assert!(
            backend_rolled > 0,
            "no power loss rolled back a sector the backend wrote: the WAL's own data was never dropped or torn"
        );
        assert!(
            torn > 0,
            "no recovery cut a torn tail: power losses never tore a batch"
        );
        assert!(
            unsynced > 0,
            "no append was acknowledged beyond the durable sequence before a crash or fault"
        );
        assert!(
            dropped > 0,
            "no acknowledged but unsynced append was lost: power losses never took acknowledged data"
        );
    }
    assert!(
        failed.is_empty(),
        "failing seeds: {:?}",
        failed.iter().map(|f| f.0).collect::<Vec<_>>()
    );
}

/// Entries of producer 0 with the given (round, counter) tags, sequences from 1.
fn entries_of(tags: &[(u32, u64)]) -> Vec<WalEntry> {
    tags.iter()
        .enumerate()
        .map(|(i, &(round, counter))| {
            let t = Tag {
                round,
                producer: 0,
                counter,
                group_len: 1,
                group_idx: 0,
            };
            WalEntry {
                sequence: i as u64 + 1,
                timestamp: 0,
                entry_type: streamline::wal::WalEntryType::Record,
                topic: "t0".into(),
                partition: round as i32,
                data: Bytes::from(encode(&t, 10)),
                crc32: 0,
            }
        })
        .collect()
}

/// Round 2 opened on round 1's three entries, appended one and was cut;
/// `second` is what the next recovery returns.
fn verify_after_round_2(second: &[(u32, u64)]) {
    let mut model = Model::default();
    model.issued.insert((1, 0), 4);
    model.issued.insert((2, 0), 1);
    model.verify(
        "open of round 2",
        0,
        &entries_of(&[(1, 0), (1, 1), (1, 2)]),
        2,
    );
    model.verify("final", 0, &entries_of(second), FINAL_ROUND);
}

/// The model passes a log that continues with the round that opened it (the
/// control for the test after it).
#[test]
fn model_accepts_the_round_after_the_open() {
    verify_after_round_2(&[(1, 0), (1, 1), (1, 2), (2, 0)]);
}

/// A stale entry fails the model: beyond the log round 2 opened on, an entry
/// of round 1 (left on the disk past where that open cut the log), though its
/// tag checks out and round 1's producer counts on without a gap.
#[test]
#[should_panic(expected = "of an older round")]
fn model_rejects_an_older_rounds_entry_beyond_the_open() {
    verify_after_round_2(&[(1, 0), (1, 1), (1, 2), (2, 0), (1, 3)]);
}
