//! Processes for integration tests: a `ringd` started from the built binary, a real etcd
//! (Debian's etcd-server) for side-by-side comparisons, and the real `etcdctl`. Every
//! process is stopped by PID when its handle drops; every wait is bounded.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 for a server the test starts. The port stays reserved until
/// the test process exits: a socket of ours stays bound to it, never listening, with
/// SO_REUSEADDR and SO_REUSEPORT. The server can still bind it (ringd sets SO_REUSEPORT, etcd
/// SO_REUSEADDR), but no bind to port 0, in this test process or another, is given it again; a
/// released port could be, and ringd's SO_REUSEPORT would let two servers share it silently.
///
/// The reservation never listens: a process that another test thread spawns holds a copy of
/// every open socket until its exec completes, which on a loaded machine can be after this
/// thread has started its server. A listening copy would accept `wait_for_port`'s connection
/// in the server's place and reset it on closing; the test's next connection would then be
/// refused (the server has not bound yet) or reset.
pub fn free_port() -> u16 {
    static RESERVED: std::sync::Mutex<Vec<(u16, std::os::fd::OwnedFd)>> = std::sync::Mutex::new(Vec::new());
    let (port, reservation) = reserve_port();
    let mut reserved = RESERVED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    assert!(reserved.iter().all(|(held, _)| *held != port), "port {port} was given out while reserved");
    reserved.push((port, reservation));
    port
}

/// Binds a TCP socket to 127.0.0.1 port 0, with SO_REUSEADDR and SO_REUSEPORT so that servers
/// can bind the port too; returns the port the kernel picked (one no socket used) and the socket.
fn reserve_port() -> (u16, std::os::fd::OwnedFd) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let address_size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket() returns a new descriptor or -1; only a valid one is wrapped, and the
    // OwnedFd closes it on every path.
    let socket = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(fd)
    };
    let enable: libc::c_int = 1;
    for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: the option value points at a live c_int and its size is passed with it.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&enable as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "setsockopt: {}", std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_in is plain data, valid when zeroed.
    let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    address.sin_family = libc::AF_INET as libc::sa_family_t;
    address.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
    // SAFETY: the address points at a live sockaddr_in of the size passed.
    let bound = unsafe { libc::bind(socket.as_raw_fd(), (&address as *const libc::sockaddr_in).cast(), address_size) };
    assert_eq!(bound, 0, "bind 127.0.0.1:0: {}", std::io::Error::last_os_error());
    let mut length = address_size;
    // SAFETY: the kernel writes at most `length` bytes into the live sockaddr_in.
    let named =
        unsafe { libc::getsockname(socket.as_raw_fd(), (&mut address as *mut libc::sockaddr_in).cast(), &mut length) };
    assert_eq!(named, 0, "getsockname: {}", std::io::Error::last_os_error());
    assert_eq!((address.sin_family, length), (libc::AF_INET as libc::sa_family_t, address_size));
    let port = u16::from_be(address.sin_port);
    assert_ne!(port, 0, "the kernel bound the socket to a port");
    (port, socket)
}

/// Finds a tool the tests need; never skips: a missing tool is a failed test that says how
/// to install it (the README's test command installs it).
pub fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed: run the README's test command (bash tests/run-all.sh), which installs it");
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited during start: {status}");
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port} within {START_TIMEOUT:?}");
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the ringd binary with `args` where it must refuse to start; returns its exit code
/// and stderr (never a panic trace).
pub fn ringd_fails_to_start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringd")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "no panic traces: {stderr}");
    (output.status.code().unwrap_or(-1), stderr)
}

