//! etcd's `--strict-reconfig-check` (on by default): a membership change that would leave
//! the cluster without a quorum of started, connected voters is refused before it is
//! proposed, with etcd's errors (its server.go `mayAddMember`, `mayRemoveMember`,
//! `mayPromoteMember` and membership/cluster.go `IsReadyTo*`).
//!
//! The member that takes the request checks it against what it knows: the membership (a
//! member is started once it has a name: a founding member from `--initial-cluster`, an
//! added one when it publishes its attributes) and its peers' connections to it (the
//! transport's `active_since`). A peer counts as connected only after `HEALTH_INTERVAL`
//! without a break, so the checks refuse for five seconds after a member starts, as etcd's.
//! A promotion is checked by the leader, which alone knows whether the learner caught up.

use std::time::{Duration, Instant};

use crate::api::errors::{self, Status};
use crate::api::pb::etcdserverpb as pb;

/// How long a peer must have been connected to count as healthy (etcd's HealthInterval).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// The cluster as one member sees it when it checks a change.
pub struct View<'a> {
    pub members: &'a [pb::Member],
    pub local: u64,
    /// Since when a peer has been connected to this member (None: it is not).
    pub connected_since: &'a dyn Fn(u64) -> Option<Instant>,
    pub now: Instant,
}

impl View<'_> {
    fn voters(&self) -> impl Iterator<Item = &pb::Member> {
        self.members.iter().filter(|member| !member.is_learner)
    }

    /// etcd's isConnectedSince(now - HealthInterval); this member always is.
    fn connected_long_enough(&self, id: u64) -> bool {
        id == self.local
            || (self.connected_since)(id)
                .is_some_and(|since| self.now.saturating_duration_since(since) > HEALTH_INTERVAL)
    }

    /// MemberAdd: a new voter must not leave fewer started voters than its quorum (except
    /// the second member of a one-member cluster), and this member must have been connected
    /// to every voter for a while.
    pub fn may_add(&self, learner: bool) -> Result<(), Status> {
        if !learner {
            let members = 1 + self.voters().count();
            let started = self.voters().filter(|member| started(member)).count();
            let second_of_one = started == 1 && members == 2;
            if !second_of_one && started < quorum(members) {
                return Err(errors::NOT_ENOUGH_STARTED_MEMBERS);
            }
        }
        if !self.voters().all(|member| self.connected_long_enough(member.id)) {
            return Err(errors::UNHEALTHY_CLUSTER);
        }
        Ok(())
    }

    /// MemberRemove: a learner goes freely; a voter only if the started voters left are a
    /// quorum, and, unless it is down already, if the voters connected for a while would
    /// still be a quorum without it.
    pub fn may_remove(&self, id: u64) -> Result<(), Status> {
        if self.members.iter().any(|member| member.id == id && member.is_learner) {
            return Ok(());
        }
        let rest = self.voters().filter(|member| member.id != id);
        let (members, started) = rest.fold((0, 0), |(n, s), member| (n + 1, s + usize::from(started(member))));
        if started < quorum(members) {
            return Err(errors::NOT_ENOUGH_STARTED_MEMBERS);
        }
        if id != self.local && (self.connected_since)(id).is_none() {
            return Ok(());
        }
        let voters = self.voters().count();
        let active = self.voters().filter(|member| self.connected_long_enough(member.id)).count();
        if active.saturating_sub(1) < quorum(voters - 1) {
            return Err(errors::UNHEALTHY_CLUSTER);
        }
        Ok(())
    }

    /// MemberPromote: the started voters and the learner (counted as started, as etcd 3.5
    /// does; 3.4 did not, and could not promote the learner of a one-member cluster) must
    /// be a quorum of the voters to be.
    pub fn may_promote(&self) -> Result<(), Status> {
        let members = 1 + self.voters().count();
        let started = 1 + self.voters().filter(|member| started(member)).count();
        if started < quorum(members) {
            return Err(errors::NOT_ENOUGH_STARTED_MEMBERS);
        }
        Ok(())
    }
}

fn started(member: &pb::Member) -> bool {
    !member.name.is_empty()
}

