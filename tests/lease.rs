//! The lessor against a simple model, persisted in a real store: random grants, renewals,
//! revokes, puts and deletes with and without leases, time, checkpoints, leader changes and
//! reloads (DESIGN §1 Lease). Plus: renew makes no heap allocation (counting allocator), a
//! checkpoint's remaining TTL survives a change of leader, and a revoke's deletes are one
//! revision in key order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use ringd::lease::{Checkpoint, LeaseId, LeaseRecord, LeaseTable, Lessor, LessorConfig, RenewError, Renewed};
use ringd::mvcc::{Store, StoreOptions};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

const T0: Duration = Duration::from_secs(1000);
const LEASE_IDS_MAX: i64 = 8;
const KEYS_MAX: u8 = 6;

/// 100 ms heartbeats, 10 ticks (minimum TTL 2 s, extension 1 s, retry 7 s); checkpoint looks
/// every 5 s so that short runs see them.
fn config() -> LessorConfig {
    let mut config = LessorConfig::new(Duration::from_millis(100), 10);
    config.checkpoint_interval = Duration::from_secs(5);
    config
}

fn open(path: &Path) -> Store {
    Store::open(path, StoreOptions { map_size_bytes: 1 << 30 }).unwrap()
}

fn key(index: u8) -> Vec<u8> {
    format!("key/{index}").into_bytes()
}

#[derive(Clone, Debug)]
enum Op {
    Grant { id: i64, ttl_seconds: i64 },
    Revoke { id: i64 },
    Put { key: u8, lease: i64 },
    PutIgnoreLease { key: u8 },
    Delete { key: u8 },
    DeleteAll,
    Renew { id: i64, apply_clear: bool },
    Advance { millis: u64 },
    Expire { revoke: bool },
    Checkpoints,
    Demote,
    Promote,
    Reload { reopen: bool },
}

fn op() -> impl Strategy<Value = Op> {
    let id = 1..=LEASE_IDS_MAX;
    prop_oneof![
        4 => (id.clone(), -2i64..30).prop_map(|(id, ttl_seconds)| Op::Grant { id, ttl_seconds }),
        2 => id.clone().prop_map(|id| Op::Revoke { id }),
        6 => (0..KEYS_MAX, 0..=LEASE_IDS_MAX).prop_map(|(key, lease)| Op::Put { key, lease }),
        1 => (0..KEYS_MAX).prop_map(|key| Op::PutIgnoreLease { key }),
        2 => (0..KEYS_MAX).prop_map(|key| Op::Delete { key }),
        1 => Just(Op::DeleteAll),
        6 => (id, any::<bool>()).prop_map(|(id, apply_clear)| Op::Renew { id, apply_clear }),
        6 => (0u64..6000).prop_map(|millis| Op::Advance { millis }),
        3 => any::<bool>().prop_map(|revoke| Op::Expire { revoke }),
        3 => Just(Op::Checkpoints),
        1 => Just(Op::Demote),
        2 => Just(Op::Promote),
        1 => any::<bool>().prop_map(|reopen| Op::Reload { reopen }),
    ]
}

#[derive(Clone, Debug, Default)]
struct ModelLease {
    /// After the minimum.
    ttl_seconds: i64,
    remaining_ttl_seconds: i64,
    /// The leader's expiry.
    deadline: Option<Duration>,
    /// When `expired` last returned it.
    reported_at: Option<Duration>,
    clear_proposed: bool,
}

#[derive(Default)]
struct Model {
    now: Duration,
    leader: bool,
    leases: BTreeMap<i64, ModelLease>,
    /// Live keys and their lease (0 = none).
    keys: BTreeMap<Vec<u8>, i64>,
}

impl Model {
    fn attached(&self, id: i64) -> Vec<Vec<u8>> {
        self.keys.iter().filter(|(_, &lease)| lease == id).map(|(key, _)| key.clone()).collect()
    }

    fn promote(&mut self, config: &LessorConfig) {
        self.leader = true;
        let now = self.now;
        for lease in self.leases.values_mut() {
            let run = if lease.remaining_ttl_seconds > 0 { lease.remaining_ttl_seconds } else { lease.ttl_seconds };
            lease.deadline = Some(now + config.promote_extension + Duration::from_secs(run as u64));
            lease.reported_at = None;
            lease.clear_proposed = false;
        }
    }

