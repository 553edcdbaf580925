//! The HTTP/1.1 JSON gateway on the client port: etcd's `/v3/...` paths with the protobuf
//! JSON mapping (pbjson: proto field names, 64-bit integers as strings, bytes as base64),
//! plus `/health`, `/version` and `/metrics` (`api::metrics`). Errors have grpc-gateway's shape:
//! `{"error": msg, "message": msg, "code": grpc_code}`.
//!
//! `POST /v3/watch` is grpc-gateway's bidirectional stream over HTTP/1.1: the request body
//! is a sequence of JSON WatchRequests (one for curl's `-d`, more over a chunked body), and
//! the reply is a chunked 200 whose chunks are each one line `{"result": WatchResponse}\n`.
//! The reply's head goes out with its first response (as Go's net/http sends it), and the
//! stream lasts until the client closes the connection, which drops the watch stream and
//! with it every watcher it created. Example, with `foo` put at revision 2:
//!
//! ```text
//! POST /v3/watch                  {"create_request":{"key":"Zm9v"}}
//! 8d\r\n{"result":{"header":{...,"revision":"1",...},"created":true}}\n\r\n
//! ..\r\n{"result":{"header":{...},"events":[{"kv":{"key":"Zm9v",...,"mod_revision":"2",...}}]}}\n\r\n
//! ```

use std::cell::Cell;
use std::rc::Rc;

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::api::errors::{Code, Status};
use crate::api::pb::etcdserverpb::WatchRequest;
use crate::api::service::{self, Codec};
use crate::server::watch::WatchStream;
use crate::server::Core;

/// Bounds of one HTTP/1.1 request head; a larger head is refused.
const HEAD_BYTES_MAX: usize = 64 * 1024;
const HEADERS_MAX: usize = 64;
/// Bound of one chunk-size or trailer line of a chunked request body.
const CHUNK_LINE_BYTES_MAX: usize = 4 * 1024;

const WATCH_PATH: &str = "/v3/watch";
const OBSERVE_PATH: &str = "/v3/election/observe";
const KEEP_ALIVE_PATH: &str = "/v3/lease/keepalive";

/// The protobuf JSON mapping, as etcd's gateway reads and writes it.
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn decode<M>(&self, body: &Bytes) -> Result<M, Status>
    where
        M: prost::Message + Default + serde::de::DeserializeOwned,
    {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(M::default());
        }
        serde_json::from_slice(body).map_err(|error| Status::with_message(Code::InvalidArgument, error.to_string()))
    }

    fn encode<M>(&self, message: &M) -> Bytes
    where
        M: prost::Message + serde::Serialize,
    {
        Bytes::from(serde_json::to_vec(message).expect("generated serde impls never fail"))
    }
}

struct Reply {
    status_code: u16,
    content_type: &'static str,
    body: Bytes,
}

const JSON: &str = "application/json";

impl Reply {
    fn error(status: &Status) -> Reply {
        Reply { content_type: JSON, status_code: status.code.http_status(), body: error_body(status) }
    }
}

fn error_body(status: &Status) -> Bytes {
    let body = serde_json::json!({
        "error": status.message,
        "message": status.message,
        "code": status.code as u8,
    });
    Bytes::from(body.to_string())
}

/// Serves HTTP/1.1 requests on one connection (keep-alive) until the client closes it or
/// sends something that is not HTTP. `buffer` holds bytes already read from `stream`. A
/// watch takes the connection over for good: it ends when its client goes.
pub async fn serve<S>(mut stream: S, mut buffer: Vec<u8>, core: Rc<Core>)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    loop {
        let Some((head, body_start)) = read_head(&mut stream, &mut buffer).await else { return };
        buffer.drain(..body_start);
        if head.method == "POST" && head.path == WATCH_PATH {
            return serve_watch(stream, buffer, &head, &core).await;
        }
        if head.method == "POST" && head.path == OBSERVE_PATH {
            return serve_observe(stream, buffer, &head, &core).await;
        }
        if head.method == "POST" && head.path == KEEP_ALIVE_PATH {
            return serve_keep_alive(stream, buffer, &head, &core).await;
        }
        let limit_bytes = body_limit_bytes(&core);
        let mut reader = Body::new(&mut stream, std::mem::take(&mut buffer), head.framing);
        let read = reader.read_to_end(limit_bytes).await;
        buffer = reader.into_buffer();
        let body = match read {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                let reply = Reply::error(&crate::api::errors::REQUEST_TOO_LARGE);
                let _ = write_reply(&mut stream, &reply, false).await;
                return;
            }
            Err(BodyError::Closed | BodyError::Malformed) => return,
        };
        let closed = client_closed(&mut stream, &mut buffer, limit_bytes);
        let reply = route(&core, &head.method, &head.path, &body, closed).await;
        if write_reply(&mut stream, &reply, head.keep_alive).await.is_err() || !head.keep_alive {
            return;
        }
    }
}

