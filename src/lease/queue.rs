//! A deadline queue with lazy deletion: a min-heap of (deadline, sequence number, lease).
//! The lease remembers the sequence number of its live entry (its `Slot`); an entry whose
//! number the lease no longer holds (the lease was revoked, renewed earlier, rescheduled) is
//! dropped when it reaches the top, or by `keep_room`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use super::LeaseId;

/// Stale entries tolerated beyond two per live lease before `keep_room` sweeps them.
const STALE_ENTRIES_SLACK: usize = 64;

/// A lease's live entry in a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub at: Duration,
    pub sequence: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at: Duration,
    sequence: u64,
    id: LeaseId,
}

#[derive(Debug, Default)]
pub(crate) struct DeadlineQueue {
    heap: BinaryHeap<Reverse<Entry>>,
    /// The next entry's sequence number; numbers are never reused, so a lease re-granted
    /// under a revoked lease's id never mistakes an old entry for its own.
    next_sequence: u64,
}

impl DeadlineQueue {
    pub fn new() -> DeadlineQueue {
        DeadlineQueue { heap: BinaryHeap::new(), next_sequence: 1 }
    }

    pub fn push(&mut self, id: LeaseId, at: Duration) -> Slot {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.heap.push(Reverse(Entry { at, sequence, id }));
        Slot { at, sequence }
    }

    /// Whether a push can happen without growing the heap (renew's allocation-free promise).
    pub fn has_room(&self) -> bool {
        self.heap.len() < self.heap.capacity()
    }

    /// Removes and returns the earliest entry due at `now` (deadline <= now), live or stale.
    pub fn pop_due(&mut self, now: Duration) -> Option<(LeaseId, Slot)> {
        let Reverse(top) = self.heap.peek()?;
        if top.at > now {
            return None;
        }
        let Reverse(entry) = self.heap.pop().expect("peeked");
        assert!(entry.at <= now);
        Some((entry.id, Slot { at: entry.at, sequence: entry.sequence }))
    }

    /// Sweeps stale entries once they outnumber the live ones, then reserves room for
    /// `pushes_reserved` more pushes. `is_live(id, sequence)` tells a live entry.
    pub fn keep_room(&mut self, live_leases: usize, pushes_reserved: usize, is_live: impl Fn(LeaseId, u64) -> bool) {
        if self.heap.len() > 2 * live_leases + STALE_ENTRIES_SLACK {
            self.heap.retain(|Reverse(entry)| is_live(entry.id, entry.sequence));
        }
        self.heap.reserve(pushes_reserved);
        assert!(self.heap.capacity() >= self.heap.len() + pushes_reserved);
    }

    /// Every entry (lease, slot), in no order: for `Lessor::check`.
    pub fn entries(&self) -> impl Iterator<Item = (LeaseId, Slot)> + '_ {
        self.heap.iter().map(|Reverse(entry)| (entry.id, Slot { at: entry.at, sequence: entry.sequence }))
    }
}
