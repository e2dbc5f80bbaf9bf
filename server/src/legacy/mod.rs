//! The legacy listener: the original course's TCP protocol (msgid JSON objects, each followed by
//! a NUL byte) for the C++ `ChatClient`, unchanged, on `--legacy-listen`. See `docs/legacy.md`.
//!
//! It is a second transport over the same service layer as [`crate::ws`]: the same handlers,
//! hub, bus, presence and offline messages, so a TCP user and a WebSocket user chat with each
//! other, on any replica. Only the wire differs:
//! - [`framing`]: a streaming reader (any number of objects per read, objects split across reads,
//!   NUL or whitespace between them, oversized objects skipped);
//! - [`shape`]: replies and pushes in the original shapes (login reply with nested JSON strings,
//!   `time` as `YYYY-MM-DD hh:mm:ss`), no replies where the original client reads none;
//! - [`conn`]: the per-connection loop (the original client cannot de-duplicate or catch up, so
//!   the server does it for it);
//! - [`sends`]: a connection's chat sends in flight, resent after a 503;
//! - [`tracker`]: what a session was handed, for de-duplication and gap detection.

pub mod conn;
pub mod framing;
pub mod sends;
pub mod shape;
pub mod tracker;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::app::AppState;
use crate::limits;

/// How long shutdown waits for legacy connections to end before aborting them.
const DRAIN: Duration = Duration::from_secs(5);

/// Binds the legacy listener. SO_KEEPALIVE is set on it so that accepted sockets inherit it:
/// the original client sends nothing while idle and cannot answer pings, so dead peers are
/// found by TCP keepalive (the kernel's timings), not by an idle timeout.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_keepalive(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts legacy connections until the server shuts down, then waits for them to end.
pub async fn serve(listener: TcpListener, state: AppState) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "legacy TCP listener (original client protocol)");
    }
    let mut stop = state.shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopping(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if conns.len() >= state.config.max_connections {
                        limits::hit("connections");
                        tracing::debug!(%peer, "legacy connection refused: this replica is full");
                        continue;
                    }
                    let id = state.next_conn_id();
                    let span = tracing::info_span!("legacy", conn = id, %peer);
                    conns.spawn(conn::serve(stream, peer, id, state.clone()).instrument(span));
                }
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!("legacy accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => log_panic(done),
        }
    }
    drop(listener);
    // Connections end on the same signal; give them a moment.
    let drained = tokio::time::timeout(DRAIN, async {
        while let Some(done) = conns.join_next().await {
            log_panic(done);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "legacy connections still open at shutdown"
        );
        conns.shutdown().await;
    }
}

/// Resolves once the server is shutting down.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!("a legacy connection task panicked: {e}");
    }
}
