//! A legacy connection's chat sends in flight, finished in request order.
//!
//! As in [`crate::replies`], only the oldest send is waited on and one timer per connection
//! serves every deadline: a first attempt costs no future of its own and no timer entry. A
//! send answered 503 (stored but not published, the pipeline stopped, or no answer in time) is
//! resent with the same txnid, since the original client cannot: only then is a future made,
//! for the resends and their back-off. While the oldest send is being resent, every send
//! behind it is polled too, so that an outage's failed sends are all resent at once rather
//! than one after another.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::delivery::ChatAck;
use crate::error::ServiceError;
use crate::protocol::Target;
use crate::replies::{AckReceiver, passed};

/// The resends of one chat send after a 503, up to the last attempt: its final outcome.
pub type Resending = Pin<Box<dyn Future<Output = Result<ChatAck, ServiceError>> + Send>>;

/// What a chat send was: enough to resend it as the same message.
#[derive(Debug, Clone)]
pub struct ChatSend {
    /// Recipient or group.
    pub target: Target,
    /// Text.
    pub msg: String,
    /// The server-made idempotency key, the same on every attempt.
    pub txnid: String,
}

/// How a chat send ended.
#[derive(Debug)]
pub struct Sent {
    /// Recipient or group.
    pub target: Target,
    /// Its ack, or why it was not sent.
    pub outcome: Result<ChatAck, ServiceError>,
}

/// What a send in flight waits for.
enum Wait {
    /// The first attempt's answer, until `deadline`.
    Ack { ack: AckReceiver, deadline: Instant },
    /// Its resends.
    Resending(Resending),
    /// Nothing: it ended while an older send was being resent.
    Ended(Result<ChatAck, ServiceError>),
}

/// A send in flight and what it waits for.
struct InFlight {
    send: ChatSend,
    wait: Wait,
}

