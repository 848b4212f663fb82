//! Wire-level behaviour: bad input gets an error (or a closed connection) for that
//! client only; pipelined produces are answered in order and share group commits.

mod broker_support;

use std::{collections::BTreeMap, io::Write, net::TcpStream, time::Duration};

use bytes::{Buf, Bytes};
use kafka_protocol::{
    messages::{
        create_partitions_request::{CreatePartitionsAssignment, CreatePartitionsTopic},
        describe_configs_request::DescribeConfigsResource,
        list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
        list_offsets_response::ListOffsetsPartitionResponse,
        ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreatePartitionsRequest,
        CreatePartitionsResponse, DescribeConfigsRequest, DescribeConfigsResponse, FetchResponse,
        InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse,
        MetadataRequest, MetadataResponse, ProduceResponse, ProducerId, TopicName, TransactionalId,
    },
    protocol::{Decodable, StrBytes},
};

use broker_support::{
    kcat, kcat_from_start,
    wire::{
        batch, closed, connect, fetch_request, idempotent_batch, keyed_batch, maybe_keyed_batch,
        metadata_of, partition_result, produce, read_frame, request_frame, response, send_produce,
        timed_batch, topic_metadata,
    },
    Broker,
};

#[test]
fn bad_input_gets_an_error_for_that_client_only() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--max-request-bytes", "64k"]);
    // Create the topic through Metadata auto-creation.
    let mut ok = connect(&broker.addr);
    let meta = MetadataRequest::default()
        .with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("bad")))),
        ]))
        .with_allow_auto_topic_creation(true);
    ok.write_all(&request_frame(ApiKey::Metadata, 9, 1, &meta))
        .unwrap();
    let (cid, m): (i32, MetadataResponse) = response(&mut ok, ApiKey::Metadata, 9);
    assert_eq!(cid, 1);
    assert_eq!(m.topics[0].error_code, 0);

    // Oversized frame (beyond --max-request-bytes): that connection is closed.
    let mut c = connect(&broker.addr);
    c.write_all(&(10_000_000i32).to_be_bytes()).unwrap();
    assert!(closed(&mut c), "oversized frame closes the connection");
    // Garbage bytes.
    let mut c = connect(&broker.addr);
    c.write_all(&[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o'])
        .unwrap();
    assert!(closed(&mut c), "garbage closes the connection");
    // Unknown API key.
    let mut c = connect(&broker.addr);
    c.write_all(&[0, 0, 0, 10, 0x03, 0xe7, 0, 0, 0, 0, 0, 7, 0, 0])
        .unwrap();
    assert!(closed(&mut c), "unknown API key closes the connection");
    // A 30-byte Produce claiming 2^31 topics: the codec would reserve hundreds of GiB.
    let mut c = connect(&broker.addr);
    let mut evil = vec![0, 0, 0, 7, 0, 0, 0, 1, 0xff, 0xff]; // Produce v7, correlation 1, no client id
    evil.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0x03, 0xe8]); // no transactional id, acks -1, timeout
    evil.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]); // topic count
    evil.extend_from_slice(&[0; 8]);
    let mut frame = (evil.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&evil);
    c.write_all(&frame).unwrap();
    assert!(
        closed(&mut c),
        "an absurd array length closes only that connection"
    );
    // A truncated request, then a disconnect mid-frame.
    let mut c = connect(&broker.addr);
    c.write_all(&[0, 0, 1, 0, 0, 18, 0]).unwrap();
    drop(c);

    // ApiVersions at an unsupported version: error 35 with a v0 body listing versions.
    let mut c = connect(&broker.addr);
    c.write_all(
        &request_frame(
            ApiKey::ApiVersions,
            3,
            5,
            &ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
                .with_client_software_version(StrBytes::from_static_str("1.0")),
        )
        .into_iter()
        .enumerate()
        .map(|(i, b)| if i == 7 { 99 } else { b })
        .collect::<Vec<u8>>(),
    )
    .unwrap();
    let mut f = read_frame(&mut c).expect("error answer, not a closed connection");
    assert_eq!(f.get_i32(), 5, "correlation id echoed");
    let v0 = ApiVersionsResponse::decode(&mut f, 0).unwrap();
    assert_eq!(v0.error_code, 35);
    let produce_range = v0
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Produce as i16)
        .expect("Produce listed");
    // Listed from v0, as Kafka 4.0 lists it (librdkafka up to 2.11 turns
    // compression off otherwise); v0-v2 are refused when sent (below).
    assert!(produce_range.min_version == 0 && produce_range.max_version >= 7);

    // Corrupt batch (bad CRC), unknown partition, then a good produce: same connection.
    let good = batch(&["one", "two"]);
    let mut corrupt = good.to_vec();
    let n = corrupt.len();
    corrupt[n - 1] ^= 0xff;
    ok.write_all(&request_frame(
        ApiKey::Produce,
        7,
        2,
        &produce("bad", 0, Bytes::from(corrupt)),
    ))
    .unwrap();
    ok.write_all(&request_frame(
        ApiKey::Produce,
        7,
        3,
        &produce("bad", 99, good.clone()),
    ))
    .unwrap();
    ok.write_all(&request_frame(
        ApiKey::Produce,
        7,
        4,
        &produce("bad", 0, good.clone()),
    ))
    .unwrap();
    let (c2, r2): (i32, ProduceResponse) = response(&mut ok, ApiKey::Produce, 7);
    let (c3, r3): (i32, ProduceResponse) = response(&mut ok, ApiKey::Produce, 7);
    let (c4, r4): (i32, ProduceResponse) = response(&mut ok, ApiKey::Produce, 7);
    assert_eq!((c2, c3, c4), (2, 3, 4), "responses in request order");
    assert_eq!(partition_result(&r2).0, 2, "CORRUPT_MESSAGE for a bad CRC");
    assert_eq!(partition_result(&r3).0, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    assert_eq!(
        partition_result(&r4),
        (0, 0),
        "the good batch lands at offset 0"
    );

    // acks=0: the produce is applied but gets no response; the next response is the next request's.
    let mut quiet = produce("bad", 0, batch(&["three"]));
    quiet.acks = 0;
    ok.write_all(&request_frame(ApiKey::Produce, 7, 6, &quiet))
        .unwrap();
    ok.write_all(&request_frame(ApiKey::Metadata, 9, 7, &meta))
        .unwrap();
    let (cid, _): (i32, MetadataResponse) = response(&mut ok, ApiKey::Metadata, 9);
    assert_eq!(cid, 7, "no response for acks=0");
    let mut odd = produce("bad", 0, batch(&["never"]));
    odd.acks = 5;
    let r = send_produce(&mut ok, 7, 8, &odd);
    assert_eq!(partition_result(&r).0, 21, "INVALID_REQUIRED_ACKS");

    // Everyone else is still served, and nothing acknowledged was lost.
    let out = kcat(
        &[
            "-C",
            "-b",
            &broker.addr,
            "-t",
            "bad",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%o:%s\n",
        ],
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0:one\n1:two\n2:three\n"
    );
}

#[test]
fn pipelined_produces_are_answered_in_order_and_share_group_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = streamline::config::Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.storage.data_dir = tmp.path().join("data");
    config.wal.engine.sync_mode = streamline::wal::SyncMode::EveryWrite;
    config.wal.engine.max_file_size = 1 << 20;
    // As the broker binary does: `STREAMLINE_WAL_BACKEND=std` (test.sh's
    // second pass of the broker suites) picks the backend of this in-process
    // broker too.
    config.wal.engine.backend_from_env = true;
    let storage = streamline::storage::TopicManager::new(config).unwrap();
    storage.create_topic("pipe", 1).unwrap();
    let server = rt
        .block_on(streamline::server::Server::bind(storage.clone()))
        .unwrap();
    let addr = server.local_addr().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    const N: i32 = 64;
    let mut s = connect(&addr);
    let mut all = Vec::new();
    for i in 0..N {
        all.extend(request_frame(
            ApiKey::Produce,
            8,
            100 + i,
            &produce("pipe", 0, batch(&[&format!("m{i}")])),
        ));
    }
    s.write_all(&all).unwrap();
    for i in 0..N {
        let (cid, r): (i32, ProduceResponse) = response(&mut s, ApiKey::Produce, 8);
        assert_eq!(cid, 100 + i, "responses leave in request order");
        assert_eq!(
            partition_result(&r),
            (0, i64::from(i)),
            "offsets follow request order"
        );
    }
    let stats = storage.wal().expect("WAL enabled").stats();
    assert_eq!(stats.entries, N as u64);
    assert!(
        stats.fsyncs < N as u64 / 2,
        "pipelined every_write produces share fdatasyncs: {stats:?}"
    );

    let _ = stop_tx.send(());
    rt.block_on(serving).unwrap();
    storage.shutdown().unwrap();
}

#[test]
fn fetch_long_polls_returns_empty_not_null_and_list_offsets_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--wal-sync-mode",
            "every_write",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let mut c = connect(&broker.addr);
    let r = send_produce(&mut c, 7, 1, &produce("poll", 0, batch(&["first"])));
    // Auto-creation happens through Metadata; a produce to an unknown topic is refused.
    assert_eq!(partition_result(&r).0, 3);
    let meta = MetadataRequest::default()
        .with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("poll")))),
        ]))
        .with_allow_auto_topic_creation(true);
    c.write_all(&request_frame(ApiKey::Metadata, 12, 2, &meta))
        .unwrap();
    let (_, m): (i32, MetadataResponse) = response(&mut c, ApiKey::Metadata, 12);
    assert_eq!(m.topics[0].error_code, 0);
    assert_eq!(m.controller_id.0, 0, "this broker is the controller");
    let r = send_produce(&mut c, 7, 3, &produce("poll", 0, batch(&["first"])));
    assert_eq!(partition_result(&r), (0, 0));

    // At the high watermark with a short wait: an empty record set, never null.
    let start = std::time::Instant::now();
    c.write_all(&request_frame(
        ApiKey::Fetch,
        12,
        4,
        &fetch_request("poll", 1, 200),
    ))
    .unwrap();
    let (_, f): (i32, FetchResponse) = response(&mut c, ApiKey::Fetch, 12);
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(
        p.records.as_ref().map(Bytes::len),
        Some(0),
        "empty, not null"
    );
    assert_eq!(
        (p.high_watermark, p.last_stable_offset),
        (1, 1),
        "last stable offset = high watermark"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "waited for max_wait_ms"
    );

    // A long poll is answered as soon as another client produces.
    let mut waiter = connect(&broker.addr);
    let before = broker_support::fetch_reads(&broker);
    waiter
        .write_all(&request_frame(
            ApiKey::Fetch,
            12,
            5,
            &fetch_request("poll", 1, 10_000),
        ))
        .unwrap();
    broker_support::await_long_poll(&broker, before);
    let start = std::time::Instant::now();
    let r = send_produce(&mut c, 7, 6, &produce("poll", 0, batch(&["second"])));
    assert_eq!(partition_result(&r), (0, 1));
    let (_, f): (i32, FetchResponse) = response(&mut waiter, ApiKey::Fetch, 12);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "woken by the produce, not by max_wait_ms"
    );
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.high_watermark, 2);
    let records = p.records.clone().expect("records");
    assert_eq!(
        &records[..8],
        &1i64.to_be_bytes(),
        "the batch starts at offset 1"
    );

    // Beyond the end: OFFSET_OUT_OF_RANGE.
    c.write_all(&request_frame(
        ApiKey::Fetch,
        12,
        7,
        &fetch_request("poll", 5, 100),
    ))
    .unwrap();
    let (_, f): (i32, FetchResponse) = response(&mut c, ApiKey::Fetch, 12);
    assert_eq!(f.responses[0].partitions[0].error_code, 1);

    // ListOffsets: earliest 0, latest 2.
    let offs = list_offsets(&mut c, "poll", &[-2, -1, 1_600_000_000_000]);
    assert_eq!(
        offs,
        vec![0, 2, 0],
        "earliest, latest, first batch at or after a timestamp"
    );
}

#[test]
fn metadata_advertises_the_right_address_and_a_stable_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let m = metadata_of(&broker.addr);
    let port: i32 = broker.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(m.brokers.len(), 1);
    assert_eq!(
        (m.brokers[0].host.to_string(), m.brokers[0].port),
        ("127.0.0.1".to_string(), port),
        "the real listen port"
    );
    assert_eq!(m.controller_id, m.brokers[0].node_id);
    let cluster = m.cluster_id.clone().expect("cluster id");
    assert!(broker.sigterm().success());

    let broker = Broker::start(&data, &["--advertised-addr", "broker.example:19092"]);
    let m = metadata_of(&broker.addr);
    assert_eq!(
        (m.brokers[0].host.to_string(), m.brokers[0].port),
        ("broker.example".to_string(), 19092)
    );
    assert_eq!(
        m.cluster_id,
        Some(cluster),
        "the cluster id survives restarts"
    );
    assert_eq!(m.brokers[0].node_id.0, 0);
}

/// This machine's host name (gethostname).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(r, 0, "gethostname");
    let len = buf.iter().position(|&b| b == 0).expect("NUL-terminated");
    String::from_utf8(buf[..len].to_vec()).expect("UTF-8 host name")
}

/// Listening on every interface (`0.0.0.0`) without --advertised-addr, the
/// broker advertises this machine's host name, as Kafka does, with a warning:
/// not the loopback address, which sends every other machine's clients to
/// themselves. --advertised-addr still wins.
#[test]
fn a_wildcard_listen_advertises_the_host_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut broker = Broker::start(&data, &["--listen", "0.0.0.0:0"]);
    let port: i32 = broker.addr.rsplit(':').next().unwrap().parse().unwrap();
    let m = metadata_of(&broker.addr);
    let host = host_name();
    assert_ne!(host, "127.0.0.1");
    assert_eq!(
        (m.brokers[0].host.to_string(), m.brokers[0].port),
        (host.clone(), port),
        "the host name and the bound port"
    );
    let log = broker.log_text();
    assert!(
        log.contains("advertising this machine's host name") && log.contains(&host),
        "{log}"
    );
    assert!(broker.sigterm().success());

    let broker = Broker::start(
        &data,
        &[
            "--listen",
            "0.0.0.0:0",
            "--advertised-addr",
            "broker.example:19092",
        ],
    );
    let m = metadata_of(&broker.addr);
    assert_eq!(
        (m.brokers[0].host.to_string(), m.brokers[0].port),
        ("broker.example".to_string(), 19092)
    );
}

