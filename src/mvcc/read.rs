//! Ranges at a revision over a kv tree, shared by the writer (its own uncommitted state) and
//! by snapshots (a committed checkpoint).

use super::keys::*;
use super::page::KEY_SUFFIX_SIZE;
use super::tree::{seek_leaf, Cursor, NodeRef, Pages, ValueRef};
use super::{KeyValue, MvccError, RangeOptions, RangeResult, Revision};

/// Advances tried before a re-seek when skipping a key's other revisions: most keys have one.
const SKIP_ADVANCES_MAX: usize = 4;

/// etcd's range bounds.
#[derive(Clone, Copy, Debug)]
pub enum Bounds<'k> {
    Single(&'k [u8]),
    /// [start, end); end None = no upper bound.
    Interval(&'k [u8], Option<&'k [u8]>),
}

impl<'k> Bounds<'k> {
    /// range_end empty -> the key; range_end == [0] -> every key >= key; else [key, range_end).
    pub fn new(key: &'k [u8], range_end: &'k [u8]) -> Bounds<'k> {
        match range_end {
            [] => Bounds::Single(key),
            [0] => Bounds::Interval(key, None),
            end => Bounds::Interval(key, Some(end)),
        }
    }

    pub fn start(&self) -> &'k [u8] {
        match self {
            Bounds::Single(key) | Bounds::Interval(key, _) => key,
        }
    }

    /// Whether `user_key` (>= start) is past the bounds; keys arrive in order.
    pub fn is_past(&self, user_key: &[u8]) -> bool {
        match self {
            Bounds::Single(key) => user_key != *key,
            Bounds::Interval(_, None) => false,
            Bounds::Interval(_, Some(end)) => user_key >= *end,
        }
    }
}

/// A kv seek key built on the stack for short user keys (no allocation on point reads).
#[derive(Default)]
struct SeekKey {
    inline: Option<[u8; 64 + KEY_SUFFIX_SIZE]>,
    heap: Vec<u8>,
}

impl SeekKey {
    /// The smallest kv key of `user_key` with main revision <= `main` (as `kv_seek_key`).
    fn kv(&mut self, user_key: &[u8], main: Revision) -> &[u8] {
        if user_key.len() > 64 {
            self.heap = kv_seek_key(user_key, main);
            return &self.heap;
        }
        let bytes = self.inline.insert([0; 64 + KEY_SUFFIX_SIZE]);
        let at = user_key.len();
        bytes[..at].copy_from_slice(user_key);
        bytes[at..at + 8].copy_from_slice(&(u64::MAX - main as u64).to_be_bytes());
        bytes[at + 8..at + 16].copy_from_slice(&(u64::MAX - i64::MAX as u64).to_be_bytes());
        debug_assert_eq!(&bytes[..at + KEY_SUFFIX_SIZE], kv_seek_key(user_key, main).as_slice());
        &bytes[..user_key.len() + KEY_SUFFIX_SIZE]
    }
}

/// Resolves a requested revision against (current, compacted) as etcd's rangeKeys does.
pub fn resolve_revision(requested: Revision, current: Revision, compacted: Revision) -> Result<Revision, MvccError> {
    if requested > current {
        return Err(MvccError::FutureRevision);
    }
    let revision = if requested <= 0 { current } else { requested };
    if revision < compacted {
        return Err(MvccError::Compacted);
    }
    Ok(revision)
}

/// One visible key revision found by `scan`.
pub struct Visible<'a> {
    pub user_key: &'a [u8],
    pub main: Revision,
    pub value: ValueRef<'a>,
}

/// Calls `visit` with the newest revision <= `revision` of each user key in `bounds`,
/// tombstones included, in key order, until `visit` returns false.
pub fn scan<'a>(
    pages: Pages<'a>,
    root: NodeRef<'a>,
    bounds: Bounds,
    revision: Revision,
    mut visit: impl FnMut(Visible<'a>) -> bool,
) {
    assert!(revision >= 0);
    if let Bounds::Interval(start, Some(end)) = bounds {
        if start >= end {
            return;
        }
    }
    let mut seek_buffer = SeekKey::default();
    let seek_key = seek_buffer.kv(bounds.start(), revision);
    if let Bounds::Single(user_key) = bounds {
        // The first entry at or after (key, revision) is the key's newest revision at or
        // below `revision`, or another key. Only when it is in a later leaf is a cursor needed.
        let (leaf, index) = seek_leaf(pages, root, seek_key);
        if index < leaf.len() {
            let (found, main, _) = split_kv_key(leaf.key(index));
            debug_assert!(found != user_key || main <= revision, "the seek key sorts after newer revisions");
            if found == user_key {
                visit(Visible { user_key: found, main, value: leaf.value(index) });
            }
            return;
        }
    }
    let mut cursor = Cursor::seek(pages, root, seek_key);
    while let Some((key, value)) = cursor.current() {
        let (user_key, main, _) = split_kv_key(key);
        if bounds.is_past(user_key) {
            return;
        }
        if main > revision {
            skip_newer(&mut cursor, pages, root, user_key, revision);
            continue;
        }
        // A single key has one visible revision: stop before touching the next entry.
        if !visit(Visible { user_key, main, value }) || matches!(bounds, Bounds::Single(_)) {
            return;
        }
        skip_key(&mut cursor, pages, root, user_key);
    }
}

