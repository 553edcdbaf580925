//! The lessor: etcd's leases as a deterministic, clock-free state machine (etcd's
//! `lease/lessor.go`, rewritten).
//!
//! Owns the set of leases (id, TTL, checkpointed remaining TTL, attached keys) and, on the
//! leader only, when each lease expires and when its remaining TTL is next checkpointed. May
//! use `mvcc` (its aux table `AUX_TABLE_LEASES` and ranges of the key space); it knows no
//! clock, no glommio, no Raft: time comes in as an argument, `now: Duration`, the time since
//! an origin its owner picks on a monotonic clock (the server: its start; tests: zero), the
//! way Raft gets ticks. The same inputs always give the same outputs.
//!
//! # Two halves
//!
//! * **Replicated state**, changed only by applying committed Raft entries, identically on
//!   every member, inside the apply task: `grant`, `revoke`, `checkpoint`, and the
//!   attachments of keys (`key_written`, `key_deleted`, or `attach` / `detach`). Each change
//!   writes the lease's record into the aux table of the same store transaction as the
//!   batch's key changes, so the two are committed (and lost in a crash) together.
//! * **Leader timing** (etcd's "primary lessor"), never persisted: `promote(now)` when this
//!   member starts leading, `demote()` when it stops; `renew` (keepalive), `expired` (leases
//!   to revoke through Raft), `checkpoints_due` (remaining TTLs to checkpoint through Raft)
//!   and `time_to_live`. A follower answers `NotPrimary` and the server forwards to the leader.
//!
//! # etcd's rules (lessor.go, etcdserver/server.go)
//!
//! * TTLs are whole seconds. A grant with TTL > `TTL_MAX_SECONDS` (9 000 000 000) fails; a
//!   shorter TTL than `ttl_min_seconds` (zero and negative ones included) is raised to it,
//!   where ttl_min_seconds = ceil((3 * election_ticks / 2) * heartbeat_interval) in seconds,
//!   with etcd's integer division of the ticks (`LessorConfig::new`): 100 ms and 10 ticks
//!   give ceil(1.5 s) = 2 s; 100 ms and 5 ticks give ceil(0.7 s) = 1 s.
//! * A lease expires when `now >= expiry`. The leader sets expiry = now + TTL at a grant and
//!   at each renew. `promote(now)` sets every lease's expiry = now + election timeout + its
//!   remaining TTL (the checkpointed one if set, else its TTL), then, when it holds at least
//!   `revoke_rate_per_second` leases, delays the ones piled up in one second beyond 3/4 of
//!   that rate (etcd's Promote: the k-th lease of a one-second window, k > 750, is pushed
//!   back to k/750 s after the window's start). Followers hold no expiries.
//! * `expired(now)` returns the leases whose expiry has passed, at most
//!   `revoke_rate_per_second` per second of `now` (a token bucket holding at most half a
//!   second's worth, as etcd revokes rate/2 every 500 ms). A returned lease is returned again
//!   after `expired_retry_interval` if its revoke has not been applied by then (etcd: the
//!   request timeout, 5 s + 2 election timeouts). A renew of an expired lease fails with
//!   `RenewError::Expired`: etcd's Renew waits for the revoke (then "lease not found") or for
//!   a demotion ("not a primary lessor"), so a client is never told that a lease it is about
//!   to lose was renewed.
//! * Checkpoints: the leader looks at a lease every `checkpoint_interval` (etcd: 5 minutes)
//!   while its remaining TTL exceeds the interval; a look at a live lease whose remaining
//!   TTL, ceil(expiry - now) in seconds, is below its TTL yields a checkpoint (id, remaining)
//!   to propose, at most `checkpoint_batch_max` (1000) per call. Applying a checkpoint stores
//!   the remaining TTL (etcd 3.6 always persists it); `promote` then starts from it. A renew
//!   of a lease with a stored remaining TTL asks the caller, once, to propose a checkpoint of
//!   0 (etcd clears it so that the renewed lease counts its full TTL after a leader change).
//!   One deviation, in etcd's spirit: a look that finds the lease just renewed (remaining
//!   TTL = TTL) keeps looking every interval, where etcd stops until the next leader change.
//! * `time_to_live` reports trunc(expiry - now) in seconds (etcd's `int64(Remaining()
//!   .Seconds())`, negative for a lease past expiry whose revoke is still in flight), the
//!   granted TTL and, if asked, the attached keys in key order.
//! * `revoke` returns the attached keys in key order: the caller deletes them in that order
//!   in the same write transaction (one revision, sub-revisions in key order, delete events
//!   for the watchers), as etcd's Revoke sorts them so every member hashes the same.
//!
//! # Errors (lessor level, etcd's strings; the gRPC mapping belongs in `api/errors.rs`)
//!
//! | lessor error (Display) | gRPC status clients see |
//! | --- | --- |
//! | "lease not found" (`LeaseNotFound`, `*::NotFound`) | NotFound "etcdserver: requested lease not found" (`api::errors::LEASE_NOT_FOUND`); KeepAlive answers TTL 0 instead, TimeToLive answers TTL -1 |
//! | "lease already exists" (`GrantError::Exists`) | FailedPrecondition "etcdserver: lease already exists" |
//! | "too large lease TTL" (`GrantError::TtlTooLarge`) | OutOfRange "etcdserver: too large lease TTL" |
//! | "not a primary lessor" (`RenewError::NotPrimary`, `TimeToLiveError::NotPrimary`) | none: forward to the leader; without one, Unavailable "etcdserver: no leader" |
//! | "lease expired; its revoke is in flight" (`RenewError::Expired`) | none: wait for the revoke (then KeepAlive TTL 0) or the demotion (forward) |
//!
//! # On disk (aux table `mvcc::AUX_TABLE_LEASES`)
//!
//! One entry per lease: key = the lease id as 8 bytes big-endian (etcd's int64ToBytes),
//! value = a [`LeaseRecord`] protobuf with etcd's leasepb.Lease field numbers: `id` (1,
//! int64), `ttl` (2, int64: the TTL the grant asked for, before the minimum is applied, so
//! that every member writes the same bytes whatever its election timeout), `remaining_ttl`
//! (3, int64: the last checkpoint, 0 = none). Attached keys are not stored: they are the live
//! keys whose kv record carries the lease (`mvcc::KeyValue::lease`), and `Lessor::load`
//! rebuilds them by ranging over every live key (keys only, in a few pages) and attaching
//! each key to its lease, as etcd's mvcc restore does. A key naming a lease the table lacks
//! is skipped and counted (`orphaned_keys_at_load`), as etcd logs and ignores it. With an
//! empty lease table the scan is skipped, so a store without leases opens in constant time.
//!
//! # Invariants (checked by `Lessor::check`)
//!
//! 1. Lease ids are nonzero; TTL = max(requested TTL, ttl_min_seconds) <= TTL_MAX_SECONDS;
//!    remaining TTL >= 0. A key is attached to at most one lease, and a live key with lease
//!    L in the store is attached to L whenever L exists (the apply task keeps this exact by
//!    reporting every put and delete with the key's previous lease: `key_written`,
//!    `key_deleted`).
//! 2. A follower holds no expiry and no queued deadline.
//! 3. On the leader every lease has an expiry and exactly one live entry in the expiry queue,
//!    due no later than its expiry unless the lease was already returned by `expired` (then
//!    it is due a retry interval after that); at most one live checkpoint entry per lease.
//!    Queues delete lazily: an entry is live iff the lease's slot holds its sequence number.
//! 4. `renew` never allocates: it pushes into the expiry queue only when a renewal moves the
//!    expiry earlier than the queued deadline (the first renew after a promotion's
//!    extension), at most once per lease per promotion, and every grant, revoke and promote
//!    keeps room for that many pushes.
//!
//! # Wiring (the server)
//!
//! * Start: `Lessor::load(&mut store, LessorConfig::new(heartbeat, election_ticks))` right
//!   after opening the store, before the WAL is replayed over it; again after a Raft snapshot
//!   replaces the store.
//! * Apply task, for each applied request: LeaseGrant -> `grant(&mut store, id, ttl, now)`
//!   (the proposing member picked the id with `LeaseIdGenerator` when the client sent 0);
//!   LeaseRevoke -> `let keys = revoke(&mut txn, id)?`, then `txn.delete_range(key, &[])`
//!   for each key in that order in the same `WriteTxn`; LeaseCheckpoint -> `checkpoint(&mut
//!   store, id, remaining)` for each. Put with a lease: refuse with "lease not found" unless
//!   `contains(lease)` (etcd checks before the write), then `key_written(key, previous
//!   lease or NONE, lease written)` with the previous lease from the `KeyValue` that
//!   `WriteTxn::put` returns (an ignore_lease put writes the previous lease: no change);
//!   each key `WriteTxn::delete_range` returns -> `key_deleted(key, its lease)`.
//! * Leadership: `promote(now)` when the apply task applies the leader's empty entry of its
//!   own term while this member still leads it (etcd: then every lease of the old term is
//!   in); `demote()` as soon as the raft core loses leadership.
//! * Raft core, each tick on the leader: propose a LeaseRevoke for each id of
//!   `expired(now)` and one LeaseCheckpoint entry with `checkpoints_due(now)`.
//! * KeepAlive -> `renew(id, now)` on the leader's raft core; TimeToLive ->
//!   `time_to_live(id, now, keys)` on the leader; Leases -> `leases()` on any member.

