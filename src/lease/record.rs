//! The lease table in the store (format in the module doc): the record, where the lessor
//! writes it (`LeaseTable`) and where `Lessor::load` reads it and the leased keys
//! (`LeaseSource`).

use prost::Message as _;

use super::{LeaseId, LoadError, TTL_MAX_SECONDS};
use crate::mvcc::{self, MvccError, RangeOptions, RangeResult, AUX_TABLE_LEASES};

/// One lease in the aux table: etcd's leasepb.Lease field numbers.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseRecord {
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The TTL the grant asked for (before the minimum TTL is applied).
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    /// The last checkpointed remaining TTL; 0 = none.
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// The aux key of a lease: its id as 8 bytes big-endian (etcd's int64ToBytes).
pub fn lease_key(id: LeaseId) -> [u8; 8] {
    (id.0 as u64).to_be_bytes()
}

impl LeaseRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        assert!(self.id != 0 && self.ttl <= TTL_MAX_SECONDS && self.remaining_ttl >= 0, "a valid record: {self:?}");
        let bytes = self.encode_to_vec();
        debug_assert_eq!(LeaseRecord::decode_checked(&lease_key(LeaseId(self.id)), &bytes).as_ref(), Ok(self));
        bytes
    }

    /// Decodes and validates an aux entry of the lease table.
    pub(crate) fn decode_checked(key: &[u8], value: &[u8]) -> Result<LeaseRecord, LoadError> {
        let corrupt = |reason: String| LoadError::CorruptRecord { key: key.to_vec(), reason };
        let key_id: [u8; 8] = key.try_into().map_err(|_| corrupt(format!("a key of {} bytes, not 8", key.len())))?;
        let record = LeaseRecord::decode(value).map_err(|error| corrupt(format!("undecodable: {error}")))?;
        if record.id != u64::from_be_bytes(key_id) as i64 {
            return Err(corrupt(format!("the record holds id {:x}", record.id)));
        }
        if record.id == 0 || record.ttl > TTL_MAX_SECONDS || record.remaining_ttl < 0 {
            return Err(corrupt(format!("invalid values {record:?}")));
        }
        Ok(record)
    }
}

/// Where the replicated half writes its records: the store's writer, or the write txn of the
/// batch (same effect: aux changes land in the next commit with every kv change before it).
pub trait LeaseTable {
    fn put_lease_record(&mut self, id: LeaseId, record: &LeaseRecord);
    fn delete_lease_record(&mut self, id: LeaseId);
}

impl LeaseTable for mvcc::Store {
    fn put_lease_record(&mut self, id: LeaseId, record: &LeaseRecord) {
        self.aux_put(AUX_TABLE_LEASES, &lease_key(id), &record.encode());
    }

    fn delete_lease_record(&mut self, id: LeaseId) {
        let deleted = self.aux_delete(AUX_TABLE_LEASES, &lease_key(id));
        assert!(deleted, "lease {:x} had a record", id.0);
    }
}

impl LeaseTable for mvcc::WriteTxn<'_> {
    fn put_lease_record(&mut self, id: LeaseId, record: &LeaseRecord) {
        self.aux_put(AUX_TABLE_LEASES, &lease_key(id), &record.encode());
    }

    fn delete_lease_record(&mut self, id: LeaseId) {
        let deleted = self.aux_delete(AUX_TABLE_LEASES, &lease_key(id));
        assert!(deleted, "lease {:x} had a record", id.0);
    }
}

/// What `Lessor::load` reads: the lease table and ranges of the key space at the current
/// revision. A `Snapshot` sees its commit; a `Store` sees its writer's state (uncommitted
/// changes included: at start there are none).
pub trait LeaseSource {
    fn lease_records(&mut self) -> Vec<(Vec<u8>, Vec<u8>)>;
    fn range_current(&mut self, key: &[u8], range_end: &[u8], options: &RangeOptions)
        -> Result<RangeResult, MvccError>;
}

impl LeaseSource for mvcc::Snapshot {
    fn lease_records(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.aux_scan(AUX_TABLE_LEASES)
    }

    fn range_current(
        &mut self,
        key: &[u8],
        range_end: &[u8],
        options: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        assert_eq!(options.revision, 0, "the lessor loads the current revision");
        self.range(key, range_end, options)
    }
}

impl LeaseSource for mvcc::Store {
    fn lease_records(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.aux_scan(AUX_TABLE_LEASES)
    }

    fn range_current(
        &mut self,
        key: &[u8],
        range_end: &[u8],
        options: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        assert_eq!(options.revision, 0, "the lessor loads the current revision");
        // A write txn that writes nothing reads the writer's state and changes nothing.
        let txn = self.write();
        let result = txn.range(key, range_end, options);
        assert!(!txn.changed());
        result
    }
}