    fn demote(&mut self) {
        self.leader = false;
        for lease in self.leases.values_mut() {
            *lease = ModelLease { deadline: None, reported_at: None, clear_proposed: false, ..lease.clone() };
        }
    }

    /// What `expired(now)` must return, in id order.
    fn expired(&self, retry: Duration) -> Vec<i64> {
        let now = self.now;
        self.leases
            .iter()
            .filter(|(_, lease)| lease.deadline.is_some_and(|deadline| deadline <= now))
            .filter(|(_, lease)| lease.reported_at.is_none_or(|reported| now >= reported + retry))
            .map(|(&id, _)| id)
            .collect()
    }
}

struct Harness {
    _directory: tempfile::TempDir,
    path: PathBuf,
    store: Option<Store>,
    lessor: Lessor,
    model: Model,
    config: LessorConfig,
}

impl Harness {
    fn new() -> Harness {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("db");
        let store = open(&path);
        let config = config();
        let mut lessor = Lessor::load(&mut open_snapshot(&store), config.clone()).unwrap();
        let mut model = Model { now: T0, ..Model::default() };
        lessor.promote(T0);
        model.promote(&config);
        Harness { _directory: directory, path, store: Some(store), lessor, model, config }
    }

    fn store(&mut self) -> &mut Store {
        self.store.as_mut().unwrap()
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Grant { id, ttl_seconds } => self.grant(id, ttl_seconds),
            Op::Revoke { id } => self.revoke(id),
            Op::Put { key, lease } => self.put(key, lease),
            Op::PutIgnoreLease { key } => {
                if let Some(&lease) = self.model.keys.get(&self::key(key)) {
                    self.write(key, lease);
                }
            }
            Op::Delete { key } => self.delete(&self::key(key), &[]),
            Op::DeleteAll => self.delete(&[0], &[0]),
            Op::Renew { id, apply_clear } => self.renew(id, apply_clear),
            Op::Advance { millis } => self.model.now += Duration::from_millis(millis),
            Op::Expire { revoke } => self.expire(revoke),
            Op::Checkpoints => self.checkpoints(),
            Op::Demote => {
                self.lessor.demote();
                self.model.demote();
            }
            Op::Promote => {
                self.lessor.promote(self.model.now);
                self.model.promote(&self.config);
            }
            Op::Reload { reopen } => self.reload(reopen),
        }
        self.lessor.check().unwrap_or_else(|error| panic!("after {op:?}: {error}"));
        self.compare();
    }

    fn grant(&mut self, id: i64, ttl_seconds: i64) {
        let now = self.model.now;
        let result = self.lessor.grant(self.store.as_mut().unwrap(), LeaseId(id), ttl_seconds, now);
        if self.model.leases.contains_key(&id) {
            assert_eq!(result.unwrap_err().to_string(), "lease already exists");
            return;
        }
        let ttl = ttl_seconds.max(self.config.ttl_min_seconds);
        assert_eq!(result.unwrap().ttl_seconds, ttl);
        let deadline = self.model.leader.then(|| now + Duration::from_secs(ttl as u64));
        self.model.leases.insert(id, ModelLease { ttl_seconds: ttl, deadline, ..ModelLease::default() });
    }

    /// Revokes through one write txn, deleting the returned keys in it.
    fn revoke(&mut self, id: i64) {
        let store = self.store.as_mut().unwrap();
        let mut txn = store.write();
        let result = self.lessor.revoke(&mut txn, LeaseId(id));
        let Some(_) = self.model.leases.remove(&id) else {
            assert_eq!(result.unwrap_err().to_string(), "lease not found");
            return;
        };
        let keys = result.unwrap();
        assert_eq!(keys, self.model.attached(id), "revoke returns exactly the attached keys, in key order");
        for key in &keys {
            let deleted = txn.delete_range(key, &[]);
            assert_eq!(deleted.len(), 1);
            assert_eq!(deleted[0].lease, id);
            self.lessor.key_deleted(key, LeaseId(deleted[0].lease));
            self.model.keys.remove(key);
        }
    }

    fn put(&mut self, key: u8, lease: i64) {
        if lease != 0 && !self.lessor.contains(LeaseId(lease)) {
            assert!(!self.model.leases.contains_key(&lease));
            return;
        }
        self.write(key, lease);
    }

    fn write(&mut self, key: u8, lease: i64) {
        let key = self::key(key);
        let store = self.store.as_mut().unwrap();
        let mut txn = store.write();
        let previous = txn.put(&key, b"value", lease);
        let previous_lease = previous.map_or(0, |kv| kv.lease);
        assert_eq!(previous_lease, self.model.keys.get(&key).copied().unwrap_or(0));
        self.lessor.key_written(&key, LeaseId(previous_lease), LeaseId(lease));
        self.model.keys.insert(key, lease);
    }

    fn delete(&mut self, key: &[u8], range_end: &[u8]) {
        let store = self.store.as_mut().unwrap();
        let mut txn = store.write();
        for kv in txn.delete_range(key, range_end) {
            self.lessor.key_deleted(&kv.key, LeaseId(kv.lease));
            assert_eq!(self.model.keys.remove(&kv.key), Some(kv.lease));
        }
    }

    fn renew(&mut self, id: i64, apply_clear: bool) {
        let now = self.model.now;
        let result = self.lessor.renew(LeaseId(id), now);
        let Some(lease) = self.model.leases.get_mut(&id).filter(|_| self.model.leader) else {
            let expected = if self.model.leader { RenewError::NotFound } else { RenewError::NotPrimary };
            assert_eq!(result, Err(expected));
            return;
        };
        if lease.deadline.unwrap() <= now {
            assert_eq!(result, Err(RenewError::Expired));
            return;
        }
        let clear_checkpoint = lease.remaining_ttl_seconds > 0 && !lease.clear_proposed;
        assert_eq!(result, Ok(Renewed { ttl_seconds: lease.ttl_seconds, clear_checkpoint }));
        lease.deadline = Some(now + Duration::from_secs(lease.ttl_seconds as u64));
        lease.clear_proposed |= clear_checkpoint;
        if clear_checkpoint && apply_clear {
            self.apply_checkpoint(Checkpoint { id: LeaseId(id), remaining_ttl_seconds: 0 });
        }
    }

    fn apply_checkpoint(&mut self, checkpoint: Checkpoint) {
        let store = self.store.as_mut().unwrap();
        let applied = self.lessor.checkpoint(store, checkpoint.id, checkpoint.remaining_ttl_seconds);
        let lease = self.model.leases.get_mut(&checkpoint.id.0);
        assert_eq!(applied, lease.is_some());
        if let Some(lease) = lease {
            lease.remaining_ttl_seconds = checkpoint.remaining_ttl_seconds;
            lease.clear_proposed = false;
        }
    }

    /// `expired` returns exactly the leases whose deadline passed (and were not returned
    /// within the retry interval); a revoke of each goes through the store.
    fn expire(&mut self, revoke: bool) {
        let mut expired: Vec<i64> = self.lessor.expired(self.model.now).into_iter().map(|id| id.0).collect();
        expired.sort_unstable();
        assert_eq!(expired, self.model.expired(self.config.expired_retry_interval), "at {:?}", self.model.now);
        for &id in &expired {
            self.model.leases.get_mut(&id).unwrap().reported_at = Some(self.model.now);
            if revoke {
                self.revoke(id);
            }
        }
    }

    /// Every checkpoint due is right about its lease; applying it changes what a promotion
    /// starts from.
    fn checkpoints(&mut self) {
        let now = self.model.now;
        let due = self.lessor.checkpoints_due(now);
        let ids: BTreeSet<i64> = due.iter().map(|checkpoint| checkpoint.id.0).collect();
        assert_eq!(ids.len(), due.len(), "one checkpoint per lease");
        for checkpoint in due {
            let lease = &self.model.leases[&checkpoint.id.0];
            let left = lease.deadline.unwrap().checked_sub(now).expect("a live lease");
            let left_seconds = (left.as_secs() + u64::from(left.subsec_nanos() > 0)) as i64;
            assert!(left > Duration::ZERO);
            assert_eq!(checkpoint.remaining_ttl_seconds, left_seconds);
            assert!(checkpoint.remaining_ttl_seconds < lease.ttl_seconds);
            self.apply_checkpoint(checkpoint);
        }
    }

    /// State persisted to the store and loaded back (from the writer, from a snapshot, after
    /// a reopen) is equal; the loaded lessor is a follower.
    fn reload(&mut self, reopen: bool) {
        self.store().commit().unwrap();
        if reopen {
            self.store = None;
            self.store = Some(open(&self.path));
        }
        let from_store = Lessor::load(self.store.as_mut().unwrap(), self.config.clone()).unwrap();
        let from_snapshot =
            Lessor::load(&mut open_snapshot(self.store.as_ref().unwrap()), self.config.clone()).unwrap();
        for loaded in [&from_store, &from_snapshot] {
            loaded.check().unwrap();
            assert!(loaded.iter().eq(self.lessor.iter()), "loaded leases equal the applied ones");
            assert_eq!(loaded.orphaned_keys_at_load(), 0);
        }
        let leader = self.model.leader;
        self.lessor = from_store;
        self.model.demote();
        if leader {
            self.lessor.promote(self.model.now);
            self.model.promote(&self.config);
        }
    }

    /// The lessor's replicated state is the model's; on the leader, every deadline too.
    fn compare(&self) {
        let ids: Vec<i64> = self.lessor.leases().map(|id| id.0).collect();
        assert_eq!(ids, self.model.leases.keys().copied().collect::<Vec<_>>());
        for (&id, model) in &self.model.leases {
            let lease = self.lessor.get(LeaseId(id)).unwrap();
            assert_eq!(
                (lease.ttl_seconds(), lease.remaining_ttl_seconds()),
                (model.ttl_seconds, model.remaining_ttl_seconds)
            );
            let keys: Vec<Vec<u8>> = lease.keys().map(<[u8]>::to_vec).collect();
            assert_eq!(keys, self.model.attached(id), "lease {id}");
            assert_eq!(lease.expiry(), model.deadline, "lease {id}");
            if let Some(deadline) = model.deadline {
                let answer = self.lessor.time_to_live(LeaseId(id), self.model.now, true).unwrap();
                let left_nanos = deadline.as_nanos() as i128 - self.model.now.as_nanos() as i128;
                assert_eq!(answer.ttl_seconds, (left_nanos / 1_000_000_000) as i64);
                assert_eq!(answer.keys, keys);
            }
        }
    }
}

