"""Conversations as chat UIs hold them (issue #13), through the official Python SDK
(langgraph-sdk, sync client): follow-ups that carry the head checkpoint, the step -1 state,
regenerate, edit, interrupts and their resumes, breakpoints, the refusals Spindle makes on
purpose, and runs racing on one thread.

Run by crates/server/tests/it/sdk.rs with:
    SPINDLE_URL        http://127.0.0.1:PORT of a server started with `--auth keys`
    SPINDLE_KEY_ALICE  an API key of user alice
    SPINDLE_KEY_BOB    an API key of user bob

Against LangGraph's own server (`langgraph dev`, no auth; graphs `echo` and `synthetic` that
mimic Spindle's built-in agents, see docs/langgraph-checkpoints.md, "Checking conversations.py
against LangGraph"): leave the keys unset and pass `--reference` (or SPINDLE_REFERENCE=1). That
skips the checks of what Spindle does differently on purpose (marked `spindle_only`) and the
parts of other checks that are Spindle's own (error bodies' `code` and `request_id`).

Plain Python, no pytest: every check creates the threads it needs, runs on its own and prints
`ok NAME` or `FAIL NAME: ...` (expected vs got); the last line is `N passed, M failed`, and the
exit status is 1 if any check failed. The checks assert on branch structure and values, never
on how many checkpoints a run writes (Spindle writes fewer than LangGraph).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import httpx
import runner
from langgraph_sdk import get_sync_client
from langgraph_sdk.errors import (
    APIStatusError,
    ConflictError,
    NotFoundError,
    UnprocessableEntityError,
)

URL = os.environ["SPINDLE_URL"]
KEY_ALICE = os.environ.get("SPINDLE_KEY_ALICE") or None
KEY_BOB = os.environ.get("SPINDLE_KEY_BOB") or None
REFERENCE = "--reference" in sys.argv[1:] or os.environ.get("SPINDLE_REFERENCE") == "1"

# Bounded, so a server that hangs fails a check instead of stalling the test for minutes.
TIMEOUT = 30.0


def client(key: str | None):
    return get_sync_client(url=URL, api_key=key, timeout=TIMEOUT)


alice = client(KEY_ALICE)
bob = client(KEY_BOB)

# A tag unique to this run, in the metadata of every thread the checks create.
RUN = uuid.uuid4().hex

# LangChain's human-in-the-loop interrupt value, as agent-chat-ui renders it.
HITL = {
    "action_requests": [
        {"name": "send_email", "args": {"to": "a@b.c"}, "description": "Please review"}
    ],
    "review_configs": [
        {"action_name": "send_email", "allowed_decisions": ["approve", "edit", "reject"]}
    ],
}
APPROVE = {"decisions": [{"type": "approve"}]}
EDIT = {
    "decisions": [
        {"type": "edit", "edited_action": {"name": "send_email", "args": {"to": "x@y.z"}}}
    ]
}
REJECT = {"decisions": [{"type": "reject", "message": "no"}]}

# `synthetic` options that make a run last about two seconds (400 custom events, 5 ms apart):
# long enough for a second request to arrive while it runs.
SLOW = {"n": 400, "delay_ms": 5}
INTERRUPT_ID = re.compile(r"[0-9a-f]{32}")
# Run statuses after which a run does no more work.
FINAL = {"success", "error", "interrupted", "timeout"}


CheckFailed, expect, expect_eq = runner.CheckFailed, runner.expect, runner.expect_eq


ERROR_KEYS = ("detail",) if REFERENCE else runner.ERROR_KEYS


def expect_error(
    error_class: type[APIStatusError], status: int, call: Callable[[], Any], what: str
) -> APIStatusError:
    return runner.expect_error(error_class, status, call, what, ERROR_KEYS)


def expect_error_body(body: Any, what: str) -> None:
    runner.expect_error_body(body, what, ERROR_KEYS)


def expect_http_error(statuses: set[int], call: Callable[[], Any], what: str) -> str:
    """For runs.wait and runs.join, which raise httpx's HTTPStatusError (the SDK's
    `request_reconnect`), not its typed errors: the status is one of `statuses` and the body
    has a `detail`, which is returned."""
    try:
        result = call()
    except httpx.HTTPStatusError as e:
        got = e.response.status_code
        if got not in statuses:
            raise CheckFailed(
                f"{what}: expected HTTP {sorted(statuses)}, got HTTP {got}: {e.response.text!r}"
            ) from None
        try:
            body = e.response.json()
        except ValueError:
            body = e.response.text
        expect_error_body(body, what)
        return body["detail"]
    raise CheckFailed(f"{what}: expected HTTP {sorted(statuses)}, but the call returned {result!r}")


# ---------------------------------------------------------------- conversations


def human(text: str, **options: Any) -> dict:
    """A run input as agent-chat-ui's composer sends it: a human message with a client id
    (which the server must keep), plus `synthetic` options if any."""
    return {"messages": [{"type": "human", "content": text, "id": str(uuid.uuid4())}], **options}


def edited(text: str) -> dict:
    """An edit's input, as agent-chat-ui sends it: no message id."""
    return {"messages": [{"type": "human", "content": text}]}


def messages(values: Any) -> list[dict]:
    expect(isinstance(values, dict), f"values are not a JSON object: {values!r}")
    found = values.get("messages", [])
    expect(isinstance(found, list), f"values.messages is not a list: {values!r}")
    return found


def texts(values: Any) -> list[tuple[str, str]]:
    return [(m.get("type"), m.get("content")) for m in messages(values)]


def compact(value: Any) -> list[str]:
    """The compact JSON of a resume value as the reply quotes it: serde_json's form (keys
    sorted, no preserve_order) or the keys in the order they were sent."""
    forms = [
        json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=s)
        for s in (True, False)
    ]
    return list(dict.fromkeys(forms))


def expect_resumed(values: Any, resume: Any, text: str, what: str) -> None:
    """The last message is the agent's reply to `text` after a resume with `resume`."""
    got = messages(values)
    expect(got, f"{what}: no messages in {values!r}")
    last = got[-1]
    content = last.get("content")
    expect_eq(last.get("type"), "ai", f"{what}: the last message's type")
    quoted = [f"resumed with: {form}" for form in compact(resume)]
    expect(
        isinstance(content, str) and any(q in content for q in quoted),
        f"{what}: expected the reply to contain {quoted[0]!r}, got {content!r}",
    )
    expect(
        f"echo: {text}" in content,
        f"{what}: expected the reply to contain {f'echo: {text}'!r}, got {content!r}",
    )


def expect_no_resume_reply(values: Any, what: str) -> None:
    replies = [c for t, c in texts(values) if isinstance(c, str) and "resumed with:" in c]
    expect(
        not replies,
        f"{what}: expected no `resumed with:` reply, got {replies!r} in {texts(values)!r}",
    )


def new_thread(owner=alice) -> str:
    return owner.threads.create(metadata={"run": RUN})["thread_id"]


def head_id(tid: str, owner=alice) -> str | None:
    """The head checkpoint's id; None for a thread without checkpoints (`checkpoint: null`)."""
    cp = owner.threads.get_state(tid)["checkpoint"]
    return cp.get("checkpoint_id") if cp else None


