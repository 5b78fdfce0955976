"""A graph found as a module (`mypkg.agent:graph`) through `dependencies`, with its own name."""

from typing_extensions import TypedDict  # pydantic needs it for schemas on Python < 3.12

from langgraph.graph import START, StateGraph


class S(TypedDict):
    n: int


b = StateGraph(S)
b.add_node("inc", lambda s: {"n": s.get("n", 0) + 1})
b.add_edge(START, "inc")
graph = b.compile(name="MyModuleGraph")
