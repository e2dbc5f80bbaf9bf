//! `mixed`: a day in the life, compressed. U users, all logged in and spread over the URLs
//! (or one nginx URL), each with F friends and in one group of S members, make requests at
//! random (Poisson) times: 60 % 1:1 messages to a random friend, 20 % group messages, 10 %
//! HISTORY_MSG of a friend conversation, 10 % READ_MSG up to the last seq seen there.
//! Figures: requests/s, reply latency per kind, delivery latency, lost deliveries.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::MixedArgs;
use crate::client::{Frame, instant_at, now_us, parse_stamp, stamped_send};
use crate::histogram::{Histogram, Latency};
use crate::net::{Ws, next_ready};
use crate::procfs::CpuSplit;
use crate::progress::Progress;
use crate::report::Outcome;
use crate::scenario::{Ctx, Timeline, coordinate, per_sec};
use crate::setup;

/// Kinds of request, in table order.
const KINDS: [&str; 4] = ["chat", "group", "history", "read"];
/// Cumulative weights of [`KINDS`] out of 100.
const WEIGHTS: [u32; 4] = [60, 80, 90, 100];
/// Requests one user may have unanswered.
const WINDOW: usize = 64;

/// Progress counters.
const REQUESTS: usize = 0;
const REPLIES: usize = 1;
const DELIVERED: usize = 2;
const ERRORS: usize = 3;
const EXPECTED: usize = 4;

/// Figures of one kind of request.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct KindResult {
    /// Kind (`chat`, `group`, `history`, `read`).
    pub kind: String,
    /// Successful replies per second (window).
    pub per_sec: f64,
    /// Request due → reply.
    pub latency: Latency,
    /// Replies with errno ≠ 0.
    pub errors: u64,
}

/// Figures of a mixed run.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct MixedResult {
    /// Users.
    pub users: usize,
    /// Successful replies per second, all kinds (window).
    pub requests_per_sec: f64,
    /// Per kind.
    pub kinds: Vec<KindResult>,
    /// Pushes of chat and group messages received per second (window).
    pub deliveries_per_sec: f64,
    /// Send → push, 1:1 and group.
    pub delivery: Latency,
    /// Acked messages (1:1 and group).
    pub acked_messages: u64,
    /// (message, recipient) pairs acked but never delivered.
    pub lost: u64,
    /// Pushes received twice.
    pub duplicates: u64,
    /// Requests not sent because the user already had too many in flight.
    pub skipped: u64,
    /// Requests never answered.
    pub unanswered: u64,
    /// RESYNC_MSG pushes received.
    pub resyncs: u64,
    /// Failed connections.
    pub disconnected: u64,
    /// Whether everything arrived before the drain deadline.
    pub drained: bool,
    /// A few errors.
    pub errors: Vec<String>,
    /// CPU split during the window.
    pub cpu: CpuSplit,
}

/// Who a user is and whom it talks to.
#[derive(Clone)]
struct Role {
    index: u32,
    friends: Vec<i64>,
    group: i64,
    group_peers: u64,
    first_reqid: i64,
}

/// What a sent message was, to check its delivery.
#[derive(Clone, Copy)]
enum Sent {
    Chat(i64),
    Group,
}

#[derive(Default)]
struct UserResult {
    replies: [Histogram; 4],
    ok_in_window: [u64; 4],
    errors: [u64; 4],
    error_samples: Vec<String>,
    delivery: Histogram,
    delivered_in_window: u64,
    acked: Vec<Option<Sent>>,
    received: HashMap<u32, HashSet<u64>>,
    duplicates: u64,
    skipped: u64,
    unanswered: u64,
    resyncs: u64,
    disconnected: Option<String>,
}

