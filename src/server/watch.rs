//! Watch, as etcd's v3 watch: one hub per core holds the watchers of the streams on that
//! core. Every watcher has a position (the next revision it must deliver); after each
//! checkpoint the writer publishes the store's revision and wakes every core's hub, which
//! reads the new history from a snapshot of the store (the rev tree) and delivers it.
//!
//! There is no separate in-memory event log to overflow: a watcher whose client reads slowly
//! simply stays behind (its stream's outbox is full) and catches up from the store when the
//! outbox drains, so writes never wait for watchers and no event is lost or repeated. A
//! watcher that falls behind the compaction gets etcd's compacted cancel.
//!
//! Invariants: a watcher's position only moves forward, by exactly the revisions it has
//! delivered; all events of one revision go out in one response (unless the client asked for
//! fragments); the created response precedes every event of its watcher.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::task::AtomicWaker;

use crate::api::pb::etcdserverpb::{self as pb, watch_create_request::FilterType, watch_request};
use crate::api::pb::mvccpb::{self, event::EventType};
use crate::mvcc;

use super::kv::to_pb;
use super::Shared;

/// Events read for one watcher per pass (a revision's events are never split).
const EVENTS_PER_PASS_MAX: usize = 1000;
/// Responses queued for a stream before its watchers stop advancing (backpressure).
pub const OUTBOX_RESPONSES_MAX: usize = 64;
/// etcd's default progress notification interval.
pub const PROGRESS_INTERVAL_DEFAULT: Duration = Duration::from_secs(10 * 60);
/// etcd's clientv3.InvalidWatchID.
const INVALID_WATCH_ID: i64 = -1;

const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const EMPTY_WATCHER_RANGE: &str = "mvcc: watcher range is empty";

/// The writer's side: the newest checkpointed revision, and one waker per core's hub.
pub struct Publisher {
    revision: AtomicI64,
    wakers: Vec<AtomicWaker>,
}

impl Publisher {
    pub fn new(cores: usize, revision: i64) -> Publisher {
        Publisher { revision: AtomicI64::new(revision), wakers: (0..cores).map(|_| AtomicWaker::new()).collect() }
    }

    /// After a checkpoint: every hub looks at the new history.
    /// The revision watchers may deliver up to.
    pub fn published(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    pub fn publish(&self, revision: i64) {
        let previous = self.revision.swap(revision, Ordering::AcqRel);
        debug_assert!(previous <= revision, "the published revision only grows");
        self.wakers.iter().for_each(AtomicWaker::wake);
    }
}

struct Watcher {
    id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The next revision to deliver.
    position: Cell<i64>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    fragment: bool,
    progress_notify: bool,
    /// Whether anything went out since the last progress notification.
    sent_since_progress: Cell<bool>,
}

/// One Watch gRPC stream: its watchers and its outbox toward the client.
pub struct WatchStream {
    hub: Rc<Hub>,
    watchers: RefCell<BTreeMap<i64, Rc<Watcher>>>,
    next_auto_id: Cell<i64>,
    outbox: mpsc::UnboundedSender<pb::WatchResponse>,
    queued: Cell<usize>,
}

/// One core's watchers.
pub struct Hub {
    shared: Arc<Shared>,
    core: usize,
    streams: RefCell<Vec<std::rc::Weak<WatchStream>>>,
    /// Set when something local needs a pass (a new watcher, an outbox that drained).
    dirty: Cell<bool>,
}

impl Hub {
    pub fn new(shared: Arc<Shared>, core: usize) -> Rc<Hub> {
        Rc::new(Hub { shared, core, streams: RefCell::new(Vec::new()), dirty: Cell::new(false) })
    }

    fn header(&self, revision: i64) -> pb::ResponseHeader {
        self.shared.header(revision)
    }

    fn published_revision(&self) -> i64 {
        self.shared.watch.revision.load(Ordering::Acquire)
    }

    fn poke(&self) {
        self.dirty.set(true);
        self.shared.watch.wakers[self.core].wake();
    }

    /// Opens a stream; responses for it arrive on the returned receiver.
    pub fn open_stream(self: &Rc<Hub>) -> (Rc<WatchStream>, mpsc::UnboundedReceiver<pb::WatchResponse>) {
        let (outbox, responses) = mpsc::unbounded();
        let stream = Rc::new(WatchStream {
            hub: self.clone(),
            watchers: RefCell::new(BTreeMap::new()),
            next_auto_id: Cell::new(0),
            outbox,
            queued: Cell::new(0),
        });
        self.streams.borrow_mut().push(Rc::downgrade(&stream));
        (stream, responses)
    }

