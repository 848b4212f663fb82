//! The connection limit: connections beyond `--max-connections` are closed as soon
//! as they are accepted, and a slot frees up when a connection ends. By default the
//! limit is half the open-file limit, so a flood of idle connections cannot take
//! the file descriptors storage needs: without it, the WAL's next rotation failed
//! with "Too many open files" and every produce was refused until a restart.
//!
//! Idle connections (no byte read or written for `--connections-max-idle-ms`, no
//! response being computed) are closed, as Kafka does; a long-polling fetch is not
//! idle, nor is a request whose bytes still arrive, however slowly. A request that
//! stops arriving halfway, or responses the client does not read, do not keep a
//! connection (and its slot under `--max-connections`) forever.

mod broker_support;

use std::{
    io::Write,
    net::TcpStream,
    time::{Duration, Instant},
};

use kafka_protocol::{
    messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, FetchResponse},
    protocol::StrBytes,
};

use broker_support::{
    wire::{
        batch, closed, connect, fetch_request, partition_result, produce, request_frame, response,
        send_produce, topic_metadata,
    },
    Broker,
};

/// Whether the connection is served: an ApiVersions request gets its answer.
fn served(c: &mut TcpStream) -> bool {
    if c.write_all(&request_frame(
        ApiKey::ApiVersions,
        0,
        7,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
            .with_client_software_version(StrBytes::from_static_str("1.0")),
    ))
    .is_err()
    {
        return false;
    }
    let mut len = [0u8; 4];
    if std::io::Read::read_exact(c, &mut len).is_err() {
        return false;
    }
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    std::io::Read::read_exact(c, &mut body).is_ok()
}

/// A new connection that is served, retried for up to 10 s (a closed connection
/// frees its slot once the broker has seen it end).
fn connect_served(addr: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = connect(addr);
        if served(&mut c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no connection served within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connections_beyond_the_limit_are_closed_until_one_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--max-connections", "4"]);
    let mut open: Vec<TcpStream> = (0..4).map(|_| connect_served(&broker.addr)).collect();

    let mut extra = connect(&broker.addr);
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(closed(&mut extra), "a fifth connection was not closed");

    // The four keep working; one ends, and a new connection takes its place.
    for c in &mut open {
        assert!(
            served(c),
            "a connection within the limit stopped being served"
        );
    }
    drop(open.pop());
    let mut replacement = connect_served(&broker.addr);
    for c in open.iter_mut().chain([&mut replacement]) {
        assert!(served(c));
    }
    let mut extra = connect(&broker.addr);
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(
        closed(&mut extra),
        "the limit no longer holds after a replacement"
    );
    assert!(
        broker.log_text().contains("connection limit reached"),
        "the refusal is not logged"
    );
}

/// An explicit `--max-connections` above what the open-file limit can hold
/// (half of what the files open at start leave of it) is refused at start,
/// naming the flag, the limit and the largest value that fits; that value is
/// accepted. Before, it was taken as given: idle connections could then take
/// every descriptor, and the next WAL rotation or segment roll failed storage.
/// The largest `--max-connections` a refusal's message names.
fn largest_accepted(err: &str) -> u64 {
    err.split("accepted values: 1 to ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no largest value in {err}"))
}

#[test]
fn max_connections_beyond_the_open_file_limit_are_refused_at_start() {
    use std::process::Command;
    const OPEN_FILES: u64 = 128;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let refused = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(broker_support::broker_bin());
        cmd.arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied());
        broker_support::limit_open_files(&mut cmd, OPEN_FILES);
        let out = broker_support::run(&mut cmd, b"", Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(!data.exists(), "nothing may be created on disk: {err}");
        err
    };
    let err = refused(&[], &["--max-connections", "100000"]);
    assert!(
        err.contains("--max-connections = \"100000\"")
            && err.contains(&format!("the limit is {OPEN_FILES} open files")),
        "{err}"
    );
    let fits = largest_accepted(&err);
    assert!((1..=OPEN_FILES / 2).contains(&fits), "{err}");
    // The metrics endpoint's 81 descriptors count as open: half of them less
    // fits (the files open at start vary by one or two).
    let with_metrics = largest_accepted(&refused(
        &[],
        &[
            "--max-connections",
            "100000",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    ));
    assert!(
        (38..=42).contains(&(fits - with_metrics)),
        "{fits} fit without the metrics endpoint, {with_metrics} with it"
    );
    // From its variable, the variable is named.
    let err = refused(&[("STREAMLINE_MAX_CONNECTIONS", "100000")], &[]);
    assert!(err.contains("STREAMLINE_MAX_CONNECTIONS"), "{err}");
    // Each within its half, the two together left no descriptor for one
    // partition: the broker served, and refused every topic.
    let err = refused(
        &[],
        &["--max-connections", "40", "--segment-open-files", "40"],
    );
    assert!(
        err.contains("--segment-open-files = \"40\"")
            && err.contains("with --max-connections 40 it leaves no open file for a partition"),
        "{err}"
    );

    // Storage's files, open once it has recovered, lower what fits a little.
    let fits = (fits / 2).to_string();
    let broker = Broker::start_limited(&data, &["--max-connections", &fits], Some(OPEN_FILES));
    let mut c = connect_served(&broker.addr);
    assert!(served(&mut c));
}

/// A Kafka address in use (another broker on the port) stopped the start
/// only after recovery, which for a new data directory had created it and
/// preallocated its WAL; and the metrics endpoint on the Kafka listener's
/// port was refused by its bind, after recovery too. Both stop the start
/// before anything is created on disk now.
#[test]
fn a_listen_address_in_use_stops_the_start_before_storage_opens() {
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let start = |data: &std::path::Path, args: &[&str]| {
        let out = broker_support::run(
            Command::new(broker_support::broker_bin())
                .arg("--data-dir")
                .arg(data)
                .args(args),
            b"",
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!data.exists(), "nothing may be created on disk: {err}");
        (out.status.code(), err)
    };
    for args in [
        vec!["--listen", addr.as_str()],
        vec!["--listen", "127.0.0.1:0", "--metrics-listen", addr.as_str()],
    ] {
        let (code, err) = start(&tmp.path().join("busy"), &args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&addr) && err.contains("Address already in use"),
            "{args:?}: {err}"
        );
    }
    drop(held);
    let (code, err) = start(
        &tmp.path().join("same"),
        &["--listen", &addr, "--metrics-listen", &addr],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("--metrics-listen = \"{addr}\""))
            && err.contains("the port of --listen"),
        "{err}"
    );
}

