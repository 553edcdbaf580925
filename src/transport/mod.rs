//! Peer transport: Raft messages between members over TCP, on the raft core.
//!
//! Owns: one outbound connection per peer (this member sends on it, with reconnect and
//! backoff) and the accept loop for inbound connections (this member receives on them).
//! Depends on: `raft::pb` message types and glommio's TCP streams. It knows nothing of what
//! the messages mean.
//!
//! # Wire format
//!
//! ```text
//! stream := hello frame*
//! frame  := length u32 LE | payload (prost)        length <= FRAME_SIZE_MAX_BYTES
//! hello  := Hello { magic, cluster_id, from, to }  the first frame on every connection
//! frame  := Frame { repeated raft Message }        everything queued since the last write
//! ```
//!
//! A joining member asks for the membership on a connection of its own
//! (`Hello.members_request`, from and to 0): the peer answers one `Membership` frame (cluster
//! ID, members with IDs and peer URLs) and closes it.
//!
//! A snapshot travels on a connection of its own (`Hello.snapshot`): the MsgSnap frame,
//! the data's length (u64 LE) and the data, written by the receiver to a file in its
//! snapshot directory and synced before it answers one byte and hands the MsgSnap to Raft.
//!
//! The dialer sends a hello; the acceptor drops the connection when the magic, the cluster
//! id or the addressee is not its own (a member of another cluster, or a stale address), and
//! says why on stderr. A member that joins an existing cluster starts without its cluster ID
//! (0): its peers accept it if their membership names it, and it adopts the ID of the first
//! peer that connects to it. Messages queued while a peer is unreachable are dropped
//! (Raft retransmits) and the peer is reported unreachable, so its leader probes it.
//!
//! Batching: a sender task takes every message queued for its peer into one frame and one
//! write; while the write is in flight, new messages queue for the next frame.
//!
//! Activity: a peer is active from the moment its latest message connection to this member
//! was accepted until its connections end (its process gone closes them at once). Every
//! member dials every peer at start, and again once its connection is found closed: by a
//! failed write, or by the probe that looks at every outbound connection each
//! `PROBE_INTERVAL` (a peer that restarted closed the old one, and followers seldom write to
//! each other). So this tells which peers are up without any traffic, as etcd's stream
//! readers do (`ActiveSince`, for the reconfiguration checks).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use prost::Message as _;

use crate::raft::pb::Message;

/// "ringpeer" in ASCII: a connection that does not start with it is not a ringd member.
pub const HELLO_MAGIC: u64 = 0x7269_6e67_7065_6572;
/// A frame larger than this is a protocol error (snapshots travel in their own messages
/// of at most this size too).
pub const FRAME_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of messages one frame carries at most before the rest waits for the next write.
const FRAME_BATCH_BYTES: usize = 4 * 1024 * 1024;
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of snapshot data per write.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// How often the outbound connections are checked for having been closed by their peer.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    #[prost(fixed64, tag = "1")]
    pub magic: u64,
    #[prost(uint64, tag = "2")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "3")]
    pub from: u64,
    #[prost(uint64, tag = "4")]
    pub to: u64,
    /// This connection carries one snapshot, not a stream of messages.
    #[prost(bool, tag = "5")]
    pub snapshot: bool,
    /// This connection asks for the membership (a member joining an existing cluster, which
    /// learns its own ID and its peers' from it, as etcd's joiner asks a peer's /members).
    #[prost(bool, tag = "6")]
    pub members_request: bool,
}

/// The answer to a members request: the cluster and its members as the peer knows them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Membership {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<MemberEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberEntry {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, repeated, tag = "2")]
    pub peer_urls: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(bool, tag = "4")]
    pub is_learner: bool,
}

/// Asks the member at `address` for the membership, over a connection of its own (blocking:
/// a joining member does this before it starts its cores).
pub fn fetch_membership(address: SocketAddr, timeout: Duration) -> std::io::Result<Membership> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut hello = Vec::new();
    encode_frame(&Hello { magic: HELLO_MAGIC, members_request: true, ..Default::default() }, &mut hello);
    stream.write_all(&hello)?;
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let len = u32::from_le_bytes(header) as usize;
    if len > FRAME_SIZE_MAX_BYTES {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "membership frame too large"));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    decode::<Membership>(&payload)
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<Message>,
    /// The sender's membership no longer holds the receiver (the last frame it sends).
    #[prost(bool, tag = "2")]
    pub removed: bool,
}

