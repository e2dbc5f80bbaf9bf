//! Sessions and identity: several devices per user, presence, idempotent sends, the session as
//! the only source of the sender, and hostile strings.

use serde_json::{Value, json};

use crate::common::{TestApp, array, assert_ack, password_of};
use crate::scenarios::chat::{assert_one_chat, texts};

/// Asserts a PRESENCE_MSG push about `user`.
#[track_caller]
fn assert_presence(push: &Value, user: (i64, &str), state: &str) {
    assert_eq!(push["msgid"], 19, "{push}");
    assert_eq!(push["id"], user.0, "presence of whom: {push}");
    assert_eq!(push["name"], user.1, "{push}");
    assert_eq!(push["state"], state, "{push}");
}

pub async fn a_users_other_devices_get_its_messages_but_the_sending_one_only_the_ack(
    app: &TestApp,
) {
    let mut a1 = app.user("alice").await;
    let mut a2 = app.device(a1.id, "alice").await;
    let mut bob = app.user("bob").await;
    let alice = (a1.id, "alice");

    let ack = a1.chat_ok(bob.id, "from a1").await;
    let on_a2 = a2.next_push(6).await;
    assert_one_chat(&on_a2, 1, alice, bob.id, "from a1");
    assert_eq!(on_a2["message_id"], ack["message_id"]);
    assert_one_chat(&bob.next_push(6).await, 1, alice, bob.id, "from a1");

    a2.chat_ok(bob.id, "from a2").await;
    assert_one_chat(&a1.next_push(6).await, 2, alice, bob.id, "from a2");
    assert_one_chat(&bob.next_push(6).await, 2, alice, bob.id, "from a2");

    // Both devices get what others send; a2's next push is bob's, not its own "from a2".
    bob.chat_ok(alice.0, "to both").await;
    for device in [&mut a1, &mut a2] {
        let push = device.next_push(6).await;
        assert_one_chat(&push, 3, (bob.id, "bob"), alice.0, "to both");
    }
}

/// `user.state` (informational, written in batches by the presence task) follows the last
/// transition: online after a login, offline after the last logout.
pub async fn the_state_column_records_the_last_presence_transition(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let id = alice.id;
    wait_for_state(app, id, "online").await;
    alice.logout().await;
    wait_for_state(app, id, "offline").await;
}

async fn wait_for_state(app: &TestApp, id: i64, want: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let state = app.stored_state(id).await;
        if state == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "user.state is {state:?}, never {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub async fn presence_is_pushed_on_the_first_login_and_the_last_logout_only(app: &TestApp) {
    let mut a1 = app.user("alice").await;
    let alice = (a1.id, "alice");
    let mut friend = app.user("fred").await;
    let mut comember = app.user("mia").await;
    a1.add_friend(friend.id).await;
    let g = a1.create_group("g", "").await["id"]
        .as_i64()
        .expect("group id");
    comember.join_group(g).await;
    friend.clear_buffer();
    comember.clear_buffer();

    // Last (only) device logs out: offline.
    a1.logout().await;
    assert_presence(&friend.next_push(19).await, alice, "offline");
    assert_presence(&comember.next_push(19).await, alice, "offline");

    // First device logs in: online.
    a1.login(alice.0, &password_of("alice")).await;
    assert_presence(&friend.next_push(19).await, alice, "online");
    assert_presence(&comember.next_push(19).await, alice, "online");

    // A second device neither announces nor, when it leaves, withdraws: the next thing the
    // friend and the co-member get is a marker sent after it came and went.
    let mut a2 = app.device(alice.0, "alice").await;
    a2.chat_ok(friend.id, "marker 1").await;
    a2.group_chat_ok(g, "marker 1").await;
    assert_eq!(
        friend.next_frame().await["msg"],
        "marker 1",
        "no presence push before it"
    );
    assert_eq!(
        comember.next_frame().await["msg"],
        "marker 1",
        "no presence push before it"
    );
    a2.logout().await;
    a1.chat_ok(friend.id, "marker 2").await;
    a1.group_chat_ok(g, "marker 2").await;
    assert_eq!(
        friend.next_frame().await["msg"],
        "marker 2",
        "no presence push before it"
    );
    assert_eq!(
        comember.next_frame().await["msg"],
        "marker 2",
        "no presence push before it"
    );
    let friends = friend.friends().await;
    assert_eq!(
        friends[0]["state"], "online",
        "alice is still online: {friends:?}"
    );

    // The last device disconnects (no LOGINOUT, no close frame): offline.
    let own_presence: Vec<_> = a1
        .buffered(19)
        .into_iter()
        .filter(|p| p["id"] == alice.0)
        .collect();
    assert!(
        own_presence.is_empty(),
        "no presence about oneself: {own_presence:?}"
    );
    drop(a1); // no close frame: the TCP connection just ends
    assert_presence(&friend.next_push(19).await, alice, "offline");
    assert_presence(&comember.next_push(19).await, alice, "offline");
}

