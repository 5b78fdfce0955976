"""A graph with a compiled subgraph as a node (its drawing differs with xray)."""

from typing_extensions import TypedDict  # pydantic needs it for schemas on Python < 3.12

from langgraph.graph import START, StateGraph


class S(TypedDict):
    x: int


inner_builder = StateGraph(S)
inner_builder.add_node("inner_a", lambda s: {"x": s["x"] + 1})
inner_builder.add_node("inner_b", lambda s: {"x": s["x"] * 2})
inner_builder.add_edge(START, "inner_a")
inner_builder.add_edge("inner_a", "inner_b")
inner = inner_builder.compile()

outer = StateGraph(S)
outer.add_node("pre", lambda s: {"x": s["x"]})
outer.add_node("child", inner)
outer.add_edge(START, "pre")
outer.add_edge("pre", "child")
graph = outer.compile()
