//! etcd's KV semantics on top of the MVCC store (etcd's `etcdserver/apply.go`): request
//! validation, Range options (sort, limit, min/max revision filters, keys/count only), Put's
//! ignore_value / ignore_lease / prev_kv, DeleteRange, and Txn with compares, nested txns and
//! etcd's duplicate-key rule. Functions here are pure over a store view: no I/O, no cores.

use std::collections::BTreeSet;

use crate::api::errors::{self, Status};
use crate::api::pb::etcdserverpb::{self as pb, compare, range_request, request_op, response_op};
use crate::api::pb::mvccpb;
use crate::mvcc::{self, KeyValue, MvccError, RangeOptions, RangeResult};

/// What can answer a range: a committed snapshot (reads) or the open write txn (inside Txn).
pub trait View {
    fn range_at(&self, key: &[u8], range_end: &[u8], options: &RangeOptions) -> Result<RangeResult, MvccError>;
}

impl View for mvcc::Snapshot {
    fn range_at(&self, key: &[u8], range_end: &[u8], options: &RangeOptions) -> Result<RangeResult, MvccError> {
        self.range(key, range_end, options)
    }
}

impl View for mvcc::WriteTxn<'_> {
    fn range_at(&self, key: &[u8], range_end: &[u8], options: &RangeOptions) -> Result<RangeResult, MvccError> {
        self.range(key, range_end, options)
    }
}

pub fn mvcc_status(error: MvccError) -> Status {
    match error {
        MvccError::Compacted => errors::COMPACTED,
        MvccError::FutureRevision => errors::FUTURE_REV,
        #[allow(unreachable_patterns)]
        other => Status::with_message(errors::Code::Internal, other.to_string()),
    }
}

pub fn to_pb(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

// ---- validation (etcd's api/v3rpc/key.go) ----

pub fn check_range(request: &pb::RangeRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(errors::EMPTY_KEY);
    }
    // etcd 3.5's checkRangeRequest: values outside the enums are refused.
    if range_request::SortOrder::try_from(request.sort_order).is_err()
        || range_request::SortTarget::try_from(request.sort_target).is_err()
    {
        return Err(errors::INVALID_SORT_OPTION);
    }
    Ok(())
}

pub fn check_put(request: &pb::PutRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(errors::EMPTY_KEY);
    }
    // etcd bounds a key only by the request size; ringd's B+tree cells bound it further.
    if request.key.len() > mvcc::KEY_SIZE_MAX_BYTES {
        return Err(errors::KEY_TOO_LARGE);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(errors::VALUE_PROVIDED);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(errors::LEASE_PROVIDED);
    }
    Ok(())
}

pub fn check_delete(request: &pb::DeleteRangeRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(errors::EMPTY_KEY);
    }
    Ok(())
}

/// etcd's checkTxnRequest plus checkIntervals on both branches.
pub fn check_txn(request: &pb::TxnRequest, max_txn_ops: usize) -> Result<(), Status> {
    check_txn_ops(request, max_txn_ops, 1)?;
    check_intervals(&request.success)?;
    check_intervals(&request.failure)?;
    Ok(())
}

/// `depth` is the nesting of `request` (1 for the client's own txn).
fn check_txn_ops(request: &pb::TxnRequest, max_txn_ops: usize, depth: usize) -> Result<(), Status> {
    let ops = request.compare.len().max(request.success.len()).max(request.failure.len());
    if ops > max_txn_ops {
        return Err(errors::TOO_MANY_OPS);
    }
    if depth > super::entry::TXN_DEPTH_MAX {
        return Err(errors::TXN_TOO_DEEP);
    }
    if request.compare.iter().any(|c| c.key.is_empty()) {
        return Err(errors::EMPTY_KEY);
    }
    for op in request.success.iter().chain(request.failure.iter()) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(r)?,
            Some(request_op::Request::RequestPut(r)) => check_put(r)?,
            Some(request_op::Request::RequestDeleteRange(r)) => check_delete(r)?,
            Some(request_op::Request::RequestTxn(r)) => check_txn_ops(r, max_txn_ops - ops, depth + 1)?,
            None => return Err(errors::KEY_NOT_FOUND),
        }
    }
    Ok(())
}

