//! The lessor: the replicated leases and, on the leader, their timing (see the module doc).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::queue::{DeadlineQueue, Slot};
use super::record::{LeaseRecord, LeaseSource, LeaseTable};
use super::{
    ceil_seconds, seconds, GrantError, LeaseCheckError, LeaseId, LeaseNotFound, LessorConfig, LoadError, RenewError,
    TimeToLiveError, TTL_MAX_SECONDS,
};
use crate::mvcc::RangeOptions;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// `load` reads the leased keys in this many pages (or fewer, of LOAD_PAGE_KEYS_MIN keys):
/// each range counts every key after its start, so fewer pages cost less time and more
/// pages hold fewer keys in memory at once.
const LOAD_PAGES: usize = 8;
const LOAD_PAGE_KEYS_MIN: usize = 4096;

/// One lease. Equality compares the replicated state only (what every member holds and the
/// store persists), not the leader's timing.
#[derive(Clone, Debug)]
pub struct Lease {
    id: LeaseId,
    /// What the grant asked for (persisted).
    ttl_requested_seconds: i64,
    /// max(requested, ttl_min_seconds): what the lease lives for.
    ttl_seconds: i64,
    /// The last checkpoint; 0 = none.
    remaining_ttl_seconds: i64,
    keys: BTreeSet<Box<[u8]>>,
    timing: Timing,
}

/// The leader's view of a lease (all None on a follower).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Timing {
    expiry: Option<Duration>,
    /// Its live entry in the expiry queue.
    expiry_slot: Option<Slot>,
    /// Its live entry in the checkpoint queue.
    checkpoint_slot: Option<Slot>,
    /// A renew asked the caller to propose the checkpoint that clears the remaining TTL.
    clear_proposed: bool,
}

impl PartialEq for Lease {
    fn eq(&self, other: &Lease) -> bool {
        self.id == other.id
            && self.ttl_requested_seconds == other.ttl_requested_seconds
            && self.ttl_seconds == other.ttl_seconds
            && self.remaining_ttl_seconds == other.remaining_ttl_seconds
            && self.keys == other.keys
    }
}

impl Eq for Lease {}

impl Lease {
    fn new(id: LeaseId, ttl_requested_seconds: i64, remaining_ttl_seconds: i64, ttl_min_seconds: i64) -> Lease {
        assert!(!id.is_none() && ttl_requested_seconds <= TTL_MAX_SECONDS && remaining_ttl_seconds >= 0);
        Lease {
            id,
            ttl_requested_seconds,
            ttl_seconds: ttl_requested_seconds.max(ttl_min_seconds),
            remaining_ttl_seconds,
            keys: BTreeSet::new(),
            timing: Timing::default(),
        }
    }

    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The TTL the lease lives for (the grant's, raised to the minimum): etcd's TTL().
    pub fn ttl_seconds(&self) -> i64 {
        self.ttl_seconds
    }

    /// The TTL the grant asked for, as persisted.
    pub fn ttl_requested_seconds(&self) -> i64 {
        self.ttl_requested_seconds
    }

    /// The last checkpointed remaining TTL; 0 = none.
    pub fn remaining_ttl_seconds(&self) -> i64 {
        self.remaining_ttl_seconds
    }

    /// The attached keys, in key order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.keys.iter().map(|key| &**key)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// When the lease expires (the leader only; None on a follower).
    pub fn expiry(&self) -> Option<Duration> {
        self.timing.expiry
    }

    /// What a promotion starts from: etcd's RemainingTTL().
    fn ttl_to_run_seconds(&self) -> i64 {
        if self.remaining_ttl_seconds > 0 {
            self.remaining_ttl_seconds
        } else {
            self.ttl_seconds
        }
    }

    fn record(&self) -> LeaseRecord {
        LeaseRecord { id: self.id.0, ttl: self.ttl_requested_seconds, remaining_ttl: self.remaining_ttl_seconds }
    }
}

/// A granted lease: what LeaseGrant answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    pub id: LeaseId,
    pub ttl_seconds: i64,
}

