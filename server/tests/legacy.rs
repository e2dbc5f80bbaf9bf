//! The legacy TCP port (`--legacy-listen`, `docs/legacy.md`): the course's C++ client protocol
//! spoken over raw TCP by `legacy_client` (a reproduction of that client), against the real
//! server started in-process, next to WebSocket users of the same server.
//!
//! Single-node tests run on SQLite (the embedded default). The cluster tests need MariaDB and a
//! private `redis-server` as `cluster.rs` does, and the nginx test nginx with its stream module
//! (`./scripts/test.sh` provides them).

#[allow(dead_code)]
mod common;
mod legacy_client;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_server::{Application, Config, ShutdownHandle};
use common::{
    Backend, Client, Nginx, Redis, TestDb, assert_ack, free_port, http_get, is_utc_millis_time,
    password_of,
};
use legacy_client::{Chat, LegacyClient, ORIGINAL_BUFFER, parse_chat};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Liveness bound for things that must happen (never a performance assertion).
const PATIENCE: Duration = Duration::from_secs(30);

/// A server with the legacy listener on port 0, on its own database.
struct Server {
    port: u16,
    legacy: u16,
    shutdown: ShutdownHandle,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    db: Option<TestDb>,
}

async fn server(tune: impl FnOnce(&mut Config)) -> Server {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut server = start(db.url(), None, "legacy-node", tune).await;
    server.db = Some(db);
    server
}

async fn start(
    database_url: &str,
    redis_url: Option<String>,
    node: &str,
    tune: impl FnOnce(&mut Config),
) -> Server {
    let mut config = Config::for_database(database_url);
    config.node_id = Some(node.into());
    config.redis_url = redis_url;
    config.legacy_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    tune(&mut config);
    let app = Application::build(config)
        .await
        .unwrap_or_else(|e| panic!("the server {node} starts: {e:?}"));
    Server {
        port: app.port(),
        legacy: app.legacy_port().expect("the legacy listener is bound"),
        shutdown: app.shutdown_handle(),
        task: Some(tokio::spawn(app.run_until_stopped())),
        db: None,
    }
}

impl Server {
    /// A new legacy connection, not logged in.
    async fn legacy(&self) -> LegacyClient {
        LegacyClient::connect(self.legacy).await
    }

    /// Registers `name` (password `pw-{name}`) over TCP and logs a new TCP connection in.
    async fn legacy_user(&self, name: &str) -> LegacyClient {
        let mut c = self.legacy().await;
        let id = c.register_ok(name, &password_of(name)).await;
        c.login_ok(id, &password_of(name)).await;
        c
    }

    /// Registers `name` over WebSocket and logs a new WebSocket connection in.
    async fn ws_user(&self, name: &str) -> Client {
        let mut c = Client::connect(self.port).await;
        let id = c.register(name, &password_of(name)).await;
        c.login(id, &password_of(name)).await;
        c
    }

