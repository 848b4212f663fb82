//! Produce: validate, submit to the WAL-first pipeline in request order, answer once
//! every partition is durable per the sync mode (nothing at all for acks=0, unless
//! a partition failed: then the connection closes).

use crate::log_limit::{LogLimit, Refused, Shown};
use std::{collections::HashSet, sync::Arc, time::Duration};

use kafka_protocol::{
    messages::{
        produce_response::{
            BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
        },
        ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
        ProducerId,
    },
    protocol::StrBytes,
};
use tokio::sync::oneshot;

use crate::{
    server::{close_connection, codes, encode_response, Ctx, Pending, Reply},
    storage::{
        batch::{self, BatchError, RecordFault},
        ProduceError,
    },
};

/// The Kafka error code for a produce failure.
/// Where a record batch holds its magic byte.
const MAGIC_OFFSET: usize = 16;

pub(crate) fn error_code(e: &ProduceError) -> i16 {
    match e {
        ProduceError::UnknownTopicOrPartition => codes::UNKNOWN_TOPIC_OR_PARTITION,
        ProduceError::InvalidBatch(BatchError::UnsupportedCompression(_)) => {
            codes::UNSUPPORTED_COMPRESSION_TYPE
        }
        // Only a CRC mismatch is CORRUPT_MESSAGE, which clients retry (the bytes
        // may have been damaged on the way); a batch that is wrong as sent gets
        // INVALID_RECORD, which they do not, as from Kafka's LogValidator.
        ProduceError::InvalidBatch(BatchError::Crc { .. }) => codes::CORRUPT_MESSAGE,
        ProduceError::InvalidBatch(BatchError::BadRecord {
            what: RecordFault::Timestamp,
            ..
        }) => codes::INVALID_TIMESTAMP,
        ProduceError::InvalidBatch(_) => codes::INVALID_RECORD,
        ProduceError::TooLarge(_) => codes::MESSAGE_TOO_LARGE,
        ProduceError::BatchTooLarge(_) => codes::RECORD_BATCH_TOO_LARGE,
        ProduceError::Storage(_)
        | ProduceError::ConfigsNotDurable(_)
        | ProduceError::SpaceShort(_) => codes::KAFKA_STORAGE_ERROR,
        ProduceError::Timeout => codes::REQUEST_TIMED_OUT,
        ProduceError::ShuttingDown => codes::NOT_LEADER_OR_FOLLOWER,
        ProduceError::InvalidAcks => codes::INVALID_REQUIRED_ACKS,
        ProduceError::NamedTwice => codes::INVALID_REQUEST,
        ProduceError::OutOfOrderSequence(_) => codes::OUT_OF_ORDER_SEQUENCE_NUMBER,
        ProduceError::InvalidProducerEpoch(_) => codes::INVALID_PRODUCER_EPOCH,
        ProduceError::Transactional => codes::INVALID_TXN_STATE,
        // As Kafka's LogValidator refuses it.
        ProduceError::ControlBatch => codes::INVALID_RECORD,
        ProduceError::InvalidRecord { .. } => codes::INVALID_RECORD,
        ProduceError::InvalidTimestamp { .. } => codes::INVALID_TIMESTAMP,
    }
}

fn message(e: &ProduceError) -> String {
    match e {
        ProduceError::UnknownTopicOrPartition => "unknown topic or partition".into(),
        ProduceError::InvalidBatch(b) => b.to_string(),
        ProduceError::TooLarge(s)
        | ProduceError::BatchTooLarge(s)
        | ProduceError::Storage(s)
        | ProduceError::ConfigsNotDurable(s)
        | ProduceError::SpaceShort(s) => s.clone(),
        // Any of the waits a produce may time out in: for the decompression
        // budget or a validation slot (CPU load, not the disk), or for write
        // capacity.
        ProduceError::Timeout => {
            "timed out waiting for room to validate or write the batch (the decompression \
             budget, a validation slot, or write capacity)"
                .into()
        }
        ProduceError::ShuttingDown => "broker is shutting down".into(),
        ProduceError::InvalidAcks => "acks must be -1, 0 or 1".into(),
        ProduceError::NamedTwice => {
            "the partition is named more than once in the request: none of its batches is stored"
                .into()
        }
        ProduceError::OutOfOrderSequence(m) | ProduceError::InvalidProducerEpoch(m) => m.clone(),
        ProduceError::Transactional => "transactions are not supported".into(),
        ProduceError::ControlBatch => "Clients are not allowed to write control records".into(),
        ProduceError::InvalidRecord { message, .. }
        | ProduceError::InvalidTimestamp { message, .. } => message.clone(),
    }
}

