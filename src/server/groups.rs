//! Single-node consumer-group coordinator (the classic JoinGroup/SyncGroup protocol).
//!
//! Every join starts a rebalance; it completes when every known member has rejoined or
//! the rebalance timeout passes (members that did not rejoin are dropped). The leader
//! gets the member list, computes assignments client-side and sends them in SyncGroup;
//! followers wait for that. Members are dropped when their session times out.
//! Membership lives in memory; committed offsets are durable (see
//! [`crate::storage::OffsetStore`]).
//!
//! As in Kafka, JoinGroup, SyncGroup, Heartbeat and LeaveGroup refuse an empty group
//! id with INVALID_GROUP_ID; OffsetCommit and OffsetFetch accept it (Kafka keeps that
//! for backwards compatibility), so [`GroupCoordinator::check_commit`] treats it as
//! any other group.
//!
//! The admin APIs see the same state: [`GroupCoordinator::overview`] (ListGroups)
//! and [`GroupCoordinator::describe`] report Kafka's state names, and
//! [`GroupCoordinator::begin_delete`] / [`GroupCoordinator::finish_delete`]
//! (DeleteGroups) take an empty group through `Dead` while its offsets are removed,
//! as Kafka's `handleDeleteGroups` does: meanwhile joins, syncs, heartbeats, leaves
//! and commits get COORDINATOR_NOT_AVAILABLE and retry.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    ops::RangeInclusive,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::codes;
use crate::{config::GroupConfig, storage::OffsetStore};

/// Answer to a JoinGroup.
#[derive(Debug, Clone)]
pub struct JoinResult {
    /// Kafka error code.
    pub error: i16,
    /// Generation formed.
    pub generation: i32,
    /// Chosen assignment protocol.
    pub protocol: Option<String>,
    /// Protocol type of the group.
    pub protocol_type: Option<String>,
    /// Leader's member id.
    pub leader: String,
    /// The joining member's id.
    pub member_id: String,
    /// Members and their metadata (leader only).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    fn error(error: i16, member_id: &str) -> JoinResult {
        JoinResult {
            error,
            generation: -1,
            protocol: None,
            protocol_type: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// Answer to a SyncGroup: error code and the member's assignment.
pub type SyncResult = (i16, Bytes);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    /// Being deleted: no members, and none can join until it is gone.
    Dead,
}

impl State {
    /// Kafka's name of the state (`GroupState.toString`), as ListGroups and
    /// DescribeGroups report it.
    fn name(self) -> &'static str {
        match self {
            State::Empty => STATES[0],
            State::PreparingRebalance => STATES[1],
            State::CompletingRebalance => STATES[2],
            State::Stable => STATES[3],
            State::Dead => STATES[4],
        }
    }
}

/// The state name of a group without members.
pub const EMPTY: &str = "Empty";
/// The state name of a group being deleted, and of an unknown group in
/// DescribeGroups.
pub const DEAD: &str = "Dead";
/// Every state name a group can have.
pub const STATES: [&str; 5] = [
    EMPTY,
    "PreparingRebalance",
    "CompletingRebalance",
    "Stable",
    DEAD,
];

/// A group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOverview {
    /// Group id.
    pub group: String,
    /// Kafka's state name (`Empty`, `PreparingRebalance`, `CompletingRebalance`,
    /// `Stable`, `Dead`).
    pub state: &'static str,
    /// The members' protocol type since the first member joined; `None` for a group
    /// that never had a member.
    pub protocol_type: Option<String>,
}

/// A group as DescribeGroups reports it (Kafka's `GroupMetadata.summary`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// Kafka's state name.
    pub state: &'static str,
    /// As in [`GroupOverview::protocol_type`].
    pub protocol_type: Option<String>,
    /// The chosen assignment protocol while the group is `Stable`, else empty.
    pub protocol: String,
    /// The members, by member id.
    pub members: Vec<MemberSummary>,
}

impl GroupSummary {
    /// A group without members, as one known only by its committed offsets.
    pub fn empty(protocol_type: Option<String>) -> GroupSummary {
        GroupSummary {
            state: EMPTY,
            protocol_type,
            protocol: String::new(),
            members: Vec::new(),
        }
    }

    /// An unknown group (Kafka's `GroupCoordinator.DeadGroup`).
    pub fn dead() -> GroupSummary {
        GroupSummary {
            state: DEAD,
            protocol_type: None,
            protocol: String::new(),
            members: Vec::new(),
        }
    }
}

/// A member as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSummary {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Client id of its JoinGroup.
    pub client_id: String,
    /// Address its JoinGroup came from.
    pub client_host: String,
    /// Its metadata for the chosen protocol while the group is `Stable`, else empty.
    pub metadata: Bytes,
    /// Its assignment while the group is `Stable`, else empty.
    pub assignment: Bytes,
}

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    assignment: Bytes,
    joined: bool,
}

#[derive(Debug)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    pending_joins: Vec<(String, oneshot::Sender<JoinResult>)>,
    pending_syncs: Vec<(String, oneshot::Sender<SyncResult>)>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with the instant they lapse
    /// unless the member rejoins with them.
    pending_members: HashMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    /// When the group last became `Empty` (or was created).
    empty_since: SystemTime,
}

impl Group {
    fn new() -> Group {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending_joins: Vec::new(),
            pending_syncs: Vec::new(),
            pending_members: HashMap::new(),
            rebalance_deadline: None,
            empty_since: SystemTime::now(),
        }
    }

    fn start_rebalance(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            self.state = State::PreparingRebalance;
            for m in self.members.values_mut() {
                m.joined = false;
            }
            let longest = self
                .members
                .values()
                .map(|m| m.rebalance_timeout)
                .max()
                .unwrap_or(Duration::from_secs(5));
            self.rebalance_deadline = Some(now + longest);
            for (_, tx) in self.pending_syncs.drain(..) {
                let _ = tx.send((codes::REBALANCE_IN_PROGRESS, Bytes::new()));
            }
        }
    }

    /// Completes the rebalance when every member rejoined (or `force`, dropping the rest).
    fn try_complete(&mut self, force: bool) {
        if self.state != State::PreparingRebalance {
            return;
        }
        if !force && self.members.values().any(|m| !m.joined) {
            return;
        }
        self.members.retain(|id, m| {
            if !m.joined {
                tracing::info!(member = %id, "dropping member that did not rejoin in time");
            }
            m.joined
        });
        self.rebalance_deadline = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.empty_since = SystemTime::now();
            self.leader = None;
            self.protocol = None;
            return;
        }
        let Some(protocol) = self.select_protocol() else {
            for (id, tx) in self.pending_joins.drain(..) {
                let _ = tx.send(JoinResult::error(codes::INCONSISTENT_GROUP_PROTOCOL, &id));
            }
            return;
        };
        self.generation += 1;
        self.protocol = Some(protocol.clone());
        // A member's session restarts when its join completes: one that waited
        // longer than its session timeout for the others is not expired for it.
        let now = Instant::now();
        for m in self.members.values_mut() {
            m.last_seen = now;
        }
        let leader = match &self.leader {
            Some(l) if self.members.contains_key(l) => l.clone(),
            _ => self.members.keys().next().cloned().unwrap_or_default(),
        };
        self.leader = Some(leader.clone());
        self.state = State::CompletingRebalance;
        let all: Vec<(String, Option<String>, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (id.clone(), m.instance_id.clone(), meta)
            })
            .collect();
        for (id, tx) in self.pending_joins.drain(..) {
            let _ = tx.send(JoinResult {
                error: codes::NONE,
                generation: self.generation,
                protocol: Some(protocol.clone()),
                protocol_type: self.protocol_type.clone(),
                leader: leader.clone(),
                members: if id == leader {
                    all.clone()
                } else {
                    Vec::new()
                },
                member_id: id,
            });
        }
        tracing::info!(generation = self.generation, members = self.members.len(), %protocol, "group rebalanced");
    }

    /// The protocol a rebalance would choose now: the first protocol of the
    /// first member that every member supports.
    fn select_protocol(&self) -> Option<String> {
        let mut members = self.members.values();
        let first = members.next()?;
        let mut common = protocol_names(&first.protocols);
        for m in members {
            let theirs = protocol_names(&m.protocols);
            common.retain(|n| theirs.contains(n));
        }
        first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .find(|n| common.contains(n.as_str()))
            .cloned()
    }

    /// The member id that static member `instance` (its group instance id)
    /// has now.
    fn static_member(&self, instance: &str) -> Option<&String> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
            .map(|(id, _)| id)
    }

    /// KIP-345: a request naming group instance `instance` with a member id
    /// other than the one that instance has now comes from a member another
    /// one replaced (FENCED_INSTANCE_ID).
    fn fenced(&self, instance: Option<&str>, member_id: &str) -> bool {
        instance
            .and_then(|i| self.static_member(i))
            .is_some_and(|id| id != member_id)
    }

    /// A static member rejoining without its member id (a restarted consumer
    /// with the same `group.instance.id`) takes over its old membership under
    /// a new id, as in Kafka: the old id is fenced, its pending join or sync
    /// answered with FENCED_INSTANCE_ID, and its assignment kept. A `Stable`
    /// group whose protocol choice stays the same does not rebalance: the
    /// member gets the current generation at once, with the leader id from
    /// before the replacement (so a rejoining leader does not assign again; its
    /// SyncGroup returns its assignment). Otherwise the group rebalances.
    fn replace_static_member(
        &mut self,
        old: &str,
        new: String,
        req: JoinRequest,
        tx: oneshot::Sender<JoinResult>,
        now: Instant,
    ) {
        let Some(mut m) = self.members.remove(old) else {
            return;
        };
        for (id, t) in std::mem::take(&mut self.pending_joins) {
            if id == old {
                let _ = t.send(JoinResult::error(codes::FENCED_INSTANCE_ID, old));
            } else {
                self.pending_joins.push((id, t));
            }
        }
        for (id, t) in std::mem::take(&mut self.pending_syncs) {
            if id == old {
                let _ = t.send((codes::FENCED_INSTANCE_ID, Bytes::new()));
            } else {
                self.pending_syncs.push((id, t));
            }
        }
        let leader_before = self.leader.clone().unwrap_or_default();
        if self.leader.as_deref() == Some(old) {
            self.leader = Some(new.clone());
        }
        m.client_id = req.client_id;
        m.client_host = req.client_host;
        m.protocols = req.protocols;
        m.session_timeout = req.session_timeout;
        m.rebalance_timeout = req.rebalance_timeout;
        m.last_seen = now;
        self.members.insert(new.clone(), m);
        tracing::info!(old_member = %old, member = %new, instance = ?self.members[&new].instance_id, "static member replaced");
        if self.state == State::Stable && self.select_protocol() == self.protocol {
            let _ = tx.send(JoinResult {
                error: codes::NONE,
                generation: self.generation,
                protocol: self.protocol.clone(),
                protocol_type: self.protocol_type.clone(),
                leader: leader_before,
                member_id: new,
                members: Vec::new(),
            });
            return;
        }
        self.start_rebalance(now);
        if let Some(m) = self.members.get_mut(&new) {
            m.joined = true;
        }
        self.pending_joins.push((new, tx));
        self.try_complete(false);
    }

    /// Whether `protocols` include one that every member other than `member_id`
    /// supports, so that a rebalance with it can still choose a protocol.
    fn supports_protocols(&self, member_id: &str, protocols: &[(String, Bytes)]) -> bool {
        let mut common = protocol_names(protocols);
        for (_, m) in self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
        {
            if common.is_empty() {
                break;
            }
            let theirs = protocol_names(&m.protocols);
            common.retain(|n| theirs.contains(n));
        }
        !common.is_empty()
    }

    fn check_member(&self, member_id: &str, generation: i32) -> i16 {
        if !self.members.contains_key(member_id) {
            codes::UNKNOWN_MEMBER_ID
        } else if generation != self.generation {
            codes::ILLEGAL_GENERATION
        } else {
            codes::NONE
        }
    }
}

