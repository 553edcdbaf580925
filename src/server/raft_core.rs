//! The raft core (DESIGN §2–§3): one task on core 0 that owns the Raft state machine, the
//! WAL and the peer transport, and hands committed entries to the apply task (`writer`).
//!
//! The loop: wait for anything (client requests from every core, peer messages, a tick, a
//! WAL write that became durable), take everything else that is already queued, put all
//! client writes taken into ONE entry (`entry::Batch`) and all linearizable reads into ONE
//! ReadIndex round, then work off Raft's Readies:
//!
//! 1. send `messages` (a leader's appends go out while its own WAL write is in flight;
//!    commit notices, appends that carry no entries, may be held back: `CommitNotices`);
//! 2. append `entries` and `hard_state` to the WAL (group commit: appends made while a write
//!    is in flight share the next write and fdatasync); when durable, report the Ready
//!    persisted and send its `messages_after_persist` (votes and append acknowledgements
//!    leave only from persisted state);
//! 3. pass `committed_entries` to the apply task, and each ReadIndex result with its
//!    waiting reads (released once applied >= the read index).
//!
//! Writes on a follower travel to the leader as `MsgProp` over the transport; every member
//! applies every entry, and the member named in the batch answers its clients. A request
//! whose entry is lost with a leader change times out on its core (etcd's behaviour).
//!
//! Membership changes are checked here first (etcd's strict reconfiguration rules,
//! `reconfig`, by the member asked), then by the leader against its member table (IDs, peer
//! URLs, the learner limit: `check_conf_change`; a follower's change it refuses comes back
//! to the follower as an entry, `entry::Op::Refused`), then proposed as one-member Raft
//! changes, which take effect when appended.
//! A voter whose addition could not commit without it (the second of a lone voter, or any
//! while too few voters are connected) therefore starts as a learner (it would otherwise be
//! needed to commit its own addition before it could join) and the leader promotes it once
//! it has caught up (`promote_caught_up_voters`).
//!
//! Invariants: nothing is acknowledged before its entry is committed (on a quorum of WALs)
//! and applied; `messages_after_persist` of Ready n leave only after Readies 1..=n are
//! durable; exactly one task touches `Raft`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use prost::Message as _;

use std::time::Instant;

use super::entry::{self, Batch, ConfContext};
use super::latency::Stage;
use super::reconfig;
use super::writer::{ApplyWork, Command, Outcome, Reply};
use super::{Proposal, Shared};
use crate::api::errors::{self, Status};
use crate::api::pb::etcdserverpb as pb;
use crate::io::glommio_storage::GlommioStorage;
use crate::lease::{LeaseId, LeaseIdGenerator, Lessor, RenewError, TimeToLiveError};
use crate::raft::pb::{ConfChange, ConfChangeType, Entry, EntryType, Message, MessageType};
use crate::raft::{ProposeError, Raft, RestartState, Role};
use crate::transport::{Incoming, Transport};
use crate::wal::Wal;

/// Bytes of client requests one entry carries at most; the rest waits for the next entry.
const ENTRY_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Events handled before the loop works off a Ready, so a flood cannot starve Raft.
const EVENTS_PER_TURN_MAX: usize = 8192;
/// A snapshot is also due after this many bytes of entries, however few the entries: one
/// entry carries many requests, and a restart replays the WAL after the last snapshot, so
/// this bounds the restart time whatever the number of keys.
const SNAPSHOT_WAL_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes of entries kept below a snapshot for followers slightly behind.
const SNAPSHOT_CATCH_UP_BYTES: u64 = 16 * 1024 * 1024;
/// How long a leader holds a commit notice back, waiting for an append that carries it.
const COMMIT_NOTICE_HOLD: std::time::Duration = std::time::Duration::from_millis(1);
/// Ticks between sweeps of waiters whose clients gave up.
const WAITER_SWEEP_TICKS: u64 = 50;

/// Clients waiting for their request to be applied, by request id (this member's only).
#[derive(Default)]
pub struct Waiters {
    map: HashMap<u64, Reply>,
}

impl Waiters {
    pub fn insert(&mut self, id: u64, reply: Reply) {
        self.map.insert(id, reply);
    }

    pub fn take(&mut self, id: u64) -> Option<Reply> {
        self.map.remove(&id)
    }

    fn sweep(&mut self) {
        self.map.retain(|_, reply| !reply.is_canceled());
    }

