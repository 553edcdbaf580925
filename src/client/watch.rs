//! Watch: one bidirectional gRPC stream per `WatchStream`, carrying any number of watchers
//! (as etcd's client multiplexes them). Requests go out as length-prefixed frames on the
//! request body; replies are read frame by frame from the response body. The stream ends
//! with the server's trailers (their status becomes the error) or when dropped.

use bytes::{Buf, Bytes, BytesMut};
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};
use http::Request;

use crate::api::pb::etcdserverpb as pb;
use crate::client::channel::{encode, status_error, Channel};
use crate::client::error::Error;

const PREFIX_BYTES: usize = 5;
/// Largest watch reply accepted (etcd fragments bigger ones when asked; 64 MiB is ample).
const WATCH_REPLY_BYTES_MAX: usize = 64 << 20;

pub struct WatchStream {
    send: SendStream<Bytes>,
    response: Option<ResponseFuture>,
    body: Option<RecvStream>,
    buffer: BytesMut,
}

impl Channel {
    /// Opens a Watch stream on this connection (no watcher yet: see `WatchStream::create`).
    pub async fn watch(&self) -> Result<WatchStream, Error> {
        let mut send = self.ready().await?;
        let request = Request::post(format!("http://{}/etcdserverpb.Watch/Watch", self.authority()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|error| Error::internal(error.to_string()))?;
        let (response, stream) = send
            .send_request(request, false)
            .map_err(|error| Error::unavailable(format!("open watch on {}: {error}", self.authority())))?;
        Ok(WatchStream { send: stream, response: Some(response), body: None, buffer: BytesMut::new() })
    }
}

impl WatchStream {
    pub fn send(&mut self, request: &pb::WatchRequest) -> Result<(), Error> {
        self.send.send_data(encode(request), false).map_err(|error| Error::unavailable(format!("watch send: {error}")))
    }

    /// Asks for a watcher; its id comes back in a reply with `created` set.
    pub fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), Error> {
        self.send(&pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)) })
    }

    /// The next reply; None when the server ended the stream with an OK status.
    pub async fn next(&mut self) -> Result<Option<pb::WatchResponse>, Error> {
        loop {
            if let Some(message) = self.take_frame()? {
                let reply = <pb::WatchResponse as prost::Message>::decode(message).map_err(|error| {
                    Error::internal(format!("grpc: failed to unmarshal the received message: {error}"))
                })?;
                return Ok(Some(reply));
            }
            let body = self.body().await?;
            match body.data().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|error| Error::unavailable(format!("watch stream: {error}")))?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.buffer.extend_from_slice(&chunk);
                }
                None => {
                    let trailers = body
                        .trailers()
                        .await
                        .map_err(|error| Error::unavailable(format!("watch trailers: {error}")))?;
                    return match trailers.as_ref().map(status_error) {
                        Some(Some(error)) => Err(error),
                        _ => Ok(None),
                    };
                }
            }
        }
    }

    async fn body(&mut self) -> Result<&mut RecvStream, Error> {
        if let Some(response) = self.response.take() {
            let response = response.await.map_err(|error| Error::unavailable(format!("watch reply: {error}")))?;
            if let Some(error) = status_error(response.headers()) {
                return Err(error);
            }
            self.body = Some(response.into_body());
        }
        self.body.as_mut().ok_or_else(|| Error::internal("watch stream has no body"))
    }

    /// One whole frame from the buffer, if it holds one.
    fn take_frame(&mut self) -> Result<Option<Bytes>, Error> {
        if self.buffer.len() < PREFIX_BYTES {
            return Ok(None);
        }
        let length = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
        if self.buffer[0] != 0 || length > WATCH_REPLY_BYTES_MAX {
            return Err(Error::internal(format!("watch reply: compressed or {length} bytes long")));
        }
        if self.buffer.len() < PREFIX_BYTES + length {
            return Ok(None);
        }
        self.buffer.advance(PREFIX_BYTES);
        Ok(Some(self.buffer.split_to(length).freeze()))
    }
}
