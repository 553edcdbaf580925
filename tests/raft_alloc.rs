//! Proves that the steady-state path of `step()` for appends (follower side) and their
//! acknowledgements (leader side) makes no heap allocation, with a counting allocator.

#[path = "simulation/harness.rs"]
mod harness;

use harness::Network;
use ringd::raft::pb::{Entry, Message, MessageType};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

const ENTRIES_PER_APPEND: u64 = 64;
const ROUNDS: u64 = 50;

#[test]
fn steady_state_append_and_ack_do_not_allocate() {
    let mut network = Network::new(&[1, 2, 3]);
    network.campaign(1);
    network.propose(1, b"warm up");
    for id in 1..=3 {
        network.member(id).reserve_log_capacity(((ROUNDS + 2) * ENTRIES_PER_APPEND) as usize);
    }
    let term = network.member(1).term();
    let mut follower_allocations = 0;
    let mut leader_allocations = 0;
    for round in 0..ROUNDS {
        let last = network.last_index(2);
        let committed = network.committed(1);
        // Built before measuring: in a server the transport decodes it into this buffer.
        let entries: Vec<Entry> = (1..=ENTRIES_PER_APPEND)
            .map(|offset| Entry { term, index: last + offset, entry_type: 0, data: vec![round as u8; 16].into() })
            .collect();
        let append = Message {
            msg_type: MessageType::MsgApp as i32,
            from: 1,
            to: 2,
            term,
            index: last,
            log_term: term,
            entries,
            commit: committed,
            ..Default::default()
        };
        let before = allocations();
        network.member(2).step(append);
        follower_allocations += allocations() - before;
        assert_eq!(network.last_index(2), last + ENTRIES_PER_APPEND, "the append was taken");
        // Keep the leader's log in step with what member 2 now holds (as if it had proposed it).
        for offset in 1..=ENTRIES_PER_APPEND {
            network.member(1).propose(vec![round as u8; 16]).unwrap();
            let _ = offset;
        }
        let leader_ready = network.member(1).ready();
        network.member(1).on_persist_ready(leader_ready.number);
        let follower_ready = network.member(2).ready();
        network.member(2).on_persist_ready(follower_ready.number);
        let ack = follower_ready
            .messages_after_persist
            .into_iter()
            .find(|m| m.msg_type == MessageType::MsgAppResp as i32)
            .unwrap();
        assert!(!ack.reject, "round {}", round);
        let before = allocations();
        network.member(1).step(ack);
        leader_allocations += allocations() - before;
        assert_eq!(network.committed(1), last + ENTRIES_PER_APPEND, "the ack commits the batch");
        network.member(1).ready();
        network.member(2).ready();
    }
    assert_eq!(follower_allocations, 0, "follower step(MsgApp) allocated");
    assert_eq!(leader_allocations, 0, "leader step(MsgAppResp) allocated");
}