/// CreateTopics answers each topic on its own: what this single-node broker cannot
/// honour gets the matching error code and a message, a dry run creates nothing,
/// and the valid topic is created. DeleteTopics deletes known topics and reports
/// unknown ones; both outcomes survive a restart.
#[test]
fn create_topics_checks_each_topic_and_delete_reports_unknown_ones() {
    use kafka_protocol::messages::{
        create_topics_request::{CreatableReplicaAssignment, CreatableTopic},
        BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
        DeleteTopicsResponse,
    };
    let topic = |name: &'static str, partitions: i32, rf: i16| {
        CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(rf)
    };
    let create = |addr: &str, topics: Vec<CreatableTopic>, validate_only: bool| {
        let mut c = connect(addr);
        let req = CreateTopicsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(10_000)
            .with_validate_only(validate_only);
        c.write_all(&request_frame(ApiKey::CreateTopics, 4, 7, &req))
            .unwrap();
        let (id, r) = response::<CreateTopicsResponse>(&mut c, ApiKey::CreateTopics, 4);
        assert_eq!(id, 7);
        r.topics
            .iter()
            .map(|t| {
                let msg = t.error_message.as_ref().map(|m| m.to_string());
                (t.name.0.to_string(), t.error_code, msg)
            })
            .collect::<Vec<_>>()
    };
    let names = |addr: &str| {
        let mut v: Vec<(String, usize)> = metadata_of(addr)
            .topics
            .iter()
            .map(|t| (t.name.as_ref().unwrap().0.to_string(), t.partitions.len()))
            .collect();
        v.sort();
        v
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut broker = Broker::start(&data, &["--auto-create-topics", "false"]);

    // A dry run checks and creates nothing.
    let dry = create(&broker.addr, vec![topic("dry", 2, 1)], true);
    assert_eq!(dry, vec![("dry".into(), 0, None)]);
    assert_eq!(names(&broker.addr), vec![]);

    let results = create(
        &broker.addr,
        vec![
            topic("orders", 3, -1),
            topic("bad name!", 1, 1),
            topic("replicated", 1, 3),
            topic("empty", 0, 1),
            topic("huge", 10_001, 1),
            topic("placed", 1, -1).with_assignments(vec![CreatableReplicaAssignment::default()
                .with_partition_index(0)
                .with_broker_ids(vec![BrokerId(1)])]),
        ],
        false,
    );
    let codes: Vec<(&str, i16)> = results.iter().map(|(n, c, _)| (n.as_str(), *c)).collect();
    assert_eq!(
        codes,
        vec![
            ("orders", 0),
            ("bad name!", 17),  // INVALID_TOPIC_EXCEPTION
            ("replicated", 38), // INVALID_REPLICATION_FACTOR
            ("empty", 37),      // INVALID_PARTITIONS
            ("huge", 37),
            // INVALID_REQUEST: a manual assignment beside a partition count,
            // as Kafka answers it.
            ("placed", 42),
        ]
    );
    for (name, code, msg) in &results[1..] {
        assert!(
            msg.as_ref().is_some_and(|m| !m.is_empty()),
            "{name} ({code}): no message"
        );
    }
    assert_eq!(
        create(&broker.addr, vec![topic("orders", 1, 1)], false),
        vec![(
            "orders".into(),
            36, // TOPIC_ALREADY_EXISTS
            Some("topic orders already exists".into())
        )]
    );
    // Whatever else the request asks for, as Kafka judges it: applications
    // that create their topics at start take TOPIC_ALREADY_EXISTS as success.
    for (partitions, replication) in [(0, 1), (1, 3)] {
        assert_eq!(
            create(
                &broker.addr,
                vec![topic("orders", partitions, replication)],
                false
            )[0]
            .1,
            36,
            "{partitions} partitions, replication factor {replication}"
        );
    }
    assert_eq!(names(&broker.addr), vec![("orders".into(), 3)]);
    // The default partition count: -1 asks for the broker's.
    assert_eq!(
        create(&broker.addr, vec![topic("defaults", -1, -1)], false)[0].1,
        0
    );

    let mut c = connect(&broker.addr);
    let req = DeleteTopicsRequest::default()
        .with_topic_names(vec![
            TopicName(StrBytes::from_static_str("orders")),
            TopicName(StrBytes::from_static_str("missing")),
        ])
        .with_timeout_ms(10_000);
    c.write_all(&request_frame(ApiKey::DeleteTopics, 4, 9, &req))
        .unwrap();
    let (_, r) = response::<DeleteTopicsResponse>(&mut c, ApiKey::DeleteTopics, 4);
    let deleted: Vec<(String, i16)> = r
        .responses
        .iter()
        .map(|t| (t.name.as_ref().unwrap().0.to_string(), t.error_code))
        .collect();
    assert_eq!(
        deleted,
        vec![("orders".into(), 0), ("missing".into(), 3)] // UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(names(&broker.addr), vec![("defaults".into(), 1)]);

    assert!(broker.sigterm().success());
    let broker = Broker::start(&data, &["--auto-create-topics", "false"]);
    assert_eq!(names(&broker.addr), vec![("defaults".into(), 1)]);
}

/// CreateTopics v5 and later (advertised up to v7) describe each created topic: its
/// partition count (the broker's default for -1), replication factor 1 and its
/// (empty) config list; a dry run describes the topic it would create; a failed
/// topic keeps -1 for both, as in Kafka. From v7 a created topic carries the id
/// Metadata reports for it, a dry run or a failure the nil id.
#[test]
fn create_topics_v5_and_later_describe_the_created_topic() {
    use kafka_protocol::messages::{
        create_topics_request::CreatableTopic, create_topics_response::CreatableTopicResult,
        CreateTopicsRequest, CreateTopicsResponse,
    };
    let topic = |name: &'static str, partitions: i32, rf: i16| {
        CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(rf)
    };
    let create = |addr: &str, version: i16, topics: Vec<CreatableTopic>, validate_only: bool| {
        let mut c = connect(addr);
        let req = CreateTopicsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(10_000)
            .with_validate_only(validate_only);
        c.write_all(&request_frame(ApiKey::CreateTopics, version, 3, &req))
            .unwrap();
        let (id, r) = response::<CreateTopicsResponse>(&mut c, ApiKey::CreateTopics, version);
        assert_eq!(id, 3);
        r.topics
    };
    // (name, error code, partitions, replication factor, configs)
    let described = |r: &CreatableTopicResult| {
        (
            r.name.0.to_string(),
            r.error_code,
            r.num_partitions,
            r.replication_factor,
            r.configs.as_ref().map(Vec::len),
        )
    };
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &["--auto-create-topics", "false", "--default-partitions", "3"],
    );

    let mut c = connect(&broker.addr);
    c.write_all(&request_frame(
        ApiKey::ApiVersions,
        3,
        1,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
            .with_client_software_version(StrBytes::from_static_str("1.0")),
    ))
    .unwrap();
    let (_, v) = response::<ApiVersionsResponse>(&mut c, ApiKey::ApiVersions, 3);
    let range = v
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::CreateTopics as i16)
        .map(|k| (k.min_version, k.max_version));
    assert_eq!(range, Some((2, 7)));

    let r = create(
        &broker.addr,
        5,
        vec![
            topic("defaults", -1, -1),
            topic("two", 2, 1),
            topic("bad name!", -1, -1),
            topic("replicated", 1, 3),
        ],
        false,
    );
    assert_eq!(
        r.iter().map(described).collect::<Vec<_>>(),
        vec![
            ("defaults".into(), 0, 3, 1, Some(14)),
            ("two".into(), 0, 2, 1, Some(14)),
            ("bad name!".into(), 17, -1, -1, Some(0)),
            ("replicated".into(), 38, -1, -1, Some(0)),
        ]
    );
    assert_eq!(r[0].error_message, None);
    assert_eq!(
        create(&broker.addr, 6, vec![topic("dry", -1, -1)], true)
            .iter()
            .map(described)
            .collect::<Vec<_>>(),
        vec![("dry".into(), 0, 3, 1, Some(14))],
        "a dry run describes the topic it would create"
    );

    let r = create(
        &broker.addr,
        7,
        vec![topic("v7", 4, -1), topic("defaults", 1, 1)],
        false,
    );
    assert_eq!(
        r.iter().map(described).collect::<Vec<_>>(),
        vec![
            ("v7".into(), 0, 4, 1, Some(14)),
            ("defaults".into(), 36, -1, -1, Some(0)), // TOPIC_ALREADY_EXISTS
        ]
    );
    assert_eq!(r[1].topic_id, uuid::Uuid::nil());
    let dry = create(&broker.addr, 7, vec![topic("dry", -1, -1)], true);
    assert_eq!((dry[0].error_code, dry[0].topic_id), (0, uuid::Uuid::nil()));

    let m = metadata_of(&broker.addr);
    let mut topics: Vec<(String, usize)> = m
        .topics
        .iter()
        .map(|t| (t.name.as_ref().unwrap().0.to_string(), t.partitions.len()))
        .collect();
    topics.sort();
    assert_eq!(
        topics,
        vec![("defaults".into(), 3), ("two".into(), 2), ("v7".into(), 4)],
        "created as described, dry runs not at all"
    );
    let v7_id = m
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "v7"))
        .map(|t| t.topic_id);
    assert_ne!(r[0].topic_id, uuid::Uuid::nil());
    assert_eq!(Some(r[0].topic_id), v7_id, "v7 reports the topic's id");
}

#[test]
fn fetch_responses_are_capped_by_fetch_max_bytes_but_always_carry_a_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--fetch-max-bytes", "600k"]);
    let mut c = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut c, "big", true), 0);
    let value = "x".repeat(256 * 1024);
    for i in 0..8 {
        let r = send_produce(&mut c, 7, i, &produce("big", 0, batch(&[value.as_str()])));
        assert_eq!(partition_result(&r), (0, i64::from(i)));
    }
    let records_of = |c: &mut std::net::TcpStream, max: i32, cid: i32| {
        let mut f = fetch_request("big", 0, 0);
        f.max_bytes = max;
        f.topics[0].partitions[0].partition_max_bytes = max;
        c.write_all(&request_frame(ApiKey::Fetch, 12, cid, &f))
            .unwrap();
        let (_, r): (i32, FetchResponse) = response(c, ApiKey::Fetch, 12);
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0);
        p.records.as_ref().map_or(0, |b| b.len())
    };
    // The client asks for everything: the broker's cap holds (two 256 KiB batches).
    let n = records_of(&mut c, i32::MAX, 100);
    assert!(
        (2 * 256 * 1024..=600 * 1024).contains(&n),
        "{n} bytes for a client asking for 2 GiB with --fetch-max-bytes 600k"
    );
    // Below the cap, the client's own limit holds.
    let n = records_of(&mut c, 300 * 1024, 101);
    assert!(
        (256 * 1024..300 * 1024).contains(&n),
        "{n} bytes for a client asking for 300 KiB"
    );
    // A limit smaller than one batch still gets that batch (consumers progress).
    let n = records_of(&mut c, 1024, 102);
    assert!(
        n > 256 * 1024 && n < 2 * 256 * 1024,
        "{n} bytes for a 1 KiB limit"
    );
}

/// InitProducerId at `version`: (error code, producer id, epoch).
fn init_producer_id(s: &mut TcpStream, version: i16, txn: Option<&str>) -> (i16, i64, i16) {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(txn.map(|t| TransactionalId(StrBytes::from_string(t.into()))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    s.write_all(&request_frame(ApiKey::InitProducerId, version, 7, &req))
        .unwrap();
    let (_, r): (i32, InitProducerIdResponse) = response(s, ApiKey::InitProducerId, version);
    (r.error_code, r.producer_id.0, r.producer_epoch)
}

fn produce_once(s: &mut TcpStream, records: Bytes) -> (i16, i64) {
    produce_to(s, "idem", 0, records)
}

/// Produce v8 of `records` to `topic`/`partition`: (error code, base offset).
fn produce_to(s: &mut TcpStream, topic: &str, partition: i32, records: Bytes) -> (i16, i64) {
    let r = send_produce(s, 8, 9, &produce(topic, partition, records));
    partition_result(&r)
}

#[test]
fn idempotent_produces_are_deduplicated_and_kept_in_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(
        &tmp.path().join("data"),
        &["--wal-sync-mode", "every_write"],
    );
    let mut s = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut s, "idem", true), 0);

    s.write_all(&request_frame(
        ApiKey::ApiVersions,
        3,
        1,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
            .with_client_software_version(StrBytes::from_static_str("1.0")),
    ))
    .unwrap();
    let (_, v): (i32, ApiVersionsResponse) = response(&mut s, ApiKey::ApiVersions, 3);
    let init = v
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::InitProducerId as i16)
        .expect("InitProducerId advertised");
    assert_eq!((init.min_version, init.max_version), (0, 4));

    let (e0, pid, epoch) = init_producer_id(&mut s, 1, None);
    let (e1, pid2, _) = init_producer_id(&mut s, 4, None);
    assert_eq!((e0, e1, epoch), (0, 0, 0));
    assert!(pid >= 0 && pid2 != pid, "a new id each time: {pid} {pid2}");
    assert_eq!(
        init_producer_id(&mut s, 4, Some("txn")).0,
        42,
        "transactions are not supported"
    );

    let first = idempotent_batch(&["a", "b", "c"], pid, 0, 0);
    assert_eq!(produce_once(&mut s, first.clone()), (0, 0));
    assert_eq!(produce_once(&mut s, first.clone()), (0, 0), "a retry");
    let second = idempotent_batch(&["d"], pid, 0, 3);
    // The batch and its retry pipelined: the retry is answered once the original
    // is durable, with its offset.
    let mut both = request_frame(ApiKey::Produce, 8, 20, &produce("idem", 0, second.clone()));
    both.extend(request_frame(
        ApiKey::Produce,
        8,
        21,
        &produce("idem", 0, second),
    ));
    s.write_all(&both).unwrap();
    for cid in [20, 21] {
        let (c, r): (i32, ProduceResponse) = response(&mut s, ApiKey::Produce, 8);
        assert_eq!((c, partition_result(&r)), (cid, (0, 3)));
    }
    assert_eq!(
        produce_once(&mut s, idempotent_batch(&["x"], pid, 0, 5)).0,
        45,
        "a gap in the sequence"
    );
    let third = idempotent_batch(&["e"], pid, 1, 0);
    assert_eq!(produce_once(&mut s, third.clone()), (0, 4), "a new epoch");
    assert_eq!(
        produce_once(&mut s, idempotent_batch(&["y"], pid, 0, 4)).0,
        47,
        "the old epoch is fenced"
    );

    // After a restart the producer's last batches are known again.
    drop(s);
    assert!(broker.sigterm().success());
    let broker = broker.restart();
    let mut s = connect(&broker.addr);
    assert_eq!(produce_once(&mut s, third), (0, 4));
    assert_eq!(
        produce_once(&mut s, batch(&["plain"])),
        (0, 5),
        "nothing stored twice"
    );
    assert_eq!(
        produce_once(&mut s, idempotent_batch(&["f"], pid, 1, 1)),
        (0, 6)
    );
    let (_, pid3, _) = init_producer_id(&mut s, 4, None);
    assert!(pid3 > pid2, "ids are not reused after a restart: {pid3}");
}

