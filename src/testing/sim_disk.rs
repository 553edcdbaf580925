//! A simulated disk for crash tests: an in-memory [`Storage`] that behaves like a real disk
//! under power loss, deterministically from a seed.
//!
//! Model (what a crash does, and why it is allowed to):
//! - Every file has a *durable* image (what survived the last successful `sync_data`) and the
//!   list of writes made since. Reads see the latest writes.
//! - On a crash each unsynced write is torn at `tear_size_bytes` boundaries (512 by default, a
//!   physical sector): every piece independently reaches the durable image or is lost, so a
//!   crash can keep a later piece of a write and lose an earlier one, as a device with a volatile
//!   cache may.
//! - Directory operations (create, rename, remove) since the last `Storage::sync` survive as a
//!   random prefix of their sequence, like a journaling file system.
//! - A crash can be scheduled at the n-th I/O operation (`crash_at_io`): that operation takes
//!   effect only as an unsynced change, returns an error, and so does every later operation
//!   until `restart()`, which computes the post-crash image and invalidates old handles.
//! - An fsync error can be injected at the n-th operation (`fail_sync_at_io`): that sync fails,
//!   and, as on Linux, the dirty data it covered is then kept or lost piece by piece while the
//!   next sync reports success. A caller that retried the sync would wrongly believe it durable.
//!
//! Every random choice comes from one seeded generator, so a failing test replays from its seed.

use crate::io::{DirectFile, Storage, SECTOR_SIZE_BYTES};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::rc::Rc;

/// How the simulated disk behaves.
#[derive(Clone, Debug)]
pub struct SimDiskConfig {
    pub seed: u64,
    /// Granularity at which unsynced writes tear on a crash.
    pub tear_size_bytes: usize,
    /// Yield to the executor before every operation, so concurrent tasks interleave as they
    /// would around real I/O.
    pub yield_on_io: bool,
}

impl SimDiskConfig {
    pub fn new(seed: u64) -> SimDiskConfig {
        SimDiskConfig { seed, tear_size_bytes: 512, yield_on_io: true }
    }
}

/// Counters of what reached the simulated device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimDiskStats {
    pub io_count: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub syncs: u64,
}

/// A handle to the simulated disk; clones share it. A handle belongs to one "boot": after
/// `restart()` only the handle it was called on (and clones made from it afterwards) works, so
/// the tasks of the crashed process cannot touch the disk of the next one.
#[derive(Clone)]
pub struct SimDisk {
    state: Rc<RefCell<DiskState>>,
    generation: Cell<u64>,
}

struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    unsynced_writes: Vec<(u64, Vec<u8>)>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link { name: String, inode: u64 },
    Rename { from: String, to: String },
    Unlink { name: String },
}

struct DiskState {
    config: SimDiskConfig,
    rng: SplitMix64,
    generation: u64,
    inodes: HashMap<u64, Inode>,
    inode_next: u64,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    unsynced_dir_ops: Vec<DirOp>,
    crash_at_io: Option<u64>,
    fail_sync_at_io: Option<u64>,
    crashed: bool,
    stats: SimDiskStats,
}

/// A small deterministic generator (splitmix64): enough for fault choices, no dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64(crate::raft::SplitMix64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(crate::raft::SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        crate::raft::RandomSource::next_u64(&mut self.0)
    }

    /// A value in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

fn crashed_error() -> io::Error {
    io::Error::other("simulated crash: the disk is gone until restart()")
}

/// What the operation about to run must do, decided by the fault schedule.
enum Fault {
    None,
    CrashAfterThis,
    FailSync,
}

impl DiskState {
    /// Counts one I/O and returns the fault scheduled for it; `Err` once crashed.
    fn begin_io(&mut self, generation: u64) -> io::Result<Fault> {
        if self.crashed || generation != self.generation {
            return Err(crashed_error());
        }
        let io_index = self.stats.io_count;
        self.stats.io_count += 1;
        if self.crash_at_io == Some(io_index) {
            self.crashed = true;
            return Ok(Fault::CrashAfterThis);
        }
        if self.fail_sync_at_io == Some(io_index) {
            return Ok(Fault::FailSync);
        }
        Ok(Fault::None)
    }