    /// Stops the server, which must end cleanly, and drops its database.
    async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("the server stops within the timeout")
                .expect("the server task does not panic")
                .expect("run_until_stopped returns Ok");
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

/// A registration request as the original client sends it (without its NUL).
fn reg(name: &str) -> String {
    json!({"msgid": 4, "name": name, "password": password_of(name)}).to_string()
}

/// `2026-11-21T05:10:24.123Z` → `2026-11-21 05:10:24`.
fn original_time(rfc3339: &Value) -> String {
    let t = rfc3339.as_str().expect("a time");
    format!("{} {}", &t[..10], &t[11..19])
}

/// The keys of an object.
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_any_framing_are_all_answered_each_reply_one_object_and_one_nul() {
    let s = server(|_| {}).await;
    let mut c = s.legacy().await;
    // NUL-terminated, one per write, as the original client sends.
    c.send_raw(format!("{}\0", reg("n1")).as_bytes()).await;
    // Several in one write.
    c.send_raw(format!("{}\0{}\0{}\0", reg("n2"), reg("n3"), reg("n4")).as_bytes())
        .await;
    // One split over many writes.
    let split = format!("{}\0", reg("n5"));
    for part in split.as_bytes().chunks(7) {
        c.send_raw(part).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Whitespace instead of NUL, and nothing at all between two objects.
    c.send_raw(format!("{} \r\n\t{}{}\n", reg("n6"), reg("n7"), reg("n8")).as_bytes())
        .await;
    // NUL bytes and whitespace mixed around one.
    c.send_raw(format!("\0 \n{}\0\0  \0", reg("n9")).as_bytes())
        .await;

    let mut ids = Vec::new();
    for i in 1..=9 {
        let reply = c.next_object().await;
        assert_eq!(
            keys(&reply),
            keys(&json!({"msgid":5,"errno":0,"id":1})),
            "{reply}"
        );
        assert_eq!(reply["errno"], 0, "n{i} is registered: {reply}");
        ids.push(reply["id"].as_i64().expect("an id"));
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "answered in request order: {ids:?}"
    );
    assert!(c.sizes.iter().all(|&n| n <= ORIGINAL_BUFFER));

    // The accounts work: one logs in over TCP, another over WebSocket.
    let login = c.login_ok(ids[4], &password_of("n5")).await;
    assert_eq!(login.name, "n5");
    let mut ws = Client::connect(s.port).await;
    ws.login(ids[8], &password_of("n9")).await;
    ws.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_user_and_a_websocket_user_chat_both_ways() {
    let s = server(|_| {}).await;
    let mut ann = s.legacy_user("ann").await;
    let mut bob = s.ws_user("bob").await;

    ann.chat(bob.id, "hello from tcp").await;
    let push = bob.next_push(6).await;
    assert_eq!(
        (&push["id"], &push["name"], &push["toid"], &push["msg"]),
        (
            &json!(ann.id),
            &json!("ann"),
            &json!(bob.id),
            &json!("hello from tcp")
        ),
        "{push}"
    );
    assert!(is_utc_millis_time(push["time"].as_str().expect("time")));
    assert!(push["message_id"].is_i64() && push["seq"] == 1);

    let ack = bob.chat_ok(ann.id, "hello from ws").await;
    let raw = ann.next_object().await;
    assert_eq!(
        keys(&raw),
        ["id", "msg", "msgid", "name", "time", "toid"]
            .map(String::from)
            .into(),
        "exactly the original push: {raw}"
    );
    assert_eq!(
        parse_chat(&raw),
        Chat {
            msgid: 6,
            id: bob.id,
            name: "bob".into(),
            toid: Some(ann.id),
            groupid: None,
            msg: "hello from ws".into(),
            time: original_time(&ack["time"]),
        }
    );

    // Text survives both ways unchanged: quotes, backslashes, newlines, non-ASCII.
    let tricky = "say \"hi\" \\ back\nline 2 — 你好 😀";
    ann.chat(bob.id, tricky).await;
    assert_eq!(bob.next_push(6).await["msg"], tricky);
    bob.chat_ok(ann.id, tricky).await;
    assert_eq!(ann.next_chat().await.msg, tricky);

    bob.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_and_websocket_users_share_a_group() {
    let s = server(|_| {}).await;
    let mut ann = s.legacy_user("ann").await;
    // Created over TCP with no reply, so the original client learns its id at the next login.
    ann.create_group("tcp-and-ws", "both transports").await;
    ann.logout().await;
    let login = ann.login_ok(ann.id, &password_of("ann")).await;
    assert_eq!(login.groups.len(), 1, "{:?}", login.raw);
    let gid = login.groups[0].id;
    assert_eq!(
        (login.groups[0].name.as_str(), login.groups[0].desc.as_str()),
        ("tcp-and-ws", "both transports")
    );

    let mut bob = s.ws_user("bob").await;
    bob.join_group(gid).await;
    let mut carl = s.legacy_user("carl").await;
    carl.add_group(gid).await;
    carl.group_chat(gid, "carl here").await;

    let push = bob.next_push(10).await;
    assert_eq!(
        (&push["id"], &push["groupid"], &push["msg"]),
        (&json!(carl.id), &json!(gid), &json!("carl here"))
    );
    let seen = ann.next_chat().await;
    assert_eq!(
        (
            seen.msgid,
            seen.id,
            seen.name.as_str(),
            seen.groupid,
            seen.msg.as_str()
        ),
        (10, carl.id, "carl", Some(gid), "carl here")
    );

    bob.group_chat_ok(gid, "bob here").await;
    for tcp in [&mut ann, &mut carl] {
        let c = tcp.next_chat().await;
        assert_eq!(
            (c.id, c.groupid, c.msg.as_str()),
            (bob.id, Some(gid), "bob here")
        );
    }

    ann.group_chat(gid, "ann here").await;
    assert_eq!(bob.next_push(10).await["msg"], "ann here");
    assert_eq!(carl.next_chat().await.msg, "ann here");
    // Her own message is not pushed back to ann: the next thing she gets is bob's marker.
    bob.group_chat_ok(gid, "marker").await;
    assert_eq!(ann.next_chat().await.msg, "marker");
    assert_eq!(carl.next_chat().await.msg, "marker");

    // Members as the original client reads them: roles and live states.
    ann.logout().await;
    let login = ann.login_ok(ann.id, &password_of("ann")).await;
    let members: Vec<(i64, &str, &str)> = login.groups[0]
        .users
        .iter()
        .map(|m| (m.id, m.role.as_str(), m.state.as_str()))
        .collect();
    assert_eq!(
        members,
        vec![
            (ann.id, "creator", "online"),
            (bob.id, "normal", "online"),
            (carl.id, "normal", "online")
        ]
    );
    bob.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_come_in_the_legacy_login_reply_once() {
    let s = server(|_| {}).await;
    let mut bob = s.ws_user("bob").await;
    let gid = bob.create_group("offline", "").await["id"]
        .as_i64()
        .expect("group id");
    let mut ann = s.legacy_user("ann").await;
    ann.add_group(gid).await;
    ann.logout().await;
    ann.barrier().await;

    // While ann is away: a 1:1 and a group message.
    let one = bob.chat_ok(ann.id, "while away").await;
    let grp = bob.group_chat_ok(gid, "group while away").await;

    let login = ann.login_ok(ann.id, &password_of("ann")).await;
    assert_eq!(
        login.offline,
        vec![
            Chat {
                msgid: 6,
                id: bob.id,
                name: "bob".into(),
                toid: Some(ann.id),
                groupid: None,
                msg: "while away".into(),
                time: original_time(&one["time"]),
            },
            Chat {
                msgid: 10,
                id: bob.id,
                name: "bob".into(),
                toid: None,
                groupid: Some(gid),
                msg: "group while away".into(),
                time: original_time(&grp["time"]),
            },
        ]
    );
    // Live while logged in.
    bob.chat_ok(ann.id, "live").await;
    assert_eq!(ann.next_chat().await.msg, "live");

    // Shown once: the next login has no backlog, as the original deleted what it sent.
    ann.logout().await;
    let again = ann.login_ok(ann.id, &password_of("ann")).await;
    assert!(
        again.raw.get("offlinemsg").is_none(),
        "nothing left unread: {}",
        again.raw
    );
    // A message sent while logged out on this connection comes at its next login, once.
    ann.logout().await;
    ann.barrier().await;
    bob.chat_ok(ann.id, "after logout").await;
    let third = ann.login_ok(ann.id, &password_of("ann")).await;
    let texts: Vec<&str> = third.offline.iter().map(|c| c.msg.as_str()).collect();
    assert_eq!(texts, ["after logout"]);
    bob.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backlog_keeps_every_object_within_the_original_clients_buffer() {
    let s = server(|_| {}).await;
    let mut bob = s.ws_user("bob").await;
    let ann = {
        let mut c = s.legacy().await;
        c.register_ok("ann", &password_of("ann")).await
    };
    let texts: Vec<String> = (0..40)
        .map(|i| format!("backlog {i:02} {}", "x".repeat(80)))
        .collect();
    let requests = texts
        .iter()
        .map(|t| json!({"msgid": 6, "toid": ann, "msg": t}))
        .collect();
    for ack in bob.pipeline(requests).await {
        assert_ack(&ack, 6, 0);
    }

    let mut c = s.legacy().await;
    let login = c.login_ok(ann, &password_of("ann")).await;
    let inline = login.offline.len();
    assert!(
        inline > 0 && inline < texts.len(),
        "some fit the reply, the rest follow: {inline}"
    );
    let mut shown: Vec<String> = login.offline.iter().map(|m| m.msg.clone()).collect();
    while shown.len() < texts.len() {
        shown.push(c.next_chat().await.msg);
    }
    assert_eq!(shown, texts, "every message once, oldest first");
    assert!(
        c.sizes.iter().all(|&n| n <= ORIGINAL_BUFFER),
        "every object fits the original 1024-byte buffer: {:?}",
        c.sizes
    );
    c.logout().await;
    let again = c.login_ok(ann, &password_of("ann")).await;
    assert!(again.offline.is_empty(), "{}", again.raw);
    bob.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_reply_strings_parse_as_the_original_client_parses_them() {
    let s = server(|_| {}).await;
    let mut bob = s.ws_user("bob").await;
    let carl = {
        let mut c = s.legacy().await;
        c.register_ok("carl", &password_of("carl")).await
    };
    let mut ann = s.legacy().await;
    let ann_id = ann.register_ok("ann", &password_of("ann")).await;

    // A fresh account: exactly the four fields, no empty lists.
    let fresh = ann.login_ok(ann_id, &password_of("ann")).await;
    assert_eq!(
        keys(&fresh.raw),
        ["errno", "id", "msgid", "name"].map(String::from).into(),
        "{}",
        fresh.raw
    );
    ann.add_friend(bob.id).await;
    ann.add_friend(carl).await;
    ann.create_group("readers", "group \"quoted\" desc").await;
    ann.logout().await;
    ann.barrier().await;
    bob.chat_ok(ann_id, "one \"quoted\" line").await;

    let login = ann.login_ok(ann_id, &password_of("ann")).await;
    for key in ["friends", "groups", "offlinemsg"] {
        let list = login.raw[key].as_array().expect("present when non-empty");
        assert!(list.iter().all(Value::is_string), "{key}: strings");
    }
    let mut friends: Vec<(i64, String, String)> = login
        .friends
        .iter()
        .map(|u| (u.id, u.name.clone(), u.state.clone()))
        .collect();
    friends.sort();
    assert_eq!(
        friends,
        vec![
            (bob.id, "bob".into(), "online".into()),
            (carl, "carl".into(), "offline".into())
        ]
    );
    let group = &login.groups[0];
    assert_eq!(group.desc, "group \"quoted\" desc");
    assert_eq!(
        (
            group.users.len(),
            group.users[0].id,
            group.users[0].role.as_str()
        ),
        (1, ann_id, "creator")
    );
    let nested_member = login.raw["groups"][0].as_str().expect("a string");
    let group_json: Value = serde_json::from_str(nested_member).expect("JSON text");
    assert!(
        group_json["users"][0].is_string(),
        "members are strings too: {group_json}"
    );
    assert_eq!(login.offline[0].msg, "one \"quoted\" line");

    // Failures in the original shapes.
    let mut other = s.legacy().await;
    let wrong = other.login(ann_id, "not the password").await;
    assert_eq!(
        (wrong.errno, wrong.errmsg.as_deref()),
        (1, Some("id or password is invalid!"))
    );
    let unknown = other.login(987_654, "whatever").await;
    assert_eq!(unknown.errno, 1);
    let taken = other.register("ann", "another").await;
    assert_eq!(
        (taken["msgid"].as_i64(), taken["errno"].as_i64()),
        (Some(5), Some(1))
    );
    bob.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_field_cannot_make_the_server_act_as_another_user() {
    let s = server(|_| {}).await;
    let mut ann = s.legacy_user("ann").await;
    let bob = s.ws_user("bob").await;
    let mut carl = s.ws_user("carl").await;

    // 1:1 with bob's id and name: sent as ann.
    ann.send(
        &json!({"msgid": 6, "id": bob.id, "name": "bob", "toid": carl.id,
                     "msg": "forged", "time": "2000-01-01 00:00:00"}),
    )
    .await;
    let push = carl.next_push(6).await;
    assert_eq!(
        (&push["id"], &push["name"], &push["msg"]),
        (&json!(ann.id), &json!("ann"), &json!("forged"))
    );
    assert_ne!(
        push["time"], "2000-01-01 00:00:00",
        "the server stamps the time"
    );

    // Group chat in a group bob is not in: still ann's.
    let gid = carl.create_group("carls", "").await["id"]
        .as_i64()
        .expect("group id");
    ann.add_group(gid).await;
    ann.send(
        &json!({"msgid": 10, "id": bob.id, "name": "bob", "groupid": gid,
                     "msg": "forged group", "time": "x"}),
    )
    .await;
    let push = carl.next_push(10).await;
    assert_eq!(
        (&push["id"], &push["msg"]),
        (&json!(ann.id), &json!("forged group"))
    );

    // Add friend with bob's id: ann befriends carl, bob does not.
    ann.send(&json!({"msgid": 7, "id": bob.id, "friendid": carl.id}))
        .await;
    // Not logged in: a chat naming bob is dropped.
    let mut anonymous = s.legacy().await;
    anonymous
        .send(
            &json!({"msgid": 6, "id": bob.id, "name": "bob", "toid": carl.id,
                      "msg": "from nobody", "time": "x"}),
        )
        .await;
    anonymous
        .send_raw(format!("{}\0", reg("marker")).as_bytes())
        .await;
    assert_eq!(
        anonymous.next_object().await["msgid"],
        5,
        "the connection lives"
    );
    ann.chat(carl.id, "after").await;
    assert_eq!(
        carl.next_push(6).await["msg"],
        "after",
        "nothing from the anonymous connection came first"
    );
    let friends: HashSet<i64> = carl
        .friends()
        .await
        .iter()
        .filter_map(|f| f["id"].as_i64())
        .collect();
    assert_eq!(friends, HashSet::from([ann.id]));
    carl.close().await;
    bob.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_an_original_error_or_is_dropped_and_the_connection_survives() {
    let s = server(|_| {}).await;
    let mut bob = s.ws_user("bob").await;
    let mut c = s.legacy().await;
    let junk: &[&[u8]] = &[
        b"hello there\0",
        b"[1,2]\0",
        b"42\n",
        b"{\"msgid\":\"1\"}\0",
        b"{\"no\":\"msgid\"}\0",
        b"{\"msgid\":99}\0",
        b"{\"msgid\":2,\"errno\":0}\0",
        b"{\"msgid\":14}\0",
        b"{\"msgid\":6,\"toid\":1,\"msg\":\"before login\"}\0",
        b"{\"msgid\":4,\"name\":\"\xff\xfe\",\"password\":\"x\"}\0",
        b"{\"msgid\":4,\"name\":\0",
    ];
    for bytes in junk {
        c.send_raw(bytes).await;
    }
    // Where the original has a reply (login, registration), the error comes in its shape.
    c.send_raw(b"{\"msgid\":1,\"id\":\"abc\",\"password\":\"x\"}\0")
        .await;
    c.send_raw(b"{\"msgid\":1,\"id\":5,\"password\":\"x\",}\0")
        .await;
    c.send_raw(b"{\"msgid\":4,\"name\":\"\",\"password\":\"x\"}\0")
        .await;
    c.send_raw(format!("{}\0", reg("survivor")).as_bytes())
        .await;
    for expected in [(2, 400), (2, 400), (5, 400), (5, 0)] {
        let reply = c.next_object().await;
        assert_eq!(
            (reply["msgid"].as_i64(), reply["errno"].as_i64()),
            (Some(expected.0), Some(expected.1)),
            "{reply}"
        );
        if expected.1 != 0 {
            assert!(reply["errmsg"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }

    // Logged in: refused requests have no reply in the original; they are logged.
    let ann = c.register_ok("ann", &password_of("ann")).await;
    c.login_ok(ann, &password_of("ann")).await;
    let refused = [
        json!({"msgid": 6, "toid": 987_654, "msg": "to nobody"}),
        json!({"msgid": 6, "toid": bob.id, "msg": ""}),
        json!({"msgid": 6, "toid": bob.id, "msg": "x".repeat(4001)}),
        json!({"msgid": 10, "groupid": 424_242, "msg": "no such group"}),
        json!({"msgid": 9, "groupid": 424_242}),
        json!({"msgid": 7, "friendid": ann}),
        json!({"msgid": 8, "groupname": "", "groupdesc": ""}),
    ];
    for r in &refused {
        c.send(r).await;
    }
    // A second login on the same connection: the login shape, errno 409.
    let again = c.login(ann, &password_of("ann")).await;
    assert_eq!(again.errno, 409, "{}", again.raw);
    c.chat(bob.id, "still here").await;
    let push = bob.next_push(6).await;
    assert_eq!(
        (&push["id"], &push["msg"]),
        (&json!(ann), &json!("still here")),
        "no refused message was stored or sent first"
    );
    bob.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_object_is_dropped_and_one_past_a_mebibyte_closes_the_connection() {
    let s = server(|_| {}).await;
    let mut c = s.legacy().await;
    // A registration over the 64 KiB limit is answered (the client waits for it) with 413.
    let huge_name = json!({"msgid": 4, "name": "n".repeat(70_000), "password": "x"});
    c.send(&huge_name).await;
    let reply = c.next_object().await;
    assert_eq!(
        (reply["msgid"].as_i64(), reply["errno"].as_i64()),
        (Some(5), Some(413))
    );
    // An oversized chat is dropped; the connection goes on.
    let ann = c.register_ok("ann", &password_of("ann")).await;
    c.login_ok(ann, &password_of("ann")).await;
    c.chat(ann, &"y".repeat(100_000)).await;
    assert_eq!(c.register("after big", "pw").await["errno"], 0);

    // An object still open past 1 MiB: the server closes the connection.
    let mut big = b"{\"msgid\":6,\"msg\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'z', 1_100_000));
    c.try_send_raw(&big).await.ok();
    c.wait_closed().await;
    // Others are unaffected.
    let mut d = s.legacy().await;
    assert_eq!(d.register("fine", "pw").await["errno"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_original_reads_no_reply_to_get_none_and_unknown_pushes_are_not_sent() {
    let s = server(|_| {}).await;
    let mut ann = s.legacy_user("ann").await;
    let mut carl = s.ws_user("carl").await;
    let bob = {
        let mut c = s.legacy().await;
        c.register_ok("bob", &password_of("bob")).await
    };
    carl.add_friend(bob).await;
    ann.add_friend(bob).await;
    ann.add_friend(bob).await; // refused: already friends
    ann.create_group("quiet", "no reply").await;
    ann.add_group(424_242).await; // refused: no such group
    ann.send_raw(format!("{}\0", reg("marker-1")).as_bytes())
        .await;
    assert_eq!(
        ann.next_object().await["msgid"],
        5,
        "the first object after four requests is the marker's reply"
    );

    // bob comes online: carl (WebSocket) gets PRESENCE_MSG, ann (TCP) does not.
    let mut bob_ws = Client::connect(s.port).await;
    bob_ws.login(bob, &password_of("bob")).await;
    let presence = carl.next_push(19).await;
    assert_eq!(
        (&presence["id"], &presence["state"]),
        (&json!(bob), &json!("online"))
    );
    bob_ws.chat_ok(ann.id, "after presence").await;
    let next = ann.next_object().await;
    assert_eq!(
        (next["msgid"].as_i64(), next["msg"].as_str()),
        (Some(6), Some("after presence")),
        "no PRESENCE_MSG before it: {next}"
    );

    ann.logout().await;
    ann.send_raw(format!("{}\0", reg("marker-2")).as_bytes())
        .await;
    assert_eq!(ann.next_object().await["msgid"], 5, "no reply to LOGINOUT");
    carl.close().await;
    bob_ws.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_never_refused_for_another_device_and_every_device_gets_the_messages() {
    let s = server(|_| {}).await;
    let mut ann_ws = s.ws_user("ann").await;
    let ann = ann_ws.id;
    let mut tcp1 = s.legacy().await;
    tcp1.login_ok(ann, &password_of("ann")).await;
    let mut tcp2 = s.legacy().await;
    tcp2.login_ok(ann, &password_of("ann")).await;
    let mut bob = s.ws_user("bob").await;

    bob.chat_ok(ann, "to every device").await;
    assert_eq!(ann_ws.next_push(6).await["msg"], "to every device");
    assert_eq!(tcp1.next_chat().await.msg, "to every device");
    assert_eq!(tcp2.next_chat().await.msg, "to every device");

    // Sent on one TCP device: bob gets it, ann's other devices see her own message.
    tcp1.chat(bob.id, "from tcp1").await;
    assert_eq!(bob.next_push(6).await["msg"], "from tcp1");
    assert_eq!(ann_ws.next_push(6).await["msg"], "from tcp1");
    let own = tcp2.next_chat().await;
    assert_eq!(
        (own.id, own.toid, own.msg.as_str()),
        (ann, Some(bob.id), "from tcp1")
    );
    bob.chat_ok(ann, "marker").await;
    assert_eq!(
        tcp1.next_chat().await.msg,
        "marker",
        "not its own message back"
    );
    ann_ws.close().await;
    bob.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_client_over_its_request_rate_gets_429_and_is_closed_when_it_persists() {
    let s = server(|c| {
        c.rate_per_connection = 1;
        c.abuse_close_after = 20;
    })
    .await;
    let mut c = s.legacy().await;
    // The bucket holds ten seconds' worth: ten requests pass, the registration after them not.
    let mut burst = "{\"msgid\":99}\0".repeat(10);
    burst.push_str(&format!("{}\0", reg("too-fast")));
    c.send_raw(burst.as_bytes()).await;
    let reply = c.next_object().await;
    assert_eq!(
        (reply["msgid"].as_i64(), reply["errno"].as_i64()),
        (Some(5), Some(429)),
        "{reply}"
    );
    c.send_raw("{\"msgid\":99}\0".repeat(40).as_bytes()).await;
    c.wait_closed().await;
    // Another connection has its own bucket.
    let mut d = s.legacy().await;
    assert_eq!(d.register("patient", "pw").await["errno"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_is_off_by_default_and_shutdown_closes_legacy_connections() {
    let db = TestDb::create(Backend::Sqlite).await;
    let app = Application::build(Config::for_database(db.url()))
        .await
        .expect("the server starts");
    assert_eq!(app.legacy_port(), None, "no --legacy-listen, no listener");
    drop(app);

    let s = start(db.url(), None, "stopping", |_| {}).await;
    let mut ann = s.legacy_user("ann").await;
    let mut idle = s.legacy().await;
    s.shutdown.trigger();
    ann.wait_closed().await;
    idle.wait_closed().await;
    s.stop().await;
    db.destroy().await;
}

// ---------------------------------------------------------------------------------------------
// Across replicas: MariaDB, a private Redis, and nginx's stream module in front.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_and_websocket_users_on_different_replicas_chat_one_to_one_and_in_a_group() {
    let db = TestDb::create(Backend::Mysql).await;
    let redis = Redis::start();
    let a = start(db.url(), Some(redis.url()), "node-a", |_| {}).await;
    let b = start(db.url(), Some(redis.url()), "node-b", |_| {}).await;

    let mut ann = a.legacy_user("ann").await;
    let mut bob = b.ws_user("bob").await;
    let mut carl = b.legacy_user("carl").await;

    ann.chat(bob.id, "a to b").await;
    assert_eq!(bob.next_push(6).await["msg"], "a to b");
    bob.chat_ok(ann.id, "b to a").await;
    assert_eq!(ann.next_chat().await.msg, "b to a");
    ann.chat(carl.id, "tcp on a to tcp on b").await;
    let c = carl.next_chat().await;
    assert_eq!((c.id, c.msg.as_str()), (ann.id, "tcp on a to tcp on b"));

    let gid = bob.create_group("spread", "").await["id"]
        .as_i64()
        .expect("group id");
    ann.add_group(gid).await;
    carl.add_group(gid).await;
    carl.barrier().await;
    ann.group_chat(gid, "group from a").await;
    assert_eq!(bob.next_push(10).await["msg"], "group from a");
    assert_eq!(carl.next_chat().await.msg, "group from a");
    bob.group_chat_ok(gid, "group from b").await;
    assert_eq!(ann.next_chat().await.msg, "group from b");
    assert_eq!(carl.next_chat().await.msg, "group from b");

    bob.close().await;
    a.stop().await;
    b.stop().await;
    db.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_missed_during_a_redis_restart_reaches_the_legacy_user_without_a_resend() {
    let db = TestDb::create(Backend::Mysql).await;
    let mut redis = Redis::start();
    let a = start(db.url(), Some(redis.url()), "node-a", |_| {}).await;
    let b = start(db.url(), Some(redis.url()), "node-b", |_| {}).await;
    let mut ann = a.legacy_user("ann").await;
    let mut bob = b.ws_user("bob").await;
    bob.chat_ok(ann.id, "before").await;
    assert_eq!(ann.next_chat().await.msg, "before");

    // Sent once while Redis is away: stored, not published (503), and bob does not resend.
    redis.stop();
    let during = bob.chat(ann.id, "during").await;
    assert!(
        during["errno"] == 0 || during["errno"] == 503,
        "stored, published late or not at all: {during}"
    );
    redis.spawn();
    // Replica a resubscribes and sends RESYNC_MSG; ann's connection catches up by itself.
    assert_eq!(ann.next_chat().await.msg, "during");

    let after = json!({"msgid": 6, "toid": ann.id, "msg": "after", "txnid": "after-1"});
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ack = bob.request(after.clone()).await;
        if ack["errno"] == 0 {
            break;
        }
        assert_eq!(ack["errno"], 503, "{ack}");
        assert!(
            Instant::now() < deadline,
            "bob's replica reconnects to Redis"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ann.next_chat().await.msg, "after");
    bob.chat_ok(ann.id, "marker").await;
    assert_eq!(ann.next_chat().await.msg, "marker", "nothing repeated");
    ann.logout().await;
    let login = ann.login_ok(ann.id, &password_of("ann")).await;
    assert!(
        login.offline.is_empty(),
        "everything shown is read: {}",
        login.raw
    );

    bob.close().await;
    a.stop().await;
    b.stop().await;
    db.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_send_answered_503_while_redis_is_away_is_resent_and_stored_once() {
    let db = TestDb::create(Backend::Mysql).await;
    let mut redis = Redis::start();
    let a = start(db.url(), Some(redis.url()), "node-a", |_| {}).await;
    let mut ann = a.legacy_user("ann").await;
    let mut bob = a.ws_user("bob").await;
    let bob_id = bob.id;
    ann.chat(bob_id, "before").await;
    assert_eq!(bob.next_push(6).await["msg"], "before");

    // Stored but not published while Redis is away: the original client cannot resend, the
    // server does, with the same txnid, until Redis is back.
    redis.stop();
    ann.chat(bob_id, "during").await;
    let deadline = Instant::now() + PATIENCE;
    while metric(a.port, "chat_legacy_resends_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the send is resent after its 503"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.spawn();

    // Bob's replica is back on Redis once his sends succeed; ann then sees his reply.
    let reply = json!({"msgid": 6, "toid": ann.id, "msg": "reply", "txnid": "reply-1"});
    loop {
        let ack = bob.request(reply.clone()).await;
        if ack["errno"] == 0 {
            break;
        }
        assert_eq!(ack["errno"], 503, "{ack}");
        assert!(Instant::now() < deadline, "the replica reconnects to Redis");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ann.next_chat().await.msg, "reply");
    let (seqs, _, messages) = bob.history(json!({"toid": ann.id})).await;
    let texts: Vec<&str> = messages.iter().filter_map(|m| m["msg"].as_str()).collect();
    assert_eq!(texts, ["before", "during", "reply"], "stored once each");
    assert_eq!(seqs, [1, 2, 3]);
    // The resent send ended acked: its seq counts as handed over, so the reply shown after it
    // is read, and the next login offers nothing.
    ann.logout().await;
    let login = ann.login_ok(ann.id, &password_of("ann")).await;
    assert!(login.offline.is_empty(), "nothing unread: {}", login.raw);

    bob.close().await;
    a.stop().await;
    db.destroy().await;
}

/// The value of an unlabelled metric of the server on `port` (0 when absent).
async fn metric(port: u16, name: &str) -> f64 {
    let (_, _, body) = http_get(port, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_never_reached_the_legacy_users_replica_is_filled_in_from_history() {
    // Two replicas on one database but on different Redis servers: what replica b publishes
    // never reaches replica a, as if its push had been lost on the way.
    let db = TestDb::create(Backend::Mysql).await;
    let (redis_a, redis_b) = (Redis::start(), Redis::start());
    let a = start(db.url(), Some(redis_a.url()), "node-a", |_| {}).await;
    let b = start(db.url(), Some(redis_b.url()), "node-b", |_| {}).await;
    let mut ann = a.legacy_user("ann").await;
    let mut bob_a = a.ws_user("bob").await;
    let mut bob_b = Client::connect(b.port).await;
    bob_b.login(bob_a.id, &password_of("bob")).await;

    bob_a.chat_ok(ann.id, "m0").await;
    assert_eq!(ann.next_chat().await.msg, "m0");
    bob_b.chat_ok(ann.id, "m1 (never pushed to a)").await;
    bob_a.chat_ok(ann.id, "m2").await;
    // m2's seq shows that m1 is missing: it is read from history and written first.
    assert_eq!(ann.next_chat().await.msg, "m1 (never pushed to a)");
    assert_eq!(ann.next_chat().await.msg, "m2");
    bob_a.chat_ok(ann.id, "m3").await;
    assert_eq!(ann.next_chat().await.msg, "m3", "nothing repeated");
    ann.logout().await;
    let login = ann.login_ok(ann.id, &password_of("ann")).await;
    assert!(
        login.offline.is_empty(),
        "everything shown is read: {}",
        login.raw
    );

    bob_a.close().await;
    bob_b.close().await;
    a.stop().await;
    b.stop().await;
    db.destroy().await;
}

/// A replica as a child process (so that it has its own metrics), killed when dropped.
struct ReplicaProcess {
    port: u16,
    legacy: u16,
    child: Child,
}

impl ReplicaProcess {
    async fn start(database_url: &str, redis: &Redis, node: &str) -> ReplicaProcess {
        let (port, legacy) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--legacy-listen", &format!("127.0.0.1:{legacy}")])
            .args(["--database-url", database_url, "--redis-url", &redis.url()])
            .args(["--node-id", node, "--log", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .expect("the chat-server binary starts");
        let replica = ReplicaProcess {
            port,
            legacy,
            child,
        };
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", legacy))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "replica {node} listens");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replica
    }

    /// `chat_legacy_connections` of this replica.
    async fn legacy_connections(&self) -> f64 {
        let (_, _, body) = http_get(self.port, "/metrics").await;
        body.lines()
            .find(|l| l.starts_with("chat_legacy_connections "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The `load_module` line nginx needs for `stream {}` when the module is a dynamic one.
fn stream_module_line() -> String {
    let version = Command::new("nginx")
        .arg("-V")
        .output()
        .expect("nginx runs (./scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&version.stderr).into_owned();
    if !text.contains("--with-stream=dynamic") {
        return String::new();
    }
    let dir = text
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("--modules-path="))
        .unwrap_or("/usr/lib/nginx/modules")
        .to_owned();
    let module = PathBuf::from(dir).join("ngx_stream_module.so");
    assert!(
        module.exists(),
        "nginx's stream module is missing: install libnginx-mod-stream ({})",
        module.display()
    );
    format!("load_module {};\n", module.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_stream_two_original_clients_land_on_different_replicas_and_chat() {
    let db = TestDb::create(Backend::Mysql).await;
    let redis = Redis::start();
    let a = ReplicaProcess::start(db.url(), &redis, "node-a").await;
    let b = ReplicaProcess::start(db.url(), &redis, "node-b").await;
    let nginx = Nginx::start(
        "stream.conf",
        6000,
        &[a.legacy, b.legacy],
        &stream_module_line(),
    )
    .await;

    let mut ann = LegacyClient::connect(nginx.port).await;
    let ann_id = ann.register_ok("ann", &password_of("ann")).await;
    ann.login_ok(ann_id, &password_of("ann")).await;
    let mut bob = LegacyClient::connect(nginx.port).await;
    let bob_id = bob.register_ok("bob", &password_of("bob")).await;
    bob.login_ok(bob_id, &password_of("bob")).await;
    assert_eq!(
        (a.legacy_connections().await, b.legacy_connections().await),
        (1.0, 1.0),
        "least_conn spreads the two sockets"
    );

    ann.chat(bob_id, "via nginx stream").await;
    assert_eq!(bob.next_chat().await.msg, "via nginx stream");
    bob.chat(ann_id, "and back").await;
    let back = ann.next_chat().await;
    assert_eq!((back.id, back.msg.as_str()), (bob_id, "and back"));
    assert!(
        ann.sizes
            .iter()
            .chain(&bob.sizes)
            .all(|&n| n <= ORIGINAL_BUFFER)
    );

    drop(ann);
    drop(bob);
    drop(nginx);
    drop(a);
    drop(b);
    db.destroy().await;
}
