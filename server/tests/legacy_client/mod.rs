//! A client of the legacy TCP port, written from `docs/legacy.md` ("What a client of this port
//! must do"), reproducing the course's C++ `ChatClient`:
//! - requests are built as it builds them (`js.dump()` of the same fields, including the `id`,
//!   `name` and `time` it adds) and sent with one NUL byte after each;
//! - the stream is split at NUL bytes, and each piece must be exactly one JSON object;
//! - replies are parsed as it parses them: `get<int>()` on ids (an integer that fits an `int`,
//!   else it would throw or misread), strings where it assigns to `std::string`, and every
//!   element of `friends`, `groups`, a group's `users` and `offlinemsg` parsed again as JSON
//!   text. Where the C++ client would throw, this client panics, naming the field.
//!
//! It also records the size of every object received, so that tests can check what the
//! original's 1,024-byte `recv` buffer would hold.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Liveness bound for a reply that must come (never a performance assertion).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The original client's receive buffer: an object and its NUL must fit in it.
pub const ORIGINAL_BUFFER: usize = 1024;

/// A user as the original client keeps it (`User`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub state: String,
}

/// A group member as the original client keeps it (`GroupUser`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: i64,
    pub name: String,
    pub state: String,
    pub role: String,
}

/// A group as the original client keeps it (`Group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: i64,
    pub name: String,
    pub desc: String,
    pub users: Vec<Member>,
}

/// A chat line as the original client prints it: 1:1 (`toid`) or group (`groupid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    pub msgid: i64,
    pub id: i64,
    pub name: String,
    pub toid: Option<i64>,
    pub groupid: Option<i64>,
    pub msg: String,
    pub time: String,
}

/// The login reply as `doLoginResponse` reads it.
#[derive(Debug, Clone)]
pub struct Login {
    pub errno: i64,
    pub errmsg: Option<String>,
    pub id: i64,
    pub name: String,
    pub friends: Vec<User>,
    pub groups: Vec<Group>,
    pub offline: Vec<Chat>,
    /// The object as received.
    pub raw: Value,
}

/// One connection to the legacy port.
pub struct LegacyClient {
    stream: TcpStream,
    /// Bytes read and not yet split at a NUL.
    unread: Vec<u8>,
    /// Objects read but not yet taken, in arrival order.
    pending: VecDeque<Value>,
    /// Size of every object received, its NUL included.
    pub sizes: Vec<usize>,
    /// The logged-in user (what the original keeps in `g_currentUser`).
    pub id: i64,
    pub name: String,
}

