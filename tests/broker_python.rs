//! The broker with confluent-kafka (librdkafka from PyPI): acks=all producer, assign()
//! consumer, group subscription with committed offsets that survive a restart, and
//! the AdminClient's consumer-group listing, description and deletion, a
//! static member (`group.instance.id`) restarting without a rebalance, and a
//! consumer whose group membership survives a broker restart.

mod broker_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use broker_support::{
    client_script, kcat_from_start, python, python_client, python_client_env, records,
    wait_timeout, Broker,
};

/// A `kafka_client.py` run in the background. Each line it prints goes to the
/// channel it was started with as soon as it is printed, so that a test can act
/// on what the client has seen (an assignment, a state) rather than on how long
/// it has run: two clients started together can be ready seconds apart.
struct Background {
    what: String,
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl Background {
    /// Starts the client with `args` and `env`; its lines go to `lines`, tagged `id`.
    fn start(
        id: usize,
        args: &[&str],
        env: &[(&str, &str)],
        lines: &mpsc::Sender<(usize, String)>,
    ) -> Background {
        let mut child = Command::new(python())
            .arg(client_script("kafka_client.py"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let out = child.stdout.take().expect("stdout");
        let tx = lines.clone();
        let stdout = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                all.push_str(&line);
                all.push('\n');
                // The test may have stopped listening; the line is kept all the same.
                let _ = tx.send((id, line));
            }
            all
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            let _ = err.read_to_string(&mut all);
            all
        });
        Background {
            what: format!("kafka_client.py {args:?}"),
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Waits up to 2 minutes for the client to exit; asserts it succeeded and
    /// returns everything it printed.
    fn finish(&mut self) -> String {
        let status = wait_timeout(&mut self.child, Duration::from_secs(120));
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let stdout = self
            .stdout
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "{} failed ({status:?}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
            self.what
        );
        stdout
    }
}

impl Drop for Background {
    /// A test that fails before its clients end does not leave them running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The partitions after the time stamp of a `group-watch` line
/// (`"ASSIGNED t p ..."` or `"REVOKED t p ..."`).
fn watched_partitions(rest: &str) -> BTreeSet<i32> {
    rest.split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect()
}

#[test]
fn confluent_kafka_acks_all_assign_and_group_commits_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("data"), &["--default-partitions", "3"]);

    let produced = python_client(
        "kafka_client.py",
        &["produce", &broker.addr, "orders", "90", "3", "o"],
    );
    let acks = records(&produced, "ACK");
    assert_eq!(acks.len(), 90, "every message acknowledged:\n{produced}");
    let mut per_part: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, off, _) in &acks {
        per_part.entry(*p).or_default().push(*off);
    }
    for (p, offs) in &per_part {
        let mut sorted = offs.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..30).collect::<Vec<i64>>(),
            "partition {p}: acknowledged offsets are 0..30"
        );
    }

    // assign(): every acknowledged message at its acknowledged offset.
    let read = records(
        &python_client("kafka_client.py", &["assign", &broker.addr, "orders", "3"]),
        "MSG",
    );
    let got: BTreeMap<(i32, i64), String> =
        read.iter().map(|(p, o, v)| ((*p, *o), v.clone())).collect();
    assert_eq!(got.len(), 90);
    for (p, off, v) in &acks {
        assert_eq!(got.get(&(*p, *off)), Some(v), "message at {p}/{off}");
    }

    // A group consumer reads part of the topic and commits; the commit survives a restart.
    let first = python_client(
        "kafka_client.py",
        &["group", &broker.addr, "orders", "billing", "40"],
    );
    let first_msgs = records(&first, "MSG");
    assert_eq!(first_msgs.len(), 40, "{first}");
    let committed: Vec<(i32, i64)> = first
        .lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("COMMITTED ")?.split(' ');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect();
    assert!(!committed.is_empty(), "offsets were committed:\n{first}");
    for (p, off) in &committed {
        let next = first_msgs
            .iter()
            .filter(|(mp, _, _)| mp == p)
            .map(|(_, o, _)| o + 1)
            .max()
            .unwrap();
        assert_eq!(
            *off, next,
            "committed offset of partition {p} is the position after the last read"
        );
    }

    assert!(broker.sigterm().success());
    let broker = broker.restart();
    let second = python_client(
        "kafka_client.py",
        &["group", &broker.addr, "orders", "billing", "1000"],
    );
    let second_msgs = records(&second, "MSG");
    assert_eq!(
        second_msgs.len(),
        50,
        "the group resumes at its committed offsets:\n{second}"
    );
    let all: BTreeSet<(i32, i64)> = first_msgs
        .iter()
        .chain(&second_msgs)
        .map(|(p, o, _)| (*p, *o))
        .collect();
    assert_eq!(all.len(), 90, "no message read twice, none skipped");
}

