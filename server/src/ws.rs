//! The socket loop: one task per WebSocket connection, reading requests, writing replies in
//! request order and pushes from a bounded queue.
//!
//! Chat sends are pipelined (many in flight, replies still in order); any other request first
//! waits for the sends before it, so a client sees its requests take effect in order. Replies
//! apply backpressure (the next request is read only when the socket has room). The connection
//! is closed when its push queue overflows or a write stays blocked past the idle timeout (1008,
//! a reader that does not read), when nothing arrives for the idle timeout although the server
//! pings (1001, a dead peer), when it keeps exceeding its request rate (1008), and at shutdown
//! (1001).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::app::AppState;
use crate::error::ServiceError;
use crate::hub::{ConnHandle, Overflow};
use crate::limits::{self, RequestRate};
use crate::presence::Departure;
use crate::protocol::{self, Incoming, Request};
use crate::replies::Replies;
use crate::service::{self, Payload, Session};
use crate::socket::{self, Socket};
use crate::telemetry::{self, FrameIn};

/// Chat sends one connection may have in flight.
const MAX_IN_FLIGHT: usize = 256;
/// Messages written before a flush.
const WRITE_BURST: usize = 64;

/// Close code: going away (shutdown, dead peer).
const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: policy violation (not reading, abusing the rate limit).
const CLOSE_POLICY: u16 = 1008;
/// Close code: message too big (past 1 MiB).
const CLOSE_TOO_BIG: u16 = 1009;

/// Serves one upgraded WebSocket from `peer` until it closes.
pub async fn serve(socket: Socket, state: AppState, peer: Option<IpAddr>) {
    let counted = state.clone();
    let _live = counted.connections.enter();
    let conn = state.next_conn_id();
    let (tx, push_rx) = mpsc::channel(state.config.outbound_queue.max(1));
    let overflow = Arc::new(Overflow::default());
    let idle = Duration::from_secs(state.config.idle_timeout);
    let connection = Connection {
        handle: ConnHandle::new(conn, tx, overflow.clone()),
        session: Session::new(conn, peer),
        rate: RequestRate::per_second(state.config.rate_per_connection),
        limited_in_a_row: 0,
        last_heard: Instant::now(),
        heard: false,
        idle,
        socket,
        push_rx,
        overflow,
        replies: Replies::new(state.config.request_time_limit()),
        state,
    };
    connection.run().await;
}

struct Connection {
    socket: Socket,
    state: AppState,
    session: Session,
    handle: ConnHandle,
    push_rx: mpsc::Receiver<Arc<str>>,
    overflow: Arc<Overflow>,
    /// Replies in request order (rendered, or chat acks to come).
    replies: Replies,
    /// This connection's request rate, and its user's.
    rate: RequestRate,
    /// Requests refused for rate in a row (reset by an accepted one).
    limited_in_a_row: u32,
    /// When the client was last known to have sent anything (frames, pongs): read at each
    /// ping tick from `heard`, not from the clock at every frame.
    last_heard: Instant,
    /// Whether anything arrived since the last ping tick.
    heard: bool,
    /// Idle timeout (zero: none).
    idle: Duration,
}

/// Why the loop ends.
enum End {
    /// The peer closed or the socket failed.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

impl Connection {
    async fn run(mut self) {
        let mut shutdown = self.state.shutdown.clone();
        let ping_every = if self.idle.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.idle / 3
        };
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        // Made once: a fresh `changed()` each turn registered and dropped a waiter per frame.
        let shutting_down = shutdown.changed();
        tokio::pin!(shutting_down);
        let end = loop {
            if self.overflow.is_set() {
                break not_reading();
            }
            let step = tokio::select! {
                biased;
                _ = &mut shutting_down => Err(End::Close(CLOSE_GOING_AWAY, "server shutting down")),
                _ = ping.tick() => self.ping().await,
                Some(reply) = self.replies.next(), if !self.replies.is_empty() => self.write_burst(Out::Reply(reply)).await,
                Some(push) = self.push_rx.recv() => self.write_burst(Out::Push(push)).await,
                incoming = self.socket.next(), if self.replies.len() < MAX_IN_FLIGHT => {
                    self.heard = true;
                    match incoming {
                        None | Some(Ok(Message::Close(_))) => Err(End::Gone),
                        Some(Ok(Message::Text(text))) => Box::pin(self.on_text(text)).await,
                        Some(Ok(Message::Binary(_))) => {
                            telemetry::frames_in(FrameIn::Binary).increment(1);
                            let err = ServiceError::BadRequest("binary frames are not supported; send JSON text".into());
                            self.queue_ready(error_text(None, &err));
                            Ok(())
                        }
                        Some(Ok(_)) => Ok(()),
                        Some(Err(e)) => Err(too_big_or_gone(&e)),
                    }
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code: code.into(),
                reason: Utf8Bytes::from_static(reason),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.socket.send(Message::Close(Some(frame))),
            )
            .await;
            // Read (and drop) what the client still sends, until its closing frame: a socket
            // closed with unread input is reset, and the client may lose our close frame.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(Ok(message)) = self.socket.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        Box::pin(service::end_session(
            &self.state,
            &mut self.session,
            Departure::Dropped,
        ))
        .await;
    }

