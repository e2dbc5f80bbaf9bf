//! Presence: who is online anywhere, and the PRESENCE_MSG pushes sent to a user's friends and
//! co-members when that changes. Never read from the `user.state` column.
//!
//! Single node: a user is online while the hub has a connection of theirs. Cluster (Redis):
//! - `chat:presence:<user>`: hash, one field per replica where the user has a connection;
//!   changed by one-key Lua scripts that return the field count, so exactly one replica sees the
//!   user's first arrival (1) and last departure (0) even when they race;
//! - `chat:nodeusers:<node>`: set of the users a replica has registered;
//! - `chat:nodes`: sorted set, replica → time of its last heartbeat (every 2 s).
//!
//! A replica silent for 10 s is dead: the first replica to remove it from `chat:nodes` removes
//! its fields and announces offline those of its users who are left with none, so the users of
//! a killed replica turn offline for everyone within ~12 s.
//!
//! A logout (LOGINOUT_MSG) is announced at once. A dropped connection (closed tab, network
//! change, page reload) only after a grace period (`--presence-grace-ms`): until then the user
//! counts as still here, and a reconnection before it ends announces nothing, so a client that
//! comes back does not flap offline and online for all its friends and co-members.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fred::prelude::{
    Client, EventInterface, HashesInterface, KeysInterface, LuaInterface, SetsInterface,
    SortedSetsInterface,
};
use serde_json::json;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::bus::{Bus, BusEvent, Channel};
use crate::error::StoreError;
use crate::hub::Hub;
use crate::protocol::msgid;
use crate::store::Store;

/// Heartbeat period of a replica.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Presence changes taken from the queue at once; their `user.state` writes share one
/// transaction (one fsync instead of one per login and logout).
const STATE_BATCH: usize = 256;
/// Silence after which a replica counts as dead.
const DEAD_AFTER_MS: i64 = 10_000;
/// Sorted set of replicas by last heartbeat.
const NODES_KEY: &str = "chat:nodes";

/// Adds a replica's field, returns how many replicas the user is on now.
const ARRIVE: &str = "redis.call('HSET', KEYS[1], ARGV[1], 1) return redis.call('HLEN', KEYS[1])";
/// Removes a replica's field, returns how many replicas the user is still on.
const DEPART: &str = "redis.call('HDEL', KEYS[1], ARGV[1]) return redis.call('HLEN', KEYS[1])";

fn presence_key(user: i64) -> String {
    format!("chat:presence:{user}")
}

fn node_users_key(node: &str) -> String {
    format!("chat:nodeusers:{node}")
}

/// Presence of this replica, cheap to clone.
#[derive(Clone)]
pub struct Presence {
    /// Local connections.
    hub: Arc<Hub>,
    /// Ordered queue of this replica's presence changes.
    events: mpsc::UnboundedSender<Change>,
    /// Redis, in a cluster.
    redis: Option<Client>,
    /// How long a dropped user counts as still here.
    grace: Duration,
    /// Users whose last connection here dropped less than `grace` ago.
    lingering: Arc<Mutex<Lingering>>,
    /// Wakes the announcer when a departure starts lingering (it sleeps until the next one
    /// is due, or until this when none is).
    lingered: Arc<Notify>,
}

/// How a user's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// LOGINOUT_MSG: announced at once.
    LoggedOut,
    /// The connection closed or broke without a logout: announced after the grace period,
    /// unless the user comes back before.
    Dropped,
}

/// Users whose last connection on this replica dropped within the grace period: still online
/// for everyone (their Redis field stays) until their departure is due.
#[derive(Debug, Default)]
struct Lingering {
    /// user → (name, when the departure is due).
    users: HashMap<i64, (Arc<str>, Instant)>,
    /// Departures in due order; an entry whose user came back (or left again) is stale.
    due: VecDeque<(Instant, i64)>,
}

impl Lingering {
    /// `user` dropped: gone at `at` unless it comes back before.
    fn linger(&mut self, user: i64, name: Arc<str>, at: Instant) {
        self.users.insert(user, (name, at));
        self.due.push_back((at, user));
        self.count();
    }

