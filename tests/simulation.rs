//! Deterministic simulation of a Raft cluster running a replicated KV store.
//!
//! `cargo test --release --test simulation` runs SIM_SEEDS seeds (default 300) starting at
//! SIM_SEED_BASE (default 1), each for 20 s of simulated time (SIM_DURATION_MS overrides).
//! SIM_SEED=n runs only seed n (add SIM_TRACE=1 for a message trace). Each seed draws its own fault mix (see `cluster::Options::random`), runs with
//! faults, then heals the cluster and requires a write to succeed, and finally checks the
//! client-visible history for linearizability. A failing seed prints the command that
//! replays it.

#[path = "simulation/cluster.rs"]
mod cluster;

use std::panic::{catch_unwind, AssertUnwindSafe};

use cluster::Cluster;
use ringd::testing::linearizability::{check_kv_history, CheckResult};

const SEEDS_DEFAULT: u64 = 300;
const LIVENESS_BUDGET_MS: u64 = 10_000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|value| value.parse().unwrap_or_else(|_| panic!("{} must be a number", name)))
}

/// Runs one seed to completion; panics with a description on any violation.
fn run_seed(seed: u64) -> cluster::Stats {
    let mut cluster = Cluster::new(seed);
    let duration_ms = env_u64("SIM_DURATION_MS").unwrap_or(cluster.options.duration_ms);
    while cluster.now_ms < duration_ms {
        cluster.step(true);
    }
    cluster.heal_everything();
    assert!(
        cluster.final_write_succeeds(LIVENESS_BUDGET_MS),
        "liveness: no write committed within {} ms after healing (options {:?})\n{}",
        LIVENESS_BUDGET_MS,
        cluster.options,
        cluster.describe()
    );
    cluster.finish();
    match check_kv_history(&cluster.history) {
        CheckResult::Linearizable => {}
        CheckResult::Inconclusive { key } => eprintln!("seed {}: linearizability search gave up on key {}", seed, key),
        CheckResult::NotLinearizable { key, operations } => {
            print_shortest_failing_prefix(&operations);
            panic!("history is not linearizable on key {} ({} operations)", key, operations.len());
        }
    }
    cluster.stats.clone()
}

/// Prints a minimal non-linearizable sub-history: drops operations one at a time while the
/// rest still fails (never a write whose value a remaining read returns).
fn print_shortest_failing_prefix(operations: &[ringd::testing::linearizability::Operation]) {
    use ringd::testing::linearizability::{KvInput, KvOutput};
    let mut kept = operations.to_vec();
    kept.sort_by_key(|operation| operation.call_time);
    let mut position = 0;
    while position < kept.len() {
        if let KvInput::Put { value, .. } = kept[position].input {
            if kept.iter().any(|other| other.output == KvOutput::Read(Some(value))) {
                position += 1;
                continue;
            }
        }
        let mut candidate = kept.clone();
        candidate.remove(position);
        if matches!(check_kv_history(&candidate), CheckResult::NotLinearizable { .. }) {
            kept = candidate;
        } else {
            position += 1;
        }
    }
    eprintln!("minimal failing sub-history ({} operations):", kept.len());
    for operation in &kept {
        eprintln!("  {:?}", operation);
    }
}

fn replay_command(seed: u64) -> String {
    let duration = env_u64("SIM_DURATION_MS").map(|ms| format!("SIM_DURATION_MS={} ", ms)).unwrap_or_default();
    format!("{}SIM_SEED={} cargo test --release --test simulation -- --nocapture", duration, seed)
}

#[test]
fn simulation() {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let base = env_u64("SIM_SEED_BASE").unwrap_or(1);
            let count = env_u64("SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
            (base..base + count).collect()
        }
    };
    let mut totals = cluster::Stats::default();
    let mut failures = Vec::new();
    for seed in &seeds {
        match catch_unwind(AssertUnwindSafe(|| run_seed(*seed))) {
            Ok(stats) => {
                totals.writes_ok += stats.writes_ok;
                totals.reads_ok += stats.reads_ok;
                totals.ops_unknown += stats.ops_unknown;
                totals.crashes += stats.crashes;
                totals.partitions += stats.partitions;
                totals.conf_changes += stats.conf_changes;
                totals.snapshots_sent += stats.snapshots_sent;
                totals.leaders_elected += stats.leaders_elected;
                totals.messages += stats.messages;
            }
            Err(_) => {
                eprintln!("seed {} FAILED; replay with: {}", seed, replay_command(*seed));
                failures.push(*seed);
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    eprintln!("simulation: {} seeds, totals {:?}", seeds.len(), totals);
    assert!(
        failures.is_empty(),
        "failing seeds {:?}; replay the first with: {}",
        failures,
        replay_command(failures[0])
    );
}

/// One seed replays one run exactly: the same history, message for message.
#[test]
fn a_seed_replays_exactly() {
    let run = |seed| {
        let mut cluster = Cluster::new(seed);
        while cluster.now_ms < 3_000 {
            cluster.step(true);
        }
        cluster.finish();
        (format!("{:?}", cluster.history), format!("{:?}", cluster.stats), cluster.describe())
    };
    for seed in [3, 17] {
        assert_eq!(run(seed), run(seed), "seed {} diverged between two runs", seed);
    }
}
