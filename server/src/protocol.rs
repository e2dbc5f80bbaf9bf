//! The wire protocol of `DESIGN.md` section 4: message ids, request parsing and validation, and
//! the shapes of replies and pushes. Pure: no I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::ServiceError;
use crate::store::entities::message;

/// Message ids (`msgid`) of the protocol.
pub mod msgid {
    /// Client: log in by id or name.
    pub const LOGIN: i64 = 1;
    /// Server: reply to LOGIN.
    pub const LOGIN_ACK: i64 = 2;
    /// Client: log this connection out.
    pub const LOGOUT: i64 = 3;
    /// Client: register an account.
    pub const REG: i64 = 4;
    /// Server: reply to REG.
    pub const REG_ACK: i64 = 5;
    /// Client: send a 1:1 message; server: push of one.
    pub const ONE_CHAT: i64 = 6;
    /// Client: befriend a user.
    pub const ADD_FRIEND: i64 = 7;
    /// Client: create a group.
    pub const CREATE_GROUP: i64 = 8;
    /// Client: join a group.
    pub const ADD_GROUP: i64 = 9;
    /// Client: send to a group; server: push of one.
    pub const GROUP_CHAT: i64 = 10;
    /// Server: reply to every other request.
    pub const ACK: i64 = 11;
    /// Client: end a friendship.
    pub const DEL_FRIEND: i64 = 12;
    /// Client: leave a group.
    pub const QUIT_GROUP: i64 = 13;
    /// Client: list friends.
    pub const FRIEND_LIST: i64 = 14;
    /// Client: list own groups.
    pub const GROUP_LIST: i64 = 15;
    /// Client: list a group's members.
    pub const GROUP_MEMBERS: i64 = 16;
    /// Client: page through a conversation.
    pub const HISTORY: i64 = 17;
    /// Client: move a read cursor.
    pub const READ: i64 = 18;
    /// Server push: a user's presence changed.
    pub const PRESENCE: i64 = 19;
    /// Server: a frame that could not be read as a request.
    pub const ERROR: i64 = 20;
    /// Server push: pushes may have been missed, catch up by history.
    pub const RESYNC: i64 = 21;

    /// A short label for metrics.
    pub fn label(id: i64) -> &'static str {
        match id {
            LOGIN => "login",
            LOGIN_ACK => "login_ack",
            LOGOUT => "logout",
            REG => "reg",
            REG_ACK => "reg_ack",
            ONE_CHAT => "one_chat",
            ADD_FRIEND => "add_friend",
            CREATE_GROUP => "create_group",
            ADD_GROUP => "add_group",
            GROUP_CHAT => "group_chat",
            ACK => "ack",
            DEL_FRIEND => "del_friend",
            QUIT_GROUP => "quit_group",
            FRIEND_LIST => "friend_list",
            GROUP_LIST => "group_list",
            GROUP_MEMBERS => "group_members",
            HISTORY => "history",
            READ => "read",
            PRESENCE => "presence",
            ERROR => "error",
            RESYNC => "resync",
            _ => "other",
        }
    }
}

/// Largest integer that JavaScript represents exactly (2^53 − 1).
pub const MAX_SAFE_INT: i64 = 9_007_199_254_740_991;
/// Longest chat text, in Unicode code points.
pub const MAX_MSG_CHARS: usize = 4000;
/// Longest user or group name, in code points.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest group description, in code points.
pub const MAX_DESC_CHARS: usize = 200;
/// Longest password, in characters.
pub const MAX_PASSWORD_CHARS: usize = 1024;
/// Longest idempotency key, in characters.
pub const MAX_TXNID_CHARS: usize = 64;
/// Default and largest page of HISTORY_MSG.
pub const HISTORY_DEFAULT_LIMIT: u32 = 50;
/// Largest page of HISTORY_MSG.
pub const HISTORY_MAX_LIMIT: u32 = 200;

/// Who a LOGIN_MSG names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginId {
    /// By user id.
    Id(i64),
    /// By exact name.
    Name(String),
}

/// A conversation as a client names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The 1:1 conversation with this user.
    User(i64),
    /// This group's conversation.
    Group(i64),
}

/// Which page HISTORY_MSG asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPage {
    /// The newest messages.
    Newest,
    /// The highest seqs below this one.
    Before(i64),
    /// The lowest seqs above this one.
    After(i64),
}

/// What proves who a LOGIN_MSG is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// The account's password (never logged).
    Password(String),
    /// A resume token from an earlier login reply (never logged).
    Token(String),
}

/// A validated client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// LOGIN_MSG.
    Login {
        /// Account named by id or name (not needed with a token).
        who: Option<LoginId>,
        /// Password or resume token.
        secret: Secret,
    },
    /// LOGINOUT_MSG.
    Logout,
    /// REG_MSG.
    Register {
        /// Wanted name.
        name: String,
        /// Clear-text password (never logged).
        password: String,
    },
    /// ONE_CHAT_MSG or GROUP_CHAT_MSG.
    Chat {
        /// Recipient user or group.
        target: Target,
        /// The text.
        msg: String,
        /// Idempotency key.
        txnid: Option<String>,
    },
    /// ADD_FRIEND_MSG.
    AddFriend {
        /// The user to befriend.
        friendid: i64,
    },
    /// CREATE_GROUP_MSG.
    CreateGroup {
        /// Unique group name.
        groupname: String,
        /// Description.
        groupdesc: String,
    },
    /// ADD_GROUP_MSG.
    AddGroup {
        /// The group to join.
        groupid: i64,
    },
    /// DEL_FRIEND_MSG.
    DelFriend {
        /// The friend to drop.
        friendid: i64,
    },
    /// QUIT_GROUP_MSG.
    QuitGroup {
        /// The group to leave.
        groupid: i64,
    },
    /// FRIEND_LIST_MSG.
    FriendList,
    /// GROUP_LIST_MSG.
    GroupList,
    /// GROUP_MEMBERS_MSG.
    GroupMembers {
        /// The group.
        groupid: i64,
    },
    /// HISTORY_MSG.
    History {
        /// The conversation.
        target: Target,
        /// Which page.
        page: HistoryPage,
        /// Page size, 1–200.
        limit: u32,
    },
    /// READ_MSG.
    Read {
        /// The conversation.
        target: Target,
        /// Everything up to this seq is read.
        seq: i64,
    },
}

