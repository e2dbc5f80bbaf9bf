//! Groups: create, join, roles, fan-out, permissions, quitting.

use serde_json::{Value, json};

use crate::common::{TestApp, array, assert_ack, is_utc_millis_time, password_of};
use crate::scenarios::chat::texts;

/// The `(id, name, role)` of each member object, sorted by id.
fn roles(members: &[Value]) -> Vec<(i64, String, String)> {
    let mut out: Vec<_> = members
        .iter()
        .map(|m| {
            assert!(
                m["state"] == "online" || m["state"] == "offline",
                "a member has a state: {m}"
            );
            (
                m["id"].as_i64().expect("member id"),
                m["name"].as_str().expect("member name").to_owned(),
                m["role"].as_str().expect("member role").to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn member(id: i64, name: &str, role: &str) -> (i64, String, String) {
    (id, name.to_owned(), role.to_owned())
}

fn group_id(group: &Value) -> i64 {
    group["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("a group id: {group}"))
}

/// Asserts that `chat` is a group chat object (msgid 10) with these values; returns its
/// message_id.
#[track_caller]
fn assert_group_chat(chat: &Value, seq: i64, from: (i64, &str), groupid: i64, msg: &str) -> i64 {
    assert_eq!(chat["msgid"], 10, "a group chat object: {chat}");
    assert_eq!(chat["seq"], seq, "seq: {chat}");
    assert_eq!(chat["id"], from.0, "sender id: {chat}");
    assert_eq!(chat["name"], from.1, "sender name: {chat}");
    assert_eq!(chat["groupid"], groupid, "groupid: {chat}");
    assert_eq!(chat["msg"], msg, "msg: {chat}");
    assert!(
        chat.get("toid").is_none(),
        "no toid on a group chat: {chat}"
    );
    let time = chat["time"]
        .as_str()
        .unwrap_or_else(|| panic!("a time: {chat}"));
    assert!(is_utc_millis_time(time), "{chat}");
    chat["message_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("an integer message_id: {chat}"))
}

pub async fn creating_and_joining_a_group_assigns_roles(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;

    let group = alice.create_group("rust", "crabs").await;
    let g = group_id(&group);
    assert_eq!(group["groupname"], "rust", "{group}");
    assert_eq!(group["groupdesc"], "crabs", "{group}");
    assert_eq!(
        roles(&array(&group["users"])),
        [member(alice.id, "alice", "creator")]
    );
    assert_eq!(array(&group["users"])[0]["state"], "online");

    let taken = bob
        .request(json!({"msgid": 8, "groupname": "rust", "groupdesc": ""}))
        .await;
    assert_ack(&taken, 8, 2);
    let invalid = [
        json!({"msgid": 8, "groupname": "", "groupdesc": ""}),
        json!({"msgid": 8, "groupname": "g".repeat(65), "groupdesc": ""}),
        json!({"msgid": 8, "groupname": "new\nline", "groupdesc": ""}),
        json!({"msgid": 8, "groupname": "long desc", "groupdesc": "d".repeat(201)}),
        json!({"msgid": 8, "groupname": "no desc"}),
        json!({"msgid": 8, "groupdesc": "no name"}),
        json!({"msgid": 8, "groupname": "typed", "groupdesc": 7}),
    ];
    for request in invalid {
        let reply = bob.request(request).await;
        assert_ack(&reply, 8, 400);
    }
    let desc = "😀".repeat(200);
    let emoji = bob.create_group(&"é".repeat(64), &desc).await;
    assert_eq!(
        emoji["groupdesc"],
        desc.as_str(),
        "groupdesc stored exactly"
    );
    assert_eq!(emoji["groupname"], "é".repeat(64).as_str());

    let joined = bob.join_group(g).await;
    assert_eq!(group_id(&joined), g);
    assert_eq!(
        roles(&array(&joined["users"])),
        [
            member(alice.id, "alice", "creator"),
            member(bob.id, "bob", "normal")
        ]
    );
    let errors = [
        (json!({"msgid": 9, "groupid": g}), 409),
        (json!({"msgid": 9, "groupid": g + 1000}), 404),
        (json!({"msgid": 9, "groupid": g.to_string()}), 400),
        (json!({"msgid": 9}), 400),
    ];
    for (request, errno) in errors {
        let reply = bob.request(request).await;
        assert_ack(&reply, 9, errno);
    }

    assert_eq!(
        roles(&bob.members(g).await),
        [
            member(alice.id, "alice", "creator"),
            member(bob.id, "bob", "normal")
        ]
    );

    let list = alice.request(json!({"msgid": 15})).await;
    assert_ack(&list, 15, 0);
    let groups = array(&list["groups"]);
    assert_eq!(groups.len(), 1, "alice is in one group: {list}");
    assert_eq!(group_id(&groups[0]), g);
    assert_eq!(groups[0]["groupname"], "rust");
    assert_eq!(groups[0]["groupdesc"], "crabs");
    assert_eq!(array(&groups[0]["users"]).len(), 2, "{list}");

    let list = bob.request(json!({"msgid": 15})).await;
    let mut ids: Vec<_> = array(&list["groups"]).iter().map(group_id).collect();
    ids.sort_unstable();
    let mut expected = vec![g, group_id(&emoji)];
    expected.sort_unstable();
    assert_eq!(ids, expected, "{list}");
}

pub async fn group_chat_reaches_every_member_connection_but_the_sending_one(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob1 = app.user("bob").await;
    let mut bob2 = app.device(bob1.id, "bob").await;
    let mut carol = app.user("carol").await;
    let mut dave = app.user("dave").await;
    let g = group_id(&alice.create_group("g", "").await);
    bob1.join_group(g).await;
    carol.join_group(g).await;

    let ack = alice.group_chat_ok(g, "hello all").await;
    assert_eq!(ack["seq"], 1, "{ack}");
    assert!(
        ack["time"].as_str().is_some_and(is_utc_millis_time),
        "{ack}"
    );
    for client in [&mut bob1, &mut bob2, &mut carol] {
        let push = client.next_push(10).await;
        let message_id = assert_group_chat(&push, 1, (alice.id, "alice"), g, "hello all");
        assert_eq!(ack["message_id"], message_id);
        assert_eq!(ack["time"], push["time"]);
    }

    // Markers prove absence: alice's next group push is carol's, not her own; dave's next
    // push is a 1:1 message sent after the group message, and no group push came before it.
    carol.group_chat_ok(g, "marker").await;
    assert_eq!(alice.next_push(10).await["msg"], "marker");
    carol.chat_ok(dave.id, "for dave").await;
    assert_eq!(dave.next_push(6).await["msg"], "for dave");
    assert!(
        dave.buffered(10).is_empty(),
        "a non-member gets no group push"
    );

    // A member's other device gets the member's message; the sending device does not.
    bob1.group_chat_ok(g, "from bob1").await;
    assert_eq!(bob2.next_push(10).await["msg"], "marker");
    let own = bob2.next_push(10).await;
    assert_group_chat(&own, 3, (bob1.id, "bob"), g, "from bob1");
    alice.group_chat_ok(g, "last").await;
    assert_eq!(bob1.next_push(10).await["msg"], "marker");
    assert_eq!(
        bob1.next_push(10).await["msg"],
        "last",
        "bob1 did not get its own message"
    );
}

pub async fn non_members_get_403_and_unknown_groups_404(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let g = group_id(&alice.create_group("private", "").await);

    for groupid in [g, g + 1000] {
        let errno = if groupid == g { 403 } else { 404 };
        let requests = [
            json!({"msgid": 10, "groupid": groupid, "msg": "let me in"}),
            json!({"msgid": 16, "groupid": groupid}),
            json!({"msgid": 17, "groupid": groupid}),
            json!({"msgid": 18, "groupid": groupid, "seq": 0}),
            json!({"msgid": 13, "groupid": groupid}),
        ];
        for request in requests {
            let ackof = request["msgid"].as_i64().expect("msgid");
            let reply = bob.request(request).await;
            assert_ack(&reply, ackof, errno);
        }
    }

    let (seqs, more, _) = alice.history(json!({"groupid": g})).await;
    assert!(
        seqs.is_empty() && !more,
        "the refused message was not stored"
    );
    let ack = alice.group_chat_ok(g, "first").await;
    assert_eq!(ack["seq"], 1, "{ack}");
}

/// Group sends of several users to several groups, pipelined so that they share write
/// batches: each gets its own answer (stored, 403 or 404), and only members' sends are stored.
pub async fn pipelined_group_sends_are_each_answered_for_their_own_sender(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let open = group_id(&alice.create_group("open", "").await);
    let closed = group_id(&alice.create_group("closed", "").await);
    bob.join_group(open).await;
    let gone = closed + 1000;
    let mut sends = Vec::new();
    for i in 0..20 {
        for groupid in [open, closed, gone] {
            sends.push(json!({"msgid": 10, "groupid": groupid, "msg": format!("m{i}")}));
        }
    }
    let (alice_acks, bob_acks) = tokio::join!(alice.pipeline(sends.clone()), bob.pipeline(sends));
    for (i, ack) in alice_acks.iter().enumerate() {
        assert_ack(ack, 10, if i % 3 == 2 { 404 } else { 0 });
    }
    for (i, ack) in bob_acks.iter().enumerate() {
        assert_ack(ack, 10, [0, 403, 404][i % 3]);
    }
    let (open_seqs, _, _) = alice.history(json!({"groupid": open, "limit": 200})).await;
    assert_eq!(open_seqs.len(), 40, "both members' sends to the open group");
    let (closed_seqs, _, _) = alice
        .history(json!({"groupid": closed, "limit": 200}))
        .await;
    assert_eq!(
        closed_seqs.len(),
        20,
        "only alice's sends to the closed group"
    );
}

pub async fn quitting_hands_the_creator_role_on_and_the_last_member_deletes_the_group(
    app: &TestApp,
) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let mut carol = app.user("carol").await;
    let g = group_id(&alice.create_group("short-lived", "").await);
    bob.join_group(g).await;
    carol.join_group(g).await;

    let quit = alice.request(json!({"msgid": 13, "groupid": g})).await;
    assert_ack(&quit, 13, 0);
    assert_eq!(
        roles(&carol.members(g).await),
        [
            member(bob.id, "bob", "creator"),
            member(carol.id, "carol", "normal")
        ],
        "the earliest-joined remaining member becomes creator"
    );
    for request in [
        json!({"msgid": 16, "groupid": g}),
        json!({"msgid": 13, "groupid": g}),
    ] {
        let ackof = request["msgid"].as_i64().expect("msgid");
        let reply = alice.request(request).await;
        assert_ack(&reply, ackof, 403);
    }
    let list = alice.request(json!({"msgid": 15})).await;
    assert!(array(&list["groups"]).is_empty(), "{list}");

    // Who quit gets no more group pushes (best effort: the next push alice gets is a later
    // 1:1 message).
    bob.group_chat_ok(g, "still here").await;
    bob.chat_ok(alice.id, "after you left").await;
    assert_eq!(alice.next_push(6).await["msg"], "after you left");
    assert!(alice.buffered(10).is_empty(), "{:?}", alice.buffered(10));
    let quit = bob.request(json!({"msgid": 13, "groupid": g})).await;
    assert_ack(&quit, 13, 0);
    assert_eq!(
        roles(&carol.members(g).await),
        [member(carol.id, "carol", "creator")]
    );

    let quit = carol.request(json!({"msgid": 13, "groupid": g})).await;
    assert_ack(&quit, 13, 0);
    for request in [
        json!({"msgid": 16, "groupid": g}),
        json!({"msgid": 9, "groupid": g}),
        json!({"msgid": 10, "groupid": g, "msg": "anyone?"}),
        json!({"msgid": 17, "groupid": g}),
    ] {
        let ackof = request["msgid"].as_i64().expect("msgid");
        let reply = carol.request(request).await;
        assert_ack(&reply, ackof, 404);
    }

    let next = alice.create_group("next", "").await;
    assert!(
        group_id(&next) > g,
        "group ids are never reused: {next} after {g}"
    );
}

pub async fn a_new_member_gets_only_group_messages_sent_after_joining(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let g = group_id(&alice.create_group("club", "").await);
    alice.group_chat_ok(g, "before").await;
    bob.join_group(g).await;
    bob.logout().await;
    alice.group_chat_ok(g, "after 1").await;
    alice.group_chat_ok(g, "after 2").await;

    let login = bob.login(bob.id, &password_of("bob")).await;
    let offline = array(&login["offlinemsg"]);
    assert_eq!(texts(&offline), ["after 1", "after 2"], "{login}");
    assert_group_chat(&offline[0], 2, (alice.id, "alice"), g, "after 1");
    assert_group_chat(&offline[1], 3, (alice.id, "alice"), g, "after 2");
    let groups = array(&login["groups"]);
    assert_eq!(groups.len(), 1, "{login}");
    assert_eq!(group_id(&groups[0]), g);
    assert_eq!(
        roles(&array(&groups[0]["users"])),
        [
            member(alice.id, "alice", "creator"),
            member(bob.id, "bob", "normal")
        ]
    );

    let read = bob
        .request(json!({"msgid": 18, "groupid": g, "seq": 3}))
        .await;
    assert_ack(&read, 18, 0);
    bob.logout().await;
    let login = bob.login(bob.id, &password_of("bob")).await;
    assert!(array(&login["offlinemsg"]).is_empty(), "{login}");
}

pub async fn group_names_are_case_and_space_sensitive(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut ids = Vec::new();
    for name in ["Team", "team", "Team ", " Team"] {
        ids.push(group_id(&alice.create_group(name, "").await));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "four different groups");
    for name in ["Team", "team", "Team "] {
        let taken = alice
            .request(json!({"msgid": 8, "groupname": name, "groupdesc": ""}))
            .await;
        assert_ack(&taken, 8, 2);
    }
}
