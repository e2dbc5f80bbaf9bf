//! Speaking the protocol: a request/reply client for setup (register, log in, befriend, create
//! and join groups), the lean frame parser of the hot loops, and the stamps that chat texts
//! carry so that delivery latency is measured from the send time written into the message.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::net::{self, Sources, Target, Ws};

/// Longest wait for one setup reply (argon2 on two busy cores can take a while).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of a setup request answered 429 (rate limited) or 503 (try again).
const RETRIES: u32 = 50;
/// REG_MSG_ACK's errno for a name that is registered already.
const NAME_TAKEN: i64 = 2;

/// The clock's origin: the first use of it in this process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`]: the clock of every stamp.
pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// The tokio instant of a [`now_us`] timestamp.
pub fn instant_at(us: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(epoch() + Duration::from_micros(us))
}

/// The password of every bench user.
pub const PASSWORD: &str = "bench-password";

/// A frame from the server, parsed only as far as the bench needs (unknown fields skipped).
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    /// Message id.
    pub msgid: i64,
    /// Echo of the request's reqid (replies).
    #[serde(default)]
    pub reqid: Option<i64>,
    /// 0 on success (replies).
    #[serde(default)]
    pub errno: Option<i64>,
    /// Stored message id (chat acks and pushes).
    #[serde(default)]
    pub message_id: Option<i64>,
    /// Sender (pushes), or own id (login reply).
    #[serde(default)]
    pub id: Option<i64>,
    /// Group of a group push.
    #[serde(default)]
    pub groupid: Option<i64>,
    /// Per-conversation sequence number.
    #[serde(default)]
    pub seq: Option<i64>,
    /// Chat text (pushes).
    #[serde(default, borrow)]
    pub msg: Option<Cow<'a, str>>,
}

impl<'a> Frame<'a> {
    /// Parses a text frame.
    pub fn parse(text: &'a str) -> Option<Frame<'a>> {
        serde_json::from_str(text).ok()
    }
}

/// Appends `s<sender>:<seq>:<micros>:` padded with dots to `size` bytes to `out`: who sent it,
/// which one, and when it was due (open loop) or sent (closed loop).
fn push_stamp(out: &mut String, sender: u32, seq: u64, due_us: u64, size: usize) {
    use std::fmt::Write;
    let start = out.len();
    let _ = write!(out, "s{sender}:{seq}:{due_us}:");
    let pad = size.saturating_sub(out.len() - start);
    out.extend(std::iter::repeat_n('.', pad));
}

/// The text of a chat send (`msgid` 6 to user `to`, or 10 to group `to`) whose `msg` is a
/// stamp (`sender`, `seq`, micros; see `push_stamp`), built in one allocation: the hot loops send one per message.
pub fn stamped_send(
    group: bool,
    reqid: i64,
    to: i64,
    stamp: (u32, u64, u64),
    size: usize,
) -> String {
    use std::fmt::Write;
    let (msgid, field) = if group { (10, "groupid") } else { (6, "toid") };
    let mut s = String::with_capacity(size + 64);
    let _ = write!(
        s,
        r#"{{"msgid":{msgid},"reqid":{reqid},"{field}":{to},"msg":""#
    );
    let (sender, seq, due_us) = stamp;
    push_stamp(&mut s, sender, seq, due_us, size);
    s.push_str("\"}");
    s
}

/// Reads a stamp written by `push_stamp`: (sender, seq, micros).
pub fn parse_stamp(msg: &str) -> Option<(u32, u64, u64)> {
    let rest = msg.strip_prefix('s')?;
    let mut parts = rest.splitn(4, ':');
    let sender = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let due = parts.next()?.parse().ok()?;
    Some((sender, seq, due))
}

/// A client that sends one request at a time and waits for its reply, skipping pushes.
pub struct Client {
    ws: Ws,
    next_reqid: i64,
}

impl Client {
    /// Connects to `target` from the next source address.
    pub async fn open(target: &Target, sources: &Sources) -> anyhow::Result<Client> {
        Ok(Client {
            ws: net::connect(target, sources).await?,
            next_reqid: 1,
        })
    }

