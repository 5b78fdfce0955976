"""`python -m spindle_worker` is the `spindle-worker` command."""

from spindle_worker.cli import main

raise SystemExit(main())
