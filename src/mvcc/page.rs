//! Page layout: the byte-level format described in `mod.rs`, and nothing else.

use bytemuck::{Pod, Zeroable};

pub type PageId = u64;
pub type TxnId = u64;

pub const PAGE_SIZE: usize = 4096;
pub const SECTOR_SIZE: usize = 512;
pub const MAGIC: [u8; 8] = *b"RINGDMV1";
/// 2: the aux tree (root and entry count in the meta) and meta slots chosen by age, not txn parity.
/// 3: node slots carry key heads (`key_head`) and node headers the shared prefix length.
pub const FORMAT_VERSION: u32 = 3;

/// Pages 0 and 1 hold the two meta pages; tree pages start at 2, so page id 0 can mean "none".
pub const META_PAGES: u64 = 2;

pub const KIND_BRANCH: u8 = 1;
pub const KIND_LEAF: u8 = 2;
pub const KIND_OVERFLOW: u8 = 3;
pub const KIND_FREELIST: u8 = 4;

/// Every page but the meta pages starts with this header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PageHeader {
    /// crc32 of the page's bytes [4, PAGE_SIZE).
    pub checksum: u32,
    pub kind: u8,
    pub reserved: u8,
    /// Cells in a branch or leaf, entries in a freelist page, 0 in an overflow page.
    pub count: u16,
    /// The checkpoint that wrote the page.
    pub txn_id: u64,
    /// Overflow and freelist pages: the next page of the chain, 0 at its end. Branch and leaf
    /// pages: the length of the prefix that the user part (the key without its suffix) of every
    /// key in the node shares, branch key 0 (-inf) excepted; slot heads are read after it.
    pub next: u64,
}

pub const HEADER_SIZE: usize = core::mem::size_of::<PageHeader>();
/// Bytes of a node page available for slots and cells.
pub const USABLE_SIZE: usize = PAGE_SIZE - HEADER_SIZE;
/// A slot is a u32: the cell's offset in the low SLOT_OFFSET_BITS, its key's head above them.
pub const SLOT_SIZE: usize = 4;
pub const SLOT_OFFSET_BITS: u32 = 12;
pub const SLOT_OFFSET_MASK: u32 = (1 << SLOT_OFFSET_BITS) - 1;
/// Where the node header keeps the shared prefix length (the `next` field).
pub const NODE_PREFIX_LEN_OFFSET: usize = 16;
/// key_len u16, flags u8, value_len u32.
pub const LEAF_CELL_HEADER: usize = 7;
/// child u64, key_len u16.
pub const BRANCH_CELL_HEADER: usize = 10;
pub const LEAF_FLAG_OVERFLOW: u8 = 1;
/// A node that overflows splits in two only if no cell is larger than half a node.
pub const CELL_SIZE_MAX: usize = USABLE_SIZE / 2;
/// A leaf value whose cell would be larger than this goes to an overflow chain.
pub const INLINE_CELL_MAX: usize = 1024;
pub const OVERFLOW_DATA_SIZE: usize = PAGE_SIZE - HEADER_SIZE;
/// (page id u64, freed-at txn u64) pairs.
pub const FREELIST_ENTRY_SIZE: usize = 16;
pub const FREELIST_ENTRIES_MAX: usize = (PAGE_SIZE - HEADER_SIZE) / FREELIST_ENTRY_SIZE;
/// `Meta::freelist_head` of a visible commit: its free list is in the writer's memory only.
/// Such a meta never reaches the disk (a durable checkpoint always writes a free list).
pub const FREELIST_UNWRITTEN: PageId = u64::MAX;
/// Tree keys end with a 16-byte revision suffix (see `cmp_keys`).
pub const KEY_SUFFIX_SIZE: usize = 16;
/// The longest user key the store accepts: its kv cell (slot, header, key, suffix, overflow
/// reference) and its branch cell must fit in half a node.
pub const KEY_SIZE_MAX_BYTES: usize = 2000;
/// The longest aux table key: with its table byte in front it is as long as a user key.
pub const AUX_KEY_SIZE_MAX_BYTES: usize = KEY_SIZE_MAX_BYTES - 1;

