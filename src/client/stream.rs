//! One bidirectional gRPC stream (Watch, LeaseKeepAlive): requests go out as length-prefixed
//! frames on the request body, replies are read frame by frame from the response body. The
//! stream ends with the server's trailers (their status becomes the error; a trailers-only
//! answer such as UNIMPLEMENTED ends it at once) or, from our side, when dropped: h2 then
//! resets it with CANCEL, as grpc-go does when a call's context is cancelled.

use std::marker::PhantomData;

use bytes::{Buf, Bytes, BytesMut};
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};

use crate::client::channel::{encode, grpc_request, status_error, Channel};
use crate::client::error::Error;

const PREFIX_BYTES: usize = 5;

/// A stream that sends `Q`s and receives `R`s.
pub struct BidiStream<Q, R> {
    send: SendStream<Bytes>,
    response: Option<ResponseFuture>,
    body: Option<RecvStream>,
    buffer: BytesMut,
    /// What the stream is called in error messages ("watch", "lease keepalive").
    name: &'static str,
    reply_bytes_max: usize,
    types: PhantomData<fn(Q) -> R>,
}

impl Channel {
    /// Opens a stream to `path` (`/package.Service/Method`) on this connection; nothing is
    /// sent until the first `send`.
    pub(crate) async fn bidi<Q, R>(
        &self,
        path: &str,
        name: &'static str,
        reply_bytes_max: usize,
    ) -> Result<BidiStream<Q, R>, Error> {
        debug_assert!(path.starts_with('/') && reply_bytes_max > 0);
        let mut send = self.ready().await?;
        let request = grpc_request(self.authority(), path)?;
        let (response, stream) = send
            .send_request(request, false)
            .map_err(|error| Error::unavailable(format!("open {name} on {}: {error}", self.authority())))?;
        Ok(BidiStream {
            send: stream,
            response: Some(response),
            body: None,
            buffer: BytesMut::new(),
            name,
            reply_bytes_max,
            types: PhantomData,
        })
    }
}

impl<Q: prost::Message, R: prost::Message + Default> BidiStream<Q, R> {
    pub fn send(&mut self, request: &Q) -> Result<(), Error> {
        let name = self.name;
        self.send.send_data(encode(request), false).map_err(|error| Error::unavailable(format!("{name} send: {error}")))
    }

    /// The next reply; None when the server ended the stream with an OK status.
    pub async fn next(&mut self) -> Result<Option<R>, Error> {
        let name = self.name;
        loop {
            if let Some(message) = self.take_frame()? {
                let reply = R::decode(message).map_err(|error| {
                    Error::internal(format!("grpc: failed to unmarshal the received message: {error}"))
                })?;
                return Ok(Some(reply));
            }
            let body = self.body().await?;
            match body.data().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|error| Error::unavailable(format!("{name} stream: {error}")))?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.buffer.extend_from_slice(&chunk);
                }
                None => {
                    let trailers = body
                        .trailers()
                        .await
                        .map_err(|error| Error::unavailable(format!("{name} trailers: {error}")))?;
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
            let name = self.name;
            let response = response.await.map_err(|error| Error::unavailable(format!("{name} reply: {error}")))?;
            if let Some(error) = status_error(response.headers()) {
                return Err(error);
            }
            self.body = Some(response.into_body());
        }
        let name = self.name;
        self.body.as_mut().ok_or_else(|| Error::internal(format!("{name} stream has no body")))
    }

    /// One whole frame from the buffer, if it holds one.
    fn take_frame(&mut self) -> Result<Option<Bytes>, Error> {
        if self.buffer.len() < PREFIX_BYTES {
            return Ok(None);
        }
        let length = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
        if self.buffer[0] != 0 || length > self.reply_bytes_max {
            return Err(Error::internal(format!("{} reply: compressed or {length} bytes long", self.name)));
        }
        if self.buffer.len() < PREFIX_BYTES + length {
            return Ok(None);
        }
        self.buffer.advance(PREFIX_BYTES);
        let message = self.buffer.split_to(length).freeze();
        debug_assert_eq!(message.len(), length);
        Ok(Some(message))
    }
}
