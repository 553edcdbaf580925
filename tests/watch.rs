//! Watch through the `ringd` binary's gRPC API, driven by the crate's own async client on a
//! glommio executor:
//!
//! - a property test: random histories of puts, deletes (single and range), multi-op txns
//!   and compactions, with watchers of every kind created at random points from random start
//!   revisions, each checked event by event against a plain model of the history; the same
//!   cases also run against a real etcd, which proves the model is etcd's;
//! - a watcher that stops reading while 100,000 writes happen;
//! - 10,000 watchers on one key and 10,000 on one prefix.
//!
//! Every wait is bounded by `WAIT`. Checks return their reason instead of panicking inside
//! the executor; the test panics with it outside, after the executor has stopped, and the
//! server process is stopped when its handle drops.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use proptest::prelude::*;
use ringd::api::pb::etcdserverpb as pb;
use ringd::api::pb::mvccpb::{self, event::EventType};
use ringd::client::{Client, ClientOptions, WatchStream};
use support::{Etcd, Ringd};

/// Bound on any one wait: a response, a write, the next watch response.
const WAIT: Duration = Duration::from_secs(10);
/// etcd's clientv3.InvalidWatchID: the watch id of a progress response.
const NO_WATCH_ID: i64 = -1;

type Checked<T> = Result<T, String>;

macro_rules! ensure {
    ($condition:expr, $($reason:tt)+) => {
        if !$condition {
            return Err(format!($($reason)+));
        }
    };
}

/// Runs `test` on a fresh glommio executor of this thread; its failure comes back as Err.
fn run<F: Future<Output = Checked<()>>>(test: impl FnOnce() -> F) -> Checked<()> {
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .make()
        .expect("a glommio executor for the test client");
    executor.run(test())
}

/// `future`'s output, or Err naming `what` if it takes longer than `WAIT`.
async fn within<T>(what: impl FnOnce() -> String, future: impl Future<Output = T>) -> Checked<T> {
    let deadline = glommio::timer::sleep(WAIT);
    futures::pin_mut!(future);
    futures::pin_mut!(deadline);
    match futures::future::select(future, deadline).await {
        futures::future::Either::Left((value, _)) => Ok(value),
        futures::future::Either::Right(_) => Err(format!("nothing within {WAIT:?}: {}", what())),
    }
}

/// The next response of a watch stream; Err if it fails, ends or stays silent.
async fn next_response(stream: &mut WatchStream, waiting_for: &dyn Fn() -> String) -> Checked<pb::WatchResponse> {
    match within(waiting_for, stream.next()).await? {
        Ok(Some(response)) => Ok(response),
        Ok(None) => Err(format!("the watch stream ended while waiting for {}", waiting_for())),
        Err(error) => Err(format!("the watch stream failed ({error}) while waiting for {}", waiting_for())),
    }
}

async fn connect(endpoint: &str, connections: usize) -> Checked<Client> {
    let options = ClientOptions { connections, ..ClientOptions::default() };
    within(|| format!("connecting to {endpoint}"), Client::connect(&[endpoint.to_owned()], &options))
        .await?
        .map_err(|error| format!("connecting to {endpoint}: {error}"))
}

/// Sends a progress request and reads up to its answer, handing every other response to
/// `route`: whatever the server had queued for the stream before the request is checked.
async fn progress_barrier(
    stream: &mut WatchStream,
    mut route: impl FnMut(pb::WatchResponse) -> Checked<()>,
) -> Checked<()> {
    stream.send(&progress_request()).map_err(|error| format!("sending a progress request: {error}"))?;
    loop {
        let response = next_response(stream, &|| "the answer to a progress request".to_owned()).await?;
        if is_progress(&response) {
            return Ok(());
        }
        route(response)?;
    }
}

fn progress_request() -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
    }
}

fn is_progress(response: &pb::WatchResponse) -> bool {
    response.watch_id == NO_WATCH_ID && !response.created && !response.canceled && response.events.is_empty()
}

fn revision_of(event: &mvccpb::Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

fn key_of(event: &mvccpb::Event) -> &[u8] {
    event.kv.as_ref().map_or(&[], |kv| kv.key.as_slice())
}

fn is_delete(event: &mvccpb::Event) -> bool {
    event.r#type == EventType::Delete as i32
}

fn header_revision(header: &Option<pb::ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |header| header.revision)
}

// ---------------------------------------------------------------------------------------
// The model: etcd's MVCC history as plain data.

/// One key's change inside a revision.
#[derive(Clone, Debug)]
enum Change {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Every event of the history, as etcd's watch reports it with prev_kv set: a put's kv is
/// the whole new KeyValue, a delete's is the key and the deleting revision; prev_kv is the
/// key's KeyValue just before, if it was live.
struct Model {
    live: BTreeMap<Vec<u8>, mvccpb::KeyValue>,
    events: Vec<mvccpb::Event>,
    revision: i64,
    compacted: i64,
    compactions: Vec<i64>,
}

impl Model {
    fn starting_at(revision: i64) -> Model {
        Model { live: BTreeMap::new(), events: Vec::new(), revision, compacted: 0, compactions: Vec::new() }
    }

