//! Transcript tests in the style of etcd's raft `testdata/*.txt`: each file under
//! tests/testdata/raft/ is a script of commands, each followed by `----` and the exact
//! output expected (messages delivered, member status). When behaviour changes on purpose,
//! regenerate with `RAFT_TRANSCRIPT_REWRITE=1 cargo test --release --test raft_transcripts`
//! and review the diff.
//!
//! Commands: `add-nodes N [pre-vote] [check-quorum]`, `campaign ID`, `propose ID DATA`,
//! `tick ID COUNT`, `tick-all COUNT`, `isolate ID`, `heal`, `stabilize`, `status`,
//! `log ID`, `read-index ID CONTEXT`, `transfer-leader LEADER TARGET`, `compact ID`,
//! `add-member ID`, `conf-change LEADER add-learner|add|remove ID`, `conf ID`.

#[path = "simulation/harness.rs"]
mod harness;

use std::fmt::Write as _;
use std::path::Path;

use harness::{config, Network};
use ringd::raft::pb::{ConfChange, ConfChangeType, Message, MessageType};

/// Next to this file, whichever crate compiles it (tests run from the package root).
fn transcript_dir() -> std::path::PathBuf {
    Path::new(file!()).parent().expect("tests directory").join("testdata/raft")
}

fn describe_message(message: &Message) -> String {
    let msg_type = MessageType::try_from(message.msg_type).map_or("?".to_string(), |t| format!("{:?}", t));
    let mut out = format!("{}->{} {} term={}", message.from, message.to, msg_type, message.term);
    let is_append = message.msg_type == MessageType::MsgApp as i32;
    let is_vote = message.msg_type == MessageType::MsgVote as i32 || message.msg_type == MessageType::MsgPreVote as i32;
    if is_append || is_vote {
        write!(out, " index={} logterm={}", message.index, message.log_term).unwrap();
    } else if message.msg_type == MessageType::MsgAppResp as i32
        || message.msg_type == MessageType::MsgReadIndexResp as i32
    {
        write!(out, " index={}", message.index).unwrap();
    }
    if is_append {
        let entries: Vec<String> =
            message.entries.iter().map(|entry| format!("{}/{}", entry.index, entry.term)).collect();
        write!(out, " entries=[{}]", entries.join(" ")).unwrap();
    }
    if is_append || message.msg_type == MessageType::MsgHeartbeat as i32 {
        write!(out, " commit={}", message.commit).unwrap();
    }
    if message.reject {
        write!(out, " reject hint={}", message.reject_hint).unwrap();
    }
    out
}

fn status(network: &Network) -> String {
    let mut out = String::new();
    for (id, raft) in &network.members {
        let hard_state = raft.hard_state();
        writeln!(
            out,
            "{}: {:?} term={} vote={} leader={} commit={} last={}",
            id,
            raft.role(),
            hard_state.term,
            hard_state.vote,
            raft.leader_id(),
            hard_state.commit,
            raft.log().last_index()
        )
        .unwrap();
    }
    out
}

fn stabilize(network: &mut Network) -> String {
    let already = network.delivered.len();
    network.stabilize();
    let mut out = String::new();
    for message in &network.delivered[already..] {
        writeln!(out, "{}", describe_message(message)).unwrap();
    }
    if out.is_empty() {
        out.push_str("(nothing)\n");
    }
    out
}

