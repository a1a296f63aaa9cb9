"""Streaming helpers: NDJSON responses, stream-or-last semantics, and sync work in threads.

Ollama's convention (spec §1): `stream` defaults to true; a streamed response is NDJSON and an
error after the first byte becomes a final `{"error": "..."}` line with status 200; with
`stream: false` the last object (or the error, with its status) is returned as one JSON body.

A streamed response stops when its client goes away (Starlette cancels the body); a non-streaming
reply is collected under `until_disconnected`, which does the same for every non-streaming route:
the collecting is cancelled, which closes the runner stream and so frees the sequence and its slot.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive

from corral.errors import CorralError, RequestCanceledError
from corral.server.errors import native_stream_error, unexpected_error
from corral.server.framing import NDJSON, ndjson_line, to_json_obj

log = logging.getLogger(__name__)
T = TypeVar("T")
_DONE = object()


async def iterate_in_thread(gen: Iterator[T]) -> AsyncIterator[T]:
    """Drive a blocking generator in a worker thread, yielding its items to asyncio."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
    stop = threading.Event()

    def put(item: Any) -> None:
        fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        fut.result()

    def work() -> None:
        try:
            for item in gen:
                if stop.is_set():
                    break
                put(item)
            put(_DONE)
        except BaseException as exc:  # re-raised in the consumer
            put(exc)
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="corral-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not queue.empty():
            queue.get_nowait()


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work` (a non-streaming reply being collected) unless its client goes away first.

    A client that disconnects (timed out, closed) cancels the work and gets `RequestCanceledError`
    (499, for the request log): the cancellation closes the runner stream inside the work, which
    cancels the sequence in the runner and releases the scheduler slot, as a closed stream does.
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_client_gone(request.receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if task.cancel():  # still running: the client left, or this handler itself was cancelled
            await asyncio.wait({task})  # let it unwind (close the runner stream, release the lease)
    if task.cancelled():
        raise RequestCanceledError("client disconnected")
    return task.result()


async def _client_gone(receive: Receive) -> None:
    """Return when the ASGI server reports `http.disconnect` (the body has been read already, so
    `receive` blocks until then); a connection that cannot be read any more counts as gone."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception as exc:
        log.debug("receive failed while watching for a disconnect: %r", exc)


async def respond(items: AsyncIterator[Any], stream: bool | None) -> Response:
    """Stream items as NDJSON, or return the last one (spec: `waitForStream`)."""
    if stream is None or stream:
        first: Any = None
        try:
            first = await anext(items)
        except StopAsyncIteration:
            first = _DONE
        return StreamingResponse(_ndjson(first, items), media_type=NDJSON)
    last: Any = None
    async for item in items:
        last = item
    return JSONResponse(to_json_obj(last) if last is not None else {})


async def _ndjson(first: Any, items: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    if first is _DONE:
        return
    yield ndjson_line(first)
    try:
        async for item in items:
            yield ndjson_line(item)
    except CorralError as exc:
        yield native_stream_error(exc)
    except Exception as exc:
        yield native_stream_error(unexpected_error(exc))