/// Moves past the revisions of `user_key` newer than `revision`.
fn skip_newer<'a>(cursor: &mut Cursor<'a>, pages: Pages<'a>, root: NodeRef<'a>, user_key: &[u8], revision: Revision) {
    for _ in 0..SKIP_ADVANCES_MAX {
        cursor.advance();
        match cursor.current() {
            Some((key, _)) => {
                let (next_user_key, main, _) = split_kv_key(key);
                if next_user_key != user_key || main <= revision {
                    return;
                }
            }
            None => return,
        }
    }
    *cursor = Cursor::seek(pages, root, &kv_seek_key(user_key, revision));
}

/// Moves past every remaining revision of `user_key`.
fn skip_key<'a>(cursor: &mut Cursor<'a>, pages: Pages<'a>, root: NodeRef<'a>, user_key: &[u8]) {
    for _ in 0..SKIP_ADVANCES_MAX {
        cursor.advance();
        match cursor.current() {
            Some((key, _)) if split_kv_key(key).0 == user_key => {}
            _ => return,
        }
    }
    *cursor = Cursor::seek(pages, root, &kv_key_after(user_key));
}

/// The record's fixed header (reading only the first overflow page for big values).
pub fn record_header(pages: Pages, value: ValueRef) -> RecordHeader {
    match value {
        ValueRef::Inline(bytes) => decode_record_header(bytes),
        ValueRef::Overflow { first, len } => {
            decode_record_header(&pages.read_overflow(first, len as usize, RECORD_HEADER_SIZE))
        }
    }
}

pub fn build_key_value(pages: Pages, visible: &Visible, header: RecordHeader, keys_only: bool) -> KeyValue {
    let value = if keys_only {
        Vec::new()
    } else {
        match visible.value {
            ValueRef::Inline(bytes) => bytes[RECORD_HEADER_SIZE..].to_vec(),
            ValueRef::Overflow { first, len } => {
                let mut bytes = pages.read_overflow(first, len as usize, usize::MAX);
                bytes.drain(..RECORD_HEADER_SIZE);
                bytes
            }
        }
    };
    KeyValue {
        key: visible.user_key.to_vec(),
        create_revision: header.create_revision,
        mod_revision: visible.main,
        version: header.version,
        value,
        lease: header.lease,
    }
}

/// etcd's Range: the live keys in bounds at a revision; `count` counts all of them, `kvs`
/// holds at most `limit`.
pub fn range(
    pages: Pages,
    root: NodeRef,
    key: &[u8],
    range_end: &[u8],
    options: &RangeOptions,
    current: Revision,
    compacted: Revision,
) -> Result<RangeResult, MvccError> {
    let revision = resolve_revision(options.revision, current, compacted)?;
    let limit = if options.limit > 0 { options.limit as usize } else { usize::MAX };
    let bounds = Bounds::new(key, range_end);
    // A single key has at most one: one allocation of its size, not the growth path's four.
    let kvs =
        if matches!(bounds, Bounds::Single(_)) && !options.count_only { Vec::with_capacity(1) } else { Vec::new() };
    let mut result = RangeResult { kvs, count: 0, revision: current };
    scan(pages, root, bounds, revision, |visible| {
        let header = record_header(pages, visible.value);
        if header.tombstone {
            return true;
        }
        result.count += 1;
        if !options.count_only && result.kvs.len() < limit {
            result.kvs.push(build_key_value(pages, &visible, header, options.keys_only));
        }
        true
    });
    assert!(result.kvs.len() as i64 <= result.count);
    Ok(result)
}

