//! The Raft state machine: roles, terms, elections and the message handlers.
//! Replication pacing is in `replication.rs`, membership in `membership.rs`, the Ready
//! hand-off in `ready.rs`.

use std::collections::{BTreeMap, VecDeque};

use crate::raft::log::RaftLog;
use prost::Message as _;

use crate::raft::pb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot,
};
use crate::raft::progress::Progress;
use crate::raft::read_only::{ReadRounds, ReadState};

/// "No member": a vote not cast, a leader not known.
pub const NONE: u64 = 0;

/// The context of a vote request that comes from a leadership transfer: voters grant it
/// even while they still hear from a leader (the leader asked for it).
pub const CAMPAIGN_TRANSFER: &[u8] = b"CampaignTransfer";

/// The only source of randomness (election timeouts), injected so that runs replay.
pub trait RandomSource: Send {
    fn next_u64(&mut self) -> u64;
}

/// SplitMix64: small, fast and good enough for jittering timeouts.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }
}

impl RandomSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub id: u64,
    /// A follower campaigns after a random number of ticks in [election, 2 * election).
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    /// Upper bound of the entries in one append message (at least one entry is sent).
    pub append_size_bytes_max: u64,
    /// Unacknowledged appends per follower in Replicate state.
    pub inflight_messages_max: usize,
    /// Upper bound of the committed entries handed out in one Ready.
    pub committed_size_bytes_max: u64,
    /// Bound on the data of proposals the leader holds uncommitted; beyond it proposals
    /// are refused (backpressure) until commits catch up.
    pub uncommitted_size_bytes_max: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
}

impl Config {
    pub fn new(id: u64) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            append_size_bytes_max: 1024 * 1024,
            inflight_messages_max: 256,
            committed_size_bytes_max: 16 * 1024 * 1024,
            uncommitted_size_bytes_max: 256 * 1024 * 1024,
            pre_vote: true,
            check_quorum: true,
        }
    }

    pub fn validate(&self) {
        assert!(self.id != NONE, "member id 0 is reserved");
        assert!(self.heartbeat_ticks > 0);
        assert!(self.election_ticks > self.heartbeat_ticks, "election timeout must exceed the heartbeat interval");
        assert!(self.inflight_messages_max > 0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CampaignKind {
    PreElection,
    Election,
    Transfer,
}

/// Why a proposal was refused; the caller retries elsewhere or later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is who we believe leads (or NONE).
    NotLeader { leader: u64 },
    /// A leadership transfer is under way; retry on the new leader.
    TransferInProgress,
    /// A configuration change is pending, or the leader has not yet committed an entry of
    /// its term: retry after the next commit.
    ConfChangePending,
    /// The change would leave no voter, or names member 0.
    InvalidConfChange,
    /// More than `uncommitted_size_bytes_max` of proposals await commit: slow down.
    TooManyUncommitted,
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NotLeader { leader } if *leader != NONE => {
                write!(formatter, "raft: not the leader; retry on member {:x}", leader)
            }
            ProposeError::NotLeader { .. } => write!(formatter, "raft: no leader known; retry after the election"),
            ProposeError::TransferInProgress => {
                write!(formatter, "raft: leadership transfer in progress; retry on the new leader")
            }
            ProposeError::ConfChangePending => {
                write!(formatter, "raft: a configuration change is still pending; retry once it commits")
            }
            ProposeError::InvalidConfChange => {
                write!(formatter, "raft: the change would leave no voter or names member 0")
            }
            ProposeError::TooManyUncommitted => {
                write!(formatter, "raft: too many uncommitted proposals; retry after some commit")
            }
        }
    }
}

impl std::error::Error for ProposeError {}

/// What a member has on disk when it (re)starts.
#[derive(Debug, Clone, Default)]
pub struct RestartState {
    pub hard_state: HardState,
    /// The newest snapshot; its metadata holds the membership at its index.
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot.
    pub entries: Vec<Entry>,
}

