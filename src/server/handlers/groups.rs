//! FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//! OffsetFetch, and the admin APIs ListGroups, DescribeGroups and DeleteGroups.
//!
//! The admin APIs see every group the coordinator holds (with the membership it
//! stored, after a restart) and every group with committed offsets; a group known
//! only by its offsets (a simple group, or one whose stored membership could not
//! be read) is `Empty`, with the protocol type recorded with its commits
//! ("consumer" when its members committed, "" for a simple group), as Kafka lists
//! a group it loaded from its offsets topic.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use kafka_protocol::{
    messages::{
        delete_groups_response::DeletableGroupResult,
        describe_groups_response::{DescribedGroup, DescribedGroupMember},
        join_group_response::JoinGroupResponseMember,
        leave_group_response::MemberResponse,
        list_groups_response::ListedGroup,
        offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic},
        offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic},
        offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic},
        BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
        DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
        HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
        LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
        OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
        OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
    },
    protocol::StrBytes,
};

use super::named_once;
use crate::log_limit::Shown;
use crate::{
    server::{
        codes,
        groups::{GroupSummary, JoinRequest, JoinResult, OffsetDeleteGuard, EMPTY, STATES},
        Ctx,
    },
    storage::Committed,
};

/// A timeout in milliseconds from the wire; a negative one is zero.
fn ms(v: i32) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

pub(crate) fn find_coordinator(ctx: &Ctx, req: &FindCoordinatorRequest) -> FindCoordinatorResponse {
    let r = FindCoordinatorResponse::default();
    if req.key_type != 0 {
        // Not a retriable COORDINATOR_NOT_AVAILABLE: a transactional producer would
        // retry until its retries or timeout ran out (13 s for KafkaJS with 5
        // retries) before failing. INVALID_REQUEST fails it at once, with this
        // message, as Kafka answers a key type it does not know.
        let message = if req.key_type == 1 {
            "transactions are not supported by this broker: no transaction coordinator"
        } else {
            "unknown coordinator key type: only group coordination (0) is supported"
        };
        return r
            .with_error_code(codes::INVALID_REQUEST)
            .with_error_message(Some(StrBytes::from_static_str(message)))
            .with_node_id(BrokerId(-1))
            .with_host(StrBytes::from_static_str(""))
            .with_port(-1);
    }
    r.with_error_code(codes::NONE)
        .with_node_id(BrokerId(ctx.storage.meta().node_id))
        .with_host(StrBytes::from_string(ctx.host.clone()))
        .with_port(ctx.port)
}

/// The client host of a member joining from `peer`, as Kafka reports it
/// (`InetAddress.toString` of an address without a host name: `/127.0.0.1`).
fn client_host(peer: SocketAddr) -> String {
    format!("/{}", peer.ip().to_canonical())
}

pub(crate) async fn join(
    ctx: &Ctx,
    req: JoinGroupRequest,
    client_id: String,
    peer: SocketAddr,
    version: i16,
) -> JoinGroupResponse {
    // Checked against the broker's bounds by the coordinator.
    let session = ms(req.session_timeout_ms);
    // JoinGroup v0 has no rebalance timeout: the session timeout serves.
    let rebalance = if req.rebalance_timeout_ms > 0 {
        ms(req.rebalance_timeout_ms)
    } else {
        session
    };
    let group = req.group_id.0.to_string();
    let rx = ctx.groups.join(JoinRequest {
        group: group.clone(),
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.map(|s| s.to_string()),
        client_id,
        client_host: client_host(peer),
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        session_timeout: session,
        rebalance_timeout: rebalance,
        require_known_member_id: version >= 4,
    });
    if ctx.groups.needs_store(&group) {
        // A static member replacing itself in a stable group is answered once
        // its new member id is stored: written here, off the runtime's threads.
        let groups = std::sync::Arc::clone(&ctx.groups);
        let g = group.clone();
        if let Err(e) = crate::server::blocking(ctx, move || groups.store_group(&g)).await {
            crate::log_limit::limited!(error, group = %Shown(&group), error = %e, "storing the group's membership failed");
        }
    }
    let j = match until_stopping(ctx, rx).await {
        Some(Ok(j)) => j,
        None => JoinResult::error(codes::NOT_COORDINATOR, &req.member_id),
        Some(Err(_)) => JoinResult::error(codes::REBALANCE_IN_PROGRESS, &req.member_id),
    };
    let members = j
        .members
        .into_iter()
        .map(|(id, inst, meta)| {
            JoinGroupResponseMember::default()
                .with_member_id(StrBytes::from_string(id))
                .with_group_instance_id(inst.filter(|_| version >= 5).map(StrBytes::from_string))
                .with_metadata(meta)
        })
        .collect();
    JoinGroupResponse::default()
        .with_error_code(j.error)
        .with_generation_id(j.generation)
        .with_protocol_type(
            j.protocol_type
                .filter(|_| version >= 7)
                .map(StrBytes::from_string),
        )
        .with_protocol_name(Some(StrBytes::from_string(j.protocol.unwrap_or_default())))
        .with_leader(StrBytes::from_string(j.leader))
        .with_member_id(StrBytes::from_string(j.member_id))
        .with_members(members)
}

/// `wait`'s outcome, or `None` once the server stops serving: a JoinGroup or
/// SyncGroup waiting for the rest of its group is answered NOT_COORDINATOR
/// then, as Kafka answers those of a group its coordinator unloads, so that
/// a shutdown does not wait for a rebalance no other member can now join
/// (the server reads no more requests), and the client looks for the
/// coordinator again.
async fn until_stopping<T>(ctx: &Ctx, wait: impl std::future::Future<Output = T>) -> Option<T> {
    let mut stopping = ctx.stopping.subscribe();
    tokio::select! {
        biased;
        r = wait => Some(r),
        _ = stopping.wait_for(|stop| *stop) => None,
    }
}

pub(crate) async fn sync(ctx: &Ctx, req: SyncGroupRequest) -> SyncGroupResponse {
    let assignments = req
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let rx = ctx.groups.sync(
        &req.group_id.0,
        req.generation_id,
        &req.member_id,
        req.group_instance_id.as_deref(),
        assignments,
    );
    if ctx.groups.needs_store(&req.group_id.0) {
        // The leader's assignment completes the rebalance once stored: written
        // here, off the runtime's threads (nothing waits to be stored for a
        // follower's SyncGroup, which the leader's completes).
        let groups = std::sync::Arc::clone(&ctx.groups);
        let group = req.group_id.0.to_string();
        if let Err(e) = crate::server::blocking(ctx, move || groups.store_group(&group)).await {
            crate::log_limit::limited!(error, group = %Shown(req.group_id.0.as_str()), error = %e, "storing the group's membership failed");
        }
    }
    let (error, assignment) = until_stopping(ctx, rx)
        .await
        .unwrap_or(Ok((codes::NOT_COORDINATOR, bytes::Bytes::new())))
        .unwrap_or((codes::REBALANCE_IN_PROGRESS, bytes::Bytes::new()));
    SyncGroupResponse::default()
        .with_error_code(error)
        .with_protocol_type(req.protocol_type)
        .with_protocol_name(req.protocol_name)
        .with_assignment(assignment)
}