/// The names of `protocols`, each once. The protocol checks intersect these
/// sets, so that they take time linear in the protocols listed: comparing
/// every protocol of a member with every protocol of each other one took
/// minutes, under the coordinator's lock, for two lists of 200,000.
impl Group {
    /// The topics a consumer group's members subscribe to, as their metadata for
    /// the group's protocol says; `None` for a group of another protocol type or
    /// when a member's subscription does not parse (every topic counts then).
    fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let mut topics = BTreeSet::new();
        for m in self.members.values() {
            let metadata = m
                .protocols
                .iter()
                .find(|(name, _)| Some(name) == self.protocol.as_ref())
                .or_else(|| m.protocols.first())
                .map(|(_, b)| b.clone());
            topics.extend(metadata.as_ref().and_then(subscription)?);
        }
        Some(topics)
    }
}

fn protocol_names(protocols: &[(String, Bytes)]) -> HashSet<&str> {
    protocols.iter().map(|(n, _)| n.as_str()).collect()
}

/// All groups of this broker.
#[derive(Debug)]
pub struct GroupCoordinator {
    groups: Mutex<HashMap<String, Group>>,
    /// When this coordinator started: groups it does not hold count as empty since
    /// then at the latest (their membership before a restart is unknown).
    started: SystemTime,
    /// The session timeouts a JoinGroup may ask for.
    session_timeouts: RangeInclusive<Duration>,
}

impl Default for GroupCoordinator {
    /// A coordinator with Kafka's default settings.
    fn default() -> Self {
        GroupCoordinator::new(&GroupConfig::default())
    }
}

/// The most protocols a JoinGroup may list; a longer list gets INVALID_REQUEST.
/// Clients list a handful (the Java consumer two by default). Kafka sets no
/// limit, so a frame of `--max-request-bytes` could list millions, each
/// checked against the group's members under the coordinator's lock.
pub const MAX_PROTOCOLS: usize = 256;

/// A JoinGroup request's parameters.
#[derive(Debug)]
pub struct JoinRequest {
    /// Group id.
    pub group: String,
    /// Member id (empty for a new member).
    pub member_id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Client id, used as the member id prefix.
    pub client_id: String,
    /// Address the request came from (Kafka reports `/<ip>`).
    pub client_host: String,
    /// Protocol type ("consumer").
    pub protocol_type: String,
    /// Supported protocols with their metadata, at most [`MAX_PROTOCOLS`]. A name
    /// listed again counts once: its first metadata is the one used.
    pub protocols: Vec<(String, Bytes)>,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Rebalance timeout.
    pub rebalance_timeout: Duration,
    /// JoinGroup v4 and later: a new dynamic member (no `instance_id`) first gets
    /// its id with MEMBER_ID_REQUIRED and joins when it comes back with it.
    pub require_known_member_id: bool,
}

