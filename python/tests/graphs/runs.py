"""Graphs the runner tests drive through `spindle-worker serve` (project runs.json)."""

import asyncio
from typing import Annotated

from typing_extensions import TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


# echo: a message graph without a model.
def _echo(state: Chat) -> dict:
    return {"messages": [AIMessage(f"echo: {state['messages'][-1].content}", id="echo-1")]}


_b = StateGraph(Chat)
_b.add_node("echo", _echo)
_b.add_edge(START, "echo")
echo = _b.compile()


# stream: a fake chat model streaming three tokens, and custom events from the node.
async def _respond(state: Chat) -> dict:
    write = get_stream_writer()
    write({"progress": "before"})
    model = GenericFakeChatModel(messages=iter([AIMessage("tok1 tok2 tok3", id="fake-1")]))
    chunks = [chunk async for chunk in model.astream(state["messages"])]
    message = chunks[0]
    for chunk in chunks[1:]:
        message = message + chunk
    write({"progress": "after"})
    return {"messages": [AIMessage(message.content, id="fake-1")]}


_b = StateGraph(Chat)
_b.add_node("respond", _respond)
_b.add_edge(START, "respond")
stream = _b.compile()


# hitl: interrupt() asks, a Command(resume=...) answers.
class Review(TypedDict):
    text: str
    answer: str


def _ask(state: Review) -> dict:
    answer = interrupt({"question": "approve?", "text": state["text"]})
    return {"answer": answer}


def _finish(state: Review) -> dict:
    return {"text": f"{state['text']} ({state['answer']})"}


_b = StateGraph(Review)
_b.add_node("ask", _ask)
_b.add_node("finish", _finish)
_b.add_edge(START, "ask")
_b.add_edge("ask", "finish")
_b.add_edge("finish", END)
hitl = _b.compile()


# boom: a node that raises.
class X(TypedDict):
    x: int


def _boom(state: X) -> dict:
    raise ValueError("boom requested")


_b = StateGraph(X)
_b.add_node("boom", _boom)
_b.add_edge(START, "boom")
boom = _b.compile()


# slow: says it started, then waits (until cancelled).
async def _wait(state: X) -> dict:
    get_stream_writer()({"started": True})
    await asyncio.sleep(3600)
    return {"x": state["x"] + 1}


_b = StateGraph(X)
_b.add_node("wait", _wait)
_b.add_edge(START, "wait")
slow = _b.compile()


# ctx: a node that reads the run's context.
from langgraph.runtime import Runtime  # noqa: E402


class Ctx(TypedDict):
    model: str


def _use(state: X, runtime: Runtime[Ctx]) -> dict:
    return {"x": len(runtime.context["model"])}


_b = StateGraph(X, context_schema=Ctx)
_b.add_node("use", _use)
_b.add_edge(START, "use")
ctx = _b.compile()


# many: one node writing x custom events at once (batching).
async def _many(state: X) -> dict:
    write = get_stream_writer()
    for i in range(state["x"]):
        write(i)
    return {"x": 0}


_b = StateGraph(X)
_b.add_node("many", _many)
_b.add_edge(START, "many")
many = _b.compile()


# flaky: `first` then `second`, which hangs on the run's first attempt (its worker is killed then).
import operator  # noqa: E402

from langchain_core.runnables import RunnableConfig  # noqa: E402


class Count(TypedDict):
    n: Annotated[int, operator.add]
    trail: Annotated[list[str], operator.add]


def _first(state: Count) -> dict:
    return {"n": 10, "trail": ["first"]}


async def _second(state: Count, config: RunnableConfig) -> dict:
    if config["metadata"].get("run_attempt") == 1:
        get_stream_writer()({"hanging": True})
        await asyncio.sleep(3600)
    return {"n": 100, "trail": ["second"]}


_b = StateGraph(Count)
_b.add_node("first", _first)
_b.add_node("second", _second)
_b.add_edge(START, "first")
_b.add_edge("first", "second")
flaky = _b.compile()


# sleepy: a sync node (it runs in a thread, which asyncio cannot cancel) that takes long.
import time  # noqa: E402


def _doze(state: X) -> dict:
    get_stream_writer()({"dozing": True})
    time.sleep(60)
    return {"x": 1}


_b = StateGraph(X)
_b.add_node("doze", _doze)
_b.add_edge(START, "doze")
sleepy = _b.compile()