/// Serves a --listen-metrics-urls connection: `GET /metrics` and `GET /health` only (etcd's
/// metrics listener), HTTP/1.1 with keep-alive; anything else is a 404.
pub async fn serve_metrics<S>(mut stream: S, core: Rc<Core>)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let mut buffer = Vec::new();
    loop {
        let Some((head, body_start)) = read_head(&mut stream, &mut buffer).await else { return };
        buffer.drain(..body_start);
        let mut reader = Body::new(&mut stream, std::mem::take(&mut buffer), head.framing);
        let read = reader.read_to_end(body_limit_bytes(&core)).await;
        buffer = reader.into_buffer();
        if read.is_err() {
            return;
        }
        let reply = match (head.method.as_str(), head.path.as_str()) {
            ("GET", "/metrics") => metrics_reply(&core),
            ("GET", "/health") => health(&core),
            _ => Reply {
                content_type: JSON,
                status_code: 404,
                body: error_body(&Status::new(Code::NotFound, "Not Found")),
            },
        };
        if write_reply(&mut stream, &reply, head.keep_alive).await.is_err() || !head.keep_alive {
            return;
        }
    }
}

fn metrics_reply(core: &Core) -> Reply {
    Reply {
        status_code: 200,
        content_type: crate::api::metrics::CONTENT_TYPE,
        body: Bytes::from(crate::api::metrics::render(core)),
    }
}

struct Head {
    method: String,
    path: String,
    framing: Framing,
    keep_alive: bool,
    /// HTTP/1.1 (not 1.0): a streamed reply may use chunked transfer coding.
    http_1_1: bool,
}

/// How a request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `Content-Length` bytes (0 when the request has neither header).
    Length(usize),
    /// `Transfer-Encoding: chunked` (it wins over a `Content-Length`, as RFC 9112 says).
    Chunked,
}

/// Reads until a full request head is buffered; returns it and where its body starts.
async fn read_head<S: futures_lite::AsyncRead + Unpin>(stream: &mut S, buffer: &mut Vec<u8>) -> Option<(Head, usize)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(buffer) {
            Ok(httparse::Status::Complete(head_bytes)) => {
                let head = parse_head(&request)?;
                return Some((head, head_bytes));
            }
            Ok(httparse::Status::Partial) if buffer.len() < HEAD_BYTES_MAX => {}
            _ => return None,
        }
        if read_more(stream, buffer).await == 0 {
            return None;
        }
    }
}

fn parse_head(request: &httparse::Request) -> Option<Head> {
    let mut content_length_bytes = 0usize;
    let mut chunked = false;
    let http_1_1 = request.version == Some(1);
    let mut keep_alive = http_1_1;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            content_length_bytes = std::str::from_utf8(header.value).ok()?.trim().parse().ok()?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the chunked coding is understood; a body in any other cannot be delimited.
            if !std::str::from_utf8(header.value).ok()?.trim().eq_ignore_ascii_case("chunked") {
                return None;
            }
            chunked = true;
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
            keep_alive = value.contains("keep-alive") || (keep_alive && !value.contains("close"));
        }
    }
    let framing = if chunked { Framing::Chunked } else { Framing::Length(content_length_bytes) };
    let path = request.path?;
    let path = path.split('?').next().unwrap_or(path).to_owned();
    Some(Head { method: request.method?.to_owned(), path, framing, keep_alive, http_1_1 })
}

async fn read_more<S: futures_lite::AsyncRead + Unpin>(stream: &mut S, buffer: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(read) => {
            buffer.extend_from_slice(&chunk[..read]);
            read
        }
        Err(_) => 0,
    }
}

const METHOD_NOT_ALLOWED: Status = Status::new(Code::Unimplemented, "Method Not Allowed");

/// Resolves when the client closes the connection (a read of 0 bytes, or an error), as Go's
/// net/http cancels a request's context; bytes the client sends meanwhile (a pipelined next
/// request) are kept in `buffer`, up to `limit_bytes`. Only the calls that wait (Lock,
/// Campaign) poll it.
async fn client_closed<S: futures_lite::AsyncRead + Unpin>(stream: &mut S, buffer: &mut Vec<u8>, limit_bytes: usize) {
    while buffer.len() < limit_bytes {
        if read_more(stream, buffer).await == 0 {
            return;
        }
    }
    futures::future::pending::<()>().await
}

