//! Leader side of log replication: appends, heartbeats, the commit rule, ReadIndex rounds.

use crate::raft::log::Compacted;
use crate::raft::pb::{Message, MessageType};
use crate::raft::progress::ProgressState;
use crate::raft::raft::{Raft, Role, NONE};
use crate::raft::read_only::{decode_round, encode_round, ReadRequest, ReadState};

/// Ticks a snapshot may stay unacknowledged before the leader presumes it lost.
const SNAPSHOT_TIMEOUT_ELECTIONS: u32 = 3;
/// Heartbeat answers without progress before a Replicate follower is probed again.
const STALLED_HEARTBEATS_MAX: u32 = 2;

impl Raft {
    /// Sends `to` the entries it lacks (or a snapshot). Returns whether a message went out.
    /// With `send_if_empty` an append without entries still goes out (to carry the commit).
    pub(crate) fn send_append(&mut self, to: u64, send_if_empty: bool) -> bool {
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get(&to) else { return false };
        if progress.is_paused() || to == self.id {
            return false;
        }
        let next_index = progress.next_index;
        let prev_index = next_index - 1;
        let Some(prev_term) = self.log.term(prev_index) else { return self.send_snapshot(to) };
        let mut entries = Vec::new();
        if next_index <= last_index {
            let max_bytes = self.config.append_size_bytes_max;
            if let Err(Compacted) = self.log.slice_into(next_index, last_index + 1, max_bytes, &mut entries) {
                return self.send_snapshot(to);
            }
        }
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        let entry_count = entries.len();
        let sent_last = prev_index + entry_count as u64;
        let progress = self.progress.get_mut(&to).expect("checked above");
        progress.sent_entries(entry_count, sent_last);
        let commit = self.log.committed;
        self.send(Message {
            msg_type: MessageType::MsgApp as i32,
            to,
            index: prev_index,
            log_term: prev_term,
            entries,
            commit,
            ..Default::default()
        });
        true
    }

    fn send_snapshot(&mut self, to: u64) -> bool {
        let Some(snapshot) = self.snapshot.clone() else { return false };
        let snapshot_index = snapshot.metadata.as_ref().map_or(0, |metadata| metadata.index);
        let progress = self.progress.get_mut(&to).expect("snapshot target has progress");
        progress.become_snapshot(snapshot_index);
        self.send(Message {
            msg_type: MessageType::MsgSnap as i32,
            to,
            snapshot: Some(snapshot),
            ..Default::default()
        });
        true
    }

    pub(crate) fn broadcast_append(&mut self) {
        self.append_pending = false;
        for index in 0..self.progress.len() {
            let to = *self.progress.keys().nth(index).expect("index in range");
            if to != self.id {
                self.send_append(to, true);
            }
        }
    }

    /// Sends everything that is ready for `to` in as many appends as the window allows.
    fn send_append_loop(&mut self, to: u64) {
        while self.send_append(to, false) {}
    }

