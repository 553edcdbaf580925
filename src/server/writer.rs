//! The cores and the apply task. Core 0 (the raft core) runs the Raft loop (`raft_core`) and
//! the store's single writer, the apply task: it takes every committed entry handed over
//! since its last turn, applies each request as one etcd revision, checkpoints the store once
//! per turn, and answers the clients of this member. Entries committed during a checkpoint
//! form the next turn (group commit). Entries at or below the store's consistent index are
//! already in the store (a restart replays the WAL from there) and are skipped.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::StreamExt;
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

use std::cell::RefCell;
use std::rc::Rc;

use prost::Message as _;

use super::entry::{self, Batch, ConfContext};
use super::raft_core::{self, Event, RaftCore, Waiters};
use super::{kv, Proposal, Shared, StartError, BATCH_REQUESTS_MAX, QUEUE_REQUESTS_MAX};
use crate::api::errors::{self, Status};
use crate::api::pb::etcdserverpb::{self as pb, alarm_request};
use crate::lease::{GrantError, LeaseId, Lessor};
use crate::mvcc;
use crate::raft::pb::{ConfChange, ConfChangeType, Entry, EntryType};
use crate::transport::Transport;

/// Registered io_uring buffer memory per executor: cores x this must stay within
/// RLIMIT_MEMLOCK (8 MiB on our machines), or glommio silently runs without it.
pub const IO_MEMORY_BYTES: usize = 1024 * 1024;
/// Bytes etcd's quota check adds per key on top of key and value (bolt's overhead).
const QUOTA_KEY_OVERHEAD_BYTES: u64 = 256;

/// What only the writer can do.
pub enum Command {
    Put(pb::PutRequest),
    DeleteRange(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    Defragment,
    Hash,
    HashKv(pb::HashKvRequest),
    Alarm(pb::AlarmRequest),
    /// A linearizable read's barrier: answered once this member applied through a
    /// ReadIndex confirmed by a quorum.
    ReadBarrier,
    /// A membership change (its member: attributes for an add or update).
    ConfChange(crate::raft::pb::ConfChange, pb::Member),
    /// Maintenance.MoveLeader to this member id.
    MoveLeader(u64),
    LeaseGrant(pb::LeaseGrantRequest),
    LeaseRevoke(pb::LeaseRevokeRequest),
    /// A keepalive of this lease (the leader's lessor answers).
    LeaseRenew(i64),
    LeaseTimeToLive(pb::LeaseTimeToLiveRequest),
    LeaseLeases,
}

impl Command {
    /// Whether the command goes into the Raft log (etcd's proposals, which its metrics count;
    /// reads, leader moves and the lessor's answers do not).
    pub fn is_raft_proposal(&self) -> bool {
        matches!(
            self,
            Command::Put(_)
                | Command::DeleteRange(_)
                | Command::Txn(_)
                | Command::Compact(_)
                | Command::Alarm(_)
                | Command::ConfChange(..)
                | Command::LeaseGrant(_)
                | Command::LeaseRevoke(_)
        )
    }
}

pub enum Outcome {
    Put(pb::PutResponse),
    DeleteRange(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Compact(pb::CompactionResponse),
    Defragment(pb::DefragmentResponse),
    Hash(pb::HashResponse),
    HashKv(pb::HashKvResponse),
    Alarm(pb::AlarmResponse),
    ReadBarrier,
    /// A configuration change applied: the membership after it.
    Members(Vec<pb::Member>),
    LeaderMoved,
    LeaseGrant(pb::LeaseGrantResponse),
    LeaseRevoke(pb::LeaseRevokeResponse),
    LeaseKeepAlive(pb::LeaseKeepAliveResponse),
    LeaseTimeToLive(pb::LeaseTimeToLiveResponse),
    LeaseLeases(pb::LeaseLeasesResponse),
}

pub type Reply = futures::channel::oneshot::Sender<Result<Outcome, Status>>;

/// The key of the cluster ID in the members aux table (member keys are 8-byte IDs).
pub const CLUSTER_ID_KEY: &[u8] = b"cluster_id";
/// Present (in the members table) once this member applied its own removal: it must never
/// serve again (etcd refuses to start a removed member).
pub const REMOVED_KEY: &[u8] = b"removed";

/// The members and the cluster ID the store holds (what this member applied).
/// Whether this store's member applied its own removal from the cluster.
pub fn stored_removal(store: &mvcc::Store) -> bool {
    store.aux_scan(mvcc::AUX_TABLE_MEMBERS).iter().any(|(key, _)| key.as_slice() == REMOVED_KEY)
}

pub fn stored_membership(store: &mvcc::Store) -> (Vec<pb::Member>, Option<u64>) {
    let stored = store.aux_scan(mvcc::AUX_TABLE_MEMBERS);
    let members = stored
        .iter()
        .filter(|(key, _)| key.len() == 8)
        .filter_map(|(_, value)| pb::Member::decode(value.as_slice()).ok())
        .collect();
    let cluster_id = stored
        .iter()
        .find(|(key, _)| key.as_slice() == CLUSTER_ID_KEY)
        .and_then(|(_, value)| value.as_slice().try_into().ok().map(u64::from_be_bytes));
    (members, cluster_id)
}

/// What the raft core hands the apply task.
pub enum ApplyWork {
    /// Committed entries, in index order.
    Entries(Vec<Entry>),
    /// Work on this member's store only (defragment, hash).
    Local(Proposal),
    /// Reads released once applied >= the index.
    Reads(u64, Vec<Reply>),
    /// Replace the db with the leader's snapshot at `index`, received into `path`.
    Install { index: u64, path: std::path::PathBuf },
    /// A peer says the cluster removed this member: record it durably, then stop.
    Removed,
    /// Entries a leader just handed to its WAL and its followers (`RaftCore::applies_ahead`).
    /// The apply task may apply them and write their pages while they are written and
    /// replicated, but publishes them and answers their clients only once they arrive as
    /// `Entries` (`Ahead::apply`); otherwise it ignores this and applies them then, as any
    /// committed entry.
    Ahead(Vec<Entry>),
    /// The leader that sent `Ahead` stopped leading: entries applied ahead and not yet
    /// committed are dropped (they may commit later, or be replaced).
    Abandon,
}

/// Starts one pinned executor per core, waits until each has bound the client port, then
/// serves until the process is killed.
pub fn start_cores(shared: Arc<Shared>, store: mvcc::Store) -> Result<(), StartError> {
    let cores = shared.config.cores;
    let (ready_sender, ready) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    // The raft core is core 0: first in `config.cpus`, in the lanes and in the handles.
    const _: () = assert!(super::RAFT_CORE == 0);
    let mut lanes = crate::api::listener::lanes(cores).into_iter();
    let raft_lanes = lanes.next().expect("at least one core");
    for _ in 1..cores {
        let (sender, receiver) = shared_channel::new_bounded::<Proposal>(QUEUE_REQUESTS_MAX);
        senders.push(sender);
        receivers.push(receiver);
    }
    let mut handles = Vec::new();
    let writer_shared = shared.clone();
    let writer_ready = ready_sender.clone();
    handles.push(
        builder(super::RAFT_CORE, &shared.config)
            .spawn(
                move || async move { run_raft_core(writer_shared, store, receivers, raft_lanes, writer_ready).await },
            )
            .map_err(|e| {
                StartError(format!("cannot start the raft core on CPU {}: {e}", shared.config.cpus[super::RAFT_CORE]))
            })?,
    );
    for (index, (sender, lanes)) in senders.into_iter().zip(lanes).enumerate() {
        let core_shared = shared.clone();
        let core_ready = ready_sender.clone();
        handles.push(
            builder(index + 1, &shared.config)
                .spawn(move || async move { run_client_core(core_shared, index + 1, sender, lanes, core_ready).await })
                .map_err(|e| {
                    StartError(format!("cannot start core {} on CPU {}: {e}", index + 1, shared.config.cpus[index + 1]))
                })?,
        );
    }
    drop(ready_sender);
    for _ in 0..cores {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(StartError(message)),
            Err(_) => return Err(StartError("a core stopped while starting".into())),
        }
    }
    let urls: Vec<String> = shared.config.listen_client_addresses.iter().map(|listener| listener.to_string()).collect();
    eprintln!(
        "ringd: ready to serve client requests on {} ({} cores, data dir {})",
        urls.join(","),
        cores,
        shared.config.data_dir.display()
    );
    if !shared.config.listen_metrics_addresses.is_empty() {
        let urls: Vec<String> = shared.config.listen_metrics_addresses.iter().map(ToString::to_string).collect();
        eprintln!("ringd: serving /metrics and /health on {}", urls.join(","));
    }
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

/// Threads of each executor's blocking pool: the raft core's runs the store's commits and
/// writeback and the WAL's large durable writes (`io::glommio_storage`), which must not wait
/// behind a checkpoint's fdatasync.
const BLOCKING_THREADS: usize = 2;

/// Core `core`'s executor, pinned to its CPU, polling for `--idle-poll-us` before it sleeps
/// (the vendored glommio yields the CPU on every round of that poll; with 0 it parks at once).
fn builder(core: usize, config: &super::Config) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Fixed(config.cpus[core]))
        .name(&format!("ringd-core-{core}"))
        .io_memory(IO_MEMORY_BYTES)
        .blocking_thread_pool_placement(PoolPlacement::Unbound(BLOCKING_THREADS))
        .spin_before_park(config.idle_poll)
}

