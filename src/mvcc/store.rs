//! The writer (`Store`, `WriteTxn`), the read side (`Reader`, `Snapshot`) and open/create.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::file::{MmapFile, StoreFile};
use super::keys::*;
use super::page::*;
use super::read;
use super::tree::{self, Child, Cursor, EditContext, NodeRef, Pages, Value, ValueRef};
use super::{CheckError, KeyValue, MvccError, OpenError, RangeOptions, RangeResult, Revision, StoreError};

/// Nodes one defragmentation step copies (bounds the memory of a step: 4 MiB of pages).
const DEFRAG_PAGES_PER_STEP: usize = 1024;

/// Checkpoints `defragment` makes after the last relocation at most (three are needed to
/// release the moved pages and truncate the file; a few more if the free list shrinks too).
const DEFRAG_TRAILING_COMMITS_MAX: usize = 8;

/// Distinct user keys compacted per step (bounds the memory of one step).
const COMPACTION_KEYS_PER_STEP: usize = 4096;

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Virtual size of the read mapping, reserved once; the file can grow up to it.
    pub map_size_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions { map_size_bytes: 64 << 30 }
    }
}

/// How far a commit goes (DESIGN §5: durability comes from the Raft WAL, the store is
/// checkpointed now and then).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The dirty pages are pwritten (into the page cache, where every core's mapping sees
    /// them) and the new meta is published to readers in memory: no fdatasync, no meta page
    /// written. A crash forgets it; the owner replays its WAL from `durable_consistent_index`.
    Visible,
    /// A checkpoint: the dirty pages are pwritten, fdatasync, the meta is written into the
    /// slot holding the older durable meta, fdatasync. Also makes every visible commit
    /// before it durable.
    Durable,
}

/// What the writer and the readers share: the file, its mapping, the published commit and
/// the reader registry (the txn each live snapshot pins).
pub(crate) struct Shared {
    file: Arc<dyn StoreFile>,
    base: *const u8,
    published: Mutex<Published>,
}

struct Published {
    meta: Meta,
    readers: BTreeMap<TxnId, usize>,
}

// SAFETY: `base` points into the mapping owned by `file`, which lives as long as `Shared`; the
// mapping is only read through it, at pages committed before the reader's snapshot.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    pub(crate) fn pages(&self, page_count: u64) -> Pages<'_> {
        assert!(page_count * PAGE_SIZE as u64 <= self.file.map_len_bytes());
        // SAFETY: pages below a published page_count are written and never modified while a
        // snapshot or the writer can reach them.
        unsafe { Pages::new(self.base, page_count) }
    }

    /// The txns live snapshots pin, ascending.
    fn reader_txns(&self) -> Vec<TxnId> {
        self.published.lock().unwrap().readers.keys().copied().collect()
    }
}

// The contract of API.md: readers and snapshots cross cores; a commit's job runs anywhere.
const _: () = {
    const fn send_sync<T: Send + Sync + 'static>() {}
    const fn send<T: Send + 'static>() {}
    send_sync::<Reader>();
    send_sync::<Snapshot>();
    send::<CommitJob>();
    send::<CommitDone>();
};

/// The read side: Clone + Send + Sync; every core holds one.
#[derive(Clone)]
pub struct Reader {
    shared: Arc<Shared>,
}

impl Reader {
    /// A consistent view of the last commit, visible or durable. Pages it can reach are not
    /// reused while it lives.
    pub fn snapshot(&self) -> Snapshot {
        let mut published = self.shared.published.lock().unwrap();
        let meta = published.meta;
        *published.readers.entry(meta.txn_id).or_insert(0) += 1;
        drop(published);
        Snapshot { shared: Arc::clone(&self.shared), meta }
    }
}

pub struct Snapshot {
    shared: Arc<Shared>,
    meta: Meta,
}

impl Snapshot {
    pub fn revision(&self) -> Revision {
        self.meta.current_revision
    }

    pub fn compact_revision(&self) -> Revision {
        self.meta.compact_revision
    }

    pub fn consistent_index(&self) -> u64 {
        self.meta.consistent_index
    }

    pub fn range(&self, key: &[u8], range_end: &[u8], options: &RangeOptions) -> Result<RangeResult, MvccError> {
        let pages = self.shared.pages(self.meta.page_count);
        let root = NodeRef::root(self.meta.kv_root, pages);
        read::range(pages, root, key, range_end, options, self.meta.current_revision, self.meta.compact_revision)
    }

    /// The value of `key` in aux table `table` (see `Store::aux_put`).
    pub fn aux_get(&self, table: u8, key: &[u8]) -> Option<Vec<u8>> {
        let pages = self.shared.pages(self.meta.page_count);
        read::aux_get(pages, NodeRef::root(self.meta.aux_root, pages), table, key)
    }

    /// Every (key, value) of aux table `table`, in key order.
    pub fn aux_scan(&self, table: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
        let pages = self.shared.pages(self.meta.page_count);
        read::aux_scan(pages, NodeRef::root(self.meta.aux_root, pages), table)
    }
}

impl Snapshot {
    /// The writes after `after_revision` up to this snapshot's revision to keys in etcd
    /// bounds (watch replay), at most about `max_events` and never splitting a revision.
    /// Returns them and the last revision covered. `Compacted` if the revisions after
    /// `after_revision` are no longer all there.
    pub fn history(
        &self,
        after_revision: Revision,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
    ) -> Result<(Vec<read::HistoryEvent>, Revision), MvccError> {
        if after_revision + 1 < self.meta.compact_revision {
            return Err(MvccError::Compacted);
        }
        if after_revision >= self.meta.current_revision {
            return Ok((Vec::new(), self.meta.current_revision));
        }
        let pages = self.shared.pages(self.meta.page_count);
        let kv_root = NodeRef::root(self.meta.kv_root, pages);
        let rev_root = NodeRef::root(self.meta.rev_root, pages);
        let bounds = read::Bounds::new(key, range_end);
        Ok(read::history(pages, kv_root, rev_root, bounds, after_revision, self.meta.current_revision, max_events))
    }
}

/// A consistent copy of the store file as of one snapshot (Maintenance.Snapshot, backups):
/// the snapshot's meta in slot txn % 2 (either slot would do: open takes the valid meta with
/// the highest txn) and zeros in the other (which open reads as no meta), then every page below
/// its page count; free pages are written as zeros, because the writer may be reusing them
/// while the copy is made. Pages a snapshot reaches are never modified while it lives, so the
/// copy opens as a valid store at exactly the snapshot's revision.
///
/// A visible commit's meta has no free list on disk (`FREELIST_UNWRITTEN`): the image then
/// finds the free pages by walking the trees, and appends a free list of its own after the
/// snapshot's pages, which its meta names.
pub struct Image {
    snapshot: Snapshot,
    free_pages: BTreeSet<PageId>,
    /// The meta the copy carries: the snapshot's, or with the appended free list.
    meta: Meta,
    /// The appended free list pages, from page `snapshot.meta.page_count` on.
    appended: Vec<Box<[u8]>>,
}

impl Snapshot {
    pub fn image(self) -> Result<Image, OpenError> {
        let pages = self.shared.pages(self.meta.page_count);
        let path = self.shared.file.path().to_path_buf();
        if self.meta.freelist_head != FREELIST_UNWRITTEN {
            let (entries, _chain) = load_free_list(&path, &self.meta, pages)?;
            let free_pages = entries.into_iter().map(|(page, _)| page).collect();
            let meta = self.meta;
            return Ok(Image { snapshot: self, free_pages, meta, appended: Vec::new() });
        }
        let reached = super::check::reached_pages(pages, &self.meta)
            .map_err(|error| corrupt(&path, format!("meta txn {}: {error}", self.meta.txn_id)))?;
        let free: Vec<(PageId, TxnId)> =
            (META_PAGES..self.meta.page_count).filter(|&id| !reached[id as usize]).map(|id| (id, 0)).collect();
        let first = self.meta.page_count;
        let chunks: Vec<&[(PageId, TxnId)]> = free.chunks(FREELIST_ENTRIES_MAX).collect();
        let appended: Vec<Box<[u8]>> = chunks
            .iter()
            .enumerate()
            .map(|(index, entries)| {
                let mut page = vec![0u8; PAGE_SIZE].into_boxed_slice();
                let next = if index + 1 < chunks.len() { first + index as u64 + 1 } else { 0 };
                write_free_list_page(&mut page, entries, self.meta.txn_id, next);
                page
            })
            .collect();
        let meta = Meta {
            freelist_head: if appended.is_empty() { 0 } else { first },
            page_count: first + appended.len() as u64,
            free_page_count: free.len() as u64,
            ..self.meta
        }
        .sealed();
        let free_pages = free.into_iter().map(|(page, _)| page).collect();
        Ok(Image { snapshot: self, free_pages, meta, appended })
    }
}

