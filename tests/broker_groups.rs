//! The consumer-group coordinator over the Kafka wire protocol: FindCoordinator,
//! JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit and OffsetFetch, and the
//! admin APIs ListGroups, DescribeGroups and DeleteGroups, at the lowest and highest
//! versions the broker advertises, checked against the error codes and state
//! transitions of Kafka's classic group coordinator.

mod broker_support;

use std::{
    io::Write,
    net::TcpStream,
    time::{Duration, Instant},
};

use bytes::Bytes;
use kafka_protocol::{
    messages::{
        describe_groups_response::DescribedGroup,
        join_group_request::JoinGroupRequestProtocol,
        leave_group_request::MemberIdentity,
        metadata_request::MetadataRequestTopic,
        offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
        offset_fetch_request::OffsetFetchRequestTopic,
        sync_group_request::SyncGroupRequestAssignment,
        ApiKey, ApiVersionsRequest, ApiVersionsResponse, DeleteGroupsRequest, DeleteGroupsResponse,
        DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
        FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
        JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
        ListGroupsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
        OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ProduceResponse,
        SyncGroupRequest, SyncGroupResponse, TopicName,
    },
    protocol::{Decodable, Encodable, StrBytes},
};

use broker_support::{
    wire::{closed, connect, request_frame, response, CLIENT_ID},
    Broker,
};

// Kafka error codes.
const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const OFFSET_METADATA_TOO_LARGE: i16 = 12;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const INVALID_GROUP_ID: i16 = 24;
const UNKNOWN_MEMBER_ID: i16 = 25;
const FENCED_INSTANCE_ID: i16 = 82;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const REBALANCE_IN_PROGRESS: i16 = 27;
const NOT_COORDINATOR: i16 = 16;
const INVALID_REQUEST: i16 = 42;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const MEMBER_ID_REQUIRED: i16 = 79;

/// The group APIs' advertised version ranges (asserted against ApiVersions in
/// `find_coordinator_returns_this_broker_and_group_apis_are_advertised`).
const FIND_COORDINATOR: (i16, i16) = (0, 3);
const JOIN_GROUP: (i16, i16) = (0, 5);
const SYNC_GROUP: (i16, i16) = (0, 3);
const HEARTBEAT: (i16, i16) = (0, 3);
const LEAVE_GROUP: (i16, i16) = (0, 3);
const OFFSET_COMMIT: (i16, i16) = (2, 7);
const OFFSET_FETCH: (i16, i16) = (1, 7);
const LIST_GROUPS: (i16, i16) = (0, 5);
const DESCRIBE_GROUPS: (i16, i16) = (0, 5);
const DELETE_GROUPS: (i16, i16) = (0, 2);

/// DescribeGroups' `authorized_operations` when not asked for (or before v3).
const NO_OPERATIONS: i32 = i32::MIN;
/// What Kafka without an authorizer reports for a group: READ (3), DELETE (6),
/// DESCRIBE (8).
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// How long a test waits for something the broker does on its own (a session
/// expiring, a rebalance starting) before failing.
const PATIENCE: Duration = Duration::from_secs(5);

/// The broker's default session timeout bounds (Kafka's
/// `group.min.session.timeout.ms` and `group.max.session.timeout.ms`).
const MIN_SESSION_MS: i32 = 6000;
const MAX_SESSION_MS: i32 = 1_800_000;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn group_id(v: &str) -> GroupId {
    GroupId(s(v))
}

/// One client connection with its own correlation ids.
struct Conn {
    stream: TcpStream,
    next_id: i32,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        Conn {
            stream: connect(addr),
            next_id: 0,
        }
    }

    /// Sends a request without waiting; returns its correlation id.
    fn send<R: Encodable>(&mut self, key: ApiKey, version: i16, body: &R) -> i32 {
        self.next_id += 1;
        self.stream
            .write_all(&request_frame(key, version, self.next_id, body))
            .unwrap();
        self.next_id
    }

    /// Reads the response to the request `cid` (the next one on this connection).
    fn recv<R: Decodable>(&mut self, key: ApiKey, version: i16, cid: i32) -> R {
        let (got, r) = response(&mut self.stream, key, version);
        assert_eq!(
            got, cid,
            "{key:?} v{version}: responses come in request order"
        );
        r
    }

    fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        body: &Req,
    ) -> Resp {
        let cid = self.send(key, version, body);
        self.recv(key, version, cid)
    }

    fn heartbeat(&mut self, version: i16, group: &str, generation: i32, member: &str) -> i16 {
        let req = HeartbeatRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id(generation)
            .with_member_id(s(member));
        self.call::<_, HeartbeatResponse>(ApiKey::Heartbeat, version, &req)
            .error_code
    }

    fn sync(
        &mut self,
        version: i16,
        group: &str,
        generation: i32,
        member: &str,
    ) -> SyncGroupResponse {
        let req = SyncGroupRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id(generation)
            .with_member_id(s(member));
        self.call(ApiKey::SyncGroup, version, &req)
    }

    /// LeaveGroup v0-v2: one member; returns the error code.
    fn leave_one(&mut self, version: i16, group: &str, member: &str) -> i16 {
        assert!(version < 3);
        let req = LeaveGroupRequest::default()
            .with_group_id(group_id(group))
            .with_member_id(s(member));
        let r: LeaveGroupResponse = self.call(ApiKey::LeaveGroup, version, &req);
        assert!(r.members.is_empty(), "v{version} has no member list");
        r.error_code
    }

    /// LeaveGroup v3+: several members; returns the top-level error code and
    /// `(member id, error code)` per member.
    fn leave_many(
        &mut self,
        version: i16,
        group: &str,
        members: &[&str],
    ) -> (i16, Vec<(String, i16)>) {
        assert!(version >= 3);
        let req = LeaveGroupRequest::default()
            .with_group_id(group_id(group))
            .with_members(
                members
                    .iter()
                    .map(|m| MemberIdentity::default().with_member_id(s(m)))
                    .collect(),
            );
        let r: LeaveGroupResponse = self.call(ApiKey::LeaveGroup, version, &req);
        let per_member = r
            .members
            .iter()
            .map(|m| (m.member_id.to_string(), m.error_code))
            .collect();
        (r.error_code, per_member)
    }

    /// OffsetCommit of `(topic, partition, offset, leader epoch, metadata)`; returns
    /// `(topic, partition, error code)` in response order.
    fn commit(
        &mut self,
        version: i16,
        group: &str,
        generation: i32,
        member: &str,
        offsets: &[(&str, i32, i64, i32, &str)],
    ) -> Vec<(String, i32, i16)> {
        let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
        for &(topic, partition, offset, epoch, meta) in offsets {
            let p = OffsetCommitRequestPartition::default()
                .with_partition_index(partition)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(if version >= 6 { epoch } else { -1 })
                .with_committed_metadata(Some(s(meta)));
            match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                Some(t) => t.partitions.push(p),
                None => topics.push(
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_partitions(vec![p]),
                ),
            }
        }
        let req = OffsetCommitRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(member))
            .with_topics(topics);
        let r: OffsetCommitResponse = self.call(ApiKey::OffsetCommit, version, &req);
        r.topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.0.to_string(), p.partition_index, p.error_code))
            })
            .collect()
    }

    /// A simple commit (generation -1, no member id), as assign-mode clients send.
    fn simple_commit(&mut self, version: i16, group: &str, topic: &str, offset: i64) -> i16 {
        let r = self.commit(version, group, -1, "", &[(topic, 0, offset, -1, "")]);
        assert_eq!(r.len(), 1);
        r[0].2
    }

    /// OffsetFetch of `topics` (`None`: every committed partition); returns
    /// `(topic, partition, offset, leader epoch, metadata, error code)`.
    fn fetch(
        &mut self,
        version: i16,
        group: &str,
        topics: Option<&[(&str, &[i32])]>,
    ) -> Vec<(String, i32, i64, i32, String, i16)> {
        let req = OffsetFetchRequest::default()
            .with_group_id(group_id(group))
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|(t, parts)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(TopicName(s(t)))
                            .with_partition_indexes(parts.to_vec())
                    })
                    .collect()
            }));
        let r: OffsetFetchResponse = self.call(ApiKey::OffsetFetch, version, &req);
        assert_eq!(r.error_code, NONE, "OffsetFetch v{version} top-level error");
        let mut out = Vec::new();
        for t in &r.topics {
            for p in &t.partitions {
                out.push((
                    t.name.0.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.committed_leader_epoch,
                    p.metadata
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    p.error_code,
                ));
            }
        }
        out
    }

    /// ListGroups with a states filter (v4+) and a types filter (v5+); returns
    /// `(group, protocol type, state, type)` sorted by group (state and type are
    /// empty where the version has no such field).
    fn list(
        &mut self,
        version: i16,
        states: &[&str],
        types: &[&str],
    ) -> Vec<(String, String, String, String)> {
        let req = ListGroupsRequest::default()
            .with_states_filter(states.iter().map(|v| s(v)).collect())
            .with_types_filter(types.iter().map(|v| s(v)).collect());
        let r: ListGroupsResponse = self.call(ApiKey::ListGroups, version, &req);
        assert_eq!(r.error_code, NONE, "ListGroups v{version}");
        let mut out: Vec<_> = r
            .groups
            .iter()
            .map(|g| {
                (
                    g.group_id.0.to_string(),
                    g.protocol_type.to_string(),
                    g.group_state.to_string(),
                    g.group_type.to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// `(protocol type, state)` of `group` in an unfiltered ListGroups v4, or
    /// `None` when it is not listed.
    fn listed_as(&mut self, group: &str) -> Option<(String, String)> {
        self.list(4, &[], &[])
            .into_iter()
            .find(|(g, ..)| g == group)
            .map(|(_, t, state, _)| (t, state))
    }

    /// DescribeGroups of `groups`, asking for the authorized operations (v3+).
    fn describe(&mut self, version: i16, groups: &[&str]) -> Vec<DescribedGroup> {
        let req = DescribeGroupsRequest::default()
            .with_groups(groups.iter().map(|g| group_id(g)).collect())
            .with_include_authorized_operations(version >= 3);
        let r: DescribeGroupsResponse = self.call(ApiKey::DescribeGroups, version, &req);
        assert_eq!(r.groups.len(), groups.len(), "one description per group");
        for (d, g) in r.groups.iter().zip(groups) {
            assert_eq!(d.group_id.0.as_str(), *g, "in request order");
        }
        r.groups
    }

    /// DescribeGroups of one group: `(error, state, protocol type, protocol,
    /// members as (member id, client id, client host, metadata, assignment))`.
    fn describe_one(&mut self, version: i16, group: &str) -> Described {
        let d = self.describe(version, &[group]).remove(0);
        let members = d
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.client_id.to_string(),
                    m.client_host.to_string(),
                    String::from_utf8_lossy(&m.member_metadata).into_owned(),
                    String::from_utf8_lossy(&m.member_assignment).into_owned(),
                )
            })
            .collect();
        (
            d.error_code,
            d.group_state.to_string(),
            d.protocol_type.to_string(),
            d.protocol_data.to_string(),
            members,
        )
    }

    /// DeleteGroups of `groups`; returns `(group, error code)` per result.
    fn delete(&mut self, version: i16, groups: &[&str]) -> Vec<(String, i16)> {
        let req = DeleteGroupsRequest::default()
            .with_groups_names(groups.iter().map(|g| group_id(g)).collect());
        let r: DeleteGroupsResponse = self.call(ApiKey::DeleteGroups, version, &req);
        r.results
            .iter()
            .map(|g| (g.group_id.0.to_string(), g.error_code))
            .collect()
    }

    /// Produces `records` records to `topic`/`partition`, so that positions up
    /// to its end are within the log: a restart brings a committed position
    /// beyond its partition's log end down to it.
    fn fill(&mut self, topic: &str, partition: i32, records: usize) {
        let values = vec!["r"; records];
        let req =
            broker_support::wire::produce(topic, partition, broker_support::wire::batch(&values));
        let r: ProduceResponse = self.call(ApiKey::Produce, 9, &req);
        assert_eq!(
            r.responses[0].partition_responses[0].error_code, NONE,
            "producing to {topic}/{partition}"
        );
    }

    /// Creates `topic` through Metadata auto-creation; returns its partition count.
    fn create_topic(&mut self, topic: &str) -> usize {
        let req = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(TopicName(s(topic))))
            ]))
            .with_allow_auto_topic_creation(true);
        let m: MetadataResponse = self.call(ApiKey::Metadata, 9, &req);
        assert_eq!(m.topics[0].error_code, NONE, "creating {topic}");
        m.topics[0].partitions.len()
    }
}

/// A DescribeGroups answer for one group (see [`Conn::describe_one`]).
type Described = (i16, String, String, String, Vec<DescribedMember>);
/// (member id, client id, client host, metadata, assignment).
type DescribedMember = (String, String, String, String, String);

/// A group member as a client drives it: its own connection, the JoinGroup version
/// it speaks (SyncGroup and Heartbeat at the same version, capped at their highest),
/// and what its last completed join told it.
struct Member {
    conn: Conn,
    group: String,
    version: i16,
    id: String,
    generation: i32,
    protocols: Vec<(String, Bytes)>,
    session_ms: i32,
    rebalance_ms: i32,
    instance: Option<String>,
}