/// Binds every listen address on this core, then (in a task, once this core's connection
/// handoff lanes are connected) runs their accept loops.
fn serve_clients(
    core: Rc<super::Core>,
    lanes: crate::api::listener::Lanes,
    listeners: &[super::config::ClientListener],
) -> Result<(), String> {
    let mut bound = Vec::with_capacity(listeners.len());
    for &listener in listeners {
        let socket =
            crate::api::listener::bind(listener.address).map_err(|e| format!("cannot listen on {listener}: {e}"))?;
        bound.push((socket, listener.tls));
    }
    glommio::spawn_local(async move {
        let balancer = Rc::new(crate::api::listener::Balancer::connect(lanes, core.clone()).await);
        for (socket, tls) in bound {
            let accept = crate::api::listener::accept_loop(socket, tls, core.clone(), balancer.clone());
            glommio::spawn_local(accept).detach();
        }
    })
    .detach();
    Ok(())
}

/// Binds the --listen-metrics-urls on this core (the raft core) and serves them.
fn serve_metrics(core: Rc<super::Core>, listeners: &[super::config::ClientListener]) -> Result<(), String> {
    for &listener in listeners {
        let socket =
            crate::api::listener::bind(listener.address).map_err(|e| format!("cannot listen on {listener}: {e}"))?;
        glommio::spawn_local(crate::api::listener::metrics_accept_loop(socket, listener.tls, core.clone())).detach();
    }
    Ok(())
}

async fn run_raft_core(
    shared: Arc<Shared>,
    store: mvcc::Store,
    receivers: Vec<SharedReceiver<Proposal>>,
    lanes: crate::api::listener::Lanes,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let started = match raft_core::open(&shared, store.consistent_index()).await {
        Ok(started) => started,
        Err(message) => {
            let _ = ready.send(Err(message));
            return;
        }
    };
    let (sender, queue) = mpsc::channel::<Proposal>(QUEUE_REQUESTS_MAX);
    for receiver in receivers {
        let receiver = receiver.connect().await;
        let mut forward = sender.clone();
        glommio::spawn_local(async move {
            while let Some(proposal) = receiver.recv().await {
                if futures::SinkExt::send(&mut forward, proposal).await.is_err() {
                    return;
                }
            }
        })
        .detach();
    }
    let (events, events_received) = mpsc::unbounded::<Event>();
    let (incoming, incoming_received) = mpsc::unbounded();
    let snapshot_dir = shared.config.data_dir.join("member").join("snap");
    let transport = Transport::new(shared.member_id, shared.cluster_id(), snapshot_dir, incoming);
    let known = shared.clone();
    transport.set_membership(Box::new(move || crate::transport::Membership {
        cluster_id: known.cluster_id(),
        members: known
            .members
            .read()
            .unwrap()
            .iter()
            .map(|member| crate::transport::MemberEntry {
                id: member.id,
                peer_urls: member.peer_ur_ls.clone(),
                name: member.name.clone(),
                is_learner: member.is_learner,
            })
            .collect(),
    }));
    for &address in &shared.config.listen_peer_addresses {
        match crate::api::listener::bind(address) {
            Ok(listener) => {
                glommio::spawn_local(transport.clone().accept_loop(listener)).detach();
            }
            Err(error) => {
                let _ = ready.send(Err(format!("cannot listen for peers on http://{address}: {error}")));
                return;
            }
        }
    }
    let waiters = Rc::new(RefCell::new(Waiters::default()));
    let (apply, work) = mpsc::unbounded::<ApplyWork>();
    let config = crate::lease::LessorConfig::new(shared.config.heartbeat_interval, shared.config.election_ticks);
    let mut store = store;
    let lessor = match Lessor::load(&mut store, config) {
        Ok(lessor) => Rc::new(RefCell::new(lessor)),
        Err(error) => {
            let _ = ready.send(Err(format!("cannot load the leases from the store: {error}")));
            return;
        }
    };
    glommio::spawn_local(apply_loop(store, lessor.clone(), work, shared.clone(), waiters.clone(), events.clone()))
        .detach();
    let ticks = events.clone();
    let interval = shared.config.heartbeat_interval;
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(interval).await;
            if ticks.unbounded_send(Event::Tick).is_err() {
                return;
            }
        }
    })
    .detach();
    let mut raft = RaftCore::new(shared.clone(), started, transport, waiters, lessor, apply, events);
    raft.start();
    let core = super::local_core(shared.clone(), sender);
    glommio::spawn_local(super::compactor::run(core.clone(), shared.config.auto_compaction)).detach();
    let metrics = serve_metrics(core.clone(), &shared.config.listen_metrics_addresses);
    let _ = ready.send(metrics.and_then(|()| serve_clients(core, lanes, &shared.config.listen_client_addresses)));
    raft.run(queue, events_received, incoming_received).await;
}

async fn run_client_core(
    shared: Arc<Shared>,
    index: usize,
    sender: SharedSender<Proposal>,
    lanes: crate::api::listener::Lanes,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let sender = sender.connect().await;
    let core = super::remote_core(shared.clone(), index, sender);
    let _ = ready.send(serve_clients(core, lanes, &shared.config.listen_client_addresses));
    // The accept loops run forever; park this task without spinning.
    futures::future::pending::<()>().await;
}

/// Background work the writer does a step of per batch, so that neither blocks the core:
/// a compaction's physical deletion and an online defragmentation.
#[derive(Default)]
struct Background {
    /// Compact requests with physical=true, answered once the deletion is done.
    physical_compactions: Vec<Reply>,
    /// Defragment requests, answered once the file has shrunk to its live pages.
    defragmentations: Vec<Reply>,
    /// Defragmentation steps left before giving up on pages old snapshots still pin.
    defragment_steps_left: usize,
    /// Checkpoints still due after the last relocation: pages freed by txn T are reusable
    /// (and the file trimmable) from txn T + 2.
    defragment_trailing_checkpoints: u8,
}

const DEFRAGMENT_TRAILING_CHECKPOINTS: u8 = 3;

impl Background {
    fn busy(&self, store: &mvcc::Store) -> bool {
        !self.defragmentations.is_empty() || store.compaction_pending()
    }

    /// One step of each pending job, before the batch's checkpoint.
    fn step(&mut self, store: &mut mvcc::Store) {
        if store.compaction_pending() {
            store.compact_step();
        }
        if self.defragmentations.is_empty() {
            return;
        }
        let more = match store.defragment_step() {
            Ok(more) => more,
            Err(error) => fatal(&error),
        };
        self.defragment_steps_left = self.defragment_steps_left.saturating_sub(1);
        if !more || self.defragment_steps_left == 0 {
            self.defragment_trailing_checkpoints += 1;
        }
    }

    /// Answers the jobs that finished with the checkpoint just made.
    fn answer_finished(&mut self, store: &mvcc::Store, shared: &Shared) {
        let header = Some(shared.header(store.current_revision()));
        if !store.compaction_pending() {
            for reply in self.physical_compactions.drain(..) {
                let _ = reply.send(Ok(Outcome::Compact(pb::CompactionResponse { header })));
            }
        }
        if self.defragment_trailing_checkpoints > DEFRAGMENT_TRAILING_CHECKPOINTS {
            self.defragment_trailing_checkpoints = 0;
            for reply in self.defragmentations.drain(..) {
                let _ = reply.send(Ok(Outcome::Defragment(pb::DefragmentResponse { header })));
            }
        }
    }
}

