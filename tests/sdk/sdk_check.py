"""The official Python SDK (langgraph-sdk, sync client) against a running Spindle.

Run by crates/server/tests/it/sdk.rs with:
    SPINDLE_URL        http://127.0.0.1:PORT of a server started with `--auth keys`
    SPINDLE_KEY_ALICE  an API key of user alice
    SPINDLE_KEY_BOB    an API key of user bob

Plain Python, no pytest: every check runs on its own and prints `ok NAME` or `FAIL NAME: ...`;
the last line is `N passed, M failed`, and the exit status is 1 if any check failed. Checks
create the threads they need, so one failing check does not hide the others.

Where the server's answer differs from what the SDK expects, the check fails and says what
was expected and what came back: it never works around the server.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import sys
import time
import typing
import uuid
from typing import Any, Callable

import httpx
import runner
from langgraph_sdk import get_sync_client, schema
from langgraph_sdk.errors import (
    APIStatusError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    UnprocessableEntityError,
)

URL = os.environ["SPINDLE_URL"]
KEY_ALICE = os.environ["SPINDLE_KEY_ALICE"]
KEY_BOB = os.environ["SPINDLE_KEY_BOB"]

# Bounded, so a server that hangs fails a check instead of stalling the test for minutes.
TIMEOUT = 30.0

alice = get_sync_client(url=URL, api_key=KEY_ALICE, timeout=TIMEOUT)
bob = get_sync_client(url=URL, api_key=KEY_BOB, timeout=TIMEOUT)

# LangGraph's assistant id for a graph name: uuid5 in this namespace.
ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
ECHO_ID = "046b5dc7-2108-582c-9c6c-31d556d138f0"

# A tag unique to this run, put in the metadata of every thread the checks create, so
# searches can be narrowed to one check's threads.
RUN = uuid.uuid4().hex


CheckFailed, expect, expect_eq = runner.CheckFailed, runner.expect, runner.expect_eq


def sdk_keys(typed_dict: type) -> set[str]:
    """The keys the SDK's TypedDict declares as always present."""
    keys = set()
    for key, annotation in typed_dict.__annotations__.items():
        # schema.py uses `from __future__ import annotations`: annotations are strings or
        # ForwardRefs, so NotRequired is recognised by its text.
        text = getattr(annotation, "__forward_arg__", annotation)
        if typing.get_origin(annotation) is typing.NotRequired:
            continue
        if isinstance(text, str) and text.replace("typing.", "").startswith("NotRequired["):
            continue
        keys.add(key)
    return keys


def expect_shape(obj: Any, typed_dict: type, what: str) -> None:
    expect(isinstance(obj, dict), f"{what}: expected a JSON object, got {obj!r}")
    missing = sorted(sdk_keys(typed_dict) - set(obj))
    expect(
        not missing,
        f"{what}: missing keys the SDK's {typed_dict.__name__} declares: {missing}; got keys {sorted(obj)}",
    )


expect_error = runner.expect_error