fn open_snapshot(store: &Store) -> ringd::mvcc::Snapshot {
    store.reader().snapshot()
}

/// PROPTEST_CASES raises the number of cases (64 by default keeps the suite fast).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn lessor_matches_model(ops in prop::collection::vec(op(), 1..200)) {
        let mut harness = Harness::new();
        for op in &ops {
            harness.apply(op);
        }
        harness.reload(true);
    }
}

/// A long deterministic run.
#[test]
fn long_random_history_matches_model() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let ops = prop::collection::vec(op(), 5000).new_tree(&mut runner).unwrap().current();
    let mut harness = Harness::new();
    for op in &ops {
        harness.apply(op);
    }
    harness.reload(true);
}

/// Persists nothing: for tests of the timing alone.
struct NoTable;

impl LeaseTable for NoTable {
    fn put_lease_record(&mut self, _: LeaseId, _: &LeaseRecord) {}
    fn delete_lease_record(&mut self, _: LeaseId) {}
}

#[test]
fn renew_does_not_allocate() {
    const LEASES: i64 = 2000;
    let mut lessor = Lessor::new(config());
    for id in 1..=LEASES {
        lessor.grant(&mut NoTable, LeaseId(id), 10 + id % 50, T0).unwrap();
    }
    lessor.promote(T0);
    let mut now = T0;
    let before = allocations();
    // The first round moves every expiry earlier than the promotion queued it (one push per
    // lease); later rounds only move expiries later.
    for _ in 0..5 {
        now += Duration::from_millis(700);
        for id in 1..=LEASES {
            lessor.renew(LeaseId(id), now).unwrap();
        }
    }
    assert_eq!(allocations() - before, 0, "renew allocated");
    lessor.check().unwrap();
    // A grant makes room again; renewals of the new lease and the old ones stay free.
    lessor.grant(&mut NoTable, LeaseId(LEASES + 1), 30, now).unwrap();
    let before = allocations();
    for id in 1..=LEASES + 1 {
        lessor.renew(LeaseId(id), now).unwrap();
    }
    assert_eq!(allocations() - before, 0, "renew allocated after a grant");
}

