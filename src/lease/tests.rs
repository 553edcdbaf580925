//! One test per rule of the module doc (etcd's lessor_test.go covers the same ground).

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::mvcc::{Store, StoreOptions, AUX_TABLE_LEASES};

/// The lease table of a store, in memory.
#[derive(Default)]
struct MemoryTable(BTreeMap<i64, LeaseRecord>);

impl LeaseTable for MemoryTable {
    fn put_lease_record(&mut self, id: LeaseId, record: &LeaseRecord) {
        assert_eq!(id.0, record.id);
        self.0.insert(id.0, record.clone());
    }

    fn delete_lease_record(&mut self, id: LeaseId) {
        assert!(self.0.remove(&id.0).is_some());
    }
}

/// 100 ms heartbeats, 10 ticks: minimum TTL 2 s, extension 1 s, retry 7 s.
fn config() -> LessorConfig {
    LessorConfig::new(Duration::from_millis(100), 10)
}

/// An origin far from zero, so that tests can look back.
const T0: Duration = Duration::from_secs(1000);

fn at(seconds: u64) -> Duration {
    T0 + Duration::from_secs(seconds)
}

fn millis(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn follower() -> (Lessor, MemoryTable) {
    (Lessor::new(config()), MemoryTable::default())
}

fn leader() -> (Lessor, MemoryTable) {
    let mut lessor = Lessor::new(config());
    lessor.promote(T0);
    (lessor, MemoryTable::default())
}

fn grant(lessor: &mut Lessor, table: &mut MemoryTable, id: i64, ttl_seconds: i64, now: Duration) {
    lessor.grant(table, LeaseId(id), ttl_seconds, now).unwrap();
    lessor.check().unwrap();
}

const A: LeaseId = LeaseId(0xa);
const B: LeaseId = LeaseId(0xb);

#[test]
fn the_minimum_ttl_follows_etcds_rule() {
    assert_eq!(ttl_min_seconds(millis(100), 10), 2, "15 ticks of 100 ms: ceil(1.5 s)");
    assert_eq!(ttl_min_seconds(millis(100), 5), 1, "(3 * 5) / 2 = 7 ticks: ceil(0.7 s)");
    assert_eq!(ttl_min_seconds(millis(1000), 5), 7);
    assert_eq!(ttl_min_seconds(millis(150), 7), 2, "10 ticks of 150 ms");
    assert_eq!(ttl_min_seconds(millis(250), 40), 15);
    let config = config();
    assert_eq!(config.promote_extension, millis(1000), "the election timeout");
    assert_eq!(config.expired_retry_interval, millis(7000), "etcd's request timeout: 5 s + 2 election timeouts");
    assert_eq!((config.checkpoint_interval, config.checkpoint_batch_max), (Duration::from_secs(300), 1000));
    assert_eq!(config.revoke_rate_per_second, 1000);
}

#[test]
fn grant_checks_in_etcds_order_with_etcds_strings() {
    let (mut lessor, mut table) = follower();
    let error = lessor.grant(&mut table, LeaseId::NONE, TTL_MAX_SECONDS + 1, T0).unwrap_err();
    assert_eq!((error, error.to_string().as_str()), (GrantError::NotFound, "lease not found"));
    let error = lessor.grant(&mut table, A, TTL_MAX_SECONDS + 1, T0).unwrap_err();
    assert_eq!((error, error.to_string().as_str()), (GrantError::TtlTooLarge, "too large lease TTL"));
    assert_eq!(lessor.grant(&mut table, A, TTL_MAX_SECONDS, T0), Ok(Granted { id: A, ttl_seconds: TTL_MAX_SECONDS }));
    let error = lessor.grant(&mut table, A, 10, T0).unwrap_err();
    assert_eq!((error, error.to_string().as_str()), (GrantError::Exists, "lease already exists"));
    assert_eq!(lessor.get(A).unwrap().ttl_seconds(), TTL_MAX_SECONDS, "the failed grant changed nothing");
    assert_eq!(LeaseNotFound.to_string(), "lease not found");
    assert_eq!(RenewError::NotPrimary.to_string(), "not a primary lessor");
    lessor.check().unwrap();
}

#[test]
fn grant_raises_short_ttls_to_the_minimum_and_persists_the_request() {
    let (mut lessor, mut table) = follower();
    for (id, asked, lives) in [(1, 1, 2), (2, 0, 2), (3, -5, 2), (4, 2, 2), (5, 10, 10)] {
        let granted = lessor.grant(&mut table, LeaseId(id), asked, T0).unwrap();
        assert_eq!(granted.ttl_seconds, lives, "a grant of {asked} s");
        let record = &table.0[&id];
        assert_eq!((record.id, record.ttl, record.remaining_ttl), (id, asked, 0), "the record holds the request");
        assert_eq!(lessor.get(LeaseId(id)).unwrap().ttl_requested_seconds(), asked);
    }
    lessor.check().unwrap();
}

#[test]
fn records_use_etcds_leasepb_fields_and_big_endian_keys() {
    let record = LeaseRecord { id: 1, ttl: 2, remaining_ttl: 3 };
    assert_eq!(record.encode(), [0x08, 1, 0x10, 2, 0x18, 3], "fields 1, 2, 3 as varints, like leasepb.Lease");
    assert_eq!(lease_key(LeaseId(0x0102)), [0, 0, 0, 0, 0, 0, 1, 2]);
    assert_eq!(lease_key(LeaseId(-1)), [0xff; 8]);
    let decoded = LeaseRecord::decode_checked(&lease_key(LeaseId(1)), &record.encode());
    assert_eq!(decoded, Ok(record.clone()));
    let wrong_key = LeaseRecord::decode_checked(&lease_key(LeaseId(2)), &record.encode());
    assert!(matches!(wrong_key, Err(LoadError::CorruptRecord { .. })));
    let short_key = LeaseRecord::decode_checked(&[1, 2], &record.encode());
    assert!(matches!(short_key, Err(LoadError::CorruptRecord { .. })));
    let garbage = LeaseRecord::decode_checked(&lease_key(LeaseId(1)), &[0xff, 0xff]);
    assert!(matches!(garbage, Err(LoadError::CorruptRecord { .. })));
}

#[test]
fn revoke_returns_the_attached_keys_in_key_order_and_deletes_the_record() {
    let (mut lessor, mut table) = follower();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    grant(&mut lessor, &mut table, B.0, 10, T0);
    for key in [&b"c"[..], b"a", b"b"] {
        lessor.key_written(key, LeaseId::NONE, A);
    }
    lessor.key_written(b"d", LeaseId::NONE, B);
    assert_eq!(lessor.revoke(&mut table, A), Ok(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]));
    assert!(!table.0.contains_key(&A.0) && table.0.contains_key(&B.0));
    assert_eq!(lessor.revoke(&mut table, A), Err(LeaseNotFound));
    assert_eq!(lessor.get(B).unwrap().keys().collect::<Vec<_>>(), [b"d"]);
    lessor.check().unwrap();
}

