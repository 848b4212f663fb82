//! kill -9 crash test: a child process (`wal-crash-writer`) appends from several
//! threads and prints every acknowledged sequence; the parent SIGKILLs it at a random
//! moment after its first acknowledgement (a random delay, or a random number of
//! further acknowledgements), reopens the WAL and checks that every acknowledged
//! sequence is recovered with its exact payload, that sequences are contiguous,
//! and that each writer thread's entries are in order with no gap. The recovered
//! checkpoint must be one the child announced, no higher than the highest
//! acknowledged sequence, and never go back; the next sequence the child's open
//! reports must follow what the previous recovery found. Every entry at or
//! above the sequence the child's open reported must be the child's own (an
//! earlier run's entry there is stale), and every entry the previous recovery
//! returned must come back unchanged unless a checkpoint covers it. About half
//! the verifications read the log with `WalReader`, writing nothing, so that the
//! next child opens the log as the crash left it (and cuts its torn tail); the
//! others open it, which repairs it and closes it cleanly. Runs on both backends, in `every_write`
//! and `interval` mode (a process crash loses nothing the kernel accepted, so
//! `interval` acknowledgements must survive too), and in `every_write` with the
//! uring backend's group writes forced on.
//!
//!
//! The same cycles also cut the power under the child (`power_cut_*`): the WAL
//! lives on ext4 on a block device with a volatile write cache
//! (`tests/power_fs`, a loop device over `tests/failfs/cachefs.py`), and at the
//! kill every write the device had not flushed is kept, dropped, or torn at
//! 512-byte sectors, at random; the file system is then mounted again from what
//! the device holds (ext4 replays its journal) and the WAL recovered from it.
//! Every `every_write` acknowledgement must survive; in `interval` mode
//! acknowledged entries may be lost, but only from the end, never at or below a
//! durable sequence the WAL reported (`Wal::durable_sequence`, which the child
//! prints as it grows), and nothing recovered may be invented or garbled.
//! About one power-cut cycle in four ends with SIGKILL alone (no cut, and the
//! file system not mounted again): the next child must make durable at its open
//! what the killed one left in the page cache, and its cut checks that it did.
//!
//! The `*_large_entries_*` runs write entries of 64-224 KiB into 2 MiB files:
//! after such large durable writes the next files are only reserved, not
//! zero-filled (`docs/engine.md`, "Reserving the next file after large writes"),
//! so acknowledged entries sit in space whose extent conversion the same sync
//! journaled. Each such run must have written batches into never-written space
//! (the child reports `WalStats::unwritten_batches`).
//!
//! `CRASH_CYCLES` (default 20 per backend and mode) sets the kill cycles,
//! `POWER_CYCLES` (default 20) the power cuts, `CRASH_THREADS` (default 4) the
//! child's writer threads;
//! `CRASH_SEED` replays a kill schedule. The summary line `crash: cycles C
//! acknowledged A lost L checked K` is what `scripts/crash-soak.sh` reports:
//! K counts the acknowledged entries read back and compared. The child
//! checkpoints every 64th sequence (every 128th for large entries), and an
//! entry a checkpoint covered and retention then removed can no longer be
//! read; so about every other cycle of small entries (never two in a row)
//! runs its child with no checkpoint, and every entry it acknowledged is
//! read back.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use streamline::wal::{BackendKind, EntryIter, Recovery, SyncMode, Wal, WalConfig, WalReader};

mod power_fs;
use power_fs::{Cut, PowerFs};

#[path = "../src/bin/wal-crash-writer/payload.rs"]
mod payload;
use payload::{file_and_batch_size, payload};

/// (run, thread, counter) from a payload's `run/thread/counter/` prefix.
fn tag(data: &[u8]) -> Option<(u64, u64, u64)> {
    let mut fields = data.splitn(4, |&b| b == b'/');
    let mut num = || -> Option<u64> { std::str::from_utf8(fields.next()?).ok()?.parse().ok() };
    Some((num()?, num()?, num()?))
}

