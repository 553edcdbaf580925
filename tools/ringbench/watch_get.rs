//! `ringbench watch-get` (etcd's): how serializable gets fare while many unsynced watchers
//! catch up. --events puts to "watchkey" first (values "0", "1", ...); then --watchers
//! watchers of "watchkey" from the first of those revisions, over --streams streams (stream
//! s on client s mod --clients, client c on connection c mod --conns), created one after
//! the other on each stream as etcd's client does. From the first creation until every
//! watcher has seen --events events, one loop on a connection of its own gets "abc"
//! (serializable) again and again; each get is timed. Printed as "Get during watch
//! summary:".
//!
//! Differences from etcd: the get in flight when the watchers finish is completed and
//! counted (etcd cancels it), so the report is never empty; a watch stream that stalls for
//! REPLY_TIMEOUT or is canceled by the server ends the run with an error instead of hanging.
//! Runs on one executor (--client-cores does not apply).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringd::api::pb::etcdserverpb as pb;
use ringd::client::{encode, path, Channel};

use crate::bench::{block_on, connect_channels, target_endpoints, within, Run};
use crate::cli::{Cli, WatchGetArgs};
use crate::load::{unix_second, LocalProgress};
use crate::report::{process_cpu, ClientCpu, Recorder, Stats};

/// How long a stream may go without a reply while its watchers still wait for events.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const WATCHED_KEY: &[u8] = b"watchkey";
const READ_KEY: &[u8] = b"abc";

pub fn run(cli: &Cli, args: &WatchGetArgs) -> Result<Run, String> {
    let endpoints = target_endpoints(cli)?;
    let (connections, clients, dial_timeout, sample) =
        (cli.global.conns, cli.global.clients, cli.global.dial_timeout, cli.global.sample);
    let args = args.clone();
    let cpu_before = process_cpu();
    let started = Instant::now();
    let (recorder, wall) = block_on(move || async move {
        let channels = connect_channels(&endpoints, connections, dial_timeout).await?;
        let get_channel = Channel::connect(&endpoints[connections % endpoints.len()], dial_timeout)
            .await
            .map_err(|error| format!("dial error: {error}"))?;
        let revision = put_history(&channels[0], args.events).await?;
        let clients: Vec<Channel> = (0..clients).map(|c| channels[c % channels.len()].clone()).collect();
        watch_while_getting(&args, &clients, get_channel, revision, sample).await
    })??;
    let cpu = ClientCpu::between(cpu_before, process_cpu(), recorder.count + recorder.error_count(), started.elapsed());
    let stats = Stats::compute(&recorder, wall);
    Ok(Run { name: "watch-get".into(), recorder, stats, cpu })
}

/// Puts "0" .. "events-1" to the watched key; the revision of the first put.
async fn put_history(channel: &Channel, events: usize) -> Result<i64, String> {
    assert!(events > 0);
    let mut first_revision = None;
    for index in 0..events {
        let request =
            pb::PutRequest { key: WATCHED_KEY.to_vec(), value: index.to_string().into_bytes(), ..Default::default() };
        let reply = channel.put(&request).await.map_err(|error| format!("put {WATCHED_KEY:?}: {error}"))?;
        let revision = reply.header.map_or(0, |header| header.revision);
        first_revision.get_or_insert(revision);
    }
    let revision = first_revision.expect("at least one put");
    assert!(revision > 0, "a put's reply carries its revision");
    Ok(revision)
}

/// The gets' side: timed until `stop` is set.
struct Gets {
    stop: Cell<bool>,
    recorder: RefCell<Recorder>,
    first_start: Cell<Option<Instant>>,
    last_end: Cell<Option<Instant>>,
}

async fn watch_while_getting(
    args: &WatchGetArgs,
    clients: &[Channel],
    get_channel: Channel,
    revision: i64,
    sample: bool,
) -> Result<(Recorder, Duration), String> {
    let gets = Rc::new(Gets {
        stop: Cell::new(false),
        recorder: RefCell::new(Recorder::new(sample)),
        first_start: Cell::new(None),
        last_end: Cell::new(None),
    });
    let progress = Rc::new(LocalProgress::new(args.watchers * args.events));
    let getting = glommio::spawn_local(get_loop(get_channel, gets.clone()));
    let streams: Vec<_> = (0..args.streams)
        .map(|stream| {
            let watchers = (stream..args.watchers).step_by(args.streams).count();
            let channel = clients[stream % clients.len()].clone();
            glommio::spawn_local(catch_up_on_stream(channel, watchers, revision, args.events, progress.clone()))
        })
        .collect();
    let mut failure = None;
    for stream in streams {
        if let Err(error) = stream.await {
            failure.get_or_insert(error);
        }
    }
    gets.stop.set(true);
    getting.await;
    progress.finish();
    if let Some(failure) = failure {
        return Err(failure);
    }
    let wall = match (gets.first_start.get(), gets.last_end.get()) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    let recorder = gets.recorder.borrow().clone();
    assert!(recorder.count + recorder.error_count() > 0, "the get loop completes its first get");
    Ok((recorder, wall))
}

async fn get_loop(channel: Channel, gets: Rc<Gets>) {
    let request = encode(&pb::RangeRequest { key: READ_KEY.to_vec(), serializable: true, ..Default::default() });
    loop {
        let start_second = unix_second();
        let start = Instant::now();
        let result = channel.unary_bytes(path::RANGE, request.clone()).await;
        let end = Instant::now();
        gets.first_start.set(Some(gets.first_start.get().unwrap_or(start)));
        gets.last_end.set(Some(end));
        match result {
            Ok(_) => gets.recorder.borrow_mut().record(end - start, start_second),
            Err(error) => gets.recorder.borrow_mut().record_error(error.to_string()),
        }
        if gets.stop.get() {
            return;
        }
    }
}

/// Creates `watchers` watchers of the watched key from `revision` on a new stream, each
/// after the previous is confirmed, and reads until each has seen `events` events.
async fn catch_up_on_stream(
    channel: Channel,
    watchers: usize,
    revision: i64,
    events: usize,
    progress: Rc<LocalProgress>,
) -> Result<(), String> {
    if watchers == 0 {
        return Ok(());
    }
    let mut stream = channel.watch().await.map_err(|error| format!("open a watch stream: {error}"))?;
    let create = pb::WatchCreateRequest { key: WATCHED_KEY.to_vec(), start_revision: revision, ..Default::default() };
    stream.create(create.clone()).map_err(|error| error.to_string())?;
    let (mut created, mut caught_up) = (0usize, 0usize);
    let mut seen: HashMap<i64, usize> = HashMap::with_capacity(watchers);
    while caught_up < watchers {
        let reply = within(REPLY_TIMEOUT, stream.next())
            .await
            .ok_or_else(|| {
                format!("no watch reply within {REPLY_TIMEOUT:?}: {caught_up} of {watchers} watchers caught up")
            })?
            .map_err(|error| error.to_string())?
            .ok_or("watch stream ended by the server")?;
        if reply.canceled {
            return Err(format!("watch {} canceled by the server: {}", reply.watch_id, reply.cancel_reason));
        }
        if reply.created {
            created += 1;
            seen.insert(reply.watch_id, 0);
            if created < watchers {
                stream.create(create.clone()).map_err(|error| error.to_string())?;
            }
        }
        if reply.events.is_empty() {
            continue;
        }
        let count = seen.entry(reply.watch_id).or_insert(0);
        let before = *count;
        *count += reply.events.len();
        progress.add((*count).min(events) - before.min(events));
        if before < events && *count >= events {
            caught_up += 1;
        }
    }
    assert_eq!(created, watchers);
    Ok(())
}
