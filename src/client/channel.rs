//! One HTTP/2 connection to one endpoint, carrying any number of concurrent unary gRPC calls
//! as streams. A task of its own drives the connection (frame I/O, flow control, PING ACKs):
//! it must keep being polled while calls wait, so it never runs inside a call.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, HeaderValue, Request};

use crate::client::error::{code_from_number, percent_decode, Error};

const PREFIX_BYTES: usize = 5;
/// Windows as ringd's server sets them (and as the prototype measured best for 1 MB values).
const STREAM_WINDOW_BYTES: u32 = 1 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// The largest reply accepted, as grpc-go's default client limit (math.MaxInt32 in etcd's
/// client); bounded so that a broken length prefix cannot make us allocate without limit.
pub const REPLY_BYTES_MAX: usize = 2 << 30;

/// Where to connect: `http://host:port`, `https://host:port` or `host:port` (etcd's
/// --endpoints accepts them all). An https endpoint needs a TLS configuration
/// (`with_tls`) before a channel can connect to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub https: bool,
    pub tls: Option<ClientTls>,
}

/// A client's TLS configuration (`io::tls::client_config`); equal only to itself.
#[derive(Clone)]
pub struct ClientTls(pub std::sync::Arc<rustls::ClientConfig>);

impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ClientTls {}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let text = text.trim();
        if text.starts_with("unix://") || text.starts_with("unixs://") {
            return Err(format!("endpoint {text}: unix sockets are not supported by ringd's client"));
        }
        let https = text.starts_with("https://");
        let address = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://")).unwrap_or(text);
        let address = address.trim_end_matches('/');
        let (host, port) =
            address.rsplit_once(':').ok_or_else(|| format!("endpoint {text}: expected http://host:port"))?;
        let port = port.parse().map_err(|_| format!("endpoint {text}: bad port {port:?}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("endpoint {text}: no host"));
        }
        Ok(Endpoint { host: host.to_owned(), port, https, tls: None })
    }

    /// The endpoint with `tls` to connect with if it is https (an http one ignores it).
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Endpoint {
        if self.https {
            self.tls = tls;
        }
        self
    }

    /// The authority part of request URIs (`host:port`, IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One connection; clone it freely (clones share the connection, as h2's handles do).
#[derive(Clone)]
pub struct Channel {
    send: SendRequest<Bytes>,
    authority: String,
}

impl Channel {
    /// Connects (bounded by `dial_timeout` when it is nonzero) and completes the HTTP/2
    /// handshake. Must run on a glommio executor: the connection task is spawned there.
    pub async fn connect(endpoint: &Endpoint, dial_timeout: Duration) -> Result<Channel, Error> {
        let address = (endpoint.host.as_str(), endpoint.port);
        let connected = if dial_timeout.is_zero() {
            glommio::net::TcpStream::connect(address).await
        } else {
            glommio::net::TcpStream::connect_timeout(address, dial_timeout).await
        };
        let stream = connected.map_err(|error| {
            Error::unavailable(format!("connection error: dial tcp {}: {error}", endpoint.authority()))
        })?;
        let _ = stream.set_nodelay(true);
        if !endpoint.https {
            return Channel::handshake(stream, endpoint).await;
        }
        let Some(ClientTls(config)) = &endpoint.tls else {
            return Err(Error::unavailable(format!(
                "https://{}: no CA to verify the server's certificate with (--cacert)",
                endpoint.authority()
            )));
        };
        let name = crate::io::tls::server_name(&endpoint.host).map_err(Error::unavailable)?;
        let stream =
            crate::io::tls::TlsConnector::from(config.clone()).connect(name, stream).await.map_err(|error| {
                Error::unavailable(format!("connection error: tls handshake with {}: {error}", endpoint.authority()))
            })?;
        Channel::handshake(stream, endpoint).await
    }

    /// HTTP/2 over `stream` (TCP, or TLS over it), and the task that drives the connection.
    async fn handshake<S>(stream: S, endpoint: &Endpoint) -> Result<Channel, Error>
    where
        S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
    {
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .handshake::<_, Bytes>(crate::io::stream::TokioIo::new(stream))
            .await
            .map_err(|error| Error::unavailable(format!("http2 handshake with {}: {error}", endpoint.authority())))?;
        let ping_pong = connection.ping_pong();
        glommio::spawn_local(async move {
            let _ = connection.await;
        })
        .detach();
        // One PING round trip: the connection is up (SETTINGS exchanged, both sides past
        // their first reads) before the first call, as grpc-go's blocking dial guarantees.
        if let Some(mut ping_pong) = ping_pong {
            ping_pong
                .ping(h2::Ping::opaque())
                .await
                .map_err(|error| Error::unavailable(format!("http2 ping to {}: {error}", endpoint.authority())))?;
        }
        Ok(Channel { send, authority: endpoint.authority() })
    }

    /// One unary call: `path` is `/package.Service/Method`.
    pub async fn unary<Q, R>(&self, path: &str, request: &Q) -> Result<R, Error>
    where
        Q: prost::Message,
        R: prost::Message + Default,
    {
        let reply = self.unary_bytes(path, encode(request)).await?;
        R::decode(reply)
            .map_err(|error| Error::internal(format!("grpc: failed to unmarshal the received message: {error}")))
    }