    fn fail_all(&mut self, ids: impl Iterator<Item = u64>, status: &Status) {
        for id in ids {
            if let Some(reply) = self.map.remove(&id) {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}

/// A leader's commit notices held back, by follower (DESIGN §3).
///
/// When an entry commits, Raft tells every follower at once with an append that carries no
/// entries, only the commit index (etcd's `bcastAppend`); the follower applies the entry and
/// answers. With one client on three members that notice woke both followers between a reply
/// and the client's next put; a follower on the leader's CPU then applied while the next
/// request waited (on 2026-11-30's 2-CPU VM, 143 and 154 µs at the median from the client's
/// send to the leader's read of it in two runs of `tuning/cluster-put-timeline.sh`, against 49
/// and 62 µs with this). The next append to a follower carries the commit index too: a notice
/// waits for one for up to `COMMIT_NOTICE_HOLD` and is dropped when one goes out that lets the
/// follower commit as far, so the follower applies while its WAL writes the new entry.
///
/// A notice that commits an entry a follower forwarded (its own clients' requests, which it
/// answers once it applies them) goes out at once. Notices are held only by a leader, in the
/// term it sent them: when it steps down (or a new term starts) what is held goes out at once,
/// ahead of the messages of that turn (a removed leader's last notices precede its
/// `MsgTimeoutNow`, as Raft sent them).
///
/// Safety is Raft's own: a message may always be delayed or lost. What waits is a follower's
/// view of the commit, by at most the hold: its serializable reads and its watchers, and a
/// linearizable read on a follower whose acknowledgement of the entry the leader had not yet
/// counted (the leader's ReadIndex answer carries the commit only up to what that follower
/// acknowledged).
#[derive(Default)]
struct CommitNotices {
    held: HashMap<u64, Message>,
    /// The term this member leads in, as of the last `hold` (None: it did not lead).
    term: Option<u64>,
    /// By follower: the indexes of the entries proposed for it whose commit no append to it
    /// has carried yet, in order, at most `FORWARDED_TRACKED_MAX`.
    forwarded: HashMap<u64, VecDeque<u64>>,
    /// Shared with the timer task.
    timer: Rc<NoticeTimer>,
}

/// Entries tracked per follower in `CommitNotices::forwarded`; past it the oldest is
/// forgotten (its notice may then wait for the hold).
const FORWARDED_TRACKED_MAX: usize = 1024;

#[derive(Default)]
struct NoticeTimer {
    /// A timer task is sleeping.
    armed: std::cell::Cell<bool>,
    /// Notices are held: when the timer fires, a `SendCommitNotices` event is due.
    holding: std::cell::Cell<bool>,
}

impl CommitNotices {
    /// How far an append lets its follower commit: the commit index, but no further than the
    /// entries it ends with (the follower's log may differ beyond them).
    fn commits_through(append: &Message) -> u64 {
        append.commit.min(append.index + append.entries.len() as u64)
    }

    /// Takes the notices out of `messages`, in place (the newest per follower is held), and
    /// drops a held one when a later append to its follower lets it commit as far.
    /// `leading_term` is this member's term while it leads, None otherwise: then, or in a new
    /// term, what is held goes first into `messages` and nothing is held.
    fn hold(&mut self, messages: &mut Vec<Message>, leading_term: Option<u64>) {
        let mut released = Vec::new();
        if leading_term != self.term {
            released = self.take();
            self.forwarded.clear();
            self.term = leading_term;
        }
        if leading_term.is_some() {
            self.hold_notices_of(messages);
        }
        // Sent before this turn's messages, as Raft made them.
        if !released.is_empty() {
            messages.splice(0..0, released);
        }
    }

    /// The hold itself, for a leader in its current term.
    fn hold_notices_of(&mut self, messages: &mut Vec<Message>) {
        let mut kept = 0;
        for index in 0..messages.len() {
            let message = &messages[index];
            if message.msg_type == MessageType::MsgApp as i32 {
                let through = Self::commits_through(message);
                let mut awaited = false;
                if let Some(entries) = self.forwarded.get_mut(&message.to) {
                    while entries.front().is_some_and(|&entry| entry <= through) {
                        entries.pop_front();
                        awaited = true;
                    }
                }
                if message.entries.is_empty() && !awaited {
                    let notice = std::mem::take(&mut messages[index]);
                    self.held.insert(notice.to, notice);
                    continue;
                }
                if self.held.get(&message.to).is_some_and(|held| Self::commits_through(held) <= through) {
                    self.held.remove(&message.to);
                }
            }
            messages.swap(kept, index);
            kept += 1;
        }
        messages.truncate(kept);
        self.timer.holding.set(!self.held.is_empty());
    }

    /// The leader proposed entry `index` for `follower`'s clients.
    fn forwarded(&mut self, follower: u64, index: u64) {
        let entries = self.forwarded.entry(follower).or_default();
        if entries.len() == FORWARDED_TRACKED_MAX {
            entries.pop_front();
        }
        entries.push_back(index);
    }

    /// `follower` left the cluster.
    fn forget(&mut self, follower: u64) {
        self.held.remove(&follower);
        self.forwarded.remove(&follower);
    }

    fn take(&mut self) -> Vec<Message> {
        self.timer.holding.set(false);
        self.held.drain().map(|(_, message)| message).collect()
    }
}

pub enum Event {
    Proposal(Proposal),
    Peer(Incoming),
    Tick,
    /// Ready `number` and every Ready before it are on disk.
    Persisted(u64),
    /// The apply task changed the membership: re-address the peers.
    MembersChanged,
    /// The apply task made a durable store checkpoint through this index.
    Checkpointed(u64),
    /// A snapshot stream to a peer ended (delivered or not).
    SnapshotSent(u64, bool),
    /// The held commit notices are due.
    SendCommitNotices,
}

/// Readies handed to the WAL whose `messages_after_persist` wait for durability.
struct PendingPersist {
    number: u64,
    durable: bool,
    messages: Vec<Message>,
}

pub struct RaftCore {
    shared: Arc<Shared>,
    raft: Raft,
    wal: Rc<Wal<GlommioStorage>>,
    transport: Rc<Transport>,
    waiters: Rc<RefCell<Waiters>>,
    apply: mpsc::UnboundedSender<ApplyWork>,
    events: mpsc::UnboundedSender<Event>,
    batch: Vec<entry::Request>,
    batch_bytes: usize,
    reads: Vec<Reply>,
    read_rounds: HashMap<u64, Vec<Reply>>,
    next_read_round: u64,
    next_request_id: u64,
    pending_persists: VecDeque<PendingPersist>,
    ticks: u64,
    /// Whether this member has published its name and client URLs since it started.
    attributes_published: bool,
    /// MoveLeader requests waiting for their target to lead.
    transfers: Vec<(u64, Reply)>,
    /// Shared with the apply task: the replicated lease state and, here, the leader's timing.
    lessor: Rc<RefCell<Lessor>>,
    lease_ids: LeaseIdGenerator,
    /// The db of the last snapshot received from the leader: (index, file).
    incoming_snapshot: Option<(u64, std::path::PathBuf)>,
    /// Index of this member's newest snapshot (log compacted up to a margin below it).
    snapshot_index: u64,
    /// The term in which this member, leading, last handed entries to the apply task to
    /// apply ahead of their commit (`ApplyWork::Ahead`), until it stops leading in it.
    ahead_term: Option<u64>,
    /// The term and vote of the last hard state handed to the WAL.
    synced_term_vote: (u64, u64),
    /// A hard state whose only change is the commit index, written with the next append.
    lazy_hard_state: Option<crate::raft::pb::HardState>,
    /// Bytes of entries written to the WAL since the last snapshot.
    bytes_since_snapshot: u64,
    /// When the first request of the open batch arrived.
    batch_started: Instant,
    /// (last index, when handed to the WAL) of each Ready's entries, until committed.
    appended: VecDeque<(u64, Instant)>,
    /// The term in which this member, leading as the only voter, had applied all it had
    /// committed (0: none): `Shared::sole_voter_reads` holds while it stays so.
    sole_voter_term: u64,
    commit_notices: CommitNotices,
}

/// What the raft core starts from.
pub struct Started {
    pub raft: Raft,
    pub wal: Rc<Wal<GlommioStorage>>,
}

/// Opens the WAL and builds Raft from it: a new member of a new cluster bootstraps (its
/// founding configuration entries are written to the WAL before anything else), a
/// restarting member continues from its hard state and entries.
pub async fn open(shared: &Shared, applied: u64) -> Result<Started, String> {
    let wal_dir = shared.config.data_dir.join("member").join("wal");
    let wal_existed = wal_dir.is_dir();
    let storage = GlommioStorage::open(&wal_dir)
        .await
        .map_err(|error| format!("cannot open the WAL in {}: {error}", wal_dir.display()))?;
    let opened = Wal::open(storage, crate::wal::WalConfig::default())
        .await
        .map_err(|error| format!("cannot open the WAL in {}: {error}", wal_dir.display()))?;
    glommio::spawn_local(opened.driver).detach();
    let wal = Rc::new(opened.wal);
    let recovered = opened.recovered;
    if let Some((file, offset)) = &recovered.repaired_tail {
        eprintln!("ringd: the WAL ended in a torn write; zeroed {file} from offset {offset}");
    }
    let empty = recovered.hard_state.is_none() && recovered.entries.is_empty() && recovered.snapshot.is_none();
    let restart = if empty {
        if applied > 0 && wal_existed {
            return Err(format!(
                "the store in {} has applied index {applied} but its WAL in {} is empty: refusing to start \
                 (the WAL's records were removed)",
                shared.config.data_dir.display(),
                wal_dir.display()
            ));
        }
        if applied > 0 {
            // A db without a WAL directory: a backup (Maintenance.Snapshot) placed into a new
            // data dir. Start a new cluster from it, as `etcdctl snapshot restore` does: the
            // log begins after a snapshot at the db's applied index.
            if !shared.config.initial_cluster_new {
                return Err("a restored db starts a new cluster: use --initial-cluster-state new".to_owned());
            }
            eprintln!(
                "ringd: no WAL in {}: starting a new cluster from the db at applied index {applied} (a restore)",
                shared.config.data_dir.display()
            );
            let voters: Vec<u64> = shared.members.read().unwrap().iter().map(|m| m.id).collect();
            let conf_state = crate::raft::pb::ConfState { voters, ..Default::default() };
            let marker = crate::wal::SnapshotMarker {
                index: applied,
                term: 1,
                conf_state: Some(conf_state.clone()),
                replaces_log: false,
            };
            let hard_state = crate::raft::pb::HardState { term: 1, vote: crate::raft::NONE, commit: applied };
            let marked = wal.save_snapshot_marker(marker);
            let written = wal.append(&[], Some(hard_state));
            marked.await.map_err(|error| format!("cannot write the WAL: {error}"))?;
            written.await.map_err(|error| format!("cannot write the WAL: {error}"))?;
            let snapshot = crate::raft::pb::Snapshot {
                data: Vec::new(),
                metadata: Some(crate::raft::pb::SnapshotMetadata {
                    conf_state: Some(conf_state),
                    index: applied,
                    term: 1,
                }),
            };
            RestartState { hard_state, snapshot: Some(snapshot), entries: Vec::new() }
        } else if !shared.config.initial_cluster_new {
            RestartState::default()
        } else {
            let restart = bootstrap(shared);
            wal.append(&restart.entries, Some(restart.hard_state))
                .await
                .map_err(|error| format!("cannot write the WAL: {error}"))?;
            restart
        }
    } else {
        let snapshot = recovered.snapshot.map(|marker| crate::raft::pb::Snapshot {
            data: Vec::new(),
            metadata: Some(crate::raft::pb::SnapshotMetadata {
                conf_state: marker.conf_state,
                index: marker.index,
                term: marker.term,
            }),
        });
        let mut hard_state = recovered.hard_state.unwrap_or_default();
        let last_index = recovered.entries.last().map(|e| e.index).unwrap_or(0);
        let snapshot_index = snapshot.as_ref().and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.index);
        hard_state.commit = hard_state.commit.min(last_index.max(snapshot_index));
        let mut restart = RestartState { hard_state, snapshot, entries: recovered.entries };
        if shared.config.force_new_cluster {
            let table = shared.members.read().unwrap().clone();
            let appended = force_new_cluster(shared.member_id, &table, &mut restart, applied)?;
            if !appended.is_empty() {
                wal.append(&appended, Some(restart.hard_state))
                    .await
                    .map_err(|error| format!("cannot write the WAL: {error}"))?;
            }
        }
        restart
    };
    let mut config = crate::raft::Config::new(shared.member_id);
    config.election_ticks = shared.config.election_ticks;
    config.heartbeat_ticks = 1;
    let seed = shared.member_id
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let raft = Raft::new(config, restart, Box::new(crate::raft::SplitMix64::new(seed)));
    Ok(Started { raft, wal })
}

/// etcd's --force-new-cluster, for a cluster that lost its quorum for good: entries that
/// remove every other member are appended to this member's log, committed at once with all
/// of it (and returned, for the WAL). Raft then starts as the only voter and elects itself;
/// applying the removals leaves the member table with this member alone. Unlike etcd, no
/// entry is discarded: the commit index this member persisted lags what it knew (it rides
/// along with appends), so an entry past it may hold acknowledged writes; keeping them all
/// may also keep writes whose clients saw a timeout. A member already alone is left as is.
fn force_new_cluster(
    me: u64,
    table: &[pb::Member],
    restart: &mut RestartState,
    applied: u64,
) -> Result<Vec<Entry>, String> {
    let snapshot = restart.snapshot.as_ref().and_then(|s| s.metadata.as_ref());
    let last = restart.entries.last().map(|e| e.index).or(snapshot.map(|m| m.index)).unwrap_or(0);
    if applied > last {
        // A snapshot's db installed, its later entries never received: the removals would
        // land at indexes the store has already applied, and be skipped.
        return Err(format!(
            "--force-new-cluster: the store has applied index {applied}, past its log's last index {last}; \
             restore this member's db as a new cluster instead"
        ));
    }
    let conf = restart.conf_state();
    // A voter still in its learner stage (the table lists it as a voter) is made one first.
    let staged_voter = conf.learners.contains(&me) && table.iter().any(|m| m.id == me && !m.is_learner);
    if !conf.voters.contains(&me) && !staged_voter {
        return Err("--force-new-cluster: this member is not a voter of its cluster's configuration".into());
    }
    let mut others: Vec<u64> = conf.voters.iter().chain(&conf.learners).copied().filter(|&id| id != me).collect();
    for member in table {
        if member.id != me && !others.contains(&member.id) {
            others.push(member.id);
        }
    }
    if others.is_empty() && !staged_voter {
        return Ok(Vec::new());
    }
    eprintln!(
        "ringd: --force-new-cluster: the log up to index {last} is committed; removing {} other members: {} \
         (start this member without the flag from now on)",
        others.len(),
        others.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>().join(", ")
    );
    let change = |change_type: ConfChangeType, id: u64| {
        let member = pb::Member { id, ..Default::default() };
        ConfContext { member: Some(member), ..Default::default() }.change(change_type, id)
    };
    let promotion = staged_voter.then(|| change(ConfChangeType::ConfChangeAddNode, me));
    let removals = others.iter().map(|&id| change(ConfChangeType::ConfChangeRemoveNode, id));
    let term = restart.hard_state.term.max(restart.entries.last().map_or(0, |e| e.term));
    let appended: Vec<Entry> = (last + 1..)
        .zip(promotion.into_iter().chain(removals))
        .map(|(index, change)| Entry {
            term,
            index,
            entry_type: EntryType::EntryConfChange as i32,
            data: change.encode_to_vec().into(),
        })
        .collect();
    restart.entries.extend(appended.iter().cloned());
    if term != restart.hard_state.term {
        // A torn tail lost the hard state written after its entries: no vote in this term.
        restart.hard_state.term = term;
        restart.hard_state.vote = crate::raft::NONE;
    }
    restart.hard_state.commit = last + appended.len() as u64;
    Ok(appended)
}

/// The founding configuration: one ConfChange per --initial-cluster member (in id order,
/// as `RestartState::bootstrap`), each carrying the member's name and peer URLs.
fn bootstrap(shared: &Shared) -> RestartState {
    let members = shared.members.read().unwrap().clone();
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let mut restart = RestartState::bootstrap(&ids);
    for entry in &mut restart.entries {
        let mut change = ConfChange::decode(&entry.data[..]).expect("bootstrap encodes a ConfChange");
        let member = members.iter().find(|m| m.id == change.node_id).cloned();
        change.context = ConfContext { member, ..Default::default() }.encode_to_vec();
        entry.data = change.encode_to_vec().into();
    }
    restart
}

impl RaftCore {
    pub fn new(
        shared: Arc<Shared>,
        started: Started,
        transport: Rc<Transport>,
        waiters: Rc<RefCell<Waiters>>,
        lessor: Rc<RefCell<Lessor>>,
        apply: mpsc::UnboundedSender<ApplyWork>,
        events: mpsc::UnboundedSender<Event>,
    ) -> RaftCore {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
        let snapshot_index = started.raft.log().snapshot_index();
        let lease_ids = LeaseIdGenerator::new(shared.member_id, now);
        let on_disk = started.raft.hard_state();
        RaftCore {
            shared,
            raft: started.raft,
            wal: started.wal,
            transport,
            waiters,
            apply,
            events,
            batch: Vec::new(),
            batch_bytes: 0,
            reads: Vec::new(),
            read_rounds: HashMap::new(),
            next_read_round: 1,
            // Unique across restarts: entries replayed after a restart carry older ids.
            next_request_id: now << 20,
            pending_persists: VecDeque::new(),
            ticks: 0,
            attributes_published: false,
            transfers: Vec::new(),
            lease_ids,
            lessor,
            incoming_snapshot: None,
            snapshot_index,
            ahead_term: None,
            synced_term_vote: (on_disk.term, on_disk.vote),
            lazy_hard_state: None,
            bytes_since_snapshot: 0,
            batch_started: Instant::now(),
            appended: VecDeque::new(),
            sole_voter_term: 0,
            commit_notices: CommitNotices::default(),
        }
    }

    /// Before clients are served: addresses the peers, and a one-member cluster elects
    /// itself at once (no election timeout to wait; etcd fast-forwards its ticks likewise),
    /// so that its first client request finds a leader.
    pub fn start(&mut self) {
        self.update_peers();
        let voters = &self.raft.conf_state().voters;
        if voters.len() == 1 && voters[0] == self.shared.member_id {
            self.raft.campaign();
            self.work_off_readies();
        }
        self.publish_state();
    }

    /// Runs until every source of events is gone (the process is stopping).
    pub async fn run(
        mut self,
        proposals: mpsc::Receiver<Proposal>,
        events: mpsc::UnboundedReceiver<Event>,
        incoming: mpsc::UnboundedReceiver<Incoming>,
    ) {
        let mut merged = futures::stream::select(
            proposals.map(Event::Proposal),
            futures::stream::select(events, incoming.map(Event::Peer)),
        );
        loop {
            let Some(event) = merged.next().await else { return };
            self.handle(event);
            for _ in 0..EVENTS_PER_TURN_MAX {
                match merged.next().now_or_never() {
                    Some(Some(event)) => self.handle(event),
                    _ => break,
                }
            }
            self.flush_batch();
            self.flush_reads();
            self.work_off_readies();
            // A role change need not produce a Ready (a leader stepping down for lack of a
            // quorum): publish the state every turn.
            self.publish_state();
            glommio::yield_if_needed().await;
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Proposal(proposal) => self.take_proposal(proposal),
            Event::Peer(Incoming::Messages(messages)) => {
                for message in messages {
                    self.step(message);
                }
            }
            Event::Peer(Incoming::Unreachable(id)) => self.raft.report_unreachable(id),
            Event::Peer(Incoming::Removed(from)) => {
                if self.shared.members.read().unwrap().iter().any(|m| m.id == from) {
                    eprintln!("ringd: member {from:x} says this member was removed from the cluster");
                    let _ = self.apply.unbounded_send(ApplyWork::Removed);
                }
            }
            Event::Peer(Incoming::ClusterId(id)) => {
                eprintln!("ringd: joined cluster {id:x}");
                self.shared.set_cluster_id(id);
            }
            Event::Tick => {
                self.raft.tick();
                self.ticks += 1;
                if self.ticks.is_multiple_of(WAITER_SWEEP_TICKS) {
                    self.waiters.borrow_mut().sweep();
                }
                self.maybe_publish_attributes();
                self.lease_tick();
                self.promote_caught_up_voters();
            }
            Event::Persisted(number) => self.persisted(number),
            Event::MembersChanged => self.update_peers(),
            Event::Checkpointed(index) => self.maybe_snapshot(index),
            Event::SnapshotSent(to, delivered) => self.raft.report_snapshot(to, delivered),
            Event::SendCommitNotices => self.transport.send(self.commit_notices.take()),
            Event::Peer(Incoming::Snapshot { message, path }) => {
                let index = message.snapshot.as_ref().and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.index);
                self.raft.step(message);
                // Keep the db of the snapshot Raft will hand over to install (the next Ready),
                // which is not this one if Raft refused it: a second snapshot received in the
                // same turn must not replace the file of one already accepted.
                let accepted = self.raft.snapshot_to_install_index() == Some(index);
                let dropped = if accepted || self.incoming_snapshot.is_none() {
                    self.incoming_snapshot.replace((index, path)).map(|(_, previous)| previous)
                } else {
                    Some(path)
                };
                if let Some(dropped) = dropped {
                    let _ = std::fs::remove_file(dropped);
                }
            }
        }
    }

    fn take_proposal(&mut self, proposal: Proposal) {
        let Proposal { command, reply, created } = proposal;
        self.shared.latency.record_since(0, Stage::Queue, created);
        let op = match command {
            Command::Put(request) => entry::Op::Put(request),
            Command::DeleteRange(request) => entry::Op::DeleteRange(request),
            Command::Txn(request) => entry::Op::Txn(request),
            Command::Compact(request) => entry::Op::Compact(request),
            Command::Alarm(request) => entry::Op::Alarm(request),
            Command::ReadBarrier => {
                self.reads.push(reply);
                return;
            }
            Command::ConfChange(change, member) => {
                self.propose_conf_change(change, member, reply);
                return;
            }
            Command::MoveLeader(target) => {
                self.move_leader(target, reply);
                return;
            }
            Command::LeaseGrant(mut request) => {
                if request.id == 0 {
                    request.id = self.lease_ids.next_id().0;
                }
                entry::Op::LeaseGrant(request)
            }
            Command::LeaseRevoke(request) => entry::Op::LeaseRevoke(request),
            Command::LeaseRenew(id) => {
                let _ = reply.send(self.renew(id));
                return;
            }
            Command::LeaseTimeToLive(request) => {
                let _ = reply.send(self.time_to_live(request));
                return;
            }
            Command::LeaseLeases => {
                let leases = self.lessor.borrow().leases().map(|id| pb::LeaseStatus { id: id.0 }).collect();
                let header = Some(self.shared.header(self.shared.watch.published()));
                let _ = reply.send(Ok(Outcome::LeaseLeases(pb::LeaseLeasesResponse { header, leases })));
                return;
            }
            local @ (Command::Defragment | Command::Hash | Command::HashKv(_)) => {
                let _ = self.apply.unbounded_send(ApplyWork::Local(Proposal { command: local, reply, created }));
                return;
            }
        };
        let id = self.next_id();
        self.waiters.borrow_mut().insert(id, reply);
        self.push_request(entry::Request { id, op: Some(op) });
    }

    fn propose_conf_change(
        &mut self,
        mut change: ConfChange,
        member: crate::api::pb::etcdserverpb::Member,
        reply: Reply,
    ) {
        let id = self.next_id();
        // MemberPromote passes the table's learner, MemberAdd a voter's AddNode as no learner.
        let promote = change.change_type == ConfChangeType::ConfChangeAddNode as i32 && member.is_learner;
        let requester = self.shared.member_id;
        change.context =
            ConfContext { requester, request_id: id, member: Some(member), as_voter: false, promote }.encode_to_vec();
        if let Err(status) = self.may_reconfigure(&change).and_then(|()| self.check_conf_change(&change)) {
            let _ = reply.send(Err(status));
            return;
        }
        self.waiters.borrow_mut().insert(id, reply);
        self.propose_membership(change, Some(id));
    }

    /// The leader, before it proposes a change: a new voter whose addition could not commit
    /// without it starts as a learner that the member table lists as a voter
    /// (`ConfContext::as_voter`). That is the second voter of a lone voter, or any voter
    /// while fewer voters are connected to the leader than the quorum it would make. As a
    /// voter at once it would be needed to commit its own addition (Raft's configuration
    /// takes effect when appended), which it cannot before it has joined, nor join before.
    fn stage_added_voter(&self, change: &mut ConfChange) {
        let conf = self.raft.conf_state();
        let adds_voter = change.change_type == ConfChangeType::ConfChangeAddNode as i32
            && !conf.voters.contains(&change.node_id)
            && !conf.learners.contains(&change.node_id);
        if !adds_voter {
            return;
        }
        let me = self.shared.member_id;
        let connected = conf.voters.iter().filter(|&&id| id == me || self.transport.active_since(id).is_some()).count();
        let quorum_after = super::reconfig::quorum(conf.voters.len() + 1);
        if connected < quorum_after {
            let mut context = ConfContext::decode(change.context.as_slice()).unwrap_or_default();
            context.as_voter = true;
            change.context = context.encode_to_vec();
            change.change_type = ConfChangeType::ConfChangeAddLearnerNode as i32;
        }
    }

    /// Proposes a membership change (or forwards it to the leader); a waiter `id` is failed
    /// if that cannot be done. Returns whether it was proposed or forwarded.
    fn propose_membership(&mut self, change: ConfChange, id: Option<u64>) -> bool {
        self.flush_batch();
        match self.propose_or_forward(EntryType::EntryConfChange, change.encode_to_vec().into()) {
            Ok(()) => true,
            Err(status) => {
                if let Some(id) = id {
                    self.waiters.borrow_mut().fail_all(std::iter::once(id), &status);
                }
                false
            }
        }
    }

    /// The leader, each tick: a voter added through a learner stage (a learner in Raft, a
    /// voter in the member table) is promoted once its log is as far as MemberPromote asks
    /// and the leader has heard from it lately.
    /// A proposal refused now (another change pending) is made again at a later tick.
    fn promote_caught_up_voters(&mut self) {
        if self.raft.role() != Role::Leader || self.raft.conf_state().learners.is_empty() {
            return;
        }
        let member = {
            let members = self.shared.members.read().unwrap();
            let learners = &self.raft.conf_state().learners;
            let ready = |id: u64| self.caught_up(id) && self.raft.progress(id).is_some_and(|p| p.recent_active);
            members.iter().find(|m| !m.is_learner && learners.contains(&m.id) && ready(m.id)).cloned()
        };
        let Some(member) = member else { return };
        let id = member.id;
        let context = ConfContext {
            requester: self.shared.member_id,
            request_id: self.next_id(),
            member: Some(member),
            as_voter: false,
            promote: true,
        };
        if self.propose_membership(context.change(ConfChangeType::ConfChangeAddNode, id), None) {
            eprintln!("ringd: member {id:x} has caught up: promoting it to the voter it was added as");
        }
    }

    /// What a client's change asks for, by its type and context (a promotion is an AddNode
    /// the context marks, as etcd's `IsPromote`), and the member it names.
    fn change_kind(change: &ConfChange) -> Result<(reconfig::Change, pb::Member), Status> {
        let context = ConfContext::decode(change.context.as_slice()).unwrap_or_default();
        let kind = match ConfChangeType::try_from(change.change_type) {
            Ok(ConfChangeType::ConfChangeAddNode) if context.promote => reconfig::Change::Promote,
            Ok(ConfChangeType::ConfChangeAddNode) => reconfig::Change::Add { learner: false },
            Ok(ConfChangeType::ConfChangeAddLearnerNode) => reconfig::Change::Add { learner: true },
            Ok(ConfChangeType::ConfChangeRemoveNode) => reconfig::Change::Remove,
            Ok(ConfChangeType::ConfChangeUpdateNode) => reconfig::Change::Update,
            Err(_) => {
                return Err(Status::with_message(errors::Code::InvalidArgument, "unknown conf change".to_owned()))
            }
        };
        let member = context.member.unwrap_or_default();
        Ok((kind, pb::Member { id: change.node_id, ..member }))
    }

    /// etcd's readiness rule for a promotion: the learner's log within 10% of the leader's.
    fn caught_up(&self, learner: u64) -> bool {
        let leader_match = self.raft.log().last_index();
        let learner_match = self.raft.progress(learner).map_or(0, |p| p.matched);
        learner_match as f64 >= 0.9 * leader_match as f64
    }

    /// The strict reconfiguration check (`reconfig`) of an added or removed member, by the
    /// member asked, as etcd's; a promotion is the leader's to check (`check_conf_change`).
    fn may_reconfigure(&self, change: &ConfChange) -> Result<(), Status> {
        if !self.shared.config.strict_reconfig_check {
            return Ok(());
        }
        match Self::change_kind(change)?.0 {
            reconfig::Change::Add { learner } => self.reconfig_view(|view| view.may_add(learner)),
            reconfig::Change::Remove => self.reconfig_view(|view| view.may_remove(change.node_id)),
            reconfig::Change::Update | reconfig::Change::Promote => Ok(()),
        }
    }

    fn reconfig_view<T>(&self, check: impl FnOnce(&super::reconfig::View) -> T) -> T {
        let members = self.shared.members.read().unwrap();
        let connected_since = |id| self.transport.active_since(id);
        check(&super::reconfig::View {
            members: &members,
            local: self.shared.member_id,
            connected_since: &connected_since,
            now: Instant::now(),
        })
    }

    /// The leader's checks of a change, made before it proposes it (a follower passes the
    /// changes its clients ask for to the leader, which checks them in `step`): against the
    /// member table (`reconfig::validate`: IDs, peer URLs, the learner limit), and for a
    /// promotion the learner's log within 10% of the leader's (etcd's rule) and, with the
    /// strict reconfiguration check, a started quorum of the voters to be.
    ///
    /// etcd makes the table's checks when it applies a change. Here Raft's configuration
    /// takes effect when a change is appended, so the leader, the only member that appends
    /// new entries, makes them when it proposes, against a table that holds every change in
    /// its log: until the apply task has applied the last one, the next is refused as Raft
    /// refuses one while another is uncommitted. One change at a time, each checked against
    /// all before it, so two changes asked for at once on different members cannot both
    /// pass (two learners, one peer URL twice).
    fn check_conf_change(&self, change: &ConfChange) -> Result<(), Status> {
        if self.raft.role() != Role::Leader {
            return Ok(());
        }
        if self.raft.last_conf_change_index() > self.shared.applied_index.load(Ordering::Acquire) {
            return Err(errors::UNHEALTHY_CLUSTER);
        }
        let (kind, member) = Self::change_kind(change)?;
        reconfig::validate(&self.shared.members.read().unwrap(), kind, &member)?;
        if kind == reconfig::Change::Promote {
            if !self.caught_up(change.node_id) {
                return Err(errors::LEARNER_NOT_READY);
            }
            if self.shared.config.strict_reconfig_check {
                return self.reconfig_view(|view| view.may_promote());
            }
        }
        Ok(())
    }

    /// A follower's change the leader refused (`check_conf_change`, or Raft's own refusal):
    /// the refusal goes through Raft as an entry of the follower's, whose client waits for
    /// it. Returns whether it was proposed; if not (no longer the leader), the follower's
    /// client times out, as when the change itself is lost on its way.
    fn refuse_forwarded(&mut self, change: &ConfChange, status: &Status) -> bool {
        let context = ConfContext::decode(change.context.as_slice()).unwrap_or_default();
        if context.requester == crate::raft::NONE {
            return false;
        }
        let refusal = entry::Refusal { code: status.code as u32, message: status.message.to_string() };
        let request = entry::Request { id: context.request_id, op: Some(entry::Op::Refused(refusal)) };
        let data = Batch { member_id: context.requester, requests: vec![request] }.encode_to_vec();
        self.flush_batch();
        self.propose_or_forward(EntryType::EntryNormal, data.into()).is_ok()
    }

    fn move_leader(&mut self, target: u64, reply: Reply) {
        if self.raft.role() != Role::Leader {
            let _ = reply.send(Err(errors::NOT_LEADER));
        } else if target == self.shared.member_id {
            let _ = reply.send(Ok(super::writer::Outcome::LeaderMoved));
        } else if !self.raft.is_voter(target) {
            let _ = reply.send(Err(errors::BAD_LEADER_TRANSFEREE));
        } else {
            self.raft.transfer_leader(target);
            self.transfers.push((target, reply));
        }
    }

    /// A keepalive: only the leader's lessor knows expiries (a follower's clients get
    /// `etcdserver: not leader`); a lease that is gone or expiring answers TTL 0, as etcd's.
    fn renew(&mut self, id: i64) -> Result<Outcome, Status> {
        let now = self.shared.started.elapsed();
        let renewed = self.lessor.borrow_mut().renew(LeaseId(id), now);
        let ttl = match renewed {
            Ok(renewed) => {
                if renewed.clear_checkpoint {
                    let checkpoints =
                        entry::LeaseCheckpoints { checkpoints: vec![entry::LeaseCheckpoint { id, remaining_ttl: 0 }] };
                    let request_id = self.next_id();
                    self.push_request(entry::Request {
                        id: request_id,
                        op: Some(entry::Op::LeaseCheckpoints(checkpoints)),
                    });
                }
                renewed.ttl_seconds
            }
            Err(RenewError::NotPrimary) => return Err(errors::NOT_LEADER),
            Err(RenewError::NotFound) | Err(RenewError::Expired) => 0,
        };
        let header = Some(self.shared.header(self.shared.watch.published()));
        Ok(Outcome::LeaseKeepAlive(pb::LeaseKeepAliveResponse { header, id, ttl }))
    }

    fn time_to_live(&self, request: pb::LeaseTimeToLiveRequest) -> Result<Outcome, Status> {
        let now = self.shared.started.elapsed();
        let header = Some(self.shared.header(self.shared.watch.published()));
        let response = match self.lessor.borrow().time_to_live(LeaseId(request.id), now, request.keys) {
            Ok(ttl) => pb::LeaseTimeToLiveResponse {
                header,
                id: request.id,
                ttl: ttl.ttl_seconds,
                granted_ttl: ttl.granted_ttl_seconds,
                keys: ttl.keys,
            },
            Err(TimeToLiveError::NotFound) => {
                pb::LeaseTimeToLiveResponse { header, id: request.id, ttl: -1, granted_ttl: 0, keys: Vec::new() }
            }
            Err(TimeToLiveError::NotPrimary) => return Err(errors::NOT_LEADER),
        };
        Ok(Outcome::LeaseTimeToLive(response))
    }

    /// The leader's lessor, each tick: revokes of expired leases and checkpoints of remaining
    /// TTLs go through Raft like client requests (nobody waits for them).
    fn lease_tick(&mut self) {
        if self.raft.role() != Role::Leader {
            return;
        }
        let now = self.shared.started.elapsed();
        let expired = self.lessor.borrow_mut().expired(now);
        for id in expired {
            let request_id = self.next_id();
            let revoke = pb::LeaseRevokeRequest { id: id.0 };
            self.push_request(entry::Request { id: request_id, op: Some(entry::Op::LeaseRevoke(revoke)) });
        }
        loop {
            let due = self.lessor.borrow_mut().checkpoints_due(now);
            if due.is_empty() {
                break;
            }
            let full = due.len() >= crate::lease::CHECKPOINT_BATCH_MAX;
            let checkpoints = due
                .into_iter()
                .map(|c| entry::LeaseCheckpoint { id: c.id.0, remaining_ttl: c.remaining_ttl_seconds })
                .collect();
            let request_id = self.next_id();
            self.push_request(entry::Request {
                id: request_id,
                op: Some(entry::Op::LeaseCheckpoints(entry::LeaseCheckpoints { checkpoints })),
            });
            if !full {
                break;
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_request_id = self.next_request_id.wrapping_add(1);
        self.next_request_id
    }

    fn push_request(&mut self, request: entry::Request) {
        if self.batch.is_empty() {
            self.batch_started = Instant::now();
        }
        self.batch_bytes += request.encoded_len();
        self.batch.push(request);
        if self.batch_bytes >= ENTRY_BATCH_BYTES_MAX {
            self.flush_batch();
        }
    }

    /// Proposes every request taken since the last flush as one entry (or forwards it to the
    /// leader); on refusal, the waiting clients get the reason at once.
    fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let requests = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.shared.latency.record_since(0, Stage::Batch, self.batch_started);
        let ids: Vec<u64> = requests.iter().map(|r| r.id).collect();
        let data = Batch { member_id: self.shared.member_id, requests }.encode_to_vec();
        if let Err(status) = self.propose_or_forward(EntryType::EntryNormal, data.into()) {
            self.waiters.borrow_mut().fail_all(ids.into_iter(), &status);
        }
    }

    fn propose_or_forward(&mut self, entry_type: EntryType, data: bytes::Bytes) -> Result<(), Status> {
        if self.raft.role() == Role::Leader {
            let result = match entry_type {
                EntryType::EntryConfChange => match ConfChange::decode(&data[..]) {
                    Ok(mut change) => {
                        self.stage_added_voter(&mut change);
                        // Reads go through ReadIndex again before a second voter can exist.
                        self.sole_voter_term = 0;
                        self.shared.sole_voter_reads.store(false, Ordering::Release);
                        self.raft.propose_conf_change(change).map(|_| ())
                    }
                    Err(_) => {
                        return Err(Status::with_message(errors::Code::Internal, "undecodable conf change".to_owned()))
                    }
                },
                _ => self.raft.propose(data).map(|_| ()),
            };
            return result.map_err(|error| propose_status(&error));
        }
        let leader = self.raft.leader_id();
        if leader == crate::raft::NONE {
            return Err(errors::NO_LEADER);
        }
        let entry = Entry { entry_type: entry_type as i32, data, ..Default::default() };
        self.transport.send(vec![Message {
            msg_type: MessageType::MsgProp as i32,
            to: leader,
            from: self.shared.member_id,
            entries: vec![entry],
            ..Default::default()
        }]);
        Ok(())
    }

    /// One ReadIndex round for every linearizable read taken since the last flush.
    fn flush_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let replies = std::mem::take(&mut self.reads);
        let round = self.next_read_round;
        self.next_read_round += 1;
        match self.raft.read_index(round.to_le_bytes().to_vec()) {
            Ok(()) => {
                self.read_rounds.insert(round, replies);
            }
            Err(error) => {
                let status = propose_status(&error);
                for reply in replies {
                    let _ = reply.send(Err(status.clone()));
                }
            }
        }
    }

    fn step(&mut self, message: Message) {
        if message.msg_type == MessageType::MsgProp as i32 {
            // A follower's clients' requests: propose them here, or pass them on to the
            // leader we know of (dropped otherwise: the clients time out, as with etcd).
            for entry in message.entries {
                let entry_type = EntryType::try_from(entry.entry_type).unwrap_or(EntryType::EntryNormal);
                if self.raft.role() == Role::Leader {
                    let proposed = if entry_type == EntryType::EntryConfChange {
                        let Ok(change) = ConfChange::decode(&entry.data[..]) else { continue };
                        let checked = self.check_conf_change(&change);
                        match checked.and_then(|()| self.propose_or_forward(entry_type, entry.data)) {
                            Ok(()) => true,
                            Err(status) => self.refuse_forwarded(&change, &status),
                        }
                    } else {
                        self.propose_or_forward(entry_type, entry.data).is_ok()
                    };
                    if proposed {
                        self.commit_notices.forwarded(message.from, self.raft.log().last_index());
                    }
                } else {
                    let leader = self.raft.leader_id();
                    if leader != crate::raft::NONE && leader != message.from {
                        let _ = self.propose_or_forward(entry_type, entry.data);
                    }
                }
            }
            return;
        }
        self.raft.step(message);
    }

    fn persisted(&mut self, number: u64) {
        self.raft.on_persist_ready(number);
        for pending in self.pending_persists.iter_mut() {
            if pending.number <= number {
                pending.durable = true;
            }
        }
        while self.pending_persists.front().is_some_and(|p| p.durable) {
            let pending = self.pending_persists.pop_front().expect("front exists");
            self.send(pending.messages);
        }
    }

    fn work_off_readies(&mut self) {
        // Before any Ready's committed entries: the role and term change only while Raft
        // steps (`handle`), never between the Readies taken here.
        self.abandon_ahead_if_deposed();
        while self.raft.has_ready() {
            let mut ready = self.raft.ready();
            let messages = std::mem::take(&mut ready.messages);
            self.send(messages);
            if let Some(snapshot) = &ready.snapshot {
                self.install_snapshot(snapshot);
            }
            // Only entries, a snapshot, or a new term or vote must be on disk before Raft goes
            // on. A hard state that only moved the commit index rides along with the next
            // append instead of costing an fdatasync of its own (etcd's MustSync rule): a
            // commit index lost in a crash is learnt again from the leader.
            let term_or_vote_changed =
                ready.hard_state.as_ref().is_some_and(|hs| (hs.term, hs.vote) != self.synced_term_vote);
            let must_sync = !ready.entries.is_empty() || ready.snapshot.is_some() || term_or_vote_changed;
            if !must_sync {
                if let Some(hard_state) = ready.hard_state.take() {
                    self.lazy_hard_state = Some(hard_state);
                }
            }
            if must_sync {
                let hard_state = ready.hard_state.or_else(|| self.lazy_hard_state.take());
                self.lazy_hard_state = None;
                if let Some(hard_state) = &hard_state {
                    self.synced_term_vote = (hard_state.term, hard_state.vote);
                }
                let handed = Instant::now();
                if let Some(last) = ready.entries.last() {
                    self.appended.push_back((last.index, handed));
                }
                self.bytes_since_snapshot += ready.entries.iter().map(|e| e.data.len() as u64).sum::<u64>();
                let durable = self.wal.append(&ready.entries, hard_state);
                let events = self.events.clone();
                let number = ready.number;
                let shared = self.shared.clone();
                glommio::spawn_local(async move {
                    match durable.await {
                        Ok(()) => {
                            shared.latency.record_since(0, Stage::WalSync, handed);
                            let _ = events.unbounded_send(Event::Persisted(number));
                        }
                        Err(error) => {
                            eprintln!("ringd: writing the WAL failed: {error}; stopping");
                            std::process::exit(1);
                        }
                    }
                })
                .detach();
                self.pending_persists.push_back(PendingPersist {
                    number,
                    durable: false,
                    messages: ready.messages_after_persist,
                });
            } else if self.pending_persists.is_empty() {
                self.send(ready.messages_after_persist);
            } else {
                self.pending_persists.push_back(PendingPersist {
                    number: ready.number,
                    durable: true,
                    messages: ready.messages_after_persist,
                });
            }
            if let Some(last) = ready.committed_entries.last() {
                while let Some(&(index, handed)) = self.appended.front() {
                    if index > last.index {
                        break;
                    }
                    self.shared.latency.record_since(0, Stage::Commit, handed);
                    self.appended.pop_front();
                }
            }
            if !ready.committed_entries.is_empty() {
                let _ = self.apply.unbounded_send(ApplyWork::Entries(ready.committed_entries));
            }
            if self.applies_ahead(&ready.entries) {
                self.ahead_term = Some(self.raft.term());
                let _ = self.apply.unbounded_send(ApplyWork::Ahead(std::mem::take(&mut ready.entries)));
            }
            for read in ready.read_states {
                let round = read.request_context.as_slice().try_into().map(u64::from_le_bytes).unwrap_or(0);
                if let Some(replies) = self.read_rounds.remove(&round) {
                    let _ = self.apply.unbounded_send(ApplyWork::Reads(read.index, replies));
                }
            }
            self.publish_state();
        }
    }

    /// Whether the apply task may apply `entries`, just handed to the WAL, ahead of their
    /// commit (`ApplyWork::Ahead`): this member leads and none of them changes the
    /// configuration. A lone voter's commit once its WAL write is durable; a cluster's once
    /// a quorum has them, meanwhile the apply task writes their pages and holds them back
    /// from readers, watchers, the lease table and their clients until they arrive
    /// committed, and drops them if anything else does (`Ahead::apply` in writer.rs).
    /// A cluster's leader does so only with nothing before them still to commit: under load
    /// its entries commit a group at a time, each group applied in one store commit, and
    /// one applied ahead of its group would cost a store commit of its own.
    fn applies_ahead(&self, entries: &[Entry]) -> bool {
        let Some(first) = entries.first() else { return false };
        self.raft.role() == Role::Leader
            && (self.raft.conf_state().voters.len() == 1 || first.index == self.raft.log().committed + 1)
            && entries.iter().all(|entry| entry.entry_type == EntryType::EntryNormal as i32)
    }

    /// A leader that stops leading (a new term, or stepping down for lack of a quorum,
    /// which need not make a Ready) cannot tell whether the entries it handed to apply
    /// ahead will commit: the apply task drops them (`ApplyWork::Abandon`) and applies
    /// whatever commits at their indexes when it does.
    fn abandon_ahead_if_deposed(&mut self) {
        if let Some(term) = self.ahead_term {
            if self.raft.role() != Role::Leader || self.raft.term() != term {
                self.ahead_term = None;
                let _ = self.apply.unbounded_send(ApplyWork::Abandon);
            }
        }
    }

    /// Sends messages to peers; a snapshot goes on a stream of its own, with the db.
    fn send(&mut self, mut messages: Vec<Message>) {
        if messages.iter().any(|m| m.msg_type == MessageType::MsgSnap as i32) {
            let snapshots: Vec<Message> =
                messages.extract_if(.., |m| m.msg_type == MessageType::MsgSnap as i32).collect();
            for message in snapshots {
                self.send_snapshot(message);
            }
        }
        let leading_term = (self.raft.role() == Role::Leader).then(|| self.raft.term());
        self.commit_notices.hold(&mut messages, leading_term);
        let timer = &self.commit_notices.timer;
        if timer.holding.get() && !timer.armed.get() {
            timer.armed.set(true);
            let timer = timer.clone();
            let events = self.events.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(COMMIT_NOTICE_HOLD).await;
                timer.armed.set(false);
                // Nothing to send if later appends carried everything held.
                if timer.holding.get() {
                    let _ = events.unbounded_send(Event::SendCommitNotices);
                }
            })
            .detach();
        }
        self.transport.send(messages);
    }

    /// Streams the db (a consistent image, at or after the snapshot's index: entries the
    /// follower then receives at or below the db's applied index are skipped when applied).
    fn send_snapshot(&mut self, message: Message) {
        let to = message.to;
        let image = self.shared.image();
        let transport = self.transport.clone();
        let events = self.events.clone();
        glommio::spawn_local(async move {
            let delivered = match image.await {
                Ok(image) => transport.send_snapshot(message, Box::new(ImageSource(image))).await,
                Err(error) => {
                    eprintln!("ringd: cannot take an image of the db for member {to:x}: {error}");
                    false
                }
            };
            let _ = events.unbounded_send(Event::SnapshotSent(to, delivered));
        })
        .detach();
    }

    /// A follower's Ready holds the leader's snapshot: the WAL records it (before the
    /// Ready's entries) and the apply task replaces its db with the received one.
    fn install_snapshot(&mut self, snapshot: &crate::raft::pb::Snapshot) {
        let metadata = snapshot.metadata.clone().unwrap_or_default();
        let path = match self.incoming_snapshot.take() {
            Some((index, path)) if index == metadata.index => path,
            _ => {
                eprintln!(
                    "ringd: Raft installs a snapshot at index {} whose db was not received; stopping",
                    metadata.index
                );
                std::process::exit(1);
            }
        };
        // Raft hands a snapshot to install only when its log did not hold the snapshot's
        // entry, and then drops its whole log: the WAL's entries above the index go too.
        let marker = crate::wal::SnapshotMarker {
            index: metadata.index,
            term: metadata.term,
            conf_state: metadata.conf_state.clone(),
            replaces_log: true,
        };
        let durable = self.wal.save_snapshot_marker(marker);
        glommio::spawn_local(async move {
            if let Err(error) = durable.await {
                eprintln!("ringd: writing the WAL failed: {error}; stopping");
                std::process::exit(1);
            }
        })
        .detach();
        self.snapshot_index = metadata.index;
        self.bytes_since_snapshot = 0;
        let _ = self.apply.unbounded_send(ApplyWork::Install { index: metadata.index, path });
    }

    /// After a durable store checkpoint through `index`: every --snapshot-count entries (or
    /// `SNAPSHOT_WAL_BYTES` of them), a snapshot there; the log (in memory and in the WAL) is compacted up to a margin of
    /// entries below it (--experimental-snapshot-catchup-entries, etcd's 5000), which slow
    /// followers can still fetch without a snapshot.
    fn maybe_snapshot(&mut self, index: u64) {
        let due = index >= self.snapshot_index + self.shared.config.snapshot_count
            || self.bytes_since_snapshot >= SNAPSHOT_WAL_BYTES;
        // The store may be ahead of what Raft has applied: after a leader's snapshot is
        // installed (its db can be newer than the snapshot's index) or, after a restart, past
        // a commit index the WAL holds only lazily. Raft snapshots only what it has applied.
        if !due || index > self.raft.log().applied {
            return;
        }
        if index <= self.raft.log().snapshot_index() {
            return;
        }
        let snapshot = self.raft.create_snapshot(index, Vec::new());
        let metadata = snapshot.metadata.unwrap_or_default();
        let compact_to = self.catch_up_floor(index);
        self.raft.compact_log(compact_to);
        self.snapshot_index = index;
        self.bytes_since_snapshot = 0;
        let marker = crate::wal::SnapshotMarker {
            index,
            term: metadata.term,
            conf_state: metadata.conf_state.clone(),
            replaces_log: false,
        };
        let durable = self.wal.save_snapshot_marker(marker);
        let wal = self.wal.clone();
        glommio::spawn_local(async move {
            if let Err(error) = durable.await {
                eprintln!("ringd: writing the WAL failed: {error}; stopping");
                std::process::exit(1);
            }
            if let Err(error) = wal.release_below(compact_to).await {
                eprintln!("ringd: releasing WAL segments failed: {error}; stopping");
                std::process::exit(1);
            }
        })
        .detach();
    }

    /// Where the log may be compacted after a snapshot at `index`: keep up to
    /// --experimental-snapshot-catchup-entries entries below it, and at most
    /// `SNAPSHOT_CATCH_UP_BYTES` of them (an entry carries many requests).
    fn catch_up_floor(&self, index: u64) -> u64 {
        let log = self.raft.log();
        let floor = index.saturating_sub(self.shared.config.snapshot_catchup_entries).max(log.snapshot_index());
        let mut bytes = 0u64;
        let mut at = index;
        while at > floor {
            bytes += log.entry(at).map_or(0, |entry| entry.data.len() as u64);
            if bytes > SNAPSHOT_CATCH_UP_BYTES {
                return at;
            }
            at -= 1;
        }
        floor
    }

    /// What Status, headers and the no-leader check read on every core.
    fn publish_state(&mut self) {
        let shared = &self.shared;
        let leader = self.raft.leader_id();
        let previous_leader = shared.leader_id.swap(leader, Ordering::AcqRel);
        let leading = self.raft.role() == Role::Leader;
        let sole_voter = leading && self.raft.conf_state().voters == [shared.member_id];
        if !sole_voter {
            self.sole_voter_term = 0;
        } else if self.sole_voter_term != self.raft.term() {
            // Once an entry of this term is committed and applied, so is every entry of the
            // terms before (a restart replays them); from then on each write is answered
            // after it is applied.
            let applied = shared.applied_index.load(Ordering::Acquire);
            if self.raft.committed_in_current_term() && applied >= self.raft.log().committed {
                self.sole_voter_term = self.raft.term();
            }
        }
        // Every core reads the flag on each linearizable read: write its line only on a change.
        let sole_voter_reads = sole_voter && self.sole_voter_term == self.raft.term();
        if shared.sole_voter_reads.load(Ordering::Relaxed) != sole_voter_reads {
            shared.sole_voter_reads.store(sole_voter_reads, Ordering::Release);
        }
        if leading != self.lessor.borrow().is_primary() {
            // etcd promotes its lessor when it starts leading (every lease gets its remaining
            // TTL plus an election timeout) and demotes it when it stops.
            if leading {
                self.lessor.borrow_mut().promote(shared.started.elapsed());
            } else {
                self.lessor.borrow_mut().demote();
            }
        }
        if !self.transfers.is_empty() {
            let moved = |target: &u64| *target == leader;
            for (_, reply) in self.transfers.extract_if(.., |(target, _)| moved(target)) {
                let _ = reply.send(Ok(super::writer::Outcome::LeaderMoved));
            }
            self.transfers.retain(|(_, reply)| !reply.is_canceled());
        }
        let learner = !self.raft.conf_state().voters.contains(&shared.member_id);
        if shared.raft_learner.load(Ordering::Relaxed) != learner {
            shared.raft_learner.store(learner, Ordering::Release);
        }
        shared.raft_term.store(self.raft.term(), Ordering::Release);
        shared.raft_index.store(self.raft.log().last_index(), Ordering::Release);
        shared.commit_index.store(self.raft.log().committed, Ordering::Release);
        if leader != previous_leader && leader != crate::raft::NONE {
            shared.counts.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        if previous_leader != leader && leader == crate::raft::NONE {
            // Reads waiting for a round of a leader that is gone would only time out.
            let status = errors::NO_LEADER;
            for (_, replies) in self.read_rounds.drain() {
                for reply in replies {
                    let _ = reply.send(Err(status.clone()));
                }
            }
        }
    }

    /// Once a leader is known, publishes this member's name and client URLs through Raft
    /// (etcd's publish), so that every member's MemberList shows them.
    fn maybe_publish_attributes(&mut self) {
        if self.attributes_published || self.raft.leader_id() == crate::raft::NONE {
            return;
        }
        let config = &self.shared.config;
        let member = crate::api::pb::etcdserverpb::Member {
            id: self.shared.member_id,
            name: config.name.clone(),
            peer_ur_ls: config.peer_urls.clone(),
            client_ur_ls: config.advertise_client_urls.clone(),
            is_learner: false,
        };
        let id = self.next_id();
        self.push_request(entry::Request { id, op: Some(entry::Op::Attributes(member)) });
        self.attributes_published = true;
    }

    /// Points the transport at every member's first peer URL; a peer the membership dropped
    /// is told so and forgotten.
    fn update_peers(&mut self) {
        let members = self.shared.members.read().unwrap().clone();
        for id in self.transport.peer_ids() {
            if !members.iter().any(|m| m.id == id) {
                self.transport.remove_peer(id);
                self.commit_notices.forget(id);
            }
        }
        for member in &members {
            if member.id == self.shared.member_id {
                continue;
            }
            match member.peer_ur_ls.first().and_then(|url| crate::transport::resolve(url)) {
                Some(address) => self.transport.set_peer(member.id, address),
                None => eprintln!("ringd: member {:x} has no usable peer URL {:?}", member.id, member.peer_ur_ls),
            }
        }
    }
}

