//! The bus: how an event published on one replica reaches the connections of every replica.
//! One channel per user (their devices, control events) and one per group (its members).
//!
//! Single node: the in-process bus hands events straight to the local [`Hub`]. A Redis
//! implementation (cluster) plugs in behind the same methods.

use std::sync::Arc;

use crate::hub::{ConnId, Hub};

/// Where an event is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Every connection of one user.
    User(i64),
    /// Every connection of every member of one group.
    Group(i64),
}

impl Channel {
    /// The channel's name on an external bus.
    pub fn name(&self) -> String {
        match self {
            Channel::User(u) => format!("chat:u:{u}"),
            Channel::Group(g) => format!("chat:g:{g}"),
        }
    }
}

/// The connection a push must not be delivered to: the one whose request caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Replica of the connection.
    pub node: Arc<str>,
    /// The connection.
    pub conn: ConnId,
}

/// What travels on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// A serialized push for the channel's connections, except the origin.
    Push {
        /// The frame, serialized once for every recipient.
        frame: Arc<str>,
        /// Connection to skip.
        skip: Option<Origin>,
    },
    /// On a user channel: the user joined a group (replicas start routing it to them).
    Joined {
        /// The group.
        group: i64,
    },
    /// On a user channel: the user left a group.
    Left {
        /// The group.
        group: i64,
    },
}

/// Why a publish or subscription failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached.
    #[error("the message bus is unavailable: {0}")]
    Unavailable(String),
}

/// The bus of this replica.
#[derive(Clone)]
pub struct Bus {
    /// This replica's connections.
    hub: Arc<Hub>,
    /// This replica's name, to recognise its own origins.
    node: Arc<str>,
}

impl Bus {
    /// The in-process bus of a single node.
    pub fn local(hub: Arc<Hub>, node: Arc<str>) -> Self {
        Bus { hub, node }
    }

    /// Publishes `event` on `channel`; when this returns `Ok`, every replica has it.
    pub async fn publish(&self, channel: Channel, event: BusEvent) -> Result<(), BusError> {
        self.apply(channel, event).await;
        Ok(())
    }

    /// Starts receiving `channels` on this replica.
    pub async fn subscribe(&self, channels: &[Channel]) -> Result<(), BusError> {
        let _ = channels;
        Ok(())
    }

    /// Stops receiving `channels` on this replica.
    pub async fn unsubscribe(&self, channels: &[Channel]) -> Result<(), BusError> {
        let _ = channels;
        Ok(())
    }

    /// Hands an event that arrived on `channel` to the local connections.
    async fn apply(&self, channel: Channel, event: BusEvent) {
        match (event, channel) {
            (BusEvent::Push { frame, skip }, _) => {
                let skip = skip.filter(|o| o.node == self.node).map(|o| o.conn);
                self.hub.deliver(channel, &frame, skip);
            }
            (BusEvent::Joined { group }, Channel::User(user)) => {
                if let Some(ch) = self.hub.joined(user, group)
                    && let Err(e) = self.subscribe(&[ch]).await
                {
                    tracing::warn!("subscribing {}: {e}", ch.name());
                }
            }
            (BusEvent::Left { group }, Channel::User(user)) => {
                if let Some(ch) = self.hub.left(user, group)
                    && let Err(e) = self.unsubscribe(&[ch]).await
                {
                    tracing::warn!("unsubscribing {}: {e}", ch.name());
                }
            }
            (event, channel) => tracing::warn!("ignored {event:?} on {channel:?}"),
        }
    }
}