async fn route(
    core: &Core,
    method: &str,
    path: &str,
    body: &Bytes,
    cancelled: impl std::future::Future<Output = ()>,
) -> Reply {
    match (method, path) {
        ("GET", "/health") => health(core),
        ("GET", "/version") => json_reply(200, core.version_json()),
        ("GET", "/debug/latency") => json_reply(200, core.latency_json()),
        ("GET", "/debug/cores") => json_reply(200, core.cores_json()),
        ("GET", "/metrics") => metrics_reply(core),
        // A POST was taken over by `serve_watch` or `serve_observe`; any other method is
        // refused as elsewhere.
        (_, WATCH_PATH | OBSERVE_PATH | KEEP_ALIVE_PATH) => Reply::error(&METHOD_NOT_ALLOWED),
        (_, path) => match service::route_gateway(path) {
            Some(api_method) if method == "POST" => {
                match service::call(core, api_method, body, &JsonCodec, cancelled).await {
                    Ok(body) => Reply { content_type: JSON, status_code: 200, body },
                    Err(status) => Reply::error(&status),
                }
            }
            Some(_) => Reply::error(&METHOD_NOT_ALLOWED),
            None if service::is_known_gateway_path(path) => {
                Reply::error(&Status::not_implemented(path.rsplit('/').next().unwrap_or(path)))
            }
            None => Reply {
                content_type: JSON,
                status_code: 404,
                body: error_body(&Status::new(Code::NotFound, "Not Found")),
            },
        },
    }
}

/// etcd 3.5's /health: `{"health":"true","reason":""}`, 503 when unhealthy.
fn health(core: &Core) -> Reply {
    let (healthy, reason) = core.health();
    let body = serde_json::json!({ "health": if healthy { "true" } else { "false" }, "reason": reason });
    json_reply(if healthy { 200 } else { 503 }, body)
}

fn json_reply(status_code: u16, body: serde_json::Value) -> Reply {
    Reply { content_type: JSON, status_code, body: Bytes::from(body.to_string()) }
}

async fn write_reply<S: futures_lite::AsyncWrite + Unpin>(
    stream: &mut S,
    reply: &Reply,
    keep_alive: bool,
) -> std::io::Result<()> {
    let reason = reason_phrase(reply.status_code);
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        reply.status_code,
        reason,
        reply.content_type,
        reply.body.len(),
        connection
    );
    let mut out = Vec::with_capacity(head.len() + reply.body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&reply.body);
    stream.write_all(&out).await?;
    stream.flush().await
}

fn reason_phrase(status_code: u16) -> &'static str {
    match status_code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        429 => "Too Many Requests",
        499 => "Client Closed Request",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    }
}

/// Why a request body could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyError {
    /// The client closed the connection (or it failed) before the body ended.
    Closed,
    /// The chunked transfer coding is broken.
    Malformed,
    /// The body is larger than the caller allows.
    TooLarge,
}

/// Where a body's decoding stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    /// Bytes of a `Content-Length` body left to read.
    Remaining(usize),
    /// Chunked: a chunk-size line comes next.
    ChunkSize,
    /// Chunked: bytes of the current chunk left to read.
    ChunkData(usize),
    /// Chunked: the CRLF that closes a chunk's data comes next.
    ChunkEnd,
    /// Chunked: after the last chunk, trailer lines until an empty one.
    Trailers,
    Done,
}

/// What the buffered bytes decode to, without reading more.
enum Step {
    Data(Vec<u8>),
    End,
    NeedMore,
    Continue,
}

/// A request body as it arrives from the connection, with its framing removed. Bytes after
/// the body stay in the buffer for the next request.
struct Body<R> {
    stream: R,
    /// Bytes read from the connection and not consumed yet.
    buffer: Vec<u8>,
    state: BodyState,
}

impl<R: futures_lite::AsyncRead + Unpin> Body<R> {
    fn new(stream: R, buffer: Vec<u8>, framing: Framing) -> Body<R> {
        let state = match framing {
            Framing::Length(length_bytes) => BodyState::Remaining(length_bytes),
            Framing::Chunked => BodyState::ChunkSize,
        };
        Body { stream, buffer, state }
    }

    fn into_buffer(self) -> Vec<u8> {
        self.buffer
    }

    /// The next bytes of the body; None once it has ended (and on every call after).
    async fn next(&mut self) -> Result<Option<Vec<u8>>, BodyError> {
        loop {
            match self.step()? {
                Step::Data(bytes) => {
                    debug_assert!(!bytes.is_empty(), "a body piece carries bytes");
                    return Ok(Some(bytes));
                }
                Step::End => return Ok(None),
                Step::NeedMore => {
                    if read_more(&mut self.stream, &mut self.buffer).await == 0 {
                        return Err(BodyError::Closed);
                    }
                }
                Step::Continue => {}
            }
        }
    }

