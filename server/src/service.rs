//! The service layer: one handler per request, given the connection's session. Business rules
//! live here and nowhere else; the sender of every request is the session's user.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::app::AppState;
use crate::auth;
use crate::bus::{BusEvent, Channel};
use crate::delivery::{ChatAck, ChatJob};
use crate::error::{ServiceError, StoreError};
use crate::hub::{ConnHandle, ConnId};
use crate::limits::{self, LoginVerdict};
use crate::presence::Departure;
use crate::protocol::{
    self, ChatView, GroupTemplate, GroupView, HistoryPage, LoginId, Request, Secret, Target,
    UserView,
};
use crate::store::accounts::{Ties, UserRow};
use crate::store::groups::{GroupInfo, JoinOutcome, QuitOutcome};

/// The logged-in user of a connection.
#[derive(Debug, Clone)]
pub struct SessionUser {
    /// User id.
    pub id: i64,
    /// Name.
    pub name: Arc<str>,
}

/// Per-connection state the handlers need.
#[derive(Debug)]
pub struct Session {
    /// This connection.
    pub conn: ConnId,
    /// The client's address (for login throttling), when known.
    pub peer: Option<IpAddr>,
    /// Set by LOGIN_MSG, cleared by LOGINOUT_MSG or disconnect.
    pub user: Option<SessionUser>,
    /// SHA-256 of this session's resume token (revoked by LOGINOUT_MSG).
    pub token_hash: Option<String>,
}

pub use crate::protocol::Payload;

impl Session {
    /// A new anonymous session for connection `conn`.
    pub fn new(conn: ConnId, peer: Option<IpAddr>) -> Self {
        Session {
            conn,
            peer,
            user: None,
            token_hash: None,
        }
    }

    fn user(&self) -> Result<&SessionUser, ServiceError> {
        self.user.as_ref().ok_or(ServiceError::NotLoggedIn)
    }
}

/// [`handle`] within the request time limit (`--request-timeout`): past it, the request is
/// dropped and answered 503. A login cut short after it registered the connection (while it
/// subscribed or read the backlog) is undone, so that the connection is logged out as its 503
/// says and the client may simply try again.
pub async fn handle_within(
    state: &AppState,
    session: &mut Session,
    conn: &ConnHandle,
    request: Request,
) -> Result<Payload, ServiceError> {
    let logged_in = session.user.is_some();
    // Boxed: the handlers' state (login is large) lives on the heap only while one runs,
    // instead of in every idle connection's task.
    let handled = Box::pin(handle(state, session, conn, request));
    let limit = state.config.request_time_limit();
    let outcome = tokio::time::timeout(limit, handled).await;
    match outcome {
        Ok(outcome) => outcome,
        Err(_) => {
            if !logged_in && session.user.is_some() {
                end_session(state, session, Departure::LoggedOut).await;
            }
            Err(ServiceError::Unavailable(
                "the server is too slow right now".into(),
            ))
        }
    }
}

/// Handles every request except chat sends (see [`submit_chat`]). `handle` is the connection's
/// push queue, registered at login.
pub async fn handle(
    state: &AppState,
    session: &mut Session,
    handle: &ConnHandle,
    request: Request,
) -> Result<Payload, ServiceError> {
    match request {
        Request::Login { who, secret } => login(state, session, handle, who, secret).await,
        Request::Register { name, password } => register(state, name, password).await,
        Request::Logout => {
            session.user()?;
            if let Some(hash) = session.token_hash.take() {
                state.store.delete_token(&hash).await?;
            }
            end_session(state, session, Departure::LoggedOut).await;
            Ok(Payload::new())
        }
        Request::Chat { .. } => Err(ServiceError::internal("dispatch", &"chat sent to handle()")),
        Request::AddFriend { friendid } => add_friend(state, session.user()?, friendid).await,
        Request::DelFriend { friendid } => del_friend(state, session.user()?, friendid).await,
        Request::FriendList => {
            let me = session.user()?;
            let friends = state.store.friends(me.id).await?;
            let online = online_of(state, &friends.iter().map(|u| u.id).collect::<Vec<_>>()).await;
            Ok(rendered("friends", users_json(&friends, &online)))
        }
        Request::CreateGroup {
            groupname,
            groupdesc,
        } => create_group(state, session.user()?, &groupname, &groupdesc).await,
        Request::AddGroup { groupid } => join_group(state, session.user()?, groupid).await,
        Request::QuitGroup { groupid } => quit_group(state, session.user()?, groupid).await,
        Request::GroupList => {
            let me = session.user()?;
            let ids = state.store.group_ids_of(me.id).await?;
            // Not kept: a group joined a moment ago may not be subscribed yet.
            let groups = groups_info(state, &ids, false).await?;
            let online = online_of(state, &member_ids(&groups)).await;
            Ok(rendered("groups", groups_json(&groups, &online)))
        }
        Request::GroupMembers { groupid } => {
            let me = session.user()?;
            let group = member_group(state, me.id, groupid).await?;
            let online = members_online(state, &group).await;
            Ok(rendered(
                "users",
                protocol::render(&members_view(&group, &online)),
            ))
        }
        Request::History {
            target,
            page,
            limit,
        } => history(state, session.user()?, target, page, limit).await,
        Request::Read { target, seq } => read(state, session.user()?, target, seq).await,
    }
}