impl Member {
    /// A new member of `group` offering `protocols` (name, metadata). At JoinGroup v4+
    /// it first asks for its member id, as real clients do: the broker answers
    /// MEMBER_ID_REQUIRED with the id and the member is not in the group yet.
    fn new(addr: &str, group: &str, version: i16, protocols: &[(&str, &str)]) -> Member {
        let mut m = Member::unjoined(addr, group, version, protocols);
        if version >= 4 {
            m.ask_member_id();
        }
        m
    }

    /// Like [`Member::new`] without asking for a member id.
    fn unjoined(addr: &str, group: &str, version: i16, protocols: &[(&str, &str)]) -> Member {
        Member {
            conn: Conn::new(addr),
            group: group.to_string(),
            version,
            id: String::new(),
            generation: -1,
            protocols: protocols
                .iter()
                .map(|(n, m)| ((*n).to_string(), Bytes::copy_from_slice(m.as_bytes())))
                .collect(),
            session_ms: 10_000,
            rebalance_ms: 10_000,
            instance: None,
        }
    }

    fn ask_member_id(&mut self) {
        let cid = self.send_join();
        let r: JoinGroupResponse = self.conn.recv(ApiKey::JoinGroup, self.version, cid);
        assert_eq!(r.error_code, MEMBER_ID_REQUIRED, "v{}", self.version);
        assert_eq!(r.generation_id, -1);
        assert_eq!(r.leader.as_str(), "");
        assert!(r.members.is_empty());
        assert!(
            r.member_id.starts_with(&format!("{CLIENT_ID}-")),
            "member id {:?} is prefixed with the client id",
            r.member_id
        );
        self.id = r.member_id.to_string();
    }

    fn sync_version(&self) -> i16 {
        self.version.min(SYNC_GROUP.1)
    }

    fn heartbeat_version(&self) -> i16 {
        self.version.min(HEARTBEAT.1)
    }

    fn join_request(&self) -> JoinGroupRequest {
        let mut r = JoinGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_session_timeout_ms(self.session_ms)
            .with_member_id(s(&self.id))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(
                self.protocols
                    .iter()
                    .map(|(n, m)| {
                        JoinGroupRequestProtocol::default()
                            .with_name(s(n))
                            .with_metadata(m.clone())
                    })
                    .collect(),
            );
        if self.version >= 1 {
            r.rebalance_timeout_ms = self.rebalance_ms;
        }
        if self.version >= 5 {
            r.group_instance_id = self.instance.as_deref().map(s);
        }
        r
    }

    /// Sends a JoinGroup (which may wait for a rebalance); returns its correlation id.
    fn send_join(&mut self) -> i32 {
        let req = self.join_request();
        self.conn.send(ApiKey::JoinGroup, self.version, &req)
    }

    /// Reads the JoinGroup response `cid`; on success adopts its member id and
    /// generation.
    fn recv_join(&mut self, cid: i32) -> JoinGroupResponse {
        let r: JoinGroupResponse = self.conn.recv(ApiKey::JoinGroup, self.version, cid);
        if r.error_code == NONE {
            if !self.id.is_empty() {
                assert_eq!(r.member_id.as_str(), self.id, "a known member keeps its id");
            }
            assert!(r.member_id.starts_with(&format!("{CLIENT_ID}-")));
            self.id = r.member_id.to_string();
            self.generation = r.generation_id;
        }
        r
    }

    fn join(&mut self) -> JoinGroupResponse {
        let cid = self.send_join();
        self.recv_join(cid)
    }

    fn heartbeat(&mut self) -> i16 {
        let v = self.heartbeat_version();
        let mut req = HeartbeatRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation)
            .with_member_id(s(&self.id));
        if v >= 3 {
            req.group_instance_id = self.instance.as_deref().map(s);
        }
        self.conn
            .call::<_, HeartbeatResponse>(ApiKey::Heartbeat, v, &req)
            .error_code
    }

    /// Heartbeats every 20 ms until the broker answers `want`; fails after
    /// [`PATIENCE`] with the last answer.
    fn heartbeat_until(&mut self, want: i16) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.heartbeat();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "heartbeat of {} never answered {want} (last {got})",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sync_request(&self, assignments: &[(&str, &str)]) -> SyncGroupRequest {
        let mut r = SyncGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation)
            .with_member_id(s(&self.id))
            .with_assignments(
                assignments
                    .iter()
                    .map(|(m, a)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(s(m))
                            .with_assignment(Bytes::copy_from_slice(a.as_bytes()))
                    })
                    .collect(),
            );
        if self.sync_version() >= 3 {
            r.group_instance_id = self.instance.as_deref().map(s);
        }
        r
    }

    fn send_sync(&mut self, assignments: &[(&str, &str)]) -> i32 {
        let req = self.sync_request(assignments);
        let v = self.sync_version();
        self.conn.send(ApiKey::SyncGroup, v, &req)
    }

    /// Reads the SyncGroup response `cid`: (error code, assignment).
    fn recv_sync(&mut self, cid: i32) -> (i16, String) {
        let v = self.sync_version();
        let r: SyncGroupResponse = self.conn.recv(ApiKey::SyncGroup, v, cid);
        (
            r.error_code,
            String::from_utf8_lossy(&r.assignment).into_owned(),
        )
    }

    fn sync(&mut self, assignments: &[(&str, &str)]) -> (i16, String) {
        let cid = self.send_sync(assignments);
        self.recv_sync(cid)
    }
}

/// Member ids with their metadata, sorted, from a JoinGroup response.
fn listed(r: &JoinGroupResponse) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .members
        .iter()
        .map(|m| {
            (
                m.member_id.to_string(),
                String::from_utf8_lossy(&m.metadata).into_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

/// Followers send SyncGroup first (they wait), then the leader hands every member
/// the assignment "a-<member id>"; asserts each member got its own.
fn sync_all(members: &mut [Member], leader: &str) {
    let assignments: Vec<(String, String)> = members
        .iter()
        .map(|m| (m.id.clone(), format!("a-{}", m.id)))
        .collect();
    let pairs: Vec<(&str, &str)> = assignments
        .iter()
        .map(|(m, a)| (m.as_str(), a.as_str()))
        .collect();
    let waiting: Vec<(usize, i32)> = members
        .iter_mut()
        .enumerate()
        .filter(|(_, m)| m.id != leader)
        .map(|(i, m)| (i, m.send_sync(&[])))
        .collect();
    let l = members.iter_mut().find(|m| m.id == leader).expect("leader");
    let got = l.sync(&pairs);
    assert_eq!(got, (NONE, format!("a-{leader}")), "leader's assignment");
    for (i, cid) in waiting {
        let m = &mut members[i];
        let got = m.recv_sync(cid);
        assert_eq!(got, (NONE, format!("a-{}", m.id)), "follower's assignment");
    }
}

/// Forms a stable group of `n` members speaking JoinGroup `version`, one member at a
/// time: each newcomer's join starts a rebalance that the others see on their
/// heartbeat; they rejoin and everyone syncs. Returns the members and the leader's id.
fn form_group(addr: &str, group: &str, version: i16, n: usize) -> (Vec<Member>, String) {
    let mut members: Vec<Member> = Vec::new();
    let mut leader = String::new();
    for i in 0..n {
        let mut m = Member::new(addr, group, version, &[("range", &format!("m{i}"))]);
        let cid = m.send_join();
        for old in &mut members {
            old.heartbeat_until(REBALANCE_IN_PROGRESS);
        }
        let rejoins: Vec<i32> = members.iter_mut().map(Member::send_join).collect();
        let r = m.recv_join(cid);
        assert_eq!(r.error_code, NONE);
        for (old, cid) in members.iter_mut().zip(rejoins) {
            let ro = old.recv_join(cid);
            assert_eq!(ro.error_code, NONE);
            assert_eq!(ro.generation_id, r.generation_id);
        }
        assert_eq!(
            r.generation_id,
            i as i32 + 1,
            "one generation per rebalance"
        );
        leader = r.leader.to_string();
        members.push(m);
        sync_all(&mut members, &leader);
    }
    (members, leader)
}

#[test]
fn find_coordinator_returns_this_broker_and_group_apis_are_advertised() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut c = Conn::new(&broker.addr);

    let v: ApiVersionsResponse = c.call(
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
            .with_client_software_version(StrBytes::from_static_str("1.0")),
    );
    assert_eq!(v.error_code, NONE);
    let range = |key: ApiKey| {
        v.api_keys
            .iter()
            .find(|k| k.api_key == key as i16)
            .map(|k| (k.min_version, k.max_version))
    };
    for (key, want) in [
        (ApiKey::FindCoordinator, FIND_COORDINATOR),
        (ApiKey::JoinGroup, JOIN_GROUP),
        (ApiKey::SyncGroup, SYNC_GROUP),
        (ApiKey::Heartbeat, HEARTBEAT),
        (ApiKey::LeaveGroup, LEAVE_GROUP),
        (ApiKey::OffsetCommit, OFFSET_COMMIT),
        (ApiKey::OffsetFetch, OFFSET_FETCH),
        (ApiKey::ListGroups, LIST_GROUPS),
        (ApiKey::DescribeGroups, DESCRIBE_GROUPS),
        (ApiKey::DeleteGroups, DELETE_GROUPS),
    ] {
        assert_eq!(range(key), Some(want), "{key:?} versions");
    }

    let m: MetadataResponse = c.call(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    );
    let me = &m.brokers[0];
    let port: i32 = broker.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!((me.host.as_str(), me.port), ("127.0.0.1", port));
    for version in [FIND_COORDINATOR.0, 1, 2, FIND_COORDINATOR.1] {
        let r: FindCoordinatorResponse = c.call(
            ApiKey::FindCoordinator,
            version,
            &FindCoordinatorRequest::default().with_key(s("orders-app")),
        );
        assert_eq!(r.error_code, NONE, "v{version}");
        assert_eq!(
            (r.node_id, r.host.as_str(), r.port),
            (me.node_id, me.host.as_str(), me.port),
            "v{version}: the coordinator is this broker"
        );
    }
    // There is no transaction coordinator (key type 1): a non-retriable error
    // that says so, not COORDINATOR_NOT_AVAILABLE, which clients retry for their
    // whole timeout. An unknown key type gets the same. The connection keeps serving.
    for (key_type, says) in [(1, "transactions are not supported"), (7, "unknown")] {
        let r: FindCoordinatorResponse = c.call(
            ApiKey::FindCoordinator,
            FIND_COORDINATOR.1,
            &FindCoordinatorRequest::default()
                .with_key(s("txn"))
                .with_key_type(key_type),
        );
        assert_eq!(r.error_code, INVALID_REQUEST, "key type {key_type}");
        assert_eq!((r.node_id.0, r.port), (-1, -1));
        let message = r.error_message.map(|m| m.to_string()).unwrap_or_default();
        assert!(message.contains(says), "key type {key_type}: {message}");
    }
    let r: FindCoordinatorResponse = c.call(
        ApiKey::FindCoordinator,
        1,
        &FindCoordinatorRequest::default().with_key(s("orders-app")),
    );
    assert_eq!((r.error_code, r.port), (NONE, port));
}

/// With `--group-initial-rebalance-delay-ms`, members of an empty group that
/// join together form one first generation, as with Kafka's
/// `group.initial.rebalance.delay.ms`: the first JoinGroup is answered only
/// once the delay is over (the session ticker ends it), with the member that
/// joined meanwhile in the same generation. The first member used to get a
/// generation of its own at once, and the group rebalanced as the second
/// joined.
#[test]
fn members_joining_an_empty_group_together_form_one_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &["--group-initial-rebalance-delay-ms", "1000"],
    );
    let mut a = Member::new(&broker.addr, "together", 5, &[("range", "a")]);
    let mut b = Member::new(&broker.addr, "together", 5, &[("range", "b")]);
    let started = Instant::now();
    let a_join = a.send_join();
    std::thread::sleep(Duration::from_millis(300));
    let b_join = b.send_join();
    let (ra, rb) = (a.recv_join(a_join), b.recv_join(b_join));
    let waited = started.elapsed();
    assert_eq!((ra.error_code, rb.error_code), (NONE, NONE));
    assert_eq!(
        (ra.generation_id, rb.generation_id),
        (1, 1),
        "one generation of both"
    );
    assert!(
        waited >= Duration::from_millis(1000),
        "answered after {waited:?}"
    );
    let leader = if ra.leader == ra.member_id { &ra } else { &rb };
    assert_eq!(listed(leader).len(), 2, "the leader lists both");
}

/// A JoinGroup waiting for the rest of its group when the broker is told to
/// stop is answered NOT_COORDINATOR at once, as Kafka answers the joins of a
/// group its coordinator unloads: the server reads no more requests, so no
/// other member could complete the rebalance, and the shutdown waited its full
/// 10 s for the connection, then closed it unanswered.
#[test]
fn a_shutdown_answers_a_waiting_join_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut a = Member::new(&broker.addr, "quit", 5, &[("range", "a")]);
    assert_eq!(a.join().error_code, NONE);
    assert_eq!(a.sync(&[(&a.id.clone(), "A1")]), (NONE, "A1".to_string()));
    // B's join waits for A to rejoin (up to B's rebalance timeout, 60 s).
    let mut b = Member::new(&broker.addr, "quit", 5, &[("range", "b")]);
    b.rebalance_ms = 60_000;
    let b_join = b.send_join();
    a.heartbeat_until(REBALANCE_IN_PROGRESS);
    let stopping = Instant::now();
    let reader = std::thread::spawn(move || {
        let r = b.recv_join(b_join);
        (r.error_code, stopping.elapsed())
    });
    assert!(broker.sigterm().success());
    let exited = stopping.elapsed();
    let (code, answered) = reader.join().unwrap();
    assert_eq!(code, NOT_COORDINATOR);
    // The bug this guards against took the shutdown's full 10 s wait for the
    // connection; a loaded machine's fsyncs may take a few of the 8 s allowed.
    assert!(
        answered < Duration::from_secs(8) && exited < Duration::from_secs(8),
        "a waiting JoinGroup answered {answered:?} and the broker exited {exited:?} after SIGTERM"
    );
    assert!(
        !broker.log_text().contains("still busy"),
        "{}",
        broker.log_text()
    );
}