#[derive(Default)]
struct Totals {
    cycles: u64,
    acked: u64,
    /// Acknowledged entries read back and compared with what was acknowledged
    /// (those above the recovered checkpoint, and those at or below it that
    /// the log still holds; the rest were retired by a checkpoint, and are
    /// acknowledged but not checked).
    checked: u64,
    /// Acknowledged entries missing where none may be.
    lost: u64,
    /// Recoveries that found a checkpoint newer than the one before.
    checkpoints: u64,
    /// Power cuts only: acknowledged `interval` entries lost from the end, and
    /// the unflushed sectors the cuts rolled back or tore.
    rolled_back: u64,
    sectors_changed: u64,
    /// Drop and torn cuts that came while more than one device write was held
    /// unflushed (`CutReport::writes_held`).
    multi_write_cuts: u64,
    /// Batches the children wrote into never-written (reserved) file space.
    unwritten_batches: u64,
    /// Cycles whose child reported a durable sequence beyond the log it
    /// opened: cycles in which the durable-sequence check had new entries to
    /// hold to it.
    durable_grew: u64,
    /// Cycles whose child opened a WAL no one had closed since the crash (the
    /// verification before it read the log without opening it), and of them
    /// those whose open cut a torn tail.
    crash_opens: u64,
    child_torn: u64,
    /// Power-cut runs: cycles ended by SIGKILL alone (no cut, and the file
    /// system not mounted again), so that the next child's open must make
    /// durable what the killed one left in the page cache before a cut
    /// follows.
    kills_only: u64,
}

/// How a cycle ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// SIGKILL of the child: the kernel keeps everything it accepted.
    Kill,
    /// A power cut under the child, then SIGKILL: the device keeps only what
    /// it flushed, and some of the rest.
    Power,
}

/// The sizes of the entries the child writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entries {
    /// Up to ~3 KB, into 256 KiB files.
    Small,
    /// 64-224 KiB, into 2 MiB files (`wal-crash-writer ... large`).
    Large,
}

fn config(backend: BackendKind, mode: SyncMode, entries: Entries) -> WalConfig {
    let (max_file_size, max_batch_bytes) = file_and_batch_size(entries == Entries::Large);
    WalConfig {
        backend,
        sync_mode: mode,
        max_file_size,
        retention_files: 1,
        max_batch_bytes,
        ..WalConfig::default()
    }
}

/// When the parent kills the child, counted from its first acknowledged append
/// (a cycle killed before any acknowledgement would check nothing).
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// This long after the first acknowledgement.
    After(Duration),
    /// Once the parent has read this many more acknowledgements (or after
    /// `ACKS_WAIT` at most).
    Acks(u64),
}

/// The longest a `Kill::Acks` cycle waits for its acknowledgements.
const ACKS_WAIT: Duration = Duration::from_millis(200);

/// What the child of one kill cycle reported.
struct Cycle {
    /// NEXT of its `open BACKEND NEXT` line: the sequence its first append gets.
    next: u64,
    /// The acknowledged appends: seq -> (run, thread, counter).
    acked: HashMap<u64, (u64, u64, u64)>,
    /// The checkpoints it announced (each before taking it).
    checkpoints: Vec<u64>,
    /// The highest `unwritten_batches` it reported.
    unwritten_batches: u64,
    /// The highest durable sequence it reported (`Wal::durable_sequence`).
    durable: u64,
    /// Its open cut a torn tail (`torn OFFSET`).
    torn: bool,
}

