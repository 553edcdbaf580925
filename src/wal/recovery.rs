//! Recovery: scan every segment, verify the crc chain, rebuild the log, and repair the torn
//! tail of the last segment. `check` runs the same scan without repairing and fails where
//! recovery would have had to change something.
//!
//! What a scan may find, and what recovery does about it:
//!
//! | finding in a segment                                   | not the last segment   | last segment               |
//! |--------------------------------------------------------|------------------------|----------------------------|
//! | zero header, or no room for another header             | end; chain must match  | end of the log             |
//! | bad type/length, crc mismatch, record past file end    | `Corrupt` (file, off.) | torn tail: zero it, end    |
//! | crc valid but payload undecodable, seed not first      | `Corrupt`              | `Corrupt`                  |
//! | bad magic or seed, seq/first index differ from name    | `Corrupt`              | `Corrupt`                  |
//! | format version not ours                                | `UnknownVersion`       | `UnknownVersion`           |
//! | garbage after the end (out-of-order sector persistence)| not examined           | zero it                    |
//!
//! Why a torn record can only be in the last segment: a segment is left only after its last
//! write was synced, and rotation syncs the next segment's head and its directory entry before
//! any record goes there.

use super::entry_log::EntryLog;
use super::error::OpenError;
use super::format::*;
use crate::io::{DirectFile, Storage, SECTOR_SIZE_BYTES};
use crate::raft::pb::{Entry, HardState};
use prost::Message;
use std::io;

/// Recovery reads segments in chunks of this size.
const READ_CHUNK_BYTES: usize = 1024 * 1024;
/// Files with this suffix are segments being prepared; recovery deletes them.
pub const TEMPORARY_SUFFIX: &str = ".tmp";

/// Where an entry's record lives, and the append ticket that makes it durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryLocation {
    pub segment_seq: u64,
    pub offset: u64,
    pub record_size_bytes: u32,
    pub term: u64,
    pub ticket: u64,
}

pub struct RecoveredSegment<F> {
    pub name: String,
    pub seq: u64,
    pub file: F,
    pub size_bytes: u64,
    pub entry_index_max: Option<u64>,
}

/// Everything recovery learned, for the writer to continue from.
pub struct RecoveredLog<F> {
    /// In sequence order; empty for a new WAL.
    pub segments: Vec<RecoveredSegment<F>>,
    /// crc of the last valid record of the last segment.
    pub chain_crc: u32,
    /// Offset just after the last valid record of the last segment.
    pub end_offset: u64,
    pub locations: EntryLog<EntryLocation>,
    /// The entries after the snapshot marker, in index order.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMarker>,
    /// The (file, offset) of a torn tail that recovery zeroed.
    pub repaired_tail: Option<(String, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Repair,
    CheckOnly,
}

fn io_error(file: &str, operation: &'static str, source: io::Error) -> OpenError {
    OpenError::Io { file: file.to_string(), operation, source }
}

fn corrupt(file: &str, offset: u64, reason: impl Into<String>) -> OpenError {
    OpenError::Corrupt { file: file.to_string(), offset, reason: reason.into() }
}

/// Reads a segment front to back through a window of `READ_CHUNK_BYTES`.
struct SegmentReader<'a, F: DirectFile> {
    file: &'a F,
    size_bytes: u64,
    window: Vec<u8>,
    window_start: u64,
}

impl<'a, F: DirectFile> SegmentReader<'a, F> {
    /// The bytes `[offset, offset + len)`, or None if they run past the end of the file.
    async fn read(&mut self, offset: u64, len: usize) -> io::Result<Option<&[u8]>> {
        let end = offset + len as u64;
        if end > self.size_bytes {
            return Ok(None);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if offset < self.window_start || end > window_end {
            let want = (len.max(READ_CHUNK_BYTES) as u64).min(self.size_bytes - offset) as usize;
            let data = self.file.read_at(offset, want).await?;
            if data.len() < len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "segment shorter than its size"));
            }
            self.window = data.to_vec();
            self.window_start = offset;
        }
        let start = (offset - self.window_start) as usize;
        Ok(Some(&self.window[start..start + len]))
    }
}

/// How a segment's record stream ended.
#[derive(Debug, PartialEq, Eq)]
enum ScanEnd {
    Clean,
    Invalid(String),
}

struct SegmentScan {
    seed: Seed,
    end_offset: u64,
    end: ScanEnd,
    last_crc: u32,
}