async fn apply_loop(
    mut store: mvcc::Store,
    lessor: Rc<RefCell<Lessor>>,
    mut work: mpsc::UnboundedReceiver<ApplyWork>,
    shared: Arc<Shared>,
    waiters: Rc<RefCell<Waiters>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut batch: Vec<ApplyWork> = Vec::new();
    let mut replies: Vec<(Reply, Result<Outcome, Status>)> = Vec::with_capacity(BATCH_REQUESTS_MAX);
    let mut reads: Vec<(u64, Vec<Reply>)> = Vec::new();
    let mut background = Background::default();
    let mut checkpoints = Checkpoints::new();
    loop {
        if !background.busy(&store) {
            match next_work(&mut work, checkpoints.due_in()).await {
                Wake::Work(first) => batch.push(first),
                Wake::CheckpointDue => {}
                Wake::Closed => return,
            }
        }
        while batch.len() < BATCH_REQUESTS_MAX {
            match work.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if matches!(batch.first(), Some(ApplyWork::Ahead(_))) && !background.busy(&store) {
            let ApplyWork::Ahead(entries) = batch.remove(0) else { unreachable!("matched above") };
            let mut ahead = Ahead {
                store: &mut store,
                lessor: &lessor,
                shared: &shared,
                waiters: &waiters,
                checkpoints: &mut checkpoints,
            };
            if !ahead.apply(entries, &mut batch, &mut work).await {
                return;
            }
        }
        let mut changed = background.busy(&store);
        let mut requests = 0u64;
        let mut members_changed = false;
        let mut removed = false;
        let applying = std::time::Instant::now();
        // A turn with nothing to apply (after entries applied ahead, a checkpoint falling
        // due) records no apply.
        let applies = !batch.is_empty();
        for next in batch.drain(..) {
            if let ApplyWork::Install { index, path } = next {
                store = install(store, &shared, index, &path);
                let config = lessor.borrow().config().clone();
                match Lessor::load(&mut store, config) {
                    Ok(loaded) => *lessor.borrow_mut() = loaded,
                    Err(error) => fatal(&format!("loading the leases of the installed snapshot: {error}")),
                }
                changed = false;
                members_changed = true;
                continue;
            }
            let mut turn = Turn {
                store: &mut store,
                lessor: &lessor,
                removed: &mut removed,
                shared: &shared,
                waiters: &waiters,
                replies: &mut replies,
                requests: &mut requests,
                background: &mut background,
            };
            match next {
                ApplyWork::Entries(entries) => {
                    for entry in entries {
                        let next = turn.store.consistent_index() + 1;
                        if entry.index > next {
                            fatal(&format!("entry {} committed where entry {next} was expected", entry.index));
                        }
                        if entry.index == next {
                            members_changed |= turn.apply_entry(entry);
                            changed = true;
                        }
                    }
                }
                ApplyWork::Local(proposal) => match proposal.command {
                    Command::Defragment => {
                        if turn.background.defragmentations.is_empty() {
                            turn.background.defragment_steps_left = defragment_steps_max(turn.store);
                        }
                        turn.background.defragmentations.push(proposal.reply);
                        changed = true;
                    }
                    command => {
                        let (result, dirty) = apply(turn.store, &mut turn.lessor.borrow_mut(), &shared, command);
                        changed |= dirty;
                        turn.replies.push((proposal.reply, result));
                    }
                },
                ApplyWork::Reads(index, waiting) => reads.push((index, waiting)),
                ApplyWork::Removed => {
                    let id = shared.member_id.to_be_bytes();
                    turn.store.aux_put(mvcc::AUX_TABLE_MEMBERS, REMOVED_KEY, &id);
                    *turn.removed = true;
                    changed = true;
                }
                ApplyWork::Install { .. } => unreachable!("handled above"),
                // Not applied ahead: the entries follow, committed. Nothing waits to be
                // abandoned outside `Ahead::apply`.
                ApplyWork::Ahead(_) | ApplyWork::Abandon => {}
            }
        }
        if applies {
            shared.latency.record_since(0, super::latency::Stage::Apply, applying);
        }
        background.step(&mut store);
        let defragmenting = !background.defragmentations.is_empty();
        let durability = checkpoints.durability(changed, defragmenting);
        // When a durable checkpoint falls due with new changes, the batch is first made
        // visible and answered; the checkpoint (two fdatasyncs) follows, off its path.
        let deferred_durable = durability == mvcc::Durability::Durable && changed && !defragmenting;
        if changed || durability == mvcc::Durability::Durable {
            let first = if deferred_durable { mvcc::Durability::Visible } else { durability };
            let pages = checkpoint(&mut store, &shared, first).await;
            checkpoints.committed(first, requests, pages);
            if first == mvcc::Durability::Durable {
                let _ = events.unbounded_send(Event::Checkpointed(store.durable_consistent_index()));
            }
        }
        let applied = store.consistent_index();
        shared.applied_index.store(applied, Ordering::Release);
        for (reply, result) in replies.drain(..) {
            let _ = reply.send(result);
        }
        reads.retain_mut(|(index, waiting)| {
            if *index > applied {
                return true;
            }
            for reply in waiting.drain(..) {
                let _ = reply.send(Ok(Outcome::ReadBarrier));
            }
            false
        });
        background.answer_finished(&store, &shared);
        if deferred_durable {
            checkpoint(&mut store, &shared, mvcc::Durability::Durable).await;
            checkpoints.committed(mvcc::Durability::Durable, 0, 0);
            let _ = events.unbounded_send(Event::Checkpointed(store.durable_consistent_index()));
        }
        if checkpoints.writeback_due() {
            let job = store.writeback_job();
            glommio::spawn_local(async move { glommio::executor().spawn_blocking(move || job.run()).await }).detach();
        }
        if members_changed {
            let _ = events.unbounded_send(Event::MembersChanged);
        }
        if removed {
            // etcd stops a member that the cluster removed; its store says so durably.
            checkpoint(&mut store, &shared, mvcc::Durability::Durable).await;
            eprintln!("ringd: the member has been permanently removed from the cluster; stopping");
            std::process::exit(0);
        }
        glommio::yield_if_needed().await;
    }
}

/// Replaces the store with the db a leader's snapshot brought (DESIGN §5): the file moves
/// into place, the new store opens, and every core's reads go to it. Readers of the old
/// file keep their mapping until they finish. A db that cannot be installed stops the
/// member: its log was already replaced by the snapshot.
fn install(old: mvcc::Store, shared: &Shared, index: u64, path: &std::path::Path) -> mvcc::Store {
    let snap_dir = shared.config.data_dir.join("member").join("snap");
    let db_path = snap_dir.join("db");
    let fail = |what: String| -> ! {
        eprintln!("ringd: installing the leader's snapshot at index {index} failed: {what}; stopping");
        std::process::exit(1);
    };
    // Check the received file before it replaces anything.
    let incoming = mvcc::Store::open(path, mvcc::StoreOptions::default()).unwrap_or_else(|e| fail(e.to_string()));
    if incoming.consistent_index() < index {
        fail(format!("the db is at applied index {}", incoming.consistent_index()));
    }
    drop(incoming);
    drop(old);
    std::fs::rename(path, &db_path).unwrap_or_else(|e| fail(e.to_string()));
    if let Ok(dir) = std::fs::File::open(&snap_dir) {
        let _ = dir.sync_all();
    }
    let store = mvcc::Store::open(&db_path, mvcc::StoreOptions::default()).unwrap_or_else(|e| fail(e.to_string()));
    shared.replace_reader(store.reader());
    let (members, _) = stored_membership(&store);
    if !members.is_empty() {
        *shared.members.write().unwrap() = members;
    }
    shared.applied_index.store(store.consistent_index(), Ordering::Release);
    shared.db_size_bytes.store(store.size_bytes(), Ordering::Release);
    shared.db_size_in_use_bytes.store(store.size_in_use_bytes(), Ordering::Release);
    shared.watch.publish(store.current_revision().max(shared.watch.published()));
    eprintln!(
        "ringd: installed a snapshot from the leader at index {index} (db at applied index {})",
        store.consistent_index()
    );
    store
}

/// The lessor as the KV operations see it.
struct LessorHook<'a>(&'a mut Lessor);

