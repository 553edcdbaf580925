//! One error enum per operation: opening (recovery), writing (append, sync, truncate, release)
//! and reading. Messages say what happened, where, and what to do.

use std::fmt;
use std::io;
use std::sync::Arc;

/// Why `Wal::open` (or `wal::check`) failed. Nothing was dropped silently: when the data dir
/// cannot be recovered as is, open refuses and says which file and offset to look at.
#[derive(Debug)]
pub enum OpenError {
    InvalidConfig(String),
    Io {
        file: String,
        operation: &'static str,
        source: io::Error,
    },
    /// The segment was written by a format this build does not know.
    UnknownVersion {
        file: String,
        version: u32,
    },
    /// Acknowledged data is damaged: a bad record before the last segment's tail, a broken crc
    /// chain between segments, or a record whose crc is right but whose payload is not.
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// Segment sequence numbers must be consecutive; one is missing.
    MissingSegment {
        expected_seq: u64,
        found: String,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::InvalidConfig(reason) => write!(f, "wal: invalid configuration: {reason}"),
            OpenError::Io { file, operation, source } => {
                write!(f, "wal: {operation} {file} failed: {source}")
            }
            OpenError::UnknownVersion { file, version } => write!(
                f,
                "wal: {file} has WAL format version {version}, this build reads only version {}; \
                 run the ringd release that wrote this data dir",
                super::format::FORMAT_VERSION
            ),
            OpenError::Corrupt { file, offset, reason } => write!(
                f,
                "wal: {file} is corrupt at offset {offset}: {reason}; acknowledged records would be \
                 lost, so the WAL refuses to open: restore this member from a snapshot or a peer"
            ),
            OpenError::MissingSegment { expected_seq, found } => write!(
                f,
                "wal: segment {expected_seq:016x} is missing (next present is {found}); restore this \
                 member from a snapshot or a peer"
            ),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why an append, sync, truncate or release failed. `Io` and `Closed` are sticky: after the
/// first failure on the durability path every later call fails with the same error, because a
/// failed fsync may have dropped data and is never retried. Reopen the WAL to recover.
#[derive(Clone, Debug)]
pub enum WriteError {
    Io {
        file: String,
        operation: &'static str,
        source: Arc<io::Error>,
    },
    /// The caller broke the log's rules (index gap, truncation into released entries...).
    /// Not sticky: nothing was written.
    InvalidRequest(String),
    /// A record exceeds what one segment or one write can hold. Not sticky.
    RecordTooLarge {
        size_bytes: usize,
        size_max_bytes: usize,
    },
    /// The WAL was closed or its driver future was dropped.
    Closed,
}

impl WriteError {
    pub fn io(file: String, operation: &'static str, source: io::Error) -> WriteError {
        WriteError::Io { file, operation, source: Arc::new(source) }
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Io { file, operation, source } => write!(
                f,
                "wal: {operation} {file} failed: {source}; the WAL stopped accepting writes (a \
                 failed sync is never retried): restart the member to recover from disk"
            ),
            WriteError::InvalidRequest(reason) => write!(f, "wal: invalid request: {reason}"),
            WriteError::RecordTooLarge { size_bytes, size_max_bytes } => write!(
                f,
                "wal: record of {size_bytes} bytes exceeds the maximum of {size_max_bytes}; lower \
                 the request size limit or raise the segment size"
            ),
            WriteError::Closed => write!(f, "wal: closed"),
        }
    }
}

impl std::error::Error for WriteError {}

/// Why `read_entries` failed.
#[derive(Clone, Debug)]
pub enum ReadError {
    /// The range starts below the first entry the WAL still holds.
    Compacted {
        first_index: u64,
    },
    /// The range ends after the last entry.
    Unavailable {
        last_index: u64,
    },
    Io {
        file: String,
        source: Arc<io::Error>,
    },
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// Waiting for the entries to become durable failed.
    Write(WriteError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Compacted { first_index } => {
                write!(f, "wal: entries below {first_index} were released after a snapshot")
            }
            ReadError::Unavailable { last_index } => write!(f, "wal: no entries after {last_index}"),
            ReadError::Io { file, source } => write!(f, "wal: reading {file} failed: {source}"),
            ReadError::Corrupt { file, offset, reason } => {
                write!(f, "wal: {file} is corrupt at offset {offset}: {reason}")
            }
            ReadError::Write(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for ReadError {}
