//! `GET /metrics` through the real binary: what the counters say after real etcdctl calls,
//! the exposition checked by Prometheus' own `promtool`, scraped by a real Prometheus, and
//! its etcd families compared with a real etcd's (name, type, help, labels). Every process
//! is stopped by PID when the test ends; every wait is bounded.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{etcdctl, free_port, require_tool, stdout, Etcd, EtcdctlProcess, Ringd, Scrape};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

fn ok(output: std::process::Output) -> String {
    assert!(output.status.success(), "{}", support::error_line(&output));
    stdout(&output)
}

fn kv_labels(method: &str) -> String {
    format!("grpc_method=\"{method}\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"")
}

fn handled(method: &str, code: &str) -> String {
    format!("grpc_server_handled_total{{grpc_code=\"{code}\",{}}}", kv_labels(method))
}

#[test]
fn the_counters_follow_what_clients_did_and_promtool_accepts_the_exposition() {
    let ringd = Ringd::start(&[]);
    let temp = tempfile::tempdir().unwrap();
    let mut watch = EtcdctlProcess::watch(&ringd.endpoint(), &["w", "--rev", "1"]);
    ok(ringd.etcdctl(&["put", "a", "1"]));
    ok(ringd.etcdctl(&["put", "b", "22"]));
    assert_eq!(ok(ringd.etcdctl(&["get", "a"])), "a\n1\n");
    let future = ringd.etcdctl(&["get", "a", "--rev", "99"]);
    assert!(support::error_line(&future).contains("required revision is a future revision"));
    ok(ringd.etcdctl(&["del", "a"]));
    let txn = ringd.etcdctl_stdin(&["txn"], "value(\"b\") = \"22\"\n\nput c 3\nget b\n\n\n");
    assert!(ok(txn).starts_with("SUCCESS"));
    ok(ringd.etcdctl(&["put", "w", "x"]));
    assert_eq!(watch.lines(3, SETTLE_TIMEOUT), ["PUT", "w", "x"]);
    watch.terminate(Duration::from_secs(5));
    ok(ringd.etcdctl(&["snapshot", "save", temp.path().join("snap.db").to_str().unwrap()]));
    // The gateway's calls count in the store, not as gRPC calls (unlike etcd's: its gateway
    // is a gRPC client of its own port).
    let (code, _) = support::http(ringd.port, "POST", "/v3/kv/put", r#"{"key":"Zw==","value":"MQ=="}"#);
    assert_eq!(code, 200);
    let status: serde_json::Value =
        serde_json::from_str(&ok(ringd.etcdctl(&["endpoint", "status", "-w", "json"]))).unwrap();
    let status = &status[0]["Status"];

    let scrape = Scrape::of(ringd.port);
    let value = |series: &str| scrape.value(series);
    // The store, as the requests asked: puts a, b, w, the txn's c and the gateway's g;
    // ranges: the two gets (the refused one too) and the txn's; one delete; one txn of two
    // operations. (etcd would count the txn's compare as a range too.)
    assert_eq!(value("etcd_mvcc_put_total"), 5.0);
    assert_eq!(value("etcd_mvcc_range_total"), 3.0);
    assert_eq!(value("etcd_mvcc_delete_total"), 1.0);
    assert_eq!(value("etcd_mvcc_txn_total"), 1.0);
    assert_eq!(value("etcd_debugging_mvcc_total_put_size_in_bytes"), (2 + 3 + 2 + 2 + 2) as f64);
    assert_eq!(value("etcd_debugging_mvcc_current_revision"), 7.0);
    assert_eq!(value("etcd_mvcc_db_total_size_in_bytes"), status["dbSize"].as_f64().unwrap());
    // gRPC: per method and code, every method of etcd's API listed.
    assert_eq!(value(&handled("Put", "OK")), 3.0);
    assert_eq!(value(&handled("Range", "OK")), 1.0);
    assert_eq!(value(&handled("Range", "OutOfRange")), 1.0);
    assert_eq!(value(&handled("Txn", "OK")), 1.0);
    assert_eq!(value(&handled("DeleteRange", "OK")), 1.0);
    assert_eq!(value(&format!("grpc_server_started_total{{{}}}", kv_labels("Put"))), 3.0);
    assert_eq!(value(&format!("grpc_server_msg_received_total{{{}}}", kv_labels("Put"))), 3.0);
    assert_eq!(value(&format!("grpc_server_msg_sent_total{{{}}}", kv_labels("Put"))), 3.0);
    let snapshot = "grpc_method=\"Snapshot\",grpc_service=\"etcdserverpb.Maintenance\",grpc_type=\"server_stream\"";
    assert_eq!(value(&format!("grpc_server_handled_total{{grpc_code=\"OK\",{snapshot}}}")), 1.0);
    assert!(value(&format!("grpc_server_msg_sent_total{{{snapshot}}}")) >= 2.0, "the db and its checksum");
    let watch_labels = "grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"";
    assert_eq!(value(&format!("grpc_server_started_total{{{watch_labels}}}")), 1.0);
    assert!(value(&format!("grpc_server_msg_sent_total{{{watch_labels}}}")) >= 2.0, "created, then the event");
    let downgrade = "grpc_method=\"Downgrade\",grpc_service=\"etcdserverpb.Maintenance\",grpc_type=\"unary\"";
    assert_eq!(value(&format!("grpc_server_started_total{{{downgrade}}}")), 0.0);
    assert!(value("etcd_network_client_grpc_received_bytes_total") > 0.0);
    assert!(
        value("etcd_network_client_grpc_sent_bytes_total") > value("etcd_network_client_grpc_received_bytes_total")
    );
    // The server: a sole voter that leads, and the indexes Status reports.
    let member_id = status["header"]["member_id"].as_u64().unwrap();
    assert_eq!(value(&format!("etcd_server_id{{server_id=\"{member_id:x}\"}}")), 1.0);
    assert_eq!(value("etcd_server_has_leader"), 1.0);
    assert_eq!(value("etcd_server_is_leader"), 1.0);
    assert_eq!(value("etcd_server_is_learner"), 0.0);
    assert_eq!(value("etcd_server_leader_changes_seen_total"), 1.0);
    assert_eq!(value("etcd_server_proposals_applied_total"), status["raftAppliedIndex"].as_f64().unwrap());
    assert!(value("etcd_server_proposals_committed_total") >= value("etcd_server_proposals_applied_total"));
    assert_eq!(value("etcd_server_proposals_failed_total"), 0.0);
    assert_eq!(value("etcd_server_proposals_pending"), 0.0);
    assert_eq!(value("etcd_server_quota_backend_bytes"), 2147483648.0);
    // Histograms: cumulative buckets, +Inf equal to the count.
    let wal = "etcd_disk_wal_fsync_duration_seconds";
    assert!(value(&format!("{wal}_count")) >= 6.0, "one WAL write per write at least");
    assert_histogram(&scrape, wal, "");
    assert_histogram(&scrape, "ringd_stage_duration_seconds", "stage=\"write_total\",");
    assert_eq!(value("ringd_stage_duration_seconds_count{stage=\"write_total\"}"), 6.0);
    // The process.
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(started <= now + 1.0 && started > now - 600.0, "started at {started}, now {now}");

    let promtool = Command::new(require_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut promtool.stdin.as_ref().unwrap(), scrape.text.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", stdout(&output), String::from_utf8_lossy(&output.stderr));
    // It parses (exit 0, or 3 for lint findings; 1 is a parse error), and its only findings
    // are about two of etcd's own names, gauges that end in _total, kept as etcd has them.
    let etcds_names = ["etcd_server_proposals_applied_total", "etcd_server_proposals_committed_total"];
    let allowed = |line: &str| {
        etcds_names.iter().any(|name| line == format!("{name} non-counter metrics should not have \"_total\" suffix"))
    };
    assert!(matches!(output.status.code(), Some(0 | 3)), "promtool check metrics: {said}");
    assert!(said.lines().all(allowed), "promtool check metrics: {said}");
}

/// The buckets of `name` (with `labels` before `le`) never decrease and end at the count.
fn assert_histogram(scrape: &Scrape, name: &str, labels: &str) {
    let prefix = format!("{name}_bucket{{{labels}le=\"");
    let mut buckets: Vec<(f64, f64)> = scrape
        .samples
        .iter()
        .filter_map(|(series, value)| {
            let bound = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            Some((if bound == "+Inf" { f64::INFINITY } else { bound.parse().unwrap() }, *value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).expect("bounds are numbers"));
    assert!(buckets.len() > 10, "{name}: {buckets:?}");
    assert!(buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1), "cumulative: {buckets:?}");
    let count_series = if labels.is_empty() {
        format!("{name}_count")
    } else {
        format!("{name}_count{{{}}}", labels.trim_end_matches(','))
    };
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, scrape.value(&count_series)));
}

/// (type, help, label names without `le`) of every family of an exposition.
fn families(text: &str) -> BTreeMap<String, (String, String, BTreeSet<String>)> {
    let mut families: BTreeMap<String, (String, String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, help) = help.split_once(' ').unwrap();
            families.entry(name.to_owned()).or_default().1 = help.to_owned();
        } else if let Some(kind) = line.strip_prefix("# TYPE ") {
            let (name, kind) = kind.split_once(' ').unwrap();
            families.entry(name.to_owned()).or_default().0 = kind.to_owned();
        } else if !line.is_empty() && !line.starts_with('#') {
            let series = line.rsplit_once(' ').unwrap().0;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|base| families.contains_key(*base)))
                .unwrap_or(name);
            let names = labels.split(',').filter_map(|label| label.split_once('=')).map(|(key, _)| key.to_owned());
            let entry = families.get_mut(family).unwrap_or_else(|| panic!("{family} has no TYPE line before it"));
            entry.2.extend(names.filter(|name| name != "le"));
        }
    }
    families
}