mod error;
mod id;
mod lessor;
mod queue;
mod record;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use error::{GrantError, LeaseCheckError, LeaseNotFound, LoadError, RenewError, TimeToLiveError};
pub use id::LeaseIdGenerator;
pub use lessor::{Checkpoint, Granted, Lease, Lessor, Renewed, TimeToLive};
pub use record::{lease_key, LeaseRecord, LeaseSource, LeaseTable};

/// A lease id (etcd's LeaseID, an int64 on the wire and in the kv record's lease field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub i64);

impl LeaseId {
    /// etcd's NoLease: a key without a lease.
    pub const NONE: LeaseId = LeaseId(0);

    pub fn is_none(self) -> bool {
        self == LeaseId::NONE
    }
}

/// etcd's MaxLeaseTTL.
pub const TTL_MAX_SECONDS: i64 = 9_000_000_000;
/// etcd's leaseRevokeRate.
pub const REVOKE_RATE_PER_SECOND: u32 = 1000;
/// etcd's defaultLeaseCheckpointInterval.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// etcd's maxLeaseCheckpointBatchSize: checkpoints per Raft entry.
pub const CHECKPOINT_BATCH_MAX: usize = 1000;

/// The lessor's parameters. Build it with `new` (etcd's values); tests may shorten them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LessorConfig {
    /// Shorter TTLs are raised to this (etcd's minLeaseTTL).
    pub ttl_min_seconds: i64,
    /// What `promote` adds to every lease's remaining TTL: the election timeout.
    pub promote_extension: Duration,
    pub checkpoint_interval: Duration,
    pub checkpoint_batch_max: usize,
    /// When a lease `expired` returned is returned again if still not revoked.
    pub expired_retry_interval: Duration,
    pub revoke_rate_per_second: u32,
}

