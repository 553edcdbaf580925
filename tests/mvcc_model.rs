//! Property tests of the MVCC store against a plain in-memory model of etcd's semantics:
//! random puts, deletes, txns, compactions, aux table changes, visible commits, speculative
//! commits (published, or aborted back to the last published commit), durable checkpoints,
//! reopens, crashes (back to the last checkpoint) and ranges at random revisions, read through
//! the writer and through snapshots, must give the model's answers.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use ringd::mvcc::{
    CrashMode, Durability, KeyValue, MvccError, RangeOptions, RangeResult, SimFile, Snapshot, Store, StoreFile,
    StoreOptions, AUX_KEY_SIZE_MAX_BYTES, AUX_TABLE_LEASES,
};

const SIM_CAPACITY_BYTES: u64 = 256 << 20;

fn key_table() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = [&b"a"[..], b"ab", b"abc", b"b", b"b\0", b"\0", b"c", b"cc", b"d", b"zz", b"\xff\xfe"]
        .iter()
        .map(|k| k.to_vec())
        .collect();
    keys.push(vec![b'L'; 1900]);
    keys.extend((0..30).map(|i| format!("k{i:02}").into_bytes()));
    // Keys that share a long prefix (as Kubernetes' do), and keys that end inside it: nodes
    // record the prefix their keys share and search on the bytes after it.
    keys.extend([&b"/registry/pods/ns/"[..], b"/registry/pods/ns/web-"].iter().map(|k| k.to_vec()));
    keys.extend((0..20).map(|i| format!("/registry/pods/ns/web-{i:02}").into_bytes()));
    assert_eq!(keys.len(), 64, "ops pick keys by index");
    keys
}

/// Aux keys: empty, short, binary, lease-id-like and the longest allowed.
fn aux_key_table() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = vec![Vec::new(), b"a".to_vec(), b"a\0".to_vec(), vec![0xFF; 3]];
    keys.extend((0..8u64).map(|id| (id * 0x0123_4567_89AB).to_be_bytes().to_vec()));
    keys.push(vec![b'A'; AUX_KEY_SIZE_MAX_BYTES]);
    keys
}

/// Aux tables 0..=3: the three of mod.rs and one more, to test the table boundaries.
const AUX_TABLE_COUNT: u8 = 4;

fn value_bytes(seed: i64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed as usize).wrapping_mul(31).wrapping_add(i) as u8).collect()
}

#[derive(Clone, Debug)]
struct RangeSpec {
    key: usize,
    end: usize,
    revision: u8,
    limit: u8,
    keys_only: bool,
    count_only: bool,
}

#[derive(Clone, Debug)]
enum TxnOp {
    Put {
        key: usize,
        value_len: usize,
        lease: i64,
    },
    Delete {
        key: usize,
        end: usize,
    },
    Range(RangeSpec),
    /// An aux put (a value length) or delete (None), through the txn.
    Aux {
        table: u8,
        key: usize,
        value_len: Option<usize>,
    },
}

#[derive(Clone, Debug)]
enum Op {
    Txn(Vec<TxnOp>),
    Compact(u8),
    Range(RangeSpec),
    Commit,
    CommitVisible,
    /// A speculative commit, then published (true, a visible commit) or aborted (false: the
    /// store goes back to its last published commit).
    Speculate(bool),
    Reopen,
    /// Reopen a crash image without a checkpoint first (unsynced writes torn if true).
    Crash(bool),
    /// An aux put or delete on the store, outside a txn.
    Aux {
        table: u8,
        key: usize,
        value_len: Option<usize>,
    },
    AuxRead(u8),
    TakeSnapshot,
    DropSnapshot,
    Defragment,
}

fn range_spec() -> impl Strategy<Value = RangeSpec> {
    (0..64usize, 0..66usize, any::<u8>(), 0..6u8, any::<bool>(), prop::bool::weighted(0.15)).prop_map(
        |(key, end, revision, limit, keys_only, count_only)| RangeSpec {
            key,
            end,
            revision,
            limit,
            keys_only,
            count_only,
        },
    )
}

fn value_len() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 0..700usize, 1 => 900..1100usize, 1 => Just(5000usize), 1 => Just(70_000usize)]
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        6 => (0..64usize, value_len(), 0..3i64).prop_map(|(key, value_len, lease)| TxnOp::Put { key, value_len, lease }),
        2 => (0..64usize, 0..66usize).prop_map(|(key, end)| TxnOp::Delete { key, end }),
        1 => range_spec().prop_map(TxnOp::Range),
        1 => aux_change().prop_map(|(table, key, value_len)| TxnOp::Aux { table, key, value_len }),
    ]
}

fn aux_change() -> impl Strategy<Value = (u8, usize, Option<usize>)> {
    (0..AUX_TABLE_COUNT, 0..13usize, prop::option::weighted(0.75, value_len()))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => prop::collection::vec(txn_op(), 0..8).prop_map(Op::Txn),
        2 => any::<u8>().prop_map(Op::Compact),
        4 => range_spec().prop_map(Op::Range),
        2 => Just(Op::Commit),
        3 => Just(Op::CommitVisible),
        3 => any::<bool>().prop_map(Op::Speculate),
        1 => Just(Op::Reopen),
        1 => any::<bool>().prop_map(Op::Crash),
        2 => aux_change().prop_map(|(table, key, value_len)| Op::Aux { table, key, value_len }),
        1 => (0..AUX_TABLE_COUNT).prop_map(Op::AuxRead),
        1 => Just(Op::TakeSnapshot),
        1 => Just(Op::DropSnapshot),
        1 => Just(Op::Defragment),
    ]
}