/// One write of the history: a put (the key's KeyValue at that revision) or a delete (the
/// key and its mod_revision only, as etcd reports a delete event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEvent {
    pub deleted: bool,
    pub kv: KeyValue,
}

impl Bounds<'_> {
    pub fn contains(&self, user_key: &[u8]) -> bool {
        match self {
            Bounds::Single(key) => user_key == *key,
            Bounds::Interval(start, _) => user_key >= *start && !self.is_past(user_key),
        }
    }
}

/// The writes with revision in (after, until] to keys in bounds, in revision order, read from
/// the rev tree (one ordered scan) and the kv tree (one point lookup per matching write).
/// Stops after `max_events` events, but never inside one revision: all events of a revision
/// are delivered together. Returns the events and the last revision fully covered.
pub fn history(
    pages: Pages,
    kv_root: NodeRef,
    rev_root: NodeRef,
    bounds: Bounds,
    after: Revision,
    until: Revision,
    max_events: usize,
) -> (Vec<HistoryEvent>, Revision) {
    assert!(after >= 0 && max_events > 0);
    let mut events = Vec::new();
    let mut cursor = Cursor::seek(pages, rev_root, &rev_key(after + 1, 0));
    let mut covered = until;
    while let Some((key, value)) = cursor.current() {
        let (main, sub) = split_rev_key(key);
        if main > until {
            break;
        }
        if events.len() >= max_events && events.last().is_some_and(|e: &HistoryEvent| e.kv.mod_revision < main) {
            covered = main - 1;
            break;
        }
        let value = match value {
            ValueRef::Inline(bytes) => bytes.to_vec(),
            ValueRef::Overflow { first, len } => pages.read_overflow(first, len as usize, usize::MAX),
        };
        let (flags, user_key) = value.split_first().expect("a rev tree value holds flags and the key");
        if bounds.contains(user_key) {
            events.push(history_event(pages, kv_root, user_key, main, sub, flags & REV_FLAG_TOMBSTONE != 0));
        }
        cursor.advance();
    }
    (events, covered)
}

fn history_event(
    pages: Pages,
    kv_root: NodeRef,
    user_key: &[u8],
    main: Revision,
    sub: i64,
    deleted: bool,
) -> HistoryEvent {
    if deleted {
        let kv = KeyValue { key: user_key.to_vec(), mod_revision: main, ..KeyValue::default() };
        return HistoryEvent { deleted, kv };
    }
    let cursor = Cursor::seek(pages, kv_root, &kv_key(user_key, main, sub));
    let (key, value) = cursor.current().expect("every rev tree entry has its kv tree entry");
    assert_eq!(split_kv_key(key), (user_key, main, sub), "kv tree entry of a rev tree entry");
    let visible = Visible { user_key, main, value };
    let header = record_header(pages, value);
    assert!(!header.tombstone, "the rev tree and the kv tree agree on tombstones");
    HistoryEvent { deleted, kv: build_key_value(pages, &visible, header, false) }
}

fn value_bytes(pages: Pages, value: ValueRef) -> Vec<u8> {
    match value {
        ValueRef::Inline(bytes) => bytes.to_vec(),
        ValueRef::Overflow { first, len } => pages.read_overflow(first, len as usize, usize::MAX),
    }
}

/// The value of `key` in aux table `table`.
pub fn aux_get(pages: Pages, aux_root: NodeRef, table: u8, key: &[u8]) -> Option<Vec<u8>> {
    let tree_key = aux_key(table, key);
    let cursor = Cursor::seek(pages, aux_root, &tree_key);
    let (found, value) = cursor.current().filter(|(found, _)| *found == tree_key.as_slice())?;
    debug_assert_eq!(split_aux_key(found), (table, key));
    Some(value_bytes(pages, value))
}

/// Every (key, value) of aux table `table`, in key order.
pub fn aux_scan(pages: Pages, aux_root: NodeRef, table: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut entries = Vec::new();
    // table ++ zeros is the smallest key of the table: its prefix is a prefix of all of them.
    let mut cursor = Cursor::seek(pages, aux_root, &aux_key(table, &[]));
    while let Some((tree_key, value)) = cursor.current() {
        let (found_table, key) = split_aux_key(tree_key);
        if found_table != table {
            break;
        }
        assert!(entries.last().is_none_or(|(previous, _): &(Vec<u8>, Vec<u8>)| previous.as_slice() < key));
        entries.push((key.to_vec(), value_bytes(pages, value)));
        cursor.advance();
    }
    entries
}
