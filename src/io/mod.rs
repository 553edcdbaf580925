//! The I/O traits the core is generic over, and their glommio implementation.
//!
//! The storage side is deliberately small: a [`Storage`] is one directory of files, and a
//! [`DirectFile`] is a file written with aligned direct I/O. The write-ahead log is generic over
//! them so that the same code runs on glommio's `DmaFile` in production ([`glommio_storage`]) and
//! on the fault-injecting simulated disk in tests (`testing::sim_disk`).
//!
//! Contract every implementation keeps (the WAL's crash safety depends on it):
//! - `write_at` takes a buffer whose length and offset are multiples of [`SECTOR_SIZE_BYTES`]
//!   and writes the whole buffer or fails; a write is not durable until a later `sync_data` on
//!   the same file returns `Ok`.
//! - After a `sync_data` fails, the data written since the previous successful sync may or may
//!   not be on disk, and a later successful sync proves nothing about it (Linux drops the dirty
//!   pages and clears the error). Callers therefore never retry a failed sync.
//! - Directory changes (create, rename, remove) are durable only after `Storage::sync` returns.
//!
//! [`stream`] adapts glommio's sockets to the tokio-io traits h2 drives; [`tls`] makes TLS
//! configurations from PEM files and runs TLS over those sockets.
//!
//! May depend on: glommio, futures-lite, tokio's io traits (never its runtime), rustls and
//! futures-rustls. Nothing above `io` is imported here.

pub mod glommio_storage;
pub mod stream;
pub mod tls;

use std::ops::Deref;

/// The alignment of every direct-I/O write offset and length, and of every write buffer.
/// 4 KiB is the logical block size of the devices ringd targets and of ext4/xfs pages.
pub const SECTOR_SIZE_BYTES: usize = 4096;

const _: () = assert!(SECTOR_SIZE_BYTES.is_power_of_two());

/// A file opened for direct I/O.
#[allow(async_fn_in_trait)]
pub trait DirectFile {
    /// An aligned buffer that `write_at` consumes (glommio hands it to the kernel).
    type WriteBuffer: AsRef<[u8]> + AsMut<[u8]>;
    /// The bytes a read returns.
    type ReadBuffer: Deref<Target = [u8]>;

    /// Allocates a write buffer of exactly `len_bytes` (a multiple of [`SECTOR_SIZE_BYTES`]).
    /// Its contents are unspecified: the caller fills every byte.
    fn alloc_write_buffer(&self, len_bytes: usize) -> Self::WriteBuffer;

    /// Writes all of `buffer` at `offset_bytes`; both are sector aligned.
    async fn write_at(&self, buffer: Self::WriteBuffer, offset_bytes: u64) -> std::io::Result<()>;

    /// Reads up to `len_bytes` from `offset_bytes` (no alignment needed); fewer bytes come back
    /// only at the end of the file.
    async fn read_at(&self, offset_bytes: u64, len_bytes: usize) -> std::io::Result<Self::ReadBuffer>;

    /// fdatasync: makes every completed write durable. Never retried after a failure.
    async fn sync_data(&self) -> std::io::Result<()>;

    /// `write_at` then `sync_data`, as one operation where the implementation has one (the
    /// glommio file: one O_DSYNC write, with no separate fsync for io_uring to hand to a worker
    /// thread). Same contract: on `Ok`, this and every earlier completed write are durable; a
    /// failure is never retried.
    async fn write_durable_at(&self, buffer: Self::WriteBuffer, offset_bytes: u64) -> std::io::Result<()> {
        self.write_at(buffer, offset_bytes).await?;
        self.sync_data().await
    }

    /// The file's size in bytes.
    async fn size_bytes(&self) -> std::io::Result<u64>;
}

/// One directory of files, addressed by plain file names (no separators).
#[allow(async_fn_in_trait)]
pub trait Storage {
    type File: DirectFile;

    /// The names of the files in the directory, in no particular order.
    async fn list(&self) -> std::io::Result<Vec<String>>;

    /// Creates a new, empty file, opened for reading and writing; fails if it exists.
    async fn create_file(&self, name: &str) -> std::io::Result<Self::File>;

    /// Opens an existing file for reading and writing.
    async fn open_file(&self, name: &str) -> std::io::Result<Self::File>;

    /// Renames `from` to `to`, replacing `to` if it exists.
    async fn rename(&self, from: &str, to: &str) -> std::io::Result<()>;

    /// Removes the name `name`; open handles stay usable until dropped.
    async fn remove(&self, name: &str) -> std::io::Result<()>;

    /// fsync of the directory: makes every create, rename and remove before it durable.
    async fn sync(&self) -> std::io::Result<()>;

    /// A human-readable location for error messages (a path for real directories).
    fn describe(&self, name: &str) -> String;
}
