//! Request handlers, one file per API group. Each handler returns the response frame
//! as a future; only Produce does work before returning (its submission to storage),
//! so pipelined produces keep their order. Every other answer is computed by its
//! future, which the connection runs in request order: an answer reflects every
//! request before it on the connection. Only a Produce is handed over by the
//! connection's reader; every other request is decoded and handed over when the
//! connection's writer reaches it, and its future then runs at once.

mod admin;
mod configs;
mod describe;
mod fetch;
mod groups;
mod produce;
pub(crate) mod sasl;
mod scram;
mod topics;

pub(crate) use scram::NO_SASL;

use crate::log_limit::Shown;
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
};

use kafka_protocol::messages::{
    api_versions_response::ApiVersion, ApiKey, ApiVersionsRequest, ApiVersionsResponse,
    ProduceRequest, RequestHeader, RequestKind, TopicName,
};

use super::{encode_response, supported_apis, Ctx, Pending};

/// The topics of a request in the order first named, each with its
/// partitions (`index` gives a partition's number) in the order first named:
/// a topic named again is merged into its first entry, and a partition named
/// again is left out (its first mention counts). OffsetFetch and Fetch answer
/// each partition once this way, as Kafka does; otherwise every repeat in a
/// request costs a lookup and an answer of its own.
pub(crate) fn named_once<'a, T>(
    topics: impl Iterator<Item = (&'a TopicName, &'a [T])>,
    index: impl Fn(&T) -> i32,
) -> Vec<(&'a TopicName, Vec<&'a T>)> {
    let mut order: Vec<(&TopicName, Vec<&T>)> = Vec::new();
    let mut at: HashMap<&str, (usize, HashSet<i32>)> = HashMap::new();
    for (name, partitions) in topics {
        let (i, seen) = at.entry(name.0.as_str()).or_insert_with(|| {
            order.push((name, Vec::new()));
            (order.len() - 1, HashSet::new())
        });
        order[*i]
            .1
            .extend(partitions.iter().filter(|p| seen.insert(index(p))));
    }
    order
}

/// `code` as a client that knows `KAFKA_STORAGE_ERROR` (`known`) or not takes
/// it: Produce before v4 and Fetch before v6 predate it (KIP-112), and their
/// clients take it for an unknown error they do not retry; Kafka answers them
/// `NOT_LEADER_OR_FOLLOWER`, which they retry after refreshing metadata.
pub(crate) fn storage_error_as_known(code: i16, known: bool) -> i16 {
    if code == crate::server::codes::KAFKA_STORAGE_ERROR && !known {
        crate::server::codes::NOT_LEADER_OR_FOLLOWER
    } else {
        code
    }
}