    /// `user` is back (or left for good): whether it was lingering.
    fn come_back(&mut self, user: i64) -> bool {
        let was = self.users.remove(&user).is_some();
        self.count();
        was
    }

    fn count(&self) {
        metrics::gauge!("chat_presence_lingering").set(self.users.len() as f64);
    }

    fn contains(&self, user: i64) -> bool {
        self.users.contains_key(&user)
    }

    /// When the next departure is due (possibly one whose user came back since).
    fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|&(at, _)| at)
    }

    /// The departures due at `now`, removed.
    fn take_due(&mut self, now: Instant) -> Vec<(i64, Arc<str>)> {
        let mut out = Vec::new();
        while let Some(&(at, user)) = self.due.front() {
            if at > now {
                break;
            }
            self.due.pop_front();
            if self.users.get(&user).is_some_and(|(_, when)| *when == at)
                && let Some((name, _)) = self.users.remove(&user)
            {
                out.push((user, name));
            }
        }
        self.count();
        out
    }

    /// Every pending departure, removed (at shutdown).
    fn take_all(&mut self) -> Vec<(i64, Arc<str>)> {
        self.due.clear();
        let all = self.users.drain().map(|(u, (name, _))| (u, name)).collect();
        self.count();
        all
    }
}

/// A change seen by this replica, processed in order by the announcer.
#[derive(Debug)]
enum Change {
    /// A user's first connection on this replica; `recipients` are the friends and co-members
    /// at that moment.
    Arrived {
        user: i64,
        name: Arc<str>,
        recipients: HashSet<i64>,
    },
    /// A user's last connection on this replica closed.
    Departed { user: i64, name: Arc<str> },
    /// A user was on a dead replica only.
    Orphaned { user: i64 },
    /// Announce every lingering departure now, then answer (shutdown).
    Drain(oneshot::Sender<()>),
}

impl Presence {
    /// Presence for a single node (from the hub) or a cluster (Redis, when `bus` has it).
    /// `grace`: how long a user whose connection dropped still counts as here.
    pub async fn start(
        hub: Arc<Hub>,
        store: Store,
        bus: Bus,
        node: Arc<str>,
        grace: Duration,
    ) -> anyhow::Result<Self> {
        let redis = bus.redis_connection().map(|r| r.client().clone());
        let (events, rx) = mpsc::unbounded_channel();
        let presence = Presence {
            hub,
            events,
            redis: redis.clone(),
            grace,
            lingering: Arc::default(),
            lingered: Arc::default(),
        };
        if let Some(client) = redis {
            // A previous life of this replica (same node id) may have left users behind.
            reap(&client, &node, &presence.events).await?;
            tokio::spawn(heartbeat_task(
                client.clone(),
                node.clone(),
                presence.events.clone(),
            ));
            tokio::spawn(reregister_task(client, node.clone(), presence.clone()));
        }
        tokio::spawn(announcer(
            rx,
            store,
            bus,
            presence.redis.clone(),
            node,
            presence.lingering.clone(),
            presence.lingered.clone(),
        ));
        Ok(presence)
    }

    fn lingering(&self) -> MutexGuard<'_, Lingering> {
        self.lingering.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `user` got a connection here (`first_local`: its first on this replica); `recipients`
    /// are its friends and co-members now, who are told if the user just came online.
    pub fn connected(
        &self,
        user: i64,
        name: &Arc<str>,
        first_local: bool,
        recipients: HashSet<i64>,
    ) {
        // Back within the grace period: nobody was told it left, so nobody is told it came.
        if first_local && !self.lingering().come_back(user) {
            let _ = self.events.send(Change::Arrived {
                user,
                name: name.clone(),
                recipients,
            });
        }
    }

    /// `user` lost a connection here (`last_local`: its last on this replica), `how`.
    pub fn disconnected(&self, user: i64, name: &Arc<str>, last_local: bool, how: Departure) {
        if !last_local {
            return;
        }
        let mut lingering = self.lingering();
        if how == Departure::Dropped && !self.grace.is_zero() {
            lingering.linger(user, name.clone(), Instant::now() + self.grace);
            self.lingered.notify_one();
            return;
        }
        lingering.come_back(user);
        let _ = self.events.send(Change::Departed {
            user,
            name: name.clone(),
        });
    }