#[test]
fn deleted_topic_stays_deleted_after_recreate_and_kill9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--wal-sync-mode",
            "every_write",
            "--checkpoint-ms",
            "600000",
        ],
    );
    let acks = records(
        &python_client(
            "kafka_client.py",
            &["produce", &broker.addr, "churn", "20", "1", "old"],
        ),
        "ACK",
    );
    assert_eq!(acks.len(), 20);
    let out = python_client("kafka_client.py", &["recreate", &broker.addr, "churn", "2"]);
    assert!(
        out.contains("DELETED churn") && out.contains("CREATED churn"),
        "{out}"
    );
    let acks = records(
        &python_client(
            "kafka_client.py",
            &["produce", &broker.addr, "churn", "4", "2", "new"],
        ),
        "ACK",
    );
    assert_eq!(acks.len(), 4);
    // Crash: the WAL still holds the old topic's entries, which must not come back.
    broker.kill9();
    let broker = broker.restart();
    let read = records(
        &python_client("kafka_client.py", &["assign", &broker.addr, "churn", "2"]),
        "MSG",
    );
    let mut values: Vec<String> = read.iter().map(|(_, _, v)| v.clone()).collect();
    values.sort();
    assert_eq!(
        values,
        vec!["new-0", "new-1", "new-2", "new-3"],
        "only the recreated topic's data"
    );
    for (p, o, _) in &read {
        assert!(*o < 2, "partition {p}: offsets start again at 0 (got {o})");
    }
}

/// Two members of one group split its four partitions between them. Each
/// member's assignment is followed as the rebalances come, and both stay in the
/// group until they hold a split or a minute has passed: however far apart the
/// two clients start, neither leaves (and so rebalances the other) before the
/// split is seen.
#[test]
fn two_group_members_split_the_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--default-partitions", "4"]);
    let acks = records(
        &python_client(
            "kafka_client.py",
            &["produce", &broker.addr, "shared", "40", "4", "s"],
        ),
        "ACK",
    );
    assert_eq!(acks.len(), 40);
    let stop = tmp.path().join("pair-stop");
    let stop_env = stop.to_str().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    let mut members: Vec<Background> = (0..2)
        .map(|i| {
            Background::start(
                i,
                &["group-watch", &broker.addr, "shared", "pair", "90"],
                &[("WATCH_STOP_FILE", &stop_env)],
                &tx,
            )
        })
        .collect();
    drop(tx);
    let every: BTreeSet<i32> = (0..4).collect();
    let split = |held: &[BTreeSet<i32>; 2]| {
        !held[0].is_empty()
            && !held[1].is_empty()
            && held[0].is_disjoint(&held[1])
            && held[0].union(&held[1]).copied().collect::<BTreeSet<i32>>() == every
    };
    // What each member holds: what it was assigned, less what was revoked since.
    let mut held = [BTreeSet::new(), BTreeSet::new()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !split(&held) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((i, line)) => {
                if let Some(rest) = line.strip_prefix("ASSIGNED ") {
                    held[i].extend(watched_partitions(rest));
                } else if let Some(rest) = line.strip_prefix("REVOKED ") {
                    held[i].retain(|p| !watched_partitions(rest).contains(p));
                }
            }
            // The minute is over, or both members exited.
            Err(_) => break,
        }
    }
    std::fs::write(&stop, b"").unwrap();
    let outputs: Vec<String> = members.iter_mut().map(|m| m.finish()).collect();
    let transcripts = format!("{}\n{}", outputs[0], outputs[1]);
    assert!(
        !held[0].is_empty() && !held[1].is_empty(),
        "both members got partitions: {held:?}\n{transcripts}"
    );
    assert!(
        held[0].is_disjoint(&held[1]),
        "no partition assigned twice: {held:?}\n{transcripts}"
    );
    let all: BTreeSet<i32> = held[0].union(&held[1]).copied().collect();
    assert_eq!(all, every, "every partition assigned\n{transcripts}");
}

