"""Reading a langgraph.json project and importing its graphs, as `langgraph dev` does.

The behaviour followed is the one recorded in docs/langgraph-workers.md §1: the spec forms of
`graphs` (§1.2), `dependencies` and `env` (§1.3), what a graph variable may be — a compiled
graph, a `StateGraph`, or a factory of 0–2 parameters called on every access (§1.2) — and the
load failures, each naming the graph, where it was looked for and why (§1.4). One deliberate
difference (python/README.md): relative paths resolve against the directory of langgraph.json,
not against the current directory.

`load_config` only reads and checks the JSON; `load_graphs` changes the process (`sys.path`,
`os.environ`, `sys.modules`) and imports user code; `open_graph` gives the graph for one access.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

_SPEC_FORMS = '"./file.py:variable" or "my.module:variable"'


class ConfigError(Exception):
    """langgraph.json is missing or of the wrong shape; the message starts with its path."""

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.message = str(path), message


class GraphLoadError(Exception):
    """One graph could not be imported, classified or built (docs §1.4)."""

    def __init__(self, graph_id: str, location: str, cause: str):
        super().__init__(f"Failed to load graph '{graph_id}' from {location}: {cause}")
        self.graph_id, self.location, self.cause = graph_id, location, cause


class _Refused(Exception):
    """A graph we refuse for a reason of our own: its message is the whole cause, no class name."""


def exception_line(e: BaseException) -> str:
    """The line a traceback of `e` ends with: `Type: message` (the module named if not builtin).

    A `SyntaxError` keeps its `(file, line N)`, which a traceback shows on lines of their own.
    """
    kind = type(e)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"{name}: {e}" if str(e) else name


# --- langgraph.json ------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphSpec:
    """One entry of `graphs`: where to find it (`file` or `module`) and which `variable`."""

    graph_id: str
    location: str  # the part before `:` as written, used in messages
    variable: str
    file: Path | None  # a spec whose location contains `/`
    module: str | None  # otherwise a module name found on sys.path
    description: str | None = None


@dataclass(frozen=True)
class Config:
    """A checked langgraph.json: the graph specs in order, and what to set up before importing."""

    path: Path
    root: Path  # the directory of langgraph.json; relative paths resolve against it
    graphs: dict[str, GraphSpec]
    dependencies: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def _kind(value: Any) -> str:
    """A JSON value's type, with its article, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    for types, name in ((dict, "an object"), (list, "an array"), (str, "a string"),
                        ((int, float), "a number"), (type(None), "null")):
        if isinstance(value, types):
            return name
    return type(value).__name__


def _kind_of_bad(values: Any, ok: type) -> str:
    """`_kind(values)`, naming the first wrong item of an otherwise right array or object."""
    items = values.values() if isinstance(values, dict) else values if isinstance(values, list) else ()
    bad = [v for v in items if not isinstance(v, ok)]
    return f"{_kind(values)} with {_kind(bad[0])}" if bad else _kind(values)


def _graph_spec(root: Path, graph_id: str, value: Any, fail: Callable[[str], Exception]) -> GraphSpec:
    where = f'"graphs".{json.dumps(graph_id)}'
    description = None
    if isinstance(value, dict):
        if not isinstance(value.get("path"), str):
            raise fail(f'{where}: an object spec needs "path": "./file.py:variable" (a string)')
        description = value.get("description")
        if description is not None and not isinstance(description, str):
            raise fail(f'{where}: "description" must be a string, got {_kind(description)}')
        value = value["path"]
    elif not isinstance(value, str):
        raise fail(f'{where}: expected a string {_SPEC_FORMS}, or an object with "path", got {_kind(value)}')
    location, colon, variable = value.rpartition(":")
    if not colon or not variable:
        raise fail(f"{where}: {json.dumps(value)} has no variable name: expected {_SPEC_FORMS}")
    if not location:
        raise fail(f"{where}: {json.dumps(value)} has no file or module: expected {_SPEC_FORMS}")
    if "/" in location:
        return GraphSpec(graph_id, location, variable, root / location, None, description)
    return GraphSpec(graph_id, location, variable, None, location, description)


def _read_env(root: Path, value: Any, fail: Callable[[str], Exception]) -> dict[str, str]:
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return dict(value)
    if not isinstance(value, str):
        raise fail(f'"env" must be an object of strings or the path of a .env file, got {_kind_of_bad(value, str)}')
    dotenv_path = root / value
    if not dotenv_path.is_file():
        raise fail(f'"env": no such file {dotenv_path}')
    from dotenv import dotenv_values

    # A line `KEY` without `=` has no value: it sets nothing.
    return {k: v for k, v in dotenv_values(dotenv_path).items() if v is not None}