    /// The whole body, refused as soon as it is known to exceed `limit_bytes`.
    async fn read_to_end(&mut self, limit_bytes: usize) -> Result<Bytes, BodyError> {
        if let BodyState::Remaining(length_bytes) = self.state {
            if length_bytes > limit_bytes {
                return Err(BodyError::TooLarge);
            }
        }
        let mut body = Vec::new();
        while let Some(piece) = self.next().await? {
            body.extend_from_slice(&piece);
            if body.len() > limit_bytes {
                return Err(BodyError::TooLarge);
            }
        }
        assert_eq!(self.state, BodyState::Done);
        Ok(Bytes::from(body))
    }

    /// Reads and drops whatever the client sends until it closes the connection; the
    /// buffer is emptied on every read, so this holds no memory.
    async fn wait_closed(&mut self) {
        self.buffer.clear();
        while read_more(&mut self.stream, &mut self.buffer).await > 0 {
            self.buffer.clear();
        }
    }

    fn step(&mut self) -> Result<Step, BodyError> {
        match self.state {
            BodyState::Done | BodyState::Remaining(0) => {
                self.state = BodyState::Done;
                Ok(Step::End)
            }
            BodyState::Remaining(left) => Ok(self.take_data(left, BodyState::Remaining)),
            BodyState::ChunkData(left) => Ok(self.take_data(left, |rest| match rest {
                0 => BodyState::ChunkEnd,
                rest => BodyState::ChunkData(rest),
            })),
            BodyState::ChunkSize => {
                let Some(line) = self.take_line()? else { return Ok(Step::NeedMore) };
                let size_bytes = parse_chunk_size(&line).ok_or(BodyError::Malformed)?;
                self.state = if size_bytes == 0 { BodyState::Trailers } else { BodyState::ChunkData(size_bytes) };
                Ok(Step::Continue)
            }
            BodyState::ChunkEnd => {
                let Some(line) = self.take_line()? else { return Ok(Step::NeedMore) };
                if !line.is_empty() {
                    return Err(BodyError::Malformed);
                }
                self.state = BodyState::ChunkSize;
                Ok(Step::Continue)
            }
            BodyState::Trailers => {
                let Some(line) = self.take_line()? else { return Ok(Step::NeedMore) };
                if line.is_empty() {
                    self.state = BodyState::Done;
                    return Ok(Step::End);
                }
                Ok(Step::Continue)
            }
        }
    }

    /// Up to `left` body bytes from the buffer; `next` says where the body stands with
    /// `rest` bytes of them still to come.
    fn take_data(&mut self, left: usize, next: impl FnOnce(usize) -> BodyState) -> Step {
        assert!(left > 0, "a body with nothing left has ended");
        if self.buffer.is_empty() {
            return Step::NeedMore;
        }
        let count = left.min(self.buffer.len());
        self.state = next(left - count);
        Step::Data(self.buffer.drain(..count).collect())
    }

    /// One CRLF-terminated line of the chunked coding, without its CRLF.
    fn take_line(&mut self) -> Result<Option<Vec<u8>>, BodyError> {
        match self.buffer.windows(2).position(|pair| pair == b"\r\n") {
            Some(end) if end <= CHUNK_LINE_BYTES_MAX => {
                let line = self.buffer[..end].to_vec();
                self.buffer.drain(..end + 2);
                Ok(Some(line))
            }
            None if self.buffer.len() <= CHUNK_LINE_BYTES_MAX => Ok(None),
            _ => Err(BodyError::Malformed),
        }
    }
}

/// A chunk-size line: hex digits, then optional `;extensions`.
fn parse_chunk_size(line: &[u8]) -> Option<usize> {
    let line = std::str::from_utf8(line).ok()?;
    let digits = line.split(';').next()?.trim();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    usize::from_str_radix(digits, 16).ok()
}

/// Why the requests of a watch stopped.
#[derive(Debug)]
enum RequestError {
    /// The client closed the connection.
    Closed,
    /// The body is not a sequence of WatchRequests; grpc-gateway reports the decoder's
    /// error, a plain Go error, so with code Unknown.
    Invalid(Status),
}

/// The requests (WatchRequests, LeaseKeepAliveRequests) of a streaming body: JSON values
/// one after another, as Go's `json.Decoder` reads them (whitespace between them, none
/// needed after a `}`).
struct JsonRequests<R, M> {
    body: Body<R>,
    /// Body bytes of a request not complete yet, at most `limit_bytes`.
    pending: Vec<u8>,
    limit_bytes: usize,
    _message: std::marker::PhantomData<M>,
}

impl<R: futures_lite::AsyncRead + Unpin, M: serde::de::DeserializeOwned> JsonRequests<R, M> {
    fn new(body: Body<R>, limit_bytes: usize) -> JsonRequests<R, M> {
        JsonRequests { body, pending: Vec::new(), limit_bytes, _message: std::marker::PhantomData }
    }