/// (main, sub, value or None for a tombstone).
type Revision = (i64, i64, Option<KeyValue>);

/// The model: every revision of every key, as etcd's semantics define them.
#[derive(Clone, Debug)]
struct Model {
    /// key -> (main, sub, value or None for a tombstone), oldest first.
    history: BTreeMap<Vec<u8>, Vec<Revision>>,
    current: i64,
    compacted: i64,
    /// (table, key) -> value.
    aux: BTreeMap<(u8, Vec<u8>), Vec<u8>>,
    consistent_index: u64,
}

fn in_bounds(user_key: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    match range_end {
        [] => user_key == key,
        [0] => user_key >= key,
        end => user_key >= key && user_key < end,
    }
}

impl Default for Model {
    /// A new store is at revision 1, as etcd.
    fn default() -> Model {
        Model { history: BTreeMap::new(), current: 1, compacted: 0, aux: BTreeMap::new(), consistent_index: 0 }
    }
}

impl Model {
    fn visible(&self, key: &[u8], revision: i64) -> Option<&KeyValue> {
        let revisions = self.history.get(key)?;
        revisions.iter().rev().find(|(main, _, _)| *main <= revision)?.2.as_ref()
    }

    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        options: &RangeOptions,
        current: i64,
    ) -> Result<RangeResult, MvccError> {
        if options.revision > current {
            return Err(MvccError::FutureRevision);
        }
        let revision = if options.revision <= 0 { current } else { options.revision };
        if revision < self.compacted {
            return Err(MvccError::Compacted);
        }
        let mut result = RangeResult { kvs: Vec::new(), count: 0, revision: current };
        for user_key in self.history.keys().filter(|k| in_bounds(k, key, range_end)) {
            let Some(kv) = self.visible(user_key, revision) else { continue };
            result.count += 1;
            let under_limit = options.limit <= 0 || (result.kvs.len() as i64) < options.limit;
            if !options.count_only && under_limit {
                let mut kv = kv.clone();
                if options.keys_only {
                    kv.value.clear();
                }
                result.kvs.push(kv);
            }
        }
        Ok(result)
    }

    fn write(&mut self, key: &[u8], main: i64, sub: i64, kv: Option<KeyValue>) {
        self.history.entry(key.to_vec()).or_default().push((main, sub, kv));
    }

    fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        if revision <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if revision > self.current {
            return Err(MvccError::FutureRevision);
        }
        self.compacted = revision;
        for revisions in self.history.values_mut() {
            let Some(newest) = revisions.iter().rposition(|(main, _, _)| *main <= revision) else { continue };
            let drop_newest = revisions[newest].2.is_none();
            revisions.drain(..newest + usize::from(drop_newest));
        }
        self.history.retain(|_, revisions| !revisions.is_empty());
        Ok(())
    }

    fn entry_count(&self) -> u64 {
        self.history.values().map(|r| r.len() as u64).sum()
    }

    fn aux_change(&mut self, table: u8, key: &[u8], value: Option<Vec<u8>>) -> bool {
        match value {
            Some(value) => self.aux.insert((table, key.to_vec()), value).is_some(),
            None => self.aux.remove(&(table, key.to_vec())).is_some(),
        }
    }

    fn aux_scan(&self, table: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
        let from = (table, Vec::new());
        self.aux.range(from..).take_while(|((t, _), _)| *t == table).map(|((_, k), v)| (k.clone(), v.clone())).collect()
    }
}

/// A write of one txn as the shadow saw it, to replay.
#[derive(Clone, Debug)]
enum ShadowWrite {
    Put { key: Vec<u8>, value: Vec<u8>, lease: i64 },
    Delete { key: Vec<u8>, end: Vec<u8> },
}

/// What changed the shadow since its last checkpoint: a txn's writes in order, or a
/// compaction (one that succeeded) at its revision.
#[derive(Clone, Debug)]
enum ShadowChange {
    Txn(Vec<ShadowWrite>),
    Compact(i64),
}

struct Harness {
    keys: Vec<Vec<u8>>,
    aux_keys: Vec<Vec<u8>>,
    sim: Arc<SimFile>,
    store: Store,
    /// The writer's state, the last commit's (what snapshots see) and the last checkpoint's.
    model: Model,
    committed: Model,
    durable: Model,
    snapshots: Vec<(Snapshot, RangeResult)>,
    /// Sees the same txns and compactions, and commits only at the store's checkpoints (so
    /// that it crashes back to the same state): its HashKV must be equal.
    shadow: Store,
    shadow_sim: Arc<SimFile>,
    /// The shadow's changes since its last checkpoint, and how many of them the store's last
    /// published commit holds. The shadow cannot drop writes made after that commit (it has
    /// no commit there), so when the store aborts a speculative commit the shadow reopens at
    /// its checkpoint (the store's last one) and replays the published part of the log.
    shadow_log: Vec<ShadowChange>,
    shadow_log_published: usize,
    commits: u64,
}

