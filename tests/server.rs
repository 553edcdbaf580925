//! The `ringd` binary driven through its real interfaces: the real etcdctl (side by side
//! with a real etcd where outputs must match), the HTTP JSON gateway, raw gRPC for bad
//! input, restarts and bad data dirs.

mod support;

use support::{b64, error_line, etcdctl, http, ringd_fails_to_start, stdout, Etcd, KeepAlive, Ringd};

/// etcdctl invocations whose output must be the same from ringd and from real etcd, run in
/// order on fresh servers: (arguments, stdin).
const SESSION: &[(&[&str], &str)] = &[
    (&["put", "foo", "bar"], ""),
    (&["get", "foo"], ""),
    (&["put", "a1", "v1"], ""),
    (&["put", "a2", "v2"], ""),
    (&["put", "b1", "v3"], ""),
    (&["put", "a1", "v1-again", "--prev-kv"], ""),
    (&["get", "a", "b"], ""),
    (&["get", "--prefix", "a"], ""),
    (&["get", "--prefix", "--keys-only", "a"], ""),
    (&["get", "--prefix", "a", "--limit", "1", "-w", "json"], ""),
    (&["get", "--prefix", "a", "--sort-by", "MODIFY", "--order", "DESCEND"], ""),
    (&["get", "--prefix", "", "--sort-by", "VALUE", "--order", "ASCEND"], ""),
    (&["get", "--from-key", "a2"], ""),
    (&["get", "--prefix", "a", "--keys-only", "-w", "json"], ""),
    (&["get", "a1", "--rev", "3"], ""),
    (&["get", "a1", "--rev", "1"], ""),
    (&["get", "b", "a"], ""),
    (&["get", "a1", "-w", "json"], ""),
    (&["get", "foo", "--print-value-only"], ""),
    (&["txn"], "value(\"b1\") = \"v3\"\nversion(\"a1\") = \"2\"\n\nput x1 y1\nget b1\n\nput x2 y2\n\n"),
    (&["txn"], "create(\"nope\") > \"0\"\n\nput x3 y3\n\ndel x1\nget x1\n\n"),
    (&["txn"], "mod(\"a2\") < \"100\"\n\nget --prefix a\n\n\n"),
    (&["del", "--prev-kv", "--prefix", "a"], ""),
    (&["del", "nothing-here"], ""),
    (&["get", "--prefix", ""], ""),
    (&["compaction", "5"], ""),
    (&["get", "foo", "--rev", "3"], ""),
    (&["get", "foo", "--rev", "100"], ""),
    (&["compaction", "2"], ""),
    (&["get", "foo", "--rev", "5"], ""),
    (&["put", "", "empty-key"], ""),
    (&["get", ""], ""),
];

/// The raft term is the one field that may differ (etcd elects itself at term 2; ringd
/// has one member and no election yet).
fn normalize(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"raft_term\":") {
        out.push_str(&rest[..at + "\"raft_term\":".len()]);
        rest = rest[at + "\"raft_term\":".len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('T');
    }
    out.push_str(rest);
    out
}

#[test]
fn etcdctl_session_matches_real_etcd() {
    let ringd = Ringd::start(&[]);
    let etcd = Etcd::start();
    for (args, input) in SESSION {
        let stdin = if input.is_empty() { None } else { Some(*input) };
        let ours = etcdctl(&ringd.endpoint(), args, stdin);
        let theirs = etcdctl(&etcd.endpoint(), args, stdin);
        assert_eq!(
            (normalize(&stdout(&ours)), ours.status.code(), error_line(&ours)),
            (normalize(&stdout(&theirs)), theirs.status.code(), error_line(&theirs)),
            "etcdctl {args:?} differs from real etcd (left ringd, right etcd)"
        );
    }
}

#[test]
fn etcdctl_session_has_the_expected_results() {
    let ringd = Ringd::start(&[]);
    assert_eq!(stdout(&ringd.etcdctl(&["put", "foo", "bar"])), "OK\n");
    assert_eq!(stdout(&ringd.etcdctl(&["get", "foo"])), "foo\nbar\n");
    ringd.etcdctl(&["put", "foo", "baz"]);
    assert_eq!(stdout(&ringd.etcdctl(&["get", "foo", "--rev", "2"])), "foo\nbar\n");
    let json = stdout(&ringd.etcdctl(&["get", "foo", "-w", "json"]));
    assert!(json.contains("\"revision\":3"), "{json}");
    assert!(json.contains("\"version\":2"), "{json}");
    assert!(json.contains("\"member_id\":10276657743932975437"), "{json}");
    let deleted = ringd.etcdctl(&["del", "foo", "--prev-kv"]);
    assert_eq!(stdout(&deleted), "1\nfoo\nbaz\n");
    assert_eq!(stdout(&ringd.etcdctl(&["get", "foo"])), "");
    assert_eq!(stdout(&ringd.etcdctl(&["compaction", "3"])), "compacted revision 3\n");
    let compacted = ringd.etcdctl(&["get", "foo", "--rev", "2"]);
    assert_eq!(error_line(&compacted), "Error: etcdserver: mvcc: required revision has been compacted");
}

