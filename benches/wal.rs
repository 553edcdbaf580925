//! WAL benchmark: `cargo bench --bench wal` (a plain program, not a timed test).
//!
//! Runs on the file system holding `WAL_BENCH_DIR` (default `target/wal-bench` in the crate),
//! which it empties first and removes at the end. Measures, on one glommio executor:
//! - the device floor: one 4 KiB O_DIRECT pwrite + fdatasync into a preallocated, zero-filled
//!   file, from a plain thread with blocking syscalls (the best a WAL append could do);
//! - the same through glommio, as a write then an fdatasync (io_uring runs the fdatasync on a
//!   worker thread), and as one O_DSYNC write (`DirectFile::write_durable_at`, what the WAL
//!   does);
//! - one appender of 256-byte entries: latency of each durable append;
//! - 16, 256 and 1024 concurrent appenders: durable records/s, bytes written per record and
//!   records per fdatasync (group commit).
//!
//! The last three lines are for scripts:
//! `floor_us <median>` (the device floor), `glommio_sync_us <median>`, `glommio_dsync_us <median>`,
//! `single_append_us <median>`, `appenders_1024_records_per_s <n>`.
//! Environment: WAL_BENCH_DIR, WAL_BENCH_SECONDS (per appender run, default 3).

use glommio::{LocalExecutorBuilder, Placement};
use ringd::io::glommio_storage::GlommioStorage;
use ringd::io::{DirectFile, Storage};
use ringd::raft::pb::Entry;
use ringd::wal::{Wal, WalConfig};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

const ENTRY_DATA_BYTES: usize = 256;
const FLOOR_SAMPLES: usize = 1000;
const SINGLE_APPEND_SAMPLES: usize = 1000;
const WARMUP_SAMPLES: usize = 50;

fn bench_dir() -> PathBuf {
    match std::env::var_os("WAL_BENCH_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("wal-bench"),
    }
}

fn fresh_dir(path: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir_all(path).expect("create the benchmark directory");
    path.to_path_buf()
}

