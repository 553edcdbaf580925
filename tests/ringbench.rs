//! ringbench: its flags and defaults against etcd's benchmark (3.4), its report arithmetic
//! against a direct port of etcd's pkg/report over the same data, and end-to-end runs
//! against a ringd and a real etcd that the test starts (never skipped: a missing etcd is a
//! failure that says how to install it).

mod support;

#[allow(dead_code)]
#[path = "../tools/ringbench/cli.rs"]
mod cli;
#[allow(dead_code)]
#[path = "../tools/ringbench/report.rs"]
mod report;

use std::process::{Command, Output};
use std::time::Duration;

use clap::Parser;
use cli::{Cli, Command as Sub, OutputFormat};
use report::{Precision, Recorder, Stats};

fn parse(args: &[&str]) -> Cli {
    let mut argv = vec!["ringbench"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).unwrap_or_else(|error| panic!("{args:?}: {error}"))
}

#[test]
fn global_flags_default_as_etcds() {
    let cli = parse(&["put"]);
    let global = &cli.global;
    assert_eq!(global.endpoints, vec!["127.0.0.1:2379"]);
    assert_eq!((global.conns, global.clients, global.rate), (1, 1, 0));
    assert!(!global.precise && !global.sample && !global.target_leader);
    assert_eq!(global.dial_timeout, Duration::ZERO);
    assert_eq!(global.output, OutputFormat::Text);
    // etcd's Go benchmark runs on every CPU; so does ringbench's load, one executor per CPU.
    assert_eq!(global.client_cores, std::thread::available_parallelism().unwrap().get());
}

#[test]
fn subcommand_flags_default_as_etcds() {
    let Sub::Put(put) = parse(&["put"]).command else { panic!("put") };
    assert_eq!((put.key_size, put.val_size, put.total, put.key_space_size), (8, 8, 10000, 1));
    assert!(!put.sequential_keys && !put.check_hashkv);
    assert_eq!((put.compact_interval, put.compact_index_delta), (Duration::ZERO, 1000));
    let Sub::Range(range) = parse(&["range", "foo"]).command else { panic!("range") };
    assert_eq!((range.key.as_str(), range.end.as_deref(), range.total), ("foo", None, 10000));
    assert_eq!((range.consistency.as_str(), range.limit), ("l", 0));
    let Sub::TxnPut(txn) = parse(&["txn-put"]).command else { panic!("txn-put") };
    assert_eq!((txn.key_size, txn.val_size, txn.txn_ops, txn.total, txn.key_space_size), (8, 8, 1, 10000, 1));
    let Sub::WatchLatency(watch) = parse(&["watch-latency"]).command else { panic!("watch-latency") };
    assert_eq!((watch.put_total, watch.put_rate, watch.key_size, watch.val_size), (1000, 100, 32, 32));
    let Sub::Mvcc { command: cli::MvccCommand::Put(mvcc) } = parse(&["mvcc", "put"]).command else {
        panic!("mvcc put")
    };
    assert_eq!((mvcc.total, mvcc.key_size, mvcc.value_size, mvcc.txn, mvcc.txn_ops), (100, 64, 64, false, 1));
    let Sub::TxnMixed(mixed) = parse(&["txn-mixed"]).command else { panic!("txn-mixed") };
    assert_eq!((mixed.total, mixed.limit, mixed.rw_ratio, mixed.key_space_size), (10000, 1000, 1.0, 1));
    assert_eq!(mixed.consistency, "l");
}

#[test]
fn watch_and_lease_flags_default_as_etcds() {
    // etcd 3.4 tools/benchmark/cmd/watch.go, watch_get.go and lease.go.
    let Sub::Watch(watch) = parse(&["watch"]).command else { panic!("watch") };
    assert_eq!((watch.streams, watch.watch_per_stream, watch.watched_key_total), (10, 100, 1));
    assert_eq!((watch.put_rate, watch.put_total, watch.key_size, watch.key_space_size), (0, 1000, 32, 1));
    assert!(!watch.sequential_keys);
    let Sub::WatchGet(get) = parse(&["watch-get"]).command else { panic!("watch-get") };
    assert_eq!((get.watchers, get.streams, get.events), (10000, 1, 8));
    let Sub::LeaseKeepalive(lease) = parse(&["lease-keepalive"]).command else { panic!("lease-keepalive") };
    assert_eq!(lease.total, 10000);
    let cli = parse(&[
        "--clients=4",
        "watch",
        "--streams=3",
        "--watch-per-stream=7",
        "--watched-key-total=5",
        "--put-rate=50",
        "--put-total=9",
        "--key-size=16",
        "--key-space-size=4",
        "--sequential-keys",
    ]);
    let Sub::Watch(watch) = &cli.command else { panic!("watch") };
    assert_eq!((watch.streams, watch.watch_per_stream, watch.watched_key_total), (3, 7, 5));
    assert_eq!((watch.put_rate, watch.put_total, watch.key_size, watch.key_space_size), (50, 9, 16, 4));
    assert!(watch.sequential_keys && cli.validate().is_ok());
    assert!(parse(&["watch", "--key-space-size=0"])
        .validate()
        .unwrap_err()
        .contains("expected positive --key-space-size, got (0)"));
    assert!(parse(&["watch", "--streams=0"]).validate().is_err());
    assert!(parse(&["watch-get", "--events=0"]).validate().is_err());
    assert!(Cli::try_parse_from(["ringbench", "watch", "--val-size=8"]).is_err(), "etcd's watch has no --val-size");
    let Sub::WatchGet(get) = parse(&["watch-get", "--watchers=5", "--streams=2", "--events=3"]).command else {
        panic!("watch-get")
    };
    assert_eq!((get.watchers, get.streams, get.events), (5, 2, 3));
}

