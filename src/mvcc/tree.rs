//! The copy-on-write B+tree. Committed nodes are read in place from the mapping. A node the
//! writer changes is copied into memory (`Child::Dirty`), its page freed, and edited there in
//! the on-disk node format (a slotted page, cells packed from the end), so readers parse dirty
//! and committed nodes alike; `spill` writes every dirty node to a fresh page at the
//! checkpoint, patching in child page ids and overflow chains.

use core::cmp::Ordering;
use core::marker::PhantomData;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use super::page::*;

/// Leaf cell flag, in memory only: the u64 after the key is the id of a pending big value of
/// the leaf (written to an overflow chain at the next spill).
const LEAF_FLAG_PENDING: u8 = 2;

static NEXT_BIG_VALUE_ID: AtomicU64 = AtomicU64::new(1);

/// A leaf's value: inline bytes, bytes that will go to an overflow chain at the next spill,
/// or a committed overflow chain.
#[derive(Debug)]
pub enum Value {
    Inline(Vec<u8>),
    Big(Vec<u8>),
    Overflow { first: PageId, len: u32 },
}

impl Value {
    pub fn new(key_len: usize, bytes: Vec<u8>) -> Value {
        assert!(bytes.len() <= u32::MAX as usize);
        if SLOT_SIZE + LEAF_CELL_HEADER + key_len + bytes.len() <= INLINE_CELL_MAX {
            Value::Inline(bytes)
        } else {
            Value::Big(bytes)
        }
    }

    fn cell_bytes(&self) -> usize {
        match self {
            Value::Inline(bytes) => bytes.len(),
            Value::Big(_) | Value::Overflow { .. } => 8,
        }
    }
}

pub fn leaf_cell_size(key_len: usize, value: &Value) -> usize {
    SLOT_SIZE + LEAF_CELL_HEADER + key_len + value.cell_bytes()
}

/// The offset of cell `index` of a node page (from its slot).
fn cell_offset(page: &[u8], index: usize) -> usize {
    slot(page, index).0
}

/// (offset, length) of cell `index` of a node page.
fn cell_extent(page: &[u8], index: usize) -> (usize, usize) {
    let offset = cell_offset(page, index);
    let length = if page[4] == KIND_LEAF {
        let key_len = read_u16(page, offset) as usize;
        let flags = page[offset + 2];
        let value_len =
            if flags & (LEAF_FLAG_OVERFLOW | LEAF_FLAG_PENDING) != 0 { 8 } else { read_u32(page, offset + 3) as usize };
        LEAF_CELL_HEADER + key_len + value_len
    } else {
        BRANCH_CELL_HEADER + read_u16(page, offset + 8) as usize
    };
    (offset, length)
}

/// The key of a node cell (`cell` starts at the cell's header and may run past its end).
fn cell_key(kind: u8, cell: &[u8]) -> &[u8] {
    if kind == KIND_LEAF {
        &cell[LEAF_CELL_HEADER..LEAF_CELL_HEADER + read_u16(cell, 0) as usize]
    } else {
        &cell[BRANCH_CELL_HEADER..BRANCH_CELL_HEADER + read_u16(cell, 8) as usize]
    }
}

/// The first slot of a node whose key is a real key: a branch's key 0 is -inf.
fn first_keyed(kind: u8) -> usize {
    usize::from(kind == KIND_BRANCH)
}

/// A node page edited in memory: header, slots growing up, cells packed down from the end.
/// `garbage` counts the bytes of removed cells above `cells_start`.
pub struct SlottedPage {
    bytes: Box<[u8]>,
    cells_start: usize,
    garbage: usize,
}

thread_local! {
    /// Buffers of pages already written, for this thread's next nodes (`page_buffer`).
    static PAGE_BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// Buffers kept per thread: a batch of 1000 puts makes about 3000 dirty pages.
const PAGE_BUFFERS_MAX: usize = 4096;

/// A page-sized buffer with unspecified bytes: a recycled one if this thread has one. A node's
/// buffer is made per copy on write and freed after its commit's I/O (or when a split or merge
/// replaces the node); through the allocator, mimalloc's generic path for 4 KiB blocks freed
/// in bulk, that cost 760 more instructions per put (callgrind, puts in batches of 1000). So a
/// dropped node gives its buffer back (`Drop for SlottedPage`), and the store hands back the
/// buffers of written pages (`recycle_page_buffers`).
fn page_buffer() -> Box<[u8]> {
    PAGE_BUFFERS.with_borrow_mut(|buffers| buffers.pop()).unwrap_or_else(|| vec![0u8; PAGE_SIZE].into_boxed_slice())
}

/// Keeps page buffers for this thread's next nodes, up to `PAGE_BUFFERS_MAX`; frees the rest.
pub fn recycle_page_buffers(buffers: impl IntoIterator<Item = Box<[u8]>>) {
    // A buffer dropped while the thread ends is freed, not kept.
    let _ = PAGE_BUFFERS.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        for buffer in buffers {
            if pool.len() >= PAGE_BUFFERS_MAX {
                break;
            }
            assert_eq!(buffer.len(), PAGE_SIZE);
            pool.push(buffer);
        }
    });
}

impl Drop for SlottedPage {
    fn drop(&mut self) {
        // `spill` takes the bytes of a page it writes, leaving an empty buffer.
        if self.bytes.len() == PAGE_SIZE {
            recycle_page_buffers([core::mem::take(&mut self.bytes)]);
        }
    }
}

impl SlottedPage {
    fn empty(kind: u8) -> SlottedPage {
        let mut bytes = page_buffer();
        bytes.fill(0);
        bytes[4] = kind;
        SlottedPage { bytes, cells_start: PAGE_SIZE, garbage: 0 }
    }

    /// A committed page, copied for editing. `spill` writes nodes without garbage (it
    /// compacts a node that has some), so the cells start at the lowest slot offset and
    /// nothing above it is garbage: the slots alone tell, without reading every cell's
    /// header (that scan was about 1,800 instructions per put).
    ///
    /// A page written before that rule may hold garbage that this does not count: `used()`
    /// then overstates the node by that much, which is safe (the node splits or is passed
    /// over for a merge a little early) and ends when the node is next compacted or split.
    fn from_page(page: &[u8]) -> SlottedPage {
        let mut bytes = page_buffer();
        bytes.copy_from_slice(page);
        let count = read_u16(&bytes, 6) as usize;
        let cells_start = slot_words(&bytes, count)
            .iter()
            .map(|word| decode_slot(u32::from_le_bytes(*word)).0)
            .min()
            .unwrap_or(PAGE_SIZE);
        SlottedPage { bytes, cells_start, garbage: 0 }
    }

