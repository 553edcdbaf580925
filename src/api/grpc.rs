//! gRPC over HTTP/2 on a glommio connection, with h2 and no tokio runtime.
//!
//! One task per connection polls `accept` (which also drives frame I/O and PING ACKs, so it
//! must never wait on a handler); each stream runs in its own task. A gRPC message is a
//! 5-byte prefix (compressed flag, big-endian length) and the protobuf bytes. Replies are
//! HEADERS, DATA, then trailers with `grpc-status`; errors use the trailers-only form.

use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderName, HeaderValue, Response};

use crate::api::errors::{self, Code, Status};
use crate::api::metrics::Call;
use crate::api::service::{self, Codec};
use crate::server::Core;

/// Bytes grpc-go lets a message exceed --max-request-bytes by before it refuses it at the
/// transport (etcd's `grpcOverheadBytes`); between the two, etcd's own check answers.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
const PREFIX_BYTES: usize = 5;

/// Protobuf encoding of messages, as gRPC carries them.
pub struct ProtobufCodec;

impl Codec for ProtobufCodec {
    fn decode<M>(&self, body: &Bytes) -> Result<M, Status>
    where
        M: prost::Message + Default + serde::de::DeserializeOwned,
    {
        M::decode(body.clone()).map_err(|error| Status::malformed(&error))
    }

    fn encode<M>(&self, message: &M) -> Bytes
    where
        M: prost::Message + serde::Serialize,
    {
        let length = message.encoded_len();
        let mut buffer = BytesMut::with_capacity(PREFIX_BYTES + length);
        buffer.put_u8(0);
        buffer.put_u32(length as u32);
        message.encode(&mut buffer).expect("a BytesMut with room for the message");
        debug_assert_eq!(buffer.len(), PREFIX_BYTES + length);
        buffer.freeze()
    }
}

/// Serves one HTTP/2 connection until the client closes it.
pub async fn serve<T>(io: T, core: Rc<Core>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .max_concurrent_streams(u32::MAX)
        .max_send_buffer_size(1 << 20)
        .handshake::<T, Bytes>(io)
        .await;
    let mut connection = match handshake {
        Ok(connection) => connection,
        Err(_) => return,
    };
    while let Some(accepted) = connection.accept().await {
        let Ok((request, respond)) = accepted else { return };
        let core = core.clone();
        glommio::spawn_local(async move {
            let path = request.uri().path().to_owned();
            serve_stream(&core, &path, request.into_body(), respond).await;
        })
        .detach();
    }
}

/// Every request's task holds this future, as large as its largest branch and copied when
/// the task is spawned: the streaming paths, rare and large, are boxed, as are the largest of
/// the unary calls (`service::call`). That took it from 3,520 to 1,576 bytes and ringd's CPU
/// per put from 13.3 to 11.8 µs at 1000 clients (README, issue 6).
async fn serve_stream(core: &Rc<Core>, path: &str, body: RecvStream, mut respond: SendResponse<Bytes>) {
    let calls = &core.shared.grpc_calls;
    if let Some(streaming) =
        [SNAPSHOT_PATH, WATCH_PATH, LEASE_KEEP_ALIVE_PATH, OBSERVE_PATH].iter().position(|p| *p == path)
    {
        let call = calls.start(core.index(), service::method_slot(path).expect("the streaming paths are etcd's"));
        let code = match streaming {
            0 => {
                drop(body);
                Box::pin(stream_snapshot(core, respond, &call)).await
            }
            1 => Box::pin(serve_watch(core, body, respond, &call)).await,
            2 => Box::pin(serve_keep_alive(core, body, respond, &call)).await,
            _ => Box::pin(serve_observe(core, body, respond, &call)).await,
        };
        return call.handled(code);
    }
    let method = match service::route_grpc(path) {
        Ok(method) => method,
        Err(status) => {
            if let Some(slot) = service::method_slot(path) {
                calls.start(core.index(), slot).handled(status.code);
            }
            return send_status(&mut respond, &status);
        }
    };
    let limit_bytes = core.max_request_bytes() + GRPC_OVERHEAD_BYTES;
    let message = match read_unary(body, limit_bytes).await {
        Ok(message) => message,
        Err(status) => return send_status(&mut respond, &status),
    };
    if message.len() > core.max_request_bytes() {
        return send_status(&mut respond, &errors::REQUEST_TOO_LARGE);
    }
    // Counted from here, as grpc-go's interceptors count: a call its transport refused (the
    // message unreadable or too large) never reached them.
    let call = calls.start(core.index(), service::routed_slot(method));
    call.received(message.len());
    let client_reset = futures::FutureExt::map(futures::future::poll_fn(|cx| respond.poll_reset(cx)), |_| ());
    let called = service::call(core, method, &message, &ProtobufCodec, client_reset).await;
    match called {
        Ok(reply) => {
            call.sent(reply.len() - PREFIX_BYTES);
            send_reply(&mut respond, reply);
            call.handled(errors::Code::Ok);
        }
        Err(status) => fail(call, &mut respond, &status),
    }
}

