//! The rules that turn a sequence of entry and snapshot-marker records into a Raft log.
//! The writer applies them as it appends and recovery applies them as it replays, so the log a
//! process had in memory is the log it gets back after a restart.
//!
//! Worked example (indexes only):
//! ```text
//! records            log afterwards   why
//! 5 6 7              5..=7            the first entry starts the log
//! 6                  5..=6            an index at or below the last truncates the suffix (a
//!                                     Raft log conflict): etcd's WAL rule
//! marker 4           5..=6            a snapshot below the log's end keeps it
//! marker 5 replaces  (empty), next 6  unless it replaces the log (an installed snapshot)
//! marker 20          (empty), next 21 a snapshot beyond the log replaces it
//! 21 22              21..=22
//! 30                 replay: gap      only legal when released segments held the entries
//!                                     between, which a later snapshot marker must cover
//! ```

use std::collections::VecDeque;

/// A contiguous run of entries `[next_index - len, next_index)` with one item each.
#[derive(Debug)]
pub struct EntryLog<T> {
    items: VecDeque<T>,
    /// The index the next entry may take; None before the first entry or marker.
    next_index: Option<u64>,
}

impl<T> Default for EntryLog<T> {
    fn default() -> Self {
        EntryLog { items: VecDeque::new(), next_index: None }
    }
}

impl<T> EntryLog<T> {
    /// Index of the first item (meaningful when not empty).
    pub fn first_index(&self) -> Option<u64> {
        self.next_index.map(|next| next - self.items.len() as u64)
    }

    /// Index of the last item, or the snapshot index the log continues from.
    pub fn last_index(&self) -> Option<u64> {
        self.next_index.map(|next| next - 1)
    }

    pub fn next_index(&self) -> Option<u64> {
        self.next_index
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn get(&self, index: u64) -> Option<&T> {
        let first = self.first_index()?;
        if index < first {
            return None;
        }
        self.items.get((index - first) as usize)
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// Would an entry at `index` leave a gap after the last one?
    pub fn is_gap(&self, index: u64) -> bool {
        matches!(self.next_index, Some(next) if index > next)
    }

    /// Appends the entry at `index`, dropping any entries at or after it first. A gap restarts
    /// the log at `index`; the writer refuses gaps before calling this, and recovery records
    /// them (see the module doc).
    pub fn push(&mut self, index: u64, item: T) {
        assert!(index > 0, "Raft indexes start at 1");
        match self.next_index {
            Some(next) if index <= next => self.truncate_from(index),
            _ => self.items.clear(),
        }
        self.items.push_back(item);
        self.next_index = Some(index + 1);
        assert_eq!(self.first_index().map(|first| first + self.items.len() as u64 - 1), Some(index));
    }

    /// Drops every entry at or after `index`; an empty log keeps its position.
    pub fn truncate_from(&mut self, index: u64) {
        let Some(first) = self.first_index() else { return };
        if self.items.is_empty() || index >= first + self.items.len() as u64 {
            return;
        }
        self.items.truncate(index.saturating_sub(first) as usize);
        self.next_index = Some(index.max(first));
        if index < first {
            // A conflict below everything we hold: the log restarts at `index`.
            self.next_index = Some(index);
        }
    }

    /// A snapshot at `snapshot_index`: if the log ends before it, or if the snapshot
    /// `replaces` the log, the log continues after it (and holds nothing).
    pub fn apply_snapshot(&mut self, snapshot_index: u64, replaces: bool) {
        match self.next_index {
            Some(next) if next > snapshot_index && !replaces => {}
            _ => {
                self.items.clear();
                self.next_index = Some(snapshot_index + 1);
            }
        }
    }

    /// Forgets entries below `index`.
    pub fn release_below(&mut self, index: u64) {
        let Some(first) = self.first_index() else { return };
        let drop_count = index.saturating_sub(first).min(self.items.len() as u64);
        self.items.drain(..drop_count as usize);
    }

    pub fn into_items(self) -> VecDeque<T> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indexes(log: &EntryLog<u64>) -> Vec<u64> {
        log.iter().copied().collect()
    }

    #[test]
    fn worked_example_from_the_module_doc() {
        let mut log = EntryLog::default();
        for index in [5, 6, 7] {
            log.push(index, index);
        }
        assert_eq!(indexes(&log), [5, 6, 7]);
        log.push(6, 6);
        assert_eq!(indexes(&log), [5, 6]);
        log.apply_snapshot(4, false);
        assert_eq!(indexes(&log), [5, 6], "a snapshot below the log's end keeps it");
        log.apply_snapshot(5, true);
        assert!(log.is_empty(), "a snapshot that replaces the log drops what is above it");
        assert_eq!(log.next_index(), Some(6));
        log.apply_snapshot(20, false);
        assert!(log.is_empty());
        assert_eq!(log.next_index(), Some(21));
        log.push(21, 21);
        log.push(22, 22);
        assert!(log.is_gap(30));
        assert_eq!(indexes(&log), [21, 22]);
        log.release_below(22);
        assert_eq!(indexes(&log), [22]);
        assert_eq!(log.first_index(), Some(22));
    }

    /// The rules restated as plainly as possible, to compare against.
    #[derive(Default)]
    struct Model {
        entries: Vec<u64>,
        next: Option<u64>,
    }

    impl Model {
        fn push(&mut self, index: u64) {
            if self.next.is_some_and(|next| index > next) {
                self.entries.clear();
            }
            self.entries.retain(|kept| *kept < index);
            self.entries.push(index);
            self.next = Some(index + 1);
        }

        fn truncate_from(&mut self, index: u64) {
            if self.entries.first().is_some_and(|first| index < *first) {
                self.entries.clear();
                self.next = Some(index);
            } else if self.entries.last().is_some_and(|last| index <= *last) {
                self.entries.retain(|kept| *kept < index);
                self.next = Some(index);
            }
        }

        fn apply_snapshot(&mut self, index: u64, replaces: bool) {
            if replaces || self.next.is_none_or(|next| next <= index) {
                self.entries.clear();
                self.next = Some(index + 1);
            }
        }
    }

    proptest::proptest! {
        // A failure prints its minimal case; no regression file is written into the tree.
        #![proptest_config(proptest::test_runner::Config {
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]
        #[test]
        fn matches_the_plain_model(operations in proptest::collection::vec((0u8..5, 1u64..40), 0..60)) {
            let (mut log, mut model) = (EntryLog::default(), Model::default());
            for (operation, index) in operations {
                match operation {
                    0 | 1 => { log.push(index, index); model.push(index); }
                    2 => { log.truncate_from(index); model.truncate_from(index); }
                    3 => { log.apply_snapshot(index, false); model.apply_snapshot(index, false); }
                    _ => { log.apply_snapshot(index, true); model.apply_snapshot(index, true); }
                }
                proptest::prop_assert_eq!(indexes(&log), model.entries.clone());
                proptest::prop_assert_eq!(log.next_index(), model.next);
                let expected_first = model.entries.first().copied().or(model.next);
                proptest::prop_assert_eq!(log.first_index(), expected_first);
            }
        }
    }

    #[test]
    fn truncation_below_the_first_entry_restarts() {
        let mut log = EntryLog::default();
        for index in 10..15 {
            log.push(index, index);
        }
        log.push(8, 8);
        assert_eq!(indexes(&log), [8]);
        log.truncate_from(3);
        assert!(log.is_empty());
        assert_eq!(log.next_index(), Some(3));
        log.truncate_from(1);
        assert_eq!(log.next_index(), Some(3), "nothing left to truncate");
    }
}
