//! The hot loop of `chat` and `group`: one task per logged-in user, reading and writing its
//! socket in a single `select!` loop.
//!
//! A sender writes stamped messages (see [`crate::client::stamped_send`]): open loop on a fixed
//! schedule (latency counts from the time a message was *due*, so a stalled server cannot hide
//! its queueing: no coordinated omission), or closed loop keeping `window` unacked messages in
//! flight. Replies come in request order, so in-flight sends are a queue matched by `reqid`.
//! Every user records what it receives by (sender, seq) so that lost messages (acked but
//! never delivered) and duplicates can be counted at the end.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Frame, instant_at, now_us, parse_stamp, stamped_send};
use crate::histogram::Histogram;
use crate::net::{Ws, next_ready};
use crate::progress::Progress;
use crate::scenario::Timeline;

/// Progress counters of the peer loop.
pub const SENT: usize = 0;
/// Sends acked with errno 0.
pub const ACKED: usize = 1;
/// Pushes received.
pub const DELIVERED: usize = 2;
/// Sends answered with an error.
pub const REJECTED: usize = 3;
/// Labels of the counters, in order.
pub const LABELS: &[&str] = &["sent", "acked", "delivered", "rejected"];

/// Where a sender sends.
#[derive(Debug, Clone, Copy)]
pub enum Dest {
    /// 1:1 to this user id.
    User(i64),
    /// To this group.
    Group(i64),
}

/// How a sender paces itself.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// One message every `period_us`, the first one due at `first_due`.
    Open { period_us: u64, first_due: u64 },
    /// As fast as acks come back.
    Closed,
}

/// What one user does.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// This user's index in stamps.
    pub index: u32,
    /// Where it sends (`None`: it only receives).
    pub dest: Option<Dest>,
    /// Its pace.
    pub pace: Pace,
    /// Most unacked messages in flight.
    pub window: usize,
    /// Bytes of each text.
    pub size: usize,
    /// The reqid to start from.
    pub first_reqid: i64,
    /// The group whose pushes count (group scenario); 1:1 pushes count otherwise.
    pub group: Option<i64>,
}

/// What one user saw.
#[derive(Default)]
pub struct PeerResult {
    /// Send → ack, for messages due in the window.
    pub ack: Histogram,
    /// Send → push received, for messages due in the window.
    pub delivery: Histogram,
    /// Messages sent.
    pub sent: u64,
    /// By own seq: acked with errno 0, and when the message was due.
    pub acked: Vec<Option<u64>>,
    /// Sends answered with an error.
    pub rejected: u64,
    /// A few of those errors.
    pub errors: Vec<String>,
    /// Sends still unacked when the run stopped.
    pub unacked: u64,
    /// By sender index: latency + 1 in µs by the sender's seq (0: not received).
    pub received: HashMap<u32, Vec<u32>>,
    /// Pushes received during the window.
    pub delivered_in_window: u64,
    /// Acks received during the window.
    pub acked_in_window: u64,
    /// Pushes received twice.
    pub duplicates: u64,
    /// RESYNC_MSG pushes received.
    pub resyncs: u64,
    /// The socket failed or was closed by the server before the end.
    pub disconnected: Option<String>,
}

impl PeerResult {
    /// Whether user `receiver`'s results hold message `seq` of sender `index`.
    pub fn has(&self, index: u32, seq: usize) -> bool {
        self.received
            .get(&index)
            .and_then(|v| v.get(seq))
            .is_some_and(|&l| l > 0)
    }
}

struct InFlight {
    reqid: i64,
    seq: u64,
    due: u64,
}