/// One kill cycle. `flags`: the child's optional arguments (`ring`, `group`,
/// `large`).
fn run_child(
    dir: &Path,
    backend: BackendKind,
    mode: SyncMode,
    flags: &[&str],
    run: u64,
    kill: Kill,
    cut: Option<&mut dyn FnMut()>,
) -> Cycle {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wal-crash-writer"))
        .args([
            dir.to_str().unwrap(),
            backend.as_str(),
            mode.as_str(),
            &threads().to_string(),
            &run.to_string(),
        ])
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wal-crash-writer");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        // Whole lines only: one cut by the kill (no newline) is dropped, its
        // append not counted as seen.
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    line.pop();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
    /// Whether a writer's stderr shows it panicked on an error the system
    /// reported (EIO from the power-cut file system, which fails every
    /// operation after its cut, or what ext4 makes of it), not on a check of
    /// its own.
    fn died_of_the_cut(stderr: &str) -> bool {
        stderr.contains("panicked") && stderr.contains("(os error ")
    }
    fn fail(mut child: std::process::Child, what: &str) -> ! {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("writer {what}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Wait until the child has opened (recovery done)...
    let Ok(first) = rx.recv_timeout(Duration::from_secs(30)) else {
        fail(child, "did not open within 30 s");
    };
    let mut lines = vec![first];
    // ...and has acknowledged an append, then until the kill is due.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut acks = 0u64;
    while acks == 0 {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            fail(child, "acknowledged no append within 30 s of its open");
        };
        acks += u64::from(line.starts_with("ack "));
        lines.push(line);
    }
    match kill {
        Kill::After(d) => std::thread::sleep(d),
        Kill::Acks(n) => {
            let until = Instant::now() + ACKS_WAIT;
            while acks <= n {
                let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now()))
                else {
                    break;
                };
                acks += u64::from(line.starts_with("ack "));
                lines.push(line);
            }
        }
    }
    let power_cut = cut.is_some();
    // The writer aborts on any error (a panic on any thread): one that ended
    // before the kill or the cut failed, whatever the parent reads after.
    if let Ok(Some(status)) = child.try_wait() {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        panic!("writer exited by itself ({status:?}) before the kill or the cut: {err}");
    }
    if let Some(cut) = cut {
        cut();
    }
    // Child::kill sends SIGKILL on Unix. After a power cut the child may
    // already have died of its failing writes.
    let _ = child.kill();
    let status = child.wait().unwrap();
    if std::os::unix::process::ExitStatusExt::signal(&status) != Some(libc::SIGKILL) {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        // After a power cut every write fails, and the writer aborts on the
        // first failure it sees: that is the only way it may have ended by
        // itself. One that ended for any other reason (between the look above
        // and the cut) failed.
        if !(power_cut && died_of_the_cut(&err)) {
            panic!("writer exited by itself ({status:?}) before the kill: {err}");
        }
    }
    reader.join().unwrap();
    lines.extend(rx.try_iter());

    let open: Vec<&str> = lines[0].split(' ').collect();
    assert!(
        open.len() == 3 && open[0] == "open" && open[1] == backend.as_str(),
        "unexpected first line {:?}",
        lines[0]
    );
    let mut cycle = Cycle {
        next: open[2].parse().expect("open: NEXT"),
        acked: HashMap::new(),
        checkpoints: Vec::new(),
        unwritten_batches: 0,
        durable: 0,
        torn: false,
    };
    for line in &lines[1..] {
        let f: Vec<&str> = line.split(' ').collect();
        let p = |i: usize| -> u64 {
            f[i].parse()
                .unwrap_or_else(|_| panic!("malformed line {line:?}"))
        };
        match (f[0], f.len()) {
            ("ack", 6) => {
                cycle.acked.insert(p(1), (p(2), p(3), p(4)));
            }
            ("checkpoint", 2) => cycle.checkpoints.push(p(1)),
            ("unwritten", 2) => cycle.unwritten_batches = cycle.unwritten_batches.max(p(1)),
            ("durable", 2) => cycle.durable = cycle.durable.max(p(1)),
            ("torn", 2) => {
                p(1);
                cycle.torn = true;
            }
            _ => panic!("malformed line {line:?}"),
        }
    }
    cycle
}

/// What the checker knows across the cycles of one directory.
#[derive(Default)]
struct Known {
    /// Acknowledged appends not yet covered by a recovered checkpoint.
    acked: HashMap<u64, (u64, u64, u64)>,
    /// The sequences the last child acknowledged: what a verification counts
    /// as checked (earlier cycles' entries are compared again, not counted).
    fresh: std::collections::HashSet<u64>,
    /// The highest acknowledged sequence seen so far.
    max_acked: u64,
    /// Every checkpoint a child announced.
    checkpoints: std::collections::HashSet<u64>,
    /// The checkpoint the last recovery found.
    last_checkpoint: u64,
    /// The highest durable sequence any child reported: every recovery must
    /// reach it, whatever the mode and however the cycle ended.
    durable: u64,
    /// What the last verification recovered above its checkpoint. The next
    /// child's open makes all of it durable (the commit thread counts every
    /// recovered entry as such), so every later recovery must return it again,
    /// unchanged, unless a checkpoint covers it: after a power cut too.
    recovered: HashMap<u64, (u64, u64, u64)>,
}

/// What one verification found.
struct Verified {
    /// Acknowledged entries missing.
    lost: u64,
    /// Entries the last child acknowledged, found and compared.
    checked: u64,
    /// The sequence the next append gets.
    next: u64,
}

/// How a verification reads the log.
enum Opened {
    /// `Wal::open`: recovery repairs the log (cuts a torn tail, seals), and the
    /// verification closes it cleanly after.
    Wal(Wal, Box<Recovery>),
    /// `WalReader`: reads what the disk holds and writes nothing, so that the
    /// next child opens the log as the crash left it.
    Reader(WalReader),
}

impl Opened {
    fn entries_from(&self, from: u64) -> EntryIter {
        match self {
            Opened::Wal(_, rec) => rec.entries_from(from),
            Opened::Reader(r) => r.entries_from(from),
        }
    }
}

/// What a cycle's child was: the sequence its open reported (its first
/// append's) and its run, the first field of every payload it wrote.
#[derive(Clone, Copy)]
struct Child {
    opened: u64,
    run: u64,
}

