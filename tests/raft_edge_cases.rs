//! The cases etcd's raft is known for: stale leaders, pre-vote, check-quorum, old and
//! duplicated messages, snapshots racing appends, learners, ReadIndex, leadership
//! transfer, membership changes and the Ready contract.

#[path = "simulation/harness.rs"]
mod harness;

use harness::{config, Network};
use ringd::raft::pb::{ConfChange, ConfChangeType, Message, MessageType};
use ringd::raft::{ProposeError, Role};

fn with_pre_vote_and_check_quorum(id: u64) -> ringd::raft::Config {
    let mut config = config(id);
    config.pre_vote = true;
    config.check_quorum = true;
    config
}

fn change(change_type: ConfChangeType, node_id: u64) -> ConfChange {
    ConfChange { id: 0, change_type: change_type as i32, node_id, context: Vec::new() }
}

#[test]
fn stale_leader_after_partition_steps_down_and_loses_its_uncommitted_entries() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    network.isolate(1);
    network.member(1).propose(b"lost".to_vec()).unwrap();
    network.stabilize();
    let stale_index = network.last_index(1);
    network.campaign(2);
    assert_eq!(network.role(2), Role::Leader);
    let kept = network.propose(2, b"kept");
    assert_eq!(kept, stale_index + 1, "the new leader's empty entry took the stale index");
    assert_eq!(network.role(1), Role::Leader, "the old leader does not know yet");
    network.heal();
    network.tick(2, 1);
    network.stabilize();
    assert_eq!(network.role(1), Role::Follower);
    assert_eq!(network.member(1).term(), network.member(2).term());
    assert!(network.member(1).log().entry(stale_index).unwrap().data.is_empty());
    assert_eq!(network.member(1).log().entry(kept).unwrap().data, b"kept".to_vec());
    let applied_1: Vec<Vec<u8>> = network.applied[&1].iter().map(|entry| entry.data.to_vec()).collect();
    assert!(!applied_1.contains(&b"lost".to_vec()));
}

#[test]
fn pre_vote_keeps_a_partitioned_member_from_disrupting_the_cluster() {
    let mut network = Network::with_config(&[1, 2, 3], with_pre_vote_and_check_quorum);
    network.campaign(1);
    let term = network.member(1).term();
    network.isolate(3);
    network.tick(3, 100);
    assert_eq!(network.member(3).term(), term, "pre-vote never raises the term of a member that cannot win");
    assert_eq!(network.role(3), Role::PreCandidate);
    network.heal();
    network.tick_all(3);
    assert_eq!(network.role(1), Role::Leader);
    assert_eq!(network.member(1).term(), term);
    assert_eq!(network.role(3), Role::Follower);
}

#[test]
fn without_pre_vote_a_returning_member_forces_a_new_election() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    let term = network.member(1).term();
    network.isolate(3);
    network.tick(3, 100);
    assert!(network.member(3).term() > term + 3);
    network.heal();
    network.tick(1, 1);
    network.stabilize();
    assert!(network.member(1).term() > term, "the stale-term answer deposes the leader");
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut network = Network::with_config(&[1, 2, 3], with_pre_vote_and_check_quorum);
    network.campaign(1);
    network.isolate(1);
    network.tick(1, 9);
    assert_eq!(network.role(1), Role::Leader);
    network.tick(1, 11);
    assert_eq!(network.role(1), Role::Follower);
}

#[test]
fn check_quorum_lease_ignores_vote_requests_while_the_leader_is_heard() {
    let mut network = Network::with_config(&[1, 2, 3], with_pre_vote_and_check_quorum);
    network.campaign(1);
    let term = network.member(2).term();
    let request = Message {
        msg_type: MessageType::MsgVote as i32,
        from: 3,
        to: 2,
        term: term + 5,
        index: 100,
        log_term: 100,
        ..Default::default()
    };
    network.member(2).step(request);
    assert_eq!(network.member(2).term(), term);
    assert!(network.take_queue().is_empty());
}

