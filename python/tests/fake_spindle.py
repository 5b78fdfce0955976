"""Test scaffolding: a small stand-in for Spindle's worker route, on 127.0.0.1 (port 0).

It runs a `websockets` server in a thread of its own (its own event loop), checks the bearer
token, answers `hello` with `welcome`, answers `saver` frames from `MemoryStore` (the store
semantics of docs/workers.md and docs/langgraph-workers.md §3/§4, kept small), and queues every
other frame per job for the test, which talks to it with plain blocking calls (each with a
timeout, so a broken worker fails the test instead of hanging it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import queue
import threading
from typing import Any

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

SPECIAL = {-1, -2, -3, -4}


class StoreError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class MemoryStore:
    """The saver ops over dicts: blobs insert-if-absent, keep-first writes, sorted pending writes."""

    def __init__(self):
        self.checkpoints: dict[tuple, dict[str, tuple]] = {}  # (thread, ns) -> id -> (checkpoint, metadata, parent)
        self.blobs: dict[tuple, Any] = {}  # (thread, ns, channel, version) -> typed or None
        self.writes: dict[tuple, dict[tuple, tuple]] = {}  # (thread, ns, id) -> (task, idx) -> (task, channel, typed, path)

    def handle(self, op: str, args: dict) -> dict:
        return getattr(self, f"op_{op}")(**args)

    def _tuple(self, thread, ns, cid) -> dict:
        checkpoint, metadata, parent = self.checkpoints[(thread, ns)][cid]
        values = {}
        for channel, version in checkpoint.get("channel_versions", {}).items():
            typed = self.blobs.get((thread, ns, channel, version))
            if typed is not None:
                values[channel] = typed
        writes = sorted(((path, task, idx), [task, channel, typed])
                        for (task, idx), (task, channel, typed, path) in self.writes.get((thread, ns, cid), {}).items())
        return {"checkpoint_ns": ns, "checkpoint_id": cid, "parent_checkpoint_id": parent, "checkpoint": checkpoint,
                "metadata": metadata, "channel_values": values, "pending_writes": [w for _, w in writes]}

    def op_get_tuple(self, thread_id, checkpoint_ns, checkpoint_id):
        ids = self.checkpoints.get((thread_id, checkpoint_ns), {})
        if checkpoint_id is None:
            checkpoint_id = max(ids, default=None)
        if checkpoint_id not in ids:
            return {"tuple": None}
        return {"tuple": self._tuple(thread_id, checkpoint_ns, checkpoint_id)}

    def op_list(self, thread_id, checkpoint_ns, filter, before, limit):
        found = []
        for (thread, ns), ids in self.checkpoints.items():
            if (thread_id is not None and thread != thread_id) or (checkpoint_ns is not None and ns != checkpoint_ns):
                continue
            for cid, (_, metadata, _) in ids.items():
                if before is not None and not cid < before:
                    continue
                if filter and any(metadata.get(k) != v for k, v in filter.items()):
                    continue
                found.append((cid, thread, ns))
        found.sort(reverse=True)
        if limit is not None:
            found = found[:limit]
        return {"tuples": [self._tuple(thread, ns, cid) for cid, thread, ns in found]}

    def op_put(self, thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata, blobs):
        if "channel_values" in checkpoint:
            raise StoreError("invalid", "a checkpoint is sent without channel_values")
        for blob in blobs:
            self.blobs.setdefault((thread_id, checkpoint_ns, blob["channel"], blob["version"]), blob["value"])
        self.checkpoints.setdefault((thread_id, checkpoint_ns), {})[checkpoint_id] = (checkpoint, metadata, parent_checkpoint_id)
        return {}

    def op_put_writes(self, thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, writes):
        stored = self.writes.setdefault((thread_id, checkpoint_ns, checkpoint_id), {})
        overwrite = all(w["idx"] in SPECIAL for w in writes)
        for w in writes:
            key = (task_id, w["idx"])
            if key in stored and not overwrite:
                continue
            stored[key] = (task_id, w["channel"], w["value"], task_path)
        return {}

    def op_delete_for_runs(self, run_ids):
        deleted = 0
        for (thread, ns), ids in self.checkpoints.items():
            for cid in [c for c, (_, metadata, _) in ids.items() if metadata.get("run_id") in run_ids]:
                del ids[cid]
                self.writes.pop((thread, ns, cid), None)
                deleted += 1
        return {"deleted": deleted}


class FakeSpindle:
    """The worker route on 127.0.0.1; frames of each job in a queue of their own."""

    def __init__(self, token: str = "test-token", *, reject_hello: str | None = None):
        self.token = token
        self.reject_hello = reject_hello
        self.store = MemoryStore()
        self.hellos: queue.Queue = queue.Queue()
        self.saver_frames: list[dict] = []
        self.sequence: list[dict] = []  # every frame after hello, in arrival order
        self._jobs: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._ws = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._ids = itertools.count(1)

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> "FakeSpindle":
        self._thread.start()
        self.port = self._call(self._start())
        self.url = f"ws://127.0.0.1:{self.port}/workers/connect"
        return self

    def __exit__(self, *exc) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _call(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start(self) -> int:
        self._server = await serve(self._handler, "127.0.0.1", 0, process_request=self._authorize)
        return self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _authorize(self, connection, request):
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return connection.respond(401, "Unauthorized\n")
        return None

    # --- the connection ------------------------------------------------------------------

    async def _handler(self, ws) -> None:
        hello = json.loads(await ws.recv())
        if self.reject_hello:
            self.hellos.put(hello)
            await ws.close(4400, self.reject_hello)
            return
        await ws.send(json.dumps({"type": "welcome", "worker_id": "w-test", "heartbeat_s": 10}))
        self._ws = ws  # the newest connection is the one `send` uses
        self.hellos.put(hello)
        try:
            await self._serve_frames(ws)
        except ConnectionClosed:
            pass  # the worker went away: the test sees it by its exit status

    async def _serve_frames(self, ws) -> None:
        async for message in ws:
            frame = json.loads(message)
            self.sequence.append(frame)
            if frame["type"] == "saver":
                self.saver_frames.append(frame)
                try:
                    answer = {"type": "saver_result", "id": frame["id"],
                              "result": self.store.handle(frame["op"], frame["args"])}
                except StoreError as e:
                    answer = {"type": "saver_result", "id": frame["id"], "error": {"code": e.code, "message": str(e)}}
                await ws.send(json.dumps(answer))
            else:
                self.job_queue(frame["job"]).put(frame)

    def job_queue(self, job: str) -> queue.Queue:
        with self._lock:
            return self._jobs.setdefault(job, queue.Queue())

    def wait_connected(self, timeout: float = 60) -> dict:
        """The next worker's hello, once it has been welcomed."""
        return self.hellos.get(timeout=timeout)

    def send(self, frame: dict) -> None:
        self._call(self._ws.send(json.dumps(frame)))

    def close_connection(self, code: int = 1001, reason: str = "going away") -> None:
        self._call(self._ws.close(code, reason))

    # --- runs ----------------------------------------------------------------------------

    def run(self, graph_id: str, *, thread_id: str | None = None, input: Any = None, command: Any = None,
            stream_mode: list | None = None, subgraphs: bool = False, attempt: int = 1, job: str | None = None,
            config: dict | None = None, context: Any = None, interrupt_before=None, interrupt_after=None,
            checkpoint_id: str | None = None) -> str:
        n = next(self._ids)
        job = job or f"00000000-0000-4000-8000-{n:012d}"
        thread_id = thread_id or f"10000000-0000-4000-8000-{n:012d}"
        config = dict(config or {})
        config["configurable"] = {**(config.get("configurable") or {}), "thread_id": thread_id, "checkpoint_ns": ""}
        self.send({"type": "run", "job": job, "attempt": attempt, "thread_id": thread_id,
                   "assistant_id": f"assistant-of-{graph_id}", "graph_id": graph_id, "input": input,
                   "command": command, "config": config, "context": context,
                   "stream_mode": stream_mode or ["values"], "subgraphs": subgraphs,
                   "interrupt_before": interrupt_before, "interrupt_after": interrupt_after,
                   "checkpoint_id": checkpoint_id,
                   "metadata": {"run_id": job, "thread_id": thread_id, "graph_id": graph_id,
                                "assistant_id": f"assistant-of-{graph_id}"}})
        return job

    def next_frame(self, job: str, timeout: float = 60) -> dict:
        return self.job_queue(job).get(timeout=timeout)

    def frames_until_done(self, job: str, timeout: float = 60) -> list[dict]:
        frames = []
        while True:
            frame = self.next_frame(job, timeout)
            frames.append(frame)
            if frame["type"] == "done":
                return frames