/// Reads the log back and checks the invariants. Where `loss_allowed` (an
/// `interval` log after a power cut), acknowledged entries may be missing from
/// the end of the log only, above every durable sequence a child reported, and
/// are forgotten once counted (later cycles reuse their sequences). Every
/// entry at or above `child.opened` must be the child's own: anything else
/// there is stale (an earlier run's, left past where a recovery cut the log)
/// or invented. `read_only` reads with [`WalReader`] instead of opening.
#[allow(clippy::too_many_arguments)]
fn verify(
    dir: &Path,
    backend: BackendKind,
    mode: SyncMode,
    entries: Entries,
    known: &mut Known,
    loss_allowed: bool,
    child: Child,
    read_only: bool,
    what: &str,
) -> Verified {
    let large = entries == Entries::Large;
    let (checkpoint, next, opened) = if read_only {
        let r = WalReader::open(dir).unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
        let checkpoint = r.scan().checkpoint.map_or(0, |c| c.sequence);
        // As `Wal::open`: a checkpoint ahead of the log moves the next
        // sequence past it.
        let next = r.scan().next_sequence.max(checkpoint + 1);
        (checkpoint, next, Opened::Reader(r))
    } else {
        let (wal, rec) = Wal::open(dir, config(backend, mode, entries))
            .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
        assert_eq!(
            wal.backend(),
            backend,
            "{what}: requested backend not in use"
        );
        (
            rec.checkpoint,
            rec.next_sequence,
            Opened::Wal(wal, Box::new(rec)),
        )
    };
    // Acknowledged entries at or below the checkpoint are not checked: a
    // checkpoint that was never taken, or one beyond what was acknowledged,
    // would hide losses.
    assert!(
        checkpoint == 0 || known.checkpoints.contains(&checkpoint),
        "{what}: recovered checkpoint {checkpoint} was never taken"
    );
    assert!(
        checkpoint <= known.max_acked,
        "{what}: recovered checkpoint {checkpoint} is above the highest acknowledged sequence {}",
        known.max_acked
    );
    assert!(
        checkpoint >= known.last_checkpoint,
        "{what}: checkpoint went back from {} to {checkpoint}",
        known.last_checkpoint
    );
    known.last_checkpoint = checkpoint;
    // Acknowledged entries the checkpoint covers are still compared where the
    // log holds them (retention keeps the newest archived file): held, they
    // must be what was acknowledged.
    let mut checked = 0;
    if let Some(&from) = known.acked.keys().filter(|&&s| s <= checkpoint).min() {
        for e in opened.entries_from(from) {
            let e = e.unwrap_or_else(|err| panic!("{what}: reading the log from {from}: {err}"));
            if e.sequence > checkpoint {
                break;
            }
            if let Some(t) = known.acked.get(&e.sequence) {
                let fresh = known.fresh.contains(&e.sequence);
                assert_eq!(
                    tag(&e.data).as_ref(),
                    Some(t),
                    "{what}: acknowledged seq {} (at or below the checkpoint) holds another entry",
                    e.sequence
                );
                assert_eq!(
                    &e.data[..],
                    &payload(t.0, t.1, t.2, large)[..],
                    "{what}: seq {}: payload garbled",
                    e.sequence
                );
                checked += u64::from(fresh);
            }
        }
    }
    let (wal, entries) = match opened {
        Opened::Wal(wal, rec) => (Some(wal), (*rec).collect::<Result<Vec<_>, _>>()),
        Opened::Reader(r) => (None, r.entries_from(checkpoint + 1).collect()),
    };
    let entries = entries.unwrap_or_else(|e| panic!("{what}: recovery stream failed: {e}"));
    let mut by_seq = HashMap::new();
    let mut last_counter: HashMap<(u64, u64), u64> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            e.sequence,
            checkpoint + 1 + i as u64,
            "{what}: sequences not contiguous after checkpoint {checkpoint}"
        );
        let t = tag(&e.data)
            .unwrap_or_else(|| panic!("{what}: seq {}: not a writer payload", e.sequence));
        assert_eq!(
            &e.data[..],
            &payload(t.0, t.1, t.2, large)[..],
            "{what}: seq {}: payload garbled",
            e.sequence
        );
        assert!(
            e.sequence < child.opened || t.0 == child.run,
            "{what}: seq {} holds an entry of an older run {:?}, at or above {} where the \
             writer of run {} opened",
            e.sequence,
            t,
            child.opened,
            child.run
        );
        assert_eq!(
            e.partition as u64, t.1,
            "{what}: seq {}: partition",
            e.sequence
        );
        if let Some(prev) = last_counter.insert((t.0, t.1), t.2) {
            assert_eq!(
                t.2,
                prev + 1,
                "{what}: seq {}: writer {:?} skipped from {prev}",
                e.sequence,
                (t.0, t.1)
            );
        }
        by_seq.insert(e.sequence, t);
    }
    let end = checkpoint + entries.len() as u64;
    // What the WAL reported durable is on the disk: no cut may take it, in
    // any mode (sequences are contiguous, so every entry through it is here).
    assert!(
        end >= known.durable,
        "{what}: the log ends at {end}, below the durable sequence {} the writer reported",
        known.durable
    );
    assert_eq!(
        next,
        end + 1,
        "{what}: recovery's next sequence is not right after the log's end (checkpoint {checkpoint}, {} entries)",
        entries.len()
    );
    for (&seq, t) in known.recovered.iter() {
        if seq > checkpoint {
            assert_eq!(
                by_seq.get(&seq),
                Some(t),
                "{what}: seq {seq}, recovered before and durable since the open after it, \
                 is gone or changed (the log ends at {end})"
            );
        }
    }
    let mut lost = 0;
    for (&seq, t) in known.acked.iter() {
        if seq <= checkpoint {
            continue;
        }
        match by_seq.get(&seq) {
            Some(r) => {
                assert_eq!(r, t, "{what}: acknowledged seq {seq} holds another entry");
                checked += u64::from(known.fresh.contains(&seq));
            }
            None => {
                lost += 1;
                if !loss_allowed {
                    eprintln!("{what}: LOST acknowledged seq {seq} {t:?} (log ends at {end})");
                }
            }
        }
    }
    known
        .acked
        .retain(|&s, _| s > checkpoint && (!loss_allowed || s <= end));
    if loss_allowed {
        // What was announced or acknowledged in the lost range is gone with
        // it; the next child reuses those sequences.
        known.checkpoints.retain(|&c| c <= end);
        known.max_acked = known.max_acked.min(end);
    }
    known.recovered = by_seq;
    if let Some(wal) = wal {
        wal.close().unwrap_or_else(|e| panic!("{what}: close: {e}"));
    }
    Verified {
        lost,
        checked,
        next,
    }
}

