//! One error enum per operation (STYLE rule 7). The lessor-level messages are etcd's
//! (lease/lessor.go) byte for byte; the gRPC statuses they map to are in the module doc.

use std::fmt;

use super::LeaseId;
use crate::mvcc::MvccError;

/// etcd's ErrLeaseNotFound (revoke, attach, and the NotFound variants below).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseNotFound;

impl fmt::Display for LeaseNotFound {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("lease not found")
    }
}

impl std::error::Error for LeaseNotFound {}

/// Why `Lessor::grant` refused, in etcd's order of checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The id is 0 (etcd's NoLease): the proposing member picks one before proposing.
    NotFound,
    /// TTL > TTL_MAX_SECONDS.
    TtlTooLarge,
    Exists,
}

impl fmt::Display for GrantError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            GrantError::NotFound => "lease not found",
            GrantError::TtlTooLarge => "too large lease TTL",
            GrantError::Exists => "lease already exists",
        })
    }
}

impl std::error::Error for GrantError {}

/// Why `Lessor::renew` refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewError {
    /// This member does not lead: forward the keepalive to the leader.
    NotPrimary,
    /// KeepAlive answers TTL 0.
    NotFound,
    /// The lease's expiry has passed and its revoke is on its way through Raft: answer once
    /// the revoke is applied (TTL 0) or this member is demoted (forward to the new leader).
    Expired,
}

impl fmt::Display for RenewError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            RenewError::NotPrimary => "not a primary lessor",
            RenewError::NotFound => "lease not found",
            RenewError::Expired => "lease expired; its revoke is in flight",
        })
    }
}

impl std::error::Error for RenewError {}

/// Why `Lessor::time_to_live` refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeToLiveError {
    /// Only the leader knows expiries: forward to it.
    NotPrimary,
    /// TimeToLive answers TTL -1.
    NotFound,
}

impl fmt::Display for TimeToLiveError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            TimeToLiveError::NotPrimary => "not a primary lessor",
            TimeToLiveError::NotFound => "lease not found",
        })
    }
}

impl std::error::Error for TimeToLiveError {}

/// Why `Lessor::load` refused a store: its lease table is damaged. The store is not
/// modified; restore the member from a snapshot or re-add it to the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    CorruptRecord {
        key: Vec<u8>,
        reason: String,
    },
    /// The key space could not be read at its own current revision.
    Range(MvccError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::CorruptRecord { key, reason } => write!(
                formatter,
                "lease record {key:02x?} in the store is corrupt ({reason}); restore this member from a snapshot"
            ),
            LoadError::Range(error) => write!(formatter, "cannot range over the keys to attach to leases: {error}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// An invariant of the module doc that `Lessor::check` found broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseCheckError {
    pub lease: Option<LeaseId>,
    pub reason: String,
}

impl fmt::Display for LeaseCheckError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.lease {
            Some(id) => write!(formatter, "lease {:x}: {}", id.0, self.reason),
            None => write!(formatter, "lessor: {}", self.reason),
        }
    }
}

impl std::error::Error for LeaseCheckError {}
