//! The integrator: configuration, cores, the raft core, the apply task, and the per-core
//! handle (`Core`) that the API layer calls.
//!
//! Thread per core (DESIGN §2): one pinned glommio executor per core, each accepting
//! clients on the shared port. Serializable reads are answered on the receiving core from a
//! snapshot of the memory-mapped store. Writes and linearizable reads go to core 0, the raft
//! core (`raft_core`): cores 1.. send them over glommio shared channels; the raft core puts
//! every queued write into one Raft entry and every queued linearizable read into one
//! ReadIndex round, appends to the WAL (group commit) while it replicates to the peers
//! (`crate::transport`), and hands committed entries to the apply task (`writer`), which
//! applies them to the store, checkpoints it, and answers. A follower forwards its clients'
//! writes to the leader and answers them when it applies the entry itself.
//!
//! Invariants: exactly one `Store` writer (the apply task on core 0) and one owner of
//! `Raft`; a write is answered only after its entry is committed (on a quorum of WALs) and
//! applied to a store checkpoint readers can see; a linearizable read starts only after this
//! member applied through a ReadIndex a quorum confirmed; with no leader, requests that need
//! Raft fail at once with `etcdserver: no leader`, and every wait ends at the request
//! timeout (5 s + 2 election timeouts, as etcd's).

pub mod compactor;
mod concurrency;
pub mod config;
pub mod entry;
mod forward;
pub mod identity;
pub mod kv;
pub mod latency;
pub mod metrics;
mod raft_core;
mod reconfig;
pub mod watch;
mod writer;

use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};

use crate::api::errors::{self, Status};
use crate::api::pb::etcdserverpb as pb;
use crate::mvcc;
use crate::raft::pb::ConfChangeType;

pub use config::{Config, Flags};
pub use writer::Command;

/// The etcd API version ringd implements; Status and /version report it.
pub const ETCD_API_VERSION: &str = "3.5.0";
/// The etcd cluster version string /version reports.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";
/// The core (executor index) that runs Raft, the WAL and the apply task; every other core
/// forwards writes and linearizable reads to it.
pub const RAFT_CORE: usize = 0;
/// Requests the writer applies in one batch at most (one checkpoint each).
pub const BATCH_REQUESTS_MAX: usize = 4096;
/// Requests queued toward the writer from one core before senders wait.
pub const QUEUE_REQUESTS_MAX: usize = 8192;

/// State every core reads; written only by the writer (atomics) or at start.
pub struct Shared {
    pub config: Config,
    /// 0 until a member joining an existing cluster learns it from its first peer.
    cluster_id: AtomicU64,
    pub member_id: u64,
    /// Readers of the store; replaced when a member installs a snapshot from its leader.
    reader: RwLock<mvcc::Reader>,
    pub alarm_no_space: AtomicBool,
    /// The last Raft index applied to the store (and visible to readers).
    pub applied_index: AtomicU64,
    /// The leader this member knows of (0: none), its term and the last index of the log,
    /// published by the raft core after each Ready.
    pub leader_id: AtomicU64,
    pub raft_term: AtomicU64,
    pub raft_index: AtomicU64,
    /// The commit index this member knows of, published with the leader.
    pub commit_index: AtomicU64,
    /// This member leads as the only voter and has applied every entry committed before its
    /// term (set by the raft core, which clears it before proposing a membership change).
    /// Then the latest visible commit holds every acknowledged write (a write is answered
    /// once it is visible), and a linearizable read needs no ReadIndex.
    pub sole_voter_reads: AtomicBool,
    /// Whether this member does not vote in Raft's configuration now: a learner, a voter
    /// whose addition could not commit without it until it has caught up (the table lists
    /// it as a voter already), or a joining member before the leader's log reached it.
    pub raft_learner: AtomicBool,
    /// The member table, written by the apply task.
    pub members: RwLock<Vec<pb::Member>>,
    /// Per-stage latency histograms (GET /debug/latency, GET /metrics).
    pub latency: latency::Latency,
    /// The store's operations, leader changes, failed and pending proposals (GET /metrics).
    pub counts: metrics::Counts,
    /// gRPC calls per method and code, per core (GET /metrics).
    pub grpc_calls: crate::api::metrics::GrpcCalls,
    /// Live client connections per core (`api::listener` places connections by them).
    pub client_connections: crate::api::listener::ConnectionCounts,
    /// Client connections accepted since start, on every core (GET /debug/cores).
    pub accepted_connections: AtomicU64,
    /// The origin of the lessor's clock (monotonic).
    pub started: std::time::Instant,
    pub db_size_bytes: AtomicU64,
    pub db_size_in_use_bytes: AtomicU64,
    /// The revision watchers may deliver up to, published by the writer after checkpoints.
    pub watch: watch::Publisher,
}

