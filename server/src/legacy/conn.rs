//! One legacy TCP connection: reads original-format requests, hands them to the service layer,
//! writes original-shaped replies and pushes, each as one JSON object and one NUL byte.
//!
//! Ordering and backpressure are those of [`crate::ws`]: chat sends are pipelined, any other
//! request first waits for the sends before it, and the next bytes are read only when fewer
//! than [`MAX_IN_FLIGHT`] sends are pending. Pushes come through the same bounded queue; a full
//! queue closes the connection.
//!
//! What the server does here because the original client cannot:
//! - chat sends carry a server-made txnid and are resent after a 503 (stored but not
//!   published), so they complete like a clusterchat client's resends;
//! - pushes are de-duplicated by `message_id`, and a gap in a conversation's `seq` is filled
//!   from history before the push that revealed it;
//! - RESYNC_MSG (pushes were missed while Redis was away) triggers a catch-up from the unread
//!   backlog instead of being forwarded;
//! - what was handed over moves the user's read cursor, contiguously, so that the next login's
//!   `offlinemsg` holds only what this client has not shown (as the original's offline table);
//! - objects are spaced [`SPACING`] apart, because the original client reads one object per
//!   `recv` and would lose the second of two that arrive together.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::framing::{DropReason, Dropped, Framer, Item};
use super::sends::{self, ChatSend, Resending, Sends, Sent};
use super::shape;
use super::tracker::{Arrival, ChatRef, Tracker};
use crate::app::AppState;
use crate::delivery::ChatAck;
use crate::error::ServiceError;
use crate::http::HARD_MESSAGE_LIMIT;
use crate::hub::{ConnHandle, ConnId, Overflow};
use crate::limits::RequestRate;
use crate::presence::Departure;
use crate::protocol::{self, ChatView, HISTORY_MAX_LIMIT, HistoryPage, Request, Target, msgid};
use crate::service::{self, Session};

/// Bytes read from the socket at a time.
const READ_BUFFER: usize = 4096;
/// Chat sends one connection may have in flight.
const MAX_IN_FLIGHT: usize = 256;
/// Least time between two objects written to one connection (see the module doc).
pub const SPACING: Duration = Duration::from_millis(10);
/// A write that makes no progress for this long means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a chat send answered with 503.
const SEND_ATTEMPTS: u32 = 5;
/// Dropped inputs logged one by one per connection; further ones are only counted.
const LOGGED_DROPS: u64 = 20;
/// History pages (of [`HISTORY_MAX_LIMIT`]) read at most to fill one gap: as many messages as
/// `offlinemsg` offers per conversation; a larger gap is filled further by the next push.
const GAP_PAGES: usize = 1;
/// How long the last read-cursor writes of a session may take when it ends.
const CURSOR_FLUSH: Duration = Duration::from_secs(5);

/// Serves one accepted connection from `peer` until it closes.
pub async fn serve(stream: TcpStream, peer: SocketAddr, conn: ConnId, state: AppState) {
    let _gauge = Gauge::open();
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
    let (reader, writer) = stream.into_split();
    let (tx, push_rx) = mpsc::channel(state.config.outbound_queue.max(1));
    let overflow = Arc::new(Overflow::default());
    let connection = Connection {
        framer: Framer::new(state.config.max_frame, HARD_MESSAGE_LIMIT),
        handle: ConnHandle::new(conn, tx, overflow.clone()),
        session: Session::new(conn, Some(peer.ip())),
        rate: RequestRate::per_second(state.config.rate_per_connection),
        limited_in_a_row: 0,
        reader,
        writer,
        push_rx,
        overflow,
        sends: Sends::new(state.config.request_time_limit()),
        login: None,
        next_write: Instant::now(),
        drops: 0,
        txn_prefix: format!("legacy-{:016x}", rand::random::<u64>()),
        txn_count: 0,
        state,
    };
    tracing::debug!("legacy connection open");
    connection.run().await;
}

/// Counts open legacy connections in the `chat_legacy_connections` gauge.
struct Gauge;

impl Gauge {
    fn open() -> Gauge {
        metrics::gauge!("chat_legacy_connections").increment(1.0);
        Gauge
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::gauge!("chat_legacy_connections").decrement(1.0);
    }
}

