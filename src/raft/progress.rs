//! What the leader knows about each follower's log, and how it paces replication to it.
//!
//! - `Probe`: we do not know where the follower's log ends; send one append per heartbeat
//!   interval (or per response) and back up on rejection.
//! - `Replicate`: the follower accepted our last append; stream appends optimistically,
//!   at most `Inflights::capacity` unacknowledged messages at a time.
//! - `Snapshot`: the entries the follower needs are compacted; one snapshot is in flight and
//!   nothing else is sent until it is acknowledged (or times out).
//!
//! Invariant: `matched < next_index`; in `Replicate`, `next_index - 1` is the last index sent.

/// A ring of the last index of each unacknowledged append, allocated once.
#[derive(Debug, Clone)]
pub struct Inflights {
    last_indexes: Vec<u64>,
    start: usize,
    count: usize,
}

impl Inflights {
    pub fn new(capacity: usize) -> Inflights {
        assert!(capacity > 0);
        Inflights { last_indexes: vec![0; capacity], start: 0, count: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.last_indexes.len()
    }

    pub fn full(&self) -> bool {
        self.count == self.capacity()
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn add(&mut self, last_index: u64) {
        assert!(!self.full(), "inflight window overflow");
        let slot = (self.start + self.count) % self.capacity();
        if self.count > 0 {
            let previous = self.last_indexes[(slot + self.capacity() - 1) % self.capacity()];
            assert!(last_index > previous, "inflight indexes must increase");
        }
        self.last_indexes[slot] = last_index;
        self.count += 1;
    }

    /// Frees every append whose last index is `<= index` (acknowledged).
    pub fn free_to(&mut self, index: u64) {
        while self.count > 0 && self.last_indexes[self.start] <= index {
            self.start = (self.start + 1) % self.capacity();
            self.count -= 1;
        }
    }

    pub fn free_first(&mut self) {
        if self.count > 0 {
            self.start = (self.start + 1) % self.capacity();
            self.count -= 1;
        }
    }

    pub fn reset(&mut self) {
        self.start = 0;
        self.count = 0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot,
}

#[derive(Debug, Clone)]
pub struct Progress {
    pub matched: u64,
    pub next_index: u64,
    pub state: ProgressState,
    /// In Probe: an append was sent and we wait for its answer or the next heartbeat.
    pub probe_sent: bool,
    /// In Snapshot: the index of the snapshot in flight.
    pub pending_snapshot: u64,
    /// Ticks spent in Snapshot state; the snapshot is presumed lost after a bound.
    pub snapshot_ticks: u32,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Heartbeat responses in a row in Replicate state without `matched` moving although
    /// entries are outstanding: a dropped append that the follower cannot report.
    pub stalled_heartbeats: u32,
    pub is_learner: bool,
    pub inflights: Inflights,
}

impl Progress {
    pub fn new(next_index: u64, inflight_max: usize, is_learner: bool) -> Progress {
        Progress {
            matched: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: 0,
            snapshot_ticks: 0,
            recent_active: false,
            stalled_heartbeats: 0,
            is_learner,
            inflights: Inflights::new(inflight_max),
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.snapshot_ticks = 0;
        self.stalled_heartbeats = 0;
        self.state = state;
        self.inflights.reset();
    }

    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next_index = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next_index = self.matched + 1;
        }
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_index = self.matched + 1;
    }

    pub fn become_snapshot(&mut self, snapshot_index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// A successful append response up to `index`. Returns whether it told us anything new.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let mut updated = false;
        if self.matched < index {
            self.matched = index;
            self.stalled_heartbeats = 0;
            updated = true;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        updated
    }

    /// A rejected append at `rejected` with the follower's hint. Returns false for a stale
    /// rejection that we ignore.
    pub fn maybe_decrease_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next_index = self.matched + 1;
            return true;
        }
        if self.next_index == 0 || self.next_index - 1 != rejected {
            return false;
        }
        self.next_index = (rejected.min(match_hint + 1)).max(self.matched + 1).max(1);
        self.probe_sent = false;
        true
    }

    /// Records that an append ending at `last_index` was sent.
    pub fn sent_entries(&mut self, entry_count: usize, last_index: u64) {
        match self.state {
            ProgressState::Replicate => {
                if entry_count > 0 {
                    self.next_index = last_index + 1;
                    self.inflights.add(last_index);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => unreachable!("no appends in snapshot state"),
        }
    }

    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflights_wrap_around_and_free_in_order() {
        let mut inflights = Inflights::new(3);
        for last in [10, 20, 30] {
            inflights.add(last);
        }
        assert!(inflights.full());
        inflights.free_to(20);
        assert_eq!(inflights.count(), 1);
        inflights.add(40);
        inflights.add(50);
        assert!(inflights.full());
        inflights.free_to(45);
        assert_eq!(inflights.count(), 1);
        inflights.free_first();
        assert_eq!(inflights.count(), 0);
    }

    #[test]
    fn probe_rejection_backs_up_to_the_hint_and_ignores_stale_rejections() {
        let mut progress = Progress::new(11, 4, false);
        assert!(progress.maybe_decrease_to(10, 4));
        assert_eq!(progress.next_index, 5);
        assert!(!progress.maybe_decrease_to(10, 2), "a rejection of an index we no longer probe is stale");
        progress.maybe_update(4);
        progress.become_replicate();
        progress.sent_entries(3, 8);
        assert_eq!(progress.next_index, 9);
        assert!(!progress.maybe_decrease_to(3, 0), "at or below matched: stale");
        assert!(progress.maybe_decrease_to(6, 0));
        assert_eq!(progress.next_index, 5);
    }

    #[test]
    fn snapshot_state_pauses_until_acknowledged() {
        let mut progress = Progress::new(1, 4, false);
        progress.become_snapshot(100);
        assert!(progress.is_paused());
        progress.maybe_update(100);
        progress.become_probe();
        assert_eq!(progress.next_index, 101);
        assert!(!progress.is_paused());
    }
}