impl Image {
    pub fn len_bytes(&self) -> u64 {
        self.meta.page_count * PAGE_SIZE as u64
    }

    pub fn revision(&self) -> Revision {
        self.meta.current_revision
    }

    /// Appends up to `max_bytes` of the image from `offset` (page-aligned) to `out`.
    pub fn read_chunk(&self, offset: u64, max_bytes: usize, out: &mut Vec<u8>) {
        assert_eq!(offset % PAGE_SIZE as u64, 0, "image chunks are page-aligned");
        assert!(max_bytes >= PAGE_SIZE);
        let meta = &self.meta;
        let snapshot_pages = self.snapshot.meta.page_count;
        let pages = self.snapshot.shared.pages(snapshot_pages);
        let first = offset / PAGE_SIZE as u64;
        let last = (first + (max_bytes / PAGE_SIZE) as u64).min(meta.page_count);
        for id in first..last {
            if id < META_PAGES {
                if id == meta.txn_id % META_PAGES {
                    out.extend_from_slice(&meta.encode_page());
                } else {
                    out.resize(out.len() + PAGE_SIZE, 0);
                }
            } else if id >= snapshot_pages {
                out.extend_from_slice(&self.appended[(id - snapshot_pages) as usize]);
            } else if self.free_pages.contains(&id) {
                out.resize(out.len() + PAGE_SIZE, 0);
            } else {
                out.extend_from_slice(pages.page(id));
            }
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut published = self.shared.published.lock().unwrap();
        let count = published.readers.get_mut(&self.meta.txn_id).expect("a live snapshot is registered");
        *count -= 1;
        if *count == 0 {
            published.readers.remove(&self.meta.txn_id);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TreeKind {
    Kv,
    Rev,
    Aux,
}

/// The pages one commit freed that something may still reach: the meta of every txn in
/// [written_at, freed_at) reaches a page (the commit `written_at` wrote it, the commit
/// `freed_at` no longer uses it). So a page is free once no pin is in that range: once the
/// newest pin below `freed_at` is older than the page. That pin only gets older (pins that
/// go away are old; new ones are at least the published txn), so a group whose newest page
/// is not newer than it has nothing to free, and a commit passes over it without looking at
/// its pages. (Looking at every pending page each commit cost the commits between two
/// checkpoints a time quadratic in their number.) Entries read at open have written_at 0
/// (unknown).
#[derive(Debug)]
struct PendingGroup {
    freed_at: TxnId,
    /// The largest written_at in `pages`.
    newest_written_at: TxnId,
    /// (written_at, id).
    pages: Vec<(TxnId, PageId)>,
}

/// A commit between its prepare (`prepare_commit_with`, `prepare_speculative_commit`) and
/// `finish_commit` (or `abort_commit`).
struct InFlight {
    meta: Meta,
    /// The meta slot a durable commit writes; None for a visible one.
    slot: Option<usize>,
    /// The file's length once the job is done.
    file_len_bytes: u64,
    /// A speculative commit (`prepare_speculative_commit`): the pages it writes, which
    /// `abort_commit` hands back to the free pages. None for any other commit.
    speculative: Option<Vec<PageId>>,
}

/// The writer: one owner (the raft core).
pub struct Store {
    shared: Arc<Shared>,
    /// The last published commit (visible or durable): what new snapshots see.
    committed: Meta,
    /// The meta each slot (page 0, page 1) holds on disk; None = no valid meta there.
    durable: [Option<Meta>; 2],
    /// The file's length as this writer left it (it may exceed the page count).
    file_len_bytes: u64,
    kv: Child,
    rev: Child,
    aux: Child,
    aux_entry_count: u64,
    current_revision: Revision,
    compact_revision: Revision,
    /// (main, sub) where the physical compaction resumes; main 0 = none pending.
    compact_scan: (Revision, i64),
    compaction_keys_per_step: usize,
    consistent_index: u64,
    kv_entry_count: u64,
    /// Committed pages this (uncommitted) txn no longer uses.
    freed: Vec<PageId>,
    /// Free pages a durable meta, the published meta or a live snapshot may still reach, by
    /// the commit that freed them.
    free_pending: Vec<PendingGroup>,
    /// Free pages nothing can reach, sorted descending so `pop` takes the lowest.
    free_ready: Vec<PageId>,
    /// Pages holding the committed free list.
    freelist_pages: Vec<PageId>,
    changed: bool,
    in_flight: Option<InFlight>,
    sticky: Option<StoreError>,
}

/// The I/O of a commit: Send + 'static, runs anywhere. A visible commit's job only pwrites
/// (page cache copies, no waiting on the disk); a durable one also fdatasyncs twice.
pub struct CommitJob {
    txn_id: TxnId,
    work: Option<CommitWork>,
}

impl std::fmt::Debug for CommitJob {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pages = self.work.as_ref().map_or(0, |work| work.pages.len());
        write!(formatter, "CommitJob {{ txn_id: {}, pages: {pages} }}", self.txn_id)
    }
}

struct CommitWork {
    file: Arc<dyn StoreFile>,
    /// The pages to write, in page id order, each with its bytes.
    pages: PageWrites,
    /// Durable commits: the meta page and its offset (the slot it replaces).
    meta: Option<(Vec<u8>, u64)>,
    /// The length every durable meta and the new one allow, if shorter than the file.
    truncate_to_bytes: Option<u64>,
}

pub struct CommitDone {
    txn_id: TxnId,
    /// The written pages' buffers, for the writer's next nodes (`tree::recycle_page_buffers`
    /// on the thread that finishes the commit, the one that makes nodes dirty).
    buffers: Vec<Box<[u8]>>,
}

impl std::fmt::Debug for CommitDone {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "CommitDone {{ txn_id: {}, buffers: {} }}", self.txn_id, self.buffers.len())
    }
}

/// Starts the writeback of every page written so far (`Store::writeback_job`); runs on any
/// thread, alongside commits.
pub struct WritebackJob {
    file: Arc<dyn StoreFile>,
}

impl WritebackJob {
    /// Queues the file's dirty pages for writeback without waiting for it. A hint: an error
    /// here (the kernel's) is left to the next checkpoint's fdatasync to report.
    pub fn run(self) {
        let _ = self.file.start_writeback();
    }
}

impl CommitJob {
    /// Pages the job writes (0 for a commit with nothing to write).
    pub fn page_count(&self) -> usize {
        self.work.as_ref().map_or(0, |work| work.pages.len())
    }

    /// Whether the job waits for the disk (fdatasync): run a durable job off the executor.
    pub fn is_durable(&self) -> bool {
        self.work.as_ref().is_some_and(|work| work.meta.is_some())
    }

    /// pwrite of the dirty pages; for a durable commit then fdatasync, write of the meta page
    /// into its slot, fdatasync; then the truncation of free tail pages, if any.
    pub fn run(self) -> Result<CommitDone, StoreError> {
        let Some(work) = self.work else { return Ok(CommitDone { txn_id: self.txn_id, buffers: Vec::new() }) };
        let path = work.file.path().to_path_buf();
        let fail = |operation, error| StoreError::io(&path, operation, error);
        work.write_pages().map_err(|e| fail("write", e))?;
        if let Some((meta_page, meta_offset)) = &work.meta {
            // The pages this meta reaches (this job's and every visible commit's before it)
            // are on disk before the meta that makes them the file's state.
            work.file.sync_data().map_err(|e| fail("fdatasync", e))?;
            work.file.write_at(*meta_offset, meta_page).map_err(|e| fail("write of the meta page", e))?;
            work.file.sync_data().map_err(|e| fail("fdatasync of the meta page", e))?;
        }
        if let Some(len_bytes) = work.truncate_to_bytes {
            // No durable meta counts the dropped pages (see `Store::truncation`); a crash
            // that loses the truncation leaves a longer file, which is harmless.
            work.file.set_len(len_bytes).map_err(|e| fail("truncate", e))?;
        }
        let buffers = work.pages.into_iter().map(|(_, bytes)| bytes).collect();
        Ok(CommitDone { txn_id: self.txn_id, buffers })
    }
}

impl CommitWork {
    /// Vectored writes of runs of consecutive page ids, from the pages' own buffers.
    fn write_pages(&self) -> std::io::Result<()> {
        debug_assert!(self.pages.windows(2).all(|pair| pair[0].0 < pair[1].0), "pages in id order, once each");
        let mut run: Vec<std::io::IoSlice> = Vec::new();
        let mut start = 0;
        while start < self.pages.len() {
            let mut end = start + 1;
            while end < self.pages.len() && self.pages[end].0 == self.pages[end - 1].0 + 1 {
                end += 1;
            }
            run.clear();
            run.extend(self.pages[start..end].iter().map(|(_, bytes)| std::io::IoSlice::new(bytes)));
            debug_assert!(run.iter().all(|page| page_is_intact(page)), "pages are sealed before they are written");
            self.file.write_pages_at(self.pages[start].0 * PAGE_SIZE as u64, &run)?;
            start = end;
        }
        Ok(())
    }
}

/// Drops free pages nothing can reach (`ready`) from the end of the file's page count; the
/// job truncates the file itself only as far as every durable meta allows.
fn trim_tail(sink: &mut Sink) {
    let trailing =
        sink.ready.iter().enumerate().take_while(|&(index, &id)| id + 1 + index as u64 == sink.page_count).count();
    if trailing > 0 {
        sink.ready.drain(..trailing);
        sink.page_count -= trailing as u64;
        assert!(sink.pages.iter().all(|&(id, _)| id < sink.page_count), "trimmed pages were free");
    }
}

/// The pages a commit writes, each with its bytes.
type PageWrites = Vec<(PageId, Box<[u8]>)>;

/// Pages allocated by a commit and the bytes to write to them.
struct Sink {
    txn_id: TxnId,
    ready: Vec<PageId>,
    page_count: u64,
    /// The pages written so far, each with its bytes.
    pages: PageWrites,
}

impl tree::PageSink for Sink {
    fn allocate(&mut self) -> PageId {
        match self.ready.pop() {
            Some(id) => id,
            None => {
                self.page_count += 1;
                self.page_count - 1
            }
        }
    }

