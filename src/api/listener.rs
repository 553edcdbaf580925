//! The client port: every core binds it (glommio sets SO_REUSEPORT, so the kernel picks a
//! core for each connection by a hash of its addresses) and sniffs each connection's first
//! bytes: the HTTP/2 preface means gRPC, anything else is HTTP/1.1 for the JSON gateway. On
//! an https port the core serving a connection first completes its TLS handshake
//! (`io::tls`), then sniffs the bytes inside.
//!
//! The core that accepts a connection may hand it to another (`Balancer`). The raft core
//! has a lane to every other core and hands each connection it accepts to the core with the
//! fewest live client connections (itself on a tie); every other core has a lane to the raft
//! core only, and serves a connection itself unless the raft core has as few or fewer. With
//! two cores, ringd's usual shape here, that is "fewest live connections, ties to the raft
//! core" exactly; with more, a connection accepted on core 1 never goes to core 2, so the
//! spread between the other cores is only as even as the kernel's hash makes it (a mesh of
//! lanes between all cores would fix that, at cores² channels). Writes and linearizable
//! reads are answered on the raft core, so a connection served there saves two crossings
//! between cores per request, each a wakeup of a sleeping core when the load is light (one
//! client's put: 3.2k to 3.4k against 2.5k to 2.8k req/s on this project's VM).

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_lite::AsyncReadExt;
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use glommio::net::{AcceptedTcpStream, TcpListener, TcpStream};
use glommio::{GlommioError, ResourceType};

use crate::server::{Core, RAFT_CORE};

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Connections queued from one core toward another; past it the accepting core serves them.
const HANDOFF_CONNECTIONS_MAX: usize = 256;

/// Binds `address` on this core. Called on every core; fails if the port is taken by
/// another process.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address).map_err(|error| io::Error::other(error.to_string()))
}

/// Live client connections per core, shared by all cores.
pub type ConnectionCounts = Arc<[AtomicUsize]>;

pub fn connection_counts(cores: usize) -> ConnectionCounts {
    (0..cores).map(|_| AtomicUsize::new(0)).collect()
}

/// One live connection counted on its core, uncounted when dropped.
struct Live {
    counts: ConnectionCounts,
    core: usize,
}

impl Live {
    fn count(counts: &ConnectionCounts, core: usize) -> Live {
        counts[core].fetch_add(1, Ordering::Relaxed);
        Live { counts: counts.clone(), core }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let before = self.counts[self.core].fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "core {} uncounted a connection it did not count", self.core);
    }
}

/// An accepted connection on its way to the core that serves it, counted there already (so
/// that a burst of connections does not all pick the same core).
pub struct Handoff {
    stream: AcceptedTcpStream,
    /// Accepted on an https port.
    tls: bool,
    live: Live,
}

/// One core's handoff channels before they are connected: the raft core has one to and one
/// from every other core; every other core has one to and one from the raft core.
pub struct Lanes {
    senders: Vec<(usize, SharedSender<Handoff>)>,
    receivers: Vec<SharedReceiver<Handoff>>,
}

/// Makes the handoff channels of `cores` cores, indexed by core.
pub fn lanes(cores: usize) -> Vec<Lanes> {
    let mut lanes: Vec<Lanes> = (0..cores).map(|_| Lanes { senders: Vec::new(), receivers: Vec::new() }).collect();
    for core in (0..cores).filter(|&core| core != RAFT_CORE) {
        for (from, to) in [(RAFT_CORE, core), (core, RAFT_CORE)] {
            let (sender, receiver) = shared_channel::new_bounded(HANDOFF_CONNECTIONS_MAX);
            lanes[from].senders.push((to, sender));
            lanes[to].receivers.push(receiver);
        }
    }
    lanes
}

/// Decides which core serves each connection this core accepts.
pub struct Balancer {
    core: usize,
    counts: ConnectionCounts,
    senders: Vec<(usize, ConnectedSender<Handoff>)>,
}

impl Balancer {
    /// Connects this core's lanes; connections handed to this core are served by `core`.
    pub async fn connect(lanes: Lanes, core: Rc<Core>) -> Balancer {
        let index = core.index();
        let counts = core.shared.client_connections.clone();
        // The receivers first, each in its own task: a sender's connect waits for its peer.
        for receiver in lanes.receivers {
            let core = core.clone();
            glommio::spawn_local(async move {
                let receiver = receiver.connect().await;
                while let Some(Handoff { stream, tls, live }) = receiver.recv().await {
                    debug_assert_eq!(live.core, core.index());
                    let serve = serve_connection(stream.bind_to_executor(), tls, core.clone(), live);
                    glommio::spawn_local(serve).detach();
                }
            })
            .detach();
        }
        let mut senders = Vec::with_capacity(lanes.senders.len());
        for (target, sender) in lanes.senders {
            senders.push((target, sender.connect().await));
        }
        Balancer { core: index, counts, senders }
    }