/// The check before recovery counts no storage file; a data directory of many
/// partitions holds two open files for each once recovered, so a value it
/// accepted could still leave storage without descriptors. It is judged again
/// once storage is open.
#[test]
fn max_connections_are_judged_again_with_the_partitions_open() {
    use std::process::Command;
    const OPEN_FILES: u64 = 128;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    {
        let broker = Broker::start(&data, &[]);
        let mut c = connect_served(&broker.addr);
        for i in 0..25 {
            assert_eq!(topic_metadata(&mut c, &format!("t{i}"), true), 0);
        }
    }
    // Accepted before recovery: (128 - about 10 open) / 2 is above 45.
    let mut cmd = Command::new(broker_support::broker_bin());
    cmd.arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--wal-max-file-size", "1m"])
        .args(["--max-connections", "45"]);
    broker_support::limit_open_files(&mut cmd, OPEN_FILES);
    let out = broker_support::run(&mut cmd, b"", Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    let fits = largest_accepted(&err);
    assert!(fits < 45, "{err}");
    // The files open when the check runs vary by a descriptor or two from
    // one start to the next (the WAL prepares its next file in the
    // background), so the value named is taken with that margin.
    let fits = (fits - 2).to_string();
    let broker = Broker::start_limited(&data, &["--max-connections", &fits], Some(OPEN_FILES));
    let mut c = connect_served(&broker.addr);
    assert!(served(&mut c));
}

#[test]
fn a_connection_flood_cannot_starve_storage_of_file_descriptors() {
    const OPEN_FILES: u64 = 128;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    pre_create(&data, |c| assert_eq!(topic_metadata(c, "flood", true), 0));
    // Small WAL files (1 MiB, from Broker::start) and segments: the produces below
    // rotate the WAL and roll segments several times, each needing new files.
    let broker = Broker::start_limited(
        &data,
        &["--segment-bytes", "1m", "--wal-sync-mode", "every_write"],
        Some(OPEN_FILES),
    );
    let mut p = connect_served(&broker.addr);
    assert_eq!(topic_metadata(&mut p, "flood", false), 0);

    // More idle connections than the process has file descriptors. (A broker that
    // stops accepting leaves them in the listen queue, where connecting can time out.)
    let sock: std::net::SocketAddr = broker.addr.parse().unwrap();
    let flood: Vec<TcpStream> = (0..2 * OPEN_FILES)
        .filter_map(|_| TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok())
        .collect();
    // Let the broker accept (and refuse) them before producing.
    std::thread::sleep(Duration::from_millis(300));

    let value = "v".repeat(64 * 1024);
    for i in 0..80i64 {
        let req = produce("flood", 0, batch(&[value.as_str()]));
        let r = send_produce(&mut p, 9, 100 + i as i32, &req);
        let msg = r.responses[0].partition_responses[0]
            .error_message
            .as_ref()
            .map(|m| m.to_string());
        assert_eq!(
            partition_result(&r),
            (0, i),
            "produce {i} during the flood: {msg:?}"
        );
    }
    let mut accepted = 0;
    for mut c in flood {
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        if !closed(&mut c) {
            accepted += 1;
        }
    }
    let limit = OPEN_FILES / 2;
    assert!(
        accepted < limit,
        "{accepted} flood connections kept open, the limit is {limit} (with the producer's)"
    );
    assert!(
        broker.log_text().contains("connection limit reached"),
        "the refusal is not logged"
    );
    // The flood is gone: new connections are served again.
    let mut c = connect_served(&broker.addr);
    c.write_all(&request_frame(
        ApiKey::ApiVersions,
        3,
        2,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
            .with_client_software_version(StrBytes::from_static_str("1.0")),
    ))
    .unwrap();
    let (cid, v): (i32, ApiVersionsResponse) = response(&mut c, ApiKey::ApiVersions, 3);
    assert_eq!((cid, v.error_code), (2, 0));
}

/// The idle time, against a 100 ms cadence of requests and request bytes: far
/// apart, so a loaded machine cannot make an active connection look idle. The
/// four connections below run at the same time.
const IDLE: Duration = Duration::from_secs(2);
const CADENCE: Duration = Duration::from_millis(100);

#[test]
fn idle_connections_are_closed_and_busy_ones_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let idle_ms = IDLE.as_millis().to_string();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &["--connections-max-idle-ms", &idle_ms],
    );
    let addr = broker.addr.as_str();
    // Each lasts 1.5 idle times (3 s), so the whole test takes a few seconds.
    let span = IDLE * 3 / 2;
    std::thread::scope(|s| {
        let phases = [
            // Idle: closed after about the idle time, not before.
            s.spawn(|| {
                let mut idle = connect_served(addr);
                let opened = Instant::now();
                idle.set_read_timeout(Some(IDLE * 10)).unwrap();
                assert!(closed(&mut idle), "an idle connection was not closed");
                let after = opened.elapsed();
                // The broker's clock started at its answer, a little before `opened`.
                assert!(
                    after >= IDLE * 3 / 4,
                    "closed after {after:?}, before the idle time {IDLE:?}"
                );
            }),
            // Active: a request every 100 ms for longer than the idle time keeps it open.
            s.spawn(|| {
                let mut active = connect_served(addr);
                let started = Instant::now();
                while started.elapsed() < span {
                    std::thread::sleep(CADENCE);
                    assert!(
                        served(&mut active),
                        "an active connection was closed after {:?}",
                        started.elapsed()
                    );
                }
            }),
            // Busy: a fetch long-polling for longer than the idle time with nothing
            // to return is answered, not cut off.
            s.spawn(|| {
                let mut busy = connect_served(addr);
                assert_eq!(topic_metadata(&mut busy, "quiet", true), 0);
                let fetch = fetch_request("quiet", 0, span.as_millis() as i32);
                let asked = Instant::now();
                busy.write_all(&request_frame(ApiKey::Fetch, 12, 2, &fetch))
                    .unwrap();
                let (cid, f): (i32, FetchResponse) = response(&mut busy, ApiKey::Fetch, 12);
                assert_eq!((cid, f.error_code), (2, 0));
                assert!(
                    asked.elapsed() >= span * 9 / 10,
                    "the fetch did not wait: {:?}",
                    asked.elapsed()
                );
                assert!(
                    served(&mut busy),
                    "the connection was closed while its fetch waited"
                );
            }),
            // Slow: a request sent a byte every 100 ms, in all longer than the idle
            // time, is read to the end and answered.
            s.spawn(|| {
                let mut slow = connect_served(addr);
                let frame = request_frame(
                    ApiKey::ApiVersions,
                    3,
                    9,
                    &ApiVersionsRequest::default()
                        .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
                        .with_client_software_version(StrBytes::from_static_str("1.0")),
                );
                assert!(
                    CADENCE * (frame.len() as u32 - 1) > IDLE,
                    "a frame of {} bytes is sent in less than the idle time",
                    frame.len()
                );
                for (i, byte) in frame.iter().enumerate() {
                    if i > 0 {
                        std::thread::sleep(CADENCE);
                    }
                    slow.write_all(std::slice::from_ref(byte)).unwrap();
                }
                let (cid, v): (i32, ApiVersionsResponse) =
                    response(&mut slow, ApiKey::ApiVersions, 3);
                assert_eq!((cid, v.error_code), (9, 0), "a slowly sent request");
            }),
        ];
        for phase in phases {
            if let Err(p) = phase.join() {
                std::panic::resume_unwind(p);
            }
        }
    });
}