    fn from_cells<'c>(kind: u8, cells: impl Iterator<Item = &'c [u8]>) -> SlottedPage {
        let mut page = SlottedPage::empty(kind);
        for cell in cells {
            assert!(page.insert_cell(page.count(), cell), "cells chosen to fit");
        }
        page
    }

    fn count(&self) -> usize {
        read_u16(&self.bytes, 6) as usize
    }

    fn set_count(&mut self, count: usize) {
        self.bytes[6..8].copy_from_slice(&(count as u16).to_le_bytes());
    }

    /// Encoded bytes of slots and live cells (what a node may hold: USABLE_SIZE).
    fn used(&self) -> usize {
        self.count() * SLOT_SIZE + (PAGE_SIZE - self.cells_start - self.garbage)
    }

    fn cell(&self, index: usize) -> &[u8] {
        let (offset, length) = cell_extent(&self.bytes, index);
        &self.bytes[offset..offset + length]
    }

    fn cell_offset(&self, index: usize) -> usize {
        cell_offset(&self.bytes, index)
    }

    fn kind(&self) -> u8 {
        self.bytes[4]
    }

    fn prefix_len(&self) -> usize {
        node_prefix_len(&self.bytes)
    }

    fn set_slot(&mut self, index: usize, offset: usize, head: u32) {
        let at = HEADER_SIZE + index * SLOT_SIZE;
        self.bytes[at..at + SLOT_SIZE].copy_from_slice(&encode_slot(offset, head));
    }

    fn user_part_of(&self, index: usize) -> &[u8] {
        user_part(NodeRef::Page(&self.bytes).key(index))
    }

    /// Sets the shared prefix length and recomputes every keyed slot's head for it.
    fn set_prefix_len(&mut self, prefix_len: usize) {
        if prefix_len == self.prefix_len() {
            return;
        }
        self.bytes[NODE_PREFIX_LEN_OFFSET..NODE_PREFIX_LEN_OFFSET + 8]
            .copy_from_slice(&(prefix_len as u64).to_le_bytes());
        for index in first_keyed(self.kind())..self.count() {
            let head = key_head(self.user_part_of(index), prefix_len);
            self.set_slot(index, self.cell_offset(index), head);
        }
    }

    /// After removals the keys may share more than the recorded prefix (still correct, but
    /// heads read fewer distinguishing bits): record the real shared length. Keys are sorted, so
    /// the first and the last keyed cell share what all of them share.
    fn tighten_prefix(&mut self) {
        let (first, count) = (first_keyed(self.kind()), self.count());
        if count > first {
            let shared = shared_prefix_len(self.user_part_of(first), self.user_part_of(count - 1));
            debug_assert!(shared >= self.prefix_len(), "the recorded prefix is shared by every key");
            self.set_prefix_len(shared);
        }
    }

    /// Inserts `cell` as cell `index`; false if the node would hold more than USABLE_SIZE.
    fn insert_cell(&mut self, index: usize, cell: &[u8]) -> bool {
        let count = self.count();
        assert!(index <= count);
        if self.used() + SLOT_SIZE + cell.len() > USABLE_SIZE {
            return false;
        }
        let first = first_keyed(self.kind());
        let head = if index < first {
            0
        } else {
            let user = user_part(cell_key(self.kind(), cell));
            let prefix_len = if count <= first {
                user.len()
            } else {
                self.prefix_len().min(shared_prefix_len(user, self.user_part_of(first)))
            };
            self.set_prefix_len(prefix_len);
            key_head(user, prefix_len)
        };
        if self.cells_start < HEADER_SIZE + (count + 1) * SLOT_SIZE + cell.len() {
            self.compact();
        }
        self.cells_start -= cell.len();
        self.bytes[self.cells_start..self.cells_start + cell.len()].copy_from_slice(cell);
        let at = HEADER_SIZE + index * SLOT_SIZE;
        self.bytes.copy_within(at..HEADER_SIZE + count * SLOT_SIZE, at + SLOT_SIZE);
        self.set_slot(index, self.cells_start, head);
        self.set_count(count + 1);
        debug_assert!(self.used() <= USABLE_SIZE);
        true
    }

    fn remove_cell(&mut self, index: usize) {
        let count = self.count();
        assert!(index < count);
        let (offset, length) = cell_extent(&self.bytes, index);
        if offset == self.cells_start {
            self.cells_start += length;
        } else {
            self.garbage += length;
        }
        let slot = HEADER_SIZE + index * SLOT_SIZE;
        self.bytes.copy_within(slot + SLOT_SIZE..HEADER_SIZE + count * SLOT_SIZE, slot);
        self.set_count(count - 1);
        if count == 1 {
            (self.cells_start, self.garbage) = (PAGE_SIZE, 0);
        }
    }

    /// Rewrites the live cells packed at the end of the page (drops the garbage).
    fn compact(&mut self) {
        let mut old = [0u8; PAGE_SIZE];
        old.copy_from_slice(&self.bytes);
        let count = self.count();
        let mut end = PAGE_SIZE;
        for index in 0..count {
            let (offset, length) = cell_extent(&old, index);
            end -= length;
            self.bytes[end..end + length].copy_from_slice(&old[offset..offset + length]);
            self.set_slot(index, end, slot(&old, index).1);
        }
        (self.cells_start, self.garbage) = (end, 0);
    }
}

pub struct Leaf {
    page: SlottedPage,
    /// Values bound for overflow chains, by the id their cells hold.
    big: Vec<(u64, Vec<u8>)>,
}

/// Cell i's key is the smallest key of `children[i]`; cell 0's key is empty (-inf). The child
/// ids in the cells are written at spill; `children` is authoritative in memory.
pub struct Branch {
    page: SlottedPage,
    children: Vec<Child>,
}

pub enum Node {
    Leaf(Leaf),
    Branch(Branch),
}

/// A tree root or a branch's child. `Page(0)` is the empty tree (only ever a root).
pub enum Child {
    Page(PageId),
    Dirty(Box<Node>),
}

