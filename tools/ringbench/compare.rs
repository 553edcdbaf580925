//! `ringbench compare --scenario FILE`: starts a real etcd and ringd one after the other
//! (fresh data dirs under one directory, so on one file system), runs the scenario file's
//! benchmarks against each, stops each by PID, and prints one Markdown table with both
//! and their ratios (plus, with --plot, one SVG per scenario with both curves).
//!
//! Scenario file (TOML):
//!
//! ```toml
//! title = "..."
//! members = 1                                  # only 1 for now
//! seed = [{ key = "foo", value_size = 256 }]   # put before the scenarios run
//! [[scenario]]
//! name = "put, 1 conn, 1 client"
//! args = "--conns=1 --clients=1 put --key-size=8 --sequential-keys --total=10000 --val-size=256"
//! ```
//! `args` is a ringbench command line without --endpoints (compare adds it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use ringd::api::pb::etcdserverpb as pb;
use ringd::client::{Channel, Endpoint};

use crate::bench::{self, block_on, Run, READY_TIMEOUT};
use crate::cli::{Cli, Command, CompareArgs};

const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub title: String,
    #[serde(default = "one")]
    pub members: usize,
    #[serde(default)]
    pub seed: Vec<Seed>,
    pub scenario: Vec<Scenario>,
}

fn one() -> usize {
    1
}

#[derive(serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub key: String,
    pub value_size: usize,
}

#[derive(serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub args: String,
}

pub fn load_scenarios(path: &Path) -> Result<ScenarioFile, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("read {}: {error}", path.display()))?;
    let file: ScenarioFile = toml::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    if file.members != 1 {
        return Err(format!("{}: members = {}: only 1 member is supported yet", path.display(), file.members));
    }
    for scenario in &file.scenario {
        scenario_cli(scenario, "http://127.0.0.1:2379", 1.0)?;
    }
    Ok(file)
}

/// The ringbench command line of a scenario against `endpoint`, --total scaled.
pub fn scenario_cli(scenario: &Scenario, endpoint: &str, scale: f64) -> Result<Cli, String> {
    use clap::Parser;
    let mut argv = vec!["ringbench".to_owned(), format!("--endpoints={endpoint}")];
    argv.extend(scenario.args.split_whitespace().map(str::to_owned));
    let mut cli = Cli::try_parse_from(&argv).map_err(|error| format!("scenario {:?}: {error}", scenario.name))?;
    cli.validate().map_err(|error| format!("scenario {:?}: {error}", scenario.name))?;
    let total = match &mut cli.command {
        Command::Put(args) => &mut args.total,
        Command::Range(args) => &mut args.total,
        Command::TxnPut(args) => &mut args.total,
        Command::TxnMixed(args) => &mut args.total,
        _ => {
            return Err(format!("scenario {:?}: only put, range, txn-put and txn-mixed can be compared", scenario.name))
        }
    };
    *total = ((*total as f64 * scale).round() as usize).max(1);
    Ok(cli)
}

/// A server under test, stopped by PID when dropped.
struct Server {
    name: String,
    child: Child,
    endpoint: String,
    data_dir: PathBuf,
}

impl Server {
    fn start(name: &str, binary: &Path, root: &Path) -> Result<Server, String> {
        let data_dir = root.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(root).map_err(|error| format!("create {}: {error}", root.display()))?;
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut process = Process::new(binary);
        process.args(["--name", "default", "--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint]);
        process.arg("--data-dir").arg(&data_dir);
        if name == "etcd" {
            let peer = format!("http://127.0.0.1:{}", free_port());
            process.args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer]);
            process.args(["--initial-cluster", &format!("default={peer}")]);
        }
        let log = std::fs::File::create(root.join(format!("{name}.log"))).map_err(|error| error.to_string())?;
        let child = process.stdout(Stdio::null()).stderr(log).spawn().map_err(|error| {
            format!("start {name} ({}): {error}; install it (Debian: etcd-server) or pass its path", binary.display())
        })?;
        let server = Server { name: name.to_owned(), child, endpoint, data_dir };
        server.wait_ready()?;
        Ok(server)
    }