    /// Sends `req` with a fresh reqid and returns its reply (any errno).
    pub async fn request(&mut self, mut req: Value) -> anyhow::Result<Value> {
        let reqid = self.next_reqid;
        self.next_reqid += 1;
        req["reqid"] = json!(reqid);
        self.ws.send(Message::Text(req.to_string().into())).await?;
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no reply to {req} within {REPLY_TIMEOUT:?}"))?;
            let text = match next {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(c))) => bail!("server closed the connection: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e).context("reading a reply"),
                None => bail!("server closed the connection"),
            };
            let Some(frame) = Frame::parse(&text) else {
                continue;
            };
            if frame.reqid == Some(reqid) && matches!(frame.msgid, 2 | 5 | 11 | 20) {
                return Ok(serde_json::from_str(&text)?);
            }
        }
    }

    /// Sends `req` and returns its successful reply; 429 and 503 are retried after a pause,
    /// any other errno is an error.
    pub async fn call(&mut self, req: Value) -> anyhow::Result<Value> {
        let reply = self.served(&req).await?;
        match reply["errno"].as_i64() {
            Some(0) => Ok(reply),
            _ => bail!("{req} failed: {reply}"),
        }
    }

    /// Sends `req` until it is answered with something other than 429 or 503 (retried after a
    /// growing pause); that reply, whatever its errno.
    async fn served(&mut self, req: &Value) -> anyhow::Result<Value> {
        let mut pause = Duration::from_millis(50);
        for _ in 0..RETRIES {
            let reply = self.request(req.clone()).await?;
            match reply["errno"].as_i64() {
                Some(429 | 503) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                _ => return Ok(reply),
            }
        }
        bail!("{req}: still rate limited or unavailable after {RETRIES} tries")
    }

    /// Registers `name` with the bench password; its user id. A name taken already (errno 2:
    /// an earlier run with the same `--prefix`) is logged in by name with the bench password
    /// instead, so that a second run reuses the first one's users and their conversations.
    pub async fn register(&mut self, name: &str) -> anyhow::Result<i64> {
        let req = json!({"msgid": 4, "name": name, "password": PASSWORD});
        let reply = self.served(&req).await?;
        let reply = match reply["errno"].as_i64() {
            Some(0) => reply,
            Some(NAME_TAKEN) => self
                .call(json!({"msgid": 1, "name": name, "password": PASSWORD}))
                .await
                .with_context(|| format!("{name} exists but is not a chat-bench user"))?,
            _ => bail!("{req} failed: {reply}"),
        };
        reply["id"].as_i64().context("reply without id")
    }

    /// Logs in by id; the login reply.
    pub async fn login(&mut self, id: i64) -> anyhow::Result<Value> {
        self.call(json!({"msgid": 1, "id": id, "password": PASSWORD}))
            .await
    }

    /// Logs in with a resume token (the `token` of an earlier login reply); the login reply.
    pub async fn login_token(&mut self, token: &str) -> anyhow::Result<Value> {
        self.call(json!({"msgid": 1, "token": token})).await
    }

    /// The socket, for a scenario's own loop.
    pub fn into_ws(self) -> Ws {
        self.ws
    }

    /// The next reqid this client would use (scenarios continue the count).
    pub fn next_reqid(&self) -> i64 {
        self.next_reqid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamp alone.
    fn stamp(sender: u32, seq: u64, due_us: u64, size: usize) -> String {
        let mut s = String::new();
        push_stamp(&mut s, sender, seq, due_us, size);
        s
    }

    #[test]
    fn stamps_round_trip_at_the_requested_size() {
        let s = stamp(12, 345, 6_789_012, 64);
        assert_eq!(s.len(), 64);
        assert_eq!(parse_stamp(&s), Some((12, 345, 6_789_012)));
        assert_eq!(parse_stamp("hello"), None);
    }

    #[test]
    fn stamped_sends_are_the_protocol_s_chat_requests() {
        let one: Value = serde_json::from_str(&stamped_send(false, 7, 42, (3, 4, 5), 64)).unwrap();
        assert_eq!(one["msgid"], 6);
        assert_eq!(one["reqid"], 7);
        assert_eq!(one["toid"], 42);
        assert_eq!(one["msg"].as_str(), Some(stamp(3, 4, 5, 64).as_str()));
        let group: Value = serde_json::from_str(&stamped_send(true, 8, 9, (1, 2, 3), 16)).unwrap();
        assert_eq!(
            (group["msgid"].as_i64(), group["groupid"].as_i64()),
            (Some(10), Some(9))
        );
        assert_eq!(parse_stamp(group["msg"].as_str().unwrap()), Some((1, 2, 3)));
    }

    #[test]
    fn frames_parse_only_what_is_needed() {
        let f = Frame::parse(
            r#"{"msgid":6,"message_id":9,"seq":3,"id":4,"name":"a","toid":5,"msg":"s1:2:3:..","time":"t"}"#,
        )
        .unwrap();
        assert_eq!(
            (f.msgid, f.message_id, f.id, f.seq),
            (6, Some(9), Some(4), Some(3))
        );
        assert_eq!(f.msg.as_deref(), Some("s1:2:3:.."));
        assert!(Frame::parse("not json").is_none());
    }
}
