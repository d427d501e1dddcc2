"""A live startup bar on a terminal (``launcher local`` with stderr a TTY), drawn by rich.

The bar stays on the last line; the launcher's own log records are printed above it while it is
shown (the root logger's handlers are swapped for one that prints through rich, then restored).
What the ranks write to the terminal themselves bypasses rich and may leave a stale copy of the bar
behind it.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

from .loadmeter import human_bytes
from .progress import Summary, duration

BAR_TASK = "loading"


class _Above(logging.Handler):
    """Log records printed through rich's console, above the live bar."""

    def __init__(self, console: Any, replaced: logging.Handler) -> None:
        super().__init__(replaced.level)
        self.console = console
        self.setFormatter(replaced.formatter)
        for record_filter in replaced.filters:
            self.addFilter(record_filter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)


def bar_detail(summary: Summary) -> str:
    """What follows the bar: bytes, rate, ETA, ranks."""
    total = f" / {human_bytes(summary.total)}" if summary.total else ""
    left = summary.eta_s
    eta = "" if summary.total is None else (" ETA ?" if left is None else f" ETA {duration(left)}")
    return (f"{human_bytes(summary.read)}{total} {human_bytes(summary.rate)}/s{eta} "
            f"ranks {summary.alive}/{summary.world} {duration(summary.elapsed_s)}")


class BarView:
    def __init__(self, stream: IO[str] | None = None, force_terminal: bool | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.console = Console(file=stream or sys.stderr, force_terminal=force_terminal)
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                            TextColumn("{task.fields[detail]}"), console=self.console, transient=False,
                            redirect_stdout=False, redirect_stderr=False, auto_refresh=False)  # drawn per sample
        self.task = self.bar.add_task(BAR_TASK, total=None, detail="")
        root = logging.getLogger()
        self._replaced = root.handlers[:]
        root.handlers[:] = [_Above(self.console, h) for h in self._replaced]
        self.bar.start()

    def show(self, summary: Summary, models: str | None) -> None:
        done = min(summary.read, summary.total) if summary.total else summary.read  # rchar may overshoot a bit
        self.bar.update(self.task, completed=done, total=summary.total, detail=bar_detail(summary), refresh=True)

    def close(self) -> None:
        self.bar.stop()
        logging.getLogger().handlers[:] = self._replaced
