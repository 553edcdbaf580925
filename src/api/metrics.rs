//! `GET /metrics`: Prometheus' text format (0.0.4) with etcd's metric names, HELP texts,
//! types and labels where etcd has the metric (`tests/metrics.rs` checks them against a real
//! etcd), and ringd's own under `ringd_`:
//!
//! - `etcd_server_*`: leader, learner, member ID, versions, leader changes, the committed and
//!   applied indexes, failed and pending proposals, the quota; `etcd_mvcc_*` and
//!   `etcd_debugging_mvcc_*`: db sizes, revisions, and the store's operations as requests
//!   asked for them (`server::metrics` says how that differs from etcd's counts).
//! - `etcd_disk_wal_fsync_duration_seconds`: ringd's `wal_sync` stage (one O_DSYNC write,
//!   where etcd times its fdatasync alone); `etcd_disk_backend_commit_duration_seconds`: the
//!   store's durable checkpoints. Both with etcd's buckets (1 ms to 8.192 s).
//! - `grpc_server_started_total`, `grpc_server_handled_total` (per code),
//!   `grpc_server_msg_received_total`, `grpc_server_msg_sent_total` for every method of
//!   etcd's API (listed at zero before their first call, as go-grpc-prometheus does), and
//!   `etcd_network_client_grpc_{received,sent}_bytes_total` (message bytes, gRPC's 5-byte
//!   prefix excluded). A call is counted once its message was read (as grpc-go's
//!   interceptors count: not when the transport refused it). Calls over the JSON gateway are
//!   not counted there: ringd's gateway answers them itself, where etcd's is a gRPC client of
//!   its own port, so etcd counts them (both count the store's operations).
//!   `etcd_server_client_requests_total` is labelled with the API version ringd serves
//!   (etcd labels it with the client's).
//! - `process_*`: CPU, memory, descriptors and start time, from `/proc/self`.
//! - `ringd_stage_duration_seconds{stage}`: every stage of `GET /debug/latency`, buckets from
//!   10 µs doubling to about 10 s; `ringd_client_connections{core}`,
//!   `ringd_accepted_connections_total`.
//!
//! The histograms come from HDR histograms in µs with 3 significant digits: a bucket's count
//! and the sum are exact to that precision.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use crate::api::errors::Code;
use crate::api::service::{self, METHODS_COUNT};
use crate::server::Core;

/// The content type of the text format, as Prometheus' Go client sends it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The gRPC codes, in their numeric order, with grpc-go's names (the `grpc_code` label).
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// etcd's buckets for its disk histograms: 1 ms doubling 14 times (to 8.192 s).
const DISK_BUCKETS: (f64, usize) = (0.001, 14);
/// ringd's stage buckets: 10 µs doubling 21 times (to about 10.5 s).
const STAGE_BUCKETS: (f64, usize) = (0.000_01, 21);

// Offsets of one core's counters: started, received, sent (one per method each), handled
// (one per method and code), then the bytes received and sent.
const STARTED: usize = 0;
const RECEIVED: usize = METHODS_COUNT;
const SENT: usize = 2 * METHODS_COUNT;
const HANDLED: usize = 3 * METHODS_COUNT;
const BYTES_RECEIVED: usize = HANDLED + METHODS_COUNT * CODES.len();
const BYTES_SENT: usize = BYTES_RECEIVED + 1;
const COUNTERS_PER_CORE: usize = BYTES_SENT + 1;

/// gRPC calls per method and code, one line of counters per core (each core adds to its own).
pub struct GrpcCalls {
    cores: Box<[Box<[AtomicU64]>]>,
}

impl GrpcCalls {
    pub fn new(cores: usize) -> GrpcCalls {
        assert!(cores > 0, "a server has at least one core");
        GrpcCalls { cores: (0..cores).map(|_| (0..COUNTERS_PER_CORE).map(|_| AtomicU64::new(0)).collect()).collect() }
    }

