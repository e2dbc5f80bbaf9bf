//! `group`: one group of M members, all logged in (spread over the URLs); S of them send group
//! messages at a fixed total rate (open loop). Figures: delivery latency to each member
//! (p50/p99/p999), the latency until the *last* member has a message (p50/p99), deliveries/s,
//! and lost deliveries (a member missing an acked message).

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::cli::GroupArgs;
use crate::histogram::{Histogram, Latency};
use crate::procfs::CpuSplit;
use crate::progress::Progress;
use crate::report::Outcome;
use crate::scenario::peer::{self, Dest, Pace, Plan};
use crate::scenario::{Ctx, Timeline, coordinate, per_sec};
use crate::setup;

/// Figures of a group run.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct GroupResult {
    /// Members.
    pub members: usize,
    /// Group messages acked per second (window).
    pub messages_per_sec: f64,
    /// Pushes received per second, all members together (window).
    pub deliveries_per_sec: f64,
    /// Group messages sent.
    pub sent: u64,
    /// Acked with errno 0.
    pub acked: u64,
    /// Answered with an error.
    pub rejected: u64,
    /// Never acked.
    pub unacked: u64,
    /// Pushes received.
    pub delivered: u64,
    /// (message, member) pairs acked but never delivered.
    pub lost: u64,
    /// Pushes received twice.
    pub duplicates: u64,
    /// RESYNC_MSG pushes received.
    pub resyncs: u64,
    /// Members whose connection failed.
    pub disconnected: u64,
    /// Whether everything arrived before the drain deadline.
    pub drained: bool,
    /// Send → ack.
    pub ack: Latency,
    /// Send → push, every (message, member).
    pub delivery: Latency,
    /// Send → the last member has it, per message.
    pub last_member: Latency,
    /// A few errors.
    pub errors: Vec<String>,
    /// CPU split during the window.
    pub cpu: CpuSplit,
}

/// The `group` scenario.
pub async fn run(ctx: &Ctx, args: &GroupArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.members >= 2, "--members must be at least 2");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let members = args.members;
    let senders = args.senders.clamp(1, members);
    let progress = Progress::new(&["registered", "logged in", "joined"]);
    progress.spawn("group setup", ctx.common.quiet);
    let names: Vec<String> = (0..members)
        .map(|i| format!("{}g{i}", ctx.prefix))
        .collect();
    let ids = setup::register(ctx, &names, &progress, 0).await?;
    let mut logged = setup::login(ctx, &ids, &progress, 1).await?;
    progress.phase("join");
    let gid = setup::create_group(&mut logged[0].client, &format!("{}group", ctx.prefix)).await?;
    let joins = (0..members)
        .map(|i| {
            if i == 0 {
                vec![]
            } else {
                vec![setup::join_group(gid)]
            }
        })
        .collect();
    setup::each(ctx, &mut logged, joins, &progress, 2).await?;
    progress.finish();

    let progress = Progress::new(peer::LABELS);
    progress.spawn("group", ctx.common.quiet);
    let timeline = Timeline::new(&ctx.common);
    let period_us = (1e6 * senders as f64 / args.rate).max(1.0) as u64;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(members);
    for (i, l) in logged.into_iter().enumerate() {
        let plan = Plan {
            index: i as u32,
            dest: (i < senders).then_some(Dest::Group(gid)),
            pace: Pace::Open {
                period_us,
                first_due: timeline.start + rand::random_range(0..period_us),
            },
            window: 64,
            size: args.size,
            first_reqid: l.client.next_reqid(),
            group: Some(gid),
        };
        tasks.push(tokio::spawn(peer::run(
            l.client.into_ws(),
            plan,
            timeline,
            progress.clone(),
            stop_rx.clone(),
        )));
    }
    let fanout = (members - 1) as u64;
    let watch_progress = progress.clone();
    let (cpu, drained) = coordinate(timeline, &ctx.common, &[], &progress, stop_tx, move || {
        let p = &watch_progress;
        p.get(peer::SENT) == p.get(peer::ACKED) + p.get(peer::REJECTED)
            && p.get(peer::DELIVERED) >= p.get(peer::ACKED) * fanout
    })
    .await;
    let mut results = Vec::with_capacity(members);
    for t in tasks {
        results.push(t.await.context("a member task panicked")?);
    }
    progress.finish();
    let r = summarize(&results, senders, &timeline, cpu.clone(), drained);
    let rows = vec![
        ("members / senders".into(), format!("{members} / {senders}")),
        ("group messages".into(), per_sec(r.messages_per_sec, "msgs")),
        ("deliveries".into(), per_sec(r.deliveries_per_sec, "pushes")),
        ("ack p50/p99/p999/max".into(), r.ack.cell()),
        ("each member p50/p99/p999/max".into(), r.delivery.cell()),
        ("last member p50/p99/p999/max".into(), r.last_member.cell()),
        (
            "sent / acked / delivered".into(),
            format!("{} / {} / {}", r.sent, r.acked, r.delivered),
        ),
        (
            "lost deliveries / duplicates".into(),
            format!("{} / {}", r.lost, r.duplicates),
        ),
        (
            "rejected / unacked / disconnected / resyncs".into(),
            format!(
                "{} / {} / {} / {}{}",
                r.rejected,
                r.unacked,
                r.disconnected,
                r.resyncs,
                if r.drained { "" } else { " (drain timed out)" }
            ),
        ),
    ];
    Ok(Outcome {
        params: json!({
            "members": members, "senders": senders, "rate": args.rate, "size": args.size,
            "duration": ctx.common.duration, "warmup": ctx.common.warmup,
        }),
        result: json!(r),
        rows,
        cpu: Some(cpu),
    })
}