    /// The core with the fewest live connections among those this core can hand to, ties
    /// going to the raft core, then to this core.
    fn target(&self) -> usize {
        let count = |core: usize| self.counts[core].load(Ordering::Relaxed);
        if self.core != RAFT_CORE {
            return if count(RAFT_CORE) <= count(self.core) { RAFT_CORE } else { self.core };
        }
        let least = self.senders.iter().map(|&(core, _)| core).min_by_key(|&core| count(core));
        match least {
            Some(core) if count(core) < count(RAFT_CORE) => core,
            _ => RAFT_CORE,
        }
    }

    /// Hands `stream` to the core that should serve it, or returns it to be served here.
    fn place(&self, stream: AcceptedTcpStream, tls: bool) -> Option<(AcceptedTcpStream, Live)> {
        let target = self.target();
        if target == self.core {
            return Some((stream, Live::count(&self.counts, self.core)));
        }
        let (_, sender) = self
            .senders
            .iter()
            .find(|(core, _)| *core == target)
            .expect("target() picks a core this one has a lane to");
        match sender.try_send(Handoff { stream, tls, live: Live::count(&self.counts, target) }) {
            Ok(()) => None,
            // The target's queue is full (or it stopped): serve here after all.
            Err(GlommioError::WouldBlock(ResourceType::Channel(Handoff { stream, live, .. })))
            | Err(GlommioError::Closed(ResourceType::Channel(Handoff { stream, live, .. }))) => {
                drop(live);
                Some((stream, Live::count(&self.counts, self.core)))
            }
            Err(error) => unreachable!("a channel's try_send fails only as full or closed: {error}"),
        }
    }
}

/// Accepts connections forever, one task per connection served on this core; `tls`: the
/// port is https.
pub async fn accept_loop(listener: TcpListener, tls: bool, core: Rc<Core>, balancer: Rc<Balancer>) {
    loop {
        let stream = match listener.shared_accept().await {
            Ok(stream) => stream,
            Err(_) => {
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        core.shared.accepted_connections.fetch_add(1, Ordering::Relaxed);
        if let Some((stream, live)) = balancer.place(stream, tls) {
            glommio::spawn_local(serve_connection(stream.bind_to_executor(), tls, core.clone(), live)).detach();
        }
    }
}

/// Accepts --listen-metrics-urls connections forever (on the core that bound the port; the
/// load is a scrape now and then): `GET /metrics` and `GET /health` only.
pub async fn metrics_accept_loop(listener: TcpListener, tls: bool, core: Rc<Core>) {
    loop {
        let Ok(stream) = listener.accept().await else {
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let core = core.clone();
        glommio::spawn_local(async move {
            let _ = stream.set_nodelay(true);
            if !tls {
                return crate::api::gateway::serve_metrics(stream, core).await;
            }
            let config = core.shared.config.client_tls.clone().expect("an https port has the client port's TLS");
            if let Ok(stream) = crate::io::tls::TlsAcceptor::from(config).accept(stream).await {
                crate::api::gateway::serve_metrics(stream, core).await;
            }
        })
        .detach();
    }
}

async fn serve_connection(stream: TcpStream, tls: bool, core: Rc<Core>, live: Live) {
    debug_assert_eq!(live.core, core.index());
    let _ = stream.set_nodelay(true);
    if !tls {
        return serve_protocol(stream, core).await;
    }
    let config = core.shared.config.client_tls.clone().expect("an https port has the client port's TLS");
    // A client that fails its handshake (no certificate, an unknown CA, plain HTTP on an
    // https port) is dropped, as Go's TLS server drops it.
    if let Ok(stream) = crate::io::tls::TlsAcceptor::from(config).accept(stream).await {
        serve_protocol(stream, core).await;
    }
    drop(live);
}

/// Serves one connection's bytes (inside TLS on an https port): gRPC or the gateway.
async fn serve_protocol<S>(mut stream: S, core: Rc<Core>)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let mut buffer = vec![0u8; 4096];
    let mut filled = 0usize;
    // Read until the bytes either are or cannot be the HTTP/2 preface.
    while filled < HTTP2_PREFACE.len() && HTTP2_PREFACE.starts_with(&buffer[..filled]) {
        match stream.read(&mut buffer[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(read) => filled += read,
        }
    }
    buffer.truncate(filled);
    if buffer.starts_with(HTTP2_PREFACE) {
        // h2 reads the preface again: it is replayed ahead of the socket.
        crate::api::grpc::serve(crate::io::stream::TokioIo::with_prefix(stream, buffer), core).await;
    } else {
        crate::api::gateway::serve(stream, buffer, core).await;
    }
}
