//! The replies of one connection, in request order: replies already rendered and chat acks
//! still to come from the message pipeline, each chat send with its deadline.
//!
//! Only the oldest reply can be written next, so only it is waited on, and one timer per
//! connection serves every deadline (they grow in queue order: a timer armed for an earlier
//! send is moved to the current one's deadline when it fires). A per-send timer and a
//! future per send cost a timer-wheel entry and a waker registration for every message.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot::{self, error::TryRecvError};
use tokio::time::{Instant, Sleep};

use crate::delivery::ChatAck;
use crate::error::ServiceError;
use crate::protocol;
use crate::telemetry;
use crate::ws::reply_text;

/// What the pipeline answers for one chat send.
pub type AckReceiver = oneshot::Receiver<Result<ChatAck, ServiceError>>;

/// One reply in the queue.
enum Queued {
    /// Rendered already.
    Ready(String),
    /// A chat send waiting for the pipeline's answer until `deadline`.
    Chat {
        msgid: i64,
        reqid: Option<i64>,
        ack: AckReceiver,
        deadline: Instant,
    },
}

/// How a chat send ended.
enum Answer {
    /// The pipeline answered.
    Done(Result<ChatAck, ServiceError>),
    /// The pipeline dropped the send without an answer (it stopped).
    Stopped,
    /// No answer before the deadline.
    TimedOut,
}

/// The replies of one connection, in request order.
pub struct Replies {
    queue: VecDeque<Queued>,
    /// How long a chat send may wait for its ack.
    timeout: Duration,
    /// Fires at (or before) the oldest chat send's deadline; made on first need.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Replies {
    /// An empty queue whose chat sends time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Replies {
            queue: VecDeque::new(),
            timeout,
            timer: None,
        }
    }

    /// Replies not yet written.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether every reply has been written.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues a rendered reply behind the others.
    pub fn push_ready(&mut self, text: String) {
        self.queue.push_back(Queued::Ready(text));
    }

    /// Queues the reply of chat send `msgid`/`reqid`, answered through `ack`.
    pub fn push_chat(&mut self, msgid: i64, reqid: Option<i64>, ack: AckReceiver) {
        self.queue.push_back(Queued::Chat {
            msgid,
            reqid,
            ack,
            deadline: Instant::now() + self.timeout,
        });
    }

    /// The oldest reply once it is ready (`None`: the queue is empty).
    pub async fn next(&mut self) -> Option<String> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// The oldest reply if it is ready now; never waits.
    pub fn try_next(&mut self) -> Option<String> {
        let answer = match self.queue.front_mut()? {
            Queued::Ready(_) => None,
            Queued::Chat { ack, .. } => match ack.try_recv() {
                Ok(done) => Some(Answer::Done(done)),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Closed) => Some(Answer::Stopped),
            },
        };
        self.pop(answer)
    }

    /// Polls the oldest reply: its ack, else the timer of its deadline.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<String>> {
        let answer = match self.queue.front_mut() {
            None => return Poll::Ready(None),
            Some(Queued::Ready(_)) => None,
            Some(Queued::Chat { ack, deadline, .. }) => match Pin::new(ack).poll(cx) {
                Poll::Ready(Ok(done)) => Some(Answer::Done(done)),
                Poll::Ready(Err(_)) => Some(Answer::Stopped),
                Poll::Pending => {
                    if !passed(&mut self.timer, *deadline, cx) {
                        return Poll::Pending;
                    }
                    Some(Answer::TimedOut)
                }
            },
        };
        Poll::Ready(self.pop(answer))
    }

    /// Takes the oldest reply off the queue, rendered with `answer` if it is a chat send's.
    fn pop(&mut self, answer: Option<Answer>) -> Option<String> {
        match (self.queue.pop_front()?, answer) {
            (Queued::Ready(text), _) => Some(text),
            (Queued::Chat { msgid, reqid, .. }, Some(Answer::Done(Ok(ack)))) => {
                telemetry::replies_ok().increment(1);
                Some(protocol::chat_ack_frame(
                    msgid,
                    reqid,
                    ack.message_id,
                    ack.seq,
                    ack.time_ms,
                ))
            }
            (Queued::Chat { msgid, reqid, .. }, answer) => {
                let error = match answer {
                    Some(Answer::Done(Err(e))) => e,
                    Some(Answer::Stopped) => {
                        ServiceError::Unavailable("the message pipeline stopped".into())
                    }
                    _ => ServiceError::Unavailable(
                        "the message may not be stored yet; resend it with the same txnid".into(),
                    ),
                };
                Some(reply_text(msgid, reqid, Err(error)))
            }
        }
    }
}

