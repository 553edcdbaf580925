//! `check()`: walks a committed checkpoint and proves the invariants of `mod.rs`.

use core::cmp::Ordering;

use super::keys::*;
use super::page::*;
use super::read::record_header;
use super::tree::{Cursor, NodeRef, Pages, ValueRef};
use super::CheckError;

fn fail(page: Option<PageId>, reason: impl Into<String>) -> CheckError {
    CheckError { page, reason: reason.into() }
}

struct Walk<'a> {
    pages: Pages<'a>,
    /// Pages seen so far: each must be reached exactly once.
    seen: Vec<bool>,
    leaf_depth: Option<usize>,
    entries: u64,
}

impl<'a> Walk<'a> {
    fn mark(&mut self, id: PageId, what: &str) -> Result<&'a [u8], CheckError> {
        if id < META_PAGES || id >= self.pages.page_count() {
            return Err(fail(Some(id), format!("{what} page outside the file")));
        }
        if core::mem::replace(&mut self.seen[id as usize], true) {
            return Err(fail(Some(id), format!("{what} page reached twice")));
        }
        let page = self.pages.page(id);
        if !page_is_intact(page) {
            return Err(fail(Some(id), format!("{what} page fails its checksum")));
        }
        Ok(page)
    }

    fn tree(&mut self, id: PageId, low: Option<&[u8]>, high: Option<&[u8]>, depth: usize) -> Result<(), CheckError> {
        let page = self.mark(id, "tree")?;
        validate_node(page).map_err(|reason| fail(Some(id), reason))?;
        let node = NodeRef::Page(page);
        let is_leaf = node.is_leaf();
        for index in 0..node.len() {
            let key = node.key(index);
            let bounded_below = index == 0 && !is_leaf;
            if !bounded_below && low.is_some_and(|low| cmp_keys(key, low) == Ordering::Less) {
                return Err(fail(Some(id), format!("key {index} below its parent's separator")));
            }
            if !bounded_below && high.is_some_and(|high| cmp_keys(key, high) != Ordering::Less) {
                return Err(fail(Some(id), format!("key {index} not below the next separator")));
            }
            // A branch's key 0 is -inf: ordering starts at key 1.
            let ordered_after_previous = index == 0 || (!is_leaf && index == 1);
            if !ordered_after_previous && cmp_keys(node.key(index - 1), key) != Ordering::Less {
                return Err(fail(Some(id), format!("keys {} and {index} out of order", index - 1)));
            }
        }
        if is_leaf {
            return self.leaf(id, node, depth);
        }
        for index in 0..node.len() {
            let child_low = if index == 0 { low } else { Some(node.key(index)) };
            let child_high = if index + 1 < node.len() { Some(node.key(index + 1)) } else { high };
            self.tree(node.child_page(index), child_low, child_high, depth + 1)?;
        }
        Ok(())
    }

    fn leaf(&mut self, id: PageId, node: NodeRef<'a>, depth: usize) -> Result<(), CheckError> {
        if *self.leaf_depth.get_or_insert(depth) != depth {
            return Err(fail(Some(id), "leaves at different depths"));
        }
        self.entries += node.len() as u64;
        for index in 0..node.len() {
            if let ValueRef::Overflow { first, len } = node.value(index) {
                self.overflow(first, len as usize)?;
            }
        }
        Ok(())
    }

    fn overflow(&mut self, first: PageId, len: usize) -> Result<(), CheckError> {
        let mut next = first;
        for _ in 0..len.div_ceil(OVERFLOW_DATA_SIZE).max(1) {
            let page = self.mark(next, "overflow")?;
            if header(page).kind != KIND_OVERFLOW {
                return Err(fail(Some(next), "overflow chain reaches a page of another kind"));
            }
            next = header(page).next;
        }
        if next != 0 {
            return Err(fail(Some(first), "overflow chain longer than its value"));
        }
        Ok(())
    }

    /// A walk over the pages `meta` counts, its two meta pages reached.
    fn new(pages: Pages<'a>, meta: &Meta) -> Walk<'a> {
        let mut walk = Walk { pages, seen: vec![false; meta.page_count as usize], leaf_depth: None, entries: 0 };
        walk.seen[0] = true;
        walk.seen[1] = true;
        walk
    }

    /// A free list entry: a page inside the file that nothing else reaches.
    fn mark_free(&mut self, id: PageId) -> Result<(), CheckError> {
        if id < META_PAGES || id >= self.pages.page_count() || core::mem::replace(&mut self.seen[id as usize], true) {
            return Err(fail(Some(id), "free page outside the file or reachable twice"));
        }
        Ok(())
    }

    fn free_list(&mut self, head: PageId) -> Result<u64, CheckError> {
        let (mut next, mut free) = (head, 0);
        while next != 0 {
            let page = self.mark(next, "free list")?;
            let page_header = header(page);
            if page_header.kind != KIND_FREELIST || page_header.count as usize > FREELIST_ENTRIES_MAX {
                return Err(fail(Some(next), "bad free list page"));
            }
            for index in 0..page_header.count as usize {
                self.mark_free(read_u64(page, HEADER_SIZE + index * FREELIST_ENTRY_SIZE))?;
                free += 1;
            }
            next = page_header.next;
        }
        Ok(free)
    }
}

