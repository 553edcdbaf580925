//! The client port: every core binds it (glommio sets SO_REUSEPORT, so the kernel spreads
//! connections over the cores) and sniffs each connection's first bytes: the HTTP/2
//! preface means gRPC, anything else is HTTP/1.1 for the JSON gateway.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};

use crate::server::Core;

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Binds `address` on this core. Called on every core; fails if the port is taken by
/// another process.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address).map_err(|error| io::Error::other(error.to_string()))
}

/// Accepts connections forever, one task per connection.
pub async fn accept_loop(listener: TcpListener, core: Rc<Core>) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(_) => {
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let core = core.clone();
        glommio::spawn_local(async move { serve_connection(stream, core).await }).detach();
    }
}

async fn serve_connection(mut stream: TcpStream, core: Rc<Core>) {
    let _ = stream.set_nodelay(true);
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