impl LegacyClient {
    /// Connects to `127.0.0.1:port`.
    pub async fn connect(port: u16) -> LegacyClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the legacy port {port}: {e}"));
        LegacyClient {
            stream,
            unread: Vec::new(),
            pending: VecDeque::new(),
            sizes: Vec::new(),
            id: 0,
            name: String::new(),
        }
    }

    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to the legacy port");
    }

    /// Writes bytes, returning the error (the server may close the connection meanwhile).
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends a request as the original does: its JSON, then one NUL byte.
    pub async fn send(&mut self, request: &Value) {
        let mut bytes = request.to_string().into_bytes();
        bytes.push(0);
        self.send_raw(&bytes).await;
    }

    /// REG_MSG; returns the raw REG_MSG_ACK.
    pub async fn register(&mut self, name: &str, password: &str) -> Value {
        self.send(&json!({"msgid": 4, "name": name, "password": password}))
            .await;
        let reply = self.next_of(5).await;
        int_of(&reply, "errno");
        reply
    }

    /// REG_MSG that must succeed; returns the new id.
    pub async fn register_ok(&mut self, name: &str, password: &str) -> i64 {
        let reply = self.register(name, password).await;
        assert_eq!(reply["errno"], 0, "registering {name:?} succeeds: {reply}");
        int_of(&reply, "id")
    }

    /// LOGIN_MSG by id, as the original (`{"id","msgid","password"}`); the parsed reply.
    pub async fn login(&mut self, id: i64, password: &str) -> Login {
        self.send(&json!({"msgid": 1, "id": id, "password": password}))
            .await;
        let login = parse_login(self.next_of(2).await);
        if login.errno == 0 {
            self.id = login.id;
            self.name = login.name.clone();
        }
        login
    }

    /// LOGIN_MSG that must succeed.
    pub async fn login_ok(&mut self, id: i64, password: &str) -> Login {
        let login = self.login(id, password).await;
        assert_eq!(
            login.errno, 0,
            "logging in as {id} succeeds: {:?}",
            login.raw
        );
        login
    }

    /// Waits until everything sent before was handled: sends a request that has a reply (a
    /// registration with an empty name, refused at once) and waits for that reply.
    pub async fn barrier(&mut self) {
        self.send(&json!({"msgid": 4, "name": "", "password": "x"}))
            .await;
        let reply = self.next_of(5).await;
        assert_eq!(reply["errno"], 400, "the barrier's refusal: {reply}");
    }

    /// ONE_CHAT_MSG as the original builds it (its own id, name and local time included).
    pub async fn chat(&mut self, toid: i64, msg: &str) {
        let request = json!({"msgid": 6, "id": self.id, "name": self.name, "toid": toid,
                             "msg": msg, "time": local_time()});
        self.send(&request).await;
    }

    /// GROUP_CHAT_MSG as the original builds it.
    pub async fn group_chat(&mut self, groupid: i64, msg: &str) {
        let request = json!({"msgid": 10, "id": self.id, "name": self.name, "groupid": groupid,
                             "msg": msg, "time": local_time()});
        self.send(&request).await;
    }

    /// ADD_FRIEND_MSG (no reply).
    pub async fn add_friend(&mut self, friendid: i64) {
        let request = json!({"msgid": 7, "id": self.id, "friendid": friendid});
        self.send(&request).await;
    }

    /// CREATE_GROUP_MSG (no reply).
    pub async fn create_group(&mut self, groupname: &str, groupdesc: &str) {
        let request = json!({"msgid": 8, "id": self.id, "groupname": groupname,
                             "groupdesc": groupdesc});
        self.send(&request).await;
    }

    /// ADD_GROUP_MSG (no reply).
    pub async fn add_group(&mut self, groupid: i64) {
        let request = json!({"msgid": 9, "id": self.id, "groupid": groupid});
        self.send(&request).await;
    }

    /// LOGINOUT_MSG (no reply).
    pub async fn logout(&mut self) {
        let request = json!({"msgid": 3, "id": self.id});
        self.send(&request).await;
    }

    /// The next object, buffered or new.
    pub async fn next_object(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        self.read_object().await
    }

    /// The next object of `msgid`; others are kept, in order, for later.
    pub async fn next_of(&mut self, msgid: i64) -> Value {
        if let Some(at) = self.pending.iter().position(|v| v["msgid"] == msgid) {
            return self.pending.remove(at).expect("in range");
        }
        loop {
            let v = self.read_object().await;
            if v["msgid"] == msgid {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// The next object, which must be a chat (6 or 10), parsed as the original prints it.
    pub async fn next_chat(&mut self) -> Chat {
        let v = self.next_object().await;
        parse_chat(&v)
    }

    /// Reads until the server closes the connection; objects read meanwhile are kept.
    pub async fn wait_closed(&mut self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .expect("the server closes the connection within the timeout");
            match n {
                Ok(0) | Err(_) => return,
                Ok(n) => self.unread.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads one NUL-terminated object from the socket.
    async fn read_object(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(end) = self.unread.iter().position(|&b| b == 0) {
                let piece: Vec<u8> = self.unread.drain(..=end).collect();
                let object = &piece[..piece.len() - 1];
                self.sizes.push(piece.len());
                return one_object(object);
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out waiting for an object; pending: {:?}; unread: {:?}",
                        self.pending,
                        String::from_utf8_lossy(&self.unread)
                    )
                })
                .expect("read from the legacy port");
            assert!(n > 0, "the server closed the connection");
            self.unread.extend_from_slice(&buf[..n]);
        }
    }
}

/// A piece between NUL bytes: exactly one JSON object, nothing before or after it.
fn one_object(bytes: &[u8]) -> Value {
    let text = std::str::from_utf8(bytes).expect("objects are UTF-8");
    assert!(
        text.starts_with('{') && text.ends_with('}'),
        "one object and nothing else between NUL bytes: {text:?}"
    );
    let value: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {text:?}"));
    assert!(value.is_object(), "{text}");
    value
}

/// `get<int>()`: an integer that fits the original's `int`.
pub fn int_of(v: &Value, key: &str) -> i64 {
    let n = v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("`{key}` is not an integer (get<int> would throw): {v}"));
    assert!(i32::try_from(n).is_ok(), "`{key}` does not fit an int: {v}");
    n
}