/// The log being rebuilt from records, in the order they were written.
#[derive(Default)]
struct Replay {
    log: EntryLog<(EntryLocation, Entry)>,
    hard_state: Option<HardState>,
    snapshot: Option<SnapshotMarker>,
    /// The highest index a snapshot marker must reach to cover a gap, and where the gap was.
    gap: Option<(u64, String, u64)>,
    segment_entry_index_max: Option<u64>,
}

struct RecordAt<'a> {
    file_name: &'a str,
    segment_seq: u64,
    offset: u64,
    record_type: RecordType,
    payload: &'a [u8],
}

impl Replay {
    fn apply(&mut self, record: RecordAt<'_>) -> Result<(), OpenError> {
        let undecodable = |error: prost::DecodeError| {
            corrupt(record.file_name, record.offset, format!("crc is valid but the payload is not: {error}"))
        };
        match record.record_type {
            RecordType::Seed => {
                return Err(corrupt(record.file_name, record.offset, "seed record after the segment head"))
            }
            RecordType::Entry => {
                let entry = Entry::decode(record.payload).map_err(undecodable)?;
                if entry.index == 0 {
                    return Err(corrupt(record.file_name, record.offset, "entry with index 0"));
                }
                if self.log.is_gap(entry.index) {
                    let required = entry.index - 1;
                    if self.gap.as_ref().is_none_or(|(previous, _, _)| *previous < required) {
                        self.gap = Some((required, record.file_name.to_string(), record.offset));
                    }
                }
                let location = EntryLocation {
                    segment_seq: record.segment_seq,
                    offset: record.offset,
                    record_size_bytes: record_size_bytes(record.payload.len()) as u32,
                    term: entry.term,
                    ticket: 0,
                };
                self.segment_entry_index_max = self.segment_entry_index_max.max(Some(entry.index));
                self.log.push(entry.index, (location, entry));
            }
            RecordType::HardState => self.hard_state = Some(HardState::decode(record.payload).map_err(undecodable)?),
            RecordType::SnapshotMarker => {
                let marker = SnapshotMarker::decode(record.payload).map_err(undecodable)?;
                self.log.apply_snapshot(marker.index, marker.replaces_log);
                self.snapshot = Some(marker.repeated());
            }
        }
        Ok(())
    }

    /// Entries missing from the log must all lie at or below the last snapshot.
    fn check_gaps(&self) -> Result<(), OpenError> {
        let Some((required, file, offset)) = &self.gap else { return Ok(()) };
        let snapshot_index = self.snapshot.as_ref().map_or(0, |marker| marker.index);
        if snapshot_index < *required {
            return Err(corrupt(
                file,
                *offset,
                format!("entries before index {} are missing and no snapshot covers them", required + 1),
            ));
        }
        Ok(())
    }
}

async fn check_preamble<F: DirectFile>(reader: &mut SegmentReader<'_, F>, file_name: &str) -> Result<(), OpenError> {
    let preamble = reader
        .read(0, PREAMBLE_SIZE_BYTES)
        .await
        .map_err(|e| io_error(file_name, "reading", e))?
        .ok_or_else(|| corrupt(file_name, 0, "file is shorter than a segment preamble"))?;
    if preamble[0..8] != SEGMENT_MAGIC {
        return Err(corrupt(file_name, 0, "not a ringd WAL segment (bad magic)"));
    }
    let version = u32::from_le_bytes(preamble[8..12].try_into().unwrap());
    if version != FORMAT_VERSION {
        return Err(OpenError::UnknownVersion { file: file_name.to_string(), version });
    }
    Ok(())
}

/// Reads and verifies the seed record; returns it with its crc.
async fn read_seed<F: DirectFile>(
    reader: &mut SegmentReader<'_, F>,
    file_name: &str,
) -> Result<(Seed, u32), OpenError> {
    let offset = PREAMBLE_SIZE_BYTES as u64;
    let size = record_size_bytes(SEED_PAYLOAD_SIZE_BYTES);
    let bad_seed = |reason: &str| corrupt(file_name, offset, format!("bad seed record: {reason}"));
    let record = reader
        .read(offset, size)
        .await
        .map_err(|e| io_error(file_name, "reading", e))?
        .ok_or_else(|| bad_seed("file too short"))?;
    let header = RecordHeader::parse(&record[..RECORD_HEADER_SIZE_BYTES]).map_err(|_| bad_seed("bad header"))?;
    if header.record_type != RecordType::Seed || header.payload_len != SEED_PAYLOAD_SIZE_BYTES {
        return Err(bad_seed("wrong type or length"));
    }
    let payload_end = RECORD_HEADER_SIZE_BYTES + SEED_PAYLOAD_SIZE_BYTES;
    let seed = Seed::decode(&record[RECORD_HEADER_SIZE_BYTES..payload_end]).ok_or_else(|| bad_seed("bad payload"))?;
    let crc = record_crc(seed.previous_crc, &record[..payload_end]);
    if u32::from_le_bytes(record[payload_end..].try_into().unwrap()) != crc {
        return Err(bad_seed("crc mismatch"));
    }
    Ok((seed, crc))
}