impl LessorConfig {
    /// etcd's configuration for `--heartbeat-interval` and `--election-timeout` (in ticks of
    /// the heartbeat, as `server::config` holds it).
    pub fn new(heartbeat_interval: Duration, election_ticks: u32) -> LessorConfig {
        assert!(!heartbeat_interval.is_zero() && election_ticks > 0, "a heartbeat and an election timeout are set");
        let election_timeout = heartbeat_interval * election_ticks;
        LessorConfig {
            ttl_min_seconds: ttl_min_seconds(heartbeat_interval, election_ticks),
            promote_extension: election_timeout,
            checkpoint_interval: CHECKPOINT_INTERVAL,
            checkpoint_batch_max: CHECKPOINT_BATCH_MAX,
            expired_retry_interval: Duration::from_secs(5) + 2 * election_timeout,
            revoke_rate_per_second: REVOKE_RATE_PER_SECOND,
        }
    }
}

/// etcd's minLeaseTTL: ceil(((3 * election_ticks) / 2) * heartbeat_interval) in seconds,
/// the ticks divided as integers (etcdserver/server.go).
pub fn ttl_min_seconds(heartbeat_interval: Duration, election_ticks: u32) -> i64 {
    let seconds = ceil_seconds(heartbeat_interval * ((3 * election_ticks) / 2));
    assert!(seconds <= TTL_MAX_SECONDS, "the minimum TTL is below etcd's maximum");
    seconds
}

/// ceil(duration) in whole seconds.
fn ceil_seconds(duration: Duration) -> i64 {
    (duration.as_secs() + u64::from(duration.subsec_nanos() > 0)) as i64
}

/// A TTL in whole seconds as a Duration (TTLs are >= 0 here; at most TTL_MAX_SECONDS).
fn seconds(ttl_seconds: i64) -> Duration {
    assert!((0..=TTL_MAX_SECONDS).contains(&ttl_seconds), "TTL {ttl_seconds} s outside [0, {TTL_MAX_SECONDS}]");
    Duration::from_secs(ttl_seconds as u64)
}
