//! Where the time of a request goes (DESIGN §3): one HDR histogram per stage and core, in
//! microseconds, exported merged at `GET /debug/latency` (and as Prometheus histograms in
//! seconds at `GET /metrics`, `api::metrics`).
//!
//! Stages of a write, in order: `queue` (client core to the raft core), `batch` (waiting in
//! the raft core for the entry that carries it), `wal_sync` (the WAL write and fdatasync of
//! the Ready holding the entry), `commit` (handed to the WAL until committed by a quorum),
//! `apply` (applying a turn's entries to the store), `store_commit` (making the turn visible
//! to readers) and `write_total` (client core: from the request to its answer). Reads:
//! `read_index` (a linearizable read's barrier, client core) and `read_total`. Durable store
//! checkpoints: `checkpoint`.
//!
//! Each core records into its own histograms (a mutex per core, uncontended except while
//! the endpoint reads). The export gives, per stage, count, min, percentiles and max, plus
//! the whole histogram (hdrhistogram's V2 serialization, base64) so that a client can take
//! the difference of two reads (ringbench does, before and after a run).

use std::sync::Mutex;
use std::time::Instant;

use base64::Engine;
use hdrhistogram::Histogram;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Queue,
    Batch,
    WalSync,
    Commit,
    Apply,
    StoreCommit,
    Checkpoint,
    WriteTotal,
    ReadIndex,
    ReadTotal,
}

pub const STAGES: [(Stage, &str); 10] = [
    (Stage::Queue, "queue"),
    (Stage::Batch, "batch"),
    (Stage::WalSync, "wal_sync"),
    (Stage::Commit, "commit"),
    (Stage::Apply, "apply"),
    (Stage::StoreCommit, "store_commit"),
    (Stage::Checkpoint, "checkpoint"),
    (Stage::WriteTotal, "write_total"),
    (Stage::ReadIndex, "read_index"),
    (Stage::ReadTotal, "read_total"),
];

/// Up to an hour, 3 significant digits.
const HIGHEST_MICROS: u64 = 3_600_000_000;

pub struct Latency {
    cores: Vec<Mutex<Vec<Histogram<u64>>>>,
}

impl Latency {
    pub fn new(cores: usize) -> Latency {
        let stages = || {
            STAGES
                .iter()
                .map(|_| Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("valid histogram bounds"))
                .collect()
        };
        Latency { cores: (0..cores).map(|_| Mutex::new(stages())).collect() }
    }

    pub fn record(&self, core: usize, stage: Stage, micros: u64) {
        let mut histograms = self.cores[core].lock().unwrap();
        histograms[stage as usize].saturating_record(micros.clamp(1, HIGHEST_MICROS));
    }

    pub fn record_since(&self, core: usize, stage: Stage, since: Instant) {
        self.record(core, stage, since.elapsed().as_micros() as u64);
    }

    /// All cores merged, one histogram per stage in `STAGES`' order.
    pub fn merged(&self) -> Vec<Histogram<u64>> {
        let mut merged: Vec<Histogram<u64>> = STAGES
            .iter()
            .map(|_| Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("valid histogram bounds"))
            .collect();
        for core in &self.cores {
            let histograms = core.lock().unwrap();
            for (total, histogram) in merged.iter_mut().zip(histograms.iter()) {
                total.add(histogram).expect("same bounds");
            }
        }
        merged
    }

    /// All cores merged, per stage.
    pub fn json(&self) -> serde_json::Value {
        let merged = self.merged();
        let mut stages = serde_json::Map::new();
        for ((_, name), histogram) in STAGES.iter().zip(merged.iter()) {
            let mut serialized = Vec::new();
            hdrhistogram::serialization::Serializer::serialize(
                &mut hdrhistogram::serialization::V2Serializer::new(),
                histogram,
                &mut serialized,
            )
            .expect("serializing into a Vec");
            stages.insert(
                (*name).to_owned(),
                serde_json::json!({
                    "count": histogram.len(),
                    "min": if histogram.is_empty() { 0 } else { histogram.min() },
                    "p50": histogram.value_at_quantile(0.5),
                    "p90": histogram.value_at_quantile(0.9),
                    "p99": histogram.value_at_quantile(0.99),
                    "p999": histogram.value_at_quantile(0.999),
                    "max": histogram.max(),
                    "histogram": base64::engine::general_purpose::STANDARD.encode(&serialized),
                }),
            );
        }
        serde_json::json!({ "unit": "us", "stages": stages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_merge_and_the_histogram_round_trips() {
        let latency = Latency::new(2);
        for micros in 1..=100 {
            latency.record(0, Stage::Queue, micros);
            latency.record(1, Stage::Queue, micros + 100);
        }
        latency.record(1, Stage::Apply, 7);
        let json = latency.json();
        let queue = &json["stages"]["queue"];
        assert_eq!(queue["count"], 200);
        assert_eq!(queue["min"], 1);
        assert_eq!(queue["max"], 200);
        assert_eq!(queue["p50"], 100);
        assert_eq!(json["stages"]["apply"]["count"], 1);
        assert_eq!(json["stages"]["commit"]["count"], 0);
        let bytes = base64::engine::general_purpose::STANDARD.decode(queue["histogram"].as_str().unwrap()).unwrap();
        let decoded: Histogram<u64> =
            hdrhistogram::serialization::Deserializer::new().deserialize(&mut bytes.as_slice()).unwrap();
        assert_eq!(decoded.len(), 200);
        assert_eq!(decoded.value_at_quantile(0.99), 198);
    }
}
