//! Unit tests for the Raft paper's rules (§5.2 election, §5.3 replication, §5.4 safety,
//! Figures 7 and 8) on a synchronous in-memory network.

#[path = "simulation/harness.rs"]
mod harness;

use harness::{config, entry, member_with_log, Network};
use ringd::raft::pb::{Message, MessageType};
use ringd::raft::{Role, NONE};

const BOOTSTRAP_3: u64 = 3;
const BOOTSTRAP_5: u64 = 5;

fn vote_request(from: u64, to: u64, term: u64, last_index: u64, last_term: u64) -> Message {
    Message {
        msg_type: MessageType::MsgVote as i32,
        from,
        to,
        term,
        index: last_index,
        log_term: last_term,
        ..Default::default()
    }
}

fn network_of(members: Vec<ringd::raft::Raft>) -> Network {
    let mut network = Network::empty();
    for raft in members {
        network.members.insert(raft.id(), raft);
    }
    network.settle_all();
    network
}

// ---------------------------------------------------------------- §5.2 leader election

#[test]
fn paper_5_2_candidate_with_majority_becomes_leader_in_a_new_term() {
    let mut network = Network::new(&[1, 2, 3]);
    let term_before = network.member(1).term();
    network.campaign(1);
    assert_eq!(network.role(1), Role::Leader);
    assert_eq!(network.member(1).term(), term_before + 1);
    for id in [2, 3] {
        assert_eq!(network.role(id), Role::Follower);
        assert_eq!(network.member(id).leader_id(), 1);
        assert_eq!(network.member(id).hard_state().vote, 1);
    }
}

#[test]
fn paper_5_2_follower_grants_at_most_one_vote_per_term() {
    let mut network = Network::new(&[1, 2, 3]);
    network.member(1).step(vote_request(2, 1, 5, BOOTSTRAP_3, 1));
    network.member(1).step(vote_request(3, 1, 5, BOOTSTRAP_3, 1));
    let responses = network.take_queue();
    let granted: Vec<bool> = responses.iter().map(|message| !message.reject).collect();
    assert_eq!(granted, vec![true, false]);
    assert_eq!(network.member(1).hard_state().vote, 2);
    // A repeat of the vote we cast is granted again (the response may have been lost).
    network.member(1).step(vote_request(2, 1, 5, BOOTSTRAP_3, 1));
    assert!(!network.take_queue()[0].reject);
}

#[test]
fn paper_5_2_candidate_returns_to_follower_on_append_from_leader_of_its_term() {
    let mut network = Network::new(&[1, 2, 3]);
    network.isolate(1);
    network.campaign(1);
    assert_eq!(network.role(1), Role::Candidate);
    let term = network.member(1).term();
    let append = Message {
        msg_type: MessageType::MsgApp as i32,
        from: 2,
        to: 1,
        term,
        index: BOOTSTRAP_3,
        log_term: 1,
        ..Default::default()
    };
    network.member(1).step(append);
    assert_eq!(network.role(1), Role::Follower);
    assert_eq!(network.member(1).leader_id(), 2);
}

#[test]
fn paper_5_2_split_vote_starts_a_new_election_with_a_higher_term() {
    let mut network = Network::new(&[1, 2, 3]);
    network.isolate(1);
    network.campaign(1);
    let first_term = network.member(1).term();
    network.tick(1, 40);
    assert_eq!(network.role(1), Role::Candidate);
    assert!(network.member(1).term() > first_term, "a timed-out candidate starts a new term");
}

#[test]
fn paper_5_2_election_timeouts_are_randomized_within_one_to_two_timeouts() {
    let mut elapsed = std::collections::BTreeSet::new();
    for seed in 1..40u64 {
        let restart = ringd::raft::RestartState::bootstrap(&[1, 2, 3]);
        let mut raft = ringd::raft::Raft::new(config(1), restart, Box::new(ringd::raft::SplitMix64::new(seed)));
        let mut ticks = 0;
        while raft.role() == Role::Follower {
            raft.tick();
            ticks += 1;
            assert!(ticks <= 20, "campaigns within two election timeouts");
        }
        assert!(ticks >= 10, "never before one election timeout");
        elapsed.insert(ticks);
    }
    assert!(elapsed.len() > 3, "timeouts vary: {:?}", elapsed);
}

