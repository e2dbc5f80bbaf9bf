//! The original protocol's shapes: replies and pushes as the course's C++ client reads them,
//! made from what the service layer returns. Pure: no I/O.
//!
//! - Login reply: `{"msgid":2,"errno":0,"id","name"}` plus `friends`, `groups` and `offlinemsg`
//!   when non-empty, each element a *string* holding JSON (a group's `users` likewise).
//! - Chat (push and `offlinemsg` element): `{"msgid":6|10,"id","name","toid"|"groupid","msg",
//!   "time"}` with `time` as `YYYY-MM-DD hh:mm:ss` (UTC).
//! - Errors: `{"msgid":2|5,"errno","errmsg"}`.

use serde_json::{Map, Value, json};

use crate::error::ServiceError;
use crate::protocol::msgid;
use crate::service::Payload;

/// The text of errno 1 in the original login reply.
pub const WRONG_CREDENTIALS: &str = "id or password is invalid!";

/// Longest object the original client reads whole: it calls `recv` once per object into a
/// 1,024-byte buffer and parses it as a C string, so the object and its NUL must fit.
pub const CLIENT_BUFFER: usize = 1023;

/// Whether `id` is a request of the original protocol (the only ones served here).
pub fn is_original_request(id: i64) -> bool {
    matches!(
        id,
        msgid::LOGIN
            | msgid::LOGOUT
            | msgid::REG
            | msgid::ONE_CHAT
            | msgid::ADD_FRIEND
            | msgid::CREATE_GROUP
            | msgid::ADD_GROUP
            | msgid::GROUP_CHAT
    )
}

/// `2026-11-21T05:10:24.123Z` → `2026-11-21 05:10:24` (the original's format, in UTC).
pub fn legacy_time(rfc3339: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => rfc3339.to_owned(),
    }
}

/// A clusterchat chat object (push, `offlinemsg` or history element) in the original shape;
/// `None` when it is not a chat.
pub fn chat(v: &Value) -> Option<Value> {
    let id = v.get("msgid")?.as_i64()?;
    let mut m = Map::with_capacity(6);
    m.insert("msgid".into(), id.into());
    m.insert("id".into(), v.get("id")?.clone());
    m.insert("name".into(), v.get("name")?.clone());
    match id {
        msgid::ONE_CHAT => m.insert("toid".into(), v.get("toid")?.clone()),
        msgid::GROUP_CHAT => m.insert("groupid".into(), v.get("groupid")?.clone()),
        _ => return None,
    };
    m.insert("msg".into(), v.get("msg")?.clone());
    let time = v.get("time")?.as_str()?;
    m.insert("time".into(), legacy_time(time).into());
    Some(Value::Object(m))
}

/// A JSON value as the string the original nests in arrays.
fn string_of(v: &Value) -> Value {
    Value::String(v.to_string())
}

/// Keeps the named fields of an object (absent ones stay absent).
fn pick(v: &Value, keys: &[&str]) -> Value {
    let mut m = Map::with_capacity(keys.len());
    for k in keys {
        if let Some(x) = v.get(*k) {
            m.insert((*k).into(), x.clone());
        }
    }
    Value::Object(m)
}

/// A user object as the original's string: `{"id","name","state"}`.
pub fn user_string(v: &Value) -> Value {
    string_of(&pick(v, &["id", "name", "state"]))
}

/// A group object as the original's string, its members strings too.
pub fn group_string(v: &Value) -> Value {
    let users: Vec<Value> = v
        .get("users")
        .and_then(Value::as_array)
        .map(|members| {
            members
                .iter()
                .map(|u| string_of(&pick(u, &["id", "name", "state", "role"])))
                .collect()
        })
        .unwrap_or_default();
    let mut g = pick(v, &["id", "groupname", "groupdesc"]);
    g["users"] = Value::Array(users);
    string_of(&g)
}

/// The original login reply for a successful login payload, and how many chats of the
/// payload's `offlinemsg` it holds: the others did not fit and follow as pushes, in order.
///
/// `offlinemsg` takes the oldest unread chats while the reply stays within [`CLIENT_BUFFER`]
/// bytes; `friends` and `groups` always go in whole (the original has nowhere else for them).
pub fn login_reply(payload: &Payload) -> (Value, usize) {
    let mut reply = json!({"msgid": msgid::LOGIN_ACK, "errno": 0});
    reply["id"] = payload.get("id").unwrap_or(Value::Null);
    reply["name"] = payload.get("name").unwrap_or(Value::Null);
    let list = |key: &str| payload.list(key);
    let friends: Vec<Value> = list("friends").iter().map(user_string).collect();
    if !friends.is_empty() {
        reply["friends"] = Value::Array(friends);
    }
    let groups: Vec<Value> = list("groups").iter().map(group_string).collect();
    if !groups.is_empty() {
        reply["groups"] = Value::Array(groups);
    }
    // `,"offlinemsg":[` and `]`, then each element and its comma.
    let mut size = reply.to_string().len() + ",\"offlinemsg\":[]".len();
    let mut inline = Vec::new();
    for c in list("offlinemsg").iter() {
        let element = string_of(&chat(c).unwrap_or_default());
        let grown = size + element.to_string().len() + usize::from(!inline.is_empty());
        if grown > CLIENT_BUFFER {
            break;
        }
        size = grown;
        inline.push(element);
    }
    let count = inline.len();
    if count > 0 {
        reply["offlinemsg"] = Value::Array(inline);
    }
    (reply, count)
}

