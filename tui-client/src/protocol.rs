//! The client side of the msgid JSON protocol (`shared/DESIGN.md`, section 4): typed requests
//! that serialize to the exact frames the server expects, and the server's replies and pushes
//! parsed into typed messages. Pure: no I/O here.

use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// LOGIN_MSG: log in by `id` or `name` with a password.
pub const LOGIN_MSG: i64 = 1;
/// LOGIN_MSG_ACK: the reply to LOGIN_MSG.
pub const LOGIN_MSG_ACK: i64 = 2;
/// LOGINOUT_MSG: log this connection out.
pub const LOGINOUT_MSG: i64 = 3;
/// REG_MSG: register a new user.
pub const REG_MSG: i64 = 4;
/// REG_MSG_ACK: the reply to REG_MSG.
pub const REG_MSG_ACK: i64 = 5;
/// ONE_CHAT_MSG: a 1:1 message (client request and server push).
pub const ONE_CHAT_MSG: i64 = 6;
/// ADD_FRIEND_MSG: befriend a user.
pub const ADD_FRIEND_MSG: i64 = 7;
/// CREATE_GROUP_MSG: create a group.
pub const CREATE_GROUP_MSG: i64 = 8;
/// ADD_GROUP_MSG: join a group.
pub const ADD_GROUP_MSG: i64 = 9;
/// GROUP_CHAT_MSG: a group message (client request and server push).
pub const GROUP_CHAT_MSG: i64 = 10;
/// ACK_MSG: the reply to every request but LOGIN_MSG and REG_MSG.
pub const ACK_MSG: i64 = 11;
/// DEL_FRIEND_MSG: end a friendship.
pub const DEL_FRIEND_MSG: i64 = 12;
/// QUIT_GROUP_MSG: leave a group.
pub const QUIT_GROUP_MSG: i64 = 13;
/// FRIEND_LIST_MSG: list friends with their online state.
pub const FRIEND_LIST_MSG: i64 = 14;
/// GROUP_LIST_MSG: list the groups one belongs to.
pub const GROUP_LIST_MSG: i64 = 15;
/// GROUP_MEMBERS_MSG: list a group's members.
pub const GROUP_MEMBERS_MSG: i64 = 16;
/// HISTORY_MSG: page through a conversation's stored messages.
pub const HISTORY_MSG: i64 = 17;
/// READ_MSG: move one's read cursor in a conversation.
pub const READ_MSG: i64 = 18;
/// PRESENCE_MSG: a friend or co-member went online or offline (push).
pub const PRESENCE_MSG: i64 = 19;
/// ERROR_MSG: a frame the server could not take as a request.
pub const ERROR_MSG: i64 = 20;
/// RESYNC_MSG: pushes may have been missed; catch up every conversation (push).
pub const RESYNC_MSG: i64 = 21;

/// Longest chat text the server accepts, in Unicode code points.
pub const MAX_MSG_CHARS: usize = 4000;
/// Longest user or group name, in Unicode code points.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest group description, in Unicode code points.
pub const MAX_GROUPDESC_CHARS: usize = 200;
/// Largest `limit` a HISTORY_MSG may ask for.
pub const MAX_HISTORY_LIMIT: u32 = 200;

/// One conversation: a 1:1 conversation with another user, or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConvKey {
    /// The 1:1 conversation with this user id (for notes to self: one's own id).
    User(i64),
    /// The conversation of this group id.
    Group(i64),
}

impl fmt::Display for ConvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvKey::User(id) => write!(f, "user {id}"),
            ConvKey::Group(id) => write!(f, "group {id}"),
        }
    }
}

/// How a LOGIN_MSG names the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginBy {
    /// By numeric user id (the original client's way).
    Id(i64),
    /// By user name.
    Name(String),
}

impl LoginBy {
    /// Reads what a person typed: all digits is an id, anything else a name.
    pub fn parse(text: &str) -> LoginBy {
        let text = text.trim();
        match text.parse::<i64>() {
            Ok(id) if !text.starts_with('+') && !text.starts_with('-') => LoginBy::Id(id),
            _ => LoginBy::Name(text.to_owned()),
        }
    }
}