#[test]
fn keys_and_values_are_bytes() {
    let ringd = Ringd::start(&[]);
    // A txn through etcdctl's stdin carries arbitrary bytes, including invalid UTF-8.
    let key = "k\u{00ff}\u{0001}";
    assert!(ringd.etcdctl(&["put", key, "v\u{0002}\u{00fe}"]).status.success());
    assert_eq!(stdout(&ringd.etcdctl(&["get", key])), format!("{key}\nv\u{0002}\u{00fe}\n"));
    let (status, body) = http(ringd.port, "POST", "/v3/kv/put", r#"{"key":"/w==","value":"gA=="}"#);
    assert_eq!(status, 200, "{body}");
    let (_, body) = http(ringd.port, "POST", "/v3/kv/range", r#"{"key":"/w=="}"#);
    assert!(body.contains(r#""key":"/w==""#) && body.contains(r#""value":"gA==""#), "{body}");
}

#[test]
fn endpoint_status_health_and_member_list() {
    let ringd = Ringd::start(&["--name", "node1"]);
    let endpoint = ringd.endpoint();
    let status = stdout(&ringd.etcdctl(&["endpoint", "status", "-w", "table"]));
    assert!(status.contains(&endpoint) && status.contains("3.5.0") && status.contains("true"), "{status}");
    let json = stdout(&ringd.etcdctl(&["endpoint", "status", "-w", "json"]));
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    let status = &parsed[0]["Status"];
    assert_eq!(status["leader"], status["header"]["member_id"]);
    assert!(status["dbSize"].as_u64().unwrap() > 0);
    let health = ringd.etcdctl(&["endpoint", "health"]);
    assert!(health.status.success());
    assert!(String::from_utf8_lossy(&health.stderr).contains("is healthy"));
    let members = stdout(&ringd.etcdctl(&["member", "list", "-w", "table"]));
    assert!(members.contains("node1") && members.contains(&endpoint) && members.contains("started"), "{members}");
    let members = stdout(&ringd.etcdctl(&["member", "list", "-w", "json"]));
    assert!(members.contains("\"name\":\"node1\""), "{members}");
}

#[test]
fn json_gateway_serves_kv_health_and_version() {
    let ringd = Ringd::start(&[]);
    let port = ringd.port;
    let (status, body) = http(port, "POST", "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""revision":"2""#), "64-bit integers are strings: {body}");
    let (_, body) = http(port, "POST", "/v3/kv/range", r#"{"key":"Zm9v"}"#);
    assert!(
        body.contains(
            r#""kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}]"#
        ),
        "{body}"
    );
    assert!(body.contains(r#""count":"1""#), "{body}");
    let txn = r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmFy"}],"success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}]}"#;
    let (_, body) = http(port, "POST", "/v3/kv/txn", txn);
    assert!(body.contains(r#""succeeded":true"#), "{body}");
    let (_, body) = http(port, "POST", "/v3/kv/deleterange", r#"{"key":"Zm9v","prev_kv":true}"#);
    assert!(body.contains(r#""deleted":"1""#) && body.contains(r#""value":"YmF6""#), "{body}");
    let (status, body) = http(port, "POST", "/v3/kv/compaction", r#"{"revision":"3"}"#);
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(port, "POST", "/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#);
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        r#"{"code":11,"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted"}"#
    );
    let (status, body) = http(port, "POST", "/v3/kv/range", "{}");
    assert_eq!(status, 400);
    assert!(body.contains("etcdserver: key is not provided") && body.contains(r#""code":3"#), "{body}");
    let (status, body) = http(port, "GET", "/health", "");
    assert_eq!((status, body.as_str()), (200, r#"{"health":"true","reason":""}"#));
    let (_, body) = http(port, "GET", "/version", "");
    let version: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(version["etcdserver"], "3.5.0");
    assert_eq!(version["ringd"], env!("CARGO_PKG_VERSION"));
    let (status, body) = http(port, "GET", "/no/such/path", "");
    assert_eq!(status, 404);
    assert!(body.contains(r#""code":5"#), "{body}");
    let (status, body) = http(port, "POST", "/v3/kv/range", "{not json");
    assert_eq!(status, 400, "{body}");
    // The server keeps serving after every bad request.
    let (status, _) = http(port, "POST", "/v3/maintenance/status", "{}");
    assert_eq!(status, 200);
}

/// A txn nested `depth` deep (a txn inside a txn is depth 2) whose innermost op puts `key`.
fn nested_txn_json(depth: usize, key: &str) -> String {
    let mut txn = format!(r#"{{"success":[{{"request_put":{{"key":"{}","value":"dg=="}}}}]}}"#, b64(key));
    for _ in 1..depth {
        txn = format!(r#"{{"success":[{{"request_txn":{txn}}}]}}"#);
    }
    txn
}

/// ringd refuses txns nested deeper than 32 levels (etcd has no limit): a deeper one would
/// still decode as a request, but not inside the Raft entry that carries it, and every member
/// would stop at that entry at every restart. Refused before it is proposed, it leaves the
/// server serving; the deepest accepted one is applied.
#[test]
fn a_txn_nested_too_deeply_is_refused_before_raft_and_the_server_goes_on() {
    let ringd = Ringd::start(&[]);
    let (status, body) = http(ringd.port, "POST", "/v3/kv/txn", &nested_txn_json(33, "deep"));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains(r#""code":3"#)
            && body.contains("etcdserver: txn request nested too deeply (ringd allows 32 levels)"),
        "{body}"
    );
    let (status, body) = http(ringd.port, "POST", "/v3/kv/txn", &nested_txn_json(32, "deep"));
    assert_eq!((status, body.contains(r#""succeeded":true"#)), (200, true), "{body}");
    assert_eq!(stdout(&ringd.etcdctl(&["get", "deep", "--print-value-only"])), "v\n");
    // Over gRPC, the depth that decodes as a request but not as an entry (50).
    let endpoint = ringd::client::Endpoint::parse(&format!("127.0.0.1:{}", ringd.port)).unwrap();
    let refused = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("a glommio executor for the test client")
        .run(async move {
            let channel = ringd::client::Channel::connect(&endpoint, std::time::Duration::from_secs(5)).await?;
            use ringd::api::pb::etcdserverpb::{request_op::Request, PutRequest, RequestOp, TxnRequest, TxnResponse};
            let put = PutRequest { key: b"deeper".to_vec(), value: b"v".to_vec(), ..Default::default() };
            let mut txn = TxnRequest {
                success: vec![RequestOp { request: Some(Request::RequestPut(put)) }],
                ..Default::default()
            };
            for _ in 1..50 {
                let op = RequestOp { request: Some(Request::RequestTxn(txn)) };
                txn = TxnRequest { success: vec![op], ..Default::default() };
            }
            channel.unary::<_, TxnResponse>("/etcdserverpb.KV/Txn", &txn).await.map(|_| ())
        })
        .unwrap_err();
    assert_eq!(refused.message, "etcdserver: txn request nested too deeply (ringd allows 32 levels)");
    assert!(ringd.etcdctl(&["put", "after", "ok"]).status.success(), "the server goes on");
}

/// `GET /debug/cores` over `observer`, until each core's live client connections satisfy
/// `done` (a closed connection is uncounted when its core notices), for at most 10 s.
fn wait_for_connections(observer: &mut KeepAlive, what: &str, done: impl Fn([u64; 2]) -> bool) -> [u64; 2] {
    wait_for_cores(observer, what, |counts, _| done(counts))
}

/// `wait_for_connections`, with the connections accepted since start given to `done` too.
fn wait_for_cores(observer: &mut KeepAlive, what: &str, done: impl Fn([u64; 2], u64) -> bool) -> [u64; 2] {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = observer.request("GET", "/debug/cores", "");
        assert_eq!(status, 200, "{body}");
        let cores: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (cores["cores"][0]["raft"].as_bool(), cores["cores"][1]["raft"].as_bool()),
            (Some(true), Some(false))
        );
        let counts = [0, 1].map(|core| cores["cores"][core]["client_connections"].as_u64().unwrap());
        if done(counts, cores["accepted_connections"].as_u64().unwrap()) {
            return counts;
        }
        assert!(std::time::Instant::now() < deadline, "connections per core: {counts:?}; expected {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The kernel's SO_REUSEPORT hash picks the accepting core at random; ringd then serves each
/// connection on the core with the fewest live connections, ties going to the raft core
/// (core 0), where a write needs no crossing between cores. So each new connection's core
/// follows from the counts before it, and every connection serves requests wherever it
/// landed.
#[test]
fn connections_are_spread_evenly_over_the_cores_the_raft_core_first() {
    let ringd = Ringd::start(&["--cores", "2"]);
    let mut observer = KeepAlive::connect(ringd.port);
    // The start-up probe's connection may still be counted (and so may have sent the
    // observer to core 1), or not even accepted yet (a core busy elsewhere takes it later,
    // and counts it until it sees it closed): wait until both were accepted and only the
    // observer is live.
    let alone = wait_for_cores(&mut observer, "the observer alone", |counts, accepted| {
        accepted == 2 && counts[0] + counts[1] == 1
    });
    let mut counts = alone;
    let mut clients = Vec::new();
    for opened in 1..=7 {
        let mut client = KeepAlive::connect(ringd.port);
        let key = b64(&format!("key-{opened}"));
        let (status, body) = client.request("POST", "/v3/kv/put", &format!(r#"{{"key":"{key}","value":"{key}"}}"#));
        assert_eq!(status, 200, "{body}");
        let core = if counts[0] <= counts[1] { 0 } else { 1 };
        counts[core] += 1;
        let expected = counts;
        wait_for_connections(&mut observer, &format!("{expected:?}"), |counts| counts == expected);
        // Served where it was counted: the core that answers on this connection.
        let (status, body) = client.request("GET", "/debug/cores", "");
        let answered_by = serde_json::from_str::<serde_json::Value>(&body).unwrap()["answered_by"].as_u64();
        assert_eq!((status, answered_by), (200, Some(core as u64)), "connection {opened}: {body}");
        clients.push(client);
    }
    for (index, client) in clients.iter_mut().enumerate() {
        let (status, body) =
            client.request("POST", "/v3/kv/range", r#"{"key":"a2V5","range_end":"a2V6","count_only":true}"#);
        assert_eq!((status, body.contains(r#""count":"7""#)), (200, true), "connection {index}: {body}");
    }
    drop(clients);
    wait_for_connections(&mut observer, &format!("{alone:?} again"), |counts| counts == alone);
}

/// Executors are pinned only to CPUs the process may run on (its affinity, which `taskset` or
/// a cgroup cpuset narrows; a CPU outside a cpuset cannot be pinned to at all): allowed the
/// last CPU alone, ringd serves one core, there.
#[test]
fn a_process_allowed_one_cpu_serves_on_that_cpu() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(cpus >= 2, "this test needs a machine with two CPUs or more");
    let ringd = Ringd::start_on_cpu(cpus - 1, &[]);
    let mut client = KeepAlive::connect(ringd.port);
    let (status, body) = client.request("GET", "/debug/cores", "");
    assert_eq!(status, 200, "{body}");
    let cores: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cores = cores["cores"].as_array().unwrap();
    assert_eq!(cores.len(), 1, "one allowed CPU, one core: {body}");
    assert_eq!((cores[0]["cpu"].as_u64(), cores[0]["raft"].as_bool()), (Some(cpus as u64 - 1), Some(true)), "{body}");
    assert!(ringd.etcdctl(&["put", "pinned", "yes"]).status.success());
    assert_eq!(stdout(&ringd.etcdctl(&["get", "pinned", "--print-value-only"])), "yes\n");
}

#[test]
fn writes_survive_a_kill_and_restart() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let ringd = Ringd::start_in(&data_dir, &[]);
    for i in 0..50 {
        assert!(ringd.etcdctl(&["put", &format!("key{i:02}"), &format!("value{i}")]).status.success());
    }
    ringd.kill();
    let ringd = Ringd::start_in(&data_dir, &[]);
    let out = stdout(&ringd.etcdctl(&["get", "--prefix", "key", "--keys-only", "--limit", "1", "-w", "json"]));
    assert!(out.contains("\"count\":50"), "{out}");
    assert_eq!(stdout(&ringd.etcdctl(&["get", "key49", "--print-value-only"])), "value49\n");
    let json = stdout(&ringd.etcdctl(&["get", "key49", "-w", "json"]));
    assert!(json.contains("\"revision\":51"), "the revision survives too: {json}");
}

#[test]
fn bad_flags_get_one_line_and_exit_code_2() {
    let (code, stderr) = ringd_fails_to_start(&["--no-such-flag"]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let (code, stderr) = ringd_fails_to_start(&["--max-txn-ops", "lots"]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let (code, stderr) = ringd_fails_to_start(&["--listen-client-urls", "ftp://127.0.0.1:1"]);
    assert_eq!(code, 2, "{stderr}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_ringd")).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--quota-backend-bytes"));
}

#[test]
fn flags_come_from_etcd_environment_variables() {
    let temp = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringd"))
        .env("ETCD_NAME", "from-env")
        .env("ETCD_DATA_DIR", temp.path().join("d"))
        .env("ETCD_LISTEN_CLIENT_URLS", &url)
        .env("ETCD_ADVERTISE_CLIENT_URLS", &url)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let members = loop {
        let out = etcdctl(&url, &["member", "list"], None);
        if out.status.success() || std::time::Instant::now() > deadline {
            break stdout(&out);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(members.contains("from-env"), "{members}");
    assert!(temp.path().join("d").join("member").join("snap").join("db").exists());
}

#[test]
fn a_corrupt_or_foreign_db_is_refused_and_left_alone() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let db = data_dir.join("member").join("snap").join("db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let foreign: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&db, &foreign).unwrap();
    let (code, stderr) = ringd_fails_to_start(&["--data-dir", data_dir.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("db"), "the message names the file: {stderr}");
    assert_eq!(std::fs::read(&db).unwrap(), foreign, "the file is never overwritten");
}

#[test]
fn an_unwritable_data_dir_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let (code, stderr) = ringd_fails_to_start(&["--data-dir", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("data dir"), "{stderr}");
}

#[test]
fn a_second_process_cannot_share_a_data_dir() {
    let ringd = Ringd::start(&[]);
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, stderr) = ringd_fails_to_start(&[
        "--data-dir",
        ringd.data_dir.to_str().unwrap(),
        "--listen-client-urls",
        &url,
        "--advertise-client-urls",
        &url,
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("in use"), "{stderr}");
}

/// A RangeRequest for `key`, encoded by hand (field 1, length-delimited), so this test
/// does not depend on the crate's own encoder.
fn range_request(key: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x0a, key.len() as u8];
    bytes.extend_from_slice(key);
    bytes
}

#[test]
fn bad_grpc_input_gets_etcds_codes_and_the_server_keeps_serving() {
    use support::grpc_call;
    let ringd = Ringd::start(&["--max-request-bytes", "1024"]);
    assert!(ringd.etcdctl(&["put", "k", "v"]).status.success());
    let port = ringd.port;

    // Malformed protobuf: a field header whose length runs past the end.
    let answer = grpc_call(port, "/etcdserverpb.KV/Range", &[0x0a, 0x7f, 0x01], None);
    assert_eq!(answer.status, 13, "{answer:?}");
    assert!(answer.message.starts_with("grpc: error unmarshalling request"), "{answer:?}");

    let answer = grpc_call(port, "/etcdserverpb.KV/NoSuchMethod", &[], None);
    assert_eq!(
        (answer.status, answer.message.as_str()),
        (12, "unknown method NoSuchMethod for service etcdserverpb.KV")
    );
    let answer = grpc_call(port, "/nosuch.Service/Method", &[], None);
    assert_eq!((answer.status, answer.message.as_str()), (12, "unknown service nosuch.Service"));
    let answer = grpc_call(port, "/etcdserverpb.Auth/AuthStatus", &[], None);
    assert_eq!(answer.status, 12, "{answer:?}");

    // Over --max-request-bytes: etcd's own error; far over it: grpc's transport limit.
    let answer = grpc_call(port, "/etcdserverpb.KV/Range", &range_request(&[b'x'; 1100][..100]).repeat(11), None);
    assert_eq!((answer.status, answer.message.as_str()), (3, "etcdserver: request is too large"));
    let answer = grpc_call(port, "/etcdserverpb.KV/Range", &[0u8; 16], Some(64 * 1024 * 1024));
    assert_eq!(answer.status, 8, "{answer:?}");
    assert!(answer.message.starts_with("grpc: received message larger than max"), "{answer:?}");

    // Empty key, and key > range_end (an empty range, as in etcd).
    let answer = grpc_call(port, "/etcdserverpb.KV/Range", &[], None);
    assert_eq!((answer.status, answer.message.as_str()), (3, "etcdserver: key is not provided"));
    let mut backwards = range_request(b"z");
    backwards.extend_from_slice(&[0x12, 1, b'a']);
    let answer = grpc_call(port, "/etcdserverpb.KV/Range", &backwards, None);
    assert_eq!(answer.status, 0, "{answer:?}");

    // A put with a lease that does not exist.
    let lease_put = ringd.etcdctl(&["put", "k", "v", "--lease", "1234"]);
    assert_eq!(error_line(&lease_put), "Error: etcdserver: requested lease not found");

    // Still serving.
    let answer = grpc_call(port, "/etcdserverpb.KV/Range", &range_request(b"k"), None);
    assert_eq!(answer.status, 0);
    assert!(answer.body.windows(1).any(|w| w == b"v"));
    assert_eq!(stdout(&ringd.etcdctl(&["get", "k", "--print-value-only"])), "v\n");
}

#[test]
fn txn_limits_and_duplicate_keys_are_refused_as_etcd_does() {
    let ringd = Ringd::start(&["--max-txn-ops", "2"]);
    let too_many = ringd.etcdctl_stdin(&["txn"], "\nput a 1\nput b 2\nput c 3\n\n\n");
    assert_eq!(error_line(&too_many), "Error: etcdserver: too many operations in txn request");
    let duplicate = ringd.etcdctl_stdin(&["txn"], "\nput a 1\nput a 2\n\n\n");
    assert_eq!(error_line(&duplicate), "Error: etcdserver: duplicate key given in txn request");
    assert_eq!(stdout(&ringd.etcdctl(&["get", "a"])), "", "a refused txn writes nothing");
}

#[test]
fn periodic_auto_compaction_compacts_old_revisions() {
    let ringd = Ringd::start(&["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1s"]);
    ringd.etcdctl(&["put", "k", "v1"]);
    ringd.etcdctl(&["put", "k", "v2"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let old = ringd.etcdctl(&["get", "k", "--rev", "2"]);
        if error_line(&old) == "Error: etcdserver: mvcc: required revision has been compacted" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no auto-compaction within 15 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(stdout(&ringd.etcdctl(&["get", "k", "--print-value-only"])), "v2\n");
}

fn db_size(ringd: &Ringd) -> u64 {
    let json = stdout(&ringd.etcdctl(&["endpoint", "status", "-w", "json"]));
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    parsed[0]["Status"]["dbSize"].as_u64().unwrap()
}

#[test]
fn compaction_and_online_defragmentation_shrink_the_file() {
    let ringd = Ringd::start(&[]);
    let value = "x".repeat(4000);
    let txn_puts: String = (0..100).map(|i| format!("put key{i:03} {value}\n")).collect();
    for round in 0..5 {
        let out = ringd.etcdctl_stdin(&["txn"], &format!("\n{txn_puts}\n\n"));
        assert!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let grown = db_size(&ringd);
    assert!(ringd.etcdctl(&["del", "--prefix", "key"]).status.success());
    let revision = {
        let json = stdout(&ringd.etcdctl(&["get", "x", "-w", "json"]));
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        parsed["header"]["revision"].as_i64().unwrap()
    };
    let compacted = ringd.etcdctl(&["compaction", "--physical", &revision.to_string()]);
    assert_eq!(stdout(&compacted), format!("compacted revision {revision}\n"));
    let defrag = ringd.etcdctl(&["defrag"]);
    assert!(defrag.status.success(), "{}", String::from_utf8_lossy(&defrag.stderr));
    assert!(stdout(&defrag).starts_with("Finished defragmenting etcd member"), "{}", stdout(&defrag));
    let shrunk = db_size(&ringd);
    assert!(shrunk * 4 < grown, "defragmentation shrinks {grown} bytes of mostly deleted data: {shrunk}");
    assert!(ringd.etcdctl(&["put", "after", "defrag"]).status.success());
    assert_eq!(stdout(&ringd.etcdctl(&["get", "after", "--print-value-only"])), "defrag\n");
}

#[test]
fn the_quota_raises_nospace_until_disarmed() {
    let ringd = Ringd::start(&["--quota-backend-bytes", "300000"]);
    let value = "v".repeat(10_000);
    let mut refused = None;
    for i in 0..200 {
        let out = ringd.etcdctl(&["put", &format!("k{i}"), &value]);
        if !out.status.success() {
            refused = Some(error_line(&out));
            break;
        }
    }
    assert_eq!(refused.as_deref(), Some("Error: etcdserver: mvcc: database space exceeded"));
    let alarms = stdout(&ringd.etcdctl(&["alarm", "list"]));
    assert_eq!(alarms, "memberID:10276657743932975437 alarm:NOSPACE \n");
    let (status, _) = http(ringd.port, "GET", "/health", "");
    assert_eq!(status, 503, "an alarm makes the member unhealthy");
    // Deletes still work; then compact, defragment and disarm as etcd's docs say.
    assert!(ringd.etcdctl(&["del", "--prefix", "k"]).status.success());
    let json = stdout(&ringd.etcdctl(&["get", "k", "-w", "json"]));
    let revision = serde_json::from_str::<serde_json::Value>(&json).unwrap()["header"]["revision"].as_i64().unwrap();
    assert!(ringd.etcdctl(&["compaction", "--physical", &revision.to_string()]).status.success());
    assert!(ringd.etcdctl(&["defrag"]).status.success());
    assert_eq!(stdout(&ringd.etcdctl(&["alarm", "disarm"])), "memberID:10276657743932975437 alarm:NOSPACE \n");
    assert_eq!(stdout(&ringd.etcdctl(&["alarm", "list"])), "");
    assert!(ringd.etcdctl(&["put", "small", "ok"]).status.success());
}

#[test]
fn hashkv_is_stable_and_follows_writes() {
    let ringd = Ringd::start(&[]);
    ringd.etcdctl(&["put", "a", "1"]);
    let hash = |ringd: &Ringd| {
        let json = stdout(&ringd.etcdctl(&["endpoint", "hashkv", "-w", "json"]));
        serde_json::from_str::<serde_json::Value>(&json).unwrap()[0]["HashKV"]["hash"].as_u64().unwrap()
    };
    let first = hash(&ringd);
    assert_eq!(first, hash(&ringd));
    ringd.etcdctl(&["put", "a", "2"]);
    assert_ne!(first, hash(&ringd));
}

#[test]
fn a_key_longer_than_the_store_allows_is_refused() {
    let ringd = Ringd::start(&[]);
    let long = "k".repeat(2001);
    let out = ringd.etcdctl(&["put", &long, "v"]);
    // Not one of etcd's strings, so etcdctl shows the raw status.
    assert_eq!(
        error_line(&out),
        "Error: rpc error: code = InvalidArgument desc = etcdserver: key is too large (ringd keys are at most 2000 bytes)"
    );
    let longest = "k".repeat(2000);
    assert!(ringd.etcdctl(&["put", &longest, "v"]).status.success());
    assert_eq!(stdout(&ringd.etcdctl(&["get", &longest, "--print-value-only"])), "v\n");
}

#[test]
fn a_snapshot_saved_by_etcdctl_restores_as_a_data_dir() {
    let ringd = Ringd::start(&[]);
    for i in 0..100 {
        ringd.etcdctl(&["put", &format!("key{i:03}"), &format!("value{i}")]);
    }
    let temp = tempfile::tempdir().unwrap();
    let saved = temp.path().join("backup.db");
    let out = ringd.etcdctl(&["snapshot", "save", saved.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("Snapshot saved at"), "{}", stdout(&out));
    ringd.etcdctl(&["put", "after", "backup"]);
    // As etcd's, the stream ends with the sha256 of the db; before it, ringd's db file,
    // which placed in a fresh data dir opens as that member.
    let bytes = std::fs::read(&saved).unwrap();
    let (db, checksum) = bytes.split_at(bytes.len() - 32);
    assert_eq!(<sha2::Sha256 as sha2::Digest>::digest(db).as_slice(), checksum);
    let data_dir = temp.path().join("restored");
    std::fs::create_dir_all(data_dir.join("member").join("snap")).unwrap();
    std::fs::write(data_dir.join("member").join("snap").join("db"), db).unwrap();
    let restored = Ringd::start_in(&data_dir, &[]);
    assert_eq!(stdout(&restored.etcdctl(&["get", "key099", "--print-value-only"])), "value99\n");
    assert_eq!(stdout(&restored.etcdctl(&["get", "after"])), "");
    let json = stdout(&restored.etcdctl(&["get", "key000", "-w", "json"]));
    assert!(json.contains("\"revision\":101"), "{json}");
}

#[test]
fn etcdctl_watch_sees_puts_and_deletes_live() {
    use support::EtcdctlProcess;
    let ringd = Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    let prefix = EtcdctlProcess::watch(&endpoint, &["--prefix", "a", "--prev-kv"]);
    let single = EtcdctlProcess::watch(&endpoint, &["foo"]);
    EtcdctlProcess::settle();
    ringd.etcdctl(&["put", "a1", "x"]);
    ringd.etcdctl(&["put", "foo", "bar"]);
    ringd.etcdctl(&["put", "a1", "y"]);
    ringd.etcdctl(&["del", "a1"]);
    let timeout = std::time::Duration::from_secs(10);
    assert_eq!(
        prefix.lines(10, timeout),
        ["PUT", "a1", "x", "PUT", "a1", "x", "a1", "y", "DELETE", "a1"],
        "a prefix watch with prev_kv: a put, an update with its previous value, a delete"
    );
    assert_eq!(prefix.lines(2, timeout), ["y", "a1"]);
    assert_eq!(single.lines(3, timeout), ["PUT", "foo", "bar"]);
}

/// A watch from an old revision replays the history exactly as real etcd does.
#[test]
fn historical_watch_matches_real_etcd() {
    use support::EtcdctlProcess;
    let ringd = Ringd::start(&[]);
    let etcd = Etcd::start();
    let script: &[&[&str]] = &[
        &["put", "k1", "v1"],
        &["put", "k2", "v2"],
        &["put", "k1", "v1b"],
        &["del", "k", "l"],
        &["put", "k3", "v3"],
        &["put", "other", "x"],
    ];
    for endpoint in [ringd.endpoint(), etcd.endpoint()] {
        for args in script {
            assert!(etcdctl(&endpoint, args, None).status.success());
        }
    }
    let timeout = std::time::Duration::from_secs(10);
    let replay =
        |endpoint: &str, args: &[&str], lines: usize| EtcdctlProcess::watch(endpoint, args).lines(lines, timeout);
    for (args, lines) in [
        (&["--rev", "2", "--prefix", "k", "--prev-kv"][..], 19),
        (&["--rev", "4", "k1"][..], 5),
        (&["--rev", "1", "--prefix", ""][..], 20),
    ] {
        assert_eq!(replay(&ringd.endpoint(), args, lines), replay(&etcd.endpoint(), args, lines), "watch {args:?}");
    }
    // After a compaction, a watch from before it is canceled, as etcd cancels it.
    for endpoint in [ringd.endpoint(), etcd.endpoint()] {
        assert!(etcdctl(&endpoint, &["compaction", "5"], None).status.success());
    }
    let canceled = |endpoint: &str| {
        let out = std::process::Command::new(support::require_tool("etcdctl"))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint, "watch", "--rev", "2", "k1"])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(canceled(&ringd.endpoint()), canceled(&etcd.endpoint()));
    assert_eq!(canceled(&ringd.endpoint()).0, Some(5));
}

/// A watcher whose client stops reading does not slow writes down, and when it reads again
/// it receives every event, in order, exactly once, all events of one revision in one
/// response (etcd's slow watchers: they fall behind, catch up from the store and rejoin the
/// live stream).
#[test]
fn a_slow_watcher_catches_up_without_losing_events() {
    let ringd = Ringd::start(&[]);
    // 1 KiB values: one revision's response (100 KiB) is larger than the client's h2 window
    // (65,535 bytes), so it can only go out in pieces as the client reads.
    let next_revision = stall_a_watcher_then_read(&ringd, "slow", 1000, 2);
    // 10-byte values: dozens of responses fit the window, so the stream's outbox empties in
    // one go and the hub must go on catching the watcher up without being woken.
    stall_a_watcher_then_read(&ringd, "tiny", 10, next_revision);
}

/// Watches `prefix/` with a raw gRPC stream that reads nothing while the real etcdctl
/// writes 200 txns of 100 puts of `value_bytes` under it from `first_revision` on, then
/// reads and checks every event. Returns the revision the next write gets.
fn stall_a_watcher_then_read(ringd: &Ringd, prefix: &str, value_bytes: usize, first_revision: i64) -> i64 {
    use prost::Message;
    use ringd::api::pb::etcdserverpb as pb;
    let rounds = 200;
    let per_round = 100;
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: format!("{prefix}/").into_bytes(),
            range_end: format!("{prefix}0").into_bytes(),
            ..Default::default()
        })),
    };
    let watch = support::RawWatch::open(ringd.port, &create.encode_to_vec());
    let created = pb::WatchResponse::decode(watch.next_message().as_slice()).unwrap();
    assert!(created.created);
    // 20,000 writes, far more than the stream's flow-control window and outbox hold, while
    // the watcher reads nothing.
    let value = "v".repeat(value_bytes);
    for round in 0..rounds {
        let puts: String = (0..per_round).map(|i| format!("put {prefix}/{round:03}/{i:03} {value}\n")).collect();
        let out = ringd.etcdctl_stdin(&["txn"], &format!("\n{puts}\n\n"));
        assert!(out.status.success(), "writes go on while the watcher is stalled: {}", error_line(&out));
    }
    let mut events = 0;
    while events < rounds * per_round {
        let response = pb::WatchResponse::decode(watch.next_message().as_slice()).unwrap();
        assert!(!response.canceled, "{response:?}");
        assert_eq!(response.events.len() % per_round, 0, "a revision's events arrive together");
        for event in response.events {
            let kv = event.kv.unwrap();
            let (round, index) = (events / per_round, events % per_round);
            assert_eq!(kv.mod_revision, first_revision + round as i64, "events arrive in order, once");
            assert_eq!(kv.key, format!("{prefix}/{round:03}/{index:03}").into_bytes());
            assert_eq!(kv.value.len(), value_bytes);
            events += 1;
        }
    }
    first_revision + rounds as i64
}

#[test]
fn debug_latency_breaks_requests_down_by_stage() {
    let ringd = Ringd::start(&[]);
    for i in 0..20 {
        assert!(ringd.etcdctl(&["put", &format!("k{i}"), "v"]).status.success());
    }
    assert!(ringd.etcdctl(&["get", "k1"]).status.success());
    assert!(ringd.etcdctl(&["get", "k1", "--consistency=s"]).status.success());
    let (status, body) = support::http(ringd.port, "GET", "/debug/latency", "");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["unit"], "us");
    let stages = json["stages"].as_object().unwrap();
    for stage in ["queue", "batch", "wal_sync", "commit", "apply", "store_commit", "write_total"] {
        let count = stages[stage]["count"].as_u64().unwrap();
        assert!(count >= 20, "{stage}: {count} samples for 20 writes: {body}");
    }
    assert_eq!(stages["read_index"]["count"], 1, "one linearizable read");
    assert_eq!(stages["read_total"]["count"], 2, "two reads");
    for (stage, numbers) in stages {
        let p50 = numbers["p50"].as_u64().unwrap();
        let p99 = numbers["p99"].as_u64().unwrap();
        let max = numbers["max"].as_u64().unwrap();
        assert!(p50 <= p99 && p99 <= max, "{stage}: {numbers}");
        assert!(numbers["histogram"].as_str().is_some_and(|h| !h.is_empty()), "{stage}");
    }
    // A write's total is at least its WAL sync: the WAL's floor shows in every write.
    let wal = stages["wal_sync"]["min"].as_u64().unwrap();
    let total = stages["write_total"]["min"].as_u64().unwrap();
    assert!(total >= wal, "write_total min {total} < wal_sync min {wal}");
}

#[test]
fn leases_with_the_real_etcdctl_grant_attach_keep_alive_expire_and_revoke() {
    use support::EtcdctlProcess;
    let ringd = Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    let lease_of = |output: &std::process::Output| -> String {
        let line = stdout(output);
        assert!(line.starts_with("lease ") && line.contains("granted with TTL"), "{line}");
        line.split_whitespace().nth(1).unwrap().to_owned()
    };
    let short = lease_of(&ringd.etcdctl(&["lease", "grant", "3"]));
    let long = lease_of(&ringd.etcdctl(&["lease", "grant", "100"]));
    assert_ne!(short, long);
    for key in ["short-a", "short-b"] {
        assert!(ringd.etcdctl(&["put", key, "v", &format!("--lease={short}")]).status.success());
    }
    assert!(ringd.etcdctl(&["put", "long-a", "v", &format!("--lease={long}")]).status.success());
    let ttl = stdout(&ringd.etcdctl(&["lease", "timetolive", &short, "--keys"]));
    assert!(ttl.contains("granted with TTL(3s)") && ttl.contains("attached keys([short-a short-b])"), "{ttl}");
    let list = stdout(&ringd.etcdctl(&["lease", "list"]));
    assert!(list.starts_with("found 2 leases") && list.contains(&short) && list.contains(&long), "{list}");
    let kept = stdout(&ringd.etcdctl(&["lease", "keep-alive", "--once", &long]));
    assert_eq!(kept.trim(), format!("lease {long} keepalived with TTL(100)"));
    let output = ringd.etcdctl(&["put", "k", "v", "--lease=1234"]);
    assert_eq!(error_line(&output), "Error: etcdserver: requested lease not found");

    // Expiry: the leader's lessor revokes the lease through Raft; its keys are deleted,
    // and watchers see the deletes.
    let watch = EtcdctlProcess::watch(&endpoint, &["--prefix", "short-"]);
    EtcdctlProcess::settle();
    let lines = watch.lines(6, std::time::Duration::from_secs(15));
    assert_eq!(lines, vec!["DELETE", "short-a", "", "DELETE", "short-b", ""], "{lines:?}");
    assert_eq!(stdout(&ringd.etcdctl(&["get", "short-", "--prefix", "--keys-only"])), "");
    let expired = stdout(&ringd.etcdctl(&["lease", "timetolive", &short]));
    assert_eq!(expired.trim(), format!("lease {short} already expired"));
    assert_eq!(stdout(&ringd.etcdctl(&["get", "long-a", "--print-value-only"])), "v\n");

    // Revoke deletes the keys at once; a second revoke is etcd's not-found error.
    let revoked = stdout(&ringd.etcdctl(&["lease", "revoke", &long]));
    assert_eq!(revoked.trim(), format!("lease {long} revoked"));
    assert_eq!(stdout(&ringd.etcdctl(&["get", "long-a"])), "");
    let again = ringd.etcdctl(&["lease", "revoke", &long]);
    assert_eq!(error_line(&again), "Error: failed to revoke lease (etcdserver: requested lease not found)");
    let list = stdout(&ringd.etcdctl(&["lease", "list"]));
    assert!(list.starts_with("found 0 leases"), "{list}");
}

/// `etcdctl lease keep-alive` (one stream, a keepalive every TTL/3) keeps a lease's keys past
/// its TTL; a revoke during the stream deletes them, and the stream tells etcdctl, which
/// prints etcd's line and exits.
#[test]
fn a_keepalive_stream_keeps_keys_until_a_revoke_ends_it() {
    use support::EtcdctlProcess;
    let ringd = Ringd::start(&[]);
    let granted = stdout(&ringd.etcdctl(&["lease", "grant", "2"]));
    let lease = granted.split_whitespace().nth(1).unwrap().to_owned();
    assert!(ringd.etcdctl(&["put", "kept", "v", &format!("--lease={lease}")]).status.success());
    let mut keeper = EtcdctlProcess::start(&ringd.endpoint(), &["lease", "keep-alive", &lease]);
    // Six keepalives, about four seconds: twice the TTL.
    let lines = keeper.lines(6, std::time::Duration::from_secs(20));
    assert!(lines.iter().all(|line| *line == format!("lease {lease} keepalived with TTL(2)")), "{lines:?}");
    assert_eq!(stdout(&ringd.etcdctl(&["get", "kept", "--print-value-only"])), "v\n", "kept past its TTL");
    assert!(ringd.etcdctl(&["lease", "revoke", &lease]).status.success());
    assert_eq!(stdout(&ringd.etcdctl(&["get", "kept"])), "");
    loop {
        let line = keeper.lines(1, std::time::Duration::from_secs(20)).remove(0);
        if line == format!("lease {lease} expired or revoked.") {
            break;
        }
        assert_eq!(line, format!("lease {lease} keepalived with TTL(2)"), "only keepalives before the end");
    }
    assert!(keeper.wait(std::time::Duration::from_secs(20)), "etcdctl ends its keep-alive when the lease is gone");
}

/// POST /v3/lease/keepalive: one line per request, in order, as etcd's gateway streams them
/// (a lease that does not exist answers without a TTL).
#[test]
fn the_gateway_keeps_leases_alive_as_etcd_does() {
    let ringd = Ringd::start(&[]);
    let etcd = Etcd::start();
    let run = |port: u16| {
        let (status, body) = http(port, "POST", "/v3/lease/grant", r#"{"TTL":"30","ID":"7"}"#);
        assert_eq!(status, 200, "{body}");
        let lines = support::gateway_stream_results(port, "/v3/lease/keepalive", r#"{"ID":"8"} {"ID":"7"}"#, 2);
        lines.iter().map(|line| normalize(line)).collect::<Vec<_>>()
    };
    let ours = run(ringd.port);
    assert_eq!(ours, run(etcd.port));
    assert!(ours[0].contains(r#""ID":"8"}"#) && ours[1].contains(r#""ID":"7","TTL":"30"}"#), "{ours:?}");
}

#[test]
fn leases_survive_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let ringd = Ringd::start_in(&data_dir, &[]);
    let output = ringd.etcdctl(&["lease", "grant", "600", "--command-timeout=5s"]);
    let lease = stdout(&output).split_whitespace().nth(1).unwrap().to_owned();
    assert!(ringd.etcdctl(&["put", "kept", "v", &format!("--lease={lease}")]).status.success());
    ringd.kill();
    let ringd = Ringd::start_in(&data_dir, &[]);
    let ttl = stdout(&ringd.etcdctl(&["lease", "timetolive", &lease, "--keys"]));
    assert!(ttl.contains("granted with TTL(600s)") && ttl.contains("attached keys([kept])"), "{ttl}");
    let revoked = stdout(&ringd.etcdctl(&["lease", "revoke", &lease]));
    assert!(revoked.contains("revoked"), "{revoked}");
    assert_eq!(stdout(&ringd.etcdctl(&["get", "kept"])), "");
}

/// One member applies a sole voter's writes while their WAL write is in flight, and
/// attaches their keys to leases only once they commit (`Ahead` in src/server/writer.rs);
/// grants, revokes and writes that cannot go ahead are applied at commit. Under concurrent
/// clients both kinds land in the same batches: afterwards every key must be attached to
/// exactly the lease its last write gave it, and a revoke must delete exactly those keys.
#[test]
fn leased_keys_written_by_concurrent_clients_stay_attached_to_their_leases() {
    use ringd::api::pb::etcdserverpb as pb;
    let ringd = Ringd::start(&[]);
    let endpoint = ringd::client::Endpoint::parse(&format!("127.0.0.1:{}", ringd.port)).unwrap();
    const CLIENTS: u64 = 16;
    const WRITES: u64 = 40;
    const KEYS: u64 = 12;
    // Which op (step % 6) and which key (step / 6) vary independently.
    let key = |step: u64| format!("leased/{:02}", (step / 6) % KEYS).into_bytes();
    let (leases, kvs, attached) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("a glommio executor for the test client")
        .run(async move {
            let channel = ringd::client::Channel::connect(&endpoint, std::time::Duration::from_secs(5)).await.unwrap();
            let grant = |id: i64| {
                let channel = &channel;
                async move {
                    let request = pb::LeaseGrantRequest { ttl: 300, id };
                    let granted: pb::LeaseGrantResponse =
                        channel.unary("/etcdserverpb.Lease/LeaseGrant", &request).await.unwrap();
                    granted.id
                }
            };
            let leases = [grant(0).await, grant(0).await];
            let client = |n: u64| {
                let channel = &channel;
                async move {
                    for i in 0..WRITES {
                        let step = n * 7 + i * 5;
                        match step % 6 {
                            // A grant among the writes: it cannot go ahead.
                            5 if i % 8 == 0 => {
                                grant(0).await;
                            }
                            4 | 5 => {
                                let request = pb::DeleteRangeRequest { key: key(step), ..Default::default() };
                                let _: pb::DeleteRangeResponse =
                                    channel.unary("/etcdserverpb.KV/DeleteRange", &request).await.unwrap();
                            }
                            // A txn's put without a lease detaches the key from its lease.
                            3 => {
                                let put = pb::PutRequest { key: key(step), value: b"t".to_vec(), ..Default::default() };
                                let op = pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put)) };
                                let request = pb::TxnRequest { success: vec![op], ..Default::default() };
                                let _: pb::TxnResponse = channel.unary("/etcdserverpb.KV/Txn", &request).await.unwrap();
                            }
                            which => {
                                let lease = if which == 2 { 0 } else { leases[which as usize] };
                                let request = pb::PutRequest {
                                    key: key(step),
                                    value: b"v".to_vec(),
                                    lease,
                                    ..Default::default()
                                };
                                let _: pb::PutResponse = channel.unary("/etcdserverpb.KV/Put", &request).await.unwrap();
                            }
                        }
                    }
                }
            };
            futures::future::join_all((0..CLIENTS).map(client)).await;
            // Then one client alone, whose writes all go ahead but the grants; last, half the
            // keys are written again, to lease A, lease B or none.
            client(CLIENTS).await;
            for k in (0..KEYS).step_by(2) {
                let lease = [leases[0], leases[1], 0][(k % 3) as usize];
                let request = pb::PutRequest { key: key(k * 6), value: b"w".to_vec(), lease, ..Default::default() };
                let _: pb::PutResponse = channel.unary("/etcdserverpb.KV/Put", &request).await.unwrap();
            }
            let range =
                pb::RangeRequest { key: b"leased/".to_vec(), range_end: b"leased0".to_vec(), ..Default::default() };
            let kvs: pb::RangeResponse = channel.unary("/etcdserverpb.KV/Range", &range).await.unwrap();
            let mut attached = Vec::new();
            for id in leases {
                let request = pb::LeaseTimeToLiveRequest { id, keys: true };
                let ttl: pb::LeaseTimeToLiveResponse =
                    channel.unary("/etcdserverpb.Lease/LeaseTimeToLive", &request).await.unwrap();
                attached.push(ttl.keys);
            }
            (leases, kvs.kvs, attached)
        });
    assert!(!kvs.is_empty());
    for (lease, keys) in leases.iter().zip(&attached) {
        let mut expected: Vec<Vec<u8>> = kvs.iter().filter(|kv| kv.lease == *lease).map(|kv| kv.key.clone()).collect();
        let mut keys = keys.clone();
        expected.sort();
        keys.sort();
        assert_eq!(keys, expected, "the keys of lease {lease:x}");
    }
    assert!(attached.iter().all(|keys| !keys.is_empty()), "{attached:?}");
    // A revoke deletes the keys attached to the lease, and nothing else.
    let revoked = format!("{:x}", leases[0]);
    assert!(ringd.etcdctl(&["lease", "revoke", &revoked]).status.success());
    let left = stdout(&ringd.etcdctl(&["get", "leased/", "--prefix", "--keys-only"]));
    let left: Vec<&str> = left.lines().filter(|line| !line.is_empty()).collect();
    let mut expected: Vec<String> =
        kvs.iter().filter(|kv| kv.lease != leases[0]).map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect();
    expected.sort();
    assert_eq!(left, expected);
}