/// The ApiVersions body listing every supported API.
pub(crate) fn api_versions_body(error: i16) -> ApiVersionsResponse {
    let keys = supported_apis()
        .into_iter()
        .map(|(k, lo, hi)| {
            // Produce v0-v2 are listed, and refused when sent, as Kafka 4.0
            // lists them (KAFKA-18659): librdkafka up to 2.11 turns gzip,
            // snappy and lz4 off against a broker whose lowest Produce
            // version is above 0, and sends those batches uncompressed.
            let lo = if k == ApiKey::Produce { 0 } else { lo };
            ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(lo)
                .with_max_version(hi)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(keys)
}

/// Whether an ApiVersions request of `version` names its client software as
/// Kafka requires from v3 on (`ApiVersionsRequest.isValid`): a name and a
/// version each matching `[a-zA-Z0-9](?:[a-zA-Z0-9\-.]*[a-zA-Z0-9])?`.
/// Kafka answers any other `INVALID_REQUEST`, listing no API; before
/// authentication the client may then ask again.
pub(crate) fn names_valid(req: &ApiVersionsRequest, version: i16) -> bool {
    fn valid(s: &str) -> bool {
        let b = s.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
    }
    version < 3 || (valid(&req.client_software_name) && valid(&req.client_software_version))
}

/// A Produce, submitted to storage now: its answer to come, whether the
/// connection closes after it, and the bytes that answer keeps until it is
/// written, beyond the request's frame.
pub(crate) async fn produce(
    ctx: &Arc<Ctx>,
    header: &RequestHeader,
    req: ProduceRequest,
) -> (Pending, bool, usize) {
    produce::handle(ctx, req, header.request_api_version, header.correlation_id).await
}

/// Starts handling one decoded request from the client at `peer`, read off
/// its connection at `arrived` (it starts once those before it are answered):
/// the response, and whether the connection closes after it (a Produce with
/// acks=0 that failed).
pub(crate) async fn handle(
    ctx: &Arc<Ctx>,
    header: RequestHeader,
    request: RequestKind,
    peer: SocketAddr,
    arrived: std::time::Instant,
) -> (Pending, bool) {
    let version = header.request_api_version;
    let cid = header.correlation_id;
    let client_id = header
        .client_id
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let ctx = Arc::clone(ctx);
    let pending: Pending = match request {
        RequestKind::Produce(req) => {
            let (pending, close, _) = produce::handle(&ctx, req, version, cid).await;
            return (pending, close);
        }
        RequestKind::ApiVersions(req) => Box::pin(async move {
            let body = if names_valid(&req, version) {
                api_versions_body(super::codes::NONE)
            } else {
                tracing::debug!(%peer, client_id = %Shown(&client_id), "ApiVersions names an invalid client software name or version");
                // As Kafka's `ApiVersionsRequest.getErrorResponse`: no API listed.
                ApiVersionsResponse::default().with_error_code(super::codes::INVALID_REQUEST)
            };
            encode_response(ApiKey::ApiVersions, version, cid, &body)
        }),
        RequestKind::Metadata(req) => Box::pin(async move {
            encode_response(
                ApiKey::Metadata,
                version,
                cid,
                &topics::metadata(&ctx, req, version).await,
            )
        }),
        RequestKind::CreateTopics(req) => Box::pin(async move {
            encode_response(
                ApiKey::CreateTopics,
                version,
                cid,
                &topics::create(&ctx, req, arrived).await,
            )
        }),
        RequestKind::DeleteTopics(req) => Box::pin(async move {
            encode_response(
                ApiKey::DeleteTopics,
                version,
                cid,
                &topics::delete(&ctx, req).await,
            )
        }),
        RequestKind::Fetch(req) => Box::pin(async move {
            let (response, lease) = fetch::fetch(&ctx, req, version).await;
            let reply = encode_response(ApiKey::Fetch, version, cid, &response);
            // The records are in the frame now; the frame holds the lease.
            drop(response);
            reply.holding(lease)
        }),
        RequestKind::ListOffsets(req) => Box::pin(async move {
            encode_response(
                ApiKey::ListOffsets,
                version,
                cid,
                &fetch::list_offsets(&ctx, req, version).await,
            )
        }),
        RequestKind::FindCoordinator(req) => Box::pin(async move {
            encode_response(
                ApiKey::FindCoordinator,
                version,
                cid,
                &groups::find_coordinator(&ctx, &req),
            )
        }),
        RequestKind::JoinGroup(req) => Box::pin(async move {
            encode_response(
                ApiKey::JoinGroup,
                version,
                cid,
                &groups::join(&ctx, req, client_id, peer, version).await,
            )
        }),
        RequestKind::SyncGroup(req) => Box::pin(async move {
            encode_response(
                ApiKey::SyncGroup,
                version,
                cid,
                &groups::sync(&ctx, req).await,
            )
        }),
        RequestKind::Heartbeat(req) => Box::pin(async move {
            encode_response(
                ApiKey::Heartbeat,
                version,
                cid,
                &groups::heartbeat(&ctx, &req),
            )
        }),
        RequestKind::LeaveGroup(req) => Box::pin(async move {
            encode_response(
                ApiKey::LeaveGroup,
                version,
                cid,
                &groups::leave(&ctx, req, version),
            )
        }),
        RequestKind::OffsetCommit(req) => Box::pin(async move {
            encode_response(
                ApiKey::OffsetCommit,
                version,
                cid,
                &groups::offset_commit(&ctx, req).await,
            )
        }),
        RequestKind::OffsetFetch(req) => Box::pin(async move {
            encode_response(
                ApiKey::OffsetFetch,
                version,
                cid,
                &groups::offset_fetch(&ctx, req, version),
            )
        }),
        RequestKind::ListGroups(req) => Box::pin(async move {
            encode_response(
                ApiKey::ListGroups,
                version,
                cid,
                &groups::list_groups(&ctx, &req),
            )
        }),
        RequestKind::DescribeGroups(req) => Box::pin(async move {
            encode_response(
                ApiKey::DescribeGroups,
                version,
                cid,
                &groups::describe_groups(&ctx, &req, version),
            )
        }),
        RequestKind::OffsetDelete(req) => Box::pin(async move {
            encode_response(
                ApiKey::OffsetDelete,
                version,
                cid,
                &groups::offset_delete(&ctx, req).await,
            )
        }),
        RequestKind::DeleteGroups(req) => Box::pin(async move {
            encode_response(
                ApiKey::DeleteGroups,
                version,
                cid,
                &groups::delete_groups(&ctx, req).await,
            )
        }),
        RequestKind::CreatePartitions(req) => Box::pin(async move {
            encode_response(
                ApiKey::CreatePartitions,
                version,
                cid,
                &topics::create_partitions(&ctx, req).await,
            )
        }),
        RequestKind::DescribeConfigs(req) => Box::pin(async move {
            encode_response(
                ApiKey::DescribeConfigs,
                version,
                cid,
                &configs::describe_configs(&ctx, &req),
            )
        }),
        RequestKind::DescribeLogDirs(req) => Box::pin(async move {
            encode_response(
                ApiKey::DescribeLogDirs,
                version,
                cid,
                &topics::describe_log_dirs(&ctx, req).await,
            )
        }),
        RequestKind::DeleteRecords(req) => Box::pin(async move {
            encode_response(
                ApiKey::DeleteRecords,
                version,
                cid,
                &topics::delete_records(&ctx, req).await,
            )
        }),
        RequestKind::AlterConfigs(req) => Box::pin(async move {
            encode_response(
                ApiKey::AlterConfigs,
                version,
                cid,
                &configs::alter_configs(&ctx, req).await,
            )
        }),
        RequestKind::IncrementalAlterConfigs(req) => Box::pin(async move {
            encode_response(
                ApiKey::IncrementalAlterConfigs,
                version,
                cid,
                &configs::incremental_alter_configs(&ctx, req).await,
            )
        }),
        RequestKind::InitProducerId(req) => Box::pin(async move {
            encode_response(
                ApiKey::InitProducerId,
                version,
                cid,
                &produce::init_producer_id(&ctx, &req).await,
            )
        }),
        RequestKind::DescribeUserScramCredentials(req) => Box::pin(async move {
            encode_response(
                ApiKey::DescribeUserScramCredentials,
                version,
                cid,
                &scram::describe(&ctx, &req),
            )
        }),
        RequestKind::DescribeAcls(_) => Box::pin(async move {
            encode_response(ApiKey::DescribeAcls, version, cid, &admin::describe_acls())
        }),
        RequestKind::CreateAcls(req) => Box::pin(async move {
            encode_response(ApiKey::CreateAcls, version, cid, &admin::create_acls(&req))
        }),
        RequestKind::DeleteAcls(req) => Box::pin(async move {
            encode_response(ApiKey::DeleteAcls, version, cid, &admin::delete_acls(&req))
        }),
        RequestKind::DescribeProducers(req) => Box::pin(async move {
            encode_response(
                ApiKey::DescribeProducers,
                version,
                cid,
                &admin::describe_producers(&ctx, &req),
            )
        }),
        RequestKind::ElectLeaders(req) => Box::pin(async move {
            encode_response(
                ApiKey::ElectLeaders,
                version,
                cid,
                &admin::elect_leaders(&ctx, &req),
            )
        }),
        RequestKind::ListPartitionReassignments(_) => Box::pin(async move {
            encode_response(
                ApiKey::ListPartitionReassignments,
                version,
                cid,
                &admin::list_partition_reassignments(),
            )
        }),
        RequestKind::ListTransactions(req) => Box::pin(async move {
            encode_response(
                ApiKey::ListTransactions,
                version,
                cid,
                &admin::list_transactions(&req),
            )
        }),
        RequestKind::DescribeCluster(req) => Box::pin(async move {
            encode_response(
                ApiKey::DescribeCluster,
                version,
                cid,
                &describe::describe_cluster(&ctx, &req),
            )
        }),
        RequestKind::DescribeTopicPartitions(req) => Box::pin(async move {
            encode_response(
                ApiKey::DescribeTopicPartitions,
                version,
                cid,
                &describe::describe_topic_partitions(&ctx, req),
            )
        }),
        RequestKind::AlterUserScramCredentials(req) => Box::pin(async move {
            encode_response(
                ApiKey::AlterUserScramCredentials,
                version,
                cid,
                &scram::alter(&ctx, req).await,
            )
        }),
        other => {
            // Unreachable: dispatch() only decodes supported APIs.
            tracing::warn!(request = ?std::mem::discriminant(&other), "unsupported request after decode");
            Box::pin(async { super::Reply::nothing() })
        }
    };
    (pending, false)
}
