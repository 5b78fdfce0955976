"""The `llm` agent through the official Python SDK (langgraph-sdk, sync client), issue #15: an
assistant created with a model, an MCP tool and an approval step, streamed with
`messages-tuple`, its history, and a resume after the approval (approve and reject).

Run by crates/server/tests/it/sdk.rs against a server started with `--auth keys`,
`--llm-base-url` (testkit's model server) and `--mcp math=...` (testkit's MCP server), with:
    SPINDLE_URL        http://127.0.0.1:PORT
    SPINDLE_KEY_ALICE  an API key of user alice
    SPINDLE_KEY_BOB    an API key of user bob

The model server answers by rules (crates/testkit/src/model.rs): `use TOOL {json}` calls the
tool, a tool's result is answered `the tool said: <result>`, anything else `echo: <text>`.
"""

from __future__ import annotations

import os
import sys

import httpx
import runner
from langgraph_sdk import get_sync_client
from langgraph_sdk.errors import NotFoundError
from runner import expect, expect_eq

URL = os.environ["SPINDLE_URL"]
alice = get_sync_client(url=URL, api_key=os.environ["SPINDLE_KEY_ALICE"], timeout=30.0)
bob = get_sync_client(url=URL, api_key=os.environ["SPINDLE_KEY_BOB"], timeout=30.0)

CONTEXT = {"model": "test-model", "system_prompt": "You help.", "tools": ["math"], "approve": ["add"]}
_assistant: dict = {}


def assistant() -> dict:
    if not _assistant:
        _assistant.update(
            alice.assistants.create(graph_id="llm", name="helper", context=CONTEXT, if_exists="raise")
        )
    return _assistant


def human(text: str) -> dict:
    return {"messages": [{"type": "human", "content": text}]}


def types_of(values: dict) -> list[str]:
    return [m["type"] for m in values["messages"]]


def check_create_an_llm_assistant() -> None:
    a = assistant()
    expect_eq(a["graph_id"], "llm", "graph_id")
    expect_eq(a["context"], CONTEXT, "context")
    schemas = alice.assistants.get_schemas(a["assistant_id"])
    expect("model" in schemas["context_schema"]["properties"], f"context schema: {schemas}")


def check_stream_messages_tuple_tokens() -> None:
    thread = alice.threads.create()
    parts = list(
        alice.runs.stream(
            thread["thread_id"], assistant()["assistant_id"], input=human("hello there"), stream_mode="messages-tuple"
        )
    )
    chunks = [p.data[0] for p in parts if p.event == "messages"]
    expect(len(chunks) >= 3, f"a chunk per word: {parts}")
    expect_eq("".join(c["content"] for c in chunks), "echo: hello there", "the streamed text")
    expect(all(c["type"] == "AIMessageChunk" for c in chunks), f"chunk types: {chunks}")
    state = alice.threads.get_state(thread["thread_id"])
    expect_eq(types_of(state["values"]), ["human", "ai"], "the thread's messages")
    expect(state["values"]["messages"][1]["usage_metadata"]["output_tokens"] > 0, "usage kept")


def check_a_tool_call_streams_and_its_result_is_answered() -> None:
    thread = alice.threads.create()
    parts = list(
        alice.runs.stream(
            thread["thread_id"],
            assistant()["assistant_id"],
            input=human('use echo {"text": "hi tool"}'),
            stream_mode=["messages-tuple", "values"],
        )
    )
    chunks = [p.data[0] for p in parts if p.event == "messages"]
    fragments = [t for c in chunks for t in c.get("tool_call_chunks") or []]
    expect(any(f.get("name") == "echo" for f in fragments), f"tool_call_chunks: {fragments}")
    expect(any(c["type"] == "tool" for c in chunks), "the tool's message is streamed")
    values = [p.data for p in parts if p.event == "values"][-1]
    expect_eq(types_of(values), ["human", "ai", "tool", "ai"], "messages")
    expect_eq(values["messages"][2]["content"], "hi tool", "the tool's result")
    expect_eq(values["messages"][3]["content"], "the tool said: hi tool", "the answer")
    history = alice.threads.get_history(thread["thread_id"], limit=20)
    expect(len(history) >= 2, f"history: {len(history)} states")
    expect_eq(types_of(history[0]["values"]), ["human", "ai", "tool", "ai"], "the newest state")


def asked(thread_id: str, args: str) -> dict:
    alice.runs.wait(thread_id, assistant()["assistant_id"], input=human(f"use add {args}"))
    state = alice.threads.get_state(thread_id)
    expect_eq(state["next"], ["llm"], "the state waits for the agent")
    interrupts = state["tasks"][0]["interrupts"]
    expect_eq(len(interrupts), 1, "one interrupt")
    return interrupts[0]["value"]


def check_approval_then_approve() -> None:
    thread = alice.threads.create()
    value = asked(thread["thread_id"], '{"a": 2, "b": 3}')
    expect_eq(value["action_requests"][0]["name"], "add", "the action asked")
    expect_eq(value["action_requests"][0]["args"], {"a": 2, "b": 3}, "its arguments")
    expect_eq(value["review_configs"][0]["allowed_decisions"], ["approve", "edit", "reject", "respond"], "decisions")
    expect_eq(alice.threads.get(thread["thread_id"])["status"], "interrupted", "thread status")
    result = alice.runs.wait(
        thread["thread_id"], assistant()["assistant_id"], command={"resume": {"decisions": [{"type": "approve"}]}}
    )
    expect_eq(result["messages"][-1]["content"], "the tool said: 5", "the answer after approval")
    expect_eq(alice.threads.get(thread["thread_id"])["status"], "idle", "thread status")


def check_approval_then_reject() -> None:
    thread = alice.threads.create()
    asked(thread["thread_id"], '{"a": 1, "b": 1}')
    decisions = [{"type": "reject", "message": "not now"}]
    result = alice.runs.wait(
        thread["thread_id"], assistant()["assistant_id"], command={"resume": {"decisions": decisions}}
    )
    answer = result["messages"][-1]["content"]
    expect("rejected" in answer and "not now" in answer, f"the model was told: {answer!r}")


def check_another_user_cannot_use_the_assistant() -> None:
    thread = bob.threads.create()
    try:
        bob.runs.wait(thread["thread_id"], assistant()["assistant_id"], input=human("hi"))
    except NotFoundError:
        pass
    except httpx.HTTPStatusError as e:  # this SDK's `runs.wait` raises httpx's own error
        expect_eq(e.response.status_code, 404, "bob's run of alice's assistant")
    else:
        raise runner.CheckFailed("bob ran alice's assistant")
    runner.expect_error(NotFoundError, 404, lambda: bob.assistants.get(assistant()["assistant_id"]), "bob reads it")


CHECKS = [
    check_create_an_llm_assistant,
    check_stream_messages_tuple_tokens,
    check_a_tool_call_streams_and_its_result_is_answered,
    check_approval_then_approve,
    check_approval_then_reject,
    check_another_user_cannot_use_the_assistant,
]

if __name__ == "__main__":
    sys.exit(runner.run(CHECKS, __file__, sys.argv[1:]))