    /// Announces every lingering departure now and waits until that is done (at shutdown,
    /// once the connections are closed).
    pub async fn drain(&self) {
        let (tx, rx) = oneshot::channel();
        if self.events.send(Change::Drain(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Users here: connected, or dropped within the grace period.
    fn here(&self, ids: &[i64]) -> HashSet<i64> {
        let lingering = self.lingering();
        ids.iter()
            .copied()
            .filter(|&u| self.hub.is_connected(u) || lingering.contains(u))
            .collect()
    }

    /// Which of `ids` are online anywhere (each looked up once, however often it is listed:
    /// a login lists every co-member once per shared group).
    pub async fn online(&self, ids: &[i64]) -> HashSet<i64> {
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let ids = &unique[..];
        let Some(client) = &self.redis else {
            return self.here(ids);
        };
        if ids.is_empty() {
            return HashSet::new();
        }
        let pipeline = client.pipeline();
        for &id in ids {
            let _: Result<(), _> = pipeline.hlen(presence_key(id)).await;
        }
        match pipeline.all::<Vec<i64>>().await {
            Ok(counts) => ids
                .iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(|(&id, _)| id)
                .collect(),
            Err(e) => {
                tracing::warn!("presence lookup: {e}; answering from this replica only");
                self.here(ids)
            }
        }
    }
}

/// Applies changes in order: updates Redis, and announces the ones that change the user's
/// state cluster-wide. Lingering departures join the queue once due.
async fn announcer(
    mut rx: mpsc::UnboundedReceiver<Change>,
    store: Store,
    bus: Bus,
    redis: Option<Client>,
    node: Arc<str>,
    lingering: Arc<Mutex<Lingering>>,
    lingered: Arc<Notify>,
) {
    let (state_writes, state_rx) = mpsc::unbounded_channel();
    tokio::spawn(state_writer(state_rx, store.clone()));
    let mut batch = Vec::new();
    loop {
        let next_due = lingering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_due();
        let due = async {
            match next_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = rx.recv_many(&mut batch, STATE_BATCH) => if n == 0 { break },
            _ = lingered.notified() => {}
            _ = due => {}
        }
        let mut changes = Vec::with_capacity(batch.len());
        let mut drained = Vec::new();
        for change in batch.drain(..) {
            match change {
                Change::Drain(done) => drained.push(done),
                other => changes.push(other),
            }
        }
        let departures = {
            let mut lingering = lingering.lock().unwrap_or_else(|e| e.into_inner());
            if !drained.is_empty() {
                lingering.take_all()
            } else if rx.is_empty() {
                // After every change queued before it (the user's arrival among them).
                lingering.take_due(Instant::now())
            } else {
                Vec::new()
            }
        };
        changes.extend(
            departures
                .into_iter()
                .map(|(user, name)| Change::Departed { user, name }),
        );
        // The last transition of each user in this batch, for the `user.state` writer.
        let mut states: HashMap<i64, bool> = HashMap::new();
        for change in changes {
            if let Some((user, online)) = apply(&store, &bus, redis.as_ref(), &node, change).await {
                states.insert(user, online);
            }
        }
        if !states.is_empty() {
            let _ = state_writes.send(StateWrite::Transitions(states));
        }
        // A drain is done once the states of everything before it are written too.
        for done in drained {
            let _ = state_writes.send(StateWrite::Flush(done));
        }
    }
}

/// What the `user.state` writer is asked, in order.
enum StateWrite {
    /// The last transition of each user of one announcer batch.
    Transitions(HashMap<i64, bool>),
    /// Answer once everything before is written.
    Flush(oneshot::Sender<()>),
}

/// Writes `user.state` behind the announcer (informational only: nothing reads presence from
/// it), so that no announcement waits for a database write; what queued up meanwhile is
/// written in one transaction, the last transition of each user winning.
async fn state_writer(mut rx: mpsc::UnboundedReceiver<StateWrite>, store: Store) {
    let mut queued = Vec::new();
    while rx.recv_many(&mut queued, STATE_BATCH).await > 0 {
        let mut states: HashMap<i64, bool> = HashMap::new();
        let mut flushed = Vec::new();
        for write in queued.drain(..) {
            match write {
                StateWrite::Transitions(t) => states.extend(t),
                StateWrite::Flush(done) => flushed.push(done),
            }
        }
        let ids = |state: bool| {
            states
                .iter()
                .filter(|(_, on)| **on == state)
                .map(|(u, _)| *u)
                .collect::<Vec<_>>()
        };
        if let Err(e) = store.set_states(&ids(true), &ids(false)).await {
            tracing::warn!("recording presence in user.state: {e}");
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// Applies one change: updates Redis and, when it changes the user's state cluster-wide,
/// announces it; returns that new state.
async fn apply(
    store: &Store,
    bus: &Bus,
    redis: Option<&Client>,
    node: &str,
    change: Change,
) -> Option<(i64, bool)> {
    let (user, name, online, recipients) = match change {
        Change::Arrived {
            user,
            name,
            recipients,
        } => {
            let first = match redis {
                None => true,
                Some(c) => {
                    let _: Result<i64, _> = c.sadd(node_users_key(node), user).await;
                    run_script(c, ARRIVE, user, node).await == Some(1)
                }
            };
            if !first {
                return None;
            }
            (user, Some(name), true, Some(recipients))
        }
        Change::Departed { user, name } => {
            let last = match redis {
                None => true,
                Some(c) => {
                    let _: Result<i64, _> = c.srem(node_users_key(node), user).await;
                    run_script(c, DEPART, user, node).await == Some(0)
                }
            };
            if !last {
                return None;
            }
            (user, Some(name), false, None)
        }
        Change::Orphaned { user } => (user, None, false, None),
        Change::Drain(_) => return None,
    };
    if let Err(e) = announce(store, bus, user, name, online, recipients).await {
        tracing::warn!(user, "presence announcement: {e}");
    }
    Some((user, online))
}

async fn run_script(client: &Client, script: &str, user: i64, node: &str) -> Option<i64> {
    match client
        .eval::<i64, _, _, _>(script, presence_key(user), node)
        .await
    {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(user, "presence update: {e}");
            None
        }
    }
}

/// Sends PRESENCE_MSG to `recipients`, or else to the user's friends and co-members now.
async fn announce(
    store: &Store,
    bus: &Bus,
    user: i64,
    name: Option<Arc<str>>,
    online: bool,
    recipients: Option<HashSet<i64>>,
) -> Result<(), StoreError> {
    let name = match name {
        Some(n) => n,
        None => store
            .user_name(user)
            .await?
            .unwrap_or_else(|| Arc::from("")),
    };
    let state = if online { "online" } else { "offline" };
    let mut recipients = match recipients {
        Some(r) => r,
        None => {
            let mut r: HashSet<i64> = store.friend_ids(user).await?.into_iter().collect();
            r.extend(store.co_member_ids(user).await?);
            r
        }
    };
    recipients.remove(&user);
    let frame: Arc<str> =
        json!({"msgid": msgid::PRESENCE, "id": user, "name": &*name, "state": state})
            .to_string()
            .into();
    let events = recipients
        .into_iter()
        .map(|r| {
            let event = BusEvent::Push {
                frame: frame.clone(),
                skip: None,
            };
            (Channel::User(r), event)
        })
        .collect();
    for r in bus.publish_all(events).await {
        if let Err(e) = r {
            tracing::warn!(user, "presence publish: {e}");
        }
    }
    Ok(())
}

/// Beats every [`HEARTBEAT`], and reaps replicas that stopped beating.
async fn heartbeat_task(client: Client, node: Arc<str>, events: mpsc::UnboundedSender<Change>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        let now = chrono::Utc::now().timestamp_millis();
        let beat: Result<i64, _> = client
            .zadd(NODES_KEY, None, None, false, false, (now as f64, &*node))
            .await;
        if let Err(e) = beat {
            tracing::warn!("heartbeat: {e}");
            continue;
        }
        let dead: Vec<String> = match client
            .zrangebyscore(
                NODES_KEY,
                f64::NEG_INFINITY,
                (now - DEAD_AFTER_MS) as f64,
                false,
                None,
            )
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("reading heartbeats: {e}");
                continue;
            }
        };
        for other in dead {
            if other == *node {
                continue;
            }
            // Exactly one replica wins the removal and reaps.
            let removed: i64 = client.zrem(NODES_KEY, &other).await.unwrap_or(0);
            if removed == 1 {
                tracing::warn!(node = %other, "replica stopped beating: its users go offline");
                if let Err(e) = reap(&client, &other, &events).await {
                    tracing::warn!(node = %other, "reaping: {e}");
                }
            }
        }
    }
}

/// Removes `dead`'s presence fields; users left on no replica are announced offline.
async fn reap(
    client: &Client,
    dead: &str,
    events: &mpsc::UnboundedSender<Change>,
) -> anyhow::Result<()> {
    let key = node_users_key(dead);
    let users: Vec<i64> = client.smembers(&key).await?;
    for user in users {
        if run_script(client, DEPART, user, dead).await == Some(0) {
            let _ = events.send(Change::Orphaned { user });
        }
    }
    let _: i64 = client.del(&key).await?;
    Ok(())
}

/// After Redis comes back (it keeps nothing on disk), registers this replica's users again
/// (the lingering ones too: their departure is still to come).
async fn reregister_task(client: Client, node: Arc<str>, presence: Presence) {
    let mut reconnects = client.reconnect_rx();
    while reconnects.recv().await.is_ok() {
        let mut users = presence.hub.local_users();
        users.extend(presence.lingering().users.keys().copied());
        tracing::info!(
            users = users.len(),
            "redis reconnected: registering local users again"
        );
        for user in users {
            let _: Result<i64, _> = client.sadd(node_users_key(&node), user).await;
            let _: Result<i64, _> = client.hset(presence_key(user), (&*node, 1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> Arc<str> {
        Arc::from("bob")
    }

    #[test]
    fn a_departure_is_due_after_its_grace_unless_the_user_came_back() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(2);
        let mut l = Lingering::default();
        l.linger(1, name(), t0 + grace);
        l.linger(2, name(), t0 + grace + Duration::from_millis(10));
        assert!(l.contains(1) && l.contains(2));
        assert_eq!(
            l.next_due(),
            Some(t0 + grace),
            "the announcer sleeps until then"
        );
        assert!(
            l.take_due(t0 + Duration::from_secs(1)).is_empty(),
            "not yet"
        );
        assert!(l.come_back(2), "2 was lingering");
        assert!(!l.come_back(3), "3 was not");
        let due: Vec<i64> = l
            .take_due(t0 + grace * 2)
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        assert_eq!(due, [1], "2 came back: never due");
        assert!(!l.contains(1) && !l.contains(2));
        assert!(l.due.is_empty(), "stale entries are dropped on the way");
        assert_eq!(l.next_due(), None, "nothing to wake up for");
    }

    #[test]
    fn lingering_again_after_coming_back_takes_the_new_deadline() {
        let t0 = Instant::now();
        let mut l = Lingering::default();
        l.linger(1, name(), t0 + Duration::from_secs(1));
        l.come_back(1);
        l.linger(1, name(), t0 + Duration::from_secs(3));
        assert!(
            l.take_due(t0 + Duration::from_secs(2)).is_empty(),
            "the first deadline no longer counts"
        );
        assert_eq!(l.take_due(t0 + Duration::from_secs(3)).len(), 1);
        // Lingering twice without coming back (a failed login in between) is one departure.
        l.linger(4, name(), t0 + Duration::from_secs(4));
        l.linger(4, name(), t0 + Duration::from_secs(5));
        assert_eq!(l.take_due(t0 + Duration::from_secs(9)).len(), 1);
    }

    #[test]
    fn take_all_empties_it() {
        let t0 = Instant::now();
        let mut l = Lingering::default();
        l.linger(1, name(), t0 + Duration::from_secs(60));
        l.linger(2, name(), t0 + Duration::from_secs(60));
        let mut all: Vec<i64> = l.take_all().into_iter().map(|(u, _)| u).collect();
        all.sort_unstable();
        assert_eq!(all, [1, 2]);
        assert!(!l.contains(1) && l.take_due(t0 + Duration::from_secs(61)).is_empty());
    }
}
