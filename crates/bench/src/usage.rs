//! CPU and memory from `/proc`: the server's (a pid and its descendants, sampled while a
//! workload runs) and the client's own.
//!
//! CPU times in `/proc/PID/stat` are in clock ticks of `USER_HZ`, which Linux fixes at 100 for
//! this interface on every architecture we run on, so the resolution is 10 ms.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) of one process, or `None` if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line =
        status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The process and every live descendant (LangGraph's dev server runs workers as children).
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && let Some(parent) = parent_of(pid)
            {
                parents.entry(parent).or_default().push(pid);
            }
        }
    }
    let mut tree = BTreeSet::from([root]);
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for &child in parents.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            if tree.insert(child) {
                todo.push(child);
            }
        }
    }
    tree.into_iter().collect()
}

/// CPU seconds and resident memory of a process tree.
pub fn tree_cpu_and_rss(pids: &[u32]) -> (f64, u64) {
    let mut cpu = 0.0;
    let mut rss = 0;
    for &pid in pids {
        cpu += cpu_seconds(pid).unwrap_or(0.0);
        rss += status_kib(pid, "VmRSS").unwrap_or(0);
    }
    (cpu, rss)
}

/// What a workload cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    pub wall_s: f64,
    /// This process's CPU seconds during the workload.
    pub client_cpu_s: f64,
    /// `client_cpu_s / wall_s`: near the core count means the client was the bottleneck.
    pub client_cores: f64,
    pub server_cpu_s: Option<f64>,
    pub server_cores: Option<f64>,
    pub server_rss_start_mb: Option<f64>,
    /// Highest resident memory of the server's process tree, sampled every 20 ms.
    pub server_rss_peak_mb: Option<f64>,
    /// Load average (1 min) when the workload started: other work on the machine.
    pub loadavg_1m: Option<f64>,
}

impl Usage {
    /// `server 1.23 s CPU (0.9 cores), peak 35 MB; client 0.80 s (0.6 cores)`.
    pub fn short(&self) -> String {
        let mut text = String::new();
        if let (Some(cpu), Some(cores), Some(peak)) =
            (self.server_cpu_s, self.server_cores, self.server_rss_peak_mb)
        {
            text.push_str(&format!("server {cpu:.2} s ({cores:.2} cores), {peak:.0} MB peak; "));
        }
        text.push_str(&format!(
            "client {:.2} s ({:.2} cores)",
            self.client_cpu_s, self.client_cores
        ));
        text
    }
}

pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Samples the server's memory on a plain thread (not a tokio worker) while a workload runs.
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    client_cpu: f64,
    server: Option<ServerMeter>,
    loadavg: Option<f64>,
}

#[derive(Debug)]
struct ServerMeter {
    pids: Vec<u32>,
    cpu: f64,
    rss: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<()>,
}

impl Meter {
    pub fn start(server_pid: Option<u32>) -> Meter {
        let server = server_pid.map(|pid| {
            let pids = process_tree(pid);
            let (cpu, rss) = tree_cpu_and_rss(&pids);
            let peak = Arc::new(AtomicU64::new(rss));
            let stop = Arc::new(AtomicBool::new(false));
            let sampler = {
                let (pids, peak, stop) = (pids.clone(), peak.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let (_, rss) = tree_cpu_and_rss(&pids);
                        peak.fetch_max(rss, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            };
            ServerMeter { pids, cpu, rss, peak, stop, sampler }
        });
        Meter {
            started: Instant::now(),
            client_cpu: cpu_seconds(std::process::id()).unwrap_or(0.0),
            server,
            loadavg: loadavg(),
        }
    }

    pub fn finish(self) -> Usage {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let client = cpu_seconds(std::process::id()).unwrap_or(0.0) - self.client_cpu;
        let mut usage = Usage {
            wall_s: wall,
            client_cpu_s: client,
            client_cores: client / wall,
            loadavg_1m: self.loadavg,
            ..Usage::default()
        };
        if let Some(server) = self.server {
            server.stop.store(true, Ordering::Relaxed);
            let _ = server.sampler.join();
            let (cpu, rss) = tree_cpu_and_rss(&server.pids);
            let peak = server.peak.load(Ordering::Relaxed).max(rss);
            let cpu = (cpu - server.cpu).max(0.0);
            usage.server_cpu_s = Some(cpu);
            usage.server_cores = Some(cpu / wall);
            usage.server_rss_start_mb = Some(server.rss as f64 / 1024.0);
            usage.server_rss_peak_mb = Some(peak as f64 / 1024.0);
        }
        usage
    }
}

/// Raises this process's open-file limit to its hard limit (for many WebSocket connections);
/// returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(status_kib(me, "VmRSS").unwrap() > 0);
        assert!(process_tree(me).contains(&me));
    }
}
