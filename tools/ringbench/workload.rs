//! The requests of each subcommand, generated from the request's index as etcd's benchmark
//! generates them (etcd 3.4 tools/benchmark): keys are the varint of an index in a
//! zero-filled buffer of --key-size bytes, values one random buffer of --val-size bytes.

use bytes::Bytes;
use ringd::api::pb::etcdserverpb as pb;
use ringd::client::{encode, path};

use crate::cli::{PutArgs, RangeArgs, TxnMixedArgs, TxnPutArgs};

/// Which report a request counts in (txn-mixed keeps reads and writes apart).
pub const CLASS_MAIN: usize = 0;
pub const CLASS_READ: usize = 0;
pub const CLASS_WRITE: usize = 1;

/// One request, framed and ready to send.
pub struct Call {
    pub path: &'static str,
    pub body: Bytes,
    pub class: usize,
}

/// What a benchmark sends: request `index` of `--total`.
pub trait Workload: Send + Sync {
    /// Names of the reports, one per class (etcd's report names).
    fn classes(&self) -> Vec<String>;
    fn call(&self, index: usize, random: &mut Random) -> Call;
}

/// splitmix64: a small, fast, seedable generator; quality is ample for picking keys.
pub struct Random(ringd::raft::SplitMix64);

impl Random {
    pub fn new(seed: u64) -> Random {
        Random(ringd::raft::SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15))
    }

    pub fn next_u64(&mut self) -> u64 {
        ringd::raft::RandomSource::next_u64(&mut self.0)
    }

    /// Uniform in [0, bound).
    pub fn below(&mut self, bound: usize) -> usize {
        assert!(bound > 0);
        ((self.next_u64() as u128 * bound as u128) >> 64) as usize
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn bytes(&mut self, length: usize) -> Vec<u8> {
        (0..length).map(|_| self.next_u64() as u8).collect()
    }
}

/// Go's binary.PutVarint (zigzag) of `value` into a zero-filled key of `key_size` bytes,
/// cut to the key size as etcd's buffer would be.
pub fn varint_key(value: i64, key_size: usize) -> Vec<u8> {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut key = vec![0u8; key_size];
    let mut position = 0;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        let last = zigzag == 0;
        if position < key_size {
            key[position] = if last { byte } else { byte | 0x80 };
        }
        position += 1;
        if last {
            break;
        }
    }
    key
}

fn put_request(key: Vec<u8>, value: &[u8]) -> pb::PutRequest {
    pb::PutRequest { key, value: value.to_vec(), ..Default::default() }
}

pub struct Put {
    pub args: PutArgs,
    pub value: Vec<u8>,
}

impl Workload for Put {
    fn classes(&self) -> Vec<String> {
        vec!["put".into()]
    }

    fn call(&self, index: usize, random: &mut Random) -> Call {
        let key_index = if self.args.sequential_keys {
            index % self.args.key_space_size
        } else {
            random.below(self.args.key_space_size)
        };
        let request = put_request(varint_key(key_index as i64, self.args.key_size), &self.value);
        Call { path: path::PUT, body: encode(&request), class: CLASS_MAIN }
    }
}

pub struct Range {
    body: Bytes,
}

impl Range {
    pub fn new(args: &RangeArgs) -> Range {
        let request = pb::RangeRequest {
            key: args.key.clone().into_bytes(),
            range_end: args.end.clone().unwrap_or_default().into_bytes(),
            limit: args.limit,
            serializable: args.consistency == "s",
            ..Default::default()
        };
        Range { body: encode(&request) }
    }
}

impl Workload for Range {
    fn classes(&self) -> Vec<String> {
        vec!["range".into()]
    }

    fn call(&self, _index: usize, _random: &mut Random) -> Call {
        Call { path: path::RANGE, body: self.body.clone(), class: CLASS_MAIN }
    }
}

pub struct TxnPut {
    pub args: TxnPutArgs,
    pub value: Vec<u8>,
}

impl Workload for TxnPut {
    fn classes(&self) -> Vec<String> {
        vec!["txn-put".into()]
    }

    fn call(&self, index: usize, _random: &mut Random) -> Call {
        let operations = self.args.txn_ops;
        let success = (0..operations)
            .map(|op| {
                let key_index = (index * operations + op) % self.args.key_space_size;
                let put = put_request(varint_key(key_index as i64, self.args.key_size), &self.value);
                pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put)) }
            })
            .collect();
        let request = pb::TxnRequest { success, ..Default::default() };
        Call { path: path::TXN, body: encode(&request), class: CLASS_MAIN }
    }
}

pub struct TxnMixed {
    pub args: TxnMixedArgs,
    pub value: Vec<u8>,
    read: Bytes,
}

impl TxnMixed {
    pub fn new(args: TxnMixedArgs, value: Vec<u8>) -> TxnMixed {
        // etcd: OpGet("", WithRange(end-key), WithPrefix(), WithLimit(limit)); the prefix of
        // the empty key wins over --end-key and is key "\0", end "\0": every key, at most
        // --limit of them.
        let range = pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            limit: args.limit,
            serializable: args.consistency == "s",
            ..Default::default()
        };
        let txn = pb::TxnRequest {
            success: vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestRange(range)) }],
            ..Default::default()
        };
        TxnMixed { args, value, read: encode(&txn) }
    }
}

impl Workload for TxnMixed {
    fn classes(&self) -> Vec<String> {
        vec!["txn-mixed-read".into(), "txn-mixed-write".into()]
    }

    fn call(&self, index: usize, random: &mut Random) -> Call {
        let ratio = self.args.rw_ratio;
        if random.unit() < ratio / (1.0 + ratio) {
            return Call { path: path::TXN, body: self.read.clone(), class: CLASS_READ };
        }
        let key = varint_key((index % self.args.key_space_size) as i64, self.args.key_size);
        let put = put_request(key, &self.value);
        let txn = pb::TxnRequest {
            success: vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put)) }],
            ..Default::default()
        };
        Call { path: path::TXN, body: encode(&txn), class: CLASS_WRITE }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_gos_put_varint() {
        assert_eq!(varint_key(0, 8), vec![0; 8]);
        assert_eq!(varint_key(1, 4), vec![2, 0, 0, 0]);
        assert_eq!(varint_key(64, 4), vec![0x80, 0x01, 0, 0]);
        assert_eq!(varint_key(64, 1), vec![0x80]);
    }
}