impl core::fmt::Debug for Child {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Child::Page(id) => write!(formatter, "Page({id})"),
            Child::Dirty(node) => write!(formatter, "Dirty({} cells)", node.len()),
        }
    }
}

impl Node {
    fn page(&self) -> &SlottedPage {
        match self {
            Node::Leaf(leaf) => &leaf.page,
            Node::Branch(branch) => &branch.page,
        }
    }

    fn len(&self) -> usize {
        self.page().count()
    }

    fn size(&self) -> usize {
        self.page().used()
    }
}

const fn empty_leaf_page() -> [u8; PAGE_SIZE] {
    let mut page = [0u8; PAGE_SIZE];
    page[4] = KIND_LEAF;
    page
}

static EMPTY_LEAF_PAGE: [u8; PAGE_SIZE] = empty_leaf_page();

/// Read access to the committed pages [0, page_count) of the mapping.
#[derive(Clone, Copy)]
pub struct Pages<'a> {
    base: *const u8,
    page_count: u64,
    _mapping: PhantomData<&'a [u8]>,
}

impl<'a> Pages<'a> {
    /// # Safety
    /// `base` must point to a mapping at least `page_count * PAGE_SIZE` bytes long whose pages
    /// below `page_count` are committed (never written again) for the lifetime `'a`.
    pub unsafe fn new(base: *const u8, page_count: u64) -> Pages<'a> {
        Pages { base, page_count, _mapping: PhantomData }
    }

    pub fn page_count(&self) -> u64 {
        self.page_count
    }

    pub fn page(&self, id: PageId) -> &'a [u8] {
        assert!(id >= META_PAGES && id < self.page_count, "page {id} outside [2, {})", self.page_count);
        // SAFETY: in bounds of the committed mapping by the assertion and `new`'s contract.
        unsafe { core::slice::from_raw_parts(self.base.add(id as usize * PAGE_SIZE), PAGE_SIZE) }
    }

    /// Reads `len` bytes of the overflow chain starting at `first` (or fewer, `limit`).
    pub fn read_overflow(&self, first: PageId, len: usize, limit: usize) -> Vec<u8> {
        let wanted = len.min(limit);
        let mut out = Vec::with_capacity(wanted);
        let mut page_id = first;
        while out.len() < wanted {
            let page = self.page(page_id);
            let take = (wanted - out.len()).min(OVERFLOW_DATA_SIZE);
            out.extend_from_slice(&page[HEADER_SIZE..HEADER_SIZE + take]);
            page_id = header(page).next;
        }
        assert_eq!(out.len(), wanted);
        out
    }

    /// The pages of an overflow chain holding `len` bytes.
    pub fn overflow_pages(&self, first: PageId, len: usize) -> Vec<PageId> {
        let count = len.div_ceil(OVERFLOW_DATA_SIZE).max(1);
        let mut pages = Vec::with_capacity(count);
        let mut page_id = first;
        for _ in 0..count {
            pages.push(page_id);
            page_id = header(self.page(page_id)).next;
        }
        assert_eq!(page_id, 0, "overflow chain at {first} is longer than its value");
        pages
    }
}

#[derive(Clone, Copy, Debug)]
pub enum ValueRef<'a> {
    Inline(&'a [u8]),
    Overflow { first: PageId, len: u32 },
}

