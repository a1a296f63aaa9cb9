"""Rendering of streamed progress (create, pull, push) as rich progress bars and status lines."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

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


def render_progress(events: Iterable[ProgressResponse], console: Console) -> ProgressResponse | None:
    """Show one bar per digest and one line per plain status; return the last event."""
    last: ProgressResponse | None = None
    tasks: dict[str, TaskID] = {}
    with new_progress(console) as progress:
        for event in events:
            last = event
            if event.digest and event.total:
                task = tasks.get(event.digest)
                if task is None:
                    task = progress.add_task(event.status, total=event.total)
                    tasks[event.digest] = task
                progress.update(task, completed=event.completed or 0, description=event.status)
            else:
                progress.console.print(event.status)
    return last