def head(tid: str, owner=alice) -> dict:
    """The head checkpoint as agent-chat-ui (SDK 1.8.10) sends it with every follow-up."""
    checkpoint_id = head_id(tid, owner)
    expect(checkpoint_id is not None, f"thread {tid} has no head checkpoint")
    return {"checkpoint_id": checkpoint_id, "checkpoint_ns": "", "checkpoint_map": {}}


def say(tid: str, text: str, owner=alice, agent: str = "echo", **options: Any) -> dict:
    """A chat turn: the message, with the head checkpoint if the thread has one."""
    checkpoint = head(tid, owner) if head_id(tid, owner) else None
    return owner.runs.wait(tid, agent, input=human(text, **options), checkpoint=checkpoint)


def conversation(*turns: str, owner=alice) -> str:
    tid = new_thread(owner)
    for text in turns:
        say(tid, text, owner)
    return tid


def history(tid: str, owner=alice) -> list[dict]:
    return owner.threads.get_history(tid, limit=1000)


def cp_id(entry: dict) -> str:
    return entry["checkpoint"]["checkpoint_id"]


def parent_id(entry: dict) -> str | None:
    parent = entry.get("parent_checkpoint")
    return parent["checkpoint_id"] if parent else None


def message_ids(entry: dict) -> list[str]:
    return [m.get("id") for m in entry["values"].get("messages", [])]


def brief(hist: list[dict]) -> list[str]:
    """History, one short line per entry, for failure messages."""
    return [
        f"{cp_id(h)[-8:]}<-{(parent_id(h) or 'null')[-8:]} step {h['metadata'].get('step')} "
        f"{h['metadata'].get('source')} next={h['next']} {texts(h['values'])}"
        for h in hist
    ]


def expect_tree(tid: str, hist: list[dict], what: str) -> dict[str, dict]:
    """History is one tree of this thread's checkpoints, newest first: ids unique and
    decreasing as strings (they sort in creation order), the oldest entry the empty step -1
    state and the only one without a parent, every other entry's parent an entry of the
    thread listed after it, and step = parent's step + 1. Returns the entries by id."""
    ids = [cp_id(h) for h in hist]
    expect(hist, f"{what}: empty history")
    expect_eq(len(set(ids)), len(ids), f"{what}: distinct checkpoint ids in history")
    expect(
        ids == sorted(ids, reverse=True),
        f"{what}: history is not newest first by checkpoint id (ids must sort as strings in "
        f"creation order): {brief(hist)}",
    )
    root = hist[-1]
    expect_eq(
        [parent_id(h) for h in hist].count(None),
        1,
        f"{what}: entries without a parent ({brief(hist)})",
    )
    expect_eq(root["parent_checkpoint"], None, f"{what}: the oldest entry's parent_checkpoint")
    expect_eq(root["values"], {"messages": []}, f"{what}: the oldest entry's values")
    expect_eq(root["next"], ["__start__"], f"{what}: the oldest entry's next")
    expect_eq(root["metadata"].get("step"), -1, f"{what}: the oldest entry's metadata.step")
    expect_eq(
        root["metadata"].get("source"), "input", f"{what}: the oldest entry's metadata.source"
    )
    entries = {cp_id(h): h for h in hist}
    for i, h in enumerate(hist):
        expect_eq(
            h["checkpoint"].get("thread_id"), tid, f"{what}: checkpoint.thread_id of {cp_id(h)}"
        )
        source = h["metadata"].get("source")
        expect(
            source in ("input", "loop", "fork", "update"),
            f"{what}: metadata.source of {cp_id(h)} is {source!r}",
        )
        if h is root:
            continue
        parent = parent_id(h)
        expect(
            parent in ids[i + 1 :],
            f"{what}: the parent {parent} of {cp_id(h)} is not an older entry of the thread: {brief(hist)}",
        )
        expect_eq(
            h["parent_checkpoint"].get("thread_id"), tid, f"{what}: parent_checkpoint.thread_id"
        )
        expect_eq(
            h["parent_checkpoint"].get("checkpoint_ns"),
            "",
            f"{what}: parent_checkpoint.checkpoint_ns",
        )
        expect_eq(
            h["metadata"].get("step"),
            entries[parent]["metadata"].get("step") + 1,
            f"{what}: step of {cp_id(h)} (its parent's step + 1)",
        )
    return entries


def expect_linear(hist: list[dict], what: str) -> None:
    """One branch: each entry's parent is the entry listed next."""
    for newer, older in zip(hist, hist[1:]):
        expect(
            parent_id(newer) == cp_id(older),
            f"{what}: expected one branch (each entry's parent the next entry), got {brief(hist)}",
        )


def chain(entries: dict[str, dict], start: str) -> list[str]:
    """The checkpoint ids from `start` up to the root."""
    out = [start]
    while (parent := parent_id(entries[out[-1]])) is not None:
        out.append(parent)
    return out


def first_seen(hist: list[dict], message_id: str, what: str) -> dict:
    """agent-chat-ui's firstSeenState: the oldest history entry holding the message."""
    holding = [h for h in hist if message_id in message_ids(h)]
    expect(holding, f"{what}: no history entry holds message {message_id}: {brief(hist)}")
    return holding[-1]


def expect_head_is_newest(tid: str, hist: list[dict], what: str) -> dict:
    state = alice.threads.get_state(tid)
    expect_eq(cp_id(state), cp_id(hist[0]), f"{what}: get_state's checkpoint vs history[0]")
    return state


def fork_point(entries: dict[str, dict], a: str, b: str, what: str) -> str:
    """The newest checkpoint both `a` and `b` descend from; checks neither descends from the
    other (two branches)."""
    ca, cb = chain(entries, a), chain(entries, b)
    expect(a not in cb and b not in ca, f"{what}: {a} and {b} are on one branch")
    return next(c for c in ca if c in cb)


def snapshot(tid: str, owner=alice) -> dict:
    """What a refused request must leave as it was."""
    thread = owner.threads.get(tid)
    return {
        "status": thread["status"],
        "values": thread["values"],
        "interrupts": thread.get("interrupts"),
        "history": [cp_id(h) for h in history(tid, owner)],
        "runs": [(r["run_id"], r["status"]) for r in owner.runs.list(tid, limit=100)],
    }


def expect_unchanged(tid: str, before: dict, what: str, owner=alice) -> None:
    after = snapshot(tid, owner)
    for key in before:
        expect_eq(after[key], before[key], f"{what}: thread {key} after the refused request")


# ---------------------------------------------------------------- interrupts


def interrupted(text: str = "send it", value: Any = HITL, **options: Any) -> tuple[str, str]:
    """A thread whose `synthetic` run stopped on an interrupt with `value`: (thread, interrupt id)."""
    tid = new_thread()
    options = {"n": 0, **options, "interrupt": value}
    values = alice.runs.wait(tid, "synthetic", input=human(text, **options))
    found = values.get("__interrupt__") if isinstance(values, dict) else None
    expect(
        isinstance(found, list) and len(found) == 1,
        f"runs.wait(synthetic, interrupt=...): expected one `__interrupt__` in the values, got {values!r}",
    )
    return tid, found[0].get("id")