#[test]
fn a_put_moves_its_key_between_leases_and_a_delete_detaches_it() {
    let (mut lessor, mut table) = follower();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    grant(&mut lessor, &mut table, B.0, 10, T0);
    let keys = |lessor: &Lessor, id| lessor.get(id).unwrap().keys().map(<[u8]>::to_vec).collect::<Vec<_>>();
    lessor.key_written(b"k", LeaseId::NONE, A);
    assert_eq!((keys(&lessor, A), keys(&lessor, B)), (vec![b"k".to_vec()], vec![]));
    lessor.key_written(b"k", A, A);
    assert_eq!(keys(&lessor, A), vec![b"k".to_vec()], "an ignore_lease put or a re-put keeps the key");
    lessor.key_written(b"k", A, B);
    assert_eq!((keys(&lessor, A), keys(&lessor, B)), (vec![], vec![b"k".to_vec()]));
    lessor.key_written(b"k", B, LeaseId::NONE);
    assert_eq!(keys(&lessor, B), Vec::<Vec<u8>>::new(), "a put without a lease detaches");
    lessor.key_written(b"k", LeaseId::NONE, B);
    lessor.key_deleted(b"k", B);
    assert_eq!(keys(&lessor, B), Vec::<Vec<u8>>::new());
    lessor.key_deleted(b"never-leased", LeaseId::NONE);
    lessor.check().unwrap();
}

