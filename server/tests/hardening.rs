//! Hardening: every limit is hit and answered as documented while other users are unaffected;
//! slow readers and half-open sockets are disconnected; login throttling; resume tokens; a
//! database outage answered with 503 and recovered from.
//!
//! Each test starts the real server in-process with small limits (SQLite, the embedded default,
//! except the outage test, which needs a database server to take away: PostgreSQL).

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use chat_server::{Application, Config, ShutdownHandle};
use common::{Backend, Client, Redis, TestDb, assert_ack, http_get, password_of};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Liveness bound for things that must happen (never a performance assertion).
const PATIENCE: Duration = Duration::from_secs(30);

/// A server with a configuration of the test's choosing, on its own database.
struct Server {
    port: u16,
    shutdown: ShutdownHandle,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    db: Option<TestDb>,
}

async fn server(backend: Backend, tune: impl FnOnce(&mut Config)) -> Server {
    let db = TestDb::create(backend).await;
    let mut config = Config::for_database(db.url());
    config.node_id = Some("hardened".into());
    tune(&mut config);
    let app = Application::build(config).await.expect("the server starts");
    Server {
        port: app.port(),
        shutdown: app.shutdown_handle(),
        task: Some(tokio::spawn(app.run_until_stopped())),
        db: Some(db),
    }
}

impl Server {
    async fn user(&self, name: &str) -> Client {
        let mut c = Client::connect(self.port).await;
        let id = c.register(name, &password_of(name)).await;
        c.login(id, &password_of(name)).await;
        c
    }

