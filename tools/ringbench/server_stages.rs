//! Server-side latency by stage (issue 8): ringd's `GET /debug/latency` (src/server/
//! latency.rs), read from every endpoint before and after a load run. The server's
//! histograms count since it started, so the run's own share of each stage is the after
//! histogram minus the before histogram (hdrhistogram's `subtract`); the shares of the
//! endpoints are then merged. A server that is not ringd (etcd answers 404) gives no
//! section and no error. For a put run against one member, the text looks like:
//!
//! ```text
//! Server-side latency by stage (ringd /debug/latency, this run only):
//!   stage          count      p50      p90      p99    p99.9      max   (µs)
//!   queue            200       32       55      159      182      182
//!   batch             25        2        3        5        5        5
//!   wal_sync          50      261      326      705      705      705
//!   commit            25      206      275      513      513      513
//!   apply             25       13       27       35       35       35
//!   store_commit      25       76      121      147      147      147
//!   write_total      200      451      555     1081     1081     1081
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use base64::Engine;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use ringd::client::Endpoint;
use ringd::server::latency::STAGES;

const LATENCY_PATH: &str = "/debug/latency";
/// Bounds each connect, write and read of one /debug/latency request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Ten stages of serialized histograms are a few KiB; a larger answer is not ringd's.
const RESPONSE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// One read of one member's /debug/latency: stage name to its histogram, in microseconds.
pub struct Snapshot {
    authority: String,
    stages: BTreeMap<String, Histogram<u64>>,
}

/// What one run cost per stage on the server side, merged over the endpoints, in the
/// order of the server's stages; only stages that saw at least one event.
pub struct ServerStages {
    stages: Vec<(String, Histogram<u64>)>,
}

/// The members behind --endpoints, each once (the same member listed twice is read once).
pub fn endpoints_of(texts: &[String]) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for endpoint in texts.iter().filter_map(|text| Endpoint::parse(text).ok()) {
        if !endpoints.iter().any(|known| known.authority() == endpoint.authority()) {
            endpoints.push(endpoint);
        }
    }
    endpoints
}

/// Every endpoint's histograms; None when any endpoint is not ringd (no section then).
pub fn capture(endpoints: &[Endpoint]) -> Result<Option<Vec<Snapshot>>, String> {
    let mut snapshots = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let Some(json) = fetch_latency_json(endpoint)? else { return Ok(None) };
        let Some(snapshot) = snapshot_of(endpoint.authority(), &json)? else { return Ok(None) };
        snapshots.push(snapshot);
    }
    assert_eq!(snapshots.len(), endpoints.len());
    Ok((!snapshots.is_empty()).then_some(snapshots))
}

/// The run's share: `after - before` per endpoint and stage, then summed over endpoints.
pub fn difference(before: Vec<Snapshot>, after: Vec<Snapshot>) -> Result<ServerStages, String> {
    assert_eq!(before.len(), after.len(), "one snapshot per endpoint, both times");
    let mut merged: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    for (before, mut after) in before.into_iter().zip(after) {
        assert_eq!(before.authority, after.authority);
        for (name, histogram) in after.stages.iter_mut() {
            if let Some(earlier) = before.stages.get(name) {
                histogram.subtract(earlier).map_err(|error| {
                    format!("{} {name}: histograms shrank during the run (restarted?): {error:?}", after.authority)
                })?;
            }
        }
        for (name, histogram) in after.stages {
            match merged.get_mut(&name) {
                Some(total) => total.add(&histogram).map_err(|error| format!("merging {name}: {error:?}"))?,
                None => drop(merged.insert(name, histogram)),
            }
        }
    }
    let server_order = |name: &str| STAGES.iter().position(|(_, known)| *known == name).unwrap_or(STAGES.len());
    let mut stages: Vec<(String, Histogram<u64>)> =
        merged.into_iter().filter(|(_, histogram)| !histogram.is_empty()).collect();
    stages.sort_by(|a, b| server_order(&a.0).cmp(&server_order(&b.0)).then(a.0.cmp(&b.0)));
    Ok(ServerStages { stages })
}