impl fmt::Display for LoginBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginBy::Id(id) => write!(f, "#{id}"),
            LoginBy::Name(name) => f.write_str(name),
        }
    }
}

/// A password, kept out of `Debug` output so that it never reaches a log file.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Which page of a conversation a HISTORY_MSG asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryBound {
    /// The newest messages with a seq below this one (paging back).
    Before(i64),
    /// The oldest messages with a seq above this one (catching up).
    After(i64),
}

/// Every request a client can send, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// LOGIN_MSG (1).
    Login {
        /// The user, by id or name.
        who: LoginBy,
        /// The password.
        password: Password,
    },
    /// REG_MSG (4).
    Register {
        /// The wanted user name.
        name: String,
        /// The password.
        password: Password,
    },
    /// LOGINOUT_MSG (3).
    Logout,
    /// ONE_CHAT_MSG (6).
    OneChat {
        /// The recipient's user id.
        toid: i64,
        /// The text.
        msg: String,
        /// Idempotency key, so that a resend after a reconnect stores nothing twice.
        txnid: Option<String>,
    },
    /// ADD_FRIEND_MSG (7).
    AddFriend {
        /// The user to befriend.
        friendid: i64,
    },
    /// CREATE_GROUP_MSG (8).
    CreateGroup {
        /// The new group's name.
        groupname: String,
        /// Its description (may be empty).
        groupdesc: String,
    },
    /// ADD_GROUP_MSG (9).
    AddGroup {
        /// The group to join.
        groupid: i64,
    },
    /// GROUP_CHAT_MSG (10).
    GroupChat {
        /// The group.
        groupid: i64,
        /// The text.
        msg: String,
        /// Idempotency key, as for [`Request::OneChat`].
        txnid: Option<String>,
    },
    /// DEL_FRIEND_MSG (12).
    DelFriend {
        /// The friend to drop.
        friendid: i64,
    },
    /// QUIT_GROUP_MSG (13).
    QuitGroup {
        /// The group to leave.
        groupid: i64,
    },
    /// FRIEND_LIST_MSG (14).
    FriendList,
    /// GROUP_LIST_MSG (15).
    GroupList,
    /// GROUP_MEMBERS_MSG (16).
    GroupMembers {
        /// The group.
        groupid: i64,
    },
    /// HISTORY_MSG (17).
    History {
        /// The conversation.
        conv: ConvKey,
        /// Which page; `None` is the newest page.
        bound: Option<HistoryBound>,
        /// Page size; `None` lets the server choose (50).
        limit: Option<u32>,
    },
    /// READ_MSG (18).
    Read {
        /// The conversation.
        conv: ConvKey,
        /// Everything up to this seq has been read.
        seq: i64,
    },
}

impl Request {
    /// The request's msgid.
    pub fn msgid(&self) -> i64 {
        match self {
            Request::Login { .. } => LOGIN_MSG,
            Request::Register { .. } => REG_MSG,
            Request::Logout => LOGINOUT_MSG,
            Request::OneChat { .. } => ONE_CHAT_MSG,
            Request::AddFriend { .. } => ADD_FRIEND_MSG,
            Request::CreateGroup { .. } => CREATE_GROUP_MSG,
            Request::AddGroup { .. } => ADD_GROUP_MSG,
            Request::GroupChat { .. } => GROUP_CHAT_MSG,
            Request::DelFriend { .. } => DEL_FRIEND_MSG,
            Request::QuitGroup { .. } => QUIT_GROUP_MSG,
            Request::FriendList => FRIEND_LIST_MSG,
            Request::GroupList => GROUP_LIST_MSG,
            Request::GroupMembers { .. } => GROUP_MEMBERS_MSG,
            Request::History { .. } => HISTORY_MSG,
            Request::Read { .. } => READ_MSG,
        }
    }