/// ListOffsets v7 of partition 0 of `topic` for each of `timestamps` (-2
/// earliest, -1 latest): the offsets answered.
fn list_offsets(s: &mut TcpStream, topic: &str, timestamps: &[i64]) -> Vec<i64> {
    list_offsets_with_timestamps(s, topic, timestamps)
        .into_iter()
        .map(|(offset, _)| offset)
        .collect()
}

/// ListOffsets v7 of partition 0 of `topic` at `timestamp`: the partition's
/// answer (one request per lookup: a partition named twice in one request is
/// answered INVALID_REQUEST).
fn list_offsets_response(
    s: &mut TcpStream,
    topic: &str,
    timestamp: i64,
) -> ListOffsetsPartitionResponse {
    let lo = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(timestamp)])]);
    s.write_all(&request_frame(ApiKey::ListOffsets, 7, 8, &lo))
        .unwrap();
    let (_, mut l): (i32, ListOffsetsResponse) = response(s, ApiKey::ListOffsets, 7);
    l.topics.remove(0).partitions.remove(0)
}

#[test]
fn list_offsets_finds_records_by_timestamp_and_the_newest_one() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut s = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut s, "ts", true), 0);
    let empty = list_offsets_with_timestamps(&mut s, "ts", &[-3, 0]);
    assert_eq!(empty, vec![(-1, -1), (-1, -1)], "nothing to find");
    // Found nothing: no leader epoch either (-1), as Kafka answers; Java's
    // Admin.listOffsets gives it to the application.
    for t in [-3, 0] {
        assert_eq!(list_offsets_response(&mut s, "ts", t).leader_epoch, -1);
    }
    let t = 1_750_000_000_000;
    // Offsets 0-2 in one batch (timestamps out of order), 3-4 in the next.
    for (records, base) in [
        (vec![(t, "a"), (t + 5000, "b"), (t + 2000, "c")], 0),
        (vec![(t + 3000, "d"), (t + 5000, "e")], 3),
    ] {
        assert_eq!(
            produce_to(&mut s, "ts", 0, timed_batch(&records)),
            (0, base)
        );
    }
    let got = list_offsets_with_timestamps(
        &mut s,
        "ts",
        &[
            -2,
            -1,
            -3,
            t - 1,
            t + 1,
            t + 2500,
            t + 4000,
            t + 5000,
            t + 5001,
        ],
    );
    assert_eq!(
        got,
        vec![
            (0, -1),
            (5, -1),
            (1, t + 5000), // the first record with the largest timestamp
            (0, t),
            (1, t + 5000), // the first record at or after, with its own timestamp
            (1, t + 5000),
            (1, t + 5000),
            (1, t + 5000),
            (-1, -1),
        ]
    );
    let epochs: Vec<i32> = [-2, -1, -3, t, t + 5001]
        .into_iter()
        .map(|ts| list_offsets_response(&mut s, "ts", ts).leader_epoch)
        .collect();
    assert_eq!(epochs, vec![0, 0, 0, 0, -1]);
}

/// ListOffsets of partition 0 of `topic`: (offset, timestamp) per timestamp asked.
fn list_offsets_with_timestamps(
    s: &mut TcpStream,
    topic: &str,
    timestamps: &[i64],
) -> Vec<(i64, i64)> {
    timestamps
        .iter()
        .map(|t| {
            let p = list_offsets_response(s, topic, *t);
            (p.offset, p.timestamp)
        })
        .collect()
}

/// ListOffsets earliest and latest of partition 0 of `topic`.
fn earliest_latest(s: &mut TcpStream, topic: &str) -> (i64, i64) {
    let o = list_offsets(s, topic, &[-2, -1]);
    (o[0], o[1])
}

#[test]
fn retention_deletes_old_segments_and_consumers_start_after_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--segment-bytes",
            "4096",
            "--log-retention-bytes",
            "8k",
            // The batches carry 2023 timestamps: by age, everything would go.
            "--log-retention-ms",
            "-1",
            "--log-retention-check-interval-ms",
            "100",
            "--checkpoint-ms",
            "50",
        ],
    );
    let mut s = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut s, "ret", true), 0);
    let pad = "x".repeat(1500);
    for i in 0..20 {
        assert_eq!(
            produce_to(&mut s, "ret", 0, batch(&[&format!("{i:02}-{pad}")])),
            (0, i64::from(i))
        );
    }
    // 2 batches (~1.6 KiB each) per 4 KiB segment, 10 segments; retention
    // deletes the oldest while at least 8 KiB stay: 7 go, the log starts at
    // 14. A segment becomes deletable once a checkpoint covers it, so one pass
    // may delete some and a later one the rest (after a stalled checkpoint,
    // maybe much later): wait until the log start has reached 14 and held for
    // 5 retention intervals (a start beyond it would show), or the deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = (0, 0);
    let mut since = std::time::Instant::now();
    let (start, end) = loop {
        let now = earliest_latest(&mut s, "ret");
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        }
        let settled = now.0 >= 14 && since.elapsed() >= Duration::from_millis(500);
        if settled || std::time::Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(end, 20);
    assert_eq!(
        start, 14,
        "the oldest segments were deleted, at least 8 KiB kept"
    );
    // Below the log start: OFFSET_OUT_OF_RANGE with the new start.
    s.write_all(&request_frame(
        ApiKey::Fetch,
        12,
        30,
        &fetch_request("ret", 0, 0),
    ))
    .unwrap();
    let (_, f): (i32, FetchResponse) = response(&mut s, ApiKey::Fetch, 12);
    let p = &f.responses[0].partitions[0];
    assert_eq!((p.error_code, p.log_start_offset), (1, start));
    // A consumer from the beginning reads exactly what is left, and so does one
    // after a restart.
    for round in 0..2 {
        let lines: Vec<String> = kcat_from_start(&broker.addr, "ret", None)
            .into_iter()
            .map(|(o, v)| format!("{o} {}", &v[..v.find('-').unwrap()]))
            .collect();
        let want: Vec<String> = (start..20).map(|o| format!("{o} {o:02}")).collect();
        assert_eq!(lines, want, "round {round}");
        if round == 0 {
            drop(s);
            assert!(broker.sigterm().success());
            broker = broker.restart();
            s = connect(&broker.addr);
            // Several retention passes later, still the same.
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(earliest_latest(&mut s, "ret"), (start, 20));
        }
    }

    // By age: with a 1-hour limit every segment of these 2023 records goes, the
    // active one too (an empty one at the log end takes its place).
    drop(s);
    assert!(broker.sigterm().success());
    drop(broker);
    let broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--segment-bytes",
            "4096",
            "--log-retention-ms",
            "3600000",
            "--log-retention-check-interval-ms",
            "100",
        ],
    );
    let mut s = connect(&broker.addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while earliest_latest(&mut s, "ret").0 == start && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(earliest_latest(&mut s, "ret"), (20, 20));
    // Appends go on at the next offset.
    assert_eq!(produce_to(&mut s, "ret", 0, batch(&["next"])), (0, 20));
}

#[test]
fn describe_configs_answers_for_topics_and_this_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &["--log-retention-ms", "3600000", "--segment-bytes", "1m"],
    );
    let mut s = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut s, "conf", true), 0);
    let resource = |kind: i8, name: &str, keys: Option<&[&str]>| {
        DescribeConfigsResource::default()
            .with_resource_type(kind)
            .with_resource_name(StrBytes::from_string(name.into()))
            .with_configuration_keys(keys.map(|k| {
                k.iter()
                    .map(|k| StrBytes::from_string((*k).into()))
                    .collect()
            }))
    };
    let req = DescribeConfigsRequest::default().with_resources(vec![
        resource(2, "conf", None),
        resource(2, "conf", Some(&["retention.ms", "no.such.key"])),
        resource(2, "missing", None),
        resource(4, "0", None),
        resource(4, "7", None),
        resource(8, "0", None),
        resource(4, "", None),
    ]);
    for version in [1, 4] {
        s.write_all(&request_frame(ApiKey::DescribeConfigs, version, 3, &req))
            .unwrap();
        let (_, r): (i32, DescribeConfigsResponse) =
            response(&mut s, ApiKey::DescribeConfigs, version);
        let codes: Vec<i16> = r.results.iter().map(|x| x.error_code).collect();
        assert_eq!(codes, vec![0, 0, 3, 0, 42, 42, 0], "v{version}");
        // The cluster-wide dynamic defaults (`--entity-default`): none, as
        // Kafka answers without dynamic configs (it listed this broker's
        // static settings as such).
        assert!(r.results[6].configs.is_empty());
        let value = |i: usize, name: &str| {
            r.results[i]
                .configs
                .iter()
                .find(|c| c.name.as_str() == name)
                .map(|c| (c.value.as_ref().unwrap().to_string(), c.config_source))
        };
        // Set on the command line: a static broker config; left alone: a default.
        assert_eq!(value(0, "retention.ms"), Some(("3600000".into(), 4)));
        assert_eq!(value(0, "segment.bytes"), Some(("1048576".into(), 4)));
        assert_eq!(value(0, "retention.bytes"), Some(("-1".into(), 5)));
        assert_eq!(value(0, "cleanup.policy"), Some(("delete".into(), 5)));
        assert_eq!(r.results[1].configs.len(), 1, "only the keys asked for");
        assert_eq!(value(3, "log.retention.ms"), Some(("3600000".into(), 4)));
        assert_eq!(value(3, "num.partitions"), Some(("1".into(), 5)));
        assert_eq!(
            value(3, "offset.metadata.max.bytes"),
            Some(("4096".into(), 5))
        );
        assert_eq!(
            value(3, "streamline.fetch.response.memory.bytes"),
            Some(("268435456".into(), 5))
        );
        assert!(r.results[3].configs.iter().all(|c| c.read_only));
    }
}

/// DescribeConfigs of one topic: (name, value, source, read-only) by name.
fn topic_configs(s: &mut TcpStream, topic: &str) -> Vec<(String, String, i8, bool)> {
    let req =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.into()))]);
    s.write_all(&request_frame(ApiKey::DescribeConfigs, 4, 9, &req))
        .unwrap();
    let (_, r): (i32, DescribeConfigsResponse) = response(s, ApiKey::DescribeConfigs, 4);
    assert_eq!(
        r.results[0].error_code, 0,
        "{:?}",
        r.results[0].error_message
    );
    r.results[0]
        .configs
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                c.value.as_ref().unwrap().to_string(),
                c.config_source,
                c.read_only,
            )
        })
        .collect()
}

/// The value and source of `key` in `configs`.
fn config_of(configs: &[(String, String, i8, bool)], key: &str) -> (String, i8) {
    configs
        .iter()
        .find(|c| c.0 == key)
        .map(|c| (c.1.clone(), c.2))
        .unwrap_or_else(|| panic!("no {key} in {configs:?}"))
}

