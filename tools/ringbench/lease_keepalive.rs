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
    let (total, rate, sample) = (args.total, cli.global.rate, cli.global.sample);
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
            .map(|client| glommio::spawn_local(client_loop(channels[client % channels.len()].clone(), state.clone())))
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
