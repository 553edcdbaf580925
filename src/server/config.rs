//! Command-line flags with etcd's names and defaults; each can also come from the ETCD_*
//! environment variable etcd reads (`--data-dir` or `ETCD_DATA_DIR`). A bad flag or value is
//! one line on stderr and exit code 2.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Parser;

/// etcd's default backend quota when --quota-backend-bytes is 0: 2 GiB.
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ringd",
    version = concat!(env!("CARGO_PKG_VERSION"), " (etcd API ", "3.5.0", ")"),
    about = "ringd: an etcd-compatible key-value store, thread-per-core on io_uring.",
    long_about = "ringd: an etcd-compatible key-value store, thread-per-core on io_uring.\n\
                  Flags use etcd's names and defaults; each can also be set through the ETCD_* \
                  environment variable etcd reads (e.g. ETCD_DATA_DIR).",
    // A flag given twice takes its last value, as Go's flag package (and so etcd) does.
    args_override_self = true
)]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory [default: ${name}.ringd].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// List of URLs to listen on for client traffic (comma-separated).
    #[arg(long, env = "ETCD_LISTEN_CLIENT_URLS", default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,

    /// List of this member's client URLs to advertise to the public (comma-separated).
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", default_value = "http://127.0.0.1:2379")]
    pub advertise_client_urls: String,

    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, env = "ETCD_INITIAL_ADVERTISE_PEER_URLS", default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,

    /// List of URLs to listen on for peer traffic [default: http://localhost:2380 when
    /// --initial-cluster names more than one member; a one-member cluster listens for peers
    /// only when this flag is given].
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,

    /// Initial cluster configuration for bootstrapping [default: ${name}=${initial-advertise-peer-urls}].
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,

    /// Initial cluster token for the cluster during bootstrap.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,

    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1572864)]
    pub max_request_bytes: u32,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,

    /// Interpret 'auto-compaction-retention' as one of: 'periodic', 'revision'.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,

    /// Auto compaction retention: a duration for 'periodic' (a bare number is hours), a
    /// number of revisions for 'revision'. 0 means off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// Duration of periodic watch progress notifications (etcd 3.5's flag).
    #[arg(long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m")]
    pub experimental_watch_progress_notify_interval: String,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100000)]
    pub snapshot_count: u64,

    /// Number of entries for a slow follower to catch up after compacting the raft storage entries.
    #[arg(long, env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES", default_value_t = 5000)]
    pub experimental_snapshot_catchup_entries: u64,

    /// Force to create a new one member cluster.
    #[arg(
        long,
        env = "ETCD_FORCE_NEW_CLUSTER",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub force_new_cluster: bool,

    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(
        long,
        env = "ETCD_STRICT_RECONFIG_CHECK",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub strict_reconfig_check: bool,

    /// List of additional URLs to listen on that will respond to both the /metrics and /health endpoints.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,

    /// Path to the client server TLS cert file.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Enable client cert authentication.
    #[arg(
        long,
        env = "ETCD_CLIENT_CERT_AUTH",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub client_cert_auth: bool,

    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Number of cores (one pinned executor each) to serve on [default: all].
    #[arg(long, env = "RINGD_CORES")]
    pub cores: Option<usize>,

    /// The CPU that runs the raft core (Raft, the WAL, the store's writer), one of those the
    /// process may run on; the other executors take the next of them [default: the
    /// process's CPUs in order, taken at this member's position in --initial-cluster, modulo
    /// their number]
    #[arg(long, env = "RINGD_RAFT_CORE")]
    pub raft_core: Option<usize>,

    /// Microseconds an executor that ran out of work keeps polling for more (yielding its CPU
    /// to any other runnable thread) before it sleeps; 0 sleeps at once.
    #[arg(long, env = "RINGD_IDLE_POLL_US", default_value_t = IDLE_POLL_US_DEFAULT)]
    pub idle_poll_us: u64,
}

