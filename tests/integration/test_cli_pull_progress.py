"""`corral pull` prints its progress in Ollama's order: manifest, layer bars, then the closing statuses."""

from __future__ import annotations

import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.integration


def test_cli_pull_prints_statuses_below_the_layer_bars(server: ServerProcess) -> None:
    done = server.cli("pull", "smollm2:135m", timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    bars = [i for i, line in enumerate(lines) if line.startswith("pulling ") and line != "pulling manifest"]
    assert lines[0] == "pulling manifest"
    assert bars == list(range(1, len(bars) + 1)) and len(bars) >= 2, lines  # model, template, ... config
    assert lines[len(bars) + 1:] == ["verifying sha256 digest", "writing manifest", "success"], lines