#[test]
fn old_and_duplicated_messages_change_nothing() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    network.propose(1, b"a");
    let appends: Vec<Message> =
        network.delivered.iter().filter(|m| m.msg_type == MessageType::MsgApp as i32 && m.to == 2).cloned().collect();
    network.propose(1, b"b");
    let (last, committed, term) = (network.last_index(2), network.committed(2), network.member(2).term());
    // Replay every append member 2 ever got, twice, and an append of an older term.
    for message in appends.iter().chain(appends.iter()) {
        network.member(2).step(message.clone());
    }
    let mut stale = appends[0].clone();
    stale.term = 1;
    stale.entries.clear();
    network.member(2).step(stale);
    network.stabilize();
    assert_eq!((network.last_index(2), network.committed(2), network.member(2).term()), (last, committed, term));
    // An old acknowledgement does not move the leader's view of member 2 backwards.
    let matched = network.member(1).progress(2).unwrap().matched;
    let old_ack =
        Message { msg_type: MessageType::MsgAppResp as i32, from: 2, to: 1, term, index: 1, ..Default::default() };
    network.member(1).step(old_ack.clone());
    network.member(1).step(old_ack);
    assert_eq!(network.member(1).progress(2).unwrap().matched, matched);
}

#[test]
fn snapshot_arriving_while_appends_are_in_flight() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    network.isolate(3);
    for round in 0..5u8 {
        network.propose(1, &[round]);
    }
    // Appends to 3 that the network still holds (captured before they are dropped).
    let mut held: Vec<Message> =
        network.delivered.iter().filter(|m| m.msg_type == MessageType::MsgApp as i32 && m.to == 2).cloned().collect();
    for message in &mut held {
        message.to = 3;
    }
    let applied = network.member(1).log().applied;
    network.member(1).create_snapshot(applied, b"state".to_vec());
    network.member(1).compact_log(applied);
    network.heal();
    for _ in 0..4 {
        network.tick(1, 1);
        network.stabilize();
    }
    assert!(network.delivered.iter().any(|m| m.msg_type == MessageType::MsgSnap as i32 && m.to == 3));
    assert_eq!(network.member(3).log().snapshot_index(), applied);
    let committed = network.committed(3);
    for message in held {
        network.member(3).step(message);
    }
    network.stabilize();
    assert_eq!(network.committed(3), committed, "late appends below the snapshot are ignored");
    let index = network.propose(1, b"after");
    assert_eq!(network.committed(3), index);
    assert_eq!(network.member(3).log().term(index), network.member(1).log().term(index));
}

/// The server keeps the db of the snapshot the next Ready installs: a second, older snapshot
/// that arrives before that Ready is refused and leaves the pending one in place.
#[test]
fn an_older_snapshot_does_not_displace_one_waiting_to_be_installed() {
    use ringd::raft::pb::{ConfState, Snapshot, SnapshotMetadata};
    let snapshot = |index: u64| Message {
        msg_type: MessageType::MsgSnap as i32,
        from: 1,
        to: 2,
        term: 2,
        snapshot: Some(Snapshot {
            data: Vec::new(),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(ConfState { voters: vec![1, 2, 3], ..Default::default() }),
                index,
                term: 2,
            }),
        }),
        ..Default::default()
    };
    let mut follower = ringd::raft::Raft::new(config(2), Default::default(), Box::new(ringd::raft::SplitMix64::new(2)));
    assert_eq!(follower.snapshot_to_install_index(), None);
    follower.step(snapshot(10));
    assert_eq!(follower.snapshot_to_install_index(), Some(10), "a snapshot beyond the log is taken");
    follower.step(snapshot(5));
    assert_eq!(follower.snapshot_to_install_index(), Some(10), "an older one is refused");
    follower.step(snapshot(20));
    assert_eq!(follower.snapshot_to_install_index(), Some(20), "a newer one replaces it");
    let ready = follower.ready();
    assert_eq!(ready.snapshot.and_then(|snapshot| snapshot.metadata).map(|metadata| metadata.index), Some(20));
    assert_eq!(follower.snapshot_to_install_index(), None, "handed over");
}

/// Starts member `id` and has leader 1 add it as a learner, until the learner knows it is one.
fn add_learner(network: &mut Network, id: u64) {
    let raft = ringd::raft::Raft::new(config(id), Default::default(), Box::new(ringd::raft::SplitMix64::new(id)));
    network.members.insert(id, raft);
    network.member(1).propose_conf_change(change(ConfChangeType::ConfChangeAddLearnerNode, id)).unwrap();
    network.stabilize();
    network.tick(1, 1);
    network.stabilize();
    assert_eq!(network.member(id).conf_state().learners, vec![id]);
}

