//! Locks and elections: the real etcdctl's `lock` and `elect` (client-side recipes over KV,
//! Lease and Watch), and the Lock and Election gRPC services and their gateway paths, side
//! by side with a real etcd where answers must match.

mod support;

use std::time::Duration;

use prost::Message;
use ringd::api::pb::etcdserverpb as pb;
use ringd::api::pb::{v3electionpb as epb, v3lockpb as lpb};
use support::{b64, grpc_call, http, stdout, Etcd, EtcdctlProcess, GrpcAnswer, Ringd};

const WAIT: Duration = Duration::from_secs(15);

fn keys_under(ringd: &Ringd, prefix: &str) -> Vec<String> {
    let out = ringd.etcdctl(&["get", "--prefix", prefix, "--keys-only"]);
    assert!(out.status.success());
    stdout(&out).lines().filter(|line| !line.is_empty()).map(str::to_owned).collect()
}

/// Waits (bounded) until `prefix` holds `count` keys.
fn wait_for_keys(ringd: &Ringd, prefix: &str, count: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let keys = keys_under(ringd, prefix);
        if keys.len() == count {
            return keys;
        }
        assert!(std::time::Instant::now() < deadline, "{prefix} holds {keys:?}, expected {count} keys");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn etcdctl_lock_is_held_by_one_process_at_a_time() {
    let ringd = Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    let mut holder = EtcdctlProcess::start(&endpoint, &["lock", "job"]);
    let held = holder.lines(1, WAIT).remove(0);
    assert!(held.starts_with("job/"), "etcdctl lock prints the lock's key: {held}");
    let mut waiter = EtcdctlProcess::start(&endpoint, &["lock", "job", "--", "sh", "-c", "echo got $ETCD_LOCK_KEY"]);
    let waiting = wait_for_keys(&ringd, "job/", 2);
    EtcdctlProcess::settle();
    assert!(waiter.running() && waiter.printed().is_empty(), "the second process waits while the first holds it");
    assert!(holder.terminate(WAIT), "SIGTERM unlocks and exits cleanly");
    let got = waiter.lines(1, WAIT).remove(0);
    let second_key = waiting.iter().find(|key| **key != held).unwrap();
    assert_eq!(got, format!("got {second_key}"), "the waiter runs its command holding its own key");
    assert!(waiter.wait(WAIT), "the waiter unlocks after its command");
    assert!(keys_under(&ringd, "job/").is_empty(), "both released the lock");
}

#[test]
fn a_lock_whose_holder_is_killed_passes_on_when_its_lease_expires() {
    let ringd = Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    let holder = EtcdctlProcess::start(&endpoint, &["lock", "--ttl", "2", "job"]);
    let held = holder.lines(1, WAIT).remove(0);
    let mut waiter = EtcdctlProcess::start(&endpoint, &["lock", "job", "--", "sh", "-c", "echo got $ETCD_LOCK_KEY"]);
    wait_for_keys(&ringd, "job/", 2);
    drop(holder); // SIGKILL: no unlock; only the lease's expiry frees the lock
    let got = waiter.lines(1, WAIT).remove(0);
    assert!(got.starts_with("got job/") && !got.ends_with(&held), "{got}");
    assert!(waiter.wait(WAIT));
}

#[test]
fn etcdctl_elect_two_campaigners_and_an_observer() {
    let ringd = Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    let observer = EtcdctlProcess::start(&endpoint, &["elect", "-l", "pick"]);
    let mut alpha = EtcdctlProcess::start(&endpoint, &["elect", "pick", "alpha"]);
    let elected = alpha.lines(2, WAIT);
    assert!(elected[0].starts_with("pick/") && elected[1] == "alpha", "{elected:?}");
    assert_eq!(observer.lines(2, WAIT), elected, "the observer sees the leader's key and value");
    let mut beta = EtcdctlProcess::start(&endpoint, &["elect", "pick", "beta"]);
    wait_for_keys(&ringd, "pick/", 2);
    EtcdctlProcess::settle();
    assert!(beta.running() && beta.printed().is_empty(), "beta waits while alpha leads");
    assert!(alpha.terminate(WAIT), "SIGTERM resigns");
    let next = beta.lines(2, WAIT);
    assert!(next[0].starts_with("pick/") && next[0] != elected[0] && next[1] == "beta", "{next:?}");
    assert_eq!(observer.lines(2, WAIT), next, "the observer follows the new leader");
}

fn call<M: Message>(port: u16, path: &str, request: &M) -> GrpcAnswer {
    grpc_call(port, path, &request.encode_to_vec(), None)
}

fn ok<M: Message + Default>(answer: &GrpcAnswer) -> M {
    assert_eq!(answer.status, 0, "{answer:?}");
    M::decode(answer.body.as_slice()).unwrap()
}

fn error(answer: &GrpcAnswer) -> String {
    format!("{} {}", answer.status, answer.message)
}

/// One script of Election and Lock calls; returns a line per call describing its answer
/// (leases and keys differ between servers, so each line says how they relate instead).
fn election_and_lock_script(port: u16) -> Vec<String> {
    let name = b"e".to_vec();
    let mut transcript = Vec::new();
    let mut note = |line: String| transcript.push(line);
    let leader_path = "/v3electionpb.Election/Leader";
    note(error(&call(port, leader_path, &epb::LeaderRequest { name: name.clone() })));
    let campaign = epb::CampaignRequest { name: name.clone(), lease: 0, value: b"v1".to_vec() };
    let campaigned: epb::CampaignResponse = ok(&call(port, "/v3electionpb.Election/Campaign", &campaign));
    let key = campaigned.leader.clone().unwrap();
    let header = campaigned.header.unwrap();
    note(format!(
        "campaign name={} key_is_name_and_lease={} rev_is_header_revision={}",
        String::from_utf8_lossy(&key.name),
        key.key == format!("e/{:x}", key.lease).into_bytes(),
        key.rev == header.revision
    ));
    let now: epb::LeaderResponse = ok(&call(port, leader_path, &epb::LeaderRequest { name: name.clone() }));
    let kv = now.kv.unwrap();
    note(format!("leader value={} is_campaigner={}", String::from_utf8_lossy(&kv.value), kv.key == key.key));
    let proclaim = epb::ProclaimRequest { leader: Some(key.clone()), value: b"v2".to_vec() };
    ok::<epb::ProclaimResponse>(&call(port, "/v3electionpb.Election/Proclaim", &proclaim));
    let now: epb::LeaderResponse = ok(&call(port, leader_path, &epb::LeaderRequest { name: name.clone() }));
    note(format!("after proclaim value={}", String::from_utf8_lossy(&now.kv.unwrap().value)));
    let stale = epb::LeaderKey { rev: key.rev + 100, ..key.clone() };
    let proclaim_stale = epb::ProclaimRequest { leader: Some(stale), value: b"v3".to_vec() };
    note(error(&call(port, "/v3electionpb.Election/Proclaim", &proclaim_stale)));
    note(error(&call(port, "/v3electionpb.Election/Proclaim", &epb::ProclaimRequest::default())));
    note(error(&call(port, "/v3electionpb.Election/Resign", &epb::ResignRequest::default())));
    let resigned: epb::ResignResponse =
        ok(&call(port, "/v3electionpb.Election/Resign", &epb::ResignRequest { leader: Some(key.clone()) }));
    note(format!("resign revision={}", resigned.header.unwrap().revision));
    note(error(&call(port, leader_path, &epb::LeaderRequest { name: name.clone() })));
    let again = call(port, "/v3electionpb.Election/Resign", &epb::ResignRequest { leader: Some(key) });
    note(format!("resign again status={}", again.status));
    let locked: lpb::LockResponse =
        ok(&call(port, "/v3lockpb.Lock/Lock", &lpb::LockRequest { name: b"l".to_vec(), lease: 0 }));
    let lock_key = String::from_utf8(locked.key.clone()).unwrap();
    note(format!("lock key_under_name={} revision={}", lock_key.starts_with("l/"), locked.header.unwrap().revision));
    note(error(&call(port, "/v3lockpb.Lock/Lock", &lpb::LockRequest { name: b"l".to_vec(), lease: 12345 })));
    let unlocked: lpb::UnlockResponse =
        ok(&call(port, "/v3lockpb.Lock/Unlock", &lpb::UnlockRequest { key: locked.key.clone() }));
    note(format!("unlock revision={}", unlocked.header.unwrap().revision));
    let range = pb::RangeRequest { key: locked.key, ..Default::default() };
    let gone: pb::RangeResponse = ok(&call(port, "/etcdserverpb.KV/Range", &range));
    note(format!("lock key left={}", gone.count));
    transcript
}

#[test]
fn lock_and_election_services_answer_as_real_etcd() {
    let ringd = Ringd::start(&[]);
    let etcd = Etcd::start();
    let ours = election_and_lock_script(ringd.port);
    assert_eq!(ours, election_and_lock_script(etcd.port));
    assert_eq!(ours[0], "2 election: no leader");
    assert_eq!(ours[1], "campaign name=e key_is_name_and_lease=true rev_is_header_revision=true");
    assert_eq!(ours[3], "after proclaim value=v2");
    assert_eq!(ours[4], "2 election: not leader");
    assert_eq!(ours[5], "2 \"leader\" field must be provided");
    assert_eq!(ours[8], "2 election: no leader");
}

#[test]
fn a_lock_waiter_that_gives_up_leaves_no_key_behind() {
    let ringd = Ringd::start(&[]);
    let port = ringd.port;
    let lock = lpb::LockRequest { name: b"busy".to_vec(), lease: 0 };
    let held: lpb::LockResponse = ok(&call(port, "/v3lockpb.Lock/Lock", &lock));
    let endpoint = ringd.endpoint();
    let seen_waiting = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        support::etcdctl(&endpoint, &["get", "--prefix", "busy/", "--keys-only"], None)
    });
    support::grpc_call_and_give_up(port, "/v3lockpb.Lock/Lock", &lock.encode_to_vec(), Duration::from_millis(1500));
    let during = stdout(&seen_waiting.join().unwrap());
    assert_eq!(during.lines().filter(|line| !line.is_empty()).count(), 2, "the waiter put its key: {during}");
    let left = wait_for_keys(&ringd, "busy/", 1);
    assert_eq!(left, [String::from_utf8(held.key).unwrap()], "the waiter's key is deleted when it gives up");
}