    /// The JSON object of this request, with `reqid` when one is given.
    pub fn to_json(&self, reqid: Option<i64>) -> Value {
        let mut body = match self {
            Request::Login { who, password } => match who {
                LoginBy::Id(id) => json!({"id": id, "password": password.0}),
                LoginBy::Name(name) => json!({"name": name, "password": password.0}),
            },
            Request::Register { name, password } => {
                json!({"name": name, "password": password.0})
            }
            Request::Logout | Request::FriendList | Request::GroupList => json!({}),
            Request::OneChat { toid, msg, txnid } => {
                let mut v = json!({"toid": toid, "msg": msg});
                if let Some(t) = txnid {
                    v["txnid"] = json!(t);
                }
                v
            }
            Request::AddFriend { friendid } | Request::DelFriend { friendid } => {
                json!({"friendid": friendid})
            }
            Request::CreateGroup {
                groupname,
                groupdesc,
            } => json!({"groupname": groupname, "groupdesc": groupdesc}),
            Request::AddGroup { groupid }
            | Request::QuitGroup { groupid }
            | Request::GroupMembers { groupid } => json!({"groupid": groupid}),
            Request::GroupChat {
                groupid,
                msg,
                txnid,
            } => {
                let mut v = json!({"groupid": groupid, "msg": msg});
                if let Some(t) = txnid {
                    v["txnid"] = json!(t);
                }
                v
            }
            Request::History { conv, bound, limit } => {
                let mut v = conv_fields(*conv);
                match bound {
                    Some(HistoryBound::Before(s)) => v["before_seq"] = json!(s),
                    Some(HistoryBound::After(s)) => v["after_seq"] = json!(s),
                    None => {}
                }
                if let Some(l) = limit {
                    v["limit"] = json!(l);
                }
                v
            }
            Request::Read { conv, seq } => {
                let mut v = conv_fields(*conv);
                v["seq"] = json!(seq);
                v
            }
        };
        let obj = body
            .as_object_mut()
            .expect("request bodies are JSON objects");
        let mut out = Map::with_capacity(obj.len() + 2);
        out.insert("msgid".into(), json!(self.msgid()));
        if let Some(r) = reqid {
            out.insert("reqid".into(), json!(r));
        }
        out.append(obj);
        Value::Object(out)
    }

    /// The conversation a chat send goes to, if this is one.
    pub fn chat_target(&self) -> Option<ConvKey> {
        match self {
            Request::OneChat { toid, .. } => Some(ConvKey::User(*toid)),
            Request::GroupChat { groupid, .. } => Some(ConvKey::Group(*groupid)),
            _ => None,
        }
    }

    /// The txnid of a chat send, if any.
    pub fn txnid(&self) -> Option<&str> {
        match self {
            Request::OneChat { txnid, .. } | Request::GroupChat { txnid, .. } => txnid.as_deref(),
            _ => None,
        }
    }

    /// Whether sending this request a second time is harmless: reads, READ, and chat sends
    /// that carry a txnid (the server stores them once).
    pub fn is_resendable(&self) -> bool {
        match self {
            Request::OneChat { txnid, .. } | Request::GroupChat { txnid, .. } => txnid.is_some(),
            Request::FriendList
            | Request::GroupList
            | Request::GroupMembers { .. }
            | Request::History { .. }
            | Request::Read { .. } => true,
            _ => false,
        }
    }

    /// Whether the server accepts this request before login.
    pub fn allowed_before_login(&self) -> bool {
        matches!(self, Request::Login { .. } | Request::Register { .. })
    }
}

/// The `toid` or `groupid` field that names a conversation.
fn conv_fields(conv: ConvKey) -> Value {
    match conv {
        ConvKey::User(id) => json!({"toid": id}),
        ConvKey::Group(id) => json!({"groupid": id}),
    }
}

/// A user as the server describes one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    /// User id.
    pub id: i64,
    /// User name.
    pub name: String,
    /// `"online"` or `"offline"`.
    #[serde(default)]
    pub state: String,
}

impl User {
    /// Whether the server says this user is online.
    pub fn online(&self) -> bool {
        self.state == "online"
    }
}