    fn txn_id(&self) -> TxnId {
        self.txn_id
    }

    fn buffer(&mut self, id: PageId) -> &mut [u8] {
        self.write_page(id, vec![0u8; PAGE_SIZE].into_boxed_slice());
        &mut self.pages.last_mut().expect("just pushed").1
    }

    fn write_page(&mut self, id: PageId, bytes: Box<[u8]>) {
        assert!(id >= META_PAGES && id < self.page_count);
        assert_eq!(bytes.len(), PAGE_SIZE);
        self.pages.push((id, bytes));
    }
}

fn empty_meta(txn_id: TxnId) -> Meta {
    Meta {
        magic: MAGIC,
        format_version: FORMAT_VERSION,
        page_size: PAGE_SIZE as u32,
        txn_id,
        page_count: META_PAGES,
        // A new etcd store is at revision 1; its first write is revision 2.
        current_revision: 1,
        ..Meta::default()
    }
    .sealed()
}

/// How one meta page reads.
#[derive(Clone, Copy)]
enum MetaState {
    Foreign,
    UnknownVersion(u32),
    Damaged,
    Valid(Meta),
}

fn classify_meta(page: &[u8]) -> MetaState {
    let meta = Meta::decode(page);
    if meta.magic != MAGIC {
        return MetaState::Foreign;
    }
    if meta.format_version != FORMAT_VERSION {
        return MetaState::UnknownVersion(meta.format_version);
    }
    // Either slot may hold any txn: a durable checkpoint replaces the older meta, and visible
    // commits between checkpoints use txn ids that never reach the disk.
    if meta.checksum == meta.compute_checksum() && meta.page_size as usize == PAGE_SIZE {
        MetaState::Valid(meta)
    } else {
        MetaState::Damaged
    }
}

/// The decision table for the two meta pages: another format version anywhere refuses;
/// otherwise the valid meta with the highest txn wins, whichever slot holds it; no valid meta
/// is foreign (no magic at all) or corrupt.
fn choose_meta(path: &Path, states: [MetaState; 2]) -> Result<Meta, OpenError> {
    let path = path.to_path_buf();
    match states {
        [MetaState::UnknownVersion(version), _] | [_, MetaState::UnknownVersion(version)] => {
            Err(OpenError::UnknownVersion { path, version })
        }
        [MetaState::Valid(a), MetaState::Valid(b)] => Ok(if a.txn_id > b.txn_id { a } else { b }),
        [MetaState::Valid(meta), _] | [_, MetaState::Valid(meta)] => Ok(meta),
        [MetaState::Foreign, MetaState::Foreign] => Err(OpenError::Foreign { path }),
        _ => Err(OpenError::Corrupt { path, reason: "both meta pages fail their checksum".into() }),
    }
}

/// The metas the two slots hold, as the free-page rule must respect them (see `release_freed`).
fn durable_slots(states: [MetaState; 2]) -> [Option<Meta>; 2] {
    states.map(|state| match state {
        MetaState::Valid(meta) => Some(meta),
        _ => None,
    })
}

fn corrupt(path: &Path, reason: String) -> OpenError {
    OpenError::Corrupt { path: path.to_path_buf(), reason }
}

/// Checks what a meta page points at (bounds, root pages) and loads the free list.
/// The free list read at open: its entries (page, freed-at txn) and the pages holding it.
type LoadedFreeList = (Vec<(PageId, TxnId)>, Vec<PageId>);

fn load_free_list(path: &Path, meta: &Meta, pages: Pages) -> Result<LoadedFreeList, OpenError> {
    let in_file = |id: PageId| id == 0 || (META_PAGES..meta.page_count).contains(&id);
    let roots_in_file = [meta.kv_root, meta.rev_root, meta.aux_root, meta.freelist_head].into_iter().all(in_file);
    if !roots_in_file {
        return Err(corrupt(path, format!("meta txn {} points outside its {} pages", meta.txn_id, meta.page_count)));
    }
    let scan_sane =
        meta.compact_scan_main >= 0 && meta.compact_scan_main <= meta.current_revision && meta.compact_scan_sub >= 0;
    if meta.compact_revision > meta.current_revision || meta.current_revision < 0 || !scan_sane {
        return Err(corrupt(path, format!("meta txn {} has compact revision > current revision", meta.txn_id)));
    }
    for (name, root) in [("kv", meta.kv_root), ("rev", meta.rev_root), ("aux", meta.aux_root)] {
        if root == 0 {
            continue;
        }
        let page = pages.page(root);
        let kind = header(page).kind;
        if !page_is_intact(page) || (kind != KIND_BRANCH && kind != KIND_LEAF) {
            return Err(corrupt(path, format!("root page {root} of the {name} tree fails its checksum")));
        }
    }
    let (mut entries, mut chain) = (Vec::new(), Vec::new());
    let mut next = meta.freelist_head;
    while next != 0 {
        if !in_file(next) || chain.len() as u64 >= meta.page_count {
            return Err(corrupt(path, format!("the free list leaves the file at page {next}")));
        }
        let page = pages.page(next);
        let head = header(page);
        if !page_is_intact(page) || head.kind != KIND_FREELIST || head.count as usize > FREELIST_ENTRIES_MAX {
            return Err(corrupt(path, format!("free list page {next} fails its checksum")));
        }
        for index in 0..head.count as usize {
            let at = HEADER_SIZE + index * FREELIST_ENTRY_SIZE;
            let (id, txn) = (read_u64(page, at), read_u64(page, at + 8));
            if !in_file(id) || id == 0 {
                return Err(corrupt(path, format!("free list page {next} lists page {id} outside the file")));
            }
            entries.push((id, txn));
        }
        chain.push(next);
        next = head.next;
    }
    if entries.len() as u64 != meta.free_page_count {
        return Err(corrupt(
            path,
            format!("the free list holds {} pages, the meta says {}", entries.len(), meta.free_page_count),
        ));
    }
    Ok((entries, chain))
}

impl Store {
    /// Opens the store at `path`, creating it if it does not exist (or is empty). A foreign
    /// file, an unknown format version or a corrupt file is refused without modifying it.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, OpenError> {
        let io = |operation, source| OpenError::Io { path: path.to_path_buf(), operation, source };
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("open", e))?;
        let mapped = MmapFile::new(file, path, options.map_size_bytes).map_err(|e| io("map", e))?;
        if let Err(error) = mapped.lock_exclusive() {
            if error.kind() == std::io::ErrorKind::WouldBlock {
                return Err(OpenError::Locked { path: path.to_path_buf() });
            }
            return Err(io("lock", error));
        }
        let store = Store::open_file(Arc::new(mapped), options)?;
        if !existed {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let directory = std::fs::File::open(parent).map_err(|e| io("open the directory of", e))?;
            directory.sync_all().map_err(|e| io("fsync the directory of", e))?;
        }
        Ok(store)
    }

    /// Opens a store on any `StoreFile` (tests use `SimFile`). An empty file is initialized.
    pub fn open_file(file: Arc<dyn StoreFile>, _options: StoreOptions) -> Result<Store, OpenError> {
        let path = file.path().to_path_buf();
        let io = |operation, source| OpenError::Io { path: path.clone(), operation, source };
        let mut file_size_bytes = file.len_bytes().map_err(|e| io("stat", e))?;
        if file_size_bytes > file.map_len_bytes() {
            return Err(OpenError::MapTooSmall { path, file_size_bytes, map_size_bytes: file.map_len_bytes() });
        }
        if file_size_bytes == 0 {
            let mut image = empty_meta(0).encode_page();
            image.extend_from_slice(&empty_meta(1).encode_page());
            file.write_at(0, &image).map_err(|e| io("initialize", e))?;
            file.sync_data().map_err(|e| io("fdatasync", e))?;
            file_size_bytes = image.len() as u64;
        }
        // SAFETY: the first min(file size, 2 pages) bytes are in the file and the mapping.
        let head =
            unsafe { core::slice::from_raw_parts(file.map_base(), (file_size_bytes as usize).min(2 * PAGE_SIZE)) };
        if head.len() < 2 * PAGE_SIZE {
            if head.len() >= MAGIC.len() && head[..MAGIC.len()] == MAGIC {
                return Err(corrupt(&path, format!("truncated to {file_size_bytes} bytes")));
            }
            return Err(OpenError::Foreign { path });
        }
        let states = [classify_meta(&head[..PAGE_SIZE]), classify_meta(&head[PAGE_SIZE..])];
        let meta = choose_meta(&path, states)?;
        let durable = durable_slots(states);
        if meta.page_count < META_PAGES || meta.page_count * PAGE_SIZE as u64 > file_size_bytes {
            let reason = format!(
                "meta txn {} needs {} pages, the file holds {file_size_bytes} bytes",
                meta.txn_id, meta.page_count
            );
            return Err(corrupt(&path, reason));
        }
        let shared = Arc::new(Shared {
            base: file.map_base(),
            file,
            published: Mutex::new(Published { meta, readers: BTreeMap::new() }),
        });
        let (entries, freelist_pages) = load_free_list(&path, &meta, shared.pages(meta.page_count))?;
        // Who wrote a listed page is unknown here: written_at 0 keeps it until every meta
        // older than its freed_at is gone (ready entries, freed_at 0, are free at once).
        // The list holds each commit's pages together (as `write_free_list` writes them); a
        // commit whose pages were apart would only make two groups with one freed_at.
        let mut free_pending: Vec<PendingGroup> = Vec::new();
        for (id, freed_at) in entries {
            match free_pending.last_mut() {
                Some(group) if group.freed_at == freed_at => group.pages.push((0, id)),
                _ => free_pending.push(PendingGroup { freed_at, newest_written_at: 0, pages: vec![(0, id)] }),
            }
        }
        Ok(Store {
            shared,
            committed: meta,
            durable,
            file_len_bytes: file_size_bytes,
            kv: Child::Page(meta.kv_root),
            rev: Child::Page(meta.rev_root),
            aux: Child::Page(meta.aux_root),
            aux_entry_count: meta.aux_entry_count,
            current_revision: meta.current_revision,
            compact_revision: meta.compact_revision,
            compact_scan: (meta.compact_scan_main, meta.compact_scan_sub),
            compaction_keys_per_step: COMPACTION_KEYS_PER_STEP,
            consistent_index: meta.consistent_index,
            kv_entry_count: meta.kv_entry_count,
            freed: Vec::new(),
            free_pending,
            free_ready: Vec::new(),
            freelist_pages,
            changed: false,
            in_flight: None,
            sticky: None,
        })
    }

    pub fn reader(&self) -> Reader {
        Reader { shared: Arc::clone(&self.shared) }
    }

    pub fn current_revision(&self) -> Revision {
        self.current_revision
    }

    pub fn compact_revision(&self) -> Revision {
        self.compact_revision
    }

    pub fn set_consistent_index(&mut self, index: u64) {
        self.assert_not_in_flight();
        self.consistent_index = index;
        self.changed = true;
    }

    /// The consistent index the next commit saves (after open: the one of the durable
    /// checkpoint the store opened).
    pub fn consistent_index(&self) -> u64 {
        self.consistent_index
    }

    /// The consistent index of the newest durable checkpoint: what a crash now would reopen
    /// with, so the WAL must be kept from there.
    pub fn durable_consistent_index(&self) -> u64 {
        self.newest_durable().consistent_index
    }

    /// The txn id of the newest durable checkpoint. Equal to `committed_txn_id` when no
    /// visible commit followed it.
    pub fn last_durable_txn(&self) -> TxnId {
        self.newest_durable().txn_id
    }

    /// The newest meta on disk: what open would choose now.
    fn newest_durable(&self) -> &Meta {
        let [first, second] = &self.durable;
        match (first, second) {
            (Some(a), Some(b)) => {
                if a.txn_id > b.txn_id {
                    a
                } else {
                    b
                }
            }
            (Some(meta), None) | (None, Some(meta)) => meta,
            (None, None) => unreachable!("the store opened a valid meta"),
        }
    }

    /// The slot a durable checkpoint writes: one without a valid meta, else the older one.
    /// The newer durable meta stays untouched until the next checkpoint is durable.
    fn slot_to_replace(&self) -> usize {
        match &self.durable {
            [None, _] => 0,
            [_, None] => 1,
            [Some(a), Some(b)] => usize::from(a.txn_id > b.txn_id),
        }
    }

    /// Key revisions (including tombstones) the writer's state holds.
    pub fn kv_entry_count(&self) -> u64 {
        self.kv_entry_count
    }

    /// The txn id of the last commit, visible or durable (see `last_durable_txn`).
    pub fn committed_txn_id(&self) -> TxnId {
        self.committed.txn_id
    }

    fn assert_not_in_flight(&self) {
        assert!(self.in_flight.is_none(), "the writer is used between prepare_commit and finish_commit");
    }

    /// The sticky I/O error of a failed commit. After one, the writer's state refers to
    /// pages that may not be on disk: the owner must stop writing and restart (as etcd exits
    /// on a backend fsync failure); `write` and `compact` panic.
    pub fn failed(&self) -> Option<&StoreError> {
        self.sticky.as_ref()
    }

    fn assert_usable(&self) {
        self.assert_not_in_flight();
        if let Some(error) = &self.sticky {
            panic!("the store is unusable after a failed commit ({error})");
        }
    }

    /// One etcd write transaction (see `WriteTxn`).
    pub fn write(&mut self) -> WriteTxn<'_> {
        self.assert_usable();
        let revision = self.current_revision + 1;
        WriteTxn { store: self, revision, sub: 0 }
    }

    /// Runs `edit` on tree `kind`'s root with an edit context over the committed pages.
    fn edit_tree<R>(&mut self, kind: TreeKind, edit: impl FnOnce(&mut Child, &mut EditContext) -> R) -> R {
        let shared = Arc::clone(&self.shared);
        let pages = shared.pages(self.committed.page_count);
        let root = match kind {
            TreeKind::Kv => &mut self.kv,
            TreeKind::Rev => &mut self.rev,
            TreeKind::Aux => &mut self.aux,
        };
        edit(root, &mut EditContext { pages, freed: &mut self.freed })
    }

    /// Inserts or replaces `key`; returns whether it replaced a value.
    fn tree_insert(&mut self, kind: TreeKind, key: &[u8], value: Vec<u8>) -> bool {
        let value = Value::new(key.len(), value);
        self.edit_tree(kind, |root, context| match tree::insert(root, key, value, context) {
            Some(old) => {
                free_value(old, context.pages, context.freed);
                true
            }
            None => false,
        })
    }

    /// Inserts `key`, which must be new, with the value `make` builds from the entry after it
    /// (`tree::insert_new`); false, with nothing inserted, if that entry is in another leaf.
    fn tree_insert_new(
        &mut self,
        kind: TreeKind,
        key: &[u8],
        make: &mut dyn FnMut(Pages, tree::Following) -> Value,
    ) -> bool {
        self.edit_tree(kind, |root, context| {
            let pages = context.pages;
            tree::insert_new(root, key, &mut |following| make(pages, following), context)
        })
    }

    fn tree_remove(&mut self, kind: TreeKind, key: &[u8]) -> bool {
        self.edit_tree(kind, |root, context| match tree::remove(root, key, context) {
            Some(old) => {
                free_value(old, context.pages, context.freed);
                true
            }
            None => false,
        })
    }

    /// Sets `key` of aux table `table` (leases: AUX_TABLE_LEASES, members, auth) to `value`.
    /// Aux tables are not revisioned: the change lands in the next commit together with every
    /// kv change made since the last one, all or nothing. Panics on a key longer than
    /// AUX_KEY_SIZE_MAX_BYTES.
    pub fn aux_put(&mut self, table: u8, key: &[u8], value: &[u8]) {
        self.assert_usable();
        assert!(key.len() <= AUX_KEY_SIZE_MAX_BYTES, "aux key length {} over {AUX_KEY_SIZE_MAX_BYTES}", key.len());
        if !self.tree_insert(TreeKind::Aux, &aux_key(table, key), value.to_vec()) {
            self.aux_entry_count += 1;
        }
        self.changed = true;
    }

    /// Removes `key` from aux table `table`; returns whether it was there.
    pub fn aux_delete(&mut self, table: u8, key: &[u8]) -> bool {
        self.assert_usable();
        if key.len() > AUX_KEY_SIZE_MAX_BYTES || !self.tree_remove(TreeKind::Aux, &aux_key(table, key)) {
            return false;
        }
        assert!(self.aux_entry_count > 0);
        self.aux_entry_count -= 1;
        self.changed = true;
        true
    }

    /// The value of `key` in aux table `table`, as the writer sees it (uncommitted changes
    /// included).
    pub fn aux_get(&self, table: u8, key: &[u8]) -> Option<Vec<u8>> {
        let pages = self.shared.pages(self.committed.page_count);
        read::aux_get(pages, NodeRef::of(&self.aux, pages), table, key)
    }

    /// Every (key, value) of aux table `table` in key order, as the writer sees it.
    pub fn aux_scan(&self, table: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
        let pages = self.shared.pages(self.committed.page_count);
        read::aux_scan(pages, NodeRef::of(&self.aux, pages), table)
    }

    /// etcd's Compact (see API.md). Reads below `revision` fail from now on; the revisions it
    /// drops are removed in steps of COMPACTION_KEYS_PER_STEP keys: one now, one at each
    /// commit, or more through `compact_step`. The position is saved with each commit, so a
    /// restart resumes the work from the last checkpoint's.
    pub fn compact(&mut self, revision: Revision) -> Result<(), MvccError> {
        self.assert_usable();
        if revision <= self.compact_revision {
            return Err(MvccError::Compacted);
        }
        if revision > self.current_revision {
            return Err(MvccError::FutureRevision);
        }
        let previous = self.compact_revision;
        self.compact_revision = revision;
        self.changed = true;
        // Only keys written after the previous compaction can lose revisions: every other key
        // holds just its newest revision <= previous, which it keeps. An unfinished scan simply
        // continues with the new target (the keys it passed gain nothing to drop unless they
        // were written again, and those writes lie ahead of it).
        if self.compact_scan.0 == 0 {
            self.compact_scan = (previous + 1, 0);
        }
        self.compact_step();
        assert!(self.compact_revision <= self.current_revision);
        Ok(())
    }

    /// Removes the revisions the compaction drops for up to COMPACTION_KEYS_PER_STEP keys;
    /// returns whether work remains.
    pub fn compact_step(&mut self) -> bool {
        self.assert_usable();
        let (main, sub) = self.compact_scan;
        if main == 0 {
            return false;
        }
        let revision = self.compact_revision;
        let (keys, next) = self.compaction_keys(&rev_key(main, sub), revision);
        for key in &keys {
            self.compact_key(key, revision);
        }
        self.compact_scan = next.map_or((0, 0), |next| split_rev_key(&next));
        self.changed = true;
        self.compact_scan.0 != 0
    }

    /// Keys one compaction step handles (COMPACTION_KEYS_PER_STEP by default): tests use tiny
    /// steps to interleave compaction with everything else.
    pub fn set_compaction_keys_per_step(&mut self, keys: usize) {
        assert!(keys > 0);
        self.compaction_keys_per_step = keys;
    }

    /// Whether a compaction still has revisions to remove.
    pub fn compaction_pending(&self) -> bool {
        self.compact_scan.0 != 0
    }

    /// Up to COMPACTION_KEYS_PER_STEP user keys written at revisions in [from, revision], and
    /// where to continue.
    fn compaction_keys(&self, from: &[u8], revision: Revision) -> (BTreeSet<Vec<u8>>, Option<Vec<u8>>) {
        let pages = self.shared.pages(self.committed.page_count);
        let mut cursor = Cursor::seek(pages, NodeRef::of(&self.rev, pages), from);
        let mut keys = BTreeSet::new();
        while let Some((key, value)) = cursor.current() {
            if split_rev_key(key).0 > revision {
                return (keys, None);
            }
            if keys.len() >= self.compaction_keys_per_step {
                return (keys, Some(key.to_vec()));
            }
            keys.insert(rev_value_user_key(pages, value));
            cursor.advance();
        }
        (keys, None)
    }

    /// Keeps the newest revision <= `revision` of `user_key` unless it is a tombstone, and
    /// removes every older one (etcd's keyIndex.compact).
    fn compact_key(&mut self, user_key: &[u8], revision: Revision) {
        let doomed = {
            let pages = self.shared.pages(self.committed.page_count);
            let mut cursor = Cursor::seek(pages, NodeRef::of(&self.kv, pages), &kv_seek_key(user_key, revision));
            let mut doomed = Vec::new();
            let mut newest = true;
            while let Some((key, value)) = cursor.current() {
                let (found, main, sub) = split_kv_key(key);
                if found != user_key {
                    break;
                }
                assert!(main <= revision);
                if !newest || read::record_header(pages, value).tombstone {
                    doomed.push((main, sub));
                }
                newest = false;
                cursor.advance();
            }
            doomed
        };
        for (main, sub) in doomed {
            assert!(self.tree_remove(TreeKind::Kv, &kv_key(user_key, main, sub)));
            assert!(self.tree_remove(TreeKind::Rev, &rev_key(main, sub)));
            self.kv_entry_count -= 1;
        }
    }

    /// A job that starts writing back the pages visible commits wrote, so that the next
    /// checkpoint's fdatasync, which the writer waits for, finds little left to write. Run it
    /// off the writer's thread: it submits the I/O of every dirty page.
    pub fn writeback_job(&self) -> WritebackJob {
        WritebackJob { file: Arc::clone(&self.shared.file) }
    }

    /// A durable checkpoint's in-memory part (`prepare_commit_with(Durability::Durable)`).
    pub fn prepare_commit(&mut self) -> Result<CommitJob, StoreError> {
        self.prepare_commit_with(Durability::Durable)
    }

    /// A commit's in-memory part: spills the dirty nodes to pages and writes the free list
    /// and the next meta into a job; no I/O happens before the job runs, and the writer is
    /// unusable until `finish_commit` (or `abort_commit`). A durable commit with nothing changed still makes the
    /// last visible commit durable (its pages are synced and its meta written).
    pub fn prepare_commit_with(&mut self, durability: Durability) -> Result<CommitJob, StoreError> {
        self.prepare(durability, false)
    }

    /// A visible commit that the owner may drop instead of publishing it: `finish_commit`
    /// publishes it as any visible commit, `abort_commit` takes the writer back to the last
    /// published commit. Its job writes pages no meta reaches (free ones, or past the
    /// published page count) and never shortens the file, so dropping it leaves nothing to
    /// undo on disk. The server applies a leader's entries with one while they replicate.
    pub fn prepare_speculative_commit(&mut self) -> Result<CommitJob, StoreError> {
        self.prepare(Durability::Visible, true)
    }

    fn prepare(&mut self, durability: Durability, speculative: bool) -> Result<CommitJob, StoreError> {
        if let Some(error) = &self.sticky {
            return Err(error.clone());
        }
        self.assert_not_in_flight();
        if self.compaction_pending() {
            self.compact_step();
        }
        let slot = (durability == Durability::Durable).then(|| self.slot_to_replace());
        let already_durable = self.newest_durable().txn_id == self.committed.txn_id;
        if !self.changed && (slot.is_none() || already_durable) {
            let file_len_bytes = self.file_len_bytes;
            let speculative = speculative.then(Vec::new);
            self.in_flight = Some(InFlight { meta: self.committed, slot: None, file_len_bytes, speculative });
            return Ok(CommitJob { txn_id: self.committed.txn_id, work: None });
        }
        // A durable checkpoint writes a free list; the last visible commit has none on disk.
        let free_list_unwritten = self.committed.freelist_head == FREELIST_UNWRITTEN;
        let (meta, pages) = if self.changed || (slot.is_some() && free_list_unwritten) {
            self.spill(durability)?
        } else {
            (self.committed, Vec::new())
        };
        let (file_len_bytes, truncate_to_bytes) = self.truncation(meta.page_count, slot, !speculative);
        let meta_write = slot.map(|slot| (meta.encode_page(), slot as u64 * PAGE_SIZE as u64));
        let speculative = speculative.then(|| pages.iter().map(|&(id, _)| id).collect());
        self.in_flight = Some(InFlight { meta, slot, file_len_bytes, speculative });
        let file = Arc::clone(&self.shared.file);
        let work = CommitWork { file, pages, meta: meta_write, truncate_to_bytes };
        Ok(CommitJob { txn_id: meta.txn_id, work: Some(work) })
    }

    /// Writes the dirty nodes of every tree to the pages of a new txn, and for a durable
    /// commit the free list; returns its meta, the page ids and their bytes.
    ///
    /// A visible commit keeps its free list in memory (`FREELIST_UNWRITTEN`): its meta never
    /// reaches the disk, readers never read a free list, and writing it would cost every
    /// commit a page per 254 free pages (hundreds after a large compaction) where the trees
    /// cost a few. The chain of the last durable free list stays allocated until the next
    /// durable commit replaces it.
    fn spill(&mut self, durability: Durability) -> Result<(Meta, PageWrites), StoreError> {
        let txn_id = self.committed.txn_id + 1;
        let durable = durability == Durability::Durable;
        self.release_freed(txn_id, durable);
        let mut sink = Sink {
            txn_id,
            ready: core::mem::take(&mut self.free_ready),
            page_count: self.committed.page_count,
            pages: Vec::new(),
        };
        let kv_root = tree::spill(&mut self.kv, &mut sink);
        let rev_root = tree::spill(&mut self.rev, &mut sink);
        let aux_root = tree::spill(&mut self.aux, &mut sink);
        trim_tail(&mut sink);
        let (freelist_head, free_page_count) = if durable {
            self.write_free_list(&mut sink)
        } else {
            (FREELIST_UNWRITTEN, (sink.ready.len() + self.pending_page_count()) as u64)
        };
        self.free_ready = core::mem::take(&mut sink.ready);
        let map_size_bytes = self.shared.file.map_len_bytes();
        if sink.page_count * PAGE_SIZE as u64 > map_size_bytes {
            let error = StoreError::MapFull { map_size_bytes };
            self.sticky = Some(error.clone());
            return Err(error);
        }
        let meta = Meta {
            txn_id,
            kv_root,
            rev_root,
            freelist_head,
            page_count: sink.page_count,
            free_page_count,
            current_revision: self.current_revision,
            compact_revision: self.compact_revision,
            consistent_index: self.consistent_index,
            compact_scan_main: self.compact_scan.0,
            compact_scan_sub: self.compact_scan.1,
            kv_entry_count: self.kv_entry_count,
            aux_root,
            aux_entry_count: self.aux_entry_count,
            ..empty_meta(txn_id)
        }
        .sealed();
        self.changed = false;
        let mut pages = sink.pages;
        pages.sort_unstable_by_key(|&(id, _)| id);
        Ok((meta, pages))
    }

    /// The file's length after a commit of `page_count` pages (written into meta `slot` if
    /// durable), and the truncation its job does. The file keeps every page a durable meta
    /// counts, the new one's and the one left on disk, so that either opens after a crash;
    /// readers never touch the dropped pages (they were free, see `trim_tail`). A commit that
    /// may be aborted (`may_shorten` false) keeps the file's length: the published meta may
    /// count pages past its own page count.
    fn truncation(&self, page_count: u64, slot: Option<usize>, may_shorten: bool) -> (u64, Option<u64>) {
        let written_bytes = self.file_len_bytes.max(page_count * PAGE_SIZE as u64);
        if !may_shorten {
            return (written_bytes, None);
        }
        let kept_durable_pages = (0..2)
            .filter(|&index| Some(index) != slot)
            .filter_map(|index| self.durable[index].map(|meta| meta.page_count))
            .max()
            .unwrap_or(0);
        let floor_bytes = page_count.max(kept_durable_pages) * PAGE_SIZE as u64;
        if floor_bytes < written_bytes {
            (floor_bytes, Some(floor_bytes))
        } else {
            (written_bytes, None)
        }
    }

    /// The txns whose metas may still be read, ascending: the two durable metas (a crash
    /// reopens the newer; a damaged newer one falls back to the older, as in LMDB), the
    /// published one (the next snapshot takes it) and every live snapshot's.
    fn pins(&self) -> Vec<TxnId> {
        let mut pins = self.shared.reader_txns();
        pins.push(self.committed.txn_id);
        pins.extend(self.durable.iter().flatten().map(|meta| meta.txn_id));
        pins.sort_unstable();
        pins.dedup();
        pins
    }

    /// Moves the pages freed since the last commit (and, when this commit writes a new free
    /// list, the pages of the last one) to the pending list, then every pending page no pin
    /// reaches to the ready list: a page
    /// written by txn A and freed by txn T is reached by the metas of txns [A, T) (see "Page
    /// reuse" in mod.rs for a worked example). Every later pin is at least the published txn,
    /// which is >= T, so a ready page stays ready.
    fn release_freed(&mut self, txn_id: TxnId, replaces_free_list: bool) {
        assert!(txn_id >= 2 && txn_id == self.committed.txn_id + 1);
        let shared = Arc::clone(&self.shared);
        let pages = shared.pages(self.committed.page_count);
        let freed = core::mem::take(&mut self.freed);
        let old_chain = if replaces_free_list { core::mem::take(&mut self.freelist_pages) } else { Vec::new() };
        let mut group = Vec::with_capacity(freed.len() + old_chain.len());
        for id in freed.into_iter().chain(old_chain) {
            // The page is reachable from the published meta, so its header is the one its
            // writer sealed.
            let written_at = header(pages.page(id)).txn_id;
            assert!(written_at < txn_id, "page {id} freed by txn {txn_id} was written by txn {written_at}");
            group.push((written_at, id));
        }
        if let Some(newest_written_at) = group.iter().map(|&(written_at, _)| written_at).max() {
            self.free_pending.push(PendingGroup { freed_at: txn_id, newest_written_at, pages: group });
        }
        let pins = self.pins();
        let mut newly_ready = Vec::new();
        for group in &mut self.free_pending {
            let below = pins.partition_point(|&pin| pin < group.freed_at);
            let newest_pin_below = below.checked_sub(1).map(|index| pins[index]);
            let reached = |written_at: TxnId| newest_pin_below.is_some_and(|pin| written_at <= pin);
            if reached(group.newest_written_at) {
                continue;
            }
            group.pages.retain(|&(written_at, id)| {
                let keep = reached(written_at);
                if !keep {
                    newly_ready.push(id);
                }
                keep
            });
            group.newest_written_at = group.pages.iter().map(|&(written_at, _)| written_at).max().unwrap_or(0);
        }
        self.free_pending.retain(|group| !group.pages.is_empty());
        if !newly_ready.is_empty() {
            // Merge instead of re-sorting the whole (possibly large) ready list.
            newly_ready.sort_unstable_by(|a, b| b.cmp(a));
            let ready = core::mem::take(&mut self.free_ready);
            self.free_ready = merge_descending(ready, newly_ready);
        }
        debug_assert!(self.free_ready.windows(2).all(|pair| pair[0] > pair[1]));
    }

    fn pending_page_count(&self) -> usize {
        self.free_pending.iter().map(|group| group.pages.len()).sum()
    }

    /// (page id, freed_at) of every pending page.
    fn pending_entries(&self) -> impl Iterator<Item = (PageId, TxnId)> + '_ {
        self.free_pending.iter().flat_map(|group| group.pages.iter().map(|&(_, id)| (id, group.freed_at)))
    }

    /// Writes the free list (ready pages recorded as txn 0, pending ones with the txn that
    /// freed them) on pages taken from the free list itself or from the end of the file.
    fn write_free_list(&mut self, sink: &mut Sink) -> (PageId, u64) {
        use tree::PageSink;
        let mut chain = Vec::new();
        // Each page taken for the chain leaves the ready list, so its length is read anew.
        let pending = self.pending_page_count();
        while chain.len() * FREELIST_ENTRIES_MAX < sink.ready.len() + pending {
            chain.push(sink.allocate());
        }
        let entries: Vec<(PageId, TxnId)> =
            sink.ready.iter().map(|&id| (id, 0)).chain(self.pending_entries()).collect();
        for (index, &page_id) in chain.iter().enumerate() {
            let start = (index * FREELIST_ENTRIES_MAX).min(entries.len());
            let end = (start + FREELIST_ENTRIES_MAX).min(entries.len());
            let next = chain.get(index + 1).copied().unwrap_or(0);
            let txn_id = sink.txn_id;
            write_free_list_page(sink.buffer(page_id), &entries[start..end], txn_id, next);
        }
        self.freelist_pages = chain.clone();
        (chain.first().copied().unwrap_or(0), entries.len() as u64)
    }

    /// Publishes the commit to readers, and for a durable one records the meta slot it
    /// replaced (or, after an I/O error, makes the error sticky).
    pub fn finish_commit(&mut self, done: Result<CommitDone, StoreError>) -> Result<(), StoreError> {
        let in_flight = self.job_done(done, "finish_commit follows prepare_commit")?;
        let meta = in_flight.meta;
        if meta.txn_id != self.committed.txn_id {
            assert_eq!(meta.txn_id, self.committed.txn_id + 1);
            self.committed = meta;
            self.shared.published.lock().unwrap().meta = meta;
        }
        if let Some(slot) = in_flight.slot {
            assert!(meta.txn_id > self.newest_durable().txn_id, "a checkpoint is newer than the metas on disk");
            self.durable[slot] = Some(meta);
        }
        self.file_len_bytes = in_flight.file_len_bytes;
        assert!(matches!(self.kv, Child::Page(id) if id == meta.kv_root));
        assert!(matches!(self.aux, Child::Page(id) if id == meta.aux_root));
        Ok(())
    }

    /// The commit in flight, its job done (its page buffers kept for the next nodes); an I/O
    /// error of the job is made sticky and returned.
    fn job_done(&mut self, done: Result<CommitDone, StoreError>, order: &str) -> Result<InFlight, StoreError> {
        let in_flight = self.in_flight.take().expect(order);
        let done = match done {
            Ok(done) => done,
            Err(error) => {
                self.sticky = Some(error.clone());
                return Err(error);
            }
        };
        assert_eq!(done.txn_id, in_flight.meta.txn_id, "the job of this commit finished");
        tree::recycle_page_buffers(done.buffers);
        Ok(in_flight)
    }

    /// Drops the speculative commit in flight unpublished, with every write made since the
    /// last published commit: the writer is back at the published meta, where readers are.
    /// The pages its job wrote, and those it trimmed off the page count, are free again;
    /// the pages it freed are the published meta's and stay in use. An I/O error of the job
    /// is sticky, as in `finish_commit`.
    pub fn abort_commit(&mut self, done: Result<CommitDone, StoreError>) -> Result<(), StoreError> {
        let in_flight = self.job_done(done, "abort_commit follows prepare_speculative_commit")?;
        let written = in_flight.speculative.expect("only a speculative commit is aborted");
        let meta = in_flight.meta;
        let published = self.committed;
        if meta.txn_id != published.txn_id {
            assert_eq!(meta.txn_id, published.txn_id + 1);
            // `release_freed` made one group of the pages this txn freed, the last; all of
            // them are reached by the published meta, so none left it for the ready list.
            if self.free_pending.last().is_some_and(|group| group.freed_at == meta.txn_id) {
                self.free_pending.pop();
            }
            let mut back: Vec<PageId> = written
                .into_iter()
                .filter(|&id| id < published.page_count)
                .chain(meta.page_count..published.page_count)
                .collect();
            back.sort_unstable_by(|a, b| b.cmp(a));
            self.free_ready = merge_descending(core::mem::take(&mut self.free_ready), back);
            debug_assert!(self.free_ready.windows(2).all(|pair| pair[0] > pair[1]), "a page freed twice");
        }
        self.file_len_bytes = in_flight.file_len_bytes;
        self.kv = Child::Page(published.kv_root);
        self.rev = Child::Page(published.rev_root);
        self.aux = Child::Page(published.aux_root);
        self.aux_entry_count = published.aux_entry_count;
        self.current_revision = published.current_revision;
        self.compact_revision = published.compact_revision;
        self.compact_scan = (published.compact_scan_main, published.compact_scan_sub);
        self.consistent_index = published.consistent_index;
        self.kv_entry_count = published.kv_entry_count;
        self.freed.clear();
        self.changed = false;
        Ok(())
    }

    /// A durable checkpoint: prepare + run + finish on this thread.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        self.commit_with(Durability::Durable)
    }

    /// prepare + run + finish on this thread.
    pub fn commit_with(&mut self, durability: Durability) -> Result<(), StoreError> {
        let job = self.prepare_commit_with(durability)?;
        let done = job.run();
        self.finish_commit(done)
    }

    /// The file size of the last commit (etcd's db_size).
    pub fn size_bytes(&self) -> u64 {
        self.committed.page_count * PAGE_SIZE as u64
    }

    /// Bytes of the last commit's file not on the free list (etcd's db_size_in_use).
    pub fn size_in_use_bytes(&self) -> u64 {
        (self.committed.page_count - self.committed.free_page_count) * PAGE_SIZE as u64
    }

    /// etcd's HashKV over the writer's state: a crc32 of every key revision in
    /// (compact revision, revision], plus the revisions <= compact revision that a compaction
    /// at `revision` would keep.
    pub fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision, Revision), MvccError> {
        self.assert_usable();
        let compacted = self.compact_revision;
        if revision > 0 && revision <= compacted {
            return Err(MvccError::Compacted);
        }
        if revision > self.current_revision {
            return Err(MvccError::FutureRevision);
        }
        let revision = if revision <= 0 { self.current_revision } else { revision };
        let pages = self.shared.pages(self.committed.page_count);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(b"key");
        let mut cursor = Cursor::seek(pages, NodeRef::of(&self.kv, pages), &[0u8; KEY_SUFFIX_SIZE]);
        let mut newest_seen_for: Option<&[u8]> = None;
        while let Some((key, value)) = cursor.current() {
            let (user_key, main, sub) = split_kv_key(key);
            cursor.advance();
            if main > revision {
                continue;
            }
            let newest = newest_seen_for != Some(user_key);
            newest_seen_for = Some(user_key);
            let record = full_value(pages, value);
            let tombstone = decode_record_header(&record).tombstone;
            if main > compacted || (newest && !tombstone) {
                hasher.update(&main.to_be_bytes());
                hasher.update(&sub.to_be_bytes());
                hasher.update(&(user_key.len() as u64).to_be_bytes());
                hasher.update(user_key);
                hasher.update(&record);
            }
        }
        Ok((hasher.finalize(), compacted, revision))
    }

    /// etcd's Hash: a crc32 of every entry of every tree (kv, rev, aux) of the last commit,
    /// as etcd hashes every bucket of its backend.
    pub fn hash(&self) -> u32 {
        let pages = self.shared.pages(self.committed.page_count);
        let mut hasher = crc32fast::Hasher::new();
        for root in [self.committed.kv_root, self.committed.rev_root, self.committed.aux_root] {
            let mut cursor = Cursor::seek(pages, NodeRef::root(root, pages), &[0u8; KEY_SUFFIX_SIZE]);
            while let Some((key, value)) = cursor.current() {
                hasher.update(&(key.len() as u64).to_be_bytes());
                hasher.update(key);
                hasher.update(&full_value(pages, value));
                cursor.advance();
            }
        }
        hasher.finalize()
    }

    /// Online defragmentation, in steps: each step copies on write at most
    /// DEFRAG_PAGES_PER_STEP nodes that lie above the live size of the file, so the next
    /// commit moves them into low free pages; commits trim the free tail (the file shrinks as
    /// far as the metas on disk allow). Readers are never blocked (they keep their snapshots;
    /// pages they reach are not reused). Returns whether pages above the live size remain
    /// (call again after the next commit).
    pub fn defragment_step(&mut self) -> Result<bool, StoreError> {
        if let Some(error) = &self.sticky {
            return Err(error.clone());
        }
        self.assert_usable();
        let watermark = self.committed.page_count - self.committed.free_page_count;
        let shared = Arc::clone(&self.shared);
        let pages = shared.pages(self.committed.page_count);
        let mut budget = DEFRAG_PAGES_PER_STEP;
        let mut context = EditContext { pages, freed: &mut self.freed };
        let mut done = true;
        for root in [&mut self.kv, &mut self.rev, &mut self.aux] {
            done = done && tree::relocate_above(root, watermark, &mut budget, &mut context);
        }
        // A commit is due even with nothing moved: it releases and trims free pages.
        self.changed = true;
        Ok(!done)
    }

    /// Defragments on this thread: steps and checkpoints until no node lies above the live
    /// size (bounded), then the checkpoints that release the moved pages and trim the tail.
    /// Best effort while old snapshots pin pages. Blocks on fdatasync: the server should call
    /// `defragment_step` between its own checkpoints instead.
    pub fn defragment(&mut self) -> Result<(), StoreError> {
        self.assert_usable();
        let steps_max = 2 * (self.committed.page_count as usize / DEFRAG_PAGES_PER_STEP) + 8;
        for _ in 0..steps_max {
            let more = self.defragment_step()?;
            self.commit()?;
            if !more {
                break;
            }
        }
        // With checkpoints back to back, pages freed by txn T are reusable (and trimmable)
        // from txn T + 2, and the file is truncated once both metas on disk allow it.
        for round in 0..DEFRAG_TRAILING_COMMITS_MAX {
            let page_count_before = self.committed.page_count;
            self.changed = true;
            self.commit()?;
            let settled = page_count_before == self.committed.page_count && self.file_len_bytes == self.size_bytes();
            if round >= 2 && settled {
                break;
            }
        }
        Ok(())
    }

    /// Walks the last commit's file state and proves its invariants (see `check.rs`).
    pub fn check(&self) -> Result<(), CheckError> {
        let pages = self.shared.pages(self.committed.page_count);
        let free: Vec<PageId> =
            self.free_ready.iter().copied().chain(self.pending_entries().map(|(id, _)| id)).collect();
        let in_memory = super::check::InMemoryFreeList { free: &free, chain: &self.freelist_pages };
        super::check::check(pages, &self.committed, Some(in_memory))
    }

    /// Walks what each meta on disk reaches, as a crash now would find it (its pages are
    /// synced and no later commit may write them), and proves the same invariants. Tests run
    /// it between visible commits to show that page reuse never touches a durable page.
    pub fn check_durable(&self) -> Result<(), CheckError> {
        for meta in self.durable.iter().flatten() {
            if meta.page_count * PAGE_SIZE as u64 > self.file_len_bytes {
                let reason = format!("durable meta txn {} counts pages past the file's end", meta.txn_id);
                return Err(CheckError { page: Some(meta.page_count), reason });
            }
            super::check::check(self.shared.pages(meta.page_count), meta, None)?;
        }
        Ok(())
    }
}

