//! Fetch (with long-poll) and ListOffsets. Reads run on blocking threads.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use bytes::Bytes;
use kafka_protocol::messages::{
    fetch_response::{FetchableTopicResponse, PartitionData},
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, TopicName,
};

use super::named_once;
use crate::{
    server::{codes, Ctx},
    storage::TopicManager,
};

struct Want {
    topic: TopicName,
    partitions: Vec<(i32, i64, i32)>,
}

/// One pass over the requested partitions: (response topics, bytes returned, any error).
/// As in Kafka (KIP-74), the response holds at most `max_bytes` of records and
/// each partition at most its `partition_max_bytes`, except that the first
/// partition with records gets its first batch whole however large it is (even
/// when a limit is 0), so that consumers always progress; later partitions get
/// only what fits in the bytes left.
fn read_all(
    storage: &TopicManager,
    wants: &[Want],
    max_bytes: i64,
    version: i16,
) -> (Vec<FetchableTopicResponse>, i64, bool) {
    let mut total = 0i64;
    let mut errors = false;
    let mut topics = Vec::with_capacity(wants.len());
    for w in wants {
        let mut parts = Vec::with_capacity(w.partitions.len());
        for &(index, offset, pmax) in &w.partitions {
            let base = PartitionData::default()
                .with_partition_index(index)
                .with_aborted_transactions(Some(vec![]))
                .with_preferred_read_replica(BrokerId(-1));
            // log_start_offset exists from v5 on.
            let start = |o: i64| if version >= 5 { o } else { -1 };
            let budget = if total >= max_bytes {
                0
            } else {
                (max_bytes - total).min(i64::from(pmax.max(0)))
            };
            let entry = match storage.partition(&w.topic.0, index) {
                None => {
                    errors = true;
                    base.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION)
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_log_start_offset(-1)
                        .with_records(Some(Bytes::new()))
                }
                Some(p) => {
                    // Kafka's minOneMessage: no records in the response yet.
                    let first = total == 0;
                    // Budget spent on earlier partitions: report positions only.
                    let read = if budget == 0 && !first {
                        p.positions(offset)
                    } else {
                        p.read_within(offset, budget as u64, first)
                    };
                    match read {
                        Ok(Some(r)) => {
                            total += r.records.len() as i64;
                            base.with_error_code(codes::NONE)
                                .with_high_watermark(r.high_watermark)
                                .with_last_stable_offset(r.high_watermark)
                                .with_log_start_offset(start(r.log_start_offset))
                                .with_records(Some(r.records))
                        }
                        Ok(None) => {
                            errors = true;
                            let hw = p.high_watermark();
                            base.with_error_code(codes::OFFSET_OUT_OF_RANGE)
                                .with_high_watermark(hw)
                                .with_last_stable_offset(hw)
                                .with_log_start_offset(start(p.log_start_offset()))
                                .with_records(Some(Bytes::new()))
                        }
                        Err(e) => {
                            errors = true;
                            tracing::error!(topic = %w.topic.0, partition = index, error = %e, "fetch read failed");
                            base.with_error_code(codes::KAFKA_STORAGE_ERROR)
                                .with_high_watermark(-1)
                                .with_last_stable_offset(-1)
                                .with_log_start_offset(-1)
                                .with_records(Some(Bytes::new()))
                        }
                    }
                }
            };
            parts.push(entry);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(w.topic.clone())
                .with_partitions(parts),
        );
    }
    (topics, total, errors)
}

/// Where each wanted partition's readable log starts and ends (`None`: no such
/// partition): what a read pass depends on. A long poll reads again only when
/// these move, not at every append to any partition of the broker.
fn positions(storage: &TopicManager, wants: &[Want]) -> Vec<Option<(i64, i64)>> {
    wants
        .iter()
        .flat_map(|w| {
            w.partitions.iter().map(move |&(index, ..)| {
                storage
                    .partition(&w.topic.0, index)
                    .map(|p| (p.log_start_offset(), p.high_watermark()))
            })
        })
        .collect()
}

