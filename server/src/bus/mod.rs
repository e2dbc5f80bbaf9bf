//! The bus: how an event published on one replica reaches the connections of every replica.
//! One channel per user (their devices, and control events about them) and one per group (its
//! members). Each replica subscribes to the channels of its own live users and their groups,
//! once however many local connections need them (see `docs/architecture.md`).
//!
//! Single node: the in-process bus hands events straight to the local [`Hub`]. Cluster: Redis
//! pub/sub through `fred` ([`redis`]), sharded pub/sub on a Redis Cluster.

pub mod redis;

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
    /// The channel's name on Redis.
    pub fn name(&self) -> String {
        match self {
            Channel::User(u) => format!("chat:u:{u}"),
            Channel::Group(g) => format!("chat:g:{g}"),
        }
    }

    /// The channel a Redis channel name stands for.
    pub fn parse(name: &str) -> Option<Channel> {
        if let Some(u) = name.strip_prefix("chat:u:") {
            return u.parse().ok().map(Channel::User);
        }
        name.strip_prefix("chat:g:")?
            .parse()
            .ok()
            .map(Channel::Group)
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
    /// On a group channel: its members changed (replicas drop their cached copy).
    Members {
        /// The group.
        group: i64,
    },
}

impl BusEvent {
    /// The wire form on Redis: `P\n<node>\n<conn>\n<frame>`, `J\n<group>`, `L\n<group>` or
    /// `M\n<group>`.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        self.encode_into(&mut s);
        s
    }

    /// Appends the wire form to `out`.
    fn encode_into(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            BusEvent::Push { frame, skip } => {
                let (node, conn) = skip.as_ref().map_or(("", 0), |o| (&*o.node, o.conn));
                out.reserve(frame.len() + node.len() + 24);
                let _ = write!(out, "P\n{node}\n{conn}\n");
                out.push_str(frame);
            }
            BusEvent::Joined { group } => {
                let _ = write!(out, "J\n{group}");
            }
            BusEvent::Left { group } => {
                let _ = write!(out, "L\n{group}");
            }
            BusEvent::Members { group } => {
                let _ = write!(out, "M\n{group}");
            }
        }
    }

    /// Reads the wire form back.
    pub fn decode(text: &str) -> Option<BusEvent> {
        let mut parts = text.splitn(4, '\n');
        match parts.next()? {
            "P" => {
                let node = parts.next()?;
                let conn: ConnId = parts.next()?.parse().ok()?;
                let frame = parts.next()?;
                Some(BusEvent::Push {
                    frame: frame.into(),
                    skip: (!node.is_empty()).then(|| Origin {
                        node: node.into(),
                        conn,
                    }),
                })
            }
            "J" => Some(BusEvent::Joined {
                group: parts.next()?.parse().ok()?,
            }),
            "L" => Some(BusEvent::Left {
                group: parts.next()?.parse().ok()?,
            }),
            "M" => Some(BusEvent::Members {
                group: parts.next()?.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// Tag of a bundle's wire form: several events of one channel in one Redis message.
const BUNDLE_TAG: &str = "B\n";

/// The wire form of several events of one channel, in order, as one message: `B\n`, then for
/// each event the length in bytes of its wire form, `\n`, and that wire form.
pub fn encode_bundle<'a>(events: impl IntoIterator<Item = &'a BusEvent>) -> String {
    use std::fmt::Write;
    let mut out = String::from(BUNDLE_TAG);
    // Each event's wire form goes through one scratch buffer: its length comes first.
    let mut wire = String::new();
    for event in events {
        wire.clear();
        event.encode_into(&mut wire);
        let _ = writeln!(out, "{}", wire.len());
        out.push_str(&wire);
    }
    out
}

/// Reads one Redis message back: a single event or a bundle's events, in order (`None`:
/// unreadable, in part or whole).
pub fn decode_message(text: &str) -> Option<Vec<BusEvent>> {
    let Some(mut rest) = text.strip_prefix(BUNDLE_TAG) else {
        return BusEvent::decode(text).map(|e| vec![e]);
    };
    let mut events = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_once('\n')?;
        let len: usize = len.parse().ok()?;
        let wire = tail.get(..len)?;
        events.push(BusEvent::decode(wire)?);
        rest = &tail[len..];
    }
    Some(events)
}

/// Why a publish or subscription failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached.
    #[error("the message bus is unavailable: {0}")]
    Unavailable(String),
}

/// The bus of this replica, cheap to clone.
#[derive(Clone)]
pub struct Bus {
    /// This replica's connections.
    hub: Arc<Hub>,
    /// This replica's name, to recognise its own origins.
    node: Arc<str>,
    /// Redis, in a cluster; `None` on a single node.
    redis: Option<Arc<redis::RedisBus>>,
}

impl Bus {
    /// The in-process bus of a single node.
    pub fn local(hub: Arc<Hub>, node: Arc<str>) -> Self {
        Bus {
            hub,
            node,
            redis: None,
        }
    }

    /// The Redis bus of a cluster replica: connects and starts receiving.
    pub async fn redis(url: &str, hub: Arc<Hub>, node: Arc<str>) -> anyhow::Result<Self> {
        let connection = redis::RedisBus::connect(url, hub.clone()).await?;
        let bus = Bus {
            hub,
            node,
            redis: Some(connection.clone()),
        };
        connection.start(bus.clone());
        Ok(bus)
    }

    /// The Redis connection, in a cluster.
    pub fn redis_connection(&self) -> Option<&Arc<redis::RedisBus>> {
        self.redis.as_ref()
    }

    /// Publishes `event` on `channel`; when this returns `Ok`, Redis has accepted it for every
    /// replica (or, on a single node, the local connections have it queued).
    pub async fn publish(&self, channel: Channel, event: BusEvent) -> Result<(), BusError> {
        match &self.redis {
            None => {
                self.apply(channel, event);
                Ok(())
            }
            Some(r) => r.publish(channel, &event).await,
        }
    }

    /// Publishes several events, in order; one result per event. On Redis each channel's events
    /// go as one message (a bundle), the channels' messages pipelined.
    pub async fn publish_all(&self, events: Vec<(Channel, BusEvent)>) -> Vec<Result<(), BusError>> {
        match &self.redis {
            None => events
                .into_iter()
                .map(|(channel, event)| {
                    self.apply(channel, event);
                    Ok(())
                })
                .collect(),
            Some(r) => r.publish_all(&events).await,
        }
    }

    /// Brings this replica's subscriptions to `channels` in line with what the hub needs now,
    /// and waits until Redis confirms.
    pub async fn sync(&self, channels: &[Channel]) -> Result<(), BusError> {
        match &self.redis {
            Some(r) if !channels.is_empty() => r.sync(channels.to_vec()).await,
            _ => Ok(()),
        }
    }

    /// Hands an event that arrived on `channel` to the local connections.
    pub(crate) fn apply(&self, channel: Channel, event: BusEvent) {
        match (event, channel) {
            (BusEvent::Push { frame, skip }, _) => {
                let skip = skip.filter(|o| o.node == self.node).map(|o| o.conn);
                self.hub.deliver(channel, &frame, skip);
            }
            (BusEvent::Joined { group }, Channel::User(user)) => {
                if let Some(ch) = self.hub.joined(user, group) {
                    self.sync_later(ch);
                }
            }
            (BusEvent::Left { group }, Channel::User(user)) => {
                if let Some(ch) = self.hub.left(user, group) {
                    self.sync_later(ch);
                }
            }
            (BusEvent::Members { group }, Channel::Group(_)) => self.hub.forget_group(group),
            (event, channel) => tracing::warn!("ignored {event:?} on {channel:?}"),
        }
    }

    fn sync_later(&self, channel: Channel) {
        if let Some(r) = &self.redis {
            r.sync_later(vec![channel]);
        }
    }

    /// Closes the Redis connections (at shutdown).
    pub async fn close(&self) {
        if let Some(r) = &self.redis {
            r.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        for ch in [Channel::User(7), Channel::Group(9_007_199_254_740_991)] {
            assert_eq!(Channel::parse(&ch.name()), Some(ch));
        }
        assert_eq!(Channel::parse("chat:x:1"), None);
        assert_eq!(Channel::parse("chat:u:abc"), None);
    }

    #[test]
    fn events_round_trip_through_their_wire_form() {
        let events = [
            BusEvent::Push {
                frame: r#"{"msgid":6,"msg":"a\nb"}"#.into(),
                skip: Some(Origin {
                    node: "host:8001".into(),
                    conn: 42,
                }),
            },
            BusEvent::Push {
                frame: "{}".into(),
                skip: None,
            },
            BusEvent::Joined { group: 5 },
            BusEvent::Left { group: 6 },
            BusEvent::Members { group: 7 },
        ];
        for e in events {
            assert_eq!(BusEvent::decode(&e.encode()), Some(e));
        }
        assert_eq!(BusEvent::decode("X\n1"), None);
        assert_eq!(BusEvent::decode("P\nn\nnotanumber\n{}"), None);
    }

    #[test]
    fn a_bundle_carries_its_events_in_order_and_a_single_event_reads_as_one() {
        let events = vec![
            BusEvent::Push {
                frame: "{\"msgid\":6,\"msg\":\"B\\n12\\né\"}".into(),
                skip: Some(Origin {
                    node: "n1".into(),
                    conn: 3,
                }),
            },
            BusEvent::Members { group: 4 },
            BusEvent::Push {
                frame: "{}".into(),
                skip: None,
            },
        ];
        let wire = encode_bundle(&events);
        assert!(wire.starts_with("B\n"));
        assert_eq!(decode_message(&wire), Some(events.clone()));
        assert_eq!(
            decode_message(&events[1].encode()),
            Some(vec![events[1].clone()])
        );
        // Truncated, a length past the end or not a number, an unreadable event: refused whole.
        assert_eq!(decode_message(&wire[..wire.len() - 1]), None);
        assert_eq!(decode_message("B\n99\nM\n4"), None);
        assert_eq!(decode_message("B\nx\nM\n4"), None);
        assert_eq!(decode_message("B\n3\nX\n4"), None);
        assert_eq!(decode_message("B\n"), Some(Vec::new()));
    }
}
