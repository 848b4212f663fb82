//! Durability of the real broker binary under kill -9, SIGTERM and power cuts,
//! checked with confluent-kafka: every acknowledged message is back at its
//! acknowledged offset.

mod broker_support;
mod power_fs;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use broker_support::{
    client_script, kcat, kcat_from_start, python, python_client, records, signal, Broker, Starting,
};
use power_fs::{Cut, PowerFs};

const PARTITIONS: usize = 2;

/// Reads every partition from the beginning; asserts offsets are contiguous from 0.
fn read_all(addr: &str, topic: &str) -> BTreeMap<(i32, i64), String> {
    let text = python_client(
        "kafka_client.py",
        &["assign", addr, topic, &PARTITIONS.to_string()],
    );
    let msgs = records(&text, "MSG");
    let mut per_part: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, o, _) in &msgs {
        per_part.entry(*p).or_default().push(*o);
    }
    for (p, offs) in &per_part {
        assert_eq!(
            *offs,
            (0..offs.len() as i64).collect::<Vec<_>>(),
            "partition {p}: offsets contiguous from 0"
        );
    }
    msgs.into_iter().map(|(p, o, v)| ((p, o), v)).collect()
}

/// A confluent-kafka producer streaming acks=all produces to topic `crash`, its
/// output lines collected as they come.
struct Stream {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Stream {
    fn start(py: &str, addr: &str, prefix: &str, idempotent: bool) -> Stream {
        let partitions = PARTITIONS.to_string();
        Self::start_with(
            py,
            &["stream", addr, "crash", &partitions, prefix],
            &[("IDEMPOTENT", if idempotent { "1" } else { "0" })],
        )
    }

    /// The client script with `args`, and the environment variables `env`
    /// (the producer's settings: `IDEMPOTENT`, `BATCH_MESSAGES`).
    fn start_with(py: &str, args: &[&str], env: &[(&str, &str)]) -> Stream {
        let mut child = Command::new(py)
            .arg(client_script("kafka_client.py"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start producer");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&lines);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Stream {
            child,
            lines,
            reader,
        }
    }

    /// SIGKILLs the producer; everything it printed.
    fn kill(mut self) -> String {
        signal(self.child.id(), "KILL");
        let _ = self.child.wait();
        self.reader.join().unwrap();
        let text = self.lines.lock().unwrap().join("\n");
        text
    }
}

/// Streams acks=all produces until `acks` acknowledgements (or 15 s), SIGKILLs the
/// broker mid-stream, then the producer; returns the producer's output.
fn stream_then_kill9(broker: &mut Broker, py: &str, prefix: &str, acks: usize) -> String {
    stream_then(broker, py, prefix, acks, Broker::kill9)
}

/// Streams until `acks` acknowledgements (or 15 s), applies `stop` to the broker
/// mid-stream, then SIGKILLs the producer; returns the producer's output.
fn stream_then(
    broker: &mut Broker,
    py: &str,
    prefix: &str,
    acks: usize,
    stop: impl FnOnce(&mut Broker),
) -> String {
    let stream = Stream::start(py, &broker.addr, prefix, false);
    wait_then(broker, stream, acks, stop)
}

/// Waits for `acks` acknowledgements from `stream` (or 15 s), applies `stop` to
/// the broker, then SIGKILLs the producer; returns the producer's output.
fn wait_then(
    broker: &mut Broker,
    stream: Stream,
    acks: usize,
    stop: impl FnOnce(&mut Broker),
) -> String {
    let lines = Arc::clone(&stream.lines);
    let start = Instant::now();
    while lines.lock().unwrap().len() < acks && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(broker);
    std::thread::sleep(Duration::from_millis(200));
    stream.kill()
}

/// The last `n` lines of `text`.
fn log_tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every stored value is one the stream of a cycle up to `cycle` produced
/// (`c{cycle}-{n}`), and none is stored twice.
fn assert_produced_once<'a>(stored: impl IntoIterator<Item = &'a String>, cycle: usize) {
    let stored: Vec<&String> = stored.into_iter().collect();
    let values: BTreeSet<&String> = stored.iter().copied().collect();
    assert_eq!(
        values.len(),
        stored.len(),
        "cycle {cycle}: nothing stored twice"
    );
    for v in stored {
        let (prefix, n) = v.split_once('-').expect("well-formed value");
        assert!(
            prefix.starts_with('c')
                && prefix[1..].parse::<usize>().unwrap() <= cycle
                && n.parse::<u64>().is_ok(),
            "foreign bytes {v:?}"
        );
    }
}

/// The broker's last "replayed WAL" log line: what its recovery did.
fn replay_line(broker: &Broker) -> String {
    broker
        .log_text()
        .lines()
        .rfind(|l| l.contains("replayed WAL"))
        .expect("recovery logs its replay")
        .to_string()
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> u64 {
    let at = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len()
        + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn kill9_during_every_write_stream_keeps_every_acknowledged_message() {
    let tmp = tempfile::tempdir().unwrap();
    let py = python();
    let mut broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--wal-sync-mode",
            "every_write",
            "--default-partitions",
            &PARTITIONS.to_string(),
            "--checkpoint-ms",
            "300",
        ],
    );
    let mut acked: Vec<(i32, i64, String)> = Vec::new();
    let (mut replayed_entries, mut skipped_batches) = (0, 0);
    for cycle in 0..3 {
        let text = stream_then_kill9(&mut broker, &py, &format!("c{cycle}"), 400 + cycle * 100);
        let cycle_acks = records(&text, "ACK");
        assert!(
            cycle_acks.len() >= 100,
            "cycle {cycle}: the stream made progress ({} acks)",
            cycle_acks.len()
        );
        acked.extend(cycle_acks);

        broker = broker.restart();
        let replay = replay_line(&broker);
        replayed_entries += field(&replay, "entries");
        skipped_batches += field(&replay, "skipped");
        let stored = read_all(&broker.addr, "crash");
        assert_all_stored(&acked, &stored, &format!("cycle {cycle}:"));
        assert_produced_once(stored.values(), cycle);
    }
    // Recovery really replayed the WAL over segments that already held the data
    // (page cache survives kill -9), and skipped what was there: no duplicates above.
    assert!(
        replayed_entries > 0,
        "some acknowledged entries were past the last checkpoint"
    );
    assert!(
        skipped_batches > 0,
        "replay found batches already in the segments and skipped them"
    );
    // New produces continue right after the recovered end.
    let before = read_all(&broker.addr, "crash");
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS as i32)
        .map(|p| (p, before.keys().filter(|(bp, _)| *bp == p).count() as i64))
        .collect();
    let text = python_client(
        "kafka_client.py",
        &[
            "produce",
            &broker.addr,
            "crash",
            "4",
            &PARTITIONS.to_string(),
            "after",
        ],
    );
    let after = records(&text, "ACK");
    assert_eq!(after.len(), 4);
    for p in 0..PARTITIONS as i32 {
        let mut offs: Vec<i64> = after
            .iter()
            .filter(|(ap, _, _)| *ap == p)
            .map(|(_, o, _)| *o)
            .collect();
        offs.sort_unstable();
        assert_eq!(
            offs,
            vec![ends[&p], ends[&p] + 1],
            "partition {p} continues at the recovered end"
        );
    }
}