impl Shared {
    /// The state of a member starting on `store` (its ID, cluster and members decided).
    fn new(config: Config, store: &mvcc::Store, member_id: u64, cluster_id: u64, members: Vec<pb::Member>) -> Shared {
        Shared {
            cluster_id: AtomicU64::new(cluster_id),
            member_id,
            reader: RwLock::new(store.reader()),
            alarm_no_space: AtomicBool::new(store.size_bytes() > config.quota_backend_bytes),
            applied_index: AtomicU64::new(store.consistent_index()),
            sole_voter_reads: AtomicBool::new(false),
            raft_learner: AtomicBool::new(false),
            leader_id: AtomicU64::new(crate::raft::NONE),
            raft_term: AtomicU64::new(0),
            raft_index: AtomicU64::new(0),
            commit_index: AtomicU64::new(0),
            members: RwLock::new(members),
            latency: latency::Latency::new(config.cores),
            counts: metrics::Counts::new(config.cores),
            grpc_calls: crate::api::metrics::GrpcCalls::new(config.cores),
            client_connections: crate::api::listener::connection_counts(config.cores),
            accepted_connections: AtomicU64::new(0),
            started: std::time::Instant::now(),
            db_size_bytes: AtomicU64::new(store.size_bytes()),
            db_size_in_use_bytes: AtomicU64::new(store.size_in_use_bytes()),
            watch: watch::Publisher::new(config.cores, store.current_revision()),
            config,
        }
    }

    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term.load(Ordering::Acquire),
        }
    }

    /// etcd's request timeout: 5 s plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * self.config.heartbeat_interval * self.config.election_ticks
    }

    /// A consistent read view of the store's latest visible commit.
    pub fn snapshot(&self) -> mvcc::Snapshot {
        self.reader.read().unwrap().snapshot()
    }

    /// An image of the latest visible commit as of this call (a follower's snapshot,
    /// Maintenance.Snapshot), made on the blocking pool when awaited: an image of a visible
    /// commit walks the trees (`mvcc::Image`), which for a large db must not hold up a core.
    pub fn image(&self) -> impl std::future::Future<Output = Result<mvcc::Image, mvcc::OpenError>> + 'static {
        let snapshot = self.snapshot();
        async move { glommio::executor().spawn_blocking(move || snapshot.image()).await }
    }

    /// After a snapshot from the leader replaced the db file: reads go to the new store.
    pub fn replace_reader(&self, reader: mvcc::Reader) {
        *self.reader.write().unwrap() = reader;
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Acquire)
    }

    pub fn set_cluster_id(&self, cluster_id: u64) {
        self.cluster_id.store(cluster_id, Ordering::Release);
    }

    fn has_leader(&self) -> bool {
        self.leader_id.load(Ordering::Acquire) != crate::raft::NONE
    }
}

/// A write on its way to the writer, with the way back to the waiting client task.
pub struct Proposal {
    pub command: Command,
    pub reply: oneshot::Sender<Result<writer::Outcome, Status>>,
    /// When the client core sent it (the `queue` stage starts here).
    pub created: std::time::Instant,
}

enum Route {
    /// Core 0 queues straight into the writer's channel.
    Local(mpsc::Sender<Proposal>),
    /// Other cores send over a glommio shared channel to a forwarder task on core 0.
    Remote(glommio::channels::shared_channel::ConnectedSender<Proposal>),
}

