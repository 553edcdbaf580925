//! The writer's state and the decisions made at append time: where each record lands
//! (segment and offset, rotating when a record does not fit), how pending records group into
//! units, and how the flusher turns units into one aligned write with the crc chain sealed.

use super::entry_log::EntryLog;
use super::error::WriteError;
use super::format::*;
use super::recovery::EntryLocation;
use super::writer::WalStats;
use crate::io::{DirectFile, SECTOR_SIZE_BYTES};
use crate::raft::pb::{Entry, HardState};
use prost::Message;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::task::Waker;

/// Pending records are grouped into units no larger than this, so that any unit plus the
/// partial tail sector fits in one write.
pub(super) const UNIT_SIZE_MAX_BYTES: usize = WRITE_SIZE_MAX_BYTES - SECTOR_SIZE_BYTES;
/// How many emptied unit buffers to keep for reuse.
const SPARE_UNIT_BUFFERS_MAX: usize = 8;
const SPARE_UNIT_BUFFER_SIZE_MAX_BYTES: usize = 1024 * 1024;
/// Room kept in every segment for the head's hard state and snapshot marker to grow.
const HEAD_SLACK_BYTES: usize = 1024;

const _: () = assert!(UNIT_SIZE_MAX_BYTES >= RECORD_PAYLOAD_SIZE_MAX_BYTES + RECORD_OVERHEAD_BYTES);

pub(super) struct Segment<F> {
    /// None until rotation installs the file.
    pub(super) name: Option<String>,
    pub(super) file: Option<Rc<F>>,
    pub(super) size_bytes: u64,
    pub(super) entry_index_max: Option<u64>,
}

/// Records waiting for the flusher, in order.
pub(super) enum Unit {
    Records { seq: u64, offset: u64, bytes: Vec<u8>, complete_ticket: u64 },
    Rotate { seq: u64, first_index: u64, head: Vec<u8>, complete_ticket: u64 },
}

impl Unit {
    pub(super) fn size_bytes(&self) -> usize {
        match self {
            Unit::Records { bytes, .. } => bytes.len(),
            Unit::Rotate { head, .. } => head.len(),
        }
    }
}

/// The partly written last sector of the segment being written, kept to be rewritten.
pub(super) struct Tail {
    pub(super) seq: u64,
    pub(super) sector_start: u64,
    pub(super) bytes: Vec<u8>,
}

/// Everything the writer knows. The append side (`append_*`, `locations`, `hard_state`,
/// `snapshot`, `units`) runs ahead of the disk; the write side (`tail`, `chain_crc`,
/// `prepared`) describes what the flusher has handed to the disk.
pub(super) struct State<F> {
    /// Size of segments created from now on.
    pub(super) segment_size_bytes: u64,
    /// The segment and offset the next record will take.
    pub(super) append_seq: u64,
    pub(super) append_offset: u64,
    /// The ticket of the latest append.
    pub(super) ticket_last: u64,
    /// Where each entry of the log lives, including entries not yet written.
    pub(super) locations: EntryLog<EntryLocation>,
    /// The latest hard state and snapshot marker appended: every new segment head repeats them.
    pub(super) hard_state: Option<HardState>,
    pub(super) snapshot: Option<SnapshotMarker>,
    /// Records and rotations waiting for the flusher, in order.
    pub(super) units: VecDeque<Unit>,
    /// Emptied unit buffers, reused so that appends do not allocate.
    pub(super) spare_unit_buffers: Vec<Vec<u8>>,
    pub(super) segments: BTreeMap<u64, Segment<F>>,
    /// None only before segment 0 is installed.
    pub(super) tail: Option<Tail>,
    /// crc of the last record handed to a write.
    pub(super) chain_crc: u32,
    pub(super) prepared: Option<(String, F)>,
    pub(super) prepared_count: u64,
    /// The flusher waits for `prepared` to rotate; the preparer must not stop yet.
    pub(super) rotation_waiting: bool,
    pub(super) closing: bool,
    pub(super) flusher_waker: Option<Waker>,
    pub(super) preparer_waker: Option<Waker>,
    pub(super) stats: WalStats,
}