#[test]
fn sigterm_and_sigint_lose_nothing_in_interval_and_os_default_modes() {
    for (mode, sig) in [
        ("interval", "TERM"),
        ("os_default", "TERM"),
        ("interval", "INT"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut broker = Broker::start(
            &tmp.path().join("data"),
            &[
                "--wal-sync-mode",
                mode,
                "--default-partitions",
                &PARTITIONS.to_string(),
                "--checkpoint-ms",
                "60000",
            ],
        );
        let text = python_client(
            "kafka_client.py",
            &[
                "produce",
                &broker.addr,
                "graceful",
                "300",
                &PARTITIONS.to_string(),
                "g",
            ],
        );
        let acks = records(&text, "ACK");
        assert_eq!(acks.len(), 300, "{mode}: all acknowledged");
        let status = broker.stop_with(sig);
        assert!(
            status.success(),
            "{mode}: SIG{sig} exits 0, got {status:?}\n{}",
            broker.log_text()
        );
        let broker = broker.restart();
        // Without a power cut the page cache keeps everything either way:
        // what shows the shutdown synced and checkpointed is that the next
        // start has nothing to replay (a checkpoint every 60 s took none).
        let replay = replay_line(&broker);
        assert_eq!(
            field(&replay, "appended"),
            0,
            "{mode}: a clean shutdown leaves nothing to replay: {replay}"
        );
        let stored = read_all(&broker.addr, "graceful");
        assert_eq!(stored.len(), 300, "{mode}: nothing lost or duplicated");
        for (p, o, v) in &acks {
            assert_eq!(stored.get(&(*p, *o)), Some(v), "{mode}: {v} at {p}/{o}");
        }
    }
}

#[test]
fn kill9_then_torn_segment_tails_are_restored_from_the_wal() {
    // A process crash keeps what the WAL acknowledged in every mode (interval and
    // os_default acknowledge after the write reached the page cache).
    for mode in ["every_write", "interval"] {
        torn_tail_case(mode);
    }
}

fn torn_tail_case(mode: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let py = python();
    let data = tmp.path().join("data");
    // No periodic checkpoint: everything produced lives in the WAL past the checkpoint.
    let mut broker = Broker::start(
        &data,
        &[
            "--wal-sync-mode",
            mode,
            "--default-partitions",
            &PARTITIONS.to_string(),
            "--checkpoint-ms",
            "600000",
        ],
    );
    let acked = records(&stream_then_kill9(&mut broker, &py, "c0", 400), "ACK");
    assert!(
        acked.len() >= 100,
        "{mode}: the stream made progress ({} acks)",
        acked.len()
    );
    // Tear every partition's segment in the middle of a batch, as a crash could.
    for p in 0..PARTITIONS {
        let log = newest_segment(&data, p);
        let len = std::fs::metadata(&log).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(len / 2 + 7).unwrap();
    }
    let broker = broker.restart();
    let replay = replay_line(&broker);
    assert!(
        field(&replay, "appended") > 0,
        "the torn part came back from the WAL: {replay}"
    );
    let stored = read_all(&broker.addr, "crash");
    assert_all_stored(&acked, &stored, &format!("{mode}:"));
    let values: BTreeSet<&String> = stored.values().collect();
    assert_eq!(
        values.len(),
        stored.len(),
        "{mode}: no message stored twice"
    );
}

#[test]
fn sigterm_mid_stream_answers_in_flight_produces_and_keeps_them() {
    let tmp = tempfile::tempdir().unwrap();
    let py = python();
    let mut broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--wal-sync-mode",
            "interval",
            "--default-partitions",
            &PARTITIONS.to_string(),
        ],
    );
    let text = stream_then(&mut broker, &py, "t0", 400, |b| {
        let status = b.sigterm();
        assert!(
            status.success(),
            "SIGTERM under load exits 0, got {status:?}"
        );
    });
    let acked = records(&text, "ACK");
    assert!(
        acked.len() >= 100,
        "the stream made progress ({} acks)",
        acked.len()
    );
    let broker = broker.restart();
    let stored = read_all(&broker.addr, "crash");
    assert_all_stored(&acked, &stored, "");
    let replay = replay_line(&broker);
    assert_eq!(
        field(&replay, "appended"),
        0,
        "a clean shutdown leaves nothing to replay: {replay}"
    );
}