/// A renewal: what KeepAlive answers (TTL), and whether the caller must propose a checkpoint
/// of remaining TTL 0 for this lease (etcd answers once it is applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewed {
    pub ttl_seconds: i64,
    pub clear_checkpoint: bool,
}

/// A remaining TTL to checkpoint through Raft (etcd's LeaseCheckpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: LeaseId,
    pub remaining_ttl_seconds: i64,
}

/// What LeaseTimeToLive answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeToLive {
    pub id: LeaseId,
    /// trunc(expiry - now) in seconds; negative past the expiry.
    pub ttl_seconds: i64,
    pub granted_ttl_seconds: i64,
    /// In key order; empty unless asked for.
    pub keys: Vec<Vec<u8>>,
}

/// The leader's queues and revoke budget; dropped by `demote`.
#[derive(Debug)]
struct Primary {
    expiries: DeadlineQueue,
    checkpoints: DeadlineQueue,
    revoke_budget: RevokeBudget,
}

/// etcd's revoke rate as a token bucket over `now`: `rate` revokes per second, at most half a
/// second's worth at once (etcd revokes rate/2 every 500 ms). Units: 1e-9 revoke.
#[derive(Debug)]
struct RevokeBudget {
    tokens: u64,
    tokens_max: u64,
    rate_per_second: u64,
    refilled_at: Duration,
}

impl RevokeBudget {
    fn full(rate_per_second: u32, now: Duration) -> RevokeBudget {
        let rate_per_second = u64::from(rate_per_second.max(1));
        let tokens_max = (rate_per_second / 2).max(1) * NANOS_PER_SECOND;
        RevokeBudget { tokens: tokens_max, tokens_max, rate_per_second, refilled_at: now }
    }

    /// Revokes allowed now.
    fn available(&mut self, now: Duration) -> usize {
        if now > self.refilled_at {
            let elapsed_nanos = u64::try_from((now - self.refilled_at).as_nanos()).unwrap_or(u64::MAX);
            let added = elapsed_nanos.saturating_mul(self.rate_per_second);
            self.tokens = self.tokens.saturating_add(added).min(self.tokens_max);
            self.refilled_at = now;
        }
        (self.tokens / NANOS_PER_SECOND) as usize
    }

    fn spend(&mut self, revokes: usize) {
        let cost = revokes as u64 * NANOS_PER_SECOND;
        assert!(cost <= self.tokens, "no more revokes than available");
        self.tokens -= cost;
    }
}

impl Primary {
    fn new(config: &LessorConfig, now: Duration) -> Primary {
        Primary {
            expiries: DeadlineQueue::new(),
            checkpoints: DeadlineQueue::new(),
            revoke_budget: RevokeBudget::full(config.revoke_rate_per_second, now),
        }
    }

    /// Starts timing `lease`: its expiry, its expiry queue entry, its first checkpoint look.
    fn start(&mut self, config: &LessorConfig, lease: &mut Lease, now: Duration, expiry: Duration) {
        assert!(expiry >= now);
        lease.timing = Timing {
            expiry: Some(expiry),
            expiry_slot: Some(self.expiries.push(lease.id, expiry)),
            checkpoint_slot: None,
            clear_proposed: false,
        };
        self.schedule_checkpoint(config, lease, now, lease.ttl_to_run_seconds());
    }

    /// etcd's scheduleCheckpointIfNeeded: look again in an interval if the lease will live
    /// longer than that.
    fn schedule_checkpoint(&mut self, config: &LessorConfig, lease: &mut Lease, now: Duration, remaining_ttl: i64) {
        assert!(lease.timing.checkpoint_slot.is_none(), "one live checkpoint entry per lease");
        if remaining_ttl > config.checkpoint_interval.as_secs() as i64 {
            lease.timing.checkpoint_slot = Some(self.checkpoints.push(lease.id, now + config.checkpoint_interval));
        }
    }