/// Queues a chat send of the session's user; the receiver yields its ack.
pub async fn submit_chat(
    state: &AppState,
    session: &Session,
    target: Target,
    msg: String,
    txnid: Option<String>,
) -> Result<oneshot::Receiver<Result<ChatAck, ServiceError>>, ServiceError> {
    let me = session.user()?;
    let (reply, rx) = oneshot::channel();
    state
        .delivery
        .submit(ChatJob {
            sender: me.id,
            sender_name: me.name.clone(),
            target,
            msg,
            txnid,
            origin: session.conn,
            reply,
        })
        .await;
    Ok(rx)
}

/// Logs the connection out (LOGINOUT_MSG or disconnect): unregisters it, and announces the
/// user offline when this was its last connection anywhere (after the grace period when the
/// connection dropped).
pub async fn end_session(state: &AppState, session: &mut Session, how: Departure) {
    let Some(user) = session.user.take() else {
        return;
    };
    let change = state.hub.detach(user.id, session.conn);
    // Everything local before the one wait: a logout cut short there still announces the user
    // and counts the session out.
    state
        .presence
        .disconnected(user.id, &user.name, change.first_or_last, how);
    metrics::gauge!("chat_logged_in_sessions").decrement(1.0);
    if let Err(e) = state.bus.sync(&change.channels).await {
        tracing::warn!(user = user.id, "unsubscribe at logout: {e}");
    }
}

async fn login(
    state: &AppState,
    session: &mut Session,
    handle: &ConnHandle,
    who: Option<LoginId>,
    secret: Secret,
) -> Result<Payload, ServiceError> {
    if session.user.is_some() {
        return Err(ServiceError::Conflict(
            "this connection is already logged in".into(),
        ));
    }
    let (account, token) = match secret {
        Secret::Password(password) => {
            let account = match &who {
                Some(LoginId::Id(id)) => state.store.user_by_id(*id).await?,
                Some(LoginId::Name(name)) => state.store.user_by_name(name).await?,
                None => None,
            };
            // Throttle by account (its id when it exists, else the name tried) and address.
            let key = match (&account, &who) {
                (Some(a), _) => format!("#{}", a.id),
                (None, Some(LoginId::Id(id))) => format!("#{id}"),
                (None, Some(LoginId::Name(name))) => name.clone(),
                (None, None) => String::new(),
            };
            match state.login_throttle.check(&key, session.peer) {
                LoginVerdict::Allow => {}
                LoginVerdict::SlowDown(pause) => tokio::time::sleep(pause).await,
                LoginVerdict::Refuse => {
                    return Err(ServiceError::RateLimited(
                        "too many login attempts; wait a minute and try again".into(),
                    ));
                }
            }
            let stored = account.as_ref().map(|a| a.password.clone());
            let ok = auth::verify_password(stored, password).await?;
            state.login_throttle.record(&key, ok);
            match account {
                Some(account) if ok => (
                    UserRow {
                        id: account.id,
                        name: Arc::from(account.name),
                    },
                    None,
                ),
                _ => return Err(ServiceError::WrongCredentials),
            }
        }
        Secret::Token(token) => {
            if state.login_throttle.check("", session.peer) == LoginVerdict::Refuse {
                return Err(ServiceError::RateLimited(
                    "too many login attempts; wait a minute and try again".into(),
                ));
            }
            let hash = auth::token_hash(&token);
            match state.store.token_user(&hash).await? {
                Some(account) => (account, Some((token, hash))),
                None => return Err(ServiceError::WrongCredentials),
            }
        }
    };
    if state.hub.connection_count(account.id) >= state.config.max_connections_per_user {
        limits::hit("user_connections");
        return Err(ServiceError::RateLimited(format!(
            "this user already has {} connections here",
            state.config.max_connections_per_user
        )));
    }
    let (token, token_hash) = match token {
        Some(existing) => existing,
        None => {
            let token = auth::new_token();
            let hash = auth::token_hash(&token);
            let ttl_ms = i64::try_from(state.config.resume_token_ttl.saturating_mul(1000))
                .unwrap_or(i64::MAX);
            let expires = chrono::Utc::now().timestamp_millis().saturating_add(ttl_ms);
            state.store.create_token(account.id, &hash, expires).await?;
            (token, hash)
        }
    };
    let me = SessionUser {
        id: account.id,
        name: account.name,
    };
    // Live channels first, then the backlog: a push may precede the reply, never be missed.
    let ties = state.store.ties(me.id).await?;
    let change = state.hub.attach(me.id, handle.clone(), &ties.groups);
    session.user = Some(me.clone());
    session.token_hash = Some(token_hash);
    metrics::gauge!("chat_logged_in_sessions").increment(1.0);
    // Every channel of the user, not only the newly needed ones: when this returns, all are
    // subscribed (also one another path asked for a moment ago), so the groups loaded below
    // may be cached.
    let channels: Vec<Channel> = std::iter::once(Channel::User(me.id))
        .chain(ties.groups.iter().map(|&g| Channel::Group(g)))
        .collect();
    if let Err(e) = state.bus.sync(&channels).await {
        end_session(state, session, Departure::LoggedOut).await;
        return Err(ServiceError::Unavailable(e.to_string()));
    }
    match login_payload(state, &me, ties).await {
        Ok((mut p, recipients)) => {
            state
                .presence
                .connected(me.id, &me.name, change.first_or_last, recipients);
            p.insert("token", token.into());
            Ok(p)
        }
        Err(e) => {
            end_session(state, session, Departure::LoggedOut).await;
            Err(e)
        }
    }
}