    /// The next request; None once the body has ended.
    async fn next(&mut self) -> Result<Option<M>, RequestError> {
        loop {
            if let Some(request) = self.take_request()? {
                return Ok(Some(request));
            }
            if self.pending.len() > self.limit_bytes {
                return Err(RequestError::Invalid(crate::api::errors::REQUEST_TOO_LARGE));
            }
            match self.body.next().await {
                Ok(Some(bytes)) => self.pending.extend_from_slice(&bytes),
                Ok(None) if self.pending.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                // The body ended inside a value: the decoder's own error says where.
                Ok(None) => {
                    return match serde_json::from_slice::<M>(&std::mem::take(&mut self.pending)) {
                        Ok(request) => Ok(Some(request)),
                        Err(error) => Err(invalid_request(&error)),
                    };
                }
                Err(BodyError::Closed) => return Err(RequestError::Closed),
                Err(BodyError::Malformed) => {
                    let status = Status::new(Code::Unknown, "malformed chunked encoding");
                    return Err(RequestError::Invalid(status));
                }
                Err(BodyError::TooLarge) => {
                    return Err(RequestError::Invalid(crate::api::errors::REQUEST_TOO_LARGE));
                }
            }
        }
    }

    /// Splits the first complete request off `pending`, if it holds one.
    fn take_request(&mut self) -> Result<Option<M>, RequestError> {
        let mut values = serde_json::Deserializer::from_slice(&self.pending).into_iter::<M>();
        match values.next() {
            Some(Ok(request)) => {
                let used_bytes = values.byte_offset();
                assert!(used_bytes > 0 && used_bytes <= self.pending.len());
                self.pending.drain(..used_bytes);
                Ok(Some(request))
            }
            Some(Err(error)) if error.is_eof() => Ok(None),
            Some(Err(error)) => Err(invalid_request(&error)),
            None => {
                debug_assert!(self.pending.iter().all(u8::is_ascii_whitespace));
                self.pending.clear();
                Ok(None)
            }
        }
    }
}

fn invalid_request(error: &serde_json::Error) -> RequestError {
    RequestError::Invalid(Status::with_message(Code::Unknown, error.to_string()))
}

/// How a watch's reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// The client closed its side: the stream is canceled, as Go cancels the request's context.
    ClientClosed,
    /// A write failed: the client is gone.
    WriteFailed,
    /// The watch stream has no more responses.
    NoMoreResponses,
}

/// POST /v3/watch. As grpc-gateway does, the first request is read before anything is
/// answered, so a body that does not decode gets a plain error reply; after that, requests
/// are handled as they arrive (a bad one ends the reading of requests, not the stream), and
/// responses from this core's watch hub go out one chunk each. The connection ends with
/// the stream; dropping `watch` drops its watchers.
async fn serve_watch<S>(stream: S, buffer: Vec<u8>, head: &Head, core: &Core)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    use futures::FutureExt;
    let (body, mut writer, reply) = stream_halves(stream, buffer, head);
    let mut requests = JsonRequests::<_, WatchRequest>::new(body, body_limit_bytes(core));
    let first = match requests.next().await {
        Ok(first) => first,
        Err(RequestError::Closed) => return,
        Err(RequestError::Invalid(status)) => {
            let _ = write_reply(&mut writer, &Reply::error(&status), false).await;
            return;
        }
    };
    let (watch, mut responses) = core.watch_hub().open_stream();
    if let Some(request) = first {
        watch.handle(request);
    }
    let ended = {
        let receive = receive_requests(&mut requests, &watch).fuse();
        let send = send_responses(&mut writer, &mut responses, || watch.response_sent(), &reply).fuse();
        let progress = notify_progress(&watch, core.watch_progress_interval()).fuse();
        futures::pin_mut!(receive, send, progress);
        futures::select! {
            ended = receive => ended,
            ended = send => ended,
            ended = progress => ended,
        }
    };
    let _ = match ended {
        Ended::ClientClosed => reply.cancel(&mut writer).await,
        Ended::NoMoreResponses => reply.finish(&mut writer).await,
        Ended::WriteFailed => Ok(()),
    };
    drop(watch);
}

/// Hands each request to the watch stream until the body ends or holds something that is
/// not a WatchRequest (grpc-gateway then stops sending, the stream goes on), then waits
/// for the client to close the connection.
async fn receive_requests<R>(requests: &mut JsonRequests<R, WatchRequest>, watch: &WatchStream) -> Ended
where
    R: futures_lite::AsyncRead + Unpin,
{
    loop {
        watch.room_for_requests().await;
        match requests.next().await {
            Ok(Some(request)) => watch.handle(request),
            Ok(None) | Err(RequestError::Invalid(_)) => break,
            Err(RequestError::Closed) => return Ended::ClientClosed,
        }
        glommio::yield_if_needed().await;
    }
    requests.pending.clear();
    requests.body.wait_closed().await;
    Ended::ClientClosed
}