    /// Room for every push `renew` may make before the next grant, revoke or promote.
    fn keep_room(&mut self, leases: &BTreeMap<LeaseId, Lease>) {
        let count = leases.len();
        let slot_of = |id: LeaseId, pick: fn(&Timing) -> Option<Slot>| leases.get(&id).and_then(|l| pick(&l.timing));
        self.expiries.keep_room(count, count + 1, |id, sequence| {
            slot_of(id, |timing| timing.expiry_slot).is_some_and(|slot| slot.sequence == sequence)
        });
        self.checkpoints.keep_room(count, count + 1, |id, sequence| {
            slot_of(id, |timing| timing.checkpoint_slot).is_some_and(|slot| slot.sequence == sequence)
        });
    }
}

/// The lessor (module doc). One owner: the raft core's executor (apply task and Raft loop).
#[derive(Debug)]
pub struct Lessor {
    config: LessorConfig,
    leases: BTreeMap<LeaseId, Lease>,
    /// Some while this member leads (etcd's primary lessor).
    primary: Option<Primary>,
    /// Live keys `load` found naming a lease the table lacks (etcd logs and skips them).
    orphaned_keys_at_load: u64,
}

impl Lessor {
    /// An empty follower lessor.
    pub fn new(config: LessorConfig) -> Lessor {
        assert!(
            (1..=TTL_MAX_SECONDS).contains(&config.ttl_min_seconds),
            "a minimum TTL of {} s: at least 1 s (etcd's is always)",
            config.ttl_min_seconds
        );
        assert!(config.checkpoint_batch_max > 0 && !config.checkpoint_interval.is_zero());
        Lessor { config, leases: BTreeMap::new(), primary: None, orphaned_keys_at_load: 0 }
    }

    pub fn config(&self) -> &LessorConfig {
        &self.config
    }

    /// The leases of a store (a follower lessor): the lease table's records, then every live
    /// key whose kv record names a lease, attached to it. Skips the key scan when the table
    /// is empty.
    pub fn load(source: &mut impl LeaseSource, config: LessorConfig) -> Result<Lessor, LoadError> {
        let mut lessor = Lessor::new(config);
        for (key, value) in source.lease_records() {
            let record = LeaseRecord::decode_checked(&key, &value)?;
            let lease = Lease::new(LeaseId(record.id), record.ttl, record.remaining_ttl, lessor.config.ttl_min_seconds);
            let replaced = lessor.leases.insert(lease.id, lease);
            assert!(replaced.is_none(), "aux keys are unique");
        }
        if !lessor.leases.is_empty() {
            lessor.attach_stored_keys(source)?;
        }
        Ok(lessor)
    }

