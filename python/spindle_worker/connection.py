"""The worker's WebSocket connection to Spindle (docs/workers.md, "Connection" and "Frames").

`connect` opens the connection (retrying the first connect with backoff for up to 30 s), sends
`hello` and waits for `welcome`. `Worker.serve` then reads frames until the connection closes:
`run` starts a task per job (runner.run_job), `cancel` cancels the job's task, `saver_result`
resolves the waiting checkpointer call. Every frame the worker sends goes through one lock, so
frames leave in the order they were sent and are never interleaved.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import socket
import sys
import time
from typing import Any

from spindle_worker import __version__
from spindle_worker.saver import SaverError
from spindle_worker.serde import dumps_text

DEFAULT_URL = "ws://127.0.0.1:8123/workers/connect"
DEFAULT_CONCURRENCY = 64
CONNECT_WINDOW_S = 30.0


class WorkerExit(Exception):
    """The worker must stop: `code` is the exit status, `message` the one stderr line."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def versions() -> dict:
    from importlib import metadata

    def version_of(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "langgraph": version_of("langgraph"),
            "langgraph_checkpoint": version_of("langgraph-checkpoint"), "spindle_worker": __version__}


def default_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _reason(e: BaseException) -> str:
    from websockets.exceptions import InvalidStatus

    if isinstance(e, InvalidStatus):
        return f"HTTP {e.response.status_code} {e.response.reason_phrase}".rstrip()
    text = str(e) or type(e).__name__
    return text


