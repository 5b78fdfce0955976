"""spindle-worker: loads the graphs of a langgraph.json project and describes them for Spindle.

This module imports nothing from langgraph, so the CLI can say clearly when langgraph is not
installed instead of failing with an ImportError traceback.
"""

__version__ = "0.1.0"