/// A group member: a user and a role.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    /// User id.
    pub id: i64,
    /// User name.
    pub name: String,
    /// `"online"` or `"offline"`.
    #[serde(default)]
    pub state: String,
    /// `"creator"` or `"normal"`.
    #[serde(default)]
    pub role: String,
}

/// A group as the server describes one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Group {
    /// Group id.
    pub id: i64,
    /// Group name.
    pub groupname: String,
    /// Group description.
    #[serde(default)]
    pub groupdesc: String,
    /// Members (may be absent in some replies).
    #[serde(default)]
    pub users: Vec<Member>,
}

/// A stored chat message (pushed live, in `offlinemsg`, or in a HISTORY page).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Chat {
    /// 6 for 1:1, 10 for group.
    pub msgid: i64,
    /// Server-wide message id (the de-duplication key).
    pub message_id: i64,
    /// Position in its conversation, contiguous from 1.
    pub seq: i64,
    /// Sender's user id.
    pub id: i64,
    /// Sender's name.
    #[serde(default)]
    pub name: String,
    /// Recipient of a 1:1 message.
    #[serde(default)]
    pub toid: Option<i64>,
    /// Group of a group message.
    #[serde(default)]
    pub groupid: Option<i64>,
    /// The text.
    pub msg: String,
    /// RFC 3339 UTC time, set by the server.
    #[serde(default)]
    pub time: String,
}

impl Chat {
    /// The conversation this message belongs to, as seen by user `me`.
    pub fn conv_key(&self, me: i64) -> ConvKey {
        if let Some(g) = self.groupid {
            return ConvKey::Group(g);
        }
        let to = self.toid.unwrap_or(me);
        if self.id == me {
            ConvKey::User(to)
        } else {
            ConvKey::User(self.id)
        }
    }
}

/// LOGIN_MSG_ACK (2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LoginAck {
    /// The request's reqid.
    #[serde(default)]
    pub reqid: Option<i64>,
    /// 0 on success.
    #[serde(default)]
    pub errno: i64,
    /// A sentence when errno is not 0.
    #[serde(default)]
    pub errmsg: String,
    /// The logged-in user's id.
    #[serde(default)]
    pub id: i64,
    /// The logged-in user's name.
    #[serde(default)]
    pub name: String,
    /// The replica that serves this connection.
    #[serde(default)]
    pub node: Option<String>,
    /// Friends with their online state.
    #[serde(default)]
    pub friends: Vec<User>,
    /// Groups with their members.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Unread messages.
    #[serde(default)]
    pub offlinemsg: Vec<Chat>,
}

/// REG_MSG_ACK (5).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegAck {
    /// The request's reqid.
    #[serde(default)]
    pub reqid: Option<i64>,
    /// 0 on success, 2 when the name is taken.
    #[serde(default)]
    pub errno: i64,
    /// A sentence when errno is not 0.
    #[serde(default)]
    pub errmsg: String,
    /// The new user's id.
    #[serde(default)]
    pub id: i64,
}

/// ACK_MSG (11), with every payload a request row may name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ack {
    /// The request's reqid.
    #[serde(default)]
    pub reqid: Option<i64>,
    /// The msgid of the request this answers.
    #[serde(default)]
    pub ackof: i64,
    /// 0 on success.
    #[serde(default)]
    pub errno: i64,
    /// A sentence when errno is not 0.
    #[serde(default)]
    pub errmsg: String,
    /// Chat send: the stored message's id.
    #[serde(default)]
    pub message_id: Option<i64>,
    /// Chat send: the stored message's seq.
    #[serde(default)]
    pub seq: Option<i64>,
    /// Chat send: the stored message's time.
    #[serde(default)]
    pub time: Option<String>,
    /// ADD_FRIEND: the new friend.
    #[serde(default)]
    pub friend: Option<User>,
    /// CREATE_GROUP / ADD_GROUP: the group.
    #[serde(default)]
    pub group: Option<Group>,
    /// FRIEND_LIST: the friends.
    #[serde(default)]
    pub friends: Option<Vec<User>>,
    /// GROUP_LIST: the groups.
    #[serde(default)]
    pub groups: Option<Vec<Group>>,
    /// GROUP_MEMBERS: the members.
    #[serde(default)]
    pub users: Option<Vec<Member>>,
    /// HISTORY: the page, in ascending seq.
    #[serde(default)]
    pub messages: Option<Vec<Chat>>,
    /// HISTORY: whether more messages exist beyond this page.
    #[serde(default)]
    pub more: Option<bool>,
}

