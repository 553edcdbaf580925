//! The numbered Ready: everything the state machine asks its driver to do.
//!
//! Handle a Ready in this order:
//! 1. send `messages` (allowed before persisting: only a leader produces them);
//! 2. persist `snapshot` (if any), then `entries` (an entry at index i replaces any entry
//!    at i and after it on disk), then `hard_state` — atomically or in that order;
//! 3. call `on_persist_ready(number)` (any later moment; persistence of Ready n implies
//!    that of every Ready before it), then send `messages_after_persist`;
//! 4. install `snapshot` into the state machine, apply `committed_entries` in order (they
//!    are already on disk, so this may overlap step 2), serve `read_states` once applied.

use crate::raft::pb::{Entry, HardState, Message, Snapshot};
use crate::raft::raft::{Raft, Role};
use crate::raft::read_only::ReadState;

const MESSAGES_CAPACITY: usize = 64;

#[derive(Debug, Default)]
pub struct Ready {
    pub number: u64,
    pub role: Role,
    pub leader_id: u64,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub messages_after_persist: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// Whether the driver must persist something before sending `messages_after_persist`.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }
}

impl Raft {
    fn flush(&mut self) {
        if self.append_pending && self.role == Role::Leader {
            self.broadcast_append();
        }
        self.append_pending = false;
        self.start_read_round();
    }

    pub fn has_ready(&self) -> bool {
        (self.append_pending && self.role == Role::Leader)
            || !self.messages.is_empty()
            || !self.messages_after_persist.is_empty()
            || self.hard_state() != self.hard_state_handed
            || self.snapshot_to_install.is_some()
            || self.log.has_unpersisted_entries()
            || self.log.has_next_committed()
            || !self.read_states.is_empty()
            || (self.role == Role::Leader && self.reads.has_open() && self.committed_in_current_term())
    }

    /// Takes everything there is to do, numbered. Call `on_persist_ready` with the number
    /// once its persistent part is on disk.
    pub fn ready(&mut self) -> Ready {
        self.flush();
        self.ready_number += 1;
        let number = self.ready_number;
        let hard_state = self.hard_state();
        let hard_state_changed = hard_state != self.hard_state_handed;
        self.hard_state_handed = hard_state;
        let snapshot = self.snapshot_to_install.take();
        let entries = self.log.unpersisted_entries();
        let mut persisted_mark = None;
        if let Some(metadata) = snapshot.as_ref().and_then(|snapshot| snapshot.metadata.as_ref()) {
            persisted_mark = Some((metadata.index, metadata.term));
        }
        if let Some(last) = entries.last() {
            persisted_mark = Some((last.index, last.term));
            self.log.handed_to_persist = last.index;
        }
        if let Some((index, term)) = persisted_mark {
            self.readies_unpersisted.push_back((number, index, term));
        }
        let committed_entries = self.log.next_committed(self.config.committed_size_bytes_max);
        if let Some(last) = committed_entries.last() {
            self.log.applied_to(last.index);
        }
        Ready {
            number,
            role: self.role,
            leader_id: self.leader_id,
            hard_state: hard_state_changed.then_some(hard_state),
            snapshot,
            entries,
            // Fresh buffers with room, so that step() itself does not allocate to queue.
            messages: std::mem::replace(&mut self.messages, Vec::with_capacity(MESSAGES_CAPACITY)),
            messages_after_persist: std::mem::replace(
                &mut self.messages_after_persist,
                Vec::with_capacity(MESSAGES_CAPACITY),
            ),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
        }
    }

    /// Everything handed out in Readies up to `number` is on disk.
    pub fn on_persist_ready(&mut self, number: u64) {
        assert!(number <= self.ready_number, "Ready {} was never handed out", number);
        while let Some(&(ready, index, term)) = self.readies_unpersisted.front() {
            if ready > number {
                break;
            }
            self.readies_unpersisted.pop_front();
            self.log.persisted_to(index, term);
        }
        if self.role == Role::Leader {
            let persisted = self.log.persisted;
            if let Some(own) = self.progress.get_mut(&self.id) {
                own.matched = own.matched.max(persisted);
            }
            if self.maybe_commit() && self.role == Role::Leader {
                self.broadcast_append();
            }
        }
    }

    /// Ready without the copying: the driver of a benchmark can reuse its buffers.
    pub fn ready_number(&self) -> u64 {
        self.ready_number
    }
}