/// What a sender task sends.
enum Outgoing {
    Message(Message),
    /// Tell the peer it was removed from the cluster, then stop.
    Removed,
    /// The connection was found closed by the peer: dial again.
    Reconnect,
}

/// What the transport tells its owner.
pub enum Incoming {
    /// Messages from a peer, in the order it sent them.
    Messages(Vec<Message>),
    /// A peer could not be reached: messages to it were dropped.
    Unreachable(u64),
    /// This member joined without knowing its cluster's ID; its first peer told it.
    ClusterId(u64),
    /// A peer says this member was removed from the cluster.
    Removed(u64),
    /// The leader's snapshot: its MsgSnap (metadata only) and the state machine's data,
    /// written to `path` and synced.
    Snapshot { message: Message, path: std::path::PathBuf },
}

/// The state machine's data of a snapshot, read in chunks by the sender.
pub trait SnapshotSource: 'static {
    fn len_bytes(&self) -> u64;
    /// Appends up to `max_bytes` from `offset` to `out`.
    fn read_chunk(&self, offset: u64, max_bytes: usize, out: &mut Vec<u8>);
}

struct Peer {
    address: SocketAddr,
    queue: mpsc::UnboundedSender<Outgoing>,
}

/// The raft core's handle: send to peers by id; peers come and go with membership.
pub struct Transport {
    member_id: u64,
    /// Where received snapshots are written.
    snapshot_dir: std::path::PathBuf,
    /// 0 while a joining member does not know it: it adopts the first peer's.
    cluster_id: std::cell::Cell<u64>,
    peers: RefCell<HashMap<u64, Peer>>,
    incoming: mpsc::UnboundedSender<Incoming>,
    /// The membership as the owner knows it, for members requests.
    membership: RefCell<Option<Box<dyn Fn() -> Membership>>>,
    /// Per peer: its open message connections to this member, and when the latest opened.
    active: RefCell<HashMap<u64, (usize, Instant)>>,
    /// Per peer: the socket of this member's connection to it, while connected.
    outbound: RefCell<HashMap<u64, std::os::fd::RawFd>>,
    /// Whether the probe task runs.
    probing: std::cell::Cell<bool>,
}

/// Counts one accepted message connection of a peer while it lives.
struct Activity {
    transport: Rc<Transport>,
    peer: u64,
}

impl Activity {
    fn start(transport: &Rc<Transport>, peer: u64) -> Activity {
        let now = Instant::now();
        let mut active = transport.active.borrow_mut();
        let (connections, since) = active.entry(peer).or_insert((0, now));
        *connections += 1;
        // A new connection restarts the clock even if the old one has not ended yet.
        *since = now;
        Activity { transport: transport.clone(), peer }
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        let mut active = self.transport.active.borrow_mut();
        if let Some((connections, _)) = active.get_mut(&self.peer) {
            *connections -= 1;
            if *connections == 0 {
                active.remove(&self.peer);
            }
        }
    }
}

impl Transport {
    pub fn new(
        member_id: u64,
        cluster_id: u64,
        snapshot_dir: std::path::PathBuf,
        incoming: mpsc::UnboundedSender<Incoming>,
    ) -> Rc<Transport> {
        Rc::new(Transport {
            member_id,
            snapshot_dir,
            cluster_id: std::cell::Cell::new(cluster_id),
            peers: RefCell::new(HashMap::new()),
            incoming,
            membership: RefCell::new(None),
            active: RefCell::new(HashMap::new()),
            outbound: RefCell::new(HashMap::new()),
            probing: std::cell::Cell::new(false),
        })
    }