def load_config(path: str | os.PathLike) -> Config:
    """Read and check langgraph.json; unknown keys are ignored. Raises ConfigError."""

    def fail(message: str) -> ConfigError:
        return ConfigError(path, message)

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail("no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"cannot be read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise fail(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise fail(f"expected a JSON object, got {_kind(data)}")
    if "graphs" not in data:
        raise fail('no "graphs" key: expected "graphs": {"<graph id>": "./path/to/file.py:graph"}')
    if not isinstance(data["graphs"], dict):
        raise fail(f'"graphs" must be an object of graph id to spec, got {_kind(data["graphs"])}')

    root = Path(os.path.abspath(path)).parent
    graphs = {gid: _graph_spec(root, gid, value, fail) for gid, value in data["graphs"].items()}
    dependencies = data.get("dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise fail(f'"dependencies" must be an array of strings, got {_kind_of_bad(dependencies, str)}')
    env = _read_env(root, data["env"], fail) if data.get("env") is not None else {}
    return Config(Path(path), root, graphs, [root / d for d in dependencies], env)


# --- factories -----------------------------------------------------------------------------

FactoryHook = Callable[[Any, Any], dict]
"""Given (config, runtime), the keyword arguments to call a factory with."""


def _is_runtime_annotation(annotation: Any) -> bool:
    """True for `ServerRuntime`, `ServerRuntime[Ctx]`, its two variants, or those names as text."""
    if annotation is inspect.Parameter.empty:
        return False
    if isinstance(annotation, str):  # unresolved, e.g. under `from __future__ import annotations`
        return re.sub(r"\[.*$", "", annotation.strip().strip("'\"")).rsplit(".", 1)[-1] in (
            "ServerRuntime", "_ExecutionRuntime", "_ReadRuntime")
    from langgraph_sdk.runtime import ServerRuntime, _ExecutionRuntime, _ReadRuntime

    origin = getattr(annotation, "__origin__", annotation)
    return origin in (ServerRuntime, _ExecutionRuntime, _ReadRuntime) or (
        getattr(annotation, "__name__", None) == "ServerRuntime")


def classify_factory(factory: Callable) -> FactoryHook:
    """How to call a graph factory: by its parameters, 0 to 2, one of them possibly a runtime.

    A parameter annotated `ServerRuntime` gets the runtime; any other gets the config. With two
    parameters exactly one must be the runtime. Raises ValueError otherwise (docs §1.2).
    """
    params = list(inspect.signature(factory).parameters.values())
    if len(params) > 2:
        raise ValueError(f"Graph factory {factory!r} must take 0, 1, or 2 arguments. "
                         f"Got {len(params)} parameters: {[p.name for p in params]}")
    try:
        hints = inspect.get_annotations(factory, eval_str=True)
    except Exception:  # a name only the user's type checker knows: read the text instead
        hints = {}
    runtime = [p.name for p in params if _is_runtime_annotation(hints.get(p.name, p.annotation))]
    config = [p.name for p in params if p.name not in runtime]
    if len(config) > 1 or len(runtime) > 1:
        raise ValueError(f"Graph factory {factory!r} can only accept arguments of type ServerRuntime "
                         f"and/or RunnableConfig: of its parameters {[p.name for p in params]}, "
                         "one at most may be the config and one at most a ServerRuntime (by annotation)")

    def hook(config_value: Any, runtime_value: Any) -> dict:
        return {**{n: config_value for n in config}, **{n: runtime_value for n in runtime}}

    return hook


# --- loading -------------------------------------------------------------------------------


@dataclass
class LoadedGraph:
    """A graph as loaded: a graph object, or a factory (`hook` set) to call on every access."""

    spec: GraphSpec
    value: Any
    hook: FactoryHook | None = None

    @property
    def is_factory(self) -> bool:
        return self.hook is not None


def _module_name(spec: GraphSpec) -> str:
    # Our own prefix, so a user's `./json.py` never takes the place of a real module.
    stem = re.sub(r"\W", "_", str(spec.file).removesuffix(".py").strip("/"))
    return f"__spindle_graph__{stem}"


def _import(spec: GraphSpec):
    if spec.module is not None:
        return importlib.import_module(spec.module)
    if not spec.file.is_file():
        raise _Refused(str(FileNotFoundError(2, "No such file or directory", str(spec.file))))
    # Every graph of a file executes the file anew, as in langgraph dev; the newest execution
    # is the one in sys.modules (pydantic and pickle look classes up there).
    name = _module_name(spec)
    module_spec = importlib.util.spec_from_file_location(name, spec.file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _graph_types():
    from langgraph.graph import StateGraph
    from langgraph.pregel import Pregel

    return Pregel, StateGraph


def _take(spec: GraphSpec, module) -> LoadedGraph:
    """The spec's variable as a graph (a StateGraph compiled) or a classified factory."""
    Pregel, StateGraph = _graph_types()
    if not hasattr(module, spec.variable):
        graphs = sorted(k for k, v in vars(module).items() if isinstance(v, (Pregel, StateGraph)))
        message = (f"Could not find graph '{spec.variable}' in '{spec.location}'. Please check that:\n"
                   f"1. The file exports a variable named '{spec.variable}'\n"
                   "2. The variable name in your config matches the export name")
        if graphs:
            message += "\nDid you mean to use one of the following?" + "".join(
                f"\n\t- {spec.location}:{g}" for g in graphs)
        raise _Refused(message)
    value = getattr(module, spec.variable)
    if isinstance(value, Pregel):
        return LoadedGraph(spec, value)
    if isinstance(value, StateGraph):
        return LoadedGraph(spec, value.compile())
    if callable(value):
        try:
            return LoadedGraph(spec, value, classify_factory(value))
        except ValueError as e:
            raise _Refused(str(e)) from None
    raise _Refused(f"Variable '{spec.variable}' in module '{spec.location}' is not a Graph or Graph factory function")


def load_graphs(config: Config) -> dict[str, LoadedGraph]:
    """Prepare the process as the project asks, then import every graph in order.

    `env` is set first (overriding the process's values), then langgraph.json's directory and
    the `dependencies` directories are appended to sys.path. Raises GraphLoadError for the first
    graph that fails; a factory is only classified here, not called.
    """
    os.environ.update(config.env)
    for directory in [config.root, *config.dependencies]:
        if directory.is_dir() and str(directory) not in sys.path:
            sys.path.append(str(directory))
    loaded = {}
    for graph_id, spec in config.graphs.items():
        try:
            loaded[graph_id] = _take(spec, _import(spec))
        except _Refused as e:
            raise GraphLoadError(graph_id, spec.location, str(e)) from None
        except (Exception, SystemExit) as e:  # user code: sys.exit() is a failure, not our exit
            raise GraphLoadError(graph_id, spec.location, exception_line(e)) from None
    return loaded


# --- one access ----------------------------------------------------------------------------


def _runtime(access_context: str, store: Any, user: Any, context: Any):
    from langgraph_sdk.runtime import _ExecutionRuntime, _ReadRuntime

    if store is None:
        from langgraph.store.memory import InMemoryStore

        store = InMemoryStore()
    if access_context == "threads.create_run":
        return _ExecutionRuntime(access_context=access_context, store=store, user=user, context=context)
    return _ReadRuntime(access_context=access_context, store=store, user=user)


@contextlib.asynccontextmanager
async def open_graph(loaded: LoadedGraph, config: dict | None = None, *, access_context: str = "assistants.read",
                     store: Any = None, user: Any = None, context: Any = None) -> AsyncIterator[Any]:
    """The compiled graph for one access (a run, a state read or update, a description).

    A factory is called now, with the config (its `configurable` marked `__is_for_execution__`
    for a run) and/or a `ServerRuntime` for `access_context`; what it returns may be a graph, a
    StateGraph, an awaitable or a (sync or async) context manager, which stays entered until the
    access ends. A graph still named "LangGraph" takes its graph id as name (docs §1.2, §2).
    """
    async with contextlib.AsyncExitStack() as stack:
        value = loaded.value
        if loaded.is_factory:
            config = dict(config or {})
            config["configurable"] = {**(config.get("configurable") or {}),
                                      "__is_for_execution__": access_context == "threads.create_run"}
            value = value(**loaded.hook(config, _runtime(access_context, store, user, context)))
            if inspect.isawaitable(value):
                value = await value
            if hasattr(value, "__aenter__") and hasattr(value, "__aexit__"):
                value = await stack.enter_async_context(value)
            elif hasattr(value, "__enter__") and hasattr(value, "__exit__"):
                value = stack.enter_context(value)
            Pregel, StateGraph = _graph_types()
            if isinstance(value, StateGraph):
                value = value.compile()
            if not isinstance(value, Pregel):
                raise TypeError(f"Graph factory {loaded.value!r} returned {type(value).__name__}, not a graph")
        if value.name == "LangGraph":
            value = value.copy(update={"name": loaded.spec.graph_id})
        yield value
