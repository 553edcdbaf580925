//! The in-memory Raft log: every entry after the last snapshot, plus the four indexes that
//! describe how far each entry has travelled.
//!
//! ```text
//!   snapshot_index   applied    committed    persisted   handed_to_persist   last_index
//!        |-------------|-----------|--------------|-------------|-----------------|
//!   compacted away    handed to    agreed by a    on this        given to the
//!   (in a snapshot)   the app      quorum         member's disk  WAL, not yet synced
//! ```
//!
//! Invariants (checked by `assert_invariants`):
//! - `snapshot_index <= applied <= committed`, `applied <= persisted` once persisted
//!   has caught up with the snapshot, `committed <= last_index`;
//! - entry `i` sits at `entries[i - snapshot_index - 1]` and indexes are contiguous;
//! - terms never decrease along the log.
//!
//! `persisted` may lag behind `snapshot_index` right after a snapshot from the leader is
//! installed in memory and before the Ready carrying it is persisted: nothing is applied or
//! acknowledged from this member's log until it is on disk.

use std::collections::VecDeque;

use crate::raft::pb::Entry;

/// Returned when an index below the first retained entry is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted;

#[derive(Debug, Clone)]
pub struct RaftLog {
    entries: VecDeque<Entry>,
    snapshot_index: u64,
    snapshot_term: u64,
    pub committed: u64,
    pub applied: u64,
    pub persisted: u64,
    pub handed_to_persist: u64,
}

impl RaftLog {
    /// A log that starts right after a snapshot at (`index`, `term`) and holds `entries`,
    /// all of which are already on disk (this is how a member restarts).
    pub fn restore(index: u64, term: u64, entries: Vec<Entry>, committed: u64) -> RaftLog {
        let mut log = RaftLog {
            entries: VecDeque::from(entries),
            snapshot_index: index,
            snapshot_term: term,
            committed: committed.max(index),
            applied: index,
            persisted: 0,
            handed_to_persist: 0,
        };
        log.persisted = log.last_index();
        log.handed_to_persist = log.last_index();
        assert!(log.committed <= log.last_index(), "commit {} beyond log end {}", committed, log.last_index());
        log.assert_invariants();
        log
    }