/// The original login reply for a failed login.
pub fn login_error(e: &ServiceError) -> Value {
    let errmsg = match e {
        ServiceError::WrongCredentials => WRONG_CREDENTIALS.to_owned(),
        other => other.to_string(),
    };
    json!({"msgid": msgid::LOGIN_ACK, "errno": e.errno(), "errmsg": errmsg})
}

/// The original registration reply: errno 1 when the name is taken, as the original; other
/// failures keep clusterchat's errno (the original client only tests for non-zero).
pub fn reg_reply(outcome: &Result<Payload, ServiceError>) -> Value {
    match outcome {
        Ok(p) => json!({
            "msgid": msgid::REG_ACK,
            "errno": 0,
            "id": p.get("id").unwrap_or(Value::Null),
        }),
        Err(e) => reg_error(e),
    }
}

fn reg_error(e: &ServiceError) -> Value {
    let errno = match e {
        ServiceError::NameTaken(_) => 1,
        other => other.errno(),
    };
    json!({"msgid": msgid::REG_ACK, "errno": errno, "errmsg": e.to_string()})
}

/// The error reply of a request of msgid `id`, when the original has one (login, register).
pub fn error_reply(id: i64, e: &ServiceError) -> Option<Value> {
    match id {
        msgid::LOGIN => Some(login_error(e)),
        msgid::REG => Some(reg_error(e)),
        _ => None,
    }
}

