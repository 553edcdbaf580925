//! A linearizability checker (Wing & Gong's search with Lowe's memoisation, as in
//! porcupine) for histories of a key-value store, used by the Raft simulator.
//!
//! A history is a list of operations with a call time and a return time; an operation
//! whose outcome the client never learned (timeout, crash) has `return_time == None` and
//! may take effect at any point after its call, or never. The history is split per key
//! (a KV store is linearizable iff each key's register is: P-compositionality) and each
//! key is searched separately.
//!
//! The search walks the calls in time order; at each call it tries to linearize that
//! operation next (its output must match the model), and backtracks when it meets the
//! return of an operation not yet linearized. A cache of (set of linearized operations,
//! model state) prunes states already explored.

use std::collections::{BTreeMap, HashSet};

pub type Key = u64;
pub type Value = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvInput {
    Put { key: Key, value: Value },
    Get { key: Key },
}

impl KvInput {
    pub fn key(&self) -> Key {
        match self {
            KvInput::Put { key, .. } | KvInput::Get { key } => *key,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOutput {
    Written,
    Read(Option<Value>),
    /// The client never saw the outcome.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub client_id: u64,
    pub input: KvInput,
    pub output: KvOutput,
    pub call_time: u64,
    pub return_time: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    Linearizable,
    /// No linearization exists for the operations on `key`.
    NotLinearizable {
        key: Key,
        operations: Vec<Operation>,
    },
    /// The search gave up after `steps_max` steps on `key`; nothing is proven.
    Inconclusive {
        key: Key,
    },
}

/// Upper bound on search steps per key before the checker answers Inconclusive.
pub const SEARCH_STEPS_MAX: u64 = 50_000_000;

/// Checks a whole KV history.
pub fn check_kv_history(history: &[Operation]) -> CheckResult {
    let mut per_key: BTreeMap<Key, Vec<Operation>> = BTreeMap::new();
    for operation in history {
        assert!(
            operation.return_time.is_none_or(|returned| returned >= operation.call_time),
            "returns before call: {:?}",
            operation
        );
        let unknown_read = matches!(operation.input, KvInput::Get { .. }) && operation.output == KvOutput::Unknown;
        if unknown_read || (operation.return_time.is_none() && matches!(operation.input, KvInput::Get { .. })) {
            continue;
        }
        per_key.entry(operation.input.key()).or_default().push(operation.clone());
    }
    for (key, operations) in per_key {
        match check_register(&operations) {
            Some(true) => {}
            Some(false) => return CheckResult::NotLinearizable { key, operations },
            None => return CheckResult::Inconclusive { key },
        }
    }
    CheckResult::Linearizable
}

/// The register model: state is the current value; returns the next state if the
/// operation may produce its output from `state`.
fn step_register(state: Option<Value>, operation: &Operation) -> Option<Option<Value>> {
    match (operation.input, operation.output) {
        (KvInput::Put { value, .. }, KvOutput::Written | KvOutput::Unknown) => Some(Some(value)),
        (KvInput::Get { .. }, KvOutput::Read(read)) if read == state => Some(state),
        (KvInput::Get { .. }, KvOutput::Unknown) => Some(state),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
struct Event {
    operation: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For a call, the list position of its return.
    matching: usize,
}

const HEAD: usize = 0;
const END: usize = usize::MAX;

fn build_events(operations: &[Operation]) -> Vec<Event> {
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(operations.len() * 2);
    for (index, operation) in operations.iter().enumerate() {
        order.push((operation.call_time, true, index));
        order.push((operation.return_time.unwrap_or(u64::MAX), false, index));
    }
    // At equal times calls come first: operations that touch in time count as concurrent.
    order.sort_by_key(|(time, is_call, index)| (*time, !*is_call, *index));
    let mut events = vec![Event { operation: usize::MAX, is_call: false, prev: END, next: 1, matching: END }];
    let mut return_position = vec![0usize; operations.len()];
    for (position, (_, is_call, index)) in order.iter().enumerate() {
        let slot = position + 1;
        let next = if position + 1 == order.len() { END } else { slot + 1 };
        events.push(Event { operation: *index, is_call: *is_call, prev: slot - 1, next, matching: END });
        if !*is_call {
            return_position[*index] = slot;
        }
    }
    for slot in 1..events.len() {
        if events[slot].is_call {
            events[slot].matching = return_position[events[slot].operation];
        }
    }
    if events.len() == 1 {
        events[HEAD].next = END;
    }
    events
}

fn unlink(events: &mut [Event], slot: usize) {
    let Event { prev, next, .. } = events[slot];
    events[prev].next = next;
    if next != END {
        events[next].prev = prev;
    }
}

fn relink(events: &mut [Event], slot: usize) {
    let Event { prev, next, .. } = events[slot];
    events[prev].next = slot;
    if next != END {
        events[next].prev = slot;
    }
}

/// Some(true) when linearizable, Some(false) when not, None when the search gave up.
fn check_register(operations: &[Operation]) -> Option<bool> {
    let mut events = build_events(operations);
    let words = operations.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<Value>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<Value>)> = Vec::new();
    let mut state: Option<Value> = None;
    let mut cursor = events[HEAD].next;
    let mut steps = 0u64;
    while cursor != END {
        steps += 1;
        if steps > SEARCH_STEPS_MAX {
            return None;
        }
        let event = events[cursor];
        if event.is_call {
            let operation = &operations[event.operation];
            if let Some(next_state) = step_register(state, operation) {
                linearized[event.operation / 64] |= 1 << (event.operation % 64);
                if cache.insert((linearized.clone(), next_state)) {
                    stack.push((cursor, state));
                    state = next_state;
                    unlink(&mut events, event.matching);
                    unlink(&mut events, cursor);
                    cursor = events[HEAD].next;
                    continue;
                }
                linearized[event.operation / 64] &= !(1 << (event.operation % 64));
            }
            cursor = event.next;
            continue;
        }
        // A return whose call is not linearized yet: undo the most recent choice.
        let Some((call_slot, previous_state)) = stack.pop() else { return Some(false) };
        state = previous_state;
        let operation = events[call_slot].operation;
        linearized[operation / 64] &= !(1 << (operation % 64));
        relink(&mut events, call_slot);
        let return_slot = events[call_slot].matching;
        relink(&mut events, return_slot);
        cursor = events[call_slot].next;
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(client_id: u64, key: Key, value: Value, call_time: u64, return_time: Option<u64>) -> Operation {
        let output = if return_time.is_some() { KvOutput::Written } else { KvOutput::Unknown };
        Operation { client_id, input: KvInput::Put { key, value }, output, call_time, return_time }
    }

    fn get(client_id: u64, key: Key, read: Option<Value>, call_time: u64, return_time: u64) -> Operation {
        Operation {
            client_id,
            input: KvInput::Get { key },
            output: KvOutput::Read(read),
            call_time,
            return_time: Some(return_time),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(check_kv_history(&[]), CheckResult::Linearizable);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let history = vec![
            put(1, 1, 10, 0, Some(1)),
            get(1, 1, Some(10), 2, 3),
            put(2, 1, 11, 4, Some(5)),
            get(1, 1, Some(11), 6, 7),
        ];
        assert_eq!(check_kv_history(&history), CheckResult::Linearizable);
    }

    #[test]
    fn concurrent_reads_may_see_either_side_of_a_write() {
        let history = vec![
            put(1, 1, 10, 0, Some(1)),
            put(2, 1, 11, 2, Some(10)),
            get(3, 1, Some(11), 3, 4),
            get(4, 1, Some(11), 5, 6),
            get(5, 1, Some(11), 7, 12),
        ];
        assert_eq!(check_kv_history(&history), CheckResult::Linearizable);
        let before = vec![put(1, 1, 10, 0, Some(1)), put(2, 1, 11, 2, Some(10)), get(3, 1, Some(10), 3, 4)];
        assert_eq!(check_kv_history(&before), CheckResult::Linearizable);
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_rejected() {
        let history = vec![put(1, 1, 10, 0, Some(1)), put(1, 1, 11, 2, Some(3)), get(2, 1, Some(10), 4, 5)];
        assert!(matches!(check_kv_history(&history), CheckResult::NotLinearizable { key: 1, .. }));
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        let history = vec![put(1, 1, 10, 0, Some(1)), get(2, 1, Some(99), 2, 3)];
        assert!(matches!(check_kv_history(&history), CheckResult::NotLinearizable { .. }));
    }

    #[test]
    fn initial_read_must_be_empty() {
        assert!(matches!(check_kv_history(&[get(1, 1, Some(3), 0, 1)]), CheckResult::NotLinearizable { .. }));
        assert_eq!(check_kv_history(&[get(1, 1, None, 0, 1)]), CheckResult::Linearizable);
    }

    #[test]
    fn reads_going_back_in_time_are_rejected() {
        // Both reads overlap the write, but once one read returned the new value a later
        // read may not return the old one (the classic stale-leader anomaly).
        let history = vec![
            put(1, 1, 10, 0, Some(1)),
            put(2, 1, 11, 2, Some(20)),
            get(3, 1, Some(11), 3, 4),
            get(4, 1, Some(10), 5, 6),
        ];
        assert!(matches!(check_kv_history(&history), CheckResult::NotLinearizable { .. }));
    }

    #[test]
    fn lost_write_is_rejected_but_unknown_write_may_vanish_or_apply() {
        let lost = vec![put(1, 1, 10, 0, Some(1)), get(2, 1, None, 2, 3)];
        assert!(matches!(check_kv_history(&lost), CheckResult::NotLinearizable { .. }));
        let vanished = vec![put(1, 1, 10, 0, None), get(2, 1, None, 2, 3)];
        assert_eq!(check_kv_history(&vanished), CheckResult::Linearizable);
        let applied_late = vec![put(1, 1, 10, 0, None), get(2, 1, None, 2, 3), get(2, 1, Some(10), 40, 41)];
        assert_eq!(check_kv_history(&applied_late), CheckResult::Linearizable);
        let flicker = vec![put(1, 1, 10, 0, None), get(2, 1, Some(10), 2, 3), get(2, 1, None, 4, 5)];
        assert!(matches!(check_kv_history(&flicker), CheckResult::NotLinearizable { .. }));
    }

    #[test]
    fn keys_are_checked_independently() {
        let history = vec![
            put(1, 1, 10, 0, Some(1)),
            put(1, 2, 20, 0, Some(1)),
            get(2, 2, Some(20), 2, 3),
            get(2, 1, None, 2, 3),
        ];
        assert!(matches!(check_kv_history(&history), CheckResult::NotLinearizable { key: 1, .. }));
    }

    #[test]
    fn write_order_must_be_consistent_across_readers() {
        // Two concurrent writes; one reader sees 10 then 11, another sees 11 then 10:
        // no single order of the writes explains both.
        let history = vec![
            put(1, 1, 10, 0, Some(100)),
            put(2, 1, 11, 0, Some(100)),
            get(3, 1, Some(10), 10, 11),
            get(3, 1, Some(11), 12, 13),
            get(4, 1, Some(11), 14, 15),
            get(4, 1, Some(10), 16, 17),
        ];
        assert!(matches!(check_kv_history(&history), CheckResult::NotLinearizable { .. }));
    }

    /// Exhaustive reference: tries every order of the operations that respects real time;
    /// a pending write may also be left out.
    fn brute_force(operations: &[Operation]) -> bool {
        fn search(operations: &[Operation], done: &mut Vec<bool>, state: Option<Value>) -> bool {
            let all_completed_done = operations.iter().zip(done.iter()).all(|(op, d)| *d || op.return_time.is_none());
            if all_completed_done {
                return true;
            }
            for candidate in 0..operations.len() {
                if done[candidate] {
                    continue;
                }
                // Every operation that returned before this one was called must come first.
                let blocked = (0..operations.len()).any(|other| {
                    !done[other]
                        && other != candidate
                        && operations[other].return_time.is_some_and(|r| r < operations[candidate].call_time)
                });
                if blocked {
                    continue;
                }
                if let Some(next) = step_register(state, &operations[candidate]) {
                    done[candidate] = true;
                    if search(operations, done, next) {
                        return true;
                    }
                    done[candidate] = false;
                }
            }
            false
        }
        search(operations, &mut vec![false; operations.len()], None)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        let mut seed = 0x1234_5678u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let mut rejected = 0;
        for _ in 0..3000 {
            let count = 1 + next(6) as usize;
            let mut history = Vec::new();
            for client in 0..count as u64 {
                let call_time = next(20);
                let return_time = if next(8) == 0 { None } else { Some(call_time + next(10)) };
                let operation = if next(2) == 0 {
                    put(client, 1, 1 + next(3), call_time, return_time)
                } else {
                    let read = if next(4) == 0 { None } else { Some(1 + next(3)) };
                    get(client, 1, read, call_time, return_time.unwrap_or(call_time + 5))
                };
                history.push(operation);
            }
            let expected = brute_force(&history);
            let actual = check_kv_history(&history) == CheckResult::Linearizable;
            assert_eq!(actual, expected, "{:#?}", history);
            rejected += usize::from(!expected);
        }
        assert!(rejected > 300, "the generator must produce non-linearizable histories too ({})", rejected);
    }

    #[test]
    fn many_concurrent_operations_finish_quickly() {
        let mut history = Vec::new();
        for round in 0..200u64 {
            let base = round * 10;
            history.push(put(round % 5, 1, round, base, Some(base + 15)));
            history.push(get(round % 5 + 10, 1, Some(round), base + 14, base + 16));
        }
        assert_eq!(check_kv_history(&history), CheckResult::Linearizable);
    }
}
