//! DescribeCluster (KIP-700, Kafka 2.8) and DescribeTopicPartitions (KIP-966,
//! Kafka 3.7): what newer admin clients ask instead of Metadata. Both describe
//! this one node as the whole cluster, as Metadata does.

use std::collections::BTreeSet;

use kafka_protocol::{
    messages::{
        describe_cluster_response::DescribeClusterBroker,
        describe_topic_partitions_response::{
            Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
        },
        BrokerId, DescribeClusterRequest, DescribeClusterResponse, DescribeTopicPartitionsRequest,
        DescribeTopicPartitionsResponse, TopicName,
    },
    protocol::StrBytes,
};

use crate::{
    server::{codes, Ctx},
    storage::valid_topic_name,
};

/// Kafka's error codes for an endpoint of the wrong type, and of no known type.
const MISMATCHED_ENDPOINT_TYPE: i16 = 114;
const UNSUPPORTED_ENDPOINT_TYPE: i16 = 115;

/// `endpoint_type` of a broker's listener (2 is a KRaft controller's).
const BROKER_ENDPOINT: i8 = 1;
const CONTROLLER_ENDPOINT: i8 = 2;

/// The operations reported as authorized (here and by Metadata, when asked), as
/// bit fields of Kafka's `AclOperation` codes. Without an authorizer Kafka reports
/// every operation the resource type supports. The cluster: CREATE (5), ALTER (7), DESCRIBE (8), CLUSTER_ACTION (9),
/// DESCRIBE_CONFIGS (10), ALTER_CONFIGS (11), IDEMPOTENT_WRITE (12).
pub(super) const CLUSTER_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);
/// A topic: READ (3), WRITE (4), CREATE (5), DELETE (6), ALTER (7), DESCRIBE (8),
/// DESCRIBE_CONFIGS (10), ALTER_CONFIGS (11).
pub(super) const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);

/// The most partitions one DescribeTopicPartitions answer holds, whatever the
/// request asks for (Kafka's `max.request.partition.size.limit` default).
const MAX_PARTITIONS_PER_ANSWER: i32 = 2000;

/// DescribeCluster: this node as the only broker and the controller.
pub(crate) fn describe_cluster(ctx: &Ctx, req: &DescribeClusterRequest) -> DescribeClusterResponse {
    let meta = ctx.storage.meta();
    let response = DescribeClusterResponse::default().with_endpoint_type(BROKER_ENDPOINT);
    if req.endpoint_type != BROKER_ENDPOINT {
        let (code, message) = if req.endpoint_type == CONTROLLER_ENDPOINT {
            (
                MISMATCHED_ENDPOINT_TYPE,
                "The request was sent to an endpoint of type BROKER, but we wanted an endpoint of type CONTROLLER".to_string(),
            )
        } else {
            (
                UNSUPPORTED_ENDPOINT_TYPE,
                format!("Unsupported endpoint type {}", req.endpoint_type),
            )
        };
        return response
            .with_error_code(code)
            .with_error_message(Some(StrBytes::from_string(message)))
            .with_controller_id(BrokerId(-1))
            .with_cluster_authorized_operations(i32::MIN);
    }
    response
        .with_error_code(codes::NONE)
        .with_cluster_id(StrBytes::from_string(meta.cluster_id.clone()))
        .with_controller_id(BrokerId(meta.node_id))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(meta.node_id))
            .with_host(StrBytes::from_string(ctx.host.clone()))
            .with_port(ctx.port)
            .with_rack(None)
            .with_is_fenced(false)])
        .with_cluster_authorized_operations(if req.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS
        } else {
            i32::MIN
        })
}

/// DescribeTopicPartitions (Kafka's `DescribeTopicPartitionsRequestHandler`): the
/// topics asked for (every topic when none are), in name order, from the cursor
/// on, with at most `response_partition_limit` partitions (capped at 2000) in
/// all; `next_cursor` names the first partition left out. Unknown topics are
/// answered with an error and no partitions; nothing is created.
pub(crate) fn describe_topic_partitions(
    ctx: &Ctx,
    req: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let cursor = req
        .cursor
        .as_ref()
        .map(|c| (c.topic_name.0.to_string(), c.partition_index));
    let from = cursor.as_ref().map_or("", |(t, _)| t.as_str());
    // A name asked for twice is answered once (a set, as Kafka's handler keeps).
    let names: BTreeSet<String> = if req.topics.is_empty() {
        ctx.storage
            .topics()
            .iter()
            .map(|t| t.name.clone())
            .collect()
    } else {
        req.topics.iter().map(|t| t.name.0.to_string()).collect()
    };
    let invalid = match &cursor {
        Some((topic, _)) if !req.topics.is_empty() && !names.contains(topic) => true,
        Some((_, partition)) => *partition < 0,
        None => false,
    };
    if invalid {
        // The answer has no error field of its own: every topic the request
        // names gets it (none when it asked for every topic).
        let topics = if req.topics.is_empty() {
            Vec::new()
        } else {
            names
                .into_iter()
                .map(|n| error_topic(n, codes::INVALID_REQUEST))
                .collect()
        };
        return DescribeTopicPartitionsResponse::default().with_topics(topics);
    }
    let names: Vec<String> = names.into_iter().filter(|n| n.as_str() >= from).collect();
    let node = BrokerId(ctx.storage.meta().node_id);
    let mut room = req
        .response_partition_limit
        .clamp(1, MAX_PARTITIONS_PER_ANSWER) as usize;
    let mut topics = Vec::new();
    let mut next_cursor = None;
    for name in names {
        let Some(topic) = ctx.storage.topic(&name) else {
            let code = if valid_topic_name(&name) {
                codes::UNKNOWN_TOPIC_OR_PARTITION
            } else {
                codes::INVALID_TOPIC_EXCEPTION
            };
            topics.push(error_topic(name, code));
            continue;
        };
        if room == 0 {
            next_cursor = Some(Cursor::default().with_topic_name(topic_name(&name)));
            break;
        }
        let first = match &cursor {
            Some((t, p)) if *t == name => usize::try_from(*p).unwrap_or(0),
            _ => 0,
        };
        let left = topic.partitions.get(first..).unwrap_or_default();
        let partitions: Vec<_> = left
            .iter()
            .take(room)
            .map(|p| {
                DescribeTopicPartitionsResponsePartition::default()
                    .with_error_code(codes::NONE)
                    .with_partition_index(p.index())
                    .with_leader_id(node)
                    .with_leader_epoch(0)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node])
                    .with_eligible_leader_replicas(Some(vec![]))
                    .with_last_known_elr(Some(vec![]))
                    .with_offline_replicas(vec![])
            })
            .collect();
        room -= partitions.len();
        if partitions.len() < left.len() {
            next_cursor = Some(
                Cursor::default()
                    .with_topic_name(topic_name(&name))
                    .with_partition_index(
                        partitions
                            .last()
                            .map_or(first as i32, |p| p.partition_index + 1),
                    ),
            );
        }
        topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_error_code(codes::NONE)
                .with_name(Some(topic_name(&name)))
                .with_topic_id(topic.id)
                .with_is_internal(false)
                .with_partitions(partitions)
                .with_topic_authorized_operations(TOPIC_OPERATIONS),
        );
        if next_cursor.is_some() {
            break;
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next_cursor)
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn error_topic(name: String, code: i16) -> DescribeTopicPartitionsResponseTopic {
    DescribeTopicPartitionsResponseTopic::default()
        .with_error_code(code)
        .with_name(Some(topic_name(&name)))
        .with_topic_id(uuid::Uuid::nil())
        .with_topic_authorized_operations(i32::MIN)
}
