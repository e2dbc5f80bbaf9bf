//! Redis pub/sub through `fred`: one client publishes (and serves presence commands), one
//! subscriber client receives. A single task owns the subscriptions and reconciles each channel
//! with what the hub needs at the moment it runs, so subscribe/unsubscribe races between logins
//! and logouts cannot leave a needed channel unsubscribed. After a reconnect it resubscribes
//! every channel, then sends RESYNC_MSG to every local connection. On a Redis Cluster
//! (`redis-cluster://` URL) it uses sharded pub/sub (SPUBLISH / SSUBSCRIBE).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, Client, ClientLike, Config as RedisConfig, EventInterface, PubsubInterface,
    ReconnectPolicy,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot};

use super::{Bus, BusError, BusEvent, Channel, decode_message, encode_bundle};
use crate::hub::Hub;
use crate::protocol::msgid;

/// How long a Redis command may take before the request that needed it fails with 503.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pub/sub messages buffered between the connection and the receiving task (the receiver
/// only hands frames to connection queues; falling further behind means RESYNC). fred sizes
/// all nine of a client's event channels with it, preallocated: ~70 bytes a slot, so 16,384
/// costs ~10 MB where 65,536 cost ~45 MB per client.
const MESSAGE_BUFFER: usize = 1 << 14;
/// Channels per SUBSCRIBE command when resubscribing.
const RESUBSCRIBE_CHUNK: usize = 1000;

/// A subscription request for the subscription task.
enum SubOp {
    /// Reconcile these channels with the hub; report when done (if anyone waits).
    Sync(Vec<Channel>, Option<oneshot::Sender<Result<(), BusError>>>),
    /// The connection came back: subscribe everything again, then RESYNC everyone.
    Resubscribe,
}

/// The Redis side of a replica's bus.
pub struct RedisBus {
    /// Publishes and runs presence commands.
    publisher: Client,
    /// Receives pub/sub messages.
    subscriber: SubscriberClient,
    /// Redis Cluster: sharded pub/sub.
    sharded: bool,
    /// Feeds the subscription task.
    ops: mpsc::UnboundedSender<SubOp>,
    /// Taken by [`RedisBus::start`].
    ops_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<SubOp>>>,
    /// This replica's connections.
    hub: Arc<Hub>,
}