#[test]
fn topic_configs_are_created_altered_described_and_kept() {
    use kafka_protocol::messages::{
        alter_configs_request::{AlterConfigsResource, AlterableConfig},
        create_topics_request::{CreatableTopic, CreatableTopicConfig},
        incremental_alter_configs_request as inc, AlterConfigsRequest, AlterConfigsResponse,
        CreateTopicsRequest, CreateTopicsResponse, IncrementalAlterConfigsRequest,
        IncrementalAlterConfigsResponse,
    };
    let name = |n: &str| StrBytes::from_string(n.into());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // The test's batches carry 2023 timestamps: the broker keeps them forever,
    // a topic with its own retention.ms does not.
    let args = [
        "--log-retention-ms",
        "-1",
        "--log-retention-check-interval-ms",
        "100",
        "--checkpoint-ms",
        "50",
    ];
    let mut broker = Broker::start(&data, &args);
    let mut s = connect(&broker.addr);

    let topic = |n: &str, configs: &[(&str, &str)]| {
        CreatableTopic::default()
            .with_name(TopicName(name(n)))
            .with_num_partitions(1)
            .with_replication_factor(-1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(name(k))
                            .with_value(Some(name(v)))
                    })
                    .collect(),
            )
    };
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            topic(
                "short",
                &[("retention.ms", "1000"), ("segment.bytes", "4096")],
            ),
            topic("long", &[]),
            topic("compacted", &[("cleanup.policy", "compact,archive")]),
            topic("typo", &[("retention.msec", "1000")]),
            topic("keyed", &[("cleanup.policy", "compact")]),
        ]);
    s.write_all(&request_frame(ApiKey::CreateTopics, 7, 1, &req))
        .unwrap();
    let (_, r): (i32, CreateTopicsResponse) = response(&mut s, ApiKey::CreateTopics, 7);
    let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(
        codes,
        vec![0, 0, 40, 40, 0],
        "INVALID_CONFIG for what cannot be honoured"
    );
    let msg = |i: usize| r.topics[i].error_message.as_ref().unwrap().to_string();
    assert!(msg(2).contains("compact,delete"), "{}", msg(2));
    assert!(msg(3).contains("\"retention.msec\""), "{}", msg(3));
    let created: Vec<(String, Option<String>, i8)> = r.topics[0]
        .configs
        .as_ref()
        .unwrap()
        .iter()
        .filter(|c| c.config_source == 1)
        .map(|c| {
            (
                c.name.to_string(),
                c.value.as_ref().map(ToString::to_string),
                c.config_source,
            )
        })
        .collect();
    assert_eq!(
        created,
        vec![
            ("retention.ms".into(), Some("1000".into()), 1),
            ("segment.bytes".into(), Some("4096".into()), 1),
        ],
        "the response describes the topic's overrides"
    );
    assert_eq!(topic_metadata(&mut s, "compacted", false), 3, "not created");
    assert_eq!(topic_metadata(&mut s, "typo", false), 3, "not created");

    // A compacted topic refuses a record without a key, as Kafka does, naming the
    // record; records with keys go in.
    let r = send_produce(&mut s, 8, 2, &produce("keyed", 0, batch(&["no key"])));
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 87, "INVALID_RECORD");
    let m = p.error_message.as_ref().unwrap().to_string();
    assert!(
        m.contains("compacted topic keyed") && m.contains("without a key"),
        "{m}"
    );
    assert_eq!(p.record_errors.len(), 1);
    assert_eq!(p.record_errors[0].batch_index, 0);
    assert_eq!(
        produce_to(&mut s, "keyed", 0, keyed_batch(&[("k", "v")])),
        (0, 0)
    );

    let configs = topic_configs(&mut s, "short");
    assert_eq!(config_of(&configs, "retention.ms"), ("1000".into(), 1));
    assert_eq!(config_of(&configs, "segment.bytes"), ("4096".into(), 1));
    assert_eq!(config_of(&configs, "retention.bytes"), ("-1".into(), 5));
    assert!(
        configs.iter().all(|c| !c.3),
        "a topic's configs can be altered"
    );
    assert_eq!(
        config_of(&topic_configs(&mut s, "long"), "retention.ms"),
        ("-1".into(), 4)
    );

    // Several segments each; "short" loses every record, its active segment too.
    let pad = "x".repeat(1500);
    for t in ["short", "long"] {
        for i in 0..6 {
            assert_eq!(
                produce_to(&mut s, t, 0, batch(&[&format!("{i}-{pad}")])),
                (0, i64::from(i)),
                "{t}"
            );
        }
    }
    let wait_for_start = |s: &mut TcpStream, t: &str, start: i64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while earliest_latest(s, t).0 != start && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        earliest_latest(s, t)
    };
    assert_eq!(wait_for_start(&mut s, "short", 6), (6, 6));
    assert_eq!(
        earliest_latest(&mut s, "long"),
        (0, 6),
        "the broker keeps them"
    );

    // IncrementalAlterConfigs: each resource all or nothing.
    let op = |k: &str, op: i8, v: Option<&str>| {
        inc::AlterableConfig::default()
            .with_name(name(k))
            .with_config_operation(op)
            .with_value(v.map(name))
    };
    let resource = |kind: i8, n: &str, ops: Vec<inc::AlterableConfig>| {
        inc::AlterConfigsResource::default()
            .with_resource_type(kind)
            .with_resource_name(name(n))
            .with_configs(ops)
    };
    let incremental = |s: &mut TcpStream, validate_only: bool, resources| {
        let req = IncrementalAlterConfigsRequest::default()
            .with_validate_only(validate_only)
            .with_resources(resources);
        s.write_all(&request_frame(ApiKey::IncrementalAlterConfigs, 1, 2, &req))
            .unwrap();
        let (_, r): (i32, IncrementalAlterConfigsResponse) =
            response(s, ApiKey::IncrementalAlterConfigs, 1);
        r.responses
            .iter()
            .map(|x| {
                let m = x
                    .error_message
                    .as_ref()
                    .map_or(String::new(), ToString::to_string);
                (x.resource_name.to_string(), x.error_code, m)
            })
            .collect::<Vec<_>>()
    };
    let r = incremental(
        &mut s,
        false,
        vec![
            resource(
                2,
                "short",
                vec![
                    op("retention.ms", 1, None),
                    op("segment.bytes", 0, Some("8192")),
                ],
            ),
            resource(
                2,
                "long",
                vec![
                    op("retention.ms", 0, Some("1000")),
                    op("cleanup.policy", 2, Some("archive")),
                ],
            ),
            resource(2, "nope", vec![op("retention.ms", 0, Some("1"))]),
            resource(4, "0", vec![op("log.retention.ms", 0, Some("1"))]),
            resource(2, "twice", vec![]),
            resource(2, "twice", vec![]),
            resource(2, "short", vec![op("segment.bytes", 0, Some("100"))]).with_resource_type(8),
        ],
    );
    let codes: Vec<(&str, i16)> = r.iter().map(|x| (x.0.as_str(), x.1)).collect();
    assert_eq!(
        codes,
        vec![
            ("short", 0),
            ("long", 40),
            ("nope", 3),
            ("0", 42),
            ("twice", 42),
            ("twice", 42),
            ("short", 42),
        ],
        "{r:?}"
    );
    assert!(r[1].2.contains("compact,delete"), "{r:?}");
    assert!(r[3].2.contains("flags"), "{r:?}");
    let configs = topic_configs(&mut s, "short");
    assert_eq!(
        config_of(&configs, "retention.ms"),
        ("-1".into(), 4),
        "back to the broker's"
    );
    assert_eq!(config_of(&configs, "segment.bytes"), ("8192".into(), 1));
    assert_eq!(
        config_of(&topic_configs(&mut s, "long"), "retention.ms"),
        ("-1".into(), 4),
        "a refused operation leaves the whole resource unchanged"
    );
    // A dry run checks and stores nothing.
    let dry = vec![resource(
        2,
        "long",
        vec![op("retention.ms", 0, Some("1000"))],
    )];
    assert_eq!(incremental(&mut s, true, dry)[0].1, 0);
    assert_eq!(
        config_of(&topic_configs(&mut s, "long"), "retention.ms"),
        ("-1".into(), 4)
    );

    // AlterConfigs replaces every override of the resource.
    let req = AlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
        .with_resource_type(2)
        .with_resource_name(name("long"))
        .with_configs(vec![
            AlterableConfig::default()
                .with_name(name("retention.ms"))
                .with_value(Some(name("1000"))),
            AlterableConfig::default()
                .with_name(name("max.message.bytes"))
                .with_value(Some(name("1000"))),
        ])]);
    s.write_all(&request_frame(ApiKey::AlterConfigs, 2, 3, &req))
        .unwrap();
    let (_, r): (i32, AlterConfigsResponse) = response(&mut s, ApiKey::AlterConfigs, 2);
    assert_eq!(
        r.responses[0].error_code, 0,
        "{:?}",
        r.responses[0].error_message
    );
    assert_eq!(
        wait_for_start(&mut s, "long", 6),
        (6, 6),
        "the new retention applies"
    );
    // A batch above the topic's max.message.bytes: MESSAGE_TOO_LARGE, saying why.
    let r = send_produce(&mut s, 9, 4, &produce("long", 0, batch(&[&pad])));
    let p = &r.responses[0].partition_responses[0];
    let m = p.error_message.as_ref().unwrap().to_string();
    assert_eq!(p.error_code, 10, "{m}");
    assert!(m.contains("max.message.bytes (1000)"), "{m}");
    let r = send_produce(&mut s, 9, 5, &produce("long", 0, batch(&["small"])));
    assert_eq!(partition_result(&r), (0, 6));
    assert_eq!(
        config_of(&topic_configs(&mut s, "short"), "segment.bytes"),
        ("8192".into(), 1),
        "AlterConfigs of one topic leaves the others alone"
    );

    // Kept across a restart.
    drop(s);
    assert!(broker.sigterm().success());
    broker = broker.restart();
    let mut s = connect(&broker.addr);
    let short = topic_configs(&mut s, "short");
    assert_eq!(config_of(&short, "segment.bytes"), ("8192".into(), 1));
    assert_eq!(config_of(&short, "retention.ms"), ("-1".into(), 4));
    assert_eq!(
        config_of(&topic_configs(&mut s, "long"), "retention.ms"),
        ("1000".into(), 1)
    );
    assert_eq!(earliest_latest(&mut s, "short"), (6, 6));
    // A batch larger than the topic's segment.bytes: RECORD_BATCH_TOO_LARGE,
    // as Kafka's append refuses it (it was stored, in a segment of its own).
    let big = "x".repeat(9000);
    let r = send_produce(&mut s, 9, 6, &produce("short", 0, batch(&[&big])));
    let p = &r.responses[0].partition_responses[0];
    let m = p.error_message.as_ref().unwrap().to_string();
    assert_eq!(p.error_code, 18, "{m}");
    assert!(m.contains("maximum configured segment size of 8192"), "{m}");
    assert_eq!(earliest_latest(&mut s, "short"), (6, 6));
}

/// A topic's new partition count and, optionally, each new partition's
/// replica list.
type Growth<'a> = (&'a str, i32, Option<Vec<Vec<i32>>>);

fn create_partitions(
    s: &mut TcpStream,
    version: i16,
    topics: &[Growth],
    validate_only: bool,
) -> Vec<i16> {
    let req = CreatePartitionsRequest::default()
        .with_timeout_ms(10_000)
        .with_validate_only(validate_only)
        .with_topics(
            topics
                .iter()
                .map(|(name, count, brokers)| {
                    CreatePartitionsTopic::default()
                        .with_name(TopicName(StrBytes::from_string((*name).into())))
                        .with_count(*count)
                        .with_assignments(brokers.as_ref().map(|b| {
                            b.iter()
                                .map(|ids| {
                                    CreatePartitionsAssignment::default().with_broker_ids(
                                        ids.iter()
                                            .map(|id| kafka_protocol::messages::BrokerId(*id))
                                            .collect(),
                                    )
                                })
                                .collect()
                        }))
                })
                .collect(),
        );
    s.write_all(&request_frame(ApiKey::CreatePartitions, version, 5, &req))
        .unwrap();
    let (_, r): (i32, CreatePartitionsResponse) = response(s, ApiKey::CreatePartitions, version);
    r.results.iter().map(|x| x.error_code).collect()
}

fn partition_count(s: &mut TcpStream, topic: &str) -> usize {
    let req = MetadataRequest::default().with_topics(Some(vec![
        kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(topic.into())))),
    ]));
    s.write_all(&request_frame(ApiKey::Metadata, 9, 6, &req))
        .unwrap();
    let (_, m): (i32, MetadataResponse) = response(s, ApiKey::Metadata, 9);
    m.topics[0].partitions.len()
}

#[test]
fn create_partitions_grows_a_topic_durably() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut s = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut s, "grow", true), 0);
    assert_eq!(partition_count(&mut s, "grow"), 1);
    // A dry run changes nothing; bad requests get Kafka's codes.
    assert_eq!(
        create_partitions(&mut s, 3, &[("grow", 3, None)], true),
        vec![0]
    );
    assert_eq!(partition_count(&mut s, "grow"), 1);
    assert_eq!(
        create_partitions(&mut s, 3, &[("grow", 1, None), ("missing", 2, None)], false),
        vec![37, 3]
    );
    for (count, brokers, code) in [
        (3, Some(vec![vec![0], vec![5]]), 39),
        (3, Some(vec![vec![0]]), 39),
        // An empty replica list, this broker twice: refused as in Kafka.
        (3, Some(vec![vec![0], vec![]]), 39),
        (3, Some(vec![vec![0, 0], vec![0]]), 39),
        (20_000, None, 37),
    ] {
        assert_eq!(
            create_partitions(&mut s, 3, &[("grow", count, brokers.clone())], false),
            vec![code],
            "{count} partitions on brokers {brokers:?}"
        );
    }
    // A topic named twice is answered once, INVALID_REQUEST, and not grown.
    assert_eq!(
        create_partitions(&mut s, 3, &[("grow", 2, None), ("grow", 3, None)], false),
        vec![42]
    );
    assert_eq!(partition_count(&mut s, "grow"), 1);
    assert_eq!(
        create_partitions(
            &mut s,
            0,
            &[("grow", 3, Some(vec![vec![0], vec![0]]))],
            false
        ),
        vec![0]
    );
    assert_eq!(partition_count(&mut s, "grow"), 3);
    // The new partitions take produces, and they survive a restart.
    for p in [0, 2] {
        assert_eq!(
            produce_to(&mut s, "grow", p, batch(&[&format!("to {p}")])),
            (0, 0),
            "partition {p}"
        );
    }
    assert_eq!(
        create_partitions(&mut s, 3, &[("grow", 4, None)], false),
        vec![0]
    );
    drop(s);
    assert!(broker.sigterm().success());
    let broker = broker.restart();
    let mut s = connect(&broker.addr);
    assert_eq!(partition_count(&mut s, "grow"), 4);
    s.write_all(&request_frame(
        ApiKey::Fetch,
        12,
        50,
        &fetch_request("grow", 0, 0),
    ))
    .unwrap();
    let (_, f): (i32, FetchResponse) = response(&mut s, ApiKey::Fetch, 12);
    assert_eq!(f.responses[0].partitions[0].high_watermark, 1);
}

/// A long poll waits on the partitions its first read found. Deleting their
/// topic woke no Fetch: one waiting at the end of a topic that was deleted,
/// created again under the same name and produced to slept until its
/// `max_wait` (the new partition's appends did not add up past what the old
/// one had held), then read the new topic from the old one's offset; one on a
/// topic deleted with nothing produced after slept as long. As Kafka
/// completes a delayed fetch whose partition left the broker, the delete now
/// answers it at once, UNKNOWN_TOPIC_OR_PARTITION, and the client looks the
/// topic up again.
#[test]
fn a_long_poll_on_a_deleted_topic_is_answered_at_the_delete() {
    use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--auto-create-topics",
            "false",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let mut s = connect(&broker.addr);
    let delete = |s: &mut TcpStream, name: &str| {
        let req = DeleteTopicsRequest::default()
            .with_topic_names(vec![TopicName(StrBytes::from_string(name.into()))])
            .with_timeout_ms(10_000);
        s.write_all(&request_frame(ApiKey::DeleteTopics, 4, 2, &req))
            .unwrap();
        let (_, r) = response::<DeleteTopicsResponse>(s, ApiKey::DeleteTopics, 4);
        r.responses[0].error_code
    };
    // A long poll of partition 0 of `topic` from `offset`, 20 s at most.
    let long_poll = |topic: &str, offset: i64| {
        let mut waiter = connect(&broker.addr);
        waiter
            .set_read_timeout(Some(Duration::from_secs(40)))
            .unwrap();
        let before = broker_support::fetch_reads(&broker);
        waiter
            .write_all(&request_frame(
                ApiKey::Fetch,
                12,
                3,
                &fetch_request(topic, offset, 20_000),
            ))
            .unwrap();
        // Its first read found nothing and the wait began (a delete before
        // that is answered at once, with or without a wait).
        broker_support::await_long_poll(&broker, before);
        waiter
    };
    // The partition's answer, and how long it took from `since`.
    let answered = |waiter: &mut TcpStream, since: std::time::Instant| {
        let (_, f): (i32, FetchResponse) = response(waiter, ApiKey::Fetch, 12);
        let p = f.responses[0].partitions[0].clone();
        (p, since.elapsed())
    };

    assert_eq!(create_topic(&mut s, "again", 1, &[]), 0);
    for (i, v) in ["a", "b", "c"].into_iter().enumerate() {
        let r = send_produce(&mut s, 7, 10, &produce("again", 0, batch(&[v])));
        assert_eq!(partition_result(&r), (0, i as i64));
    }
    let mut waiter = long_poll("again", 3);
    let since = std::time::Instant::now();
    assert_eq!(delete(&mut s, "again"), 0);
    assert_eq!(create_topic(&mut s, "again", 1, &[]), 0);
    // One batch of five records: the new log's end passes the poll's offset,
    // its bytes stay below the three batches the old partition held.
    let r = send_produce(
        &mut s,
        7,
        11,
        &produce("again", 0, batch(&["1", "2", "3", "4", "5"])),
    );
    assert_eq!(partition_result(&r), (0, 0));
    let (p, took) = answered(&mut waiter, since);
    assert!(
        p.error_code == 3 && took < Duration::from_secs(5),
        "answered after {took:?}: {p:?}"
    );
    assert_eq!(p.records.as_ref().map(Bytes::len), Some(0));

    // A delete with nothing produced after it.
    assert_eq!(create_topic(&mut s, "gone", 1, &[]), 0);
    let mut waiter = long_poll("gone", 0);
    let since = std::time::Instant::now();
    assert_eq!(delete(&mut s, "gone"), 0);
    let (p, took) = answered(&mut waiter, since);
    assert!(
        p.error_code == 3 && took < Duration::from_secs(5),
        "answered after {took:?}: {p:?}"
    );
}

