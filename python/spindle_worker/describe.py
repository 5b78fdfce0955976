"""What Spindle's graph assistants answer, computed from the loaded graphs.

Follows docs/langgraph-workers.md §2: the assistant of a graph (its uuid5 id, name and
description), `GET /assistants/{id}/schemas` and `GET /assistants/{id}/graph` with and without
xray, as `langgraph dev` answers them (recorded in tests/langgraph_dev_answers.json). Each graph
is opened once, as one `assistants.read` access, so a factory is called once per description.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings
from typing import Any, Callable

from spindle_worker.loader import GraphLoadError, LoadedGraph, exception_line, open_graph

# LangGraph's namespace for graph assistants (docs §2) — not uuid.NAMESPACE_URL, one digit apart.
NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")

# Configurable keys the server fills itself: not part of what a user configures.
SERVER_CONFIGURABLE = {"__pregel_checkpointer", "__pregel_store", "checkpoint_id", "checkpoint_ns", "thread_id"}


def assistant_id(graph_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE_GRAPH, graph_id))


def _or_none(compute: Callable[[], Any]) -> Any:
    """A schema that cannot be computed is answered as null, not as a failure."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # config_schema() is deprecated since LangGraph 1.0
            return compute()
    except Exception:
        return None


def state_schema(graph) -> dict:
    """One optional field per stream channel, typed by what the channel accepts as an update."""
    from pydantic import TypeAdapter, create_model

    def field_type(channel: str):
        kind = graph.channels[channel].UpdateType
        try:
            TypeAdapter(kind).json_schema()
            return kind
        except Exception:
            return Any

    fields = {k: (field_type(k), None) for k in graph.stream_channels_list}
    return create_model(graph.get_name("State"), **fields).model_json_schema()


def config_schema(graph) -> dict:
    """The `configurable` part of the graph's config schema, without the server's own keys."""
    from pydantic import TypeAdapter

    model = graph.config_schema()
    configurable = model.model_fields.get("configurable")
    if configurable is None or configurable.annotation is None:
        return {}
    schema = TypeAdapter(configurable.annotation).json_schema()
    properties = schema.get("properties", {})
    for key in SERVER_CONFIGURABLE & set(properties):
        del properties[key]
    if "required" in schema:
        schema["required"] = [k for k in schema["required"] if k not in SERVER_CONFIGURABLE]
        if not schema["required"]:
            del schema["required"]
    config_type = getattr(graph, "config_type", None)
    if getattr(config_type, "__name__", None):
        schema["title"] = config_type.__name__
    return schema


async def drawing(graph, xray: bool | int) -> dict:
    """`aget_graph(xray=...).to_json()` without the nodes' `data.id` (a Python import path)."""
    drawn = (await graph.aget_graph(xray=xray)).to_json()
    for node in drawn.get("nodes", []):
        if isinstance(node.get("data"), dict):
            node["data"].pop("id", None)
    return drawn


async def _describe_one(graph_id: str, loaded: LoadedGraph) -> dict:
    config = {"configurable": {"graph_id": graph_id, "assistant_id": assistant_id(graph_id)}}
    try:
        async with open_graph(loaded, config, access_context="assistants.read") as graph:
            return {
                "graph_id": graph_id,
                "assistant_id": assistant_id(graph_id),
                "name": graph.name,
                "description": loaded.spec.description,
                "factory": loaded.is_factory,
                "schemas": {
                    "graph_id": graph_id,
                    "input_schema": _or_none(graph.get_input_jsonschema),
                    "output_schema": _or_none(graph.get_output_jsonschema),
                    "state_schema": _or_none(lambda: state_schema(graph)),
                    "config_schema": _or_none(lambda: config_schema(graph)),
                    "context_schema": _or_none(graph.get_context_jsonschema),
                },
                "graph": await drawing(graph, False),
                "graph_xray": await drawing(graph, True),
            }
    except Exception as e:  # a factory that fails, or returns no graph: a load error of that graph
        raise GraphLoadError(graph_id, loaded.spec.location, exception_line(e)) from None


def describe(graphs: dict[str, LoadedGraph]) -> dict:
    """`{"graphs": [...]}`, one entry per graph in the order of langgraph.json."""

    async def all_graphs():
        return [await _describe_one(graph_id, loaded) for graph_id, loaded in graphs.items()]

    return {"graphs": asyncio.run(all_graphs())}
