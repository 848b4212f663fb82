//! Admin APIs that a single node without an authorizer, replicas or
//! transactions answers as Kafka in that situation does, so that admin tools
//! get an answer rather than a closed connection: the ACL APIs
//! (SECURITY_DISABLED), DescribeProducers (the idempotent producers each
//! partition remembers), ElectLeaders (nothing to elect),
//! ListPartitionReassignments (none) and ListTransactions (none).

use kafka_protocol::{
    messages::{
        create_acls_response::AclCreationResult,
        delete_acls_response::DeleteAclsFilterResult,
        describe_producers_response::{PartitionResponse, ProducerState, TopicResponse},
        elect_leaders_response::{PartitionResult, ReplicaElectionResult},
        CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
        DescribeAclsResponse, DescribeProducersRequest, DescribeProducersResponse,
        ElectLeadersRequest, ElectLeadersResponse, ListPartitionReassignmentsResponse,
        ListTransactionsRequest, ListTransactionsResponse, ProducerId, TopicName,
    },
    protocol::StrBytes,
};

use super::named_once;
use crate::server::{codes, Ctx};

/// Kafka's code for a partition whose preferred replica already leads.
const ELECTION_NOT_NEEDED: i16 = 84;

fn message(s: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(s.into()))
}

/// DescribeAcls: Kafka without an authorizer answers SECURITY_DISABLED.
pub(crate) fn describe_acls() -> DescribeAclsResponse {
    DescribeAclsResponse::default()
        .with_error_code(codes::SECURITY_DISABLED)
        .with_error_message(message("No Authorizer is configured on the broker"))
}

