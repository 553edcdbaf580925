//! ReadIndex (Raft thesis §6.4): linearizable reads without writing to the log.
//!
//! A read that reaches the leader waits in `open`. When the leader next builds a Ready (and
//! once it has committed an entry of its own term), every open read joins one new *round*:
//! the read index is the commit index at that moment and the leader broadcasts a heartbeat
//! whose context is the round number. When a quorum of voters has answered a round, that
//! round and every older one are confirmed: the leader was still leader after all of their
//! reads arrived, so their read indexes cover every write acknowledged before they arrived.
//!
//! A read that a follower forwards needs no round when the leader and that follower are a
//! quorum (3 voters): its MsgReadIndex is that follower's answer (`asker_completes_quorum`).
//!
//! Worked example: reads A and B arrive, Ready starts round 7 (index 40); read C arrives and
//! Ready starts round 8 (index 41); the answers to round 7 are lost, round 8 gets a quorum:
//! A and B are released at 40 and C at 41. Heartbeats always carry the newest round so a
//! lost round is retried without new reads.

use std::collections::{BTreeSet, VecDeque};

/// A linearizable read whose index is known: serve it once `applied >= index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    pub index: u64,
    pub request_context: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ReadRequest {
    pub context: Vec<u8>,
    /// The member that asked (the leader itself, or a follower that forwarded it).
    pub from: u64,
}

#[derive(Debug)]
struct Round {
    number: u64,
    index: u64,
    requests: Vec<ReadRequest>,
    acks: BTreeSet<u64>,
}

#[derive(Debug, Default)]
pub struct ReadRounds {
    open: Vec<ReadRequest>,
    sent: VecDeque<Round>,
    next_round: u64,
}

/// Bound on reads waiting for a round, and on rounds in flight.
pub const READS_OPEN_MAX: usize = 64 * 1024;
pub const ROUNDS_INFLIGHT_MAX: usize = 256;

impl ReadRounds {
    pub fn push(&mut self, request: ReadRequest) -> bool {
        if self.open.len() >= READS_OPEN_MAX {
            return false;
        }
        self.open.push(request);
        true
    }

    pub fn has_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// Starts a round for all open reads at read index `index`; returns its number.
    pub fn start_round(&mut self, index: u64, self_id: u64) -> u64 {
        assert!(!self.open.is_empty());
        if self.sent.len() >= ROUNDS_INFLIGHT_MAX {
            self.sent.pop_front();
        }
        self.next_round += 1;
        let mut acks = BTreeSet::new();
        acks.insert(self_id);
        let requests = std::mem::take(&mut self.open);
        self.sent.push_back(Round { number: self.next_round, index, requests, acks });
        self.next_round
    }

    pub fn newest_round(&self) -> Option<u64> {
        self.sent.back().map(|round| round.number)
    }

    /// Records `from`'s answer to `round`; returns the acks of that round, if still pending.
    pub fn ack(&mut self, round: u64, from: u64) -> Option<&BTreeSet<u64>> {
        let found = self.sent.iter_mut().find(|pending| pending.number == round)?;
        found.acks.insert(from);
        Some(&found.acks)
    }

    /// Removes `round` and all older rounds; returns their requests with their indexes.
    pub fn release_through(&mut self, round: u64, out: &mut Vec<(u64, ReadRequest)>) {
        while let Some(front) = self.sent.front() {
            if front.number > round {
                break;
            }
            let done = self.sent.pop_front().expect("front exists");
            for request in done.requests {
                out.push((done.index, request));
            }
        }
    }

    /// Drops every pending read (leadership lost: their askers time out and retry).
    pub fn clear(&mut self) {
        self.open.clear();
        self.sent.clear();
    }
}

pub fn encode_round(round: u64) -> Vec<u8> {
    round.to_le_bytes().to_vec()
}

pub fn decode_round(context: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = context.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}