/// `group`: the uring backend's group writes forced on or off (unset: by load).
fn crash_cycles(
    backend: BackendKind,
    mode: SyncMode,
    group: Option<bool>,
    entries: Entries,
    crash: Crash,
    cycles: u64,
) -> Totals {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let path = match group {
        None => String::new(),
        Some(true) => "+group-writes".into(),
        Some(false) => "+ring-writes".into(),
    };
    let how = match crash {
        Crash::Kill => "",
        Crash::Power => "/power-cut",
    };
    let path = match entries {
        Entries::Small => path,
        Entries::Large => path + "+large-entries",
    };
    let base_flags: Vec<&str> = [
        group.map(|g| if g { "group" } else { "ring" }),
        (entries == Entries::Large).then_some("large"),
    ]
    .into_iter()
    .flatten()
    .collect();
    eprintln!("crash {backend}{path} {mode}{how}: seed {seed} (replay with CRASH_SEED={seed})");
    let mut x = seed | 1;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let tmp = tempfile::tempdir().unwrap();
    // Large entries keep up to ~20 files of 2 MiB between checkpoints.
    let mib = match entries {
        Entries::Small => 64,
        Entries::Large => 128,
    };
    let power = (crash == Crash::Power).then(|| PowerFs::new(mib));
    let dir = match &power {
        Some(fs) => fs.path().join("wal"),
        None => tmp.path().to_path_buf(),
    };
    let mut known = Known::default();
    let mut totals = Totals::default();
    // An empty directory: the first append gets 1.
    let mut next = 1;
    let started = Instant::now();
    // Whether the last cycle's child took checkpoints.
    let mut checkpointed = true;
    // Whether the last verification read the log without opening it.
    let mut left_crashed = false;
    for run in 1..=cycles {
        // Every other cycle or so takes no checkpoint, so that all it
        // acknowledged is read back; never two in a row, so that a
        // checkpoint keeps the log (and a power-cut file system) small.
        let no_checkpoint = entries == Entries::Small && checkpointed && rand(2) == 0;
        checkpointed = !no_checkpoint;
        let mut flags = base_flags.clone();
        if no_checkpoint {
            flags.push("nocheckpoint");
        }
        let kill = if rand(2) == 0 {
            Kill::After(Duration::from_millis(rand(120)))
        } else {
            Kill::Acks(rand(400))
        };
        let cut = [Cut::Keep, Cut::Drop, Cut::Torn][rand(3) as usize];
        let cut_seed = rand(u64::MAX);
        // A power-cut run ends about one cycle in four with SIGKILL alone, and
        // at least one cycle before its last: the next child opens a log whose
        // newest writes are in the page cache only, and its cut then tests
        // that the open made them durable.
        let kill_only = crash == Crash::Power
            && run < cycles
            && (rand(4) == 0 || (run + 1 == cycles && totals.kills_only == 0));
        // About half the verifications (and one before the last cycle at
        // least) read the log without opening it, so that the next child
        // recovers the crash itself: cuts a torn tail, seals, settles the
        // page cache. The others open and close it cleanly.
        let read_only = kill_only
            || rand(2) == 0
            || (run + 1 == cycles && totals.crash_opens == 0 && !left_crashed);
        // An `interval` acknowledgement promises nothing across a power cut.
        let loss_allowed = crash == Crash::Power && !kill_only && mode != SyncMode::EveryWrite;
        let what = match crash {
            Crash::Kill => {
                format!("{backend}{path} {mode} cycle {run} (seed {seed}, kill {kill:?})")
            }
            Crash::Power if kill_only => format!(
                "{backend}{path} {mode} cycle {run} (seed {seed}, kill {kill:?}, no power cut)"
            ),
            Crash::Power => format!(
                "{backend}{path} {mode} cycle {run} (seed {seed}, power cut {cut:?} after {kill:?})"
            ),
        };
        let mut report = None;
        let mut do_cut = || report = power.as_ref().map(|fs| fs.cut(cut, cut_seed));
        let hook: Option<&mut dyn FnMut()> =
            (power.is_some() && !kill_only).then_some(&mut do_cut as _);
        let cycle = run_child(&dir, backend, mode, &flags, run, kill, hook);
        totals.crash_opens += u64::from(left_crashed);
        totals.child_torn += u64::from(cycle.torn);
        totals.kills_only += u64::from(kill_only);
        assert!(
            left_crashed || !cycle.torn,
            "{what}: the writer cut a torn tail of a log closed cleanly"
        );
        if let (Some(fs), false) = (&power, kill_only) {
            let report = report.expect("the cut ran");
            totals.sectors_changed += report.changed;
            totals.multi_write_cuts += u64::from(cut != Cut::Keep && report.writes_held > 1);
            if cut == Cut::Keep {
                assert_eq!(
                    report.changed, 0,
                    "{what}: a cut that keeps everything changed sectors"
                );
            }
            fs.power_on();
        }
        // The child recovered what the last verification recovered (and closed).
        assert_eq!(
            cycle.next, next,
            "{what}: the writer's open reported next sequence {}, recovery before it {next}",
            cycle.next
        );
        for &seq in cycle.acked.keys() {
            assert!(
                seq >= cycle.next,
                "{what}: seq {seq} acknowledged below the next sequence {} at open",
                cycle.next
            );
        }
        totals.acked += cycle.acked.len() as u64;
        totals.unwritten_batches += cycle.unwritten_batches;
        totals.durable_grew += u64::from(cycle.durable >= cycle.next);
        known.durable = known.durable.max(cycle.durable);
        known.max_acked = known
            .max_acked
            .max(cycle.acked.keys().copied().max().unwrap_or(0));
        known.fresh = cycle.acked.keys().copied().collect();
        known.acked.extend(cycle.acked);
        known.checkpoints.extend(cycle.checkpoints);
        let checkpoint_before = known.last_checkpoint;
        let child = Child {
            opened: cycle.next,
            run,
        };
        let v = verify(
            &dir,
            backend,
            mode,
            entries,
            &mut known,
            loss_allowed,
            child,
            read_only,
            &what,
        );
        left_crashed = read_only;
        totals.checked += v.checked;
        if loss_allowed {
            totals.rolled_back += v.lost;
        } else {
            totals.lost += v.lost;
        }
        totals.checkpoints += u64::from(known.last_checkpoint > checkpoint_before);
        next = v.next;
        totals.cycles += 1;
    }
    eprintln!(
        "crash: {backend}{path} {mode}{how} cycles {} acknowledged {} lost {} checked {} checkpoints {} rolled-back {} sectors-cut {} multi-write-cuts {} unwritten-batches {} durable-grew {} crash-opens {} torn-at-open {} kills-only {} ({:.1}s)",
        totals.cycles,
        totals.acked,
        totals.lost,
        totals.checked,
        totals.checkpoints,
        totals.rolled_back,
        totals.sectors_changed,
        totals.multi_write_cuts,
        totals.unwritten_batches,
        totals.durable_grew,
        totals.crash_opens,
        totals.child_torn,
        totals.kills_only,
        started.elapsed().as_secs_f64()
    );
    totals
}