/// Sends a command to the writer and unwraps the outcome of the same kind.
macro_rules! propose_as {
    ($core:expr, $command:expr, $variant:ident) => {
        propose_as!(propose, $core, $command, $variant)
    };
    ($how:ident, $core:expr, $command:expr, $variant:ident) => {
        match $core.$how($command).await? {
            writer::Outcome::$variant(response) => Ok(response),
            _ => unreachable!(concat!("the writer answers ", stringify!($variant), " in kind")),
        }
    };
}

/// Records the time since `started` when dropped (a stage that ends on every return path).
struct RecordOnDrop<'a> {
    latency: &'a latency::Latency,
    core: usize,
    stage: latency::Stage,
    started: std::time::Instant,
}

impl Drop for RecordOnDrop<'_> {
    fn drop(&mut self) {
        self.latency.record_since(self.core, self.stage, self.started);
    }
}

/// One core's handle: what the API layer calls.
pub struct Core {
    pub shared: Arc<Shared>,
    /// This core's position (0: the raft core).
    index: usize,
    route: Route,
    hub: Rc<watch::Hub>,
    /// A follower's connection to the leader, for the lease calls only it answers.
    leader_link: forward::LeaderLink,
}

impl Core {
    /// This core's position (0: the raft core).
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn max_request_bytes(&self) -> usize {
        self.shared.config.max_request_bytes
    }

    /// This core's watchers.
    pub fn watch_hub(&self) -> &Rc<watch::Hub> {
        &self.hub
    }

    pub fn watch_progress_interval(&self) -> std::time::Duration {
        self.shared.config.watch_progress_interval
    }

    /// Sends a command that goes through Raft: refused at once while there is no leader.
    async fn propose(&self, command: Command) -> Result<writer::Outcome, Status> {
        if !self.shared.has_leader() {
            if command.is_raft_proposal() {
                self.count_failed_proposal();
            }
            return Err(errors::NO_LEADER);
        }
        self.submit(command).await
    }

