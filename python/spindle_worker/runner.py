"""One job: a run of a graph, streamed to Spindle (docs/workers.md, "A run").

The graph is opened as LangGraph's server opens it for a run (a factory is called now, with the
run's config), its checkpointer replaced by a `SpindleSaver` of the job, and run with
`astream(input | Command, config, context=..., stream_mode=[asked modes, "checkpoints"],
subgraphs=..., interrupt_before=..., interrupt_after=...)`. Each part becomes `[name, data]`:
the mode, `|<namespace>` for a subgraph's part (with `events` asked, `astream_events(version="v2")`
is called instead: the root run's on_chain_stream chunks are those parts, every other event is an
`events` part). Every part the client asked for is sent, root `values` included (LangGraph decides
when values are streamed; Spindle commits states without values events of its own); root
`checkpoints` parts become `state` frames (and parts
too when the client asked for `checkpoints`). Parts leave in `events` frames of up to 256, as
soon as the frame before has been sent. `done` ends the job.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import uuid
from typing import Any

from spindle_worker.saver import SpindleSaver, stored_metadata
from spindle_worker.serde import to_json

MAX_PARTS_PER_FRAME = 256


class Outbox:
    """A job's frames in order: parts batched into `events` frames, `state` frames between them."""

    def __init__(self, worker, job: str, attempt: int):
        self.worker, self.job, self.attempt = worker, job, attempt
        self._stored: set[str] = set()
        self._items: collections.deque = collections.deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._task = asyncio.create_task(self._run(), name=f"outbox {job}")

    def part(self, name: str, data: Any) -> None:
        self._items.append(("part", [name, data]))
        self._wake.set()

    def state(self, snapshot: dict) -> None:
        self._items.append(("state", snapshot))
        self._wake.set()

    def stored(self, checkpoint_id: str) -> None:
        """The saver's put of this checkpoint was answered: its state frame may leave."""
        self._stored.add(checkpoint_id)
        self._wake.set()

    async def _run(self) -> None:
        items = self._items
        while True:
            while not items:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
            kind, value = items[0]
            if kind == "state":
                # A state leaves after Spindle has stored the graph's checkpoint (LangGraph puts
                # checkpoints in the background, so the part can come first); the frames behind it
                # wait with it. At the end (flush), a state whose put was never answered (it failed,
                # or the run was cancelled first) is dropped: there is no such checkpoint to be a
                # state of. (LangGraph's loop awaits its puts before astream ends.)
                while value["checkpoint_id"] not in self._stored and not self._closed:
                    self._wake.clear()
                    await self._wake.wait()
                items.popleft()
                if value["checkpoint_id"] in self._stored:
                    await self.worker.send({"type": "state", "job": self.job, "attempt": self.attempt,
                                            "snapshot": value})
                continue
            items.popleft()
            batch = [value]
            while items and items[0][0] == "part" and len(batch) < MAX_PARTS_PER_FRAME:
                batch.append(items.popleft()[1])
            await self.worker.send({"type": "events", "job": self.job, "attempt": self.attempt, "events": batch})

    async def flush(self) -> None:
        """Send everything queued, then stop."""
        self._closed = True
        self._wake.set()
        await asyncio.shield(self._task)

    def abandon(self) -> None:
        self._task.cancel()
        if self._task.done() and not self._task.cancelled():
            self._task.exception()  # retrieved: a send that failed with the connection says nothing more


# --- snapshots -----------------------------------------------------------------------------


def _checkpoint_id(config: Any) -> str | None:
    return ((config or {}).get("configurable") or {}).get("checkpoint_id")


def _interrupts(values: Any) -> list:
    out = []
    for i in values or ():
        if isinstance(i, dict):
            out.append({"id": i.get("id"), "value": to_json(i.get("value"))})
        else:
            out.append({"id": getattr(i, "id", None), "value": to_json(getattr(i, "value", None))})
    return out


def _task(t: Any) -> dict:
    """A task as LangGraph's server shows it: id, name, path, error, interrupts, checkpoint, state, result.

    `path` is known for a StateSnapshot's tasks only (a checkpoints part's tasks have none: null).
    """
    get = t.get if isinstance(t, dict) else (lambda k, default=None: getattr(t, k, default))
    state = get("state")
    checkpoint = None
    if isinstance(state, dict) and "configurable" in state:  # a subgraph's config: where its state is
        checkpoint = {k: v for k, v in state["configurable"].items() if not k.startswith("__")}
        state = None
    error = get("error")
    return {
        "id": get("id"),
        "name": get("name"),
        "path": None if get("path") is None else to_json(get("path")),
        "error": None if error is None else (error if isinstance(error, str) else repr(error)),
        "interrupts": _interrupts(get("interrupts")),
        "checkpoint": checkpoint,
        "state": None if state is None else to_json(state),
        "result": to_json(get("result")),
    }


