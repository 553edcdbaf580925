//! The MVCC store: etcd's revisioned key space, and the aux tables (leases, members, auth)
//! applied atomically with it, in copy-on-write B+trees in one file.
//!
//! Owns `member/snap/db`. Depends on nothing else in ringd (the server drives it; readers on
//! every core share its mapping). One writer (`Store`, on the raft core) and any number of
//! readers (`Reader::snapshot`, any core). I/O happens only in `CommitJob::run` (and in the
//! convenience wrappers `commit`, `commit_with` and `defragment`, which call it inline); the
//! file is flock'ed while the store or any of its readers lives.
//!
//! # File format (version 3)
//!
//! The file is an array of 4096-byte pages; all integers are little-endian unless noted.
//!
//! * Pages 0 and 1 are the two meta pages (`page::Meta`, 136 bytes then zeros): magic
//!   `RINGDMV1`, format version, page size, txn id, roots of the kv tree, the rev tree and the
//!   free list, page count, free page count, current / compact revision, consistent index,
//!   kv entry count, the rev tree position where an unfinished compaction resumes, the aux
//!   tree's root and entry count, and a crc32 of the preceding 128 bytes. A visible commit's
//!   meta (never written to disk) has `FREELIST_UNWRITTEN` as its free list root: its free list
//!   is in the writer's memory. A durable
//!   checkpoint writes its meta into the slot holding the older of the two metas on disk (or
//!   into a slot without a valid meta), so the newer one is never touched while the new one
//!   may be torn. Txn ids of the two slots need not be consecutive or of any parity (visible
//!   commits between checkpoints use txn ids that never reach the disk). At open the valid
//!   meta with the highest txn id wins, whichever slot holds it (LMDB); a torn meta write
//!   fails its checksum and the other one is used. Version 1 files (no aux tree, meta slot =
//!   txn % 2) and version 2 files (u16 slots) are refused with `OpenError::UnknownVersion`.
//! * Every other page starts with a 24-byte `page::PageHeader`: crc32 of bytes [4, 4096), kind
//!   (branch, leaf, overflow, free list), cell count, the txn that wrote it, next page (in a
//!   branch or leaf: the length of the prefix all its keys' user parts share).
//! * Branch and leaf pages (slotted): the header, `count` u32 slots in key order, free space,
//!   then the cells anywhere after the slots (the writer packs them down from the end of the
//!   page and edits dirty nodes in this same format in memory). A slot holds its cell's offset
//!   (low 12 bits) and its key's head (`page::key_head`: the 20 bits of the user part after the
//!   shared prefix), so a search compares heads in the slot array and reads the cells of
//!   equal heads only. A branch's key 0 has head 0.
//!   Leaf cell: key_len u16, flags u8 (1 = value in an overflow chain; no other bit is ever
//!   on disk), value_len u32, key, then the value inline or the u64 first page of its
//!   overflow chain. Branch cell: child page u64, key_len u16, key; the first cell's key is
//!   empty (-inf) and child i holds the keys in [key i, key i+1).
//! * Overflow pages: the header (next = following page, 0 at the end) and up to 4072 bytes.
//!   Values whose cell would exceed 1024 bytes live there (values up to 1.5 MiB and more); a
//!   chain has at least one page, also for an empty value.
//! * Free list pages: the header (count, next) and (page id u64, freed-at txn u64) entries;
//!   txn 0 marks a page any commit may reuse.
//!
//! Tree keys end with a 16-byte suffix and compare by (prefix, suffix):
//! * kv tree: user key ++ !main ++ !sub (big-endian) -> flags u8 (1 = tombstone),
//!   create_revision i64, version i64, lease i64, value. A key's revisions are adjacent, newest
//!   first, so a range at any revision is one ordered scan and nothing is rebuilt at open.
//! * rev tree: main ++ sub (big-endian) -> flags u8 (1 = tombstone), user key: the write
//!   history in order, for watch replay and compaction.
//! * aux tree: table u8 ++ key ++ 16 zero bytes -> value, so entries order by (table, key).
//!   Tables: `AUX_TABLE_LEASES` (1), `AUX_TABLE_MEMBERS` (2), `AUX_TABLE_AUTH` (3); keys up to
//!   `AUX_KEY_SIZE_MAX_BYTES`. Not revisioned: the state etcd keeps beside the key space in
//!   its lease, members and auth buckets. `aux_put` / `aux_delete` (on the `Store` or inside
//!   a `WriteTxn`) change the writer's state like a put does, so a batch's aux and kv changes
//!   land in the same commit, all or nothing.
//!
//! # Commits: visible and durable (DESIGN §5)
//!
//! Every commit is a txn: it spills the dirty nodes to fresh pages and makes a meta that
//! describes a complete, consistent tree. A durable checkpoint also writes the whole free list;
//! a visible commit keeps it in memory (a page per 254 free pages each commit would dwarf the
//! trees' few pages after a large compaction), and the last durable free list's pages stay
//! allocated until the next checkpoint replaces them. How far a commit goes:
//! * `Durability::Visible`: the pages are pwritten, which puts them in the page cache where
//!   every core's shared mapping reads them, and the meta is published to readers in memory.
//!   No fdatasync, no meta page written: a crash forgets the commit, and the server replays its
//!   Raft WAL from the consistent index of the last durable checkpoint.
//! * `Durability::Durable` (a checkpoint; `commit` and `prepare_commit`): pwrite, fdatasync
//!   (which also flushes every visible commit's pages since the last checkpoint), the meta
//!   page into its slot, fdatasync. With no tree changed since the last visible commit it
//!   writes the free list and a meta in one more txn.
//! * A speculative commit (`prepare_speculative_commit`) is a visible one whose owner may
//!   drop it instead of publishing it (`abort_commit`): the writer goes back to the last
//!   published commit, and the pages the job wrote, which no meta reaches, are free again.
//!   The server applies a leader's entries with one while they replicate.
//!
//! After any crash, whatever visible commits followed the last checkpoint and whichever of
//! their writes reached the disk, open finds exactly the last durable checkpoint (or the one
//! being written, if its meta reached the disk whole): its trees, aux tables and consistent
//! index (`Store::durable_consistent_index`).
//!
//! # Page reuse and truncation
//!
//! A meta that may still be read pins the pages it reaches. The pins are the two metas on
//! disk (a crash reopens the newer; a damaged newer one falls back to the older), the
//! published meta (the next snapshot takes it) and every live snapshot's. A page written by
//! txn A (its header's txn) and freed by txn T is reached by exactly the metas of txns in
//! [A, T), so it is reused only when no pin lies in [A, T). Example: checkpoints 10 and 20
//! on disk, visible commits 21..=29, a snapshot of 25, txn 30 being prepared: pins {10, 20,
//! 25, 29}. A page written by 22 and freed by 24 is reused at once; one written by 22 and
//! freed by 27 when the snapshot of 25 is dropped; one written by 5 and freed by 23 once
//! checkpoints have replaced both 10 and 20. Pages a visible commit writes and a later one
//! frees are thus reused between checkpoints, while everything a durable meta reaches stays
//! intact on disk. The free list on disk does not record A: pages listed as pending at open
//! wait until no meta older than their freed-at txn is pinned.
//!
//! A commit drops free pages at the end of its page count; the file itself is truncated only
//! down to the largest page count of the metas on disk (the new one included), so both
//! still open after a crash; a longer file is always valid.
//!
//! # Invariants (checked by `Store::check`, and `Store::check_durable` for the metas on disk)
//!
//! 1. Committed pages are never modified in place: a commit writes new pages; a checkpoint
//!    fdatasyncs them before it writes its meta page, and fdatasyncs again.
//! 2. Every page below the page count is reached exactly once: a meta page, a tree node, an
//!    overflow page, a free list page, or a free list entry (for a visible commit, an entry of
//!    the writer's in-memory free list, and the last durable free list's pages).
//! 3. Keys are strictly ordered within nodes and within their parent's separators; all leaves
//!    of a tree are at the same depth; every page a meta reaches passes its checksum.
//! 4. The kv and rev trees hold the same revisions (same tombstone flags); aux keys are a
//!    table byte, a key and a zero suffix; the meta's entry counts match the trees.
//! 5. A page written by txn A and freed by txn T is reused only when no pin (meta on disk,
//!    published meta, live snapshot) has a txn in [A, T).
//! 6. The file is truncated only to drop free pages that nothing can reach, and never below
//!    the page count of a meta on disk.
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
pub use page::{AUX_KEY_SIZE_MAX_BYTES, KEY_SIZE_MAX_BYTES};
pub use read::{Bounds, HistoryEvent};
pub use store::{
    CommitDone, CommitJob, Durability, Image, Reader, Snapshot, Store, StoreOptions, WriteTxn, WritebackJob,
};

/// An etcd revision (main revision of a write transaction).
pub type Revision = i64;

/// Aux table ids: the first byte of an aux tree key (the state etcd keeps in its lease,
/// members and auth buckets, committed atomically with the key space).
pub const AUX_TABLE_LEASES: u8 = 1;
pub const AUX_TABLE_MEMBERS: u8 = 2;
pub const AUX_TABLE_AUTH: u8 = 3;

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
