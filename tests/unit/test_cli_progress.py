"""The CLI's pull/push/create progress display keeps Ollama's order: status lines and layer bars
appear in arrival order (bars under `pulling manifest`, the closing statuses under the bars)."""

from __future__ import annotations

import io

from rich.console import Console

from corral.cli.progress import ProgressView, render_progress
from corral.schemas.native import ProgressResponse

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def pull_events() -> list[ProgressResponse]:
    ev = [ProgressResponse(status="pulling manifest")]
    for completed in (0, 500, 1000):
        ev.append(ProgressResponse(status="pulling aaaaaaaaaaaa", digest=A, total=1000, completed=completed))
        ev.append(ProgressResponse(status="pulling bbbbbbbbbbbb", digest=B, total=10, completed=min(completed, 10)))
    ev += [ProgressResponse(status=s) for s in ("verifying sha256 digest", "writing manifest", "success")]
    return ev


ORDER = ["pulling manifest", "pulling aaaaaaaaaaaa", "pulling bbbbbbbbbbbb",
         "verifying sha256 digest", "writing manifest", "success"]


def test_rendered_pull_output_is_in_ollama_order() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    last = render_progress(pull_events(), console)
    assert last is not None and last.status == "success"
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    positions = []
    for wanted in ORDER:
        hits = [i for i, line in enumerate(lines) if line.startswith(wanted)]
        assert len(hits) == 1, (wanted, lines)
        positions.append(hits[0])
    assert positions == sorted(positions), lines
    assert len(lines) == len(ORDER)
    assert "1.0/1.0 kB" in lines[1]  # the bar shows its final state


def test_terminal_rendering_ends_with_the_same_order() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    render_progress(pull_events(), console)
    text = out.getvalue()
    final = [text.rindex(s) for s in ORDER]
    assert final == sorted(final)


def test_view_collapses_repeated_statuses_and_updates_bars_in_place() -> None:
    view = ProgressView(Console(file=io.StringIO()))
    for ev in [ProgressResponse(status="pulling manifest"), ProgressResponse(status="pulling manifest"),
               ProgressResponse(status="pulling aaaaaaaaaaaa", digest=A, total=10, completed=1),
               ProgressResponse(status="copying"), ProgressResponse(status="pulling aaaaaaaaaaaa", digest=A,
                                                                    total=10, completed=10),
               ProgressResponse(status="pulling bbbbbbbbbbbb", digest=B, total=10, completed=1),
               ProgressResponse(status="success")]:
        view.update(ev)
    assert view.lines() == ["pulling manifest", "pulling aaaaaaaaaaaa", "copying", "pulling bbbbbbbbbbbb", "success"]
    assert [t.completed for t in view.bars.tasks] == [10, 1]
