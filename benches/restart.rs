//! Restart benchmark: how long a ringd member takes from process start until it answers a
//! linearizable get, with N keys in its store (DESIGN §1: restart time independent of the
//! number of keys).
//!
//! For each N: a one-member ringd gets N keys (8-byte keys 0..N as ringbench makes them,
//! 256-byte values) written by `ringbench txn-put` in transactions of 100 puts from 16
//! clients. Then, RESTARTS times: `ringbench put` overwrites TAIL_PUTS of those keys, the
//! revision is read, the member is killed with SIGKILL right away (so the restart replays
//! the WAL from the store's last durable checkpoint, taken at most a second earlier), and
//! started again; the time from spawn until a linearizable get of key 0 answers is one
//! sample. After each restart the revision must be the one read before the kill (no
//! acknowledged write lost) and a count of all keys must be N.
//!
//! `cargo bench --bench restart` prints, per N, a `#` line with the load time and file sizes
//! and then `restart_ms_<N> <median of the samples>` (milliseconds, for scripts).
//! RESTART_BENCH_KEYS overrides the list of N (comma-separated, default 10000,1000000);
//! RESTART_BENCH_DIR picks the file system (default target/bench-restart). Without
//! `--bench` (`cargo test --benches`) it is a smoke run: 1000 keys, one restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::Either;
use ringd::api::pb::etcdserverpb as pb;
use ringd::client::{Channel, Endpoint};

const KEY_BYTES: usize = 8;
const VALUE_BYTES: usize = 256;
/// Puts per load transaction: divides both default key counts, under --max-txn-ops (128).
const LOAD_TXN_OPS: usize = 100;
const LOAD_CLIENTS: usize = 16;
const LOAD_CONNECTIONS: usize = 4;
/// Writes just before each kill, so that the WAL holds entries past the last checkpoint.
const TAIL_PUTS: usize = 2000;
const RESTARTS: usize = 3;
const KEYS_DEFAULT: &[usize] = &[10_000, 1_000_000];
/// Bounds: loading 1M keys takes well under this on the 2-core VM; a restart far less.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const RESTART_TIMEOUT: Duration = Duration::from_secs(300);
const POLL_INTERVAL: Duration = Duration::from_millis(1);
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// One ringd member: its flags stay the same across restarts (same port, same data dir).
struct Member {
    child: Option<Child>,
    endpoint: String,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Member {
    /// Starts on an empty data dir and waits until it answers; not a sample.
    fn create(dir: &Path) -> Member {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut member = Member {
            child: None,
            endpoint: format!("http://127.0.0.1:{port}"),
            data_dir: dir.join("data"),
            log: dir.join("ringd.log"),
        };
        member.start(false);
        member
    }

    /// Spawns the process and returns the time until a linearizable get of key 0 answered
    /// (with the key when `key_expected`).
    fn start(&mut self, key_expected: bool) -> Duration {
        assert!(self.child.is_none(), "the previous process is gone before a restart");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringd"));
        command.args(["--name", "default", "--listen-client-urls", &self.endpoint]);
        command.args(["--advertise-client-urls", &self.endpoint]).arg("--data-dir").arg(&self.data_dir);
        command.stdout(Stdio::null()).stderr(log);
        let endpoint = Endpoint::parse(&self.endpoint).unwrap();
        let (child, answered) = block_on(move || async move {
            let started = Instant::now();
            let child = command.spawn().expect("start the ringd binary");
            let answered = first_linearizable_get(&endpoint, started, key_expected).await;
            (child, answered.map(|at| at.duration_since(started)))
        });
        // Kept before any check, so that a failure still stops the process (Drop).
        self.child = Some(child);
        answered.unwrap_or_else(|error| panic!("{error}; see {}", self.log.display()))
    }

    /// SIGKILL by PID, and wait for it: no shutdown path runs, no checkpoint is taken.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("a running member");
        child.kill().expect("SIGKILL our own child");
        let deadline = Instant::now() + KILL_TIMEOUT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "ringd did not die of SIGKILL within {KILL_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(self.child.is_none());
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::parse(&self.endpoint).unwrap()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls every POLL_INTERVAL: connect, then a linearizable get of key 0 (refused while the
/// port is closed; an error while the member cannot serve yet). The moment it answered
/// (with the key when `key_expected`); an error past RESTART_TIMEOUT or without the key.
async fn first_linearizable_get(endpoint: &Endpoint, started: Instant, key_expected: bool) -> Result<Instant, String> {
    let request = pb::RangeRequest { key: key(0), ..Default::default() };
    let mut channel: Option<Channel> = None;
    while started.elapsed() < RESTART_TIMEOUT {
        if channel.is_none() {
            channel = Channel::connect(endpoint, Duration::from_secs(1)).await.ok();
        }
        if let Some(connected) = channel.clone() {
            let reply = std::pin::pin!(connected.range(&request));
            let limit = std::pin::pin!(glommio::timer::sleep(RESTART_TIMEOUT.saturating_sub(started.elapsed())));
            match futures::future::select(reply, limit).await {
                Either::Left((Ok(reply), _)) if reply.kvs.len() == 1 || !key_expected => return Ok(Instant::now()),
                Either::Left((Ok(reply), _)) => return Err(format!("key 0 is missing after a restart: {reply:?}")),
                Either::Left((Err(error), _)) if error.code == ringd::api::errors::Code::Unavailable => channel = None,
                Either::Left((Err(_), _)) => {}
                Either::Right(_) => break,
            }
        }
        glommio::timer::sleep(POLL_INTERVAL).await;
    }
    Err(format!("ringd did not answer a linearizable get within {RESTART_TIMEOUT:?}"))
}

/// Key `index` as ringbench writes it: Go's PutVarint (zigzag) in KEY_BYTES zero bytes.
fn key(index: u64) -> Vec<u8> {
    let mut zigzag = index << 1;
    let mut key = vec![0u8; KEY_BYTES];
    let mut position = 0;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        key[position] = if zigzag == 0 { byte } else { byte | 0x80 };
        position += 1;
        if zigzag == 0 {
            return key;
        }
    }
}

fn block_on<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    make: impl FnOnce() -> F + Send + 'static,
) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(make)
        .expect("a glommio executor")
        .join()
        .expect("the executor's thread")
}

