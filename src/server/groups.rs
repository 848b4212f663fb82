//! Single-node consumer-group coordinator (the classic JoinGroup/SyncGroup protocol).
//!
//! Every join starts a rebalance; it completes when every known member has rejoined or
//! the rebalance timeout passes (members that did not rejoin are dropped). The leader
//! gets the member list, computes assignments client-side and sends them in SyncGroup;
//! followers wait for that. Members are dropped when their session times out.
//!
//! Committed offsets are durable (see [`crate::storage::OffsetStore`]), and so is
//! membership when the coordinator is opened on a directory
//! ([`GroupCoordinator::open`]), as Kafka keeps a group's metadata in
//! `__consumer_offsets`: a group is stored when the leader's SyncGroup completes a
//! rebalance, when a static member replaces itself in a `Stable` group and when
//! it becomes empty, and loaded at start, so that a broker restart neither
//! empties groups nor fails their members' commits. A rebalance completes only
//! once stored: the SyncGroup answers wait for the file, and a failed write
//! answers them COORDINATOR_NOT_AVAILABLE and rebalances the group (a stable
//! generation is never acknowledged unless it was stored). So does a static
//! member's replacement: its JoinGroup is answered, and its new member id takes
//! effect, once stored, and a failed write answers it COORDINATOR_NOT_AVAILABLE
//! with the old member id kept (a member id is never handed out unless a
//! restarted broker would know it); one written but not in force (the group
//! rebalanced or the instance joined again meanwhile) is taken back from the
//! file at once, so that a restarted broker does not fence the old member id,
//! which the group still holds. A static member replacing itself while the
//! group rebalances takes part under its new id at once, and its JoinGroup
//! answer waits until the file names that id (renamed in the file as it is,
//! see [`Group::renames`]). Writes and removals are blocking; the server
//! runs them on its blocking threads ([`GroupCoordinator::store_group`],
//! [`GroupCoordinator::store_changed`]).
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
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    ops::{Deref, DerefMut, RangeInclusive},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::log_limit::{Shown, ShownOpt};
use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use super::codes;
use crate::{
    config::GroupConfig,
    storage::{
        group_meta::{GroupMeta, GroupMetaStore, MemberMeta, ProtocolMeta},
        moment::{Ages, Moment, Pass, PassTime},
        offsets::{from_ms, to_ms},
        OffsetStore,
    },
};

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
    pub(crate) fn error(error: i16, member_id: &str) -> JoinResult {
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
    /// Members the coordinator holds now.
    pub members: usize,
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
    /// Indexed by [`Members`]: changed only by inserting the member again.
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    /// Indexed by [`Members`]: changed only by inserting the member again.
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    assignment: Bytes,
    joined: bool,
}

impl Member {
    /// Its metadata for `protocol` (empty when it does not list it).
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }
}

/// A group's members by member id, with the indexes that keep each request's
/// checks from taking time in the group's size: how many members list each
/// protocol name, and the member id of each static member's instance. (A
/// check that scanned the members cost every join, heartbeat or commit time
/// in the group's size under the coordinator's lock, and forming a group of
/// `n` members time in `n²`.) Read through `Deref`; a member's protocols and
/// instance id change only by [`Members::insert`] of the member again.
#[derive(Debug, Default)]
struct Members {
    by_id: BTreeMap<String, Member>,
    /// How many members list each protocol name (a name a member lists twice
    /// counts once).
    support: HashMap<String, usize>,
    /// The member id of each static member, by its group instance id.
    instances: HashMap<String, String>,
}

impl std::ops::Deref for Members {
    type Target = BTreeMap<String, Member>;

    fn deref(&self) -> &Self::Target {
        &self.by_id
    }
}

impl Members {
    /// Adds (or replaces) member `id`; returns the member it replaced.
    fn insert(&mut self, id: String, m: Member) -> Option<Member> {
        let before = self.remove(&id);
        for name in protocol_names(&m.protocols) {
            *self.support.entry(name.to_string()).or_default() += 1;
        }
        if let Some(i) = &m.instance_id {
            self.instances.insert(i.clone(), id.clone());
        }
        self.by_id.insert(id, m);
        before
    }

    /// Removes member `id`.
    fn remove(&mut self, id: &str) -> Option<Member> {
        let m = self.by_id.remove(id)?;
        for name in protocol_names(&m.protocols) {
            if let Some(n) = self.support.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    self.support.remove(name);
                }
            }
        }
        if let Some(i) = &m.instance_id {
            if self.instances.get(i).is_some_and(|cur| cur == id) {
                self.instances.remove(i);
            }
        }
        Some(m)
    }

    /// Keeps the members `keep` accepts.
    fn retain(&mut self, mut keep: impl FnMut(&String, &Member) -> bool) {
        let gone: Vec<String> = self
            .by_id
            .iter()
            .filter(|(id, m)| !keep(id, m))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    /// Member `id`, to change anything but its protocols and instance id.
    fn get_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.by_id.get_mut(id)
    }

    /// Every member, to change anything but its protocols and instance id.
    fn values_mut(&mut self) -> impl Iterator<Item = &mut Member> {
        self.by_id.values_mut()
    }

    /// Every member by id, to change anything but its protocols and instance
    /// id.
    fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Member)> {
        self.by_id.iter_mut()
    }

    /// The member id static member `instance` (its group instance id) has.
    fn of_instance(&self, instance: &str) -> Option<&String> {
        examined(1);
        self.instances.get(instance)
    }

    /// How many members list protocol `name`.
    fn supporting(&self, name: &str) -> usize {
        examined(1);
        self.support.get(name).copied().unwrap_or(0)
    }
}

/// Counts member ids or protocol names a request or a tick of the
/// coordinator looked up or compared (tests check that this work does not
/// grow with the group's size times its waiting requests).
#[cfg(test)]
fn examined(n: usize) {
    EXAMINED.with(|c| c.set(c.get() + n));
}

#[cfg(not(test))]
#[inline]
fn examined(_: usize) {}

#[cfg(test)]
thread_local! {
    /// What [`examined`] counted on this thread.
    static EXAMINED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[derive(Debug)]
struct Group {
    /// The group id, for the log lines about its members.
    name: String,
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: Members,
    /// The JoinGroup waiting for the rebalance of each member (a member's
    /// later JoinGroup replaces its earlier one, which is dropped).
    pending_joins: HashMap<String, oneshot::Sender<JoinResult>>,
    /// The SyncGroups waiting for the leader's assignment, by member.
    pending_syncs: HashMap<String, Vec<oneshot::Sender<SyncResult>>>,
    /// Members with an OffsetCommit being stored, and how many each (see
    /// [`GroupCoordinator::commit_in_flight`]).
    committing: HashMap<String, usize>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with the instant they lapse
    /// unless the member rejoins with them.
    pending_members: HashMap<String, Instant>,
    /// When the last of `pending_members` was handed out (see [`make_room`]).
    last_handed_out: Option<Instant>,
    rebalance_deadline: Option<Instant>,
    /// The rebalance of a group that was `Empty` waiting for more members to
    /// join before it may complete (Kafka's `InitialDelayedJoin`); ended by
    /// [`GroupCoordinator::tick`].
    initial_join: Option<InitialJoin>,
    /// The members of the current generation that have not sent SyncGroup
    /// since it started, as Kafka's `pendingSyncMembers`: at `sync_deadline`
    /// (the group's rebalance timeout after the generation started) those
    /// still members are removed and the group rebalances. A leader that
    /// never sends its assignment, or an absent static member kept in the
    /// generation, holds the group's partitions no longer than that.
    pending_sync: HashSet<String>,
    /// When the members in `pending_sync` are removed; set while the group
    /// is `CompletingRebalance` or `Stable` with some of them not synced.
    sync_deadline: Option<Instant>,
    /// When the group last became `Empty` (or was created); as stored, for a
    /// group loaded `Empty` (see [`crate::storage::moment`]).
    empty_since: Moment,
    /// Its membership changed since it was last stored: it became `Empty`, the
    /// leader's assignment waits to be stored (`storing`), or a static member
    /// replacing itself in a `Stable` group waits to be stored (`replacements`).
    unstored: bool,
    /// In `CompletingRebalance`: the leader's assignment is set, and the group
    /// becomes `Stable` (answering the SyncGroups waiting) once it is stored.
    storing: bool,
    /// Only while `Stable`, with a membership store: static members replacing
    /// themselves, each in force (and answered) once the membership with its
    /// new id is stored. Until then the old id is the member.
    replacements: Vec<Replacement>,
    /// The file names the new member id of a replacement that a store wrote but
    /// that did not take effect (abandoned or superseded while the write was
    /// under way): this membership, the one written with those replacements
    /// taken back, is to be written at once, in whatever state the group is
    /// (short of `Dead`), unless a store of the group's current membership
    /// replaces the file first. Until then a restarted broker would load a
    /// member id no client holds and fence the old one's holder.
    undo: Option<GroupMeta>,
    /// Static members that took a new member id otherwise than by a
    /// replacement in a `Stable` group (replaced while the group rebalances,
    /// or joining without a member id while the instance is no member, its
    /// old id expired or removed), with a membership store, as (group
    /// instance id, new member id), one per instance: in force here at once
    /// (the rebalance goes on with the new id), while the group's file may
    /// name the instance under an older id until a write covers them (a
    /// write of the group's membership, or of the file as it is with the
    /// instance's member id renamed, see [`GroupCoordinator::store_group`]).
    /// A restarted broker loading the older id would fence the new one's
    /// holder (FENCED_INSTANCE_ID, fatal to clients), so the JoinGroup
    /// answers naming a new id wait in `held_joins` until then.
    renames: Vec<(String, String)>,
    /// Successful JoinGroup answers to new ids of `renames`, sent once a
    /// write covers their rename, or answered COORDINATOR_NOT_AVAILABLE when
    /// it fails (the client joins again without a member id).
    held_joins: Vec<(oneshot::Sender<JoinResult>, JoinResult)>,
    /// The group instance ids the group's file may name: those of the file
    /// loaded or last written, and of any write that failed since (it may
    /// have reached the disk). A static member's new id needs a rename only
    /// when the file may name its instance.
    file_instances: HashSet<String>,
    /// Made `Dead` by [`GroupCoordinator::begin_delete`] for a deletion of a
    /// group the coordinator did not hold (known by its committed offsets
    /// alone): a deletion that fails lets it go rather than make it `Empty`.
    held_for_delete_only: bool,
}

/// A static member's JoinGroup replacing itself in a `Stable` group whose
/// protocol choice stays the same, waiting for the membership with its new id
/// to be stored ([`GroupCoordinator::store_group`]).
#[derive(Debug)]
struct Replacement {
    /// The member id it replaces, a member until the replacement is stored.
    old: String,
    /// Its new member id, which no request knows before it is answered.
    new: String,
    /// The JoinGroup.
    req: JoinRequest,
    /// Its answer.
    tx: oneshot::Sender<JoinResult>,
}

impl Group {
    fn new(name: &str) -> Group {
        Group {
            name: name.to_string(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: Members::default(),
            pending_joins: HashMap::new(),
            pending_syncs: HashMap::new(),
            committing: HashMap::new(),
            pending_members: HashMap::new(),
            last_handed_out: None,
            rebalance_deadline: None,
            initial_join: None,
            pending_sync: HashSet::new(),
            sync_deadline: None,
            empty_since: Moment::now(),
            unstored: false,
            storing: false,
            replacements: Vec::new(),
            undo: None,
            renames: Vec::new(),
            held_joins: Vec::new(),
            file_instances: HashSet::new(),
            held_for_delete_only: false,
        }
    }

    /// Whether the group's state is one that is stored: `Empty`, `Stable`, or
    /// `CompletingRebalance` with the leader's assignment set.
    fn storable(&self) -> bool {
        match self.state {
            State::Empty | State::Stable => true,
            State::CompletingRebalance => self.storing,
            State::PreparingRebalance | State::Dead => false,
        }
    }

    /// Whether the group has membership to store now. A change made in a state
    /// that is not stored is dropped: the rebalance under way stores the group
    /// when it completes, and an emptied group is stored as such.
    fn take_unstored(&mut self) -> bool {
        if self.unstored && !self.storable() {
            self.unstored = false;
        }
        self.unstored
    }

    /// Whether a store of the group would write now: its membership changed
    /// ([`Group::take_unstored`]), or its file is to be undone (not while the
    /// group is `Dead`: its file is being removed).
    fn take_store_due(&mut self) -> bool {
        self.take_unstored() || self.file_due() && self.state != State::Dead
    }

    /// Whether the group's file is to be written whatever the group's state:
    /// to undo replacements that did not take effect ([`Group::undo`]), or to
    /// name the new ids of members replaced while not `Stable`
    /// ([`Group::renames`]).
    fn file_due(&self) -> bool {
        self.undo.is_some() || !self.renames.is_empty()
    }

    /// Whether the group has membership to store: it changed since it was
    /// last stored, or its file is due ([`Group::file_due`]).
    fn membership_unstored(&self) -> bool {
        self.unstored || self.file_due()
    }

    /// Records that group instance `instance` took member id `new` (see
    /// [`Group::renames`]), superseding a rename of the instance still due
    /// (a write under way that covers the older one leaves this one due).
    fn rename(&mut self, instance: &str, new: &str) {
        if !self.file_instances.contains(instance) {
            return;
        }
        self.renames.retain(|(i, _)| i != instance);
        self.renames.push((instance.to_string(), new.to_string()));
    }

    /// A write of the group's file that covers the renames `covered` (those
    /// of [`Group::renames`] when it read the group) completed, successfully
    /// when `ok`: those renames are done, and the JoinGroup answers held for
    /// their new ids are sent (UNKNOWN_MEMBER_ID to an id no longer a
    /// member, removed meanwhile); when it failed, those answers are
    /// COORDINATOR_NOT_AVAILABLE (a member id is never handed out unless a
    /// restarted broker would know it) and the renames stay due.
    fn finish_renames(&mut self, covered: &[(String, String)], ok: bool) {
        if ok {
            self.renames.retain(|r| !covered.contains(r));
        }
        let longest = self.longest_rebalance_timeout();
        for (tx, j) in std::mem::take(&mut self.held_joins) {
            if !self.renames.iter().any(|(_, new)| *new == j.member_id) {
                let answer = if let Some(m) = self.members.get_mut(&j.member_id) {
                    // Its session and its due SyncGroup run from its answer,
                    // as Kafka's run from the completion it answers at once:
                    // a member cannot heartbeat or sync before it knows its id.
                    let now = Instant::now();
                    m.last_seen = now;
                    if self.pending_sync.contains(&j.member_id) {
                        let due = now + longest;
                        self.sync_deadline = Some(self.sync_deadline.map_or(due, |d| d.max(due)));
                    }
                    self.followers_waited(&j.member_id, now);
                    j
                } else {
                    JoinResult::error(codes::UNKNOWN_MEMBER_ID, "")
                };
                let _ = tx.send(answer);
            } else if !ok && covered.iter().any(|(_, new)| *new == j.member_id) {
                tracing::warn!(group = %Shown(&self.name), member = %Shown(&j.member_id), "a static member replaced during a rebalance could not be stored under its new id: its JoinGroup is refused");
                self.followers_waited(&j.member_id, Instant::now());
                let _ = tx.send(JoinResult::error(codes::COORDINATOR_NOT_AVAILABLE, ""));
            } else {
                self.held_joins.push((tx, j));
            }
        }
    }

    /// The held JoinGroup of `member` was answered at `now`, successfully or
    /// not: when it leads, the followers waiting in SyncGroup for its
    /// assignment, spared by the tick while it was held, waited for that
    /// answer too, and their sessions restart at it (else the next tick
    /// expired them on the time they spent waiting).
    fn followers_waited(&mut self, member: &str, now: Instant) {
        if self.leader.as_deref() != Some(member) {
            return;
        }
        let waiting: Vec<String> = self.pending_syncs.keys().cloned().collect();
        for id in waiting {
            if let Some(m) = self.members.get_mut(&id) {
                m.last_seen = now;
            }
        }
    }

    /// Answers the JoinGroups of the replacements waiting to be stored with
    /// REBALANCE_IN_PROGRESS, as the group leaves `Stable`: none takes effect
    /// (their new ids never existed), and each member, which sent no member id,
    /// joins again as it would have had the group been rebalancing already.
    fn abandon_replacements(&mut self) {
        for r in self.replacements.drain(..) {
            tracing::info!(group = %Shown(&self.name), old_member = %Shown(&r.old), instance = %ShownOpt(r.req.instance_id.as_deref()), "a static member's replacement waiting to be stored is abandoned: the group left Stable");
            let _ =
                r.tx.send(JoinResult::error(codes::REBALANCE_IN_PROGRESS, ""));
        }
    }

    /// The group loses its last member: `Empty`, keeping its generation and
    /// protocol type, to be stored.
    fn become_empty(&mut self) {
        self.abandon_replacements();
        self.state = State::Empty;
        self.empty_since = Moment::now();
        self.leader = None;
        self.protocol = None;
        self.rebalance_deadline = None;
        self.initial_join = None;
        self.clear_pending_sync();
        self.storing = false;
        self.unstored = true;
    }

    /// No member is waited for in SyncGroup any more (a rebalance starts, or
    /// the group is empty).
    fn clear_pending_sync(&mut self) {
        self.pending_sync.clear();
        self.sync_deadline = None;
    }

    /// `member_id` sent a valid SyncGroup for the current generation.
    fn synced(&mut self, member_id: &str) {
        self.pending_sync.remove(member_id);
        if self.pending_sync.is_empty() {
            self.sync_deadline = None;
        }
    }

    /// The members that had to send SyncGroup by `sync_deadline` and did not,
    /// when it has passed, taken out of `pending_sync`. The old id of a
    /// static member whose rejoin waits to be stored stays there, judged
    /// once the store decides: stored, its new id inherits the due sync (see
    /// [`Group::take_over`]) and is removed at the next tick unless it has
    /// synced, as Kafka moves the due sync to the new id at once; not
    /// stored, the old id is removed.
    fn take_unsynced(&mut self, now: Instant) -> Vec<String> {
        if !matches!(self.state, State::CompletingRebalance | State::Stable)
            || self.sync_deadline.is_none_or(|d| now < d)
        {
            return Vec::new();
        }
        let (members, replacements) = (&self.members, &self.replacements);
        // Nor is a member whose JoinGroup answer is held (see `held_joins`):
        // it cannot sync before it knows its id.
        let held: HashSet<&str> = self
            .held_joins
            .iter()
            .map(|(_, j)| j.member_id.as_str())
            .collect();
        let mut unsynced = Vec::new();
        self.pending_sync.retain(|id| {
            if !members.contains_key(id) {
                return false;
            }
            if held.contains(id.as_str()) || replacements.iter().any(|r| &r.old == id) {
                return true;
            }
            unsynced.push(id.clone());
            false
        });
        if self.pending_sync.is_empty() {
            self.sync_deadline = None;
        }
        unsynced
    }

    /// The leader's assignment is in force: the group is `Stable` and every
    /// member waiting in SyncGroup gets its assignment.
    fn complete_sync(&mut self) {
        self.state = State::Stable;
        self.storing = false;
        for (id, txs) in self.pending_syncs.drain() {
            let a = self
                .members
                .get(&id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default();
            for tx in txs {
                let _ = tx.send((codes::NONE, a.clone()));
            }
        }
    }

    /// The membership to store, as Kafka's `GroupMetadata` record holds it, with
    /// the replacements waiting to be stored in force.
    fn to_meta(&self) -> GroupMeta {
        let has_members = !self.members.is_empty();
        let by_old: HashMap<&str, &Replacement> = self
            .replacements
            .iter()
            .map(|r| (r.old.as_str(), r))
            .collect();
        let replacement = |id: &str| by_old.get(id).copied();
        GroupMeta {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone().filter(|_| has_members),
            leader: self
                .leader
                .as_ref()
                .filter(|_| has_members)
                .map(|id| replacement(id).map_or(id, |r| &r.new).clone()),
            empty_since_ms: (self.state == State::Empty).then(|| to_ms(self.empty_since.wall())),
            members: self
                .members
                .iter()
                .map(|(id, m)| member_meta(id, m, replacement(id)))
                .collect(),
        }
    }

    /// A group loaded from its stored membership at `now`: `Stable` at the stored
    /// generation with its members, each member's session starting `now`, or
    /// `Empty` with the stored generation and protocol type. Why not, when the
    /// membership is inconsistent.
    fn from_meta(name: &str, meta: GroupMeta, now: Instant) -> Result<Group, String> {
        let mut g = Group::new(name);
        g.generation = meta.generation;
        g.protocol_type = meta.protocol_type;
        if meta.members.is_empty() {
            // As below: the next rebalance would hand out negative
            // generations from one below 0. (0 is a group emptied before its
            // first generation; the one after i32::MAX is 1.)
            if g.generation < 0 {
                return Err(format!(
                    "is empty at generation {}, which no JoinGroup gives",
                    g.generation
                ));
            }
            // A time before 1970 would make the group expire at the next pass.
            // One ahead of the clock (a clock set back) is kept as it is: it
            // ages from the expiry pass that first finds it ahead (see
            // `crate::storage::moment`). Capped at the start's clock, it made
            // a group look as old as the clock's error once a clock behind at
            // the start was set right.
            if let Some(ms) = meta.empty_since_ms.filter(|&ms| ms < 0) {
                return Err(format!("has been empty since {ms} ms, before 1970"));
            }
            g.empty_since = meta
                .empty_since_ms
                .map_or_else(Moment::now, |ms| Moment::stored(from_ms(ms)));
            return Ok(g);
        }
        let (Some(protocol), Some(leader)) = (meta.protocol, meta.leader) else {
            return Err("lists members without a protocol or a leader".into());
        };
        if g.protocol_type.is_none() {
            return Err("lists members without a protocol type".into());
        }
        // A generation or timeout no JoinGroup can give (timeouts are i32
        // milliseconds) is damage: the next rebalance would hand out a
        // negative generation, or its deadline past what an `Instant` holds.
        if g.generation < 1 {
            return Err(format!("lists members at generation {}", g.generation));
        }
        let mut instances = HashSet::new();
        for m in meta.members {
            let most = u64::try_from(i32::MAX).unwrap_or(u64::MAX);
            if m.session_timeout_ms > most || m.rebalance_timeout_ms > most {
                return Err(format!(
                    "lists member {} with a session or rebalance timeout ({} / {} ms) above {most} ms",
                    m.member_id, m.session_timeout_ms, m.rebalance_timeout_ms
                ));
            }
            if !m.protocols.iter().any(|p| p.name == protocol) {
                return Err(format!(
                    "lists member {}, which does not support the group's protocol {protocol}",
                    m.member_id
                ));
            }
            if let Some(i) = &m.instance_id {
                if !instances.insert(i.clone()) {
                    return Err(format!("lists group instance id {i} twice"));
                }
            }
            let member = Member {
                instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                protocols: m
                    .protocols
                    .into_iter()
                    .map(|p| (p.name, p.metadata))
                    .collect(),
                session_timeout: Duration::from_millis(m.session_timeout_ms),
                rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                last_seen: now,
                assignment: m.assignment,
                joined: true,
            };
            if g.members.insert(m.member_id.clone(), member).is_some() {
                return Err(format!("lists member {} twice", m.member_id));
            }
        }
        if !g.members.contains_key(&leader) {
            return Err(format!("names leader {leader}, which is not a member"));
        }
        g.state = State::Stable;
        g.protocol = Some(protocol);
        g.leader = Some(leader);
        g.file_instances = instances;
        Ok(g)
    }

    /// How long a rebalance may wait for its members: the longest of their
    /// rebalance timeouts, as Kafka's group rebalance timeout.
    fn longest_rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::from_secs(5))
    }

    fn start_rebalance(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            self.abandon_replacements();
            self.state = State::PreparingRebalance;
            self.storing = false;
            for m in self.members.values_mut() {
                m.joined = false;
            }
            self.rebalance_deadline = Some(now + self.longest_rebalance_timeout());
            self.clear_pending_sync();
            for tx in self.pending_syncs.drain().flat_map(|(_, txs)| txs) {
                let _ = tx.send((codes::REBALANCE_IN_PROGRESS, Bytes::new()));
            }
        }
    }

    /// Completes the rebalance when every member rejoined (or `force`, at the
    /// rebalance deadline: dropping the dynamic members that did not).
    fn try_complete(&mut self, force: bool) {
        if self.state != State::PreparingRebalance || (!force && self.initial_join.is_some()) {
            return;
        }
        self.initial_join = None;
        // As Kafka's `hasAllMembersJoined`, a member id just handed out with
        // MEMBER_ID_REQUIRED is waited for too (until it lapses, or the
        // deadline): its client is joining, and a generation without it would
        // be followed at once by another, every member revoking twice.
        if !force {
            let now = Instant::now();
            if self.members.values().any(|m| !m.joined)
                || self.pending_members.values().any(|&lapses| lapses > now)
            {
                return;
            }
        }
        // As Kafka's `onCompleteJoin`: a static member (KIP-345) that did not
        // rejoin stays, with its last join's protocols, in the leader's list,
        // until its session runs out; back within it, it gets its partitions
        // again without another rebalance. Dynamic ones are dropped.
        self.members.retain(|id, m| {
            let keep = m.joined || m.instance_id.is_some();
            if !keep {
                tracing::info!(group = %Shown(&self.name), member = %Shown(id), "dropping member that did not rejoin in time");
            }
            keep
        });
        if self.members.is_empty() {
            self.rebalance_deadline = None;
            self.become_empty();
            return;
        }
        // The leader is one that rejoined. With none (only absent static
        // members left), no generation can start: the rebalance waits
        // another rebalance timeout while their sessions run out, as
        // Kafka's `maybeElectNewJoinedLeader` has it.
        let leader = match &self.leader {
            Some(l) if self.members.get(l).is_some_and(|m| m.joined) => l.clone(),
            _ => match self.members.iter().find(|(_, m)| m.joined) {
                Some((id, _)) => id.clone(),
                None => {
                    let longest = self.longest_rebalance_timeout();
                    tracing::info!(group = %Shown(&self.name), members = self.members.len(), "no member rejoined in time; the rebalance waits for the absent static members' sessions");
                    self.rebalance_deadline = Some(Instant::now() + longest);
                    return;
                }
            },
        };
        self.rebalance_deadline = None;
        let Some(protocol) = self.select_protocol() else {
            for (id, tx) in self.pending_joins.drain() {
                let _ = tx.send(JoinResult::error(codes::INCONSISTENT_GROUP_PROTOCOL, &id));
            }
            return;
        };
        // After i32::MAX comes 1, not a negative generation (Kafka's wraps),
        // which a restart would read back as damage and drop the membership.
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        self.protocol = Some(protocol.clone());
        // A member's session restarts when its join completes: one that waited
        // longer than its session timeout for the others is not expired for it.
        // So does an absent static member's, as Kafka restarts every member's
        // heartbeat timer at the completion.
        let now = Instant::now();
        for m in self.members.values_mut() {
            m.last_seen = now;
        }
        self.leader = Some(leader.clone());
        self.state = State::CompletingRebalance;
        // As Kafka's `schedulePendingSync`: every member sends SyncGroup
        // within the rebalance timeout, or is removed.
        self.pending_sync = self.members.keys().cloned().collect();
        self.sync_deadline = Some(now + self.longest_rebalance_timeout());
        let all = self.member_list(&protocol);
        for (id, tx) in self.pending_joins.drain() {
            let held = self.renames.iter().any(|(_, new)| *new == id);
            let j = JoinResult {
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
            };
            if held {
                self.held_joins.push((tx, j));
            } else {
                let _ = tx.send(j);
            }
        }
        tracing::info!(group = %Shown(&self.name), generation = self.generation, members = self.members.len(), protocol = %Shown(&protocol), "group rebalanced");
    }

    /// Every member (id, instance id) with its metadata for `protocol`: what
    /// the leader's JoinGroup answer lists.
    fn member_list(&self, protocol: &str) -> Vec<(String, Option<String>, Bytes)> {
        self.members
            .iter()
            .map(|(id, m)| (id.clone(), m.instance_id.clone(), m.metadata_for(protocol)))
            .collect()
    }

    /// The protocol a rebalance would choose now (see [`choose_protocol`]).
    fn select_protocol(&self) -> Option<String> {
        choose_protocol(
            self.members.values().map(|m| m.protocols.as_slice()),
            self.protocol.as_deref(),
        )
    }

    /// The protocol a rebalance would choose once the replacements waiting to
    /// be stored, and member `old` replaced by `new` with `protocols`, are in
    /// force (members are taken in the order of their ids, as a rebalance
    /// takes them).
    fn select_protocol_replacing(
        &self,
        old: &str,
        new: &str,
        protocols: &[(String, Bytes)],
    ) -> Option<String> {
        let by_old: HashMap<&str, &Replacement> = self
            .replacements
            .iter()
            .map(|r| (r.old.as_str(), r))
            .collect();
        let mut members: Vec<(&str, &[(String, Bytes)])> = self
            .members
            .iter()
            .map(|(id, m)| {
                if id == old {
                    return (new, protocols);
                }
                match by_old.get(id.as_str()) {
                    Some(r) => (r.new.as_str(), r.req.protocols.as_slice()),
                    None => (id.as_str(), m.protocols.as_slice()),
                }
            })
            .collect();
        members.sort_unstable_by(|a, b| a.0.cmp(b.0));
        choose_protocol(
            members.into_iter().map(|(_, p)| p),
            self.protocol.as_deref(),
        )
    }

    /// The member id that static member `instance` (its group instance id)
    /// has now.
    fn static_member(&self, instance: &str) -> Option<&String> {
        self.members.of_instance(instance)
    }

    /// As Kafka's `validateCurrentMember` for JoinGroup, SyncGroup,
    /// Heartbeat and OffsetCommit: FENCED_INSTANCE_ID when `instance` has
    /// another member id now, UNKNOWN_MEMBER_ID when no member has it (a
    /// member id that is known would otherwise be served as a static member
    /// it is not).
    fn instance_error(&self, instance: Option<&str>, member_id: &str) -> Option<i16> {
        let instance = instance?;
        match self.static_member(instance) {
            Some(id) if id != member_id => Some(codes::FENCED_INSTANCE_ID),
            Some(_) => None,
            None => Some(codes::UNKNOWN_MEMBER_ID),
        }
    }

    /// A static member rejoining without its member id (a restarted consumer
    /// with the same `group.instance.id`) takes over its old membership under
    /// a new id, as in Kafka: the old id is fenced, its pending join or sync
    /// answered with FENCED_INSTANCE_ID, and its assignment kept. A `Stable`
    /// group whose protocol choice stays the same does not rebalance: the
    /// member gets the current generation, with the leader id from before the
    /// replacement (so a rejoining leader does not assign again; its SyncGroup
    /// returns its assignment). With a membership store (`stores`) that answer,
    /// and the replacement itself, wait until the membership with the new id is
    /// stored, as Kafka's `updateStaticMemberAndRebalance` answers once the
    /// group is stored ([`GroupCoordinator::store_group`]); without one the
    /// member is answered at once. Otherwise the group rebalances.
    fn replace_static_member(
        &mut self,
        old: &str,
        new: String,
        req: JoinRequest,
        tx: oneshot::Sender<JoinResult>,
        now: Instant,
        stores: bool,
    ) {
        if !self.members.contains_key(old) {
            return;
        }
        // A replacement of the same member still waiting to be stored is
        // superseded: its new id never took effect, and its JoinGroup is fenced
        // as a pending join of a replaced id is.
        for r in std::mem::take(&mut self.replacements) {
            if r.old == old {
                tracing::info!(group = %Shown(&self.name), old_member = %Shown(old), instance = %ShownOpt(r.req.instance_id.as_deref()), "a static member's replacement waiting to be stored is superseded by another");
                let _ = r.tx.send(JoinResult::error(codes::FENCED_INSTANCE_ID, ""));
            } else {
                self.replacements.push(r);
            }
        }
        if self.state == State::Stable
            && self.select_protocol_replacing(old, &new, &req.protocols) == self.protocol
        {
            if stores {
                // The instance is alive: its old id is not expired while the
                // new one is being stored, and is the member again if the
                // store fails.
                if let Some(m) = self.members.get_mut(old) {
                    m.last_seen = now;
                }
                self.replacements.push(Replacement {
                    old: old.to_string(),
                    new,
                    req,
                    tx,
                });
                self.unstored = true;
                return;
            }
            let leader_before = self.take_over(old, new.clone(), req, now);
            let _ = tx.send(self.stable_join(new, leader_before));
            return;
        }
        let instance = req.instance_id.clone();
        self.take_over(old, new.clone(), req, now);
        if let Some(instance) = instance.filter(|_| stores) {
            self.rename(&instance, &new);
        }
        self.start_rebalance(now);
        if let Some(m) = self.members.get_mut(&new) {
            m.joined = true;
        }
        self.pending_joins.insert(new, tx);
        self.try_complete(false);
    }

    /// Member `old` becomes `new`, with the protocols, timeouts and client of
    /// `req`, keeping its assignment; `old` is fenced (its pending join or sync
    /// gets FENCED_INSTANCE_ID) and `new` leads in its place. Returns the leader
    /// id from before.
    fn take_over(&mut self, old: &str, new: String, req: JoinRequest, now: Instant) -> String {
        let leader_before = self.leader.clone().unwrap_or_default();
        let Some(mut m) = self.members.remove(old) else {
            return leader_before;
        };
        if let Some(t) = self.pending_joins.remove(old) {
            let _ = t.send(JoinResult::error(codes::FENCED_INSTANCE_ID, old));
        }
        for (t, j) in std::mem::take(&mut self.held_joins) {
            if j.member_id == old {
                let _ = t.send(JoinResult::error(codes::FENCED_INSTANCE_ID, old));
            } else {
                self.held_joins.push((t, j));
            }
        }
        for t in self.pending_syncs.remove(old).into_iter().flatten() {
            let _ = t.send((codes::FENCED_INSTANCE_ID, Bytes::new()));
        }
        if self.leader.as_deref() == Some(old) {
            self.leader = Some(new.clone());
        }
        // As Kafka's `replaceStaticMember`: the new id has to sync if the old
        // one had.
        if self.pending_sync.remove(old) {
            self.pending_sync.insert(new.clone());
        }
        m.client_id = req.client_id;
        m.client_host = req.client_host;
        m.protocols = req.protocols;
        m.session_timeout = req.session_timeout;
        m.rebalance_timeout = req.rebalance_timeout;
        m.last_seen = now;
        tracing::info!(group = %Shown(&self.name), old_member = %Shown(old), member = %Shown(&new), instance = %ShownOpt(m.instance_id.as_deref()), "static member replaced");
        self.members.insert(new, m);
        leader_before
    }

    /// The answer to a static member that replaced itself in a `Stable` group
    /// under `new`: the current generation, without a rebalance, and
    /// `leader_before`, the leader id from before the replacement.
    fn stable_join(&self, new: String, leader_before: String) -> JoinResult {
        JoinResult {
            error: codes::NONE,
            generation: self.generation,
            protocol: self.protocol.clone(),
            protocol_type: self.protocol_type.clone(),
            leader: leader_before,
            member_id: new,
            members: Vec::new(),
        }
    }

    /// A store of the membership with the replacements `stored` (by new id) in
    /// force completed, successfully when `ok`: those replacements take effect
    /// and are answered; when it failed their JoinGroups get
    /// COORDINATOR_NOT_AVAILABLE (clients look the coordinator up again and
    /// rejoin) and their old ids stay members, as Kafka reverts a static
    /// member's replacement it could not store. Replacements since abandoned or
    /// superseded were answered then; those made after the store read the
    /// group wait for the next store. Returns the new ids now in force.
    fn finish_replacements(&mut self, stored: &[String], ok: bool, now: Instant) -> Vec<String> {
        let stored: HashSet<&str> = stored.iter().map(String::as_str).collect();
        let mut installed = Vec::new();
        for r in std::mem::take(&mut self.replacements) {
            if !stored.contains(r.new.as_str()) {
                self.replacements.push(r);
                continue;
            }
            if !ok {
                tracing::warn!(group = %Shown(&self.name), old_member = %Shown(&r.old), instance = %ShownOpt(r.req.instance_id.as_deref()), "a static member's replacement could not be stored: the old member id stays");
                let _ =
                    r.tx.send(JoinResult::error(codes::COORDINATOR_NOT_AVAILABLE, ""));
                continue;
            }
            // Replacements wait only while the group is `Stable` with their
            // old member (leaving `Stable` abandons them, and expiry spares
            // the member); checked all the same.
            if self.state != State::Stable || !self.members.contains_key(&r.old) {
                let _ =
                    r.tx.send(JoinResult::error(codes::REBALANCE_IN_PROGRESS, ""));
                continue;
            }
            let leader_before = self.take_over(&r.old, r.new.clone(), r.req, now);
            installed.push(r.new.clone());
            let _ = r.tx.send(self.stable_join(r.new, leader_before));
        }
        installed
    }

    /// Whether `protocols` include one that every member other than `member_id`
    /// supports, so that a rebalance with it can still choose a protocol.
    /// Looked up in the members' protocol counts: time in the protocols
    /// listed, not in the group's size.
    fn supports_protocols(&self, member_id: &str, protocols: &[(String, Bytes)]) -> bool {
        let mine = self
            .members
            .get(member_id)
            .map(|m| protocol_names(&m.protocols));
        let others = self.members.len() - usize::from(mine.is_some());
        protocol_names(protocols).into_iter().any(|name| {
            let listed_by_me = mine.as_ref().is_some_and(|p| p.contains(name));
            self.members.supporting(name) - usize::from(listed_by_me) == others
        })
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

impl Group {
    /// Whether the group is in use: members, joins waiting, or handed-out
    /// member ids (see [`MAX_GROUPS`]).
    fn in_use(&self) -> bool {
        !self.members.is_empty()
            || !self.pending_joins.is_empty()
            || !self.pending_members.is_empty()
    }

    /// Whether the group holds nothing but member ids handed out with
    /// MEMBER_ID_REQUIRED: started by such a join, it never had a member, a
    /// protocol or a generation (see [`make_room`]).
    fn only_handed_out_ids(&self) -> bool {
        self.never_joined() && !self.pending_members.is_empty()
    }

    /// Whether the group never had a member, a protocol or a generation,
    /// and has no join, sync or commit under way: what a new group holds,
    /// but for member ids handed out with MEMBER_ID_REQUIRED.
    fn never_joined(&self) -> bool {
        self.state == State::Empty
            && self.generation == 0
            && self.protocol_type.is_none()
            && self.members.is_empty()
            && self.pending_joins.is_empty()
            && self.pending_syncs.is_empty()
            && self.committing.is_empty()
    }

    /// The metadata a consumer group's members sent for the group's protocol,
    /// to be read by [`subscribed_topics`] once the coordinator's lock is let
    /// go (a member's metadata may be as large as a request); `None` for a
    /// group of another protocol type or a member without metadata.
    fn subscription_metadata(&self) -> Option<Vec<Bytes>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        self.members
            .values()
            .map(|m| {
                m.protocols
                    .iter()
                    .find(|(name, _)| Some(name) == self.protocol.as_ref())
                    .or_else(|| m.protocols.first())
                    .map(|(_, b)| b.clone())
            })
            .collect()
    }
}

/// Whether the coordinator may forget `group` (see
/// [`GroupCoordinator::forget_empty_groups`]): `Empty`, with no member ids handed
/// out, no joins or syncs waiting, and no committed offsets in `store`.
fn forgettable(store: &OffsetStore, name: &str, g: &Group) -> bool {
    g.state == State::Empty
        && g.members.is_empty()
        && g.pending_members.is_empty()
        && g.pending_joins.is_empty()
        && g.pending_syncs.is_empty()
        && store.group(name).is_none()
}

/// The topics the members' subscription `metadata` (see
/// [`Group::subscription_metadata`]) subscribe to; `None` when one does not
/// parse (every topic counts then).
fn subscribed_topics(metadata: Option<Vec<Bytes>>) -> Option<BTreeSet<String>> {
    let mut topics = BTreeSet::new();
    for m in metadata? {
        subscription(&m, &mut topics)?;
    }
    Some(topics)
}

/// Member `id` as stored: with replacement `r` in force, under its new id with
/// the protocols, timeouts and client of its JoinGroup.
fn member_meta(id: &str, m: &Member, r: Option<&Replacement>) -> MemberMeta {
    let (member_id, client_id, client_host, protocols, session, rebalance) = match r {
        Some(r) => (
            r.new.as_str(),
            &r.req.client_id,
            &r.req.client_host,
            &r.req.protocols,
            r.req.session_timeout,
            r.req.rebalance_timeout,
        ),
        None => (
            id,
            &m.client_id,
            &m.client_host,
            &m.protocols,
            m.session_timeout,
            m.rebalance_timeout,
        ),
    };
    MemberMeta {
        member_id: member_id.to_string(),
        instance_id: m.instance_id.clone(),
        client_id: client_id.clone(),
        client_host: client_host.clone(),
        session_timeout_ms: duration_ms(session),
        rebalance_timeout_ms: duration_ms(rebalance),
        protocols: protocols
            .iter()
            .map(|(name, metadata)| ProtocolMeta {
                name: name.clone(),
                metadata: metadata.clone(),
            })
            .collect(),
        assignment: m.assignment.clone(),
    }
}

/// Stored membership `meta` with the replacements `undone` taken back: each
/// new member id (and the leader, when it is one) back to the old member as
/// the file held it before.
fn undo_replacements<'a>(
    meta: &GroupMeta,
    undone: impl Iterator<Item = &'a (String, MemberMeta)>,
) -> GroupMeta {
    let mut meta = meta.clone();
    for (new, old) in undone {
        if meta.leader.as_ref() == Some(new) {
            meta.leader = Some(old.member_id.clone());
        }
        for m in &mut meta.members {
            if m.member_id == *new {
                *m = old.clone();
            }
        }
    }
    meta
}