/// A node to read: a committed page, a dirty node, or the empty tree.
#[derive(Clone, Copy)]
pub enum NodeRef<'a> {
    Page(&'a [u8]),
    Mem(&'a Node),
}

impl<'a> NodeRef<'a> {
    pub fn of(child: &'a Child, pages: Pages<'a>) -> NodeRef<'a> {
        match child {
            Child::Page(0) => NodeRef::Page(&EMPTY_LEAF_PAGE),
            Child::Page(id) => NodeRef::Page(pages.page(*id)),
            Child::Dirty(node) => NodeRef::Mem(node),
        }
    }

    pub fn root(root: PageId, pages: Pages<'a>) -> NodeRef<'a> {
        if root == 0 {
            NodeRef::Page(&EMPTY_LEAF_PAGE)
        } else {
            NodeRef::Page(pages.page(root))
        }
    }

    /// The node's bytes: committed and dirty nodes share the page format.
    fn bytes(&self) -> &'a [u8] {
        match self {
            NodeRef::Page(page) => page,
            NodeRef::Mem(node) => &node.page().bytes,
        }
    }

    pub fn is_leaf(&self) -> bool {
        self.bytes()[4] == KIND_LEAF
    }

    pub fn len(&self) -> usize {
        read_u16(self.bytes(), 6) as usize
    }

    pub fn key(&self, index: usize) -> &'a [u8] {
        let page = self.bytes();
        cell_key(page[4], &page[cell_offset(page, index)..])
    }

    pub fn value(&self, index: usize) -> ValueRef<'a> {
        let page = self.bytes();
        assert_eq!(page[4], KIND_LEAF, "value() of a branch");
        let offset = cell_offset(page, index);
        let key_len = read_u16(page, offset) as usize;
        let flags = page[offset + 2];
        let value_len = read_u32(page, offset + 3);
        let at = offset + LEAF_CELL_HEADER + key_len;
        if flags & LEAF_FLAG_PENDING != 0 {
            let NodeRef::Mem(Node::Leaf(leaf)) = self else { panic!("pending value in a committed page") };
            let id = read_u64(page, at);
            let (_, bytes) = leaf.big.iter().find(|(big_id, _)| *big_id == id).expect("pending value is held");
            ValueRef::Inline(bytes)
        } else if flags & LEAF_FLAG_OVERFLOW != 0 {
            ValueRef::Overflow { first: read_u64(page, at), len: value_len }
        } else {
            ValueRef::Inline(&page[at..at + value_len as usize])
        }
    }

    pub fn child(&self, index: usize, pages: Pages<'a>) -> NodeRef<'a> {
        match self {
            NodeRef::Page(page) => {
                let offset = cell_offset(page, index);
                let child = pages.page(read_u64(page, offset));
                // The header and the first slots, at once: the search reads the header and
                // then the slots, two waits for memory in a row otherwise.
                prefetch_lines(&child[..CHILD_PREFETCH_BYTES]);
                NodeRef::Page(child)
            }
            NodeRef::Mem(Node::Branch(branch)) => NodeRef::of(&branch.children[index], pages),
            NodeRef::Mem(Node::Leaf(_)) => panic!("child() of a leaf"),
        }
    }

    pub fn child_page(&self, index: usize) -> PageId {
        match self {
            NodeRef::Page(page) => read_u64(page, cell_offset(page, index)),
            NodeRef::Mem(_) => panic!("child_page() of a dirty node"),
        }
    }

    /// Index of the child whose key range holds `key`.
    fn child_index(&self, key: &[u8]) -> usize {
        self.partition(1, key, Ordering::Greater) - 1
    }

    /// Index of the first key >= `key` in a leaf.
    fn lower_bound(&self, key: &[u8]) -> usize {
        self.partition(0, key, Ordering::Less)
    }

    /// The first index in [first, len) whose key is greater than `key` (`below` Greater: the
    /// keys before it are <= `key`) or not less (`below` Less: the keys before it are < `key`),
    /// len if none. Binary search on the slots' heads first; cells are read only among keys
    /// whose head equals `key`'s, and one more to check that `key` shares the node's prefix.
    fn partition(&self, first: usize, key: &[u8], below: Ordering) -> usize {
        let page = self.bytes();
        let count = self.len();
        if count <= first {
            return first;
        }
        let goes_before = |index: usize| {
            let order = cmp_keys(self.key(index), key);
            order == Ordering::Less || (below == Ordering::Greater && order == Ordering::Equal)
        };
        let slots = slot_words(page, count);
        prefetch_lines(bytemuck::cast_slice(slots));
        let head_at = |index: usize| decode_slot(u32::from_le_bytes(slots[index])).1;
        let prefix_len = node_prefix_len(page);
        let user = user_part(key);
        let head = key_head(user, prefix_len);
        let (mut low, mut high) = (first, count);
        while low < high {
            let mid = (low + high) / 2;
            if head_at(mid) < head {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        // The keys whose head equals `key`'s: usually none (a branch's separators rarely share
        // a head with the key sought), so one slot tells before a search for their end.
        let mut tie_end = low;
        if low < count && head_at(low) == head {
            let mut upper = low + 1;
            tie_end = count;
            while upper < tie_end {
                let mid = (upper + tie_end) / 2;
                if head_at(mid) <= head {
                    upper = mid + 1;
                } else {
                    tie_end = mid;
                }
            }
        }
        while low < tie_end {
            let mid = (low + tie_end) / 2;
            if goes_before(mid) {
                low = mid + 1;
            } else {
                tie_end = mid;
            }
        }
        if prefix_len == 0 {
            return low;
        }
        // Heads order only keys with the node's prefix. A key without it is below or above
        // every key of the node; check it on the cell the caller reads next.
        let probe = match below {
            Ordering::Greater if low > first => low - 1,
            _ if low < count => low,
            _ => low - 1,
        };
        let probe_key = self.key(probe);
        if user.len() >= prefix_len && user[..prefix_len] == probe_key[..prefix_len] {
            return low;
        }
        if cmp_keys(key, probe_key) == Ordering::Less {
            first
        } else {
            count
        }
    }
}

/// How much of a committed child page `child` asks for before its header is read.
const CHILD_PREFETCH_BYTES: usize = 256;

/// Asks for the cache lines of `bytes` at once, so that a binary search over them waits for
/// memory about once instead of once per probe.
fn prefetch_lines(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut at = 0;
        while at < bytes.len() {
            // SAFETY: a prefetch is a hint that never faults; the address is inside `bytes`.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(bytes.as_ptr().add(at).cast())
            }
            at += 64;
        }
    }
}

/// An in-order cursor over a tree (committed, dirty, or mixed).
pub struct Cursor<'a> {
    pages: Pages<'a>,
    stack: Vec<(NodeRef<'a>, usize)>,
}

/// The leaf that holds the first key >= `key` if any key of that leaf is, and the index of
/// that key in it (the leaf's length if the key is in a later leaf). No cursor, no allocation:
/// for point reads.
///
/// A seek key that falls between two leaves (below the first key of the next one, above every
/// key of this one) is answered from the next leaf when both have the same parent: the
/// first key of that leaf is the first key >= `key`.
pub fn seek_leaf<'a>(pages: Pages<'a>, root: NodeRef<'a>, key: &[u8]) -> (NodeRef<'a>, usize) {
    let mut parent = None;
    let mut node = root;
    let mut depth = 0;
    while !node.is_leaf() {
        let index = node.child_index(key);
        parent = Some((node, index));
        node = node.child(index, pages);
        depth += 1;
        assert!(depth < 64, "tree deeper than 64 levels");
    }
    let index = node.lower_bound(key);
    if index == node.len() {
        if let Some((branch, child)) = parent.filter(|(branch, child)| child + 1 < branch.len()) {
            let next = branch.child(child + 1, pages);
            if next.len() > 0 {
                debug_assert!(cmp_keys(next.key(0), key) != Ordering::Less);
                prefetch_cell(next, 0);
                return (next, 0);
            }
        }
    }
    prefetch_cell(node, index);
    (node, index)
}

/// The caller reads cell `index` next: ask for all its lines now, not one miss at a time.
fn prefetch_cell(node: NodeRef, index: usize) {
    if index < node.len() {
        let (offset, length) = cell_extent(node.bytes(), index);
        prefetch_lines(&node.bytes()[offset..offset + length]);
    }
}

impl<'a> Cursor<'a> {
    /// Positions at the first key >= `key`.
    pub fn seek(pages: Pages<'a>, root: NodeRef<'a>, key: &[u8]) -> Cursor<'a> {
        let mut stack = Vec::with_capacity(8);
        let mut node = root;
        while !node.is_leaf() {
            let index = node.child_index(key);
            stack.push((node, index));
            node = node.child(index, pages);
            assert!(stack.len() < 64, "tree deeper than 64 levels");
        }
        let index = node.lower_bound(key);
        prefetch_cell(node, index);
        stack.push((node, index));
        let mut cursor = Cursor { pages, stack };
        cursor.settle();
        cursor
    }

    pub fn current(&self) -> Option<(&'a [u8], ValueRef<'a>)> {
        let (node, index) = *self.stack.last()?;
        debug_assert!(node.is_leaf() && index < node.len());
        Some((node.key(index), node.value(index)))
    }

    pub fn advance(&mut self) {
        if let Some(top) = self.stack.last_mut() {
            top.1 += 1;
            self.settle();
        }
    }

    /// Moves to the next existing entry if the top leaf is exhausted.
    fn settle(&mut self) {
        while let Some(&(node, index)) = self.stack.last() {
            if index < node.len() {
                if node.is_leaf() {
                    return;
                }
                self.stack.push((node.child(index, self.pages), 0));
                continue;
            }
            self.stack.pop();
            match self.stack.last_mut() {
                Some(parent) => parent.1 += 1,
                None => return,
            }
        }
    }
}

