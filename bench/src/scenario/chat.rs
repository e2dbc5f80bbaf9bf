//! `chat`: P pairs of users, each sending 1:1 messages to its partner (partners on different
//! replicas when several URLs are given). Figures: delivered msgs/s, ack and delivery latency
//! (p50/p99/p999), lost (acked but never delivered), duplicates; with `--baseline`, the same
//! run against the built-in relay and the server's throughput as a ratio of it.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::cli::ChatArgs;
use crate::histogram::{Histogram, Latency};
use crate::net::Target;
use crate::procfs::CpuSplit;
use crate::progress::Progress;
use crate::relay;
use crate::report::{Outcome, thousands};
use crate::scenario::peer::{self, Dest, Pace, Plan};
use crate::scenario::{Ctx, Timeline, coordinate, per_sec};
use crate::setup;

/// Figures of one chat run.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ChatResult {
    /// Users (2 × pairs).
    pub users: usize,
    /// Pushes received per second during the measured window.
    pub delivered_per_sec: f64,
    /// Acks received per second during the measured window.
    pub acked_per_sec: f64,
    /// Messages sent in the whole run.
    pub sent: u64,
    /// Acked with errno 0.
    pub acked: u64,
    /// Answered with an error (e.g. 429, 503).
    pub rejected: u64,
    /// Never acked by the end of the drain.
    pub unacked: u64,
    /// Pushes received.
    pub delivered: u64,
    /// Acked but never delivered.
    pub lost: u64,
    /// Delivered more than once.
    pub duplicates: u64,
    /// RESYNC_MSG pushes received.
    pub resyncs: u64,
    /// Connections that failed during the run.
    pub disconnected: u64,
    /// Whether every ack and delivery arrived before the drain deadline.
    pub drained: bool,
    /// Send → ack.
    pub ack: Latency,
    /// Send → delivery to the partner.
    pub delivery: Latency,
    /// A few error replies, for the curious.
    pub errors: Vec<String>,
    /// CPU split during the window.
    pub cpu: CpuSplit,
}

