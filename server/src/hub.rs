//! The hub: this replica's live connections, by user and by group, and local delivery of
//! pushes to them. It also counts which bus channels this replica needs (a channel is
//! subscribed once per replica however many local users need it), and caches the members of
//! the groups it serves: an entry lives only while the group's channel is subscribed, so every
//! change of the group reaches it as a `Members` event (see [`Hub::forget_group`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, mpsc};

use crate::bus::Channel;
use crate::store::groups::GroupInfo;

/// Identifies a connection on this replica.
pub type ConnId = u64;

/// The sending side of a connection's outbound push queue.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    /// The connection.
    pub id: ConnId,
    /// Bounded queue of serialized pushes.
    tx: mpsc::Sender<Arc<str>>,
    /// Signalled when the queue overflowed: the connection closes itself (1008).
    overflow: Arc<Overflow>,
}

/// A connection's "your push queue overflowed" signal, set by the hub, read by the connection.
#[derive(Debug, Default)]
pub struct Overflow {
    set: AtomicBool,
    notify: Notify,
}

impl Overflow {
    /// Raises the signal and wakes a connection waiting in [`Overflow::notified`].
    pub fn signal(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Whether the signal was raised. A connection's loop checks it each turn: a queue that
    /// overflowed is full, so the loop has pushes to take and does not sleep without seeing
    /// it, and the check costs no waiter registered and dropped per turn.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Completes once the signal is raised (at once if it already was): for waits that do not
    /// come back to the loop, such as a write blocked on a client that does not read.
    pub async fn notified(&self) {
        if !self.is_set() {
            self.notify.notified().await;
        }
    }
}

impl ConnHandle {
    /// A handle for connection `id` feeding `tx`, signalling `overflow` when `tx` is full.
    pub fn new(id: ConnId, tx: mpsc::Sender<Arc<str>>, overflow: Arc<Overflow>) -> Self {
        ConnHandle { id, tx, overflow }
    }

    /// Queues a push; a full queue marks the connection as too slow.
    fn push(&self, frame: &Arc<str>) -> bool {
        match self.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("chat_slow_consumer_disconnects_total").increment(1);
                self.overflow.signal();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// A user with at least one connection on this replica.
#[derive(Default)]
struct LocalUser {
    conns: Vec<ConnHandle>,
    groups: HashSet<i64>,
}

/// A group with at least one member connected here.
#[derive(Default)]
struct LocalGroup {
    /// Its members connected here.
    members: HashSet<i64>,
    /// Its description and full member list, once loaded after the subscription was confirmed.
    info: Option<Arc<GroupInfo>>,
}

#[derive(Default)]
struct Inner {
    users: HashMap<i64, LocalUser>,
    /// group id → its members connected here, and its cached description.
    groups: HashMap<i64, LocalGroup>,
    /// Bumped by every invalidation: a group loaded before it is not cached.
    epoch: u64,
}

/// What attaching or detaching a connection changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The user's first connection on this replica arrived, or its last one left.
    pub first_or_last: bool,
    /// Channels to subscribe (attach) or unsubscribe (detach).
    pub channels: Vec<Channel>,
}

/// The registry of local connections. Never held across an `.await`.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a logged-in connection of `user`, a member of `groups`.
    pub fn attach(&self, user: i64, conn: ConnHandle, groups: &[i64]) -> Change {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut change = Change::default();
        let local = inner.users.entry(user).or_default();
        if local.conns.is_empty() {
            change.first_or_last = true;
            change.channels.push(Channel::User(user));
            for &g in groups {
                local.groups.insert(g);
                let group = inner.groups.entry(g).or_default();
                if group.members.is_empty() {
                    change.channels.push(Channel::Group(g));
                }
                group.members.insert(user);
            }
        }
        local.conns.push(conn);
        change
    }

    /// Unregisters a connection of `user`.
    pub fn detach(&self, user: i64, conn: ConnId) -> Change {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut change = Change::default();
        let Some(local) = inner.users.get_mut(&user) else {
            return change;
        };
        local.conns.retain(|c| c.id != conn);
        if !local.conns.is_empty() {
            return change;
        }
        change.first_or_last = true;
        change.channels.push(Channel::User(user));
        if let Some(local) = inner.users.remove(&user) {
            for g in local.groups {
                if let Some(group) = inner.groups.get_mut(&g) {
                    group.members.remove(&user);
                    if group.members.is_empty() {
                        inner.groups.remove(&g);
                        change.channels.push(Channel::Group(g));
                    }
                }
            }
        }
        change
    }

    /// `user` (if connected here) joined `group`: returns the group channel if newly needed.
    pub fn joined(&self, user: i64, group: i64) -> Option<Channel> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let local = inner.users.get_mut(&user)?;
        if !local.groups.insert(group) {
            return None;
        }
        let local_group = inner.groups.entry(group).or_default();
        let first = local_group.members.is_empty();
        local_group.members.insert(user);
        first.then_some(Channel::Group(group))
    }