#[test]
#[should_panic(expected = "check `contains` before the write")]
fn a_put_with_a_missing_lease_panics() {
    let (mut lessor, _) = follower();
    lessor.key_written(b"k", LeaseId::NONE, A);
}

#[test]
fn the_deletes_of_a_revoke_find_the_lease_gone() {
    let (mut lessor, mut table) = follower();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    lessor.key_written(b"k", LeaseId::NONE, A);
    let keys = lessor.revoke(&mut table, A).unwrap();
    for key in &keys {
        lessor.key_deleted(key, A);
    }
    assert!(!lessor.detach(A, b"k") && lessor.attach(A, b"k") == Err(LeaseNotFound));
    lessor.check().unwrap();
}

#[test]
fn check_finds_a_key_on_two_leases() {
    let (mut lessor, mut table) = follower();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    grant(&mut lessor, &mut table, B.0, 10, T0);
    lessor.attach(A, b"k").unwrap();
    lessor.attach(B, b"k").unwrap();
    assert!(lessor.check().unwrap_err().reason.contains("also attached"));
}

#[test]
fn checkpoint_stores_the_remaining_ttl() {
    let (mut lessor, mut table) = follower();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    assert!(lessor.checkpoint(&mut table, A, 4));
    assert_eq!((lessor.get(A).unwrap().remaining_ttl_seconds(), table.0[&A.0].remaining_ttl), (4, 4));
    assert!(lessor.checkpoint(&mut table, A, -3));
    assert_eq!(table.0[&A.0].remaining_ttl, 0, "negative counts as none");
    assert!(!lessor.checkpoint(&mut table, B, 4), "a revoked lease's checkpoint is ignored, as etcd");
    assert!(!table.0.contains_key(&B.0));
    lessor.check().unwrap();
}

#[test]
fn a_follower_does_not_time_leases() {
    let (mut lessor, mut table) = follower();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    grant(&mut lessor, &mut table, B.0, 10, T0);
    assert!(!lessor.is_primary());
    assert_eq!(lessor.renew(A, T0), Err(RenewError::NotPrimary));
    assert_eq!(lessor.time_to_live(A, T0, true), Err(TimeToLiveError::NotPrimary));
    assert_eq!(lessor.expired(at(1_000_000)), Vec::new());
    assert_eq!(lessor.checkpoints_due(at(1_000_000)), Vec::new());
    assert_eq!(lessor.leases().collect::<Vec<_>>(), [A, B], "Leases works on any member");
    assert_eq!(lessor.get(A).unwrap().expiry(), None);
    lessor.check().unwrap();
}

#[test]
fn promote_extends_every_lease_by_the_election_timeout() {
    let (mut lessor, mut table) = follower();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    lessor.promote(at(5));
    lessor.check().unwrap();
    assert_eq!(lessor.get(A).unwrap().expiry(), Some(at(16)), "promotion at 5 s + 1 s + 10 s");
    assert_eq!(lessor.time_to_live(A, at(5), false).unwrap().ttl_seconds, 11);
    assert_eq!(lessor.expired(at(16) - Duration::from_nanos(1)), Vec::new());
    assert_eq!(lessor.expired(at(16)), vec![A], "expired when now >= expiry");
    lessor.check().unwrap();
}

#[test]
fn promote_starts_from_the_checkpointed_remaining_ttl() {
    let (mut lessor, mut table) = follower();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    grant(&mut lessor, &mut table, B.0, 10, T0);
    lessor.checkpoint(&mut table, A, 4);
    lessor.promote(T0);
    assert_eq!(lessor.get(A).unwrap().expiry(), Some(at(5)), "1 s + the checkpointed 4 s");
    assert_eq!(lessor.get(B).unwrap().expiry(), Some(at(11)));
    assert_eq!(lessor.expired(at(5)), vec![A]);
    lessor.check().unwrap();
}