    /// Tears every unsynced write of `inode` into its durable image, piece by piece.
    fn settle_unsynced(&mut self, inode_id: u64) {
        let tear_size_bytes = self.config.tear_size_bytes;
        let inode = self.inodes.get_mut(&inode_id).expect("inode exists");
        for (offset, data) in std::mem::take(&mut inode.unsynced_writes) {
            for (piece_index, piece) in data.chunks(tear_size_bytes).enumerate() {
                if !self.rng.coin() {
                    continue;
                }
                let start = offset as usize + piece_index * tear_size_bytes;
                if inode.durable.len() < start + piece.len() {
                    inode.durable.resize(start + piece.len(), 0);
                }
                inode.durable[start..start + piece.len()].copy_from_slice(piece);
            }
        }
    }

    fn settle_directory(&mut self) {
        let ops = std::mem::take(&mut self.unsynced_dir_ops);
        let kept = self.rng.below(ops.len() as u64 + 1) as usize;
        for op in &ops[..kept] {
            match op {
                DirOp::Link { name, inode } => {
                    self.durable_names.insert(name.clone(), *inode);
                }
                DirOp::Rename { from, to } => {
                    if let Some(inode) = self.durable_names.remove(from) {
                        self.durable_names.insert(to.clone(), inode);
                    }
                }
                DirOp::Unlink { name } => {
                    self.durable_names.remove(name);
                }
            }
        }
    }

    fn record_dir_op(&mut self, op: DirOp) {
        match &op {
            DirOp::Link { name, inode } => self.names.insert(name.clone(), *inode),
            DirOp::Rename { from, to } => {
                let inode = self.names.remove(from).expect("renamed file exists");
                self.names.insert(to.clone(), inode)
            }
            DirOp::Unlink { name } => self.names.remove(name),
        };
        self.unsynced_dir_ops.push(op);
    }
}

impl SimDisk {
    pub fn new(config: SimDiskConfig) -> SimDisk {
        assert!(config.tear_size_bytes > 0 && SECTOR_SIZE_BYTES.is_multiple_of(config.tear_size_bytes));
        let rng = SplitMix64::new(config.seed);
        let state = DiskState {
            config,
            rng,
            generation: 0,
            inodes: HashMap::new(),
            inode_next: 1,
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            unsynced_dir_ops: Vec::new(),
            crash_at_io: None,
            fail_sync_at_io: None,
            crashed: false,
            stats: SimDiskStats::default(),
        };
        SimDisk { state: Rc::new(RefCell::new(state)), generation: Cell::new(0) }
    }

    /// Crashes when I/O number `io_index` (counted from 0 since the disk was made) starts.
    pub fn crash_at_io(&self, io_index: u64) {
        self.state.borrow_mut().crash_at_io = Some(io_index);
    }

    /// Makes the sync that is I/O number `io_index` fail.
    pub fn fail_sync_at_io(&self, io_index: u64) {
        self.state.borrow_mut().fail_sync_at_io = Some(io_index);
    }

    /// Crashes now: every later operation fails until `restart()`.
    pub fn crash(&self) {
        self.state.borrow_mut().crashed = true;
    }

    pub fn has_crashed(&self) -> bool {
        self.state.borrow().crashed
    }