    /// Attaches every live key of the store that names a lease, in LOAD_PAGES pages.
    fn attach_stored_keys(&mut self, source: &mut impl LeaseSource) -> Result<(), LoadError> {
        let all_keys = (&[0u8][..], &[0u8][..]);
        let counting = RangeOptions { count_only: true, ..RangeOptions::default() };
        let total = source.range_current(all_keys.0, all_keys.1, &counting).map_err(LoadError::Range)?.count;
        let page_keys = LOAD_PAGE_KEYS_MIN.max((total as usize).div_ceil(LOAD_PAGES));
        let options = RangeOptions { keys_only: true, limit: page_keys as i64, ..RangeOptions::default() };
        let mut start = all_keys.0.to_vec();
        loop {
            let page = source.range_current(&start, all_keys.1, &options).map_err(LoadError::Range)?;
            assert!(page.kvs.len() <= page_keys);
            for kv in &page.kvs {
                if kv.lease != 0 && self.attach(LeaseId(kv.lease), &kv.key).is_err() {
                    self.orphaned_keys_at_load += 1;
                }
            }
            match page.kvs.last() {
                Some(last) if page.kvs.len() == page_keys => {
                    // The smallest key after `last`.
                    start.clone_from(&last.key);
                    start.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    /// Live keys `load` found naming a lease the store's table lacks (0 in a consistent
    /// store). While there are any, invariant 1 cannot be asserted.
    pub fn orphaned_keys_at_load(&self) -> u64 {
        self.orphaned_keys_at_load
    }

    pub fn contains(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn get(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Every lease, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Every lease id, in id order (LeaseLeases; any member).
    pub fn leases(&self) -> impl Iterator<Item = LeaseId> + '_ {
        self.leases.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub fn is_primary(&self) -> bool {
        self.primary.is_some()
    }
}

/// The replicated half: applied on every member, in the apply task.
impl Lessor {
    /// etcd's Grant. `now` matters on the leader only (the lease expires at now + TTL).
    pub fn grant(
        &mut self,
        table: &mut impl LeaseTable,
        id: LeaseId,
        ttl_seconds: i64,
        now: Duration,
    ) -> Result<Granted, GrantError> {
        if id.is_none() {
            return Err(GrantError::NotFound);
        }
        if ttl_seconds > TTL_MAX_SECONDS {
            return Err(GrantError::TtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(GrantError::Exists);
        }
        let lease = Lease::new(id, ttl_seconds, 0, self.config.ttl_min_seconds);
        table.put_lease_record(id, &lease.record());
        let granted = Granted { id, ttl_seconds: lease.ttl_seconds };
        self.leases.insert(id, lease);
        if let Some(primary) = &mut self.primary {
            primary.keep_room(&self.leases);
            let lease = self.leases.get_mut(&id).expect("just granted");
            let expiry = now + seconds(lease.ttl_seconds);
            primary.start(&self.config, lease, now, expiry);
        }
        Ok(granted)
    }

    /// etcd's Revoke: removes the lease and its record; returns its keys in key order, for
    /// the caller to delete in that order in the same write transaction.
    pub fn revoke(&mut self, table: &mut impl LeaseTable, id: LeaseId) -> Result<Vec<Vec<u8>>, LeaseNotFound> {
        let lease = self.leases.remove(&id).ok_or(LeaseNotFound)?;
        table.delete_lease_record(id);
        if let Some(primary) = &mut self.primary {
            primary.keep_room(&self.leases);
        }
        Ok(lease.keys.into_iter().map(<[u8]>::into_vec).collect())
    }

    /// etcd's Checkpoint: stores the remaining TTL (0 clears it; negative counts as 0) that a
    /// promotion starts from. A lease that no longer exists is ignored (returns false).
    pub fn checkpoint(&mut self, table: &mut impl LeaseTable, id: LeaseId, remaining_ttl_seconds: i64) -> bool {
        let Some(lease) = self.leases.get_mut(&id) else { return false };
        lease.remaining_ttl_seconds = remaining_ttl_seconds.clamp(0, TTL_MAX_SECONDS);
        lease.timing.clear_proposed = false;
        table.put_lease_record(id, &lease.record());
        true
    }

    /// Attaches `key` to lease `id` (idempotent). `key_written` keeps a key on one lease.
    pub fn attach(&mut self, id: LeaseId, key: &[u8]) -> Result<(), LeaseNotFound> {
        self.attach_key(id, key).map(|_| ())
    }

    /// Returns whether the key was newly attached.
    fn attach_key(&mut self, id: LeaseId, key: &[u8]) -> Result<bool, LeaseNotFound> {
        assert!(!key.is_empty(), "keys are not empty");
        let lease = self.leases.get_mut(&id).ok_or(LeaseNotFound)?;
        if lease.keys.contains(key) {
            return Ok(false);
        }
        lease.keys.insert(key.into());
        Ok(true)
    }

    /// Detaches `key` from lease `id`; false if the lease does not exist (a revoke's deletes
    /// come after the lease is gone) or the key was not attached.
    pub fn detach(&mut self, id: LeaseId, key: &[u8]) -> bool {
        self.leases.get_mut(&id).is_some_and(|lease| lease.keys.remove(key))
    }

    /// A put of `key` applied: `previous` is the lease of the key's previous live revision
    /// (NONE if it had none or did not exist), `lease` the one written. As etcd's put: detach
    /// from the previous lease, attach to the new one. The caller has checked that `lease`
    /// exists (`contains`) before the write; a missing one panics.
    pub fn key_written(&mut self, key: &[u8], previous: LeaseId, lease: LeaseId) {
        if previous == lease {
            // Same lease (an ignore_lease put, or a re-put): already attached, unless the
            // key is an orphan whose lease is gone, which it stays.
            if let Ok(newly) = self.attach_key(lease, key) {
                assert!(!newly || self.orphaned_keys_at_load > 0, "key {key:02x?} was attached to its lease");
            }
            return;
        }
        self.key_deleted(key, previous);
        if !lease.is_none() {
            if let Err(LeaseNotFound) = self.attach_key(lease, key) {
                panic!("a put with lease {:x}, which does not exist: check `contains` before the write", lease.0);
            }
        }
    }

    /// A delete of `key` applied (one of the keys `WriteTxn::delete_range` returns, with its
    /// lease): detach it.
    pub fn key_deleted(&mut self, key: &[u8], lease: LeaseId) {
        if lease.is_none() {
            return;
        }
        let detached = self.detach(lease, key);
        assert!(
            detached || !self.leases.contains_key(&lease) || self.orphaned_keys_at_load > 0,
            "key {key:02x?} names lease {:x} but was not attached to it",
            lease.0
        );
    }
}

/// The leader half: timing, never persisted.
impl Lessor {
    /// This member leads (etcd's Promote(electionTimeout)): every lease expires at now +
    /// election timeout + its remaining TTL (checkpointed, else its TTL), piled-up expiries
    /// spread as etcd does; checkpoint looks start.
    pub fn promote(&mut self, now: Duration) {
        let extension = self.config.promote_extension;
        let mut remaining: Vec<(Duration, LeaseId)> =
            self.leases.values().map(|lease| (extension + seconds(lease.ttl_to_run_seconds()), lease.id)).collect();
        spread_pile_up(&mut remaining, self.config.revoke_rate_per_second);
        let mut primary = Primary::new(&self.config, now);
        for lease in self.leases.values_mut() {
            lease.timing = Timing::default();
        }
        for (remaining, id) in remaining {
            let lease = self.leases.get_mut(&id).expect("a lease of this lessor");
            primary.start(&self.config, lease, now, now + remaining);
        }
        primary.keep_room(&self.leases);
        self.primary = Some(primary);
    }

    /// This member no longer leads: no expiries, no queues.
    pub fn demote(&mut self) {
        self.primary = None;
        for lease in self.leases.values_mut() {
            lease.timing = Timing::default();
        }
    }

    /// etcd's Renew (KeepAlive): the lease expires at now + TTL. Allocation-free.
    pub fn renew(&mut self, id: LeaseId, now: Duration) -> Result<Renewed, RenewError> {
        let Some(primary) = &mut self.primary else { return Err(RenewError::NotPrimary) };
        let lease = self.leases.get_mut(&id).ok_or(RenewError::NotFound)?;
        let expiry = lease.timing.expiry.expect("the leader's leases have expiries");
        if now >= expiry {
            return Err(RenewError::Expired);
        }
        let renewed_expiry = now + seconds(lease.ttl_seconds);
        lease.timing.expiry = Some(renewed_expiry);
        let slot = lease.timing.expiry_slot.expect("the leader's leases are queued");
        if renewed_expiry < slot.at {
            // Earlier than queued (the first renew after a promotion's extension).
            debug_assert!(primary.expiries.has_room(), "room kept for renew's pushes");
            lease.timing.expiry_slot = Some(primary.expiries.push(id, renewed_expiry));
        }
        if lease.timing.checkpoint_slot.is_none() {
            debug_assert!(primary.checkpoints.has_room(), "room kept for renew's pushes");
            primary.schedule_checkpoint(&self.config, lease, now, lease.ttl_seconds);
        }
        let clear_checkpoint = lease.remaining_ttl_seconds > 0 && !lease.timing.clear_proposed;
        lease.timing.clear_proposed |= clear_checkpoint;
        Ok(Renewed { ttl_seconds: lease.ttl_seconds, clear_checkpoint })
    }

    /// Leases whose expiry has passed (`now >= expiry`), earliest first, within etcd's revoke
    /// rate: propose a revoke of each. Each comes back after the retry interval if still
    /// there. Empty on a follower.
    pub fn expired(&mut self, now: Duration) -> Vec<LeaseId> {
        let Some(primary) = &mut self.primary else { return Vec::new() };
        let allowed = primary.revoke_budget.available(now);
        let mut expired = Vec::new();
        while expired.len() < allowed {
            let Some((id, slot)) = primary.expiries.pop_due(now) else { break };
            let Some(lease) = self.leases.get_mut(&id) else { continue };
            if lease.timing.expiry_slot != Some(slot) {
                continue;
            }
            let expiry = lease.timing.expiry.expect("the leader's leases have expiries");
            let next_look = if expiry <= now {
                expired.push(id);
                now + self.config.expired_retry_interval
            } else {
                expiry
            };
            lease.timing.expiry_slot = Some(primary.expiries.push(id, next_look));
        }
        primary.revoke_budget.spend(expired.len());
        expired
    }

    /// Remaining TTLs to checkpoint through Raft (one entry), at most checkpoint_batch_max:
    /// call again while it returns that many. Empty on a follower.
    pub fn checkpoints_due(&mut self, now: Duration) -> Vec<Checkpoint> {
        let Some(primary) = &mut self.primary else { return Vec::new() };
        let mut due = Vec::new();
        while due.len() < self.config.checkpoint_batch_max {
            let Some((id, slot)) = primary.checkpoints.pop_due(now) else { break };
            let Some(lease) = self.leases.get_mut(&id) else { continue };
            if lease.timing.checkpoint_slot != Some(slot) {
                continue;
            }
            lease.timing.checkpoint_slot = None;
            let expiry = lease.timing.expiry.expect("the leader's leases have expiries");
            if now >= expiry {
                continue;
            }
            let remaining_ttl_seconds = ceil_seconds(expiry - now);
            primary.schedule_checkpoint(&self.config, lease, now, remaining_ttl_seconds);
            if remaining_ttl_seconds < lease.ttl_seconds {
                due.push(Checkpoint { id, remaining_ttl_seconds });
            }
        }
        due
    }

    /// etcd's LeaseTimeToLive on the leader.
    pub fn time_to_live(&self, id: LeaseId, now: Duration, with_keys: bool) -> Result<TimeToLive, TimeToLiveError> {
        if self.primary.is_none() {
            return Err(TimeToLiveError::NotPrimary);
        }
        let lease = self.leases.get(&id).ok_or(TimeToLiveError::NotFound)?;
        let expiry = lease.timing.expiry.expect("the leader's leases have expiries");
        let remaining_nanos = expiry.as_nanos() as i128 - now.as_nanos() as i128;
        // Division truncates toward zero, as Go's int64(float64 seconds).
        let ttl_seconds = (remaining_nanos / i128::from(NANOS_PER_SECOND)) as i64;
        let keys = if with_keys { lease.keys().map(<[u8]>::to_vec).collect() } else { Vec::new() };
        Ok(TimeToLive { id, ttl_seconds, granted_ttl_seconds: lease.ttl_seconds, keys })
    }
}

/// etcd's Promote for a pile-up: with at least `revoke_rate_per_second` leases, sorted by
/// remaining time, the leases beyond 3/4 of the rate within one second of a window's first
/// expiry are pushed back so that the k-th of the window expires k / (3/4 rate) seconds after
/// the window's start. Example (rate 1000): 2000 leases all due in 12 s; the first 750 stay
/// at 12 s, the k-th after them (k = 751..2000) moves to 12 s + k/750 s, the last to 14.67 s.
fn spread_pile_up(remaining: &mut [(Duration, LeaseId)], revoke_rate_per_second: u32) {
    if remaining.is_empty() || remaining.len() < revoke_rate_per_second as usize {
        return;
    }
    remaining.sort_unstable();
    let target_per_second = u128::from((3 * revoke_rate_per_second / 4).max(1));
    let mut window_start = remaining[0].0;
    let mut window_end = window_start + Duration::from_secs(1);
    let mut in_window: u128 = 0;
    for (left, _) in remaining.iter_mut() {
        if *left > window_end {
            window_start = *left;
            window_end = window_start + Duration::from_secs(1);
            in_window = 1;
            continue;
        }
        in_window += 1;
        if in_window <= target_per_second {
            continue;
        }
        let rate_delay_nanos = u128::from(NANOS_PER_SECOND) * in_window / target_per_second;
        let delay_nanos = rate_delay_nanos.saturating_sub((*left - window_start).as_nanos());
        let delay = Duration::from_nanos(u64::try_from(delay_nanos).expect("a delay of seconds"));
        window_end = window_start + delay;
        *left += delay;
    }
}

/// `Lessor::check`: the invariants of the module doc.
impl Lessor {
    pub fn check(&self) -> Result<(), LeaseCheckError> {
        let mut owners: BTreeMap<&[u8], LeaseId> = BTreeMap::new();
        for lease in self.leases.values() {
            self.check_lease(lease)?;
            for key in lease.keys() {
                if let Some(other) = owners.insert(key, lease.id) {
                    let reason = format!("key {key:02x?} is also attached to lease {:x}", other.0);
                    return Err(LeaseCheckError { lease: Some(lease.id), reason });
                }
            }
        }
        match &self.primary {
            None => self.check_follower(),
            Some(primary) => self.check_primary(primary),
        }
    }

    fn check_lease(&self, lease: &Lease) -> Result<(), LeaseCheckError> {
        let fail = |reason: String| Err(LeaseCheckError { lease: Some(lease.id), reason });
        let ttl = lease.ttl_requested_seconds.max(self.config.ttl_min_seconds);
        if lease.id.is_none() || lease.ttl_seconds != ttl || lease.ttl_seconds > TTL_MAX_SECONDS {
            return fail(format!("TTL {} s for a grant of {} s", lease.ttl_seconds, lease.ttl_requested_seconds));
        }
        if !(0..=TTL_MAX_SECONDS).contains(&lease.remaining_ttl_seconds) {
            return fail(format!("remaining TTL {} s", lease.remaining_ttl_seconds));
        }
        if lease.keys.iter().any(|key| key.is_empty()) {
            return fail("an empty key is attached".into());
        }
        Ok(())
    }

    fn check_follower(&self) -> Result<(), LeaseCheckError> {
        match self.leases.values().find(|lease| lease.timing != Timing::default()) {
            Some(lease) => Err(LeaseCheckError { lease: Some(lease.id), reason: "a follower times a lease".into() }),
            None => Ok(()),
        }
    }

    fn check_primary(&self, primary: &Primary) -> Result<(), LeaseCheckError> {
        let expiry_entries: BTreeMap<u64, (LeaseId, Slot)> =
            primary.expiries.entries().map(|(id, slot)| (slot.sequence, (id, slot))).collect();
        let checkpoint_entries: BTreeMap<u64, (LeaseId, Slot)> =
            primary.checkpoints.entries().map(|(id, slot)| (slot.sequence, (id, slot))).collect();
        let retry = self.config.expired_retry_interval;
        for lease in self.leases.values() {
            let fail = |reason: &str| Err(LeaseCheckError { lease: Some(lease.id), reason: reason.into() });
            let (Some(expiry), Some(slot)) = (lease.timing.expiry, lease.timing.expiry_slot) else {
                return fail("the leader does not time the lease");
            };
            if expiry_entries.get(&slot.sequence) != Some(&(lease.id, slot)) {
                return fail("its expiry slot is not in the expiry queue");
            }
            if slot.at > expiry && slot.at < expiry + retry {
                return fail("its expiry is queued late");
            }
            if let Some(slot) = lease.timing.checkpoint_slot {
                if checkpoint_entries.get(&slot.sequence) != Some(&(lease.id, slot)) {
                    return fail("its checkpoint slot is not in the checkpoint queue");
                }
            }
        }
        Ok(())
    }
}
