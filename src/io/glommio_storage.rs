//! [`Storage`] and [`DirectFile`] on glommio: `DmaFile` (O_DIRECT through io_uring) for data,
//! `Directory` for the directory fsync.
//!
//! Buffers come from `DmaFile::alloc_dma_buffer`, which uses the executor's registered
//! `io_memory` while it lasts and aligned heap memory beyond. Keep `io_memory` small (for example
//! 1 MiB per executor): RLIMIT_MEMLOCK is 8 MiB on our machines and glommio silently runs without
//! registered buffers when it cannot lock the whole amount.

use super::{DirectFile, Storage, SECTOR_SIZE_BYTES};
use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory of direct-I/O files, locked against other users for as long as it is open.
pub struct GlommioStorage {
    path: PathBuf,
    directory: glommio::io::Directory,
    /// Holds an exclusive `flock` on `LOCK`: two processes (or two opens in one process)
    /// appending to one WAL would interleave their records and corrupt it.
    _lock: std::fs::File,
}

impl GlommioStorage {
    /// Opens `path`, creating it (and its parents) first if needed, and locks it. Fails with
    /// `WouldBlock` while another process or handle has it open.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<GlommioStorage> {
        let path = path.as_ref().to_path_buf();
        if !path.is_dir() {
            std::fs::create_dir_all(&path)?;
        }
        let lock = lock_directory(&path)?;
        probe_direct_io(&path).await?;
        let directory = glommio::io::Directory::open(&path).await?;
        Ok(GlommioStorage { path, directory, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_options(&self) -> OpenOptions {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        options
    }

    /// The O_DSYNC handle of an existing file, for `write_durable_at`.
    async fn open_durable(&self, name: &str) -> io::Result<DmaFile> {
        let mut options = self.open_options();
        options.custom_flags(libc::O_DSYNC);
        Ok(options.dma_open(self.file_path(name)).await?)
    }

    fn file_path(&self, name: &str) -> PathBuf {
        assert!(!name.is_empty() && !name.contains('/'), "bad file name {name:?}");
        self.path.join(name)
    }
}

impl Storage for GlommioStorage {
    type File = GlommioFile;

    async fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    async fn create_file(&self, name: &str) -> io::Result<GlommioFile> {
        let file = self.open_options().create_new(true).dma_open(self.file_path(name)).await?;
        GlommioFile::new(file, self.open_durable(name).await?)
    }

    async fn open_file(&self, name: &str) -> io::Result<GlommioFile> {
        let file = self.open_options().dma_open(self.file_path(name)).await?;
        GlommioFile::new(file, self.open_durable(name).await?)
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        glommio::io::rename(self.file_path(from), self.file_path(to)).await?;
        Ok(())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        glommio::io::remove(self.file_path(name)).await?;
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        self.directory.sync().await?;
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

/// Name of the lock file in every directory a `GlommioStorage` opens.
pub const LOCK_FILE_NAME: &str = "LOCK";

fn lock_directory(directory: &Path) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let lock_path = directory.join(LOCK_FILE_NAME);
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
    // SAFETY: flock on a descriptor we own; it does not touch memory.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{} is in use by another process or handle ({error}); stop it first", directory.display()),
        ));
    }
    Ok(lock)
}

/// Works around a glommio 0.9 probe: the first `DmaFile` a thread opens on a block device
/// decides, by reading its first sector through the I/O-polling ring, whether every later file on
/// that device uses that ring. On an empty file the read succeeds without touching the device,
/// glommio concludes polling works, and every later read fails with EOPNOTSUPP on devices without
/// polling (virtio, most cloud disks). Opening a file that has data first makes the probe honest;
/// the result is cached per thread and device, so this costs once.
async fn probe_direct_io(directory: &Path) -> io::Result<()> {
    let probe_path = directory.join("direct-io-probe.tmp");
    std::fs::write(&probe_path, vec![0u8; SECTOR_SIZE_BYTES])?;
    let probe = OpenOptions::new().read(true).dma_open(&probe_path).await;
    std::fs::remove_file(&probe_path)?;
    probe?.close().await?;
    Ok(())
}

