//! `ringbench lease-keepalive` (etcd's): each of --clients (client c on connection c mod
//! --conns) grants one lease of LEASE_TTL_SECONDS, untimed; then the clients share --total
//! keepalive round trips, each etcd's KeepAliveOnce (a LeaseKeepAlive stream of its own:
//! send the ID, read the reply), timed, at --rate if given. Printed as etcd prints it: the
//! report alone. The leases are revoked at the end (etcd lets them expire).
//!
//! Errors are counted per request in the report's error distribution, by the text of
//! their gRPC status. A client whose grant failed (a server without the Lease service, such
//! as ringd today, answers Unimplemented) cannot send keepalives: each request it takes
//! counts as one error, "lease grant failed: <status>", where etcd's tool would panic.
//! Runs on one executor (--client-cores does not apply).
//!
//! With --leases N (a ringd extension), the clients grant N leases between them, untimed,
//! and then keep them alive as etcd's client library does: one LeaseKeepAlive stream per
//! client, keepalives sent in windows of KEEPALIVE_WINDOW and their replies read in order,
//! each timed from its send; the client cycles through its leases, so at --rate R each lease
//! is renewed every N/R seconds. Built to measure what a keepalive costs the server with
//! many live leases (tuning/lease-keepalive-cost.sh).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringd::client::Channel;

use crate::bench::{block_on, connect_channels, target_endpoints, Run};
use crate::cli::{Cli, LeaseKeepaliveArgs};
use crate::load::{unix_second, Limiter, LocalProgress};
use crate::report::{process_cpu, ClientCpu, Recorder, Stats};

/// etcd's benchmark grants its leases for 100 seconds.
const LEASE_TTL_SECONDS: i64 = 100;
/// Keepalives a --leases client sends before it reads their replies.
const KEEPALIVE_WINDOW: usize = 64;

struct KeepAlives {
    total: usize,
    next: Cell<usize>,
    recorder: RefCell<Recorder>,
    first_start: Cell<Option<Instant>>,
    last_end: Cell<Option<Instant>>,
    limiter: Limiter,
    progress: LocalProgress,
    grant_failure_reported: Cell<bool>,
}

pub fn run(cli: &Cli, args: &LeaseKeepaliveArgs) -> Result<Run, String> {
    let endpoints = target_endpoints(cli)?;
    let (connections, clients, dial_timeout) = (cli.global.conns, cli.global.clients, cli.global.dial_timeout);
    let (total, rate, sample, leases) = (args.total, cli.global.rate, cli.global.sample, args.leases);
    let cpu_before = process_cpu();
    let started = Instant::now();
    let (recorder, wall) = block_on(move || async move {
        let channels = connect_channels(&endpoints, connections, dial_timeout).await?;
        let state = Rc::new(KeepAlives {
            total,
            next: Cell::new(0),
            recorder: RefCell::new(Recorder::new(sample)),
            first_start: Cell::new(None),
            last_end: Cell::new(None),
            limiter: Limiter::new(rate, 1),
            progress: LocalProgress::new(total),
            grant_failure_reported: Cell::new(false),
        });
        let tasks: Vec<_> = (0..clients)
            .map(|client| {
                let channel = channels[client % channels.len()].clone();
                let leases = (client..leases).step_by(clients).count();
                if leases > 0 {
                    glommio::spawn_local(streaming_client(channel, leases, state.clone()))
                } else {
                    glommio::spawn_local(client_loop(channel, state.clone()))
                }
            })
            .collect();
        for task in tasks {
            task.await;
        }
        state.progress.finish();
        let wall = match (state.first_start.get(), state.last_end.get()) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            _ => Duration::ZERO,
        };
        let recorder = state.recorder.borrow().clone();
        Ok::<_, String>((recorder, wall))
    })??;
    assert_eq!((recorder.count + recorder.error_count()) as usize, total, "every request is counted once");
    let cpu = ClientCpu::between(cpu_before, process_cpu(), total as u64, started.elapsed());
    let stats = Stats::compute(&recorder, wall);
    Ok(Run { name: "lease-keepalive".into(), recorder, stats, cpu })
}

