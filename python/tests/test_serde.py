"""serde: what the worker's JSON looks like for LangGraph's values."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import uuid

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langgraph.types import Command, Interrupt, Send
from pydantic import BaseModel

from spindle_worker.serde import dumps, to_json


def test_messages_are_their_model_dump():
    message = AIMessage("hi", id="m1")
    assert to_json(message) == message.model_dump()
    assert to_json(message) == {"content": "hi", "additional_kwargs": {}, "response_metadata": {}, "type": "ai",
                                "name": None, "id": "m1", "tool_calls": [], "invalid_tool_calls": [],
                                "usage_metadata": None}
    chunk = to_json(AIMessageChunk("tok", id="c1"))
    assert (chunk["type"], chunk["content"], chunk["tool_call_chunks"]) == ("AIMessageChunk", "tok", [])
    assert to_json({"messages": [HumanMessage("q", id="h")]})["messages"][0]["type"] == "human"


def test_langgraph_types():
    assert to_json(Interrupt(value={"q": 1}, id="i1")) == {"value": {"q": 1}, "id": "i1"}
    assert to_json(Send("node", {"x": 1})) == {"node": "node", "arg": {"x": 1}}
    command = to_json(Command(resume="yes", goto=[Send("n", 2)]))
    assert command["resume"] == "yes" and command["goto"] == [{"node": "n", "arg": 2}]
    assert set(command) >= {"graph", "update", "resume", "goto"}


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    tags: tuple


class Model(BaseModel):
    when: datetime.datetime
    n: int = 1


def test_plain_python_values():
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    when = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)
    assert to_json((1, "a")) == [1, "a"]
    assert sorted(to_json({3, 1, 2})) == [1, 2, 3]
    assert to_json(Point(1, ("a",))) == {"x": 1, "tags": ["a"]}
    assert to_json(Model(when=when)) == {"when": "2026-12-01T12:00:00+00:00", "n": 1}
    assert to_json({"u": u, "c": Color.RED, 1: when, "b": b"\x00\x01", "f": float("nan")}) == {
        "u": str(u), "c": "red", "1": "2026-12-01T12:00:00+00:00", "b": "AAE=", "f": None}
    assert to_json(ValueError("bad")) == "ValueError('bad')"

    class Odd:
        def __str__(self):
            return "odd!"

    assert to_json({"o": Odd()}) == {"o": "odd!"}


def test_dumps_is_compact_utf8_json():
    data = dumps({"a": [AIMessage("é", id="x")], "t": (1, 2)})
    assert isinstance(data, bytes) and b", " not in data
    assert json.loads(data) == {"a": [AIMessage("é", id="x").model_dump()], "t": [1, 2]}
    assert "é" in data.decode("utf-8")