/// A unary call that ends with `status`.
fn fail(call: crate::api::metrics::Call<'_>, respond: &mut SendResponse<Bytes>, status: &Status) {
    call.handled(status.code);
    send_status(respond, status);
}

/// The gRPC status headers as made names: inserting a `&'static str` parses it and, for a
/// name the http crate does not know, copies it into a fresh allocation on every response
/// (2% of ringd's CPU at 1000 clients).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

const SNAPSHOT_PATH: &str = "/etcdserverpb.Maintenance/Snapshot";
const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";
const LEASE_KEEP_ALIVE_PATH: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
const OBSERVE_PATH: &str = "/v3electionpb.Election/Observe";

/// Ends a server stream with the grpc-status (and grpc-message) trailers of how it ended.
/// Every unary reply ends here too.
/// Returns the stream's code.
fn end_stream(stream: &mut h2::SendStream<Bytes>, ended: Result<(), Status>) -> Code {
    let mut trailers = HeaderMap::new();
    let code = ended.as_ref().map_or_else(|status| status.code, |()| Code::Ok);
    match ended {
        Ok(()) => {
            trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        }
        Err(status) => {
            trailers.insert(GRPC_STATUS, HeaderValue::from(status.code as u8 as u16));
            if status.code != errors::Code::Ok {
                if let Ok(message) = HeaderValue::from_str(&percent_encode(&status.message)) {
                    trailers.insert(GRPC_MESSAGE, message);
                }
            }
        }
    }
    let _ = stream.send_trailers(trailers);
    code
}

/// Lease.LeaseKeepAlive: one response per request, in order (etcd answers a lease that
/// does not exist with TTL 0).
async fn serve_keep_alive(
    core: &Core,
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
    call: &Call<'_>,
) -> Code {
    let Ok(mut stream) = respond.send_response(response_headers(), false) else { return Code::Canceled };
    let limit_bytes = core.max_request_bytes() + GRPC_OVERHEAD_BYTES;
    let mut buffer = BytesMut::new();
    let mut ended = Ok(());
    while let Some(message) = next_message(&mut body, &mut buffer, limit_bytes).await {
        let request = match message
            .and_then(|bytes| ProtobufCodec.decode::<crate::api::pb::etcdserverpb::LeaseKeepAliveRequest>(&bytes))
        {
            Ok(request) => request,
            Err(status) => {
                ended = Err(status);
                break;
            }
        };
        call.received(prost::Message::encoded_len(&request));
        match core.lease_keep_alive(request.id).await {
            Ok(response) => {
                if !send_counted(&mut stream, ProtobufCodec.encode(&response), call).await {
                    return Code::Canceled;
                }
            }
            Err(status) => {
                ended = Err(status);
                break;
            }
        }
    }
    end_stream(&mut stream, ended)
}

