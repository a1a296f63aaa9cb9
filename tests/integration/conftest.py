"""Shared real servers for the integration tests: one per test session, with the models pulled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Loop, ServerProcess, running_server


def _pull(server: ServerProcess, model: str) -> None:
    with httpx.Client(base_url=server.url, timeout=300, trust_env=False) as c:
        r = c.post("/api/pull", json={"model": model, "stream": False})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "success"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real `corral serve` with smollm2:135m pulled, 4 parallel sequences, 2048 context."""
    home: Path = tmp_path_factory.mktemp("corral-home")
    env = {"CORRAL_NUM_PARALLEL": "4", "CORRAL_CONTEXT_LENGTH": "2048", "CORRAL_KEEP_ALIVE": "10m"}
    with running_server(home, env) as srv:
        _pull(srv, "smollm2:135m")
        yield srv


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as c:
        yield c


@pytest.fixture(scope="module")
def aloop() -> Iterator[Loop]:
    """An event loop on a thread for a module's sync tests that share one runner."""
    lp = Loop()
    yield lp
    lp.stop()
