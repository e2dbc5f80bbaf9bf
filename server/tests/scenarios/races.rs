//! Concurrent requests from several connections: unique constraints turn into the protocol's
//! errnos (never 500), and seqs stay unique and contiguous.

use serde_json::{Value, json};

use crate::common::{Client, TestApp, assert_ack};

/// Sends one request on each client before reading any reply; returns the replies in client
/// order.
async fn all_at_once(clients: &mut [Client], request: &Value) -> Vec<Value> {
    let mut reqids = Vec::new();
    for client in clients.iter_mut() {
        let reqid = client.next_reqid();
        let mut request = request.clone();
        request["reqid"] = json!(reqid);
        client.send_json(&request).await;
        reqids.push(reqid);
    }
    let mut replies = Vec::new();
    for (client, reqid) in clients.iter_mut().zip(reqids) {
        replies.push(client.reply_to(reqid).await);
    }
    replies
}

/// The sorted errnos of `replies`.
fn errnos(replies: &[Value]) -> Vec<i64> {
    let mut errnos: Vec<_> = replies
        .iter()
        .map(|r| {
            r["errno"]
                .as_i64()
                .unwrap_or_else(|| panic!("an errno: {r}"))
        })
        .collect();
    errnos.sort_unstable();
    errnos
}

/// The seqs of successful chat acks; each sender's seqs increase.
fn ack_seqs(acks: &[Value]) -> Vec<i64> {
    let seqs: Vec<_> = acks
        .iter()
        .map(|ack| {
            assert_eq!(ack["errno"], 0, "{ack}");
            ack["seq"]
                .as_i64()
                .unwrap_or_else(|| panic!("a seq: {ack}"))
        })
        .collect();
    assert!(seqs.is_sorted(), "one sender's seqs increase: {seqs:?}");
    seqs
}

/// Asserts that the union of `parts` is exactly 1..=n.
#[track_caller]
fn assert_contiguous(parts: &[&[i64]], n: i64) {
    let mut all: Vec<i64> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=n).collect::<Vec<i64>>(),
        "seqs 1..={n}, each once"
    );
}

pub async fn concurrent_registrations_of_one_name_create_exactly_one_user(app: &TestApp) {
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(app.client().await);
    }
    let request = json!({"msgid": 4, "name": "same", "password": "pw"});
    let replies = all_at_once(&mut clients, &request).await;
    for reply in &replies {
        assert_eq!(reply["msgid"], 5, "{reply}");
    }
    assert_eq!(errnos(&replies), [0, 2, 2, 2], "{replies:?}");
}

pub async fn concurrent_creations_of_one_group_name_create_exactly_one_group(app: &TestApp) {
    let a1 = app.user("alice").await;
    let a2 = app.device(a1.id, "alice").await;
    let b1 = app.user("bob").await;
    let b2 = app.device(b1.id, "bob").await;
    let mut clients = [a1, a2, b1, b2];

    let request = json!({"msgid": 8, "groupname": "same", "groupdesc": ""});
    let replies = all_at_once(&mut clients, &request).await;
    for reply in &replies {
        assert_eq!(reply["ackof"], 8, "{reply}");
    }
    assert_eq!(
        errnos(&replies),
        [0, 2, 2, 2],
        "one group 'same': {replies:?}"
    );
    let mut total = 0;
    for client in &mut clients[1..=2] {
        let list = client.request(json!({"msgid": 15})).await;
        total += list["groups"].as_array().map_or(0, Vec::len);
    }
    assert_eq!(total, 1, "one membership in one group");
}

pub async fn concurrent_mutual_friend_requests_make_one_friendship_and_one_409(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let (alice_id, bob_id) = (alice.id, bob.id);

    let alice_reqid = alice.next_reqid();
    let bob_reqid = bob.next_reqid();
    alice
        .send_json(&json!({"msgid": 7, "reqid": alice_reqid, "friendid": bob_id}))
        .await;
    bob.send_json(&json!({"msgid": 7, "reqid": bob_reqid, "friendid": alice_id}))
        .await;
    let replies = [
        alice.reply_to(alice_reqid).await,
        bob.reply_to(bob_reqid).await,
    ];
    assert_eq!(alice.friends().await.len(), 1, "one friendship");
    assert_eq!(bob.friends().await.len(), 1, "one friendship");
    assert_eq!(
        errnos(&replies),
        [0, 409],
        "the second request finds them friends already: {replies:?}"
    );
}

pub async fn concurrent_joins_of_one_user_make_one_membership_and_one_409(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let b1 = app.user("bob").await;
    let b2 = app.device(b1.id, "bob").await;
    let g = alice.create_group("g", "").await["id"]
        .as_i64()
        .expect("group id");

    let mut devices = [b1, b2];
    let replies = all_at_once(&mut devices, &json!({"msgid": 9, "groupid": g})).await;
    assert_eq!(alice.members(g).await.len(), 2, "one membership");
    for reply in &replies {
        assert_eq!(reply["ackof"], 9, "{reply}");
    }
    assert_eq!(errnos(&replies), [0, 409], "{replies:?}");
}

pub async fn concurrent_senders_get_unique_contiguous_seqs(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let mut carol = app.user("carol").await;

    // Both sides of one conversation at once.
    let to = |toid: i64, who: &str, n: i64| -> Vec<Value> {
        (1..=n)
            .map(|i| json!({"msgid": 6, "toid": toid, "msg": format!("{who}{i}")}))
            .collect()
    };
    let (to_bob, to_alice) = (to(bob.id, "a", 100), to(alice.id, "b", 100));
    let (from_alice, from_bob) = tokio::join!(alice.pipeline(to_bob), bob.pipeline(to_alice));
    let (a, b) = (ack_seqs(&from_alice), ack_seqs(&from_bob));
    assert_contiguous(&[&a, &b], 200);
    let (seqs, more, _) = alice.history(json!({"toid": bob.id, "limit": 200})).await;
    assert_eq!(seqs, (1..=200).collect::<Vec<i64>>());
    assert!(!more);

    // Three members of one group at once.
    let g = alice.create_group("busy", "").await["id"]
        .as_i64()
        .expect("group id");
    bob.join_group(g).await;
    carol.join_group(g).await;
    let to_group = |who: &str| -> Vec<Value> {
        (1..=60)
            .map(|i| json!({"msgid": 10, "groupid": g, "msg": format!("{who}{i}")}))
            .collect()
    };
    let (x, y, z) = tokio::join!(
        alice.pipeline(to_group("a")),
        bob.pipeline(to_group("b")),
        carol.pipeline(to_group("c")),
    );
    for acks in [&x, &y, &z] {
        for ack in acks {
            assert_ack(ack, 10, 0);
        }
    }
    let (x, y, z) = (ack_seqs(&x), ack_seqs(&y), ack_seqs(&z));
    assert_contiguous(&[&x, &y, &z], 180);
    let (seqs, _, _) = carol.history(json!({"groupid": g, "limit": 200})).await;
    assert_eq!(seqs, (1..=180).collect::<Vec<i64>>());
}