    fn count_failed_proposal(&self) {
        self.shared.counts.core(self.index).proposals_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends a command to the raft core and waits for its answer, at most the request timeout.
    async fn submit(&self, command: Command) -> Result<writer::Outcome, Status> {
        let (reply, answer) = oneshot::channel();
        let started = std::time::Instant::now();
        let stage = match command {
            Command::ReadBarrier => Some(latency::Stage::ReadIndex),
            Command::Put(_) | Command::DeleteRange(_) | Command::Txn(_) => Some(latency::Stage::WriteTotal),
            _ => None,
        };
        let raft_proposal = command.is_raft_proposal();
        let _pending = raft_proposal.then(|| metrics::Pending::start(self.shared.counts.core(self.index)));
        let proposal = Proposal { command, reply, created: started };
        let sent = match &self.route {
            Route::Local(sender) => {
                let mut sender = sender.clone();
                futures::SinkExt::send(&mut sender, proposal).await.is_ok()
            }
            Route::Remote(sender) => sender.send(proposal).await.is_ok(),
        };
        if !sent {
            if raft_proposal {
                self.count_failed_proposal();
            }
            return Err(errors::STOPPED);
        }
        let timeout = glommio::timer::sleep(self.shared.request_timeout());
        futures::pin_mut!(timeout);
        let outcome = match futures::future::select(answer, timeout).await {
            futures::future::Either::Left((answer, _)) => answer.unwrap_or(Err(errors::STOPPED)),
            futures::future::Either::Right(_) => Err(errors::TIMEOUT),
        };
        if let Some(stage) = stage {
            self.shared.latency.record_since(self.index, stage, started);
        }
        let failed = |status: &Status| {
            [errors::TIMEOUT, errors::STOPPED, errors::NO_LEADER, errors::LEADER_CHANGED].contains(status)
        };
        if raft_proposal && outcome.as_ref().is_err_and(failed) {
            self.count_failed_proposal();
        }
        outcome
    }

    /// Waits until this member has applied everything committed when the read began, as a
    /// quorum confirmed (ReadIndex): a read after it is linearizable.
    async fn read_barrier(&self) -> Result<(), Status> {
        if self.shared.sole_voter_reads.load(Ordering::Acquire) {
            // No wait at all, and /debug/latency shows it as such.
            self.shared.latency.record_since(self.index, latency::Stage::ReadIndex, std::time::Instant::now());
            return Ok(());
        }
        match self.propose(Command::ReadBarrier).await? {
            writer::Outcome::ReadBarrier => Ok(()),
            _ => unreachable!("the raft core answers a read barrier in kind"),
        }
    }

    fn check_space(&self) -> Result<(), Status> {
        if self.shared.alarm_no_space.load(Ordering::Acquire) {
            return Err(errors::NO_SPACE);
        }
        Ok(())
    }

    pub async fn range(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        let started = std::time::Instant::now();
        kv::check_range(&request)?;
        if !request.serializable {
            self.read_barrier().await?;
        }
        let _total =
            RecordOnDrop { latency: &self.shared.latency, core: self.index, stage: latency::Stage::ReadTotal, started };
        let snapshot = self.shared.snapshot();
        self.shared.counts.core(self.index).ranges.fetch_add(1, Ordering::Relaxed);
        let mut response = kv::range(&snapshot, &request)?;
        response.header = Some(self.shared.header(snapshot.revision()));
        Ok(response)
    }

    pub async fn put(&self, request: pb::PutRequest) -> Result<pb::PutResponse, Status> {
        kv::check_put(&request)?;
        self.check_space()?;
        propose_as!(self, Command::Put(request), Put)
    }

    pub async fn delete_range(&self, request: pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, Status> {
        kv::check_delete(&request)?;
        propose_as!(self, Command::DeleteRange(request), DeleteRange)
    }

    pub async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        kv::check_txn(&request, self.shared.config.max_txn_ops)?;
        if kv::is_read_only(&request) {
            self.read_barrier().await?;
            let snapshot = self.shared.snapshot();
            let mut response = kv::txn_read(&snapshot, &request)?;
            let mut tally = metrics::Tally::default();
            tally.txn(&request, &response);
            self.shared.counts.add(self.index, &tally);
            response.header = Some(self.shared.header(snapshot.revision()));
            return Ok(response);
        }
        self.check_space()?;
        propose_as!(self, Command::Txn(request), Txn)
    }

    pub async fn compact(&self, request: pb::CompactionRequest) -> Result<pb::CompactionResponse, Status> {
        propose_as!(self, Command::Compact(request), Compact)
    }

    pub fn status(&self) -> Result<pb::StatusResponse, Status> {
        let shared = &self.shared;
        let applied = shared.applied_index.load(Ordering::Acquire);
        let mut errors = Vec::new();
        if shared.alarm_no_space.load(Ordering::Acquire) {
            errors.push(format!("memberID:{} alarm:NOSPACE ", shared.member_id));
        }
        Ok(pb::StatusResponse {
            header: Some(shared.header(shared.snapshot().revision())),
            version: ETCD_API_VERSION.to_owned(),
            db_size: shared.db_size_bytes.load(Ordering::Acquire) as i64,
            leader: shared.leader_id.load(Ordering::Acquire),
            raft_index: shared.raft_index.load(Ordering::Acquire),
            raft_term: shared.raft_term.load(Ordering::Acquire),
            raft_applied_index: applied,
            errors,
            db_size_in_use: shared.db_size_in_use_bytes.load(Ordering::Acquire) as i64,
            is_learner: shared.raft_learner.load(Ordering::Acquire)
                || self.members().iter().any(|m| m.id == shared.member_id && m.is_learner),
            storage_version: String::new(),
        })
    }

    pub fn member_list(&self) -> Result<pb::MemberListResponse, Status> {
        let shared = &self.shared;
        let mut header = shared.header(shared.snapshot().revision());
        header.revision = 0; // etcd leaves the revision out of MemberList's header
        Ok(pb::MemberListResponse { header: Some(header), members: by_id(shared.members.read().unwrap().clone()) })
    }

    fn members(&self) -> Vec<pb::Member> {
        self.shared.members.read().unwrap().clone()
    }

    fn member(&self, id: u64) -> Result<pb::Member, Status> {
        self.members().into_iter().find(|m| m.id == id).ok_or(errors::MEMBER_NOT_FOUND)
    }

    /// A membership change through Raft; answers with the membership after it applied.
    async fn change_members(
        &self,
        change: crate::raft::pb::ConfChange,
        member: pb::Member,
    ) -> Result<Vec<pb::Member>, Status> {
        match self.propose(Command::ConfChange(change, member)).await? {
            writer::Outcome::Members(members) => Ok(by_id(members)),
            _ => unreachable!("the apply task answers a membership change with the members"),
        }
    }

    fn membership_header(&self) -> Option<pb::ResponseHeader> {
        let mut header = self.shared.header(0);
        header.revision = 0; // etcd leaves the revision out of the Cluster service's headers
        Some(header)
    }

    /// etcd's MemberAdd: the new member's ID is derived from its peer URLs and the cluster
    /// token, as the member derives it itself when it starts (with the same
    /// --initial-cluster-token). The leader checks it against the membership (the raft
    /// core's `check_conf_change`), as every change.
    pub async fn member_add(&self, request: pb::MemberAddRequest) -> Result<pb::MemberAddResponse, Status> {
        check_peer_urls(&request.peer_ur_ls)?;
        // etcd's MemberAdd mixes the time in: a member added again gets a new ID.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let id = identity::member_id_at(&request.peer_ur_ls, &self.shared.config.cluster_token, now);
        let member =
            pb::Member { id, peer_ur_ls: request.peer_ur_ls, is_learner: request.is_learner, ..Default::default() };
        let change_type = if request.is_learner {
            ConfChangeType::ConfChangeAddLearnerNode
        } else {
            ConfChangeType::ConfChangeAddNode
        };
        let change = crate::raft::pb::ConfChange { change_type: change_type as i32, node_id: id, ..Default::default() };
        let members = self.change_members(change, member.clone()).await?;
        Ok(pb::MemberAddResponse { header: self.membership_header(), member: Some(member), members })
    }

    pub async fn member_remove(&self, request: pb::MemberRemoveRequest) -> Result<pb::MemberRemoveResponse, Status> {
        let member = pb::Member { id: request.id, ..Default::default() };
        let change = crate::raft::pb::ConfChange {
            change_type: ConfChangeType::ConfChangeRemoveNode as i32,
            node_id: request.id,
            ..Default::default()
        };
        let members = self.change_members(change, member).await?;
        Ok(pb::MemberRemoveResponse { header: self.membership_header(), members })
    }

    pub async fn member_update(&self, request: pb::MemberUpdateRequest) -> Result<pb::MemberUpdateResponse, Status> {
        check_peer_urls(&request.peer_ur_ls)?;
        let member = pb::Member { id: request.id, peer_ur_ls: request.peer_ur_ls, ..Default::default() };
        let change = crate::raft::pb::ConfChange {
            change_type: ConfChangeType::ConfChangeUpdateNode as i32,
            node_id: request.id,
            ..Default::default()
        };
        let members = self.change_members(change, member).await?;
        Ok(pb::MemberUpdateResponse { header: self.membership_header(), members })
    }

    /// Promotes a learner to a voter once it has caught up with the leader's log (the
    /// leader checks, and a follower asks the leader; etcd's rule: within 10% of the
    /// leader's match index).
    pub async fn member_promote(&self, request: pb::MemberPromoteRequest) -> Result<pb::MemberPromoteResponse, Status> {
        let member = self.member(request.id)?;
        if !member.is_learner {
            return Err(errors::MEMBER_NOT_LEARNER);
        }
        if self.shared.leader_id.load(Ordering::Acquire) != self.shared.member_id {
            return self.forward_member_promote(request).await;
        }
        let change = crate::raft::pb::ConfChange {
            change_type: ConfChangeType::ConfChangeAddNode as i32,
            node_id: request.id,
            ..Default::default()
        };
        let members = self.change_members(change, member).await?;
        Ok(pb::MemberPromoteResponse { header: self.membership_header(), members })
    }

    /// Maintenance.MoveLeader: only the leader can hand over; answers once the target leads.
    pub async fn move_leader(&self, request: pb::MoveLeaderRequest) -> Result<pb::MoveLeaderResponse, Status> {
        match self.propose(Command::MoveLeader(request.target_id)).await? {
            writer::Outcome::LeaderMoved => {
                Ok(pb::MoveLeaderResponse { header: Some(self.shared.header(self.shared.snapshot().revision())) })
            }
            _ => unreachable!("the raft core answers MoveLeader in kind"),
        }
    }

    pub async fn lease_grant(&self, request: pb::LeaseGrantRequest) -> Result<pb::LeaseGrantResponse, Status> {
        propose_as!(self, Command::LeaseGrant(request), LeaseGrant)
    }

    pub async fn lease_revoke(&self, request: pb::LeaseRevokeRequest) -> Result<pb::LeaseRevokeResponse, Status> {
        propose_as!(self, Command::LeaseRevoke(request), LeaseRevoke)
    }

    /// Answered by the leader's lessor: here if this member is the leader, else forwarded.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        match self.propose(Command::LeaseRenew(id)).await {
            Ok(writer::Outcome::LeaseKeepAlive(response)) => Ok(response),
            Ok(_) => unreachable!("the raft core answers a keepalive in kind"),
            Err(status) if status == errors::NOT_LEADER => self.forward_keep_alive(id).await,
            Err(status) => Err(status),
        }
    }

    /// Answered by the leader's lessor: here if this member is the leader, else forwarded.
    pub async fn lease_time_to_live(
        &self,
        request: pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse, Status> {
        match self.propose(Command::LeaseTimeToLive(request)).await {
            Ok(writer::Outcome::LeaseTimeToLive(response)) => Ok(response),
            Ok(_) => unreachable!("the raft core answers TimeToLive in kind"),
            Err(status) if status == errors::NOT_LEADER => self.forward_time_to_live(request).await,
            Err(status) => Err(status),
        }
    }

    pub async fn lease_leases(&self) -> Result<pb::LeaseLeasesResponse, Status> {
        propose_as!(submit, self, Command::LeaseLeases, LeaseLeases)
    }

    pub async fn hash(&self) -> Result<pb::HashResponse, Status> {
        propose_as!(submit, self, Command::Hash, Hash)
    }

    pub async fn hash_kv(&self, request: pb::HashKvRequest) -> Result<pb::HashKvResponse, Status> {
        propose_as!(submit, self, Command::HashKv(request), HashKv)
    }

    pub async fn defragment(&self) -> Result<pb::DefragmentResponse, Status> {
        propose_as!(submit, self, Command::Defragment, Defragment)
    }

    pub async fn alarm(&self, request: pb::AlarmRequest) -> Result<pb::AlarmResponse, Status> {
        propose_as!(self, Command::Alarm(request), Alarm)
    }

    /// A consistent copy of the db for Maintenance.Snapshot (`Shared::image`).
    pub async fn snapshot_image(&self) -> Result<mvcc::Image, Status> {
        self.shared.image().await.map_err(|error| Status::with_message(errors::Code::Internal, error.to_string()))
    }

    /// etcd's /health: unhealthy while an alarm is raised.
    pub fn health(&self) -> (bool, String) {
        if self.shared.alarm_no_space.load(Ordering::Acquire) {
            return (false, "ALARM NOSPACE".to_owned());
        }
        if !self.shared.has_leader() {
            return (false, "RAFT NO LEADER".to_owned());
        }
        (true, String::new())
    }

    /// GET /debug/latency: the per-stage histograms of every core, merged.
    pub fn latency_json(&self) -> serde_json::Value {
        self.shared.latency.json()
    }

    /// GET /debug/cores: each core's CPU and live client connections, the connections
    /// accepted since start, and the core that serves the connection asking (`answered_by`).
    pub fn cores_json(&self) -> serde_json::Value {
        let cores: Vec<serde_json::Value> = (0..self.shared.config.cores)
            .map(|core| {
                serde_json::json!({
                    "core": core,
                    "cpu": self.shared.config.cpus[core],
                    "raft": core == RAFT_CORE,
                    "client_connections": self.shared.client_connections[core].load(Ordering::Relaxed),
                })
            })
            .collect();
        let accepted = self.shared.accepted_connections.load(Ordering::Relaxed);
        serde_json::json!({ "cores": cores, "accepted_connections": accepted, "answered_by": self.index })
    }

    pub fn version_json(&self) -> serde_json::Value {
        serde_json::json!({
            "etcdserver": ETCD_API_VERSION,
            "etcdcluster": ETCD_CLUSTER_VERSION,
            "ringd": env!("CARGO_PKG_VERSION"),
        })
    }
}

