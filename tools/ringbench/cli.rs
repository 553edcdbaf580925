//! ringbench's command line: etcd's tools/benchmark flags, names and defaults (etcd 3.4,
//! the version Debian ships), plus ringbench's own (`--output csv`, `--hgrm`, `--plot`,
//! `--client-cores`, `compare`, `mvcc put`). Global flags may come before or after the
//! subcommand, and `--rate` is accepted in both places as etcd's per-command flag was.
//!
//! Self-contained (clap only) so that tests/ringbench.rs compiles it as its own module.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ringbench",
    about = "A benchmark tool for etcd v3 servers (ringd and etcd): etcd's tools/benchmark, rebuilt on ringd's client",
    version
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand accepts (etcd's persistent flags).
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// gRPC endpoints
    #[arg(long, global = true, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Total number of gRPC connections
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Total number of gRPC clients
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Maximum requests per second (0 is no limit)
    #[arg(long, global = true, default_value_t = 0)]
    pub rate: u64,
    /// use full floating point precision
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub precise: bool,
    /// 'true' to sample requests for every second
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub sample: bool,
    /// dial timeout for client connections (Go duration: 5s, 100ms, 0 = none)
    #[arg(long, global = true, default_value = "0", value_parser = parse_go_duration)]
    pub dial_timeout: Duration,
    /// connect only to the leader node
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub target_leader: bool,
    /// provide username[:password] (auth is not supported by ringd yet)
    #[arg(long, global = true, default_value = "")]
    pub user: String,
    /// identify HTTPS client using this SSL certificate file
    #[arg(long = "cert", id = "tls_cert", global = true, default_value = "")]
    pub cert: String,
    /// identify HTTPS client using this SSL key file
    #[arg(long = "key", id = "tls_key", global = true, default_value = "")]
    pub key: String,
    /// verify certificates of HTTPS-enabled servers using this CA bundle
    #[arg(long = "cacert", id = "tls_cacert", global = true, default_value = "")]
    pub cacert: String,
    /// Output format for benchmark results: etcd's text summary (default), json or csv
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Write the latency percentile distribution (HdrHistogram's .hgrm format) to FILE
    #[arg(long, global = true)]
    pub hgrm: Option<PathBuf>,
    /// Draw the latency percentile curve to FILE.svg
    #[arg(long, global = true)]
    pub plot: Option<PathBuf>,
    /// Executors (threads) the load runs on; connections and clients are spread over them
    /// [default: the CPUs this process may run on, as etcd's Go benchmark uses them all]
    #[arg(long, global = true, default_value_t = default_client_cores(), hide_default_value = true)]
    pub client_cores: usize,
}

/// One executor per CPU this process may run on: etcd's benchmark is a Go program, whose
/// goroutines run on every CPU (GOMAXPROCS). With one executor, ringbench's own HTTP/2 work
/// held ringd back at 100 and 1000 clients on a 2-CPU machine (36.7k against 45.4k and 72.5k
/// against 103.0k puts/s, 2026-11-30) while etcd, bound by its own CPU, did the same either way.
pub fn default_client_cores() -> usize {
    std::thread::available_parallelism().map(|cpus| cpus.get()).unwrap_or(1)
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    #[value(name = "text")]
    Text,
    Json,
    Csv,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Benchmark put
    Put(PutArgs),
    /// Benchmark range
    Range(RangeArgs),
    /// Benchmark txn-put
    #[command(name = "txn-put")]
    TxnPut(TxnPutArgs),
    /// Benchmark a mixed load of txn-put & txn-range.
    #[command(name = "txn-mixed")]
    TxnMixed(TxnMixedArgs),
    /// Benchmark watch latency
    #[command(name = "watch-latency")]
    WatchLatency(WatchLatencyArgs),
    /// Benchmark watch
    Watch(WatchArgs),
    /// Benchmark watch with get
    #[command(name = "watch-get")]
    WatchGet(WatchGetArgs),
    /// Benchmark lease keepalive
    #[command(name = "lease-keepalive")]
    LeaseKeepalive(LeaseKeepaliveArgs),
    /// Run a scenario file against a real etcd and ringd, one after the other, and compare
    Compare(CompareArgs),
    /// Benchmark the storage directly (no server)
    Mvcc {
        #[command(subcommand)]
        command: MvccCommand,
    },
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct PutArgs {
    /// Key size of put request
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of put request
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Total number of put requests
    #[arg(long, default_value_t = 10000)]
    pub total: usize,
    /// Maximum possible keys
    #[arg(long, default_value_t = 1)]
    pub key_space_size: usize,
    /// Use sequential keys
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub sequential_keys: bool,
    /// Interval to compact database (e.g. --compact-interval=5m compacts every 5-minute)
    #[arg(long, default_value = "0", value_parser = parse_go_duration)]
    pub compact_interval: Duration,
    /// Delta between current revision and compact revision (e.g. current revision 10000, compact at 9000)
    #[arg(long, default_value_t = 1000)]
    pub compact_index_delta: i64,
    /// 'true' to check hashkv
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub check_hashkv: bool,
    /// Watchers to keep open on keys the load never writes, during the run (ringd extension)
    #[arg(long, default_value_t = 0)]
    pub idle_watchers: usize,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct RangeArgs {
    pub key: String,
    pub end: Option<String>,
    /// Total number of range requests
    #[arg(long, default_value_t = 10000)]
    pub total: usize,
    /// Linearizable(l) or Serializable(s)
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
    /// Maximum number of results (0 is no limit)
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct TxnPutArgs {
    /// Key size of txn put
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of txn put
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of puts per txn
    #[arg(long, default_value_t = 1)]
    pub txn_ops: usize,
    /// Total number of txn requests
    #[arg(long, default_value_t = 10000)]
    pub total: usize,
    /// Maximum possible keys
    #[arg(long, default_value_t = 1)]
    pub key_space_size: usize,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct TxnMixedArgs {
    /// Accepted for etcd's usage line (`txn-mixed key [end-range]`); reads span all keys
    pub key: Option<String>,
    pub end: Option<String>,
    /// Key size of mixed txn
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of mixed txn
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Total number of txn requests
    #[arg(long, default_value_t = 10000)]
    pub total: usize,
    /// Read operation range end key. By default, we do full range query with the default limit of 1000.
    #[arg(long, default_value = "")]
    pub end_key: String,
    /// Read operation range result limit
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
    /// Maximum possible keys
    #[arg(long, default_value_t = 1)]
    pub key_space_size: usize,
    /// Linearizable(l) or Serializable(s)
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
    /// Read/write ops ratio
    #[arg(long, default_value_t = 1.0)]
    pub rw_ratio: f64,
}

/// etcd's watch-latency: --clients watchers of one key over --conns watch streams; each put
/// is timed from its reply to each watcher's event.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct WatchLatencyArgs {
    /// Total number of put requests
    #[arg(long, default_value_t = 1000)]
    pub put_total: usize,
    /// Number of keys to put per second
    #[arg(long, default_value_t = 100)]
    pub put_rate: u64,
    /// Key size of watch response
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size of watch response
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
}

/// etcd's watch: --streams watch streams of --watch-per-stream watchers each over
/// --watched-key-total keys (creation is timed), then --put-total puts to those keys at
/// --put-rate from --clients loops (each event is timed from its put's issue to its arrival).
#[derive(Args, Debug, Clone, PartialEq)]
pub struct WatchArgs {
    /// Total watch streams
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Total watchers per stream
    #[arg(long, default_value_t = 100)]
    pub watch_per_stream: usize,
    /// Total number of keys to be watched
    #[arg(long, default_value_t = 1)]
    pub watched_key_total: usize,
    /// Number of keys to put per second (0 is no limit)
    #[arg(long, default_value_t = 0)]
    pub put_rate: u64,
    /// Number of put requests
    #[arg(long, default_value_t = 1000)]
    pub put_total: usize,
    /// Key size of watch request
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Maximum possible keys
    #[arg(long, default_value_t = 1)]
    pub key_space_size: usize,
    /// Use sequential keys
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub sequential_keys: bool,
}

/// etcd's watch-get: serializable gets of one key, timed, while --watchers unsynced watchers
/// (over --streams streams) catch up on --events past revisions of another key.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct WatchGetArgs {
    /// Total number of watchers
    #[arg(long, default_value_t = 10000)]
    pub watchers: usize,
    /// Total number of watcher streams
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Number of events per watcher
    #[arg(long, default_value_t = 8)]
    pub events: usize,
}

/// etcd's lease-keepalive: each of --clients grants one lease, then they share --total
/// keepalive round trips (etcd's KeepAliveOnce: one stream per round trip).
#[derive(Args, Debug, Clone, PartialEq)]
pub struct LeaseKeepaliveArgs {
    /// Total number of lease keepalive requests
    #[arg(long, default_value_t = 10000)]
    pub total: usize,
    /// Grant this many leases (spread over the clients) and keep them alive over one
    /// LeaseKeepAlive stream per client, as etcd's client library does (ringd extension;
    /// 0: etcd's benchmark, one lease per client and a stream per keepalive)
    #[arg(long, default_value_t = 0)]
    pub leases: usize,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct CompareArgs {
    /// Scenario file (TOML; see tuning/scenarios/etcd-doc.toml)
    #[arg(long)]
    pub scenario: PathBuf,
    /// The ringd binary (default: the one next to ringbench)
    #[arg(long)]
    pub ringd: Option<PathBuf>,
    /// The etcd binary (default: `etcd` on PATH, Debian's etcd-server)
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// Directory under which both servers get fresh data dirs (one file system for both)
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Multiply every scenario's --total by this (0.1 for a quick look)
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Servers to run, in order
    #[arg(long, value_delimiter = ',', default_value = "etcd,ringd")]
    pub servers: Vec<String>,
    /// Runs of each scenario per server; the table shows the run with the median req/s
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum MvccCommand {
    /// Benchmark put of ringd's MVCC store (one write transaction and commit per batch)
    Put(MvccPutArgs),
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct MvccPutArgs {
    /// a total number of keys to put
    #[arg(long, default_value_t = 100)]
    pub total: usize,
    /// a size of key (Byte)
    #[arg(long, default_value_t = 64)]
    pub key_size: usize,
    /// a size of value (Byte)
    #[arg(long, alias = "val-size", default_value_t = 64)]
    pub value_size: usize,
    /// put a key in transaction or not
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub txn: bool,
    /// a number of keys to put per transaction
    #[arg(long, default_value_t = 1)]
    pub txn_ops: usize,
    /// Commit (write pages, fdatasync, switch meta) after every N timed units, inside the
    /// timing of the unit that triggers it; 0 commits only once, untimed, at the end
    #[arg(long, default_value_t = 1)]
    pub commit_every: usize,
    /// Directory for the store file (a fresh one inside it, removed afterwards)
    #[arg(long, default_value = ".")]
    pub data_dir: PathBuf,
}

/// Go's time.ParseDuration: a sequence of decimal numbers with units (ns, us, µs, ms, s, m,
/// h), e.g. "300ms", "1.5h", "2h45m"; "0" alone is zero.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" || text.is_empty() {
        return Ok(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(format!("negative duration {text:?}"));
    }
    let mut seconds = 0f64;
    while !rest.is_empty() {
        let number_length = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_length].parse().map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[number_length..];
        let unit_length = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_length] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("missing unit in duration {text:?}")),
            unit => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        rest = &rest[unit_length..];
        seconds += number * scale;
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl Cli {
    /// --endpoints, the https ones with the TLS of --cacert (and --cert, --key).
    pub fn endpoints(&self) -> Result<Vec<ringd::client::Endpoint>, String> {
        let tls = self.client_tls()?;
        let parse = |text: &String| ringd::client::Endpoint::parse(text).map(|endpoint| endpoint.with_tls(tls.clone()));
        self.global.endpoints.iter().map(parse).collect()
    }

    /// The TLS of --cacert (ringbench verifies servers' certificates, as etcdctl does with
    /// it), presenting --cert and --key when given; None without --cacert.
    fn client_tls(&self) -> Result<Option<ringd::client::ClientTls>, String> {
        let global = &self.global;
        if global.cacert.is_empty() {
            return Ok(None);
        }
        let certificate =
            (!global.cert.is_empty()).then(|| (std::path::Path::new(&global.cert), std::path::Path::new(&global.key)));
        let config = ringd::io::tls::client_config(std::path::Path::new(&global.cacert), certificate)?;
        Ok(Some(ringd::client::ClientTls(config)))
    }

    /// Checks that clap cannot express; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        let global = &self.global;
        if global.conns == 0 || global.clients == 0 || global.client_cores == 0 {
            return Err("--conns, --clients and --client-cores must be at least 1".into());
        }
        if global.cert.is_empty() != global.key.is_empty() {
            return Err("--cert and --key go together".into());
        }
        if !global.user.is_empty() {
            return Err("--user is not supported yet: ringd has no auth".into());
        }
        match &self.command {
            Command::Put(put) if put.key_space_size == 0 => {
                Err(format!("expected positive --key-space-size, got ({})", put.key_space_size))
            }
            Command::TxnPut(txn) if txn.key_space_size == 0 => {
                Err(format!("expected positive --key-space-size, got ({})", txn.key_space_size))
            }
            Command::TxnPut(txn) if txn.txn_ops == 0 => {
                Err(format!("expected positive --txn-ops, got ({})", txn.txn_ops))
            }
            Command::TxnPut(txn) if txn.txn_ops > txn.key_space_size => Err(format!(
                "expected --txn-ops no larger than --key-space-size, got txn-ops({}) key-space-size({})",
                txn.txn_ops, txn.key_space_size
            )),
            Command::TxnMixed(mixed) if mixed.key_space_size == 0 => {
                Err(format!("expected positive --key-space-size, got ({})", mixed.key_space_size))
            }
            Command::Watch(watch) => watch.validate(),
            Command::WatchGet(get) if get.watchers == 0 || get.streams == 0 || get.events == 0 => Err(format!(
                "expected positive --watchers, --streams and --events, got ({}, {}, {})",
                get.watchers, get.streams, get.events
            )),
            _ => Ok(()),
        }
    }
}

impl WatchArgs {
    fn validate(&self) -> Result<(), String> {
        if self.key_space_size == 0 {
            return Err(format!("expected positive --key-space-size, got ({})", self.key_space_size));
        }
        if self.streams == 0 || self.watch_per_stream == 0 || self.watched_key_total == 0 {
            return Err(format!(
                "expected positive --streams, --watch-per-stream and --watched-key-total, got ({}, {}, {})",
                self.streams, self.watch_per_stream, self.watched_key_total
            ));
        }
        if self.key_size == 0 {
            return Err("expected positive --key-size, got (0): etcd writes the key's varint into it".into());
        }
        Ok(())
    }
}