    /// Counts a call of the method in `slot` started on `core`; its handle counts the rest.
    pub fn start(&self, core: usize, slot: usize) -> Call<'_> {
        assert!(slot < METHODS_COUNT, "slot {slot} is one of etcd's methods");
        let counters = &self.cores[core];
        counters[STARTED + slot].fetch_add(1, Ordering::Relaxed);
        Call { counters, slot }
    }

    /// A message of `message_bytes` received on `core` by a call of the method in `slot`
    /// (for a task that cannot hold the call's handle).
    pub fn received(&self, core: usize, slot: usize, message_bytes: usize) {
        let counters = &self.cores[core];
        counters[RECEIVED + slot].fetch_add(1, Ordering::Relaxed);
        counters[BYTES_RECEIVED].fetch_add(message_bytes as u64, Ordering::Relaxed);
    }

    fn total(&self, index: usize) -> u64 {
        self.cores.iter().map(|counters| counters[index].load(Ordering::Relaxed)).sum()
    }
}

/// One call's counters.
pub struct Call<'a> {
    counters: &'a [AtomicU64],
    slot: usize,
}

impl Call<'_> {
    /// The method's slot (`service::method_slot`).
    pub fn slot(&self) -> usize {
        self.slot
    }

    pub fn received(&self, message_bytes: usize) {
        self.counters[RECEIVED + self.slot].fetch_add(1, Ordering::Relaxed);
        self.counters[BYTES_RECEIVED].fetch_add(message_bytes as u64, Ordering::Relaxed);
    }

    pub fn sent(&self, message_bytes: usize) {
        self.counters[SENT + self.slot].fetch_add(1, Ordering::Relaxed);
        self.counters[BYTES_SENT].fetch_add(message_bytes as u64, Ordering::Relaxed);
    }

    /// The call ended with `code` (go-grpc-prometheus counts it once, when the handler returns).
    pub fn handled(self, code: Code) {
        self.counters[HANDLED + self.slot * CODES.len() + code as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The exposition under construction.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    /// One gauge or counter with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }

    /// The samples of a histogram of µs in seconds' buckets `start * 2^i`, i < count.
    fn histogram(&mut self, name: &str, labels: &str, micros: &Histogram<u64>, (start, count): (f64, usize)) {
        let separator = if labels.is_empty() { "" } else { "," };
        let bounds: Vec<f64> = (0..count).map(|i| start * f64::from(1u32 << i)).collect();
        let mut in_bucket = vec![0u64; count];
        let mut sum_micros = 0u128;
        for recorded in micros.iter_recorded() {
            let value = recorded.value_iterated_to();
            let times = recorded.count_at_value();
            sum_micros += u128::from(micros.median_equivalent(value)) * u128::from(times);
            let highest = micros.highest_equivalent(value);
            if let Some(bucket) = bounds.iter().position(|&bound| highest <= (bound * 1e6).round() as u64) {
                in_bucket[bucket] += times;
            }
        }
        let mut cumulative = 0;
        for (bound, times) in bounds.iter().zip(in_bucket) {
            cumulative += times;
            let _ = writeln!(self.out, "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}");
        }
        debug_assert!(cumulative <= micros.len(), "the buckets hold at most every value");
        let _ = writeln!(self.out, "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {}", micros.len());
        self.sample(&format!("{name}_sum"), labels, sum_micros as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, micros.len());
    }
}

/// The text of `GET /metrics` for the member `core` belongs to.
pub fn render(core: &Core) -> String {
    let mut exposition = Exposition { out: String::with_capacity(160 * 1024) };
    // Merged once: merging locks each core's histograms, which holds up its recording.
    let histograms = core.shared.latency.merged();
    server_families(&mut exposition, core, &histograms);
    grpc_families(&mut exposition, &core.shared.grpc_calls);
    process_families(&mut exposition);
    ringd_families(&mut exposition, core, &histograms);
    exposition.out
}

fn server_families(e: &mut Exposition, core: &Core, histograms: &[Histogram<u64>]) {
    let shared = &core.shared;
    let status = core.status().expect("Status is answered from published state");
    let snapshot = shared.snapshot();
    let totals = shared.counts.totals();
    let api_version = major_minor(crate::server::ETCD_CLUSTER_VERSION);
    e.family(
        "etcd_cluster_version",
        "gauge",
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
    );
    e.sample("etcd_cluster_version", &format!("cluster_version=\"{api_version}\""), 1);
    e.single(
        "etcd_debugging_mvcc_compact_revision",
        "gauge",
        "The revision of the last compaction in store.",
        snapshot.compact_revision(),
    );
    e.single("etcd_debugging_mvcc_current_revision", "gauge", "The current revision of store.", snapshot.revision());
    e.single(
        "etcd_debugging_mvcc_total_put_size_in_bytes",
        "gauge",
        "The total size of put kv pairs seen by this member.",
        totals.put_bytes,
    );
    let stage = |wanted: crate::server::latency::Stage| &histograms[wanted as usize];
    e.family(
        "etcd_disk_backend_commit_duration_seconds",
        "histogram",
        "The latency distributions of commit called by backend.",
    );
    e.histogram(
        "etcd_disk_backend_commit_duration_seconds",
        "",
        stage(crate::server::latency::Stage::Checkpoint),
        DISK_BUCKETS,
    );
    e.family("etcd_disk_wal_fsync_duration_seconds", "histogram", "The latency distributions of fsync called by WAL.");
    e.histogram(
        "etcd_disk_wal_fsync_duration_seconds",
        "",
        stage(crate::server::latency::Stage::WalSync),
        DISK_BUCKETS,
    );
    e.single(
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        status.db_size,
    );
    e.single(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "gauge",
        "Total size of the underlying database logically in use in bytes.",
        status.db_size_in_use,
    );
    e.single("etcd_mvcc_delete_total", "counter", "Total number of deletes seen by this member.", totals.deletes);
    e.single("etcd_mvcc_put_total", "counter", "Total number of puts seen by this member.", totals.puts);
    e.single("etcd_mvcc_range_total", "counter", "Total number of ranges seen by this member.", totals.ranges);
    e.single("etcd_mvcc_txn_total", "counter", "Total number of txns seen by this member.", totals.txns);
    let member_id = shared.member_id;
    e.single(
        "etcd_server_has_leader",
        "gauge",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        u8::from(status.leader != 0),
    );
    e.family(
        "etcd_server_id",
        "gauge",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
    );
    e.sample("etcd_server_id", &format!("server_id=\"{member_id:x}\""), 1);
    e.single(
        "etcd_server_is_leader",
        "gauge",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        u8::from(status.leader == member_id),
    );
    e.single(
        "etcd_server_is_learner",
        "gauge",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        u8::from(status.is_learner),
    );
    e.single(
        "etcd_server_leader_changes_seen_total",
        "counter",
        "The number of leader changes seen.",
        shared.counts.leader_changes.load(Ordering::Relaxed),
    );
    e.single(
        "etcd_server_proposals_applied_total",
        "gauge",
        "The total number of consensus proposals applied.",
        status.raft_applied_index,
    );
    e.single(
        "etcd_server_proposals_committed_total",
        "gauge",
        "The total number of consensus proposals committed.",
        shared.commit_index.load(Ordering::Acquire),
    );
    e.single(
        "etcd_server_proposals_failed_total",
        "counter",
        "The total number of failed proposals seen.",
        totals.proposals_failed,
    );
    e.single(
        "etcd_server_proposals_pending",
        "gauge",
        "The current number of pending proposals to commit.",
        totals.proposals_pending,
    );
    e.single(
        "etcd_server_quota_backend_bytes",
        "gauge",
        "Current backend storage quota size in bytes.",
        shared.config.quota_backend_bytes,
    );
    e.family(
        "etcd_server_version",
        "gauge",
        "Which version is running. 1 for 'server_version' label with current version.",
    );
    e.sample("etcd_server_version", &format!("server_version=\"{}\"", crate::server::ETCD_API_VERSION), 1);
}

/// "3.5.0" -> "3.5" (etcd labels its cluster and client API versions so).
fn major_minor(version: &str) -> &str {
    match version.match_indices('.').nth(1) {
        Some((second_dot, _)) => &version[..second_dot],
        None => version,
    }
}

fn grpc_families(e: &mut Exposition, calls: &GrpcCalls) {
    let methods: Vec<(&str, &str, &str)> =
        service::methods().map(|(service, method)| (service, method, service::grpc_type(service, method))).collect();
    let labels = |&(service, method, kind): &(&str, &str, &str)| {
        format!("grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{kind}\"")
    };
    e.single(
        "etcd_network_client_grpc_received_bytes_total",
        "counter",
        "The total number of bytes received from grpc clients.",
        calls.total(BYTES_RECEIVED),
    );
    e.single(
        "etcd_network_client_grpc_sent_bytes_total",
        "counter",
        "The total number of bytes sent to grpc clients.",
        calls.total(BYTES_SENT),
    );
    let (mut unary, mut streams) = (0, 0);
    for (slot, &(_, _, kind)) in methods.iter().enumerate() {
        let started = calls.total(STARTED + slot);
        if kind == "unary" {
            unary += started
        } else {
            streams += started
        }
    }
    let api_version = major_minor(crate::server::ETCD_API_VERSION);
    e.family("etcd_server_client_requests_total", "counter", "The total number of client requests per client version.");
    e.sample(
        "etcd_server_client_requests_total",
        &format!("client_api_version=\"{api_version}\",type=\"stream\""),
        streams,
    );
    e.sample(
        "etcd_server_client_requests_total",
        &format!("client_api_version=\"{api_version}\",type=\"unary\""),
        unary,
    );
    e.family(
        "grpc_server_handled_total",
        "counter",
        "Total number of RPCs completed on the server, regardless of success or failure.",
    );
    for (slot, method) in methods.iter().enumerate() {
        for (code, name) in CODES.iter().enumerate() {
            let handled = calls.total(HANDLED + slot * CODES.len() + code);
            e.sample("grpc_server_handled_total", &format!("grpc_code=\"{name}\",{}", labels(method)), handled);
        }
    }
    let per_method = [
        ("grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.", RECEIVED),
        ("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.", SENT),
        ("grpc_server_started_total", "Total number of RPCs started on the server.", STARTED),
    ];
    for (name, help, offset) in per_method {
        e.family(name, "counter", help);
        for (slot, method) in methods.iter().enumerate() {
            e.sample(name, &labels(method), calls.total(offset + slot));
        }
    }
}

/// What `/proc/self` says of the process (Prometheus' process collector reads the same).
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    start_time_seconds: f64,
    open_fds: usize,
    max_fds: u64,
}