/// No session expires while the server drains: a member whose session is
/// shorter than the drain (held open here by a client that does not read its
/// Fetch answers, for the full 10 s) keeps its membership, stored as it was.
/// The session ticker went on through the drain, while the server read no
/// more heartbeats: it expired live members and stored their group empty,
/// which a restart then served.
#[test]
fn a_drain_longer_than_a_session_expires_no_member() {
    use broker_support::wire;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut broker = Broker::start(&data, &["--group-min-session-timeout-ms", "500"]);
    // Some 7 MiB to read, and a client asking for it 30 times without reading
    // an answer: its connection stays busy through the drain.
    let mut c = connect(&broker.addr);
    assert_eq!(wire::topic_metadata(&mut c, "big", true), NONE);
    let value = "v".repeat(900 << 10);
    for i in 0..8 {
        let req = wire::produce("big", 0, wire::batch(&[&value]));
        let r = wire::send_produce(&mut c, 9, i, &req);
        assert_eq!(wire::partition_result(&r).0, NONE);
    }
    let mut fetch = wire::fetch_request("big", 0, 0);
    fetch.max_bytes = 64 << 20;
    fetch.topics[0].partitions[0].partition_max_bytes = 64 << 20;
    for cid in 0..30 {
        c.write_all(&request_frame(ApiKey::Fetch, 12, 100 + cid, &fetch))
            .unwrap();
    }
    let mut a = Member::new(&broker.addr, "drained", 5, &[("range", "a")]);
    // Short against the 10 s drain, long enough that a loaded machine's
    // stall between the sync and the SIGTERM does not expire it first.
    a.session_ms = 2500;
    assert_eq!(a.join().error_code, NONE);
    assert_eq!(a.sync(&[(&a.id.clone(), "A1")]), (NONE, "A1".to_string()));
    let stopping = Instant::now();
    assert!(broker.sigterm().success());
    assert!(
        stopping.elapsed() > Duration::from_secs(5),
        "the drain was held open past the member's 2.5 s session ({:?})",
        stopping.elapsed()
    );
    let stored = std::fs::read_to_string(membership_file(&data, "drained")).unwrap();
    assert!(
        stored.contains(&a.id),
        "the member's membership was stored as expired during the drain: {stored}"
    );
    drop(c);
}

/// A client that closes its connection while its JoinGroup waits for the
/// rest of the group frees the connection at once, as Kafka closes it: the
/// rebalance waits up to the longest rebalance timeout (up to i32::MAX ms),
/// and each such connection kept its slot under `--max-connections` until
/// then, so that a few of them made the broker refuse every new client. So
/// does a connection the broker ends for a bad frame.
#[test]
fn a_connection_closed_while_its_join_waits_is_freed_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--max-connections", "4"]);
    let mut a = Member::new(&broker.addr, "gone", 5, &[("range", "a")]);
    assert_eq!(a.join().error_code, NONE);
    assert_eq!(a.sync(&[(&a.id.clone(), "A1")]), (NONE, "A1".to_string()));
    // Three joins, one after the other, each on a connection closed while
    // the join waits for A to rejoin (up to its 600 s rebalance timeout).
    // Held, they and A's take all four slots.
    for _ in 0..3 {
        let mut b = Member::new(&broker.addr, "gone", 5, &[("range", "b")]);
        b.rebalance_ms = 600_000;
        b.send_join();
        a.heartbeat_until(REBALANCE_IN_PROGRESS);
        drop(b);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Conn::new(&broker.addr);
        let cid = c.send(
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
                .with_client_software_version(StrBytes::from_static_str("1.0")),
        );
        if let Some(mut frame) = broker_support::wire::read_frame(&mut c.stream) {
            let h = kafka_protocol::messages::ResponseHeader::decode(
                &mut frame,
                ApiKey::ApiVersions.response_header_version(3),
            )
            .unwrap();
            assert_eq!(h.correlation_id, cid);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after the clients closed their waiting joins' connections, a new connection is still refused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A connection the broker ends, for a bad frame behind a waiting join,
    // is not held for the join either.
    let mut b = Member::new(&broker.addr, "gone", 5, &[("range", "b")]);
    b.rebalance_ms = 600_000;
    b.send_join();
    a.heartbeat_until(REBALANCE_IN_PROGRESS);
    b.conn.stream.write_all(&(-1i32).to_be_bytes()).unwrap();
    b.conn
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        broker_support::wire::closed(&mut b.conn.stream),
        "a connection whose bad frame followed a waiting join stays open"
    );
    // A rejoins: every member has joined (those that left too, until their
    // sessions end), and the rebalance completes.
    assert_eq!(a.join().error_code, NONE);
}

/// At every advertised JoinGroup version: a new member gets its id (at v4+ through
/// MEMBER_ID_REQUIRED), becomes leader of generation 1 with the group's first
/// protocol; a second member starts a rebalance the first sees on its heartbeat;
/// the next generation keeps the leader, picks the only protocol both support and
/// delivers the leader's assignments to each member; stale generations and unknown
/// members are refused.
#[test]
fn join_sync_heartbeat_and_rebalance_at_every_join_version() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    for version in JOIN_GROUP.0..=JOIN_GROUP.1 {
        let group = format!("rebalance-v{version}");
        let mut a = Member::new(
            &broker.addr,
            &group,
            version,
            &[("range", "a-range"), ("roundrobin", "a-rr")],
        );
        let asked = a.id.clone();
        let j = a.join();
        assert_eq!(j.error_code, NONE, "v{version}");
        if version >= 4 {
            assert_eq!(a.id, asked, "v{version}: joins with the id it was given");
        }
        assert_eq!(j.generation_id, 1);
        assert_eq!(j.leader.as_str(), a.id, "the only member leads");
        assert_eq!(j.protocol_name.as_deref(), Some("range"));
        assert_eq!(listed(&j), vec![(a.id.clone(), "a-range".to_string())]);
        assert_eq!(a.sync(&[(&a.id.clone(), "A1")]), (NONE, "A1".to_string()));
        assert_eq!(a.heartbeat(), NONE);
        let first = a.generation;

        // A second member's join waits for the first to rejoin.
        let mut b = Member::new(&broker.addr, &group, version, &[("roundrobin", "b-rr")]);
        let b_join = b.send_join();
        a.heartbeat_until(REBALANCE_IN_PROGRESS);
        assert_eq!(
            a.sync(&[]).0,
            REBALANCE_IN_PROGRESS,
            "v{version}: SyncGroup while the group prepares a rebalance"
        );
        let ja = a.join();
        let jb = b.recv_join(b_join);
        assert_eq!((ja.error_code, jb.error_code), (NONE, NONE), "v{version}");
        assert_eq!(
            ja.generation_id,
            first + 1,
            "a rebalance is a new generation"
        );
        assert_eq!(jb.generation_id, ja.generation_id);
        assert_ne!(a.id, b.id);
        for r in [&ja, &jb] {
            assert_eq!(r.leader.as_str(), a.id, "the leader stays");
            assert_eq!(
                r.protocol_name.as_deref(),
                Some("roundrobin"),
                "the protocol every member supports"
            );
        }
        assert_eq!(
            listed(&ja),
            sorted(vec![
                (a.id.clone(), "a-rr".into()),
                (b.id.clone(), "b-rr".into())
            ]),
            "the leader gets every member's metadata for the chosen protocol"
        );
        assert!(jb.members.is_empty(), "followers get no member list");

        // The follower's SyncGroup waits for the leader's assignments.
        let b_sync = b.send_sync(&[]);
        let (a_id, b_id) = (a.id.clone(), b.id.clone());
        assert_eq!(
            a.sync(&[(&a_id, "A2"), (&b_id, "B2"), ("stranger", "X")]),
            (NONE, "A2".to_string())
        );
        assert_eq!(b.recv_sync(b_sync), (NONE, "B2".to_string()));
        assert_eq!((a.heartbeat(), b.heartbeat()), (NONE, NONE));

        // Stale generations and unknown members.
        let (hv, sv) = (a.heartbeat_version(), a.sync_version());
        let now = a.generation;
        assert_eq!(
            a.conn.heartbeat(hv, &group, first, &a_id),
            ILLEGAL_GENERATION
        );
        assert_eq!(
            a.conn.heartbeat(hv, &group, now + 1, &a_id),
            ILLEGAL_GENERATION
        );
        assert_eq!(
            a.conn.heartbeat(hv, &group, now, "nobody"),
            UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            a.conn.heartbeat(hv, "no-such-group", now, &a_id),
            UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            a.conn.sync(sv, &group, first, &a_id).error_code,
            ILLEGAL_GENERATION
        );
        assert_eq!(
            a.conn.sync(sv, &group, now, "nobody").error_code,
            UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            a.conn.sync(sv, "no-such-group", now, &a_id).error_code,
            UNKNOWN_MEMBER_ID
        );

        // A follower rejoining with unchanged metadata gets the current generation,
        // and its assignment again, without a rebalance.
        let again = b.join();
        assert_eq!(
            (again.error_code, again.generation_id, again.leader.as_str()),
            (NONE, now, a_id.as_str())
        );
        assert_eq!(b.sync(&[]), (NONE, "B2".to_string()));
        assert_eq!(a.heartbeat(), NONE, "no rebalance");
    }
}

/// JoinGroup validation: an empty group id, no protocols, an empty protocol type, a
/// protocol type or protocols the group cannot use, an unknown member id. A refused
/// joiner leaves the group alone.
#[test]
fn join_refuses_invalid_groups_inconsistent_protocols_and_unknown_members() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    for version in [JOIN_GROUP.0, JOIN_GROUP.1] {
        let group = format!("strict-v{version}");
        let refused =
            |group: &str, protocols: &[(&str, &str)], edit: &dyn Fn(&mut JoinGroupRequest)| {
                let mut m = Member::unjoined(&broker.addr, group, version, protocols);
                let mut req = m.join_request();
                edit(&mut req);
                let r: JoinGroupResponse = m.conn.call(ApiKey::JoinGroup, version, &req);
                (r.error_code, r.member_id.to_string(), r.generation_id)
            };
        assert_eq!(
            refused("", &[("range", "")], &|_| {}).0,
            INVALID_GROUP_ID,
            "v{version}: empty group id"
        );
        assert_eq!(
            refused(&group, &[], &|_| {}).0,
            INCONSISTENT_GROUP_PROTOCOL,
            "v{version}: no protocols"
        );
        assert_eq!(
            refused(&group, &[("range", "")], &|r| r.protocol_type = s("")).0,
            INCONSISTENT_GROUP_PROTOCOL,
            "v{version}: empty protocol type"
        );

        let mut a = Member::new(&broker.addr, &group, version, &[("range", "a")]);
        assert_eq!(a.join().error_code, NONE);
        let a_id = a.id.clone();
        assert_eq!(a.sync(&[(&a_id, "A")]), (NONE, "A".to_string()));

        assert_eq!(
            refused(&group, &[("range", "")], &|r| r.protocol_type =
                s("connect")),
            (INCONSISTENT_GROUP_PROTOCOL, String::new(), -1),
            "v{version}: another protocol type"
        );
        assert_eq!(
            refused(&group, &[("sticky", ""), ("cooperative", "")], &|_| {}),
            (INCONSISTENT_GROUP_PROTOCOL, String::new(), -1),
            "v{version}: no protocol in common with the group"
        );
        let ghost = format!("{CLIENT_ID}-ghost");
        assert_eq!(
            refused(&group, &[("range", "")], &|r| r.member_id = s(&ghost)),
            (UNKNOWN_MEMBER_ID, ghost.clone(), -1),
            "v{version}: a member id the group never gave out"
        );
        assert_eq!(
            a.heartbeat(),
            NONE,
            "v{version}: refused joins start no rebalance"
        );
        assert_eq!(a.sync(&[]), (NONE, "A".to_string()));
    }
}