    /// The changes of one write transaction, made at `revision`.
    fn apply(&mut self, revision: i64, changes: &[Change]) {
        assert!(revision > self.revision && !changes.is_empty(), "a write makes one new revision");
        for change in changes {
            let event = match change {
                Change::Put(key, value) => {
                    let previous = self.live.get(key).cloned();
                    let kv = mvccpb::KeyValue {
                        key: key.clone(),
                        create_revision: previous.as_ref().map_or(revision, |kv| kv.create_revision),
                        mod_revision: revision,
                        version: previous.as_ref().map_or(1, |kv| kv.version + 1),
                        value: value.clone(),
                        lease: 0,
                    };
                    self.live.insert(key.clone(), kv.clone());
                    mvccpb::Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: previous }
                }
                Change::Delete(key) => {
                    let previous = self.live.remove(key).expect("the model deletes live keys only");
                    let kv = mvccpb::KeyValue { key: key.clone(), mod_revision: revision, ..Default::default() };
                    mvccpb::Event { r#type: EventType::Delete as i32, kv: Some(kv), prev_kv: Some(previous) }
                }
            };
            self.events.push(event);
        }
        self.revision = revision;
    }
}

/// The events one watcher must receive from a history: those at or after `start` whose key
/// `matches`, without prev_kv unless asked for.
fn events_for(
    events: &[mvccpb::Event],
    start: i64,
    prev_kv: bool,
    matches: impl Fn(&[u8]) -> bool,
) -> Vec<mvccpb::Event> {
    events
        .iter()
        .filter(|event| revision_of(event) >= start && matches(key_of(event)))
        .map(|event| mvccpb::Event { prev_kv: if prev_kv { event.prev_kv.clone() } else { None }, ..event.clone() })
        .collect()
}

/// What one watcher has received so far, checked response by response against what it
/// must receive.
#[derive(Debug, Default)]
struct Follower {
    received: usize,
    /// The revision of the last event received (0: none yet).
    last_revision: i64,
}

impl Follower {
    /// One response's events: exactly the next expected ones, and never the rest of a
    /// revision that an earlier response already carried part of (a revision's events come
    /// in one response).
    fn accept(&mut self, events: &[mvccpb::Event], expected: &[mvccpb::Event]) -> Checked<()> {
        ensure!(!events.is_empty(), "an empty response, but no progress notification was asked for");
        let first = revision_of(&events[0]);
        ensure!(
            first > self.last_revision,
            "a response starts at revision {first} although revision {} was already delivered (a revision split \
             over two responses, or events repeated); the response: {events:?}",
            self.last_revision
        );
        for event in events {
            let Some(want) = expected.get(self.received) else {
                return Err(format!("event beyond the {} expected ones: {event:?}", expected.len()));
            };
            ensure!(event == want, "event #{} (from 0) is\n    {event:?}\nexpected\n    {want:?}", self.received);
            self.received += 1;
            self.last_revision = revision_of(event);
        }
        Ok(())
    }

    fn done(&self, expected: &[mvccpb::Event]) -> bool {
        self.received == expected.len()
    }

    /// Whether what was received ends with a whole revision.
    fn at_revision_boundary(&self, expected: &[mvccpb::Event]) -> bool {
        expected.get(self.received).is_none_or(|next| revision_of(next) != self.last_revision)
    }
}

// ---------------------------------------------------------------------------------------
// 1. The property test.

/// The keys of the generated histories, sorted: "k/" is a prefix of three of them.
const KEYS: [&str; 8] = ["a", "b", "k/a", "k/b", "k/c", "ka", "l", "m"];
/// The end of a range that reaches past every key.
const PAST_EVERY_KEY: &str = "z";
/// Watch streams per case, on two connections (which may land on different cores).
const STREAMS: usize = 3;

/// Which keys a watch or a delete covers, in etcd's (key, range_end) terms.
#[derive(Clone, Debug)]
enum Span {
    Key(usize),
    /// [KEYS[a], KEYS[b]); b == KEYS.len() means up to PAST_EVERY_KEY.
    Range(usize, usize),
    /// The prefix "k/".
    Prefix,
    /// Every key from KEYS[a] on (range_end "\0").
    FromKey(usize),
    /// Every key (key and range_end "\0").
    All,
}

impl Span {
    fn key_and_range_end(&self) -> (Vec<u8>, Vec<u8>) {
        let key = |index: usize| KEYS.get(index).copied().unwrap_or(PAST_EVERY_KEY).as_bytes().to_vec();
        match *self {
            Span::Key(a) => (key(a), Vec::new()),
            Span::Range(a, b) => (key(a), key(b)),
            Span::Prefix => (b"k/".to_vec(), b"k0".to_vec()),
            Span::FromKey(a) => (key(a), vec![0]),
            Span::All => (vec![0], vec![0]),
        }
    }