/// Election.Observe: one request, then a response per leader and per proclaimed value until
/// the client resets the stream (which drops the observer and its watchers).
async fn serve_observe(core: &Rc<Core>, body: RecvStream, mut respond: SendResponse<Bytes>, call: &Call<'_>) -> Code {
    use futures::StreamExt;
    let limit_bytes = core.max_request_bytes() + GRPC_OVERHEAD_BYTES;
    let request = match read_unary(body, limit_bytes)
        .await
        .and_then(|bytes| ProtobufCodec.decode::<crate::api::pb::v3electionpb::LeaderRequest>(&bytes))
    {
        Ok(request) => request,
        Err(status) => {
            send_status(&mut respond, &status);
            return status.code;
        }
    };
    call.received(prost::Message::encoded_len(&request));
    let Ok(mut stream) = respond.send_response(response_headers(), false) else { return Code::Canceled };
    let (sender, mut responses) = futures::channel::mpsc::channel(0);
    let observing = core.clone();
    let observer = glommio::spawn_local(async move { observing.observe(request, sender).await });
    loop {
        let next = responses.next();
        let reset = futures::future::poll_fn(|cx| stream.poll_reset(cx));
        futures::pin_mut!(reset);
        match futures::future::select(next, reset).await {
            futures::future::Either::Left((Some(response), _)) => {
                if !send_counted(&mut stream, ProtobufCodec.encode(&response), call).await {
                    return Code::Canceled;
                }
            }
            futures::future::Either::Left((None, _)) => break,
            futures::future::Either::Right(_) => return Code::Canceled,
        }
    }
    drop(observer);
    end_stream(&mut stream, Ok(()))
}

/// Reads the next length-prefixed message of a streaming request; None at the end of the
/// client's side of the stream.
async fn next_message(
    body: &mut RecvStream,
    buffer: &mut BytesMut,
    limit_bytes: usize,
) -> Option<Result<Bytes, Status>> {
    loop {
        if buffer.len() >= PREFIX_BYTES {
            if buffer[0] != 0 {
                return Some(Err(Status::new(
                    errors::Code::Unimplemented,
                    "grpc: Decompressor is not installed for grpc-encoding",
                )));
            }
            let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
            if length > limit_bytes {
                return Some(Err(Status::message_too_large(length, limit_bytes)));
            }
            if buffer.len() >= PREFIX_BYTES + length {
                let mut message = buffer.split_to(PREFIX_BYTES + length);
                return Some(Ok(message.split_off(PREFIX_BYTES).freeze()));
            }
        }
        match body.data().await? {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                buffer.extend_from_slice(&chunk);
            }
            Err(_) => return None,
        }
    }
}