/// An empty group id is treated as Kafka's coordinator treats it: JoinGroup,
/// SyncGroup, Heartbeat and LeaveGroup get INVALID_GROUP_ID at every version (from
/// LeaveGroup v3 for the whole request, with no member list); OffsetCommit and
/// OffsetFetch accept it (Kafka keeps that for backwards compatibility) like any
/// other group, and what was committed survives a restart.
#[test]
fn empty_group_id_is_refused_by_membership_apis_and_accepted_by_offset_apis() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.create_topic("anon-topic"), 1);
    c.fill("anon-topic", 0, 5);
    for v in JOIN_GROUP.0..=JOIN_GROUP.1 {
        let r = Member::unjoined(&broker.addr, "", v, &[("range", "")]).join();
        assert_eq!(
            (r.error_code, r.generation_id),
            (INVALID_GROUP_ID, -1),
            "JoinGroup v{v}"
        );
    }
    for v in SYNC_GROUP.0..=SYNC_GROUP.1 {
        let r = c.sync(v, "", 1, "someone");
        assert_eq!(r.error_code, INVALID_GROUP_ID, "SyncGroup v{v}");
        assert!(r.assignment.is_empty());
    }
    for v in HEARTBEAT.0..=HEARTBEAT.1 {
        assert_eq!(
            c.heartbeat(v, "", 1, "someone"),
            INVALID_GROUP_ID,
            "Heartbeat v{v}"
        );
    }
    for v in LEAVE_GROUP.0..3 {
        assert_eq!(
            c.leave_one(v, "", "someone"),
            INVALID_GROUP_ID,
            "LeaveGroup v{v}"
        );
    }
    for v in 3..=LEAVE_GROUP.1 {
        assert_eq!(
            c.leave_many(v, "", &["someone", "else"]),
            (INVALID_GROUP_ID, vec![]),
            "LeaveGroup v{v}"
        );
    }

    let (lo, hi) = OFFSET_COMMIT;
    assert_eq!(c.simple_commit(lo, "", "anon-topic", 4), NONE, "v{lo}");
    assert_eq!(c.simple_commit(hi, "", "anon-topic", 5), NONE, "v{hi}");
    assert_eq!(
        c.commit(hi, "", 3, "someone", &[("anon-topic", 0, 6, -1, "")]),
        vec![("anon-topic".into(), 0, ILLEGAL_GENERATION)],
        "a generation of a group that has none"
    );
    let committed = vec![("anon-topic".to_string(), 0, 5, -1, String::new(), NONE)];
    assert_eq!(c.fetch(OFFSET_FETCH.1, "", None), committed);
    assert_eq!(
        c.fetch(OFFSET_FETCH.0, "", Some(&[("anon-topic", &[0])])),
        committed,
        "v{}",
        OFFSET_FETCH.0
    );
    drop(c);
    assert!(broker.sigterm().success());
    let broker = broker.restart();
    let mut c = Conn::new(&broker.addr);
    assert_eq!(
        c.fetch(OFFSET_FETCH.1, "", None),
        committed,
        "after a restart"
    );
}

/// JoinGroup's session timeout must lie within the broker's bounds (by default
/// Kafka's, 6000 to 1800000 ms): outside them the join gets INVALID_SESSION_TIMEOUT
/// (after the group id check, before anything else) and changes nothing; at the
/// bounds it is accepted. `--group-min-session-timeout-ms` and
/// `--group-max-session-timeout-ms` move the bounds.
#[test]
fn join_group_session_timeout_must_lie_within_the_broker_bounds() {
    /// A member of `group` whose JoinGroup asks for `session_ms`; at v4+ it
    /// first gets its member id, with the same session timeout.
    fn member(addr: &str, group: &str, version: i16, session_ms: i32) -> Member {
        let mut m = Member::unjoined(addr, group, version, &[("range", "m")]);
        m.session_ms = session_ms;
        if version >= 4 {
            m.ask_member_id();
        }
        m
    }
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    for version in [JOIN_GROUP.0, JOIN_GROUP.1] {
        let group = format!("bounds-v{version}");
        let refused = |group: &str, session_ms: i32, member_id: &str| {
            let mut m = Member::unjoined(&broker.addr, group, version, &[("range", "m")]);
            m.session_ms = session_ms;
            m.id = member_id.to_string();
            let r = m.join();
            (r.error_code, r.member_id.to_string(), r.generation_id)
        };
        for session in [MIN_SESSION_MS - 1, MAX_SESSION_MS + 1, 0, -1] {
            assert_eq!(
                refused(&group, session, ""),
                (INVALID_SESSION_TIMEOUT, String::new(), -1),
                "v{version}: {session} ms"
            );
        }
        assert_eq!(
            refused("", MIN_SESSION_MS - 1, "").0,
            INVALID_GROUP_ID,
            "v{version}: the group id is checked first"
        );

        let mut a = member(&broker.addr, &group, version, MIN_SESSION_MS);
        let j = a.join();
        assert_eq!((j.error_code, j.generation_id), (NONE, 1), "v{version}");
        let a_id = a.id.clone();
        assert_eq!(a.sync(&[(&a_id, "A")]), (NONE, "A".to_string()));
        assert_eq!(
            refused(&group, MAX_SESSION_MS + 1, &a_id),
            (INVALID_SESSION_TIMEOUT, a_id.clone(), -1),
            "v{version}: a member rejoining out of bounds"
        );
        assert_eq!(a.heartbeat(), NONE, "v{version}: no rebalance");

        let mut b = member(&broker.addr, &group, version, MAX_SESSION_MS);
        let b_join = b.send_join();
        a.heartbeat_until(REBALANCE_IN_PROGRESS);
        assert_eq!(a.join().error_code, NONE);
        let j = b.recv_join(b_join);
        assert_eq!((j.error_code, j.generation_id), (NONE, 2), "v{version}");
    }
    drop(broker);

    let broker = Broker::start(
        &tmp.path().join("data2"),
        &[
            "--group-min-session-timeout-ms",
            "100",
            "--group-max-session-timeout-ms",
            "1000",
        ],
    );
    let v = JOIN_GROUP.0;
    for (session, want) in [
        (99, INVALID_SESSION_TIMEOUT),
        (100, NONE),
        (1000, NONE),
        (1001, INVALID_SESSION_TIMEOUT),
    ] {
        let group = format!("flags-{session}");
        let r = member(&broker.addr, &group, v, session).join();
        assert_eq!(r.error_code, want, "{session} ms");
    }
}

/// A static member (group instance id, JoinGroup v5) joins without the
/// MEMBER_ID_REQUIRED round trip, and the leader sees its instance id.
#[test]
fn static_member_joins_directly_and_is_listed_with_its_instance_id() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut a = Member::unjoined(&broker.addr, "static", JOIN_GROUP.1, &[("range", "a")]);
    a.instance = Some("instance-a".into());
    let j = a.join();
    assert_eq!((j.error_code, j.generation_id), (NONE, 1));
    assert_eq!(j.leader.as_str(), a.id);
    assert_eq!(j.members.len(), 1);
    assert_eq!(j.members[0].member_id.as_str(), a.id);
    assert_eq!(
        j.members[0].group_instance_id.as_deref(),
        Some("instance-a")
    );
    let a_id = a.id.clone();
    assert_eq!(a.sync(&[(&a_id, "A")]), (NONE, "A".to_string()));
    assert_eq!(a.heartbeat(), NONE);
}

/// KIP-345 on the wire: a static member's consumer restarts (a new
/// connection, no member id, the same group instance id) and takes over its
/// membership at once, without a rebalance: the other member's heartbeats stay
/// NONE, the new member syncs to the old assignment, and the old member id is
/// fenced on Heartbeat and SyncGroup. LeaveGroup v3 removes the static member
/// by its instance id alone.
#[test]
fn a_restarted_static_member_takes_over_its_membership_without_a_rebalance() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let v = JOIN_GROUP.1;
    let mut a = Member::unjoined(&broker.addr, "restart", v, &[("range", "a")]);
    a.instance = Some("instance-a".into());
    assert_eq!(a.join().generation_id, 1);
    let a_id = a.id.clone();
    assert_eq!(a.sync(&[(&a_id, "A")]), (NONE, "A".to_string()));
    let mut b = Member::new(&broker.addr, "restart", v, &[("range", "b")]);
    let cb = b.send_join();
    a.heartbeat_until(REBALANCE_IN_PROGRESS);
    let ca = a.send_join();
    let (ja, jb) = (a.recv_join(ca), b.recv_join(cb));
    assert_eq!((ja.generation_id, jb.generation_id), (2, 2));
    assert_eq!(ja.leader.as_str(), a_id, "the static member still leads");
    let b_id = b.id.clone();
    let cb = b.send_sync(&[]);
    assert_eq!(
        a.sync(&[(&a_id, "A"), (&b_id, "B")]),
        (NONE, "A".to_string())
    );
    assert_eq!(b.recv_sync(cb), (NONE, "B".to_string()));

    // The static member's process restarts.
    let mut a2 = Member::unjoined(&broker.addr, "restart", v, &[("range", "a")]);
    a2.instance = Some("instance-a".into());
    let j = a2.join();
    assert_eq!((j.error_code, j.generation_id), (NONE, 2), "no rebalance");
    assert_ne!(a2.id, a_id, "a new member id");
    assert_eq!(j.leader.as_str(), a_id, "the leader id from before");
    assert!(j.members.is_empty());
    assert_eq!(b.heartbeat(), NONE);
    assert_eq!(a2.heartbeat(), NONE);
    assert_eq!(a2.sync(&[]), (NONE, "A".to_string()), "its old assignment");
    assert_eq!(a.heartbeat(), FENCED_INSTANCE_ID);
    assert_eq!(a.sync(&[]).0, FENCED_INSTANCE_ID);

    let req = LeaveGroupRequest::default()
        .with_group_id(group_id("restart"))
        .with_members(vec![MemberIdentity::default()
            .with_member_id(s(""))
            .with_group_instance_id(Some(s("instance-a")))]);
    let r: LeaveGroupResponse = a2.conn.call(ApiKey::LeaveGroup, LEAVE_GROUP.1, &req);
    assert_eq!(r.error_code, NONE);
    assert_eq!(r.members[0].error_code, NONE);
    assert_eq!(b.heartbeat(), REBALANCE_IN_PROGRESS, "b rejoins alone");
}

/// LeaveGroup v0-v2 take one member id; the group rebalances without it and is
/// empty (simple commits allowed again) once the last member left.
#[test]
fn leave_group_single_member_at_v0_to_v2() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.create_topic("leave-topic"), 1);
    for version in LEAVE_GROUP.0..3 {
        let group = format!("leave-v{version}");
        let (mut members, leader) = form_group(&broker.addr, &group, version, 2);
        let generation = members[0].generation;
        let mut b = members.pop().unwrap();
        let mut a = members.pop().unwrap();
        assert_eq!(leader, a.id, "the first member leads");
        assert_eq!(
            c.simple_commit(OFFSET_COMMIT.0, &group, "leave-topic", 1),
            UNKNOWN_MEMBER_ID,
            "v{version}: only members commit to a group with members"
        );

        assert_eq!(c.leave_one(version, &group, &b.id), NONE, "v{version}");
        assert_eq!(a.heartbeat(), REBALANCE_IN_PROGRESS, "the group rebalances");
        assert_eq!(b.heartbeat(), UNKNOWN_MEMBER_ID, "the leaver is gone");
        let j = a.join();
        assert_eq!(
            (j.error_code, j.generation_id),
            (NONE, generation + 1),
            "v{version}"
        );
        assert_eq!(listed(&j), vec![(a.id.clone(), "m0".to_string())]);
        let a_id = a.id.clone();
        assert_eq!(a.sync(&[(&a_id, "alone")]), (NONE, "alone".to_string()));
        assert_eq!(
            c.leave_one(version, &group, &b.id),
            UNKNOWN_MEMBER_ID,
            "v{version}: leaving twice"
        );

        assert_eq!(c.leave_one(version, &group, &a.id), NONE);
        assert_eq!(a.heartbeat(), UNKNOWN_MEMBER_ID);
        assert_eq!(
            c.simple_commit(OFFSET_COMMIT.0, &group, "leave-topic", 2),
            NONE,
            "v{version}: the empty group takes simple commits"
        );
        assert_eq!(
            c.leave_one(version, "never-seen", &a.id),
            UNKNOWN_MEMBER_ID,
            "v{version}: unknown group"
        );
    }
}