    fn contains(&self, candidate: &[u8]) -> bool {
        let (key, range_end) = self.key_and_range_end();
        match range_end.as_slice() {
            [] => candidate == key.as_slice(),
            [0] => candidate >= key.as_slice(),
            end => candidate >= key.as_slice() && candidate < end,
        }
    }
}

#[derive(Clone, Debug)]
enum Write {
    Put(usize),
    Delete(Span),
}

#[derive(Clone, Debug)]
enum Start {
    /// start_revision 0: from the next revision on.
    Now,
    /// start_revision 1 + n mod (current revision + 2): history, the next revision or one
    /// after it, below the compaction or not.
    At(u16),
    /// start_revision = the compact revision (1 before any compaction): the oldest start
    /// etcd still serves.
    AtCompaction,
}

/// Where a (physical) compaction goes, if any revision is past the last one.
#[derive(Clone, Debug)]
enum CompactAt {
    /// The newest revision: often a delete or a txn, whose events a watcher from exactly the
    /// compact revision partly loses.
    Newest,
    /// The compacted revision + 1 + n mod (revisions past it).
    Within(u16),
}

#[derive(Clone, Debug)]
struct WatchSpec {
    stream: usize,
    span: Span,
    start: Start,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
}

#[derive(Clone, Debug)]
enum Op {
    /// One Put or DeleteRange request.
    Write(Write),
    /// One Txn of these writes (those overlapping an earlier one are dropped: etcd refuses
    /// a txn that writes a key twice).
    Txn(Vec<Write>),
    Compact(CompactAt),
    Watch(WatchSpec),
    /// Cancel the n mod count-th live watcher.
    Cancel(u16),
}

fn span() -> impl Strategy<Value = Span> {
    prop_oneof![
        4 => (0..KEYS.len()).prop_map(Span::Key),
        2 => (0..KEYS.len()).prop_flat_map(|a| (Just(a), a + 1..=KEYS.len())).prop_map(|(a, b)| Span::Range(a, b)),
        1 => Just(Span::Prefix),
        1 => (0..KEYS.len()).prop_map(Span::FromKey),
        1 => Just(Span::All),
    ]
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![3 => (0..KEYS.len()).prop_map(Write::Put), 1 => span().prop_map(Write::Delete)]
}

fn watch_spec() -> impl Strategy<Value = WatchSpec> {
    let start =
        prop_oneof![2 => Just(Start::Now), 3 => any::<u16>().prop_map(Start::At), 2 => Just(Start::AtCompaction)];
    // (NOPUT, NODELETE)
    let filters = prop_oneof![
        6 => Just((false, false)),
        2 => Just((true, false)),
        2 => Just((false, true)),
        1 => Just((true, true)),
    ];
    (0..STREAMS, span(), start, any::<bool>(), filters).prop_map(
        |(stream, span, start, prev_kv, (no_put, no_delete))| WatchSpec {
            stream,
            span,
            start,
            prev_kv,
            no_put,
            no_delete,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => write().prop_map(Op::Write),
        3 => prop::collection::vec(write(), 1..6).prop_map(Op::Txn),
        1 => prop_oneof![Just(CompactAt::Newest), any::<u16>().prop_map(CompactAt::Within)].prop_map(Op::Compact),
        3 => watch_spec().prop_map(Op::Watch),
        1 => any::<u16>().prop_map(Op::Cancel),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WatcherState {
    Live,
    /// The client sent a cancel request and waits for its answer.
    CancelRequested,
    /// Canceled by the server because of a compaction.
    Compacted,
    /// Canceled at the client's request.
    Closed,
}

struct Watcher {
    spec: WatchSpec,
    id: i64,
    /// The first revision it reports (start_revision, or the next revision for 0).
    start: i64,
    /// The compact revision when it was created: a watcher from exactly that revision sees
    /// its puts without prev_kv (the revision before is gone) and not its deletes (a
    /// physical compaction drops tombstones at or below the compact revision).
    compacted_at_create: i64,
    /// Set when it starts below the compaction: etcd cancels it at once with this revision.
    must_cancel: Option<i64>,
    follower: Follower,
    state: WatcherState,
}

impl Watcher {
    fn expected(&self, model: &Model) -> Vec<mvccpb::Event> {
        let spec = &self.spec;
        let matches = |key: &[u8]| spec.span.contains(key);
        let mut events = events_for(&model.events, self.start, spec.prev_kv, matches);
        events.retain(|event| if is_delete(event) { !spec.no_delete } else { !spec.no_put });
        events.retain(|event| !(is_delete(event) && revision_of(event) <= self.compacted_at_create));
        for event in events.iter_mut().filter(|event| revision_of(event) <= self.compacted_at_create) {
            event.prev_kv = None;
        }
        events
    }

    fn describe(&self, index: usize) -> String {
        format!("watcher #{index} (id {}, first revision {}, {:?})", self.id, self.start, self.spec)
    }
}

/// What a response on a stream turned out to be.
enum Routed {
    Created(pb::WatchResponse),
    Progress,
    Watcher,
}

/// One case: the server, the model, the watchers and their streams.
struct Case {
    client: Client,
    streams: Vec<WatchStream>,
    /// Per stream: watch id -> index into `watchers`, for watchers not canceled yet.
    ids: Vec<HashMap<i64, usize>>,
    watchers: Vec<Watcher>,
    /// (stream, watch id) of watchers a compaction canceled while the client's cancel was
    /// on its way: etcd answers that cancel too (the watcher is still registered), ringd
    /// need not (it has forgotten the watcher).
    late_cancel_answers: HashSet<(usize, i64)>,
    model: Model,
    values_written: u64,
    server: Server,
}

/// The server a case runs against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Ringd,
    /// etcd 3.4 registers a new watcher with its store (v3rpc/watch.go, recvLoop:
    /// `sws.watchStream.Watch`) before it records that the watcher wants prev_kv
    /// (`sws.prevKV[id] = true`, a few lines on). A watcher starting in the past is synced
    /// by a background loop; when that loop runs in between, the watcher's first response
    /// carries its events without prev_kv. Against etcd, that response is accepted as the
    /// expected events without prev_kv; every later response, and all of ringd's, must match
    /// exactly.
    Etcd,
}

impl Case {
    async fn open(endpoint: &str, server: Server) -> Checked<Case> {
        let client = connect(endpoint, 2).await?;
        let mut streams = Vec::with_capacity(STREAMS);
        for index in 0..STREAMS {
            let opened = within(|| "opening a watch stream".to_owned(), client.channel(index).watch()).await?;
            streams.push(opened.map_err(|error| format!("opening a watch stream: {error}"))?);
        }
        // A fresh store is at revision 1 (etcd's): the first write makes revision 2.
        let model = Model::starting_at(1);
        let ids = vec![HashMap::new(); STREAMS];
        let late_cancel_answers = HashSet::new();
        Ok(Case { client, streams, ids, watchers: Vec::new(), late_cancel_answers, model, values_written: 0, server })
    }

    async fn step(&mut self, op: &Op) -> Checked<()> {
        match op {
            Op::Write(write) => self.write(std::slice::from_ref(write), false).await,
            Op::Txn(writes) => self.write(writes, true).await,
            Op::Compact(at) => self.compact(at).await,
            Op::Watch(spec) => self.watch(spec).await,
            Op::Cancel(pick) => self.cancel(*pick).await,
        }
    }

    /// After the last op: every live watcher got all it must, and nothing more arrives.
    async fn finish(&mut self) -> Checked<()> {
        self.drain().await?;
        for stream in 0..STREAMS {
            self.streams[stream]
                .send(&progress_request())
                .map_err(|error| format!("sending a progress request: {error}"))?;
            loop {
                let waiting = || format!("the answer to a progress request on stream {stream}");
                let response = next_response(&mut self.streams[stream], &waiting).await?;
                match self.route(stream, response)? {
                    Routed::Progress => break,
                    Routed::Watcher => {}
                    Routed::Created(response) => return Err(format!("an unasked-for created response: {response:?}")),
                }
            }
        }
        for (index, watcher) in self.watchers.iter().enumerate() {
            let expected = watcher.expected(&self.model);
            if watcher.state == WatcherState::Live {
                ensure!(watcher.follower.done(&expected), "{} is missing events at the end", watcher.describe(index));
            }
        }
        Ok(())
    }

    /// Applies writes (one request, or one txn of them) to the server and the model.
    async fn write(&mut self, writes: &[Write], txn: bool) -> Checked<()> {
        let writes = if txn { without_overlaps(writes) } else { writes.to_vec() };
        let mut changes = Vec::new();
        let mut operations = Vec::new();
        for write in &writes {
            operations.push(self.operation(write, &mut changes));
        }
        let revision = if txn {
            let request = pb::TxnRequest { compare: Vec::new(), success: operations, failure: Vec::new() };
            let response = within(|| format!("txn {writes:?}"), self.client.txn(&request)).await?;
            let response = response.map_err(|error| format!("txn {writes:?}: {error}"))?;
            ensure!(response.succeeded, "a txn without compares succeeds: {response:?}");
            header_revision(&response.header)
        } else {
            match operations.pop().and_then(|operation| operation.request) {
                Some(pb::request_op::Request::RequestPut(put)) => {
                    let response = within(|| format!("put {writes:?}"), self.client.put(&put)).await?;
                    header_revision(&response.map_err(|error| format!("put {writes:?}: {error}"))?.header)
                }
                Some(pb::request_op::Request::RequestDeleteRange(delete)) => {
                    let response = within(|| format!("delete {writes:?}"), self.client.delete_range(&delete)).await?;
                    let response = response.map_err(|error| format!("delete {writes:?}: {error}"))?;
                    ensure!(response.deleted == changes.len() as i64, "delete {writes:?} deleted: {response:?}");
                    header_revision(&response.header)
                }
                other => unreachable!("a single write is a put or a delete: {other:?}"),
            }
        };
        // A write that changes nothing makes no revision (etcd's txn.End).
        let expected = self.model.revision + i64::from(!changes.is_empty());
        ensure!(revision == expected, "{writes:?} answered with revision {revision}, expected {expected}");
        if !changes.is_empty() {
            self.model.apply(revision, &changes);
        }
        Ok(())
    }

    /// The request for one write, and its changes appended to `changes` (a delete's in key
    /// order, as etcd makes them).
    fn operation(&mut self, write: &Write, changes: &mut Vec<Change>) -> pb::RequestOp {
        let request = match write {
            Write::Put(index) => {
                self.values_written += 1;
                let (key, value) = (KEYS[*index].as_bytes().to_vec(), format!("v{}", self.values_written).into_bytes());
                changes.push(Change::Put(key.clone(), value.clone()));
                pb::request_op::Request::RequestPut(pb::PutRequest { key, value, ..Default::default() })
            }
            Write::Delete(span) => {
                let deleted = self.model.live.keys().filter(|key| span.contains(key));
                changes.extend(deleted.map(|key| Change::Delete(key.clone())));
                let (key, range_end) = span.key_and_range_end();
                pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest { key, range_end, prev_kv: false })
            }
        };
        pb::RequestOp { request: Some(request) }
    }

    /// A physical compaction in (compacted, newest]. Every watcher first gets all
    /// it must so far, so that none is behind the compaction because the test was slow.
    async fn compact(&mut self, at: &CompactAt) -> Checked<()> {
        let (newest, compacted) = (self.model.revision, self.model.compacted);
        if newest <= compacted {
            return Ok(());
        }
        let revision = match at {
            CompactAt::Newest => newest,
            CompactAt::Within(pick) => compacted + 1 + i64::from(*pick) % (newest - compacted),
        };
        self.drain().await?;
        let request = pb::CompactionRequest { revision, physical: true };
        let response = within(|| format!("compact at {revision}"), self.client.compact(&request)).await?;
        response.map_err(|error| format!("compact at {revision}: {error}"))?;
        self.model.compacted = revision;
        self.model.compactions.push(revision);
        Ok(())
    }

    async fn watch(&mut self, spec: &WatchSpec) -> Checked<()> {
        let start_revision = match spec.start {
            Start::Now => 0,
            Start::At(pick) => 1 + i64::from(pick) % (self.model.revision + 2),
            Start::AtCompaction => self.model.compacted.max(1),
        };
        let (key, range_end) = spec.span.key_and_range_end();
        let filters = [
            (spec.no_put, pb::watch_create_request::FilterType::Noput),
            (spec.no_delete, pb::watch_create_request::FilterType::Nodelete),
        ];
        let create = pb::WatchCreateRequest {
            key,
            range_end,
            start_revision,
            filters: filters.iter().filter(|(on, _)| *on).map(|(_, filter)| *filter as i32).collect(),
            prev_kv: spec.prev_kv,
            ..Default::default()
        };
        self.streams[spec.stream].create(create).map_err(|error| format!("creating a watcher: {error}"))?;
        let created = loop {
            let waiting = || format!("the created response of {spec:?} from {start_revision}");
            let response = next_response(&mut self.streams[spec.stream], &waiting).await?;
            match self.route(spec.stream, response)? {
                Routed::Created(response) => break response,
                Routed::Progress => {
                    return Err(format!("an unasked-for progress response while waiting for {}", waiting()))
                }
                Routed::Watcher => {}
            }
        };
        ensure!(!created.canceled && created.watch_id >= 0, "{spec:?} from {start_revision} was refused: {created:?}");
        ensure!(!self.ids[spec.stream].contains_key(&created.watch_id), "a watch id given twice: {created:?}");
        // etcd's created header carries the store's current revision: that of the last write.
        let revision = header_revision(&created.header);
        ensure!(
            revision == self.model.revision,
            "created at revision {revision}, the last write made {}: {created:?}",
            self.model.revision
        );
        let index = self.watchers.len();
        self.watchers.push(Watcher {
            spec: spec.clone(),
            id: created.watch_id,
            start: if start_revision == 0 { self.model.revision + 1 } else { start_revision },
            compacted_at_create: self.model.compacted,
            must_cancel: (start_revision != 0 && start_revision < self.model.compacted).then_some(self.model.compacted),
            follower: Follower::default(),
            state: WatcherState::Live,
        });
        self.ids[spec.stream].insert(created.watch_id, index);
        if self.watchers[index].must_cancel.is_some() {
            self.read_until(index, |watcher| watcher.state != WatcherState::Live, "its compacted cancel").await?;
        }
        Ok(())
    }

    async fn cancel(&mut self, pick: u16) -> Checked<()> {
        let live: Vec<usize> =
            (0..self.watchers.len()).filter(|&i| self.watchers[i].state == WatcherState::Live).collect();
        if live.is_empty() {
            return Ok(());
        }
        let index = live[usize::from(pick) % live.len()];
        let watcher = &mut self.watchers[index];
        let cancel = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CancelRequest(pb::WatchCancelRequest {
                watch_id: watcher.id,
            })),
        };
        self.streams[watcher.spec.stream].send(&cancel).map_err(|error| format!("sending a cancel: {error}"))?;
        watcher.state = WatcherState::CancelRequested;
        // A compaction may have canceled it first: then that is the answer.
        self.read_until(index, |watcher| watcher.state != WatcherState::CancelRequested, "its canceled response").await
    }