    pub(crate) fn broadcast_heartbeat(&mut self) {
        let context = self.reads.newest_round().map(encode_round).unwrap_or_default();
        let committed = self.log.committed;
        let targets: Vec<(u64, u64)> = self
            .progress
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, progress)| (*id, progress.matched))
            .collect();
        for (to, matched) in targets {
            // Never tell a follower to commit past what it is known to hold.
            let commit = committed.min(matched);
            self.send(Message {
                msg_type: MessageType::MsgHeartbeat as i32,
                to,
                commit,
                context: context.clone(),
                ..Default::default()
            });
        }
    }

    pub(crate) fn handle_append_response(&mut self, message: &Message) {
        let from = message.from;
        let first_index = self.log.first_index();
        let progress = self.progress.get_mut(&from).expect("leader checked membership");
        progress.recent_active = true;
        if message.reject {
            let mut next_probe = message.reject_hint;
            if message.log_term > 0 {
                next_probe = self.log.find_conflict_by_term(message.reject_hint, message.log_term);
            }
            let progress = self.progress.get_mut(&from).expect("present");
            if progress.maybe_decrease_to(message.index, next_probe) {
                if progress.state == ProgressState::Replicate {
                    progress.become_probe();
                }
                self.send_append(from, false);
            }
            return;
        }
        let was_paused = progress.is_paused();
        if !progress.maybe_update(message.index) {
            return;
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            // Caught up to the snapshot, or (it ignored an older snapshot) to entries we still hold.
            ProgressState::Snapshot
                if progress.matched >= progress.pending_snapshot || progress.matched + 1 >= first_index =>
            {
                progress.become_probe();
                progress.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => progress.inflights.free_to(message.index),
        }
        if self.maybe_commit() {
            if self.role != Role::Leader {
                return;
            }
            self.broadcast_append();
        } else if was_paused {
            // It may have missed the commit index while we held back: tell it.
            self.send_append(from, true);
        }
        self.send_append_loop(from);
        let matched = self.progress.get(&from).map_or(0, |progress| progress.matched);
        if self.role == Role::Leader && from == self.transfer_target && matched == self.log.last_index() {
            self.send_timeout_now(from);
        }
    }

    pub(crate) fn handle_heartbeat_response(&mut self, message: &Message) {
        let last_index = self.log.last_index();
        let progress = self.progress.get_mut(&message.from).expect("leader checked membership");
        progress.recent_active = true;
        progress.probe_sent = false;
        if progress.state == ProgressState::Replicate {
            // Entries sent but not acknowledged across several heartbeat answers: an
            // append was lost (the follower cannot tell us), so probe and resend.
            if progress.next_index > progress.matched + 1 {
                progress.stalled_heartbeats += 1;
                if progress.stalled_heartbeats > STALLED_HEARTBEATS_MAX {
                    progress.become_probe();
                }
            }
            if progress.state == ProgressState::Replicate && progress.inflights.full() {
                progress.inflights.free_first();
            }
        }
        if progress.matched < last_index {
            self.send_append(message.from, false);
        }
        if let Some(round) = decode_round(&message.context) {
            self.ack_read_round(round, message.from);
        }
    }

    /// Advances the commit index to the highest index stored on a quorum of voters, if that
    /// entry is of the current term (paper §5.4.2: older entries commit only indirectly).
    pub(crate) fn maybe_commit(&mut self) -> bool {
        self.scratch_matched.clear();
        for voter in &self.conf.voters {
            let matched = if *voter == self.id {
                self.log.persisted
            } else {
                self.progress.get(voter).map_or(0, |progress| progress.matched)
            };
            self.scratch_matched.push(matched);
        }
        if self.scratch_matched.is_empty() {
            return false;
        }
        self.scratch_matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = self.scratch_matched[self.quorum() - 1];
        let committed_before = self.log.committed;
        if !self.log.maybe_commit(quorum_index, self.term) {
            return false;
        }
        let term = self.term;
        let newly_committed_bytes: u64 = self
            .log
            .iter_from(committed_before + 1)
            .take((self.log.committed - committed_before) as usize)
            .filter(|entry| entry.term == term)
            .map(|entry| entry.data.len() as u64)
            .sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(newly_committed_bytes);
        self.step_down_if_removed();
        true
    }

    pub(crate) fn tick_snapshots(&mut self) {
        let timeout_ticks = self.config.election_ticks * SNAPSHOT_TIMEOUT_ELECTIONS;
        for progress in self.progress.values_mut() {
            if progress.state == ProgressState::Snapshot {
                progress.snapshot_ticks += 1;
                if progress.snapshot_ticks > timeout_ticks {
                    progress.pending_snapshot = 0;
                    progress.become_probe();
                }
            }
        }
    }

    // ---------------------------------------------------------------- ReadIndex

    pub(crate) fn read_index_from(&mut self, context: Vec<u8>, from: u64) {
        assert!(self.role == Role::Leader);
        if self.committed_in_current_term() && self.asker_completes_quorum(from) {
            let index = self.log.committed;
            self.release_read(index, ReadRequest { context, from });
            return;
        }
        self.reads.push(ReadRequest { context, from });
    }

    /// Whether the leader and the member that asked for a read (`from`, maybe the leader
    /// itself) are a quorum of voters by themselves, so that the read needs no heartbeat round.
    ///
    /// A follower's MsgReadIndex is its answer to such a round. The follower sent it after
    /// its reads arrived, in the leader's term (step drops other terms' messages before they
    /// get here), so it had voted for no leader of a later term by then. The leader has not
    /// either. With the two a quorum, no later leader can have been elected, let alone have
    /// committed a write, before those reads arrived; the commit index now covers every write
    /// acknowledged before them, as a round would prove. This saves the round trip to the
    /// followers for every read sent to a follower of a 3-voter cluster. The answer covers
    /// only the asker's own reads (a read that reached the leader after the follower sent its
    /// message is not covered), so this never acknowledges a round.
    fn asker_completes_quorum(&self, from: u64) -> bool {
        let leader = usize::from(self.is_voter(self.id));
        let asker = usize::from(from != self.id && self.is_voter(from));
        leader + asker >= self.quorum()
    }

    pub(crate) fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    /// Called while building a Ready: all reads that arrived since the last one share a round.
    pub(crate) fn start_read_round(&mut self) {
        if self.role != Role::Leader || !self.reads.has_open() || !self.committed_in_current_term() {
            return;
        }
        let index = self.log.committed;
        let round = self.reads.start_round(index, self.id);
        if self.quorum() == 1 {
            self.ack_read_round(round, self.id);
            return;
        }
        self.broadcast_heartbeat();
    }

    fn ack_read_round(&mut self, round: u64, from: u64) {
        if !self.is_voter(from) {
            return;
        }
        let quorum = self.quorum();
        let voters = &self.conf.voters;
        let Some(acks) = self.reads.ack(round, from) else { return };
        if acks.iter().filter(|id| voters.contains(id)).count() < quorum {
            return;
        }
        let mut released = Vec::new();
        self.reads.release_through(round, &mut released);
        for (index, request) in released {
            self.release_read(index, request);
        }
    }

    fn release_read(&mut self, index: u64, request: ReadRequest) {
        if request.from == self.id || request.from == NONE {
            self.read_states.push(ReadState { index, request_context: request.context });
            return;
        }
        let entry = crate::raft::pb::Entry { data: request.context.into(), ..Default::default() };
        // The follower serves the read once it has applied `index`: tell it what is committed,
        // as a heartbeat would (never past what it is known to hold), so that it need not wait
        // for the next append or heartbeat when no round went before this answer.
        let matched = self.progress.get(&request.from).map_or(0, |progress| progress.matched);
        self.send(Message {
            msg_type: MessageType::MsgReadIndexResp as i32,
            to: request.from,
            index,
            commit: self.log.committed.min(matched),
            entries: vec![entry],
            ..Default::default()
        });
    }
}