/// LeaveGroup v3 takes a member list and answers per member: known members leave,
/// unknown ones get UNKNOWN_MEMBER_ID, the request as a whole succeeds. A leaver the
/// group was waiting for completes the rebalance of the others; a member id handed
/// out with MEMBER_ID_REQUIRED can leave before it ever joined.
#[test]
fn leave_group_v3_member_list_with_per_member_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let v = LEAVE_GROUP.1;
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.create_topic("leave-topic"), 1);

    let (mut members, leader) = form_group(&broker.addr, "trio", JOIN_GROUP.1, 3);
    let generation = members[0].generation;
    assert_eq!(generation, 3);
    let ghost = format!("{CLIENT_ID}-ghost");
    let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    let (top, per_member) = c.leave_many(v, "trio", &[&ids[1], &ghost, &ids[2]]);
    assert_eq!(top, NONE);
    assert_eq!(
        per_member,
        vec![
            (ids[1].clone(), NONE),
            (ghost.clone(), UNKNOWN_MEMBER_ID),
            (ids[2].clone(), NONE)
        ]
    );
    assert_eq!(leader, ids[0]);
    let a = &mut members[0];
    assert_eq!(a.heartbeat(), REBALANCE_IN_PROGRESS);
    let j = a.join();
    assert_eq!((j.error_code, j.generation_id), (NONE, generation + 1));
    assert_eq!(listed(&j), vec![(ids[0].clone(), "m0".to_string())]);
    assert_eq!(a.sync(&[]), (NONE, String::new()));
    for m in &mut members[1..] {
        assert_eq!(m.heartbeat(), UNKNOWN_MEMBER_ID);
    }
    assert_eq!(
        c.leave_many(v, "trio", &[&ids[0]]),
        (NONE, vec![(ids[0].clone(), NONE)])
    );
    assert_eq!(
        c.simple_commit(OFFSET_COMMIT.1, "trio", "leave-topic", 3),
        NONE,
        "the group is empty"
    );
    assert_eq!(
        c.leave_many(v, "never-seen", &[&ids[0]]),
        (NONE, vec![(ids[0].clone(), UNKNOWN_MEMBER_ID)]),
        "unknown group: per-member error"
    );

    // The member the rebalance waits for leaves: the others' joins complete.
    let (mut pair, _) = form_group(&broker.addr, "pair", JOIN_GROUP.1, 2);
    let mut c3 = Member::new(&broker.addr, "pair", JOIN_GROUP.1, &[("range", "m2")]);
    let c3_join = c3.send_join();
    pair[0].heartbeat_until(REBALANCE_IN_PROGRESS);
    let a_join = pair[0].send_join();
    let b_id = pair[1].id.clone();
    assert_eq!(
        c.leave_many(v, "pair", &[&b_id]),
        (NONE, vec![(b_id, NONE)])
    );
    let ja = pair[0].recv_join(a_join);
    let jc = c3.recv_join(c3_join);
    assert_eq!((ja.error_code, jc.error_code), (NONE, NONE));
    assert_eq!((ja.generation_id, jc.generation_id), (3, 3));
    assert_eq!(
        listed(&ja),
        sorted(vec![
            (pair[0].id.clone(), "m0".into()),
            (c3.id.clone(), "m2".into())
        ])
    );

    // The leader leaves while a follower waits in SyncGroup: the follower is told to
    // rejoin and becomes the leader of the next generation.
    assert_eq!(ja.leader.as_str(), pair[0].id);
    let c3_sync = c3.send_sync(&[]);
    let a_id = pair[0].id.clone();
    assert_eq!(
        c.leave_many(v, "pair", &[&a_id]),
        (NONE, vec![(a_id, NONE)])
    );
    assert_eq!(c3.recv_sync(c3_sync).0, REBALANCE_IN_PROGRESS);
    let j = c3.join();
    assert_eq!((j.error_code, j.generation_id), (NONE, 4));
    assert_eq!(j.leader.as_str(), c3.id, "a new leader");
    assert_eq!(listed(&j), vec![(c3.id.clone(), "m2".to_string())]);

    // A member id given out with MEMBER_ID_REQUIRED leaves before joining.
    let mut pending = Member::new(&broker.addr, "pair", JOIN_GROUP.1, &[("range", "p")]);
    let pid = pending.id.clone();
    assert_eq!(
        c.leave_many(v, "pair", &[&pid]),
        (NONE, vec![(pid.clone(), NONE)])
    );
    let r = pending.join();
    assert_eq!(
        (r.error_code, r.member_id.to_string()),
        (UNKNOWN_MEMBER_ID, pid),
        "the id is no longer valid"
    );
}

/// A member that stops heartbeating is removed after its session timeout and the
/// group rebalances without it. A member's session restarts when its join
/// completes, however long it waited for the others; the last member expiring
/// leaves the group empty; an id handed out with MEMBER_ID_REQUIRED lapses.
#[test]
fn silent_members_are_removed_after_their_session_timeout() {
    const SESSION_MS: i32 = 600;
    // b's own, longer session: after its JoinGroup completes, its SyncGroup must
    // arrive within it, which a loaded machine could delay past a short one.
    const B_SESSION_MS: i32 = 2000;
    let tmp = tempfile::tempdir().unwrap();
    let min = SESSION_MS.to_string();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &["--group-min-session-timeout-ms", &min],
    );
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.create_topic("expiry-topic"), 1);
    let v = JOIN_GROUP.1;

    // Started first: these expire while the rest runs.
    let mut lapsing = Member::unjoined(&broker.addr, "lonely", v, &[("range", "p")]);
    lapsing.session_ms = SESSION_MS;
    lapsing.ask_member_id();
    // solo's sync and the check that it is a member must each come within its
    // session: the longer one, as b's.
    let mut solo = Member::new(&broker.addr, "solo", v, &[("range", "s")]);
    solo.session_ms = B_SESSION_MS;
    assert_eq!(solo.join().error_code, NONE);
    let solo_since = Instant::now();
    let solo_id = solo.id.clone();
    assert_eq!(solo.sync(&[(&solo_id, "S")]).0, NONE);
    assert_eq!(
        c.simple_commit(OFFSET_COMMIT.1, "solo", "expiry-topic", 1),
        UNKNOWN_MEMBER_ID,
        "solo is a member"
    );

    let mut a = Member::new(&broker.addr, "expiry", v, &[("range", "a")]);
    assert_eq!(a.join().error_code, NONE);
    let a_id = a.id.clone();
    assert_eq!(a.sync(&[(&a_id, "A")]).0, NONE);
    let mut b = Member::new(&broker.addr, "expiry", v, &[("range", "b")]);
    b.session_ms = B_SESSION_MS;
    let b_join = b.send_join();
    a.heartbeat_until(REBALANCE_IN_PROGRESS);
    // The leader takes longer than b's session timeout to rejoin.
    std::thread::sleep(Duration::from_millis(B_SESSION_MS as u64 + 200));
    assert_eq!(a.join().error_code, NONE);
    assert_eq!(b.recv_join(b_join).error_code, NONE);
    // b takes a while (well within its session) before its SyncGroup.
    std::thread::sleep(Duration::from_millis(B_SESSION_MS as u64 / 5));
    let b_seen = Instant::now();
    let b_sync = b.send_sync(&[]);
    let b_id = b.id.clone();
    assert_eq!(
        a.sync(&[(&a_id, "A"), (&b_id, "B")]),
        (NONE, "A".to_string()),
        "b was not expired for the time it waited in JoinGroup"
    );
    assert_eq!(b.recv_sync(b_sync), (NONE, "B".to_string()));
    let generation = a.generation;

    // b goes silent: a learns of the rebalance, b's session has passed.
    a.heartbeat_until(REBALANCE_IN_PROGRESS);
    assert!(
        b_seen.elapsed() >= Duration::from_millis(B_SESSION_MS as u64),
        "b expired after {:?}, before its session timeout",
        b_seen.elapsed()
    );
    let j = a.join();
    assert_eq!((j.error_code, j.generation_id), (NONE, generation + 1));
    assert_eq!(listed(&j), vec![(a_id.clone(), "a".to_string())]);
    assert_eq!(b.heartbeat(), UNKNOWN_MEMBER_ID);
    assert_eq!(b.sync(&[]).0, UNKNOWN_MEMBER_ID);
    let r = b.join();
    assert_eq!(
        (r.error_code, r.member_id.as_str()),
        (UNKNOWN_MEMBER_ID, b_id.as_str()),
        "an expired member id cannot rejoin"
    );

    // The last member expiring empties the group: simple commits work again.
    let deadline = Instant::now() + PATIENCE;
    while c.simple_commit(OFFSET_COMMIT.1, "solo", "expiry-topic", 2) != NONE {
        assert!(Instant::now() < deadline, "solo never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(solo_since.elapsed() >= Duration::from_millis(B_SESSION_MS as u64));
    assert_eq!(solo.heartbeat(), UNKNOWN_MEMBER_ID);

    // More than a session timeout (and a coordinator tick) after it was handed
    // out, the pending member id no longer joins.
    let r = lapsing.join();
    assert_eq!(
        (r.error_code, r.member_id.to_string()),
        (UNKNOWN_MEMBER_ID, lapsing.id.clone())
    );
}

/// A member that does not rejoin within the rebalance timeout is dropped (though
/// its session has not expired) and the rebalance completes without it.
#[test]
fn members_that_do_not_rejoin_within_the_rebalance_timeout_are_dropped() {
    const REBALANCE_MS: i32 = 500;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let v = JOIN_GROUP.1;
    let mut a = Member::new(&broker.addr, "slow", v, &[("range", "a")]);
    a.rebalance_ms = REBALANCE_MS;
    assert_eq!(a.join().error_code, NONE);
    let a_id = a.id.clone();
    assert_eq!(a.sync(&[(&a_id, "A")]).0, NONE);

    let mut b = Member::new(&broker.addr, "slow", v, &[("range", "b")]);
    let started = Instant::now();
    let j = b.join();
    assert!(
        started.elapsed() >= Duration::from_millis(REBALANCE_MS as u64),
        "completed after {:?}, before the rebalance timeout",
        started.elapsed()
    );
    assert_eq!((j.error_code, j.generation_id), (NONE, 2));
    assert_eq!(j.leader.as_str(), b.id, "the remaining member leads");
    assert_eq!(listed(&j), vec![(b.id.clone(), "b".to_string())]);
    assert_eq!(a.heartbeat(), UNKNOWN_MEMBER_ID, "a was dropped");
    assert_eq!(a.join().error_code, UNKNOWN_MEMBER_ID);
}

/// OffsetCommit/OffsetFetch: simple commits (generation -1, no member id) at the
/// lowest and highest versions; unknown partitions; member commits checked against
/// the generation (allowed while the group prepares a rebalance, refused between
/// JoinGroup and SyncGroup); everything committed survives a graceful restart,
/// and so does the membership: a member commits at its generation afterwards.
#[test]
fn offset_commits_follow_the_generation_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("data"), &["--default-partitions", "2"]);
    let (lo, hi) = OFFSET_COMMIT;
    let (flo, fhi) = OFFSET_FETCH;
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.create_topic("orders"), 2);
    c.fill("orders", 0, 13);
    c.fill("orders", 1, 21);

    let nothing = c.fetch(
        flo,
        "simple",
        Some(&[("orders", &[0, 1, 5]), ("nope", &[0])]),
    );
    assert_eq!(
        nothing,
        vec![
            ("orders".into(), 0, -1, -1, String::new(), NONE),
            ("orders".into(), 1, -1, -1, String::new(), NONE),
            ("orders".into(), 5, -1, -1, String::new(), NONE),
            ("nope".into(), 0, -1, -1, String::new(), NONE),
        ],
        "no committed offset: -1"
    );

    let r = c.commit(
        lo,
        "simple",
        -1,
        "",
        &[
            ("orders", 0, 5, -1, "m0"),
            ("orders", 1, 7, -1, ""),
            ("orders", 9, 1, -1, ""),
            ("nope", 0, 1, -1, ""),
        ],
    );
    assert_eq!(
        r,
        vec![
            ("orders".into(), 0, NONE),
            ("orders".into(), 1, NONE),
            ("orders".into(), 9, UNKNOWN_TOPIC_OR_PARTITION),
            ("nope".into(), 0, UNKNOWN_TOPIC_OR_PARTITION),
        ]
    );
    assert_eq!(
        c.commit(hi, "simple", -1, "", &[("orders", 1, 8, 4, "m1")]),
        vec![("orders".into(), 1, NONE)]
    );
    let simple = vec![
        ("orders".to_string(), 0, 5, -1, "m0".to_string(), NONE),
        ("orders".to_string(), 1, 8, 4, "m1".to_string(), NONE),
    ];
    assert_eq!(c.fetch(fhi, "simple", Some(&[("orders", &[0, 1])])), simple);
    assert_eq!(
        c.fetch(fhi, "simple", None),
        simple,
        "every committed partition"
    );
    let old_fetch: Vec<_> = simple
        .iter()
        .map(|(t, p, o, _, m, e)| (t.clone(), *p, *o, -1, m.clone(), *e))
        .collect();
    assert_eq!(
        c.fetch(flo, "simple", Some(&[("orders", &[0, 1])])),
        old_fetch,
        "no leader epoch before v5"
    );

    // Member commits.
    let g = "members";
    let mut a = Member::new(&broker.addr, g, JOIN_GROUP.1, &[("range", "a")]);
    assert_eq!(a.join().error_code, NONE);
    let a_id = a.id.clone();
    assert_eq!(a.sync(&[(&a_id, "A")]).0, NONE);
    let gen = a.generation;
    let one = |c: &mut Conn, v: i16, generation: i32, member: &str, offset: i64| {
        let r = c.commit(v, g, generation, member, &[("orders", 0, offset, -1, "")]);
        assert_eq!(r.len(), 1);
        r[0].2
    };
    assert_eq!(one(&mut a.conn, hi, gen, &a_id, 11), NONE);
    assert_eq!(one(&mut a.conn, lo, gen, &a_id, 11), NONE, "v{lo}");
    assert_eq!(one(&mut a.conn, hi, gen - 1, &a_id, 90), ILLEGAL_GENERATION);
    assert_eq!(one(&mut a.conn, hi, gen + 1, &a_id, 91), ILLEGAL_GENERATION);
    assert_eq!(one(&mut a.conn, hi, gen, "nobody", 92), UNKNOWN_MEMBER_ID);
    assert_eq!(
        one(&mut a.conn, hi, -1, "", 93),
        UNKNOWN_MEMBER_ID,
        "simple commit to a group with members"
    );
    assert_eq!(
        c.commit(hi, "never-seen", 3, "someone", &[("orders", 0, 94, -1, "")]),
        vec![("orders".into(), 0, ILLEGAL_GENERATION)],
        "a generation of a group that does not exist"
    );
    assert_eq!(
        c.fetch(fhi, "never-seen", Some(&[("orders", &[0])]))[0].2,
        -1
    );
    assert_eq!(c.fetch(fhi, g, Some(&[("orders", &[0])]))[0].2, 11);

    // While the group prepares a rebalance, a member still commits what it
    // consumed at its current generation.
    let mut b = Member::new(&broker.addr, g, JOIN_GROUP.1, &[("range", "b")]);
    let b_join = b.send_join();
    a.heartbeat_until(REBALANCE_IN_PROGRESS);
    assert_eq!(
        one(&mut a.conn, hi, gen, &a_id, 12),
        NONE,
        "commit during PreparingRebalance"
    );
    assert_eq!(a.join().error_code, NONE);
    assert_eq!(b.recv_join(b_join).error_code, NONE);
    let next = a.generation;
    assert_eq!(next, gen + 1);
    // Between JoinGroup and SyncGroup the new generation is not yet in force.
    assert_eq!(
        one(&mut a.conn, hi, next, &a_id, 95),
        REBALANCE_IN_PROGRESS,
        "commit during CompletingRebalance"
    );
    assert_eq!(one(&mut a.conn, hi, gen, &a_id, 96), ILLEGAL_GENERATION);
    let b_id = b.id.clone();
    let b_sync = b.send_sync(&[]);
    assert_eq!(a.sync(&[(&a_id, "0"), (&b_id, "1")]).0, NONE);
    assert_eq!(b.recv_sync(b_sync).0, NONE);
    assert_eq!(one(&mut a.conn, hi, next, &a_id, 13), NONE);
    assert_eq!(
        b.conn
            .commit(lo, g, next, &b_id, &[("orders", 1, 21, -1, "b-meta")]),
        vec![("orders".into(), 1, NONE)]
    );
    let members = vec![
        ("orders".to_string(), 0, 13, -1, String::new(), NONE),
        ("orders".to_string(), 1, 21, -1, "b-meta".to_string(), NONE),
    ];
    assert_eq!(c.fetch(fhi, g, None), members);

    drop((a, b, c));
    assert!(broker.sigterm().success());
    let broker = broker.restart();
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.fetch(fhi, "simple", None), simple, "after a restart");
    assert_eq!(
        c.fetch(flo, "simple", Some(&[("orders", &[0, 1])])),
        old_fetch
    );
    assert_eq!(c.fetch(fhi, g, None), members, "after a restart");
    // The membership survived the restart with the committed offsets.
    assert_eq!(
        c.commit(hi, g, next, &a_id, &[("orders", 0, 14, -1, "")]),
        vec![("orders".into(), 0, NONE)],
        "the generation from before the restart"
    );
    assert_eq!(
        c.commit(lo, g, next, &b_id, &[("orders", 1, 22, -1, "")]),
        vec![("orders".into(), 1, NONE)]
    );
    assert_eq!(
        c.commit(hi, g, gen, &a_id, &[("orders", 0, 97, -1, "")]),
        vec![("orders".into(), 0, ILLEGAL_GENERATION)],
        "an older generation"
    );
    assert_eq!(
        c.simple_commit(hi, g, "orders", 98),
        UNKNOWN_MEMBER_ID,
        "a simple commit to a group with members"
    );
    assert_eq!(c.fetch(flo, g, Some(&[("orders", &[0])]))[0].2, 14);
    assert_eq!(c.fetch(flo, g, Some(&[("orders", &[1])]))[0].2, 22);
}