    /// Runs for the life of the core: a pass over every watcher whenever the writer
    /// published a new revision or a stream needs one.
    pub async fn run(self: Rc<Hub>) {
        let mut seen = 0i64;
        loop {
            futures::future::poll_fn(|cx| {
                self.shared.watch.wakers[self.core].register(cx.waker());
                if self.published_revision() != seen || self.dirty.get() {
                    std::task::Poll::Ready(())
                } else {
                    std::task::Poll::Pending
                }
            })
            .await;
            seen = self.published_revision();
            self.dirty.set(false);
            if self.pass() {
                // Behind with room to spare: go again, after the senders had their turn.
                self.dirty.set(true);
                futures_lite::future::yield_now().await;
            } else {
                glommio::yield_if_needed().await;
            }
        }
    }

    /// Gives every watcher one response's worth of what it has not seen yet. True if some
    /// stream still has a watcher behind the snapshot and room in its outbox: nothing else
    /// would wake the hub for it, since `response_sent` only wakes it when a full outbox
    /// drains to half, and the writer may have stopped publishing. A pass therefore ends
    /// with every stream either caught up or full.
    fn pass(&self) -> bool {
        let snapshot = self.shared.snapshot();
        self.streams.borrow_mut().retain(|stream| stream.strong_count() > 0);
        let streams: Vec<Rc<WatchStream>> = self.streams.borrow().iter().filter_map(|s| s.upgrade()).collect();
        let mut more = false;
        for stream in streams {
            let watchers: Vec<Rc<Watcher>> = stream.watchers.borrow().values().cloned().collect();
            for watcher in watchers {
                if stream.outbox_full() {
                    break; // this stream's client is slow: `response_sent` wakes the hub later
                }
                stream.deliver(&watcher, &snapshot);
            }
            more |= !stream.outbox_full() && stream.behind(snapshot.revision());
        }
        more
    }
}

impl WatchStream {
    fn outbox_full(&self) -> bool {
        self.queued.get() >= OUTBOX_RESPONSES_MAX
    }

    /// Whether one of this stream's watchers has revisions up to `revision` left to deliver.
    fn behind(&self, revision: i64) -> bool {
        self.watchers.borrow().values().any(|watcher| watcher.position.get() <= revision)
    }

    fn send(&self, response: pb::WatchResponse) {
        self.queued.set(self.queued.get() + 1);
        let _ = self.outbox.unbounded_send(response);
    }

    /// The send side took one response off the outbox.
    pub fn response_sent(&self) {
        let queued = self.queued.get();
        assert!(queued > 0, "a response left that was never queued");
        self.queued.set(queued - 1);
        if queued == OUTBOX_RESPONSES_MAX / 2 {
            self.hub.poke();
        }
    }

    /// Handles one request of the client's stream.
    pub fn handle(&self, request: pb::WatchRequest) {
        match request.request_union {
            Some(watch_request::RequestUnion::CreateRequest(create)) => self.create(create),
            Some(watch_request::RequestUnion::CancelRequest(cancel)) => self.cancel(cancel.watch_id),
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                let header = self.hub.header(self.hub.published_revision());
                self.send(pb::WatchResponse { header: Some(header), watch_id: INVALID_WATCH_ID, ..Default::default() });
            }
            None => {}
        }
    }

    fn create(&self, mut create: pb::WatchCreateRequest) {
        let revision = self.hub.published_revision();
        if create.key.is_empty() {
            create.key = vec![0];
        }
        let refused = |reason: &str| pb::WatchResponse {
            header: Some(self.hub.header(revision)),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_owned(),
            ..Default::default()
        };
        let empty_range = !create.range_end.is_empty() && create.range_end != [0] && create.key >= create.range_end;
        if empty_range {
            return self.send(refused(EMPTY_WATCHER_RANGE));
        }
        let id = if create.watch_id == 0 { self.next_free_id() } else { create.watch_id };
        if self.watchers.borrow().contains_key(&id) {
            return self.send(refused(DUPLICATE_WATCH_ID));
        }
        let start = if create.start_revision == 0 { revision + 1 } else { create.start_revision };
        let has = |filter: FilterType| create.filters.contains(&(filter as i32));
        let watcher = Watcher {
            id,
            key: create.key,
            range_end: create.range_end,
            position: Cell::new(start),
            prev_kv: create.prev_kv,
            no_put: has(FilterType::Noput),
            no_delete: has(FilterType::Nodelete),
            fragment: create.fragment,
            progress_notify: create.progress_notify,
            sent_since_progress: Cell::new(false),
        };
        self.send(pb::WatchResponse {
            header: Some(self.hub.header(revision)),
            watch_id: id,
            created: true,
            ..Default::default()
        });
        self.watchers.borrow_mut().insert(id, Rc::new(watcher));
        self.hub.poke();
    }