impl kv::Leases for LessorHook<'_> {
    fn exists(&self, lease: i64) -> bool {
        self.0.contains(LeaseId(lease))
    }

    fn written(&mut self, key: &[u8], previous: i64, lease: i64) {
        self.0.key_written(key, LeaseId(previous), LeaseId(lease));
    }

    fn deleted(&mut self, key: &[u8], lease: i64) {
        self.0.key_deleted(key, LeaseId(lease));
    }
}

/// One turn of the apply task: what applying an entry touches.
struct Turn<'a> {
    store: &'a mut mvcc::Store,
    lessor: &'a RefCell<Lessor>,
    /// Set when this member applied its own removal.
    removed: &'a mut bool,
    shared: &'a Shared,
    waiters: &'a RefCell<Waiters>,
    replies: &'a mut Vec<(Reply, Result<Outcome, Status>)>,
    /// Client requests applied in this turn (`WRITEBACK_REQUESTS_PER_COMMIT_MIN`).
    requests: &'a mut u64,
    background: &'a mut Background,
}

impl Turn<'_> {
    /// Applies one committed entry; returns whether the membership changed.
    fn apply_entry(&mut self, entry: Entry) -> bool {
        let index = entry.index;
        let members_changed = match EntryType::try_from(entry.entry_type) {
            Ok(EntryType::EntryConfChange) => {
                let change = ConfChange::decode(&entry.data[..])
                    .unwrap_or_else(|error| fatal(&format!("entry {index}: undecodable conf change: {error}")));
                self.apply_conf_change(change);
                true
            }
            _ if entry.data.is_empty() => false,
            _ => {
                let batch = Batch::decode(&entry.data[..])
                    .unwrap_or_else(|error| fatal(&format!("entry {index}: undecodable request batch: {error}")));
                self.apply_batch(batch)
            }
        };
        self.store.set_consistent_index(index);
        members_changed
    }

    fn apply_batch(&mut self, batch: Batch) -> bool {
        let ours = batch.member_id == self.shared.member_id;
        let mut members_changed = false;
        for request in batch.requests {
            *self.requests += 1;
            let reply = if ours { self.waiters.borrow_mut().take(request.id) } else { None };
            let command = match request.op {
                Some(entry::Op::Put(request)) => Command::Put(request),
                Some(entry::Op::DeleteRange(request)) => Command::DeleteRange(request),
                Some(entry::Op::Txn(request)) => Command::Txn(request),
                Some(entry::Op::Compact(request)) => Command::Compact(request),
                Some(entry::Op::Alarm(request)) => Command::Alarm(request),
                Some(entry::Op::LeaseGrant(request)) => Command::LeaseGrant(request),
                Some(entry::Op::LeaseRevoke(request)) => Command::LeaseRevoke(request),
                Some(entry::Op::LeaseCheckpoints(checkpoints)) => {
                    let mut lessor = self.lessor.borrow_mut();
                    for checkpoint in checkpoints.checkpoints {
                        lessor.checkpoint(self.store, LeaseId(checkpoint.id), checkpoint.remaining_ttl);
                    }
                    continue;
                }
                Some(entry::Op::Refused(refusal)) => {
                    if let Some(reply) = reply {
                        let code = crate::client::code_from_number(refusal.code);
                        self.replies.push((reply, Err(Status::with_message(code, refusal.message))));
                    }
                    continue;
                }
                Some(entry::Op::Attributes(member)) => {
                    let mut members = self.shared.members.write().unwrap();
                    if let Some(known) = members.iter_mut().find(|m| m.id == member.id) {
                        known.name = member.name;
                        known.client_ur_ls = member.client_ur_ls;
                        self.store.aux_put(mvcc::AUX_TABLE_MEMBERS, &known.id.to_be_bytes(), &known.encode_to_vec());
                        members_changed = true;
                    }
                    continue;
                }
                None => continue,
            };
            let physical = matches!(&command, Command::Compact(request) if request.physical);
            let (result, _) = apply(self.store, &mut self.lessor.borrow_mut(), self.shared, command);
            match (reply, result) {
                (Some(reply), Ok(_)) if physical => self.background.physical_compactions.push(reply),
                (Some(reply), result) => self.replies.push((reply, result)),
                (None, _) => {}
            }
        }
        members_changed
    }

    /// Applies a membership change to the member table (Raft applied it to its own
    /// configuration when the entry was appended). A voter added through a learner stage
    /// (`ConfContext::as_voter`) is a voter in the table from the start, as etcd lists it.
    fn apply_conf_change(&mut self, change: ConfChange) {
        let context = ConfContext::decode(change.context.as_slice()).unwrap_or_default();
        let mut members = self.shared.members.write().unwrap();
        let position = members.iter().position(|m| m.id == change.node_id);
        match ConfChangeType::try_from(change.change_type) {
            Ok(ConfChangeType::ConfChangeAddNode) | Ok(ConfChangeType::ConfChangeAddLearnerNode) => {
                let learner =
                    change.change_type == ConfChangeType::ConfChangeAddLearnerNode as i32 && !context.as_voter;
                match position {
                    Some(position) => members[position].is_learner = learner,
                    None => {
                        let mut member = context.member.clone().unwrap_or_default();
                        member.id = change.node_id;
                        member.is_learner = learner;
                        members.push(member);
                    }
                }
            }
            Ok(ConfChangeType::ConfChangeRemoveNode) => {
                if let Some(position) = position {
                    members.remove(position);
                }
            }
            Ok(ConfChangeType::ConfChangeUpdateNode) => {
                if let (Some(position), Some(member)) = (position, &context.member) {
                    members[position].peer_ur_ls = member.peer_ur_ls.clone();
                }
            }
            Err(_) => {}
        }
        match members.iter().find(|m| m.id == change.node_id) {
            Some(member) => {
                self.store.aux_put(mvcc::AUX_TABLE_MEMBERS, &member.id.to_be_bytes(), &member.encode_to_vec())
            }
            None => {
                self.store.aux_delete(mvcc::AUX_TABLE_MEMBERS, &change.node_id.to_be_bytes());
            }
        }
        let cluster_id = self.shared.cluster_id();
        if cluster_id != 0 {
            self.store.aux_put(mvcc::AUX_TABLE_MEMBERS, CLUSTER_ID_KEY, &cluster_id.to_be_bytes());
        }
        if change.node_id == self.shared.member_id && !members.iter().any(|m| m.id == change.node_id) {
            self.store.aux_put(mvcc::AUX_TABLE_MEMBERS, REMOVED_KEY, &change.node_id.to_be_bytes());
            *self.removed = true;
        }
        let after = members.clone();
        drop(members);
        if context.requester == self.shared.member_id {
            if let Some(reply) = self.waiters.borrow_mut().take(context.request_id) {
                self.replies.push((reply, Ok(Outcome::Members(after))));
            }
        }
    }
}

/// Applying entries ahead of their commit (`ApplyWork::Ahead`): a leader's puts, deletes
/// and txns are applied and their pages written while the entries are written to its WAL
/// and replicated, so that once they commit only the publication and the replies are left.
/// Nothing of it is seen before then: readers and watchers see published commits only, the
/// lease table's keys change at publication (`DeferredLeases`), and the replies wait. If
/// they do not commit as applied (the leader was deposed, another leader's entries commit
/// at their indexes, or its snapshot arrives), the store drops the commit
/// (`Store::abort_commit`), the replies go back to wait for their entries, and whatever
/// commits is applied as any committed entry.
struct Ahead<'a> {
    store: &'a mut mvcc::Store,
    lessor: &'a RefCell<Lessor>,
    shared: &'a Shared,
    waiters: &'a RefCell<Waiters>,
    checkpoints: &'a mut Checkpoints,
}

/// The lease table as writes applied ahead see it: which leases exist is read at once (no
/// grant or revoke is applied ahead), keys are attached and detached at publication.
struct DeferredLeases<'a> {
    lessor: &'a Lessor,
    changes: &'a mut Vec<LeaseChange>,
}