def snapshot_of_checkpoint_part(data: dict, run_config: dict | None = None) -> dict:
    """A root `checkpoints` part as the `state` frame's snapshot.

    The part's metadata is the loop's (source, step, parents); with `run_config` it is completed
    as the checkpointer stored it (the run's metadata: run_id, graph_id, ...), so a state frame
    and a later read of the same checkpoint agree.
    """
    tasks = [_task(t) for t in data.get("tasks") or ()]
    metadata = data.get("metadata") or {}
    if run_config is not None:
        metadata = stored_metadata(run_config, metadata)
    return {
        "checkpoint_id": _checkpoint_id(data.get("config")),
        "parent_checkpoint_id": _checkpoint_id(data.get("parent_config")),
        "values": to_json(data.get("values")),
        "metadata": to_json(metadata),
        "next": list(data.get("next") or ()),
        "tasks": tasks,
        "interrupts": [i for t in tasks for i in t["interrupts"]],
    }


def snapshot_of_state(state: Any) -> dict:
    """`graph.aget_state(...)`'s StateSnapshot in the same shape."""
    tasks = [_task(t) for t in state.tasks or ()]
    interrupts = getattr(state, "interrupts", None)
    return {
        "checkpoint_id": _checkpoint_id(state.config),
        "parent_checkpoint_id": _checkpoint_id(state.parent_config),
        "values": to_json(state.values),
        "metadata": to_json(state.metadata),
        "next": list(state.next or ()),
        "tasks": tasks,
        "interrupts": _interrupts(interrupts) if interrupts is not None else [i for t in tasks for i in t["interrupts"]],
    }


# --- the run -------------------------------------------------------------------------------


def _stream_modes(asked: Any) -> list[str]:
    modes = [asked] if isinstance(asked, str) else list(asked or ["values"])
    out: list[str] = []
    for mode in modes:
        mode = "messages" if mode == "messages-tuple" else mode
        if mode not in out:
            out.append(mode)
    return out


def _part_data(mode: str, data: Any) -> Any:
    if mode == "messages" and isinstance(data, tuple) and len(data) == 2:
        message, metadata = data
        return [to_json(message), to_json(metadata)]
    return to_json(data)


def command_of(command: dict):
    """The run's `command` {resume, update, goto} as a LangGraph Command, as the API takes it:
    a `goto` of `{"node", "input"}` objects is Sends, an `update` given as pairs is tuples."""
    from langgraph.types import Command, Send

    kwargs = dict(command)
    goto = kwargs.get("goto")
    if goto is not None:
        targets = goto if isinstance(goto, list) else [goto]
        targets = [Send(t["node"], t.get("input")) if isinstance(t, dict) else t for t in targets]
        kwargs["goto"] = targets if isinstance(goto, list) else targets[0]
    update = kwargs.get("update")
    if isinstance(update, list):
        kwargs["update"] = [tuple(pair) for pair in update]
    return Command(**kwargs)


def _run_config(frame: dict) -> dict:
    config = dict(frame.get("config") or {})
    config["metadata"] = {**(config.get("metadata") or {}), **(frame.get("metadata") or {})}
    config["metadata"].setdefault("run_attempt", int(frame.get("attempt") or 1))  # as LangGraph's server
    configurable = dict(config.get("configurable") or {})
    configurable["thread_id"] = frame.get("thread_id") or configurable.get("thread_id")
    configurable.setdefault("checkpoint_ns", "")
    if frame.get("checkpoint_id"):
        configurable["checkpoint_id"] = frame["checkpoint_id"]
    config["configurable"] = configurable
    return config


def _without_checkpoint_id(config: dict) -> dict:
    configurable = {k: v for k, v in config["configurable"].items() if k != "checkpoint_id"}
    return {**config, "configurable": configurable}