fn open_sim(image: &[u8]) -> (Arc<SimFile>, Store) {
    let sim = Arc::new(SimFile::from_image(image, SIM_CAPACITY_BYTES));
    let mut store = Store::open_file(sim.clone(), StoreOptions::default()).expect("the store opens");
    // Tiny compaction steps: compactions stay pending across writes, checkpoints and reopens.
    store.set_compaction_keys_per_step(3);
    (sim, store)
}

fn all_keys() -> (Vec<u8>, Vec<u8>) {
    (vec![0], vec![0])
}

fn end_key(keys: &[Vec<u8>], end: usize) -> Vec<u8> {
    match end {
        0 => Vec::new(),
        1 => vec![0],
        n => keys[n - 2].clone(),
    }
}

/// Revisions 0 (current) and from before the compaction to just past the current one.
fn range_options(spec: &RangeSpec, current: i64) -> RangeOptions {
    let revision = if spec.revision < 40 { 0 } else { (spec.revision as i64 - 40) * (current + 2) / 215 };
    RangeOptions { revision, limit: spec.limit as i64, keys_only: spec.keys_only, count_only: spec.count_only }
}

impl Harness {
    fn new() -> Harness {
        let (sim, store) = open_sim(&[]);
        let (shadow_sim, shadow) = open_sim(&[]);
        Harness {
            keys: key_table(),
            aux_keys: aux_key_table(),
            sim,
            store,
            model: Model::default(),
            committed: Model::default(),
            durable: Model::default(),
            snapshots: Vec::new(),
            shadow,
            shadow_sim,
            shadow_log: Vec::new(),
            shadow_log_published: 0,
            commits: 0,
        }
    }