/// A ringd process on a fresh port, with its own data dir (kept unless `data_dir` was given).
pub struct Ringd {
    pub child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Ringd {
    pub fn start(extra_args: &[&str]) -> Ringd {
        Ringd::start_in_temp(Command::new(env!("CARGO_BIN_EXE_ringd")), extra_args)
    }

    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> Ringd {
        Ringd::start_from(Command::new(env!("CARGO_BIN_EXE_ringd")), data_dir, extra_args)
    }

    /// Like `start`, with the process allowed to run on `cpu` only (as `taskset -c` does).
    pub fn start_on_cpu(cpu: usize, extra_args: &[&str]) -> Ringd {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringd"));
        // SAFETY: between fork and exec the closure only makes async-signal-safe syscalls
        // on a set of its own.
        unsafe {
            command.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ringd::start_in_temp(command, extra_args)
    }

    /// `command` started with a data dir of its own, removed when the `Ringd` drops.
    fn start_in_temp(command: Command, extra_args: &[&str]) -> Ringd {
        let temp = tempfile::tempdir().unwrap();
        let mut ringd = Ringd::start_from(command, &temp.path().join("data"), extra_args);
        ringd._temp = Some(temp);
        ringd
    }

    fn start_from(mut command: Command, data_dir: &Path, extra_args: &[&str]) -> Ringd {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut child = command
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the ringd binary");
        wait_for_port(port, &mut child, "ringd");
        Ringd { child, port, data_dir: data_dir.to_owned(), _temp: None }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl(&self.endpoint(), args, None)
    }

    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        etcdctl(&self.endpoint(), args, Some(stdin))
    }

    /// Kills the process (SIGKILL) and returns what it wrote to stderr.
    pub fn kill_and_read_stderr(mut self) -> String {
        stop(&mut self.child);
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        stderr
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(mut self) -> PathBuf {
        stop(&mut self.child);
        self.data_dir.clone()
    }
}

impl Drop for Ringd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A real etcd (Debian's etcd-server) on fresh ports, for side-by-side checks. It keeps the
/// default advertised peer URL and token, so its member and cluster IDs equal ringd's.
pub struct Etcd {
    pub child: Child,
    pub port: u16,
    _temp: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        let etcd = require_tool("etcd");
        let temp = tempfile::tempdir().unwrap();
        let port = free_port();
        let peer_port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(etcd)
            .args(["--name", "default", "--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
            .arg("--data-dir")
            .arg(temp.path().join("etcd"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        wait_for_port(port, &mut child, "etcd");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + START_TIMEOUT;
        while !etcdctl(&endpoint, &["endpoint", "health"], None).status.success() {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        Etcd { child, port, _temp: temp }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Runs the real etcdctl (v3 API) against `endpoint`, bounded by its own timeouts.
pub fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let etcdctl = require_tool("etcdctl");
    let mut child = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--dial-timeout", "5s", "--command-timeout", "10s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The last line etcdctl printed on stderr that starts with "Error:".
pub fn error_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).lines().rfind(|line| line.starts_with("Error:")).unwrap_or("").to_owned()
}

/// One HTTP/1.1 request over a plain TCP stream; returns (status code, body).
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// One HTTP/1.1 keep-alive connection to the gateway: every request goes over the same
/// TCP connection (so the same core serves them all).
pub struct KeepAlive {
    stream: std::io::BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn connect(port: u16) -> KeepAlive {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        KeepAlive { stream: std::io::BufReader::new(stream) }
    }

    /// Sends one request and reads its reply (which must carry a Content-Length).
    pub fn request(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        use std::io::{BufRead, Read};
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).unwrap();
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line).unwrap();
        let status = status_line.split_whitespace().nth(1).expect("an HTTP status line").parse().unwrap();
        let mut length = None;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>().unwrap());
                }
            }
        }
        let mut body = vec![0; length.expect("a Content-Length")];
        self.stream.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    }
}

/// POSTs `body` to a streaming gateway path and returns its first `count` result lines
/// (grpc-gateway's `{"result": ...}`), reading at most START_TIMEOUT per line.
pub fn gateway_stream_results(port: u16, path: &str, body: &str, count: usize) -> Vec<String> {
    use std::io::BufRead;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(START_TIMEOUT)).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(format!("{head}{body}").as_bytes()).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut results = Vec::with_capacity(count);
    while results.len() < count {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended after {results:?}");
        if line.starts_with("{\"result\"") {
            results.push(line.trim_end().to_owned());
        }
    }
    results
}

/// The answer to one raw gRPC call.
#[derive(Debug)]
pub struct GrpcAnswer {
    pub status: u8,
    pub message: String,
    pub body: Vec<u8>,
}