/// (median, p99) in microseconds.
fn percentiles_us(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

fn entry(index: u64) -> Entry {
    Entry { term: 1, index, entry_type: 0, data: vec![(index % 251) as u8; ENTRY_DATA_BYTES].into() }
}

const FLOOR_FILE_BYTES: usize = 4 * 1024 * 1024;

/// One sector, aligned as O_DIRECT needs.
#[repr(C, align(4096))]
struct Sector([u8; 4096]);

/// The device floor: blocking O_DIRECT pwrite + fdatasync from this thread, no executor.
fn device_floor_us(dir: &Path) -> f64 {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let path = fresh_dir(&dir.join("device-floor")).join("floor.dat");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .expect("open O_DIRECT");
    let mut sector = Box::new(Sector([0; 4096]));
    let sectors = FLOOR_FILE_BYTES / 4096;
    for index in 0..sectors {
        file.write_all_at(&sector.0, (index * 4096) as u64).expect("zero-fill");
    }
    file.sync_data().expect("sync");
    let mut samples = Vec::with_capacity(FLOOR_SAMPLES);
    for i in 0..FLOOR_SAMPLES + WARMUP_SAMPLES {
        sector.0.fill(i as u8);
        let offset = (i % sectors) as u64 * 4096;
        let start = Instant::now();
        file.write_all_at(&sector.0, offset).expect("write");
        file.sync_data().expect("sync");
        if i >= WARMUP_SAMPLES {
            samples.push(start.elapsed());
        }
    }
    let (median, p99) = percentiles_us(&mut samples);
    println!("floor: 4 KiB O_DIRECT pwrite + fdatasync, blocking: median {median:.1} us, p99 {p99:.1} us ({FLOOR_SAMPLES} samples)");
    median
}

/// The same write through glommio: a write then an fdatasync, or (`dsync`) one
/// `write_durable_at` (an O_DSYNC write).
async fn glommio_floor_us(dir: &Path, dsync: bool) -> f64 {
    let storage = GlommioStorage::open(fresh_dir(&dir.join("floor"))).await.expect("storage");
    let file = storage.create_file("floor.dat").await.expect("create");
    let mut zeros = file.alloc_write_buffer(FLOOR_FILE_BYTES);
    zeros.as_mut().fill(0);
    file.write_at(zeros, 0).await.expect("zero-fill");
    file.sync_data().await.expect("sync");
    let mut samples = Vec::with_capacity(FLOOR_SAMPLES);
    for i in 0..FLOOR_SAMPLES + WARMUP_SAMPLES {
        let mut buffer = file.alloc_write_buffer(4096);
        buffer.as_mut().fill(i as u8);
        let offset = (i % (FLOOR_FILE_BYTES / 4096)) as u64 * 4096;
        let start = Instant::now();
        if dsync {
            file.write_durable_at(buffer, offset).await.expect("durable write");
        } else {
            file.write_at(buffer, offset).await.expect("write");
            file.sync_data().await.expect("sync");
        }
        if i >= WARMUP_SAMPLES {
            samples.push(start.elapsed());
        }
    }
    let (median, p99) = percentiles_us(&mut samples);
    let how = if dsync { "one O_DSYNC write" } else { "write, then fdatasync" };
    println!("glommio: 4 KiB O_DIRECT {how}: median {median:.1} us, p99 {p99:.1} us ({FLOOR_SAMPLES} samples)");
    median
}

async fn open_wal(path: &Path) -> Rc<Wal<GlommioStorage>> {
    let storage = GlommioStorage::open(fresh_dir(path)).await.expect("storage");
    let opened = Wal::open(storage, WalConfig::default()).await.expect("open wal");
    glommio::spawn_local(opened.driver).detach();
    let wal = Rc::new(opened.wal);
    // Let the preparer finish zero-filling the next segment before measuring.
    while !wal.next_segment_ready() {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    wal
}

async fn close(wal: Rc<Wal<GlommioStorage>>) {
    Rc::try_unwrap(wal).ok().expect("sole owner").close().await.expect("close");
}

async fn single_append_us(dir: &Path) -> f64 {
    let wal = open_wal(&dir.join("single")).await;
    // The first append installs segment 0; keep it out of the samples.
    let mut samples = Vec::with_capacity(SINGLE_APPEND_SAMPLES);
    for i in 0..SINGLE_APPEND_SAMPLES + WARMUP_SAMPLES {
        let index = wal.last_index() + 1;
        let start = Instant::now();
        wal.append(&[entry(index)], None).await.expect("append");
        if i >= WARMUP_SAMPLES {
            samples.push(start.elapsed());
        }
    }
    let stats = wal.stats();
    close(wal).await;
    let (median, p99) = percentiles_us(&mut samples);
    println!(
        "single appender, {ENTRY_DATA_BYTES}-byte entries: median {median:.1} us, p99 {p99:.1} us per durable append; {:.0} bytes written per record",
        stats.bytes_written as f64 / stats.records as f64
    );
    median
}

async fn appenders_records_per_s(dir: &Path, appender_count: usize, run_time: Duration) -> f64 {
    let wal = open_wal(&dir.join(format!("appenders-{appender_count}"))).await;
    wal.append(&[entry(1)], None).await.expect("first append");
    let before = wal.stats();
    let start = Instant::now();
    let deadline = start + run_time;
    let tasks: Vec<_> = (0..appender_count)
        .map(|_| {
            let wal = wal.clone();
            glommio::spawn_local(async move {
                let mut durable_records = 0u64;
                while Instant::now() < deadline {
                    let index = wal.last_index() + 1;
                    wal.append(&[entry(index)], None).await.expect("append");
                    durable_records += 1;
                }
                durable_records
            })
        })
        .collect();
    let mut durable_records = 0;
    for task in tasks {
        durable_records += task.await;
    }
    let elapsed = start.elapsed();
    let after = wal.stats();
    close(wal).await;
    let records_per_s = durable_records as f64 / elapsed.as_secs_f64();
    let records = (after.records - before.records) as f64;
    println!(
        "{appender_count:>4} appenders: {records_per_s:>9.0} durable records/s, {:>6.0} bytes written per record, \
         {:>6.1} records per write+sync, {} segment rotations",
        (after.bytes_written - before.bytes_written) as f64 / records,
        records / (after.syncs - before.syncs).max(1) as f64,
        after.rotations - before.rotations,
    );
    records_per_s
}

fn main() {
    let dir = bench_dir();
    let run_time = Duration::from_secs_f64(
        std::env::var("WAL_BENCH_SECONDS").ok().and_then(|value| value.parse().ok()).unwrap_or(3.0),
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("wal bench in {} (load average {})", dir.display(), load.trim());
    let floor = device_floor_us(&dir);
    let (sync, dsync, single, many) =
        LocalExecutorBuilder::new(Placement::Unbound).io_memory(1024 * 1024).make().expect("glommio executor").run(
            async {
                let sync = glommio_floor_us(&dir, false).await;
                let dsync = glommio_floor_us(&dir, true).await;
                let single = single_append_us(&dir).await;
                appenders_records_per_s(&dir, 16, run_time).await;
                appenders_records_per_s(&dir, 256, run_time).await;
                let many = appenders_records_per_s(&dir, 1024, run_time).await;
                (sync, dsync, single, many)
            },
        );
    let _ = std::fs::remove_dir_all(&dir);
    println!("single append / floor = {:.2}", single / floor);
    println!("floor_us {floor:.1}");
    println!("glommio_sync_us {sync:.1}");
    println!("glommio_dsync_us {dsync:.1}");
    println!("single_append_us {single:.1}");
    println!("appenders_1024_records_per_s {many:.0}");
}
