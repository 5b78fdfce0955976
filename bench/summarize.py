#!/usr/bin/env python3
"""Prints the side-by-side Markdown table of BENCHMARKS.md from the JSON reports that
bench/run-all.sh wrote to target/bench-results/ (TARGET-WORKLOAD.json)."""

import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent
results = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "target" / "bench-results"
targets = ["sqlite", "postgres", "langgraph"]
names = {"sqlite": "Spindle SQLite", "postgres": "Spindle PostgreSQL", "langgraph": "LangGraph dev"}


def load(target, workload):
    path = results / f"{target}-{workload}.json"
    return json.loads(path.read_text()) if path.exists() else None


def num(x, digits=0):
    return f"{x:,.{digits}f}"


def res(case):
    u = case["usage"]
    if u.get("server_cpu_s") is None:
        return f"client {u['client_cores']:.2f} cores"
    return (f"server {u['server_cores']:.2f} cores, {u['server_rss_peak_mb']:.0f} MB; "
            f"client {u['client_cores']:.2f} cores")


def cell(workload, case):
    if case is None:
        return None, "not run"
    if case.get("skipped"):
        return None, "skipped: " + case["skipped"]
    r = case["result"]
    bad = " **CORRECTNESS FAILURE**" if case["failures"] else ""
    if workload == "sequential":
        l = r["latency"]
        return l["p50_ms"], f"p50 {l['p50_ms']:.2f} ms, p99 {l['p99_ms']:.2f} ms ({r['runs_ok']} runs){bad}"
    if workload == "concurrent":
        l = r["latency"]
        errs = sum(r["errors"].values())
        return r["runs_per_s"], (f"{num(r['runs_per_s'])} runs/s, p50 {l['p50_ms']:.1f} ms, "
                                 f"p99 {l['p99_ms']:.1f} ms, {errs} errors{bad}")
    if workload == "stream":
        return r["median_events_per_s"], (f"{num(r['median_events_per_s'])} events/s, first "
                                          f"{r['median_first_event_ms']:.1f} ms{bad}")
    if workload == "race":
        st = ", ".join(f"{k}×{v}" for k, v in r["statuses"].items())
        return None, (f"{st}; threads {r['threads_found']}, runs {r['runs_recorded']}, messages "
                      f"{r['messages']}/{r['expected_messages']}" + (" ok" if not bad else bad))
    if workload == "sessions":
        return r["sessions_per_s"], (f"{num(r['sessions_per_s'], 1)} sessions/s, p50 "
                                     f"{r['latency']['p50_ms']:.1f} ms, {r['sessions_failed']} failed{bad}")
    return None, case["summary"] + bad


def ratio(workload, a, b):
    if a is None or b is None or not a or not b:
        return ""
    if workload == "sequential":  # latency: how many times faster
        return f"{b / a:,.1f}×"
    return f"{a / b:,.1f}×"


print("| workload | case | " + " | ".join(names[t] for t in targets)
      + " | SQLite ÷ LangGraph | PostgreSQL ÷ LangGraph | reproduce |")
print("|---|---|---|---|---|---|---|---|")
for workload in ["sequential", "concurrent", "stream", "race", "sessions", "websocket"]:
    reports = {t: load(t, workload) for t in targets}
    case_names = []
    for rep in reports.values():
        for c in (rep or {}).get("cases", []):
            if c["name"] not in case_names:
                case_names.append(c["name"])
    for name in case_names:
        vals = {}
        cells = []
        for t in targets:
            case = next((c for c in (reports[t] or {}).get("cases", []) if c["name"] == name), None)
            v, text = cell(workload, case)
            vals[t] = v
            if case is not None and not case.get("skipped"):
                text += f"<br>({res(case)})"
            cells.append(text)
        print(f"| {workload} | {name} | " + " | ".join(cells) + f" | {ratio(workload, vals['sqlite'], vals['langgraph'])}"
              f" | {ratio(workload, vals['postgres'], vals['langgraph'])} | `bench/run-all.sh all {workload}` |")
