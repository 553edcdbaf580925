//! What a Raft entry carries: our own wire format (prost), not etcd's InternalRaftRequest.
//!
//! An `EntryNormal` entry holds one [`Batch`]: every request one member's raft core took from
//! its queues between two Readies, so many client requests share one entry, one WAL record
//! and one AppendEntries. Each request has an id unique on its member; the member whose id is
//! in the batch answers its waiting clients when it applies the entry (every member applies
//! every entry; the others only change their store). An empty `EntryNormal` is a new
//! leader's no-op.
//!
//! An `EntryConfChange` entry holds a `raft::pb::ConfChange` whose `context` is a
//! [`ConfContext`]: who asked (member, request id) and the member's attributes.

use crate::api::pb::etcdserverpb as pb;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Batch {
    /// The member whose clients wait for these requests.
    #[prost(uint64, tag = "1")]
    pub member_id: u64,
    #[prost(message, repeated, tag = "2")]
    pub requests: Vec<Request>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "Op", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10")]
    pub op: Option<Op>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    #[prost(message, tag = "2")]
    Put(pb::PutRequest),
    #[prost(message, tag = "3")]
    DeleteRange(pb::DeleteRangeRequest),
    #[prost(message, tag = "4")]
    Txn(pb::TxnRequest),
    #[prost(message, tag = "5")]
    Compact(pb::CompactionRequest),
    #[prost(message, tag = "6")]
    Alarm(pb::AlarmRequest),
    /// A member publishes its name and client URLs once it has joined (etcd's publish).
    #[prost(message, tag = "7")]
    Attributes(pb::Member),
    /// The proposing member picked the id if the client left it 0.
    #[prost(message, tag = "8")]
    LeaseGrant(pb::LeaseGrantRequest),
    /// A client's revoke, or the leader's of an expired lease.
    #[prost(message, tag = "9")]
    LeaseRevoke(pb::LeaseRevokeRequest),
    /// The leader's checkpoints of remaining TTLs.
    #[prost(message, tag = "10")]
    LeaseCheckpoints(LeaseCheckpoints),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseCheckpoints {
    #[prost(message, repeated, tag = "1")]
    pub checkpoints: Vec<LeaseCheckpoint>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseCheckpoint {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub remaining_ttl: i64,
}

/// `ConfChange.context`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfContext {
    #[prost(uint64, tag = "1")]
    pub requester: u64,
    #[prost(uint64, tag = "2")]
    pub request_id: u64,
    /// The member added or updated, with its peer URLs; for a removal only its id.
    #[prost(message, optional, tag = "3")]
    pub member: Option<pb::Member>,
}

/// One member's view of the membership: ids, names and URLs; learners flagged.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Members {
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<pb::Member>,
}