#[test]
fn learner_replicates_but_never_votes_campaigns_or_counts() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    add_learner(&mut network, 4);
    let index = network.propose(1, b"to the learner too");
    assert_eq!(network.committed(4), index);
    // It never campaigns.
    let term = network.member(4).term();
    network.isolate(4);
    network.tick(4, 100);
    assert_eq!((network.role(4), network.member(4).term()), (Role::Follower, term));
    network.heal();
    // Its acknowledgement does not count: with 2 and 3 gone nothing commits.
    network.isolate(2);
    network.isolate(3);
    for (a, b) in [(1, 4), (4, 1)] {
        network.cut.remove(&(a, b));
    }
    let committed = network.committed(1);
    network.member(1).propose(b"needs a voter".to_vec()).unwrap();
    network.stabilize();
    assert_eq!(network.committed(1), committed);
    assert!(network.member(1).progress(4).unwrap().matched > committed);
    // Candidates do not ask it for votes.
    network.heal();
    network.campaign(2);
    assert!(!network.delivered.iter().any(|m| m.msg_type == MessageType::MsgVote as i32 && m.to == 4));
}

#[test]
fn read_index_serves_many_reads_with_one_heartbeat_round() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    network.propose(1, b"x");
    let heartbeats_before = network.delivered_of(MessageType::MsgHeartbeat).len();
    for read in 0..5u8 {
        network.member(1).read_index(vec![read]).unwrap();
    }
    network.member(2).read_index(vec![9]).unwrap();
    network.stabilize();
    let heartbeats = network.delivered_of(MessageType::MsgHeartbeat).len() - heartbeats_before;
    assert!(heartbeats <= 4, "{} heartbeats for 6 reads", heartbeats);
    let committed = network.committed(1);
    let reads = &network.read_states[&1];
    assert_eq!(reads.len(), 5);
    assert!(reads.iter().all(|(index, _)| *index == committed));
    assert_eq!(network.read_states[&2], vec![(committed, vec![9])]);
}

#[test]
fn read_index_waits_for_a_quorum_and_for_a_commit_in_the_leaders_term() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    network.isolate(1);
    network.member(1).read_index(b"r".to_vec()).unwrap();
    network.stabilize();
    assert!(network.read_states.get(&1).is_none_or(|reads| reads.is_empty()), "no quorum, no read");
    // A new leader that has not yet committed in its term holds reads back.
    let mut fresh = Network::new(&[1, 2, 3]);
    fresh.dropped_types.insert(MessageType::MsgAppResp as i32);
    fresh.campaign(1);
    fresh.member(1).read_index(b"r".to_vec()).unwrap();
    fresh.stabilize();
    assert!(fresh.read_states.get(&1).is_none_or(|reads| reads.is_empty()));
    fresh.dropped_types.clear();
    fresh.tick(1, 1);
    fresh.stabilize();
    fresh.tick(1, 1);
    fresh.stabilize();
    assert_eq!(fresh.read_states[&1].len(), 1);
}

/// With three voters, the leader and a follower that asks are a quorum: the follower's
/// MsgReadIndex is its answer, so the leader answers at once, without a heartbeat round, and
/// tells the follower what is committed (bounded by what it holds), as a heartbeat would.
#[test]
fn a_followers_read_in_three_voters_needs_no_heartbeat_round() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    network.propose(1, b"x");
    // y reaches both followers and commits on the leader, but the appends that would tell
    // the followers so are lost.
    let index = network.member(1).propose(b"y".to_vec()).unwrap();
    network.settle_all();
    for _ in 0..4 {
        network.deliver_one();
    }
    assert_eq!(network.committed(1), index);
    let lost = network.take_queue();
    assert!(lost.iter().all(|message| message.msg_type == MessageType::MsgApp as i32), "{lost:?}");
    assert!(network.committed(2) < index && network.last_index(2) == index);
    let heartbeats_before = network.delivered_of(MessageType::MsgHeartbeat).len();
    network.member(2).read_index(b"r".to_vec()).unwrap();
    network.stabilize();
    assert_eq!(network.delivered_of(MessageType::MsgHeartbeat).len(), heartbeats_before);
    assert_eq!(network.read_states[&2], vec![(index, b"r".to_vec())]);
    assert_eq!(network.committed(2), index, "the answer carries the commit");
    // A read that reaches the leader still needs a follower's answer to a round.
    network.member(1).read_index(b"l".to_vec()).unwrap();
    network.stabilize();
    assert_eq!(network.delivered_of(MessageType::MsgHeartbeat).len(), heartbeats_before + 2);
    assert_eq!(network.read_states[&1], vec![(index, b"l".to_vec())]);
}