pub(super) fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, learner: bool) -> pb::Member {
        pb::Member { id, name: name.to_owned(), is_learner: learner, ..Default::default() }
    }

    /// Members 1 (this one), 2 and 3 started; `connected` peers connected for a minute.
    fn check<T>(members: &[pb::Member], connected: &[u64], f: impl FnOnce(&View) -> T) -> T {
        let now = Instant::now() + Duration::from_secs(120);
        let connected = connected.to_vec();
        let since = move |id: u64| connected.contains(&id).then(|| now - Duration::from_secs(60));
        f(&View { members, local: 1, connected_since: &since, now })
    }

    fn three() -> Vec<pb::Member> {
        vec![member(1, "a", false), member(2, "b", false), member(3, "c", false)]
    }

    #[test]
    fn an_add_needs_every_voter_connected_for_the_health_interval() {
        assert_eq!(check(&three(), &[2, 3], |v| v.may_add(false)), Ok(()));
        assert_eq!(check(&three(), &[2, 3], |v| v.may_add(true)), Ok(()));
        assert_eq!(check(&three(), &[2], |v| v.may_add(false)), Err(errors::UNHEALTHY_CLUSTER));
        assert_eq!(check(&three(), &[2], |v| v.may_add(true)), Err(errors::UNHEALTHY_CLUSTER));
        // Connected, but for less than the interval.
        let members = three();
        let now = Instant::now() + Duration::from_secs(120);
        let recent = |_id: u64| Some(now - Duration::from_secs(1));
        let view = View { members: &members, local: 1, connected_since: &recent, now };
        assert_eq!(view.may_add(false), Err(errors::UNHEALTHY_CLUSTER));
        let long = |_id: u64| Some(now - HEALTH_INTERVAL - Duration::from_millis(1));
        let view = View { members: &members, local: 1, connected_since: &long, now };
        assert_eq!(view.may_add(false), Ok(()));
    }

    #[test]
    fn an_add_that_leaves_too_few_started_voters_is_refused() {
        // One member may get a second (etcd's restore recipe), not a third before the second starts.
        let one = vec![member(1, "a", false)];
        assert_eq!(check(&one, &[], |v| v.may_add(false)), Ok(()));
        let two = vec![member(1, "a", false), member(2, "", false)];
        assert_eq!(check(&two, &[2], |v| v.may_add(false)), Err(errors::NOT_ENOUGH_STARTED_MEMBERS));
        // A learner does not count towards the quorum.
        assert_eq!(check(&two, &[2], |v| v.may_add(true)), Ok(()));
        // Five voters, two unstarted: a sixth would need four started.
        let mut five = three();
        five.extend([member(4, "", false), member(5, "", false)]);
        assert_eq!(check(&five, &[2, 3, 4, 5], |v| v.may_add(false)), Err(errors::NOT_ENOUGH_STARTED_MEMBERS));
        assert_eq!(check(&five[..4], &[2, 3, 4], |v| v.may_add(false)), Ok(()));
    }

    #[test]
    fn a_remove_keeps_a_quorum_of_connected_voters() {
        // Member 3 is down: removing it is fine, removing 2 would leave 1 of 2 connected.
        assert_eq!(check(&three(), &[2], |v| v.may_remove(3)), Ok(()));
        assert_eq!(check(&three(), &[2], |v| v.may_remove(2)), Err(errors::UNHEALTHY_CLUSTER));
        assert_eq!(check(&three(), &[2], |v| v.may_remove(1)), Err(errors::UNHEALTHY_CLUSTER));
        assert_eq!(check(&three(), &[2, 3], |v| v.may_remove(2)), Ok(()));
        assert_eq!(check(&three(), &[2, 3], |v| v.may_remove(1)), Ok(()));
        // Learners go freely.
        let mut with_learner = three();
        with_learner.push(member(4, "d", true));
        assert_eq!(check(&with_learner, &[], |v| v.may_remove(4)), Ok(()));
        // Two unstarted voters of four: the two started left are not a quorum of three.
        let four = vec![member(1, "a", false), member(2, "b", false), member(3, "", false), member(4, "", false)];
        assert_eq!(check(&four, &[2, 3, 4], |v| v.may_remove(2)), Err(errors::NOT_ENOUGH_STARTED_MEMBERS));
    }

    #[test]
    fn a_promotion_counts_the_learner_as_started() {
        let one_and_learner = vec![member(1, "a", false), member(2, "b", true)];
        assert_eq!(check(&one_and_learner, &[], |v| v.may_promote()), Ok(()));
        let unstarted = vec![member(1, "a", false), member(2, "", false), member(3, "", false), member(4, "d", true)];
        assert_eq!(check(&unstarted, &[], |v| v.may_promote()), Err(errors::NOT_ENOUGH_STARTED_MEMBERS));
    }
}