/// A SIGTERM mid-stream answers every Produce the broker read: connections
/// pipelining single-record produces (none waiting for its answer) see their
/// answers in order, each without error, up to the close; after a restart
/// exactly the records of the answered requests are stored, each at its
/// answered offset. A record stored without its answer is a Produce read and
/// written but dropped unanswered (a client retries it into a duplicate).
#[test]
fn sigterm_answers_every_pipelined_produce_it_stored() {
    use broker_support::wire;
    use kafka_protocol::{
        messages::{ApiKey, ProduceResponse, ResponseHeader},
        protocol::Decodable,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};
    const CONNECTIONS: usize = 4;
    const REQUESTS: i32 = 50_000;
    const VERSION: i16 = 8;
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("data"), &["--default-partitions", "1"]);
    let mut c = wire::connect(&broker.addr);
    assert_eq!(
        wire::topic_metadata(&mut c, "drain", true),
        0,
        "topic created"
    );
    drop(c);
    let answered = Arc::new(AtomicUsize::new(0));
    let streams: Vec<_> = (0..CONNECTIONS)
        .map(|conn| {
            let mut reader = wire::connect(&broker.addr);
            let mut writer = reader.try_clone().unwrap();
            // As a client does, the sender stops once the answers end.
            let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop_sending = Arc::clone(&ended);
            let sender = std::thread::spawn(move || {
                for cid in 0..REQUESTS {
                    if stop_sending.load(Ordering::Relaxed) {
                        return cid;
                    }
                    let value = format!("s{conn}-{cid}");
                    let req = wire::produce("drain", 0, wire::batch(&[value.as_str()]));
                    let frame = wire::request_frame(ApiKey::Produce, VERSION, cid, &req);
                    // The broker closes the connection at its stop.
                    if writer.write_all(&frame).is_err() {
                        return cid;
                    }
                }
                REQUESTS
            });
            let answered = Arc::clone(&answered);
            let receiver = std::thread::spawn(move || {
                let mut answers = Vec::new();
                while let Some(mut frame) = wire::read_frame(&mut reader) {
                    let h = ResponseHeader::decode(
                        &mut frame,
                        ApiKey::Produce.response_header_version(VERSION),
                    )
                    .unwrap();
                    let r = ProduceResponse::decode(&mut frame, VERSION).unwrap();
                    let (error, offset) = wire::partition_result(&r);
                    answers.push((h.correlation_id, error, offset));
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                ended.store(true, Ordering::Relaxed);
                answers
            });
            (conn, sender, receiver)
        })
        .collect();
    let start = Instant::now();
    while answered.load(Ordering::Relaxed) < 2_000 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = broker.sigterm();
    assert!(
        status.success(),
        "SIGTERM under load exits 0, got {status:?}"
    );
    let mut expected = BTreeMap::new();
    for (conn, sender, receiver) in streams {
        let sent = sender.join().unwrap();
        let answers = receiver.join().unwrap();
        assert!(
            sent < REQUESTS,
            "connection {conn}: the stop came before the last of its {REQUESTS} requests"
        );
        for (i, &(cid, error, offset)) in answers.iter().enumerate() {
            assert_eq!(
                (cid, error),
                (i as i32, 0),
                "connection {conn}: answers in order and without error"
            );
            expected.insert(offset, format!("s{conn}-{cid}"));
        }
    }
    assert!(
        expected.len() >= 2_000,
        "the stream made progress ({} answers)",
        expected.len()
    );
    let broker = broker.restart();
    let stored: BTreeMap<i64, String> = kcat_from_start(&broker.addr, "drain", Some(0))
        .into_iter()
        .collect();
    let unanswered: Vec<_> = stored
        .iter()
        .filter(|(o, v)| expected.get(o) != Some(v))
        .take(5)
        .collect();
    let lost: Vec<_> = expected
        .iter()
        .filter(|(o, v)| stored.get(o) != Some(v))
        .take(5)
        .collect();
    assert!(
        unanswered.is_empty() && lost.is_empty() && stored.len() == expected.len(),
        "{} stored, {} answered; stored but not answered (first 5): {unanswered:?}; answered but not stored: {lost:?}",
        stored.len(),
        expected.len()
    );
}

/// Holds the next start of the broker on `data` inside recovery: its first
/// read there, of `meta.json`, is made of a named pipe that the test feeds.
/// Returns the file's bytes, to feed or put back.
fn hold_recovery(data: &std::path::Path) -> Vec<u8> {
    let meta = data.join("meta.json");
    let bytes = std::fs::read(&meta).expect("meta.json of the first start");
    std::fs::remove_file(&meta).unwrap();
    let c = std::ffi::CString::new(meta.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    bytes
}

/// The write end of the pipe [`hold_recovery`] made, once the broker `starting`
/// opened it to read: from then on until the pipe is fed and closed, it is in
/// recovery.
fn in_recovery(data: &std::path::Path, starting: &Starting) -> std::fs::File {
    read_by(&data.join("meta.json"), starting)
}

/// The write end of the named pipe `fifo`, once the broker `starting` opened
/// it to read (it waits on it until the pipe is fed and closed).
fn read_by(fifo: &std::path::Path, starting: &Starting) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Without a reader, a non-blocking open for writing fails (ENXIO).
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
        {
            Ok(f) => return f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!(
                "the broker never read {} ({e}); log:\n{}",
                fifo.display(),
                starting.log_text()
            ),
        }
    }
}