/// Why a frame could not even be read as a request: answered with ERROR_MSG 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The frame's `reqid`, when it had a readable one.
    pub reqid: Option<i64>,
    /// A sentence for `errmsg`.
    pub reason: String,
}

/// A frame read far enough to know its `msgid` and `reqid`; fields are validated later.
#[derive(Debug)]
pub struct Envelope {
    /// The integer msgid.
    pub msgid: i64,
    /// The reqid, `Err` when present but not a safe integer.
    pub reqid: Result<Option<i64>, String>,
    fields: Fields,
}

/// Every field a client request may carry, before validation.
#[derive(Debug, Default, Deserialize)]
struct Fields {
    msgid: Option<Value>,
    reqid: Option<Value>,
    id: Option<Value>,
    name: Option<Value>,
    password: Option<Value>,
    token: Option<Value>,
    toid: Option<Value>,
    msg: Option<Value>,
    txnid: Option<Value>,
    friendid: Option<Value>,
    groupname: Option<Value>,
    groupdesc: Option<Value>,
    groupid: Option<Value>,
    before_seq: Option<Value>,
    after_seq: Option<Value>,
    limit: Option<Value>,
    seq: Option<Value>,
}

/// Reads a text frame up to its msgid and reqid.
pub fn decode(text: &str) -> Result<Envelope, Malformed> {
    if !text.trim_start().starts_with('{') {
        return Err(Malformed {
            reqid: None,
            reason: "a message must be one JSON object".into(),
        });
    }
    let mut fields: Fields = serde_json::from_str(text).map_err(|e| Malformed {
        reqid: sniff_reqid(text),
        reason: format!("not valid JSON: {e}"),
    })?;
    let reqid = match fields.reqid.take() {
        None => Ok(None),
        Some(v) => safe_int(&v)
            .map(Some)
            .ok_or_else(|| "reqid must be an integer".to_owned()),
    };
    let msgid = match fields.msgid.take() {
        Some(v) => v.as_i64().ok_or("msgid must be an integer"),
        None => Err("msgid is missing"),
    }
    .map_err(|reason| Malformed {
        reqid: reqid.clone().ok().flatten(),
        reason: reason.into(),
    })?;
    Ok(Envelope {
        msgid,
        reqid,
        fields,
    })
}

/// Best effort: the `reqid` of a frame that is otherwise unusable (too large, bad JSON).
pub fn sniff_reqid(text: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct OnlyReqid {
        reqid: Option<Value>,
    }
    serde_json::from_str::<OnlyReqid>(text)
        .ok()
        .and_then(|f| f.reqid)
        .and_then(|v| safe_int(&v))
}

/// A text frame read as a request, or the one reply that refuses it.
#[derive(Debug)]
pub enum Incoming {
    /// A valid request.
    Request {
        /// Its msgid.
        msgid: i64,
        /// Its reqid.
        reqid: Option<i64>,
        /// The request.
        request: Request,
    },
    /// Refused: answered by one reply and nothing else.
    Refused {
        /// The request's msgid (the reply is 2, 5 or ACK), or `None` for ERROR_MSG.
        msgid: Option<i64>,
        /// The reqid to echo.
        reqid: Option<i64>,
        /// Why.
        error: ServiceError,
    },
}

/// Reads one client text frame: every frame yields exactly one outcome. Checks, in order: the
/// size, JSON object with an integer msgid (else ERROR_MSG 400), a client request msgid (else
/// ACK 400), logged in (else 401, before any field is looked at), then the fields.
pub fn read_request(text: &str, max_frame: usize, logged_in: bool) -> Incoming {
    if text.len() > max_frame {
        return Incoming::Refused {
            msgid: None,
            reqid: sniff_reqid(text),
            error: ServiceError::TooLarge(max_frame),
        };
    }
    let envelope = match decode(text) {
        Ok(env) => env,
        Err(m) => {
            return Incoming::Refused {
                msgid: None,
                reqid: m.reqid,
                error: ServiceError::BadRequest(m.reason),
            };
        }
    };
    let msgid = envelope.msgid;
    let refuse = |reqid, error| Incoming::Refused {
        msgid: Some(msgid),
        reqid,
        error,
    };
    let reqid = envelope.reqid.clone();
    let echo = reqid.clone().ok().flatten();
    if !is_client_request(msgid) {
        let why = format!("msgid {msgid} is not a request a client can send");
        return refuse(echo, ServiceError::BadRequest(why));
    }
    if !logged_in && !allowed_anonymous(msgid) {
        return refuse(echo, ServiceError::NotLoggedIn);
    }
    let reqid = match reqid {
        Ok(r) => r,
        Err(reason) => return refuse(None, ServiceError::BadRequest(reason)),
    };
    match envelope.into_request() {
        Ok(request) => Incoming::Request {
            msgid,
            reqid,
            request,
        },
        Err(error) => refuse(reqid, error),
    }
}

/// Whether `msgid` is something a client may send.
pub fn is_client_request(msgid: i64) -> bool {
    matches!(msgid, 1 | 3 | 4 | 6 | 7 | 8 | 9 | 10 | 12..=18)
}

/// Whether the request may be made before logging in.
pub fn allowed_anonymous(msgid: i64) -> bool {
    msgid == msgid::LOGIN || msgid == msgid::REG
}

fn safe_int(v: &Value) -> Option<i64> {
    v.as_i64().filter(|n| n.abs() <= MAX_SAFE_INT)
}

