//! What one legacy session has been handed, so that the server can do for the original client
//! what a clusterchat client does for itself: drop repeated messages (it cannot, having no
//! `message_id`), and notice gaps in a conversation's `seq` (it cannot, having no `seq`).
//!
//! - Repeats: the ids of the last [`WINDOW`] messages handed over; a push repeating one (a push
//!   racing the login reply's `offlinemsg`, a resend with a txnid) is dropped.
//! - Positions: per conversation, the highest `seq` up to which everything was handed over (or
//!   sent by this very connection). Only this contiguous position is ever written to the
//!   user's read cursor, so a message missed live is never marked read: it comes in `offlinemsg`
//!   at the next login if the gap could not be filled at once.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use serde_json::Value;

use crate::protocol::{Target, msgid};

/// How many handed-over message ids are remembered for de-duplication.
pub const WINDOW: usize = 4096;

/// A chat as the tracker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatRef {
    /// The conversation, from this user's side.
    pub target: Target,
    /// Its position in the conversation.
    pub seq: i64,
    /// Server-assigned id.
    pub message_id: i64,
    /// Who sent it.
    pub sender: i64,
}

/// Where a chat stands relative to what was handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Already handed over: drop it.
    Repeat,
    /// The next one (or the first seen in its conversation): hand it over.
    InOrder,
    /// Earlier seqs were not handed over yet: fill the gap after this position first.
    Gap {
        /// Everything up to here was handed over.
        after: i64,
    },
    /// Older than the position but not seen (arrived late, out of order): hand it over.
    Late,
}

/// The state of one logged-in legacy session.
#[derive(Debug)]
pub struct Tracker {
    /// The session's user.
    me: i64,
    /// Handed-over message ids, oldest first, at most [`WINDOW`].
    recent: VecDeque<i64>,
    /// The same ids, for lookups.
    seen: HashSet<i64>,
    /// Contiguous position per conversation.
    upto: HashMap<Target, i64>,
    /// Seqs above a position sent by this connection, absorbed when the position reaches them.
    ahead: HashMap<Target, BTreeSet<i64>>,
}

impl Tracker {
    /// A fresh tracker for user `me`.
    pub fn new(me: i64) -> Self {
        Tracker {
            me,
            recent: VecDeque::new(),
            seen: HashSet::new(),
            upto: HashMap::new(),
            ahead: HashMap::new(),
        }
    }

    /// The chat a clusterchat chat object describes, seen from this user's side.
    pub fn chat_ref(&self, v: &Value) -> Option<ChatRef> {
        let sender = v.get("id")?.as_i64()?;
        let target = match v.get("msgid")?.as_i64()? {
            msgid::ONE_CHAT => {
                let toid = v.get("toid")?.as_i64()?;
                Target::User(if sender == self.me { toid } else { sender })
            }
            msgid::GROUP_CHAT => Target::Group(v.get("groupid")?.as_i64()?),
            _ => return None,
        };
        Some(ChatRef {
            target,
            seq: v.get("seq")?.as_i64()?,
            message_id: v.get("message_id")?.as_i64()?,
            sender,
        })
    }

    /// The user of the session.
    pub fn me(&self) -> i64 {
        self.me
    }

    /// Where `chat` stands.
    pub fn arrival(&self, chat: &ChatRef) -> Arrival {
        if self.seen.contains(&chat.message_id) {
            return Arrival::Repeat;
        }
        match self.upto.get(&chat.target) {
            None => Arrival::InOrder,
            Some(&p) if chat.seq == p + 1 => Arrival::InOrder,
            Some(&p) if chat.seq > p + 1 => Arrival::Gap { after: p },
            Some(_) => Arrival::Late,
        }
    }

    /// Whether message `id` was handed over.
    pub fn is_seen(&self, id: i64) -> bool {
        self.seen.contains(&id)
    }

    /// Records that message `id` was handed over.
    pub fn remember(&mut self, id: i64) {
        if !self.seen.insert(id) {
            return;
        }
        self.recent.push_back(id);
        if self.recent.len() > WINDOW
            && let Some(old) = self.recent.pop_front()
        {
            self.seen.remove(&old);
        }
    }

