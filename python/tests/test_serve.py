"""`spindle-worker serve` end to end: the real command, in a subprocess, against a fake Spindle.

One worker process serves tests/graphs/runs.json for the whole module (the runs are on threads
of their own); the tests send `run` / `cancel` frames and assert the frames that come back.
Waiting is always on a frame (with a timeout that fails the test), never a sleep.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import GRAPHS
from fake_spindle import FakeSpindle

RUNS = GRAPHS / "runs.json"
HI = {"messages": [{"type": "human", "content": "hi"}]}


def project_of(tmp_path, *graph_ids: str):
    """A langgraph.json of a few of runs.json's graphs (a worker describing fewer starts sooner)."""
    graphs = json.loads(RUNS.read_text())["graphs"]
    path = tmp_path / "langgraph.json"
    path.write_text(json.dumps({"graphs": {g: str(GRAPHS / graphs[g]) for g in graph_ids}}))
    return path


def start_worker(spindle: FakeSpindle, *extra: str, token: str | None = None, config=RUNS) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spindle_worker", "serve", str(config), "--url", spindle.url,
                             "--token", token or spindle.token, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def served():
    with FakeSpindle() as spindle:
        worker = start_worker(spindle, "--name", "test-worker", "--concurrency", "8")
        try:
            spindle.hello = spindle.wait_connected()
            yield spindle
        finally:
            worker.terminate()
            worker.communicate(timeout=30)


def parts(frames):
    return [p for f in frames if f["type"] == "events" for p in f["events"]]


def states(frames):
    return [f["snapshot"] for f in frames if f["type"] == "state"]


def test_hello_names_the_worker_and_describes_its_graphs(served):
    hello = served.hello
    assert (hello["type"], hello["worker"], hello["concurrency"]) == ("hello", "test-worker", 8)
    assert isinstance(hello["pid"], int)
    assert set(hello["versions"]) == {"python", "langgraph", "langgraph_checkpoint", "spindle_worker"}
    graphs = {g["graph_id"]: g for g in hello["graphs"]}
    assert list(graphs) == ["echo", "stream", "hitl", "boom", "slow", "sub", "factory_cfg", "ctx",
                            "many", "flaky", "sleepy"]
    assert set(graphs["echo"]) == {"graph_id", "assistant_id", "name", "description", "factory", "schemas",
                                   "graph", "graph_xray"}
    assert graphs["factory_cfg"]["factory"] is True
    assert graphs["sub"]["assistant_id"] == "98812fd3-422f-502b-8c4e-fc3ed34d5061"  # as langgraph dev says


def test_a_message_graph_streams_updates_and_messages_and_states(served):
    job = served.run("echo", input=HI, stream_mode=["values", "updates", "messages-tuple"])
    frames = served.frames_until_done(job)
    assert {(f["job"], f["attempt"]) for f in frames} == {(job, 1)}
    names = [name for name, _ in parts(frames)]
    assert names == ["values", "messages", "updates", "values"]  # the graph's own values parts
    assert [m["content"] for m in parts(frames)[3][1]["messages"]] == ["hi", "echo: hi"]
    message, metadata = parts(frames)[1][1]
    assert message == {"content": "echo: hi", "additional_kwargs": {}, "response_metadata": {}, "type": "ai",
                       "name": None, "id": "echo-1", "tool_calls": [], "invalid_tool_calls": [], "usage_metadata": None}
    assert (metadata["run_id"], metadata["langgraph_node"], metadata["graph_id"]) == (job, "echo", "echo")
    assert parts(frames)[2][1] == {"echo": {"messages": [message]}}
    snaps = states(frames)
    assert [(s["metadata"]["source"], s["metadata"]["step"], s["next"]) for s in snaps] == [
        ("input", -1, ["__start__"]), ("loop", 0, ["echo"]), ("loop", 1, [])]
    assert all(s["metadata"]["run_id"] == job for s in snaps)  # as stored: the run's metadata merged in
    assert [s["parent_checkpoint_id"] for s in snaps] == [None] + [s["checkpoint_id"] for s in snaps[:-1]]
    assert snaps[1]["tasks"] == [{"id": snaps[1]["tasks"][0]["id"], "name": "echo", "path": None, "error": None,
                                  "interrupts": [], "checkpoint": None, "state": None, "result": None}]
    done = frames[-1]
    assert (done["status"], done["error"]) == ("success", None)
    final = done["snapshot"]
    assert final["checkpoint_id"] == snaps[-1]["checkpoint_id"]
    assert [m["content"] for m in final["values"]["messages"]] == ["hi", "echo: hi"]
    assert (final["next"], final["tasks"], final["interrupts"]) == ([], [], [])
    # The checkpoints went through the saver, with this job's id and attempt, each put before its state.
    puts = [f for f in served.saver_frames if f["job"] == job and f["op"] == "put"]
    assert [p["args"]["checkpoint_id"] for p in puts] == [s["checkpoint_id"] for s in snaps]
    order = [(f["type"], f.get("op"), (f.get("args") or f.get("snapshot") or {}).get("checkpoint_id"))
             for f in served.sequence if f["job"] == job and f["type"] in ("saver", "state")]
    for snap in snaps:
        assert order.index(("saver", "put", snap["checkpoint_id"])) < order.index(("state", None, snap["checkpoint_id"]))