#[test]
fn a_leader_grant_expires_after_its_ttl() {
    let (mut lessor, mut table) = leader();
    grant(&mut lessor, &mut table, A.0, 10, at(3));
    assert_eq!(lessor.get(A).unwrap().expiry(), Some(at(13)), "no extension for a new lease");
    assert_eq!(lessor.expired(at(12)), Vec::new());
    assert_eq!(lessor.expired(at(13)), vec![A]);
}

#[test]
fn renew_restarts_the_ttl() {
    let (mut lessor, mut table) = leader();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    assert_eq!(lessor.renew(A, at(5)), Ok(Renewed { ttl_seconds: 10, clear_checkpoint: false }));
    lessor.check().unwrap();
    assert_eq!(lessor.expired(at(10)), Vec::new(), "the old expiry passed unnoticed");
    assert_eq!(lessor.expired(at(15) - Duration::from_nanos(1)), Vec::new());
    assert_eq!(lessor.expired(at(15)), vec![A]);
    lessor.check().unwrap();
}

#[test]
fn a_renew_after_promote_can_move_the_expiry_earlier() {
    let (mut lessor, mut table) = follower();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    lessor.promote(T0);
    assert_eq!(lessor.get(A).unwrap().expiry(), Some(at(11)));
    lessor.renew(A, T0).unwrap();
    lessor.check().unwrap();
    assert_eq!(lessor.get(A).unwrap().expiry(), Some(at(10)));
    assert_eq!(lessor.expired(at(10)), vec![A], "expires at the renewed time, not the queued one");
    assert_eq!(lessor.expired(at(11)), Vec::new(), "the stale entry is dropped");
    lessor.check().unwrap();
}

#[test]
fn renew_refuses_unknown_expired_and_revoked_leases() {
    let (mut lessor, mut table) = leader();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    assert_eq!(lessor.renew(B, T0), Err(RenewError::NotFound));
    assert_eq!(lessor.renew(A, at(10)), Err(RenewError::Expired), "at its expiry, before expired() saw it");
    assert_eq!(lessor.expired(at(10)), vec![A]);
    assert_eq!(lessor.renew(A, at(11)), Err(RenewError::Expired), "its revoke is in flight");
    lessor.revoke(&mut table, A).unwrap();
    assert_eq!(lessor.renew(A, at(11)), Err(RenewError::NotFound));
    lessor.check().unwrap();
}

#[test]
fn renew_asks_once_to_clear_a_checkpoint() {
    let (mut lessor, mut table) = follower();
    grant(&mut lessor, &mut table, A.0, 100, T0);
    lessor.checkpoint(&mut table, A, 40);
    lessor.promote(T0);
    let clears = |lessor: &mut Lessor, now| lessor.renew(A, now).unwrap().clear_checkpoint;
    assert!(clears(&mut lessor, at(1)));
    assert!(!clears(&mut lessor, at(2)), "proposed already");
    assert_eq!(lessor.get(A).unwrap().expiry(), Some(at(102)), "the renewal counts the full TTL at once");
    lessor.checkpoint(&mut table, A, 0);
    assert!(!clears(&mut lessor, at(3)), "cleared");
    lessor.checkpoint(&mut table, A, 30);
    assert!(clears(&mut lessor, at(4)), "a new checkpoint: clear it again");
    lessor.demote();
    lessor.promote(at(5));
    assert!(clears(&mut lessor, at(6)), "a new leader asks again");
    lessor.check().unwrap();
}