/// Best effort: the integer `msgid` of text that is not valid JSON, so that a broken login or
/// registration still gets the reply the original client waits for.
pub fn sniff_msgid(text: &str) -> Option<i64> {
    let at = text.find("\"msgid\"")? + "\"msgid\"".len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Serializes one object as it goes on the wire: its JSON, then one NUL byte.
pub fn frame(v: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(0);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &Value) -> Value {
        serde_json::from_str(s.as_str().expect("a string element")).expect("holds JSON")
    }

    fn payload(v: Value) -> Payload {
        match v {
            Value::Object(m) => Payload::from_object(m),
            _ => unreachable!(),
        }
    }

    #[test]
    fn times_lose_their_milliseconds_and_zone_marker() {
        assert_eq!(
            legacy_time("2026-11-21T05:10:24.123Z"),
            "2026-11-21 05:10:24"
        );
        assert_eq!(
            legacy_time("2026-11-21T07:10:24.999+02:00"),
            "2026-11-21 05:10:24"
        );
        assert_eq!(legacy_time("garbage"), "garbage");
    }

    #[test]
    fn chats_keep_exactly_the_original_fields() {
        let push = json!({"msgid":6,"message_id":9,"seq":3,"id":1,"name":"ann","toid":2,
                          "msg":"hi","time":"2026-11-21T05:10:24.123Z"});
        assert_eq!(
            chat(&push),
            Some(json!({"msgid":6,"id":1,"name":"ann","toid":2,"msg":"hi",
                        "time":"2026-11-21 05:10:24"}))
        );
        let group = json!({"msgid":10,"message_id":9,"seq":3,"id":1,"name":"ann","groupid":5,
                           "msg":"hi","time":"2026-11-21T05:10:24.123Z"});
        assert_eq!(chat(&group).expect("a chat")["groupid"], 5);
        assert_eq!(chat(&json!({"msgid":19,"id":1,"state":"online"})), None);
        assert_eq!(chat(&json!({"msgid":6,"id":1})), None);
    }

    #[test]
    fn login_reply_nests_json_strings_and_omits_empty_lists() {
        let p = payload(json!({
            "id": 1, "name": "ann", "node": "n1",
            "friends": [{"id":2,"name":"bob","state":"online"}],
            "groups": [{"id":7,"groupname":"g","groupdesc":"d",
                        "users":[{"id":1,"name":"ann","state":"online","role":"creator"}]}],
            "offlinemsg": []
        }));
        let (reply, inline) = login_reply(&p);
        assert_eq!(inline, 0);
        assert_eq!(reply["msgid"], 2);
        assert_eq!(reply["errno"], 0);
        assert!(reply.get("node").is_none() && reply.get("offlinemsg").is_none());
        assert_eq!(
            parse(&reply["friends"][0]),
            json!({"id":2,"name":"bob","state":"online"})
        );
        let g = parse(&reply["groups"][0]);
        assert_eq!(
            (g["id"].as_i64(), g["groupname"].as_str()),
            (Some(7), Some("g"))
        );
        assert_eq!(parse(&g["users"][0])["role"], "creator");

        let bare = login_reply(&payload(
            json!({"id":1,"name":"ann","friends":[],"groups":[],"offlinemsg":[]}),
        ))
        .0;
        assert_eq!(bare, json!({"msgid":2,"errno":0,"id":1,"name":"ann"}));
    }

    #[test]
    fn offline_messages_past_the_client_buffer_follow_as_pushes_in_order() {
        let chats: Vec<Value> = (0..40)
            .map(|i| {
                json!({"msgid":6,"message_id":i,"seq":i,"id":2,"name":"bob","toid":1,
                       "msg": format!("message {i} {}", "x".repeat(40)),
                       "time":"2026-11-21T05:10:24.123Z"})
            })
            .collect();
        let p = payload(
            json!({"id":1,"name":"ann","friends":[],"groups":[],"offlinemsg":chats.clone()}),
        );
        let (reply, inline) = login_reply(&p);
        let text = reply.to_string();
        assert!(text.len() <= CLIENT_BUFFER, "{} bytes", text.len());
        assert_eq!(
            reply["offlinemsg"].as_array().expect("some fit").len(),
            inline
        );
        assert!(inline > 0 && inline < 40);
        for (i, element) in reply["offlinemsg"]
            .as_array()
            .expect("array")
            .iter()
            .enumerate()
        {
            let c = parse(element);
            assert!(
                c["msg"]
                    .as_str()
                    .expect("msg")
                    .starts_with(&format!("message {i} "))
            );
            assert_eq!(c["time"], "2026-11-21 05:10:24");
        }
        // The size estimate is exact: the next element would not have fitted.
        let next = string_of(&chat(&chats[inline]).expect("a chat"));
        assert!(text.len() + 1 + next.to_string().len() > CLIENT_BUFFER);
    }

    #[test]
    fn errors_take_the_original_shapes() {
        assert_eq!(
            login_error(&ServiceError::WrongCredentials),
            json!({"msgid":2,"errno":1,"errmsg":"id or password is invalid!"})
        );
        assert_eq!(
            reg_reply(&Err(ServiceError::NameTaken("that name")))["errno"],
            1
        );
        assert_eq!(
            reg_reply(&Err(ServiceError::BadRequest("name is empty".into())))["errno"],
            400
        );
        assert_eq!(
            reg_reply(&Ok(payload(json!({"id": 5})))),
            json!({"msgid":5,"errno":0,"id":5})
        );
        assert_eq!(
            error_reply(4, &ServiceError::NameTaken("x")).expect("reg")["errno"],
            1
        );
        assert_eq!(
            error_reply(4, &ServiceError::TooLarge(10)).expect("reg")["errno"],
            413
        );
        assert_eq!(
            error_reply(1, &ServiceError::RateLimited("x".into())).expect("login")["errno"],
            429
        );
        assert!(error_reply(6, &ServiceError::NotLoggedIn).is_none());
    }

    #[test]
    fn msgids_are_sniffed_from_broken_json() {
        assert_eq!(sniff_msgid(r#"{"msgid" : 1, "id": }"#), Some(1));
        assert_eq!(sniff_msgid(r#"{"msgid":4,"name":"a\q"}"#), Some(4));
        assert_eq!(sniff_msgid(r#"{"id":4}"#), None);
        assert_eq!(sniff_msgid(r#"{"msgid":"4"}"#), None);
    }

    #[test]
    fn frames_end_with_one_nul() {
        let f = frame(&json!({"msgid":5,"errno":0,"id":1}));
        assert_eq!(f.last(), Some(&0));
        assert_eq!(f.iter().filter(|&&b| b == 0).count(), 1);
        // A NUL inside a text is escaped by JSON, never raw.
        let f = frame(&json!({"msg":"a\u{0}b"}));
        assert_eq!(f.iter().filter(|&&b| b == 0).count(), 1);
    }

    #[test]
    fn only_the_original_requests_are_served() {
        for id in [1, 3, 4, 6, 7, 8, 9, 10] {
            assert!(is_original_request(id));
        }
        for id in [0, 2, 5, 11, 12, 14, 17, 18, 19, 21, 99] {
            assert!(!is_original_request(id));
        }
    }
}