/// The `chat` scenario (and, with `--baseline`, the same against the relay; with `--rounds`,
/// the two alternately, compared by their medians).
pub async fn run(ctx: &Ctx, args: &ChatArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(
        args.rounds == 1 || args.baseline || args.baseline_url.is_some(),
        "--rounds alternates the server with the baseline relay: add --baseline"
    );
    let (mut child, relay) = if let Some(url) = &args.baseline_url {
        (None, Some((Target::resolve(url).await?, Vec::new())))
    } else if args.baseline {
        let child = relay::spawn_child().await?;
        let relay = (Target::resolve(&child.url).await?, vec![child.pid]);
        (Some(child), Some(relay))
    } else {
        (None, None)
    };
    let measured = alternate(ctx, args, relay).await;
    if let Some(child) = child.as_mut() {
        child.stop().await;
    }
    let (servers, relays) = measured?;

    let server = middle(&servers);
    let mut rows = rows_of(server, "");
    let mut result = json!({ "server": server });
    let cpu = Some(server.cpu.clone());
    if !relays.is_empty() {
        let base = middle(&relays);
        let (s, b) = (median_rate(&servers), median_rate(&relays));
        let ratio = share(s, b);
        rows.push(("".into(), "".into()));
        rows.extend(rows_of(base, "baseline relay: "));
        let rounds = servers.len() > 1;
        if rounds {
            rows.push((
                "rounds: server / relay / ratio".into(),
                servers
                    .iter()
                    .zip(&relays)
                    .map(|(s, b)| {
                        format!(
                            "{} / {} / {:.0}%",
                            thousands(s.delivered_per_sec),
                            thousands(b.delivered_per_sec),
                            ratio_of(s, b) * 100.0
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" · "),
            ));
            rows.push((
                "rounds: lost / duplicates (all)".into(),
                format!(
                    "server {} / {} · relay {} / {}",
                    servers.iter().map(|r| r.lost).sum::<u64>(),
                    servers.iter().map(|r| r.duplicates).sum::<u64>(),
                    relays.iter().map(|r| r.lost).sum::<u64>(),
                    relays.iter().map(|r| r.duplicates).sum::<u64>(),
                ),
            ));
        }
        rows.push((
            if rounds {
                "server / baseline (medians)".into()
            } else {
                "server / baseline".into()
            },
            format!(
                "{:.0}% ({} of {} msgs/s)",
                ratio * 100.0,
                thousands(s),
                thousands(b)
            ),
        ));
        result["baseline"] = json!(base);
        result["ratio"] = json!(ratio);
        if rounds {
            result["rounds"] = servers
                .iter()
                .zip(&relays)
                .map(|(s, b)| json!({ "server": s, "baseline": b, "ratio": ratio_of(s, b) }))
                .collect();
        }
    } else {
        rows.push((
            "server / baseline".into(),
            "n/a (run with --baseline)".into(),
        ));
    }
    Ok(Outcome {
        params: json!({
            "pairs": args.pairs, "size": args.size, "rate": args.rate, "window": args.window,
            "rounds": args.rounds,
            "mode": if args.rate > 0.0 { "open-loop" } else { "closed-loop" },
            "duration": ctx.common.duration, "warmup": ctx.common.warmup,
        }),
        result,
        rows,
        cpu,
    })
}

fn rows_of(r: &ChatResult, label: &str) -> Vec<(String, String)> {
    let mut rows = vec![
        (
            format!("{label}delivered"),
            per_sec(r.delivered_per_sec, "msgs"),
        ),
        (format!("{label}acked"), per_sec(r.acked_per_sec, "msgs")),
        (format!("{label}ack p50/p99/p999/max"), r.ack.cell()),
        (
            format!("{label}delivery p50/p99/p999/max"),
            r.delivery.cell(),
        ),
        (
            format!("{label}sent / acked / delivered"),
            format!("{} / {} / {}", r.sent, r.acked, r.delivered),
        ),
        (
            format!("{label}lost / duplicates"),
            format!("{} / {}", r.lost, r.duplicates),
        ),
    ];
    if !label.is_empty() {
        rows.push((
            format!("{label}CPU (100% = 1 core)"),
            format!(
                "relay {:.0}% · generator {:.0}%",
                r.cpu.server_pct.unwrap_or(0.0),
                r.cpu.generator_pct
            ),
        ));
    }
    if r.rejected + r.unacked + r.disconnected + r.resyncs > 0 || !r.drained {
        rows.push((
            format!("{label}rejected / unacked / disconnected / resyncs"),
            format!(
                "{} / {} / {} / {}{}",
                r.rejected,
                r.unacked,
                r.disconnected,
                r.resyncs,
                if r.drained { "" } else { " (drain timed out)" }
            ),
        ));
    }
    rows
}

/// The server's runs and the relay's (none without a baseline), alternately: server first,
/// then the relay, `--rounds` times; each run with users of its own.
async fn alternate(
    ctx: &Ctx,
    args: &ChatArgs,
    relay: Option<(Target, Vec<u32>)>,
) -> anyhow::Result<(Vec<ChatResult>, Vec<ChatResult>)> {
    let (mut servers, mut relays) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // Round 0 keeps the names a run without rounds has (`--prefix` reuses them).
        let suffix = if round == 0 {
            String::new()
        } else {
            format!("s{round}")
        };
        servers.push(run_once(&ctx.with_targets(ctx.targets.clone(), &suffix), args, &[]).await?);
        if let Some((target, pids)) = &relay {
            let relay_ctx = ctx.with_targets(vec![target.clone()], &format!("r{suffix}"));
            relays.push(run_once(&relay_ctx, args, pids).await?);
        }
    }
    Ok((servers, relays))
}

/// The run of median throughput (of an even count, the lower of the two in the middle).
fn middle(runs: &[ChatResult]) -> &ChatResult {
    let mut order: Vec<&ChatResult> = runs.iter().collect();
    order.sort_by(|a, b| a.delivered_per_sec.total_cmp(&b.delivered_per_sec));
    order[(order.len() - 1) / 2]
}

/// The median of the runs' delivered msgs/s (of an even count, the mean of the two in the
/// middle).
fn median_rate(runs: &[ChatResult]) -> f64 {
    let mut rates: Vec<f64> = runs.iter().map(|r| r.delivered_per_sec).collect();
    rates.sort_by(f64::total_cmp);
    let n = rates.len();
    if n % 2 == 1 {
        rates[n / 2]
    } else {
        (rates[n / 2 - 1] + rates[n / 2]) / 2.0
    }
}

/// The server's throughput as a share of the relay's (0 when the relay delivered nothing).
fn share(server: f64, relay: f64) -> f64 {
    if relay > 0.0 { server / relay } else { 0.0 }
}

/// [`share`] of one round's two runs.
fn ratio_of(server: &ChatResult, relay: &ChatResult) -> f64 {
    share(server.delivered_per_sec, relay.delivered_per_sec)
}

/// One chat run against `ctx.targets`.
pub async fn run_once(
    ctx: &Ctx,
    args: &ChatArgs,
    extra_pids: &[u32],
) -> anyhow::Result<ChatResult> {
    anyhow::ensure!(args.pairs > 0, "--pairs must be at least 1");
    let users = args.pairs * 2;
    let progress = Progress::new(&["registered", "logged in"]);
    progress.spawn("chat setup", ctx.common.quiet);
    let names: Vec<String> = (0..users).map(|i| format!("{}c{i}", ctx.prefix)).collect();
    let ids = setup::register(ctx, &names, &progress, 0).await?;
    let logged = setup::login(ctx, &ids, &progress, 1).await?;
    progress.finish();

    let progress = Progress::new(peer::LABELS);
    progress.spawn("chat", ctx.common.quiet);
    let timeline = Timeline::new(&ctx.common);
    let period_us = if args.rate > 0.0 {
        Some((1e6 * users as f64 / args.rate).max(1.0) as u64)
    } else {
        None
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(users);
    for (i, l) in logged.into_iter().enumerate() {
        let pace = match period_us {
            Some(p) => Pace::Open {
                period_us: p,
                first_due: timeline.start + rand::random_range(0..p),
            },
            None => Pace::Closed,
        };
        let plan = Plan {
            index: i as u32,
            dest: Some(Dest::User(ids[i ^ 1])),
            pace,
            window: args.window.max(1),
            size: args.size,
            first_reqid: l.client.next_reqid(),
            group: None,
        };
        tasks.push(tokio::spawn(peer::run(
            l.client.into_ws(),
            plan,
            timeline,
            progress.clone(),
            stop_rx.clone(),
        )));
    }
    let watch_progress = progress.clone();
    let (cpu, drained) = coordinate(
        timeline,
        &ctx.common,
        extra_pids,
        &progress,
        stop_tx,
        move || {
            let p = &watch_progress;
            p.get(peer::SENT) == p.get(peer::ACKED) + p.get(peer::REJECTED)
                && p.get(peer::DELIVERED) >= p.get(peer::ACKED)
        },
    )
    .await;
    let mut results = Vec::with_capacity(users);
    for t in tasks {
        results.push(t.await.context("a user task panicked")?);
    }
    progress.finish();
    Ok(summarize(&results, &timeline, cpu, drained))
}

fn summarize(
    results: &[peer::PeerResult],
    timeline: &Timeline,
    cpu: CpuSplit,
    drained: bool,
) -> ChatResult {
    let mut ack = Histogram::default();
    let mut delivery = Histogram::default();
    let mut r = ChatResult {
        users: results.len(),
        drained,
        cpu,
        ..ChatResult::default()
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
                r.errors.push(format!("user {i}: {d}"));
            }
        }
        let partner = &results[i ^ 1];
        for (seq, a) in p.acked.iter().enumerate() {
            if a.is_some() {
                r.acked += 1;
                if !partner.has(i as u32, seq) {
                    r.lost += 1;
                }
            }
        }
    }
    r.ack = ack.summary();
    r.delivery = delivery.summary();
    r.delivered_per_sec = delivered_w as f64 / timeline.seconds();
    r.acked_per_sec = acked_w as f64 / timeline.seconds();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rate: f64) -> ChatResult {
        ChatResult {
            delivered_per_sec: rate,
            ..ChatResult::default()
        }
    }

    #[test]
    fn rounds_are_compared_by_their_medians() {
        let odd = [at(300.0), at(100.0), at(200.0)];
        assert_eq!(median_rate(&odd), 200.0);
        assert_eq!(middle(&odd).delivered_per_sec, 200.0);
        let even = [at(400.0), at(100.0), at(300.0), at(200.0)];
        assert_eq!(median_rate(&even), 250.0);
        assert_eq!(middle(&even).delivered_per_sec, 200.0);
        assert_eq!(median_rate(&[at(7.0)]), 7.0);
        assert_eq!(ratio_of(&at(60.0), &at(100.0)), 0.6);
        assert_eq!(ratio_of(&at(60.0), &at(0.0)), 0.0);
    }
}