def timestamp(value: Any, what: str) -> datetime.datetime:
    """An RFC 3339 timestamp with a time zone (fractions beyond microseconds dropped)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", str(value))
    expect(m is not None, f"{what}: expected an RFC 3339 timestamp, got {value!r}")
    fraction = (m.group(2) or ".0")[:7]
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.datetime.fromisoformat(m.group(1) + fraction + zone)


def new_thread(client=alice, **metadata: Any) -> dict:
    thread = client.threads.create(metadata={"run": RUN, **metadata})
    expect_shape(thread, schema.Thread, "threads.create")
    return thread


def message_texts(values: Any) -> list[tuple[str, str]]:
    messages = values.get("messages", []) if isinstance(values, dict) else values
    return [(m.get("type"), m.get("content")) for m in messages]


# ---------------------------------------------------------------- assistants


def check_assistants_search_has_echo() -> None:
    expect_eq(str(uuid.uuid5(ASSISTANT_NAMESPACE, "echo")), ECHO_ID, "uuid5 of `echo`")
    found = alice.assistants.search()
    expect(isinstance(found, list), f"assistants.search: expected a list, got {found!r}")
    echo = [a for a in found if a.get("assistant_id") == ECHO_ID]
    expect(len(echo) == 1, f"assistants.search: no assistant {ECHO_ID} in {found!r}")
    echo = echo[0]
    expect_shape(echo, schema.Assistant, "assistants.search item")
    expect_eq(echo["graph_id"], "echo", "echo graph_id")
    expect_eq(echo["metadata"], {"created_by": "system"}, "echo metadata")
    expect(isinstance(echo["version"], int), f"echo version is not an int: {echo!r}")
    expect(isinstance(echo["name"], str), f"echo name is not a string: {echo!r}")


def check_assistants_search_by_graph_id() -> None:
    found = alice.assistants.search(graph_id="echo")
    expect_eq([a["assistant_id"] for a in found], [ECHO_ID], "search(graph_id='echo') ids")
    expect_eq(alice.assistants.search(graph_id="nope"), [], "search(graph_id='nope')")
    found = alice.assistants.search(metadata={"created_by": "system"}, limit=100)
    expect(
        ECHO_ID in [a["assistant_id"] for a in found],
        f"search(metadata={{created_by: system}}) lacks echo: {found!r}",
    )
    page = alice.assistants.search(graph_id="echo", response_format="object")
    expect_eq([a["assistant_id"] for a in page["assistants"]], [ECHO_ID], "object format ids")


def check_assistants_search_select() -> None:
    """`select` (the SDK's AssistantSelectField): only those fields come back."""
    fields = list(typing.get_args(schema.AssistantSelectField))
    expect("assistant_id" in fields, f"AssistantSelectField: {fields}")
    found = alice.assistants.search(graph_id="echo", select=["assistant_id", "graph_id"])
    expect_eq(len(found), 1, "search(graph_id=echo, select=...) count")
    expect_eq(
        sorted(found[0]),
        ["assistant_id", "graph_id"],
        "POST /assistants/search {select: [assistant_id, graph_id]}: keys of the result",
    )
    for field in fields:
        found = alice.assistants.search(graph_id="echo", select=[field])
        expect_eq(sorted(found[0]), [field], f"assistants.search(select=[{field!r}]) keys")


def check_assistants_count() -> None:
    expect_eq(alice.assistants.count(graph_id="echo"), 1, "assistants.count(graph_id='echo')")
    expect_eq(alice.assistants.count(graph_id="nope"), 0, "assistants.count(graph_id='nope')")


def check_assistants_get() -> None:
    by_id = alice.assistants.get(ECHO_ID)
    expect_shape(by_id, schema.Assistant, "assistants.get(id)")
    expect_eq(by_id["assistant_id"], ECHO_ID, "assistants.get(id).assistant_id")
    expect_eq(by_id["graph_id"], "echo", "assistants.get(id).graph_id")
    by_name = alice.assistants.get("echo")
    expect_eq(by_name, by_id, "assistants.get('echo') vs assistants.get(id)")
    # Built-ins are the same for every user.
    expect_eq(bob.assistants.get(ECHO_ID)["assistant_id"], ECHO_ID, "bob's assistants.get(id)")


def check_assistants_get_missing() -> None:
    expect_error(
        NotFoundError, 404, lambda: alice.assistants.get(str(uuid.uuid4())), "assistants.get(random)"
    )


def check_assistants_create_update_versions_latest_delete() -> None:
    created = alice.assistants.create(
        "llm", context={"model": "m1"}, metadata={"run": RUN}, name="helper", description="d"
    )
    expect_shape(created, schema.Assistant, "assistants.create")
    aid = created["assistant_id"]
    expect_eq((created["version"], created["context"]), (1, {"model": "m1"}), "created")
    again = alice.assistants.create("llm", assistant_id=aid, if_exists="do_nothing", name="other")
    expect_eq(again, created, "create(if_exists='do_nothing') gives the existing one")
    expect_error(
        ConflictError, 409, lambda: alice.assistants.create("llm", assistant_id=aid), "create twice"
    )
    updated = alice.assistants.update(aid, context={"model": "m2"}, metadata={"stage": 2})
    expect_eq(updated["version"], 2, "update makes version 2")
    expect_eq(updated["metadata"], {"run": RUN, "stage": 2}, "update merges metadata")
    expect_eq(updated["name"], "helper", "update keeps the name")
    versions = alice.assistants.get_versions(aid)
    for version in versions:
        expect_shape(version, schema.AssistantVersion, "get_versions item")
    expect_eq([v["version"] for v in versions], [2, 1], "get_versions order")
    pinned = alice.assistants.set_latest(aid, 1)
    expect_eq((pinned["version"], pinned["context"]), (1, {"model": "m1"}), "set_latest(1)")
    expect_error(
        NotFoundError, 404, lambda: bob.assistants.get(aid), "bob's assistants.get(alice's)"
    )
    expect_error(
        NotFoundError, 404, lambda: bob.assistants.delete(aid), "bob's assistants.delete(alice's)"
    )
    alice.assistants.delete(aid)
    expect_error(NotFoundError, 404, lambda: alice.assistants.get(aid), "get after delete")


def check_assistants_schemas_and_graph() -> None:
    schemas = alice.assistants.get_schemas("llm")
    expect_shape(schemas, schema.GraphSchema, "assistants.get_schemas")
    expect_eq(schemas["context_schema"]["required"], ["model"], "llm context_schema.required")
    graph = alice.assistants.get_graph(ECHO_ID, xray=True)
    expect_eq([n["id"] for n in graph["nodes"]], ["__start__", "echo", "__end__"], "graph nodes")
    expect_eq(alice.assistants.get_subgraphs(ECHO_ID), {}, "get_subgraphs")
    expect_error(
        PermissionDeniedError,
        403,
        lambda: alice.assistants.update(ECHO_ID, name="mine"),
        "assistants.update(system)",
    )


# ---------------------------------------------------------------- threads


def check_threads_create() -> None:
    thread = alice.threads.create(metadata={"graph_id": "echo", "n": 1})
    expect_shape(thread, schema.Thread, "threads.create")
    uuid.UUID(thread["thread_id"])
    expect_eq(thread["status"], "idle", "status")
    expect_eq(thread["metadata"], {"graph_id": "echo", "n": 1}, "metadata")
    expect_eq(thread["values"], {}, "values")
    created = timestamp(thread["created_at"], "created_at")
    age = abs((datetime.datetime.now(datetime.timezone.utc) - created).total_seconds())
    expect(age < 600, f"created_at {thread['created_at']} is {age:.0f} s away from now")
    timestamp(thread["updated_at"], "updated_at")
    # `graph_id=` is stored in metadata, as the LangGraph server does.
    other = alice.threads.create(metadata={"run": RUN}, graph_id="echo")
    expect_eq(other["metadata"], {"run": RUN, "graph_id": "echo"}, "create(graph_id=) metadata")
    expect(other["thread_id"] != thread["thread_id"], "two creates returned the same id")


def check_threads_create_with_id() -> None:
    tid = str(uuid.uuid4())
    thread = alice.threads.create(thread_id=tid, metadata={"run": RUN, "first": True})
    expect_eq(thread["thread_id"], tid, "created thread_id")
    expect_error(
        ConflictError,
        409,
        lambda: alice.threads.create(thread_id=tid, if_exists="raise"),
        "create(existing id, if_exists=raise)",
    )
    # The default is `raise` too.
    expect_error(
        ConflictError, 409, lambda: alice.threads.create(thread_id=tid), "create(existing id)"
    )
    again = alice.threads.create(
        thread_id=tid, if_exists="do_nothing", metadata={"run": RUN, "second": True}
    )
    expect_eq(again["thread_id"], tid, "do_nothing thread_id")
    expect_eq(again["metadata"], {"run": RUN, "first": True}, "do_nothing keeps the metadata")
    expect_eq(again["created_at"], thread["created_at"], "do_nothing created_at")
    expect_eq(alice.threads.get(tid)["metadata"], {"run": RUN, "first": True}, "metadata after")


def check_threads_get() -> None:
    thread = new_thread(graph_id="echo", n=1)
    got = alice.threads.get(thread["thread_id"])
    expect_shape(got, schema.Thread, "threads.get")
    for key in ("thread_id", "created_at", "metadata", "status", "values"):
        expect_eq(got[key], thread[key], f"threads.get {key}")


def check_threads_update() -> None:
    thread = alice.threads.create(metadata={"graph_id": "echo", "n": 1})
    tid = thread["thread_id"]
    updated = alice.threads.update(tid, metadata={"x": 2})
    expect_shape(updated, schema.Thread, "threads.update")
    expect_eq(updated["metadata"], {"graph_id": "echo", "n": 1, "x": 2}, "merged metadata")
    expect(
        timestamp(updated["updated_at"], "updated_at")
        >= timestamp(thread["updated_at"], "updated_at"),
        f"updated_at went back: {thread['updated_at']} -> {updated['updated_at']}",
    )
    # Shallow merge: a key given again is replaced.
    updated = alice.threads.update(tid, metadata={"n": 5})
    expect_eq(updated["metadata"], {"graph_id": "echo", "n": 5, "x": 2}, "second merge")
    expect_eq(alice.threads.get(tid)["metadata"], updated["metadata"], "metadata after get")
    # return_minimal sends `Prefer: return=minimal`; the update must still happen.
    alice.threads.update(tid, metadata={"y": 3}, return_minimal=True)
    expect_eq(alice.threads.get(tid)["metadata"].get("y"), 3, "metadata.y after return_minimal")


def check_threads_search_by_metadata() -> None:
    mine = {new_thread(graph_id="echo")["thread_id"] for _ in range(3)}
    other = new_thread(graph_id="other")["thread_id"]
    found = alice.threads.search(metadata={"graph_id": "echo", "run": RUN}, limit=100)
    expect(isinstance(found, list), f"threads.search: expected a list, got {found!r}")
    for t in found:
        expect_shape(t, schema.Thread, "threads.search item")
    ids = {t["thread_id"] for t in found}
    expect(mine <= ids, f"search(metadata=graph_id echo) misses {sorted(mine - ids)}")
    expect(other not in ids, "search(metadata=graph_id echo) returned a graph_id=other thread")
    # The chat-UI sidebar query, without the run tag: alice's echo threads are there.
    sidebar = {t["thread_id"] for t in alice.threads.search(metadata={"graph_id": "echo"}, limit=100)}
    expect(mine <= sidebar, f"search(metadata={{graph_id: echo}}) misses {sorted(mine - sidebar)}")
    expect_eq(
        alice.threads.search(metadata={"run": RUN, "graph_id": "nope"}), [], "no match search"
    )


def check_threads_search_filters_and_paging() -> None:
    tag = uuid.uuid4().hex
    created = [new_thread(batch=tag, i=i)["thread_id"] for i in range(3)]
    flt = {"batch": tag}

    asc = alice.threads.search(metadata=flt, sort_by="created_at", sort_order="asc")
    expect_eq([t["thread_id"] for t in asc], created, "sort_by=created_at asc")
    desc = alice.threads.search(metadata=flt, sort_by="created_at", sort_order="desc")
    expect_eq([t["thread_id"] for t in desc], created[::-1], "sort_by=created_at desc")
    default = alice.threads.search(metadata=flt)
    expect_eq([t["thread_id"] for t in default], created[::-1], "default order (newest first)")

    page1 = alice.threads.search(
        metadata=flt, sort_by="created_at", sort_order="asc", limit=2, offset=0
    )
    page2 = alice.threads.search(
        metadata=flt, sort_by="created_at", sort_order="asc", limit=2, offset=2
    )
    expect_eq([t["thread_id"] for t in page1], created[:2], "limit=2 offset=0")
    expect_eq([t["thread_id"] for t in page2], created[2:], "limit=2 offset=2")
    expect_eq(
        alice.threads.search(metadata=flt, limit=2, offset=3), [], "offset past the end"
    )

    by_ids = alice.threads.search(ids=[created[0], created[2]], sort_by="created_at", sort_order="asc")
    expect_eq([t["thread_id"] for t in by_ids], [created[0], created[2]], "search(ids=...)")

    idle = alice.threads.search(metadata=flt, status="idle", limit=100)
    expect_eq(sorted(t["thread_id"] for t in idle), sorted(created), "status=idle")
    expect_eq(alice.threads.search(metadata=flt, status="busy"), [], "status=busy")

    for key in ("thread_id", "status", "updated_at"):
        got = alice.threads.search(metadata=flt, sort_by=key, sort_order="asc", limit=100)
        expect_eq(sorted(t["thread_id"] for t in got), sorted(created), f"sort_by={key}")
    by_tid = alice.threads.search(metadata=flt, sort_by="thread_id", sort_order="asc")
    expect_eq([t["thread_id"] for t in by_tid], sorted(created), "sort_by=thread_id asc order")

    selected = alice.threads.search(metadata=flt, select=["thread_id", "metadata"], limit=1)
    expect_eq(len(selected), 1, "select: one thread")
    expect_eq(sorted(selected[0]), ["metadata", "thread_id"], "select=[thread_id, metadata] keys")


def check_threads_search_select_sdk_fields() -> None:
    """Every field of the SDK's ThreadSelectField is accepted by `threads.search(select=)`."""
    tid = new_thread(select_probe=True)["thread_id"]
    for field in typing.get_args(schema.ThreadSelectField):
        try:
            found = alice.threads.search(ids=[tid], select=[field])
        except APIStatusError as e:
            raise CheckFailed(
                f"POST /threads/search {{select: [{field!r}]}} (a field of the SDK's "
                f"ThreadSelectField): HTTP {e.status_code} {e.body!r}"
            ) from None
        expect_eq(len(found), 1, f"search(select=[{field!r}]) count")
        expect(
            set(found[0]) <= {field},
            f"search(select=[{field!r}]) returned keys {sorted(found[0])}",
        )


def check_threads_count() -> None:
    tag = uuid.uuid4().hex
    for i in range(3):
        new_thread(batch=tag, i=i)
    expect_eq(alice.threads.count(metadata={"batch": tag}), 3, "count(metadata=batch)")
    expect_eq(alice.threads.count(metadata={"batch": tag, "i": 1}), 1, "count(batch, i=1)")
    expect_eq(alice.threads.count(metadata={"batch": tag}, status="idle"), 3, "count(idle)")
    expect_eq(alice.threads.count(metadata={"batch": tag}, status="busy"), 0, "count(busy)")
    total = alice.threads.count()
    expect(isinstance(total, int) and total >= 3, f"count(): expected an int >= 3, got {total!r}")


def check_threads_delete() -> None:
    tid = new_thread()["thread_id"]
    alice.threads.update_state(tid, {"messages": [{"role": "user", "content": "bye"}]})
    result = alice.threads.delete(tid)
    expect_eq(result, None, "threads.delete result")
    expect_error(NotFoundError, 404, lambda: alice.threads.get(tid), "get after delete")
    expect_error(NotFoundError, 404, lambda: alice.threads.get_state(tid), "get_state after delete")
    expect_error(NotFoundError, 404, lambda: alice.threads.delete(tid), "delete after delete")
    expect_eq(alice.threads.search(ids=[tid]), [], "search(ids=[deleted])")


# ---------------------------------------------------------------- state and history


def check_state_of_new_thread() -> None:
    tid = new_thread()["thread_id"]
    state = alice.threads.get_state(tid)
    expect_shape(state, schema.ThreadState, "get_state")
    expect_eq(state["values"], {}, "values")
    expect_eq(list(state["next"]), [], "next")
    expect_eq(list(state["tasks"]), [], "tasks")
    # As LangGraph's: no checkpoint before the first state (useStream tests `checkpoint == null`).
    expect_eq(state["checkpoint"], None, "checkpoint of a thread with no state")
    expect_eq(alice.threads.get_history(tid), [], "history of a new thread")


def check_state_update_and_get() -> None:
    tid = new_thread()["thread_id"]
    result = alice.threads.update_state(tid, {"messages": [{"role": "user", "content": "hello"}]})
    expect(isinstance(result, dict) and "checkpoint" in result, f"update_state result: {result!r}")
    checkpoint = result["checkpoint"]
    expect_shape(checkpoint, schema.Checkpoint, "update_state checkpoint")
    expect_eq(checkpoint["thread_id"], tid, "checkpoint.thread_id")
    expect_eq(checkpoint["checkpoint_ns"], "", "checkpoint.checkpoint_ns")
    expect(isinstance(checkpoint["checkpoint_id"], str), f"checkpoint_id: {checkpoint!r}")

    state = alice.threads.get_state(tid)
    expect_shape(state, schema.ThreadState, "get_state")
    messages = state["values"].get("messages")
    expect(isinstance(messages, list) and len(messages) == 1, f"one message expected: {state['values']!r}")
    m = messages[0]
    expect_eq(m.get("type"), "human", "message type")
    expect_eq(m.get("content"), "hello", "message content")
    expect(isinstance(m.get("id"), str) and m["id"] != "", f"message id: {m!r}")
    expect_eq(state["checkpoint"]["checkpoint_id"], checkpoint["checkpoint_id"], "state checkpoint")
    expect_eq(list(state["next"]), [], "next")
    expect_eq(alice.threads.get(tid)["values"], state["values"], "thread values")


def check_state_append_and_replace() -> None:
    tid = new_thread()["thread_id"]
    alice.threads.update_state(tid, {"messages": [{"role": "user", "content": "one"}]})
    alice.threads.update_state(tid, {"messages": [{"type": "human", "content": "two"}]})
    values = alice.threads.get_state(tid)["values"]
    expect_eq(message_texts(values), [("human", "one"), ("human", "two")], "after append")
    first_id = values["messages"][0]["id"]
    expect(values["messages"][1]["id"] != first_id, f"two messages share an id: {values!r}")

    alice.threads.update_state(
        tid, {"messages": [{"id": first_id, "type": "human", "content": "one, edited"}]}
    )
    values = alice.threads.get_state(tid)["values"]
    expect_eq(
        message_texts(values), [("human", "one, edited"), ("human", "two")], "after replace by id"
    )
    expect_eq(values["messages"][0]["id"], first_id, "replaced message keeps its id")

    # An assistant message, as a client that writes both sides of a conversation sends it.
    alice.threads.update_state(tid, {"messages": [{"role": "assistant", "content": "three"}]})
    values = alice.threads.get_state(tid)["values"]
    expect_eq(message_texts(values)[-1], ("ai", "three"), "role=assistant message")


def check_history() -> None:
    tid = new_thread()["thread_id"]
    written = []
    for text in ("a", "b", "c"):
        result = alice.threads.update_state(tid, {"messages": [{"role": "user", "content": text}]})
        written.append(result["checkpoint"]["checkpoint_id"])
    current = alice.threads.get_state(tid)

    history = alice.threads.get_history(tid, limit=10)
    expect(isinstance(history, list), f"get_history: expected a list, got {history!r}")
    expect_eq(len(history), 3, "history length")
    for h in history:
        expect_shape(h, schema.ThreadState, "history item")
    ids = [h["checkpoint"]["checkpoint_id"] for h in history]
    expect_eq(ids, written[::-1], "history checkpoint ids, newest first")
    expect_eq(len(set(ids)), 3, "distinct checkpoint ids")
    expect_eq(history[0]["values"], current["values"], "history[0].values vs get_state")
    expect_eq(
        [len(h["values"]["messages"]) for h in history], [3, 2, 1], "message counts, newest first"
    )
    for newer, older in zip(history, history[1:]):
        parent = newer.get("parent_checkpoint")
        expect(isinstance(parent, dict), f"parent_checkpoint of {newer['checkpoint']!r}: {parent!r}")
        expect_eq(parent.get("checkpoint_id"), older["checkpoint"]["checkpoint_id"], "parent chain")
    expect_eq(history[-1].get("parent_checkpoint"), None, "oldest checkpoint's parent")
    for h in history:
        expect_eq(h["metadata"].get("source"), "update", "checkpoint metadata.source")
    stamps = [timestamp(h["created_at"], "history created_at") for h in history]
    expect(stamps == sorted(stamps, reverse=True), f"history not newest first: {stamps}")

    limited = alice.threads.get_history(tid, limit=2)
    expect_eq([h["checkpoint"]["checkpoint_id"] for h in limited], ids[:2], "limit=2")

    before = alice.threads.get_history(tid, limit=1, before=history[0]["checkpoint"])
    expect_eq([h["checkpoint"]["checkpoint_id"] for h in before], [ids[1]], "before=<newest checkpoint>")
    before = alice.threads.get_history(tid, limit=10, before=ids[0])
    expect_eq([h["checkpoint"]["checkpoint_id"] for h in before], ids[1:], "before=<newest id>")

    filtered = alice.threads.get_history(tid, metadata={"source": "update"})
    expect_eq(len(filtered), 3, "history(metadata={source: update})")
    expect_eq(alice.threads.get_history(tid, metadata={"source": "loop"}), [], "no metadata match")


def check_state_at_checkpoint() -> None:
    tid = new_thread()["thread_id"]
    first = alice.threads.update_state(tid, {"messages": [{"role": "user", "content": "old"}]})
    alice.threads.update_state(tid, {"messages": [{"role": "user", "content": "new"}]})
    old_id = first["checkpoint"]["checkpoint_id"]

    # The deprecated `checkpoint_id=` argument: GET /threads/{id}/state/{checkpoint_id}.
    old = alice.threads.get_state(tid, checkpoint_id=old_id)
    expect_shape(old, schema.ThreadState, "get_state(checkpoint_id=)")
    expect_eq(old["checkpoint"]["checkpoint_id"], old_id, "checkpoint_id of the old state")
    expect_eq(message_texts(old["values"]), [("human", "old")], "old state values")

    # `checkpoint=`: POST /threads/{id}/state/checkpoint.
    old = alice.threads.get_state(tid, checkpoint={"checkpoint_id": old_id})
    expect_eq(message_texts(old["values"]), [("human", "old")], "get_state(checkpoint=) values")

    latest = alice.threads.get_state(tid)
    expect_eq(
        message_texts(latest["values"]), [("human", "old"), ("human", "new")], "latest values"
    )
    expect_eq(alice.threads.get(tid)["values"], latest["values"], "threads.get values")

    expect_error(
        NotFoundError,
        404,
        lambda: alice.threads.get_state(tid, checkpoint_id=str(uuid.uuid4())),
        "get_state(random checkpoint_id)",
    )


def check_state_and_history_select() -> None:
    """`select` on get_state and get_history: "Fields to include in the response. Use
    `values.<key>` to return a single state key" (the SDK's docstring)."""
    tid = new_thread()["thread_id"]
    alice.threads.update_state(tid, {"messages": [{"role": "user", "content": "hi"}], "k": 1})
    full = alice.threads.get_state(tid)

    state = alice.threads.get_state(tid, select=["values", "checkpoint"])
    expect_eq(
        sorted(state),
        ["checkpoint", "values"],
        "GET /threads/{id}/state?select=values&select=checkpoint: keys",
    )
    expect_eq(state["values"], full["values"], "selected values")

    state = alice.threads.get_state(tid, select=["values.messages"])
    expect_eq(sorted(state), ["values"], "get_state(select=['values.messages']): keys")
    expect_eq(
        state["values"],
        {"messages": full["values"]["messages"]},
        "get_state(select=['values.messages']): values",
    )

    history = alice.threads.get_history(tid, select=["checkpoint"])
    expect_eq(len(history), 1, "get_history(select=...) length")
    expect_eq(
        sorted(history[0]), ["checkpoint"], "POST /threads/{id}/history {select: [checkpoint]}: keys"
    )


# ---------------------------------------------------------------- errors


def check_error_invalid_thread_id() -> None:
    e = expect_error(
        UnprocessableEntityError, 422, lambda: alice.threads.get("not-a-uuid"), "get('not-a-uuid')"
    )
    expect("thread_id" in e.message, f"the 422 message does not name thread_id: {e.message!r}")
    expect_error(
        UnprocessableEntityError,
        422,
        lambda: alice.threads.get_state("not-a-uuid"),
        "get_state('not-a-uuid')",
    )


def check_error_missing_thread() -> None:
    missing = str(uuid.uuid4())
    expect_error(NotFoundError, 404, lambda: alice.threads.get(missing), "get(random)")
    expect_error(NotFoundError, 404, lambda: alice.threads.get_state(missing), "get_state(random)")
    expect_error(
        NotFoundError, 404, lambda: alice.threads.get_history(missing), "get_history(random)"
    )
    expect_error(
        NotFoundError,
        404,
        lambda: alice.threads.update(missing, metadata={"x": 1}),
        "update(random)",
    )
    expect_error(NotFoundError, 404, lambda: alice.threads.delete(missing), "delete(random)")


def check_error_bad_message_leaves_state() -> None:
    tid = new_thread()["thread_id"]
    alice.threads.update_state(tid, {"messages": [{"role": "user", "content": "keep"}]})
    before = alice.threads.get_state(tid)
    history_before = alice.threads.get_history(tid)
    expect_error(
        UnprocessableEntityError,
        422,
        lambda: alice.threads.update_state(tid, {"messages": [{"role": "robot", "content": "x"}]}),
        "update_state(role=robot)",
    )
    after = alice.threads.get_state(tid)
    expect_eq(after["values"], before["values"], "values after a refused update")
    expect_eq(after["checkpoint"], before["checkpoint"], "checkpoint after a refused update")
    expect_eq(len(alice.threads.get_history(tid)), len(history_before), "history length")


def check_error_search_limit_zero() -> None:
    expect_error(
        UnprocessableEntityError, 422, lambda: alice.threads.search(limit=0), "search(limit=0)"
    )
    expect_error(
        UnprocessableEntityError,
        422,
        lambda: alice.threads.search(ids=["not-a-uuid"]),
        "search(ids=['not-a-uuid'])",
    )
    expect_error(
        UnprocessableEntityError,
        422,
        lambda: alice.threads.search(sort_by="colour"),
        "search(sort_by='colour')",
    )
    expect_error(
        UnprocessableEntityError,
        422,
        lambda: alice.threads.create(thread_id="not-a-uuid"),
        "create(thread_id='not-a-uuid')",
    )


# ---------------------------------------------------------------- isolation


def alice_thread_with_state() -> tuple[str, dict, dict]:
    thread = new_thread(graph_id="echo", owner="alice")
    tid = thread["thread_id"]
    alice.threads.update_state(tid, {"messages": [{"role": "user", "content": "private"}]})
    return tid, alice.threads.get(tid), alice.threads.get_state(tid)


def check_isolation_get() -> None:
    tid, _, _ = alice_thread_with_state()
    e_alice = expect_error(NotFoundError, 404, lambda: bob.threads.get(tid), "bob get(alice's)")
    random_id = str(uuid.uuid4())
    e_random = expect_error(
        NotFoundError, 404, lambda: bob.threads.get(random_id), "bob get(random)"
    )
    expect_eq(
        e_alice.message.replace(tid, "ID"),
        e_random.message.replace(random_id, "ID"),
        "bob's 404 for alice's thread vs a random id (message)",
    )
    expect_eq(e_alice.body.get("code"), e_random.body.get("code"), "404 code")
    expect(
        "private" not in e_alice.response.text,
        f"404 body leaks alice's data: {e_alice.response.text!r}",
    )


def check_isolation_search() -> None:
    tid, _, _ = alice_thread_with_state()
    bob_tid = new_thread(client=bob, graph_id="echo")["thread_id"]
    for kwargs in (
        {"limit": 100},
        {"metadata": {"graph_id": "echo"}, "limit": 100},
        {"metadata": {"run": RUN, "owner": "alice"}, "limit": 100},
        {"ids": [tid], "limit": 100},
        {"values": {"messages": [{"content": "private"}]}, "limit": 100},
    ):
        found = {t["thread_id"] for t in bob.threads.search(**kwargs)}
        expect(tid not in found, f"bob's search({kwargs}) returned alice's thread")
    expect(
        bob_tid in {t["thread_id"] for t in bob.threads.search(metadata={"graph_id": "echo"}, limit=100)},
        "bob's search does not find bob's own thread",
    )
    expect(
        bob_tid not in {t["thread_id"] for t in alice.threads.search(limit=1000)},
        "alice's search returned bob's thread",
    )
    expect_eq(
        bob.threads.count(metadata={"run": RUN, "owner": "alice"}), 0, "bob's count of alice's"
    )
    both = bob.threads.search(ids=[tid, bob_tid])
    expect_eq([t["thread_id"] for t in both], [bob_tid], "bob's search(ids=[alice's, bob's])")


def check_isolation_mutations() -> None:
    tid, thread_before, state_before = alice_thread_with_state()
    attempts = {
        "update": lambda: bob.threads.update(tid, metadata={"owner": "bob"}),
        "update_state": lambda: bob.threads.update_state(
            tid, {"messages": [{"role": "user", "content": "from bob"}]}
        ),
        "get_state": lambda: bob.threads.get_state(tid),
        "get_state(checkpoint_id)": lambda: bob.threads.get_state(
            tid, checkpoint_id=state_before["checkpoint"]["checkpoint_id"]
        ),
        "get_history": lambda: bob.threads.get_history(tid),
        "delete": lambda: bob.threads.delete(tid),
    }
    for name, call in attempts.items():
        expect_error(NotFoundError, 404, call, f"bob {name}(alice's thread)")
    thread_after = alice.threads.get(tid)
    expect_eq(thread_after["metadata"], thread_before["metadata"], "alice's metadata after bob")
    expect_eq(thread_after["values"], thread_before["values"], "alice's values after bob")
    state_after = alice.threads.get_state(tid)
    expect_eq(state_after["checkpoint"], state_before["checkpoint"], "alice's checkpoint after bob")
    expect_eq(len(alice.threads.get_history(tid)), 1, "alice's history length after bob")


def check_isolation_create_with_taken_id() -> None:
    """Bob naming alice's thread id in a create must never hand him alice's thread."""
    tid, thread_before, _ = alice_thread_with_state()
    try:
        got = bob.threads.create(thread_id=tid, if_exists="do_nothing", metadata={"owner": "bob"})
    except APIStatusError as e:
        expect(
            e.status_code in (404, 409),
            f"bob create(alice's id, do_nothing): expected 404 or 409, got {e.status_code} {e.body!r}",
        )
        expect("private" not in e.response.text, f"error leaks alice's data: {e.response.text!r}")
    else:
        raise CheckFailed(
            f"bob create(alice's id, if_exists=do_nothing) returned a thread with alice's id: {got!r}"
        )
    thread_after = alice.threads.get(tid)
    expect_eq(thread_after["metadata"], thread_before["metadata"], "alice's metadata after bob")
    expect_eq(thread_after["values"], thread_before["values"], "alice's values after bob")


# ---------------------------------------------------------------- runs


SYNTHETIC_ID = str(uuid.uuid5(ASSISTANT_NAMESPACE, "synthetic"))

# The modes the checks stream by default: full state, token chunks, node updates.
MODES = ["values", "messages-tuple", "updates"]


def human(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


def long_input(text: str = "long") -> dict:
    """Input of a `synthetic` run that lasts minutes unless it is stopped (100000 custom
    events, 5 ms apart)."""
    return {**human(text), "n": 100000, "mode": "custom", "delay_ms": 5}


def expect_run(run: Any, what: str, *, thread_id: str, assistant_id: str = ECHO_ID) -> dict:
    expect_shape(run, schema.Run, what)
    uuid.UUID(run["run_id"])
    expect_eq(run["thread_id"], thread_id, f"{what}: thread_id")
    expect_eq(run["assistant_id"], assistant_id, f"{what}: assistant_id")
    expect(
        run["status"] in typing.get_args(schema.RunStatus),
        f"{what}: status {run['status']!r} is not one of the SDK's RunStatus",
    )
    expect(
        run["multitask_strategy"] in typing.get_args(schema.MultitaskStrategy),
        f"{what}: multitask_strategy {run['multitask_strategy']!r} is not one of the SDK's",
    )
    timestamp(run["created_at"], f"{what}: created_at")
    timestamp(run["updated_at"], f"{what}: updated_at")
    return run


def expect_sdk_http_error(status: int, call: Callable[[], Any], what: str) -> Exception:
    """For the SDK calls that go through `request_reconnect` (runs.wait, runs.join,
    runs.cancel(wait=True)): the SDK raises httpx's HTTPStatusError there, by its own design,
    not its typed errors. The status and the JSON error body are still checked."""
    try:
        result = call()
    except httpx.HTTPStatusError as e:
        got = e.response.status_code
        if got != status:
            raise CheckFailed(
                f"{what}: expected HTTP {status}, got HTTP {got}: {e.response.text!r}"
            ) from None
        try:
            body = e.response.json()
        except Exception:  # noqa: BLE001
            body = e.response.text
        expect(
            isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"],
            f"{what}: error body has no string `detail`: {body!r}",
        )
        return e
    raise CheckFailed(f"{what}: expected HTTP {status}, but the call returned {result!r}")


def wait_for_status(
    client, tid: str, rid: str, statuses: set[str], what: str, limit: float = 10.0
) -> dict:
    """Polls runs.get until the run's status is in `statuses` (bounded)."""
    deadline = time.monotonic() + limit
    while True:
        run = client.runs.get(tid, rid)
        if run["status"] in statuses:
            return run
        if time.monotonic() > deadline:
            raise CheckFailed(
                f"{what}: run {rid} still {run['status']!r} after {limit:.0f} s "
                f"(waiting for {sorted(statuses)})"
            )
        time.sleep(0.05)


def start_long_run(tid: str, text: str = "long", **kwargs: Any) -> dict:
    """A long `synthetic` run on `tid`, returned once runs.get says it is running."""
    run = alice.runs.create(tid, "synthetic", input=long_input(text), **kwargs)
    expect_run(run, "runs.create(synthetic)", thread_id=tid, assistant_id=SYNTHETIC_ID)
    return wait_for_status(alice, tid, run["run_id"], {"running"}, "long run start")


def stop_quietly(tid: str, rid: str) -> None:
    """Cleanup: a long run a failed check left running must not load the server."""
    try:
        alice.runs.cancel(tid, rid)
    except Exception:  # noqa: BLE001
        pass


def stream_parts(parts: Any) -> list[schema.StreamPart]:
    return [p for p in parts]


def without_end(parts: list) -> list:
    return [p for p in parts if p.event != "end"]


def event_data(parts: list) -> list[tuple[str, Any]]:
    return [(p.event, p.data) for p in parts]


def expect_same_parts(got: list, want: list, what: str) -> None:
    """The same parts (event and data) in the same order; on a difference, says where, with
    each side's events and SSE ids."""
    if event_data(got) == event_data(want):
        return
    first = next(
        (i for i, (g, w) in enumerate(zip(event_data(got), event_data(want))) if g != w),
        min(len(got), len(want)),
    )
    at = lambda parts: repr(parts[first]) if first < len(parts) else "nothing"  # noqa: E731
    raise CheckFailed(
        f"{what}: expected {len(want)} parts (event, id) {[(p.event, p.id) for p in want]}, got "
        f"{len(got)}: {[(p.event, p.id) for p in got]}; first difference at part {first}: "
        f"expected {at(want)}, got {at(got)}"
    )


def check_runs_create_join_get_list() -> None:
    tid = new_thread()["thread_id"]
    created: list = []
    run = alice.runs.create(
        tid,
        "echo",
        input=human("hello"),
        metadata={"k": "v"},
        on_run_created=created.append,
    )
    expect_run(run, "runs.create", thread_id=tid)
    rid = run["run_id"]
    expect(
        run["status"] in ("pending", "running", "success"),
        f"runs.create: status {run['status']!r}",
    )
    expect_eq(run["metadata"], {"k": "v"}, "runs.create: metadata")
    expect_eq(run["multitask_strategy"], "enqueue", "runs.create: default multitask_strategy")
    expect_eq(
        created,
        [{"run_id": rid, "thread_id": tid}],
        "POST /threads/{id}/runs: run metadata from the Content-Location header",
    )

    values = alice.runs.join(tid, rid)
    expect_eq(
        message_texts(values), [("human", "hello"), ("ai", "echo: hello")], "runs.join values"
    )
    got = expect_run(alice.runs.get(tid, rid), "runs.get", thread_id=tid)
    expect_eq(got["run_id"], rid, "runs.get: run_id")
    expect_eq(got["status"], "success", "runs.get after join: status")
    expect_eq(got["metadata"], {"k": "v"}, "runs.get: metadata")
    expect(
        timestamp(got["updated_at"], "updated_at") >= timestamp(got["created_at"], "created_at"),
        f"runs.get: updated_at before created_at: {got!r}",
    )
    expect_eq(alice.threads.get(tid)["values"], values, "threads.get values vs runs.join")

    rid2 = alice.runs.create(tid, "echo", input=human("again"))["run_id"]
    values = alice.runs.join(tid, rid2)
    expect_eq(
        message_texts(values),
        [("human", "hello"), ("ai", "echo: hello"), ("human", "again"), ("ai", "echo: again")],
        "second run's values",
    )
    listed = alice.runs.list(tid)
    expect(isinstance(listed, list), f"runs.list: expected a list, got {listed!r}")
    for r in listed:
        expect_run(r, "runs.list item", thread_id=tid)
    expect_eq([r["run_id"] for r in listed], [rid2, rid], "runs.list ids, newest first")
    expect_eq(
        [r["run_id"] for r in alice.runs.list(tid, status="success")],
        [rid2, rid],
        "runs.list(status='success')",
    )
    expect_eq(alice.runs.list(tid, status="pending"), [], "runs.list(status='pending')")
    expect_eq(alice.runs.list(tid, status="error"), [], "runs.list(status='error')")
    expect_eq([r["run_id"] for r in alice.runs.list(tid, limit=1)], [rid2], "runs.list(limit=1)")
    expect_eq(
        [r["run_id"] for r in alice.runs.list(tid, limit=1, offset=1)],
        [rid],
        "runs.list(limit=1, offset=1)",
    )

    expect_eq(alice.runs.delete(tid, rid), None, "runs.delete of a finished run")
    expect_error(NotFoundError, 404, lambda: alice.runs.get(tid, rid), "runs.get after delete")
    expect_eq([r["run_id"] for r in alice.runs.list(tid)], [rid2], "runs.list after delete")
    expect_error(
        NotFoundError, 404, lambda: alice.runs.get(tid, str(uuid.uuid4())), "runs.get(random run)"
    )
    expect_error(
        UnprocessableEntityError,
        422,
        lambda: alice.runs.get(tid, "not-a-uuid"),
        "runs.get('not-a-uuid')",
    )


def check_runs_wait() -> None:
    tid = new_thread()["thread_id"]
    created: list = []
    values = alice.runs.wait(tid, "echo", input=human("hi"), on_run_created=created.append)
    expect_eq(message_texts(values), [("human", "hi"), ("ai", "echo: hi")], "runs.wait values")
    expect_eq(len(created), 1, "POST /threads/{id}/runs/wait: Content-Location run metadata")
    expect_eq(created[0]["thread_id"], tid, "runs.wait: Content-Location thread id")
    run = alice.runs.get(tid, created[0]["run_id"])
    expect_eq(run["status"], "success", "runs.get after runs.wait: status")

    thread = alice.threads.get(tid)
    expect_eq(thread["status"], "idle", "thread status after runs.wait")
    expect_eq(thread["metadata"].get("graph_id"), "echo", "thread metadata.graph_id stamped by the run")
    expect_eq(
        thread["metadata"].get("assistant_id"), ECHO_ID, "thread metadata.assistant_id stamped by the run"
    )
    expect_eq(thread["metadata"].get("run"), RUN, "thread metadata set at create is kept")
    expect_eq(thread["values"], values, "threads.get values vs runs.wait")
    state = alice.threads.get_state(tid)
    expect_eq(state["values"], values, "get_state values vs runs.wait")
    history = alice.threads.get_history(tid)
    expect_eq(
        [h["metadata"].get("source") for h in history],
        ["loop", "loop", "input"],
        "history after one run (answer, input applied, the state before it): checkpoint sources, newest first",
    )
    expect_eq(
        alice.threads.search(metadata={"graph_id": "echo", "run": RUN}, ids=[tid])[0]["thread_id"],
        tid,
        "threads.search(metadata={graph_id: echo}) finds the thread after a run",
    )


def check_runs_stream_values_messages_updates() -> None:
    tid = new_thread()["thread_id"]
    created: list = []
    parts = stream_parts(
        alice.runs.stream(
            tid, "echo", input=human("hi"), stream_mode=MODES, on_run_created=created.append
        )
    )
    expect(len(parts) > 0, "runs.stream yielded nothing")
    expect_eq(parts[0].event, "metadata", f"first part's event (parts: {event_data(parts)[:3]!r})")
    meta = parts[0].data
    expect(isinstance(meta, dict), f"metadata data: {meta!r}")
    rid = meta.get("run_id")
    expect(isinstance(rid, str), f"metadata has no run_id: {meta!r}")
    expect_eq(meta.get("attempt"), 1, "metadata.attempt")
    expect_eq(created, [{"run_id": rid, "thread_id": tid}], "Content-Location of runs/stream")
    events = [p.event for p in parts]
    for p in parts:
        expect(p.event != "error", f"runs.stream yielded an error part: {p!r}")
    body = without_end(parts)
    for name in ("values", "messages", "updates"):
        expect(name in events, f"runs.stream(stream_mode={MODES}): no `{name}` part in {events}")
    expect(
        set(events) <= {"metadata", "values", "messages", "updates", "end"},
        f"runs.stream(stream_mode={MODES}): unexpected events {sorted(set(events))}",
    )
    ids = [p.id for p in parts]
    expect(all(isinstance(i, str) and i for i in ids), f"a part has no SSE id: {ids}")
    expect_eq(len(set(ids)), len(ids), f"SSE ids are distinct ({ids})")

    chunks = [p.data for p in body if p.event == "messages"]
    for c in chunks:
        expect(
            isinstance(c, list) and len(c) == 2 and isinstance(c[0], dict) and isinstance(c[1], dict),
            f"messages-tuple data is not [chunk, metadata]: {c!r}",
        )
        expect_eq(c[1].get("langgraph_node"), "echo", "messages-tuple metadata.langgraph_node")
        expect(
            c[0].get("type") in ("AIMessageChunk", "ai"), f"messages-tuple chunk type: {c[0]!r}"
        )
    contents = [c[0].get("content") for c in chunks]
    expect_eq("".join(contents), "echo: hi", "concatenated messages-tuple chunk contents")
    expect_eq(contents, ["echo:", " ", "hi"], "messages-tuple chunks (words and spaces)")

    final = [p.data for p in body if p.event == "values"][-1]
    expect_eq(message_texts(final), [("human", "hi"), ("ai", "echo: hi")], "last values part")
    ai = final["messages"][1]
    expect_eq({c[0].get("id") for c in chunks}, {ai["id"]}, "chunk ids vs the final AI message id")
    updates = [p.data for p in body if p.event == "updates"]
    expect_eq(len(updates), 1, "updates parts")
    expect_eq(list(updates[0]), ["echo"], "updates part keys (node names)")
    expect_eq(message_texts(updates[0]["echo"]), [("ai", "echo: hi")], "updates.echo messages")
    expect_eq(body[-1].event, "values", "the last part before `end` is the final values")
    run = alice.runs.get(tid, rid)
    expect_eq(run["status"], "success", "runs.get after the stream ended")
    expect_eq(alice.threads.get(tid)["status"], "idle", "thread status after the stream ended")


def check_runs_stream_legacy_messages() -> None:
    tid = new_thread()["thread_id"]
    parts = stream_parts(alice.runs.stream(tid, "echo", input=human("hi"), stream_mode="messages"))
    events = [p.event for p in parts]
    expect_eq(events[0], "metadata", "first part")
    for name in ("messages/metadata", "messages/partial", "messages/complete"):
        expect(name in events, f"runs.stream(stream_mode='messages'): no `{name}` in {events}")
    expect(
        set(events) <= {"metadata", "messages/metadata", "messages/partial", "messages/complete", "end"},
        f"runs.stream(stream_mode='messages'): unexpected events {sorted(set(events))}",
    )
    partial = [p.data for p in parts if p.event == "messages/partial"]
    for d in partial:
        expect(isinstance(d, list) and len(d) == 1, f"messages/partial data: {d!r}")
    partial_texts = [d[0].get("content") for d in partial]
    expect_eq(partial_texts[-1], "echo: hi", "last messages/partial content (text so far)")
    expect(
        all(b.startswith(a) for a, b in zip(partial_texts, partial_texts[1:])),
        f"messages/partial contents do not grow: {partial_texts}",
    )
    complete = [p.data for p in parts if p.event == "messages/complete"]
    expect_eq(len(complete), 1, "messages/complete parts")
    expect_eq(message_texts(complete[0]), [("ai", "echo: hi")], "messages/complete message")


def check_runs_stream_custom_events_debug() -> None:
    tid = new_thread()["thread_id"]
    parts = stream_parts(
        alice.runs.stream(
            tid, "synthetic", input={**human("hi"), "n": 20, "mode": "custom"}, stream_mode="custom"
        )
    )
    expect_eq(parts[0].event, "metadata", "first part")
    custom = [p.data for p in parts if p.event == "custom"]
    expect_eq(custom, [{"i": i, "n": 20} for i in range(20)], "custom parts of synthetic n=20")
    expect(
        {p.event for p in parts} <= {"metadata", "custom", "end"},
        f"stream_mode='custom': unexpected events {sorted({p.event for p in parts})}",
    )
    expect_eq(
        message_texts(alice.threads.get_state(tid)["values"])[-1],
        ("ai", "echo: hi"),
        "synthetic's final message",
    )

    for mode in ("events", "debug"):
        parts = stream_parts(alice.runs.stream(tid, "echo", input=human(mode), stream_mode=mode))
        expect_eq(parts[0].event, "metadata", f"stream_mode={mode!r}: first part")
        data = [p.data for p in parts if p.event == mode]
        expect(len(data) > 0, f"stream_mode={mode!r}: no `{mode}` part in {[p.event for p in parts]}")
        expect(
            all(isinstance(d, dict) for d in data), f"stream_mode={mode!r}: data not objects: {data!r}"
        )
        expect(
            {p.event for p in parts} <= {"metadata", mode, "end"},
            f"stream_mode={mode!r}: unexpected events {sorted({p.event for p in parts})}",
        )
    expect_eq(
        message_texts(alice.threads.get_state(tid)["values"])[-1],
        ("ai", "echo: debug"),
        "final message after the events/debug runs",
    )


def streamed_run(
    tid: str, stream_mode: Any, text: str = "resume me from the middle"
) -> tuple[str, list]:
    parts = stream_parts(
        alice.runs.stream(
            tid, "echo", input=human(text), stream_mode=stream_mode, stream_resumable=True
        )
    )
    expect_eq(parts[0].event, "metadata", "first part")
    expect(len(parts) >= 6, f"too few parts to resume in the middle: {event_data(parts)!r}")
    return parts[0].data["run_id"], parts


def check_runs_join_stream_last_event_id() -> None:
    """Resuming with `Last-Event-ID` yields exactly the parts after it. One stream mode, sent
    by the SDK as `?stream_mode=messages-tuple`."""
    tid = new_thread()["thread_id"]
    mode = "messages-tuple"
    rid, parts = streamed_run(tid, mode)
    everything = stream_parts(alice.runs.join_stream(tid, rid, stream_mode=mode, last_event_id="-1"))
    expect_same_parts(everything, parts, "join_stream(last_event_id='-1'): all parts")
    expect_eq([p.id for p in everything], [p.id for p in parts], "ids of join_stream('-1')")
    for middle in (len(parts) // 2, 1, len(parts) - 2):
        last_id = parts[middle].id
        rest = parts[middle + 1 :]
        resumed = stream_parts(
            alice.runs.join_stream(tid, rid, stream_mode=mode, last_event_id=last_id)
        )
        expect_same_parts(
            resumed,
            rest,
            f"GET /threads/{{id}}/runs/{{id}}/stream?stream_mode={mode} with Last-Event-ID "
            f"{last_id!r} (part {middle} of {len(parts)}, ids {[p.id for p in parts]}): the parts "
            f"after it",
        )
        expect_eq(
            [p.id for p in resumed], [p.id for p in rest], f"ids of the parts after {last_id!r}"
        )


def check_runs_join_stream_mode_list() -> None:
    """join_stream(stream_mode=[...]): httpx sends a list as a repeated query key,
    `?stream_mode=values&stream_mode=messages-tuple&stream_mode=updates`."""
    tid = new_thread()["thread_id"]
    rid, parts = streamed_run(tid, MODES)
    everything = stream_parts(alice.runs.join_stream(tid, rid, stream_mode=MODES, last_event_id="-1"))
    expect_same_parts(everything, parts, f"join_stream(stream_mode={MODES}, '-1')")
    last_id = parts[len(parts) // 2].id
    resumed = stream_parts(alice.runs.join_stream(tid, rid, stream_mode=MODES, last_event_id=last_id))
    expect_same_parts(
        resumed,
        parts[len(parts) // 2 + 1 :],
        f"join_stream(stream_mode={MODES}, last_event_id={last_id!r})",
    )


def check_runs_join_stream_default_mode() -> None:
    """join_stream's defaults (stream_mode=None, cancel_on_disconnect=False), which the SDK
    sends as `?stream_mode=&cancel_on_disconnect=false`: the run's own modes apply."""
    tid = new_thread()["thread_id"]
    rid, parts = streamed_run(tid, MODES)
    everything = stream_parts(alice.runs.join_stream(tid, rid, last_event_id="-1"))
    expect_same_parts(everything, parts, "join_stream(tid, rid, last_event_id='-1')")


def check_runs_join_stream_live() -> None:
    """Joining a run while it runs: the stored parts, then the live ones, none lost or doubled."""
    tid = new_thread()["thread_id"]
    n = 40
    run = alice.runs.create(
        tid,
        "synthetic",
        input={**human("live"), "n": n, "mode": "custom", "delay_ms": 20},
        stream_mode="custom",
    )
    rid = run["run_id"]
    try:
        wait_for_status(alice, tid, rid, {"running"}, "run start")
        parts = stream_parts(alice.runs.join_stream(tid, rid, stream_mode="custom", last_event_id="-1"))
        expect_eq(
            [p.data for p in parts if p.event == "custom"],
            [{"i": i, "n": n} for i in range(n)],
            "custom parts of a run joined while running",
        )
        expect(parts[-1].event == "end", f"the joined stream did not end with `end`: {parts[-1]!r}")
        expect_eq(alice.runs.get(tid, rid)["status"], "success", "joined run's status")
    finally:
        stop_quietly(tid, rid)


def check_runs_wait_across_heartbeat() -> None:
    """A run longer than the 5 s heartbeat: /runs/wait and /join write a newline while it runs,
    then the values; the SDK must still decode one JSON document."""
    tid = new_thread()["thread_id"]
    created: list = []
    values = alice.runs.wait(
        tid,
        "synthetic",
        input={**human("slow"), "n": 55, "mode": "custom", "delay_ms": 100},
        on_run_created=created.append,
    )
    expect_eq(message_texts(values), [("human", "slow"), ("ai", "echo: slow")], "runs.wait values")
    expect_eq(alice.runs.join(tid, created[0]["run_id"]), values, "runs.join of the finished run")


def check_runs_cancel_interrupt() -> None:
    tid = new_thread()["thread_id"]
    run = start_long_run(tid)
    rid = run["run_id"]
    try:
        expect_eq(alice.threads.get(tid)["status"], "busy", "thread status while a run is running")
        expect_eq(
            [r["run_id"] for r in alice.runs.list(tid, status="running")],
            [rid],
            "runs.list(status='running')",
        )
        started = time.monotonic()
        result = alice.runs.cancel(tid, rid, wait=True)
        expect(time.monotonic() - started < 10, "runs.cancel(wait=True) took more than 10 s")
        expect_eq(result, None, "runs.cancel(wait=True) result")
        expect_eq(alice.runs.get(tid, rid)["status"], "interrupted", "run status after cancel")
        expect_eq(alice.threads.get(tid)["status"], "idle", "thread status after cancel")
        # The thread takes new runs after a cancel.
        values = alice.runs.wait(tid, "echo", input=human("after"))
        expect_eq(message_texts(values)[-1], ("ai", "echo: after"), "a run after the cancel")
    finally:
        stop_quietly(tid, rid)


def check_runs_cancel_no_wait() -> None:
    tid = new_thread()["thread_id"]
    rid = start_long_run(tid)["run_id"]
    try:
        expect_eq(alice.runs.cancel(tid, rid), None, "runs.cancel(wait=False) result")
        run = wait_for_status(
            alice, tid, rid, {"interrupted", "success", "error"}, "run end after cancel", 10
        )
        expect_eq(run["status"], "interrupted", "run status after runs.cancel()")
    finally:
        stop_quietly(tid, rid)


def check_runs_cancel_rollback() -> None:
    tid = new_thread()["thread_id"]
    rid = start_long_run(tid)["run_id"]
    try:
        alice.runs.cancel(tid, rid, wait=True, action="rollback")
        expect_error(
            NotFoundError, 404, lambda: alice.runs.get(tid, rid), "runs.get after a rollback"
        )
        thread = alice.threads.get(tid)
        expect_eq(thread["status"], "idle", "thread status after a rollback")
        expect_eq(alice.runs.list(tid), [], "runs.list after a rollback")
        expect_eq(
            message_texts(alice.threads.get_state(tid)["values"]),
            [],
            "thread messages after rolling back its only run",
        )
    finally:
        stop_quietly(tid, rid)


def check_runs_multitask_reject() -> None:
    tid = new_thread()["thread_id"]
    rid = start_long_run(tid)["run_id"]
    try:
        e = expect_error(
            ConflictError,
            409,
            lambda: alice.runs.create(tid, "echo", input=human("no"), multitask_strategy="reject"),
            "runs.create(multitask_strategy='reject') while a run is active",
        )
        expect(
            e.message.startswith("Thread is already running a task"),
            f"409 message: {e.message!r}",
        )
        expect_error(
            ConflictError,
            409,
            lambda: list(
                alice.runs.stream(tid, "echo", input=human("no"), multitask_strategy="reject")
            ),
            "runs.stream(multitask_strategy='reject') while a run is active",
        )
        expect_eq(
            [r["run_id"] for r in alice.runs.list(tid)], [rid], "runs after the rejected ones"
        )
        expect_eq(alice.runs.get(tid, rid)["status"], "running", "the active run is untouched")
    finally:
        stop_quietly(tid, rid)


def check_runs_multitask_interrupt() -> None:
    tid = new_thread()["thread_id"]
    rid = start_long_run(tid, "first")["run_id"]
    try:
        new = alice.runs.create(tid, "echo", input=human("second"), multitask_strategy="interrupt")
        expect_eq(new["multitask_strategy"], "interrupt", "new run's multitask_strategy")
        values = alice.runs.join(tid, new["run_id"])
        expect_eq(
            message_texts(values)[-2:],
            [("human", "second"), ("ai", "echo: second")],
            "values after the interrupting run",
        )
        expect_eq(alice.runs.get(tid, new["run_id"])["status"], "success", "interrupting run")
        expect_eq(alice.runs.get(tid, rid)["status"], "interrupted", "interrupted run's status")
        expect_eq(alice.threads.get(tid)["status"], "idle", "thread status")
    finally:
        stop_quietly(tid, rid)


def check_runs_multitask_rollback() -> None:
    tid = new_thread()["thread_id"]
    rid = start_long_run(tid, "first")["run_id"]
    try:
        new = alice.runs.create(tid, "echo", input=human("second"), multitask_strategy="rollback")
        values = alice.runs.join(tid, new["run_id"])
        expect_eq(
            message_texts(values),
            [("human", "second"), ("ai", "echo: second")],
            "values after the rolling-back run (the first run's input is undone)",
        )
        expect_error(
            NotFoundError, 404, lambda: alice.runs.get(tid, rid), "runs.get of the rolled-back run"
        )
        expect_eq(
            [r["run_id"] for r in alice.runs.list(tid)], [new["run_id"]], "runs after rollback"
        )
    finally:
        stop_quietly(tid, rid)


def check_runs_multitask_enqueue() -> None:
    tid = new_thread()["thread_id"]
    first = alice.runs.create(
        tid, "synthetic", input={**human("one"), "n": 30, "mode": "custom", "delay_ms": 10}
    )
    second = alice.runs.create(tid, "echo", input=human("two"))
    expect_eq(second["multitask_strategy"], "enqueue", "default multitask_strategy")
    third = alice.runs.create(tid, "echo", input=human("three"), multitask_strategy="enqueue")
    values = alice.runs.join(tid, third["run_id"])
    expect_eq(
        message_texts(values),
        [
            ("human", "one"),
            ("ai", "echo: one"),
            ("human", "two"),
            ("ai", "echo: two"),
            ("human", "three"),
            ("ai", "echo: three"),
        ],
        "values after three enqueued runs (in order, none lost)",
    )
    for run in (first, second, third):
        expect_eq(alice.runs.get(tid, run["run_id"])["status"], "success", "enqueued run status")
    expect_eq(
        [r["run_id"] for r in alice.runs.list(tid)],
        [third["run_id"], second["run_id"], first["run_id"]],
        "runs.list newest first",
    )


def check_runs_if_not_exists() -> None:
    new_tid = str(uuid.uuid4())
    values = alice.runs.wait(new_tid, "echo", input=human("hi"), if_not_exists="create")
    expect_eq(message_texts(values), [("human", "hi"), ("ai", "echo: hi")], "values")
    thread = alice.threads.get(new_tid)
    expect_eq(thread["thread_id"], new_tid, "thread created by if_not_exists='create'")
    expect_eq(thread["metadata"].get("graph_id"), "echo", "its metadata.graph_id")

    other = str(uuid.uuid4())
    run = alice.runs.create(other, "echo", input=human("bg"), if_not_exists="create")
    expect_eq(run["thread_id"], other, "runs.create(if_not_exists='create') thread_id")
    expect_eq(message_texts(alice.runs.join(other, run["run_id"]))[-1], ("ai", "echo: bg"), "join")

    missing = str(uuid.uuid4())
    expect_error(
        NotFoundError,
        404,
        lambda: alice.runs.create(missing, "echo", input=human("hi")),
        "runs.create on a missing thread (if_not_exists default reject)",
    )
    expect_error(
        NotFoundError,
        404,
        lambda: alice.runs.create(missing, "echo", input=human("hi"), if_not_exists="reject"),
        "runs.create(if_not_exists='reject') on a missing thread",
    )
    expect_error(
        NotFoundError,
        404,
        lambda: list(alice.runs.stream(missing, "echo", input=human("hi"))),
        "runs.stream on a missing thread",
    )
    expect_sdk_http_error(
        404, lambda: alice.runs.wait(missing, "echo", input=human("hi")), "runs.wait on a missing thread"
    )
    expect_error(NotFoundError, 404, lambda: alice.threads.get(missing), "no thread was created")


def check_runs_stateless() -> None:
    values = alice.runs.wait(None, "echo", input=human("hi"))
    expect_eq(message_texts(values), [("human", "hi"), ("ai", "echo: hi")], "runs.wait(None, ...)")

    created: list = []
    parts = stream_parts(
        alice.runs.stream(
            None, "echo", input=human("hey"), stream_mode=MODES, on_run_created=created.append
        )
    )
    expect_eq(parts[0].event, "metadata", "stateless stream: first part")
    chunks = [p.data[0]["content"] for p in parts if p.event == "messages"]
    expect_eq("".join(chunks), "echo: hey", "stateless stream: chunk contents")
    final = [p.data for p in parts if p.event == "values"][-1]
    expect_eq(message_texts(final), [("human", "hey"), ("ai", "echo: hey")], "stateless values")
    expect_eq(len(created), 1, "stateless stream: Content-Location run metadata")
    temp = created[0].get("thread_id")
    if temp:
        # on_completion defaults to delete: the temporary thread goes when the run ends.
        deadline = time.monotonic() + 5
        while True:
            try:
                alice.threads.get(temp)
            except NotFoundError:
                break
            if time.monotonic() > deadline:
                raise CheckFailed(f"the temporary thread {temp} still exists 5 s after its run")
            time.sleep(0.05)

    run = alice.runs.create(None, "echo", input=human("kept"), on_completion="keep")
    expect_run(run, "runs.create(None, on_completion='keep')", thread_id=run.get("thread_id"))
    values = alice.runs.join(run["thread_id"], run["run_id"])
    expect_eq(message_texts(values)[-1], ("ai", "echo: kept"), "kept stateless run's values")
    expect_eq(alice.threads.get(run["thread_id"])["values"], values, "kept thread's values")
    expect_error(
        NotFoundError,
        404,
        lambda: bob.threads.get(run["thread_id"]),
        "bob reads alice's kept stateless thread",
    )


def check_runs_isolation() -> None:
    tid = new_thread(owner="alice")["thread_id"]
    created: list = []
    alice.runs.wait(tid, "echo", input=human("private"), on_run_created=created.append)
    done = created[0]["run_id"]
    long_rid = start_long_run(tid, "private long", multitask_strategy="enqueue")["run_id"]
    try:
        random_tid, random_rid = str(uuid.uuid4()), str(uuid.uuid4())
        e_alice = expect_error(
            NotFoundError, 404, lambda: bob.runs.get(tid, done), "bob runs.get(alice's run)"
        )
        e_random = expect_error(
            NotFoundError, 404, lambda: bob.runs.get(random_tid, random_rid), "bob runs.get(random)"
        )
        expect_eq(
            e_alice.message.replace(tid, "T").replace(done, "R"),
            e_random.message.replace(random_tid, "T").replace(random_rid, "R"),
            "bob's 404 for alice's run vs a random one (message)",
        )
        expect_error(NotFoundError, 404, lambda: bob.runs.list(tid), "bob runs.list(alice's)")
        expect_sdk_http_error(404, lambda: bob.runs.join(tid, done), "bob runs.join(alice's run)")
        expect_error(
            NotFoundError,
            404,
            lambda: list(bob.runs.join_stream(tid, done, stream_mode="values", last_event_id="-1")),
            "bob runs.join_stream(alice's run)",
        )
        expect_error(
            NotFoundError, 404, lambda: bob.runs.cancel(tid, long_rid), "bob runs.cancel(alice's)"
        )
        expect_sdk_http_error(
            404,
            lambda: bob.runs.cancel(tid, long_rid, wait=True, action="rollback"),
            "bob runs.cancel(alice's, wait=True, rollback)",
        )
        expect_error(
            NotFoundError, 404, lambda: bob.runs.delete(tid, done), "bob runs.delete(alice's run)"
        )
        expect_error(
            NotFoundError,
            404,
            lambda: bob.runs.create(tid, "echo", input=human("from bob")),
            "bob runs.create on alice's thread",
        )
        try:
            got = bob.runs.create(tid, "echo", input=human("from bob"), if_not_exists="create")
        except APIStatusError as e:
            expect(
                e.status_code in (404, 409),
                f"bob runs.create(alice's thread id, if_not_exists='create'): expected 404 or "
                f"409, got {e.status_code} {e.body!r}",
            )
        else:
            raise CheckFailed(
                f"bob runs.create(alice's thread id, if_not_exists='create') made a run: {got!r}"
            )
        expect_error(
            NotFoundError,
            404,
            lambda: list(bob.runs.stream(tid, "echo", input=human("from bob"))),
            "bob runs.stream on alice's thread",
        )
        expect_sdk_http_error(
            404,
            lambda: bob.runs.wait(tid, "echo", input=human("from bob")),
            "bob runs.wait on alice's thread",
        )
        expect_eq(alice.runs.get(tid, long_rid)["status"], "running", "alice's run after bob")
        expect_eq(
            [r["run_id"] for r in alice.runs.list(tid)], [long_rid, done], "alice's runs after bob"
        )
        texts = message_texts(alice.threads.get_state(tid)["values"])
        expect(("human", "from bob") not in texts, f"bob's input reached alice's thread: {texts}")
    finally:
        stop_quietly(tid, long_rid)


def check_runs_errors() -> None:
    tid = new_thread()["thread_id"]
    x = human("x")
    for call, what in (
        (lambda: alice.runs.create(tid, "echo", input=x, stream_mode="bogus"), "runs.create"),
        (lambda: list(alice.runs.stream(tid, "echo", input=x, stream_mode="bogus")), "runs.stream"),
        (
            lambda: list(alice.runs.stream(tid, "echo", input=x, stream_mode=["values", "bogus"])),
            "runs.stream([values, bogus])",
        ),
        (
            lambda: list(alice.runs.stream(None, "echo", input=x, stream_mode="bogus")),
            "runs.stream(None)",
        ),
    ):
        e = expect_error(UnprocessableEntityError, 422, call, f"{what}(stream_mode='bogus')")
        expect("bogus" in e.message, f"{what}: the 422 message does not name `bogus`: {e.message!r}")
    for call, what in (
        (lambda: alice.runs.create(tid, "nope", input=human("x")), "runs.create"),
        (lambda: list(alice.runs.stream(tid, "nope", input=human("x"))), "runs.stream"),
        (lambda: alice.runs.create(tid, str(uuid.uuid4()), input=human("x")), "runs.create(random id)"),
        (lambda: alice.runs.create(None, "nope", input=human("x")), "runs.create(None)"),
    ):
        expect_error(NotFoundError, 404, call, f"{what} with assistant 'nope'")
    expect_sdk_http_error(
        404, lambda: alice.runs.wait(tid, "nope", input=human("x")), "runs.wait with assistant 'nope'"
    )
    expect_eq(alice.runs.list(tid), [], "no run was created by refused requests")
    thread = alice.threads.get(tid)
    expect_eq(thread["values"], {}, "thread values after refused runs")
    expect_eq(thread["status"], "idle", "thread status after refused runs")


# ---------------------------------------------------------------- authentication


def check_auth_wrong_key() -> None:
    wrong = get_sync_client(url=URL, api_key="spindle_wrong", timeout=TIMEOUT)
    expect_error(AuthenticationError, 401, lambda: wrong.threads.search(), "search with a wrong key")
    expect_error(
        AuthenticationError, 401, lambda: wrong.assistants.search(), "assistants with a wrong key"
    )
    anonymous = get_sync_client(url=URL, api_key=None, timeout=TIMEOUT)
    expect_error(AuthenticationError, 401, lambda: anonymous.threads.search(), "search with no key")


# ---------------------------------------------------------------- connection reuse


def read_response(sock: socket.socket) -> tuple[str, dict[str, str]] | None:
    """One HTTP/1.1 response (status line, headers) with its body read off the socket;
    None if nothing came before the socket's timeout or the server closed the connection."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return lines[0], headers
    except (socket.timeout, ConnectionError):
        return None


def check_keepalive_after_early_error() -> None:
    """An error answered before the request body has arrived must not silently kill the
    keep-alive connection. httpx (the SDK's transport) sends the body after the headers and
    reuses pooled connections: if the server closes such a connection without saying
    `connection: close`, the SDK's next call on it fails, at random, with
    `RemoteProtocolError: Server disconnected without sending a response`. This check makes
    that race deterministic: headers first, the body 0.3 s later, then a second request."""
    url = httpx.URL(URL)
    missing = str(uuid.uuid4())
    cases = [
        ("POST", "/threads/search", "spindle_wrong", b'{"limit": 10}', "401 (wrong key)"),
        ("POST", f"/threads/{missing}/state", KEY_ALICE, b'{"values": {"k": 1}}', "404"),
        ("PATCH", f"/threads/{missing}", KEY_ALICE, b'{"metadata": {"k": 1}}', "404"),
        ("POST", "/threads/not-a-uuid/history", KEY_ALICE, b'{"limit": 1}', "422"),
    ]
    problems = []
    for method, path, key, body, what in cases:
        with socket.create_connection((url.host, url.port), timeout=5) as sock:
            sock.sendall(
                f"{method} {path} HTTP/1.1\r\nhost: {url.host}\r\nx-api-key: {key}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            )
            sock.settimeout(0.3)
            early = read_response(sock)
            sock.settimeout(5)
            if early is None:
                # The server waits for the body before answering: nothing to race.
                sock.sendall(body)
                first = read_response(sock)
                expect(first is not None, f"{method} {path}: no response after the body")
            else:
                first = early
            if "close" in first[1].get("connection", "").lower():
                continue  # the client is told not to reuse this connection: fine
            try:
                if early is not None:
                    sock.sendall(body)  # the rest of the request, as httpx sends it
                sock.sendall(f"GET /ok HTTP/1.1\r\nhost: {url.host}\r\n\r\n".encode())
                second = read_response(sock)
                outcome = "the connection was closed" if second is None else second[0]
            except ConnectionError as e:
                second, outcome = None, f"{type(e).__name__}: {e}"
            if second is None or not second[0].startswith("HTTP/1.1 200"):
                problems.append(
                    f"{method} {path} answered {first[0]!r} ({what}) before its body arrived, "
                    f"without `connection: close`; the next request on that keep-alive "
                    f"connection (GET /ok) got: {outcome}"
                )
    expect(not problems, "; ".join(problems))


CHECKS: list[Callable[[], None]] = [
    check_assistants_search_has_echo,
    check_assistants_search_by_graph_id,
    check_assistants_search_select,
    check_assistants_count,
    check_assistants_get,
    check_assistants_get_missing,
    check_assistants_create_update_versions_latest_delete,
    check_assistants_schemas_and_graph,
    check_threads_create,
    check_threads_create_with_id,
    check_threads_get,
    check_threads_update,
    check_threads_search_by_metadata,
    check_threads_search_filters_and_paging,
    check_threads_search_select_sdk_fields,
    check_threads_count,
    check_threads_delete,
    check_state_of_new_thread,
    check_state_update_and_get,
    check_state_append_and_replace,
    check_history,
    check_state_at_checkpoint,
    check_state_and_history_select,
    check_error_invalid_thread_id,
    check_error_missing_thread,
    check_error_bad_message_leaves_state,
    check_error_search_limit_zero,
    check_isolation_get,
    check_isolation_search,
    check_isolation_mutations,
    check_isolation_create_with_taken_id,
    check_auth_wrong_key,
    check_keepalive_after_early_error,
    check_runs_create_join_get_list,
    check_runs_wait,
    check_runs_stream_values_messages_updates,
    check_runs_stream_legacy_messages,
    check_runs_stream_custom_events_debug,
    check_runs_join_stream_last_event_id,
    check_runs_join_stream_mode_list,
    check_runs_join_stream_default_mode,
    check_runs_join_stream_live,
    check_runs_wait_across_heartbeat,
    check_runs_cancel_interrupt,
    check_runs_cancel_no_wait,
    check_runs_cancel_rollback,
    check_runs_multitask_reject,
    check_runs_multitask_interrupt,
    check_runs_multitask_rollback,
    check_runs_multitask_enqueue,
    check_runs_if_not_exists,
    check_runs_stateless,
    check_runs_isolation,
    check_runs_errors,
]


def main() -> int:
    return runner.run(CHECKS, __file__)


if __name__ == "__main__":
    sys.exit(main())