/// A half-open key interval [start, end); `end` empty means the single key `start`, and
/// `end == [0]` means every key from `start` on.
#[derive(Clone, Debug)]
struct Interval {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn contains(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            return self.start == key;
        }
        key >= self.start.as_slice() && (self.end == [0] || key < self.end.as_slice())
    }
}

/// etcd's rule: within one txn (and its nested txns) a key may be put at most once and
/// may not be both put and deleted. Returns the puts and deletes of `ops`.
fn check_intervals(ops: &[pb::RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<Interval>), Status> {
    let mut deletes: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => {
                Some(Interval { start: d.key.clone(), end: d.range_end.clone() })
            }
            _ => None,
        })
        .collect();
    let mut puts = BTreeSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(txn)) = &op.request else { continue };
        let (puts_then, deletes_then) = check_intervals(&txn.success)?;
        let (puts_else, deletes_else) = check_intervals(&txn.failure)?;
        for key in &puts_then {
            if puts.contains(key) || deletes.iter().any(|d| d.contains(key)) {
                return Err(errors::DUPLICATE_KEY);
            }
            puts.insert(key.clone());
        }
        for key in &puts_else {
            if (puts.contains(key) && !puts_then.contains(key)) || deletes.iter().any(|d| d.contains(key)) {
                return Err(errors::DUPLICATE_KEY);
            }
            puts.insert(key.clone());
        }
        deletes.extend(deletes_then);
        deletes.extend(deletes_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(put)) = &op.request else { continue };
        if puts.contains(&put.key) || deletes.iter().any(|d| d.contains(&put.key)) {
            return Err(errors::DUPLICATE_KEY);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deletes))
}

// ---- Range ----

/// etcd's applierV3backend.Range. `header.revision` is the store revision of the view.
pub fn range(view: &impl View, request: &pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
    let needs_all = request.sort_order != range_request::SortOrder::None as i32
        || request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0;
    let mut limit = if needs_all { 0 } else { request.limit };
    if limit > 0 {
        limit = limit.saturating_add(1); // one more to learn whether there are more
    }
    let options = RangeOptions {
        revision: request.revision,
        limit,
        keys_only: request.keys_only,
        count_only: request.count_only,
    };
    let result = view.range_at(&request.key, &request.range_end, &options).map_err(mvcc_status)?;
    let mut kvs = result.kvs;
    filter_revisions(&mut kvs, request);
    sort(&mut kvs, request);
    let mut more = false;
    if request.limit > 0 && kvs.len() > request.limit as usize {
        kvs.truncate(request.limit as usize);
        more = true;
    }
    if request.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value = Vec::new());
    }
    let kvs = if request.count_only { Vec::new() } else { kvs.into_iter().map(to_pb).collect() };
    Ok(pb::RangeResponse {
        header: Some(pb::ResponseHeader { revision: result.revision, ..Default::default() }),
        kvs,
        more,
        count: result.count,
    })
}

fn filter_revisions(kvs: &mut Vec<KeyValue>, request: &pb::RangeRequest) {
    if request.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= request.max_mod_revision);
    }
    if request.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= request.min_mod_revision);
    }
    if request.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= request.max_create_revision);
    }
    if request.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= request.min_create_revision);
    }
}