/// What a tree edit needs: the committed pages and where to put the pages it frees.
pub struct EditContext<'p, 'f> {
    pub pages: Pages<'p>,
    pub freed: &'f mut Vec<PageId>,
}

/// Copies a committed page into an editable node.
fn decode(page: &[u8]) -> Node {
    let view = NodeRef::Page(page);
    if view.is_leaf() {
        Node::Leaf(Leaf { page: SlottedPage::from_page(page), big: Vec::new() })
    } else {
        assert_eq!(header(page).kind, KIND_BRANCH);
        // The child ids are read from the copy: the copy streams the mapped page in order,
        // while reading the cells in key order from the mapping waits on one line at a time.
        let copy = SlottedPage::from_page(page);
        let copied = NodeRef::Page(&copy.bytes);
        let children = (0..copied.len()).map(|index| Child::Page(copied.child_page(index))).collect();
        Node::Branch(Branch { page: copy, children })
    }
}

/// Makes `child` dirty (copy on write), freeing its committed page.
fn make_dirty<'c>(child: &'c mut Child, context: &mut EditContext) -> &'c mut Node {
    if let Child::Page(id) = *child {
        let node = if id == 0 {
            Node::Leaf(Leaf { page: SlottedPage::empty(KIND_LEAF), big: Vec::new() })
        } else {
            context.freed.push(id);
            decode(context.pages.page(id))
        };
        *child = Child::Dirty(Box::new(node));
    }
    match child {
        Child::Dirty(node) => node,
        Child::Page(_) => unreachable!(),
    }
}

/// A branch cell for `key` whose child is page `child` (0 while the child is dirty: its page
/// id is written at spill). A clean child's cell always holds its page id.
fn branch_cell(key: &[u8], child: PageId) -> Vec<u8> {
    let mut cell = Vec::with_capacity(BRANCH_CELL_HEADER + key.len());
    cell.extend_from_slice(&child.to_le_bytes());
    cell.extend_from_slice(&(key.len() as u16).to_le_bytes());
    cell.extend_from_slice(key);
    cell
}

impl Leaf {
    /// The cell for (key, value); a big value is kept by the leaf until spill.
    fn cell(&mut self, key: &[u8], value: Value) -> Vec<u8> {
        let mut cell = Vec::with_capacity(LEAF_CELL_HEADER + key.len() + value.cell_bytes());
        let (flags, len, body): (u8, u32, u64) = match value {
            Value::Inline(bytes) => {
                cell.extend_from_slice(&(key.len() as u16).to_le_bytes());
                cell.push(0);
                cell.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                cell.extend_from_slice(key);
                cell.extend_from_slice(&bytes);
                return cell;
            }
            Value::Overflow { first, len } => (LEAF_FLAG_OVERFLOW, len, first),
            Value::Big(bytes) => {
                let id = NEXT_BIG_VALUE_ID.fetch_add(1, AtomicOrdering::Relaxed);
                let len = bytes.len() as u32;
                self.big.push((id, bytes));
                (LEAF_FLAG_OVERFLOW | LEAF_FLAG_PENDING, len, id)
            }
        };
        cell.extend_from_slice(&(key.len() as u16).to_le_bytes());
        cell.push(flags);
        cell.extend_from_slice(&len.to_le_bytes());
        cell.extend_from_slice(key);
        cell.extend_from_slice(&body.to_le_bytes());
        cell
    }

    /// The value of cell `index`, taken out of the leaf (a pending big value leaves `big`).
    fn take_value(&mut self, index: usize) -> Value {
        let value = NodeRef::Page(&self.page.bytes).value_raw(index);
        match value {
            RawValue::Inline(bytes) => Value::Inline(bytes.to_vec()),
            RawValue::Overflow { first, len } => Value::Overflow { first, len },
            RawValue::Pending { id } => {
                let position = self.big.iter().position(|(big_id, _)| *big_id == id).expect("pending value is held");
                Value::Big(self.big.swap_remove(position).1)
            }
        }
    }

    /// Moves the pending values the cells of `other` refer to from `self` to `other`.
    fn hand_over_big(&mut self, other: &mut Leaf) {
        if self.big.is_empty() {
            return;
        }
        for index in 0..other.page.count() {
            if let RawValue::Pending { id } = NodeRef::Page(&other.page.bytes).value_raw(index) {
                let position = self.big.iter().position(|(big_id, _)| *big_id == id).expect("pending value is held");
                other.big.push(self.big.swap_remove(position));
            }
        }
    }
}

enum RawValue<'a> {
    Inline(&'a [u8]),
    Overflow { first: PageId, len: u32 },
    Pending { id: u64 },
}

impl<'a> NodeRef<'a> {
    /// A leaf cell's value as stored (pending values unresolved).
    fn value_raw(&self, index: usize) -> RawValue<'a> {
        let page = self.bytes();
        let offset = cell_offset(page, index);
        let key_len = read_u16(page, offset) as usize;
        let flags = page[offset + 2];
        let at = offset + LEAF_CELL_HEADER + key_len;
        if flags & LEAF_FLAG_PENDING != 0 {
            RawValue::Pending { id: read_u64(page, at) }
        } else if flags & LEAF_FLAG_OVERFLOW != 0 {
            RawValue::Overflow { first: read_u64(page, at), len: read_u32(page, offset + 3) }
        } else {
            RawValue::Inline(&page[at..at + read_u32(page, offset + 3) as usize])
        }
    }

    /// Index of `key` in a leaf, if present.
    fn find(&self, key: &[u8]) -> Result<usize, usize> {
        let index = self.lower_bound(key);
        if index < self.len() && self.key(index) == key {
            Ok(index)
        } else {
            Err(index)
        }
    }
}