#[test]
fn an_unrevoked_lease_comes_back_after_the_retry_interval() {
    let (mut lessor, mut table) = leader();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    assert_eq!(lessor.expired(at(10)), vec![A]);
    assert_eq!(lessor.expired(at(10)), Vec::new());
    assert_eq!(lessor.expired(at(17) - Duration::from_nanos(1)), Vec::new());
    lessor.check().unwrap();
    assert_eq!(lessor.expired(at(17)), vec![A], "7 s later, still not revoked");
    lessor.revoke(&mut table, A).unwrap();
    assert_eq!(lessor.expired(at(100)), Vec::new());
    lessor.check().unwrap();
}

#[test]
fn expired_keeps_etcds_revoke_rate() {
    let (mut lessor, mut table) = leader();
    for id in 1..=1200 {
        lessor.grant(&mut table, LeaseId(id), 5, T0).unwrap();
    }
    let now = at(100);
    assert_eq!(lessor.expired(now).len(), 500, "half a second's worth at once");
    assert_eq!(lessor.expired(now).len(), 0);
    assert_eq!(lessor.expired(now + millis(100)).len(), 100, "1000 per second");
    assert_eq!(lessor.expired(now + millis(2100)).len(), 500, "never more than 500 at once");
    let rest = lessor.expired(now + millis(3100));
    assert_eq!(rest.len(), 100);
    assert_eq!(rest.last(), Some(&LeaseId(1200)), "earliest first, then in grant order");
    lessor.check().unwrap();
}

#[test]
fn promote_spreads_a_pile_up_as_etcd() {
    let (mut lessor, mut table) = follower();
    for id in 1..=2000 {
        lessor.grant(&mut table, LeaseId(id), 10, T0).unwrap();
    }
    lessor.promote(T0);
    lessor.check().unwrap();
    for id in 1..=2000u64 {
        let expiry = lessor.get(LeaseId(id as i64)).unwrap().expiry().unwrap();
        let expected = if id <= 750 { at(11) } else { at(11) + Duration::from_nanos(1_000_000_000 * id / 750) };
        assert_eq!(expiry, expected, "lease {id}");
    }
    let (mut small, mut table) = follower();
    for id in 1..=999 {
        small.grant(&mut table, LeaseId(id), 10, T0).unwrap();
    }
    small.promote(T0);
    assert!(small.iter().all(|lease| lease.expiry() == Some(at(11))), "below the rate nothing moves");
}

#[test]
fn checkpoints_report_the_remaining_ttl_every_interval() {
    let (mut lessor, mut table) = leader();
    grant(&mut lessor, &mut table, A.0, 1000, T0);
    assert_eq!(lessor.checkpoints_due(at(299)), Vec::new());
    assert_eq!(lessor.checkpoints_due(at(300)), vec![Checkpoint { id: A, remaining_ttl_seconds: 700 }]);
    assert_eq!(lessor.checkpoints_due(at(600)), vec![Checkpoint { id: A, remaining_ttl_seconds: 400 }]);
    assert_eq!(lessor.checkpoints_due(at(900)), vec![Checkpoint { id: A, remaining_ttl_seconds: 100 }]);
    assert_eq!(lessor.checkpoints_due(at(1200)), Vec::new(), "100 s left at the last look: no more looks");
    lessor.check().unwrap();
    // Rounded up: a lease granted at 0.5 s and renewed at 0.6 s has 699.6 s left at 301 s.
    let (mut lessor, mut table) = leader();
    grant(&mut lessor, &mut table, B.0, 1000, T0 + millis(500));
    lessor.renew(B, T0 + millis(600)).unwrap();
    assert_eq!(lessor.checkpoints_due(at(300) + millis(400)), Vec::new(), "due at 300.5 s");
    assert_eq!(lessor.checkpoints_due(at(301)), vec![Checkpoint { id: B, remaining_ttl_seconds: 700 }]);
}

#[test]
fn a_just_renewed_lease_is_not_checkpointed_but_looked_at_again() {
    let (mut lessor, mut table) = leader();
    grant(&mut lessor, &mut table, A.0, 1000, T0);
    lessor.renew(A, at(300)).unwrap();
    assert_eq!(lessor.checkpoints_due(at(300)), Vec::new(), "remaining TTL = TTL");
    assert_eq!(lessor.checkpoints_due(at(600)), vec![Checkpoint { id: A, remaining_ttl_seconds: 700 }]);
    lessor.check().unwrap();
}