    /// Power comes back: unsynced data and directory changes are torn as described in the
    /// module doc, handles from before become invalid, and the fault schedule is cleared.
    pub fn restart(&self) {
        let mut state = self.state.borrow_mut();
        let inode_ids: Vec<u64> = state.inodes.keys().copied().collect();
        let mut sorted_ids = inode_ids;
        sorted_ids.sort_unstable();
        for inode_id in sorted_ids {
            state.settle_unsynced(inode_id);
        }
        state.settle_directory();
        let live: std::collections::HashSet<u64> = state.durable_names.values().copied().collect();
        state.inodes.retain(|id, _| live.contains(id));
        for inode in state.inodes.values_mut() {
            inode.current = inode.durable.clone();
        }
        state.names = state.durable_names.clone();
        state.generation += 1;
        self.generation.set(state.generation);
        state.crashed = false;
        state.crash_at_io = None;
        state.fail_sync_at_io = None;
    }

    pub fn stats(&self) -> SimDiskStats {
        self.state.borrow().stats
    }

    /// The names in the directory as the running system sees them, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.state.borrow().names.keys().cloned().collect()
    }

    /// The latest contents of a file (what reads return).
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        let inode = state.names.get(name)?;
        Some(state.inodes[inode].current.clone())
    }

    /// Overwrites bytes of a file in both its durable and current images: bit rot, for
    /// corruption tests.
    pub fn corrupt(&self, name: &str, offset_bytes: usize, bytes: &[u8]) {
        let mut state = self.state.borrow_mut();
        let inode_id = *state.names.get(name).expect("file exists");
        let inode = state.inodes.get_mut(&inode_id).expect("inode exists");
        let end = offset_bytes + bytes.len();
        assert!(end <= inode.durable.len() && end <= inode.current.len());
        inode.durable[offset_bytes..end].copy_from_slice(bytes);
        inode.current[offset_bytes..end].copy_from_slice(bytes);
    }

    async fn maybe_yield(&self) {
        if self.state.borrow().config.yield_on_io {
            futures_lite::future::yield_now().await;
        }
    }

    fn check_alive(&self) -> io::Result<()> {
        let state = self.state.borrow();
        if state.crashed || state.generation != self.generation.get() {
            return Err(crashed_error());
        }
        Ok(())
    }

    fn open_handle(&self, name: &str) -> io::Result<SimFile> {
        self.check_alive()?;
        let state = self.state.borrow();
        match state.names.get(name) {
            Some(inode) => Ok(SimFile { disk: self.clone(), inode: *inode, generation: state.generation }),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("sim: no file {name}"))),
        }
    }
}

/// An open file on the simulated disk.
pub struct SimFile {
    disk: SimDisk,
    inode: u64,
    generation: u64,
}

impl Storage for SimDisk {
    type File = SimFile;

    async fn list(&self) -> io::Result<Vec<String>> {
        self.check_alive()?;
        Ok(self.state.borrow().names.keys().cloned().collect())
    }

    async fn create_file(&self, name: &str) -> io::Result<SimFile> {
        self.maybe_yield().await;
        let mut state = self.state.borrow_mut();
        let fault = state.begin_io(self.generation.get())?;
        if state.names.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("sim: {name} exists")));
        }
        let inode = state.inode_next;
        state.inode_next += 1;
        state.inodes.insert(inode, Inode { durable: Vec::new(), current: Vec::new(), unsynced_writes: Vec::new() });
        state.record_dir_op(DirOp::Link { name: name.to_string(), inode });
        if let Fault::CrashAfterThis = fault {
            return Err(crashed_error());
        }
        drop(state);
        self.open_handle(name)
    }

    async fn open_file(&self, name: &str) -> io::Result<SimFile> {
        self.open_handle(name)
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.maybe_yield().await;
        let mut state = self.state.borrow_mut();
        let fault = state.begin_io(self.generation.get())?;
        if !state.names.contains_key(from) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("sim: no file {from}")));
        }
        state.record_dir_op(DirOp::Rename { from: from.to_string(), to: to.to_string() });
        match fault {
            Fault::CrashAfterThis => Err(crashed_error()),
            _ => Ok(()),
        }
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.maybe_yield().await;
        let mut state = self.state.borrow_mut();
        let fault = state.begin_io(self.generation.get())?;
        if !state.names.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("sim: no file {name}")));
        }
        state.record_dir_op(DirOp::Unlink { name: name.to_string() });
        match fault {
            Fault::CrashAfterThis => Err(crashed_error()),
            _ => Ok(()),
        }
    }

    async fn sync(&self) -> io::Result<()> {
        self.maybe_yield().await;
        let mut state = self.state.borrow_mut();
        match state.begin_io(self.generation.get())? {
            Fault::CrashAfterThis => Err(crashed_error()),
            Fault::FailSync => {
                state.settle_directory();
                Err(io::Error::other("simulated directory fsync failure"))
            }
            Fault::None => {
                state.durable_names = state.names.clone();
                state.unsynced_dir_ops.clear();
                Ok(())
            }
        }
    }

    fn describe(&self, name: &str) -> String {
        format!("sim:{name}")
    }
}