/// Leader A checkpoints a lease through "Raft" (both members apply it); B, promoted after A,
/// starts from the checkpointed remaining TTL, also after reloading from its store.
#[test]
fn a_checkpoint_survives_a_change_of_leader() {
    let mut config = config();
    config.checkpoint_interval = Duration::from_secs(30);
    let directory = tempfile::tempdir().unwrap();
    let (mut store_a, mut store_b) = (open(&directory.path().join("a")), open(&directory.path().join("b")));
    let mut a = Lessor::new(config.clone());
    let mut b = Lessor::new(config.clone());
    a.promote(T0);
    let id = LeaseId(0x1d);
    for (lessor, store) in [(&mut a, &mut store_a), (&mut b, &mut store_b)] {
        assert_eq!(lessor.grant(store, id, 100, T0).unwrap().ttl_seconds, 100);
    }
    let due = a.checkpoints_due(T0 + Duration::from_secs(30));
    assert_eq!(due, vec![Checkpoint { id, remaining_ttl_seconds: 70 }]);
    for (lessor, store) in [(&mut a, &mut store_a), (&mut b, &mut store_b)] {
        assert!(lessor.checkpoint(store, id, 70));
        store.commit().unwrap();
    }
    a.demote();
    let promoted_at = T0 + Duration::from_secs(31);
    let mut reloaded = Lessor::load(&mut store_b.reader().snapshot(), config.clone()).unwrap();
    for lessor in [&mut b, &mut reloaded] {
        lessor.promote(promoted_at);
        let answer = lessor.time_to_live(id, promoted_at, false).unwrap();
        assert_eq!((answer.ttl_seconds, answer.granted_ttl_seconds), (71, 100), "70 s + the election timeout");
        assert_eq!(lessor.expired(promoted_at + Duration::from_secs(71)), vec![id]);
    }
}

