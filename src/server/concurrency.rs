//! The Lock (v3lockpb) and Election (v3electionpb) services, as etcd serves them: its server
//! runs the client-side recipes of `clientv3/concurrency` against itself, and so does this
//! module, step for step, on top of the same KV, Lease and Watch that clients use.
//!
//! A session is a lease: the request's, or, when the request names lease 0, a new one of
//! etcd's default session TTL (60 s) that nobody keeps alive. A contender's key is
//! `<name>/<lease in hex>`, put with its lease; the contender whose key has the lowest
//! create revision under `<name>/` holds the lock or leads the election. A waiter watches
//! the key created just before its own until it is deleted (no herd: each waits on one key).
//!
//! Errors: the recipes' errors (etcd returns them as plain Go errors) and the errors of the
//! KV and Lease calls they make reach the client as gRPC `Unknown` with etcd's message, as
//! they do from etcd's in-process client.
//!
//! Invariants: a waiter that gives up (its client went away, or the wait failed) deletes its
//! key, as `Mutex.Lock` does, so it never blocks the contenders behind it.

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use crate::api::errors::{self, Code, Status};
use crate::api::pb::etcdserverpb::{self as pb, compare, range_request, request_op, response_op};
use crate::api::pb::mvccpb::{self, event::EventType};
use crate::api::pb::{v3electionpb as epb, v3lockpb as lpb};

use super::Core;

/// clientv3/concurrency's defaultSessionTTL, for a session whose request names no lease.
const SESSION_TTL_SECONDS: i64 = 60;

impl Core {
    /// Lock.Lock: waits until this session's key is the oldest under `name/`. `cancelled`
    /// resolves when the client gives up; the key is then deleted.
    pub async fn lock(
        &self,
        request: lpb::LockRequest,
        cancelled: impl std::future::Future<Output = ()>,
    ) -> Result<lpb::LockResponse, Status> {
        let (lease, prefix, key) = self.contender(&request.name, request.lease).await?;
        let acquire = txn_if_created_at(
            &key,
            0,
            vec![put_op(&key, &[], lease), first_created(&prefix)],
            vec![get_op(&key), first_created(&prefix)],
        );
        let response = self.txn(acquire).await.map_err(unknown)?;
        let header = response.header.expect("a txn response has a header");
        let my_revision = if response.succeeded { header.revision } else { range_kvs(&response, 0)[0].create_revision };
        let owner = range_kvs(&response, 1);
        if owner.is_empty() || owner[0].create_revision == my_revision {
            return Ok(lpb::LockResponse { header: Some(header), key });
        }
        let waited = unless_cancelled(self.wait_deletes(&prefix, my_revision - 1), cancelled).await;
        match waited.unwrap_or(Err(errors::CONTEXT_CANCELED)) {
            Ok(header) => Ok(lpb::LockResponse { header: Some(header), key }),
            Err(status) => {
                let _ = self.delete_range(pb::DeleteRangeRequest { key, ..Default::default() }).await;
                Err(unknown(status))
            }
        }
    }

    /// Lock.Unlock: deletes the key Lock returned.
    pub async fn unlock(&self, request: lpb::UnlockRequest) -> Result<lpb::UnlockResponse, Status> {
        let deleted = self.delete_range(pb::DeleteRangeRequest { key: request.key, ..Default::default() });
        Ok(lpb::UnlockResponse { header: deleted.await.map_err(unknown)?.header })
    }