    /// `user` (if connected here) left `group`: returns the group channel if no longer needed.
    pub fn left(&self, user: i64, group: i64) -> Option<Channel> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let local = inner.users.get_mut(&user)?;
        if !local.groups.remove(&group) {
            return None;
        }
        let local_group = inner.groups.get_mut(&group)?;
        local_group.members.remove(&user);
        if local_group.members.is_empty() {
            inner.groups.remove(&group);
            return Some(Channel::Group(group));
        }
        None
    }

    /// Delivers a serialized push to the local connections that `channel` reaches, except
    /// `skip`. Returns how many connections got it.
    pub fn deliver(&self, channel: Channel, frame: &Arc<str>, skip: Option<ConnId>) -> usize {
        let inner = self.lock();
        let mut n = 0;
        let mut send = |user: &LocalUser| {
            for c in &user.conns {
                if Some(c.id) != skip && c.push(frame) {
                    n += 1;
                }
            }
        };
        match channel {
            Channel::User(u) => {
                if let Some(user) = inner.users.get(&u) {
                    send(user);
                }
            }
            Channel::Group(g) => {
                if let Some(group) = inner.groups.get(&g) {
                    for u in &group.members {
                        if let Some(user) = inner.users.get(u) {
                            send(user);
                        }
                    }
                }
            }
        }
        n
    }

    /// The cached groups among `ids` (in the order of `ids`), the ids not cached, and the epoch
    /// to hand to [`Hub::cache_groups`] with what is loaded for them.
    pub fn cached_groups(&self, ids: &[i64]) -> (Vec<Arc<GroupInfo>>, Vec<i64>, u64) {
        let inner = self.lock();
        let mut hits = Vec::with_capacity(ids.len());
        let mut misses = Vec::new();
        for id in ids {
            match inner.groups.get(id).and_then(|g| g.info.clone()) {
                Some(info) => hits.push(info),
                None => misses.push(*id),
            }
        }
        (hits, misses, inner.epoch)
    }

    /// Caches groups loaded from the database after `epoch` was read. Only call this once the
    /// channels of these groups are confirmed subscribed. Nothing is kept if anything was
    /// invalidated since `epoch`, nor for groups no local member needs any more.
    pub fn cache_groups(&self, loaded: &[Arc<GroupInfo>], epoch: u64) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        for info in loaded {
            if let Some(group) = inner.groups.get_mut(&info.id) {
                group.info = Some(info.clone());
            }
        }
    }

    /// Drops the cached members of `group` (they changed).
    pub fn forget_group(&self, group: i64) {
        let mut inner = self.lock();
        inner.epoch += 1;
        if let Some(g) = inner.groups.get_mut(&group) {
            g.info = None;
        }
    }

    /// Pushes RESYNC_MSG to every local connection and drops every cached group: events may
    /// have been missed.
    pub fn resync(&self, frame: &Arc<str>) {
        let mut inner = self.lock();
        inner.epoch += 1;
        for g in inner.groups.values_mut() {
            g.info = None;
        }
        drop(inner);
        self.broadcast(frame);
    }

    /// Pushes `frame` to every local connection.
    pub fn broadcast(&self, frame: &Arc<str>) {
        let inner = self.lock();
        for user in inner.users.values() {
            for c in &user.conns {
                c.push(frame);
            }
        }
    }

    /// How many logged-in connections `user` has on this replica.
    pub fn connection_count(&self, user: i64) -> usize {
        self.lock().users.get(&user).map_or(0, |u| u.conns.len())
    }

    /// Whether `user` has a connection on this replica.
    pub fn is_connected(&self, user: i64) -> bool {
        self.lock().users.contains_key(&user)
    }

    /// Every channel this replica needs (for resubscribing after a bus reconnect).
    pub fn channels(&self) -> Vec<Channel> {
        let inner = self.lock();
        inner
            .users
            .keys()
            .map(|&u| Channel::User(u))
            .chain(inner.groups.keys().map(|&g| Channel::Group(g)))
            .collect()
    }

    /// Whether this replica needs `channel` now (some local connection is reached by it).
    pub fn needs(&self, channel: Channel) -> bool {
        let inner = self.lock();
        match channel {
            Channel::User(u) => inner.users.contains_key(&u),
            Channel::Group(g) => inner.groups.contains_key(&g),
        }
    }

    /// Users with a connection here.
    pub fn local_users(&self) -> Vec<i64> {
        self.lock().users.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: ConnId) -> (ConnHandle, mpsc::Receiver<Arc<str>>) {
        let (tx, rx) = mpsc::channel(2);
        (ConnHandle::new(id, tx, Arc::new(Overflow::default())), rx)
    }

    #[test]
    fn channels_are_counted_once_per_replica() {
        let hub = Hub::default();
        let (a1, _r1) = conn(1);
        let (a2, _r2) = conn(2);
        let (b, _r3) = conn(3);
        assert_eq!(
            hub.attach(10, a1, &[7]).channels,
            vec![Channel::User(10), Channel::Group(7)]
        );
        assert_eq!(hub.attach(10, a2, &[7]), Change::default());
        assert_eq!(hub.attach(11, b, &[7]).channels, vec![Channel::User(11)]);
        assert_eq!(hub.detach(10, 1), Change::default());
        assert_eq!(hub.detach(10, 2).channels, vec![Channel::User(10)]);
        assert_eq!(
            hub.detach(11, 3).channels,
            vec![Channel::User(11), Channel::Group(7)]
        );
        assert!(hub.channels().is_empty());
    }

    #[test]
    fn delivery_skips_the_origin_and_reaches_group_members() {
        let hub = Hub::default();
        let (a1, mut r1) = conn(1);
        let (a2, mut r2) = conn(2);
        let (b, mut r3) = conn(3);
        hub.attach(10, a1, &[7]);
        hub.attach(10, a2, &[7]);
        hub.attach(11, b, &[]);
        let frame: Arc<str> = Arc::from("x");
        assert_eq!(hub.deliver(Channel::Group(7), &frame, Some(1)), 1);
        assert!(r1.try_recv().is_err());
        assert!(r2.try_recv().is_ok());
        assert!(r3.try_recv().is_err());
        assert_eq!(hub.joined(11, 7), None);
        assert_eq!(hub.deliver(Channel::Group(7), &frame, None), 3);
        assert_eq!(hub.left(11, 7), None);
        assert_eq!(hub.left(10, 7), Some(Channel::Group(7)));
    }

    fn group(id: i64, members: &[i64]) -> Arc<GroupInfo> {
        Arc::new(GroupInfo {
            id,
            groupname: format!("g{id}"),
            groupdesc: String::new(),
            members: members
                .iter()
                .map(|&m| crate::store::groups::Member {
                    id: m,
                    name: Arc::from(format!("u{m}")),
                    role: "normal".into(),
                })
                .collect(),
            template: Default::default(),
        })
    }

    #[test]
    fn groups_are_cached_only_while_served_and_until_invalidated() {
        let hub = Hub::default();
        let (a, _ra) = conn(1);
        hub.attach(10, a, &[7, 8]);
        let (hits, misses, epoch) = hub.cached_groups(&[7, 8, 9]);
        assert!(hits.is_empty());
        assert_eq!(misses, vec![7, 8, 9]);
        // 9 has no local member: not kept.
        hub.cache_groups(&[group(7, &[10]), group(8, &[10]), group(9, &[10])], epoch);
        let (hits, misses, epoch) = hub.cached_groups(&[9, 8, 7]);
        assert_eq!(hits, vec![group(8, &[10]), group(7, &[10])]);
        assert_eq!(misses, vec![9]);
        // A change of 7 drops it, and a load that started before the change is not kept.
        hub.forget_group(7);
        hub.cache_groups(&[group(7, &[10])], epoch);
        let (hits, misses, epoch) = hub.cached_groups(&[7, 8]);
        assert_eq!((hits.len(), misses), (1, vec![7]));
        hub.cache_groups(&[group(7, &[10, 11])], epoch);
        assert_eq!(hub.cached_groups(&[7]).0, vec![group(7, &[10, 11])]);
        // Leaving the replica drops the entry with the subscription.
        hub.detach(10, 1);
        let (b, _rb) = conn(2);
        hub.attach(10, b, &[7]);
        assert_eq!(hub.cached_groups(&[7]).1, vec![7]);
        // RESYNC drops everything.
        let epoch = hub.cached_groups(&[7]).2;
        hub.cache_groups(&[group(7, &[10])], epoch);
        hub.resync(&Arc::from("r"));
        assert_eq!(hub.cached_groups(&[7]).1, vec![7]);
    }

    #[test]
    fn a_full_queue_signals_overflow() {
        let hub = Hub::default();
        let (tx, _rx) = mpsc::channel(1);
        let overflow = Arc::new(Overflow::default());
        hub.attach(1, ConnHandle::new(9, tx, overflow.clone()), &[]);
        let frame: Arc<str> = Arc::from("x");
        assert_eq!(hub.deliver(Channel::User(1), &frame, None), 1);
        assert!(!overflow.is_set());
        assert!(futures_util::FutureExt::now_or_never(overflow.notified()).is_none());
        assert_eq!(hub.deliver(Channel::User(1), &frame, None), 0);
        assert!(overflow.is_set());
        assert!(futures_util::FutureExt::now_or_never(overflow.notified()).is_some());
    }
}
