//! Membership changes, one member at a time (Raft thesis §4.1), and snapshots.
//!
//! A configuration entry takes effect on every member as soon as it is in that member's
//! log, committed or not; truncating it away reverts to the previous configuration. The
//! configuration in force is therefore a pure function of the log: `base_conf` (as of the
//! snapshot index) updated by each configuration entry after it (`conf_history`).
//!
//! Safety rule for the leader, checked in `propose_conf_change`: it appends a new
//! configuration entry only when (a) the previous one is committed and (b) it has committed
//! an entry of its own term. Two consecutive configurations then differ by one voter, so
//! their majorities overlap, and (b) closes the hole described on raft-dev in 2015 (a
//! leader of a new term could otherwise act on a configuration that conflicts with an
//! uncommitted one of an earlier term).

use prost::Message as _;

use crate::raft::pb::{ConfChange, ConfChangeType, ConfState, EntryType, Snapshot, SnapshotMetadata};
use crate::raft::progress::Progress;
use crate::raft::raft::{is_conf_entry, ProposeError, Raft, Role, NONE};

/// Applies one change to a configuration. Demoting a voter to learner directly is refused
/// (remove it, then add it as a learner).
pub fn apply_conf_change(conf: &ConfState, change: &ConfChange) -> ConfState {
    let mut next = conf.clone();
    let id = change.node_id;
    match ConfChangeType::try_from(change.change_type) {
        Ok(ConfChangeType::ConfChangeAddNode) => {
            next.learners.retain(|learner| *learner != id);
            if !next.voters.contains(&id) {
                next.voters.push(id);
            }
        }
        Ok(ConfChangeType::ConfChangeAddLearnerNode) => {
            if !next.voters.contains(&id) && !next.learners.contains(&id) {
                next.learners.push(id);
            }
        }
        Ok(ConfChangeType::ConfChangeRemoveNode) => {
            next.voters.retain(|voter| *voter != id);
            next.learners.retain(|learner| *learner != id);
        }
        Ok(ConfChangeType::ConfChangeUpdateNode) | Err(_) => {}
    }
    next.voters.sort_unstable();
    next.learners.sort_unstable();
    next
}

pub fn decode_conf_change(data: &[u8]) -> ConfChange {
    ConfChange::decode(data).expect("configuration entries hold a ConfChange")
}

impl Raft {
    /// Recomputes the configuration history from log index `from` on (entries before it
    /// are unchanged), then the membership in force.
    pub(crate) fn rebuild_conf_history(&mut self, from: u64) {
        self.conf_history.retain(|(index, _)| *index < from);
        let mut conf = self.conf_history.last().map_or_else(|| self.base_conf.clone(), |(_, conf)| conf.clone());
        let mut found = Vec::new();
        for entry in self.log.iter_from(from) {
            if is_conf_entry(entry) {
                conf = apply_conf_change(&conf, &decode_conf_change(&entry.data));
                found.push((entry.index, conf.clone()));
            }
        }
        self.conf_history.extend(found);
        self.apply_membership();
    }

    /// Makes the newest configuration in the log the one in force.
    pub(crate) fn apply_membership(&mut self) {
        let mut conf = self.conf_history.last().map_or_else(|| self.base_conf.clone(), |(_, conf)| conf.clone());
        conf.voters.sort_unstable();
        conf.learners.sort_unstable();
        if conf == self.conf && !self.progress.is_empty() {
            return;
        }
        let next_index = self.log.last_index() + 1;
        let inflight_max = self.config.inflight_messages_max;
        self.progress.retain(|id, _| conf.voters.contains(id) || conf.learners.contains(id));
        for (id, is_learner) in
            conf.voters.iter().map(|id| (*id, false)).chain(conf.learners.iter().map(|id| (*id, true)))
        {
            let progress =
                self.progress.entry(id).or_insert_with(|| Progress::new(next_index, inflight_max, is_learner));
            progress.is_learner = is_learner;
        }
        if let Some(own) = self.progress.get_mut(&self.id) {
            own.matched = self.log.persisted;
        }
        self.conf = conf;
        if self.role != Role::Leader && !self.promotable() && self.role != Role::Follower {
            self.become_follower(self.term, NONE);
        }
        if self.role == Role::Leader && self.transfer_target != NONE && !self.is_voter(self.transfer_target) {
            self.transfer_target = NONE;
        }
    }