/// Slots and cells of a node page stay inside the page.
fn validate_node(page: &[u8]) -> Result<(), String> {
    let page_header = header(page);
    let count = page_header.count as usize;
    let leaf = match page_header.kind {
        KIND_LEAF => true,
        KIND_BRANCH => false,
        kind => return Err(format!("tree page of kind {kind}")),
    };
    if count == 0 || HEADER_SIZE + count * SLOT_SIZE > PAGE_SIZE {
        return Err(format!("node with {count} cells"));
    }
    let prefix_len = node_prefix_len(page);
    let mut first_user_part: Option<&[u8]> = None;
    for index in 0..count {
        let (offset, head) = slot(page, index);
        let cell_header = if leaf { LEAF_CELL_HEADER } else { BRANCH_CELL_HEADER };
        if offset < HEADER_SIZE + count * SLOT_SIZE || offset + cell_header > PAGE_SIZE {
            return Err(format!("cell {index} outside the page"));
        }
        if leaf && page[offset + 2] & !LEAF_FLAG_OVERFLOW != 0 {
            return Err(format!("cell {index} has unknown flags {:#x}", page[offset + 2]));
        }
        let end = if leaf {
            let key_len = read_u16(page, offset) as usize;
            let value_len =
                if page[offset + 2] & LEAF_FLAG_OVERFLOW != 0 { 8 } else { read_u32(page, offset + 3) as usize };
            offset + cell_header + key_len + value_len
        } else {
            offset + cell_header + read_u16(page, offset + 8) as usize
        };
        if end > PAGE_SIZE {
            return Err(format!("cell {index} runs past the page"));
        }
        let key_len = if leaf { read_u16(page, offset) } else { read_u16(page, offset + 8) } as usize;
        if key_len < KEY_SUFFIX_SIZE && (leaf || index > 0) {
            return Err(format!("key {index} shorter than its revision suffix"));
        }
        if !leaf && index == 0 {
            if head != 0 {
                return Err("key 0 of a branch has a head".into());
            }
            continue;
        }
        let user = user_part(&page[offset + cell_header..offset + cell_header + key_len]);
        let shared = first_user_part.get_or_insert(user);
        if user.len() < prefix_len || user[..prefix_len] != shared[..prefix_len] {
            return Err(format!("key {index} does not share the node's {prefix_len}-byte prefix"));
        }
        if head != key_head(user, prefix_len) {
            return Err(format!("slot {index} holds a head that is not its key's"));
        }
    }
    Ok(())
}

impl Walk<'_> {
    /// Walks one tree (0 = empty); returns its entry count.
    fn whole_tree(&mut self, root: PageId) -> Result<u64, CheckError> {
        (self.leaf_depth, self.entries) = (None, 0);
        if root != 0 {
            self.tree(root, None, None, 0)?;
        }
        Ok(self.entries)
    }
}

/// The writer's free list, for a visible commit's meta (`FREELIST_UNWRITTEN`): the free pages,
/// and the pages of the last durable free list, which stay allocated until the next durable
/// commit replaces them.
pub struct InMemoryFreeList<'a> {
    pub free: &'a [PageId],
    pub chain: &'a [PageId],
}

impl Walk<'_> {
    fn in_memory_free_list(&mut self, list: &InMemoryFreeList) -> Result<u64, CheckError> {
        for &id in list.chain {
            let page = self.mark(id, "free list")?;
            if header(page).kind != KIND_FREELIST {
                return Err(fail(Some(id), "bad free list page"));
            }
        }
        for &id in list.free {
            self.mark_free(id)?;
        }
        Ok(list.free.len() as u64)
    }
}

/// The pages the trees of `meta` reach (kv, rev, aux, overflow chains), checked as `check`
/// does; meta pages count as reached.
pub fn reached_pages(pages: Pages, meta: &Meta) -> Result<Vec<bool>, CheckError> {
    let mut walk = Walk::new(pages, meta);
    for root in [meta.kv_root, meta.rev_root, meta.aux_root] {
        walk.whole_tree(root)?;
    }
    Ok(walk.seen)
}

