//! TLS on the client port through the real binary: the real etcdctl and curl over https,
//! client certificates required with --client-cert-auth, and etcd's refusals of a bad
//! configuration. Certificates are made for each test (rcgen): a CA, a server certificate
//! for 127.0.0.1 and localhost, a client certificate. Every process is stopped by PID when
//! the test ends.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use support::{free_port, require_tool, ringd_fails_to_start, stdout};

/// PEM files of a CA, a server certificate and a client certificate it signed.
struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn make() -> Certificates {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "ringd test CA");
        std::fs::write(dir.path().join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaves = [
            ("server", vec!["127.0.0.1".to_owned(), "localhost".to_owned()], ExtendedKeyUsagePurpose::ServerAuth),
            ("client", vec![], ExtendedKeyUsagePurpose::ClientAuth),
        ];
        for (name, names, usage) in leaves {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let certificate = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), certificate.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Certificates { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

/// A ringd serving https on a fresh port, stopped (SIGKILL) when dropped.
struct TlsRingd {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl TlsRingd {
    fn start(certificates: &Certificates, extra_args: &[&str]) -> TlsRingd {
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_ringd"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--cert-file", &certificates.file("server.pem")])
            .args(["--key-file", &certificates.file("server.key")])
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the ringd binary");
        let ringd = TlsRingd { child, port, _data: data };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "ringd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        ringd
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRingd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real etcdctl against `endpoint` with short timeouts (a refused handshake ends in a
/// deadline, as with etcd).
fn etcdctl(endpoint: &str, tls_args: &[String], args: &[&str]) -> Output {
    Command::new(require_tool("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--dial-timeout", "3s", "--command-timeout", "5s"])
        .args(tls_args)
        .args(args)
        .output()
        .unwrap()
}

fn curl(args: &[&str]) -> Output {
    Command::new(require_tool("curl")).args(["-sS", "--max-time", "10"]).args(args).output().unwrap()
}

fn tls_args(certificates: &Certificates, names: &[(&str, &str)]) -> Vec<String> {
    names.iter().map(|(flag, file)| format!("--{flag}={}", certificates.file(file))).collect()
}

#[test]
fn etcdctl_and_curl_reach_ringd_over_https_and_plain_clients_do_not() {
    let certificates = Certificates::make();
    let ringd = TlsRingd::start(&certificates, &[]);
    let endpoint = ringd.endpoint();
    let trusting = tls_args(&certificates, &[("cacert", "ca.pem")]);
    let put = etcdctl(&endpoint, &trusting, &["put", "secure", "yes"]);
    assert!(put.status.success(), "{}", support::error_line(&put));
    assert_eq!(stdout(&etcdctl(&endpoint, &trusting, &["get", "secure"])), "secure\nyes\n");
    let status = etcdctl(&endpoint, &trusting, &["endpoint", "status", "-w", "json"]);
    assert!(stdout(&status).contains("\"leader\""), "{}", stdout(&status));
    // The JSON gateway and /metrics on the same port (curl gets HTTP/1.1 by ALPN).
    let ca = certificates.file("ca.pem");
    let range = curl(&["--cacert", &ca, &format!("{endpoint}/v3/kv/range"), "-d", r#"{"key":"c2VjdXJl"}"#]);
    assert!(stdout(&range).contains(r#""value":"eWVz""#), "{}", stdout(&range));
    let metrics = curl(&["--http2", "--cacert", &ca, &format!("{endpoint}/metrics")]);
    assert!(stdout(&metrics).contains("\netcd_server_has_leader 1\n"), "{}", stdout(&metrics));
    // A client that does not trust the CA, and one that speaks plain HTTP, get nothing.
    let untrusting = etcdctl(&endpoint, &[], &["get", "secure"]);
    assert!(!untrusting.status.success() && stdout(&untrusting).is_empty());
    assert!(!curl(&[&format!("{endpoint}/health")]).status.success(), "curl without the CA");
    let plain = curl(&[&format!("http://127.0.0.1:{}/health", ringd.port)]);
    assert!(!plain.status.success(), "plain HTTP on an https port: {}", stdout(&plain));
    // The server goes on serving after the refused handshakes.
    assert_eq!(stdout(&etcdctl(&endpoint, &trusting, &["get", "secure", "--print-value-only"])), "yes\n");
}

#[test]
fn client_cert_auth_admits_only_clients_with_a_certificate_of_the_trusted_ca() {
    let certificates = Certificates::make();
    let ca = certificates.file("ca.pem");
    let metrics_port = free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let ringd = TlsRingd::start(
        &certificates,
        &["--client-cert-auth", "--trusted-ca-file", &ca, "--listen-metrics-urls", &metrics_url],
    );
    let endpoint = ringd.endpoint();
    let with_certificate =
        tls_args(&certificates, &[("cacert", "ca.pem"), ("cert", "client.pem"), ("key", "client.key")]);
    let put = etcdctl(&endpoint, &with_certificate, &["put", "k", "v"]);
    assert!(put.status.success(), "{}", support::error_line(&put));
    let without = etcdctl(&endpoint, &tls_args(&certificates, &[("cacert", "ca.pem")]), &["get", "k"]);
    assert!(!without.status.success(), "a client without a certificate was served: {}", stdout(&without));
    // A server certificate is no client certificate (its extended key usage is serverAuth).
    let server_as_client =
        tls_args(&certificates, &[("cacert", "ca.pem"), ("cert", "server.pem"), ("key", "server.key")]);
    assert!(!etcdctl(&endpoint, &server_as_client, &["get", "k"]).status.success());
    let (cert, key) = (certificates.file("client.pem"), certificates.file("client.key"));
    let health = curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &format!("{endpoint}/health")]);
    assert_eq!(stdout(&health), r#"{"health":"true","reason":""}"#);
    assert!(!curl(&["--cacert", &ca, &format!("{endpoint}/health")]).status.success());
    // Prometheus needs no client certificate on --listen-metrics-urls (plain HTTP here).
    let scraped = curl(&[&format!("{metrics_url}/metrics")]);
    assert!(stdout(&scraped).contains("\netcd_mvcc_put_total 1\n"), "{}", stdout(&scraped));
}

#[test]
fn a_tls_configuration_that_cannot_work_is_refused_with_a_message() {
    let certificates = Certificates::make();
    let data: PathBuf = tempfile::tempdir().unwrap().keep();
    let https = format!("https://127.0.0.1:{}", free_port());
    let base = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["--data-dir".to_owned(), data.to_str().unwrap().to_owned()];
        args.extend(["--listen-client-urls", &https, "--advertise-client-urls", &https].map(str::to_owned));
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    };
    let (code, stderr) = ringd_fails_to_start(&base(&[]));
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        format!(
            "ringd: TLS key/cert (--cert-file, --key-file) must be provided for client url {https} with HTTPS scheme"
        )
    );
    let missing = Path::new(&certificates.file("absent.pem")).to_owned();
    let (code, stderr) = ringd_fails_to_start(&base(&[
        "--cert-file",
        missing.to_str().unwrap(),
        "--key-file",
        &certificates.file("server.key"),
    ]));
    assert_eq!(code, 2);
    assert!(stderr.contains("absent.pem") && stderr.contains("No such file"), "{stderr}");
    let (code, stderr) = ringd_fails_to_start(&base(&[
        "--cert-file",
        &certificates.file("server.pem"),
        "--key-file",
        &certificates.file("server.key"),
        "--client-cert-auth",
    ]));
    assert_eq!(code, 2);
    assert!(stderr.contains("--client-cert-auth needs --trusted-ca-file"), "{stderr}");
    let (code, stderr) = ringd_fails_to_start(&base(&[
        "--cert-file",
        &certificates.file("ca.pem"),
        "--key-file",
        &certificates.file("server.key"),
    ]));
    assert_eq!(code, 2, "a certificate that does not match its key: {stderr}");
    assert!(!data.join("member").exists(), "nothing written to the data dir");
    std::fs::remove_dir_all(&data).unwrap();
}

/// (this member's ID, the leader's ID) as an https member reports them.
fn ids(endpoint: &str, trusting: &[String]) -> Option<(u64, u64)> {
    let output = etcdctl(endpoint, trusting, &["endpoint", "status", "-w", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).ok()?;
    let status = &json[0]["Status"];
    Some((status["header"]["member_id"].as_u64()?, status["leader"].as_u64().filter(|&leader| leader != 0)?))
}

#[test]
fn a_follower_forwards_lease_calls_to_its_https_leader_and_ringbench_runs_over_https() {
    let certificates = Certificates::make();
    let ca = certificates.file("ca.pem");
    let peers: Vec<String> = (0..3).map(|_| format!("http://127.0.0.1:{}", free_port())).collect();
    let initial: Vec<String> = peers.iter().enumerate().map(|(i, url)| format!("m{i}={url}")).collect();
    let initial = initial.join(",");
    let members: Vec<TlsRingd> = (0..3)
        .map(|i| {
            let name = format!("m{i}");
            let mut args = vec!["--name", &name, "--initial-advertise-peer-urls", &peers[i]];
            args.extend(["--listen-peer-urls", &peers[i], "--initial-cluster", &initial]);
            args.extend(["--heartbeat-interval", "50", "--election-timeout", "500", "--trusted-ca-file", &ca]);
            TlsRingd::start(&certificates, &args)
        })
        .collect();
    let trusting = tls_args(&certificates, &[("cacert", "ca.pem")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (follower, leader) = loop {
        let known: Vec<Option<(u64, u64)>> = members.iter().map(|m| ids(&m.endpoint(), &trusting)).collect();
        let leader = known.iter().flatten().map(|&(_, leader)| leader).next();
        let follower = members.iter().zip(&known).find(|(_, ids)| ids.is_some_and(|(me, leader)| me != leader));
        let leading = members.iter().zip(&known).find(|(_, ids)| ids.is_some_and(|(me, leader)| me == leader));
        if let (Some(_), Some((follower, _)), Some((leading, _))) = (leader, follower, leading) {
            if known.iter().all(|ids| ids.map(|(_, l)| l) == leader) {
                break (follower, leading);
            }
        }
        assert!(Instant::now() < deadline, "no leader among the https members: {known:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // A keepalive and a time-to-live on a follower are answered by the leader's lessor, which
    // the follower reaches over the leader's https client URL.
    let granted = stdout(&etcdctl(&follower.endpoint(), &trusting, &["lease", "grant", "60"]));
    let lease = granted.split_whitespace().nth(1).unwrap_or_else(|| panic!("lease grant: {granted:?}")).to_owned();
    let kept = etcdctl(&follower.endpoint(), &trusting, &["lease", "keep-alive", "--once", &lease]);
    assert!(stdout(&kept).contains(&format!("lease {lease} keepalived with TTL(")), "{}", support::error_line(&kept));
    let alive = etcdctl(&follower.endpoint(), &trusting, &["lease", "timetolive", &lease]);
    assert!(stdout(&alive).contains("remaining"), "{} {}", stdout(&alive), support::error_line(&alive));
    // ringbench with --cacert, against the leader over https.
    let output = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args(["--endpoints", &leader.endpoint(), "--cacert", &ca, "--conns", "2", "--clients", "4"])
        .args(["put", "--key-size", "8", "--val-size", "16", "--total", "400"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout(&output).contains("Requests/sec"), "{}", stdout(&output));
    let metrics = curl(&["--cacert", &ca, &format!("{}/metrics", leader.endpoint())]);
    assert!(stdout(&metrics).contains("\netcd_mvcc_put_total 400\n"), "the leader applied every put");
    // Without --cacert ringbench says what is missing.
    let output = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args(["--endpoints", &leader.endpoint(), "put", "--total", "10"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--cacert"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
