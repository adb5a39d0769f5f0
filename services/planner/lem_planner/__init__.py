"""LLenergyMeasure planner: expands campaigns, dispatches runs, finalises them, and the ``lem`` CLI."""
