//! Logging (tracing) and metrics (Prometheus text), each set up once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Sets up logging to stderr with the given filter (e.g. `info`).
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

/// Installs the Prometheus recorder (once per process; later calls do nothing).
pub fn install_metrics() {
    PROMETHEUS.get_or_init(|| {
        let handle = PrometheusBuilder::new().install_recorder().ok()?;
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .ok()?;
        describe();
        Some(handle)
    });
}

fn describe() {
    metrics::describe_gauge!("chat_ws_connections", "Open WebSocket connections");
    metrics::describe_gauge!("chat_logged_in_sessions", "Logged-in connections");
    metrics::describe_counter!("chat_frames_in_total", "Frames received, by msgid");
    metrics::describe_counter!("chat_frames_out_total", "Frames sent, by msgid");
    metrics::describe_counter!("chat_replies_total", "Replies sent, by errno");
    metrics::describe_histogram!(
        "chat_db_batch_size",
        "Chat messages per database transaction"
    );
    metrics::describe_histogram!(
        "chat_db_batch_seconds",
        "Time to store and publish one batch"
    );
    metrics::describe_counter!(
        "chat_slow_consumer_disconnects_total",
        "Connections closed because their push queue was full"
    );
}

/// The metrics in Prometheus text format.
pub fn render_metrics() -> String {
    PROMETHEUS
        .get()
        .and_then(|h| h.as_ref())
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}