    /// Election.Campaign: puts this session's key with `value` (or, if it is there already,
    /// proclaims the value), then waits until every older contender is gone.
    pub async fn campaign(
        &self,
        request: epb::CampaignRequest,
        cancelled: impl std::future::Future<Output = ()>,
    ) -> Result<epb::CampaignResponse, Status> {
        let (lease, prefix, key) = self.contender(&request.name, request.lease).await?;
        let enter = txn_if_created_at(&key, 0, vec![put_op(&key, &request.value, lease)], vec![get_op(&key)]);
        let response = self.txn(enter).await.map_err(unknown)?;
        let header = response.header.expect("a txn response has a header");
        let mut leader = epb::LeaderKey { name: request.name, key, rev: header.revision, lease };
        if !response.succeeded {
            let existing = &range_kvs(&response, 0)[0];
            leader.rev = existing.create_revision;
            if existing.value != request.value {
                if let Err(status) = self.proclaim_as(&leader, request.value).await {
                    let _ = self.resign_as(&leader).await;
                    return Err(status);
                }
            }
        }
        match unless_cancelled(self.wait_deletes(&prefix, leader.rev - 1), cancelled).await {
            Some(waited) => waited.map_err(unknown)?,
            None => {
                let _ = self.resign_as(&leader).await;
                return Err(errors::CONTEXT_CANCELED);
            }
        };
        Ok(epb::CampaignResponse { header: Some(header), leader: Some(leader) })
    }

    /// Election.Proclaim: a new value from the leader, without another election.
    pub async fn proclaim(&self, request: epb::ProclaimRequest) -> Result<epb::ProclaimResponse, Status> {
        let mut leader = request.leader.ok_or(errors::MISSING_LEADER_KEY)?;
        leader.lease = self.session(leader.lease).await.map_err(unknown)?;
        let header = self.proclaim_as(&leader, request.value).await?;
        Ok(epb::ProclaimResponse { header: Some(header) })
    }

    /// Election.Resign: the leader steps down (its key is deleted if it is still the one it
    /// created); resigning as someone who no longer leads is not an error.
    pub async fn resign(&self, request: epb::ResignRequest) -> Result<epb::ResignResponse, Status> {
        let leader = request.leader.ok_or(errors::MISSING_LEADER_KEY)?;
        self.session(leader.lease).await.map_err(unknown)?;
        Ok(epb::ResignResponse { header: Some(self.resign_as(&leader).await?) })
    }

    /// Election.Leader: the current leader's key and value.
    pub async fn election_leader(&self, request: epb::LeaderRequest) -> Result<epb::LeaderResponse, Status> {
        let response = self.range(first_created_range(&with_slash(&request.name))).await.map_err(unknown)?;
        let kv = response.kvs.into_iter().next().ok_or(errors::ELECTION_NO_LEADER)?;
        Ok(epb::LeaderResponse { header: response.header, kv: Some(kv) })
    }

    /// Election.Observe: sends the leader now (or, with none, the first one elected), every
    /// value it proclaims, and then each next leader, until `out` is closed or a read fails
    /// (etcd then ends the stream without an error).
    pub async fn observe(&self, request: epb::LeaderRequest, mut out: mpsc::Sender<epb::LeaderResponse>) {
        let prefix = with_slash(&request.name);
        loop {
            let Ok(response) = self.range(first_created_range(&prefix)).await else { return };
            let header = response.header.expect("a range response has a header");
            let leader = match response.kvs.into_iter().next() {
                Some(kv) => Some((header, kv)),
                None => self.first_put(&prefix, header.revision).await,
            };
            let Some((header, kv)) = leader else { return };
            let next_revision = header.revision + 1;
            let key = kv.key.clone();
            if out.send(epb::LeaderResponse { header: Some(header), kv: Some(kv) }).await.is_err() {
                return;
            }
            if !self.follow_leader(&key, next_revision, &mut out).await {
                return;
            }
        }
    }

    /// The first put under `prefix` from `revision` on, with the header's revision set to
    /// the put's; None if the watch ended.
    async fn first_put(&self, prefix: &[u8], revision: i64) -> Option<(pb::ResponseHeader, mvccpb::KeyValue)> {
        let mut watch = self.internal_watch(prefix.to_vec(), prefix_end(prefix), revision);
        loop {
            let response = watch.next().await.filter(|response| !response.canceled)?;
            let put = response.events.into_iter().find(|event| event.r#type == EventType::Put as i32);
            if let Some(kv) = put.and_then(|event| event.kv) {
                let mut header = response.header.expect("a watch response has a header");
                header.revision = kv.mod_revision;
                return Some((header, kv));
            }
        }
    }

    /// Sends every put of the leader's `key` from `revision` on; true when the key is
    /// deleted (a new leader must be looked up), false when the watch or `out` ended.
    async fn follow_leader(&self, key: &[u8], revision: i64, out: &mut mpsc::Sender<epb::LeaderResponse>) -> bool {
        let mut watch = self.internal_watch(key.to_vec(), Vec::new(), revision);
        loop {
            let Some(response) = watch.next().await.filter(|response| !response.canceled) else { return false };
            for event in response.events {
                if event.r#type == EventType::Delete as i32 {
                    return true;
                }
                let observed = epb::LeaderResponse { header: response.header, kv: event.kv };
                if out.send(observed).await.is_err() {
                    return false;
                }
            }
        }
    }