/// CreateAcls: every creation fails with SECURITY_DISABLED, as without an
/// authorizer in Kafka.
pub(crate) fn create_acls(req: &CreateAclsRequest) -> CreateAclsResponse {
    let results = req
        .creations
        .iter()
        .map(|_| {
            AclCreationResult::default()
                .with_error_code(codes::SECURITY_DISABLED)
                .with_error_message(message("No Authorizer is configured."))
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

/// DeleteAcls: every filter fails with SECURITY_DISABLED, as without an
/// authorizer in Kafka.
pub(crate) fn delete_acls(req: &DeleteAclsRequest) -> DeleteAclsResponse {
    let results = req
        .filters
        .iter()
        .map(|_| {
            DeleteAclsFilterResult::default()
                .with_error_code(codes::SECURITY_DISABLED)
                .with_error_message(message("No Authorizer is configured."))
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}

/// The message of a partition this broker does not hold, Kafka's own. It does
/// not repeat the topic's name: a request naming thousands of partitions of a
/// long, unknown name would otherwise be answered with that name thousands of
/// times.
const NOT_HOSTED: &str = "This server does not host this topic-partition.";

/// DescribeProducers (`kafka-transactions --describe-producers`): the idempotent
/// producers each partition named remembers (those seen within a day), by id,
/// with the epoch and the last sequence and largest timestamp of the newest
/// batch (see `ProducerState::describe_unsorted`). Nothing is transactional:
/// coordinator epoch and transaction start are -1. Each partition is answered
/// once.
pub(crate) fn describe_producers(
    ctx: &Ctx,
    req: &DescribeProducersRequest,
) -> DescribeProducersResponse {
    let named = named_once(
        req.topics
            .iter()
            .map(|t| (&t.name, t.partition_indexes.as_slice())),
        |p| *p,
    );
    let topics = named
        .into_iter()
        .map(|(name, partitions)| {
            let topic = ctx.storage.topic(name.0.as_str());
            let partitions = partitions
                .into_iter()
                .map(|&index| {
                    let found = topic.as_ref().and_then(|t| {
                        usize::try_from(index)
                            .ok()
                            .and_then(|i| t.partitions.get(i))
                    });
                    let response = PartitionResponse::default().with_partition_index(index);
                    let Some(partition) = found else {
                        return response
                            .with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION)
                            .with_error_message(message(NOT_HOSTED.to_string()));
                    };
                    // As Kafka answers for a partition on a failed disk: an
                    // idempotent batch is recorded before its write, and one
                    // whose write failed stayed listed as the producer's last
                    // until a restart rebuilt the state from the log.
                    if let Some(why) = ctx.storage.failed_why() {
                        return response
                            .with_error_code(codes::KAFKA_STORAGE_ERROR)
                            .with_error_message(message(format!(
                                "storage failed ({why}): producer state is known again after \
                                 a restart"
                            )));
                    }
                    // Sorted once the state is let go (the guard is a
                    // temporary of this statement).
                    let mut described = partition.producers().describe_unsorted();
                    described.sort_unstable();
                    let producers = described
                        .into_iter()
                        .map(|(id, epoch, last_sequence, last_ms)| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(id))
                                .with_producer_epoch(i32::from(epoch))
                                .with_last_sequence(last_sequence)
                                .with_last_timestamp(last_ms)
                                .with_coordinator_epoch(-1)
                                .with_current_txn_start_offset(-1)
                        })
                        .collect();
                    response
                        .with_error_code(codes::NONE)
                        .with_active_producers(producers)
                })
                .collect();
            TopicResponse::default()
                .with_name(name.clone())
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}

/// ElectLeaders (`kafka-leader-election`): this node leads every partition, so
/// there is never anything to elect. Partitions named get ELECTION_NOT_NEEDED
/// (unknown ones UNKNOWN_TOPIC_OR_PARTITION), each once; asked for every
/// partition (no list), Kafka lists only the partitions it elected: none.
pub(crate) fn elect_leaders(ctx: &Ctx, req: &ElectLeadersRequest) -> ElectLeadersResponse {
    // 0 = preferred, 1 = unclean (v1+).
    let known_type = matches!(req.election_type, 0 | 1);
    let Some(asked) = &req.topic_partitions else {
        return ElectLeadersResponse::default().with_error_code(if known_type {
            codes::NONE
        } else {
            codes::INVALID_REQUEST
        });
    };
    let named = named_once(
        asked.iter().map(|t| (&t.topic, t.partitions.as_slice())),
        |p| *p,
    );
    let results = named
        .into_iter()
        .map(|(name, partitions)| {
            let topic = ctx.storage.topic(name.0.as_str());
            let partition_result = partitions
                .into_iter()
                .map(|&index| {
                    let exists = topic.as_ref().is_some_and(|t| {
                        usize::try_from(index).is_ok_and(|i| i < t.partitions.len())
                    });
                    let (code, text) = if !known_type {
                        (
                            codes::INVALID_REQUEST,
                            format!("unknown election type {}", req.election_type),
                        )
                    } else if exists {
                        (
                            ELECTION_NOT_NEEDED,
                            "Leader election not needed for topic partition".to_string(),
                        )
                    } else {
                        (codes::UNKNOWN_TOPIC_OR_PARTITION, NOT_HOSTED.to_string())
                    };
                    PartitionResult::default()
                        .with_partition_id(index)
                        .with_error_code(code)
                        .with_error_message(message(text))
                })
                .collect();
            ReplicaElectionResult::default()
                .with_topic(TopicName::clone(name))
                .with_partition_result(partition_result)
        })
        .collect();
    ElectLeadersResponse::default()
        .with_error_code(codes::NONE)
        .with_replica_election_results(results)
}

/// ListPartitionReassignments: with one replica per partition nothing is ever
/// being reassigned.
pub(crate) fn list_partition_reassignments() -> ListPartitionReassignmentsResponse {
    ListPartitionReassignmentsResponse::default().with_error_code(codes::NONE)
}

/// The transaction states Kafka knows, for ListTransactions' `state_filters`.
const TRANSACTION_STATES: [&str; 8] = [
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

/// ListTransactions (`kafka-transactions --list`): there are no transactions.
/// State filters Kafka does not know are reported back, as Kafka does.
pub(crate) fn list_transactions(req: &ListTransactionsRequest) -> ListTransactionsResponse {
    let unknown = req
        .state_filters
        .iter()
        .filter(|s| !TRANSACTION_STATES.contains(&s.as_str()))
        .cloned()
        .collect();
    ListTransactionsResponse::default()
        .with_error_code(codes::NONE)
        .with_unknown_state_filters(unknown)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::{
        messages::{
            describe_producers_request::TopicRequest, elect_leaders_request::TopicPartitions,
        },
        protocol::Encodable,
    };

    use super::*;

    /// DescribeProducers lists each idempotent producer of the partition
    /// once, by id, with its epoch and last sequence (sorted after the
    /// producer state is let go).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn describe_producers_lists_each_producer_by_id() {
        use crate::storage::batch::tests::make_timed_batch;
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        let now = crate::storage::segment::now_ms();
        // Ids in an order a hash map would not sort by chance.
        let ids = [
            9, 3, 7, 21, 14, 2, 30, 11, 25, 5, 18, 27, 1, 16, 8, 23, 12, 29, 4, 19,
        ];
        let batches = ids.iter().map(|&pid| (pid, 0)).chain([(3, 1)]);
        for (pid, seq) in batches {
            let b = make_timed_batch(0, now, &[(0, b"v")], pid, 2, seq);
            let acked = ctx
                .storage
                .submit("t", 0, &b, std::time::Duration::from_secs(5))
                .await
                .unwrap();
            assert!(acked.await.unwrap().is_ok());
        }
        let req = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_indexes(vec![0])]);
        let answer = describe_producers(&ctx, &req);
        let p = &answer.topics[0].partitions[0];
        assert_eq!(p.error_code, codes::NONE);
        let listed: Vec<(i64, i32, i32)> = p
            .active_producers
            .iter()
            .map(|a| (a.producer_id.0, a.producer_epoch, a.last_sequence))
            .collect();
        let mut expected: Vec<(i64, i32, i32)> = ids
            .iter()
            .map(|&pid| (pid, 2, i32::from(pid == 3)))
            .collect();
        expected.sort_unstable();
        assert_eq!(listed, expected);
    }

    /// After a failed write the producer state may record a batch that was
    /// refused (it is recorded before its write): answered
    /// KAFKA_STORAGE_ERROR, not listed as the producer's last.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn describe_producers_after_a_failed_write_is_a_storage_error() {
        use crate::storage::batch::tests::make_timed_batch;
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        let now = crate::storage::segment::now_ms();
        let req = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_indexes(vec![0])]);
        let produce = |seq| {
            let b = make_timed_batch(0, now, &[(0, b"v")], 7, 0, seq);
            let ctx = std::sync::Arc::clone(&ctx);
            async move {
                let acked = ctx
                    .storage
                    .submit("t", 0, &b, std::time::Duration::from_secs(5))
                    .await
                    .unwrap();
                acked.await.unwrap()
            }
        };
        assert!(produce(0).await.is_ok());
        let p = &describe_producers(&ctx, &req).topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.active_producers[0].last_sequence),
            (codes::NONE, 0)
        );
        let partition = ctx.storage.partition("t", 0).unwrap();
        partition
            .fail_next_append
            .store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(produce(1).await.is_err());
        let p = &describe_producers(&ctx, &req).topics[0].partitions[0];
        assert_eq!(p.error_code, codes::KAFKA_STORAGE_ERROR, "{p:?}");
        assert!(p.active_producers.is_empty());
    }

    /// A request naming many partitions of a long, unknown topic name is
    /// answered in about its own size: the name is not repeated per partition.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_about_unknown_partitions_do_not_repeat_the_topic_name() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        let name = TopicName(StrBytes::from_string("n".repeat(64 << 10)));
        let partitions: Vec<i32> = (0..1000).collect();
        let req = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
            .with_name(name.clone())
            .with_partition_indexes(partitions.clone())]);
        let request_size = req.compute_size(0).unwrap();
        let answer = describe_producers(&ctx, &req);
        let p = &answer.topics[0].partitions;
        assert_eq!(p.len(), 1000);
        assert!(p
            .iter()
            .all(|p| p.error_code == codes::UNKNOWN_TOPIC_OR_PARTITION));
        let size = answer.compute_size(0).unwrap();
        assert!(
            size < 2 * request_size,
            "{size} bytes answer a request of {request_size}"
        );

        let req = ElectLeadersRequest::default()
            .with_election_type(0)
            .with_topic_partitions(Some(vec![TopicPartitions::default()
                .with_topic(name)
                .with_partitions(partitions)]));
        let request_size = req.compute_size(2).unwrap();
        let answer = elect_leaders(&ctx, &req);
        let p = &answer.replica_election_results[0].partition_result;
        assert_eq!(p.len(), 1000);
        assert!(p
            .iter()
            .all(|p| p.error_code == codes::UNKNOWN_TOPIC_OR_PARTITION));
        let size = answer.compute_size(2).unwrap();
        assert!(
            size < 2 * request_size,
            "{size} bytes answer a request of {request_size}"
        );
    }
}
