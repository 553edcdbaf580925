//! Store micro-benchmarks on 1M keys (8-byte keys, 256-byte values), one core:
//! point get, put (puts/s before the checkpoint's fsync: one write txn per put, random
//! existing keys, then prepare_commit; 1k and 10k puts per checkpoint), the checkpoint's I/O
//! (pwrite + 2 fdatasync) and a visible commit's (pwrite only), batches of 1k puts end to end (puts, commit and its I/O) with a
//! durable checkpoint per batch against visible commits and a checkpoint every 10 or 100
//! batches (the apply loop of DESIGN §5), and range scans.
//!
//! cargo bench --bench mvcc   (in the mvcc lane: cd /work/lanes/mvcc && cargo bench)
//! MVCC_BENCH_DIR picks the directory of the db (the current one by default): put it on the
//! disk whose fdatasync you want to measure, not on a tmpfs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringd::mvcc::{Durability, RangeOptions, Store, StoreOptions};

/// The allocator of the `ringd` binary, so that the store is measured as the server runs it.
#[global_allocator]
static ALLOCATOR: ringd::allocator::Allocator = ringd::allocator::Allocator;

const KEY_COUNT: u64 = 1_000_000;
const VALUE_SIZE_BYTES: usize = 256;
const LOAD_BATCH: u64 = 20_000;
const PUT_BATCH: u64 = 1_000;
const PUT_BATCH_LARGE: u64 = 10_000;
/// Batches per durable checkpoint in the visible-commit cases.
const BATCHES_PER_CHECKPOINT: [u64; 2] = [10, 100];

/// Keys are spread over the u64 space so that random new keys land between existing ones.
fn key(index: u64) -> [u8; 8] {
    index.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn load(directory: &std::path::Path) -> Store {
    let started = Instant::now();
    let mut store = Store::open(&directory.join("db"), StoreOptions::default()).expect("open");
    let value = vec![0x5Au8; VALUE_SIZE_BYTES];
    for batch in 0..KEY_COUNT / LOAD_BATCH {
        for index in batch * LOAD_BATCH..(batch + 1) * LOAD_BATCH {
            let mut txn = store.write();
            txn.put(&key(index), &value, 0);
        }
        store.commit().expect("commit");
    }
    eprintln!("loaded {KEY_COUNT} keys in {:.1?}: file {} MiB", started.elapsed(), store.size_bytes() >> 20);
    store
}

fn benchmarks(criterion: &mut Criterion) {
    let directory = tempfile::tempdir_in(std::env::var("MVCC_BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let mut store = load(directory.path());
    let reader = store.reader();
    let mut random = Random(0x1234_5678);

    let mut group = criterion.benchmark_group("mvcc_1m");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));

    group.throughput(Throughput::Elements(1));
    let snapshot = reader.snapshot();
    group.bench_function("point_get", |bench| {
        bench.iter(|| {
            let result = snapshot.range(&key(random.next() % KEY_COUNT), &[], &RangeOptions::default()).unwrap();
            black_box(result.kvs.len())
        })
    });
    group.bench_function("point_get_with_new_snapshot", |bench| {
        bench.iter(|| {
            let snapshot = reader.snapshot();
            black_box(snapshot.range(&key(random.next() % KEY_COUNT), &[], &RangeOptions::default()).unwrap().count)
        })
    });
    drop(snapshot);

    // One etcd Put = one write txn (one revision), written as the server writes a Put without
    // prev_kv (`put_returning_previous_lease`); PUT_BATCH of them per checkpoint, timed up
    // to and including prepare_commit (the spill); the job's I/O runs outside the timing.
    group.throughput(Throughput::Elements(PUT_BATCH));
    let value = vec![0xA5u8; VALUE_SIZE_BYTES];
    group.bench_function("put_before_fsync", |bench| {
        bench.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                for _ in 0..PUT_BATCH {
                    let mut txn = store.write();
                    txn.put_returning_previous_lease(&key(random.next() % KEY_COUNT), &value, 0);
                }
                let job = store.prepare_commit().unwrap();
                elapsed += started.elapsed();
                let done = job.run();
                store.finish_commit(done).unwrap();
            }
            elapsed
        })
    });
    group.sample_size(10);
    group.throughput(Throughput::Elements(PUT_BATCH_LARGE));
    group.bench_function("put_before_fsync_10k_per_checkpoint", |bench| {
        bench.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                for _ in 0..PUT_BATCH_LARGE {
                    let mut txn = store.write();
                    txn.put_returning_previous_lease(&key(random.next() % KEY_COUNT), &value, 0);
                }
                let job = store.prepare_commit().unwrap();
                elapsed += started.elapsed();
                let done = job.run();
                store.finish_commit(done).unwrap();
            }
            elapsed
        })
    });
    group.throughput(Throughput::Elements(PUT_BATCH));
    group.bench_function("checkpoint_io_after_put_batch", |bench| {
        bench.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                for _ in 0..PUT_BATCH {
                    let mut txn = store.write();
                    txn.put_returning_previous_lease(&key(random.next() % KEY_COUNT), &value, 0);
                }
                let job = store.prepare_commit().unwrap();
                let started = Instant::now();
                let done = job.run();
                elapsed += started.elapsed();
                store.finish_commit(done).unwrap();
            }
            elapsed
        })
    });
    bench_put_batches(&mut group, &mut store, &mut random);
    eprintln!(
        "after the put benchmarks: file {} MiB, in use {} MiB",
        store.size_bytes() >> 20,
        store.size_in_use_bytes() >> 20
    );
    let reader = store.reader();
    group.sample_size(20);

    group.throughput(Throughput::Elements(1000));
    // [start, start + span) holds about 1000 of the 1M keys (they are spread evenly).
    let span = (u64::MAX / KEY_COUNT) * 1000;
    group.bench_function("range_1000_keys", |bench| {
        bench.iter(|| {
            let start = random.next() % (u64::MAX - span);
            let (from, to) = (start.to_be_bytes(), (start + span).to_be_bytes());
            black_box(reader.snapshot().range(&from, &to, &RangeOptions::default()).unwrap().kvs.len())
        })
    });
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(KEY_COUNT));
    group.bench_function("range_all_1m_keys", |bench| {
        bench.iter(|| black_box(reader.snapshot().range(&[0], &[0], &RangeOptions::default()).unwrap().kvs.len()))
    });
    group.bench_function("count_all_1m_keys", |bench| {
        let options = RangeOptions { count_only: true, ..RangeOptions::default() };
        bench.iter(|| black_box(reader.snapshot().range(&[0], &[0], &options).unwrap().count))
    });
    group.finish();
}

