"""Run a command with its stderr on a pseudo-terminal (as a person at a terminal sees it) and stdout on a pipe."""

from __future__ import annotations

import os
import pty
import subprocess


def stderr_on_a_terminal(
    command: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[int, str, str]:
    """(exit status, stdout, everything written to the terminal, escape sequences included)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    return proc.wait(timeout), stdout.decode(), shown.decode(errors="replace")
