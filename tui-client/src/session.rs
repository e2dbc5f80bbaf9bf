//! The connection's bookkeeping, without I/O (the socket loop in [`crate::connection`] feeds it):
//! reqid → reply matching, the outbox of requests waiting for a link, re-login after a
//! reconnect, catch-up by HISTORY `after_seq` per conversation (after a reconnect, on
//! RESYNC_MSG, and when a `seq` gap shows), resending unacked sends with their txnid, and
//! de-duplication of messages by `message_id`.
//!
//! Every method returns an [`Output`]: the frames to write and the events for the app.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use crate::protocol::{
    Ack, Chat, ConvKey, HistoryBound, LoginAck, LoginBy, MAX_HISTORY_LIMIT, Password, Presence,
    Request, ServerMessage, describe,
};

/// The state of the link to the server, as the app shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    /// Opening the WebSocket (attempt 0 is the first try).
    Connecting {
        /// How many tries failed before this one.
        attempt: u32,
    },
    /// The WebSocket is open.
    Connected,
    /// The link is down; the next try starts after `delay`.
    Reconnecting {
        /// How many tries failed so far.
        attempt: u32,
        /// Time until the next try.
        delay: Duration,
        /// Why the link is down, in plain words.
        reason: String,
    },
}

/// What the connection tells the app.
// Events are few (one per frame at most) and moved once: boxing the large replies would only
// make every match on them clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ConnEvent {
    /// The link changed state.
    Status(LinkStatus),
    /// The reply to one of the app's requests.
    Reply {
        /// The request as it was sent (chat sends carry their txnid).
        request: Request,
        /// The server's reply (LOGIN_MSG_ACK, REG_MSG_ACK, ACK_MSG or ERROR_MSG).
        reply: ServerMessage,
    },
    /// A request that will get no reply: the link dropped and resending it is not safe.
    Failed {
        /// The request.
        request: Request,
        /// Why, in plain words.
        reason: String,
    },
    /// Messages not seen before (live pushes and catch-up), de-duplicated by `message_id`.
    Chats(Vec<Chat>),
    /// A friend or co-member went online or offline.
    Presence(Presence),
    /// The session logged back in by itself after a reconnect (friends and groups refreshed;
    /// `offlinemsg` holds only messages not seen before).
    Relogin(LoginAck),
    /// Logging back in was refused (the password changed?): the app must ask again.
    LoggedOut {
        /// The server's words.
        reason: String,
    },
    /// The server said pushes may have been missed; every conversation is being caught up.
    Resync,
    /// An ERROR_MSG tied to no request.
    ServerError {
        /// Error number.
        errno: i64,
        /// The server's words.
        errmsg: String,
    },
}

/// What one step of the session produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Text frames to write to the socket, in order.
    pub frames: Vec<String>,
    /// Events for the app, in order.
    pub events: Vec<ConnEvent>,
    /// The link must be dropped and opened again (re-login failed for a passing reason).
    pub reconnect: bool,
}

/// Who is waiting for a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// The app: the reply is forwarded.
    App,
    /// The session's own re-login after a reconnect.
    Relogin,
    /// The session's own catch-up of a conversation.
    CatchUp(ConvKey),
}

/// A request sent and not yet answered.
#[derive(Debug, Clone)]
struct Pending {
    /// The request as sent.
    request: Request,
    /// Who wants the reply.
    origin: Origin,
}

/// How far a conversation has been seen.
#[derive(Debug, Default, Clone)]
struct SeqTrack {
    /// Every seq up to this one has been seen (or lies before what this client cares about).
    high_water: i64,
    /// Seqs seen above `high_water + 1`: a gap lies below them.
    ahead: BTreeSet<i64>,
}

impl SeqTrack {
    /// Records a seq; returns whether a gap now lies below what was seen.
    fn observe(&mut self, seq: i64) -> bool {
        if seq <= self.high_water {
            return !self.ahead.is_empty();
        }
        if seq == self.high_water + 1 {
            self.high_water = seq;
            while self.ahead.remove(&(self.high_water + 1)) {
                self.high_water += 1;
            }
        } else {
            self.ahead.insert(seq);
        }
        !self.ahead.is_empty()
    }
}