/// The longest idle poll: past it, an idle member would hardly ever let its CPUs sleep.
pub const IDLE_POLL_US_MAX: u64 = 100_000;

/// The CPUs this process may run on, in increasing order: its affinity mask, which `taskset`,
/// a cgroup cpuset or a container's CPU set narrow. Executors are pinned to these only; a CPU
/// outside a cpuset cannot be pinned to at all.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set, which sched_getaffinity fills in;
    // CPU_ISSET reads it, for indexes below CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        let count = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        return (0..count).collect();
    }
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter().map(|cpu| cpu.to_string()).collect::<Vec<_>>().join(",")
}

/// Waking a sleeping executor costs tens of µs on a VM (a halted vCPU), more than the round
/// trip of a read; 200 µs also outlasts the WAL's write of one client's put (about 100 to
/// 150 µs), so its completion finds the raft core awake. Seastar's default idle poll is 200 µs
/// too.
pub const IDLE_POLL_US_DEFAULT: u64 = 200;

/// One --listen-client-urls entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientListener {
    pub address: SocketAddr,
    /// https: every connection starts with a TLS handshake.
    pub tls: bool,
}

impl std::fmt::Display for ClientListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", if self.tls { "https" } else { "http" }, self.address)
    }
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    /// Where to accept clients, each with whether it speaks TLS (an https URL).
    pub listen_client_addresses: Vec<ClientListener>,
    /// --listen-metrics-urls: where /metrics and /health alone are served (https ones with
    /// the client port's TLS, as etcd's).
    pub listen_metrics_addresses: Vec<ClientListener>,
    /// The client port's TLS (--cert-file, --key-file, --client-cert-auth,
    /// --trusted-ca-file), when a listen URL is https.
    pub client_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// TLS toward another member's https client URL (a follower forwarding to its leader):
    /// the CAs of --trusted-ca-file, presenting --cert-file when the leader asks.
    pub forward_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub advertise_client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    /// Where to accept peer connections; empty for a one-member cluster without the flag.
    pub listen_peer_addresses: Vec<SocketAddr>,
    /// --initial-cluster: every founding member's name and peer URLs, in flag order.
    pub initial_cluster: Vec<InitialMember>,
    /// --initial-cluster-state new (bootstrap) or existing (join).
    pub initial_cluster_new: bool,
    pub cluster_token: String,
    pub heartbeat_interval: std::time::Duration,
    /// --election-timeout in heartbeat ticks.
    pub election_ticks: u32,
    pub snapshot_count: u64,
    pub snapshot_catchup_entries: u64,
    /// --strict-reconfig-check: refuse membership changes that would lose the quorum.
    pub strict_reconfig_check: bool,
    /// --force-new-cluster: at this start, make the member a cluster of its own (its whole
    /// log committed, then the removal of every other member); meant for one start.
    pub force_new_cluster: bool,
    pub quota_backend_bytes: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub auto_compaction: super::compactor::AutoCompaction,
    pub watch_progress_interval: std::time::Duration,
    pub cores: usize,
    /// The CPUs the executors are pinned to; the first runs the raft core.
    pub cpus: Vec<usize>,
    /// --idle-poll-us: how long an idle executor polls before it sleeps (zero: not at all).
    pub idle_poll: std::time::Duration,
}

