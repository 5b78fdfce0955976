"""Every bad input is named in one `error:` line on stderr with exit status 2, never a traceback.

Each case runs the real command in a new interpreter, from the bad project's directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conftest import BAD, GRAPHS, run_cli

PACKAGE_DIR = Path(__file__).parent.parent

CASES = {
    "raises.json": "Failed to load graph 'raises' from ./raises.py: RuntimeError: import-time failure in user graph",
    "broken.json": "Failed to load graph 'broken' from ./broken.py: ModuleNotFoundError: No module named 'this_module_does_not_exist'",
    "missing_attr.json": (
        "Failed to load graph 'chat' from ../chat.py: Could not find graph 'nope' in '../chat.py'. Please check that:\n"
        "1. The file exports a variable named 'nope'\n"
        "2. The variable name in your config matches the export name\n"
        "Did you mean to use one of the following?\n"
        "\t- ../chat.py:builder\n"
        "\t- ../chat.py:graph"),
    "notgraph.json": "Failed to load graph 'ng' from ./notgraph.py: Variable 'graph' in module './notgraph.py' is not a Graph or Graph factory function",
    "nofile.json": f"Failed to load graph 'gone' from ./missing.py: [Errno 2] No such file or directory: '{BAD / 'missing.py'}'",
    # No `/` before the `:`: a module name, as in langgraph dev, even though it ends in .py.
    "noslash.json": "Failed to load graph 'chat2' from notgraph.py: ModuleNotFoundError: No module named 'notgraph.py'; 'notgraph' is not a package",
    "factory_args.json": "Failed to load graph 'f3' from ./factory_args.py: Graph factory <function make at 0x",
    "factory_raises.json": "Failed to load graph 'fr' from ./factory_raises.py: ValueError: no api key",
    "nographs.json": f'{BAD / "nographs.json"}: no "graphs" key: expected "graphs": {{"<graph id>": "./path/to/file.py:graph"}}',
    "novariable.json": f'{BAD / "novariable.json"}: "graphs"."x": "./notgraph.py" has no variable name: expected "./file.py:variable" or "my.module:variable"',
    "badtype.json": f'{BAD / "badtype.json"}: "graphs"."x": expected a string "./file.py:variable" or "my.module:variable", or an object with "path", got a number',
    "missing_env.json": f'{BAD / "missing_env.json"}: "env": no such file {BAD / "no-such.env"}',
    "does-not-exist.json": f"{BAD / 'does-not-exist.json'}: no such file",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_error_and_exit_2(name):
    result = run_cli("describe", str(BAD / name), cwd=BAD)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"error: {CASES[name]}"), result.stderr
    assert "Traceback" not in result.stderr


def test_the_factory_with_three_parameters_is_named_with_them():
    result = run_cli("describe", str(BAD / "factory_args.json"), cwd=BAD)
    assert result.stderr.rstrip().endswith("must take 0, 1, or 2 arguments. Got 3 parameters: ['a', 'b', 'c']")


def test_an_interpreter_without_langgraph_is_told_at_start(tmp_path):
    # -S leaves site-packages (and so langgraph) out; PYTHONPATH still finds this package.
    result = run_cli("describe", str(GRAPHS / "langgraph.json"), cwd=tmp_path,
                     python=[sys.executable, "-S"], env={"PYTHONPATH": str(PACKAGE_DIR)})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: langgraph is not installed in {sys.executable}: pip install langgraph\n"


def test_version(tmp_path):
    from spindle_worker import __version__

    result = run_cli("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, f"spindle-worker {__version__}\n")


def test_a_relative_langgraph_json_path_resolves_against_its_own_directory(tmp_path):
    # From the repository's python/ directory, `tests/graphs/langgraph.json`: the graph files
    # are found next to the JSON, not under python/ (langgraph dev would look under python/).
    result = run_cli("describe", os.path.relpath(GRAPHS / "langgraph.json", PACKAGE_DIR), cwd=PACKAGE_DIR)
    assert result.returncode == 0, result.stderr