/// --leases: grants this client's `count` leases, then keeps them alive in turn over one
/// stream until --total keepalives are taken; revokes them at the end.
async fn streaming_client(channel: Channel, count: usize, state: Rc<KeepAlives>) {
    let mut leases = Vec::with_capacity(count);
    for _ in 0..count {
        match channel.lease_grant(LEASE_TTL_SECONDS, 0).await {
            Ok(reply) if reply.error.is_empty() => leases.push(reply.id),
            Ok(reply) => return fail_all(&state, &format!("lease grant failed: {}", reply.error)),
            Err(error) => return fail_all(&state, &format!("lease grant failed: {error}")),
        }
    }
    if let Err(error) = keep_alive_in_windows(&channel, &leases, &state).await {
        fail_all(&state, &error);
    }
    for id in leases {
        if let Err(error) = channel.lease_revoke(id).await {
            eprintln!("ringbench: revoking lease {id:x}: {error}");
        }
    }
}

async fn keep_alive_in_windows(channel: &Channel, leases: &[i64], state: &KeepAlives) -> Result<(), String> {
    let mut stream = channel.lease_keep_alive().await.map_err(|error| error.to_string())?;
    let mut next_lease = leases.iter().cycle();
    let mut window = Vec::with_capacity(KEEPALIVE_WINDOW);
    loop {
        while window.len() < KEEPALIVE_WINDOW && state.next.get() < state.total {
            state.next.set(state.next.get() + 1);
            state.limiter.wait().await;
            let id = *next_lease.next().expect("a client with leases cycles through them");
            window.push((unix_second(), Instant::now()));
            stream.send(id).map_err(|error| error.to_string())?;
        }
        if window.is_empty() {
            return Ok(());
        }
        let sent: Vec<(i64, Instant)> = std::mem::take(&mut window);
        for (index, (start_second, start)) in sent.iter().copied().enumerate() {
            let reply = match stream.next().await {
                Ok(Some(reply)) => reply,
                failed => {
                    let error = failed.err().map_or("the keepalive stream ended".to_owned(), |error| error.to_string());
                    for _ in index..sent.len() {
                        state.recorder.borrow_mut().record_error(error.clone());
                        state.progress.add(1);
                    }
                    return Err(error);
                }
            };
            let end = Instant::now();
            state.first_start.set(Some(state.first_start.get().map_or(start, |first| first.min(start))));
            state.last_end.set(Some(state.last_end.get().map_or(end, |last| last.max(end))));
            if reply.ttl > 0 {
                state.recorder.borrow_mut().record(end - start, start_second);
            } else {
                state.recorder.borrow_mut().record_error("etcdserver: requested lease not found".into());
            }
            state.progress.add(1);
        }
    }
}

/// Counts every request not taken yet as failed with `error` (the run still ends).
fn fail_all(state: &KeepAlives, error: &str) {
    if !state.grant_failure_reported.replace(true) {
        eprintln!("\nringbench: {error}; the requests left count as errors");
    }
    while state.next.get() < state.total {
        state.next.set(state.next.get() + 1);
        state.recorder.borrow_mut().record_error(error.to_owned());
        state.progress.add(1);
    }
}

/// Grants this client's lease, then takes requests until --total are taken.
async fn client_loop(channel: Channel, state: Rc<KeepAlives>) {
    let lease = match channel.lease_grant(LEASE_TTL_SECONDS, 0).await {
        Ok(reply) if reply.error.is_empty() => Ok(reply.id),
        Ok(reply) => Err(format!("lease grant failed: {}", reply.error)),
        Err(error) => Err(format!("lease grant failed: {error}")),
    };
    if let (Err(error), false) = (&lease, state.grant_failure_reported.replace(true)) {
        eprintln!("\nringbench: {error}; the keepalive requests of such clients count as errors");
    }
    loop {
        let index = state.next.get();
        if index >= state.total {
            break;
        }
        state.next.set(index + 1);
        state.limiter.wait().await;
        let start_second = unix_second();
        let start = Instant::now();
        let result = match &lease {
            Ok(id) => channel.keep_alive_once(*id).await.map(|_| ()).map_err(|error| error.to_string()),
            Err(error) => Err(error.clone()),
        };
        let end = Instant::now();
        state.first_start.set(Some(state.first_start.get().map_or(start, |first| first.min(start))));
        state.last_end.set(Some(state.last_end.get().map_or(end, |last| last.max(end))));
        match result {
            Ok(()) => state.recorder.borrow_mut().record(end - start, start_second),
            Err(error) => state.recorder.borrow_mut().record_error(error),
        }
        state.progress.add(1);
    }
    if let Ok(id) = lease {
        if let Err(error) = channel.lease_revoke(id).await {
            eprintln!("ringbench: revoking lease {id:x}: {error}");
        }
    }
}
