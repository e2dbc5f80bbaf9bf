//! The baseline relay: the least a WebSocket chat server can do on this machine. It speaks
//! just enough of the protocol for `chat` (register, log in, 1:1 send) and routes each message
//! to the recipient's socket: no storage, no presence, no JSON parsing beyond the fields that
//! route. `chat --baseline` measures it with the same load as the server, as the ceiling the
//! server's throughput is compared with.
//!
//! Its shape is the server's (one task per socket, a bounded push queue per connection,
//! replies and pushes written in batches), so the difference between the two is what the
//! server does on top: validation, storage, the bus, metrics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::net::next_ready;

/// Pushes that may wait for one connection (as the server's default).
const QUEUE: usize = 4096;
/// Messages written before a flush.
const BURST: usize = 64;

/// Who is registered and who is connected.
#[derive(Default)]
struct Relay {
    names: Mutex<HashMap<String, i64>>,
    next_user: AtomicI64,
    next_message: AtomicI64,
    online: RwLock<HashMap<i64, mpsc::Sender<Arc<str>>>>,
}

impl Relay {
    /// Forgets `id`'s route if it is still this connection's queue `tx` (a later login of the
    /// same user on another socket keeps its own).
    fn went_offline(&self, id: i64, tx: &mpsc::Sender<Arc<str>>) {
        if let Ok(mut online) = self.online.write()
            && online.get(&id).is_some_and(|route| route.same_channel(tx))
        {
            online.remove(&id);
        }
    }
}

/// The routing fields of a request.
#[derive(Deserialize)]
struct Request<'a> {
    msgid: i64,
    #[serde(default)]
    reqid: Option<i64>,
    #[serde(default)]
    id: Option<i64>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    toid: Option<i64>,
    #[serde(default, borrow)]
    msg: Option<Cow<'a, str>>,
}

/// Binds `addr`; the listener and the `ws://` URL it serves.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let url = format!("ws://{}/ws", listener.local_addr()?);
    Ok((listener, url))
}

/// Accepts and serves connections forever.
pub async fn serve(listener: TcpListener) {
    let relay = Arc::new(Relay::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let relay = relay.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            connection(stream, relay).await;
        });
    }
}