/// Writes each response of a stream as one line `{"result": ...}`, calling `sent` after
/// taking each one.
async fn send_responses<W, T>(
    writer: &mut W,
    responses: &mut (impl futures::Stream<Item = T> + Unpin),
    sent: impl Fn(),
    reply: &StreamReply,
) -> Ended
where
    W: futures_lite::AsyncWrite + Unpin,
    T: serde::Serialize,
{
    use futures::StreamExt;
    while let Some(response) = responses.next().await {
        sent();
        if reply.write(writer, &result_line(&response)).await.is_err() {
            return Ended::WriteFailed;
        }
    }
    Ended::NoMoreResponses
}

/// One response of a stream as grpc-gateway writes it: `{"result": ...}` and a newline.
fn result_line<T: serde::Serialize>(response: &T) -> Vec<u8> {
    let mut line = Vec::with_capacity(256);
    line.extend_from_slice(b"{\"result\":");
    serde_json::to_writer(&mut line, response).expect("generated serde impls never fail");
    line.extend_from_slice(b"}\n");
    line
}

/// POST /v3/lease/keepalive: grpc-gateway's bidirectional stream, as the watch's: each
/// LeaseKeepAliveRequest of the body is answered by one line, in order. A failed keepalive
/// (no leader...) ends the stream with the error; a body that does not decode stops the
/// reading of requests, and the stream lasts until the client closes the connection.
async fn serve_keep_alive<S>(stream: S, buffer: Vec<u8>, head: &Head, core: &Core)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let (body, mut writer, reply) = stream_halves(stream, buffer, head);
    let mut requests =
        JsonRequests::<_, crate::api::pb::etcdserverpb::LeaseKeepAliveRequest>::new(body, body_limit_bytes(core));
    let ended = loop {
        let request = match requests.next().await {
            Ok(Some(request)) => request,
            Ok(None) | Err(RequestError::Invalid(_)) if reply.head_written.get() => {
                requests.body.wait_closed().await;
                break Err(crate::api::errors::CONTEXT_CANCELED);
            }
            Ok(None) => break Ok(()),
            Err(RequestError::Invalid(status)) => break Err(status),
            Err(RequestError::Closed) => break Err(crate::api::errors::CONTEXT_CANCELED),
        };
        match core.lease_keep_alive(request.id).await {
            Ok(response) => {
                if reply.write(&mut writer, &result_line(&response)).await.is_err() {
                    return;
                }
            }
            Err(status) => break Err(status),
        }
    };
    let _ = match ended {
        Ok(()) => reply.finish(&mut writer).await,
        Err(status) => reply.fail(&mut writer, &status).await,
    };
}

/// POST /v3/election/observe: grpc-gateway's server stream. The body is one LeaderRequest;
/// each leader and proclaimed value goes out as one chunk until the client closes the
/// connection, which drops the observer and its watchers.
async fn serve_observe<S>(stream: S, buffer: Vec<u8>, head: &Head, core: &Rc<Core>)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    use futures::FutureExt;
    let (mut body, mut writer, reply) = stream_halves(stream, buffer, head);
    let request = match body.read_to_end(body_limit_bytes(core)).await {
        Ok(bytes) => JsonCodec.decode::<crate::api::pb::v3electionpb::LeaderRequest>(&bytes),
        Err(BodyError::TooLarge) => Err(crate::api::errors::REQUEST_TOO_LARGE),
        Err(BodyError::Closed | BodyError::Malformed) => return,
    };
    let request = match request {
        Ok(request) => request,
        Err(status) => {
            let _ = write_reply(&mut writer, &Reply::error(&status), false).await;
            return;
        }
    };
    let (sender, mut responses) = futures::channel::mpsc::channel(0);
    let observing = core.clone();
    let observer = glommio::spawn_local(async move { observing.observe(request, sender).await });
    let ended = {
        let send = send_responses(&mut writer, &mut responses, || {}, &reply).fuse();
        let closed = async {
            body.wait_closed().await;
            Ended::ClientClosed
        }
        .fuse();
        futures::pin_mut!(send, closed);
        futures::select! {
            ended = send => ended,
            ended = closed => ended,
        }
    };
    drop(observer);
    let _ = match ended {
        Ended::ClientClosed => reply.cancel(&mut writer).await,
        Ended::NoMoreResponses => reply.finish(&mut writer).await,
        Ended::WriteFailed => Ok(()),
    };
}

