//! Reports: one JSON object per run (`--json`) or a two-column table for people.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::procfs::CpuSplit;

/// What one scenario run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name (`chat`, `group`, …).
    pub scenario: String,
    /// When the run started (RFC 3339, UTC).
    pub started: String,
    /// Server URLs the users were spread over.
    pub urls: Vec<String>,
    /// Loopback source addresses used (0: the kernel's choice).
    pub sources: usize,
    /// Prefix of the names this run created.
    pub prefix: String,
    /// The scenario's parameters.
    pub params: Value,
    /// The scenario's figures (see each scenario's result type).
    pub result: Value,
    /// CPU used during the measurement by this generator and the `--server-pid`s.
    pub cpu: Option<CpuSplit>,
    /// The table printed for people: (what, value).
    pub rows: Vec<(String, String)>,
}

/// A scenario's figures and its table rows, before [`Report`] wraps them.
pub struct Outcome {
    /// Parameters, as JSON.
    pub params: Value,
    /// Figures, as JSON.
    pub result: Value,
    /// Table rows.
    pub rows: Vec<(String, String)>,
    /// CPU split of the measured interval.
    pub cpu: Option<CpuSplit>,
}

impl Report {
    /// The table for people.
    pub fn table(&self) -> String {
        let mut rows = vec![
            ("scenario".to_owned(), self.scenario.clone()),
            ("started".to_owned(), self.started.clone()),
            ("urls".to_owned(), self.urls.join(" ")),
        ];
        rows.extend(self.rows.iter().cloned());
        if let Some(cpu) = &self.cpu {
            rows.push((
                "CPU (100% = 1 core)".into(),
                match cpu.server_pct {
                    Some(s) => format!(
                        "server {s:.0}% · generator {:.0}% over {:.1} s",
                        cpu.generator_pct, cpu.seconds
                    ),
                    None => format!(
                        "generator {:.0}% over {:.1} s (pass --server-pid for the server's)",
                        cpu.generator_pct, cpu.seconds
                    ),
                },
            ));
        }
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let rule = format!("+{}+{}+\n", "-".repeat(width + 2), "-".repeat(60));
        out.push_str(&rule);
        for (k, v) in rows {
            out.push_str(&format!("| {k:<width$} | {v}\n"));
        }
        out.push_str(&rule);
        out
    }
}

/// Formats a rate with thousands separators (`52,341`).
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(52_341.4), "52,341");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
    }
}