/// Inserts or replaces `key`; returns the replaced value.
pub fn insert(root: &mut Child, key: &[u8], value: Value, context: &mut EditContext) -> Option<Value> {
    match insert_from(root, key, Source::Ready(value), context) {
        Inserted::Yes(replaced) => replaced,
        Inserted::NextInAnotherLeaf => unreachable!("a ready value is always inserted"),
    }
}

/// The entry that follows a new key: its key and value, or none anywhere in the tree.
pub type Following<'a> = Option<(&'a [u8], ValueRef<'a>)>;

/// Inserts `key`, which must be new, with the value `make` builds from the entry that
/// follows it in the tree, in one descent. Returns false, with nothing inserted, when that
/// entry is in another leaf than the one `key` goes to: the caller then looks it up and
/// inserts with `insert`.
pub fn insert_new(
    root: &mut Child,
    key: &[u8],
    make: &mut dyn FnMut(Following) -> Value,
    context: &mut EditContext,
) -> bool {
    match insert_from(root, key, Source::Following(make), context) {
        Inserted::Yes(replaced) => {
            assert!(replaced.is_none(), "insert_new of a key that is there");
            true
        }
        Inserted::NextInAnotherLeaf => false,
    }
}

/// Where the inserted value comes from.
enum Source<'m> {
    Ready(Value),
    Following(&'m mut dyn FnMut(Following) -> Value),
}

enum Inserted {
    Yes(Option<Value>),
    NextInAnotherLeaf,
}

fn insert_from(root: &mut Child, key: &[u8], source: Source, context: &mut EditContext) -> Inserted {
    assert!(key.len() >= KEY_SUFFIX_SIZE);
    let node = make_dirty(root, context);
    let (inserted, split) = insert_into(node, key, source, false, context);
    if let Some((separator, right)) = split {
        let left = core::mem::replace(root, Child::Page(0));
        let cells = [branch_cell(&[], 0), branch_cell(&separator, 0)];
        let page = SlottedPage::from_cells(KIND_BRANCH, cells.iter().map(|cell| cell.as_slice()));
        *root = Child::Dirty(Box::new(Node::Branch(Branch { page, children: vec![left, right] })));
    }
    inserted
}

type Split = Option<(Vec<u8>, Child)>;

/// `keys_after`: whether the tree holds keys after this node's subtree.
fn insert_into(
    node: &mut Node,
    key: &[u8],
    source: Source,
    keys_after: bool,
    context: &mut EditContext,
) -> (Inserted, Split) {
    if let Node::Branch(branch) = node {
        let index = NodeRef::Page(&branch.page.bytes).child_index(key);
        let keys_after = keys_after || index + 1 < branch.children.len();
        let child = make_dirty(&mut branch.children[index], context);
        let (inserted, split) = insert_into(child, key, source, keys_after, context);
        let Some((separator, right)) = split else { return (inserted, None) };
        let cell = branch_cell(&separator, 0);
        branch.children.insert(index + 1, right);
        if branch.page.insert_cell(index + 1, &cell) {
            return (inserted, None);
        }
        return (inserted, Some(split_branch(branch, index + 1, &cell)));
    }
    let view = NodeRef::Mem(node);
    let found = view.find(key);
    let value = match source {
        Source::Ready(value) => value,
        Source::Following(make) => {
            let index = found.expect_err("insert_new of a key that is there");
            if index < view.len() {
                make(Some((view.key(index), view.value(index))))
            } else if keys_after {
                return (Inserted::NextInAnotherLeaf, None);
            } else {
                make(None)
            }
        }
    };
    assert!(leaf_cell_size(key.len(), &value) <= CELL_SIZE_MAX);
    let Node::Leaf(leaf) = node else { unreachable!("a node that is not a branch is a leaf") };
    let (replaced, index) = match found {
        Ok(index) => {
            let old = leaf.take_value(index);
            leaf.page.remove_cell(index);
            (Some(old), index)
        }
        Err(index) => (None, index),
    };
    let cell = leaf.cell(key, value);
    if leaf.page.insert_cell(index, &cell) {
        return (Inserted::Yes(replaced), None);
    }
    (Inserted::Yes(replaced), Some(split_leaf(leaf, index, &cell)))
}

/// Picks where to split cells so both halves fit, the left as close to `target` as possible.
fn choose_split(cells: &[usize], target: usize) -> usize {
    let total: usize = cells.iter().sum();
    let mut left = 0;
    let mut best: Option<(usize, usize)> = None;
    for split in 1..cells.len() {
        left += cells[split - 1];
        let right = total - left;
        if left <= USABLE_SIZE && right <= USABLE_SIZE {
            let distance = left.abs_diff(target);
            if best.is_none_or(|(best_distance, _)| distance < best_distance) {
                best = Some((distance, split));
            }
        }
    }
    best.expect("cells no larger than half a node always split in two").1
}

/// Appends (an insert at the end) leave the left node full: the rev tree only ever appends.
fn split_target(inserted_at: usize, count: usize, total: usize) -> usize {
    if inserted_at + 1 == count {
        USABLE_SIZE
    } else {
        total / 2
    }
}

/// The node's cells with `new_cell` inserted at `index`, and where to split them.
fn split_cells<'c>(page: &'c SlottedPage, index: usize, new_cell: &'c [u8]) -> (Vec<&'c [u8]>, usize) {
    let mut cells: Vec<&[u8]> = (0..page.count()).map(|i| page.cell(i)).collect();
    cells.insert(index, new_cell);
    let sizes: Vec<usize> = cells.iter().map(|cell| SLOT_SIZE + cell.len()).collect();
    let total = sizes.iter().sum();
    let split = choose_split(&sizes, split_target(index, cells.len(), total));
    (cells, split)
}

/// Splits a leaf that cannot take `new_cell` at `index`; returns the right half's first key.
fn split_leaf(leaf: &mut Leaf, index: usize, new_cell: &[u8]) -> (Vec<u8>, Child) {
    let (left_page, right_page) = {
        let (cells, split) = split_cells(&leaf.page, index, new_cell);
        let left = SlottedPage::from_cells(KIND_LEAF, cells[..split].iter().copied());
        let right = SlottedPage::from_cells(KIND_LEAF, cells[split..].iter().copied());
        (left, right)
    };
    leaf.page = left_page;
    let mut right = Leaf { page: right_page, big: Vec::new() };
    leaf.hand_over_big(&mut right);
    let separator = NodeRef::Page(&right.page.bytes).key(0).to_vec();
    assert!(leaf.page.used() <= USABLE_SIZE && right.page.used() <= USABLE_SIZE);
    (separator, Child::Dirty(Box::new(Node::Leaf(right))))
}