/// The `mixed` scenario.
pub async fn run(ctx: &Ctx, args: &MixedArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.users >= 2, "--users must be at least 2");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let users = args.users;
    let group_size = args.group_size.max(1);
    let progress = Progress::new(&["registered", "logged in", "set up"]);
    progress.spawn("mixed setup", ctx.common.quiet);
    let names: Vec<String> = (0..users).map(|i| format!("{}m{i}", ctx.prefix)).collect();
    let ids = setup::register(ctx, &names, &progress, 0).await?;
    let mut logged = setup::login(ctx, &ids, &progress, 1).await?;

    // Friendships: i with i+1 … i+F/2 (mod U), each pair asked once, by its lower index.
    progress.phase("friends");
    let half = (args.friends / 2).max(1).min((users - 1) / 2).max(1);
    let mut pairs = HashSet::new();
    for i in 0..users {
        for k in 1..=half {
            let j = (i + k) % users;
            if i != j {
                pairs.insert((i.min(j), i.max(j)));
            }
        }
    }
    let mut friends: Vec<Vec<i64>> = vec![Vec::new(); users];
    let mut requests: Vec<Vec<serde_json::Value>> = vec![Vec::new(); users];
    for &(a, b) in &pairs {
        friends[a].push(ids[b]);
        friends[b].push(ids[a]);
        requests[a].push(setup::add_friend(ids[b]));
    }
    setup::each(ctx, &mut logged, requests, &progress, 2).await?;

    progress.phase("groups");
    let groups = users.div_ceil(group_size);
    let mut gids = Vec::with_capacity(groups);
    for g in 0..groups {
        let creator = &mut logged[g * group_size].client;
        gids.push(setup::create_group(creator, &format!("{}mg{g}", ctx.prefix)).await?);
    }
    let joins = (0..users)
        .map(|i| {
            if i % group_size == 0 {
                vec![]
            } else {
                vec![setup::join_group(gids[i / group_size])]
            }
        })
        .collect();
    setup::each(ctx, &mut logged, joins, &progress, 2).await?;
    progress.finish();

    let progress = Progress::new(&["requests", "replies", "delivered", "errors", "expected"]);
    progress.spawn("mixed", ctx.common.quiet);
    let timeline = Timeline::new(&ctx.common);
    let rate_per_user = args.rate / users as f64;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(users);
    for (i, l) in logged.into_iter().enumerate() {
        let role = Role {
            index: i as u32,
            friends: friends[i].clone(),
            group: gids[i / group_size],
            group_peers: (((i / group_size + 1) * group_size).min(users)
                - (i / group_size) * group_size
                - 1) as u64,
            first_reqid: l.client.next_reqid(),
        };
        tasks.push(tokio::spawn(user(
            l.client.into_ws(),
            role,
            rate_per_user,
            args.size,
            timeline,
            progress.clone(),
            stop_rx.clone(),
        )));
    }
    let watch_progress = progress.clone();
    let (cpu, drained) = coordinate(timeline, &ctx.common, &[], &progress, stop_tx, move || {
        let p = &watch_progress;
        p.get(REQUESTS) == p.get(REPLIES) && p.get(DELIVERED) >= p.get(EXPECTED)
    })
    .await;
    let mut results = Vec::with_capacity(users);
    for t in tasks {
        results.push(t.await.context("a user task panicked")?);
    }
    progress.finish();

    let index_of: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut r = MixedResult {
        users,
        drained,
        cpu: cpu.clone(),
        ..MixedResult::default()
    };
    let mut replies: [Histogram; 4] = Default::default();
    let mut ok = [0u64; 4];
    let mut errors = [0u64; 4];
    let mut delivery = Histogram::default();
    let mut delivered_w = 0;
    for (u, res) in results.iter().enumerate() {
        for k in 0..4 {
            replies[k].merge(&res.replies[k]);
            ok[k] += res.ok_in_window[k];
            errors[k] += res.errors[k];
        }
        delivery.merge(&res.delivery);
        delivered_w += res.delivered_in_window;
        r.duplicates += res.duplicates;
        r.skipped += res.skipped;
        r.unanswered += res.unanswered;
        r.resyncs += res.resyncs;
        r.disconnected += u64::from(res.disconnected.is_some());
        if r.errors.len() < 5 {
            r.errors.extend(res.error_samples.iter().take(3).cloned());
            if let Some(d) = &res.disconnected {
                r.errors.push(format!("user {u}: {d}"));
            }
        }
        for (seq, sent) in res.acked.iter().enumerate() {
            let Some(sent) = sent else { continue };
            r.acked_messages += 1;
            let has = |m: usize| {
                results[m]
                    .received
                    .get(&(u as u32))
                    .is_some_and(|s| s.contains(&(seq as u64)))
            };
            match *sent {
                Sent::Chat(to) => {
                    if let Some(&m) = index_of.get(&to) {
                        r.lost += u64::from(!has(m));
                    }
                }
                Sent::Group => {
                    let g = u / group_size;
                    for m in g * group_size..((g + 1) * group_size).min(users) {
                        if m != u {
                            r.lost += u64::from(!has(m));
                        }
                    }
                }
            }
        }
    }
    let secs = timeline.seconds();
    r.kinds = (0..4)
        .map(|k| KindResult {
            kind: KINDS[k].into(),
            per_sec: ok[k] as f64 / secs,
            latency: replies[k].summary(),
            errors: errors[k],
        })
        .collect();
    r.requests_per_sec = ok.iter().sum::<u64>() as f64 / secs;
    r.deliveries_per_sec = delivered_w as f64 / secs;
    r.delivery = delivery.summary();

    let mut rows = vec![
        (
            "users / friends / group size".into(),
            format!("{users} / {} / {group_size}", half * 2),
        ),
        ("requests".into(), per_sec(r.requests_per_sec, "req")),
    ];
    for k in &r.kinds {
        rows.push((
            format!("{} p50/p99/p999/max", k.kind),
            format!(
                "{} ({}, {} errors)",
                k.latency.cell(),
                per_sec(k.per_sec, "req"),
                k.errors
            ),
        ));
    }
    rows.push(("deliveries".into(), per_sec(r.deliveries_per_sec, "pushes")));
    rows.push(("delivery p50/p99/p999/max".into(), r.delivery.cell()));
    rows.push((
        "acked msgs / lost deliveries / duplicates".into(),
        format!("{} / {} / {}", r.acked_messages, r.lost, r.duplicates),
    ));
    rows.push((
        "skipped / unanswered / disconnected / resyncs".into(),
        format!(
            "{} / {} / {} / {}{}",
            r.skipped,
            r.unanswered,
            r.disconnected,
            r.resyncs,
            if r.drained { "" } else { " (drain timed out)" }
        ),
    ));
    Ok(Outcome {
        params: json!({
            "users": users, "friends": half * 2, "group_size": group_size, "rate": args.rate,
            "size": args.size, "mix": {"chat": 60, "group": 20, "history": 10, "read": 10},
            "duration": ctx.common.duration, "warmup": ctx.common.warmup,
        }),
        result: json!(r),
        rows,
        cpu: Some(cpu),
    })
}