/// Writer threads in the child: 4 by default; soaks may ask for as many as the
/// 64-writer benchmarks run (`CRASH_THREADS=64`).
fn threads() -> u64 {
    std::env::var("CRASH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(4)
}

fn cycles(default: u64) -> u64 {
    env_cycles("CRASH_CYCLES", default)
}

/// Power-cut cycles: `POWER_CYCLES`, as slow as the FUSE daemon under them.
fn power_cycles(default: u64) -> u64 {
    env_cycles("POWER_CYCLES", default)
}

fn env_cycles(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Every cycle has acknowledged appends already (`run_child` waits for them).
/// The child checkpoints each acknowledged multiple of 64 (announcing it first):
/// among 20 of them, a kill cannot have cut every checkpoint short. Nor can
/// every cycle end before a sync (every 5 ms in `interval` mode) made one of its
/// appends durable: a run whose durable sequence never grew checked nothing of it.
fn check(t: &Totals) {
    assert_eq!(t.lost, 0, "acknowledged entries lost");
    assert!(
        t.checked > 0,
        "{} entries acknowledged, none read back",
        t.acked
    );
    assert!(
        t.durable_grew > 0,
        "no cycle of {} reported a durable sequence beyond the log it opened (with \
         fewer than 20 cycles all may end before a sync)",
        t.cycles
    );
    if t.acked >= 20 * 64 {
        assert!(
            t.checkpoints > 0,
            "{} appends acknowledged, yet no recovery found a new checkpoint",
            t.acked
        );
    }
}

#[test]
fn kill9_every_write_std() {
    check(&crash_cycles(
        BackendKind::Std,
        SyncMode::EveryWrite,
        None,
        Entries::Small,
        Crash::Kill,
        cycles(20),
    ));
}

#[test]
fn kill9_every_write_uring() {
    check(&crash_cycles(
        BackendKind::Uring,
        SyncMode::EveryWrite,
        None,
        Entries::Small,
        Crash::Kill,
        cycles(20),
    ));
}

#[test]
fn kill9_interval_std() {
    check(&crash_cycles(
        BackendKind::Std,
        SyncMode::Interval,
        None,
        Entries::Small,
        Crash::Kill,
        cycles(20),
    ));
}

#[test]
fn kill9_interval_uring() {
    check(&crash_cycles(
        BackendKind::Uring,
        SyncMode::Interval,
        None,
        Entries::Small,
        Crash::Kill,
        cycles(20),
    ));
}

#[test]
fn kill9_every_write_uring_group_writes() {
    check(&crash_cycles(
        BackendKind::Uring,
        SyncMode::EveryWrite,
        Some(true),
        Entries::Small,
        Crash::Kill,
        cycles(20),
    ));
}

/// A power-cut run: nothing acknowledged lost where that is promised (see
/// [`check`]), and the cuts really destroyed unflushed writes (a cut finding
/// nothing unflushed each time would prove nothing).
fn check_power(t: &Totals) {
    check(t);
    assert!(
        t.sectors_changed > 0,
        "no power cut of {} cycles rolled back or tore an unflushed sector (a cut finds \
         nothing unflushed now and then: with fewer than 20 cycles all may)",
        t.cycles
    );
}

#[test]
fn power_cut_every_write_std() {
    check_power(&crash_cycles(
        BackendKind::Std,
        SyncMode::EveryWrite,
        None,
        Entries::Small,
        Crash::Power,
        power_cycles(20),
    ));
}

/// The uring backend keeps several durable writes in flight: some of the cuts
/// must have come while more than one device write was held unflushed
/// (`tests/power_fs`, "When a drop or torn cut comes"), which a cut at the
/// first write after its order nearly never did. The count is of the device's
/// writes, ext4's journal and the next file's preparation included, not of the
/// WAL's alone. About half the cycles end in such a cut; with fewer than 20
/// cycles there may be none.
fn check_power_in_flight(t: &Totals) {
    check_power(t);
    if t.cycles >= 20 {
        assert!(
            t.multi_write_cuts >= 2,
            "{} of {} cycles ended in a drop or torn cut holding more than one write",
            t.multi_write_cuts,
            t.cycles
        );
    }
}

#[test]
fn power_cut_every_write_uring_ring_writes() {
    check_power_in_flight(&crash_cycles(
        BackendKind::Uring,
        SyncMode::EveryWrite,
        Some(false),
        Entries::Small,
        Crash::Power,
        power_cycles(20),
    ));
}

#[test]
fn power_cut_every_write_uring_group_writes() {
    check_power_in_flight(&crash_cycles(
        BackendKind::Uring,
        SyncMode::EveryWrite,
        Some(true),
        Entries::Small,
        Crash::Power,
        power_cycles(20),
    ));
}

#[test]
fn power_cut_interval_std() {
    check_power(&crash_cycles(
        BackendKind::Std,
        SyncMode::Interval,
        None,
        Entries::Small,
        Crash::Power,
        power_cycles(20),
    ));
}

#[test]
fn power_cut_interval_uring() {
    check_power(&crash_cycles(
        BackendKind::Uring,
        SyncMode::Interval,
        None,
        Entries::Small,
        Crash::Power,
        power_cycles(20),
    ));
}

/// Large entries: the run wrote batches into reserved (never-written) space, so
/// the checks above covered entries whose extent conversion their sync journaled.
fn check_unwritten(t: &Totals) {
    assert!(
        t.unwritten_batches > 0,
        "{} cycles of large entries wrote no batch into never-written space: the \
         reserve rule (docs/engine.md) was not exercised",
        t.cycles
    );
}

/// A run of large entries in `every_write` mode, checked like the others and
/// for batches written into unwritten space.
fn large_entries(backend: BackendKind, crash: Crash) {
    let cycles = match crash {
        Crash::Kill => cycles(20),
        Crash::Power => power_cycles(20),
    };
    let t = crash_cycles(
        backend,
        SyncMode::EveryWrite,
        None,
        Entries::Large,
        crash,
        cycles,
    );
    match crash {
        Crash::Kill => check(&t),
        Crash::Power => check_power(&t),
    }
    check_unwritten(&t);
}

#[test]
fn kill9_large_entries_every_write_std() {
    large_entries(BackendKind::Std, Crash::Kill);
}

#[test]
fn kill9_large_entries_every_write_uring() {
    large_entries(BackendKind::Uring, Crash::Kill);
}

#[test]
fn power_cut_large_entries_every_write_std() {
    large_entries(BackendKind::Std, Crash::Power);
}

#[test]
fn power_cut_large_entries_every_write_uring() {
    large_entries(BackendKind::Uring, Crash::Power);
}

/// Writes, with the writer's payloads of thread 0, the given (run, counter)
/// entries in order (sequences from 1), and closes the log.
fn write_log(dir: &Path, entries: &[(u64, u64)]) {
    let (wal, _) = Wal::open(
        dir,
        config(BackendKind::Std, SyncMode::EveryWrite, Entries::Small),
    )
    .unwrap();
    for &(run, counter) in entries {
        wal.append(
            "crash",
            0,
            bytes::Bytes::from(payload(run, 0, counter, false)),
        )
        .wait()
        .unwrap();
    }
    wal.close().unwrap();
}

/// What the checker knows after a child of run 2 that opened at 5 and had 5
/// acknowledged.
fn known_after_run_2() -> Known {
    Known {
        acked: [(5, (2, 0, 0))].into(),
        fresh: [5].into(),
        max_acked: 5,
        ..Known::default()
    }
}

const RUN_2: Child = Child { opened: 5, run: 2 };

/// The verification passes a log that is what the writers wrote, opened or
/// read (the control for the two tests after it).
#[test]
fn verify_accepts_the_runs_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), &[(1, 0), (1, 1), (1, 2), (1, 3), (2, 0)]);
    for read_only in [true, false] {
        let mut known = known_after_run_2();
        let v = verify(
            tmp.path(),
            BackendKind::Std,
            SyncMode::EveryWrite,
            Entries::Small,
            &mut known,
            false,
            RUN_2,
            read_only,
            "as written",
        );
        assert_eq!((v.lost, v.checked, v.next), (0, 1, 6));
        assert_eq!(known.recovered.len(), 5);
    }
}