enum LeaseChange {
    Written { key: Vec<u8>, previous: i64, lease: i64 },
    Deleted { key: Vec<u8>, lease: i64 },
}

impl kv::Leases for DeferredLeases<'_> {
    fn exists(&self, lease: i64) -> bool {
        self.lessor.contains(LeaseId(lease))
    }

    fn written(&mut self, key: &[u8], previous: i64, lease: i64) {
        if previous != 0 || lease != 0 {
            self.changes.push(LeaseChange::Written { key: key.to_vec(), previous, lease });
        }
    }

    fn deleted(&mut self, key: &[u8], lease: i64) {
        if lease != 0 {
            self.changes.push(LeaseChange::Deleted { key: key.to_vec(), lease });
        }
    }
}

impl Ahead<'_> {
    /// Applies `entries` and writes their pages, then takes work (from `batch`, then from
    /// the channel) until they arrive committed, and only then publishes the commit, makes
    /// its lease changes and answers. Work that came meanwhile is left in `batch`, in
    /// order, but for reads that the published state already answers; the rest (hash,
    /// defragment, reads past the published index, checkpoints) waits for the commit, or
    /// on a leader that lost its quorum until it steps down (an election timeout). If the
    /// entries are dropped, what committed of them is applied again, after that work.
    /// Entries that cannot go ahead (not the store's next ones, holding anything but puts,
    /// deletes and txns, or a write that would raise the NOSPACE alarm) are left to be
    /// applied when they commit. Returns false when the raft core is gone.
    async fn apply(
        &mut self,
        entries: Vec<Entry>,
        batch: &mut Vec<ApplyWork>,
        work: &mut mpsc::UnboundedReceiver<ApplyWork>,
    ) -> bool {
        let Some(batches) = self.writes_only(&entries) else {
            return true;
        };
        let applying = std::time::Instant::now();
        let mut changes = Vec::new();
        let mut requests = 0u64;
        let mut tally = super::metrics::Tally::default();
        // (request id, reply, result) of this member's clients.
        let mut answers = Vec::new();
        {
            let lessor = self.lessor.borrow();
            let mut leases = DeferredLeases { lessor: &lessor, changes: &mut changes };
            for (entry, writes) in entries.iter().zip(batches) {
                let ours = writes.member_id == self.shared.member_id;
                for request in writes.requests {
                    requests += 1;
                    let reply = if ours { self.waiters.borrow_mut().take(request.id) } else { None };
                    let command = match request.op {
                        Some(entry::Op::Put(request)) => Command::Put(request),
                        Some(entry::Op::DeleteRange(request)) => Command::DeleteRange(request),
                        Some(entry::Op::Txn(request)) => Command::Txn(request),
                        _ => continue,
                    };
                    let (result, _) = apply_write(self.store, &mut leases, self.shared, command, &mut tally);
                    if let Some(reply) = reply {
                        answers.push((request.id, reply, result));
                    }
                }
                self.store.set_consistent_index(entry.index);
            }
        }
        self.shared.latency.record_since(0, super::latency::Stage::Apply, applying);
        let writing = std::time::Instant::now();
        let (done, pages) = run_commit(self.store.prepare_speculative_commit()).await;
        let written = writing.elapsed();
        let mut arrived: std::collections::VecDeque<ApplyWork> = batch.drain(..).collect();
        let mut unchecked = entries[0].index;
        let dropped = loop {
            let next = match arrived.pop_front() {
                Some(next) => next,
                None => match work.next().await {
                    Some(next) => next,
                    None => return false,
                },
            };
            match next {
                ApplyWork::Entries(committed) => match Ahead::committed(&entries, &mut unchecked, committed, batch) {
                    Verdict::Waiting => {}
                    Verdict::Committed => break None,
                    Verdict::Replaced(rest) => {
                        arrived.push_front(ApplyWork::Entries(rest));
                        break Some("another leader's entries committed at their indexes");
                    }
                },
                // A read index the published state reaches needs nothing applied ahead.
                ApplyWork::Reads(index, waiting) if index <= self.shared.applied_index.load(Ordering::Acquire) => {
                    for reply in waiting {
                        let _ = reply.send(Ok(Outcome::ReadBarrier));
                    }
                }
                ApplyWork::Abandon => break Some("this member stopped leading"),
                install @ ApplyWork::Install { .. } => {
                    arrived.push_front(install);
                    break Some("a leader's snapshot arrived");
                }
                next => batch.push(next),
            }
        };
        // The store drops every entry applied ahead; those seen committed already (a
        // commit that reached part of them) are applied again, before what came after them
        // (and after the work that waited in `batch`: none of them was answered).
        let seen = (unchecked - entries[0].index) as usize;
        if dropped.is_some() && seen > 0 {
            arrived.push_front(ApplyWork::Entries(entries[..seen].to_vec()));
        }
        batch.extend(arrived);
        if let Some(why) = dropped {
            if let Err(error) = self.store.abort_commit(done) {
                fatal(&error);
            }
            eprintln!(
                "ringd: dropped entries {}..={}, applied ahead of their commit: {why}",
                entries[0].index,
                entries[entries.len() - 1].index
            );
            let mut waiters = self.waiters.borrow_mut();
            for (id, reply, _) in answers {
                waiters.insert(id, reply);
            }
            return true;
        }
        // The commit's stage is its own time: the page writes, then the publication.
        let started = std::time::Instant::now().checked_sub(written).unwrap_or_else(std::time::Instant::now);
        publish_commit(self.store, self.shared, done, mvcc::Durability::Visible, started);
        self.shared.counts.add(super::RAFT_CORE, &tally);
        let mut lessor = self.lessor.borrow_mut();
        for change in changes {
            match change {
                LeaseChange::Written { key, previous, lease } => {
                    lessor.key_written(&key, LeaseId(previous), LeaseId(lease))
                }
                LeaseChange::Deleted { key, lease } => lessor.key_deleted(&key, LeaseId(lease)),
            }
        }
        drop(lessor);
        self.checkpoints.committed(mvcc::Durability::Visible, requests, pages);
        self.shared.applied_index.store(self.store.consistent_index(), Ordering::Release);
        for (_, reply, result) in answers {
            let _ = reply.send(result);
        }
        true
    }

    /// The request batches of `entries` (an empty one for an empty entry, a leader's
    /// first of its term) if they can be applied ahead: the store's next entries, holding
    /// only puts, deletes and txns.
    fn writes_only(&self, entries: &[Entry]) -> Option<Vec<Batch>> {
        let next = self.store.consistent_index() + 1;
        if entries.first().is_none_or(|first| first.index != next) {
            return None;
        }
        // A write that would raise the NOSPACE alarm waits for its commit: the alarm is seen
        // by every core at once.
        let trips_quota =
            |cost| !self.shared.alarm_no_space.load(Ordering::Acquire) && over_quota(self.store, self.shared, cost);
        let mut batches = Vec::with_capacity(entries.len());
        for entry in entries {
            let batch = if entry.data.is_empty() { Batch::default() } else { Batch::decode(&entry.data[..]).ok()? };
            let writes = batch.requests.iter().all(|request| match &request.op {
                Some(entry::Op::Put(put)) => !trips_quota(put_quota_cost(put)),
                Some(entry::Op::Txn(txn)) => !trips_quota(txn_quota_cost(txn)),
                Some(entry::Op::DeleteRange(_)) => true,
                _ => false,
            });
            if !writes {
                return None;
            }
            batches.push(batch);
        }
        Some(batches)
    }

    /// Takes committed entries while entries applied ahead wait for them. `unchecked` is
    /// the first of those not yet seen committed; each must arrive in turn, at the term it
    /// was applied at (an index and a term name one entry: Raft's log matching). Entries
    /// past the last one applied ahead go to `batch`. An entry of another term at one of
    /// their indexes means another leader's entries replaced them: the store drops them
    /// all, and `Replaced` carries the committed entries from that one on (those before it
    /// are the ones applied ahead up to `unchecked`).
    fn committed(ahead: &[Entry], unchecked: &mut u64, committed: Vec<Entry>, batch: &mut Vec<ApplyWork>) -> Verdict {
        let first = ahead[0].index;
        let last = ahead[ahead.len() - 1].index;
        let mut later = Vec::new();
        let mut committed = committed.into_iter();
        while let Some(entry) = committed.next() {
            if entry.index < first {
                continue;
            }
            if *unchecked > last {
                later.push(entry);
                continue;
            }
            if entry.index != *unchecked {
                fatal(&format!(
                    "entry {} committed where entry {} applied ahead of its commit was expected",
                    entry.index, *unchecked
                ));
            }
            if ahead[(*unchecked - first) as usize].term != entry.term {
                let mut rest = vec![entry];
                rest.extend(committed);
                return Verdict::Replaced(rest);
            }
            *unchecked += 1;
        }
        if !later.is_empty() {
            batch.push(ApplyWork::Entries(later));
        }
        if *unchecked > last {
            Verdict::Committed
        } else {
            Verdict::Waiting
        }
    }
}

