//! A small synchronous network of Raft members for unit tests, in the spirit of etcd's
//! `network` test helper: messages are queued and delivered in order, Readies are
//! persisted at once, and links can be cut.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ringd::raft::pb::{Entry, HardState, Message, MessageType};
use ringd::raft::{Config, Raft, RestartState, Role, SplitMix64};

pub struct Network {
    pub members: BTreeMap<u64, Raft>,
    pub queue: VecDeque<Message>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(u64, u64)>,
    /// Message types dropped everywhere.
    pub dropped_types: BTreeSet<i32>,
    /// Every message that was delivered, for assertions.
    pub delivered: Vec<Message>,
    /// Entries each member applied, in order.
    pub applied: BTreeMap<u64, Vec<Entry>>,
    pub read_states: BTreeMap<u64, Vec<(u64, Vec<u8>)>>,
}

pub fn config(id: u64) -> Config {
    let mut config = Config::new(id);
    config.pre_vote = false;
    config.check_quorum = false;
    config
}

pub fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, data: format!("{}/{}", index, term).into_bytes().into(), ..Default::default() }
}

/// A member restarting with `terms[i]` as the term of entry bootstrap_len + i + 1 (after
/// the bootstrap configuration entries), at `term`.
pub fn member_with_log(id: u64, voters: &[u64], terms: &[u64], term: u64, config: Config) -> Raft {
    let mut restart = RestartState::bootstrap(voters);
    let base = restart.entries.len() as u64;
    for (offset, entry_term) in terms.iter().enumerate() {
        restart.entries.push(entry(base + offset as u64 + 1, *entry_term));
    }
    restart.hard_state = HardState { term: term.max(1), vote: 0, commit: base };
    let _ = id;
    Raft::new(config, restart, Box::new(SplitMix64::new(id * 7919)))
}

impl Network {
    pub fn new(voters: &[u64]) -> Network {
        Network::with_config(voters, config)
    }

    pub fn with_config(voters: &[u64], make_config: impl Fn(u64) -> Config) -> Network {
        let mut network = Network::empty();
        for id in voters {
            let raft = Raft::new(make_config(*id), RestartState::bootstrap(voters), Box::new(SplitMix64::new(*id)));
            network.members.insert(*id, raft);
        }
        network.settle_all();
        network
    }

    pub fn empty() -> Network {
        Network {
            members: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            dropped_types: BTreeSet::new(),
            delivered: Vec::new(),
            applied: BTreeMap::new(),
            read_states: BTreeMap::new(),
        }
    }

    pub fn member(&mut self, id: u64) -> &mut Raft {
        self.members.get_mut(&id).expect("member exists")
    }

    pub fn role(&self, id: u64) -> Role {
        self.members[&id].role()
    }

    pub fn isolate(&mut self, id: u64) {
        for other in self.members.keys().copied().collect::<Vec<_>>() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Handles every pending Ready of member `id`: persist at once, queue all messages.
    pub fn settle(&mut self, id: u64) {
        let Some(raft) = self.members.get_mut(&id) else { return };
        while raft.has_ready() {
            let ready = raft.ready();
            raft.on_persist_ready(ready.number);
            self.queue.extend(ready.messages);
            self.queue.extend(ready.messages_after_persist);
            self.applied.entry(id).or_default().extend(ready.committed_entries);
            let reads = self.read_states.entry(id).or_default();
            reads.extend(ready.read_states.into_iter().map(|read| (read.index, read.request_context)));
        }
    }

    pub fn settle_all(&mut self) {
        for id in self.members.keys().copied().collect::<Vec<_>>() {
            self.settle(id);
        }
    }

    /// Delivers one message (honouring cuts); returns false when the queue is empty.
    pub fn deliver_one(&mut self) -> bool {
        let Some(message) = self.queue.pop_front() else { return false };
        if self.cut.contains(&(message.from, message.to)) || self.dropped_types.contains(&message.msg_type) {
            return true;
        }
        self.delivered.push(message.clone());
        if let Some(raft) = self.members.get_mut(&message.to) {
            raft.step(message.clone());
            raft.check();
            self.settle(message.to);
        }
        true
    }

    /// Runs until no member has anything to do.
    pub fn stabilize(&mut self) {
        self.settle_all();
        let mut budget = 100_000;
        while self.deliver_one() {
            budget -= 1;
            assert!(budget > 0, "network does not stabilize");
        }
    }

    /// Takes the queued messages without delivering them.
    pub fn take_queue(&mut self) -> Vec<Message> {
        self.settle_all();
        self.queue.drain(..).collect()
    }

    pub fn send(&mut self, message: Message) {
        self.queue.push_back(message);
        self.stabilize();
    }

    pub fn campaign(&mut self, id: u64) {
        self.member(id).campaign();
        self.stabilize();
    }

    pub fn tick(&mut self, id: u64, ticks: u32) {
        for _ in 0..ticks {
            self.member(id).tick();
            self.settle(id);
        }
    }

    pub fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            for id in self.members.keys().copied().collect::<Vec<_>>() {
                self.member(id).tick();
            }
            self.stabilize();
        }
    }

    pub fn propose(&mut self, id: u64, data: &[u8]) -> u64 {
        let index = self.member(id).propose(data.to_vec()).expect("proposal accepted");
        self.stabilize();
        index
    }

    pub fn leader(&self) -> Option<u64> {
        self.members
            .iter()
            .filter(|(_, raft)| raft.role() == Role::Leader)
            .map(|(id, raft)| (raft.term(), *id))
            .max()
            .map(|(_, id)| id)
    }

    pub fn committed(&self, id: u64) -> u64 {
        self.members[&id].log().committed
    }

    pub fn last_index(&self, id: u64) -> u64 {
        self.members[&id].log().last_index()
    }

    pub fn delivered_of(&self, msg_type: MessageType) -> Vec<&Message> {
        self.delivered.iter().filter(|message| message.msg_type == msg_type as i32).collect()
    }
}
