"""`lem` run in the test's own process: the console script's function (``lem_planner.cli:main``) under click's
CliRunner isolation, answered as ``subprocess.run`` answers (exit code, stdout, stderr). For tests about what a
command prints and exits with, not about the process: each `lem` process pays about a second of imports, and a
test that runs dozens of commands paid minutes.

As the script would: an exception that ``main`` lets through is written to stderr as a traceback (exit 1), a
string exit code is printed (exit 1), and records logged at WARNING or above reach stderr, as Python's
last-resort handler writes them in a process that configured no logging."""

from __future__ import annotations

import logging
import subprocess
import sys
import traceback
from collections.abc import Mapping

from typer.testing import CliRunner

from lem_shared.settings import get_settings


def lem_in_process(*args: str, env: Mapping[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    """``lem ARGS`` with ``env`` over this process's environment (restored after); settings are read afresh."""
    from lem_planner.cli import main

    code = 0
    with CliRunner().isolation(env=env) as (stdout, stderr, _):
        get_settings.cache_clear()
        handler = logging.StreamHandler(sys.stderr)  # the isolated stderr
        handler.setLevel(logging.WARNING)
        logging.getLogger().addHandler(handler)
        argv, sys.argv = sys.argv, ["lem", *args]
        try:
            main()
        except SystemExit as exit_:
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        except Exception:  # noqa: BLE001 - what the script would print before exiting 1
            traceback.print_exc(file=sys.stderr)
            code = 1
        finally:
            sys.argv = argv
            logging.getLogger().removeHandler(handler)
            sys.stdout.flush()
            sys.stderr.flush()
        out, err = (stream.getvalue().decode(errors="replace") for stream in (stdout, stderr))
    get_settings.cache_clear()
    return subprocess.CompletedProcess(["lem", *args], code, out, err)