/// Messages one catch-up request asks for.
const CATCH_UP_LIMIT: u32 = MAX_HISTORY_LIMIT;

/// The connection's state between frames.
#[derive(Debug)]
pub struct Session {
    /// The next reqid to use (never reused in a session).
    next_reqid: i64,
    /// Sent requests waiting for their reply, by reqid.
    pending: BTreeMap<i64, Pending>,
    /// App requests waiting for the link (or for the re-login) before they can be sent.
    outbox: VecDeque<Request>,
    /// How to log back in after a reconnect: set by a successful login, cleared by logout.
    credentials: Option<(LoginBy, Password)>,
    /// Whether the WebSocket is open.
    up: bool,
    /// Whether this connection is logged in.
    authed: bool,
    /// The reqid of the re-login in flight.
    relogin: Option<i64>,
    /// The logged-in user's id (kept across reconnects).
    me: Option<i64>,
    /// How far each conversation has been seen.
    seqs: HashMap<ConvKey, SeqTrack>,
    /// Every `message_id` already handed to the app.
    seen: HashSet<i64>,
    /// Conversations with a catch-up request in flight.
    catching_up: HashSet<ConvKey>,
    /// Pushes that arrived before the login reply (the server subscribes first).
    early: Vec<Chat>,
    /// Prefix of the txnids this session makes up for chat sends that have none.
    txn_prefix: String,
    /// Counter of those txnids.
    txn_counter: u64,
}

impl Session {
    /// A fresh session; `txn_prefix` should be unique per process (random).
    pub fn new(txn_prefix: impl Into<String>) -> Session {
        Session {
            next_reqid: 1,
            pending: BTreeMap::new(),
            outbox: VecDeque::new(),
            credentials: None,
            up: false,
            authed: false,
            relogin: None,
            me: None,
            seqs: HashMap::new(),
            seen: HashSet::new(),
            catching_up: HashSet::new(),
            early: Vec::new(),
            txn_prefix: txn_prefix.into(),
            txn_counter: 0,
        }
    }

    /// Whether the session is logged in on an open link.
    pub fn is_logged_in(&self) -> bool {
        self.up && self.authed
    }

    /// Number of requests sent and not yet answered.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Number of app requests waiting to be sent.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Takes a request from the app: sent now when the link allows, queued otherwise.
    pub fn submit(&mut self, mut request: Request) -> Output {
        let mut out = Output::default();
        if let Request::OneChat { txnid, .. } | Request::GroupChat { txnid, .. } = &mut request
            && txnid.is_none()
        {
            self.txn_counter += 1;
            *txnid = Some(format!("{}-{}", self.txn_prefix, self.txn_counter));
        }
        if self.can_send() {
            self.send(request, Origin::App, &mut out);
        } else {
            self.outbox.push_back(request);
        }
        out
    }

    /// The WebSocket just opened: log back in if a login had succeeded, else send the outbox.
    pub fn connected(&mut self) -> Output {
        let mut out = Output::default();
        self.up = true;
        self.authed = false;
        if let Some((who, password)) = self.credentials.clone() {
            let reqid = self.send(Request::Login { who, password }, Origin::Relogin, &mut out);
            self.relogin = Some(reqid);
        } else {
            self.flush_outbox(&mut out);
        }
        out
    }

    /// The WebSocket closed: unanswered requests that are safe to resend go back to the front
    /// of the outbox (chat sends keep their txnid); the others fail.
    pub fn disconnected(&mut self) -> Output {
        let mut out = Output::default();
        self.up = false;
        self.authed = false;
        self.relogin = None;
        self.catching_up.clear();
        self.early.clear();
        let mut resend = Vec::new();
        for (_, p) in std::mem::take(&mut self.pending) {
            if p.origin != Origin::App {
                continue;
            }
            if p.request.is_resendable() || matches!(p.request, Request::Login { .. }) {
                resend.push(p.request);
            } else {
                out.events.push(ConnEvent::Failed {
                    request: p.request,
                    reason:
                        "the connection dropped before the server answered; check and try again"
                            .into(),
                });
            }
        }
        for r in resend.into_iter().rev() {
            self.outbox.push_front(r);
        }
        out
    }