pub(crate) fn heartbeat(ctx: &Ctx, req: &HeartbeatRequest) -> HeartbeatResponse {
    HeartbeatResponse::default().with_error_code(ctx.groups.heartbeat(
        &req.group_id.0,
        req.generation_id,
        &req.member_id,
        req.group_instance_id.as_deref(),
    ))
}

pub(crate) fn leave(ctx: &Ctx, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    if version < 3 {
        let code = match ctx
            .groups
            .leave(&req.group_id.0, &[req.member_id.to_string()])
        {
            Ok(codes) => codes.first().copied().unwrap_or(codes::NONE),
            Err(code) => code,
        };
        return LeaveGroupResponse::default().with_error_code(code);
    }
    let ids: Vec<(String, Option<String>)> = req
        .members
        .iter()
        .map(|m| {
            (
                m.member_id.to_string(),
                m.group_instance_id.as_ref().map(ToString::to_string),
            )
        })
        .collect();
    let errs = match ctx.groups.leave_identities(&req.group_id.0, &ids) {
        Ok(errs) => errs,
        // The whole request failed: no member list, as Kafka answers.
        Err(code) => return LeaveGroupResponse::default().with_error_code(code),
    };
    let members = req
        .members
        .into_iter()
        .zip(errs)
        .map(|(m, e)| {
            MemberResponse::default()
                .with_member_id(m.member_id)
                .with_group_instance_id(m.group_instance_id)
                .with_error_code(e)
        })
        .collect();
    LeaveGroupResponse::default()
        .with_error_code(codes::NONE)
        .with_members(members)
}

pub(crate) async fn offset_commit(ctx: &Ctx, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    let mut gate = ctx.groups.check_commit(
        &group,
        req.generation_id_or_member_epoch,
        &req.member_id,
        req.group_instance_id.as_deref(),
    );
    // A group the store does not hold yet, past its limits: refused as a
    // JoinGroup past the coordinator's is, which clients retry. A member's
    // commit (a generation) has more room than a simple one, so that what
    // simple commits filled does not hold joined groups back.
    if gate == codes::NONE
        && !ctx
            .storage
            .offsets()
            .has_room_for(&group, req.generation_id_or_member_epoch < 0)
    {
        crate::log_limit::limited!(warn, group = %Shown(&group), max_groups = crate::storage::offsets::MAX_STORED_GROUPS, "the committed positions of more groups than the broker holds: a first commit refused (COORDINATOR_NOT_AVAILABLE) until groups expire or are deleted");
        gate = codes::COORDINATOR_NOT_AVAILABLE;
    }
    let metadata_max = ctx.storage.config().groups.offset_metadata_max_bytes;
    let mut commits = Vec::new();
    let mut results: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
    // The id of each topic as checked: a topic deleted and created again under
    // its name before the commit is stored is another topic.
    let mut ids = std::collections::HashMap::new();
    for t in &req.topics {
        let mut parts = Vec::new();
        for p in &t.partitions {
            let code = if gate != codes::NONE {
                gate
            } else if ctx
                .storage
                .partition(&t.name.0, p.partition_index)
                .is_none()
            {
                codes::UNKNOWN_TOPIC_OR_PARTITION
            } else if p
                .committed_metadata
                .as_ref()
                // Kafka compares Java's String.length(): UTF-16 units.
                .is_some_and(|m| m.encode_utf16().count() > metadata_max)
            {
                codes::OFFSET_METADATA_TOO_LARGE
            } else {
                if let Some(topic) = ctx.storage.topic(&t.name.0) {
                    ids.insert(t.name.0.to_string(), topic.id);
                }
                commits.push(Committed {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                });
                codes::NONE
            };
            parts.push((p.partition_index, code));
        }
        results.push((t.name.clone(), parts));
    }
    if !commits.is_empty() {
        let storage = ctx.storage.clone();
        let groups = std::sync::Arc::clone(&ctx.groups);
        let g = group.clone();
        let generation = req.generation_id_or_member_epoch;
        let member = req.member_id.to_string();
        let instance = req.group_instance_id.as_ref().map(ToString::to_string);
        // Recorded with the offsets, so that the group is listed with it after a
        // restart (simple commits to a group that never had members record none).
        let protocol_type = ctx.groups.protocol_type(&group);
        // The member does not expire while the commit waits for the disk.
        let in_flight = (generation >= 0 && !member.is_empty())
            .then(|| ctx.groups.commit_in_flight(&group, &member));
        let turn = ctx.storage.offsets().writer_turn(&group).await;
        let stored = crate::server::blocking(ctx, move || {
            // The member is checked again under the group's writer lock, which
            // the commit may have waited for across other groups' fsyncs: if
            // it was fenced meanwhile (its session expired, the group
            // rebalanced), the member that took its partitions may have
            // committed since, and these stale positions would replace that.
            let gate = std::cell::OnceCell::new();
            let same = |c: &Committed| {
                *gate.get_or_init(|| {
                    groups.recheck_commit(&g, generation, &member, instance.as_deref())
                }) == codes::NONE
                    && storage.partition(&c.topic, c.partition).is_some()
                    && storage.topic(&c.topic).map(|t| t.id) == ids.get(&c.topic).copied()
            };
            let stored =
                storage
                    .offsets()
                    .commit_where(&g, protocol_type.as_deref(), commits, same);
            (stored, gate.get().copied().unwrap_or(codes::NONE))
        })
        .await;
        drop(turn);
        drop(in_flight);
        let failed = match stored {
            Ok((Ok(_), gate)) if gate != codes::NONE => {
                // Nothing was written: every position is refused as the first
                // check would have refused it.
                for (_, parts) in &mut results {
                    for (_, code) in parts.iter_mut() {
                        if *code == codes::NONE {
                            *code = gate;
                        }
                    }
                }
                false
            }
            Ok((Ok(refused), _)) => {
                if !refused.is_empty() {
                    let refused: std::collections::HashSet<(String, i32)> =
                        refused.into_iter().collect();
                    for (name, parts) in &mut results {
                        for (i, code) in parts.iter_mut() {
                            if *code == codes::NONE && refused.contains(&(name.0.to_string(), *i)) {
                                *code = codes::UNKNOWN_TOPIC_OR_PARTITION;
                            }
                        }
                    }
                }
                false
            }
            Ok((Err(e), _)) => {
                crate::log_limit::limited!(error, group = %Shown(&group), error = %e, "storing committed offsets failed");
                true
            }
            Err(e) => {
                crate::log_limit::limited!(error, group = %Shown(&group), error = %e, "offset commit task failed");
                true
            }
        };
        if failed {
            // As Kafka's coordinator answers a failed append of the offsets
            // (KAFKA_STORAGE_ERROR from its log): clients retry NOT_COORDINATOR
            // (they look the coordinator up again and send the commit again),
            // while the Java consumer's `commitSync` fails for good on
            // KAFKA_STORAGE_ERROR. The store keeps the positions it held
            // before a write that failed before its rename; one whose file
            // was renamed into place before its directory fsync failed is in
            // force, as the file holds it. Either way the commit sent again
            // is written again, directory fsync included.
            for (_, parts) in &mut results {
                for (_, code) in parts.iter_mut() {
                    if *code == codes::NONE {
                        *code = codes::NOT_COORDINATOR;
                    }
                }
            }
        }
    }
    let topics = results
        .into_iter()
        .map(|(name, parts)| {
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(i, c)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(i)
                                .with_error_code(c)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

pub(crate) fn offset_fetch(
    ctx: &Ctx,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let group = req.group_id.0.to_string();
    let store = ctx.storage.offsets();
    let part = |topic: &str, index: i32| {
        let c = store.fetch(&group, topic, index);
        OffsetFetchResponsePartition::default()
            .with_partition_index(index)
            .with_committed_offset(c.as_ref().map_or(-1, |c| c.offset))
            .with_committed_leader_epoch(if version >= 5 {
                c.as_ref().map_or(-1, |c| c.leader_epoch)
            } else {
                -1
            })
            .with_metadata(Some(StrBytes::from_string(
                c.and_then(|c| c.metadata).unwrap_or_default(),
            )))
            .with_error_code(codes::NONE)
    };
    let topics = match req.topics {
        // Each topic and partition once, however often the request names it
        // (as Kafka's classic coordinator answers): a repeat of a partition
        // with a commit would otherwise copy its metadata, up to
        // --offset-metadata-max-bytes, into the answer per 4 bytes of request.
        Some(list) => named_once(
            list.iter().map(|t| (&t.name, &t.partition_indexes[..])),
            |i| *i,
        )
        .into_iter()
        .map(|(name, indexes)| {
            let parts = indexes.into_iter().map(|i| part(&name.0, *i)).collect();
            OffsetFetchResponseTopic::default()
                .with_name(name.clone())
                .with_partitions(parts)
        })
        .collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> =
                std::collections::BTreeMap::new();
            for c in store.fetch_all(&group) {
                by_topic.entry(c.topic).or_default().push(c.partition);
            }
            by_topic
                .into_iter()
                .map(|(name, idx)| {
                    let parts = idx.iter().map(|i| part(&name, *i)).collect();
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name)))
                        .with_partitions(parts)
                })
                .collect()
        }
    };
    OffsetFetchResponse::default()
        .with_error_code(codes::NONE)
        .with_topics(topics)
}