fn process_stats() -> Option<ProcessStats> {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let (ticks_per_second, page_bytes) =
        unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    if ticks_per_second <= 0 || page_bytes <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command's closing parenthesis, from field 3 (state) on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    let (user, system, start_ticks) = (field(14)?, field(15)?, field(22)?);
    let boot_seconds: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())?;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given, which lives on this stack.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { 0 };
    Some(ProcessStats {
        cpu_seconds: (user + system) as f64 / ticks_per_second as f64,
        resident_bytes: field(24)? * page_bytes as u64,
        virtual_bytes: field(23)?,
        start_time_seconds: boot_seconds as f64 + start_ticks as f64 / ticks_per_second as f64,
        open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count(),
        max_fds,
    })
}

fn process_families(e: &mut Exposition) {
    // /proc is in memory: these reads do not wait for a device.
    let Some(stats) = process_stats() else { return };
    e.single(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stats.cpu_seconds,
    );
    e.single("process_max_fds", "gauge", "Maximum number of open file descriptors.", stats.max_fds);
    e.single("process_open_fds", "gauge", "Number of open file descriptors.", stats.open_fds);
    e.single("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", stats.resident_bytes);
    e.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        stats.start_time_seconds,
    );
    e.single("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", stats.virtual_bytes);
}