struct Connection {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    framer: Framer,
    state: AppState,
    session: Session,
    handle: ConnHandle,
    push_rx: mpsc::Receiver<Arc<str>>,
    overflow: Arc<Overflow>,
    /// Chat sends not yet acked, in request order.
    sends: Sends,
    /// This connection's request rate.
    rate: RequestRate,
    /// Requests refused for rate in a row (reset by an accepted one).
    limited_in_a_row: u32,
    /// Set while a user is logged in.
    login: Option<LoggedIn>,
    /// When the next object may be written ([`SPACING`]).
    next_write: Instant,
    /// Inputs dropped so far.
    drops: u64,
    /// Makes this connection's txnids unique: `legacy-<random>-<n>`.
    txn_prefix: String,
    txn_count: u64,
}

/// What a logged-in session keeps.
struct LoggedIn {
    tracker: Tracker,
    cursors: Cursors,
}

/// Why the loop ends.
#[derive(Debug)]
enum End {
    /// The peer closed, or the socket failed.
    Gone,
    /// The server is shutting down.
    Shutdown,
    /// The push queue overflowed.
    TooSlow,
    /// An object grew past the hard limit.
    TooBig,
    /// The client kept exceeding its request rate.
    Abuse,
}

impl Connection {
    async fn run(mut self) {
        let mut shutdown = self.state.shutdown.clone();
        let mut buf = vec![0u8; READ_BUFFER];
        let end = loop {
            // A flag, as in the WebSocket loop: an overflowed queue is full, so this loop has
            // pushes to take and comes back here.
            if self.overflow.is_set() {
                break End::TooSlow;
            }
            let (state, session) = (&self.state, &self.session);
            let step = tokio::select! {
                biased;
                _ = super::stopping(&mut shutdown) => Err(End::Shutdown),
                Some(sent) = self.sends.next(|send| resends(state, session, send)),
                    if !self.sends.is_empty() => {
                    self.on_sent(sent);
                    Ok(())
                }
                Some(push) = self.push_rx.recv() => self.on_push(&push).await,
                read = self.reader.read(&mut buf), if self.sends.len() < MAX_IN_FLIGHT => {
                    match read {
                        Ok(0) | Err(_) => Err(End::Gone),
                        Ok(n) => self.on_bytes(&buf[..n]).await,
                    }
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        match end {
            End::Gone | End::Shutdown => tracing::debug!(?end, "legacy connection closed"),
            End::TooSlow => {
                tracing::info!("legacy connection closed: too slow, its push queue was full")
            }
            End::TooBig => tracing::info!(
                "legacy connection closed: an object grew past {HARD_MESSAGE_LIMIT} bytes"
            ),
            End::Abuse => tracing::info!("legacy connection closed: request rate limit exceeded"),
        }
        if self.drops > LOGGED_DROPS {
            tracing::info!(dropped = self.drops, "inputs dropped on this connection");
        }
        // The resume token of a login reply the original client never sees: revoke it.
        if let Some(hash) = self.session.token_hash.take()
            && let Err(e) = self.state.store.delete_token(&hash).await
        {
            tracing::debug!("revoking a legacy session's token: {e}");
        }
        service::end_session(&self.state, &mut self.session, Departure::Dropped).await;
        if let Some(login) = self.login.take() {
            login.cursors.close().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
    }

    /// Reads bytes: every complete object is handled in order.
    async fn on_bytes(&mut self, data: &[u8]) -> Result<(), End> {
        let mut items = Vec::new();
        let fed = self.framer.feed(data, &mut items);
        for item in items {
            match item {
                Item::Object(bytes) => self.on_object(&bytes).await?,
                Item::Dropped(d) => self.on_dropped(d).await?,
            }
        }
        fed.map_err(|_| End::TooBig)
    }

    async fn on_dropped(&mut self, d: Dropped) -> Result<(), End> {
        let head = String::from_utf8_lossy(&d.head);
        if d.reason == DropReason::TooLarge {
            // A login or registration must be answered, or the original client waits forever.
            if let Some(id) = shape::sniff_msgid(&head) {
                let e = ServiceError::TooLarge(self.state.config.max_frame);
                if let Some(reply) = shape::error_reply(id, &e) {
                    self.drop_input(d.reason.label(), format_args!("{} bytes", d.len));
                    return self.write(&reply).await;
                }
            }
        }
        self.drop_input(
            d.reason.label(),
            format_args!("{} bytes: {}", d.len, head.escape_debug()),
        );
        Ok(())
    }

    /// Handles one object.
    async fn on_object(&mut self, bytes: &[u8]) -> Result<(), End> {
        if !self.rate.allow(
            &self.state.user_rate,
            self.session.user.as_ref().map(|u| u.id),
        ) {
            self.limited_in_a_row += 1;
            if self.limited_in_a_row > self.state.config.abuse_close_after {
                return Err(End::Abuse);
            }
            let e = ServiceError::RateLimited("too many requests; slow down".into());
            let sniffed = std::str::from_utf8(bytes).ok().and_then(shape::sniff_msgid);
            if let Some(reply) = sniffed.and_then(|id| shape::error_reply(id, &e)) {
                return self.write(&reply).await;
            }
            self.drop_input("rate_limited", format_args!("{e}"));
            return Ok(());
        }
        self.limited_in_a_row = 0;
        let Ok(text) = std::str::from_utf8(bytes) else {
            self.drop_input("not_utf8", format_args!("{} bytes", bytes.len()));
            return Ok(());
        };
        let envelope = match protocol::decode(text) {
            Ok(envelope) => envelope,
            Err(m) => {
                let e = ServiceError::BadRequest(m.reason);
                if let Some(reply) =
                    shape::sniff_msgid(text).and_then(|id| shape::error_reply(id, &e))
                {
                    return self.write(&reply).await;
                }
                self.drop_input("malformed", format_args!("{e}"));
                return Ok(());
            }
        };
        let id = envelope.msgid;
        metrics::counter!("chat_legacy_frames_in_total", "msgid" => msgid::label(id)).increment(1);
        if !shape::is_original_request(id) {
            self.drop_input(
                "unknown_msgid",
                format_args!("msgid {id} is not a request of the original protocol"),
            );
            return Ok(());
        }
        if self.session.user.is_none() && !protocol::allowed_anonymous(id) {
            self.drop_input("not_logged_in", format_args!("msgid {id} before login"));
            return Ok(());
        }
        let request = match envelope.into_request() {
            Ok(request) => request,
            Err(e) => {
                return match shape::error_reply(id, &e) {
                    Some(reply) => self.write(&reply).await,
                    None => {
                        self.drop_input("invalid", format_args!("msgid {id}: {e}"));
                        Ok(())
                    }
                };
            }
        };
        match request {
            Request::Chat { target, msg, txnid } => {
                self.send_chat(target, msg, txnid).await;
                Ok(())
            }
            other => {
                // Everything before this request takes effect first.
                loop {
                    let (state, session) = (&self.state, &self.session);
                    let Some(sent) = self.sends.next(|send| resends(state, session, send)).await
                    else {
                        break;
                    };
                    self.on_sent(sent);
                }
                match other {
                    Request::Login { .. } => self.login(other).await,
                    Request::Logout => {
                        self.logout().await;
                        Ok(())
                    }
                    Request::Register { .. } => {
                        let outcome = self.service(other).await;
                        self.write(&shape::reg_reply(&outcome)).await
                    }
                    other => {
                        // ADD_FRIEND, CREATE_GROUP, ADD_GROUP: the original client reads no
                        // reply; failures are logged.
                        if let Err(e) = self.service(other).await {
                            tracing::info!(
                                user = self.user_id(),
                                msgid = id,
                                errno = e.errno(),
                                "legacy request refused: {e}"
                            );
                        }
                        Ok(())
                    }
                }
            }
        }
    }

    /// A request through the service layer, answered 503 past the request timeout.
    async fn service(&mut self, request: Request) -> Result<service::Payload, ServiceError> {
        service::handle_within(&self.state, &mut self.session, &self.handle, request).await
    }

    fn user_id(&self) -> i64 {
        self.session.user.as_ref().map_or(0, |u| u.id)
    }

    /// Queues a chat send of the session's user (never of the request's `id`).
    async fn send_chat(&mut self, target: Target, msg: String, txnid: Option<String>) {
        let txnid = txnid.unwrap_or_else(|| {
            self.txn_count += 1;
            format!("{}-{}", self.txn_prefix, self.txn_count)
        });
        match service::submit_chat(
            &self.state,
            &self.session,
            target,
            msg.clone(),
            Some(txnid.clone()),
        )
        .await
        {
            Ok(ack) => self.sends.push(ChatSend { target, msg, txnid }, ack),
            Err(e) => tracing::info!(user = self.user_id(), "legacy chat refused: {e}"),
        }
    }

    /// A chat send finished: its seq counts as handed over; a failure is logged.
    fn on_sent(&mut self, sent: Sent) {
        match sent.outcome {
            Ok(ack) => {
                if let Some(login) = &mut self.login
                    && let Some(p) = login.tracker.sent(sent.target, ack.seq)
                {
                    login.cursors.advance(sent.target, p);
                }
            }
            Err(e) => tracing::info!(
                user = self.user_id(),
                target = ?sent.target,
                errno = e.errno(),
                "legacy chat not sent: {e}"
            ),
        }
    }

    async fn login(&mut self, request: Request) -> Result<(), End> {
        let payload = match self.service(request).await {
            Ok(payload) => payload,
            Err(e) => return self.write(&shape::login_error(&e)).await,
        };
        let Some(me) = self.session.user.clone() else {
            return Ok(());
        };
        let session = background_session(&self.session);
        self.login = Some(LoggedIn {
            tracker: Tracker::new(me.id),
            cursors: Cursors::start(self.state.clone(), session, self.handle.clone()),
        });
        let (reply, inline) = shape::login_reply(&payload);
        self.write(&reply).await?;
        let offline = payload.list("offlinemsg");
        let mut reached: HashMap<Target, i64> = HashMap::new();
        for (i, chat) in offline.iter().enumerate() {
            let Some(c) = self.chat_ref(chat) else {
                continue;
            };
            if i < inline {
                self.remember(c.message_id);
            } else {
                self.hand_over(chat, &c).await?;
            }
            let seq = reached.entry(c.target).or_insert(c.seq);
            *seq = (*seq).max(c.seq);
        }
        for (target, seq) in reached {
            self.reached(target, seq);
        }
        Ok(())
    }

    async fn logout(&mut self) {
        // Pushes queued for the old session are dropped.
        let (tx, rx) = mpsc::channel(self.state.config.outbound_queue.max(1));
        self.handle = ConnHandle::new(self.handle.id, tx, self.overflow.clone());
        self.push_rx = rx;
        if let Err(e) = self.service(Request::Logout).await {
            tracing::info!("legacy logout: {e}");
        }
        if let Some(login) = self.login.take() {
            login.cursors.close().await;
        }
    }

    /// A push from the hub: chats are handed over, RESYNC catches up, the rest is dropped
    /// (the original client knows no other push).
    async fn on_push(&mut self, frame: &str) -> Result<(), End> {
        let Ok(push) = serde_json::from_str::<Value>(frame) else {
            return Ok(());
        };
        match push.get("msgid").and_then(Value::as_i64) {
            Some(msgid::ONE_CHAT | msgid::GROUP_CHAT) => self.on_chat_push(&push).await,
            Some(msgid::RESYNC) => self.catch_up().await,
            other => {
                let label = msgid::label(other.unwrap_or(0));
                metrics::counter!("chat_legacy_pushes_dropped_total", "msgid" => label)
                    .increment(1);
                Ok(())
            }
        }
    }

    async fn on_chat_push(&mut self, push: &Value) -> Result<(), End> {
        let Some(login) = &self.login else {
            return Ok(());
        };
        let Some(chat) = login.tracker.chat_ref(push) else {
            return Ok(());
        };
        match login.tracker.arrival(&chat) {
            Arrival::Repeat => Ok(()),
            Arrival::InOrder => {
                self.hand_over(push, &chat).await?;
                self.reached(chat.target, chat.seq);
                Ok(())
            }
            Arrival::Late => self.hand_over(push, &chat).await,
            Arrival::Gap { after } => {
                if let Some(covered) = self.fill_gap(chat.target, after, chat.seq).await? {
                    self.reached(chat.target, covered);
                }
                if !self.is_seen(chat.message_id) {
                    self.hand_over(push, &chat).await?;
                    if self.position(chat.target) == Some(chat.seq - 1) {
                        self.reached(chat.target, chat.seq);
                    }
                }
                Ok(())
            }
        }
    }

    /// Hands over, from history, the messages of `target` after `after` (up to `upto` at
    /// least) that others sent and this connection has not shown. Returns the highest seq
    /// covered, or `None` when history could not be read (the gap stays open: nothing after
    /// it is marked read).
    async fn fill_gap(
        &mut self,
        target: Target,
        after: i64,
        upto: i64,
    ) -> Result<Option<i64>, End> {
        let mut covered = after;
        for _ in 0..GAP_PAGES {
            let page = Request::History {
                target,
                page: HistoryPage::After(covered),
                limit: HISTORY_MAX_LIMIT,
            };
            let payload = match self.service(page).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(user = self.user_id(), ?target, "filling a gap: {e}");
                    return Ok(None);
                }
            };
            let messages = payload.list("messages");
            for m in &messages {
                let Some(c) = self.chat_ref(m) else {
                    continue;
                };
                covered = covered.max(c.seq);
                if c.sender == self.user_id() || self.is_seen(c.message_id) {
                    continue;
                }
                self.hand_over(m, &c).await?;
            }
            let more = payload.get("more").and_then(|v| v.as_bool()) == Some(true);
            if !more || covered >= upto {
                break;
            }
        }
        metrics::counter!("chat_legacy_gaps_filled_total").increment(1);
        Ok(Some(covered))
    }

    /// After RESYNC_MSG: hands over the unread backlog this connection has not shown.
    async fn catch_up(&mut self) -> Result<(), End> {
        let Some(me) = self.session.user.as_ref().map(|u| u.id) else {
            return Ok(());
        };
        let chats = match unread(&self.state, me).await {
            Ok(chats) => chats,
            Err(e) => {
                tracing::warn!(user = me, "catching up after RESYNC: {e}");
                return Ok(());
            }
        };
        let mut reached: HashMap<Target, i64> = HashMap::new();
        for chat in &chats {
            let Some(c) = self.chat_ref(chat) else {
                continue;
            };
            let shown = self.position(c.target).is_some_and(|p| c.seq <= p);
            if !shown && !self.is_seen(c.message_id) {
                self.hand_over(chat, &c).await?;
            }
            let seq = reached.entry(c.target).or_insert(c.seq);
            *seq = (*seq).max(c.seq);
        }
        for (target, seq) in reached {
            self.reached(target, seq);
        }
        metrics::counter!("chat_legacy_resyncs_total").increment(1);
        Ok(())
    }

    fn chat_ref(&self, chat: &Value) -> Option<ChatRef> {
        self.login.as_ref()?.tracker.chat_ref(chat)
    }

    fn is_seen(&self, message_id: i64) -> bool {
        self.login
            .as_ref()
            .is_some_and(|l| l.tracker.is_seen(message_id))
    }

    fn remember(&mut self, message_id: i64) {
        if let Some(login) = &mut self.login {
            login.tracker.remember(message_id);
        }
    }

    fn position(&self, target: Target) -> Option<i64> {
        self.login.as_ref()?.tracker.position(target)
    }

    /// Everything of `target` up to `seq` was handed over: move the position and the cursor.
    fn reached(&mut self, target: Target, seq: i64) {
        if let Some(login) = &mut self.login
            && let Some(p) = login.tracker.reached(target, seq)
        {
            login.cursors.advance(target, p);
        }
    }

    /// Writes a clusterchat chat object in the original shape and remembers it.
    async fn hand_over(&mut self, chat: &Value, c: &ChatRef) -> Result<(), End> {
        let Some(original) = shape::chat(chat) else {
            return Ok(());
        };
        self.write(&original).await?;
        self.remember(c.message_id);
        Ok(())
    }

    /// Writes one object and its NUL, at least [`SPACING`] after the previous one.
    async fn write(&mut self, object: &Value) -> Result<(), End> {
        let bytes = shape::frame(object);
        let mut stop = self.state.shutdown.clone();
        let next_write = self.next_write;
        let writer = &mut self.writer;
        let write = async {
            tokio::time::sleep_until(next_write).await;
            tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&bytes)).await
        };
        tokio::select! {
            written = write => match written {
                Ok(Ok(())) => {}
                _ => return Err(End::Gone),
            },
            _ = super::stopping(&mut stop) => return Err(End::Shutdown),
        }
        self.next_write = Instant::now() + SPACING;
        let label = msgid::label(object.get("msgid").and_then(Value::as_i64).unwrap_or(0));
        metrics::counter!("chat_legacy_frames_out_total", "msgid" => label).increment(1);
        Ok(())
    }

