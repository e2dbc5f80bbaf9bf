//! The socket loop: one task per WebSocket connection, reading requests, writing replies in
//! request order and pushes from a bounded queue.
//!
//! Chat sends are pipelined (many in flight, replies still in order); any other request first
//! waits for the sends before it, so a client sees its requests take effect in order. Replies
//! apply backpressure (the next request is read only when the socket has room); pushes that find
//! the queue full close the connection with 1008.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use crate::app::AppState;
use crate::error::ServiceError;
use crate::hub::ConnHandle;
use crate::protocol::{self, Request, msgid};
use crate::service::{self, Payload, Session};

/// Chat sends one connection may have in flight.
const MAX_IN_FLIGHT: usize = 256;
/// Messages written before a flush.
const WRITE_BURST: usize = 64;

/// Close code: going away (server shutdown).
const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: policy violation (too slow a reader).
const CLOSE_POLICY: u16 = 1008;
/// Close code: message too big (past 1 MiB).
const CLOSE_TOO_BIG: u16 = 1009;

type Reply = Pin<Box<dyn Future<Output = String> + Send>>;

/// Serves one upgraded WebSocket until it closes.
pub async fn serve(socket: WebSocket, state: AppState) {
    let counted = state.clone();
    let _live = counted.connections.enter();
    let conn = state.next_conn_id();
    let (tx, push_rx) = mpsc::channel(state.config.outbound_queue.max(1));
    let overflow = Arc::new(Notify::new());
    let connection = Connection {
        handle: ConnHandle::new(conn, tx, overflow.clone()),
        session: Session::new(conn),
        socket,
        push_rx,
        overflow,
        in_flight: FuturesOrdered::new(),
        state,
    };
    connection.run().await;
}