    /// Reads until every live watcher has received all it must so far.
    async fn drain(&mut self) -> Checked<()> {
        for index in 0..self.watchers.len() {
            let caught_up = |watcher: &Watcher, model: &Model| {
                watcher.state != WatcherState::Live || watcher.follower.done(&watcher.expected(model))
            };
            while !caught_up(&self.watchers[index], &self.model) {
                let waiting = self.waiting_for(index);
                let stream = self.watchers[index].spec.stream;
                let response = next_response(&mut self.streams[stream], &|| waiting.clone()).await?;
                self.route_event(stream, response)?;
            }
        }
        Ok(())
    }

    /// Reads watcher `index`'s stream until `done` holds for it.
    async fn read_until(&mut self, index: usize, done: impl Fn(&Watcher) -> bool, what: &str) -> Checked<()> {
        while !done(&self.watchers[index]) {
            let waiting = format!("{} of {}", what, self.watchers[index].describe(index));
            let stream = self.watchers[index].spec.stream;
            let response = next_response(&mut self.streams[stream], &|| waiting.clone()).await?;
            self.route_event(stream, response)?;
        }
        Ok(())
    }

    fn waiting_for(&self, index: usize) -> String {
        let watcher = &self.watchers[index];
        let expected = watcher.expected(&self.model);
        format!(
            "{}: it has {} of {} events; the next: {:?}",
            watcher.describe(index),
            watcher.follower.received,
            expected.len(),
            expected.get(watcher.follower.received)
        )
    }