/// Watch: a bidirectional stream. Requests (create, cancel, progress) are handled as they
/// arrive; responses come from this core's watch hub through the stream's outbox and are
/// sent as flow control allows. The stream ends when the client closes its side.
async fn serve_watch(core: &Core, mut body: RecvStream, mut respond: SendResponse<Bytes>, call: &Call<'_>) -> Code {
    use futures::{FutureExt, StreamExt};
    let (watch, mut responses) = core.watch_hub().open_encoded_stream();
    let Ok(mut stream) = respond.send_response(response_headers(), false) else { return Code::Canceled };
    let limit_bytes = core.max_request_bytes() + GRPC_OVERHEAD_BYTES;
    let receiver = watch.clone();
    let (shared, core_index, slot) = (core.shared.clone(), core.index(), call.slot());
    let receive = glommio::spawn_local(async move {
        let mut buffer = BytesMut::new();
        loop {
            receiver.room_for_requests().await;
            let Some(message) = next_message(&mut body, &mut buffer, limit_bytes).await else { break };
            if let Ok(bytes) = &message {
                shared.grpc_calls.received(core_index, slot, bytes.len());
            }
            let request =
                message.and_then(|bytes| ProtobufCodec.decode::<crate::api::pb::etcdserverpb::WatchRequest>(&bytes))?;
            receiver.handle(request);
            glommio::yield_if_needed().await;
        }
        Ok::<(), Status>(())
    });
    let progress_interval = core.watch_progress_interval();
    let ticking = std::rc::Rc::downgrade(&watch);
    let ticker = glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(progress_interval).await;
            match ticking.upgrade() {
                Some(watch) => watch.notify_progress(),
                None => return,
            }
        }
    });
    let mut receive = receive.fuse();
    let ended = loop {
        futures::select! {
            response = responses.next() => {
                let Some(response) = response else { break Ok(()) };
                watch.response_sent();
                let message = match response {
                    crate::server::watch::Outgoing::Response(response) => ProtobufCodec.encode(&response),
                    crate::server::watch::Outgoing::Encoded(message) => message,
                };
                if !send_counted(&mut stream, message, call).await {
                    break Ok(());
                }
            }
            ended = receive => break ended,
        }
    };
    drop(ticker);
    end_stream(&mut stream, ended)
}
/// Bytes of the db per SnapshotResponse (etcd's snapshotSendBufferSize).
const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;
/// Bytes of the db read per trip to the blocking pool (page faults stay off the executor).
const SNAPSHOT_READ_BYTES: usize = 1024 * 1024;

/// Maintenance.Snapshot: streams a consistent copy of the db (see `mvcc::Image`), then, as
/// etcd does, one last message with the sha256 of the db (etcdctl checks it is there). Each
/// message is sent only once flow control has room for it, so a slow client holds back the
/// stream instead of filling memory.
async fn stream_snapshot(core: &Core, mut respond: SendResponse<Bytes>, call: &Call<'_>) -> Code {
    let mut image = match core.snapshot_image().await {
        Ok(image) => image,
        Err(status) => {
            send_status(&mut respond, &status);
            return status.code;
        }
    };
    let Ok(mut stream) = respond.send_response(response_headers(), false) else { return Code::Canceled };
    let total_bytes = image.len_bytes();
    let mut offset = 0u64;
    let mut digest = <sha2::Sha256 as sha2::Digest>::new();
    while offset < total_bytes {
        let read = glommio::executor()
            .spawn_blocking(move || {
                let mut block = Vec::with_capacity(SNAPSHOT_READ_BYTES);
                image.read_chunk(offset, SNAPSHOT_READ_BYTES, &mut block);
                (image, block)
            })
            .await;
        image = read.0;
        let block = read.1;
        assert!(!block.is_empty(), "an image chunk below its length is never empty");
        sha2::Digest::update(&mut digest, &block);
        for piece in block.chunks(SNAPSHOT_CHUNK_BYTES) {
            offset += piece.len() as u64;
            let message = crate::api::pb::etcdserverpb::SnapshotResponse {
                header: None,
                remaining_bytes: total_bytes - offset,
                blob: piece.to_vec(),
            };
            if !send_counted(&mut stream, ProtobufCodec.encode(&message), call).await {
                return Code::Canceled;
            }
        }
    }
    let checksum = crate::api::pb::etcdserverpb::SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: sha2::Digest::finalize(digest).to_vec(),
    };
    if !send_counted(&mut stream, ProtobufCodec.encode(&checksum), call).await {
        return Code::Canceled;
    }
    end_stream(&mut stream, Ok(()))
}

/// `send_when_room` of one message of a stream, counted for its call once sent.
async fn send_counted(stream: &mut h2::SendStream<Bytes>, message: Bytes, call: &Call<'_>) -> bool {
    let message_bytes = message.len() - PREFIX_BYTES;
    let sent = send_when_room(stream, message).await;
    if sent {
        call.sent(message_bytes);
    }
    sent
}