/// The login reply's payload, and who must hear that the user came online (friends and
/// co-members, as this reply shows them).
async fn login_payload(
    state: &AppState,
    me: &SessionUser,
    ties: Ties,
) -> Result<(Payload, HashSet<i64>), ServiceError> {
    let friends = state.store.rows_of(ties.friends).await?;
    let groups = groups_info(state, &ties.groups, true).await?;
    // Everyone the two lists show, the user included (as a member of its groups); repeats
    // are fine: presence looks each user up once.
    let listed: Vec<i64> = friends
        .iter()
        .map(|f| f.id)
        .chain(member_ids(&groups))
        .collect();
    let recipients: HashSet<i64> = listed.iter().copied().filter(|&id| id != me.id).collect();
    let unread = state.store.unread(me.id, &ties.groups).await?;
    let senders: Vec<i64> = unread.iter().map(|m| m.sender).collect();
    let names = state.store.user_names(&senders).await?;
    let offline: Vec<ChatView> = unread
        .iter()
        .map(|m| ChatView::of(m, names.get(&m.sender).map_or("", |n| n)))
        .collect();
    let mut p = Payload::new();
    p.insert("id", me.id.into());
    p.insert("name", (*me.name).into());
    p.insert("node", (*state.node).into());
    // One presence lookup for both lists (in a cluster, one Redis pipeline).
    let online = online_of(state, &listed).await;
    p.insert_rendered("friends", users_json(&friends, &online));
    p.insert_rendered("groups", groups_json(&groups, &online));
    p.insert_rendered("offlinemsg", protocol::render(&offline));
    Ok((p, recipients))
}

async fn register(
    state: &AppState,
    name: String,
    password: String,
) -> Result<Payload, ServiceError> {
    if state.store.user_by_name(&name).await?.is_some() {
        return Err(ServiceError::NameTaken("that name"));
    }
    let hash = auth::hash_password(password).await?;
    match state.store.create_user(&name, &hash).await {
        Ok(id) => Ok(Payload::one("id", id.into())),
        Err(StoreError::Duplicate(_)) => Err(ServiceError::NameTaken("that name")),
        Err(e) => Err(e.into()),
    }
}

async fn add_friend(
    state: &AppState,
    me: &SessionUser,
    friendid: i64,
) -> Result<Payload, ServiceError> {
    if friendid == me.id {
        return Err(ServiceError::BadRequest(
            "you cannot befriend yourself".into(),
        ));
    }
    let Some(name) = state.store.user_name(friendid).await? else {
        return Err(ServiceError::NotFound(format!(
            "no user with id {friendid}"
        )));
    };
    if !state.store.add_friend(me.id, friendid).await? {
        return Err(ServiceError::Conflict("you are already friends".into()));
    }
    let friend = UserRow { id: friendid, name };
    let online = online_of(state, &[friendid]).await;
    Ok(rendered(
        "friend",
        protocol::render(&user_view(&friend, &online)),
    ))
}

