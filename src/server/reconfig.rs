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
//!
//! `validate` is etcd's other check, of a change against the membership (IDs, peer URLs,
//! the learner limit), made by the leader alone.

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

/// At most this many learners at once (etcd's maxLearners).
pub const LEARNERS_MAX: usize = 1;

/// The kinds of change a client asks for, as `validate` tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Add { learner: bool },
    Remove,
    Update,
    Promote,
}

/// etcd's check of a change against the membership (its membership/cluster.go
/// `ValidateConfigurationChange`): an added member's ID and peer URLs must be new and the
/// learners stay within `LEARNERS_MAX`; a removed, updated or promoted member must exist,
/// an updated one's URLs must be no other member's, a promoted one must be a learner.
/// etcd checks when it applies the change; ringd's leader checks when it proposes it,
/// against a table that holds every change in its log (the raft core's
/// `check_conf_change`), because Raft's configuration takes effect when appended.
pub fn validate(members: &[pb::Member], change: Change, member: &pb::Member) -> Result<(), Status> {
    let known = members.iter().find(|known| known.id == member.id);
    let urls_taken = || {
        members
            .iter()
            .filter(|other| other.id != member.id)
            .any(|other| other.peer_ur_ls.iter().any(|url| member.peer_ur_ls.contains(url)))
    };
    match change {
        Change::Add { learner } => {
            if known.is_some() {
                return Err(errors::MEMBER_EXIST);
            }
            if urls_taken() {
                return Err(errors::PEER_URL_EXIST);
            }
            if learner && members.iter().filter(|m| m.is_learner).count() >= LEARNERS_MAX {
                return Err(errors::TOO_MANY_LEARNERS);
            }
        }
        Change::Remove => {
            known.ok_or(errors::MEMBER_NOT_FOUND)?;
        }
        Change::Update => {
            known.ok_or(errors::MEMBER_NOT_FOUND)?;
            if urls_taken() {
                return Err(errors::PEER_URL_EXIST);
            }
        }
        Change::Promote => {
            if !known.ok_or(errors::MEMBER_NOT_FOUND)?.is_learner {
                return Err(errors::MEMBER_NOT_LEARNER);
            }
        }
    }
    Ok(())
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

    fn with_urls(id: u64, learner: bool, urls: &[&str]) -> pb::Member {
        let peer_ur_ls = urls.iter().map(|url| url.to_string()).collect();
        pb::Member { id, is_learner: learner, peer_ur_ls, ..Default::default() }
    }

    #[test]
    fn a_change_is_validated_against_the_membership_as_etcd_validates_it() {
        let table = vec![with_urls(1, false, &["http://a:1"]), with_urls(2, false, &["http://b:1", "http://b:2"])];
        let add = |learner| Change::Add { learner };
        assert_eq!(validate(&table, add(true), &with_urls(3, true, &["http://c:1"])), Ok(()));
        assert_eq!(validate(&table, add(false), &with_urls(2, false, &["http://c:1"])), Err(errors::MEMBER_EXIST));
        let taken = with_urls(3, false, &["http://c:1", "http://b:2"]);
        assert_eq!(validate(&table, add(false), &taken), Err(errors::PEER_URL_EXIST));
        let mut with_learner = table.clone();
        with_learner.push(with_urls(3, true, &["http://c:1"]));
        let second = with_urls(4, true, &["http://d:1"]);
        assert_eq!(validate(&with_learner, add(true), &second), Err(errors::TOO_MANY_LEARNERS));
        assert_eq!(validate(&with_learner, add(false), &with_urls(4, false, &["http://d:1"])), Ok(()));
        // An update may keep its own URLs, not take another's.
        assert_eq!(validate(&table, Change::Update, &with_urls(2, false, &["http://b:2"])), Ok(()));
        assert_eq!(
            validate(&table, Change::Update, &with_urls(2, false, &["http://a:1"])),
            Err(errors::PEER_URL_EXIST)
        );
        assert_eq!(validate(&table, Change::Update, &with_urls(9, false, &[])), Err(errors::MEMBER_NOT_FOUND));
        assert_eq!(validate(&table, Change::Remove, &with_urls(9, false, &[])), Err(errors::MEMBER_NOT_FOUND));
        assert_eq!(validate(&table, Change::Remove, &with_urls(1, false, &[])), Ok(()));
        assert_eq!(validate(&with_learner, Change::Promote, &with_urls(3, false, &[])), Ok(()));
        assert_eq!(
            validate(&with_learner, Change::Promote, &with_urls(2, false, &[])),
            Err(errors::MEMBER_NOT_LEARNER)
        );
    }

    #[test]
    fn a_promotion_counts_the_learner_as_started() {
        let one_and_learner = vec![member(1, "a", false), member(2, "b", true)];
        assert_eq!(check(&one_and_learner, &[], |v| v.may_promote()), Ok(()));
        let unstarted = vec![member(1, "a", false), member(2, "", false), member(3, "", false), member(4, "d", true)];
        assert_eq!(check(&unstarted, &[], |v| v.may_promote()), Err(errors::NOT_ENOUGH_STARTED_MEMBERS));
    }
}