pub(super) fn encode_head(
    seq: u64,
    first_index: u64,
    hard_state: Option<&HardState>,
    snapshot: Option<&SnapshotMarker>,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(SECTOR_SIZE_BYTES);
    encode_preamble(&mut head);
    let seed = Seed { segment_seq: seq, first_index, previous_crc: 0 };
    encode_record(&mut head, RecordType::Seed, |out| out.extend_from_slice(&seed.encode()));
    if let Some(hard_state) = hard_state {
        encode_record(&mut head, RecordType::HardState, |out| hard_state.encode(out).expect("Vec grows"));
    }
    if let Some(snapshot) = snapshot {
        encode_record(&mut head, RecordType::SnapshotMarker, |out| snapshot.encode(out).expect("Vec grows"));
    }
    head
}

impl<F> State<F> {
    /// The size `encode_head` would produce now, without encoding.
    pub(super) fn head_size_bytes(&self) -> usize {
        let hard_state = self.hard_state.map_or(0, |state| record_size_bytes(state.encoded_len()));
        let snapshot = self.snapshot.as_ref().map_or(0, |marker| record_size_bytes(marker.encoded_len()));
        PREAMBLE_SIZE_BYTES + record_size_bytes(SEED_PAYLOAD_SIZE_BYTES) + hard_state + snapshot
    }

    pub(super) fn record_size_max_bytes(&self) -> usize {
        let fits_segment = (self.segment_size_bytes as usize).saturating_sub(self.head_size_bytes() + HEAD_SLACK_BYTES);
        fits_segment.min(RECORD_PAYLOAD_SIZE_MAX_BYTES + RECORD_OVERHEAD_BYTES)
    }

    pub(super) fn check_record_size(payload_len: usize, size_max_bytes: usize) -> Result<(), WriteError> {
        let size_bytes = record_size_bytes(payload_len);
        if size_bytes > size_max_bytes {
            return Err(WriteError::RecordTooLarge { size_bytes, size_max_bytes });
        }
        Ok(())
    }