impl RedisBus {
    /// Connects both clients (fails if Redis does not answer now).
    pub async fn connect(url: &str, hub: Arc<Hub>) -> anyhow::Result<Arc<Self>> {
        let config = RedisConfig::from_url(url)?;
        let sharded = config.server.is_clustered();
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|p| {
                p.default_command_timeout = COMMAND_TIMEOUT;
            })
            .with_connection_config(|c| {
                c.connection_timeout = COMMAND_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
                // No Nagle: a small command written while an earlier one is unacknowledged
                // would wait for Redis's delayed ACK (40 ms and more).
                c.tcp.nodelay = Some(true);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        // The publisher receives no messages: fred's default event buffers (32) do.
        let publisher = builder.build()?;
        builder.with_performance_config(|p| p.broadcast_channel_capacity = MESSAGE_BUFFER);
        let subscriber = builder.build_subscriber_client()?;
        publisher.init().await?;
        subscriber.init().await?;
        let (ops, ops_rx) = mpsc::unbounded_channel();
        Ok(Arc::new(RedisBus {
            publisher,
            subscriber,
            sharded,
            ops,
            ops_rx: std::sync::Mutex::new(Some(ops_rx)),
            hub,
        }))
    }

    /// The client for commands other than pub/sub (presence).
    pub fn client(&self) -> &Client {
        &self.publisher
    }

    /// Starts the receiving, subscription and reconnect tasks.
    pub(super) fn start(self: &Arc<Self>, bus: Bus) {
        let ops_rx = self.ops_rx.lock().ok().and_then(|mut o| o.take());
        let Some(ops_rx) = ops_rx else {
            return;
        };
        // Events that occur before this point (the first connection) are not reconnects.
        let mut reconnects = self.subscriber.reconnect_rx();
        let mut messages = self.subscriber.message_rx();
        tokio::spawn(subscription_task(self.clone(), ops_rx));
        let ops = self.ops.clone();
        tokio::spawn(async move {
            loop {
                match reconnects.recv().await {
                    Ok(server) => {
                        tracing::warn!(%server, "redis subscriber reconnected: resubscribing");
                        let _ = ops.send(SubOp::Resubscribe);
                    }
                    Err(RecvError::Lagged(_)) => {
                        let _ = ops.send(SubOp::Resubscribe);
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
        let hub = self.hub.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        let channel = Channel::parse(&message.channel);
                        let events = message.value.as_str().and_then(|t| decode_message(&t));
                        match (channel, events) {
                            (Some(channel), Some(events)) => {
                                for event in events {
                                    bus.apply(channel, event);
                                }
                            }
                            _ => {
                                tracing::warn!(channel = %message.channel, "unreadable bus message")
                            }
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            missed,
                            "bus receiver fell behind: RESYNC to every connection"
                        );
                        hub.resync(&resync_frame());
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }

    /// Publishes one event.
    pub(super) async fn publish(&self, channel: Channel, event: &BusEvent) -> Result<(), BusError> {
        self.publish_wire(channel, event.encode()).await
    }

    /// Publishes several events, in order, one message per channel: a channel's events go as
    /// one bundle (a batch of 1,000 chat sends among 100 users is ~100 PUBLISHes, not 2,000;
    /// each command was a large future of its own, joined, and a quarter of a replica's CPU);
    /// the channels' messages are pipelined, in the order of each channel's first event. One
    /// result per event: its channel's.
    pub(super) async fn publish_all(
        &self,
        events: &[(Channel, BusEvent)],
    ) -> Vec<Result<(), BusError>> {
        let mut channels: Vec<Channel> = Vec::new();
        let mut of_channel: HashMap<Channel, Vec<usize>> = HashMap::new();
        for (i, (channel, _)) in events.iter().enumerate() {
            of_channel
                .entry(*channel)
                .or_insert_with(|| {
                    channels.push(*channel);
                    Vec::new()
                })
                .push(i);
        }
        let sent = futures_util::future::join_all(channels.iter().map(|channel| {
            let wire = match &of_channel[channel][..] {
                [one] => events[*one].1.encode(),
                several => encode_bundle(several.iter().map(|&i| &events[i].1)),
            };
            self.publish_wire(*channel, wire)
        }))
        .await;
        let mut results = vec![Ok(()); events.len()];
        for (channel, outcome) in channels.iter().zip(sent) {
            if let Err(e) = outcome {
                for &i in &of_channel[channel] {
                    results[i] = Err(e.clone());
                }
            }
        }
        results
    }

    /// Publishes one message in its wire form.
    async fn publish_wire(&self, channel: Channel, payload: String) -> Result<(), BusError> {
        let name = channel.name();
        let sent: Result<i64, _> = if self.sharded {
            self.publisher.spublish(name, payload).await
        } else {
            self.publisher.publish(name, payload).await
        };
        sent.map(|_| ())
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }

    /// Reconciles `channels` and waits for Redis to confirm.
    pub(super) async fn sync(&self, channels: Vec<Channel>) -> Result<(), BusError> {
        let (done, rx) = oneshot::channel();
        self.ops
            .send(SubOp::Sync(channels, Some(done)))
            .map_err(|_| BusError::Unavailable("the bus is closed".into()))?;
        rx.await
            .map_err(|_| BusError::Unavailable("the bus is closed".into()))?
    }

    /// Reconciles `channels` without waiting.
    pub(super) fn sync_later(&self, channels: Vec<Channel>) {
        let _ = self.ops.send(SubOp::Sync(channels, None));
    }

    /// Quits both clients.
    pub(super) async fn close(&self) {
        let _ = self.subscriber.quit().await;
        let _ = self.publisher.quit().await;
    }

    async fn subscribe(&self, names: Vec<String>) -> Result<(), BusError> {
        let r = if self.sharded {
            let all = names.into_iter().map(|n| self.subscriber.ssubscribe(n));
            futures_util::future::try_join_all(all).await.map(|_| ())
        } else {
            self.subscriber.subscribe(names).await
        };
        r.map_err(|e| BusError::Unavailable(e.to_string()))
    }

    async fn unsubscribe(&self, names: Vec<String>) -> Result<(), BusError> {
        let r = if self.sharded {
            let all = names.into_iter().map(|n| self.subscriber.sunsubscribe(n));
            futures_util::future::try_join_all(all).await.map(|_| ())
        } else {
            self.subscriber.unsubscribe(names).await
        };
        r.map_err(|e| BusError::Unavailable(e.to_string()))
    }
}

/// The RESYNC_MSG push.
pub fn resync_frame() -> Arc<str> {
    Arc::from(format!("{{\"msgid\":{}}}", msgid::RESYNC))
}

/// Owns the set of subscribed channels; applies requests one at a time, in order.
async fn subscription_task(bus: Arc<RedisBus>, mut ops: mpsc::UnboundedReceiver<SubOp>) {
    let mut subscribed: HashSet<Channel> = HashSet::new();
    while let Some(op) = ops.recv().await {
        match op {
            SubOp::Sync(channels, done) => {
                let mut add = Vec::new();
                let mut remove = Vec::new();
                for ch in channels {
                    let needed = bus.hub.needs(ch);
                    if needed && !subscribed.contains(&ch) {
                        add.push(ch);
                    } else if !needed && subscribed.contains(&ch) {
                        remove.push(ch);
                    }
                }
                let mut result = Ok(());
                if !add.is_empty() {
                    result = bus.subscribe(add.iter().map(Channel::name).collect()).await;
                    if result.is_ok() {
                        subscribed.extend(add);
                    }
                }
                if !remove.is_empty() {
                    match bus
                        .unsubscribe(remove.iter().map(Channel::name).collect())
                        .await
                    {
                        Ok(()) => {
                            for ch in &remove {
                                subscribed.remove(ch);
                            }
                        }
                        Err(e) => tracing::warn!("unsubscribe: {e}"),
                    }
                }
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            SubOp::Resubscribe => {
                // Everything the hub needs now, whatever was subscribed before.
                subscribed = bus.hub.channels().into_iter().collect();
                let names: Vec<String> = subscribed.iter().map(Channel::name).collect();
                let mut ok = true;
                for chunk in names.chunks(RESUBSCRIBE_CHUNK) {
                    if let Err(e) = bus.subscribe(chunk.to_vec()).await {
                        tracing::warn!("resubscribe: {e}");
                        ok = false;
                        break;
                    }
                }
                if ok {
                    tracing::info!(
                        channels = names.len(),
                        "resubscribed: RESYNC to every connection"
                    );
                    bus.hub.resync(&resync_frame());
                }
            }
        }
    }
}