/// etcd's progress_notify, on the same interval as the gRPC Watch.
async fn notify_progress(watch: &WatchStream, interval: std::time::Duration) -> Ended {
    assert!(!interval.is_zero(), "a progress interval of zero would spin");
    loop {
        glommio::timer::sleep(interval).await;
        watch.notify_progress();
    }
}

/// A gateway request body's limit: the gRPC path's, as grpc-gateway forwards the body as one
/// gRPC message.
fn body_limit_bytes(core: &Core) -> usize {
    core.max_request_bytes() + crate::api::grpc::GRPC_OVERHEAD_BYTES
}

/// A streaming endpoint's connection: its request body, the writer, and the reply that
/// streams to it.
fn stream_halves<S>(
    stream: S,
    buffer: Vec<u8>,
    head: &Head,
) -> (Body<futures::io::ReadHalf<S>>, futures::io::WriteHalf<S>, StreamReply)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let (reader, writer) = futures::io::AsyncReadExt::split(stream);
    let reply = StreamReply { chunked: head.http_1_1, head_written: Cell::new(false) };
    (Body::new(reader, buffer, head.framing), writer, reply)
}

/// The streamed 200 reply of a watch. Its head goes out with the first chunk, as Go's
/// net/http sends it: until then, the reply can still be a plain error.
struct StreamReply {
    /// Chunked transfer coding (HTTP/1.1); an HTTP/1.0 reply is raw lines until the close.
    chunked: bool,
    head_written: Cell<bool>,
}

impl StreamReply {
    fn head(&self) -> &'static [u8] {
        if self.chunked {
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        }
    }

    /// Writes one chunk (the head first, if it has not gone out).
    async fn write<W: futures_lite::AsyncWrite + Unpin>(&self, writer: &mut W, payload: &[u8]) -> std::io::Result<()> {
        assert!(!payload.is_empty(), "an empty chunk would end the reply");
        let mut out = Vec::with_capacity(payload.len() + 160);
        if !self.head_written.get() {
            out.extend_from_slice(self.head());
        }
        if self.chunked {
            out.extend_from_slice(format!("{:x}\r\n", payload.len()).as_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(payload);
        }
        writer.write_all(&out).await?;
        writer.flush().await?;
        self.head_written.set(true);
        Ok(())
    }

    /// The end of the reply: its head if nothing went out yet, and the last chunk.
    async fn finish<W: futures_lite::AsyncWrite + Unpin>(&self, writer: &mut W) -> std::io::Result<()> {
        if !self.head_written.replace(true) {
            writer.write_all(self.head()).await?;
        }
        if self.chunked {
            writer.write_all(b"0\r\n\r\n").await?;
        }
        writer.flush().await
    }

    /// grpc-gateway's end of a stream whose client went away: see `fail`.
    async fn cancel<W: futures_lite::AsyncWrite + Unpin>(&self, writer: &mut W) -> std::io::Result<()> {
        self.fail(writer, &crate::api::errors::CONTEXT_CANCELED).await
    }

    /// grpc-gateway's end of a stream with an error: a plain error reply if no response
    /// went out yet, otherwise one last chunk with its stream-error object (no newline
    /// after it), then the end of the reply.
    async fn fail<W: futures_lite::AsyncWrite + Unpin>(&self, writer: &mut W, status: &Status) -> std::io::Result<()> {
        if !self.head_written.get() {
            return write_reply(writer, &Reply::error(status), false).await;
        }
        self.write(writer, &stream_error(status)).await?;
        self.finish(writer).await
    }
}

