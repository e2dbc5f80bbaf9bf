//! Presence: who is online anywhere, and the PRESENCE_MSG pushes sent to a user's friends and
//! co-members when that changes. Never read from the `user.state` column.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;

use crate::bus::{Bus, BusEvent, Channel};
use crate::hub::Hub;
use crate::protocol::msgid;
use crate::store::Store;

/// Presence of this deployment (single node: derived from the local hub).
#[derive(Clone)]
pub struct Presence {
    /// Local connections.
    hub: Arc<Hub>,
    /// Queue of transitions to announce, in order.
    announcer: mpsc::UnboundedSender<Transition>,
}

/// A user came online or went offline.
#[derive(Debug)]
struct Transition {
    user: i64,
    name: Arc<str>,
    online: bool,
}

impl Presence {
    /// Presence for a single node; announcements go out through `bus`.
    pub fn local(hub: Arc<Hub>, store: Store, bus: Bus) -> Self {
        let (announcer, rx) = mpsc::unbounded_channel();
        tokio::spawn(announce_loop(rx, store, bus));
        Presence { hub, announcer }
    }

    /// `user` got a connection here (`first_local`: its first on this replica). Announces and
    /// returns whether the user just came online.
    pub fn connected(&self, user: i64, name: &Arc<str>, first_local: bool) -> bool {
        if first_local {
            self.announce(user, name, true);
        }
        first_local
    }

    /// `user` lost a connection here (`last_local`: its last on this replica). Announces and
    /// returns whether the user just went offline.
    pub fn disconnected(&self, user: i64, name: &Arc<str>, last_local: bool) -> bool {
        if last_local {
            self.announce(user, name, false);
        }
        last_local
    }

    /// Which of `ids` are online.
    pub async fn online(&self, ids: &[i64]) -> HashSet<i64> {
        ids.iter()
            .copied()
            .filter(|&u| self.hub.is_connected(u))
            .collect()
    }

    fn announce(&self, user: i64, name: &Arc<str>, online: bool) {
        let _ = self.announcer.send(Transition {
            user,
            name: name.clone(),
            online,
        });
    }
}

/// Sends each transition, in order, to the user's friends and co-members.
async fn announce_loop(mut rx: mpsc::UnboundedReceiver<Transition>, store: Store, bus: Bus) {
    while let Some(t) = rx.recv().await {
        let state = if t.online { "online" } else { "offline" };
        let recipients = match recipients(&store, t.user).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(user = t.user, "presence recipients: {e}");
                continue;
            }
        };
        let frame: Arc<str> =
            json!({"msgid": msgid::PRESENCE, "id": t.user, "name": &*t.name, "state": state})
                .to_string()
                .into();
        for r in recipients {
            let event = BusEvent::Push {
                frame: frame.clone(),
                skip: None,
            };
            if let Err(e) = bus.publish(Channel::User(r), event).await {
                tracing::warn!(user = t.user, "presence publish: {e}");
            }
        }
        if let Err(e) = store.set_state(t.user, state).await {
            tracing::debug!(user = t.user, "user.state: {e}");
        }
    }
}

/// Friends and co-members of `user`, without the user.
async fn recipients(store: &Store, user: i64) -> Result<HashSet<i64>, crate::error::StoreError> {
    let mut set: HashSet<i64> = store.friend_ids(user).await?.into_iter().collect();
    set.extend(store.co_member_ids(user).await?);
    set.remove(&user);
    Ok(set)
}