    fn next_free_id(&self) -> i64 {
        let watchers = self.watchers.borrow();
        let mut id = self.next_auto_id.get();
        while watchers.contains_key(&id) {
            id += 1;
        }
        self.next_auto_id.set(id + 1);
        id
    }

    fn cancel(&self, id: i64) {
        if self.watchers.borrow_mut().remove(&id).is_some() {
            let header = self.hub.header(self.hub.published_revision());
            self.send(pb::WatchResponse { header: Some(header), watch_id: id, canceled: true, ..Default::default() });
        }
    }

    /// Sends an empty response to every watcher that asked for progress notifications and
    /// got nothing since the last one (etcd's progress_notify).
    pub fn notify_progress(&self) {
        let header = self.hub.header(self.hub.published_revision());
        let watchers: Vec<Rc<Watcher>> = self.watchers.borrow().values().cloned().collect();
        for watcher in watchers.iter().filter(|w| w.progress_notify) {
            let caught_up = watcher.position.get() > self.hub.published_revision();
            if caught_up && !watcher.sent_since_progress.replace(false) {
                self.send(pb::WatchResponse {
                    header: Some(header.clone()),
                    watch_id: watcher.id,
                    ..Default::default()
                });
            }
        }
    }

    /// Delivers what the snapshot holds after the watcher's position.
    fn deliver(&self, watcher: &Watcher, snapshot: &mvcc::Snapshot) {
        let position = watcher.position.get();
        if position > snapshot.revision() {
            return;
        }
        let read = snapshot.history(position - 1, &watcher.key, &watcher.range_end, EVENTS_PER_PASS_MAX);
        let (history, covered) = match read {
            Ok(read) => read,
            Err(_) => return self.compacted(watcher, snapshot),
        };
        assert!(covered >= position - 1, "history covers at least what it was asked from");
        watcher.position.set(covered + 1);
        let events: Vec<mvccpb::Event> = history
            .into_iter()
            .filter(|event| !(event.deleted && watcher.no_delete) && !(!event.deleted && watcher.no_put))
            .map(|event| self.event(watcher, snapshot, event))
            .collect();
        if events.is_empty() {
            return;
        }
        watcher.sent_since_progress.set(true);
        let response = pb::WatchResponse {
            header: Some(self.hub.header(snapshot.revision())),
            watch_id: watcher.id,
            events,
            ..Default::default()
        };
        if watcher.fragment {
            self.send_fragments(response);
        } else {
            self.send(response);
        }
    }

    fn event(&self, watcher: &Watcher, snapshot: &mvcc::Snapshot, event: mvcc::HistoryEvent) -> mvccpb::Event {
        let prev_kv = if watcher.prev_kv { previous(snapshot, &event.kv) } else { None };
        mvccpb::Event {
            r#type: if event.deleted { EventType::Delete as i32 } else { EventType::Put as i32 },
            kv: Some(to_pb(event.kv)),
            prev_kv,
        }
    }

    /// etcd's compacted cancel: the watcher is gone, the client learns the compact revision.
    fn compacted(&self, watcher: &Watcher, snapshot: &mvcc::Snapshot) {
        self.watchers.borrow_mut().remove(&watcher.id);
        self.send(pb::WatchResponse {
            header: Some(self.hub.header(snapshot.revision())),
            watch_id: watcher.id,
            canceled: true,
            compact_revision: snapshot.compact_revision(),
            ..Default::default()
        });
    }

    /// etcd's sendFragments: responses over --max-request-bytes are split between events,
    /// every part but the last marked `fragment`.
    fn send_fragments(&self, response: pb::WatchResponse) {
        use prost::Message;
        let limit_bytes = self.hub.shared.config.max_request_bytes;
        if response.encoded_len() < limit_bytes || response.events.len() < 2 {
            return self.send(response);
        }
        let mut part = pb::WatchResponse { fragment: true, events: Vec::new(), ..response.clone() };
        for event in response.events {
            if !part.events.is_empty() && part.encoded_len() + event.encoded_len() > limit_bytes {
                let next = pb::WatchResponse { events: Vec::new(), ..part.clone() };
                self.send(std::mem::replace(&mut part, next));
            }
            part.events.push(event);
        }
        part.fragment = false;
        self.send(part);
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.watchers.borrow_mut().clear();
    }
}

/// The key's KeyValue just before this event's revision, if it was live (etcd's prev_kv).
fn previous(snapshot: &mvcc::Snapshot, kv: &mvcc::KeyValue) -> Option<mvccpb::KeyValue> {
    let options = mvcc::RangeOptions { revision: kv.mod_revision - 1, limit: 1, keys_only: false, count_only: false };
    let result = snapshot.range(&kv.key, &[], &options).ok()?;
    result.kvs.into_iter().next().map(to_pb)
}