// ---------------------------------------------------------------- §5.3 log replication

#[test]
fn paper_5_3_leader_commits_an_entry_once_a_majority_stores_it() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    network.isolate(3);
    let index = network.propose(1, b"x");
    assert_eq!(network.committed(1), index);
    assert_eq!(network.committed(2), index);
    assert!(network.committed(3) < index);
    network.heal();
    // The lost append is noticed after a few heartbeats without progress.
    for _ in 0..4 {
        network.tick(1, 1);
        network.stabilize();
    }
    assert_eq!(network.committed(3), index);
    let applied: Vec<Vec<u8>> = network.applied[&3].iter().map(|entry| entry.data.to_vec()).collect();
    assert!(applied.contains(&b"x".to_vec()));
}

#[test]
fn paper_5_3_leader_does_not_commit_without_a_majority() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    let committed = network.committed(1);
    network.isolate(1);
    network.member(1).propose(b"lonely".to_vec()).unwrap();
    network.stabilize();
    assert_eq!(network.committed(1), committed);
}

#[test]
fn paper_5_3_follower_rejects_append_whose_previous_entry_does_not_match() {
    let mut network = Network::new(&[1, 2, 3]);
    let append = Message {
        msg_type: MessageType::MsgApp as i32,
        from: 2,
        to: 1,
        term: 2,
        index: BOOTSTRAP_3 + 5,
        log_term: 2,
        entries: vec![entry(BOOTSTRAP_3 + 6, 2)],
        ..Default::default()
    };
    network.member(1).step(append);
    let response = network.take_queue().pop().unwrap();
    assert_eq!(response.msg_type, MessageType::MsgAppResp as i32);
    assert!(response.reject);
    assert_eq!(response.reject_hint, BOOTSTRAP_3, "hint points at our last index");
}

/// Figure 7: whatever the follower's log (missing, extra or conflicting entries), the new
/// leader of term 8 makes it identical to its own.
#[test]
fn paper_5_3_figure_7_leader_brings_every_follower_log_in_line() {
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],
        &[1, 1, 1, 4],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        &[1, 1, 1, 4, 4, 4, 4],
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    for (case, follower_log) in followers.iter().enumerate() {
        let voters = [1, 2, 3];
        let term = 7;
        let mut network = network_of(vec![
            member_with_log(1, &voters, &leader_log, term, config(1)),
            member_with_log(2, &voters, follower_log, term, config(2)),
            member_with_log(3, &voters, &leader_log, term, config(3)),
        ]);
        network.campaign(1);
        assert_eq!(network.role(1), Role::Leader, "case {}", case);
        assert_eq!(network.member(1).term(), 8);
        network.tick(1, 1);
        network.stabilize();
        let leader_last = network.last_index(1);
        assert_eq!(network.last_index(2), leader_last, "case {}", case);
        for index in 1..=leader_last {
            assert_eq!(
                network.member(2).log().term(index),
                network.member(1).log().term(index),
                "case {} index {}",
                case,
                index
            );
        }
        assert_eq!(network.committed(2), leader_last);
    }
}

#[test]
fn paper_5_3_conflict_backtracking_skips_whole_terms() {
    // The follower holds 40 entries of a term the leader never saw: backing up one index
    // per round trip would take 40 rejections; by term it takes one or two.
    let voters = [1, 2, 3];
    let mut divergent = vec![1u64, 1];
    divergent.extend(std::iter::repeat_n(3, 40));
    let mut network = network_of(vec![
        member_with_log(1, &voters, &[1, 1, 2, 2], 4, config(1)),
        member_with_log(2, &voters, &divergent, 4, config(2)),
        member_with_log(3, &voters, &[1, 1, 2, 2], 4, config(3)),
    ]);
    network.campaign(1);
    network.tick(1, 1);
    network.stabilize();
    let rejections = network
        .delivered
        .iter()
        .filter(|m| m.msg_type == MessageType::MsgAppResp as i32 && m.reject && m.from == 2)
        .count();
    assert!(rejections <= 3, "{} rejections", rejections);
    assert_eq!(network.last_index(2), network.last_index(1));
}

// ---------------------------------------------------------------- §5.4 safety