async fn scan_segment<F: DirectFile>(
    reader: &mut SegmentReader<'_, F>,
    file_name: &str,
    replay: &mut Replay,
) -> Result<SegmentScan, OpenError> {
    check_preamble(reader, file_name).await?;
    let (seed, mut crc) = read_seed(reader, file_name).await?;
    let mut offset = (PREAMBLE_SIZE_BYTES + record_size_bytes(SEED_PAYLOAD_SIZE_BYTES)) as u64;
    let end = loop {
        let header_bytes = match reader.read(offset, RECORD_HEADER_SIZE_BYTES).await {
            Err(e) => return Err(io_error(file_name, "reading", e)),
            Ok(None) => break ScanEnd::Clean,
            Ok(Some(bytes)) => bytes,
        };
        let header = match RecordHeader::parse(header_bytes) {
            Err(HeaderProblem::Zero) => break ScanEnd::Clean,
            Err(HeaderProblem::Invalid(reason)) => break ScanEnd::Invalid(reason),
            Ok(header) => header,
        };
        let size = record_size_bytes(header.payload_len);
        let record = match reader.read(offset, size).await {
            Err(e) => return Err(io_error(file_name, "reading", e)),
            Ok(None) => break ScanEnd::Invalid("record runs past the end of the segment".to_string()),
            Ok(Some(record)) => record,
        };
        let payload_end = RECORD_HEADER_SIZE_BYTES + header.payload_len;
        let computed_crc = record_crc(crc, &record[..payload_end]);
        if u32::from_le_bytes(record[payload_end..].try_into().unwrap()) != computed_crc {
            break ScanEnd::Invalid("crc mismatch".to_string());
        }
        let payload = &record[RECORD_HEADER_SIZE_BYTES..payload_end];
        let segment_seq = seed.segment_seq;
        replay.apply(RecordAt { file_name, segment_seq, offset, record_type: header.record_type, payload })?;
        crc = computed_crc;
        offset += size as u64;
    };
    Ok(SegmentScan { seed, end_offset: offset, end, last_crc: crc })
}

/// Lists the directory: segments sorted by sequence (checked consecutive) and temporary files.
async fn list_segments<S: Storage>(storage: &S) -> Result<(Vec<(u64, u64, String)>, Vec<String>), OpenError> {
    let names = storage.list().await.map_err(|e| io_error(&storage.describe(""), "listing", e))?;
    let mut segments = Vec::new();
    let mut temporaries = Vec::new();
    for name in names {
        if let Some((seq, first_index)) = parse_segment_name(&name) {
            segments.push((seq, first_index, name));
        } else if name.ends_with(TEMPORARY_SUFFIX) {
            temporaries.push(name);
        }
    }
    segments.sort();
    for pair in segments.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(OpenError::MissingSegment { expected_seq: pair[0].0 + 1, found: storage.describe(&pair[1].2) });
        }
    }
    Ok((segments, temporaries))
}

/// Zeroes whatever follows the last valid record within the reach of one write. Returns
/// whether there was anything to zero.
async fn repair_tail<F: DirectFile>(
    file: &F,
    file_name: &str,
    size_bytes: u64,
    end_offset: u64,
    mode: Mode,
) -> Result<bool, OpenError> {
    let start = align_down(end_offset);
    let len = (WRITE_SIZE_MAX_BYTES as u64).min(size_bytes - start) as usize;
    if len == 0 {
        return Ok(false);
    }
    let data = file.read_at(start, len).await.map_err(|e| io_error(file_name, "reading", e))?;
    let keep = (end_offset - start) as usize;
    let Some(last_nonzero) = data[keep..].iter().rposition(|byte| *byte != 0) else { return Ok(false) };
    if mode == Mode::CheckOnly {
        return Err(corrupt(file_name, end_offset, "garbage after the last record (torn tail not repaired)"));
    }
    let write_len = align_up((keep + last_nonzero + 1) as u64) as usize;
    let mut buffer = file.alloc_write_buffer(write_len);
    let bytes = buffer.as_mut();
    bytes[..keep].copy_from_slice(&data[..keep]);
    bytes[keep..].fill(0);
    file.write_at(buffer, start).await.map_err(|e| io_error(file_name, "zeroing the torn tail of", e))?;
    file.sync_data().await.map_err(|e| io_error(file_name, "syncing", e))?;
    Ok(true)
}

