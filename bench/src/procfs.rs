//! What the kernel says about processes: resident memory (`VmRSS`) and CPU time, so that a
//! report can give server RSS per connection and how the two cores were split between the
//! server(s) and this generator.

use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every Linux we run on).
const TICKS_PER_SEC: f64 = 100.0;

/// Resident memory of `pid` in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// User + system CPU time of `pid` (or `self`) in clock ticks, from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Counts CPU used by this process and by the given server processes over an interval.
pub struct CpuMeter {
    started: Instant,
    me: Option<u64>,
    servers: Vec<(u32, Option<u64>)>,
}

/// CPU used during a measurement, in percent of one core (200 % = both cores of this machine).
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct CpuSplit {
    /// This load generator.
    pub generator_pct: f64,
    /// Every `--server-pid` together (absent when none was given).
    pub server_pct: Option<f64>,
    /// Seconds measured.
    pub seconds: f64,
}

impl CpuMeter {
    /// Starts counting now.
    pub fn start(server_pids: &[u32]) -> CpuMeter {
        CpuMeter {
            started: Instant::now(),
            me: cpu_ticks(None),
            servers: server_pids
                .iter()
                .map(|&p| (p, cpu_ticks(Some(p))))
                .collect(),
        }
    }

    /// CPU used since [`CpuMeter::start`].
    pub fn stop(&self) -> CpuSplit {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let pct = |from: Option<u64>, to: Option<u64>| match (from, to) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / TICKS_PER_SEC / secs * 100.0),
            _ => None,
        };
        let server_pct = if self.servers.is_empty() {
            None
        } else {
            self.servers
                .iter()
                .map(|&(pid, from)| pct(from, cpu_ticks(Some(pid))))
                .sum::<Option<f64>>()
        };
        CpuSplit {
            generator_pct: pct(self.me, cpu_ticks(None)).unwrap_or(0.0),
            server_pct,
            seconds: secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_rss_and_cpu_time() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(cpu_ticks(None).is_some());
        assert!(rss_kib(u32::MAX).is_none());
    }
}
