//! A small HDR-style latency histogram: log-linear buckets (64 per power of two, so every value
//! is kept within 1.6 %), fixed memory, mergeable, in microseconds.
//!
//! Each connection task records into its own histogram (no sharing on the hot path); the
//! scenario merges them at the end.

use serde::Serialize;

/// Sub-buckets per power of two: values below `2 * SUB` are exact.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Largest exponent kept (values above about 2^40 µs, 12 days, are clamped).
const MAX_EXP: u32 = 40;
const BUCKETS: usize = (2 * SUB + (MAX_EXP as u64 - SUB_BITS as u64) * SUB) as usize;

/// Counts of values (microseconds) in log-linear buckets.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            sum: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let exp = (63 - v.leading_zeros()).min(MAX_EXP);
    let v = v.min((1u64 << (MAX_EXP + 1)) - 1);
    let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
    (2 * SUB + (u64::from(exp) - u64::from(SUB_BITS) - 1) * SUB + sub) as usize
}

/// The highest value that falls in bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let exp = (i - 2 * SUB) / SUB + u64::from(SUB_BITS) + 1;
    let sub = (i - 2 * SUB) % SUB;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    (1u64 << exp) + sub * width + width - 1
}

impl Histogram {
    /// Records one value in microseconds.
    pub fn record(&mut self, micros: u64) {
        self.counts[index(micros)] += 1;
        self.total += 1;
        self.sum += u128::from(micros);
        self.max = self.max.max(micros);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The value at quantile `q` (0..=1), in microseconds (the upper bound of its bucket,
    /// never above the largest value seen).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }

    /// The summary that reports print.
    pub fn summary(&self) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: self.total,
            mean_ms: if self.total == 0 {
                0.0
            } else {
                self.sum as f64 / self.total as f64 / 1000.0
            },
            p50_ms: ms(self.quantile(0.50)),
            p99_ms: ms(self.quantile(0.99)),
            p999_ms: ms(self.quantile(0.999)),
            max_ms: ms(self.max),
        }
    }
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Latency {
    /// Values measured.
    pub count: u64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

impl Latency {
    /// `p50 / p99 / p999 / max` for a table cell.
    pub fn cell(&self) -> String {
        if self.count == 0 {
            return "-".into();
        }
        format!(
            "{} / {} / {} / {} ms",
            short(self.p50_ms),
            short(self.p99_ms),
            short(self.p999_ms),
            short(self.max_ms)
        )
    }
}

/// A millisecond figure with sensible precision.
pub fn short(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..5_000_000u64).step_by(7) {
            let i = index(v);
            assert!(i >= last, "index goes backwards at {v}");
            last = i;
            let up = upper(i);
            assert!(up >= v, "upper bound {up} below {v}");
            assert!(up - v <= v / 60 + 1, "bucket of {v} too wide: {up}");
        }
    }

    #[test]
    fn quantiles_of_a_uniform_range() {
        let mut h = Histogram::default();
        for v in 1..=10_000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.02, "p50 {p50}");
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.02, "p99 {p99}");
        assert_eq!(h.quantile(1.0), 10_000);
        let mut other = Histogram::default();
        other.record(1_000_000);
        h.merge(&other);
        assert_eq!(h.len(), 10_001);
        assert_eq!(h.summary().max_ms, 1000.0);
    }
}