def test_a_chat_model_streams_tokens_and_custom_events_in_order(served):
    job = served.run("stream", input=HI, stream_mode=["messages-tuple", "custom"])
    frames = served.frames_until_done(job)
    got = parts(frames)
    assert [name for name, _ in got] == ["custom"] + ["messages"] * 5 + ["custom"]
    assert got[0][1] == {"progress": "before"} and got[-1][1] == {"progress": "after"}
    chunks = [data[0] for name, data in got if name == "messages"]
    assert [c["content"] for c in chunks] == ["tok1", " ", "tok2", " ", "tok3"]
    assert {c["type"] for c in chunks} == {"AIMessageChunk"}
    assert [c["chunk_position"] for c in chunks] == [None] * 4 + ["last"]
    assert got[1][1][1]["ls_provider"] == "genericfakechatmodel"
    assert all(len(f["events"]) <= 256 for f in frames if f["type"] == "events")
    assert frames[-1]["status"] == "success"
    assert frames[-1]["snapshot"]["values"]["messages"][-1]["content"] == "tok1 tok2 tok3"


def test_parts_ready_together_leave_together_in_frames_of_at_most_256(served):
    frames = served.frames_until_done(served.run("many", input={"x": 600}, stream_mode=["custom"]))
    sizes = [len(f["events"]) for f in frames if f["type"] == "events"]
    assert [data for _, data in parts(frames)] == list(range(600))  # all, in order
    assert max(sizes) == 256 and len(sizes) < 600  # batched (measured: 256, 256, 88)


def test_subgraph_parts_are_named_with_their_namespace(served):
    job = served.run("sub", input={"x": 1}, stream_mode=["updates", "values"], subgraphs=True)
    frames = served.frames_until_done(job)
    got = parts(frames)
    names = [name.split(":")[0] for name, _ in got]
    assert names == ["values", "updates", "values", "values|child", "updates|child", "values|child", "updates|child",
                     "values|child", "updates", "values"]
    assert [data for name, data in got if name.startswith("updates|child:")] == [{"inner_a": {"x": 2}},
                                                                               {"inner_b": {"x": 4}}]
    child_ns = {name.split("|", 1)[1] for name, _ in got if "|" in name}
    assert len(child_ns) == 1
    # Only root checkpoints are states; the one before `child` points at the subgraph's namespace.
    snaps = states(frames)
    assert [s["next"] for s in snaps] == [["__start__"], ["pre"], ["child"], []]
    assert snaps[2]["tasks"][0]["checkpoint"]["checkpoint_ns"] == child_ns.pop()
    assert frames[-1]["snapshot"]["values"] == {"x": 4}


