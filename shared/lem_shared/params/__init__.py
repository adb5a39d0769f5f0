"""Engine parameters: each backend's section of an experiment (first-class fields named exactly as the engine
names them, grouped by the engine call that takes them, plus an ``extra`` escape hatch), the committed snapshots
of every engine's discovered parameters, the reviewed relevance lists and the coverage they give.

- ``engine``: the base classes every backend section is built from, and ``extra`` resolution.
- ``snapshots``: the committed snapshots (``snapshots/<backend>-<engine version>.json``).
- ``pytorch``, ``vllm``, ``trtllm``: the backend sections.
- ``coverage``: which relevant parameters are first-class, reachable through ``extra``, or not exposed.
"""