/// Splits a branch whose children already hold the new child at `index`.
fn split_branch(branch: &mut Branch, index: usize, new_cell: &[u8]) -> (Vec<u8>, Child) {
    let (left_page, right_page, separator, split) = {
        let (cells, split) = split_cells(&branch.page, index, new_cell);
        let separator = cells[split][BRANCH_CELL_HEADER..].to_vec();
        let first = branch_cell(&[], read_u64(cells[split], 0));
        let right_cells = core::iter::once(first.as_slice()).chain(cells[split + 1..].iter().copied());
        let left = SlottedPage::from_cells(KIND_BRANCH, cells[..split].iter().copied());
        (left, SlottedPage::from_cells(KIND_BRANCH, right_cells), separator, split)
    };
    branch.page = left_page;
    let children = branch.children.split_off(split);
    assert_eq!(branch.children.len(), branch.page.count());
    assert_eq!(children.len(), right_page.count());
    (separator, Child::Dirty(Box::new(Node::Branch(Branch { page: right_page, children }))))
}

/// Removes `key` if present; returns its value. Only a path that holds the key is copied.
pub fn remove(root: &mut Child, key: &[u8], context: &mut EditContext) -> Option<Value> {
    if matches!(root, Child::Page(0)) || !contains(root, key, context.pages) {
        return None;
    }
    let node = make_dirty(root, context);
    let removed = remove_from(node, key, context);
    assert!(removed.is_some(), "a key the tree contains is removed");
    collapse_root(root);
    removed
}

fn contains(root: &Child, key: &[u8], pages: Pages) -> bool {
    let cursor = Cursor::seek(pages, NodeRef::of(root, pages), key);
    cursor.current().is_some_and(|(found, _)| found == key)
}

/// A root branch with one child is replaced by the child; an empty root by the empty tree.
fn collapse_root(root: &mut Child) {
    loop {
        let Child::Dirty(node) = root else { return };
        match &mut **node {
            Node::Branch(branch) if branch.children.len() == 1 => {
                let only = branch.children.pop().unwrap();
                *root = only;
            }
            node if node.len() == 0 => {
                *root = Child::Page(0);
                return;
            }
            _ => return,
        }
    }
}

fn remove_from(node: &mut Node, key: &[u8], context: &mut EditContext) -> Option<Value> {
    match node {
        Node::Leaf(leaf) => {
            let index = NodeRef::Page(&leaf.page.bytes).find(key).ok()?;
            let value = leaf.take_value(index);
            leaf.page.remove_cell(index);
            Some(value)
        }
        Node::Branch(branch) => {
            let index = NodeRef::Page(&branch.page.bytes).child_index(key);
            let child = make_dirty(&mut branch.children[index], context);
            let removed = remove_from(child, key, context);
            rebalance(branch, index, context);
            removed
        }
    }
}

fn dirty_node(child: &Child) -> &Node {
    match child {
        Child::Dirty(node) => node,
        Child::Page(_) => panic!("expected a dirty child"),
    }
}

/// After a removal under `branch.children[index]`: drops the child if empty, or merges it
/// with a sibling when it is under a quarter full and both fit in one node.
fn rebalance(branch: &mut Branch, index: usize, context: &mut EditContext) {
    let child = dirty_node(&branch.children[index]);
    if child.len() == 0 {
        remove_child(branch, index);
        return;
    }
    if child.size() >= USABLE_SIZE / 4 || branch.children.len() < 2 {
        return;
    }
    let left_index = if index + 1 < branch.children.len() { index } else { index - 1 };
    let separator = NodeRef::Page(&branch.page.bytes).key(left_index + 1).to_vec();
    let (head, tail) = branch.children.split_at_mut(left_index + 1);
    let left = make_dirty(&mut head[left_index], context);
    let right = make_dirty(&mut tail[0], context);
    let merged_size = match (&*left, &*right) {
        (Node::Leaf(l), Node::Leaf(r)) => l.page.used() + r.page.used(),
        (Node::Branch(l), Node::Branch(r)) => l.page.used() + r.page.used() + separator.len(),
        _ => panic!("siblings at different depths"),
    };
    if merged_size > USABLE_SIZE {
        return;
    }
    match (left, right) {
        (Node::Leaf(l), Node::Leaf(r)) => {
            for cell_index in 0..r.page.count() {
                assert!(l.page.insert_cell(l.page.count(), r.page.cell(cell_index)));
            }
            l.big.append(&mut r.big);
        }
        (Node::Branch(l), Node::Branch(r)) => {
            let first = branch_cell(&separator, read_u64(r.page.cell(0), 0));
            assert!(l.page.insert_cell(l.page.count(), &first));
            for cell_index in 1..r.page.count() {
                assert!(l.page.insert_cell(l.page.count(), r.page.cell(cell_index)));
            }
            l.children.append(&mut r.children);
        }
        _ => unreachable!(),
    }
    assert_eq!(dirty_node(&branch.children[left_index]).size(), merged_size);
    remove_child(branch, left_index + 1);
}

fn remove_child(branch: &mut Branch, index: usize) {
    branch.page.remove_cell(index);
    branch.children.remove(index);
    if index == 0 && !branch.children.is_empty() {
        // The new first child's separator becomes -inf: keys below it were in the removed child.
        let first_child = read_u64(branch.page.cell(0), 0);
        branch.page.remove_cell(0);
        assert!(branch.page.insert_cell(0, &branch_cell(&[], first_child)));
    }
    assert_eq!(branch.children.len(), branch.page.count());
}

/// Where `spill` gets pages and puts their bytes.
pub trait PageSink {
    fn allocate(&mut self) -> PageId;
    fn txn_id(&self) -> TxnId;
    /// A zeroed buffer for page `id`: the caller writes and seals it.
    fn buffer(&mut self, id: PageId) -> &mut [u8];
    /// Takes the sealed bytes of page `id` as they are (a node's own buffer: no copy).
    fn write_page(&mut self, id: PageId, bytes: Box<[u8]>);
}