/// What committed entries say of the entries applied ahead.
enum Verdict {
    /// Some are still to commit.
    Waiting,
    /// All of them committed as applied.
    Committed,
    /// Another entry committed in place of one: it and the entries after it.
    Replaced(Vec<Entry>),
}

/// A bound on defragmentation steps: each moves a fixed number of pages, so twice the page
/// count is more than enough unless old snapshots pin pages (then it gives up, best effort).
fn defragment_steps_max(store: &mvcc::Store) -> usize {
    2 * (store.size_bytes() / mvcc::page::PAGE_SIZE as u64) as usize + 8
}

/// When the store's visible commits become a durable checkpoint (DESIGN §5: durability
/// comes from the WAL; the store is checkpointed periodically, so that a restart replays a
/// bounded WAL suffix).
struct Checkpoints {
    last_durable: std::time::Instant,
    /// Visible commits since the last durable checkpoint.
    visible_since: u64,
    /// When the current writeback window began (`WRITEBACK_INTERVAL`; a writeback or a
    /// durable checkpoint begins one too), and what its visible commits carried.
    window_started: std::time::Instant,
    window: WritebackWindow,
}

/// The visible commits of one writeback window: how many, the client requests they carried
/// and the pages they wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct WritebackWindow {
    commits: u64,
    requests: u64,
    pages: u64,
}

/// Pages a visible commit may pwrite on the executor itself (1 MiB).
const INLINE_COMMIT_PAGES_MAX: usize = 256;
/// A durable checkpoint at least this often while there are visible commits...
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// ...and after at most this many visible commits.
const CHECKPOINT_VISIBLE_COMMITS_MAX: u64 = 1000;
/// How often the pages visible commits wrote are queued for writeback, on the blocking pool.
/// Without it, a checkpoint's fdatasync wrote a second's worth of pages while the apply loop
/// waited: 14 to 16 ms at the median and up to 33 ms at 1000 writing clients (2026-11-30), 1
/// to 3 ms with it. Inline after each commit instead, it cost each commit 30 to 50 µs.
const WRITEBACK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// The writeback runs only after windows whose visible commits were those of a loaded
/// member: at least this many client requests per commit on average (100 clients' carry
/// about 14, 1000 clients' hundreds)...
const WRITEBACK_REQUESTS_PER_COMMIT_MIN: u64 = 4;
/// ...or at least this many pages written per commit (a client of large txns). A lone
/// client's puts carry one request and write about six pages each, and there the
/// writeback's page writes slowed the WAL writes that followed them (the device's flush takes
/// everything written before it): in a recording, 25 of the slowest 1% of one client's WAL
/// writes had store page writes just before or during them, against 9 in the fastest half.
/// Without the writeback at one client (2026-11-30, eighth session, 23 alternated pairs) a
/// put's p99 was lower in 21 pairs (792 against 1,060 µs on average over ten), puts/s the
/// same; its checkpoints take 3.6 to 4.4 ms at the median instead of 1.2 to 1.6.
const WRITEBACK_PAGES_PER_COMMIT_MIN: u64 = 16;

impl WritebackWindow {
    /// Whether these commits were under enough load to need the writeback.
    fn wants_writeback(&self) -> bool {
        self.commits > 0
            && (self.requests >= WRITEBACK_REQUESTS_PER_COMMIT_MIN * self.commits
                || self.pages >= WRITEBACK_PAGES_PER_COMMIT_MIN * self.commits)
    }
}

impl Checkpoints {
    fn new() -> Checkpoints {
        let now = std::time::Instant::now();
        Checkpoints { last_durable: now, visible_since: 0, window_started: now, window: WritebackWindow::default() }
    }

    /// Whether to start writing back what visible commits wrote: at the end of each
    /// `WRITEBACK_INTERVAL` window whose commits were under load (`wants_writeback`, which
    /// needs a commit in the window, so a window with nothing written never writes back).
    fn writeback_due(&mut self) -> bool {
        if self.window_started.elapsed() < WRITEBACK_INTERVAL {
            return false;
        }
        let due = self.window.wants_writeback();
        self.new_window();
        due
    }

    fn new_window(&mut self) {
        self.window_started = std::time::Instant::now();
        self.window = WritebackWindow::default();
    }

    /// How long the apply task may sleep before a durable checkpoint is due (None: none is).
    fn due_in(&self) -> Option<std::time::Duration> {
        (self.visible_since > 0).then(|| CHECKPOINT_INTERVAL.saturating_sub(self.last_durable.elapsed()))
    }

    /// Durable when due, or while a defragmentation needs its checkpoints on disk (its file
    /// can shrink only below what the durable metas reach); otherwise only visible.
    fn durability(&self, changed: bool, defragmenting: bool) -> mvcc::Durability {
        let due = self.visible_since > 0
            && (self.last_durable.elapsed() >= CHECKPOINT_INTERVAL
                || self.visible_since >= CHECKPOINT_VISIBLE_COMMITS_MAX);
        if defragmenting || due || (changed && self.visible_since + 1 >= CHECKPOINT_VISIBLE_COMMITS_MAX) {
            mvcc::Durability::Durable
        } else {
            mvcc::Durability::Visible
        }
    }

    /// A commit was made; a visible one carried `requests` client requests and wrote `pages`.
    fn committed(&mut self, durability: mvcc::Durability, requests: u64, pages: u64) {
        match durability {
            mvcc::Durability::Durable => {
                self.last_durable = std::time::Instant::now();
                self.visible_since = 0;
                self.new_window();
            }
            mvcc::Durability::Visible => {
                self.visible_since += 1;
                self.window.commits += 1;
                self.window.requests += requests;
                self.window.pages += pages;
            }
        }
    }
}

enum Wake {
    Work(ApplyWork),
    CheckpointDue,
    Closed,
}

/// The next piece of work, or the moment a durable checkpoint falls due.
async fn next_work(work: &mut mpsc::UnboundedReceiver<ApplyWork>, due_in: Option<std::time::Duration>) -> Wake {
    let Some(due_in) = due_in else {
        return work.next().await.map_or(Wake::Closed, Wake::Work);
    };
    let timer = glommio::timer::sleep(due_in);
    futures::pin_mut!(timer);
    match futures::future::select(work.next(), timer).await {
        futures::future::Either::Left((next, _)) => next.map_or(Wake::Closed, Wake::Work),
        futures::future::Either::Right(_) => Wake::CheckpointDue,
    }
}

/// Commits the applied batch: visible to every core's readers (pages pwritten, meta
/// published; the Raft WAL holds the durability), or a durable checkpoint (fdatasync, meta
/// written). The job runs on the blocking pool so the executor keeps serving. A failure ends
/// the process before any reply of the batch is sent. Returns the pages the commit wrote.
async fn checkpoint(store: &mut mvcc::Store, shared: &Shared, durability: mvcc::Durability) -> u64 {
    let started = std::time::Instant::now();
    let (done, pages) = run_commit(store.prepare_commit_with(durability)).await;
    publish_commit(store, shared, done, durability, started);
    pages
}

/// A commit's first half, the prepared commit's job: its pages written (and synced, for a
/// durable one). Nothing is visible to readers yet, and the store takes no write until
/// `publish_commit`.
async fn run_commit(
    prepared: Result<mvcc::CommitJob, mvcc::StoreError>,
) -> (Result<mvcc::CommitDone, mvcc::StoreError>, u64) {
    let job = match prepared {
        Ok(job) => job,
        Err(error) => fatal(&error),
    };
    let pages = job.page_count();
    // A small visible commit (pwrites into the page cache) runs inline: cheaper than the
    // hand-off to the blocking pool. Anything that syncs, or many pages, goes there.
    let done = if !job.is_durable() && pages <= INLINE_COMMIT_PAGES_MAX {
        job.run()
    } else {
        glommio::executor().spawn_blocking(move || job.run()).await
    };
    (done, pages as u64)
}