def expect_interrupt_items(items: Any, value: Any, what: str, *, iid: str | None = None) -> str:
    """`[{"value", "id"...}]`, one item: returns its id (32 lowercase hex)."""
    expect(
        isinstance(items, list) and len(items) == 1,
        f"{what}: expected one interrupt, got {items!r}",
    )
    item = items[0]
    expect_eq(item.get("value"), value, f"{what}: interrupt value")
    got = item.get("id")
    expect(
        isinstance(got, str) and INTERRUPT_ID.fullmatch(got) is not None,
        f"{what}: interrupt id {got!r} is not 32 lowercase hex",
    )
    if iid is not None:
        expect_eq(got, iid, f"{what}: interrupt id")
    return got


def expect_interrupted(tid: str, value: Any, iid: str, what: str) -> None:
    thread = alice.threads.get(tid)
    expect_eq(thread["status"], "interrupted", f"{what}: thread status")
    expect(
        "__interrupt__" not in (thread["values"] or {}),
        f"{what}: thread values hold `__interrupt__`: {thread['values']!r}",
    )
    state = alice.threads.get_state(tid)
    expect_eq(state["next"], ["synthetic"], f"{what}: state next")
    expect_eq(len(state["tasks"]), 1, f"{what}: state tasks ({state['tasks']!r})")
    task = state["tasks"][0]
    expect_eq(task.get("name"), "synthetic", f"{what}: the task's name")
    want = [{"id": iid, "value": value}]
    expect_eq(task.get("interrupts"), want, f"{what}: state tasks[0].interrupts")
    expect_eq(state.get("interrupts"), want, f"{what}: state interrupts")
    expect_eq(
        thread.get("interrupts"),
        {task["id"]: want},
        f"{what}: thread interrupts (keyed by task id)",
    )


def expect_idle(tid: str, what: str) -> dict:
    thread = alice.threads.get(tid)
    expect_eq(thread["status"], "idle", f"{what}: thread status")
    expect_eq(thread.get("interrupts"), {}, f"{what}: thread interrupts")
    state = alice.threads.get_state(tid)
    expect_eq(state["next"], [], f"{what}: state next")
    expect_eq(state.get("interrupts"), [], f"{what}: state interrupts")
    return state


# ---------------------------------------------------------------- runs racing


def wait_until_running(tid: str, rid: str, what: str, limit: float = 20.0) -> None:
    """Polls until the run is running: the race's second request is sent only then. The run
    is given `SLOW` options so that it still runs when that request arrives."""
    deadline = time.monotonic() + limit
    while (status := alice.runs.get(tid, rid)["status"]) != "running":
        expect(
            status == "pending",
            f"{what}: run {rid} is {status!r} before it was seen running: too short to race "
            f"(it was given {SLOW}; a `synthetic` run must stream its events, resumes included)",
        )
        expect(time.monotonic() < deadline, f"{what}: run {rid} still pending after {limit:.0f} s")
        time.sleep(0.02)


def watch_runs(tid: str, rids: list[str], what: str, limit: float = 60.0) -> dict[str, str | None]:
    """Polls runs.list until none of `rids` is pending or running, failing at once if two runs
    of the thread are ever running together. Returns each run's final status (None: deleted)."""
    deadline = time.monotonic() + limit
    while True:
        listed = alice.runs.list(tid, limit=100)
        running = [r["run_id"] for r in listed if r["status"] == "running"]
        expect(len(running) <= 1, f"{what}: two runs running at once on the thread: {running}")
        status = {r["run_id"]: r["status"] for r in listed}
        if all(status.get(rid) not in ("pending", "running") for rid in rids):
            return {rid: status.get(rid) for rid in rids}
        expect(
            time.monotonic() < deadline,
            f"{what}: runs not finished after {limit:.0f} s: {[(r, status.get(r)) for r in rids]}",
        )
        time.sleep(0.02)


def expect_settled(tid: str, what: str) -> dict:
    thread = alice.threads.get(tid)
    expect(thread["status"] != "busy", f"{what}: thread still busy after its runs ended")
    active = [
        r["run_id"]
        for r in alice.runs.list(tid, limit=100)
        if r["status"] in ("pending", "running")
    ]
    expect_eq(active, [], f"{what}: active runs after the race")
    return thread


def expect_not_interrupted_error(tid: str, rid: str, what: str) -> None:
    """The run failed because the thread was no longer interrupted, and says so."""
    failure = alice.runs.join(tid, rid)
    error = failure.get("__error__") if isinstance(failure, dict) else None
    expect(
        isinstance(error, dict) and "not interrupted" in str(error.get("message")),
        f"{what}: runs.join of the failed resume: expected `__error__` saying `not interrupted`, got {failure!r}",
    )


@contextlib.contextmanager
def racing(tid: str, first: str, what: str) -> Iterator[None]:
    """Around a race's second request and checks: a failure says how long the first run
    lasted (server timestamps), since a first run that ends before the second request
    arrives is no race."""
    try:
        yield
    except CheckFailed as e:
        try:
            run = alice.runs.get(tid, first)
        except NotFoundError:
            raise e from None  # deleted (rollback): nothing to add
        took = (timestamp(run["updated_at"]) - timestamp(run["created_at"])).total_seconds()
        raise CheckFailed(
            f"{e} (line {runner.script_line(e, __file__)}) [the first run {first} is {run['status']!r} and lasted {took:.3f} s from "
            f"created_at to updated_at; given {SLOW} it should run about 2 s]"
        ) from None