impl RestartState {
    /// The state every founding member of a new cluster starts from: one committed
    /// configuration entry per voter (term 1, indexes 1..=n, in id order), as etcd does, so
    /// that a member added later learns the founding membership from the log itself. A
    /// member that joins an existing cluster starts from `RestartState::default()`.
    pub fn bootstrap(voters: &[u64]) -> RestartState {
        let mut ids = voters.to_vec();
        ids.sort_unstable();
        ids.dedup();
        assert!(!ids.is_empty() && !ids.contains(&NONE), "bootstrap needs voters with non-zero ids");
        let entries: Vec<Entry> = ids
            .iter()
            .enumerate()
            .map(|(position, id)| {
                let change = ConfChange {
                    change_type: ConfChangeType::ConfChangeAddNode as i32,
                    node_id: *id,
                    ..Default::default()
                };
                Entry {
                    term: 1,
                    index: position as u64 + 1,
                    entry_type: EntryType::EntryConfChange as i32,
                    data: change.encode_to_vec().into(),
                }
            })
            .collect();
        let hard_state = HardState { term: 1, vote: NONE, commit: entries.len() as u64 };
        RestartState { hard_state, snapshot: None, entries }
    }

    /// The configuration in force after these entries (the snapshot's, then every
    /// configuration entry applied as appended), as `Raft::new` will compute it.
    pub fn conf_state(&self) -> ConfState {
        let base = self.snapshot.as_ref().and_then(|s| s.metadata.as_ref()).and_then(|m| m.conf_state.clone());
        self.entries.iter().filter(|entry| is_conf_entry(entry)).fold(base.unwrap_or_default(), |conf, entry| {
            super::membership::apply_conf_change(&conf, &super::membership::decode_conf_change(&entry.data))
        })
    }
}

pub struct Raft {
    pub(crate) id: u64,
    pub(crate) config: Config,
    pub(crate) term: u64,
    pub(crate) vote: u64,
    pub(crate) leader_id: u64,
    pub(crate) role: Role,
    pub(crate) log: RaftLog,
    pub(crate) progress: BTreeMap<u64, Progress>,
    pub(crate) conf: ConfState,
    /// Membership at the snapshot index, and each configuration entry after it (index, result).
    pub(crate) base_conf: ConfState,
    pub(crate) conf_history: Vec<(u64, ConfState)>,
    pub(crate) votes: BTreeMap<u64, bool>,
    pub(crate) messages: Vec<Message>,
    pub(crate) messages_after_persist: Vec<Message>,
    pub(crate) election_elapsed: u32,
    pub(crate) heartbeat_elapsed: u32,
    pub(crate) randomized_election_ticks: u32,
    pub(crate) transfer_target: u64,
    pub(crate) reads: ReadRounds,
    pub(crate) read_states: Vec<ReadState>,
    /// Newest snapshot, sent to followers whose next entry is compacted.
    pub(crate) snapshot: Option<Snapshot>,
    /// A snapshot received from the leader, to hand out in the next Ready.
    pub(crate) snapshot_to_install: Option<Snapshot>,
    pub(crate) append_pending: bool,
    pub(crate) rng: Box<dyn RandomSource>,
    pub(crate) ready_number: u64,
    /// (Ready number, index, term) of the last entry or snapshot each unpersisted Ready holds.
    pub(crate) readies_unpersisted: VecDeque<(u64, u64, u64)>,
    pub(crate) hard_state_handed: HardState,
    /// Bytes of data proposed in this term and not yet committed (leader only).
    pub(crate) uncommitted_bytes: u64,
    pub(crate) scratch_matched: Vec<u64>,
}