    /// Everything of `target` up to `seq` is handed over; returns the new position if it moved.
    pub fn reached(&mut self, target: Target, seq: i64) -> Option<i64> {
        let before = self.upto.get(&target).copied();
        let mut p = before.map_or(seq, |p| p.max(seq));
        if let Some(ahead) = self.ahead.get_mut(&target) {
            while ahead.first().is_some_and(|&s| s <= p + 1) {
                if let Some(s) = ahead.pop_first() {
                    p = p.max(s);
                }
            }
            if ahead.is_empty() {
                self.ahead.remove(&target);
            }
        }
        self.upto.insert(target, p);
        (before != Some(p)).then_some(p)
    }

    /// This connection sent `seq` in `target` (its ack arrived); returns the new position if it
    /// moved. A seq beyond a gap waits until the gap is filled.
    pub fn sent(&mut self, target: Target, seq: i64) -> Option<i64> {
        match self.upto.get(&target) {
            Some(&p) if seq > p + 1 => {
                self.ahead.entry(target).or_default().insert(seq);
                None
            }
            Some(&p) if seq <= p => None,
            _ => self.reached(target, seq),
        }
    }

    /// The contiguous position in `target`, if known.
    pub fn position(&self, target: Target) -> Option<i64> {
        self.upto.get(&target).copied()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn one(seq: i64, message_id: i64, sender: i64) -> ChatRef {
        ChatRef {
            target: Target::User(2),
            seq,
            message_id,
            sender,
        }
    }

    #[test]
    fn a_one_to_one_chat_is_seen_from_the_users_side() {
        let t = Tracker::new(1);
        let from_bob = json!({"msgid":6,"message_id":9,"seq":3,"id":2,"toid":1});
        assert_eq!(t.chat_ref(&from_bob).expect("chat").target, Target::User(2));
        let mine_elsewhere = json!({"msgid":6,"message_id":9,"seq":3,"id":1,"toid":2});
        assert_eq!(
            t.chat_ref(&mine_elsewhere).expect("chat").target,
            Target::User(2)
        );
        let group = json!({"msgid":10,"message_id":9,"seq":3,"id":2,"groupid":7});
        assert_eq!(t.chat_ref(&group).expect("chat").target, Target::Group(7));
        assert!(t.chat_ref(&json!({"msgid":19,"id":2})).is_none());
    }

    #[test]
    fn repeats_are_recognised_and_the_window_is_bounded() {
        let mut t = Tracker::new(1);
        t.remember(5);
        assert_eq!(t.arrival(&one(1, 5, 2)), Arrival::Repeat);
        for id in 100..100 + WINDOW as i64 {
            t.remember(id);
        }
        assert!(!t.is_seen(5), "the oldest id left the window");
        assert!(t.is_seen(100 + WINDOW as i64 - 1));
        assert_eq!(t.recent.len(), WINDOW);
    }

    #[test]
    fn gaps_are_found_and_positions_only_move_contiguously() {
        let mut t = Tracker::new(1);
        assert_eq!(t.arrival(&one(4, 40, 2)), Arrival::InOrder, "first seen");
        assert_eq!(t.reached(Target::User(2), 4), Some(4));
        assert_eq!(t.arrival(&one(5, 50, 2)), Arrival::InOrder);
        assert_eq!(t.arrival(&one(7, 70, 2)), Arrival::Gap { after: 4 });
        assert_eq!(t.arrival(&one(3, 30, 2)), Arrival::Late);
        assert_eq!(t.reached(Target::User(2), 3), None, "never backwards");
    }

    #[test]
    fn own_sends_beyond_a_gap_wait_for_it() {
        let mut t = Tracker::new(1);
        let bob = Target::User(2);
        assert_eq!(t.sent(bob, 1), Some(1), "first in the conversation");
        assert_eq!(t.sent(bob, 2), Some(2));
        // Bob's 3 is still on its way when our 4 is acked.
        assert_eq!(t.sent(bob, 4), None);
        assert_eq!(t.position(bob), Some(2));
        assert_eq!(t.reached(bob, 3), Some(4), "3 arrives, 4 is absorbed");
        assert_eq!(t.sent(bob, 4), None, "already counted");
    }
}