/// With five voters, the leader and the asker are not a quorum: the read waits for a round,
/// and a learner's message never counts.
#[test]
fn a_followers_read_waits_for_a_round_when_the_two_are_no_quorum() {
    let mut network = Network::new(&[1, 2, 3, 4, 5]);
    network.campaign(1);
    network.propose(1, b"x");
    for other in [3, 4, 5] {
        network.cut.insert((1, other));
        network.cut.insert((other, 1));
    }
    answered_only_once_healed(&mut network, 2);

    let mut with_learner = Network::new(&[1, 2]);
    with_learner.campaign(1);
    add_learner(&mut with_learner, 3);
    with_learner.isolate(2);
    answered_only_once_healed(&mut with_learner, 3);
}

/// `asker` asks leader 1 for a read while the network's cuts stand: no answer. Once healed,
/// the next heartbeat round answers it at the leader's commit index.
fn answered_only_once_healed(network: &mut Network, asker: u64) {
    network.member(asker).read_index(b"r".to_vec()).unwrap();
    network.stabilize();
    assert!(network.read_states.get(&asker).is_none_or(|reads| reads.is_empty()), "answered without a quorum");
    network.heal();
    network.tick(1, 1);
    network.stabilize();
    assert_eq!(network.read_states[&asker], vec![(network.committed(1), b"r".to_vec())]);
}

#[test]
fn leader_transfer_hands_over_with_timeout_now() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    network.propose(1, b"x");
    let term = network.member(1).term();
    network.member(1).transfer_leader(3);
    network.stabilize();
    assert_eq!(network.role(3), Role::Leader);
    assert_eq!(network.member(3).term(), term + 1);
    assert!(!network.delivered_of(MessageType::MsgTimeoutNow).is_empty());
}

#[test]
fn leader_transfer_to_a_lagging_member_catches_it_up_first_and_blocks_proposals() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    network.isolate(3);
    network.propose(1, b"x");
    network.member(1).transfer_leader(3);
    assert_eq!(network.member(1).propose(b"y".to_vec()), Err(ProposeError::TransferInProgress));
    network.heal();
    for _ in 0..4 {
        network.tick(1, 1);
        network.stabilize();
    }
    assert_eq!(network.role(3), Role::Leader);
}

#[test]
fn membership_add_learner_promote_and_remove_the_leader() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    network
        .members
        .insert(4, ringd::raft::Raft::new(config(4), Default::default(), Box::new(ringd::raft::SplitMix64::new(4))));
    network.member(1).propose_conf_change(change(ConfChangeType::ConfChangeAddLearnerNode, 4)).unwrap();
    assert_eq!(
        network.member(1).propose_conf_change(change(ConfChangeType::ConfChangeAddNode, 4)),
        Err(ProposeError::ConfChangePending),
        "one change at a time"
    );
    network.stabilize();
    network.tick(1, 1);
    network.stabilize();
    network.member(1).propose_conf_change(change(ConfChangeType::ConfChangeAddNode, 4)).unwrap();
    network.stabilize();
    for id in 1..=4 {
        assert_eq!(network.member(id).conf_state().voters, vec![1, 2, 3, 4], "member {}", id);
    }
    network.member(1).propose_conf_change(change(ConfChangeType::ConfChangeRemoveNode, 1)).unwrap();
    network.stabilize();
    assert_eq!(network.role(1), Role::Follower, "a removed leader steps down once the change commits");
    assert!(!network.member(1).promotable());
    network.tick_all(30);
    let leader = network.leader().unwrap();
    assert_ne!(leader, 1);
    assert_eq!(network.member(leader).conf_state().voters, vec![2, 3, 4]);
    network.propose(leader, b"after removal");
}