/// One member of --initial-cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl Flags {
    /// Parses argv; prints etcd-style one-line errors and exits 2 on bad input.
    pub fn parse_or_exit() -> Flags {
        match Flags::try_parse() {
            Ok(flags) => flags,
            Err(error) => {
                use clap::error::ErrorKind;
                if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                    error.exit();
                }
                let rendered = error.to_string();
                let line = rendered.lines().next().unwrap_or("error: bad arguments");
                eprintln!("ringd: {}", line.trim_start_matches("error: "));
                std::process::exit(2);
            }
        }
    }

    /// Checks the flags against each other and resolves defaults.
    pub fn into_config(self) -> Result<Config, String> {
        let listen_client_addresses = parse_client_urls("--listen-client-urls", &self.listen_client_urls)?;
        let advertise_client_urls = split_urls(&self.advertise_client_urls);
        parse_client_urls("--advertise-client-urls", &self.advertise_client_urls)?;
        let listen_metrics_addresses = match split_urls(&self.listen_metrics_urls).is_empty() {
            true => Vec::new(),
            false => parse_client_urls("--listen-metrics-urls", &self.listen_metrics_urls)?,
        };
        let all_listeners: Vec<ClientListener> =
            listen_client_addresses.iter().chain(&listen_metrics_addresses).copied().collect();
        let client_tls = self.client_tls(&all_listeners)?;
        let forward_tls = self.forward_tls()?;
        let peer_urls = split_urls(&self.initial_advertise_peer_urls);
        let initial_cluster = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, self.initial_advertise_peer_urls));
        let initial_cluster = parse_initial_cluster(&self.name, &initial_cluster, &peer_urls)?;
        let listen_peer_addresses = match &self.listen_peer_urls {
            Some(urls) => parse_urls("--listen-peer-urls", urls)?,
            None if initial_cluster.len() > 1 => parse_urls("--listen-peer-urls", "http://localhost:2380")?,
            None => Vec::new(),
        };
        for member in &initial_cluster {
            for url in &member.peer_urls {
                parse_url("--initial-cluster", url)?;
            }
        }
        if self.heartbeat_interval == 0 {
            return Err("--heartbeat-interval must be greater than 0".into());
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            ));
        }
        if self.election_timeout > 50000 {
            return Err(format!(
                "--election-timeout[{}ms] is too long, and should be set less than 50 seconds",
                self.election_timeout
            ));
        }
        if self.max_request_bytes == 0 {
            return Err("--max-request-bytes must be greater than 0".into());
        }
        if self.max_txn_ops == 0 {
            return Err("--max-txn-ops must be greater than 0".into());
        }
        let allowed = allowed_cpus();
        let available_cores = allowed.len();
        let cores = self.cores.unwrap_or(available_cores);
        if cores == 0 || cores > available_cores {
            return Err(format!("--cores must be between 1 and {available_cores}"));
        }
        if self.idle_poll_us > IDLE_POLL_US_MAX {
            return Err(format!("--idle-poll-us must be at most {IDLE_POLL_US_MAX}"));
        }
        // Members started on one machine (a test or development cluster) put their raft cores
        // on different CPUs; a lone member, or the first listed, takes the first allowed CPU.
        let position = initial_cluster
            .iter()
            .position(|member| member.name == self.name)
            .expect("parse_initial_cluster checked that --initial-cluster names this member");
        let raft_core = self.raft_core.unwrap_or(allowed[position % available_cores]);
        if !allowed.contains(&raft_core) {
            return Err(format!(
                "--raft-core must be one of the CPUs this process may run on ({})",
                cpu_list(&allowed)
            ));
        }
        let cpus: Vec<usize> = std::iter::once(raft_core)
            .chain(allowed.iter().copied().filter(|cpu| *cpu != raft_core))
            .take(cores)
            .collect();
        let quota_backend_bytes =
            if self.quota_backend_bytes == 0 { QUOTA_BACKEND_BYTES_DEFAULT } else { self.quota_backend_bytes };
        let auto_compaction = super::compactor::parse(&self.auto_compaction_mode, &self.auto_compaction_retention)?;
        let watch_progress_interval =
            super::compactor::parse_duration(&self.experimental_watch_progress_notify_interval)
                .filter(|interval| !interval.is_zero())
                .ok_or_else(|| "--experimental-watch-progress-notify-interval: not a positive duration".to_owned())?;
        let data_dir = self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.ringd", self.name)));
        // Absolute, so that no later open depends on the working directory (glommio's
        // directory open refuses relative paths).
        let data_dir =
            std::path::absolute(&data_dir).map_err(|error| format!("--data-dir {}: {error}", data_dir.display()))?;
        Ok(Config {
            name: self.name,
            data_dir,
            listen_client_addresses,
            listen_metrics_addresses,
            client_tls,
            forward_tls,
            advertise_client_urls,
            peer_urls,
            listen_peer_addresses,
            initial_cluster,
            initial_cluster_new: self.initial_cluster_state == "new",
            cluster_token: self.initial_cluster_token,
            heartbeat_interval: std::time::Duration::from_millis(self.heartbeat_interval),
            election_ticks: (self.election_timeout / self.heartbeat_interval) as u32,
            snapshot_count: self.snapshot_count.max(1),
            snapshot_catchup_entries: self.experimental_snapshot_catchup_entries,
            strict_reconfig_check: self.strict_reconfig_check,
            force_new_cluster: self.force_new_cluster,
            quota_backend_bytes,
            max_request_bytes: self.max_request_bytes as usize,
            max_txn_ops: self.max_txn_ops as usize,
            auto_compaction,
            watch_progress_interval,
            cores,
            cpus,
            idle_poll: std::time::Duration::from_micros(self.idle_poll_us),
        })
    }
}

