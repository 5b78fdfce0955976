"""LLM-free graphs equivalent to Spindle's built-in agents, for spindle-bench."""
