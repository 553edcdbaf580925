//! The HTTP/1.1 JSON gateway on the client port: etcd's `/v3/...` paths with the protobuf
//! JSON mapping (pbjson: proto field names, 64-bit integers as strings, bytes as base64),
//! plus `/health` and `/version`. Errors have grpc-gateway's shape:
//! `{"error": msg, "message": msg, "code": grpc_code}`.

use std::rc::Rc;

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::api::errors::{Code, Status};
use crate::api::service::{self, Codec};
use crate::server::Core;

/// Bounds of one HTTP/1.1 request head; a larger head is refused.
const HEAD_BYTES_MAX: usize = 64 * 1024;
const HEADERS_MAX: usize = 64;

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
    body: Bytes,
}

impl Reply {
    fn error(status: &Status) -> Reply {
        Reply { status_code: status.code.http_status(), body: error_body(status) }
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
/// sends something that is not HTTP. `buffer` holds bytes already read from `stream`.
pub async fn serve<S>(mut stream: S, mut buffer: Vec<u8>, core: Rc<Core>)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    loop {
        let Some((head, body_start)) = read_head(&mut stream, &mut buffer).await else { return };
        let Some(body) = read_body(&mut stream, &mut buffer, body_start, head.content_length_bytes, &core).await else {
            let reply = Reply::error(&crate::api::errors::REQUEST_TOO_LARGE);
            let _ = write_reply(&mut stream, &reply, false).await;
            return;
        };
        let reply = route(&core, &head.method, &head.path, &body).await;
        if write_reply(&mut stream, &reply, head.keep_alive).await.is_err() || !head.keep_alive {
            return;
        }
    }
}

struct Head {
    method: String,
    path: String,
    content_length_bytes: usize,
    keep_alive: bool,
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
    let mut keep_alive = request.version == Some(1);
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            content_length_bytes = std::str::from_utf8(header.value).ok()?.trim().parse().ok()?;
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
            keep_alive = value.contains("keep-alive") || (keep_alive && !value.contains("close"));
        }
    }
    let path = request.path?;
    let path = path.split('?').next().unwrap_or(path).to_owned();
    Some(Head { method: request.method?.to_owned(), path, content_length_bytes, keep_alive })
}

async fn read_body<S: futures_lite::AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    body_start: usize,
    length_bytes: usize,
    core: &Core,
) -> Option<Bytes> {
    if length_bytes > core.max_request_bytes() + crate::api::grpc::GRPC_OVERHEAD_BYTES {
        return None;
    }
    while buffer.len() < body_start + length_bytes {
        if read_more(stream, buffer).await == 0 {
            return None;
        }
    }
    let body = Bytes::copy_from_slice(&buffer[body_start..body_start + length_bytes]);
    buffer.drain(..body_start + length_bytes);
    Some(body)
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

async fn route(core: &Core, method: &str, path: &str, body: &Bytes) -> Reply {
    match (method, path) {
        ("GET", "/health") => health(core),
        ("GET", "/version") => json_reply(200, core.version_json()),
        (_, path) => match service::route_gateway(path) {
            Some(api_method) if method == "POST" => match service::call(core, api_method, body, &JsonCodec).await {
                Ok(body) => Reply { status_code: 200, body },
                Err(status) => Reply::error(&status),
            },
            Some(_) => Reply::error(&Status::new(Code::Unimplemented, "Method Not Allowed")),
            None if service::is_known_gateway_path(path) => {
                Reply::error(&Status::not_implemented(path.rsplit('/').next().unwrap_or(path)))
            }
            None => Reply { status_code: 404, body: error_body(&Status::new(Code::NotFound, "Not Found")) },
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
    Reply { status_code, body: Bytes::from(body.to_string()) }
}

async fn write_reply<S: futures_lite::AsyncWrite + Unpin>(
    stream: &mut S,
    reply: &Reply,
    keep_alive: bool,
) -> std::io::Result<()> {
    let reason = match reply.status_code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        499 => "Client Closed Request",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        reply.status_code,
        reason,
        reply.body.len(),
        connection
    );
    let mut out = Vec::with_capacity(head.len() + reply.body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&reply.body);
    stream.write_all(&out).await?;
    stream.flush().await
}
