//! The chat pipeline: one task per replica takes chat sends in arrival order and stores them in
//! batches (one transaction for many messages: group commit); a second task publishes each
//! stored message on the bus in seq order, batch after batch, and only then answers the
//! senders. A send is never acked before its message is both stored and published. The two
//! stages overlap: a batch is published while the next one is being stored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::bus::{Bus, BusEvent, Channel, Origin};
use crate::error::{ServiceError, StoreError};
use crate::hub::ConnId;
use crate::protocol::{self, Target};
use crate::store::Store;
use crate::store::entities::message;
use crate::store::messages::{NewMessage, Written, pair_key};

/// One chat send, from an authenticated session.
#[derive(Debug)]
pub struct ChatJob {
    /// The session's user.
    pub sender: i64,
    /// The session user's name (goes into the push).
    pub sender_name: Arc<str>,
    /// Recipient user or group.
    pub target: Target,
    /// Text, validated.
    pub msg: String,
    /// Idempotency key.
    pub txnid: Option<String>,
    /// The sending connection: it gets the ack, not the push.
    pub origin: ConnId,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<ChatAck, ServiceError>>,
}

/// What the sender's ack carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatAck {
    /// Server-assigned id.
    pub message_id: i64,
    /// Position in the conversation.
    pub seq: i64,
    /// Server time in ms.
    pub time_ms: i64,
}

/// Where a send goes: its conversation, and its recipient or group.
#[derive(Debug, Clone, Copy)]
struct Destination {
    conv: i64,
    toid: Option<i64>,
    groupid: Option<i64>,
}

/// (group, sender) → destination, or the errno that refuses it; valid for one batch.
type Memberships = HashMap<(i64, i64), Result<Destination, i64>>;

/// The 1:1 sends of one batch: which of their users exist, and each pair's conversation by
/// `pair_key`.
#[derive(Default)]
struct Pairs {
    users: HashSet<i64>,
    conversations: HashMap<(i64, i64), i64>,
}

enum Command {
    Chat(ChatJob),
    Flush(oneshot::Sender<()>),
}

/// Handle to the pipeline, cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    tx: mpsc::Sender<Command>,
}

/// Attempts of a batch that met a transient conflict (deadlock, concurrent txnid).
const BATCH_ATTEMPTS: usize = 3;

/// Stored batches that may wait for the publishing stage before the writer waits too.
const STORED_QUEUE: usize = 2;

/// The writer lingers for more sends only after a batch of at least this many: a lone user's
/// message never waits for company.
const LINGER_AFTER: usize = 8;

/// A batch the writer is done with, on its way to the bus and to its senders.
#[derive(Default)]
struct Stored {
    jobs: Vec<ChatJob>,
    /// The outcome of each job already known (refused, or its batch failed).
    outcomes: Vec<Option<Result<ChatAck, ServiceError>>>,
    /// For each written message, the index of its job.
    index: Vec<usize>,
    written: Vec<Written>,
    /// Flushes that came after this batch.
    flushes: Vec<oneshot::Sender<()>>,
}

impl Delivery {
    /// Starts the pipeline: the writer and the publishing task. The handle ends when both have
    /// (aborting it stops the writer; the publishing task then ends once drained).
    /// `linger` is how long the writer may wait to fill a batch while sends keep coming (see
    /// `Writer::linger`); zero never waits.
    pub fn start(
        store: Store,
        bus: Bus,
        node: Arc<str>,
        batch_max: usize,
        linger: Duration,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(batch_max.max(1) * 4);
        let (stored_tx, stored_rx) = mpsc::channel(STORED_QUEUE);
        let batch_max = batch_max.max(1);
        let writer = Writer {
            store,
            batch_max,
            linger,
            stored: stored_tx,
        };
        let publisher = Publisher { bus, node };
        let publishing = tokio::spawn(publisher.run(stored_rx));
        let handle = tokio::spawn(async move {
            writer.run(rx).await;
            // The writer is gone, so is the sending half: the publisher ends once drained.
            let _ = publishing.await;
        });
        (Delivery { tx }, handle)
    }