    fn txn(&mut self, ops: &[TxnOp]) {
        let revision = self.model.current + 1;
        let mut sub = 0;
        let mut txn = self.store.write();
        let mut shadow = self.shadow.write();
        let mut shadow_writes = Vec::new();
        assert_eq!(txn.revision(), revision);
        for op in ops {
            match op {
                TxnOp::Put { key, value_len, lease } => {
                    let key = &self.keys[*key];
                    let value = value_bytes(revision * 100 + sub, *value_len);
                    let read = if sub > 0 { revision } else { revision - 1 };
                    let previous = self.model.visible(key, read).cloned();
                    let (create_revision, version) =
                        previous.as_ref().map_or((revision, 1), |p| (p.create_revision, p.version + 1));
                    let kv = KeyValue {
                        key: key.clone(),
                        create_revision,
                        mod_revision: revision,
                        version,
                        value: value.clone(),
                        lease: *lease,
                    };
                    self.model.write(key, revision, sub, Some(kv));
                    // Every other put goes through the variant that returns only the previous
                    // lease (the server's Put without prev_kv); the checks that follow read what
                    // both wrote.
                    if (revision + sub) % 2 == 0 {
                        assert_eq!(txn.put(key, &value, *lease), previous, "put's previous value");
                    } else {
                        let previous_lease = previous.as_ref().map(|p| p.lease);
                        assert_eq!(
                            txn.put_returning_previous_lease(key, &value, *lease),
                            previous_lease,
                            "put's previous lease"
                        );
                    }
                    sub += 1;
                    shadow.put(key, &value, *lease);
                    shadow_writes.push(ShadowWrite::Put { key: key.clone(), value, lease: *lease });
                }
                TxnOp::Delete { key, end } => {
                    let (key, end) = (self.keys[*key].clone(), end_key(&self.keys, *end));
                    let read = if sub > 0 { revision } else { revision - 1 };
                    let expected = self.model.range(&key, &end, &RangeOptions::default(), read).unwrap().kvs;
                    for kv in &expected {
                        self.model.write(&kv.key, revision, sub, None);
                        sub += 1;
                    }
                    assert_eq!(txn.delete_range(&key, &end), expected, "delete_range's deleted keys");
                    shadow.delete_range(&key, &end);
                    shadow_writes.push(ShadowWrite::Delete { key, end });
                }
                TxnOp::Aux { table, key, value_len } => {
                    let key = &self.aux_keys[*key];
                    let value = value_len.map(|len| value_bytes(revision * 100 + sub + 50, len));
                    let existed = self.model.aux_change(*table, key, value.clone());
                    match value {
                        Some(value) => txn.aux_put(*table, key, &value),
                        None => assert_eq!(txn.aux_delete(*table, key), existed, "aux_delete in a txn"),
                    }
                    let expected = self.model.aux.get(&(*table, key.clone())).cloned();
                    assert_eq!(txn.aux_get(*table, key), expected, "aux_get in a txn");
                }
                TxnOp::Range(spec) => {
                    let current = if sub > 0 { revision } else { revision - 1 };
                    let (key, end, options) =
                        (&self.keys[spec.key], end_key(&self.keys, spec.end), range_options(spec, current));
                    assert_eq!(
                        txn.range(key, &end, &options),
                        self.model.range(key, &end, &options, current),
                        "range in a txn"
                    );
                }
            }
        }
        let expected_end = if sub > 0 { revision } else { revision - 1 };
        assert_eq!(txn.end(), expected_end);
        assert_eq!(shadow.end(), expected_end);
        self.model.current = expected_end;
        self.shadow_log.push(ShadowChange::Txn(shadow_writes));
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Txn(ops) => self.txn(ops),
            Op::Compact(choice) => {
                let span = self.model.current - self.model.compacted + 2;
                let revision = self.model.compacted - 1 + (*choice as i64 * span) / 255;
                let expected = self.model.compact(revision);
                assert_eq!(self.store.compact(revision), expected, "compact({revision})");
                assert_eq!(self.shadow.compact(revision), expected);
                if expected.is_ok() {
                    self.shadow_log.push(ShadowChange::Compact(revision));
                }
            }
            Op::Range(spec) => {
                let current = self.model.current;
                let (key, end, options) =
                    (&self.keys[spec.key], end_key(&self.keys, spec.end), range_options(spec, current));
                let txn = self.store.write();
                assert_eq!(
                    txn.range(key, &end, &options),
                    self.model.range(key, &end, &options, current),
                    "writer range"
                );
                drop(txn);
                let snapshot = self.store.reader().snapshot();
                let current = self.committed.current;
                let options = range_options(spec, current);
                let expected = self.committed.range(key, &end, &options, current);
                assert_eq!(snapshot.range(key, &end, &options), expected, "snapshot range");
            }
            Op::Commit => self.commit(Durability::Durable),
            Op::CommitVisible => self.commit(Durability::Visible),
            Op::Speculate(publish) => {
                self.next_consistent_index();
                let job = self.store.prepare_speculative_commit().expect("prepare a speculative commit");
                let done = job.run();
                if *publish {
                    self.store.finish_commit(done).expect("finish a speculative commit");
                    self.published(Durability::Visible);
                } else {
                    self.store.abort_commit(done).expect("abort a speculative commit");
                    // Every write since the last published commit is gone, the consistent
                    // index set for this one included (`commits` did not advance).
                    self.model = self.committed.clone();
                    self.reopen_shadow_at_published();
                    self.verify_aborted();
                }
            }
            Op::Reopen => {
                self.commit(Durability::Durable);
                let image = self.sim.crash_image(CrashMode::DropUnsynced, 0);
                (self.sim, self.store) = open_sim(&image);
                self.verify_reopened();
            }
            Op::Crash(tear) => {
                let mode = if *tear { CrashMode::TearUnsynced } else { CrashMode::DropUnsynced };
                let image = self.sim.crash_image(mode, self.commits);
                (self.sim, self.store) = open_sim(&image);
                let shadow_image = self.shadow_sim.crash_image(CrashMode::DropUnsynced, 0);
                (self.shadow_sim, self.shadow) = open_sim(&shadow_image);
                self.shadow_log.clear();
                self.shadow_log_published = 0;
                self.model = self.durable.clone();
                self.committed = self.durable.clone();
                self.verify_reopened();
            }
            Op::Aux { table, key, value_len } => {
                let key = &self.aux_keys[*key];
                let value = value_len.map(|len| value_bytes(self.model.current * 100 + 99, len));
                let existed = self.model.aux_change(*table, key, value.clone());
                match value {
                    Some(value) => self.store.aux_put(*table, key, &value),
                    None => assert_eq!(self.store.aux_delete(*table, key), existed, "aux_delete"),
                }
            }
            Op::AuxRead(table) => {
                assert_eq!(self.store.aux_scan(*table), self.model.aux_scan(*table), "writer aux_scan");
                let snapshot = self.store.reader().snapshot();
                assert_eq!(snapshot.aux_scan(*table), self.committed.aux_scan(*table), "snapshot aux_scan");
                for key in &self.aux_keys {
                    let expected = self.committed.aux.get(&(*table, key.clone()));
                    assert_eq!(snapshot.aux_get(*table, key).as_ref(), expected, "snapshot aux_get");
                }
            }
            Op::TakeSnapshot => {
                let snapshot = self.store.reader().snapshot();
                let (key, end) = all_keys();
                let expected =
                    self.committed.range(&key, &end, &RangeOptions::default(), self.committed.current).unwrap();
                assert_eq!(snapshot.revision(), self.committed.current);
                self.snapshots.push((snapshot, expected));
            }
            Op::Defragment => {
                self.store.defragment_step().expect("defragment step");
            }
            Op::DropSnapshot => {
                if !self.snapshots.is_empty() {
                    self.snapshots.remove(0);
                }
            }
        }
    }

    /// A commit with the next consistent index; a checkpoint also checkpoints the shadow.
    fn commit(&mut self, durability: Durability) {
        self.next_consistent_index();
        self.store.commit_with(durability).expect("commit");
        self.published(durability);
    }

    /// Sets the consistent index the next commit saves: one past the last published commit's.
    fn next_consistent_index(&mut self) {
        self.model.consistent_index = self.commits + 1;
        self.store.set_consistent_index(self.commits + 1);
    }

    /// After the store published a commit: the writer's state is the committed one, and for
    /// a checkpoint the durable one too (the shadow checkpoints with it, its log starts anew).
    fn published(&mut self, durability: Durability) {
        self.commits += 1;
        self.committed = self.model.clone();
        if durability == Durability::Durable {
            self.shadow.commit().expect("shadow checkpoint");
            self.durable = self.model.clone();
            self.shadow_log.clear();
        }
        self.shadow_log_published = self.shadow_log.len();
        assert_eq!(self.store.durable_consistent_index(), self.durable.consistent_index);
        self.verify_snapshots();
    }

    /// After an abort: the shadow drops the changes made since the store's last published
    /// commit by reopening at its checkpoint and replaying the ones before it.
    fn reopen_shadow_at_published(&mut self) {
        self.shadow_log.truncate(self.shadow_log_published);
        let image = self.shadow_sim.crash_image(CrashMode::DropUnsynced, 0);
        (self.shadow_sim, self.shadow) = open_sim(&image);
        assert_eq!(self.shadow.current_revision(), self.durable.current, "the shadow reopens at the checkpoint");
        for change in &self.shadow_log {
            match change {
                ShadowChange::Txn(writes) => {
                    let mut txn = self.shadow.write();
                    for write in writes {
                        match write {
                            ShadowWrite::Put { key, value, lease } => {
                                txn.put(key, value, *lease);
                            }
                            ShadowWrite::Delete { key, end } => {
                                txn.delete_range(key, end);
                            }
                        }
                    }
                    txn.end();
                }
                ShadowChange::Compact(revision) => {
                    self.shadow.compact(*revision).expect("a logged compaction replays");
                }
            }
        }
        assert_eq!(
            self.shadow.current_revision(),
            self.committed.current,
            "the shadow replays to the published commit"
        );
    }

    /// After an abort: the writer is the last published commit (state, free list and all),
    /// and what readers see has not changed.
    fn verify_aborted(&mut self) {
        assert_eq!(self.store.consistent_index(), self.committed.consistent_index, "consistent index after abort");
        assert_eq!(self.store.current_revision(), self.committed.current, "revision after abort");
        assert_eq!(self.store.compact_revision(), self.committed.compacted, "compact revision after abort");
        let (key, end) = all_keys();
        let txn = self.store.write();
        let got = txn.range(&key, &end, &RangeOptions::default());
        drop(txn);
        let expected = self.committed.range(&key, &end, &RangeOptions::default(), self.committed.current);
        assert_eq!(got, expected, "writer range after abort");
        // Every page is reachable from the published meta or on the free list, exactly once:
        // the aborted commit's pages went back, the pages it freed did not.
        self.store.check().expect("check after abort");
        self.store.check_durable().expect("check of the metas on disk after abort");
        self.verify_snapshots();
        for table in 0..AUX_TABLE_COUNT {
            assert_eq!(self.store.aux_scan(table), self.committed.aux_scan(table), "aux table {table} after abort");
        }
        assert_eq!(self.store.hash_kv(0), self.shadow.hash_kv(0), "the shadow is back at the published commit too");
    }

    /// After a reopen: the store is its last checkpoint, intact.
    fn verify_reopened(&self) {
        self.store.check().expect("check after reopen");
        self.store.check_durable().expect("check of the metas on disk after reopen");
        assert_eq!(self.store.consistent_index(), self.durable.consistent_index);
        assert_eq!(self.store.current_revision(), self.durable.current);
        for table in 0..AUX_TABLE_COUNT {
            assert_eq!(self.store.aux_scan(table), self.durable.aux_scan(table), "aux table {table} after reopen");
        }
        let (key, end) = all_keys();
        let got = self.store.reader().snapshot().range(&key, &end, &RangeOptions::default()).unwrap();
        assert_eq!(got, self.durable.range(&key, &end, &RangeOptions::default(), self.durable.current).unwrap());
    }

    /// Live snapshots read what they read when taken, whatever the writer did since.
    fn verify_snapshots(&self) {
        let (key, end) = all_keys();
        for (snapshot, expected) in &self.snapshots {
            let options = RangeOptions { revision: snapshot.revision(), ..RangeOptions::default() };
            let got = snapshot.range(&key, &end, &options).expect("a snapshot reads its own revision");
            assert_eq!(got.kvs, expected.kvs, "snapshot at revision {} changed", snapshot.revision());
        }
    }

    fn finish(&mut self) {
        while self.store.compact_step() {}
        self.commit(Durability::Durable);
        self.store.check().expect("check");
        self.store.check_durable().expect("check of the metas on disk");
        for table in 0..AUX_TABLE_COUNT {
            let snapshot = self.store.reader().snapshot();
            assert_eq!(snapshot.aux_scan(table), self.model.aux_scan(table), "aux table {table}");
        }
        assert_eq!(self.store.kv_entry_count(), self.model.entry_count(), "compaction keeps exactly etcd's revisions");
        let (key, end) = all_keys();
        let got = self.store.reader().snapshot().range(&key, &end, &RangeOptions::default()).unwrap();
        assert_eq!(got, self.model.range(&key, &end, &RangeOptions::default(), self.model.current).unwrap());
        assert_eq!(self.store.hash_kv(0), self.shadow.hash_kv(0), "equal histories give equal HashKV");
        assert!(self.store.size_in_use_bytes() <= self.store.size_bytes());
    }
}