/// grpc-gateway's error object inside a stream, its fields in grpc-gateway's order:
/// `{"error":{"grpc_code":1,"http_code":408,"message":"...","http_status":"..."}}`.
fn stream_error(status: &Status) -> Vec<u8> {
    let http_code = status.code.http_status();
    let message = serde_json::to_string(status.message.as_ref()).expect("a string serializes");
    let http_status = serde_json::to_string(reason_phrase(http_code)).expect("a string serializes");
    format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{http_code},\"message\":{message},\"http_status\":{http_status}}}}}",
        status.code as u8
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that yields one byte per read, so every split of the input is exercised.
    struct Trickle(Vec<u8>, usize);

    impl futures_lite::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            out: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let Trickle(bytes, position) = &mut *self;
            let count = usize::from(*position < bytes.len() && !out.is_empty());
            out[..count].copy_from_slice(&bytes[*position..*position + count]);
            *position += count;
            std::task::Poll::Ready(Ok(count))
        }
    }

    fn body(input: &str, framing: Framing) -> Body<Trickle> {
        Body::new(Trickle(input.as_bytes().to_vec(), 0), Vec::new(), framing)
    }

    fn read_all(input: &str, framing: Framing) -> (Result<Bytes, BodyError>, Vec<u8>) {
        let mut body = body(input, framing);
        let read = futures_lite::future::block_on(body.read_to_end(1024));
        (read, body.into_buffer())
    }

    #[test]
    fn a_chunked_body_is_decoded_across_any_split() {
        let input = "4;name=value\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let (read, rest) = read_all(input, Framing::Chunked);
        assert_eq!(read.unwrap(), Bytes::from_static(b"Wikipedia in\r\n\r\nchunks."));
        assert!(rest.is_empty(), "the next request is not read before it is needed");
    }

    #[test]
    fn a_length_body_leaves_the_next_request_in_the_buffer() {
        let mut body = Body::new(Trickle(Vec::new(), 0), b"{}GET /".to_vec(), Framing::Length(2));
        let read = futures_lite::future::block_on(body.read_to_end(1024));
        assert_eq!(read.unwrap(), Bytes::from_static(b"{}"));
        assert_eq!(body.into_buffer(), b"GET /");
    }

    #[test]
    fn broken_bodies_are_refused() {
        assert_eq!(read_all("zz\r\nab\r\n0\r\n\r\n", Framing::Chunked).0, Err(BodyError::Malformed));
        assert_eq!(read_all("2\r\nabc\r\n0\r\n\r\n", Framing::Chunked).0, Err(BodyError::Malformed));
        assert_eq!(read_all("5\r\nab", Framing::Chunked).0, Err(BodyError::Closed));
        assert_eq!(read_all("ab", Framing::Length(5)).0, Err(BodyError::Closed));
        assert_eq!(read_all("", Framing::Length(2048)).0, Err(BodyError::TooLarge));
        assert_eq!(read_all("400\r\n", Framing::Chunked).0.map(|_| ()), Err(BodyError::Closed));
        let long_line = format!("{}\r\n", "0".repeat(CHUNK_LINE_BYTES_MAX + 1));
        assert_eq!(read_all(&long_line, Framing::Chunked).0, Err(BodyError::Malformed));
        assert_eq!(parse_chunk_size(b"1F"), Some(31));
        assert_eq!(parse_chunk_size(b""), None);
        assert_eq!(parse_chunk_size(b"ffffffffffffffff"), None);
    }

    fn requests(input: &str) -> Vec<Result<Option<WatchRequest>, String>> {
        let framing = Framing::Length(input.len());
        let mut requests = JsonRequests::<_, WatchRequest>::new(body(input, framing), 64);
        let mut seen = Vec::new();
        futures_lite::future::block_on(async {
            loop {
                let next = requests.next().await;
                let last = !matches!(next, Ok(Some(_)));
                seen.push(next.map_err(|error| format!("{error:?}")));
                if last {
                    return;
                }
            }
        });
        seen
    }

    #[test]
    fn requests_are_json_values_one_after_another() {
        let seen = requests(r#" {"create_request":{"key":"YQ=="}}{"progress_request":{}}  {} "#);
        assert_eq!(seen.len(), 4, "{seen:?}");
        let create = seen[0].as_ref().unwrap().as_ref().unwrap();
        assert!(
            matches!(&create.request_union, Some(crate::api::pb::etcdserverpb::watch_request::RequestUnion::CreateRequest(c)) if c.key == b"a")
        );
        assert_eq!(seen[2], Ok(Some(WatchRequest::default())));
        assert_eq!(seen[3], Ok(None));
        assert_eq!(requests("   "), [Ok(None)]);
    }

    #[test]
    fn a_body_that_is_not_requests_is_invalid() {
        for input in ["{not json", r#"{"create_request":"#, "[1]"] {
            let seen = requests(input);
            assert_eq!(seen.len(), 1, "{input}: {seen:?}");
            assert!(seen[0].as_ref().unwrap_err().starts_with("Invalid("), "{input}: {seen:?}");
        }
        let endless = format!(r#"{{"create_request":{{"key":"{}"#, "Q".repeat(80));
        let seen = requests(&endless);
        assert!(seen[0].as_ref().unwrap_err().contains("request is too large"), "{seen:?}");
    }

    #[test]
    fn a_stream_error_has_grpc_gateways_field_order() {
        let error = String::from_utf8(stream_error(&crate::api::errors::CONTEXT_CANCELED)).unwrap();
        let expected = format!(
            r#"{{"error":{{"grpc_code":1,"http_code":{code},"message":"context canceled","http_status":"{reason}"}}}}"#,
            code = Code::Canceled.http_status(),
            reason = reason_phrase(Code::Canceled.http_status())
        );
        assert_eq!(error, expected);
    }
}
