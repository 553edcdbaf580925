//! Crash and recovery tests of the MVCC store: the writer is stopped at a random I/O operation
//! of a random checkpoint (simulated file that drops or tears every unsynced write), the file
//! is reopened, and the last checkpoint must be there, intact (`check()`), and usable. With
//! visible commits between checkpoints, the writer is stopped at every I/O operation, unsynced
//! writes dropped, torn or all kept, and the reopened file must be exactly the last durable
//! checkpoint; page reuse between checkpoints never touches what a meta on disk reaches. Also:
//! open refuses foreign, unknown-version and corrupt files without touching them, and I/O
//! errors are sticky.

use std::collections::BTreeMap;
use std::sync::Arc;

use ringd::mvcc::{
    CrashMode, Durability, KeyValue, OpenError, RangeOptions, SimFile, Store, StoreError, StoreOptions, AUX_TABLE_AUTH,
    AUX_TABLE_LEASES, AUX_TABLE_MEMBERS,
};

const SIM_CAPACITY_BYTES: u64 = 256 << 20;
const PAGE_SIZE: usize = 4096;

struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// What a checkpoint must bring back: the live keys, the revisions, the aux tables and the
/// consistent index.
#[derive(Clone, Debug, Default, PartialEq)]
struct Expected {
    live: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
    compacted: i64,
    /// (revision, live keys at it) for a few older revisions still readable.
    history: Vec<(i64, Vec<KeyValue>)>,
    aux: Vec<AuxTable>,
    consistent_index: u64,
}

/// The tables the tests use and their (key, value) entries.
type AuxTable = Vec<(Vec<u8>, Vec<u8>)>;

const AUX_TABLES: [u8; 3] = [AUX_TABLE_LEASES, AUX_TABLE_MEMBERS, AUX_TABLE_AUTH];

fn open_sim(image: &[u8]) -> (Arc<SimFile>, Store) {
    let sim = Arc::new(SimFile::from_image(image, SIM_CAPACITY_BYTES));
    let store = Store::open_file(sim.clone(), StoreOptions::default()).unwrap_or_else(|e| panic!("reopen: {e}"));
    (sim, store)
}

fn all(store: &Store, revision: i64) -> Vec<KeyValue> {
    let options = RangeOptions { revision, ..RangeOptions::default() };
    store.reader().snapshot().range(&[0], &[0], &options).expect("readable revision").kvs
}

/// One random write txn (puts and deletes over 200 keys, some values in overflow pages).
fn random_txn(store: &mut Store, random: &mut Random) {
    let mut txn = store.write();
    for _ in 0..1 + random.below(30) {
        let key = format!("key{:03}", random.below(200)).into_bytes();
        if random.below(6) == 0 {
            txn.delete_range(&key, &format!("key{:03}", random.below(200)).into_bytes());
        } else {
            let len = if random.below(20) == 0 { 9000 } else { random.below(400) as usize };
            let value: Vec<u8> = (0..len).map(|i| (i as u64 + random.0) as u8).collect();
            txn.put(&key, &value, 0);
        }
    }
    txn.end();
}

fn snapshot_expected(store: &Store, previous: &Expected) -> Expected {
    let revision = store.current_revision();
    let live = all(store, 0).into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    let mut history: Vec<(i64, Vec<KeyValue>)> =
        previous.history.iter().filter(|(r, _)| *r >= store.compact_revision()).cloned().collect();
    if history.len() < 4 {
        history.push((revision, all(store, 0)));
    }
    let snapshot = store.reader().snapshot();
    let aux = AUX_TABLES.iter().map(|&table| snapshot.aux_scan(table)).collect();
    let consistent_index = snapshot.consistent_index();
    Expected { live, revision, compacted: store.compact_revision(), history, aux, consistent_index }
}

fn verify(store: &Store, expected: &Expected) {
    store.check().unwrap_or_else(|e| panic!("check after recovery: {e}"));
    store.check_durable().unwrap_or_else(|e| panic!("check of the metas on disk after recovery: {e}"));
    assert_eq!(store.current_revision(), expected.revision);
    assert_eq!(store.compact_revision(), expected.compacted);
    assert_eq!(store.consistent_index(), expected.consistent_index);
    assert_eq!(store.durable_consistent_index(), expected.consistent_index);
    assert_eq!(store.last_durable_txn(), store.committed_txn_id(), "a reopened store is its durable checkpoint");
    let aux: Vec<AuxTable> = AUX_TABLES.iter().map(|&table| store.aux_scan(table)).collect();
    assert_eq!(aux, expected.aux, "aux tables");
    let live: BTreeMap<_, _> = all(store, 0).into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    assert_eq!(live, expected.live);
    for (revision, kvs) in &expected.history {
        assert_eq!(&all(store, *revision), kvs, "range at revision {revision}");
    }
}

