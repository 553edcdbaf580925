//! The segmented write-ahead log: the durable record of Raft's log and hard state.
//!
//! Owns: segment files, their format, group commit, recovery. May depend on: `io` traits (it is
//! generic over [`crate::io::Storage`]), `raft::pb` message types. Nothing else.
//!
//! # Use
//!
//! ```text
//! let storage = GlommioStorage::open(data_dir.join("member/wal")).await?;
//! let Opened { wal, recovered, driver } = Wal::open(storage, WalConfig::default()).await?;
//! glommio::spawn_local(driver).detach();          // performs all of the WAL's I/O
//! // recovered.hard_state, recovered.snapshot, recovered.entries: what Raft restarts from
//! let durable = wal.append(&ready.entries, ready.hard_state);   // placed now, in call order
//! send_messages_to_followers();                   // in parallel with the write (§3)
//! durable.await?;                                 // now on disk: report ready n persisted
//! ```
//!
//! Appends made while a write is in flight share the next write and fdatasync; `Durable`
//! futures resolve in append order. `truncate_suffix`, `save_snapshot_marker`, `release_below`,
//! `read_entries`, `sync` and `close` complete the API.
//!
//! # On-disk format (version 1)
//!
//! A WAL is a directory of *segments*, files of a fixed size (64 MiB by default) named
//! `{seq:016x}-{first_index:016x}.wal`: `seq` counts segments from 0 with no gaps; `first_index`
//! is the index the first entry written into the segment was expected to have (informational:
//! a later conflict may append lower indexes). A segment is created as
//! `prepared-{n:016x}.wal.tmp`, filled with zeros and synced (so that writing records later
//! never changes file metadata and `fdatasync` is one device flush), given its head, synced,
//! renamed into place and the directory synced. Leftover `*.tmp` files are deleted when the WAL opens; other names (such
//! as the `LOCK` file through which `GlommioStorage` keeps a second process out) are ignored.
//!
//! ```text
//! segment := preamble seed-record [hard-state-record] [snapshot-record] record* zero*
//! preamble := "ringdwal" (8 bytes) | format version u32 LE (= 1) | reserved u32 (= 0)
//! record   := payload length u32 LE | type u8 | reserved [u8; 3] (= 0) | payload | crc u32 LE
//! ```
//!
//! Record types: 1 seed, 2 entry (a prost `raftpb.Entry`), 3 hard state (prost `HardState`),
//! 4 snapshot marker (prost [`SnapshotMarker`]: index, term, conf state, whether it replaces the
//! log). Type 0 does not exist:
//! eight zero bytes where a header belongs mark the end of the records. Payloads are at most
//! 3 MiB and a record never spans two segments.
//!
//! The crc chain: a record's crc is the crc32 (IEEE, as `crc32fast` computes it) of its
//! header and payload, computed with the previous record's crc as the initial value. The seed
//! record's payload (segment seq u64, first index u64, previous crc u32, reserved u32) carries
//! the crc of the previous segment's last record (0 in the very first segment), and its own crc
//! continues from that value. So every record vouches for all records before it: bytes left
//! from an older write of the same sector, or a record restored from another segment, cannot
//! pass. The head repeats the latest hard state and snapshot marker, so that older segments can
//! be deleted without losing them.
//!
//! Writing: records are appended in memory; one write covers the partly filled last sector
//! (kept in memory and rewritten) plus everything appended since the previous write, padded with
//! zeros to a 4 KiB boundary, at a 4 KiB-aligned offset, with O_DIRECT, made durable as by one
//! `fdatasync` (`DirectFile::write_durable_at`: on glommio one O_DSYNC write, so io_uring needs
//! no worker thread for a separate fsync). A write is at most 4 MiB. Only one write + sync is
//! in flight; appends made meanwhile go into the next one (group commit), and an append is
//! acknowledged only after its sync.
//!
//! Log semantics (see `entry_log`): replaying records in order, an entry whose index is at or
//! below the last one truncates the log there (a Raft conflict, as in etcd's WAL); a snapshot
//! marker beyond the last entry restarts the log after it, and so does one that replaces the
//! log (a leader's snapshot installed over a log that did not hold its entry: the entries
//! above it written before it are dropped; a segment head repeats the marker without that
//! flag). Recovery returns the entries after the last snapshot marker.
//!
//! # Invariants (checked by [`check`], which tests run after every crash and recovery)
//!
//! - Segment sequence numbers are consecutive; each seed matches its file name.
//! - Every record before the end of a segment verifies against the chain, and each segment's
//!   seed continues the chain from the previous segment's last record.
//! - Only the last segment may end in a torn write, and recovery zeroes the torn bytes (a
//!   write never exceeds 4 MiB, so they lie within 4 MiB of the end of the valid records).
//! - Entries after the last snapshot are contiguous.
//!
//! Errors: opening fails with [`OpenError`] rather than drop an acknowledged record; writing
//! fails with [`WriteError`], sticky after any I/O error; reading fails with [`ReadError`].

mod driver;
mod durable;
mod entry_log;
mod error;
mod format;
mod placement;
mod recovery;
mod writer;

pub use durable::Durable;
pub use error::{OpenError, ReadError, WriteError};
pub use format::{
    parse_segment_name, segment_name, SnapshotMarker, FORMAT_VERSION, RECORD_OVERHEAD_BYTES,
    RECORD_PAYLOAD_SIZE_MAX_BYTES, WRITE_SIZE_MAX_BYTES,
};
pub use writer::{Opened, Recovered, Wal, WalConfig, WalDriver, WalStats};

use crate::io::Storage;
use crate::raft::pb::HardState;

/// What [`check`] found in a consistent WAL.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckReport {
    pub segment_count: usize,
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    pub entry_count: usize,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMarker>,
}

/// Verifies the WAL's invariants without changing anything. Fails where opening would have to
/// repair (a torn tail) or refuse (corruption). Run it on a WAL no one is writing.
pub async fn check<S: Storage>(storage: &S) -> Result<CheckReport, OpenError> {
    let log = recovery::recover(storage, recovery::Mode::CheckOnly).await?;
    Ok(CheckReport {
        segment_count: log.segments.len(),
        first_index: log.entries.first().map(|entry| entry.index),
        last_index: log.entries.last().map(|entry| entry.index),
        entry_count: log.entries.len(),
        hard_state: log.hard_state,
        snapshot: log.snapshot,
    })
}