/// InitProducerId: a new producer id at epoch 0 for an idempotent producer, as Kafka
/// answers one without a transactional id (a producer re-initialising after an
/// error gets a new id too). Transactions are not supported.
///
/// When no id can be handed out (the reservation in `producer-ids.json` could
/// not be stored) the answer is `COORDINATOR_LOAD_IN_PROGRESS`, as Kafka's
/// producer id manager answers while it has no block of ids: clients retry it
/// as it is. `COORDINATOR_NOT_AVAILABLE` would send the Java client looking up
/// a transaction coordinator for a producer that has no transactional id.
/// Once no id is left to hand out (the reservation at the end of the id
/// space) the answer is `UNKNOWN_SERVER_ERROR`, as Kafka answers when its
/// producer ids are exhausted: no retry would get one.
pub(crate) async fn init_producer_id(
    ctx: &Arc<Ctx>,
    req: &InitProducerIdRequest,
) -> InitProducerIdResponse {
    let r = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req.transactional_id.is_some() {
        crate::log_limit::limited!(
            warn,
            "InitProducerId with a transactional id refused: transactions are not supported"
        );
        return r.with_error_code(codes::INVALID_REQUEST);
    }
    let storage = ctx.storage.clone();
    match crate::server::blocking(ctx, move || storage.allocate_producer_id()).await {
        Ok(Ok(id)) => {
            crate::log_limit::limited!(info, producer_id = id, "new idempotent producer");
            r.with_error_code(codes::NONE)
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0)
        }
        Ok(Err(e)) => {
            crate::log_limit::limited!(error, error = %e, "could not allocate a producer id");
            r.with_error_code(init_producer_id_error(&e))
        }
        Err(e) => {
            crate::log_limit::limited!(error, error = %e, "producer id task failed");
            r.with_error_code(codes::COORDINATOR_LOAD_IN_PROGRESS)
        }
    }
}

/// The InitProducerId answer to a failed allocation (see [`init_producer_id`]).
fn init_producer_id_error(e: &crate::error::Error) -> i16 {
    match e {
        crate::error::Error::ProducerIdsExhausted { .. } => codes::UNKNOWN_SERVER_ERROR,
        _ => codes::COORDINATOR_LOAD_IN_PROGRESS,
    }
}

type Outcome = Result<oneshot::Receiver<Result<i64, ProduceError>>, ProduceError>;

/// What the allocator spends on an allocation beyond the bytes asked for
/// (glibc's malloc: a 16-byte header and rounding to 16).
const ALLOCATION_OVERHEAD: usize = 16;

/// The heap bytes `e` holds beyond its own size.
fn heap_bytes(e: &ProduceError) -> usize {
    let owned = match e {
        ProduceError::TooLarge(m)
        | ProduceError::BatchTooLarge(m)
        | ProduceError::Storage(m)
        | ProduceError::ConfigsNotDurable(m)
        | ProduceError::SpaceShort(m)
        | ProduceError::OutOfOrderSequence(m)
        | ProduceError::InvalidProducerEpoch(m) => m.capacity(),
        ProduceError::InvalidRecord { message, records }
        | ProduceError::InvalidTimestamp { message, records } => {
            message.capacity() + records.capacity() * std::mem::size_of::<i32>()
        }
        ProduceError::UnknownTopicOrPartition
        | ProduceError::InvalidBatch(_)
        | ProduceError::Timeout
        | ProduceError::ShuttingDown
        | ProduceError::InvalidAcks
        | ProduceError::NamedTwice
        | ProduceError::Transactional
        | ProduceError::ControlBatch => return 0,
    };
    owned + ALLOCATION_OVERHEAD
}

/// The bytes a Produce's answer to come keeps, beyond its frame, from its
/// submission until it is written: each topic's entry and list of partitions,
/// each partition's outcome, and the shared state of each acknowledgement
/// awaited (whose sender the pipeline holds). A partition refused before the
/// write costs 64 bytes here, one submitted about 200 (72 more when alone in
/// its topic), for as few as 6 on the wire, so the connection counts these
/// bytes in flight with the frame's (see `conn::InFlight`).
fn kept_bytes(submitted: &[(kafka_protocol::messages::TopicName, Vec<(i32, Outcome)>)]) -> usize {
    let acknowledgement =
        std::mem::size_of::<Result<i64, ProduceError>>() + 64 + ALLOCATION_OVERHEAD;
    // The list of topics is sized to the request.
    let mut kept = std::mem::size_of_val(submitted) + ALLOCATION_OVERHEAD;
    for (_, parts) in submitted {
        kept += parts.capacity() * std::mem::size_of::<(i32, Outcome)>() + ALLOCATION_OVERHEAD;
        for (_, outcome) in parts {
            kept += match outcome {
                Ok(_) => acknowledgement,
                Err(e) => heap_bytes(e),
            };
        }
    }
    kept
}