/// Runs checkpoints until the simulated crash; returns the expectations of the last durable
/// checkpoint and of the one in flight when the crash hit.
fn run_until_crash(store: &mut Store, random: &mut Random) -> (Expected, Expected) {
    let mut durable = Expected { revision: 1, aux: vec![Vec::new(); AUX_TABLES.len()], ..Expected::default() };
    for _ in 0..200 {
        for _ in 0..1 + random.below(3) {
            random_txn(store, random);
        }
        if random.below(5) == 0 && store.current_revision() > store.compact_revision() + 1 {
            let span = (store.current_revision() - store.compact_revision()) as u64;
            store.compact(store.compact_revision() + 1 + random.below(span) as i64).unwrap();
        }
        if random.below(8) == 0 {
            store.defragment_step().unwrap();
        }
        let in_flight = expected_of_writer(store, &durable);
        let job = store.prepare_commit().expect("prepare");
        let done = job.run();
        let failed = done.is_err();
        assert_eq!(store.finish_commit(done).is_err(), failed);
        if failed {
            assert!(store.failed().is_some());
            assert!(store.prepare_commit().is_err(), "I/O errors are sticky");
            return (durable, in_flight);
        }
        durable = snapshot_expected(store, &durable);
        assert_eq!(durable.live, in_flight.live);
    }
    panic!("the simulated crash never came");
}

/// What the next checkpoint will hold, read from the writer.
fn expected_of_writer(store: &mut Store, durable: &Expected) -> Expected {
    let txn = store.write();
    let kvs = txn.range(&[0], &[0], &RangeOptions::default()).unwrap().kvs;
    drop(txn);
    let live = kvs.iter().map(|kv| (kv.key.clone(), kv.clone())).collect();
    let history = durable.history.iter().filter(|(r, _)| *r >= store.compact_revision()).cloned().collect();
    let aux = AUX_TABLES.iter().map(|&table| store.aux_scan(table)).collect();
    let (revision, compacted, consistent_index) =
        (store.current_revision(), store.compact_revision(), store.consistent_index());
    Expected { live, revision, compacted, history, aux, consistent_index }
}