/// Group requests the broker does not serve (unadvertised versions, truncated or
/// absurd bodies) close only their own connection: a member on another connection
/// is undisturbed. Requests it can answer with an error keep the connection.
#[test]
fn bad_group_requests_close_only_their_own_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut a = Member::new(&broker.addr, "survivor", JOIN_GROUP.1, &[("range", "a")]);
    assert_eq!(a.join().error_code, NONE);
    let a_id = a.id.clone();
    assert_eq!(a.sync(&[(&a_id, "A")]).0, NONE);

    let join_v5 = request_frame(ApiKey::JoinGroup, JOIN_GROUP.1, 1, &a.join_request());
    let mut bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "JoinGroup above the advertised versions",
            request_frame(ApiKey::JoinGroup, JOIN_GROUP.1 + 1, 1, &a.join_request()),
        ),
        (
            "Heartbeat above the advertised versions",
            request_frame(
                ApiKey::Heartbeat,
                HEARTBEAT.1 + 1,
                1,
                &HeartbeatRequest::default().with_group_id(group_id("survivor")),
            ),
        ),
        (
            "FindCoordinator above the advertised versions",
            request_frame(
                ApiKey::FindCoordinator,
                FIND_COORDINATOR.1 + 1,
                1,
                &FindCoordinatorRequest::default(),
            ),
        ),
    ];
    // OffsetCommit v1 (below the advertised range): a bare header.
    let mut v1 = vec![0, 0, 0, 10, 0, ApiKey::OffsetCommit as u8, 0, 1, 0, 0, 0, 1];
    v1.extend_from_slice(&[0xff, 0xff]);
    bad.push(("OffsetCommit below the advertised versions", v1));
    // A JoinGroup whose body ends early.
    let mut short = join_v5[..join_v5.len() - 6].to_vec();
    let len = (short.len() - 4) as i32;
    short[..4].copy_from_slice(&len.to_be_bytes());
    bad.push(("truncated JoinGroup", short));
    // A SyncGroup v3 claiming 2^31 - 1 assignments in a few bytes.
    let mut huge = request_frame(
        ApiKey::SyncGroup,
        SYNC_GROUP.1,
        1,
        &SyncGroupRequest::default()
            .with_group_id(group_id("survivor"))
            .with_member_id(s(&a_id)),
    );
    let n = huge.len();
    assert_eq!(&huge[n - 4..], &[0, 0, 0, 0], "empty assignment array last");
    huge[n - 4..].copy_from_slice(&i32::MAX.to_be_bytes());
    bad.push(("SyncGroup with an absurd array length", huge));

    for (what, frame) in bad {
        let mut c = connect(&broker.addr);
        c.write_all(&frame).unwrap();
        assert!(closed(&mut c), "{what}: that connection is closed");
        assert_eq!(a.heartbeat(), NONE, "{what}: the member is undisturbed");
    }

    // Errors the broker answers keep the connection.
    let mut c = Conn::new(&broker.addr);
    let r: FindCoordinatorResponse = c.call(
        ApiKey::FindCoordinator,
        FIND_COORDINATOR.1,
        &FindCoordinatorRequest::default()
            .with_key(s("t"))
            .with_key_type(1),
    );
    assert_eq!(r.error_code, INVALID_REQUEST);
    let mut req = a.join_request();
    req.group_id = group_id("");
    req.member_id = s("");
    let r: JoinGroupResponse = c.call(ApiKey::JoinGroup, JOIN_GROUP.1, &req);
    assert_eq!(r.error_code, INVALID_GROUP_ID);
    assert_eq!(
        c.heartbeat(HEARTBEAT.1, "survivor", a.generation, &a_id),
        NONE
    );
    assert_eq!(a.sync(&[]), (NONE, "A".to_string()));
}

/// The member ids of `members`' described members with `(client id, client host,
/// metadata, assignment)`, sorted.
fn described_members(members: &[DescribedMember]) -> Vec<DescribedMember> {
    let mut v = members.to_vec();
    v.sort();
    v
}

/// Joins `group` alone at the highest JoinGroup version, syncs, commits `offset` for
/// orders/0 at its generation and leaves: an empty consumer group with offsets.
fn commit_and_leave(addr: &str, group: &str, offset: i64) {
    let mut m = Member::new(addr, group, JOIN_GROUP.1, &[("range", "x")]);
    assert_eq!(m.join().error_code, NONE);
    let id = m.id.clone();
    assert_eq!(m.sync(&[(&id, "A")]).0, NONE);
    let generation = m.generation;
    assert_eq!(
        m.conn.commit(
            OFFSET_COMMIT.1,
            group,
            generation,
            &id,
            &[("orders", 0, offset, -1, "")]
        ),
        vec![("orders".into(), 0, NONE)]
    );
    assert_eq!(
        m.conn.leave_many(LEAVE_GROUP.1, group, &[&id]),
        (NONE, vec![(id, NONE)])
    );
}

/// ListGroups and DescribeGroups through a group's life, as Kafka's classic
/// coordinator reports it: an unknown group is described as Dead with no error; a
/// member id handed out with MEMBER_ID_REQUIRED makes an Empty group without a
/// protocol type; the first join completes at once (CompletingRebalance: members
/// without metadata or assignment, no protocol); SyncGroup makes it Stable
/// (protocol, each member's metadata, assignment, client id and host); a newcomer
/// starts PreparingRebalance; once every member left it is Empty and keeps its
/// protocol type. Every advertised version, the states filter (v4) and the types
/// filter (v5), the authorized operations (v3) and instance ids (v4).
#[test]
fn list_and_describe_follow_a_group_through_its_life() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut c = Conn::new(&broker.addr);
    let g = "life";
    let (client, host) = (CLIENT_ID.to_string(), "/127.0.0.1".to_string());
    let dv = DESCRIBE_GROUPS.1;

    for v in LIST_GROUPS.0..=LIST_GROUPS.1 {
        assert_eq!(c.list(v, &[], &[]), vec![], "v{v}: no group yet");
    }
    for v in DESCRIBE_GROUPS.0..=DESCRIBE_GROUPS.1 {
        let d = c.describe(v, &[g]).remove(0);
        assert_eq!(
            (
                d.error_code,
                d.group_state.as_str(),
                d.protocol_type.as_str(),
                d.protocol_data.as_str(),
                d.members.len()
            ),
            (NONE, "Dead", "", "", 0),
            "v{v}: an unknown group"
        );
        let ops = if v >= 3 {
            GROUP_OPERATIONS
        } else {
            NO_OPERATIONS
        };
        assert_eq!(d.authorized_operations, ops, "v{v}");
    }

    let mut a = Member::new(&broker.addr, g, JOIN_GROUP.1, &[("range", "a-meta")]);
    assert_eq!(
        c.listed_as(g),
        Some((String::new(), "Empty".into())),
        "only a member id handed out: no protocol type yet"
    );
    assert_eq!(a.join().error_code, NONE);
    let a_id = a.id.clone();
    assert_eq!(
        c.describe_one(dv, g),
        (
            NONE,
            "CompletingRebalance".into(),
            "consumer".into(),
            String::new(),
            vec![(
                a_id.clone(),
                client.clone(),
                host.clone(),
                String::new(),
                String::new()
            )]
        ),
        "before SyncGroup: no protocol, metadata or assignment"
    );
    assert_eq!(
        c.listed_as(g),
        Some(("consumer".into(), "CompletingRebalance".into()))
    );
    assert_eq!(a.sync(&[(&a_id, "A")]).0, NONE);
    assert_eq!(
        c.describe_one(dv, g),
        (
            NONE,
            "Stable".into(),
            "consumer".into(),
            "range".into(),
            vec![(
                a_id.clone(),
                client.clone(),
                host.clone(),
                "a-meta".into(),
                "A".into()
            )]
        )
    );

    // A newcomer: PreparingRebalance, both members listed, until both joined.
    let mut b = Member::new(&broker.addr, g, JOIN_GROUP.1, &[("range", "b-meta")]);
    let b_join = b.send_join();
    a.heartbeat_until(REBALANCE_IN_PROGRESS);
    let (err, state, protocol_type, protocol, members) = c.describe_one(dv, g);
    assert_eq!(
        (
            err,
            state.as_str(),
            protocol_type.as_str(),
            protocol.as_str()
        ),
        (NONE, "PreparingRebalance", "consumer", "")
    );
    assert_eq!(
        described_members(&members),
        described_members(&[
            (
                a_id.clone(),
                client.clone(),
                host.clone(),
                String::new(),
                String::new()
            ),
            (
                b.id.clone(),
                client.clone(),
                host.clone(),
                String::new(),
                String::new()
            ),
        ])
    );
    assert_eq!(
        c.list(4, &["preparingrebalance"], &[]).len(),
        1,
        "states are matched case-insensitively"
    );
    assert_eq!(c.list(4, &["Stable", "Empty"], &[]), vec![]);

    let ja = a.join();
    assert_eq!(ja.error_code, NONE);
    assert_eq!(b.recv_join(b_join).error_code, NONE);
    let leader = ja.leader.to_string();
    let mut members = vec![a, b];
    sync_all(&mut members, &leader);
    let stable = described_members(
        &members
            .iter()
            .zip(["a-meta", "b-meta"])
            .map(|(m, meta)| {
                (
                    m.id.clone(),
                    client.clone(),
                    host.clone(),
                    meta.to_string(),
                    format!("a-{}", m.id),
                )
            })
            .collect::<Vec<_>>(),
    );
    for v in DESCRIBE_GROUPS.0..=DESCRIBE_GROUPS.1 {
        let (err, state, protocol_type, protocol, described) = c.describe_one(v, g);
        assert_eq!(
            (
                err,
                state.as_str(),
                protocol_type.as_str(),
                protocol.as_str()
            ),
            (NONE, "Stable", "consumer", "range"),
            "v{v}"
        );
        assert_eq!(described_members(&described), stable, "v{v}");
    }
    for v in LIST_GROUPS.0..=LIST_GROUPS.1 {
        let state = if v >= 4 { "Stable" } else { "" };
        let kind = if v >= 5 { "classic" } else { "" };
        assert_eq!(
            c.list(v, &[], &[]),
            vec![(g.into(), "consumer".into(), state.into(), kind.into())],
            "v{v}"
        );
    }
    for (states, types, listed) in [
        (&[][..], &["classic"][..], 1),
        (&[], &["CLASSIC"], 1),
        (&[], &["consumer"], 0),
        (&[], &["consumer", "Classic"], 1),
        (&["stable"], &["classic"], 1),
        (&["empty"], &["classic"], 0),
    ] {
        assert_eq!(
            c.list(5, states, types).len(),
            listed,
            "states {states:?}, types {types:?}"
        );
    }

    // Every member leaves: Empty, with its protocol type.
    let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    let (top, per) = members[0]
        .conn
        .leave_many(LEAVE_GROUP.1, g, &[&ids[0], &ids[1]]);
    assert_eq!(top, NONE);
    assert!(per.iter().all(|(_, e)| *e == NONE), "{per:?}");
    assert_eq!(
        c.describe_one(dv, g),
        (
            NONE,
            "Empty".into(),
            "consumer".into(),
            String::new(),
            vec![]
        )
    );
    assert_eq!(c.list(4, &["EMPTY"], &[]).len(), 1);
    assert_eq!(c.listed_as(g), Some(("consumer".into(), "Empty".into())));

    // A static member's instance id, from DescribeGroups v4.
    let mut st = Member::unjoined(&broker.addr, "static", JOIN_GROUP.1, &[("range", "s")]);
    st.instance = Some("instance-s".into());
    assert_eq!(st.join().error_code, NONE);
    let st_id = st.id.clone();
    assert_eq!(st.sync(&[(&st_id, "S")]).0, NONE);
    for v in DESCRIBE_GROUPS.0..=DESCRIBE_GROUPS.1 {
        let d = c.describe(v, &["static", g]);
        assert_eq!(d[0].members.len(), 1);
        let want = (v >= 4).then_some("instance-s");
        assert_eq!(d[0].members[0].group_instance_id.as_deref(), want, "v{v}");
        assert_eq!(
            d[1].group_state.as_str(),
            "Empty",
            "v{v}: two groups at once"
        );
    }
    assert_eq!(
        c.list(3, &[], &[]),
        vec![
            (g.into(), "consumer".into(), String::new(), String::new()),
            (
                "static".into(),
                "consumer".into(),
                String::new(),
                String::new()
            ),
        ]
    );
}