    /// One unary call with an already framed request (prefix + message); returns the
    /// reply message without its prefix.
    pub async fn unary_bytes(&self, path: &str, framed: Bytes) -> Result<Bytes, Error> {
        debug_assert!(framed.len() >= PREFIX_BYTES && path.starts_with('/'));
        let mut send = self.ready().await?;
        let request = grpc_request(&self.authority, path)?;
        let (response, mut body) = send
            .send_request(request, false)
            .map_err(|error| Error::unavailable(format!("send to {}: {error}", self.authority)))?;
        body.send_data(framed, true)
            .map_err(|error| Error::unavailable(format!("send to {}: {error}", self.authority)))?;
        let response =
            response.await.map_err(|error| Error::unavailable(format!("reply from {}: {error}", self.authority)))?;
        if response.status() != http::StatusCode::OK {
            return Err(Error::new(
                crate::api::errors::Code::Unknown,
                format!("unexpected HTTP status code received from server: {}", response.status().as_u16()),
            ));
        }
        if let Some(status) = status_of(response.headers()) {
            return Err(status.unwrap_err());
        }
        read_reply(response.into_body()).await
    }

    /// A handle ready to open one more stream (waits while the server's stream limit is
    /// reached).
    pub(crate) async fn ready(&self) -> Result<SendRequest<Bytes>, Error> {
        self.send
            .clone()
            .ready()
            .await
            .map_err(|error| Error::unavailable(format!("connection to {} closed: {error}", self.authority)))
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }
}

/// A gRPC call's request head: POST of `path` on `authority`. The header values are made
/// once (`from_static`); a `&str` value is validated and copied for every request.
pub(crate) fn grpc_request(authority: &str, path: &str) -> Result<Request<()>, Error> {
    let mut request = Request::post(format!("http://{authority}{path}"))
        .body(())
        .map_err(|error| Error::internal(error.to_string()))?;
    let headers = request.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    Ok(request)
}

/// The error a header block's non-zero `grpc-status` carries, if any.
pub(crate) fn status_error(headers: &HeaderMap) -> Option<Error> {
    status_of(headers).and_then(Result::err)
}

/// Frames a message as gRPC carries it: compressed flag 0, big-endian length, bytes.
pub fn encode(message: &impl prost::Message) -> Bytes {
    let length = message.encoded_len();
    let mut buffer = BytesMut::with_capacity(PREFIX_BYTES + length);
    buffer.put_u8(0);
    buffer.put_u32(length as u32);
    message.encode(&mut buffer).expect("a buffer sized for the message");
    debug_assert_eq!(buffer.len(), PREFIX_BYTES + length);
    buffer.freeze()
}

/// `grpc-status` of a header block: None if absent, Ok for 0, the error otherwise.
fn status_of(headers: &HeaderMap) -> Option<Result<(), Error>> {
    let number = headers.get("grpc-status")?.to_str().ok().and_then(|text| text.parse().ok()).unwrap_or(2);
    if number == 0 {
        return Some(Ok(()));
    }
    let message = headers.get("grpc-message").and_then(|value| value.to_str().ok()).map(percent_decode);
    Some(Err(Error::new(code_from_number(number), message.unwrap_or_default())))
}

async fn read_reply(mut body: h2::RecvStream) -> Result<Bytes, Error> {
    let mut buffer = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|error| Error::unavailable(format!("reading reply: {error}")))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buffer.extend_from_slice(&chunk);
        if buffer.len() > REPLY_BYTES_MAX + PREFIX_BYTES {
            return Err(Error::new(
                crate::api::errors::Code::ResourceExhausted,
                "grpc: received message larger than max",
            ));
        }
    }
    let trailers = body.trailers().await.map_err(|error| Error::unavailable(format!("reading trailers: {error}")))?;
    match trailers.as_ref().and_then(status_of) {
        Some(Ok(())) => {}
        Some(Err(error)) => return Err(error),
        None => return Err(Error::internal("server closed the stream without sending trailers")),
    }
    unframe(buffer.freeze())
}

/// The message inside one gRPC frame; refuses compressed or truncated frames.
fn unframe(mut framed: Bytes) -> Result<Bytes, Error> {
    if framed.len() < PREFIX_BYTES {
        return Err(Error::internal("grpc: reply ended before a message arrived"));
    }
    let compressed = framed.get_u8();
    let length = framed.get_u32() as usize;
    if compressed != 0 {
        return Err(Error::internal("grpc: compressed replies are not supported"));
    }
    if framed.len() != length {
        return Err(Error::internal(format!("grpc: reply holds {} bytes, its prefix says {length}", framed.len())));
    }
    Ok(framed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_as_etcds_flag() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:2379").unwrap(),
            Endpoint { host: "127.0.0.1".into(), port: 2379, https: false, tls: None }
        );
        assert_eq!(Endpoint::parse("localhost:23790").unwrap().authority(), "localhost:23790");
        assert_eq!(Endpoint::parse("http://[::1]:2379/").unwrap().authority(), "[::1]:2379");
        let https = Endpoint::parse("https://localhost:2379").unwrap();
        assert!(https.https && https.tls.is_none());
        assert_eq!(https.authority(), "localhost:2379");
        assert!(Endpoint::parse("unixs://a:1").is_err());
        assert!(Endpoint::parse("127.0.0.1").is_err());
    }

    #[test]
    fn frames_round_trip() {
        let request = crate::api::pb::etcdserverpb::PutRequest { key: b"k".to_vec(), ..Default::default() };
        let framed = encode(&request);
        let message = unframe(framed.clone()).unwrap();
        assert_eq!(message.len(), framed.len() - PREFIX_BYTES);
        assert!(unframe(framed.slice(..framed.len() - 1)).is_err());
    }
}