/// The type every group of this broker has (KIP-848's group types; Kafka's
/// classic coordinator calls all its groups "classic").
const CLASSIC: &str = "classic";

/// The operations DescribeGroups reports as authorized (from v3, when asked):
/// without an authorizer Kafka reports every operation a group supports, READ (3),
/// DELETE (6) and DESCRIBE (8), as a bit field.
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// Every group the broker knows, by group id: `(state, protocol type)`. The
/// coordinator's state wins; a group it does not hold but that has committed
/// offsets is `Empty`.
fn known_groups(ctx: &Ctx) -> BTreeMap<String, (&'static str, Option<String>)> {
    let mut all: BTreeMap<String, (&'static str, Option<String>)> = ctx
        .storage
        .offsets()
        .groups()
        .into_iter()
        .map(|g| (g.group, (EMPTY, g.protocol_type)))
        .collect();
    for o in ctx.groups.overview() {
        let stored = all.remove(&o.group).and_then(|(_, t)| t);
        all.insert(o.group, (o.state, o.protocol_type.or(stored)));
    }
    all
}

/// ListGroups (Kafka's `handleListGroups`): every known group, filtered by state
/// (v4+, case-insensitive; a name that is no state matches nothing) and by type
/// (v5+: any filter naming "classic" keeps every group, any other filter none).
pub(crate) fn list_groups(ctx: &Ctx, req: &ListGroupsRequest) -> ListGroupsResponse {
    // The states asked for, among the few there are: one pass over the filter.
    let states: Vec<&'static str> = STATES
        .into_iter()
        .filter(|s| req.states_filter.iter().any(|f| f.eq_ignore_ascii_case(s)))
        .collect();
    let by_state = !req.states_filter.is_empty();
    let types_ok = req.types_filter.is_empty()
        || req
            .types_filter
            .iter()
            .any(|t| t.eq_ignore_ascii_case(CLASSIC));
    let groups = known_groups(ctx)
        .into_iter()
        .filter(|(_, (state, _))| types_ok && (!by_state || states.contains(state)))
        .map(|(id, (state, protocol_type))| {
            ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(id)))
                .with_protocol_type(StrBytes::from_string(protocol_type.unwrap_or_default()))
                .with_group_state(StrBytes::from_static_str(state))
                .with_group_type(StrBytes::from_static_str(CLASSIC))
        })
        .collect();
    ListGroupsResponse::default()
        .with_error_code(codes::NONE)
        .with_groups(groups)
}

