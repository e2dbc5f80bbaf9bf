//! Friendship: symmetric, with online state, and its error cases.

use serde_json::{Value, json};

use crate::common::{TestApp, array, assert_ack, password_of};

/// The `(id, name, state)` of each user object, sorted by id.
fn summary(users: &[Value]) -> Vec<(i64, String, String)> {
    let mut out: Vec<_> = users
        .iter()
        .map(|u| {
            (
                u["id"].as_i64().expect("user id"),
                u["name"].as_str().expect("user name").to_owned(),
                u["state"].as_str().expect("user state").to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn entry(id: i64, name: &str, state: &str) -> (i64, String, String) {
    (id, name.to_owned(), state.to_owned())
}

pub async fn adding_a_friend_is_symmetric_and_shows_online_state(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let carol = app.registered("carol").await;

    let friend = alice.add_friend(bob.id).await;
    assert_eq!(summary(&[friend]), [entry(bob.id, "bob", "online")]);
    let friend = alice.add_friend(carol).await;
    assert_eq!(summary(&[friend]), [entry(carol, "carol", "offline")]);

    assert_eq!(
        summary(&alice.friends().await),
        [
            entry(bob.id, "bob", "online"),
            entry(carol, "carol", "offline")
        ]
    );
    assert_eq!(
        summary(&bob.friends().await),
        [entry(alice.id, "alice", "online")],
        "friendship is symmetric"
    );

    let mut carol_client = app.client().await;
    let login = carol_client.login(carol, &password_of("carol")).await;
    assert_eq!(
        summary(&array(&login["friends"])),
        [entry(alice.id, "alice", "online")],
        "the login reply lists friends with their state"
    );

    bob.logout().await;
    assert_eq!(
        summary(&alice.friends().await),
        [
            entry(bob.id, "bob", "offline"),
            entry(carol, "carol", "online")
        ]
    );
}

pub async fn befriending_oneself_an_unknown_user_or_a_friend_again_is_refused(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let bob = app.registered("bob").await;

    let cases = [
        (json!({"msgid": 7, "friendid": alice.id}), 400),
        (json!({"msgid": 7, "friendid": bob + 1000}), 404),
        (json!({"msgid": 7}), 400),
        (json!({"msgid": 7, "friendid": bob.to_string()}), 400),
    ];
    for (request, errno) in cases {
        let reply = alice.request(request).await;
        assert_ack(&reply, 7, errno);
    }

    alice.add_friend(bob).await;
    let again = alice.request(json!({"msgid": 7, "friendid": bob})).await;
    assert_ack(&again, 7, 409);

    let mut bob_client = app.device(bob, "bob").await;
    let reverse = bob_client
        .request(json!({"msgid": 7, "friendid": alice.id}))
        .await;
    assert_ack(&reverse, 7, 409);
    assert_eq!(alice.friends().await.len(), 1, "no duplicate friendship");
}

pub async fn deleting_a_friend_removes_it_on_both_sides(app: &TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    alice.add_friend(bob.id).await;

    // The other side deletes.
    let reply = bob
        .request(json!({"msgid": 12, "friendid": alice.id}))
        .await;
    assert_ack(&reply, 12, 0);
    assert!(alice.friends().await.is_empty());
    assert!(bob.friends().await.is_empty());

    for friendid in [bob.id, bob.id + 1000] {
        let reply = alice
            .request(json!({"msgid": 12, "friendid": friendid}))
            .await;
        assert_ack(&reply, 12, 404);
    }
    let reply = alice.request(json!({"msgid": 12})).await;
    assert_ack(&reply, 12, 400);

    // And they can be friends again.
    alice.add_friend(bob.id).await;
    assert_eq!(bob.friends().await.len(), 1);
}
