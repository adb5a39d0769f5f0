"""The common worker runtime: claim a run, measure it in a spawned engine host, record the result."""
