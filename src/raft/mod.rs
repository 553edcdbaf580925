//! ringd's Raft: a deterministic, sans-IO consensus state machine in the style of etcd's
//! `raft` package, with raft-rs's numbered Ready.
//!
//! Owns: the log in memory since the last snapshot (`log`), replication progress of each
//! peer (`progress`), elections with pre-vote and check-quorum (`raft`), appends, the
//! commit rule and ReadIndex rounds (`replication`, `read_only`), one-at-a-time membership
//! changes and snapshots (`membership`), and the Ready hand-off (`ready`).
//! Depends on nothing with I/O: no files, sockets, clock, threads or global randomness.
//! Inputs are `step(message)`, `tick()`, `propose(data)`, `read_index(context)`,
//! `propose_conf_change`, `transfer_leader`; output is a numbered `Ready`; the driver
//! reports durability with `on_persist_ready(number)`. Randomness comes from an injected
//! `RandomSource`, so a seed replays a run exactly.
//!
//! Invariants (the simulator checks them after every step):
//! - election safety: at most one leader per term;
//! - log matching: two logs holding an entry with the same index and term are identical
//!   up to it;
//! - leader completeness: a committed entry is in the log of every later leader;
//! - state machine safety: no two members apply different entries at one index;
//! - a member answers (votes, append acknowledgements) only from persisted state, and the
//!   leader counts itself towards a quorum only for entries on its own disk.
//!
//! `Raft::check()` asserts the per-member invariants (log indexes, role, progress).
//!
//! Bounds: unacknowledged appends per follower (`inflight_messages_max`), bytes per append
//! (`append_size_bytes_max`), bytes of committed entries per Ready
//! (`committed_size_bytes_max`), bytes of uncommitted proposals (`uncommitted_size_bytes_max`,
//! beyond which `propose` refuses), reads waiting for a round and rounds in flight
//! (`read_only`).
//!
//! Restart: build `Raft::new` from what is on disk (`RestartState`: hard state, newest
//! snapshot, entries after it); a new cluster's founders start from
//! `RestartState::bootstrap(voters)`, a joining member from `RestartState::default()`.
//!
//! Membership: single-server changes (Raft thesis §4.1), effective when appended, with
//! learners for catching up. We chose them over joint consensus because the server only
//! ever adds, removes or promotes one member at a time (etcd's MemberAdd/Remove/Promote),
//! the configuration is then a pure function of the log (no separate "applied conf" state
//! for the driver to feed back), and the rule that makes them safe is two checks at the
//! leader (see `membership`). `ConfChangeV2` entries are not produced.

pub mod log;
pub mod membership;
pub mod pb;
pub mod progress;
#[allow(clippy::module_inception)]
pub mod raft;
pub mod read_only;
pub mod ready;
pub mod replication;

pub use self::membership::apply_conf_change;
pub use self::raft::{Config, ProposeError, Raft, RandomSource, RestartState, Role, SplitMix64, NONE};
pub use self::read_only::ReadState;
pub use self::ready::Ready;
