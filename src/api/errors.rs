//! Every client-visible error: etcd's message strings, byte for byte, with their gRPC status
//! codes (etcd's `api/v3rpc/rpctypes/error.go`). Clients match on these strings, so they live
//! here and nowhere else.

use std::fmt;

/// gRPC status codes (grpc/codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Canceled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The HTTP status grpc-gateway maps this code to (runtime.HTTPStatusFromCode).
    pub fn http_status(self) -> u16 {
        match self {
            Code::Ok => 200,
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::Unauthenticated => 401,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
        }
    }
}

/// A gRPC status: a code and a message. The message of every etcd error is `'static`; a
/// few transport errors (size limits, unknown methods) carry a formatted one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: std::borrow::Cow<'static, str>,
}

impl Status {
    pub const fn new(code: Code, message: &'static str) -> Status {
        Status { code, message: std::borrow::Cow::Borrowed(message) }
    }

    pub fn with_message(code: Code, message: String) -> Status {
        Status { code, message: std::borrow::Cow::Owned(message) }
    }

    /// grpc-go's answer to a path that names no registered service or method.
    pub fn unknown_path(path: &str, service_known: bool) -> Status {
        let (service, method) = path.trim_start_matches('/').rsplit_once('/').unwrap_or(("", path));
        if service_known {
            Status::with_message(Code::Unimplemented, format!("unknown method {method} for service {service}"))
        } else {
            Status::with_message(Code::Unimplemented, format!("unknown service {service}"))
        }
    }

    /// grpc-go's answer (UnimplementedXServer) for a method of etcd's API that ringd does
    /// not serve yet.
    pub fn not_implemented(method: &str) -> Status {
        Status::with_message(Code::Unimplemented, format!("method {method} not implemented"))
    }

    /// grpc-go's answer when a message is larger than the server's receive limit.
    pub fn message_too_large(size_bytes: usize, limit_bytes: usize) -> Status {
        Status::with_message(
            Code::ResourceExhausted,
            format!("grpc: received message larger than max ({size_bytes} vs. {limit_bytes})"),
        )
    }