    /// Routes a response that must belong to an existing watcher.
    fn route_event(&mut self, stream: usize, response: pb::WatchResponse) -> Checked<()> {
        match self.route(stream, response)? {
            Routed::Watcher => Ok(()),
            Routed::Created(response) => Err(format!("an unasked-for created response: {response:?}")),
            Routed::Progress => Err("an unasked-for progress response".to_owned()),
        }
    }

    /// Checks one response against the model and records it.
    fn route(&mut self, stream: usize, response: pb::WatchResponse) -> Checked<Routed> {
        if response.created {
            return Ok(Routed::Created(response));
        }
        if is_progress(&response) {
            return Ok(Routed::Progress);
        }
        let late_answer = response.canceled && response.compact_revision == 0 && response.events.is_empty();
        if late_answer && self.late_cancel_answers.remove(&(stream, response.watch_id)) {
            return Ok(Routed::Watcher);
        }
        let Some(&index) = self.ids[stream].get(&response.watch_id) else {
            return Err(format!(
                "stream {stream}: a response for watch id {} which has no watcher: {response:?}",
                response.watch_id
            ));
        };
        let expected = self.watchers[index].expected(&self.model);
        let context = self.watchers[index].describe(index);
        ensure!(!response.fragment, "{context}: a fragment, but fragment was not asked for: {response:?}");
        if response.canceled {
            ensure!(response.events.is_empty(), "{context}: events in a canceled response: {response:?}");
            let asked = self.watchers[index].state == WatcherState::CancelRequested;
            self.canceled(index, &response, &expected).map_err(|reason| format!("{context}: {reason}"))?;
            self.ids[stream].remove(&response.watch_id);
            if asked && response.compact_revision != 0 {
                self.late_cancel_answers.insert((stream, response.watch_id));
            }
            return Ok(Routed::Watcher);
        }
        let watcher = &mut self.watchers[index];
        if let Some(compacted) = watcher.must_cancel {
            return Err(format!("{context} starts below the compact revision {compacted}, yet got: {response:?}"));
        }
        let etcd_race = self.server == Server::Etcd
            && watcher.spec.prev_kv
            && watcher.follower.received == 0
            && response.events.iter().all(|event| event.prev_kv.is_none());
        let expected = if etcd_race {
            expected.into_iter().map(|event| mvccpb::Event { prev_kv: None, ..event }).collect()
        } else {
            expected
        };
        watcher.follower.accept(&response.events, &expected).map_err(|reason| format!("{context}: {reason}"))?;
        let revision = header_revision(&response.header);
        ensure!(revision >= watcher.follower.last_revision, "{context}: header revision {revision} below its events");
        Ok(Routed::Watcher)
    }

