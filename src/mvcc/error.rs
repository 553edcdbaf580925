//! One error enum per operation (STYLE rule 7). etcd's client-visible strings are copied byte
//! for byte.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Errors of reads and of compaction, with etcd's exact messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MvccError {
    Compacted,
    FutureRevision,
}

impl fmt::Display for MvccError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            MvccError::Compacted => "mvcc: required revision has been compacted",
            MvccError::FutureRevision => "mvcc: required revision is a future revision",
        })
    }
}

impl std::error::Error for MvccError {}

/// Why `Store::open` refused a file. The file is never modified in any of these cases.
#[derive(Debug)]
pub enum OpenError {
    Io {
        path: PathBuf,
        operation: &'static str,
        source: io::Error,
    },
    /// Another process holds the store open.
    Locked {
        path: PathBuf,
    },
    /// The file does not start with ringd's magic: it is some other file.
    Foreign {
        path: PathBuf,
    },
    UnknownVersion {
        path: PathBuf,
        version: u32,
    },
    Corrupt {
        path: PathBuf,
        reason: String,
    },
    /// The mapping (`StoreOptions::map_size_bytes`) is smaller than the file.
    MapTooSmall {
        path: PathBuf,
        file_size_bytes: u64,
        map_size_bytes: u64,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io { path, operation, source } => {
                write!(formatter, "cannot {operation} the store file {}: {source}", path.display())
            }
            OpenError::Locked { path } => write!(
                formatter,
                "the store file {} is in use by another process (stop it, or use another --data-dir)",
                path.display()
            ),
            OpenError::Foreign { path } => write!(
                formatter,
                "{} is not a ringd store file (bad magic); refusing to touch it: move it away or use another --data-dir",
                path.display()
            ),
            OpenError::UnknownVersion { path, version } if *version < super::page::FORMAT_VERSION => write!(
                formatter,
                "the store file {} has format version {version}, written by an older ringd; this ringd reads only version {}: restore the member from a snapshot or a healthy member, or use the older ringd",
                path.display(),
                super::page::FORMAT_VERSION
            ),
            OpenError::UnknownVersion { path, version } => write!(
                formatter,
                "the store file {} has format version {version}, this ringd reads only version {}; use a matching ringd",
                path.display(),
                super::page::FORMAT_VERSION
            ),
            OpenError::Corrupt { path, reason } => write!(
                formatter,
                "the store file {} is corrupt: {reason}; restore it from a snapshot or a healthy member",
                path.display()
            ),
            OpenError::MapTooSmall { path, file_size_bytes, map_size_bytes } => write!(
                formatter,
                "the store file {} is {file_size_bytes} bytes, larger than the {map_size_bytes}-byte mapping; raise the map size",
                path.display()
            ),
        }
    }
}

impl std::error::Error for OpenError {}

/// Errors of checkpoints and maintenance. I/O errors are sticky: after one, every later
/// checkpoint fails with it (a failed fdatasync is never retried).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    Io {
        path: PathBuf,
        operation: &'static str,
        kind: io::ErrorKind,
        message: String,
    },
    /// The file would outgrow the mapping (`StoreOptions::map_size_bytes`).
    MapFull {
        map_size_bytes: u64,
    },
}

impl StoreError {
    pub(crate) fn io(path: &std::path::Path, operation: &'static str, error: io::Error) -> StoreError {
        StoreError::Io { path: path.to_path_buf(), operation, kind: error.kind(), message: error.to_string() }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { path, operation, message, .. } => write!(
                formatter,
                "store I/O failed: {operation} of {}: {message}; the store refuses further writes, restart to recover from the last checkpoint",
                path.display()
            ),
            StoreError::MapFull { map_size_bytes } => write!(
                formatter,
                "the store file would outgrow its {map_size_bytes}-byte mapping; compact, defragment or raise the map size"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

/// A broken invariant found by `check()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckError {
    pub page: Option<u64>,
    pub reason: String,
}

impl fmt::Display for CheckError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.page {
            Some(page) => write!(formatter, "store check failed at page {page}: {}", self.reason),
            None => write!(formatter, "store check failed: {}", self.reason),
        }
    }
}

impl std::error::Error for CheckError {}