impl Raft {
    pub fn new(config: Config, restart: RestartState, rng: Box<dyn RandomSource>) -> Raft {
        config.validate();
        let (snapshot_index, snapshot_term, base_conf) = match &restart.snapshot {
            Some(snapshot) => {
                let metadata = snapshot.metadata.clone().expect("snapshot has metadata");
                (metadata.index, metadata.term, metadata.conf_state.unwrap_or_default())
            }
            None => (0, 0, ConfState::default()),
        };
        let hard_state = restart.hard_state;
        let log = RaftLog::restore(snapshot_index, snapshot_term, restart.entries, hard_state.commit);
        let mut raft = Raft {
            id: config.id,
            term: hard_state.term,
            vote: hard_state.vote,
            leader_id: NONE,
            role: Role::Follower,
            log,
            progress: BTreeMap::new(),
            conf: ConfState::default(),
            base_conf,
            conf_history: Vec::new(),
            votes: BTreeMap::new(),
            messages: Vec::with_capacity(64),
            messages_after_persist: Vec::with_capacity(64),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: 0,
            transfer_target: NONE,
            reads: ReadRounds::default(),
            read_states: Vec::new(),
            snapshot: restart.snapshot,
            snapshot_to_install: None,
            append_pending: false,
            rng,
            ready_number: 0,
            readies_unpersisted: VecDeque::new(),
            hard_state_handed: hard_state,
            uncommitted_bytes: 0,
            scratch_matched: Vec::new(),
            config,
        };
        raft.rebuild_conf_history(snapshot_index + 1);
        raft.become_follower(raft.term, NONE);
        raft
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader_id(&self) -> u64 {
        self.leader_id
    }

    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// The index of the last configuration entry in the log, or the snapshot's index if
    /// there is none past it (the snapshot may hold changes): a caller that has applied this
    /// far knows every membership change.
    pub fn last_conf_change_index(&self) -> u64 {
        self.conf_history.last().map_or(self.log.snapshot_index(), |(index, _)| *index)
    }

    pub fn progress(&self, id: u64) -> Option<&Progress> {
        self.progress.get(&id)
    }

    /// Asserts the state machine's internal invariants; tests call it after every step.
    pub fn check(&self) {
        self.log.assert_invariants();
        assert!(self.log.handed_to_persist <= self.log.last_index().max(self.log.snapshot_index()));
        assert_eq!(self.role == Role::Leader, self.leader_id == self.id, "leader id and role disagree");
        if self.role == Role::Leader || self.role == Role::Candidate {
            assert_eq!(self.vote, self.id, "a candidate or leader voted for itself");
        }
        assert!(self.role == Role::Follower || self.role == Role::Leader || self.promotable(), "non-voter campaigning");
        let members: Vec<u64> = self.conf.voters.iter().chain(self.conf.learners.iter()).copied().collect();
        assert_eq!(self.progress.len(), members.len(), "one progress per member");
        for id in &members {
            assert!(self.progress.contains_key(id), "member {} has no progress", id);
        }
        if self.role == Role::Leader {
            for (id, progress) in &self.progress {
                if *id != self.id {
                    assert!(
                        progress.matched < progress.next_index,
                        "member {}: matched {} next {}",
                        id,
                        progress.matched,
                        progress.next_index
                    );
                    assert!(progress.next_index <= self.log.last_index() + 1, "member {}: next beyond the log", id);
                }
            }
        }
    }

    /// Reserves room for `entries` more log entries, so that steady-state appends do not
    /// reallocate the in-memory log (the driver compacts it as it snapshots).
    pub fn reserve_log_capacity(&mut self, entries: usize) {
        self.log.reserve(entries);
    }

    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    pub fn is_voter(&self, id: u64) -> bool {
        self.conf.voters.contains(&id)
    }

    /// Only a voter of its own latest configuration may campaign.
    pub fn promotable(&self) -> bool {
        self.is_voter(self.id)
    }

    pub(crate) fn quorum(&self) -> usize {
        self.conf.voters.len() / 2 + 1
    }

    pub(crate) fn send(&mut self, mut message: Message) {
        assert!(message.to != NONE && message.to != self.id, "message to {} from {}", message.to, self.id);
        message.from = self.id;
        let msg_type = message.msg_type;
        let is_vote_request = msg_type == MessageType::MsgVote as i32 || msg_type == MessageType::MsgPreVote as i32;
        let is_vote_response =
            msg_type == MessageType::MsgVoteResp as i32 || msg_type == MessageType::MsgPreVoteResp as i32;
        if is_vote_request || is_vote_response {
            assert!(message.term != 0, "vote messages carry a term");
        } else {
            message.term = self.term;
        }
        // Raft paper Figure 2: state is persisted before answering. A leader's messages only
        // carry state it has already persisted (its term and vote) or entries that the
        // followers persist themselves, so it may send before its own disk write completes.
        if self.role == Role::Leader {
            self.messages.push(message);
        } else {
            self.messages_after_persist.push(message);
        }
    }

    pub(crate) fn reset_randomized_election_timeout(&mut self) {
        let spread = self.config.election_ticks as u64;
        self.randomized_election_ticks = self.config.election_ticks + (self.rng.next_u64() % spread) as u32;
    }

    fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = NONE;
        }
        self.leader_id = NONE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.transfer_target = NONE;
        self.votes.clear();
        self.reads.clear();
        self.uncommitted_bytes = 0;
        let next_index = self.log.last_index() + 1;
        let inflight_max = self.config.inflight_messages_max;
        for (id, progress) in self.progress.iter_mut() {
            let is_learner = progress.is_learner;
            *progress = Progress::new(next_index, inflight_max, is_learner);
            if *id == self.id {
                progress.matched = self.log.persisted;
            }
        }
    }

    pub(crate) fn become_follower(&mut self, term: u64, leader_id: u64) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader_id = leader_id;
    }

    fn become_pre_candidate(&mut self) {
        assert!(self.role != Role::Leader, "leader cannot become pre-candidate");
        // Pre-vote changes neither the term nor the vote: a partitioned member that keeps
        // failing pre-votes never inflates its term and disrupts the cluster on return.
        self.votes.clear();
        self.leader_id = NONE;
        self.role = Role::PreCandidate;
    }

    fn become_candidate(&mut self) {
        assert!(self.role != Role::Leader, "leader cannot become candidate");
        self.reset(self.term + 1);
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    pub(crate) fn become_leader(&mut self) {
        assert!(self.role == Role::Candidate, "only a candidate becomes leader");
        self.reset(self.term);
        self.role = Role::Leader;
        self.leader_id = self.id;
        let persisted = self.log.persisted;
        if let Some(own) = self.progress.get_mut(&self.id) {
            own.matched = persisted;
            own.become_replicate();
        }
        // Configuration entries are only proposed once an entry of this term commits
        // (thesis §4.1 safety fix), which this empty entry provides quickly; it also
        // commits everything earlier terms left behind (§5.4.2).
        let entry =
            Entry { term: self.term, index: self.log.last_index() + 1, entry_type: 0, data: bytes::Bytes::new() };
        self.log.append(entry);
        self.append_pending = true;
    }

    // ---------------------------------------------------------------- ticks

    /// Advances logical time by one tick: elections for followers, heartbeats and
    /// check-quorum for leaders.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_ticks {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                self.become_follower(self.term, NONE);
                return;
            }
            self.transfer_target = NONE;
        }
        self.tick_snapshots();
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Check-quorum: a leader that has not heard from a quorum of voters within an
    /// election timeout steps down, so a partitioned leader stops serving.
    fn quorum_recently_active(&mut self) -> bool {
        let self_id = self.id;
        let mut active = 0;
        for (id, progress) in self.progress.iter_mut() {
            let counts = !progress.is_learner && (*id == self_id || progress.recent_active);
            if counts {
                active += 1;
            }
            if *id != self_id {
                progress.recent_active = false;
            }
        }
        active >= self.quorum()
    }

    /// Starts an election now (the local equivalent of etcd's MsgHup).
    pub fn campaign(&mut self) {
        self.hup(false);
    }

    fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        let kind = if transfer {
            CampaignKind::Transfer
        } else if self.config.pre_vote {
            CampaignKind::PreElection
        } else {
            CampaignKind::Election
        };
        self.start_campaign(kind);
    }

    fn start_campaign(&mut self, kind: CampaignKind) {
        let (vote_type, vote_term) = if kind == CampaignKind::PreElection {
            self.become_pre_candidate();
            (MessageType::MsgPreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageType::MsgVote, self.term)
        };
        if self.record_vote(self.id, true) {
            return;
        }
        let voters = self.conf.voters.clone();
        for voter in voters {
            if voter == self.id {
                continue;
            }
            let context = if kind == CampaignKind::Transfer { CAMPAIGN_TRANSFER.to_vec() } else { Vec::new() };
            self.send(Message {
                msg_type: vote_type as i32,
                to: voter,
                term: vote_term,
                index: self.log.last_index(),
                log_term: self.log.last_term(),
                context,
                ..Default::default()
            });
        }
    }

    /// Counts a (pre-)vote; returns true when the election is decided and acted upon.
    fn record_vote(&mut self, from: u64, granted: bool) -> bool {
        if !self.is_voter(from) {
            return false;
        }
        self.votes.entry(from).or_insert(granted);
        let granted_count = self.votes.values().filter(|granted| **granted).count();
        let rejected_count = self.votes.len() - granted_count;
        if granted_count >= self.quorum() {
            if self.role == Role::PreCandidate {
                self.start_campaign(CampaignKind::Election);
            } else {
                self.become_leader();
            }
            return true;
        }
        if self.conf.voters.len() - rejected_count < self.quorum() {
            self.become_follower(self.term, NONE);
            return true;
        }
        false
    }

    // ---------------------------------------------------------------- step

    /// Feeds one message from a peer. Messages of an older term are answered or dropped as
    /// the paper says; a newer term makes us a follower first.
    pub fn step(&mut self, mut message: Message) {
        assert!(message.to == self.id, "message for {} delivered to {}", message.to, self.id);
        if !self.step_term(&message) {
            return;
        }
        let msg_type = MessageType::try_from(message.msg_type).unwrap_or(MessageType::MsgHup);
        match msg_type {
            MessageType::MsgVote | MessageType::MsgPreVote => self.handle_vote_request(&message),
            _ => match self.role {
                Role::Leader => self.step_leader(msg_type, &mut message),
                Role::Candidate | Role::PreCandidate => self.step_candidate(msg_type, &mut message),
                Role::Follower => self.step_follower(msg_type, &mut message),
            },
        }
    }

    /// The term rules of step: returns false when the message is fully handled.
    fn step_term(&mut self, message: &Message) -> bool {
        if message.term == 0 {
            // A local message (MsgUnreachable, MsgSnapStatus): peers always set a term.
            return true;
        }
        let msg_type = message.msg_type;
        let is_pre_vote = msg_type == MessageType::MsgPreVote as i32;
        let is_vote = msg_type == MessageType::MsgVote as i32 || is_pre_vote;
        if message.term > self.term {
            if is_vote {
                let forced = message.context == CAMPAIGN_TRANSFER;
                let in_lease = self.config.check_quorum
                    && self.leader_id != NONE
                    && self.election_elapsed < self.config.election_ticks;
                if !forced && in_lease {
                    return false;
                }
            }
            let granted_pre_vote = msg_type == MessageType::MsgPreVoteResp as i32 && !message.reject;
            if !is_pre_vote && !granted_pre_vote {
                let from_leader = msg_type == MessageType::MsgApp as i32
                    || msg_type == MessageType::MsgHeartbeat as i32
                    || msg_type == MessageType::MsgSnap as i32;
                let leader = if from_leader { message.from } else { NONE };
                self.become_follower(message.term, leader);
            }
            return true;
        }
        if message.term < self.term {
            self.step_stale_term(message);
            return false;
        }
        true
    }

    fn step_stale_term(&mut self, message: &Message) {
        let msg_type = message.msg_type;
        let from_leader = msg_type == MessageType::MsgApp as i32 || msg_type == MessageType::MsgHeartbeat as i32;
        if (self.config.check_quorum || self.config.pre_vote) && from_leader {
            // A stale leader (or one that we outran while partitioned) learns our term and
            // steps down; without this a member whose term grew while it was cut off would
            // never rejoin when pre-vote or check-quorum keeps its vote requests ignored.
            self.send(Message { msg_type: MessageType::MsgAppResp as i32, to: message.from, ..Default::default() });
        } else if msg_type == MessageType::MsgPreVote as i32 {
            self.send(Message {
                msg_type: MessageType::MsgPreVoteResp as i32,
                to: message.from,
                term: self.term,
                reject: true,
                ..Default::default()
            });
        }
    }

    fn handle_vote_request(&mut self, message: &Message) {
        let is_pre_vote = message.msg_type == MessageType::MsgPreVote as i32;
        let response_type = if is_pre_vote { MessageType::MsgPreVoteResp } else { MessageType::MsgVoteResp };
        let can_vote = self.vote == message.from
            || (self.vote == NONE && self.leader_id == NONE)
            || (is_pre_vote && message.term > self.term);
        if can_vote && self.log.is_up_to_date(message.index, message.log_term) {
            // Answer with the request's term: a pre-vote's term is one ahead of ours.
            self.send(Message {
                msg_type: response_type as i32,
                to: message.from,
                term: message.term,
                ..Default::default()
            });
            if !is_pre_vote {
                self.election_elapsed = 0;
                self.vote = message.from;
            }
        } else {
            self.send(Message {
                msg_type: response_type as i32,
                to: message.from,
                term: self.term,
                reject: true,
                ..Default::default()
            });
        }
    }

    fn step_candidate(&mut self, msg_type: MessageType, message: &mut Message) {
        match msg_type {
            MessageType::MsgApp => {
                self.become_follower(message.term, message.from);
                self.handle_append(message);
            }
            MessageType::MsgHeartbeat => {
                self.become_follower(message.term, message.from);
                self.handle_heartbeat(message);
            }
            MessageType::MsgSnap => {
                self.become_follower(message.term, message.from);
                self.handle_snapshot(message);
            }
            MessageType::MsgPreVoteResp if self.role == Role::PreCandidate => {
                self.record_vote(message.from, !message.reject);
            }
            MessageType::MsgVoteResp if self.role == Role::Candidate => {
                self.record_vote(message.from, !message.reject);
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, msg_type: MessageType, message: &mut Message) {
        match msg_type {
            MessageType::MsgApp => {
                self.election_elapsed = 0;
                self.leader_id = message.from;
                self.handle_append(message);
            }
            MessageType::MsgHeartbeat => {
                self.election_elapsed = 0;
                self.leader_id = message.from;
                self.handle_heartbeat(message);
            }
            MessageType::MsgSnap => {
                self.election_elapsed = 0;
                self.leader_id = message.from;
                self.handle_snapshot(message);
            }
            MessageType::MsgTimeoutNow => self.hup(true),
            MessageType::MsgTransferLeader if self.leader_id != NONE => {
                let forwarded = Message {
                    msg_type: MessageType::MsgTransferLeader as i32,
                    to: self.leader_id,
                    index: message.from,
                    ..Default::default()
                };
                self.send(forwarded);
            }
            MessageType::MsgReadIndexResp => {
                // Only the leader of this term answers; its commit is bounded as a heartbeat's.
                self.log.commit_to(message.commit.min(self.log.last_index()));
                if let Some(entry) = message.entries.pop() {
                    self.read_states.push(ReadState { index: message.index, request_context: entry.data.to_vec() });
                }
            }
            _ => {}
        }
    }

    fn step_leader(&mut self, msg_type: MessageType, message: &mut Message) {
        if !self.progress.contains_key(&message.from) {
            return;
        }
        match msg_type {
            MessageType::MsgAppResp => self.handle_append_response(message),
            MessageType::MsgHeartbeatResp => self.handle_heartbeat_response(message),
            MessageType::MsgReadIndex => {
                if let Some(entry) = message.entries.pop() {
                    self.read_index_from(entry.data.to_vec(), message.from);
                }
            }
            MessageType::MsgTransferLeader => {
                let target = if message.index != NONE { message.index } else { message.from };
                self.transfer_leader(target);
            }
            MessageType::MsgSnapStatus => self.report_snapshot(message.from, !message.reject),
            MessageType::MsgUnreachable => self.report_unreachable(message.from),
            _ => {}
        }
    }

    // ---------------------------------------------------------------- follower side

    fn handle_append(&mut self, message: &mut Message) {
        if message.index < self.log.committed {
            self.skip_committed_prefix(message);
        }
        if message.index < self.log.committed {
            let committed = self.log.committed;
            self.send(Message {
                msg_type: MessageType::MsgAppResp as i32,
                to: message.from,
                index: committed,
                ..Default::default()
            });
            return;
        }
        let touches_conf = message.entries.iter().any(is_conf_entry)
            || self.conf_history.last().is_some_and(|(index, _)| *index > message.index);
        let prev_index = message.index;
        match self.log.maybe_append(message.index, message.log_term, message.commit, &mut message.entries) {
            Some(last_new_index) => {
                if touches_conf {
                    self.rebuild_conf_history(prev_index + 1);
                }
                self.send(Message {
                    msg_type: MessageType::MsgAppResp as i32,
                    to: message.from,
                    index: last_new_index,
                    ..Default::default()
                });
            }
            None => {
                // Fast backtracking: point the leader at the last index whose term is not
                // above the leader's term for the probed index, skipping a whole term at once.
                let hint_index =
                    self.log.find_conflict_by_term(message.index.min(self.log.last_index()), message.log_term);
                let hint_term = self.log.term(hint_index).unwrap_or(0);
                self.send(Message {
                    msg_type: MessageType::MsgAppResp as i32,
                    to: message.from,
                    index: message.index,
                    reject: true,
                    reject_hint: hint_index,
                    log_term: hint_term,
                    ..Default::default()
                });
            }
        }
    }

    /// An append from the current leader that starts below our commit index (it was
    /// overtaken by a later message): entries up to the commit index are ours already (a
    /// leader holds every committed entry), so keep only the newer ones and check the
    /// append against our committed entry instead. Without this the newer entries would be
    /// dropped and the leader, whose window counts them as sent, might wait for a while.
    fn skip_committed_prefix(&mut self, message: &mut Message) {
        let committed = self.log.committed;
        let last_sent = message.index + message.entries.len() as u64;
        if last_sent <= committed {
            return;
        }
        let skip = (committed - message.index) as usize;
        message.entries.drain(..skip);
        message.index = committed;
        message.log_term = self.log.term(committed).expect("the committed entry is in the log or the snapshot");
    }

    fn handle_heartbeat(&mut self, message: &mut Message) {
        let commit = message.commit.min(self.log.last_index());
        self.log.commit_to(commit);
        let context = std::mem::take(&mut message.context);
        self.send(Message {
            msg_type: MessageType::MsgHeartbeatResp as i32,
            to: message.from,
            context,
            ..Default::default()
        });
    }

    fn handle_snapshot(&mut self, message: &mut Message) {
        let snapshot = message.snapshot.take().unwrap_or_default();
        let index = if self.restore_snapshot(snapshot) { self.log.last_index() } else { self.log.committed };
        self.send(Message { msg_type: MessageType::MsgAppResp as i32, to: message.from, index, ..Default::default() });
    }

    /// The index of the leader's snapshot the next Ready hands over to install, if any.
    pub fn snapshot_to_install_index(&self) -> Option<u64> {
        self.snapshot_to_install.as_ref().and_then(|snapshot| snapshot.metadata.as_ref()).map(|metadata| metadata.index)
    }

    /// Installs a snapshot from the leader unless our log already covers it; returns
    /// whether it replaced our log.
    fn restore_snapshot(&mut self, snapshot: Snapshot) -> bool {
        let Some(metadata) = snapshot.metadata.clone() else { return false };
        if metadata.index <= self.log.committed {
            return false;
        }
        if self.log.match_term(metadata.index, metadata.term) {
            self.log.commit_to(metadata.index);
            return false;
        }
        self.log.restore_snapshot(metadata.index, metadata.term);
        self.base_conf = metadata.conf_state.unwrap_or_default();
        self.conf_history.clear();
        self.apply_membership();
        self.snapshot = Some(snapshot.clone());
        self.snapshot_to_install = Some(snapshot);
        true
    }

    // ---------------------------------------------------------------- client operations

    /// Appends `data` as a new entry (leader only); it is sent at the next Ready so that
    /// everything proposed between two Readies travels in one append per follower.
    pub fn propose(&mut self, data: impl Into<bytes::Bytes>) -> Result<u64, ProposeError> {
        self.propose_entry(EntryType::EntryNormal, data.into())
    }

    pub(crate) fn propose_entry(&mut self, entry_type: EntryType, data: bytes::Bytes) -> Result<u64, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader_id });
        }
        if self.transfer_target != NONE {
            return Err(ProposeError::TransferInProgress);
        }
        let size_bytes = data.len() as u64;
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + size_bytes > self.config.uncommitted_size_bytes_max {
            return Err(ProposeError::TooManyUncommitted);
        }
        self.uncommitted_bytes += size_bytes;
        let index = self.log.last_index() + 1;
        self.log.append(Entry { term: self.term, index, entry_type: entry_type as i32, data });
        self.append_pending = true;
        Ok(index)
    }

    /// Asks for a linearizable read point. The answer arrives as a `ReadState` carrying
    /// `context` in a later Ready; it may never arrive (leadership lost): retry on timeout.
    pub fn read_index(&mut self, context: Vec<u8>) -> Result<(), ProposeError> {
        match self.role {
            Role::Leader => {
                self.read_index_from(context, self.id);
                Ok(())
            }
            _ if self.leader_id != NONE => {
                let leader = self.leader_id;
                let entry = Entry { data: context.into(), ..Default::default() };
                self.send(Message {
                    msg_type: MessageType::MsgReadIndex as i32,
                    to: leader,
                    entries: vec![entry],
                    ..Default::default()
                });
                Ok(())
            }
            _ => Err(ProposeError::NotLeader { leader: NONE }),
        }
    }

    /// Starts moving leadership to `target` (thesis §3.10): bring it up to date, then tell
    /// it to campaign at once. Proposals are refused until it succeeds or an election
    /// timeout passes.
    pub fn transfer_leader(&mut self, target: u64) {
        if self.role != Role::Leader {
            if self.leader_id != NONE && self.leader_id != self.id {
                let leader = self.leader_id;
                self.send(Message {
                    msg_type: MessageType::MsgTransferLeader as i32,
                    to: leader,
                    index: target,
                    ..Default::default()
                });
            }
            return;
        }
        if target == self.id || !self.is_voter(target) || self.transfer_target == target {
            return;
        }
        self.transfer_target = target;
        self.election_elapsed = 0;
        let matched = self.progress.get(&target).map_or(0, |progress| progress.matched);
        if matched == self.log.last_index() {
            self.send_timeout_now(target);
        } else {
            self.send_append(target, false);
        }
    }

    pub(crate) fn send_timeout_now(&mut self, target: u64) {
        self.send(Message { msg_type: MessageType::MsgTimeoutNow as i32, to: target, ..Default::default() });
    }

    /// The transport could not deliver to `id`: stop streaming to it and probe.
    pub fn report_unreachable(&mut self, id: u64) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(progress) = self.progress.get_mut(&id) {
            if progress.state == crate::raft::progress::ProgressState::Replicate {
                progress.become_probe();
            }
        }
    }

    /// The transport finished (or failed) sending a snapshot to `id`.
    pub fn report_snapshot(&mut self, id: u64, delivered: bool) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(progress) = self.progress.get_mut(&id) {
            if progress.state == crate::raft::progress::ProgressState::Snapshot {
                if !delivered {
                    progress.pending_snapshot = 0;
                }
                progress.become_probe();
                // Wait for the follower's answer (or the next heartbeat) before probing.
                progress.probe_sent = true;
            }
        }
    }
}

pub(crate) fn is_conf_entry(entry: &Entry) -> bool {
    entry.entry_type == EntryType::EntryConfChange as i32
}
