//! The server's counters behind `GET /metrics` (rendered by `api::metrics` with etcd's metric
//! names): what the MVCC store was asked to do, Raft's leader changes and failed or pending
//! proposals. The gauges (leader, indexes, db sizes) are `Shared`'s published state, and the
//! latency histograms are `latency`'s; nothing here is read on a request's path.
//!
//! Each core counts into its own line of atomics (relaxed adds, no sharing between cores
//! while serving); the endpoint sums the cores. The store's operations are counted as the
//! requests asked for them: a Range request is one range, a Put one put, a DeleteRange one
//! delete, and a Txn counts each operation of the branch it took (nested txns' included) and
//! is itself one txn when it did more than one operation (etcd's `mvcc/metrics_txn.go` rule
//! for a txn; etcd also counts its own reads inside a request, a txn's compares or a put's
//! prev_kv, as ranges, which ringd does not). Writes are counted where they are applied and
//! committed, so every member counts them (etcd's "seen by this member"); reads where they
//! are answered.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::api::pb::etcdserverpb as pb;

/// One core's counters, on a cache line pair of its own.
#[repr(align(128))]
#[derive(Default)]
pub struct CoreCounts {
    pub ranges: AtomicU64,
    pub puts: AtomicU64,
    pub deletes: AtomicU64,
    pub txns: AtomicU64,
    /// Bytes of key and value of every put (etcd_debugging_mvcc_total_put_size_in_bytes).
    pub put_bytes: AtomicU64,
    /// Proposals that failed: no leader, the request timeout, the server stopping.
    pub proposals_failed: AtomicU64,
    /// Proposals sent to the raft core from this core and not answered yet.
    pub proposals_started: AtomicU64,
    pub proposals_ended: AtomicU64,
}

/// The counters of every core, and the member's leader changes.
pub struct Counts {
    cores: Box<[CoreCounts]>,
    /// Times this member saw a new leader (set by the raft core; etcd counts the first too).
    pub leader_changes: AtomicU64,
}

/// The sums over the cores, as the endpoint reports them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub ranges: u64,
    pub puts: u64,
    pub deletes: u64,
    pub txns: u64,
    pub put_bytes: u64,
    pub proposals_failed: u64,
    pub proposals_pending: u64,
}

impl Counts {
    pub fn new(cores: usize) -> Counts {
        assert!(cores > 0, "a server has at least one core");
        Counts { cores: (0..cores).map(|_| CoreCounts::default()).collect(), leader_changes: AtomicU64::new(0) }
    }

    pub fn core(&self, core: usize) -> &CoreCounts {
        &self.cores[core]
    }

    /// Adds what `tally` counted to `core`'s counters.
    pub fn add(&self, core: usize, tally: &Tally) {
        let counts = self.core(core);
        counts.ranges.fetch_add(tally.ranges, Ordering::Relaxed);
        counts.puts.fetch_add(tally.puts, Ordering::Relaxed);
        counts.deletes.fetch_add(tally.deletes, Ordering::Relaxed);
        counts.txns.fetch_add(tally.txns, Ordering::Relaxed);
        counts.put_bytes.fetch_add(tally.put_bytes, Ordering::Relaxed);
    }

    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        let mut started = 0;
        let mut ended = 0;
        for counts in self.cores.iter() {
            totals.ranges += counts.ranges.load(Ordering::Relaxed);
            totals.puts += counts.puts.load(Ordering::Relaxed);
            totals.deletes += counts.deletes.load(Ordering::Relaxed);
            totals.txns += counts.txns.load(Ordering::Relaxed);
            totals.put_bytes += counts.put_bytes.load(Ordering::Relaxed);
            totals.proposals_failed += counts.proposals_failed.load(Ordering::Relaxed);
            // Ended first: a proposal that starts and ends between the two loads is then
            // seen ended and not started at worst, which the saturation below absorbs.
            ended += counts.proposals_ended.load(Ordering::Relaxed);
            started += counts.proposals_started.load(Ordering::Relaxed);
        }
        totals.proposals_pending = started.saturating_sub(ended);
        totals
    }
}

/// A proposal counted pending from its start until dropped, on every return path.
pub struct Pending<'a> {
    counts: &'a CoreCounts,
}