/// A commit's second half: published to every core's readers and watchers.
fn publish_commit(
    store: &mut mvcc::Store,
    shared: &Shared,
    done: Result<mvcc::CommitDone, mvcc::StoreError>,
    durability: mvcc::Durability,
    started: std::time::Instant,
) {
    if let Err(error) = store.finish_commit(done) {
        fatal(&error);
    }
    shared.db_size_bytes.store(store.size_bytes(), Ordering::Release);
    shared.db_size_in_use_bytes.store(store.size_in_use_bytes(), Ordering::Release);
    shared.watch.publish(store.current_revision());
    let stage = match durability {
        mvcc::Durability::Visible => super::latency::Stage::StoreCommit,
        mvcc::Durability::Durable => super::latency::Stage::Checkpoint,
    };
    shared.latency.record_since(0, stage, started);
}

fn fatal(error: &dyn std::fmt::Display) -> ! {
    eprintln!("ringd: applying to the store failed: {error}; stopping without acknowledging the batch");
    std::process::exit(1);
}

/// Applies one command; returns its outcome and whether it changed the store.
fn apply(
    store: &mut mvcc::Store,
    lessor: &mut Lessor,
    shared: &Shared,
    command: Command,
) -> (Result<Outcome, Status>, bool) {
    let mut leases = LessorHook(lessor);
    match command {
        Command::Put(_) | Command::DeleteRange(_) | Command::Txn(_) => {
            // Applied committed: counted at once.
            let mut tally = super::metrics::Tally::default();
            let applied = apply_write(store, &mut leases, shared, command, &mut tally);
            shared.counts.add(super::RAFT_CORE, &tally);
            applied
        }
        Command::Compact(request) => {
            let result = store.compact(request.revision).map_err(kv::mvcc_status);
            let header = Some(shared.header(store.current_revision()));
            (result.map(|()| Outcome::Compact(pb::CompactionResponse { header })), true)
        }
        Command::Defragment => unreachable!("the apply loop schedules defragmentation"),
        Command::LeaseGrant(request) => {
            let now = shared.started.elapsed();
            let result = match leases.0.grant(store, LeaseId(request.id), request.ttl, now) {
                Ok(granted) => Ok(Outcome::LeaseGrant(pb::LeaseGrantResponse {
                    header: Some(shared.header(store.current_revision())),
                    id: granted.id.0,
                    ttl: granted.ttl_seconds,
                    error: String::new(),
                })),
                Err(GrantError::Exists) => Err(errors::LEASE_EXIST),
                Err(GrantError::TtlTooLarge) => Err(errors::LEASE_TTL_TOO_LARGE),
                Err(GrantError::NotFound) => Err(errors::LEASE_NOT_FOUND),
            };
            (result, true)
        }
        Command::LeaseRevoke(request) => {
            let mut txn = store.write();
            let keys = match leases.0.revoke(&mut txn, LeaseId(request.id)) {
                Ok(keys) => keys,
                Err(_) => {
                    txn.end();
                    return (Err(errors::LEASE_NOT_FOUND), false);
                }
            };
            for key in keys {
                for kv in txn.delete_range(&key, &[]) {
                    kv::Leases::deleted(&mut leases, &kv.key, kv.lease);
                }
            }
            let revision = txn.end();
            (Ok(Outcome::LeaseRevoke(pb::LeaseRevokeResponse { header: Some(shared.header(revision)) })), true)
        }
        Command::ReadBarrier
        | Command::ConfChange(..)
        | Command::MoveLeader(_)
        | Command::LeaseRenew(_)
        | Command::LeaseTimeToLive(_)
        | Command::LeaseLeases => {
            unreachable!("the raft core handles reads, membership changes, leader moves and lease reads")
        }
        Command::Hash => {
            let header = Some(shared.header(store.current_revision()));
            (Ok(Outcome::Hash(pb::HashResponse { header, hash: store.hash() })), false)
        }
        Command::HashKv(request) => {
            let header = Some(shared.header(store.current_revision()));
            let result = store.hash_kv(request.revision).map_err(kv::mvcc_status);
            (
                result.map(|(hash, compact_revision, hash_revision)| {
                    Outcome::HashKv(pb::HashKvResponse { header, hash, compact_revision, hash_revision })
                }),
                false,
            )
        }
        Command::Alarm(request) => (Ok(Outcome::Alarm(alarm(store, shared, &request))), false),
    }
}

/// A put, delete or txn: the store, and the lease table's keys through `leases`; its
/// operations counted in `tally`.
fn apply_write(
    store: &mut mvcc::Store,
    leases: &mut dyn kv::Leases,
    shared: &Shared,
    command: Command,
    tally: &mut super::metrics::Tally,
) -> (Result<Outcome, Status>, bool) {
    match command {
        Command::Put(request) => {
            if let Err(status) = check_quota(store, shared, put_quota_cost(&request)) {
                return (Err(status), false);
            }
            let mut txn = store.write();
            let result = kv::put(&mut txn, leases, &request);
            let revision = txn.end();
            if result.is_ok() {
                tally.put(&request);
            }
            (
                result.map(|mut r| {
                    r.header = Some(shared.header(revision));
                    Outcome::Put(r)
                }),
                true,
            )
        }
        Command::DeleteRange(request) => {
            let mut txn = store.write();
            let mut response = kv::delete_range(&mut txn, leases, &request);
            let revision = txn.end();
            tally.delete();
            response.header = Some(shared.header(revision));
            (Ok(Outcome::DeleteRange(response)), true)
        }
        Command::Txn(request) => {
            if let Err(status) = check_quota(store, shared, txn_quota_cost(&request)) {
                return (Err(status), false);
            }
            let mut txn = store.write();
            let result = kv::txn_write(&mut txn, leases, &request);
            let revision = txn.end();
            if let Ok(response) = &result {
                tally.txn(&request, response);
            }
            (
                result.map(|mut r| {
                    r.header = Some(shared.header(revision));
                    Outcome::Txn(r)
                }),
                true,
            )
        }
        _ => unreachable!("only puts, deletes and txns are writes"),
    }
}

/// etcd's quota: a write that would grow the db past --quota-backend-bytes raises the
/// NOSPACE alarm and is refused; so is every such write while the alarm stands.
fn check_quota(store: &mvcc::Store, shared: &Shared, cost_bytes: u64) -> Result<(), Status> {
    if shared.alarm_no_space.load(Ordering::Acquire) {
        return Err(errors::NO_SPACE);
    }
    if over_quota(store, shared, cost_bytes) {
        shared.alarm_no_space.store(true, Ordering::Release);
        return Err(errors::NO_SPACE);
    }
    Ok(())
}

fn over_quota(store: &mvcc::Store, shared: &Shared, cost_bytes: u64) -> bool {
    store.size_bytes() + cost_bytes + QUOTA_KEY_OVERHEAD_BYTES > shared.config.quota_backend_bytes
}

/// What a put or a txn costs in etcd's quota check.
fn put_quota_cost(request: &pb::PutRequest) -> u64 {
    (request.key.len() + request.value.len()) as u64
}

fn txn_quota_cost(request: &pb::TxnRequest) -> u64 {
    prost::Message::encoded_len(request) as u64
}