/// The names of `protocols`, each once. The protocol checks intersect these
/// sets, so that they take time linear in the protocols listed: comparing
/// every protocol of a member with every protocol of each other one took
/// minutes, under the coordinator's lock, for two lists of 200,000.
fn protocol_names(protocols: &[(String, Bytes)]) -> HashSet<&str> {
    protocols.iter().map(|(n, _)| n.as_str()).collect()
}

/// The protocol a rebalance of members supporting `members` (each member's
/// protocols, the members in the order of their ids) chooses, as Kafka's
/// `selectProtocol`: each member votes for its first protocol that every
/// member supports, and the most votes win. A tie (which Kafka breaks by
/// hash order) goes to `current`, the group's protocol, when it is among
/// the tied, so that a member's new id (a static member's restart) does
/// not change it; else to the tied protocol voted first in member order.
fn choose_protocol<'a>(
    members: impl Iterator<Item = &'a [(String, Bytes)]>,
    current: Option<&str>,
) -> Option<String> {
    let members: Vec<&[(String, Bytes)]> = members.collect();
    let (first, rest) = members.split_first()?;
    let mut common = protocol_names(first);
    for m in rest {
        let theirs = protocol_names(m);
        common.retain(|n| theirs.contains(n));
    }
    // Protocol → (votes, the first voter's position).
    let mut votes: HashMap<&str, (usize, usize)> = HashMap::new();
    for (at, m) in members.iter().enumerate() {
        if let Some((n, _)) = m.iter().find(|(n, _)| common.contains(n.as_str())) {
            votes.entry(n.as_str()).or_insert((0, at)).0 += 1;
        }
    }
    let most = votes.values().map(|&(v, _)| v).max()?;
    if let Some(c) = current.filter(|c| votes.get(c).is_some_and(|&(v, _)| v == most)) {
        return Some(c.to_string());
    }
    votes
        .into_iter()
        .filter(|&(_, (v, _))| v == most)
        .min_by_key(|&(_, (_, at))| at)
        .map(|(n, _)| n.to_string())
}

/// The most bytes of a client id a member id begins with (see
/// [`new_member_id`]).
pub const MEMBER_ID_CLIENT_BYTES: usize = 255;

/// A new member id: the client id (`member` when empty) and a random UUID, as
/// Kafka's `<client.id>-<uuid>`, but with at most the first
/// [`MEMBER_ID_CLIENT_BYTES`] bytes of the client id (cut at a character
/// boundary), which a request header may make 32 KiB long. The UUID keeps the
/// ids unique; member ids sharing a long prefix made every comparison of them
/// (map look-ups by member id among them) cost that prefix.
fn new_member_id(client_id: &str) -> String {
    let mut end = client_id.len().min(MEMBER_ID_CLIENT_BYTES);
    while !client_id.is_char_boundary(end) {
        end -= 1;
    }
    let prefix = if client_id.is_empty() {
        "member"
    } else {
        &client_id[..end]
    };
    format!(
        "{prefix}-{}",
        uuid::Uuid::from_u128(crate::storage::random_id())
    )
}

/// `d` in whole milliseconds, saturating.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A group's membership as a store writes it, read under the group's writer
/// lock.
#[derive(Debug)]
struct StoreSnapshot {
    /// What the file is to hold; `None` for the file as it is, with the
    /// member ids of `renamed` renamed.
    meta: Option<GroupMeta>,
    /// The generation whose leader's assignment is being stored, when the group
    /// is completing a rebalance.
    completing: Option<i32>,
    /// The new ids of the static members' replacements the file holds in force.
    replacing: Vec<String>,
    /// Each of those with the old member as the file held it before.
    replaced: Vec<(String, MemberMeta)>,
    /// It writes the group's [`Group::undo`].
    undo: bool,
    /// The group's undo it makes unnecessary (it names no id memory does not
    /// hold), due again if it fails.
    replaces_undo: Option<GroupMeta>,
    /// The group's [`Group::renames`] it covers.
    renamed: Vec<(String, String)>,
}

impl StoreSnapshot {
    /// Writes it as `group`'s file. The caller holds the group's writer lock.
    fn write(&self, store: &GroupMetaStore, group: &str) -> crate::error::Result<()> {
        match &self.meta {
            Some(meta) => store.write(group, meta),
            None => store.update(group, |meta| rename_members(meta, &self.renamed)),
        }
    }
}

/// Gives the members of `meta` that `renames` names by group instance id
/// their new member ids (and the leader's, when it is one of them); whether
/// any changed.
fn rename_members(meta: &mut GroupMeta, renames: &[(String, String)]) -> bool {
    let mut changed = false;
    for (instance, new) in renames {
        for m in &mut meta.members {
            if m.instance_id.as_ref() != Some(instance) || m.member_id == *new {
                continue;
            }
            if meta.leader.as_ref() == Some(&m.member_id) {
                meta.leader = Some(new.clone());
            }
            m.member_id.clone_from(new);
            changed = true;
        }
    }
    changed
}

/// An OffsetCommit being stored (see [`GroupCoordinator::commit_in_flight`]).
pub struct CommitInFlight {
    coordinator: Arc<GroupCoordinator>,
    group: String,
    member: String,
}

impl Drop for CommitInFlight {
    fn drop(&mut self) {
        let mut groups = self.coordinator.lock();
        let Some(g) = groups.get_mut(&self.group) else {
            return;
        };
        if let Some(n) = g.committing.get_mut(&self.member) {
            *n -= 1;
            if *n == 0 {
                g.committing.remove(&self.member);
            }
        }
        if let Some(m) = g.members.get_mut(&self.member) {
            m.last_seen = Instant::now();
        }
    }
}

/// All groups of this broker.
#[derive(Debug)]
pub struct GroupCoordinator {
    groups: Mutex<Groups>,
    /// When this coordinator started: a consumer group it does not hold is not
    /// expired until the longest session timeout has passed since (its members
    /// rejoin within it, see [`GroupCoordinator::expire_group`]).
    started: Moment,
    /// The stored times expiry passes found ahead of the clock.
    ages: Ages,
    /// The session timeouts a JoinGroup may ask for.
    session_timeouts: RangeInclusive<Duration>,
    /// Where membership is stored; `None`: in memory only.
    meta: Option<GroupMetaStore>,
    /// Woken when a group's membership changed and is to be stored
    /// ([`GroupCoordinator::membership_changed`]).
    unstored: Notify,
    /// How long the rebalance of an empty group waits for more members
    /// (`--group-initial-rebalance-delay-ms`).
    initial_delay: Duration,
}