impl<'a> Pending<'a> {
    pub fn start(counts: &'a CoreCounts) -> Pending<'a> {
        counts.proposals_started.fetch_add(1, Ordering::Relaxed);
        Pending { counts }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.counts.proposals_ended.fetch_add(1, Ordering::Relaxed);
    }
}

/// The store's operations of some requests, counted before they are added to a core's
/// counters: a leader that applies writes ahead of their commit adds them only once they
/// commit (entries it drops are applied, and counted, again or never).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ranges: u64,
    pub puts: u64,
    pub deletes: u64,
    pub txns: u64,
    pub put_bytes: u64,
}

impl Tally {
    pub fn put(&mut self, request: &pb::PutRequest) {
        self.puts += 1;
        self.put_bytes += (request.key.len() + request.value.len()) as u64;
    }

    pub fn delete(&mut self) {
        self.deletes += 1;
    }

    /// A txn: each operation of the branch it took (nested txns' included), and the txn
    /// itself when it did more than one.
    pub fn txn(&mut self, request: &pb::TxnRequest, response: &pb::TxnResponse) {
        let before = self.ranges + self.puts + self.deletes;
        self.operations(request, response);
        if self.ranges + self.puts + self.deletes - before > 1 {
            self.txns += 1;
        }
    }

    fn operations(&mut self, request: &pb::TxnRequest, response: &pb::TxnResponse) {
        use pb::request_op::Request;
        use pb::response_op::Response;
        let branch = if response.succeeded { &request.success } else { &request.failure };
        // The response has one entry per operation of the branch taken, in order.
        debug_assert_eq!(branch.len(), response.responses.len(), "one response per operation");
        for (operation, answer) in branch.iter().zip(response.responses.iter()) {
            match (&operation.request, &answer.response) {
                (Some(Request::RequestRange(_)), _) => self.ranges += 1,
                (Some(Request::RequestPut(put)), _) => self.put(put),
                (Some(Request::RequestDeleteRange(_)), _) => self.delete(),
                (Some(Request::RequestTxn(nested)), Some(Response::ResponseTxn(nested_response))) => {
                    self.operations(nested, nested_response)
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_op::Request;
    use pb::response_op::Response;

    fn put(key: &str, value: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })),
        }
    }

    fn range(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestRange(pb::RangeRequest { key: key.into(), ..Default::default() })),
        }
    }

    fn answers(responses: Vec<Response>) -> Vec<pb::ResponseOp> {
        responses.into_iter().map(|response| pb::ResponseOp { response: Some(response) }).collect()
    }

    #[test]
    fn a_txn_counts_the_operations_of_the_branch_it_took_nested_ones_too() {
        let counts = Counts::new(2);
        let nested = pb::TxnRequest { success: vec![put("n", "vv"), range("n")], ..Default::default() };
        let request = pb::TxnRequest {
            success: vec![put("a", "1")],
            failure: vec![range("a"), pb::RequestOp { request: Some(Request::RequestTxn(nested)) }, put("bb", "22")],
            ..Default::default()
        };
        let nested_response = pb::TxnResponse {
            succeeded: true,
            responses: answers(vec![
                Response::ResponsePut(Default::default()),
                Response::ResponseRange(Default::default()),
            ]),
            ..Default::default()
        };
        let response = pb::TxnResponse {
            succeeded: false,
            responses: answers(vec![
                Response::ResponseRange(Default::default()),
                Response::ResponseTxn(nested_response),
                Response::ResponsePut(Default::default()),
            ]),
            ..Default::default()
        };
        let mut tally = Tally::default();
        tally.txn(&request, &response);
        counts.add(1, &tally);
        let totals = counts.totals();
        assert_eq!((totals.ranges, totals.puts, totals.deletes, totals.txns), (2, 2, 0, 1));
        assert_eq!(totals.put_bytes, 3 + 4);
        // One operation is not a txn (etcd counts a txn of more than one).
        let single = pb::TxnRequest { success: vec![put("a", "1")], ..Default::default() };
        let single_response = pb::TxnResponse {
            succeeded: true,
            responses: answers(vec![Response::ResponsePut(Default::default())]),
            ..Default::default()
        };
        let mut tally = Tally::default();
        tally.txn(&single, &single_response);
        counts.add(0, &tally);
        assert_eq!(counts.totals().txns, 1);
        assert_eq!(counts.totals().puts, 3);
    }

    #[test]
    fn pending_proposals_end_when_dropped() {
        let counts = Counts::new(1);
        let first = Pending::start(counts.core(0));
        let second = Pending::start(counts.core(0));
        assert_eq!(counts.totals().proposals_pending, 2);
        drop(first);
        assert_eq!(counts.totals().proposals_pending, 1);
        drop(second);
        assert_eq!(counts.totals().proposals_pending, 0);
    }
}