#[test]
fn a_short_lease_is_not_checkpointed_until_renewed_past_an_interval() {
    let mut config = config();
    config.checkpoint_interval = Duration::from_secs(10);
    let mut lessor = Lessor::new(config);
    let mut table = MemoryTable::default();
    lessor.promote(T0);
    grant(&mut lessor, &mut table, A.0, 10, T0);
    grant(&mut lessor, &mut table, B.0, 30, T0);
    assert_eq!(lessor.checkpoints_due(at(10)), vec![Checkpoint { id: B, remaining_ttl_seconds: 20 }], "not A");
    assert_eq!(lessor.checkpoints_due(at(20)), vec![Checkpoint { id: B, remaining_ttl_seconds: 10 }]);
    assert_eq!(lessor.checkpoints_due(at(29)), Vec::new(), "10 s left at the last look: no more looks");
    lessor.renew(B, at(29)).unwrap();
    lessor.check().unwrap();
    assert_eq!(lessor.checkpoints_due(at(39)), vec![Checkpoint { id: B, remaining_ttl_seconds: 20 }]);
}

#[test]
fn checkpoints_skip_expired_and_revoked_leases_and_are_batched() {
    let mut config = config();
    config.checkpoint_batch_max = 3;
    let mut lessor = Lessor::new(config);
    let mut table = MemoryTable::default();
    lessor.promote(T0);
    for id in 1..=5 {
        grant(&mut lessor, &mut table, id, 1000, T0);
    }
    grant(&mut lessor, &mut table, 6, 301, T0);
    lessor.revoke(&mut table, LeaseId(1)).unwrap();
    let now = at(301);
    let first = lessor.checkpoints_due(now);
    assert_eq!(first.iter().map(|c| c.id.0).collect::<Vec<_>>(), [2, 3, 4]);
    let second = lessor.checkpoints_due(now);
    assert_eq!(second, vec![Checkpoint { id: LeaseId(5), remaining_ttl_seconds: 699 }], "6 expired at 301 s");
    lessor.check().unwrap();
}

#[test]
fn demote_forgets_all_timing() {
    let (mut lessor, mut table) = leader();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    lessor.demote();
    lessor.check().unwrap();
    assert_eq!(lessor.get(A).unwrap().expiry(), None);
    assert_eq!(lessor.renew(A, T0), Err(RenewError::NotPrimary));
    assert_eq!(lessor.expired(at(100)), Vec::new());
    assert_eq!(lessor.len(), 1, "the replicated state stays");
}

#[test]
fn time_to_live_truncates_like_etcd() {
    let (mut lessor, mut table) = leader();
    grant(&mut lessor, &mut table, A.0, 10, T0);
    lessor.key_written(b"z", LeaseId::NONE, A);
    lessor.key_written(b"a", LeaseId::NONE, A);
    let answer = lessor.time_to_live(A, T0 + millis(500), true).unwrap();
    assert_eq!(
        answer,
        TimeToLive { id: A, ttl_seconds: 9, granted_ttl_seconds: 10, keys: vec![b"a".to_vec(), b"z".to_vec()] }
    );
    assert_eq!(lessor.time_to_live(A, at(10) + millis(500), false).unwrap().ttl_seconds, 0, "-0.5 s");
    assert_eq!(lessor.time_to_live(A, at(11) + millis(500), false).unwrap().ttl_seconds, -1);
    assert!(lessor.time_to_live(A, T0, false).unwrap().keys.is_empty());
    assert_eq!(lessor.time_to_live(B, T0, false), Err(TimeToLiveError::NotFound));
}