/// The first rebalance of an empty group waiting for more members, as
/// Kafka's `InitialDelayedJoin`: it may not complete before `until`; a member
/// new to the group joining meanwhile (`new_member`, in generation 0, as Kafka
/// counts it) extends the wait by the delay again, out of the `remaining` part
/// of the group's rebalance timeout.
#[derive(Debug, Clone, Copy)]
struct InitialJoin {
    until: Instant,
    remaining: Duration,
    new_member: bool,
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

/// The most groups in use (with members, joins waiting or handed-out member
/// ids) the coordinator holds; a JoinGroup that would start another gets
/// COORDINATOR_NOT_AVAILABLE (which clients retry) until some are no longer
/// in use. Empty groups kept for their committed positions do not count. Each group takes about 2 KB and a look at each session
/// tick, under the lock every group request takes: a client sending
/// JoinGroups to new group ids, each answered MEMBER_ID_REQUIRED (or each a
/// member that never heartbeats) at once, left a group per request for up
/// to its session timeout (30 minutes at most) and 10 minutes more, without
/// bound (300,000 in two seconds: 580 MB, and ticks of 100 ms). Kafka sets no
/// limit.
pub const MAX_GROUPS: usize = 100_000;

#[cfg(test)]
thread_local! {
    /// [`MAX_GROUPS`] for the joins of this thread (tests).
    static TEST_MAX_GROUPS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// [`MAX_GROUPS`], or a test's own limit.
fn max_groups() -> usize {
    #[cfg(test)]
    if let Some(n) = TEST_MAX_GROUPS.with(std::cell::Cell::get) {
        return n;
    }
    MAX_GROUPS
}

/// The groups the coordinator holds, with what the limit on groups in use
/// ([`MAX_GROUPS`]) keeps of them.
#[derive(Debug, Default)]
struct Groups {
    map: HashMap<String, Group>,
    cap: Cap,
}

impl Deref for Groups {
    type Target = HashMap<String, Group>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl DerefMut for Groups {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

/// What a JoinGroup starting a group checks [`MAX_GROUPS`] against, so that
/// a join at the limit takes constant time. Before, each counted the groups
/// in use and looked for one to forget, two walks over every group under
/// the lock every group request takes: 1.5 ms a join at 101,199 groups,
/// against 4-8 µs below the limit, so a flood of joins at the limit held
/// the lock most of the time.
///
/// `counted + started` is never below the groups in use: only a JoinGroup
/// puts a group in use, and each join that puts one in use adds one to
/// `started` (a refused join adds none). Groups leaving use (members leaving, sessions and handed-out
/// ids lapsing) are seen at the next count: a group that left use makes
/// room at the next session tick (200 ms) at the latest.
#[derive(Debug, Default)]
struct Cap {
    /// The groups in use at the last count: a session tick's, or a join's
    /// at the limit since.
    counted: usize,
    /// Joins since that count that put a group in use, less the groups
    /// forgotten to make room.
    started: usize,
    /// Whether a join counted since the last tick: at most one walk a tick.
    counted_by_join: bool,
    /// The groups given member ids with MEMBER_ID_REQUIRED, by when:
    /// `(when, group)` in the order the ids were handed out. An entry holds
    /// while its group's `last_handed_out` is `when` and it holds nothing but
    /// such ids ([`Group::only_handed_out_ids`]); the others are dropped
    /// when met and at each tick.
    handed_out: VecDeque<(Instant, String)>,
}

impl Cap {
    /// Whether a join may start a new group: fewer than [`MAX_GROUPS`] are
    /// in use, or one is forgotten to make room ([`Cap::make_room`]).
    fn admit(&mut self, groups: &mut HashMap<String, Group>) -> bool {
        let most = max_groups();
        if groups.len() < most || self.counted + self.started < most {
            self.started += 1;
            return true;
        }
        if !self.counted_by_join {
            self.counted_by_join = true;
            self.counted = groups.values().filter(|g| g.in_use()).count();
            examined(groups.len());
            self.started = 0;
            if self.counted < most {
                self.started = 1;
                return true;
            }
        }
        // The forgotten group was in use, as the new one will be.
        self.make_room(groups)
    }

    /// A join put a group that was not in use in use.
    fn rejoined(&mut self) {
        self.started += 1;
    }

    /// `group` handed out a member id with MEMBER_ID_REQUIRED at `when`.
    fn handed_out(&mut self, when: Instant, group: &str) {
        self.handed_out.push_back((when, group.to_string()));
    }

    /// At a session tick: `in_use` groups are in use; the entries of groups
    /// no longer holding only handed-out ids are dropped.
    fn ticked(&mut self, in_use: usize, groups: &HashMap<String, Group>) {
        self.counted = in_use;
        self.started = 0;
        self.counted_by_join = false;
        self.handed_out
            .retain(|(when, name)| holds_handed_out(groups, name, *when));
    }

    /// Makes room for a new group among the [`MAX_GROUPS`] in use by
    /// forgetting the group holding nothing but member ids handed out with
    /// MEMBER_ID_REQUIRED ([`Group::only_handed_out_ids`]) whose last id was
    /// handed out first. Returns whether it forgot one. By when they were
    /// handed out, not when they lapse: the joining client sets the lapse
    /// (its session timeout, up to 30 minutes), and a flood asking long
    /// sessions made a real consumer's group, asking 10 s, the first to go
    /// every time.
    ///
    /// A client sending JoinGroups to new group ids, each answered
    /// MEMBER_ID_REQUIRED, filled the groups in use with such groups in
    /// seconds, and every new group was then refused for as long as their
    /// ids took to lapse (up to 30 minutes). A client given one of the
    /// forgotten ids joins with it, is answered UNKNOWN_MEMBER_ID, and starts
    /// again without one, as clients do; its id was minted a moment before,
    /// so only a flood of new ids can take its place first.
    fn make_room(&mut self, groups: &mut HashMap<String, Group>) -> bool {
        while let Some((when, name)) = self.handed_out.pop_front() {
            examined(1);
            if holds_handed_out(groups, &name, when) {
                groups.remove(&name);
                crate::log_limit::limited!(warn, group = %Shown(&name), "forgot a group holding only member ids handed out with MEMBER_ID_REQUIRED, to make room for a new group: the coordinator holds {} groups in use, its most", max_groups());
                return true;
            }
        }
        false
    }
}

/// Whether `name` holds nothing but member ids handed out with
/// MEMBER_ID_REQUIRED, the last at `when`.
fn holds_handed_out(groups: &HashMap<String, Group>, name: &str, when: Instant) -> bool {
    groups
        .get(name)
        .is_some_and(|g| g.last_handed_out == Some(when) && g.only_handed_out_ids())
}

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

#[cfg(test)]
impl JoinRequest {
    /// A consumer's JoinGroup to group `g` as `member` (empty: a new member),
    /// with 10 s timeouts and one protocol.
    pub(crate) fn of_consumer(member: &str) -> JoinRequest {
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
}

impl GroupCoordinator {
    /// A coordinator with no groups, enforcing `config`'s session timeout bounds,
    /// that keeps membership in memory only (a SyncGroup completes at once).
    pub fn new(config: &GroupConfig) -> GroupCoordinator {
        let ms = |v: i32| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        GroupCoordinator {
            groups: Mutex::default(),
            started: Moment::now(),
            ages: Ages::default(),
            session_timeouts: ms(config.min_session_timeout_ms)..=ms(config.max_session_timeout_ms),
            meta: None,
            unstored: Notify::new(),
            initial_delay: Duration::from_millis(config.initial_rebalance_delay_ms.into()),
        }
    }

    /// A coordinator storing membership in `dir` (see
    /// [`crate::storage::group_meta`]), with the groups stored there (blocking:
    /// reads every file). A group with members comes back `Stable` at its stored
    /// generation, with its members, leader, protocol and assignments, and every
    /// member's session starting now; a group stored empty comes back `Empty` with
    /// its generation and protocol type. A file that cannot be read, does not
    /// parse or is inconsistent is logged as a warning naming it, and its group
    /// starts without members (its committed offsets are unaffected).
    ///
    /// # Errors
    /// I/O errors creating or listing `dir`.
    pub fn open(config: &GroupConfig, dir: PathBuf) -> crate::error::Result<GroupCoordinator> {
        let (store, loaded) = GroupMetaStore::open(dir)?;
        let now = Instant::now();
        let mut groups = HashMap::new();
        for l in loaded {
            let group = l.group.and_then(|(name, meta)| {
                let g = Group::from_meta(&name, meta, now)?;
                Ok((name, g))
            });
            match group {
                Ok((name, g)) => {
                    groups.insert(name, g);
                }
                Err(reason) => tracing::warn!(
                    file = %l.path.display(),
                    "the stored membership of a group {reason}: the group starts without members (its committed offsets are unaffected)"
                ),
            }
        }
        if !groups.is_empty() {
            let with_members = groups.values().filter(|g| !g.members.is_empty()).count();
            tracing::info!(
                groups = groups.len(),
                stable = with_members,
                "loaded group membership"
            );
        }
        let cap = Cap {
            counted: groups.values().filter(|g| g.in_use()).count(),
            ..Cap::default()
        };
        Ok(GroupCoordinator {
            groups: Mutex::new(Groups { map: groups, cap }),
            meta: Some(store),
            ..GroupCoordinator::new(config)
        })
    }

    /// Resolves when some group's membership changed and is to be stored with
    /// [`GroupCoordinator::store_changed`] (at once if it changed since the last
    /// call returned).
    pub async fn membership_changed(&self) {
        self.unstored.notified().await;
    }

    /// Wakes [`GroupCoordinator::membership_changed`] when `g` has membership to
    /// store.
    fn notify_unstored(&self, g: &Group) {
        if g.membership_unstored() && self.meta.is_some() {
            self.unstored.notify_one();
        }
    }

    /// Stores the membership of every group whose membership changed
    /// ([`GroupCoordinator::store_group`] for each). Blocking.
    pub fn store_changed(&self) {
        self.store_changed_until(|| false);
    }

    /// [`GroupCoordinator::store_changed`], stopping before the next group
    /// once `stop` says so (the server is shutting down: each store is two
    /// fsyncs, and a pass over thousands of emptied groups held the shutdown
    /// with nothing logged; the shutdown's own pass stores what is left).
    /// Returns how many groups were looked at.
    pub fn store_changed_until(&self, stop: impl Fn() -> bool) -> usize {
        let changed = self.changed_groups();
        let mut looked = 0;
        for group in changed {
            if stop() {
                break;
            }
            self.store_group(&group);
            looked += 1;
        }
        looked
    }

    /// The groups whose membership changed since it was last stored.
    fn changed_groups(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, g)| g.membership_unstored())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// How many groups have membership to store.
    pub fn changed_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|g| g.membership_unstored())
            .count()
    }

    /// Whether `group` has membership waiting to be stored, which
    /// [`GroupCoordinator::store_group`] would write now.
    pub fn needs_store(&self, group: &str) -> bool {
        self.meta.is_some()
            && self.lock().get(group).is_some_and(|g| {
                g.unstored && g.storable() || g.file_due() && g.state != State::Dead
            })
    }

    /// Stores `group`'s membership when it changed since it was last stored
    /// (blocking: writes and fsyncs its file), as Kafka stores a group: once the
    /// leader's assignment is set (the group then becomes `Stable` and the
    /// SyncGroups waiting get their assignments; if the write fails they get
    /// COORDINATOR_NOT_AVAILABLE and the group rebalances, as Kafka answers a
    /// failed store), when it became `Empty`, and when a static member replaces
    /// itself in a `Stable` group (the replacement then takes effect and its
    /// JoinGroup gets the new member id; if the write fails the JoinGroup gets
    /// COORDINATOR_NOT_AVAILABLE and the old member id stays). A group
    /// rebalancing meanwhile is stored when the rebalance completes. Failures
    /// are logged; one of a group that is not completing a rebalance is tried
    /// again at the group's next store.
    ///
    /// A replacement written but not in force when the write completes (the
    /// group left `Stable` or the instance joined again meanwhile) leaves the
    /// file naming a member id no client holds, while the old id is still the
    /// member: the file is written again at once, with the old member back
    /// (or with the group's current membership, when that is to be stored),
    /// and a failure of that write is tried again by every
    /// [`GroupCoordinator::store_changed`].
    ///
    /// A group with nothing to store (a follower's SyncGroup, a change another
    /// call is storing) returns at once, without waiting for the group's writer
    /// lock, which a store of any group sharing that lock holds across its
    /// fsync.
    pub fn store_group(&self, group: &str) {
        let Some(store) = &self.meta else {
            return;
        };
        // Nothing to store: nothing to wait for. A change made from here on is
        // stored by the call that makes it (or by the next pass of
        // `store_changed`), which reads the group under the writer lock.
        if !self
            .lock()
            .get_mut(group)
            .is_some_and(Group::take_store_due)
        {
            return;
        }
        // Held from reading the group's state until its file is in place, so
        // that the file written last holds the newest state.
        let _writer = store.writer(group);
        while self.store_once(store, group) {}
    }

    /// One write of `group`'s file, under its writer lock: whether the file is
    /// to be written again at once ([`GroupCoordinator::stored`]).
    fn store_once(&self, store: &GroupMetaStore, group: &str) -> bool {
        let Some(snapshot) = self.read_for_store(group) else {
            return false;
        };
        let stored = snapshot.write(store, group);
        if let Err(e) = &stored {
            let generation = snapshot.meta.as_ref().map(|m| m.generation);
            crate::log_limit::limited!(error, group = %Shown(group), ?generation, error = %e, "storing the group's membership failed");
        }
        self.stored(group, &snapshot, stored.is_ok())
    }

    /// What a store of `group` writes, read (and its change marked stored)
    /// under the group's writer lock; `None` when there is nothing to store.
    /// The group's current membership, when it changed, replaces a pending
    /// undo ([`Group::undo`]): it names no member id the group does not hold.
    fn read_for_store(&self, group: &str) -> Option<StoreSnapshot> {
        let mut groups = self.lock();
        let g = groups.get_mut(group)?;
        if !g.take_store_due() {
            return None;
        }
        if !g.take_unstored() {
            // The renames due are written with the undo, or into the file
            // as it is.
            let undo = g.undo.take().map(|mut meta| {
                rename_members(&mut meta, &g.renames);
                meta
            });
            if undo.is_none() && g.renames.is_empty() {
                return None;
            }
            return Some(StoreSnapshot {
                undo: undo.is_some(),
                meta: undo,
                completing: None,
                replacing: Vec::new(),
                replaced: Vec::new(),
                replaces_undo: None,
                renamed: g.renames.clone(),
            });
        }
        g.unstored = false;
        let completing = (g.state == State::CompletingRebalance).then_some(g.generation);
        Some(StoreSnapshot {
            // Names the new ids of the renames due: they are members.
            renamed: g.renames.clone(),
            meta: Some(g.to_meta()),
            completing,
            replacing: g.replacements.iter().map(|r| r.new.clone()).collect(),
            replaced: g
                .replacements
                .iter()
                .filter_map(|r| {
                    let m = g.members.get(&r.old)?;
                    Some((r.new.clone(), member_meta(&r.old, m, None)))
                })
                .collect(),
            undo: false,
            replaces_undo: g.undo.take(),
        })
    }

    /// The store of `snapshot` for `group` completed, successfully when `ok`:
    /// answers those waiting for it. Returns whether the file is to be written
    /// again at once: it names the new id of a replacement that did not take
    /// effect (see [`Group::undo`]).
    fn stored(&self, group: &str, snapshot: &StoreSnapshot, ok: bool) -> bool {
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return false;
        };
        if let Some(meta) = &snapshot.meta {
            let written = meta.members.iter().filter_map(|m| m.instance_id.clone());
            if ok {
                g.file_instances = written.collect();
            } else {
                g.file_instances.extend(written);
            }
        }
        g.finish_renames(&snapshot.renamed, ok);
        let Some(meta) = &snapshot.meta else {
            // Only the renames.
            return false;
        };
        if !ok {
            // The file is as before this write: an undo it was to write, or
            // to make unnecessary, is due still.
            let due = if snapshot.undo {
                Some(meta)
            } else {
                snapshot.replaces_undo.as_ref()
            };
            if let Some(undo) = due {
                g.undo.get_or_insert_with(|| undo.clone());
            }
        }
        if snapshot.undo {
            if ok {
                tracing::info!(group = %Shown(group), "the group's file names again the old member ids of static members' replacements that did not take effect");
            }
            return false;
        }
        match snapshot.completing {
            Some(generation)
                if g.state == State::CompletingRebalance
                    && g.storing
                    && g.generation == generation =>
            {
                if ok {
                    g.complete_sync();
                } else {
                    // Never acknowledged unless stored: the members rejoin.
                    g.storing = false;
                    for tx in g.pending_syncs.drain().flat_map(|(_, txs)| txs) {
                        let _ = tx.send((codes::COORDINATOR_NOT_AVAILABLE, Bytes::new()));
                    }
                    for m in g.members.values_mut() {
                        m.assignment = Bytes::new();
                    }
                    g.start_rebalance(Instant::now());
                }
            }
            Some(_) => {}
            None => {
                let installed = g.finish_replacements(&snapshot.replacing, ok, Instant::now());
                if ok && installed.len() < snapshot.replacing.len() {
                    // Abandoned (the group left `Stable`) or superseded while
                    // being written: the file names a member id that the
                    // group does not hold, and a restarted broker would fence
                    // the old id, still the member, with it.
                    tracing::warn!(group = %Shown(group), "a static member's replacement was stored but did not take effect: the group's file is written again with the old member id");
                    g.undo = Some(undo_replacements(
                        meta,
                        snapshot
                            .replaced
                            .iter()
                            .filter(|(new, _)| !installed.contains(new)),
                    ));
                }
                if !ok {
                    // The file does not hold what the group holds: written
                    // again at the group's next store.
                    g.unstored = true;
                    if !snapshot.replaced.is_empty() {
                        // A write that failed after its rename (the directory
                        // sync, the check after it) left the new ids in the
                        // file: the old ones are written back whatever the
                        // group's state, as after an abandoned replacement.
                        g.undo = Some(undo_replacements(meta, snapshot.replaced.iter()));
                    }
                }
            }
        }
        ok && g.undo.is_some()
    }

    /// Removes the stored membership of `group`, which is being deleted (between
    /// [`GroupCoordinator::begin_delete`] and [`GroupCoordinator::finish_delete`],
    /// as DeleteGroups and offset expiry do), durably (blocking: removes its file
    /// and fsyncs the directory).
    ///
    /// # Errors
    /// I/O errors, naming the file or directory.
    pub fn delete_stored(&self, group: &str) -> crate::error::Result<()> {
        let Some(store) = &self.meta else {
            return Ok(());
        };
        let _writer = store.writer(group);
        store.remove(group)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins (or rejoins) a group; the receiver resolves when the rebalance
    /// completes, or, for a static member replacing itself in a `Stable` group
    /// while membership is stored, once [`GroupCoordinator::store_group`] stored
    /// its new member id.
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
            crate::log_limit::limited!(warn, group = %Shown(&req.group), protocols = req.protocols.len(), "JoinGroup refused: it lists more than {MAX_PROTOCOLS} protocols");
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
        let mut guard = self.lock();
        let Groups { map: groups, cap } = &mut *guard;
        // A group held but not in use that this join puts in use counts
        // toward the groups in use (see `Cap`); a refused join does not.
        let idle = groups.get(&req.group).is_some_and(|g| !g.in_use());
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
            // The groups in use (members, joins waiting, handed-out ids). An
            // empty group kept for its committed positions, for days, takes
            // no place.
            if !cap.admit(groups) {
                crate::log_limit::limited!(warn, group = %Shown(&req.group), groups = groups.len(), "JoinGroup refused: the coordinator holds {} groups in use (with members, joins or handed-out member ids), its most; each leaves that count once its members' sessions and handed-out ids lapse", max_groups());
                let _ = tx.send(JoinResult::error(
                    codes::COORDINATOR_NOT_AVAILABLE,
                    &req.member_id,
                ));
                return rx;
            }
        }
        let g = groups
            .entry(req.group.clone())
            .or_insert_with(|| Group::new(&req.group));
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
        // A join with a member id is checked as SyncGroup and Heartbeat are;
        // one without is a new member or a static member's replacement.
        if !req.member_id.is_empty() {
            if let Some(err) = g.instance_error(req.instance_id.as_deref(), &req.member_id) {
                let _ = tx.send(JoinResult::error(err, &req.member_id));
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
            let id = new_member_id(&req.client_id);
            if let Some(old) = current {
                g.protocol_type = Some(req.protocol_type.clone());
                g.replace_static_member(&old, id, req, tx, now, self.meta.is_some());
                self.notify_unstored(g);
                return rx;
            }
            if req.require_known_member_id && req.instance_id.is_none() {
                g.pending_members
                    .insert(id.clone(), now + req.session_timeout);
                g.last_handed_out = Some(now);
                cap.handed_out(now, &req.group);
                if idle {
                    cap.rejoined();
                }
                let _ = tx.send(JoinResult::error(codes::MEMBER_ID_REQUIRED, &id));
                return rx;
            }
            // A static member that is no member now (its old id expired or
            // was removed): the group's file may still name its instance
            // under that id.
            if let Some(instance) = req.instance_id.as_deref().filter(|_| self.meta.is_some()) {
                g.rename(instance, &id);
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
        let same = g
            .members
            .get(&member_id)
            .is_some_and(|m| m.protocols == req.protocols);
        let leads = g.leader.as_deref() == Some(member_id.as_str());
        // As Kafka: a member rejoining with the same metadata gets the
        // current generation, in a stable group unless it leads (a leader's
        // join asks for a new assignment), and while the group waits for
        // the leader's assignment (its join's answer may have been lost, or
        // it was absent when the rebalance completed: entry 192).
        let unchanged = same
            && match g.state {
                State::Stable => !leads,
                State::CompletingRebalance => true,
                _ => false,
            };
        if unchanged {
            let m = g.members.get_mut(&member_id).expect("checked above");
            m.last_seen = now;
            let members = match (&g.protocol, g.state) {
                (Some(protocol), State::CompletingRebalance) if leads => g.member_list(protocol),
                _ => Vec::new(),
            };
            let _ = tx.send(JoinResult {
                error: codes::NONE,
                generation: g.generation,
                protocol: g.protocol.clone(),
                protocol_type: g.protocol_type.clone(),
                leader: g.leader.clone().unwrap_or_default(),
                member_id,
                members,
            });
            return rx;
        }
        let from_empty = g.state == State::Empty;
        let new_member = !g.members.contains_key(&member_id);
        if idle {
            cap.rejoined();
        }
        g.start_rebalance(now);
        // A static member rejoining by its member id alone stays static, as
        // Kafka's `updateMember` keeps its instance id (one it names is its
        // own: checked above).
        let instance_id = req.instance_id.or_else(|| {
            g.members
                .get(&member_id)
                .and_then(|m| m.instance_id.clone())
        });
        g.members.insert(
            member_id.clone(),
            Member {
                instance_id,
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
        // An earlier JoinGroup of the member still waiting is dropped: it is
        // answered REBALANCE_IN_PROGRESS.
        examined(1);
        g.pending_joins.insert(member_id, tx);
        if from_empty && !self.initial_delay.is_zero() {
            // As Kafka's `InitialDelayedJoin`, out of the group's rebalance
            // timeout (its members' longest, this one's included).
            let timeout = g.longest_rebalance_timeout();
            let delay = self.initial_delay.min(timeout);
            g.rebalance_deadline = Some(now + timeout);
            g.initial_join = Some(InitialJoin {
                until: now + delay,
                remaining: timeout.saturating_sub(delay),
                new_member: false,
            });
        } else if g.generation == 0 {
            if let Some(j) = g.initial_join.as_mut() {
                j.new_member |= new_member;
            }
        }
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
        let err = g
            .instance_error(instance, member_id)
            .unwrap_or_else(|| g.check_member(member_id, generation));
        if err != codes::NONE {
            let _ = tx.send((err, Bytes::new()));
            return rx;
        }
        if let Some(m) = g.members.get_mut(member_id) {
            m.last_seen = Instant::now();
        }
        if matches!(g.state, State::CompletingRebalance | State::Stable) {
            g.synced(member_id);
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
                let waiting = g.pending_syncs.entry(member_id.to_string()).or_default();
                // Those whose connections closed wait for nothing: a member
                // sending SyncGroup again on new connections does not pile
                // them up.
                waiting.retain(|t| !t.is_closed());
                waiting.push(tx);
                // A leader's SyncGroup sent again while its assignment is being
                // stored waits with the others.
                if g.leader.as_deref() == Some(member_id) && !g.storing {
                    let map: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for (id, m) in g.members.iter_mut() {
                        // A copy, not a share of the request frame (see `join`).
                        m.assignment = map
                            .get(id)
                            .map(|a| Bytes::copy_from_slice(a))
                            .unwrap_or_default();
                    }
                    if self.meta.is_some() {
                        // Stable, and answered, once stored (`store_group`).
                        g.storing = true;
                        g.unstored = true;
                        self.notify_unstored(g);
                    } else {
                        g.complete_sync();
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
        if let Some(err) = g.instance_error(instance, member_id) {
            return err;
        }
        // A refused heartbeat (another generation) keeps no session alive,
        // as in Kafka.
        let err = g.check_member(member_id, generation);
        if err != codes::NONE {
            return err;
        }
        if let Some(m) = g.members.get_mut(member_id) {
            m.last_seen = Instant::now();
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
        let (mut removed, mut pending_left) = (false, false);
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
                // Its JoinGroup waiting is answered as Kafka's
                // `removeMemberAndUpdateGroup` answers it: the client rejoins
                // as a new member, not with the id it no longer has.
                if let Some(tx) = g.pending_joins.remove(id) {
                    let _ = tx.send(JoinResult::error(codes::UNKNOWN_MEMBER_ID, ""));
                }
                g.pending_syncs.remove(id);
                removed = true;
                out.push(codes::NONE);
            } else if g.pending_members.remove(id).is_some() {
                pending_left = true;
                out.push(codes::NONE);
            } else {
                out.push(codes::UNKNOWN_MEMBER_ID);
            }
        }
        if removed {
            if g.members.is_empty() {
                g.become_empty();
                self.notify_unstored(g);
            } else {
                g.start_rebalance(now);
                g.try_complete(false);
            }
        } else if pending_left {
            // A rebalance may have waited for it alone.
            g.try_complete(false);
        }
        Ok(out)
    }

    /// Whether an OffsetCommit from `member_id` at `generation` is allowed: simple
    /// commits (generation -1) only while the group is `Empty`; a member's
    /// commit at the current generation except between its JoinGroup and SyncGroup
    /// (while the group prepares a rebalance it may still commit what it consumed),
    /// never from a static member's replaced id (FENCED_INSTANCE_ID) nor naming
    /// an instance id no member has (UNKNOWN_MEMBER_ID). A member's allowed
    /// commit counts as a heartbeat, as in Kafka.
    pub fn check_commit(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
    ) -> i16 {
        self.commit_gate(group, generation, member_id, instance, true)
    }

    /// [`GroupCoordinator::check_commit`] again, just before the commit is
    /// written (under the group's offsets writer lock, which a commit may wait
    /// for across other groups' fsyncs): a member fenced meanwhile (expired,
    /// replaced, or at an older generation since a rebalance) is refused as
    /// the first check would refuse it, so that its stale positions are not
    /// written over those of the member that took its partitions, as Kafka
    /// refuses a fenced generation's commit. Not a heartbeat: the first check
    /// counted as one.
    pub fn recheck_commit(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
    ) -> i16 {
        self.commit_gate(group, generation, member_id, instance, false)
    }

    /// Makes `member` of `group` look silent for `idle` (tests); false when
    /// it is no member.
    #[cfg(test)]
    pub(crate) fn idle_member_for(&self, group: &str, member: &str, idle: Duration) -> bool {
        let mut groups = self.lock();
        let Some(m) = groups
            .get_mut(group)
            .and_then(|g| g.members.get_mut(member))
        else {
            return false;
        };
        m.last_seen = Instant::now().checked_sub(idle).unwrap();
        true
    }

    /// Keeps `member` of `group` from expiring while its OffsetCommit is
    /// stored, until the result is dropped (up to its rebalance timeout, as a
    /// member parked in SyncGroup): the commit waits for the group's writer
    /// lock and two fsyncs, seconds on a slow disk, and the member's
    /// heartbeats are answered only after it, in order. Dropped, the commit
    /// counts as a heartbeat, at its end.
    pub fn commit_in_flight(self: &Arc<Self>, group: &str, member: &str) -> CommitInFlight {
        let mut groups = self.lock();
        if let Some(g) = groups.get_mut(group) {
            *g.committing.entry(member.to_string()).or_default() += 1;
        }
        CommitInFlight {
            coordinator: Arc::clone(self),
            group: group.to_string(),
            member: member.to_string(),
        }
    }

    fn commit_gate(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
        heartbeat: bool,
    ) -> i16 {
        let mut groups = self.lock();
        match groups.get_mut(group) {
            None if generation < 0 => codes::NONE,
            None => codes::ILLEGAL_GENERATION,
            Some(g) if g.state == State::Dead => codes::COORDINATOR_NOT_AVAILABLE,
            // As Kafka's `validateOffsetCommit`: a commit without a generation
            // (an admin client, a consumer without group management) is
            // taken by an empty group whatever member it names.
            Some(g) if generation < 0 && g.state == State::Empty => codes::NONE,
            // Only members commit to a group that has some: Kafka answers
            // UNKNOWN_MEMBER_ID, on which clients rejoin.
            Some(_) if generation < 0 && member_id.is_empty() && instance.is_none() => {
                codes::UNKNOWN_MEMBER_ID
            }
            Some(g) => {
                // An instance id another member holds is fenced; one no
                // member holds is unknown (Kafka's `validateCurrentMember`).
                if let Some(err) = g.instance_error(instance, member_id) {
                    return err;
                }
                let err = g.check_member(member_id, generation);
                if err == codes::NONE && g.state == State::CompletingRebalance {
                    return codes::REBALANCE_IN_PROGRESS;
                }
                if let Some(m) = g
                    .members
                    .get_mut(member_id)
                    .filter(|_| heartbeat && err == codes::NONE)
                {
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
        // Sorted once the lock is let go: every group request waits for it,
        // on the runtime's threads (the whole call took 64-68 ms with
        // 100,000 groups when it sorted under the lock).
        let mut all: Vec<GroupOverview> = self
            .lock()
            .iter()
            .map(|(id, g)| GroupOverview {
                group: id.clone(),
                state: g.state.name(),
                protocol_type: g.protocol_type.clone(),
                members: g.members.len(),
            })
            .collect();
        all.sort_unstable_by(|a, b| a.group.cmp(&b.group));
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
                    (m.metadata_for(&protocol), m.assignment.clone())
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
    /// MEMBER_ID_REQUIRED lapse. NONE when the caller may remove its offsets
    /// and stored membership; NON_EMPTY_GROUP while it has members;
    /// GROUP_ID_NOT_FOUND for an unknown group or one already being deleted
    /// (Kafka's `handleDeleteGroups`).
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
                let mut g = Group::new(group);
                g.state = State::Dead;
                g.held_for_delete_only = true;
                groups.insert(group.to_string(), g);
                codes::NONE
            }
            None => codes::GROUP_ID_NOT_FOUND,
        }
    }

    /// Ends the deletion of `group` (see [`GroupCoordinator::begin_delete`]).
    /// Once its files are removed (`deleted`) the group is forgotten: the next
    /// JoinGroup or commit starts a new group. A deletion that failed (a file
    /// not removed, or not durably) leaves the group as it was, `Empty` (or not
    /// held, when only its offsets made it known), as Kafka's coordinator
    /// leaves a group whose deletion it could not write: the deletion can be
    /// sent again, and finds the group to delete.
    pub fn finish_delete(&self, group: &str, deleted: bool) {
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group).filter(|g| g.state == State::Dead) else {
            return;
        };
        if deleted || g.held_for_delete_only {
            groups.remove(group);
        } else {
            // Back to `Empty`, stored as such: a change made while the group
            // was `Dead` was dropped (`take_unstored`), and the file, which the
            // deletion failed to remove, may still list members that left.
            g.state = State::Empty;
            g.unstored = true;
            self.notify_unstored(g);
        }
    }

    /// Deletes the committed offsets of every group that has had no members and no
    /// commit for `retention` at `now` (Kafka's `offsets.retention.minutes`, as
    /// KIP-211 counts it: from when the group became empty, or from its last
    /// commit if later; a group this coordinator does not hold ages from its
    /// last commit alone, once its members have had a session timeout to
    /// join again). Ages are taken as [`crate::storage::moment`] says: a
    /// clock stepped either way neither keeps a group for the step nor expires
    /// one early, save for stored times taken while the clock was behind. Each deletion goes through
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
        now: PassTime,
    ) -> crate::error::Result<Vec<String>> {
        self.expire_offsets_until(store, retention, now, || false)
    }

    /// [`GroupCoordinator::expire_offsets`], stopping before the next group
    /// once `stop` says so (the server is shutting down: each group expired
    /// costs fsyncs, and the process waits for this blocking pass before it
    /// exits). The groups not looked at wait for the next pass.
    pub fn expire_offsets_until(
        &self,
        store: &OffsetStore,
        retention: Duration,
        now: PassTime,
        stop: impl Fn() -> bool,
    ) -> crate::error::Result<Vec<String>> {
        let mut expired = Vec::new();
        let mut failed = None;
        let mut groups = store.last_commits();
        groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let pass = self.ages.pass(now);
        for (group, last_commit) in groups {
            if stop() {
                break;
            }
            match self.expire_group(store, &group, last_commit, retention, &pass) {
                Ok(true) => expired.push(group),
                Ok(false) => {}
                Err(e) => {
                    crate::log_limit::limited!(error, group = %Shown(&group), error = %e, "expiring the group's committed offsets failed");
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
        last_commit: Moment,
        retention: Duration,
        pass: &Pass<'_>,
    ) -> crate::error::Result<bool> {
        let stale = |at: Moment| pass.age(at) > retention;
        let (empty_since, had_members, held) = {
            let groups = self.lock();
            match groups.get(group) {
                Some(g) if g.state == State::Empty => {
                    (g.empty_since, g.protocol_type.is_some(), true)
                }
                // A stable consumer group keeps the positions of the topics its
                // members subscribe to; those of any other topic expire one by
                // one, each from its own commit (Kafka's KIP-496).
                Some(g) if g.state == State::Stable => {
                    drop(groups);
                    // The group's state and subscriptions are read under its
                    // offsets writer lock, which the expiry may wait for across
                    // other groups' fsyncs: a member that joined meanwhile
                    // subscribing to a topic keeps its positions, and a group
                    // rebalancing meanwhile loses none.
                    let subscribed = || self.stable_subscriptions(group);
                    let n = store.expire_unsubscribed(group, subscribed, stale)?;
                    if n > 0 {
                        tracing::info!(group = %Shown(group), positions = n, "expired committed offsets of topics a stable group no longer subscribes to");
                    }
                    return Ok(false);
                }
                Some(_) => return Ok(false),
                // Not held: no member joined since the start, and its
                // membership was never stored or could not be loaded (a
                // damaged file, a lost directory). It ages from its last
                // commit, the newest time stored for it, as Kafka ages a group
                // without a state time: counted from the start instead, a
                // broker restarted more often than the retention kept the
                // group forever. A member of it still running has its next
                // heartbeat refused (UNKNOWN_MEMBER_ID) and joins again, which
                // the coordinator then holds: a heartbeat comes within the
                // member's session timeout, so a consumer group is not judged
                // before the longest one has passed since the start (below).
                None => (last_commit, false, false),
            }
        };
        // Simple: offsets committed without membership, and no members since
        // the start either.
        let simple = !had_members
            && store
                .group(group)
                .is_some_and(|g| g.protocol_type.is_none());
        if !simple && !held && pass.age(self.started) <= *self.session_timeouts.end() {
            return Ok(false);
        }
        if simple {
            // A simple group's positions expire one by one, each from its own
            // commit, as Kafka expires a standalone group's offsets.
            let n = store.expire_simple(group, stale)?;
            if n > 0 {
                let gone = store.group(group).is_none();
                tracing::info!(group = %Shown(group), positions = n, group_deleted = gone, "expired committed offsets of a simple group");
                if gone {
                    // An empty group the coordinator still holds goes too.
                    if self.begin_delete(group, false) == codes::NONE {
                        let removed = self.delete_stored(group);
                        self.finish_delete(group, removed.is_ok());
                        removed?;
                    }
                }
                return Ok(gone);
            }
            return Ok(false);
        }
        // Idle since the later of the two: the younger.
        let idle = pass.age(empty_since).min(pass.age(last_commit));
        if idle <= retention {
            return Ok(false);
        }
        if self.begin_delete(group, true) != codes::NONE {
            return Ok(false);
        }
        // A commit that got in before the group was marked for deletion keeps it.
        let deleted = store
            .delete_unless_committed_since(group, last_commit)
            .and_then(|deleted| {
                if deleted {
                    self.delete_stored(group)?;
                }
                Ok(deleted)
            });
        // A group a commit kept, or whose files could not be removed, stays.
        self.finish_delete(group, matches!(deleted, Ok(true)));
        if !deleted? {
            return Ok(false);
        }
        tracing::info!(
            group = %Shown(group),
            idle_minutes = idle.as_secs() / 60,
            "expired the committed offsets of an idle group"
        );
        Ok(true)
    }

    /// Forgets every group that is `Empty` with nothing pending (no member ids
    /// handed out, no joins or syncs waiting) and no committed offsets in `store`,
    /// as Kafka's offset cleanup removes such groups: a group that only ever saw
    /// refused joins, or whose members left without committing, is not kept (nor
    /// listed) forever. Its stored membership goes too (blocking: removes its
    /// file; a failure is logged, and the group comes back `Empty` at the next
    /// start, to be forgotten again). Returns how many were forgotten.
    pub fn forget_empty_groups(&self, store: &OffsetStore) -> usize {
        self.forget_empty_groups_until(store, || false)
    }

    /// [`GroupCoordinator::forget_empty_groups`], stopping before the next
    /// group once `stop` says so (the server is shutting down: each group
    /// forgotten costs a directory fsync, and the process waits for this
    /// blocking pass before it exits).
    pub fn forget_empty_groups_until(&self, store: &OffsetStore, stop: impl Fn() -> bool) -> usize {
        let candidates: Vec<String> = self
            .lock()
            .iter()
            .filter(|(name, g)| forgettable(store, name, g))
            .map(|(name, _)| name.clone())
            .collect();
        // Their files removed one by one, the directory fsynced once: a file
        // a crash brings back holds an empty group, forgotten again.
        let forgotten = candidates
            .iter()
            .take_while(|_| !stop())
            .filter(|name| self.forget_if_empty_by(name, store, false))
            .count();
        if let Some(Err(e)) = self.meta.as_ref().map(GroupMetaStore::sync_removals) {
            tracing::warn!(error = %e, "syncing the removals of forgotten groups' stored memberships failed; the next removal syncs them");
        }
        forgotten
    }

    /// Forgets `group` as [`GroupCoordinator::forget_empty_groups`] does, when it
    /// is `Empty` with nothing pending and no committed offsets in `store`:
    /// OffsetDelete calls it after deleting positions, as Kafka's coordinator
    /// makes an `Empty` group whose last position goes `Dead` at once (it is
    /// listed no more, DeleteGroups answers `GROUP_ID_NOT_FOUND`). Blocking when
    /// the membership is stored. Returns whether it was forgotten.
    pub fn forget_if_empty(&self, group: &str, store: &OffsetStore) -> bool {
        self.forget_if_empty_by(group, store, true)
    }

    /// [`GroupCoordinator::forget_if_empty`]; without `sync`, the removal of
    /// the group's stored membership waits for
    /// [`GroupMetaStore::sync_removals`] to be durable.
    fn forget_if_empty_by(&self, group: &str, store: &OffsetStore, sync: bool) -> bool {
        // Held across the check and the removal: a group formed again under
        // this name meanwhile is stored after the removal, not before it.
        let _writer = self.meta.as_ref().map(|meta| meta.writer(group));
        {
            let mut groups = self.lock();
            if !groups
                .get(group)
                .is_some_and(|g| forgettable(store, group, g))
            {
                return false;
            }
            groups.remove(group);
        }
        let removed = self.meta.as_ref().map(|meta| {
            if sync {
                meta.remove(group)
            } else {
                meta.remove_unsynced(group)
            }
        });
        if let Some(Err(e)) = removed {
            tracing::warn!(group = %Shown(group), error = %e, "removing a forgotten group's stored membership failed");
        }
        true
    }

    /// Whether the coordinator holds `group` (members, or state since the start).
    pub fn holds(&self, group: &str) -> bool {
        self.lock().contains_key(group)
    }

    /// The topics the members of `group` subscribe to while it is `Stable`
    /// (see [`OffsetStore::expire_unsubscribed`]); `None` in any other state,
    /// for a group that is not a consumer group, or when a member's
    /// subscription does not parse.
    fn stable_subscriptions(&self, group: &str) -> Option<BTreeSet<String>> {
        let metadata = self
            .lock()
            .get(group)
            .filter(|g| g.state == State::Stable)?
            .subscription_metadata();
        subscribed_topics(metadata)
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
            _ => {
                let metadata = g.subscription_metadata();
                drop(groups);
                subscribed_topics(metadata).map_or(
                    OffsetDeleteGuard::AllSubscribed,
                    OffsetDeleteGuard::Subscribed,
                )
            }
        }
    }

    /// Expires members whose session timed out and completes overdue rebalances.
    /// Its work is linear in the members and the requests waiting: each
    /// member's waiting join or sync is looked up, not searched for (it runs
    /// under the lock every group request takes, and a group of thousands of
    /// members waiting in SyncGroup made a search cost seconds).
    ///
    /// Returns whether the coordinator holds more groups than may be in use
    /// ([`MAX_GROUPS`]): groups emptied as their members' sessions lapsed or
    /// their members left are out of use, outside that limit, and kept until
    /// the forgetting of empty groups every
    /// `--offsets-retention-check-interval-ms` (10 minutes, as Kafka keeps
    /// them): a client joining new group ids and going silent piled them up
    /// without bound meanwhile. The server then forgets those without
    /// committed positions at once ([`GroupCoordinator::forget_empty_groups`]).
    pub fn tick(&self) -> bool {
        let now = Instant::now();
        let mut guard = self.lock();
        let Groups { map: groups, cap } = &mut *guard;
        let mut in_use = 0;
        // Groups whose last handed-out ids lapsed and that never had more.
        let mut lapsed_groups = Vec::new();
        for (name, g) in groups.iter_mut() {
            let pending = g.pending_members.len();
            g.pending_members.retain(|_, lapses| *lapses > now);
            if pending > 0 && g.pending_members.is_empty() && g.never_joined() {
                lapsed_groups.push(name.clone());
                continue;
            }
            // A rebalance may have waited for a lapsed one alone.
            let lapsed = g.pending_members.len() < pending && g.state == State::PreparingRebalance;
            examined(g.replacements.len() + g.held_joins.len());
            // Spared too: the members whose JoinGroup answer is held until a
            // write covers their new id's rename, who cannot heartbeat before
            // they know it (their session restarts at the answer).
            let spared: HashSet<&str> = g
                .replacements
                .iter()
                .map(|r| r.old.as_str())
                .chain(g.held_joins.iter().map(|(_, j)| j.member_id.as_str()))
                .collect();
            // And the members waiting in SyncGroup for a leader whose answer
            // is held: they wait for it (their session restarts at it).
            let leader_held = g
                .leader
                .as_deref()
                .is_some_and(|l| g.held_joins.iter().any(|(_, j)| j.member_id == l));
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(id, m)| {
                    // A member parked in SyncGroup cannot heartbeat (a connection's
                    // requests are answered in order) while the leader computes
                    // the assignment: like Kafka, it is kept alive, here up to its
                    // rebalance timeout.
                    // So is one whose OffsetCommit waits for the disk: its
                    // heartbeats queue behind the commit on its connection.
                    examined(1);
                    let allowed =
                        if g.pending_syncs.contains_key(*id) || g.committing.contains_key(*id) {
                            m.session_timeout.max(m.rebalance_timeout)
                        } else {
                            m.session_timeout
                        };
                    // Nor is one whose instance's replacement waits to be
                    // stored: its instance has just joined.
                    now.duration_since(m.last_seen) > allowed && {
                        examined(2);
                        let waits = g.pending_joins.contains_key(*id)
                            || spared.contains(id.as_str())
                            || (leader_held && g.pending_syncs.contains_key(*id));
                        !waits
                    }
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                tracing::info!(group = %Shown(name), member = %Shown(id), "member session expired");
                g.members.remove(id);
                g.pending_syncs.remove(id);
            }
            // As Kafka's `onExpirePendingSync`.
            let unsynced = g.take_unsynced(now);
            for id in &unsynced {
                tracing::info!(group = %Shown(name), member = %Shown(id), generation = g.generation, "member did not send SyncGroup within the rebalance timeout; removed");
                g.members.remove(id);
            }
            let mut changed = !expired.is_empty() || !unsynced.is_empty();
            if changed {
                if g.members.is_empty() {
                    g.become_empty();
                } else {
                    g.start_rebalance(now);
                    g.try_complete(false);
                }
            } else if lapsed {
                g.try_complete(false);
                changed = g.state != State::PreparingRebalance;
            }
            // The first rebalance of a group that was empty, once it waited
            // long enough for more members.
            if let Some(j) = g.initial_join.filter(|j| now >= j.until) {
                if j.new_member && !j.remaining.is_zero() {
                    let delay = self.initial_delay.min(j.remaining);
                    g.initial_join = Some(InitialJoin {
                        until: now + delay,
                        remaining: j.remaining - delay,
                        new_member: false,
                    });
                } else {
                    g.initial_join = None;
                    g.try_complete(false);
                    changed |= g.state != State::PreparingRebalance;
                }
            }
            if g.state == State::PreparingRebalance
                && g.rebalance_deadline.is_some_and(|d| now >= d)
            {
                g.try_complete(true);
                changed = true;
            }
            if changed {
                self.notify_unstored(g);
            }
            in_use += usize::from(g.in_use());
        }
        // Forgotten, as a new group holds as much: kept, a client handing
        // itself ids for new group ids (each lapsing after the 6 s session
        // it asks) piled up groups out of use without bound until the
        // forgetting of empty groups every 10 minutes, each then a look at
        // every tick, and a join to each put it in use past the limit.
        for name in &lapsed_groups {
            groups.remove(name);
        }
        cap.ticked(in_use, groups);
        groups.len() > max_groups()
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
/// does not parse. Only the prefix every version shares is read (its version,
/// 0 or more, and its topics), as Kafka's coordinator reads it: kafkajs sends
/// version 1 without the owned partitions version 1 adds, which a decode at
/// the stated version refused, so its groups counted as subscribed to every
/// topic. Each topic goes into `topics` as it is read, nothing reserved for
/// the count a client states (a topic named again takes no more room).
fn subscription(metadata: &[u8], topics: &mut BTreeSet<String>) -> Option<()> {
    let version = i16::from_be_bytes(metadata.get(..2)?.try_into().ok()?);
    if version < 0 {
        return None;
    }
    let mut at: usize = 2;
    let mut take = |n: usize| {
        let field = metadata.get(at..at.checked_add(n)?)?;
        at += n;
        Some(field)
    };
    let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
    if count < 0 {
        return None;
    }
    for _ in 0..count {
        let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let name = std::str::from_utf8(take(usize::try_from(len).ok()?)?).ok()?;
        if !topics.contains(name) {
            topics.insert(name.to_string());
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(member: &str) -> JoinRequest {
        JoinRequest::of_consumer(member)
    }

    /// Makes every commit in the group files of `dir` look made at `at`: the
    /// last commit each file records, each position's commit time, and the
    /// files' modification times.
    fn backdate(dir: &std::path::Path, at: std::time::SystemTime) {
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
            v["last_commit_ms"] = ms.into();
            // As a file from before the checksum.
            v.as_object_mut().unwrap().remove("crc32c");
            std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(at).unwrap();
        }
    }

    /// A group whose offsets cannot be removed (an I/O error) is logged and
    /// kept, and the groups after it still expire. Before, the error ended the
    /// pass, so on every pass the same groups after it never expired.
    /// Offset 1 of partition 0 of topic `t`, as a commit stores it.
    fn position_one() -> crate::storage::Committed {
        crate::storage::Committed {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            leader_epoch: -1,
            metadata: None,
        }
    }

    #[test]
    fn a_group_that_cannot_be_expired_does_not_stop_the_others() {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let store = OffsetStore::open(path.clone()).unwrap();
        let commit = position_one();
        let now = PassTime::now();
        for g in ["a", "b"] {
            store
                .commit(g, Some("consumer"), vec![commit.clone()])
                .unwrap();
        }
        backdate(&path, now.wall - 8 * DAY);
        drop(store);
        let store = OffsetStore::open(path.clone()).unwrap();
        // "a" (hex 61) comes first; its file cannot be removed.
        let a = path.join("61.json");
        std::fs::remove_file(&a).unwrap();
        std::fs::create_dir_all(a.join("in-the-way")).unwrap();
        let c = GroupCoordinator {
            started: Moment::stored(now.wall - 9 * DAY),
            ..coordinator()
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

    /// A consumer group the coordinator does not hold at its start (its
    /// membership never stored, or stored in a file that does not parse) ages
    /// from its last commit as stored, as Kafka ages a group without a state
    /// time. It counted as empty since the start, so a broker restarted more
    /// often than the retention never expired it: a coordinator opened an hour
    /// ago kept groups last committed to 8 days ago. None is judged before the
    /// longest session timeout (30 minutes) has passed since the start, within
    /// which a live member's heartbeat comes and has it join again; one whose
    /// member joined again is held, and kept.
    #[test]
    fn a_group_not_held_at_the_start_expires_from_its_last_commit() {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let store = OffsetStore::open(path.clone()).unwrap();
        let now = PassTime::now();
        for g in ["lost", "refused", "rejoined"] {
            store
                .commit(g, Some("consumer"), vec![position_one()])
                .unwrap();
        }
        backdate(&path, now.wall - 8 * DAY);
        drop(store);
        // Membership where the server keeps it: none stored for "lost" and
        // "rejoined", a file that does not parse for "refused".
        let members = path.join(crate::storage::group_meta::MEMBERS_DIR);
        std::fs::create_dir_all(&members).unwrap();
        let refused = members.join(crate::storage::offsets::file_name("refused"));
        std::fs::write(
            &refused,
            b"{\"version\":1,\"group\":\"refused\",\"generation\":",
        )
        .unwrap();
        let store = OffsetStore::open(path.clone()).unwrap();
        store
            .commit("recent", Some("consumer"), vec![position_one()])
            .unwrap();
        let mut c = None;
        let log = logged(|| c = Some(opened(&members)));
        let c = c.unwrap();
        assert!(log.contains("starts without members"), "{log}");
        assert!(c.describe("lost").is_none() && c.describe("refused").is_none());
        let mut joined = c.join(JoinRequest {
            group: "rejoined".into(),
            ..req("")
        });
        assert_eq!(joined.try_recv().unwrap().error, codes::NONE);
        assert!(
            c.expire_offsets(&store, 7 * DAY, now).unwrap().is_empty(),
            "judged before a member could join again"
        );
        let c = GroupCoordinator {
            started: Moment::stored(now.wall - Duration::from_secs(3600)),
            ..c
        };
        assert_eq!(
            c.expire_offsets(&store, 7 * DAY, now).unwrap(),
            vec!["lost", "refused"]
        );
        assert!(store.group("lost").is_none() && store.group("refused").is_none());
        assert!(!refused.exists(), "its membership file goes with it");
        assert!(store.group("rejoined").is_some(), "held, with a member");
        assert!(
            store.group("recent").is_some(),
            "committed within the retention"
        );
        drop(store);
        let store = OffsetStore::open(path).unwrap();
        let mut left: Vec<String> = store.groups().into_iter().map(|g| g.group).collect();
        left.sort();
        assert_eq!(left, vec!["recent", "rejoined"], "durably");
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
        let now = PassTime::now();
        store.commit("simple", None, vec![commit(0)]).unwrap();
        store
            .commit("members", Some("consumer"), vec![commit(0)])
            .unwrap();
        backdate(&path, now.wall - 8 * DAY);
        drop(store);
        let store = OffsetStore::open(path.clone()).unwrap();
        // Partition 1 committed now; partition 0 eight days ago.
        store.commit("simple", None, vec![commit(1)]).unwrap();
        let c = GroupCoordinator {
            started: Moment::stored(now.wall - 9 * DAY),
            ..coordinator()
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
        let now = PassTime::now();
        backdate(&path, now.wall - 8 * DAY);
        drop(store);
        let store = OffsetStore::open(path.clone()).unwrap();
        // A broker up for 8 days; "active" has a member, "recent"'s just left.
        let c = GroupCoordinator {
            started: Moment::stored(now.wall - 8 * DAY),
            ..coordinator()
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

        // A pass stopped (the server shutting down) leaves every group for
        // the next.
        assert!(c
            .expire_offsets_until(&store, week, now, || true)
            .unwrap()
            .is_empty());
        assert!(store.group("simple").is_some());
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

    /// Partition 0 of `topic` at offset 1.
    fn position(topic: &str) -> crate::storage::Committed {
        crate::storage::Committed {
            topic: topic.into(),
            partition: 0,
            offset: 1,
            leader_epoch: -1,
            metadata: None,
        }
    }

    /// Times taken while the wall clock was a year ahead (a VM booted so,
    /// then set right): an idle group's last commit and a simple group's
    /// position, read back after a restart. They kept their groups until
    /// the clock caught up with them, a year; they now age from the pass
    /// that first found them ahead, and are kept as stored.
    #[test]
    fn commit_times_stored_while_the_clock_was_ahead_expire_after_the_retention() {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        let store = OffsetStore::open(path.clone()).unwrap();
        let commit = position("t");
        store
            .commit("idle", Some("consumer"), vec![commit.clone()])
            .unwrap();
        store.commit("simple", None, vec![commit]).unwrap();
        let now = PassTime::now();
        backdate(&path, now.wall + YEAR);
        drop(store);
        let store = OffsetStore::open(path.clone()).unwrap();
        let c = GroupCoordinator {
            started: Moment::stored(now.wall - 9 * DAY),
            ..coordinator()
        };
        let week = 7 * DAY;
        assert!(c.expire_offsets(&store, week, now).unwrap().is_empty());
        assert!(c
            .expire_offsets(&store, week, now + 6 * DAY)
            .unwrap()
            .is_empty());
        assert_eq!(
            c.expire_offsets(&store, week, now + 8 * DAY).unwrap(),
            vec!["idle", "simple"],
            "a week after the first pass found them ahead"
        );
    }

    /// A group that became empty and a position committed in this process,
    /// the wall clock then set forward a month (a clock behind at the boot,
    /// set right) or back a year: its age was the clock's, so the first
    /// expired a day later and the second was kept a year. They now age by
    /// the monotonic clock.
    #[test]
    fn times_taken_in_this_process_age_by_the_monotonic_clock_when_the_wall_clock_is_stepped() {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path().join("groups")).unwrap();
        let commit = position("t");
        let c = coordinator();
        let j = c.join(req("")).try_recv().expect("completes at once");
        store
            .commit("g", Some("consumer"), vec![commit.clone()])
            .unwrap();
        store.commit("simple", None, vec![commit]).unwrap();
        assert_eq!(
            c.leave("g", std::slice::from_ref(&j.member_id)),
            Ok(vec![codes::NONE])
        );
        let week = 7 * DAY;
        let now = PassTime::now();
        let forward = PassTime {
            wall: now.wall + 30 * DAY,
            mono: now.mono + DAY,
        };
        assert!(
            c.expire_offsets(&store, week, forward).unwrap().is_empty(),
            "a day old, whatever the wall clock says"
        );
        let back = PassTime {
            wall: now.wall - YEAR,
            mono: now.mono + 8 * DAY,
        };
        assert_eq!(
            c.expire_offsets(&store, week, back).unwrap(),
            vec!["g", "simple"]
        );
    }

    /// A group loaded `Empty` keeps the time it became empty as stored, ahead
    /// of the clock too: it was capped at the start's clock, and a clock
    /// behind at the start and set right later made the group look as old as
    /// the clock's error (its offsets expired early).
    #[test]
    fn a_loaded_groups_empty_time_is_kept_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        let ahead = to_ms(std::time::SystemTime::now()) + 365 * 24 * 3600 * 1000;
        std::fs::write(
            dir.path().join(crate::storage::offsets::file_name("e")),
            format!(
                r#"{{"version":1,"group":"e","generation":3,"protocol_type":"consumer","empty_since_ms":{ahead},"members":[]}}"#
            ),
        )
        .unwrap();
        let c = opened(dir.path());
        assert_eq!(to_ms(c.lock()["e"].empty_since.wall()), ahead);
    }

    /// Member metadata of kafkajs (its assigners' version 1: topics and user
    /// data, without the owned partitions of the consumer protocol's
    /// version 1) and of the Java client (version 1 whole) subscribe to their topics;
    /// a negative version, a null topic, or a topic count beyond what the
    /// bytes hold do not parse (nothing reserved for the count: 2^31 - 1
    /// asked for 64 GiB). Before, kafkajs's did not parse,
    /// so OffsetDelete refused every topic of a stable kafkajs group
    /// (GROUP_SUBSCRIBED_TO_TOPIC), and its positions in topics it no longer
    /// consumed never expired.
    #[test]
    fn subscriptions_parse_from_the_prefix_every_version_shares() {
        let subscription = |metadata: &[u8]| {
            let mut topics = BTreeSet::new();
            super::subscription(metadata, &mut topics)?;
            Some(topics.into_iter().collect::<Vec<_>>())
        };
        let topics = |version: i16, names: &[&str], rest: &[u8]| {
            let mut b = subscribing(names).to_vec();
            b[..2].copy_from_slice(&version.to_be_bytes());
            b.truncate(b.len() - 4); // the user data
            b.extend_from_slice(rest);
            b
        };
        let ab = Some(vec!["a".to_string(), "b".to_string()]);
        // kafkajs: user data of 0 bytes, nothing after.
        assert_eq!(subscription(&topics(1, &["a", "b"], &[0, 0, 0, 0])), ab);
        // Java, version 1: null user data, then one owned partition.
        let owned = [
            0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 1, b'a', 0, 0, 0, 1, 0, 0, 0, 0,
        ];
        assert_eq!(subscription(&topics(1, &["a", "b"], &owned)), ab);
        assert_eq!(subscription(&subscribing(&["a", "b"])), ab);
        assert_eq!(subscription(&topics(-1, &["a"], &[])), None);
        let mut null_topic = topics(0, &["a"], &[]);
        null_topic[6..8].copy_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(subscription(&null_topic), None);
        let mut huge = vec![0, 0];
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(subscription(&huge), None);
        let mut negative = vec![0, 0];
        negative.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(subscription(&negative), None);
        // A topic named again is one topic.
        assert_eq!(subscription(&subscribing(&["b", "a", "b"])), ab);
        assert_eq!(
            subscription(&topics(0, &["a", "b"], &[])[..10]),
            None,
            "cut short"
        );
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
        let now = PassTime::now();
        backdate(&path, now.wall - 8 * DAY);
        drop(store);
        let store = OffsetStore::open(path.clone()).unwrap();
        // Committed now: kept although no longer subscribed.
        store
            .commit("g", Some("consumer"), vec![commit("c")])
            .unwrap();
        let c = coordinator();
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

    /// The KIP-496 expiry read a stable group's subscriptions and then waited
    /// for the group's offsets writer lock (held across the fsyncs of every
    /// group sharing it); a member subscribing to a topic meanwhile still lost
    /// the topic's positions, which Kafka, deciding under the group's lock,
    /// keeps. The subscriptions are now read under the writer lock.
    #[test]
    fn an_expiry_held_up_while_a_member_subscribes_keeps_the_topics_positions() {
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
        store
            .commit("g", Some("consumer"), vec![commit("a"), commit("b")])
            .unwrap();
        let now = PassTime::now();
        backdate(&path, now.wall - 8 * DAY);
        drop(store);
        let store = OffsetStore::open(path).unwrap();
        let c = coordinator();
        let join = |member: &str, topics: &[&str]| {
            let r = JoinRequest {
                member_id: member.into(),
                protocols: vec![("range".into(), subscribing(topics))],
                ..req("")
            };
            let j = c.join(r).try_recv().expect("completes at once");
            let s = c
                .sync("g", j.generation, &j.member_id, None, vec![])
                .try_recv()
                .unwrap();
            assert_eq!(s.0, codes::NONE);
            j
        };
        let j = join("", &["a"]);
        std::thread::scope(|scope| {
            let writer = store.writer("g");
            let asked = store.writers_asked();
            let expiry = scope.spawn(|| c.expire_offsets(&store, 7 * DAY, now));
            // The expiry has looked at the group and waits for the lock (a
            // sleep alone let a late expiry read the subscriptions after the
            // join below, and pass with the bug back).
            while store.writers_asked() == asked {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !expiry.is_finished(),
                "the expiry waits for the writer lock"
            );
            // The member joins again subscribing to b as well.
            join(&j.member_id, &["a", "b"]);
            drop(writer);
            assert!(expiry.join().unwrap().unwrap().is_empty());
        });
        let mut topics: Vec<String> = store.fetch_all("g").into_iter().map(|c| c.topic).collect();
        topics.sort();
        assert_eq!(topics, ["a", "b"], "b is subscribed to again");
    }

    /// The log lines about a group's members (rebalanced, dropped, static
    /// replacements) did not say which group: with many groups they could
    /// not be told apart.
    #[test]
    fn log_lines_about_members_name_their_group() {
        use crate::storage::partition::tests::logged;
        let c = coordinator();
        let (joined, log) = logged(|| {
            c.join(JoinRequest {
                group: "billing".into(),
                ..req("")
            })
            .try_recv()
            .expect("completes at once")
        });
        assert_eq!(joined.error, codes::NONE);
        let line = log
            .lines()
            .find(|l| l.contains("group rebalanced"))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(line.contains("group=\"billing\""), "{line}");
    }

    /// The protocol a group rebalanced to is a client's string: logged
    /// escaped and cut, as group names are. A newline in it wrote a line of
    /// the client's choosing into the broker's log.
    #[test]
    fn the_protocol_a_group_rebalanced_to_is_logged_escaped() {
        use crate::storage::partition::tests::logged;
        let c = coordinator();
        let forged = format!("range\nERROR forged line{}", "x".repeat(1000));
        let (joined, log) = logged(|| {
            c.join(JoinRequest {
                protocols: vec![(forged.clone(), Bytes::from_static(b"meta"))],
                ..req("")
            })
            .try_recv()
            .expect("completes at once")
        });
        assert_eq!(joined.error, codes::NONE);
        assert!(!log.lines().any(|l| l.starts_with("ERROR forged")), "{log}");
        let line = log
            .lines()
            .find(|l| l.contains("group rebalanced"))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(line.contains(r#"protocol="range\nERROR forged"#), "{line}");
        assert!(line.len() < 600, "cut: {} bytes", line.len());
    }

    #[test]
    fn refused_joins_leave_no_group_and_empty_groups_without_offsets_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path().join("groups")).unwrap();
        let c = coordinator();
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
        let commit = position_one();
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
            let mut g = Group::new("g");
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
        let c = coordinator();
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
        let c = coordinator();
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
        let c = coordinator();
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
        let c = coordinator();
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
            let c = coordinator();
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

    /// The tick, every 200 ms under the lock every group request takes,
    /// searched the SyncGroups waiting for each member: a group of 2,000
    /// members with long client ids (JoinGroup v3, no member id round trip),
    /// all but the leader waiting in SyncGroup with rebalance timeouts of
    /// weeks, made each tick compare ids millions of times, seconds under the
    /// lock, and stalled the broker. Each join likewise searched the waiting
    /// JoinGroups and every member's protocols, and each request naming a
    /// static member searched the members for its instance: forming a group
    /// of `n` members took time in `n²`. Counted here, not timed: the member
    /// ids and protocol names looked up or compared.
    #[test]
    fn a_tick_and_each_request_look_at_a_large_group_in_linear_time() {
        const N: usize = 2_000;
        let client_id = "c".repeat(8 * 1024);
        let c = coordinator();
        let examined = || EXAMINED.with(|e| e.replace(0));
        // Every other member is static.
        let instance = |n: usize| (n % 2 == 1).then(|| format!("instance-{n}"));
        let join = |member: &str, n: usize| {
            c.join(JoinRequest {
                member_id: member.into(),
                instance_id: instance(n),
                client_id: client_id.clone(),
                rebalance_timeout: Duration::from_millis(i32::MAX as u64),
                ..req("")
            })
        };
        let leader = join("", 0).try_recv().unwrap();
        examined();
        let followers: Vec<_> = (1..N).map(|n| join("", n)).collect();
        let leader = join(&leader.member_id, 0).try_recv().unwrap();
        let forming = examined();
        assert!(
            forming <= 4 * N,
            "forming the group looked at {forming} ids"
        );
        assert_eq!(leader.members.len(), N);
        let followers: Vec<JoinResult> = followers
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap())
            .collect();
        for f in &followers {
            assert_eq!((f.error, f.generation), (codes::NONE, leader.generation));
            assert_eq!(f.member_id.len(), MEMBER_ID_CLIENT_BYTES + 1 + 36);
            assert!(f
                .member_id
                .starts_with(&format!("{}-", &client_id[..MEMBER_ID_CLIENT_BYTES])));
        }
        // Every follower waits in SyncGroup; the leader never syncs.
        let syncs: Vec<_> = followers
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let n = i + 1;
                c.sync(
                    "g",
                    f.generation,
                    &f.member_id,
                    instance(n).as_deref(),
                    vec![],
                )
            })
            .collect();
        examined();
        c.tick();
        let ticked = examined();
        assert!(ticked <= 3 * N, "a tick looked at {ticked} ids");
        assert_eq!(c.describe("g").unwrap().members.len(), N, "none expired");
        // A static member's heartbeat and commit look its instance up.
        let f = &followers[0];
        assert_eq!(
            c.heartbeat("g", f.generation, &f.member_id, instance(1).as_deref()),
            codes::NONE
        );
        assert_eq!(
            c.check_commit("g", f.generation, &f.member_id, instance(1).as_deref()),
            codes::REBALANCE_IN_PROGRESS
        );
        let static_requests = examined();
        assert!(static_requests <= 4, "{static_requests} ids looked at");
        // So does a new member's join: it rebalances the group, whose
        // followers sync again.
        let _joined = join("", N + 1);
        let joining = examined();
        assert!(joining <= 4, "a join looked at {joining} ids");
        for mut s in syncs {
            assert_eq!(s.try_recv().unwrap().0, codes::REBALANCE_IN_PROGRESS);
        }
    }

    /// A member id keeps at most [`MEMBER_ID_CLIENT_BYTES`] of its client id,
    /// cut at a character boundary, and is unique by its UUID.
    #[test]
    fn a_member_id_keeps_at_most_255_bytes_of_its_client_id() {
        let ids = |client_id: &str| (new_member_id(client_id), new_member_id(client_id));
        let (a, b) = ids("consumer-1");
        assert!(a.starts_with("consumer-1-") && a.len() == "consumer-1-".len() + 36);
        assert_ne!(a, b);
        assert!(ids("").0.starts_with("member-"));
        // 'é' is two bytes: 127 of them fit in 255 bytes, not 128.
        let (a, b) = ids(&"é".repeat(200));
        assert_eq!(a.len(), 254 + 1 + 36);
        assert!(a.starts_with(&format!("{}-", "é".repeat(127))));
        assert_ne!(a, b);
        let (a, _) = ids(&"x".repeat(32 * 1024));
        assert_eq!(a.len(), MEMBER_ID_CLIENT_BYTES + 1 + 36);
    }

    /// Member `id` of group "g" idle for 9 s of its 10 s session, then
    /// `request`: its answer, and whether the member is still as idle.
    fn after_idle(c: &GroupCoordinator, id: &str, request: impl FnOnce() -> i16) -> (i16, bool) {
        {
            let mut groups = c.lock();
            let m = groups.get_mut("g").unwrap().members.get_mut(id);
            m.unwrap().last_seen = Instant::now().checked_sub(Duration::from_secs(9)).unwrap();
        }
        let code = request();
        let idle = c.lock()["g"].members[id].last_seen.elapsed();
        (code, idle >= Duration::from_secs(9))
    }

    /// A member's commit counts as a heartbeat, as in Kafka: a consumer that
    /// commits keeps its session even when its heartbeats are late.
    #[test]
    fn a_members_commit_keeps_its_session() {
        let c = coordinator();
        let j = c.join(req("")).try_recv().unwrap();
        let s = c.sync("g", j.generation, &j.member_id, None, vec![]);
        assert!(s.blocking_recv().is_ok());
        let commit_after_idle = |generation| {
            after_idle(&c, &j.member_id, || {
                c.check_commit("g", generation, &j.member_id, None)
            })
        };
        assert_eq!(commit_after_idle(j.generation), (codes::NONE, false));
        // A refused commit is no heartbeat.
        assert_eq!(
            commit_after_idle(j.generation + 1),
            (codes::ILLEGAL_GENERATION, true)
        );
    }

    /// An OffsetCommit that waits for the disk (the group's writer lock, two
    /// fsyncs) holds back the heartbeats its member sent after it on the same
    /// connection: the member was expired by its session timeout while its
    /// heartbeats waited, and the group rebalanced. While the commit is
    /// stored the member is kept up to its rebalance timeout, and the commit's
    /// end counts as a heartbeat.
    #[test]
    fn a_member_whose_commit_waits_for_the_disk_outlives_its_session_timeout() {
        let c = Arc::new(coordinator());
        let j = c
            .join(JoinRequest {
                rebalance_timeout: Duration::from_secs(60),
                ..req("")
            })
            .try_recv()
            .unwrap();
        let s = c.sync("g", j.generation, &j.member_id, None, vec![]);
        assert!(s.blocking_recv().is_ok());
        let idle_for = |secs: u64| {
            let mut groups = c.lock();
            let m = groups.get_mut("g").unwrap().members.get_mut(&j.member_id);
            m.unwrap().last_seen = Instant::now()
                .checked_sub(Duration::from_secs(secs))
                .unwrap();
        };
        let present = || c.lock()["g"].members.contains_key(&j.member_id);
        let in_flight = c.commit_in_flight("g", &j.member_id);
        let second = c.commit_in_flight("g", &j.member_id);
        idle_for(11);
        c.tick();
        assert!(present(), "expired while its commit was stored");
        drop(second);
        // The drop was a heartbeat: idle again, kept by the other commit.
        idle_for(11);
        c.tick();
        assert!(present(), "one commit still stored");
        drop(in_flight);
        // The commit's end was a heartbeat.
        c.tick();
        assert!(present());
        assert!(c.lock()["g"].members[&j.member_id].last_seen.elapsed() < Duration::from_secs(5));
        // Past its rebalance timeout, a stored commit keeps it no longer.
        let in_flight = c.commit_in_flight("g", &j.member_id);
        idle_for(61);
        c.tick();
        assert!(!present(), "kept past its rebalance timeout");
        drop(in_flight);
        assert!(c.lock()["g"].committing.is_empty());
    }

    /// As Kafka's coordinator: a heartbeat refused for another generation
    /// does not keep the member's session (it did, so a client heartbeating
    /// at a stale generation was never expired); a member removed by a
    /// LeaveGroup while its JoinGroup waits gets UNKNOWN_MEMBER_ID with no
    /// member id on it (it got REBALANCE_IN_PROGRESS, and retried with the id
    /// it no longer had); a static member rejoining by its member id alone
    /// keeps its instance id (it became dynamic, so its restart joined as a
    /// second member instead of taking over).
    #[test]
    fn heartbeats_leaves_and_rejoins_treat_members_as_kafkas_coordinator_does() {
        let c = coordinator();
        let a = join_as(&c, "", Some("a")).try_recv().unwrap();
        assert_eq!((a.error, a.generation), (codes::NONE, 1));
        let s = c.sync("g", a.generation, &a.member_id, None, vec![]);
        assert!(s.blocking_recv().is_ok());
        let idle_after_heartbeat = |generation| {
            after_idle(&c, &a.member_id, || {
                c.heartbeat("g", generation, &a.member_id, None)
            })
        };
        assert_eq!(idle_after_heartbeat(a.generation), (codes::NONE, false));
        assert_eq!(
            idle_after_heartbeat(a.generation + 1),
            (codes::ILLEGAL_GENERATION, true),
            "a refused heartbeat keeps no session"
        );

        // Rejoining by its member id alone (the leader of a stable group: a
        // rebalance), it stays static.
        let a = join_as(&c, &a.member_id, None).try_recv().unwrap();
        assert_eq!((a.error, a.generation), (codes::NONE, 2));
        assert_eq!(
            c.lock()["g"].members[&a.member_id].instance_id.as_deref(),
            Some("a")
        );
        let restarted = join_as(&c, "", Some("a")).try_recv().unwrap();
        assert_eq!(restarted.error, codes::NONE);
        assert_eq!(
            c.lock()["g"].members.len(),
            1,
            "took over, not a second member"
        );

        // A static member removed by its instance id while its join waits.
        let mut b = join_as(&c, "", Some("b"));
        assert!(b.try_recv().is_err(), "waits for a to rejoin");
        assert_eq!(
            c.leave_identities("g", &[(String::new(), Some("b".to_string()))]),
            Ok(vec![codes::NONE])
        );
        let b = b.try_recv().expect("answered");
        assert_eq!(
            (b.error, b.member_id.as_str()),
            (codes::UNKNOWN_MEMBER_ID, "")
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
        let c = coordinator();
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
                members: 2,
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
        let c = coordinator();
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
        // A deletion that failed leaves the group as it was, to be deleted again.
        // A store pass while the group is `Dead` drops its emptying.
        assert!(!c.lock().get_mut("g").unwrap().take_store_due());
        c.finish_delete("g", false);
        assert_eq!(c.describe("g").unwrap().state, EMPTY);
        // To be stored as `Empty`: the file the deletion failed to remove
        // may still list members.
        assert!(c.lock().get("g").unwrap().unstored);
        assert_eq!(c.check_commit("g", -1, "", None), codes::NONE);
        // As Kafka's: an empty group takes a commit without a generation
        // whatever member it names (an admin client's).
        assert_eq!(c.check_commit("g", -1, "m", Some("i")), codes::NONE);
        assert_eq!(c.begin_delete("g", false), codes::NONE);
        c.finish_delete("g", true);
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
        c.finish_delete("offsets-only", false);
        assert!(
            c.describe("offsets-only").is_none(),
            "not held before its failed deletion"
        );
        assert_eq!(c.begin_delete("offsets-only", true), codes::NONE);
        c.finish_delete("offsets-only", true);
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
        let c = coordinator();
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

    /// A rebalance waits for a member id handed out with MEMBER_ID_REQUIRED
    /// (its client is on its way back), as Kafka's `hasAllMembersJoined`:
    /// it completed without it, and the new member's join started another
    /// generation at once. One that lapses, or leaves, is waited for no more.
    #[test]
    fn a_rebalance_waits_for_a_member_id_just_handed_out() {
        let c = coordinator();
        let a = c.join(req("")).try_recv().unwrap();
        assert_eq!((a.error, a.generation), (codes::NONE, 1));
        let synced = c.sync("g", 1, &a.member_id, None, vec![]);
        assert_eq!(synced.blocking_recv().unwrap().0, codes::NONE);
        // C joins (a rebalance starts) and B asks for a member id.
        let mut rc = c.join(req(""));
        let asking = || {
            let mut r = req("");
            r.require_known_member_id = true;
            let b = c.join(r).try_recv().unwrap();
            assert_eq!(b.error, codes::MEMBER_ID_REQUIRED);
            b.member_id
        };
        let b = asking();
        let mut ra = c.join(req(&a.member_id));
        assert!(ra.try_recv().is_err(), "waits for B");
        let mut rb = c.join(req(&b));
        let (a2, b2, c2) = (
            ra.try_recv().unwrap(),
            rb.try_recv().unwrap(),
            rc.try_recv().unwrap(),
        );
        assert_eq!((a2.generation, b2.generation, c2.generation), (2, 2, 2));
        let leader = [&a2, &b2, &c2]
            .into_iter()
            .find(|j| !j.members.is_empty())
            .unwrap();
        assert_eq!(leader.members.len(), 3, "one generation with all three");

        // A new member id that lapses: the rebalance completes without it.
        let mut rd = c.join(req(""));
        let lapsing = asking();
        let rejoin = |j: &JoinResult| c.join(req(&j.member_id));
        let mut waiting = vec![rejoin(&a2), rejoin(&b2), rejoin(&c2)];
        assert!(rd.try_recv().is_err() && waiting.iter_mut().all(|r| r.try_recv().is_err()));
        c.tick();
        assert!(rd.try_recv().is_err(), "not lapsed yet");
        {
            let mut groups = c.lock();
            let g = groups.get_mut("g").unwrap();
            *g.pending_members.get_mut(&lapsing).unwrap() = Instant::now();
        }
        c.tick();
        let d = rd.try_recv().expect("completed once the id lapsed");
        assert_eq!((d.error, d.generation), (codes::NONE, 3));
        for r in &mut waiting {
            assert_eq!(r.try_recv().unwrap().generation, 3);
        }

        // One that leaves: the same.
        let mut re = c.join(req(""));
        let leaving = asking();
        assert!(re.try_recv().is_err());
        let mut waiting = vec![rejoin(&a2), rejoin(&b2), rejoin(&c2), rejoin(&d)];
        assert!(re.try_recv().is_err(), "waits for the id handed out");
        assert_eq!(
            c.leave_identities("g", &[(leaving, None)]),
            Ok(vec![codes::NONE])
        );
        assert_eq!(re.try_recv().expect("completed once it left").generation, 4);
        for r in &mut waiting {
            assert_eq!(r.try_recv().unwrap().generation, 4);
        }
    }

    /// The group's protocol is the most voted, each member voting for its
    /// first protocol all support, as Kafka's `selectProtocol`; it was the
    /// first member's (by id) first choice, so which member's id sorted
    /// first (a restart gives a new one) decided the group's assignor.
    #[test]
    fn the_protocol_most_members_prefer_is_chosen() {
        let list = |names: &[&str]| -> Vec<(String, Bytes)> {
            names
                .iter()
                .map(|n| (n.to_string(), Bytes::new()))
                .collect()
        };
        let (rr, range, sticky) = (
            list(&["roundrobin", "range"]),
            list(&["range", "roundrobin"]),
            list(&["sticky", "range"]),
        );
        // (members' lists, the group's protocol, the choice, why)
        type Lists<'a> = Vec<&'a [(String, Bytes)]>;
        let cases: [(Lists, Option<&str>, &str, &str); 6] = [
            (vec![&rr, &range, &range], None, "range", "most votes"),
            (
                vec![&rr, &range, &range],
                Some("roundrobin"),
                "range",
                "the group's protocol does not outvote",
            ),
            (
                vec![&rr, &range],
                None,
                "roundrobin",
                "a tie: the first voted",
            ),
            (
                vec![&rr, &range],
                Some("range"),
                "range",
                "a tie: the group's protocol",
            ),
            (
                vec![&rr, &range],
                Some("sticky"),
                "roundrobin",
                "a tie without the group's protocol",
            ),
            (
                vec![&sticky, &sticky, &range],
                None,
                "range",
                "votes only for protocols all support",
            ),
        ];
        for (members, current, chosen, why) in cases {
            assert_eq!(
                choose_protocol(members.into_iter(), current).as_deref(),
                Some(chosen),
                "{why}"
            );
        }
        assert_eq!(choose_protocol(std::iter::empty(), None), None);
    }

    /// KIP-345, as Kafka's `onCompleteJoin`: a static member that does not
    /// rejoin before the rebalance deadline stays a member (in the leader's
    /// list, with its last metadata) until its session runs out, and back
    /// within it takes its partitions again without another rebalance; it
    /// was dropped at the deadline, and came back as a new member, forcing a
    /// second rebalance. With only such members left, no generation starts.
    #[test]
    fn a_static_member_absent_past_the_rebalance_deadline_stays_until_its_session_ends() {
        let c = coordinator();
        let join = |member: &str, instance: Option<&str>| join_as(&c, member, instance);
        let pass_deadline = || {
            let mut groups = c.lock();
            let g = groups.get_mut("g").unwrap();
            assert_eq!(g.state, State::PreparingRebalance);
            g.rebalance_deadline = Some(
                Instant::now()
                    .checked_sub(Duration::from_millis(1))
                    .unwrap(),
            );
        };
        let s = join("", Some("s")).try_recv().unwrap();
        assert_eq!((s.error, s.generation), (codes::NONE, 1));
        let assigned = vec![(s.member_id.clone(), Bytes::from_static(b"for-s"))];
        let synced = c.sync("g", 1, &s.member_id, Some("s"), assigned);
        assert_eq!(synced.blocking_recv().unwrap().0, codes::NONE);
        // s is away (a long deploy); a dynamic member joins, and the
        // rebalance deadline passes without s.
        let mut rd = join("", None);
        let before = Instant::now();
        pass_deadline();
        c.tick();
        let restarted = c.lock()["g"].members[&s.member_id].last_seen;
        assert!(
            restarted >= before,
            "s's session restarts at the completion, as Kafka's"
        );
        let d = rd
            .try_recv()
            .expect("the rebalance completed at its deadline");
        assert_eq!((d.error, d.generation), (codes::NONE, 2));
        assert_eq!(d.leader, d.member_id, "the member that rejoined leads");
        assert_eq!(
            listed_members(&d),
            sorted(vec![
                (s.member_id.clone(), Some("s".to_string())),
                (d.member_id.clone(), None),
            ]),
            "s stays in the leader's list"
        );
        // While the leader computes the assignment, a member rejoining with
        // its id and the same metadata (s was only slow; or a lost answer)
        // gets the current generation, as from Kafka, and starts no
        // rebalance; the leader gets the member list again.
        let back = join(&s.member_id, Some("s"))
            .try_recv()
            .expect("answered at once");
        assert_eq!(
            (back.error, back.generation, back.leader.as_str()),
            (codes::NONE, 2, d.member_id.as_str())
        );
        assert!(back.members.is_empty());
        let again = join(&d.member_id, None)
            .try_recv()
            .expect("answered at once");
        // d's id with an instance id no member has: unknown, as from Kafka,
        // to JoinGroup, SyncGroup and Heartbeat alike.
        assert_eq!(
            join(&d.member_id, Some("x")).try_recv().unwrap().error,
            codes::UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            c.sync("g", 2, &d.member_id, Some("x"), vec![])
                .try_recv()
                .unwrap()
                .0,
            codes::UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            c.heartbeat("g", 2, &d.member_id, Some("x")),
            codes::UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            c.check_commit("g", 2, &d.member_id, Some("x")),
            codes::UNKNOWN_MEMBER_ID,
            "a commit as an instance no member has"
        );
        assert_eq!((again.error, again.generation), (codes::NONE, 2));
        assert_eq!(listed_members(&again), listed_members(&d));
        let assignments = vec![
            (d.member_id.clone(), Bytes::from_static(b"for-d")),
            (s.member_id.clone(), Bytes::from_static(b"for-s2")),
        ];
        let synced = c.sync("g", 2, &d.member_id, None, assignments);
        assert_eq!(synced.blocking_recv().unwrap().0, codes::NONE);
        // s restarts within its session: answered at once, at generation 2,
        // with the partitions the leader gave it.
        let s2 = join("", Some("s")).try_recv().expect("no rebalance");
        assert_eq!((s2.error, s2.generation), (codes::NONE, 2));
        assert_eq!(
            c.sync("g", 2, &s2.member_id, Some("s"), vec![])
                .try_recv()
                .unwrap(),
            (codes::NONE, Bytes::from_static(b"for-s2"))
        );
        assert_eq!(c.heartbeat("g", 2, &d.member_id, None), codes::NONE);

        // d leaves and s is away again: at the deadline no member rejoined,
        // so no generation starts (none could lead); s's session then ends
        // and the group is empty.
        assert_eq!(
            c.leave_identities("g", &[(d.member_id.clone(), None)]),
            Ok(vec![codes::NONE])
        );
        pass_deadline();
        c.tick();
        {
            let groups = c.lock();
            let g = groups.get("g").unwrap();
            assert_eq!(g.state, State::PreparingRebalance);
            assert_eq!(g.generation, 2);
            assert!(g.rebalance_deadline.is_some_and(|t| t > Instant::now()));
            assert!(g.members.contains_key(&s2.member_id));
        }
        {
            let mut groups = c.lock();
            let m = groups.get_mut("g").unwrap().members.get_mut(&s2.member_id);
            m.unwrap().last_seen = Instant::now().checked_sub(Duration::from_secs(11)).unwrap();
        }
        c.tick();
        assert_eq!(c.describe("g").unwrap().state, EMPTY);
    }

    /// Makes group "g"'s SyncGroup deadline (its rebalance timeout after its
    /// generation started) pass, if it waits for one, and ticks.
    fn pass_sync_deadline(c: &GroupCoordinator) {
        {
            let mut groups = c.lock();
            let g = groups.get_mut("g").unwrap();
            if g.sync_deadline.is_some() {
                g.sync_deadline = Some(
                    Instant::now()
                        .checked_sub(Duration::from_millis(1))
                        .unwrap(),
                );
            }
        }
        c.tick();
    }

    /// A leader that heartbeats but never sends its assignment held the
    /// group in CompletingRebalance for good: its session never ran out, and
    /// the followers waiting in SyncGroup expired one by one. As Kafka's
    /// pending-sync expiry, a member that has not sent SyncGroup within the
    /// rebalance timeout after its generation started is removed, and the
    /// others rebalance without it.
    #[test]
    fn a_leader_not_sending_syncgroup_within_the_rebalance_timeout_is_removed() {
        let c = coordinator();
        let (a, b) = two_joined(&c);
        let mut b_sync = c.sync("g", 2, &b.member_id, None, vec![]);
        assert!(b_sync.try_recv().is_err(), "b waits for the leader");
        assert_eq!(c.heartbeat("g", 2, &a.member_id, None), codes::NONE);
        pass_sync_deadline(&c);
        assert_eq!(
            b_sync.try_recv().unwrap().0,
            codes::REBALANCE_IN_PROGRESS,
            "b rejoins"
        );
        assert_eq!(
            c.heartbeat("g", 2, &a.member_id, None),
            codes::UNKNOWN_MEMBER_ID,
            "a was removed"
        );
        let b3 = c
            .join(req(&b.member_id))
            .try_recv()
            .expect("b alone is the group");
        assert_eq!((b3.error, b3.generation), (codes::NONE, 3));
        assert_eq!(b3.leader, b.member_id);
        assert_eq!(listed_members(&b3), [(b.member_id.clone(), None)]);
    }

    /// A static member kept in a generation while it was away (see above)
    /// held its partitions until its session ran out; as Kafka's, it now has
    /// the rebalance timeout after the generation started to come back and
    /// send SyncGroup (under its new member id, which has to sync as the old
    /// one had), or is removed. Members that synced in time are not touched.
    #[test]
    fn an_absent_static_member_not_syncing_within_the_rebalance_timeout_is_removed() {
        // Away; back and synced; back (rejoined) but not synced.
        for (comes_back, syncs) in [(false, false), (true, true), (true, false)] {
            let c = coordinator();
            let join = |member: &str, instance: Option<&str>| join_as(&c, member, instance);
            let s = join("", Some("s")).try_recv().unwrap();
            let synced = c.sync("g", 1, &s.member_id, Some("s"), vec![]);
            assert_eq!(synced.blocking_recv().unwrap().0, codes::NONE);
            // s is away; a dynamic member joins, and the rebalance completes
            // at its deadline with s kept.
            let mut rd = join("", None);
            {
                let mut groups = c.lock();
                let g = groups.get_mut("g").unwrap();
                g.rebalance_deadline = Some(
                    Instant::now()
                        .checked_sub(Duration::from_millis(1))
                        .unwrap(),
                );
            }
            c.tick();
            let d = rd.try_recv().unwrap();
            assert_eq!((d.error, d.generation), (codes::NONE, 2));
            assert_eq!(listed_members(&d).len(), 2, "s kept in generation 2");
            let assignments = vec![
                (d.member_id.clone(), Bytes::from_static(b"for-d")),
                (s.member_id.clone(), Bytes::from_static(b"for-s")),
            ];
            let synced = c.sync("g", 2, &d.member_id, None, assignments);
            assert_eq!(synced.blocking_recv().unwrap().0, codes::NONE);
            let mut s_now = s.member_id.clone();
            if comes_back {
                let s2 = join("", Some("s")).try_recv().expect("no rebalance");
                assert_eq!((s2.error, s2.generation), (codes::NONE, 2));
                if syncs {
                    let mut synced = c.sync("g", 2, &s2.member_id, Some("s"), vec![]);
                    assert_eq!(
                        synced.try_recv().unwrap(),
                        (codes::NONE, Bytes::from_static(b"for-s"))
                    );
                }
                s_now = s2.member_id;
            }
            assert_eq!(c.heartbeat("g", 2, &s_now, Some("s")), codes::NONE);
            pass_sync_deadline(&c);
            let heartbeat = c.heartbeat("g", 2, &d.member_id, None);
            if syncs {
                assert_eq!(heartbeat, codes::NONE, "every member synced in time");
                assert_eq!(c.heartbeat("g", 2, &s_now, Some("s")), codes::NONE);
            } else {
                assert_eq!(heartbeat, codes::REBALANCE_IN_PROGRESS);
                let d3 = join(&d.member_id, None).try_recv().expect("d alone");
                assert_eq!((d3.error, d3.generation), (codes::NONE, 3));
                assert_eq!(listed_members(&d3), [(d.member_id.clone(), None)]);
            }
        }
    }

    /// With a membership store, a static member that had not synced rejoined
    /// (restarted) and its replacement waited to be stored when the SyncGroup
    /// deadline passed: the old id was spared (its instance is alive) but
    /// dropped from the due syncs, so the new id never had to sync, and a
    /// client hung after its JoinGroup held the partitions for good. The old
    /// id now stays due until the store decides, and the new id inherits it.
    #[test]
    fn a_static_member_replaced_across_the_sync_deadline_still_has_to_sync() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let d = c.join(req("")).try_recv().unwrap();
        let mut rs = join_as(&c, "", Some("s"));
        let d = c.join(req(&d.member_id)).try_recv().unwrap();
        let s = rs.try_recv().unwrap();
        assert_eq!(
            (d.generation, s.generation, d.leader.as_str()),
            (2, 2, d.member_id.as_str())
        );
        let assignments = vec![
            (d.member_id.clone(), Bytes::from_static(b"for-d")),
            (s.member_id.clone(), Bytes::from_static(b"for-s")),
        ];
        let mut synced = c.sync("g", 2, &d.member_id, None, assignments);
        c.store_group("g");
        assert_eq!(synced.try_recv().unwrap().0, codes::NONE);
        // s never synced; it restarts, and its replacement waits to be
        // stored while the deadline passes.
        let mut rs2 = join_as(&c, "", Some("s"));
        assert!(rs2.try_recv().is_err(), "answered once stored");
        pass_sync_deadline(&c);
        assert_eq!(c.heartbeat("g", 2, &d.member_id, None), codes::NONE);
        c.store_group("g");
        let s2 = rs2.try_recv().unwrap();
        assert_eq!((s2.error, s2.generation), (codes::NONE, 2));
        // The new id has not synced either.
        pass_sync_deadline(&c);
        assert_eq!(
            c.heartbeat("g", 2, &d.member_id, None),
            codes::REBALANCE_IN_PROGRESS,
            "s's new id was not removed"
        );
    }

    /// A static member replacing itself while the group rebalances: its old
    /// id's pending join is answered FENCED_INSTANCE_ID, and the new id takes
    /// its place in the rebalance (and as leader).
    #[test]
    fn a_static_member_replaced_during_a_rebalance_fences_the_old_join() {
        let c = coordinator();
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
        assert_eq!(
            listed_members(&a2),
            sorted(vec![
                (a2.member_id.clone(), Some("a".to_string())),
                (d.member_id.clone(), None),
                (m.member_id.clone(), None),
            ])
        );
    }

    /// `v`, sorted.
    fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
        v.sort();
        v
    }

    /// The members a leader's JoinGroup answer lists (member id, instance
    /// id), sorted.
    fn listed_members(j: &JoinResult) -> Vec<(String, Option<String>)> {
        sorted(
            j.members
                .iter()
                .map(|(id, inst, _)| (id.clone(), inst.clone()))
                .collect(),
        )
    }

    /// A coordinator storing membership in `dir`.
    fn opened(dir: &std::path::Path) -> GroupCoordinator {
        GroupCoordinator::open(&no_initial_delay(), dir.to_path_buf()).unwrap()
    }

    /// Kafka's settings, but the first rebalance of an empty group does not
    /// wait for more members (as most tests join one member at a time).
    fn no_initial_delay() -> GroupConfig {
        GroupConfig {
            initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        }
    }

    /// An in-memory coordinator with [`no_initial_delay`].
    fn coordinator() -> GroupCoordinator {
        GroupCoordinator::new(&no_initial_delay())
    }

    /// An empty group kept for its committed positions (for days, until
    /// they expire) takes no place among the `MAX_GROUPS` groups in use:
    /// counted, such groups would have refused every new group once enough
    /// consumers had come and gone.
    #[test]
    fn idle_groups_kept_for_their_positions_do_not_fill_the_most_groups() {
        TEST_MAX_GROUPS.with(|m| m.set(Some(1)));
        let c = coordinator();
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path().to_path_buf()).unwrap();
        let j = join_in(&c, "old", "", None).try_recv().unwrap();
        assert_eq!(j.error, codes::NONE);
        let commit = position_one();
        store.commit("old", Some("consumer"), vec![commit]).unwrap();
        assert_eq!(c.leave("old", &[j.member_id]), Ok(vec![codes::NONE]));
        assert_eq!(c.forget_empty_groups(&store), 0);
        assert!(c.holds("old"));
        let j = join_in(&c, "new", "", None).try_recv().unwrap();
        TEST_MAX_GROUPS.with(|m| m.set(None));
        assert_eq!(j.error, codes::NONE, "a new group refused for an idle one");
    }

    /// A JoinGroup that would start a group past `MAX_GROUPS` (here 3) in
    /// use by members is answered COORDINATOR_NOT_AVAILABLE and leaves
    /// nothing behind; joins to the groups held go on, and a group forgotten
    /// makes room again. Before, each JoinGroup to a new group id answered
    /// MEMBER_ID_REQUIRED left a group behind, without bound.
    #[test]
    fn joins_past_the_most_groups_are_refused_until_one_is_forgotten() {
        TEST_MAX_GROUPS.with(|m| m.set(Some(3)));
        let c = coordinator();
        let ask = |group: &str| ask_member_id(&c, group);
        let mut ids = Vec::new();
        for g in ["a", "b", "c"] {
            let j = join_in(&c, g, "", None).try_recv().unwrap();
            assert_eq!(j.error, codes::NONE, "{g}");
            ids.push(j.member_id);
        }
        let j = ask("d");
        assert_eq!(j.error, codes::COORDINATOR_NOT_AVAILABLE);
        assert!(!c.holds("d"));
        // A group held takes another member: its join waits for the
        // rebalance, which ends once the member before it joins again.
        let mut newcomer = join_in(&c, "a", "", None);
        assert!(matches!(
            newcomer.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ));
        let rejoined = join_in(&c, "a", &ids[0], None).try_recv().unwrap();
        let newcomer = newcomer.try_recv().unwrap();
        assert_eq!((rejoined.error, newcomer.error), (codes::NONE, codes::NONE));
        assert_eq!(
            rejoined.members.len(),
            2,
            "the leader is given both members"
        );
        // One forgotten (its member gone) makes room.
        assert_eq!(c.leave("b", &[ids[1].clone()]), Ok(vec![codes::NONE]));
        let offsets = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(offsets.path().to_path_buf()).unwrap();
        assert!(c.forget_if_empty("b", &store));
        assert_eq!(ask("d").error, codes::MEMBER_ID_REQUIRED);
        TEST_MAX_GROUPS.with(|m| m.set(None));
    }

    /// Groups holding nothing but member ids handed out with
    /// MEMBER_ID_REQUIRED do not keep a new group out: at the most groups,
    /// the one whose ids lapse first is forgotten to make room. A client
    /// sending JoinGroups to new group ids filled the groups in use in
    /// seconds, and every new group was refused for as long as their ids
    /// took to lapse (up to 30 minutes).
    #[test]
    fn groups_of_handed_out_ids_alone_make_room_for_a_new_group() {
        TEST_MAX_GROUPS.with(|m| m.set(Some(3)));
        let c = coordinator();
        // The flood asks the longest sessions; a real consumer 10 s.
        let ask_for = |group: &str, member: &str, session_ms: u64| {
            c.join(JoinRequest {
                group: group.into(),
                require_known_member_id: true,
                session_timeout: Duration::from_millis(session_ms),
                ..req(member)
            })
            .try_recv()
            .unwrap()
        };
        let ask = |group: &str, member: &str| ask_for(group, member, 1_800_000);
        let member = join_in(&c, "real", "", None).try_recv().unwrap();
        assert_eq!(member.error, codes::NONE);
        let first = ask("flood-1", "");
        std::thread::sleep(Duration::from_millis(2));
        let second = ask("flood-2", "");
        assert_eq!(
            (first.error, second.error),
            (codes::MEMBER_ID_REQUIRED, codes::MEMBER_ID_REQUIRED)
        );
        std::thread::sleep(Duration::from_millis(2));
        let mine = ask_for("mine", "", 10_000);
        assert_eq!(mine.error, codes::MEMBER_ID_REQUIRED, "room made");
        assert!(!c.holds("flood-1"), "the group of the oldest ids forgotten");
        assert!(c.holds("flood-2") && c.holds("real"));
        assert_eq!(
            ask("flood-1", &first.member_id).error,
            codes::UNKNOWN_MEMBER_ID
        );
        // The flood goes on: its own older group goes, not the one whose id
        // lapses first.
        assert_eq!(ask("flood-3", "").error, codes::MEMBER_ID_REQUIRED);
        assert!(!c.holds("flood-2"));
        // The member given an id joins with it.
        let j = c
            .join(JoinRequest {
                group: "mine".into(),
                session_timeout: Duration::from_millis(10_000),
                ..req(&mine.member_id)
            })
            .try_recv()
            .unwrap();
        assert_eq!(j.error, codes::NONE);
        let j = ask("another", "");
        assert_eq!(j.error, codes::MEMBER_ID_REQUIRED, "flood-3 forgotten");
        assert!(!c.holds("flood-3"));
        // Groups in use by members are never forgotten so.
        let joined = c
            .join(JoinRequest {
                group: "another".into(),
                session_timeout: Duration::from_millis(1_800_000),
                ..req(&j.member_id)
            })
            .try_recv()
            .unwrap();
        assert_eq!(joined.error, codes::NONE);
        assert_eq!(ask("more", "").error, codes::COORDINATOR_NOT_AVAILABLE);
        assert!(c.holds("real") && c.holds("mine") && c.holds("another"));
        TEST_MAX_GROUPS.with(|m| m.set(None));
    }

    /// At the most groups in use, a join to a new group id neither counts
    /// the groups in use nor looks through them all for one to forget: one
    /// count between two session ticks, then one look a join at the groups
    /// that were handed ids, oldest first. Before, each join walked every
    /// group twice under the lock every group request takes (1.5 ms a join
    /// at 101,199 groups), so a flood at the limit held it most of the time.
    #[test]
    fn joins_at_the_most_groups_do_not_walk_every_group() {
        const MOST: usize = 50;
        TEST_MAX_GROUPS.with(|m| m.set(Some(MOST)));
        let examined = || EXAMINED.with(|e| e.replace(0));
        let c = coordinator();
        let ask = |group: &str| ask_member_id(&c, group);
        for i in 0..MOST {
            assert_eq!(ask(&format!("flood-{i}")).error, codes::MEMBER_ID_REQUIRED);
        }
        c.tick();
        examined();
        const MORE: usize = 1_000;
        for i in MOST..MOST + MORE {
            assert_eq!(ask(&format!("flood-{i}")).error, codes::MEMBER_ID_REQUIRED);
        }
        let work = examined();
        assert!(
            work <= MOST + MORE,
            "{work} groups looked at for {MORE} joins at the most {MOST}"
        );
        // Each made room by forgetting the oldest.
        assert_eq!(c.lock().len(), MOST);
        assert!(!c.holds(&format!("flood-{}", MORE - 1)));
        assert!(c.holds(&format!("flood-{MORE}")));
        // Groups holding members are counted once, then refused at once.
        for i in 0..MOST {
            let j = ask(&format!("member-{i}"));
            let j = join_in(&c, &format!("member-{i}"), &j.member_id, None)
                .try_recv()
                .unwrap();
            assert_eq!(j.error, codes::NONE);
        }
        c.tick();
        examined();
        for i in 0..MORE {
            assert_eq!(
                ask(&format!("more-{i}")).error,
                codes::COORDINATOR_NOT_AVAILABLE
            );
        }
        let work = examined();
        TEST_MAX_GROUPS.with(|m| m.set(None));
        assert!(
            work <= 2 * MOST,
            "{work} groups looked at for {MORE} refused joins"
        );
        // The entries of groups whose handed-out ids were taken up are gone.
        assert!(c.lock().cap.handed_out.is_empty());
    }

    /// A join to a group not in use that is refused (a stale member id)
    /// does not count toward the groups in use. Before, each counted until
    /// the next tick, and joins to new groups were refused, or forgot
    /// another client's group, with fewer than the most groups in use.
    #[test]
    fn refused_joins_to_idle_groups_do_not_count_as_groups_in_use() {
        TEST_MAX_GROUPS.with(|m| m.set(Some(3)));
        let c = coordinator();
        for g in ["x", "y"] {
            let j = join_in(&c, g, "", None).try_recv().unwrap();
            assert_eq!(c.leave(g, &[j.member_id]), Ok(vec![codes::NONE]));
        }
        let a = join_in(&c, "a", "", None).try_recv().unwrap();
        assert_eq!(a.error, codes::NONE);
        c.tick();
        for _ in 0..2 {
            let j = join_in(&c, "x", "stale", None).try_recv().unwrap();
            assert_eq!(j.error, codes::UNKNOWN_MEMBER_ID);
        }
        assert_eq!(
            join_in(&c, "z", "", None).try_recv().unwrap().error,
            codes::NONE
        );
        let j = join_in(&c, "x", "stale", None).try_recv().unwrap();
        assert_eq!(j.error, codes::UNKNOWN_MEMBER_ID);
        let w = join_in(&c, "w", "", None).try_recv().unwrap();
        TEST_MAX_GROUPS.with(|m| m.set(None));
        assert_eq!(w.error, codes::NONE, "refused with 2 of 3 groups in use");
    }

    /// A group whose handed-out member ids all lapsed, and that never had
    /// more, is forgotten at the tick. Before, such groups stayed (out of
    /// use, so not counted) until the forgetting of empty groups every 10
    /// minutes: a client handing itself ids for new group ids every 6 s
    /// piled them up without bound, and a join to each put it in use past
    /// the limit.
    #[test]
    fn groups_whose_handed_out_ids_lapsed_do_not_pile_up() {
        TEST_MAX_GROUPS.with(|m| m.set(Some(3)));
        let c = coordinator();
        for round in 0..5 {
            for i in 0..3 {
                let j = ask_member_id(&c, &format!("flood-{round}-{i}"));
                assert_eq!(j.error, codes::MEMBER_ID_REQUIRED);
            }
            for g in c.lock().values_mut() {
                for lapses in g.pending_members.values_mut() {
                    *lapses = Instant::now();
                }
            }
            c.tick();
        }
        let held = c.lock().len();
        TEST_MAX_GROUPS.with(|m| m.set(None));
        assert_eq!(held, 0, "{held} groups held");
        assert!(c.lock().cap.handed_out.is_empty());
    }

    /// Groups emptied as their members' sessions lapse are kept (as Kafka
    /// keeps them until its next cleanup), out of use and so outside the
    /// limit of groups in use: the tick tells once they outnumber that
    /// limit, and those without positions are then forgotten. Before, a
    /// client joining new group ids and going silent piled them up for 10
    /// minutes, each a look at every tick.
    #[test]
    fn groups_emptied_by_lapsed_sessions_are_told_once_they_crowd() {
        TEST_MAX_GROUPS.with(|m| m.set(Some(2)));
        let c = coordinator();
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path().to_path_buf()).unwrap();
        store
            .commit("g0", Some("consumer"), vec![position_one()])
            .unwrap();
        let lapse = |c: &GroupCoordinator| {
            for g in c.lock().values_mut() {
                for m in g.members.values_mut() {
                    m.last_seen = Instant::now().checked_sub(Duration::from_secs(60)).unwrap();
                }
            }
        };
        let mut crowded = Vec::new();
        for round in 0..3 {
            for i in 0..2 {
                let g = format!("g{}", round * 2 + i);
                assert_eq!(
                    join_in(&c, &g, "", None).try_recv().unwrap().error,
                    codes::NONE
                );
            }
            lapse(&c);
            crowded.push(c.tick());
        }
        let held = c.lock().len();
        assert!(
            c.lock()
                .values()
                .all(|g| g.state == State::Empty && g.members.is_empty()),
            "every session lapsed"
        );
        assert_eq!(
            (crowded.as_slice(), held),
            ([false, true, true].as_slice(), 6)
        );
        // A shutdown stops a pass before the next group.
        let asked = std::cell::Cell::new(0);
        let stop_after_two = || {
            asked.set(asked.get() + 1);
            asked.get() > 2
        };
        assert_eq!(c.forget_empty_groups_until(&store, stop_after_two), 2);
        assert_eq!(c.forget_empty_groups(&store), 3);
        assert!(c.holds("g0"), "kept for its positions");
        let crowded = c.tick();
        TEST_MAX_GROUPS.with(|m| m.set(None));
        assert!(!crowded);
    }

    /// A pass storing the membership of changed groups stops before its next
    /// group once the server is shutting down, leaving the rest to the
    /// shutdown's own pass: before, a pass over thousands of emptied groups
    /// (two fsyncs each) held the shutdown until it ended.
    #[test]
    fn a_store_pass_stops_before_the_next_group_once_told() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        for g in ["a", "b", "c"] {
            let r = join_in(&c, g, "", None).try_recv().unwrap();
            assert_eq!(r.error, codes::NONE);
            assert_eq!(c.leave(g, &[r.member_id]), Ok(vec![codes::NONE]));
        }
        assert_eq!(c.changed_count(), 3, "each emptied, to be stored");
        let asked = std::cell::Cell::new(0);
        let stop_after_two = || {
            asked.set(asked.get() + 1);
            asked.get() > 2
        };
        assert_eq!(c.store_changed_until(stop_after_two), 2);
        assert_eq!(c.changed_count(), 1, "one left for the shutdown's pass");
        c.store_changed();
        assert_eq!(c.changed_count(), 0);
    }

    /// A pass forgetting empty groups fsyncs their directory once, not once a
    /// group: a pass over 100,000 emptied groups took minutes.
    #[test]
    fn forgetting_many_groups_syncs_their_directory_once() {
        use crate::wal::files::SYNCED_DIRS;
        let dir = tempfile::tempdir().unwrap();
        {
            let (meta, _) = GroupMetaStore::open(dir.path().to_path_buf()).unwrap();
            for i in 0..5 {
                let empty = GroupMeta {
                    generation: 1,
                    protocol_type: Some("consumer".into()),
                    protocol: None,
                    leader: None,
                    empty_since_ms: Some(0),
                    members: Vec::new(),
                };
                meta.write(&format!("g{i}"), &empty).unwrap();
            }
        }
        let c = opened(dir.path());
        assert_eq!(c.lock().len(), 5);
        let offsets = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(offsets.path().to_path_buf()).unwrap();
        SYNCED_DIRS.with(|s| s.borrow_mut().clear());
        assert_eq!(c.forget_empty_groups(&store), 5);
        let synced = SYNCED_DIRS.with(|s| s.borrow().clone());
        assert_eq!(synced, vec![dir.path().to_path_buf()]);
        drop(c);
        assert_eq!(opened(dir.path()).lock().len(), 0, "their files are gone");
    }

    /// Groups not in use, kept for their positions, that members join again
    /// count toward the most groups in use before the next count: a join to
    /// a new group id past them is refused. Without it, the groups in use
    /// counted at the tick (none) let a new group past the limit.
    #[test]
    fn groups_joined_again_count_toward_the_most_groups_before_a_count() {
        TEST_MAX_GROUPS.with(|m| m.set(Some(2)));
        let c = coordinator();
        for g in ["x", "y"] {
            let j = join_in(&c, g, "", None).try_recv().unwrap();
            assert_eq!(c.leave(g, &[j.member_id]), Ok(vec![codes::NONE]));
        }
        c.tick();
        assert_eq!(c.lock().cap.counted, 0);
        for g in ["x", "y"] {
            assert_eq!(
                join_in(&c, g, "", None).try_recv().unwrap().error,
                codes::NONE
            );
        }
        let z = join_in(&c, "z", "", None).try_recv().unwrap();
        TEST_MAX_GROUPS.with(|m| m.set(None));
        assert_eq!(z.error, codes::COORDINATOR_NOT_AVAILABLE);
        assert!(!c.holds("z"));
    }

    /// The first rebalance of an empty group completed at its first member's
    /// JoinGroup: consumers started together formed a generation of one and
    /// rebalanced again as each of the others joined. As with Kafka's
    /// `group.initial.rebalance.delay.ms`, it now waits the delay, and again
    /// while new members join (out of the rebalance timeout); the members
    /// joined by then form the first generation together. A group empty again
    /// waits again.
    #[test]
    fn the_first_rebalance_of_an_empty_group_waits_for_more_members() {
        let delay = Duration::from_millis(1000);
        let c = GroupCoordinator::new(&GroupConfig {
            initial_rebalance_delay_ms: 1000,
            ..GroupConfig::default()
        });
        let mut a = c.join(JoinRequest::of_consumer(""));
        c.tick();
        assert!(a.try_recv().is_err(), "answered before the delay");
        std::thread::sleep(delay / 2);
        let mut b = c.join(JoinRequest::of_consumer(""));
        std::thread::sleep(delay / 2 + Duration::from_millis(100));
        // The first wait is over, but a member joined during it.
        c.tick();
        assert!(
            a.try_recv().is_err(),
            "a member joining during the wait did not extend it"
        );
        assert!(b.try_recv().is_err());
        std::thread::sleep(delay + Duration::from_millis(100));
        c.tick();
        let (a, b) = (a.try_recv().unwrap(), b.try_recv().unwrap());
        assert_eq!((a.error, b.error), (codes::NONE, codes::NONE));
        assert_eq!(
            (a.generation, b.generation),
            (1, 1),
            "one generation of both"
        );
        assert_eq!(
            a.members.len() + b.members.len(),
            2,
            "the leader lists both"
        );

        assert_eq!(
            c.leave("g", &[a.member_id, b.member_id]),
            Ok(vec![codes::NONE; 2])
        );
        assert_eq!(c.describe("g").unwrap().state, EMPTY);
        let mut again = c.join(JoinRequest::of_consumer(""));
        c.tick();
        assert!(
            again.try_recv().is_err(),
            "an empty group's rebalance waits again"
        );
        std::thread::sleep(delay + Duration::from_millis(100));
        c.tick();
        let again = again.try_recv().unwrap();
        assert_eq!((again.error, again.generation), (codes::NONE, 2));
    }

    /// Two members `a` (the leader) and `b` at generation 2, neither synced yet.
    fn two_joined(c: &GroupCoordinator) -> (JoinResult, JoinResult) {
        let a = c.join(req("")).try_recv().unwrap();
        let mut b = c.join(req(""));
        let a = c.join(req(&a.member_id)).try_recv().unwrap();
        let b = b.try_recv().unwrap();
        assert_eq!((a.error, b.error, a.generation, b.generation), (0, 0, 2, 2));
        assert_eq!(a.leader, a.member_id);
        (a, b)
    }

    /// The leader's and the follower's SyncGroup with assignments "for a" and
    /// "for b": their receivers, with the leader's sent last.
    fn sync_both(
        c: &GroupCoordinator,
        a: &JoinResult,
        b: &JoinResult,
    ) -> (oneshot::Receiver<SyncResult>, oneshot::Receiver<SyncResult>) {
        let b_sync = c.sync("g", b.generation, &b.member_id, None, vec![]);
        let assignments = vec![
            (a.member_id.clone(), Bytes::from_static(b"for a")),
            (b.member_id.clone(), Bytes::from_static(b"for b")),
        ];
        let a_sync = c.sync("g", a.generation, &a.member_id, None, assignments);
        (a_sync, b_sync)
    }

    /// A group's membership survives a restart of the coordinator: the SyncGroup
    /// that completes the rebalance is answered once the membership is stored,
    /// and a coordinator opened on the same directory has the group `Stable` at
    /// its generation, so that its members' commits and heartbeats go on.
    #[test]
    fn a_stable_group_survives_a_restart_of_the_coordinator() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (a, b) = two_joined(&c);
        let (mut a_sync, mut b_sync) = sync_both(&c, &a, &b);
        assert!(a_sync.try_recv().is_err(), "answered before it was stored");
        assert!(b_sync.try_recv().is_err(), "answered before it was stored");
        assert_eq!(c.describe("g").unwrap().state, "CompletingRebalance");
        c.store_group("g");
        assert_eq!(
            a_sync.try_recv().unwrap(),
            (codes::NONE, Bytes::from_static(b"for a"))
        );
        assert_eq!(
            b_sync.try_recv().unwrap(),
            (codes::NONE, Bytes::from_static(b"for b"))
        );
        let before = c.describe("g").unwrap();
        assert_eq!(before.state, "Stable");
        drop(c);

        let c = opened(dir.path());
        assert_eq!(c.check_commit("g", 2, &a.member_id, None), codes::NONE);
        assert_eq!(c.check_commit("g", 2, &b.member_id, None), codes::NONE);
        assert_eq!(c.heartbeat("g", 2, &a.member_id, None), codes::NONE);
        assert_eq!(c.heartbeat("g", 2, &b.member_id, None), codes::NONE);
        assert_eq!(
            c.check_commit("g", 1, &a.member_id, None),
            codes::ILLEGAL_GENERATION
        );
        let mut want = vec![
            (
                a.member_id.clone(),
                Bytes::from_static(b"meta"),
                Bytes::from_static(b"for a"),
            ),
            (
                b.member_id.clone(),
                Bytes::from_static(b"meta"),
                Bytes::from_static(b"for b"),
            ),
        ];
        want.sort();
        assert_eq!(
            summary_of(&c),
            (
                "Stable".into(),
                Some("consumer".into()),
                "range".into(),
                want
            )
        );
        assert_eq!(c.describe("g").unwrap(), before);
        assert_eq!(
            c.overview(),
            vec![GroupOverview {
                group: "g".into(),
                state: "Stable",
                protocol_type: Some("consumer".into()),
                members: 2,
            }]
        );
        // The followers' SyncGroup, sent again, gets its assignment; the leader
        // stays the leader.
        assert_eq!(
            c.sync("g", 2, &b.member_id, None, vec![])
                .try_recv()
                .unwrap(),
            (codes::NONE, Bytes::from_static(b"for b"))
        );
        assert_eq!(c.lock()["g"].leader.as_deref(), Some(a.member_id.as_str()));
        // A new member joining rebalances to the next generation.
        let mut n = c.join(req(""));
        assert_eq!(
            c.heartbeat("g", 2, &a.member_id, None),
            codes::REBALANCE_IN_PROGRESS
        );
        let mut ra = c.join(req(&a.member_id));
        let mut rb = c.join(req(&b.member_id));
        let (n, a2, b2) = (
            n.try_recv().unwrap(),
            ra.try_recv().unwrap(),
            rb.try_recv().unwrap(),
        );
        assert_eq!((n.generation, a2.generation, b2.generation), (3, 3, 3));
        assert_eq!(a2.leader, a.member_id);
    }

    /// After a restart every member's session starts from the load: one that
    /// heartbeats stays, one that stays silent past its session timeout is
    /// removed and the group rebalances. A group whose members all went is
    /// stored `Empty` and comes back so, with its generation and protocol type.
    #[test]
    fn members_silent_after_a_restart_expire_and_an_empty_group_keeps_its_generation() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (a, b) = two_joined(&c);
        let (a_sync, b_sync) = sync_both(&c, &a, &b);
        c.store_group("g");
        assert_eq!(a_sync.blocking_recv().unwrap().0, codes::NONE);
        assert_eq!(b_sync.blocking_recv().unwrap().0, codes::NONE);
        drop(c);

        let c = opened(dir.path());
        // Loaded members start their sessions now: a tick keeps both.
        c.tick();
        assert_eq!(c.describe("g").unwrap().members.len(), 2);
        // b is silent past its session timeout of 10 s.
        {
            let mut groups = c.lock();
            let m = groups.get_mut("g").unwrap().members.get_mut(&b.member_id);
            m.unwrap().last_seen = Instant::now().checked_sub(Duration::from_secs(11)).unwrap();
        }
        c.tick();
        let d = c.describe("g").unwrap();
        assert_eq!(d.state, "PreparingRebalance");
        assert_eq!(
            d.members.iter().map(|m| &m.member_id).collect::<Vec<_>>(),
            vec![&a.member_id]
        );
        assert_eq!(
            c.heartbeat("g", 2, &a.member_id, None),
            codes::REBALANCE_IN_PROGRESS
        );
        assert_eq!(
            c.heartbeat("g", 2, &b.member_id, None),
            codes::UNKNOWN_MEMBER_ID
        );
        let a3 = c.join(req(&a.member_id)).try_recv().unwrap();
        assert_eq!((a3.error, a3.generation), (codes::NONE, 3));
        let mut s = c.sync("g", 3, &a.member_id, None, vec![]);
        c.store_group("g");
        assert_eq!(s.try_recv().unwrap().0, codes::NONE);

        // The last member goes silent too: the group is empty, and stored so.
        {
            let mut groups = c.lock();
            let m = groups.get_mut("g").unwrap().members.get_mut(&a.member_id);
            m.unwrap().last_seen = Instant::now().checked_sub(Duration::from_secs(11)).unwrap();
        }
        c.tick();
        assert_eq!(c.describe("g").unwrap().state, EMPTY);
        c.store_changed();
        drop(c);
        let c = opened(dir.path());
        assert_eq!(
            c.describe("g").unwrap(),
            GroupSummary::empty(Some("consumer".into()))
        );
        assert_eq!(
            c.check_commit("g", 3, &a.member_id, None),
            codes::UNKNOWN_MEMBER_ID
        );
        let n = c.join(req("")).try_recv().unwrap();
        assert_eq!(
            (n.error, n.generation),
            (codes::NONE, 4),
            "the generation goes on from the stored one"
        );
    }

    /// A static member whose consumer restarts after the broker did takes over
    /// its stored membership without a rebalance, as before the restart; the
    /// replacement is stored before it is answered.
    #[test]
    fn a_static_member_takes_over_its_stored_membership() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let s = join_as(&c, "", Some("s")).try_recv().unwrap();
        let mut rd = join_as(&c, "", None);
        let s = join_as(&c, &s.member_id, Some("s")).try_recv().unwrap();
        let d = rd.try_recv().unwrap();
        assert_eq!((s.generation, s.leader.as_str()), (2, s.member_id.as_str()));
        let (a_sync, d_sync) = sync_both(&c, &s, &d);
        c.store_group("g");
        assert_eq!(a_sync.blocking_recv().unwrap().0, codes::NONE);
        assert_eq!(d_sync.blocking_recv().unwrap().0, codes::NONE);
        drop(c);

        let c = opened(dir.path());
        let mut s2 = join_as(&c, "", Some("s"));
        c.store_group("g");
        let s2 = s2.try_recv().unwrap();
        assert_eq!((s2.error, s2.generation), (codes::NONE, 2), "no rebalance");
        assert_ne!(s2.member_id, s.member_id);
        assert_eq!(s2.leader, s.member_id, "the leader id from before");
        assert_eq!(c.heartbeat("g", 2, &d.member_id, None), codes::NONE);
        assert_eq!(
            c.sync("g", 2, &s2.member_id, Some("s"), vec![])
                .try_recv()
                .unwrap(),
            (codes::NONE, Bytes::from_static(b"for a"))
        );
        assert_eq!(
            c.heartbeat("g", 2, &s.member_id, Some("s")),
            codes::FENCED_INSTANCE_ID
        );
        drop(c);
        let c = opened(dir.path());
        assert_eq!(
            c.check_commit("g", 2, &s2.member_id, Some("s")),
            codes::NONE
        );
        assert_eq!(
            c.check_commit("g", 2, &s.member_id, Some("s")),
            codes::FENCED_INSTANCE_ID
        );
    }

    /// A JoinGroup of `member` (empty: a new one) to `group` as group instance
    /// `instance`.
    /// A JoinGroup to `group` without a member id from a client that needs
    /// one first: answered `MEMBER_ID_REQUIRED` with an id, when it starts
    /// or joins the group.
    fn ask_member_id(c: &GroupCoordinator, group: &str) -> JoinResult {
        c.join(JoinRequest {
            group: group.into(),
            require_known_member_id: true,
            ..req("")
        })
        .try_recv()
        .unwrap()
    }

    fn join_in(
        c: &GroupCoordinator,
        group: &str,
        member: &str,
        instance: Option<&str>,
    ) -> oneshot::Receiver<JoinResult> {
        c.join(JoinRequest {
            group: group.into(),
            instance_id: instance.map(Into::into),
            ..req(member)
        })
    }

    /// `group` with static member "s" (the leader, assigned "for s") and a
    /// dynamic member (assigned "for d"), `Stable` at generation 2 and stored.
    fn static_group(c: &GroupCoordinator, group: &str) -> (JoinResult, JoinResult) {
        let s = join_in(c, group, "", Some("s")).try_recv().unwrap();
        let mut rd = join_in(c, group, "", None);
        let s = join_in(c, group, &s.member_id, Some("s"))
            .try_recv()
            .unwrap();
        let d = rd.try_recv().unwrap();
        assert_eq!((s.error, d.error, s.generation, d.generation), (0, 0, 2, 2));
        assert_eq!(s.leader, s.member_id);
        let mut d_sync = c.sync(group, 2, &d.member_id, None, vec![]);
        let assignments = vec![
            (s.member_id.clone(), Bytes::from_static(b"for s")),
            (d.member_id.clone(), Bytes::from_static(b"for d")),
        ];
        let mut s_sync = c.sync(group, 2, &s.member_id, Some("s"), assignments);
        c.store_group(group);
        assert_eq!(s_sync.try_recv().unwrap().0, codes::NONE);
        assert_eq!(d_sync.try_recv().unwrap().0, codes::NONE);
        (s, d)
    }

    /// Stores `group` as [`GroupCoordinator::store_group`] does, running
    /// `meanwhile` after the group was read and before its file is written.
    fn store_with(c: &GroupCoordinator, group: &str, meanwhile: impl FnOnce()) {
        store_around(c, group, meanwhile, || {});
    }

    /// Stores `group` as [`GroupCoordinator::store_group`] does, running
    /// `before` after the group was read and before its file is written, and
    /// `after` once the file is written, before the write's outcome is applied
    /// to the group.
    fn store_around(
        c: &GroupCoordinator,
        group: &str,
        before: impl FnOnce(),
        after: impl FnOnce(),
    ) {
        let store = c.meta.as_ref().unwrap();
        let _writer = store.writer(group);
        let snapshot = c.read_for_store(group).expect("something to store");
        before();
        let ok = snapshot.write(store, group).is_ok();
        after();
        if c.stored(group, &snapshot, ok) {
            while c.store_once(store, group) {}
        }
    }

    /// The member id that group `group`'s file names for group instance
    /// `instance`, and its leader.
    fn stored_static(dir: &std::path::Path, group: &str, instance: &str) -> (String, String) {
        let (_, loaded) = GroupMetaStore::open(dir.to_path_buf()).unwrap();
        let (_, meta) = loaded
            .into_iter()
            .filter_map(|l| l.group.ok())
            .find(|(g, _)| g == group)
            .expect("the group is stored");
        let member = meta
            .members
            .iter()
            .find(|m| m.instance_id.as_deref() == Some(instance))
            .expect("the instance is stored");
        (member.member_id.clone(), meta.leader.unwrap_or_default())
    }

    /// A static member replacing itself in a `Stable` group is answered only
    /// once the membership with its new member id is stored, as Kafka answers
    /// it once the group is stored: a broker killed right after the answer
    /// loads the new id. Before, the answer went out at once and the store
    /// followed in the background; a broker killed in between loaded the old
    /// id, and the consumer's next request with its new id got
    /// FENCED_INSTANCE_ID, which clients treat as fatal.
    #[test]
    fn a_static_members_replacement_is_answered_once_stored() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (s, d) = static_group(&c, "g");
        let mut rx = join_as(&c, "", Some("s"));
        let early = rx.try_recv();
        assert!(
            early.is_err(),
            "answered before its new member id was stored: {early:?}"
        );
        // Until then the old id is the member.
        assert_eq!(c.heartbeat("g", 2, &s.member_id, Some("s")), codes::NONE);
        assert_eq!(c.check_commit("g", 2, &s.member_id, Some("s")), codes::NONE);
        std::thread::scope(|scope| {
            // Stored on another thread, as the JoinGroup handler stores it.
            scope.spawn(|| c.store_group("g"));
            let s2 = rx.blocking_recv().unwrap();
            // The broker is killed as the answer goes out.
            let restarted = opened(dir.path());
            assert_eq!(
                (s2.error, s2.generation, s2.leader.as_str()),
                (codes::NONE, 2, s.member_id.as_str()),
                "no rebalance, the leader id from before"
            );
            assert_ne!(s2.member_id, s.member_id);
            assert_eq!(
                restarted.heartbeat("g", 2, &s2.member_id, Some("s")),
                codes::NONE
            );
            assert_eq!(
                restarted.heartbeat("g", 2, &s.member_id, Some("s")),
                codes::FENCED_INSTANCE_ID
            );
            assert_eq!(
                restarted
                    .sync("g", 2, &s2.member_id, Some("s"), vec![])
                    .try_recv()
                    .unwrap(),
                (codes::NONE, Bytes::from_static(b"for s"))
            );
            assert_eq!(c.heartbeat("g", 2, &s2.member_id, Some("s")), codes::NONE);
            assert_eq!(
                c.heartbeat("g", 2, &s.member_id, Some("s")),
                codes::FENCED_INSTANCE_ID
            );
            assert_eq!(c.heartbeat("g", 2, &d.member_id, None), codes::NONE);
        });
    }

    /// Makes the stores of `group` in `dir` fail: the atomic replace cannot
    /// create its temporary file, a directory in its place (returned).
    fn block_stores(dir: &std::path::Path, group: &str) -> std::path::PathBuf {
        let tmp = dir
            .join(crate::storage::offsets::file_name(group))
            .with_extension("tmp");
        std::fs::create_dir(&tmp).unwrap();
        tmp
    }

    /// In group "g" of [`static_group`] (`d` its dynamic member): a new
    /// member starts a rebalance, the static member's consumer restarts and
    /// joins without its member id, and `d` rejoins, completing generation
    /// 3. The new member's and `d`'s answers, and the static member's join.
    fn rejoined_with_a_restarted_static_member(
        c: &GroupCoordinator,
        d: &JoinResult,
    ) -> (JoinResult, JoinResult, oneshot::Receiver<JoinResult>) {
        let mut re = join_in(c, "g", "", None);
        let rs2 = join_in(c, "g", "", Some("s"));
        let mut rd = join_in(c, "g", &d.member_id, None);
        let (e, d) = (re.try_recv().unwrap(), rd.try_recv().unwrap());
        assert_eq!((e.generation, d.generation), (3, 3));
        (e, d, rs2)
    }

    /// A static member whose JoinGroup answer is held until its new id's
    /// rename is stored is neither expired by its session nor removed for
    /// not syncing while it waits: it cannot heartbeat or sync before it
    /// knows its id. Its session and due SyncGroup run from the answer.
    /// Before, a store slower than its session (a stalled disk) had the next
    /// tick remove it, the group rebalance again, and the held answer turn
    /// into UNKNOWN_MEMBER_ID.
    #[test]
    fn a_held_join_is_not_expired_while_its_answer_waits_for_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (_s, d) = static_group(&c, "g");
        let (e, d, mut rs2) = rejoined_with_a_restarted_static_member(&c, &d);
        assert!(rs2.try_recv().is_err(), "held until the rename is stored");
        let new = c.lock()["g"]
            .members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some("s"))
            .map(|(id, _)| id.clone())
            .unwrap();
        // The followers sync; the rename's store outlasts the member's 10 s
        // session and the group's sync deadline.
        let _syncs = [&e, &d].map(|j| c.sync("g", 3, &j.member_id, None, vec![]));
        assert!(c.idle_member_for("g", &new, Duration::from_secs(11)));
        c.lock().get_mut("g").unwrap().sync_deadline =
            Some(Instant::now().checked_sub(Duration::from_secs(1)).unwrap());
        c.tick();
        assert_eq!(c.describe("g").unwrap().state, "CompletingRebalance");
        c.store_group("g");
        let s2 = rs2.try_recv().unwrap();
        assert_eq!(
            (s2.error, s2.member_id.as_str()),
            (codes::NONE, new.as_str())
        );
        // Answered now, it has its whole session and rebalance timeout.
        c.tick();
        assert_eq!(c.describe("g").unwrap().state, "CompletingRebalance");
        // The leader's SyncGroup is answered once the generation is stored.
        let mut sync = c.sync("g", 3, &new, Some("s"), vec![]);
        c.store_group("g");
        let sync = sync.try_recv();
        assert!(matches!(sync, Ok((codes::NONE, _))), "{sync:?}");
        assert_eq!(c.describe("g").unwrap().state, "Stable");
    }

    /// The followers spared while their leader's answer was held are not
    /// expired at the next tick when that answer is a refusal (the store
    /// failed): their sessions restart at it, and they stay members.
    #[test]
    fn followers_of_a_held_leader_whose_store_fails_are_not_expired_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (_s, d) = static_group(&c, "g");
        let tmp = block_stores(dir.path(), "g");
        let (e, d, mut rs2) = rejoined_with_a_restarted_static_member(&c, &d);
        let _syncs = [&e, &d].map(|j| c.sync("g", 3, &j.member_id, None, vec![]));
        for j in [&e, &d] {
            assert!(c.idle_member_for("g", &j.member_id, Duration::from_secs(11)));
        }
        c.tick();
        assert_eq!(c.describe("g").unwrap().members.len(), 3);
        c.store_group("g");
        assert_eq!(
            rs2.try_recv().unwrap().error,
            codes::COORDINATOR_NOT_AVAILABLE
        );
        std::fs::remove_dir(&tmp).unwrap();
        c.tick();
        let left: Vec<String> = c
            .describe("g")
            .unwrap()
            .members
            .into_iter()
            .map(|m| m.member_id)
            .collect();
        assert!(
            left.contains(&e.member_id) && left.contains(&d.member_id),
            "{left:?}"
        );
    }

    /// The followers waiting in SyncGroup for a leader whose JoinGroup
    /// answer is held (its rename being stored) are not expired meanwhile:
    /// they wait for it, and their sessions restart at its answer. Before,
    /// a store slower than their sessions removed them, and the group
    /// rebalanced again with new member ids.
    #[test]
    fn followers_waiting_for_a_held_leader_are_not_expired() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (_s, d) = static_group(&c, "g");
        let (e, d, mut rs2) = rejoined_with_a_restarted_static_member(&c, &d);
        assert!(rs2.try_recv().is_err());
        assert_ne!(e.leader, e.member_id);
        assert_ne!(e.leader, d.member_id);
        let _syncs = [&e, &d].map(|j| c.sync("g", 3, &j.member_id, None, vec![]));
        for j in [&e, &d] {
            assert!(c.idle_member_for("g", &j.member_id, Duration::from_secs(11)));
        }
        c.tick();
        assert_eq!(c.describe("g").unwrap().members.len(), 3);
        c.store_group("g");
        assert_eq!(rs2.try_recv().unwrap().error, codes::NONE);
        // Their sessions run from the leader's answer.
        c.tick();
        assert_eq!(c.describe("g").unwrap().members.len(), 3);
    }

    /// A static member replacing itself while its group rebalances gets its
    /// JoinGroup answer, which names its new member id, only once the
    /// group's file names that id (the file as it was, the old id renamed: it
    /// still holds the last stable generation). A broker restarted after the
    /// answer then fences the old id, not the new one, whose requests for the
    /// unfinished generation get ILLEGAL_GENERATION, and the member joins
    /// again. Before, the file kept the old id until the leader's SyncGroup
    /// was stored, and the restarted broker answered the new id
    /// FENCED_INSTANCE_ID, fatal to clients.
    #[test]
    fn a_static_member_replaced_during_a_rebalance_is_answered_once_its_new_id_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (s, d) = static_group(&c, "g");
        // A third member starts a rebalance; the static member's consumer
        // restarts and joins without its member id; `d` rejoins last.
        let (e, d, mut rs2) = rejoined_with_a_restarted_static_member(&c, &d);
        let early = rs2.try_recv();
        assert!(
            early.is_err(),
            "answered before its new member id was stored: {early:?}"
        );
        assert_eq!(stored_static(dir.path(), "g", "s").0, s.member_id);
        c.store_group("g");
        let s2 = rs2.try_recv().unwrap();
        assert_eq!((s2.error, s2.generation), (codes::NONE, 3));
        assert_ne!(s2.member_id, s.member_id);
        let (member, leader) = stored_static(dir.path(), "g", "s");
        assert_eq!(
            (member.as_str(), leader.as_str()),
            (s2.member_id.as_str(), s2.member_id.as_str()),
            "the file renames the member and its leadership, at the stored generation"
        );
        // The broker is killed before the leader's SyncGroup.
        let restarted = opened(dir.path());
        assert_eq!(
            restarted.heartbeat("g", 3, &s2.member_id, Some("s")),
            codes::ILLEGAL_GENERATION
        );
        assert_eq!(
            restarted.heartbeat("g", 2, &s.member_id, Some("s")),
            codes::FENCED_INSTANCE_ID
        );
        assert_eq!(
            restarted
                .sync("g", 2, &s2.member_id, Some("s"), vec![])
                .try_recv()
                .unwrap(),
            (codes::NONE, Bytes::from_static(b"for s")),
            "the stored generation, under the new id"
        );
        drop(restarted);
        // The generation completes and is stored as before.
        let assignments = vec![
            (s2.member_id.clone(), Bytes::from_static(b"s")),
            (d.member_id.clone(), Bytes::from_static(b"d")),
            (e.member_id.clone(), Bytes::from_static(b"e")),
        ];
        let mut synced = c.sync("g", 3, &s2.member_id, Some("s"), assignments);
        c.store_group("g");
        assert_eq!(
            synced.try_recv().unwrap(),
            (codes::NONE, Bytes::from_static(b"s"))
        );
        let restarted = opened(dir.path());
        assert_eq!(
            restarted.heartbeat("g", 3, &s2.member_id, Some("s")),
            codes::NONE
        );
    }

    /// A static member whose old id expired (or was removed) joins again
    /// without a member id as a new member: its answer, too, waits until the
    /// file names its instance under the new id. Before, only a replacement
    /// of a member id still in the group was recorded, and a restart before
    /// the leader's SyncGroup was stored fenced the new id with the expired
    /// one the file named.
    #[test]
    fn a_static_member_back_after_its_expiry_is_answered_once_its_new_id_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (s, d) = static_group(&c, "g");
        assert!(c.idle_member_for("g", &s.member_id, Duration::from_secs(3600)));
        c.tick();
        assert!(!c.lock()["g"].members.contains_key(&s.member_id), "expired");
        let mut rs2 = join_in(&c, "g", "", Some("s"));
        let mut rd = join_in(&c, "g", &d.member_id, None);
        assert_eq!(rd.try_recv().unwrap().generation, 3);
        assert!(rs2.try_recv().is_err(), "held");
        assert_eq!(stored_static(dir.path(), "g", "s").0, s.member_id);
        c.store_group("g");
        let s2 = rs2.try_recv().unwrap();
        assert_eq!((s2.error, s2.generation), (codes::NONE, 3));
        assert_eq!(stored_static(dir.path(), "g", "s").0, s2.member_id);
        let restarted = opened(dir.path());
        assert_eq!(
            restarted.heartbeat("g", 3, &s2.member_id, Some("s")),
            codes::ILLEGAL_GENERATION
        );
    }