struct Pending {
    reqid: i64,
    kind: usize,
    due: u64,
    seq: Option<u64>,
    sent: Option<Sent>,
}

async fn user(
    mut ws: Ws,
    role: Role,
    rate: f64,
    size: usize,
    timeline: Timeline,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> UserResult {
    let mut out = UserResult::default();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut last_seq: HashMap<i64, i64> = HashMap::new();
    let mut reqid = role.first_reqid;
    let mut seq = 0u64;
    let gap = |r: f64| -> u64 {
        let u: f64 = rand::random_range(f64::EPSILON..1.0);
        (-u.ln() / r * 1e6) as u64
    };
    let mut next_due = timeline.start + gap(rate);
    tokio::time::sleep_until(instant_at(timeline.start)).await;
    loop {
        let now = now_us();
        let sending = now < timeline.send_end;
        let mut fed = 0;
        while sending && next_due <= now {
            let due = next_due;
            next_due += gap(rate);
            if pending.len() >= WINDOW {
                out.skipped += 1;
                continue;
            }
            let roll = rand::random_range(0..100u32);
            let kind = WEIGHTS.iter().position(|&w| roll < w).unwrap_or(0);
            let friend = role.friends[rand::random_range(0..role.friends.len())];
            let (frame, msg_seq, sent) = match kind {
                0 => (
                    stamped_send(false, reqid, friend, (role.index, seq, due), size),
                    Some(seq),
                    Some(Sent::Chat(friend)),
                ),
                1 => (
                    stamped_send(true, reqid, role.group, (role.index, seq, due), size),
                    Some(seq),
                    Some(Sent::Group),
                ),
                2 => (
                    format!(r#"{{"msgid":17,"reqid":{reqid},"toid":{friend},"limit":20}}"#),
                    None,
                    None,
                ),
                _ => {
                    let s = last_seq.get(&friend).copied().unwrap_or(0);
                    (
                        format!(r#"{{"msgid":18,"reqid":{reqid},"toid":{friend},"seq":{s}}}"#),
                        None,
                        None,
                    )
                }
            };
            if msg_seq.is_some() {
                seq += 1;
            }
            if let Err(e) = ws.feed(Message::Text(frame.into())).await {
                out.disconnected = Some(e.to_string());
                break;
            }
            pending.push_back(Pending {
                reqid,
                kind,
                due,
                seq: msg_seq,
                sent,
            });
            reqid += 1;
            fed += 1;
        }
        if fed > 0 {
            progress.add(REQUESTS, fed);
            if let Err(e) = ws.flush().await {
                out.disconnected = Some(e.to_string());
            }
        }
        if out.disconnected.is_some() {
            break;
        }
        let wake = if sending {
            next_due.min(timeline.send_end)
        } else {
            now + 100_000
        };
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            incoming = ws.next() => {
                let mut incoming = incoming;
                for handled in 1..=256 {
                    match incoming {
                        Some(Ok(Message::Text(text))) => {
                            on_text(&text, &role, &timeline, &mut pending, &mut last_seq, &mut out, &progress);
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
    out.unanswered = pending.len() as u64;
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), ws.close(None)).await;
    out
}

fn on_text(
    text: &str,
    role: &Role,
    timeline: &Timeline,
    pending: &mut VecDeque<Pending>,
    last_seq: &mut HashMap<i64, i64>,
    out: &mut UserResult,
    progress: &Progress,
) {
    let Some(frame) = Frame::parse(text) else {
        return;
    };
    let now = now_us();
    match frame.msgid {
        11 | 20 => {
            let Some(r) = frame.reqid else { return };
            let Some(pos) = pending.iter().position(|p| p.reqid == r) else {
                return;
            };
            let Some(p) = pending.remove(pos) else { return };
            progress.add(REPLIES, 1);
            if frame.errno != Some(0) {
                out.errors[p.kind] += 1;
                progress.add(ERRORS, 1);
                if out.error_samples.len() < 3 {
                    out.error_samples.push(text.to_owned());
                }
                return;
            }
            if timeline.measured(p.due) {
                out.replies[p.kind].record(now.saturating_sub(p.due));
            }
            if timeline.measured(now) {
                out.ok_in_window[p.kind] += 1;
            }
            if let (Some(s), Some(sent)) = (p.seq, p.sent) {
                let slot = s as usize;
                if out.acked.len() <= slot {
                    out.acked.resize(slot + 1, None);
                }
                out.acked[slot] = Some(sent);
                let expected = match sent {
                    Sent::Chat(_) => 1,
                    Sent::Group => role.group_peers,
                };
                progress.add(EXPECTED, expected);
            }
        }
        6 | 10 => {
            if let (6, Some(from), Some(s)) = (frame.msgid, frame.id, frame.seq) {
                let e = last_seq.entry(from).or_insert(0);
                *e = (*e).max(s);
            }
            let Some((sender, seq, due)) = frame.msg.as_deref().and_then(parse_stamp) else {
                return;
            };
            if !out.received.entry(sender).or_default().insert(seq) {
                out.duplicates += 1;
                return;
            }
            let latency = now.saturating_sub(due);
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