    /// Proposes a one-member change (leader only). It takes effect when appended.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<u64, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader_id });
        }
        let previous_committed = self.conf_history.last().is_none_or(|(index, _)| *index <= self.log.committed);
        if !previous_committed || !self.committed_in_current_term() {
            return Err(ProposeError::ConfChangePending);
        }
        let next = apply_conf_change(&self.conf, &change);
        if change.node_id == NONE || next.voters.is_empty() {
            return Err(ProposeError::InvalidConfChange);
        }
        let index = self.propose_entry(EntryType::EntryConfChange, change.encode_to_vec().into())?;
        self.conf_history.push((index, next));
        self.apply_membership();
        Ok(index)
    }

    /// A leader that is not a voter of the committed configuration hands over (thesis
    /// §4.2.2): it tells everyone the new commit index, asks the most up-to-date voter to
    /// campaign at once, and steps down.
    pub(crate) fn step_down_if_removed(&mut self) {
        if self.role != Role::Leader || self.is_voter(self.id) {
            return;
        }
        let conf_committed = self.conf_history.last().is_none_or(|(index, _)| *index <= self.log.committed);
        if !conf_committed {
            return;
        }
        self.broadcast_append();
        let successor = self
            .conf
            .voters
            .iter()
            .filter_map(|id| self.progress.get(id).map(|progress| (progress.matched, *id)))
            .max();
        if let Some((matched, successor)) = successor {
            if matched == self.log.last_index() {
                self.send_timeout_now(successor);
            }
        }
        self.become_follower(self.term, NONE);
    }

    /// The configuration in force right after log index `index`.
    pub fn conf_state_at(&self, index: u64) -> ConfState {
        assert!(index >= self.log.snapshot_index(), "configuration at compacted index {}", index);
        self.conf_history
            .iter()
            .rev()
            .find(|(entry_index, _)| *entry_index <= index)
            .map_or_else(|| self.base_conf.clone(), |(_, conf)| conf.clone())
    }

    /// Records the application's snapshot of its state after applying `index` (which it
    /// must have applied) and returns it, metadata filled in, for the caller to persist. It
    /// becomes the snapshot sent to followers that fall behind the compacted log.
    pub fn create_snapshot(&mut self, index: u64, data: Vec<u8>) -> Snapshot {
        assert!(index <= self.log.applied, "snapshot at {} beyond applied {}", index, self.log.applied);
        assert!(index >= self.log.snapshot_index(), "snapshot at {} older than {}", index, self.log.snapshot_index());
        let term = self.log.term(index).expect("snapshot index is in the log");
        let metadata = SnapshotMetadata { conf_state: Some(self.conf_state_at(index)), index, term };
        let snapshot = Snapshot { data, metadata: Some(metadata) };
        self.snapshot = Some(snapshot.clone());
        snapshot
    }

    /// Drops log entries up to `index`, which the newest snapshot must cover.
    pub fn compact_log(&mut self, index: u64) {
        let snapshot_index =
            self.snapshot.as_ref().and_then(|snapshot| snapshot.metadata.as_ref()).map_or(0, |m| m.index);
        assert!(index <= snapshot_index, "compacting to {} beyond the snapshot at {}", index, snapshot_index);
        if index <= self.log.snapshot_index() {
            return;
        }
        self.base_conf = self.conf_state_at(index);
        self.conf_history.retain(|(entry_index, _)| *entry_index > index);
        self.log.compact(index);
    }
}
