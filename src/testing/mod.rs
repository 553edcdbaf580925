//! Test machinery shared by the test suites (compiled into the library so that `tests/` can
//! use it): the simulated disk (fault-injecting, deterministic from a seed) and the
//! linearizability checker for client histories.

pub mod linearizability;
pub mod sim_disk;
