"""runner's pure parts: commands, stream modes, part data and snapshot shapes."""

from __future__ import annotations

from langchain_core.messages import AIMessageChunk
from langgraph.types import Send

from spindle_worker.runner import _part_data, _stream_modes, command_of, snapshot_of_checkpoint_part


def test_commands_as_the_api_takes_them():
    command = command_of({"resume": "yes", "goto": [{"node": "a", "input": {"x": 1}}, "b"], "update": [["k", 1]]})
    assert command.resume == "yes"
    assert command.goto == [Send("a", {"x": 1}), "b"]
    assert command.update == [("k", 1)]
    assert command_of({"goto": {"node": "a", "input": 2}}).goto == Send("a", 2)
    assert command_of({"goto": "a", "update": {"k": 1}}).goto == "a"


def test_stream_modes():
    assert _stream_modes(None) == ["values"]
    assert _stream_modes("updates") == ["updates"]
    assert _stream_modes(["messages-tuple", "messages", "custom"]) == ["messages", "custom"]


def test_a_messages_part_is_message_and_metadata():
    data = _part_data("messages", (AIMessageChunk("t", id="c"), {"langgraph_node": "n"}))
    assert data[0]["type"] == "AIMessageChunk" and data[1] == {"langgraph_node": "n"}


def test_a_checkpoints_part_as_a_snapshot():
    part = {
        "config": {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c2"}},
        "parent_config": {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c1"}},
        "values": {"x": 1}, "metadata": {"source": "loop", "step": 1, "parents": {}}, "next": ["ask"],
        "tasks": [{"id": "k", "name": "ask", "interrupts": ({"value": "q?", "id": "i"},), "state": None}],
    }
    config = {"configurable": {"thread_id": "t"}, "metadata": {"run_id": "r", "n": 1, "__hidden": 2}}
    assert snapshot_of_checkpoint_part(part, config) == {
        "checkpoint_id": "c2", "parent_checkpoint_id": "c1", "values": {"x": 1},
        "metadata": {"source": "loop", "step": 1, "parents": {}, "run_id": "r", "n": 1},
        "next": ["ask"],
        "tasks": [{"id": "k", "name": "ask", "path": None, "error": None, "interrupts": [{"id": "i", "value": "q?"}],
                   "checkpoint": None, "state": None, "result": None}],
        "interrupts": [{"id": "i", "value": "q?"}],
    }