#[test]
fn flags_parse_as_etcds_command_lines() {
    // etcd's performance doc, word for word (global flags before and after the subcommand).
    let cli = parse(&[
        "--endpoints=http://10.0.0.1:2379,http://10.0.0.2:2379",
        "--target-leader",
        "--conns=100",
        "--clients=1000",
        "put",
        "--key-size=8",
        "--sequential-keys",
        "--total=100000",
        "--val-size=256",
        "--rate",
        "500",
        "--dial-timeout=1m30s",
        "--precise=true",
        "--output",
        "json",
    ]);
    assert_eq!(cli.global.endpoints, vec!["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
    assert!(cli.global.target_leader && cli.global.precise);
    assert_eq!((cli.global.conns, cli.global.clients, cli.global.rate), (100, 1000, 500));
    assert_eq!(cli.global.dial_timeout, Duration::from_secs(90));
    assert_eq!(cli.global.output, OutputFormat::Json);
    let Sub::Put(put) = &cli.command else { panic!("put") };
    assert!(put.sequential_keys);
    assert_eq!((put.key_size, put.val_size, put.total), (8, 256, 100000));
    let cli = parse(&["range", "a", "z", "--consistency=s", "--limit", "5"]);
    let Sub::Range(range) = &cli.command else { panic!("range") };
    assert_eq!((range.end.as_deref(), range.consistency.as_str(), range.limit), (Some("z"), "s", 5));
    assert!(Cli::try_parse_from(["ringbench", "range", "a", "--consistency=x"]).is_err());
    assert!(Cli::try_parse_from(["ringbench", "range"]).is_err(), "range needs a key, as etcd's");
    assert!(parse(&["txn-put", "--txn-ops=3"])
        .validate()
        .unwrap_err()
        .contains("--txn-ops no larger than --key-space-size"));
    assert!(parse(&["put", "--key-space-size=0"])
        .validate()
        .unwrap_err()
        .contains("expected positive --key-space-size"));
}

#[test]
fn go_durations_parse() {
    assert_eq!(cli::parse_go_duration("0").unwrap(), Duration::ZERO);
    assert_eq!(cli::parse_go_duration("300ms").unwrap(), Duration::from_millis(300));
    assert_eq!(cli::parse_go_duration("2h45m").unwrap(), Duration::from_secs(9900));
    assert_eq!(cli::parse_go_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(cli::parse_go_duration("10us").unwrap(), Duration::from_micros(10));
    assert!(cli::parse_go_duration("5").is_err());
    assert!(cli::parse_go_duration("5 parsecs").is_err());
}

/// etcd's pkg/report arithmetic, ported line by line over a list of latencies in seconds.
struct EtcdReference {
    fastest: f64,
    slowest: f64,
    average: f64,
    stddev: f64,
    histogram: Vec<(f64, u64)>,
    percentiles: Vec<f64>,
}

fn etcd_reference(mut lats: Vec<f64>) -> EtcdReference {
    let n = lats.len();
    let average = lats.iter().sum::<f64>() / n as f64;
    let stddev = (lats.iter().map(|l| (l - average) * (l - average)).sum::<f64>() / n as f64).sqrt();
    lats.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (fastest, slowest) = (lats[0], lats[n - 1]);
    let bs = (slowest - fastest) / 10.0;
    let mut buckets: Vec<f64> = (0..10).map(|i| fastest + bs * i as f64).collect();
    buckets.push(slowest);
    let mut counts = vec![0u64; 11];
    let (mut bi, mut i) = (0, 0);
    while i < n {
        if lats[i] <= buckets[bi] {
            i += 1;
            counts[bi] += 1;
        } else if bi < buckets.len() - 1 {
            bi += 1;
        }
    }
    let mut percentiles = vec![0.0; 8];
    let mut j = 0;
    for (i, lat) in lats.iter().enumerate() {
        if j >= 8 {
            break;
        }
        if i as f64 * 100.0 / n as f64 >= report::PERCENTILES[j] {
            percentiles[j] = *lat;
            j += 1;
        }
    }
    EtcdReference {
        fastest,
        slowest,
        average,
        stddev,
        histogram: buckets.into_iter().zip(counts).collect(),
        percentiles,
    }
}

fn recorder_of(nanos: &[u64]) -> Recorder {
    let mut recorder = Recorder::new(false);
    for &n in nanos {
        recorder.record(Duration::from_nanos(n), 0);
    }
    recorder
}

fn assert_close(ours: f64, theirs: f64, what: &str) {
    assert!((ours - theirs).abs() <= theirs.abs() * 1e-9 + 1e-15, "{what}: ours {ours}, etcd's {theirs}");
}

#[test]
fn summary_matches_etcds_arithmetic_on_known_data() {
    // Latencies below 2048 ns are exact in a 3-significant-digit HDR histogram, so every
    // number must equal etcd's; several sizes exercise etcd's one-percentile-per-index rule.
    let mut state = 12345u64;
    for count in [1usize, 2, 5, 10, 99, 100, 101, 1000, 1001, 4096] {
        let nanos: Vec<u64> = (0..count)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                1 + (state >> 33) % 2047
            })
            .collect();
        let stats = Stats::compute(&recorder_of(&nanos), Duration::from_secs(2));
        let reference = etcd_reference(nanos.iter().map(|&n| n as f64 / 1e9).collect());
        assert_close(stats.fastest, reference.fastest, "fastest");
        assert_close(stats.slowest, reference.slowest, "slowest");
        assert_close(stats.average, reference.average, "average");
        assert_close(stats.stddev, reference.stddev, "stddev");
        assert_close(stats.requests_per_second, count as f64 / 2.0, "requests/sec");
        for ((mark, ours), (their_mark, theirs)) in stats.histogram.iter().zip(&reference.histogram) {
            assert_close(*mark, *their_mark, "histogram mark");
            assert_eq!(ours, theirs, "histogram count at {mark} for {count} latencies");
        }
        for ((percentile, ours), theirs) in stats.percentiles.iter().zip(&reference.percentiles) {
            assert_close(*ours, *theirs, &format!("{percentile}% of {count}"));
        }
    }
}

#[test]
fn percentiles_follow_etcds_test() {
    // etcd's TestPercentiles: one slow request in 100 is the 99th percentile, one in 1000
    // the 99.9th.
    for (count, slot) in [(100usize, 6usize), (1000, 7)] {
        let mut nanos = vec![1_000u64; count];
        nanos[count - 1] = 2_000;
        let stats = Stats::compute(&recorder_of(&nanos), Duration::from_secs(1));
        assert_eq!(stats.percentiles[slot], (report::PERCENTILES[slot], 2e-6));
        assert_eq!(stats.percentiles[slot - 1].1, 1e-6);
    }
}

#[test]
fn report_text_is_etcds_layout() {
    // etcd's TestReport data: five requests of one second, one error.
    let mut recorder = recorder_of(&[1_000_000_000; 5]);
    recorder.record_error("oops".into());
    let stats = Stats::compute(&recorder, Duration::from_secs(5));
    let text = report::render(&stats, &recorder, Precision::Fixed);
    let bar = "∎".repeat(40);
    let mut expected = String::from(
        "\nSummary:\n  Total:\t5.0000 secs.\n  Slowest:\t1.0000 secs.\n  Fastest:\t1.0000 secs.\n  Average:\t1.0000 secs.\n  Stddev:\t0.0000 secs.\n  Requests/sec:\t1.0000\n\nResponse time histogram:\n",
    );
    expected += &format!("  1.0000 [5]\t|{bar}\n");
    for _ in 0..10 {
        expected += "  1.0000 [0]\t|\n";
    }
    expected += "\nLatency distribution:\n  10% in 1.0000 secs.\n  25% in 1.0000 secs.\n  50% in 1.0000 secs.\n  75% in 1.0000 secs.\n";
    expected += "\nError distribution:\n  [1]\toops\n";
    assert_eq!(text, expected);
    let precise = report::render(&stats, &recorder, Precision::Full);
    assert!(precise.contains("  Stddev:\t0 secs.\n") && precise.contains("  Average:\t1 secs.\n"), "{precise}");
}

#[test]
fn go_number_and_duration_formats() {
    assert_eq!(report::go_general(0.000123), "0.000123");
    assert_eq!(report::go_general(1.23e-05), "1.23e-05");
    assert_eq!(report::go_general(1234.5), "1234.5");
    assert_eq!(report::go_general(12134.397185596454), "12134.397185596454");
    assert_eq!(report::go_general(1234567.0), "1.234567e+06");
    assert_eq!(report::go_duration(1_500_000), "1.5ms");
    assert_eq!(report::go_duration(2_000_001_000), "2.000001s");
    assert_eq!(report::go_duration(750), "750ns");
    assert_eq!(report::go_duration(90_000_000_000), "1m30s");
}

#[test]
fn hgrm_export_ends_at_the_maximum() {
    let recorder = recorder_of(&(1..=1000).map(|i| i * 1000).collect::<Vec<_>>());
    let hgrm = report::hgrm(&recorder);
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"), "{hgrm}");
    let last_row = hgrm.lines().rfind(|l| !l.starts_with('#') && !l.is_empty()).unwrap();
    assert!(last_row.contains("1.000000000000       1000"), "{last_row}");
    assert!(hgrm.contains("Total count    =         1000]"));
}

fn ringbench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringbench")).args(args).output().expect("run ringbench")
}