fn run_command(network: &mut Option<Network>, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let number =
        |position: usize| -> u64 { words[position].parse().unwrap_or_else(|_| panic!("bad number in {:?}", line)) };
    if words[0] == "add-nodes" {
        let count = number(1);
        let pre_vote = words.contains(&"pre-vote");
        let check_quorum = words.contains(&"check-quorum");
        let voters: Vec<u64> = (1..=count).collect();
        *network = Some(Network::with_config(&voters, |id| {
            let mut config = config(id);
            config.pre_vote = pre_vote;
            config.check_quorum = check_quorum;
            config
        }));
        return status(network.as_ref().unwrap());
    }
    let network = network.as_mut().expect("add-nodes first");
    match words[0] {
        "campaign" => {
            network.member(number(1)).campaign();
            stabilize(network)
        }
        "propose" => {
            let result = network.member(number(1)).propose(words[2].as_bytes().to_vec());
            format!("{:?}\n", result)
        }
        "tick" => {
            for _ in 0..number(2) {
                network.member(number(1)).tick();
            }
            "ok\n".to_string()
        }
        "tick-all" => {
            // Every member ticks once per round and the network settles between rounds.
            let mut out = String::new();
            for _ in 0..number(1) {
                for id in network.members.keys().copied().collect::<Vec<_>>() {
                    network.member(id).tick();
                }
                let delivered = stabilize(network);
                if delivered != "(nothing)\n" {
                    out.push_str(&delivered);
                }
            }
            if out.is_empty() {
                out.push_str("(nothing)\n");
            }
            out
        }
        "isolate" => {
            network.isolate(number(1));
            "ok\n".to_string()
        }
        "heal" => {
            network.heal();
            "ok\n".to_string()
        }
        "stabilize" => stabilize(network),
        "status" => status(network),
        "log" => {
            let log = network.member(number(1)).log();
            let entries: Vec<String> =
                (log.first_index()..=log.last_index()).map(|i| format!("{}/{}", i, log.term(i).unwrap())).collect();
            format!("{}\n", entries.join(" "))
        }
        "read-index" => {
            let result = network.member(number(1)).read_index(words[2].as_bytes().to_vec());
            let mut out = format!("{:?}\n", result);
            out.push_str(&stabilize(network));
            let reads = network.read_states.get(&number(1)).cloned().unwrap_or_default();
            for (index, context) in reads {
                writeln!(out, "read-state index={} context={}", index, String::from_utf8_lossy(&context)).unwrap();
            }
            network.read_states.clear();
            out
        }
        "compact" => {
            let raft = network.member(number(1));
            let applied = raft.log().applied;
            raft.create_snapshot(applied, b"snapshot".to_vec());
            raft.compact_log(applied);
            format!("snapshot at {}, first index {}\n", applied, raft.log().first_index())
        }
        "add-member" => {
            let id = number(1);
            let raft =
                ringd::raft::Raft::new(config(id), Default::default(), Box::new(ringd::raft::SplitMix64::new(id)));
            network.members.insert(id, raft);
            "ok\n".to_string()
        }
        "conf-change" => {
            let change_type = match words[2] {
                "add-learner" => ConfChangeType::ConfChangeAddLearnerNode,
                "add" => ConfChangeType::ConfChangeAddNode,
                "remove" => ConfChangeType::ConfChangeRemoveNode,
                other => panic!("unknown change {:?}", other),
            };
            let change = ConfChange { id: 0, change_type: change_type as i32, node_id: number(3), context: Vec::new() };
            let result = network.member(number(1)).propose_conf_change(change);
            format!("{:?}\n", result)
        }
        "conf" => {
            let conf = network.member(number(1)).conf_state().clone();
            format!("voters={:?} learners={:?}\n", conf.voters, conf.learners)
        }
        "transfer-leader" => {
            network.member(number(1)).transfer_leader(number(2));
            stabilize(network)
        }
        other => panic!("unknown command {:?}", other),
    }
}

/// Runs one transcript; returns the file as it should read.
fn run_transcript(text: &str) -> String {
    let mut network = None;
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let command = line.to_string();
        assert_eq!(lines.next(), Some("----"), "command {:?} must be followed by ----", command);
        while lines.peek().is_some_and(|next| !next.trim().is_empty()) {
            lines.next();
        }
        let output = run_command(&mut network, &command);
        write!(out, "{}\n----\n{}", command, output).unwrap();
    }
    out
}

#[test]
fn transcripts() {
    let rewrite = std::env::var("RAFT_TRANSCRIPT_REWRITE").is_ok();
    let mut files: Vec<_> =
        std::fs::read_dir(transcript_dir()).expect("transcript directory").map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for path in files.iter().filter(|path| path.extension().is_some_and(|ext| ext == "txt")) {
        let expected = std::fs::read_to_string(path).unwrap();
        let actual = run_transcript(&expected);
        if actual == expected {
            continue;
        }
        if rewrite {
            std::fs::write(path, &actual).unwrap();
            continue;
        }
        eprintln!("--- {} expected\n{}\n+++ actual\n{}", path.display(), expected, actual);
        failures.push(path.display().to_string());
    }
    assert!(failures.is_empty(), "transcripts differ: {:?} (RAFT_TRANSCRIPT_REWRITE=1 regenerates)", failures);
}