/// PROPTEST_CASES raises the number of cases (64 by default keeps the suite fast).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        let mut harness = Harness::new();
        for op in &ops {
            harness.apply(op);
        }
        harness.finish();
    }
}

/// A long deterministic run: deep trees, many checkpoints, compactions and page reuse.
#[test]
fn long_random_history_matches_model() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let ops = prop::collection::vec(op(), 20000).new_tree(&mut runner).unwrap().current();
    let mut harness = Harness::new();
    for (index, op) in ops.iter().enumerate() {
        harness.apply(op);
        if index % 500 == 499 {
            harness.store.check().unwrap_or_else(|e| panic!("check after op {index}: {e}"));
            harness
                .store
                .check_durable()
                .unwrap_or_else(|e| panic!("check of the metas on disk after op {index}: {e}"));
        }
    }
    harness.finish();
    eprintln!(
        "revision {} compacted {} entries {} size {} in use {}",
        harness.model.current,
        harness.model.compacted,
        harness.store.kv_entry_count(),
        harness.store.size_bytes(),
        harness.store.size_in_use_bytes()
    );
}

#[test]
fn errors_have_etcds_messages() {
    assert_eq!(MvccError::Compacted.to_string(), "mvcc: required revision has been compacted");
    assert_eq!(MvccError::FutureRevision.to_string(), "mvcc: required revision is a future revision");
}

