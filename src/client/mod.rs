//! An async client for etcd's v3 API on glommio: h2 over glommio's TcpStream (through
//! tokio-util's compat adapter), no tokio runtime. Used by `ringbench` (and `ringctl`);
//! it speaks to real etcd as well as to ringd.
//!
//! Depends only on `api` (the generated types and the gRPC status codes).
//!
//! A `Client` holds N connections (`Channel`s) spread round-robin over its endpoints; each
//! connection carries any number of concurrent calls as HTTP/2 streams. Unary calls (KV,
//! Maintenance Status and HashKV, Lease Grant and Revoke) pick the next connection in turn;
//! a stream (Watch: `Channel::watch`; LeaseKeepAlive: `Channel::lease_keep_alive`) lives on
//! the connection that opened it. Everything here is single-threaded (one executor): a
//! program that wants more cores runs one `Client` per executor.
//!
//! Invariants: a `Client` has at least one connection; every call ends with the server's
//! reply or an `Error` carrying a gRPC code and message (etcd's strings byte for byte).

mod channel;
mod error;
mod lease;
mod stream;
mod watch;

use std::cell::Cell;
use std::time::Duration;

pub use channel::{encode, Channel, ClientTls, Endpoint};
pub use error::{code_from_number, Error};
pub use lease::LeaseKeepAliveStream;
pub use watch::WatchStream;

use crate::api::pb::etcdserverpb as pb;

/// gRPC paths of the calls this client makes.
pub mod path {
    pub const RANGE: &str = "/etcdserverpb.KV/Range";
    pub const PUT: &str = "/etcdserverpb.KV/Put";
    pub const DELETE_RANGE: &str = "/etcdserverpb.KV/DeleteRange";
    pub const TXN: &str = "/etcdserverpb.KV/Txn";
    pub const COMPACT: &str = "/etcdserverpb.KV/Compact";
    pub const STATUS: &str = "/etcdserverpb.Maintenance/Status";
    pub const HASH_KV: &str = "/etcdserverpb.Maintenance/HashKV";
    pub const WATCH: &str = "/etcdserverpb.Watch/Watch";
    pub const LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
    pub const LEASE_REVOKE: &str = "/etcdserverpb.Lease/LeaseRevoke";
    pub const LEASE_KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
    pub const LEASE_TIME_TO_LIVE: &str = "/etcdserverpb.Lease/LeaseTimeToLive";
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Connections to open in total, spread round-robin over the endpoints.
    pub connections: usize,
    /// Bound on each TCP connect; zero means the OS's own.
    pub dial_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions { connections: 1, dial_timeout: Duration::from_secs(5) }
    }
}

/// N connections to one or more endpoints.
pub struct Client {
    channels: Vec<Channel>,
    endpoints: Vec<Endpoint>,
    next: Cell<usize>,
}

impl Client {
    /// Opens `options.connections` connections, the i-th to endpoint i mod len.
    pub async fn connect(endpoints: &[String], options: &ClientOptions) -> Result<Client, Error> {
        assert!(options.connections > 0, "a client needs at least one connection");
        let endpoints: Vec<Endpoint> = endpoints
            .iter()
            .map(|text| {
                Endpoint::parse(text).map_err(|message| Error::new(crate::api::errors::Code::InvalidArgument, message))
            })
            .collect::<Result<_, _>>()?;
        if endpoints.is_empty() {
            return Err(Error::new(crate::api::errors::Code::InvalidArgument, "no endpoints given"));
        }
        let mut channels = Vec::with_capacity(options.connections);
        for index in 0..options.connections {
            channels.push(Channel::connect(&endpoints[index % endpoints.len()], options.dial_timeout).await?);
        }
        assert_eq!(channels.len(), options.connections);
        Ok(Client { channels, endpoints, next: Cell::new(0) })
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn connection_count(&self) -> usize {
        self.channels.len()
    }

    /// The `index`-th connection (mod the count): benchmark loops pin themselves to one.
    pub fn channel(&self, index: usize) -> &Channel {
        &self.channels[index % self.channels.len()]
    }

    /// The next connection in turn.
    pub fn pick(&self) -> &Channel {
        let index = self.next.get();
        self.next.set(index.wrapping_add(1));
        self.channel(index)
    }

    pub async fn range(&self, request: &pb::RangeRequest) -> Result<pb::RangeResponse, Error> {
        self.pick().range(request).await
    }

    pub async fn put(&self, request: &pb::PutRequest) -> Result<pb::PutResponse, Error> {
        self.pick().put(request).await
    }

    pub async fn delete_range(&self, request: &pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, Error> {
        self.pick().delete_range(request).await
    }

    pub async fn txn(&self, request: &pb::TxnRequest) -> Result<pb::TxnResponse, Error> {
        self.pick().txn(request).await
    }

    pub async fn compact(&self, request: &pb::CompactionRequest) -> Result<pb::CompactionResponse, Error> {
        self.pick().compact(request).await
    }

    pub async fn lease_grant(&self, ttl_seconds: i64, lease_id: i64) -> Result<pb::LeaseGrantResponse, Error> {
        self.pick().lease_grant(ttl_seconds, lease_id).await
    }

    pub async fn lease_revoke(&self, lease_id: i64) -> Result<pb::LeaseRevokeResponse, Error> {
        self.pick().lease_revoke(lease_id).await
    }

    /// Maintenance Status of the member behind connection `index`'s endpoint.
    pub async fn status(&self, index: usize) -> Result<pb::StatusResponse, Error> {
        self.channel(index).status().await
    }
}

/// The typed calls, on one connection.
impl Channel {
    pub async fn range(&self, request: &pb::RangeRequest) -> Result<pb::RangeResponse, Error> {
        self.unary(path::RANGE, request).await
    }

    pub async fn put(&self, request: &pb::PutRequest) -> Result<pb::PutResponse, Error> {
        self.unary(path::PUT, request).await
    }

    pub async fn delete_range(&self, request: &pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, Error> {
        self.unary(path::DELETE_RANGE, request).await
    }

    pub async fn txn(&self, request: &pb::TxnRequest) -> Result<pb::TxnResponse, Error> {
        self.unary(path::TXN, request).await
    }

    pub async fn compact(&self, request: &pb::CompactionRequest) -> Result<pb::CompactionResponse, Error> {
        self.unary(path::COMPACT, request).await
    }

    pub async fn status(&self) -> Result<pb::StatusResponse, Error> {
        self.unary(path::STATUS, &pb::StatusRequest {}).await
    }

    pub async fn hash_kv(&self, revision: i64) -> Result<pb::HashKvResponse, Error> {
        self.unary(path::HASH_KV, &pb::HashKvRequest { revision }).await
    }
}
