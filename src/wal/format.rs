//! The on-disk layout: constants, segment names, record encoding and the crc chain.
//! The prose specification is in the module doc of `wal/mod.rs`; this file is its code.

use crate::io::SECTOR_SIZE_BYTES;
use crate::raft::pb::ConfState;

/// First bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"ringdwal";
/// The format this code writes and reads. Bump it for any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// Magic (8) + format version (4) + reserved zero (4).
pub const PREAMBLE_SIZE_BYTES: usize = 16;

/// Payload length (4) + type (1) + reserved zero (3).
pub const RECORD_HEADER_SIZE_BYTES: usize = 8;
/// The crc32 after the payload.
pub const RECORD_TRAILER_SIZE_BYTES: usize = 4;
pub const RECORD_OVERHEAD_BYTES: usize = RECORD_HEADER_SIZE_BYTES + RECORD_TRAILER_SIZE_BYTES;
/// The largest payload a record may carry (etcd's default request limit is 1.5 MiB).
pub const RECORD_PAYLOAD_SIZE_MAX_BYTES: usize = 3 * 1024 * 1024;
/// The largest single write, tail sector included. Recovery relies on it: at a crash only one
/// write was in flight, so torn bytes lie within this distance of the first invalid record.
pub const WRITE_SIZE_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Seed payload: segment seq (8) + first index (8) + previous crc (4) + reserved zero (4).
pub const SEED_PAYLOAD_SIZE_BYTES: usize = 24;

const _: () = assert!(WRITE_SIZE_MAX_BYTES.is_multiple_of(SECTOR_SIZE_BYTES));
const _: () =
    assert!(RECORD_PAYLOAD_SIZE_MAX_BYTES + RECORD_OVERHEAD_BYTES + 2 * SECTOR_SIZE_BYTES <= WRITE_SIZE_MAX_BYTES);
const _: () = assert!(PREAMBLE_SIZE_BYTES + RECORD_OVERHEAD_BYTES + SEED_PAYLOAD_SIZE_BYTES < SECTOR_SIZE_BYTES);

/// What a record holds. Zero is never a type, so zero-filled space reads as "no record".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordType {
    /// First record of every segment: continues the crc chain from the previous segment.
    Seed = 1,
    /// A Raft `Entry` (prost).
    Entry = 2,
    /// A Raft `HardState` (prost).
    HardState = 3,
    /// A `SnapshotMarker` (prost): a snapshot of the state machine exists at this index.
    SnapshotMarker = 4,
}

impl RecordType {
    pub fn from_byte(byte: u8) -> Option<RecordType> {
        match byte {
            1 => Some(RecordType::Seed),
            2 => Some(RecordType::Entry),
            3 => Some(RecordType::HardState),
            4 => Some(RecordType::SnapshotMarker),
            _ => None,
        }
    }
}

/// Where a snapshot of the state machine was taken (etcd's `walpb.Snapshot`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotMarker {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(uint64, tag = "2")]
    pub term: u64,
    #[prost(message, optional, tag = "3")]
    pub conf_state: Option<ConfState>,
    /// The log restarts after `index`: entries above it written before this marker are not
    /// part of it. Set when Raft installs a leader's snapshot over a log that did not hold the
    /// snapshot's entry (its later entries, if any, are from a history the cluster dropped).
    /// Segment heads repeat the latest marker without it: it acts once, where it was written.
    #[prost(bool, tag = "4")]
    pub replaces_log: bool,
}

impl SnapshotMarker {
    /// This marker as a segment head repeats it (see `replaces_log`).
    pub fn repeated(&self) -> SnapshotMarker {
        SnapshotMarker { replaces_log: false, ..self.clone() }
    }
}

/// The seed record's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    pub segment_seq: u64,
    pub first_index: u64,
    pub previous_crc: u32,
}

impl Seed {
    pub fn encode(&self) -> [u8; SEED_PAYLOAD_SIZE_BYTES] {
        let mut bytes = [0u8; SEED_PAYLOAD_SIZE_BYTES];
        bytes[0..8].copy_from_slice(&self.segment_seq.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.first_index.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.previous_crc.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Seed> {
        if bytes.len() != SEED_PAYLOAD_SIZE_BYTES || bytes[20..24] != [0; 4] {
            return None;
        }
        Some(Seed {
            segment_seq: u64::from_le_bytes(bytes[0..8].try_into().unwrap()),
            first_index: u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
            previous_crc: u32::from_le_bytes(bytes[16..20].try_into().unwrap()),
        })
    }
}

/// `{seq:016x}-{first_index:016x}.wal`
pub fn segment_name(segment_seq: u64, first_index: u64) -> String {
    format!("{segment_seq:016x}-{first_index:016x}.wal")
}

/// The (seq, first index) of a segment file name, or None for any other name.
pub fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, first_index) = stem.split_once('-')?;
    let is_hex16 = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_hex16(seq) || !is_hex16(first_index) {
        return None;
    }
    Some((u64::from_str_radix(seq, 16).ok()?, u64::from_str_radix(first_index, 16).ok()?))
}

