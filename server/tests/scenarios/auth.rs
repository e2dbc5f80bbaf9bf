//! Registration, login, logout and the rules that hold before login.

use serde_json::json;

use crate::common::{TestApp, array, assert_ack, assert_errno, password_of};

/// Every client request msgid except LOGIN_MSG (1) and REG_MSG (4).
const AUTHENTICATED_MSGIDS: [i64; 13] = [3, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18];

pub async fn registering_returns_a_new_id_and_a_taken_name_gets_errno_2(app: &TestApp) {
    let mut client = app.client().await;

    let alice = client
        .request(json!({"msgid": 4, "name": "alice", "password": "secret"}))
        .await;
    assert_eq!(alice["msgid"], 5, "{alice}");
    assert_errno(&alice, 0);
    let alice_id = alice["id"].as_i64().expect("an integer id");

    let again = client
        .request(json!({"msgid": 4, "name": "alice", "password": "other"}))
        .await;
    assert_eq!(again["msgid"], 5, "{again}");
    assert_errno(&again, 2);

    let bob_id = client.register("bob", "secret").await;
    assert_ne!(alice_id, bob_id, "each user gets its own id");

    // REG_MSG never logs the connection in.
    let list = client.request(json!({"msgid": 14})).await;
    assert_ack(&list, 14, 401);
}

pub async fn names_and_passwords_outside_their_limits_get_400(app: &TestApp) {
    let mut client = app.client().await;
    let bad_names = [
        json!(""),
        json!("a".repeat(65)),
        json!("😀".repeat(65)),
        json!("bell\u{7}"),
        json!("tab\there"),
        json!("line\nbreak"),
        json!("nul\u{0}byte"),
        json!("del\u{7f}"),
        json!("c1\u{85}control"),
        json!(42),
        json!(["alice"]),
    ];
    for name in bad_names {
        let reply = client
            .request(json!({"msgid": 4, "name": name, "password": "secret"}))
            .await;
        assert_eq!(reply["msgid"], 5, "{reply}");
        assert_errno(&reply, 400);
    }
    let bad_requests = [
        json!({"msgid": 4, "password": "secret"}),
        json!({"msgid": 4, "name": "carol"}),
        json!({"msgid": 4, "name": "carol", "password": ""}),
        json!({"msgid": 4, "name": "carol", "password": "p".repeat(1025)}),
        json!({"msgid": 4, "name": "carol", "password": 12345}),
    ];
    for request in bad_requests {
        let reply = client.request(request).await;
        assert_eq!(reply["msgid"], 5, "{reply}");
        assert_errno(&reply, 400);
    }

    // The limits themselves are allowed: 64 code points of 4 bytes each (utf8mb4 on MariaDB),
    // a password of 1,024 characters; and the name comes back exactly as registered.
    let name = "😀".repeat(64);
    let password = "é".repeat(1024); // characters, not bytes (2,048 bytes)
    let id = client.register(&name, &password).await;
    let login = client.login_by_name(&name, &password).await;
    assert_eq!(login["id"], id, "{login}");
    assert_eq!(login["name"], name.as_str(), "{login}");
}

pub async fn names_are_case_and_space_sensitive(app: &TestApp) {
    let mut client = app.client().await;
    let upper = client.register("Bob", "pw-Bob").await;
    let lower = client.register("bob", "pw-bob").await;
    assert_ne!(upper, lower, "\"Bob\" and \"bob\" are different users");
    let taken = client
        .request(json!({"msgid": 4, "name": "Bob", "password": "x"}))
        .await;
    assert_errno(&taken, 2);

    let wrong_case = client
        .request(json!({"msgid": 1, "name": "BOB", "password": "pw-bob"}))
        .await;
    assert_eq!(wrong_case["msgid"], 2, "{wrong_case}");
    assert_errno(&wrong_case, 1);

    // Spaces count too ("bob " is not "bob", as a PAD SPACE collation would have it).
    let spaced = client.register("bob ", "pw-bob-spaced").await;
    assert_ne!(lower, spaced, "\"bob\" and \"bob \" are different users");
    let leading = client.register(" bob", "pw-bob-leading").await;
    assert_ne!(lower, leading);

    let login = client.login_by_name("bob ", "pw-bob-spaced").await;
    assert_eq!(
        login["id"], spaced,
        "logging in as \"bob \" finds \"bob \": {login}"
    );
    assert_eq!(login["name"], "bob ");
}

