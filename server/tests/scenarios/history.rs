//! HISTORY_MSG: paging by seq in both directions, defaults and validation.

use serde_json::json;

use crate::common::{TestApp, assert_ack};
use crate::scenarios::chat::{assert_one_chat, texts};

pub async fn history_pages_by_seq_in_ascending_order(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    for i in 1..=7 {
        alice.chat_ok(bob.id, &format!("m{i}")).await;
    }

    // (query, expected seqs, expected `more`), from either side of the conversation.
    let pages = [
        (json!({"toid": bob.id, "limit": 3}), vec![5, 6, 7], true),
        (
            json!({"toid": bob.id, "limit": 3, "before_seq": 5}),
            vec![2, 3, 4],
            true,
        ),
        (
            json!({"toid": bob.id, "limit": 3, "before_seq": 2}),
            vec![1],
            false,
        ),
        (
            json!({"toid": bob.id, "limit": 3, "before_seq": 1}),
            vec![],
            false,
        ),
        (
            json!({"toid": bob.id, "limit": 3, "after_seq": 0}),
            vec![1, 2, 3],
            true,
        ),
        (
            json!({"toid": bob.id, "limit": 3, "after_seq": 4}),
            vec![5, 6, 7],
            false,
        ),
        (
            json!({"toid": bob.id, "limit": 3, "after_seq": 7}),
            vec![],
            false,
        ),
        (
            json!({"toid": bob.id, "limit": 7}),
            vec![1, 2, 3, 4, 5, 6, 7],
            false,
        ),
        (json!({"toid": bob.id}), vec![1, 2, 3, 4, 5, 6, 7], false),
        (
            json!({"toid": alice.id, "limit": 2, "before_seq": 4}),
            vec![2, 3],
            true,
        ),
        (
            json!({"toid": alice.id, "limit": 200, "after_seq": 5}),
            vec![6, 7],
            false,
        ),
    ];
    for (i, (query, seqs, more)) in pages.into_iter().enumerate() {
        let client = if query["toid"] == bob.id {
            &mut alice
        } else {
            &mut bob
        };
        let (got_seqs, got_more, messages) = client.history(query.clone()).await;
        assert_eq!(got_seqs, seqs, "page {i}: {query}");
        assert_eq!(got_more, more, "page {i} `more`: {query}");
        for message in &messages {
            let seq = message["seq"].as_i64().expect("seq");
            assert_one_chat(
                message,
                seq,
                (alice.id, "alice"),
                bob.id,
                &format!("m{seq}"),
            );
        }
    }

    // Group history pages the same way and carries groupid.
    let group = bob.create_group("paged", "").await;
    let g = group["id"].as_i64().expect("group id");
    for text in ["g1", "g2", "g3"] {
        bob.group_chat_ok(g, text).await;
    }
    let (seqs, more, messages) = bob.history(json!({"groupid": g, "limit": 2})).await;
    assert_eq!(seqs, [2, 3]);
    assert!(more);
    assert_eq!(texts(&messages), ["g2", "g3"]);
    for message in &messages {
        assert_eq!(message["msgid"], 10, "{message}");
        assert_eq!(message["groupid"], g, "{message}");
        assert_eq!(message["id"], bob.id, "{message}");
    }
}

pub async fn history_returns_fifty_messages_by_default(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let bob = app.registered("bob").await;

    let sends = (1..=55)
        .map(|i| json!({"msgid": 6, "toid": bob, "msg": format!("m{i}")}))
        .collect();
    for ack in alice.pipeline(sends).await {
        assert_ack(&ack, 6, 0);
    }

    let (seqs, more, _) = alice.history(json!({"toid": bob})).await;
    assert_eq!(seqs, (6..=55).collect::<Vec<i64>>(), "the newest 50");
    assert!(more);
    let (seqs, more, _) = alice.history(json!({"toid": bob, "before_seq": 6})).await;
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert!(!more);
}

pub async fn history_limits_and_bounds_are_validated(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let bob = app.registered("bob").await;
    alice.chat_ok(bob, "one").await;

    let cases = [
        (json!({"msgid": 17, "toid": bob, "limit": 0}), 400),
        (json!({"msgid": 17, "toid": bob, "limit": 201}), 400),
        (json!({"msgid": 17, "toid": bob, "limit": -1}), 400),
        (json!({"msgid": 17, "toid": bob, "limit": "5"}), 400),
        (
            json!({"msgid": 17, "toid": bob, "before_seq": 5, "after_seq": 1}),
            400,
        ),
        (json!({"msgid": 17, "toid": bob, "before_seq": "5"}), 400),
        (json!({"msgid": 17}), 400),
        (json!({"msgid": 17, "toid": bob, "groupid": 1}), 400),
        (json!({"msgid": 17, "toid": bob + 1000}), 404),
        (json!({"msgid": 17, "toid": bob, "limit": 200}), 0),
        (json!({"msgid": 17, "toid": bob, "limit": 1}), 0),
    ];
    for (request, errno) in cases {
        let reply = alice.request(request).await;
        assert_ack(&reply, 17, errno);
    }
}
