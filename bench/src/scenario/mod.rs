//! The scenarios, and what they share: the run context (targets, source addresses, prefix),
//! the timeline of a measurement (warm-up, window, drain) and its coordinator.

pub mod chat;
pub mod connections;
pub mod group;
pub mod login;
pub mod mixed;
pub mod peer;

use std::time::Duration;

use tokio::sync::watch;

use crate::cli::Common;
use crate::client::{instant_at, now_us};
use crate::net::{Sources, Target};
use crate::procfs::{CpuMeter, CpuSplit};
use crate::progress::Progress;
use crate::setup;

/// Everything a scenario needs to know about the run.
#[derive(Clone)]
pub struct Ctx {
    /// The servers, users spread over them round-robin.
    pub targets: Vec<Target>,
    /// Source addresses of client sockets.
    pub sources: Sources,
    /// The shared options.
    pub common: Common,
    /// Prefix of every name this run creates.
    pub prefix: String,
}

impl Ctx {
    /// Resolves the URLs of `common`.
    pub async fn new(common: &Common) -> anyhow::Result<Ctx> {
        let mut targets = Vec::new();
        for url in &common.urls {
            targets.push(Target::resolve(url).await?);
        }
        anyhow::ensure!(!targets.is_empty(), "no --url given");
        Ok(Ctx {
            targets,
            sources: Sources::with_offset(common.source_offset, common.sources),
            common: common.clone(),
            prefix: common.prefix.clone().unwrap_or_else(setup::unique_prefix),
        })
    }

    /// The server of user number `i`.
    pub fn target_of(&self, i: usize) -> &Target {
        &self.targets[i % self.targets.len()]
    }

    /// The same run against other servers (the baseline relay), with its own name prefix.
    pub fn with_targets(&self, targets: Vec<Target>, prefix_suffix: &str) -> Ctx {
        Ctx {
            targets,
            sources: self.sources.clone(),
            common: self.common.clone(),
            prefix: format!("{}{prefix_suffix}", self.prefix),
        }
    }

    /// The URLs, for reports.
    pub fn urls(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.url.clone()).collect()
    }
}

/// When a measurement sends, measures and stops (microseconds of [`now_us`]).
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Sending starts.
    pub start: u64,
    /// Measuring starts (after the warm-up).
    pub warm_end: u64,
    /// Sending and measuring stop.
    pub send_end: u64,
}

impl Timeline {
    /// A timeline starting shortly from now, with the warm-up and duration of `common`.
    pub fn new(common: &Common) -> Timeline {
        let start = now_us() + 100_000;
        let warm_end = start + (common.warmup.max(0.0) * 1e6) as u64;
        let send_end = warm_end + (common.duration.max(0.05) * 1e6) as u64;
        Timeline {
            start,
            warm_end,
            send_end,
        }
    }

    /// Whether `t` falls in the measured window.
    pub fn measured(&self, t: u64) -> bool {
        t >= self.warm_end && t < self.send_end
    }

    /// Length of the measured window in seconds.
    pub fn seconds(&self) -> f64 {
        (self.send_end - self.warm_end) as f64 / 1e6
    }
}

/// Runs the clock of a measurement: counts CPU over the measured window, then, once sending
/// has stopped, waits until `done()` (everything acked and delivered) or the drain deadline,
/// and tells every task to stop. Returns the CPU split and whether everything drained.
pub async fn coordinate(
    timeline: Timeline,
    common: &Common,
    extra_pids: &[u32],
    progress: &Progress,
    stop: watch::Sender<bool>,
    done: impl Fn() -> bool,
) -> (CpuSplit, bool) {
    let mut pids = common.server_pids.clone();
    pids.extend_from_slice(extra_pids);
    progress.phase("warm-up");
    tokio::time::sleep_until(instant_at(timeline.warm_end)).await;
    progress.phase("measure");
    let meter = CpuMeter::start(&pids);
    tokio::time::sleep_until(instant_at(timeline.send_end)).await;
    let cpu = meter.stop();
    progress.phase("drain");
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(common.drain.max(0.0));
    let drained = loop {
        if done() {
            break true;
        }
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.send_replace(true);
    (cpu, drained)
}

/// A figure per second with its unit, for tables.
pub fn per_sec(v: f64, unit: &str) -> String {
    format!("{} {unit}/s", crate::report::thousands(v))
}
