//! Server benchmark: ringd and a real etcd (Debian's etcd-server) started side by side on
//! this machine with fresh data dirs in the same file system, driven by the same gRPC load
//! (h2 on one glommio executor), one server at a time. Prints req/s, p50 and p99 for each
//! workload and ringd/etcd ratios.
//!
//! `cargo bench --bench server` (BENCH_DIR picks the file system, default target/bench-server;
//! BENCH_SCALE multiplies the request counts). The client takes one core of the machine's
//! two, so absolute figures are bounded by it; the ratios are the point.

use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use ringd::api::pb::etcdserverpb as pb;

const KEY_BYTES: usize = 8;
const VALUE_BYTES: usize = 256;

struct Server {
    name: &'static str,
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn bench_dir() -> std::path::PathBuf {
    let dir = std::env::var("BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("bench-server"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start(name: &'static str) -> Server {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let data_dir = dir.path().join("data");
    let mut command = if name == "ringd" {
        Command::new(env!("CARGO_BIN_EXE_ringd"))
    } else {
        let mut etcd = Command::new("etcd");
        etcd.args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", free_port())]);
        etcd
    };
    let child = command
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e} (install etcd-server for the comparison)"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500)); // etcd elects itself after listening
    Server { name, child, port, _dir: dir }
}

fn frame(message: &impl Message) -> Bytes {
    let mut buffer = BytesMut::with_capacity(5 + message.encoded_len());
    buffer.put_u8(0);
    buffer.put_u32(message.encoded_len() as u32);
    message.encode(&mut buffer).unwrap();
    buffer.freeze()
}

async fn call(client: &h2::client::SendRequest<Bytes>, port: u16, path: &str, body: Bytes) -> bool {
    let Ok(mut client) = client.clone().ready().await else { return false };
    let request = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let Ok((response, mut send)) = client.send_request(request, false) else { return false };
    if send.send_data(body, true).is_err() {
        return false;
    }
    let Ok(response) = response.await else { return false };
    let mut stream = response.into_body();
    while let Some(chunk) = stream.data().await {
        let Ok(chunk) = chunk else { return false };
        let _ = stream.flow_control().release_capacity(chunk.len());
    }
    matches!(stream.trailers().await, Ok(Some(t)) if t.get("grpc-status").is_some_and(|s| s == "0"))
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    put: bool,
    serializable: bool,
    connections: usize,
    clients: usize,
    requests: usize,
}

struct Result {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

fn run(server: &Server, workload: Workload) -> Result {
    let port = server.port;
    let executor =
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(512 * 1024).make().unwrap();
    executor.run(async move {
        let mut connections = Vec::new();
        for _ in 0..workload.connections {
            let stream = glommio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (client, connection) = h2::client::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(16 << 20)
                .handshake(ringd::io::stream::TokioIo::new(stream))
                .await
                .unwrap();
            glommio::spawn_local(async move {
                let _ = connection.await;
            })
            .detach();
            connections.push(client);
        }
        let seed = pb::PutRequest { key: b"foo".to_vec(), value: vec![b'v'; VALUE_BYTES], ..Default::default() };
        assert!(call(&connections[0], port, "/etcdserverpb.KV/Put", frame(&seed)).await, "put foo");
        let histogram = Rc::new(std::cell::RefCell::new(hdrhistogram::Histogram::<u64>::new(3).unwrap()));
        let errors = Rc::new(std::cell::Cell::new(0usize));
        let next = Rc::new(std::cell::Cell::new(0usize));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for client_index in 0..workload.clients {
            let client = connections[client_index % connections.len()].clone();
            let (histogram, errors, next) = (histogram.clone(), errors.clone(), next.clone());
            tasks.push(glommio::spawn_local(async move {
                let value = vec![b'v'; VALUE_BYTES];
                loop {
                    let index = next.get();
                    if index >= workload.requests {
                        return;
                    }
                    next.set(index + 1);
                    let key = format!("{:0width$}", index % 100_000, width = KEY_BYTES).into_bytes();
                    let (path, body) = if workload.put {
                        let put = pb::PutRequest { key, value: value.clone(), ..Default::default() };
                        ("/etcdserverpb.KV/Put", frame(&put))
                    } else {
                        let range = pb::RangeRequest {
                            key: b"foo".to_vec(),
                            serializable: workload.serializable,
                            ..Default::default()
                        };
                        ("/etcdserverpb.KV/Range", frame(&range))
                    };
                    let sent = Instant::now();
                    if call(&client, port, path, body).await {
                        histogram.borrow_mut().record(sent.elapsed().as_micros() as u64).unwrap();
                    } else {
                        errors.set(errors.get() + 1);
                    }
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let histogram = histogram.borrow();
        Result {
            requests_per_second: histogram.len() as f64 / elapsed,
            p50_ms: histogram.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
            errors: errors.get(),
        }
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --benches`: a short smoke run against ringd only.
        let server = start("ringd");
        for put in [true, false] {
            let workload =
                Workload { name: "smoke", put, serializable: false, connections: 2, clients: 8, requests: 200 };
            let result = run(&server, workload);
            assert_eq!(result.errors, 0, "smoke run had errors");
        }
        return;
    }
    let scale: usize = std::env::var("BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let workloads = [
        Workload {
            name: "put c1/1",
            put: true,
            serializable: false,
            connections: 1,
            clients: 1,
            requests: 2_000 * scale,
        },
        Workload {
            name: "put c100/1000",
            put: true,
            serializable: false,
            connections: 100,
            clients: 1000,
            requests: 50_000 * scale,
        },
        Workload {
            name: "range-l c1/1",
            put: false,
            serializable: false,
            connections: 1,
            clients: 1,
            requests: 5_000 * scale,
        },
        Workload {
            name: "range-l c100/1000",
            put: false,
            serializable: false,
            connections: 100,
            clients: 1000,
            requests: 100_000 * scale,
        },
        Workload {
            name: "range-s c100/1000",
            put: false,
            serializable: true,
            connections: 100,
            clients: 1000,
            requests: 100_000 * scale,
        },
    ];
    let mut table = Vec::new();
    for name in ["ringd", "etcd"] {
        let server = start(name);
        for workload in workloads {
            let result = run(&server, workload);
            eprintln!(
                "{:6} {:18} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
                server.name, workload.name, result.requests_per_second, result.p50_ms, result.p99_ms, result.errors
            );
            table.push((name, workload.name, result));
        }
    }
    println!("workload            ringd req/s  etcd req/s  ratio  ringd p50/p99 ms   etcd p50/p99 ms");
    for workload in workloads {
        let find = |server: &str| {
            table.iter().find(|(s, w, _)| *s == server && *w == workload.name).map(|(_, _, r)| r).unwrap()
        };
        let (ours, theirs) = (find("ringd"), find("etcd"));
        println!(
            "{:18} {:>12.0} {:>11.0} {:>6.2}  {:>7.2} / {:<7.2}  {:>7.2} / {:<7.2}",
            workload.name,
            ours.requests_per_second,
            theirs.requests_per_second,
            ours.requests_per_second / theirs.requests_per_second,
            ours.p50_ms,
            ours.p99_ms,
            theirs.p50_ms,
            theirs.p99_ms
        );
    }
}