def timestamp(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def race_resume_first(strategy: str) -> None:
    """An interrupted thread; a (slow) resume is running; a new input arrives with `strategy`."""
    what = f"resume running, input with {strategy}"
    tid, iid = interrupted("race", **SLOW)
    first = alice.runs.create(tid, "synthetic", input=dict(SLOW), command={"resume": "R"})["run_id"]
    wait_until_running(tid, first, what)
    with racing(tid, first, what):
        new_input = human("new input", n=0)

        if strategy == "reject":
            e = expect_error(
                ConflictError,
                409,
                lambda: alice.runs.create(
                    tid, "synthetic", input=new_input, multitask_strategy="reject"
                ),
                f"{what}: the input",
            )
            expect(
                e.message.startswith("Thread is already running a task"),
                f"{what}: 409 message {e.message!r}",
            )
            expect_eq(
                watch_runs(tid, [first], what), {first: "success"}, f"{what}: the resume's end"
            )
            values = alice.threads.get(tid)["values"]
            expect_resumed(values, "R", "race", f"{what}: thread values")
            expect(
                ("human", "new input") not in texts(values),
                f"{what}: the refused input is in {texts(values)}",
            )
            expect_idle(tid, what)
            return

        second = alice.runs.create(tid, "synthetic", input=new_input, multitask_strategy=strategy)[
            "run_id"
        ]
        statuses = watch_runs(tid, [first, second], what)
        values = alice.runs.join(tid, second)
        expect_settled(tid, what)
        expect_idle(tid, what)
        expect_eq(
            alice.threads.get(tid)["values"]["messages"],
            values["messages"],
            f"{what}: thread vs join",
        )
        expect_eq(
            texts(values)[-2:],
            [("human", "new input"), ("ai", "echo: new input")],
            f"{what}: last messages",
        )
        if strategy == "enqueue":
            expect_eq(statuses, {first: "success", second: "success"}, f"{what}: run statuses")
            expect_resumed(
                {"messages": messages(values)[:-2]}, "R", "race", f"{what}: the resume's reply"
            )
        else:
            # The resume was cut off: the input applies to the interrupted state (abandoning it).
            want = {first: "interrupted" if strategy == "interrupt" else None, second: "success"}
            expect_eq(statuses, want, f"{what}: run statuses (None: deleted)")
            expect_eq(texts(values)[0], ("human", "race"), f"{what}: first message")
            expect_no_resume_reply(values, what)
            if strategy == "rollback":
                expect_error(
                    NotFoundError,
                    404,
                    lambda: alice.runs.get(tid, first),
                    f"{what}: the rolled-back resume",
                )


def race_input_first(strategy: str) -> None:
    """An interrupted thread; a (slow) plain input is running (abandoning the interrupt); a
    resume arrives with `strategy`."""
    what = f"input running, resume with {strategy}"
    tid, iid = interrupted("race")
    first = alice.runs.create(tid, "synthetic", input=human("plain", **SLOW))["run_id"]
    wait_until_running(tid, first, what)
    with racing(tid, first, what):
        resume = lambda: alice.runs.create(  # noqa: E731
            tid, "synthetic", command={"resume": "R"}, multitask_strategy=strategy
        )

        if strategy in ("reject", "enqueue"):
            if strategy == "reject":
                e = expect_error(ConflictError, 409, resume, f"{what}: the resume")
                expect(
                    e.message.startswith("Thread is already running a task"),
                    f"{what}: 409 message {e.message!r}",
                )
                second = None
            else:
                # Spindle may refuse the resume at once, or queue it to fail when its turn comes
                # (the thread is no longer interrupted by then); LangGraph runs it as a no-op.
                try:
                    second = resume()["run_id"]
                except ConflictError as e:
                    expect(
                        not REFERENCE, f"{what}: LangGraph queues the resume, got 409 {e.body!r}"
                    )
                    expect("not interrupted" in e.message, f"{what}: 409 message {e.message!r}")
                    second = None
            rids = [first] + ([second] if second else [])
            statuses = watch_runs(tid, rids, what)
            expect_eq(statuses[first], "success", f"{what}: the input's status")
            if second:
                if REFERENCE:
                    expect_eq(
                        statuses[second],
                        "success",
                        f"{what}: the queued resume's status (LangGraph: a no-op)",
                    )
                else:
                    expect_eq(statuses[second], "error", f"{what}: the queued resume's status")
                    expect_not_interrupted_error(tid, second, what)
            thread = expect_settled(tid, what)
            expect(
                thread["status"] != "interrupted",
                f"{what}: the thread is interrupted again: {thread!r}",
            )
            values = thread["values"]
            expect_eq(
                texts(values)[-2:],
                [("human", "plain"), ("ai", "echo: plain")],
                f"{what}: last messages",
            )
            expect_no_resume_reply(values, what)
            return

        second = resume()["run_id"]
        statuses = watch_runs(tid, [first, second], what)
        if strategy == "rollback":
            expect_eq(
                statuses, {first: None, second: "success"}, f"{what}: run statuses (None: deleted)"
            )
            expect_error(
                NotFoundError,
                404,
                lambda: alice.runs.get(tid, first),
                f"{what}: the rolled-back input",
            )
            values = alice.runs.join(tid, second)
            expect_idle(tid, what)
            expect_resumed(values, "R", "race", f"{what}: the resume's reply")
            expect(
                ("human", "plain") not in texts(values),
                f"{what}: the rolled-back input is in {texts(values)}",
            )
            return
        # `interrupt`: the input is cut off, but it may have stored its input before (as
        # LangGraph does, and Spindle's first step), abandoning the interrupt, and leaving its
        # agent's task pending. Either the cut-off input left nothing and the resume answers the
        # interrupt; or it left its message and the resume runs that pending task, completing the
        # input (LangGraph, with the value unused; Spindle, docs §18: "a resume then answers it");
        # or the resume finds no interrupt and fails, saying so. Nothing is lost either way.
        expect_eq(statuses[first], "interrupted", f"{what}: the cut-off input's status")
        thread = expect_settled(tid, what)
        values = thread["values"]
        if ("human", "plain") not in texts(values):
            expect_eq(
                statuses[second],
                "success",
                f"{what}: the resume's status (the thread was still interrupted)",
            )
            expect_idle(tid, what)
            expect_resumed(values, "R", "race", f"{what}: the resume's reply")
        elif statuses[second] == "success":
            expect_idle(tid, what)
            expect_eq(
                texts(values)[-2],
                ("human", "plain"),
                f"{what}: the message before the reply (the resume completes the cut-off input)",
            )
            expect_reply(values, "plain", "R", f"{what}: the reply to the cut-off input")
        else:
            expect(not REFERENCE, f"{what}: LangGraph runs the resume, got {statuses[second]!r}")
            expect_eq(statuses[second], "error", f"{what}: the resume's status")
            expect_not_interrupted_error(tid, second, what)
            expect(
                thread["status"] != "interrupted",
                f"{what}: thread status {thread['status']!r} with the interrupt abandoned",
            )
            expect_no_resume_reply(values, what)


def expect_reply(values: Any, text: str, unused: Any, what: str) -> None:
    """The last message answers `text` with no interrupt asked: `echo: <text>`. A resume value
    that answered no interrupt (`unused`) goes nowhere, in LangGraph and in Spindle (docs §18)."""
    del unused
    want = [f"echo: {text}"]
    last = messages(values)[-1] if messages(values) else {}
    expect(
        last.get("type") == "ai" and last.get("content") in want,
        f"{what}: expected an AI message {' or '.join(map(repr, want))}, got {texts(values)[-1:]}",
    )


# ---------------------------------------------------------------- checks

SPINDLE_ONLY: set[str] = set()


def spindle_only(check: Callable[[], None]) -> Callable[[], None]:
    """Spindle refuses here on purpose where LangGraph does something else
    (docs/langgraph-checkpoints.md §17): skipped with --reference."""
    SPINDLE_ONLY.add(check.__name__)
    return check


def check_first_run_starts_at_step_minus_one() -> None:
    tid = new_thread()
    sent = human("hello")
    values = alice.runs.wait(tid, "echo", input=sent)
    expect_eq(texts(values), [("human", "hello"), ("ai", "echo: hello")], "runs.wait values")
    hist = history(tid)
    entries = expect_tree(tid, hist, "history after one run")
    state = expect_head_is_newest(tid, hist, "after one run")
    expect_eq(state["values"]["messages"], values["messages"], "get_state messages vs runs.wait")
    hello = sent["messages"][0]["id"]
    expect_eq(message_ids(state)[0], hello, "the client's message id, kept")
    seen = first_seen(hist, hello, "hello")
    expect_eq(
        parent_id(seen),
        cp_id(hist[-1]),
        "the parent of the state where `hello` first appears (the step -1 entry)",
    )
    expect(
        entries[parent_id(seen)]["values"] == {"messages": []}, "the step -1 entry holds no message"
    )


def check_follow_ups_carry_the_head_checkpoint() -> None:
    tid = new_thread()
    first = alice.runs.wait(tid, "echo", input=human("one"))
    forms = [
        (
            "checkpoint={checkpoint_id, checkpoint_ns, checkpoint_map} (agent-chat-ui)",
            "two",
            lambda c: {
                "checkpoint": {
                    "checkpoint_id": c["checkpoint_id"],
                    "checkpoint_ns": "",
                    "checkpoint_map": {},
                }
            },
        ),
        ("checkpoint_id=<head>", "three", lambda c: {"checkpoint_id": c["checkpoint_id"]}),
        ("checkpoint as get_state returns it", "four", lambda c: {"checkpoint": c}),
    ]
    want = texts(first)
    earlier = messages(first)
    for form, text, args in forms:
        cp = alice.threads.get_state(tid)["checkpoint"]
        values = alice.runs.wait(tid, "echo", input=human(text), **args(cp))
        want += [("human", text), ("ai", f"echo: {text}")]
        expect_eq(texts(values), want, f"a follow-up with {form}")
        expect_eq(
            [m["id"] for m in messages(values)[: len(earlier)]],
            [m["id"] for m in earlier],
            f"{form}: ids of the earlier messages",
        )
        earlier = messages(values)
    hist = history(tid)
    expect_tree(tid, hist, "history after four turns")
    expect_linear(hist, "history after follow-ups that carry the head checkpoint (no fork)")
    state = expect_head_is_newest(tid, hist, "after four turns")
    expect_eq(state["values"]["messages"], earlier, "get_state messages")
    for m in earlier:
        if m["type"] == "human":
            seen = first_seen(hist, m["id"], m["content"])
            parent = next(h for h in hist if cp_id(h) == parent_id(seen))
            expect(
                m["id"] not in message_ids(parent),
                f"the parent of {m['content']!r}'s first state holds it",
            )


def check_regenerate_the_last_answer() -> None:
    """agent-chat-ui's regenerate: no input, the parent checkpoint of the AI message's first
    state, streamed with its options."""
    tid = conversation("one", "two")
    old_hist = history(tid)
    old = messages(old_hist[0]["values"])[-1]
    expect_eq((old["type"], old["content"]), ("ai", "echo: two"), "the answer to regenerate")
    parent = first_seen(old_hist, old["id"], "echo: two")["parent_checkpoint"]
    parts = list(
        alice.runs.stream(
            tid,
            "echo",
            input=None,
            checkpoint={"checkpoint_id": parent["checkpoint_id"], "checkpoint_ns": ""},
            stream_mode=["values"],
            stream_subgraphs=True,
            stream_resumable=True,
            on_disconnect="continue",
        )
    )
    errors = [p for p in parts if p.event == "error"]
    expect(not errors, f"regenerate stream: error events {errors!r}")
    final = [p.data for p in parts if p.event == "values"]
    expect(final, f"regenerate stream: no values event in {[p.event for p in parts]}")
    new_messages = messages(final[-1])
    expect_eq(
        texts(final[-1]),
        [("human", "one"), ("ai", "echo: one"), ("human", "two"), ("ai", "echo: two")],
        "regenerate: the final values",
    )
    new = new_messages[-1]
    expect(new["id"] != old["id"], f"regenerate: the new answer has the old id {old['id']}")
    expect_eq(
        [m["id"] for m in new_messages[:-1]],
        [m["id"] for m in messages(old_hist[0]["values"])[:-1]],
        "regenerate: ids of the messages before the answer",
    )
    hist = history(tid)
    entries = expect_tree(tid, hist, "history after regenerate")
    state = expect_head_is_newest(tid, hist, "after regenerate")
    expect_eq(state["values"]["messages"], new_messages, "regenerate: get_state is the new branch")
    new_head, old_head = cp_id(hist[0]), cp_id(old_hist[0])
    expect(old_head in entries, f"regenerate: the old branch's head {old_head} left history")
    expect_eq(
        fork_point(entries, new_head, old_head, "regenerate"),
        parent["checkpoint_id"],
        "regenerate: where the two branches part (the checkpoint sent)",
    )
    for m, name in ((old, "old"), (new, "new")):
        expect(
            any(m["id"] in message_ids(h) for h in hist),
            f"regenerate: no entry holds the {name} answer",
        )
    expect(
        not any(old["id"] in message_ids(h) and new["id"] in message_ids(h) for h in hist),
        "regenerate: an entry holds both answers",
    )


def check_regenerate_a_middle_answer() -> None:
    tid = conversation("one", "two")
    old_hist = history(tid)
    old = messages(old_hist[0]["values"])[1]
    parent = first_seen(old_hist, old["id"], "echo: one")["parent_checkpoint"]
    values = alice.runs.wait(
        tid,
        "echo",
        input=None,
        checkpoint={"checkpoint_id": parent["checkpoint_id"], "checkpoint_ns": ""},
    )
    expect_eq(
        texts(values), [("human", "one"), ("ai", "echo: one")], "regenerate `echo: one`: the branch"
    )
    expect(
        messages(values)[1]["id"] != old["id"], "regenerate `echo: one`: the answer kept its old id"
    )
    hist = history(tid)
    entries = expect_tree(tid, hist, "history after regenerating a middle answer")
    expect_head_is_newest(tid, hist, "after regenerating a middle answer")
    expect_eq(
        fork_point(entries, cp_id(hist[0]), cp_id(old_hist[0]), "regenerate `echo: one`"),
        parent["checkpoint_id"],
        "regenerate `echo: one`: where the branches part",
    )


def check_edit_the_first_message() -> None:
    tid = new_thread()
    sent = human("one")
    alice.runs.wait(tid, "echo", input=sent)
    say(tid, "two")
    old_hist = history(tid)
    seen = first_seen(old_hist, sent["messages"][0]["id"], "one")
    parent = seen["parent_checkpoint"]
    expect(parent is not None, "edit: the first message's first state has no parent checkpoint")
    values = alice.runs.wait(
        tid,
        "echo",
        input=edited("ONE edited"),
        checkpoint={
            "checkpoint_id": parent["checkpoint_id"],
            "checkpoint_ns": "",
            "checkpoint_map": {},
        },
    )
    want = [("human", "ONE edited"), ("ai", "echo: ONE edited")]
    expect_eq(texts(values), want, "edit of the first message: runs.wait values")
    hist = history(tid)
    entries = expect_tree(tid, hist, "history after editing the first message")
    state = expect_head_is_newest(tid, hist, "after editing the first message")
    expect_eq(texts(state["values"]), want, "edit of the first message: get_state")
    expect_eq(
        parent["checkpoint_id"],
        cp_id(hist[-1]),
        "edit of the first message: its parent is the step -1 entry",
    )
    expect(cp_id(old_hist[0]) in entries, "edit: the old branch's head left history")
    expect_eq(
        fork_point(entries, cp_id(hist[0]), cp_id(old_hist[0]), "edit of the first message"),
        parent["checkpoint_id"],
        "edit of the first message: where the branches part",
    )


def check_edit_a_middle_message() -> None:
    tid = new_thread()
    alice.runs.wait(tid, "echo", input=human("one"))
    sent = human("two")
    alice.runs.wait(tid, "echo", input=sent, checkpoint=head(tid))
    say(tid, "three")
    old_hist = history(tid)
    kept = messages(old_hist[0]["values"])[:2]
    parent = first_seen(old_hist, sent["messages"][0]["id"], "two")["parent_checkpoint"]
    values = alice.runs.wait(
        tid,
        "echo",
        input=edited("TWO edited"),
        checkpoint={
            "checkpoint_id": parent["checkpoint_id"],
            "checkpoint_ns": "",
            "checkpoint_map": {},
        },
    )
    want = [
        ("human", "one"),
        ("ai", "echo: one"),
        ("human", "TWO edited"),
        ("ai", "echo: TWO edited"),
    ]
    expect_eq(texts(values), want, "edit of a middle message: runs.wait values")
    expect_eq(
        messages(values)[:2], kept, "edit of a middle message: the earlier messages, ids included"
    )
    hist = history(tid)
    entries = expect_tree(tid, hist, "history after editing a middle message")
    state = expect_head_is_newest(tid, hist, "after editing a middle message")
    expect_eq(texts(state["values"]), want, "edit of a middle message: get_state")
    expect_eq(
        fork_point(entries, cp_id(hist[0]), cp_id(old_hist[0]), "edit of a middle message"),
        parent["checkpoint_id"],
        "edit of a middle message: where the branches part",
    )


def check_interrupt_thread_state_and_wait() -> None:
    tid = new_thread()
    created: list = []
    values = alice.runs.wait(
        tid, "synthetic", input=human("send it", n=0, interrupt=HITL), on_run_created=created.append
    )
    expect_eq(texts(values), [("human", "send it")], "runs.wait of an interrupted run: messages")
    iid = expect_interrupt_items(
        values.get("__interrupt__"), HITL, "runs.wait values `__interrupt__`"
    )
    expect_eq(len(created), 1, "runs.wait: Content-Location run metadata")
    expect_eq(
        alice.runs.get(tid, created[0]["run_id"])["status"],
        "success",
        "the interrupted run's status",
    )
    expect_interrupted(tid, HITL, iid, "after interrupt()")
    found = alice.threads.search(metadata={"run": RUN}, status="interrupted", limit=100)
    expect(
        tid in [t["thread_id"] for t in found],
        "threads.search(status='interrupted') misses the thread",
    )
    expect_tree(tid, history(tid), "history of an interrupted thread")


def check_interrupt_stream() -> None:
    tid = new_thread()
    created: list = []
    parts = list(
        alice.runs.stream(
            tid,
            "synthetic",
            input=human("send it", n=0, interrupt={"question": "approve?"}),
            stream_mode=["values", "updates"],
            on_run_created=created.append,
        )
    )
    events = [(p.event, p.data) for p in parts if p.event not in ("metadata", "end")]
    expect(all(e != "error" for e, _ in events), f"stream: error events in {events!r}")
    marks = [
        i
        for i, (e, d) in enumerate(events)
        if e == "updates" and isinstance(d, dict) and "__interrupt__" in d
    ]
    expect(marks, f"stream: no `updates` part with `__interrupt__` in {events!r}")
    expect_eq(
        sorted(events[marks[0]][1]), ["__interrupt__"], "the interrupt's `updates` part: keys"
    )
    iid = expect_interrupt_items(
        events[marks[0]][1]["__interrupt__"], {"question": "approve?"}, "`updates` `__interrupt__`"
    )
    last = events[-1]
    expect_eq(last[0], "values", f"stream: the last part's event ({[e for e, _ in events]})")
    expect_interrupt_items(
        last[1].get("__interrupt__"),
        {"question": "approve?"},
        "the final `values` `__interrupt__`",
        iid=iid,
    )
    expect_eq(texts(last[1]), [("human", "send it")], "the final values' messages")
    expect(
        marks[0] < len(events) - 1,
        "stream: the `updates` interrupt part comes after the final values",
    )
    expect_eq(
        alice.runs.get(tid, created[0]["run_id"])["status"],
        "success",
        "the interrupted run's status",
    )
    expect_interrupted(tid, {"question": "approve?"}, iid, "after a streamed interrupt")


def check_resume_with_a_value() -> None:
    tid, iid = interrupted("send it")
    values = alice.runs.wait(tid, "synthetic", command={"resume": "yes please"})
    expect_resumed(values, "yes please", "send it", "command={resume: 'yes please'}")
    expect_eq(texts(values)[0], ("human", "send it"), "the human message before the reply")
    expect_eq(len(messages(values)), 2, f"messages after the resume ({texts(values)})")
    state = expect_idle(tid, "after the resume")
    expect_eq(state["values"]["messages"], values["messages"], "get_state after the resume")
    hist = history(tid)
    expect_tree(tid, hist, "history after a resume")
    expect_linear(hist, "history after a resume (no fork)")


def check_resume_with_an_interrupt_id_map() -> None:
    tid, iid = interrupted("send it")
    values = alice.runs.wait(tid, "synthetic", command={"resume": {iid: "mapped"}})
    expect_resumed(values, "mapped", "send it", f"command={{resume: {{{iid}: 'mapped'}}}}")
    expect_idle(tid, "after a resume by interrupt id")


def check_approve_as_agent_chat_ui() -> None:
    """agent-chat-ui's Approve: `input: {}`, the command, and the head checkpoint."""
    tid, iid = interrupted("send it")
    before = history(tid)
    parts = list(
        alice.runs.stream(
            tid,
            "synthetic",
            input={},
            command={"resume": APPROVE},
            checkpoint=head(tid),
            stream_mode=["values"],
            stream_subgraphs=True,
            stream_resumable=True,
            on_disconnect="continue",
        )
    )
    errors = [p for p in parts if p.event == "error"]
    expect(not errors, f"Approve stream: error events {errors!r}")
    values = [p.data for p in parts if p.event == "values"]
    expect(values, f"Approve stream: no values event in {[p.event for p in parts]}")
    expect(
        "__interrupt__" not in values[0],
        f"Approve stream: the first values still hold the interrupt: {values[0]!r}",
    )
    expect_resumed(values[-1], APPROVE, "send it", "Approve")
    expect_idle(tid, "after Approve")
    hist = history(tid)
    expect_tree(tid, hist, "history after Approve")
    expect_linear(hist, "history after Approve with the head checkpoint (no fork)")
    expect(
        cp_id(before[0]) in [cp_id(h) for h in hist],
        "Approve: the interrupted checkpoint left history",
    )


def check_hitl_decisions() -> None:
    for name, decision in (("approve", APPROVE), ("edit", EDIT), ("reject", REJECT)):
        tid, iid = interrupted(f"decide {name}")
        expect_interrupted(tid, HITL, iid, f"before {name}")
        values = alice.runs.wait(tid, "synthetic", command={"resume": decision})
        expect_resumed(values, decision, f"decide {name}", f"resume with the {name} decision")
        expect_idle(tid, f"after the {name} decision")


def check_static_breakpoint() -> None:
    tid = new_thread()
    parts = list(
        alice.runs.stream(
            tid,
            "echo",
            input=human("wait"),
            interrupt_before=["echo"],
            stream_mode=["values", "updates"],
        )
    )
    events = [(p.event, p.data) for p in parts if p.event not in ("metadata", "end")]
    expect(
        ("updates", {"__interrupt__": []}) in events,
        f"interrupt_before=['echo']: no `updates` {{'__interrupt__': []}} in {events!r}",
    )
    thread = alice.threads.get(tid)
    expect_eq(thread["status"], "interrupted", "interrupt_before: thread status")
    expect_eq(thread.get("interrupts"), {}, "interrupt_before: thread interrupts")
    state = alice.threads.get_state(tid)
    expect_eq(state["next"], ["echo"], "interrupt_before: state next")
    expect_eq(state.get("interrupts"), [], "interrupt_before: state interrupts")
    expect_eq(
        [(t.get("name"), t.get("interrupts")) for t in state["tasks"]],
        [("echo", [])],
        "interrupt_before: state tasks",
    )
    expect_eq(texts(state["values"]), [("human", "wait")], "interrupt_before: values")
    values = alice.runs.wait(tid, "echo", input=None)
    expect_eq(
        texts(values), [("human", "wait"), ("ai", "echo: wait")], "input=None after the breakpoint"
    )
    expect_idle(tid, "after continuing from the breakpoint")

    tid = new_thread()
    values = alice.runs.wait(tid, "echo", input=human("star"), interrupt_before="*")
    expect(
        not values.get("__interrupt__"),
        f"interrupt_before='*': runs.wait values hold an interrupt: {values!r}",
    )
    expect_eq(
        alice.threads.get(tid)["status"], "interrupted", "interrupt_before='*': thread status"
    )
    expect_eq(alice.threads.get_state(tid)["next"], ["echo"], "interrupt_before='*': state next")
    values = alice.runs.wait(tid, "echo", command={"resume": "go"})
    expect_eq(texts(values)[:1], [("human", "star")], "command={resume} after the breakpoint")
    expect_eq(len(messages(values)), 2, f"messages after the breakpoint's resume ({texts(values)})")
    expect_reply(values, "star", "go", "command={resume} after the breakpoint")
    expect_idle(tid, "after resuming from the breakpoint")
    expect_tree(tid, history(tid), "history after a breakpoint")


def check_plain_input_abandons_the_interrupt() -> None:
    tid, iid = interrupted("send it")
    values = alice.runs.wait(tid, "synthetic", input=human("plain", n=0))
    expect_eq(
        texts(values),
        [("human", "send it"), ("human", "plain"), ("ai", "echo: plain")],
        "plain input on an interrupted thread",
    )
    expect_idle(tid, "after plain input on an interrupted thread")
    expect_tree(tid, history(tid), "history after abandoning an interrupt")


@spindle_only
def check_resume_of_a_thread_not_interrupted() -> None:
    for tid, what in ((conversation("one"), "an idle thread"), (new_thread(), "a new thread")):
        before = snapshot(tid)
        for call, how in (
            (lambda: alice.runs.create(tid, "echo", command={"resume": "x"}), "runs.create"),
            (lambda: list(alice.runs.stream(tid, "echo", command={"resume": "x"})), "runs.stream"),
            (
                lambda: alice.runs.create(
                    tid,
                    "echo",
                    input={},
                    command={"resume": APPROVE},
                    checkpoint=head(tid) if before["history"] else None,
                ),
                "runs.create (Approve)",
            ),
        ):
            e = expect_error(ConflictError, 409, call, f"{how} with command.resume on {what}")
            expect(
                "not interrupted" in e.message,
                f"{how} on {what}: 409 message {e.message!r} lacks `not interrupted`",
            )
        detail = expect_http_error(
            {409},
            lambda: alice.runs.wait(tid, "echo", command={"resume": "x"}),
            f"runs.wait with command.resume on {what}",
        )
        expect("not interrupted" in detail, f"runs.wait on {what}: 409 message {detail!r}")
        expect_unchanged(tid, before, what)


@spindle_only
def check_resume_of_an_interrupt_not_pending() -> None:
    tid, iid = interrupted("send it")
    before = snapshot(tid)
    wrong = "deadbeef" * 4
    e = expect_error(
        ConflictError,
        409,
        lambda: alice.runs.create(tid, "synthetic", command={"resume": {wrong: "x"}}),
        "resume of an interrupt id not pending",
    )
    expect(wrong in e.message, f"409 message {e.message!r} does not name {wrong}")
    expect_unchanged(tid, before, "a resume of an interrupt not pending")
    expect_interrupted(tid, HITL, iid, "after the refused resume")
    expect_resumed(
        alice.runs.wait(tid, "synthetic", command={"resume": {iid: "ok"}}),
        "ok",
        "send it",
        "the right id afterwards",
    )


@spindle_only
def check_checkpoint_of_another_thread() -> None:
    a = conversation("in A")
    b = conversation("in B")
    a_head = alice.threads.get_state(a)["checkpoint"]
    random_id = str(uuid.uuid4())
    before = {a: snapshot(a), b: snapshot(b)}
    for call, how in (
        (
            lambda: alice.runs.create(
                b, "echo", input=human("x"), checkpoint_id=a_head["checkpoint_id"]
            ),
            "checkpoint_id=<A's head>",
        ),
        (
            lambda: alice.runs.create(b, "echo", input=human("x"), checkpoint=a_head),
            "checkpoint=<A's head, thread_id A>",
        ),
        (
            lambda: list(
                alice.runs.stream(
                    b,
                    "echo",
                    input=human("x"),
                    checkpoint={"checkpoint_id": a_head["checkpoint_id"], "checkpoint_ns": ""},
                )
            ),
            "runs.stream, checkpoint=<A's head>",
        ),
        (
            lambda: alice.runs.create(b, "echo", input=None, checkpoint_id=a_head["checkpoint_id"]),
            "regenerate from A's head",
        ),
        (
            lambda: alice.runs.create(b, "echo", input=human("x"), checkpoint_id=random_id),
            "checkpoint_id=<random>",
        ),
    ):
        expect_error(NotFoundError, 404, call, f"a run on thread B with {how}")
    expect_http_error(
        {404},
        lambda: alice.runs.wait(b, "echo", input=human("x"), checkpoint_id=a_head["checkpoint_id"]),
        "runs.wait on B with A's checkpoint",
    )
    for tid in (a, b):
        expect_unchanged(
            tid,
            before[tid],
            f"thread {'A' if tid == a else 'B'} after runs with a foreign checkpoint",
        )

    # And on an interrupted thread: the interrupt stays.
    c, iid = interrupted("in C")
    before = snapshot(c)
    expect_error(
        NotFoundError,
        404,
        lambda: alice.runs.create(
            c, "synthetic", command={"resume": "x"}, checkpoint_id=a_head["checkpoint_id"]
        ),
        "a resume on C with A's checkpoint",
    )
    expect_unchanged(c, before, "interrupted thread C after a resume with a foreign checkpoint")


@spindle_only
def check_state_update_with_a_foreign_checkpoint() -> None:
    a = conversation("in A")
    b = conversation("in B")
    a_head = alice.threads.get_state(a)["checkpoint"]["checkpoint_id"]
    before = snapshot(b)
    update = {"messages": [{"type": "ai", "content": "patched"}]}
    expect_error(
        NotFoundError,
        404,
        lambda: alice.threads.update_state(b, update, checkpoint_id=a_head),
        "threads.update_state(B, checkpoint_id=<A's head>)",
    )
    expect_error(
        NotFoundError,
        404,
        lambda: alice.threads.update_state(
            b, update, checkpoint={"checkpoint_id": a_head, "checkpoint_ns": ""}
        ),
        "threads.update_state(B, checkpoint=<A's head>)",
    )
    expect_unchanged(b, before, "thread B after update_state with A's checkpoint")


@spindle_only
def check_checkpoint_of_another_user() -> None:
    mine = conversation("alice's")
    theirs = conversation("bob's", owner=bob)
    bob_head = bob.threads.get_state(theirs)["checkpoint"]["checkpoint_id"]
    alice_head = alice.threads.get_state(mine)["checkpoint"]["checkpoint_id"]
    random_id = str(uuid.uuid4())
    before_mine, before_theirs = snapshot(mine), snapshot(theirs, bob)
    e_foreign = expect_error(
        NotFoundError,
        404,
        lambda: alice.runs.create(mine, "echo", input=human("x"), checkpoint_id=bob_head),
        "alice's run with bob's checkpoint",
    )
    e_random = expect_error(
        NotFoundError,
        404,
        lambda: alice.runs.create(mine, "echo", input=human("x"), checkpoint_id=random_id),
        "alice's run with a random checkpoint",
    )
    expect_eq(
        e_foreign.message.replace(bob_head, "C"),
        e_random.message.replace(random_id, "C"),
        "the 404 for another user's checkpoint vs a random one (message)",
    )
    expect_error(
        NotFoundError,
        404,
        lambda: bob.runs.create(theirs, "echo", input=human("x"), checkpoint_id=alice_head),
        "bob's run with alice's checkpoint",
    )
    expect_error(
        NotFoundError,
        404,
        lambda: bob.runs.create(mine, "echo", input=human("x"), checkpoint_id=alice_head),
        "bob's run on alice's thread at her checkpoint",
    )
    expect_unchanged(mine, before_mine, "alice's thread")
    expect_unchanged(theirs, before_theirs, "bob's thread", owner=bob)


def check_malformed_checkpoint_id() -> None:
    tid = conversation("one")
    before = snapshot(tid)
    calls = [
        (
            lambda: alice.runs.create(tid, "echo", input=human("x"), checkpoint_id="not-a-uuid"),
            "checkpoint_id='not-a-uuid'",
        )
    ]
    if not REFERENCE:
        # LangGraph checks only the top-level `checkpoint_id` (the object form is taken as is).
        calls.append(
            (
                lambda: alice.runs.create(
                    tid,
                    "echo",
                    input=human("x"),
                    checkpoint={"checkpoint_id": "not-a-uuid", "checkpoint_ns": ""},
                ),
                "checkpoint={checkpoint_id: 'not-a-uuid'}",
            )
        )
    for call, how in calls:
        expect_error(UnprocessableEntityError, 422, call, f"a run with {how}")
    expect_unchanged(tid, before, "after runs with a malformed checkpoint id")


def check_stateless_resume() -> None:
    try:
        got = alice.runs.create(None, "synthetic", command={"resume": "x"})
    except APIStatusError as e:
        expect(
            e.status_code in (400, 409, 422),
            f"runs.create(None, command.resume): expected 400, 409 or 422, got {e.status_code} {e.body!r}",
        )
        expect_error_body(e.body, "runs.create(None, command.resume)")
        expect(
            "thread" in e.message.lower(),
            f"runs.create(None, command.resume): the message {e.message!r} does not mention the thread",
        )
    else:
        raise CheckFailed(f"runs.create(None, command.resume) made a run: {got!r}")
    detail = expect_http_error(
        {400, 409, 422},
        lambda: alice.runs.wait(None, "synthetic", command={"resume": "x"}),
        "runs.wait(None, command.resume)",
    )
    expect(
        "thread" in detail.lower(),
        f"runs.wait(None, command.resume): the message {detail!r} does not mention the thread",
    )


def check_concurrent_forks_from_one_checkpoint() -> None:
    tid = conversation("one")
    root = cp_id(history(tid)[-1])
    barrier = threading.Barrier(2)
    created: dict[str, str] = {}
    failures: list[str] = []

    def fork(name: str) -> None:
        own = client(KEY_ALICE)  # its own connection, so the two requests really overlap
        try:
            barrier.wait(timeout=10)
            run = own.runs.create(
                tid, "synthetic", input=human(f"fork {name}", **SLOW), checkpoint_id=root
            )
            created[name] = run["run_id"]
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"fork {name}: {type(e).__name__}: {getattr(e, 'body', e)!r}")

    workers = [threading.Thread(target=fork, args=(name,)) for name in "AB"]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    expect(not failures, f"two forks from the step -1 checkpoint at once: {failures}")
    statuses = watch_runs(tid, list(created.values()), "two forks at once")
    expect_eq(statuses, {rid: "success" for rid in created.values()}, "the two forks' statuses")
    hist = history(tid)
    entries = expect_tree(tid, hist, "history after two forks at once")
    heads = {}
    for name in "AB":
        holding = [h for h in hist if ("ai", f"echo: fork {name}") in texts(h["values"])]
        expect(holding, f"no history entry holds `echo: fork {name}`: {brief(hist)}")
        heads[name] = cp_id(holding[0])
        expect_eq(
            texts(holding[0]["values"]),
            [("human", f"fork {name}"), ("ai", f"echo: fork {name}")],
            f"fork {name}'s branch",
        )
        expect(
            root in chain(entries, heads[name]),
            f"fork {name} does not descend from the checkpoint sent",
        )
    expect_eq(
        fork_point(entries, heads["A"], heads["B"], "two forks"), root, "where the two forks part"
    )
    state = expect_head_is_newest(tid, hist, "after two forks")
    expect(
        cp_id(state) in heads.values(),
        f"get_state is neither fork's head: {texts(state['values'])}",
    )
    expect_settled(tid, "two forks at once")