pub async fn logging_in_works_by_id_and_by_name_and_twice_gets_409(app: &TestApp) {
    let id = app.registered("alice").await;

    let mut by_id = app.client().await;
    let reply = by_id.login(id, &password_of("alice")).await;
    assert_errno(&reply, 0);
    assert_eq!(reply["id"], id, "{reply}");
    assert_eq!(reply["name"], "alice", "{reply}");
    assert!(
        reply["node"].as_str().is_some_and(|n| !n.is_empty()),
        "the reply names the replica: {reply}"
    );
    for field in ["friends", "groups", "offlinemsg"] {
        assert!(array(&reply[field]).is_empty(), "{field} is empty: {reply}");
    }

    let twice = by_id
        .request(json!({"msgid": 1, "id": id, "password": password_of("alice")}))
        .await;
    assert_eq!(twice["msgid"], 2, "{twice}");
    assert_errno(&twice, 409);

    let mut by_name = app.client().await;
    let reply = by_name.login_by_name("alice", &password_of("alice")).await;
    assert_eq!(reply["id"], id, "{reply}");

    // `id` wins when both are given.
    let mut both = app.client().await;
    let reply = both
        .request(json!({"msgid": 1, "id": id, "name": "nobody", "password": password_of("alice")}))
        .await;
    assert_errno(&reply, 0);
    assert_eq!(reply["id"], id, "{reply}");
}

pub async fn wrong_passwords_and_unknown_users_get_errno_1(app: &TestApp) {
    let id = app.registered("alice").await;
    let mut client = app.client().await;
    let failures = [
        json!({"msgid": 1, "id": id, "password": "wrong"}),
        json!({"msgid": 1, "name": "alice", "password": "wrong"}),
        json!({"msgid": 1, "id": id + 1000, "password": "pw-alice"}),
        json!({"msgid": 1, "name": "nobody", "password": "pw-alice"}),
    ];
    for request in failures {
        let reply = client.request(request).await;
        assert_eq!(reply["msgid"], 2, "{reply}");
        assert_errno(&reply, 1);
    }
    let malformed = [
        json!({"msgid": 1, "password": "pw-alice"}),
        json!({"msgid": 1, "id": id.to_string(), "password": "pw-alice"}),
        json!({"msgid": 1, "id": id}),
    ];
    for request in malformed {
        let reply = client.request(request).await;
        assert_eq!(reply["msgid"], 2, "{reply}");
        assert_errno(&reply, 400);
    }
    // Failed attempts leave the connection usable.
    client.login(id, &password_of("alice")).await;
}

pub async fn logging_out_leaves_the_connection_open_and_unauthenticated(app: &TestApp) {
    let mut client = app.user("alice").await;
    let id = client.id;
    client.logout().await;

    for request in [
        json!({"msgid": 14}),
        json!({"msgid": 3}),
        json!({"msgid": 6, "toid": id, "msg": "hello"}),
    ] {
        let ackof = request["msgid"].as_i64().expect("msgid");
        let reply = client.request(request).await;
        assert_ack(&reply, ackof, 401);
    }

    // Logged out, not "already logged in": the same socket can log in again.
    client.login(id, &password_of("alice")).await;
    let list = client.request(json!({"msgid": 14})).await;
    assert_ack(&list, 14, 0);
}

pub async fn every_request_before_login_gets_401_before_its_fields_are_checked(app: &TestApp) {
    let mut client = app.client().await;
    for msgid in AUTHENTICATED_MSGIDS {
        let reply = client.request(json!({"msgid": msgid})).await;
        assert_ack(&reply, msgid, 401);
    }
    // Invalid fields still get 401, not 400.
    let garbage = [
        json!({"msgid": 6, "toid": "x", "msg": 5}),
        json!({"msgid": 10, "groupid": [], "msg": ""}),
        json!({"msgid": 17, "toid": 1, "groupid": 1, "before_seq": 1, "after_seq": 2, "limit": 0}),
        json!({"msgid": 18, "seq": -1}),
        json!({"msgid": 8, "groupname": "", "groupdesc": 7}),
    ];
    for request in garbage {
        let ackof = request["msgid"].as_i64().expect("msgid");
        let reply = client.request(request).await;
        assert_ack(&reply, ackof, 401);
    }
}

pub async fn unknown_and_server_only_msgids_get_ack_400_logged_in_or_not(app: &TestApp) {
    let not_requests = [0, -1, 2, 5, 11, 19, 20, 21, 22, 99, 1000];
    let mut client = app.client().await;
    for msgid in not_requests {
        let reply = client.request(json!({"msgid": msgid})).await;
        assert_ack(&reply, msgid, 400);
    }
    let id = client.register("alice", "pw-alice").await;
    client.login(id, "pw-alice").await;
    for msgid in not_requests {
        let reply = client.request(json!({"msgid": msgid})).await;
        assert_ack(&reply, msgid, 400);
    }
}