fn ringd_families(e: &mut Exposition, core: &Core, histograms: &[Histogram<u64>]) {
    let shared = &core.shared;
    e.single(
        "ringd_accepted_connections_total",
        "counter",
        "Client connections accepted since the start, on every core.",
        shared.accepted_connections.load(Ordering::Relaxed),
    );
    e.family("ringd_client_connections", "gauge", "Live client connections, per core.");
    for (index, connections) in shared.client_connections.iter().enumerate() {
        e.sample("ringd_client_connections", &format!("core=\"{index}\""), connections.load(Ordering::Relaxed));
    }
    e.family(
        "ringd_stage_duration_seconds",
        "histogram",
        "Time of each stage of a request (GET /debug/latency has the stages).",
    );
    for ((_, name), histogram) in crate::server::latency::STAGES.iter().zip(histograms.iter()) {
        e.histogram("ringd_stage_duration_seconds", &format!("stage=\"{name}\""), histogram, STAGE_BUCKETS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_of_micros_becomes_cumulative_buckets_in_seconds() {
        let mut micros = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for value in [500, 1000, 1001, 3000, 20_000_000] {
            micros.record(value).unwrap();
        }
        let mut e = Exposition { out: String::new() };
        e.histogram("h", "stage=\"x\"", &micros, (0.001, 3));
        let lines: Vec<&str> = e.out.lines().collect();
        assert_eq!(
            lines,
            [
                "h_bucket{stage=\"x\",le=\"0.001\"} 2",
                "h_bucket{stage=\"x\",le=\"0.002\"} 3",
                "h_bucket{stage=\"x\",le=\"0.004\"} 4",
                "h_bucket{stage=\"x\",le=\"+Inf\"} 5",
                // 20 s is recorded within 0.1% (3 significant digits).
                lines[4],
                "h_count{stage=\"x\"} 5",
            ]
        );
        let sum: f64 = lines[4].strip_prefix("h_sum{stage=\"x\"} ").unwrap().parse().unwrap();
        assert!((sum - 20.0055).abs() < 20.0 * 0.001, "{sum}");
    }

    #[test]
    fn bounds_print_as_etcd_prints_them() {
        let mut e = Exposition { out: String::new() };
        let micros = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        e.histogram("h", "", &micros, DISK_BUCKETS);
        assert!(e.out.starts_with("h_bucket{le=\"0.001\"} 0\nh_bucket{le=\"0.002\"} 0\n"), "{}", e.out);
        assert!(e.out.contains("h_bucket{le=\"8.192\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n"), "{}", e.out);
        assert_eq!(major_minor("3.5.0"), "3.5");
    }

    #[test]
    fn calls_count_per_method_and_code() {
        let calls = GrpcCalls::new(2);
        let put = service::method_slot("/etcdserverpb.KV/Put").unwrap();
        let call = calls.start(1, put);
        call.received(10);
        call.sent(30);
        call.handled(Code::Ok);
        calls.start(0, put).handled(Code::InvalidArgument);
        assert_eq!(calls.total(STARTED + put), 2);
        assert_eq!(calls.total(HANDLED + put * CODES.len()), 1);
        assert_eq!(calls.total(HANDLED + put * CODES.len() + Code::InvalidArgument as usize), 1);
        assert_eq!((calls.total(BYTES_RECEIVED), calls.total(BYTES_SENT)), (10, 30));
        assert_eq!(service::routed_slot(service::Method::Put), put);
        assert_eq!(service::method_slot("/etcdserverpb.KV/Nope"), None);
        assert_eq!(CODES[Code::Unauthenticated as usize], "Unauthenticated");
    }
}