const _: () = assert!(PAGE_SIZE.is_multiple_of(SECTOR_SIZE));
const _: () = assert!(HEADER_SIZE == 24);
const _: () = assert!(core::mem::size_of::<Meta>() == 136);
const _: () = assert!(core::mem::offset_of!(Meta, checksum) == META_CHECKSUM_OFFSET);
const _: () = assert!(core::mem::size_of::<Meta>() <= SECTOR_SIZE, "a meta write is one sector");
const _: () = assert!(SLOT_SIZE + LEAF_CELL_HEADER + KEY_SIZE_MAX_BYTES + KEY_SUFFIX_SIZE + 8 <= CELL_SIZE_MAX);
const _: () = assert!(SLOT_SIZE + BRANCH_CELL_HEADER + KEY_SIZE_MAX_BYTES + KEY_SUFFIX_SIZE <= CELL_SIZE_MAX);
const _: () = assert!(INLINE_CELL_MAX <= CELL_SIZE_MAX);
const _: () = assert!(PAGE_SIZE <= 1 << SLOT_OFFSET_BITS, "slot offsets fit their bits");
const _: () = assert!(core::mem::offset_of!(PageHeader, next) == NODE_PREFIX_LEN_OFFSET);
const _: () = assert!(FREELIST_ENTRIES_MAX <= u16::MAX as usize);

/// The meta page: bytes [0, 136) of pages 0 and 1, the rest zero. A durable checkpoint writes
/// the slot holding the older durable meta (or a damaged one); the valid meta with the highest
/// txn id wins at open, whichever slot holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Meta {
    pub magic: [u8; 8],
    pub format_version: u32,
    pub page_size: u32,
    pub txn_id: u64,
    pub kv_root: u64,
    pub rev_root: u64,
    pub freelist_head: u64,
    /// Pages [0, page_count) are the file; the file may be longer (an interrupted checkpoint).
    pub page_count: u64,
    /// Entries in the free list (pages neither in a tree nor holding the free list).
    pub free_page_count: u64,
    pub current_revision: i64,
    pub compact_revision: i64,
    pub consistent_index: u64,
    pub kv_entry_count: u64,
    /// Where the physical part of the last compaction resumes in the rev tree (main, sub);
    /// main 0 = nothing pending.
    pub compact_scan_main: i64,
    pub compact_scan_sub: i64,
    /// Root of the aux tree (lease, member and auth tables), 0 = empty.
    pub aux_root: u64,
    pub aux_entry_count: u64,
    /// crc32 of the bytes before this field.
    pub checksum: u32,
    pub reserved: u32,
}

pub const META_CHECKSUM_OFFSET: usize = 128;

impl Meta {
    pub fn compute_checksum(&self) -> u32 {
        crc32fast::hash(&bytemuck::bytes_of(self)[..META_CHECKSUM_OFFSET])
    }

    pub fn sealed(mut self) -> Meta {
        self.checksum = self.compute_checksum();
        self
    }

    pub fn encode_page(&self) -> Vec<u8> {
        assert_eq!(self.checksum, self.compute_checksum(), "meta sealed before it is written");
        let mut page = vec![0u8; PAGE_SIZE];
        page[..core::mem::size_of::<Meta>()].copy_from_slice(bytemuck::bytes_of(self));
        page
    }

    pub fn decode(page: &[u8]) -> Meta {
        assert!(page.len() >= core::mem::size_of::<Meta>());
        bytemuck::pod_read_unaligned(&page[..core::mem::size_of::<Meta>()])
    }
}

pub fn header(page: &[u8]) -> PageHeader {
    debug_assert_eq!(page.len(), PAGE_SIZE);
    bytemuck::pod_read_unaligned(&page[..HEADER_SIZE])
}

pub fn page_checksum(page: &[u8]) -> u32 {
    crc32fast::hash(&page[4..PAGE_SIZE])
}

/// Seals a page buffer whose header fields (except the checksum) are written.
pub fn seal_page(page: &mut [u8]) {
    assert_eq!(page.len(), PAGE_SIZE);
    let checksum = page_checksum(page);
    page[0..4].copy_from_slice(&checksum.to_le_bytes());
    debug_assert!(page_is_intact(page));
}

pub fn page_is_intact(page: &[u8]) -> bool {
    page.len() == PAGE_SIZE && header(page).checksum == page_checksum(page)
}