/// Whether `e`, refusing `records` before they were submitted, is one clients
/// retry (the capacity or decompression wait timed out; the CRC did not
/// match; the topic's configs are not yet durable; the space reserve is short;
/// a batch of more than one record too large, which the Java producer
/// splits and sends again from its first sequence): the batch will come
/// again, after any the client pipelined behind it.
fn retried_before_the_write(e: &ProduceError, records: &[u8]) -> bool {
    match e {
        // A refusal for configs not yet durable ends when a retry of their
        // change stores them, and one for a short reserve when it is taken
        // again (a refused produce has it look for room): either may come
        // between two pipelined batches.
        ProduceError::Timeout
        | ProduceError::InvalidBatch(BatchError::Crc { .. })
        | ProduceError::ConfigsNotDurable(_)
        | ProduceError::SpaceShort(_) => true,
        ProduceError::TooLarge(_) => {
            crate::storage::batch::parse_header(records).is_ok_and(|i| i.last_offset_delta > 0)
        }
        _ => false,
    }
}

/// Whether `records` is a batch of an idempotent producer (a producer id of 0
/// or more), whose sequence the partition checks.
fn idempotent(records: &[u8]) -> bool {
    crate::storage::batch::parse_header(records).is_ok_and(|i| i.producer_id >= 0)
}