/// A stale entry fails the verification: above where run 2's writer opened,
/// an entry of run 1 (what a recovery that chained from the new appends into
/// bytes an earlier run left past its cut would return), though sequences are
/// contiguous and run 1's thread counts on without a gap.
#[test]
#[should_panic(expected = "holds an entry of an older run")]
fn verify_rejects_an_older_runs_entry_above_the_childs_open() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(
        tmp.path(),
        &[(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (1, 4)],
    );
    verify(
        tmp.path(),
        BackendKind::Std,
        SyncMode::EveryWrite,
        Entries::Small,
        &mut known_after_run_2(),
        false,
        RUN_2,
        false,
        "stale",
    );
}

/// An entry an earlier recovery returned (durable since the open after it)
/// must come back, even where acknowledged entries may be lost.
#[test]
#[should_panic(expected = "recovered before and durable since")]
fn verify_rejects_losing_what_was_recovered_before() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), &[(1, 0), (1, 1), (1, 2)]);
    let mut known = Known {
        recovered: [(4, (1, 0, 3))].into(),
        ..Known::default()
    };
    verify(
        tmp.path(),
        BackendKind::Std,
        SyncMode::Interval,
        Entries::Small,
        &mut known,
        true,
        Child { opened: 5, run: 2 },
        true,
        "lost recovered",
    );
}