/// Fills `page` as one free list page: `entries` (page id, freed-at txn; at most
/// FREELIST_ENTRIES_MAX), written by `txn_id`, followed by page `next` (0 at the end); sealed.
pub fn write_free_list_page(page: &mut [u8], entries: &[(PageId, TxnId)], txn_id: TxnId, next: PageId) {
    assert!(entries.len() <= FREELIST_ENTRIES_MAX);
    write_header(page, KIND_FREELIST, entries.len() as u16, txn_id, next);
    page[HEADER_SIZE + entries.len() * FREELIST_ENTRY_SIZE..].fill(0);
    for (slot, (id, freed_at)) in entries.iter().enumerate() {
        let at = HEADER_SIZE + slot * FREELIST_ENTRY_SIZE;
        page[at..at + 8].copy_from_slice(&id.to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&freed_at.to_le_bytes());
    }
    seal_page(page);
}

pub fn write_header(page: &mut [u8], kind: u8, count: u16, txn_id: TxnId, next: PageId) {
    let value = PageHeader { checksum: 0, kind, reserved: 0, count, txn_id, next };
    page[..HEADER_SIZE].copy_from_slice(bytemuck::bytes_of(&value));
}

pub fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

pub fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

pub fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// A key's head: the 20 bits of its user part that follow the node's shared prefix of
/// `prefix_len` bytes (bytes past the end read as zero). Heads are monotone in key order among
/// keys that share that prefix: a lower head means a lower key, equal heads decide nothing. A
/// search compares heads in the slot array and reads a cell only among equal heads, so on a
/// cold page it touches the slots' cache lines and the one cell it lands on.
pub fn key_head(user_part: &[u8], prefix_len: usize) -> u32 {
    let byte = |at: usize| user_part.get(prefix_len + at).copied().unwrap_or(0) as u32;
    ((byte(0) << 16) | (byte(1) << 8) | byte(2)) >> 4
}

/// Slot `index` of a node page: (cell offset, key head).
pub fn slot(page: &[u8], index: usize) -> (usize, u32) {
    decode_slot(read_u32(page, HEADER_SIZE + index * SLOT_SIZE))
}

/// The first `count` slots of a node page, as words for `decode_slot`.
pub fn slot_words(page: &[u8], count: usize) -> &[[u8; SLOT_SIZE]] {
    bytemuck::cast_slice(&page[HEADER_SIZE..HEADER_SIZE + count * SLOT_SIZE])
}

/// A slot's word as (cell offset, key head).
pub fn decode_slot(word: u32) -> (usize, u32) {
    ((word & SLOT_OFFSET_MASK) as usize, word >> SLOT_OFFSET_BITS)
}

pub fn encode_slot(offset: usize, head: u32) -> [u8; SLOT_SIZE] {
    debug_assert!(offset <= SLOT_OFFSET_MASK as usize && head < 1 << (32 - SLOT_OFFSET_BITS));
    ((head << SLOT_OFFSET_BITS) | offset as u32).to_le_bytes()
}

/// The shared prefix length of a node page's keys (see `PageHeader::next`).
pub fn node_prefix_len(page: &[u8]) -> usize {
    read_u64(page, NODE_PREFIX_LEN_OFFSET) as usize
}

/// The user part of a tree key: everything before the 16-byte suffix.
pub fn user_part(key: &[u8]) -> &[u8] {
    &key[..key.len() - KEY_SUFFIX_SIZE]
}

/// How many leading bytes `a` and `b` share.
pub fn shared_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Orders tree keys: every key is `prefix ++ suffix` with a 16-byte suffix; keys compare by
/// prefix, then by suffix. In the kv tree the prefix is the user key and the suffix the
/// inverted revision, so one user key's revisions are adjacent, newest first; in the rev tree
/// the prefix is empty and the suffix the revision.
pub fn cmp_keys(a: &[u8], b: &[u8]) -> core::cmp::Ordering {
    debug_assert!(a.len() >= KEY_SUFFIX_SIZE && b.len() >= KEY_SUFFIX_SIZE);
    let (a_prefix, a_suffix) = a.split_at(a.len() - KEY_SUFFIX_SIZE);
    let (b_prefix, b_suffix) = b.split_at(b.len() - KEY_SUFFIX_SIZE);
    a_prefix.cmp(b_prefix).then_with(|| a_suffix.cmp(b_suffix))
}