def test_interrupt_then_resume_with_a_command(served):
    thread = "20000000-0000-4000-8000-000000000001"
    job = served.run("hitl", thread_id=thread, input={"text": "t"}, stream_mode=["updates"])
    frames = served.frames_until_done(job)
    asked = {"question": "approve?", "text": "t"}
    [[name, data]] = parts(frames)
    assert name == "updates" and data["__interrupt__"][0]["value"] == asked
    done = frames[-1]
    assert done["status"] == "interrupted"
    [interrupt] = done["snapshot"]["interrupts"]
    assert interrupt == {"id": data["__interrupt__"][0]["id"], "value": asked}
    assert done["snapshot"]["next"] == ["ask"]
    assert done["snapshot"]["tasks"][0]["interrupts"] == [interrupt]
    assert done["snapshot"]["tasks"][0]["path"] == ["__pregel_pull", "ask"]

    job = served.run("hitl", thread_id=thread, command={"resume": "yes"}, stream_mode=["updates"])
    frames = served.frames_until_done(job)
    assert [name for name, _ in parts(frames)] == ["updates", "updates"]
    done = frames[-1]
    assert done["status"] == "success"
    assert done["snapshot"]["values"] == {"text": "t (yes)", "answer": "yes"}
    assert done["snapshot"]["interrupts"] == []


def test_a_command_updates_and_goes_to_a_node(served):
    thread = "20000000-0000-4000-8000-000000000004"
    assert served.frames_until_done(served.run("sub", thread_id=thread, input={"x": 1}))[-1]["snapshot"]["values"] == {"x": 4}
    job = served.run("sub", thread_id=thread, command={"update": [["x", 10]], "goto": "child"}, stream_mode=["updates"])
    frames = served.frames_until_done(job)
    assert frames[-1]["status"] == "success"
    assert parts(frames) == [["updates", {"child": {"x": 22}}]]  # child ran on the updated x, pre did not
    assert frames[-1]["snapshot"]["values"] == {"x": 22}


def test_a_graph_that_raises_ends_in_error(served):
    frames = served.frames_until_done(served.run("boom", input={"x": 1}))
    done = frames[-1]
    assert (done["status"], done["error"]) == ("error", {"error": "ValueError", "message": "boom requested"})
    # The state after the failure, as LangGraph's server shows it: the node still next, its error on the task.
    assert done["snapshot"]["next"] == ["boom"]
    assert done["snapshot"]["tasks"][0]["error"] == "ValueError('boom requested')"


def test_a_cancelled_run_answers_cancelled(served):
    job = served.run("slow", input={"x": 1}, stream_mode=["custom"])
    while True:  # the node says it has started, then waits for the cancel
        frame = served.next_frame(job)
        if frame["type"] == "events":
            assert frame["events"] == [["custom", {"started": True}]]
            break
    served.send({"type": "cancel", "job": job, "action": "interrupt"})
    frames = served.frames_until_done(job)
    assert (frames[-1]["status"], frames[-1]["error"]) == ("cancelled", None)


def test_a_bad_frame_is_ignored_and_the_worker_serves_on(served):
    served.send({"type": "what"})
    served.send({"type": "run"})  # no job
    served.send({"type": "cancel", "job": "not-running"})
    frames = served.frames_until_done(served.run("echo", input=HI))
    assert frames[-1]["status"] == "success"


def test_an_unknown_graph_is_an_error(served):
    frames = served.frames_until_done(served.run("nope", input={}))
    assert frames == [frames[-1]]
    assert frames[-1]["error"]["error"] == "ValueError"
    assert "'nope' is not served by this worker" in frames[-1]["error"]["message"]


