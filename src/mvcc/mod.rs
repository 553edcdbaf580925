//! The MVCC store: etcd's revisioned key space in a copy-on-write B+tree in one file.
//!
//! Owns `member/snap/db`. Depends on nothing else in ringd (the server drives it; readers on
//! every core share its mapping). One writer (`Store`, on the raft core) and any number of
//! readers (`Reader::snapshot`, any core). Blocking I/O happens only in `CommitJob::run`
//! (and in the convenience wrappers `commit` and `defragment`, which call it inline); the
//! file is flock'ed while the store or any of its readers lives.
//!
//! # File format (version 1)
//!
//! The file is an array of 4096-byte pages; all integers are little-endian unless noted.
//!
//! * Pages 0 and 1 are the two meta pages (`page::Meta`, 120 bytes then zeros): magic
//!   `RINGDMV1`, format version, page size, txn id, roots of the kv tree, the rev tree and the
//!   free list, page count, free page count, current / compact revision, consistent index,
//!   kv entry count, the rev tree position where an unfinished compaction resumes, and a
//!   crc32 of the preceding 112 bytes. Checkpoint txn N writes page N % 2,
//!   so the other page always holds txn N - 1. At open the valid meta with the highest txn id
//!   wins (LMDB); a torn meta write fails its checksum and the older one is used.
//! * Every other page starts with a 24-byte `page::PageHeader`: crc32 of bytes [4, 4096), kind
//!   (branch, leaf, overflow, free list), cell count, the txn that wrote it, next page.
//! * Branch and leaf pages (slotted): the header, `count` u16 slots (cell offsets, in key
//!   order), free space, then the cells anywhere after the slots (the writer packs them
//!   down from the end of the page and edits dirty nodes in this same format in memory).
//!   Leaf cell: key_len u16, flags u8 (1 = value in an overflow chain; no other bit is ever
//!   on disk), value_len u32, key, then the value inline or the u64 first page of its
//!   overflow chain. Branch cell: child page u64, key_len u16, key; the first cell's key is
//!   empty (-inf) and child i holds the keys in [key i, key i+1).
//! * Overflow pages: the header (next = following page, 0 at the end) and up to 4072 bytes.
//!   Values whose cell would exceed 1024 bytes live there (values up to 1.5 MiB and more).
//! * Free list pages: the header (count, next) and (page id u64, freed-at txn u64) entries;
//!   txn 0 marks a page any checkpoint may reuse.
//!
//! Tree keys end with a 16-byte revision suffix and compare by (prefix, suffix):
//! * kv tree: user key ++ !main ++ !sub (big-endian) -> flags u8 (1 = tombstone),
//!   create_revision i64, version i64, lease i64, value. A key's revisions are adjacent, newest
//!   first, so a range at any revision is one ordered scan and nothing is rebuilt at open.
//! * rev tree: main ++ sub (big-endian) -> flags u8 (1 = tombstone), user key: the write
//!   history in order, for watch replay and compaction.
//!
//! # Invariants (checked by `Store::check`)
//!
//! 1. Committed pages are never modified in place: a checkpoint writes new pages, fdatasyncs,
//!    then writes the alternate meta page and fdatasyncs again.
//! 2. Every page below the page count is reached exactly once: a meta page, a tree node, an
//!    overflow page, a free list page, or a free list entry.
//! 3. Keys are strictly ordered within nodes and within their parent's separators; all leaves
//!    of a tree are at the same depth; every page a meta reaches passes its checksum.
//! 4. The kv and rev trees hold the same revisions (same tombstone flags).
//! 5. A page freed by txn T is reused only by txn >= T + 2 (neither durable meta reaches it)
//!    and only when every live snapshot pins a txn >= T.
//! 6. The file is truncated only to drop free pages that nothing can reach, and only after
//!    the meta with the smaller page count is durable (a longer file is always valid).
//! 7. Revisions strictly increase; a read at revision R >= the compact revision always returns
//!    the same result (compaction keeps, per key, the newest revision <= R unless it is a
//!    tombstone, as etcd's key_index.go).

mod check;
mod error;
pub mod file;
mod keys;
pub mod page;
mod read;
mod store;
mod tree;

pub use error::{CheckError, MvccError, OpenError, StoreError};
pub use file::{CrashMode, MmapFile, SimFile, StoreFile};
pub use page::KEY_SIZE_MAX_BYTES;
pub use read::HistoryEvent;
pub use store::{CommitDone, CommitJob, Image, Reader, Snapshot, Store, StoreOptions, WriteTxn};

/// An etcd revision (main revision of a write transaction).
pub type Revision = i64;

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

/// etcd's RangeOptions. Bounds follow etcd: range_end empty -> the single key; range_end ==
/// [0] -> every key >= key; key == [0] && range_end == [0] -> every key; else [key, range_end).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// 0 = current.
    pub revision: i64,
    /// 0 = no limit.
    pub limit: i64,
    pub keys_only: bool,
    pub count_only: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Every live key in the range at the revision, regardless of limit.
    pub count: i64,
    /// The store's current revision.
    pub revision: i64,
}