/// Sends `sig` to the broker `starting` and waits (up to 10 s) for its log to
/// show `line`; fails when the process died instead.
fn signal_and_see(starting: &mut Starting, sig: &str, line: &str) {
    signal(starting.pid(), sig);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !starting.log_text().contains(line) {
        assert!(
            starting.running(),
            "SIG{sig} during recovery ended the broker; log:\n{}",
            starting.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "no {line:?} within 10 s of SIG{sig}; log:\n{}",
            starting.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Produces `n` messages `{prefix}-{i}` to `topic` with kcat, acks=all.
fn produce(addr: &str, topic: &str, prefix: &str, n: usize) -> Vec<String> {
    let msgs: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let input: String = msgs.iter().map(|m| format!("{m}\n")).collect();
    kcat(
        &["-P", "-b", addr, "-t", topic, "-X", "acks=all"],
        input.as_bytes(),
    );
    msgs
}

fn values(addr: &str, topic: &str) -> Vec<String> {
    kcat_from_start(addr, topic, None)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

/// SIGHUP reloads the TLS material and SASL users and never stops the broker:
/// during recovery (held here on a named pipe) neither, and the broker then
/// serves.
#[test]
fn sighup_during_recovery_leaves_the_broker_to_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let sent = produce(&broker.addr, "held", "hup", 20);
    broker.kill9();
    let meta = hold_recovery(&data);
    let mut starting = broker.relaunch();
    let mut pipe = in_recovery(&data, &starting);
    signal_and_see(&mut starting, "HUP", "SIGHUP");
    pipe.write_all(&meta).unwrap();
    drop(pipe);
    let broker = starting
        .listening()
        .unwrap_or_else(|log| panic!("no start after a SIGHUP during recovery; log:\n{log}"));
    assert_eq!(values(&broker.addr, "held"), sent);
}

/// A broker in `data` that acknowledged 20 messages to topic "held", killed,
/// started again with its recovery held (see [`hold_recovery`]) and sent
/// SIG`sig`, which it has logged: the killed broker (for its log and
/// restarts), what was sent, the held `meta.json`, the starting process, and
/// the pipe that lets recovery go on.
fn signalled_in_recovery(
    data: &std::path::Path,
    sig: &str,
) -> (Broker, Vec<String>, Vec<u8>, Starting, std::fs::File) {
    let mut broker = Broker::start(data, &["--wal-sync-mode", "every_write"]);
    let sent = produce(&broker.addr, "held", sig, 20);
    // Killed: the next start has the WAL to replay.
    broker.kill9();
    let meta = hold_recovery(data);
    let mut starting = broker.relaunch();
    let pipe = in_recovery(data, &starting);
    signal_and_see(&mut starting, sig, "stopping once recovery is over");
    (broker, sent, meta, starting, pipe)
}

/// SIGTERM or SIGINT during recovery: recovery goes on to its end (what it
/// replayed from the WAL is flushed), then the broker exits 0 without serving.
#[test]
fn sigterm_or_sigint_during_recovery_stops_cleanly_without_serving() {
    for sig in ["TERM", "INT"] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let (broker, sent, meta, starting, mut pipe) = signalled_in_recovery(&data, sig);
        pipe.write_all(&meta).unwrap();
        drop(pipe);
        let (status, listened) = starting.exit();
        let log = broker.log_text();
        assert!(
            status.success(),
            "SIG{sig} during recovery: exit 0, got {status:?}; log:\n{log}"
        );
        assert!(!listened, "SIG{sig} during recovery: nothing served");
        assert!(
            log.contains("shut down cleanly after recovery, without serving"),
            "SIG{sig}: {log}"
        );
        std::fs::remove_file(data.join("meta.json")).unwrap();
        std::fs::write(data.join("meta.json"), &meta).unwrap();
        let broker = broker.restart();
        assert_eq!(values(&broker.addr, "held"), sent, "SIG{sig}");
        let replay = replay_line(&broker);
        assert_eq!(
            field(&replay, "appended"),
            0,
            "SIG{sig}: what recovery replayed was flushed before the exit: {replay}"
        );
    }
}

/// SIGTERM while the groups' membership loads, after recovery (held here on a
/// named pipe in place of a group's membership file): the broker stops once
/// the load is over, without serving, and exits 0. Before, the signal was
/// neither logged nor acted on until the broker served.
#[test]
fn sigterm_during_the_group_load_stops_cleanly_without_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let sent = produce(&broker.addr, "held", "load", 20);
    assert!(broker.sigterm().success());
    // "gh", as the store names a group's file.
    let fifo = data.join("groups").join("members").join("6768.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let mut starting = broker.relaunch();
    let mut pipe = read_by(&fifo, &starting);
    signal_and_see(
        &mut starting,
        "TERM",
        "stopping once the server is set up, without serving",
    );
    pipe.write_all(b"not a membership file").unwrap();
    drop(pipe);
    let (status, listened) = starting.exit();
    let log = broker.log_text();
    assert!(status.success(), "exit 0, got {status:?}; log:\n{log}");
    assert!(!listened, "nothing served; log:\n{log}");
    assert!(log.contains("shut down cleanly before serving"), "{log}");
    std::fs::remove_file(&fifo).unwrap();
    let broker = broker.restart();
    assert_eq!(values(&broker.addr, "held"), sent);
}

/// A second SIGTERM or SIGINT ends the broker at once, with 143 or 130, where
/// the first waits for the rest of the shutdown (here a recovery held on a
/// named pipe, which never ends by itself); nothing acknowledged is lost, for
/// the next start recovers it. Before, every signal after the first was
/// absorbed, and only SIGKILL ended a long recovery or final sync.
#[test]
fn a_second_stop_signal_exits_at_once() {
    for (sig, code) in [("TERM", 143), ("INT", 130)] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let (broker, sent, meta, starting, pipe) = signalled_in_recovery(&data, sig);
        let second = Instant::now();
        signal(starting.pid(), sig);
        let (status, listened) = starting.exit();
        let took = second.elapsed();
        let log = broker.log_text();
        assert_eq!(
            status.code(),
            Some(code),
            "a second SIG{sig}: {status:?}; log:\n{log}"
        );
        assert!(
            took < Duration::from_secs(5),
            "a second SIG{sig} ended the broker only after {took:?}; log:\n{log}"
        );
        assert!(!listened, "SIG{sig}: nothing served");
        assert!(log.contains("second stop signal"), "SIG{sig}: {log}");
        drop(pipe);
        std::fs::remove_file(data.join("meta.json")).unwrap();
        std::fs::write(data.join("meta.json"), &meta).unwrap();
        let broker = broker.restart();
        assert_eq!(values(&broker.addr, "held"), sent, "SIG{sig}");
    }
}

/// Every acknowledged `(partition, offset, value)` is stored at its offset.
fn assert_all_stored(
    acked: &[(i32, i64, String)],
    stored: &BTreeMap<(i32, i64), String>,
    what: &str,
) {
    for (p, o, v) in acked {
        assert_eq!(
            stored.get(&(*p, *o)),
            Some(v),
            "{what} acknowledged {v} must be at {p}/{o}"
        );
    }
}

/// The newest `.log` file of partition `p` of topic `crash`.
fn newest_segment(data: &std::path::Path, p: usize) -> std::path::PathBuf {
    let dir = data.join("topics/crash").join(p.to_string());
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap()
}

/// Flips one bit at byte `at` of `path` (the batch holding it then fails its CRC).
fn flip(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
}

#[test]
fn flushed_segment_batches_damaged_on_disk_come_back_from_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let py = python();
    let data = tmp.path().join("data");
    let mut broker = Broker::start(
        &data,
        &[
            "--wal-sync-mode",
            "every_write",
            "--default-partitions",
            &PARTITIONS.to_string(),
        ],
    );
    // SIGTERM flushes the segments and checkpoints: the WAL replays nothing
    // after it, and only the recovery points show what the segments held.
    let acked = records(
        &stream_then(&mut broker, &py, "d0", 300, |b| {
            assert!(b.sigterm().success());
        }),
        "ACK",
    );
    assert!(acked.len() >= 100, "progress: {} acks", acked.len());
    for p in 0..PARTITIONS {
        let log = newest_segment(&data, p);
        flip(&log, std::fs::metadata(&log).unwrap().len() / 3);
    }
    let broker = broker.restart();
    let log = broker.log_text();
    assert!(
        log.contains("rebuilt them from the WAL"),
        "the damage was noticed and repaired: {log}"
    );
    let stored = read_all(&broker.addr, "crash");
    assert_all_stored(&acked, &stored, "");
}

