//! A deterministic cluster of Raft members running a replicated KV store, driven by one
//! seeded generator: simulated network (drop, delay, duplicate, reorder, partition), disks
//! that lose unpersisted writes on crash, clients that write and read linearizably, and
//! invariant checks after every step.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};

use ringd::raft::pb::{ConfChange, ConfChangeType, Entry, EntryType, HardState, Message, MessageType, Snapshot};
use ringd::raft::{Config, Raft, RandomSource, Ready, RestartState, Role, SplitMix64};
use ringd::testing::linearizability::{KvInput, KvOutput, Operation};

pub struct SimRng(SplitMix64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(SplitMix64::new(seed))
    }
    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [0, bound).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next() % bound
    }
    pub fn range(&mut self, low: u64, high_inclusive: u64) -> u64 {
        low + self.below(high_inclusive - low + 1)
    }
    /// True with probability `per_million` / 1e6.
    pub fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

/// Knobs drawn per seed so that different seeds stress different mixes.
#[derive(Debug, Clone)]
pub struct Options {
    pub voters_initial: u64,
    pub members_max: u64,
    pub duration_ms: u64,
    pub tick_ms: u64,
    pub delay_ms_max: u64,
    pub drop_per_million: u64,
    pub duplicate_per_million: u64,
    pub crash_per_million: u64,
    pub partition_per_million: u64,
    pub conf_change_per_million: u64,
    pub transfer_per_million: u64,
    pub client_op_per_million: u64,
    pub persist_per_million: u64,
    pub snapshot_every_entries: u64,
    pub clients: u64,
    pub keys: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub inflight_max: usize,
    pub append_bytes_max: u64,
    pub uncommitted_bytes_max: u64,
}

impl Options {
    pub fn random(rng: &mut SimRng) -> Options {
        let voters_initial = if rng.chance(500_000) { 3 } else { 5 };
        let options = Options {
            voters_initial,
            members_max: voters_initial + 2,
            duration_ms: 20_000,
            tick_ms: 10,
            delay_ms_max: rng.range(1, 40),
            drop_per_million: rng.range(0, 80_000),
            duplicate_per_million: rng.range(0, 40_000),
            crash_per_million: rng.range(0, 6_000),
            partition_per_million: rng.range(0, 2_000),
            conf_change_per_million: rng.range(0, 800),
            transfer_per_million: rng.range(0, 400),
            client_op_per_million: rng.range(20_000, 120_000),
            persist_per_million: rng.range(20_000, 400_000),
            snapshot_every_entries: rng.range(5, 60),
            clients: rng.range(2, 6),
            keys: rng.range(1, 4),
            pre_vote: rng.chance(750_000),
            check_quorum: rng.chance(750_000),
            inflight_max: rng.range(1, 8) as usize,
            append_bytes_max: rng.range(30, 400),
            uncommitted_bytes_max: rng.range(24, 2_000),
        };
        options.swarm(rng)
    }

    /// Swarm testing: each seed switches whole fault classes off at random, so that some
    /// runs explore long fault-free stretches of one kind and dense faults of another.
    fn swarm(mut self, rng: &mut SimRng) -> Options {
        let off = |rng: &mut SimRng, value: &mut u64| {
            if rng.chance(300_000) {
                *value = 0;
            }
        };
        off(rng, &mut self.drop_per_million);
        off(rng, &mut self.duplicate_per_million);
        off(rng, &mut self.crash_per_million);
        off(rng, &mut self.partition_per_million);
        off(rng, &mut self.conf_change_per_million);
        off(rng, &mut self.transfer_per_million);
        self
    }
}