async def _open(url: str, token: str, window_s: float):
    """The WebSocket, connected within `window_s` (retrying with backoff), or WorkerExit(2)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, InvalidURI

    deadline = time.monotonic() + window_s
    delay = 0.1
    while True:
        try:
            return await connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                 max_size=None, open_timeout=min(10.0, max(window_s, 0.1)))
        except InvalidURI as e:
            raise WorkerExit(2, f"cannot reach Spindle at {url}: {e}") from None
        except InvalidStatus as e:
            # A refused token or a wrong path does not mend with time: no retry.
            if e.response.status_code in (401, 403, 404):
                raise WorkerExit(2, f"cannot reach Spindle at {url}: {_reason(e)}") from None
            error: BaseException = e
        except Exception as e:  # refused, unreachable, a failed handshake: retried
            error = e
        left = deadline - time.monotonic()
        if left <= 0:
            raise WorkerExit(2, f"cannot reach Spindle at {url}: {_reason(error)}")
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, 2.0)


class Worker:
    """One connection: the writer lock, the jobs it runs and its pending checkpointer calls."""

    def __init__(self, ws, graphs: dict, *, name: str, concurrency: int = DEFAULT_CONCURRENCY,
                 describe_entries: list | None = None):
        self.ws = ws
        self.graphs = graphs
        self.name = name
        self.concurrency = concurrency
        self.describe_entries = describe_entries or []
        self.worker_id: str | None = None
        self.jobs: dict[str, asyncio.Task] = {}
        self.cancelled: dict[str, str] = {}  # job -> the cancel's action
        self._send_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._calls: dict[int, tuple[str, asyncio.Future]] = {}
        self._closed: BaseException | None = None

    # --- sending -----------------------------------------------------------------------

    async def send(self, frame: dict) -> None:
        text = dumps_text(frame)
        async with self._send_lock:
            await self.ws.send(text)

    async def saver_call(self, job: str, attempt: int, op: str, args: dict) -> dict:
        """One checkpointer call: a `saver` frame, then its `saver_result`'s result (or SaverError)."""
        if self._closed is not None:
            raise ConnectionError(f"the connection to Spindle is closed: {self._closed}")
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._calls[call_id] = (op, future)
        try:
            await self.send({"type": "saver", "id": call_id, "job": job, "attempt": attempt, "op": op, "args": args})
            answer = await future
        finally:
            self._calls.pop(call_id, None)
        error = answer.get("error")
        if error:
            raise SaverError(op, error.get("code"), error.get("message") or f"saver {op} failed")
        return answer.get("result") or {}

    # --- the handshake -----------------------------------------------------------------

    async def handshake(self) -> dict:
        from websockets.exceptions import ConnectionClosed

        await self.send({"type": "hello", "worker": self.name, "pid": os.getpid(), "versions": versions(),
                         "graphs": self.describe_entries, "concurrency": self.concurrency})
        try:
            message = await self.ws.recv()
        except ConnectionClosed as e:
            reason = (e.rcvd.reason if e.rcvd else "") or "closed before welcome"
            code = e.rcvd.code if e.rcvd else None
            raise WorkerExit(2, f"Spindle refused the worker (close {code}): {reason}") from None
        frame = json.loads(message)
        if frame.get("type") != "welcome":
            raise WorkerExit(2, f"Spindle answered hello with {frame.get('type')!r}, not welcome")
        self.worker_id = frame.get("worker_id")
        return frame

    # --- reading -----------------------------------------------------------------------

    def _on_run(self, frame: dict, update: bool = False) -> None:
        from spindle_worker.runner import run_job, update_job

        job = frame["job"]
        self.cancelled.pop(job, None)
        work = update_job(self, frame) if update else run_job(self, frame)
        task = asyncio.create_task(work, name=f"job {job}")
        self.jobs[job] = task

        def forget(t: asyncio.Task, job=job) -> None:
            if self.jobs.get(job) is t:
                del self.jobs[job]
                self.cancelled.pop(job, None)

        task.add_done_callback(forget)

    def _on_cancel(self, frame: dict) -> None:
        task = self.jobs.get(frame.get("job"))
        if task is not None and not task.done():
            self.cancelled[frame["job"]] = frame.get("action") or "interrupt"
            task.cancel()

    def _on_saver_result(self, frame: dict) -> None:
        entry = self._calls.get(frame.get("id"))
        if entry is not None and not entry[1].done():
            entry[1].set_result(frame)

    async def read(self) -> str:
        """Dispatch frames until the connection closes; returns why it closed."""
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self.ws:
                try:
                    frame = json.loads(message)
                    kind = frame.get("type")
                    if kind == "run":
                        self._on_run(frame)
                    elif kind == "update_state":
                        self._on_run(frame, update=True)
                    elif kind == "cancel":
                        self._on_cancel(frame)
                    elif kind == "saver_result":
                        self._on_saver_result(frame)
                    else:
                        raise ValueError(f"unknown type {kind!r}")
                except Exception as e:  # Spindle's bug, not a reason to drop every job
                    print(f"warning: ignored a frame from Spindle ({type(e).__name__}: {e}): {str(message)[:200]}",
                          file=sys.stderr, flush=True)
        except ConnectionClosed:
            pass
        code, reason = self.ws.close_code, self.ws.close_reason
        why = "lost (no close frame)" if code in (None, 1006) else f"close {code}{': ' + reason if reason else ''}"
        self._closed = ConnectionError(why)
        for _, future in list(self._calls.values()):
            if not future.done():
                future.set_exception(ConnectionError(f"the connection to Spindle closed ({why})"))
        return why

    async def abandon_jobs(self) -> None:
        """Cancel every job without answering (the server retries them on another connection)."""
        tasks = [t for t in self.jobs.values() if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def connect(url: str, token: str, graphs: dict, *, name: str | None = None,
                  concurrency: int = DEFAULT_CONCURRENCY, describe_entries: list | None = None,
                  connect_window_s: float = CONNECT_WINDOW_S) -> Worker:
    """A Worker connected to Spindle and welcomed (or WorkerExit)."""
    ws = await _open(url, token, connect_window_s)
    worker = Worker(ws, graphs, name=name or default_name(), concurrency=concurrency,
                    describe_entries=describe_entries)
    try:
        await worker.handshake()
    except BaseException:
        await ws.close()
        raise
    return worker


async def serve(url: str, token: str, graphs: dict, *, name: str | None = None,
                concurrency: int = DEFAULT_CONCURRENCY, describe_entries: list | None = None,
                connect_window_s: float = CONNECT_WINDOW_S) -> None:
    """Serve runs until the connection closes: then WorkerExit(1) (a supervisor restarts us)."""
    worker = await connect(url, token, graphs, name=name, concurrency=concurrency,
                           describe_entries=describe_entries, connect_window_s=connect_window_s)
    why = await worker.read()
    await worker.abandon_jobs()
    raise WorkerExit(1, f"the connection to Spindle at {url} closed ({why}); in-flight jobs are abandoned")


def run_serve(*args: Any, **kwargs: Any) -> int:
    """`serve` in a new event loop, until the worker must stop: the one error line, then the exit.

    The process ends at once (`os._exit`) rather than returning: a job abandoned in a sync node
    runs in a thread asyncio cannot cancel, and waiting for it (as `asyncio.run` does at its end)
    could keep a worker whose connection is gone alive for as long as the node takes.
    """
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(serve(*args, **kwargs))
        code = 0
    except WorkerExit as e:
        print(f"error: {e.message}", file=sys.stderr, flush=True)
        code = e.code
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
