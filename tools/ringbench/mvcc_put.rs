//! `ringbench mvcc put`: puts straight into ringd's MVCC store (no server, no network), as
//! etcd's `benchmark mvcc put` does against its backend, with etcd's flags. A timed unit is
//! one put in its own write transaction, or with --txn one transaction of --txn-ops puts
//! (then, as etcd, a weighted report of the time per put comes first). etcd's backend
//! commits in the background every 100 ms; ringd's store commits when told, so
//! --commit-every says after how many units the commit (pages, fdatasync, meta switch)
//! runs, timed inside the unit that triggers it.

use std::time::{Duration, Instant};

use ringd::mvcc::{Store, StoreOptions};

use crate::cli::{Cli, MvccPutArgs};
use crate::report::{self, process_cpu, ClientCpu, Precision, Recorder, Stats};
use crate::workload::Random;

pub fn main(cli: &Cli, args: &MvccPutArgs) -> Result<(), String> {
    if args.txn_ops == 0 || args.key_size == 0 {
        return Err("--txn-ops and --key-size must be at least 1".into());
    }
    std::fs::create_dir_all(&args.data_dir).map_err(|error| format!("create {}: {error}", args.data_dir.display()))?;
    let directory = FreshDirectory::create(&args.data_dir)?;
    let path = directory.0.join("db");
    let mut store =
        Store::open(&path, StoreOptions::default()).map_err(|error| format!("open {}: {error}", path.display()))?;
    let mut random = Random::new(std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64);
    let per_unit = if args.txn { args.txn_ops } else { 1 };
    let keys: Vec<Vec<u8>> = (0..args.total * per_unit).map(|_| random.bytes(args.key_size)).collect();
    let values: Vec<Vec<u8>> = (0..args.total * per_unit).map(|_| random.bytes(args.value_size)).collect();
    let (mut units, mut per_put) = (Recorder::new(cli.global.sample), Recorder::new(cli.global.sample));
    let cpu_before = process_cpu();
    let started = Instant::now();
    for (unit, (keys, values)) in keys.chunks(per_unit).zip(values.chunks(per_unit)).enumerate() {
        let start = Instant::now();
        let mut txn = store.write();
        for (key, value) in keys.iter().zip(values) {
            txn.put(key, value, 0);
        }
        txn.end();
        if args.commit_every > 0 && (unit + 1) % args.commit_every == 0 {
            store.commit().map_err(|error| format!("commit: {error}"))?;
        }
        let took = start.elapsed();
        units.record(took, unix_second());
        per_put.record(took / per_unit as u32, unix_second());
    }
    let wall = started.elapsed();
    store.commit().map_err(|error| format!("commit: {error}"))?;
    assert_eq!(units.count as usize, args.total);
    let cpu = ClientCpu::between(cpu_before, process_cpu(), units.count, wall);
    let precision = if cli.global.precise { Precision::Full } else { Precision::Fixed };
    if args.txn {
        // etcd's weighted report: each unit counts as --txn-ops puts of 1/--txn-ops its time.
        let mut stats = Stats::compute(&per_put, wall);
        stats.requests_per_second *= per_unit as f64;
        print!("{}", report::render(&stats, &per_put, precision));
    }
    print!("{}", report::render(&Stats::compute(&units, wall), &units, precision));
    print!("{}", cpu.render());
    write_exports(cli, &units)
}

fn write_exports(cli: &Cli, recorder: &Recorder) -> Result<(), String> {
    if let Some(path) = &cli.global.hgrm {
        std::fs::write(path, report::hgrm(recorder)).map_err(|error| format!("write {}: {error}", path.display()))?;
    }
    if let Some(path) = &cli.global.plot {
        std::fs::write(path, crate::plot::svg(&[("mvcc put".into(), recorder)], "ringd MVCC put"))
            .map_err(|error| format!("write {}: {error}", path.display()))?;
    }
    Ok(())
}

fn unix_second() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64
}

/// A directory of our own for the store file, removed when the run ends.
struct FreshDirectory(std::path::PathBuf);

impl FreshDirectory {
    fn create(parent: &std::path::Path) -> Result<FreshDirectory, String> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos();
        let path = parent.join(format!("ringbench-mvcc-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(|error| format!("create {}: {error}", path.display()))?;
        Ok(FreshDirectory(path))
    }
}

impl Drop for FreshDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
