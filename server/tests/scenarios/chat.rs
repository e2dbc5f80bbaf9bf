//! One-to-one chat: acks, pushes, limits, offline delivery and read cursors.

use serde_json::{Value, json};

use crate::common::{TestApp, array, assert_ack, is_utc_millis_time, password_of};

/// Asserts that `chat` is a chat object (msgid 6) with these values, and returns its
/// message_id.
#[track_caller]
pub fn assert_one_chat(chat: &Value, seq: i64, from: (i64, &str), toid: i64, msg: &str) -> i64 {
    assert_eq!(chat["msgid"], 6, "a 1:1 chat object: {chat}");
    assert_eq!(chat["seq"], seq, "seq: {chat}");
    assert_eq!(chat["id"], from.0, "sender id: {chat}");
    assert_eq!(chat["name"], from.1, "sender name: {chat}");
    assert_eq!(chat["toid"], toid, "toid: {chat}");
    assert_eq!(chat["msg"], msg, "msg: {chat}");
    assert!(
        chat.get("groupid").is_none(),
        "no groupid on a 1:1 chat: {chat}"
    );
    let time = chat["time"]
        .as_str()
        .unwrap_or_else(|| panic!("a time: {chat}"));
    assert!(
        is_utc_millis_time(time),
        "time like 2026-11-21T05:10:24.123Z: {chat}"
    );
    chat["message_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("an integer message_id: {chat}"))
}

/// The `msg` texts of a list of chat objects.
pub fn texts(chats: &[Value]) -> Vec<String> {
    chats
        .iter()
        .map(|c| c["msg"].as_str().expect("chat msg").to_owned())
        .collect()
}

pub async fn a_one_to_one_message_is_acked_and_pushed_with_every_field(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let carol = app.registered("carol").await;

    let ack = alice.chat_ok(bob.id, "hi bob").await;
    assert_eq!(ack["seq"], 1, "seq starts at 1 per conversation: {ack}");
    let time = ack["time"].as_str().expect("the ack carries time");
    assert!(is_utc_millis_time(time), "{ack}");
    let push = bob.next_push(6).await;
    let message_id = assert_one_chat(&push, 1, (alice.id, "alice"), bob.id, "hi bob");
    assert_eq!(
        ack["message_id"], message_id,
        "ack and push agree: {ack} {push}"
    );
    assert_eq!(
        push["time"], ack["time"],
        "ack and push agree: {ack} {push}"
    );

    // The pair shares one seq sequence, whoever sends.
    let reply = bob.chat_ok(alice.id, "hi alice").await;
    assert_eq!(reply["seq"], 2, "{reply}");
    let push = alice.next_push(6).await;
    assert_one_chat(&push, 2, (bob.id, "bob"), alice.id, "hi alice");
    let third = alice.chat_ok(bob.id, "how are you?").await;
    assert_eq!(third["seq"], 3, "{third}");

    // Another pair starts at 1; so does a note to oneself. Chat needs no friendship, and the
    // recipient need not be online.
    let other = alice.chat_ok(carol, "hi carol").await;
    assert_eq!(other["seq"], 1, "{other}");
    let note = alice.chat_ok(alice.id, "note to self").await;
    assert_eq!(note["seq"], 1, "{note}");

    // History keeps exactly what the acks said.
    let (_, _, stored) = alice.history(json!({"toid": bob.id})).await;
    for (message, ack) in stored.iter().zip([&ack, &reply, &third]) {
        assert_eq!(message["message_id"], ack["message_id"], "{message} {ack}");
        assert_eq!(message["time"], ack["time"], "{message} {ack}");
    }

    let mut ids: Vec<_> = [&ack, &reply, &third, &other, &note]
        .iter()
        .map(|a| a["message_id"].as_i64().expect("message_id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5, "every message has its own message_id");
}

pub async fn message_length_is_counted_in_code_points_and_bad_chats_store_nothing(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;

    // 4,000 code points = 16,000 bytes = 8,000 UTF-16 units: allowed.
    let longest = "😀".repeat(4000);
    let ack = alice.chat_ok(bob.id, &longest).await;
    assert_eq!(ack["seq"], 1);
    let push = bob.next_push(6).await;
    assert_eq!(push["msg"], longest.as_str(), "the text arrives unchanged");

    let max_safe = 9_007_199_254_740_991_i64;
    let refused = [
        (
            json!({"msgid": 6, "toid": bob.id, "msg": "😀".repeat(4001)}),
            400,
        ),
        (
            json!({"msgid": 6, "toid": bob.id, "msg": "a".repeat(4001)}),
            400,
        ),
        (json!({"msgid": 6, "toid": bob.id, "msg": ""}), 400),
        (json!({"msgid": 6, "toid": bob.id}), 400),
        (json!({"msgid": 6, "toid": bob.id, "msg": 5}), 400),
        (json!({"msgid": 6, "msg": "hi"}), 400),
        (
            json!({"msgid": 6, "toid": bob.id.to_string(), "msg": "hi"}),
            400,
        ),
        (json!({"msgid": 6, "toid": max_safe + 1, "msg": "hi"}), 400),
        (json!({"msgid": 6, "toid": max_safe, "msg": "hi"}), 404),
        (json!({"msgid": 6, "toid": bob.id + 1000, "msg": "hi"}), 404),
    ];
    for (request, errno) in refused {
        let reply = alice.request(request).await;
        assert_ack(&reply, 6, errno);
    }

    // Nothing of the refused ones was stored: the conversation goes on at seq 2.
    let ack = alice.chat_ok(bob.id, "after the errors").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    let (seqs, more, messages) = alice.history(json!({"toid": bob.id})).await;
    assert_eq!(seqs, [1, 2]);
    assert!(!more);
    assert_eq!(texts(&messages), [longest.as_str(), "after the errors"]);
}

pub async fn offline_messages_arrive_at_login_in_order_and_not_again_once_read(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let bob_id = app.registered("bob").await;
    for text in ["m1", "m2", "m3"] {
        alice.chat_ok(bob_id, text).await;
    }

    let mut bob = app.client().await;
    let login = bob.login(bob_id, &password_of("bob")).await;
    let offline = array(&login["offlinemsg"]);
    assert_eq!(texts(&offline), ["m1", "m2", "m3"], "{login}");
    for (i, chat) in offline.iter().enumerate() {
        let seq = i64::try_from(i).expect("small") + 1;
        assert_one_chat(chat, seq, (alice.id, "alice"), bob_id, &format!("m{seq}"));
    }
    let keys: Vec<_> = offline
        .iter()
        .map(|c| {
            (
                c["time"].as_str().map(str::to_owned),
                c["message_id"].as_i64(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "ordered by (time, message_id)");

    let read = bob
        .request(json!({"msgid": 18, "toid": alice.id, "seq": 3}))
        .await;
    assert_ack(&read, 18, 0);
    // What bob sends himself is never offered to him.
    bob.chat_ok(alice.id, "my own reply").await;
    bob.logout().await;
    let login = bob.login(bob_id, &password_of("bob")).await;
    assert!(
        array(&login["offlinemsg"]).is_empty(),
        "read and own messages are not offered again: {login}"
    );

    // Unread messages are offered, also when they were pushed live.
    alice.chat_ok(bob_id, "m5").await;
    assert_eq!(bob.next_push(6).await["msg"], "m5");
    bob.logout().await;
    let login = bob.login(bob_id, &password_of("bob")).await;
    let offline = array(&login["offlinemsg"]);
    assert_eq!(texts(&offline), ["m5"], "{login}");
    assert_one_chat(&offline[0], 5, (alice.id, "alice"), bob_id, "m5");
}

pub async fn read_cursors_clamp_only_move_forward_and_reject_negative_seqs(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    for text in ["m1", "m2", "m3"] {
        alice.chat_ok(bob.id, text).await;
    }

    let cases = [
        (json!({"msgid": 18, "toid": alice.id, "seq": 99}), 0),
        (json!({"msgid": 18, "toid": alice.id, "seq": 1}), 0),
        (json!({"msgid": 18, "toid": alice.id, "seq": 0}), 0),
        (json!({"msgid": 18, "toid": alice.id, "seq": -1}), 400),
        (json!({"msgid": 18, "toid": alice.id}), 400),
        (json!({"msgid": 18, "toid": alice.id, "seq": "2"}), 400),
        (json!({"msgid": 18, "seq": 1}), 400),
        (
            json!({"msgid": 18, "toid": alice.id, "groupid": 1, "seq": 1}),
            400,
        ),
        (json!({"msgid": 18, "toid": bob.id + 1000, "seq": 1}), 404),
    ];
    for (request, errno) in cases {
        let reply = bob.request(request).await;
        assert_ack(&reply, 18, errno);
    }

    // READ 99 was clamped to 3 (else m4 would count as read), and READ 1 and 0 did not move
    // the cursor back (else m2 and m3 would be offered again).
    alice.chat_ok(bob.id, "m4").await;
    bob.logout().await;
    let login = bob.login(bob.id, &password_of("bob")).await;
    let offline = array(&login["offlinemsg"]);
    assert_eq!(texts(&offline), ["m4"], "{login}");
    assert_eq!(offline[0]["seq"], 4);
}

pub async fn offline_messages_are_capped_at_the_newest_200_per_conversation(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut carol = app.user("carol").await;
    let bob = app.registered("bob").await;

    carol.chat_ok(bob, "c1").await;
    let sends = (1..=205)
        .map(|i| json!({"msgid": 6, "toid": bob, "msg": format!("a{i}")}))
        .collect();
    for ack in alice.pipeline(sends).await {
        assert_ack(&ack, 6, 0);
    }
    carol.chat_ok(bob, "c2").await;

    let mut client = app.client().await;
    let login = client.login(bob, &password_of("bob")).await;
    let offline = array(&login["offlinemsg"]);
    let keys: Vec<_> = offline
        .iter()
        .map(|c| {
            (
                c["time"].as_str().map(str::to_owned),
                c["message_id"].as_i64(),
            )
        })
        .collect();
    assert!(keys.is_sorted(), "ordered by (time, message_id)");

    let mut got = texts(&offline);
    got.sort();
    let mut expected: Vec<String> = (6..=205).map(|i| format!("a{i}")).collect();
    expected.extend(["c1".to_owned(), "c2".to_owned()]);
    expected.sort();
    assert_eq!(got, expected, "the newest 200 of alice's, both of carol's");
    let alice_seqs: Vec<_> = offline
        .iter()
        .filter(|c| c["id"] == alice.id)
        .map(|c| c["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(alice_seqs, (6..=205).collect::<Vec<i64>>());
}