struct Connection {
    socket: WebSocket,
    state: AppState,
    session: Session,
    handle: ConnHandle,
    push_rx: mpsc::Receiver<Arc<str>>,
    overflow: Arc<Notify>,
    in_flight: FuturesOrdered<Reply>,
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
        let end = loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.changed() => Err(End::Close(CLOSE_GOING_AWAY, "server shutting down")),
                _ = self.overflow.notified() => Err(End::Close(CLOSE_POLICY, "too slow: outbound queue full")),
                Some(reply) = self.in_flight.next(), if !self.in_flight.is_empty() => self.write_replies(reply).await,
                Some(push) = self.push_rx.recv() => self.write_pushes(push).await,
                incoming = self.socket.recv(), if self.in_flight.len() < MAX_IN_FLIGHT => match incoming {
                    None | Some(Ok(Message::Close(_))) => Err(End::Gone),
                    Some(Ok(Message::Text(text))) => self.on_text(text).await,
                    Some(Ok(Message::Binary(_))) => {
                        self.queue_ready(protocol::error_frame(None, 400, "binary frames are not supported; send JSON text"));
                        Ok(())
                    }
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(too_big_or_gone(&e)),
                },
            };
            if let Err(end) = step {
                break end;
            }
        };
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                self.socket.send(Message::Close(Some(frame))),
            )
            .await;
        }
        service::end_session(&self.state, &mut self.session).await;
    }

    /// Reads one request; its reply is queued in order.
    async fn on_text(&mut self, text: Utf8Bytes) -> Result<(), End> {
        let text = text.as_str();
        if text.len() > self.state.config.max_frame {
            count_in("too_large");
            let reqid = protocol::sniff_reqid(text);
            let err = ServiceError::TooLarge(self.state.config.max_frame);
            self.queue_ready(protocol::error_frame(reqid, err.errno(), &err.to_string()));
            return Ok(());
        }
        let envelope = match protocol::decode(text) {
            Ok(env) => env,
            Err(m) => {
                count_in("malformed");
                self.queue_ready(protocol::error_frame(m.reqid, 400, &m.reason));
                return Ok(());
            }
        };
        let id = envelope.msgid;
        count_in(msgid::label(id));
        let reqid = match &envelope.reqid {
            Ok(r) => *r,
            Err(reason) => {
                let reason = reason.clone();
                self.queue_ready(reply_text(id, None, Err(ServiceError::BadRequest(reason))));
                return Ok(());
            }
        };
        if !protocol::is_client_request(id) {
            let err =
                ServiceError::BadRequest(format!("msgid {id} is not a request a client can send"));
            self.queue_ready(reply_text(id, reqid, Err(err)));
            return Ok(());
        }
        if self.session.user.is_none() && !protocol::allowed_anonymous(id) {
            self.queue_ready(reply_text(id, reqid, Err(ServiceError::NotLoggedIn)));
            return Ok(());
        }
        let request = match envelope.into_request() {
            Ok(r) => r,
            Err(e) => {
                self.queue_ready(reply_text(id, reqid, Err(e)));
                return Ok(());
            }
        };
        match request {
            Request::Chat { target, msg, txnid } => {
                match service::submit_chat(&self.state, &self.session, target, msg, txnid).await {
                    Ok(rx) => self.in_flight.push_back(Box::pin(async move {
                        let outcome = match rx.await {
                            Ok(outcome) => outcome.map(|ack| service::chat_ack_payload(&ack)),
                            Err(_) => Err(ServiceError::Unavailable(
                                "the message pipeline stopped".into(),
                            )),
                        };
                        reply_text(id, reqid, outcome)
                    })),
                    Err(e) => self.queue_ready(reply_text(id, reqid, Err(e))),
                }
            }
            other => {
                // Everything before this request takes effect first.
                while let Some(reply) = self.in_flight.next().await {
                    self.write_replies(reply).await?;
                }
                if matches!(other, Request::Logout) {
                    self.fresh_push_queue();
                }
                let outcome =
                    service::handle(&self.state, &mut self.session, &self.handle, other).await;
                self.queue_ready(reply_text(id, reqid, outcome));
            }
        }
        Ok(())
    }

    /// Queues an already-built reply behind the ones in flight.
    fn queue_ready(&mut self, reply: String) {
        self.in_flight
            .push_back(Box::pin(std::future::ready(reply)));
    }

    /// After logout, pushes queued for the old session are dropped.
    fn fresh_push_queue(&mut self) {
        let (tx, rx) = mpsc::channel(self.state.config.outbound_queue.max(1));
        self.handle = ConnHandle::new(self.handle.id, tx, self.overflow.clone());
        self.push_rx = rx;
    }

    /// Writes `first` and every other reply already finished, then flushes.
    async fn write_replies(&mut self, first: String) -> Result<(), End> {
        self.feed(first).await?;
        for _ in 1..WRITE_BURST {
            let Some(Some(next)) = futures_util::FutureExt::now_or_never(self.in_flight.next())
            else {
                break;
            };
            self.feed(next).await?;
        }
        self.socket.flush().await.map_err(|_| End::Gone)
    }

    /// Writes `first` and every other push already queued, then flushes.
    async fn write_pushes(&mut self, first: Arc<str>) -> Result<(), End> {
        self.feed_push(&first).await?;
        for _ in 1..WRITE_BURST {
            let Ok(next) = self.push_rx.try_recv() else {
                break;
            };
            self.feed_push(&next).await?;
        }
        self.socket.flush().await.map_err(|_| End::Gone)
    }

    async fn feed(&mut self, text: String) -> Result<(), End> {
        count_out(&text);
        self.socket
            .feed(Message::Text(text.into()))
            .await
            .map_err(|_| End::Gone)
    }

    async fn feed_push(&mut self, frame: &str) -> Result<(), End> {
        count_out(frame);
        self.socket
            .feed(Message::Text(frame.into()))
            .await
            .map_err(|_| End::Gone)
    }
}

/// A read error: frames past the hard limit close with 1009, anything else ends the loop.
fn too_big_or_gone(e: &axum::Error) -> End {
    let text = e.to_string();
    if text.contains("too long")
        || text.contains("too big")
        || text.contains("Space limit")
        || text.contains("capacity")
    {
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
    let mut head = protocol::reply_head(request_msgid, reqid, errno, &errmsg);
    head.extend(payload);
    Value::Object(head).to_string()
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

fn count_in(label: &'static str) {
    metrics::counter!("chat_frames_in_total", "msgid" => label).increment(1);
}

/// Counts an outgoing frame by the msgid it starts with.
fn count_out(frame: &str) {
    let id = frame
        .find("\"msgid\":")
        .and_then(|at| {
            let rest = &frame[at + 8..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end].parse::<i64>().ok()
        })
        .unwrap_or(0);
    metrics::counter!("chat_frames_out_total", "msgid" => msgid::label(id)).increment(1);
}
