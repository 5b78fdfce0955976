"""The graphs Spindle's tests run on its Python workers (`spindle serve --graphs
tests/graphs/langgraph.json`), and on `langgraph dev` for the comparison test: a message graph,
a streaming graph with a fake chat model and custom events, interrupt() and its resume, a graph
that raises, a graph that waits (cancel, timeout, a killed worker) and a subgraph."""

import asyncio
from typing import Annotated

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt
from typing_extensions import TypedDict


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def _reply(state: Chat) -> dict:
    last = state["messages"][-1]
    return {"messages": [AIMessage(f"you said: {last.content}")]}


_b = StateGraph(Chat)
_b.add_node("reply", _reply)
_b.add_edge(START, "reply")
_b.add_edge("reply", END)
chat = _b.compile()


async def _model(state: Chat) -> dict:
    write = get_stream_writer()
    write({"progress": "thinking"})
    model = GenericFakeChatModel(messages=iter([AIMessage("one two three")]))
    message = await model.ainvoke(state["messages"])
    write({"progress": "done"})
    return {"messages": [message]}


_b = StateGraph(Chat)
_b.add_node("model", _model)
_b.add_edge(START, "model")
_b.add_edge("model", END)
stream = _b.compile()


class Review(TypedDict):
    draft: str
    verdict: str


def _write(state: Review) -> dict:
    return {"draft": f"draft of {state['draft']}"}


def _review(state: Review) -> dict:
    verdict = interrupt({"question": "publish?", "draft": state["draft"]})
    return {"verdict": verdict}


_b = StateGraph(Review)
_b.add_node("write", _write)
_b.add_node("review", _review)
_b.add_edge(START, "write")
_b.add_edge("write", "review")
_b.add_edge("review", END)
hitl = _b.compile()


class Count(TypedDict):
    n: int


def _boom(state: Count) -> dict:
    raise ValueError(f"boom at n={state['n']}")


_b = StateGraph(Count)
_b.add_node("boom", _boom)
_b.add_edge(START, "boom")
boom = _b.compile()


async def _wait(state: Count) -> dict:
    get_stream_writer()({"waiting": state["n"]})
    await asyncio.sleep(3600)
    return {"n": state["n"] + 1}


_b = StateGraph(Count)
_b.add_node("wait", _wait)
_b.add_edge(START, "wait")
slow = _b.compile()


def _inner(state: Chat) -> dict:
    return {"messages": [AIMessage("from the subgraph")]}


_inner_b = StateGraph(Chat)
_inner_b.add_node("inner", _inner)
_inner_b.add_edge(START, "inner")
_inner_graph = _inner_b.compile()

_b = StateGraph(Chat)
_b.add_node("outer", _inner_graph)
_b.add_edge(START, "outer")
_b.add_edge("outer", END)
nested = _b.compile()
