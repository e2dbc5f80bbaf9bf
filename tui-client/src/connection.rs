//! The WebSocket task: connects with tokio-tungstenite, feeds every frame to a [`Session`]
//! (reqid matching, re-login, catch-up, resends, de-duplication), writes what it answers, pings
//! an idle server, and reconnects with exponential backoff and jitter when the link drops.
//!
//! The app talks to it through a [`Connection`] handle and receives [`ConnEvent`]s.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{self, Message, protocol::CloseFrame};

use crate::protocol::Request;
pub use crate::session::{ConnEvent, LinkStatus};
use crate::session::{Output, Session};

/// Exponential backoff between reconnection attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay between retries.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(15),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based): `initial · 2^(attempt-1)`, capped at
    /// `max`, then scaled by `0.5 + jitter/2` (`jitter` in 0..1) so that clients spread out.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let base = self.initial.saturating_mul(1u32 << exp).min(self.max);
        base.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// How the connection task behaves.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// The server's WebSocket URL (`ws://host:port/ws`).
    pub url: String,
    /// Delays between reconnection attempts.
    pub backoff: Backoff,
    /// Longest wait for the WebSocket handshake.
    pub connect_timeout: Duration,
    /// How often to ping the server.
    pub ping_every: Duration,
    /// Silence after which the server is taken for dead and the link dropped.
    pub idle_timeout: Duration,
}

impl ConnectionConfig {
    /// Defaults for a URL: backoff 250 ms … 15 s, 10 s handshake, ping every 20 s, dead after
    /// 60 s of silence.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectionConfig {
            url: url.into(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            ping_every: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Why the link went down.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The WebSocket could not be opened.
    #[error("cannot connect: {}", plain(.0))]
    Connect(#[source] tungstenite::Error),
    /// The handshake took too long.
    #[error("cannot connect: no answer within {0:?}")]
    ConnectTimeout(Duration),
    /// Reading or writing failed.
    #[error("connection lost: {}", plain(.0))]
    Io(#[source] tungstenite::Error),
    /// The server closed the connection.
    #[error("the server closed the connection{}", close_words(.0))]
    Closed(Option<CloseFrame>),
    /// The server stopped answering pings.
    #[error("the server stopped answering for {0:?}")]
    Idle(Duration),
    /// Logging back in failed for a passing reason.
    #[error("logging back in failed; trying again")]
    Relogin,
}

/// A WebSocket error in plain words.
fn plain(e: &tungstenite::Error) -> String {
    use std::io::ErrorKind;
    match e {
        tungstenite::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => "connection refused (is the server running?)".into(),
            ErrorKind::ConnectionReset => "connection reset by the server".into(),
            ErrorKind::TimedOut => "timed out".into(),
            ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe => "the server went away".into(),
            _ => io.to_string(),
        },
        tungstenite::Error::Http(response) => format!(
            "the server answered HTTP {} instead of a WebSocket (check the URL's path)",
            response.status()
        ),
        tungstenite::Error::Url(u) => format!("bad URL: {u}"),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            "the connection is closed".into()
        }
        other => other.to_string(),
    }
}

/// ` (code N: reason)` for a close frame.
fn close_words(frame: &Option<CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!(" (code {})", u16::from(f.code)),
        Some(f) => format!(" (code {}: {})", u16::from(f.code), f.reason),
        None => String::new(),
    }
}

/// What the app asks of the task.
#[derive(Debug)]
enum Command {
    /// Send a request (queued while the link is down).
    Send(Request),
    /// Close the link and end the task.
    Shutdown,
}

