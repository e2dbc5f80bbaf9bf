//! The progress line: a few named counters, printed to stderr once a second while a scenario
//! runs (rewritten in place on a terminal, one line per second otherwise).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shared counters of a running scenario.
pub struct Progress {
    phase: std::sync::Mutex<String>,
    labels: Vec<&'static str>,
    counters: Vec<AtomicU64>,
    done: AtomicBool,
}

impl Progress {
    /// Counters named by `labels`; printing starts with [`Progress::spawn`].
    pub fn new(labels: &[&'static str]) -> Arc<Progress> {
        Arc::new(Progress {
            phase: std::sync::Mutex::new("setup".into()),
            labels: labels.to_vec(),
            counters: labels.iter().map(|_| AtomicU64::new(0)).collect(),
            done: AtomicBool::new(false),
        })
    }

    /// Adds `n` to counter `i`.
    pub fn add(&self, i: usize, n: u64) {
        self.counters[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Sets counter `i`.
    pub fn set(&self, i: usize, n: u64) {
        self.counters[i].store(n, Ordering::Relaxed);
    }

    /// Counter `i`.
    pub fn get(&self, i: usize) -> u64 {
        self.counters[i].load(Ordering::Relaxed)
    }

    /// Names what is happening now (printed at the start of the line).
    pub fn phase(&self, phase: &str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.to_owned();
        }
    }

    /// Stops the printer.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// Prints the line every second until [`Progress::finish`] (nothing when `quiet`).
    pub fn spawn(self: &Arc<Self>, name: &'static str, quiet: bool) {
        if quiet {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let tty = std::io::stderr().is_terminal();
            let start = Instant::now();
            let mut last: Vec<u64> = vec![0; me.labels.len()];
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                if me.done.load(Ordering::Relaxed) {
                    break;
                }
                let phase = me.phase.lock().map(|p| p.clone()).unwrap_or_default();
                let mut line = format!("[{name} {:>5.1}s {phase}]", start.elapsed().as_secs_f64());
                for (i, label) in me.labels.iter().enumerate() {
                    let now = me.get(i);
                    line.push_str(&format!(" {label} {now} (+{}/s)", now - last[i].min(now)));
                    last[i] = now;
                }
                let mut err = std::io::stderr().lock();
                if tty {
                    let _ = write!(err, "\r\x1b[2K{line}");
                } else {
                    let _ = writeln!(err, "{line}");
                }
                let _ = err.flush();
            }
            if tty {
                let _ = write!(std::io::stderr(), "\r\x1b[2K");
            }
        });
    }
}