async def _execute(worker, frame: dict, outbox: Outbox) -> tuple[str, dict]:
    from spindle_worker.loader import open_graph

    graph_id = frame.get("graph_id")
    loaded = worker.graphs.get(graph_id)
    if loaded is None:
        served = ", ".join(sorted(worker.graphs)) or "none"
        raise ValueError(f"graph {graph_id!r} is not served by this worker (it serves: {served})")
    modes = _stream_modes(frame.get("stream_mode"))
    job, attempt = frame["job"], int(frame.get("attempt") or 1)
    config = _run_config(frame)
    thread_id = config["configurable"]["thread_id"]
    context = frame.get("context")

    async def call(op: str, args: dict) -> dict:
        return await worker.saver_call(job, attempt, op, args)

    saver = SpindleSaver(call, thread_id=thread_id, on_put=outbox.stored)
    run_id = config["metadata"].get("run_id", job)
    input_: Any = frame.get("input")
    if frame.get("command"):
        input_ = command_of(frame["command"])
    if attempt > 1:
        latest = await saver.aget_tuple(_without_checkpoint_id(config))
        if latest is not None and (latest.metadata or {}).get("run_id") == run_id:
            # This run already checkpointed: continue from there, do not apply its input again.
            input_, config = None, _without_checkpoint_id(config)

    client_modes = set(modes)
    call_modes = [m for m in modes if m != "events"] + (["checkpoints"] if "checkpoints" not in modes else [])
    if attempt == 1:
        # As LangGraph's server: the root run's id (on_chain_start's run_id in events) is the run's.
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            config["run_id"] = uuid.UUID(str(run_id))

    def on_part(part: Any) -> None:
        if len(part) == 3:
            ns, mode, data = part
        else:
            (mode, data), ns = part, ()
        if not ns and mode == "checkpoints":
            if "checkpoints" in client_modes:
                outbox.part("checkpoints", to_json(data))
            outbox.state(snapshot_of_checkpoint_part(data, config))
            return
        if mode not in client_modes:
            return
        name = mode if not ns else f"{mode}|{'|'.join(ns)}"
        outbox.part(name, _part_data(mode, data))

    async with open_graph(loaded, config, access_context="threads.create_run", context=context) as graph:
        graph = graph.copy(update={"checkpointer": saver})
        kwargs: dict[str, Any] = {"stream_mode": call_modes, "subgraphs": bool(frame.get("subgraphs"))}
        if frame.get("interrupt_before") is not None:
            kwargs["interrupt_before"] = frame["interrupt_before"]
        if frame.get("interrupt_after") is not None:
            kwargs["interrupt_after"] = frame["interrupt_after"]
        if context is not None and "context" in inspect.signature(graph.astream).parameters:
            kwargs["context"] = context
        try:
            await _stream(graph, input_, config, kwargs, client_modes, outbox, on_part)
        except Exception as e:
            # The thread's state after the failure (its task's error), when it can still be read.
            with contextlib.suppress(Exception):
                e._spindle_snapshot = snapshot_of_state(await graph.aget_state(_without_checkpoint_id(config)))
            raise
        state = await graph.aget_state(_without_checkpoint_id(config))
    snapshot = snapshot_of_state(state)
    status = "interrupted" if snapshot["next"] or snapshot["interrupts"] else "success"
    return status, snapshot


async def _stream(graph, input_, config, kwargs, client_modes, outbox, on_part) -> None:
    if "events" in client_modes:
        # The root run's on_chain_stream chunks are astream's parts; every other event is an
        # `events` part as it comes (but those LangSmith hides), as LangGraph's server streams them.
        async for event in graph.astream_events(input_, config, version="v2", **kwargs):
            if event.get("event") == "on_chain_stream" and not event.get("parent_ids"):
                on_part(event["data"]["chunk"])
            elif "langsmith:hidden" not in (event.get("tags") or ()):
                outbox.part("events", to_json(event))
    else:
        async for part in graph.astream(input_, config, **kwargs):
            on_part(part)


async def run_job(worker, frame: dict) -> None:
    """Run one `run` frame to its `done` frame. Cancelled by the connection's loss: no `done`."""
    job, attempt = frame["job"], int(frame.get("attempt") or 1)
    outbox = Outbox(worker, job, attempt)
    status, snapshot, error = "error", None, None
    try:
        status, snapshot = await _execute(worker, frame, outbox)
    except asyncio.CancelledError:
        if job not in worker.cancelled:
            outbox.abandon()
            raise
        status = "cancelled"
    except Exception as e:
        status, error = "error", {"error": type(e).__name__, "message": str(e)}
        snapshot = getattr(e, "_spindle_snapshot", None)
    done = {"type": "done", "job": job, "attempt": attempt, "status": status, "snapshot": snapshot, "error": error}
    for _ in range(2):
        try:
            await outbox.flush()
            await worker.send(done)
            return
        except asyncio.CancelledError:
            if job not in worker.cancelled:
                outbox.abandon()
                raise
            # A cancel that came after the run had ended: the run's own outcome stands; send it.
        except Exception:
            outbox.abandon()  # the connection is gone: the server retries the job elsewhere
            return


async def update_job(worker, frame: dict) -> None:
    """An `update_state` frame: `graph.aupdate_state(config, values, as_node)` with the job's
    saver, answered by `done` with the new state (docs/workers.md, "A state update")."""
    from spindle_worker.loader import open_graph

    job = frame["job"]
    status, snapshot, error = "error", None, None
    try:
        loaded = worker.graphs.get(frame.get("graph_id"))
        if loaded is None:
            raise ValueError(f"graph {frame.get('graph_id')!r} is not served by this worker")
        config = _run_config(frame)

        async def call(op: str, args: dict) -> dict:
            return await worker.saver_call(job, 1, op, args)

        saver = SpindleSaver(call, thread_id=config["configurable"]["thread_id"])
        async with open_graph(loaded, config, access_context="threads.update") as graph:
            graph = graph.copy(update={"checkpointer": saver})
            updated = await graph.aupdate_state(config, frame.get("values"), as_node=frame.get("as_node"))
            snapshot = snapshot_of_state(await graph.aget_state(updated))
            status = "success"
    except Exception as e:
        error = {"error": type(e).__name__, "message": str(e)}
    with contextlib.suppress(Exception):
        await worker.send({"type": "done", "job": job, "attempt": 1, "status": status,
                           "snapshot": snapshot, "error": error})
