//! The connection task against the real server, restarted under it: it reconnects with
//! backoff, logs back in, sends what was queued while the link was down, and hands every
//! message to the app exactly once (de-duplicated by message_id across pushes, the login
//! backlog and catch-up).

mod common;

use std::time::Duration;

use chat_tui::connection::{Backoff, Connection, ConnectionConfig};
use chat_tui::protocol::{Chat, LoginBy, Password, Request, ServerMessage};
use chat_tui::session::{ConnEvent, LinkStatus};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use common::{PASSWORD, Proto, TIMEOUT, TestServer};

/// Everything the app was handed, to count messages.
#[derive(Default)]
struct Seen {
    /// Every chat message handed over, in order.
    chats: Vec<Chat>,
    /// Re-logins seen.
    relogins: usize,
    /// Replies to chat sends: (text, errno).
    send_acks: Vec<(String, i64)>,
    /// Whether the link was seen down.
    went_down: bool,
}

impl Seen {
    /// How many times a text was handed over.
    fn count(&self, text: &str) -> usize {
        self.chats.iter().filter(|c| c.msg == text).count()
    }

    /// Records one event.
    fn take(&mut self, event: ConnEvent) {
        match event {
            ConnEvent::Chats(c) => self.chats.extend(c),
            ConnEvent::Relogin(ack) => {
                self.relogins += 1;
                self.chats.extend(ack.offlinemsg);
            }
            ConnEvent::Reply {
                request: Request::Login { .. },
                reply: ServerMessage::LoginAck(ack),
            } => {
                assert_eq!(ack.errno, 0, "login: {ack:?}");
                self.chats.extend(ack.offlinemsg);
            }
            ConnEvent::Reply {
                request: Request::OneChat { msg, .. },
                reply,
            } => self.send_acks.push((msg, reply.status().0)),
            ConnEvent::Status(LinkStatus::Reconnecting { .. }) => self.went_down = true,
            _ => {}
        }
    }
}

/// Takes events until `done` holds.
async fn until(
    events: &mut UnboundedReceiver<ConnEvent>,
    seen: &mut Seen,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !done(seen) {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the expected events arrive in time")
            .expect("the connection task runs");
        seen.take(event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_it_logs_back_in_sends_the_queue_and_loses_or_repeats_nothing() {
    let server = TestServer::start().await;
    let mut bob = Proto::connect(&server.url).await;
    let bob_id = bob.register_and_login("bob").await;
    let mut setup = Proto::connect(&server.url).await;
    let alice_id = setup.register_and_login("alice").await;
    drop(setup);

    let mut config = ConnectionConfig::new(server.url.clone());
    config.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    let (conn, mut events) = Connection::spawn(config);
    let mut seen = Seen::default();
    conn.send(Request::Login {
        who: LoginBy::Id(alice_id),
        password: Password(PASSWORD.into()),
    });

    // A message while connected arrives live.
    let ack = bob
        .request(json!({"msgid": 6, "toid": alice_id, "msg": "before the restart"}))
        .await;
    assert_eq!(ack["errno"], 0, "{ack}");
    until(&mut events, &mut seen, |s| {
        s.count("before the restart") == 1
    })
    .await;

    // The server goes away; a send made meanwhile waits in the queue.
    let (db, port) = server.stop_keeping_db().await;
    until(&mut events, &mut seen, |s| s.went_down).await;
    conn.send(Request::OneChat {
        toid: bob_id,
        msg: "queued while down".into(),
        txnid: None,
    });

    // The server comes back on the same port and database; bob writes again.
    let server = TestServer::start_at(db, port).await;
    let mut bob = Proto::connect(&server.url).await;
    bob.login(bob_id).await;
    let ack = bob
        .request(json!({"msgid": 6, "toid": alice_id, "msg": "after the restart"}))
        .await;
    assert_eq!(ack["errno"], 0, "{ack}");

    until(&mut events, &mut seen, |s| {
        s.relogins >= 1 && !s.send_acks.is_empty() && s.count("after the restart") >= 1
    })
    .await;
    assert_eq!(
        seen.send_acks,
        vec![("queued while down".to_owned(), 0)],
        "the queued send is acked once"
    );
    let push = bob
        .push_where(|f| f["msgid"] == 6 && f["msg"] == "queued while down")
        .await;
    assert_eq!(push["id"], alice_id);

    // A marker sent last: once it is in, nothing earlier may come twice.
    let ack = bob
        .request(json!({"msgid": 6, "toid": alice_id, "msg": "marker"}))
        .await;
    assert_eq!(ack["errno"], 0, "{ack}");
    until(&mut events, &mut seen, |s| s.count("marker") == 1).await;
    assert_eq!(seen.count("before the restart"), 1, "de-duplicated");
    assert_eq!(seen.count("after the restart"), 1, "de-duplicated");
    let mut ids: Vec<i64> = seen.chats.iter().map(|c| c.message_id).collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "no message_id handed over twice");

    conn.close().await;
    server.stop().await;
}
