"""What a slow command is doing, on stderr, only when stderr is a terminal: a line per finished step and a spinner
naming the current one, erased when the command ends, so stdout (a table, --json) gets nothing extra."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text


class Steps:
    """``with Steps("reading X") as steps: ...; steps.done("X: ok"); steps.step("reading Y")``."""

    def __init__(self, first: str, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.finished: list[RenderableType] = []
        self.spinner = Spinner("dots", first + " …")
        self.live = (
            Live(console=self.console, transient=True, refresh_per_second=8) if self.console.is_terminal else None
        )

    def __enter__(self) -> Steps:
        if self.live is not None:
            self.live.start()
            self._show()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.live is not None:
            self.live.stop()

    def step(self, text: str) -> None:
        """The spinner's text: what is being done now."""
        self.spinner.update(text=text + " …")
        self._show()

    def done(self, line: Text) -> None:
        """A finished step, one line above the spinner (cut, never wrapped)."""
        line.no_wrap, line.overflow = True, "ellipsis"
        self.finished.append(line)
        self._show()

    def _show(self) -> None:
        if self.live is not None:
            self.live.update(Group(*self.finished, self.spinner), refresh=True)
