//! One benchmark run of a subcommand: for put, range, txn-put and txn-mixed builds the
//! workload and runs the load; the watch and lease subcommands run in modules of their own.
//! Then prints etcd's report (or JSON / CSV), the client's CPU, ringd's server-side latency
//! by stage for the load subcommands (server_stages.rs), and the optional .hgrm and SVG files.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringd::client::{Channel, Endpoint};

use crate::cli::{Cli, Command, OutputFormat};
use crate::load::{self, LoadOptions};
use crate::report::{self, ClientCpu, Outcome, Precision, Recorder, Stats};
use crate::server_stages::{self, ServerStages};
use crate::workload::{self, Random, Workload};

/// One report of a run (txn-mixed has two: reads and writes).
pub struct Run {
    pub name: String,
    pub recorder: Recorder,
    pub stats: Stats,
    pub cpu: ClientCpu,
}

/// Runs a future on a glommio executor of its own thread and waits for its output.
pub fn block_on<T, F, G>(make: G) -> Result<T, String>
where
    T: Send + 'static,
    F: Future<Output = T> + 'static,
    G: FnOnce() -> F + Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(make)
        .map_err(|error| format!("cannot start a glommio executor: {error}"))?
        .join()
        .map_err(|error| format!("glommio executor failed: {error}"))
}

/// `count` connections, the i-th to endpoint i mod len, as etcd's benchmark dials them.
pub async fn connect_channels(
    endpoints: &[Endpoint],
    count: usize,
    dial_timeout: Duration,
) -> Result<Vec<Channel>, String> {
    assert!(!endpoints.is_empty() && count > 0);
    let mut channels = Vec::with_capacity(count);
    for index in 0..count {
        let endpoint = &endpoints[index % endpoints.len()];
        channels.push(Channel::connect(endpoint, dial_timeout).await.map_err(|error| format!("dial error: {error}"))?);
    }
    assert_eq!(channels.len(), count);
    Ok(channels)
}

/// `future`'s output, or None when `limit` passes first (the future is dropped).
pub async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    let future = std::pin::pin!(future);
    let sleep = std::pin::pin!(glommio::timer::sleep(limit));
    match futures::future::select(future, sleep).await {
        futures::future::Either::Left((output, _)) => Some(output),
        futures::future::Either::Right(_) => None,
    }
}