fn crash_and_recover(seed: u64, mode: CrashMode) {
    let mut random = Random(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let (sim, mut store) = open_sim(&[]);
    sim.crash_after_operations(random.below(400));
    let (durable, in_flight) = run_until_crash(&mut store, &mut random);
    assert!(sim.has_crashed());
    let image = sim.crash_image(mode, seed);
    drop(store);
    let (sim, mut store) = open_sim(&image);
    // Either the last durable checkpoint, or (if its meta page reached the disk whole) the
    // one in flight.
    if store.current_revision() == durable.revision && store.compact_revision() == durable.compacted {
        verify(&store, &durable);
    } else {
        verify(&store, &in_flight);
    }
    // Usable: more checkpoints, then a clean reopen.
    for _ in 0..5 {
        random_txn(&mut store, &mut random);
        store.commit().expect("commit after recovery");
    }
    let expected = snapshot_expected(&store, &Expected::default());
    store.check().expect("check after more checkpoints");
    store.check_durable().expect("check of the metas on disk after more checkpoints");
    let image = sim.crash_image(CrashMode::TearUnsynced, seed);
    drop(store);
    let (_, store) = open_sim(&image);
    verify(&store, &Expected { history: Vec::new(), ..expected });
}

#[test]
fn crash_at_random_points_drops_unsynced_writes() {
    for seed in 1..120 {
        crash_and_recover(seed, CrashMode::DropUnsynced);
    }
}

#[test]
fn crash_at_random_points_tears_unsynced_writes() {
    for seed in 1000..1120 {
        crash_and_recover(seed, CrashMode::TearUnsynced);
    }
}

#[test]
fn failed_fdatasync_is_sticky_and_readers_keep_the_last_checkpoint() {
    let (sim, mut store) = open_sim(&[]);
    let mut txn = store.write();
    txn.put(b"a", b"1", 0);
    txn.end();
    store.commit().unwrap();
    let reader = store.reader();
    let mut txn = store.write();
    txn.put(b"a", b"2", 0);
    txn.end();
    sim.fail_next_sync();
    let error = store.commit().unwrap_err();
    assert!(matches!(error, StoreError::Io { .. }), "{error}");
    assert_eq!(store.prepare_commit().unwrap_err(), error, "the same error, every time");
    let kvs = reader.snapshot().range(b"a", &[], &RangeOptions::default()).unwrap().kvs;
    assert_eq!(kvs[0].value, b"1");
}

#[test]
fn values_up_to_one_and_a_half_mebibytes_round_trip() {
    let (sim, mut store) = open_sim(&[]);
    let big: Vec<u8> = (0..(3 << 19)).map(|i: u32| (i * 7) as u8).collect();
    let mut txn = store.write();
    txn.put(b"big", &big, 7);
    txn.put(b"small", b"x", 0);
    txn.end();
    store.commit().unwrap();
    let image = sim.crash_image(CrashMode::DropUnsynced, 0);
    let (_, mut store) = open_sim(&image);
    store.check().unwrap();
    let kvs = store.reader().snapshot().range(b"big", &[], &RangeOptions::default()).unwrap().kvs;
    assert_eq!((kvs[0].value.len(), kvs[0].lease, kvs[0].value == big), (big.len(), 7, true));
    let keys_only = RangeOptions { keys_only: true, ..RangeOptions::default() };
    assert!(store.reader().snapshot().range(b"big", &[], &keys_only).unwrap().kvs[0].value.is_empty());
    let mut txn = store.write();
    txn.delete_range(b"big", &[]);
    let revision = txn.end();
    store.compact(revision).unwrap();
    store.commit().unwrap();
    store.commit().unwrap();
    store.check().unwrap();
    assert!(!store.compaction_pending());
    assert!(store.size_in_use_bytes() < 64 * 1024, "the overflow pages went back to the free list");
}

fn temp_store(contents: Option<&[u8]>) -> (tempfile::TempDir, std::path::PathBuf) {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("db");
    if let Some(contents) = contents {
        std::fs::write(&path, contents).unwrap();
    }
    (directory, path)
}

/// Opens `contents` as a store: it must be refused, name the file, and leave it unchanged.
fn refused(contents: &[u8]) -> OpenError {
    let (_directory, path) = temp_store(Some(contents));
    let error = Store::open(&path, StoreOptions::default()).err().expect("refused");
    assert!(error.to_string().contains(&path.display().to_string()), "names the file: {error}");
    assert_eq!(std::fs::read(&path).unwrap(), contents, "the refused file is not modified");
    error
}

fn valid_file() -> Vec<u8> {
    let (_directory, path) = temp_store(None);
    let mut store = Store::open(&path, StoreOptions::default()).unwrap();
    for round in 0..3 {
        let mut txn = store.write();
        for i in 0..300 {
            txn.put(format!("k{i}").as_bytes(), &[round; 100], 0);
        }
        txn.end();
        store.commit().unwrap();
    }
    drop(store);
    std::fs::read(&path).unwrap()
}

#[test]
fn open_refuses_foreign_unknown_and_corrupt_files() {
    assert!(matches!(refused(b"hello, I am a text file\n"), OpenError::Foreign { .. }));
    assert!(matches!(refused(&vec![0xAB; 3 * PAGE_SIZE]), OpenError::Foreign { .. }));
    let valid = valid_file();
    assert!(matches!(refused(&valid[..PAGE_SIZE]), OpenError::Corrupt { .. }), "truncated");
    assert!(matches!(refused(&valid[..valid.len() - PAGE_SIZE]), OpenError::Corrupt { .. }), "truncated tail");

    let mut unknown_version = valid.clone();
    unknown_version[8] = 9;
    assert!(matches!(refused(&unknown_version), OpenError::UnknownVersion { version: 9, .. }));

    let mut both_metas_bad = valid.clone();
    both_metas_bad[20] ^= 1;
    both_metas_bad[PAGE_SIZE + 20] ^= 1;
    let error = refused(&both_metas_bad);
    assert!(error.to_string().contains("both meta pages fail their checksum"), "{error}");

    // The newest meta's root page damaged: refused, never silently rolled back.
    let newest = if valid[16] > valid[PAGE_SIZE + 16] { 0 } else { 1 };
    let kv_root = u64::from_le_bytes(valid[newest * PAGE_SIZE + 24..][..8].try_into().unwrap()) as usize;
    let mut bad_root = valid.clone();
    bad_root[kv_root * PAGE_SIZE + 100] ^= 0xFF;
    let error = refused(&bad_root);
    assert!(error.to_string().contains("fails its checksum"), "{error}");
}

#[test]
fn a_torn_newest_meta_falls_back_to_the_previous_checkpoint() {
    let valid = valid_file();
    let newest = if valid[16] > valid[PAGE_SIZE + 16] { 0 } else { 1 };
    let mut torn = valid.clone();
    torn[newest * PAGE_SIZE + 40] ^= 0xFF;
    let (_directory, path) = temp_store(Some(&torn));
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    store.check().unwrap();
    assert_eq!(store.current_revision(), 3, "the checkpoint before the last (revisions 2, 3, 4)");
}

#[test]
fn a_real_file_survives_reopen_and_is_locked_while_open() {
    let (_directory, path) = temp_store(None);
    let mut store = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(matches!(Store::open(&path, StoreOptions::default()), Err(OpenError::Locked { .. })));
    let mut txn = store.write();
    txn.put(b"foo", b"bar", 0);
    txn.end();
    store.set_consistent_index(42);
    store.commit().unwrap();
    drop(store);
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    store.check().unwrap();
    assert_eq!((store.current_revision(), store.consistent_index()), (2, 42), "a new store is at revision 1, as etcd");
    assert_eq!(all(&store, 0)[0].value, b"bar");
}

#[test]
fn defragment_shrinks_the_file_while_a_reader_reads() {
    let (_directory, path) = temp_store(None);
    let mut store = Store::open(&path, StoreOptions::default()).unwrap();
    for round in 0..10u8 {
        let mut txn = store.write();
        for i in 0..6000 {
            txn.put(format!("key{i:05}").as_bytes(), &[round; 200], 0);
        }
        txn.end();
        store.commit().unwrap();
    }
    let mut txn = store.write();
    txn.delete_range(b"key00100", b"key05900");
    let revision = txn.end();
    store.compact(revision).unwrap();
    while store.compact_step() {}
    store.commit().unwrap();
    let reader = store.reader();
    let before = reader.snapshot();
    let expected = before.range(&[0], &[0], &RangeOptions::default()).unwrap();
    let size_before = store.size_bytes();
    store.defragment().unwrap();
    // The old snapshot still reads what it read (its pages were not reused).
    assert_eq!(before.range(&[0], &[0], &RangeOptions::default()).unwrap(), expected);
    drop(before);
    store.defragment().unwrap();
    store.check().unwrap();
    let size_after = store.size_bytes();
    eprintln!("defragment: {size_before} -> {size_after} bytes");
    assert!(size_after * 4 < size_before, "defragment shrinks {size_before} to {size_after}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size_after, "the file is truncated");
    assert_eq!(reader.snapshot().range(&[0], &[0], &RangeOptions::default()).unwrap().kvs, expected.kvs);
    drop((store, reader)); // the file stays locked while a reader of it lives
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    store.check().unwrap();
    assert_eq!(all(&store, 0), expected.kvs);
}

#[test]
fn an_unfinished_compaction_resumes_after_a_restart() {
    let (sim, mut store) = open_sim(&[]);
    for round in 0..3u8 {
        let mut txn = store.write();
        for i in 0..10_000 {
            txn.put(format!("key{i:05}").as_bytes(), &[round; 20], 0);
        }
        txn.end();
    }
    let revision = store.current_revision();
    store.compact(revision).unwrap();
    assert!(store.compaction_pending());
    store.commit().unwrap();
    let image = sim.crash_image(CrashMode::DropUnsynced, 0);
    let (_, mut store) = open_sim(&image);
    assert!(store.compaction_pending(), "the scan position is durable");
    assert_eq!(
        store.reader().snapshot().range(b"key", &[0], &RangeOptions { revision: revision - 1, ..Default::default() }),
        Err(ringd::mvcc::MvccError::Compacted)
    );
    while store.compact_step() {}
    store.commit().unwrap();
    store.check().unwrap();
    assert_eq!(store.kv_entry_count(), 10_000, "only the newest revision of each key is left");
    assert!(all(&store, 0).iter().all(|kv| kv.value == [2; 20] && kv.version == 3));
}

/// A snapshot's image (Maintenance.Snapshot) opens as a valid store at exactly the
/// snapshot's revision, even though the writer went on and reused free pages meanwhile.
#[test]
fn an_image_is_a_consistent_store_while_writes_go_on() {
    image_while_writes_go_on(Durability::Durable);
}

/// The same from a visible commit, as the server takes its images: that meta has no free list
/// on disk, so the image finds the free pages itself and carries a free list of its own.
#[test]
fn an_image_of_a_visible_commit_is_a_consistent_store_while_writes_go_on() {
    image_while_writes_go_on(Durability::Visible);
}

fn image_while_writes_go_on(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
    let put_round = |store: &mut Store, round: u32| {
        let mut txn = store.write();
        for key in 0..300u32 {
            txn.put(format!("key{key:04}").as_bytes(), format!("round{round}-{}", "x".repeat(200)).as_bytes(), 0);
        }
        txn.end();
        store.commit_with(durability).unwrap();
    };
    for round in 0..3 {
        put_round(&mut store, round);
    }
    store.compact(store.current_revision()).unwrap();
    while store.compact_step() {}
    store.commit_with(durability).unwrap();
    store.check().unwrap();
    let image = store.reader().snapshot().image().unwrap();
    let revision = image.revision();
    // Writes after the image reuse the pages the compaction freed.
    for round in 3..8 {
        put_round(&mut store, round);
        store.check().unwrap();
    }
    let mut bytes = Vec::new();
    let mut offset = 0;
    while offset < image.len_bytes() {
        let before = bytes.len();
        image.read_chunk(offset, 64 * 1024, &mut bytes);
        offset += (bytes.len() - before) as u64;
    }
    assert_eq!(bytes.len() as u64, image.len_bytes());
    let copy_path = dir.path().join("copy.db");
    std::fs::write(&copy_path, &bytes).unwrap();
    let copy = Store::open(&copy_path, StoreOptions::default()).unwrap();
    copy.check().unwrap();
    assert!(copy.size_in_use_bytes() < copy.size_bytes(), "the compaction's free pages are on the copy's free list");
    assert_eq!(copy.current_revision(), revision);
    let all = RangeOptions { revision: 0, limit: 0, keys_only: false, count_only: false };
    let result = copy.reader().snapshot().range(b"key", b"kez", &all).unwrap();
    assert_eq!(result.kvs.len(), 300);
    assert!(result.kvs.iter().all(|kv| kv.value.starts_with(b"round2-")));
}

/// A visible commit writes the pages of its tree changes and no free list: after a
/// compaction freed thousands of pages, one put still writes a handful of pages, where a free
/// list written each commit would take a page per 254 free pages.
#[test]
fn a_visible_commit_writes_no_free_list_however_long_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
    for round in 0..10u32 {
        let mut txn = store.write();
        for key in 0..2000u32 {
            txn.put(format!("key{key:05}").as_bytes(), format!("round{round}-{}", "x".repeat(300)).as_bytes(), 0);
        }
        txn.end();
        store.commit().unwrap();
    }
    store.compact(store.current_revision()).unwrap();
    while store.compact_step() {}
    store.commit().unwrap();
    store.commit().unwrap(); // both metas on disk past the compaction: its pages are free
    let free_pages = (store.size_bytes() - store.size_in_use_bytes()) / 4096;
    assert!(free_pages > 2000, "the compaction freed {free_pages} pages");
    for round in 0..3u8 {
        let mut txn = store.write();
        txn.put(b"key00007", &[round; 100], 0);
        txn.end();
        let job = store.prepare_commit_with(Durability::Visible).unwrap();
        assert!(job.page_count() <= 8, "a one-put visible commit wrote {} pages", job.page_count());
        store.finish_commit(job.run()).unwrap();
        store.check().unwrap();
    }
    // The next checkpoint writes the free list, and the store reopens from it.
    let job = store.prepare_commit().unwrap();
    assert!(job.page_count() as u64 > free_pages / 254, "the checkpoint writes the whole free list");
    store.finish_commit(job.run()).unwrap();
    store.check().unwrap();
    store.check_durable().unwrap();
    drop(store);
    let reopened = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
    reopened.check().unwrap();
    assert_eq!(all(&reopened, 0).iter().find(|kv| kv.key == b"key00007").unwrap().value, [2; 100]);
}

/// A few aux table changes (some values in overflow pages).
fn random_aux(store: &mut Store, random: &mut Random) {
    for _ in 0..random.below(4) {
        let table = AUX_TABLES[random.below(AUX_TABLES.len() as u64) as usize];
        let key = random.below(40).to_be_bytes();
        if random.below(3) == 0 {
            store.aux_delete(table, &key);
        } else {
            let len = if random.below(15) == 0 { 6000 } else { random.below(100) as usize };
            let value: Vec<u8> = (0..len).map(|i| (i as u64 ^ random.0) as u8).collect();
            store.aux_put(table, &key, &value);
        }
    }
}

/// One applied batch: random txns, sometimes a compaction or a defragmentation step, aux
/// table changes, and the batch's consistent index (its last Raft index).
fn random_batch(store: &mut Store, random: &mut Random, consistent_index: u64) {
    for _ in 0..1 + random.below(3) {
        random_txn(store, random);
    }
    if random.below(6) == 0 && store.current_revision() > store.compact_revision() + 1 {
        let span = (store.current_revision() - store.compact_revision()) as u64;
        store.compact(store.compact_revision() + 1 + random.below(span) as i64).unwrap();
    }
    if random.below(10) == 0 {
        store.defragment_step().unwrap();
    }
    random_aux(store, random);
    store.set_consistent_index(consistent_index);
}

/// How a run of visible commits and checkpoints ended.
struct VisibleRun {
    /// What the last durable checkpoint holds.
    durable: Expected,
    /// The checkpoint whose job the crash interrupted (its meta may have reached the disk).
    interrupted_checkpoint: Option<Expected>,
    crashed: bool,
}

/// Batches `first..first + batches`, each made visible; a durable checkpoint every 1 to 6
/// batches, as the apply loop will do. Stops at the first failed job (the simulated crash).
/// `checked`: prove after every commit that the metas on disk still reach intact pages.
fn run_visible_script(store: &mut Store, random: &mut Random, first: u64, batches: u64, checked: bool) -> VisibleRun {
    let mut durable = snapshot_expected(store, &Expected::default());
    let mut next_checkpoint = first + random.below(6);
    for batch in first..first + batches {
        random_batch(store, random, batch);
        let durability = if batch == next_checkpoint { Durability::Durable } else { Durability::Visible };
        if durability == Durability::Durable {
            next_checkpoint += 1 + random.below(6);
        }
        let interrupted = (durability == Durability::Durable).then(|| expected_of_writer(store, &durable));
        let job = store.prepare_commit_with(durability).expect("prepare");
        assert_eq!(job.is_durable(), durability == Durability::Durable, "every batch changes the store");
        let done = job.run();
        if store.finish_commit(done).is_err() {
            assert!(store.prepare_commit_with(Durability::Visible).is_err(), "I/O errors are sticky");
            return VisibleRun { durable, interrupted_checkpoint: interrupted, crashed: true };
        }
        assert_eq!(store.reader().snapshot().consistent_index(), batch, "readers see the commit at once");
        if durability == Durability::Durable {
            durable = snapshot_expected(store, &durable);
            assert_eq!((store.durable_consistent_index(), store.last_durable_txn()), (batch, store.committed_txn_id()));
        } else {
            assert_eq!(store.durable_consistent_index(), durable.consistent_index, "a visible commit is not durable");
        }
        if checked {
            store.check().unwrap_or_else(|e| panic!("check after batch {batch}: {e}"));
            store.check_durable().unwrap_or_else(|e| panic!("check of the metas on disk after batch {batch}: {e}"));
        }
    }
    VisibleRun { durable, interrupted_checkpoint: None, crashed: false }
}

/// Reopens a crash image: it must hold exactly the last durable checkpoint (or the one being
/// written, if its meta reached the disk), whatever the visible commits after it wrote.
fn recover(image: &[u8], run: &VisibleRun, context: &str) -> (Arc<SimFile>, Store) {
    let (sim, store) = open_sim(image);
    match &run.interrupted_checkpoint {
        Some(checkpoint) if store.consistent_index() == checkpoint.consistent_index => verify(&store, checkpoint),
        _ => {
            assert_eq!(store.consistent_index(), run.durable.consistent_index, "{context}: the last checkpoint");
            verify(&store, &run.durable);
        }
    }
    (sim, store)
}

/// Crashes a run of visible commits and checkpoints at every one of its I/O operations, with
/// unsynced writes dropped, torn or kept (in turn); each recovery must hold the last durable
/// checkpoint, pass check(), and go on: more batches, a crash, and a recovery again.
fn crash_at_every_operation(seed: u64, batches: u64) {
    let operations = {
        let (sim, mut store) = open_sim(&[]);
        let opened = sim.operation_count();
        let run = run_visible_script(&mut store, &mut Random(seed), 1, batches, true);
        assert!(!run.crashed);
        sim.operation_count() - opened
    };
    let modes = [CrashMode::DropUnsynced, CrashMode::TearUnsynced, CrashMode::KeepUnsynced];
    for crash_at in 0..operations {
        let mode = modes[((crash_at + seed) % 3) as usize];
        let context = format!("seed {seed}, crash at operation {crash_at} of {operations}, {mode:?}");
        let (sim, mut store) = open_sim(&[]);
        sim.crash_after_operations(crash_at);
        let run = run_visible_script(&mut store, &mut Random(seed), 1, batches, false);
        assert!(run.crashed && sim.has_crashed(), "{context}: the crash came");
        let image = sim.crash_image(mode, crash_at);
        drop(store);
        let (sim, mut store) = recover(&image, &run, &context);
        let mut random = Random((seed + crash_at).wrapping_mul(0x9E37_79B9) | 1);
        let first = store.consistent_index() + 1;
        let after = run_visible_script(&mut store, &mut random, first, 8, false);
        assert!(!after.crashed);
        drop(store);
        recover(&sim.crash_image(mode, crash_at + 1), &after, &context);
    }
    eprintln!("seed {seed}: crashed at each of {operations} operations of {batches} batches");
}

#[test]
fn visible_commits_crash_at_every_operation_and_recover_the_last_checkpoint() {
    for seed in [3, 11] {
        crash_at_every_operation(seed, 40);
    }
}

/// Batches of heavy churn: many keys rewritten (values inline and in overflow chains) or
/// deleted, frequent compactions, aux changes. Frees and reallocates pages all the time.
fn churn_batch(store: &mut Store, random: &mut Random, consistent_index: u64) {
    let mut txn = store.write();
    for _ in 0..200 {
        let key = format!("key{:04}", random.below(3000)).into_bytes();
        if random.below(4) == 0 {
            txn.delete_range(&key, &[]);
        } else {
            let len = if random.below(30) == 0 { 9000 } else { 100 + random.below(200) as usize };
            txn.put(&key, &vec![random.next() as u8; len], 0);
        }
    }
    txn.end();
    if consistent_index.is_multiple_of(7) {
        store.compact(store.current_revision() - 1).unwrap();
    }
    random_aux(store, random);
    store.set_consistent_index(consistent_index);
}

#[test]
fn page_reuse_between_checkpoints_never_touches_a_durable_page() {
    let (sim, mut store) = open_sim(&[]);
    let mut random = Random(77);
    let mut txn = store.write();
    for i in 0..3000 {
        let len = if i % 50 == 0 { 9000 } else { 200 };
        txn.put(format!("key{i:04}").as_bytes(), &vec![i as u8; len], 0);
    }
    txn.end();
    store.commit().unwrap();
    let size_after_load_bytes = store.size_bytes();
    let mut durable = snapshot_expected(&store, &Expected::default());
    let mut pinned = None;
    for batch in 1..=320u64 {
        churn_batch(&mut store, &mut random, batch);
        // Every 50 batches a checkpoint; the last 20 batches stay visible only.
        let durable_now = batch % 50 == 0;
        store.commit_with(if durable_now { Durability::Durable } else { Durability::Visible }).unwrap();
        store.check_durable().unwrap_or_else(|e| panic!("a visible commit reused a durable page (batch {batch}): {e}"));
        if durable_now {
            durable = snapshot_expected(&store, &durable);
        }
        // A snapshot of a visible commit reads the same while later commits reuse pages.
        match batch % 20 {
            5 => {
                let snapshot = store.reader().snapshot();
                let kvs = snapshot.range(&[0], &[0], &RangeOptions::default()).unwrap().kvs;
                pinned = Some((snapshot, kvs));
            }
            15 => {
                let (snapshot, kvs) = pinned.take().unwrap();
                assert_eq!(snapshot.range(&[0], &[0], &RangeOptions::default()).unwrap().kvs, kvs);
            }
            _ => {}
        }
    }
    store.check().unwrap();
    eprintln!(
        "churn: file {size_after_load_bytes} -> {} bytes, {} in use",
        store.size_bytes(),
        store.size_in_use_bytes()
    );
    // The file holds what both durable metas reach, the published commit and the one before
    // it (about four times the live pages when every leaf is rewritten between checkpoints);
    // without reuse between checkpoints it would grow by the live size every batch.
    assert!(store.size_bytes() < 5 * store.size_in_use_bytes(), "pages freed between checkpoints are reused");
    assert!(store.last_durable_txn() < store.committed_txn_id());
    for mode in [CrashMode::KeepUnsynced, CrashMode::TearUnsynced, CrashMode::DropUnsynced] {
        let (_, recovered) = open_sim(&sim.crash_image(mode, 5));
        verify(&recovered, &durable);
        assert_eq!(recovered.consistent_index(), 300);
    }
}

#[test]
fn visible_commits_are_read_at_once_without_fsync_and_a_checkpoint_makes_them_durable() {
    let (sim, mut store) = open_sim(&[]);
    let mut txn = store.write();
    txn.put(b"a", b"durable", 0);
    txn.end();
    store.aux_put(AUX_TABLE_LEASES, b"lease-1", b"ttl 10");
    store.set_consistent_index(10);
    store.commit().unwrap();
    let reader = store.reader();
    let syncs = sim.sync_count();
    for round in 0..5u8 {
        let mut txn = store.write();
        txn.put(b"a", &[round; 3], 0);
        txn.end();
        store.aux_put(AUX_TABLE_MEMBERS, &[round], b"member");
        store.set_consistent_index(11 + round as u64);
        store.commit_with(Durability::Visible).unwrap();
        let snapshot = reader.snapshot();
        assert_eq!(snapshot.range(b"a", &[], &RangeOptions::default()).unwrap().kvs[0].value, [round; 3]);
        assert_eq!(snapshot.aux_get(AUX_TABLE_MEMBERS, &[round]).as_deref(), Some(&b"member"[..]));
    }
    assert_eq!(sim.sync_count(), syncs, "visible commits never fdatasync");
    assert_eq!((store.consistent_index(), store.durable_consistent_index()), (15, 10));
    assert!(store.last_durable_txn() < store.committed_txn_id());
    // Every unsynced write kept, and still the checkpoint: no meta page was written.
    let (_, crashed) = open_sim(&sim.crash_image(CrashMode::KeepUnsynced, 0));
    crashed.check().unwrap();
    assert_eq!(all(&crashed, 0)[0].value, b"durable");
    assert_eq!(crashed.aux_scan(AUX_TABLE_LEASES), vec![(b"lease-1".to_vec(), b"ttl 10".to_vec())]);
    assert!(crashed.aux_scan(AUX_TABLE_MEMBERS).is_empty());
    assert_eq!(crashed.consistent_index(), 10);
    // A checkpoint with no tree changes makes the last visible commit's state durable: its
    // trees, and a free list (a visible commit keeps its own in memory), in one more txn.
    let committed = store.committed_txn_id();
    let job = store.prepare_commit().unwrap();
    assert!(job.is_durable());
    store.finish_commit(job.run()).unwrap();
    assert_eq!((store.committed_txn_id(), store.last_durable_txn()), (committed + 1, committed + 1));
    assert_eq!(sim.sync_count(), syncs + 2, "pages synced, then the meta");
    let nothing = store.prepare_commit().unwrap();
    assert!(!nothing.is_durable(), "nothing left to make durable");
    store.finish_commit(nothing.run()).unwrap();
    assert_eq!(sim.sync_count(), syncs + 2);
    let (_, reopened) = open_sim(&sim.crash_image(CrashMode::DropUnsynced, 0));
    reopened.check().unwrap();
    assert_eq!(all(&reopened, 0)[0].value, [4; 3]);
    assert_eq!(reopened.aux_scan(AUX_TABLE_MEMBERS).len(), 5);
    assert_eq!(reopened.consistent_index(), 15);
}

/// Reads the txn id of the meta in `slot` of a store file.
fn meta_txn(file: &[u8], slot: usize) -> u64 {
    u64::from_le_bytes(file[slot * PAGE_SIZE + 16..][..8].try_into().unwrap())
}

#[test]
fn a_checkpoint_replaces_the_older_meta_and_open_takes_the_newest_in_either_slot() {
    let (_directory, path) = temp_store(None);
    let mut store = Store::open(&path, StoreOptions::default()).unwrap();
    let mut checkpoints = Vec::new();
    // Visible commits between checkpoints give the durable metas txn ids of any parity.
    for (round, visible_commits) in [2u8, 1, 0, 3].into_iter().enumerate() {
        for commit in 0..=visible_commits {
            let mut txn = store.write();
            txn.put(b"k", &[round as u8, commit], 0);
            txn.end();
            let last = commit == visible_commits;
            store.commit_with(if last { Durability::Durable } else { Durability::Visible }).unwrap();
        }
        checkpoints.push((store.last_durable_txn(), store.current_revision()));
    }
    drop(store);
    let file = std::fs::read(&path).unwrap();
    let on_disk = [meta_txn(&file, 0), meta_txn(&file, 1)];
    let (newest, older) = (checkpoints[3], checkpoints[2]);
    assert!(on_disk.contains(&newest.0) && on_disk.contains(&older.0), "the two newest checkpoints: {on_disk:?}");
    let newest_slot = if on_disk[0] == newest.0 { 0 } else { 1 };
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.current_revision(), newest.1);
    drop(store);
    // The newest meta torn: the older checkpoint opens, intact.
    let mut torn = file.clone();
    torn[newest_slot * PAGE_SIZE + 40] ^= 0xFF;
    let (_directory, torn_path) = temp_store(Some(&torn));
    let store = Store::open(&torn_path, StoreOptions::default()).unwrap();
    store.check().unwrap();
    store.check_durable().unwrap();
    assert_eq!((store.committed_txn_id(), store.current_revision()), older);
}