#[test]
fn delete_topics_v6_deletes_by_id_and_v5_explains_failures() {
    use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut s = connect(&broker.addr);
    for t in ["by-id", "by-name"] {
        assert_eq!(topic_metadata(&mut s, t, true), 0);
    }
    let id = metadata_of(&broker.addr)
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "by-id"))
        .map(|t| t.topic_id)
        .unwrap();
    let unknown = uuid::Uuid::from_u128(42);
    let state = |name: Option<&str>, id: uuid::Uuid| {
        kafka_protocol::messages::delete_topics_request::DeleteTopicState::default()
            .with_name(name.map(|n| TopicName(StrBytes::from_string(n.into()))))
            .with_topic_id(id)
    };
    let req = DeleteTopicsRequest::default()
        .with_topics(vec![
            state(None, id),
            state(None, unknown),
            state(Some("by-name"), uuid::Uuid::nil()),
        ])
        .with_timeout_ms(10_000);
    s.write_all(&request_frame(ApiKey::DeleteTopics, 6, 9, &req))
        .unwrap();
    let (_, r) = response::<DeleteTopicsResponse>(&mut s, ApiKey::DeleteTopics, 6);
    let got: Vec<(Option<String>, uuid::Uuid, i16)> = r
        .responses
        .iter()
        .map(|t| {
            (
                t.name.as_ref().map(|n| n.0.to_string()),
                t.topic_id,
                t.error_code,
            )
        })
        .collect();
    assert_eq!(got[0], (Some("by-id".into()), id, 0));
    assert_eq!(got[1], (None, unknown, 100), "UNKNOWN_TOPIC_ID");
    assert_eq!((got[2].0.as_deref(), got[2].2), (Some("by-name"), 0));
    assert!(metadata_of(&broker.addr).topics.is_empty());

    let req = DeleteTopicsRequest::default()
        .with_topic_names(vec![TopicName(StrBytes::from_static_str("by-name"))])
        .with_timeout_ms(10_000);
    s.write_all(&request_frame(ApiKey::DeleteTopics, 5, 10, &req))
        .unwrap();
    let (_, r) = response::<DeleteTopicsResponse>(&mut s, ApiKey::DeleteTopics, 5);
    assert_eq!(r.responses[0].error_code, 3);
    assert_eq!(
        r.responses[0].error_message.as_ref().map(|m| m.to_string()),
        Some("unknown topic by-name".into())
    );

    // A delete that cannot move the topic's directory away (a file takes the
    // trash directory's name) fails with KAFKA_STORAGE_ERROR, naming the
    // path, and the topic stays.
    assert_eq!(topic_metadata(&mut s, "kept", true), 0);
    let trash = tmp.path().join("data/topics-deleted");
    std::fs::remove_dir(&trash).unwrap(); // empty: the deletes above emptied it
    std::fs::write(&trash, b"").unwrap();
    let req = DeleteTopicsRequest::default()
        .with_topic_names(vec![TopicName(StrBytes::from_static_str("kept"))])
        .with_timeout_ms(10_000);
    s.write_all(&request_frame(ApiKey::DeleteTopics, 5, 11, &req))
        .unwrap();
    let (_, r) = response::<DeleteTopicsResponse>(&mut s, ApiKey::DeleteTopics, 5);
    assert_eq!(r.responses[0].error_code, 56, "KAFKA_STORAGE_ERROR");
    let message = r.responses[0].error_message.as_ref().unwrap().to_string();
    assert!(message.contains("topics-deleted"), "{message}");
    let names: Vec<String> = metadata_of(&broker.addr)
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect();
    assert_eq!(names, ["kept"]);
}

#[test]
fn delete_records_answers_each_partition() {
    use kafka_protocol::messages::{
        delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic},
        DeleteRecordsRequest, DeleteRecordsResponse,
    };
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut s = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut s, "dr", true), 0);
    for i in 0..3 {
        assert_eq!(
            produce_to(&mut s, "dr", 0, batch(&["v"])),
            (0, i64::from(i))
        );
    }
    let topic = |name: &str, parts: &[(i32, i64)]| {
        DeleteRecordsTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.into())))
            .with_partitions(
                parts
                    .iter()
                    .map(|&(p, o)| {
                        DeleteRecordsPartition::default()
                            .with_partition_index(p)
                            .with_offset(o)
                    })
                    .collect(),
            )
    };
    let req = DeleteRecordsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            topic("dr", &[(0, 2), (1, 0)]),
            topic("missing", &[(0, 0)]),
        ]);
    for version in [0, 2] {
        s.write_all(&request_frame(ApiKey::DeleteRecords, version, 7, &req))
            .unwrap();
        let (_, r): (i32, DeleteRecordsResponse) = response(&mut s, ApiKey::DeleteRecords, version);
        let got: Vec<(String, i32, i16, i64)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    (
                        t.name.0.to_string(),
                        p.partition_index,
                        p.error_code,
                        p.low_watermark,
                    )
                })
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("dr".into(), 0, 0, 2),
                ("dr".into(), 1, 3, -1),
                ("missing".into(), 0, 3, -1),
            ],
            "v{version}"
        );
    }
    let req = DeleteRecordsRequest::default().with_topics(vec![topic("dr", &[(0, 4)])]);
    s.write_all(&request_frame(ApiKey::DeleteRecords, 2, 8, &req))
        .unwrap();
    let (_, r): (i32, DeleteRecordsResponse) = response(&mut s, ApiKey::DeleteRecords, 2);
    assert_eq!(
        r.topics[0].partitions[0].error_code, 1,
        "above the high watermark"
    );
    assert_eq!(earliest_latest(&mut s, "dr"), (2, 3));
    // A partition named again, in a topic named again: one answer, in the
    // place of its first mention, with the last offset named (as Kafka).
    let req = DeleteRecordsRequest::default().with_topics(vec![
        topic("dr", &[(0, 3), (1, 0)]),
        topic("missing", &[(0, 0)]),
        topic("dr", &[(0, 3), (0, 2)]),
    ]);
    s.write_all(&request_frame(ApiKey::DeleteRecords, 2, 8, &req))
        .unwrap();
    let (_, r): (i32, DeleteRecordsResponse) = response(&mut s, ApiKey::DeleteRecords, 2);
    type Answers = Vec<(i32, i16, i64)>;
    let got: Vec<(String, Answers)> = r
        .topics
        .iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.partitions
                    .iter()
                    .map(|p| (p.partition_index, p.error_code, p.low_watermark))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("dr".into(), vec![(0, 0, 2), (1, 3, -1)]),
            ("missing".into(), vec![(0, 3, -1)]),
        ]
    );
    assert_eq!(earliest_latest(&mut s, "dr"), (2, 3));

    // A topic that only compacts refuses it, as Kafka does (POLICY_VIOLATION);
    // one that compacts and deletes takes it.
    for (name, policy, code, start) in [
        ("compact", "compact", 44, 0),
        ("both", "compact,delete", 0, 1),
    ] {
        assert_eq!(
            create_topic(&mut s, name, 1, &[("cleanup.policy", policy)]),
            0
        );
        for i in 0..2 {
            let b = keyed_batch(&[("k", "v")]);
            assert_eq!(produce_to(&mut s, name, 0, b), (0, i));
        }
        let req = DeleteRecordsRequest::default().with_topics(vec![topic(name, &[(0, 1)])]);
        s.write_all(&request_frame(ApiKey::DeleteRecords, 2, 9, &req))
            .unwrap();
        let (_, r): (i32, DeleteRecordsResponse) = response(&mut s, ApiKey::DeleteRecords, 2);
        assert_eq!(r.topics[0].partitions[0].error_code, code, "{policy}");
        assert_eq!(earliest_latest(&mut s, name), (start, 2), "{policy}");
    }
}

#[test]
fn describe_log_dirs_reports_each_partitions_bytes_and_the_disk() {
    use kafka_protocol::messages::{
        describe_log_dirs_request::DescribableLogDirTopic, DescribeLogDirsRequest,
        DescribeLogDirsResponse,
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = Broker::start(&data, &["--default-partitions", "2"]);
    let mut s = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut s, "dirs", true), 0);
    for i in 0..3 {
        assert_eq!(
            produce_to(&mut s, "dirs", 1, batch(&["abc"])),
            (0, i64::from(i))
        );
    }
    let on_disk = |p: i32| -> i64 {
        std::fs::read_dir(data.join("topics/dirs").join(p.to_string()))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| std::fs::metadata(p).unwrap().len() as i64)
            .sum()
    };
    let ask = |s: &mut TcpStream, version: i16, topics: Option<Vec<DescribableLogDirTopic>>| {
        let req = DescribeLogDirsRequest::default().with_topics(topics);
        s.write_all(&request_frame(ApiKey::DescribeLogDirs, version, 9, &req))
            .unwrap();
        let (_, r): (i32, DescribeLogDirsResponse) = response(s, ApiKey::DescribeLogDirs, version);
        r
    };
    let r = ask(&mut s, 4, None);
    assert_eq!((r.error_code, r.results.len()), (0, 1));
    let dir = &r.results[0];
    assert!(dir.log_dir.ends_with("/topics"), "{}", dir.log_dir);
    assert!(dir.total_bytes > 0 && (0..=dir.total_bytes).contains(&dir.usable_bytes));
    let sizes: Vec<(String, i32, i64)> = dir
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index, p.partition_size))
        })
        .collect();
    assert_eq!(
        sizes,
        vec![("dirs".into(), 0, 0), ("dirs".into(), 1, on_disk(1))]
    );
    assert!(on_disk(1) > 0);
    // Asked by name: unknown topics and partitions are left out.
    let topic = |name: &str, parts: Vec<i32>| {
        DescribableLogDirTopic::default()
            .with_topic(TopicName(StrBytes::from_string(name.into())))
            .with_partitions(parts)
    };
    let r = ask(
        &mut s,
        1,
        Some(vec![topic("dirs", vec![1, 5]), topic("nope", vec![0])]),
    );
    let dir = &r.results[0];
    assert_eq!(dir.topics.len(), 1);
    assert_eq!(dir.topics[0].partitions.len(), 1);
    assert_eq!(dir.topics[0].partitions[0].partition_size, on_disk(1));
}

/// A topic, config resource or group named many times in one request is answered
/// once (with INVALID_REQUEST for CreateTopics, as Kafka does): an answer used to
/// copy a topic's every partition, or its every config, for each repeat, so a few
/// hundred kilobytes of request took the broker gigabytes to answer.
#[test]
fn repeated_names_are_answered_once() {
    use kafka_protocol::messages::{
        create_topics_request::CreatableTopic, metadata_request::MetadataRequestTopic,
        CreateTopicsRequest, CreateTopicsResponse,
    };
    const REPEATS: usize = 10_000;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--default-partitions", "50"]);
    let mut s = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut s, "wide", true), 0);
    let before = broker_support::peak_rss(broker.pid());

    let topic = |name: &str| {
        MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(name.into()))))
    };
    let mut asked = vec![topic("wide"); REPEATS];
    asked.extend([topic("no.such"), topic("wide"), topic("no.such")]);
    let req = MetadataRequest::default()
        .with_topics(Some(asked))
        .with_allow_auto_topic_creation(false);
    for version in [4, 12] {
        s.write_all(&request_frame(ApiKey::Metadata, version, 2, &req))
            .unwrap();
        let (_, m): (i32, MetadataResponse) = response(&mut s, ApiKey::Metadata, version);
        let topics: Vec<(String, i16, usize)> = m
            .topics
            .iter()
            .map(|t| {
                let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                (name, t.error_code, t.partitions.len())
            })
            .collect();
        assert_eq!(
            topics.len(),
            2,
            "Metadata v{version}: {} topic entries for 2 topics",
            topics.len()
        );
        assert_eq!(
            topics,
            vec![("wide".into(), 0, 50), ("no.such".into(), 3, 0)],
            "Metadata v{version}"
        );
    }

    let resource = |keys: Option<Vec<StrBytes>>| {
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("wide"))
            .with_configuration_keys(keys)
    };
    let mut resources = vec![resource(None); REPEATS];
    resources.push(resource(Some(vec![])));
    let retention = || Some(vec![StrBytes::from_static_str("retention.ms")]);
    resources.extend([resource(retention()), resource(retention())]);
    let req = DescribeConfigsRequest::default().with_resources(resources);
    s.write_all(&request_frame(ApiKey::DescribeConfigs, 4, 3, &req))
        .unwrap();
    let (_, r): (i32, DescribeConfigsResponse) = response(&mut s, ApiKey::DescribeConfigs, 4);
    let sizes: Vec<usize> = r.results.iter().map(|x| x.configs.len()).collect();
    assert_eq!(sizes.len(), 2, "every config, then retention.ms: {sizes:?}");
    assert!(sizes[0] > 10 && sizes[1] == 1, "{sizes:?}");

    let create = |name: &str| {
        CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.into())))
            .with_num_partitions(1)
            .with_replication_factor(1)
    };
    let mut topics = vec![create("twice"); REPEATS];
    topics.push(create("once"));
    for validate_only in [true, false] {
        let req = CreateTopicsRequest::default()
            .with_topics(topics.clone())
            .with_timeout_ms(10_000)
            .with_validate_only(validate_only);
        s.write_all(&request_frame(ApiKey::CreateTopics, 7, 4, &req))
            .unwrap();
        let (_, r): (i32, CreateTopicsResponse) = response(&mut s, ApiKey::CreateTopics, 7);
        let results: Vec<(String, i16)> = r
            .topics
            .iter()
            .map(|t| (t.name.0.to_string(), t.error_code))
            .collect();
        assert_eq!(
            results,
            vec![("twice".into(), 42), ("once".into(), 0)],
            "validate only: {validate_only}"
        );
    }
    assert_eq!(
        topic_metadata(&mut s, "twice", false),
        3,
        "a topic named twice is not created"
    );
    let grown = broker_support::peak_rss(broker.pid()).saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "the broker's peak memory grew by {} MiB",
        grown >> 20
    );
}

