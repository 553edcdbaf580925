//! The writer: appends, group commit, rotation, release, truncation and reads.
//!
//! Appends are synchronous up to the point of durability. `append` validates, encodes the
//! records and decides where they will land (segment and offset) right away, in call order,
//! then returns a [`Durable`] future. The *driver* future (returned by `Wal::open`; the owner
//! spawns it) does all the I/O in one place:
//!
//! - the flusher takes every record appended since its last write (up to
//!   `WRITE_SIZE_MAX_BYTES`), prepends the in-memory tail sector, seals the crc chain, writes the
//!   sectors with one aligned direct write made durable at once (`write_durable_at`: a write
//!   and a `sync_data`, one O_DSYNC write on glommio), and wakes the appenders whose
//!   records are now durable, in append order. Appends made while a write is in flight queue for
//!   the next one: that is the group commit, and at most one write + sync is ever in flight;
//! - the preparer keeps one zero-filled, synced segment file (`prepared-N.wal.tmp`) ready, so that a
//!   rotation costs one head write, one sync, one rename and one directory sync.
//!
//! Tickets: every append gets the next ticket number; `Commit::durable_ticket` is the highest
//! ticket all of whose records (and all earlier ones) are durable.
//!
//! An I/O error on this path is sticky (`Commit::error`): every waiting and later append fails
//! with it and the driver stops. A failed fsync is never retried.

use super::driver::driver;
use super::durable::{Commit, Durable};
use super::error::{OpenError, ReadError, WriteError};
use super::format::*;
use super::placement::{Segment, State, Tail};
use super::recovery::{self, EntryLocation, Mode, RecoveredLog};
use crate::io::{DirectFile, Storage, SECTOR_SIZE_BYTES};
use crate::raft::pb::{Entry, HardState};
use prost::Message;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Size of every new segment file: 64 MiB by default, a multiple of 4 KiB.
    pub segment_size_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig { segment_size_bytes: 64 * 1024 * 1024 }
    }
}

impl WalConfig {
    /// The smallest segment allowed: a few sectors, for tests.
    pub const SEGMENT_SIZE_MIN_BYTES: u64 = 4 * SECTOR_SIZE_BYTES as u64;

    fn validate(&self) -> Result<(), OpenError> {
        let size = self.segment_size_bytes;
        if size < Self::SEGMENT_SIZE_MIN_BYTES || !size.is_multiple_of(SECTOR_SIZE_BYTES as u64) {
            return Err(OpenError::InvalidConfig(format!(
                "segment_size_bytes {size} must be a multiple of {SECTOR_SIZE_BYTES} and at least {}",
                Self::SEGMENT_SIZE_MIN_BYTES
            )));
        }
        Ok(())
    }
}

/// What the WAL held when it was opened.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMarker>,
    /// The entries after the snapshot marker (all entries without one), in index order.
    pub entries: Vec<Entry>,
    /// Where recovery found and zeroed a torn tail, if it did.
    pub repaired_tail: Option<(String, u64)>,
}

/// The future that performs the WAL's I/O. Spawn it on the executor that owns the WAL
/// (`glommio::spawn_local(driver).detach()`); it ends after `close` or on a sticky error.
pub type WalDriver = Pin<Box<dyn Future<Output = ()>>>;

pub struct Opened<S: Storage> {
    pub wal: Wal<S>,
    pub recovered: Recovered,
    pub driver: WalDriver,
}

/// Counters for benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    pub appends: u64,
    pub records: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub syncs: u64,
    pub rotations: u64,
}

pub(super) struct Shared<S: Storage> {
    pub(super) storage: S,
    pub(super) state: RefCell<State<S::File>>,
    pub(super) commit: Rc<RefCell<Commit>>,
}

impl<S: Storage> Shared<S> {
    pub(super) fn fail(&self, error: WriteError) {
        self.commit.borrow_mut().fail(error);
        self.wake_driver();
    }