def test_events_mode_streams_astream_events_as_langgraph_dev_does(served):
    job = served.run("sub", input={"x": 1}, stream_mode=["events", "updates"], subgraphs=True)
    frames = served.frames_until_done(job)
    got = [(name.split(":")[0], data["event"] + " " + data["name"] if name == "events" else None)
           for name, data in parts(frames)]
    # The sequence `langgraph dev` (langgraph-api 0.16.7, langgraph 1.2.24) streamed for this run.
    assert got == [
        ("events", "on_chain_start sub"), ("events", "on_chain_start pre"), ("events", "on_chain_stream pre"),
        ("events", "on_chain_end pre"), ("updates", None), ("events", "on_chain_start child"),
        ("events", "on_chain_start LangGraph"), ("events", "on_chain_start inner_a"),
        ("events", "on_chain_stream inner_a"), ("events", "on_chain_end inner_a"),
        ("events", "on_chain_start inner_b"), ("updates|child", None), ("events", "on_chain_stream inner_b"),
        ("events", "on_chain_end inner_b"), ("updates|child", None), ("events", "on_chain_end LangGraph"),
        ("events", "on_chain_stream child"), ("events", "on_chain_end child"), ("updates", None),
        ("events", "on_chain_end sub")]
    first = parts(frames)[0][1]
    assert list(first) == ["event", "data", "name", "tags", "run_id", "metadata", "parent_ids"]
    assert (first["run_id"], first["parent_ids"], first["data"]) == (job, [], {"input": {"x": 1}})
    assert frames[-1]["status"] == "success" and len(states(frames)) == 4


def test_interrupt_before_a_node_stops_there(served):
    frames = served.frames_until_done(served.run("sub", input={"x": 1}, interrupt_before=["child"]))
    done = frames[-1]
    assert (done["status"], done["snapshot"]["next"], done["snapshot"]["interrupts"]) == ("interrupted", ["child"], [])
    [task] = done["snapshot"]["tasks"]
    assert (task["name"], task["path"], task["checkpoint"]["checkpoint_ns"]) == (
        "child", ["__pregel_pull", "child"], f"child:{task['id']}")


def test_a_retried_attempt_resumes_instead_of_applying_its_input_again(served):
    thread = "20000000-0000-4000-8000-000000000002"
    job = served.run("echo", thread_id=thread, input=HI)
    assert served.frames_until_done(job)[-1]["status"] == "success"
    # The same run again (its worker "died" after the last checkpoint): attempt 2.
    served.job_queue(job).queue.clear()
    served.run("echo", thread_id=thread, input=HI, job=job, attempt=2)
    frames = served.frames_until_done(job)
    assert {f["attempt"] for f in frames} == {2}
    done = frames[-1]
    assert done["status"] == "success"
    assert [m["content"] for m in done["snapshot"]["values"]["messages"]] == ["hi", "echo: hi"]  # not twice
    assert {f["attempt"] for f in served.saver_frames if f["job"] == job} == {1, 2}


def test_the_client_asked_checkpoints_are_parts_too(served):
    frames = served.frames_until_done(served.run("echo", input=HI, stream_mode=["checkpoints"]))
    cps = [data for name, data in parts(frames) if name == "checkpoints"]
    snaps = states(frames)
    assert len(cps) == len(snaps) == 3
    assert [c["config"]["configurable"]["checkpoint_id"] for c in cps] == [s["checkpoint_id"] for s in snaps]
    assert set(cps[0]) >= {"config", "parent_config", "values", "metadata", "next", "tasks"}


def test_a_fork_runs_from_the_given_checkpoint(served):
    thread = "20000000-0000-4000-8000-000000000003"
    first = served.frames_until_done(served.run("echo", thread_id=thread, input=HI))
    fork_from = states(first)[0]["checkpoint_id"]  # before the input was applied
    frames = served.frames_until_done(served.run("echo", thread_id=thread, checkpoint_id=fork_from,
                                                 input={"messages": [{"type": "human", "content": "again"}]}))
    done = frames[-1]
    assert done["status"] == "success"
    assert [m["content"] for m in done["snapshot"]["values"]["messages"]] == ["again", "echo: again"]
    assert states(frames)[0]["parent_checkpoint_id"] == fork_from


def test_the_context_reaches_the_graph_and_a_factory_is_called_per_run(served):
    frames = served.frames_until_done(served.run("ctx", input={"x": 0}, context={"model": "four"}))
    assert (frames[-1]["status"], frames[-1]["snapshot"]["values"]) == ("success", {"x": 4})
    frames = served.frames_until_done(served.run("factory_cfg", input={"seen": ""}, stream_mode=["updates"]))
    assert parts(frames) == [["updates", {"tag": {"seen": "cfg"}}]]
    assert frames[-1]["snapshot"]["values"] == {"seen": "cfg"}