/// PRESENCE_MSG (19).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Presence {
    /// The user whose state changed.
    pub id: i64,
    /// The user's name, when the server gives it.
    #[serde(default)]
    pub name: Option<String>,
    /// `"online"` or `"offline"`.
    pub state: String,
}

/// ERROR_MSG (20).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorMsg {
    /// The frame's reqid, when it had one.
    #[serde(default)]
    pub reqid: Option<i64>,
    /// The error number.
    #[serde(default)]
    pub errno: i64,
    /// A sentence.
    #[serde(default)]
    pub errmsg: String,
}

/// Anything the server sends, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// LOGIN_MSG_ACK (2).
    LoginAck(LoginAck),
    /// REG_MSG_ACK (5).
    RegAck(RegAck),
    /// ACK_MSG (11).
    Ack(Ack),
    /// A pushed chat message (6 or 10).
    Chat(Chat),
    /// PRESENCE_MSG (19).
    Presence(Presence),
    /// ERROR_MSG (20).
    Error(ErrorMsg),
    /// RESYNC_MSG (21).
    Resync,
}

/// Why a server frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The frame is not JSON.
    #[error("the server sent something that is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The frame has no integer `msgid`.
    #[error("the server sent a message without an integer msgid")]
    NoMsgid,
    /// A known msgid whose fields do not fit.
    #[error("the server sent a malformed message {msgid}: {source}")]
    Malformed {
        /// The msgid of the frame.
        msgid: i64,
        /// What did not fit.
        #[source]
        source: serde_json::Error,
    },
    /// A msgid this client does not know.
    #[error("the server sent an unknown message type {0}")]
    UnknownMsgid(i64),
}

impl ServerMessage {
    /// Parses one text frame from the server.
    pub fn parse(text: &str) -> Result<ServerMessage, ParseError> {
        let value: Value = serde_json::from_str(text).map_err(ParseError::NotJson)?;
        ServerMessage::from_value(value)
    }

    /// Reads an already parsed JSON value.
    pub fn from_value(value: Value) -> Result<ServerMessage, ParseError> {
        let msgid = value
            .get("msgid")
            .and_then(Value::as_i64)
            .ok_or(ParseError::NoMsgid)?;
        let bad = |source| ParseError::Malformed { msgid, source };
        Ok(match msgid {
            LOGIN_MSG_ACK => ServerMessage::LoginAck(serde_json::from_value(value).map_err(bad)?),
            REG_MSG_ACK => ServerMessage::RegAck(serde_json::from_value(value).map_err(bad)?),
            ACK_MSG => ServerMessage::Ack(serde_json::from_value(value).map_err(bad)?),
            ONE_CHAT_MSG | GROUP_CHAT_MSG => {
                ServerMessage::Chat(serde_json::from_value(value).map_err(bad)?)
            }
            PRESENCE_MSG => ServerMessage::Presence(serde_json::from_value(value).map_err(bad)?),
            ERROR_MSG => ServerMessage::Error(serde_json::from_value(value).map_err(bad)?),
            RESYNC_MSG => ServerMessage::Resync,
            other => return Err(ParseError::UnknownMsgid(other)),
        })
    }

    /// The reqid this message answers, if it is a reply to a request that had one.
    pub fn reqid(&self) -> Option<i64> {
        match self {
            ServerMessage::LoginAck(a) => a.reqid,
            ServerMessage::RegAck(a) => a.reqid,
            ServerMessage::Ack(a) => a.reqid,
            ServerMessage::Error(e) => e.reqid,
            ServerMessage::Chat(_) | ServerMessage::Presence(_) | ServerMessage::Resync => None,
        }
    }

