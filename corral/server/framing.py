"""Wire framing shared by every stream: NDJSON lines and server-sent events.

The lowest layer of the server's streaming code: `corral.server.errors` writes its stream error
frames with it, and `corral.server.stream` / `corral.server.compat.openai_stream` their chunks.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def to_json_obj(item: Any) -> Any:
    if isinstance(item, BaseModel):
        return item.model_dump(mode="json", exclude_none=True, by_alias=True)
    return item


def ndjson_line(item: Any) -> bytes:
    if isinstance(item, BaseModel):  # a typed chunk: pydantic writes its JSON (4x cheaper than dump + dumps)
        return item.__pydantic_serializer__.to_json(item, exclude_none=True, by_alias=True) + b"\n"
    return (json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def sse_data(obj: Any) -> bytes:
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def sse_event(event: str, obj: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()