#[test]
fn every_etcd_family_has_etcds_name_type_help_and_labels() {
    let etcd = Etcd::start();
    let ringd = Ringd::start(&[]);
    for endpoint in [etcd.endpoint(), ringd.endpoint()] {
        ok(etcdctl(&endpoint, &["put", "k", "v"], None));
        ok(etcdctl(&endpoint, &["get", "k"], None));
    }
    let theirs = families(&Scrape::of(etcd.port).text);
    let ours = families(&Scrape::of(ringd.port).text);
    let mut compared = 0;
    for (name, family) in &ours {
        if name.starts_with("ringd_") {
            continue;
        }
        let Some(etcds) = theirs.get(name) else { panic!("etcd has no family {name}") };
        assert_eq!(family, etcds, "{name}: ours, then etcd's");
        compared += 1;
    }
    assert!(compared >= 36, "{compared} families compared");
    assert!(ours.keys().any(|name| name.starts_with("ringd_")));
}

#[test]
fn listen_metrics_urls_serve_metrics_and_health_alone() {
    let metrics_port = free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let ringd = Ringd::start(&["--listen-metrics-urls", &metrics_url]);
    ok(ringd.etcdctl(&["put", "k", "v"]));
    let scrape = Scrape::of(metrics_port);
    assert_eq!(scrape.value("etcd_mvcc_put_total"), 1.0);
    assert_eq!(scrape.value("etcd_server_has_leader"), 1.0);
    assert_eq!(support::http(metrics_port, "GET", "/health", ""), (200, r#"{"health":"true","reason":""}"#.to_owned()));
    let (code, _) = support::http(metrics_port, "POST", "/v3/kv/range", r#"{"key":"aw=="}"#);
    assert_eq!(code, 404, "the metrics port serves no API");
    let grpc = etcdctl(&metrics_url, &["get", "k", "--command-timeout=2s"], None);
    assert!(!grpc.status.success(), "the metrics port serves no gRPC");
    // The client port still serves /metrics too.
    assert_eq!(Scrape::of(ringd.port).value("etcd_mvcc_put_total"), 1.0);
}

#[test]
fn a_real_prometheus_scrapes_ringd() {
    let ringd = Ringd::start(&[]);
    for key in ["a", "b", "c"] {
        ok(ringd.etcdctl(&["put", key, "v"]));
    }
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("prometheus.yml");
    let scrape_config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: ringd\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        ringd.port
    );
    std::fs::write(&config, scrape_config).unwrap();
    let port = free_port();
    let child = Command::new(require_tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", temp.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let prometheus = Stopped(child);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let answers = ["up", "etcd_mvcc_put_total", "etcd_server_has_leader"].map(|expression| query(port, expression));
        if answers.iter().all(Option::is_some) {
            assert_eq!(answers, [Some("1".to_owned()), Some("3".to_owned()), Some("1".to_owned())]);
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus did not scrape ringd: {answers:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(prometheus);
}

/// The value Prometheus' query API on `port` gives `expression` (its first series), or None
/// while it has none (or does not listen yet).
fn query(port: u16, expression: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request =
        format!("GET /api/v1/query?query={expression} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    json["data"]["result"][0]["value"][1].as_str().map(str::to_owned)
}

/// A child process stopped (SIGKILL, by PID) and waited for when dropped.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
