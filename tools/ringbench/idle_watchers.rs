//! `ringbench put --idle-watchers N` (a ringd extension): N watchers on keys the load never
//! writes (`ringbench-idle/<i>`), opened on a connection and an executor of their own before
//! the load starts and kept until it ends, so that two runs measure what watchers on other
//! keys cost a put.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringd::api::pb::etcdserverpb as pb;
use ringd::client::{Channel, Endpoint};

/// Watchers per watch stream (etcd's clients multiplex many on one stream).
const WATCHERS_PER_STREAM: usize = 1000;

/// The watchers' thread; dropping it (after the load) closes them.
pub struct IdleWatchers {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl IdleWatchers {
    /// Opens `count` watchers and returns once the server has created every one.
    pub fn open(endpoint: Endpoint, count: usize, dial_timeout: Duration) -> Result<IdleWatchers, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, created) = std::sync::mpsc::channel();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            crate::bench::block_on(move || async move {
                let opened = open_all(&endpoint, count, dial_timeout).await;
                let streams = match opened {
                    Ok(streams) => streams,
                    Err(error) => {
                        let _ = ready.send(Err(error.clone()));
                        return Err(error);
                    }
                };
                let _ = ready.send(Ok(()));
                while !stopping.load(Ordering::Acquire) {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
                drop(streams);
                Ok(())
            })?
        });
        match created.recv() {
            Ok(Ok(())) => Ok(IdleWatchers { stop, thread: Some(thread) }),
            Ok(Err(error)) => Err(format!("idle watchers: {error}")),
            Err(_) => Err("idle watchers: the thread ended before they were created".into()),
        }
    }
}

impl Drop for IdleWatchers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn open_all(
    endpoint: &Endpoint,
    count: usize,
    dial_timeout: Duration,
) -> Result<Vec<ringd::client::WatchStream>, String> {
    let channel = Channel::connect(endpoint, dial_timeout).await.map_err(|error| format!("dial error: {error}"))?;
    let mut streams = Vec::new();
    for first in (0..count).step_by(WATCHERS_PER_STREAM) {
        let mut stream = channel.watch().await.map_err(|error| error.to_string())?;
        let on_stream = WATCHERS_PER_STREAM.min(count - first);
        for index in first..first + on_stream {
            let key = format!("ringbench-idle/{index}").into_bytes();
            stream.create(pb::WatchCreateRequest { key, ..Default::default() }).map_err(|error| error.to_string())?;
        }
        let mut created = 0;
        while created < on_stream {
            match stream.next().await.map_err(|error| error.to_string())? {
                Some(reply) if reply.created && !reply.canceled => created += 1,
                Some(reply) if reply.canceled => return Err(format!("watch refused: {}", reply.cancel_reason)),
                Some(_) => {}
                None => return Err("the watch stream ended".into()),
            }
        }
        streams.push(stream);
    }
    assert_eq!(streams.len(), count.div_ceil(WATCHERS_PER_STREAM));
    Ok(streams)
}