fn bad(msg: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(msg.into())
}

fn int_field(v: &Option<Value>, name: &str) -> Result<Option<i64>, ServiceError> {
    match v {
        None => Ok(None),
        Some(v) => safe_int(v)
            .map(Some)
            .ok_or_else(|| bad(format!("{name} must be an integer"))),
    }
}

fn required_int(v: &Option<Value>, name: &str) -> Result<i64, ServiceError> {
    int_field(v, name)?.ok_or_else(|| bad(format!("{name} is missing")))
}

fn str_field(v: &mut Option<Value>, name: &str) -> Result<Option<String>, ServiceError> {
    match v.take() {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(format!("{name} must be a string"))),
    }
}

fn required_str(v: &mut Option<Value>, name: &str) -> Result<String, ServiceError> {
    str_field(v, name)?.ok_or_else(|| bad(format!("{name} is missing")))
}

/// Checks a user or group name: 1–64 code points, no control characters.
pub fn validate_name(name: &str, field: &str) -> Result<(), ServiceError> {
    let chars = name.chars().count();
    if chars == 0 {
        return Err(bad(format!("{field} is empty")));
    }
    if chars > MAX_NAME_CHARS {
        return Err(bad(format!(
            "{field} is longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(bad(format!("{field} contains control characters")));
    }
    Ok(())
}

fn validate_password(password: &str) -> Result<(), ServiceError> {
    let chars = password.chars().count();
    if chars == 0 {
        return Err(bad("password is empty"));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(bad(format!(
            "password is longer than {MAX_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

fn validate_msg(msg: &str) -> Result<(), ServiceError> {
    if msg.is_empty() {
        return Err(bad("msg is empty"));
    }
    if msg.chars().count() > MAX_MSG_CHARS {
        return Err(bad(format!(
            "msg is longer than {MAX_MSG_CHARS} characters"
        )));
    }
    Ok(())
}

fn txnid_field(v: &mut Option<Value>) -> Result<Option<String>, ServiceError> {
    let txnid = str_field(v, "txnid")?;
    if let Some(t) = &txnid {
        let chars = t.chars().count();
        if chars == 0 || chars > MAX_TXNID_CHARS {
            return Err(bad(format!(
                "txnid must be 1 to {MAX_TXNID_CHARS} characters"
            )));
        }
    }
    Ok(txnid)
}

fn target(f: &Fields) -> Result<Target, ServiceError> {
    match (
        int_field(&f.toid, "toid")?,
        int_field(&f.groupid, "groupid")?,
    ) {
        (Some(u), None) => Ok(Target::User(u)),
        (None, Some(g)) => Ok(Target::Group(g)),
        (Some(_), Some(_)) => Err(bad("give either toid or groupid, not both")),
        (None, None) => Err(bad("toid or groupid is missing")),
    }
}

impl Envelope {
    /// Validates the fields of this client request (`msgid` must be a client request).
    pub fn into_request(mut self) -> Result<Request, ServiceError> {
        let f = &mut self.fields;
        Ok(match self.msgid {
            msgid::LOGIN => {
                let who = match int_field(&f.id, "id")? {
                    Some(id) => Some(LoginId::Id(id)),
                    None => match str_field(&mut f.name, "name")? {
                        Some(name) => {
                            validate_name(&name, "name")?;
                            Some(LoginId::Name(name))
                        }
                        None => None,
                    },
                };
                let secret = match str_field(&mut f.token, "token")? {
                    Some(token) if token.is_empty() || token.len() > 128 => {
                        return Err(bad("token must be 1 to 128 characters"));
                    }
                    Some(token) => Secret::Token(token),
                    None => {
                        if who.is_none() {
                            return Err(bad("id or name is missing"));
                        }
                        let password = required_str(&mut f.password, "password")?;
                        validate_password(&password)?;
                        Secret::Password(password)
                    }
                };
                Request::Login { who, secret }
            }
            msgid::LOGOUT => Request::Logout,
            msgid::REG => {
                let name = required_str(&mut f.name, "name")?;
                validate_name(&name, "name")?;
                let password = required_str(&mut f.password, "password")?;
                validate_password(&password)?;
                Request::Register { name, password }
            }
            msgid::ONE_CHAT | msgid::GROUP_CHAT => {
                let target = if self.msgid == msgid::ONE_CHAT {
                    Target::User(required_int(&f.toid, "toid")?)
                } else {
                    Target::Group(required_int(&f.groupid, "groupid")?)
                };
                let msg = required_str(&mut f.msg, "msg")?;
                validate_msg(&msg)?;
                let txnid = txnid_field(&mut f.txnid)?;
                Request::Chat { target, msg, txnid }
            }
            msgid::ADD_FRIEND => Request::AddFriend {
                friendid: required_int(&f.friendid, "friendid")?,
            },
            msgid::DEL_FRIEND => Request::DelFriend {
                friendid: required_int(&f.friendid, "friendid")?,
            },
            msgid::CREATE_GROUP => {
                let groupname = required_str(&mut f.groupname, "groupname")?;
                validate_name(&groupname, "groupname")?;
                let groupdesc = required_str(&mut f.groupdesc, "groupdesc")?;
                if groupdesc.chars().count() > MAX_DESC_CHARS {
                    return Err(bad(format!(
                        "groupdesc is longer than {MAX_DESC_CHARS} characters"
                    )));
                }
                Request::CreateGroup {
                    groupname,
                    groupdesc,
                }
            }
            msgid::ADD_GROUP => Request::AddGroup {
                groupid: required_int(&f.groupid, "groupid")?,
            },
            msgid::QUIT_GROUP => Request::QuitGroup {
                groupid: required_int(&f.groupid, "groupid")?,
            },
            msgid::FRIEND_LIST => Request::FriendList,
            msgid::GROUP_LIST => Request::GroupList,
            msgid::GROUP_MEMBERS => Request::GroupMembers {
                groupid: required_int(&f.groupid, "groupid")?,
            },
            msgid::HISTORY => {
                let target = target(f)?;
                let page = match (
                    int_field(&f.before_seq, "before_seq")?,
                    int_field(&f.after_seq, "after_seq")?,
                ) {
                    (None, None) => HistoryPage::Newest,
                    (Some(b), None) => HistoryPage::Before(b),
                    (None, Some(a)) => HistoryPage::After(a),
                    (Some(_), Some(_)) => {
                        return Err(bad("give at most one of before_seq and after_seq"));
                    }
                };
                let limit = match int_field(&f.limit, "limit")? {
                    None => HISTORY_DEFAULT_LIMIT,
                    Some(n) if (1..=i64::from(HISTORY_MAX_LIMIT)).contains(&n) => n as u32,
                    Some(_) => {
                        return Err(bad(format!(
                            "limit must be between 1 and {HISTORY_MAX_LIMIT}"
                        )));
                    }
                };
                Request::History {
                    target,
                    page,
                    limit,
                }
            }
            msgid::READ => {
                let target = target(f)?;
                let seq = required_int(&f.seq, "seq")?;
                if seq < 0 {
                    return Err(bad("seq must not be negative"));
                }
                Request::Read { target, seq }
            }
            other => return Err(bad(format!("msgid {other} is not a client request"))),
        })
    }
}

/// The reply type of a request: LOGIN → 2, REG → 5, anything else → ACK with `ackof`.
pub fn reply_head(
    request_msgid: i64,
    reqid: Option<i64>,
    errno: i64,
    errmsg: &str,
) -> Map<String, Value> {
    let mut m = Map::with_capacity(8);
    match request_msgid {
        msgid::LOGIN => {
            m.insert("msgid".into(), msgid::LOGIN_ACK.into());
        }
        msgid::REG => {
            m.insert("msgid".into(), msgid::REG_ACK.into());
        }
        other => {
            m.insert("msgid".into(), msgid::ACK.into());
            m.insert("ackof".into(), other.into());
        }
    }
    if let Some(r) = reqid {
        m.insert("reqid".into(), r.into());
    }
    m.insert("errno".into(), errno.into());
    m.insert("errmsg".into(), errmsg.into());
    m
}

/// ERROR_MSG for a frame that is not a request.
pub fn error_frame(reqid: Option<i64>, errno: i64, errmsg: &str) -> String {
    let mut v = json!({"msgid": msgid::ERROR, "errno": errno, "errmsg": errmsg});
    if let Some(r) = reqid {
        v["reqid"] = r.into();
    }
    v.to_string()
}

/// The payload fields of a successful reply, merged after msgid, reqid, errno and errmsg:
/// values built as JSON trees, or lists rendered straight to text from rows (the login
/// reply's friends, groups and backlog, ~80 KB, would otherwise cost thousands of small maps).
#[derive(Debug, Default, Clone)]
pub struct Payload {
    fields: Vec<(String, Field)>,
}

#[derive(Debug, Clone)]
enum Field {
    Value(Value),
    Rendered(String),
}

impl Payload {
    /// No fields.
    pub fn new() -> Self {
        Payload::default()
    }

    /// One field.
    pub fn one(key: &str, value: Value) -> Self {
        let mut p = Payload::new();
        p.insert(key, value);
        p
    }

    /// Sets field `key` (replacing an earlier one of that name).
    pub fn insert(&mut self, key: &str, value: Value) {
        self.set(key, Field::Value(value));
    }

    /// Sets field `key` to JSON already serialized (with [`render`]).
    pub fn insert_rendered(&mut self, key: &str, json: String) {
        self.set(key, Field::Rendered(json));
    }

    fn set(&mut self, key: &str, field: Field) {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = field,
            None => self.fields.push((key.to_owned(), field)),
        }
    }

    /// Field `key` as a value (a rendered field is parsed back: only the legacy adapter, which
    /// reshapes replies, reads payloads).
    pub fn get(&self, key: &str) -> Option<Value> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, f)| match f {
                Field::Value(v) => Some(v.clone()),
                Field::Rendered(text) => serde_json::from_str(text).ok(),
            })
    }

    /// Field `key` as a list (empty when absent or not a list).
    pub fn list(&self, key: &str) -> Vec<Value> {
        match self.get(key) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        }
    }

    /// The payload of a JSON object's fields.
    pub fn from_object(object: Map<String, Value>) -> Self {
        Payload {
            fields: object
                .into_iter()
                .map(|(k, v)| (k, Field::Value(v)))
                .collect(),
        }
    }
}

/// Serializes a reply part (a list of views) to JSON text, for [`Payload::insert_rendered`].
pub fn render<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// The text of a reply: its head, then the payload (which wins on a shared key), every key
/// in sorted order as in a `serde_json` object.
pub fn reply_frame(head: Map<String, Value>, payload: Payload) -> String {
    let mut parts: Vec<(String, String)> = head
        .into_iter()
        .filter(|(k, _)| !payload.fields.iter().any(|(pk, _)| pk == k))
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    let mut size = 2;
    for (k, f) in payload.fields {
        let text = match f {
            Field::Value(v) => v.to_string(),
            Field::Rendered(text) => text,
        };
        parts.push((k, text));
    }
    parts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (k, text) in &parts {
        size += k.len() + text.len() + 4;
    }
    let mut out = String::with_capacity(size);
    out.push('{');
    for (i, (k, text)) in parts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(k.as_str()).to_string());
        out.push(':');
        out.push_str(text);
    }
    out.push('}');
    out
}

/// A user in a list: a friend (no role) or a group member; `state` is "online" or "offline".
#[derive(Debug, Serialize)]
pub struct UserView<'a> {
    /// User id.
    pub id: i64,
    /// Name.
    pub name: &'a str,
    /// A member's role in the group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'a str>,
    /// Presence.
    pub state: &'static str,
}

