//! The integrator: configuration, cores, the writer loop, and the per-core handle (`Core`)
//! that the API layer calls.
//!
//! Thread per core (DESIGN §2): one pinned glommio executor per core, each accepting
//! clients on the shared port. Reads (Range, read-only Txn, Status) are answered on the
//! receiving core from a snapshot of the memory-mapped store. Writes go to the writer on
//! core 0 (the future raft core): cores 1.. send them over glommio shared channels; the
//! writer applies every queued request in one batch, checkpoints the store once (write,
//! fdatasync, meta switch, off the executor on glommio's blocking pool), and only then
//! answers. So a write is durable before its reply, and a read that starts after a reply
//! sees it.
//!
//! Invariants: exactly one `Store` writer (core 0); replies leave only after the batch's
//! checkpoint returned Ok; after a failed checkpoint the process exits without replying
//! (no acknowledged write can be lost, and nothing unsynced is ever acknowledged).

pub mod compactor;
pub mod config;
pub mod identity;
pub mod kv;
pub mod watch;
mod writer;

use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures::channel::{mpsc, oneshot};

use crate::api::errors::{self, Status};
use crate::api::pb::etcdserverpb as pb;
use crate::mvcc;

pub use config::{Config, Flags};
pub use writer::Command;

/// The etcd API version ringd implements; Status and /version report it.
pub const ETCD_API_VERSION: &str = "3.5.0";
/// The etcd cluster version string /version reports.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";
/// Requests the writer applies in one batch at most (one checkpoint each).
pub const BATCH_REQUESTS_MAX: usize = 4096;
/// Requests queued toward the writer from one core before senders wait.
pub const QUEUE_REQUESTS_MAX: usize = 8192;

/// State every core reads; written only by the writer (atomics) or at start.
pub struct Shared {
    pub config: Config,
    pub cluster_id: u64,
    pub member_id: u64,
    pub reader: mvcc::Reader,
    pub alarm_no_space: AtomicBool,
    pub applied_index: AtomicU64,
    pub db_size_bytes: AtomicU64,
    pub db_size_in_use_bytes: AtomicU64,
    /// The revision watchers may deliver up to, published by the writer after checkpoints.
    pub watch: watch::Publisher,
}

impl Shared {
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader { cluster_id: self.cluster_id, member_id: self.member_id, revision, raft_term: RAFT_TERM }
    }
}

/// This slice has one member and no Raft yet: its term is always 1.
pub const RAFT_TERM: u64 = 1;

/// A write on its way to the writer, with the way back to the waiting client task.
pub struct Proposal {
    pub command: Command,
    pub reply: oneshot::Sender<Result<writer::Outcome, Status>>,
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
        match $core.propose($command).await? {
            writer::Outcome::$variant(response) => Ok(response),
            _ => unreachable!(concat!("the writer answers ", stringify!($variant), " in kind")),
        }
    };
}

/// One core's handle: what the API layer calls.
pub struct Core {
    pub shared: Arc<Shared>,
    route: Route,
    hub: Rc<watch::Hub>,
}

impl Core {
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

    async fn propose(&self, command: Command) -> Result<writer::Outcome, Status> {
        let (reply, answer) = oneshot::channel();
        let proposal = Proposal { command, reply };
        let sent = match &self.route {
            Route::Local(sender) => {
                let mut sender = sender.clone();
                futures::SinkExt::send(&mut sender, proposal).await.is_ok()
            }
            Route::Remote(sender) => sender.send(proposal).await.is_ok(),
        };
        if !sent {
            return Err(errors::STOPPED);
        }
        answer.await.map_err(|_| errors::STOPPED)?
    }

    fn check_space(&self) -> Result<(), Status> {
        if self.shared.alarm_no_space.load(Ordering::Acquire) {
            return Err(errors::NO_SPACE);
        }
        Ok(())
    }