fn sort(kvs: &mut [KeyValue], request: &pb::RangeRequest) {
    use range_request::{SortOrder, SortTarget};
    let target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        // The store returns keys ascending; any other target sorts ascending by default.
        order = SortOrder::Ascend;
    }
    if order == SortOrder::None || (target == SortTarget::Key && order == SortOrder::Ascend) {
        return;
    }
    match target {
        SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

// ---- writes ----

/// Reads the current live value of one key through `view`.
fn current(view: &impl View, key: &[u8]) -> Result<Option<KeyValue>, Status> {
    let options = RangeOptions { revision: 0, limit: 1, keys_only: false, count_only: false };
    let result = view.range_at(key, &[], &options).map_err(mvcc_status)?;
    Ok(result.kvs.into_iter().next())
}

/// What the KV operations tell the lessor, so that each lease knows its keys (the apply
/// task implements it with the lessor; every member applies the same).
pub trait Leases {
    fn exists(&self, lease: i64) -> bool;
    /// `key` was written with `lease` (0: none); before, it had `previous` (0: none or new).
    fn written(&mut self, key: &[u8], previous: i64, lease: i64);
    /// `key`, attached to `lease` (0: none), was deleted.
    fn deleted(&mut self, key: &[u8], lease: i64);
}

/// The checks etcd makes before any op of a txn runs, so that a txn applies whole or not at
/// all: leases exist and keys that ignore_value / ignore_lease need are there.
fn check_put_preconditions(view: &impl View, leases: &dyn Leases, request: &pb::PutRequest) -> Result<(), Status> {
    if request.lease != 0 && !leases.exists(request.lease) {
        return Err(errors::LEASE_NOT_FOUND);
    }
    if (request.ignore_value || request.ignore_lease) && current(view, &request.key)?.is_none() {
        return Err(errors::KEY_NOT_FOUND);
    }
    Ok(())
}

pub fn put(
    txn: &mut mvcc::WriteTxn<'_>,
    leases: &mut dyn Leases,
    request: &pb::PutRequest,
) -> Result<pb::PutResponse, Status> {
    check_put_preconditions(txn, leases, request)?;
    put_unchecked(txn, leases, request)
}

fn put_unchecked(
    txn: &mut mvcc::WriteTxn<'_>,
    leases: &mut dyn Leases,
    request: &pb::PutRequest,
) -> Result<pb::PutResponse, Status> {
    let (value, lease) = if request.ignore_value || request.ignore_lease {
        let previous = current(txn, &request.key)?.ok_or(errors::KEY_NOT_FOUND)?;
        let value = if request.ignore_value { previous.value } else { request.value.clone() };
        let lease = if request.ignore_lease { previous.lease } else { request.lease };
        (value, lease)
    } else {
        (request.value.clone(), request.lease)
    };
    // Without prev_kv only the previous lease is needed: the old value is not copied out.
    let (previous_lease, prev_kv) = if request.prev_kv {
        let previous = txn.put(&request.key, &value, lease);
        (previous.as_ref().map_or(0, |kv| kv.lease), previous.map(to_pb))
    } else {
        (txn.put_returning_previous_lease(&request.key, &value, lease).unwrap_or(0), None)
    };
    leases.written(&request.key, previous_lease, lease);
    Ok(pb::PutResponse { header: Some(pb::ResponseHeader::default()), prev_kv })
}

pub fn delete_range(
    txn: &mut mvcc::WriteTxn<'_>,
    leases: &mut dyn Leases,
    request: &pb::DeleteRangeRequest,
) -> pb::DeleteRangeResponse {
    let deleted = txn.delete_range(&request.key, &request.range_end);
    for kv in &deleted {
        leases.deleted(&kv.key, kv.lease);
    }
    pb::DeleteRangeResponse {
        header: Some(pb::ResponseHeader::default()),
        deleted: deleted.len() as i64,
        prev_kvs: if request.prev_kv { deleted.into_iter().map(to_pb).collect() } else { Vec::new() },
    }
}

// ---- Txn ----

/// Whether a txn only reads, whichever branch it takes (etcd's isTxnReadonly): such a txn
/// is answered from a snapshot on the receiving core.
pub fn is_read_only(request: &pb::TxnRequest) -> bool {
    request.success.iter().chain(request.failure.iter()).all(|op| match &op.request {
        Some(request_op::Request::RequestRange(_)) => true,
        Some(request_op::Request::RequestTxn(nested)) => is_read_only(nested),
        _ => false,
    })
}

/// Which branch each txn takes, in pre-order, decided on the state before any op runs
/// (etcd's compareToPath): nested compares do not see the outer txn's writes.
fn branch_path(view: &impl View, request: &pb::TxnRequest, path: &mut Vec<bool>) -> Result<(), Status> {
    let succeeded = compares_hold(view, &request.compare)?;
    path.push(succeeded);
    let ops = if succeeded { &request.success } else { &request.failure };
    for op in ops {
        if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
            branch_path(view, nested, path)?;
        }
    }
    Ok(())
}