/// DescribeGroups (Kafka's `handleDescribeGroup`): each group's state, protocol
/// type, protocol and members; an unknown group is `Dead` with no error (before
/// v6). The empty group id is a group like any other here, as in Kafka. A group
/// named more than once is described once, so that the answer is bounded by the
/// groups there are (Kafka's admin client never repeats one).
pub(crate) fn describe_groups(
    ctx: &Ctx,
    req: &DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let store = ctx.storage.offsets();
    let mut seen: HashSet<&str> = HashSet::new();
    let groups = req
        .groups
        .iter()
        .filter(|id| seen.insert(id.0.as_str()))
        .map(|id| {
            let stored = store.group(id);
            let summary = match ctx.groups.describe(id) {
                Some(mut s) => {
                    if s.protocol_type.is_none() {
                        s.protocol_type = stored.and_then(|g| g.protocol_type);
                    }
                    s
                }
                None => match stored {
                    Some(g) => GroupSummary::empty(g.protocol_type),
                    None => GroupSummary::dead(),
                },
            };
            let members = summary
                .members
                .into_iter()
                .map(|m| {
                    DescribedGroupMember::default()
                        .with_member_id(StrBytes::from_string(m.member_id))
                        .with_group_instance_id(m.instance_id.map(StrBytes::from_string))
                        .with_client_id(StrBytes::from_string(m.client_id))
                        .with_client_host(StrBytes::from_string(m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment)
                })
                .collect();
            let mut d = DescribedGroup::default()
                .with_error_code(codes::NONE)
                .with_group_id(id.clone())
                .with_group_state(StrBytes::from_static_str(summary.state))
                .with_protocol_type(StrBytes::from_string(
                    summary.protocol_type.unwrap_or_default(),
                ))
                .with_protocol_data(StrBytes::from_string(summary.protocol))
                .with_members(members);
            if version >= 3 && req.include_authorized_operations {
                d.authorized_operations = GROUP_OPERATIONS;
            }
            d
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

/// DeleteGroups (Kafka's `handleDeleteGroups`): an empty group is deleted with its
/// committed offsets and stored membership (durably: its files are removed and
/// the directories fsynced before the answer); a group with members gets NON_EMPTY_GROUP, an
/// unknown one GROUP_ID_NOT_FOUND. A group named twice is answered once.
///
/// A deletion that cannot be written gets NOT_COORDINATOR, as Kafka's
/// coordinator answers a failed append of the deletion: the admin client looks
/// the coordinator up again and sends the request again, where it would report
/// KAFKA_STORAGE_ERROR as the group's outcome for good. The group is left
/// whole for that retry: in the coordinator as it was, and with its offsets in
/// the store until their file's removal is durable.
pub(crate) async fn delete_groups(ctx: &Ctx, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results: Vec<DeletableGroupResult> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for id in req.groups_names {
        let group = id.0.to_string();
        if !seen.insert(group.clone()) {
            continue;
        }
        let has_offsets = ctx.storage.offsets().group(&group).is_some();
        let mut code = ctx.groups.begin_delete(&group, has_offsets);
        if code == codes::NONE {
            let storage = ctx.storage.clone();
            let groups = std::sync::Arc::clone(&ctx.groups);
            let g = group.clone();
            let turn = ctx.storage.offsets().writer_turn(&group).await;
            let deleted = crate::server::blocking(ctx, move || {
                // Membership first: without its file a group only counts as
                // empty since the start, and a removal that fails leaves
                // the offsets, so the group is still there to delete again.
                groups.delete_stored(&g)?;
                storage.offsets().delete(&g)
            })
            .await;
            drop(turn);
            let done = match deleted {
                Ok(Ok(_)) => {
                    tracing::info!(group = %Shown(&group), "group deleted");
                    true
                }
                Ok(Err(e)) => {
                    crate::log_limit::limited!(error, group = %Shown(&group), error = %e, "deleting the group's committed offsets or membership failed; the group is kept");
                    false
                }
                Err(e) => {
                    crate::log_limit::limited!(error, group = %Shown(&group), error = %e, "group deletion task failed; the group is kept");
                    false
                }
            };
            if !done {
                code = codes::NOT_COORDINATOR;
            }
            ctx.groups.finish_delete(&group, done);
        }
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

/// OffsetDelete (`kafka-consumer-groups --delete-offsets`, AdminClient
/// `deleteConsumerGroupOffsets`): deletes a group's committed positions durably,
/// except those of topics its members subscribe to (`GROUP_SUBSCRIBED_TO_TOPIC`)
/// and of partitions that do not exist (`UNKNOWN_TOPIC_OR_PARTITION`), as Kafka
/// does. A group with neither members nor positions gets `GROUP_ID_NOT_FOUND`; one
/// with members that is not a consumer group `NON_EMPTY_GROUP`; a deletion that
/// cannot be written `NOT_COORDINATOR`, which clients retry. The group is judged
/// again under its offsets writer lock, just before the deletion is written.
pub(crate) async fn offset_delete(ctx: &Ctx, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group = req.group_id.0.to_string();
    let known = ctx.storage.offsets().group(&group).is_some() || ctx.groups.holds(&group);
    // Off the runtime's workers: judging a consumer group parses every member's
    // subscription, which may be as large as a JoinGroup request.
    let groups = std::sync::Arc::clone(&ctx.groups);
    let g = group.clone();
    let guard = match crate::server::blocking(ctx, move || groups.offset_delete_guard(&g)).await {
        Ok(guard) => guard,
        Err(e) => {
            crate::log_limit::limited!(error, group = %Shown(&group), error = %e, "judging an offset deletion failed");
            return OffsetDeleteResponse::default().with_error_code(codes::NOT_COORDINATOR);
        }
    };
    let denied = match &guard {
        OffsetDeleteGuard::Denied(code) => Some(*code),
        _ if !known => Some(codes::GROUP_ID_NOT_FOUND),
        _ => None,
    };
    if let Some(code) = denied {
        return OffsetDeleteResponse::default().with_error_code(code);
    }
    // A set: a partition named many times is deleted once, and the store
    // looks each position up in it under the group's writer lock.
    let mut doomed: HashSet<(String, i32)> = HashSet::new();
    let mut topics: Vec<(TopicName, Vec<(i32, i16)>)> = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let subscribed = match &guard {
                OffsetDeleteGuard::Subscribed(topics) => topics.contains(&name),
                _ => true,
            };
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    let code = if ctx.storage.partition(&name, p.partition_index).is_none() {
                        codes::UNKNOWN_TOPIC_OR_PARTITION
                    } else if subscribed {
                        codes::GROUP_SUBSCRIBED_TO_TOPIC
                    } else {
                        doomed.insert((name.clone(), p.partition_index));
                        codes::NONE
                    };
                    (p.partition_index, code)
                })
                .collect();
            (t.name, parts)
        })
        .collect();
    let storage = ctx.storage.clone();
    let groups = std::sync::Arc::clone(&ctx.groups);
    let g = group.clone();
    let turn = ctx.storage.offsets().writer_turn(&group).await;
    let stored = crate::server::blocking(ctx, move || {
        // The group is judged again under its writer lock, which the deletion
        // may have waited for across other groups' fsyncs: a member that
        // joined meanwhile subscribing to a topic keeps its positions there
        // (GROUP_SUBSCRIBED_TO_TOPIC), as Kafka decides under the group's lock.
        let again = std::cell::OnceCell::new();
        let still = |(topic, _): &(String, i32)| match again
            .get_or_init(|| groups.offset_delete_guard(&g))
        {
            OffsetDeleteGuard::Subscribed(topics) => !topics.contains(topic),
            OffsetDeleteGuard::AllSubscribed | OffsetDeleteGuard::Denied(_) => false,
        };
        let stored = storage.offsets().delete_positions_where(&g, &doomed, still);
        if matches!(stored, Ok((n, _)) if n > 0) {
            // An `Empty` group whose last position went is `Dead`, as in Kafka.
            groups.forget_if_empty(&g, storage.offsets());
        }
        (stored, again.into_inner())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|(r, again)| r.map(|r| (r, again)).map_err(|e| e.to_string()));
    drop(turn);
    match stored {
        Ok((_, Some(OffsetDeleteGuard::Denied(code)))) => {
            // Nothing was deleted: the group is being deleted, or has members
            // of another protocol, since the first check.
            return OffsetDeleteResponse::default().with_error_code(code);
        }
        Ok(((n, refused), _)) => {
            if n > 0 {
                tracing::info!(group = %Shown(&group), positions = n, "deleted committed offsets");
            }
            if !refused.is_empty() {
                let refused: HashSet<(String, i32)> = refused.into_iter().collect();
                for (name, parts) in &mut topics {
                    for (i, code) in parts.iter_mut() {
                        if *code == codes::NONE && refused.contains(&(name.0.to_string(), *i)) {
                            *code = codes::GROUP_SUBSCRIBED_TO_TOPIC;
                        }
                    }
                }
            }
        }
        Err(e) => {
            // As Kafka's coordinator answers a failed write of the deletion:
            // NOT_COORDINATOR for the whole request, on which the admin client
            // looks the coordinator up again and sends the request again (an
            // error of a partition it reports as that partition's outcome).
            // A failed removal of the group's file, or a rewrite that failed
            // before its rename, leaves the positions in the store, so the
            // request sent again deletes them again, durably; a rewrite
            // renamed into place before its directory fsync failed is in
            // force, and the request sent again finds nothing to delete but
            // fsyncs the directory first.
            crate::log_limit::limited!(error, group = %Shown(&group), error = %e, "deleting committed offsets failed");
            return OffsetDeleteResponse::default().with_error_code(codes::NOT_COORDINATOR);
        }
    }
    let topics = topics
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, code)| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(index)
                        .with_error_code(code)
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default()
        .with_error_code(codes::NONE)
        .with_topics(topics)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::GroupId;

    use super::*;

    /// Holds `group`'s offsets writer lock on a thread, as a commit of another
    /// group sharing it holds it across its fsync, until the sender is used
    /// (or dropped); returns once the lock is held.
    fn hold_writer(
        ctx: &std::sync::Arc<Ctx>,
        group: &'static str,
    ) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let storage = ctx.storage.clone();
        let holder = std::thread::spawn(move || {
            let _writer = storage.offsets().writer(group);
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        locked_rx.recv().unwrap();
        (holder, release_tx)
    }
    use crate::server::groups::JoinRequest;

    /// Forms group `group` with one member, which commits a position (when
    /// `commits`) and leaves: an `Empty` group with its membership stored (and
    /// its offsets). Returns the paths of its offsets and membership files.
    async fn empty_group(
        ctx: &std::sync::Arc<Ctx>,
        group: &'static str,
        commits: bool,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let groups = std::sync::Arc::clone(&ctx.groups);
        let storage = ctx.storage.clone();
        tokio::task::spawn_blocking(move || {
            let j = groups
                .join(JoinRequest {
                    group: group.into(),
                    ..JoinRequest::of_consumer("")
                })
                .blocking_recv()
                .unwrap();
            let mut s = groups.sync(group, j.generation, &j.member_id, None, vec![]);
            groups.store_group(group);
            assert_eq!(s.try_recv().unwrap().0, codes::NONE);
            if commits {
                storage
                    .offsets()
                    .commit(
                        group,
                        Some("consumer"),
                        vec![crate::storage::Committed {
                            topic: "t".into(),
                            partition: 0,
                            offset: 1,
                            leader_epoch: -1,
                            metadata: None,
                        }],
                    )
                    .unwrap();
            }
            assert_eq!(groups.leave(group, &[j.member_id]), Ok(vec![codes::NONE]));
            groups.store_changed();
            let dir = storage.offsets().dir();
            let name = crate::storage::offsets::file_name(group);
            let files = (
                dir.join(&name),
                dir.join(crate::storage::group_meta::MEMBERS_DIR).join(name),
            );
            assert_eq!(files.0.exists(), commits);
            assert!(files.1.exists());
            files
        })
        .await
        .unwrap()
    }

    /// An OffsetDelete of group `g`'s positions in `partitions` of topic `t`.
    fn offset_delete_request(partitions: &[i32]) -> OffsetDeleteRequest {
        use kafka_protocol::messages::offset_delete_request::{
            OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
        };
        OffsetDeleteRequest::default()
            .with_group_id(GroupId("g".into()))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName("t".into()))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&p| OffsetDeleteRequestPartition::default().with_partition_index(p))
                        .collect(),
                )])
    }

    /// An OffsetDelete that removed an `Empty` group's last position left the
    /// group listed (`Empty` in ListGroups and DescribeGroups) and deletable
    /// (DeleteGroups answered NONE) until the next forget pass, where Kafka's
    /// coordinator makes it `Dead` at once. It is now forgotten, its stored
    /// membership with it; while it keeps a position it stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_offset_delete_of_an_empty_groups_last_position_forgets_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 2).unwrap();
        let (_, members) = empty_group(&ctx, "g", true).await;
        let r = offset_commit(&ctx, commit_request(-1, "", &[(1, 3)])).await;
        assert_eq!(commit_codes(&r), [codes::NONE]);
        let listed = |ctx: &Ctx| {
            list_groups(ctx, &ListGroupsRequest::default())
                .groups
                .iter()
                .map(|g| (g.group_id.0.to_string(), g.group_state.to_string()))
                .collect::<Vec<_>>()
        };

        let r = offset_delete(&ctx, offset_delete_request(&[1])).await;
        assert_eq!(r.error_code, codes::NONE);
        assert_eq!(r.topics[0].partitions[0].error_code, codes::NONE);
        assert_eq!(listed(&ctx), [("g".to_string(), EMPTY.to_string())]);
        assert!(members.exists(), "a group keeping a position stays");

        let r = offset_delete(&ctx, offset_delete_request(&[0])).await;
        assert_eq!(r.error_code, codes::NONE);
        assert_eq!(r.topics[0].partitions[0].error_code, codes::NONE);
        assert!(ctx.storage.offsets().group("g").is_none());
        assert!(listed(&ctx).is_empty(), "the group is still listed");
        assert!(!ctx.groups.holds("g"));
        assert!(!members.exists(), "its stored membership is kept");
        let r = delete_groups(&ctx, delete_request("g")).await;
        assert_eq!(r.results[0].error_code, codes::GROUP_ID_NOT_FOUND);
        let r = offset_delete(&ctx, offset_delete_request(&[0])).await;
        assert_eq!(r.error_code, codes::GROUP_ID_NOT_FOUND);
    }

    fn delete_request(group: &str) -> DeleteGroupsRequest {
        DeleteGroupsRequest::default().with_groups_names(vec![GroupId(group.to_string().into())])
    }

    /// A DeleteGroups whose removal of the stored membership fails answers
    /// NOT_COORDINATOR and leaves the committed offsets, so the group is
    /// still there to delete again; once the removal works it is deleted whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_that_cannot_remove_the_membership_keeps_the_group_whole() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        let (_, file) = empty_group(&ctx, "g", true).await;
        // The membership file cannot be removed: a directory with an entry.
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        std::fs::write(file.join("x"), b"x").unwrap();
        let r = delete_groups(&ctx, delete_request("g")).await;
        assert_eq!(r.results[0].error_code, codes::NOT_COORDINATOR);
        assert!(
            ctx.storage.offsets().group("g").is_some(),
            "the offsets went with a failed delete"
        );
        std::fs::remove_dir_all(&file).unwrap();
        let r = delete_groups(&ctx, delete_request("g")).await;
        assert_eq!(r.results[0].error_code, codes::NONE);
        assert!(ctx.storage.offsets().group("g").is_none());
    }

    /// A DeleteGroups whose removal of a file was done but whose directory
    /// fsync failed was answered KAFKA_STORAGE_ERROR, on which the admin client
    /// fails for good, with the group half deleted: gone from memory (the
    /// offsets store's, the coordinator's) while a power loss could bring its
    /// file back. Sent again, it got GROUP_ID_NOT_FOUND, or NONE without an
    /// fsync (the file being gone already), and a power loss then brought the
    /// group back after an answer of success. It now gets NOT_COORDINATOR,
    /// which the admin client retries; the group stays whole meanwhile (offsets
    /// kept, `Empty` in the coordinator), and the retry fsyncs the directory
    /// again before it answers NONE, so a power loss leaves the group deleted.
    /// Both of the group's files: its offsets, then its stored membership.
    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_whose_directory_fsync_fails_is_answered_not_coordinator_and_retried_durably()
    {
        use crate::wal::sim::{SimDisk, SimPlan};
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        let (offsets_file, _) = empty_group(&ctx, "g", true).await;
        let (_, members_file) = empty_group(&ctx, "h", false).await;
        let state = |group: &str| ctx.groups.describe(group).map(|d| d.state);

        // The offsets' directory fsync fails after the file's removal.
        let offsets_dir = offsets_file.parent().unwrap().to_path_buf();
        let disk = SimDisk::new(SimPlan::plain(1));
        disk.watch_dir(&offsets_dir).unwrap();
        disk.crash_at_next_dir_sync();
        let r = delete_groups(&ctx, delete_request("g")).await;
        assert_eq!(r.results[0].error_code, codes::NOT_COORDINATOR);
        assert!(!offsets_file.exists(), "removed, not durably");
        assert_eq!(ctx.storage.offsets().fetch("g", "t", 0).unwrap().offset, 1);
        assert_eq!(state("g"), Some("Empty"));
        disk.restart();
        let r = delete_groups(&ctx, delete_request("g")).await;
        assert_eq!(r.results[0].error_code, codes::NONE);
        assert!(ctx.storage.offsets().group("g").is_none());
        assert_eq!(state("g"), None);
        disk.power_loss_keeping(false, Some(0)).unwrap();
        assert!(
            !offsets_file.exists(),
            "a power loss brought the offsets back"
        );

        // The membership's directory fsync fails after the file's removal (a
        // group with no offsets: only the coordinator knows it).
        let members_dir = members_file.parent().unwrap().to_path_buf();
        let disk = SimDisk::new(SimPlan::plain(1));
        disk.watch_dir(&members_dir).unwrap();
        disk.crash_at_next_dir_sync();
        let r = delete_groups(&ctx, delete_request("h")).await;
        assert_eq!(r.results[0].error_code, codes::NOT_COORDINATOR);
        assert!(!members_file.exists(), "removed, not durably");
        assert_eq!(state("h"), Some("Empty"));
        disk.restart();
        let r = delete_groups(&ctx, delete_request("h")).await;
        assert_eq!(r.results[0].error_code, codes::NONE);
        assert_eq!(state("h"), None);
        disk.power_loss_keeping(false, Some(0)).unwrap();
        assert!(
            !members_file.exists(),
            "a power loss brought the membership back"
        );
    }

    /// An OffsetCommit checked against a topic, then held up before its store
    /// (the group's writer lock, held across other groups' fsyncs) while the
    /// topic is deleted and created again under its name, is refused: it used
    /// to land in the new topic, whose consumers then skipped its first records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_held_up_across_a_topic_delete_and_create_is_refused() {
        use kafka_protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        let (holder, release_tx) = hold_writer(&ctx, "g");
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId("g".into()))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName("t".into()))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(1000)])]);
        let commit = {
            let ctx = std::sync::Arc::clone(&ctx);
            tokio::spawn(async move { offset_commit(&ctx, req).await })
        };
        // Checked and waiting for the lock.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !commit.is_finished(),
            "the commit waits for the writer lock"
        );
        assert!(ctx.storage.delete_topic("t").await.unwrap());
        ctx.storage.create_topic("t", 1).unwrap();
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        let r = commit.await.unwrap();
        assert_eq!(
            r.topics[0].partitions[0].error_code,
            codes::UNKNOWN_TOPIC_OR_PARTITION
        );
        assert!(
            ctx.storage.offsets().fetch("g", "t", 0).is_none(),
            "the old topic's position landed in the new one"
        );
    }

    /// Blocking work that requests start waits, holding no thread, while
    /// `WORK_AT_ONCE` pieces run (here, while the test holds every place):
    /// a commit's store and a DescribeLogDirs took a blocking thread each,
    /// unbounded, and on a stalled device clients repeating them could hold
    /// all of the runtime's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_work_waits_for_a_place() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 2).unwrap();
        let places = std::sync::Arc::clone(&ctx.work)
            .acquire_many_owned(u32::try_from(crate::server::WORK_AT_ONCE).unwrap())
            .await
            .unwrap();
        let commit = {
            let ctx = std::sync::Arc::clone(&ctx);
            tokio::spawn(
                async move { offset_commit(&ctx, commit_request(-1, "", &[(1, 3)])).await },
            )
        };
        let described = {
            let ctx = std::sync::Arc::clone(&ctx);
            tokio::spawn(async move {
                let req = kafka_protocol::messages::DescribeLogDirsRequest::default();
                crate::server::handlers::topics::describe_log_dirs(&ctx, req.with_topics(None))
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!commit.is_finished(), "the commit waits for a place");
        assert!(
            !described.is_finished(),
            "DescribeLogDirs waits for a place"
        );
        assert!(ctx.storage.offsets().fetch("g", "t", 1).is_none());
        drop(places);
        let r = commit.await.unwrap();
        assert_eq!(r.topics[0].partitions[0].error_code, codes::NONE);
        assert_eq!(ctx.storage.offsets().fetch("g", "t", 1).unwrap().offset, 3);
        let r = described.await.unwrap();
        assert_eq!(r.results[0].error_code, codes::NONE);
        assert_eq!(r.results[0].topics.len(), 1);
    }

    /// Commits waiting for one group's writer lock wait for its turn, not
    /// each in a place for blocking work: 64 of them held every place, and
    /// every other client's blocking work waited behind the whole queue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_queued_on_one_group_leave_places_for_other_work() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 2).unwrap();
        let (holder, release) = hold_writer(&ctx, "g");
        let commits: Vec<_> = (0..crate::server::WORK_AT_ONCE + 1)
            .map(|i| {
                let ctx = std::sync::Arc::clone(&ctx);
                let offset = i64::try_from(i).unwrap();
                tokio::spawn(async move {
                    offset_commit(&ctx, commit_request(-1, "", &[(1, offset)])).await
                })
            })
            .collect();
        // Time for the commits to queue (without their turn, in the places).
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let req = kafka_protocol::messages::DescribeLogDirsRequest::default();
        let described = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            crate::server::handlers::topics::describe_log_dirs(&ctx, req.with_topics(None)),
        )
        .await
        .expect("DescribeLogDirs finds a place while the commits wait");
        assert_eq!(described.results[0].error_code, codes::NONE);
        assert!(commits.iter().all(|c| !c.is_finished()), "the lock is held");
        release.send(()).unwrap();
        holder.join().unwrap();
        for c in commits {
            let r = c.await.unwrap();
            assert_eq!(r.topics[0].partitions[0].error_code, codes::NONE);
        }
        assert!(ctx.storage.offsets().fetch("g", "t", 1).is_some());
    }

    /// An OffsetCommit to group `g` of `offsets` (partition, offset) of topic
    /// `t`, from `member` at `generation`.
    fn commit_request(
        generation: i32,
        member: &str,
        offsets: &[(i32, i64)],
    ) -> OffsetCommitRequest {
        use kafka_protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        OffsetCommitRequest::default()
            .with_group_id(GroupId("g".into()))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(StrBytes::from_string(member.to_string()))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName("t".into()))
                .with_partitions(
                    offsets
                        .iter()
                        .map(|&(p, o)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(o)
                        })
                        .collect(),
                )])
    }

    /// A first commit to a group past the store's limits is answered
    /// COORDINATOR_NOT_AVAILABLE, which clients retry, and nothing is
    /// stored; commits to groups held go on. Simple commits to new group ids
    /// (generation -1) were each stored as a group, without bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_commit_past_the_stored_groups_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        ctx.storage.offsets().set_limits(3, usize::MAX);
        let to = |g: &str, o| {
            commit_request(-1, "", &[(0, o)]).with_group_id(GroupId(g.to_string().into()))
        };
        for g in ["g0", "g1", "g2"] {
            let r = offset_commit(&ctx, to(g, 1)).await;
            assert_eq!(commit_codes(&r), [codes::NONE], "{g}");
        }
        let r = offset_commit(&ctx, to("g3", 1)).await;
        assert_eq!(commit_codes(&r), [codes::COORDINATOR_NOT_AVAILABLE]);
        assert!(ctx.storage.offsets().fetch("g3", "t", 0).is_none());
        assert_eq!(ctx.storage.offsets().groups().len(), 3);
        let r = offset_commit(&ctx, to("g0", 2)).await;
        assert_eq!(commit_codes(&r), [codes::NONE], "a group held");
        assert_eq!(ctx.storage.offsets().fetch("g0", "t", 0).unwrap().offset, 2);
        // A member of a group joined through the coordinator (which bounds
        // those) commits all the same: what simple commits filled does not
        // hold it back.
        let groups = std::sync::Arc::clone(&ctx.groups);
        let j = tokio::task::spawn_blocking(move || {
            joined_stable(&groups, JoinRequest::of_consumer(""))
        })
        .await
        .unwrap();
        let r = offset_commit(&ctx, commit_request(j.generation, &j.member_id, &[(0, 4)])).await;
        assert_eq!(commit_codes(&r), [codes::NONE], "a joined group's commit");
        assert_eq!(ctx.storage.offsets().groups().len(), 4);
    }

    /// The member of group "g" that `req` joins, synced: the group is stable
    /// and stored (blocking).
    fn joined_stable(
        groups: &crate::server::groups::GroupCoordinator,
        req: JoinRequest,
    ) -> crate::server::groups::JoinResult {
        let j = groups.join(req).blocking_recv().unwrap();
        assert_eq!(j.error, codes::NONE);
        let mut s = groups.sync("g", j.generation, &j.member_id, None, vec![]);
        groups.store_group("g");
        assert_eq!(s.try_recv().unwrap().0, codes::NONE, "stable");
        j
    }

    /// Each partition's error code in an OffsetCommit answer.
    fn commit_codes(r: &OffsetCommitResponse) -> Vec<i16> {
        r.topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect()
    }

    /// An OffsetCommit or OffsetDelete whose write failed was answered
    /// KAFKA_STORAGE_ERROR, on which the Java consumer's `commitSync` fails for
    /// good and the admin client reports the deletion failed. Kafka's
    /// coordinator answers a failed append NOT_COORDINATOR, which both retry
    /// (they look the coordinator up again); sent again once the file can be
    /// written, each takes effect.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_or_an_offset_delete_that_cannot_be_written_is_answered_not_coordinator() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 2).unwrap();
        let r = offset_commit(&ctx, commit_request(-1, "", &[(0, 5), (1, 7)])).await;
        assert_eq!(commit_codes(&r), [codes::NONE, codes::NONE]);
        // The group's file cannot be replaced: a directory with an entry
        // holds the name of its temporary file.
        let tmp = ctx
            .storage
            .offsets()
            .dir()
            .join(crate::storage::offsets::file_name("g"))
            .with_extension("tmp");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join("x"), b"x").unwrap();

        let r = offset_commit(&ctx, commit_request(-1, "", &[(0, 9)])).await;
        assert_eq!(commit_codes(&r), [codes::NOT_COORDINATOR]);
        assert_eq!(ctx.storage.offsets().fetch("g", "t", 0).unwrap().offset, 5);
        // Deleting one of the two positions rewrites the file.
        let delete = offset_delete_request(&[1]);
        let r = offset_delete(&ctx, delete.clone()).await;
        assert_eq!(r.error_code, codes::NOT_COORDINATOR);
        assert!(r.topics.is_empty(), "no partition is answered for");
        assert_eq!(ctx.storage.offsets().fetch("g", "t", 1).unwrap().offset, 7);

        // Sent again once the file can be written.
        std::fs::remove_dir_all(&tmp).unwrap();
        let r = offset_commit(&ctx, commit_request(-1, "", &[(0, 9)])).await;
        assert_eq!(commit_codes(&r), [codes::NONE]);
        let r = offset_delete(&ctx, delete).await;
        assert_eq!(r.error_code, codes::NONE);
        assert_eq!(r.topics[0].partitions[0].error_code, codes::NONE);
        assert_eq!(ctx.storage.offsets().fetch("g", "t", 0).unwrap().offset, 9);
        assert!(ctx.storage.offsets().fetch("g", "t", 1).is_none());
    }

    /// A commit checked against the member's generation and then held up
    /// waiting for the group's offsets writer lock (held across the fsyncs of
    /// every group sharing it) was written whatever happened meanwhile: its
    /// member could leave or expire, the group rebalance and the partition's
    /// new owner commit a later position, which the stale commit then
    /// replaced (the lock is not fair: the later commit may take it first).
    /// The member is now checked again under the lock. Whichever of the two
    /// commits takes the lock first, the stale one is refused and the new
    /// owner's position stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_whose_member_was_fenced_while_it_waited_for_the_writer_lock_is_refused() {
        use std::{future::Future, sync::Arc, task::Poll};
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        let groups = Arc::clone(&ctx.groups);
        let join_and_sync = move |groups: &Arc<crate::server::groups::GroupCoordinator>| {
            joined_stable(groups, JoinRequest::of_consumer(""))
        };
        let a = {
            let groups = Arc::clone(&groups);
            tokio::task::spawn_blocking(move || join_and_sync(&groups))
                .await
                .unwrap()
        };
        // The group's writer lock, held as a commit of another group sharing
        // it holds it across its fsync.
        let (holder, release_tx) = hold_writer(&ctx, "g");
        // A's commit passes its first check, then waits for the lock.
        let mut a_commit = {
            let ctx = Arc::clone(&ctx);
            let req = commit_request(a.generation, &a.member_id, &[(0, 100)]);
            Box::pin(async move { offset_commit(&ctx, req).await })
        };
        let first = std::future::poll_fn(|cx| Poll::Ready(a_commit.as_mut().poll(cx).is_pending()));
        assert!(first.await);
        // Its blocking part has had time to finish, were the lock free.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let still = std::future::poll_fn(|cx| Poll::Ready(a_commit.as_mut().poll(cx).is_pending()));
        assert!(still.await, "the commit waits for the writer lock");
        // A leaves (or its session expires) and B takes the group over.
        let b = tokio::task::spawn_blocking(move || {
            assert_eq!(
                groups.leave("g", std::slice::from_ref(&a.member_id)),
                Ok(vec![codes::NONE])
            );
            join_and_sync(&groups)
        })
        .await
        .unwrap();
        assert!(b.generation > a.generation);
        let b_commit = {
            let ctx = Arc::clone(&ctx);
            let req = commit_request(b.generation, &b.member_id, &[(0, 200)]);
            tokio::spawn(async move { offset_commit(&ctx, req).await })
        };
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        // A's commit holds the group's turn (B's waits for it) until it ends.
        assert_eq!(commit_codes(&a_commit.await), [codes::UNKNOWN_MEMBER_ID]);
        assert_eq!(commit_codes(&b_commit.await.unwrap()), [codes::NONE]);
        let fetched = offset_fetch(
            &ctx,
            OffsetFetchRequest::default()
                .with_group_id(GroupId("g".into()))
                .with_topics(Some(vec![
                    kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(TopicName("t".into()))
                        .with_partition_indexes(vec![0]),
                ])),
            1,
        );
        assert_eq!(fetched.topics[0].partitions[0].committed_offset, 200);
    }

    /// The handler keeps the committing member alive while its commit waits
    /// (here for the group's writer lock, as behind a slow fsync): a tick past
    /// the member's session timeout leaves it in the group, the commit is
    /// stored, and its end counts as a heartbeat.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_whose_commit_waits_is_not_expired_by_its_session() {
        use std::{future::Future, sync::Arc, task::Poll, time::Duration};
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 1).unwrap();
        let groups = Arc::clone(&ctx.groups);
        let j = tokio::task::spawn_blocking(move || {
            let j = groups
                .join(JoinRequest {
                    rebalance_timeout: Duration::from_secs(60),
                    ..JoinRequest::of_consumer("")
                })
                .blocking_recv()
                .unwrap();
            let mut s = groups.sync("g", j.generation, &j.member_id, None, vec![]);
            groups.store_group("g");
            assert_eq!(s.try_recv().unwrap().0, codes::NONE, "stable");
            j
        })
        .await
        .unwrap();
        let (holder, release_tx) = hold_writer(&ctx, "g");
        let mut commit = {
            let ctx = Arc::clone(&ctx);
            let req = commit_request(j.generation, &j.member_id, &[(0, 7)]);
            Box::pin(async move { offset_commit(&ctx, req).await })
        };
        let pending = std::future::poll_fn(|cx| Poll::Ready(commit.as_mut().poll(cx).is_pending()));
        assert!(pending.await, "the commit waits for the writer lock");
        // Silent past its session timeout (10 s) while the commit waits.
        assert!(ctx
            .groups
            .idle_member_for("g", &j.member_id, Duration::from_secs(11)));
        ctx.groups.tick();
        assert!(
            ctx.groups
                .idle_member_for("g", &j.member_id, Duration::from_secs(11)),
            "expired while its commit waited"
        );
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(commit_codes(&commit.await), [codes::NONE]);
        // The commit's end was a heartbeat: the next tick keeps the member.
        ctx.groups.tick();
        assert!(ctx
            .groups
            .idle_member_for("g", &j.member_id, Duration::ZERO));
    }

    /// An OffsetDelete judged the group (empty then: any topic's positions may
    /// go) and then waited for the group's offsets writer lock, held across
    /// the fsyncs of every group sharing it. A consumer joining meanwhile,
    /// subscribed to the topic, would resume from the position the deletion
    /// then removed, though Kafka answers such a deletion
    /// GROUP_SUBSCRIBED_TO_TOPIC. The group is now judged again under the
    /// lock. (The member's own commit cannot be made while the lock is held:
    /// it waits for the lock too. The position is the one committed before.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_offset_delete_held_up_while_a_member_subscribes_keeps_the_position() {
        use std::{future::Future, sync::Arc, task::Poll};
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Default::default()).await;
        ctx.storage.create_topic("t", 2).unwrap();
        let r = offset_commit(&ctx, commit_request(-1, "", &[(0, 5), (1, 7)])).await;
        assert_eq!(commit_codes(&r), [codes::NONE, codes::NONE]);
        let (holder, release_tx) = hold_writer(&ctx, "g");
        let req = offset_delete_request(&[0, 0]);
        let mut delete = {
            let ctx = Arc::clone(&ctx);
            Box::pin(async move { offset_delete(&ctx, req).await })
        };
        let first = std::future::poll_fn(|cx| Poll::Ready(delete.as_mut().poll(cx).is_pending()));
        assert!(first.await);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let still = std::future::poll_fn(|cx| Poll::Ready(delete.as_mut().poll(cx).is_pending()));
        assert!(still.await, "the deletion waits for the writer lock");
        // A consumer subscribed to t joins and syncs: the group is stable.
        let groups = Arc::clone(&ctx.groups);
        tokio::task::spawn_blocking(move || {
            let mut metadata = vec![0u8, 0, 0, 0, 0, 1, 0, 1, b't'];
            metadata.extend_from_slice(&(-1i32).to_be_bytes());
            let join = JoinRequest {
                protocols: vec![("range".into(), bytes::Bytes::from(metadata))],
                ..JoinRequest::of_consumer("")
            };
            let j = groups.join(join).blocking_recv().unwrap();
            assert_eq!(j.error, codes::NONE);
            let mut s = groups.sync("g", j.generation, &j.member_id, None, vec![]);
            groups.store_group("g");
            assert_eq!(s.try_recv().unwrap().0, codes::NONE, "stable");
        })
        .await
        .unwrap();
        assert_eq!(
            ctx.groups.offset_delete_guard("g"),
            OffsetDeleteGuard::Subscribed(["t".to_string()].into())
        );
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        let r = delete.await;
        assert_eq!(r.error_code, codes::NONE);
        let answered: Vec<i16> = r.topics[0]
            .partitions
            .iter()
            .map(|p| p.error_code)
            .collect();
        assert_eq!(
            answered,
            [
                codes::GROUP_SUBSCRIBED_TO_TOPIC,
                codes::GROUP_SUBSCRIBED_TO_TOPIC
            ]
        );
        assert_eq!(
            ctx.storage.offsets().fetch("g", "t", 0).map(|c| c.offset),
            Some(5),
            "the subscribed topic's position was deleted"
        );
        assert_eq!(ctx.storage.offsets().fetch_all("g").len(), 2);
    }
}