fn merge_descending(a: Vec<PageId>, b: Vec<PageId>) -> Vec<PageId> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => {
                if x > y {
                    a.next()
                } else {
                    b.next()
                }
            }
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => return merged,
        };
        merged.push(next.unwrap());
    }
}

/// A key's previous live revision as a put sees it: its record header, and the KeyValue when
/// the caller asked for it.
type Previous = (RecordHeader, Option<KeyValue>);

/// The live revision of `user_key` that an entry (`found`, `value`) of the kv tree holds, if
/// it is one of `user_key`'s revisions and not a tombstone; as a KeyValue too if `full`.
fn previous_revision(pages: Pages, user_key: &[u8], found: &[u8], value: ValueRef, full: bool) -> Option<Previous> {
    let (found_user_key, main, _) = split_kv_key(found);
    if found_user_key != user_key {
        return None;
    }
    let header = read::record_header(pages, value);
    if header.tombstone {
        return None;
    }
    let key_value = full.then(|| read::build_key_value(pages, &read::Visible { user_key, main, value }, header, false));
    Some((header, key_value))
}

/// The record of a put at revision `main` after `previous` (the header of the key's live
/// revision, if any).
fn encode_new_record(previous: Option<&RecordHeader>, main: Revision, value: &[u8], lease: i64) -> Vec<u8> {
    let (create_revision, version) = match previous {
        Some(previous) => (previous.create_revision, previous.version + 1),
        None => (main, 1),
    };
    encode_record(RecordHeader { tombstone: false, create_revision, version, lease }, value)
}