    pub fn range(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        kv::check_range(&request)?;
        let snapshot = self.shared.reader.snapshot();
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
            let snapshot = self.shared.reader.snapshot();
            let mut response = kv::txn_read(&snapshot, &request)?;
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
            header: Some(shared.header(shared.reader.snapshot().revision())),
            version: ETCD_API_VERSION.to_owned(),
            db_size: shared.db_size_bytes.load(Ordering::Acquire) as i64,
            leader: shared.member_id,
            raft_index: applied,
            raft_term: RAFT_TERM,
            raft_applied_index: applied,
            errors,
            db_size_in_use: shared.db_size_in_use_bytes.load(Ordering::Acquire) as i64,
            is_learner: false,
            storage_version: String::new(),
        })
    }

    pub fn member_list(&self) -> Result<pb::MemberListResponse, Status> {
        let shared = &self.shared;
        let mut header = shared.header(shared.reader.snapshot().revision());
        header.revision = 0; // etcd leaves the revision out of MemberList's header
        Ok(pb::MemberListResponse {
            header: Some(header),
            members: vec![pb::Member {
                id: shared.member_id,
                name: shared.config.name.clone(),
                peer_ur_ls: shared.config.peer_urls.clone(),
                client_ur_ls: shared.config.advertise_client_urls.clone(),
                is_learner: false,
            }],
        })
    }

    pub async fn hash(&self) -> Result<pb::HashResponse, Status> {
        propose_as!(self, Command::Hash, Hash)
    }

    pub async fn hash_kv(&self, request: pb::HashKvRequest) -> Result<pb::HashKvResponse, Status> {
        propose_as!(self, Command::HashKv(request), HashKv)
    }

    pub async fn defragment(&self) -> Result<pb::DefragmentResponse, Status> {
        propose_as!(self, Command::Defragment, Defragment)
    }

    pub async fn alarm(&self, request: pb::AlarmRequest) -> Result<pb::AlarmResponse, Status> {
        propose_as!(self, Command::Alarm(request), Alarm)
    }

    /// A consistent copy of the db for Maintenance.Snapshot.
    pub fn snapshot_image(&self) -> Result<mvcc::Image, Status> {
        self.shared
            .reader
            .snapshot()
            .image()
            .map_err(|error| Status::with_message(errors::Code::Internal, error.to_string()))
    }

    /// etcd's /health: unhealthy while an alarm is raised.
    pub fn health(&self) -> (bool, String) {
        if self.shared.alarm_no_space.load(Ordering::Acquire) {
            return (false, "ALARM NOSPACE".to_owned());
        }
        (true, String::new())
    }

    pub fn version_json(&self) -> serde_json::Value {
        serde_json::json!({
            "etcdserver": ETCD_API_VERSION,
            "etcdcluster": ETCD_CLUSTER_VERSION,
            "ringd": env!("CARGO_PKG_VERSION"),
        })
    }
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
    let member_id = identity::member_id(&config.peer_urls, &config.cluster_token);
    let shared = Arc::new(Shared {
        cluster_id: identity::cluster_id(&[member_id]),
        member_id,
        reader: store.reader(),
        alarm_no_space: AtomicBool::new(store.size_bytes() > config.quota_backend_bytes),
        applied_index: AtomicU64::new(store.consistent_index()),
        db_size_bytes: AtomicU64::new(store.size_bytes()),
        db_size_in_use_bytes: AtomicU64::new(store.size_in_use_bytes()),
        watch: watch::Publisher::new(config.cores, store.current_revision()),
        config,
    });
    writer::start_cores(shared, store)
}

/// Builds the per-core handle for core 0 (local route).
fn local_core(shared: Arc<Shared>, sender: mpsc::Sender<Proposal>) -> Rc<Core> {
    let hub = start_hub(&shared, 0);
    Rc::new(Core { shared, route: Route::Local(sender), hub })
}

/// Builds the per-core handle for another core (remote route).
fn remote_core(
    shared: Arc<Shared>,
    core: usize,
    sender: glommio::channels::shared_channel::ConnectedSender<Proposal>,
) -> Rc<Core> {
    let hub = start_hub(&shared, core);
    Rc::new(Core { shared, route: Route::Remote(sender), hub })
}

fn start_hub(shared: &Arc<Shared>, core: usize) -> Rc<watch::Hub> {
    let hub = watch::Hub::new(shared.clone(), core);
    glommio::spawn_local(hub.clone().run()).detach();
    hub
}