#[test]
fn server_chosen_ids_follow_etcds_layout() {
    let mut ids = LeaseIdGenerator::new(0x1234_5678, 0xabcd_ef01_2345);
    let first = ids.next_id();
    assert_eq!(first.0 as u64, (0x5678 << 48) | ((0xabcd_ef01_2345 & ((1 << 40) - 1)) << 8) | 1);
    assert_eq!(ids.next_id().0, first.0 + 1);
    let mut high = LeaseIdGenerator::new(0x8000, 7);
    let id = high.next_id();
    assert!(id.0 > 0, "the sign bit is cleared: {:x}", id.0);
    assert_eq!(id.0 as u64, (7 << 8) | 1);
    let mut wrapping = LeaseIdGenerator::new(0, 0);
    wrapping.suffix_for_test(u64::MAX);
    assert_ne!(wrapping.next_id(), LeaseId::NONE, "0 is skipped");
}

fn store() -> (tempfile::TempDir, Store) {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(&directory.path().join("db"), StoreOptions { map_size_bytes: 1 << 30 }).unwrap();
    (directory, store)
}

#[test]
fn load_rebuilds_leases_and_their_keys_from_the_store() {
    let (_directory, mut store) = store();
    let mut lessor = Lessor::new(config());
    for id in 1..=3 {
        lessor.grant(&mut store, LeaseId(id), 10 * id, T0).unwrap();
    }
    lessor.checkpoint(&mut store, LeaseId(2), 7);
    // More keys than one page, most without a lease.
    let mut txn = store.write();
    for index in 0..10_000u32 {
        let key = format!("key/{index:05}").into_bytes();
        let lease = if index % 7 == 0 { LeaseId(i64::from(index % 3) + 1) } else { LeaseId::NONE };
        let previous = txn.put(&key, b"v", lease.0);
        lessor.key_written(&key, previous.map_or(LeaseId::NONE, |kv| LeaseId(kv.lease)), lease);
    }
    drop(txn);
    lessor.check().unwrap();
    let from_store = Lessor::load(&mut store, config()).unwrap();
    store.commit().unwrap();
    let from_snapshot = Lessor::load(&mut store.reader().snapshot(), config()).unwrap();
    for loaded in [&from_store, &from_snapshot] {
        loaded.check().unwrap();
        assert_eq!(loaded.iter().collect::<Vec<_>>(), lessor.iter().collect::<Vec<_>>());
        assert_eq!(loaded.orphaned_keys_at_load(), 0);
    }
    assert_eq!(from_store.get(LeaseId(2)).unwrap().remaining_ttl_seconds(), 7);
    assert_eq!(lessor.iter().map(Lease::key_count).sum::<usize>(), 10_000usize.div_ceil(7));
}

#[test]
fn load_applies_this_members_minimum_ttl_and_counts_orphans() {
    let (_directory, mut store) = store();
    let mut lessor = Lessor::new(config());
    lessor.grant(&mut store, A, 1, T0).unwrap();
    let mut txn = store.write();
    txn.put(b"orphan", b"v", 0x77);
    drop(txn);
    let mut longer = config();
    longer.ttl_min_seconds = 5;
    let loaded = Lessor::load(&mut store, longer).unwrap();
    let lease = loaded.get(A).unwrap();
    assert_eq!((lease.ttl_requested_seconds(), lease.ttl_seconds()), (1, 5));
    assert_eq!(loaded.orphaned_keys_at_load(), 1, "etcd skips a key whose lease is gone");
    lessor.revoke(&mut store, A).unwrap();
    let loaded = Lessor::load(&mut store, config()).unwrap();
    assert_eq!((loaded.len(), loaded.orphaned_keys_at_load()), (0, 0), "no leases: no key scan");
}

#[test]
fn load_refuses_a_corrupt_record() {
    let (_directory, mut store) = store();
    store.aux_put(AUX_TABLE_LEASES, &lease_key(A), &LeaseRecord { id: B.0, ttl: 5, remaining_ttl: 0 }.encode());
    let error = Lessor::load(&mut store, config()).unwrap_err();
    assert!(error.to_string().contains("holds id b"), "{error}");
    store.aux_put(AUX_TABLE_LEASES, &lease_key(A), &[0xff]);
    assert!(matches!(Lessor::load(&mut store, config()), Err(LoadError::CorruptRecord { .. })));
}
