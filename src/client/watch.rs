//! Watch: one bidirectional gRPC stream per `WatchStream`, carrying any number of watchers
//! (as etcd's client multiplexes them). See stream.rs for the framing and how a stream ends.

use crate::api::pb::etcdserverpb as pb;
use crate::client::channel::Channel;
use crate::client::error::Error;
use crate::client::stream::BidiStream;

/// Largest watch reply accepted (etcd fragments bigger ones when asked; 64 MiB is ample).
const WATCH_REPLY_BYTES_MAX: usize = 64 << 20;

pub struct WatchStream {
    stream: BidiStream<pb::WatchRequest, pb::WatchResponse>,
}

impl Channel {
    /// Opens a Watch stream on this connection (no watcher yet: see `WatchStream::create`).
    pub async fn watch(&self) -> Result<WatchStream, Error> {
        let stream = self.bidi(crate::client::path::WATCH, "watch", WATCH_REPLY_BYTES_MAX).await?;
        Ok(WatchStream { stream })
    }
}

impl WatchStream {
    pub fn send(&mut self, request: &pb::WatchRequest) -> Result<(), Error> {
        self.stream.send(request)
    }

    /// Asks for a watcher; its id comes back in a reply with `created` set.
    pub fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), Error> {
        self.send(&pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)) })
    }

    /// The next reply; None when the server ended the stream with an OK status.
    pub async fn next(&mut self) -> Result<Option<pb::WatchResponse>, Error> {
        self.stream.next().await
    }
}