#[test]
fn flushed_batches_the_wal_no_longer_holds_stop_the_start_unless_tolerated() {
    let tmp = tempfile::tempdir().unwrap();
    let py = python();
    let data = tmp.path().join("data");
    // Small WAL files, none kept after a checkpoint: the first batches' entries
    // are gone from the WAL once the stream has rotated a few times.
    let args = [
        "--wal-sync-mode",
        "every_write",
        "--default-partitions",
        &PARTITIONS.to_string(),
        "--wal-max-file-size",
        "64k",
        "--wal-retention-files",
        "0",
        "--checkpoint-ms",
        "100",
    ];
    let mut broker = Broker::start(&data, &args);
    // ~60 messages per produce, each produce a 4 KiB WAL batch: 50,000 messages
    // rotate through ~50 files.
    let acked = records(
        &stream_then(&mut broker, &py, "e0", 50_000, |b| {
            assert!(b.sigterm().success());
        }),
        "ACK",
    );
    assert!(acked.len() >= 100, "progress: {} acks", acked.len());
    let log = newest_segment(&data, 0);
    assert!(
        log.ends_with("00000000000000000000.log"),
        "one segment: {}",
        log.display()
    );
    // The last byte of the first batch (its length field is at bytes 8..12).
    let raw = std::fs::read(&log).unwrap();
    let first_len = 12 + u64::from(u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]));
    flip(&log, first_len - 1);

    let mut cmd = Command::new(broker_support::broker_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(args)
        .env("STREAMLINE_LOG", "info");
    let out = broker_support::run(&mut cmd, b"", Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a strict start refuses: {err}");
    assert!(
        err.contains(&log.display().to_string())
            && err.contains("offsets 0..")
            && err.contains("--recovery-mode tolerate_corruption"),
        "the error names the segment, the lost offsets and the way out: {err}"
    );

    let mut tolerant: Vec<&str> = args.to_vec();
    tolerant.extend(["--recovery-mode", "tolerate_corruption"]);
    let broker = Broker::start(&data, &tolerant);
    assert!(
        broker.log_text().contains("continuing without them"),
        "{}",
        broker.log_text()
    );
    // Partition 1 was not damaged: every acknowledged message of it is there.
    let text = python_client(
        "kafka_client.py",
        &["assign", &broker.addr, "crash", &PARTITIONS.to_string()],
    );
    let stored: BTreeMap<(i32, i64), String> = records(&text, "MSG")
        .into_iter()
        .map(|(p, o, v)| ((p, o), v))
        .collect();
    for (p, o, v) in acked.iter().filter(|(p, _, _)| *p == 1) {
        assert_eq!(stored.get(&(*p, *o)), Some(v), "{p}/{o}");
    }
}

#[test]
fn idempotent_producer_continues_its_sequences_across_kill9_and_stores_every_message_once() {
    let tmp = tempfile::tempdir().unwrap();
    let py = python();
    let data = tmp.path().join("data");
    // A fixed port, so the producer finds the restarted broker where it left it.
    let mut broker = Broker::start_fixed_port(
        &data,
        &[
            "--wal-sync-mode",
            "every_write",
            "--default-partitions",
            &PARTITIONS.to_string(),
        ],
    );
    let listen = broker.addr.clone();
    let stream = Stream::start(&py, &listen, "i0", true);
    let lines = Arc::clone(&stream.lines);
    let wait_for = |n: usize| {
        let start = Instant::now();
        while lines.lock().unwrap().len() < n && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        lines.lock().unwrap().len()
    };
    // Killed mid-stream: the producer keeps its producer id and goes on with the
    // next sequence numbers (retrying what was in flight) against the restarted
    // broker, which rebuilt each producer's last sequences from the segments and
    // the WAL; a wrong rebuild answers OUT_OF_ORDER_SEQUENCE_NUMBER, which fails
    // the messages.
    wait_for(3000);
    broker.kill9();
    let broker = broker.restart_same_port();
    // What the restarted broker holds; then wait until it has acknowledged 2,000
    // messages beyond that, appended by the producer after the restart.
    let mut high: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o) in read_all(&broker.addr, "crash").keys() {
        let h = high.entry(*p).or_insert(-1);
        *h = (*h).max(*o);
    }
    let start = Instant::now();
    loop {
        let text = lines.lock().unwrap().join("\n");
        let beyond = records(&text, "ACK")
            .iter()
            .filter(|(p, o, _)| *o > high.get(p).copied().unwrap_or(-1))
            .count();
        if beyond >= 2000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the producer did not go on after the restart ({beyond} new acks):\n{}",
            text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = stream.kill();
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("ERR")).collect();
    assert!(errors.is_empty(), "delivery errors: {errors:?}");
    let acked = records(&text, "ACK");
    let stored = read_all(&broker.addr, "crash");
    assert_all_stored(&acked, &stored, "");
    let mut seen = BTreeSet::new();
    for ((p, o), v) in &stored {
        assert!(seen.insert(v), "{v} stored twice (again at {p}/{o})");
    }
    // The producer never had to start over with a new producer id (which it does
    // when the broker refuses its sequence).
    let inits = broker.log_text().matches("new idempotent producer").count();
    assert_eq!(inits, 1, "{}", broker.log_text());
}