pub async fn a_resend_with_the_same_txnid_returns_the_first_ack_and_stores_nothing(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let bob = app.registered("bob").await;
    let carol = app.registered("carol").await;
    let g = alice.create_group("g", "").await["id"]
        .as_i64()
        .expect("group id");

    let send = json!({"msgid": 6, "toid": bob, "msg": "once", "txnid": "t-1"});
    let first = alice.request(send.clone()).await;
    assert_ack(&first, 6, 0);
    let again = alice.request(send).await;
    assert_ack(&again, 6, 0);
    for field in ["message_id", "seq", "time"] {
        assert_eq!(
            first[field], again[field],
            "{field} of the first ack: {first} {again}"
        );
    }

    let conflicts = [
        json!({"msgid": 6, "toid": bob, "msg": "other text", "txnid": "t-1"}),
        json!({"msgid": 6, "toid": carol, "msg": "once", "txnid": "t-1"}),
        json!({"msgid": 10, "groupid": g, "msg": "once", "txnid": "t-1"}),
    ];
    for request in conflicts {
        let ackof = request["msgid"].as_i64().expect("msgid");
        let reply = alice.request(request).await;
        assert_ack(&reply, ackof, 409);
    }
    let invalid = [
        json!({"msgid": 6, "toid": bob, "msg": "x", "txnid": "t".repeat(65)}),
        json!({"msgid": 6, "toid": bob, "msg": "x", "txnid": 7}),
    ];
    for request in invalid {
        let reply = alice.request(request).await;
        assert_ack(&reply, 6, 400);
    }

    // A null txnid is an absent one; a new txnid is a new message.
    let plain = alice
        .request(json!({"msgid": 6, "toid": bob, "msg": "once", "txnid": null}))
        .await;
    assert_ack(&plain, 6, 0);
    assert_eq!(plain["seq"], 2, "{plain}");
    let fresh = alice
        .request(json!({"msgid": 6, "toid": bob, "msg": "once", "txnid": "t-2"}))
        .await;
    assert_ack(&fresh, 6, 0);
    assert_eq!(fresh["seq"], 3, "{fresh}");

    let (seqs, _, _) = alice.history(json!({"toid": bob})).await;
    assert_eq!(seqs, [1, 2, 3], "the resend stored nothing");
    let (seqs, _, _) = alice.history(json!({"toid": carol})).await;
    assert!(seqs.is_empty(), "the conflicts stored nothing");
    let (seqs, _, _) = alice.history(json!({"groupid": g})).await;
    assert!(seqs.is_empty(), "the conflicts stored nothing");

    // A send answered with an error records nothing, not even its txnid.
    let failed = [
        (
            json!({"msgid": 6, "toid": bob + 1000, "msg": "lost", "txnid": "t-err"}),
            404,
        ),
        (
            json!({"msgid": 6, "toid": bob, "msg": "x".repeat(4001), "txnid": "t-err"}),
            400,
        ),
    ];
    for (request, errno) in failed {
        let reply = alice.request(request).await;
        assert_ack(&reply, 6, errno);
    }
    let found = alice
        .request(json!({"msgid": 6, "toid": carol, "msg": "found", "txnid": "t-err"}))
        .await;
    assert_ack(&found, 6, 0);
    assert_eq!(found["seq"], 1, "{found}");

    // The scope of a txnid is its sender: bob may use "t-1" too.
    let mut bob_client = app.device(bob, "bob").await;
    let reply = bob_client
        .request(json!({"msgid": 6, "toid": alice.id, "msg": "once", "txnid": "t-1"}))
        .await;
    assert_ack(&reply, 6, 0);
    assert_ne!(
        reply["message_id"], first["message_id"],
        "a message of its own: {reply}"
    );
    assert_eq!(reply["seq"], 4, "{reply}");
}

pub async fn a_client_supplied_id_never_makes_the_server_act_as_another_user(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let bob = app.registered("bob").await;
    let mut carol = app.user("carol").await;

    let ack = alice
        .request(json!({"msgid": 6, "id": bob, "toid": carol.id, "msg": "who am i"}))
        .await;
    assert_ack(&ack, 6, 0);
    assert_one_chat(
        &carol.next_push(6).await,
        1,
        (alice.id, "alice"),
        carol.id,
        "who am i",
    );

    let ack = alice
        .request(json!({"msgid": 7, "id": bob, "friendid": carol.id}))
        .await;
    assert_ack(&ack, 7, 0);
    let friends: Vec<_> = carol
        .friends()
        .await
        .iter()
        .map(|f| f["id"].clone())
        .collect();
    assert_eq!(
        friends,
        [json!(alice.id)],
        "alice, not bob, befriended carol"
    );

    let ack = alice
        .request(json!({"msgid": 8, "id": bob, "groupname": "mine", "groupdesc": ""}))
        .await;
    assert_ack(&ack, 8, 0);
    let users = array(&ack["group"]["users"]);
    assert_eq!(users.len(), 1, "{ack}");
    assert_eq!(
        users[0]["id"], alice.id,
        "alice, not bob, created it: {ack}"
    );

    let ack = alice
        .request(json!({"msgid": 17, "id": bob, "toid": carol.id}))
        .await;
    assert_ack(&ack, 17, 0);
    assert_eq!(
        texts(&array(&ack["messages"])),
        ["who am i"],
        "alice's conversation: {ack}"
    );
}