async fn del_friend(
    state: &AppState,
    me: &SessionUser,
    friendid: i64,
) -> Result<Payload, ServiceError> {
    if !state.store.del_friend(me.id, friendid).await? {
        return Err(ServiceError::NotFound(format!(
            "user {friendid} is not your friend"
        )));
    }
    Ok(Payload::new())
}

async fn create_group(
    state: &AppState,
    me: &SessionUser,
    groupname: &str,
    groupdesc: &str,
) -> Result<Payload, ServiceError> {
    let gid = match state.store.create_group(me.id, groupname, groupdesc).await {
        Ok(gid) => gid,
        Err(StoreError::Duplicate(_)) => return Err(ServiceError::NameTaken("that group name")),
        Err(e) => return Err(e.into()),
    };
    announce_membership(state, me.id, BusEvent::Joined { group: gid }).await;
    group_payload(state, gid).await
}

async fn join_group(
    state: &AppState,
    me: &SessionUser,
    groupid: i64,
) -> Result<Payload, ServiceError> {
    match state.store.join_group(groupid, me.id).await? {
        JoinOutcome::Joined => members_changed(state, groupid).await,
        JoinOutcome::AlreadyMember => {
            return Err(ServiceError::Conflict(
                "you are already a member of this group".into(),
            ));
        }
        JoinOutcome::NoSuchGroup => return Err(no_such_group(groupid)),
    }
    announce_membership(state, me.id, BusEvent::Joined { group: groupid }).await;
    group_payload(state, groupid).await
}

async fn quit_group(
    state: &AppState,
    me: &SessionUser,
    groupid: i64,
) -> Result<Payload, ServiceError> {
    match state.store.quit_group(groupid, me.id).await? {
        QuitOutcome::Left { .. } => members_changed(state, groupid).await,
        QuitOutcome::NotMember => return Err(not_member()),
        QuitOutcome::NoSuchGroup => return Err(no_such_group(groupid)),
    }
    announce_membership(state, me.id, BusEvent::Left { group: groupid }).await;
    Ok(Payload::new())
}

/// Drops the cached members of `group` here and on every replica serving it.
async fn members_changed(state: &AppState, group: i64) {
    state.hub.forget_group(group);
    if let Err(e) = state
        .bus
        .publish(Channel::Group(group), BusEvent::Members { group })
        .await
    {
        tracing::warn!(group, "member change not published: {e}");
    }
}

/// The groups `ids` that exist, by id, from this replica's cache where it has them. `keep`:
/// the channels of these groups are confirmed subscribed, so what is loaded may be cached.
async fn groups_info(
    state: &AppState,
    ids: &[i64],
    keep: bool,
) -> Result<Vec<Arc<GroupInfo>>, ServiceError> {
    let (mut groups, misses, epoch) = state.hub.cached_groups(ids);
    if !misses.is_empty() {
        let loaded: Vec<Arc<GroupInfo>> = state
            .store
            .groups_info(&misses)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        if keep {
            state.hub.cache_groups(&loaded, epoch);
        }
        groups.extend(loaded);
    }
    groups.sort_unstable_by_key(|g| g.id);
    Ok(groups)
}

/// Tells every replica with a connection of `user` that its groups changed.
async fn announce_membership(state: &AppState, user: i64, event: BusEvent) {
    if let Err(e) = state.bus.publish(Channel::User(user), event).await {
        tracing::warn!(user, "membership change not published: {e}");
    }
}

async fn group_payload(state: &AppState, gid: i64) -> Result<Payload, ServiceError> {
    let group = state
        .store
        .group_info(gid)
        .await?
        .ok_or_else(|| no_such_group(gid))?;
    let online = members_online(state, &group).await;
    let mut json = String::new();
    render_group(&group, &online, &mut json);
    Ok(rendered("group", json))
}

/// The group, if `uid` is a member (404 / 403 otherwise).
async fn member_group(
    state: &AppState,
    uid: i64,
    gid: i64,
) -> Result<Arc<GroupInfo>, ServiceError> {
    let group = groups_info(state, &[gid], false)
        .await?
        .pop()
        .ok_or_else(|| no_such_group(gid))?;
    if !group.members.iter().any(|m| m.id == uid) {
        return Err(not_member());
    }
    Ok(group)
}