/// A partition named more than once in a ListOffsets request gets
/// INVALID_REQUEST at every mention, without a lookup, as Kafka answers it. A
/// Fetch reads and answers each partition once, the first time it is named (a
/// topic named again is merged into its first entry): before, each of 99,000
/// repeats was read again (at every change, for a long poll) and answered with
/// its own copy of the records. (A Fetch may list 100,000 partitions in all.)
#[test]
fn repeated_partitions_are_read_and_answered_once() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    const REPEATS: usize = 99_000;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut s = connect(&broker.addr);
    assert_eq!(create_topic(&mut s, "rp", 3, &[]), 0);
    assert_eq!(produce_to(&mut s, "rp", 0, batch(&["v"])), (0, 0));

    let at = |index: i32, timestamp: i64| {
        ListOffsetsPartition::default()
            .with_partition_index(index)
            .with_timestamp(timestamp)
    };
    let topic = |name: &'static str, parts: Vec<ListOffsetsPartition>| {
        ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(name)))
            .with_partitions(parts)
    };
    let req = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![
            topic("rp", vec![at(0, -1), at(1, -1), at(0, -2), at(2, -1)]),
            topic("rp", vec![at(1, -2)]),
            topic("rp", vec![at(0, 0)]),
            topic("no.such", vec![at(1, -1)]),
        ]);
    s.write_all(&request_frame(ApiKey::ListOffsets, 7, 2, &req))
        .unwrap();
    let (_, l): (i32, ListOffsetsResponse) = response(&mut s, ApiKey::ListOffsets, 7);
    let got: Vec<Vec<(i32, i16, i64)>> = l
        .topics
        .iter()
        .map(|t| {
            t.partitions
                .iter()
                .map(|p| (p.partition_index, p.error_code, p.offset))
                .collect()
        })
        .collect();
    assert_eq!(
        got,
        vec![
            vec![(0, 42, -1), (1, 42, -1), (0, 42, -1), (2, 0, 0)],
            vec![(1, 42, -1)],
            vec![(0, 42, -1)],
            vec![(1, 3, -1)],
        ]
    );

    let part = |index: i32| {
        FetchPartition::default()
            .with_partition(index)
            .with_fetch_offset(0)
            .with_partition_max_bytes(1 << 20)
    };
    let mut f = fetch_request("rp", 0, 0);
    let mut parts = vec![part(0); REPEATS];
    parts.push(part(1));
    f.topics[0].partitions = parts;
    f.topics.push(
        FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("rp")))
            .with_partitions(vec![part(1), part(0)]),
    );
    s.write_all(&request_frame(ApiKey::Fetch, 12, 3, &f))
        .unwrap();
    let (_, r): (i32, FetchResponse) = response(&mut s, ApiKey::Fetch, 12);
    let got: Vec<Vec<(i32, i16, usize)>> = r
        .responses
        .iter()
        .map(|t| {
            t.partitions
                .iter()
                .map(|p| {
                    let records = p.records.as_ref().map_or(0, Bytes::len);
                    (p.partition_index, p.error_code, records)
                })
                .collect()
        })
        .collect();
    assert_eq!(got.len(), 1, "{} topic entries", got.len());
    assert_eq!(got[0].len(), 2, "{} partition entries", got[0].len());
    assert!(
        matches!(got[0][..], [(0, 0, n), (1, 0, 0)] if n > 0),
        "{got:?}"
    );
}

/// A Produce or Fetch listing more than 100,000 partitions in all (or a Fetch
/// forgetting more than 100,000 topics) is refused before it is decoded: its
/// connection closes, and other clients are served. A Produce within the bound
/// is answered for each partition, and its refusals logged once. Before, a
/// Produce of millions of entries with null records was decoded, and each
/// entry refused and logged on its own, on one tokio worker.
#[test]
fn produce_and_fetch_listing_more_partitions_than_the_bound_are_refused() {
    use kafka_protocol::messages::{
        fetch_request::{FetchPartition, FetchTopic, ForgottenTopic},
        produce_request::{PartitionProduceData, TopicProduceData},
        ProduceRequest,
    };
    const HALF: usize = 50_000;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut ok = connect(&broker.addr);
    assert_eq!(create_topic(&mut ok, "bound", 2, &[]), 0);

    // Null records, as many entries as asked, in two topics.
    let topic = |n: usize| {
        TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("bound")))
            .with_partition_data(vec![PartitionProduceData::default().with_index(1); n])
    };
    let produce_of = |last: usize| {
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![topic(HALF), topic(last)])
    };
    for version in [3, 9] {
        let mut c = connect(&broker.addr);
        c.write_all(&request_frame(
            ApiKey::Produce,
            version,
            1,
            &produce_of(HALF + 1),
        ))
        .unwrap();
        assert!(closed(&mut c), "Produce v{version} of 100,001 partitions");
    }
    let part = FetchPartition::default()
        .with_partition(0)
        .with_partition_max_bytes(1 << 20);
    let mut fetch = fetch_request("bound", 0, 10_000);
    fetch.topics = vec![FetchTopic::default()
        .with_topic(TopicName(StrBytes::from_static_str("no.such")))
        .with_partitions(vec![part; 2 * HALF + 1])];
    let mut forgetting = fetch_request("bound", 0, 10_000);
    forgetting.forgotten_topics_data = vec![ForgottenTopic::default(); 2 * HALF + 1];
    for (version, request) in [(4, &fetch), (12, &fetch), (12, &forgetting)] {
        let mut c = connect(&broker.addr);
        c.write_all(&request_frame(ApiKey::Fetch, version, 1, request))
            .unwrap();
        assert!(closed(&mut c), "Fetch v{version}");
    }

    // Up to the bound: every entry answered INVALID_REQUEST (each names
    // partition 1 again), logged once.
    let r = send_produce(&mut ok, 9, 2, &produce_of(HALF));
    let codes: Vec<(usize, bool)> = r
        .responses
        .iter()
        .map(|t| {
            let p = &t.partition_responses;
            (p.len(), p.iter().all(|p| p.error_code == 42))
        })
        .collect();
    assert_eq!(codes, vec![(HALF, true), (HALF, true)]);
    let log = broker.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("produce rejected"))
        .collect();
    assert_eq!(lines.len(), 1, "{:?}", &lines[..lines.len().min(3)]);
    assert!(lines[0].contains("rejected=100000"), "{}", lines[0]);

    // The broker still serves everyone.
    assert_eq!(produce_to(&mut ok, "bound", 1, batch(&["v"])), (0, 0));
    let mut other = connect(&broker.addr);
    assert_eq!(produce_to(&mut other, "bound", 1, batch(&["w"])), (0, 1));
}

/// An OffsetCommit, OffsetFetch, ListOffsets, DeleteRecords or OffsetDelete
/// listing more than 100,000 partitions in all (here over two topics) is
/// refused before it is decoded: its connection closes, and other clients are
/// served. A ListOffsets of exactly 100,000 is answered for each. Before, each
/// was decoded whole and answered with an entry a partition.
#[test]
fn offset_requests_listing_more_partitions_than_the_bound_are_refused() {
    use kafka_protocol::messages::{
        delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic},
        offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
        offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic},
        offset_fetch_request::OffsetFetchRequestTopic,
        DeleteRecordsRequest, GroupId, OffsetCommitRequest, OffsetCommitResponse,
        OffsetDeleteRequest, OffsetFetchRequest, OffsetFetchResponse,
    };
    const HALF: usize = 50_000;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut ok = connect(&broker.addr);
    assert_eq!(create_topic(&mut ok, "bound", 2, &[]), 0);
    let name = || TopicName(StrBytes::from_static_str("bound"));
    let group = || GroupId(StrBytes::from_static_str("bound.group"));

    let commit_of = |counts: &[usize]| {
        let partition = OffsetCommitRequestPartition::default()
            .with_committed_offset(1)
            .with_committed_metadata(Some(StrBytes::from_static_str("m")));
        let topic = |&n: &usize| {
            OffsetCommitRequestTopic::default()
                .with_name(name())
                .with_partitions(vec![partition.clone(); n])
        };
        OffsetCommitRequest::default()
            .with_group_id(group())
            .with_generation_id_or_member_epoch(-1)
            .with_topics(counts.iter().map(topic).collect())
    };
    let list_offsets_of = |counts: &[usize]| {
        let partition = ListOffsetsPartition::default().with_timestamp(-1);
        let topic = |&n: &usize| {
            ListOffsetsTopic::default()
                .with_name(name())
                .with_partitions(vec![partition.clone(); n])
        };
        ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(counts.iter().map(topic).collect())
    };
    let over = [HALF, HALF + 1];
    let fetch_topic = |n: usize| {
        OffsetFetchRequestTopic::default()
            .with_name(name())
            .with_partition_indexes(vec![0; n])
    };
    let offset_fetch = OffsetFetchRequest::default()
        .with_group_id(group())
        .with_topics(Some(over.map(fetch_topic).to_vec()));
    let delete_topic = |n: usize| {
        DeleteRecordsTopic::default()
            .with_name(name())
            .with_partitions(vec![DeleteRecordsPartition::default(); n])
    };
    let delete_records = DeleteRecordsRequest::default()
        .with_topics(over.map(delete_topic).to_vec())
        .with_timeout_ms(10_000);
    let offset_delete_topic = |n: usize| {
        OffsetDeleteRequestTopic::default()
            .with_name(name())
            .with_partitions(vec![OffsetDeleteRequestPartition::default(); n])
    };
    let offset_delete = OffsetDeleteRequest::default()
        .with_group_id(group())
        .with_topics(over.map(offset_delete_topic).to_vec());
    let frames = [
        request_frame(ApiKey::OffsetCommit, 2, 1, &commit_of(&over)),
        request_frame(ApiKey::OffsetCommit, 7, 1, &commit_of(&over)),
        request_frame(ApiKey::ListOffsets, 1, 1, &list_offsets_of(&over)),
        request_frame(ApiKey::ListOffsets, 7, 1, &list_offsets_of(&over)),
        request_frame(ApiKey::OffsetFetch, 1, 1, &offset_fetch),
        request_frame(ApiKey::OffsetFetch, 7, 1, &offset_fetch),
        request_frame(ApiKey::DeleteRecords, 0, 1, &delete_records),
        request_frame(ApiKey::DeleteRecords, 2, 1, &delete_records),
        request_frame(ApiKey::OffsetDelete, 0, 1, &offset_delete),
    ];
    let kept_open = answered(&broker.addr, &frames);
    assert!(kept_open.is_empty(), "answered, not closed: {kept_open:?}");

    // Up to the bound: each of the 100,000 named twice or more, so each is
    // answered INVALID_REQUEST.
    ok.write_all(&request_frame(
        ApiKey::ListOffsets,
        7,
        2,
        &list_offsets_of(&[HALF, HALF]),
    ))
    .unwrap();
    let (_, r): (i32, ListOffsetsResponse) = response(&mut ok, ApiKey::ListOffsets, 7);
    assert_eq!(r.topics.len(), 2);
    let codes: Vec<i16> = r
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect();
    assert_eq!(codes.len(), 2 * HALF);
    assert!(codes.iter().all(|&c| c == 42), "{:?}", &codes[..3]);

    // The broker still serves everyone: a commit, and its offset read back.
    let mut other = connect(&broker.addr);
    other
        .write_all(&request_frame(ApiKey::OffsetCommit, 7, 3, &commit_of(&[1])))
        .unwrap();
    let (_, r): (i32, OffsetCommitResponse) = response(&mut other, ApiKey::OffsetCommit, 7);
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let fetch = OffsetFetchRequest::default()
        .with_group_id(group())
        .with_topics(Some(vec![fetch_topic(1)]));
    other
        .write_all(&request_frame(ApiKey::OffsetFetch, 7, 4, &fetch))
        .unwrap();
    let (_, r): (i32, OffsetFetchResponse) = response(&mut other, ApiKey::OffsetFetch, 7);
    let p = &r.topics[0].partitions[0];
    assert_eq!((p.error_code, p.committed_offset), (0, 1));
    // Each refusal was logged, saying why.
    let log = broker.log_text();
    let refusals = log
        .lines()
        .filter(|l| l.contains("lists 100001 partitions"))
        .count();
    assert_eq!(refusals, frames.len(), "{log}");
}