/// Writes every dirty node under `child` to new pages; the tree is clean afterwards.
/// Returns the root's page id (0 for the empty tree).
pub fn spill(child: &mut Child, sink: &mut dyn PageSink) -> PageId {
    let Child::Dirty(node) = child else {
        let Child::Page(id) = child else { unreachable!() };
        return *id;
    };
    if node.len() == 0 {
        *child = Child::Page(0);
        return 0;
    }
    let (kind, page) = match &mut **node {
        Node::Branch(branch) => {
            for index in 0..branch.children.len() {
                if let Child::Page(id) = branch.children[index] {
                    debug_assert_eq!(
                        NodeRef::Page(&branch.page.bytes).child_page(index),
                        id,
                        "a clean child's cell holds its id"
                    );
                    continue;
                }
                let id = spill(&mut branch.children[index], sink);
                assert!(id >= META_PAGES);
                let offset = branch.page.cell_offset(index);
                branch.page.bytes[offset..offset + 8].copy_from_slice(&id.to_le_bytes());
            }
            (KIND_BRANCH, &mut branch.page)
        }
        Node::Leaf(leaf) => {
            let pending = if leaf.big.is_empty() { 0 } else { leaf.page.count() };
            for index in 0..pending {
                if let RawValue::Pending { id } = NodeRef::Page(&leaf.page.bytes).value_raw(index) {
                    let position =
                        leaf.big.iter().position(|(big_id, _)| *big_id == id).expect("pending value is held");
                    let (_, bytes) = leaf.big.swap_remove(position);
                    let first = write_overflow(&bytes, sink);
                    let offset = leaf.page.cell_offset(index);
                    let key_len = read_u16(&leaf.page.bytes, offset) as usize;
                    leaf.page.bytes[offset + 2] = LEAF_FLAG_OVERFLOW;
                    let at = offset + LEAF_CELL_HEADER + key_len;
                    leaf.page.bytes[at..at + 8].copy_from_slice(&first.to_le_bytes());
                }
            }
            assert!(leaf.big.is_empty(), "every pending value has a cell");
            (KIND_LEAF, &mut leaf.page)
        }
    };
    assert!(page.used() <= USABLE_SIZE);
    // Written pages hold no garbage: `from_page` relies on it.
    if page.garbage > 0 {
        page.compact();
    }
    page.tighten_prefix();
    let id = sink.allocate();
    let txn_id = sink.txn_id();
    let count = page.count();
    let prefix_len = page.prefix_len() as u64;
    let mut bytes = core::mem::take(&mut page.bytes);
    write_header(&mut bytes, kind, count as u16, txn_id, prefix_len);
    seal_page(&mut bytes);
    sink.write_page(id, bytes);
    *child = Child::Page(id);
    id
}

fn write_overflow(bytes: &[u8], sink: &mut dyn PageSink) -> PageId {
    // An empty value (beside a long aux key) still gets its one page, as `overflow_pages`
    // and `check` expect.
    let chunks: Vec<&[u8]> = if bytes.is_empty() { vec![bytes] } else { bytes.chunks(OVERFLOW_DATA_SIZE).collect() };
    let ids: Vec<PageId> = (0..chunks.len()).map(|_| sink.allocate()).collect();
    let txn_id = sink.txn_id();
    for (index, chunk) in chunks.iter().enumerate() {
        let next = ids.get(index + 1).copied().unwrap_or(0);
        let page = sink.buffer(ids[index]);
        write_header(page, KIND_OVERFLOW, 0, txn_id, next);
        page[HEADER_SIZE..HEADER_SIZE + chunk.len()].copy_from_slice(chunk);
        page[HEADER_SIZE + chunk.len()..].fill(0);
        seal_page(page);
    }
    ids[0]
}

/// Whether the committed subtree at `id` holds a page >= `watermark` (a node or an overflow
/// page), i.e. whether defragmentation must rewrite part of it.
fn subtree_above(pages: Pages, id: PageId, watermark: PageId) -> bool {
    if id >= watermark {
        return true;
    }
    let node = NodeRef::Page(pages.page(id));
    (0..node.len()).any(|index| {
        if node.is_leaf() {
            match node.value(index) {
                ValueRef::Overflow { first, len } => {
                    pages.overflow_pages(first, len as usize).iter().any(|&p| p >= watermark)
                }
                ValueRef::Inline(_) => false,
            }
        } else {
            subtree_above(pages, node.child_page(index), watermark)
        }
    })
}

/// Copies on write (up to `budget` nodes) every node at or above `watermark` and the path to
/// it, and reads back overflow values with a page above it, so that the next checkpoint
/// rewrites them into the lowest free pages. Returns false if the budget ran out first.
pub fn relocate_above(child: &mut Child, watermark: PageId, budget: &mut usize, context: &mut EditContext) -> bool {
    if let Child::Page(id) = *child {
        if id == 0 || !subtree_above(context.pages, id, watermark) {
            return true;
        }
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
    }
    let pages = context.pages;
    match make_dirty(child, context) {
        Node::Branch(branch) => {
            for grandchild in &mut branch.children {
                if !relocate_above(grandchild, watermark, budget, context) {
                    return false;
                }
            }
            true
        }
        Node::Leaf(leaf) => {
            for index in 0..leaf.page.count() {
                let RawValue::Overflow { first, len } = NodeRef::Page(&leaf.page.bytes).value_raw(index) else {
                    continue;
                };
                let chain = pages.overflow_pages(first, len as usize);
                if chain.iter().any(|&page| page >= watermark) {
                    let id = NEXT_BIG_VALUE_ID.fetch_add(1, AtomicOrdering::Relaxed);
                    leaf.big.push((id, pages.read_overflow(first, len as usize, usize::MAX)));
                    context.freed.extend(chain);
                    let offset = leaf.page.cell_offset(index);
                    let key_len = read_u16(&leaf.page.bytes, offset) as usize;
                    leaf.page.bytes[offset + 2] = LEAF_FLAG_OVERFLOW | LEAF_FLAG_PENDING;
                    let at = offset + LEAF_CELL_HEADER + key_len;
                    leaf.page.bytes[at..at + 8].copy_from_slice(&id.to_le_bytes());
                }
            }
            true
        }
    }
}