impl Flags {
    /// The client port's TLS when a listen URL is https (etcd's checks and message).
    fn client_tls(&self, listeners: &[ClientListener]) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, String> {
        let Some(https) = listeners.iter().find(|listener| listener.tls) else { return Ok(None) };
        let (Some(cert_file), Some(key_file)) = (&self.cert_file, &self.key_file) else {
            return Err(format!(
                "TLS key/cert (--cert-file, --key-file) must be provided for client url {https} with HTTPS scheme"
            ));
        };
        let trusted_ca_file = self.trusted_ca_file.as_deref();
        crate::io::tls::server_config(cert_file, key_file, trusted_ca_file, self.client_cert_auth).map(Some)
    }

    /// A client's TLS for other members' https client URLs, when --trusted-ca-file is given.
    fn forward_tls(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
        let Some(ca_file) = &self.trusted_ca_file else { return Ok(None) };
        let certificate = self.cert_file.as_deref().zip(self.key_file.as_deref());
        crate::io::tls::client_config(ca_file, certificate).map(Some)
    }
}

/// Client URLs: `http://host:port` or `https://host:port`.
fn parse_client_urls(flag: &str, urls: &str) -> Result<Vec<ClientListener>, String> {
    let urls = split_urls(urls);
    if urls.is_empty() {
        return Err(format!("{flag} is empty"));
    }
    let parse = |url: &String| match url.strip_prefix("https://") {
        Some(rest) => parse_url(flag, &format!("http://{rest}")).map(|address| ClientListener { address, tls: true }),
        None => parse_url(flag, url).map(|address| ClientListener { address, tls: false }),
    };
    urls.iter().map(parse).collect()
}

fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect()
}

fn parse_urls(flag: &str, urls: &str) -> Result<Vec<SocketAddr>, String> {
    let urls = split_urls(urls);
    if urls.is_empty() {
        return Err(format!("{flag} is empty"));
    }
    urls.iter().map(|url| parse_url(flag, url)).collect()
}

/// `http://host:port` to a socket address (peer URLs: TLS between members is not built).
fn parse_url(flag: &str, url: &str) -> Result<SocketAddr, String> {
    let Some(host_port) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            return Err(format!("{flag}: {url}: https is not supported yet for peers (no TLS between members)"));
        }
        return Err(format!("{flag}: URL scheme must be http or https: {url}"));
    };
    let host_port = host_port.trim_end_matches('/');
    let mut addresses = host_port.to_socket_addrs().map_err(|error| format!("{flag}: {url}: {error}"))?;
    let ipv4 = addresses.clone().find(SocketAddr::is_ipv4);
    ipv4.or_else(|| addresses.next()).ok_or_else(|| format!("{flag}: {url}: no address"))
}