/// Sends one gRPC request with `message` as its (unprefixed) payload, over HTTP/2 with h2
/// on a glommio executor (no tokio runtime), and returns the status and response bytes.
/// `declared_length` lets a test lie about the length prefix.
pub fn grpc_call(port: u16, path: &str, message: &[u8], declared_length: Option<u32>) -> GrpcAnswer {
    let path = path.to_owned();
    let frame = grpc_frame_declaring(message, declared_length.unwrap_or(message.len() as u32));
    test_executor().run(async move {
        let (response, mut send) = open_grpc_stream(port, &path).await;
        send.send_data(frame, true).unwrap();
        let response = response.await.unwrap();
        let headers = response.headers().clone();
        let mut body_stream = response.into_body();
        let mut body = Vec::new();
        while let Some(chunk) = body_stream.data().await {
            let chunk = chunk.unwrap();
            let _ = body_stream.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        let trailers = body_stream.trailers().await.unwrap().unwrap_or_default();
        let field = |name: &str| {
            trailers.get(name).or_else(|| headers.get(name)).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
        };
        GrpcAnswer {
            status: field("grpc-status").parse().unwrap(),
            message: field("grpc-message"),
            body: if body.len() >= 5 { body[5..].to_vec() } else { body },
        }
    })
}

/// Sends one gRPC request, waits `patience` without reading the answer, then gives up: the
/// connection is closed, as a client whose deadline passed or that was killed closes it.
pub fn grpc_call_and_give_up(port: u16, path: &str, message: &[u8], patience: Duration) {
    let path = path.to_owned();
    let frame = grpc_frame(message);
    test_executor().run(async move {
        let (_response, mut send) = open_grpc_stream(port, &path).await;
        send.send_data(frame, true).unwrap();
        glommio::timer::sleep(patience).await;
    });
}

/// A background etcdctl (`watch`, `lock`, `elect`...), whose stdout lines are collected by a
/// thread; stopped by PID when dropped.
pub struct EtcdctlProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl EtcdctlProcess {
    pub fn start(endpoint: &str, args: &[&str]) -> EtcdctlProcess {
        use std::io::BufRead;
        let mut child = Command::new(require_tool("etcdctl"))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run etcdctl");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        EtcdctlProcess { child, lines }
    }

    /// `etcdctl watch <args>`.
    pub fn watch(endpoint: &str, args: &[&str]) -> EtcdctlProcess {
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        EtcdctlProcess::start(endpoint, &all)
    }

    /// The next `count` lines, or panics after `timeout`.
    pub fn lines(&self, count: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::with_capacity(count);
        while lines.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => panic!("etcdctl printed {} of {count} lines within {timeout:?}: {lines:?}", lines.len()),
            }
        }
        lines
    }

    /// Lines printed so far that were not taken yet.
    pub fn printed(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM (etcdctl unlocks, resigns or stops watching on it) and waits at most
    /// `timeout` for the exit; returns whether it exited successfully.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.wait(timeout)
    }

    /// Waits at most `timeout` for the exit; returns whether it exited successfully.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "etcdctl did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a background command has had time to set itself up (etcdctl prints
    /// nothing when a watch is created or while a lock is awaited).
    pub fn settle() {
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Drop for EtcdctlProcess {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The open stream of a RawWatch: its two halves and the bytes received but not yet framed.
type WatchStream = (h2::RecvStream, h2::SendStream<bytes::Bytes>, Vec<u8>);

/// A raw gRPC Watch stream over h2 on a glommio executor owned by the caller's thread.
pub struct RawWatch {
    executor: glommio::LocalExecutor,
    state: std::rc::Rc<std::cell::RefCell<Option<WatchStream>>>,
}

impl RawWatch {
    /// Opens a Watch stream and sends `create` (an encoded WatchRequest).
    pub fn open(port: u16, create: &[u8]) -> RawWatch {
        RawWatch::open_path(port, "/etcdserverpb.Watch/Watch", create, false)
    }

    /// Opens a stream of any streaming method (Observe...) and sends `message`, closing the
    /// client's side after it if `end_stream`.
    pub fn open_path(port: u16, path: &str, message: &[u8], end_stream: bool) -> RawWatch {
        let executor = test_executor();
        let state = std::rc::Rc::new(std::cell::RefCell::new(None));
        let slot = state.clone();
        let message = grpc_frame(message);
        let path = path.to_owned();
        executor.run(async move {
            let (response, mut send) = open_grpc_stream(port, &path).await;
            send.send_data(message, end_stream).unwrap();
            let body = response.await.unwrap().into_body();
            *slot.borrow_mut() = Some((body, send, Vec::new()));
        });
        RawWatch { executor, state }
    }

    /// Reads the next whole message (the payload of one WatchResponse), or panics if none
    /// arrives within `RAW_WATCH_READ_TIMEOUT` (a stalled stream fails the test, never hangs it).
    pub fn next_message(&self) -> Vec<u8> {
        let state = self.state.clone();
        let read = async move {
            let mut guard = state.borrow_mut();
            let (body, _, buffer) = guard.as_mut().unwrap();
            loop {
                if buffer.len() >= 5 {
                    let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
                    if buffer.len() >= 5 + length {
                        let message = buffer[5..5 + length].to_vec();
                        buffer.drain(..5 + length);
                        return Ok(message);
                    }
                }
                let chunk = match body.data().await {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(error)) => return Err(format!("the watch stream failed: {error}")),
                    None => return Err(format!("the watch stream ended with {} bytes unread", buffer.len())),
                };
                let _ = body.flow_control().release_capacity(chunk.len());
                buffer.extend_from_slice(&chunk);
            }
        };
        let outcome = self.executor.run(async move {
            let deadline = glommio::timer::sleep(RAW_WATCH_READ_TIMEOUT);
            match futures::future::select(Box::pin(read), Box::pin(deadline)).await {
                futures::future::Either::Left((outcome, _)) => outcome,
                futures::future::Either::Right(_) => {
                    Err(format!("no whole watch response arrived within {RAW_WATCH_READ_TIMEOUT:?}"))
                }
            }
        });
        outcome.unwrap_or_else(|reason| panic!("{reason}"))
    }
}

/// How long `RawWatch::next_message` waits for one response.
pub const RAW_WATCH_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn grpc_frame(message: &[u8]) -> bytes::Bytes {
    grpc_frame_declaring(message, message.len() as u32)
}

/// A gRPC message frame whose length prefix says `declared_length`.
fn grpc_frame_declaring(message: &[u8], declared_length: u32) -> bytes::Bytes {
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&declared_length.to_be_bytes());
    frame.extend_from_slice(message);
    bytes::Bytes::from(frame)
}