/// Partition `p` of `topic`'s log start: what ListOffsets answers for the
/// earliest offset.
fn earliest(addr: &str, topic: &str, p: i32) -> i64 {
    use broker_support::wire;
    use kafka_protocol::{
        messages::{
            list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
            ApiKey, BrokerId, ListOffsetsRequest, ListOffsetsResponse, TopicName,
        },
        protocol::StrBytes,
    };
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(p)
                .with_timestamp(-2)])]);
    let mut s = wire::connect(addr);
    s.write_all(&wire::request_frame(ApiKey::ListOffsets, 7, 1, &req))
        .unwrap();
    let (_, r): (i32, ListOffsetsResponse) = wire::response(&mut s, ApiKey::ListOffsets, 7);
    let part = &r.topics[0].partitions[0];
    assert_eq!(part.error_code, 0, "ListOffsets of {topic}/{p}");
    part.offset
}

/// Partition `p` of `topic`'s log start ([`earliest`]) and the bytes of the
/// record batches it serves from there to its end, fetched raw. Segments hold
/// the batches as they are served, so this is the size of the segments the
/// partition keeps, less the batches below a log start that DeleteRecords
/// moved into a segment. A log start that retention moves between the two
/// requests is asked for again.
fn served_bytes(addr: &str, topic: &str, p: i32) -> (i64, u64) {
    use broker_support::wire;
    use kafka_protocol::messages::{ApiKey, FetchResponse};
    const OFFSET_OUT_OF_RANGE: i16 = 1;
    let mut cid = 0;
    'again: for _ in 0..20 {
        let start = earliest(addr, topic, p);
        let mut s = wire::connect(addr);
        let (mut offset, mut bytes) = (start, 0u64);
        loop {
            let mut req = wire::fetch_request(topic, offset, 0);
            req.topics[0].partitions[0].partition = p;
            cid += 1;
            s.write_all(&wire::request_frame(ApiKey::Fetch, 12, cid, &req))
                .unwrap();
            let (_, r): (i32, FetchResponse) = wire::response(&mut s, ApiKey::Fetch, 12);
            let part = &r.responses[0].partitions[0];
            if part.error_code == OFFSET_OUT_OF_RANGE {
                std::thread::sleep(Duration::from_millis(100));
                continue 'again;
            }
            assert_eq!(part.error_code, 0, "Fetch of {topic}/{p} at {offset}");
            let records = part.records.clone().unwrap_or_default();
            // Whole batches only: base offset (8 bytes), length (4), and the
            // last offset delta at byte 23; a batch cut short by the size
            // limit is fetched again whole by the next request.
            let mut at = 0;
            while at + 27 <= records.len() {
                let word = |i: usize| <[u8; 4]>::try_from(&records[at + i..at + i + 4]).unwrap();
                let len = 12 + i32::from_be_bytes(word(8)) as usize;
                if at + len > records.len() {
                    break;
                }
                let base = i64::from_be_bytes(records[at..at + 8].try_into().unwrap());
                offset = base + i64::from(i32::from_be_bytes(word(23))) + 1;
                bytes += len as u64;
                at += len;
            }
            if offset >= part.high_watermark {
                return (start, bytes);
            }
            assert!(
                at > 0,
                "Fetch of {topic}/{p} at {offset} below the high watermark {} returned no whole batch",
                part.high_watermark
            );
        }
    }
    panic!("the log start of {topic}/{p} kept moving away from Fetch");
}

/// The fewest bytes a record holding `value` (no key, no headers) takes in a
/// batch: its length, attributes, timestamp delta, offset delta, key length,
/// value length and header count take at least a byte each.
fn least_record_bytes(value: &str) -> u64 {
    7 + value.len() as u64
}