/// DeleteGroups as Kafka's `handleDeleteGroups`, at every advertised version: a
/// group with members gets NON_EMPTY_GROUP and keeps serving them; an unknown
/// group GROUP_ID_NOT_FOUND; an empty group (its members left, or it is known only
/// by simple commits, or only a member id was handed out) is deleted with its
/// committed offsets, after which it is neither listed nor described, a second
/// deletion finds nothing and its name starts a new group. The empty group id is a
/// group like any other (Kafka accepts it in DescribeGroups and DeleteGroups). A
/// group named twice in one request is answered once.
#[test]
fn delete_groups_removes_empty_groups_and_refuses_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.create_topic("orders"), 1);

    let (mut busy, _) = form_group(&broker.addr, "busy", JOIN_GROUP.1, 2);
    for v in DELETE_GROUPS.0..=DELETE_GROUPS.1 {
        assert_eq!(
            c.delete(v, &["busy", "nobody"]),
            vec![
                ("busy".into(), NON_EMPTY_GROUP),
                ("nobody".into(), GROUP_ID_NOT_FOUND)
            ],
            "v{v}"
        );
    }
    for m in &mut busy {
        assert_eq!(
            m.heartbeat(),
            NONE,
            "a refused deletion leaves the group alone"
        );
    }
    assert_eq!(
        c.listed_as("busy"),
        Some(("consumer".into(), "Stable".into()))
    );

    commit_and_leave(&broker.addr, "finished", 42);
    assert_eq!(
        c.listed_as("finished"),
        Some(("consumer".into(), "Empty".into()))
    );
    assert_eq!(
        c.simple_commit(OFFSET_COMMIT.1, "simple", "orders", 7),
        NONE
    );
    assert_eq!(
        c.listed_as("simple"),
        Some((String::new(), "Empty".into())),
        "a simple group has no protocol type"
    );
    assert_eq!(
        c.describe_one(DESCRIBE_GROUPS.1, "simple"),
        (NONE, "Empty".into(), String::new(), String::new(), vec![])
    );
    let mut pending = Member::new(&broker.addr, "pending", JOIN_GROUP.1, &[("range", "p")]);

    assert_eq!(
        c.delete(
            DELETE_GROUPS.1,
            &["finished", "simple", "finished", "pending"]
        ),
        vec![
            ("finished".into(), NONE),
            ("simple".into(), NONE),
            ("pending".into(), NONE)
        ]
    );
    for g in ["finished", "simple", "pending"] {
        assert_eq!(c.listed_as(g), None, "{g} is no longer listed");
        assert_eq!(
            c.describe_one(DESCRIBE_GROUPS.0, g),
            (NONE, "Dead".into(), String::new(), String::new(), vec![]),
            "{g}"
        );
        assert_eq!(
            c.fetch(OFFSET_FETCH.1, g, Some(&[("orders", &[0])]))[0].2,
            -1,
            "{g}'s offsets are gone"
        );
        assert_eq!(
            c.delete(DELETE_GROUPS.0, &[g]),
            vec![(g.into(), GROUP_ID_NOT_FOUND)],
            "{g} deleted twice"
        );
    }
    assert_eq!(
        pending.join().error_code,
        UNKNOWN_MEMBER_ID,
        "a member id handed out by a deleted group"
    );
    let mut again = Member::new(&broker.addr, "finished", JOIN_GROUP.1, &[("range", "y")]);
    let j = again.join();
    assert_eq!((j.error_code, j.generation_id), (NONE, 1), "a new group");

    // The empty group id.
    assert_eq!(
        c.describe_one(DESCRIBE_GROUPS.1, ""),
        (NONE, "Dead".into(), String::new(), String::new(), vec![])
    );
    assert_eq!(
        c.delete(DELETE_GROUPS.1, &[""]),
        vec![(String::new(), GROUP_ID_NOT_FOUND)]
    );
    assert_eq!(c.simple_commit(OFFSET_COMMIT.1, "", "orders", 3), NONE);
    assert_eq!(c.listed_as(""), Some((String::new(), "Empty".into())));
    assert_eq!(
        c.delete(DELETE_GROUPS.0, &[""]),
        vec![(String::new(), NONE)]
    );
    assert_eq!(c.listed_as(""), None);
    assert_eq!(
        c.fetch(OFFSET_FETCH.1, "", Some(&[("orders", &[0])]))[0].2,
        -1
    );

    // Once its members left, the busy group can go too.
    let ids: Vec<String> = busy.iter().map(|m| m.id.clone()).collect();
    assert_eq!(
        busy[0]
            .conn
            .leave_many(LEAVE_GROUP.1, "busy", &[&ids[0], &ids[1]])
            .0,
        NONE
    );
    assert_eq!(
        c.delete(DELETE_GROUPS.1, &["busy"]),
        vec![("busy".into(), NONE)]
    );
    assert_eq!(c.listed_as("busy"), None);
}

/// The file holding `group`'s committed offsets (`groups/<hex(group)>.json`).
fn offsets_file(data: &std::path::Path, group: &str) -> std::path::PathBuf {
    let hex: String = group.bytes().map(|b| format!("{b:02x}")).collect();
    data.join("groups").join(format!("{hex}.json"))
}

/// The file holding `group`'s membership (`groups/members/<hex(group)>.json`).
fn membership_file(data: &std::path::Path, group: &str) -> std::path::PathBuf {
    let hex: String = group.bytes().map(|b| format!("{b:02x}")).collect();
    data.join("groups")
        .join("members")
        .join(format!("{hex}.json"))
}

/// Deletion is durable: after a graceful restart a deleted group's offsets and
/// membership do not come back (its files are gone). Groups whose members left
/// are listed as Empty after a restart (their stored membership), with protocol
/// type "consumer", and simple groups, known only by their committed offsets,
/// with none, as Kafka lists the groups it loads from its offsets topic; they can
/// be deleted after the restart as well.
#[test]
fn deleted_groups_stay_deleted_and_offset_only_groups_are_listed_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.create_topic("orders"), 1);
    c.fill("orders", 0, 43);
    commit_and_leave(&broker.addr, "kept", 42);
    commit_and_leave(&broker.addr, "doomed", 43);
    assert_eq!(
        c.simple_commit(OFFSET_COMMIT.1, "simple", "orders", 7),
        NONE
    );
    assert_eq!(
        c.simple_commit(OFFSET_COMMIT.1, "simple-doomed", "orders", 8),
        NONE
    );
    assert!(offsets_file(&data, "doomed").exists());
    assert!(membership_file(&data, "doomed").exists());
    assert_eq!(
        c.delete(DELETE_GROUPS.1, &["doomed", "simple-doomed"]),
        vec![("doomed".into(), NONE), ("simple-doomed".into(), NONE)]
    );
    assert!(!offsets_file(&data, "doomed").exists());
    assert!(!membership_file(&data, "doomed").exists());
    assert!(!offsets_file(&data, "simple-doomed").exists());

    drop(c);
    assert!(broker.sigterm().success());
    let mut broker = broker.restart();
    let mut c = Conn::new(&broker.addr);
    let offsets_only = vec![
        (
            "kept".to_string(),
            "consumer".to_string(),
            "Empty".to_string(),
            "classic".to_string(),
        ),
        (
            "simple".to_string(),
            String::new(),
            "Empty".to_string(),
            "classic".to_string(),
        ),
    ];
    assert_eq!(c.list(LIST_GROUPS.1, &[], &[]), offsets_only);
    assert_eq!(
        c.describe_one(DESCRIBE_GROUPS.1, "kept"),
        (
            NONE,
            "Empty".into(),
            "consumer".into(),
            String::new(),
            vec![]
        )
    );
    assert_eq!(c.fetch(OFFSET_FETCH.1, "kept", None)[0].2, 42);
    assert_eq!(c.fetch(OFFSET_FETCH.1, "simple", None)[0].2, 7);
    for g in ["doomed", "simple-doomed"] {
        assert_eq!(c.describe_one(DESCRIBE_GROUPS.1, g).1, "Dead", "{g}");
        assert_eq!(
            c.fetch(OFFSET_FETCH.1, g, None),
            vec![],
            "{g}: nothing committed"
        );
        assert_eq!(
            c.delete(DELETE_GROUPS.1, &[g]),
            vec![(g.into(), GROUP_ID_NOT_FOUND)]
        );
    }

    // A simple commit to the emptied consumer group keeps its protocol type.
    assert_eq!(c.simple_commit(OFFSET_COMMIT.1, "kept", "orders", 44), NONE);
    assert_eq!(
        c.listed_as("kept"),
        Some(("consumer".into(), "Empty".into()))
    );
    assert_eq!(
        c.delete(DELETE_GROUPS.0, &["kept"]),
        vec![("kept".into(), NONE)]
    );
    drop(c);
    assert!(broker.sigterm().success());
    let broker = broker.restart();
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.list(LIST_GROUPS.1, &[], &[]), offsets_only[1..].to_vec());
    assert_eq!(c.fetch(OFFSET_FETCH.1, "kept", None), vec![]);
}

/// OffsetDelete of `group`: the group-level error and each (topic, partition,
/// error).
fn offset_delete(
    c: &mut Conn,
    group: &str,
    topics: &[(&str, &[i32])],
) -> (i16, Vec<(String, i32, i16)>) {
    use kafka_protocol::messages::{
        offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic},
        OffsetDeleteRequest, OffsetDeleteResponse,
    };
    let req = OffsetDeleteRequest::default()
        .with_group_id(group_id(group))
        .with_topics(
            topics
                .iter()
                .map(|(t, parts)| {
                    OffsetDeleteRequestTopic::default()
                        .with_name(TopicName(s(t)))
                        .with_partitions(
                            parts
                                .iter()
                                .map(|p| {
                                    OffsetDeleteRequestPartition::default().with_partition_index(*p)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    let r: OffsetDeleteResponse = c.call(ApiKey::OffsetDelete, 0, &req);
    let parts = r
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index, p.error_code))
        })
        .collect();
    (r.error_code, parts)
}

/// A consumer-protocol subscription to `topics`, as a member's JoinGroup metadata.
fn subscription(topics: &[&str]) -> Bytes {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    let sub =
        ConsumerProtocolSubscription::default().with_topics(topics.iter().map(|t| s(t)).collect());
    let mut buf = bytes::BytesMut::new();
    buf.extend_from_slice(&1i16.to_be_bytes());
    sub.encode(&mut buf, 1).unwrap();
    buf.freeze()
}

#[test]
fn offset_delete_removes_positions_but_not_those_of_subscribed_topics() {
    const GROUP_ID_NOT_FOUND: i16 = 69;
    const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.create_topic("orders"), 1);
    assert_eq!(c.create_topic("audit"), 1);
    c.fill("orders", 0, 7);
    c.fill("audit", 0, 8);

    // A simple group: any position may go; unknown partitions are reported.
    assert_eq!(c.simple_commit(OFFSET_COMMIT.1, "solo", "orders", 5), NONE);
    assert_eq!(c.simple_commit(OFFSET_COMMIT.1, "solo", "audit", 6), NONE);
    let (code, parts) = offset_delete(&mut c, "solo", &[("orders", &[0, 9]), ("missing", &[0])]);
    assert_eq!(code, NONE);
    assert_eq!(
        parts,
        vec![
            ("orders".into(), 0, NONE),
            ("orders".into(), 9, UNKNOWN_TOPIC_OR_PARTITION),
            ("missing".into(), 0, UNKNOWN_TOPIC_OR_PARTITION),
        ]
    );
    let left: Vec<(String, i64)> = c
        .fetch(OFFSET_FETCH.1, "solo", None)
        .into_iter()
        .map(|f| (f.0, f.2))
        .collect();
    assert_eq!(left, vec![("audit".into(), 6)]);
    assert_eq!(
        offset_delete(&mut c, "ghost", &[("orders", &[0])]).0,
        GROUP_ID_NOT_FOUND
    );

    // A stable consumer group subscribed to orders: only audit's position goes.
    let mut m = Member::new(&broker.addr, "live", JOIN_GROUP.1, &[("range", "x")]);
    m.protocols = vec![("range".into(), subscription(&["orders"]))];
    assert_eq!(m.join().error_code, NONE);
    let id = m.id.clone();
    assert_eq!(m.sync(&[(&id, "A")]).0, NONE);
    let generation = m.generation;
    let committed = m.conn.commit(
        OFFSET_COMMIT.1,
        "live",
        generation,
        &id,
        &[("orders", 0, 7, -1, ""), ("audit", 0, 8, -1, "")],
    );
    assert!(committed.iter().all(|c| c.2 == NONE), "{committed:?}");
    let (code, parts) = offset_delete(&mut c, "live", &[("orders", &[0]), ("audit", &[0])]);
    assert_eq!(code, NONE);
    assert_eq!(
        parts,
        vec![
            ("orders".into(), 0, GROUP_SUBSCRIBED_TO_TOPIC),
            ("audit".into(), 0, NONE),
        ]
    );
    // A member whose subscription does not parse: every topic counts as subscribed.
    let mut odd = Member::new(
        &broker.addr,
        "odd",
        JOIN_GROUP.1,
        &[("range", "not a subscription")],
    );
    assert_eq!(odd.join().error_code, NONE);
    let odd_id = odd.id.clone();
    assert_eq!(odd.sync(&[(&odd_id, "A")]).0, NONE);
    let (_, parts) = offset_delete(&mut c, "odd", &[("audit", &[0])]);
    assert_eq!(parts, vec![("audit".into(), 0, GROUP_SUBSCRIBED_TO_TOPIC)]);

    // Durable: after a restart the deleted positions stay deleted.
    drop((m, odd, c));
    assert!(broker.sigterm().success());
    broker = broker.restart();
    let mut c = Conn::new(&broker.addr);
    let live: Vec<(String, i64)> = c
        .fetch(OFFSET_FETCH.1, "live", None)
        .into_iter()
        .map(|f| (f.0, f.2))
        .collect();
    assert_eq!(live, vec![("orders".into(), 7)]);
    let solo: Vec<String> = c
        .fetch(OFFSET_FETCH.1, "solo", None)
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(solo, vec!["audit".to_string()]);
}

