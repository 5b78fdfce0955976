"""The `spindle-worker` command: `describe path/to/langgraph.json`, `serve path/to/langgraph.json`, `--version`.

Every failure a user can cause is one line `error: <message>` on stderr and exit status 2;
never a traceback. langgraph is imported only after checking that it is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
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
    serve = commands.add_parser("serve", help="load the graphs, connect to Spindle and run its runs of them")
    serve.add_argument("config", metavar="LANGGRAPH_JSON", help="path of the project's langgraph.json")
    serve.add_argument("--url", default=None,
                       help="Spindle's worker route (default ws://127.0.0.1:8123/workers/connect)")
    serve.add_argument("--token", default=None, help="the worker token (default: $SPINDLE_WORKER_TOKEN)")
    serve.add_argument("--name", default=None, help="this worker's name in Spindle's log (default host:pid)")
    serve.add_argument("--concurrency", type=int, default=None, help="runs at once (default 64)")
    serve.add_argument("--connect-timeout", type=float, default=None, metavar="SECONDS",
                       help="how long to retry the first connect (default 30)")
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


def serve_command(args: argparse.Namespace) -> int:
    token = args.token if args.token is not None else os.environ.get("SPINDLE_WORKER_TOKEN")
    if not token:
        return _fail("no worker token: pass --token or set SPINDLE_WORKER_TOKEN")
    if args.concurrency is not None and args.concurrency < 1:
        return _fail(f"--concurrency must be at least 1, got {args.concurrency}")
    from spindle_worker import connection
    from spindle_worker.describe import describe
    from spindle_worker.loader import ConfigError, GraphLoadError, load_config, load_graphs

    try:
        with contextlib.redirect_stdout(sys.stderr):
            graphs = load_graphs(load_config(args.config))
            entries = describe(graphs)["graphs"]
    except (ConfigError, GraphLoadError) as e:
        return _fail(str(e))
    return connection.run_serve(
        args.url or connection.DEFAULT_URL, token, graphs, name=args.name,
        concurrency=args.concurrency or connection.DEFAULT_CONCURRENCY, describe_entries=entries,
        connect_window_s=connection.CONNECT_WINDOW_S if args.connect_timeout is None else args.connect_timeout)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (missing := langgraph_missing()) is not None:
        return _fail(missing)
    try:
        if args.command == "describe":
            return describe_command(args.config)
        if args.command == "serve":
            return serve_command(args)
    except Exception as e:  # a bug of ours, still said in one line
        from spindle_worker.loader import exception_line

        return _fail(f"internal error: {exception_line(e)}")
    return _fail(f"unknown command {args.command!r}")


if __name__ == "__main__":
    raise SystemExit(main())