/// Static membership with librdkafka (`group.instance.id`, KIP-345): a static
/// consumer that restarts (closes without leaving the group, starts again
/// with the same instance id within the session timeout) gets its partitions
/// back, and the other member, a dynamic one, sees no rebalance meanwhile.
#[test]
fn a_restarted_static_consumer_gets_its_partitions_back_without_a_rebalance() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--default-partitions", "4"]);
    let acks = records(
        &python_client(
            "kafka_client.py",
            &["produce", &broker.addr, "statics", "8", "4", "s"],
        ),
        "ACK",
    );
    assert_eq!(acks.len(), 8);
    let addr = broker.addr.clone();
    // The dynamic member stays until both static runs are over, however long
    // their client start-ups take: its leaving must not fall within them.
    let stop = tmp.path().join("dynamic-stop");
    let stop_env = stop.to_str().unwrap().to_string();
    let dynamic = std::thread::spawn(move || {
        python_client_env(
            "kafka_client.py",
            &["group-watch", &addr, "statics", "watch", "90"],
            &[("WATCH_STOP_FILE", &stop_env)],
        )
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let watch = |seconds: &str| {
        python_client(
            "kafka_client.py",
            &[
                "group-watch",
                &broker.addr,
                "statics",
                "watch",
                seconds,
                "static-1",
            ],
        )
    };
    let first = watch("5");
    let second = watch("4");
    std::fs::write(&stop, b"").unwrap();
    let dynamic = dynamic.join().unwrap();
    // (Unix time, kind, partitions) of each line of `text`.
    let events = |text: &str| -> Vec<(f64, String, BTreeSet<i32>)> {
        text.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let kind = f.next()?.to_string();
                let t: f64 = f.next()?.parse().ok()?;
                Some((t, kind, f.map(|p| p.parse().unwrap()).collect()))
            })
            .collect()
    };
    let (first, second, dynamic) = (events(&first), events(&second), events(&dynamic));
    let assigned = |ev: &[(f64, String, BTreeSet<i32>)]| -> Vec<BTreeSet<i32>> {
        ev.iter()
            .filter(|(_, k, _)| k == "ASSIGNED")
            .map(|(_, _, p)| p.clone())
            .collect()
    };
    let held = assigned(&first)
        .last()
        .cloned()
        .unwrap_or_else(|| panic!("the static member got no partitions: {first:?}"));
    assert!(!held.is_empty(), "{first:?}");
    assert_eq!(
        assigned(&second).first(),
        Some(&held),
        "the restarted static member gets its partitions back: {second:?}"
    );
    let (from, to) = (second[0].0, second.last().unwrap().0);
    let during: Vec<_> = dynamic
        .iter()
        .filter(|(t, k, _)| (k == "ASSIGNED" || k == "REVOKED") && *t >= from && *t <= to)
        .collect();
    assert!(
        during.is_empty(),
        "the dynamic member was rebalanced while the static one restarted: {during:?}\nall: {dynamic:?}"
    );
    let mine = assigned(&dynamic).last().cloned().unwrap_or_default();
    assert!(
        mine.is_disjoint(&held) && mine.len() + held.len() == 4,
        "the two members split the partitions: {mine:?} and {held:?}"
    );
}