/// A glommio executor for a test's client side (no tokio runtime).
fn test_executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .make()
        .expect("a glommio executor for the test client")
}

/// Connects over h2 and opens a gRPC call on `path`; the connection is driven by a task of
/// the current executor.
async fn open_grpc_stream(port: u16, path: &str) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let stream = glommio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (client, connection) = h2::client::handshake(ringd::io::stream::TokioIo::new(stream)).await.unwrap();
    glommio::spawn_local(async move {
        let _ = connection.await;
    })
    .detach();
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    client.send_request(request, false).unwrap()
}

/// Standard base64 with padding, as the gateway's JSON carries bytes.
pub fn b64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in text.as_bytes().chunks(3) {
        let bits = group.iter().enumerate().fold(0u32, |bits, (i, &byte)| bits | (byte as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The samples of a Prometheus text exposition (`GET /metrics`), by series: the metric name
/// with its labels as written (`etcd_server_id{server_id="..."}`).
pub struct Scrape {
    pub text: String,
    pub samples: std::collections::BTreeMap<String, f64>,
}

impl Scrape {
    /// Scrapes `GET /metrics` on 127.0.0.1:`port`; the answer must be 200 in the text format.
    pub fn of(port: u16) -> Scrape {
        use std::io::Read;
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // HTTP/1.0: the answer comes whole, not chunked (etcd's Go server chunks it for 1.1).
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let response = String::from_utf8(response).expect("the exposition is UTF-8");
        let (head, text) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200 ") || head.starts_with("HTTP/1.0 200 "), "{head}");
        let content_type = head.lines().find_map(|line| line.strip_prefix("Content-Type: "));
        assert_eq!(content_type, Some("text/plain; version=0.0.4; charset=utf-8"), "{head}");
        Scrape::parse(text)
    }

    pub fn parse(text: &str) -> Scrape {
        let mut samples = std::collections::BTreeMap::new();
        for line in text.lines().filter(|line| !line.is_empty() && !line.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                value => value.parse().unwrap_or_else(|_| panic!("a number in {line:?}")),
            };
            assert!(samples.insert(series.to_owned(), value).is_none(), "one sample per series: {line:?}");
        }
        Scrape { text: text.to_owned(), samples }
    }

    /// The value of `series`; the series must be there.
    pub fn value(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("no series {series} in the exposition"))
    }
}
