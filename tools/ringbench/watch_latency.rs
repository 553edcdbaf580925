//! `ringbench watch-latency` (etcd's): --clients watchers of one random key, spread over
//! --conns watch streams; puts at --put-rate from a connection of their own; each event is
//! timed from the put's reply to its arrival on each watcher (an event that arrives before
//! the reply counts as zero, as etcd's goroutines would see it at once).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;
use ringd::api::pb::etcdserverpb as pb;
use ringd::client::{Channel, Error, WatchStream};

use crate::bench::{block_on, target_endpoints, Run};
use crate::cli::{Cli, WatchLatencyArgs};
use crate::report::{process_cpu, ClientCpu, Recorder, Stats};
use crate::workload::Random;

const PROGRESS_PERIOD: Duration = Duration::from_millis(200);

pub fn run(cli: &Cli, args: &WatchLatencyArgs) -> Result<Run, String> {
    if args.put_rate == 0 || args.key_size == 0 {
        return Err("--put-rate and --key-size must be at least 1".into());
    }
    let endpoints = target_endpoints(cli)?;
    let (connections, watchers, dial_timeout, sample) =
        (cli.global.conns, cli.global.clients, cli.global.dial_timeout, cli.global.sample);
    let args = args.clone();
    let cpu_before = process_cpu();
    let (recorder, wall) = block_on(move || async move {
        let mut random = Random::new(std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64);
        let (key, value) = (random.bytes(args.key_size), random.bytes(args.val_size));
        let endpoint = &endpoints[0];
        let put_channel = Channel::connect(endpoint, dial_timeout).await.map_err(|e| format!("dial error: {e}"))?;
        let events =
            open_watchers(&endpoints, connections, watchers, dial_timeout, &key).await.map_err(|e| e.to_string())?;
        put_and_time(&put_channel, events, &args, watchers, &key, &value, sample).await
    })??;
    let cpu = ClientCpu::between(cpu_before, process_cpu(), recorder.count, wall);
    let stats = Stats::compute(&recorder, wall);
    Ok(Run { name: "watch-latency".into(), recorder, stats, cpu })
}

/// Opens the streams, creates the watchers (watcher i on stream i mod conns), waits for
/// every `created`, and starts one reader per stream that reports each event's arrival.
async fn open_watchers(
    endpoints: &[ringd::client::Endpoint],
    connections: usize,
    watchers: usize,
    dial_timeout: Duration,
    key: &[u8],
) -> Result<mpsc::UnboundedReceiver<Instant>, Error> {
    let (arrivals, events) = mpsc::unbounded();
    for connection in 0..connections.min(watchers) {
        let channel = Channel::connect(&endpoints[connection % endpoints.len()], dial_timeout).await?;
        let mut stream = channel.watch().await?;
        let on_this_stream = (connection..watchers).step_by(connections).count();
        for _ in 0..on_this_stream {
            stream.create(pb::WatchCreateRequest { key: key.to_vec(), ..Default::default() })?;
        }
        let mut created = 0;
        while created < on_this_stream {
            match stream.next().await? {
                Some(reply) if reply.created => created += 1,
                Some(_) => {}
                None => return Err(Error::unavailable("watch stream ended before its watchers were created")),
            }
        }
        let arrivals = arrivals.clone();
        glommio::spawn_local(async move { read_events(stream, channel, arrivals).await }).detach();
    }
    Ok(events)
}

/// Reports the arrival time of every reply that carries events, until the stream ends.
async fn read_events(mut stream: WatchStream, _channel: Channel, arrivals: mpsc::UnboundedSender<Instant>) {
    while let Ok(Some(reply)) = stream.next().await {
        if !reply.events.is_empty() && arrivals.unbounded_send(Instant::now()).is_err() {
            return;
        }
    }
}

async fn put_and_time(
    put_channel: &Channel,
    mut events: mpsc::UnboundedReceiver<Instant>,
    args: &WatchLatencyArgs,
    watchers: usize,
    key: &[u8],
    value: &[u8],
    sample: bool,
) -> Result<(Recorder, Duration), String> {
    let recorder = Rc::new(RefCell::new(Recorder::new(sample)));
    let interval = Duration::from_secs_f64(1.0 / args.put_rate as f64);
    let started = Instant::now();
    let mut drawn = started;
    for put in 0..args.put_total {
        let slot = started + interval * put as u32;
        if let Some(wait) = slot.checked_duration_since(Instant::now()) {
            glommio::timer::sleep(wait).await;
        }
        let request = pb::PutRequest { key: key.to_vec(), value: value.to_vec(), ..Default::default() };
        put_channel.put(&request).await.map_err(|e| format!("Failed to Put for watch latency benchmark: {e}"))?;
        let acknowledged = Instant::now();
        for _ in 0..watchers {
            let arrival = events.next().await.ok_or("a watch stream ended during the benchmark")?;
            let second =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
            recorder.borrow_mut().record(arrival.saturating_duration_since(acknowledged), second);
        }
        if drawn.elapsed() >= PROGRESS_PERIOD || put + 1 == args.put_total {
            crate::load::draw_progress(put + 1, args.put_total, started.elapsed());
            drawn = Instant::now();
        }
    }
    eprintln!();
    let wall = started.elapsed();
    let recorder = recorder.borrow().clone();
    Ok((recorder, wall))
}
