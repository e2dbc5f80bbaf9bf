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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{
    Client, EventInterface, HashesInterface, KeysInterface, LuaInterface, SetsInterface,
    SortedSetsInterface,
};
use serde_json::json;
use tokio::sync::mpsc;

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
}

impl Presence {
    /// Presence for a single node (from the hub) or a cluster (Redis, when `bus` has it).
    pub async fn start(
        hub: Arc<Hub>,
        store: Store,
        bus: Bus,
        node: Arc<str>,
    ) -> anyhow::Result<Self> {
        let redis = bus.redis_connection().map(|r| r.client().clone());
        let (events, rx) = mpsc::unbounded_channel();
        let presence = Presence {
            hub,
            events,
            redis: redis.clone(),
        };
        if let Some(client) = redis {
            // A previous life of this replica (same node id) may have left users behind.
            reap(&client, &node, &presence.events).await?;
            tokio::spawn(heartbeat_task(
                client.clone(),
                node.clone(),
                presence.events.clone(),
            ));
            tokio::spawn(reregister_task(client, node.clone(), presence.hub.clone()));
        }
        tokio::spawn(announcer(rx, store, bus, presence.redis.clone(), node));
        Ok(presence)
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
        if first_local {
            let _ = self.events.send(Change::Arrived {
                user,
                name: name.clone(),
                recipients,
            });
        }
    }

    /// `user` lost a connection here (`last_local`: its last on this replica).
    pub fn disconnected(&self, user: i64, name: &Arc<str>, last_local: bool) {
        if last_local {
            let _ = self.events.send(Change::Departed {
                user,
                name: name.clone(),
            });
        }
    }

    /// Which of `ids` are online anywhere.
    pub async fn online(&self, ids: &[i64]) -> HashSet<i64> {
        let Some(client) = &self.redis else {
            return ids
                .iter()
                .copied()
                .filter(|&u| self.hub.is_connected(u))
                .collect();
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
                ids.iter()
                    .copied()
                    .filter(|&u| self.hub.is_connected(u))
                    .collect()
            }
        }
    }
}

/// Applies changes in order: updates Redis, and announces the ones that change the user's
/// state cluster-wide.
async fn announcer(
    mut rx: mpsc::UnboundedReceiver<Change>,
    store: Store,
    bus: Bus,
    redis: Option<Client>,
    node: Arc<str>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, STATE_BATCH).await > 0 {
        // The last transition of each user in this batch, written together below.
        let mut states: HashMap<i64, bool> = HashMap::new();
        for change in batch.drain(..) {
            if let Some((user, online)) = apply(&store, &bus, redis.as_ref(), &node, change).await {
                states.insert(user, online);
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

/// After Redis comes back (it keeps nothing on disk), registers this replica's users again.
async fn reregister_task(client: Client, node: Arc<str>, hub: Arc<Hub>) {
    let mut reconnects = client.reconnect_rx();
    while reconnects.recv().await.is_ok() {
        let users = hub.local_users();
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
