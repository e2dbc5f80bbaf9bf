//! Hostile and broken input, frame size limits, and a pipelined flood on one connection.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{REPLY_TIMEOUT, TestApp, assert_ack, assert_errno};

/// A valid JSON request of exactly `len` bytes: an unknown msgid (99) padded with a string.
fn frame_of_len(len: usize, reqid: i64) -> String {
    let prefix = format!(r#"{{"msgid":99,"reqid":{reqid},"pad":""#);
    let suffix = r#""}"#;
    let frame = format!(
        "{prefix}{}{suffix}",
        "a".repeat(len - prefix.len() - suffix.len())
    );
    assert_eq!(frame.len(), len);
    frame
}

pub async fn malformed_frames_get_error_400_and_the_connection_keeps_working(app: &TestApp) {
    let mut client = app.client().await;
    let without_reqid = [
        "hello",
        "[1,2,3]",
        "{}",
        "42",
        "null",
        r#""a string""#,
        r#"{"msgid":"1"}"#,
        r#"{"msgid":1.5}"#,
        r#"{"msgid":null}"#,
        r#"{"msgid":[4]}"#,
        r#"{"msgid":4,"#,
        "",
    ];
    for frame in without_reqid {
        client.send_text(frame).await;
        let reply = client.next_frame().await;
        assert_eq!(reply["msgid"], 20, "ERROR_MSG for {frame:?}: {reply}");
        assert_errno(&reply, 400);
        assert!(
            reply.get("reqid").is_none(),
            "no reqid to echo for {frame:?}: {reply}"
        );
    }
    for (frame, reqid) in [(r#"{"reqid":3}"#, 3), (r#"{"msgid":"1","reqid":7}"#, 7)] {
        client.send_text(frame).await;
        let reply = client.next_frame().await;
        assert_eq!(reply["msgid"], 20, "ERROR_MSG for {frame:?}: {reply}");
        assert_errno(&reply, 400);
        assert_eq!(
            reply["reqid"], reqid,
            "the parseable reqid is echoed: {reply}"
        );
    }
    client.send_message(Message::binary(vec![1_u8, 2, 3])).await;
    let reply = client.next_frame().await;
    assert_eq!(reply["msgid"], 20, "ERROR_MSG for a binary frame: {reply}");
    assert_errno(&reply, 400);

    // Deep nesting inside a small frame: refused (as unparseable or as a mistyped name), and
    // the server survives it.
    let depth = 20_000;
    let nested = format!(
        r#"{{"msgid":4,"reqid":9,"name":{}{},"password":"x"}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    client.send_text(nested).await;
    let reply = client.next_frame().await;
    assert!(reply["msgid"] == 20 || reply["msgid"] == 5, "{reply}");
    assert_errno(&reply, 400);

    let unknown = client.request(json!({"msgid": 99})).await;
    assert_ack(&unknown, 99, 400);
    client.register("still-works", "secret").await;
}

pub async fn mistyped_fields_get_400_in_the_reply_type_of_the_request(app: &TestApp) {
    let mut client = app.client().await;

    // An invalid reqid: 400, in the request's reply type, without reqid.
    for reqid in [json!("abc"), json!(1.5), json!([1])] {
        let request = json!({"msgid": 4, "reqid": reqid, "name": "x", "password": "y"});
        client.send_json(&request).await;
        let reply = client.next_frame().await;
        assert_eq!(reply["msgid"], 5, "REG_MSG_ACK for {request}: {reply}");
        assert_errno(&reply, 400);
        assert!(reply.get("reqid").is_none(), "{reply}");
    }
    let login = client
        .request(json!({"msgid": 1, "id": 1, "password": 5}))
        .await;
    assert_eq!(login["msgid"], 2, "{login}");
    assert_errno(&login, 400);

    let id = client.register("alice", "pw-alice").await;
    client.login(id, "pw-alice").await;
    let mistyped = [
        json!({"msgid": 6, "toid": id, "msg": ["x"]}),
        json!({"msgid": 6, "toid": 1.5, "msg": "x"}),
        json!({"msgid": 7, "friendid": 1.5}),
        json!({"msgid": 7, "friendid": null}),
        json!({"msgid": 8, "groupname": 1, "groupdesc": ""}),
        json!({"msgid": 9, "groupid": "1"}),
        json!({"msgid": 10, "groupid": true, "msg": "x"}),
        json!({"msgid": 10, "groupid": 1}),
        json!({"msgid": 12, "friendid": {}}),
        json!({"msgid": 13, "groupid": null}),
        json!({"msgid": 16, "groupid": {"id": 1}}),
        json!({"msgid": 17, "toid": id, "after_seq": 1.5}),
        json!({"msgid": 18, "toid": id, "seq": "3"}),
    ];
    for request in mistyped {
        let ackof = request["msgid"].as_i64().expect("msgid");
        let reply = client.request(request).await;
        assert_ack(&reply, ackof, 400);
    }
    // Unknown fields are ignored.
    let list = client
        .request(json!({"msgid": 14, "extra": {"deep": [1, 2]}, "toid": "x"}))
        .await;
    assert_ack(&list, 14, 0);
}

pub async fn a_frame_over_64_kib_gets_413_and_the_connection_stays_open(app: &TestApp) {
    let mut client = app.client().await;

    // Exactly 65,536 bytes is allowed: it is read and answered as the request it is.
    client.send_text(frame_of_len(65_536, 1)).await;
    let reply = client.reply_to(1).await;
    assert_ack(&reply, 99, 400);

    for (len, reqid) in [(65_537, 2), (70_000, 3)] {
        client.send_text(frame_of_len(len, reqid)).await;
        let reply = client
            .recv_where("ERROR_MSG 413", REPLY_TIMEOUT, |f| f["msgid"] == 20)
            .await;
        assert_errno(&reply, 413);
    }

    client.register("still-open", "secret").await;
}

pub async fn fragmented_messages_are_reassembled_and_limited_as_a_whole(app: &TestApp) {
    let mut client = app.client().await;
    client
        .send_fragments(&frame_of_len(40_000, 1), 10_000)
        .await;
    assert_ack(&client.reply_to(1).await, 99, 400);

    // Fragments of 30,000 bytes, 90,000 in all: too large as a message.
    client
        .send_fragments(&frame_of_len(90_000, 2), 30_000)
        .await;
    let reply = client
        .recv_where("ERROR_MSG 413", REPLY_TIMEOUT, |f| f["msgid"] == 20)
        .await;
    assert_errno(&reply, 413);

    client.register("still-open", "secret").await;
}

pub async fn a_frame_over_1_mib_closes_with_1009_and_the_server_keeps_serving(app: &TestApp) {
    let mut client = app.client().await;
    // The server may close while the frame is still being written: a failed send is fine.
    let _ = client.try_send_text(frame_of_len(1_100_000, 1)).await;
    let closed = client.close_code().await;
    assert_eq!(closed, Ok(Some(1009)), "closed with 1009 (message too big)");

    let mut fresh = app.client().await;
    fresh.register("after-the-big-one", "secret").await;
}

pub async fn ten_thousand_pipelined_chats_get_every_reply_in_order_and_every_push(app: &TestApp) {
    const N: i64 = 10_000;
    let mut bob = app.user("bob").await;
    let alice = app.user("alice").await;
    let bob_id = bob.id;

    // The recipient reads concurrently, as a live client does.
    let recipient = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for _ in 0..N {
            let push = bob.next_push(6).await;
            let seq = push["seq"]
                .as_i64()
                .unwrap_or_else(|| panic!("a seq: {push}"));
            assert_eq!(push["msg"], format!("flood {seq}"), "{push}");
            seqs.push(seq);
        }
        seqs
    });

    // The sender sends all requests without waiting for any reply, while this task reads.
    let (mut sink, mut stream) = alice.into_ws().split();
    let sender = tokio::spawn(async move {
        for i in 1..=N {
            let request =
                json!({"msgid": 6, "reqid": i, "toid": bob_id, "msg": format!("flood {i}")});
            sink.feed(Message::text(request.to_string()))
                .await
                .expect("queue a request");
        }
        sink.flush().await.expect("send the requests");
        sink
    });

    let mut next = 1;
    while next <= N {
        let message = tokio::time::timeout(REPLY_TIMEOUT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for the reply to reqid {next}"))
            .expect("the connection stays open")
            .expect("a WebSocket message");
        let Message::Text(text) = message else {
            continue;
        };
        let reply: Value = serde_json::from_str(text.as_str()).expect("JSON");
        if reply.get("reqid").is_none() {
            continue;
        }
        assert_eq!(
            reply["reqid"], next,
            "every reply once, in request order: {reply}"
        );
        assert_ack(&reply, 6, 0);
        assert_eq!(reply["seq"], next, "seqs follow the request order: {reply}");
        next += 1;
    }
    let _sink = sender.await.expect("the sender finishes");
    let seqs = recipient.await.expect("the recipient gets every push");
    assert!(
        seqs.iter().copied().eq(1..=N),
        "the pushes carry seqs 1..={N} in order"
    );
}
