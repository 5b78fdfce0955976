"""The same flows on the test graphs (tests/graphs: chat, stream, hitl, boom, nested) against one
server, with the official Python SDK (async client); prints a normalized JSON transcript.

crates/server/tests/it/graphs/compare.rs runs this against LangGraph's dev server and against
Spindle serving the same langgraph.json, and compares the two transcripts.

Usage: graphs_compare.py URL  (or SPINDLE_URL). Stdout: the transcript (JSON); stderr: progress.
The script fails (exit 1) only if a call fails in a way that stops a flow; a flow's failing call
is written into the transcript as `{"raised": ...}`, so the comparison shows it.

Normalized, because it legitimately differs between two servers:
- ids (thread, run, checkpoint, message, task, interrupt, assistant ids): UUIDs anywhere in a
  string, and 32-hex-digit ids, become `<KIND N>` (KIND from the key: thread, run, checkpoint,
  assistant, else id), N by first appearance within the flow and kind;
- timestamps (`created_at`, `updated_at`, ISO date-times in strings) become `<time>`;
- the metadata keys in SERVER_METADATA, which a server adds of its own to a run's, a
  checkpoint's or a `messages` event's metadata (its URL, host, plan, versions, the attempt);
  every other metadata key is kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import traceback
from typing import Any

from langgraph_sdk import get_client

# Metadata keys that only one server adds (or whose values are the server's own): dropped
# wherever they are (a run's, a checkpoint's metadata, a `messages` event's metadata).
SERVER_METADATA = {
    "langgraph_version",
    "langgraph_api_version",
    "langgraph_plan",
    "langgraph_host",
    "langgraph_api_url",
    "langgraph_request_id",
    "run_attempt",
    "x-request-id",
}
TIME_KEYS = {"created_at", "updated_at", "state_updated_at"}

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


# The kind of an id by the key it is under; its placeholder is `<KIND N>`, N by first
# appearance among ids of that kind (so a key only one server has shifts no other numbering).
KINDS = {
    "thread_id": "thread",
    "run_id": "run",
    "checkpoint_id": "checkpoint",
    "parent_checkpoint_id": "checkpoint",
    "assistant_id": "assistant",
}


class Ids:
    """Placeholders for ids, numbered by first appearance, per kind."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}
        self.counts: dict[str, int] = {}

    def __call__(self, raw: str, key: str | None = None) -> str:
        if raw not in self.seen:
            kind = KINDS.get(key or "", "id")
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.seen[raw] = f"<{kind} {self.counts[kind]}>"
        return self.seen[raw]


def norm(value: Any, ids: Ids, key: str | None = None) -> Any:
    """`value` normalized; dicts are walked in key order, so ids are numbered the same whatever
    order a server writes its keys in."""
    if isinstance(value, dict):
        out = {}
        for k in sorted(value, key=str):
            v = value[k]
            if k in SERVER_METADATA:
                continue
            if k in TIME_KEYS and v is not None:
                out[k] = "<time>"
                continue
            out[norm(k, ids)] = norm(v, ids, k)
        return out
    if isinstance(value, (list, tuple)):
        return [norm(v, ids, key) for v in value]
    if isinstance(value, str):
        if HEX32.match(value):
            return ids(value, key)
        if ISO_TIME.match(value):
            return "<time>"
        return UUID.sub(lambda m: ids(m.group(0).lower(), key), value)
    return value


def history_view(history: list[dict]) -> list[dict]:
    """values, next, tasks (name, interrupts), metadata source/step, parent as an index."""
    index = {h["checkpoint"]["checkpoint_id"]: i for i, h in enumerate(history)}
    out = []
    for h in history:
        parent = (h.get("parent_checkpoint") or {}).get("checkpoint_id")
        meta = h.get("metadata") or {}
        out.append(
            {
                "values": h.get("values"),
                "next": h.get("next"),
                "tasks": [
                    {
                        "name": t.get("name"),
                        "interrupts": t.get("interrupts"),
                        "error": t.get("error"),
                    }
                    for t in h.get("tasks") or []
                ],
                "source": meta.get("source"),
                "step": meta.get("step"),
                "parent": index.get(parent, "outside" if parent else None),
            }
        )
    return out


