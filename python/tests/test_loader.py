"""The loader in-process: config validation, spec forms, path resolution, env, factories."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import sys

import pytest

from conftest import GRAPHS, PROJECT
from spindle_worker.loader import (ConfigError, GraphLoadError, classify_factory, load_config,
                                   load_graphs, open_graph)

pytestmark = pytest.mark.usefixtures("isolated_process_state")


def write_config(tmp_path, data) -> str:
    path = tmp_path / "langgraph.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize("data, message", [
    ("{not json", "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ([], "expected a JSON object, got an array"),
    ({"graphs": ["./a.py:g"]}, '"graphs" must be an object of graph id to spec, got an array'),
    ({"graphs": {"g": {"description": "d"}}}, '"graphs"."g": an object spec needs "path": "./file.py:variable" (a string)'),
    ({"graphs": {"g": {"path": "./a.py:g", "description": 1}}}, '"graphs"."g": "description" must be a string, got a number'),
    ({"graphs": {"g": "./a.py:"}}, '"graphs"."g": "./a.py:" has no variable name: expected "./file.py:variable" or "my.module:variable"'),
    ({"graphs": {}, "dependencies": "./src"}, '"dependencies" must be an array of strings, got a string'),
    ({"graphs": {}, "env": ["A=1"]}, '"env" must be an object of strings or the path of a .env file, got an array'),
])
def test_a_bad_langgraph_json_names_the_key_and_what_was_expected(tmp_path, data, message):
    path = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: {message}"


def test_unknown_keys_are_ignored_and_specs_read_as_langgraph_dev_reads_them(tmp_path):
    config = load_config(write_config(tmp_path, {
        "graphs": {"file": "./graphs/a.py:g", "noslash_file": "graphs/a.py:g", "module": "pkg.mod:g",
                   "dotpy": "a.py:g", "object": {"path": "./a.py:g", "description": "d", "extra": 1}},
        "store": {"index": {}}, "whatever": True}))
    specs = config.graphs
    assert (specs["file"].file, specs["file"].module) == (tmp_path / "graphs/a.py", None)
    assert specs["noslash_file"].file == tmp_path / "graphs/a.py"
    assert (specs["module"].module, specs["module"].variable) == ("pkg.mod", "g")
    assert (specs["dotpy"].module, specs["dotpy"].file) == ("a.py", None)
    assert (specs["object"].location, specs["object"].description) == ("./a.py", "d")


def test_relative_paths_resolve_against_the_directory_of_langgraph_json(tmp_path, monkeypatch):
    project = tmp_path / "deep" / "project"
    shutil.copytree(GRAPHS, project)
    monkeypatch.chdir(tmp_path)
    config = load_config("deep/project/langgraph.json")
    assert config.root == project
    graphs = load_graphs(config)
    assert str(project / "src") in sys.path
    assert os.environ["CHAT_GREETING"] == "from-dotenv"
    assert sorted(graphs) == sorted(json.loads((project / "langgraph.json").read_text())["graphs"])


def test_env_as_an_object_is_set_before_graphs_import_and_overrides_the_process(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAT_GREETING", "from-the-process")
    path = write_config(tmp_path, {"graphs": {"chat": f"{GRAPHS}/chat.py:graph"},
                                   "env": {"CHAT_GREETING": "from-langgraph-json"}})
    graphs = load_graphs(load_config(path))
    module = sys.modules[graphs["chat"].value.nodes["respond"].bound.func.__module__]
    assert module.GREETING == "from-langgraph-json"


def test_a_state_graph_is_compiled_at_load():
    graphs = load_graphs(load_config(PROJECT))
    from langgraph.pregel import Pregel

    assert isinstance(graphs["uncompiled"].value, Pregel)
    assert not graphs["uncompiled"].is_factory


@pytest.mark.parametrize("graph_id, calls", [
    ("factory_cfg", ["make_graph", "used", "make_graph", "used"]),
    ("factory_rt", ["make_graph_rt assistants.read", "used"] * 2),
    ("factory_acm", ["acm_graph enter", "used", "acm_graph exit"] * 2),
])
def test_a_factory_is_kept_and_called_on_every_access(graph_id, calls):
    loaded = load_graphs(load_config(PROJECT))[graph_id]
    # As in langgraph dev, each graph of a file executes the file anew: this factory's CALLS.
    seen = inspect.unwrap(loaded.value).__globals__["CALLS"]
    assert loaded.is_factory and seen == []  # loading only classifies it

    async def use_twice():
        for _ in range(2):
            async with open_graph(loaded, {"configurable": {"thread_id": "t"}}) as graph:
                assert graph.name == graph_id
                seen.append("used")

    asyncio.run(use_twice())
    assert seen == calls


def test_a_run_access_gives_a_factory_the_execution_runtime_and_the_config():
    seen = {}

    def make(config, runtime: "ServerRuntime"):  # noqa: F821 — resolved as langgraph-api does
        seen.update(config=config, runtime=runtime)
        return load_graphs(load_config(PROJECT))["sub"].value

    from spindle_worker.loader import LoadedGraph, GraphSpec

    loaded = LoadedGraph(GraphSpec("f", "./f.py", "make", None, None), make, classify_factory(make))

    async def run():
        async with open_graph(loaded, {"configurable": {"thread_id": "t"}}, access_context="threads.create_run"):
            pass

    asyncio.run(run())
    assert type(seen["runtime"]).__name__ == "_ExecutionRuntime"
    assert seen["config"]["configurable"] == {"thread_id": "t", "__is_for_execution__": True}


@pytest.mark.parametrize("source, kwargs", [
    ("def f(): pass", []),
    ("def f(config): pass", ["config"]),
    ("def f(runtime: ServerRuntime): pass", ["runtime"]),
    ("def f(rt: ServerRuntime, cfg): pass", ["cfg", "rt"]),
])
def test_factories_take_zero_to_two_parameters_found_by_annotation(source, kwargs):
    from langgraph_sdk.runtime import ServerRuntime

    namespace = {"ServerRuntime": ServerRuntime}
    exec(source, namespace)
    hook = classify_factory(namespace["f"])
    given = hook("CONFIG", "RUNTIME")
    assert sorted(given) == kwargs
    assert all(v == ("RUNTIME" if k in ("runtime", "rt") else "CONFIG") for k, v in given.items())


def test_two_parameters_without_a_runtime_annotation_are_refused(tmp_path):
    (tmp_path / "f.py").write_text("def make(a, b):\n    pass\n")
    with pytest.raises(GraphLoadError) as e:
        load_graphs(load_config(write_config(tmp_path, {"graphs": {"f": "./f.py:make"}})))
    assert str(e.value).startswith("Failed to load graph 'f' from ./f.py: Graph factory <function make")
    assert "can only accept arguments of type ServerRuntime and/or RunnableConfig" in str(e.value)


def test_a_module_that_exits_is_a_load_error_not_an_exit(tmp_path):
    (tmp_path / "g.py").write_text("import sys\nsys.exit(4)\n")
    with pytest.raises(GraphLoadError) as e:
        load_graphs(load_config(write_config(tmp_path, {"graphs": {"g": "./g.py:graph"}})))
    assert str(e.value) == "Failed to load graph 'g' from ./g.py: SystemExit: 4"


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    (tmp_path / "g.py").write_text("graph = (\n")
    with pytest.raises(GraphLoadError) as e:
        load_graphs(load_config(write_config(tmp_path, {"graphs": {"g": "./g.py:graph"}})))
    assert str(e.value).startswith("Failed to load graph 'g' from ./g.py: SyntaxError: '(' was never closed (g.py, line 1)")