fn compares_hold(view: &impl View, compares: &[pb::Compare]) -> Result<bool, Status> {
    for c in compares {
        if !compare_holds(view, c)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// etcd's applyCompare: every key in the compare's range must satisfy it; a missing key
/// compares as a zero KeyValue, except that a value compare on a missing key fails.
fn compare_holds(view: &impl View, c: &pb::Compare) -> Result<bool, Status> {
    let options = RangeOptions { revision: 0, limit: 0, keys_only: false, count_only: false };
    let result = view.range_at(&c.key, &c.range_end, &options).map_err(mvcc_status)?;
    if result.kvs.is_empty() {
        return Ok(c.target != compare::CompareTarget::Value as i32 && compare_kv(c, &KeyValue::default()));
    }
    Ok(result.kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn compare_kv(c: &pb::Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let ordering = match target {
        CompareTarget::Value => {
            let wanted: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(wanted)
        }
        _ => {
            let (actual, wanted) = match (target, &c.target_union) {
                (CompareTarget::Version, Some(TargetUnion::Version(v))) => (kv.version, *v),
                (CompareTarget::Version, _) => (kv.version, 0),
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => (kv.create_revision, *v),
                (CompareTarget::Create, _) => (kv.create_revision, 0),
                (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => (kv.mod_revision, *v),
                (CompareTarget::Mod, _) => (kv.mod_revision, 0),
                (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => (kv.lease, *v),
                _ => (kv.lease, 0),
            };
            actual.cmp(&wanted)
        }
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
        CompareResult::NotEqual => ordering.is_ne(),
    }
}

/// Walks the taken branches and checks every put's preconditions before anything runs.
fn check_txn_preconditions(
    view: &impl View,
    leases: &dyn Leases,
    request: &pb::TxnRequest,
    path: &[bool],
    position: &mut usize,
) -> Result<(), Status> {
    let ops = if path[*position] { &request.success } else { &request.failure };
    *position += 1;
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(put)) => check_put_preconditions(view, leases, put)?,
            Some(request_op::Request::RequestTxn(nested)) => {
                check_txn_preconditions(view, leases, nested, path, position)?
            }
            _ => {}
        }
    }
    Ok(())
}

/// A read-only txn against a committed snapshot.
pub fn txn_read(view: &impl View, request: &pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
    let mut path = Vec::new();
    branch_path(view, request, &mut path)?;
    let mut position = 0;
    let mut response = read_ops(view, request, &path, &mut position)?;
    response.header = Some(pb::ResponseHeader::default());
    Ok(response)
}

fn read_ops(
    view: &impl View,
    request: &pb::TxnRequest,
    path: &[bool],
    position: &mut usize,
) -> Result<pb::TxnResponse, Status> {
    let succeeded = path[*position];
    *position += 1;
    let ops = if succeeded { &request.success } else { &request.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(nested_header(range(view, r)?))
            }
            Some(request_op::Request::RequestTxn(nested)) => {
                let mut inner = read_ops(view, nested, path, position)?;
                inner.header = Some(pb::ResponseHeader::default());
                response_op::Response::ResponseTxn(inner)
            }
            _ => unreachable!("read_ops runs only on read-only txns"),
        };
        responses.push(pb::ResponseOp { response: Some(response) });
    }
    Ok(pb::TxnResponse { header: None, succeeded, responses })
}

/// A nested range's header carries only the revision, as etcd's does.
fn nested_header(mut response: pb::RangeResponse) -> pb::RangeResponse {
    let revision = response.header.as_ref().map_or(0, |h| h.revision);
    response.header = Some(pb::ResponseHeader { revision, ..Default::default() });
    response
}

/// A txn that may write, inside the batch's write txn.
pub fn txn_write(
    txn: &mut mvcc::WriteTxn<'_>,
    leases: &mut dyn Leases,
    request: &pb::TxnRequest,
) -> Result<pb::TxnResponse, Status> {
    let mut path = Vec::new();
    branch_path(txn, request, &mut path)?;
    let mut position = 0;
    check_txn_preconditions(txn, leases, request, &path, &mut position)?;
    let mut position = 0;
    write_ops(txn, leases, request, &path, &mut position)
}

fn write_ops(
    txn: &mut mvcc::WriteTxn<'_>,
    leases: &mut dyn Leases,
    request: &pb::TxnRequest,
    path: &[bool],
    position: &mut usize,
) -> Result<pb::TxnResponse, Status> {
    let succeeded = path[*position];
    *position += 1;
    let ops = if succeeded { &request.success } else { &request.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(nested_header(range(&*txn, r)?))
            }
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(put_unchecked(txn, leases, p)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(delete_range(txn, leases, d))
            }
            Some(request_op::Request::RequestTxn(nested)) => {
                let mut inner = write_ops(txn, leases, nested, path, position)?;
                inner.header = Some(pb::ResponseHeader::default());
                response_op::Response::ResponseTxn(inner)
            }
            None => return Err(errors::KEY_NOT_FOUND),
        };
        responses.push(pb::ResponseOp { response: Some(response) });
    }
    Ok(pb::TxnResponse { header: Some(pb::ResponseHeader::default()), succeeded, responses })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest { key: key.into(), ..Default::default() })),
        }
    }

    fn delete_op(key: &str, end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn duplicate_keys_are_refused_as_etcd_does() {
        let txn = |ops: Vec<pb::RequestOp>| pb::TxnRequest { success: ops, ..Default::default() };
        assert_eq!(check_txn(&txn(vec![put_op("a"), put_op("a")]), 128), Err(errors::DUPLICATE_KEY));
        assert_eq!(check_txn(&txn(vec![put_op("b"), delete_op("a", "c")]), 128), Err(errors::DUPLICATE_KEY));
        assert_eq!(check_txn(&txn(vec![put_op("c"), delete_op("a", "c")]), 128), Ok(()));
        assert_eq!(check_txn(&txn(vec![put_op("a"), put_op("b")]), 128), Ok(()));
    }

    #[test]
    fn too_many_ops_are_refused() {
        let ops: Vec<_> = (0..3).map(|i| put_op(&format!("k{i}"))).collect();
        let request = pb::TxnRequest { success: ops, ..Default::default() };
        assert_eq!(check_txn(&request, 2), Err(errors::TOO_MANY_OPS));
        assert_eq!(check_txn(&request, 3), Ok(()));
    }

    /// etcd 3.5: a sort order or target outside its enum is refused, in a txn too.
    #[test]
    fn sort_options_outside_the_enums_are_refused_as_etcd_does() {
        let range = |sort_order: i32, sort_target: i32| pb::RangeRequest {
            key: b"k".to_vec(),
            sort_order,
            sort_target,
            ..Default::default()
        };
        assert_eq!(check_range(&range(2, 4)), Ok(()), "descend by value");
        assert_eq!(check_range(&range(3, 0)), Err(errors::INVALID_SORT_OPTION));
        assert_eq!(check_range(&range(0, 5)), Err(errors::INVALID_SORT_OPTION));
        assert_eq!(check_range(&range(-1, 0)), Err(errors::INVALID_SORT_OPTION));
        let op = pb::RequestOp { request: Some(request_op::Request::RequestRange(range(0, 9))) };
        let txn = pb::TxnRequest { failure: vec![op], ..Default::default() };
        assert_eq!(check_txn(&txn, 128), Err(errors::INVALID_SORT_OPTION));
    }
}
