//! The HTTP surface: `GET /ws` (WebSocket upgrade), `GET /healthz`, `GET /metrics`, and the
//! web page at `/`.

use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::http::{HeaderMap, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tower_http::services::ServeDir;

use crate::app::AppState;
use crate::{limits, telemetry, upgrade, ws};

/// Hard limit on one WebSocket message; past it the connection closes with 1009.
pub const HARD_MESSAGE_LIMIT: usize = 1 << 20;
/// Read buffer per connection: small, so idle connections cost little memory (chat frames are
/// a few hundred bytes; larger ones are read in several steps).
const READ_BUFFER: usize = 512;

/// The router of one replica.
pub fn router(state: AppState) -> Router {
    let web = ServeDir::new(state.config.resolve_web_dir()).append_index_html_on_directories(true);
    Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback_service(web)
        .with_state(state)
}

async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request<Body>,
) -> Response {
    let accepted = match upgrade::accept(&mut request) {
        Ok(accepted) => accepted,
        Err(e) => return e.into_response(),
    };
    if state.connections.open() >= state.config.max_connections {
        limits::hit("connections");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is full; try another\n",
        )
            .into_response();
    }
    let client = client_ip(peer, request.headers());
    // Each frame goes straight to the connection's own gathering buffer (socket.rs), so
    // tungstenite's write buffer never holds more than one frame.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(HARD_MESSAGE_LIMIT))
        .max_frame_size(Some(HARD_MESSAGE_LIMIT));
    accepted.serve(config, move |socket| ws::serve(socket, state, Some(client)))
}

/// The client's address: the peer's, or, behind a proxy on this machine (nginx), the last
/// address it appended to `X-Forwarded-For`.
fn client_ip(peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if peer.ip().is_loopback()
        && let Some(forwarded) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())
        && let Some(last) = forwarded.rsplit(',').next()
        && let Ok(ip) = last.trim().parse()
    {
        return ip;
    }
    peer.ip()
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
    }
}

async fn metrics() -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        telemetry::render_metrics(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_are_trusted_only_from_a_local_proxy() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 10.0.0.7".parse().unwrap());
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        assert_eq!(
            client_ip(local, &headers),
            "10.0.0.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(remote, &headers), remote.ip());
        assert_eq!(client_ip(local, &HeaderMap::new()), local.ip());
    }
}