/// Every page is reached exactly once (meta, tree, overflow, free list, free entry); trees are
/// ordered and balanced; checksums hold; the kv and rev trees describe the same revisions;
/// aux keys are well formed. A visible commit's meta has no free list on disk: `in_memory`
/// is the writer's (required then, ignored otherwise).
pub fn check(pages: Pages, meta: &Meta, in_memory: Option<InMemoryFreeList>) -> Result<(), CheckError> {
    if meta.checksum != meta.compute_checksum() {
        return Err(fail(None, "meta checksum"));
    }
    if meta.page_count < META_PAGES || meta.page_count > pages.page_count() {
        return Err(fail(None, format!("meta page count {} outside the mapping", meta.page_count)));
    }
    let mut walk = Walk::new(pages, meta);
    let kv_entries = walk.whole_tree(meta.kv_root)?;
    let rev_entries = walk.whole_tree(meta.rev_root)?;
    let aux_entries = walk.whole_tree(meta.aux_root)?;
    let free = if meta.freelist_head == FREELIST_UNWRITTEN {
        let list = in_memory.ok_or_else(|| fail(None, "a visible commit's meta has no free list on disk"))?;
        walk.in_memory_free_list(&list)?
    } else {
        walk.free_list(meta.freelist_head)?
    };
    if let Some(leaked) = walk.seen.iter().position(|seen| !seen) {
        return Err(fail(Some(leaked as u64), "page neither in a tree nor on the free list"));
    }
    let counts_agree = free == meta.free_page_count
        && kv_entries == meta.kv_entry_count
        && rev_entries == kv_entries
        && aux_entries == meta.aux_entry_count;
    if !counts_agree {
        let reason = format!(
            "counts: free {free} (meta {}), kv {kv_entries} (meta {}), rev {rev_entries}, aux {aux_entries} (meta {})",
            meta.free_page_count, meta.kv_entry_count, meta.aux_entry_count
        );
        return Err(fail(None, reason));
    }
    check_aux_keys(pages, meta)?;
    check_revisions(pages, meta)
}

/// Each aux key is a table byte, a key of at most AUX_KEY_SIZE_MAX_BYTES and a zero suffix.
fn check_aux_keys(pages: Pages, meta: &Meta) -> Result<(), CheckError> {
    let mut cursor = Cursor::seek(pages, NodeRef::root(meta.aux_root, pages), &[0u8; KEY_SUFFIX_SIZE]);
    while let Some((key, _)) = cursor.current() {
        let suffix_is_zero = key[key.len().saturating_sub(KEY_SUFFIX_SIZE)..].iter().all(|&byte| byte == 0);
        let length_ok = key.len() > KEY_SUFFIX_SIZE && key.len() <= 1 + AUX_KEY_SIZE_MAX_BYTES + KEY_SUFFIX_SIZE;
        if !suffix_is_zero || !length_ok {
            return Err(fail(None, format!("aux key of {} bytes is not table ++ key ++ zero suffix", key.len())));
        }
        cursor.advance();
    }
    Ok(())
}

/// Each rev tree entry names a kv entry at the same revision with the same tombstone flag, and
/// every record is sane for its revision.
fn check_revisions(pages: Pages, meta: &Meta) -> Result<(), CheckError> {
    let kv_root = NodeRef::root(meta.kv_root, pages);
    let mut cursor = Cursor::seek(pages, NodeRef::root(meta.rev_root, pages), &[0u8; KEY_SUFFIX_SIZE]);
    while let Some((key, value)) = cursor.current() {
        let (main, sub) = split_rev_key(key);
        let bytes = match value {
            ValueRef::Inline(bytes) => bytes.to_vec(),
            ValueRef::Overflow { first, len } => pages.read_overflow(first, len as usize, usize::MAX),
        };
        let (flags, user_key) = bytes.split_first().ok_or_else(|| fail(None, "empty rev tree value"))?;
        let wanted = kv_key(user_key, main, sub);
        let found = Cursor::seek(pages, kv_root, &wanted);
        let Some((found_key, record)) = found.current().filter(|(found_key, _)| *found_key == wanted) else {
            return Err(fail(None, format!("revision {main}.{sub} has no kv entry")));
        };
        debug_assert_eq!(found_key, wanted.as_slice());
        let record = record_header(pages, record);
        let sane =
            if record.tombstone { record.version == 0 } else { record.version >= 1 && record.create_revision <= main };
        if record.tombstone != (*flags & REV_FLAG_TOMBSTONE != 0) || !sane || main < 1 || main > meta.current_revision {
            return Err(fail(None, format!("revision {main}.{sub} has an inconsistent record")));
        }
        cursor.advance();
    }
    Ok(())
}