    /// Since when peer `id` has been connected to this member without a break (None: it is
    /// not connected now).
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        self.active.borrow().get(&id).map(|&(_, since)| since)
    }

    /// Adds or re-addresses a peer; its sender task starts at once.
    pub fn set_peer(self: &Rc<Transport>, id: u64, address: SocketAddr) {
        if id == self.member_id {
            return;
        }
        let mut peers = self.peers.borrow_mut();
        if peers.get(&id).is_some_and(|peer| peer.address == address) {
            return;
        }
        let (queue, messages) = mpsc::unbounded();
        // Dropping the old sender ends the old task.
        peers.insert(id, Peer { address, queue });
        glommio::spawn_local(send_loop(self.clone(), id, address, messages)).detach();
        if !self.probing.replace(true) {
            glommio::spawn_local(probe_loop(Rc::downgrade(self))).detach();
        }
    }

    /// How to answer members requests (without it, they are refused).
    pub fn set_membership(&self, membership: Box<dyn Fn() -> Membership>) {
        *self.membership.borrow_mut() = Some(membership);
    }

    /// Stops sending to a peer the membership dropped, telling it so (best effort).
    pub fn remove_peer(&self, id: u64) {
        if let Some(peer) = self.peers.borrow_mut().remove(&id) {
            let _ = peer.queue.unbounded_send(Outgoing::Removed);
        }
    }

    pub fn has_peer(&self, id: u64) -> bool {
        self.peers.borrow().contains_key(&id)
    }

    pub fn peer_ids(&self) -> Vec<u64> {
        self.peers.borrow().keys().copied().collect()
    }

    /// Queues messages; each goes to the peer its `to` names (unknown peers: dropped and
    /// reported unreachable).
    pub fn send(&self, messages: Vec<Message>) {
        let peers = self.peers.borrow();
        for message in messages {
            match peers.get(&message.to) {
                Some(peer) => {
                    let _ = peer.queue.unbounded_send(Outgoing::Message(message));
                }
                None => {
                    let _ = self.incoming.unbounded_send(Incoming::Unreachable(message.to));
                }
            }
        }
    }

    /// Accepts peer connections on `listener` forever.
    pub async fn accept_loop(self: Rc<Transport>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    glommio::spawn_local(self.clone().receive(stream)).detach();
                }
                Err(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    async fn receive(self: Rc<Transport>, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let mut buffer = Vec::new();
        let hello = match read_frame(&mut stream, &mut buffer).await.and_then(|()| decode::<Hello>(&buffer)) {
            Ok(hello) => hello,
            Err(_) => return,
        };
        if hello.magic != HELLO_MAGIC {
            return;
        }
        if hello.members_request {
            let Some(membership) = self.membership.borrow().as_ref().map(|membership| membership()) else { return };
            let mut frame = Vec::new();
            encode_frame(&membership, &mut frame);
            let _ = stream.write_all(&frame).await;
            let _ = stream.flush().await;
            return;
        }
        if hello.to != self.member_id {
            eprintln!(
                "ringd: refused a peer connection from member {:x} meant for member {:x} (this is {:x})",
                hello.from, hello.to, self.member_id
            );
            return;
        }
        if self.cluster_id.get() == 0 && hello.cluster_id != 0 {
            self.cluster_id.set(hello.cluster_id);
            let _ = self.incoming.unbounded_send(Incoming::ClusterId(hello.cluster_id));
        }
        // A member joining an existing cluster does not know its ID yet (0): it is let in
        // when the membership already names it.
        let joining_peer = hello.cluster_id == 0 && self.has_peer(hello.from);
        if hello.cluster_id != self.cluster_id.get() && !joining_peer {
            eprintln!(
                "ringd: refused a peer connection from member {:x}: cluster ID mismatch (local {:x} != remote {:x})",
                hello.from,
                self.cluster_id.get(),
                hello.cluster_id
            );
            return;
        }
        if hello.snapshot {
            self.receive_snapshot(stream, hello.from, buffer).await;
            return;
        }
        // A peer cut off without its connection closing (a partition) would stay active
        // forever: probes on the idle connection end it within a few seconds.
        keep_alive(&stream);
        let _activity = Activity::start(&self, hello.from);
        loop {
            if read_frame(&mut stream, &mut buffer).await.is_err() {
                return;
            }
            let Ok(frame) = decode::<Frame>(&buffer) else { return };
            if frame.removed {
                let _ = self.incoming.unbounded_send(Incoming::Removed(hello.from));
                return;
            }
            let messages: Vec<Message> =
                frame.messages.into_iter().filter(|m| m.from == hello.from && m.to == self.member_id).collect();
            if !messages.is_empty() && self.incoming.unbounded_send(Incoming::Messages(messages)).is_err() {
                return;
            }
        }
    }
}

