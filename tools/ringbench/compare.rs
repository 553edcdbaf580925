//! `ringbench compare --scenario FILE`: starts a real etcd cluster and a ringd cluster one
//! after the other (fresh data dirs under one directory, so on one file system), runs the
//! scenario file's benchmarks against each, stops every process by PID, and prints one
//! Markdown table with both and their ratios (plus, with --plot, one SVG per scenario with
//! both curves).
//!
//! Scenario file (TOML):
//!
//! ```toml
//! title = "..."
//! members = 3                                  # 1 to 7 members per cluster (default 1)
//! seed = [{ key = "foo", value_size = 256 }]   # put before the scenarios run
//! [[scenario]]
//! name = "put, 1 conn, 1 client"
//! args = "--target-leader --conns=1 --clients=1 put --key-size=8 --sequential-keys --total=10000 --val-size=256"
//! ```
//! `args` is a ringbench command line without --endpoints: compare adds every member's client
//! URL, in member order, and `--target-leader` narrows them to the leader as etcd's benchmark
//! does (Maintenance Status).
//!
//! Both servers get the same command line, etcd's clustering flags: member i is `m{i}` with a
//! client and a peer URL on free 127.0.0.1 ports, `--initial-cluster` naming every member,
//! one `--initial-cluster-token` per run and `--initial-cluster-state new`. A cluster is
//! ready when every member answers Status naming the same leader, one of the members.

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

/// etcd's advice is at most 7 voting members; every member is a process on this machine.
pub const MEMBERS_MAX: usize = 7;

pub fn load_scenarios(path: &Path) -> Result<ScenarioFile, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("read {}: {error}", path.display()))?;
    let file: ScenarioFile = toml::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    if !(1..=MEMBERS_MAX).contains(&file.members) {
        return Err(format!("{}: members = {}: give 1 to {MEMBERS_MAX}", path.display(), file.members));
    }
    let endpoints: Vec<String> = (0..file.members).map(|i| format!("http://127.0.0.1:{}", 2379 + i)).collect();
    for scenario in &file.scenario {
        scenario_cli(scenario, &endpoints, 1.0)?;
    }
    Ok(file)
}

/// The ringbench command line of a scenario against `endpoints`, --total scaled.
pub fn scenario_cli(scenario: &Scenario, endpoints: &[String], scale: f64) -> Result<Cli, String> {
    use clap::Parser;
    assert!(!endpoints.is_empty());
    let mut argv = vec!["ringbench".to_owned(), format!("--endpoints={}", endpoints.join(","))];
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
    if cli.global.endpoints.len() != endpoints.len() {
        return Err(format!("scenario {:?}: leave --endpoints out of args (compare adds them)", scenario.name));
    }
    Ok(cli)
}

/// One member process of a server under test.
struct Member {
    child: Child,
    endpoint: String,
    data_dir: PathBuf,
}

/// A server under test: its cluster of members, every one stopped by PID when dropped.
struct Server {
    name: String,
    members: Vec<Member>,
    /// Every member has been waited for: its PID may belong to another process by now.
    stopped: bool,
}

/// What a member answers to Maintenance Status: (its member ID, the leader it knows).
type MemberStatus = Option<(u64, u64)>;