    /// The lease of a recipe's session: the request's, or a new one when it names none.
    async fn session(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let grant = pb::LeaseGrantRequest { ttl: SESSION_TTL_SECONDS, id: 0 };
        Ok(self.lease_grant(grant).await?.id)
    }

    /// A Lock or Campaign contender: its session's lease, the prefix `name/` it waits under,
    /// and its own key there.
    async fn contender(&self, name: &[u8], lease: i64) -> Result<(i64, Vec<u8>, Vec<u8>), Status> {
        let lease = self.session(lease).await.map_err(unknown)?;
        let prefix = with_slash(name);
        let key = contender_key(&prefix, lease);
        Ok((lease, prefix, key))
    }

    /// Election.Proclaim for a known leader: puts the value if its key is still the one it
    /// created.
    async fn proclaim_as(&self, leader: &epb::LeaderKey, value: Vec<u8>) -> Result<pb::ResponseHeader, Status> {
        let put = put_op(&leader.key, &value, leader.lease);
        let response =
            self.txn(txn_if_created_at(&leader.key, leader.rev, vec![put], vec![])).await.map_err(unknown)?;
        if !response.succeeded {
            return Err(errors::ELECTION_NOT_LEADER);
        }
        Ok(response.header.expect("a txn response has a header"))
    }

    async fn resign_as(&self, leader: &epb::LeaderKey) -> Result<pb::ResponseHeader, Status> {
        let delete = request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: leader.key.clone(),
            ..Default::default()
        });
        let resign = txn_if_created_at(&leader.key, leader.rev, vec![pb::RequestOp { request: Some(delete) }], vec![]);
        let response = self.txn(resign).await.map_err(unknown)?;
        Ok(response.header.expect("a txn response has a header"))
    }

    /// Waits until no key under `prefix` created at or below `max_create_revision` is left
    /// (clientv3/concurrency's waitDeletes): each time, the newest of them is watched until
    /// it is deleted. Returns the header of the read that found none.
    async fn wait_deletes(&self, prefix: &[u8], max_create_revision: i64) -> Result<pb::ResponseHeader, Status> {
        loop {
            let mut newest = first_created_range(prefix);
            newest.sort_order = range_request::SortOrder::Descend as i32;
            newest.max_create_revision = max_create_revision;
            let response = self.range(newest).await?;
            let header = response.header.expect("a range response has a header");
            let Some(kv) = response.kvs.into_iter().next() else { return Ok(header) };
            assert!(kv.create_revision <= max_create_revision, "the range honours max_create_revision");
            self.wait_delete(kv.key, header.revision).await?;
        }
    }

    /// Waits for a delete of `key` at or after `revision`.
    async fn wait_delete(&self, key: Vec<u8>, revision: i64) -> Result<(), Status> {
        let mut watch = self.internal_watch(key, Vec::new(), revision);
        while let Some(response) = watch.next().await {
            if response.compact_revision != 0 {
                return Err(errors::COMPACTED);
            }
            if response.canceled {
                break;
            }
            if response.events.iter().any(|event| event.r#type == EventType::Delete as i32) {
                return Ok(());
            }
        }
        Err(errors::LOST_WATCHER)
    }

    /// A watcher on this core's hub, for the server's own use; dropped, it is gone.
    fn internal_watch(&self, key: Vec<u8>, range_end: Vec<u8>, start_revision: i64) -> InternalWatch {
        let (stream, responses) = self.watch_hub().open_stream();
        let create = pb::WatchCreateRequest { key, range_end, start_revision, ..Default::default() };
        stream.handle(pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)) });
        InternalWatch { stream, responses, created: false }
    }
}

