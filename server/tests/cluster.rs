//! Cluster tests: two replicas on one MariaDB database and one Redis, every feature across
//! replicas, a Redis restart under traffic, a replica killed with SIGKILL under traffic, and
//! nginx in front of the replicas.
//!
//! Each test starts its own `redis-server` on a free port (so tests never share channels), its
//! own database, and its own replicas (in-process, or child processes where one must be killed),
//! and stops all of them at the end.

#[allow(dead_code)]
mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_server::{Application, Config, ShutdownHandle};
use common::{
    Backend, Client, Nginx, Redis, TestDb, array, assert_ack, free_port, http_get, password_of,
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Liveness bound for things that must happen (never a performance assertion).
const PATIENCE: Duration = Duration::from_secs(30);

/// A replica running in this process.
struct Replica {
    port: u16,
    shutdown: ShutdownHandle,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

async fn replica(database_url: &str, redis: &Redis, node: &str) -> Replica {
    replica_with(database_url, redis, node, |_| {}).await
}

/// [`replica`], with `tweak` applied to its configuration.
async fn replica_with(
    database_url: &str,
    redis: &Redis,
    node: &str,
    tweak: impl FnOnce(&mut Config),
) -> Replica {
    let mut config = Config::for_database(database_url);
    config.redis_url = Some(redis.url());
    config.node_id = Some(node.into());
    tweak(&mut config);
    let app = Application::build(config)
        .await
        .unwrap_or_else(|e| panic!("replica {node} starts: {e:?}"));
    Replica {
        port: app.port(),
        shutdown: app.shutdown_handle(),
        task: Some(tokio::spawn(app.run_until_stopped())),
    }
}

/// A fresh MariaDB database, a private Redis, and replicas "node-a" and "node-b" on them.
async fn two_replicas() -> (TestDb, Redis, Replica, Replica) {
    let db = TestDb::create(Backend::Mysql).await;
    let redis = Redis::start();
    let a = replica(db.url(), &redis, "node-a").await;
    let b = replica(db.url(), &redis, "node-b").await;
    (db, redis, a, b)
}

impl Replica {
    async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(PATIENCE, task).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A replica as a child process (so that it can be SIGKILLed), killed when dropped.
struct ReplicaProcess {
    port: u16,
    child: Child,
}

async fn replica_process(database_url: &str, redis: &Redis, node: &str) -> ReplicaProcess {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", database_url, "--redis-url", &redis.url()])
        .args(["--node-id", node, "--log", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .expect("the chat-server binary starts");
    let replica = ReplicaProcess { port, child };
    wait_healthy(port).await;
    replica
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

async fn wait_healthy(port: u16) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ok = tokio::time::timeout(Duration::from_secs(2), async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
                && http_get(port, "/healthz").await.0 == 200
        })
        .await
        .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server on port {port} becomes healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers `name` through a fresh connection to `port`; returns the id.
async fn register(port: u16, name: &str) -> i64 {
    let mut c = Client::connect(port).await;
    let id = c.register(name, &password_of(name)).await;
    c.close().await;
    id
}

/// A connection to `port` logged in as `id`/`name`, and its login reply.
async fn login(port: u16, id: i64, name: &str) -> (Client, Value) {
    let mut c = Client::connect(port).await;
    let reply = c.login(id, &password_of(name)).await;
    (c, reply)
}

/// Waits for a PRESENCE_MSG about `who` with `state`, skipping others.
async fn presence(client: &mut Client, who: i64, state: &str) -> Value {
    client
        .recv_where(&format!("PRESENCE {who} {state}"), PATIENCE, |f| {
            f["msgid"] == 19 && f["id"] == who && f["state"] == state
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_push_crosses_replicas_one_to_one_group_presence_and_second_devices() {
    let (db, _redis, a, b) = two_replicas().await;

    let ann = register(a.port, "ann").await;
    let bob = register(b.port, "bob").await;
    let (mut ann_a, reply) = login(a.port, ann, "ann").await;
    assert_eq!(reply["node"], "node-a", "the login reply names the replica");
    let ack = ann_a.request(json!({"msgid": 7, "friendid": bob})).await;
    assert_ack(&ack, 7, 0);
    assert_eq!(ack["friend"]["state"], "offline");

    // Presence: bob's first connection anywhere is announced to ann, across replicas.
    let (mut bob_b, reply) = login(b.port, bob, "bob").await;
    assert_eq!(reply["node"], "node-b");
    presence(&mut ann_a, bob, "online").await;
    assert_eq!(
        array(&reply["friends"])[0]["state"],
        "online",
        "ann shows online on node-b"
    );

    // 1:1 both ways.
    let ack = ann_a.chat_ok(bob, "hello from a").await;
    let push = bob_b.next_push(6).await;
    assert_eq!(push["message_id"], ack["message_id"]);
    assert_eq!(
        (push["msg"].as_str(), push["id"].as_i64()),
        (Some("hello from a"), Some(ann))
    );
    bob_b.chat_ok(ann, "hello from b").await;
    assert_eq!(ann_a.next_push(6).await["msg"], "hello from b");

    // A second device of bob on the other replica: gets bob's own sends, and ann's.
    let (mut bob_a, _) = login(a.port, bob, "bob").await;
    let ack = bob_b.chat_ok(ann, "sent on b").await;
    let own = bob_a.next_push(6).await;
    assert_eq!(
        own["message_id"], ack["message_id"],
        "the other device sees its own message"
    );
    assert_eq!(ann_a.next_push(6).await["message_id"], ack["message_id"]);
    ann_a.chat_ok(bob, "to both devices").await;
    assert_eq!(bob_a.next_push(6).await["msg"], "to both devices");
    assert_eq!(bob_b.next_push(6).await["msg"], "to both devices");

    // Group: created on a, joined on b, messages both ways, and to the second device.
    let group = ann_a.create_group("crossers", "two replicas").await;
    let gid = group["id"].as_i64().expect("group id");
    bob_b.join_group(gid).await;
    let ack = ann_a.group_chat_ok(gid, "group hello").await;
    for device in [&mut bob_b, &mut bob_a] {
        let push = device.next_push(10).await;
        assert_eq!(
            (push["groupid"].as_i64(), push["seq"].as_i64()),
            (Some(gid), ack["seq"].as_i64())
        );
    }
    bob_a.group_chat_ok(gid, "from bob on a").await;
    assert_eq!(ann_a.next_push(10).await["msg"], "from bob on a");
    assert_eq!(bob_b.next_push(10).await["msg"], "from bob on a");

    // Presence: bob stays online while one device remains, goes offline with the last.
    bob_b.close().await;
    let ack = ann_a.chat_ok(bob, "marker").await;
    assert_eq!(bob_a.next_push(6).await["message_id"], ack["message_id"]);
    assert!(
        ann_a.buffered(19).iter().all(|p| p["state"] != "offline"),
        "no offline while bob_a lives"
    );
    let friends = ann_a.friends().await;
    assert_eq!(friends[0]["state"], "online");
    bob_a.close().await;
    presence(&mut ann_a, bob, "offline").await;

    ann_a.close().await;
    a.stop().await;
    b.stop().await;
    db.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_on_one_replica_and_in_on_the_other_moves_the_user() {
    let (db, _redis, a, b) = two_replicas().await;
    let ann = register(a.port, "ann").await;
    let bob = register(a.port, "bob").await;
    let (mut ann_a, _) = login(a.port, ann, "ann").await;
    ann_a.add_friend(bob).await;
    let gid = ann_a.create_group("movers", "").await["id"]
        .as_i64()
        .expect("group id");

    let (mut bob_c, reply) = login(a.port, bob, "bob").await;
    assert_eq!(reply["node"], "node-a");
    bob_c.join_group(gid).await;
    presence(&mut ann_a, bob, "online").await;
    bob_c.logout().await;
    presence(&mut ann_a, bob, "offline").await;

    // While bob is away: a 1:1 and a group message wait for him.
    let one = ann_a.chat_ok(bob, "while away").await;
    let grp = ann_a.group_chat_ok(gid, "group while away").await;

    let (mut bob_b, reply) = login(b.port, bob, "bob").await;
    assert_eq!(reply["node"], "node-b");
    let offline: Vec<i64> = array(&reply["offlinemsg"])
        .iter()
        .filter_map(|m| m["message_id"].as_i64())
        .collect();
    assert_eq!(
        offline,
        vec![
            one["message_id"].as_i64().unwrap(),
            grp["message_id"].as_i64().unwrap()
        ]
    );
    presence(&mut ann_a, bob, "online").await;

    // Live traffic now reaches bob on b, and nothing reaches the logged-out connection on a.
    ann_a.chat_ok(bob, "now on b").await;
    ann_a.group_chat_ok(gid, "group now on b").await;
    assert_eq!(bob_b.next_push(6).await["msg"], "now on b");
    assert_eq!(bob_b.next_push(10).await["msg"], "group now on b");
    let still_anonymous = bob_c.request(json!({"msgid": 14})).await;
    assert_ack(&still_anonymous, 14, 401);
    assert!(bob_c.buffered(6).is_empty() && bob_c.buffered(10).is_empty());

    for c in [ann_a, bob_b, bob_c] {
        c.close().await;
    }
    a.stop().await;
    b.stop().await;
    db.destroy().await;
}

/// Ids of the members in a group object of a login reply or an ack.
fn member_ids(group: &Value) -> Vec<i64> {
    array(&group["users"])
        .iter()
        .filter_map(|m| m["id"].as_i64())
        .collect()
}

/// With a grace period longer than this test's patience, anything announced within it was
/// announced for the right reason: a logout, or a replica's shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_user_stays_online_through_the_grace_period_and_a_logout_is_announced_at_once() {
    let db = TestDb::create(Backend::Mysql).await;
    let redis = Redis::start();
    let long_grace = |c: &mut Config| c.presence_grace_ms = 120_000;
    let a = replica_with(db.url(), &redis, "node-a", long_grace).await;
    let b = replica_with(db.url(), &redis, "node-b", long_grace).await;
    let ann = register(a.port, "ann").await;
    let bob = register(a.port, "bob").await;
    let (mut ann_a, _) = login(a.port, ann, "ann").await;
    ann_a.add_friend(bob).await;
    let (bob_a, _) = login(a.port, bob, "bob").await;
    presence(&mut ann_a, bob, "online").await;

    // bob's connection drops and comes back: ann hears nothing in between.
    drop(bob_a); // no close frame: the TCP connection just ends
    let (mut bob_a, reply) = login(a.port, bob, "bob").await;
    assert_eq!(array(&reply["friends"])[0]["state"], "online");
    bob_a.chat_ok(ann, "back").await;
    let next = ann_a.next_frame().await;
    assert_eq!(next["msg"], "back", "no presence push before it: {next}");

    // A logout is announced at once, grace or not.
    bob_a.logout().await;
    presence(&mut ann_a, bob, "offline").await;

    // Dropped on node-b: still online for ann on node-a (Redis keeps node-b's field)...
    let (bob_b, _) = login(b.port, bob, "bob").await;
    presence(&mut ann_a, bob, "online").await;
    drop(bob_b);
    let (mut bob_b2, _) = login(b.port, bob, "bob").await;
    bob_b2.logout().await;
    presence(&mut ann_a, bob, "offline").await;
    let (bob_b3, _) = login(b.port, bob, "bob").await;
    presence(&mut ann_a, bob, "online").await;
    drop(bob_b3);
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let friends = ann_a.friends().await;
        assert_eq!(friends[0]["state"], "online", "bob lingers on node-b");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...until node-b shuts down: it announces its lingering users on the way out.
    b.stop().await;
    presence(&mut ann_a, bob, "offline").await;
    assert!(
        ann_a.buffered(19).is_empty(),
        "one announcement per change: {:?}",
        ann_a.buffered(19)
    );

    ann_a.close().await;
    a.stop().await;
    db.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_cached_by_one_replica_follow_joins_and_quits_on_the_other() {
    let (db, _redis, a, b) = two_replicas().await;
    let ann = register(a.port, "ann").await;
    let bob = register(b.port, "bob").await;
    let (mut ann_1, _) = login(a.port, ann, "ann").await;
    let gid = ann_1.create_group("cached", "").await["id"]
        .as_i64()
        .expect("group id");
    // A login on a, now that ann is a member, makes a cache the group.
    let (mut ann_2, reply) = login(a.port, ann, "ann").await;
    assert_eq!(member_ids(&array(&reply["groups"])[0]), vec![ann]);

    // bob joins on b: a's copy must not outlive the change.
    let (mut bob_b, _) = login(b.port, bob, "bob").await;
    bob_b.join_group(gid).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (ann_3, reply) = login(a.port, ann, "ann").await;
        let members = member_ids(&array(&reply["groups"])[0]);
        ann_3.close().await;
        if members == vec![ann, bob] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a's login reply shows bob as a member: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ack = ann_2.request(json!({"msgid": 16, "groupid": gid})).await;
    assert_ack(&ack, 16, 0);
    assert_eq!(member_ids(&json!({"users": ack["users"]})), vec![ann, bob]);

    // bob leaves on b: gone from what a answers, once the event has crossed.
    let ack = bob_b.request(json!({"msgid": 13, "groupid": gid})).await;
    assert_ack(&ack, 13, 0);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ack = ann_2.request(json!({"msgid": 15})).await;
        assert_ack(&ack, 15, 0);
        let members = member_ids(&array(&ack["groups"])[0]);
        if members == vec![ann] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a's group list drops bob: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ann_4, reply) = login(a.port, ann, "ann").await;
    assert_eq!(member_ids(&array(&reply["groups"])[0]), vec![ann]);

    for c in [ann_1, ann_2, ann_4, bob_b] {
        c.close().await;
    }
    a.stop().await;
    b.stop().await;
    db.destroy().await;
}

/// Sends with a txnid until acked (a 503 is retried with the same txnid); returns the ack.
async fn send_until_acked(client: &mut Client, request: Value) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ack = client.request(request.clone()).await;
        match ack["errno"].as_i64() {
            Some(0) => return ack,
            Some(503) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            _ => panic!("send failed: {ack}"),
        }
    }
}

/// All message_ids of a conversation, through HISTORY pages after seq 0.
async fn all_history(client: &mut Client, target: Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let mut query = target.clone();
        query["after_seq"] = json!(after);
        query["limit"] = json!(200);
        let (seqs, more, messages) = client.history(query).await;
        out.extend(messages);
        if let Some(last) = seqs.last() {
            after = *last;
        }
        if !more {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_traffic_loses_no_acked_message_and_sends_resync() {
    let (db, mut redis, a, b) = two_replicas().await;
    let ann = register(a.port, "ann").await;
    let bob = register(b.port, "bob").await;
    let (mut ann_a, _) = login(a.port, ann, "ann").await;
    let (mut bob_b, _) = login(b.port, bob, "bob").await;

    let mut acked = Vec::new();
    for i in 0..60 {
        if i == 20 {
            redis.restart(Duration::from_millis(500));
        }
        let ack = send_until_acked(
            &mut ann_a,
            json!({"msgid": 6, "toid": bob, "msg": format!("m{i}"), "txnid": format!("t{i}")}),
        )
        .await;
        acked.push(ack["message_id"].as_i64().expect("message_id"));
    }
    // Both replicas resubscribed and told their connections to catch up.
    bob_b.next_push(21).await;
    ann_a.next_push(21).await;

    // Catch-up: live pushes plus history hold every acked message exactly once.
    let mut seen: HashSet<i64> = bob_b
        .buffered(6)
        .iter()
        .filter_map(|p| p["message_id"].as_i64())
        .collect();
    let history = all_history(&mut bob_b, json!({"toid": ann})).await;
    let ids: Vec<i64> = history
        .iter()
        .filter_map(|m| m["message_id"].as_i64())
        .collect();
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "history holds each message once");
    seen.extend(unique);
    for id in &acked {
        assert!(seen.contains(id), "acked message {id} reached bob");
    }
    assert_eq!(
        ids.len(),
        acked.len(),
        "resends with a txnid stored nothing twice"
    );
    let seqs: Vec<i64> = history.iter().filter_map(|m| m["seq"].as_i64()).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>(), "seqs stay contiguous");

    // Traffic flows live again.
    ann_a.chat_ok(bob, "after the restart").await;
    let push = bob_b
        .recv_where("the push after the restart", PATIENCE, |f| {
            f["msg"] == "after the restart"
        })
        .await;
    assert_eq!(push["msgid"], 6);

    ann_a.close().await;
    bob_b.close().await;
    a.stop().await;
    b.stop().await;
    db.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_receivers_replica_loses_no_acked_message_and_they_turn_offline() {
    let db = TestDb::create(Backend::Mysql).await;
    let redis = Redis::start();
    let a = replica_process(db.url(), &redis, "node-a").await;
    let mut b = replica_process(db.url(), &redis, "node-b").await;
    let ann = register(a.port, "ann").await;
    let bob = register(a.port, "bob").await;
    let cat = register(a.port, "cat").await;
    let (mut ann_a, _) = login(a.port, ann, "ann").await;
    ann_a.add_friend(bob).await;
    let gid = ann_a.create_group("survivors", "").await["id"]
        .as_i64()
        .expect("group id");
    let (mut bob_b, _) = login(b.port, bob, "bob").await;
    let (mut cat_b, _) = login(b.port, cat, "cat").await;
    bob_b.join_group(gid).await;
    cat_b.join_group(gid).await;
    presence(&mut ann_a, bob, "online").await;

    // ann sends 1:1 to bob and to the group while bob's and cat's replica dies.
    let mut acked_one = HashSet::new();
    let mut acked_group = HashSet::new();
    let mut killed_at = None;
    for i in 0..80 {
        if i == 30 {
            b.child.kill().expect("SIGKILL the receivers' replica");
            killed_at = Some(Instant::now());
        }
        let one = send_until_acked(
            &mut ann_a,
            json!({"msgid": 6, "toid": bob, "msg": format!("o{i}"), "txnid": format!("o{i}")}),
        )
        .await;
        acked_one.insert(one["message_id"].as_i64().expect("id"));
        let grp = send_until_acked(
            &mut ann_a,
            json!({"msgid": 10, "groupid": gid, "msg": format!("g{i}"), "txnid": format!("g{i}")}),
        )
        .await;
        acked_group.insert(grp["message_id"].as_i64().expect("id"));
    }

    // What the receivers got live before the kill.
    let bob_seen: Vec<i64> = bob_b
        .buffered(6)
        .iter()
        .chain(bob_b.buffered(10).iter())
        .filter_map(|p| p["message_id"].as_i64())
        .collect();
    let cat_seen: Vec<i64> = cat_b
        .buffered(10)
        .iter()
        .filter_map(|p| p["message_id"].as_i64())
        .collect();

    // The dead replica's users turn offline for ann within 15 s.
    presence(&mut ann_a, bob, "offline").await;
    let killed_at = killed_at.expect("the replica was killed");
    assert!(
        killed_at.elapsed() < Duration::from_secs(15),
        "offline within 15 s, took {:?}",
        killed_at.elapsed()
    );

    // They reconnect to the surviving replica and catch up: login backlog, then history.
    for (id, name, mut seen, with_one) in
        [(bob, "bob", bob_seen, true), (cat, "cat", cat_seen, false)]
    {
        let (mut again, reply) = login(a.port, id, name).await;
        seen.extend(
            array(&reply["offlinemsg"])
                .iter()
                .filter_map(|m| m["message_id"].as_i64()),
        );
        let group_history = all_history(&mut again, json!({"groupid": gid})).await;
        let mut held: Vec<i64> = group_history
            .iter()
            .filter_map(|m| m["message_id"].as_i64())
            .collect();
        if with_one {
            let one_history = all_history(&mut again, json!({"toid": ann})).await;
            held.extend(one_history.iter().filter_map(|m| m["message_id"].as_i64()));
        }
        let unique: HashSet<i64> = held.iter().copied().collect();
        assert_eq!(
            unique.len(),
            held.len(),
            "{name}: each stored message exactly once"
        );
        for id in seen.iter() {
            assert!(
                unique.contains(id),
                "{name}: everything seen live is stored"
            );
        }
        let mut expected: HashSet<i64> = acked_group.clone();
        if with_one {
            expected.extend(&acked_one);
        }
        for id in &expected {
            assert!(
                unique.contains(id),
                "{name}: acked message {id} is held after catch-up"
            );
        }
        assert_eq!(
            unique.len(),
            expected.len(),
            "{name}: nothing doubled by resends"
        );
        again.close().await;
    }
    ann_a.close().await;
    drop(a);
    drop(b);
    db.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_two_clients_land_on_different_replicas_and_chat() {
    let (db, _redis, a, b) = two_replicas().await;
    let nginx = Nginx::start("chat.conf", 8000, &[a.port, b.port], "").await;
    wait_healthy(nginx.port).await;

    let ann = register(nginx.port, "ann").await;
    let bob = register(nginx.port, "bob").await;
    let (mut ann_c, ann_reply) = login(nginx.port, ann, "ann").await;
    let (mut bob_c, bob_reply) = login(nginx.port, bob, "bob").await;
    let nodes: HashSet<&str> = [&ann_reply, &bob_reply]
        .iter()
        .filter_map(|r| r["node"].as_str())
        .collect();
    assert_eq!(
        nodes,
        HashSet::from(["node-a", "node-b"]),
        "least_conn spreads the two sockets"
    );

    ann_c.chat_ok(bob, "via nginx").await;
    assert_eq!(bob_c.next_push(6).await["msg"], "via nginx");
    bob_c.chat_ok(ann, "and back").await;
    assert_eq!(ann_c.next_push(6).await["msg"], "and back");

    // The web page is served through nginx too.
    let (status, _, _) = http_get(nginx.port, "/").await;
    assert_eq!(status, 200);

    ann_c.close().await;
    bob_c.close().await;
    drop(nginx);
    a.stop().await;
    b.stop().await;
    db.destroy().await;
}

/// A three-node Redis Cluster of private `redis-server`s, stopped when dropped.
struct RedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    dir: PathBuf,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let dir = std::env::temp_dir().join(format!(
            "chat-rediscluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        let mut nodes = Vec::new();
        for port in &ports {
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                ])
                .arg("--cluster-config-file")
                .arg(node_dir.join("nodes.conf"))
                .arg("--dir")
                .arg(&node_dir)
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server runs");
            nodes.push(child);
        }
        for port in &ports {
            let deadline = Instant::now() + PATIENCE;
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "cluster node listens");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .arg("--cluster-yes")
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(status.success(), "the cluster forms");
        let cluster = RedisCluster { nodes, ports, dir };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &cluster.ports[0].to_string(), "cluster", "info"])
                .output()
                .expect("redis-cli runs");
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster becomes ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    fn url(&self) -> String {
        format!("redis-cluster://127.0.0.1:{}", self.ports[0])
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            child.kill().ok();
            child.wait().ok();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_sharded_pub_sub_carries_every_push_across_replicas() {
    let db = TestDb::create(Backend::Mysql).await;
    let cluster = RedisCluster::start();
    let start = |node: &'static str| {
        let mut config = Config::for_database(db.url());
        config.redis_url = Some(cluster.url());
        config.node_id = Some(node.into());
        async move {
            let app = Application::build(config)
                .await
                .expect("replica on a Redis Cluster");
            Replica {
                port: app.port(),
                shutdown: app.shutdown_handle(),
                task: Some(tokio::spawn(app.run_until_stopped())),
            }
        }
    };
    let a = start("node-a").await;
    let b = start("node-b").await;
    let ann = register(a.port, "ann").await;
    let bob = register(b.port, "bob").await;
    let (mut ann_a, _) = login(a.port, ann, "ann").await;
    ann_a.add_friend(bob).await;
    let (mut bob_b, _) = login(b.port, bob, "bob").await;
    presence(&mut ann_a, bob, "online").await;
    ann_a.chat_ok(bob, "over shards").await;
    assert_eq!(bob_b.next_push(6).await["msg"], "over shards");
    let gid = ann_a.create_group("sharded", "").await["id"]
        .as_i64()
        .expect("gid");
    bob_b.join_group(gid).await;
    bob_b.group_chat_ok(gid, "group over shards").await;
    assert_eq!(ann_a.next_push(10).await["msg"], "group over shards");
    bob_b.close().await;
    presence(&mut ann_a, bob, "offline").await;
    ann_a.close().await;
    a.stop().await;
    b.stop().await;
    drop(cluster);
    db.destroy().await;
}

/// One publish of several events goes to Redis as one message per channel (a bundle), and the
/// other replica's connection gets every event, each channel's in publishing order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_crosses_redis_as_one_message_per_channel_in_order() {
    use std::sync::Arc;

    use chat_server::bus::{Bus, BusEvent, Channel};
    use chat_server::hub::{ConnHandle, Hub, Overflow};
    use fred::prelude::{ClientLike, Config as RedisConfig, EventInterface, PubsubInterface};

    let redis = Redis::start();
    let url = redis.url();
    // A plain subscriber beside the replicas: it sees the messages Redis carries.
    let spy = fred::prelude::Builder::from_config(RedisConfig::from_url(&url).unwrap())
        .build_subscriber_client()
        .unwrap();
    spy.init().await.unwrap();
    let mut carried = spy.message_rx();
    let names = [Channel::User(7).name(), Channel::Group(9).name()];
    spy.subscribe(names.to_vec()).await.unwrap();

    // Replica b: user 7, a member of group 9, connected there.
    let hub = Arc::new(Hub::default());
    let b = Bus::redis(&url, hub.clone(), "b".into()).await.unwrap();
    let (tx, mut pushes) = tokio::sync::mpsc::channel(16);
    let change = hub.attach(
        7,
        ConnHandle::new(1, tx, Arc::new(Overflow::default())),
        &[9],
    );
    b.sync(&change.channels).await.unwrap();

    // Replica a publishes a batch: three pushes to the user, one to the group, interleaved.
    let a = Bus::redis(&url, Arc::new(Hub::default()), "a".into())
        .await
        .unwrap();
    let push = |text: &str| BusEvent::Push {
        frame: text.into(),
        skip: None,
    };
    let results = a
        .publish_all(vec![
            (Channel::User(7), push("u1")),
            (Channel::Group(9), push("g1")),
            (Channel::User(7), push("u2")),
            (Channel::User(7), push("u3")),
        ])
        .await;
    assert_eq!(results.len(), 4);
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let mut got = Vec::new();
    for _ in 0..4 {
        let frame = tokio::time::timeout(PATIENCE, pushes.recv())
            .await
            .expect("every push arrives")
            .unwrap();
        got.push(frame.to_string());
    }
    let to_user: Vec<&str> = got
        .iter()
        .map(String::as_str)
        .filter(|f| f.starts_with('u'))
        .collect();
    assert_eq!(to_user, ["u1", "u2", "u3"], "all pushes: {got:?}");
    assert!(got.iter().any(|f| f == "g1"), "all pushes: {got:?}");

    let mut channels = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(PATIENCE, carried.recv())
            .await
            .expect("Redis carries a message per channel")
            .unwrap();
        channels.push(message.channel.to_string());
    }
    channels.sort();
    let mut expected = names.to_vec();
    expected.sort();
    assert_eq!(channels, expected);
    // And no more: the user's three pushes were one message.
    let more = tokio::time::timeout(Duration::from_millis(300), carried.recv()).await;
    assert!(more.is_err(), "a third message: {more:?}");
    let _ = spy.quit().await;
}
