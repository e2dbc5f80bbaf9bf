//! The plain HTTP endpoints beside `/ws`.

use serde_json::json;

use crate::common::{TestApp, assert_ack, http_get};

pub async fn healthz_answers_200(app: &TestApp) {
    let (status, _, _) = http_get(app.port, "/healthz").await;
    assert_eq!(status, 200, "the database answers, so /healthz is 200");
}

pub async fn metrics_expose_connection_and_frame_counters_as_prometheus_text(app: &TestApp) {
    // Some traffic first, so that the counters exist; the connection stays open meanwhile.
    let mut client = app.client().await;
    let reply = client.request(json!({"msgid": 99})).await;
    assert_ack(&reply, 99, 400);
    let mut alice = app.user("alice").await;
    let bob = app.registered("bob").await;
    alice.chat_ok(bob, "counted").await;

    let (status, head, body) = http_get(app.port, "/metrics").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-type: text/plain"),
        "Prometheus text: {head}"
    );
    assert!(body.lines().any(|l| l.starts_with("# TYPE ")), "{body}");
    let names: Vec<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(' '))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    assert!(
        names.iter().any(|n| n.contains("connection")),
        "a connection metric: {body}"
    );
    assert!(
        names.iter().any(|n| n.contains("frame")),
        "a frame metric: {body}"
    );
    // The counters registered once and reused (telemetry::frames_out, frames_in, replies_ok)
    // count.
    for series in [
        "chat_frames_out_total{msgid=\"ack\"}",
        "chat_frames_in_total{msgid=\"one_chat\"}",
        "chat_replies_total{errno=\"0\"}",
    ] {
        let count = body
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert!(count.is_some_and(|c| c >= 1.0), "{series}: {body}");
    }
}