/// A group with its members, as GROUP_LIST, LOGIN and CREATE/ADD_GROUP show it.
#[derive(Debug, Serialize)]
pub struct GroupView<'a> {
    /// Description.
    pub groupdesc: &'a str,
    /// Unique name.
    pub groupname: &'a str,
    /// Group id.
    pub id: i64,
    /// Members, earliest joined first.
    pub users: Vec<UserView<'a>>,
}

/// A group as [`GroupView`] renders it, but for each member's `state`, which is filled in at
/// each use: the names, roles and description are escaped once per group, not at every login
/// of each of its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTemplate {
    /// The group's object up to its members: `{"groupdesc":…,"id":…,"users":[`.
    head: String,
    /// Each member's id and its object up to the value of its state: `{"id":…,"state":"`.
    members: Vec<(i64, String)>,
}

impl GroupTemplate {
    /// The template of `view` (the states in it are not used).
    pub fn new(view: &GroupView<'_>) -> Self {
        let mut head = render(&GroupView {
            groupdesc: view.groupdesc,
            groupname: view.groupname,
            id: view.id,
            users: Vec::new(),
        });
        head.truncate(head.len() - "]}".len());
        let members = view
            .users
            .iter()
            .map(|u| {
                let mut member = render(&UserView {
                    id: u.id,
                    name: u.name,
                    role: u.role,
                    state: "",
                });
                member.truncate(member.len() - "\"}".len());
                (u.id, member)
            })
            .collect();
        GroupTemplate { head, members }
    }