impl DirectFile for SimFile {
    type WriteBuffer = Vec<u8>;
    type ReadBuffer = Vec<u8>;

    fn alloc_write_buffer(&self, len_bytes: usize) -> Vec<u8> {
        assert!(len_bytes > 0 && len_bytes.is_multiple_of(SECTOR_SIZE_BYTES), "unaligned length {len_bytes}");
        // Garbage, not zeros: the caller must fill every byte, as with a real DMA buffer.
        vec![0xA5; len_bytes]
    }

    async fn write_at(&self, buffer: Vec<u8>, offset_bytes: u64) -> io::Result<()> {
        assert!(offset_bytes.is_multiple_of(SECTOR_SIZE_BYTES as u64), "unaligned offset {offset_bytes}");
        assert!(buffer.len().is_multiple_of(SECTOR_SIZE_BYTES), "unaligned length {}", buffer.len());
        self.disk.maybe_yield().await;
        let mut state = self.disk.state.borrow_mut();
        let fault = state.begin_io(self.generation)?;
        state.stats.writes += 1;
        state.stats.bytes_written += buffer.len() as u64;
        let inode = state.inodes.get_mut(&self.inode).expect("open inode exists");
        let start = offset_bytes as usize;
        let end = start + buffer.len();
        if inode.current.len() < end {
            inode.current.resize(end, 0);
        }
        inode.current[start..end].copy_from_slice(&buffer);
        inode.unsynced_writes.push((offset_bytes, buffer));
        match fault {
            Fault::CrashAfterThis => Err(crashed_error()),
            _ => Ok(()),
        }
    }

    async fn read_at(&self, offset_bytes: u64, len_bytes: usize) -> io::Result<Vec<u8>> {
        let state = self.disk.state.borrow();
        if state.crashed || self.generation != state.generation {
            return Err(crashed_error());
        }
        let current = &state.inodes[&self.inode].current;
        let start = (offset_bytes as usize).min(current.len());
        let end = (start + len_bytes).min(current.len());
        Ok(current[start..end].to_vec())
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.disk.maybe_yield().await;
        let mut state = self.disk.state.borrow_mut();
        let fault = state.begin_io(self.generation)?;
        state.stats.syncs += 1;
        match fault {
            Fault::CrashAfterThis => Err(crashed_error()),
            Fault::FailSync => {
                state.settle_unsynced(self.inode);
                Err(io::Error::other("simulated fdatasync failure (EIO)"))
            }
            Fault::None => {
                let inode = state.inodes.get_mut(&self.inode).expect("open inode exists");
                for (offset, data) in std::mem::take(&mut inode.unsynced_writes) {
                    let start = offset as usize;
                    if inode.durable.len() < start + data.len() {
                        inode.durable.resize(start + data.len(), 0);
                    }
                    inode.durable[start..start + data.len()].copy_from_slice(&data);
                }
                Ok(())
            }
        }
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        let state = self.disk.state.borrow();
        if state.crashed || self.generation != state.generation {
            return Err(crashed_error());
        }
        Ok(state.inodes[&self.inode].current.len() as u64)
    }
}