impl Transport {
    /// Streams a snapshot to peer `message.to` on a connection of its own: hello, the MsgSnap
    /// (metadata), the data's length (u64 LE), the data; the receiver answers one byte once
    /// the data is on its disk. Returns whether it was delivered.
    pub async fn send_snapshot(self: Rc<Transport>, message: Message, source: Box<dyn SnapshotSource>) -> bool {
        let to = message.to;
        let Some(address) = self.peers.borrow().get(&to).map(|peer| peer.address) else { return false };
        let Ok(mut stream) = TcpStream::connect_timeout(address, DIAL_TIMEOUT).await else { return false };
        let hello = Hello {
            magic: HELLO_MAGIC,
            cluster_id: self.cluster_id.get(),
            from: self.member_id,
            to,
            snapshot: true,
            ..Default::default()
        };
        let mut bytes = Vec::new();
        encode_frame(&hello, &mut bytes);
        encode_frame(&Frame { messages: vec![message], removed: false }, &mut bytes);
        let len = source.len_bytes();
        bytes.extend_from_slice(&len.to_le_bytes());
        if stream.write_all(&bytes).await.is_err() {
            return false;
        }
        let mut offset = 0;
        while offset < len {
            bytes.clear();
            source.read_chunk(offset, SNAPSHOT_CHUNK_BYTES, &mut bytes);
            if bytes.is_empty() || stream.write_all(&bytes).await.is_err() {
                return false;
            }
            offset += bytes.len() as u64;
        }
        let mut ack = [0u8; 1];
        stream.read_exact(&mut ack).await.is_ok() && ack[0] == 1
    }

    async fn receive_snapshot(self: Rc<Transport>, mut stream: TcpStream, from: u64, mut buffer: Vec<u8>) {
        if read_frame(&mut stream, &mut buffer).await.is_err() {
            return;
        }
        let Ok(frame) = decode::<Frame>(&buffer) else { return };
        let Some(message) = frame.messages.into_iter().next() else { return };
        if message.from != from || message.to != self.member_id {
            return;
        }
        let index = message.snapshot.as_ref().and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.index);
        let mut header = [0u8; 8];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = u64::from_le_bytes(header);
        let path = self.snapshot_dir.join(format!("db.incoming-{index:016x}"));
        let Ok(mut file) = std::fs::File::create(&path) else { return };
        let mut received = 0u64;
        buffer.resize(SNAPSHOT_CHUNK_BYTES, 0);
        while received < len {
            let want = ((len - received) as usize).min(buffer.len());
            if stream.read_exact(&mut buffer[..want]).await.is_err() {
                let _ = std::fs::remove_file(&path);
                return;
            }
            if std::io::Write::write_all(&mut file, &buffer[..want]).is_err() {
                let _ = std::fs::remove_file(&path);
                return;
            }
            received += want as u64;
        }
        let synced = glommio::executor().spawn_blocking(move || file.sync_all()).await;
        if synced.is_err() {
            let _ = std::fs::remove_file(&path);
            return;
        }
        let _ = self.incoming.unbounded_send(Incoming::Snapshot { message, path });
        let _ = stream.write_all(&[1]).await;
    }
}

