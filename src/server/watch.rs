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
//! What a pass costs (etcd's synced group, without a second copy of the history): each
//! stream has a floor, a revision every one of its watchers has delivered. A pass reads the
//! history of every key once from each floor many watchers share, and a stream none of
//! whose watchers' keys are in it just moves its floor: idle watchers cost nothing per
//! write. Watchers of the same events get them encoded once per pass (gRPC streams).
//!
//! Invariants: a watcher's position only moves forward, by exactly the revisions it has
//! delivered; all events of one revision go out in one response (unless the client asked for
//! fragments); the created response precedes every event of its watcher.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
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
/// Watchers at one position from which a pass reads the history of every key once and
/// gives each its share, instead of one read per watcher (etcd's synced group).
const SHARED_READ_WATCHERS_MIN: usize = 4;
/// Encoded bytes of responses queued for a stream before its watchers stop advancing
/// (backpressure). Bytes, not responses: a stream of 1000 watchers of one key queues 1000
/// small responses per revision, and each pass that stops early costs a walk of every
/// watcher of the core.
pub const OUTBOX_BYTES_MAX: usize = 1 << 20;
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
    /// Whether each core's hub has streams. A commit wakes only those hubs: waking an idle
    /// core costs the raft core an eventfd write and that core a wakeup, on every commit.
    /// (SeqCst with `revision`: a hub that sets its flag and then reads the revision, and a
    /// publish that stores the revision and then reads the flag, cannot both miss the other.)
    listening: Vec<AtomicBool>,
}

