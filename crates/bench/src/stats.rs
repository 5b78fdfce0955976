//! Exact percentiles from a sorted `Vec`, and error counts by key.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    pub fn of(samples: &mut [Duration]) -> Percentiles {
        let micros: Vec<u64> = samples.iter().map(|d| d.as_micros() as u64).collect();
        Percentiles::of_micros(micros)
    }

    /// Percentiles of samples in microseconds.
    pub fn of_micros(mut samples: Vec<u64>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let at = |p: f64| {
            let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
            samples[i] as f64 / 1000.0
        };
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Percentiles {
            count: samples.len(),
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            mean_ms: sum as f64 / samples.len() as f64 / 1000.0,
        }
    }

    /// `p50 1.23 / p90 2.34 / p99 3.45 ms`.
    pub fn short(&self) -> String {
        if self.count == 0 {
            return "-".into();
        }
        format!("p50 {:.2} / p90 {:.2} / p99 {:.2} ms", self.p50_ms, self.p90_ms, self.p99_ms)
    }
}

/// Counts by key (status codes, failure kinds).
pub type Counts = BTreeMap<String, u64>;

pub fn count(counts: &mut Counts, key: impl Into<String>) {
    *counts.entry(key.into()).or_default() += 1;
}

pub fn merge(into: &mut Counts, from: &Counts) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// `200×48, 409×2` or `none`.
pub fn show(counts: &Counts) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_exact() {
        let p = Percentiles::of_micros((1..=100).map(|i| i * 1000).collect());
        assert_eq!(p.count, 100);
        assert_eq!(p.p50_ms, 51.0);
        assert_eq!(p.p99_ms, 99.0);
        assert_eq!(p.max_ms, 100.0);
        assert_eq!(p.mean_ms, 50.5);
        assert_eq!(Percentiles::of_micros(Vec::new()).count, 0);
    }
}