    pub(super) fn validate_entries(&self, entries: &[Entry]) -> Result<(), WriteError> {
        let Some(first) = entries.first() else { return Ok(()) };
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 {
                return Err(WriteError::InvalidRequest(format!(
                    "entries must have consecutive indexes, got {} after {}",
                    pair[1].index, pair[0].index
                )));
            }
        }
        if first.index == 0 || self.locations.is_gap(first.index) {
            return Err(WriteError::InvalidRequest(format!(
                "entry {} does not follow the last index {:?}",
                first.index,
                self.locations.last_index()
            )));
        }
        self.check_truncation(first.index)?;
        let size_max_bytes = self.record_size_max_bytes();
        entries.iter().try_for_each(|entry| Self::check_record_size(entry.encoded_len(), size_max_bytes))
    }

    /// Overwriting from `index` must not reach entries covered by a snapshot or released.
    pub(super) fn check_truncation(&self, index: u64) -> Result<(), WriteError> {
        let snapshot_index = self.snapshot.as_ref().map_or(0, |marker| marker.index);
        let first_index = self.locations.first_index().unwrap_or(0);
        if index <= snapshot_index || (index < first_index && !self.locations.is_empty()) {
            return Err(WriteError::InvalidRequest(format!(
                "cannot rewrite the log from {index}: entries up to {snapshot_index} are in a snapshot \
                 and the log starts at {first_index}"
            )));
        }
        Ok(())
    }

    /// Queues the head of segment `seq`; the flusher installs it when it gets there.
    pub(super) fn push_rotation(&mut self, seq: u64) {
        let first_index = self.locations.next_index().unwrap_or(1);
        let head = encode_head(seq, first_index, self.hard_state.as_ref(), self.snapshot.as_ref());
        assert_eq!(head.len(), self.head_size_bytes());
        let complete_ticket = self.ticket_last.saturating_sub(1);
        self.append_seq = seq;
        self.append_offset = head.len() as u64;
        self.units.push_back(Unit::Rotate { seq, first_index, head, complete_ticket });
        let segment = Segment { name: None, file: None, size_bytes: self.segment_size_bytes, entry_index_max: None };
        self.segments.insert(seq, segment);
    }

    /// Decides where a record of `size` bytes goes, rotating first if it does not fit, and
    /// returns the unit's buffer to encode it into.
    pub(super) fn place(&mut self, size: usize) -> (u64, u64, &mut Vec<u8>) {
        let current_size_bytes = self.segments[&self.append_seq].size_bytes;
        if self.append_offset + size as u64 > current_size_bytes {
            self.push_rotation(self.append_seq + 1);
        }
        let (seq, offset) = (self.append_seq, self.append_offset);
        assert!(offset + size as u64 <= self.segments[&seq].size_bytes, "a record never straddles segments");
        self.append_offset += size as u64;
        let fits_last = matches!(self.units.back(),
            Some(Unit::Records { seq: unit_seq, bytes, .. }) if *unit_seq == seq && bytes.len() + size <= UNIT_SIZE_MAX_BYTES);
        if !fits_last {
            let complete_ticket = self.ticket_last.saturating_sub(1);
            let bytes = self.spare_unit_buffers.pop().unwrap_or_default();
            assert!(bytes.is_empty());
            self.units.push_back(Unit::Records { seq, offset, bytes, complete_ticket });
        }
        match self.units.back_mut() {
            Some(Unit::Records { bytes, .. }) => (seq, offset, bytes),
            _ => unreachable!("a records unit was just ensured"),
        }
    }

    pub(super) fn add_entry(&mut self, entry: &Entry, ticket: u64) {
        let payload_len = entry.encoded_len();
        let (seq, offset, bytes) = self.place(record_size_bytes(payload_len));
        let size = encode_record(bytes, RecordType::Entry, |out| entry.encode(out).expect("Vec grows"));
        assert_eq!(size, record_size_bytes(payload_len));
        let location =
            EntryLocation { segment_seq: seq, offset, record_size_bytes: size as u32, term: entry.term, ticket };
        self.locations.push(entry.index, location);
        let segment = self.segments.get_mut(&seq).expect("placed in a known segment");
        segment.entry_index_max = segment.entry_index_max.max(Some(entry.index));
        self.stats.records += 1;
    }

    pub(super) fn add_hard_state(&mut self, hard_state: HardState) {
        let payload_len = hard_state.encoded_len();
        let (_, _, bytes) = self.place(record_size_bytes(payload_len));
        encode_record(bytes, RecordType::HardState, |out| hard_state.encode(out).expect("Vec grows"));
        self.hard_state = Some(hard_state);
        self.stats.records += 1;
    }

    pub(super) fn add_snapshot(&mut self, marker: SnapshotMarker) {
        let payload_len = marker.encoded_len();
        let (_, _, bytes) = self.place(record_size_bytes(payload_len));
        encode_record(bytes, RecordType::SnapshotMarker, |out| marker.encode(out).expect("Vec grows"));
        self.locations.apply_snapshot(marker.index, marker.replaces_log);
        self.snapshot = Some(marker.repeated());
        self.stats.records += 1;
    }

    pub(super) fn begin_append(&mut self) -> u64 {
        self.ticket_last += 1;
        self.stats.appends += 1;
        self.ticket_last
    }

    pub(super) fn finish_append(&mut self, ticket: u64) {
        match self.units.back_mut() {
            Some(Unit::Records { complete_ticket, .. }) => *complete_ticket = ticket,
            _ => unreachable!("an append always ends with records"),
        }
        if let Some(waker) = self.flusher_waker.take() {
            waker.wake();
        }
    }
}