#[test]
fn many_keys_make_a_deep_tree_that_scans_in_order() {
    let (_sim, mut store) = open_sim(&[]);
    let count = 20_000u32;
    for chunk in 0..20u32 {
        let mut txn = store.write();
        for i in (chunk..count).step_by(20) {
            txn.put(&i.to_be_bytes(), &value_bytes(i as i64, 40), 0);
        }
        txn.end();
        store.commit().unwrap();
    }
    store.check().unwrap();
    let snapshot = store.reader().snapshot();
    let all = snapshot.range(&[0], &[0], &RangeOptions::default()).unwrap();
    assert_eq!(all.count, count as i64);
    assert!(all.kvs.iter().enumerate().all(|(i, kv)| kv.key == (i as u32).to_be_bytes()));
    let limited = snapshot
        .range(&100u32.to_be_bytes(), &200u32.to_be_bytes(), &RangeOptions { limit: 10, ..Default::default() })
        .unwrap();
    assert_eq!((limited.count, limited.kvs.len()), (100, 10));
    drop(snapshot);
    let mut txn = store.write();
    assert_eq!(txn.delete_range(&[0], &[0]).len(), count as usize);
    let revision = txn.end();
    store.compact(revision).unwrap();
    assert!(store.compaction_pending(), "40000 keys take more than one step");
    store.commit().unwrap();
    while store.compact_step() {}
    store.commit().unwrap();
    store.check().unwrap();
    assert_eq!(store.kv_entry_count(), 0);
}

/// Node searches compare the slot heads (the bytes after the prefix a node's keys share) and
/// read cells only among equal heads. Keys with long shared prefixes, keys that differ past the
/// head's bits, and probes inside, between, before and after them all find what a sorted set
/// finds.
#[test]
fn searches_find_keys_that_share_long_prefixes() {
    let (_sim, mut store) = open_sim(&[]);
    let mut keys = std::collections::BTreeSet::new();
    for i in 0..6_000u32 {
        let namespace = i % 7;
        // Names that differ only in their last byte, far past any head's 20 bits.
        keys.insert(format!("/registry/pods/namespace-{namespace}/web-0123456789-{:05}", i / 7).into_bytes());
        keys.insert(format!("/registry/pods/namespace-{namespace}/w{:03}", i % 1000).into_bytes());
    }
    let mut order: Vec<&Vec<u8>> = keys.iter().collect();
    let mut random = 0x9E37_79B9_7F4A_7C15u64;
    for index in (1..order.len()).rev() {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        order.swap(index, (random % (index as u64 + 1)) as usize);
    }
    for chunk in order.chunks(1000) {
        let mut txn = store.write();
        for key in chunk {
            txn.put(key, b"v", 0);
        }
        txn.end();
        store.commit().unwrap();
    }
    store.check().unwrap();
    let snapshot = store.reader().snapshot();
    let first_at_or_after = |probe: &[u8]| {
        let options = RangeOptions { limit: 1, keys_only: true, ..Default::default() };
        snapshot.range(probe, &[0], &options).unwrap().kvs.first().map(|kv| kv.key.clone())
    };
    let mut probes: Vec<Vec<u8>> = vec![b"/".to_vec(), b"/registry/pods/".to_vec(), vec![0xFF; 3]];
    for key in keys.iter().step_by(3) {
        probes.push(key.clone());
        probes.push([key.as_slice(), b"\0"].concat());
        probes.push(key[..key.len() - 1].to_vec());
        let mut bumped = key.clone();
        *bumped.last_mut().unwrap() += 1;
        probes.push(bumped);
    }
    for probe in &probes {
        let expected = keys.range(probe.clone()..).next().cloned();
        assert_eq!(first_at_or_after(probe), expected, "first key at or after {:?}", String::from_utf8_lossy(probe));
        let exact = snapshot.range(probe, &[], &RangeOptions::default()).unwrap();
        assert_eq!(exact.count, i64::from(keys.contains(probe)), "point get of {:?}", String::from_utf8_lossy(probe));
    }
}

