//! `POST /v3/watch` on the JSON gateway, through the real binary: a raw HTTP/1.1 client reads
//! the chunked reply frame by frame (so the framing itself is checked), writes come from the
//! real etcdctl and the gateway's `/v3/kv/put`, and the same session runs against a real etcd
//! where the JSON must have the same shape.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{b64, etcdctl, http, Etcd, Ringd};

/// Bound of every wait for something the server should send.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a watch must stay silent when nothing should arrive.
const QUIET: Duration = Duration::from_millis(300);

/// What the client saw, in order.
#[derive(Debug, PartialEq)]
enum Frame {
    /// The status code and the reply's head, header names lowercased.
    Head(u16, String),
    /// The body of a reply with a Content-Length.
    Body(String),
    /// One chunk of a chunked reply.
    Chunk(String),
    /// The last (empty) chunk.
    End,
    /// The server closed the connection (or it failed).
    Closed,
    /// The reply is not valid HTTP/1.1.
    Broken(String),
}

/// One watch over a raw TCP connection; a thread turns the reply into frames.
struct WatchClient {
    stream: TcpStream,
    frames: mpsc::Receiver<Frame>,
}

impl WatchClient {
    /// POST /v3/watch with `body` as a Content-Length body.
    fn open(port: u16, body: &str) -> WatchClient {
        let head = format!(
            "POST /v3/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        WatchClient::start(port, &format!("{head}{body}"))
    }

    /// POST /v3/watch with a chunked body; requests follow with `send_chunk`.
    fn open_chunked(port: u16) -> WatchClient {
        WatchClient::start(port, "POST /v3/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    }

    fn start(port: u16, request: &str) -> WatchClient {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let (sender, frames) = mpsc::channel();
        let reader = stream.try_clone().unwrap();
        std::thread::spawn(move || read_frames(BufReader::new(reader), &sender));
        WatchClient { stream, frames }
    }

    fn send_chunk(&mut self, text: &str) {
        self.stream.write_all(format!("{:x}\r\n{text}\r\n", text.len()).as_bytes()).unwrap();
    }

    fn next_frame(&self) -> Frame {
        match self.frames.recv_timeout(FRAME_TIMEOUT) {
            Ok(frame) => frame,
            Err(_) => panic!("nothing from the server within {FRAME_TIMEOUT:?}"),
        }
    }

    /// The head of a streamed 200 reply.
    fn expect_stream_head(&self) {
        match self.next_frame() {
            Frame::Head(200, head) => {
                assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
                assert!(head.contains("content-type: application/json\r\n"), "{head}");
            }
            other => panic!("expected a streamed 200 reply, got {other:?}"),
        }
    }

    /// The next chunk: exactly one JSON line, `{"result": ...}`; returns the result.
    fn result(&self) -> Value {
        let line = match self.next_frame() {
            Frame::Chunk(line) => line,
            other => panic!("expected a response chunk, got {other:?}"),
        };
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "one line per chunk: {line:?}");
        let value: Value = serde_json::from_str(&line).unwrap();
        let object = value.as_object().unwrap();
        assert_eq!(object.keys().collect::<Vec<_>>(), ["result"], "{line}");
        value["result"].clone()
    }

    /// The created response of the watch, after the head (the reply's head and its first
    /// chunk come together).
    fn created(&self) -> Value {
        self.expect_stream_head();
        let created = self.result();
        assert_eq!(created["created"], true, "{created}");
        created
    }

    /// Events from the next responses until `count` arrived (a replay may batch them).
    fn events(&self, count: usize) -> Vec<Value> {
        let mut events = Vec::new();
        while events.len() < count {
            let result = self.result();
            let batch = result["events"].as_array().unwrap_or_else(|| panic!("no events in {result}"));
            assert!(!batch.is_empty(), "{result}");
            events.extend(batch.iter().cloned());
        }
        assert_eq!(events.len(), count, "more events than expected: {events:?}");
        events
    }

    fn assert_quiet(&self) {
        match self.frames.recv_timeout(QUIET) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            other => panic!("expected nothing, got {other:?}"),
        }
    }

    /// Closes our sending side only (the reply may still arrive).
    fn half_close(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }
}

impl Drop for WatchClient {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Parses the reply as it arrives: the head, then either a Content-Length body or chunks.
fn read_frames(mut reader: BufReader<TcpStream>, frames: &mpsc::Sender<Frame>) {
    let frame = read_head(&mut reader);
    let chunked = matches!(&frame, Frame::Head(_, head) if head.contains("transfer-encoding: chunked\r\n"));
    let length = match &frame {
        Frame::Head(_, head) => head.lines().find_map(|l| l.strip_prefix("content-length: ")).map(|l| l.parse()),
        _ => None,
    };
    if frames.send(frame).is_err() {
        return;
    }
    if chunked {
        loop {
            let frame = read_chunk(&mut reader);
            let last = !matches!(frame, Frame::Chunk(_));
            if frames.send(frame).is_err() || last {
                break;
            }
        }
    } else if let Some(Ok(length)) = length {
        let mut body = vec![0u8; length];
        let frame = match reader.read_exact(&mut body) {
            Ok(()) => Frame::Body(String::from_utf8(body).unwrap()),
            Err(error) => Frame::Broken(format!("short body: {error}")),
        };
        let _ = frames.send(frame);
    }
    let mut rest = Vec::new();
    let frame = match reader.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => Frame::Closed,
        Ok(_) => Frame::Broken(format!("bytes after the reply: {:?}", String::from_utf8_lossy(&rest))),
        Err(_) => Frame::Closed,
    };
    let _ = frames.send(frame);
}

fn read_head(reader: &mut BufReader<TcpStream>) -> Frame {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return if head.is_empty() { Frame::Closed } else { Frame::Broken(head) },
            Ok(_) => {}
        }
        match line.split_once(':') {
            Some((name, value)) => head.push_str(&format!("{}:{value}", name.to_ascii_lowercase())),
            None => head.push_str(&line),
        }
        if line == "\r\n" {
            break;
        }
    }
    match head.split_whitespace().nth(1).and_then(|code| code.parse().ok()) {
        Some(status) => Frame::Head(status, head),
        None => Frame::Broken(head),
    }
}