/// Whether `deadline` has passed, by the connection's one timer; else the timer is armed for
/// it (moved on from an earlier deadline when that one fires) and wakes `cx`. The timer is
/// never later than `deadline`: it was made for an older send, and every send's deadline is
/// its push time plus the same timeout.
pub fn passed(
    timer: &mut Option<Pin<Box<Sleep>>>,
    deadline: Instant,
    cx: &mut Context<'_>,
) -> bool {
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    loop {
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if timer.deadline() >= deadline {
            return true;
        }
        timer.as_mut().reset(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(message_id: i64) -> Result<ChatAck, ServiceError> {
        Ok(ChatAck {
            message_id,
            seq: message_id,
            time_ms: 0,
        })
    }

    fn field(text: &str, name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        v[name].clone()
    }

    #[tokio::test]
    async fn replies_leave_in_request_order_whatever_order_acks_arrive_in() {
        let mut replies = Replies::new(Duration::from_secs(60));
        let (first_tx, first) = oneshot::channel();
        let (second_tx, second) = oneshot::channel();
        replies.push_chat(6, Some(1), first);
        replies.push_chat(6, Some(2), second);
        replies.push_ready(r#"{"msgid":9,"reqid":3}"#.into());
        second_tx.send(ack(20)).unwrap();
        assert_eq!(
            replies.try_next(),
            None,
            "the first send is not answered yet"
        );
        first_tx.send(ack(10)).unwrap();
        let texts: Vec<String> = std::iter::from_fn(|| replies.try_next()).collect();
        let reqids: Vec<_> = texts.iter().map(|t| field(t, "reqid")).collect();
        assert_eq!(reqids, [1, 2, 3]);
        assert_eq!(field(&texts[0], "message_id"), 10);
        assert_eq!(field(&texts[1], "message_id"), 20);
        assert!(replies.is_empty());
        assert_eq!(replies.next().await, None);
    }

    #[tokio::test]
    async fn an_unanswered_send_times_out_and_the_ones_behind_it_still_get_their_ack() {
        let mut replies = Replies::new(Duration::from_millis(30));
        let (_kept, first) = oneshot::channel();
        replies.push_chat(6, Some(1), first);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (second_tx, second) = oneshot::channel();
        replies.push_chat(6, Some(2), second);
        let (_kept_too, third) = oneshot::channel();
        replies.push_chat(6, Some(3), third);
        second_tx.send(ack(2)).unwrap();

        let timed_out = replies.next().await.unwrap();
        assert_eq!(field(&timed_out, "reqid"), 1);
        assert_eq!(field(&timed_out, "errno"), 503);
        let acked = replies.next().await.unwrap();
        assert_eq!(field(&acked, "errno"), 0);
        assert_eq!(field(&acked, "message_id"), 2);
        // The third's deadline is later than the first's: the one timer is moved on to it.
        let last = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("the timer was moved on to the third send's deadline")
            .unwrap();
        assert_eq!(field(&last, "reqid"), 3);
        assert_eq!(field(&last, "errno"), 503);
    }

    #[tokio::test]
    async fn a_send_dropped_by_the_pipeline_is_answered_503_not_left_waiting() {
        let mut replies = Replies::new(Duration::from_secs(60));
        let (tx, rx) = oneshot::channel();
        replies.push_chat(6, Some(7), rx);
        drop(tx);
        let text = replies.try_next().unwrap();
        assert_eq!(field(&text, "errno"), 503);
        assert!(field(&text, "errmsg").as_str().unwrap().contains("stopped"));
        let (tx, rx) = oneshot::channel::<Result<ChatAck, ServiceError>>();
        replies.push_chat(6, Some(8), rx);
        drop(tx);
        assert_eq!(field(&replies.next().await.unwrap(), "reqid"), 8);
    }
}