    /// The errno and errmsg of a reply (`(0, "")` for pushes).
    pub fn status(&self) -> (i64, &str) {
        match self {
            ServerMessage::LoginAck(a) => (a.errno, &a.errmsg),
            ServerMessage::RegAck(a) => (a.errno, &a.errmsg),
            ServerMessage::Ack(a) => (a.errno, &a.errmsg),
            ServerMessage::Error(e) => (e.errno, &e.errmsg),
            ServerMessage::Chat(_) | ServerMessage::Presence(_) | ServerMessage::Resync => (0, ""),
        }
    }
}

/// A plain-words explanation of an errno, used when the server's errmsg is empty.
pub fn errno_words(errno: i64) -> &'static str {
    match errno {
        0 => "ok",
        1 => "wrong id or password",
        2 => "that name is already taken",
        400 => "the request was malformed",
        401 => "not logged in",
        403 => "not allowed",
        404 => "no such user or group",
        409 => "conflict (already done)",
        413 => "the message is too large",
        429 => "sending too fast; slow down",
        500 => "the server failed internally",
        503 => "the server is temporarily unavailable; try again",
        _ => "unexpected error",
    }
}

/// `errmsg` when the server gave one, else [`errno_words`].
pub fn describe(errno: i64, errmsg: &str) -> String {
    if errmsg.trim().is_empty() {
        errno_words(errno).to_owned()
    } else {
        errmsg.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_by_digits_is_an_id_and_anything_else_a_name() {
        assert_eq!(LoginBy::parse("42"), LoginBy::Id(42));
        assert_eq!(LoginBy::parse(" 42 "), LoginBy::Id(42));
        assert_eq!(LoginBy::parse("alice"), LoginBy::Name("alice".into()));
        assert_eq!(LoginBy::parse("+4"), LoginBy::Name("+4".into()));
        assert_eq!(LoginBy::parse("4a"), LoginBy::Name("4a".into()));
    }

    #[test]
    fn login_by_id_and_by_name_serialize_with_the_right_field() {
        let by_id = Request::Login {
            who: LoginBy::Id(7),
            password: Password("pw".into()),
        };
        assert_eq!(
            by_id.to_json(Some(1)),
            json!({"msgid": 1, "reqid": 1, "id": 7, "password": "pw"})
        );
        let by_name = Request::Login {
            who: LoginBy::Name("bob".into()),
            password: Password("pw".into()),
        };
        assert_eq!(
            by_name.to_json(None),
            json!({"msgid": 1, "name": "bob", "password": "pw"})
        );
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let r = Request::Login {
            who: LoginBy::Id(7),
            password: Password("hunter2".into()),
        };
        assert!(!format!("{r:?}").contains("hunter2"));
    }

    #[test]
    fn history_and_read_name_their_conversation_and_bounds() {
        let h = Request::History {
            conv: ConvKey::Group(3),
            bound: Some(HistoryBound::Before(10)),
            limit: Some(50),
        };
        assert_eq!(
            h.to_json(Some(9)),
            json!({"msgid": 17, "reqid": 9, "groupid": 3, "before_seq": 10, "limit": 50})
        );
        let h = Request::History {
            conv: ConvKey::User(4),
            bound: Some(HistoryBound::After(2)),
            limit: None,
        };
        assert_eq!(
            h.to_json(None),
            json!({"msgid": 17, "toid": 4, "after_seq": 2})
        );
        let r = Request::Read {
            conv: ConvKey::User(4),
            seq: 12,
        };
        assert_eq!(
            r.to_json(Some(2)),
            json!({"msgid": 18, "reqid": 2, "toid": 4, "seq": 12})
        );
    }

    #[test]
    fn chat_sends_carry_their_txnid_only_when_set() {
        let c = Request::OneChat {
            toid: 2,
            msg: "hi".into(),
            txnid: Some("t1".into()),
        };
        assert_eq!(
            c.to_json(Some(5)),
            json!({"msgid": 6, "reqid": 5, "toid": 2, "msg": "hi", "txnid": "t1"})
        );
        let g = Request::GroupChat {
            groupid: 2,
            msg: "hi".into(),
            txnid: None,
        };
        assert_eq!(
            g.to_json(None),
            json!({"msgid": 10, "groupid": 2, "msg": "hi"})
        );
        assert!(c.is_resendable());
        assert!(!g.is_resendable());
    }

    #[test]
    fn a_login_reply_is_parsed_with_friends_groups_and_offline_messages() {
        let text = r#"{"msgid":2,"reqid":1,"errno":0,"errmsg":"","id":1,"name":"alice","node":"n1",
            "friends":[{"id":2,"name":"bob","state":"online"}],
            "groups":[{"id":5,"groupname":"g","groupdesc":"d","users":[{"id":1,"name":"alice","state":"online","role":"creator"}]}],
            "offlinemsg":[{"msgid":6,"message_id":9,"seq":1,"id":2,"name":"bob","toid":1,"msg":"yo","time":"2026-11-21T05:10:24.123Z"}]}"#;
        let ServerMessage::LoginAck(ack) = ServerMessage::parse(text).unwrap() else {
            panic!("not a login ack");
        };
        assert_eq!(ack.reqid, Some(1));
        assert_eq!(ack.node.as_deref(), Some("n1"));
        assert!(ack.friends[0].online());
        assert_eq!(ack.groups[0].users[0].role, "creator");
        assert_eq!(ack.offlinemsg[0].conv_key(1), ConvKey::User(2));
    }

    #[test]
    fn acks_pushes_errors_and_resync_are_recognised() {
        let ack = ServerMessage::parse(
            r#"{"msgid":11,"ackof":6,"reqid":3,"errno":0,"errmsg":"","message_id":4,"seq":2,"time":"t"}"#,
        )
        .unwrap();
        assert_eq!(ack.reqid(), Some(3));
        let ServerMessage::Ack(a) = ack else { panic!() };
        assert_eq!((a.ackof, a.message_id, a.seq), (6, Some(4), Some(2)));

        let push = ServerMessage::parse(
            r#"{"msgid":10,"message_id":4,"seq":2,"id":3,"name":"c","groupid":8,"msg":"m","time":"t"}"#,
        )
        .unwrap();
        let ServerMessage::Chat(c) = push else {
            panic!()
        };
        assert_eq!(c.conv_key(1), ConvKey::Group(8));

        let p =
            ServerMessage::parse(r#"{"msgid":19,"id":2,"name":"bob","state":"offline"}"#).unwrap();
        assert!(matches!(p, ServerMessage::Presence(ref p) if p.state == "offline"));

        let e = ServerMessage::parse(r#"{"msgid":20,"errno":413,"errmsg":"too large"}"#).unwrap();
        assert_eq!(e.status(), (413, "too large"));
        assert_eq!(e.reqid(), None);

        assert_eq!(
            ServerMessage::parse(r#"{"msgid":21}"#).unwrap(),
            ServerMessage::Resync
        );
        assert!(matches!(
            ServerMessage::parse(r#"{"msgid":99}"#),
            Err(ParseError::UnknownMsgid(99))
        ));
        assert!(matches!(
            ServerMessage::parse("[1]"),
            Err(ParseError::NoMsgid)
        ));
        assert!(matches!(
            ServerMessage::parse("{"),
            Err(ParseError::NotJson(_))
        ));
    }

    #[test]
    fn my_own_one_to_one_message_belongs_to_the_recipients_conversation() {
        let c = Chat {
            msgid: 6,
            message_id: 1,
            seq: 1,
            id: 1,
            name: "me".into(),
            toid: Some(2),
            groupid: None,
            msg: "x".into(),
            time: String::new(),
        };
        assert_eq!(c.conv_key(1), ConvKey::User(2));
        assert_eq!(c.conv_key(2), ConvKey::User(1));
    }
}