    /// Logs a dropped input (the first [`LOGGED_DROPS`] of a connection) and counts it.
    fn drop_input(&mut self, reason: &'static str, detail: std::fmt::Arguments<'_>) {
        self.drops += 1;
        metrics::counter!("chat_legacy_dropped_total", "reason" => reason).increment(1);
        if self.drops <= LOGGED_DROPS {
            tracing::info!(reason, "legacy input dropped: {detail}");
            if self.drops == LOGGED_DROPS {
                tracing::info!("further dropped inputs of this connection are counted, not logged");
            }
        }
    }
}

/// The session as background work needs it (its token stays with the connection).
fn background_session(session: &Session) -> Session {
    Session {
        conn: session.conn,
        peer: session.peer,
        user: session.user.clone(),
        token_hash: None,
    }
}

/// The resends of a chat send answered 503, unless the server is stopping.
fn resends(state: &AppState, session: &Session, send: &ChatSend) -> Option<Resending> {
    if *state.shutdown.borrow() {
        return None;
    }
    Some(Box::pin(resend(
        state.clone(),
        background_session(session),
        send.clone(),
    )))
}

/// Resends a chat send with the same txnid after a 503 (the message may be stored but not
/// published; a resend completes it, never duplicates it), backing off, until it is answered
/// otherwise or the attempts run out.
async fn resend(
    state: AppState,
    session: Session,
    send: ChatSend,
) -> Result<ChatAck, ServiceError> {
    let mut attempt = 2;
    loop {
        tokio::time::sleep(Duration::from_millis(100 << (attempt - 1))).await;
        metrics::counter!("chat_legacy_resends_total").increment(1);
        let ack = service::submit_chat(
            &state,
            &session,
            send.target,
            send.msg.clone(),
            Some(send.txnid.clone()),
        )
        .await?;
        let outcome = match tokio::time::timeout(state.config.request_time_limit(), ack).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(sends::stopped()),
            Err(_) => Err(sends::not_in_time()),
        };
        match outcome {
            Err(ServiceError::Unavailable(reason))
                if attempt < SEND_ATTEMPTS && !*state.shutdown.borrow() =>
            {
                tracing::debug!(attempt, "legacy chat resent after: {reason}");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The unread backlog of `user` (the login reply's `offlinemsg`) as clusterchat chat objects.
async fn unread(state: &AppState, user: i64) -> Result<Vec<Value>, ServiceError> {
    let groups = state.store.group_ids_of(user).await?;
    let rows = state.store.unread(user, &groups).await?;
    let senders: Vec<i64> = rows.iter().map(|m| m.sender).collect();
    let names = state.store.user_names(&senders).await?;
    Ok(rows
        .iter()
        .filter_map(|m| {
            let name = names.get(&m.sender).map_or("", |n| n);
            serde_json::to_value(ChatView::of(m, name)).ok()
        })
        .collect())
}

/// Moves the session user's read cursors in the background, coalescing: only the highest seq
/// per conversation is written, through READ_MSG of the service layer.
struct Cursors {
    wanted: watch::Sender<HashMap<Target, i64>>,
    task: JoinHandle<()>,
}

impl Cursors {
    fn start(state: AppState, session: Session, handle: ConnHandle) -> Self {
        let (wanted, rx) = watch::channel(HashMap::new());
        let task = tokio::spawn(write_cursors(state, session, handle, rx));
        Cursors { wanted, task }
    }

    /// Everything of `target` up to `seq` was shown.
    fn advance(&self, target: Target, seq: i64) {
        self.wanted.send_modify(|m| {
            let e = m.entry(target).or_insert(seq);
            *e = (*e).max(seq);
        });
    }

    /// Writes what is still pending, then stops.
    async fn close(self) {
        let Cursors { wanted, mut task } = self;
        drop(wanted);
        if tokio::time::timeout(CURSOR_FLUSH, &mut task).await.is_err() {
            tracing::warn!("read cursors of a legacy session not written in time");
            task.abort();
        }
    }
}

async fn write_cursors(
    state: AppState,
    mut session: Session,
    handle: ConnHandle,
    mut wanted: watch::Receiver<HashMap<Target, i64>>,
) {
    let mut written: HashMap<Target, i64> = HashMap::new();
    loop {
        let open = wanted.changed().await.is_ok();
        let now: Vec<(Target, i64)> = wanted
            .borrow_and_update()
            .iter()
            .map(|(t, s)| (*t, *s))
            .collect();
        for (target, seq) in now {
            if written.get(&target).is_some_and(|&w| w >= seq) {
                continue;
            }
            let read = Request::Read { target, seq };
            match service::handle(&state, &mut session, &handle, read).await {
                Ok(_) => {
                    written.insert(target, seq);
                }
                Err(e) => tracing::warn!(?target, seq, "legacy read cursor: {e}"),
            }
        }
        if !open {
            return;
        }
    }
}