/// confluent-kafka's AdminClient (ListGroups v5, DescribeGroups, DeleteGroups) on
/// a group that a real consumer holds, then after it left: Stable with the member
/// (its client id, host and the partitions it reports as assigned), listed with
/// and without a states filter, not deletable; Empty once the member left, then
/// deleted, no longer listed and described as Dead.
#[test]
fn admin_client_lists_describes_and_deletes_a_consumer_group() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--default-partitions", "2"]);
    let acks = records(
        &python_client(
            "kafka_client.py",
            &["produce", &broker.addr, "watched-topic", "4", "2", "w"],
        ),
        "ACK",
    );
    assert_eq!(acks.len(), 4);
    // The member stays until the AdminClient has tried to delete the group it
    // holds, however long either client takes to start, and then leaves, which
    // the AdminClient waits for next.
    let stop = tmp.path().join("holder-stop");
    let stop_env = stop.to_str().unwrap().to_string();
    let (holder_tx, _holder_rx) = mpsc::channel();
    let mut holder = Background::start(
        0,
        &[
            "group-watch",
            &broker.addr,
            "watched-topic",
            "watched",
            "90",
        ],
        &[("WATCH_STOP_FILE", &stop_env)],
        &holder_tx,
    );
    let (admin_tx, admin_rx) = mpsc::channel();
    let mut admin = Background::start(
        1,
        &["group-admin", &broker.addr, "watched", "60"],
        &[],
        &admin_tx,
    );
    drop(admin_tx);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match admin_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((_, line)) if line.starts_with("DELETE") => break,
            Ok(_) => {}
            // The AdminClient exited early, or it is stuck: its transcript says which.
            Err(_) => break,
        }
    }
    std::fs::write(&stop, b"").unwrap();
    let admin = admin.finish();
    let held = holder.finish();
    let assigned = held
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("ASSIGNED "))
        .unwrap_or_else(|| panic!("no assignment printed:\n{held}"));
    let assignment = watched_partitions(assigned)
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        assignment, "0 1",
        "the only member holds both partitions:\n{held}"
    );

    let lines: Vec<&str> = admin.lines().collect();
    let member = lines
        .iter()
        .find_map(|l| l.strip_prefix("MEMBER "))
        .unwrap_or_else(|| panic!("no member described:\n{admin}"));
    let (member_id, rest) = member.split_once(' ').unwrap();
    assert!(
        member_id.starts_with("rdkafka-"),
        "member id prefixed with the client id: {member_id}"
    );
    assert_eq!(
        rest,
        format!("rdkafka /127.0.0.1 {assignment}"),
        "client id, client host and the member's assignment"
    );
    let ops = "ops=DELETE,DESCRIBE,READ";
    let want = [
        format!("DESCRIBED watched STABLE simple=False assignor=range members=1 {ops}"),
        format!("MEMBER {member}"),
        "LISTED watched STABLE simple=False type=CLASSIC".into(),
        "LISTED_STABLE watched STABLE simple=False type=CLASSIC".into(),
        "DELETE_FAILED watched NON_EMPTY_GROUP".into(),
        format!("DESCRIBED watched EMPTY simple=False assignor=- members=0 {ops}"),
        "LISTED watched EMPTY simple=False type=CLASSIC".into(),
        "DELETED watched".into(),
        format!("DESCRIBED watched DEAD simple=True assignor=- members=0 {ops}"),
    ];
    assert_eq!(lines, want, "AdminClient transcript:\n{admin}");
}