impl Server {
    /// Starts `members` processes of `binary` with etcd's clustering flags (the same for
    /// etcd and ringd) and waits until they agree on a leader.
    fn start(name: &str, binary: &Path, root: &Path, members: usize) -> Result<Server, String> {
        assert!((1..=MEMBERS_MAX).contains(&members));
        std::fs::create_dir_all(root).map_err(|error| format!("create {}: {error}", root.display()))?;
        let ports = free_ports(2 * members)?;
        let client_urls: Vec<String> = ports[..members].iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        let peer_urls: Vec<String> = ports[members..].iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        let initial_cluster: Vec<String> = peer_urls.iter().enumerate().map(|(i, url)| format!("m{i}={url}")).collect();
        let token = format!("ringbench-{name}-{}", std::process::id());
        let mut server = Server { name: name.to_owned(), members: Vec::with_capacity(members), stopped: false };
        for index in 0..members {
            let data_dir = root.join(format!("{name}-{}-m{index}", std::process::id()));
            let _ = std::fs::remove_dir_all(&data_dir);
            let mut process = Process::new(binary);
            process.args(["--name", &format!("m{index}"), "--data-dir"]).arg(&data_dir);
            process.args(["--listen-client-urls", &client_urls[index], "--advertise-client-urls", &client_urls[index]]);
            process.args(["--listen-peer-urls", &peer_urls[index], "--initial-advertise-peer-urls", &peer_urls[index]]);
            process.args(["--initial-cluster", &initial_cluster.join(","), "--initial-cluster-token", &token]);
            process.args(["--initial-cluster-state", "new"]);
            let log_path = root.join(format!("{name}-m{index}.log"));
            let log = std::fs::File::create(&log_path).map_err(|error| format!("{}: {error}", log_path.display()))?;
            // Pushed as soon as it runs, so that an error below still stops it (Drop).
            let child = process.stdout(Stdio::null()).stderr(log).spawn().map_err(|error| {
                format!(
                    "start {name} ({}): {error}; install it (Debian: etcd-server) or pass its path",
                    binary.display()
                )
            })?;
            server.members.push(Member { child, endpoint: client_urls[index].clone(), data_dir });
        }
        assert_eq!(server.members.len(), members);
        server.wait_ready(root)?;
        Ok(server)
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|member| member.endpoint.clone()).collect()
    }

    /// Ready when every member answers Status naming the same leader, and that leader is one
    /// of the members (etcd and ringd both elect after they listen). A member that exits
    /// fails the start at once.
    fn wait_ready(&self, root: &Path) -> Result<(), String> {
        let endpoints: Vec<Endpoint> = self.endpoints().iter().map(|e| Endpoint::parse(e)).collect::<Result<_, _>>()?;
        let pids: Vec<u32> = self.members.iter().map(|member| member.child.id()).collect();
        let outcome = block_on(move || async move {
            let deadline = Instant::now() + READY_TIMEOUT;
            let mut statuses: Vec<MemberStatus> = Vec::new();
            while Instant::now() < deadline {
                if let Some(index) = pids.iter().position(|&pid| exited(pid)) {
                    return Err(Some(index));
                }
                statuses = member_statuses(&endpoints).await;
                if agreed_leader(&statuses).is_some() {
                    return Ok(());
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            eprintln!("member statuses (member id, leader id) at the deadline: {statuses:?}");
            Err(None)
        })?;
        outcome.map_err(|member| match member {
            Some(index) => {
                format!("{} member m{index} exited during start; see {}", self.name, self.log(root, index).display())
            }
            None => format!(
                "{} did not agree on a leader within {READY_TIMEOUT:?}; see {}",
                self.name,
                self.log(root, 0).display()
            ),
        })
    }

    fn log(&self, root: &Path, index: usize) -> PathBuf {
        root.join(format!("{}-m{index}.log", self.name))
    }

    /// user + system CPU of every member process so far.
    fn cpu(&self) -> Duration {
        self.members.iter().map(|member| process_cpu(member.child.id())).sum()
    }

    /// Puts the seed keys through the first member (a follower forwards them).
    fn seed(&self, seeds: &[Seed]) -> Result<(), String> {
        let endpoint = Endpoint::parse(&self.members[0].endpoint)?;
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

    /// SIGTERM to every member, then SIGKILL to those that have not exited within
    /// STOP_TIMEOUT; by PID only, and every child is waited for.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        for member in &self.members {
            // SAFETY: signalling our own child by its PID; it is not reaped until waited for.
            unsafe { libc::kill(member.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for member in &mut self.members {
            while Instant::now() < deadline && !matches!(member.child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = member.child.kill();
            let _ = member.child.wait();
        }
        self.stopped = true;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        for member in &self.members {
            let _ = std::fs::remove_dir_all(&member.data_dir);
        }
    }
}

/// Status of each member, None where it does not answer (yet).
async fn member_statuses(endpoints: &[Endpoint]) -> Vec<MemberStatus> {
    let mut statuses = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let status = match Channel::connect(endpoint, Duration::from_secs(1)).await {
            Ok(channel) => channel.status().await.ok(),
            Err(_) => None,
        };
        statuses.push(status.and_then(|s| Some((s.header?.member_id, s.leader))));
    }
    assert_eq!(statuses.len(), endpoints.len());
    statuses
}

/// The leader every member names, if they all answered, all name the same non-zero one,
/// and it is one of them.
fn agreed_leader(statuses: &[MemberStatus]) -> Option<u64> {
    let answers: Vec<(u64, u64)> = statuses.iter().copied().collect::<Option<_>>()?;
    let leader = answers.first()?.1;
    let agreed = leader != 0
        && answers.iter().all(|&(_, named)| named == leader)
        && answers.iter().any(|&(member_id, _)| member_id == leader);
    agreed.then_some(leader)
}

/// Whether our child `pid` has exited (a zombie until waited for) or is gone.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// user + system CPU of process `pid` so far, from /proc/PID/stat.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok())).sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / per_second)
}

/// `count` distinct free ports: all listeners are held until every port is known, so the OS
/// cannot hand out one port twice.
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|error| format!("no free port on 127.0.0.1: {error}"))?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<Result<_, _>>()
        .map_err(|error| format!("no free port on 127.0.0.1: {error}"))?;
    assert_eq!(ports.len(), count);
    Ok(ports)
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
    let scenario_cli = scenario_cli(scenario, &server.endpoints(), args.scale)?;
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
    let mut loads = Vec::new();
    let mut measured = Vec::new();
    for server_name in &args.servers {
        let binary = match server_name.as_str() {
            "etcd" => args.etcd.clone(),
            "ringd" => ringd.clone(),
            other => return Err(format!("--servers: unknown server {other:?} (etcd, ringd)")),
        };
        loads.push(format!("{server_name} {}", load_average()));
        let mut server = Server::start(server_name, &binary, &root, file.members)?;
        server.seed(&file.seed)?;
        for scenario in &file.scenario {
            measured.extend(measure(&server, scenario, args)?);
        }
        server.stop();
    }
    println!("{}", table(&file.title, &measured, &args.servers));
    println!(
        "members per server: {}; load average before: {}; after: {}; cores: {}",
        file.members,
        loads.join(", "),
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