fn read_chunk(reader: &mut BufReader<TcpStream>) -> Frame {
    let mut size_line = String::new();
    match reader.read_line(&mut size_line) {
        Ok(0) | Err(_) => return Frame::Closed,
        Ok(_) => {}
    }
    let Some(size) = size_line.strip_suffix("\r\n").and_then(|hex| usize::from_str_radix(hex, 16).ok()) else {
        return Frame::Broken(format!("chunk size line {size_line:?}"));
    };
    let mut data = vec![0u8; size + 2];
    if reader.read_exact(&mut data).is_err() {
        return Frame::Broken(format!("a chunk of {size} bytes ended early"));
    }
    if !data.ends_with(b"\r\n") {
        return Frame::Broken(format!("chunk without its CRLF: {:?}", String::from_utf8_lossy(&data)));
    }
    data.truncate(size);
    if size == 0 {
        return Frame::End;
    }
    Frame::Chunk(String::from_utf8(data).unwrap())
}

fn gateway_put(port: u16, key: &str, value: &str) {
    let (status, body) = http(port, "POST", "/v3/kv/put", &json!({ "key": b64(key), "value": b64(value) }).to_string());
    assert_eq!(status, 200, "{body}");
}

fn put(endpoint: &str, key: &str, value: &str) {
    let output = etcdctl(endpoint, &["put", key, value], None);
    assert!(output.status.success(), "{output:?}");
}

fn put_event(key: &str, value: &str, create_revision: u64, mod_revision: u64, version: u64) -> Value {
    json!({"kv": {
        "key": b64(key),
        "create_revision": create_revision.to_string(),
        "mod_revision": mod_revision.to_string(),
        "version": version.to_string(),
        "value": b64(value),
    }})
}

fn delete_event(key: &str, mod_revision: u64) -> Value {
    json!({"type": "DELETE", "kv": {"key": b64(key), "mod_revision": mod_revision.to_string()}})
}

