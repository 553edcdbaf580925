//! Raft core throughput: a 3-member in-memory cluster (no disk, no network) on one core,
//! proposals batched per Ready, every Ready persisted at once and every message delivered
//! in the same loop. Reports committed entries per second.
//!
//! `cargo bench --bench raft` (from the raft lane crate, or main).

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ringd::raft::pb::Message;
use ringd::raft::{Config, Raft, RestartState, Role, SplitMix64};

const MEMBERS: u64 = 3;
const ENTRY_DATA_BYTES: usize = 64;
const SNAPSHOT_EVERY_ENTRIES: u64 = 100_000;

struct InMemoryCluster {
    members: Vec<Raft>,
    mailboxes: Vec<Vec<Message>>,
    applied_entries: u64,
    payload: Vec<u8>,
}

impl InMemoryCluster {
    fn new() -> InMemoryCluster {
        let voters: Vec<u64> = (1..=MEMBERS).collect();
        let members = voters
            .iter()
            .map(|id| {
                let mut config = Config::new(*id);
                config.append_size_bytes_max = 4 * 1024 * 1024;
                config.inflight_messages_max = 64;
                config.committed_size_bytes_max = 64 * 1024 * 1024;
                Raft::new(config, RestartState::bootstrap(&voters), Box::new(SplitMix64::new(*id)))
            })
            .collect();
        let mut cluster = InMemoryCluster {
            members,
            mailboxes: vec![Vec::new(); MEMBERS as usize],
            applied_entries: 0,
            payload: vec![7u8; ENTRY_DATA_BYTES],
        };
        cluster.members[0].campaign();
        while cluster.members[0].role() != Role::Leader {
            cluster.round();
        }
        cluster.round();
        cluster
    }

    /// Handles every member's Ready and delivers every message once.
    fn round(&mut self) {
        for position in 0..self.members.len() {
            let member = &mut self.members[position];
            if !member.has_ready() {
                continue;
            }
            let ready = member.ready();
            member.on_persist_ready(ready.number);
            for message in ready.messages.into_iter().chain(ready.messages_after_persist) {
                self.mailboxes[(message.to - 1) as usize].push(message);
            }
            self.applied_entries += ready.committed_entries.len() as u64;
            if let Some(last) = ready.committed_entries.last() {
                if last.index % SNAPSHOT_EVERY_ENTRIES < ready.committed_entries.len() as u64 {
                    member.create_snapshot(last.index, Vec::new());
                    member.compact_log(last.index);
                }
            }
        }
        for position in 0..self.members.len() {
            let inbox = std::mem::take(&mut self.mailboxes[position]);
            for message in inbox {
                self.members[position].step(message);
            }
        }
    }

    /// Proposes `total` entries in batches of `batch` and runs until all are committed.
    fn commit(&mut self, total: u64, batch: u64) {
        let target = self.members[0].log().last_index() + total;
        let mut proposed = 0;
        while self.members[0].log().committed < target {
            let room = 8 * batch;
            let in_flight = self.members[0].log().last_index() - self.members[0].log().committed;
            if proposed < total && in_flight < room {
                for _ in 0..batch.min(total - proposed) {
                    self.members[0].propose(self.payload.clone()).expect("member 1 leads");
                }
                proposed += batch.min(total - proposed);
            }
            self.round();
        }
    }
}

fn entries_per_second(total: u64, batch: u64) -> f64 {
    let mut cluster = InMemoryCluster::new();
    cluster.commit(total / 10, batch);
    let started = Instant::now();
    cluster.commit(total, batch);
    total as f64 / started.elapsed().as_secs_f64()
}

fn bench_commit(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("raft_3_members_in_memory");
    group.measurement_time(Duration::from_secs(5)).sample_size(10);
    for batch in [64u64, 256, 1024] {
        let total = 200_000;
        group.throughput(Throughput::Elements(total));
        group.bench_with_input(BenchmarkId::new("committed_entries_batch", batch), &batch, |bencher, batch| {
            let mut cluster = InMemoryCluster::new();
            bencher.iter(|| cluster.commit(total, *batch));
        });
    }
    group.finish();
}

fn main() {
    for batch in [1u64, 64, 256, 1024] {
        let total = if batch == 1 { 100_000 } else { 1_000_000 };
        let rate = entries_per_second(total, batch);
        println!("raft 3-member in-memory cluster, batch {:>5}: {:>12.0} committed entries/s", batch, rate);
    }
    let mut criterion = Criterion::default().configure_from_args();
    bench_commit(&mut criterion);
    criterion.final_summary();
}
