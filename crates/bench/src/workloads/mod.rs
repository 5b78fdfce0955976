//! The workloads. Each has a typed `measure`-style function (the library API the tests use)
//! and a `cases` function that meters it and turns it into report rows.

pub mod concurrent;
pub mod llm;
pub mod race;
pub mod sequential;
pub mod sessions;
pub mod stream;
pub mod websocket;

use std::time::Duration;

use crate::http::Failure;
use crate::stats::{Counts, count};

/// Keeps the first few failure messages (one per kind) as evidence.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    pub counts: Counts,
    pub examples: Vec<String>,
}

impl Evidence {
    pub fn add(&mut self, step: &str, failure: &Failure) {
        let key = if step.is_empty() { failure.key() } else { format!("{step}:{}", failure.key()) };
        if !self.counts.contains_key(&key) && self.examples.len() < 8 {
            let text: String = failure.to_string().chars().take(300).collect();
            self.examples.push(format!("{key}: {text}"));
        }
        count(&mut self.counts, key);
    }

    pub fn add_key(&mut self, key: String, text: String) {
        if !self.counts.contains_key(&key) && self.examples.len() < 8 {
            self.examples.push(format!("{key}: {}", text.chars().take(300).collect::<String>()));
        }
        count(&mut self.counts, key);
    }

    pub fn merge(&mut self, other: Evidence) {
        for example in other.examples {
            if self.examples.len() < 8 && !self.examples.contains(&example) {
                self.examples.push(example);
            }
        }
        crate::stats::merge(&mut self.counts, &other.counts);
    }

    /// Failures that are correctness failures whatever the workload: any 5xx or wrong reply.
    pub fn correctness(&self) -> Vec<String> {
        let bad: Vec<String> = self
            .counts
            .iter()
            .filter(|(k, _)| {
                let code = k.rsplit(':').next().unwrap_or(k);
                code.starts_with('5') || code == "bad-reply"
            })
            .map(|(k, v)| format!("{v}× {k}"))
            .collect();
        if bad.is_empty() {
            return Vec::new();
        }
        vec![format!("{} (e.g. {})", bad.join(", "), self.examples.join(" | "))]
    }
}

/// `1,234`.
pub fn thousands(n: f64) -> String {
    let n = n.round() as i64;
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

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::thousands(1234567.4), "1,234,567");
        assert_eq!(super::thousands(999.0), "999");
        assert_eq!(super::thousands(0.0), "0");
    }
}