/// Submits every partition's records in request order and returns the response
/// to come, whether the connection closes after it, and the bytes that
/// response keeps until it is written ([`kept_bytes`]). With acks=0 there is no
/// response; as in Kafka, a partition that fails closes the connection instead,
/// so that the client notices, reconnects and refreshes its metadata: at once
/// when the failure is known before the write (no further request is read),
/// otherwise once the write fails.
///
/// An idempotent producer's batch refused before the write with an error
/// clients retry ([`retried_before_the_write`]) is answered, and then the
/// connection closes, reading no further request: the batches the client
/// pipelined behind it would otherwise be stored first, and a producer the
/// partition does not know yet may start at any sequence, so the retry would
/// be out of order for good. The client fails the requests still in flight on
/// the connection and sends them again, in order, after the retried one.
pub(crate) async fn handle(
    ctx: &Arc<Ctx>,
    req: ProduceRequest,
    version: i16,
    cid: i32,
) -> (Pending, bool, usize) {
    let timeout = Duration::from_millis(
        u64::try_from(req.timeout_ms)
            .unwrap_or(0)
            .clamp(100, 300_000),
    );
    // One deadline for the whole request: each partition waits for pipeline
    // capacity only for what is left of it (once it has passed, a partition
    // still goes in if there is room at once).
    let deadline = tokio::time::Instant::now() + timeout;
    let acks = req.acks;
    let mut submitted: Vec<(kafka_protocol::messages::TopicName, Vec<(i32, Outcome)>)> =
        Vec::with_capacity(req.topic_data.len());
    let (mut unknown, mut refused) = (Refused::default(), Refused::default());
    let mut out_of_line = false;
    // A partition named more than once gets INVALID_REQUEST at every mention
    // and none of its batches is stored, as ListOffsets answers a repeat.
    // Before, each mention's batch was stored and answered in turn. Kafka
    // keeps the last mention alone, answered once: the batches before it
    // dropped though the client sent them.
    let repeated = {
        let mut seen = HashSet::new();
        let mut repeated = HashSet::new();
        for t in &req.topic_data {
            for p in &t.partition_data {
                if !seen.insert((&t.name, p.index)) {
                    repeated.insert((t.name.clone(), p.index));
                }
            }
        }
        repeated
    };
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        // Sized to the partitions: grown from empty, a list of one held
        // room for four.
        let mut parts = Vec::with_capacity(topic.partition_data.len());
        for p in topic.partition_data {
            let outcome = match &p.records {
                _ if !matches!(acks, -1..=1) => Err(ProduceError::InvalidAcks),
                _ if !repeated.is_empty() && repeated.contains(&(topic.name.clone(), p.index)) => {
                    Err(ProduceError::NamedTwice)
                }
                // As Kafka's `ProduceRequest.validateRecords`: zstd came with
                // Produce v7 (KIP-110); a client speaking an older version
                // cannot have meant it, and its consumers may not read it.
                // Judged, as there, after the partition is known (an unknown
                // one is answered as such, which clients retry) and for a v2
                // batch only (another magic is refused as Kafka refuses it).
                Some(records)
                    if version < 7
                        && records.get(MAGIC_OFFSET) == Some(&2)
                        && batch::codec(records) == 4
                        && ctx.storage.partition(&name, p.index).is_some() =>
                {
                    Err(ProduceError::InvalidBatch(
                        BatchError::UnsupportedCompression(4),
                    ))
                }
                Some(records) if !records.is_empty() => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    ctx.storage.submit(&name, p.index, records, left).await
                }
                _ => Err(ProduceError::InvalidBatch(BatchError::Truncated)),
            };
            match &outcome {
                Err(e @ ProduceError::UnknownTopicOrPartition) => {
                    unknown.add(&name, p.index, || message(e));
                }
                Err(e) => {
                    refused.add(&name, p.index, || message(e));
                    out_of_line |= p
                        .records
                        .as_deref()
                        .is_some_and(|r| idempotent(r) && retried_before_the_write(e, r));
                }
                Ok(_) => {}
            }
            parts.push((p.index, outcome));
        }
        submitted.push((topic.name, parts));
    }
    // Unknown partitions are routine while a client's metadata catches up with a
    // new topic.
    if let Some((topic, partition, error)) = &unknown.first {
        tracing::debug!(topic = %Shown(topic), partition, %error, rejected = unknown.count, "produce rejected");
    }
    if let Some((topic, partition, error)) = &refused.first {
        crate::log_limit::limited!(warn, topic = %Shown(topic), partition, %error, rejected = refused.count, "produce rejected");
    }
    let failed_now = submitted
        .iter()
        .any(|(_, parts)| parts.iter().any(|(_, o)| o.is_err()));
    let close_now = acks == 0 && failed_now;
    // A client that connects again after each can cause these at will.
    static CLOSES: LogLimit = LogLimit::new();
    if close_now {
        crate::log_limit::limited!(CLOSES => info, correlation_id = cid, "closing the connection: a produce with acks=0 failed");
    } else if out_of_line {
        crate::log_limit::limited!(info, correlation_id = cid, "closing the connection after the answer: an idempotent producer's batch was refused before the write, and the requests behind it must not go first");
    }
    let kept = kept_bytes(&submitted);
    let storage = ctx.storage.clone();
    let pending: Pending = Box::pin(async move {
        let mut failed = false;
        let mut responses = Vec::with_capacity(submitted.len());
        for (name, parts) in submitted {
            let mut out = Vec::with_capacity(parts.len());
            for (index, outcome) in parts {
                let result = match outcome {
                    Ok(rx) => rx.await.unwrap_or(Err(ProduceError::ShuttingDown)),
                    Err(e) => Err(e),
                };
                let log_start = storage
                    .partition(&name.0, index)
                    .map_or(-1, |p| p.log_start_offset());
                let r = PartitionProduceResponse::default()
                    .with_index(index)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(if version >= 5 { log_start } else { -1 });
                failed |= result.is_err();
                out.push(match result {
                    Ok(base) => r.with_error_code(codes::NONE).with_base_offset(base),
                    Err(e) => {
                        // The records at fault, each with its own message or
                        // none (the client then takes the partition's); sent
                        // from v8 only.
                        let records: Vec<(i32, Option<String>)> = match &e {
                            ProduceError::InvalidRecord { records, .. }
                            | ProduceError::InvalidTimestamp { records, .. }
                                if version >= 8 =>
                            {
                                records.iter().map(|&i| (i, None)).collect()
                            }
                            ProduceError::InvalidBatch(BatchError::BadRecord { index, what })
                                if *what != RecordFault::BeyondCount =>
                            {
                                vec![(*index, Some(message(&e)))]
                            }
                            _ => Vec::new(),
                        };
                        let r = if version >= 8 && !records.is_empty() {
                            r.with_record_errors(
                                records
                                    .into_iter()
                                    .map(|(index, message)| {
                                        BatchIndexAndErrorMessage::default()
                                            .with_batch_index(index)
                                            .with_batch_index_error_message(
                                                message.map(StrBytes::from_string),
                                            )
                                    })
                                    .collect(),
                            )
                        } else {
                            r
                        };
                        r.with_error_code(super::storage_error_as_known(
                            error_code(&e),
                            version >= 4,
                        ))
                        .with_base_offset(-1)
                        .with_error_message(
                            (version >= 8).then(|| StrBytes::from_string(message(&e))),
                        )
                    }
                });
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(out),
            );
        }
        if acks == 0 {
            if failed && !close_now {
                crate::log_limit::limited!(CLOSES => info, correlation_id = cid, "closing the connection: a produce with acks=0 failed");
            }
            return if failed {
                close_connection()
            } else {
                Reply::nothing()
            };
        }
        encode_response(
            ApiKey::Produce,
            version,
            cid,
            &ProduceResponse::default().with_responses(responses),
        )
    });
    (pending, close_now || out_of_line, kept)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    /// Producer ids exhausted: no retry gets one, so the answer is not the
    /// retriable one a failed reservation write gets.
    #[test]
    fn exhausted_producer_ids_are_not_answered_as_retriable() {
        let exhausted = crate::error::Error::ProducerIdsExhausted {
            path: "producer-ids.json".into(),
            reserved_below: i64::MAX - 1000,
            block: 1000,
        };
        assert_eq!(
            init_producer_id_error(&exhausted),
            codes::UNKNOWN_SERVER_ERROR
        );
        let unwritable = crate::error::Error::io(
            "write",
            "producer-ids.json",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(
            init_producer_id_error(&unwritable),
            codes::COORDINATOR_LOAD_IN_PROGRESS
        );
    }

    /// A produce refused because the topic's configs are not yet durable is
    /// retried by its client, and the refusal may end between two pipelined
    /// batches (a retry of the config change stores the file): like a
    /// timed-out one, it closes an idempotent producer's connection after
    /// its answer, so that a later batch cannot be stored before it.
    /// So is one refused while the space reserve is short: the refusal ends
    /// once it is taken again, which the refused produce itself starts.
    #[test]
    fn a_refusal_for_configs_not_durable_is_retried_before_the_write() {
        let records = crate::storage::batch::tests::make_batch(0, &[b"v"]);
        for e in [
            ProduceError::ConfigsNotDurable("not durable".into()),
            ProduceError::SpaceShort("short".into()),
        ] {
            assert!(retried_before_the_write(&e, &records), "{e:?}");
            assert_eq!(error_code(&e), codes::KAFKA_STORAGE_ERROR);
        }
        assert!(!retried_before_the_write(
            &ProduceError::Storage("failed".into()),
            &records
        ));
    }

    /// A record whose timestamp delta overflows is INVALID_TIMESTAMP, as from
    /// Kafka; another bad record stays INVALID_RECORD, with its index.
    #[test]
    fn an_overflowing_record_timestamp_is_answered_invalid_timestamp() {
        let bad = |what| ProduceError::InvalidBatch(BatchError::BadRecord { index: 1, what });
        assert_eq!(
            error_code(&bad(RecordFault::Timestamp)),
            codes::INVALID_TIMESTAMP
        );
        assert_eq!(error_code(&bad(RecordFault::Field)), codes::INVALID_RECORD);
        assert!(message(&bad(RecordFault::Timestamp)).contains("record 1: its timestamp delta"));
    }

    use bytes::{Buf, Bytes};
    use kafka_protocol::{
        messages::{
            produce_request::{PartitionProduceData, TopicProduceData},
            ResponseHeader, TopicName,
        },
        protocol::Decodable,
    };

    use super::*;
    use crate::{
        config::Config,
        server::{groups::GroupCoordinator, metrics::Metrics, Security},
        storage::{batch::tests::make_batch, TopicManager},
    };

    fn context(storage: &TopicManager, c: &Config) -> Arc<Ctx> {
        Arc::new(Ctx {
            storage: storage.clone(),
            groups: Arc::new(GroupCoordinator::new(&c.groups)),
            host: "localhost".into(),
            port: 9092,
            metrics: Metrics::new(),
            fetch_memory: crate::server::fetch_memory::FetchMemory::new(
                c.server.fetch_response_memory_bytes,
            ),
            reads: Arc::new(tokio::sync::Semaphore::new(crate::server::READS_AT_ONCE)),
            work: Arc::new(tokio::sync::Semaphore::new(crate::server::WORK_AT_ONCE)),
            security: Arc::new(Security::load(&c.server).unwrap()),
            stopping: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Storage over a fresh directory holding topic `t` with `partitions`, its
    /// server context, and a runtime of two workers.
    fn with_topic(
        partitions: i32,
    ) -> (
        tempfile::TempDir,
        TopicManager,
        Arc<Ctx>,
        tokio::runtime::Runtime,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.storage.data_dir = tmp.path().to_path_buf();
        let storage = TopicManager::new(c.clone()).unwrap();
        storage.create_topic("t", partitions).unwrap();
        let ctx = context(&storage, &c);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        (tmp, storage, ctx, rt)
    }

    /// A Produce to topic `t` of `partitions`, with `acks` and a timeout.
    fn produce_to_t(
        acks: i16,
        timeout_ms: i32,
        partitions: Vec<PartitionProduceData>,
    ) -> ProduceRequest {
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(partitions)])
    }

    /// Partition 0's data: `records`.
    fn partition_0(records: Vec<u8>) -> Vec<PartitionProduceData> {
        vec![PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(Bytes::from(records)))]
    }

    /// The response in `frame` as a client at `version` reads it: its
    /// correlation id and body.
    fn answer(frame: bytes::BytesMut, version: i16) -> (i32, ProduceResponse) {
        let mut b = frame.freeze();
        assert!(b.len() > 4, "answered, not closed unanswered");
        b.advance(4);
        let header =
            ResponseHeader::decode(&mut b, ApiKey::Produce.response_header_version(version))
                .unwrap();
        (
            header.correlation_id,
            ProduceResponse::decode(&mut b, version).unwrap(),
        )
    }

    /// A partition named twice in one Produce gets INVALID_REQUEST at each
    /// mention and none of its batches is stored; the other partitions go
    /// on. Before, both batches were stored and answered in turn (Kafka
    /// keeps the last alone, dropping the others unanswered).
    #[test]
    fn a_partition_named_twice_in_a_produce_is_refused_at_each_mention() {
        let (_tmp, storage, ctx, rt) = with_topic(2);
        let part = |index: i32, value: &[u8]| {
            PartitionProduceData::default()
                .with_index(index)
                .with_records(Some(Bytes::from(make_batch(0, &[value]))))
        };
        let parts = vec![part(0, b"a"), part(1, b"x"), part(0, b"b")];
        let frame = rt.block_on(async {
            let (pending, _, _) = handle(&ctx, produce_to_t(-1, 5000, parts), 9, 7).await;
            pending.await.frame.expect("a response")
        });
        let (_, r) = answer(frame, 9);
        let answered: Vec<(i32, i16)> = r.responses[0]
            .partition_responses
            .iter()
            .map(|p| (p.index, p.error_code))
            .collect();
        assert_eq!(
            answered,
            [
                (0, codes::INVALID_REQUEST),
                (1, codes::NONE),
                (0, codes::INVALID_REQUEST)
            ]
        );
        assert_eq!(storage.partition("t", 0).unwrap().high_watermark(), 0);
        assert_eq!(storage.partition("t", 1).unwrap().high_watermark(), 1);
        storage.shutdown().unwrap();
    }

    /// A batch whose base offset is not 0 is refused INVALID_RECORD, as
    /// Kafka refuses it; before, it was stored (at the offset the broker
    /// assigns).
    #[test]
    fn a_batch_with_a_base_offset_other_than_zero_is_refused() {
        let (_tmp, storage, ctx, rt) = with_topic(1);
        let req = produce_to_t(-1, 5000, partition_0(make_batch(1234, &[b"a"])));
        let frame = rt.block_on(async {
            let (pending, _, _) = handle(&ctx, req, 9, 7).await;
            pending.await.frame.expect("a response")
        });
        let (_, r) = answer(frame, 9);
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, codes::INVALID_RECORD);
        assert_eq!(
            p.error_message.as_deref(),
            Some("the base offset of a produced record batch should be 0, but it is 1234")
        );
        assert_eq!(storage.partition("t", 0).unwrap().high_watermark(), 0);
        storage.shutdown().unwrap();
    }

    #[test]
    fn a_producer_id_that_cannot_be_allocated_is_answered_with_a_code_clients_retry() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.storage.data_dir = tmp.path().to_path_buf();
        let storage = TopicManager::new(c.clone()).unwrap();
        let ctx = context(&storage, &c);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The reservation cannot be stored: a directory stands where the file
        // is renamed to.
        let ids = tmp
            .path()
            .join(crate::storage::producers::ProducerIds::FILE);
        std::fs::create_dir(&ids).unwrap();
        let req = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000);
        let r = rt.block_on(init_producer_id(&ctx, &req));
        // Kafka's answer while its producer id manager has no block of ids; the
        // Java client retries it, where COORDINATOR_NOT_AVAILABLE sends it
        // looking for a transaction coordinator.
        assert_eq!(r.error_code, codes::COORDINATOR_LOAD_IN_PROGRESS);
        assert_eq!((r.producer_id.0, r.producer_epoch), (-1, -1));
        // Retried once the reservation can be stored: an id.
        std::fs::remove_dir(&ids).unwrap();
        let r = rt.block_on(init_producer_id(&ctx, &req));
        assert_eq!(r.error_code, codes::NONE);
        assert_eq!((r.producer_id.0, r.producer_epoch), (0, 0));
        storage.shutdown().unwrap();
    }

    #[test]
    fn the_capacity_wait_is_bounded_once_per_request_not_once_per_partition() {
        let (_tmp, storage, ctx, rt) = with_topic(5);
        // The pipeline is full: every partition waits for room.
        let held = storage.hold_capacity();
        let partitions = (0..5)
            .map(|p| {
                PartitionProduceData::default()
                    .with_index(p)
                    .with_records(Some(Bytes::from(make_batch(0, &[b"v"]))))
            })
            .collect();
        let req = produce_to_t(-1, 1000, partitions);
        let start = Instant::now();
        let frame = rt.block_on(async {
            let (pending, close, _) = handle(&ctx, req, 9, 7).await;
            assert!(!close);
            pending.await.frame.expect("a response")
        });
        let took = start.elapsed();
        // Each partition waited its own 1 s: 5 s for five. (Wide margins:
        // the machine running the suite may stall for a second.)
        assert!(
            took >= Duration::from_millis(1000) && took < Duration::from_millis(2500),
            "answered after {took:?}"
        );
        let (correlation_id, r) = answer(frame, 9);
        assert_eq!(correlation_id, 7);
        let codes: Vec<i16> = r.responses[0]
            .partition_responses
            .iter()
            .map(|p| p.error_code)
            .collect();
        assert_eq!(codes, vec![codes::REQUEST_TIMED_OUT; 5]);
        drop(held);
        storage.shutdown().unwrap();
    }

    /// A refused produce's log line goes through a limit, and its topic is
    /// escaped: a connection pipelining refused produces (null records) wrote
    /// some 20 MB of log a second, and a topic holding a newline wrote a
    /// line of the client's choosing.
    #[test]
    fn refused_produces_are_logged_within_a_limit_and_their_topic_escaped() {
        use crate::log_limit::PER_WINDOW;
        let (_tmp, storage, ctx, _rt) = with_topic(1);
        let forged = "t\n2026-12-06T10:00:00Z ERROR streamline::wal: forged";
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ((), log) = crate::storage::partition::tests::logged(|| {
            rt.block_on(async {
                for i in 0..100 {
                    let req = ProduceRequest::default()
                        .with_acks(1)
                        .with_timeout_ms(1000)
                        .with_topic_data(vec![TopicProduceData::default()
                            .with_name(TopicName(StrBytes::from_static_str(forged)))
                            .with_partition_data(vec![
                                PartitionProduceData::default().with_index(0)
                            ])]);
                    let (pending, _, _) = handle(&ctx, req, 9, i).await;
                    pending.await.frame.expect("a response");
                }
            })
        });
        let lines = log
            .lines()
            .filter(|l| l.contains("produce rejected"))
            .count();
        assert!(lines <= PER_WINDOW as usize, "{lines} lines:\n{log}");
        assert!(
            !log.lines().any(|l| l.starts_with("2026-12-06T10:00:00Z")),
            "{log}"
        );
        storage.shutdown().unwrap();
    }

    /// Produces whose validation may wait holding a thread (a compressed
    /// batch) take one of a few places first, waiting for one without
    /// a thread: each held a thread of tokio's blocking pool while it waited
    /// for the decompression budget (up to the request's timeout), and some
    /// 500 waiting left the broker answering no one (a Metadata took 50 s).
    #[test]
    fn at_most_a_few_produce_validations_hold_a_thread_at_once() {
        use crate::storage::BLOCKING_VALIDATIONS;
        let (_tmp, storage, ctx, rt) = with_topic(1);
        storage.pause_blocking_validations(Duration::from_millis(100));
        let value = vec![b'x'; 70 * 1024];
        // Compressed: only those may wait for the decompression budget, and
        // take a place (a large uncompressed batch is checked without one).
        let gzipped = crate::storage::batch::tests::compress_batch(&make_batch(0, &[&value]), 1);
        let n = 3 * BLOCKING_VALIDATIONS;
        let answered: Vec<i16> = rt.block_on(async {
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let ctx = Arc::clone(&ctx);
                    let req = produce_to_t(1, 30_000, partition_0(gzipped.clone()));
                    tokio::spawn(async move {
                        let (pending, _, _) = handle(&ctx, req, 9, i as i32).await;
                        pending.await.frame.expect("a response")
                    })
                })
                .collect();
            let mut answered = Vec::new();
            for t in tasks {
                let (_, r) = answer(t.await.unwrap(), 9);
                answered.push(r.responses[0].partition_responses[0].error_code);
            }
            answered
        });
        assert!(answered.iter().all(|&c| c == codes::NONE), "{answered:?}");
        let most = storage.most_blocking_validations();
        assert!((2..=BLOCKING_VALIDATIONS).contains(&most), "{most} at once");
        storage.shutdown().unwrap();
    }

    /// A batch that waited for the decompression budget waits for pipeline
    /// capacity only for what is left of the request's timeout: each wait
    /// had the whole timeout, so a compressed batch could be stored after
    /// its client (whose request timeout is the Produce's) had given up and
    /// would retry it.
    #[test]
    fn the_decompression_and_capacity_waits_share_one_deadline() {
        let (_tmp, storage, ctx, rt) = with_topic(1);
        let held = storage.hold_capacity();
        storage.pause_next_validation(Duration::from_millis(2000));
        let req = produce_to_t(-1, 2500, partition_0(make_batch(0, &[b"v"])));
        let start = Instant::now();
        let frame = rt.block_on(async {
            let (pending, _, _) = handle(&ctx, req, 9, 7).await;
            pending.await.frame.expect("a response")
        });
        let took = start.elapsed();
        // 2 s validating, then 0.5 s for room: 4.5 s with a fresh 2.5 s.
        // (Wide margins: the machine running the suite may stall for a second.)
        assert!(
            took >= Duration::from_millis(2500) && took < Duration::from_millis(3750),
            "answered after {took:?}"
        );
        let (_, r) = answer(frame, 9);
        assert_eq!(
            r.responses[0].partition_responses[0].error_code,
            codes::REQUEST_TIMED_OUT
        );
        drop(held);
        storage.shutdown().unwrap();
    }

    /// A CRC mismatch is retried by clients too: an idempotent producer's
    /// batch refused for one is answered, then the connection closes, so the
    /// batches pipelined behind it cannot go first; other producers' batches
    /// keep the connection.
    #[test]
    fn an_idempotent_batch_with_a_crc_mismatch_is_answered_and_then_the_connection_closes() {
        use crate::storage::batch::tests::make_producer_batch;
        let (_tmp, storage, ctx, rt) = with_topic(1);
        // (producer id, epoch, sequence), and whether the connection closes.
        for ((pid, epoch, seq), closes) in [((7, 0, 0), true), ((-1, -1, -1), false)] {
            let mut b = make_producer_batch(0, &[b"v"], pid, epoch, seq);
            let n = b.len();
            b[n - 1] ^= 1;
            let req = produce_to_t(1, 5000, partition_0(b));
            let (frame, close) = rt.block_on(async {
                let (pending, close, _) = handle(&ctx, req, 9, 7).await;
                (pending.await.frame.expect("a response"), close)
            });
            assert_eq!(close, closes, "producer id {pid}");
            let (_, r) = answer(frame, 9);
            assert_eq!(
                r.responses[0].partition_responses[0].error_code,
                codes::CORRUPT_MESSAGE
            );
        }
        storage.shutdown().unwrap();
    }

    /// A batch flagged LogAppendTime, with the client's leader epoch, was
    /// stored as sent: Java consumers of a CreateTime topic read every record's
    /// timestamp as the batch's largest.
    #[test]
    fn a_batch_flagged_log_append_time_is_stored_as_create_time_with_the_brokers_leader_epoch() {
        use crate::storage::batch::{self, tests::make_timed_batch};
        let (_tmp, storage, ctx, rt) = with_topic(1);
        let now = crate::storage::segment::now_ms();
        let mut sent = make_timed_batch(0, now, &[(0, b"a"), (30, b"b")], 7, 0, 0);
        sent[12..16].copy_from_slice(&5i32.to_be_bytes()); // partition leader epoch
        sent[22] |= 0x08; // LogAppendTime
        let crc = crc32c::crc32c(&sent[21..]);
        sent[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(batch::validate(&sent).is_ok());
        let req = produce_to_t(-1, 5000, partition_0(sent.clone()));
        let frame = rt.block_on(async {
            let (pending, close, _) = handle(&ctx, req, 9, 7).await;
            assert!(!close);
            pending.await.frame.expect("a response")
        });
        let (_, r) = answer(frame, 9);
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (codes::NONE, 0));

        let stored = storage
            .partition("t", 0)
            .unwrap()
            .read(0, 1 << 20)
            .unwrap()
            .unwrap()
            .records;
        let info = batch::validate(&stored).expect("a valid CRC");
        assert_eq!(info.len, stored.len());
        assert_eq!(info.attributes & 0x08, 0, "CreateTime, the topic's type");
        assert_eq!(
            i32::from_be_bytes(stored[12..16].try_into().unwrap()),
            batch::PARTITION_LEADER_EPOCH
        );
        assert_eq!(info.max_timestamp, now + 30);
        // Everything else as sent: the records, the producer and its sequence.
        assert_eq!(stored[23..], sent[23..]);
        let times: Vec<i64> = batch::records(&stored)
            .unwrap()
            .map(|r| r.timestamp)
            .collect();
        assert_eq!(times, vec![now, now + 30], "the records' own timestamps");
        storage.shutdown().unwrap();
    }

    /// zstd came with Produce v7: below it, Kafka answers
    /// UNSUPPORTED_COMPRESSION_TYPE and stores nothing.
    #[test]
    fn a_zstd_batch_below_produce_v7_is_refused() {
        use crate::storage::batch::tests::{compress_batch, make_batch};
        let (_tmp, storage, ctx, rt) = with_topic(1);
        let send = |version: i16, partition: i32, records: Vec<u8>| {
            let req = produce_to_t(
                -1,
                5000,
                vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(Bytes::from(records)))],
            );
            let frame = rt.block_on(async {
                let (pending, _, _) = handle(&ctx, req, version, 7).await;
                pending.await.frame.expect("a response")
            });
            let (_, r) = answer(frame, version);
            let p = &r.responses[0].partition_responses[0];
            (p.error_code, p.base_offset)
        };
        let produce = |version: i16, codec: u8| {
            send(
                version,
                0,
                compress_batch(&make_batch(0, &[b"a", b"b"]), codec),
            )
        };
        assert_eq!(produce(6, 4), (codes::UNSUPPORTED_COMPRESSION_TYPE, -1));
        let zstd = compress_batch(&make_batch(0, &[b"a"]), 4);
        assert_eq!(
            send(6, 1, zstd.clone()),
            (codes::UNKNOWN_TOPIC_OR_PARTITION, -1),
            "an unknown partition is answered as such first"
        );
        let mut magic1 = zstd;
        magic1[16] = 1;
        assert_eq!(
            send(6, 0, magic1).0,
            codes::INVALID_RECORD,
            "another magic is refused as such"
        );
        assert_eq!(produce(6, 1), (codes::NONE, 0), "gzip is older");
        assert_eq!(produce(7, 4), (codes::NONE, 2));
        assert_eq!(storage.partition("t", 0).unwrap().high_watermark(), 4);
        storage.shutdown().unwrap();
    }
}