#[test]
fn ready_contract_followers_answer_only_after_persisting_leaders_send_at_once() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    let leader = network.member(1);
    leader.propose(b"x".to_vec()).unwrap();
    let ready = leader.ready();
    assert!(!ready.entries.is_empty());
    assert!(ready.messages.iter().all(|m| m.msg_type == MessageType::MsgApp as i32));
    assert_eq!(ready.messages.len(), 2, "the leader replicates before its own write");
    assert!(ready.messages_after_persist.is_empty());
    let append = ready.messages[0].clone();
    let number = ready.number;
    let committed = leader.log().committed;
    let follower_id = append.to;
    let follower = network.member(follower_id);
    follower.step(append);
    let follower_ready = follower.ready();
    assert!(follower_ready.messages.is_empty());
    assert_eq!(follower_ready.messages_after_persist.len(), 1);
    let ack = follower_ready.messages_after_persist[0].clone();
    // With three voters one follower's ack plus the leader's own durable copy make the
    // majority: nothing commits until the leader reports its write.
    let leader = network.member(1);
    leader.step(ack);
    assert_eq!(leader.log().committed, committed, "the leader's copy is not on disk yet");
    leader.on_persist_ready(number);
    assert_eq!(leader.log().committed, committed + 1);
}

#[test]
fn leader_counts_itself_only_once_its_entries_are_on_disk() {
    let mut network = Network::new(&[1]);
    network.campaign(1);
    let leader = network.member(1);
    let index = leader.propose(b"solo".to_vec()).unwrap();
    let ready = leader.ready();
    assert!(leader.log().committed < index, "not durable yet");
    leader.on_persist_ready(ready.number);
    assert_eq!(leader.log().committed, index);
    let next = leader.ready();
    assert_eq!(next.committed_entries.last().unwrap().index, index);
}

#[test]
fn proposals_beyond_the_uncommitted_bound_are_refused_until_commits_catch_up() {
    let mut network = Network::with_config(&[1, 2, 3], |id| {
        let mut config = config(id);
        config.uncommitted_size_bytes_max = 100;
        config
    });
    network.campaign(1);
    network.isolate(1);
    network.member(1).propose(vec![0; 60]).unwrap();
    assert_eq!(network.member(1).propose(vec![0; 60]), Err(ProposeError::TooManyUncommitted));
    network.heal();
    for _ in 0..4 {
        network.tick(1, 1);
        network.stabilize();
    }
    network.member(1).propose(vec![0; 60]).expect("room again after the commit");
}

#[test]
fn append_overtaken_by_a_later_commit_still_delivers_its_new_entries() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    network.propose(1, b"a");
    let committed = network.committed(2);
    let term = network.member(2).term();
    // Sent before the commit index moved past its start, delivered after.
    let late = Message {
        msg_type: MessageType::MsgApp as i32,
        from: 1,
        to: 2,
        term,
        index: committed - 1,
        log_term: network.member(2).log().term(committed - 1).unwrap(),
        entries: vec![
            network.member(2).log().entry(committed).unwrap().clone(),
            ringd::raft::pb::Entry { term, index: committed + 1, entry_type: 0, data: bytes::Bytes::from_static(b"b") },
        ],
        commit: committed,
        ..Default::default()
    };
    network.member(2).step(late);
    let ack = network.take_queue().into_iter().find(|m| m.msg_type == MessageType::MsgAppResp as i32).unwrap();
    assert_eq!(ack.index, committed + 1, "the new entry is appended and acknowledged");
    assert_eq!(network.last_index(2), committed + 1);
}

#[test]
fn lost_append_with_a_window_of_one_is_resent_after_a_few_heartbeats() {
    let mut network = Network::with_config(&[1, 2, 3], |id| {
        let mut config = config(id);
        config.inflight_messages_max = 1;
        config
    });
    network.campaign(1);
    network.propose(1, b"a");
    network.dropped_types.insert(MessageType::MsgApp as i32);
    network.member(1).propose(b"lost".to_vec()).unwrap();
    network.stabilize();
    network.dropped_types.clear();
    for _ in 0..5 {
        network.tick(1, 1);
        network.stabilize();
    }
    assert_eq!(network.committed(2), network.last_index(1));
    assert_eq!(network.committed(1), network.last_index(1));
}
