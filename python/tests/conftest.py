"""Shared helpers: the test project's paths and the CLI run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
GRAPHS = TESTS / "graphs"
PROJECT = GRAPHS / "langgraph.json"
BAD = GRAPHS / "bad"


def run_cli(*args: str, cwd: Path, python: list[str] | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`spindle-worker ARGS` in a new interpreter; a timeout fails the test instead of hanging."""
    command = (python or [sys.executable]) + ["-m", "spindle_worker", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def isolated_process_state():
    """Loading a project changes sys.path, os.environ and sys.modules; undo it after a test."""
    path, environ, modules = list(sys.path), dict(os.environ), set(sys.modules)
    yield
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(environ)
    for name in set(sys.modules) - modules:
        del sys.modules[name]