/// etcd's check of member peer URLs: each an http(s) URL with a host and a port.
fn check_peer_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() || urls.iter().any(|url| crate::transport::resolve(url).is_none()) {
        return Err(errors::MEMBER_BAD_URLS);
    }
    Ok(())
}

/// Why the server could not start; printed as one line, exit code 1.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Prepares the data dir: creates it if missing, proves it is writable, and takes the lock
/// that keeps a second process off it. Returns the db path and the held lock file.
fn prepare_data_dir(data_dir: &Path) -> Result<(std::path::PathBuf, std::fs::File), StartError> {
    let snap_dir = data_dir.join("member").join("snap");
    std::fs::create_dir_all(&snap_dir)
        .map_err(|e| StartError(format!("cannot create data dir {}: {e}", snap_dir.display())))?;
    let lock_path = data_dir.join("member").join("ringd.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StartError(format!("data dir {} is not writable: {e}", data_dir.display())))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        return Err(StartError(format!("data dir {} is in use by another ringd process", data_dir.display())));
    }
    Ok((snap_dir.join("db"), lock))
}

/// Opens the store, binds the client port on every core, and serves until killed.
pub fn run(config: Config) -> Result<(), StartError> {
    let (db_path, _lock) = prepare_data_dir(&config.data_dir)?;
    let store = mvcc::Store::open(&db_path, mvcc::StoreOptions::default())
        .map_err(|e| StartError(format!("cannot open the store: {e}")))?;
    let has_run = config.data_dir.join("member").join("wal").is_dir();
    // A joining member learns its ID and its peers' from a peer (etcd's joiner asks for
    // /members): IDs of added members carry the time they were added.
    let joined = if !config.initial_cluster_new && !has_run { Some(join_membership(&config)?) } else { None };
    let member_id = match (&joined, stored_member_id(&config.data_dir)?) {
        (Some((id, _, _)), _) => *id,
        (None, Some(id)) => id,
        (None, None) => identity::member_id(&config.peer_urls, &config.cluster_token),
    };
    if let Some((id, _, _)) = &joined {
        store_member_id(&config.data_dir, *id)?;
    }
    let members: Vec<pb::Member> = match &joined {
        Some((_, _, members)) => members.clone(),
        None => config
            .initial_cluster
            .iter()
            .map(|member| pb::Member {
                id: identity::member_id(&member.peer_urls, &config.cluster_token),
                name: member.name.clone(),
                peer_ur_ls: member.peer_urls.clone(),
                client_ur_ls: if member.name == config.name {
                    config.advertise_client_urls.clone()
                } else {
                    Vec::new()
                },
                is_learner: false,
            })
            .collect(),
    };
    let member_ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let mut cluster_id = if config.initial_cluster_new { identity::cluster_id(&member_ids) } else { 0 };
    if let Some((_, joined_cluster_id, _)) = &joined {
        cluster_id = *joined_cluster_id;
    }
    let mut members = members;
    // A member that has run before knows its cluster from its store (what it applied),
    // not from the flags, which describe only how the cluster began.
    if has_run {
        if writer::stored_removal(&store) {
            return Err(StartError(format!(
                "the member has been permanently removed from the cluster (data dir {}): \
                 remove the data dir and add the member again to rejoin",
                config.data_dir.display()
            )));
        }
        let (known, stored_cluster_id) = writer::stored_membership(&store);
        if !known.is_empty() {
            members = known;
        }
        cluster_id = stored_cluster_id.unwrap_or(cluster_id);
    }
    let shared = Arc::new(Shared::new(config, &store, member_id, cluster_id, members));
    writer::start_cores(shared, store)
}