/// A topic with more partitions than the open-file limit leaves storage (two
/// files each, beside what connections, the read-handle cache and the WAL may
/// take) is refused before anything is created, POLICY_VIOLATION naming the
/// limit, and so is a growth past it; the broker goes on creating and serving
/// smaller topics. Before, such a topic was created until a file failed to
/// open (EMFILE), leaving storage short of the descriptors its next WAL
/// rotation needed.
#[test]
fn a_topic_too_large_for_the_open_file_limit_is_refused_cleanly() {
    use kafka_protocol::messages::{
        create_partitions_request::CreatePartitionsTopic, CreatePartitionsRequest,
        CreatePartitionsResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // 256 - 8 connections - 64 cached read handles - 64 kept = 120 files: 60
    // partitions.
    let broker = Broker::start_limited(&data, &["--max-connections", "8"], Some(256));
    let mut c = connect_served(&broker.addr);
    let create = create_topic_answer;
    let (code, msg) = create(&mut c, "wide", 200);
    assert_eq!(code, 44, "{msg:?}");
    assert!(
        msg.as_deref()
            .is_some_and(|m| m.contains("RLIMIT_NOFILE 256")
                && m.contains("60 partitions the open-file limit leaves room for")),
        "the error does not say why: {msg:?}"
    );
    assert!(
        !data.join("topics").join("wide").exists(),
        "the refused topic's files were made"
    );
    assert_eq!(
        topic_metadata(&mut c, "wide", false),
        3,
        "the refused topic is listed"
    );
    // A smaller topic is created and served.
    assert_eq!(create(&mut c, "narrow", 20), (0, None));
    let value = "v".repeat(100);
    for i in 0..20 {
        let req = produce("narrow", i, batch(&[value.as_str()]));
        let r = send_produce(&mut c, 9, 10 + i, &req);
        assert_eq!(partition_result(&r), (0, 0), "partition {i}");
    }
    // A growth past the limit is refused too.
    let req = CreatePartitionsRequest::default()
        .with_topics(vec![CreatePartitionsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("narrow")))
            .with_count(100)
            .with_assignments(None)])
        .with_timeout_ms(10_000);
    c.write_all(&request_frame(ApiKey::CreatePartitions, 1, 40, &req))
        .unwrap();
    let (_, r): (i32, CreatePartitionsResponse) = response(&mut c, ApiKey::CreatePartitions, 1);
    assert_eq!(
        r.results[0].error_code, 44,
        "{:?}",
        r.results[0].error_message
    );
    assert!(!data.join("topics").join("narrow").join("20").exists());
}

/// CreateTopics v4 of `name` with `partitions`: its error code and message.
fn create_topic_answer(
    c: &mut TcpStream,
    name: &'static str,
    partitions: i32,
) -> (i16, Option<String>) {
    use kafka_protocol::messages::{
        create_topics_request::CreatableTopic, CreateTopicsRequest, CreateTopicsResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(1)])
        .with_timeout_ms(10_000);
    c.write_all(&request_frame(ApiKey::CreateTopics, 4, 3, &req))
        .unwrap();
    let (_, r): (i32, CreateTopicsResponse) = response(c, ApiKey::CreateTopics, 4);
    let t = &r.topics[0];
    (
        t.error_code,
        t.error_message.as_ref().map(|m| m.to_string()),
    )
}

