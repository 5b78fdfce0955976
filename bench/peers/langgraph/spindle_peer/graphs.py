"""Spindle's built-in agents as LangGraph graphs (no LLM, no network).

- ``echo``: appends the AI message ``echo: <text of the last human message>``.
- ``synthetic``: emits ``n`` custom events through ``get_stream_writer`` (seen with
  ``stream_mode: ["custom"]``), then appends the same echo message.

Input of both: ``{"messages": [...]}``; ``synthetic`` also reads ``n`` (default 1000) and
``mode`` (only ``"custom"`` is implemented here).
"""

from typing import Any

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph


def _last_human_text(messages: list[AnyMessage]) -> str:
    for message in reversed(messages):
        if message.type == "human":
            content = message.content
            if isinstance(content, str):
                return content
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _echo(state: MessagesState) -> dict[str, Any]:
    return {"messages": [AIMessage(content=f"echo: {_last_human_text(state['messages'])}", name="echo")]}


class SyntheticState(MessagesState):
    n: int
    mode: str


def _synthetic(state: SyntheticState) -> dict[str, Any]:
    writer = get_stream_writer()
    n = min(int(state.get("n") or 1000), 1_000_000)
    for i in range(n):
        writer({"i": i, "of": n})
    return {"messages": [AIMessage(content=f"echo: {_last_human_text(state['messages'])}", name="synthetic")]}


echo = StateGraph(MessagesState).add_node("echo", _echo).add_edge(START, "echo").add_edge("echo", END).compile()

synthetic = (
    StateGraph(SyntheticState)
    .add_node("synthetic", _synthetic)
    .add_edge(START, "synthetic")
    .add_edge("synthetic", END)
    .compile()
)