fn alarm(store: &mvcc::Store, shared: &Shared, request: &pb::AlarmRequest) -> pb::AlarmResponse {
    let no_space = pb::AlarmMember { member_id: shared.member_id, alarm: pb::AlarmType::Nospace as i32 };
    let wants_no_space = request.alarm == pb::AlarmType::None as i32 || request.alarm == pb::AlarmType::Nospace as i32;
    let mut alarms = Vec::new();
    match alarm_request::AlarmAction::try_from(request.action).unwrap_or(alarm_request::AlarmAction::Get) {
        alarm_request::AlarmAction::Get => {
            if wants_no_space && shared.alarm_no_space.load(Ordering::Acquire) {
                alarms.push(no_space);
            }
        }
        alarm_request::AlarmAction::Activate => {
            if request.alarm == pb::AlarmType::Nospace as i32 {
                shared.alarm_no_space.store(true, Ordering::Release);
                alarms.push(no_space);
            }
        }
        alarm_request::AlarmAction::Deactivate => {
            if wants_no_space && shared.alarm_no_space.swap(false, Ordering::AcqRel) {
                alarms.push(no_space);
            }
        }
    }
    pb::AlarmResponse { header: Some(shared.header(store.current_revision())), alarms }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        indexes.map(|index| Entry { index, term, ..Entry::default() }).collect()
    }

    fn indexes(work: &[ApplyWork]) -> Vec<Vec<u64>> {
        let list = |entries: &Vec<Entry>| entries.iter().map(|entry| entry.index).collect();
        work.iter()
            .map(|work| if let ApplyWork::Entries(entries) = work { list(entries) } else { Vec::new() })
            .collect()
    }

    /// A put of `key` by this member's client `id`, as the entry at `index` of term 2.
    fn put_entry(member_id: u64, index: u64, id: u64, key: &str) -> Entry {
        let put = pb::PutRequest { key: key.as_bytes().to_vec(), value: b"v".to_vec(), ..Default::default() };
        let batch = Batch { member_id, requests: vec![entry::Request { id, op: Some(entry::Op::Put(put)) }] };
        let data = batch.encode_to_vec().into();
        Entry { index, term: 2, entry_type: EntryType::EntryNormal as i32, data }
    }

    /// Two entries applied ahead; the first commits, then the leader is deposed before the
    /// second does. The store drops both (the raft core never sends the first again), and
    /// the first comes back, first in the batch, to be applied as a committed entry; both
    /// clients wait again, unanswered.
    #[test]
    fn entries_dropped_after_a_commit_reached_part_of_them_give_that_part_back_to_apply() {
        let directory = tempfile::tempdir().expect("tempdir");
        let data_dir = directory.path().to_path_buf();
        LocalExecutorBuilder::new(Placement::Unbound).io_memory(64 * 1024).make().expect("executor").run(async move {
            use clap::Parser;
            let flags = super::super::Flags::try_parse_from(["ringd", "--data-dir", data_dir.to_str().unwrap()]);
            let config = flags.expect("flags").into_config().expect("config");
            let mut store = mvcc::Store::open(&data_dir.join("db"), mvcc::StoreOptions::default()).expect("store");
            let shared = Shared::new(config, &store, 1, 1, Vec::new());
            let lessor_config =
                crate::lease::LessorConfig::new(shared.config.heartbeat_interval, shared.config.election_ticks);
            let lessor = RefCell::new(Lessor::load(&mut store, lessor_config).expect("lessor"));
            let waiters = RefCell::new(Waiters::default());
            let mut checkpoints = Checkpoints::new();
            let (revision, index) = (store.current_revision(), store.consistent_index());
            let mut answers = Vec::new();
            for id in [1, 2] {
                let (reply, answer) = futures::channel::oneshot::channel();
                waiters.borrow_mut().insert(id, reply);
                answers.push(answer);
            }
            let ahead = vec![put_entry(1, index + 1, 1, "a"), put_entry(1, index + 2, 2, "b")];
            let (work, mut received) = mpsc::unbounded();
            work.unbounded_send(ApplyWork::Entries(ahead[..1].to_vec())).unwrap();
            work.unbounded_send(ApplyWork::Abandon).unwrap();
            let mut batch = Vec::new();
            let mut applying = Ahead {
                store: &mut store,
                lessor: &lessor,
                shared: &shared,
                waiters: &waiters,
                checkpoints: &mut checkpoints,
            };
            assert!(applying.apply(ahead.clone(), &mut batch, &mut received).await);
            assert_eq!(indexes(&batch), [vec![index + 1]], "the committed one, to apply again");
            assert_eq!((store.current_revision(), store.consistent_index()), (revision, index));
            assert_eq!(shared.applied_index.load(Ordering::Acquire), index);
            store.check().expect("every page reachable or free, once");
            for (id, answer) in [1, 2].into_iter().zip(answers.iter_mut()) {
                assert!(matches!(answer.try_recv(), Ok(None)), "client {id} was not answered");
                assert!(waiters.borrow_mut().take(id).is_some(), "client {id} waits again");
            }
        });
    }

    #[test]
    fn entries_applied_ahead_commit_in_turn_and_later_ones_wait_in_the_batch() {
        let ahead = entries(5..=7, 2);
        let (mut unchecked, mut batch) = (5, Vec::new());
        let mut committed = entries(4..=4, 1);
        committed.extend(entries(5..=5, 2));
        assert!(matches!(Ahead::committed(&ahead, &mut unchecked, committed, &mut batch), Verdict::Waiting));
        assert_eq!(unchecked, 6);
        assert!(batch.is_empty());
        let verdict = Ahead::committed(&ahead, &mut unchecked, entries(6..=9, 2), &mut batch);
        assert!(matches!(verdict, Verdict::Committed));
        assert_eq!(indexes(&batch), [vec![8, 9]]);
    }

    #[test]
    fn an_entry_of_another_term_replaces_those_applied_ahead_from_its_index() {
        let ahead = entries(5..=7, 2);
        let (mut unchecked, mut batch) = (5, Vec::new());
        let mut committed = entries(5..=5, 2);
        committed.extend(entries(6..=8, 3));
        match Ahead::committed(&ahead, &mut unchecked, committed, &mut batch) {
            Verdict::Replaced(rest) => {
                assert_eq!(
                    rest.iter().map(|entry| (entry.index, entry.term)).collect::<Vec<_>>(),
                    [(6, 3), (7, 3), (8, 3)]
                )
            }
            _ => panic!("entries of term 3 at indexes 6 to 8 replace those applied ahead at term 2"),
        }
        // Entry 5 committed as applied: `Ahead::apply` applies it again with the rest.
        assert_eq!(unchecked, 6);
        assert!(batch.is_empty());
    }

    fn window(commits: u64, requests: u64, pages: u64) -> WritebackWindow {
        WritebackWindow { commits, requests, pages }
    }

    #[test]
    fn the_writeback_wants_commits_of_a_loaded_member() {
        // One client's puts: one request and about six pages per commit.
        assert!(!window(250, 250, 1500).wants_writeback());
        assert!(!window(1000, 3000, 15 * 1000).wants_writeback());
        // 100 clients (about 14 requests per commit), 1000 clients (hundreds).
        assert!(window(166, 14 * 166, 5 * 166).wants_writeback());
        assert!(window(40, 300 * 40, 5 * 40).wants_writeback());
        // One client of large txns: one request, many pages per commit.
        assert!(window(50, 50, 200 * 50).wants_writeback());
        assert!(!WritebackWindow::default().wants_writeback());
    }

    /// A window past `WRITEBACK_INTERVAL` starts a writeback only if its commits were under
    /// load and wrote pages; either way a new window begins.
    #[test]
    fn a_writeback_falls_due_at_the_end_of_a_loaded_window_only() {
        let mut checkpoints = Checkpoints::new();
        for _ in 0..100 {
            checkpoints.committed(mvcc::Durability::Visible, 1, 6);
        }
        assert!(!checkpoints.writeback_due(), "the window is not over");
        checkpoints.window_started -= WRITEBACK_INTERVAL;
        assert!(!checkpoints.writeback_due(), "one request and six pages per commit");
        assert_eq!(checkpoints.window, WritebackWindow::default(), "a new window");
        for _ in 0..10 {
            checkpoints.committed(mvcc::Durability::Visible, 50, 6);
        }
        checkpoints.window_started -= WRITEBACK_INTERVAL;
        assert!(checkpoints.writeback_due(), "fifty requests per commit");
        checkpoints.window_started -= WRITEBACK_INTERVAL;
        assert!(!checkpoints.writeback_due(), "nothing written since");
        checkpoints.committed(mvcc::Durability::Visible, 50, 6);
        checkpoints.committed(mvcc::Durability::Durable, 0, 0);
        checkpoints.window_started -= WRITEBACK_INTERVAL;
        assert!(!checkpoints.writeback_due(), "the durable checkpoint wrote everything");
    }
}