/// One file through two `DmaFile` handles: `file` for plain writes, reads and fdatasync, and
/// `durable` (O_DSYNC) for `write_durable_at`.
///
/// Why two: a write then an fdatasync is two io_uring operations, and io_uring can only run the
/// fdatasync on a worker thread, which inherits the executor's CPU: on a busy core the sync
/// waits for that thread to be scheduled beside the executor, and on an idle one it costs two
/// more wakeups. An O_DSYNC write is one operation, submitted inline: the kernel writes, then
/// flushes (or writes with FUA) before it completes. Measured through glommio on this
/// project's VM (2026-11-30), 4 KiB writes: write + fdatasync 140 to 159 µs, O_DSYNC write 118 to
/// 138 µs, against 78 to 108 µs for pwrite + fdatasync from a plain thread.
///
/// A large durable write (`POOL_DURABLE_WRITE_MIN_BYTES`) is a blocking `pwrite` on the
/// O_DSYNC handle from the executor's blocking thread pool instead. A device without FUA
/// completes an asynchronous O_DSYNC direct write with a flush issued from a kernel worker
/// bound to the CPU that took the write's interrupt; while the executors keep both CPUs busy
/// that worker waits for one: at 1000 writing clients the WAL's writes took 3.3 to 3.8 ms at
/// the median (`wal_sync`), against 0.6 to 0.9 ms with every write from the pool, whose
/// unbound thread issues the flush itself (0.8 to 2.2 ms with this size rule). At one client
/// the pool is slower (two more thread wakeups: 2.5k against 3.3k puts/s with every write
/// from the pool), hence the size rule: one client's write is one sector, or two when its
/// record crosses into the next (about one put in twelve), and stays on io_uring.
pub struct GlommioFile {
    file: DmaFile,
    durable: DmaFile,
    /// `durable`'s descriptor, duplicated once, for the pool's writes: a pool thread holds a
    /// reference while it writes, so the descriptor stays open even if this file is closed
    /// first (its write's future dropped).
    durable_for_pool: Arc<OwnedFd>,
    /// Plain writes started, and the count covered by the last successful `sync_data`. An
    /// O_DSYNC write makes only itself durable (with FUA it flushes nothing else), so
    /// `write_durable_at` takes that path only when no plain write is unsynced.
    plain_writes: Cell<u64>,
    synced_writes: Cell<u64>,
    /// Plain writes not yet completed. A sync counts every started write as covered, which
    /// holds only if none is in flight: the WAL's users write and sync one file one
    /// operation at a time, and `sync_data` asserts it.
    plain_writes_in_flight: Cell<u64>,
    /// Durable writes made from the blocking pool so far.
    pool_writes: Cell<u64>,
}

impl GlommioFile {
    fn new(file: DmaFile, durable: DmaFile) -> io::Result<GlommioFile> {
        // Our sector must be a multiple of what the device needs, or O_DIRECT writes fail.
        if !(SECTOR_SIZE_BYTES as u64).is_multiple_of(file.alignment()) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("device needs {} byte alignment for direct I/O", file.alignment()),
            ));
        }
        // SAFETY: `durable` keeps its descriptor open for as long as the borrow is used.
        let durable_for_pool = Arc::new(unsafe { BorrowedFd::borrow_raw(durable.as_raw_fd()) }.try_clone_to_owned()?);
        Ok(GlommioFile {
            file,
            durable,
            durable_for_pool,
            plain_writes: Cell::new(0),
            synced_writes: Cell::new(0),
            plain_writes_in_flight: Cell::new(0),
            pool_writes: Cell::new(0),
        })
    }
}

/// Checks a direct write's alignment and that it wrote everything.
///
/// Direct writes are handed to the kernel at once. glommio submits the requests its tasks
/// queue when the executor next polls for I/O, which is after every task that is ready has
/// run: behind a follower's apply of the entries an append commits, or the client tasks that
/// a put's turn woke. The WAL's durable write is on every put's critical path, so the write's
/// first poll (which queues it) is followed by `submit_io` (the vendored glommio's, one
/// `io_uring_enter`; the other direct writes, segments being zero-filled, are rare enough
/// for it). Measured on 2026-11-30 with one client: on three members, where a follower
/// learns a commit with the next append (`raft_core`, commit notices), a follower's write
/// went in 50 to 90 µs after its handling of the append, behind its apply of the previous
/// entry, and about 18 µs after with this; one member's puts 2675 against 2606 req/s on
/// average over four alternated pairs.
async fn write_whole(file: &DmaFile, buffer: DmaBuffer, offset_bytes: u64) -> io::Result<()> {
    assert!(offset_bytes.is_multiple_of(SECTOR_SIZE_BYTES as u64), "unaligned offset {offset_bytes}");
    let len_bytes = buffer.len();
    let mut write = std::pin::pin!(file.write_at(buffer, offset_bytes));
    let written_bytes = match futures::poll!(write.as_mut()) {
        std::task::Poll::Ready(result) => result?,
        std::task::Poll::Pending => {
            // An error leaves the write queued for the executor's next poll.
            let _ = glommio::executor().submit_io();
            write.await?
        }
    };
    wrote_whole(written_bytes, len_bytes, offset_bytes)
}

