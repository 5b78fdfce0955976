"""The official Python SDK (langgraph-sdk, sync client) against a running Spindle.

Run by crates/server/tests/sdk.rs with:
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
import traceback
import typing
import uuid
from typing import Any, Callable

import httpx
from langgraph_sdk import get_sync_client, schema
from langgraph_sdk.errors import (
    APIStatusError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
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


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def expect_eq(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise CheckFailed(f"{what}: expected {want!r}, got {got!r}")


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


def expect_error(
    error_class: type[APIStatusError],
    status: int,
    call: Callable[[], Any],
    what: str,
) -> APIStatusError:
    """Runs `call`, which must raise the SDK's `error_class` with HTTP `status` and a body
    `{"detail", "code", "request_id"}` whose request id is the `x-request-id` header."""
    try:
        result = call()
    except APIStatusError as e:
        body = e.body
        if not isinstance(e, error_class) or e.status_code != status:
            raise CheckFailed(
                f"{what}: expected {error_class.__name__} (HTTP {status}), got "
                f"{type(e).__name__} (HTTP {e.status_code}) with body {body!r}"
            ) from None
        expect(isinstance(body, dict), f"{what}: error body is not a JSON object: {body!r}")
        for key in ("detail", "code", "request_id"):
            expect(
                isinstance(body.get(key), str) and body[key] != "",
                f"{what}: error body has no string `{key}`: {body!r}",
            )
        expect_eq(e.message, body["detail"], f"{what}: the SDK's error message")
        expect_eq(
            e.request_id,
            body["request_id"],
            f"{what}: x-request-id header vs body request_id",
        )
        return e
    except httpx.HTTPStatusError as e:
        raise CheckFailed(
            f"{what}: expected the SDK's {error_class.__name__} (HTTP {status}), got a bare "
            f"httpx {type(e).__name__} (HTTP {e.response.status_code}): {e.response.text!r}"
        ) from None
    raise CheckFailed(
        f"{what}: expected {error_class.__name__} (HTTP {status}), but the call returned {result!r}"
    )


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
    expect_eq(state["checkpoint"].get("thread_id"), tid, "checkpoint.thread_id")
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
]


def check_line(e: BaseException) -> int | None:
    """The line of this script nearest the failure (the failing call in the check)."""
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == __file__]
    return lines[-1] if lines else None


def main() -> int:
    passed = failed = 0
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            check()
        except CheckFailed as e:
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)
        except APIStatusError as e:
            failed += 1
            print(
                f"FAIL {name}: unexpected {type(e).__name__} (HTTP {e.status_code}) from "
                f"{e.request.method} {e.request.url}: {e.body!r}",
                flush=True,
            )
        except httpx.RequestError as e:
            # No HTTP response at all (connection dropped, timeout): say which request.
            failed += 1
            print(
                f"FAIL {name}: {type(e).__name__} on {e.request.method} {e.request.url}: {e} "
                f"(check line {check_line(e)})",
                flush=True,
            )
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            where = traceback.extract_tb(e.__traceback__)[-1]
            print(
                f"FAIL {name}: {type(e).__name__}: {e} (at {where.filename}:{where.lineno}: "
                f"{where.line}; check line {check_line(e)})",
                flush=True,
            )
        else:
            passed += 1
            print(f"ok {name}", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
