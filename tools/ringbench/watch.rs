//! `ringbench watch` (etcd's): two phases, two reports.
//!
//! 1. Creation: --streams watch streams (stream s on client s mod --clients, client c on
//!    connection c mod --conns) each create --watch-per-stream watchers, one after the
//!    other as etcd's client does (the next create goes out when the previous one is
//!    confirmed). Watcher i watches key i mod --watched-key-total; each creation is timed
//!    from its request to the server's `created` reply. Printed as "Watch creation summary:".
//! 2. Delivery: --clients loops put --put-total times (put i to key i mod
//!    --watched-key-total, at --put-rate, 0 = no limit); every put reaches each watcher of
//!    its key, and each event is timed from its put's issue to its arrival. Printed as
//!    "Watch events received summary:".
//!
//! Differences from etcd 3.4, on purpose: etcd 3.4 timed an event from the moment its
//! reply had already arrived (so it measured nothing) and put the value "data"; we put
//! the put's sequence number (8 bytes, big-endian) and time from that put's issue, as
//! etcd's current benchmark does. Its --put-rate=0 stalled after one put (a Go limiter of
//! rate 0); here it means no limit. A lost event does not hang the run: what has not
//! arrived EVENT_WAIT_AFTER_PUTS after the last put counts as an error. Runs on one
//! executor (--client-cores does not apply).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringd::api::pb::etcdserverpb as pb;
use ringd::client::{Channel, Endpoint, WatchStream};

use crate::bench::{block_on, connect_channels, target_endpoints, within, Run};
use crate::cli::{Cli, WatchArgs};
use crate::load::{unix_second, Limiter, LocalProgress};
use crate::report::{process_cpu, ClientCpu, Recorder, Stats};
use crate::workload::{varint_key, Random};

/// How long a creation may wait for its `created` reply before it counts as failed.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the last put (or the last event, if later) missing events are awaited.
const EVENT_WAIT_AFTER_PUTS: Duration = Duration::from_secs(10);
const POLL_PERIOD: Duration = Duration::from_millis(5);
/// etcd's warning: grpc-go clients open at most 100 streams per connection.
const STREAMS_PER_CONNECTION_MAX: usize = 100;
const SEQUENCE_BYTES: usize = 8;

#[derive(Clone)]
struct Settings {
    args: WatchArgs,
    connections: usize,
    clients: usize,
    dial_timeout: Duration,
    sample: bool,
}

/// What a phase measured, ready for a report.
struct Phase {
    recorder: Recorder,
    wall: Duration,
}

pub fn run(cli: &Cli, args: &WatchArgs) -> Result<Vec<Run>, String> {
    let endpoints = target_endpoints(cli)?;
    let connections_usable = cli.global.clients.min(cli.global.conns);
    let connections_wanted = 1 + args.streams / STREAMS_PER_CONNECTION_MAX;
    if connections_usable < connections_wanted {
        eprintln!(
            "warning: grpc limits 100 streams per client connection, have {connections_usable} but need {connections_wanted}"
        );
    }
    let settings = Settings {
        args: args.clone(),
        connections: cli.global.conns,
        clients: cli.global.clients,
        dial_timeout: cli.global.dial_timeout,
        sample: cli.global.sample,
    };
    let cpu_before = process_cpu();
    let started = Instant::now();
    let (creation, delivery) = block_on(move || async move { run_phases(settings, endpoints).await })??;
    let operations = creation.recorder.count + delivery.recorder.count;
    let cpu = ClientCpu::between(cpu_before, process_cpu(), operations, started.elapsed());
    let runs = [("watch-create", creation), ("watch-events", delivery)]
        .into_iter()
        .map(|(name, phase)| {
            let stats = Stats::compute(&phase.recorder, phase.wall);
            Run { name: name.into(), recorder: phase.recorder, stats, cpu }
        })
        .collect();
    Ok(runs)
}

async fn run_phases(settings: Settings, endpoints: Vec<Endpoint>) -> Result<(Phase, Phase), String> {
    let channels = connect_channels(&endpoints, settings.connections, settings.dial_timeout).await?;
    // Client c uses connection c mod conns (etcd's mustCreateClients).
    let clients: Vec<Channel> = (0..settings.clients).map(|c| channels[c % channels.len()].clone()).collect();
    let keys = Rc::new(watched_keys(&settings.args));
    let (creation, streams, watchers_per_key) = create_watchers(&settings, &clients, &keys).await;
    let events_expected: usize = (0..settings.args.put_total)
        .map(|put| watchers_per_key.get(&keys[put % keys.len()]).copied().unwrap_or(0))
        .sum();
    let delivery = put_and_receive(&settings, &clients, keys, streams, events_expected).await?;
    Ok((creation, delivery))
}

/// etcd's newWatchedKeys: --watched-key-total keys, each the varint of a key index (random
/// in --key-space-size, or sequential) in --key-size bytes.
fn watched_keys(args: &WatchArgs) -> Vec<Vec<u8>> {
    let mut random = Random::new(std::process::id() as u64 ^ unix_second() as u64);
    (0..args.watched_key_total)
        .map(|index| {
            let key_index =
                if args.sequential_keys { index % args.key_space_size } else { random.below(args.key_space_size) };
            varint_key(key_index as i64, args.key_size)
        })
        .collect()
}