def check_race_resume_then_input_reject() -> None:
    race_resume_first("reject")


def check_race_resume_then_input_enqueue() -> None:
    race_resume_first("enqueue")


def check_race_resume_then_input_interrupt() -> None:
    race_resume_first("interrupt")


def check_race_resume_then_input_rollback() -> None:
    race_resume_first("rollback")


def check_race_input_then_resume_reject() -> None:
    race_input_first("reject")


def check_race_input_then_resume_enqueue() -> None:
    race_input_first("enqueue")


def check_race_input_then_resume_interrupt() -> None:
    race_input_first("interrupt")


def check_race_input_then_resume_rollback() -> None:
    race_input_first("rollback")


CHECKS: list[Callable[[], None]] = [
    check_first_run_starts_at_step_minus_one,
    check_follow_ups_carry_the_head_checkpoint,
    check_regenerate_the_last_answer,
    check_regenerate_a_middle_answer,
    check_edit_the_first_message,
    check_edit_a_middle_message,
    check_interrupt_thread_state_and_wait,
    check_interrupt_stream,
    check_resume_with_a_value,
    check_resume_with_an_interrupt_id_map,
    check_approve_as_agent_chat_ui,
    check_hitl_decisions,
    check_static_breakpoint,
    check_plain_input_abandons_the_interrupt,
    check_resume_of_a_thread_not_interrupted,
    check_resume_of_an_interrupt_not_pending,
    check_checkpoint_of_another_thread,
    check_state_update_with_a_foreign_checkpoint,
    check_checkpoint_of_another_user,
    check_malformed_checkpoint_id,
    check_stateless_resume,
    check_concurrent_forks_from_one_checkpoint,
    check_race_resume_then_input_reject,
    check_race_resume_then_input_enqueue,
    check_race_resume_then_input_interrupt,
    check_race_resume_then_input_rollback,
    check_race_input_then_resume_reject,
    check_race_input_then_resume_enqueue,
    check_race_input_then_resume_interrupt,
    check_race_input_then_resume_rollback,
]


def main() -> int:
    only = [a for a in sys.argv[1:] if not a.startswith("--")]

    def skip(check) -> str | None:
        if REFERENCE and check.__name__ in SPINDLE_ONLY:
            return "Spindle refuses on purpose; LangGraph does not"
        return None

    return runner.run(CHECKS, __file__, only, skip)


if __name__ == "__main__":
    sys.exit(main())
