"""Rendering of streamed progress (create, pull, push) as rich progress bars and status lines.

Follows Ollama's CLI: every new status line and every new digest's bar is appended below what
is already shown, in arrival order, so `pulling manifest` sits above the layer bars and
`verifying sha256 digest`, `writing manifest`, `success` below them. A status repeated by
consecutive events is shown once; a digest's later events update its bar in place.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from corral.schemas.native import ProgressResponse


def new_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class ProgressView:
    """Status lines and per-digest bars in arrival order; a rich renderable (for `Live`)."""

    def __init__(self, console: Console) -> None:
        self.bars = new_progress(console)  # never started: holds the tasks and the columns
        self._items: list[str | list[TaskID]] = []  # a status line, or a run of adjacent bars
        self._tasks: dict[str, TaskID] = {}
        self._status: str | None = None

    def update(self, event: ProgressResponse) -> None:
        if event.digest and event.total:
            task = self._tasks.get(event.digest)
            if task is None:
                task = self.bars.add_task(event.status, total=event.total)
                self._tasks[event.digest] = task
                if self._items and isinstance(self._items[-1], list):
                    self._items[-1] = [*self._items[-1], task]
                else:
                    self._items.append([task])
            self.bars.update(task, completed=event.completed or 0, description=event.status)
        elif event.status and event.status != self._status:
            self._status = event.status
            self._items.append(event.status)

    def lines(self) -> list[str]:
        """What is shown, one entry per line, without the bars' columns (for tests and logs)."""
        names = {t.id: t.description for t in self.bars.tasks}
        out: list[str] = []
        for item in list(self._items):
            out.extend([item] if isinstance(item, str) else [names[t] for t in item])
        return out

    def __rich__(self) -> RenderableType:
        tasks = {t.id: t for t in self.bars.tasks}
        parts: list[RenderableType] = []
        for item in list(self._items):
            if isinstance(item, str):
                parts.append(Text(item))
            else:
                parts.append(self.bars.make_tasks_table([tasks[t] for t in item]))
        return Group(*parts)


def render_progress(events: Iterable[ProgressResponse], console: Console) -> ProgressResponse | None:
    """Show the events as Ollama's CLI does (see the module docstring); return the last event."""
    last: ProgressResponse | None = None
    view = ProgressView(console)
    with Live(view, console=console, refresh_per_second=10, vertical_overflow="visible"):
        for event in events:
            last = event
            view.update(event)
    return last
