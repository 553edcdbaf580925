//! Lease calls: Grant and Revoke are unary; KeepAlive is a bidirectional stream on which
//! each request (a lease ID) is answered by one reply with the lease's refreshed TTL.
//! `keep_alive_once` is etcd's `KeepAliveOnce`: a stream of its own for one round trip,
//! reset when done, and a reply with TTL <= 0 turned into etcd's "lease not found".

use crate::api::errors::LEASE_NOT_FOUND;
use crate::api::pb::etcdserverpb as pb;
use crate::client::channel::Channel;
use crate::client::error::Error;
use crate::client::path;
use crate::client::stream::BidiStream;

/// A keepalive reply is a header and two integers; anything near this is a broken stream.
const KEEP_ALIVE_REPLY_BYTES_MAX: usize = 64 << 10;

/// A LeaseKeepAlive stream: send lease IDs, read one reply per ID, in order.
pub struct LeaseKeepAliveStream {
    stream: BidiStream<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>,
}

impl LeaseKeepAliveStream {
    pub fn send(&mut self, lease_id: i64) -> Result<(), Error> {
        self.stream.send(&pb::LeaseKeepAliveRequest { id: lease_id })
    }

    /// The next reply; None when the server ended the stream with an OK status.
    pub async fn next(&mut self) -> Result<Option<pb::LeaseKeepAliveResponse>, Error> {
        self.stream.next().await
    }
}

impl Channel {
    /// Grants a lease of `ttl_seconds`; `lease_id` 0 lets the server choose the ID.
    pub async fn lease_grant(&self, ttl_seconds: i64, lease_id: i64) -> Result<pb::LeaseGrantResponse, Error> {
        self.unary(path::LEASE_GRANT, &pb::LeaseGrantRequest { ttl: ttl_seconds, id: lease_id }).await
    }

    pub async fn lease_revoke(&self, lease_id: i64) -> Result<pb::LeaseRevokeResponse, Error> {
        self.unary(path::LEASE_REVOKE, &pb::LeaseRevokeRequest { id: lease_id }).await
    }

    pub async fn lease_time_to_live(
        &self,
        request: &pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse, Error> {
        self.unary(path::LEASE_TIME_TO_LIVE, request).await
    }

    /// Opens a LeaseKeepAlive stream on this connection.
    pub async fn lease_keep_alive(&self) -> Result<LeaseKeepAliveStream, Error> {
        let stream = self.bidi(path::LEASE_KEEP_ALIVE, "lease keepalive", KEEP_ALIVE_REPLY_BYTES_MAX).await?;
        Ok(LeaseKeepAliveStream { stream })
    }

    /// One keepalive round trip on a stream of its own (etcd's `KeepAliveOnce`). Unlike
    /// etcd's client it does not retry on Unavailable or Internal: the caller sees them.
    pub async fn keep_alive_once(&self, lease_id: i64) -> Result<pb::LeaseKeepAliveResponse, Error> {
        let mut stream = self.lease_keep_alive().await?;
        stream.send(lease_id)?;
        let reply =
            stream.next().await?.ok_or_else(|| Error::internal("lease keepalive stream ended before its reply"))?;
        if reply.ttl <= 0 {
            return Err(Error::new(LEASE_NOT_FOUND.code, LEASE_NOT_FOUND.message.as_ref()));
        }
        if reply.id != lease_id {
            return Err(Error::internal(format!("keepalive of lease {lease_id:x} answered for lease {:x}", reply.id)));
        }
        Ok(reply)
    }
}
