//! Server-chosen lease ids (etcd's idutil.Generator, as etcd's LeaseGrant uses it).

use super::LeaseId;

/// Bits of the timestamp and of the counter below the member prefix.
const TIMESTAMP_BITS: u32 = 40;
const COUNTER_BITS: u32 = 8;
const SUFFIX_BITS: u32 = TIMESTAMP_BITS + COUNTER_BITS;

/// Picks the id of a LeaseGrant whose client sent 0, on the member that proposes it (before
/// proposing, so that every member applies the same id). An id is, from the high bits down:
/// the low 16 bits of the member id, the low 40 bits of the generator's start time in Unix
/// milliseconds, an 8-bit counter that may carry into the timestamp; then the sign bit is
/// cleared (etcd only hands out positive ids) and 0 is skipped. Ids differ across members
/// (prefix) and across restarts more than a millisecond apart (timestamp). A picked id may
/// still equal a client-chosen one: the grant then fails with "lease already exists", as in
/// etcd.
#[derive(Clone, Debug)]
pub struct LeaseIdGenerator {
    prefix: u64,
    suffix: u64,
}

impl LeaseIdGenerator {
    pub fn new(member_id: u64, unix_time_millis: u64) -> LeaseIdGenerator {
        let prefix = u64::from(member_id as u16) << SUFFIX_BITS;
        let suffix = (unix_time_millis & ((1 << TIMESTAMP_BITS) - 1)) << COUNTER_BITS;
        LeaseIdGenerator { prefix, suffix }
    }

    pub fn next_id(&mut self) -> LeaseId {
        loop {
            self.suffix = self.suffix.wrapping_add(1);
            let id = (self.prefix | (self.suffix & ((1 << SUFFIX_BITS) - 1))) & (i64::MAX as u64);
            if id != 0 {
                assert!(id <= i64::MAX as u64);
                return LeaseId(id as i64);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn suffix_for_test(&mut self, suffix: u64) {
        self.suffix = suffix;
    }
}