async def events(parts) -> list[list]:
    return [[p.event, p.data] async for p in parts]


async def attempt(coro) -> Any:
    try:
        return await coro
    except Exception as e:  # noqa: BLE001 - the transcript shows it
        status = getattr(e, "status_code", None)
        return {"raised": type(e).__name__, "status": status, "message": str(e)[:300]}


HI = {"messages": [{"role": "user", "content": "hi"}]}


async def flow_chat(c) -> dict:
    t = await c.threads.create()
    tid = t["thread_id"]
    first = await c.runs.wait(tid, "chat", input=HI)
    second = await c.runs.wait(
        tid, "chat", input={"messages": [{"role": "user", "content": "again"}]}
    )
    state = await c.threads.get_state(tid)
    history = await c.threads.get_history(tid, limit=10)
    thread = await c.threads.get(tid)
    runs = await c.runs.list(tid)
    stateless = await c.runs.wait(None, "chat", input=HI)
    return {
        "thread_created": t,
        "wait_1": first,
        "wait_2": second,
        "state": state,
        "history": history_view(history),
        "thread": thread,
        "runs": [{"status": r["status"], "metadata": r.get("metadata")} for r in runs],
        "stateless_wait": stateless,
    }


async def flow_stream(c) -> dict:
    out = {}
    for mode in ["values", "updates", "messages-tuple", "custom"]:
        tid = (await c.threads.create())["thread_id"]
        out[mode] = await events(c.runs.stream(tid, "stream", input=HI, stream_mode=mode))
    tid = (await c.threads.create())["thread_id"]
    out["values+updates+custom"] = await events(
        c.runs.stream(tid, "stream", input=HI, stream_mode=["values", "updates", "custom"])
    )
    tid = (await c.threads.create())["thread_id"]
    out["chat messages-tuple"] = await events(
        c.runs.stream(tid, "chat", input=HI, stream_mode="messages-tuple")
    )
    out["state"] = await c.threads.get_state(tid)
    return out


async def flow_hitl(c) -> dict:
    tid = (await c.threads.create())["thread_id"]
    first = await c.runs.wait(tid, "hitl", input={"draft": "post"})
    between = await c.threads.get_state(tid)
    thread_between = await c.threads.get(tid)
    resumed = await c.runs.wait(tid, "hitl", command={"resume": "yes"})
    after = await c.threads.get_state(tid)
    thread_after = await c.threads.get(tid)
    history = await c.threads.get_history(tid, limit=10)
    # The same, streamed (updates and values).
    tid2 = (await c.threads.create())["thread_id"]
    streamed = await events(
        c.runs.stream(tid2, "hitl", input={"draft": "post"}, stream_mode=["updates", "values"])
    )
    status_between = (await c.threads.get(tid2))["status"]
    streamed_resume = await events(
        c.runs.stream(tid2, "hitl", command={"resume": "no"}, stream_mode=["updates", "values"])
    )
    return {
        "wait": first,
        "state_between": between,
        "thread_between": {"status": thread_between["status"], "values": thread_between.get("values"),
                           "interrupts": thread_between.get("interrupts")},
        "wait_resume": resumed,
        "state_after": after,
        "thread_after": {"status": thread_after["status"], "values": thread_after.get("values"),
                         "interrupts": thread_after.get("interrupts")},
        "history": history_view(history),
        "stream": streamed,
        "stream_status_between": status_between,
        "stream_resume": streamed_resume,
        "stream_status_after": (await c.threads.get(tid2))["status"],
    }