/// `chat-bench relay`: prints `listening <url>` and serves until killed.
pub async fn run_standalone(listen: SocketAddr) -> anyhow::Result<()> {
    let (listener, url) = bind(listen).await?;
    println!("listening {url}");
    tokio::select! {
        _ = serve(listener) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// A relay running as a child process of this program.
pub struct RelayChild {
    /// Its `ws://` URL.
    pub url: String,
    /// Its process id (its CPU time is reported as the "server" of the baseline run).
    pub pid: u32,
    child: tokio::process::Child,
}

impl RelayChild {
    /// Stops the child (it is ours: killed by its own handle).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts `chat-bench relay` as a child process (its own runtime and threads, as a server
/// would have) and waits for its URL.
pub async fn spawn_child() -> anyhow::Result<RelayChild> {
    let exe = std::env::current_exe().context("finding this program")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["--quiet", "relay", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the baseline relay")?;
    let stdout = child.stdout.take().context("relay stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await?;
    let url = line
        .trim()
        .strip_prefix("listening ")
        .with_context(|| format!("unexpected relay output {line:?}"))?
        .to_owned();
    let pid = child.id().context("relay pid")?;
    Ok(RelayChild { url, pid, child })
}

async fn connection(stream: TcpStream, relay: Arc<Relay>) {
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Arc<str>>(QUEUE);
    let mut me: Option<(i64, Arc<str>)> = None;
    loop {
        tokio::select! {
            push = rx.recv() => {
                let Some(push) = push else { break };
                let mut ok = ws.feed(Message::Text((&*push).into())).await.is_ok();
                for _ in 1..BURST {
                    let Ok(next) = rx.try_recv() else { break };
                    ok = ok && ws.feed(Message::Text((&*next).into())).await.is_ok();
                }
                if !ok || ws.flush().await.is_err() {
                    break;
                }
            }
            incoming = ws.next() => {
                let mut incoming = incoming;
                let mut ok = true;
                for handled in 1..=BURST {
                    match incoming {
                        Some(Ok(Message::Text(text))) => {
                            if let Some(reply) = handle(&relay, &tx, &mut me, &text) {
                                ok = ok && ws.feed(Message::Text(reply.into())).await.is_ok();
                            }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            ok = false;
                            break;
                        }
                        Some(Ok(_)) => {}
                    }
                    match next_ready(&mut ws, handled, BURST) {
                        Some(next) => incoming = next,
                        None => break,
                    }
                }
                if !ok || ws.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some((id, _)) = me {
        relay.went_offline(id, &tx);
    }
}

/// Answers one request; pushes go straight to the recipient's queue.
fn handle(
    relay: &Relay,
    tx: &mpsc::Sender<Arc<str>>,
    me: &mut Option<(i64, Arc<str>)>,
    text: &str,
) -> Option<String> {
    let Ok(req) = serde_json::from_str::<Request>(text) else {
        return Some(r#"{"msgid":20,"errno":400,"errmsg":"not a request"}"#.into());
    };
    let reqid = req.reqid.unwrap_or(0);
    let ack = |ackof: i64, errno: i64, errmsg: &str| {
        format!(
            r#"{{"msgid":11,"ackof":{ackof},"reqid":{reqid},"errno":{errno},"errmsg":"{errmsg}"}}"#
        )
    };
    match req.msgid {
        4 => {
            let name = req.name.unwrap_or_default().into_owned();
            let id = relay.next_user.fetch_add(1, Ordering::Relaxed) + 1;
            if let Ok(mut names) = relay.names.lock() {
                names.insert(name, id);
            }
            Some(format!(
                r#"{{"msgid":5,"reqid":{reqid},"errno":0,"errmsg":"","id":{id}}}"#
            ))
        }
        1 => {
            let id = match (req.id, &req.name) {
                (Some(id), _) => Some(id),
                (None, Some(n)) => relay.names.lock().ok().and_then(|m| m.get(&**n).copied()),
                _ => None,
            };
            let Some(id) = id else {
                return Some(format!(
                    r#"{{"msgid":2,"reqid":{reqid},"errno":1,"errmsg":"unknown user"}}"#
                ));
            };
            let name: Arc<str> = format!("u{id}").into();
            if let Ok(mut online) = relay.online.write() {
                online.insert(id, tx.clone());
            }
            *me = Some((id, name.clone()));
            Some(format!(
                r#"{{"msgid":2,"reqid":{reqid},"errno":0,"errmsg":"","id":{id},"name":"{name}","node":"relay","friends":[],"groups":[],"offlinemsg":[]}}"#
            ))
        }
        6 => {
            let (Some((from, name)), Some(to), Some(msg)) = (me.as_ref(), req.toid, req.msg) else {
                return Some(ack(6, 400, "not logged in, or no toid/msg"));
            };
            let mid = relay.next_message.fetch_add(1, Ordering::Relaxed) + 1;
            let time = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
            let msg = serde_json::to_string(&msg).unwrap_or_default();
            let push: Arc<str> = format!(
                r#"{{"msgid":6,"message_id":{mid},"seq":{mid},"id":{from},"name":"{name}","toid":{to},"msg":{msg},"time":"{time}"}}"#
            )
            .into();
            let peer = relay
                .online
                .read()
                .ok()
                .and_then(|online| online.get(&to).cloned());
            if let Some(peer) = peer {
                let _ = peer.try_send(push);
            }
            Some(format!(
                r#"{{"msgid":11,"ackof":6,"reqid":{reqid},"errno":0,"errmsg":"","message_id":{mid},"seq":{mid},"time":"{time}"}}"#
            ))
        }
        3 => {
            if let Some((id, _)) = me.take() {
                relay.went_offline(id, tx);
            }
            Some(ack(3, 0, ""))
        }
        other => Some(ack(other, 400, "not supported by the baseline relay")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closing_socket_leaves_the_route_of_the_users_newer_socket() {
        let relay = Relay::default();
        let (old, _old_rx) = mpsc::channel::<Arc<str>>(1);
        let (new, _new_rx) = mpsc::channel::<Arc<str>>(1);
        relay.online.write().unwrap().insert(7, new.clone());
        relay.went_offline(7, &old);
        assert!(
            relay.online.read().unwrap().contains_key(&7),
            "the newer socket keeps it"
        );
        relay.went_offline(7, &new);
        assert!(!relay.online.read().unwrap().contains_key(&7));
    }
}
