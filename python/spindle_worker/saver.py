"""`SpindleSaver`: LangGraph's checkpointer for a job, backed by Spindle over the worker's connection.

Each async method is one `saver` frame and its `saver_result` (docs/workers.md, "The
checkpointer's calls"). Values are serialized here, with the saver's `serde`, as "typed" JSON
`{"type": <tag>, "data": <base64>}`; Spindle stores them as they come and never decodes them.
The write rules the official savers follow (blobs only for `new_versions`, keep-first writes,
special writes overwriting, pending writes in `(task_path, task_id, idx)` order) are Spindle's
side of the contract; this side sends what they need: the blobs of `new_versions` (a null value
for a channel absent from `channel_values`), `WRITES_IDX_MAP`'s negative idx for the special
channels, and each write's `task_path`.

The saver is bound to one job (its id, attempt and thread). It is async-only: the sync methods
raise NotImplementedError.
"""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_metadata,
)

try:  # langgraph-checkpoint 4.x; older versions keep everything in get_checkpoint_metadata
    from langgraph.checkpoint.base import get_serializable_checkpoint_metadata as _metadata_of
except ImportError:  # pragma: no cover - depends on the installed version
    _metadata_of = get_checkpoint_metadata

from spindle_worker.serde import to_json

def stored_metadata(config: RunnableConfig, metadata: CheckpointMetadata) -> dict:
    """A checkpoint's metadata as the official savers store it (the config's primitives merged in)."""
    return _metadata_of(config, metadata)


SaverCall = Callable[[str, dict], Awaitable[dict]]
"""`call(op, args) -> result`: one saver frame of the job, answered by its saver_result."""

_ASYNC_ONLY = ("SpindleSaver is async-only: run the graph with its async methods "
               "(ainvoke, astream, aget_state, ...), as spindle-worker does")


class SaverError(Exception):
    """Spindle answered a saver call with an error (`code`: not_found, invalid, conflict, unavailable)."""

    def __init__(self, op: str, code: str | None, message: str):
        super().__init__(message)
        self.op, self.code, self.message = op, code, message


class SpindleSaver(BaseCheckpointSaver[str]):
    """A `BaseCheckpointSaver` whose storage is Spindle, for one job of one thread."""

    def __init__(self, call: SaverCall, *, thread_id: str | None = None, serde: Any = None,
                 on_put: Callable[[str], None] | None = None):
        super().__init__(serde=serde)
        self._call = call
        self.thread_id = thread_id
        self._on_put = on_put  # told each checkpoint id Spindle has stored

    # --- typed values ------------------------------------------------------------------

    def _dump(self, value: Any) -> dict:
        kind, data = self.serde.dumps_typed(value)
        return {"type": kind, "data": base64.b64encode(data).decode("ascii")}

    def _load(self, typed: dict) -> Any:
        return self.serde.loads_typed((typed["type"], base64.b64decode(typed.get("data") or "")))

    # --- configs -----------------------------------------------------------------------

    def _thread(self, config: RunnableConfig | None) -> str | None:
        configurable = (config or {}).get("configurable") or {}
        return configurable.get("thread_id", self.thread_id)

    def _tuple(self, thread_id: str, t: dict) -> CheckpointTuple:
        # A checkpoint read back is stored: a run resumed from it (a retry, a resume) streams it
        # again without putting it.
        if self._on_put is not None and not t.get("checkpoint_ns"):
            self._on_put(t["checkpoint_id"])
        return self._build_tuple(thread_id, t)

    def _build_tuple(self, thread_id: str, t: dict) -> CheckpointTuple:
        ns = t.get("checkpoint_ns") or ""
        channel_values = {}
        for channel, typed in (t.get("channel_values") or {}).items():
            if typed is None or typed.get("type") == "empty":
                continue
            channel_values[channel] = self._load(typed)
        checkpoint: Checkpoint = {**t["checkpoint"], "channel_values": channel_values}
        parent = t.get("parent_checkpoint_id")
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                     "checkpoint_id": t["checkpoint_id"]}},
            checkpoint=checkpoint,
            metadata=t.get("metadata") or {},
            parent_config=({"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                             "checkpoint_id": parent}} if parent else None),
            pending_writes=[(task_id, channel, self._load(typed))
                            for task_id, channel, typed in (t.get("pending_writes") or [])],
        )

    # --- the async API -----------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config.get("configurable") or {}
        thread_id = self._thread(config)
        result = await self._call("get_tuple", {
            "thread_id": thread_id,
            "checkpoint_ns": configurable.get("checkpoint_ns", ""),
            "checkpoint_id": configurable.get("checkpoint_id"),
        })
        found = result.get("tuple")
        return None if found is None else self._tuple(thread_id, found)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        thread_id = self._thread(config)
        configurable = (config or {}).get("configurable") or {}
        before_id = ((before or {}).get("configurable") or {}).get("checkpoint_id")
        result = await self._call("list", {
            "thread_id": thread_id,
            "checkpoint_ns": configurable.get("checkpoint_ns"),
            "filter": to_json(filter) if filter else None,
            "before": before_id,
            "limit": limit,
        })
        for t in result.get("tuples") or []:
            yield self._tuple(thread_id, t)

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        configurable = config["configurable"]
        thread_id = self._thread(config)
        ns = configurable.get("checkpoint_ns", "")
        body = {k: v for k, v in checkpoint.items() if k != "channel_values"}
        values = checkpoint.get("channel_values") or {}
        blobs = [{"channel": channel, "version": version,
                  "value": self._dump(values[channel]) if channel in values else None}
                 for channel, version in new_versions.items()]
        await self._call("put", {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint["id"],
            "parent_checkpoint_id": configurable.get("checkpoint_id"),
            "checkpoint": to_json(body),
            "metadata": to_json(_metadata_of(config, metadata)),
            "blobs": blobs,
        })
        if self._on_put is not None:
            self._on_put(checkpoint["id"])
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        configurable = config["configurable"]
        await self._call("put_writes", {
            "thread_id": self._thread(config),
            "checkpoint_ns": configurable.get("checkpoint_ns", ""),
            "checkpoint_id": configurable["checkpoint_id"],
            "task_id": task_id,
            "task_path": task_path,
            "writes": [{"idx": WRITES_IDX_MAP.get(channel, idx), "channel": channel, "value": self._dump(value)}
                       for idx, (channel, value) in enumerate(writes)],
        })

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._call("delete_for_runs", {"run_ids": list(run_ids)})

    def get_next_version(self, current: str | int | None, channel: Any = None) -> str:
        """As every official saver: `<32-digit counter>.<16-digit random>`, increasing as text."""
        if current is None:
            number = 0
        elif isinstance(current, int):
            number = current
        else:
            number = int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # --- the sync API: not available -----------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        raise NotImplementedError(_ASYNC_ONLY)

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        raise NotImplementedError(_ASYNC_ONLY)

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        raise NotImplementedError(_ASYNC_ONLY)

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        raise NotImplementedError(_ASYNC_ONLY)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        raise NotImplementedError(_ASYNC_ONLY)