    /// A canceled response: asked for by the client, or etcd's compacted cancel. A watcher
    /// is compacted when its next revision to deliver is below the compact revision: at once
    /// if it starts there, or later if it was behind when a compaction came (the test
    /// drains every watcher before compacting, but cannot see the position of one whose
    /// remaining events all filter out, so that case is allowed for it too).
    fn canceled(&mut self, index: usize, response: &pb::WatchResponse, expected: &[mvccpb::Event]) -> Checked<()> {
        let compacted = response.compact_revision;
        let watcher = &mut self.watchers[index];
        ensure!(watcher.follower.at_revision_boundary(expected), "canceled inside a revision: {response:?}");
        if compacted == 0 {
            ensure!(watcher.state == WatcherState::CancelRequested, "canceled without being asked: {response:?}");
            watcher.state = WatcherState::Closed;
            return Ok(());
        }
        match watcher.must_cancel {
            Some(must) => ensure!(compacted == must, "compacted cancel at {compacted}, expected {must}: {response:?}"),
            None => {
                ensure!(
                    self.model.compactions.contains(&compacted),
                    "canceled with an unknown compact revision: {response:?}"
                );
                ensure!(
                    watcher.start < compacted,
                    "canceled although it starts at or after the compaction: {response:?}"
                );
                ensure!(
                    watcher.follower.last_revision <= compacted - 2,
                    "canceled by the compaction at {compacted} although it had delivered revision {}: {response:?}",
                    watcher.follower.last_revision
                );
            }
        }
        watcher.state = WatcherState::Compacted;
        Ok(())
    }
}

/// The writes of a txn that do not touch a key an earlier one touched (etcd refuses a txn
/// whose puts overlap another put or a delete; overlapping deletes are kept out too).
fn without_overlaps(writes: &[Write]) -> Vec<Write> {
    let keys_of = |write: &Write| -> Vec<usize> {
        match write {
            Write::Put(index) => vec![*index],
            Write::Delete(span) => (0..KEYS.len()).filter(|&i| span.contains(KEYS[i].as_bytes())).collect(),
        }
    };
    let mut touched = Vec::new();
    let mut kept = Vec::new();
    for write in writes {
        let keys = keys_of(write);
        if keys.iter().any(|key| touched.contains(key)) {
            continue;
        }
        touched.extend(keys);
        kept.push(write.clone());
    }
    kept
}

async fn watch_case(endpoint: String, server: Server, ops: Vec<Op>) -> Checked<()> {
    let mut case = Case::open(&endpoint, server).await?;
    for (number, op) in ops.iter().enumerate() {
        case.step(op).await.map_err(|reason| format!("op #{number} {op:?}: {reason}"))?;
    }
    case.finish().await.map_err(|reason| format!("at the end: {reason}"))
}

/// PROPTEST_CASES raises the number of cases (16 by default: each starts a server).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(16)
}

/// Shrinking a failure runs a server per attempt, and an attempt that misses an event waits
/// `WAIT`: shrinking stops after this long and reports the smallest case found so far.
const SHRINK_TIME_MS: u32 = 180_000;

/// A quarter as many against real etcd: those check the model, not ringd.
fn etcd_cases() -> u32 {
    (cases() / 4).max(2)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 300, max_shrink_time: SHRINK_TIME_MS, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn watchers_receive_exactly_the_history_they_asked_for(ops in prop::collection::vec(op(), 1..100)) {
        let ringd = Ringd::start(&[]);
        let endpoint = ringd.endpoint();
        let outcome = run(|| watch_case(endpoint, Server::Ringd, ops));
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: etcd_cases(), max_shrink_iters: 100, max_shrink_time: SHRINK_TIME_MS, failure_persistence: None, ..ProptestConfig::default() })]

    /// The same cases against a real etcd 3.4: the model and its rules are etcd's.
    #[test]
    fn the_watch_model_is_real_etcds(ops in prop::collection::vec(op(), 1..100)) {
        let etcd = Etcd::start();
        let endpoint = etcd.endpoint();
        let outcome = run(|| watch_case(endpoint, Server::Etcd, ops));
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}

// ---------------------------------------------------------------------------------------
// 2. A watcher that stops reading while 100,000 writes happen.

/// 100,000 events under "s/": 515 txns of 97 puts (97 divides no batch size the server
/// might use, so a revision split between responses would show), then single puts.
const STALL_EVENTS: usize = 100_000;
const STALL_TXNS: usize = 515;
const STALL_PUTS_PER_TXN: usize = 97;
const STALL_PUTS: usize = STALL_EVENTS - STALL_TXNS * STALL_PUTS_PER_TXN;
/// Keys the single puts cycle over, so that most of them overwrite (version, prev_kv).
const STALL_PUT_KEYS: usize = 1000;
const STALL_TXNS_IN_FLIGHT: usize = 8;
const STALL_PUTS_IN_FLIGHT: usize = 256;
const STALL_VALUE_BYTES: usize = 40;

#[test]
fn a_watcher_that_stops_reading_during_100k_writes_then_gets_every_event_once_in_order() {
    let ringd = Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    run(|| stalled_watcher(endpoint)).unwrap_or_else(|reason| panic!("{reason}"));
}

async fn stalled_watcher(endpoint: String) -> Checked<()> {
    let writer = connect(&endpoint, 2).await?;
    let watchers = connect(&endpoint, 2).await?;
    let create =
        pb::WatchCreateRequest { key: b"s/".to_vec(), range_end: b"s0".to_vec(), prev_kv: true, ..Default::default() };
    // Reads nothing until every write is done: its stream's flow-control window (1 MiB)
    // holds a small part of the 100,000 events (about 13 MB), so the server has to hold
    // the watcher back and catch it up later.
    let (mut stalled, first) = open_watch(&watchers, 0, create.clone()).await?;
    // Reads all along, on another connection: the stalled one holds back no one.
    let (mut live, live_first) = open_watch(&watchers, 1, create).await?;
    ensure!(first == live_first, "two watchers created in a row at revisions {first} and {live_first}");
    let (written, live_responses) = futures::join!(stall_writes(&writer), read_events(&mut live, STALL_EVENTS));
    let mut written = written?;
    let live_responses = live_responses?;
    written.sort_by_key(|(revision, _)| *revision);
    let revisions: Vec<i64> = written.iter().map(|(revision, _)| *revision).collect();
    let contiguous: Vec<i64> = (first + 1..=first + written.len() as i64).collect();
    ensure!(revisions == contiguous, "every write made one revision, in a row after {first}");
    let mut model = Model::starting_at(first);
    for (revision, changes) in &written {
        model.apply(*revision, changes);
    }
    assert_eq!(model.events.len(), STALL_EVENTS);

    let mut follower = Follower::default();
    for events in &live_responses {
        follower.accept(events, &model.events).map_err(|reason| format!("the reading watcher: {reason}"))?;
    }
    ensure!(follower.done(&model.events), "the reading watcher got {} events", follower.received);
    progress_barrier(&mut live, |response| Err(format!("the reading watcher got more: {response:?}"))).await?;

    let mut follower = Follower::default();
    while !follower.done(&model.events) {
        let waiting = || format!("the stalled watcher's events after {} of {STALL_EVENTS}", follower.received);
        let response = next_response(&mut stalled, &waiting).await?;
        ensure!(!response.canceled && !response.created, "the stalled watcher got {response:?}");
        follower.accept(&response.events, &model.events).map_err(|reason| format!("the stalled watcher: {reason}"))?;
    }
    progress_barrier(&mut stalled, |response| Err(format!("the stalled watcher got more: {response:?}"))).await
}

