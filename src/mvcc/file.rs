//! The store's file: positioned writes, fdatasync, and a read-only mapping that readers use.
//! `MmapFile` is the real file; `SimFile` is an in-memory file for crash tests that keeps only
//! what was synced when it "crashes", and may tear or keep the writes that were not.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::page::{PAGE_SIZE, SECTOR_SIZE};

/// What the store needs from its file. Reads go through the mapping (`map_base`): every byte
/// below `len_bytes()` reads the file's latest written contents.
pub trait StoreFile: Send + Sync + 'static {
    /// The file's name, for error messages.
    fn path(&self) -> &Path;
    fn len_bytes(&self) -> io::Result<u64>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Writes `pages` back to back from `offset`.
    fn write_pages_at(&self, offset: u64, pages: &[io::IoSlice]) -> io::Result<()> {
        let mut at = offset;
        for page in pages {
            self.write_at(at, page)?;
            at += page.len() as u64;
        }
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()>;
    /// Asks the kernel to start writing back the file's written bytes, without waiting for it
    /// (a hint: the next `sync_data` then has less left to write).
    fn start_writeback(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_len(&self, len_bytes: u64) -> io::Result<()>;
    fn map_base(&self) -> *const u8;
    fn map_len_bytes(&self) -> u64;
}

/// The most pages one write of the store's file covers, aligned: 16 KiB.
///
/// The page cache holds a write's pages in one folio as large as the write (ext4 since Linux
/// 6.16), and every later 4 KiB write into a folio walks all of its buffer heads, cold, at the
/// write and again at writeback. With writes of whole runs (folios up to 2 MiB), the I/O of a
/// checkpoint of 1,000 puts took 50 ms; in 16 KiB groups 21 ms, one page a write 19 ms
/// (`checkpoint_io_after_put_batch` in benches/mvcc.rs). Point reads went the other way: about
/// 8% slower with 16 KiB folios than with 2 MiB ones, and 15% slower with single pages (we
/// believe as fewer physically contiguous pages share a TLB entry).
const WRITE_GROUP_PAGES: u64 = 4;

/// A real file, mapped shared and read-only once at its full virtual size so that it never
/// needs remapping; writes are `pwrite`, durability `fdatasync` (DESIGN §5).
pub struct MmapFile {
    file: File,
    map: memmap2::Mmap,
    path: PathBuf,
}

impl MmapFile {
    pub fn new(file: File, path: &Path, map_len_bytes: u64) -> io::Result<MmapFile> {
        assert!(map_len_bytes > 0);
        // SAFETY: the mapping is read-only; the store writes only pages no reader can reach
        // (committed pages are never modified in place), and truncates only below that.
        let map = unsafe { memmap2::MmapOptions::new().len(map_len_bytes as usize).map(&file)? };
        Ok(MmapFile { file, map, path: path.to_path_buf() })
    }

    /// Takes an exclusive advisory lock so two processes never write one store.
    pub fn lock_exclusive(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a valid, owned descriptor.
        let result = unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl StoreFile for MmapFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)` over the whole file (offset 0, length 0 = to
    /// the end): queues its dirty pages for writeback.
    fn start_writeback(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a descriptor we own; it touches no memory of ours.
        let result = unsafe { libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One pwritev per aligned group of `WRITE_GROUP_PAGES` pages at most; a short write
    /// finishes with pwrite.
    fn write_pages_at(&self, offset: u64, pages: &[io::IoSlice]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        debug_assert!(offset.is_multiple_of(PAGE_SIZE as u64) && pages.iter().all(|page| page.len() == PAGE_SIZE));
        let mut at = offset;
        let mut rest = pages;
        while !rest.is_empty() {
            let in_group = (at / PAGE_SIZE as u64) % WRITE_GROUP_PAGES;
            let (chunk, tail) = rest.split_at(((WRITE_GROUP_PAGES - in_group) as usize).min(rest.len()));
            rest = tail;
            let total: usize = chunk.iter().map(|page| page.len()).sum();
            // SAFETY: IoSlice is ABI-compatible with iovec on Unix; the slices are alive and
            // unchanged for the call.
            let written = unsafe {
                libc::pwritev(self.file.as_raw_fd(), chunk.as_ptr().cast(), chunk.len() as i32, at as libc::off_t)
            };
            let mut written = if written < 0 {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
                0
            } else {
                written as usize
            };
            let mut page_at = at;
            for page in chunk {
                let done = written.min(page.len());
                if done < page.len() {
                    self.file.write_all_at(&page[done..], page_at + done as u64)?;
                }
                written -= done;
                page_at += page.len() as u64;
            }
            at += total as u64;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.file.set_len(len_bytes)
    }

    fn map_base(&self) -> *const u8 {
        self.map.as_ptr()
    }

    fn map_len_bytes(&self) -> u64 {
        self.map.len() as u64
    }
}

/// How a `SimFile` treats the writes that were not synced when it crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write is lost.
    DropUnsynced,
    /// Each unsynced write is lost, kept, or torn (a random subset of its sectors kept).
    TearUnsynced,
    /// Every unsynced write is kept (the kernel flushed the page cache before the crash):
    /// whatever a commit overwrote in place shows up on disk.
    KeepUnsynced,
}

struct SimState {
    len_bytes: u64,
    /// The bytes a crash keeps: everything written before the last sync.
    durable: Vec<u8>,
    durable_len_bytes: u64,
    unsynced: Vec<(u64, Vec<u8>)>,
    /// I/O operations (writes and syncs) left before the simulated crash; None = no crash.
    operations_left: Option<u64>,
    crashed: bool,
    fail_sync: bool,
    /// Writes, syncs and truncations done (crash points for `crash_after_operations`).
    operations: u64,
    syncs: u64,
}

/// An in-memory file for tests. Its visible contents live in an anonymous mapping (so readers
/// use it exactly like the real mapping); a copy of what was synced is kept for `crash_image`.
pub struct SimFile {
    map: memmap2::MmapMut,
    state: Mutex<SimState>,
    path: PathBuf,
}

// SAFETY: the mapping is written through its raw pointer only under `state`'s lock, at pages
// the store guarantees no reader is reading (the same contract as the real file).
unsafe impl Sync for SimFile {}

impl SimFile {
    pub fn new(capacity_bytes: u64) -> SimFile {
        Self::from_image(&[], capacity_bytes)
    }

    /// A file whose contents (and durable contents) are `image`.
    pub fn from_image(image: &[u8], capacity_bytes: u64) -> SimFile {
        assert!(image.len() as u64 <= capacity_bytes);
        let mut map = memmap2::MmapMut::map_anon(capacity_bytes as usize).expect("anonymous mapping");
        map[..image.len()].copy_from_slice(image);
        let state = SimState {
            len_bytes: image.len() as u64,
            durable: image.to_vec(),
            durable_len_bytes: image.len() as u64,
            unsynced: Vec::new(),
            operations_left: None,
            crashed: false,
            fail_sync: false,
            operations: 0,
            syncs: 0,
        };
        SimFile { map, state: Mutex::new(state), path: PathBuf::from("sim://db") }
    }

    /// The process "dies" after this many more writes and syncs: every later one fails.
    pub fn crash_after_operations(&self, operations: u64) {
        self.state.lock().unwrap().operations_left = Some(operations);
    }

    /// The next sync fails (and so does every operation after it), as a failing disk would.
    pub fn fail_next_sync(&self) {
        self.state.lock().unwrap().fail_sync = true;
    }

    pub fn has_crashed(&self) -> bool {
        self.state.lock().unwrap().crashed
    }

    /// Writes, syncs and truncations done so far: `crash_after_operations(n)` for n below it
    /// crashes at each of them.
    pub fn operation_count(&self) -> u64 {
        self.state.lock().unwrap().operations
    }

    /// fdatasyncs done so far.
    pub fn sync_count(&self) -> u64 {
        self.state.lock().unwrap().syncs
    }

    /// The file as a reboot would find it.
    pub fn crash_image(&self, mode: CrashMode, seed: u64) -> Vec<u8> {
        let state = self.state.lock().unwrap();
        let mut image = state.durable.clone();
        image.resize(state.durable_len_bytes as usize, 0);
        let mut random = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for (offset, data) in &state.unsynced {
            let choice = match mode {
                CrashMode::DropUnsynced => break,
                CrashMode::KeepUnsynced => 1,
                CrashMode::TearUnsynced => next_random(&mut random) % 3,
            };
            match choice {
                0 => continue,
                1 => apply(&mut image, *offset, data),
                _ => {
                    for (index, sector) in data.chunks(SECTOR_SIZE).enumerate() {
                        if next_random(&mut random).is_multiple_of(2) {
                            apply(&mut image, *offset + (index * SECTOR_SIZE) as u64, sector);
                        }
                    }
                }
            }
        }
        image
    }

    fn begin_operation(state: &mut SimState) -> io::Result<()> {
        if state.crashed {
            return Err(io::Error::other("simulated crash: the process is dead"));
        }
        if let Some(left) = state.operations_left.as_mut() {
            if *left == 0 {
                state.crashed = true;
                return Err(io::Error::other("simulated crash"));
            }
            *left -= 1;
        }
        state.operations += 1;
        Ok(())
    }
}

fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn apply(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(data);
}

impl StoreFile for SimFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.state.lock().unwrap().len_bytes)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        Self::begin_operation(&mut state)?;
        let end = offset + data.len() as u64;
        if end > self.map.len() as u64 {
            return Err(io::Error::other("simulated file is full"));
        }
        // SAFETY: in bounds; see the `Sync` impl for why no reader reads these bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.map.as_ptr() as *mut u8).add(offset as usize),
                data.len(),
            );
        }
        state.len_bytes = state.len_bytes.max(end);
        state.unsynced.push((offset, data.to_vec()));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        Self::begin_operation(&mut state)?;
        if state.fail_sync {
            state.crashed = true;
            return Err(io::Error::other("simulated fdatasync failure"));
        }
        state.syncs += 1;
        let unsynced = core::mem::take(&mut state.unsynced);
        for (offset, data) in &unsynced {
            apply(&mut state.durable, *offset, data);
        }
        let len_bytes = state.len_bytes;
        state.durable_len_bytes = len_bytes;
        state.durable.resize(len_bytes as usize, 0);
        Ok(())
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        Self::begin_operation(&mut state)?;
        state.len_bytes = len_bytes;
        Ok(())
    }

    fn map_base(&self) -> *const u8 {
        self.map.as_ptr()
    }

    fn map_len_bytes(&self) -> u64 {
        self.map.len() as u64
    }
}