/// The metrics endpoint's descriptors (its listener, the 64 connections it
/// holds, a file read by each of the 16 pages it renders at once) count
/// against the open-file limit beside the Kafka connections. Before, they
/// were left out of the partitions' budget, and a peer holding metrics
/// connections could take the descriptors the next WAL rotation or segment
/// roll needed, failing storage.
#[test]
fn the_metrics_endpoints_files_are_kept_out_of_the_partitions_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // 256 - (8 connections + 81 for metrics) - 64 cached read handles - 64
    // kept = 39 files: 19 partitions.
    let broker = Broker::start_limited(
        &data,
        &["--max-connections", "8", "--metrics-listen", "127.0.0.1:0"],
        Some(256),
    );
    let mut c = connect_served(&broker.addr);
    let (code, msg) = create_topic_answer(&mut c, "wide", 20);
    assert_eq!(code, 44, "{msg:?}");
    assert!(
        msg.as_deref()
            .is_some_and(|m| m.contains("19 partitions the open-file limit leaves room for")),
        "{msg:?}"
    );
    assert_eq!(create_topic_answer(&mut c, "narrow", 19), (0, None));
}

/// A Metadata request allowed to auto-create 200 new names created topics
/// until one failed to open its files (EMFILE), leaving storage a descriptor
/// or two: a few idle connections, far within the connection cap, then took
/// those, the next WAL rotation failed ("fsync dir .../wal: Too many open
/// files"), and every produce was refused (KAFKA_STORAGE_ERROR) until a
/// restart, which reopened every partition. Now the names the open-file limit
/// has no room for are answered UNKNOWN_TOPIC_OR_PARTITION and not created,
/// and produces that rotate the WAL and roll segments many times over are all
/// acknowledged.
#[test]
fn auto_creates_past_the_open_file_limit_leave_storage_room_to_rotate_the_wal() {
    use kafka_protocol::messages::{
        metadata_request::MetadataRequestTopic, MetadataRequest, MetadataResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = Broker::start_limited(
        &data,
        &["--wal-max-file-size", "64k", "--segment-bytes", "64k"],
        Some(320),
    );
    let mut c = connect_served(&broker.addr);
    let req = MetadataRequest::default()
        .with_topics(Some(
            (0..200)
                .map(|i| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(format!("auto{i}")))))
                })
                .collect(),
        ))
        .with_allow_auto_topic_creation(true);
    c.write_all(&request_frame(ApiKey::Metadata, 9, 2, &req))
        .unwrap();
    let (_, m): (i32, MetadataResponse) = response(&mut c, ApiKey::Metadata, 9);
    let created: Vec<String> = m
        .topics
        .iter()
        .filter(|t| t.error_code == 0)
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect();
    let refused = m.topics.iter().filter(|t| t.error_code == 3).count();
    assert!(
        !created.is_empty() && refused > 0 && created.len() + refused == 200,
        "{} created, {refused} refused",
        created.len()
    );
    // Produces of 16 KB to one topic: the 64 KiB WAL rotates and the
    // partition rolls its 64 KiB segments, once every four produces.
    let topic = created[0].clone();
    let value = "v".repeat(4_000);
    let values = [value.as_str(); 4];
    let mut sent = 0;
    let mut produce_some = |c: &mut TcpStream, n: i32| {
        for _ in 0..n {
            let r = send_produce(c, 9, 10 + sent, &produce(&topic, 0, batch(&values)));
            let message = r.responses[0].partition_responses[0].error_message.clone();
            assert_eq!(
                partition_result(&r),
                (0, i64::from(sent) * 4),
                "produce {sent} to {topic}: {message:?}"
            );
            sent += 1;
        }
    };
    // Idle connections, far fewer than the connection cap, take what
    // descriptors they find (each is served once accepted).
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut i = connect(&broker.addr);
            i.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            served(&mut i);
            i
        })
        .collect();
    produce_some(&mut c, 80);
    drop(idle);
    assert!(
        broker.log_text().contains("open-file limit leaves no room"),
        "the refusal is not logged"
    );
}

/// Connections that each send the first byte of a request and nothing more once
/// held every slot under `--max-connections` forever: a started request kept a
/// connection from counting as idle. Now the idle time counts from the last byte.
#[test]
fn connections_stalled_mid_request_are_closed_when_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &["--connections-max-idle-ms", "500", "--max-connections", "3"],
    );
    // One byte of a length; a length and half a header; a length and a body
    // that stops short. Together they take every slot.
    let frame = request_frame(
        ApiKey::ApiVersions,
        3,
        1,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
            .with_client_software_version(StrBytes::from_static_str("1.0")),
    );
    let mut stalled: Vec<TcpStream> = [&frame[..1], &frame[..8], &frame[..frame.len() - 1]]
        .into_iter()
        .map(|part| {
            let mut c = connect(&broker.addr);
            c.write_all(part).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c
        })
        .collect();
    let sent = Instant::now();
    for (i, c) in stalled.iter_mut().enumerate() {
        assert!(
            closed(c),
            "stalled connection {i} still open after {:?}",
            sent.elapsed()
        );
    }
    let after = sent.elapsed();
    assert!(
        after >= Duration::from_millis(400),
        "closed after {after:?}, before the idle time"
    );
    // Their slots are free again.
    let mut c = connect_served(&broker.addr);
    assert!(served(&mut c));
}

/// A client that sends requests and never reads the responses once kept its
/// connection forever: the broker waited for the write without a limit, and a
/// response pending kept the connection from counting as idle. Now a response
/// the client does not read for the idle time closes the connection.
#[test]
fn clients_that_do_not_read_their_responses_are_closed_when_idle() {
    use kafka_protocol::messages::{metadata_request::MetadataRequestTopic, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;
    const REQUESTS: usize = 20;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &["--connections-max-idle-ms", "500", "--max-connections", "1"],
    );
    // Each answer repeats the (invalid) 1 MiB topic name: far more than the
    // socket buffers hold.
    let name = "x".repeat(1 << 20);
    let req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            kafka_protocol::messages::TopicName(StrBytes::from_string(name)),
        ))]))
        .with_allow_auto_topic_creation(false);
    let frame = request_frame(ApiKey::Metadata, 12, 1, &req);
    let mut deaf = connect(&broker.addr);
    for _ in 0..REQUESTS {
        deaf.write_all(&frame).unwrap();
    }
    // The deaf client holds the only slot until the broker gives up on it.
    let mut c = connect_served(&broker.addr);
    assert!(served(&mut c));
    // What the deaf client gets now is what the sockets held: not every answer.
    deaf.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match std::io::Read::read(&mut deaf, &mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(e) => {
                break !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    };
    assert!(ended, "the deaf connection is still open");
    assert!(
        got < REQUESTS * frame.len(),
        "every answer was written ({got} bytes)"
    );
    assert!(
        broker
            .log_text()
            .contains("closing a connection whose client does not read its responses"),
        "the close is logged"
    );
}