/// A legacy connection's chat sends in flight, in request order.
pub struct Sends {
    queue: VecDeque<InFlight>,
    /// How long a first attempt may wait for its ack.
    timeout: Duration,
    /// Fires at (or before) the oldest first attempt's deadline; made on first need.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The answer of a pipeline that dropped a send without answering.
pub fn stopped() -> ServiceError {
    ServiceError::Unavailable("the message pipeline stopped".into())
}

/// The answer of a send not acked within the request time limit.
pub fn not_in_time() -> ServiceError {
    ServiceError::Unavailable("the message may not be stored yet".into())
}

impl Sends {
    /// No send in flight; first attempts time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Sends {
            queue: VecDeque::new(),
            timeout,
            timer: None,
        }
    }

    /// Sends in flight.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no send is in flight.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Adds a send submitted to the pipeline, answered through `ack`, behind the others.
    pub fn push(&mut self, send: ChatSend, ack: AckReceiver) {
        self.queue.push_back(InFlight {
            send,
            wait: Wait::Ack {
                ack,
                deadline: Instant::now() + self.timeout,
            },
        });
    }

    /// The oldest send once it has ended (`None`: none in flight). A first attempt that ends
    /// in a 503 is handed to `resend`, and ends with the resends' outcome if it returns them
    /// (with the 503 if it does not, as when the server is stopping).
    pub async fn next(
        &mut self,
        mut resend: impl FnMut(&ChatSend) -> Option<Resending>,
    ) -> Option<Sent> {
        std::future::poll_fn(|cx| self.poll_next(cx, &mut resend)).await
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        resend: &mut impl FnMut(&ChatSend) -> Option<Resending>,
    ) -> Poll<Option<Sent>> {
        loop {
            let Some(front) = self.queue.front_mut() else {
                return Poll::Ready(None);
            };
            let outcome = match &mut front.wait {
                Wait::Ended(outcome) => std::mem::replace(outcome, Err(stopped())),
                Wait::Resending(resends) => match resends.as_mut().poll(cx) {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => {
                        // While it is resent, the sends behind it may fail too (an outage
                        // fails them all): theirs start now, not one after another.
                        self.advance_the_rest(cx, resend);
                        return Poll::Pending;
                    }
                },
                Wait::Ack { ack, deadline } => {
                    let first = match Pin::new(ack).poll(cx) {
                        Poll::Ready(answer) => answer.unwrap_or_else(|_| Err(stopped())),
                        Poll::Pending => {
                            if !passed(&mut self.timer, *deadline, cx) {
                                return Poll::Pending;
                            }
                            Err(not_in_time())
                        }
                    };
                    match after_first(first, &front.send, resend) {
                        Wait::Ended(outcome) => outcome,
                        waiting => {
                            front.wait = waiting;
                            continue;
                        }
                    }
                }
            };
            let done = self.queue.pop_front().expect("the front was just polled");
            return Poll::Ready(Some(Sent {
                target: done.send.target,
                outcome,
            }));
        }
    }

    /// Polls every send behind the front: answered first attempts end or start their
    /// resends, resends run. (Their deadlines are watched once each is the oldest.)
    fn advance_the_rest(
        &mut self,
        cx: &mut Context<'_>,
        resend: &mut impl FnMut(&ChatSend) -> Option<Resending>,
    ) {
        for entry in self.queue.iter_mut().skip(1) {
            loop {
                match &mut entry.wait {
                    Wait::Ended(_) => break,
                    Wait::Ack { ack, .. } => match Pin::new(ack).poll(cx) {
                        Poll::Ready(answer) => {
                            let first = answer.unwrap_or_else(|_| Err(stopped()));
                            entry.wait = after_first(first, &entry.send, resend);
                        }
                        Poll::Pending => break,
                    },
                    Wait::Resending(resends) => {
                        if let Poll::Ready(outcome) = resends.as_mut().poll(cx) {
                            entry.wait = Wait::Ended(outcome);
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// What follows a first attempt's answer: its resends after a 503 when `resend` gives them,
/// else the end.
fn after_first(
    first: Result<ChatAck, ServiceError>,
    send: &ChatSend,
    resend: &mut impl FnMut(&ChatSend) -> Option<Resending>,
) -> Wait {
    if let Err(ServiceError::Unavailable(reason)) = &first
        && let Some(resends) = resend(send)
    {
        tracing::debug!("legacy chat resent after: {reason}");
        return Wait::Resending(resends);
    }
    Wait::Ended(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn send(n: i64) -> ChatSend {
        ChatSend {
            target: Target::User(n),
            msg: format!("m{n}"),
            txnid: format!("t{n}"),
        }
    }

    fn ack(seq: i64) -> Result<ChatAck, ServiceError> {
        Ok(ChatAck {
            message_id: seq,
            seq,
            time_ms: 0,
        })
    }

    fn never(_: &ChatSend) -> Option<Resending> {
        panic!("nothing is resent here")
    }

    #[tokio::test]
    async fn sends_end_in_request_order_whatever_order_acks_arrive_in() {
        let mut sends = Sends::new(Duration::from_secs(60));
        let (first_tx, first) = oneshot::channel();
        let (second_tx, second) = oneshot::channel();
        sends.push(send(1), first);
        sends.push(send(2), second);
        second_tx.send(ack(20)).unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), sends.next(never)).await;
        assert!(waiting.is_err(), "the first send is not answered yet");
        first_tx.send(ack(10)).unwrap();
        let a = sends.next(never).await.unwrap();
        let b = sends.next(never).await.unwrap();
        assert_eq!(a.target, Target::User(1));
        assert_eq!(a.outcome.unwrap().seq, 10);
        assert_eq!(b.target, Target::User(2));
        assert_eq!(b.outcome.unwrap().seq, 20);
        assert!(sends.is_empty());
        assert!(sends.next(never).await.is_none());
    }

    #[tokio::test]
    async fn a_503_is_resent_as_the_same_message_and_ends_with_the_resends_outcome() {
        let mut sends = Sends::new(Duration::from_secs(60));
        let (tx, rx) = oneshot::channel();
        sends.push(send(1), rx);
        let (later_tx, later) = oneshot::channel();
        sends.push(send(2), later);
        tx.send(Err(ServiceError::Unavailable("not published".into())))
            .unwrap();
        later_tx.send(ack(2)).unwrap();
        let mut resent = Vec::new();
        let first = sends
            .next(|s| {
                resent.push(s.clone());
                Some(Box::pin(async { ack(1) }))
            })
            .await
            .unwrap();
        assert_eq!(resent.len(), 1);
        assert_eq!(
            (resent[0].msg.as_str(), resent[0].txnid.as_str()),
            ("m1", "t1")
        );
        assert_eq!(first.outcome.unwrap().seq, 1);
        assert_eq!(sends.next(never).await.unwrap().outcome.unwrap().seq, 2);
    }

    #[tokio::test]
    async fn other_errors_are_not_resent_and_a_refused_resend_keeps_the_503() {
        let mut sends = Sends::new(Duration::from_secs(60));
        let (tx, rx) = oneshot::channel();
        sends.push(send(1), rx);
        tx.send(Err(ServiceError::NotFound("no user".into())))
            .unwrap();
        let refused = sends.next(never).await.unwrap();
        assert_eq!(refused.outcome.unwrap_err().errno(), 404);

        let (tx, rx) = oneshot::channel::<Result<ChatAck, ServiceError>>();
        sends.push(send(2), rx);
        drop(tx);
        let stopped = sends.next(|_| None).await.unwrap();
        assert_eq!(stopped.outcome.unwrap_err().errno(), 503);
    }

    #[tokio::test]
    async fn sends_failing_behind_one_being_resent_are_resent_at_once_not_in_turn() {
        let mut sends = Sends::new(Duration::from_secs(60));
        let mut answers = Vec::new();
        for n in 1..=3 {
            let (tx, rx) = oneshot::channel();
            sends.push(send(n), rx);
            answers.push(tx);
        }
        for tx in answers {
            tx.send(Err(ServiceError::Unavailable("not published".into())))
                .unwrap();
        }
        // Each resend completes only when released; all three must have started while the
        // first is still being resent.
        let mut releases = Vec::new();
        let mut started = Vec::new();
        let mut resend = |s: &ChatSend| {
            let (release, released) = oneshot::channel::<()>();
            releases.push(release);
            started.push(s.txnid.clone());
            let Target::User(seq) = s.target else {
                unreachable!("the sends here are 1:1")
            };
            Some(Box::pin(async move {
                let _ = released.await;
                ack(seq)
            }) as Resending)
        };
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), sends.next(&mut resend)).await;
        assert!(waiting.is_err(), "no resend was released yet");
        assert_eq!(started, ["t1", "t2", "t3"]);
        // Released last to first: they still end in request order.
        for release in releases.drain(..).rev() {
            release.send(()).unwrap();
        }
        let seqs: Vec<i64> = [
            sends.next(never).await.unwrap(),
            sends.next(never).await.unwrap(),
            sends.next(never).await.unwrap(),
        ]
        .into_iter()
        .map(|sent| sent.outcome.unwrap().seq)
        .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_send_acked_while_an_older_one_is_resent_ends_after_it_with_its_own_ack() {
        let mut sends = Sends::new(Duration::from_secs(60));
        let (first_tx, first) = oneshot::channel();
        let (second_tx, second) = oneshot::channel();
        let (third_tx, third) = oneshot::channel();
        sends.push(send(1), first);
        sends.push(send(2), second);
        sends.push(send(3), third);
        first_tx
            .send(Err(ServiceError::Unavailable("not published".into())))
            .unwrap();
        second_tx.send(ack(20)).unwrap();
        let (release, released) = oneshot::channel::<()>();
        let mut resend = Some(move |_: &ChatSend| {
            Some(Box::pin(async move {
                let _ = released.await;
                ack(10)
            }) as Resending)
        });
        let waiting = tokio::time::timeout(
            Duration::from_millis(50),
            sends.next(|s| resend.take().expect("one resend")(s)),
        )
        .await;
        assert!(waiting.is_err(), "the first send is still being resent");
        third_tx.send(ack(30)).unwrap();
        release.send(()).unwrap();
        let ended: Vec<(Target, i64)> = [
            sends.next(never).await.unwrap(),
            sends.next(never).await.unwrap(),
            sends.next(never).await.unwrap(),
        ]
        .into_iter()
        .map(|sent| (sent.target, sent.outcome.unwrap().seq))
        .collect();
        assert_eq!(
            ended,
            [
                (Target::User(1), 10),
                (Target::User(2), 20),
                (Target::User(3), 30)
            ]
        );
        assert!(sends.is_empty());
    }

    #[tokio::test]
    async fn an_unanswered_first_attempt_times_out_into_a_resend() {
        let mut sends = Sends::new(Duration::from_millis(30));
        let (_kept, rx) = oneshot::channel();
        sends.push(send(1), rx);
        let mut resends = 0;
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            sends.next(|_| {
                resends += 1;
                Some(Box::pin(async { ack(5) }))
            }),
        )
        .await
        .expect("the deadline passed")
        .unwrap();
        assert_eq!(resends, 1);
        assert_eq!(sent.outcome.unwrap().seq, 5);
    }
}