async def flow_boom(c) -> dict:
    tid = (await c.threads.create())["thread_id"]
    streamed = await events(c.runs.stream(tid, "boom", input={"n": 1}, stream_mode="values"))
    runs = await c.runs.list(tid)
    thread = await c.threads.get(tid)
    state = await c.threads.get_state(tid)
    tid2 = (await c.threads.create())["thread_id"]
    waited = await attempt(c.runs.wait(tid2, "boom", input={"n": 2}, raise_error=False))
    raised = await attempt(c.runs.wait(tid2, "boom", input={"n": 3}))
    return {
        "stream": streamed,
        "run_status": [r["status"] for r in runs],
        "thread_status": thread["status"],
        "state": state,
        "wait_no_raise": waited,
        "wait_raise": raised,
        "thread_status_2": (await c.threads.get(tid2))["status"],
    }


async def flow_nested(c) -> dict:
    tid = (await c.threads.create())["thread_id"]
    streamed = await events(
        c.runs.stream(
            tid, "nested", input=HI, stream_mode=["values", "updates"], stream_subgraphs=True
        )
    )
    state = await c.threads.get_state(tid)
    sub = await attempt(c.threads.get_state(tid, subgraphs=True))
    history = await c.threads.get_history(tid, limit=10)
    tid2 = (await c.threads.create())["thread_id"]
    flat = await events(c.runs.stream(tid2, "nested", input=HI, stream_mode="updates"))
    return {
        "stream_subgraphs": streamed,
        "state": state,
        "state_subgraphs": sub,
        "history": history_view(history),
        "stream_updates": flat,
    }


async def flow_assistants(c) -> dict:
    out: dict[str, Any] = {}
    found = await c.assistants.search(graph_id="chat")
    out["search_chat"] = found
    out["search_chat_ids"] = [a["assistant_id"] for a in found]
    out["search_all_graphs"] = sorted(a["graph_id"] for a in await c.assistants.search(limit=100))
    for graph in ["chat", "hitl", "nested"]:
        aid = (await c.assistants.search(graph_id=graph))[0]["assistant_id"]
        out[f"get_{graph}"] = await c.assistants.get(aid)
        out[f"graph_{graph}"] = await c.assistants.get_graph(aid)
        out[f"schemas_{graph}"] = await c.assistants.get_schemas(aid)
    nested = (await c.assistants.search(graph_id="nested"))[0]["assistant_id"]
    out["graph_nested_xray"] = await attempt(c.assistants.get_graph(nested, xray=True))
    out["subgraphs_nested"] = await attempt(c.assistants.get_subgraphs(nested, recurse=True))
    out["graph_by_name"] = await attempt(c.assistants.get_graph("chat"))
    # The default assistants' ids as they are (a client may keep them): dots for dashes, so
    # the normalization leaves them.
    out["default_assistant_ids"] = {
        a["graph_id"]: a["assistant_id"].replace("-", ".")
        for a in await c.assistants.search(limit=100)
    }
    return out


FLOWS = [flow_chat, flow_stream, flow_hitl, flow_boom, flow_nested, flow_assistants]


async def main(url: str) -> int:
    c = get_client(url=url, api_key=None)
    transcript: dict[str, Any] = {}
    failed = 0
    for flow in FLOWS:
        name = flow.__name__.removeprefix("flow_")
        start = time.monotonic()
        try:
            raw = await asyncio.wait_for(flow(c), timeout=60)
        except Exception as e:  # noqa: BLE001 - report it, go on with the next flow
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", file=sys.stderr)
            traceback.print_exc()
            raw = {"flow_failed": f"{type(e).__name__}: {str(e)[:300]}"}
        else:
            print(f"ok {name} ({time.monotonic() - start:.1f} s)", file=sys.stderr)
        keep = os.environ.get("GRAPHS_COMPARE_RAW") == "1"
        transcript[name] = raw if keep else norm(raw, Ids())
    print(json.dumps(transcript, indent=1, sort_keys=True, default=str))
    print(f"{len(FLOWS) - failed} passed, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ["SPINDLE_URL"]
    sys.exit(asyncio.run(main(url)))
