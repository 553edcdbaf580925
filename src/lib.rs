//! ringd: an etcd-compatible, strongly consistent key-value store, thread-per-core on
//! io_uring. The architecture is in DESIGN.md (shared with the team); each module's doc
//! comment says what it owns and what it may depend on:
//!
//! - `client`: an async etcd v3 client on glommio (used by ringbench).
//! - `api`: etcd's v3 protos, gRPC over HTTP/2, the JSON gateway, etcd's error strings.
//! - `server`: flags, cores, the writer loop, etcd's KV semantics over the store.
//! - `mvcc`: the memory-mapped copy-on-write B+tree MVCC store.
//! - `raft`: our Raft, sans-IO: messages and ticks in, numbered `Ready`s out.
//! - `wal`: the segmented write-ahead log with group commit on direct I/O.
//! - `io`: the storage traits the WAL is generic over, and their glommio implementation.
//! - `transport`: Raft messages between members over TCP.
//! - `lease`: the lessor: leases, their keys and expiry, as a clock-free state machine.
//! - `testing`: the simulated disk and the linearizability checker used by the test suites.
//! - `allocator`: the global allocator of the binaries and benchmarks (mimalloc).

pub mod allocator;
pub mod api;
pub mod client;
pub mod io;
pub mod lease;
pub mod mvcc;
pub mod raft;
pub mod server;
pub mod testing;
pub mod transport;
pub mod wal;