/// Retention trims (the active segment too) and DeleteRecords move the log start
/// while a producer streams and the broker is killed: what remains is contiguous
/// from the log start, every acknowledged message at or above it is at its offset,
/// and nothing appears that was not produced. The log start is itself checked:
/// retention deletes a segment only when the segments left hold at least
/// `retention.bytes`, so each partition serves at least that much from its log
/// start after every restart (or all it held above its DeleteRecords floor, when
/// that was less). A restart that drops older segments, or loads a log start too
/// high, serves less.
#[test]
fn kill9_while_retention_and_delete_records_trim_keeps_the_tail_exact() {
    const RETENTION_BYTES: u64 = 4096;
    let tmp = tempfile::tempdir().unwrap();
    let py = python();
    let mut broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--wal-sync-mode",
            "every_write",
            "--default-partitions",
            &PARTITIONS.to_string(),
            "--segment-bytes",
            "4096",
            "--log-retention-bytes",
            &RETENTION_BYTES.to_string(),
            "--log-retention-check-interval-ms",
            "50",
            "--checkpoint-ms",
            "100",
        ],
    );
    let mut acked: Vec<(i32, i64, String)> = Vec::new();
    let mut deleted_below = 0;
    for cycle in 0..3 {
        // Batches of at most 20 messages: a loaded machine lets librdkafka
        // gather a partition's messages into a few large batches, and a
        // partition of one or two segments has nothing retention may delete
        // (it keeps 4096 bytes), which the checks below need.
        let stream = Stream::start_with(
            &py,
            &[
                "stream",
                &broker.addr,
                "crash",
                &PARTITIONS.to_string(),
                &format!("c{cycle}"),
            ],
            &[("BATCH_MESSAGES", "20")],
        );
        let text = wait_then(&mut broker, stream, 3000, Broker::kill9);
        let cycle_acks = records(&text, "ACK");
        assert!(
            cycle_acks.len() >= 100,
            "cycle {cycle}: {} acks",
            cycle_acks.len()
        );
        acked.extend(cycle_acks);
        broker = broker.restart();
        // Retention passes run every 50 ms: read until each partition's log start
        // has moved (for up to 30 s).
        let deadline = Instant::now() + Duration::from_secs(30);
        let reads = loop {
            let reads: Vec<Vec<(i64, String)>> = (0..PARTITIONS as i32)
                .map(|p| kcat_from_start(&broker.addr, "crash", Some(p)))
                .collect();
            let starts: Vec<Option<i64>> = reads.iter().map(|r| r.first().map(|f| f.0)).collect();
            if starts.iter().all(|s| s.is_some_and(|s| s > 0)) {
                break reads;
            }
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: retention deleted nothing within 30 s (log starts {starts:?}); the broker's log ends:\n{}",
                log_tail(&broker.log_text(), 20)
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        for (p, read) in (0..).zip(reads) {
            let (start, _) = *read.first().expect("the newest records are kept");
            let offsets: Vec<i64> = read.iter().map(|r| r.0).collect();
            assert_eq!(
                offsets,
                (start..start + read.len() as i64).collect::<Vec<_>>(),
                "cycle {cycle} partition {p}: contiguous from the log start"
            );
            let end = start + read.len() as i64;
            let mine: Vec<&(i32, i64, String)> = acked.iter().filter(|a| a.0 == p).collect();
            let max_acked = mine.iter().map(|a| a.1).max().unwrap();
            assert!(
                end > max_acked,
                "cycle {cycle} partition {p}: end {end} <= {max_acked}"
            );
            if p == 0 {
                assert!(start >= deleted_below, "the log start never goes back");
            }
            // Every message acknowledged at or above the DeleteRecords floor
            // was written there, so the partition held at least these bytes
            // above it; retention may take them down to `retention.bytes`,
            // and no further.
            let floor = if p == 0 { deleted_below } else { 0 };
            let held: u64 = mine
                .iter()
                .filter(|a| a.1 >= floor)
                .map(|a| least_record_bytes(&a.2))
                .sum();
            let (log_start, served) = served_bytes(&broker.addr, "crash", p);
            assert!(
                served >= held.min(RETENTION_BYTES),
                "cycle {cycle} partition {p}: {served} bytes served from the log start {log_start} \
                 (read from {start}), below retention.bytes {RETENTION_BYTES} and the {held} \
                 bytes acknowledged from offset {floor} on; the broker's log ends:\n{}",
                log_tail(&broker.log_text(), 20)
            );
            let stored: BTreeMap<i64, &String> = read.iter().map(|(o, v)| (*o, v)).collect();
            for (_, o, v) in mine.iter().filter(|a| a.1 >= start) {
                assert_eq!(
                    stored.get(o),
                    Some(&v),
                    "cycle {cycle}: acknowledged {v} at {p}/{o}"
                );
            }
            assert_produced_once(stored.values().copied(), cycle);
        }
        // DeleteRecords on partition 0, up to everything readable.
        let out = python_client(
            "kafka_client.py",
            &["delete-records", &broker.addr, "crash", "0", "-1"],
        );
        let low: i64 = out
            .trim()
            .strip_prefix("DELETED crash 0 ")
            .unwrap_or_else(|| panic!("{out}"))
            .parse()
            .unwrap();
        assert!(low >= deleted_below);
        deleted_below = low;
    }
}

