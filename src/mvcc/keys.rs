//! Encodings of tree keys and values (see the format in `mod.rs`).

use super::page::KEY_SUFFIX_SIZE;
use super::Revision;

pub const RECORD_HEADER_SIZE: usize = 25;
pub const RECORD_FLAG_TOMBSTONE: u8 = 1;
pub const REV_FLAG_TOMBSTONE: u8 = 1;

/// kv tree key: user key ++ !main ++ !sub (big-endian), so newer revisions sort first.
pub fn kv_key(user_key: &[u8], main: Revision, sub: i64) -> Vec<u8> {
    assert!(main >= 0 && sub >= 0);
    let mut key = Vec::with_capacity(user_key.len() + KEY_SUFFIX_SIZE);
    key.extend_from_slice(user_key);
    key.extend_from_slice(&(u64::MAX - main as u64).to_be_bytes());
    key.extend_from_slice(&(u64::MAX - sub as u64).to_be_bytes());
    key
}

/// The smallest kv key of `user_key` with main revision <= `main`.
pub fn kv_seek_key(user_key: &[u8], main: Revision) -> Vec<u8> {
    kv_key(user_key, main, i64::MAX)
}

/// A kv key that sorts after every revision of `user_key` and before any longer user key.
pub fn kv_key_after(user_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(user_key.len() + KEY_SUFFIX_SIZE);
    key.extend_from_slice(user_key);
    key.extend_from_slice(&[0xFF; KEY_SUFFIX_SIZE]);
    key
}

/// (user key, main, sub) of a kv tree key.
pub fn split_kv_key(key: &[u8]) -> (&[u8], Revision, i64) {
    assert!(key.len() >= KEY_SUFFIX_SIZE);
    let (user_key, suffix) = key.split_at(key.len() - KEY_SUFFIX_SIZE);
    let main = u64::MAX - u64::from_be_bytes(suffix[..8].try_into().unwrap());
    let sub = u64::MAX - u64::from_be_bytes(suffix[8..].try_into().unwrap());
    (user_key, main as i64, sub as i64)
}

/// rev tree key: main ++ sub (big-endian).
pub fn rev_key(main: Revision, sub: i64) -> Vec<u8> {
    assert!(main >= 0 && sub >= 0);
    let mut key = Vec::with_capacity(KEY_SUFFIX_SIZE);
    key.extend_from_slice(&(main as u64).to_be_bytes());
    key.extend_from_slice(&(sub as u64).to_be_bytes());
    key
}

pub fn split_rev_key(key: &[u8]) -> (Revision, i64) {
    assert_eq!(key.len(), KEY_SUFFIX_SIZE);
    let main = u64::from_be_bytes(key[..8].try_into().unwrap());
    let sub = u64::from_be_bytes(key[8..].try_into().unwrap());
    (main as i64, sub as i64)
}

/// aux tree key: table ++ key ++ 16 zero bytes. The zero suffix stands where the other trees
/// hold a revision, so `cmp_keys` orders aux keys by (table, key) and the tree code is shared.
pub fn aux_key(table: u8, key: &[u8]) -> Vec<u8> {
    let mut tree_key = Vec::with_capacity(1 + key.len() + KEY_SUFFIX_SIZE);
    tree_key.push(table);
    tree_key.extend_from_slice(key);
    tree_key.resize(1 + key.len() + KEY_SUFFIX_SIZE, 0);
    tree_key
}

/// (table, key) of an aux tree key.
pub fn split_aux_key(tree_key: &[u8]) -> (u8, &[u8]) {
    assert!(tree_key.len() > KEY_SUFFIX_SIZE, "an aux key holds a table byte and a zero suffix");
    let (prefix, suffix) = tree_key.split_at(tree_key.len() - KEY_SUFFIX_SIZE);
    debug_assert!(suffix.iter().all(|&byte| byte == 0));
    (prefix[0], &prefix[1..])
}

/// The fixed part of a kv record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub tombstone: bool,
    pub create_revision: Revision,
    pub version: i64,
    pub lease: i64,
}

/// kv tree value: flags u8, create_revision i64, version i64, lease i64 (little-endian), value.
pub fn encode_record(header: RecordHeader, value: &[u8]) -> Vec<u8> {
    assert!(!header.tombstone || (value.is_empty() && header.version == 0));
    let mut record = Vec::with_capacity(RECORD_HEADER_SIZE + value.len());
    record.push(if header.tombstone { RECORD_FLAG_TOMBSTONE } else { 0 });
    record.extend_from_slice(&header.create_revision.to_le_bytes());
    record.extend_from_slice(&header.version.to_le_bytes());
    record.extend_from_slice(&header.lease.to_le_bytes());
    record.extend_from_slice(value);
    record
}

pub fn decode_record_header(bytes: &[u8]) -> RecordHeader {
    assert!(bytes.len() >= RECORD_HEADER_SIZE, "kv record shorter than its header");
    RecordHeader {
        tombstone: bytes[0] & RECORD_FLAG_TOMBSTONE != 0,
        create_revision: i64::from_le_bytes(bytes[1..9].try_into().unwrap()),
        version: i64::from_le_bytes(bytes[9..17].try_into().unwrap()),
        lease: i64::from_le_bytes(bytes[17..25].try_into().unwrap()),
    }
}

/// rev tree value: flags u8, user key.
pub fn encode_rev_value(user_key: &[u8], tombstone: bool) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + user_key.len());
    value.push(if tombstone { REV_FLAG_TOMBSTONE } else { 0 });
    value.extend_from_slice(user_key);
    value
}