/// Runs ringbench, killing it (by PID) and failing if it has not ended within `limit`:
/// for the runs that must end even when the server refuses what they ask.
fn ringbench_within(args: &[&str], limit: Duration) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringbench");
    let readers: Vec<_> = [
        child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>),
        child.stderr.take().map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.expect("a piped stream").read_to_end(&mut bytes).expect("read ringbench's output");
            bytes
        })
    })
    .collect();
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for ringbench") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringbench {args:?} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut outputs = readers.into_iter().map(|reader| reader.join().expect("reader thread"));
    Output { status, stdout: outputs.next().unwrap(), stderr: outputs.next().unwrap() }
}

fn success(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "ringbench failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// put and range with a small --total: the text report, then JSON with exact counts.
fn end_to_end(endpoint: &str) {
    let put = success(&ringbench(&[
        "--endpoints",
        endpoint,
        "--conns=2",
        "--clients=8",
        "put",
        "--total=200",
        "--val-size=256",
        "--key-space-size=50",
    ]));
    for line in [
        "\nSummary:\n  Total:\t",
        "Requests/sec:\t",
        "Response time histogram:",
        "Latency distribution:",
        "CPU per request:",
    ] {
        assert!(put.contains(line), "missing {line:?} in:\n{put}");
    }
    assert!(!put.contains("Error distribution"), "{put}");
    let range = success(&ringbench(&[
        "--endpoints",
        endpoint,
        "--clients=4",
        "--output=json",
        "range",
        "foo",
        "--total=150",
        "--consistency=s",
    ]));
    let json: serde_json::Value = serde_json::from_str(&range).unwrap_or_else(|e| panic!("{e}: {range}"));
    assert_eq!(json["stats"]["count"], 150, "{json}");
    assert_eq!(json["operation"], "range");
    assert!(json["stats"]["requests_per_second"].as_f64().unwrap() > 0.0);
    let linearizable = success(&ringbench(&["--endpoints", endpoint, "--output=csv", "range", "foo", "--total=50"]));
    let row = linearizable.lines().nth(1).expect("a csv row");
    assert!(row.starts_with("range,") && row.split(',').nth(2) == Some("50"), "{linearizable}");
    // etcd's error surfaces per request, code and message as etcd's client prints it.
    let empty_key = success(&ringbench(&["--endpoints", endpoint, "put", "--key-size=0", "--total=20"]));
    assert!(empty_key.contains("Error distribution:\n  [20]\tetcdserver: key is not provided\n"), "{empty_key}");
}

#[test]
fn put_and_range_against_ringd() {
    let ringd = support::Ringd::start(&[]);
    end_to_end(&ringd.endpoint());
}

#[test]
fn put_and_range_against_real_etcd() {
    let etcd = support::Etcd::start();
    end_to_end(&etcd.endpoint());
}

/// `put --idle-watchers`: the watchers are created (over two streams) before the load, and
/// the load runs beside them; a server that refused them fails the run.
#[test]
fn put_runs_beside_idle_watchers() {
    let ringd = support::Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    let out = success(&ringbench(&["--endpoints", &endpoint, "put", "--total=50", "--idle-watchers=1500"]));
    assert!(out.contains("Summary:") && !out.contains("Error distribution"), "{out}");
    let refused = ringbench(&["--endpoints", "127.0.0.1:1", "put", "--total=5", "--idle-watchers=3"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("idle watchers: dial error"), "{refused:?}");
}

#[test]
fn txn_benchmarks_against_ringd() {
    let ringd = support::Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    let txn = success(&ringbench(&[
        "--endpoints",
        &endpoint,
        "--clients=4",
        "txn-put",
        "--txn-ops=4",
        "--key-space-size=16",
        "--total=40",
    ]));
    assert!(txn.contains("Summary:") && !txn.contains("Error distribution"), "{txn}");
    let mixed = success(&ringbench(&[
        "--endpoints",
        &endpoint,
        "--clients=4",
        "txn-mixed",
        "--total=60",
        "--key-space-size=10",
    ]));
    assert!(mixed.contains("Total Read Ops: ") && mixed.contains("Total Write Ops: "), "{mixed}");
    assert!(!mixed.contains("Error distribution"), "{mixed}");
}

#[test]
fn compare_runs_both_servers_and_prints_one_table() {
    support::require_tool("etcd");
    let temp = tempfile::tempdir().unwrap();
    let scenario = temp.path().join("tiny.toml");
    std::fs::write(
        &scenario,
        "title = \"tiny\"\nseed = [{ key = \"foo\", value_size = 8 }]\n[[scenario]]\nname = \"put c4\"\nargs = \"--clients=4 put --total=100\"\n[[scenario]]\nname = \"range s\"\nargs = \"range foo --consistency=s --total=100\"\n",
    )
    .unwrap();
    let plot = temp.path().join("tiny.svg");
    let output = ringbench(&[
        "compare",
        "--scenario",
        scenario.to_str().unwrap(),
        "--ringd",
        env!("CARGO_BIN_EXE_ringd"),
        "--data-root",
        temp.path().join("data").to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let table = success(&output);
    assert!(table.contains("| scenario | etcd req/s |") && table.contains("ringd/etcd req/s"), "{table}");
    assert!(table.contains("| put c4 | ") && table.contains("| range s | "), "{table}");
    assert!(table.contains("load average before: "), "{table}");
    let svg = std::fs::read_to_string(temp.path().join("tiny-put-c4.svg")).expect("one chart per scenario");
    assert!(svg.contains(">etcd</text>") && svg.contains(">ringd</text>"), "both curves on one chart");
    let left: Vec<String> = std::fs::read_dir(temp.path().join("data"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".log"))
        .collect();
    assert!(left.is_empty(), "data dirs are removed after the run, logs kept: {left:?}");
}

/// Processes whose command line mentions `needle` (a data root), from /proc: what a run
/// left behind.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

#[test]
fn compare_runs_three_member_clusters_of_both_servers() {
    support::require_tool("etcd");
    let temp = tempfile::tempdir().unwrap();
    let data_root = temp.path().join("data");
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/scenarios/etcd-doc-3.toml");
    // --scale 0.001: 10 requests for one client, 100 for 1000 clients (each takes one).
    let output = ringbench_within(
        &[
            "compare",
            "--scenario",
            scenario,
            "--scale=0.001",
            "--ringd",
            env!("CARGO_BIN_EXE_ringd"),
            "--data-root",
            data_root.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    let table = success(&output);
    assert!(table.starts_with("### etcd performance doc, 3 members\n"), "{table}");
    let header = table.lines().find(|line| line.starts_with("| scenario |")).expect("a header row");
    for column in ["etcd req/s", "etcd p99 ms", "ringd req/s", "ringd p99 ms", "ringd/etcd req/s", "ringd/etcd p99"] {
        assert!(header.contains(&format!("| {column} |")), "missing {column:?}: {header}");
    }
    let rows: Vec<&str> =
        table.lines().filter(|line| line.starts_with("| put") || line.starts_with("| range")).collect();
    assert_eq!(rows.len(), 8, "the doc's seven scenarios and the 100-client put: {table}");
    for row in &rows {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 1 + 2 * 6 + 2, "{row}");
        assert!(cells[13].ends_with('x') && cells[13] != "0.00x", "a req/s ratio: {row}");
        assert_eq!((cells[4], cells[10]), ("0", "0"), "no errors on either server: {row}");
    }
    assert!(table.contains("members per server: 3; load average before: etcd "), "{table}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("--target-leader: the leader is 127.0.0.1:").count(), 6, "{stderr}");
    let mut logs: Vec<String> = std::fs::read_dir(&data_root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    logs.sort();
    let expected = ["etcd-m0.log", "etcd-m1.log", "etcd-m2.log", "ringd-m0.log", "ringd-m1.log", "ringd-m2.log"];
    assert_eq!(logs, expected, "data dirs are removed after the run, one log per member kept");
    let left = processes_mentioning(data_root.to_str().unwrap());
    assert!(left.is_empty(), "every member is stopped: {left:?}");
}

/// A 3-member ringd cluster started as tests/cluster.rs starts one; members in order.
fn ringd_cluster(dir: &std::path::Path) -> Vec<support::Ringd> {
    let peer_urls: Vec<String> = (0..3).map(|_| format!("http://127.0.0.1:{}", support::free_port())).collect();
    let initial: Vec<String> = peer_urls.iter().enumerate().map(|(i, url)| format!("m{i}={url}")).collect();
    let initial = initial.join(",");
    let token = format!("ringbench-test-{}", std::process::id());
    let members: Vec<support::Ringd> = peer_urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let name = format!("m{i}");
            let args = ["--name", &name, "--initial-advertise-peer-urls", url, "--listen-peer-urls", url];
            let args = [&args[..], &["--initial-cluster", &initial, "--initial-cluster-token", &token]].concat();
            support::Ringd::start_in(&dir.join(&name), &args)
        })
        .collect();
    assert_eq!(members.len(), 3);
    members
}

/// The endpoint (host:port) of the member that etcdctl's `endpoint status` shows as leader,
/// once all three agree on one.
fn ringd_leader(members: &[support::Ringd]) -> String {
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let output = support::etcdctl(&endpoints.join(","), &["endpoint", "status", "-w", "json"], None);
        let json: serde_json::Value = serde_json::from_str(&support::stdout(&output)).unwrap_or_default();
        let statuses = json.as_array().cloned().unwrap_or_default();
        let leaders: Vec<u64> = statuses.iter().filter_map(|s| s["Status"]["leader"].as_u64()).collect();
        let leader = statuses.iter().find(|s| {
            s["Status"]["leader"].as_u64().is_some_and(|leader| leader != 0)
                && s["Status"]["leader"] == s["Status"]["header"]["member_id"]
        });
        if let (Some(leader), true) = (leader, leaders.len() == 3 && leaders.windows(2).all(|w| w[0] == w[1])) {
            return leader["Endpoint"].as_str().unwrap().trim_start_matches("http://").to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no agreed leader: {json}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn target_leader_finds_the_leader_of_a_ringd_cluster() {
    let temp = tempfile::tempdir().unwrap();
    let members = ringd_cluster(temp.path());
    let leader = ringd_leader(&members);
    // Every order of the endpoints, so the leader is first, in the middle and last.
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    for rotation in 0..3 {
        let mut order = endpoints.clone();
        order.rotate_left(rotation);
        let output = ringbench_within(
            &["--endpoints", &order.join(","), "--target-leader", "--clients=4", "put", "--total=40"],
            Duration::from_secs(60),
        );
        success(&output);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("--target-leader: the leader is {leader}\n")), "{leader}: {stderr}");
    }
}

/// The client module by itself: every unary call it offers, and etcd's error (code and
/// message) surfaced as etcd's client surfaces it.
fn client_calls(endpoint: String) {
    use ringd::api::errors::Code;
    use ringd::api::pb::etcdserverpb as pb;
    use ringd::client::{Client, ClientOptions};
    let executor =
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(256 * 1024).make().unwrap();
    executor.run(async move {
        let options = ClientOptions { connections: 3, dial_timeout: Duration::from_secs(5) };
        let client = Client::connect(&[endpoint], &options).await.expect("connect");
        assert_eq!(client.connection_count(), 3);
        let put = |key: &str, value: &str| pb::PutRequest {
            key: key.into(),
            value: value.into(),
            prev_kv: true,
            ..Default::default()
        };
        let first = client.put(&put("k1", "v1")).await.unwrap();
        let second = client.put(&put("k1", "v2")).await.unwrap();
        assert_eq!(second.prev_kv.unwrap().value, b"v1");
        let revision = second.header.unwrap().revision;
        assert_eq!(revision, first.header.unwrap().revision + 1);
        // Many calls in flight at once share the three connections as HTTP/2 streams.
        let requests: Vec<pb::PutRequest> = (0..64).map(|i| put(&format!("k{i}"), "x")).collect();
        let calls = requests.iter().map(|request| client.put(request));
        for reply in futures::future::join_all(calls).await {
            reply.expect("concurrent put");
        }
        let range =
            pb::RangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), count_only: true, ..Default::default() };
        assert_eq!(client.range(&range).await.unwrap().count, 64);
        let compare = pb::Compare {
            key: b"k1".to_vec(),
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Value as i32,
            target_union: Some(pb::compare::TargetUnion::Value(b"x".to_vec())),
            ..Default::default()
        };
        let txn = pb::TxnRequest { compare: vec![compare], ..Default::default() };
        assert!(client.txn(&txn).await.unwrap().succeeded);
        let delete = pb::DeleteRangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), ..Default::default() };
        assert_eq!(client.delete_range(&delete).await.unwrap().deleted, 64);
        client.compact(&pb::CompactionRequest { revision, physical: true }).await.unwrap();
        let old = pb::RangeRequest { key: b"k1".to_vec(), revision: revision - 1, ..Default::default() };
        let error = client.range(&old).await.unwrap_err();
        assert_eq!(
            (error.code, error.message.as_str()),
            (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
        );
        assert_eq!(error.to_string(), "etcdserver: mvcc: required revision has been compacted");
        let status = client.status(0).await.unwrap();
        assert!(status.leader != 0 && status.db_size > 0, "{status:?}");
        let empty = client.put(&put("", "v")).await.unwrap_err();
        assert_eq!((empty.code, empty.message.as_str()), (Code::InvalidArgument, "etcdserver: key is not provided"));
    });
}

/// A watch stream from the client: created, then the put's event, with its revision.
fn client_watch(endpoint: String) {
    use ringd::api::pb::etcdserverpb as pb;
    let executor =
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(256 * 1024).make().unwrap();
    executor.run(async move {
        let options = ringd::client::ClientOptions::default();
        let client = ringd::client::Client::connect(&[endpoint], &options).await.expect("connect");
        let mut stream = client.channel(0).watch().await.expect("open a watch stream");
        stream
            .create(pb::WatchCreateRequest { key: b"w".to_vec(), range_end: b"x".to_vec(), ..Default::default() })
            .unwrap();
        let created = stream.next().await.unwrap().expect("a reply");
        assert!(created.created, "{created:?}");
        let put = pb::PutRequest { key: b"w1".to_vec(), value: b"v".to_vec(), ..Default::default() };
        let revision = client.put(&put).await.unwrap().header.unwrap().revision;
        let reply = stream.next().await.unwrap().expect("an event");
        assert_eq!(reply.watch_id, created.watch_id);
        let event = &reply.events[0];
        let kv = event.kv.as_ref().unwrap();
        assert_eq!((kv.key.as_slice(), kv.mod_revision), (b"w1".as_slice(), revision));
    });
}

#[test]
fn client_calls_against_ringd() {
    let ringd = support::Ringd::start(&[]);
    client_calls(ringd.endpoint());
    client_watch(ringd.endpoint());
}

#[test]
fn client_calls_against_real_etcd() {
    let etcd = support::Etcd::start();
    client_calls(etcd.endpoint());
    client_watch(etcd.endpoint());
}

#[test]
fn watch_latency_against_ringd_and_real_etcd() {
    let (ringd, etcd) = (support::Ringd::start(&[]), support::Etcd::start());
    for endpoint in [ringd.endpoint(), etcd.endpoint()] {
        let output = success(&ringbench(&[
            "--endpoints",
            &endpoint,
            "--conns=2",
            "--clients=6",
            "--output=json",
            "watch-latency",
            "--put-total=20",
            "--put-rate=400",
        ]));
        let json: serde_json::Value = serde_json::from_str(&output).unwrap_or_else(|e| panic!("{e}: {output}"));
        assert_eq!(json["stats"]["count"], 120, "one event per watcher per put: {json}");
        assert_eq!(json["operation"], "watch-latency");
    }
}

#[test]
fn client_reports_an_unreachable_endpoint() {
    let port = support::free_port();
    let executor =
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(256 * 1024).make().unwrap();
    let error = executor.run(async move {
        let options = ringd::client::ClientOptions { connections: 1, dial_timeout: Duration::from_secs(2) };
        ringd::client::Client::connect(&[format!("http://127.0.0.1:{port}")], &options).await.err().expect("refused")
    });
    assert_eq!(error.code, ringd::api::errors::Code::Unavailable);
    assert!(
        error.to_string().starts_with("rpc error: code = Unavailable desc = connection error: dial tcp 127.0.0.1:"),
        "{error}"
    );
}

#[test]
fn exports_and_rate_limit_against_ringd() {
    let ringd = support::Ringd::start(&[]);
    let temp = tempfile::tempdir().unwrap();
    let (hgrm, plot) = (temp.path().join("put.hgrm"), temp.path().join("put.svg"));
    let started = std::time::Instant::now();
    // The same member twice: --target-leader asks each for its status and keeps the leader.
    let endpoints = format!("{0},{0}", ringd.endpoint());
    let output = success(&ringbench(&[
        "--endpoints",
        &endpoints,
        "--target-leader",
        "--rate=200",
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "put",
        "--total=60",
    ]));
    // 60 requests at 200/s take at least 59 intervals of 5 ms.
    assert!(started.elapsed() >= Duration::from_millis(290), "--rate was not applied: {output}");
    let hgrm = std::fs::read_to_string(hgrm).unwrap();
    assert!(hgrm.contains("Total count    =           60]"), "{hgrm}");
    let svg = std::fs::read_to_string(plot).unwrap();
    assert!(svg.starts_with("<svg ") && svg.contains("<polyline") && svg.contains(">put</text>"), "{svg}");
}

#[test]
fn mvcc_put_runs_against_the_store_directly() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().to_str().unwrap();
    let output = success(&ringbench(&["mvcc", "put", "--total=30", "--data-dir", data_dir]));
    assert_eq!(output.matches("\nSummary:\n").count(), 1, "{output}");
    assert!(output.contains("Latency distribution:"), "{output}");
    // --txn: etcd's weighted report (per put) first, then the one per transaction.
    let output = success(&ringbench(&[
        "mvcc",
        "put",
        "--total=20",
        "--txn",
        "--txn-ops=4",
        "--commit-every=5",
        "--data-dir",
        data_dir,
    ]));
    assert_eq!(output.matches("\nSummary:\n").count(), 2, "{output}");
    assert_eq!(std::fs::read_dir(temp.path()).unwrap().count(), 0, "the store's directory is removed after the run");
}

/// `watch` with 12 watchers over 2 distinct keys and 10 puts: 12 creations, 60 events.
fn watch_end_to_end(endpoint: &str) {
    let args = |output: &'static str, put_rate: &'static str| {
        vec![
            "--endpoints",
            endpoint,
            "--conns=2",
            "--clients=2",
            output,
            "watch",
            "--streams=3",
            "--watch-per-stream=4",
            "--watched-key-total=2",
            "--key-space-size=2",
            "--sequential-keys",
            "--put-total=10",
            put_rate,
        ]
    };
    let output = success(&ringbench_within(&args("--output=json", "--put-rate=0"), Duration::from_secs(60)));
    let json: serde_json::Value = serde_json::from_str(&output).unwrap_or_else(|e| panic!("{e}: {output}"));
    assert_eq!(json[0]["operation"], "watch-create", "{json}");
    assert_eq!(json[0]["stats"]["count"], 12, "one creation per watcher: {json}");
    assert_eq!(json[1]["operation"], "watch-events", "{json}");
    assert_eq!(json[1]["stats"]["count"], 60, "each put reaches the 6 watchers of its key: {json}");
    for phase in 0..2 {
        assert_eq!(json[phase]["stats"]["errors"], serde_json::json!({}), "{json}");
    }
    let started = std::time::Instant::now();
    let text = success(&ringbench_within(&args("--output=text", "--put-rate=200"), Duration::from_secs(60)));
    assert!(started.elapsed() >= Duration::from_millis(45), "10 puts at 200/s take 9 intervals of 5 ms");
    let creation = text.find("Watch creation summary:\n\nSummary:\n").unwrap_or_else(|| panic!("{text}"));
    let events = text.find("Watch events received summary:\n\nSummary:\n").unwrap_or_else(|| panic!("{text}"));
    assert!(creation < events, "creation first, as etcd prints: {text}");
    assert!(!text.contains("Error distribution"), "{text}");
}

#[test]
fn watch_against_ringd_and_real_etcd() {
    let (ringd, etcd) = (support::Ringd::start(&[]), support::Etcd::start());
    watch_end_to_end(&ringd.endpoint());
    watch_end_to_end(&etcd.endpoint());
}

/// `watch-get`: 120 watchers catching up on 4 past events over 2 streams, gets timed meanwhile.
fn watch_get_end_to_end(endpoint: &str) {
    let run = |output: &'static str| {
        let args = [
            "--endpoints",
            endpoint,
            "--conns=2",
            "--clients=2",
            output,
            "watch-get",
            "--watchers=120",
            "--streams=2",
            "--events=4",
        ];
        success(&ringbench_within(&args, Duration::from_secs(60)))
    };
    let output = run("--output=json");
    let json: serde_json::Value = serde_json::from_str(&output).unwrap_or_else(|e| panic!("{e}: {output}"));
    assert_eq!(json["operation"], "watch-get", "{json}");
    assert!(json["stats"]["count"].as_u64().unwrap() >= 1, "the first get always completes: {json}");
    assert_eq!(json["stats"]["errors"], serde_json::json!({}), "{json}");
    let text = run("--output=text");
    assert!(text.starts_with("Get during watch summary:\n\nSummary:\n"), "{text}");
    assert!(!text.contains("Error distribution"), "{text}");
}

