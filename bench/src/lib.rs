//! chat-bench: a load generator for clusterchat, speaking the msgid JSON protocol of
//! `DESIGN.md` section 4 over WebSocket, so that every speed and memory claim of the project
//! is a command anyone can rerun.
//!
//! # Layout
//! - [`cli`]: the command line: shared options and one subcommand per scenario.
//! - [`scenario`]: `connections`, `chat`, `group`, `login`, `mixed`, and what they share (run
//!   context, timeline, coordinator); [`scenario::peer`] is the hot loop of `chat` and `group`.
//! - [`setup`]: users, friends and groups created through the protocol itself, with a unique
//!   name prefix per run.
//! - [`client`]: request/reply client for setup, lean frame parsing, message stamps, the clock.
//! - [`net`]: loopback targets, source-address spreading (127.0.0.2, .3, …), a tiny HTTP GET.
//! - [`relay`]: the baseline relay (routing only, no storage) that `chat --baseline` measures
//!   as the ceiling of this machine.
//! - [`histogram`]: HDR-style latency histogram (p50/p99/p999).
//! - [`procfs`]: RSS and CPU time of processes, from `/proc`.
//! - [`progress`]: the progress line on stderr.
//! - [`report`]: the JSON report and the table.

pub mod cli;
pub mod client;
pub mod histogram;
pub mod net;
pub mod procfs;
pub mod progress;
pub mod relay;
pub mod report;
pub mod scenario;
pub mod setup;

use crate::cli::{Cli, Scenario};
use crate::report::Report;
use crate::scenario::Ctx;

/// Runs the scenario of `cli` (every one but `relay`) and returns its report.
pub async fn run(cli: &Cli) -> anyhow::Result<Report> {
    let ctx = Ctx::new(&cli.common).await?;
    let started = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (name, outcome) = match &cli.scenario {
        Scenario::Connections(a) => ("connections", scenario::connections::run(&ctx, a).await?),
        Scenario::Chat(a) => ("chat", scenario::chat::run(&ctx, a).await?),
        Scenario::Group(a) => ("group", scenario::group::run(&ctx, a).await?),
        Scenario::Login(a) => ("login", scenario::login::run(&ctx, a).await?),
        Scenario::Mixed(a) => ("mixed", scenario::mixed::run(&ctx, a).await?),
        Scenario::Relay(_) => anyhow::bail!("`relay` is a server, not a scenario"),
    };
    Ok(Report {
        scenario: name.into(),
        started,
        urls: ctx.urls(),
        sources: ctx.sources.len(),
        prefix: ctx.prefix.clone(),
        params: outcome.params,
        result: outcome.result,
        cpu: outcome.cpu,
        rows: outcome.rows,
    })
}