/// The app's handle on the connection task. Dropping it ends the task.
#[derive(Debug)]
pub struct Connection {
    /// Commands to the task.
    commands: mpsc::UnboundedSender<Command>,
    /// The task, awaited by [`Connection::close`].
    task: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Starts the task on the current tokio runtime; events arrive on the returned receiver.
    pub fn spawn(config: ConnectionConfig) -> (Connection, mpsc::UnboundedReceiver<ConnEvent>) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(config, command_rx, event_tx));
        (Connection { commands, task }, events)
    }

    /// Sends a request (its reply comes back as [`ConnEvent::Reply`]).
    pub fn send(&self, request: Request) {
        let _ = self.commands.send(Command::Send(request));
    }

    /// Asks the task to close the link and end, without waiting.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }

    /// Closes the link (a Close frame to the server) and waits up to two seconds for the task.
    pub async fn close(self) {
        self.shutdown();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// How one connected period ended.
enum End {
    /// The app asked to stop (or went away).
    Shutdown,
    /// The link dropped.
    Lost(LinkError),
}

/// A random txnid prefix for this process.
fn txn_prefix() -> String {
    format!("tui-{:016x}", rand::random::<u64>())
}

/// The task: connect, drive, reconnect, until shut down.
async fn run(
    config: ConnectionConfig,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<ConnEvent>,
) {
    let mut session = Session::new(txn_prefix());
    let mut attempt: u32 = 0;
    loop {
        let _ = events.send(ConnEvent::Status(LinkStatus::Connecting { attempt }));
        let opened = tokio::time::timeout(
            config.connect_timeout,
            tokio_tungstenite::connect_async(config.url.as_str()),
        )
        .await;
        let error = match opened {
            Ok(Ok((ws, _))) => {
                tracing::info!(url = %config.url, "connected");
                let _ = events.send(ConnEvent::Status(LinkStatus::Connected));
                let started = Instant::now();
                let end = drive(ws, &mut session, &mut commands, &events, &config).await;
                emit(&events, session.disconnected());
                if started.elapsed() > Duration::from_secs(10) {
                    attempt = 0;
                }
                match end {
                    End::Shutdown => return,
                    End::Lost(e) => e,
                }
            }
            Ok(Err(e)) => LinkError::Connect(e),
            Err(_) => LinkError::ConnectTimeout(config.connect_timeout),
        };
        attempt += 1;
        let delay = config.backoff.delay(attempt, rand::random::<f64>());
        tracing::warn!(error = %error, attempt, ?delay, "link down");
        let _ = events.send(ConnEvent::Status(LinkStatus::Reconnecting {
            attempt,
            delay,
            reason: error.to_string(),
        }));
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                cmd = commands.recv() => match cmd {
                    Some(Command::Send(r)) => emit(&events, session.submit(r)),
                    Some(Command::Shutdown) | None => return,
                },
            }
        }
    }
}

/// Hands a step's events to the app.
fn emit(events: &mpsc::UnboundedSender<ConnEvent>, out: Output) {
    for e in out.events {
        let _ = events.send(e);
    }
}

/// Runs one open WebSocket until it drops or the app stops.
async fn drive<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    session: &mut Session,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &mpsc::UnboundedSender<ConnEvent>,
    config: &ConnectionConfig,
) -> End
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let mut ping = tokio::time::interval(config.ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let mut out = session.connected();
    loop {
        for frame in std::mem::take(&mut out.frames) {
            tracing::debug!(frame = %redact(&frame), "send");
            if let Err(e) = sink.feed(Message::Text(frame.into())).await {
                return End::Lost(LinkError::Io(e));
            }
        }
        if let Err(e) = sink.flush().await {
            return End::Lost(LinkError::Io(e));
        }
        let reconnect = out.reconnect;
        emit(events, std::mem::take(&mut out));
        if reconnect {
            let _ = sink.close().await;
            return End::Lost(LinkError::Relogin);
        }
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Send(r)) => out = session.submit(r),
                Some(Command::Shutdown) | None => {
                    let _ = sink.send(Message::Close(None)).await;
                    return End::Shutdown;
                }
            },
            frame = stream.next() => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        tracing::debug!(frame = %text.as_str(), "recv");
                        out = session.receive(text.as_str());
                    }
                    Some(Ok(Message::Close(frame))) => return End::Lost(LinkError::Closed(frame)),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return End::Lost(LinkError::Io(e)),
                    None => return End::Lost(LinkError::Closed(None)),
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= config.idle_timeout {
                    return End::Lost(LinkError::Idle(config.idle_timeout));
                }
                if let Err(e) = sink.send(Message::Ping(Vec::new().into())).await {
                    return End::Lost(LinkError::Io(e));
                }
            }
        }
    }
}

/// A frame for the log with any password masked.
fn redact(frame: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(frame) {
        Ok(mut v) if v.get("password").is_some() => {
            v["password"] = serde_json::json!("***");
            v.to_string()
        }
        _ => frame.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_between_half_and_full() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(5, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(500, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(50));
    }

    #[test]
    fn passwords_are_masked_in_logged_frames() {
        let f = r#"{"msgid":1,"id":1,"password":"hunter2"}"#;
        assert!(!redact(f).contains("hunter2"));
        assert_eq!(redact(r#"{"msgid":14}"#), r#"{"msgid":14}"#);
    }

    #[test]
    fn close_frames_are_described_in_plain_words() {
        let e = LinkError::Closed(Some(CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Away,
            reason: "bye".into(),
        }));
        assert_eq!(
            e.to_string(),
            "the server closed the connection (code 1001: bye)"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retried_with_backoff_and_requests_wait() {
        // Port 1 on loopback refuses connections.
        let mut config = ConnectionConfig::new("ws://127.0.0.1:1/ws");
        config.backoff = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
        };
        let (conn, mut events) = Connection::spawn(config);
        conn.send(Request::FriendList);
        let mut attempts = Vec::new();
        while attempts.len() < 3 {
            match events.recv().await.unwrap() {
                ConnEvent::Status(LinkStatus::Reconnecting {
                    attempt, reason, ..
                }) => {
                    assert_eq!(
                        reason,
                        "cannot connect: connection refused (is the server running?)"
                    );
                    attempts.push(attempt);
                }
                ConnEvent::Status(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(attempts, vec![1, 2, 3]);
        conn.shutdown();
    }
}
