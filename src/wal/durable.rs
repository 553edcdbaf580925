//! What appenders wait on: the durable ticket, the sticky error, and the [`Durable`] future.
//! Not generic over the storage, so neither is `Durable`.

use super::error::WriteError;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub(super) struct Commit {
    pub(super) durable_ticket: u64,
    pub(super) error: Option<WriteError>,
    pub(super) waiters: BTreeMap<(u64, u64), Waker>,
    pub(super) waiter_id_next: u64,
    /// Set when the driver future has finished or was dropped; `close` waits for it.
    pub(super) driver_finished: bool,
    pub(super) close_waker: Option<Waker>,
}

impl Commit {
    /// Everything up to `ticket` is durable. This holds even if another part of the driver
    /// has failed meanwhile: the records did reach the disk.
    pub(super) fn complete(&mut self, ticket: u64) {
        self.durable_ticket = self.durable_ticket.max(ticket);
        let still_waiting = self.waiters.split_off(&(self.durable_ticket + 1, 0));
        let done = std::mem::replace(&mut self.waiters, still_waiting);
        for waker in done.into_values() {
            waker.wake();
        }
    }

    pub(super) fn fail(&mut self, error: WriteError) {
        if self.error.is_none() {
            self.error = Some(error);
        }
        for waker in std::mem::take(&mut self.waiters).into_values() {
            waker.wake();
        }
    }
}

/// Resolves when the records of one append (or everything before a `sync`) are durable.
#[must_use = "an append is not durable until its future resolves"]
pub struct Durable {
    inner: DurableInner,
}

enum DurableInner {
    Done(Option<Result<(), WriteError>>),
    Waiting { commit: Rc<RefCell<Commit>>, ticket: u64, waiter_id: u64 },
}

impl Durable {
    pub(super) fn failed(error: WriteError) -> Durable {
        Durable { inner: DurableInner::Done(Some(Err(error))) }
    }

    pub(super) fn waiting(commit: &Rc<RefCell<Commit>>, ticket: u64) -> Durable {
        let waiter_id = {
            let mut commit = commit.borrow_mut();
            commit.waiter_id_next += 1;
            commit.waiter_id_next
        };
        Durable { inner: DurableInner::Waiting { commit: commit.clone(), ticket, waiter_id } }
    }

    /// The append's ticket (its position in append order); 0 for a failed append.
    pub fn ticket(&self) -> u64 {
        match &self.inner {
            DurableInner::Waiting { ticket, .. } => *ticket,
            DurableInner::Done(_) => 0,
        }
    }
}

impl Future for Durable {
    type Output = Result<(), WriteError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            DurableInner::Done(result) => Poll::Ready(result.take().expect("Durable polled after completion")),
            DurableInner::Waiting { commit, ticket, waiter_id } => {
                let mut commit = commit.borrow_mut();
                if commit.durable_ticket >= *ticket {
                    return Poll::Ready(Ok(()));
                }
                if let Some(error) = &commit.error {
                    return Poll::Ready(Err(error.clone()));
                }
                commit.waiters.insert((*ticket, *waiter_id), cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        if let DurableInner::Waiting { commit, ticket, waiter_id } = &self.inner {
            if let Ok(mut commit) = commit.try_borrow_mut() {
                commit.waiters.remove(&(*ticket, *waiter_id));
            }
        }
    }
}