fn aux_value(table: u8, id: u32, round: u32) -> Vec<u8> {
    let len = if id.is_multiple_of(37) { 9000 } else { 20 + (id % 90) as usize };
    value_bytes((table as u32 * 1_000_003 + id * 31 + round) as i64, len)
}

/// Aux tables round trip across a reopen, a defragmentation (which moves their pages) and a
/// snapshot image, and stay apart from one another and from the key space.
#[test]
fn aux_tables_round_trip_across_reopen_defragment_and_image() {
    use ringd::mvcc::{AUX_TABLE_AUTH, AUX_TABLE_LEASES, AUX_TABLE_MEMBERS};
    let tables = [AUX_TABLE_LEASES, AUX_TABLE_MEMBERS, AUX_TABLE_AUTH];
    let (sim, mut store) = open_sim(&[]);
    let mut model = Model::default();
    for round in 0..4u32 {
        let mut txn = store.write();
        for key in 0..3000u32 {
            txn.put(&key.to_be_bytes(), &value_bytes(key as i64, 150), 0);
        }
        txn.end();
        for &table in &tables {
            for id in (round..2000).step_by(4) {
                let key = (id as u64).to_be_bytes();
                let value = aux_value(table, id, round);
                model.aux_change(table, &key, Some(value.clone()));
                store.aux_put(table, &key, &value);
            }
        }
        store.commit_with(if round % 2 == 0 { Durability::Visible } else { Durability::Durable }).unwrap();
    }
    // Delete most entries and keys: the file is mostly free pages, aux pages high up in it.
    for &table in &tables {
        for id in 0..2000u32 {
            if id % 10 != 0 {
                let key = (id as u64).to_be_bytes();
                assert_eq!(store.aux_delete(table, &key), model.aux_change(table, &key, None));
            }
        }
    }
    assert!(!store.aux_delete(AUX_TABLE_LEASES, b"never there"));
    let mut txn = store.write();
    txn.delete_range(&100u32.to_be_bytes(), &[0]);
    let revision = txn.end();
    store.compact(revision).unwrap();
    while store.compact_step() {}
    store.commit().unwrap();
    let verify = |store: &Store, what: &str| {
        store.check().unwrap_or_else(|e| panic!("{what}: {e}"));
        let snapshot = store.reader().snapshot();
        for &table in &tables {
            assert_eq!(store.aux_scan(table), model.aux_scan(table), "{what}: writer, table {table}");
            assert_eq!(snapshot.aux_scan(table), model.aux_scan(table), "{what}: snapshot, table {table}");
            assert_eq!(snapshot.aux_get(table, &1990u64.to_be_bytes()), Some(aux_value(table, 1990, 1990 % 4)));
            assert_eq!(snapshot.aux_get(table, &1991u64.to_be_bytes()), None);
        }
        assert!(snapshot.aux_scan(0).is_empty() && snapshot.aux_scan(4).is_empty(), "{what}: other tables");
        assert_eq!(snapshot.range(&[0], &[0], &RangeOptions::default()).unwrap().count, 100, "{what}: keys");
    };
    verify(&store, "before defragment");
    let size_before = store.size_bytes();
    store.defragment().unwrap();
    verify(&store, "after defragment");
    assert!(store.size_bytes() * 3 < size_before, "defragment shrinks {size_before} to {}", store.size_bytes());
    let (_, reopened) = open_sim(&sim.crash_image(CrashMode::DropUnsynced, 0));
    verify(&reopened, "after reopen");
    let image = reopened.reader().snapshot().image().unwrap();
    let mut bytes = Vec::new();
    while (bytes.len() as u64) < image.len_bytes() {
        image.read_chunk(bytes.len() as u64, 1 << 20, &mut bytes);
    }
    let (_, copy) = open_sim(&bytes);
    verify(&copy, "a copy from a snapshot image");
    assert_eq!(copy.hash(), reopened.hash(), "the image holds every tree, the aux tree included");
}

/// Every key's value as the writer reads it (its uncommitted writes included).
fn writer_contents(store: &mut Store) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let (key, end) = all_keys();
    let txn = store.write();
    let got = txn.range(&key, &end, &RangeOptions::default()).expect("a range at the current revision");
    drop(txn);
    got.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