#[test]
fn paper_5_4_1_voter_rejects_candidate_with_a_less_up_to_date_log() {
    let voters = [1, 2, 3];
    let cases = [
        // (candidate last index offset, candidate last term, granted) against a voter log [1, 2]
        (1, 1, false),
        (2, 1, false),
        (3, 1, false),
        (1, 2, false),
        (2, 2, true),
        (3, 2, true),
        (1, 3, true),
    ];
    for (offset, last_term, granted) in cases {
        let mut voter = member_with_log(1, &voters, &[1, 2], 2, config(1));
        voter.step(vote_request(2, 1, 3, BOOTSTRAP_3 + offset, last_term));
        let ready = voter.ready();
        let response = &ready.messages_after_persist[0];
        assert_eq!(!response.reject, granted, "candidate ({}, {})", offset, last_term);
    }
}

/// Figure 8: a leader must not commit an entry of an earlier term by counting replicas.
#[test]
fn paper_5_4_2_figure_8_leader_commits_earlier_terms_only_through_its_own() {
    let voters = [1, 2, 3, 4, 5];
    let k = BOOTSTRAP_5 + 1;
    // (c) S1 leads term 4 after having replicated (k, term 2) to S2 and S3; S5 holds (k, 3).
    let mut network = network_of(vec![
        member_with_log(1, &voters, &[2], 3, config(1)),
        member_with_log(2, &voters, &[2], 3, config(2)),
        member_with_log(3, &voters, &[2], 3, config(3)),
        member_with_log(4, &voters, &[], 3, config(4)),
        member_with_log(5, &voters, &[3], 3, config(5)),
    ]);
    network.dropped_types.insert(MessageType::MsgApp as i32);
    network.campaign(1);
    assert_eq!(network.role(1), Role::Leader);
    assert_eq!(network.member(1).term(), 4);
    // S2 and S3 acknowledge entry k only: a majority stores it, but it is of term 2.
    for from in [2, 3] {
        let ack =
            Message { msg_type: MessageType::MsgAppResp as i32, from, to: 1, term: 4, index: k, ..Default::default() };
        network.member(1).step(ack);
    }
    assert!(network.committed(1) < k, "an entry of term 2 must not commit by counting in term 4");
    // (d) Had S1 crashed now, S5 could win (its last term 3 beats 2) and overwrite k.
    let mut alternative = network_of(vec![
        member_with_log(2, &voters, &[2], 4, config(2)),
        member_with_log(3, &voters, &[2], 4, config(3)),
        member_with_log(4, &voters, &[], 4, config(4)),
        member_with_log(5, &voters, &[3], 4, config(5)),
    ]);
    alternative.campaign(5);
    assert_eq!(alternative.role(5), Role::Leader);
    alternative.tick(5, 1);
    alternative.stabilize();
    for id in [2, 3, 4] {
        assert_eq!(alternative.member(id).log().term(k), Some(3), "member {} took S5's entry", id);
    }
    // (e) Once an entry of term 4 is on a majority, k commits with it.
    for from in [2, 3] {
        let ack = Message {
            msg_type: MessageType::MsgAppResp as i32,
            from,
            to: 1,
            term: 4,
            index: k + 1,
            ..Default::default()
        };
        network.member(1).step(ack);
    }
    assert_eq!(network.committed(1), k + 1);
}

#[test]
fn paper_5_4_3_new_leader_holds_every_committed_entry() {
    let mut network = Network::new(&[1, 2, 3, 4, 5]);
    network.campaign(1);
    network.isolate(4);
    network.isolate(5);
    let index = network.propose(1, b"committed");
    assert_eq!(network.committed(1), index);
    network.isolate(1);
    for (from, to) in [(4, 2), (2, 4), (4, 3), (3, 4), (4, 5), (5, 4), (5, 2), (2, 5), (5, 3), (3, 5)] {
        network.cut.remove(&(from, to));
    }
    // Member 4 lacks the entry: it cannot win, whoever votes.
    network.campaign(4);
    assert_ne!(network.role(4), Role::Leader);
    network.campaign(2);
    assert_eq!(network.role(2), Role::Leader);
    assert!(network.last_index(2) >= index);
    assert_eq!(network.member(2).log().entry(index).unwrap().data, b"committed".to_vec());
    let _ = NONE;
}