fn wrote_whole(written_bytes: usize, len_bytes: usize, offset_bytes: u64) -> io::Result<()> {
    if written_bytes != len_bytes {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short direct write: {written_bytes} of {len_bytes} bytes at {offset_bytes}"),
        ));
    }
    Ok(())
}

/// The smallest durable write made from the blocking pool (see `GlommioFile`). The WAL writes
/// one batch at a time, from the sector its last write ended in: one client's put is one 4 KiB
/// sector (two when its record crosses into the next, about one put in twelve), 1000
/// clients' batches about 16 KiB (2026-11-30).
///
/// Three sectors, so that both of one client's sizes stay on io_uring. At 8 KiB (until the
/// eighth session) a lone client's two-sector writes went to the pool: one client's puts
/// averaged 2479 req/s against 2632 with this rule, five alternated pairs on 2026-11-30, each
/// pair in its favour; at 100 and 1000 clients four pairs each were within the noise (23.2k
/// against 23.6k, 58.9k against 58.0k).
const POOL_DURABLE_WRITE_MIN_BYTES: usize = 3 * SECTOR_SIZE_BYTES;

/// `write_whole` as a blocking `pwrite` through `fd` on the executor's blocking thread pool.
async fn pool_write_whole(fd: &Arc<OwnedFd>, buffer: DmaBuffer, offset_bytes: u64) -> io::Result<()> {
    assert!(offset_bytes.is_multiple_of(SECTOR_SIZE_BYTES as u64), "unaligned offset {offset_bytes}");
    let fd = Arc::clone(fd);
    /// Keeps the buffer alive while the pool thread reads it: dropped before the write is
    /// done (the future cancelled), it leaks the buffer rather than free memory in use.
    struct InFlight(Option<DmaBuffer>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            std::mem::forget(self.0.take());
        }
    }
    let (address, len_bytes) = (buffer.as_ptr() as usize, buffer.len());
    let mut in_flight = InFlight(Some(buffer));
    let written = glommio::executor()
        .spawn_blocking(move || {
            // SAFETY: `address` points to `len_bytes` bytes that `in_flight` keeps allocated
            // and that nothing writes until this call returns; `fd` is open.
            let written =
                unsafe { libc::pwrite(fd.as_raw_fd(), address as *const libc::c_void, len_bytes, offset_bytes as i64) };
            if written < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(written as usize)
            }
        })
        .await;
    drop(in_flight.0.take());
    wrote_whole(written?, len_bytes, offset_bytes)
}

impl DirectFile for GlommioFile {
    type WriteBuffer = DmaBuffer;
    type ReadBuffer = ReadResult;

    fn alloc_write_buffer(&self, len_bytes: usize) -> DmaBuffer {
        assert!(len_bytes > 0 && len_bytes.is_multiple_of(SECTOR_SIZE_BYTES), "unaligned length {len_bytes}");
        self.file.alloc_dma_buffer(len_bytes)
    }