/// Admin and group requests with more than 100,000 entries in one list
/// (CreateTopics configs, CreatePartitions replica assignments, AlterConfigs
/// and IncrementalAlterConfigs configs, and the partitions of a
/// DescribeLogDirs, ElectLeaders, DescribeProducers or
/// ListPartitionReassignments, each counted over two topics or resources; the
/// filters of a ListTransactions, the protocols of a JoinGroup, the assignments
/// of a SyncGroup, the members of a LeaveGroup, the users of the SCRAM
/// requests) are refused before they are decoded: the connection closes, and
/// other clients are served. Before, each was decoded whole and answered.
#[test]
fn admin_and_group_requests_listing_more_than_the_bound_are_refused() {
    use kafka_protocol::messages::{
        alter_configs_request::{AlterConfigsResource, AlterableConfig},
        alter_user_scram_credentials_request::ScramCredentialDeletion,
        create_topics_request::{CreatableTopic, CreatableTopicConfig},
        describe_log_dirs_request::DescribableLogDirTopic,
        describe_producers_request::TopicRequest,
        describe_user_scram_credentials_request::UserName,
        elect_leaders_request::TopicPartitions,
        incremental_alter_configs_request,
        join_group_request::JoinGroupRequestProtocol,
        leave_group_request::MemberIdentity,
        list_partition_reassignments_request::ListPartitionReassignmentsTopics,
        sync_group_request::SyncGroupRequestAssignment,
        AlterConfigsRequest, AlterConfigsResponse, AlterUserScramCredentialsRequest,
        CreateTopicsRequest, DescribeLogDirsRequest, DescribeLogDirsResponse,
        DescribeProducersRequest, DescribeUserScramCredentialsRequest, ElectLeadersRequest,
        GroupId, IncrementalAlterConfigsRequest, JoinGroupRequest, LeaveGroupRequest,
        ListPartitionReassignmentsRequest, ListTransactionsRequest, SyncGroupRequest,
    };
    const HALF: usize = 50_000;
    const OVER: usize = 2 * HALF + 1;
    let over = [HALF, HALF + 1];
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut ok = connect(&broker.addr);
    assert_eq!(create_topic(&mut ok, "bound", 2, &[]), 0);
    let name = || TopicName(StrBytes::from_static_str("bound"));
    let text = |s: &'static str| StrBytes::from_static_str(s);
    let group = || GroupId(text("bound.group"));
    let indexes = |n: usize| vec![0; n];

    let create_topic_of = |n: usize| {
        let config = CreatableTopicConfig::default()
            .with_name(text("retention.ms"))
            .with_value(Some(text("1000")));
        CreatableTopic::default()
            .with_name(TopicName(text("created")))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(vec![config; n])
    };
    let create_topics = CreateTopicsRequest::default()
        .with_topics(over.map(create_topic_of).to_vec())
        .with_timeout_ms(10_000);
    let assignment = CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(0)]);
    let create_partitions_of = |n: usize| {
        CreatePartitionsTopic::default()
            .with_name(name())
            .with_count(3)
            .with_assignments(Some(vec![assignment.clone(); n]))
    };
    let create_partitions = CreatePartitionsRequest::default()
        .with_topics(over.map(create_partitions_of).to_vec())
        .with_timeout_ms(10_000);
    let alter_of = |counts: &[usize]| {
        let config = AlterableConfig::default()
            .with_name(text("retention.ms"))
            .with_value(Some(text("1000")));
        let resource = |&n: &usize| {
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(text("bound"))
                .with_configs(vec![config.clone(); n])
        };
        AlterConfigsRequest::default().with_resources(counts.iter().map(resource).collect())
    };
    let incremental = {
        use incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
        let config = AlterableConfig::default()
            .with_name(text("retention.ms"))
            .with_value(Some(text("1000")));
        let resource = |n: usize| {
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(text("bound"))
                .with_configs(vec![config.clone(); n])
        };
        IncrementalAlterConfigsRequest::default().with_resources(over.map(resource).to_vec())
    };
    let log_dirs_of = |counts: &[usize]| {
        let topic = |&n: &usize| {
            DescribableLogDirTopic::default()
                .with_topic(name())
                .with_partitions(indexes(n))
        };
        DescribeLogDirsRequest::default().with_topics(Some(counts.iter().map(topic).collect()))
    };
    let elect_topic = |n: usize| {
        TopicPartitions::default()
            .with_topic(name())
            .with_partitions(indexes(n))
    };
    let elect = ElectLeadersRequest::default()
        .with_topic_partitions(Some(over.map(elect_topic).to_vec()))
        .with_timeout_ms(10_000);
    let producers_topic = |n: usize| {
        TopicRequest::default()
            .with_name(name())
            .with_partition_indexes(indexes(n))
    };
    let producers =
        DescribeProducersRequest::default().with_topics(over.map(producers_topic).to_vec());
    let reassignments_topic = |n: usize| {
        ListPartitionReassignmentsTopics::default()
            .with_name(name())
            .with_partition_indexes(indexes(n))
    };
    let reassignments = ListPartitionReassignmentsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(Some(over.map(reassignments_topic).to_vec()));
    let transactions =
        ListTransactionsRequest::default().with_producer_id_filters(vec![ProducerId(1); OVER]);
    let protocol = JoinGroupRequestProtocol::default().with_name(text("range"));
    let join = JoinGroupRequest::default()
        .with_group_id(group())
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(text("consumer"))
        .with_protocols(vec![protocol; OVER]);
    let sync = SyncGroupRequest::default()
        .with_group_id(group())
        .with_generation_id(1)
        .with_member_id(text("member"))
        .with_assignments(vec![SyncGroupRequestAssignment::default(); OVER]);
    let leave = LeaveGroupRequest::default()
        .with_group_id(group())
        .with_members(vec![MemberIdentity::default(); OVER]);
    let users = DescribeUserScramCredentialsRequest::default()
        .with_users(Some(vec![UserName::default(); OVER]));
    let deletions = AlterUserScramCredentialsRequest::default()
        .with_deletions(vec![ScramCredentialDeletion::default(); OVER]);
    let frames = [
        request_frame(ApiKey::CreateTopics, 2, 1, &create_topics),
        request_frame(ApiKey::CreateTopics, 7, 1, &create_topics),
        request_frame(ApiKey::CreatePartitions, 0, 1, &create_partitions),
        request_frame(ApiKey::CreatePartitions, 3, 1, &create_partitions),
        request_frame(ApiKey::AlterConfigs, 0, 1, &alter_of(&over)),
        request_frame(ApiKey::AlterConfigs, 2, 1, &alter_of(&over)),
        request_frame(ApiKey::IncrementalAlterConfigs, 0, 1, &incremental),
        request_frame(ApiKey::IncrementalAlterConfigs, 1, 1, &incremental),
        request_frame(ApiKey::DescribeLogDirs, 1, 1, &log_dirs_of(&over)),
        request_frame(ApiKey::DescribeLogDirs, 4, 1, &log_dirs_of(&over)),
        request_frame(ApiKey::ElectLeaders, 0, 1, &elect),
        request_frame(ApiKey::ElectLeaders, 2, 1, &elect),
        request_frame(ApiKey::DescribeProducers, 0, 1, &producers),
        request_frame(ApiKey::ListPartitionReassignments, 0, 1, &reassignments),
        request_frame(ApiKey::ListTransactions, 1, 1, &transactions),
        request_frame(ApiKey::JoinGroup, 5, 1, &join),
        request_frame(ApiKey::SyncGroup, 3, 1, &sync),
        request_frame(ApiKey::LeaveGroup, 3, 1, &leave),
        request_frame(ApiKey::DescribeUserScramCredentials, 0, 1, &users),
        request_frame(ApiKey::AlterUserScramCredentials, 0, 1, &deletions),
    ];
    let kept_open = answered(&broker.addr, &frames);
    assert!(kept_open.is_empty(), "answered, not closed: {kept_open:?}");

    // The broker still serves everyone: configs altered, log dirs described
    // (the 100,000 partitions asked for, of which two exist).
    let mut other = connect(&broker.addr);
    other
        .write_all(&request_frame(ApiKey::AlterConfigs, 2, 2, &alter_of(&[1])))
        .unwrap();
    let (_, r): (i32, AlterConfigsResponse) = response(&mut other, ApiKey::AlterConfigs, 2);
    assert_eq!(r.responses[0].error_code, 0, "{r:?}");
    let within: Vec<usize> = vec![HALF, HALF];
    other
        .write_all(&request_frame(
            ApiKey::DescribeLogDirs,
            4,
            3,
            &log_dirs_of(&within),
        ))
        .unwrap();
    let (_, r): (i32, DescribeLogDirsResponse) = response(&mut other, ApiKey::DescribeLogDirs, 4);
    assert_eq!((r.error_code, r.results.len()), (0, 1));
    // Each refusal was logged, saying why.
    let log = broker.log_text();
    let refusals = log
        .lines()
        .filter(|l| l.contains(&format!("lists {OVER} ")))
        .count();
    assert_eq!(refusals, frames.len(), "{log}");
}

/// The API and version of each of `frames`, each sent to the broker at `addr`
/// on a connection of its own, that was answered rather than closed.
fn answered(addr: &str, frames: &[Vec<u8>]) -> Vec<String> {
    frames
        .iter()
        .filter(|frame| {
            let mut c = connect(addr);
            c.write_all(frame).unwrap();
            !closed(&mut c)
        })
        .map(|frame| {
            // The header's API key and version, after the length.
            let at = |i: usize| i16::from_be_bytes([frame[i], frame[i + 1]]);
            format!("{:?} v{}", ApiKey::try_from(at(4)).unwrap(), at(6))
        })
        .collect()
}

/// Creates `name` with `partitions` partitions and `configs` (CreateTopics v7);
/// the topic's error code.
fn create_topic(s: &mut TcpStream, name: &str, partitions: i32, configs: &[(&str, &str)]) -> i16 {
    use kafka_protocol::messages::{
        create_topics_request::{CreatableTopic, CreatableTopicConfig},
        CreateTopicsRequest, CreateTopicsResponse,
    };
    let s_ = |v: &str| StrBytes::from_string(v.into());
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(s_(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(s_(k))
                            .with_value(Some(s_(v)))
                    })
                    .collect(),
            )]);
    s.write_all(&request_frame(ApiKey::CreateTopics, 7, 1, &req))
        .unwrap();
    let (_, r): (i32, CreateTopicsResponse) = response(s, ApiKey::CreateTopics, 7);
    r.topics[0].error_code
}

/// Produces `records` to partition 0 of `topic` at Produce `version`: the error
/// code, base offset, error message (v8 on) and record indexes in `record_errors`.
fn produce_at(
    s: &mut TcpStream,
    version: i16,
    topic: &str,
    records: Vec<u8>,
) -> (i16, i64, String, Vec<i32>) {
    let r = send_produce(s, version, 11, &produce(topic, 0, Bytes::from(records)));
    let p = &r.responses[0].partition_responses[0];
    (
        p.error_code,
        p.base_offset,
        p.error_message
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        p.record_errors.iter().map(|e| e.batch_index).collect(),
    )
}

/// `b` with the big-endian `value` written at byte `at` and the CRC recomputed
/// (it covers the bytes from the attributes, 21, on).
fn patched(b: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut b = b.to_vec();
    b[at..at + value.len()].copy_from_slice(value);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Byte positions in a RecordBatch v2 header.
const LAST_OFFSET_DELTA: usize = 23;
const RECORD_COUNT: usize = 57;

/// A produced batch that does not hold together gets INVALID_RECORD (87), which
/// clients do not retry, and uses no offsets; only a CRC mismatch gets
/// CORRUPT_MESSAGE (2), which they do.
#[test]
fn produce_refuses_batches_kafka_refuses_with_invalid_record() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut s = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut s, "strict", true), 0);

    let five = batch(&["a", "b", "c", "d", "e"]).to_vec();
    let two = batch(&["a", "b"]).to_vec();
    assert_eq!(
        five[RECORD_COUNT..RECORD_COUNT + 4],
        5i32.to_be_bytes(),
        "one batch"
    );
    let count_3 = patched(&five, RECORD_COUNT, &3i32.to_be_bytes());
    let three_of_two = patched(
        &patched(&two, RECORD_COUNT, &3i32.to_be_bytes()),
        LAST_OFFSET_DELTA,
        &2i32.to_be_bytes(),
    );
    let delta_5 = patched(&two, LAST_OFFSET_DELTA, &5i32.to_be_bytes());
    let mut magic_1 = two.clone();
    magic_1[16] = 1;
    let no_sequence = idempotent_batch(&["a"], 3, 0, -1).to_vec();
    let mut two_batches = two.clone();
    two_batches.extend_from_slice(&batch(&["c"]));
    let cases = [
        ("count patched to 3 in a batch of 5", count_3),
        ("count 3, last offset delta 2, 2 records", three_of_two),
        ("last offset delta 5 with count 2", delta_5),
        ("magic 1", magic_1),
        ("a producer id without a sequence", no_sequence),
        ("two batches for one partition", two_batches),
    ];
    for (what, records) in cases {
        for version in [7, 9] {
            let (code, base, message, _) = produce_at(&mut s, version, "strict", records.clone());
            assert_eq!((code, base), (87, -1), "{what}, Produce v{version}");
            if version >= 8 {
                assert!(!message.is_empty(), "{what}: a message says why");
            }
        }
    }
    // A record that does not parse is named in record_errors.
    let mut long_key = two.clone();
    long_key[61 + 4] = 0x7e; // the first record's key length: 63 bytes
    let long_key = patched(&long_key, 0, &0i64.to_be_bytes());
    let (code, _, message, records) = produce_at(&mut s, 9, "strict", long_key);
    assert_eq!(code, 87);
    assert!(message.contains("record 0"), "{message}");
    assert_eq!(records, vec![0]);
    // A control batch (attributes bit 0x20): no client may write one, as
    // Kafka's LogValidator says (it got INVALID_TXN_STATE, 48).
    let control = patched(&two, 21, &0x20u16.to_be_bytes());
    for version in [7, 9] {
        let (code, base, message, records) = produce_at(&mut s, version, "strict", control.clone());
        assert_eq!(
            (code, base),
            (87, -1),
            "a control batch, Produce v{version}"
        );
        let expected = if version >= 8 {
            "Clients are not allowed to write control records"
        } else {
            ""
        };
        assert_eq!(message, expected);
        assert!(records.is_empty());
    }
    // A damaged batch is still CORRUPT_MESSAGE.
    let mut crc = two.clone();
    let n = crc.len();
    crc[n - 1] ^= 0xff;
    assert_eq!(produce_at(&mut s, 7, "strict", crc).0, 2);
    // Nothing refused took an offset.
    assert_eq!(produce_at(&mut s, 7, "strict", two).1, 0);
    assert_eq!(produce_at(&mut s, 7, "strict", five).1, 2);
}

/// A 75-byte snappy batch whose raw block states 128 MiB (`80 80 80 40`) over
/// garbage, its CRC valid, made the broker zero-fill 128 MiB before finding
/// out, on as many connections at once as a client opened. It is refused with
/// INVALID_RECORD before anything is allocated, and other clients are served.
#[test]
fn snappy_batches_stating_more_than_they_can_hold_are_refused_without_the_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut s = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut s, "bombs", true), 0);
    let mut bomb = batch(&["v"])[..61].to_vec();
    bomb[22] |= 2; // snappy
    bomb.extend_from_slice(&[0x80, 0x80, 0x80, 0x40]);
    bomb.extend_from_slice(&[0x55; 10]);
    let len = (bomb.len() - 12) as i32;
    let bomb = patched(&bomb, 8, &len.to_be_bytes());
    assert_eq!(bomb.len(), 75);

    let before = broker_support::peak_rss(broker.pid());
    let mut conns: Vec<TcpStream> = (0..8).map(|_| connect(&broker.addr)).collect();
    for c in &mut conns {
        let req = produce("bombs", 0, Bytes::from(bomb.clone()));
        c.write_all(&request_frame(ApiKey::Produce, 9, 5, &req))
            .unwrap();
    }
    for c in &mut conns {
        let (_, r): (i32, ProduceResponse) = response(c, ApiKey::Produce, 9);
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (87, -1), "INVALID_RECORD");
        let message = p.error_message.as_ref().map(ToString::to_string);
        assert!(
            message.as_deref().unwrap_or_default().contains("codec 2"),
            "{message:?}"
        );
    }
    let grown = broker_support::peak_rss(broker.pid()).saturating_sub(before);
    assert!(grown < 32 << 20, "peak RSS grew by {} MiB", grown >> 20);
    let (code, base, _, _) = produce_at(&mut s, 9, "bombs", batch(&["ok"]).to_vec());
    assert_eq!((code, base), (0, 0));
}

/// The keyless check of a compacted topic reads every record whatever base
/// offset the client put in the batch (the CRC does not cover it): one near
/// `i64::MAX` used to make the record offsets overflow and the batch go in
/// unchecked (such a batch is now refused for its base offset, as Kafka
/// refuses any but 0). Every record without a key is named in
/// `record_errors`, as Kafka names them (it named only the first).
#[test]
fn compacted_topics_refuse_keyless_records_whatever_the_base_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut s = connect(&broker.addr);
    assert_eq!(
        create_topic(&mut s, "keyed", 1, &[("cleanup.policy", "compact")]),
        0
    );
    let at_max = |b: Bytes| patched(&b, 0, &i64::MAX.to_be_bytes());
    for (what, records, indexes) in [
        ("keyless", batch(&["a", "b"]), vec![0, 1]),
        (
            "second record keyless",
            maybe_keyed_batch(&[(Some("k"), "a"), (None, "b")]),
            vec![1],
        ),
    ] {
        let (code, base, message, _) = produce_at(&mut s, 9, "keyed", at_max(records.clone()));
        assert_eq!((code, base), (87, -1), "{what}");
        assert!(message.contains("base offset"), "{what}: {message}");
        let (code, base, message, errors) = produce_at(&mut s, 9, "keyed", records.to_vec());
        assert_eq!((code, base), (87, -1), "{what}");
        assert!(message.contains("without a key"), "{what}: {message}");
        assert_eq!(errors, indexes, "{what}");
    }
    let keyed = keyed_batch(&[("k1", "a"), ("k2", "b")]);
    assert_eq!(produce_at(&mut s, 9, "keyed", at_max(keyed.clone())).0, 87);
    assert_eq!(produce_at(&mut s, 9, "keyed", keyed.to_vec()).0, 0);
}

