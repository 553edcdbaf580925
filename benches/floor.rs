//! The one-client floor: `cargo bench --bench floor` (a plain program, not a timed test).
//!
//! What a server that does nothing else could reach on this machine in the 1-client rows of
//! the compare tables (`tuning/scenarios/etcd-doc.toml`): one client sends a request of a put's
//! size over loopback TCP and waits for a 64-byte answer; the server, on ringd's I/O stack (a
//! glommio executor pinned to the first CPU the process may run on, polling for
//! `--idle-poll-us`'s default before it sleeps, as a lone ringd's raft core), answers
//! - `durable`: after one durable write through `DirectFile::write_durable_at`, the WAL's own
//!   path, at the offsets a lone appender's 300-byte records take (it rewrites its tail sector);
//! - `echo`: at once (the floor of a read that needs no disk).
//!
//! The client is a plain thread with blocking sockets: it sleeps while it waits, as ringbench's
//! executors and the Go client's netpoller do. No HTTP/2, gRPC, Raft or store: every
//! microsecond a real server spends on those comes on top. Rounds alternate the two modes.
//!
//! Last lines, for scripts: `durable_per_s <median of rounds>`, `echo_per_s <median>`.
//! Environment: FLOOR_BENCH_DIR (default `target`; a directory on the file system the
//! servers' data dirs are on: the bench works in a new directory inside it, which it
//! removes at the end), FLOOR_BENCH_REQUESTS (per round, default 5000), FLOOR_BENCH_ROUNDS
//! (default 3).

use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use ringd::io::glommio_storage::GlommioStorage;
use ringd::io::{DirectFile, Storage, SECTOR_SIZE_BYTES};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A put of an 8-byte key and a 256-byte value is about this much on the wire, and about this
/// much in the WAL.
const REQUEST_BYTES: usize = 300;
const ANSWER_BYTES: usize = 64;
const WARMUP_REQUESTS: usize = 200;

/// A positive count from the environment, or `default` when unset.
fn env_or(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(value) => match value.parse::<usize>() {
            Ok(count) if count > 0 => count,
            _ => panic!("{name}={value:?}: expected a positive whole number"),
        },
    }
}

/// The directory the bench makes its own, new, directory in.
fn base_dir() -> PathBuf {
    match std::env::var_os("FLOOR_BENCH_DIR") {
        // glommio opens a relative directory path as a bad descriptor.
        Some(dir) => std::path::absolute(dir).expect("FLOOR_BENCH_DIR as an absolute path"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Durable,
    Echo,
}

struct Round {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// The server: accepts one connection and answers `requests` requests, then returns.
async fn serve(listener: TcpListener, dir: PathBuf, mode: Mode, requests: usize) {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let storage = GlommioStorage::open(&dir).await.expect("open the bench directory");
    let _ = storage.remove("floor").await;
    let file = storage.create_file("floor").await.expect("create the file");
    let file_bytes = (requests * REQUEST_BYTES / SECTOR_SIZE_BYTES + 2) * SECTOR_SIZE_BYTES;
    let mut zeros = file.alloc_write_buffer(file_bytes);
    zeros.as_mut().fill(0);
    file.write_at(zeros, 0).await.expect("zero-fill the file");
    file.sync_data().await.expect("sync the file");
    let mut stream = listener.accept().await.expect("accept the client");
    stream.set_nodelay(true).expect("nodelay");
    let mut request = [0u8; REQUEST_BYTES];
    let answer = [7u8; ANSWER_BYTES];
    for index in 0..requests {
        stream.read_exact(&mut request).await.expect("read a request");
        if mode == Mode::Durable {
            let end = (index + 1) * REQUEST_BYTES;
            let sector = (index * REQUEST_BYTES / SECTOR_SIZE_BYTES) as u64;
            let len = end.div_ceil(SECTOR_SIZE_BYTES) * SECTOR_SIZE_BYTES - sector as usize * SECTOR_SIZE_BYTES;
            let mut buffer = file.alloc_write_buffer(len);
            buffer.as_mut().fill(request[0]);
            file.write_durable_at(buffer, sector * SECTOR_SIZE_BYTES as u64).await.expect("durable write");
        }
        stream.write_all(&answer).await.expect("answer");
    }
    drop(file);
    storage.remove("floor").await.expect("remove the file");
}

fn round(dir: &Path, mode: Mode, requests: usize) -> Round {
    let idle_poll = Duration::from_micros(ringd::server::config::IDLE_POLL_US_DEFAULT);
    let (address_sender, address) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    // Where a lone ringd puts its raft core: the first CPU this process may run on.
    let cpu = ringd::server::config::allowed_cpus()[0];
    let server = LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name("floor-server")
        .io_memory(256 * 1024)
        .spin_before_park(idle_poll)
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            address_sender.send(listener.local_addr().expect("address")).expect("send the address");
            serve(listener, dir, mode, WARMUP_REQUESTS + requests).await
        })
        .expect("start the server executor");
    let address = address.recv().expect("the server's address");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let request = [1u8; REQUEST_BYTES];
    let mut answer = [0u8; ANSWER_BYTES];
    let mut latencies = Vec::with_capacity(requests);
    let mut started = Instant::now();
    for index in 0..WARMUP_REQUESTS + requests {
        if index == WARMUP_REQUESTS {
            started = Instant::now();
        }
        let sent = Instant::now();
        stream.write_all(&request).expect("send a request");
        stream.read_exact(&mut answer).expect("read an answer");
        if index >= WARMUP_REQUESTS {
            latencies.push(sent.elapsed());
        }
    }
    let elapsed = started.elapsed();
    server.join().expect("the server finished");
    latencies.sort_unstable();
    let at = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction) as usize].as_secs_f64() * 1e6;
    Round { per_s: requests as f64 / elapsed.as_secs_f64(), p50_us: at(0.5), p99_us: at(0.99) }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let requests = env_or("FLOOR_BENCH_REQUESTS", 5000);
    let rounds = env_or("FLOOR_BENCH_ROUNDS", 3);
    let base = base_dir();
    std::fs::create_dir_all(&base).expect("create FLOOR_BENCH_DIR");
    let temp =
        tempfile::Builder::new().prefix("floor-bench-").tempdir_in(&base).expect("a new directory in FLOOR_BENCH_DIR");
    let dir = temp.path().to_path_buf();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("floor bench in {} (load average {}), {requests} requests per round", dir.display(), load.trim());
    let (mut durable, mut echo) = (Vec::new(), Vec::new());
    for number in 0..rounds {
        // Alternate which mode goes first: the first of a pair tends to be the faster.
        let order = if number % 2 == 0 { [Mode::Durable, Mode::Echo] } else { [Mode::Echo, Mode::Durable] };
        for mode in order {
            let result = round(&dir, mode, requests);
            let name = if mode == Mode::Durable { "durable" } else { "echo" };
            println!(
                "round {} {name:>7}: {:>8.0} req/s, p50 {:>6.1} µs, p99 {:>6.1} µs",
                number + 1,
                result.per_s,
                result.p50_us,
                result.p99_us
            );
            if mode == Mode::Durable { &mut durable } else { &mut echo }.push(result.per_s);
        }
    }
    drop(temp);
    println!("durable_per_s {:.0}", median(durable));
    println!("echo_per_s {:.0}", median(echo));
}