/// One write the flusher is about to make.
pub(super) struct WriteBatch<F: DirectFile> {
    pub(super) file: Rc<F>,
    pub(super) file_name: String,
    pub(super) buffer: F::WriteBuffer,
    pub(super) offset: u64,
    pub(super) complete_ticket: u64,
}

pub(super) struct Rotation {
    pub(super) seq: u64,
    pub(super) first_index: u64,
    pub(super) head: Vec<u8>,
    pub(super) complete_ticket: u64,
}

pub(super) enum Work<F: DirectFile> {
    Write(WriteBatch<F>),
    Rotate(Rotation),
}

impl<F: DirectFile> State<F> {
    /// Takes as many queued records of the current segment as fit in one write, builds the
    /// write buffer (tail sector + records + zero padding) and seals the crc chain.
    pub(super) fn take_batch(&mut self) -> WriteBatch<F> {
        let tail = self.tail.take().expect("a segment is installed before records reach it");
        let tail_len = tail.bytes.len();
        let mut data_len = tail_len;
        let mut unit_count = 0;
        for unit in &self.units {
            match unit {
                Unit::Records { seq, offset, bytes, .. } if *seq == tail.seq => {
                    if align_up((data_len + bytes.len()) as u64) as usize > WRITE_SIZE_MAX_BYTES {
                        break;
                    }
                    assert_eq!(*offset, tail.sector_start + data_len as u64, "units are contiguous");
                    data_len += bytes.len();
                    unit_count += 1;
                }
                _ => break,
            }
        }
        assert!(unit_count > 0, "a unit always fits one write");
        let segment = &self.segments[&tail.seq];
        let file = segment.file.clone().expect("installed segment has a file");
        let file_name = segment.name.clone().expect("installed segment has a name");
        let mut buffer = file.alloc_write_buffer(align_up(data_len as u64) as usize);
        let bytes = buffer.as_mut();
        bytes[..tail_len].copy_from_slice(&tail.bytes);
        let mut position = tail_len;
        let mut complete_ticket = 0;
        for _ in 0..unit_count {
            let Some(Unit::Records { bytes: mut unit_bytes, complete_ticket: ticket, .. }) = self.units.pop_front()
            else {
                unreachable!("counted above")
            };
            bytes[position..position + unit_bytes.len()].copy_from_slice(&unit_bytes);
            position += unit_bytes.len();
            complete_ticket = complete_ticket.max(ticket);
            if self.spare_unit_buffers.len() < SPARE_UNIT_BUFFERS_MAX
                && unit_bytes.capacity() <= SPARE_UNIT_BUFFER_SIZE_MAX_BYTES
            {
                unit_bytes.clear();
                self.spare_unit_buffers.push(unit_bytes);
            }
        }
        bytes[data_len..].fill(0);
        self.chain_crc = seal_records(&mut bytes[tail_len..data_len], self.chain_crc);
        let kept_start = align_down(data_len as u64) as usize;
        self.tail = Some(Tail {
            seq: tail.seq,
            sector_start: tail.sector_start + kept_start as u64,
            bytes: bytes[kept_start..data_len].to_vec(),
        });
        self.stats.writes += 1;
        self.stats.bytes_written += bytes.len() as u64;
        WriteBatch { file, file_name, buffer, offset: tail.sector_start, complete_ticket }
    }

    pub(super) fn next_work(&mut self) -> Option<Work<F>> {
        match self.units.front()? {
            Unit::Rotate { .. } => match self.units.pop_front() {
                Some(Unit::Rotate { seq, first_index, head, complete_ticket }) => {
                    Some(Work::Rotate(Rotation { seq, first_index, head, complete_ticket }))
                }
                _ => unreachable!("front was a rotation"),
            },
            Unit::Records { .. } => Some(Work::Write(self.take_batch())),
        }
    }
}
