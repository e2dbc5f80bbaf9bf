//! The HTTP surface: `GET /ws` (WebSocket upgrade), `GET /healthz`, `GET /metrics`, and the
//! web page at `/`.

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::services::ServeDir;

use crate::app::AppState;
use crate::{telemetry, ws};

/// Hard limit on one WebSocket message; past it the connection closes with 1009.
pub const HARD_MESSAGE_LIMIT: usize = 1 << 20;
/// Read buffer per connection: small, so idle connections cost little memory.
const READ_BUFFER: usize = 4096;

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

async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(READ_BUFFER)
        .max_message_size(HARD_MESSAGE_LIMIT)
        .max_frame_size(HARD_MESSAGE_LIMIT)
        .on_upgrade(move |socket| ws::serve(socket, state))
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
