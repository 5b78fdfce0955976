"""JSON of what LangGraph streams and returns, as LangGraph's server shows it to SDK clients.

`to_json(obj)` turns a value into plain JSON data (dicts, lists, str, int, float, bool, None):
pydantic models (LangChain messages among them) become their `model_dump()`, dataclasses a dict
of their fields, `Interrupt` `{"value", "id"}`, `Send` `{"node", "arg"}`, `Command` its fields,
tuples and sets lists, datetimes ISO 8601 text, UUIDs text, enums their value, bytes base64, and
anything else its `str()`. `dumps(obj)` is the compact UTF-8 JSON of that: every JSON document
the worker sends goes through it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import json
import math
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

_MAX_DEPTH = 200


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, enum.Enum):
        return str(key.value)
    if isinstance(key, (bool, int, float)) or key is None:
        return json.dumps(key)
    return str(key)


def _interrupt_types() -> tuple[type, ...]:
    try:
        from langgraph.types import Interrupt
    except ImportError:  # pragma: no cover - langgraph is a dependency
        return ()
    return (Interrupt,)


def _send_command_types() -> tuple[type | None, type | None]:
    try:
        from langgraph.types import Command, Send
    except ImportError:  # pragma: no cover
        return None, None
    return Send, Command


def to_json(obj: Any, _depth: int = 0) -> Any:
    """`obj` as JSON data (see the module's docstring); never raises for an odd value."""
    if obj is None or isinstance(obj, (str, bool, int)):
        if isinstance(obj, enum.Enum):  # IntEnum / StrEnum members
            return to_json(obj.value, _depth + 1)
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if _depth > _MAX_DEPTH:
        return str(obj)
    d = _depth + 1
    if isinstance(obj, Mapping):
        return {_key(k): to_json(v, d) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)) or type(obj).__name__ == "deque":
        return [to_json(v, d) for v in obj]
    interrupt = _interrupt_types()
    if interrupt and isinstance(obj, interrupt):
        return {"value": to_json(obj.value, d), "id": to_json(getattr(obj, "id", None), d)}
    send, command = _send_command_types()
    if send is not None and isinstance(obj, send):
        return {"node": obj.node, "arg": to_json(obj.arg, d)}
    model_dump = getattr(obj, "model_dump", None)
    if callable(model_dump) and not isinstance(obj, type):
        try:
            return to_json(model_dump(), d)
        except Exception:
            pass
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # Command is one too
        return {f.name: to_json(getattr(obj, f.name, None), d) for f in dataclasses.fields(obj)}
    dict_method = getattr(obj, "dict", None)  # pydantic v1 models
    if callable(dict_method) and hasattr(obj, "__fields__") and not isinstance(obj, type):
        try:
            return to_json(dict_method(), d)
        except Exception:
            pass
    if isinstance(obj, enum.Enum):
        return to_json(obj.value, d)
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, datetime.timedelta):
        return obj.total_seconds()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, BaseException):
        return repr(obj)
    if hasattr(obj, "_asdict"):  # a NamedTuple that did not match tuple above (never, kept for safety)
        return to_json(obj._asdict(), d)
    try:
        return str(obj)
    except Exception:
        return f"<{type(obj).__name__}>"


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON of `to_json(obj)`."""
    return json.dumps(to_json(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def dumps_text(obj: Any) -> str:
    """`dumps` as text (a WebSocket text frame)."""
    return dumps(obj).decode("utf-8")