#[test]
fn concurrent_producers_get_distinct_contiguous_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--default-partitions",
            "2",
            "--wal-sync-mode",
            "every_write",
        ],
    );
    let producers: Vec<_> = (0..3)
        .map(|i| {
            let addr = broker.addr.clone();
            std::thread::spawn(move || {
                records(
                    &python_client(
                        "kafka_client.py",
                        &["produce", &addr, "busy", "1500", "2", &format!("w{i}")],
                    ),
                    "ACK",
                )
            })
        })
        .collect();
    let acked: Vec<(i32, i64, String)> = producers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    assert_eq!(acked.len(), 4500);
    let slots: BTreeSet<(i32, i64)> = acked.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(slots.len(), 4500, "no offset handed out twice");
    for p in 0..2 {
        let offs: Vec<i64> = slots
            .iter()
            .filter(|(sp, _)| *sp == p)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(
            offs,
            (0..2250).collect::<Vec<i64>>(),
            "partition {p}: contiguous from 0"
        );
    }
    let read = records(
        &python_client("kafka_client.py", &["assign", &broker.addr, "busy", "2"]),
        "MSG",
    );
    let stored: BTreeMap<(i32, i64), String> =
        read.into_iter().map(|(p, o, v)| ((p, o), v)).collect();
    for (p, o, v) in &acked {
        assert_eq!(stored.get(&(*p, *o)), Some(v));
    }
}

#[test]
fn admin_client_creates_alters_and_describes_configs_and_adds_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--log-retention-bytes", "1g"]);
    python_client(
        "kafka_client.py",
        &["produce", &broker.addr, "cfg", "1", "1", "c"],
    );
    let out = python_client(
        "kafka_client.py",
        &["describe-configs", &broker.addr, "cfg"],
    );
    // Sources: 4 = set on the command line (static broker config), 5 = default.
    for want in [
        "CONFIG cfg retention.bytes 1073741824 4",
        "CONFIG cfg retention.ms 604800000 5",
        "CONFIG cfg cleanup.policy delete 5",
        "CONFIG 0 log.retention.bytes 1073741824 4",
        "CONFIG 0 broker.id 0 5",
    ] {
        assert!(
            out.lines().any(|l| l == want),
            "{want} missing from:\n{out}"
        );
    }

    // Without an authorizer every operation of the cluster and of a topic is
    // reported as authorized when asked (Metadata v8+), as Kafka does.
    let out = python_client("kafka_client.py", &["describe-ops", &broker.addr, "cfg"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "OPS cluster ALTER,ALTER_CONFIGS,CLUSTER_ACTION,CREATE,DESCRIBE,DESCRIBE_CONFIGS,IDEMPOTENT_WRITE",
            "OPS topic ALTER,ALTER_CONFIGS,CREATE,DELETE,DESCRIBE,DESCRIBE_CONFIGS,READ,WRITE",
            "OPS cluster-unasked none",
            "OPS topic-unasked none",
        ],
        "{out}"
    );

    // Per-topic configs: created with the topic, altered one key at a time.
    let client = |args: &[&str]| python_client("kafka_client.py", args);
    let out = client(&[
        "create-with-configs",
        &broker.addr,
        "made",
        "retention.bytes=2048",
        "segment.bytes=8192",
    ]);
    assert_eq!(out.trim(), "CREATED made");
    let out = client(&[
        "create-with-configs",
        &broker.addr,
        "archived",
        "cleanup.policy=archive",
    ]);
    assert!(
        out.starts_with("REFUSED archived INVALID_CONFIG") && out.contains("compact,delete"),
        "{out}"
    );
    let out = client(&[
        "alter-configs",
        &broker.addr,
        "made",
        "set:retention.ms=60000",
        "delete:retention.bytes",
    ]);
    assert_eq!(out.trim(), "ALTERED made");
    let out = client(&["alter-configs", &broker.addr, "made", "set:segment.bytes=1"]);
    assert!(out.starts_with("REFUSED made INVALID_CONFIG"), "{out}");
    let out = client(&["describe-configs", &broker.addr, "made"]);
    // Source 1: a topic's own setting.
    for want in [
        "CONFIG made retention.ms 60000 1",
        "CONFIG made segment.bytes 8192 1",
        "CONFIG made retention.bytes 1073741824 4",
    ] {
        assert!(
            out.lines().any(|l| l == want),
            "{want} missing from:\n{out}"
        );
    }

    let out = python_client("kafka_client.py", &["grow", &broker.addr, "cfg", "3"]);
    assert!(out.contains("GREW cfg 3"), "{out}");
    // The producer sees the new partitions and writes to each.
    let acks = records(
        &python_client(
            "kafka_client.py",
            &["produce", &broker.addr, "cfg", "6", "3", "g"],
        ),
        "ACK",
    );
    let parts: std::collections::BTreeSet<i32> = acks.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(parts, [0, 1, 2].into_iter().collect(), "{acks:?}");
}

#[test]
fn admin_client_deletes_records_durably() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("data"), &[]);
    let client = |addr: &str, args: &[&str]| {
        let mut all = vec![args[0], addr];
        all.extend_from_slice(&args[1..]);
        python_client("kafka_client.py", &all)
    };
    let acks = records(
        &client(&broker.addr, &["produce", "purge", "10", "1", "m"]),
        "ACK",
    );
    assert_eq!(acks.len(), 10);
    let out = client(&broker.addr, &["delete-records", "purge", "0", "4"]);
    assert_eq!(out.trim(), "DELETED purge 0 4");
    let out = client(&broker.addr, &["delete-records", "purge", "0", "11"]);
    assert_eq!(out.trim(), "REFUSED purge 0 OFFSET_OUT_OF_RANGE");
    // A consumer from the beginning starts at the new log start, before and after
    // a restart.
    let from_beginning = |addr: &str| -> Vec<String> {
        kcat_from_start(addr, "purge", None)
            .into_iter()
            .map(|(o, v)| format!("{o} {v}"))
            .collect()
    };
    let want: Vec<String> = acks[4..]
        .iter()
        .map(|(_, o, v)| format!("{o} {v}"))
        .collect();
    assert_eq!(want.len(), 6);
    for round in 0..2 {
        assert_eq!(from_beginning(&broker.addr), want, "round {round}");
        if round == 0 {
            assert!(broker.sigterm().success());
            broker = broker.restart();
        }
    }
    // -1: everything readable.
    let out = client(&broker.addr, &["delete-records", "purge", "0", "-1"]);
    assert_eq!(out.trim(), "DELETED purge 0 10");
    assert!(from_beginning(&broker.addr).is_empty());
}

#[test]
fn admin_client_finds_offsets_by_timestamp_inside_a_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let t = 1_750_000_000_000i64;
    let out = python_client(
        "kafka_client.py",
        &["timed", &broker.addr, "when", &t.to_string(), "5"],
    );
    // Message i at t + i s: the first at or after t + 2.5 s is offset 3, with its
    // own timestamp (whether or not the client put all five in one batch); the
    // newest is offset 4.
    let want = format!("AT 3 {}\nMAX 4 {}", t + 3000, t + 4000);
    assert_eq!(out.trim(), want);
}