/// Sends `requests` (Metadata v9 frames, correlation ids 2 on) behind a fetch
/// long-polling for 3 s, reads every answer in order, and returns how much the
/// broker's peak memory grew meanwhile.
fn queued_behind_a_long_poll(broker: &Broker, requests: Vec<Vec<u8>>) -> u64 {
    use kafka_protocol::messages::MetadataResponse;
    let mut c = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut c, "quiet", true), 0);
    let before = broker_support::peak_rss(broker.pid());
    let fetch = request_frame(ApiKey::Fetch, 12, 1, &fetch_request("quiet", 0, 3000));
    let n = requests.len();
    let mut w = c.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        w.write_all(&fetch).unwrap();
        for r in requests {
            w.write_all(&r).unwrap();
        }
    });
    let asked = Instant::now();
    let (cid, f): (i32, FetchResponse) = response(&mut c, ApiKey::Fetch, 12);
    assert_eq!((cid, f.error_code), (1, 0));
    assert!(
        asked.elapsed() >= Duration::from_millis(2500),
        "the fetch waited"
    );
    for i in 0..n {
        let (cid, m): (i32, MetadataResponse) = response(&mut c, ApiKey::Metadata, 9);
        assert_eq!(cid, 2 + i as i32, "answered in order");
        assert!(m.topics.len() <= 1, "{} topics answered", m.topics.len());
    }
    sender.join().unwrap();
    assert!(served(&mut c), "the connection goes on");
    broker_support::peak_rss(broker.pid()).saturating_sub(before)
}

/// The reader runs ahead of the writer (pipelining) while a fetch long-polls at
/// the head of the queue. It used to run up to 64 requests ahead, and a
/// decoded request keeps its whole frame alive: 64 padded requests held 64
/// frames (6.4 GB per connection at the default --max-request-bytes). Now the
/// frames in flight are bounded (32 MiB, or one frame). And the requests
/// queued were decoded: 4 bytes of a Metadata v9 frame (a topic with an empty
/// name and one unknown tagged field) decode into some 470, so 64 frames of
/// 100,000 such topics, 400 KB each and 25 MB together, held some 3 GB. The
/// queue now holds frames, each decoded when its turn comes.
#[test]
fn requests_queued_behind_a_long_poll_hold_bounded_memory() {
    use kafka_protocol::messages::{metadata_request::MetadataRequestTopic, MetadataRequest};
    use kafka_protocol::{messages::TopicName, protocol::StrBytes};

    // 64 Metadata requests each carrying 8 MiB in an unknown tagged field.
    const PADDED: usize = 64;
    const PAD: usize = 8 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--max-request-bytes", "9m"]);
    let mut padded = MetadataRequest::default().with_topics(Some(vec![]));
    padded
        .unknown_tagged_fields
        .insert(1000, bytes::Bytes::from(vec![7u8; PAD]));
    let requests = (0..PADDED)
        .map(|i| request_frame(ApiKey::Metadata, 9, 2 + i as i32, &padded))
        .collect();
    let grown = queued_behind_a_long_poll(&broker, requests);
    assert!(
        grown < 96 << 20,
        "{PADDED} requests of 8 MiB behind a long poll: the broker's peak memory grew by {} MiB",
        grown >> 20
    );
    drop(broker);

    // 16 Metadata requests of 100,000 topics (the most a request may list),
    // each with an empty name and one unknown tagged field.
    const TAGGED: usize = 16;
    const TOPICS: usize = 100_000;
    // One malloc arena: the reader and the writer decode on whichever worker
    // thread runs them, and each thread's arena keeps some of what it freed,
    // which the peak would count as if it were held.
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start_env(&tmp.path().join("data"), &[], &[("MALLOC_ARENA_MAX", "1")]);
    let mut topic =
        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str(""))));
    topic.unknown_tagged_fields.insert(7, bytes::Bytes::new());
    let tagged = MetadataRequest::default()
        .with_topics(Some(vec![topic; TOPICS]))
        .with_allow_auto_topic_creation(false);
    let requests: Vec<Vec<u8>> = (0..TAGGED)
        .map(|i| request_frame(ApiKey::Metadata, 9, 2 + i as i32, &tagged))
        .collect();
    drop(tagged);
    assert!(
        requests[0].len() < 5 * TOPICS,
        "{} bytes a frame",
        requests[0].len()
    );
    let grown = queued_behind_a_long_poll(&broker, requests);
    assert!(
        grown < 96 << 20,
        "{TAGGED} requests of {TOPICS} tagged topics behind a long poll: the broker's peak memory grew by {} MiB",
        grown >> 20
    );
}