    /// Appends the group's JSON to `out`, each member "online" when `online` says so.
    pub fn render_into(&self, out: &mut String, online: impl Fn(i64) -> bool) {
        out.push_str(&self.head);
        for (i, (id, member)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(member);
            out.push_str(if online(*id) { "online" } else { "offline" });
            out.push_str("\"}");
        }
        out.push_str("]}");
    }
}

/// A chat object: a push of msgid 6 or 10, an element of `offlinemsg` or `messages`.
#[derive(Debug, Serialize)]
pub struct ChatView<'a> {
    /// 6 (1:1) or 10 (group).
    pub msgid: i64,
    /// Server-assigned id.
    pub message_id: i64,
    /// Position in the conversation.
    pub seq: i64,
    /// Sender id.
    pub id: i64,
    /// Sender name.
    pub name: &'a str,
    /// Recipient of a 1:1 message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toid: Option<i64>,
    /// Group of a group message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groupid: Option<i64>,
    /// Text.
    pub msg: &'a str,
    /// RFC 3339 time.
    pub time: String,
}

impl<'a> ChatView<'a> {
    /// The wire view of a stored message sent by `name`.
    pub fn of(m: &'a message::Model, name: &'a str) -> Self {
        ChatView {
            msgid: if m.groupid.is_some() {
                msgid::GROUP_CHAT
            } else {
                msgid::ONE_CHAT
            },
            message_id: m.id,
            seq: m.seq,
            id: m.sender,
            name,
            toid: m.toid,
            groupid: m.groupid,
            msg: &m.msg,
            time: format_time(m.sent_at),
        }
    }
}