def test_a_run_whose_worker_was_killed_resumes_on_the_next_worker_from_its_checkpoint(tmp_path):
    project = project_of(tmp_path, "flaky")
    with FakeSpindle() as spindle:
        first = start_worker(spindle, config=project)
        try:
            spindle.wait_connected()
            thread = "20000000-0000-4000-8000-000000000009"
            job = spindle.run("flaky", thread_id=thread, input={"n": 1, "trail": ["input"]}, stream_mode=["custom"])
            while spindle.next_frame(job)["type"] != "events":
                pass  # states, until `second` says it hangs
            first.kill()  # kill -9: no done, no goodbye
            first.communicate(timeout=30)
            second = start_worker(spindle, config=project)
            try:
                spindle.wait_connected()
                spindle.run("flaky", thread_id=thread, input={"n": 1, "trail": ["input"]}, job=job, attempt=2,
                            stream_mode=["updates"])
                frames = spindle.frames_until_done(job)
            finally:
                second.terminate()
                second.communicate(timeout=30)
        finally:
            first.kill()
    done = frames[-1]
    assert (done["attempt"], done["status"]) == (2, "success")
    # The input and `first` were applied once: attempt 2 went on from attempt 1's last checkpoint.
    assert done["snapshot"]["values"] == {"n": 111, "trail": ["input", "first", "second"]}
    assert parts(frames) == [["updates", {"second": {"n": 100, "trail": ["second"]}}]]
    assert done["snapshot"]["metadata"]["run_attempt"] == 2 and done["snapshot"]["metadata"]["run_id"] == job


# --- the process: exits and their one line ----------------------------------------------------


def test_a_lost_connection_ends_the_worker_with_status_1_even_in_a_sync_node(tmp_path):
    with FakeSpindle() as spindle:
        worker = start_worker(spindle, "--connect-timeout", "30", config=project_of(tmp_path, "sleepy"))
        try:
            spindle.wait_connected()
            job = spindle.run("sleepy", input={"x": 0}, stream_mode=["custom"])
            while spindle.next_frame(job)["type"] != "events":
                pass  # until the node, in its thread, says it dozes (for 60 s)
            spindle.close_connection(1001, "restarting")
            _, stderr = worker.communicate(timeout=30)  # well before the node would end
        finally:
            worker.kill()
    assert worker.returncode == 1
    assert stderr.strip().splitlines()[-1] == (
        f"error: the connection to Spindle at {spindle.url} closed (close 1001: restarting); in-flight jobs are abandoned")
    assert "Traceback" not in stderr and "never retrieved" not in stderr


@pytest.mark.parametrize("case", ["bad-token", "refused-hello", "unreachable", "no-token", "load-error"])
def test_start_failures_are_one_line_and_exit_2(case, tmp_path):
    env = None
    with FakeSpindle(reject_hello="graph 'echo' is served by another version" if case == "refused-hello" else None) as spindle:
        url = spindle.url
        args = ["--url", url, "--token", "wrong" if case == "bad-token" else spindle.token]
        config = project_of(tmp_path, "echo")
        if case == "unreachable":
            url = "ws://127.0.0.1:1/workers/connect"
            args = ["--url", url, "--token", "t", "--connect-timeout", "0.3"]
        elif case == "no-token":
            args = ["--url", url]
            env = {k: v for k, v in __import__("os").environ.items() if k != "SPINDLE_WORKER_TOKEN"}
        elif case == "load-error":
            config = GRAPHS / "bad" / "raises.json"
        result = subprocess.run([sys.executable, "-m", "spindle_worker", "serve", str(config), *args],
                                capture_output=True, text=True, timeout=60, env=env)
    expected = {
        "bad-token": f"error: cannot reach Spindle at {url}: HTTP 401 Unauthorized",
        "refused-hello": "error: Spindle refused the worker (close 4400): graph 'echo' is served by another version",
        "unreachable": f"error: cannot reach Spindle at {url}: ",
        "no-token": "error: no worker token: pass --token or set SPINDLE_WORKER_TOKEN",
        "load-error": "error: Failed to load graph 'raises' from ./raises.py: RuntimeError: import-time failure in user graph",
    }[case]
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr
