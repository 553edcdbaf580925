//! The cores and the writer. Core 0 owns the store's single writer: it drains every queued
//! write into one batch, applies each as one etcd revision, checkpoints once per batch, and
//! answers. Requests that arrive during a checkpoint form the next batch (group commit).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::StreamExt;
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

use super::{kv, Proposal, Shared, StartError, BATCH_REQUESTS_MAX, QUEUE_REQUESTS_MAX};
use crate::api::errors::{self, Status};
use crate::api::pb::etcdserverpb::{self as pb, alarm_request};
use crate::mvcc;

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
}

/// Starts one pinned executor per core, waits until each has bound the client port, then
/// serves until the process is killed.
pub fn start_cores(shared: Arc<Shared>, store: mvcc::Store) -> Result<(), StartError> {
    let cores = shared.config.cores;
    let (ready_sender, ready) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 1..cores {
        let (sender, receiver) = shared_channel::new_bounded::<Proposal>(QUEUE_REQUESTS_MAX);
        senders.push(sender);
        receivers.push(receiver);
    }
    let mut handles = Vec::new();
    let writer_shared = shared.clone();
    let writer_ready = ready_sender.clone();
    handles.push(
        builder(0)
            .spawn(move || async move { run_writer_core(writer_shared, store, receivers, writer_ready).await })
            .map_err(|e| StartError(format!("cannot start core 0: {e}")))?,
    );
    for (index, sender) in senders.into_iter().enumerate() {
        let core_shared = shared.clone();
        let core_ready = ready_sender.clone();
        handles.push(
            builder(index + 1)
                .spawn(move || async move { run_client_core(core_shared, index + 1, sender, core_ready).await })
                .map_err(|e| StartError(format!("cannot start core {}: {e}", index + 1)))?,
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
    let urls: Vec<String> = shared.config.listen_client_addresses.iter().map(|a| format!("http://{a}")).collect();
    eprintln!(
        "ringd: ready to serve client requests on {} ({} cores, data dir {})",
        urls.join(","),
        cores,
        shared.config.data_dir.display()
    );
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

fn builder(core: usize) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Fixed(core))
        .name(&format!("ringd-core-{core}"))
        .io_memory(IO_MEMORY_BYTES)
        .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
}

/// Binds every listen address on this core and spawns their accept loops.
fn serve_clients(core: std::rc::Rc<super::Core>, addresses: &[SocketAddr]) -> Result<(), String> {
    for &address in addresses {
        let listener =
            crate::api::listener::bind(address).map_err(|e| format!("cannot listen on http://{address}: {e}"))?;
        glommio::spawn_local(crate::api::listener::accept_loop(listener, core.clone())).detach();
    }
    Ok(())
}

async fn run_writer_core(
    shared: Arc<Shared>,
    store: mvcc::Store,
    receivers: Vec<SharedReceiver<Proposal>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
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
    let writer = glommio::spawn_local(writer_loop(store, queue, shared.clone()));
    let core = super::local_core(shared.clone(), sender);
    glommio::spawn_local(super::compactor::run(core.clone(), shared.config.auto_compaction)).detach();
    let _ = ready.send(serve_clients(core, &shared.config.listen_client_addresses));
    writer.await;
}

async fn run_client_core(
    shared: Arc<Shared>,
    index: usize,
    sender: SharedSender<Proposal>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let sender = sender.connect().await;
    let core = super::remote_core(shared.clone(), index, sender);
    let _ = ready.send(serve_clients(core, &shared.config.listen_client_addresses));
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

type Reply = futures::channel::oneshot::Sender<Result<Outcome, Status>>;

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
                let _ = reply.send(Ok(Outcome::Compact(pb::CompactionResponse { header: header.clone() })));
            }
        }
        if self.defragment_trailing_checkpoints > DEFRAGMENT_TRAILING_CHECKPOINTS {
            self.defragment_trailing_checkpoints = 0;
            for reply in self.defragmentations.drain(..) {
                let _ = reply.send(Ok(Outcome::Defragment(pb::DefragmentResponse { header: header.clone() })));
            }
        }
    }
}

async fn writer_loop(mut store: mvcc::Store, mut queue: mpsc::Receiver<Proposal>, shared: Arc<Shared>) {
    let mut batch: Vec<Proposal> = Vec::with_capacity(BATCH_REQUESTS_MAX);
    let mut replies = Vec::with_capacity(BATCH_REQUESTS_MAX);
    let mut background = Background::default();
    loop {
        if !background.busy(&store) {
            match queue.next().await {
                Some(first) => batch.push(first),
                None => return,
            }
        }
        while batch.len() < BATCH_REQUESTS_MAX {
            match queue.try_recv() {
                Ok(proposal) => batch.push(proposal),
                _ => break,
            }
        }
        let mut changed = background.busy(&store);
        for proposal in batch.drain(..) {
            match proposal.command {
                Command::Defragment => {
                    if background.defragmentations.is_empty() {
                        background.defragment_steps_left = defragment_steps_max(&store);
                    }
                    background.defragmentations.push(proposal.reply);
                    changed = true;
                }
                Command::Compact(request) if request.physical => {
                    let (result, dirty) = apply(&mut store, &shared, Command::Compact(request));
                    changed |= dirty;
                    match result {
                        Ok(_) => background.physical_compactions.push(proposal.reply),
                        Err(status) => replies.push((proposal.reply, Err(status))),
                    }
                }
                command => {
                    let (result, dirty) = apply(&mut store, &shared, command);
                    changed |= dirty;
                    replies.push((proposal.reply, result));
                }
            }
        }
        background.step(&mut store);
        if changed {
            checkpoint(&mut store, &shared).await;
        }
        for (reply, result) in replies.drain(..) {
            let _ = reply.send(result);
        }
        background.answer_finished(&store, &shared);
        glommio::yield_if_needed().await;
    }
}

/// A bound on defragmentation steps: each moves a fixed number of pages, so twice the page
/// count is more than enough unless old snapshots pin pages (then it gives up, best effort).
fn defragment_steps_max(store: &mvcc::Store) -> usize {
    2 * (store.size_bytes() / mvcc::page::PAGE_SIZE as u64) as usize + 8
}

/// Makes the batch durable: pages written and synced, then the meta switched, on the
/// blocking pool so the executor keeps serving. A failure ends the process before any reply
/// of the batch is sent: nothing unsynced is ever acknowledged.
async fn checkpoint(store: &mut mvcc::Store, shared: &Shared) {
    store.set_consistent_index(shared.applied_index.load(Ordering::Acquire));
    let job = match store.prepare_commit() {
        Ok(job) => job,
        Err(error) => fatal(&error),
    };
    let done = glommio::executor().spawn_blocking(move || job.run()).await;
    if let Err(error) = store.finish_commit(done) {
        fatal(&error);
    }
    shared.db_size_bytes.store(store.size_bytes(), Ordering::Release);
    shared.db_size_in_use_bytes.store(store.size_in_use_bytes(), Ordering::Release);
    shared.watch.publish(store.current_revision());
}

fn fatal(error: &dyn std::fmt::Display) -> ! {
    eprintln!("ringd: checkpoint of the store failed: {error}; stopping without acknowledging the batch");
    std::process::exit(1);
}

/// Applies one command; returns its outcome and whether it changed the store.
fn apply(store: &mut mvcc::Store, shared: &Shared, command: Command) -> (Result<Outcome, Status>, bool) {
    shared.applied_index.fetch_add(1, Ordering::AcqRel);
    match command {
        Command::Put(request) => {
            if let Err(status) = check_quota(store, shared, (request.key.len() + request.value.len()) as u64) {
                return (Err(status), false);
            }
            let mut txn = store.write();
            let result = kv::put(&mut txn, &request);
            let revision = txn.end();
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
            let mut response = kv::delete_range(&mut txn, &request);
            let revision = txn.end();
            response.header = Some(shared.header(revision));
            (Ok(Outcome::DeleteRange(response)), true)
        }
        Command::Txn(request) => {
            if let Err(status) = check_quota(store, shared, prost::Message::encoded_len(&request) as u64) {
                return (Err(status), false);
            }
            let mut txn = store.write();
            let result = kv::txn_write(&mut txn, &request);
            let revision = txn.end();
            (
                result.map(|mut r| {
                    r.header = Some(shared.header(revision));
                    Outcome::Txn(r)
                }),
                true,
            )
        }
        Command::Compact(request) => {
            let result = store.compact(request.revision).map_err(kv::mvcc_status);
            let header = Some(shared.header(store.current_revision()));
            (result.map(|()| Outcome::Compact(pb::CompactionResponse { header })), true)
        }
        Command::Defragment => unreachable!("the writer loop schedules defragmentation"),
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

/// etcd's quota: a write that would grow the db past --quota-backend-bytes raises the
/// NOSPACE alarm and is refused; so is every such write while the alarm stands.
fn check_quota(store: &mvcc::Store, shared: &Shared, cost_bytes: u64) -> Result<(), Status> {
    if shared.alarm_no_space.load(Ordering::Acquire) {
        return Err(errors::NO_SPACE);
    }
    if store.size_bytes() + cost_bytes + QUOTA_KEY_OVERHEAD_BYTES > shared.config.quota_backend_bytes {
        shared.alarm_no_space.store(true, Ordering::Release);
        return Err(errors::NO_SPACE);
    }
    Ok(())
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