/// Runs one user until `stop` flips.
pub async fn run(
    mut ws: Ws,
    plan: Plan,
    timeline: Timeline,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> PeerResult {
    let mut out = PeerResult::default();
    let mut inflight: VecDeque<InFlight> = VecDeque::with_capacity(plan.window);
    let mut reqid = plan.first_reqid;
    let mut seq: u64 = 0;
    let mut next_due = match plan.pace {
        Pace::Open { first_due, .. } => first_due,
        Pace::Closed => timeline.start,
    };
    tokio::time::sleep_until(instant_at(timeline.start)).await;
    loop {
        let now = now_us();
        let sending = plan.dest.is_some() && now < timeline.send_end;
        if sending {
            let mut fed = 0u64;
            while inflight.len() < plan.window {
                let due = match plan.pace {
                    Pace::Open { period_us, .. } => {
                        if next_due > now || next_due >= timeline.send_end {
                            break;
                        }
                        let due = next_due;
                        next_due += period_us;
                        due
                    }
                    Pace::Closed => now,
                };
                let (group, to) = match plan.dest {
                    Some(Dest::User(to)) => (false, to),
                    Some(Dest::Group(g)) => (true, g),
                    None => break,
                };
                let frame = stamped_send(group, reqid, to, (plan.index, seq, due), plan.size);
                if let Err(e) = ws.feed(Message::Text(frame.into())).await {
                    out.disconnected = Some(e.to_string());
                    break;
                }
                inflight.push_back(InFlight { reqid, seq, due });
                reqid += 1;
                seq += 1;
                fed += 1;
            }
            if fed > 0 {
                out.sent += fed;
                progress.add(SENT, fed);
                if let Err(e) = ws.flush().await {
                    out.disconnected = Some(e.to_string());
                }
            }
            if out.disconnected.is_some() {
                break;
            }
        }
        let wake = match plan.pace {
            Pace::Open { .. } if sending && inflight.len() < plan.window => {
                next_due.min(timeline.send_end)
            }
            _ if sending => timeline.send_end,
            _ => now + 100_000,
        };
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            incoming = ws.next() => {
                let mut incoming = incoming;
                // Handle this frame and every other one already read, then send again.
                for handled in 1..=256 {
                    match incoming {
                        Some(Ok(Message::Text(text))) => {
                            on_text(&text, &plan, &timeline, &mut inflight, &mut out, &progress);
                        }
                        Some(Ok(Message::Close(c))) => {
                            out.disconnected = Some(format!("closed by the server: {c:?}"));
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            out.disconnected = Some(e.to_string());
                            break;
                        }
                        None => {
                            out.disconnected = Some("connection closed".into());
                            break;
                        }
                    }
                    match next_ready(&mut ws, handled, 256) {
                        Some(next) => incoming = next,
                        None => break,
                    }
                }
                if out.disconnected.is_some() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(instant_at(wake)) => {}
        }
    }
    out.unacked = inflight.len() as u64;
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), ws.close(None)).await;
    out
}

fn on_text(
    text: &str,
    plan: &Plan,
    timeline: &Timeline,
    inflight: &mut VecDeque<InFlight>,
    out: &mut PeerResult,
    progress: &Progress,
) {
    let Some(frame) = Frame::parse(text) else {
        return;
    };
    let now = now_us();
    match frame.msgid {
        11 | 20 => {
            let Some(r) = frame.reqid else { return };
            let Some(pos) = inflight.iter().position(|f| f.reqid == r) else {
                return;
            };
            let Some(sent) = inflight.remove(pos) else {
                return;
            };
            if frame.errno == Some(0) && frame.message_id.is_some() {
                let slot = sent.seq as usize;
                if out.acked.len() <= slot {
                    out.acked.resize(slot + 1, None);
                }
                out.acked[slot] = Some(sent.due);
                if timeline.measured(sent.due) {
                    out.ack.record(now.saturating_sub(sent.due));
                }
                if timeline.measured(now) {
                    out.acked_in_window += 1;
                }
                progress.add(ACKED, 1);
            } else {
                out.rejected += 1;
                if out.errors.len() < 5 {
                    out.errors.push(text.to_owned());
                }
                progress.add(REJECTED, 1);
            }
        }
        6 | 10 => {
            let counts = match plan.group {
                Some(g) => frame.msgid == 10 && frame.groupid == Some(g),
                None => frame.msgid == 6,
            };
            if !counts {
                return;
            }
            let Some((sender, seq, due)) = frame.msg.as_deref().and_then(parse_stamp) else {
                return;
            };
            let latency = now.saturating_sub(due);
            let slots = out.received.entry(sender).or_default();
            let slot = seq as usize;
            if slots.len() <= slot {
                slots.resize(slot + 1, 0);
            }
            if slots[slot] != 0 {
                out.duplicates += 1;
                return;
            }
            slots[slot] = latency.min(u64::from(u32::MAX - 1)) as u32 + 1;
            if timeline.measured(due) {
                out.delivery.record(latency);
            }
            if timeline.measured(now) {
                out.delivered_in_window += 1;
            }
            progress.add(DELIVERED, 1);
        }
        21 => out.resyncs += 1,
        _ => {}
    }
}