/// Scans the WAL in `storage` and rebuilds its log; in `Mode::Repair` also deletes temporary
/// files and zeroes a torn tail.
pub async fn recover<S: Storage>(storage: &S, mode: Mode) -> Result<RecoveredLog<S::File>, OpenError> {
    let (listed, temporaries) = list_segments(storage).await?;
    if mode == Mode::Repair && !temporaries.is_empty() {
        for name in &temporaries {
            storage.remove(name).await.map_err(|e| io_error(&storage.describe(name), "removing", e))?;
        }
        storage.sync().await.map_err(|e| io_error(&storage.describe(""), "syncing directory", e))?;
    }
    let mut replay = Replay::default();
    let mut segments: Vec<RecoveredSegment<S::File>> = Vec::new();
    let mut chain: Option<(u32, u64)> = None;
    let mut repaired_tail = None;
    let segment_count = listed.len();
    for (position, (seq, first_index, name)) in listed.into_iter().enumerate() {
        let described = storage.describe(&name);
        let file = storage.open_file(&name).await.map_err(|e| io_error(&described, "opening", e))?;
        let size_bytes = file.size_bytes().await.map_err(|e| io_error(&described, "sizing", e))?;
        let mut reader = SegmentReader { file: &file, size_bytes, window: Vec::new(), window_start: 0 };
        replay.segment_entry_index_max = None;
        let scan = scan_segment(&mut reader, &described, &mut replay).await?;
        check_seed(&scan.seed, seq, first_index, &described)?;
        if let Some((previous_crc, previous_end)) = chain {
            if scan.seed.previous_crc != previous_crc {
                let previous = &segments.last().expect("a previous segment").name;
                return Err(corrupt(
                    &storage.describe(previous),
                    previous_end,
                    format!("records end here with crc {previous_crc:#010x} but {name} continues from {:#010x}: records were lost", scan.seed.previous_crc),
                ));
            }
        }
        let is_last = position + 1 == segment_count;
        match (&scan.end, is_last) {
            (ScanEnd::Invalid(reason), false) => return Err(corrupt(&described, scan.end_offset, reason.clone())),
            (_, true) => {
                if repair_tail(&file, &described, size_bytes, scan.end_offset, mode).await? {
                    repaired_tail = Some((described.clone(), scan.end_offset));
                }
            }
            (ScanEnd::Clean, false) => {}
        }
        chain = Some((scan.last_crc, scan.end_offset));
        let entry_index_max = replay.segment_entry_index_max;
        segments.push(RecoveredSegment { name, seq, file, size_bytes, entry_index_max });
    }
    replay.check_gaps()?;
    Ok(finish(replay, segments, chain, repaired_tail))
}

fn check_seed(seed: &Seed, seq: u64, first_index: u64, file_name: &str) -> Result<(), OpenError> {
    if seed.segment_seq != seq || seed.first_index != first_index {
        return Err(corrupt(
            file_name,
            PREAMBLE_SIZE_BYTES as u64,
            format!(
                "seed says segment {:016x} first index {}, the file name differs",
                seed.segment_seq, seed.first_index
            ),
        ));
    }
    Ok(())
}

fn finish<F>(
    replay: Replay,
    segments: Vec<RecoveredSegment<F>>,
    chain: Option<(u32, u64)>,
    repaired_tail: Option<(String, u64)>,
) -> RecoveredLog<F> {
    let snapshot_index = replay.snapshot.as_ref().map_or(0, |marker| marker.index);
    let next_index = replay.log.next_index();
    let mut locations = EntryLog::default();
    let mut entries = Vec::new();
    for (location, entry) in replay.log.into_items() {
        if entry.index > snapshot_index {
            locations.push(entry.index, location);
            entries.push(entry);
        }
    }
    if let Some(next_index) = next_index {
        // Keep the log's position even when every entry is at or below the snapshot.
        locations.apply_snapshot(next_index - 1, false);
    }
    let (chain_crc, end_offset) = chain.unwrap_or((0, 0));
    for pair in entries.windows(2) {
        assert_eq!(pair[0].index + 1, pair[1].index, "replayed entries are contiguous");
    }
    RecoveredLog {
        segments,
        chain_crc,
        end_offset,
        locations,
        entries,
        hard_state: replay.hard_state,
        snapshot: replay.snapshot,
        repaired_tail,
    }
}

const _: () = assert!(READ_CHUNK_BYTES.is_multiple_of(SECTOR_SIZE_BYTES));