/// Creates compacted topic `topic`, produces keyed messages with librdkafka's
/// `compression` codec (a tombstone for k0, a tail of one key, a keyless message
/// that must be refused), waits until compaction shows, and returns what a
/// consumer reads from the start: each key once, with its newest value (a
/// compressed batch that keeps some of its records is written again without
/// the others, compressed again when that is smaller), and k0 gone.
fn compacted_topic_case(addr: &str, topic: &str, compression: &str) -> Vec<(i64, String)> {
    let client = |args: &[&str]| {
        let mut all = vec![args[0], addr];
        all.extend_from_slice(&args[1..]);
        python_client("kafka_client.py", &all)
    };
    let out = client(&[
        "create-with-configs",
        topic,
        "cleanup.policy=compact",
        "segment.bytes=4096",
        "delete.retention.ms=0",
        "min.cleanable.dirty.ratio=0.01",
    ]);
    assert_eq!(out.trim(), format!("CREATED {topic}"));
    let (rounds, keys, tail) = (30, 8, 300);
    let out = client(&[
        "produce-keyed",
        topic,
        &rounds.to_string(),
        &keys.to_string(),
        &tail.to_string(),
        compression,
    ]);
    // Kafka's answer to a record without a key in a compacted topic, found in
    // a compressed batch too.
    let keyless: Vec<&str> = out.lines().filter(|l| l.starts_with("KEYLESS")).collect();
    assert_eq!(keyless.len(), 1, "{compression}: {out}");
    assert!(
        keyless[0].starts_with("KEYLESS INVALID_RECORD"),
        "{compression}: {out}"
    );
    let acks: Vec<(i64, String, String)> = out
        .lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("ACK ")?.splitn(3, ' ');
            Some((
                it.next()?.parse().ok()?,
                it.next()?.to_string(),
                it.next()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(acks.len(), rounds * keys + 1 + tail, "{out}");
    let end = acks.last().unwrap().0 + 1;
    let key_at = |o: i64| -> &(i64, String, String) {
        acks.iter().find(|a| a.0 == o).expect("a produced offset")
    };

    // What a compacted log may hold: every key's newest value, k0's tombstone
    // (past delete.retention.ms = 0) gone with its values once compacted; the
    // newest "tail" records may still be in the active segment.
    let newest: std::collections::BTreeMap<&str, (i64, &str)> = acks
        .iter()
        .map(|(o, k, v)| (k.as_str(), (*o, v.as_str())))
        .collect();
    let compacted = |read: &[(i64, String)]| -> bool {
        let offsets: Vec<i64> = read.iter().map(|r| r.0).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{read:?}");
        for (o, v) in read {
            let ack = key_at(*o);
            // kcat prints a null value as nothing.
            let produced = if ack.2 == "<null>" {
                ""
            } else {
                ack.2.as_str()
            };
            assert!(
                v == produced || v == &ack.2,
                "offset {o} holds {v:?}, produced {ack:?}"
            );
        }
        let last_of = |k: &str| read.iter().rev().find(|r| key_at(r.0).1 == k).map(|r| r.0);
        let count_of = |k: &str| read.iter().filter(|r| key_at(r.0).1 == k).count();
        let keys_ok = (1..keys).all(|k| {
            let k = format!("k{k}");
            last_of(&k) == Some(newest[k.as_str()].0) && count_of(&k) == 1
        });
        let k0_ok = count_of("k0") == 0;
        keys_ok
            && k0_ok
            && read.last().map(|r| r.0) == Some(end - 1)
            // The tail's older records went from the closed segments.
            && read.len() < tail / 2
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut read = kcat_from_start(addr, topic, Some(0));
    while !compacted(&read) {
        assert!(
            std::time::Instant::now() < deadline,
            "{compression}: not compacted after 30 s: {} records: {read:?}",
            read.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        read = kcat_from_start(addr, topic, Some(0));
    }
    // The first batches lost every record: the consumer, which started at
    // offset 0, stepped over the empty batches left in their place.
    assert!(read[0].0 > 0, "{read:?}");
    read
}

#[test]
fn a_compacted_topic_keeps_each_keys_newest_value_for_librdkafka_consumers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(
        &tmp.path().join("data"),
        &["--log-cleaner-backoff-ms", "100"],
    );
    let mut reads = Vec::new();
    for (topic, codec) in [
        ("latest", "none"),
        ("latest-gzip", "gzip"),
        ("latest-snappy", "snappy"),
        ("latest-lz4", "lz4"),
        ("latest-zstd", "zstd"),
    ] {
        reads.push((topic, compacted_topic_case(&broker.addr, topic, codec)));
    }
    // confluent-kafka's consumer steps over the emptied batches the same way,
    // and so does everything after a restart.
    let via_consumer = |addr: &str, topic: &str| -> Vec<(i64, String)> {
        records(
            &python_client("kafka_client.py", &["assign", addr, topic, "1"]),
            "MSG",
        )
        .into_iter()
        .map(|(_, o, v)| (o, if v == "<null>" { String::new() } else { v }))
        .collect()
    };
    for (topic, read) in &reads {
        assert_eq!(&via_consumer(&broker.addr, topic), read, "{topic}");
    }
    assert!(broker.sigterm().success());
    broker = broker.restart();
    for (topic, read) in &reads {
        assert_eq!(
            &kcat_from_start(&broker.addr, topic, Some(0)),
            read,
            "{topic}"
        );
        assert_eq!(&via_consumer(&broker.addr, topic), read, "{topic}");
    }
}

/// Group membership survives a broker restart: a consumer that stays in its
/// group while the broker is killed (SIGKILL) and restarted on the same port and
/// data directory heartbeats and commits afterwards at the generation it had,
/// with no failed commit and no rebalance. Before membership was stored, the
/// restarted broker had forgotten the group: the consumer's heartbeat got
/// UNKNOWN_MEMBER_ID and its commit failed (Java's consumer throws
/// CommitFailedException), and it lost its partitions and rejoined.
#[test]
fn a_consumer_group_rides_out_a_broker_restart_without_a_rebalance() {
    use std::{
        io::{BufRead, BufReader, Write},
        process::{Command, Stdio},
        sync::mpsc,
        time::{Duration, Instant},
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut broker =
        Broker::start_fixed_port(&tmp.path().join("data"), &["--default-partitions", "2"]);
    let produce = |addr: &str, prefix: &str| {
        let acks = records(
            &python_client(
                "kafka_client.py",
                &["produce", addr, "steady", "10", "2", prefix],
            ),
            "ACK",
        );
        assert_eq!(acks.len(), 10);
    };
    produce(&broker.addr, "before");

    let mut consumer = Command::new(broker_support::python())
        .arg(broker_support::client_script("kafka_client.py"))
        .args([
            "group-across-restart",
            &broker.addr,
            "steady",
            "steady-group",
            "10",
            "10",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the consumer");
    /// Kills the consumer should the test fail before it exits.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = consumer.stdout.take().unwrap();
    let stderr = consumer.stderr.take().unwrap();
    let mut stdin = consumer.stdin.take().unwrap();
    let mut consumer = Reap(consumer);
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut output = Vec::new();
    let mut wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line == what;
                    output.push(line);
                    if done {
                        return;
                    }
                }
                Err(_) => panic!("no {what:?} from the consumer:\n{}", output.join("\n")),
            }
        }
    };
    wait_for("WAITING");

    broker.kill9();
    let broker = broker.restart_same_port();
    produce(&broker.addr, "after");
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    wait_for("GO");
    let status = broker_support::wait_timeout(&mut consumer.0, Duration::from_secs(90))
        .expect("the consumer did not finish");
    output.extend(lines.try_iter());
    let text = output.join("\n");
    assert!(
        status.success(),
        "the consumer failed:\n{text}\nstderr:\n{}",
        errors.join().unwrap()
    );

    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("COMMIT_FAILED") || l.starts_with("TIMEOUT"))
        .collect();
    assert!(failed.is_empty(), "commits failed: {failed:?}\n{text}");
    // Closing revokes the assignment as the consumer leaves.
    let rebalances: Vec<&str> = text
        .lines()
        .take_while(|l| *l != "CLOSING")
        .filter(|l| {
            ["ASSIGNED", "REVOKED", "LOST"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect();
    assert_eq!(
        rebalances.len(),
        1,
        "one assignment, and no rebalance across the restart:\n{text}"
    );
    assert!(rebalances[0].starts_with("ASSIGNED"), "{text}");
    let assigned: BTreeSet<i32> = rebalances[0]
        .split(' ')
        .skip(2)
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(assigned, BTreeSet::from([0, 1]), "{text}");
    // Every message once, and the commit after the restart stored the end.
    let read = records(&text, "MSG");
    let values: BTreeSet<&str> = read.iter().map(|(_, _, v)| v.as_str()).collect();
    assert_eq!(read.len(), 20, "{text}");
    assert_eq!(values.len(), 20, "{text}");
    let go = text.lines().position(|l| l == "GO").unwrap();
    let committed_after: BTreeMap<i32, i64> = text
        .lines()
        .skip(go)
        .filter_map(|l| {
            let mut f = l.strip_prefix("COMMITTED ")?.split(' ');
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    assert_eq!(
        committed_after,
        BTreeMap::from([(0, 10), (1, 10)]),
        "the commit after the restart:\n{text}"
    );
}