/// Assigning to `std::string`: a JSON string.
pub fn str_of(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string (the client would throw): {v}"))
        .to_owned()
}

/// `vector<string> vec = js[key]`, each element then given to `json::parse`.
fn nested(v: &Value, key: &str) -> Vec<Value> {
    let list = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is not an array: {v}"));
    list.iter()
        .map(|element| {
            let text = element
                .as_str()
                .unwrap_or_else(|| panic!("an element of `{key}` is not a string: {element}"));
            let parsed: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("an element of `{key}` is not JSON text ({e}): {text}"));
            assert!(parsed.is_object(), "{key} element: {text}");
            parsed
        })
        .collect()
}

/// `doLoginResponse`.
pub fn parse_login(raw: Value) -> Login {
    let errno = int_of(&raw, "errno");
    if errno != 0 {
        return Login {
            errno,
            errmsg: raw["errmsg"].as_str().map(str::to_owned),
            id: 0,
            name: String::new(),
            friends: Vec::new(),
            groups: Vec::new(),
            offline: Vec::new(),
            raw,
        };
    }
    let friends = if raw.get("friends").is_some() {
        nested(&raw, "friends")
            .iter()
            .map(|u| User {
                id: int_of(u, "id"),
                name: str_of(u, "name"),
                state: str_of(u, "state"),
            })
            .collect()
    } else {
        Vec::new()
    };
    let groups = if raw.get("groups").is_some() {
        nested(&raw, "groups")
            .iter()
            .map(|g| Group {
                id: int_of(g, "id"),
                name: str_of(g, "groupname"),
                desc: str_of(g, "groupdesc"),
                users: nested(g, "users")
                    .iter()
                    .map(|u| Member {
                        id: int_of(u, "id"),
                        name: str_of(u, "name"),
                        state: str_of(u, "state"),
                        role: str_of(u, "role"),
                    })
                    .collect(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let offline = if raw.get("offlinemsg").is_some() {
        nested(&raw, "offlinemsg").iter().map(parse_chat).collect()
    } else {
        Vec::new()
    };
    Login {
        errno,
        errmsg: None,
        id: int_of(&raw, "id"),
        name: str_of(&raw, "name"),
        friends,
        groups,
        offline,
        raw,
    }
}

/// A chat as `readTaskHandler` (or the `offlinemsg` loop) prints it.
pub fn parse_chat(v: &Value) -> Chat {
    let msgid = int_of(v, "msgid");
    assert!(msgid == 6 || msgid == 10, "a chat has msgid 6 or 10: {v}");
    let time = str_of(v, "time");
    assert!(is_original_time(&time), "time is YYYY-MM-DD hh:mm:ss: {v}");
    Chat {
        msgid,
        id: int_of(v, "id"),
        name: str_of(v, "name"),
        toid: (msgid == 6).then(|| int_of(v, "toid")),
        groupid: (msgid == 10).then(|| int_of(v, "groupid")),
        msg: str_of(v, "msg"),
        time,
    }
}

/// `2026-11-21 05:10:24`.
pub fn is_original_time(time: &str) -> bool {
    let pattern = b"dddd-dd-dd dd:dd:dd";
    time.len() == pattern.len()
        && time.bytes().zip(pattern).all(|(c, &p)| match p {
            b'd' => c.is_ascii_digit(),
            _ => c == p,
        })
}

/// The client's `getCurrentTime()` (its own clock; the server ignores it).
fn local_time() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string()
}