#[derive(Debug, Default, Clone)]
struct Disk {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

impl Disk {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.index)
    }

    fn write(&mut self, write: &PendingWrite) {
        if let Some(snapshot) = &write.snapshot {
            self.snapshot = Some(snapshot.clone());
            self.entries.clear();
        }
        if let Some(first) = write.entries.first() {
            self.entries.retain(|entry| entry.index < first.index);
            let expected = self.entries.last().map_or(self.snapshot_index() + 1, |entry| entry.index + 1);
            assert_eq!(first.index, expected, "disk write leaves a gap");
            self.entries.extend(write.entries.iter().cloned());
        }
        if let Some(hard_state) = write.hard_state {
            self.hard_state = hard_state;
        }
        let last = self.entries.last().map_or(self.snapshot_index(), |entry| entry.index);
        assert!(self.hard_state.commit <= last, "disk commit {} beyond last entry {}", self.hard_state.commit, last);
    }
}

struct PendingWrite {
    number: u64,
    hard_state: Option<HardState>,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
    messages_after_persist: Vec<Message>,
}

struct Node {
    id: u64,
    raft: Option<Raft>,
    disk: Disk,
    pending_writes: VecDeque<PendingWrite>,
    kv: BTreeMap<u64, u64>,
    applied_index: u64,
    applied_since_snapshot: u64,
    /// op id -> client waiting for a write proposed through this member.
    waiting_writes: HashMap<u64, usize>,
    /// op id -> client waiting for a read through this member.
    waiting_reads: HashMap<u64, usize>,
    /// Reads whose index is known: (read index, op id).
    reads_ready: Vec<(u64, u64)>,
    restart_at_ms: Option<u64>,
    /// Commit index up to which this member's committed entries were checked.
    commit_checked: u64,
    traced_role: Option<(Role, u64)>,
}

#[derive(Clone)]
struct ClientOp {
    op_id: u64,
    node: u64,
    input: KvInput,
    call_ms: u64,
    deadline_ms: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    deliver_at_ms: u64,
    sequence: u64,
    from: u64,
    to: u64,
}

/// What the invariant checks remember about the whole run.
#[derive(Default)]
struct Oracle {
    leader_of_term: BTreeMap<u64, u64>,
    /// index -> (term, data hash, lowest term of a member that saw it committed).
    committed: BTreeMap<u64, (u64, u64, u64)>,
    /// (index, term) -> (data hash, term of the previous entry): log matching.
    entries_seen: HashMap<(u64, u64), (u64, u64)>,
    applied: HashMap<u64, (u64, u64)>,
}

pub struct Cluster {
    pub options: Options,
    pub rng: SimRng,
    pub now_ms: u64,
    nodes: Vec<Node>,
    network: BinaryHeap<Reverse<InFlight>>,
    network_payloads: HashMap<u64, Message>,
    next_sequence: u64,
    partition: Option<(BTreeSet<u64>, u64)>,
    clients: Vec<Option<ClientOp>>,
    next_op_id: u64,
    pub history: Vec<Operation>,
    oracle: Oracle,
    pub stats: Stats,
    pub trace: bool,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub writes_ok: u64,
    pub reads_ok: u64,
    pub ops_unknown: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub conf_changes: u64,
    pub snapshots_sent: u64,
    pub leaders_elected: u64,
    pub messages: u64,
}

fn hash(data: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in data {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn encode_write(op_id: u64, key: u64, value: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(24);
    data.extend_from_slice(&op_id.to_le_bytes());
    data.extend_from_slice(&key.to_le_bytes());
    data.extend_from_slice(&value.to_le_bytes());
    data
}

fn decode_u64s(data: &[u8]) -> Vec<u64> {
    data.chunks_exact(8).map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap())).collect()
}

