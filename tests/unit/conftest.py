"""Fixtures shared by the unit tests (helpers they import live in tests/appenv.py and tests/support.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """`pytest.mark.anyio` tests run on asyncio (the server's loop)."""
    return "asyncio"