    /// Pings the client, or ends a connection silent for the idle timeout.
    async fn ping(&mut self) -> Result<(), End> {
        if self.idle.is_zero() {
            return Ok(());
        }
        if std::mem::take(&mut self.heard) {
            // Late by at most a tick, so a silent peer is dropped at worst a third of the
            // timeout after it, never before.
            self.last_heard = Instant::now();
        }
        if self.last_heard.elapsed() > self.idle {
            limits::hit("idle");
            return Err(End::Close(CLOSE_GOING_AWAY, "idle timeout"));
        }
        let ping = self.socket.send(Message::Ping(Default::default()));
        guarded(&self.overflow, self.idle, ping).await
    }

    /// Reads one request; its reply is queued in order.
    async fn on_text(&mut self, text: Utf8Bytes) -> Result<(), End> {
        let user = self.session.user.as_ref().map(|u| u.id);
        let incoming =
            protocol::read_request(text.as_str(), self.state.config.max_frame, user.is_some());
        if !self.rate.allow(&self.state.user_rate, user) {
            self.limited_in_a_row += 1;
            if self.limited_in_a_row > self.state.config.abuse_close_after {
                return Err(End::Close(CLOSE_POLICY, "request rate limit exceeded"));
            }
            let err = ServiceError::RateLimited("too many requests; slow down".into());
            let reply = match incoming {
                Incoming::Request { msgid, reqid, .. } => reply_text(msgid, reqid, Err(err)),
                Incoming::Refused {
                    msgid: Some(msgid),
                    reqid,
                    ..
                } => reply_text(msgid, reqid, Err(err)),
                Incoming::Refused {
                    msgid: None, reqid, ..
                } => error_text(reqid, &err),
            };
            self.queue_ready(reply);
            return Ok(());
        }
        self.limited_in_a_row = 0;
        let (id, reqid, request) = match incoming {
            Incoming::Request {
                msgid,
                reqid,
                request,
            } => (msgid, reqid, request),
            Incoming::Refused {
                msgid,
                reqid,
                error,
            } => {
                if let ServiceError::TooLarge(_) = error {
                    limits::hit("frame_size");
                }
                telemetry::frames_in(msgid.map_or(FrameIn::Malformed, FrameIn::Request))
                    .increment(1);
                let reply = match msgid {
                    Some(m) => reply_text(m, reqid, Err(error)),
                    None => error_text(reqid, &error),
                };
                self.queue_ready(reply);
                return Ok(());
            }
        };
        telemetry::frames_in(FrameIn::Request(id)).increment(1);
        match request {
            Request::Chat { target, msg, txnid } => {
                let submitted = Box::pin(service::submit_chat(
                    &self.state,
                    &self.session,
                    target,
                    msg,
                    txnid,
                ));
                match submitted.await {
                    Ok(ack) => self.replies.push_chat(id, reqid, ack),
                    Err(e) => self.queue_ready(reply_text(id, reqid, Err(e))),
                }
            }
            other => {
                // Everything before this request takes effect first.
                while let Some(reply) = self.replies.next().await {
                    self.write_burst(Out::Reply(reply)).await?;
                }
                if matches!(other, Request::Logout) {
                    self.fresh_push_queue();
                }
                let outcome =
                    service::handle_within(&self.state, &mut self.session, &self.handle, other)
                        .await;
                self.queue_ready(reply_text(id, reqid, outcome));
            }
        }
        Ok(())
    }

    /// Queues an already-built reply behind the ones in flight.
    fn queue_ready(&mut self, reply: String) {
        self.replies.push_ready(reply);
    }

    /// After logout, pushes queued for the old session are dropped.
    fn fresh_push_queue(&mut self) {
        let (tx, rx) = mpsc::channel(self.state.config.outbound_queue.max(1));
        self.handle = ConnHandle::new(self.handle.id, tx, self.overflow.clone());
        self.push_rx = rx;
    }

    /// Writes `first`, then every reply already finished and every push already queued (up
    /// to a burst; replies first), then flushes once: an ack and a push ready at the same time
    /// (a batch's outcome reaches senders and recipients together) leave in one write.
    async fn write_burst(&mut self, first: Out) -> Result<(), End> {
        let mut counted = OutCount::of(first.text());
        let mut written = self.feed(first.into_frames()).await;
        for _ in 1..WRITE_BURST {
            if written.is_err() {
                break;
            }
            let next = match self.replies.try_next() {
                Some(reply) => Out::Reply(reply),
                None => match self.push_rx.try_recv() {
                    Ok(push) => Out::Push(push),
                    Err(_) => break,
                },
            };
            counted.add(next.text());
            written = self.feed(next.into_frames()).await;
        }
        counted.flush();
        written?;
        guarded(&self.overflow, self.idle, self.socket.flush()).await
    }

    /// Writes the frames of one message.
    async fn feed(&mut self, frames: socket::TextFrames) -> Result<(), End> {
        for frame in frames {
            guarded(&self.overflow, self.idle, self.socket.feed(frame)).await?;
        }
        Ok(())
    }
}