#[test]
fn a_watch_streams_created_then_every_event_as_it_happens() {
    let ringd = Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    let watch = WatchClient::open(ringd.port, r#"{"create_request":{"key":"Zm9v"}}"#);
    let created = watch.created();
    assert_eq!(created["header"]["revision"], "1", "64-bit integers are strings: {created}");
    assert_eq!(created.get("watch_id"), None, "watch id 0 is a default, left out: {created}");
    put(&endpoint, "foo", "bar");
    let first = watch.result();
    assert_eq!(first["header"]["revision"], "2");
    assert_eq!(first["events"], json!([put_event("foo", "bar", 2, 2, 1)]));
    gateway_put(ringd.port, "foo", "baz");
    assert_eq!(watch.events(1), [put_event("foo", "baz", 2, 3, 2)]);
    put(&endpoint, "bar", "not watched");
    assert!(etcdctl(&endpoint, &["del", "foo"], None).status.success());
    let deleted = watch.result();
    assert_eq!(deleted["header"]["revision"], "5", "the unwatched key took revision 4: {deleted}");
    assert_eq!(deleted["events"], json!([delete_event("foo", 5)]));
    watch.assert_quiet();
}

#[test]
fn a_start_revision_replays_the_history_then_goes_live() {
    let ringd = Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    put(&endpoint, "foo", "v1");
    put(&endpoint, "other", "x");
    gateway_put(ringd.port, "foo", "v2");
    let watch =
        WatchClient::open(ringd.port, r#"{"create_request":{"key":"Zm9v","start_revision":"2","prev_kv":true}}"#);
    assert_eq!(watch.created()["header"]["revision"], "4");
    let mut second = put_event("foo", "v2", 2, 4, 2);
    second["prev_kv"] = put_event("foo", "v1", 2, 2, 1)["kv"].clone();
    assert_eq!(watch.events(2), [put_event("foo", "v1", 2, 2, 1), second]);
    put(&endpoint, "foo", "v3");
    let live = watch.events(1);
    assert_eq!(live[0]["kv"]["mod_revision"], "5");
    assert_eq!(live[0]["prev_kv"]["value"], b64("v2"));
}

#[test]
fn a_range_end_watches_a_prefix() {
    let ringd = Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    let body = json!({"create_request": {"key": b64("a"), "range_end": b64("b"), "watch_id": "7"}}).to_string();
    let watch = WatchClient::open(ringd.port, &body);
    assert_eq!(watch.created()["watch_id"], "7");
    put(&endpoint, "a1", "x");
    put(&endpoint, "b1", "y");
    gateway_put(ringd.port, "a", "z");
    put(&endpoint, "ab", "w");
    gateway_put(ringd.port, "0", "before the range");
    let events = watch.events(3);
    let keys: Vec<&Value> = events.iter().map(|event| &event["kv"]["key"]).collect();
    assert_eq!(keys, [&json!(b64("a1")), &json!(b64("a")), &json!(b64("ab"))]);
    let revisions: Vec<&Value> = events.iter().map(|event| &event["kv"]["mod_revision"]).collect();
    assert_eq!(revisions, [&json!("2"), &json!("4"), &json!("5")]);
    watch.assert_quiet();
}

/// A chunked body carries requests as the client sends them: more watches, a progress
/// request, a cancel; a value that is not a WatchRequest stops the requests, not the stream.
#[test]
fn a_chunked_body_carries_requests_over_time() {
    let ringd = Ringd::start(&[]);
    let mut watch = WatchClient::open_chunked(ringd.port);
    watch.assert_quiet();
    watch.send_chunk(r#"{"create_request":{"key":"YQ==","watch_id":"3"}}"#);
    assert_eq!(watch.created()["watch_id"], "3");
    watch.send_chunk(r#"{"create_request":{"key":"Yg=="}} {"progress_"#);
    assert_eq!(watch.result()["watch_id"], json!(null), "the second watch got id 0");
    watch.send_chunk(r#"request":{}}"#);
    assert_eq!(watch.result()["watch_id"], "-1", "a progress response");
    gateway_put(ringd.port, "a", "1");
    assert_eq!(watch.result()["watch_id"], "3");
    watch.send_chunk(r#"{"cancel_request":{"watch_id":"3"}}"#);
    let canceled = watch.result();
    assert_eq!((&canceled["watch_id"], &canceled["canceled"]), (&json!("3"), &json!(true)), "{canceled}");
    gateway_put(ringd.port, "a", "2");
    watch.send_chunk("{not json");
    gateway_put(ringd.port, "b", "3");
    let event = watch.result();
    assert_eq!((event.get("watch_id"), &event["events"][0]["kv"]["key"]), (None, &json!("Yg==")), "{event}");
    watch.assert_quiet();
}

#[test]
fn bad_requests_get_the_gateways_errors() {
    let ringd = Ringd::start(&[]);
    for body in ["{not json", "[1,2]", r#"{"create_request":"#, r#"{"create_request":{"key":5}}"#] {
        let watch = WatchClient::open(ringd.port, body);
        assert!(matches!(watch.next_frame(), Frame::Head(500, _)), "{body}");
        let Frame::Body(error) = watch.next_frame() else { panic!("no error body for {body}") };
        let error: Value = serde_json::from_str(&error).unwrap();
        assert_eq!(error["code"], 2, "{error}");
        assert_eq!(error["error"], error["message"], "{error}");
        assert_eq!(watch.next_frame(), Frame::Closed);
    }
    let (status, body) = http(ringd.port, "GET", "/v3/watch", "");
    assert_eq!(status, 501, "non-POST methods are refused as on the other gateway paths: {body}");
    // An empty range is refused inside the stream, as etcd refuses it.
    let watch = WatchClient::open(ringd.port, r#"{"create_request":{"key":"Yg==","range_end":"YQ=="}}"#);
    let refused = watch.created();
    assert_eq!((&refused["watch_id"], &refused["canceled"]), (&json!("-1"), &json!(true)));
    assert_eq!(refused["cancel_reason"], "mvcc: watcher range is empty");
    // The server serves on.
    gateway_put(ringd.port, "foo", "bar");
}

/// A client that stops sending gets grpc-gateway's end of a canceled stream: an error chunk
/// after the responses, or a plain error reply before any; then the connection closes.
#[test]
fn a_client_that_closes_its_side_ends_the_stream() {
    let ringd = Ringd::start(&[]);
    let watch = WatchClient::open(ringd.port, r#"{"create_request":{"key":"Zm9v"}}"#);
    watch.created();
    watch.half_close();
    let Frame::Chunk(error) = watch.next_frame() else { panic!("no error chunk") };
    let error: Value = serde_json::from_str(&error).unwrap();
    assert_eq!(error["error"]["grpc_code"], 1, "{error}");
    assert_eq!(error["error"]["message"], "context canceled", "{error}");
    assert_eq!(watch.next_frame(), Frame::End);
    assert_eq!(watch.next_frame(), Frame::Closed);
    let silent = WatchClient::open(ringd.port, "{}");
    silent.assert_quiet();
    silent.half_close();
    assert!(matches!(silent.next_frame(), Frame::Head(status, _) if status >= 400));
    let Frame::Body(error) = silent.next_frame() else { panic!("no error body") };
    assert!(error.contains(r#""code":1"#) && error.contains("context canceled"), "{error}");
}

fn open_files(ringd: &Ringd) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", ringd.child.id())).unwrap().count()
}

/// The server's open files once closed connections are gone: the same count for 300ms.
fn settled_open_files(ringd: &Ringd) -> usize {
    let deadline = Instant::now() + FRAME_TIMEOUT;
    let (mut count, mut since) = (open_files(ringd), Instant::now());
    while since.elapsed() < Duration::from_millis(300) {
        assert!(Instant::now() < deadline, "the server's open files never settled");
        std::thread::sleep(Duration::from_millis(20));
        let now = open_files(ringd);
        if now != count {
            (count, since) = (now, Instant::now());
        }
    }
    count
}

/// Every watch stream lives in its connection's task: the task ends when the client goes,
/// dropping the stream and its watchers, and closing the socket. So the server's open files
/// come back to where they were once the clients close (a leaked stream keeps its socket).
#[test]
fn closed_clients_cancel_their_watchers() {
    let ringd = Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    WatchClient::open(ringd.port, r#"{"create_request":{"key":"Zm9v"}}"#).created();
    put(&endpoint, "warm", "up");
    let baseline = settled_open_files(&ringd);
    let watches: Vec<WatchClient> = (0..16)
        .map(|i| WatchClient::open(ringd.port, &json!({"create_request": {"key": b64(&format!("k{i}"))}}).to_string()))
        .collect();
    watches.iter().for_each(|watch| assert_eq!(watch.created()["header"]["revision"], "2"));
    assert!(open_files(&ringd) >= baseline + 16, "one socket per open watch");
    put(&endpoint, "k3", "live");
    assert_eq!(watches[3].events(1)[0]["kv"]["key"], b64("k3"));
    drop(watches);
    let deadline = Instant::now() + FRAME_TIMEOUT;
    while open_files(&ringd) > baseline {
        assert!(Instant::now() < deadline, "{} files open, {baseline} before the watches", open_files(&ringd));
        std::thread::sleep(Duration::from_millis(20));
    }
    put(&endpoint, "k3", "after");
    let watch = WatchClient::open(ringd.port, r#"{"create_request":{"key":"azM=","start_revision":"3"}}"#);
    watch.created();
    assert_eq!(watch.events(2)[1]["kv"]["value"], b64("after"));
}

/// Header ids and the raft term differ between the two servers; the rest must not.
fn normalize(mut result: Value) -> Value {
    if let Some(header) = result.get_mut("header").and_then(Value::as_object_mut) {
        for id in ["cluster_id", "member_id", "raft_term"] {
            assert!(header.remove(id).is_some(), "a header has {id}");
        }
    }
    result
}

/// One session against a server: the JSON results each watch saw, normalized.
fn watch_session(endpoint: &str, port: u16) -> Vec<Value> {
    let single = WatchClient::open(port, r#"{"create_request":{"key":"Zm9v","prev_kv":true}}"#);
    let prefix = WatchClient::open(port, r#"{"create_request":{"key":"YQ==","range_end":"Yg==","watch_id":"7"}} {}"#);
    let mut seen = vec![normalize(single.created()), normalize(prefix.created())];
    let mut next = |watch: &WatchClient| seen.push(normalize(watch.result()));
    put(endpoint, "foo", "bar");
    next(&single);
    gateway_put(port, "a1", "v1");
    next(&prefix);
    put(endpoint, "foo", "baz");
    next(&single);
    assert!(etcdctl(endpoint, &["del", "foo"], None).status.success());
    next(&single);
    put(endpoint, "a2", "v2");
    next(&prefix);
    let body = r#"{"create_request":{"key":"AA==","range_end":"AA==","start_revision":"2"}}"#;
    let replay = WatchClient::open(port, body);
    seen.push(normalize(replay.created()));
    let events = replay.events(5);
    seen.push(json!(events));
    let two = WatchClient::open(port, r#"{"create_request":{"key":"eA=="}}{"create_request":{"key":"eQ=="}}"#);
    seen.push(normalize(two.created()));
    seen.push(normalize(two.result()));
    let refused = WatchClient::open(port, r#"{"create_request":{"key":"Yg==","range_end":"YQ=="}}"#);
    seen.push(normalize(refused.created()));
    single.half_close();
    let Frame::Chunk(error) = single.next_frame() else { panic!("no error chunk from {endpoint}") };
    let mut error: Value = serde_json::from_str(&error).unwrap();
    // grpc-gateway v1 (etcd) maps Canceled to HTTP 408; ringd's errors.rs maps it to 499.
    error["error"].as_object_mut().unwrap().remove("http_code");
    error["error"].as_object_mut().unwrap().remove("http_status");
    seen.push(error);
    assert_eq!(single.next_frame(), Frame::End);
    seen
}

#[test]
fn the_stream_has_the_same_json_as_real_etcd() {
    let ringd = Ringd::start(&[]);
    let etcd = Etcd::start();
    let ours = watch_session(&ringd.endpoint(), ringd.port);
    let theirs = watch_session(&etcd.endpoint(), etcd.port);
    assert_eq!(ours.len(), theirs.len());
    for (index, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(ours, theirs, "result {index} differs (left ringd, right etcd)");
    }
    // Raw bytes too: same keys in the same order, one line per chunk.
    let raw = |port: u16| {
        let watch = WatchClient::open(port, r#"{"create_request":{"key":"bm9uZQ==","start_revision":"3"}}"#);
        watch.expect_stream_head();
        let Frame::Chunk(created) = watch.next_frame() else { panic!("no created chunk") };
        let Frame::Chunk(events) = watch.next_frame() else { panic!("no events chunk") };
        let strip = |line: &str| {
            let at = line.find("\"revision\"").unwrap();
            format!("{}{}", &line[..line.find("\"cluster_id\"").unwrap()], &line[at..])
                .replace("\"raft_term\":\"1\"", "T")
                .replace("\"raft_term\":\"2\"", "T")
        };
        (strip(&created), strip(&events))
    };
    put(&ringd.endpoint(), "none", "x");
    put(&etcd.endpoint(), "none", "x");
    assert_eq!(raw(ringd.port), raw(etcd.port));
}
