"""The `spindle-worker` command: `describe path/to/langgraph.json`, `--version`.

Every failure a user can cause is one line `error: <message>` on stderr and exit status 2;
never a traceback. langgraph is imported only after checking that it is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys

from spindle_worker import __version__

EXIT_USAGE = 2


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spindle-worker",
                                     description="Runs the LangGraph graphs of a langgraph.json for Spindle.")
    parser.add_argument("--version", action="version", version=f"spindle-worker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    describe = commands.add_parser("describe", help="load the graphs and print their ids, schemas and drawings as JSON")
    describe.add_argument("config", metavar="LANGGRAPH_JSON", help="path of the project's langgraph.json")
    return parser


def langgraph_missing() -> str | None:
    """The start-up check: a message if this interpreter cannot import langgraph."""
    try:
        found = importlib.util.find_spec("langgraph.graph") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    return f"langgraph is not installed in {sys.executable}: pip install langgraph"


def describe_command(config_path: str) -> int:
    from spindle_worker.describe import describe
    from spindle_worker.loader import ConfigError, GraphLoadError, load_config, load_graphs

    # A graph module may print while it is imported or its factory runs: that goes to stderr,
    # so stdout holds only the JSON document.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            document = describe(load_graphs(load_config(config_path)))
    except (ConfigError, GraphLoadError) as e:
        return _fail(str(e))
    print(json.dumps(document, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (missing := langgraph_missing()) is not None:
        return _fail(missing)
    try:
        if args.command == "describe":
            return describe_command(args.config)
    except Exception as e:  # a bug of ours, still said in one line
        from spindle_worker.loader import exception_line

        return _fail(f"internal error: {exception_line(e)}")
    return _fail(f"unknown command {args.command!r}")


if __name__ == "__main__":
    raise SystemExit(main())
