//! The driver: the one future that performs the WAL's I/O. The flusher writes and syncs
//! batches and installs new segments; the preparer keeps the next segment zero-filled and ready.
//! See the `writer` module doc for the protocol.

use super::durable::Commit;
use super::error::WriteError;
use super::format::*;
use super::placement::{Rotation, Tail, Work, WriteBatch};
use super::recovery;
use super::writer::{Shared, WalDriver};
use crate::io::{DirectFile, Storage, SECTOR_SIZE_BYTES};
use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

/// The name of the `count`-th segment the preparer fills; renamed into place at rotation.
/// Unique, so that the next one can be prepared while the previous is still being installed.
pub fn temporary_segment_name(count: u64) -> String {
    format!("prepared-{count:016x}.wal{}", recovery::TEMPORARY_SUFFIX)
}

/// The preparer zero-fills segments in writes of this size.
const ZERO_FILL_CHUNK_BYTES: usize = 1024 * 1024;

const _: () = assert!(ZERO_FILL_CHUNK_BYTES.is_multiple_of(SECTOR_SIZE_BYTES));

/// Waits for the next piece of work; None when the driver should stop.
async fn next_work<S: Storage>(shared: &Shared<S>) -> Option<Work<S::File>> {
    poll_fn(|cx| {
        if shared.commit.borrow().error.is_some() {
            return Poll::Ready(None);
        }
        let mut state = shared.state.borrow_mut();
        if let Some(work) = state.next_work() {
            return Poll::Ready(Some(work));
        }
        if state.closing {
            return Poll::Ready(None);
        }
        state.flusher_waker = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

async fn write_batch<S: Storage>(shared: &Shared<S>, batch: WriteBatch<S::File>) -> Result<u64, WriteError> {
    let describe = || shared.storage.describe(&batch.file_name);
    batch
        .file
        .write_durable_at(batch.buffer, batch.offset)
        .await
        .map_err(|e| WriteError::io(describe(), "writing and syncing", e))?;
    shared.state.borrow_mut().stats.syncs += 1;
    Ok(batch.complete_ticket)
}

async fn take_prepared<S: Storage>(shared: &Shared<S>) -> Result<(String, S::File), WriteError> {
    poll_fn(|cx| {
        if let Some(error) = shared.sticky_error() {
            return Poll::Ready(Err(error));
        }
        let mut state = shared.state.borrow_mut();
        if let Some(file) = state.prepared.take() {
            state.rotation_waiting = false;
            if let Some(waker) = state.preparer_waker.take() {
                waker.wake();
            }
            return Poll::Ready(Ok(file));
        }
        state.rotation_waiting = true;
        state.flusher_waker = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// Installs segment `rotation.seq`: head into the prepared file, sync, rename, directory sync.
async fn rotate<S: Storage>(shared: &Shared<S>, rotation: Rotation) -> Result<u64, WriteError> {
    let (temporary_name, file) = take_prepared(shared).await?;
    let head_len = rotation.head.len();
    let mut buffer = file.alloc_write_buffer(align_up(head_len as u64) as usize);
    let (chain_crc, tail) = {
        let state = shared.state.borrow();
        assert!(
            state.tail.as_ref().is_none_or(|tail| tail.seq + 1 == rotation.seq),
            "rotation follows the current segment"
        );
        let bytes = buffer.as_mut();
        bytes[..head_len].copy_from_slice(&rotation.head);
        bytes[head_len..].fill(0);
        let chain_crc = seal_records(&mut bytes[PREAMBLE_SIZE_BYTES..head_len], state.chain_crc);
        let kept_start = align_down(head_len as u64) as usize;
        let tail =
            Tail { seq: rotation.seq, sector_start: kept_start as u64, bytes: bytes[kept_start..head_len].to_vec() };
        (chain_crc, tail)
    };
    let name = segment_name(rotation.seq, rotation.first_index);
    let storage = &shared.storage;
    let failed = |operation, e| WriteError::io(storage.describe(&name), operation, e);
    file.write_at(buffer, 0).await.map_err(|e| failed("writing the head of", e))?;
    file.sync_data().await.map_err(|e| failed("syncing", e))?;
    storage.rename(&temporary_name, &name).await.map_err(|e| failed("renaming into", e))?;
    storage.sync().await.map_err(|e| failed("syncing the directory of", e))?;
    let mut state = shared.state.borrow_mut();
    let segment = state.segments.get_mut(&rotation.seq).expect("placement registered the segment");
    segment.name = Some(name);
    segment.file = Some(Rc::new(file));
    state.tail = Some(tail);
    state.chain_crc = chain_crc;
    state.stats.rotations += 1;
    state.stats.writes += 1;
    state.stats.bytes_written += align_up(head_len as u64);
    state.stats.syncs += 1;
    Ok(rotation.complete_ticket)
}

async fn flusher<S: Storage>(shared: Rc<Shared<S>>) {
    while let Some(work) = next_work(&shared).await {
        let result = match work {
            Work::Write(batch) => write_batch(&shared, batch).await,
            Work::Rotate(rotation) => rotate(&shared, rotation).await,
        };
        match result {
            Ok(ticket) => shared.commit.borrow_mut().complete(ticket),
            Err(error) => shared.fail(error),
        }
    }
    shared.wake_driver();
}

/// Creates the file `name`, zero-filled to `size_bytes` and synced, so that writing
/// records into it never changes file metadata.
async fn prepare_segment<S: Storage>(storage: &S, name: &str, size_bytes: u64) -> Result<S::File, WriteError> {
    let failed = |operation, e| WriteError::io(storage.describe(name), operation, e);
    let file = storage.create_file(name).await.map_err(|e| failed("creating", e))?;
    let mut offset = 0u64;
    while offset < size_bytes {
        let len = (ZERO_FILL_CHUNK_BYTES as u64).min(size_bytes - offset) as usize;
        let mut buffer = file.alloc_write_buffer(len);
        buffer.as_mut().fill(0);
        file.write_at(buffer, offset).await.map_err(|e| failed("zero-filling", e))?;
        offset += len as u64;
    }
    file.sync_data().await.map_err(|e| failed("syncing", e))?;
    Ok(file)
}

async fn preparer<S: Storage>(shared: Rc<Shared<S>>) {
    loop {
        let size_bytes = poll_fn(|cx| {
            if shared.commit.borrow().error.is_some() {
                return Poll::Ready(None);
            }
            let mut state = shared.state.borrow_mut();
            if state.closing && state.units.is_empty() && !state.rotation_waiting {
                return Poll::Ready(None);
            }
            if state.prepared.is_none() {
                state.prepared_count += 1;
                return Poll::Ready(Some((temporary_segment_name(state.prepared_count), state.segment_size_bytes)));
            }
            state.preparer_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some((name, size_bytes)) = size_bytes else { return };
        match prepare_segment(&shared.storage, &name, size_bytes).await {
            Ok(file) => {
                let mut state = shared.state.borrow_mut();
                state.prepared = Some((name, file));
                if let Some(waker) = state.flusher_waker.take() {
                    waker.wake();
                }
            }
            Err(error) => return shared.fail(error),
        }
    }
}

/// Fails every waiter with `Closed` if the driver is dropped before it finished.
struct DriverGuard {
    commit: Rc<RefCell<Commit>>,
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        let mut commit = self.commit.borrow_mut();
        commit.fail(WriteError::Closed);
        commit.driver_finished = true;
        if let Some(waker) = commit.close_waker.take() {
            waker.wake();
        }
    }
}

pub(super) fn driver<S: Storage + 'static>(shared: Rc<Shared<S>>) -> WalDriver {
    // Made outside the async block so that it drops even if the driver is never polled.
    let guard = DriverGuard { commit: shared.commit.clone() };
    Box::pin(async move {
        let _guard = guard;
        futures_lite::future::zip(flusher(shared.clone()), preparer(shared)).await;
    })
}