#[test]
fn watch_get_against_ringd_and_real_etcd() {
    let (ringd, etcd) = (support::Ringd::start(&[]), support::Etcd::start());
    watch_get_end_to_end(&ringd.endpoint());
    watch_get_end_to_end(&etcd.endpoint());
}

#[test]
fn lease_keepalive_against_real_etcd() {
    let etcd = support::Etcd::start();
    check_lease_keepalive(&etcd.endpoint());
}

#[test]
fn lease_keepalive_against_ringd() {
    let ringd = support::Ringd::start(&[]);
    check_lease_keepalive(&ringd.endpoint());
}

fn check_lease_keepalive(endpoint: &str) {
    let endpoint = endpoint.to_owned();
    let args =
        ["--endpoints", &endpoint, "--conns=2", "--clients=4", "--output=json", "lease-keepalive", "--total=200"];
    let output = success(&ringbench_within(&args, Duration::from_secs(60)));
    let json: serde_json::Value = serde_json::from_str(&output).unwrap_or_else(|e| panic!("{e}: {output}"));
    assert_eq!(json["operation"], "lease-keepalive", "{json}");
    assert_eq!(json["stats"]["count"], 200, "{json}");
    assert_eq!(json["stats"]["errors"], serde_json::json!({}), "{json}");
    let text = success(&ringbench_within(
        &["--endpoints", &endpoint, "lease-keepalive", "--total=50"],
        Duration::from_secs(60),
    ));
    assert!(text.starts_with("\nSummary:\n  Total:\t"), "the report alone, as etcd's: {text}");
    assert!(!text.contains("Error distribution"), "{text}");
    let leases = support::etcdctl(&endpoint, &["lease", "list"], None);
    assert_eq!(support::stdout(&leases).trim(), "found 0 leases", "the granted leases are revoked at the end");
}