/// Parses `name=url,name=url` (a name may repeat, one URL each, as etcd allows) and checks
/// that this member's entry matches its --initial-advertise-peer-urls.
fn parse_initial_cluster(
    name: &str,
    initial_cluster: &str,
    peer_urls: &[String],
) -> Result<Vec<InitialMember>, String> {
    let mut members: Vec<InitialMember> = Vec::new();
    for entry in initial_cluster.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((member, url)) = entry.split_once('=') else {
            return Err(format!("--initial-cluster: {entry}: expected name=url"));
        };
        match members.iter_mut().find(|m| m.name == member) {
            Some(existing) => existing.peer_urls.push(url.to_owned()),
            None => members.push(InitialMember { name: member.to_owned(), peer_urls: vec![url.to_owned()] }),
        }
    }
    let Some(own) = members.iter().find(|m| m.name == name) else {
        return Err(format!("couldn't find local name {name:?} in the initial cluster configuration"));
    };
    let mut own_urls = own.peer_urls.clone();
    own_urls.sort();
    let mut advertised = peer_urls.to_vec();
    advertised.sort();
    if own_urls != advertised {
        return Err(format!(
            "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={}",
            own.peer_urls.join(","),
            peer_urls.join(",")
        ));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags from `args` alone: the environment's ETCD_* and RINGD_* variables, which
    /// the binary reads, are not consulted, so a shell that sets one cannot change a result.
    fn flags(args: &[&str]) -> Result<Flags, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let command = Flags::command().mut_args(|arg| arg.env(None::<&str>));
        let matches = command.try_get_matches_from(std::iter::once("ringd").chain(args.iter().copied()))?;
        Flags::from_arg_matches(&matches)
    }

    #[test]
    fn defaults_are_etcds() {
        let config = flags(&[]).unwrap().into_config().unwrap();
        assert_eq!(config.name, "default");
        assert_eq!(config.data_dir, std::env::current_dir().unwrap().join("default.ringd"));
        assert_eq!(
            config.listen_client_addresses,
            vec![ClientListener { address: "127.0.0.1:2379".parse().unwrap(), tls: false }]
        );
        assert_eq!(config.max_request_bytes, 1572864);
        assert_eq!(config.max_txn_ops, 128);
        assert_eq!(config.quota_backend_bytes, QUOTA_BACKEND_BYTES_DEFAULT);
        assert_eq!(config.peer_urls, vec!["http://localhost:2380".to_owned()]);
    }

    #[test]
    fn a_flag_given_twice_takes_its_last_value_as_go_does() {
        let config = flags(&["--name", "a", "--election-timeout", "500", "--name", "b", "--election-timeout", "900"]);
        let config = config.unwrap().into_config().unwrap();
        assert_eq!(config.name, "b");
        assert_eq!(config.heartbeat_interval * config.election_ticks, std::time::Duration::from_millis(900));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(flags(&["--max-txn-ops", "many"]).is_err());
        assert!(flags(&["--no-such-flag"]).is_err());
        assert!(flags(&["--listen-client-urls", "ftp://x:1"]).unwrap().into_config().is_err());
        let two = flags(&["--initial-cluster", "a=http://localhost:2380,b=http://localhost:2381"]).unwrap();
        assert!(two.into_config().is_err());
    }

    #[test]
    fn a_three_member_cluster_parses_as_etcd_does() {
        let urls = "a=http://127.0.0.1:2380,b=http://127.0.0.1:2381,c=http://127.0.0.1:2382";
        let config = flags(&[
            "--name",
            "b",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2381",
            "--initial-cluster",
            urls,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        let names: Vec<&str> = config.initial_cluster.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(config.election_ticks, 10);
        assert_eq!(config.listen_peer_addresses, vec!["127.0.0.1:2380".parse().unwrap()], "etcd's default");
        let mismatch = flags(&["--name", "b", "--initial-cluster", urls]).unwrap().into_config();
        assert!(mismatch.unwrap_err().contains("--initial-advertise-peer-urls"));
        let short = flags(&["--heartbeat-interval", "100", "--election-timeout", "200"]).unwrap().into_config();
        assert!(short.unwrap_err().contains("5 times"));
    }

    #[test]
    fn the_raft_core_takes_the_chosen_cpu_first() {
        let allowed = allowed_cpus();
        let last = *allowed.last().unwrap();
        let config = flags(&["--raft-core", &last.to_string()]).unwrap().into_config().unwrap();
        assert_eq!(config.cpus[0], last);
        assert_eq!(config.cpus.len(), allowed.len());
        let mut sorted = config.cpus.clone();
        sorted.sort();
        assert_eq!(sorted, allowed);
        let outside = (0..).find(|cpu| !allowed.contains(cpu)).unwrap();
        let refused = flags(&["--raft-core", &outside.to_string()]).unwrap().into_config().unwrap_err();
        assert!(refused.contains("one of the CPUs this process may run on"), "{refused}");
    }

    #[test]
    fn the_raft_core_defaults_to_the_members_position_in_the_initial_cluster() {
        let allowed = allowed_cpus();
        let urls = "a=http://127.0.0.1:2380,b=http://127.0.0.1:2381,c=http://127.0.0.1:2382";
        for (position, name) in ["a", "b", "c"].into_iter().enumerate() {
            let peer_url = format!("http://127.0.0.1:{}", 2380 + position);
            let args = ["--name", name, "--initial-advertise-peer-urls", &peer_url, "--initial-cluster", urls];
            let config = flags(&args).unwrap().into_config().unwrap();
            assert_eq!(config.cpus[0], allowed[position % allowed.len()], "member {name}");
        }
        assert_eq!(flags(&[]).unwrap().into_config().unwrap().cpus[0], allowed[0], "a lone member");
    }

    #[test]
    fn executors_poll_200_microseconds_before_sleeping_unless_told_otherwise() {
        let default = flags(&[]).unwrap().into_config().unwrap();
        assert_eq!(default.idle_poll, std::time::Duration::from_micros(200));
        let never = flags(&["--idle-poll-us", "0"]).unwrap().into_config().unwrap();
        assert!(never.idle_poll.is_zero());
        let negative = flags(&["--idle-poll-us=-1"]).unwrap_err().to_string();
        assert!(negative.contains("invalid digit"), "a negative time is refused: {negative}");
        let longest = IDLE_POLL_US_MAX.to_string();
        assert!(flags(&["--idle-poll-us", &longest]).unwrap().into_config().is_ok());
        let longer = (IDLE_POLL_US_MAX + 1).to_string();
        let refused = flags(&["--idle-poll-us", &longer]).unwrap().into_config().unwrap_err();
        assert!(refused.contains("--idle-poll-us must be at most 100000"), "{refused}");
    }

    #[test]
    fn strict_reconfig_check_is_on_unless_set_to_false_as_a_go_bool_flag() {
        assert!(flags(&[]).unwrap().into_config().unwrap().strict_reconfig_check);
        assert!(flags(&["--strict-reconfig-check"]).unwrap().into_config().unwrap().strict_reconfig_check);
        assert!(flags(&["--strict-reconfig-check=true"]).unwrap().into_config().unwrap().strict_reconfig_check);
        assert!(!flags(&["--strict-reconfig-check=false"]).unwrap().into_config().unwrap().strict_reconfig_check);
        assert!(flags(&["--strict-reconfig-check=maybe"]).is_err());
        assert!(!flags(&[]).unwrap().into_config().unwrap().force_new_cluster);
        assert!(flags(&["--force-new-cluster"]).unwrap().into_config().unwrap().force_new_cluster);
    }
}