/// A SIGTERM ends long polls at once: each is answered with what its
/// partitions hold, as at its deadline, and the broker exits without waiting
/// out their `max_wait` (up to 60 s; after 10 s the shutdown closed such
/// connections unanswered).
#[test]
fn a_shutdown_answers_long_polls_at_once() {
    use kafka_protocol::protocol::Decodable;
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(
        &tmp.path().join("data"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let mut c = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut c, "quiet", true), 0);
    c.write_all(&request_frame(
        ApiKey::Fetch,
        12,
        1,
        &fetch_request("quiet", 0, 30_000),
    ))
    .unwrap();
    // The long poll has begun once its first read pass is counted.
    broker_support::await_long_poll(&broker, 0);
    let stopping = Instant::now();
    let reader = std::thread::spawn(move || {
        let answer = broker_support::wire::read_frame(&mut c);
        (answer, stopping.elapsed())
    });
    assert!(broker.sigterm().success());
    let exited = stopping.elapsed();
    let (answer, answered) = reader.join().unwrap();
    let mut answer = answer.expect("the long poll is answered, not closed unanswered");
    let header = kafka_protocol::messages::ResponseHeader::decode(
        &mut answer,
        ApiKey::Fetch.response_header_version(12),
    )
    .unwrap();
    let f = FetchResponse::decode(&mut answer, 12).unwrap();
    let p = &f.responses[0].partitions[0];
    assert_eq!(
        (header.correlation_id, f.error_code, p.error_code),
        (1, 0, 0)
    );
    assert_eq!(p.records.as_ref().map(bytes::Bytes::len), Some(0));
    // The bug this guards against took 10-30 s; a loaded machine's fsyncs
    // may take a few of the 8 s allowed.
    assert!(
        answered < Duration::from_secs(8) && exited < Duration::from_secs(8),
        "a 30 s long poll answered {answered:?} and the broker exited {exited:?} after SIGTERM"
    );
    assert!(
        !broker.log_text().contains("still busy"),
        "{}",
        broker.log_text()
    );
}

/// Every record of partition 0 of `topic` from offset 0 to `end`, fetched one
/// Fetch after another (each up to 1 MiB), as (offset, value).
fn fetch_all(c: &mut TcpStream, topic: &str, end: i64) -> Vec<(i64, String)> {
    use kafka_protocol::records::RecordBatchDecoder;
    let mut out: Vec<(i64, String)> = Vec::new();
    let mut next = 0;
    while next < end {
        c.write_all(&request_frame(
            ApiKey::Fetch,
            12,
            7,
            &fetch_request(topic, next, 0),
        ))
        .unwrap();
        let (_, f): (i32, FetchResponse) = response(c, ApiKey::Fetch, 12);
        let p = &f.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch from {next}");
        let mut records = p.records.clone().unwrap_or_default();
        let before = out.len();
        for set in RecordBatchDecoder::decode_all(&mut records).unwrap() {
            for r in set.records {
                let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                out.push((r.offset, value));
            }
        }
        assert!(out.len() > before, "a fetch from {next} returned no record");
        next = out.last().unwrap().0 + 1;
    }
    out
}

/// Asserts that `got` holds exactly the records `want`, naming the first that
/// differs rather than printing every 3 KiB value.
fn assert_records(got: &[(i64, String)], want: &[(i64, String)], when: &str) {
    let first_wrong = got.iter().zip(want).position(|(g, w)| g != w);
    assert!(
        got.len() == want.len() && first_wrong.is_none(),
        "{when}: {} records fetched of {}, the first wrong at index {first_wrong:?}",
        got.len(),
        want.len()
    );
}

/// Open descriptors of process `pid` on files under `dir`.
fn fds_of_under(pid: u32, dir: &std::path::Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.starts_with(&dir))
        .count()
}

/// A topic whose `segment.bytes` a client set to 4096 (CreateTopics), so that
/// every 3 KiB produce rolls a segment: 300 segments under a 128-file limit.
/// Every segment held its log and index open for good, so the broker ran out of
/// descriptors after a few dozen produces (storage failed, every produce was
/// refused from then on), and a start over such a directory failed. Now only
/// the active segment keeps its files; older ones are read through a bounded
/// cache (by default a quarter of the limit): every produce is acknowledged,
/// the broker holds a few dozen descriptors on the topic's files, every record
/// is fetched back from offset 0, and the broker restarts on the directory,
/// after a kill (every segment above the recovery point is scanned at start)
/// and after a clean stop, serving them all.
#[test]
fn segments_beyond_the_open_file_limit_are_written_read_and_reopened() {
    const OPEN_FILES: u64 = 128;
    const RECORDS: i64 = 300;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Checkpoints far apart: at the restart after the kill, every segment is
    // above the recovery point.
    pre_create(&data, |c| create_small_segment_topic(c, "many"));
    let mut broker = Broker::start_limited(&data, &["--checkpoint-ms", "600000"], Some(OPEN_FILES));
    let mut c = connect_served(&broker.addr);

    let pad = "p".repeat(3 * 1024);
    let value = |i: i64| format!("{i:05}-{pad}");
    for i in 0..RECORDS {
        let req = produce("many", 0, batch(&[value(i).as_str()]));
        let r = send_produce(&mut c, 9, 100 + i as i32, &req);
        let msg = r.responses[0].partition_responses[0]
            .error_message
            .as_ref()
            .map(|m| m.to_string());
        assert_eq!(partition_result(&r), (0, i), "produce {i}: {msg:?}");
    }
    let pdir = data.join("topics").join("many").join("0");
    let segments = std::fs::read_dir(&pdir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(
        segments as u64 >= RECORDS as u64,
        "{segments} segments: the topic's segment.bytes did not take"
    );
    let want: Vec<(i64, String)> = (0..RECORDS).map(|i| (i, value(i))).collect();
    assert_records(&fetch_all(&mut c, "many", RECORDS), &want, "written");
    let held = fds_of_under(broker.pid(), &pdir);
    assert!(
        held <= 2 + 32 + 2,
        "the broker holds {held} descriptors on the topic's {segments} segments"
    );

    // A crash: the start scans every segment above the recovery point.
    drop(c);
    broker.kill9();
    let mut broker = broker.restart();
    let mut c = connect_served(&broker.addr);
    assert_records(
        &fetch_all(&mut c, "many", RECORDS),
        &want,
        "after a kill and a restart",
    );
    let req = produce("many", 0, batch(&[value(RECORDS).as_str()]));
    let r = send_produce(&mut c, 9, 1, &req);
    assert_eq!(partition_result(&r), (0, RECORDS));

    drop(c);
    assert!(broker.sigterm().success());
    let broker = broker.restart();
    let mut c = connect_served(&broker.addr);
    let mut want = want;
    want.push((RECORDS, value(RECORDS)));
    assert_records(
        &fetch_all(&mut c, "many", RECORDS + 1),
        &want,
        "after a clean restart",
    );
    let held = fds_of_under(broker.pid(), &pdir);
    assert!(held <= 2 + 32 + 2, "{held} descriptors after the restart");
}

/// A `--segment-open-files` above what the open-file limit can hold (storage's
/// half of what the files open at start leave of it) is refused at start,
/// naming the flag, the limit and the largest value that fits, and nothing is
/// created on disk. Before, any value was taken: under a 128-file limit a
/// cache of 1000 could hold every descriptor, and with idle connections
/// holding theirs, a WAL rotation found none and failed storage for good.
#[test]
fn a_segment_cache_beyond_the_open_file_limit_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (broker, fits) = start_with_the_largest_cache(&data, &[]);
    assert!((1..=CACHE_OPEN_FILES / 2).contains(&fits), "{fits}");
    // Accepted, it leaves (with the default --max-connections) no room for
    // a partition: the start says so, naming both flags, rather than the
    // first create.
    let log = broker.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("leaves no room for another partition")
            && l.contains("lower --max-connections or --segment-open-files")),
        "{log}"
    );
    let mut c = connect_served(&broker.addr);
    assert!(served(&mut c));
    // From its variable, the variable is named.
    drop(c);
    drop(broker);
    let tmp = tempfile::tempdir().unwrap();
    let err = segment_cache_refused(
        &tmp.path().join("data"),
        &[("STREAMLINE_SEGMENT_OPEN_FILES", "100000")],
        &[],
    );
    assert!(err.contains("STREAMLINE_SEGMENT_OPEN_FILES"), "{err}");
}