/// (revision, number of keys), serializable: what the member holds right now.
fn revision_and_count(member: &Member) -> (i64, i64) {
    let endpoint = member.endpoint();
    block_on(move || async move {
        let channel = Channel::connect(&endpoint, Duration::from_secs(5)).await.expect("connect");
        let every_key = pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            serializable: true,
            ..Default::default()
        };
        let reply = channel.range(&every_key).await.expect("count the keys");
        (reply.header.expect("a header").revision, reply.count)
    })
}

/// Runs ringbench against the member (its report is not needed), killing it by PID past
/// LOAD_TIMEOUT.
fn ringbench(member: &Member, args: &[String]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .arg(format!("--endpoints={}", member.endpoint))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run ringbench");
    let deadline = Instant::now() + LOAD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringbench {args:?} did not end within {LOAD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "ringbench {args:?} failed: {status}");
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

/// Keys 0..keys, LOAD_TXN_OPS per transaction; checks the count.
fn load(member: &Member, keys: usize) -> Duration {
    assert_eq!(keys % LOAD_TXN_OPS, 0, "RESTART_BENCH_KEYS must be multiples of {LOAD_TXN_OPS}");
    let started = Instant::now();
    ringbench(
        member,
        &strings(&[
            &format!("--conns={LOAD_CONNECTIONS}"),
            &format!("--clients={LOAD_CLIENTS}"),
            "txn-put",
            &format!("--key-size={KEY_BYTES}"),
            &format!("--val-size={VALUE_BYTES}"),
            &format!("--txn-ops={LOAD_TXN_OPS}"),
            &format!("--key-space-size={keys}"),
            &format!("--total={}", keys / LOAD_TXN_OPS),
        ]),
    );
    let took = started.elapsed();
    assert_eq!(revision_and_count(member).1, keys as i64, "every key was written");
    took
}

/// Overwrites TAIL_PUTS existing keys (the count stays), then reads the revision.
fn tail(member: &Member, keys: usize) -> i64 {
    ringbench(
        member,
        &strings(&[
            &format!("--conns={LOAD_CONNECTIONS}"),
            &format!("--clients={LOAD_CLIENTS}"),
            "put",
            &format!("--key-size={KEY_BYTES}"),
            &format!("--val-size={VALUE_BYTES}"),
            "--sequential-keys",
            &format!("--key-space-size={keys}"),
            &format!("--total={}", TAIL_PUTS.min(keys)),
        ]),
    );
    revision_and_count(member).0
}

fn bytes_under(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path).unwrap().flatten().map(|e| bytes_under(&e.path())).sum(),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}

fn median_ms(samples: &[Duration]) -> f64 {
    assert!(!samples.is_empty());
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2].as_secs_f64() * 1e3
}

/// Loads `keys` into a fresh member, restarts it `restarts` times, prints the result lines.
fn measure(root: &Path, keys: usize, restarts: usize) {
    let dir = tempfile::tempdir_in(root).unwrap();
    let mut member = Member::create(dir.path());
    let load_time = load(&member, keys);
    let mut samples = Vec::with_capacity(restarts);
    for _ in 0..restarts {
        let revision = tail(&member, keys);
        member.kill();
        samples.push(member.start(true));
        let (revision_after, count) = revision_and_count(&member);
        assert_eq!(revision_after, revision, "every acknowledged write survives the SIGKILL");
        assert_eq!(count, keys as i64, "every key survives the SIGKILL");
    }
    let member_dir = member.data_dir.join("member");
    let samples_ms: Vec<String> = samples.iter().map(|s| format!("{:.1}", s.as_secs_f64() * 1e3)).collect();
    println!(
        "# keys {keys}: loaded in {:.1} s ({:.0} keys/s); db {:.1} MiB, wal {:.1} MiB; restarts (ms): {}",
        load_time.as_secs_f64(),
        keys as f64 / load_time.as_secs_f64(),
        bytes_under(&member_dir.join("snap")) as f64 / 1048576.0,
        bytes_under(&member_dir.join("wal")) as f64 / 1048576.0,
        samples_ms.join(" ")
    );
    println!("restart_ms_{keys} {:.1}", median_ms(&samples));
}

fn key_counts() -> Vec<usize> {
    match std::env::var("RESTART_BENCH_KEYS") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse().unwrap_or_else(|_| panic!("RESTART_BENCH_KEYS: {n:?} is not a number")))
            .collect(),
        Err(_) => KEYS_DEFAULT.to_vec(),
    }
}

fn bench_root() -> PathBuf {
    let root = std::env::var("RESTART_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("bench-restart"));
    std::fs::create_dir_all(&root).unwrap();
    root
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root = bench_root();
    if !std::env::args().any(|a| a == "--bench") {
        measure(&root, 1000, 1);
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("# restart bench in {} (load average {})", root.display(), load.trim());
    for keys in key_counts() {
        measure(&root, keys, RESTARTS);
    }
}