/// PUT_BATCH puts (one write txn each) and the commit of the batch, timed whole.
fn put_batch(store: &mut Store, random: &mut Random, durability: Durability) {
    let value = [0xC3u8; VALUE_SIZE_BYTES];
    for _ in 0..PUT_BATCH {
        let mut txn = store.write();
        txn.put_returning_previous_lease(&key(random.next() % KEY_COUNT), &value, 0);
    }
    store.commit_with(durability).unwrap();
}

/// Batches end to end: today's durable checkpoint per batch, against visible commits per
/// batch and a durable checkpoint every N batches (its fdatasyncs amortized over N batches).
fn bench_put_batches(
    group: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    store: &mut Store,
    random: &mut Random,
) {
    group.throughput(Throughput::Elements(PUT_BATCH));
    // The I/O of a visible commit alone: pwrite into the page cache, no fdatasync.
    group.bench_function("visible_commit_io_after_put_batch", |bench| {
        bench.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            let value = [0x3Cu8; VALUE_SIZE_BYTES];
            for _ in 0..iterations {
                for _ in 0..PUT_BATCH {
                    let mut txn = store.write();
                    txn.put_returning_previous_lease(&key(random.next() % KEY_COUNT), &value, 0);
                }
                let job = store.prepare_commit_with(Durability::Visible).unwrap();
                let started = Instant::now();
                let done = job.run();
                elapsed += started.elapsed();
                store.finish_commit(done).unwrap();
            }
            elapsed
        })
    });
    // The last commit is visible: its meta has no free list on disk, so an image of it walks
    // the trees to find the free pages (`Snapshot::image`; the server runs it on its blocking
    // pool, for a follower's snapshot and for Maintenance.Snapshot).
    group.throughput(Throughput::Elements(1));
    let reader = store.reader();
    group.bench_function("image_of_a_visible_commit", |bench| {
        bench.iter(|| black_box(reader.snapshot().image().unwrap().len_bytes()))
    });
    drop(reader);
    group.throughput(Throughput::Elements(PUT_BATCH));
    store.commit().unwrap();
    group
        .bench_function("put_batch_durable_each", |bench| bench.iter(|| put_batch(store, random, Durability::Durable)));
    for every in BATCHES_PER_CHECKPOINT {
        let mut batches = 0u64;
        group.bench_function(format!("put_batch_visible_durable_every_{every}"), |bench| {
            bench.iter(|| {
                batches += 1;
                let durability = if batches.is_multiple_of(every) { Durability::Durable } else { Durability::Visible };
                put_batch(store, random, durability);
            })
        });
        store.commit().unwrap();
        eprintln!(
            "after visible commits, checkpoint every {every}: file {} MiB, in use {} MiB",
            store.size_bytes() >> 20,
            store.size_in_use_bytes() >> 20
        );
    }
}

criterion_group!(mvcc, benchmarks);
criterion_main!(mvcc);