/// (p50, p90, p99, p99.9, max) of a stage, in microseconds.
fn summary(histogram: &Histogram<u64>) -> [u64; 5] {
    assert!(!histogram.is_empty(), "only stages with events are reported");
    let quantile = |q: f64| histogram.value_at_quantile(q);
    [quantile(0.5), quantile(0.9), quantile(0.99), quantile(0.999), histogram.max()]
}

impl ServerStages {
    pub fn render(&self) -> String {
        if self.stages.is_empty() {
            return String::new();
        }
        let mut text = String::from("\nServer-side latency by stage (ringd /debug/latency, this run only):\n");
        let _ = writeln!(
            text,
            "  {:<13}{:>7}{:>9}{:>9}{:>9}{:>9}{:>9}   (µs)",
            "stage", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, histogram) in &self.stages {
            let [p50, p90, p99, p999, max] = summary(histogram);
            let count = histogram.len();
            let _ = writeln!(text, "  {name:<13}{count:>7}{p50:>9}{p90:>9}{p99:>9}{p999:>9}{max:>9}");
        }
        text
    }

    /// The same numbers for --output json, in the shape of the server's own export.
    pub fn json(&self) -> serde_json::Value {
        let mut stages = serde_json::Map::new();
        for (name, histogram) in &self.stages {
            let [p50, p90, p99, p999, max] = summary(histogram);
            stages.insert(
                name.clone(),
                serde_json::json!({
                    "count": histogram.len(), "p50": p50, "p90": p90, "p99": p99, "p999": p999, "max": max,
                }),
            );
        }
        serde_json::json!({ "unit": "us", "stages": stages })
    }
}

/// `GET /debug/latency` over HTTP/1.1 on the endpoint's own port (ringd serves HTTP/1.1
/// beside gRPC there). Ok(None) when the server answers anything but 200 (etcd: 404).
fn fetch_latency_json(endpoint: &Endpoint) -> Result<Option<serde_json::Value>, String> {
    let authority = endpoint.authority();
    let address = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|error| format!("{authority}: {error}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, HTTP_TIMEOUT)
        .map_err(|error| format!("{authority}: connect for {LATENCY_PATH}: {error}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).and_then(|_| stream.set_write_timeout(Some(HTTP_TIMEOUT))).ok();
    let request = format!("GET {LATENCY_PATH} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    stream
        .write_all(request.as_bytes())
        .and_then(|_| stream.take(RESPONSE_BYTES_MAX).read_to_end(&mut response))
        .map_err(|error| format!("{authority}: GET {LATENCY_PATH}: {error}"))?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return Ok(None) };
    let status = head.lines().next().and_then(|line| line.split_whitespace().nth(1));
    if status != Some("200") {
        return Ok(None);
    }
    Ok(serde_json::from_str(body).ok())
}

/// The histograms of ringd's export; None when the JSON is not ringd's (`"unit": "us"`).
fn snapshot_of(authority: String, json: &serde_json::Value) -> Result<Option<Snapshot>, String> {
    let (Some("us"), Some(exported)) = (json["unit"].as_str(), json["stages"].as_object()) else { return Ok(None) };
    let mut stages = BTreeMap::new();
    for (name, stage) in exported {
        let encoded = stage["histogram"].as_str().ok_or_else(|| format!("{authority} {name}: no histogram"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|error| format!("{authority} {name}: histogram is not base64: {error}"))?;
        let histogram: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|error| format!("{authority} {name}: histogram does not deserialize: {error:?}"))?;
        // Read back as written: the decoded histogram must agree with the export's count.
        if stage["count"].as_u64() != Some(histogram.len()) {
            return Err(format!(
                "{authority} {name}: count {} but histogram holds {}",
                stage["count"],
                histogram.len()
            ));
        }
        stages.insert(name.clone(), histogram);
    }
    Ok(Some(Snapshot { authority, stages }))
}