pub async fn sql_looking_strings_are_stored_verbatim(app: &TestApp) {
    let name = "Robert'); DROP TABLE user;--";
    let text = "'; DELETE FROM offlinemessage; -- \" OR 1=1 \\ % _ `x` $1 ?";
    let groupname = "x' OR '1'='1";
    let groupdesc = "\\'; DROP TABLE allgroup; --";

    let mut robert = app.client().await;
    let id = robert.register(name, "pw'--").await;
    let login = robert.login_by_name(name, "pw'--").await;
    assert_eq!(login["id"], id);
    assert_eq!(login["name"], name);

    let bob = app.registered("bob").await;
    robert.chat_ok(bob, text).await;
    let (_, _, messages) = robert.history(json!({"toid": bob})).await;
    assert_eq!(texts(&messages), [text]);
    assert_eq!(messages[0]["name"], name);

    let group = robert.create_group(groupname, groupdesc).await;
    assert_eq!(group["groupname"], groupname);
    assert_eq!(group["groupdesc"], groupdesc);
    let plain = robert
        .request(json!({"msgid": 8, "groupname": "x", "groupdesc": ""}))
        .await;
    assert_ack(&plain, 8, 0);

    // The tables are all still there: bob's unread message waits for him.
    let mut bob_client = app.client().await;
    let login = bob_client.login(bob, &password_of("bob")).await;
    assert_eq!(texts(&array(&login["offlinemsg"])), [text], "{login}");
}

pub async fn presence_is_announced_once_when_two_devices_come_and_go_at_once(app: &TestApp) {
    let alice = app.registered("alice").await;
    let mut friend = app.user("fred").await;
    {
        let mut setup = app.device(alice, "alice").await;
        setup.add_friend(friend.id).await;
        setup.logout().await;
    }
    assert_presence(&friend.next_push(19).await, (alice, "alice"), "offline");

    let mut a1 = app.client().await;
    let mut a2 = app.client().await;
    let login = json!({"msgid": 1, "id": alice, "password": password_of("alice")});
    let (r1, r2) = (a1.next_reqid(), a2.next_reqid());
    let mut first = login.clone();
    first["reqid"] = json!(r1);
    let mut second = login;
    second["reqid"] = json!(r2);
    a1.send_json(&first).await;
    a2.send_json(&second).await;
    for (client, reqid) in [(&mut a1, r1), (&mut a2, r2)] {
        let reply = client.reply_to(reqid).await;
        assert_eq!(reply["errno"], 0, "{reply}");
    }
    a1.chat_ok(friend.id, "marker").await;
    // The announcement and the message travel separate paths (the presence announcer, the
    // message pipeline): either may arrive first. A second "online" would be read below in
    // place of the "offline".
    let (mut others, mut marker) = (Vec::new(), false);
    while !marker || others.is_empty() {
        let frame = friend.next_frame().await;
        if frame["msg"] == "marker" {
            marker = true;
        } else {
            others.push(frame);
        }
    }
    assert_eq!(others.len(), 1, "one push besides the marker: {others:?}");
    assert_presence(&others[0], (alice, "alice"), "online");

    drop(a1);
    drop(a2);
    assert_presence(&friend.next_push(19).await, (alice, "alice"), "offline");
    // Best effort: a duplicate would most likely have arrived by the time this reply does.
    friend.friends().await;
    assert!(friend.buffered(19).is_empty(), "{:?}", friend.buffered(19));
}

pub async fn a_connection_gets_no_pushes_for_a_user_it_logged_out(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let bob = app.registered("bob").await;
    let carol = app.registered("carol").await;

    // One socket: bob logs in, logs out, and carol logs in on it.
    let mut socket = app.device(bob, "bob").await;
    socket.logout().await;
    socket.login(carol, &password_of("carol")).await;

    alice.chat_ok(bob, "for bob only").await;
    alice.chat_ok(carol, "for carol").await;
    let push = socket.next_push(6).await;
    assert_eq!(
        push["msg"], "for carol",
        "bob's message never reaches carol's session"
    );
    assert_eq!(push["toid"], carol);
}
