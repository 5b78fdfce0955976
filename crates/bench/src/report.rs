//! What a workload reports: cases (one table row each) with their measurements, resource use
//! and correctness failures; printed as a table and written as JSON.

use serde::Serialize;
use serde_json::Value;

use crate::usage::Usage;

/// One row: a workload at one setting (e.g. 64 clients, or `enqueue`).
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub name: String,
    /// Set when the case could not run against this server (e.g. no `/ws`).
    pub skipped: Option<String>,
    /// The headline, human-readable (e.g. `2,206 runs/s, p50 6.29 ms`).
    pub summary: String,
    /// Correctness failures: duplicate threads, 5xx, lost messages, wrong replies.
    pub failures: Vec<String>,
    pub usage: Usage,
    /// The typed result of the workload, as JSON.
    pub result: Value,
}

impl Case {
    pub fn new(
        name: impl Into<String>,
        summary: String,
        result: &impl Serialize,
        usage: Usage,
    ) -> Case {
        Case {
            name: name.into(),
            skipped: None,
            summary,
            failures: Vec::new(),
            usage,
            result: serde_json::to_value(result).unwrap_or(Value::Null),
        }
    }

    pub fn skipped(name: impl Into<String>, why: impl Into<String>) -> Case {
        let why = why.into();
        Case {
            name: name.into(),
            summary: format!("skipped: {why}"),
            skipped: Some(why),
            failures: Vec::new(),
            usage: Usage::default(),
            result: Value::Null,
        }
    }

    pub fn with_failures(mut self, failures: Vec<String>) -> Case {
        self.failures = failures;
        self
    }

    pub fn verdict(&self) -> &'static str {
        if self.skipped.is_some() {
            "skipped"
        } else if self.failures.is_empty() {
            "ok"
        } else {
            "CORRECTNESS FAILURE"
        }
    }
}

/// One invocation of one workload against one server.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: String,
    pub workload: String,
    pub base_url: String,
    pub label: Option<String>,
    pub server_pid: Option<u32>,
    /// RFC 3339, UTC.
    pub date: String,
    pub loadavg: Option<String>,
    pub cases: Vec<Case>,
}

impl Report {
    pub fn new(
        workload: &str,
        base_url: &str,
        label: Option<String>,
        server_pid: Option<u32>,
    ) -> Report {
        Report {
            tool: format!("spindle-bench {}", env!("CARGO_PKG_VERSION")),
            workload: workload.into(),
            base_url: base_url.into(),
            label,
            server_pid,
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
            cases: Vec::new(),
        }
    }

    pub fn failed(&self) -> bool {
        self.cases.iter().any(|c| !c.failures.is_empty())
    }

    /// A Markdown table, readable in a terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "## {} against {}{} — {} (loadavg {})\n\n",
            self.workload,
            self.base_url,
            self.label.as_ref().map(|l| format!(" ({l})")).unwrap_or_default(),
            self.date,
            self.loadavg.as_deref().unwrap_or("?"),
        );
        out.push_str("| case | result | resources | verdict |\n|---|---|---|---|\n");
        for case in &self.cases {
            let usage = if case.skipped.is_some() { String::new() } else { case.usage.short() };
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                case.name,
                case.summary.replace('|', "/"),
                usage,
                case.verdict()
            ));
        }
        for case in &self.cases {
            for failure in &case.failures {
                out.push_str(&format!("\nCORRECTNESS FAILURE ({}): {failure}", case.name));
            }
        }
        out.push('\n');
        out
    }
}