/// Opens a watch stream on connection `connection`, creates one watcher and returns the
/// stream and the created response's revision.
async fn open_watch(client: &Client, connection: usize, create: pb::WatchCreateRequest) -> Checked<(WatchStream, i64)> {
    let opened = within(|| "opening a watch stream".to_owned(), client.channel(connection).watch()).await?;
    let mut stream = opened.map_err(|error| format!("opening a watch stream: {error}"))?;
    stream.create(create).map_err(|error| format!("creating a watcher: {error}"))?;
    let created = next_response(&mut stream, &|| "a created response".to_owned()).await?;
    ensure!(created.created && !created.canceled && created.watch_id >= 0, "not created: {created:?}");
    Ok((stream, header_revision(&created.header)))
}

/// The events of the responses of one watcher, until `count` of them arrived.
async fn read_events(stream: &mut WatchStream, count: usize) -> Checked<Vec<Vec<mvccpb::Event>>> {
    let mut responses = Vec::new();
    let mut received = 0;
    while received < count {
        let waiting = || format!("the reading watcher's events after {received} of {count}");
        let response = next_response(stream, &waiting).await?;
        ensure!(!response.canceled && !response.created, "the reading watcher got {response:?}");
        received += response.events.len();
        responses.push(response.events);
    }
    Ok(responses)
}

/// The 100,000 writes, several in flight at a time; each with its revision.
async fn stall_writes(writer: &Client) -> Checked<Vec<(i64, Vec<Change>)>> {
    let value = |text: String| format!("{text:-<STALL_VALUE_BYTES$}").into_bytes();
    let txns = futures::stream::iter(0..STALL_TXNS).map(|round| async move {
        let changes: Vec<Change> = (0..STALL_PUTS_PER_TXN)
            .map(|index| Change::Put(format!("s/t/{index:03}").into_bytes(), value(format!("t{round}/{index}"))))
            .collect();
        let request = pb::TxnRequest { compare: Vec::new(), success: put_operations(&changes), failure: Vec::new() };
        let response = within(|| format!("txn #{round}"), writer.txn(&request)).await?;
        let response = response.map_err(|error| format!("txn #{round} while a watcher is stalled: {error}"))?;
        ensure!(response.succeeded, "txn #{round} without compares failed: {response:?}");
        Ok((header_revision(&response.header), changes))
    });
    let mut written: Vec<Checked<(i64, Vec<Change>)>> = txns.buffer_unordered(STALL_TXNS_IN_FLIGHT).collect().await;
    let puts = futures::stream::iter(0..STALL_PUTS).map(|number| async move {
        let (key, value) = (format!("s/p/{:03}", number % STALL_PUT_KEYS).into_bytes(), value(format!("p{number}")));
        let request = pb::PutRequest { key: key.clone(), value: value.clone(), ..Default::default() };
        let response = within(|| format!("put #{number}"), writer.put(&request)).await?;
        let response = response.map_err(|error| format!("put #{number} while a watcher is stalled: {error}"))?;
        Ok((header_revision(&response.header), vec![Change::Put(key, value)]))
    });
    written.extend(puts.buffer_unordered(STALL_PUTS_IN_FLIGHT).collect::<Vec<_>>().await);
    written.into_iter().collect()
}

fn put_operations(changes: &[Change]) -> Vec<pb::RequestOp> {
    let put = |change: &Change| match change {
        Change::Put(key, value) => pb::PutRequest { key: key.clone(), value: value.clone(), ..Default::default() },
        Change::Delete(_) => unreachable!("puts only"),
    };
    changes
        .iter()
        .map(|change| pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put(change))) })
        .collect()
}

// ---------------------------------------------------------------------------------------
// 3. 10,000 watchers on one key and 10,000 on one prefix.

const FAN_STREAMS_PER_GROUP: usize = 10;
const FAN_WATCHERS_PER_STREAM: usize = 1000;
const FAN_CONNECTIONS: usize = 5;
const FAN_WRITES: usize = 20;
/// The write (by number) that deletes the hot key.
const FAN_DELETE_AT: usize = 13;
const FAN_KEY: &[u8] = b"fan/hot";
const FAN_PREFIX: &[u8] = b"fan/";
const FAN_PREFIX_END: &[u8] = b"fan0";

/// One stream of the fan-out test and its watchers (by watch id).
struct FanStream {
    stream: WatchStream,
    on_prefix: bool,
    prev_kv: bool,
    followers: HashMap<i64, Follower>,
}

#[test]
fn ten_thousand_watchers_on_a_key_and_ten_thousand_on_a_prefix_each_get_every_event() {
    let ringd = Ringd::start(&[]);
    let endpoint = ringd.endpoint();
    run(|| fan_out(endpoint)).unwrap_or_else(|reason| panic!("{reason}"));
}

