"""Graph factories: one taking the config, one the ServerRuntime, one an async context manager."""

import contextlib
from typing_extensions import TypedDict  # pydantic needs it for schemas on Python < 3.12

from langgraph.graph import START, StateGraph
from langgraph_sdk.runtime import ServerRuntime

CALLS: list[str] = []


class S(TypedDict):
    seen: str


def _build(tag: str):
    b = StateGraph(S)
    b.add_node("tag", lambda s: {"seen": tag})
    b.add_edge(START, "tag")
    return b.compile()


def make_graph(config):
    CALLS.append("make_graph")
    print("factory make_graph called")  # must not reach the describe command's stdout
    return _build("cfg")


def make_graph_rt(runtime: ServerRuntime):
    CALLS.append(f"make_graph_rt {runtime.access_context}")
    return _build("rt")


@contextlib.asynccontextmanager
async def acm_graph(config):
    CALLS.append("acm_graph enter")
    yield _build("acm")
    CALLS.append("acm_graph exit")