/// Compaction rewrites segments every 50 ms while a producer streams keyed
/// messages and the broker is killed: after each restart the log holds, for every
/// key, its newest acknowledged message or a newer one, every acknowledged
/// message still stored is at its offset, and nothing appears that was not
/// produced.
#[test]
fn kill9_while_compacting_keeps_every_keys_newest_acknowledged_message() {
    const KEYS: usize = 20;
    let tmp = tempfile::tempdir().unwrap();
    let py = python();
    let mut broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--wal-sync-mode",
            "every_write",
            "--log-cleaner-backoff-ms",
            "50",
            "--checkpoint-ms",
            "100",
        ],
    );
    let out = python_client(
        "kafka_client.py",
        &[
            "create-with-configs",
            &broker.addr,
            "keys",
            "cleanup.policy=compact",
            "segment.bytes=4096",
            "min.cleanable.dirty.ratio=0.01",
        ],
    );
    assert_eq!(out.trim(), "CREATED keys");
    let key_of = |v: &str| -> usize {
        let (_, n) = v.split_once('-').expect("well-formed value");
        n.parse::<usize>().expect("a number") % KEYS
    };
    let mut acked: Vec<(i64, String)> = Vec::new();
    for cycle in 0..3 {
        let prefix = format!("c{cycle}");
        let stream = Stream::start_with(
            &py,
            &[
                "stream-keyed",
                &broker.addr,
                "keys",
                &KEYS.to_string(),
                &prefix,
            ],
            // Many small batches, so many segments to compact (the active one
            // is not): see the retention test above.
            &[("BATCH_MESSAGES", "20")],
        );
        let text = wait_then(&mut broker, stream, 3000, Broker::kill9);
        let cycle_acks: Vec<(i64, String)> = records(&text, "ACK")
            .into_iter()
            .map(|(_, o, v)| (o, v))
            .collect();
        assert!(
            cycle_acks.len() >= 100,
            "cycle {cycle}: {} acks",
            cycle_acks.len()
        );
        acked.extend(cycle_acks);
        broker = broker.restart();
        // Passes over the whole log (every segment is new to the restarted broker)
        // run every 50 ms: read until they have compacted it (for up to 30 s).
        let deadline = Instant::now() + Duration::from_secs(30);
        let read = loop {
            let read = kcat_from_start(&broker.addr, "keys", Some(0));
            if read.len() * 2 < acked.len() {
                break read;
            }
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: not compacted within 30 s ({} of {} kept)",
                read.len(),
                acked.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let offsets: Vec<i64> = read.iter().map(|r| r.0).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "cycle {cycle}: in order"
        );
        let stored: BTreeMap<i64, &String> = read.iter().map(|(o, v)| (*o, v)).collect();
        assert_produced_once(stored.values().copied(), cycle);
        for (o, v) in &acked {
            if let Some(s) = stored.get(o) {
                assert_eq!(s, &v, "cycle {cycle}: acknowledged {v} at {o}");
            }
        }
        let mut newest = [None::<i64>; KEYS];
        for (o, v) in &acked {
            let k = key_of(v);
            newest[k] = newest[k].max(Some(*o));
        }
        for (k, n) in newest.iter().enumerate() {
            let Some(n) = n else { continue };
            assert!(
                stored.iter().any(|(o, v)| o >= n && key_of(v) == k),
                "cycle {cycle}: key k{k} lost its newest acknowledged message (offset {n})"
            );
        }
    }
}

/// The power cut under the broker (`tests/power_fs`): its data directory on ext4
/// over a device with a volatile write cache. Each cycle streams acks=all
/// produces in `every_write` mode, cuts the power mid-stream (the unflushed
/// writes kept, dropped or torn at 512-byte sectors: each fate once, in a
/// random order), kills the broker, mounts the file system again from what the
/// device holds and restarts on it. Every acknowledged message must be back at
/// its offset (the WAL, the segments, the topic's metadata all came through the
/// cut), nothing stored twice, nothing unproduced.
#[test]
fn power_cut_during_every_write_stream_keeps_every_acknowledged_message() {
    let fs = PowerFs::new(256);
    let py = python();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("power cut seed {seed}");
    let mut cuts = [Cut::Keep, Cut::Drop, Cut::Torn];
    cuts.rotate_left((seed % 3) as usize);
    if seed & 4 != 0 {
        cuts.swap(0, 1);
    }
    let mut broker = Broker::start(
        &fs.path().join("data"),
        &[
            "--wal-sync-mode",
            "every_write",
            "--default-partitions",
            &PARTITIONS.to_string(),
            "--checkpoint-ms",
            "300",
            // Small files: every preallocated byte goes through the daemon.
            "--wal-max-file-size",
            "4194304",
            "--segment-bytes",
            "1048576",
        ],
    );
    let mut acked: Vec<(i32, i64, String)> = Vec::new();
    let (mut changed, mut restored) = (0, 0);
    for (cycle, cut) in cuts.into_iter().enumerate() {
        let mut report = None;
        let text = stream_then(&mut broker, &py, &format!("c{cycle}"), 300, |b| {
            // Cut under a running broker: one that crashed by itself before
            // would recover its acknowledged messages and pass.
            b.assert_running();
            report = Some(fs.cut(cut, seed.wrapping_add(cycle as u64)));
            // The broker may have stopped by itself on its failing writes.
            b.kill9_or_reap();
        });
        let report = report.unwrap();
        if cut == Cut::Keep {
            assert_eq!(
                report.changed, 0,
                "cycle {cycle}: a keep cut changed sectors"
            );
        }
        changed += report.changed;
        let cycle_acks = records(&text, "ACK");
        assert!(
            cycle_acks.len() >= 50,
            "cycle {cycle}: the stream made progress ({} acks)",
            cycle_acks.len()
        );
        acked.extend(cycle_acks);
        fs.power_on();
        broker = broker.restart();
        restored += field(&replay_line(&broker), "appended");
        let stored = read_all(&broker.addr, "crash");
        let what = format!("cycle {cycle} (seed {seed}, {cut:?} cut, {report:?}):");
        assert_all_stored(&acked, &stored, &what);
        assert_produced_once(stored.values(), cycle);
    }
    eprintln!(
        "power cut: 3 cycles acknowledged {} restored-from-wal {restored} sectors-cut {changed}",
        acked.len()
    );
    // The cuts destroyed acknowledged data the segments held only in ext4's
    // page cache (they sync at checkpoints), and recovery appended it back from
    // the WAL: a cut that destroyed nothing would prove nothing.
    assert!(
        restored > 0,
        "no recovery restored a batch the segments lost at the cut"
    );
    drop(broker);
}