async fn fan_out(endpoint: String) -> Checked<()> {
    let watchers = connect(&endpoint, FAN_CONNECTIONS).await?;
    let writer = connect(&endpoint, 1).await?;
    let mut streams = Vec::with_capacity(2 * FAN_STREAMS_PER_GROUP);
    for index in 0..2 * FAN_STREAMS_PER_GROUP {
        let opened = within(|| "opening a watch stream".to_owned(), watchers.channel(index).watch()).await?;
        let mut stream = opened.map_err(|error| format!("opening a watch stream: {error}"))?;
        let (on_prefix, prev_kv) = (index >= FAN_STREAMS_PER_GROUP, index % 2 == 1);
        let range_end = if on_prefix { FAN_PREFIX_END.to_vec() } else { Vec::new() };
        let key = if on_prefix { FAN_PREFIX.to_vec() } else { FAN_KEY.to_vec() };
        let create = pb::WatchCreateRequest { key, range_end, prev_kv, ..Default::default() };
        for _ in 0..FAN_WATCHERS_PER_STREAM {
            stream.create(create.clone()).map_err(|error| format!("creating a watcher: {error}"))?;
        }
        streams.push(FanStream { stream, on_prefix, prev_kv, followers: HashMap::new() });
    }
    let start = fan_created(&mut streams).await?;
    // The writes go one after the other from `start` with no other writer, so their
    // revisions are known in advance (and checked): the watchers are read while they happen,
    // as a client reads its watch streams.
    let changes = fan_changes();
    let mut model = Model::starting_at(start);
    for (number, change) in changes.iter().enumerate() {
        model.apply(start + 1 + number as i64, std::slice::from_ref(change));
    }
    let expected = |on_prefix: bool, prev_kv: bool| {
        let matches = |key: &[u8]| if on_prefix { key.starts_with(FAN_PREFIX) } else { key == FAN_KEY };
        events_for(&model.events, start + 1, prev_kv, matches)
    };
    let expected = [[expected(false, false), expected(false, true)], [expected(true, false), expected(true, true)]];
    assert_eq!(expected[1][0].len(), FAN_WRITES);
    let reads = streams.iter_mut().enumerate().map(|(index, fan)| {
        let expected = &expected[usize::from(fan.on_prefix)][usize::from(fan.prev_kv)];
        fan_follow(index, fan, expected)
    });
    let (written, read) = futures::join!(fan_writes(&writer, start, &changes), futures::future::join_all(reads));
    written?;
    read.into_iter().collect()
}

/// The writes: the even ones put the hot key, the odd ones other keys under the prefix, one
/// deletes the hot key.
fn fan_changes() -> Vec<Change> {
    let change = |number: usize| {
        let value = format!("value {number}").into_bytes();
        match number {
            FAN_DELETE_AT => Change::Delete(FAN_KEY.to_vec()),
            even if even % 2 == 0 => Change::Put(FAN_KEY.to_vec(), value),
            odd => Change::Put(format!("fan/k{odd}").into_bytes(), value),
        }
    };
    (0..FAN_WRITES).map(change).collect()
}

/// Reads every stream's created responses; returns their revision (the same for all).
async fn fan_created(streams: &mut [FanStream]) -> Checked<i64> {
    let mut start = None;
    for (index, fan) in streams.iter_mut().enumerate() {
        while fan.followers.len() < FAN_WATCHERS_PER_STREAM {
            let waiting = || format!("stream {index}: created response #{}", fan.followers.len());
            let created = next_response(&mut fan.stream, &waiting).await?;
            ensure!(created.created && !created.canceled && created.watch_id >= 0, "not created: {created:?}");
            ensure!(fan.followers.insert(created.watch_id, Follower::default()).is_none(), "id twice: {created:?}");
            let revision = header_revision(&created.header);
            ensure!(
                *start.get_or_insert(revision) == revision,
                "created at {revision} and at {start:?} without writes"
            );
        }
    }
    Ok(start.expect("at least one watcher"))
}

/// Makes the writes one after the other; each must make the next revision after `start`.
async fn fan_writes(client: &Client, start: i64, changes: &[Change]) -> Checked<()> {
    for (number, change) in changes.iter().enumerate() {
        let revision = match change {
            Change::Put(key, value) => {
                let request = pb::PutRequest { key: key.clone(), value: value.clone(), ..Default::default() };
                let response = within(|| format!("write #{number}"), client.put(&request)).await?;
                header_revision(&response.map_err(|error| format!("write #{number}: {error}"))?.header)
            }
            Change::Delete(key) => {
                let request = pb::DeleteRangeRequest { key: key.clone(), ..Default::default() };
                let response = within(|| format!("write #{number}"), client.delete_range(&request)).await?;
                let response = response.map_err(|error| format!("write #{number}: {error}"))?;
                ensure!(response.deleted == 1, "write #{number} deleted {}", response.deleted);
                header_revision(&response.header)
            }
        };
        let expected = start + 1 + number as i64;
        ensure!(revision == expected, "write #{number} made revision {revision}, expected {expected}");
    }
    Ok(())
}

/// Reads one stream until each of its watchers has every expected event, then checks that
/// nothing more comes.
async fn fan_follow(index: usize, fan: &mut FanStream, expected: &[mvccpb::Event]) -> Checked<()> {
    let FanStream { stream, followers, on_prefix, .. } = fan;
    let context = format!("stream {index} ({})", if *on_prefix { "prefix" } else { "key" });
    while followers.values().any(|follower| !follower.done(expected)) {
        let waiting = || {
            let done = followers.values().filter(|follower| follower.done(expected)).count();
            format!("{context}: {done} of {} watchers have all {} events", followers.len(), expected.len())
        };
        let response = next_response(stream, &waiting).await?;
        ensure!(!response.canceled && !response.created, "{context}: {response:?}");
        let Some(follower) = followers.get_mut(&response.watch_id) else {
            return Err(format!("{context}: a response for watch id {} which has no watcher", response.watch_id));
        };
        follower
            .accept(&response.events, expected)
            .map_err(|reason| format!("{context}, watcher {}: {reason}", response.watch_id))?;
    }
    progress_barrier(stream, |response| Err(format!("{context}: a response after all events: {response:?}"))).await
}
