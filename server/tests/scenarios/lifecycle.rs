//! Shutdown and restart: sockets closed with 1001, and everything acked survives a restart.

use serde_json::json;

use crate::common::{TestApp, assert_ack};

pub async fn shutting_down_closes_every_socket_with_1001(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut anonymous = app.client().await;
    app.trigger_shutdown();
    assert_eq!(alice.close_code().await, Ok(Some(1001)), "going away");
    assert_eq!(anonymous.close_code().await, Ok(Some(1001)), "going away");
    app.shut_down().await;
}

pub async fn a_restarted_server_keeps_every_acked_message_and_continues_the_seqs(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let bob = app.registered("bob").await;
    let sends = (1..=300)
        .map(|i| json!({"msgid": 6, "toid": bob, "msg": format!("m{i}")}))
        .collect();
    for ack in alice.pipeline(sends).await {
        assert_ack(&ack, 6, 0);
    }
    let old_group = alice.create_group("old", "").await["id"]
        .as_i64()
        .expect("group id");
    alice.group_chat_ok(old_group, "g1").await;
    let alice_id = alice.id;
    drop(alice);
    app.shut_down().await;

    // The same database, migrated again by a new server.
    let restarted = app.sibling().await;
    let mut alice = restarted.device(alice_id, "alice").await;
    let (older, _, _) = alice
        .history(json!({"toid": bob, "limit": 200, "after_seq": 0}))
        .await;
    let (newer, more, _) = alice
        .history(json!({"toid": bob, "limit": 200, "after_seq": 200}))
        .await;
    assert_eq!([older, newer].concat(), (1..=300).collect::<Vec<i64>>());
    assert!(!more);
    let ack = alice.chat_ok(bob, "after the restart").await;
    assert_eq!(ack["seq"], 301, "{ack}");
    let ack = alice.group_chat_ok(old_group, "g2").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    let new_group = alice.create_group("new", "").await["id"]
        .as_i64()
        .expect("group id");
    assert!(new_group > old_group, "{new_group} after {old_group}");
    drop(alice);
    restarted.stop().await;
}