pub(crate) async fn fetch(ctx: &Ctx, req: FetchRequest, version: i16) -> FetchResponse {
    // Each partition is read and answered once, the first time the request
    // names it: a long poll reads every partition again at each change, so
    // repeats would multiply that work.
    let wants: std::sync::Arc<Vec<Want>> = std::sync::Arc::new(
        named_once(
            req.topics.iter().map(|t| (&t.topic, &t.partitions[..])),
            |p| p.partition,
        )
        .into_iter()
        .map(|(topic, partitions)| Want {
            topic: topic.clone(),
            partitions: partitions
                .into_iter()
                .map(|p| (p.partition, p.fetch_offset, p.partition_max_bytes))
                .collect(),
        })
        .collect(),
    );
    // The client's limit, capped by the broker's (Kafka: min(maxBytes, fetch.max.bytes)).
    // A limit of 0 still gets the first batch (see read_all).
    let cap = i64::try_from(ctx.storage.config().server.fetch_max_bytes).unwrap_or(i64::MAX);
    let max_bytes = i64::from(req.max_bytes.max(0)).min(cap);
    let min_bytes = i64::from(req.min_bytes.max(0));
    let deadline = Instant::now()
        + Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0).min(60_000));
    let mut changes = ctx.storage.subscribe();
    loop {
        changes.borrow_and_update();
        // Before the read: an append between the two then still counts as a move.
        let seen = positions(&ctx.storage, &wants);
        let storage = ctx.storage.clone();
        let w = std::sync::Arc::clone(&wants);
        ctx.metrics.fetch_read();
        let pass =
            tokio::task::spawn_blocking(move || read_all(&storage, &w, max_bytes, version)).await;
        let (topics, total, errors) = match pass {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "fetch task failed");
                (Vec::new(), 0, true)
            }
        };
        let done = errors || total >= min_bytes || Instant::now() >= deadline;
        if done {
            return FetchResponse::default()
                .with_responses(topics)
                .with_session_id(0);
        }
        let moved = loop {
            let wait = tokio::time::timeout_at(deadline.into(), changes.changed()).await;
            if !matches!(wait, Ok(Ok(()))) {
                break false;
            }
            changes.borrow_and_update();
            if positions(&ctx.storage, &wants) != seen {
                break true;
            }
        };
        if !moved {
            // Deadline (or storage gone): one last read, then answer.
            let storage = ctx.storage.clone();
            let w = std::sync::Arc::clone(&wants);
            ctx.metrics.fetch_read();
            let topics =
                tokio::task::spawn_blocking(move || read_all(&storage, &w, max_bytes, version).0)
                    .await
                    .unwrap_or_default();
            return FetchResponse::default()
                .with_responses(topics)
                .with_session_id(0);
        }
    }
}

/// ListOffsets' special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
/// KIP-734, from v7.
const MAX_TIMESTAMP: i64 = -3;

pub(crate) async fn list_offsets(
    ctx: &Ctx,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    // leader_epoch exists from v4 on.
    let epoch = move |e: i32| if version >= 4 { e } else { -1 };
    let storage = ctx.storage.clone();
    let topics = tokio::task::spawn_blocking(move || {
        // As Kafka does, every mention of a partition named more than once is
        // answered INVALID_REQUEST, without a lookup.
        let mut seen = HashSet::new();
        let mut repeated = HashSet::new();
        for t in &req.topics {
            for p in &t.partitions {
                let key = (t.name.0.as_str(), p.partition_index);
                if !seen.insert(key) {
                    repeated.insert(key);
                }
            }
        }
        req.topics
            .iter()
            .map(|t| {
                let parts = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let r = ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_timestamp(-1);
                        if repeated.contains(&(t.name.0.as_str(), p.partition_index)) {
                            return r
                                .with_error_code(codes::INVALID_REQUEST)
                                .with_offset(-1)
                                .with_leader_epoch(-1);
                        }
                        let Some(part) = storage.partition(&t.name.0, p.partition_index) else {
                            return r
                                .with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION)
                                .with_offset(-1)
                                .with_leader_epoch(-1);
                        };
                        // (offset, timestamp): -1/-1 when no record qualifies; the
                        // timestamp is -1 for latest and earliest, as in Kafka.
                        let none = (-1, -1);
                        let found = match p.timestamp {
                            LATEST => Ok((part.high_watermark(), -1)),
                            EARLIEST => Ok((part.log_start_offset(), -1)),
                            MAX_TIMESTAMP => part.max_timestamp_offset().map(|o| o.unwrap_or(none)),
                            ts => part.offset_for_timestamp(ts).map(|o| o.unwrap_or(none)),
                        };
                        match found {
                            Ok((o, ts)) => r
                                .with_error_code(codes::NONE)
                                .with_offset(o)
                                .with_timestamp(ts)
                                .with_leader_epoch(epoch(0)),
                            Err(e) => {
                                tracing::error!(error = %e, "list offsets read failed");
                                r.with_error_code(codes::KAFKA_STORAGE_ERROR)
                                    .with_offset(-1)
                                    .with_leader_epoch(-1)
                            }
                        }
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(t.name.clone())
                    .with_partitions(parts)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    ListOffsetsResponse::default().with_topics(topics)
}