impl Publisher {
    pub fn new(cores: usize, revision: i64) -> Publisher {
        Publisher {
            revision: AtomicI64::new(revision),
            wakers: (0..cores).map(|_| AtomicWaker::new()).collect(),
            listening: (0..cores).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// After a checkpoint: every hub looks at the new history.
    /// The revision watchers may deliver up to.
    pub fn published(&self) -> i64 {
        self.revision.load(Ordering::SeqCst)
    }

    pub fn publish(&self, revision: i64) {
        let previous = self.revision.swap(revision, Ordering::SeqCst);
        debug_assert!(previous <= revision, "the published revision only grows");
        for (waker, listening) in self.wakers.iter().zip(&self.listening) {
            if listening.load(Ordering::SeqCst) {
                waker.wake();
            }
        }
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

/// What a stream's outbox carries: a response, or (on a stream opened for gRPC) the events
/// responses of a pass already encoded as gRPC messages, whose events were encoded once for
/// every watcher that gets the same ones.
pub enum Outgoing {
    Response(pb::WatchResponse),
    Encoded(bytes::Bytes),
}

impl Outgoing {
    /// The response of a stream opened with `open_stream`, which never gets encoded ones.
    fn into_response(self) -> pb::WatchResponse {
        match self {
            Outgoing::Response(response) => response,
            Outgoing::Encoded(_) => unreachable!("only a stream opened encoded gets encoded responses"),
        }
    }
}

/// The responses of a stream opened with `open_stream`.
pub type Responses = futures::stream::Map<mpsc::UnboundedReceiver<Outgoing>, fn(Outgoing) -> pb::WatchResponse>;

/// One Watch gRPC stream: its watchers and its outbox toward the client.
pub struct WatchStream {
    hub: Rc<Hub>,
    watchers: RefCell<BTreeMap<i64, Rc<Watcher>>>,
    next_auto_id: Cell<i64>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// Events responses go out encoded (gRPC) rather than as messages (gateway, server).
    encoded: bool,
    /// Encoded bytes in the outbox, and each queued response's share, in order.
    queued_bytes: Cell<usize>,
    queued_sizes: RefCell<std::collections::VecDeque<usize>>,
    /// Every watcher of the stream has delivered every revision up to this one: a watcher's
    /// position is at least `caught_up + 1` even where its own cell says less (a pass that
    /// finds nothing for the stream moves this floor, not each watcher: etcd's synced group).
    caught_up: Cell<i64>,
    /// The keys of the stream's one-key watchers (with their counts), and how many watch a
    /// range: whether a pass's events can concern the stream at all.
    single_keys: RefCell<rustc_hash::FxHashMap<Vec<u8>, usize>>,
    range_watchers: Cell<usize>,
    /// The stream's request side, waiting in `room_for_requests` for the outbox to drain.
    request_waker: RefCell<Option<std::task::Waker>>,
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
        self.shared.watch.revision.load(Ordering::SeqCst)
    }

    fn poke(&self) {
        self.dirty.set(true);
        self.shared.watch.wakers[self.core].wake();
    }

    /// Opens a stream; responses for it arrive on the returned receiver.
    pub fn open_stream(self: &Rc<Hub>) -> (Rc<WatchStream>, Responses) {
        use futures::StreamExt;
        let (stream, outgoing) = self.open(false);
        (stream, outgoing.map(Outgoing::into_response as fn(Outgoing) -> pb::WatchResponse))
    }

    /// Opens a stream whose events responses arrive encoded as gRPC messages.
    pub fn open_encoded_stream(self: &Rc<Hub>) -> (Rc<WatchStream>, mpsc::UnboundedReceiver<Outgoing>) {
        self.open(true)
    }

    fn open(self: &Rc<Hub>, encoded: bool) -> (Rc<WatchStream>, mpsc::UnboundedReceiver<Outgoing>) {
        let (outbox, responses) = mpsc::unbounded();
        let stream = Rc::new(WatchStream {
            hub: self.clone(),
            watchers: RefCell::new(BTreeMap::new()),
            next_auto_id: Cell::new(0),
            outbox,
            encoded,
            queued_bytes: Cell::new(0),
            queued_sizes: RefCell::new(std::collections::VecDeque::new()),
            caught_up: Cell::new(0),
            single_keys: RefCell::new(rustc_hash::FxHashMap::default()),
            range_watchers: Cell::new(0),
            request_waker: RefCell::new(None),
        });
        self.streams.borrow_mut().push(Rc::downgrade(&stream));
        self.shared.watch.listening[self.core].store(true, Ordering::SeqCst);
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
        if self.streams.borrow().is_empty() {
            // Streams open on this core only, so none can appear before the flag is cleared;
            // the next one sets it again and its watchers' creation pokes this hub.
            self.shared.watch.listening[self.core].store(false, Ordering::SeqCst);
        }
        let streams: Vec<Rc<WatchStream>> = self.streams.borrow().iter().filter_map(|s| s.upgrade()).collect();
        let shared = shared_reads(&streams, &snapshot);
        let mut encoded = EncodedPass::new(&self.header(snapshot.revision()));
        let mut more = false;
        for stream in streams {
            let floor = stream.caught_up.get() + 1;
            if floor > snapshot.revision() {
                continue; // every watcher of the stream has everything
            }
            if let Some(Ok(read)) = shared.get(&floor) {
                if !stream.wants_any(read) {
                    stream.caught_up.set(read.covered);
                    more |= read.covered < snapshot.revision();
                    continue;
                }
            }
            let watchers: Vec<Rc<Watcher>> = stream.watchers.borrow().values().cloned().collect();
            let mut lowest = i64::MAX;
            for watcher in watchers {
                if stream.outbox_full() {
                    lowest = i64::MIN; // not every watcher was visited: the floor stays
                    break; // this stream's client is slow: `response_sent` wakes the hub later
                }
                stream.deliver(&watcher, &snapshot, &shared, &mut encoded);
                lowest = lowest.min(watcher.position.get());
            }
            if lowest == i64::MAX {
                lowest = snapshot.revision() + 1; // no watchers: nothing to deliver up to here
            }
            if lowest != i64::MIN {
                assert!(lowest > stream.caught_up.get(), "the floor only moves forward");
                stream.caught_up.set(lowest - 1);
            }
            more |= !stream.outbox_full() && stream.caught_up.get() < snapshot.revision();
        }
        more
    }
}

impl WatchStream {
    fn outbox_full(&self) -> bool {
        self.queued_bytes.get() >= OUTBOX_BYTES_MAX
    }

    /// Whether any event of `read` may be for one of this stream's watchers.
    fn wants_any(&self, read: &SharedRead) -> bool {
        if self.range_watchers.get() > 0 {
            return !read.events.is_empty();
        }
        let keys = self.single_keys.borrow();
        !keys.is_empty() && read.by_key.keys().any(|key| keys.contains_key(key))
    }

    /// The watcher's position, the stream's floor counted in.
    fn position(&self, watcher: &Watcher) -> i64 {
        watcher.position.get().max(self.caught_up.get() + 1)
    }

    /// Writes the stream's floor into the watcher's own position.
    fn settle(&self, watcher: &Watcher) {
        watcher.position.set(self.position(watcher));
    }

    fn add_watcher(&self, watcher: Watcher) {
        if watcher.position.get() - 1 < self.caught_up.get() {
            // A watcher from an earlier revision: the floor moves down to it, so the others
            // first take the floor into their own positions.
            self.watchers.borrow().values().for_each(|other| self.settle(other));
            self.caught_up.set(watcher.position.get() - 1);
        }
        if watcher.range_end.is_empty() {
            *self.single_keys.borrow_mut().entry(watcher.key.clone()).or_default() += 1;
        } else {
            self.range_watchers.set(self.range_watchers.get() + 1);
        }
        self.watchers.borrow_mut().insert(watcher.id, Rc::new(watcher));
    }

    fn remove_watcher(&self, id: i64) -> Option<Rc<Watcher>> {
        let watcher = self.watchers.borrow_mut().remove(&id)?;
        if watcher.range_end.is_empty() {
            let mut keys = self.single_keys.borrow_mut();
            let count = keys.get_mut(&watcher.key).expect("a one-key watcher is counted");
            *count -= 1;
            if *count == 0 {
                keys.remove(&watcher.key);
            }
        } else {
            self.range_watchers.set(self.range_watchers.get() - 1);
        }
        Some(watcher)
    }

    fn send(&self, response: pb::WatchResponse) {
        self.queue(prost::Message::encoded_len(&response), Outgoing::Response(response));
    }

    fn queue(&self, bytes: usize, outgoing: Outgoing) {
        self.queued_bytes.set(self.queued_bytes.get() + bytes);
        self.queued_sizes.borrow_mut().push_back(bytes);
        let _ = self.outbox.unbounded_send(outgoing);
    }

    /// Resolves once the outbox has room: the request side waits here before it takes the
    /// client's next request, so a client that sends requests (each queues a response) but
    /// never reads cannot grow the outbox without bound; its requests wait in its own
    /// stream's flow-control window instead, as etcd's receive loop blocks on a full
    /// control queue.
    pub async fn room_for_requests(&self) {
        std::future::poll_fn(|cx| {
            if self.outbox_full() {
                *self.request_waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await
    }

    /// The send side took one response off the outbox.
    pub fn response_sent(&self) {
        let bytes = self.queued_sizes.borrow_mut().pop_front().expect("a response left that was never queued");
        let queued_bytes = self.queued_bytes.get();
        assert!(queued_bytes >= bytes, "the outbox's bytes are the sum of its responses'");
        self.queued_bytes.set(queued_bytes - bytes);
        if queued_bytes >= OUTBOX_BYTES_MAX / 2 && queued_bytes - bytes < OUTBOX_BYTES_MAX / 2 {
            self.hub.poke();
        }
        if !self.outbox_full() {
            if let Some(waker) = self.request_waker.borrow_mut().take() {
                waker.wake();
            }
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
        // A negative start is the oldest history there is (revision 1, or the compacted
        // error), as in etcd's store; kept from overflowing the positions kept below it.
        let start = if create.start_revision == 0 { revision + 1 } else { create.start_revision.max(1) };
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
        self.add_watcher(watcher);
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
        if self.remove_watcher(id).is_some() {
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
            let caught_up = self.position(watcher) > self.hub.published_revision();
            if caught_up && !watcher.sent_since_progress.replace(false) {
                self.send(pb::WatchResponse { header: Some(header), watch_id: watcher.id, ..Default::default() });
            }
        }
    }

    /// Delivers what the snapshot holds after the watcher's position: its share of the
    /// pass's shared read from that position, if there is one, else a read of its own. On
    /// an encoded stream, the events are encoded once per pass for all watchers that get
    /// the same ones (same position, range and options).
    fn deliver(&self, watcher: &Watcher, snapshot: &mvcc::Snapshot, shared: &SharedReads, encoded: &mut EncodedPass) {
        self.settle(watcher);
        let position = watcher.position.get();
        if position > snapshot.revision() {
            return;
        }
        if let Some(Ok(read)) = shared.get(&position) {
            if !read.touches(&watcher.key, &watcher.range_end) {
                watcher.position.set(read.covered + 1);
                return;
            }
        }
        if self.encoded && !watcher.fragment {
            let Some(events) = encoded.events(watcher, || self.read_events(watcher, snapshot, shared)) else {
                return self.compacted(watcher, snapshot);
            };
            assert!(events.covered >= position - 1, "history covers at least what it was asked from");
            watcher.position.set(events.covered + 1);
            if !events.bytes.is_empty() {
                watcher.sent_since_progress.set(true);
                let message = encoded.message(watcher.id, &events.bytes);
                self.queue(message.len(), Outgoing::Encoded(message));
            }
            return;
        }
        let Some((events, covered)) = self.read_events(watcher, snapshot, shared) else {
            return self.compacted(watcher, snapshot);
        };
        assert!(covered >= position - 1, "history covers at least what it was asked from");
        watcher.position.set(covered + 1);
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

    /// The events after the watcher's position it must get (filters applied, prev_kv
    /// filled in) and the last revision they cover; None if that history is compacted.
    fn read_events(
        &self,
        watcher: &Watcher,
        snapshot: &mvcc::Snapshot,
        shared: &SharedReads,
    ) -> Option<(Vec<mvccpb::Event>, i64)> {
        let position = watcher.position.get();
        let (history, covered) = match shared.get(&position) {
            Some(Ok(read)) => (read.share(&watcher.key, &watcher.range_end), read.covered),
            Some(Err(())) => return None,
            None => snapshot.history(position - 1, &watcher.key, &watcher.range_end, EVENTS_PER_PASS_MAX).ok()?,
        };
        let events: Vec<mvccpb::Event> = history
            .into_iter()
            .filter(|event: &mvcc::HistoryEvent| if event.deleted { !watcher.no_delete } else { !watcher.no_put })
            .map(|event| self.event(watcher, snapshot, event))
            .collect();
        Some((events, covered))
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
        self.remove_watcher(watcher.id);
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

/// One distinct set of events with its encoding, shared by the watchers that want it.
type SharedEvents = Rc<(EventsKey, Rc<EncodedEvents>)>;

/// A pass's encodings for encoded streams: the header once, and each distinct set of events
/// (position, range, options) once, as a run of WatchResponse `events` fields.
struct EncodedPass {
    /// WatchResponse field 1 (the header), encoded.
    header: Vec<u8>,
    events: rustc_hash::FxHashMap<u64, Vec<SharedEvents>>,
    /// The last events handed out: the next watcher (of a stream of like watchers) most
    /// often wants the same, and is then served without hashing.
    last: Option<SharedEvents>,
    /// The last "no events" handed out.
    nothing: Option<Rc<EncodedEvents>>,
}

/// What decides a watcher's events in a pass.
#[derive(Hash, PartialEq, Eq)]
struct EventsKey {
    position: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
}

struct EncodedEvents {
    /// WatchResponse field 11 (events), repeated, encoded; empty if there are none.
    bytes: Vec<u8>,
    covered: i64,
}

impl EncodedPass {
    fn new(header: &pb::ResponseHeader) -> EncodedPass {
        let mut encoded = Vec::with_capacity(64);
        prost::encoding::message::encode(1, header, &mut encoded);
        EncodedPass { header: encoded, events: rustc_hash::FxHashMap::default(), last: None, nothing: None }
    }

    /// The watcher's events, encoded by `read` the first time they are asked for in this
    /// pass; None if that history is compacted (never cached: the watcher is cancelled).
    fn events(
        &mut self,
        watcher: &Watcher,
        read: impl FnOnce() -> Option<(Vec<mvccpb::Event>, i64)>,
    ) -> Option<Rc<EncodedEvents>> {
        use std::hash::{Hash, Hasher};
        let w = watcher;
        let wanted = (w.position.get(), &w.key[..], &w.range_end[..], w.prev_kv, w.no_put, w.no_delete);
        let same =
            |k: &EventsKey| (k.position, &k.key[..], &k.range_end[..], k.prev_kv, k.no_put, k.no_delete) == wanted;
        if let Some(last) = self.last.as_ref().filter(|last| same(&last.0)) {
            return Some(last.1.clone());
        }
        let mut hasher = rustc_hash::FxHasher::default();
        wanted.hash(&mut hasher);
        let bucket = self.events.entry(hasher.finish()).or_default();
        if let Some(found) = bucket.iter().find(|entry| same(&entry.0)) {
            self.last = Some(found.clone());
            return Some(found.1.clone());
        }
        let (events, covered) = read()?;
        if events.is_empty() {
            // Nothing to encode or share: most watchers of a pass (those of other keys).
            return Some(self.nothing(covered));
        }
        let mut bytes = Vec::new();
        for event in &events {
            prost::encoding::message::encode(11, event, &mut bytes);
        }
        let encoded = Rc::new(EncodedEvents { bytes, covered });
        let (position, key, range_end, prev_kv, no_put, no_delete) = wanted;
        let owned =
            EventsKey { position, key: key.to_vec(), range_end: range_end.to_vec(), prev_kv, no_put, no_delete };
        let entry = Rc::new((owned, encoded.clone()));
        bucket.push(entry.clone());
        self.last = Some(entry);
        Some(encoded)
    }

    /// No events, up to `covered` (one allocation per covered revision and pass).
    fn nothing(&mut self, covered: i64) -> Rc<EncodedEvents> {
        match &self.nothing {
            Some(nothing) if nothing.covered == covered => nothing.clone(),
            _ => {
                let nothing = Rc::new(EncodedEvents { bytes: Vec::new(), covered });
                self.nothing = Some(nothing.clone());
                nothing
            }
        }
    }

    /// One gRPC message (length prefix included): the WatchResponse with this pass's header,
    /// `watch_id` and `events`, byte for byte what prost encodes for it.
    fn message(&self, watch_id: i64, events: &[u8]) -> bytes::Bytes {
        let mut id = Vec::with_capacity(11);
        if watch_id != 0 {
            prost::encoding::int64::encode(2, &watch_id, &mut id);
        }
        let length = self.header.len() + id.len() + events.len();
        let mut message = bytes::BytesMut::with_capacity(5 + length);
        message.extend_from_slice(&[0]);
        message.extend_from_slice(&(length as u32).to_be_bytes());
        message.extend_from_slice(&self.header);
        message.extend_from_slice(&id);
        message.extend_from_slice(events);
        message.freeze()
    }
}

/// A pass's reads of every key's history, by the position they start at (Err: compacted).
type SharedReads = rustc_hash::FxHashMap<i64, Result<SharedRead, ()>>;

/// The history of every key after one position, and where each key's events are in it (a
/// watcher of one key finds its share without looking at the others').
struct SharedRead {
    events: Vec<mvcc::HistoryEvent>,
    covered: i64,
    by_key: rustc_hash::FxHashMap<Vec<u8>, Vec<usize>>,
}

impl SharedRead {
    fn new(events: Vec<mvcc::HistoryEvent>, covered: i64) -> SharedRead {
        let mut by_key: rustc_hash::FxHashMap<Vec<u8>, Vec<usize>> = rustc_hash::FxHashMap::default();
        for (index, event) in events.iter().enumerate() {
            by_key.entry(event.kv.key.clone()).or_default().push(index);
        }
        SharedRead { events, covered, by_key }
    }

    /// Whether any event is for a key of [key, range_end) (a watcher of another key has
    /// nothing in this read: most watchers of most passes).
    fn touches(&self, key: &[u8], range_end: &[u8]) -> bool {
        if range_end.is_empty() {
            return self.by_key.contains_key(key);
        }
        let bounds = mvcc::Bounds::new(key, range_end);
        self.events.iter().any(|event| bounds.contains(&event.kv.key))
    }

    /// The events a watcher of [key, range_end) gets, in revision order.
    fn share(&self, key: &[u8], range_end: &[u8]) -> Vec<mvcc::HistoryEvent> {
        if range_end.is_empty() {
            let indices = self.by_key.get(key).map_or(&[][..], Vec::as_slice);
            return indices.iter().map(|&index| self.events[index].clone()).collect();
        }
        let bounds = mvcc::Bounds::new(key, range_end);
        self.events.iter().filter(|event| bounds.contains(&event.kv.key)).cloned().collect()
    }
}

/// One read of every key's history from each stream floor that at least
/// SHARED_READ_WATCHERS_MIN watchers share (in the steady state, every caught-up stream has
/// the same floor; a stream's own watchers are mostly at its floor).
fn shared_reads(streams: &[Rc<WatchStream>], snapshot: &mvcc::Snapshot) -> SharedReads {
    let mut counts: rustc_hash::FxHashMap<i64, usize> = rustc_hash::FxHashMap::default();
    for stream in streams {
        let floor = stream.caught_up.get() + 1;
        if floor <= snapshot.revision() {
            *counts.entry(floor).or_default() += stream.watchers.borrow().len();
        }
    }
    counts
        .into_iter()
        .filter(|&(_, count)| count >= SHARED_READ_WATCHERS_MIN)
        .map(|(position, _)| {
            let read = snapshot.history(position - 1, b"", &[0], EVENTS_PER_PASS_MAX);
            (position, read.map(|(events, covered)| SharedRead::new(events, covered)).map_err(|_| ()))
        })
        .collect()
}

/// The key's KeyValue just before this event's revision, if it was live (etcd's prev_kv).
fn previous(snapshot: &mvcc::Snapshot, kv: &mvcc::KeyValue) -> Option<mvccpb::KeyValue> {
    let options = mvcc::RangeOptions { revision: kv.mod_revision - 1, limit: 1, keys_only: false, count_only: false };
    let result = snapshot.range(&kv.key, &[], &options).ok()?;
    result.kvs.into_iter().next().map(to_pb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher(id: i64, key: &[u8]) -> Watcher {
        Watcher {
            id,
            key: key.to_vec(),
            range_end: Vec::new(),
            position: Cell::new(7),
            prev_kv: false,
            no_put: false,
            no_delete: false,
            fragment: false,
            progress_notify: false,
            sent_since_progress: Cell::new(false),
        }
    }

    #[test]
    fn an_encoded_message_is_what_prost_encodes_and_events_are_read_once() {
        let header = pb::ResponseHeader { cluster_id: 1, member_id: 2, revision: 9, raft_term: 3 };
        let kv = mvccpb::KeyValue { key: b"k".to_vec(), value: b"v".to_vec(), mod_revision: 7, ..Default::default() };
        let events = vec![mvccpb::Event { kv: Some(kv), ..Default::default() }];
        let mut pass = EncodedPass::new(&header);
        let mut reads = 0;
        for id in [0, 1, 1 << 40] {
            let encoded = pass
                .events(&watcher(id, b"k"), || {
                    reads += 1;
                    Some((events.clone(), 8))
                })
                .unwrap();
            assert_eq!(encoded.covered, 8);
            let message = pass.message(id, &encoded.bytes);
            let expected =
                pb::WatchResponse { header: Some(header), watch_id: id, events: events.clone(), ..Default::default() };
            assert_eq!(&message[5..], prost::Message::encode_to_vec(&expected).as_slice());
            assert_eq!(u32::from_be_bytes(message[1..5].try_into().unwrap()) as usize, message.len() - 5);
        }
        assert_eq!(reads, 1, "watchers wanting the same events share one read");
        pass.events(&watcher(5, b"other"), || Some((Vec::new(), 8))).unwrap();
        assert!(pass.events(&watcher(6, b"gone"), || None).is_none(), "a compacted read is not cached");
    }
}
