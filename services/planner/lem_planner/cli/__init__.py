"""The ``lem`` command, a module per command group (``campaign``, ``results``, ``schedule``, ``params``, ``energy``,
``db``, ``bundle``, ``doctor``) over the one ``console`` (output, exit codes, errors); ``app`` joins them.

Heavy modules (SQLAlchemy, the models, Celery, redis) are imported inside the commands that use them, so
`lem campaign plan` and `lem --help` start in about a second.
"""

from lem_planner.cli.app import cli, main

__all__ = ["cli", "main"]