impl Cluster {
    pub fn new(seed: u64) -> Cluster {
        let mut rng = SimRng::new(seed);
        let options = Options::random(&mut rng);
        let founders: Vec<u64> = (1..=options.voters_initial).collect();
        let mut cluster = Cluster {
            clients: vec![None; options.clients as usize],
            options,
            rng,
            now_ms: 0,
            nodes: Vec::new(),
            network: BinaryHeap::new(),
            network_payloads: HashMap::new(),
            next_sequence: 0,
            partition: None,
            next_op_id: 1,
            history: Vec::new(),
            oracle: Oracle::default(),
            stats: Stats::default(),
            trace: std::env::var("SIM_TRACE").is_ok(),
        };
        for id in 1..=cluster.options.members_max {
            let mut disk = Disk::default();
            if id <= cluster.options.voters_initial {
                let bootstrap = RestartState::bootstrap(&founders);
                disk.hard_state = bootstrap.hard_state;
                disk.entries = bootstrap.entries;
            }
            let node = Node {
                id,
                raft: None,
                disk,
                pending_writes: VecDeque::new(),
                kv: BTreeMap::new(),
                applied_index: 0,
                applied_since_snapshot: 0,
                waiting_writes: HashMap::new(),
                waiting_reads: HashMap::new(),
                reads_ready: Vec::new(),
                restart_at_ms: None,
                commit_checked: 0,
                traced_role: None,
            };
            cluster.nodes.push(node);
            cluster.start_node(id);
        }
        cluster
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn raft_config(&self, id: u64) -> Config {
        let mut config = Config::new(id);
        config.pre_vote = self.options.pre_vote;
        config.check_quorum = self.options.check_quorum;
        config.inflight_messages_max = self.options.inflight_max;
        config.append_size_bytes_max = self.options.append_bytes_max;
        config.committed_size_bytes_max = 512;
        config.uncommitted_size_bytes_max = self.options.uncommitted_bytes_max;
        config
    }

    /// (Re)starts member `id` from what its disk holds.
    fn start_node(&mut self, id: u64) {
        let config = self.raft_config(id);
        let seed = self.rng.next();
        let node = self.node(id);
        let restart = RestartState {
            hard_state: node.disk.hard_state,
            snapshot: node.disk.snapshot.clone(),
            entries: node.disk.entries.clone(),
        };
        node.kv.clear();
        node.applied_index = 0;
        if let Some(snapshot) = &node.disk.snapshot {
            let (kv, index) = decode_kv(&snapshot.data);
            node.kv = kv;
            node.applied_index = index;
        }
        node.applied_since_snapshot = 0;
        node.commit_checked = node.applied_index;
        node.raft = Some(Raft::new(config, restart, Box::new(SplitMix64::new(seed))));
        node.restart_at_ms = None;
    }

    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|node| node.raft.is_some()).map(|node| node.id).collect()
    }

    fn connected(&self, from: u64, to: u64) -> bool {
        match &self.partition {
            Some((side, _)) => side.contains(&from) == side.contains(&to),
            None => true,
        }
    }

    fn send(&mut self, message: Message) {
        self.stats.messages += 1;
        if self.trace {
            eprintln!(
                "{} send {:?} {}->{} t{} i{} n{}",
                self.now_ms,
                MessageType::try_from(message.msg_type).unwrap(),
                message.from,
                message.to,
                message.term,
                message.index,
                message.entries.len()
            );
        }
        if !self.connected(message.from, message.to) || self.rng.chance(self.options.drop_per_million) {
            return;
        }
        let copies = if self.rng.chance(self.options.duplicate_per_million) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.rng.range(1, self.options.delay_ms_max);
            self.next_sequence += 1;
            let sequence = self.next_sequence;
            self.network.push(Reverse(InFlight {
                deliver_at_ms: self.now_ms + delay,
                sequence,
                from: message.from,
                to: message.to,
            }));
            self.network_payloads.insert(sequence, message.clone());
        }
    }

    fn deliver_due(&mut self) {
        while let Some(Reverse(head)) = self.network.peek() {
            if head.deliver_at_ms > self.now_ms {
                break;
            }
            let Reverse(flight) = self.network.pop().unwrap();
            let message = self.network_payloads.remove(&flight.sequence).unwrap();
            if !self.connected(flight.from, flight.to) {
                continue;
            }
            if message.msg_type == MessageType::MsgSnap as i32 {
                self.stats.snapshots_sent += 1;
            }
            if self.trace {
                eprintln!(
                    "{} deliver {:?} {}->{} t{} i{} lt{} c{} n{} rej{}",
                    self.now_ms,
                    MessageType::try_from(message.msg_type).unwrap(),
                    message.from,
                    message.to,
                    message.term,
                    message.index,
                    message.log_term,
                    message.commit,
                    message.entries.len(),
                    message.reject
                );
            }
            if let Some(raft) = self.node(flight.to).raft.as_mut() {
                raft.step(message);
            }
        }
    }

    /// Drains one member's Ready: send, queue the disk write, apply.
    fn process_ready(&mut self, id: u64) {
        for _ in 0..4 {
            let Some(raft) = self.node(id).raft.as_mut() else { return };
            if !raft.has_ready() {
                return;
            }
            let mut ready = raft.ready();
            for message in std::mem::take(&mut ready.messages) {
                self.send(message);
            }
            let persist_now = !ready.must_persist() && self.node(id).pending_writes.is_empty();
            let write = PendingWrite {
                number: ready.number,
                hard_state: ready.hard_state,
                snapshot: ready.snapshot.clone(),
                entries: std::mem::take(&mut ready.entries),
                messages_after_persist: std::mem::take(&mut ready.messages_after_persist),
            };
            self.node(id).pending_writes.push_back(write);
            if persist_now {
                self.complete_write(id);
            }
            self.apply_ready(id, ready);
        }
    }

    fn complete_write(&mut self, id: u64) {
        let node = self.node(id);
        let Some(write) = node.pending_writes.pop_front() else { return };
        node.disk.write(&write);
        node.raft.as_mut().unwrap().on_persist_ready(write.number);
        for message in write.messages_after_persist {
            self.send(message);
        }
    }

    fn apply_ready(&mut self, id: u64, ready: Ready) {
        if let Some(snapshot) = &ready.snapshot {
            let (kv, index) = decode_kv(&snapshot.data);
            let node = self.node(id);
            node.kv = kv;
            node.applied_index = index;
        }
        for entry in &ready.committed_entries {
            self.apply_entry(id, entry);
        }
        for read_state in ready.read_states {
            let op_id = u64::from_le_bytes(read_state.request_context[..8].try_into().unwrap());
            let node = self.node(id);
            if node.waiting_reads.contains_key(&op_id) {
                node.reads_ready.push((read_state.index, op_id));
            }
        }
        self.serve_reads(id);
        self.maybe_snapshot(id);
    }

    fn apply_entry(&mut self, id: u64, entry: &Entry) {
        let digest = (entry.term, hash(&entry.data));
        if let Some(previous) = self.oracle.applied.insert(entry.index, digest) {
            assert_eq!(
                previous, digest,
                "state machine safety: member {} applied a different entry at {}",
                id, entry.index
            );
        }
        let node = self.node(id);
        assert_eq!(entry.index, node.applied_index + 1, "member {} applies out of order", id);
        node.applied_index = entry.index;
        node.applied_since_snapshot += 1;
        if entry.entry_type != EntryType::EntryNormal as i32 || entry.data.is_empty() {
            return;
        }
        let fields = decode_u64s(&entry.data);
        let (op_id, key, value) = (fields[0], fields[1], fields[2]);
        node.kv.insert(key, value);
        if let Some(client) = node.waiting_writes.remove(&op_id) {
            self.complete_op(client, op_id, KvOutput::Written);
        }
    }

    fn serve_reads(&mut self, id: u64) {
        let node = self.node(id);
        let applied = node.applied_index;
        let (servable, waiting): (Vec<_>, Vec<_>) =
            node.reads_ready.drain(..).partition(|(index, _)| *index <= applied);
        node.reads_ready = waiting;
        for (_, op_id) in servable {
            let node = self.node(id);
            let Some(client) = node.waiting_reads.remove(&op_id) else { continue };
            let op = self.clients[client].clone().expect("waiting read has a client op");
            let value = self.node(id).kv.get(&op.input.key()).copied();
            self.complete_op(client, op_id, KvOutput::Read(value));
        }
    }

    fn maybe_snapshot(&mut self, id: u64) {
        let every = self.options.snapshot_every_entries;
        let keep = self.rng.below(5);
        let node = self.node(id);
        if node.applied_since_snapshot < every || !node.pending_writes.is_empty() {
            return;
        }
        let index = node.applied_index;
        let data = encode_kv(&node.kv, index);
        let raft = node.raft.as_mut().unwrap();
        let snapshot = raft.create_snapshot(index, data);
        raft.compact_log(index.saturating_sub(keep).max(raft.log().snapshot_index()));
        node.disk.snapshot = Some(snapshot);
        node.disk.entries.retain(|entry| entry.index > index);
        node.applied_since_snapshot = 0;
    }

    fn complete_op(&mut self, client: usize, op_id: u64, output: KvOutput) {
        let Some(op) = self.clients[client].take() else { return };
        assert_eq!(op.op_id, op_id);
        match output {
            KvOutput::Written => self.stats.writes_ok += 1,
            KvOutput::Read(_) => self.stats.reads_ok += 1,
            KvOutput::Unknown => self.stats.ops_unknown += 1,
        }
        let return_time = if output == KvOutput::Unknown { None } else { Some(self.now_ms) };
        if self.trace {
            eprintln!("{} COMPLETE client {} op {} {:?}", self.now_ms, client, op_id, output);
        }
        self.history.push(Operation {
            client_id: client as u64,
            input: op.input,
            output,
            call_time: op.call_ms,
            return_time,
        });
        for node in &mut self.nodes {
            node.waiting_writes.remove(&op_id);
            node.waiting_reads.remove(&op_id);
        }
    }

    fn start_client_ops(&mut self) {
        for client in 0..self.clients.len() {
            if self.clients[client].is_some() || !self.rng.chance(self.options.client_op_per_million) {
                continue;
            }
            let live = self.live_ids();
            if live.is_empty() {
                return;
            }
            // Clients mostly find the leader (as etcd clients do after a redirect).
            let node_id = match self.current_leader() {
                Some(leader) if self.rng.chance(700_000) => leader,
                _ => live[self.rng.below(live.len() as u64) as usize],
            };
            let key = self.rng.below(self.options.keys);
            let op_id = self.next_op_id;
            self.next_op_id += 1;
            let input =
                if self.rng.chance(500_000) { KvInput::Put { key, value: op_id } } else { KvInput::Get { key } };
            let op = ClientOp { op_id, node: node_id, input, call_ms: self.now_ms, deadline_ms: self.now_ms + 1_000 };
            let raft = self.node(node_id).raft.as_mut().unwrap();
            let accepted = match input {
                KvInput::Put { key, value } => raft.propose(encode_write(op_id, key, value)).is_ok(),
                KvInput::Get { .. } => raft.read_index(op_id.to_le_bytes().to_vec()).is_ok(),
            };
            if self.trace {
                eprintln!(
                    "{} CLIENT {} op {} {:?} via {} accepted {}",
                    self.now_ms, client, op_id, input, node_id, accepted
                );
            }
            if !accepted {
                continue;
            }
            let node = self.node(node_id);
            match input {
                KvInput::Put { .. } => node.waiting_writes.insert(op_id, client),
                KvInput::Get { .. } => node.waiting_reads.insert(op_id, client),
            };
            self.clients[client] = Some(op);
        }
    }

    fn expire_client_ops(&mut self) {
        for client in 0..self.clients.len() {
            let Some(op) = &self.clients[client] else { continue };
            let node_down = self.nodes[(op.node - 1) as usize].raft.is_none();
            if op.deadline_ms <= self.now_ms || node_down {
                let op_id = op.op_id;
                self.complete_op(client, op_id, KvOutput::Unknown);
            }
        }
    }

    fn crash(&mut self, id: u64) {
        self.stats.crashes += 1;
        if self.trace {
            eprintln!("{} CRASH {}", self.now_ms, id);
        }
        let restart_at = self.now_ms + self.rng.range(20, 800);
        // Some of the queued writes may reach the disk before the power goes.
        let queued = self.node(id).pending_writes.len() as u64;
        let written = self.rng.below(queued + 1);
        for _ in 0..written {
            let node = self.node(id);
            let write = node.pending_writes.pop_front().unwrap();
            node.disk.write(&write);
        }
        let node = self.node(id);
        node.raft = None;
        node.pending_writes.clear();
        node.reads_ready.clear();
        node.restart_at_ms = Some(restart_at);
    }

    fn inject_faults(&mut self) {
        let live = self.live_ids();
        // Any number of members may be down at once: safety must hold through a crash of
        // the whole cluster (disks intact); liveness is only required after healing.
        if !live.is_empty() && self.rng.chance(self.options.crash_per_million) {
            // Half of the crashes hit the leader: that is where the subtle cases are.
            let victim = match self.current_leader() {
                Some(leader) if self.rng.chance(500_000) => leader,
                _ => live[self.rng.below(live.len() as u64) as usize],
            };
            self.crash(victim);
            if self.rng.chance(50_000) {
                for id in self.live_ids() {
                    self.crash(id);
                }
            }
        }
        for id in 1..=self.nodes.len() as u64 {
            if self.node(id).restart_at_ms.is_some_and(|at| at <= self.now_ms) {
                self.start_node(id);
            }
        }
        match &self.partition {
            Some((_, heal_at)) if *heal_at <= self.now_ms => self.partition = None,
            None if self.rng.chance(self.options.partition_per_million) => {
                self.stats.partitions += 1;
                let mut side: BTreeSet<u64> =
                    (1..=self.nodes.len() as u64).filter(|_| self.rng.chance(400_000)).collect();
                if let Some(leader) = self.current_leader().filter(|_| self.rng.chance(500_000)) {
                    side = BTreeSet::from([leader]);
                }
                let heal_at = self.now_ms + self.rng.range(50, 1_500);
                self.partition = Some((side, heal_at));
            }
            _ => {}
        }
        if self.rng.chance(self.options.conf_change_per_million) {
            self.change_membership();
        }
        if self.rng.chance(self.options.transfer_per_million) {
            if let Some(leader) = self.current_leader() {
                let target = self.rng.range(1, self.nodes.len() as u64);
                self.node(leader).raft.as_mut().unwrap().transfer_leader(target);
            }
        }
    }

    pub fn current_leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|node| {
                node.raft.as_ref().filter(|raft| raft.role() == Role::Leader).map(|raft| (raft.term(), node.id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// Adds a learner, promotes one, or removes a voter (never below three voters).
    fn change_membership(&mut self) {
        let Some(leader) = self.current_leader() else { return };
        let conf = self.node(leader).raft.as_ref().unwrap().conf_state().clone();
        let all: Vec<u64> = (1..=self.nodes.len() as u64).collect();
        let outside: Vec<u64> =
            all.iter().copied().filter(|id| !conf.voters.contains(id) && !conf.learners.contains(id)).collect();
        let choice = self.rng.below(3);
        let change = if choice == 0 && !outside.is_empty() {
            let id = outside[self.rng.below(outside.len() as u64) as usize];
            (ConfChangeType::ConfChangeAddLearnerNode, id)
        } else if choice == 1 && !conf.learners.is_empty() {
            let id = conf.learners[self.rng.below(conf.learners.len() as u64) as usize];
            (ConfChangeType::ConfChangeAddNode, id)
        } else if conf.voters.len() > 3 {
            let id = conf.voters[self.rng.below(conf.voters.len() as u64) as usize];
            (ConfChangeType::ConfChangeRemoveNode, id)
        } else {
            return;
        };
        let proposal = ConfChange { id: 0, change_type: change.0 as i32, node_id: change.1, context: Vec::new() };
        let result = self.node(leader).raft.as_mut().unwrap().propose_conf_change(proposal.clone());
        if self.trace {
            eprintln!("{} CONF leader {} {:?} -> {:?}", self.now_ms, leader, proposal, result);
        }
        if result.is_ok() {
            self.stats.conf_changes += 1;
        }
    }

    /// One millisecond of simulated time.
    pub fn step(&mut self, faults: bool) {
        self.now_ms += 1;
        if faults {
            self.inject_faults();
        }
        self.start_client_ops();
        self.deliver_due();
        let ids: Vec<u64> = self.live_ids();
        for id in &ids {
            let phase = *id * 3;
            if (self.now_ms + phase).is_multiple_of(self.options.tick_ms) {
                self.node(*id).raft.as_mut().unwrap().tick();
            }
        }
        for id in &ids {
            self.process_ready(*id);
            // One fsync per disk "tick" makes everything queued durable (group commit);
            // sometimes only a prefix is written when a crash follows.
            let persist_chance = self.options.persist_per_million;
            if !self.node(*id).pending_writes.is_empty() && self.rng.chance(persist_chance) {
                while !self.node(*id).pending_writes.is_empty() {
                    self.complete_write(*id);
                }
            }
            self.process_ready(*id);
        }
        self.expire_client_ops();
        if self.trace {
            for node in &mut self.nodes {
                let now = node.raft.as_ref().map(|raft| (raft.role(), raft.term()));
                if now != node.traced_role {
                    eprintln!("{} ROLE {} {:?}", self.now_ms, node.id, now);
                    node.traced_role = now;
                }
            }
        }
        self.check_invariants();
    }

    pub fn heal_everything(&mut self) {
        self.partition = None;
        for id in 1..=self.nodes.len() as u64 {
            if self.node(id).raft.is_none() {
                self.start_node(id);
            }
        }
        self.options.drop_per_million = 0;
        self.options.duplicate_per_million = 0;
    }

    pub fn describe(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            match &node.raft {
                None => out.push_str(&format!("member {}: down\n", node.id)),
                Some(raft) => out.push_str(&format!(
                    "member {}: {:?} term {} leader {} last {} committed {} persisted {} applied {} conf {:?}/{:?} progress {:?}\n",
                    node.id, raft.role(), raft.term(), raft.leader_id(), raft.log().last_index(), raft.log().committed,
                    raft.log().persisted, raft.log().applied, raft.conf_state().voters, raft.conf_state().learners,
                    (1..=self.nodes.len() as u64).filter_map(|id| raft.progress(id).map(|p| (id, p.state, p.matched, p.next_index, p.recent_active))).collect::<Vec<_>>()
                )),
            }
        }
        out
    }

    /// Ends the run: operations still outstanding have an unknown outcome.
    pub fn finish(&mut self) {
        for client in 0..self.clients.len() {
            if let Some(op) = &self.clients[client] {
                let op_id = op.op_id;
                self.complete_op(client, op_id, KvOutput::Unknown);
            }
        }
    }

    /// Runs until a fresh write through the leader is acknowledged, or gives up.
    pub fn final_write_succeeds(&mut self, budget_ms: u64) -> bool {
        let deadline = self.now_ms + budget_ms;
        let writes_before = self.stats.writes_ok;
        while self.now_ms < deadline {
            self.step(false);
            if self.stats.writes_ok > writes_before + 2 {
                return true;
            }
        }
        false
    }

    // ---------------------------------------------------------------- invariants

    pub fn check_invariants(&mut self) {
        for index in 0..self.nodes.len() {
            let Some(raft) = self.nodes[index].raft.as_ref() else { continue };
            let id = self.nodes[index].id;
            if raft.role() == Role::Leader {
                if self.trace && !self.oracle.leader_of_term.contains_key(&raft.term()) {
                    eprintln!(
                        "{} LEADER {} term {} last {} commit {} conf {:?}",
                        self.now_ms,
                        id,
                        raft.term(),
                        raft.log().last_index(),
                        raft.log().committed,
                        raft.conf_state()
                    );
                }
                let previous = self.oracle.leader_of_term.insert(raft.term(), id);
                match previous {
                    Some(other) => assert_eq!(other, id, "election safety: two leaders in term {}", raft.term()),
                    None => self.stats.leaders_elected += 1,
                }
            }
            raft.check();
            check_log_matching(&mut self.oracle, raft, id);
            let checked = self.nodes[index].commit_checked;
            let checked = check_committed(&mut self.oracle, raft, id, checked);
            self.nodes[index].commit_checked = checked;
        }
        for node in &self.nodes {
            let Some(raft) = node.raft.as_ref() else { continue };
            if raft.role() == Role::Leader {
                check_leader_completeness(&self.oracle, raft, node.id);
            }
        }
    }
}

/// Log matching: one (index, term) always names the same data and the same predecessor term.
fn check_log_matching(oracle: &mut Oracle, raft: &Raft, id: u64) {
    let log = raft.log();
    let from = log.committed.max(log.snapshot_index() + 1);
    let mut previous_term = log.term(from - 1).unwrap_or(0);
    for entry in log.iter_from(from) {
        let digest = (hash(&entry.data), previous_term);
        let known = oracle.entries_seen.entry((entry.index, entry.term)).or_insert(digest);
        assert_eq!(
            *known, digest,
            "log matching: member {} holds a different entry at ({}, {})",
            id, entry.index, entry.term
        );
        previous_term = entry.term;
    }
}

/// Every entry a member considers committed matches every other member's committed entry.
fn check_committed(oracle: &mut Oracle, raft: &Raft, id: u64, checked: u64) -> u64 {
    let log = raft.log();
    let from = checked.max(log.snapshot_index()) + 1;
    for index in from..=log.committed {
        let entry = log.entry(index).expect("committed entry after snapshot is in memory");
        let record = (entry.term, hash(&entry.data), raft.term());
        let known = oracle.committed.entry(index).or_insert(record);
        assert_eq!((known.0, known.1), (record.0, record.1), "member {} committed a different entry at {}", id, index);
        known.2 = known.2.min(raft.term());
    }
    log.committed.max(checked)
}

/// Leader completeness: a leader holds every entry committed in a term not after its own.
fn check_leader_completeness(oracle: &Oracle, raft: &Raft, id: u64) {
    let log = raft.log();
    for (index, (term, data_hash, committed_in_term)) in oracle.committed.range(log.snapshot_index() + 1..) {
        if *committed_in_term > raft.term() {
            continue;
        }
        let entry = log.entry(*index);
        assert!(
            entry.is_some_and(|entry| entry.term == *term && hash(&entry.data) == *data_hash),
            "leader completeness: leader {} of term {} lacks committed entry {} (term {})",
            id,
            raft.term(),
            index,
            term
        );
    }
}

fn encode_kv(kv: &BTreeMap<u64, u64>, applied_index: u64) -> Vec<u8> {
    let mut data = applied_index.to_le_bytes().to_vec();
    for (key, value) in kv {
        data.extend_from_slice(&key.to_le_bytes());
        data.extend_from_slice(&value.to_le_bytes());
    }
    data
}

fn decode_kv(data: &[u8]) -> (BTreeMap<u64, u64>, u64) {
    let fields = decode_u64s(data);
    let applied_index = fields[0];
    let kv = fields[1..].chunks_exact(2).map(|pair| (pair[0], pair[1])).collect();
    (kv, applied_index)
}