/// `lease-keepalive --leases N`: N leases kept alive over one stream per client, then revoked.
#[test]
fn lease_keepalive_keeps_many_leases_alive_over_streams() {
    let ringd = support::Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    let args = [
        "--endpoints",
        &endpoint,
        "--conns=2",
        "--clients=3",
        "--output=json",
        "lease-keepalive",
        "--leases=200",
        "--total=1000",
    ];
    let output = success(&ringbench_within(&args, Duration::from_secs(60)));
    let json: serde_json::Value = serde_json::from_str(&output).unwrap_or_else(|e| panic!("{e}: {output}"));
    assert_eq!((&json["stats"]["count"], &json["stats"]["errors"]), (&1000.into(), &serde_json::json!({})), "{json}");
    let leases = support::etcdctl(&endpoint, &["lease", "list"], None);
    assert_eq!(support::stdout(&leases).trim(), "found 0 leases", "the granted leases are revoked at the end");
    let refused = ringbench_within(
        &["--endpoints", "127.0.0.1:1", "lease-keepalive", "--leases=5", "--total=10"],
        Duration::from_secs(60),
    );
    assert!(!refused.status.success() || String::from_utf8_lossy(&refused.stdout).contains("Error distribution"));
}

/// Fails the test if `future` has not finished within 10 seconds.
async fn bounded<T>(future: impl std::future::Future<Output = T>) -> T {
    let future = std::pin::pin!(future);
    let sleep = std::pin::pin!(glommio::timer::sleep(Duration::from_secs(10)));
    match futures::future::select(future, sleep).await {
        futures::future::Either::Left((output, _)) => output,
        futures::future::Either::Right(_) => panic!("a lease call did not end within 10s"),
    }
}