/// Frees the overflow pages of a removed committed value.
fn free_value(value: Value, pages: Pages, freed: &mut Vec<PageId>) {
    if let Value::Overflow { first, len } = value {
        freed.extend(pages.overflow_pages(first, len as usize));
    }
}

fn full_value(pages: Pages, value: ValueRef) -> Vec<u8> {
    match value {
        ValueRef::Inline(bytes) => bytes.to_vec(),
        ValueRef::Overflow { first, len } => pages.read_overflow(first, len as usize, usize::MAX),
    }
}

fn rev_value_user_key(pages: Pages, value: ValueRef) -> Vec<u8> {
    let mut bytes = full_value(pages, value);
    assert!(!bytes.is_empty(), "rev tree value holds flags and a user key");
    bytes.remove(0);
    bytes
}

/// One etcd write transaction: every change gets main revision current + 1 and increasing
/// sub-revisions; reads see the txn's own writes. Dropping it ends it.
pub struct WriteTxn<'s> {
    store: &'s mut Store,
    revision: Revision,
    sub: i64,
}

impl WriteTxn<'_> {
    /// The revision reads in this txn see: its own if it changed anything (etcd's
    /// storeTxnWrite.Range).
    fn read_revision(&self) -> Revision {
        if self.sub > 0 {
            self.revision
        } else {
            self.revision - 1
        }
    }

    pub fn range(&self, key: &[u8], range_end: &[u8], options: &RangeOptions) -> Result<RangeResult, MvccError> {
        let store = &*self.store;
        let pages = store.shared.pages(store.committed.page_count);
        let root = NodeRef::of(&store.kv, pages);
        read::range(pages, root, key, range_end, options, self.read_revision(), store.compact_revision)
    }

    /// Writes `key`; returns its previous live KeyValue. Panics on an empty key or one longer
    /// than KEY_SIZE_MAX_BYTES (the server refuses those first).
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Option<KeyValue> {
        self.put_inner(key, value, lease, true).and_then(|(_, previous)| previous)
    }

    /// `put` for a caller that needs only the lease of the key's previous live revision (an
    /// etcd Put without prev_kv): the old key and value are not copied out.
    pub fn put_returning_previous_lease(&mut self, key: &[u8], value: &[u8], lease: i64) -> Option<i64> {
        self.put_inner(key, value, lease, false).map(|(header, _)| header.lease)
    }

    /// Writes `key`; returns the record header of its previous live revision, with that
    /// revision as a KeyValue if `full`.
    fn put_inner(&mut self, key: &[u8], value: &[u8], lease: i64, full: bool) -> Option<Previous> {
        assert!(
            !key.is_empty() && key.len() <= KEY_SIZE_MAX_BYTES,
            "key length {} outside [1, {KEY_SIZE_MAX_BYTES}]",
            key.len()
        );
        let (main, sub) = (self.revision, self.sub);
        let new_key = kv_key(key, main, sub);
        // One descent: the entry after (key, main, sub) in the kv tree is the key's newest
        // revision before this put, or another key. Only when it is in another leaf is it
        // looked up first, as a range.
        let mut previous = None;
        let mut make = |pages: Pages, following: tree::Following| {
            previous = following.and_then(|(found, value)| previous_revision(pages, key, found, value, full));
            Value::new(
                new_key.len(),
                encode_new_record(previous.as_ref().map(|(header, _)| header), main, value, lease),
            )
        };
        if !self.store.tree_insert_new(TreeKind::Kv, &new_key, &mut make) {
            let found =
                self.range(key, &[], &RangeOptions::default()).expect("the current revision is readable").kvs.pop();
            previous = found.map(|kv| {
                let header = RecordHeader {
                    tombstone: false,
                    create_revision: kv.create_revision,
                    version: kv.version,
                    lease: kv.lease,
                };
                (header, full.then_some(kv))
            });
            let record = encode_new_record(previous.as_ref().map(|(header, _)| header), main, value, lease);
            self.store.tree_insert(TreeKind::Kv, &new_key, record);
        }
        self.finish_revision(key, false);
        previous
    }

    /// Deletes the live keys in the range (etcd bounds) with tombstones; returns them.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        let deleted =
            self.range(key, range_end, &RangeOptions::default()).expect("the current revision is readable").kvs;
        for kv in &deleted {
            let header = RecordHeader { tombstone: true, create_revision: 0, version: 0, lease: 0 };
            self.write_revision(&kv.key, encode_record(header, &[]), true);
        }
        deleted
    }

    fn write_revision(&mut self, key: &[u8], record: Vec<u8>, tombstone: bool) {
        let inserted = kv_key(key, self.revision, self.sub);
        self.store.tree_insert(TreeKind::Kv, &inserted, record);
        self.finish_revision(key, tombstone);
    }

    /// After the kv tree has the revision's entry: the rev tree's, and the next sub revision.
    fn finish_revision(&mut self, key: &[u8], tombstone: bool) {
        let (main, sub) = (self.revision, self.sub);
        self.store.tree_insert(TreeKind::Rev, &rev_key(main, sub), encode_rev_value(key, tombstone));
        self.store.kv_entry_count += 1;
        self.store.changed = true;
        self.sub += 1;
    }

    /// `Store::aux_put` inside the txn (aux tables are not revisioned).
    pub fn aux_put(&mut self, table: u8, key: &[u8], value: &[u8]) {
        self.store.aux_put(table, key, value);
    }

    /// `Store::aux_delete` inside the txn.
    pub fn aux_delete(&mut self, table: u8, key: &[u8]) -> bool {
        self.store.aux_delete(table, key)
    }

    /// `Store::aux_get` inside the txn: sees the txn's own aux changes.
    pub fn aux_get(&self, table: u8, key: &[u8]) -> Option<Vec<u8>> {
        self.store.aux_get(table, key)
    }

    /// The revision this txn writes at (current + 1).
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Whether the txn changed anything.
    pub fn changed(&self) -> bool {
        self.sub > 0
    }

    /// Ends the txn; returns the store's revision after it.
    pub fn end(self) -> Revision {
        self.read_revision()
    }
}

impl Drop for WriteTxn<'_> {
    fn drop(&mut self) {
        if self.sub > 0 {
            assert_eq!(self.store.current_revision + 1, self.revision);
            self.store.current_revision = self.revision;
        }
    }
}