/// `member/id`: the ID of a member that joined a running cluster (it carries the time the
/// member was added, so the flags cannot give it again), in hex, written once.
fn member_id_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("member").join("id")
}

fn stored_member_id(data_dir: &Path) -> Result<Option<u64>, StartError> {
    let path = member_id_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16)
            .map(Some)
            .map_err(|_| StartError(format!("{} does not hold a member ID: {text:?}", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(StartError(format!("cannot read {}: {error}", path.display()))),
    }
}

fn store_member_id(data_dir: &Path, id: u64) -> Result<(), StartError> {
    use std::io::Write;
    let path = member_id_path(data_dir);
    let written = std::fs::File::create(&path)
        .and_then(|mut file| file.write_all(format!("{id:x}\n").as_bytes()).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::File::open(data_dir.join("member"))?.sync_all());
    written.map_err(|error| StartError(format!("cannot write {}: {error}", path.display())))
}

/// Bound on asking the peers for the membership before a joining member gives up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A joining member (`--initial-cluster-state existing`, first start): asks the other members
/// of `--initial-cluster` for the membership until one answers, and finds itself in it by its
/// peer URLs. Returns (its ID, the cluster ID, the members).
fn join_membership(config: &Config) -> Result<(u64, u64, Vec<pb::Member>), StartError> {
    let deadline = std::time::Instant::now() + JOIN_TIMEOUT;
    let peers: Vec<std::net::SocketAddr> = config
        .initial_cluster
        .iter()
        .filter(|member| member.name != config.name)
        .flat_map(|member| member.peer_urls.iter().filter_map(|url| crate::transport::resolve(url)))
        .collect();
    let mut last_error = String::from("no other member in --initial-cluster");
    loop {
        for &peer in &peers {
            // A peer that has not applied this member's addition yet does not name it: ask
            // the next one, and again until the deadline.
            match crate::transport::fetch_membership(peer, Duration::from_secs(1)) {
                Ok(membership) => match find_self(config, membership) {
                    Ok(found) => return Ok(found),
                    Err(StartError(message)) => last_error = message,
                },
                Err(error) => last_error = format!("cannot get the cluster's membership from {peer}: {error}"),
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(StartError(last_error));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn find_self(
    config: &Config,
    membership: crate::transport::Membership,
) -> Result<(u64, u64, Vec<pb::Member>), StartError> {
    let mut urls = config.peer_urls.clone();
    urls.sort();
    let found = membership.members.iter().find(|member| {
        let mut theirs = member.peer_urls.clone();
        theirs.sort();
        theirs == urls
    });
    let Some(me) = found else {
        return Err(StartError(format!(
            "couldn't find local name {:?} in the initial cluster configuration: no member has the peer URLs {:?} \
             (add it first with `etcdctl member add`)",
            config.name, config.peer_urls
        )));
    };
    let members = membership
        .members
        .iter()
        .map(|member| pb::Member {
            id: member.id,
            name: if member.id == me.id { config.name.clone() } else { member.name.clone() },
            peer_ur_ls: member.peer_urls.clone(),
            client_ur_ls: if member.id == me.id { config.advertise_client_urls.clone() } else { Vec::new() },
            is_learner: member.is_learner,
        })
        .collect();
    Ok((me.id, membership.cluster_id, members))
}

/// Members in ID order, as etcd's Cluster service lists them.
fn by_id(mut members: Vec<pb::Member>) -> Vec<pb::Member> {
    members.sort_by_key(|member| member.id);
    members
}

/// Builds the per-core handle for the raft core (local route).
fn local_core(shared: Arc<Shared>, sender: mpsc::Sender<Proposal>) -> Rc<Core> {
    let hub = start_hub(&shared, RAFT_CORE);
    Rc::new(Core { shared, index: RAFT_CORE, route: Route::Local(sender), hub, leader_link: Default::default() })
}

/// Builds the per-core handle for another core (remote route).
fn remote_core(
    shared: Arc<Shared>,
    core: usize,
    sender: glommio::channels::shared_channel::ConnectedSender<Proposal>,
) -> Rc<Core> {
    let hub = start_hub(&shared, core);
    Rc::new(Core { shared, index: core, route: Route::Remote(sender), hub, leader_link: Default::default() })
}

fn start_hub(shared: &Arc<Shared>, core: usize) -> Rc<watch::Hub> {
    let hub = watch::Hub::new(shared.clone(), core);
    glommio::spawn_local(hub.clone().run()).detach();
    hub
}