/// Over the gateway too: a Lock whose HTTP client closes the connection while it waits is
/// cancelled (as Go's net/http cancels the request's context) and its key deleted.
#[test]
fn a_gateway_lock_waiter_that_disconnects_leaves_no_key_behind() {
    use std::io::Write;
    let ringd = Ringd::start(&[]);
    let body = format!("{{\"name\":\"{}\"}}", b64("gw"));
    let (status, held) = http(ringd.port, "POST", "/v3/lock/lock", &body);
    assert_eq!(status, 200, "{held}");
    let mut waiter = std::net::TcpStream::connect(("127.0.0.1", ringd.port)).unwrap();
    let request = format!("POST /v3/lock/lock HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    waiter.write_all(request.as_bytes()).unwrap();
    wait_for_keys(&ringd, "gw/", 2);
    drop(waiter);
    let left = wait_for_keys(&ringd, "gw/", 1);
    let held: serde_json::Value = serde_json::from_str(&held).unwrap();
    assert_eq!(b64(&left[0]), held["key"].as_str().unwrap(), "the holder's key stays, the waiter's goes");
}

#[test]
fn observe_streams_each_leader_and_value() {
    let ringd = Ringd::start(&[]);
    let port = ringd.port;
    let observe = epb::LeaderRequest { name: b"obs".to_vec() };
    let stream = support::RawWatch::open_path(port, "/v3electionpb.Election/Observe", &observe.encode_to_vec(), true);
    let first = epb::CampaignRequest { name: b"obs".to_vec(), lease: 0, value: b"one".to_vec() };
    let elected: epb::CampaignResponse = ok(&call(port, "/v3electionpb.Election/Campaign", &first));
    let next = || epb::LeaderResponse::decode(stream.next_message().as_slice()).unwrap().kv.unwrap();
    let seen = next();
    assert_eq!(
        (seen.key.as_slice(), seen.value.as_slice()),
        (elected.leader.as_ref().unwrap().key.as_slice(), &b"one"[..])
    );
    let proclaim = epb::ProclaimRequest { leader: elected.leader.clone(), value: b"two".to_vec() };
    ok::<epb::ProclaimResponse>(&call(port, "/v3electionpb.Election/Proclaim", &proclaim));
    assert_eq!(next().value, b"two");
    let second = epb::CampaignRequest { name: b"obs".to_vec(), lease: 0, value: b"three".to_vec() };
    let campaigner = std::thread::spawn(move || call(port, "/v3electionpb.Election/Campaign", &second));
    wait_for_keys(&ringd, "obs/", 2);
    let resign = epb::ResignRequest { leader: elected.leader };
    ok::<epb::ResignResponse>(&call(port, "/v3electionpb.Election/Resign", &resign));
    let now: epb::CampaignResponse = ok(&campaigner.join().unwrap());
    let seen = next();
    assert_eq!((seen.key, seen.value), (now.leader.unwrap().key, b"three".to_vec()));
}

/// A gateway reply's status and JSON object (etcd's reply is chunked, ringd's is not).
fn json_reply((status, body): (u16, String)) -> (u16, serde_json::Value) {
    let object = &body[body.find('{').expect("a JSON object")..=body.rfind('}').expect("a JSON object")];
    (status, serde_json::from_str(object).unwrap())
}

#[test]
fn the_gateway_serves_lock_and_election() {
    let ringd = Ringd::start(&[]);
    let etcd = Etcd::start();
    let leader = format!("{{\"name\":\"{}\"}}", b64("g"));
    let no_leader = json_reply(http(ringd.port, "POST", "/v3/election/leader", &leader));
    let from_etcd = json_reply(http(etcd.port, "POST", "/v3/election/leader", &leader));
    assert_eq!(no_leader, from_etcd, "the gateway's error is etcd's");
    assert_eq!(no_leader.1["error"], "election: no leader");
    let campaign = format!("{{\"name\":\"{}\",\"value\":\"{}\"}}", b64("g"), b64("gv"));
    let (status, body) = http(ringd.port, "POST", "/v3/election/campaign", &campaign);
    assert_eq!(status, 200, "{body}");
    let campaigned: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, body) = http(ringd.port, "POST", "/v3/election/leader", &leader);
    let now: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &now["kv"]["key"]), (200, &campaigned["leader"]["key"]));
    assert_eq!(now["kv"]["value"], b64("gv"));
    let observed = support::gateway_stream_results(ringd.port, "/v3/election/observe", &leader, 1);
    let observed: serde_json::Value = serde_json::from_str(&observed[0]).unwrap();
    assert_eq!(observed["result"]["kv"], now["kv"], "the gateway's Observe streams the leader");
    let lock = format!("{{\"name\":\"{}\"}}", b64("gl"));
    let (status, body) = http(ringd.port, "POST", "/v3/lock/lock", &lock);
    let locked: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    let unlock = format!("{{\"key\":{}}}", locked["key"]);
    let (status, body) = http(ringd.port, "POST", "/v3/lock/unlock", &unlock);
    assert_eq!(status, 200, "{body}");
    assert!(keys_under(&ringd, "gl/").is_empty());
    let resign = format!("{{\"leader\":{}}}", campaigned["leader"]);
    assert_eq!(http(ringd.port, "POST", "/v3/election/resign", &resign).0, 200);
    assert_eq!(json_reply(http(ringd.port, "POST", "/v3/election/leader", &leader)), no_leader);
}