    /// A held JoinGroup whose member was removed meanwhile (a LeaveGroup by
    /// instance id) is answered UNKNOWN_MEMBER_ID once released, not with
    /// the generation it would have joined.
    #[test]
    fn a_held_join_of_a_member_removed_meanwhile_is_answered_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (_s, d) = static_group(&c, "g");
        let (_, _, mut rs2) = rejoined_with_a_restarted_static_member(&c, &d);
        assert!(rs2.try_recv().is_err(), "held");
        assert_eq!(
            c.leave_identities("g", &[(String::new(), Some("s".into()))]),
            Ok(vec![codes::NONE])
        );
        c.store_group("g");
        assert_eq!(rs2.try_recv().unwrap().error, codes::UNKNOWN_MEMBER_ID);
    }

    /// A rename during a rebalance that cannot be stored refuses the held
    /// JoinGroup with COORDINATOR_NOT_AVAILABLE and stays due: the member
    /// joins again without a member id, replacing the id it never learnt,
    /// and the file, once writable, goes from the stored id to the newest
    /// through both renames.
    #[test]
    fn a_rename_during_a_rebalance_that_cannot_be_stored_refuses_the_join() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (s, d) = static_group(&c, "g");
        let tmp = block_stores(dir.path(), "g");
        let (e, d, mut rs2) = rejoined_with_a_restarted_static_member(&c, &d);
        assert!(rs2.try_recv().is_err(), "held");
        c.store_group("g");
        let refused = rs2.try_recv().unwrap();
        assert_eq!(
            (refused.error, refused.member_id.as_str()),
            (codes::COORDINATOR_NOT_AVAILABLE, "")
        );
        assert_eq!(stored_static(dir.path(), "g", "s").0, s.member_id);

        std::fs::remove_dir(&tmp).unwrap();
        let mut rs3 = join_in(&c, "g", "", Some("s"));
        c.store_group("g");
        assert!(rs3.try_recv().is_err(), "waits for the others");
        let mut re = join_in(&c, "g", &e.member_id, None);
        let mut rd = join_in(&c, "g", &d.member_id, None);
        let s3 = rs3.try_recv().unwrap();
        assert_eq!((s3.error, s3.generation), (codes::NONE, 4));
        assert_eq!(re.try_recv().unwrap().generation, 4);
        assert_eq!(rd.try_recv().unwrap().generation, 4);
        assert_eq!(stored_static(dir.path(), "g", "s").0, s3.member_id);
        let restarted = opened(dir.path());
        assert_eq!(
            restarted.heartbeat("g", 2, &s3.member_id, Some("s")),
            codes::NONE
        );
    }

    /// A replacement whose store fails is undone, as Kafka reverts it: its
    /// JoinGroup gets COORDINATOR_NOT_AVAILABLE (clients look the coordinator
    /// up again and rejoin), the old member id, with its protocols and
    /// timeouts, heartbeats and commits as before, and the file still holds
    /// it. Once the disk takes writes again the next replacement goes through.
    #[test]
    fn a_static_members_replacement_that_cannot_be_stored_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (s, d) = static_group(&c, "g");
        let tmp = block_stores(dir.path(), "g");
        let mut r = req("");
        r.instance_id = Some("s".into());
        r.client_id = "restarted".into();
        r.session_timeout = Duration::from_secs(20);
        r.protocols = vec![("range".into(), Bytes::from_static(b"new meta"))];
        let mut rx = c.join(r);
        c.store_group("g");
        let refused = rx.try_recv().unwrap();
        assert_eq!(
            (refused.error, refused.member_id.as_str()),
            (codes::COORDINATOR_NOT_AVAILABLE, "")
        );
        assert_eq!(c.heartbeat("g", 2, &s.member_id, Some("s")), codes::NONE);
        assert_eq!(c.check_commit("g", 2, &s.member_id, Some("s")), codes::NONE);
        assert_eq!(c.heartbeat("g", 2, &d.member_id, None), codes::NONE);
        let described = c.describe("g").unwrap();
        assert_eq!(described.state, "Stable");
        let old = described
            .members
            .iter()
            .find(|m| m.member_id == s.member_id)
            .expect("the old id is a member");
        assert_eq!(
            (old.client_id.as_str(), old.metadata.as_ref()),
            ("c", b"meta".as_ref())
        );
        assert_eq!(described.members.len(), 2);
        assert_eq!(
            c.lock()["g"].members[&s.member_id].session_timeout,
            Duration::from_secs(10)
        );
        let restarted = opened(dir.path());
        assert_eq!(
            restarted.heartbeat("g", 2, &s.member_id, Some("s")),
            codes::NONE
        );
        drop(restarted);

        std::fs::remove_dir(&tmp).unwrap();
        let mut rx = join_as(&c, "", Some("s"));
        c.store_group("g");
        let s3 = rx.try_recv().unwrap();
        assert_eq!((s3.error, s3.generation), (codes::NONE, 2));
        assert_eq!(
            c.heartbeat("g", 2, &s.member_id, Some("s")),
            codes::FENCED_INSTANCE_ID
        );
        let restarted = opened(dir.path());
        assert_eq!(
            restarted.heartbeat("g", 2, &s3.member_id, Some("s")),
            codes::NONE
        );
    }

    /// What happens to a group while a static member's replacement waits for
    /// its store leaves every JoinGroup answered once and the membership
    /// coherent: the old id works until the store; the same instance joining
    /// again supersedes the replacement (FENCED_INSTANCE_ID, as a replaced
    /// id's pending join gets), and its own replacement is stored as soon as
    /// the superseded one's write completes; a rebalance or a LeaveGroup abandons it
    /// (REBALANCE_IN_PROGRESS: the member joins again, as it would have in a
    /// rebalancing group); and the old member's session does not expire
    /// meanwhile.
    #[test]
    fn a_static_members_replacement_waiting_for_its_store_stays_coherent() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());

        // The instance joins again while the first replacement is being written.
        let (s, _) = static_group(&c, "again");
        let mut first = join_in(&c, "again", "", Some("s"));
        let second = std::cell::RefCell::new(None);
        store_around(
            &c,
            "again",
            || {
                assert_eq!(
                    c.heartbeat("again", 2, &s.member_id, Some("s")),
                    codes::NONE
                );
                *second.borrow_mut() = Some(join_in(&c, "again", "", Some("s")));
            },
            || {
                let mut second = second.borrow_mut();
                let second = second.as_mut().unwrap();
                assert!(second.try_recv().is_err(), "waits for its own store");
                assert_eq!(
                    c.heartbeat("again", 2, &s.member_id, Some("s")),
                    codes::NONE
                );
            },
        );
        let fenced = first.try_recv().unwrap();
        assert_eq!(fenced.error, codes::FENCED_INSTANCE_ID);
        // The file named the first replacement's id, which no client holds:
        // the same store wrote it again at once, with the second in force.
        let s2 = second.into_inner().unwrap().try_recv().unwrap();
        assert_eq!((s2.error, s2.generation), (codes::NONE, 2));
        assert_eq!(
            c.heartbeat("again", 2, &s.member_id, Some("s")),
            codes::FENCED_INSTANCE_ID
        );
        assert_eq!(
            opened(dir.path()).heartbeat("again", 2, &s2.member_id, Some("s")),
            codes::NONE
        );

        // A member joins while the replacement is being written.
        let (s, d) = static_group(&c, "rebalance");
        let mut r = join_in(&c, "rebalance", "", Some("s"));
        let mut n = None;
        store_with(&c, "rebalance", || {
            n = Some(join_in(&c, "rebalance", "", None));
            assert_eq!(r.try_recv().unwrap().error, codes::REBALANCE_IN_PROGRESS);
        });
        assert_eq!(
            c.heartbeat("rebalance", 2, &s.member_id, Some("s")),
            codes::REBALANCE_IN_PROGRESS,
            "still the member"
        );
        let mut rs = join_in(&c, "rebalance", &s.member_id, Some("s"));
        let mut rd = join_in(&c, "rebalance", &d.member_id, None);
        let (s3, d3, n3) = (
            rs.try_recv().unwrap(),
            rd.try_recv().unwrap(),
            n.unwrap().try_recv().unwrap(),
        );
        assert_eq!(
            (s3.error, s3.generation, d3.generation, n3.generation),
            (codes::NONE, 3, 3, 3)
        );

        // The static member is removed by its instance id.
        let (s, d) = static_group(&c, "leave");
        let mut r = join_in(&c, "leave", "", Some("s"));
        assert_eq!(
            c.leave_identities("leave", &[(String::new(), Some("s".into()))]),
            Ok(vec![codes::NONE])
        );
        assert_eq!(r.try_recv().unwrap().error, codes::REBALANCE_IN_PROGRESS);
        assert_eq!(
            c.heartbeat("leave", 2, &s.member_id, Some("s")),
            codes::UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            c.heartbeat("leave", 2, &d.member_id, None),
            codes::REBALANCE_IN_PROGRESS
        );
        c.store_group("leave");
        assert_eq!(c.describe("leave").unwrap().state, "PreparingRebalance");

        // The old member's last heartbeat is older than its session timeout.
        let (s, _) = static_group(&c, "expiry");
        let mut r = join_in(&c, "expiry", "", Some("s"));
        {
            let mut groups = c.lock();
            let m = groups
                .get_mut("expiry")
                .unwrap()
                .members
                .get_mut(&s.member_id);
            m.unwrap().last_seen = Instant::now().checked_sub(Duration::from_secs(11)).unwrap();
        }
        c.tick();
        assert_eq!(c.describe("expiry").unwrap().state, "Stable");
        c.store_group("expiry");
        let s2 = r.try_recv().unwrap();
        assert_eq!((s2.error, s2.generation), (codes::NONE, 2));
        assert_eq!(
            c.heartbeat("expiry", 2, &s2.member_id, Some("s")),
            codes::NONE
        );
    }

    /// A replacement whose membership was written but that did not take
    /// effect (the group rebalanced as the write completed or while it was
    /// under way, or the instance joined again and the group then rebalanced)
    /// leaves the old id the member, and the file names the old id again
    /// before the store returns: a broker restarted afterwards keeps the old
    /// id, the one the group holds, rather than fencing its holder with a new
    /// id no client holds. A write that fails as the group rebalances leaves
    /// the old id in the file; a write taking the new id back that fails is
    /// tried again by the next pass of `store_changed` (every 5 s at most).
    /// Before, the file named the new id until the group's next store (the
    /// rebalance's completion, or its emptying): a restart meanwhile answered
    /// the old id FENCED_INSTANCE_ID, which clients treat as fatal.
    #[test]
    fn a_static_members_replacement_stored_but_abandoned_is_taken_back_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let keeps_old_id = |group: &str, s: &JoinResult| {
            assert!(
                c.lock()[group].members.contains_key(&s.member_id),
                "the group holds the old id"
            );
            assert_eq!(
                stored_static(dir.path(), group, "s"),
                (s.member_id.clone(), s.member_id.clone()),
                "the file names the old id, as member and leader"
            );
            assert_eq!(
                opened(dir.path()).heartbeat(group, 2, &s.member_id, Some("s")),
                codes::NONE,
                "a restarted broker keeps the old id"
            );
        };
        let blocked = |group: &str| {
            // The atomic replace cannot create its temporary file.
            dir.path()
                .join(crate::storage::offsets::file_name(group))
                .with_extension("tmp")
        };

        // The write completes; a member joins before it takes effect.
        let (s, d) = static_group(&c, "written");
        let mut r = join_in(&c, "written", "", Some("s"));
        let mut n = None;
        store_around(
            &c,
            "written",
            || {},
            || {
                n = Some(join_in(&c, "written", "", None));
                assert_eq!(r.try_recv().unwrap().error, codes::REBALANCE_IN_PROGRESS);
            },
        );
        keeps_old_id("written", &s);
        // The rebalance goes on with the old id and is stored as usual.
        let mut rs = join_in(&c, "written", &s.member_id, Some("s"));
        let mut rd = join_in(&c, "written", &d.member_id, None);
        let (s3, d3, n3) = (
            rs.try_recv().unwrap(),
            rd.try_recv().unwrap(),
            n.unwrap().try_recv().unwrap(),
        );
        assert_eq!(
            (s3.error, s3.generation, d3.generation, n3.generation),
            (codes::NONE, 3, 3, 3)
        );
        let mut sync = c.sync("written", 3, &s.member_id, Some("s"), vec![]);
        c.store_group("written");
        assert_eq!(sync.try_recv().unwrap().0, codes::NONE);
        assert_eq!(
            opened(dir.path()).heartbeat("written", 3, &s.member_id, Some("s")),
            codes::NONE
        );

        // The write is under way when the other member leaves.
        let (s, d) = static_group(&c, "in flight");
        let mut r = join_in(&c, "in flight", "", Some("s"));
        store_with(&c, "in flight", || {
            assert_eq!(
                c.leave("in flight", std::slice::from_ref(&d.member_id)),
                Ok(vec![codes::NONE])
            );
            assert_eq!(r.try_recv().unwrap().error, codes::REBALANCE_IN_PROGRESS);
        });
        keeps_old_id("in flight", &s);

        // The instance joins again during the write, and a member joins before
        // the second replacement is stored.
        let (s, _) = static_group(&c, "superseded");
        let mut first = join_in(&c, "superseded", "", Some("s"));
        let mut second = None;
        store_around(
            &c,
            "superseded",
            || second = Some(join_in(&c, "superseded", "", Some("s"))),
            || drop(join_in(&c, "superseded", "", None)),
        );
        assert_eq!(first.try_recv().unwrap().error, codes::FENCED_INSTANCE_ID);
        assert_eq!(
            second.unwrap().try_recv().unwrap().error,
            codes::REBALANCE_IN_PROGRESS
        );
        keeps_old_id("superseded", &s);

        // The write fails as a member joins. A failed write may have renamed
        // its file into place before it failed (its directory sync), so the
        // old id is written back all the same, by the next pass.
        let (s, _) = static_group(&c, "failed");
        let mut r = join_in(&c, "failed", "", Some("s"));
        std::fs::create_dir(blocked("failed")).unwrap();
        store_with(&c, "failed", || drop(join_in(&c, "failed", "", None)));
        assert_eq!(r.try_recv().unwrap().error, codes::REBALANCE_IN_PROGRESS);
        std::fs::remove_dir(blocked("failed")).unwrap();
        assert!(c.needs_store("failed"), "the old id is due to be written");
        c.store_changed();
        assert!(!c.needs_store("failed"));
        keeps_old_id("failed", &s);

        // The write taking the new id back fails: tried again by the next
        // pass of `store_changed`, which the broker runs within 5 s.
        let (s, _) = static_group(&c, "retried");
        let mut r = join_in(&c, "retried", "", Some("s"));
        store_around(
            &c,
            "retried",
            || {},
            || {
                drop(join_in(&c, "retried", "", None));
                std::fs::create_dir(blocked("retried")).unwrap();
            },
        );
        assert_eq!(r.try_recv().unwrap().error, codes::REBALANCE_IN_PROGRESS);
        assert_ne!(
            stored_static(dir.path(), "retried", "s").0,
            s.member_id,
            "the write taking the new id back failed"
        );
        assert!(c.needs_store("retried"));
        c.store_changed();
        assert!(c.needs_store("retried"), "due until written");
        std::fs::remove_dir(blocked("retried")).unwrap();
        c.store_changed();
        assert!(!c.needs_store("retried"));
        keeps_old_id("retried", &s);
    }

    /// A SyncGroup with nothing to store (a follower's, in a stable group) does
    /// not wait for the group's writer lock, which a store of any group sharing
    /// that lock holds across its fsync. Before, every SyncGroup took the lock
    /// before it looked for anything to store.
    #[test]
    fn a_sync_with_nothing_to_store_does_not_wait_for_the_writer_lock() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (a, b) = two_joined(&c);
        let (a_sync, b_sync) = sync_both(&c, &a, &b);
        c.store_group("g");
        assert_eq!(a_sync.blocking_recv().unwrap().0, codes::NONE);
        assert_eq!(b_sync.blocking_recv().unwrap().0, codes::NONE);
        let held = c.meta.as_ref().unwrap().writer("g");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let c = &c;
            let b = &b;
            scope.spawn(move || {
                // The follower's SyncGroup, as its handler runs it.
                let s = c.sync("g", 2, &b.member_id, None, vec![]);
                c.store_group("g");
                let _ = tx.send(s.blocking_recv().unwrap());
            });
            let got = rx.recv_timeout(Duration::from_secs(5));
            drop(held);
            assert_eq!(
                got.expect("the SyncGroup waited for the writer lock"),
                (codes::NONE, Bytes::from_static(b"for b"))
            );
        });
    }

    /// When the membership cannot be stored, the SyncGroups waiting for it get
    /// COORDINATOR_NOT_AVAILABLE and the group rebalances: a stable generation
    /// is never acknowledged unless it was stored. Once the disk takes writes
    /// again the members rejoin and the next generation is stored.
    #[test]
    fn a_rebalance_whose_membership_cannot_be_stored_is_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let c = opened(dir.path());
        let (a, b) = two_joined(&c);
        let tmp = block_stores(dir.path(), "g");
        let (mut a_sync, mut b_sync) = sync_both(&c, &a, &b);
        c.store_group("g");
        let refused = (codes::COORDINATOR_NOT_AVAILABLE, Bytes::new());
        assert_eq!(a_sync.try_recv().unwrap(), refused);
        assert_eq!(b_sync.try_recv().unwrap(), refused);
        let d = c.describe("g").unwrap();
        assert_eq!(d.state, "PreparingRebalance");
        assert!(d.members.iter().all(|m| m.assignment.is_empty()));
        assert_eq!(
            c.heartbeat("g", 2, &b.member_id, None),
            codes::REBALANCE_IN_PROGRESS
        );
        drop(c);
        assert!(
            opened(dir.path()).describe("g").is_none(),
            "nothing was stored"
        );

        let c = opened(dir.path());
        let (a, b) = two_joined(&c);
        std::fs::remove_dir(&tmp).unwrap();
        let (a_sync, b_sync) = sync_both(&c, &a, &b);
        c.store_group("g");
        assert_eq!(a_sync.blocking_recv().unwrap().0, codes::NONE);
        assert_eq!(b_sync.blocking_recv().unwrap().0, codes::NONE);
        drop(c);
        assert_eq!(opened(dir.path()).describe("g").unwrap().state, "Stable");
    }

    /// Log lines written while `f` runs, at every level.
    fn logged(f: impl FnOnce()) -> String {
        crate::storage::partition::tests::logged(f).1
    }

    /// Group "g" of [`two_joined`] members, synced and stored in `dir` by a
    /// coordinator since dropped: its members.
    fn stored_stable_group(dir: &std::path::Path) -> (JoinResult, JoinResult) {
        let c = opened(dir);
        let (a, b) = two_joined(&c);
        let _ = sync_both(&c, &a, &b);
        c.store_group("g");
        (a, b)
    }

    /// The generation after i32::MAX is 1: it was `+= 1`, a panic of the
    /// coordinator in a debug build and a negative generation in a release
    /// build, which the next start read back as damage and so dropped the
    /// group's membership. A group stored at i32::MAX, with members or
    /// without, loads and goes on.
    #[test]
    fn the_generation_after_the_last_is_one_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = stored_stable_group(dir.path());
        let path = dir.path().join(crate::storage::offsets::file_name("g"));
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v["generation"] = i32::MAX.into();
        // As edited by hand (or written by an older build): no checksum.
        v.as_object_mut().unwrap().remove("crc32c");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let empty = dir.path().join(crate::storage::offsets::file_name("e"));
        std::fs::write(
            &empty,
            format!(
                r#"{{"version":1,"group":"e","generation":{},"protocol_type":"consumer","empty_since_ms":1000,"members":[]}}"#,
                i32::MAX
            ),
        )
        .unwrap();

        let mut c = None;
        let log = logged(|| c = Some(opened(dir.path())));
        let c = c.unwrap();
        assert!(!log.contains("WARN"), "{log}");
        assert_eq!(c.describe("g").unwrap().state, "Stable");
        assert_eq!(c.describe("e").unwrap().state, EMPTY);
        // The stored members go on at i32::MAX...
        assert_eq!(c.heartbeat("g", i32::MAX, &a.member_id, None), codes::NONE);
        // ...and both groups' next generation is 1.
        let mut joined = c.join(JoinRequest {
            group: "e".into(),
            ..req("")
        });
        let e = joined.try_recv().unwrap();
        assert_eq!((e.error, e.generation), (codes::NONE, 1));
        let (mut a2, mut b2) = (c.join(req(&a.member_id)), c.join(req(&b.member_id)));
        let (a2, b2) = (a2.try_recv().unwrap(), b2.try_recv().unwrap());
        assert_eq!((a2.error, b2.error), (codes::NONE, codes::NONE));
        assert_eq!((a2.generation, b2.generation), (1, 1));
        let _ = sync_both(&c, &a2, &b2);
        c.store_group("g");
        drop(c);
        let c = opened(dir.path());
        assert_eq!(c.describe("g").unwrap().state, "Stable");
        assert_eq!(c.heartbeat("g", 1, &a.member_id, None), codes::NONE);
    }

    /// A stored membership that does not parse is a warning naming its file:
    /// the coordinator opens, the group starts without members, and the other
    /// groups load.
    #[test]
    fn a_membership_file_that_does_not_parse_starts_its_group_empty() {
        let dir = tempfile::tempdir().unwrap();
        stored_stable_group(dir.path());
        let bad = dir.path().join(crate::storage::offsets::file_name("bad"));
        std::fs::write(&bad, b"{\"version\":1,\"group\":\"bad\",\"generation\":").unwrap();
        let inconsistent = dir.path().join(crate::storage::offsets::file_name("odd"));
        std::fs::write(
            &inconsistent,
            br#"{"version":1,"group":"odd","generation":3,"protocol_type":"consumer","protocol":"range","leader":"x","members":[]}"#,
        )
        .unwrap();
        let good = std::fs::read(dir.path().join(crate::storage::offsets::file_name("g"))).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        // Edited by hand (or written by an older build): no checksum, so
        // what the coordinator checks itself is what finds these.
        v.as_object_mut().unwrap().remove("crc32c");
        v["group"] = "no-leader".into();
        v["leader"] = "nobody".into();
        let no_leader = dir
            .path()
            .join(crate::storage::offsets::file_name("no-leader"));
        std::fs::write(&no_leader, serde_json::to_vec(&v).unwrap()).unwrap();
        // Values no JoinGroup gives: a rebalance of the group would overflow
        // its deadline (an `Instant`), a panic of the ticker that expires
        // every group's sessions.
        let mut huge = v.clone();
        huge["group"] = "huge-timeout".into();
        huge["leader"] = v["members"][0]["member_id"].clone();
        huge["members"][0]["rebalance_timeout_ms"] = u64::MAX.into();
        let huge_timeout = dir
            .path()
            .join(crate::storage::offsets::file_name("huge-timeout"));
        std::fs::write(&huge_timeout, serde_json::to_vec(&huge).unwrap()).unwrap();
        // The same for a group with no members: its next rebalance handed out
        // a negative generation, and an empty-since time before 1970 expired
        // it at the next pass.
        let mut empty_damage = Vec::new();
        for (name, generation, since) in
            [("empty-negative", -5, 1_000), ("empty-before-1970", 2, -1)]
        {
            let path = dir.path().join(crate::storage::offsets::file_name(name));
            std::fs::write(
                &path,
                format!(
                    r#"{{"version":1,"group":"{name}","generation":{generation},"protocol_type":"consumer","empty_since_ms":{since},"members":[]}}"#
                ),
            )
            .unwrap();
            empty_damage.push((name, path));
        }

        let mut c = None;
        let log = logged(|| c = Some(opened(dir.path())));
        let c = c.unwrap();
        assert!(c.describe("bad").is_none());
        assert!(c.describe("no-leader").is_none());
        assert!(c.describe("huge-timeout").is_none(), "{log}");
        assert_eq!(c.describe("g").unwrap().state, "Stable");
        assert_eq!(
            c.describe("odd").unwrap(),
            GroupSummary::empty(Some("consumer".into())),
            "an empty group needs no leader"
        );
        for (name, path) in &empty_damage {
            assert!(c.describe(name).is_none(), "{name}: {log}");
            assert!(
                log.lines()
                    .any(|l| l.contains("WARN") && l.contains(&path.display().to_string())),
                "{name}: {log}"
            );
        }
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 3 + empty_damage.len(), "{log}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&bad.display().to_string()) && w.contains("does not parse")),
            "{log}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&no_leader.display().to_string())
                    && w.contains("names leader nobody, which is not a member")),
            "{log}"
        );
        // The next store of the group replaces the file.
        let n = c.join(JoinRequest {
            group: "bad".into(),
            ..req("")
        });
        let n = n.blocking_recv().unwrap();
        let mut s = c.sync("bad", n.generation, &n.member_id, None, vec![]);
        c.store_group("bad");
        assert_eq!(s.try_recv().unwrap().0, codes::NONE);
        drop(c);
        let log =
            logged(|| assert_eq!(opened(dir.path()).describe("bad").unwrap().state, "Stable"));
        assert!(!log.contains(&bad.display().to_string()), "{log}");
    }

    /// DeleteGroups, offset expiry and the forgetting of empty groups remove the
    /// group's stored membership: a coordinator opened afterwards does not know
    /// the group.
    #[test]
    fn a_deleted_expired_or_forgotten_group_loses_its_stored_membership() {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let dir = tempfile::tempdir().unwrap();
        let members = dir.path().join("members");
        let offsets = OffsetStore::open(dir.path().join("offsets")).unwrap();
        let c = opened(&members);
        // Three groups, each emptied by its member leaving, and stored so.
        for g in ["deleted", "expired", "forgotten"] {
            let j = c
                .join(JoinRequest {
                    group: g.into(),
                    ..req("")
                })
                .blocking_recv()
                .unwrap();
            let mut s = c.sync(g, j.generation, &j.member_id, None, vec![]);
            c.store_group(g);
            assert_eq!(s.try_recv().unwrap().0, codes::NONE);
            assert_eq!(c.leave(g, &[j.member_id]), Ok(vec![codes::NONE]));
        }
        c.store_changed();
        let file = |g: &str| members.join(crate::storage::offsets::file_name(g));
        for g in ["deleted", "expired", "forgotten"] {
            assert!(file(g).exists(), "{g}");
        }
        let commit = position_one();
        for g in ["deleted", "expired"] {
            offsets
                .commit(g, Some("consumer"), vec![commit.clone()])
                .unwrap();
        }
        drop(c);
        let c = opened(&members);
        assert_eq!(c.overview().len(), 3);

        // DeleteGroups, as its handler does it.
        assert_eq!(c.begin_delete("deleted", true), codes::NONE);
        assert!(offsets.delete("deleted").unwrap());
        c.delete_stored("deleted").unwrap();
        c.finish_delete("deleted", true);
        assert!(!file("deleted").exists());
        // Expiry, a week and a day after the group became empty.
        let later = PassTime::now() + 8 * DAY;
        assert_eq!(
            c.expire_offsets(&offsets, 7 * DAY, later).unwrap(),
            vec!["expired"]
        );
        assert!(!file("expired").exists());
        // An empty group without offsets is forgotten.
        assert_eq!(c.forget_empty_groups(&offsets), 1);
        assert!(!file("forgotten").exists());
        assert!(c.overview().is_empty());
        drop(c);
        assert!(opened(&members).overview().is_empty());
    }
}
