//! Multi-member clusters through the real binary and the real etcdctl: election, replication,
//! forwarding from followers, linearizable reads, a leader killed with SIGKILL during writes,
//! restart and catch-up. Every member is a process on 127.0.0.1 ports, stopped by PID when
//! the test ends; every wait is bounded.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{etcdctl, free_port, stdout, Ringd};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

struct Cluster {
    members: Vec<Option<Ringd>>,
    dirs: Vec<PathBuf>,
    args: Vec<Vec<String>>,
    _temp: tempfile::TempDir,
}

impl Cluster {
    fn start(size: usize) -> Cluster {
        Cluster::start_with(size, &[])
    }

    fn start_with(size: usize, extra: &[&str]) -> Cluster {
        let temp = tempfile::tempdir().unwrap();
        let peer_urls: Vec<String> = (0..size).map(|_| format!("http://127.0.0.1:{}", free_port())).collect();
        let initial: Vec<String> = peer_urls.iter().enumerate().map(|(i, url)| format!("m{i}={url}")).collect();
        let mut cluster = Cluster { members: Vec::new(), dirs: Vec::new(), args: Vec::new(), _temp: temp };
        for (i, url) in peer_urls.iter().enumerate() {
            let args = member_args(&format!("m{i}"), url, &initial.join(","), "new", extra);
            cluster.dirs.push(cluster._temp.path().join(format!("m{i}")));
            cluster.args.push(args);
            cluster.members.push(None);
        }
        for i in 0..size {
            cluster.restart(i);
        }
        cluster
    }

    fn restart(&mut self, i: usize) {
        let args: Vec<&str> = self.args[i].iter().map(String::as_str).collect();
        self.members[i] = Some(Ringd::start_in(&self.dirs[i], &args));
    }

    fn kill(&mut self, i: usize) {
        if let Some(member) = self.members[i].take() {
            member.kill();
        }
    }

    /// Kills member `i` and starts it again on its data dir, with its (current) flags.
    fn bounce(&mut self, i: usize) {
        self.kill(i);
        self.restart(i);
    }

    fn member(&self, i: usize) -> &Ringd {
        self.members[i].as_ref().expect("member is running")
    }