fn propose_status(error: &ProposeError) -> Status {
    match error {
        ProposeError::NotLeader { leader } if *leader == crate::raft::NONE => errors::NO_LEADER,
        ProposeError::NotLeader { .. } | ProposeError::TransferInProgress => errors::LEADER_CHANGED,
        ProposeError::TooManyUncommitted => errors::TOO_MANY_REQUESTS,
        ProposeError::ConfChangePending => errors::UNHEALTHY_CLUSTER,
        ProposeError::InvalidConfChange => errors::NOT_ENOUGH_STARTED_MEMBERS,
    }
}

/// The db image a snapshot stream sends.
struct ImageSource(crate::mvcc::Image);

impl crate::transport::SnapshotSource for ImageSource {
    fn len_bytes(&self) -> u64 {
        self.0.len_bytes()
    }

    fn read_chunk(&self, offset: u64, max_bytes: usize, out: &mut Vec<u8>) {
        self.0.read_chunk(offset, max_bytes, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM: Option<u64> = Some(2);

    /// An append to `to` after index 100 (so that its commit is not capped by its entries).
    fn append(to: u64, commit: u64, entries: usize) -> Message {
        Message {
            msg_type: MessageType::MsgApp as i32,
            to,
            index: 100,
            commit,
            entries: (0..entries).map(|i| Entry { index: 101 + i as u64, ..Default::default() }).collect(),
            ..Default::default()
        }
    }

    fn heartbeat(to: u64, commit: u64) -> Message {
        Message { msg_type: MessageType::MsgHeartbeat as i32, to, commit, ..Default::default() }
    }

    fn sent(messages: &[Message]) -> Vec<(u64, i32, u64, usize)> {
        messages.iter().map(|m| (m.to, m.msg_type, m.commit, m.entries.len())).collect()
    }

    const APP: i32 = MessageType::MsgApp as i32;

    #[test]
    fn a_notice_is_held_and_the_rest_goes_out_in_order() {
        let mut notices = CommitNotices::default();
        let mut messages = vec![heartbeat(2, 5), append(2, 7, 0), append(3, 7, 1), heartbeat(3, 7)];
        notices.hold(&mut messages, TERM);
        let heartbeat_type = MessageType::MsgHeartbeat as i32;
        assert_eq!(sent(&messages), vec![(2, heartbeat_type, 5, 0), (3, APP, 7, 1), (3, heartbeat_type, 7, 0)]);
        assert!(notices.timer.holding.get());
        assert_eq!(sent(&notices.take()), vec![(2, APP, 7, 0)]);
        assert!(!notices.timer.holding.get());
        assert!(notices.take().is_empty(), "take empties the hold");
    }

    #[test]
    fn a_later_append_to_the_same_follower_carries_the_notice() {
        let mut notices = CommitNotices::default();
        let mut first = vec![append(2, 7, 0), append(3, 7, 0)];
        notices.hold(&mut first, TERM);
        assert!(first.is_empty());
        // The next put's append to 2 carries commit 7; 3 still waits for its notice.
        let mut second = vec![append(2, 7, 1)];
        notices.hold(&mut second, TERM);
        assert_eq!(second.len(), 1);
        assert_eq!(sent(&notices.take()), vec![(3, APP, 7, 0)]);
    }

    #[test]
    fn an_append_that_commits_less_does_not_replace_a_notice() {
        let mut notices = CommitNotices::default();
        // In one batch: an append made before the commit moved, then the notice of it.
        let mut messages = vec![append(2, 6, 1), append(2, 7, 0)];
        notices.hold(&mut messages, TERM);
        assert_eq!(sent(&messages), vec![(2, APP, 6, 1)]);
        notices.hold(&mut vec![append(2, 6, 1)], TERM);
        assert_eq!(sent(&notices.take()), vec![(2, APP, 7, 0)], "commit 7 is still owed");
        // A notice followed by an append that carries its commit: nothing is held.
        let mut batch = vec![append(2, 8, 0), append(2, 8, 2)];
        notices.hold(&mut batch, TERM);
        assert_eq!(batch.len(), 1);
        assert!(notices.take().is_empty());
        // An append that ends below the commit (a probe after a rejection, a size-capped
        // append) lets its follower commit only through its last entry.
        notices.hold(&mut vec![append(2, 9, 0)], TERM);
        let short = Message { index: 5, ..append(2, 9, 2) };
        notices.hold(&mut vec![short], TERM);
        assert_eq!(sent(&notices.take()), vec![(2, APP, 9, 0)], "through 7 is not through 9");
    }

    #[test]
    fn a_newer_notice_replaces_an_older_one() {
        let mut notices = CommitNotices::default();
        notices.hold(&mut vec![append(2, 7, 0)], TERM);
        notices.hold(&mut vec![append(2, 9, 0)], TERM);
        assert_eq!(sent(&notices.take()), vec![(2, APP, 9, 0)]);
    }

    #[test]
    fn a_notice_that_commits_a_followers_forwarded_entry_goes_out_at_once() {
        let mut notices = CommitNotices::default();
        notices.hold(&mut Vec::new(), TERM);
        notices.forwarded(2, 8);
        let mut early = vec![append(2, 7, 0)];
        notices.hold(&mut early, TERM);
        assert!(early.is_empty(), "entry 8 is not committed yet: held");
        let mut committed = vec![append(2, 8, 0), append(3, 8, 0)];
        notices.hold(&mut committed, TERM);
        assert_eq!(sent(&committed), vec![(2, APP, 8, 0)]);
        assert_eq!(sent(&notices.take()), vec![(3, APP, 8, 0)]);
        // Once an append carried it, the next notice to 2 is held again.
        let mut next = vec![append(2, 9, 0)];
        notices.hold(&mut next, TERM);
        assert!(next.is_empty());
        // Two forwarded entries: the commit of the first goes out at once, then the second's.
        notices.forwarded(2, 10);
        notices.forwarded(2, 11);
        let mut first = vec![append(2, 10, 0)];
        notices.hold(&mut first, TERM);
        assert_eq!(first.len(), 1);
        let mut second = vec![append(2, 11, 0)];
        notices.hold(&mut second, TERM);
        assert_eq!(second.len(), 1);
        // An append with entries that carries the commit settles it too.
        notices.forwarded(3, 12);
        notices.hold(&mut vec![append(3, 12, 1)], TERM);
        let mut after = vec![append(3, 13, 0)];
        notices.hold(&mut after, TERM);
        assert!(after.is_empty());
    }

    #[test]
    fn what_is_held_goes_first_when_the_leader_steps_down_or_a_term_starts() {
        let mut notices = CommitNotices::default();
        notices.hold(&mut vec![append(2, 7, 0), append(3, 7, 0)], TERM);
        notices.forwarded(2, 8);
        // A removed leader's last turn: its notices, then MsgTimeoutNow, sent as a follower.
        let timeout_now = Message { msg_type: MessageType::MsgTimeoutNow as i32, to: 3, ..Default::default() };
        let mut messages = vec![timeout_now];
        notices.hold(&mut messages, None);
        let mut order: Vec<(u64, i32)> = messages.iter().map(|m| (m.to, m.msg_type)).collect();
        order[..2].sort();
        assert_eq!(order, vec![(2, APP), (3, APP), (3, MessageType::MsgTimeoutNow as i32)]);
        assert!(notices.forwarded.is_empty() && notices.held.is_empty());
        assert!(!notices.timer.holding.get());
        // A follower holds nothing.
        let mut as_follower = vec![append(2, 9, 0)];
        notices.hold(&mut as_follower, None);
        assert_eq!(as_follower.len(), 1);
        // Leading again in a later term: what the earlier term held goes out at once.
        notices.hold(&mut vec![append(2, 9, 0)], Some(3));
        let mut next_term = Vec::new();
        notices.hold(&mut next_term, Some(4));
        assert_eq!(sent(&next_term), vec![(2, APP, 9, 0)]);
    }

    #[test]
    fn a_removed_follower_is_forgotten_and_forwarded_entries_are_bounded() {
        let mut notices = CommitNotices::default();
        notices.hold(&mut vec![append(2, 7, 0)], TERM);
        notices.forwarded(2, 8);
        notices.forget(2);
        assert!(notices.take().is_empty());
        assert!(!notices.forwarded.contains_key(&2));
        for index in 0..FORWARDED_TRACKED_MAX as u64 + 10 {
            notices.forwarded(3, index);
        }
        let tracked = &notices.forwarded[&3];
        assert_eq!(tracked.len(), FORWARDED_TRACKED_MAX);
        assert_eq!(tracked.front(), Some(&10), "the oldest are forgotten first");
    }

    fn member(id: u64, learner: bool) -> pb::Member {
        pb::Member { id, name: format!("m{id}"), is_learner: learner, ..Default::default() }
    }

    #[test]
    fn a_forced_new_cluster_removes_every_other_member_after_the_whole_log() {
        let mut restart = RestartState::bootstrap(&[1, 2, 3]);
        restart.hard_state.commit = 1; // the persisted commit index lags: nothing is cut
        let table = [member(1, false), member(2, false), member(3, false)];
        let appended = force_new_cluster(2, &table, &mut restart, 1).unwrap();
        assert_eq!(appended.iter().map(|e| e.index).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(restart.entries.len(), 5);
        assert_eq!(restart.hard_state.commit, 5);
        let conf = restart.conf_state();
        assert_eq!((conf.voters, conf.learners), (vec![2], vec![]));
        // Alone already: nothing to do.
        assert!(force_new_cluster(2, &table[1..2], &mut restart, 5).unwrap().is_empty());
    }

    #[test]
    fn a_forced_new_cluster_makes_a_staged_voter_a_voter_and_refuses_a_store_ahead_of_the_log() {
        let mut restart = RestartState::bootstrap(&[1]);
        let change = ConfChange {
            change_type: ConfChangeType::ConfChangeAddLearnerNode as i32,
            node_id: 2,
            ..Default::default()
        };
        restart.entries.push(Entry {
            term: 2,
            index: 2,
            entry_type: EntryType::EntryConfChange as i32,
            data: change.encode_to_vec().into(),
        });
        let table = [member(1, false), member(2, false)];
        let refused = force_new_cluster(2, &table, &mut restart.clone(), 3).unwrap_err();
        assert!(refused.contains("past its log's last index 2"), "{refused}");
        let learner_table = [member(1, false), member(2, true)];
        assert!(force_new_cluster(2, &learner_table, &mut restart.clone(), 2).is_err(), "a real learner is refused");
        let appended = force_new_cluster(2, &table, &mut restart, 2).unwrap();
        assert_eq!(appended.len(), 2, "promote itself, remove member 1");
        assert!(appended.iter().all(|e| e.term == 2), "never below the log's last term");
        assert_eq!((restart.hard_state.term, restart.hard_state.commit), (2, 4));
        let conf = restart.conf_state();
        assert_eq!((conf.voters, conf.learners), (vec![2], vec![]));
    }
}
