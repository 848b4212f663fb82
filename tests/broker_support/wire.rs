//! Raw Kafka wire helpers over a blocking `TcpStream`: frame a request with the
//! `kafka-protocol` codecs, read and decode a response, tell a closed connection.

use std::{io::Read, net::TcpStream, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::{
    messages::{
        fetch_request::{FetchPartition, FetchTopic},
        produce_request::{PartitionProduceData, TopicProduceData},
        ApiKey, BrokerId, FetchRequest, ProduceRequest, ProduceResponse, RequestHeader,
        ResponseHeader, TopicName,
    },
    protocol::{Decodable, Encodable, StrBytes},
    records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType},
};

/// The client id of every request framed here.
pub const CLIENT_ID: &str = "protocol-test";

/// Connects to `addr` with a 20 s read timeout (a hung broker fails the test).
pub fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// One length-prefixed request frame: header (client id [`CLIENT_ID`]) and body.
pub fn request_frame<R: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

/// Reads one response frame; `None` when the server closed the connection
/// (end of stream or a reset). Panics when the read timeout runs out first:
/// a connection that neither answers nor closes is neither.
pub fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    read_or_closed(s, &mut len)?;
    let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
    read_or_closed(s, &mut buf)?;
    Some(Bytes::from(buf))
}

/// Fills `buf`; `None` when the connection ends first.
fn read_or_closed(s: &mut TcpStream, buf: &mut [u8]) -> Option<()> {
    match s.read_exact(buf) {
        Ok(()) => Some(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("no answer within the read timeout, and the connection is still open")
        }
        Err(_) => None,
    }
}

/// Reads and decodes one response: its correlation id and body.
pub fn response<R: Decodable>(s: &mut TcpStream, key: ApiKey, version: i16) -> (i32, R) {
    let mut b = read_frame(s).expect("a response");
    let h = ResponseHeader::decode(&mut b, key.response_header_version(version)).unwrap();
    (h.correlation_id, R::decode(&mut b, version).unwrap())
}

/// Whether the server closed the connection: end of stream or a reset, not data
/// and not the read timeout running out.
pub fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// What the server sent before it closed the connection (end of stream or a
/// reset), as [`closed`] tells a close; `None` if a read timed out first, the
/// connection still open.
pub fn sent_before_close(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => Some(got),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(_) => Some(got),
    }
}

/// One uncompressed record batch (magic 2) holding `values`, offset deltas from 0.
pub fn batch(values: &[&str]) -> Bytes {
    let timed: Vec<_> = values
        .iter()
        .map(|v| (1_700_000_000_000, None, *v))
        .collect();
    encode_batch(&timed, -1, -1, -1)
}

/// [`batch`] from producer `pid` at `epoch`, records numbered from sequence `seq`
/// (-1, -1, -1: no producer), timestamped now, as a producer writes them (after
/// a restart the broker ages a producer by its batches' timestamps).
pub fn idempotent_batch(values: &[&str], pid: i64, epoch: i16, seq: i32) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let timed: Vec<_> = values.iter().map(|v| (now, None, *v)).collect();
    encode_batch(&timed, pid, epoch, seq)
}

/// A batch whose records are `(timestamp, value)`.
pub fn timed_batch(records: &[(i64, &str)]) -> Bytes {
    let keyless: Vec<_> = records.iter().map(|&(ts, v)| (ts, None, v)).collect();
    encode_batch(&keyless, -1, -1, -1)
}

/// A batch whose records are `(key, value)`.
pub fn keyed_batch(records: &[(&str, &str)]) -> Bytes {
    let keyed: Vec<_> = records
        .iter()
        .map(|&(k, v)| (1_700_000_000_000, Some(k), v))
        .collect();
    encode_batch(&keyed, -1, -1, -1)
}

/// A batch whose records are `(key, value)`, a `None` key being null.
pub fn maybe_keyed_batch(records: &[(Option<&str>, &str)]) -> Bytes {
    let timed: Vec<_> = records
        .iter()
        .map(|&(k, v)| (1_700_000_000_000, k, v))
        .collect();
    encode_batch(&timed, -1, -1, -1)
}

fn encode_batch(values: &[(i64, Option<&str>, &str)], pid: i64, epoch: i16, seq: i32) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, (ts, k, v))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch wherever `offset - sequence`
            // changes, and a Produce carries one batch per partition: without
            // a producer the header's base sequence is still -1.
            sequence: if seq < 0 {
                i as i32 - 1
            } else {
                seq + i as i32
            },
            timestamp: *ts,
            key: k.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

/// A Produce request with acks=all of `records` to one partition.
pub fn produce(topic: &str, partition: i32, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}

/// Sends `req` as Produce `version` with correlation id `cid` and reads its
/// answer (the next frame on `s`).
pub fn send_produce(
    s: &mut TcpStream,
    version: i16,
    cid: i32,
    req: &ProduceRequest,
) -> ProduceResponse {
    use std::io::Write;
    s.write_all(&request_frame(ApiKey::Produce, version, cid, req))
        .unwrap();
    response(s, ApiKey::Produce, version).1
}

/// The first partition's error code and base offset.
pub fn partition_result(r: &ProduceResponse) -> (i16, i64) {
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// A Fetch (read committed) of one partition from `offset`, waiting up to
/// `max_wait_ms` for at least one byte.
pub fn fetch_request(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

/// Metadata v12 of every topic, over a new connection to `addr`.
pub fn metadata_of(addr: &str) -> kafka_protocol::messages::MetadataResponse {
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};
    use std::io::Write;
    let mut c = connect(addr);
    let req = MetadataRequest::default().with_topics(None);
    c.write_all(&request_frame(ApiKey::Metadata, 12, 1, &req))
        .expect("send metadata");
    response::<MetadataResponse>(&mut c, ApiKey::Metadata, 12).1
}

/// Metadata for `topic` on `s` (creating it when `create` and the broker allows
/// auto-creation); the topic's error code.
pub fn topic_metadata(s: &mut TcpStream, topic: &str, create: bool) -> i16 {
    use kafka_protocol::messages::{
        metadata_request::MetadataRequestTopic, MetadataRequest, MetadataResponse,
    };
    use std::io::Write;
    let req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(topic.into()))))]))
        .with_allow_auto_topic_creation(create);
    s.write_all(&request_frame(ApiKey::Metadata, 9, 1, &req))
        .expect("send metadata");
    let (_, m): (i32, MetadataResponse) = response(s, ApiKey::Metadata, 9);
    m.topics[0].error_code
}