#[test]
fn client_lease_calls_against_real_etcd() {
    let etcd = support::Etcd::start();
    check_client_lease_calls(&etcd.endpoint());
}

#[test]
fn client_lease_calls_against_ringd() {
    let ringd = support::Ringd::start(&[]);
    check_client_lease_calls(&ringd.endpoint());
}

fn check_client_lease_calls(endpoint: &str) {
    use ringd::api::errors::Code;
    let endpoint = ringd::client::Endpoint::parse(endpoint).unwrap();
    let executor =
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(256 * 1024).make().unwrap();
    executor.run(async move {
        let channel = ringd::client::Channel::connect(&endpoint, Duration::from_secs(5)).await.expect("connect");
        let granted = bounded(channel.lease_grant(30, 0)).await.expect("grant");
        assert!(granted.id != 0 && granted.ttl == 30 && granted.error.is_empty(), "{granted:?}");
        let chosen = bounded(channel.lease_grant(30, 0x1234)).await.expect("grant with an id");
        assert_eq!(chosen.id, 0x1234);
        let once = bounded(channel.keep_alive_once(granted.id)).await.expect("keepalive once");
        assert_eq!((once.id, once.ttl), (granted.id, 30));
        let mut stream = bounded(channel.lease_keep_alive()).await.expect("open a keepalive stream");
        for lease in [granted.id, chosen.id, granted.id] {
            stream.send(lease).unwrap();
            let reply = bounded(stream.next()).await.unwrap().expect("a reply");
            assert_eq!((reply.id, reply.ttl), (lease, 30));
        }
        drop(stream);
        bounded(channel.lease_revoke(granted.id)).await.expect("revoke");
        bounded(channel.lease_revoke(chosen.id)).await.expect("revoke");
        let gone = bounded(channel.keep_alive_once(granted.id)).await.unwrap_err();
        assert_eq!((gone.code, gone.to_string().as_str()), (Code::NotFound, "etcdserver: requested lease not found"));
        let revoked_twice = bounded(channel.lease_revoke(granted.id)).await.unwrap_err();
        assert_eq!(revoked_twice.to_string(), "etcdserver: requested lease not found");
    });
}