/// One watcher's responses, without the created response.
struct InternalWatch {
    stream: std::rc::Rc<super::watch::WatchStream>,
    responses: super::watch::Responses,
    created: bool,
}

impl InternalWatch {
    async fn next(&mut self) -> Option<pb::WatchResponse> {
        loop {
            let response = self.responses.next().await?;
            self.stream.response_sent();
            if response.created && !self.created && !response.canceled {
                self.created = true;
                continue;
            }
            return Some(response);
        }
    }
}

/// `work`'s output, or None if `cancelled` resolves first (`work` is then dropped).
async fn unless_cancelled<T>(
    work: impl std::future::Future<Output = T>,
    cancelled: impl std::future::Future<Output = ()>,
) -> Option<T> {
    futures::pin_mut!(work, cancelled);
    match futures::future::select(work, cancelled).await {
        futures::future::Either::Left((output, _)) => Some(output),
        futures::future::Either::Right(_) => None,
    }
}

/// A recipe's errors reach the client as etcd's in-process client returns them: a plain
/// error (gRPC `Unknown`) with etcd's message; a cancel stays a cancel.
fn unknown(status: Status) -> Status {
    match status.code {
        Code::Canceled | Code::DeadlineExceeded => status,
        _ => Status { code: Code::Unknown, message: status.message },
    }
}

fn with_slash(name: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(name.len() + 1);
    prefix.extend_from_slice(name);
    prefix.push(b'/');
    prefix
}

/// `<prefix><lease in lowercase hex>`, as Go's `%x` prints the lease ID.
fn contender_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    if lease < 0 {
        key.extend_from_slice(format!("-{:x}", lease.unsigned_abs()).as_bytes());
    } else {
        key.extend_from_slice(format!("{lease:x}").as_bytes());
    }
    key
}

/// The end of the range of every key starting with `prefix` (etcd's GetPrefixRangeEnd).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("not empty") = last + 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// The key under `prefix` with the lowest create revision (clientv3's WithFirstCreate).
fn first_created_range(prefix: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

fn first_created(prefix: &[u8]) -> pb::RequestOp {
    pb::RequestOp { request: Some(request_op::Request::RequestRange(first_created_range(prefix))) }
}

fn get_op(key: &[u8]) -> pb::RequestOp {
    let range = pb::RangeRequest { key: key.to_vec(), ..Default::default() };
    pb::RequestOp { request: Some(request_op::Request::RequestRange(range)) }
}

fn put_op(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    let put = pb::PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    pb::RequestOp { request: Some(request_op::Request::RequestPut(put)) }
}

/// If `key`'s create revision is `create_revision` (0: the key does not exist), `success`,
/// else `failure`.
fn txn_if_created_at(
    key: &[u8],
    create_revision: i64,
    success: Vec<pb::RequestOp>,
    failure: Vec<pb::RequestOp>,
) -> pb::TxnRequest {
    let compare = pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(create_revision)),
        ..Default::default()
    };
    pb::TxnRequest { compare: vec![compare], success, failure }
}

/// The key-values of the txn's `index`th response, which is a range.
fn range_kvs(response: &pb::TxnResponse, index: usize) -> &[mvccpb::KeyValue] {
    match &response.responses[index].response {
        Some(response_op::Response::ResponseRange(range)) => &range.kvs,
        other => unreachable!("the recipe's txn put a range at {index}, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_name_a_slash_and_the_lease_in_hex() {
        assert_eq!(contender_key(&with_slash(b"my-lock"), 0x694d7c3b1a8e8d04), b"my-lock/694d7c3b1a8e8d04");
        assert_eq!(contender_key(&with_slash(b""), 10), b"/a");
    }

    #[test]
    fn the_prefix_end_is_etcds() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
    }
}
