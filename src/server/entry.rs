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
    #[prost(oneof = "Op", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11")]
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
    /// The leader refused a membership change a follower passed to it (the raft core's
    /// `check_conf_change`): the follower's client gets this error when the follower
    /// applies it, as etcd's gets the error its apply found.
    #[prost(message, tag = "11")]
    Refused(Refusal),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Refusal {
    /// The gRPC status code.
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub message: String,
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
    /// A voter whose addition could not commit without it (the raft core's
    /// `stage_added_voter`): Raft takes it as a learner, the member table as
    /// the voter asked for, and the leader promotes it once it has caught up (the raft
    /// core's `promote_caught_up_voters`).
    #[prost(bool, tag = "4")]
    pub as_voter: bool,
    /// A client's MemberPromote (etcd's `IsPromote`): the leader checks the change as a
    /// promotion, whatever else an AddNode of that ID would mean.
    #[prost(bool, tag = "5")]
    pub promote: bool,
}

impl ConfContext {
    /// The Raft change of member `node_id` that carries this context.
    pub fn change(&self, change_type: crate::raft::pb::ConfChangeType, node_id: u64) -> crate::raft::pb::ConfChange {
        crate::raft::pb::ConfChange {
            change_type: change_type as i32,
            node_id,
            context: prost::Message::encode_to_vec(self),
            ..Default::default()
        }
    }
}

/// One member's view of the membership: ids, names and URLs; learners flagged.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Members {
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<pb::Member>,
}

/// The deepest nesting of txns a request may have (a txn inside a txn is depth 2). prost
/// decodes at most 100 levels of nested messages; a txn takes two per level, and a `Batch`
/// adds two more around the client's request, so a client's txn of depth 50 still decodes
/// but an entry holding it would not, on any member, and every member would stop at it at
/// every restart. etcd has no such limit; ringd refuses deeper txns before proposing them.
pub const TXN_DEPTH_MAX: usize = 32;
// `errors::TXN_TOO_DEEP` names the limit in its message.
const _: () = assert!(TXN_DEPTH_MAX == 32);

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn nested(depth: usize) -> pb::TxnRequest {
        let put = pb::PutRequest { key: b"k".to_vec(), ..Default::default() };
        let mut txn = pb::TxnRequest {
            success: vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put)) }],
            ..Default::default()
        };
        for _ in 1..depth {
            let op = pb::RequestOp { request: Some(pb::request_op::Request::RequestTxn(txn)) };
            txn = pb::TxnRequest { success: vec![op], ..Default::default() };
        }
        txn
    }

    fn entry_decodes(txn: pb::TxnRequest) -> bool {
        let batch = Batch { member_id: 1, requests: vec![Request { id: 1, op: Some(Op::Txn(txn)) }] };
        Batch::decode(batch.encode_to_vec().as_slice()).is_ok()
    }

    /// Every txn ringd accepts fits in an entry that every member can decode, with room to
    /// spare; the depth at which a client's txn still decodes but its entry would not exists.
    #[test]
    fn the_deepest_txn_accepted_decodes_inside_an_entry() {
        assert!(entry_decodes(nested(TXN_DEPTH_MAX + 8)));
        let unsafe_depth = (TXN_DEPTH_MAX..200).find(|&depth| !entry_decodes(nested(depth))).unwrap();
        let client_decodes = pb::TxnRequest::decode(nested(unsafe_depth).encode_to_vec().as_slice()).is_ok();
        assert!(client_decodes, "depth {unsafe_depth}: the client's txn decodes, its entry does not");
    }
}