fn summarize(
    results: &[peer::PeerResult],
    senders: usize,
    timeline: &Timeline,
    cpu: CpuSplit,
    drained: bool,
) -> GroupResult {
    let mut ack = Histogram::default();
    let mut delivery = Histogram::default();
    let mut last = Histogram::default();
    let mut r = GroupResult {
        members: results.len(),
        drained,
        cpu,
        ..GroupResult::default()
    };
    let (mut delivered_w, mut acked_w) = (0, 0);
    for (i, p) in results.iter().enumerate() {
        ack.merge(&p.ack);
        delivery.merge(&p.delivery);
        r.sent += p.sent;
        r.rejected += p.rejected;
        r.unacked += p.unacked;
        r.duplicates += p.duplicates;
        r.resyncs += p.resyncs;
        r.disconnected += u64::from(p.disconnected.is_some());
        r.delivered += p.received.values().flatten().filter(|&&l| l > 0).count() as u64;
        delivered_w += p.delivered_in_window;
        acked_w += p.acked_in_window;
        if r.errors.len() < 5 {
            r.errors.extend(p.errors.iter().take(5).cloned());
            if let Some(d) = &p.disconnected {
                r.errors.push(format!("member {i}: {d}"));
            }
        }
    }
    for (s, sender) in results.iter().enumerate().take(senders) {
        for (seq, due) in sender.acked.iter().enumerate() {
            let Some(due) = due else { continue };
            r.acked += 1;
            let mut worst = 0u32;
            for (m, member) in results.iter().enumerate() {
                if m == s {
                    continue;
                }
                match member.received.get(&(s as u32)).and_then(|v| v.get(seq)) {
                    Some(&l) if l > 0 => worst = worst.max(l - 1),
                    _ => r.lost += 1,
                }
            }
            if timeline.measured(*due) {
                last.record(u64::from(worst));
            }
        }
    }
    r.ack = ack.summary();
    r.delivery = delivery.summary();
    r.last_member = last.summary();
    r.messages_per_sec = acked_w as f64 / timeline.seconds();
    r.deliveries_per_sec = delivered_w as f64 / timeline.seconds();
    r
}