/// Sends everything queued for one peer, reconnecting with backoff. Ends when the peer is
/// removed (its queue's sender dropped).
async fn send_loop(
    transport: Rc<Transport>,
    id: u64,
    address: SocketAddr,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut frame = Frame::default();
    let mut bytes = Vec::new();
    loop {
        let mut stream = match TcpStream::connect_timeout(address, DIAL_TIMEOUT).await {
            Ok(stream) => stream,
            Err(_) => {
                if !drop_queued(&transport, id, &mut queue) {
                    return;
                }
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let hello = Hello {
            magic: HELLO_MAGIC,
            cluster_id: transport.cluster_id.get(),
            from: transport.member_id,
            to: id,
            ..Default::default()
        };
        bytes.clear();
        encode_frame(&hello, &mut bytes);
        if stream.write_all(&bytes).await.is_err() {
            continue;
        }
        // Declared after the stream, so dropped before it: the probe never sees a closed fd.
        let _probed = Probed::register(&transport, id, &stream);
        backoff = RECONNECT_BACKOFF_MIN;
        loop {
            let Some(first) = queue.next().await else { return };
            let mut size = 0;
            let mut reconnect = false;
            let mut next = Some(first);
            while let Some(outgoing) = next.take() {
                match outgoing {
                    Outgoing::Message(message) => {
                        size += message.encoded_len();
                        frame.messages.push(message);
                    }
                    Outgoing::Removed => frame.removed = true,
                    Outgoing::Reconnect => reconnect = true,
                }
                if size >= FRAME_BATCH_BYTES || frame.removed || reconnect {
                    break;
                }
                match queue.try_recv() {
                    Ok(outgoing) => next = Some(outgoing),
                    Err(mpsc::TryRecvError::Closed) => return,
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            if reconnect {
                // What was taken with it goes out with the first frame on the new connection.
                break;
            }
            let last = frame.removed;
            bytes.clear();
            encode_frame(&frame, &mut bytes);
            frame.messages.clear();
            frame.removed = false;
            if stream.write_all(&bytes).await.is_err() {
                let _ = transport.incoming.unbounded_send(Incoming::Unreachable(id));
                break;
            }
            if last {
                let _ = stream.close().await;
                return;
            }
        }
    }
}

/// Registers a connected outbound socket for the probe while it lives.
struct Probed {
    transport: Rc<Transport>,
    peer: u64,
}

impl Probed {
    fn register(transport: &Rc<Transport>, peer: u64, stream: &TcpStream) -> Probed {
        use std::os::fd::AsRawFd;
        transport.outbound.borrow_mut().insert(peer, stream.as_raw_fd());
        Probed { transport: transport.clone(), peer }
    }
}

impl Drop for Probed {
    fn drop(&mut self) {
        self.transport.outbound.borrow_mut().remove(&self.peer);
    }
}

/// Every `PROBE_INTERVAL`, looks at each outbound connection without reading from it (a
/// peer never writes on it): one that its peer closed (end of stream, or an error such as a
/// reset) is dialed again. Ends with the transport.
async fn probe_loop(transport: std::rc::Weak<Transport>) {
    loop {
        glommio::timer::sleep(PROBE_INTERVAL).await;
        let Some(transport) = transport.upgrade() else { return };
        let closed: Vec<u64> = transport
            .outbound
            .borrow()
            .iter()
            .filter(|&(_, &fd)| {
                let mut byte = 0u8;
                // SAFETY: fd is a connected socket, registered only while its stream lives
                // (all on this thread); recv with MSG_PEEK reads nothing out of it.
                let got =
                    unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
                let error = std::io::Error::last_os_error().raw_os_error();
                got == 0 || (got < 0 && error != Some(libc::EAGAIN) && error != Some(libc::EINTR))
            })
            .map(|(&peer, _)| peer)
            .collect();
        let peers = transport.peers.borrow();
        for id in closed {
            // Once: the connection is not looked at again before its sender dialed anew.
            transport.outbound.borrow_mut().remove(&id);
            if let Some(peer) = peers.get(&id) {
                let _ = peer.queue.unbounded_send(Outgoing::Reconnect);
            }
        }
    }
}

/// Drops what queued while the peer was unreachable; false when the peer was removed.
fn drop_queued(transport: &Transport, id: u64, queue: &mut mpsc::UnboundedReceiver<Outgoing>) -> bool {
    let mut dropped = false;
    loop {
        match queue.try_recv() {
            Ok(_) => dropped = true,
            Err(mpsc::TryRecvError::Closed) => return false,
            Err(mpsc::TryRecvError::Empty) => break,
        }
    }
    if dropped {
        let _ = transport.incoming.unbounded_send(Incoming::Unreachable(id));
    }
    true
}

/// TCP keepalive on an accepted message connection: probes after 2 s without traffic, every
/// second, the connection reset after 2 unanswered (about 4 s in all, near etcd's 5 s stream
/// read timeout). Best effort: a socket that refuses keeps the kernel's defaults.
fn keep_alive(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    for (level, option, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 2),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 2),
    ] {
        let value: libc::c_int = value;
        // SAFETY: fd is the stream's open socket; the option value is a c_int it reads.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn encode_frame<M: prost::Message>(message: &M, out: &mut Vec<u8>) {
    let len = message.encoded_len();
    out.reserve(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    message.encode(out).expect("a Vec grows as needed");
}

async fn read_frame(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let len = u32::from_le_bytes(header) as usize;
    if len > FRAME_SIZE_MAX_BYTES {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "peer frame too large"));
    }
    buffer.resize(len, 0);
    stream.read_exact(buffer).await
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> std::io::Result<M> {
    M::decode(bytes).map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))
}

/// `http://host:port` of a peer URL to an address (IPv4 preferred, as for client URLs).
pub fn resolve(url: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    let host_port = url.strip_prefix("http://")?.trim_end_matches('/');
    let mut addresses = host_port.to_socket_addrs().ok()?;
    let ipv4 = addresses.clone().find(SocketAddr::is_ipv4);
    ipv4.or_else(|| addresses.next())
}