/// The conversation id a member may read (`None`: it has no message yet).
async fn conversation_of(
    state: &AppState,
    me: &SessionUser,
    target: Target,
) -> Result<Option<i64>, ServiceError> {
    match target {
        Target::User(other) => {
            if state.store.user_name(other).await?.is_none() {
                return Err(ServiceError::NotFound(format!("no user with id {other}")));
            }
            Ok(state.store.pair_conversation(me.id, other, false).await?)
        }
        Target::Group(g) => {
            if state.store.member_role(g, me.id).await?.is_none() {
                return Err(if state.store.group(g).await?.is_some() {
                    not_member()
                } else {
                    no_such_group(g)
                });
            }
            Ok(state.store.group_conversation(g).await?.map(|c| c.id))
        }
    }
}

async fn history(
    state: &AppState,
    me: &SessionUser,
    target: Target,
    page: HistoryPage,
    limit: u32,
) -> Result<Payload, ServiceError> {
    let (rows, more) = match conversation_of(state, me, target).await? {
        Some(conv) => state.store.history(conv, page, limit).await?,
        None => (Vec::new(), false),
    };
    let senders: Vec<i64> = rows.iter().map(|m| m.sender).collect();
    let names = state.store.user_names(&senders).await?;
    let messages: Vec<ChatView> = rows
        .iter()
        .map(|m| ChatView::of(m, names.get(&m.sender).map_or("", |n| n)))
        .collect();
    let mut p = Payload::new();
    p.insert_rendered("messages", protocol::render(&messages));
    p.insert("more", more.into());
    Ok(p)
}

async fn read(
    state: &AppState,
    me: &SessionUser,
    target: Target,
    seq: i64,
) -> Result<Payload, ServiceError> {
    if let Some(conv) = conversation_of(state, me, target).await? {
        let seq = seq.min(state.store.last_seq(conv).await?);
        if seq > 0 {
            state.store.advance_cursor(me.id, conv, seq).await?;
        }
    }
    Ok(Payload::new())
}

fn no_such_group(gid: i64) -> ServiceError {
    ServiceError::NotFound(format!("no group with id {gid}"))
}

fn not_member() -> ServiceError {
    ServiceError::Forbidden("you are not a member of this group".into())
}

/// A payload of one field rendered from views.
fn rendered(key: &str, json: String) -> Payload {
    let mut p = Payload::new();
    p.insert_rendered(key, json);
    p
}

async fn online_of(state: &AppState, ids: &[i64]) -> HashSet<i64> {
    state.presence.online(ids).await
}

/// Which members of `group` are online.
async fn members_online(state: &AppState, group: &GroupInfo) -> HashSet<i64> {
    online_of(
        state,
        &group.members.iter().map(|m| m.id).collect::<Vec<_>>(),
    )
    .await
}

fn state_word(online: &HashSet<i64>, id: i64) -> &'static str {
    if online.contains(&id) {
        "online"
    } else {
        "offline"
    }
}

fn user_view<'a>(u: &'a UserRow, online: &HashSet<i64>) -> UserView<'a> {
    UserView {
        id: u.id,
        name: &u.name,
        role: None,
        state: state_word(online, u.id),
    }
}

/// The users as a rendered list, each "online" when in `online`.
fn users_json(users: &[UserRow], online: &HashSet<i64>) -> String {
    protocol::render(
        &users
            .iter()
            .map(|u| user_view(u, online))
            .collect::<Vec<_>>(),
    )
}

fn members_view<'a>(group: &'a GroupInfo, online: &HashSet<i64>) -> Vec<UserView<'a>> {
    group
        .members
        .iter()
        .map(|m| UserView {
            id: m.id,
            name: &m.name,
            role: Some(&m.role),
            state: state_word(online, m.id),
        })
        .collect()
}

fn group_view<'a>(g: &'a GroupInfo, online: &HashSet<i64>) -> GroupView<'a> {
    GroupView {
        groupdesc: &g.groupdesc,
        groupname: &g.groupname,
        id: g.id,
        users: members_view(g, online),
    }
}

/// Every member of `groups` (a user in several groups as often as it is listed).
fn member_ids(groups: &[Arc<GroupInfo>]) -> Vec<i64> {
    groups
        .iter()
        .flat_map(|g| g.members.iter().map(|m| m.id))
        .collect()
}

/// The groups with their members as a rendered list, each member "online" when in `online`.
fn groups_json(groups: &[Arc<GroupInfo>], online: &HashSet<i64>) -> String {
    let mut out = String::from("[");
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        render_group(g, online, &mut out);
    }
    out.push(']');
    out
}

/// Appends `group` (its template, made on first use) with its members' presence.
fn render_group(group: &GroupInfo, online: &HashSet<i64>, out: &mut String) {
    group
        .template
        .get_or_init(|| GroupTemplate::new(&group_view(group, &HashSet::new())))
        .render_into(out, |id| online.contains(&id));
}