    async fn metric(&self, needle: &str) -> f64 {
        let (_, _, body) = http_get(self.port, "/metrics").await;
        body.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(PATIENCE, task).await;
        }
        if let Some(db) = self.db.take() {
            db.destroy().await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Sends `n` FRIEND_LIST requests without waiting, then returns their errnos in order.
async fn burst(client: &mut Client, n: usize) -> Vec<i64> {
    let replies = client.pipeline(vec![json!({"msgid": 14}); n]).await;
    replies
        .iter()
        .map(|r| r["errno"].as_i64().expect("errno"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_rate_gets_429_then_1008_while_others_are_unaffected() {
    let s = server(Backend::Sqlite, |c| {
        c.rate_per_connection = 5;
        c.rate_per_user = 0;
        c.abuse_close_after = 30;
    })
    .await;
    let mut ann = s.user("ann").await;
    let mut bob = s.user("bob").await;
    // The bucket holds ten seconds' worth (50); login used a token.
    let errnos = burst(&mut ann, 60).await;
    let ok = errnos.iter().filter(|e| **e == 0).count();
    assert!(
        (48..=52).contains(&ok),
        "about the burst passes: {errnos:?}"
    );
    assert!(
        errnos[55..].iter().all(|e| *e == 429),
        "then 429: {errnos:?}"
    );
    assert_eq!(
        burst(&mut bob, 10).await,
        vec![0; 10],
        "another connection is unaffected"
    );
    // Keeping at it closes the connection with 1008.
    for _ in 0..40 {
        if ann
            .try_send_text(json!({"msgid": 14}).to_string())
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(ann.close_code().await, Ok(Some(1008)));
    assert!(
        s.metric("chat_limit_hits_total{limit=\"rate_connection\"}")
            .await
            >= 10.0
    );
    assert_eq!(burst(&mut bob, 3).await, vec![0; 3]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_its_rate_gets_429_on_every_device_and_one_user_can_send_500_a_second() {
    let s = server(Backend::Sqlite, |c| {
        c.rate_per_user = 5;
        c.abuse_close_after = 1000;
    })
    .await;
    let mut ann = s.user("ann").await;
    let ann_id = ann.id;
    let mut ann2 = Client::connect(s.port).await;
    ann2.login(ann_id, &password_of("ann")).await;
    let mut bob = s.user("bob").await;
    let first = burst(&mut ann, 40).await;
    let second = burst(&mut ann2, 40).await;
    let ok = first.iter().chain(&second).filter(|e| **e == 0).count();
    assert!(
        (45..=55).contains(&ok),
        "the user's bucket is shared: {first:?} {second:?}"
    );
    assert!(second.contains(&429));
    assert_eq!(
        burst(&mut bob, 10).await,
        vec![0; 10],
        "other users are unaffected"
    );
    s.stop().await;

    // Default limits: one user sends 1,000 messages as fast as it can, all accepted.
    let s = server(Backend::Sqlite, |_| {}).await;
    let mut ann = s.user("ann").await;
    let bob = s.user("bob").await;
    let sends = (0..1000)
        .map(|i| json!({"msgid": 6, "toid": bob.id, "msg": format!("m{i}")}))
        .collect();
    let replies = ann.pipeline(sends).await;
    assert!(
        replies.iter().all(|r| r["errno"] == 0),
        "no 429 at the default limits"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_account_and_per_address() {
    let s = server(Backend::Sqlite, |c| {
        c.login_failures_per_account = 4;
        c.login_attempts_per_address = 0;
    })
    .await;
    let mut c = Client::connect(s.port).await;
    let ann = c.register("ann", &password_of("ann")).await;
    let bob = c.register("bob", &password_of("bob")).await;
    for _ in 0..4 {
        let r = c
            .request(json!({"msgid": 1, "id": ann, "password": "wrong"}))
            .await;
        assert_eq!(r["errno"], 1);
    }
    let r = c
        .request(json!({"msgid": 1, "id": ann, "password": password_of("ann")}))
        .await;
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(2), Some(429)),
        "{r}"
    );
    let r = c
        .request(json!({"msgid": 1, "name": "ann", "password": password_of("ann")}))
        .await;
    assert_eq!(r["errno"], 429, "by name too: the same account");
    c.login(bob, &password_of("bob")).await;
    assert!(
        s.metric("chat_limit_hits_total{limit=\"login_account\"}")
            .await
            >= 2.0
    );
    s.stop().await;

    let s = server(Backend::Sqlite, |c| {
        c.login_attempts_per_address = 3;
    })
    .await;
    let mut c = Client::connect(s.port).await;
    let ann = c.register("ann", &password_of("ann")).await;
    for _ in 0..3 {
        let r = c
            .request(json!({"msgid": 1, "id": ann + 100, "password": "x"}))
            .await;
        assert_eq!(r["errno"], 1);
    }
    let r = c
        .request(json!({"msgid": 1, "id": ann, "password": password_of("ann")}))
        .await;
    assert_eq!(r["errno"], 429, "the address spent its attempts: {r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_replica_and_per_user() {
    let s = server(Backend::Sqlite, |c| {
        c.max_connections = 3;
        c.max_connections_per_user = 2;
    })
    .await;
    let a = s.user("ann").await;
    let ann = a.id;
    let mut b = Client::connect(s.port).await;
    b.login(ann, &password_of("ann")).await;
    let mut c = Client::connect(s.port).await;
    let r = c
        .request(json!({"msgid": 1, "id": ann, "password": password_of("ann")}))
        .await;
    assert_eq!(r["errno"], 429, "a third device of one user: {r}");
    // A fourth socket is refused at the upgrade.
    let refused = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", s.port)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503)
        }
        other => panic!("the fourth connection is refused with 503, got {other:?}"),
    }
    a.close().await;
    // Room again once one closes.
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok((ws, _)) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", s.port)).await
        {
            drop(ws);
            break;
        }
        assert!(Instant::now() < deadline, "a slot frees up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ack(&b.request(json!({"msgid": 14})).await, 14, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_disconnected_and_others_keep_chatting() {
    let s = server(Backend::Sqlite, |c| {
        c.outbound_queue = 32;
        c.idle_timeout = 0;
    })
    .await;
    let sleeper = s.user("sleeper").await;
    let sleeper_id = sleeper.id;
    let sleeper_ws = sleeper.into_ws(); // never read again
    let mut ann = s.user("ann").await;
    let mut bob = s.user("bob").await;
    let big = "x".repeat(4000);
    let mut closed = false;
    for round in 0..200 {
        let sends = (0..20)
            .map(|_| json!({"msgid": 6, "toid": sleeper_id, "msg": big}))
            .collect();
        let replies = ann.pipeline(sends).await;
        assert!(
            replies.iter().all(|r| r["errno"] == 0),
            "sends to a slow reader still succeed"
        );
        // Meanwhile other users chat normally.
        bob.chat_ok(ann.id, &format!("round {round}")).await;
        ann.next_push(6).await;
        if s.metric("chat_slow_consumer_disconnects_total").await >= 1.0 {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the slow reader was disconnected (queue bounded at 32)"
    );
    let deadline = Instant::now() + PATIENCE;
    while s.metric("chat_ws_connections").await > 2.0 {
        assert!(Instant::now() < deadline, "its socket is gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(sleeper_ws);
    bob.chat_ok(ann.id, "still fine").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_socket_is_reaped_and_its_user_shows_offline() {
    let s = server(Backend::Sqlite, |c| c.idle_timeout = 2).await;
    let mut ann = s.user("ann").await;
    let ghost = s.user("ghost").await;
    ann.add_friend(ghost.id).await;
    let ghost_id = ghost.id;
    // The ghost's socket stays open but nothing answers the server's pings any more.
    let ghost_ws = ghost.into_ws();
    let started = Instant::now();
    let push = ann
        .recv_where("ghost offline", PATIENCE, |f| {
            f["msgid"] == 19 && f["id"] == ghost_id && f["state"] == "offline"
        })
        .await;
    assert_eq!(push["state"], "offline");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the idle timeout"
    );
    drop(ghost_ws);
    // ann, whose client keeps reading (and so answers pings), stays connected past the timeout
    // without sending anything.
    let quiet = tokio::time::timeout(Duration::from_secs(3), ann.next_frame()).await;
    assert!(quiet.is_err(), "nothing arrives meanwhile: {quiet:?}");
    assert_ack(&ann.request(json!({"msgid": 14})).await, 14, 0);
    assert!(s.metric("chat_limit_hits_total{limit=\"idle\"}").await >= 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_logs_in_without_the_password_until_logout_revokes_it() {
    let s = server(Backend::Sqlite, |_| {}).await;
    let mut ann = s.user("ann").await;
    let mut first = Client::connect(s.port).await;
    let reply = first.login(ann.id, &password_of("ann")).await;
    let token = reply["token"]
        .as_str()
        .expect("the login reply carries a token")
        .to_owned();
    assert_eq!(token.len(), 64);

    let mut resumed = Client::connect(s.port).await;
    let r = resumed.request(json!({"msgid": 1, "token": token})).await;
    assert_eq!(
        (r["errno"].as_i64(), r["id"].as_i64()),
        (Some(0), Some(ann.id)),
        "{r}"
    );
    assert_eq!(r["token"], token.as_str(), "resuming keeps the token");

    first.logout().await;
    let mut again = Client::connect(s.port).await;
    let r = again.request(json!({"msgid": 1, "token": token})).await;
    assert_eq!(r["errno"], 1, "a revoked token no longer works: {r}");
    let r = again
        .request(json!({"msgid": 1, "token": "0".repeat(64)}))
        .await;
    assert_eq!(r["errno"], 1, "an unknown token does not work");
    assert_ack(&ann.request(json!({"msgid": 14})).await, 14, 0);
    s.stop().await;

    let s = server(Backend::Sqlite, |c| c.resume_token_ttl = 1).await;
    let mut ann = s.user("ann").await;
    let mut c = Client::connect(s.port).await;
    let token = c.login(ann.id, &password_of("ann")).await["token"].clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = ann.request(json!({"msgid": 3})).await;
    assert_ack(&r, 3, 0);
    let mut late = Client::connect(s.port).await;
    let r = late.request(json!({"msgid": 1, "token": token})).await;
    assert_eq!(r["errno"], 1, "an expired token does not work: {r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_field_never_makes_the_server_act_as_another_user() {
    let s = server(Backend::Sqlite, |_| {}).await;
    let mut mallory = s.user("mallory").await;
    let mut victim = s.user("victim").await;
    let carol = s.user("carol").await;
    let gid = victim.create_group("private", "").await["id"]
        .as_i64()
        .expect("gid");
    let victim_id = victim.id;
    let as_victim = |mut v: Value| {
        v["id"] = json!(victim_id);
        v
    };
    let r = mallory
        .request(as_victim(json!({"msgid": 7, "friendid": carol.id})))
        .await;
    assert_ack(&r, 7, 0);
    assert!(
        victim.friends().await.is_empty(),
        "the victim's friends are untouched"
    );
    let r = mallory
        .request(as_victim(json!({"msgid": 10, "groupid": gid, "msg": "x"})))
        .await;
    assert_ack(&r, 10, 403);
    let r = mallory
        .request(as_victim(json!({"msgid": 16, "groupid": gid})))
        .await;
    assert_ack(&r, 16, 403);
    let r = mallory
        .request(as_victim(json!({"msgid": 17, "groupid": gid})))
        .await;
    assert_ack(&r, 17, 403);
    let r = mallory
        .request(as_victim(json!({"msgid": 13, "groupid": gid})))
        .await;
    assert_ack(&r, 13, 403);
    let r = mallory
        .request(as_victim(
            json!({"msgid": 6, "toid": carol.id, "msg": "hi"}),
        ))
        .await;
    assert_ack(&r, 6, 0);
    let (_, _, history) = mallory.history(json!({"toid": carol.id})).await;
    assert_eq!(
        history[0]["id"], mallory.id,
        "the sender is the session's user"
    );
    s.stop().await;
}

/// Runs a statement as the PostgreSQL superuser.
async fn postgres_admin(sql: &str) {
    let base = std::env::var("CHAT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let admin = sea_orm::Database::connect(format!("{base}/postgres"))
        .await
        .expect("admin");
    sea_orm::ConnectionTrait::execute_unprepared(&admin, sql)
        .await
        .expect(sql);
    admin.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_answered_503_quickly_and_recovered_from() {
    let s = server(Backend::Postgres, |c| {
        c.request_timeout = 3;
        c.db_pool = 4;
    })
    .await;
    let name =
        s.db.as_ref()
            .expect("db")
            .url()
            .rsplit('/')
            .next()
            .expect("name")
            .to_owned();
    let mut ann = s.user("ann").await;
    let mut bob = s.user("bob").await;
    ann.chat_ok(bob.id, "before").await;
    bob.next_push(6).await;

    // The database goes away: no new connections, existing ones killed.
    postgres_admin(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
    ))
    .await;
    postgres_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    let started = Instant::now();
    let r = ann.chat(bob.id, "during").await;
    assert_eq!(r["errno"], 503, "{r}");
    let r = ann.request(json!({"msgid": 14})).await;
    assert_ack(&r, 14, 503);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "fails fast enough: {:?}",
        started.elapsed()
    );
    let (status, _, _) = http_get(s.port, "/healthz").await;
    assert_eq!(status, 503, "/healthz reports the outage");
    // The server itself stays responsive: malformed input is still answered at once.
    ann.send_text("not json").await;
    assert_eq!(ann.next_frame().await["errno"], 400);

    // The database returns: the server recovers by itself.
    postgres_admin(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true")).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        if http_get(s.port, "/healthz").await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/healthz recovers");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = ann.chat(bob.id, "after").await;
    assert_eq!(r["errno"], 0, "{r}");
    let push = bob
        .recv_where("after", PATIENCE, |f| f["msg"] == "after")
        .await;
    assert_eq!(push["msgid"], 6);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_cut_short_by_the_time_limit_leaves_the_connection_logged_out() {
    let redis = Redis::start();
    let redis_url = redis.url();
    let s = server(Backend::Sqlite, |c| {
        c.redis_url = Some(redis_url);
        c.request_timeout = 1;
    })
    .await;
    let bob = s.user("bob").await;
    let mut ann = Client::connect(s.port).await;
    let id = ann.register("ann", &password_of("ann")).await;
    let login = json!({"msgid": 1, "id": id, "password": password_of("ann")});
    assert_eq!(ann.request(login.clone()).await["errno"], 0);
    ann.add_friend(bob.id).await;
    ann.logout().await;

    // Redis stops answering: the login registers the connection, then waits on Redis (its
    // friend's presence) past the one-second limit.
    redis.pause();
    let r = ann.request(login.clone()).await;
    redis.resume();
    assert_eq!(r["errno"], 503, "{r}");

    // Logged out as the 503 said: the same request again logs in (it was answered 409, "this
    // connection is already logged in", by a connection the server held logged in).
    let r = ann.request(login).await;
    assert_eq!(r["errno"], 0, "{r}");
    let r = ann.chat(bob.id, "back").await;
    assert_eq!(r["errno"], 0, "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_and_pings_from_clients_are_handled() {
    let s = server(Backend::Sqlite, |_| {}).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", s.port))
        .await
        .expect("connect");
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    ws.send(Message::Ping(vec![9].into())).await.expect("ping");
    let mut got_pong = false;
    let mut got_error = false;
    while !(got_pong && got_error) {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame")
        {
            Some(Ok(Message::Pong(p))) => got_pong = p.as_ref() == [9],
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                got_error = v["msgid"] == 20 && v["errno"] == 400;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    s.stop().await;
}

/// A TCP stream that records every byte the server sends, to look at the frames themselves.
struct Recorder {
    inner: tokio::net::TcpStream,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl tokio::io::AsyncRead for Recorder {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let fresh = buf.filled()[before..].to_vec();
        self.seen.lock().unwrap().extend_from_slice(&fresh);
        polled
    }
}

impl tokio::io::AsyncWrite for Recorder {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The (fin, opcode, payload length) of each unmasked frame in `bytes`.
fn frame_headers(mut bytes: &[u8]) -> Vec<(bool, u8, usize)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let (fin, opcode) = (bytes[0] & 0x80 != 0, bytes[0] & 0x0F);
        assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
        let (len, head) = match bytes[1] & 0x7F {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((fin, opcode, len));
        bytes = &bytes[(head + len).min(bytes.len())..];
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_replies_are_sent_as_small_fragments_that_clients_reassemble() {
    let s = server(Backend::Sqlite, |_| {}).await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let bob_id = bob.id;
    bob.logout().await;
    let text = "é".repeat(1000);
    let sends = (0..100)
        .map(|_| json!({"msgid": 6, "toid": bob_id, "msg": text}))
        .collect();
    for ack in alice.pipeline(sends).await {
        assert_ack(&ack, 6, 0);
    }

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    let recorder = Recorder {
        inner: tcp,
        seen: seen.clone(),
    };
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://127.0.0.1:{}/ws", s.port), recorder)
            .await
            .expect("handshake");
    let login = json!({"msgid": 1, "id": bob_id, "password": password_of("bob")});
    ws.send(Message::Text(login.to_string().into()))
        .await
        .unwrap();
    let reply = loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("whole JSON");
                if v["msgid"] == 2 {
                    break (v, t.len());
                }
            }
            Some(Ok(_)) => {}
            other => panic!("no login reply: {other:?}"),
        }
    };
    let (reply, reply_len) = reply;
    assert_eq!(reply["errno"], 0);
    let offline = reply["offlinemsg"].as_array().expect("offlinemsg");
    assert_eq!(offline.len(), 100);
    assert!(offline.iter().all(|m| m["msg"] == text.as_str()));
    assert!(reply_len > 200_000, "a large reply: {reply_len} bytes");

    let bytes = seen.lock().unwrap().clone();
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head")
        + 4;
    let frames = frame_headers(&bytes[head_end..]);
    assert!(
        frames.iter().all(|&(_, _, len)| len <= 2048),
        "every frame at most 2 KiB"
    );
    // The login reply: a text frame, continuations, the last one final.
    let start = frames
        .iter()
        .position(|&(fin, op, _)| op == 1 && !fin)
        .expect("a fragmented text message");
    let end = start
        + frames[start..]
            .iter()
            .position(|&(fin, _, _)| fin)
            .expect("its final fragment");
    assert!(frames[start + 1..=end].iter().all(|&(_, op, _)| op == 0));
    let total: usize = frames[start..=end].iter().map(|&(_, _, len)| len).sum();
    assert_eq!(total, reply_len);

    // Not a WebSocket handshake: a clear HTTP error, and the server goes on.
    let (status, _, body) = http_get(s.port, "/ws").await;
    assert_eq!(status, 400);
    assert!(body.contains("expected a WebSocket upgrade"), "{body}");
    let mut carol = s.user("carol").await;
    carol.chat_ok(bob_id, "still serving").await;
    s.stop().await;
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The real `chat-server` binary as a child process (its memory is its own, apart from the
/// tests running beside it in this process), killed when dropped.
struct ServerProcess {
    port: u16,
    child: std::process::Child,
}

impl ServerProcess {
    async fn start(db: &TestDb) -> ServerProcess {
        let port = common::free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", db.url(), "--log", "warn"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the chat-server binary starts");
        let server = ServerProcess { port, child };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let healthy = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
                && http_get(port, "/healthz").await.0 == 200;
            if healthy {
                return server;
            }
            assert!(Instant::now() < deadline, "the server becomes healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A WebSocket client written by hand, so that it keeps no buffers of its own.
struct RawClient(tokio::net::TcpStream);

impl RawClient {
    async fn connect(port: u16) -> RawClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
        RawClient(tcp)
    }

    /// Sends one masked text frame.
    async fn send(&mut self, text: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mask = [0x5A, 0x17, 0xC3, 0x08];
        let mut frame = vec![0x81];
        match text.len() {
            n if n <= 125 => frame.push(0x80 | n as u8),
            n if n <= 65_535 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&frame).await.unwrap();
    }

    /// Reads one unfragmented text frame.
    async fn recv(&mut self) -> Value {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; 2];
        self.0.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x81, "a final text frame");
        let len = match head[1] & 0x7F {
            126 => self.0.read_u16().await.unwrap() as usize,
            127 => self.0.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_sent_a_huge_frame_stay_open_without_keeping_it() {
    let db = TestDb::create(Backend::Sqlite).await;
    let s = ServerProcess::start(&db).await;
    let pid = s.child.id();
    let huge = {
        let mut text = br#"{"msgid":4,"name":"x","password":""#.to_vec();
        text.resize(1_000_000 - 2, b'p');
        text.extend_from_slice(br#""}"#);
        text
    };
    let mut clients = Vec::new();
    let before = rss_kib(pid);
    for _ in 0..128 {
        let mut c = RawClient::connect(s.port).await;
        c.send(&huge).await;
        let reply = c.recv().await;
        assert_eq!(reply["errno"], 413, "{reply}");
        clients.push(c);
    }
    let grown = rss_kib(pid).saturating_sub(before);
    // Each connection kept its 1 MB frame (128 MiB in all) before large frames were cut into
    // fragments on their way in; now what is left is the allocator's working set.
    assert!(
        grown < 64 * 1024,
        "server RSS grew {grown} KiB over 128 connections"
    );
    for c in &mut clients {
        c.send(br#"{"msgid":4,"name":"","password":"p"}"#).await;
        assert_eq!(c.recv().await["errno"], 400, "the connection still answers");
    }
    drop(clients);
    drop(s);
    db.destroy().await;
}