impl GroupCoordinator {
    /// A coordinator with no groups, enforcing `config`'s session timeout bounds.
    pub fn new(config: &GroupConfig) -> GroupCoordinator {
        let ms = |v: i32| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        GroupCoordinator {
            groups: Mutex::default(),
            started: SystemTime::now(),
            session_timeouts: ms(config.min_session_timeout_ms)..=ms(config.max_session_timeout_ms),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins (or rejoins) a group; the receiver resolves when the rebalance completes.
    pub fn join(&self, mut req: JoinRequest) -> oneshot::Receiver<JoinResult> {
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        if req.group.is_empty() {
            let _ = tx.send(JoinResult::error(codes::INVALID_GROUP_ID, &req.member_id));
            return rx;
        }
        if !self.session_timeouts.contains(&req.session_timeout) {
            let _ = tx.send(JoinResult::error(
                codes::INVALID_SESSION_TIMEOUT,
                &req.member_id,
            ));
            return rx;
        }
        if req.protocols.len() > MAX_PROTOCOLS {
            tracing::warn!(
                group = %req.group,
                protocols = req.protocols.len(),
                "JoinGroup refused: it lists more than {MAX_PROTOCOLS} protocols"
            );
            let _ = tx.send(JoinResult::error(codes::INVALID_REQUEST, &req.member_id));
            return rx;
        }
        // Decoded without a copy, the metadata shares the request frame's
        // allocation, which a member would keep whole (up to
        // `--max-request-bytes`) for as long as it lives.
        for (_, metadata) in &mut req.protocols {
            *metadata = Bytes::copy_from_slice(metadata);
        }
        let no_protocols = req.protocols.is_empty() || req.protocol_type.is_empty();
        let mut groups = self.lock();
        if !groups.contains_key(&req.group) {
            // A refused join leaves no group behind: only a new member (no member
            // id, as Kafka's `getOrMaybeCreateGroup`) with protocols starts one.
            let refused = if no_protocols {
                Some(codes::INCONSISTENT_GROUP_PROTOCOL)
            } else if !req.member_id.is_empty() {
                Some(codes::UNKNOWN_MEMBER_ID)
            } else {
                None
            };
            if let Some(code) = refused {
                let _ = tx.send(JoinResult::error(code, &req.member_id));
                return rx;
            }
        }
        let g = groups.entry(req.group.clone()).or_insert_with(Group::new);
        if g.state == State::Dead {
            let _ = tx.send(JoinResult::error(
                codes::COORDINATOR_NOT_AVAILABLE,
                &req.member_id,
            ));
            return rx;
        }
        if no_protocols {
            let _ = tx.send(JoinResult::error(
                codes::INCONSISTENT_GROUP_PROTOCOL,
                &req.member_id,
            ));
            return rx;
        }
        // A static member's current id, when it has one.
        let current = req
            .instance_id
            .as_deref()
            .and_then(|i| g.static_member(i))
            .cloned();
        if let Some(cur) = &current {
            if !req.member_id.is_empty() && *cur != req.member_id {
                let _ = tx.send(JoinResult::error(codes::FENCED_INSTANCE_ID, &req.member_id));
                return rx;
            }
        }
        // Checked against the other members: a static member replacing itself
        // is not one of them.
        let me = current.as_deref().unwrap_or(&req.member_id);
        if !g.members.is_empty()
            && (g
                .protocol_type
                .as_deref()
                .is_some_and(|t| t != req.protocol_type)
                || !g.supports_protocols(me, &req.protocols))
        {
            let _ = tx.send(JoinResult::error(
                codes::INCONSISTENT_GROUP_PROTOCOL,
                &req.member_id,
            ));
            return rx;
        }
        let member_id = if req.member_id.is_empty() {
            let prefix = if req.client_id.is_empty() {
                "member"
            } else {
                req.client_id.as_str()
            };
            let id = format!(
                "{prefix}-{}",
                uuid::Uuid::from_u128(crate::storage::random_id())
            );
            if let Some(old) = current {
                g.protocol_type = Some(req.protocol_type.clone());
                g.replace_static_member(&old, id, req, tx, now);
                return rx;
            }
            if req.require_known_member_id && req.instance_id.is_none() {
                g.pending_members
                    .insert(id.clone(), now + req.session_timeout);
                let _ = tx.send(JoinResult::error(codes::MEMBER_ID_REQUIRED, &id));
                return rx;
            }
            id
        } else if g.members.contains_key(&req.member_id)
            || g.pending_members.remove(&req.member_id).is_some()
        {
            req.member_id.clone()
        } else {
            let _ = tx.send(JoinResult::error(codes::UNKNOWN_MEMBER_ID, &req.member_id));
            return rx;
        };
        g.protocol_type = Some(req.protocol_type.clone());
        let unchanged = g.state == State::Stable
            && g.members
                .get(&member_id)
                .is_some_and(|m| m.protocols == req.protocols)
            && g.leader.as_deref() != Some(member_id.as_str());
        if unchanged {
            // A follower rejoining with the same metadata gets the current generation.
            let m = g.members.get_mut(&member_id).expect("checked above");
            m.last_seen = now;
            let _ = tx.send(JoinResult {
                error: codes::NONE,
                generation: g.generation,
                protocol: g.protocol.clone(),
                protocol_type: g.protocol_type.clone(),
                leader: g.leader.clone().unwrap_or_default(),
                member_id,
                members: Vec::new(),
            });
            return rx;
        }
        g.start_rebalance(now);
        g.members.insert(
            member_id.clone(),
            Member {
                instance_id: req.instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                protocols: req.protocols,
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                last_seen: now,
                assignment: Bytes::new(),
                joined: true,
            },
        );
        g.pending_joins.retain(|(id, _)| *id != member_id);
        g.pending_joins.push((member_id, tx));
        g.try_complete(false);
        rx
    }

    /// SyncGroup: the leader's assignments are stored and handed to every member.
    pub fn sync(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> oneshot::Receiver<SyncResult> {
        let (tx, rx) = oneshot::channel();
        if group.is_empty() {
            let _ = tx.send((codes::INVALID_GROUP_ID, Bytes::new()));
            return rx;
        }
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            let _ = tx.send((codes::UNKNOWN_MEMBER_ID, Bytes::new()));
            return rx;
        };
        if g.state == State::Dead {
            let _ = tx.send((codes::COORDINATOR_NOT_AVAILABLE, Bytes::new()));
            return rx;
        }
        let err = if g.fenced(instance, member_id) {
            codes::FENCED_INSTANCE_ID
        } else {
            g.check_member(member_id, generation)
        };
        if err != codes::NONE {
            let _ = tx.send((err, Bytes::new()));
            return rx;
        }
        if let Some(m) = g.members.get_mut(member_id) {
            m.last_seen = Instant::now();
        }
        match g.state {
            State::PreparingRebalance | State::Empty | State::Dead => {
                let _ = tx.send((codes::REBALANCE_IN_PROGRESS, Bytes::new()));
            }
            State::Stable => {
                let a = g
                    .members
                    .get(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                let _ = tx.send((codes::NONE, a));
            }
            State::CompletingRebalance => {
                g.pending_syncs.push((member_id.to_string(), tx));
                if g.leader.as_deref() == Some(member_id) {
                    let map: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for (id, m) in &mut g.members {
                        // A copy, not a share of the request frame (see `join`).
                        m.assignment = map
                            .get(id)
                            .map(|a| Bytes::copy_from_slice(a))
                            .unwrap_or_default();
                    }
                    g.state = State::Stable;
                    for (id, tx) in g.pending_syncs.drain(..) {
                        let a = g
                            .members
                            .get(&id)
                            .map(|m| m.assignment.clone())
                            .unwrap_or_default();
                        let _ = tx.send((codes::NONE, a));
                    }
                }
            }
        }
        rx
    }

    /// Heartbeat: keeps the member alive and tells it when to rejoin. `instance`
    /// is the member's group instance id, if static (a replaced id gets
    /// FENCED_INSTANCE_ID).
    pub fn heartbeat(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
    ) -> i16 {
        if group.is_empty() {
            return codes::INVALID_GROUP_ID;
        }
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        if g.state == State::Dead {
            return codes::COORDINATOR_NOT_AVAILABLE;
        }
        if g.fenced(instance, member_id) {
            return codes::FENCED_INSTANCE_ID;
        }
        if let Some(m) = g.members.get_mut(member_id) {
            m.last_seen = Instant::now();
        }
        let err = g.check_member(member_id, generation);
        if err != codes::NONE {
            return err;
        }
        if g.state == State::PreparingRebalance {
            codes::REBALANCE_IN_PROGRESS
        } else {
            codes::NONE
        }
    }

    /// LeaveGroup for each of `members`: an error code per member, or one error for
    /// the whole request (an empty group id, a group being deleted).
    pub fn leave(&self, group: &str, members: &[String]) -> Result<Vec<i16>, i16> {
        let identities: Vec<(String, Option<String>)> =
            members.iter().map(|m| (m.clone(), None)).collect();
        self.leave_identities(group, &identities)
    }

    /// LeaveGroup v3 and later: each member by `(member id, group instance id)`.
    /// A static member may be named by its instance id alone (an empty member
    /// id, as Kafka's admin removal does); named with another member id than
    /// its instance has now, it is FENCED_INSTANCE_ID.
    pub fn leave_identities(
        &self,
        group: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<i16>, i16> {
        if group.is_empty() {
            return Err(codes::INVALID_GROUP_ID);
        }
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return Ok(vec![codes::UNKNOWN_MEMBER_ID; members.len()]);
        };
        if g.state == State::Dead {
            return Err(codes::COORDINATOR_NOT_AVAILABLE);
        }
        let now = Instant::now();
        let mut out = Vec::with_capacity(members.len());
        let mut removed = false;
        for (given, instance) in members {
            let id = match instance.as_deref() {
                None => given,
                Some(i) => match g.static_member(i) {
                    None => {
                        out.push(codes::UNKNOWN_MEMBER_ID);
                        continue;
                    }
                    Some(cur) if !given.is_empty() && cur != given => {
                        out.push(codes::FENCED_INSTANCE_ID);
                        continue;
                    }
                    Some(cur) => &cur.clone(),
                },
            };
            if g.members.remove(id).is_some() {
                g.pending_joins.retain(|(m, _)| m != id);
                g.pending_syncs.retain(|(m, _)| m != id);
                removed = true;
                out.push(codes::NONE);
            } else if g.pending_members.remove(id).is_some() {
                out.push(codes::NONE);
            } else {
                out.push(codes::UNKNOWN_MEMBER_ID);
            }
        }
        if removed {
            if g.members.is_empty() {
                g.state = State::Empty;
                g.empty_since = SystemTime::now();
                g.leader = None;
                g.rebalance_deadline = None;
            } else {
                g.start_rebalance(now);
                g.try_complete(false);
            }
        }
        Ok(out)
    }

    /// Whether an OffsetCommit from `member_id` at `generation` is allowed: simple
    /// commits (generation -1) only while the group has no members; a member's
    /// commit at the current generation except between its JoinGroup and SyncGroup
    /// (while the group prepares a rebalance it may still commit what it consumed),
    /// and never from a static member's replaced id (FENCED_INSTANCE_ID). A
    /// member's allowed commit counts as a heartbeat, as in Kafka.
    pub fn check_commit(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
    ) -> i16 {
        let mut groups = self.lock();
        match groups.get_mut(group) {
            None if generation < 0 => codes::NONE,
            None => codes::ILLEGAL_GENERATION,
            Some(g) if g.state == State::Dead => codes::COORDINATOR_NOT_AVAILABLE,
            // Only members commit to a group that has some: Kafka answers
            // UNKNOWN_MEMBER_ID, on which clients rejoin.
            Some(g) if generation < 0 && member_id.is_empty() => {
                if g.members.is_empty() {
                    codes::NONE
                } else {
                    codes::UNKNOWN_MEMBER_ID
                }
            }
            Some(g) if g.fenced(instance, member_id) => codes::FENCED_INSTANCE_ID,
            Some(g) => {
                let err = g.check_member(member_id, generation);
                if err == codes::NONE && g.state == State::CompletingRebalance {
                    return codes::REBALANCE_IN_PROGRESS;
                }
                if let Some(m) = g.members.get_mut(member_id).filter(|_| err == codes::NONE) {
                    m.last_seen = Instant::now();
                }
                err
            }
        }
    }

    /// The protocol type of `group`'s members (kept while it is empty), when it has
    /// had a member.
    pub fn protocol_type(&self, group: &str) -> Option<String> {
        self.lock().get(group)?.protocol_type.clone()
    }

    /// Every group the coordinator holds, by group id (groups known only by their
    /// committed offsets are the caller's to add).
    pub fn overview(&self) -> Vec<GroupOverview> {
        let groups = self.lock();
        let mut all: Vec<GroupOverview> = groups
            .iter()
            .map(|(id, g)| GroupOverview {
                group: id.clone(),
                state: g.state.name(),
                protocol_type: g.protocol_type.clone(),
            })
            .collect();
        all.sort_by(|a, b| a.group.cmp(&b.group));
        all
    }

    /// `group`'s state and members, when the coordinator holds it. As Kafka's
    /// `GroupMetadata.summary`: the protocol and each member's metadata and
    /// assignment only while the group is `Stable`.
    pub fn describe(&self, group: &str) -> Option<GroupSummary> {
        let groups = self.lock();
        let g = groups.get(group)?;
        let stable = g.state == State::Stable;
        let protocol = if stable {
            g.protocol.clone().unwrap_or_default()
        } else {
            String::new()
        };
        let members = g
            .members
            .iter()
            .map(|(id, m)| {
                let (metadata, assignment) = if stable {
                    let meta = m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default();
                    (meta, m.assignment.clone())
                } else {
                    (Bytes::new(), Bytes::new())
                };
                MemberSummary {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata,
                    assignment,
                }
            })
            .collect();
        Some(GroupSummary {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone(),
            protocol,
            members,
        })
    }

    /// Starts deleting `group` (DeleteGroups): an `Empty` group, or one the
    /// coordinator does not hold but that `has_offsets`, becomes `Dead` until
    /// [`GroupCoordinator::finish_delete`]; its member ids handed out with
    /// MEMBER_ID_REQUIRED lapse. NONE when the caller may remove its offsets;
    /// NON_EMPTY_GROUP while it has members; GROUP_ID_NOT_FOUND for an unknown
    /// group or one already being deleted (Kafka's `handleDeleteGroups`).
    pub fn begin_delete(&self, group: &str, has_offsets: bool) -> i16 {
        let mut groups = self.lock();
        match groups.get_mut(group) {
            Some(g) => match g.state {
                State::Empty => {
                    g.state = State::Dead;
                    g.pending_members.clear();
                    codes::NONE
                }
                State::Dead => codes::GROUP_ID_NOT_FOUND,
                State::PreparingRebalance | State::CompletingRebalance | State::Stable => {
                    codes::NON_EMPTY_GROUP
                }
            },
            None if has_offsets => {
                let mut g = Group::new();
                g.state = State::Dead;
                groups.insert(group.to_string(), g);
                codes::NONE
            }
            None => codes::GROUP_ID_NOT_FOUND,
        }
    }

    /// Forgets `group` once its deletion (see [`GroupCoordinator::begin_delete`]) is
    /// done; the next JoinGroup or commit starts a new group.
    pub fn finish_delete(&self, group: &str) {
        let mut groups = self.lock();
        if groups.get(group).is_some_and(|g| g.state == State::Dead) {
            groups.remove(group);
        }
    }

    /// Deletes the committed offsets of every group that has had no members and no
    /// commit for `retention` at `now` (Kafka's `offsets.retention.minutes`, as
    /// KIP-211 counts it: from when the group became empty, or from its last
    /// commit if later; a group this coordinator does not hold counts as empty
    /// since it started). Each deletion goes through
    /// [`GroupCoordinator::begin_delete`], so a member joining meanwhile keeps the
    /// group. Blocking (removes files). Returns the groups deleted.
    ///
    /// # Errors
    /// The first I/O error from removing a group's offsets; groups deleted before it
    /// stay deleted, and one that fails does not keep those after it from
    /// expiring (each failure is logged).
    pub fn expire_offsets(
        &self,
        store: &OffsetStore,
        retention: Duration,
        now: SystemTime,
    ) -> crate::error::Result<Vec<String>> {
        let mut expired = Vec::new();
        let mut failed = None;
        let mut groups = store.last_commits();
        groups.sort_unstable();
        for (group, last_commit) in groups {
            match self.expire_group(store, &group, last_commit, retention, now) {
                Ok(true) => expired.push(group),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(group = %group, error = %e, "expiring the group's committed offsets failed");
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(expired), Err)
    }

    /// [`GroupCoordinator::expire_offsets`] for one `group` that last committed
    /// at `last_commit`: whether the group was deleted.
    fn expire_group(
        &self,
        store: &OffsetStore,
        group: &str,
        last_commit: SystemTime,
        retention: Duration,
        now: SystemTime,
    ) -> crate::error::Result<bool> {
        let (empty_since, had_members) = {
            let groups = self.lock();
            match groups.get(group) {
                Some(g) if g.state == State::Empty => (g.empty_since, g.protocol_type.is_some()),
                // A stable consumer group keeps the positions of the topics its
                // members subscribe to; those of any other topic expire one by
                // one, each from its own commit (Kafka's KIP-496).
                Some(g) if g.state == State::Stable => {
                    let Some(subscribed) = g.subscribed_topics() else {
                        return Ok(false);
                    };
                    drop(groups);
                    let cutoff = now.checked_sub(retention).unwrap_or(std::time::UNIX_EPOCH);
                    let n = store.expire_unsubscribed(group, &subscribed, cutoff)?;
                    if n > 0 {
                        tracing::info!(group = %group, positions = n, "expired committed offsets of topics a stable group no longer subscribes to");
                    }
                    return Ok(false);
                }
                Some(_) => return Ok(false),
                None => (self.started, false),
            }
        };
        // Simple: offsets committed without membership, and no members since
        // the start either.
        let simple = !had_members
            && store
                .group(group)
                .is_some_and(|g| g.protocol_type.is_none());
        if simple {
            // A simple group's positions expire one by one, each from its own
            // commit, as Kafka expires a standalone group's offsets.
            let cutoff = now.checked_sub(retention).unwrap_or(std::time::UNIX_EPOCH);
            let n = store.expire_simple(group, cutoff)?;
            if n > 0 {
                let gone = store.group(group).is_none();
                tracing::info!(group = %group, positions = n, group_deleted = gone, "expired committed offsets of a simple group");
                if gone {
                    // An empty group the coordinator still holds goes too.
                    if self.begin_delete(group, false) == codes::NONE {
                        self.finish_delete(group);
                    }
                }
                return Ok(gone);
            }
            return Ok(false);
        }
        let since = empty_since.max(last_commit);
        if now.duration_since(since).unwrap_or_default() <= retention {
            return Ok(false);
        }
        if self.begin_delete(group, true) != codes::NONE {
            return Ok(false);
        }
        // A commit that got in before the group was marked for deletion keeps it.
        let deleted = store.delete_unless_committed_since(group, last_commit);
        self.finish_delete(group);
        if !deleted? {
            return Ok(false);
        }
        tracing::info!(
            group = %group,
            idle_minutes = now.duration_since(since).unwrap_or_default().as_secs() / 60,
            "expired the committed offsets of an idle group"
        );
        Ok(true)
    }

    /// Forgets every group that is `Empty` with nothing pending (no member ids
    /// handed out, no joins or syncs waiting) and no committed offsets in `store`,
    /// as Kafka's offset cleanup removes such groups: a group that only ever saw
    /// refused joins, or whose members left without committing, is not kept (nor
    /// listed) forever. Returns how many were forgotten.
    pub fn forget_empty_groups(&self, store: &OffsetStore) -> usize {
        let mut groups = self.lock();
        let before = groups.len();
        groups.retain(|name, g| {
            let idle = g.state == State::Empty
                && g.members.is_empty()
                && g.pending_members.is_empty()
                && g.pending_joins.is_empty()
                && g.pending_syncs.is_empty();
            !idle || store.group(name).is_some()
        });
        before - groups.len()
    }

    /// Whether the coordinator holds `group` (members, or state since the start).
    pub fn holds(&self, group: &str) -> bool {
        self.lock().contains_key(group)
    }

    /// What OffsetDelete may delete from `group` (see [`OffsetDeleteGuard`]). A
    /// group the coordinator does not hold has no members.
    pub fn offset_delete_guard(&self, group: &str) -> OffsetDeleteGuard {
        let groups = self.lock();
        let Some(g) = groups.get(group) else {
            return OffsetDeleteGuard::Subscribed(BTreeSet::new());
        };
        match g.state {
            State::Dead => OffsetDeleteGuard::Denied(codes::GROUP_ID_NOT_FOUND),
            State::Empty => OffsetDeleteGuard::Subscribed(BTreeSet::new()),
            _ if g.protocol_type.as_deref() != Some("consumer") => {
                OffsetDeleteGuard::Denied(codes::NON_EMPTY_GROUP)
            }
            _ => g.subscribed_topics().map_or(
                OffsetDeleteGuard::AllSubscribed,
                OffsetDeleteGuard::Subscribed,
            ),
        }
    }

    /// Expires members whose session timed out and completes overdue rebalances.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut groups = self.lock();
        for (name, g) in groups.iter_mut() {
            g.pending_members.retain(|_, lapses| *lapses > now);
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(id, m)| {
                    // A member parked in SyncGroup cannot heartbeat (a connection's
                    // requests are answered in order) while the leader computes
                    // the assignment: like Kafka, it is kept alive, here up to its
                    // rebalance timeout.
                    let allowed = if g.pending_syncs.iter().any(|(p, _)| p == *id) {
                        m.session_timeout.max(m.rebalance_timeout)
                    } else {
                        m.session_timeout
                    };
                    now.duration_since(m.last_seen) > allowed
                        && !g.pending_joins.iter().any(|(p, _)| p == *id)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                tracing::info!(group = %name, member = %id, "member session expired");
                g.members.remove(id);
                g.pending_syncs.retain(|(m, _)| m != id);
            }
            if !expired.is_empty() {
                if g.members.is_empty() {
                    g.state = State::Empty;
                    g.empty_since = SystemTime::now();
                    g.leader = None;
                } else {
                    g.start_rebalance(now);
                    g.try_complete(false);
                }
            }
            if g.state == State::PreparingRebalance
                && g.rebalance_deadline.is_some_and(|d| now >= d)
            {
                g.try_complete(true);
            }
        }
    }
}

/// What OffsetDelete may delete from a group, as Kafka decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetDeleteGuard {
    /// Nothing: the group-level error code (`GROUP_ID_NOT_FOUND` for a group being
    /// deleted, `NON_EMPTY_GROUP` for a group with members that is not a consumer
    /// group).
    Denied(i16),
    /// Positions of any topic but these, which its members subscribe to (none for
    /// a group without members).
    Subscribed(BTreeSet<String>),
    /// Nothing either, per partition: a member's subscription did not parse, so
    /// every topic counts as subscribed.
    AllSubscribed,
}

/// The topics a consumer-protocol member metadata subscribes to; `None` when it
/// does not parse.
fn subscription(metadata: &Bytes) -> Option<Vec<String>> {
    use kafka_protocol::{messages::ConsumerProtocolSubscription, protocol::Decodable};
    let mut buf = metadata.clone();
    if buf.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    bytes::Buf::advance(&mut buf, 2);
    // Versions above those known keep the known fields first (forward compatible).
    let s = ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3)).ok()?;
    Some(s.topics.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(member: &str) -> JoinRequest {
        JoinRequest {
            group: "g".into(),
            member_id: member.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            require_known_member_id: false,
        }
    }

    /// Makes every commit in the group files of `dir` look made at `at`: the
    /// files' modification times and each position's commit time.
    fn backdate(dir: &std::path::Path, at: SystemTime) {
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for f in std::fs::read_dir(dir).unwrap() {
            let path = f.unwrap().path();
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for o in v["offsets"].as_array_mut().unwrap() {
                o["commit_timestamp_ms"] = ms.into();
            }
            std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(at).unwrap();
        }
    }

    /// A group whose offsets cannot be removed (an I/O error) is logged and
    /// kept, and the groups after it still expire. Before, the error ended the
    /// pass, so on every pass the same groups after it never expired.
    #[test]
    fn a_group_that_cannot_be_expired_does_not_stop_the_others() {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let store = OffsetStore::open(path.clone()).unwrap();
        let commit = crate::storage::Committed {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            leader_epoch: -1,
            metadata: None,
        };
        let now = SystemTime::now();
        for g in ["a", "b"] {
            store
                .commit(g, Some("consumer"), vec![commit.clone()])
                .unwrap();
        }
        backdate(&path, now - 8 * DAY);
        drop(store);
        let store = OffsetStore::open(path.clone()).unwrap();
        // "a" (hex 61) comes first; its file cannot be removed.
        let a = path.join("61.json");
        std::fs::remove_file(&a).unwrap();
        std::fs::create_dir_all(a.join("in-the-way")).unwrap();
        let c = GroupCoordinator {
            started: now - 9 * DAY,
            ..GroupCoordinator::default()
        };
        let e = c.expire_offsets(&store, 7 * DAY, now).unwrap_err();
        assert!(e.to_string().contains("61.json"), "{e}");
        assert!(store.group("a").is_some(), "kept");
        assert!(
            store.group("b").is_none(),
            "expired after the failing group"
        );
        std::fs::remove_dir_all(&a).unwrap();
        assert_eq!(c.expire_offsets(&store, 7 * DAY, now).unwrap(), vec!["a"]);
    }

    #[test]
    fn a_simple_groups_positions_expire_one_by_one() {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let store = OffsetStore::open(path.clone()).unwrap();
        let commit = |p: i32| crate::storage::Committed {
            topic: "t".into(),
            partition: p,
            offset: 10 + i64::from(p),
            leader_epoch: -1,
            metadata: None,
        };
        let now = SystemTime::now();
        store.commit("simple", None, vec![commit(0)]).unwrap();
        store
            .commit("members", Some("consumer"), vec![commit(0)])
            .unwrap();
        backdate(&path, now - 8 * DAY);
        drop(store);
        let store = OffsetStore::open(path.clone()).unwrap();
        // Partition 1 committed now; partition 0 eight days ago.
        store.commit("simple", None, vec![commit(1)]).unwrap();
        let c = GroupCoordinator {
            started: now - 9 * DAY,
            ..GroupCoordinator::default()
        };
        let week = 7 * DAY;
        assert_eq!(
            c.expire_offsets(&store, week, now).unwrap(),
            vec!["members"]
        );
        assert!(
            store.fetch("simple", "t", 0).is_none(),
            "expired on its own"
        );
        assert_eq!(
            store.fetch("simple", "t", 1).unwrap().offset,
            11,
            "kept: recent"
        );
        drop(store);
        let store = OffsetStore::open(path.clone()).unwrap();
        assert_eq!(store.fetch_all("simple").len(), 1, "durably");
        assert_eq!(
            c.expire_offsets(&store, week, now + 8 * DAY).unwrap(),
            vec!["simple"],
            "the group goes with its last position"
        );
        drop(store);
        assert!(OffsetStore::open(path).unwrap().groups().is_empty());
    }

    #[test]
    fn idle_groups_lose_their_committed_offsets_after_the_retention() {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let store = OffsetStore::open(path.clone()).unwrap();
        let commit = |g: &str| crate::storage::Committed {
            topic: format!("{g}-topic"),
            partition: 0,
            offset: 1,
            leader_epoch: -1,
            metadata: None,
        };
        for g in ["simple", "recent", "active"] {
            store.commit(g, None, vec![commit(g)]).unwrap();
        }
        // Committed 8 days ago, as a restart reads it back from the files.
        let now = SystemTime::now();
        backdate(&path, now - 8 * DAY);
        drop(store);
        let store = OffsetStore::open(path.clone()).unwrap();
        // A broker up for 8 days; "active" has a member, "recent"'s just left.
        let c = GroupCoordinator {
            started: now - 8 * DAY,
            ..GroupCoordinator::default()
        };
        let join = |g: &str| {
            let r = JoinRequest {
                group: g.into(),
                ..req("")
            };
            c.join(r).try_recv().expect("completes at once")
        };
        let active = join("active");
        assert_eq!(active.error, codes::NONE);
        let recent = join("recent");
        assert_eq!(
            c.leave("recent", std::slice::from_ref(&recent.member_id)),
            Ok(vec![codes::NONE])
        );
        let week = 7 * DAY;

        assert_eq!(c.expire_offsets(&store, week, now).unwrap(), vec!["simple"]);
        assert!(store.group("simple").is_none());
        assert!(store.group("recent").is_some() && store.group("active").is_some());
        // A day more is not enough for a group empty since now.
        assert!(c
            .expire_offsets(&store, week, now + DAY)
            .unwrap()
            .is_empty());
        assert_eq!(
            c.expire_offsets(&store, week, now + 8 * DAY).unwrap(),
            vec!["recent"],
            "empty for longer than the retention; a group with members is kept"
        );
        assert!(store.group("active").is_some());
        // A commit after the expiry looked keeps a group.
        let looked_at = store.last_commits()[0].1;
        store
            .commit("active", None, vec![commit("active")])
            .unwrap();
        assert!(!store
            .delete_unless_committed_since("active", looked_at)
            .unwrap());
        drop(store);
        let store = OffsetStore::open(path).unwrap();
        let mut left: Vec<String> = store.groups().into_iter().map(|g| g.group).collect();
        left.sort();
        assert_eq!(left, vec!["active"], "expired groups stay deleted");
    }

    /// Consumer-protocol subscription metadata (version 0) for `topics`.
    fn subscribing(topics: &[&str]) -> Bytes {
        let mut b = vec![0u8, 0];
        b.extend_from_slice(&i32::try_from(topics.len()).unwrap().to_be_bytes());
        for t in topics {
            b.extend_from_slice(&i16::try_from(t.len()).unwrap().to_be_bytes());
            b.extend_from_slice(t.as_bytes());
        }
        b.extend_from_slice(&(-1i32).to_be_bytes());
        Bytes::from(b)
    }

    #[test]
    fn a_stable_groups_positions_in_topics_it_no_longer_subscribes_to_expire() {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let store = OffsetStore::open(path.clone()).unwrap();
        let commit = |t: &str| crate::storage::Committed {
            topic: t.into(),
            partition: 0,
            offset: 5,
            leader_epoch: -1,
            metadata: None,
        };
        for g in ["g", "opaque"] {
            store
                .commit(g, Some("consumer"), vec![commit("a"), commit("b")])
                .unwrap();
        }
        let now = SystemTime::now();
        backdate(&path, now - 8 * DAY);
        drop(store);
        let store = OffsetStore::open(path.clone()).unwrap();
        // Committed now: kept although no longer subscribed.
        store
            .commit("g", Some("consumer"), vec![commit("c")])
            .unwrap();
        let c = GroupCoordinator::default();
        // "g" subscribes to "a" only; "opaque"'s member sends metadata that does
        // not parse, so every topic counts as subscribed.
        for (group, meta) in [
            ("g", subscribing(&["a"])),
            ("opaque", Bytes::from_static(b"?")),
        ] {
            let r = JoinRequest {
                group: group.into(),
                protocols: vec![("range".into(), meta)],
                ..req("")
            };
            let j = c.join(r).try_recv().expect("completes at once");
            let s = c
                .sync(group, j.generation, &j.member_id, None, vec![])
                .try_recv()
                .unwrap();
            assert_eq!(s.0, codes::NONE);
        }
        let week = 7 * DAY;
        assert!(
            c.expire_offsets(&store, week, now).unwrap().is_empty(),
            "stable groups are never deleted whole"
        );
        let topics = |g: &str| {
            let mut t: Vec<String> = store.fetch_all(g).into_iter().map(|c| c.topic).collect();
            t.sort();
            t
        };
        assert_eq!(topics("g"), ["a", "c"], "b is unsubscribed and old");
        assert_eq!(topics("opaque"), ["a", "b"]);
        drop(store);
        let store = OffsetStore::open(path).unwrap();
        assert_eq!(store.fetch_all("g").len(), 2, "durably");
    }

    #[test]
    fn refused_joins_leave_no_group_and_empty_groups_without_offsets_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path().join("groups")).unwrap();
        let c = GroupCoordinator::default();
        let refused = [
            JoinRequest {
                protocols: Vec::new(),
                ..req("")
            },
            JoinRequest {
                protocol_type: String::new(),
                ..req("")
            },
            req("a-member-id-from-elsewhere"),
        ];
        for r in refused {
            let j = c.join(r).try_recv().unwrap();
            assert_ne!(j.error, codes::NONE);
        }
        assert!(c.overview().is_empty(), "{:?}", c.overview());