    pub(super) fn wake_driver(&self) {
        let mut state = self.state.borrow_mut();
        if let Some(waker) = state.flusher_waker.take() {
            waker.wake();
        }
        if let Some(waker) = state.preparer_waker.take() {
            waker.wake();
        }
    }

    pub(super) fn sticky_error(&self) -> Option<WriteError> {
        self.commit.borrow().error.clone()
    }
}

/// The segmented write-ahead log. Single-threaded: use it from the executor that runs its
/// driver; share it between tasks with `Rc`.
pub struct Wal<S: Storage> {
    shared: Rc<Shared<S>>,
}

/// Reads of entries are split into runs of at most this many bytes.
const READ_RUN_SIZE_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// How many of `locations` (at least one) lie back to back in one segment, within one read.
fn contiguous_run_len(locations: &[EntryLocation]) -> usize {
    assert!(!locations.is_empty());
    let mut size_bytes = locations[0].record_size_bytes as u64;
    let mut len = 1;
    while len < locations.len() {
        let (previous, next) = (&locations[len - 1], &locations[len]);
        let contiguous = previous.segment_seq == next.segment_seq
            && previous.offset + previous.record_size_bytes as u64 == next.offset;
        size_bytes += next.record_size_bytes as u64;
        if !contiguous || size_bytes > READ_RUN_SIZE_MAX_BYTES {
            break;
        }
        len += 1;
    }
    len
}

async fn read_tail_sector<F: DirectFile>(file: &F, end_offset: u64) -> std::io::Result<Vec<u8>> {
    let sector_start = align_down(end_offset);
    let len = (end_offset - sector_start) as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    let data = file.read_at(sector_start, len).await?;
    assert_eq!(data.len(), len, "the tail sector lies inside the segment");
    Ok(data.to_vec())
}