/// The caller deletes a revoked lease's keys in the revoke's txn: one revision, key order,
/// delete events in the history (what the watchers see).
#[test]
fn a_revoke_deletes_its_keys_in_one_revision() {
    let directory = tempfile::tempdir().unwrap();
    let mut store = open(&directory.path().join("db"));
    let mut lessor = Lessor::new(config());
    let id = LeaseId(5);
    lessor.grant(&mut store, id, 10, T0).unwrap();
    for key in [&b"c"[..], b"a", b"b", b"unleased"] {
        let lease = if key == b"unleased" { 0 } else { id.0 };
        let mut txn = store.write();
        let previous = txn.put(key, b"v", lease);
        lessor.key_written(key, LeaseId(previous.map_or(0, |kv| kv.lease)), LeaseId(lease));
    }
    let before = store.current_revision();
    let mut txn = store.write();
    let keys = lessor.revoke(&mut txn, id).unwrap();
    for key in &keys {
        for kv in txn.delete_range(key, &[]) {
            lessor.key_deleted(&kv.key, LeaseId(kv.lease));
        }
    }
    assert_eq!(txn.end(), before + 1);
    store.commit().unwrap();
    let snapshot = store.reader().snapshot();
    let (events, _) = snapshot.history(before, &[0], &[0], 100).unwrap();
    let deleted: Vec<(&[u8], i64)> = events.iter().map(|e| (&e.kv.key[..], e.kv.mod_revision)).collect();
    assert!(events.iter().all(|event| event.deleted));
    assert_eq!(deleted, [(&b"a"[..], before + 1), (b"b", before + 1), (b"c", before + 1)]);
    assert!(snapshot.aux_scan(ringd::mvcc::AUX_TABLE_LEASES).is_empty(), "the record went with the keys");
}