    /// Ready when Maintenance Status answers with a leader (etcd elects itself first).
    fn wait_ready(&self) -> Result<(), String> {
        let endpoint = Endpoint::parse(&self.endpoint)?;
        let ready = block_on(move || async move {
            let deadline = Instant::now() + READY_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(channel) = Channel::connect(&endpoint, Duration::from_secs(1)).await {
                    if channel.status().await.is_ok_and(|status| status.leader != 0) {
                        return true;
                    }
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            false
        })?;
        if ready {
            Ok(())
        } else {
            Err(format!(
                "{} did not become ready within {READY_TIMEOUT:?} (see its log next to its data dir)",
                self.name
            ))
        }
    }

    /// user + system CPU of the server process so far, from /proc/PID/stat.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        // After the command name: state is field 3, utime 14 and stime 15 (1-based).
        let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok())).sum();
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Duration::from_secs_f64(ticks as f64 / per_second)
    }

    fn seed(&self, seeds: &[Seed]) -> Result<(), String> {
        let endpoint = Endpoint::parse(&self.endpoint)?;
        let seeds = seeds.to_vec();
        block_on(move || async move {
            let channel = Channel::connect(&endpoint, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
            for seed in seeds {
                let put = pb::PutRequest {
                    key: seed.key.into_bytes(),
                    value: vec![b'v'; seed.value_size],
                    ..Default::default()
                };
                channel.put(&put).await.map_err(|e| format!("seed put: {e}"))?;
            }
            Ok::<(), String>(())
        })?
    }

    /// SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT; by PID only.
    fn stop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// One scenario on one server.
struct Measured {
    server: String,
    scenario: String,
    run: Run,
    server_cpu: Duration,
}

/// Runs a scenario --runs times on a server and keeps the run with the median req/s.
fn measure(server: &Server, scenario: &Scenario, args: &CompareArgs) -> Result<Vec<Measured>, String> {
    let scenario_cli = scenario_cli(scenario, &server.endpoint, args.scale)?;
    let mut attempts: Vec<(Vec<Run>, Duration)> = Vec::new();
    for attempt in 1..=args.runs.max(1) {
        eprintln!(
            "{}: {} (run {attempt} of {}: ringbench {})",
            server.name,
            scenario.name,
            args.runs.max(1),
            scenario.args
        );
        let cpu_before = server.cpu();
        let runs = bench::run(&scenario_cli, true)?;
        attempts.push((runs, server.cpu().saturating_sub(cpu_before)));
    }
    let rate = |runs: &Vec<Run>| runs.iter().map(|run| run.stats.requests_per_second).sum::<f64>();
    attempts.sort_by(|a, b| rate(&a.0).total_cmp(&rate(&b.0)));
    let (runs, server_cpu) = attempts.swap_remove(attempts.len() / 2);
    Ok(runs
        .into_iter()
        .map(|run| {
            let scenario_name = if run.name.starts_with("txn-mixed") {
                format!("{} ({})", scenario.name, run.name)
            } else {
                scenario.name.clone()
            };
            Measured { server: server.name.clone(), scenario: scenario_name, run, server_cpu }
        })
        .collect())
}

fn ringd_binary(args: &CompareArgs) -> PathBuf {
    args.ringd.clone().unwrap_or_else(|| {
        let me = std::env::current_exe().unwrap_or_default();
        me.with_file_name("ringd")
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn main(cli: &Cli, args: &CompareArgs) -> Result<(), String> {
    let file = load_scenarios(&args.scenario)?;
    let ringd = ringd_binary(args);
    let root = args.data_root.clone().unwrap_or_else(|| ringd.with_file_name("ringbench-compare"));
    let load_before = load_average();
    let mut measured = Vec::new();
    for server_name in &args.servers {
        let binary = match server_name.as_str() {
            "etcd" => args.etcd.clone(),
            "ringd" => ringd.clone(),
            other => return Err(format!("--servers: unknown server {other:?} (etcd, ringd)")),
        };
        let mut server = Server::start(server_name, &binary, &root)?;
        server.seed(&file.seed)?;
        for scenario in &file.scenario {
            measured.extend(measure(&server, scenario, args)?);
        }
        server.stop();
    }
    println!("{}", table(&file.title, &measured, &args.servers));
    println!(
        "load average before: {load_before}; after: {}; cores: {}",
        load_average(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    if let Some(plot) = &cli.global.plot {
        write_plots(plot, &measured)?;
    }
    Ok(())
}

/// The Markdown table: per scenario, each server's req/s, p50 and p99 (ms), errors, server
/// and ringbench CPU per request (µs), and ringd/etcd ratios of req/s.
fn table(title: &str, measured: &[Measured], servers: &[String]) -> String {
    let scenarios = scenario_names(measured);
    let mut header = vec!["scenario".to_owned()];
    for server in servers {
        header.extend(
            ["req/s", "p50 ms", "p99 ms", "errors", "server CPU µs/req", "ringbench CPU µs/req"]
                .map(|c| format!("{server} {c}")),
        );
    }
    let both = servers.iter().any(|s| s == "etcd") && servers.iter().any(|s| s == "ringd");
    if both {
        header.extend(["ringd/etcd req/s".to_owned(), "ringd/etcd p99".to_owned()]);
    }
    let mut text = format!("### {title}\n\n| {} |\n|{}\n", header.join(" | "), " --- |".repeat(header.len()));
    for scenario in scenarios {
        let find = |server: &str| measured.iter().find(|m| m.server == server && m.scenario == scenario);
        let mut row = vec![scenario.to_owned()];
        for server in servers {
            row.extend(match find(server) {
                Some(m) => cells(m),
                None => vec!["-".into(); 6],
            });
        }
        if both {
            if let (Some(etcd), Some(ringd)) = (find("etcd"), find("ringd")) {
                row.push(format!("{:.2}x", ringd.run.stats.requests_per_second / etcd.run.stats.requests_per_second));
                let (ours, theirs) = (percentile(ringd, 99.0), percentile(etcd, 99.0));
                row.push(if ours > 0.0 && theirs > 0.0 { format!("{:.2}x", ours / theirs) } else { "-".into() });
            }
        }
        text += &format!("| {} |\n", row.join(" | "));
    }
    text
}

/// Scenario names in the order they first ran, each once.
fn scenario_names(measured: &[Measured]) -> Vec<&str> {
    let mut scenarios: Vec<&str> = Vec::new();
    for entry in measured {
        if !scenarios.contains(&entry.scenario.as_str()) {
            scenarios.push(&entry.scenario);
        }
    }
    scenarios
}

fn percentile(measured: &Measured, wanted: f64) -> f64 {
    measured.run.stats.percentiles.iter().find(|(p, _)| *p == wanted).map_or(0.0, |&(_, v)| v)
}

/// Milliseconds, or "-" where etcd's rule gives no percentile (fewer than 100 requests).
fn milliseconds(seconds: f64) -> String {
    if seconds > 0.0 {
        format!("{:.3}", seconds * 1e3)
    } else {
        "-".into()
    }
}

fn cells(m: &Measured) -> Vec<String> {
    let stats = &m.run.stats;
    let requests = (stats.count + stats.errors.values().sum::<u64>()).max(1) as f64;
    vec![
        format!("{:.0}", stats.requests_per_second),
        milliseconds(percentile(m, 50.0)),
        milliseconds(percentile(m, 99.0)),
        format!("{}", stats.errors.values().sum::<u64>()),
        format!("{:.1}", m.server_cpu.as_secs_f64() * 1e6 / requests),
        format!("{:.1}", m.run.cpu.microseconds_per_request),
    ]
}

/// One SVG per scenario, every server's curve on it: FILE.svg becomes FILE-<scenario>.svg.
fn write_plots(plot: &Path, measured: &[Measured]) -> Result<(), String> {
    let stem = plot.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    for scenario in scenario_names(measured) {
        let curves: Vec<(String, &crate::report::Recorder)> =
            measured.iter().filter(|m| m.scenario == scenario).map(|m| (m.server.clone(), &m.run.recorder)).collect();
        let slug: String =
            scenario.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let path = plot.with_file_name(format!("{stem}-{slug}.svg"));
        std::fs::write(&path, crate::plot::svg(&curves, scenario))
            .map_err(|error| format!("write {}: {error}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