impl<S: Storage + 'static> Wal<S> {
    /// Recovers the WAL in `storage` (creating a new one in an empty directory) and returns it
    /// with what it held and the driver future to spawn.
    pub async fn open(storage: S, config: WalConfig) -> Result<Opened<S>, OpenError> {
        config.validate()?;
        let log = recovery::recover(&storage, Mode::Repair).await?;
        let recovered = Recovered {
            hard_state: log.hard_state,
            snapshot: log.snapshot.clone(),
            entries: Vec::new(),
            repaired_tail: log.repaired_tail.clone(),
        };
        let (state, entries) = Self::initial_state(&storage, log, &config).await?;
        let shared = Rc::new(Shared { storage, state: RefCell::new(state), commit: Rc::default() });
        let driver = driver(shared.clone());
        Ok(Opened { wal: Wal { shared }, recovered: Recovered { entries, ..recovered }, driver })
    }

    async fn initial_state(
        storage: &S,
        log: RecoveredLog<S::File>,
        config: &WalConfig,
    ) -> Result<(State<S::File>, Vec<Entry>), OpenError> {
        let mut state = State {
            segment_size_bytes: config.segment_size_bytes,
            append_seq: 0,
            append_offset: 0,
            ticket_last: 0,
            locations: log.locations,
            hard_state: log.hard_state,
            snapshot: log.snapshot,
            units: VecDeque::new(),
            spare_unit_buffers: Vec::new(),
            segments: BTreeMap::new(),
            tail: None,
            chain_crc: log.chain_crc,
            prepared: None,
            prepared_count: 0,
            rotation_waiting: false,
            closing: false,
            flusher_waker: None,
            preparer_waker: None,
            stats: WalStats::default(),
        };
        let Some(last) = log.segments.last() else {
            // A new WAL: segment 0 is installed by the driver before the first write.
            state.push_rotation(0);
            return Ok((state, log.entries));
        };
        let tail_bytes = read_tail_sector(&last.file, log.end_offset).await.map_err(|source| OpenError::Io {
            file: storage.describe(&last.name),
            operation: "reading the tail of",
            source,
        })?;
        state.tail = Some(Tail { seq: last.seq, sector_start: align_down(log.end_offset), bytes: tail_bytes });
        state.append_seq = last.seq;
        state.append_offset = log.end_offset;
        for segment in log.segments {
            let installed = Segment {
                name: Some(segment.name),
                file: Some(Rc::new(segment.file)),
                size_bytes: segment.size_bytes,
                entry_index_max: segment.entry_index_max,
            };
            state.segments.insert(segment.seq, installed);
        }
        Ok((state, log.entries))
    }

    /// Appends `entries` (consecutive indexes; a first index at or below the last one
    /// truncates the log there first, as a Raft log conflict requires) and then `hard_state`.
    /// The records are placed now, in call order; the future resolves when they are durable.
    pub fn append(&self, entries: &[Entry], hard_state: Option<HardState>) -> Durable {
        if entries.is_empty() && hard_state.is_none() {
            return self.sync();
        }
        if let Some(error) = self.shared.sticky_error() {
            return Durable::failed(error);
        }
        let mut state = self.shared.state.borrow_mut();
        if state.closing {
            return Durable::failed(WriteError::Closed);
        }
        if let Err(error) = state.validate_entries(entries) {
            return Durable::failed(error);
        }
        let ticket = state.begin_append();
        for entry in entries {
            state.add_entry(entry, ticket);
        }
        if let Some(hard_state) = hard_state {
            state.add_hard_state(hard_state);
        }
        state.finish_append(ticket);
        Durable::waiting(&self.shared.commit, ticket)
    }

    /// Records that a snapshot of the state machine exists at `marker.index`; segments whose
    /// entries all precede it may then be released. If the log ends before the snapshot, the
    /// log continues after it.
    pub fn save_snapshot_marker(&self, marker: SnapshotMarker) -> Durable {
        if let Some(error) = self.shared.sticky_error() {
            return Durable::failed(error);
        }
        let mut state = self.shared.state.borrow_mut();
        if state.closing {
            return Durable::failed(WriteError::Closed);
        }
        let previous_index = state.snapshot.as_ref().map_or(0, |previous| previous.index);
        if marker.index < previous_index {
            return Durable::failed(WriteError::InvalidRequest(format!(
                "snapshot at {} is older than the one at {previous_index}",
                marker.index
            )));
        }
        if let Err(error) = State::<S::File>::check_record_size(marker.encoded_len(), state.record_size_max_bytes()) {
            return Durable::failed(error);
        }
        let ticket = state.begin_append();
        state.add_snapshot(marker);
        state.finish_append(ticket);
        Durable::waiting(&self.shared.commit, ticket)
    }

    /// Resolves when everything appended so far is durable.
    pub fn sync(&self) -> Durable {
        let ticket = self.shared.state.borrow().ticket_last;
        Durable::waiting(&self.shared.commit, ticket)
    }

    /// Drops the entries from `index` on. The truncation reaches the disk with the next append
    /// (whose first entry is then `index`): a crash before it brings the old entries back,
    /// which is safe for Raft because nothing was acknowledged on the strength of the truncation.
    pub fn truncate_suffix(&self, index: u64) -> Result<(), WriteError> {
        if let Some(error) = self.shared.sticky_error() {
            return Err(error);
        }
        let mut state = self.shared.state.borrow_mut();
        if index == 0 {
            return Err(WriteError::InvalidRequest("Raft indexes start at 1".to_string()));
        }
        if state.locations.last_index().is_some_and(|last| index <= last) {
            state.check_truncation(index)?;
            state.locations.truncate_from(index);
        }
        Ok(())
    }

    /// Deletes the oldest segments whose entries are all below `index`, after making the
    /// snapshot marker that covers them durable. `index` may not exceed the last snapshot's
    /// index + 1. Returns how many segments were deleted; entries below `index` are no longer
    /// readable.
    pub async fn release_below(&self, index: u64) -> Result<usize, WriteError> {
        {
            let state = self.shared.state.borrow();
            let snapshot_index = state.snapshot.as_ref().map_or(0, |marker| marker.index);
            if index > snapshot_index + 1 {
                return Err(WriteError::InvalidRequest(format!(
                    "cannot release entries up to {index}: the last snapshot is at {snapshot_index}"
                )));
            }
        }
        self.sync().await?;
        let victims = self.take_releasable(index);
        let storage = &self.shared.storage;
        for (name, _file) in &victims {
            storage.remove(name).await.map_err(|e| WriteError::io(storage.describe(name), "removing", e))?;
        }
        if !victims.is_empty() {
            storage.sync().await.map_err(|e| WriteError::io(storage.describe(""), "syncing directory", e))?;
        }
        Ok(victims.len())
    }

    fn take_releasable(&self, index: u64) -> Vec<(String, Rc<S::File>)> {
        let mut state = self.shared.state.borrow_mut();
        let written_seq = state.tail.as_ref().map_or(0, |tail| tail.seq);
        let mut victims = Vec::new();
        while let Some(entry) = state.segments.first_entry() {
            let segment = entry.get();
            let below = segment.entry_index_max.is_none_or(|max| max < index);
            if *entry.key() >= written_seq || !below || segment.name.is_none() {
                break;
            }
            let segment = entry.remove();
            victims.push((segment.name.expect("checked"), segment.file.expect("installed")));
        }
        state.locations.release_below(index);
        victims
    }

    /// Reads the entries `[low, high)`, waiting first for them to be durable.
    pub async fn read_entries(&self, low: u64, high: u64) -> Result<Vec<Entry>, ReadError> {
        self.read_entries_limited(low, high, u64::MAX).await
    }

    /// Reads entries from `low` towards `high` (exclusive), stopping before their records
    /// exceed `size_max_bytes` but returning at least one, like etcd raft's `Storage.Entries`
    /// with `maxSize`. Waits first for the entries to be durable.
    pub async fn read_entries_limited(
        &self,
        low: u64,
        high: u64,
        size_max_bytes: u64,
    ) -> Result<Vec<Entry>, ReadError> {
        let (locations, ticket) = self.locate(low, high, size_max_bytes)?;
        Durable::waiting(&self.shared.commit, ticket).await.map_err(ReadError::Write)?;
        let mut entries = Vec::with_capacity(locations.len());
        let mut run_start = 0;
        while run_start < locations.len() {
            let run_end = run_start + contiguous_run_len(&locations[run_start..]);
            let first_index = low + run_start as u64;
            self.read_run(&locations[run_start..run_end], first_index, &mut entries).await?;
            run_start = run_end;
        }
        assert_eq!(entries.len(), locations.len());
        Ok(entries)
    }

    fn locate(&self, low: u64, high: u64, size_max_bytes: u64) -> Result<(Vec<EntryLocation>, u64), ReadError> {
        let state = self.shared.state.borrow();
        let first_index = state.locations.first_index().unwrap_or(1);
        let last_index = state.locations.last_index().unwrap_or(0);
        if low < first_index {
            return Err(ReadError::Compacted { first_index });
        }
        if high > last_index + 1 {
            return Err(ReadError::Unavailable { last_index });
        }
        let mut locations = Vec::new();
        let mut size_bytes = 0u64;
        for index in low..high {
            let location = *state.locations.get(index).expect("index in range");
            size_bytes += location.record_size_bytes as u64;
            if size_bytes > size_max_bytes && !locations.is_empty() {
                break;
            }
            locations.push(location);
        }
        let ticket = locations.iter().map(|location| location.ticket).max().unwrap_or(0);
        Ok((locations, ticket))
    }

    /// Reads records laid out back to back in one segment, checking each one.
    async fn read_run(&self, run: &[EntryLocation], first_index: u64, out: &mut Vec<Entry>) -> Result<(), ReadError> {
        let seq = run[0].segment_seq;
        let segment = {
            let state = self.shared.state.borrow();
            state.segments.get(&seq).and_then(|segment| Some((segment.name.clone()?, segment.file.clone()?)))
        };
        let Some((name, file)) = segment else {
            return Err(ReadError::Compacted { first_index });
        };
        let file_name = self.shared.storage.describe(&name);
        let start = run[0].offset;
        let len: u64 = run.iter().map(|location| location.record_size_bytes as u64).sum();
        let data = file
            .read_at(start, len as usize)
            .await
            .map_err(|e| ReadError::Io { file: file_name.clone(), source: std::sync::Arc::new(e) })?;
        let mut position = 0usize;
        for (i, location) in run.iter().enumerate() {
            let corrupt =
                |reason: String| ReadError::Corrupt { file: file_name.clone(), offset: location.offset, reason };
            let size = location.record_size_bytes as usize;
            let record = data.get(position..position + size).ok_or_else(|| corrupt("short read".to_string()))?;
            let header = RecordHeader::parse(&record[..RECORD_HEADER_SIZE_BYTES])
                .map_err(|problem| corrupt(format!("bad record header: {problem:?}")))?;
            if header.record_type != RecordType::Entry || record_size_bytes(header.payload_len) != size {
                return Err(corrupt("record is not the entry the index points to".to_string()));
            }
            let entry = Entry::decode(&record[RECORD_HEADER_SIZE_BYTES..size - RECORD_TRAILER_SIZE_BYTES])
                .map_err(|e| corrupt(format!("undecodable entry: {e}")))?;
            if entry.index != first_index + i as u64 || entry.term != location.term {
                return Err(corrupt(format!("found entry {} where {} belongs", entry.index, first_index + i as u64)));
            }
            out.push(entry);
            position += size;
        }
        Ok(())
    }

    /// The first readable index (the one after the snapshot for an empty log).
    pub fn first_index(&self) -> u64 {
        self.shared.state.borrow().locations.first_index().unwrap_or(1)
    }

    /// The last index appended (0 for an empty log; the snapshot index after a snapshot).
    pub fn last_index(&self) -> u64 {
        self.shared.state.borrow().locations.last_index().unwrap_or(0)
    }

    /// The term of the entry at `index`, if the WAL holds it.
    pub fn term(&self, index: u64) -> Option<u64> {
        self.shared.state.borrow().locations.get(index).map(|location| location.term)
    }

    pub fn hard_state(&self) -> Option<HardState> {
        self.shared.state.borrow().hard_state
    }

    pub fn snapshot(&self) -> Option<SnapshotMarker> {
        self.shared.state.borrow().snapshot.clone()
    }

    pub fn stats(&self) -> WalStats {
        self.shared.state.borrow().stats
    }

    /// The sticky error, if the WAL has stopped.
    pub fn error(&self) -> Option<WriteError> {
        self.shared.sticky_error()
    }

    /// Bytes appended but not yet handed to a write. The WAL does not bound this itself: the
    /// Raft loop bounds it through its limit on proposals in flight, and can watch it here.
    pub fn pending_bytes(&self) -> usize {
        let state = self.shared.state.borrow();
        state.units.iter().map(|unit| unit.size_bytes()).sum()
    }

    /// Whether the next segment is zero-filled and ready (benchmarks wait for it).
    pub fn next_segment_ready(&self) -> bool {
        self.shared.state.borrow().prepared.is_some()
    }

    /// Makes everything durable, stops the driver and waits for it to finish, so that the
    /// storage (and its directory lock) is released when this returns. Needs the driver to be
    /// running (or dropped).
    pub async fn close(self) -> Result<(), WriteError> {
        let result = self.sync().await;
        self.shared.state.borrow_mut().closing = true;
        self.shared.wake_driver();
        let commit = self.shared.commit.clone();
        std::future::poll_fn(|cx| {
            let mut commit = commit.borrow_mut();
            if commit.driver_finished {
                return std::task::Poll::Ready(());
            }
            commit.close_waker = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
        result
    }
}

impl<S: Storage> Drop for Wal<S> {
    fn drop(&mut self) {
        self.shared.state.borrow_mut().closing = true;
        self.shared.wake_driver();
    }
}