/// The open-file limit of the tests below that fill the descriptors.
const CACHE_OPEN_FILES: u64 = 128;

/// Starts the broker with `args` and the environment `env` under
/// [`CACHE_OPEN_FILES`] and returns its error: it must be refused (exit 2)
/// before creating anything.
fn segment_cache_refused(data: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> String {
    use std::process::Command;
    let mut cmd = Command::new(broker_support::broker_bin());
    cmd.arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied());
    broker_support::limit_open_files(&mut cmd, CACHE_OPEN_FILES);
    let out = broker_support::run(&mut cmd, b"", Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!data.exists(), "nothing may be created on disk: {err}");
    err
}

/// Checks that `--segment-open-files 1000` is refused under
/// [`CACHE_OPEN_FILES`] (on a directory of its own), then starts the broker on
/// `data` (with `extra` flags) with the largest value the refusal names, and
/// returns it with that value.
fn start_with_the_largest_cache(data: &std::path::Path, extra: &[&str]) -> (Broker, u64) {
    let err = segment_cache_refused(
        &data.with_extension("refused"),
        &[],
        &["--segment-open-files", "1000"],
    );
    assert!(
        err.contains("--segment-open-files = \"1000\"")
            && err.contains(&format!("the limit is {CACHE_OPEN_FILES} open files")),
        "{err}"
    );
    let fits = largest_accepted(&err);
    let fits_arg = fits.to_string();
    let mut args = vec!["--segment-open-files", fits_arg.as_str()];
    args.extend_from_slice(extra);
    let broker = Broker::start_limited(data, &args, Some(CACHE_OPEN_FILES));
    (broker, fits)
}

/// Writes 130 one-batch segments to topic `topic` (made beforehand by
/// [`create_small_segment_topic`], in a [`pre_create`] run: under
/// [`CACHE_OPEN_FILES`] the open-file budget leaves no room for a new
/// partition) through `c`, opens
/// more idle connections than the broker serves (it keeps as many as it
/// serves), and fetches from offset 0 in one Fetch: the read caches log
/// after log until the process has no descriptor left, and answers with the
/// batches read until then. Returns the connections kept open and the value
/// of record `i`.
fn fill_every_descriptor(
    broker: &Broker,
    c: &mut TcpStream,
    topic: &'static str,
) -> (Vec<TcpStream>, impl Fn(i64) -> String) {
    use kafka_protocol::records::RecordBatchDecoder;
    const RECORDS: i64 = 130;
    let pad = "p".repeat(3 * 1024);
    let value = move |i: i64| format!("{i:05}-{pad}");
    for i in 0..RECORDS {
        produce_at(c, topic, i, &value(i));
    }
    let sock: std::net::SocketAddr = broker.addr.parse().unwrap();
    let flood: Vec<TcpStream> = (0..2 * CACHE_OPEN_FILES)
        .filter_map(|_| TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok())
        .collect();
    // Let the broker accept (and refuse) them.
    std::thread::sleep(Duration::from_millis(300));
    c.write_all(&request_frame(
        ApiKey::Fetch,
        12,
        7,
        &fetch_request(topic, 0, 0),
    ))
    .unwrap();
    let (_, f): (i32, FetchResponse) = response(c, ApiKey::Fetch, 12);
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let mut records = p.records.clone().unwrap_or_default();
    let fetched: usize = RecordBatchDecoder::decode_all(&mut records)
        .unwrap()
        .iter()
        .map(|set| set.records.len())
        .sum();
    assert!(
        fetched > 0 && (fetched as i64) < RECORDS,
        "{fetched} records fetched of {RECORDS}: the descriptors did not run out"
    );
    assert!(
        broker
            .log_text()
            .contains("a fetch read stops at a segment it cannot open"),
        "{}",
        broker.log_text()
    );
    (flood, value)
}

/// Produces `value` to partition 0 of `topic` through `c` and checks that it
/// is acknowledged at offset `i`.
fn produce_at(c: &mut TcpStream, topic: &str, i: i64, value: &str) {
    let req = produce(topic, 0, batch(&[value]));
    let r = send_produce(c, 9, 100 + i as i32, &req);
    let msg = r.responses[0].partition_responses[0]
        .error_message
        .as_ref()
        .map(|m| m.to_string());
    assert_eq!(
        partition_result(&r),
        (0, i),
        "produce {i} to {topic}: {msg:?}"
    );
}

