//! `spindle doctor`: runs the store's checks ([`store::doctor`]) and prints the report, as
//! text for an operator or as JSON for a script. The exit code is the verdict: 0 when no
//! problem remains (warnings aside, and after `--fix` if given), 1 otherwise.

use std::fmt::Write;
use std::process::ExitCode;
use std::time::Duration;

use store::doctor::{Check, DoctorOptions, DoctorReport, Finding, Severity};
use store::{DatabaseUrl, Store, StoreOptions};

use crate::config::{DatabaseArgs, DoctorArgs};

/// Runs the doctor as the command line asked and prints its report on stdout.
pub async fn run(args: &DoctorArgs) -> Result<ExitCode, String> {
    let url = args.database.url().map_err(|e| e.to_string())?;
    let Some(store) = open_existing(&url, &args.database).await? else {
        return Err(format!(
            "no database at {url}: nothing to check (see --database-url, --data-dir)"
        ));
    };
    let options =
        DoctorOptions { stale_after: Duration::from_secs(args.stale_after), fix: args.fix };
    let report = store.doctor(&options).await.map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", render_json(&report));
    } else {
        print!("{}", render_text(&report, &url, args.fix));
    }
    Ok(if report.healthy() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Opens a database that exists, without migrating it (the doctor changes nothing it was not
/// asked to); `None` when a SQLite file is missing, rather than creating an empty one.
pub async fn open_existing(
    url: &DatabaseUrl,
    args: &DatabaseArgs,
) -> Result<Option<Store>, String> {
    if let DatabaseUrl::Sqlite(path) = url
        && !path.exists()
    {
        return Ok(None);
    }
    let options =
        StoreOptions { max_connections: args.database_max_connections.min(4), migrate: false };
    Store::open(url, &options).await.map(Some).map_err(|e| e.to_string())
}

pub fn render_json(report: &DoctorReport) -> String {
    let mut value = serde_json::to_value(report).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("healthy".into(), report.healthy().into());
    }
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// The report as an operator reads it: what was checked, each problem grouped by check with
/// what to do about it, what `--fix` did, what remains, and the verdict on the last line.
pub fn render_text(report: &DoctorReport, url: &DatabaseUrl, fix: bool) -> String {
    let mut out = String::new();
    let c = &report.counts;
    let _ = writeln!(
        out,
        "spindle doctor: {url} ({}), {}",
        report.backend,
        report.checked_at.to_rfc3339()
    );
    let _ = writeln!(
        out,
        "checked {} users, {} threads, {} runs ({} pending or running), {} checkpoints, {} events",
        c.users, c.threads, c.runs, c.active_runs, c.checkpoints, c.events
    );
    out.push('\n');
    if report.findings.is_empty() {
        out.push_str("no problems found\n");
    } else {
        write_findings(&mut out, &report.findings);
    }
    if fix {
        out.push('\n');
        if report.repairs.is_empty() {
            out.push_str("--fix: nothing to repair\n");
        } else {
            out.push_str("--fix:\n");
            for r in &report.repairs {
                let _ = writeln!(out, "  {}: {}", subject(r.thread_id, r.run_id), r.done);
            }
            if report.remaining.is_empty() {
                out.push_str("\nafter the repairs: no problems found\n");
            } else {
                out.push_str("\nafter the repairs:\n");
                write_findings(&mut out, &report.remaining);
            }
        }
    }
    out.push_str("\nnotes:\n");
    for note in &report.notes {
        let _ = writeln!(out, "  - {note}");
    }
    out.push('\n');
    out.push_str(&verdict(&report.remaining, fix));
    out.push('\n');
    out
}

fn write_findings(out: &mut String, findings: &[Finding]) {
    for check in Check::ALL {
        let of: Vec<&Finding> = findings.iter().filter(|f| f.check == check).collect();
        if of.is_empty() {
            continue;
        }
        let severity = match check.severity() {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{severity}: {} ({}) [{}]", check.title(), of.len(), check.name());
        for f in &of {
            let _ = match subject(f.thread_id, f.run_id) {
                s if s.is_empty() => writeln!(out, "  - {}", f.detail),
                s => writeln!(out, "  - {s}: {}", f.detail),
            };
        }
        let _ = writeln!(out, "  what to do: {}", check.hint());
    }
}

fn subject(thread: Option<ids::ThreadId>, run: Option<ids::RunId>) -> String {
    match (thread, run) {
        (Some(t), Some(r)) => format!("run {r} (thread {t})"),
        (None, Some(r)) => format!("run {r}"),
        (Some(t), None) => format!("thread {t}"),
        (None, None) => String::new(),
    }
}

fn verdict(remaining: &[Finding], fix: bool) -> String {
    let errors = remaining.iter().filter(|f| f.severity == Severity::Error).count();
    let warnings = remaining.len() - errors;
    let warned = match warnings {
        0 => String::new(),
        n => format!(", {n} warning(s)"),
    };
    if errors == 0 {
        return format!("healthy{warned}");
    }
    let advice = if fix || !remaining.iter().any(|f| f.check.fixable()) {
        "see `what to do` above"
    } else {
        "run again with --fix to repair what is safe"
    };
    format!("unhealthy: {errors} problem(s){warned}; {advice}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_counts_errors_and_warnings_apart() {
        let f = |check: Check| Finding {
            check,
            severity: check.severity(),
            thread_id: None,
            run_id: None,
            owner_id: None,
            detail: String::new(),
        };
        assert_eq!(verdict(&[], false), "healthy");
        assert_eq!(verdict(&[f(Check::SeqGap)], false), "healthy, 1 warning(s)");
        assert_eq!(
            verdict(&[f(Check::BusyWithoutActiveRun), f(Check::SeqGap)], false),
            "unhealthy: 1 problem(s), 1 warning(s); run again with --fix to repair what is safe"
        );
        assert_eq!(
            verdict(&[f(Check::EventRunMissing)], false),
            "unhealthy: 1 problem(s); see `what to do` above"
        );
    }
}