    /// Takes one text frame from the server.
    pub fn receive(&mut self, text: &str) -> Output {
        let mut out = Output::default();
        let msg = match ServerMessage::parse(text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, frame = %truncate(text), "ignored a server frame");
                return out;
            }
        };
        if let Some(reqid) = msg.reqid()
            && let Some(p) = self.pending.remove(&reqid)
        {
            match p.origin {
                Origin::App => self.on_app_reply(p.request, msg, &mut out),
                Origin::Relogin => self.on_relogin_reply(msg, &mut out),
                Origin::CatchUp(conv) => self.on_catch_up_reply(conv, msg, &mut out),
            }
            return out;
        }
        match msg {
            ServerMessage::Chat(chat) => {
                if self.authed && self.me.is_some() {
                    let fresh = self.accept(vec![chat], &mut out);
                    if !fresh.is_empty() {
                        out.events.push(ConnEvent::Chats(fresh));
                    }
                } else {
                    self.early.push(chat);
                }
            }
            ServerMessage::Presence(p) => out.events.push(ConnEvent::Presence(p)),
            ServerMessage::Resync => {
                out.events.push(ConnEvent::Resync);
                if self.authed {
                    self.catch_up_all(&mut out);
                }
            }
            ServerMessage::Error(e) => out.events.push(ConnEvent::ServerError {
                errno: e.errno,
                errmsg: describe(e.errno, &e.errmsg),
            }),
            other => {
                tracing::warn!(reqid = ?other.reqid(), "a reply matched no request: {other:?}");
            }
        }
        out
    }

    /// Whether requests can go out now.
    fn can_send(&self) -> bool {
        self.up && self.relogin.is_none()
    }

    /// Writes a request with a fresh reqid and remembers who waits for it.
    fn send(&mut self, request: Request, origin: Origin, out: &mut Output) -> i64 {
        let reqid = self.next_reqid;
        self.next_reqid += 1;
        out.frames.push(request.to_json(Some(reqid)).to_string());
        self.pending.insert(reqid, Pending { request, origin });
        reqid
    }

    /// Sends every queued app request.
    fn flush_outbox(&mut self, out: &mut Output) {
        while self.can_send() {
            let Some(r) = self.outbox.pop_front() else {
                break;
            };
            self.send(r, Origin::App, out);
        }
    }

    /// Handles the reply to an app request, then forwards it.
    fn on_app_reply(&mut self, request: Request, mut reply: ServerMessage, out: &mut Output) {
        let ok = reply.status().0 == 0;
        match (&request, &mut reply) {
            (Request::Login { password, .. }, ServerMessage::LoginAck(ack)) if ok => {
                self.credentials = Some((LoginBy::Id(ack.id), password.clone()));
                self.logged_in(ack, out);
                out.events.push(ConnEvent::Reply { request, reply });
                self.release_early(out);
                self.flush_outbox(out);
                return;
            }
            (Request::Login { .. }, _) => self.early.clear(),
            (Request::Logout, _) if ok => self.forget_user(out),
            (Request::OneChat { .. } | Request::GroupChat { .. }, ServerMessage::Ack(ack))
                if ok =>
            {
                if let (Some(conv), Some(id), Some(seq)) =
                    (request.chat_target(), ack.message_id, ack.seq)
                {
                    self.seen.insert(id);
                    self.observe(conv, seq, out);
                }
            }
            (Request::History { conv, .. }, ServerMessage::Ack(ack)) if ok => {
                // The app's own paging: recorded (so that catch-up starts above it) but never a
                // reason to fetch more; the page itself is forwarded whole.
                let conv = *conv;
                for m in ack.messages.iter().flatten() {
                    self.seen.insert(m.message_id);
                    self.track(conv, m.seq).observe(m.seq);
                }
            }
            _ => {}
        }
        out.events.push(ConnEvent::Reply { request, reply });
    }

    /// Handles the reply to the session's own re-login.
    fn on_relogin_reply(&mut self, reply: ServerMessage, out: &mut Output) {
        self.relogin = None;
        match reply {
            ServerMessage::LoginAck(mut ack) if ack.errno == 0 => {
                self.logged_in(&mut ack, out);
                out.events.push(ConnEvent::Relogin(ack));
                self.release_early(out);
                self.catch_up_all(out);
                self.flush_outbox(out);
            }
            ServerMessage::LoginAck(ack) if matches!(ack.errno, 1 | 400 | 401 | 403 | 404) => {
                let reason = describe(ack.errno, &ack.errmsg);
                self.forget_user(out);
                for request in std::mem::take(&mut self.outbox) {
                    out.events.push(ConnEvent::Failed {
                        request,
                        reason: format!("not logged in any more: {reason}"),
                    });
                }
                out.events.push(ConnEvent::LoggedOut { reason });
                self.flush_outbox(out);
            }
            other => {
                let (errno, errmsg) = other.status();
                tracing::warn!(errno, errmsg, "logging back in failed; reconnecting");
                out.reconnect = true;
            }
        }
    }

    /// Handles one page of the session's own catch-up of a conversation.
    fn on_catch_up_reply(&mut self, conv: ConvKey, reply: ServerMessage, out: &mut Output) {
        let ServerMessage::Ack(Ack {
            errno: 0,
            messages,
            more,
            ..
        }) = reply
        else {
            let (errno, errmsg) = reply.status();
            tracing::info!(%conv, errno, errmsg, "catch-up refused; forgetting the conversation");
            self.catching_up.remove(&conv);
            self.seqs.remove(&conv);
            return;
        };
        let messages = messages.unwrap_or_default();
        let last = messages.last().map(|m| m.seq);
        // Still marked as catching up while the page is taken in, so that the gaps it closes
        // one by one start no other request.
        let fresh = self.accept(messages, out);
        if !fresh.is_empty() {
            out.events.push(ConnEvent::Chats(fresh));
        }
        self.catching_up.remove(&conv);
        let track = self.seqs.entry(conv).or_default();
        match (more.unwrap_or(false), last) {
            (true, Some(last)) => self.request_catch_up(conv, last, out),
            _ => {
                // Nothing lies above this page on the server: what was seen ahead closes the gap.
                if let Some(&top) = track.ahead.last() {
                    track.high_water = track.high_water.max(top);
                    track.ahead.clear();
                }
            }
        }
    }

    /// Records a successful login: who we are, and the unread messages of the reply (those
    /// seen before are removed from it).
    fn logged_in(&mut self, ack: &mut LoginAck, out: &mut Output) {
        self.authed = true;
        self.me = Some(ack.id);
        let offline = std::mem::take(&mut ack.offlinemsg);
        ack.offlinemsg = self.accept(offline, out);
    }

    /// Hands the pushes that beat the login reply to the app.
    fn release_early(&mut self, out: &mut Output) {
        let early = std::mem::take(&mut self.early);
        let fresh = self.accept(early, out);
        if !fresh.is_empty() {
            out.events.push(ConnEvent::Chats(fresh));
        }
    }

    /// Forgets everything about the logged-in user (after logout or a refused re-login).
    fn forget_user(&mut self, _out: &mut Output) {
        self.credentials = None;
        self.authed = false;
        self.me = None;
        self.seqs.clear();
        self.seen.clear();
        self.catching_up.clear();
        self.early.clear();
    }

    /// Keeps the messages not seen before, recording their seqs (and fetching what a gap hides).
    fn accept(&mut self, chats: Vec<Chat>, out: &mut Output) -> Vec<Chat> {
        let Some(me) = self.me else {
            return Vec::new();
        };
        let mut fresh = Vec::new();
        for chat in chats {
            if !self.seen.insert(chat.message_id) {
                continue;
            }
            self.observe(chat.conv_key(me), chat.seq, out);
            fresh.push(chat);
        }
        fresh
    }

    /// Records a seq of a conversation; a gap below it starts a catch-up.
    fn observe(&mut self, conv: ConvKey, seq: i64, out: &mut Output) {
        let idle = self.can_send() && !self.catching_up.contains(&conv);
        let track = self.track(conv, seq);
        if track.observe(seq) && idle {
            let after = track.high_water;
            self.request_catch_up(conv, after, out);
        }
    }

    /// The seq tracking of a conversation; one first seen at `seq` starts just below it (what
    /// came before is history, paged on demand).
    fn track(&mut self, conv: ConvKey, seq: i64) -> &mut SeqTrack {
        self.seqs.entry(conv).or_insert_with(|| SeqTrack {
            high_water: seq - 1,
            ahead: BTreeSet::new(),
        })
    }

    /// Asks for every message of every known conversation above what was seen.
    fn catch_up_all(&mut self, out: &mut Output) {
        let mut convs: Vec<(ConvKey, i64)> =
            self.seqs.iter().map(|(c, t)| (*c, t.high_water)).collect();
        convs.sort();
        for (conv, after) in convs {
            if !self.catching_up.contains(&conv) {
                self.request_catch_up(conv, after, out);
            }
        }
    }

    /// Sends one catch-up HISTORY request.
    fn request_catch_up(&mut self, conv: ConvKey, after: i64, out: &mut Output) {
        self.catching_up.insert(conv);
        let request = Request::History {
            conv,
            bound: Some(HistoryBound::After(after)),
            limit: Some(CATCH_UP_LIMIT),
        };
        self.send(request, Origin::CatchUp(conv), out);
    }
}

