"""The collaborators a running server holds, injected by `create_app` (no module globals)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from corral.config import Settings
from corral.gguf import GGUFInfo, read_gguf
from corral.store.store import Store

if TYPE_CHECKING:
    from corral.scheduler import Scheduler


class GGUFCache:
    """Parsed GGUF metadata by blob path (blobs are immutable, so entries never go stale)."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._items: OrderedDict[Path, GGUFInfo] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> GGUFInfo:
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return self._items[path]
        info = read_gguf(path)
        with self._lock:
            self._items[path] = info
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return info


@dataclass
class AppContext:
    settings: Settings
    store: Store
    scheduler: Scheduler | None = None
    gguf: GGUFCache = field(default_factory=GGUFCache)
    extras: dict[str, Any] = field(default_factory=dict)


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]