/// The rows of the server-side section of a text report: (stage, count).
fn server_stage_rows(report: &str) -> Option<Vec<(String, u64)>> {
    let (_, section) = report.split_once("Server-side latency by stage (ringd /debug/latency, this run only):\n")?;
    let mut lines = section.lines();
    assert!(lines.next().is_some_and(|header| header.contains("count") && header.ends_with("(µs)")), "{report}");
    let rows = lines
        .take_while(|line| line.starts_with("  "))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 7, "stage, count, p50, p90, p99, p99.9, max: {line}");
            (fields[0].to_owned(), fields[1].parse().expect("a count"))
        })
        .collect();
    Some(rows)
}

/// Issue 8: ringbench reads ringd's /debug/latency before and after the run and prints
/// this run's share per stage; the counts cannot be lower than the requests it sent.
#[test]
fn put_prints_ringds_server_side_stages_of_this_run_only() {
    let ringd = support::Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    let put = |total: &str| ringbench(&["--endpoints", &endpoint, "--clients=4", "put", total]);
    // A first run, so that the second one's share differs from the server's totals.
    success(&put("--total=30"));
    let report = success(&put("--total=80"));
    let rows = server_stage_rows(&report).unwrap_or_else(|| panic!("no server-side section in:\n{report}"));
    let count_of = |stage: &str| rows.iter().find(|(name, _)| name == stage).map(|(_, count)| *count);
    for stage in ["queue", "wal_sync", "commit", "write_total"] {
        assert!(count_of(stage).is_some_and(|count| count > 0), "no {stage} row in:\n{report}");
    }
    assert_eq!(count_of("write_total"), Some(80), "this run's puts only, not the first run's:\n{report}");
    assert!(count_of("queue").is_some_and(|count| count >= 80), "every put crosses the queue:\n{report}");
    assert!(rows.iter().all(|(_, count)| *count > 0), "only stages with events: {report}");
    let json = success(&ringbench(&["--endpoints", &endpoint, "--output=json", "put", "--total=40"]));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let stages = &json["server_stages"];
    assert_eq!(stages["unit"], "us", "{json}");
    assert!(stages["stages"]["write_total"]["count"].as_u64().is_some_and(|count| count >= 40), "{json}");
    let write_total = &stages["stages"]["write_total"];
    assert!(write_total["p50"].as_u64() <= write_total["max"].as_u64() && write_total["max"].as_u64() > Some(0));
}

#[test]
fn put_against_real_etcd_prints_no_server_side_stages() {
    let etcd = support::Etcd::start();
    let endpoint = etcd.endpoint();
    let output = ringbench(&["--endpoints", &endpoint, "--clients=4", "put", "--total=50"]);
    let report = success(&output);
    assert!(report.contains("Summary:") && !report.contains("Server-side latency"), "{report}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("server-side"), "a 404 is no error");
    let json = success(&ringbench(&["--endpoints", &endpoint, "--output=json", "put", "--total=20"]));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(json["stats"]["count"], 20);
    assert!(json.get("server_stages").is_none(), "{json}");
}