#[test]
fn a_file_of_the_previous_format_is_refused_with_a_clear_message() {
    let mut old = valid_file();
    old[8] = 1;
    old[PAGE_SIZE + 8] = 1;
    let error = refused(&old);
    assert!(matches!(error, OpenError::UnknownVersion { version: 1, .. }), "{error}");
    assert!(error.to_string().contains("written by an older ringd"), "{error}");
}

/// Readers take snapshots at any moment, also while a commit's job writes: the job never
/// writes a page the published commit reaches, nor one a durable meta reaches.
#[test]
fn a_snapshot_taken_while_a_job_writes_reads_the_published_commit() {
    let (_sim, mut store) = open_sim(&[]);
    let reader = store.reader();
    let rewrite_all = |store: &mut Store, round: u32| {
        let mut txn = store.write();
        for key in 0..500u32 {
            txn.put(format!("key{key:03}").as_bytes(), format!("{round}-{}", "v".repeat(100)).as_bytes(), 0);
        }
        txn.end();
        store.aux_put(AUX_TABLE_LEASES, b"round", &round.to_le_bytes());
    };
    for round in 0..8u32 {
        rewrite_all(&mut store, 2 * round);
        store.commit_with(Durability::Visible).unwrap();
        let published = reader.snapshot().range(&[0], &[0], &RangeOptions::default()).unwrap();
        rewrite_all(&mut store, 2 * round + 1);
        let durability = if round % 3 == 2 { Durability::Durable } else { Durability::Visible };
        let job = store.prepare_commit_with(durability).unwrap();
        let during = reader.snapshot();
        let done = job.run();
        assert_eq!(during.range(&[0], &[0], &RangeOptions::default()).unwrap(), published, "round {round}");
        assert_eq!(during.aux_get(AUX_TABLE_LEASES, b"round"), Some((2 * round).to_le_bytes().to_vec()));
        store.finish_commit(done).unwrap();
        store.check_durable().unwrap();
    }
}