/// Shared by the creating tasks of phase 1.
struct Creation {
    keys: Rc<Vec<Vec<u8>>>,
    next_watcher: Cell<usize>,
    recorder: RefCell<Recorder>,
    watchers_per_key: RefCell<HashMap<Vec<u8>, usize>>,
    progress: LocalProgress,
}

async fn create_watchers(
    settings: &Settings,
    clients: &[Channel],
    keys: &Rc<Vec<Vec<u8>>>,
) -> (Phase, Vec<WatchStream>, HashMap<Vec<u8>, usize>) {
    let args = &settings.args;
    let creation = Rc::new(Creation {
        keys: keys.clone(),
        next_watcher: Cell::new(0),
        recorder: RefCell::new(Recorder::new(settings.sample)),
        watchers_per_key: RefCell::new(HashMap::new()),
        progress: LocalProgress::new(args.streams * args.watch_per_stream),
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.streams)
        .map(|stream| {
            let channel = clients[stream % clients.len()].clone();
            glommio::spawn_local(create_on_stream(channel, args.watch_per_stream, creation.clone()))
        })
        .collect();
    let mut streams = Vec::new();
    for task in tasks {
        streams.extend(task.await);
    }
    let wall = started.elapsed();
    creation.progress.finish();
    let recorder = creation.recorder.borrow().clone();
    assert_eq!(recorder.count + recorder.error_count(), (args.streams * args.watch_per_stream) as u64);
    (Phase { recorder, wall }, streams, creation.watchers_per_key.take())
}

/// How one creation ended: the watcher exists, the server refused it, or the stream broke
/// (and no later creation on it can succeed).
enum Created {
    Yes,
    Refused(String),
    StreamBroken(String),
}

/// Creates `count` watchers one after the other on a new stream; the stream, if it lived.
async fn create_on_stream(channel: Channel, count: usize, creation: Rc<Creation>) -> Option<WatchStream> {
    let mut stream = match channel.watch().await {
        Ok(stream) => Some(stream),
        Err(error) => {
            record_failures(&creation, count, &error.to_string());
            None
        }
    };
    for created_before in 0..count {
        let Some(live) = stream.as_mut() else { break };
        let index = creation.next_watcher.get();
        creation.next_watcher.set(index + 1);
        let key = creation.keys[index % creation.keys.len()].clone();
        let start_second = unix_second();
        let start = Instant::now();
        let outcome = create_one(live, &key).await;
        let took = start.elapsed();
        match outcome {
            Created::Yes => {
                creation.recorder.borrow_mut().record(took, start_second);
                *creation.watchers_per_key.borrow_mut().entry(key).or_insert(0) += 1;
                creation.progress.add(1);
            }
            Created::Refused(error) => {
                creation.recorder.borrow_mut().record_error(error);
                creation.progress.add(1);
            }
            Created::StreamBroken(error) => {
                record_failures(&creation, count - created_before, &error);
                stream = None;
            }
        }
    }
    stream
}

fn record_failures(creation: &Creation, count: usize, error: &str) {
    let mut recorder = creation.recorder.borrow_mut();
    for _ in 0..count {
        recorder.record_error(error.to_owned());
    }
    drop(recorder);
    creation.progress.add(count);
}

async fn create_one(stream: &mut WatchStream, key: &[u8]) -> Created {
    if let Err(error) = stream.create(pb::WatchCreateRequest { key: key.to_vec(), ..Default::default() }) {
        return Created::StreamBroken(error.to_string());
    }
    let confirmed = within(CREATE_TIMEOUT, async {
        loop {
            match stream.next().await {
                Ok(Some(reply)) if reply.canceled => {
                    return Created::Refused(format!("watch canceled by the server: {}", reply.cancel_reason))
                }
                Ok(Some(reply)) if reply.created => return Created::Yes,
                Ok(Some(_)) => {}
                Ok(None) => return Created::StreamBroken("watch stream ended by the server".into()),
                Err(error) => return Created::StreamBroken(error.to_string()),
            }
        }
    })
    .await;
    confirmed.unwrap_or_else(|| Created::StreamBroken(format!("no created reply within {CREATE_TIMEOUT:?}")))
}

/// Shared by the put loops and the stream readers of phase 2.
struct Delivery {
    keys: Rc<Vec<Vec<u8>>>,
    put_total: usize,
    next_put: Cell<usize>,
    puts_done: Cell<usize>,
    put_failure: RefCell<Option<String>>,
    /// When put i was issued (before it was sent: its event may beat its reply).
    issued: RefCell<Vec<Option<Instant>>>,
    events_expected: usize,
    events_received: Cell<usize>,
    unattributed: Cell<usize>,
    last_progress: Cell<Instant>,
    last_event: Cell<Option<Instant>>,
    recorder: RefCell<Recorder>,
    limiter: Limiter,
    progress: LocalProgress,
}

async fn put_and_receive(
    settings: &Settings,
    clients: &[Channel],
    keys: Rc<Vec<Vec<u8>>>,
    streams: Vec<WatchStream>,
    events_expected: usize,
) -> Result<Phase, String> {
    let put_total = settings.args.put_total;
    let delivery = Rc::new(Delivery {
        keys,
        put_total,
        next_put: Cell::new(0),
        puts_done: Cell::new(0),
        put_failure: RefCell::new(None),
        issued: RefCell::new(vec![None; put_total]),
        events_expected,
        events_received: Cell::new(0),
        unattributed: Cell::new(0),
        last_progress: Cell::new(Instant::now()),
        last_event: Cell::new(None),
        recorder: RefCell::new(Recorder::new(settings.sample)),
        limiter: Limiter::new(settings.args.put_rate, 1),
        progress: LocalProgress::new(events_expected),
    });
    for stream in streams {
        glommio::spawn_local(receive_events(stream, delivery.clone())).detach();
    }
    let started = Instant::now();
    let puts: Vec<_> =
        clients.iter().map(|channel| glommio::spawn_local(put_loop(channel.clone(), delivery.clone()))).collect();
    let outcome = wait_for_events(&delivery).await;
    for put in puts {
        put.await;
    }
    delivery.progress.finish();
    outcome?;
    if delivery.unattributed.get() > 0 {
        eprintln!(
            "warning: {} watch events could not be attributed to a put and are excluded from the summary",
            delivery.unattributed.get()
        );
    }
    let wall = delivery.last_event.get().unwrap_or_else(Instant::now).saturating_duration_since(started);
    let recorder = delivery.recorder.borrow().clone();
    Ok(Phase { recorder, wall })
}

async fn put_loop(channel: Channel, delivery: Rc<Delivery>) {
    loop {
        let index = delivery.next_put.get();
        if index >= delivery.put_total || delivery.put_failure.borrow().is_some() {
            return;
        }
        delivery.next_put.set(index + 1);
        delivery.limiter.wait().await;
        let key = delivery.keys[index % delivery.keys.len()].clone();
        let value = (index as u64).to_be_bytes().to_vec();
        delivery.issued.borrow_mut()[index] = Some(Instant::now());
        if let Err(error) = channel.put(&pb::PutRequest { key, value, ..Default::default() }).await {
            delivery.put_failure.borrow_mut().get_or_insert(format!("Failed to put for watch benchmark: {error}"));
        }
        delivery.puts_done.set(delivery.puts_done.get() + 1);
        delivery.last_progress.set(Instant::now());
    }
}

/// Until every expected event has arrived and every put is done; a failed put ends the
/// run, missing events count as errors once EVENT_WAIT_AFTER_PUTS passes without progress.
async fn wait_for_events(delivery: &Delivery) -> Result<(), String> {
    loop {
        if let Some(failure) = delivery.put_failure.borrow().clone() {
            return Err(failure);
        }
        let puts_done = delivery.puts_done.get() == delivery.put_total;
        let missing = delivery.events_expected.saturating_sub(delivery.events_received.get());
        if puts_done && missing == 0 {
            return Ok(());
        }
        if puts_done && delivery.last_progress.get().elapsed() >= EVENT_WAIT_AFTER_PUTS {
            let error = format!("watch event not received within {EVENT_WAIT_AFTER_PUTS:?} after the last put");
            let mut recorder = delivery.recorder.borrow_mut();
            for _ in 0..missing {
                recorder.record_error(error.clone());
            }
            return Ok(());
        }
        glommio::timer::sleep(POLL_PERIOD).await;
    }
}

/// Times every event of one stream against its put's issue, until all expected events
/// have arrived (over all streams) or the stream ends; a broken stream counts one error.
async fn receive_events(mut stream: WatchStream, delivery: Rc<Delivery>) {
    while delivery.events_received.get() < delivery.events_expected {
        let reply = match stream.next().await {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                delivery.recorder.borrow_mut().record_error("watch stream ended by the server".into());
                return;
            }
            Err(error) => {
                delivery.recorder.borrow_mut().record_error(error.to_string());
                return;
            }
        };
        let arrived = Instant::now();
        for event in &reply.events {
            let issued = event.kv.as_ref().and_then(|kv| issue_time(&delivery, &kv.value));
            match issued {
                Some(issued) => {
                    delivery.recorder.borrow_mut().record(arrived.saturating_duration_since(issued), unix_second())
                }
                None => delivery.unattributed.set(delivery.unattributed.get() + 1),
            }
        }
        if !reply.events.is_empty() {
            delivery.events_received.set(delivery.events_received.get() + reply.events.len());
            delivery.last_event.set(Some(arrived));
            delivery.last_progress.set(arrived);
            delivery.progress.add(reply.events.len());
        }
    }
}

/// When the put whose sequence number `value` carries was issued, if it is one of ours.
fn issue_time(delivery: &Delivery, value: &[u8]) -> Option<Instant> {
    let sequence: [u8; SEQUENCE_BYTES] = value.try_into().ok()?;
    let index = u64::from_be_bytes(sequence) as usize;
    delivery.issued.borrow().get(index).copied().flatten()
}