/// The start of a frame, for logs.
fn truncate(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(frame: &str) -> Value {
        serde_json::from_str(frame).unwrap()
    }

    fn chat(message_id: i64, seq: i64, from: i64, to: i64, msg: &str) -> Value {
        json!({"msgid": 6, "message_id": message_id, "seq": seq, "id": from, "name": format!("u{from}"),
               "toid": to, "msg": msg, "time": "2026-11-21T05:10:24.123Z"})
    }

    fn login(session: &mut Session) -> i64 {
        let out = session.submit(Request::Login {
            who: LoginBy::Name("alice".into()),
            password: Password("pw".into()),
        });
        let f = parse(&out.frames[0]);
        f["reqid"].as_i64().unwrap()
    }

    /// A session logged in as user 1 on an open link.
    fn logged_in(offline: Vec<Value>) -> (Session, Output) {
        let mut s = Session::new("t");
        assert!(s.connected().frames.is_empty());
        let reqid = login(&mut s);
        let out = s.receive(
            &json!({"msgid": 2, "reqid": reqid, "errno": 0, "errmsg": "", "id": 1, "name": "alice",
                    "node": "n1", "friends": [{"id": 2, "name": "bob", "state": "online"}],
                    "groups": [], "offlinemsg": offline})
            .to_string(),
        );
        (s, out)
    }

    #[test]
    fn replies_are_matched_to_their_request_by_reqid() {
        let (mut s, _) = logged_in(vec![]);
        let a = s.submit(Request::AddFriend { friendid: 2 });
        let b = s.submit(Request::FriendList);
        let ra = parse(&a.frames[0])["reqid"].as_i64().unwrap();
        let rb = parse(&b.frames[0])["reqid"].as_i64().unwrap();
        assert_ne!(ra, rb);
        let out = s.receive(
            &json!({"msgid": 11, "ackof": 14, "reqid": rb, "errno": 0, "errmsg": "", "friends": []})
                .to_string(),
        );
        assert!(matches!(
            &out.events[..],
            [ConnEvent::Reply {
                request: Request::FriendList,
                ..
            }]
        ));
        let out = s.receive(
            &json!({"msgid": 11, "ackof": 7, "reqid": ra, "errno": 404, "errmsg": "no such user"})
                .to_string(),
        );
        assert!(matches!(
            &out.events[..],
            [ConnEvent::Reply { request: Request::AddFriend { friendid: 2 }, reply }] if reply.status().0 == 404
        ));
        assert_eq!(s.pending_count(), 0);
    }

    #[test]
    fn requests_wait_in_the_outbox_until_the_link_is_up() {
        let mut s = Session::new("t");
        let out = s.submit(Request::Login {
            who: LoginBy::Id(1),
            password: Password("pw".into()),
        });
        assert!(out.frames.is_empty());
        assert_eq!(s.outbox_len(), 1);
        let out = s.connected();
        assert_eq!(parse(&out.frames[0])["msgid"], 1);
        assert_eq!(s.outbox_len(), 0);
    }

    #[test]
    fn chat_sends_get_a_txnid_when_they_have_none() {
        let (mut s, _) = logged_in(vec![]);
        let out = s.submit(Request::OneChat {
            toid: 2,
            msg: "hi".into(),
            txnid: None,
        });
        assert_eq!(parse(&out.frames[0])["txnid"], "t-1");
        let out = s.submit(Request::OneChat {
            toid: 2,
            msg: "hi".into(),
            txnid: Some("mine".into()),
        });
        assert_eq!(parse(&out.frames[0])["txnid"], "mine");
    }

    #[test]
    fn offline_messages_and_pushes_are_de_duplicated_by_message_id() {
        let (mut s, out) = logged_in(vec![chat(10, 1, 2, 1, "a")]);
        let ConnEvent::Reply {
            reply: ServerMessage::LoginAck(ack),
            ..
        } = &out.events[0]
        else {
            panic!("{out:?}")
        };
        assert_eq!(ack.offlinemsg.len(), 1);
        // The same message pushed again (subscribed before the backlog was read) is dropped.
        let out = s.receive(&chat(10, 1, 2, 1, "a").to_string());
        assert!(out.events.is_empty());
        let out = s.receive(&chat(11, 2, 2, 1, "b").to_string());
        assert!(matches!(&out.events[..], [ConnEvent::Chats(c)] if c[0].message_id == 11));
        assert!(out.frames.is_empty(), "no gap, no catch-up");
    }

    #[test]
    fn pushes_that_beat_the_login_reply_are_held_then_de_duplicated() {
        let mut s = Session::new("t");
        s.connected();
        let reqid = login(&mut s);
        assert!(
            s.receive(&chat(10, 1, 2, 1, "a").to_string())
                .events
                .is_empty()
        );
        let out = s.receive(
            &json!({"msgid": 2, "reqid": reqid, "errno": 0, "errmsg": "", "id": 1, "name": "alice",
                    "friends": [], "groups": [], "offlinemsg": [chat(10, 1, 2, 1, "a")]})
            .to_string(),
        );
        // Reply first (with the message), and the early push is not repeated.
        assert_eq!(out.events.len(), 1);
        assert!(matches!(&out.events[0], ConnEvent::Reply { .. }));
    }

    #[test]
    fn a_seq_gap_in_pushes_starts_a_catch_up_by_history() {
        let (mut s, _) = logged_in(vec![chat(10, 1, 2, 1, "a")]);
        let out = s.receive(&chat(13, 4, 2, 1, "d").to_string());
        assert!(matches!(&out.events[..], [ConnEvent::Chats(_)]));
        let f = parse(&out.frames[0]);
        assert_eq!(f["msgid"], 17);
        assert_eq!(f["toid"], 2);
        assert_eq!(f["after_seq"], 1);
        let reqid = f["reqid"].as_i64().unwrap();
        let out = s.receive(
            &json!({"msgid": 11, "ackof": 17, "reqid": reqid, "errno": 0, "errmsg": "", "more": false,
                    "messages": [chat(11, 2, 1, 2, "b"), chat(12, 3, 2, 1, "c"), chat(13, 4, 2, 1, "d")]})
            .to_string(),
        );
        let [ConnEvent::Chats(c)] = &out.events[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            c.iter().map(|m| m.message_id).collect::<Vec<_>>(),
            vec![11, 12]
        );
        assert!(out.frames.is_empty());
    }

    #[test]
    fn catch_up_pages_until_the_server_says_there_is_no_more() {
        let (mut s, _) = logged_in(vec![chat(10, 1, 2, 1, "a")]);
        let out = s.receive(&json!({"msgid": 21}).to_string());
        assert_eq!(out.events, vec![ConnEvent::Resync]);
        let f = parse(&out.frames[0]);
        assert_eq!(
            (f["after_seq"].as_i64(), f["limit"].as_i64()),
            (Some(1), Some(200))
        );
        let out = s.receive(
            &json!({"msgid": 11, "ackof": 17, "reqid": f["reqid"], "errno": 0, "errmsg": "",
                    "more": true, "messages": [chat(11, 2, 2, 1, "b")]})
            .to_string(),
        );
        let f = parse(&out.frames[0]);
        assert_eq!(f["after_seq"], 2);
        let out = s.receive(
            &json!({"msgid": 11, "ackof": 17, "reqid": f["reqid"], "errno": 0, "errmsg": "",
                    "more": false, "messages": []})
            .to_string(),
        );
        assert!(out.frames.is_empty() && out.events.is_empty());
    }

    #[test]
    fn after_a_reconnect_it_logs_back_in_catches_up_and_resends_unacked_sends() {
        let (mut s, _) = logged_in(vec![chat(10, 3, 2, 1, "a")]);
        let sent = s.submit(Request::OneChat {
            toid: 2,
            msg: "unacked".into(),
            txnid: Some("x1".into()),
        });
        let first = parse(&sent.frames[0]);
        let lost = s.submit(Request::AddFriend { friendid: 9 });
        assert_eq!(lost.frames.len(), 1);

        let out = s.disconnected();
        assert!(matches!(
            &out.events[..],
            [ConnEvent::Failed {
                request: Request::AddFriend { friendid: 9 },
                ..
            }]
        ));
        // While down, new requests queue.
        assert!(s.submit(Request::FriendList).frames.is_empty());

        let out = s.connected();
        assert_eq!(out.frames.len(), 1, "only the re-login goes first");
        let relogin = parse(&out.frames[0]);
        assert_eq!(relogin["msgid"], 1);
        assert_eq!(relogin["id"], 1);
        assert_eq!(relogin["password"], "pw");

        let out = s.receive(
            &json!({"msgid": 2, "reqid": relogin["reqid"], "errno": 0, "errmsg": "", "id": 1,
                    "name": "alice", "friends": [], "groups": [], "offlinemsg": [chat(10, 3, 2, 1, "a")]})
            .to_string(),
        );
        assert!(matches!(&out.events[..], [ConnEvent::Relogin(ack)] if ack.offlinemsg.is_empty()));
        let frames: Vec<Value> = out.frames.iter().map(|f| parse(f)).collect();
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert_eq!(frames[0]["msgid"], 17);
        assert_eq!(frames[0]["after_seq"], 3);
        assert_eq!(frames[1]["msgid"], 6);
        assert_eq!(frames[1]["txnid"], first["txnid"]);
        assert_ne!(frames[1]["reqid"], first["reqid"]);
        assert_eq!(frames[2]["msgid"], 14);

        // The resent message's ack is forwarded as the reply to the original request.
        let out = s.receive(
            &json!({"msgid": 11, "ackof": 6, "reqid": frames[1]["reqid"], "errno": 0, "errmsg": "",
                    "message_id": 20, "seq": 4, "time": "2026-11-21T05:10:24.123Z"})
            .to_string(),
        );
        assert!(matches!(
            &out.events[..],
            [ConnEvent::Reply { request: Request::OneChat { txnid: Some(t), .. }, .. }] if t == "x1"
        ));
    }

    #[test]
    fn a_refused_re_login_logs_out_and_fails_the_outbox() {
        let (mut s, _) = logged_in(vec![]);
        s.disconnected();
        s.submit(Request::FriendList);
        let out = s.connected();
        let relogin = parse(&out.frames[0]);
        let out = s.receive(
            &json!({"msgid": 2, "reqid": relogin["reqid"], "errno": 1, "errmsg": "wrong id or password"})
                .to_string(),
        );
        assert!(matches!(
            &out.events[0],
            ConnEvent::Failed {
                request: Request::FriendList,
                ..
            }
        ));
        assert!(
            matches!(&out.events[1], ConnEvent::LoggedOut { reason } if reason == "wrong id or password")
        );
        assert!(!s.is_logged_in());
        // The next link opens without a re-login.
        s.disconnected();
        assert!(s.connected().frames.is_empty());
    }

    #[test]
    fn a_re_login_failing_for_a_passing_reason_asks_for_a_new_link() {
        let (mut s, _) = logged_in(vec![]);
        s.disconnected();
        let out = s.connected();
        let relogin = parse(&out.frames[0]);
        let out = s.receive(
            &json!({"msgid": 2, "reqid": relogin["reqid"], "errno": 503, "errmsg": "try again"})
                .to_string(),
        );
        assert!(out.reconnect);
    }

    #[test]
    fn logout_forgets_the_credentials() {
        let (mut s, _) = logged_in(vec![]);
        let out = s.submit(Request::Logout);
        let f = parse(&out.frames[0]);
        s.receive(
            &json!({"msgid": 11, "ackof": 3, "reqid": f["reqid"], "errno": 0, "errmsg": ""})
                .to_string(),
        );
        s.disconnected();
        assert!(s.connected().frames.is_empty());
    }

    #[test]
    fn presence_and_unsolicited_errors_are_forwarded() {
        let (mut s, _) = logged_in(vec![]);
        let out = s.receive(r#"{"msgid":19,"id":2,"name":"bob","state":"offline"}"#);
        assert!(matches!(&out.events[..], [ConnEvent::Presence(p)] if p.id == 2));
        let out = s.receive(r#"{"msgid":20,"errno":400,"errmsg":""}"#);
        assert!(matches!(
            &out.events[..],
            [ConnEvent::ServerError { errno: 400, errmsg }] if errmsg == "the request was malformed"
        ));
        assert!(s.receive("not json").events.is_empty());
    }

    #[test]
    fn an_error_msg_with_a_reqid_answers_that_request() {
        let (mut s, _) = logged_in(vec![]);
        let out = s.submit(Request::FriendList);
        let f = parse(&out.frames[0]);
        let out = s.receive(
            &json!({"msgid": 20, "reqid": f["reqid"], "errno": 413, "errmsg": "too big"})
                .to_string(),
        );
        assert!(matches!(
            &out.events[..],
            [ConnEvent::Reply {
                reply: ServerMessage::Error(_),
                ..
            }]
        ));
    }

    #[test]
    fn a_history_page_opened_by_the_app_does_not_make_catch_up_fetch_from_seq_one() {
        let (mut s, _) = logged_in(vec![]);
        let out = s.submit(Request::History {
            conv: ConvKey::User(2),
            bound: None,
            limit: Some(2),
        });
        let f = parse(&out.frames[0]);
        s.receive(
            &json!({"msgid": 11, "ackof": 17, "reqid": f["reqid"], "errno": 0, "errmsg": "", "more": true,
                    "messages": [chat(50, 99, 2, 1, "a"), chat(51, 100, 1, 2, "b")]})
            .to_string(),
        );
        // The next push follows on: no gap, no fetch.
        let out = s.receive(&chat(52, 101, 2, 1, "c").to_string());
        assert!(out.frames.is_empty(), "{:?}", out.frames);
        // A resync catches up from the newest seen, not from the start.
        let out = s.receive(r#"{"msgid":21}"#);
        assert_eq!(parse(&out.frames[0])["after_seq"], 101);
    }

    #[test]
    fn seq_tracking_closes_gaps_in_any_order() {
        let mut t = SeqTrack::default();
        assert!(!t.observe(1));
        assert!(t.observe(3));
        assert!(!t.observe(2));
        assert_eq!(t.high_water, 3);
        assert!(!t.observe(2));
    }
}