    /// grpc-go's answer to bytes that do not decode as the method's request message.
    pub fn malformed(error: &prost::DecodeError) -> Status {
        Status::with_message(Code::Internal, format!("grpc: error unmarshalling request: {error}"))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Status {}

pub const EMPTY_KEY: Status = Status::new(Code::InvalidArgument, "etcdserver: key is not provided");
pub const KEY_NOT_FOUND: Status = Status::new(Code::InvalidArgument, "etcdserver: key not found");
pub const VALUE_PROVIDED: Status = Status::new(Code::InvalidArgument, "etcdserver: value is provided");
pub const LEASE_PROVIDED: Status = Status::new(Code::InvalidArgument, "etcdserver: lease is provided");
pub const TOO_MANY_OPS: Status = Status::new(Code::InvalidArgument, "etcdserver: too many operations in txn request");
pub const DUPLICATE_KEY: Status = Status::new(Code::InvalidArgument, "etcdserver: duplicate key given in txn request");
pub const INVALID_SORT_OPTION: Status = Status::new(Code::InvalidArgument, "etcdserver: invalid sort option");
/// ringd's own: etcd has no limit on nested txns (`server::entry::TXN_DEPTH_MAX`).
pub const TXN_TOO_DEEP: Status =
    Status::new(Code::InvalidArgument, "etcdserver: txn request nested too deeply (ringd allows 32 levels)");
pub const COMPACTED: Status = Status::new(Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted");
pub const FUTURE_REV: Status =
    Status::new(Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision");
pub const NO_SPACE: Status = Status::new(Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded");
pub const LEASE_NOT_FOUND: Status = Status::new(Code::NotFound, "etcdserver: requested lease not found");
pub const REQUEST_TOO_LARGE: Status = Status::new(Code::InvalidArgument, "etcdserver: request is too large");
/// ringd's own: a key longer than the store's cell allows (etcd has no such bound; the
/// message says what the limit is so that a user can act on it).
pub const KEY_TOO_LARGE: Status =
    Status::new(Code::InvalidArgument, "etcdserver: key is too large (ringd keys are at most 2000 bytes)");
pub const TOO_MANY_REQUESTS: Status = Status::new(Code::ResourceExhausted, "etcdserver: too many requests");
pub const STOPPED: Status = Status::new(Code::Unavailable, "etcdserver: server stopped");
pub const TIMEOUT: Status = Status::new(Code::Unavailable, "etcdserver: request timed out");
pub const CORRUPT: Status = Status::new(Code::DataLoss, "etcdserver: corrupt cluster");
pub const MEMBER_NOT_FOUND: Status = Status::new(Code::NotFound, "etcdserver: member not found");
pub const NOT_CAPABLE: Status = Status::new(Code::Unavailable, "etcdserver: not capable");
pub const LEASE_EXIST: Status = Status::new(Code::FailedPrecondition, "etcdserver: lease already exists");
pub const LEASE_TTL_TOO_LARGE: Status = Status::new(Code::OutOfRange, "etcdserver: too large lease TTL");
pub const NO_LEADER: Status = Status::new(Code::Unavailable, "etcdserver: no leader");
pub const NOT_LEADER: Status = Status::new(Code::FailedPrecondition, "etcdserver: not leader");
pub const LEADER_CHANGED: Status = Status::new(Code::Unavailable, "etcdserver: leader changed");
pub const UNHEALTHY_CLUSTER: Status = Status::new(Code::Unavailable, "etcdserver: unhealthy cluster");
pub const TIMEOUT_LEADER_FAIL: Status =
    Status::new(Code::Unavailable, "etcdserver: request timed out, possibly due to previous leader failure");
pub const MEMBER_EXIST: Status = Status::new(Code::FailedPrecondition, "etcdserver: member ID already exist");
pub const PEER_URL_EXIST: Status = Status::new(Code::FailedPrecondition, "etcdserver: Peer URLs already exists");
pub const MEMBER_BAD_URLS: Status = Status::new(Code::InvalidArgument, "etcdserver: given member URLs are invalid");
pub const MEMBER_NOT_LEARNER: Status =
    Status::new(Code::FailedPrecondition, "etcdserver: can only promote a learner member");
pub const TOO_MANY_LEARNERS: Status =
    Status::new(Code::FailedPrecondition, "etcdserver: too many learner members in cluster");
pub const LEARNER_NOT_READY: Status =
    Status::new(Code::FailedPrecondition, "etcdserver: can only promote a learner member which is in sync with leader");
/// A membership change that would leave fewer started voters than a quorum (the strict
/// reconfiguration check), or one Raft refuses (it would leave no voter).
pub const NOT_ENOUGH_STARTED_MEMBERS: Status =
    Status::new(Code::FailedPrecondition, "etcdserver: re-configuration failed due to not enough started members");
/// Go's `context.Canceled`: the client gave up on its request.
pub const CONTEXT_CANCELED: Status = Status::new(Code::Canceled, "context canceled");

// The Lock and Election services' own errors: etcd returns them as plain Go errors, which
// gRPC sends as `Unknown` (v3election and clientv3/concurrency).
pub const MISSING_LEADER_KEY: Status = Status::new(Code::Unknown, "\"leader\" field must be provided");
pub const ELECTION_NO_LEADER: Status = Status::new(Code::Unknown, "election: no leader");
pub const ELECTION_NOT_LEADER: Status = Status::new(Code::Unknown, "election: not leader");
pub const LOST_WATCHER: Status = Status::new(Code::Unknown, "lost watcher waiting for delete");

pub const BAD_LEADER_TRANSFEREE: Status = Status::new(Code::FailedPrecondition, "etcdserver: bad leader transferee");

const _: () = assert!(crate::mvcc::KEY_SIZE_MAX_BYTES == 2000, "KEY_TOO_LARGE's message names the limit");
