"""A messages graph with a context schema and a conditional edge."""

import os
from typing import Annotated

from typing_extensions import TypedDict  # pydantic needs it for schemas on Python < 3.12

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

# Read at import: the project's `env` must be set before graphs are imported.
GREETING = os.environ["CHAT_GREETING"]


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    mood: str


class Context(TypedDict):
    model: str


def prepare(state: State) -> dict:
    return {"mood": "fine"}


def respond(state: State) -> dict:
    return {"messages": [AIMessage(f"{GREETING}: {state['messages'][-1].content}")]}


def route(state: State) -> str:
    return "respond" if state["messages"] else END


builder = StateGraph(State, context_schema=Context)
builder.add_node("prepare", prepare)
builder.add_node("respond", respond)
builder.add_edge(START, "prepare")
builder.add_conditional_edges("prepare", route, ["respond", END])
builder.add_edge("respond", END)
graph = builder.compile()