    /// Queues a send; its outcome arrives on the job's `reply`. Sends are stored in the order
    /// they are queued.
    pub async fn submit(&self, job: ChatJob) {
        if let Err(mpsc::error::SendError(Command::Chat(job))) =
            self.tx.send(Command::Chat(job)).await
        {
            let _ = job.reply.send(Err(ServiceError::Unavailable(
                "the server is shutting down".into(),
            )));
        }
    }

    /// Waits until everything queued before this call has been stored and published.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The storing stage.
struct Writer {
    store: Store,
    batch_max: usize,
    /// Longest wait for more sends after the first of a batch (see [`Writer::linger`]).
    linger: Duration,
    stored: mpsc::Sender<Stored>,
}

/// The publishing stage.
struct Publisher {
    bus: Bus,
    node: Arc<str>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Command>) {
        let mut jobs = Vec::with_capacity(self.batch_max);
        let mut flushes = Vec::new();
        let mut last_batch = 0;
        while let Some(cmd) = rx.recv().await {
            let started = Instant::now();
            let mut next = Some(cmd);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Chat(job) => jobs.push(job),
                    Command::Flush(done) => flushes.push(done),
                }
                if jobs.len() < self.batch_max {
                    next = rx.try_recv().ok();
                }
            }
            if last_batch >= LINGER_AFTER && !self.linger.is_zero() {
                let deadline = tokio::time::Instant::from_std(started + self.linger);
                linger(
                    &mut rx,
                    &mut jobs,
                    &mut flushes,
                    // Filled to an eighth of the largest batch, a batch's fixed cost (a
                    // transaction, a commit, a page per conversation) is already spread thin.
                    (self.batch_max / 8).max(1),
                    deadline,
                )
                .await;
            }
            last_batch = jobs.len();
            let mut stored = if jobs.is_empty() {
                Stored::default()
            } else {
                // The next batch starts with room for as many jobs as this one, not an empty
                // Vec grown by doubling (moving every job each time).
                let batch = std::mem::take(&mut jobs);
                jobs.reserve(batch.len());
                self.process(batch).await
            };
            stored.flushes = std::mem::take(&mut flushes);
            if self.stored.send(stored).await.is_err() {
                tracing::error!("the publishing stage of the chat pipeline is gone");
                return;
            }
        }
    }

    /// Resolves and stores one batch.
    async fn process(&self, jobs: Vec<ChatJob>) -> Stored {
        let started = Instant::now();
        let mut outcomes: Vec<Option<Result<ChatAck, ServiceError>>> =
            Vec::with_capacity(jobs.len());
        let mut resolved = Vec::with_capacity(jobs.len());
        // A failed lookup fails the batch's group sends, or its 1:1 sends, only.
        let membership = self.memberships(&jobs).await.map_err(ServiceError::from);
        let pairs = self.pairs(&jobs).await.map_err(ServiceError::from);
        for job in &jobs {
            match resolve(job, &membership, &pairs) {
                Ok(dest) => {
                    outcomes.push(None);
                    resolved.push(Some(dest));
                }
                Err(e) => {
                    outcomes.push(Some(Err(e)));
                    resolved.push(None);
                }
            }
        }
        metrics::histogram!("chat_batch_phase_seconds", "phase" => "resolve")
            .record(started.elapsed().as_secs_f64());
        let mut index = Vec::new();
        let mut batch = Vec::new();
        for (i, (job, dest)) in jobs.iter().zip(&resolved).enumerate() {
            if let Some(dest) = dest {
                index.push(i);
                batch.push(NewMessage {
                    sender: job.sender,
                    conv: dest.conv,
                    toid: dest.toid,
                    groupid: dest.groupid,
                    msg: &job.msg,
                    txnid: job.txnid.as_deref(),
                });
            }
        }
        let mut written = Vec::new();
        if !batch.is_empty() {
            metrics::histogram!("chat_db_batch_size").record(batch.len() as f64);
            let stored = Instant::now();
            let result = self.write(&batch).await;
            metrics::histogram!("chat_batch_phase_seconds", "phase" => "store")
                .record(stored.elapsed().as_secs_f64());
            metrics::histogram!("chat_db_batch_seconds").record(started.elapsed().as_secs_f64());
            match result {
                Ok(w) => written = w,
                Err(e) => {
                    let e = ServiceError::from(e);
                    for &i in &index {
                        outcomes[i] = Some(Err(clone_error(&e)));
                    }
                    index.clear();
                }
            }
        }
        Stored {
            jobs,
            outcomes,
            index,
            written,
            flushes: Vec::new(),
        }
    }

    /// Where every group send of a batch goes, or the errno that refuses it: two queries for
    /// the whole batch (memberships, then the groups' conversations), not two per send.
    async fn memberships(&self, jobs: &[ChatJob]) -> Result<Memberships, StoreError> {
        let pairs = distinct(jobs, |job| match job.target {
            Target::Group(g) => Some((g, job.sender)),
            Target::User(_) => None,
        });
        if pairs.is_empty() {
            return Ok(Memberships::new());
        }
        let members = self.store.memberships(&pairs).await?;
        let mut groups: Vec<i64> = pairs.iter().map(|&(g, _)| g).collect();
        groups.dedup();
        let convs = self.store.group_conversations(&groups).await?;
        Ok(pairs
            .into_iter()
            .map(|(g, sender)| {
                let answer = match (members.contains(&(g, sender)), convs.get(&g)) {
                    (true, Some(&conv)) => Ok(Destination {
                        conv,
                        toid: None,
                        groupid: Some(g),
                    }),
                    (false, Some(_)) => Err(403),
                    (_, None) => Err(404),
                };
                ((g, sender), answer)
            })
            .collect())
    }

    /// The users and conversations of every 1:1 send of a batch: one query for the users'
    /// names and one for the pairs' conversations (creating those missing), for the whole
    /// batch and only for what the store has not cached, not a few per send.
    async fn pairs(&self, jobs: &[ChatJob]) -> Result<Pairs, StoreError> {
        // A batch holds many sends of the same pair: each pair is looked up once.
        let sends = distinct(jobs, |job| match job.target {
            Target::User(to) => Some(pair_key(job.sender, to)),
            Target::Group(_) => None,
        });
        if sends.is_empty() {
            return Ok(Pairs::default());
        }
        let mut users: Vec<i64> = sends.iter().flat_map(|&(lo, hi)| [lo, hi]).collect();
        users.sort_unstable();
        users.dedup();
        let users: HashSet<i64> = self.store.user_names(&users).await?.into_keys().collect();
        let known: Vec<(i64, i64)> = sends
            .into_iter()
            .filter(|(lo, hi)| users.contains(lo) && users.contains(hi))
            .collect();
        let conversations = self.store.pair_conversations(&known, true).await?;
        Ok(Pairs {
            users,
            conversations,
        })
    }

    /// Writes a batch, retrying transient conflicts.
    async fn write(&self, batch: &[NewMessage<'_>]) -> Result<Vec<Written>, StoreError> {
        let mut attempt = 1;
        loop {
            let now = chrono::Utc::now().timestamp_millis();
            match self.store.write_batch(batch, now).await {
                Err(StoreError::Duplicate(e) | StoreError::Conflict(e))
                    if attempt < BATCH_ATTEMPTS =>
                {
                    tracing::debug!(attempt, "retrying message batch: {e}");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

impl Publisher {
    async fn run(self, mut rx: mpsc::Receiver<Stored>) {
        while let Some(stored) = rx.recv().await {
            self.finish(stored).await;
        }
    }

    /// Publishes a stored batch and answers its senders, then its flushes.
    async fn finish(&self, stored: Stored) {
        let Stored {
            jobs,
            mut outcomes,
            index,
            written,
            flushes,
        } = stored;
        if !index.is_empty() {
            let publishing = Instant::now();
            let published = self.publish(&jobs, &index, written).await;
            metrics::histogram!("chat_batch_phase_seconds", "phase" => "publish")
                .record(publishing.elapsed().as_secs_f64());
            for (&i, outcome) in index.iter().zip(published) {
                outcomes[i] = Some(outcome);
            }
        }
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            let outcome =
                outcome.unwrap_or_else(|| Err(ServiceError::internal("delivery", &"no outcome")));
            let _ = job.reply.send(outcome);
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    /// Publishes the stored messages of a batch, pipelined and in seq order, and returns each
    /// sender's ack (503 when its message is stored but could not be published).
    async fn publish(
        &self,
        jobs: &[ChatJob],
        index: &[usize],
        written: Vec<Written>,
    ) -> Vec<Result<ChatAck, ServiceError>> {
        let mut outcomes = Vec::with_capacity(written.len());
        // A 1:1 message goes to two channels (the recipient's, the sender's other devices').
        let mut events = Vec::with_capacity(written.len() * 2);
        // For each outcome, the range of `events` its publishing needs.
        let mut spans = Vec::with_capacity(written.len());
        for (&i, w) in index.iter().zip(written) {
            let job = &jobs[i];
            let m = match w {
                Written::Stored(m) | Written::Duplicate(m) => m,
                Written::TxnidReused => {
                    outcomes.push(Err(ServiceError::Conflict(
                        "txnid was already used for another message".into(),
                    )));
                    spans.push(0..0);
                    continue;
                }
                Written::Gone => {
                    outcomes.push(Err(ServiceError::NotFound("no such group".into())));
                    spans.push(0..0);
                    continue;
                }
            };
            let frame: Arc<str> = protocol::chat_frame(&m, &job.sender_name).into();
            let origin = Origin {
                node: self.node.clone(),
                conn: job.origin,
            };
            let start = events.len();
            let (first, second) = match (m.toid, m.groupid) {
                (_, Some(g)) => (Channel::Group(g), None),
                (Some(to), None) if to != m.sender => {
                    (Channel::User(to), Some(Channel::User(m.sender)))
                }
                _ => (Channel::User(m.sender), None),
            };
            for channel in std::iter::once(first).chain(second) {
                let event = BusEvent::Push {
                    frame: frame.clone(),
                    skip: Some(origin.clone()),
                };
                events.push((channel, event));
            }
            spans.push(start..events.len());
            outcomes.push(Ok(ack_of(&m)));
        }
        let results = self.bus.publish_all(events).await;
        for (outcome, span) in outcomes.iter_mut().zip(spans) {
            if let Some(Err(e)) = results[span].iter().find(|r| r.is_err()) {
                tracing::warn!("publish failed: {e}");
                *outcome = Err(ServiceError::Unavailable(
                    "the message was stored but could not be delivered".into(),
                ));
            }
        }
        outcomes
    }
}

/// The keys `key` gives the jobs of a batch, each once, in order.
fn distinct<K: Ord>(jobs: &[ChatJob], key: impl Fn(&ChatJob) -> Option<K>) -> Vec<K> {
    let mut keys: Vec<K> = jobs.iter().filter_map(key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The conversation, recipient and group of a send, or why it cannot be sent.
fn resolve(
    job: &ChatJob,
    membership: &Result<Memberships, ServiceError>,
    pairs: &Result<Pairs, ServiceError>,
) -> Result<Destination, ServiceError> {
    match job.target {
        Target::User(to) => {
            let pairs = pairs.as_ref().map_err(clone_error)?;
            if !pairs.users.contains(&to) {
                return Err(ServiceError::NotFound(format!("no user with id {to}")));
            }
            let conv = pairs
                .conversations
                .get(&pair_key(job.sender, to))
                .copied()
                .ok_or_else(|| ServiceError::internal("pair conversation", &"not created"))?;
            Ok(Destination {
                conv,
                toid: Some(to),
                groupid: None,
            })
        }
        Target::Group(g) => membership
            .as_ref()
            .map_err(clone_error)?
            .get(&(g, job.sender))
            .copied()
            .unwrap_or(Err(404))
            .map_err(group_error),
    }
}

/// Group commit's delay: while sends keep coming (the previous batch held several), the
/// writer waits until `deadline` for its batch to fill to `until`. Each batch costs the
/// database a transaction, a commit and a page per conversation however few messages it holds;
/// at a steady rate the writer otherwise stores batches of a few dozen back to back, and those
/// fixed costs take a core. A flush, or the pipeline closing, ends the wait.
async fn linger(
    rx: &mut mpsc::Receiver<Command>,
    jobs: &mut Vec<ChatJob>,
    flushes: &mut Vec<oneshot::Sender<()>>,
    until: usize,
    deadline: tokio::time::Instant,
) {
    while jobs.len() < until && flushes.is_empty() {
        let cmd = match rx.try_recv() {
            Ok(cmd) => cmd,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(cmd)) => cmd,
                    Ok(None) | Err(_) => return,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return,
        };
        match cmd {
            Command::Chat(job) => jobs.push(job),
            Command::Flush(done) => flushes.push(done),
        }
    }
}

fn ack_of(m: &message::Model) -> ChatAck {
    ChatAck {
        message_id: m.id,
        seq: m.seq,
        time_ms: m.sent_at,
    }
}

fn group_error(code: i64) -> ServiceError {
    if code == 403 {
        ServiceError::Forbidden("you are not a member of this group".into())
    } else {
        ServiceError::NotFound("no such group".into())
    }
}

/// The same error for every job of a failed batch.
fn clone_error(e: &ServiceError) -> ServiceError {
    match e {
        ServiceError::Unavailable(m) => ServiceError::Unavailable(m.clone()),
        ServiceError::Internal(id) => ServiceError::Internal(id.clone()),
        other => ServiceError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: i64) -> ChatJob {
        ChatJob {
            sender: 1,
            sender_name: "a".into(),
            target: Target::User(2),
            msg: format!("m{n}"),
            txnid: None,
            origin: 1,
            reply: oneshot::channel().0,
        }
    }

    fn far() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(3600)
    }

    /// Sends already queued fill the batch up to the mark and no further, without waiting.
    #[tokio::test]
    async fn lingering_takes_what_is_queued_up_to_the_mark() {
        let (tx, mut rx) = mpsc::channel(16);
        for n in 0..5 {
            tx.send(Command::Chat(job(n))).await.unwrap();
        }
        let (mut jobs, mut flushes) = (vec![job(-1)], Vec::new());
        linger(&mut rx, &mut jobs, &mut flushes, 4, far()).await;
        let texts: Vec<&str> = jobs.iter().map(|j| j.msg.as_str()).collect();
        assert_eq!(texts, ["m-1", "m0", "m1", "m2"]);
        assert!(matches!(rx.try_recv(), Ok(Command::Chat(j)) if j.msg == "m3"));
    }

    /// A send that arrives while the writer waits joins the batch.
    #[tokio::test]
    async fn a_send_arriving_while_lingering_joins_the_batch() {
        let (tx, mut rx) = mpsc::channel(16);
        let late = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(Command::Chat(job(7))).await.unwrap();
            tx
        });
        let (mut jobs, mut flushes) = (vec![job(0)], Vec::new());
        linger(&mut rx, &mut jobs, &mut flushes, 2, far()).await;
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].msg, "m7");
        drop(late.await);
    }

    /// A flush ends the wait (everything before it must be stored promptly), and so do a
    /// deadline already past and a closed pipeline.
    #[tokio::test]
    async fn a_flush_a_past_deadline_or_a_closed_queue_ends_the_wait() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(Command::Chat(job(1))).await.unwrap();
        tx.send(Command::Flush(oneshot::channel().0)).await.unwrap();
        tx.send(Command::Chat(job(2))).await.unwrap();
        let (mut jobs, mut flushes) = (Vec::new(), Vec::new());
        linger(&mut rx, &mut jobs, &mut flushes, 100, far()).await;
        assert_eq!((jobs.len(), flushes.len()), (1, 1));

        let (mut jobs, mut flushes) = (Vec::new(), Vec::new());
        let past = tokio::time::Instant::now() - Duration::from_millis(1);
        linger(&mut rx, &mut jobs, &mut flushes, 100, past).await;
        assert_eq!(jobs.len(), 1, "what is queued is still taken");
        linger(&mut rx, &mut jobs, &mut flushes, 100, past).await;
        assert_eq!(jobs.len(), 1, "then no wait");

        drop(tx);
        linger(&mut rx, &mut jobs, &mut flushes, 100, far()).await;
        assert_eq!(jobs.len(), 1);
    }
}