/// A message on its way out.
enum Out {
    /// A reply to one of the connection's requests.
    Reply(String),
    /// A push, shared by every connection it goes to.
    Push(Arc<str>),
}

impl Out {
    fn text(&self) -> &str {
        match self {
            Out::Reply(text) => text,
            Out::Push(text) => text,
        }
    }

    fn into_frames(self) -> socket::TextFrames {
        match self {
            Out::Reply(text) => socket::text_frames(text),
            Out::Push(text) => socket::shared_text_frames(text),
        }
    }
}

/// A write that gives up when the push queue overflows or the write stays blocked for the idle
/// timeout: both mean the client is not reading.
async fn guarded(
    overflow: &Overflow,
    idle: Duration,
    write: impl Future<Output = Result<(), WsError>>,
) -> Result<(), End> {
    // Most writes finish at once (the socket takes the bytes): no timer, no waiter for those.
    let mut write = std::pin::pin!(write);
    if let Poll::Ready(written) =
        std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await
    {
        return written.map_err(|_| End::Gone);
    }
    let stuck = async {
        if idle.is_zero() {
            std::future::pending::<()>().await
        } else {
            tokio::time::sleep(idle).await
        }
    };
    tokio::select! {
        written = write => written.map_err(|_| End::Gone),
        _ = overflow.notified() => Err(not_reading()),
        _ = stuck => {
            limits::hit("write_stuck");
            Err(not_reading())
        }
    }
}

fn not_reading() -> End {
    End::Close(CLOSE_POLICY, "too slow: not reading")
}

/// A read error: frames past the hard limit close with 1009, anything else ends the loop.
fn too_big_or_gone(e: &WsError) -> End {
    if let WsError::Capacity(_) = e {
        limits::hit("frame_size");
        End::Close(CLOSE_TOO_BIG, "message larger than 1 MiB")
    } else {
        End::Gone
    }
}

/// The reply to request `request_msgid`: success with its payload, or the error's errno.
pub fn reply_text(
    request_msgid: i64,
    reqid: Option<i64>,
    outcome: Result<Payload, ServiceError>,
) -> String {
    let (errno, errmsg, payload) = match outcome {
        Ok(p) => (0, String::new(), p),
        Err(e) => (e.errno(), e.to_string(), Payload::new()),
    };
    metrics::counter!("chat_replies_total", "errno" => errno_label(errno)).increment(1);
    protocol::reply_frame(
        protocol::reply_head(request_msgid, reqid, errno, &errmsg),
        payload,
    )
}

/// ERROR_MSG for a frame that is not a request.
fn error_text(reqid: Option<i64>, error: &ServiceError) -> String {
    metrics::counter!("chat_replies_total", "errno" => errno_label(error.errno())).increment(1);
    protocol::error_frame(reqid, error.errno(), &error.to_string())
}

fn errno_label(errno: i64) -> &'static str {
    match errno {
        0 => "0",
        1 => "1",
        2 => "2",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

/// Counts a burst of outgoing frames by msgid: one update of the shared counter per run of
/// frames of the same msgid (a burst is mostly pushes, or mostly acks), not one per frame.
struct OutCount {
    msgid: i64,
    frames: u64,
}

impl OutCount {
    /// Starts with `frame`.
    fn of(frame: &str) -> Self {
        OutCount {
            msgid: msgid_of(frame),
            frames: 1,
        }
    }

    /// Counts `frame`.
    fn add(&mut self, frame: &str) {
        let msgid = msgid_of(frame);
        if msgid != self.msgid {
            self.flush();
            self.msgid = msgid;
        }
        self.frames += 1;
    }

    /// Adds the frames counted so far to the counter of their msgid.
    fn flush(&mut self) {
        if self.frames > 0 {
            telemetry::frames_out(self.msgid).increment(self.frames);
            self.frames = 0;
        }
    }
}

/// The msgid of a frame the server wrote (0 when it has none).
fn msgid_of(frame: &str) -> i64 {
    const KEY: &str = "\"msgid\":";
    // Pushes and chat acks start with their msgid; other replies (keys sorted) are searched.
    let rest = match frame.strip_prefix('{').and_then(|f| f.strip_prefix(KEY)) {
        Some(rest) => Some(rest),
        None => frame.find(KEY).map(|at| &frame[at + KEY.len()..]),
    };
    rest.and_then(|rest| {
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse::<i64>().ok()
    })
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outgoing_frame_is_counted_by_its_msgid_wherever_it_is() {
        assert_eq!(msgid_of(r#"{"msgid":6,"message_id":1,"msg":"x"}"#), 6);
        assert_eq!(msgid_of(r#"{"reqid":3,"msgid":11,"errno":0}"#), 11);
        assert_eq!(msgid_of(r#"{ "msgid":21}"#), 21);
        assert_eq!(msgid_of(r#"{"msgid":"6"}"#), 0);
        assert_eq!(msgid_of("not json"), 0);
        assert_eq!(msgid_of(r#"{"msgid":"#), 0);
    }
}