    pub fn assert_invariants(&self) {
        assert!(self.snapshot_index <= self.applied);
        assert!(self.applied <= self.committed);
        assert!(self.committed <= self.last_index());
        if let Some(first) = self.entries.front() {
            assert_eq!(first.index, self.snapshot_index + 1);
            assert!(first.term >= self.snapshot_term);
        }
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    pub fn snapshot_term(&self) -> u64 {
        self.snapshot_term
    }

    pub fn first_index(&self) -> u64 {
        self.snapshot_index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries.back().map_or(self.snapshot_term, |entry| entry.term)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The term of entry `index`, or None when it is compacted away or not yet in the log.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// Raft paper §5.4.1: a candidate's log is at least as up to date as ours if its last
    /// term is higher, or equal with an index at least as high.
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// The largest index `<= index` whose term is `<= term`: used on both sides of a
    /// rejected append to skip a whole term of conflicting entries at once (fast backtracking).
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> u64 {
        let mut candidate = index.min(self.last_index());
        while candidate > self.snapshot_index {
            match self.term(candidate) {
                Some(found) if found <= term => return candidate,
                _ => candidate -= 1,
            }
        }
        candidate
    }

    /// The first index in `entries` whose term disagrees with ours or that we do not hold,
    /// or 0 when all of them are already present.
    fn find_conflict(&self, entries: &[Entry]) -> u64 {
        for entry in entries {
            if !self.match_term(entry.index, entry.term) {
                return entry.index;
            }
        }
        0
    }

    /// AppendEntries receiver (Figure 2, steps 2-5). Returns the index of the last new entry
    /// when the log matched at (`index`, `log_term`), None when the leader must back up.
    pub fn maybe_append(&mut self, index: u64, log_term: u64, committed: u64, entries: &mut Vec<Entry>) -> Option<u64> {
        if !self.match_term(index, log_term) {
            return None;
        }
        let last_new_index = index + entries.len() as u64;
        let conflict = self.find_conflict(entries);
        if conflict != 0 {
            assert!(
                conflict > self.committed,
                "conflict at {} with committed entry (committed {})",
                conflict,
                self.committed
            );
            let skip = (conflict - index - 1) as usize;
            self.append_from(entries, skip);
        }
        self.commit_to(committed.min(last_new_index));
        Some(last_new_index)
    }

    fn append_from(&mut self, entries: &mut Vec<Entry>, skip: usize) {
        let first_new = entries[skip].index;
        self.truncate_from(first_new);
        for entry in entries.drain(skip..) {
            self.entries.push_back(entry);
        }
    }

    /// Drops every entry at `index` and after; the indexes that described them fall back.
    fn truncate_from(&mut self, index: u64) {
        assert!(index > self.committed, "truncating committed entry {}", index);
        if index <= self.last_index() {
            let keep = (index - self.snapshot_index - 1) as usize;
            self.entries.truncate(keep);
        }
        self.persisted = self.persisted.min(index - 1);
        self.handed_to_persist = self.handed_to_persist.min(index - 1);
    }

    /// Leader-side append of new entries at the end of the log.
    pub fn append(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1);
        assert!(entry.term >= self.last_term());
        self.entries.push_back(entry);
    }

    pub fn commit_to(&mut self, index: u64) {
        if index > self.committed {
            assert!(index <= self.last_index(), "commit {} beyond last index {}", index, self.last_index());
            self.committed = index;
        }
    }

    /// Raft paper §5.4.2: a leader commits by counting replicas only for entries of its term.
    pub fn maybe_commit(&mut self, index: u64, term: u64) -> bool {
        if index > self.committed && self.term(index) == Some(term) {
            self.commit_to(index);
            return true;
        }
        false
    }

    /// Records that everything up to (`index`, `term`) is on disk, unless that entry has
    /// since been replaced (then a later Ready will persist its replacement).
    pub fn persisted_to(&mut self, index: u64, term: u64) {
        if index > self.persisted && self.match_term(index, term) {
            self.persisted = index;
        }
    }

    /// Entries in [`low`, `high`), at least one when any, stopping before `max_bytes`.
    pub fn slice(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, Compacted> {
        let mut out = Vec::new();
        self.slice_into(low, high, max_bytes, &mut out)?;
        Ok(out)
    }

    pub fn slice_into(&self, low: u64, high: u64, max_bytes: u64, out: &mut Vec<Entry>) -> Result<(), Compacted> {
        if low <= self.snapshot_index {
            return Err(Compacted);
        }
        assert!(high <= self.last_index() + 1, "slice [{}, {}) beyond last {}", low, high, self.last_index());
        let mut size_bytes = 0u64;
        for index in low..high {
            let entry = &self.entries[(index - self.snapshot_index - 1) as usize];
            size_bytes += entry.data.len() as u64 + 16;
            if !out.is_empty() && size_bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(())
    }

    /// Entries that are committed, on disk and not yet handed to the application.
    pub fn next_committed(&self, max_bytes: u64) -> Vec<Entry> {
        let high = self.committed.min(self.persisted);
        if high <= self.applied {
            return Vec::new();
        }
        self.slice(self.applied + 1, high + 1, max_bytes).expect("unapplied entries are never compacted")
    }

    pub fn has_next_committed(&self) -> bool {
        self.committed.min(self.persisted) > self.applied
    }

    pub fn applied_to(&mut self, index: u64) {
        assert!(index <= self.committed && index >= self.applied);
        self.applied = index;
    }

    /// Drops entries up to and including `index`, which must be applied (the snapshot that
    /// replaces them covers them).
    pub fn compact(&mut self, index: u64) {
        assert!(index <= self.applied, "compacting {} beyond applied {}", index, self.applied);
        if index <= self.snapshot_index {
            return;
        }
        let term = self.term(index).expect("compaction index is in the log");
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.assert_invariants();
    }

    /// Replaces the whole log by a snapshot received from the leader.
    pub fn restore_snapshot(&mut self, index: u64, term: u64) {
        assert!(index > self.committed);
        self.entries.clear();
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.committed = index;
        self.applied = index;
        self.persisted = self.persisted.min(index - 1);
        self.handed_to_persist = index;
    }

    /// Entries not yet handed out to be persisted.
    pub fn unpersisted_entries(&self) -> Vec<Entry> {
        let low = self.handed_to_persist.max(self.snapshot_index) + 1;
        let high = self.last_index() + 1;
        if low >= high {
            return Vec::new();
        }
        self.slice(low, high, u64::MAX).expect("unpersisted entries are in memory")
    }

    pub fn has_unpersisted_entries(&self) -> bool {
        self.last_index() > self.handed_to_persist.max(self.snapshot_index)
    }

    pub fn iter_from(&self, index: u64) -> impl Iterator<Item = &Entry> {
        let skip = index.saturating_sub(self.snapshot_index + 1) as usize;
        self.entries.iter().skip(skip)
    }

    /// Reserves room so that steady-state appends do not reallocate.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(first_index: u64, terms: &[u64]) -> Vec<Entry> {
        terms
            .iter()
            .enumerate()
            .map(|(offset, term)| Entry { index: first_index + offset as u64, term: *term, ..Default::default() })
            .collect()
    }

    #[test]
    fn append_truncates_conflicting_suffix_only() {
        let mut log = RaftLog::restore(0, 0, entries(1, &[1, 1, 2, 2]), 1);
        let mut incoming = entries(3, &[2, 3, 3]);
        assert_eq!(log.maybe_append(2, 1, 2, &mut incoming), Some(5));
        let terms: Vec<u64> = (1..=5).map(|index| log.term(index).unwrap()).collect();
        assert_eq!(terms, vec![1, 1, 2, 3, 3]);
        assert_eq!(log.committed, 2);
        assert_eq!(log.persisted, 3, "the replaced entry is no longer on disk");
        let mut mismatched = entries(7, &[3]);
        assert_eq!(log.maybe_append(6, 3, 5, &mut mismatched), None);
    }

    #[test]
    fn duplicate_append_keeps_longer_log() {
        let mut log = RaftLog::restore(0, 0, entries(1, &[1, 1, 1]), 0);
        let mut old = entries(1, &[1]);
        assert_eq!(log.maybe_append(0, 0, 0, &mut old), Some(1));
        assert_eq!(log.last_index(), 3);
    }

    #[test]
    fn find_conflict_by_term_skips_a_whole_term() {
        let log = RaftLog::restore(0, 0, entries(1, &[1, 1, 4, 4, 4, 4, 5]), 0);
        assert_eq!(log.find_conflict_by_term(7, 3), 2);
        assert_eq!(log.find_conflict_by_term(7, 4), 6);
        assert_eq!(log.find_conflict_by_term(20, 9), 7);
        assert_eq!(log.find_conflict_by_term(7, 0), 0);
    }

    #[test]
    fn compaction_and_snapshot_restore_move_the_offset() {
        let mut log = RaftLog::restore(0, 0, entries(1, &[1, 1, 2, 2]), 4);
        log.applied_to(3);
        log.compact(3);
        assert_eq!((log.first_index(), log.last_index(), log.term(3), log.term(2)), (4, 4, Some(2), None));
        assert!(log.slice(3, 5, u64::MAX).is_err());
        log.restore_snapshot(10, 3);
        assert_eq!((log.last_index(), log.last_term(), log.committed, log.applied), (10, 3, 10, 10));
        assert!(!log.has_next_committed(), "nothing applies before the snapshot is persisted");
        log.persisted_to(10, 3);
        assert_eq!(log.persisted, 10);
    }
}