    async fn write_at(&self, buffer: DmaBuffer, offset_bytes: u64) -> io::Result<()> {
        /// Uncounts the write when it completes or its future is dropped.
        struct InFlight<'a>(&'a Cell<u64>);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() - 1);
            }
        }
        self.plain_writes.set(self.plain_writes.get() + 1);
        self.plain_writes_in_flight.set(self.plain_writes_in_flight.get() + 1);
        let _in_flight = InFlight(&self.plain_writes_in_flight);
        write_whole(&self.file, buffer, offset_bytes).await
    }

    async fn read_at(&self, offset_bytes: u64, len_bytes: usize) -> io::Result<ReadResult> {
        Ok(self.file.read_at(offset_bytes, len_bytes).await?)
    }

    async fn sync_data(&self) -> io::Result<()> {
        assert_eq!(self.plain_writes_in_flight.get(), 0, "a sync must not race a plain write of the same file");
        let covered = self.plain_writes.get();
        self.file.fdatasync().await?;
        self.synced_writes.set(self.synced_writes.get().max(covered));
        Ok(())
    }

    async fn write_durable_at(&self, buffer: DmaBuffer, offset_bytes: u64) -> io::Result<()> {
        if self.synced_writes.get() < self.plain_writes.get() {
            self.write_at(buffer, offset_bytes).await?;
            return self.sync_data().await;
        }
        if buffer.len() >= POOL_DURABLE_WRITE_MIN_BYTES {
            self.pool_writes.set(self.pool_writes.get() + 1);
            return pool_write_whole(&self.durable_for_pool, buffer, offset_bytes).await;
        }
        write_whole(&self.durable, buffer, offset_bytes).await
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.file.file_size().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(file: &GlommioFile, byte: u8) -> DmaBuffer {
        filled_sectors(file, byte, 1)
    }

    fn filled_sectors(file: &GlommioFile, byte: u8, sectors: usize) -> DmaBuffer {
        let mut buffer = file.alloc_write_buffer(sectors * SECTOR_SIZE_BYTES);
        buffer.as_mut().fill(byte);
        buffer
    }

    /// Runs `test` on an executor with a new file `data` in a fresh directory.
    fn on_new_file<F: std::future::Future<Output = ()>>(test: impl FnOnce(GlommioFile) -> F) {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().to_path_buf();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 * 1024)
            .make()
            .expect("executor")
            .run(async move {
                let storage = GlommioStorage::open(&path).await.expect("storage");
                test(storage.create_file("data").await.expect("create")).await;
            });
    }

    /// A durable write of `POOL_DURABLE_WRITE_MIN_BYTES` or more goes through the blocking
    /// pool and lands where asked, around the small ones written through io_uring.
    #[test]
    fn a_large_durable_write_from_the_pool_lands_between_small_ones() {
        on_new_file(|file| async move {
            // Exactly the threshold: the rule is `>=`.
            let large_sectors = POOL_DURABLE_WRITE_MIN_BYTES / SECTOR_SIZE_BYTES;
            file.write_durable_at(filled(&file, 1), 0).await.expect("small durable write");
            let large = filled_sectors(&file, 2, large_sectors);
            assert!(large.len() >= POOL_DURABLE_WRITE_MIN_BYTES);
            file.write_durable_at(large, SECTOR_SIZE_BYTES as u64).await.expect("large durable write");
            assert_eq!(file.pool_writes.get(), 1, "the large write came from the pool");
            let after = ((1 + large_sectors) * SECTOR_SIZE_BYTES) as u64;
            file.write_durable_at(filled(&file, 3), after).await.expect("small durable write");
            assert_eq!((file.plain_writes.get(), file.synced_writes.get()), (0, 0), "no plain write");
            let total = (2 + large_sectors) * SECTOR_SIZE_BYTES;
            let bytes = file.read_at(0, total).await.expect("read");
            assert_eq!(bytes.len(), total);
            for sector in 0..2 + large_sectors {
                let byte = if sector == 0 {
                    1
                } else if sector <= large_sectors {
                    2
                } else {
                    3
                };
                let range = sector * SECTOR_SIZE_BYTES..(sector + 1) * SECTOR_SIZE_BYTES;
                assert!(bytes[range].iter().all(|b| *b == byte), "sector {sector}");
            }
        });
    }

    /// One client's writes, one sector or two (its record crossing into the next), stay on
    /// io_uring: from the pool they cost a lone client two more thread wakeups.
    #[test]
    fn one_clients_one_and_two_sector_writes_stay_on_io_uring() {
        on_new_file(|file| async move {
            file.write_durable_at(filled(&file, 1), 0).await.expect("one-sector durable write");
            file.write_durable_at(filled_sectors(&file, 2, 2), 0).await.expect("two-sector durable write");
            assert_eq!(file.pool_writes.get(), 0);
            let bytes = file.read_at(0, 2 * SECTOR_SIZE_BYTES).await.expect("read");
            assert!(bytes.iter().all(|b| *b == 2));
        });
    }

    /// A durable write after an unsynced plain write syncs that one too (the O_DSYNC handle
    /// would not), and both handles write the same file.
    #[test]
    fn a_durable_write_covers_earlier_plain_writes() {
        on_new_file(|file| async move {
            file.write_durable_at(filled(&file, 1), 0).await.expect("durable write");
            assert_eq!((file.plain_writes.get(), file.synced_writes.get()), (0, 0), "O_DSYNC path");
            file.write_at(filled(&file, 2), 4096).await.expect("plain write");
            assert!(file.synced_writes.get() < file.plain_writes.get());
            file.write_durable_at(filled(&file, 3), 8192).await.expect("durable write");
            assert_eq!(file.synced_writes.get(), file.plain_writes.get(), "the plain write was synced");
            let bytes = file.read_at(0, 3 * 4096).await.expect("read");
            for (sector, byte) in [(0, 1u8), (1, 2), (2, 3)] {
                assert!(bytes[sector * 4096..(sector + 1) * 4096].iter().all(|b| *b == byte), "sector {sector}");
            }
        });
    }
}