/// Sends `data` piece by piece as the peer's flow-control window grants room, so at most one
/// window's worth is ever buffered for a slow reader. h2 never assigns a stream more capacity
/// than the peer's current window (65,535 bytes by default), and a client only grants more
/// after it has received data, so waiting for room for the whole of a larger message (a
/// revision of 100 puts of 1 KiB) would wait forever. False if the stream is gone.
async fn send_when_room(stream: &mut h2::SendStream<Bytes>, mut data: Bytes) -> bool {
    assert!(!data.is_empty(), "a gRPC message has at least its 5-byte prefix");
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        while stream.capacity() == 0 {
            match futures::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                _ => return false,
            }
        }
        let piece = data.split_to(stream.capacity().min(data.len()));
        debug_assert!(!piece.is_empty());
        if stream.send_data(piece, false).is_err() {
            return false;
        }
    }
    true
}

/// Reads one length-prefixed message from a unary request body, refusing one whose declared
/// length exceeds `limit_bytes` as soon as its prefix arrives.
async fn read_unary(mut body: RecvStream, limit_bytes: usize) -> Result<Bytes, Status> {
    let mut buffer = BytesMut::new();
    let mut expected_bytes: Option<usize> = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|error| Status::with_message(errors::Code::Internal, error.to_string()))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buffer.extend_from_slice(&chunk);
        if expected_bytes.is_none() && buffer.len() >= PREFIX_BYTES {
            if buffer[0] != 0 {
                return Err(Status::new(
                    errors::Code::Unimplemented,
                    "grpc: Decompressor is not installed for grpc-encoding",
                ));
            }
            let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
            if length > limit_bytes {
                return Err(Status::message_too_large(length, limit_bytes));
            }
            expected_bytes = Some(length);
        }
        if let Some(length) = expected_bytes {
            if buffer.len() >= PREFIX_BYTES + length {
                break;
            }
        }
    }
    let Some(length) = expected_bytes else {
        return Err(Status::new(errors::Code::Internal, "grpc: request ended before a message arrived"));
    };
    if buffer.len() < PREFIX_BYTES + length {
        return Err(Status::new(errors::Code::Internal, "grpc: request ended inside a message"));
    }
    let mut message = buffer.freeze();
    Ok(message.split_off(PREFIX_BYTES).split_to(length))
}

fn response_headers() -> Response<()> {
    let mut response = Response::new(());
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

fn send_reply(respond: &mut SendResponse<Bytes>, reply: Bytes) {
    let Ok(mut stream) = respond.send_response(response_headers(), false) else { return };
    if stream.send_data(reply, false).is_err() {
        return;
    }
    end_stream(&mut stream, Ok(()));
}

/// The trailers-only form: one HEADERS frame with END_STREAM carrying the status.
pub fn send_status(respond: &mut SendResponse<Bytes>, status: &Status) {
    let mut response = response_headers();
    let headers = response.headers_mut();
    headers.insert(GRPC_STATUS, HeaderValue::from(status.code as u8 as u16));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(&status.message)) {
        headers.insert(GRPC_MESSAGE, message);
    }
    let _ = respond.send_response(response, true);
}

/// grpc-message is percent-encoded: bytes outside printable ASCII, and '%' itself.
fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("etcdserver: key is not provided"), "etcdserver: key is not provided");
        assert_eq!(percent_encode("100%\n"), "100%25%0A");
    }

    #[test]
    fn protobuf_codec_prefixes_length() {
        let request = crate::api::pb::etcdserverpb::RangeRequest { key: b"foo".to_vec(), ..Default::default() };
        let bytes = ProtobufCodec.encode(&request);
        assert_eq!(bytes[0], 0);
        assert_eq!(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize, bytes.len() - 5);
        let decoded: crate::api::pb::etcdserverpb::RangeRequest = ProtobufCodec.decode(&bytes.slice(5..)).unwrap();
        assert_eq!(decoded, request);
    }
}