/// Reads keep the sealed logs they open beyond what the read-handle cache
/// keeps, and idle connections hold their descriptors: with as many
/// connections as the broker serves and the largest cache the limit accepts,
/// one Fetch across 130 one-batch segments takes every descriptor left. The
/// next segment roll then failed with EMFILE ("segment append failed: open
/// ...: Too many open files"), which failed storage: every produce was
/// refused until a restart. The roll now closes the cache's handles and tries
/// again: the produce is acknowledged, and so are the ones after it.
#[test]
fn a_segment_roll_short_of_file_descriptors_does_not_fail_storage() {
    use kafka_protocol::records::RecordBatchDecoder;
    const RECORDS: i64 = 130;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    pre_create(&data, |c| create_small_segment_topic(c, "rolls"));
    let (broker, _) = start_with_the_largest_cache(&data, &["--checkpoint-ms", "600000"]);
    let mut c = connect_served(&broker.addr);
    let (_flood, value) = fill_every_descriptor(&broker, &mut c, "rolls");

    // The next produces roll segments.
    for i in RECORDS..RECORDS + 3 {
        produce_at(&mut c, "rolls", i, &value(i));
    }
    assert!(
        broker
            .log_text()
            .contains("a segment roll is short of file descriptors"),
        "the roll met no shortage"
    );
    c.write_all(&request_frame(
        ApiKey::Fetch,
        12,
        8,
        &fetch_request("rolls", RECORDS, 0),
    ))
    .unwrap();
    let (_, f): (i32, FetchResponse) = response(&mut c, ApiKey::Fetch, 12);
    let p = &f.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, RECORDS + 3));
    let mut records = p.records.clone().unwrap_or_default();
    let got: Vec<(i64, String)> = RecordBatchDecoder::decode_all(&mut records)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| {
            (
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    let want: Vec<(i64, String)> = (RECORDS..RECORDS + 3).map(|i| (i, value(i))).collect();
    assert_records(&got, &want, "after the rolls");
}

/// Archived WAL files (`00000001.wal`, ...) in `wal`.
fn archived_wal_files(wal: &std::path::Path) -> usize {
    std::fs::read_dir(wal)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.len() == 12
                && name.ends_with(".wal")
                && name[..8].bytes().all(|b| b.is_ascii_digit())
        })
        .count()
}

/// A WAL rotation renamed the active file and the prepared one, then opened
/// the directory to fsync it and the new file to write it: with every
/// descriptor taken (as many idle connections as the broker serves, the
/// largest cache the limit accepts, full after one Fetch across 130
/// segments), it failed with EMFILE ("fsync dir ...: Too many open files")
/// after its tries, which nothing helped, and the WAL failed: every produce
/// was answered `KAFKA_STORAGE_ERROR` until a restart. A rotation now opens
/// everything before its renames, closes the cache's handles when short, and
/// tries again: produces to a topic that rolls no segment (so no roll frees
/// the cache first) go on through the rotation, acknowledged in order.
#[test]
fn a_wal_rotation_short_of_file_descriptors_does_not_fail_storage() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    pre_create(&data, |c| {
        assert_eq!(topic_metadata(c, "big", true), 0);
        create_small_segment_topic(c, "rolls");
    });
    let (broker, _) = start_with_the_largest_cache(&data, &["--checkpoint-ms", "600000"]);
    let mut c = connect_served(&broker.addr);
    // Its files open before the descriptors run out.
    assert_eq!(topic_metadata(&mut c, "big", false), 0);
    let (_flood, _) = fill_every_descriptor(&broker, &mut c, "rolls");

    // 100 KiB records into 1 MiB WAL files: a rotation within a dozen.
    let wal = data.join("wal");
    let before = archived_wal_files(&wal);
    let value = |i: i64| format!("{i:05}-{}", "b".repeat(100 * 1024));
    let mut i = 0;
    while archived_wal_files(&wal) == before {
        assert!(i < 30, "no WAL rotation after {i} produces");
        produce_at(&mut c, "big", i, &value(i));
        i += 1;
    }
    // Two more into the new file.
    for i in i..i + 2 {
        produce_at(&mut c, "big", i, &value(i));
    }
    assert!(
        broker
            .log_text()
            .contains("a WAL rotation is short of file descriptors"),
        "the rotation met no shortage"
    );
    assert!(
        !broker.log_text().contains("WAL failed"),
        "{}",
        broker.log_text()
    );
}

/// Runs `create` against a broker on `data` without an open-file limit of
/// its own, then stops it. Under a limit of 128 the default connection cap
/// (half of what is left once storage is open), the read-handle cache (a
/// quarter) and the 64 descriptors kept for the WAL, checkpoints and rolls
/// leave no room for a new partition, so a test that runs there makes its
/// topics first; a start opens every partition there is.
fn pre_create(data: &std::path::Path, create: impl FnOnce(&mut TcpStream)) {
    let broker = Broker::start(data, &[]);
    let mut c = connect_served(&broker.addr);
    create(&mut c);
}

/// Creates topic `name` of one partition whose segments roll at 4096 bytes.
fn create_small_segment_topic(c: &mut TcpStream, name: &'static str) {
    use kafka_protocol::messages::{
        create_topics_request::{CreatableTopic, CreatableTopicConfig},
        CreateTopicsRequest, CreateTopicsResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(name)))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(vec![CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("segment.bytes"))
                .with_value(Some(StrBytes::from_static_str("4096")))])])
        .with_timeout_ms(10_000);
    c.write_all(&request_frame(ApiKey::CreateTopics, 4, 3, &req))
        .unwrap();
    let (_, r): (i32, CreateTopicsResponse) = response(c, ApiKey::CreateTopics, 4);
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
}
