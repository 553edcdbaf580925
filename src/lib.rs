//! ringd: an etcd-compatible, strongly consistent key-value store, thread-per-core on
//! io_uring. The architecture is in DESIGN.md (shared with the team); each module's doc
//! comment says what it owns and what it may depend on:
//!
//! - `api`: etcd's v3 protos, gRPC over HTTP/2, the JSON gateway, etcd's error strings.
//! - `server`: flags, cores, the writer loop, etcd's KV semantics over the store.
//! - `mvcc`: the memory-mapped copy-on-write B+tree MVCC store.

pub mod api;
pub mod mvcc;
pub mod server;