        // Members that leave without committing leave an empty group, forgotten
        // at the next cleanup; one with offsets stays, as does one with a member.
        for g in ["left", "committed", "active"] {
            let j = c
                .join(JoinRequest {
                    group: g.into(),
                    ..req("")
                })
                .try_recv()
                .unwrap();
            assert_eq!(j.error, codes::NONE);
            if g != "active" {
                assert_eq!(c.leave(g, &[j.member_id]), Ok(vec![codes::NONE]));
            }
        }
        let commit = crate::storage::Committed {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            leader_epoch: -1,
            metadata: None,
        };
        store
            .commit("committed", Some("consumer"), vec![commit])
            .unwrap();
        // A member id handed out (JoinGroup v4) keeps its group until it lapses.
        let pending = c
            .join(JoinRequest {
                group: "pending".into(),
                require_known_member_id: true,
                ..req("")
            })
            .try_recv()
            .unwrap();
        assert_eq!(pending.error, codes::MEMBER_ID_REQUIRED);
        assert_eq!(c.forget_empty_groups(&store), 1);
        let held: Vec<String> = c.overview().into_iter().map(|o| o.group).collect();
        assert_eq!(held, vec!["active", "committed", "pending"]);
    }

    /// A joined member listing `protocols`.
    fn member(protocols: Vec<(String, Bytes)>) -> Member {
        Member {
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            protocols,
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            last_seen: Instant::now(),
            assignment: Bytes::new(),
            joined: true,
        }
    }

    /// Two members listing 200,000 protocols each, with one in common: checking
    /// a join, and choosing the protocol, compared every protocol of one with
    /// every protocol of the other (4 * 10^10 string comparisons, minutes under
    /// the coordinator's lock). They take a fraction of a second now; the bound
    /// is far above that on a loaded machine.
    #[test]
    fn protocol_checks_are_linear_in_the_protocols_listed() {
        const N: usize = 200_000;
        let list = |tag: &str| -> Vec<(String, Bytes)> {
            let mut v: Vec<(String, Bytes)> = (0..N - 1)
                .map(|i| (format!("{tag}-{i}"), Bytes::new()))
                .collect();
            v.push(("shared".into(), Bytes::new()));
            v
        };
        let (a, b, c) = (list("a"), list("b"), list("c"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut g = Group::new();
            g.members.insert("a".into(), member(a));
            let supported = g.supports_protocols("b", &b);
            let unsupported = g.supports_protocols("c", &c[..N - 1]);
            g.members.insert("b".into(), member(b));
            let _ = tx.send((supported, unsupported, g.select_protocol()));
        });
        let (supported, unsupported, chosen) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the checks take less than 10 s");
        assert!(supported);
        assert!(!unsupported);
        assert_eq!(chosen.as_deref(), Some("shared"));
    }

    #[test]
    fn a_join_listing_more_than_max_protocols_is_refused() {
        let c = GroupCoordinator::default();
        let protocols = |n: usize| -> Vec<(String, Bytes)> {
            (0..n)
                .map(|i| (format!("p{i}"), Bytes::from_static(b"meta")))
                .collect()
        };
        let over = c
            .join(JoinRequest {
                protocols: protocols(MAX_PROTOCOLS + 1),
                ..req("")
            })
            .try_recv()
            .unwrap();
        assert_eq!(over.error, codes::INVALID_REQUEST);
        assert!(c.overview().is_empty(), "no group left behind");
        let first = c
            .join(JoinRequest {
                protocols: protocols(MAX_PROTOCOLS),
                ..req("")
            })
            .try_recv()
            .unwrap();
        assert_eq!(first.error, codes::NONE);
        assert_eq!(first.protocol.as_deref(), Some("p0"));
        // A name listed twice counts once, with its first metadata.
        let twice = c
            .join(JoinRequest {
                group: "twice".into(),
                protocols: vec![
                    ("x".into(), Bytes::from_static(b"first")),
                    ("x".into(), Bytes::from_static(b"second")),
                ],
                ..req("")
            })
            .try_recv()
            .unwrap();
        assert_eq!(twice.error, codes::NONE);
        assert_eq!(twice.protocol.as_deref(), Some("x"));
        assert_eq!(twice.members[0].2, Bytes::from_static(b"first"));
    }

    /// The byte fields of a decoded request share its frame: stored as they
    /// came, a member's metadata or assignment kept the whole frame (up to
    /// `--max-request-bytes`) in memory for as long as the member lived.
    #[test]
    fn members_keep_copies_of_their_metadata_and_assignment_not_the_frame() {
        let frame = Bytes::from(vec![7u8; 1 << 20]);
        let c = GroupCoordinator::default();
        let j = c
            .join(JoinRequest {
                protocols: vec![
                    ("range".into(), frame.slice(..8)),
                    ("other".into(), frame.slice(8..16)),
                ],
                ..req("")
            })
            .try_recv()
            .unwrap();
        assert_eq!(j.error, codes::NONE);
        let assignment = vec![(j.member_id.clone(), frame.slice(16..24))];
        let (error, assigned) = c
            .sync("g", j.generation, &j.member_id, None, assignment)
            .try_recv()
            .unwrap();
        assert_eq!((error, &assigned[..]), (codes::NONE, &frame[16..24]));
        assert_eq!(&j.members[0].2[..], &frame[..8]);
        drop((j, assigned));
        assert!(frame.is_unique(), "the group holds a part of the frame");
        let d = c.describe("g").unwrap();
        assert_eq!(&d.members[0].metadata[..], &frame[..8]);
        assert_eq!(&d.members[0].assignment[..], &frame[16..24]);
    }

    #[test]
    fn single_member_joins_syncs_and_heartbeats() {
        let c = GroupCoordinator::default();
        let j = c.join(req("")).try_recv().expect("completes at once");
        assert_eq!(j.error, codes::NONE);
        assert_eq!(j.leader, j.member_id);
        assert_eq!(j.members.len(), 1);
        let s = c
            .sync(
                "g",
                j.generation,
                &j.member_id,
                None,
                vec![(j.member_id.clone(), Bytes::from_static(b"A"))],
            )
            .try_recv()
            .unwrap();
        assert_eq!(s, (codes::NONE, Bytes::from_static(b"A")));
        assert_eq!(
            c.heartbeat("g", j.generation, &j.member_id, None),
            codes::NONE
        );
        assert_eq!(
            c.heartbeat("g", j.generation + 1, &j.member_id, None),
            codes::ILLEGAL_GENERATION
        );
        assert_eq!(
            c.check_commit("g", j.generation, &j.member_id, None),
            codes::NONE
        );
        assert_eq!(
            c.leave("g", std::slice::from_ref(&j.member_id)),
            Ok(vec![codes::NONE])
        );
        assert_eq!(
            c.heartbeat("g", j.generation, &j.member_id, None),
            codes::UNKNOWN_MEMBER_ID
        );
    }

    #[test]
    fn second_member_triggers_rebalance_of_the_first() {
        let c = GroupCoordinator::default();
        let a = c.join(req("")).try_recv().unwrap();
        let _ = c
            .sync("g", a.generation, &a.member_id, None, vec![])
            .try_recv()
            .unwrap();
        let mut b_rx = c.join(req(""));
        assert!(
            b_rx.try_recv().is_err(),
            "waits for the first member to rejoin"
        );
        assert_eq!(
            c.heartbeat("g", a.generation, &a.member_id, None),
            codes::REBALANCE_IN_PROGRESS
        );
        let a2 = c.join(req(&a.member_id)).try_recv().unwrap();
        let b = b_rx.try_recv().unwrap();
        assert_eq!(a2.generation, a.generation + 1);
        assert_eq!(b.generation, a2.generation);
        assert_eq!(
            a2.members.len() + b.members.len(),
            2,
            "only the leader gets the member list"
        );
    }

    /// A follower waiting in SyncGroup for the leader's assignment cannot heartbeat
    /// (its connection's requests are answered in order). It used to be expired by
    /// its session timeout while it waited, so a leader slower than that never got
    /// the group to Stable. It is now kept up to its rebalance timeout.
    #[test]
    fn a_member_waiting_in_sync_group_outlives_its_session_timeout() {
        // Two members in CompletingRebalance; the follower (rebalance timeout 60 s,
        // session timeout 10 s) waits in SyncGroup, idle for `idle` seconds.
        let waiting = |idle: u64| {
            let c = GroupCoordinator::default();
            let a = c.join(req("")).try_recv().unwrap();
            let mut b_rx = c.join(JoinRequest {
                rebalance_timeout: Duration::from_secs(60),
                ..req("")
            });
            let a = c.join(req(&a.member_id)).try_recv().unwrap();
            let b = b_rx.try_recv().unwrap();
            assert_eq!(a.leader, a.member_id);
            let mut b_sync = c.sync("g", b.generation, &b.member_id, None, vec![]);
            assert!(
                b_sync.try_recv().is_err(),
                "the follower waits for the leader"
            );
            {
                let mut groups = c.lock();
                let m = groups.get_mut("g").unwrap().members.get_mut(&b.member_id);
                m.unwrap().last_seen = Instant::now()
                    .checked_sub(Duration::from_secs(idle))
                    .unwrap();
            }
            c.tick();
            let present = c.lock()["g"].members.contains_key(&b.member_id);
            (c, a, b, b_sync, present)
        };
        let (c, a, b, mut b_sync, present) = waiting(11);
        assert!(present, "expired while it waited for the leader");
        let assignments = vec![
            (a.member_id.clone(), Bytes::from_static(b"for a")),
            (b.member_id.clone(), Bytes::from_static(b"for b")),
        ];
        let mut a_sync = c.sync("g", a.generation, &a.member_id, None, assignments);
        assert_eq!(
            a_sync.try_recv().unwrap(),
            (codes::NONE, Bytes::from_static(b"for a"))
        );
        assert_eq!(
            b_sync.try_recv().unwrap(),
            (codes::NONE, Bytes::from_static(b"for b"))
        );
        // Past its rebalance timeout it is expired all the same.
        let (_, _, _, _, present) = waiting(61);
        assert!(!present, "a member waiting in SyncGroup was kept forever");
    }

    /// A member's commit counts as a heartbeat, as in Kafka: a consumer that
    /// commits keeps its session even when its heartbeats are late.
    #[test]
    fn a_members_commit_keeps_its_session() {
        let c = GroupCoordinator::default();
        let j = c.join(req("")).try_recv().unwrap();
        let s = c.sync("g", j.generation, &j.member_id, None, vec![]);
        assert!(s.blocking_recv().is_ok());
        // Idle for 9 s of its 10 s session, then a commit (allowed, or refused).
        let commit_after_idle = |generation| {
            {
                let mut groups = c.lock();
                let m = groups.get_mut("g").unwrap().members.get_mut(&j.member_id);
                m.unwrap().last_seen = Instant::now().checked_sub(Duration::from_secs(9)).unwrap();
            }
            let code = c.check_commit("g", generation, &j.member_id, None);
            let idle = c.lock()["g"].members[&j.member_id].last_seen.elapsed();
            (code, idle >= Duration::from_secs(9))
        };
        assert_eq!(commit_after_idle(j.generation), (codes::NONE, false));
        // A refused commit is no heartbeat.
        assert_eq!(
            commit_after_idle(j.generation + 1),
            (codes::ILLEGAL_GENERATION, true)
        );
    }

    /// (state, protocol type, protocol, members as (id, metadata, assignment)).
    type Summary = (String, Option<String>, String, Vec<(String, Bytes, Bytes)>);

    fn summary_of(c: &GroupCoordinator) -> Summary {
        let d = c.describe("g").expect("held");
        (
            d.state.to_string(),
            d.protocol_type,
            d.protocol,
            d.members
                .into_iter()
                .map(|m| {
                    assert_eq!(
                        (m.client_id.as_str(), m.client_host.as_str()),
                        ("c", "/127.0.0.1")
                    );
                    (m.member_id, m.metadata, m.assignment)
                })
                .collect(),
        )
    }

    #[test]
    fn describe_and_overview_follow_the_group_through_its_states() {
        let c = GroupCoordinator::default();
        assert!(c.describe("g").is_none());
        assert!(c.overview().is_empty());
        let a = c.join(req("")).try_recv().unwrap();
        let none = Bytes::new();
        assert_eq!(
            summary_of(&c),
            (
                "CompletingRebalance".into(),
                Some("consumer".into()),
                String::new(),
                vec![(a.member_id.clone(), none.clone(), none.clone())]
            ),
            "no protocol, metadata or assignment before the group is stable"
        );
        let synced = c
            .sync(
                "g",
                a.generation,
                &a.member_id,
                None,
                vec![(a.member_id.clone(), Bytes::from_static(b"A"))],
            )
            .try_recv()
            .unwrap();
        assert_eq!(synced, (codes::NONE, Bytes::from_static(b"A")));
        assert_eq!(
            summary_of(&c),
            (
                "Stable".into(),
                Some("consumer".into()),
                "range".into(),
                vec![(
                    a.member_id.clone(),
                    Bytes::from_static(b"meta"),
                    Bytes::from_static(b"A")
                )]
            )
        );
        let _b = c.join(req(""));
        let (state, _, protocol, members) = summary_of(&c);
        assert_eq!(
            (state.as_str(), protocol.as_str(), members.len()),
            ("PreparingRebalance", "", 2)
        );
        assert_eq!(
            c.overview(),
            vec![GroupOverview {
                group: "g".into(),
                state: "PreparingRebalance",
                protocol_type: Some("consumer".into()),
            }]
        );
        let ids: Vec<String> = members.into_iter().map(|(id, _, _)| id).collect();
        assert!(c
            .leave("g", &ids)
            .unwrap()
            .iter()
            .all(|e| *e == codes::NONE));
        assert_eq!(
            summary_of(&c),
            (
                "Empty".into(),
                Some("consumer".into()),
                String::new(),
                vec![]
            ),
            "an empty group keeps its protocol type"
        );
    }

    #[test]
    fn deletion_refuses_members_and_makes_the_group_dead_until_finished() {
        let c = GroupCoordinator::default();
        assert_eq!(c.begin_delete("g", false), codes::GROUP_ID_NOT_FOUND);
        let a = c.join(req("")).try_recv().unwrap();
        assert_eq!(c.begin_delete("g", true), codes::NON_EMPTY_GROUP);
        assert_eq!(
            c.leave("g", std::slice::from_ref(&a.member_id)),
            Ok(vec![codes::NONE])
        );
        assert_eq!(c.begin_delete("g", false), codes::NONE);
        assert_eq!(c.describe("g").unwrap().state, DEAD);
        assert_eq!(
            c.begin_delete("g", true),
            codes::GROUP_ID_NOT_FOUND,
            "already being deleted"
        );
        let j = c.join(req("")).try_recv().unwrap();
        assert_eq!(j.error, codes::COORDINATOR_NOT_AVAILABLE);
        assert_eq!(
            c.heartbeat("g", 1, "m", None),
            codes::COORDINATOR_NOT_AVAILABLE
        );
        assert_eq!(
            c.leave("g", &["m".to_string()]),
            Err(codes::COORDINATOR_NOT_AVAILABLE)
        );
        assert_eq!(
            c.check_commit("g", -1, "", None),
            codes::COORDINATOR_NOT_AVAILABLE
        );
        assert_eq!(
            c.sync("g", 1, "m", None, vec![]).try_recv().unwrap().0,
            codes::COORDINATOR_NOT_AVAILABLE
        );
        c.finish_delete("g");
        assert!(c.describe("g").is_none());
        assert_eq!(c.check_commit("g", -1, "", None), codes::NONE);
        let j = c.join(req("")).try_recv().unwrap();
        assert_eq!((j.error, j.generation), (codes::NONE, 1), "a new group");

        // A group known only by its offsets is deleted through Dead as well.
        assert_eq!(c.begin_delete("offsets-only", true), codes::NONE);
        assert_eq!(
            c.overview()
                .iter()
                .find(|o| o.group == "offsets-only")
                .unwrap()
                .state,
            DEAD
        );
        c.finish_delete("offsets-only");
        assert!(c.describe("offsets-only").is_none());
    }

    /// A JoinGroup of `member` (empty: a new one) as group instance `instance`.
    fn join_as(
        c: &GroupCoordinator,
        member: &str,
        instance: Option<&str>,
    ) -> oneshot::Receiver<JoinResult> {
        let mut r = req(member);
        r.instance_id = instance.map(Into::into);
        c.join(r)
    }

    /// KIP-345: a static member that comes back without its member id (a
    /// restarted consumer) takes over its membership under a new id. A stable
    /// group does not rebalance: the other member keeps heartbeating at its
    /// generation, the new id syncs to the old assignment, and the old id is
    /// fenced wherever it names its instance (unknown where it does not).
    #[test]
    fn a_static_member_rejoining_replaces_itself_without_a_rebalance() {
        let c = GroupCoordinator::default();
        let join = |member: &str, instance: Option<&str>| join_as(&c, member, instance);
        let mut sa = join("", Some("a"));
        let a = sa.try_recv().unwrap();
        assert_eq!((a.error, a.generation), (codes::NONE, 1));
        // A dynamic member joins: the group rebalances to generation 2.
        let mut rb = join("", None);
        let mut ra = join(&a.member_id, Some("a"));
        let (a, b) = (ra.try_recv().unwrap(), rb.try_recv().unwrap());
        assert_eq!((a.generation, b.generation), (2, 2));
        assert_eq!(a.leader, a.member_id, "the static member leads");
        let assignments = vec![
            (a.member_id.clone(), Bytes::from_static(b"for-a")),
            (b.member_id.clone(), Bytes::from_static(b"for-b")),
        ];
        let mut sb = c.sync("g", 2, &b.member_id, None, vec![]);
        let synced = c
            .sync("g", 2, &a.member_id, Some("a"), assignments)
            .try_recv()
            .unwrap();
        assert_eq!(synced, (codes::NONE, Bytes::from_static(b"for-a")));
        assert_eq!(sb.try_recv().unwrap().0, codes::NONE);

        // The static member restarts: no member id, same instance.
        let mut again = join("", Some("a"));
        let a2 = again.try_recv().expect("answered at once, no rebalance");
        assert_eq!(a2.error, codes::NONE);
        assert_eq!(a2.generation, 2);
        assert_ne!(a2.member_id, a.member_id);
        assert_eq!(a2.leader, a.member_id, "the leader id from before");
        assert!(a2.members.is_empty(), "nothing to assign");
        assert_eq!(c.heartbeat("g", 2, &b.member_id, None), codes::NONE);
        assert_eq!(c.heartbeat("g", 2, &a2.member_id, Some("a")), codes::NONE);
        assert_eq!(
            c.sync("g", 2, &a2.member_id, Some("a"), vec![])
                .try_recv()
                .unwrap(),
            (codes::NONE, Bytes::from_static(b"for-a")),
            "the new id has the old assignment"
        );
        // The old id: fenced with its instance, unknown without it.
        assert_eq!(
            c.heartbeat("g", 2, &a.member_id, Some("a")),
            codes::FENCED_INSTANCE_ID
        );
        assert_eq!(
            c.heartbeat("g", 2, &a.member_id, None),
            codes::UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            c.check_commit("g", 2, &a.member_id, Some("a")),
            codes::FENCED_INSTANCE_ID
        );
        assert_eq!(
            c.sync("g", 2, &a.member_id, Some("a"), vec![])
                .try_recv()
                .unwrap()
                .0,
            codes::FENCED_INSTANCE_ID
        );
        assert_eq!(
            join(&a.member_id, Some("a")).try_recv().unwrap().error,
            codes::FENCED_INSTANCE_ID
        );
        assert_eq!(
            c.check_commit("g", 2, &a2.member_id, Some("a")),
            codes::NONE
        );
        // Leaving: by instance with the old id fenced; by instance alone it goes.
        assert_eq!(
            c.leave_identities("g", &[(a.member_id.clone(), Some("a".into()))]),
            Ok(vec![codes::FENCED_INSTANCE_ID])
        );
        assert_eq!(
            c.leave_identities(
                "g",
                &[
                    (String::new(), Some("a".into())),
                    (String::new(), Some("x".into()))
                ]
            ),
            Ok(vec![codes::NONE, codes::UNKNOWN_MEMBER_ID])
        );
        assert_eq!(
            c.heartbeat("g", 2, &b.member_id, None),
            codes::REBALANCE_IN_PROGRESS,
            "a member left: the group rebalances"
        );
    }

    /// A static member replacing itself while the group rebalances: its old
    /// id's pending join is answered FENCED_INSTANCE_ID, and the new id takes
    /// its place in the rebalance (and as leader).
    #[test]
    fn a_static_member_replaced_during_a_rebalance_fences_the_old_join() {
        let c = GroupCoordinator::default();
        let join = |member: &str, instance: Option<&str>| join_as(&c, member, instance);
        let a = join("", Some("a")).try_recv().unwrap();
        assert_eq!((a.error, a.generation), (codes::NONE, 1));
        let mut rm = join("", None);
        let a = join(&a.member_id, Some("a")).try_recv().unwrap();
        let m = rm.try_recv().unwrap();
        assert_eq!((a.generation, m.generation), (2, 2));
        assert_eq!(a.leader, a.member_id);
        // A third member starts a rebalance; the static member rejoins and
        // waits for `m`.
        let mut rd = join("", None);
        let mut old = join(&a.member_id, Some("a"));
        assert!(old.try_recv().is_err(), "waiting for m");
        // Restarted: the old join is fenced, the new id waits in its place.
        let mut fresh = join("", Some("a"));
        assert_eq!(old.try_recv().unwrap().error, codes::FENCED_INSTANCE_ID);
        assert!(fresh.try_recv().is_err(), "still waiting for m");
        let mut rm = join(&m.member_id, None);
        let (a2, d, m) = (
            fresh.try_recv().unwrap(),
            rd.try_recv().unwrap(),
            rm.try_recv().unwrap(),
        );
        assert_eq!(
            (a2.error, a2.generation, d.generation, m.generation),
            (codes::NONE, 3, 3, 3)
        );
        assert_ne!(a2.member_id, a.member_id);
        assert_eq!(a2.leader, a2.member_id, "the new id leads");
        let mut ids: Vec<(String, Option<String>)> = a2
            .members
            .iter()
            .map(|(id, inst, _)| (id.clone(), inst.clone()))
            .collect();
        ids.sort();
        let mut want = vec![
            (a2.member_id.clone(), Some("a".to_string())),
            (d.member_id.clone(), None),
            (m.member_id.clone(), None),
        ];
        want.sort();
        assert_eq!(ids, want);
    }
}