pub fn encode_preamble(out: &mut Vec<u8>) {
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// Appends a record with a zero crc to `out`; `seal_records` fills the crc in once the
/// previous record's crc is known (at write time). Returns the record's size in bytes.
pub fn encode_record(out: &mut Vec<u8>, record_type: RecordType, payload: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_SIZE_BYTES]);
    payload(out);
    let payload_len = out.len() - start - RECORD_HEADER_SIZE_BYTES;
    assert!(payload_len <= RECORD_PAYLOAD_SIZE_MAX_BYTES, "payload of {payload_len} bytes");
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4] = record_type as u8;
    out.extend_from_slice(&[0u8; RECORD_TRAILER_SIZE_BYTES]);
    out.len() - start
}

/// The size a record with this payload takes on disk.
pub fn record_size_bytes(payload_len: usize) -> usize {
    RECORD_OVERHEAD_BYTES + payload_len
}

/// crc of a record: crc32 of its header and payload, continuing from the previous record's crc.
pub fn record_crc(previous_crc: u32, header_and_payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(previous_crc);
    hasher.update(header_and_payload);
    hasher.finalize()
}

/// Fills in the crc of every record in `bytes` (a run of whole records encoded by
/// `encode_record`), chaining from `chain_crc`; returns the last record's crc. A seed record
/// first gets `previous_crc` set to the chain value, so each segment names the crc it continues.
pub fn seal_records(bytes: &mut [u8], mut chain_crc: u32) -> u32 {
    let mut position = 0;
    while position < bytes.len() {
        let header = RecordHeader::parse(&bytes[position..position + RECORD_HEADER_SIZE_BYTES])
            .expect("sealing a record this process encoded");
        let payload_start = position + RECORD_HEADER_SIZE_BYTES;
        let payload_end = payload_start + header.payload_len;
        if header.record_type == RecordType::Seed {
            bytes[payload_start + 16..payload_start + 20].copy_from_slice(&chain_crc.to_le_bytes());
        }
        chain_crc = record_crc(chain_crc, &bytes[position..payload_end]);
        bytes[payload_end..payload_end + RECORD_TRAILER_SIZE_BYTES].copy_from_slice(&chain_crc.to_le_bytes());
        position = payload_end + RECORD_TRAILER_SIZE_BYTES;
    }
    assert_eq!(position, bytes.len(), "records must end exactly at the end of the run");
    chain_crc
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub payload_len: usize,
    pub record_type: RecordType,
}

/// Why bytes at a record position are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// All eight header bytes are zero: the zero-filled space after the last record.
    Zero,
    Invalid(String),
}

impl RecordHeader {
    pub fn parse(header: &[u8]) -> Result<RecordHeader, HeaderProblem> {
        assert_eq!(header.len(), RECORD_HEADER_SIZE_BYTES);
        if header.iter().all(|b| *b == 0) {
            return Err(HeaderProblem::Zero);
        }
        let payload_len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let record_type = RecordType::from_byte(header[4])
            .ok_or_else(|| HeaderProblem::Invalid(format!("unknown record type {}", header[4])))?;
        if header[5..8] != [0; 3] {
            return Err(HeaderProblem::Invalid("nonzero reserved header bytes".to_string()));
        }
        if payload_len > RECORD_PAYLOAD_SIZE_MAX_BYTES {
            return Err(HeaderProblem::Invalid(format!("payload length {payload_len} exceeds the maximum")));
        }
        Ok(RecordHeader { payload_len, record_type })
    }
}

pub fn align_down(offset: u64) -> u64 {
    offset - offset % SECTOR_SIZE_BYTES as u64
}

pub fn align_up(offset: u64) -> u64 {
    align_down(offset + SECTOR_SIZE_BYTES as u64 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let name = segment_name(0x12, 0xabcdef);
        assert_eq!(name, "0000000000000012-0000000000abcdef.wal");
        assert_eq!(parse_segment_name(&name), Some((0x12, 0xabcdef)));
        assert_eq!(parse_segment_name("0000000000000012-0000000000ABCDEF.wal"), None);
        assert_eq!(parse_segment_name("next.wal.tmp"), None);
    }

    #[test]
    fn seal_chains_crcs() {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, RecordType::Entry, |out| out.extend_from_slice(b"abc"));
        encode_record(&mut bytes, RecordType::HardState, |out| out.extend_from_slice(b"de"));
        let last = seal_records(&mut bytes, 7);
        let first_crc = record_crc(7, &bytes[0..11]);
        assert_eq!(u32::from_le_bytes(bytes[11..15].try_into().unwrap()), first_crc);
        assert_eq!(last, record_crc(first_crc, &bytes[15..25]));
        // The same records after a different chain value never verify.
        let mut other = bytes.clone();
        assert_ne!(seal_records(&mut other, 8), last);
    }
}
