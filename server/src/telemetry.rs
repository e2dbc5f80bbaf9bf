//! Logging (tracing) and metrics (Prometheus text), each set up once per process.

use std::sync::OnceLock;

use metrics::Counter;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::protocol::msgid;

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

/// `chat_frames_out_total` of the frames of msgid `id` (unknown ids: `other`). The counters are
/// registered at the first call (after [`install_metrics`]) and reused: `metrics::counter!`
/// builds and looks its key up at each call, 4 % of a busy replica's CPU for two frames a message.
pub fn frames_out(id: i64) -> &'static Counter {
    static COUNTERS: OnceLock<Vec<Counter>> = OnceLock::new();
    of_msgid(
        COUNTERS.get_or_init(|| per_msgid("chat_frames_out_total")),
        id,
    )
}

/// What came in, as `chat_frames_in_total` counts it.
#[derive(Debug, Clone, Copy)]
pub enum FrameIn {
    /// A request of this msgid (unknown ids: `other`).
    Request(i64),
    /// A text frame that is not a request.
    Malformed,
    /// A binary frame.
    Binary,
}

/// `chat_frames_in_total` of one incoming frame, registered once (see [`frames_out`]).
pub fn frames_in(frame: FrameIn) -> &'static Counter {
    static COUNTERS: OnceLock<(Vec<Counter>, Counter, Counter)> = OnceLock::new();
    let (requests, malformed, binary) = COUNTERS.get_or_init(|| {
        (
            per_msgid("chat_frames_in_total"),
            metrics::counter!("chat_frames_in_total", "msgid" => "malformed"),
            metrics::counter!("chat_frames_in_total", "msgid" => "binary"),
        )
    });
    match frame {
        FrameIn::Request(id) => of_msgid(requests, id),
        FrameIn::Malformed => malformed,
        FrameIn::Binary => binary,
    }
}

/// One counter of `name` per msgid of the protocol, labelled by [`msgid::label`].
fn per_msgid(name: &'static str) -> Vec<Counter> {
    (0..=msgid::RESYNC)
        .map(|id| metrics::counter!(name, "msgid" => msgid::label(id)))
        .collect()
}

/// The counter of msgid `id` among [`per_msgid`]'s (unknown ids: the first, labelled `other`).
fn of_msgid(counters: &[Counter], id: i64) -> &Counter {
    usize::try_from(id)
        .ok()
        .and_then(|i| counters.get(i))
        .unwrap_or(&counters[0])
}

/// `chat_replies_total` of successful replies (errno 0), registered once (see [`frames_out`]).
pub fn replies_ok() -> &'static Counter {
    static COUNTER: OnceLock<Counter> = OnceLock::new();
    COUNTER.get_or_init(|| metrics::counter!("chat_replies_total", "errno" => "0"))
}

/// The metrics in Prometheus text format.
pub fn render_metrics() -> String {
    PROMETHEUS
        .get()
        .and_then(|h| h.as_ref())
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}