    fn running(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|&i| self.members[i].is_some()).collect()
    }

    /// (leader id, raft term, raft index, applied index) as member `i` reports it.
    fn status(&self, i: usize) -> Option<(u64, u64, u64, u64)> {
        let output = self.member(i).etcdctl(&["endpoint", "status", "-w", "json"]);
        if !output.status.success() {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&stdout(&output)).ok()?;
        let status = &json[0]["Status"];
        status["header"]["member_id"].as_u64()?;
        Some((
            status["leader"].as_u64().unwrap_or(0),
            status["raftTerm"].as_u64().unwrap_or(0),
            status["raftIndex"].as_u64().unwrap_or(0),
            status["raftAppliedIndex"].as_u64().unwrap_or(0),
        ))
    }

    fn member_id(&self, i: usize) -> u64 {
        let output = self.member(i).etcdctl(&["endpoint", "status", "-w", "json"]);
        let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
        json[0]["Status"]["header"]["member_id"].as_u64().unwrap()
    }

    /// Waits until every running member names the same leader among the running members;
    /// returns the leader's position.
    fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let running = self.running();
        let ids: Vec<u64> = running.iter().map(|&i| self.member_id(i)).collect();
        loop {
            let leaders: Vec<Option<u64>> = running.iter().map(|&i| self.status(i).map(|s| s.0)).collect();
            if let Some(Some(leader)) = leaders.first() {
                if *leader != 0 && leaders.iter().all(|l| *l == Some(*leader)) {
                    if let Some(position) = ids.iter().position(|id| id == leader) {
                        return running[position];
                    }
                }
            }
            assert!(Instant::now() < deadline, "no common leader among members {running:?}: {leaders:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running member has applied the same, highest raft index.
    fn wait_for_same_index(&self) -> u64 {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let statuses: Vec<Option<(u64, u64, u64, u64)>> = self.running().iter().map(|&i| self.status(i)).collect();
            let indexes: Vec<Option<(u64, u64)>> = statuses.iter().map(|s| s.map(|s| (s.2, s.3))).collect();
            if let Some(Some((index, _))) = indexes.first() {
                if indexes.iter().all(|x| *x == Some((*index, *index))) {
                    return *index;
                }
            }
            assert!(Instant::now() < deadline, "members do not converge on one raft index: {statuses:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// etcd's flags for one member on loopback, with short election timeouts.
fn member_args(name: &str, peer_url: &str, initial_cluster: &str, state: &str, extra: &[&str]) -> Vec<String> {
    let token = format!("cluster-test-{}", std::process::id());
    [
        "--name",
        name,
        "--initial-advertise-peer-urls",
        peer_url,
        "--listen-peer-urls",
        peer_url,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-state",
        state,
        "--initial-cluster-token",
        &token,
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
    ]
    .iter()
    .chain(extra.iter())
    .map(|s| s.to_string())
    .collect()
}

fn get_value(endpoint: &str, key: &str, serializable: bool) -> Option<String> {
    let mut args = vec!["get", key, "--print-value-only"];
    if serializable {
        args.push("--consistency=s");
    }
    let output = etcdctl(endpoint, &args, None);
    if !output.status.success() {
        return None;
    }
    let value = stdout(&output).trim_end().to_owned();
    (!value.is_empty()).then_some(value)
}

#[test]
fn three_members_elect_one_leader_replicate_and_forward() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();

    // The real etcdctl's table: one leader, three endpoints.
    let endpoints: Vec<String> = (0..3).map(|i| cluster.member(i).endpoint()).collect();
    let output = etcdctl(&endpoints.join(","), &["endpoint", "status", "-w", "table"], None);
    assert!(output.status.success(), "{}", support::error_line(&output));
    let table = stdout(&output);
    let is_leader_column = |line: &str| line.split('|').nth(5).map(str::trim).map(str::to_owned);
    let leader_rows = table.lines().filter(|line| is_leader_column(line).as_deref() == Some("true")).count();
    let data_rows = table.lines().filter(|line| line.contains("127.0.0.1")).count();
    assert_eq!(data_rows, 3, "{table}");
    assert_eq!(leader_rows, 1, "exactly one leader:\n{table}");

    // Writes on every member (two of them followers, which forward to the leader).
    for i in 0..3 {
        let output = cluster.member(i).etcdctl(&["put", &format!("key-{i}"), &format!("value-{i}")]);
        assert!(output.status.success(), "put on member {i}: {}", support::error_line(&output));
    }
    // A linearizable read on any member sees a write acknowledged by another one at once.
    for reader in 0..3 {
        for writer in 0..3 {
            assert_eq!(
                get_value(&cluster.member(reader).endpoint(), &format!("key-{writer}"), false),
                Some(format!("value-{writer}")),
                "member {reader} reads what member {writer} acknowledged"
            );
        }
    }
    let follower = (leader + 1) % 3;
    let output = cluster.member(leader).etcdctl(&["put", "fresh", "from-the-leader"]);
    assert!(output.status.success());
    assert_eq!(get_value(&cluster.member(follower).endpoint(), "fresh", false).as_deref(), Some("from-the-leader"));

    let index = cluster.wait_for_same_index();
    // Every member applied the four puts and counts them (etcd's "puts seen by this member").
    for i in 0..3 {
        let scrape = support::Scrape::of(cluster.member(i).port);
        assert_eq!(scrape.value("etcd_mvcc_put_total"), 4.0, "member {i}");
        // At least: a member may publish its name and URLs through Raft after the wait.
        assert!(scrape.value("etcd_server_proposals_applied_total") >= index as f64, "member {i}");
    }

    // The member list: three members with their names and client URLs, on every member.
    for i in 0..3 {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let output = cluster.member(i).etcdctl(&["member", "list", "-w", "json"]);
            let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
            let members = json["members"].as_array().cloned().unwrap_or_default();
            let complete = members.len() == 3
                && members.iter().all(|m| m["clientURLs"].as_array().is_some_and(|urls| !urls.is_empty()));
            if complete {
                let mut names: Vec<String> = members.iter().map(|m| m["name"].as_str().unwrap().to_owned()).collect();
                names.sort();
                assert_eq!(names, vec!["m0", "m1", "m2"]);
                break;
            }
            assert!(Instant::now() < deadline, "member list on member {i}: {json}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_killed_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let writer_member = (leader + 1) % 3;
    let endpoint = cluster.member(writer_member).endpoint();

    let acknowledged = Arc::new(Mutex::new(Vec::<usize>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut attempt = 0usize;
            while !stop.load(Ordering::Acquire) && attempt < 2000 {
                let output = etcdctl(&endpoint, &["put", &format!("ack-{attempt:05}"), &attempt.to_string()], None);
                if output.status.success() {
                    acknowledged.lock().unwrap().push(attempt);
                }
                attempt += 1;
            }
        })
    };
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while acknowledged.lock().unwrap().len() < 30 {
        assert!(Instant::now() < deadline, "writes do not go through");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, leader);
    let before = acknowledged.lock().unwrap().len();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while acknowledged.lock().unwrap().len() < before + 30 {
        assert!(Instant::now() < deadline, "writes do not resume after the new leader is elected");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();

    // Every acknowledged write is on the survivors.
    let survivors = cluster.running();
    for &i in &survivors {
        let output = cluster.member(i).etcdctl(&["get", "ack-", "--prefix", "--keys-only"]);
        assert!(output.status.success());
        let keys = stdout(&output);
        for attempt in &acknowledged {
            assert!(keys.contains(&format!("ack-{attempt:05}")), "member {i} lost acknowledged write {attempt}");
        }
    }

    // The killed member restarts from its WAL and catches up from the leader's log.
    cluster.restart(leader);
    cluster.wait_for_leader();
    let index = cluster.wait_for_same_index();
    assert!(index > 0);
    let restarted = cluster.member(leader).endpoint();
    let output = etcdctl(&restarted, &["get", "ack-", "--prefix", "--keys-only", "--consistency=s"], None);
    let keys = stdout(&output);
    for attempt in &acknowledged {
        assert!(
            keys.contains(&format!("ack-{attempt:05}")),
            "the restarted member misses acknowledged write {attempt}"
        );
    }
}

#[test]
fn a_member_without_quorum_refuses_writes_and_linearizable_reads() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    let output = cluster.member(0).etcdctl(&["put", "before", "quorum-lost"]);
    assert!(output.status.success());
    cluster.kill(1);
    cluster.kill(2);
    // Member 0 alone: once it notices (check-quorum / election timeout), it has no leader.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        if cluster.status(0).is_some_and(|s| s.0 == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "member 0 still believes in a leader");
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = cluster.member(0).etcdctl(&["put", "after", "quorum-lost"]);
    assert!(!output.status.success());
    assert!(support::error_line(&output).contains("etcdserver: no leader"), "{}", support::error_line(&output));
    let output = cluster.member(0).etcdctl(&["get", "before"]);
    assert!(!output.status.success(), "a linearizable read without quorum must fail");
    // A serializable read is still answered locally.
    assert_eq!(get_value(&cluster.member(0).endpoint(), "before", true).as_deref(), Some("quorum-lost"));
    let (status, body) = support::http(cluster.member(0).port, "GET", "/health", "");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("false"), "{body}");
    // /metrics: no leader, and the refused put counted as a failed proposal (the refused
    // read is no proposal).
    let scrape = support::Scrape::of(cluster.member(0).port);
    assert_eq!(scrape.value("etcd_server_has_leader"), 0.0);
    assert_eq!(scrape.value("etcd_server_is_leader"), 0.0);
    assert!(scrape.value("etcd_server_proposals_failed_total") >= 1.0);
    assert_eq!(scrape.value("etcd_server_proposals_pending"), 0.0);
}

/// Growing a one-member cluster (etcd's restore recipe): `member add` of a voter is answered
/// at once and the member table lists the new voter, unstarted, as etcd's; Raft runs it as a
/// learner until it has joined and caught up (as a voter at once it would be needed to commit
/// its own addition), so the lone member keeps serving meanwhile. Then the leader promotes
/// it, and it counts: without it, the first member can no longer prove it leads, so
/// linearizable reads fail and serializable reads still work. (A one-member cluster answers
/// linearizable reads without a ReadIndex round while it is the only voter.)
#[test]
fn a_second_voter_joins_a_one_member_cluster_through_a_learner_stage_and_then_counts() {
    // A long election timeout: the member must refuse the read because it cannot prove it
    // leads, not because check-quorum has already made it step down.
    let mut cluster = Cluster::start_with(1, &["--election-timeout", "30000"]);
    cluster.wait_for_leader();
    let endpoint = cluster.member(0).endpoint();
    assert!(cluster.member(0).etcdctl(&["put", "k", "alone"]).status.success());
    assert_eq!(get_value(&endpoint, "k", false).as_deref(), Some("alone"));
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let output = cluster.member(0).etcdctl(&["member", "add", "m1", &format!("--peer-urls={peer_url}")]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    let initial_cluster = exported(&stdout(&output), "ETCD_INITIAL_CLUSTER");
    let members = member_list(&endpoint);
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| m["isLearner"] != true), "listed as the voter asked for: {members:?}");

    // Still the only voter in Raft until the new member has caught up.
    assert!(cluster.member(0).etcdctl(&["put", "k", "still-alone"]).status.success());
    assert_eq!(get_value(&endpoint, "k", false).as_deref(), Some("still-alone"));

    let new = cluster.join("m1", &peer_url, &initial_cluster);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let output = cluster.member(new).etcdctl(&["endpoint", "status", "-w", "json"]);
        let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap_or_default();
        // Its status says learner until its Raft configuration names it a voter.
        if output.status.success()
            && json[0]["Status"]["raftIndex"].as_u64().is_some()
            && json[0]["Status"]["isLearner"] != true
        {
            break;
        }
        assert!(Instant::now() < deadline, "the new member is never promoted: {}", stdout(&output));
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while get_value(&cluster.member(new).endpoint(), "k", true).as_deref() != Some("still-alone") {
        assert!(Instant::now() < deadline, "the new member does not apply what it was sent");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cluster.member(new).etcdctl(&["put", "k", "two"]).status.success());
    assert_eq!(get_value(&endpoint, "k", false).as_deref(), Some("two"));

    cluster.kill(new);
    let output = cluster.member(0).etcdctl(&["get", "k"]);
    assert!(!output.status.success(), "a linearizable read with one of two voters must fail");
    assert_eq!(get_value(&endpoint, "k", true).as_deref(), Some("two"));
}

impl Cluster {
    /// Waits (bounded) until member `i`, which the cluster removed, stops by itself.
    fn wait_until_removed_member_exits(&mut self, i: usize) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while self.members[i].as_mut().unwrap().child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the removed member keeps running");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.members[i] = None;
    }

    /// Starts a member that `member add` announced, joining the running cluster.
    fn join(&mut self, name: &str, peer_url: &str, initial_cluster: &str) -> usize {
        let args = member_args(name, peer_url, initial_cluster, "existing", &[]);
        let position = self.members.len();
        self.dirs.push(self._temp.path().join(name));
        self.args.push(args);
        self.members.push(None);
        self.restart(position);
        position
    }
}

/// The value of `KEY="value"` in etcdctl's `member add` output.
fn exported(output: &str, key: &str) -> String {
    let prefix = format!("{key}=\"");
    let line = output.lines().find(|line| line.starts_with(&prefix)).unwrap_or_else(|| panic!("{key} in {output}"));
    line[prefix.len()..line.len() - 1].to_owned()
}

/// A `member` command (add, remove) run until the asked member has been connected to its
/// peers long enough to allow it: like etcd's, ringd refuses membership changes with
/// "unhealthy cluster" for five seconds after a peer connects (`--strict-reconfig-check`).
fn member_change(endpoint: &str, args: &[&str]) -> std::process::Output {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let output = etcdctl(endpoint, args, None);
        if output.status.success() || !support::error_line(&output).contains("unhealthy cluster") {
            return output;
        }
        assert!(Instant::now() < deadline, "{args:?}: still refused: {}", support::error_line(&output));
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn member_list(endpoint: &str) -> Vec<serde_json::Value> {
    let output = etcdctl(endpoint, &["member", "list", "-w", "json"], None);
    assert!(output.status.success(), "{}", support::error_line(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    json["members"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_learner_is_added_catches_up_is_promoted_and_a_member_is_removed() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    for i in 0..20 {
        assert!(cluster.member(leader).etcdctl(&["put", &format!("early-{i:02}"), "x"]).status.success());
    }
    let endpoint = cluster.member(leader).endpoint();

    // etcdctl member add --learner, then start the member the way its output says.
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let output = member_change(&endpoint, &["member", "add", "m3", "--peer-urls", &peer_url, "--learner"]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    let announced = stdout(&output);
    assert_eq!(exported(&announced, "ETCD_INITIAL_CLUSTER_STATE"), "existing");
    let id_hex = announced.split_whitespace().nth(1).unwrap().to_owned();
    // Not started yet, so not caught up: a follower asks the leader, which knows, and passes
    // its answer on (as etcd's does), at once.
    let follower = cluster.member((leader + 1) % 3).endpoint();
    let output = etcdctl(&follower, &["member", "promote", &id_hex], None);
    assert!(support::error_line(&output).contains("in sync with leader"), "{}", support::error_line(&output));
    // One learner at a time, as etcd's.
    let second = format!("http://127.0.0.1:{}", free_port());
    let output = etcdctl(&endpoint, &["member", "add", "m4", "--peer-urls", &second, "--learner"], None);
    assert_eq!(support::error_line(&output), "Error: etcdserver: too many learner members in cluster");
    let new = cluster.join("m3", &peer_url, &exported(&announced, "ETCD_INITIAL_CLUSTER"));

    // The learner catches up from the leader's log.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while get_value(&cluster.member(new).endpoint(), "early-19", true).is_none() {
        assert!(Instant::now() < deadline, "the learner does not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let members = member_list(&endpoint);
    assert_eq!(members.len(), 4);
    let ids: Vec<u64> = members.iter().map(|m| m["ID"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "listed in ID order, as etcd lists them: {ids:?}");
    let learner = members.iter().find(|m| m["peerURLs"][0] == peer_url.as_str()).unwrap();
    assert_eq!(learner["isLearner"], true, "{members:?}");
    // A learner does not vote and cannot be the target of a write forwarding loop; a
    // linearizable read through it works once it is promoted.

    // Promoted through a follower too.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let output = etcdctl(&follower, &["member", "promote", &id_hex], None);
        if output.status.success() {
            break;
        }
        let error = support::error_line(&output);
        assert!(error.contains("in sync with leader"), "{error}");
        assert!(Instant::now() < deadline, "the learner is never promoted: {error}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let members = member_list(&endpoint);
    assert!(members.iter().all(|m| m["isLearner"] != true), "{members:?}");
    assert!(cluster.member(new).etcdctl(&["put", "after-promotion", "y"]).status.success());
    assert_eq!(get_value(&cluster.member(new).endpoint(), "after-promotion", false).as_deref(), Some("y"));
    cluster.wait_for_same_index();

    // Promoting a voter and adding an existing peer URL are refused as etcd refuses them.
    let output = etcdctl(&endpoint, &["member", "promote", &id_hex], None);
    assert!(support::error_line(&output).contains("can only promote a learner member"));
    // (The strict reconfiguration check comes first, as etcd's: "unhealthy cluster" until the
    // new voter has been connected for five seconds; `member_change` waits that out.)
    let output = member_change(&endpoint, &["member", "add", "again", "--peer-urls", &peer_url]);
    assert!(support::error_line(&output).contains("Peer URLs already exists"), "{}", support::error_line(&output));

    // Remove a follower: it stops, the rest goes on with four... three members.
    let removed = (0..3).find(|&i| i != leader).unwrap();
    let removed_id = format!("{:x}", cluster.member_id(removed));
    let output = member_change(&endpoint, &["member", "remove", &removed_id]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    cluster.wait_until_removed_member_exits(removed);
    assert_eq!(member_list(&endpoint).len(), 3);
    // Started again on its data dir, the removed member refuses, as etcd does.
    let mut args = vec!["--data-dir".to_owned(), cluster.dirs[removed].display().to_string()];
    args.extend(cluster.args[removed].iter().cloned());
    args.extend(["--listen-client-urls".to_owned(), format!("http://127.0.0.1:{}", support::free_port())]);
    let (code, stderr) = support::ringd_fails_to_start(&args);
    assert_ne!(code, 0);
    assert!(stderr.contains("the member has been permanently removed from the cluster"), "{stderr}");
    assert!(cluster.member(new).etcdctl(&["put", "after-removal", "z"]).status.success());
    cluster.wait_for_leader();
    cluster.wait_for_same_index();
    let output = etcdctl(&endpoint, &["member", "remove", &removed_id], None);
    assert!(support::error_line(&output).contains("member not found"), "{}", support::error_line(&output));
}

/// Membership changes asked for at once on every member are checked by the leader, one at a
/// time, against a member table that holds every change before it (etcd checks each when it
/// applies it). Of learners added together one is added and the others get etcd's "too many
/// learner members"; of one peer URL added together, "Peer URLs already exists"; or, while
/// the change before them is not yet applied, "unhealthy cluster". A follower's client gets
/// the leader's refusal, and the membership ends with one learner each round.
#[test]
fn membership_changes_asked_for_at_once_on_every_member_are_checked_one_after_another() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let endpoint = cluster.member(leader).endpoint();
    // The strict reconfiguration check wants every peer connected for five seconds.
    std::thread::sleep(Duration::from_secs(6));
    for round in 0..6 {
        let one_url = round % 2 == 1;
        let shared_url = format!("http://127.0.0.1:{}", free_port());
        let barrier = Arc::new(std::sync::Barrier::new(6));
        let askers: Vec<_> = (0..6)
            .map(|i| {
                let port = cluster.member(i % 3).port;
                // Each its own URL, and in the odd rounds one URL all share besides (the ID
                // comes from the URLs and the second: one URL alone would be one ID).
                let own = format!("http://127.0.0.1:{}", free_port());
                let urls = if one_url { format!(r#""{own}","{shared_url}""#) } else { format!(r#""{own}""#) };
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut connection = support::KeepAlive::connect(port);
                    let body = format!(r#"{{"peerURLs":[{urls}],"isLearner":true}}"#);
                    barrier.wait();
                    connection.request("POST", "/v3/cluster/member/add", &body)
                })
            })
            .collect();
        let answers: Vec<(u16, String)> = askers.into_iter().map(|asker| asker.join().unwrap()).collect();
        let refusal = if one_url { "Peer URLs already exists" } else { "too many learner members in cluster" };
        for (status, body) in &answers {
            let expected = *status == 200 || body.contains(refusal) || body.contains("unhealthy cluster");
            assert!(expected, "round {round}: {status} {body}");
        }
        assert_eq!(answers.iter().filter(|(status, _)| *status == 200).count(), 1, "round {round}: {answers:?}");
        let members = member_list(&endpoint);
        let learners: Vec<&serde_json::Value> = members.iter().filter(|m| m["isLearner"] == true).collect();
        assert_eq!(learners.len(), 1, "round {round}: {members:?}");
        let learner = format!("{:x}", learners[0]["ID"].as_u64().unwrap());
        let output = member_change(&endpoint, &["member", "remove", &learner]);
        assert!(output.status.success(), "{}", support::error_line(&output));
    }
}

/// etcd's `--strict-reconfig-check`: with a member down, the member asked refuses to add
/// another or to remove a live one ("unhealthy cluster"), but removes the dead one; a voter
/// that would leave fewer started voters than a quorum is refused ("not enough started
/// members"); a member started with `--strict-reconfig-check=false` does what it is told.
#[test]
fn membership_changes_that_would_lose_the_quorum_are_refused_as_etcd_refuses_them() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let dead = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let endpoint = cluster.member(leader).endpoint();
    let dead_id = format!("{:x}", cluster.member_id(dead));
    let other_id = format!("{:x}", cluster.member_id(other));
    let unused_url = || format!("http://127.0.0.1:{}", free_port());
    // A restarted member sees every peer connected again (the other follower, which seldom
    // writes to it, dials it again once it finds its old connection closed), and so may
    // change the membership once the health interval (5 s) has passed.
    cluster.bounce(other);
    cluster.wait_for_leader();
    let output = member_change(
        &cluster.member(other).endpoint(),
        &["member", "add", "w", "--learner", "--peer-urls", &unused_url()],
    );
    assert!(output.status.success(), "{}", support::error_line(&output));
    let learner_id = stdout(&output).split_whitespace().nth(1).unwrap().to_owned();
    let output = etcdctl(&cluster.member(other).endpoint(), &["member", "remove", &learner_id], None);
    assert!(output.status.success(), "a learner goes freely: {}", support::error_line(&output));
    // Every peer connected for longer than the health interval.
    std::thread::sleep(Duration::from_secs(6));
    cluster.kill(dead);
    std::thread::sleep(Duration::from_millis(500));

    let refused = |args: &[&str], message: &str| {
        let output = etcdctl(&endpoint, args, None);
        assert!(!output.status.success(), "{args:?} was accepted");
        let error = support::error_line(&output);
        assert_eq!(error, format!("Error: etcdserver: {message}"), "{args:?}");
    };
    refused(&["member", "add", "x", "--peer-urls", &unused_url()], "unhealthy cluster");
    refused(&["member", "add", "x", "--learner", "--peer-urls", &unused_url()], "unhealthy cluster");
    refused(&["member", "remove", &other_id], "unhealthy cluster");
    assert_eq!(member_list(&endpoint).len(), 3, "nothing changed");

    let output = etcdctl(&endpoint, &["member", "remove", &dead_id], None);
    assert!(output.status.success(), "the dead member goes: {}", support::error_line(&output));
    // Two voters, both up: a third (not started yet) is fine, a fourth would leave two
    // started voters of four.
    let output = member_change(&endpoint, &["member", "add", "x", "--peer-urls", &unused_url()]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    refused(
        &["member", "add", "y", "--peer-urls", &unused_url()],
        "re-configuration failed due to not enough started members",
    );
    assert_eq!(member_list(&endpoint).len(), 3);

    // Without the check, the member asked adds a learner even though member x never started.
    cluster.args[other].push("--strict-reconfig-check=false".to_owned());
    cluster.bounce(other);
    cluster.wait_for_leader();
    let output = etcdctl(
        &cluster.member(other).endpoint(),
        &["member", "add", "z", "--learner", "--peer-urls", &unused_url()],
        None,
    );
    assert!(output.status.success(), "{}", support::error_line(&output));
    assert_eq!(member_list(&cluster.member(other).endpoint()).len(), 4);
    // And a voter, although only two of the three voters are up (x never started): its
    // addition could not commit without it, so it starts as a learner (listed as a voter)
    // and the change is answered instead of waiting forever.
    let output =
        etcdctl(&cluster.member(other).endpoint(), &["member", "add", "v", "--peer-urls", &unused_url()], None);
    assert!(output.status.success(), "{}", support::error_line(&output));
    let members = member_list(&cluster.member(other).endpoint());
    assert_eq!(members.len(), 5);
    assert_eq!(members.iter().filter(|m| m["isLearner"] == true).count(), 1, "only z is a learner: {members:?}");
}

/// etcd's --force-new-cluster: after the whole cluster is lost, one member restarted with it
/// becomes a cluster of its own with everything that was acknowledged, and stays one when
/// restarted without the flag.
#[test]
fn force_new_cluster_makes_a_surviving_member_a_cluster_of_its_own() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    for i in 0..30 {
        let output = cluster.member((leader + i) % 3).etcdctl(&["put", &format!("key-{i:02}"), &format!("v{i}")]);
        assert!(output.status.success(), "{}", support::error_line(&output));
    }
    // Every member has applied everything (the survivor's log must hold it all).
    cluster.wait_for_same_index();
    for i in 0..3 {
        cluster.kill(i);
    }
    cluster.args[0].push("--force-new-cluster".to_owned());
    cluster.restart(0);
    cluster.wait_for_leader();
    let endpoint = cluster.member(0).endpoint();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while member_list(&endpoint).len() != 1 {
        assert!(Instant::now() < deadline, "the other members are never removed: {:?}", member_list(&endpoint));
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..30 {
        assert_eq!(get_value(&endpoint, &format!("key-{i:02}"), false), Some(format!("v{i}")), "key-{i:02}");
    }
    assert!(cluster.member(0).etcdctl(&["put", "after", "forced"]).status.success());

    cluster.args[0].pop();
    cluster.bounce(0);
    cluster.wait_for_leader();
    let endpoint = cluster.member(0).endpoint();
    assert_eq!(member_list(&endpoint).len(), 1);
    assert_eq!(get_value(&endpoint, "after", false).as_deref(), Some("forced"));
    assert_eq!(get_value(&endpoint, "key-29", false).as_deref(), Some("v29"));
}

#[test]
fn move_leader_hands_leadership_to_the_target() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let target = (leader + 1) % 3;
    let target_id = format!("{:x}", cluster.member_id(target));
    let output = cluster.member(target).etcdctl(&["move-leader", &target_id]);
    assert!(!output.status.success(), "only the leader can move leadership");
    let endpoints = format!("{},{}", cluster.member(leader).endpoint(), cluster.member(target).endpoint());
    let output = etcdctl(&endpoints, &["move-leader", &target_id], None);
    assert!(output.status.success(), "{}", support::error_line(&output));
    assert!(stdout(&output).contains("Leadership transferred"), "{}", stdout(&output));
    assert_eq!(cluster.wait_for_leader(), target);
    // /metrics on every member: the leader it follows, and both leaders it saw.
    for i in 0..3 {
        let scrape = support::Scrape::of(cluster.member(i).port);
        assert_eq!(scrape.value("etcd_server_has_leader"), 1.0, "member {i}");
        assert_eq!(scrape.value("etcd_server_is_leader"), if i == target { 1.0 } else { 0.0 }, "member {i}");
        assert!(scrape.value("etcd_server_leader_changes_seen_total") >= 2.0, "member {i}");
        assert_eq!(scrape.value("etcd_server_is_learner"), 0.0, "member {i}");
    }
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let mut cluster =
        Cluster::start_with(3, &["--snapshot-count", "40", "--experimental-snapshot-catchup-entries", "5"]);
    let leader = cluster.wait_for_leader();
    let follower = (leader + 1) % 3;
    for i in 0..10 {
        assert!(cluster.member(leader).etcdctl(&["put", &format!("before-{i}"), "x"]).status.success());
    }
    cluster.kill(follower);
    // Enough entries for several durable checkpoints and snapshots past the follower.
    for i in 0..150 {
        let output = cluster.member(leader).etcdctl(&["put", &format!("while-down-{i:03}"), &i.to_string()]);
        assert!(output.status.success(), "{}", support::error_line(&output));
    }
    std::thread::sleep(Duration::from_millis(1500)); // the next durable checkpoint and snapshot
    assert!(cluster.member(leader).etcdctl(&["put", "last", "y"]).status.success());
    cluster.restart(follower);
    cluster.wait_for_leader();
    cluster.wait_for_same_index();
    let endpoint = cluster.member(follower).endpoint();
    assert_eq!(get_value(&endpoint, "while-down-149", true).as_deref(), Some("149"));
    assert_eq!(get_value(&endpoint, "before-0", true).as_deref(), Some("x"));
    // And it goes on from there: a write after the install reaches it.
    assert!(cluster.member(leader).etcdctl(&["put", "after-install", "z"]).status.success());
    assert_eq!(get_value(&endpoint, "after-install", false).as_deref(), Some("z"));
    let member = cluster.members[follower].take().unwrap();
    let stderr = member.kill_and_read_stderr();
    assert!(stderr.contains("installed a snapshot from the leader"), "{stderr}");
}

/// DESIGN §6: a write acknowledged to a client is never lost, across SIGKILL of a minority
/// and of every member at once (disks intact), during concurrent writes on every member.
#[test]
fn no_acknowledged_write_is_lost_across_rounds_of_kill_9() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    let endpoints = Arc::new(Mutex::new((0..3).map(|i| cluster.member(i).endpoint()).collect::<Vec<_>>()));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|writer| {
            let endpoints = endpoints.clone();
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) && n < 5000 {
                    let endpoint = endpoints.lock().unwrap()[(writer + n) % 3].clone();
                    let key = format!("chaos-{writer}-{n:05}");
                    let output = etcdctl(&endpoint, &["put", &key, "v", "--command-timeout=3s"], None);
                    if output.status.success() {
                        acknowledged.lock().unwrap().push(key);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let seed = std::process::id() as u64;
    eprintln!("chaos seed {seed}");
    let mut state = seed;
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(700));
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let victims: Vec<usize> = if round % 3 == 2 { vec![0, 1, 2] } else { vec![(state >> 33) as usize % 3] };
        for &victim in &victims {
            cluster.kill(victim);
        }
        std::thread::sleep(Duration::from_millis(300));
        for &victim in &victims {
            cluster.restart(victim);
            endpoints.lock().unwrap()[victim] = cluster.member(victim).endpoint();
        }
    }
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.join().unwrap();
    }
    cluster.wait_for_leader();
    cluster.wait_for_same_index();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 30, "too few writes went through to test anything: {}", acknowledged.len());
    for i in 0..3 {
        let output = cluster.member(i).etcdctl(&["get", "chaos-", "--prefix", "--keys-only", "--consistency=s"]);
        assert!(output.status.success());
        let keys: std::collections::HashSet<String> =
            stdout(&output).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
        for key in &acknowledged {
            assert!(keys.contains(key), "member {i} lost acknowledged write {key} (seed {seed})");
        }
    }
}

#[test]
fn a_lease_expires_after_its_leader_is_killed_and_its_keys_go_on_every_member() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let output = cluster.member(leader).etcdctl(&["lease", "grant", "3"]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    let lease = stdout(&output).split_whitespace().nth(1).unwrap().to_owned();
    let output = cluster.member(leader).etcdctl(&["put", "leased", "v", &format!("--lease={lease}")]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    let kept = cluster.member(leader).etcdctl(&["put", "unleased", "v"]);
    assert!(kept.status.success());
    cluster.wait_for_same_index();
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader();
    // The new leader's lessor gives the lease its remaining TTL plus an election timeout,
    // then revokes it through Raft: the key goes on every member.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    for i in cluster.running() {
        while get_value(&cluster.member(i).endpoint(), "leased", true).is_some() {
            assert!(Instant::now() < deadline, "member {i} still has the expired lease's key");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(get_value(&cluster.member(i).endpoint(), "unleased", true).as_deref(), Some("v"));
    }
    let ttl = stdout(&cluster.member(new_leader).etcdctl(&["lease", "timetolive", &lease]));
    assert_eq!(ttl.trim(), format!("lease {lease} already expired"));
}

/// KeepAlive and TimeToLive are answered by the leader's lessor; a follower forwards them
/// (etcd does the same), so a client of any member can keep its leases alive.
#[test]
fn a_follower_forwards_keepalive_and_timetolive_to_the_leader() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let follower = cluster.member((leader + 1) % 3);
    let output = follower.etcdctl(&["lease", "grant", "30"]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    let lease = stdout(&output).split_whitespace().nth(1).unwrap().to_owned();
    let output = follower.etcdctl(&["put", "held", "v", &format!("--lease={lease}")]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    let output = follower.etcdctl(&["lease", "keep-alive", "--once", &lease]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    assert_eq!(stdout(&output).trim(), format!("lease {lease} keepalived with TTL(30)"));
    let output = follower.etcdctl(&["lease", "timetolive", "--keys", &lease]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    let answer = stdout(&output);
    assert!(answer.starts_with(&format!("lease {lease} granted with TTL(30s), remaining(")), "{answer}");
    assert!(answer.trim_end().ends_with("attached keys([held])"), "{answer}");
    let gone = stdout(&follower.etcdctl(&["lease", "timetolive", "123456"]));
    assert_eq!(gone.trim(), "lease 0000000000123456 already expired");
    let output = follower.etcdctl(&["lease", "keep-alive", "--once", "123456"]);
    assert_eq!(support::error_line(&output), "Error: etcdserver: requested lease not found");
    // etcdctl lock on a follower: a session lease kept alive through the leader.
    let output = follower.etcdctl(&["lock", "on-follower", "--", "echo", "locked"]);
    assert_eq!((output.status.success(), stdout(&output).trim()), (true, "locked"), "{}", support::error_line(&output));
}

/// A write the leader accepted but can no longer commit (its followers died) waits for the
/// request timeout (5 s + 2 election timeouts) and gets etcd's `request timed out`; then
/// the member, alone, has no leader and refuses at once.
#[test]
fn a_write_that_cannot_commit_times_out_as_etcds() {
    // A 2 s election timeout: the leader goes on believing it leads long enough for the
    // write to reach it (etcdctl's own timeout, 10 s, is above the 9 s request timeout).
    let mut cluster = Cluster::start_with(3, &["--election-timeout", "2000", "--heartbeat-interval", "200"]);
    let leader = cluster.wait_for_leader();
    cluster.wait_for_same_index();
    for i in 0..3 {
        if i != leader {
            cluster.kill(i);
        }
    }
    let output = cluster.member(leader).etcdctl(&["put", "stuck", "v"]);
    assert!(!output.status.success());
    assert_eq!(support::error_line(&output), "Error: etcdserver: request timed out");
    let output = cluster.member(leader).etcdctl(&["put", "after", "v"]);
    assert_eq!(support::error_line(&output), "Error: etcdserver: no leader");
}

/// A member removed, then added again on the same peer URL with a fresh data dir, rejoins and
/// catches up: as etcd's, MemberAdd mixes the time into the new member's ID, so the new one
/// is not the removed one (whose removal it replays from the log), and the joiner learns its
/// ID from a peer; after a restart it still has it.
#[test]
fn a_removed_member_added_again_rejoins_with_a_fresh_data_dir() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let endpoint = cluster.member(leader).endpoint();
    let removed = (0..3).find(|&i| i != leader).unwrap();
    let removed_id = format!("{:x}", cluster.member_id(removed));
    let peer_url = member_list(&endpoint)
        .into_iter()
        .find(|m| m["name"] == format!("m{removed}"))
        .and_then(|m| m["peerURLs"][0].as_str().map(str::to_owned))
        .unwrap();
    let output = member_change(&endpoint, &["member", "remove", &removed_id]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    cluster.wait_until_removed_member_exits(removed);
    assert!(cluster.member(leader).etcdctl(&["put", "while-away", "1"]).status.success());
    let output = member_change(&endpoint, &["member", "add", "again", "--peer-urls", &peer_url]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    let initial_cluster = exported(&stdout(&output), "ETCD_INITIAL_CLUSTER");
    let again = cluster.join("again", &peer_url, &initial_cluster);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while get_value(&cluster.member(again).endpoint(), "while-away", true).as_deref() != Some("1") {
        if Instant::now() > deadline {
            let member = cluster.members[again].take().unwrap();
            panic!("the member added again does not catch up: {}", member.kill_and_read_stderr());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(format!("{:x}", cluster.member_id(again)), removed_id, "a new member, a new ID");
    assert!(cluster.member(again).etcdctl(&["put", "from-again", "2"]).status.success());
    assert_eq!(get_value(&endpoint, "from-again", false).as_deref(), Some("2"));
    assert_eq!(member_list(&endpoint).len(), 3);
    // Restarted, it is the same member (its ID comes from its data dir, not its flags).
    let id = cluster.member_id(again);
    cluster.bounce(again);
    assert_eq!(cluster.member_id(again), id);
    cluster.wait_for_leader();
    assert!(cluster.member(again).etcdctl(&["put", "after-restart", "3"]).status.success());
    assert_eq!(get_value(&endpoint, "after-restart", false).as_deref(), Some("3"));
}

/// A member started to join (`--initial-cluster-state existing`) that `member add` never
/// announced is refused once its peers have not named it for the join timeout, with etcd's
/// message.
#[test]
fn a_member_that_was_never_added_cannot_join() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let peer_url = format!("http://127.0.0.1:{}", support::free_port());
    let initial = format!(
        "{},stray={peer_url}",
        cluster.args[0][cluster.args[0].iter().position(|a| a == "--initial-cluster").unwrap() + 1]
    );
    let data_dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--data-dir".to_owned(), data_dir.path().join("stray").display().to_string()];
    args.extend(member_args("stray", &peer_url, &initial, "existing", &[]));
    args.extend(["--listen-client-urls".to_owned(), format!("http://127.0.0.1:{}", support::free_port())]);
    let (code, stderr) = support::ringd_fails_to_start(&args);
    assert_ne!(code, 0);
    assert!(stderr.contains("couldn't find local name \"stray\" in the initial cluster configuration"), "{stderr}");
}

/// Sends `signal` (SIGSTOP, SIGCONT) to member `i`'s process.
fn signal(cluster: &Cluster, i: usize, signal: &str) {
    let pid = cluster.member(i).child.id().to_string();
    let status = std::process::Command::new("kill").args([signal, &pid]).status().expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

fn hash_kv(endpoint: &str) -> (u64, u64) {
    let output = etcdctl(endpoint, &["endpoint", "hashkv", "-w", "json"], None);
    assert!(output.status.success(), "{}", support::error_line(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let hash_kv = &json[0]["HashKV"];
    (hash_kv["hash"].as_u64().unwrap(), hash_kv["header"]["revision"].as_u64().unwrap())
}

/// A leader applies its entries while they replicate (`Ahead` in writer.rs), and publishes
/// them only once they commit. Here the followers are killed, so a put to the leader is
/// applied ahead and never commits; the leader steps down for lack of a quorum and must
/// drop it. It is then stopped (SIGSTOP) while the followers restart, elect a leader of
/// their own and write at the same indexes; once resumed, it takes their entries. Every
/// member ends with the same keys, revision and HashKV, and the put it applied ahead is
/// nowhere.
#[test]
fn a_deposed_leader_drops_the_writes_it_applied_ahead_of_their_commit() {
    // A 3 s election timeout: the leader still leads when the put reaches it, however slowly
    // etcdctl starts on a loaded machine.
    let mut cluster = Cluster::start_with(3, &["--election-timeout", "3000", "--heartbeat-interval", "300"]);
    let leader = cluster.wait_for_leader();
    let output = cluster.member(leader).etcdctl(&["put", "before", "1"]);
    assert!(output.status.success(), "{}", support::error_line(&output));
    cluster.wait_for_same_index();
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let follower_ids: Vec<u64> = followers.iter().map(|&i| cluster.member_id(i)).collect();
    // Killed, not stopped: an append the leader sends must not wait in a socket for them.
    for &i in &followers {
        cluster.kill(i);
    }
    let output = cluster.member(leader).etcdctl(&["put", "lost", "x", "--command-timeout=2s"]);
    assert!(!output.status.success(), "a put without a quorum was acknowledged");
    // Check-quorum: within an election timeout the leader steps down.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while cluster.status(leader).is_none_or(|status| status.0 != 0) {
        assert!(Instant::now() < deadline, "the leader without a quorum did not step down");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Readers never saw it (it was never published).
    assert_eq!(get_value(&cluster.member(leader).endpoint(), "lost", true), None);
    assert_eq!(get_value(&cluster.member(leader).endpoint(), "before", true).as_deref(), Some("1"));
    signal(&cluster, leader, "-STOP");
    for &i in &followers {
        cluster.restart(i);
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let writer = loop {
        let statuses: Vec<Option<(u64, u64, u64, u64)>> = followers.iter().map(|&i| cluster.status(i)).collect();
        let leaders: Vec<u64> = statuses.iter().map(|s| s.map_or(0, |s| s.0)).collect();
        // Until their election timeout they still name the stopped leader.
        if let Some(position) = follower_ids.iter().position(|&id| id == leaders[0] && id == leaders[1]) {
            break followers[position];
        }
        assert!(Instant::now() < deadline, "the two followers elect no leader: {statuses:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for n in 0..5 {
        let output = cluster.member(writer).etcdctl(&["put", &format!("after-{n}"), "2"]);
        assert!(output.status.success(), "{}", support::error_line(&output));
    }
    signal(&cluster, leader, "-CONT");
    cluster.wait_for_leader();
    cluster.wait_for_same_index();
    let hashes: Vec<(u64, u64)> = (0..3).map(|i| hash_kv(&cluster.member(i).endpoint())).collect();
    assert!(hashes.iter().all(|hash| *hash == hashes[0]), "members differ (hash, revision): {hashes:?}");
    for i in 0..3 {
        let endpoint = cluster.member(i).endpoint();
        assert_eq!(get_value(&endpoint, "lost", true), None, "member {i} has the write that never committed");
        assert_eq!(get_value(&endpoint, "after-4", true).as_deref(), Some("2"), "member {i}");
        assert_eq!(get_value(&endpoint, "before", true).as_deref(), Some("1"), "member {i}");
    }
    // The old leader counts the puts it applied and kept, not the one it dropped (/metrics).
    let scrape = support::Scrape::of(cluster.member(leader).port);
    assert_eq!(scrape.value("etcd_mvcc_put_total"), 6.0, "before, after-0..4");
    let stderr = cluster.members[leader].take().unwrap().kill_and_read_stderr();
    assert!(stderr.contains("applied ahead of their commit: this member stopped leading"), "{stderr}");
}