/// The endpoints the load goes to: all of them, or with --target-leader only the leader
/// (found with Maintenance Status, as etcd's benchmark does: the member whose own ID is the
/// leader it reports; etcd and ringd both answer so). An election in progress has no such
/// member yet, so the search is repeated until LEADER_SEARCH_TIMEOUT.
pub fn target_endpoints(cli: &Cli) -> Result<Vec<Endpoint>, String> {
    let endpoints: Vec<Endpoint> = cli.endpoints()?;
    if endpoints.is_empty() {
        return Err("no --endpoints given".into());
    }
    if !cli.global.target_leader || endpoints.len() == 1 {
        return Ok(endpoints);
    }
    let dial_timeout = if cli.global.dial_timeout.is_zero() { LEADER_DIAL_TIMEOUT } else { cli.global.dial_timeout };
    let candidates = endpoints.clone();
    let leader = block_on(move || async move {
        let deadline = Instant::now() + LEADER_SEARCH_TIMEOUT;
        loop {
            if let Some(leader) = find_leader(&candidates, dial_timeout).await {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
    })?;
    let Some(leader) = leader else {
        return Err(format!("no leader found among --endpoints {}", cli.global.endpoints.join(",")));
    };
    // stderr, beside the progress bar: the report on stdout stays etcd's.
    eprintln!("--target-leader: the leader is {}", leader.authority());
    Ok(vec![leader])
}

/// How long --target-leader looks for a leader before giving up.
const LEADER_SEARCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on each connect of the leader search when --dial-timeout is 0 (none).
const LEADER_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// The first endpoint whose member says it is the leader, in one pass over them.
async fn find_leader(endpoints: &[Endpoint], dial_timeout: Duration) -> Option<Endpoint> {
    for endpoint in endpoints {
        let Ok(channel) = Channel::connect(endpoint, dial_timeout).await else { continue };
        let Some(Ok(status)) = within(dial_timeout, channel.status()).await else { continue };
        if status.leader != 0 && status.header.is_some_and(|header| header.member_id == status.leader) {
            return Some(endpoint.clone());
        }
    }
    None
}

fn workload_of(command: &Command) -> Result<(Arc<dyn Workload>, usize), String> {
    let mut random = Random::new(Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64);
    Ok(match command {
        Command::Put(args) => {
            let value = random.bytes(args.val_size);
            (Arc::new(workload::Put { args: args.clone(), value }), args.total)
        }
        Command::Range(args) => (Arc::new(workload::Range::new(args)), args.total),
        Command::TxnPut(args) => {
            let value = random.bytes(args.val_size);
            (Arc::new(workload::TxnPut { args: args.clone(), value }), args.total)
        }
        Command::TxnMixed(args) => {
            let value = random.bytes(args.val_size);
            (Arc::new(workload::TxnMixed::new(args.clone(), value)), args.total)
        }
        _ => return Err("not a load subcommand".into()),
    })
}

/// Runs the load of `cli` and computes its reports; prints nothing but the progress bar.
pub fn run(cli: &Cli, progress: bool) -> Result<Vec<Run>, String> {
    let (workload, total) = workload_of(&cli.command)?;
    let compaction = match &cli.command {
        Command::Put(put) if !put.compact_interval.is_zero() => Some((put.compact_interval, put.compact_index_delta)),
        _ => None,
    };
    let options = LoadOptions {
        endpoints: target_endpoints(cli)?,
        connections: cli.global.conns,
        clients: cli.global.clients,
        executors: cli.global.client_cores,
        dial_timeout: cli.global.dial_timeout,
        rate: cli.global.rate,
        total,
        sample: cli.global.sample,
        progress,
        compaction,
    };
    let names = workload.classes();
    let result = load::run(options, workload)?;
    let runs = names
        .into_iter()
        .zip(result.recorders)
        .map(|(name, recorder)| {
            let stats = Stats::compute(&recorder, result.wall);
            Run { name, recorder, stats, cpu: result.cpu }
        })
        .collect();
    Ok(runs)
}

/// `ringbench put|range|txn-put|txn-mixed`: run and print as etcd's benchmark prints.
pub fn main(cli: &Cli) -> Result<(), String> {
    let text = cli.global.output == OutputFormat::Text;
    if let (Command::Range(args), true) = (&cli.command, text) {
        let kind = if args.consistency == "l" { "linearizable" } else { "serializable" };
        println!("bench with {kind} range");
    }
    let (runs, stages) = match &cli.command {
        Command::WatchLatency(args) => (vec![crate::watch_latency::run(cli, args)?], None),
        Command::Watch(args) => (crate::watch::run(cli, args)?, None),
        Command::WatchGet(args) => (vec![crate::watch_get::run(cli, args)?], None),
        Command::LeaseKeepalive(args) => (vec![crate::lease_keepalive::run(cli, args)?], None),
        Command::Put(put) if put.idle_watchers > 0 => {
            let endpoint = target_endpoints(cli)?.remove(0);
            let _watchers =
                crate::idle_watchers::IdleWatchers::open(endpoint, put.idle_watchers, cli.global.dial_timeout)?;
            run_with_server_stages(cli)?
        }
        _ => run_with_server_stages(cli)?,
    };
    print_runs(cli, &runs, stages.as_ref());
    if let Some(path) = &cli.global.hgrm {
        write_hgrm(path, &runs)?;
    }
    if let Some(path) = &cli.global.plot {
        let curves: Vec<(String, &Recorder)> = runs.iter().map(|run| (run.name.clone(), &run.recorder)).collect();
        std::fs::write(path, crate::plot::svg(&curves, "ringbench latency by percentile"))
            .map_err(|error| format!("write {}: {error}", path.display()))?;
    }
    if let Command::Put(put) = &cli.command {
        if put.check_hashkv {
            check_hashkv(cli)?;
        }
    }
    Ok(())
}

/// `run`, with ringd's /debug/latency read from every endpoint before and after it; the
/// stages are None against a server that is not ringd, or when a read fails (then a note
/// goes to stderr: the benchmark itself stands).
fn run_with_server_stages(cli: &Cli) -> Result<(Vec<Run>, Option<ServerStages>), String> {
    let endpoints = server_stages::endpoints_of(&cli.global.endpoints);
    if endpoints.iter().any(|endpoint| endpoint.https) {
        eprintln!("ringbench: no server-side latency by stage: /debug/latency is read over plain HTTP only");
        return Ok((run(cli, true)?, None));
    }
    let before = server_stages::capture(&endpoints);
    let runs = run(cli, true)?;
    let stages = match before {
        Ok(Some(before)) => server_stages::capture(&endpoints).and_then(|after| match after {
            Some(after) => server_stages::difference(before, after).map(Some),
            None => Ok(None),
        }),
        other => other.map(|_| None),
    };
    let stages = stages.unwrap_or_else(|message| {
        eprintln!("ringbench: no server-side latency by stage: {message}");
        None
    });
    Ok((runs, stages))
}

pub fn print_runs(cli: &Cli, runs: &[Run], stages: Option<&ServerStages>) {
    let precision = if cli.global.precise { Precision::Full } else { Precision::Fixed };
    match cli.global.output {
        OutputFormat::Json => {
            let mut outcomes: Vec<serde_json::Value> =
                runs.iter().map(|run| serde_json::to_value(outcome(run)).expect("plain data serialises")).collect();
            // The stages cover the whole run: txn-mixed's reads and writes carry the same.
            if let Some(stages) = stages {
                for outcome in &mut outcomes {
                    outcome["server_stages"] = stages.json();
                }
            }
            let json = if outcomes.len() == 1 {
                serde_json::to_string_pretty(&outcomes[0])
            } else {
                serde_json::to_string_pretty(&outcomes)
            };
            println!("{}", json.expect("plain data serialises"));
        }
        OutputFormat::Csv => {
            println!("{}", report::CSV_HEADER);
            for run in runs {
                println!("{}", outcome(run).csv_row());
            }
        }
        OutputFormat::Text => {
            let mixed = matches!(cli.command, Command::TxnMixed(_));
            for (index, run) in runs.iter().enumerate() {
                let body = report::render(&run.stats, &run.recorder, precision);
                if let Some(heading) = text_heading(&cli.command, index) {
                    print!("{heading}\n{body}");
                } else if mixed {
                    let kind = if run.name.ends_with("read") { "Read" } else { "Write" };
                    let operations = run.recorder.count + run.recorder.error_count();
                    println!("Total {kind} Ops: {operations}\nDetails:{body}");
                } else if matches!(
                    cli.command,
                    Command::Range(_) | Command::WatchLatency(_) | Command::LeaseKeepalive(_)
                ) {
                    print!("{body}");
                } else {
                    println!("{body}");
                }
            }
            if let Some(run) = runs.first() {
                print!("{}", run.cpu.render());
            }
            if let Some(stages) = stages {
                print!("{}", stages.render());
            }
        }
    }
}

/// The line etcd prints above the report of run `index` (`fmt.Printf("...:\n%s", report)`).
fn text_heading(command: &Command, index: usize) -> Option<&'static str> {
    match (command, index) {
        (Command::Watch(_), 0) => Some("Watch creation summary:"),
        (Command::Watch(_), _) => Some("Watch events received summary:"),
        (Command::WatchGet(_), _) => Some("Get during watch summary:"),
        _ => None,
    }
}

fn outcome(run: &Run) -> Outcome {
    Outcome { operation: run.name.clone(), stats: run.stats.clone(), client_cpu: run.cpu }
}

fn write_hgrm(path: &std::path::Path, runs: &[Run]) -> Result<(), String> {
    for (index, run) in runs.iter().enumerate() {
        let target = if index == 0 {
            path.to_owned()
        } else {
            path.with_file_name(format!("{}.{}", path.file_name().unwrap_or_default().to_string_lossy(), run.name))
        };
        std::fs::write(&target, report::hgrm(&run.recorder))
            .map_err(|error| format!("write {}: {error}", target.display()))?;
    }
    Ok(())
}

/// put --check-hashkv: etcd's HashKV summary of the first endpoint after the run.
fn check_hashkv(cli: &Cli) -> Result<(), String> {
    let endpoint = cli.endpoints()?.swap_remove(0);
    let dial_timeout = cli.global.dial_timeout;
    let shown = endpoint.authority();
    let (hash, db_size, took) = block_on(move || async move {
        let channel = Channel::connect(&endpoint, dial_timeout).await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        let hash = channel.hash_kv(0).await.map_err(|e| e.to_string())?;
        let status = channel.status().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((hash.hash, status.db_size, started.elapsed()))
    })??;
    println!(
        "HashKV Summary:\n\tHashKV: {hash}\n\tEndpoint: {shown}\n\tTime taken to get hashkv: {}\n\tDB size: {db_size} B",
        report::go_duration(took.as_nanos() as u64)
    );
    Ok(())
}

/// How long compare waits for a server it started to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
