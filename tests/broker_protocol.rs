//! Wire-level behaviour: bad input gets an error (or a closed connection) for that
//! client only; pipelined produces are answered in order and share group commits.

mod broker_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::{
    messages::{
        produce_request::{PartitionProduceData, TopicProduceData},
        ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
        RequestHeader, ResponseHeader, TopicName,
    },
    protocol::{Decodable, Encodable, StrBytes},
    records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType},
};

use broker_support::{kcat, Broker};

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn request_frame<R: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &R) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("protocol-test")))
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

/// Reads one response frame; `None` when the server closed the connection.
fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    Some(Bytes::from(buf))
}

fn response<R: Decodable>(s: &mut TcpStream, key: ApiKey, version: i16) -> (i32, R) {
    let mut b = read_frame(s).expect("a response");
    let h = ResponseHeader::decode(&mut b, key.response_header_version(version)).unwrap();
    (h.correlation_id, R::decode(&mut b, version).unwrap())
}

fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

fn batch(values: &[&str]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: Compression::None }).unwrap();
    buf.freeze()
}

fn produce(topic: &str, partition: i32, records: Bytes) -> ProduceRequest {
    ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(records))])])
}

fn partition_result(r: &ProduceResponse) -> (i16, i64) {
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

#[test]
fn bad_input_gets_an_error_for_that_client_only() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--max-request-bytes", "64k"]);
    // Create the topic through Metadata auto-creation.
    let mut ok = connect(&broker.addr);
    let meta = MetadataRequest::default()
        .with_topics(Some(vec![kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("bad"))))]))
        .with_allow_auto_topic_creation(true);
    ok.write_all(&request_frame(ApiKey::Metadata, 9, 1, &meta)).unwrap();
    let (cid, m): (i32, MetadataResponse) = response(&mut ok, ApiKey::Metadata, 9);
    assert_eq!(cid, 1);
    assert_eq!(m.topics[0].error_code, 0);

    // Oversized frame (beyond --max-request-bytes): that connection is closed.
    let mut c = connect(&broker.addr);
    c.write_all(&(10_000_000i32).to_be_bytes()).unwrap();
    assert!(closed(&mut c), "oversized frame closes the connection");
    // Garbage bytes.
    let mut c = connect(&broker.addr);
    c.write_all(&[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']).unwrap();
    assert!(closed(&mut c), "garbage closes the connection");
    // Unknown API key.
    let mut c = connect(&broker.addr);
    c.write_all(&[0, 0, 0, 10, 0x03, 0xe7, 0, 0, 0, 0, 0, 7, 0, 0]).unwrap();
    assert!(closed(&mut c), "unknown API key closes the connection");
    // A truncated request, then a disconnect mid-frame.
    let mut c = connect(&broker.addr);
    c.write_all(&[0, 0, 1, 0, 0, 18, 0]).unwrap();
    drop(c);

    // ApiVersions at an unsupported version: error 35 with a v0 body listing versions.
    let mut c = connect(&broker.addr);
    c.write_all(&request_frame(ApiKey::ApiVersions, 3, 5, &ApiVersionsRequest::default()).into_iter().enumerate().map(|(i, b)| if i == 7 { 99 } else { b }).collect::<Vec<u8>>()).unwrap();
    let mut f = read_frame(&mut c).expect("error answer, not a closed connection");
    assert_eq!(f.get_i32(), 5, "correlation id echoed");
    let v0 = ApiVersionsResponse::decode(&mut f, 0).unwrap();
    assert_eq!(v0.error_code, 35);
    let produce_range = v0.api_keys.iter().find(|k| k.api_key == ApiKey::Produce as i16).expect("Produce listed");
    assert!(produce_range.min_version <= 3 && produce_range.max_version >= 7);

    // Corrupt batch (bad CRC), unknown partition, then a good produce: same connection.
    let good = batch(&["one", "two"]);
    let mut corrupt = good.to_vec();
    let n = corrupt.len();
    corrupt[n - 1] ^= 0xff;
    ok.write_all(&request_frame(ApiKey::Produce, 7, 2, &produce("bad", 0, Bytes::from(corrupt)))).unwrap();
    ok.write_all(&request_frame(ApiKey::Produce, 7, 3, &produce("bad", 99, good.clone()))).unwrap();
    ok.write_all(&request_frame(ApiKey::Produce, 7, 4, &produce("bad", 0, good.clone()))).unwrap();
    let (c2, r2): (i32, ProduceResponse) = response(&mut ok, ApiKey::Produce, 7);
    let (c3, r3): (i32, ProduceResponse) = response(&mut ok, ApiKey::Produce, 7);
    let (c4, r4): (i32, ProduceResponse) = response(&mut ok, ApiKey::Produce, 7);
    assert_eq!((c2, c3, c4), (2, 3, 4), "responses in request order");
    assert_eq!(partition_result(&r2).0, 2, "CORRUPT_MESSAGE for a bad CRC");
    assert_eq!(partition_result(&r3).0, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    assert_eq!(partition_result(&r4), (0, 0), "the good batch lands at offset 0");

    // Everyone else is still served, and nothing acknowledged was lost.
    let out = kcat(&["-C", "-b", &broker.addr, "-t", "bad", "-o", "beginning", "-e", "-q", "-f", "%o:%s\n"], b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0:one\n1:two\n");
}

#[test]
fn pipelined_produces_are_answered_in_order_and_share_group_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut config = streamline::config::Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.storage.data_dir = tmp.path().join("data");
    config.wal.engine.sync_mode = streamline::wal::SyncMode::EveryWrite;
    config.wal.engine.max_file_size = 1 << 20;
    let storage = streamline::storage::TopicManager::new(config).unwrap();
    storage.create_topic("pipe", 1).unwrap();
    let server = rt.block_on(streamline::server::Server::bind(storage.clone())).unwrap();
    let addr = server.local_addr().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    const N: i32 = 64;
    let mut s = connect(&addr);
    let mut all = Vec::new();
    for i in 0..N {
        all.extend(request_frame(ApiKey::Produce, 8, 100 + i, &produce("pipe", 0, batch(&[&format!("m{i}")]))));
    }
    s.write_all(&all).unwrap();
    for i in 0..N {
        let (cid, r): (i32, ProduceResponse) = response(&mut s, ApiKey::Produce, 8);
        assert_eq!(cid, 100 + i, "responses leave in request order");
        assert_eq!(partition_result(&r), (0, i64::from(i)), "offsets follow request order");
    }
    let stats = storage.wal().expect("WAL enabled").stats();
    assert_eq!(stats.entries, N as u64);
    assert!(stats.fsyncs < N as u64 / 2, "pipelined every_write produces share fdatasyncs: {stats:?}");

    let _ = stop_tx.send(());
    rt.block_on(serving).unwrap();
    storage.shutdown().unwrap();
}
