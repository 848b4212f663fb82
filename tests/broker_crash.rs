//! Durability of the real broker binary under kill -9 and SIGTERM, checked with
//! confluent-kafka: every acknowledged message is back at its acknowledged offset.

mod broker_support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use broker_support::{client_script, python, python_client, records, signal, Broker};

const PARTITIONS: usize = 2;

/// Reads every partition from the beginning; asserts offsets are contiguous from 0.
fn read_all(addr: &str, topic: &str) -> BTreeMap<(i32, i64), String> {
    let text = python_client("kafka_client.py", &["assign", addr, topic, &PARTITIONS.to_string()]);
    let msgs = records(&text, "MSG");
    let mut per_part: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, o, _) in &msgs {
        per_part.entry(*p).or_default().push(*o);
    }
    for (p, offs) in &per_part {
        assert_eq!(*offs, (0..offs.len() as i64).collect::<Vec<_>>(), "partition {p}: offsets contiguous from 0");
    }
    msgs.into_iter().map(|(p, o, v)| ((p, o), v)).collect()
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> u64 {
    let at = line.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name} in {line}")) + name.len() + 2;
    line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[test]
fn kill9_during_every_write_stream_keeps_every_acknowledged_message() {
    let tmp = tempfile::tempdir().unwrap();
    let py = python();
    let mut broker = Broker::start(
        &tmp.path().join("data"),
        &["--wal-sync-mode", "every_write", "--default-partitions", &PARTITIONS.to_string(), "--checkpoint-ms", "300"],
    );
    let mut acked: Vec<(i32, i64, String)> = Vec::new();
    let (mut replayed_entries, mut skipped_batches) = (0, 0);
    for cycle in 0..3 {
        let mut producer = Command::new(&py)
            .arg(client_script("kafka_client.py"))
            .args(["stream", &broker.addr, "crash", &PARTITIONS.to_string(), &format!("c{cycle}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start producer");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&lines);
        let stdout = producer.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        // Let acknowledgements flow, then pull the plug mid-stream.
        let start = Instant::now();
        while lines.lock().unwrap().len() < 400 + cycle * 100 && start.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(20));
        }
        broker.kill9();
        std::thread::sleep(Duration::from_millis(200));
        signal(producer.id(), "KILL");
        let _ = producer.wait();
        reader.join().unwrap();
        let text = lines.lock().unwrap().join("\n");
        let cycle_acks = records(&text, "ACK");
        assert!(cycle_acks.len() >= 100, "cycle {cycle}: the stream made progress ({} acks)", cycle_acks.len());
        acked.extend(cycle_acks);

        broker = broker.restart();
        let log = broker.log_text();
        let replay = log.lines().rfind(|l| l.contains("replayed WAL")).expect("recovery logs its replay");
        replayed_entries += field(replay, "entries");
        skipped_batches += field(replay, "skipped");
        let stored = read_all(&broker.addr, "crash");
        for (p, o, v) in &acked {
            assert_eq!(stored.get(&(*p, *o)), Some(v), "cycle {cycle}: acknowledged {v} must be at {p}/{o}");
        }
        let values: BTreeSet<&String> = stored.values().collect();
        assert_eq!(values.len(), stored.len(), "cycle {cycle}: no message stored twice");
        for v in stored.values() {
            let (prefix, n) = v.split_once('-').expect("well-formed value");
            assert!(prefix.starts_with('c') && n.parse::<u64>().is_ok(), "foreign bytes {v:?}");
            assert!(prefix[1..].parse::<usize>().unwrap() <= cycle, "value {v:?} from a future cycle");
        }
    }
    // Recovery really replayed the WAL over segments that already held the data
    // (page cache survives kill -9), and skipped what was there: no duplicates above.
    assert!(replayed_entries > 0, "some acknowledged entries were past the last checkpoint");
    assert!(skipped_batches > 0, "replay found batches already in the segments and skipped them");
    // New produces continue right after the recovered end.
    let before = read_all(&broker.addr, "crash");
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS as i32).map(|p| (p, before.keys().filter(|(bp, _)| *bp == p).count() as i64)).collect();
    let text = python_client("kafka_client.py", &["produce", &broker.addr, "crash", "4", &PARTITIONS.to_string(), "after"]);
    let after = records(&text, "ACK");
    assert_eq!(after.len(), 4);
    for p in 0..PARTITIONS as i32 {
        let mut offs: Vec<i64> = after.iter().filter(|(ap, _, _)| *ap == p).map(|(_, o, _)| *o).collect();
        offs.sort_unstable();
        assert_eq!(offs, vec![ends[&p], ends[&p] + 1], "partition {p} continues at the recovered end");
    }
}

#[test]
fn sigterm_loses_nothing_in_interval_and_os_default_modes() {
    for mode in ["interval", "os_default"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut broker = Broker::start(
            &tmp.path().join("data"),
            &["--wal-sync-mode", mode, "--default-partitions", &PARTITIONS.to_string(), "--checkpoint-ms", "60000"],
        );
        let text = python_client("kafka_client.py", &["produce", &broker.addr, "graceful", "300", &PARTITIONS.to_string(), "g"]);
        let acks = records(&text, "ACK");
        assert_eq!(acks.len(), 300, "{mode}: all acknowledged");
        let status = broker.sigterm();
        assert!(status.success(), "{mode}: SIGTERM exits 0, got {status:?}\n{}", broker.log_text());
        let broker = broker.restart();
        let stored = read_all(&broker.addr, "graceful");
        assert_eq!(stored.len(), 300, "{mode}: nothing lost or duplicated");
        for (p, o, v) in &acks {
            assert_eq!(stored.get(&(*p, *o)), Some(v), "{mode}: {v} at {p}/{o}");
        }
    }
}