/// The serialized push of a stored message sent by `name`: the text serde writes for
/// [`ChatView`], written directly (it is made once per message, and serde spent more on the
/// keys and the field machinery than on the values).
pub fn chat_frame(m: &message::Model, name: &str) -> String {
    let mut out = String::with_capacity(112 + name.len() + m.msg.len());
    out.push_str(r#"{"msgid":"#);
    push_int(
        &mut out,
        if m.groupid.is_some() {
            msgid::GROUP_CHAT
        } else {
            msgid::ONE_CHAT
        },
    );
    out.push_str(r#","message_id":"#);
    push_int(&mut out, m.id);
    out.push_str(r#","seq":"#);
    push_int(&mut out, m.seq);
    out.push_str(r#","id":"#);
    push_int(&mut out, m.sender);
    out.push_str(r#","name":"#);
    push_json_str(&mut out, name);
    if let Some(to) = m.toid {
        out.push_str(r#","toid":"#);
        push_int(&mut out, to);
    }
    if let Some(g) = m.groupid {
        out.push_str(r#","groupid":"#);
        push_int(&mut out, g);
    }
    out.push_str(r#","msg":"#);
    push_json_str(&mut out, &m.msg);
    out.push_str(r#","time":""#);
    write_time(&mut out, m.sent_at);
    out.push_str(r#""}"#);
    out
}

/// Appends `n` in decimal.
fn push_int(out: &mut String, n: i64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `s` as a JSON string, quoted and escaped exactly as serde_json writes it.
fn push_json_str(out: &mut String, s: &str) {
    // serde_json escapes the control characters, the quote and the backslash, nothing else.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

/// Formats a millisecond timestamp as RFC 3339 UTC with milliseconds and `Z`.
pub fn format_time(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    write_time(&mut out, ms);
    out
}

/// Appends [`format_time`]'s text of `ms` to `out`. Every message of a batch has the same
/// time, and its push and its ack both carry it: the last text made on this thread is kept
/// and reused while the time stays the same.
pub fn write_time(out: &mut String, ms: i64) {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    LAST.with_borrow_mut(|(last, text)| {
        if *last != ms || text.is_empty() {
            *text = render_time(ms);
            *last = ms;
        }
        out.push_str(text);
    });
}

/// [`format_time`] without the reuse.
fn render_time(ms: i64) -> String {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let Some(year) = u32::try_from(t.year()).ok().filter(|y| *y <= 9999) else {
        return t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    };
    // Hand-written: this runs twice per chat message (push and ack), and chrono's format
    // string is parsed anew on every call.
    let mut out = String::with_capacity(24);
    let mut digits = |n: u32, width: u32, sep: char| {
        for k in (0..width).rev() {
            let d = (n / 10u32.pow(k)) % 10;
            out.push(char::from(b'0' + d as u8));
        }
        out.push(sep);
    };
    digits(year, 4, '-');
    digits(t.month(), 2, '-');
    digits(t.day(), 2, 'T');
    digits(t.hour(), 2, ':');
    digits(t.minute(), 2, ':');
    digits(t.second(), 2, '.');
    digits(t.timestamp_subsec_millis().min(999), 3, 'Z');
    out
}

/// The ACK_MSG of an accepted chat send (msgid 6 or 10), written directly: it is the hot path.
/// The same object as the generic reply, its msgid first.
pub fn chat_ack_frame(
    ackof: i64,
    reqid: Option<i64>,
    message_id: i64,
    seq: i64,
    time_ms: i64,
) -> String {
    let mut out = String::with_capacity(128);
    // msgid first, as in every frame the server builds by hand: the socket loop counts
    // outgoing frames by the msgid at their start.
    out.push_str(r#"{"msgid":"#);
    push_int(&mut out, msgid::ACK);
    out.push_str(r#","ackof":"#);
    push_int(&mut out, ackof);
    out.push_str(r#","errmsg":"","errno":0,"message_id":"#);
    push_int(&mut out, message_id);
    if let Some(r) = reqid {
        out.push_str(r#","reqid":"#);
        push_int(&mut out, r);
    }
    out.push_str(r#","seq":"#);
    push_int(&mut out, seq);
    out.push_str(r#","time":""#);
    write_time(&mut out, time_ms);
    out.push_str(r#""}"#);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Request, ServiceError> {
        decode(text).expect("decodes").into_request()
    }

    fn errmsg(text: &str) -> String {
        match req(text) {
            Err(ServiceError::BadRequest(m)) => m,
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn non_objects_are_malformed() {
        for text in ["", "[]", "[1,2]", "42", "\"x\"", "null", "not json"] {
            assert!(decode(text).is_err(), "{text}");
        }
    }

    #[test]
    fn msgid_must_be_an_integer() {
        assert!(decode(r#"{"reqid":1}"#).is_err());
        assert_eq!(
            decode(r#"{"msgid":"1","reqid":7}"#).unwrap_err().reqid,
            Some(7)
        );
        assert!(decode(r#"{"msgid":1.5}"#).is_err());
        assert!(decode(r#"{"msgid":null}"#).is_err());
        assert_eq!(decode(r#"{"msgid":99}"#).unwrap().msgid, 99);
    }

    #[test]
    fn bad_json_still_yields_its_reqid_when_readable() {
        let e = decode(r#"{"msgid":1,"reqid":5,"id":}"#).unwrap_err();
        assert_eq!(e.reqid, None);
        assert_eq!(sniff_reqid(r#"{"reqid":5,"msg":"x"}"#), Some(5));
    }

    #[test]
    fn reqid_out_of_the_safe_range_is_rejected() {
        let env = decode(r#"{"msgid":14,"reqid":9007199254740992}"#).unwrap();
        assert!(env.reqid.is_err());
        let env = decode(r#"{"msgid":14,"reqid":"a"}"#).unwrap();
        assert!(env.reqid.is_err());
        let env = decode(r#"{"msgid":14,"reqid":-3}"#).unwrap();
        assert_eq!(env.reqid, Ok(Some(-3)));
    }

    #[test]
    fn login_by_id_or_name() {
        assert_eq!(
            req(r#"{"msgid":1,"id":3,"password":"p"}"#).unwrap(),
            Request::Login {
                who: Some(LoginId::Id(3)),
                secret: Secret::Password("p".into())
            }
        );
        assert_eq!(
            req(r#"{"msgid":1,"name":"ann","password":"p"}"#).unwrap(),
            Request::Login {
                who: Some(LoginId::Name("ann".into())),
                secret: Secret::Password("p".into())
            }
        );
        assert_eq!(
            req(r#"{"msgid":1,"token":"abc"}"#).unwrap(),
            Request::Login {
                who: None,
                secret: Secret::Token("abc".into())
            }
        );
        assert!(errmsg(r#"{"msgid":1,"password":"p"}"#).contains("missing"));
        assert!(errmsg(r#"{"msgid":1,"id":"3","password":"p"}"#).contains("integer"));
        assert!(errmsg(r#"{"msgid":1,"id":3}"#).contains("password"));
        assert!(errmsg(r#"{"msgid":1,"id":3,"password":""}"#).contains("empty"));
        assert!(errmsg(r#"{"msgid":1,"name":"","password":"p"}"#).contains("empty"));
        assert!(errmsg(r#"{"msgid":1,"token":""}"#).contains("token"));
    }

    #[test]
    fn register_validates_names_and_passwords() {
        assert!(req(r#"{"msgid":4,"name":"Ann Lee","password":"x"}"#).is_ok());
        assert!(errmsg(r#"{"msgid":4,"name":"","password":"x"}"#).contains("empty"));
        let long = "é".repeat(65);
        assert!(errmsg(&format!(r#"{{"msgid":4,"name":"{long}","password":"x"}}"#)).contains("64"));
        let ok = "é".repeat(64);
        assert!(req(&format!(r#"{{"msgid":4,"name":"{ok}","password":"x"}}"#)).is_ok());
        assert!(errmsg(r#"{"msgid":4,"name":"a\u0007b","password":"x"}"#).contains("control"));
        assert!(errmsg(r#"{"msgid":4,"name":"a","password":""}"#).contains("password"));
        assert!(errmsg(r#"{"msgid":4,"name":5,"password":"x"}"#).contains("string"));
    }

    #[test]
    fn chat_counts_code_points_not_bytes() {
        let emoji = "😀".repeat(4000);
        assert!(req(&format!(r#"{{"msgid":6,"toid":2,"msg":"{emoji}"}}"#)).is_ok());
        let too_long = "a".repeat(4001);
        assert!(errmsg(&format!(r#"{{"msgid":6,"toid":2,"msg":"{too_long}"}}"#)).contains("4000"));
        assert!(errmsg(r#"{"msgid":6,"toid":2,"msg":""}"#).contains("empty"));
        assert!(errmsg(r#"{"msgid":10,"msg":"x"}"#).contains("groupid"));
        let t = "t".repeat(65);
        assert!(
            errmsg(&format!(
                r#"{{"msgid":6,"toid":2,"msg":"x","txnid":"{t}"}}"#
            ))
            .contains("txnid")
        );
    }

    #[test]
    fn chat_ignores_a_client_supplied_sender_id() {
        assert_eq!(
            req(r#"{"msgid":6,"id":999,"toid":2,"msg":"hi","txnid":"a1"}"#).unwrap(),
            Request::Chat {
                target: Target::User(2),
                msg: "hi".into(),
                txnid: Some("a1".into())
            }
        );
    }

    #[test]
    fn history_paging_rules() {
        assert_eq!(
            req(r#"{"msgid":17,"groupid":4}"#).unwrap(),
            Request::History {
                target: Target::Group(4),
                page: HistoryPage::Newest,
                limit: 50
            }
        );
        assert_eq!(
            req(r#"{"msgid":17,"toid":4,"before_seq":10,"limit":200}"#).unwrap(),
            Request::History {
                target: Target::User(4),
                page: HistoryPage::Before(10),
                limit: 200
            }
        );
        assert!(
            errmsg(r#"{"msgid":17,"toid":4,"before_seq":10,"after_seq":2}"#)
                .contains("at most one")
        );
        assert!(errmsg(r#"{"msgid":17,"toid":4,"limit":0}"#).contains("limit"));
        assert!(errmsg(r#"{"msgid":17,"toid":4,"limit":201}"#).contains("limit"));
        assert!(errmsg(r#"{"msgid":17,"toid":4,"groupid":1}"#).contains("not both"));
        assert!(errmsg(r#"{"msgid":17}"#).contains("missing"));
    }

    #[test]
    fn read_needs_a_non_negative_seq() {
        assert_eq!(
            req(r#"{"msgid":18,"toid":4,"seq":3}"#).unwrap(),
            Request::Read {
                target: Target::User(4),
                seq: 3
            }
        );
        assert!(errmsg(r#"{"msgid":18,"toid":4,"seq":-1}"#).contains("negative"));
        assert!(errmsg(r#"{"msgid":18,"toid":4}"#).contains("seq"));
    }

    #[test]
    fn null_fields_count_as_absent() {
        assert_eq!(
            req(r#"{"msgid":6,"toid":2,"msg":"x","txnid":null,"reqid":null}"#).unwrap(),
            Request::Chat {
                target: Target::User(2),
                msg: "x".into(),
                txnid: None
            }
        );
    }

    fn refused(text: &str, logged_in: bool) -> (Option<i64>, Option<i64>, i64) {
        match read_request(text, 65_536, logged_in) {
            Incoming::Refused {
                msgid,
                reqid,
                error,
            } => (msgid, reqid, error.errno()),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn every_frame_has_one_outcome_in_the_design_order() {
        assert_eq!(refused("nope", false), (None, None, 400));
        assert_eq!(
            refused(r#"{"msgid":14,"reqid":"abc"}"#, false),
            (Some(14), None, 401)
        );
        assert_eq!(
            refused(r#"{"msgid":14,"reqid":"abc"}"#, true),
            (Some(14), None, 400)
        );
        assert_eq!(
            refused(r#"{"msgid":6,"reqid":4}"#, false),
            (Some(6), Some(4), 401)
        );
        assert_eq!(
            refused(r#"{"msgid":6,"reqid":4}"#, true),
            (Some(6), Some(4), 400)
        );
        assert_eq!(
            refused(r#"{"msgid":2,"reqid":5}"#, false),
            (Some(2), Some(5), 400)
        );
        let big = format!(r#"{{"msgid":6,"reqid":9,"msg":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(refused(&big, true), (None, Some(9), 413));
        assert!(matches!(
            read_request(r#"{"msgid":14,"reqid":1}"#, 65_536, true),
            Incoming::Request {
                msgid: 14,
                reqid: Some(1),
                request: Request::FriendList
            }
        ));
    }

    proptest::proptest! {
        /// The push written by hand is the text serde writes for the same [`ChatView`]:
        /// texts with quotes, backslashes, control characters and non-ASCII, either target.
        #[test]
        fn chat_frame_is_serdes_text_of_the_chat_view(
            id in proptest::num::i64::ANY,
            seq in proptest::num::i64::ANY,
            sender in proptest::num::i64::ANY,
            to in proptest::option::of(proptest::num::i64::ANY),
            group in proptest::option::of(proptest::num::i64::ANY),
            name in "(\\PC|[\"\\\\\u{0}-\u{1f}]){0,12}",
            msg in "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}]){0,60}",
            sent_at in -62_135_596_800_000i64..253_402_300_799_999,
        ) {
            let m = message::Model {
                id,
                conv: 1,
                seq,
                sender,
                toid: to,
                groupid: group,
                msg,
                sent_at,
                txnid: None,
            };
            let serde = serde_json::to_string(&ChatView::of(&m, &name)).unwrap();
            proptest::prop_assert_eq!(chat_frame(&m, &name), serde);
        }

        #[test]
        fn arbitrary_text_never_panics_and_has_one_outcome(text in ".{0,300}", logged_in: bool) {
            let _ = read_request(&text, 65_536, logged_in);
        }

        #[test]
        fn arbitrary_json_objects_never_panic(
            msgid in -2i64..25,
            reqid in proptest::option::of(proptest::num::i64::ANY),
            fields in proptest::collection::vec(
                (proptest::sample::select(vec!["id", "name", "password", "token", "toid", "msg",
                    "txnid", "friendid", "groupname", "groupdesc", "groupid", "before_seq",
                    "after_seq", "limit", "seq"]), json_value()),
                0..6),
            logged_in: bool,
        ) {
            let mut object = serde_json::Map::new();
            object.insert("msgid".into(), msgid.into());
            if let Some(r) = reqid {
                object.insert("reqid".into(), r.into());
            }
            for (k, v) in fields {
                object.insert(k.into(), v);
            }
            let text = Value::Object(object).to_string();
            match read_request(&text, 65_536, logged_in) {
                Incoming::Request { msgid: m, .. } => {
                    proptest::prop_assert!(is_client_request(m));
                    proptest::prop_assert!(logged_in || allowed_anonymous(m));
                }
                Incoming::Refused { error, .. } => {
                    proptest::prop_assert!([400, 401, 413].contains(&error.errno()));
                }
            }
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,80}".prop_map(Value::from),
            Just(json!([1, "a"])),
            Just(json!({"nested": true})),
        ]
    }

    #[test]
    fn chat_ack_frame_is_the_generic_reply() {
        for reqid in [None, Some(21), Some(-7)] {
            let mut generic = reply_head(msgid::GROUP_CHAT, reqid, 0, "");
            generic.insert("message_id".into(), 42.into());
            generic.insert("seq".into(), 7.into());
            generic.insert("time".into(), format_time(1_795_756_224_123).into());
            let ack = chat_ack_frame(msgid::GROUP_CHAT, reqid, 42, 7, 1_795_756_224_123);
            assert!(ack.starts_with(r#"{"msgid":11,"#), "{ack}");
            let read: Value = serde_json::from_str(&ack).expect("the ack is JSON");
            assert_eq!(read, Value::Object(generic));
        }
    }

    #[test]
    fn reply_frames_read_as_the_merged_object() {
        let head = reply_head(msgid::FRIEND_LIST, Some(4), 0, "");
        let mut p = Payload::one("more", true.into());
        p.insert("errmsg", "payload wins".into());
        let friends = [UserView {
            id: 3,
            name: "a\"b",
            role: None,
            state: "online",
        }];
        p.insert_rendered("friends", render(&friends));
        let text = reply_frame(head.clone(), p.clone());
        let mut merged = head;
        merged.insert("more".into(), true.into());
        merged.insert("errmsg".into(), "payload wins".into());
        merged.insert(
            "friends".into(),
            json!([{"id": 3, "name": "a\"b", "state": "online"}]),
        );
        // Keys sorted and values equal: the same text as the generic object.
        assert_eq!(text, Value::Object(merged).to_string());
        assert_eq!(p.list("friends")[0]["name"], "a\"b");
        assert_eq!(p.get("more"), Some(Value::Bool(true)));
        assert_eq!(p.get("absent"), None);
    }

    #[test]
    fn group_views_list_members_with_their_role() {
        let g = GroupView {
            groupdesc: "d",
            groupname: "n",
            id: 9,
            users: vec![UserView {
                id: 1,
                name: "x",
                role: Some("creator"),
                state: "offline",
            }],
        };
        assert_eq!(
            render(&g),
            json!({"id": 9, "groupname": "n", "groupdesc": "d",
                   "users": [{"id": 1, "name": "x", "role": "creator", "state": "offline"}]})
            .to_string()
        );
    }

    #[test]
    fn a_group_template_renders_what_the_group_view_renders() {
        let users = [
            (1, "a\"b\\c\u{1}é", Some("creator"), "online"),
            (2, "x", Some("normal"), "offline"),
            (3, "", None, "online"),
        ];
        let view = |states: bool| GroupView {
            groupdesc: "line\nbreak \"quoted\"",
            groupname: "</script>",
            id: 9,
            users: users
                .iter()
                .map(|&(id, name, role, state)| UserView {
                    id,
                    name,
                    role,
                    state: if states { state } else { "offline" },
                })
                .collect(),
        };
        let template = GroupTemplate::new(&view(false));
        let mut out = String::new();
        template.render_into(&mut out, |id| id != 2);
        assert_eq!(out, render(&view(true)));

        let empty = GroupView {
            users: Vec::new(),
            ..view(true)
        };
        let mut out = String::new();
        GroupTemplate::new(&empty).render_into(&mut out, |_| true);
        assert_eq!(out, render(&empty));
    }

    #[test]
    fn only_client_requests_are_requests() {
        for id in [1, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18] {
            assert!(is_client_request(id));
        }
        for id in [0, 2, 5, 11, 19, 20, 21, 22, -1, 99] {
            assert!(!is_client_request(id));
        }
    }

    #[test]
    fn reply_heads_follow_the_request_type() {
        let h = reply_head(1, Some(3), 0, "");
        assert_eq!(h["msgid"], 2);
        assert!(!h.contains_key("ackof"));
        let h = reply_head(4, None, 2, "taken");
        assert_eq!(h["msgid"], 5);
        assert!(!h.contains_key("reqid"));
        let h = reply_head(99, Some(1), 400, "x");
        assert_eq!(
            (h["msgid"].as_i64(), h["ackof"].as_i64()),
            (Some(11), Some(99))
        );
    }

    #[test]
    fn times_are_rfc3339_utc_with_millis() {
        assert_eq!(format_time(1_795_756_224_123), "2026-11-27T05:10:24.123Z");
        // The kept text follows the argument whichever order times come in.
        for ms in [5_000, 5_000, 1_795_756_224_123, 5_000, -1, -1, 5_001] {
            assert_eq!(format_time(ms), render_time(ms), "{ms}");
        }
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        for ms in [
            1,
            999,
            86_399_999,
            951_782_400_000,
            4_102_444_799_999,
            -1,
            -86_400_001,
        ] {
            let chrono_text = chrono::DateTime::from_timestamp_millis(ms)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            assert_eq!(format_time(ms), chrono_text, "{ms}");
        }
    }
}