/// A request frame of `key` at a flexible `version` (header v2, no client id)
/// whose body is `body`.
fn flexible_frame(key: ApiKey, version: i16, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 16);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&(key as i16).to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&7i32.to_be_bytes());
    f.extend_from_slice(&(-1i16).to_be_bytes()); // no client id
    f.push(0); // no tagged fields
    f.extend_from_slice(body);
    let len = (f.len() - 4) as i32;
    f[..4].copy_from_slice(&len.to_be_bytes());
    f
}

/// A compact array of `n` empty compact strings: one byte each.
fn empty_strings(n: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(n as usize + 5);
    let mut len = n + 1;
    while len >= 0x80 {
        v.push((len as u8) | 0x80);
        len >>= 7;
    }
    v.push(len as u8);
    v.resize(v.len() + n as usize, 1);
    v
}

/// DescribeGroups gives each group of its list an answer some 200 times the size
/// of an empty id on the wire, and decoding takes 32 bytes per id: a frame of a
/// few million ids once took the broker a gigabyte or more (a gigabyte per 5 MB
/// of request, 20 GB for a 100 MB frame). Lists longer than any client sends are
/// refused undecoded, closing only that connection; a group named twice is
/// described once; a ListGroups state filter is matched in one pass.
#[test]
fn group_lists_too_long_to_answer_are_refused_and_repeats_answered_once() {
    const IDS: u32 = 4_000_000;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &["--max-request-bytes", "8m"]);
    let mut a = Member::new(&broker.addr, "real", JOIN_GROUP.1, &[("range", "a")]);
    assert_eq!(a.join().error_code, NONE);
    let a_id = a.id.clone();
    assert_eq!(a.sync(&[(&a_id, "A")]).0, NONE);
    let before = broker_support::peak_rss(broker.pid());

    let mut describe = empty_strings(IDS);
    describe.extend_from_slice(&[0, 0]); // no authorized operations, no tagged fields
    let mut list = empty_strings(IDS);
    list.extend_from_slice(&[1, 0]); // no types filter, no tagged fields
    for (what, frame) in [
        (
            "DescribeGroups",
            flexible_frame(ApiKey::DescribeGroups, DESCRIBE_GROUPS.1, &describe),
        ),
        (
            "ListGroups",
            flexible_frame(ApiKey::ListGroups, LIST_GROUPS.1, &list),
        ),
    ] {
        let mut c = connect(&broker.addr);
        c.write_all(&frame).unwrap();
        // Meanwhile another client is served at once.
        let mut other = Conn::new(&broker.addr);
        let asked = Instant::now();
        let v: ApiVersionsResponse = other.call(
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("streamline-tests"))
                .with_client_software_version(StrBytes::from_static_str("1.0")),
        );
        assert_eq!(v.error_code, NONE);
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{what}: ApiVersions took {:?}",
            asked.elapsed()
        );
        let refused = closed(&mut c);
        let grown = broker_support::peak_rss(broker.pid()).saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "{what} of {IDS} empty ids ({} bytes): the broker's peak memory grew by {} MiB",
            frame.len(),
            grown >> 20
        );
        assert!(refused, "{what} of {IDS} ids: that connection is closed");
    }
    assert!(
        broker.log_text().contains("at most 100000 are accepted"),
        "the refusal says why"
    );

    // Repeats within the limit: each group described once, in first-named order.
    let mut c = Conn::new(&broker.addr);
    let mut ids = vec!["real"; 1000];
    ids.extend(["", "real", "", "ghost"]);
    let req =
        DescribeGroupsRequest::default().with_groups(ids.iter().map(|g| group_id(g)).collect());
    let r: DescribeGroupsResponse = c.call(ApiKey::DescribeGroups, DESCRIBE_GROUPS.1, &req);
    let described: Vec<(String, String, usize)> = r
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.to_string(),
                g.group_state.to_string(),
                g.members.len(),
            )
        })
        .collect();
    assert_eq!(
        described,
        vec![
            ("real".into(), "Stable".into(), 1),
            (String::new(), "Dead".into(), 0),
            ("ghost".into(), "Dead".into(), 0),
        ]
    );
    // A long states filter, names in any case, repeated, or no state's at all.
    let mut states = vec!["nonsense"; 50_000];
    states.extend(["sTaBlE", "stable", "Empty"]);
    let listed: Vec<String> = c
        .list(LIST_GROUPS.1, &states, &[])
        .into_iter()
        .map(|(g, _, state, _)| format!("{g} {state}"))
        .collect();
    assert_eq!(listed, vec!["real Stable".to_string()]);
    assert!(c.list(LIST_GROUPS.1, &["nonsense"], &[]).is_empty());
    assert_eq!(a.heartbeat(), NONE, "the member is undisturbed");
}

/// A JoinGroup refused for its protocols, or for a member id the broker never
/// gave, once left its group behind for good (listed as Empty), and so did a
/// group whose members left without committing: nothing ever forgot a group
/// without committed offsets. Refused joins now leave nothing, and empty groups
/// without offsets are forgotten at the next offsets cleanup, as Kafka does.
#[test]
fn refused_joins_leave_no_group_and_empty_groups_without_offsets_are_forgotten() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &["--offsets-retention-check-interval-ms", "200"],
    );
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.create_topic("orders"), 1);
    for i in 0..100 {
        let mut m = Member::unjoined(&broker.addr, &format!("phantom-{i}"), JOIN_GROUP.1, &[]);
        let r: JoinGroupResponse = m
            .conn
            .call(ApiKey::JoinGroup, JOIN_GROUP.1, &m.join_request());
        assert_eq!(r.error_code, INCONSISTENT_GROUP_PROTOCOL);
        m.group = format!("ghost-{i}");
        m.id = "never-given".into();
        m.protocols = vec![("range".into(), Bytes::from_static(b"x"))];
        let r: JoinGroupResponse = m
            .conn
            .call(ApiKey::JoinGroup, JOIN_GROUP.1, &m.join_request());
        assert_eq!(r.error_code, UNKNOWN_MEMBER_ID);
    }
    let listed = c.list(LIST_GROUPS.1, &[], &[]);
    assert!(
        listed.is_empty(),
        "{} groups left by refused joins, such as {:?}",
        listed.len(),
        listed.first()
    );

    // Members that leave without committing, and members that commit first.
    let mut m = Member::new(&broker.addr, "left", JOIN_GROUP.1, &[("range", "x")]);
    assert_eq!(m.join().error_code, NONE);
    let id = m.id.clone();
    assert_eq!(
        m.conn.leave_many(LEAVE_GROUP.1, "left", &[&id]),
        (NONE, vec![(id, NONE)])
    );
    commit_and_leave(&broker.addr, "kept", 3);
    let deadline = Instant::now() + PATIENCE;
    while c.listed_as("left").is_some() {
        assert!(
            Instant::now() < deadline,
            "an empty group without offsets is still listed after {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        c.listed_as("kept"),
        Some(("consumer".into(), "Empty".into())),
        "a group with committed offsets stays"
    );
    // A forgotten group is a new group to its next member.
    let mut again = Member::new(&broker.addr, "left", JOIN_GROUP.1, &[("range", "x")]);
    let j = again.join();
    assert_eq!((j.error_code, j.generation_id), (NONE, 1));
}

/// Kafka's `offset.metadata.max.bytes`: a commit whose metadata is longer than
/// the limit (in UTF-16 units, as Java counts) is refused for its partition
/// alone with OFFSET_METADATA_TOO_LARGE; the other partitions of the request
/// are stored, and the refused one keeps its previous offset.
#[test]
fn offset_commit_refuses_metadata_over_the_limit_for_its_partition_only() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--offset-metadata-max-bytes",
            "8",
            "--default-partitions",
            "3",
        ],
    );
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.create_topic("meta"), 3);
    let v = OFFSET_COMMIT.1;
    assert_eq!(
        c.commit(v, "g", -1, "", &[("meta", 0, 1, -1, "old")]),
        vec![("meta".into(), 0, NONE)]
    );
    // 8 units: accepted. 9: refused. "é" is one UTF-16 unit (two bytes of
    // UTF-8), "𝄞" two: 8 and 10 units.
    let r = c.commit(
        v,
        "g",
        -1,
        "",
        &[
            ("meta", 0, 5, -1, "123456789"),
            ("meta", 1, 6, -1, "12345678"),
            ("meta", 2, 7, -1, "éééééééé"),
        ],
    );
    assert_eq!(
        r,
        vec![
            ("meta".into(), 0, OFFSET_METADATA_TOO_LARGE),
            ("meta".into(), 1, NONE),
            ("meta".into(), 2, NONE),
        ]
    );
    assert_eq!(
        c.commit(v, "g", -1, "", &[("meta", 2, 9, -1, "𝄞𝄞𝄞𝄞𝄞")]),
        vec![("meta".into(), 2, OFFSET_METADATA_TOO_LARGE)]
    );
    let got = c.fetch(OFFSET_FETCH.1, "g", Some(&[("meta", &[0, 1, 2])]));
    let got: Vec<(i32, i64, String)> = got
        .into_iter()
        .map(|(_, p, o, _, m, _)| (p, o, m))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 1, "old".into()),
            (1, 6, "12345678".into()),
            (2, 7, "éééééééé".into()),
        ],
        "the refused commits changed nothing"
    );
}

/// OffsetFetch answers each topic and partition once, however often the
/// request names them (a topic named again is merged into its first entry).
/// Before, a partition with a commit carried its metadata (up to 4 KiB) into
/// the answer for each repeat: 100,000 repeats, 400 KB of request, made some
/// 400 MB of answer. (An OffsetFetch may list 100,000 partitions in all; this
/// one lists 99,000 repeats.)
#[test]
fn offset_fetch_answers_a_repeated_partition_once() {
    const REPEATS: usize = 99_000;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("data"), &[]);
    let mut c = Conn::new(&broker.addr);
    assert_eq!(c.create_topic("repeated"), 1);
    let meta = "m".repeat(4000);
    assert_eq!(
        c.commit(
            OFFSET_COMMIT.1,
            "g",
            -1,
            "",
            &[("repeated", 0, 7, -1, &meta)]
        ),
        vec![("repeated".into(), 0, NONE)]
    );
    let before = broker_support::peak_rss(broker.pid());
    let zeros = vec![0; REPEATS];
    let asked: [(&str, &[i32]); 3] = [
        ("repeated", &zeros),
        ("other", &[3, 3]),
        ("repeated", &[1, 0, 1]),
    ];
    for version in [OFFSET_FETCH.0, OFFSET_FETCH.1] {
        let got = c.fetch(version, "g", Some(&asked));
        assert_eq!(
            got.len(),
            3,
            "OffsetFetch v{version}: {} entries",
            got.len()
        );
        assert_eq!(
            got,
            vec![
                ("repeated".into(), 0, 7, -1, meta.clone(), NONE),
                ("repeated".into(), 1, -1, -1, String::new(), NONE),
                ("other".into(), 3, -1, -1, String::new(), NONE),
            ],
            "OffsetFetch v{version}"
        );
    }
    let grown = broker_support::peak_rss(broker.pid()).saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "the broker's peak memory grew by {} MiB",
        grown >> 20
    );
}
