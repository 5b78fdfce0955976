"""SpindleSaver over a real connection to a fake Spindle (tests/fake_spindle.py).

The saver sends its calls through `spindle_worker.connection.Worker` (the real client) to a
WebSocket server on 127.0.0.1 whose answers come from an in-memory store. The suite is
langgraph-checkpoint-conformance, on every capability the protocol has (`delete_thread`,
`copy_thread` and `prune` are not worker calls: Spindle does those itself).
"""

from __future__ import annotations

import asyncio
import base64

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.conformance import checkpointer_test, validate

from fake_spindle import FakeSpindle
from spindle_worker.connection import connect
from spindle_worker.saver import SaverError, SpindleSaver


@pytest.fixture(scope="module")
def spindle():
    with FakeSpindle() as server:
        yield server


async def _with_saver(spindle, body, *, job="job-1", attempt=1, thread_id=None):
    worker = await connect(spindle.url, spindle.token, {}, name="saver-test", connect_window_s=5)
    reader = asyncio.create_task(worker.read())
    try:
        def make() -> SpindleSaver:
            return SpindleSaver(lambda op, args: worker.saver_call(job, attempt, op, args), thread_id=thread_id)
        return await body(make)
    finally:
        await worker.ws.close()
        await reader


def test_conformance(spindle):
    async def body(make):
        @checkpointer_test(name="SpindleSaver", skip_capabilities={"delete_thread", "copy_thread", "prune"})
        async def spindle_saver():
            yield make()

        return await validate(spindle_saver)

    report = asyncio.run(_with_saver(spindle, body))
    results = {name: (r.passed, r.tests_passed, r.failures) for name, r in report.results.items()}
    for capability in ("put", "put_writes", "get_tuple", "list", "delete_for_runs"):
        passed, count, failures = results[capability]
        assert passed is True and count > 0, (capability, failures)


def _config(thread, checkpoint_id=None, ns=""):
    configurable = {"thread_id": thread, "checkpoint_ns": ns}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def test_frames_carry_the_job_and_typed_values(spindle):
    """What goes on the wire: job, attempt, blobs of new_versions only, negative idx, task_path."""
    thread = "thread-frames"

    async def body(make):
        saver = make()
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"a": "kept", "b": [1, 2]}
        checkpoint["channel_versions"] = {"a": saver.get_next_version(None, None), "b": saver.get_next_version(None, None),
                                          "gone": saver.get_next_version(None, None)}
        stored = await saver.aput(_config(thread), checkpoint, {"source": "input", "step": -1, "parents": {}},
                                  {"a": checkpoint["channel_versions"]["a"], "gone": checkpoint["channel_versions"]["gone"]})
        await saver.aput_writes(stored, [("x", 1), ("__interrupt__", "why"), ("y", 2)], "task-1", "~path")
        return checkpoint, stored, await saver.aget_tuple(_config(thread))

    first = len(spindle.saver_frames)
    checkpoint, stored, found = asyncio.run(_with_saver(spindle, body, job="job-frames", attempt=2))
    frames = spindle.saver_frames[first:]
    assert {(f["job"], f["attempt"]) for f in frames} == {("job-frames", 2)}
    put = next(f for f in frames if f["op"] == "put")["args"]
    assert "channel_values" not in put["checkpoint"]
    assert put["parent_checkpoint_id"] is None and put["checkpoint_id"] == checkpoint["id"]
    assert [b["channel"] for b in put["blobs"]] == ["a", "gone"]  # new_versions only
    assert put["blobs"][1]["value"] is None  # in new_versions, not in channel_values
    typed = put["blobs"][0]["value"]
    assert typed["type"] == "msgpack" and base64.b64decode(typed["data"])
    writes = next(f for f in frames if f["op"] == "put_writes")["args"]
    assert (writes["task_id"], writes["task_path"]) == ("task-1", "~path")
    assert [(w["idx"], w["channel"]) for w in writes["writes"]] == [(0, "x"), (-3, "__interrupt__"), (2, "y")]
    # Read back: channel_values from the blobs of channel_versions, pending writes decoded.
    assert stored == _config(thread, checkpoint["id"])
    assert found.config == _config(thread, checkpoint["id"])
    assert found.checkpoint["channel_values"] == {"a": "kept"}  # b was not in new_versions
    assert sorted(found.pending_writes) == [("task-1", "__interrupt__", "why"), ("task-1", "x", 1), ("task-1", "y", 2)]
    assert found.parent_config is None


def test_versions_are_increasing_strings():
    saver = SpindleSaver(lambda op, args: None)
    v1 = saver.get_next_version(None, None)
    v2 = saver.get_next_version(v1, None)
    assert v1.startswith("0" * 31 + "1.") and v2.startswith("0" * 31 + "2.") and v1 < v2
    assert saver.get_next_version(7, None).startswith("0" * 30 + "08.")


def test_sync_methods_say_async_only():
    saver = SpindleSaver(lambda op, args: None)
    for call in (lambda: saver.get_tuple(_config("t")), lambda: saver.list(_config("t")),
                 lambda: saver.put(_config("t"), empty_checkpoint(), {}, {}),
                 lambda: saver.put_writes(_config("t", "c"), [], "task")):
        with pytest.raises(NotImplementedError, match="async-only"):
            call()


def test_an_error_answer_raises_with_the_servers_message(spindle):
    async def body(make):
        saver = make()
        checkpoint = empty_checkpoint()
        # The fake store refuses a checkpoint sent with its channel values; make the saver send one.
        saver_put = saver._call

        async def with_values(op, args):
            if op == "put":
                args = {**args, "checkpoint": {**args["checkpoint"], "channel_values": {}}}
            return await saver_put(op, args)

        saver._call = with_values
        with pytest.raises(SaverError, match="a checkpoint is sent without channel_values") as e:
            await saver.aput(_config("thread-err"), checkpoint, {}, {})
        return e.value.code

    assert asyncio.run(_with_saver(spindle, body)) == "invalid"