/// KIP-74: only the first partition with records in a Fetch response may have
/// a batch larger than the limits left for it; the others get what fits in the
/// bytes left, each within its own `partition_max_bytes`.
#[test]
fn fetch_returns_an_oversized_batch_only_for_the_first_partition_with_data() {
    use kafka_protocol::messages::fetch_request::FetchPartition;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut s = connect(&broker.addr);
    assert_eq!(create_topic(&mut s, "pair", 2, &[]), 0);
    let value = "x".repeat(256 * 1024);
    for p in 0..2 {
        let r = send_produce(&mut s, 7, p, &produce("pair", p, batch(&[value.as_str()])));
        assert_eq!(partition_result(&r), (0, 0));
    }
    // Bytes of records for partitions 0 and 1, read from `from` with the
    // response limit `max` and the partition limits `pmax`.
    let mut fetch = |from: [i64; 2], max: i32, pmax: [i32; 2]| {
        let mut f = fetch_request("pair", from[0], 0);
        f.max_bytes = max;
        f.topics[0].partitions[0].partition_max_bytes = pmax[0];
        f.topics[0].partitions.push(
            FetchPartition::default()
                .with_partition(1)
                .with_fetch_offset(from[1])
                .with_partition_max_bytes(pmax[1]),
        );
        s.write_all(&request_frame(ApiKey::Fetch, 12, 9, &f))
            .unwrap();
        let (_, r): (i32, FetchResponse) = response(&mut s, ApiKey::Fetch, 12);
        let sizes: Vec<usize> = r.responses[0]
            .partitions
            .iter()
            .map(|p| {
                assert_eq!((p.error_code, p.high_watermark), (0, 1));
                p.records.as_ref().map_or(0, Bytes::len)
            })
            .collect();
        [sizes[0], sizes[1]]
    };
    let batch_len = |n: usize| n > 256 * 1024 && n < 257 * 1024;
    let [a, b] = fetch([0, 0], 300 * 1024, [1 << 20, 1 << 20]);
    assert!(batch_len(a) && b == 0, "300k for both: {a} + {b}");
    assert!(a + b <= 300 * 1024);
    // Smaller than one batch: still the first partition's batch, nothing more.
    let [a, b] = fetch([0, 0], 100 * 1024, [1 << 20, 1 << 20]);
    assert!(batch_len(a) && b == 0, "100k for both: {a} + {b}");
    // Room in the response but not in the second partition's own limit.
    let [a, b] = fetch([0, 0], 1 << 20, [1 << 20, 100 * 1024]);
    assert!(batch_len(a) && b == 0, "100k for the second: {a} + {b}");
    // The first partition with records need not be the first asked for.
    let [a, b] = fetch([1, 0], 100 * 1024, [1 << 20, 100 * 1024]);
    assert!(
        a == 0 && batch_len(b),
        "nothing new in the first: {a} + {b}"
    );
    // Room for both.
    let [a, b] = fetch([0, 0], 1 << 20, [1 << 20, 1 << 20]);
    assert!(batch_len(a) && batch_len(b), "1m for both: {a} + {b}");
    // Limits of 0 (Kafka's minOneMessage): the first partition with records
    // still gets its first batch, the others nothing.
    let [a, b] = fetch([0, 0], 1 << 20, [0, 0]);
    assert!(batch_len(a) && b == 0, "0 for each partition: {a} + {b}");
    let [a, b] = fetch([0, 0], 0, [1 << 20, 1 << 20]);
    assert!(batch_len(a) && b == 0, "0 for the response: {a} + {b}");
    let [a, b] = fetch([1, 0], 0, [0, 0]);
    assert!(
        a == 0 && batch_len(b),
        "0 everywhere, nothing new in the first: {a} + {b}"
    );
}

/// A Produce with acks=0 gets no answer, so a partition that fails closes the
/// connection, as in Kafka: the client reconnects and refreshes its metadata.
/// Requests after it on that connection are not served; other connections are.
#[test]
fn a_failed_acks_0_produce_closes_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut s = connect(&broker.addr);
    assert_eq!(topic_metadata(&mut s, "quiet", true), 0);
    let quiet = |partition: i32, records: Bytes| {
        let mut p = produce("quiet", partition, records);
        p.acks = 0;
        request_frame(ApiKey::Produce, 7, 5, &p)
    };
    let mut magic_1 = batch(&["bad"]).to_vec();
    magic_1[16] = 1;
    for (what, frame) in [
        ("an unknown partition", quiet(99, batch(&["lost"]))),
        ("an invalid batch", quiet(0, Bytes::from(magic_1))),
    ] {
        let mut c = connect(&broker.addr);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The good produce before it is applied and unanswered; the Metadata
        // after it is never answered.
        let mut frames = quiet(0, batch(&["kept"]));
        frames.extend(frame);
        frames.extend(request_frame(
            ApiKey::Metadata,
            9,
            6,
            &MetadataRequest::default().with_topics(Some(vec![])),
        ));
        c.write_all(&frames).unwrap();
        assert!(closed(&mut c), "{what}: the connection is closed");
    }
    // A failure known only once the write is tried (an idempotent producer's
    // sequence gap, found by the submit thread) closes it too.
    let (_, pid, _) = init_producer_id(&mut s, 4, None);
    let first = idempotent_batch(&["seq"], pid, 0, 0).to_vec();
    assert_eq!(produce_at(&mut s, 7, "quiet", first).0, 0);
    let mut c = connect(&broker.addr);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&quiet(0, idempotent_batch(&["gap"], pid, 0, 5)))
        .unwrap();
    assert!(closed(&mut c), "a sequence gap: the connection is closed");
    // The good produces went in; other connections are served.
    assert_eq!(
        produce_at(&mut s, 7, "quiet", batch(&["after"]).to_vec()),
        (0, 3, String::new(), vec![])
    );
}

/// DescribeTopicPartitions v0 of `topics` (every topic when empty), at most
/// `limit` partitions, from `cursor`: (name, error code, topic id, partition
/// indexes) per topic, and the next cursor.
#[allow(clippy::type_complexity)]
fn describe_topic_partitions(
    s: &mut TcpStream,
    topics: &[&str],
    limit: i32,
    cursor: Option<(&str, i32)>,
) -> (
    Vec<(String, i16, uuid::Uuid, Vec<i32>)>,
    Option<(String, i32)>,
) {
    use kafka_protocol::messages::{
        describe_topic_partitions_request::{Cursor, TopicRequest},
        DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse,
    };
    let name = |n: &str| TopicName(StrBytes::from_string(n.into()));
    let req = DescribeTopicPartitionsRequest::default()
        .with_topics(
            topics
                .iter()
                .map(|t| TopicRequest::default().with_name(name(t)))
                .collect(),
        )
        .with_response_partition_limit(limit)
        .with_cursor(cursor.map(|(t, p)| {
            Cursor::default()
                .with_topic_name(name(t))
                .with_partition_index(p)
        }));
    s.write_all(&request_frame(ApiKey::DescribeTopicPartitions, 0, 3, &req))
        .unwrap();
    let (cid, r): (i32, DescribeTopicPartitionsResponse) =
        response(s, ApiKey::DescribeTopicPartitions, 0);
    assert_eq!(cid, 3);
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            let ops = t.topic_authorized_operations;
            assert_eq!(ops == i32::MIN, t.error_code != 0, "operations {ops:#x}");
            (
                t.name.expect("a name").0.to_string(),
                t.error_code,
                t.topic_id,
                t.partitions
                    .iter()
                    .map(|p| {
                        assert_eq!((p.leader_id.0, &p.isr_nodes[..]), (0, &[BrokerId(0)][..]));
                        p.partition_index
                    })
                    .collect(),
            )
        })
        .collect();
    let next = r
        .next_cursor
        .map(|c| (c.topic_name.0.to_string(), c.partition_index));
    (topics, next)
}

/// DescribeCluster (v0-v2) names this node as the cluster under the id Metadata
/// gives, and refuses a request meant for a controller; DescribeTopicPartitions
/// answers topics in name order, pages by partition limit with a cursor, reports
/// unknown and invalid names, and creates nothing.
#[test]
fn describe_cluster_and_describe_topic_partitions_answer_as_kafka_does() {
    use kafka_protocol::messages::{DescribeClusterRequest, DescribeClusterResponse};
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut s = connect(&broker.addr);
    let m = metadata_of(&broker.addr);
    let port: i32 = broker.addr.rsplit(':').next().unwrap().parse().unwrap();

    for version in 0..=2 {
        for ops in [false, true] {
            let req = DescribeClusterRequest::default()
                .with_include_cluster_authorized_operations(ops)
                .with_include_fenced_brokers(version >= 2);
            s.write_all(&request_frame(ApiKey::DescribeCluster, version, 4, &req))
                .unwrap();
            let (cid, r): (i32, DescribeClusterResponse) =
                response(&mut s, ApiKey::DescribeCluster, version);
            assert_eq!((cid, r.error_code), (4, 0), "v{version}: {r:?}");
            assert_eq!(Some(r.cluster_id.clone()), m.cluster_id, "v{version}");
            assert_eq!(r.controller_id, BrokerId(0));
            let b: Vec<_> = r
                .brokers
                .iter()
                .map(|b| (b.broker_id.0, b.host.to_string(), b.port, b.is_fenced))
                .collect();
            assert_eq!(b, [(0, "127.0.0.1".to_string(), port, false)], "v{version}");
            // Without an authorizer every cluster operation is allowed, as in Kafka
            // (DESCRIBE is bit 8); not asked, none are reported.
            if ops {
                assert_ne!(r.cluster_authorized_operations & (1 << 8), 0);
            } else {
                assert_eq!(r.cluster_authorized_operations, i32::MIN);
            }
        }
    }
    for (endpoint, code) in [(2, 114), (7, 115)] {
        let req = DescribeClusterRequest::default().with_endpoint_type(endpoint);
        s.write_all(&request_frame(ApiKey::DescribeCluster, 1, 5, &req))
            .unwrap();
        let (_, r): (i32, DescribeClusterResponse) = response(&mut s, ApiKey::DescribeCluster, 1);
        assert_eq!(r.error_code, code, "endpoint type {endpoint}: {r:?}");
        assert!(r.error_message.is_some() && r.brokers.is_empty());
    }

    assert_eq!(create_topic(&mut s, "dtp-b", 2, &[]), 0);
    assert_eq!(create_topic(&mut s, "dtp-a", 3, &[]), 0);
    let ids: BTreeMap<String, uuid::Uuid> = metadata_of(&broker.addr)
        .topics
        .into_iter()
        .map(|t| (t.name.unwrap().0.to_string(), t.topic_id))
        .collect();
    let found = |name: &str, parts: &[i32]| (name.to_string(), 0, ids[name], parts.to_vec());
    let unknown = |name: &str, code: i16| (name.to_string(), code, uuid::Uuid::nil(), vec![]);

    // Everything at once, in name order, each name once; nothing is created.
    let asked = ["dtp-b", "nope", "dtp-a", "dtp-b", "bad/name"];
    assert_eq!(
        describe_topic_partitions(&mut s, &asked, 2000, None),
        (
            vec![
                unknown("bad/name", 17),
                found("dtp-a", &[0, 1, 2]),
                found("dtp-b", &[0, 1]),
                unknown("nope", 3)
            ],
            None
        )
    );
    assert_eq!(metadata_of(&broker.addr).topics.len(), 2, "nothing created");
    assert_eq!(
        describe_topic_partitions(&mut s, &[], 0, None).0,
        [found("dtp-a", &[0])],
        "every topic; a limit below 1 counts as 1"
    );

    // Two partitions a page, following the cursor.
    let mut pages = Vec::new();
    let mut cursor: Option<(String, i32)> = None;
    loop {
        let (topics, next) = describe_topic_partitions(
            &mut s,
            &[],
            2,
            cursor.as_ref().map(|(t, p)| (t.as_str(), *p)),
        );
        pages.push(topics);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages.len() < 10, "the cursor keeps going: {pages:?}");
    }
    assert_eq!(
        pages,
        [
            vec![found("dtp-a", &[0, 1])],
            vec![found("dtp-a", &[2]), found("dtp-b", &[0])],
            vec![found("dtp-b", &[1])]
        ]
    );

    // A cursor must name a topic asked for and a partition >= 0.
    for (topics, cursor) in [
        (&["dtp-a"][..], ("dtp-b", 0)),
        (&["dtp-a", "dtp-b"][..], ("dtp-a", -1)),
    ] {
        let (answer, next) = describe_topic_partitions(&mut s, topics, 10, Some(cursor));
        assert!(next.is_none());
        assert!(
            !answer.is_empty()
                && answer
                    .iter()
                    .all(|(_, code, _, p)| *code == 42 && p.is_empty()),
            "{cursor:?}: {answer:?}"
        );
    }
}

/// ElectLeaders for every partition (no list) elects nothing and lists nothing,
/// as Kafka lists only the partitions it elected; an unknown election type is
/// INVALID_REQUEST. ListTransactions lists none and reports back the state
/// filters Kafka does not know.
#[test]
fn elect_leaders_for_all_partitions_and_list_transactions_answer_as_kafka_does() {
    use kafka_protocol::messages::{
        elect_leaders_request::TopicPartitions, ElectLeadersRequest, ElectLeadersResponse,
        ListTransactionsRequest, ListTransactionsResponse,
    };
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut s = connect(&broker.addr);
    assert_eq!(create_topic(&mut s, "el", 2, &[]), 0);
    let mut elect = |req: &ElectLeadersRequest| -> ElectLeadersResponse {
        s.write_all(&request_frame(ApiKey::ElectLeaders, 2, 6, req))
            .unwrap();
        response(&mut s, ApiKey::ElectLeaders, 2).1
    };
    let all = elect(&ElectLeadersRequest::default().with_topic_partitions(None));
    assert_eq!((all.error_code, all.replica_election_results.len()), (0, 0));
    let named = Some(vec![TopicPartitions::default()
        .with_topic(TopicName(StrBytes::from_static_str("el")))
        .with_partitions(vec![1, 1, 0])]);
    let r = elect(
        &ElectLeadersRequest::default()
            .with_election_type(1)
            .with_topic_partitions(named.clone()),
    );
    let codes: Vec<(i32, i16)> = r.replica_election_results[0]
        .partition_result
        .iter()
        .map(|p| (p.partition_id, p.error_code))
        .collect();
    assert_eq!(codes, [(1, 84), (0, 84)], "each partition once");
    let r = elect(
        &ElectLeadersRequest::default()
            .with_election_type(7)
            .with_topic_partitions(named),
    );
    assert!(r.replica_election_results[0]
        .partition_result
        .iter()
        .all(|p| p.error_code == 42));

    let req = ListTransactionsRequest::default().with_state_filters(vec![
        StrBytes::from_static_str("Ongoing"),
        StrBytes::from_static_str("Bogus"),
    ]);
    s.write_all(&request_frame(ApiKey::ListTransactions, 1, 7, &req))
        .unwrap();
    let (_, r): (i32, ListTransactionsResponse) = response(&mut s, ApiKey::ListTransactions, 1);
    assert_eq!(r.error_code, 0);
    assert!(r.transaction_states.is_empty());
    assert_eq!(
        r.unknown_state_filters,
        [StrBytes::from_static_str("Bogus")]
    );
}