/// Speculative commits dropped round after round: each abort leaves exactly the published
/// state, and the pages its job wrote go back to the free list, so the next round takes them
/// again and the file stops growing. A speculation that is published then checkpointed
/// survives a crash; the dropped ones (the last one's pages never synced) leave no trace.
#[test]
fn an_aborted_speculative_commit_leaves_the_published_state_and_frees_its_pages() {
    let key = |i: u32| format!("/registry/pods/ns/pod-{i:05}").into_bytes();
    let key_count = 4000u32;
    let (sim, mut store) = open_sim(&[]);
    // Three generations of every key in visible commits: trees of several levels, and free
    // pages (the older generations' nodes) for the speculative commits to write.
    let mut published = BTreeMap::new();
    let mut index = 0;
    for generation in 0..3i64 {
        let mut txn = store.write();
        for i in 0..key_count {
            let value = value_bytes(generation * 10_000 + i as i64, 120);
            txn.put(&key(i), &value, 0);
            published.insert(key(i), value);
        }
        txn.end();
        store.aux_put(AUX_TABLE_LEASES, &[generation as u8], b"published");
        index += 1;
        store.set_consistent_index(index);
        store.commit_with(Durability::Visible).unwrap();
    }
    let published_revision = store.current_revision();
    let published_hash = store.hash_kv(0).unwrap();
    let published_aux = store.aux_scan(AUX_TABLE_LEASES);
    assert_eq!(published_aux.len(), 3);
    // (size of the published commit, length of the file) after each round.
    let mut sizes = Vec::new();
    for round in 0..30u32 {
        // Puts over most leaves, a deleted range, an aux change and a compaction (whose
        // first step the commit takes): none of it survives the abort.
        let mut txn = store.write();
        for j in 0..300 {
            txn.put(&key((round * 131 + j * 13) % key_count), &value_bytes(-1 - round as i64, 200), 1);
        }
        assert_eq!(txn.delete_range(&key(round * 100), &key(round * 100 + 50)).len(), 50);
        txn.end();
        store.aux_put(AUX_TABLE_LEASES, &round.to_be_bytes(), b"aborted");
        assert!(store.aux_delete(AUX_TABLE_LEASES, &[0]));
        store.compact(published_revision - 1).unwrap();
        store.set_consistent_index(index + 1);
        let job = store.prepare_speculative_commit().unwrap();
        assert!(job.page_count() > 0, "round {round}: the speculative commit writes pages");
        let done = job.run();
        store.abort_commit(done).unwrap();
        assert_eq!(store.current_revision(), published_revision, "round {round}: revision");
        assert_eq!(store.compact_revision(), 0, "round {round}: compact revision");
        assert_eq!(store.consistent_index(), index, "round {round}: consistent index");
        assert_eq!(store.hash_kv(0).unwrap(), published_hash, "round {round}: HashKV");
        assert!(writer_contents(&mut store) == published, "round {round}: the writer reads the published keys");
        assert_eq!(store.aux_scan(AUX_TABLE_LEASES), published_aux, "round {round}: aux table");
        store.check().unwrap_or_else(|e| panic!("check after round {round}: {e}"));
        store.check_durable().unwrap_or_else(|e| panic!("check of the metas on disk after round {round}: {e}"));
        sizes.push((store.size_bytes(), sim.len_bytes().unwrap()));
    }
    // Each round's commit writes about half of the free pages; had an abort kept them, the
    // free pages would run out by the second round and every round would extend the file.
    assert_eq!(sizes[1], *sizes.last().unwrap(), "the file stops growing: (size, file length) {sizes:?}");

    // A speculation that is published, then a checkpoint.
    let mut txn = store.write();
    for i in (0..key_count).step_by(7) {
        let value = value_bytes(1_000_000 + i as i64, 90);
        txn.put(&key(i), &value, 2);
        published.insert(key(i), value);
    }
    txn.delete_range(&key(3900), &key(key_count));
    published.retain(|k, _| *k < key(3900));
    let finished_revision = txn.end();
    store.aux_put(AUX_TABLE_LEASES, b"finished", b"published");
    index += 1;
    store.set_consistent_index(index);
    let job = store.prepare_speculative_commit().unwrap();
    store.finish_commit(job.run()).unwrap();
    assert_eq!(store.reader().snapshot().revision(), finished_revision, "a finished speculation is published");
    index += 1;
    store.set_consistent_index(index);
    store.commit().unwrap();
    // One more dropped speculation after the checkpoint: its pages are written, never synced.
    let mut txn = store.write();
    for i in 0..1000 {
        txn.put(&key(i), b"dropped", 3);
    }
    txn.end();
    store.aux_put(AUX_TABLE_LEASES, b"dropped", b"dropped");
    store.set_consistent_index(index + 1);
    let job = store.prepare_speculative_commit().unwrap();
    store.abort_commit(job.run()).unwrap();
    store.check().unwrap();

    let (_, mut reopened) = open_sim(&sim.crash_image(CrashMode::TearUnsynced, 7));
    reopened.check().expect("check after the crash");
    reopened.check_durable().expect("check of the metas on disk after the crash");
    assert_eq!(reopened.current_revision(), finished_revision);
    assert_eq!(reopened.consistent_index(), index);
    assert!(writer_contents(&mut reopened) == published, "the crash keeps the finished writes, none of the aborted");
    let mut expected_aux = published_aux;
    expected_aux.push((b"finished".to_vec(), b"published".to_vec()));
    expected_aux.sort();
    assert_eq!(reopened.aux_scan(AUX_TABLE_LEASES), expected_aux);
}
