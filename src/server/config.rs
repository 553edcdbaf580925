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
                  environment variable etcd reads (e.g. ETCD_DATA_DIR)."
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

    /// Number of cores (one pinned executor each) to serve on [default: all].
    #[arg(long, env = "RINGD_CORES")]
    pub cores: Option<usize>,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_addresses: Vec<SocketAddr>,
    pub advertise_client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    pub cluster_token: String,
    pub quota_backend_bytes: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub auto_compaction: super::compactor::AutoCompaction,
    pub watch_progress_interval: std::time::Duration,
    pub cores: usize,
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
        let listen_client_addresses = parse_urls("--listen-client-urls", &self.listen_client_urls)?;
        let advertise_client_urls = split_urls(&self.advertise_client_urls);
        parse_urls("--advertise-client-urls", &self.advertise_client_urls)?;
        let peer_urls = split_urls(&self.initial_advertise_peer_urls);
        let initial_cluster = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, self.initial_advertise_peer_urls));
        check_single_member(&self.name, &initial_cluster, &peer_urls)?;
        if self.max_request_bytes == 0 {
            return Err("--max-request-bytes must be greater than 0".into());
        }
        if self.max_txn_ops == 0 {
            return Err("--max-txn-ops must be greater than 0".into());
        }
        let available_cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cores = self.cores.unwrap_or(available_cores);
        if cores == 0 || cores > available_cores {
            return Err(format!("--cores must be between 1 and {available_cores}"));
        }
        let quota_backend_bytes =
            if self.quota_backend_bytes == 0 { QUOTA_BACKEND_BYTES_DEFAULT } else { self.quota_backend_bytes };
        let auto_compaction = super::compactor::parse(&self.auto_compaction_mode, &self.auto_compaction_retention)?;
        let watch_progress_interval =
            super::compactor::parse_duration(&self.experimental_watch_progress_notify_interval)
                .filter(|interval| !interval.is_zero())
                .ok_or_else(|| "--experimental-watch-progress-notify-interval: not a positive duration".to_owned())?;
        let data_dir = self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.ringd", self.name)));
        Ok(Config {
            name: self.name,
            data_dir,
            listen_client_addresses,
            advertise_client_urls,
            peer_urls,
            cluster_token: self.initial_cluster_token,
            quota_backend_bytes,
            max_request_bytes: self.max_request_bytes as usize,
            max_txn_ops: self.max_txn_ops as usize,
            auto_compaction,
            watch_progress_interval,
            cores,
        })
    }
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

/// `http://host:port` to a socket address. TLS (https) comes with the auth/TLS work.
fn parse_url(flag: &str, url: &str) -> Result<SocketAddr, String> {
    let Some(host_port) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            return Err(format!("{flag}: {url}: https is not supported yet (TLS is not built)"));
        }
        return Err(format!("{flag}: URL scheme must be http or https: {url}"));
    };
    let host_port = host_port.trim_end_matches('/');
    let mut addresses = host_port.to_socket_addrs().map_err(|error| format!("{flag}: {url}: {error}"))?;
    let ipv4 = addresses.clone().find(SocketAddr::is_ipv4);
    ipv4.or_else(|| addresses.next()).ok_or_else(|| format!("{flag}: {url}: no address"))
}

/// This slice serves one member: --initial-cluster must name exactly this member.
fn check_single_member(name: &str, initial_cluster: &str, peer_urls: &[String]) -> Result<(), String> {
    let mut members = Vec::new();
    for entry in initial_cluster.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((member, url)) = entry.split_once('=') else {
            return Err(format!("--initial-cluster: {entry}: expected name=url"));
        };
        members.push((member.to_owned(), url.to_owned()));
    }
    let names: std::collections::BTreeSet<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    if names.len() > 1 {
        return Err(
            "--initial-cluster: multi-member clusters need the replicated server, which is not built yet".into()
        );
    }
    if names.iter().next() != Some(&name) {
        return Err(format!("--initial-cluster has no entry for this member's --name {name:?}"));
    }
    for (_, url) in &members {
        if !peer_urls.contains(url) {
            return Err(format!(
                "--initial-cluster must include {name}={} (given --initial-advertise-peer-urls)",
                peer_urls.join(",")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(std::iter::once("ringd").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_etcds() {
        let config = flags(&[]).unwrap().into_config().unwrap();
        assert_eq!(config.name, "default");
        assert_eq!(config.data_dir, PathBuf::from("default.ringd"));
        assert_eq!(config.listen_client_addresses, vec!["127.0.0.1:2379".parse().unwrap()]);
        assert_eq!(config.max_request_bytes, 1572864);
        assert_eq!(config.max_txn_ops, 128);
        assert_eq!(config.quota_backend_bytes, QUOTA_BACKEND_BYTES_DEFAULT);
        assert_eq!(config.peer_urls, vec!["http://localhost:2380".to_owned()]);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(flags(&["--max-txn-ops", "many"]).is_err());
        assert!(flags(&["--no-such-flag"]).is_err());
        assert!(flags(&["--listen-client-urls", "ftp://x:1"]).unwrap().into_config().is_err());
        let two = flags(&["--initial-cluster", "a=http://localhost:2380,b=http://localhost:2381"]).unwrap();
        assert!(two.into_config().is_err());
    }
}
