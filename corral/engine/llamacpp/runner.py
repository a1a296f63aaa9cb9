"""Entry point of a runner child process: `python -m corral.engine.llamacpp.runner --model ...`.

Owns process start-up (argument parsing, model load, the batching thread) and the Unix-socket
server speaking `protocol.py`. The asyncio main thread does only socket I/O; the one model thread
runs `BatchLoop` and reports back through `loop.call_soon_threadsafe`. Prints one JSON line
`{"ready": true, ...}` to stdout once the model is loaded; on a load failure it prints the reason
to stderr and exits with status 1.

A `shutdown` request (or the parent's death) stops it at once: no new connections, the model
thread ends every sequence with an error event after at most the step in progress, the
connections write those, and the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
import threading
from dataclasses import asdict
from typing import Any

from corral.errors import BadRequestError, CorralError

from . import offload, rpcdev
from . import protocol as proto
from .batch import UNLOADED, BatchLoop
from .loopio import Call, Cancel, Event, Failure, Generate, Out, Reply, Stop
from .media import open_vision, prepare_ahead
from .model import ContextConfig, LlamaModel
from .promptcache import SlotCache, open_cache
from .rerank import RANK_NO_EMBED, is_rank, rerank, token_pieces, tokenize_text
from .spec import can_draft, open_draft
from .tuning import flash_attn_for

STOP_STEP_TIMEOUT = 10.0  # the model thread finishes the step in progress before it stops
STOP_FLUSH_TIMEOUT = 1.0  # for the connections to write their final error events
CACHE_FLUSH_TIMEOUT = 3.0  # for the prompt cache's disk writes at exit (the parent waits 5 s)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="corral-runner")
    p.add_argument("--model", required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--num-ctx", type=int, default=4096)
    p.add_argument("--num-parallel", type=int, default=1)
    p.add_argument("--num-batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-threadpool", action="store_true", help="let ggml create a pool per decode")
    p.add_argument("--poll", type=int, default=50, help="threadpool busy-wait level, 0-100")
    p.add_argument("--embedding", action="store_true")
    p.add_argument("--flash-attn", choices=["on", "off", "auto"], default="auto")
    p.add_argument("--kv-cache-type", choices=["f16", "q8_0", "q4_0"], default="f16")
    p.add_argument("--mmap", choices=["auto", "on", "off"], default="auto", help="how the weights are loaded")
    p.add_argument("--max-line", type=int, default=proto.MAX_LINE, help="largest request line in bytes")
    p.add_argument("--kv-unified", action="store_true", help="one KV buffer for all sequences (not batch-invariant)")
    p.add_argument("--lora", action="append", default=[])
    p.add_argument("--no-extra-bufts", action="store_true", help="no weight repacking (llama-server's --no-repack)")
    p.add_argument("--rpc", action="append", default=[], help="an RPC worker (host:port) to offload layers to")
    p.add_argument("--rpc-split", default="", help="shares of the layers: this machine, then each --rpc worker")
    offload.add_arguments(p)
    p.add_argument("--mmproj", action="append", default=[], help="vision projector GGUF (libmtmd)")
    p.add_argument("--no-speculative", action="store_true", help="no draft tokens (plain decoding)")
    p.add_argument("--draft", default="", help="a draft model's GGUF (same vocabulary) for speculative decoding")
    p.add_argument("--cache-ram", type=int, default=0, help="bytes of memory for the prompt cache (0 = off)")
    p.add_argument("--cache-disk", default="", help="directory of the prompt cache's disk tier")
    p.add_argument("--cache-disk-max", type=int, default=0, help="size bound of the disk tier in bytes")
    return p.parse_args(argv)


class RunnerServer:
    """Socket side of the runner: one connection per request."""

    def __init__(self, model: LlamaModel, loop: BatchLoop, *, embedding: bool, num_ctx: int, max_line: int) -> None:
        self.model = model
        self.batch = loop
        self.embedding = embedding
        self.num_ctx = num_ctx
        self.max_line = max_line
        self.ids = itertools.count(1)
        self.done = asyncio.Event()
        self.connections: set[asyncio.Task[Any]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            await self._serve_one(reader, writer)
        except ConnectionError:
            pass
        except Exception as exc:  # never let a bad request end the connection without an answer
            with contextlib.suppress(Exception):
                await self._send(writer, proto.error_event(exc))
        finally:
            self.connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await self._read_request(reader)
        if not line:
            return
        req = proto.decode(line)
        op = req.get("op")
        if op == "shutdown":
            self.done.set()  # first: the client may close before reading the answer
            await self._send(writer, {"status": "ok"})
        elif op == "health":
            await self._send(writer, {"status": "ok"})
        elif self.done.is_set():
            await self._send(writer, proto.error_event(CorralError(UNLOADED)))
        elif op == "generate":
            await self._generate(req, reader, writer)
        elif op in proto.OPS:
            await self._send(writer, await self._call(self._sync_op(req)))
        else:
            await self._send(writer, proto.error_event(BadRequestError(f"unknown op {op!r}")))

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        """The request line. An over-long one is read to its end (so that the client, still writing,
        can read the answer) and refused with a 413 error."""
        try:
            return await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        except asyncio.LimitOverrunError:
            pass
        size = 0
        while chunk := await reader.read(1024 * 1024):
            size += len(chunk)
            if b"\n" in chunk:
                break
        raise proto.too_large(size, self.max_line)

    async def _send(self, writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(proto.encode(obj))
        await writer.drain()

    def _sync_op(self, req: dict[str, Any]) -> Any:
        op = req["op"]
        m = self.model
        if op == "tokenize":
            text, add, parse = str(req.get("text", "")), bool(req.get("add_special")), req.get("parse_special", True)
            return lambda: {"tokens": tokenize_text(m, text, add_special=add, parse_special=bool(parse))}
        if op == "rerank":
            docs = [str(d) for d in req.get("documents", [])]
            return lambda: rerank(m, str(req.get("query", "")), docs, self.num_ctx)
        if op == "detokenize":
            return lambda: {"text": m.detokenize(list(req.get("tokens") or []))}
        if op == "pieces":
            return lambda: {"pieces": token_pieces(m, list(req.get("tokens") or []))}
        if op == "status":
            return self.batch.status
        return lambda: self._embed([str(x) for x in req.get("inputs", [])], bool(req.get("truncate", True)))

    def _embed(self, inputs: list[str], truncate: bool) -> dict[str, Any]:
        if is_rank(self.model):
            raise BadRequestError(RANK_NO_EMBED)
        out: list[list[float]] = []
        count = 0
        for text in inputs:
            tokens = self.model.tokenize(text)
            if len(tokens) > self.num_ctx:
                if not truncate:
                    raise BadRequestError("the input length exceeds the context length")
                tokens = tokens[: self.num_ctx]
            count += len(tokens)
            out.append(self.model.embed_one(tokens))
        return {"embeddings": out, "prompt_eval_count": count}

    async def _call(self, fn: Any) -> dict[str, Any]:
        aloop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = aloop.create_future()

        def settle(reply: Reply) -> None:
            if not fut.done():
                fut.set_result(proto.error_event(reply.error) if isinstance(reply, Failure) else reply)

        self.batch.submit(Call(fn, settle))
        return await fut

    async def _generate(self, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.embedding:
            await self._send(writer, proto.error_event(BadRequestError("this model does not support generate")))
            return
        params = proto.parse_generate(req)
        try:
            await prepare_ahead(self.batch.vision, params)  # images read and tokenized off the loop thread
        except CorralError as exc:
            await self._send(writer, proto.error_event(exc))
            return
        events: asyncio.Queue[Event] = asyncio.Queue()
        rid = next(self.ids)
        self.batch.submit(Generate(rid, params, events.put_nowait))
        eof = asyncio.ensure_future(reader.read(1))
        finished = False
        try:
            while True:
                get = asyncio.ensure_future(events.get())
                await asyncio.wait({get, eof}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    break
                ev = get.result()
                finished = isinstance(ev, Failure) or ev.done
                writer.write(proto.encode(event_dict(ev)))
                await writer.drain()
                if finished:
                    return
        finally:
            eof.cancel()
            if not finished:  # the client went away (EOF, or a write to a closed socket failed)
                self.batch.submit(Cancel(rid))


def event_dict(ev: Event) -> dict[str, Any]:
    """The protocol line of one loop event: `{"text", "logprobs"?}`, the final
    `{"text", "done", "done_reason", "metrics"}`, or `{"error": ...}`."""
    if isinstance(ev, Failure):
        return proto.error_event(ev.error)
    out: dict[str, Any] = {"text": ev.text}
    if ev.logprobs:
        out["logprobs"] = [proto.logprob_dict(lp) for lp in ev.logprobs]
    if ev.done:
        out["done"] = True
        out["done_reason"] = ev.done_reason
        out["metrics"] = asdict(ev.metrics) if ev.metrics is not None else {}
    return out


async def serve(
    args: argparse.Namespace, model: LlamaModel, loop: BatchLoop, ready_extra: dict[str, Any] | None = None
) -> None:
    server = RunnerServer(model, loop, embedding=args.embedding, num_ctx=args.num_ctx, max_line=args.max_line)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)
    aloop = asyncio.get_running_loop()

    def deliver(items: list[Out]) -> None:
        for emit, ev in items:
            emit(ev)

    def dispatch(items: list[Out]) -> None:
        aloop.call_soon_threadsafe(deliver, items)

    stopped = asyncio.Event()
    loop.dispatch = dispatch

    def on_stopped() -> None:
        aloop.call_soon_threadsafe(stopped.set)

    loop.on_stopped = on_stopped
    srv = await asyncio.start_unix_server(server.handle, path=args.socket, limit=args.max_line)
    ready = {"ready": True, "pid": os.getpid(), "n_embd": model.n_embd, "n_ctx_train": model.n_ctx_train}
    ready.update(ready_extra or {})
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    watch = asyncio.ensure_future(_exit_with_parent(server.done, os.getppid()))
    try:
        await server.done.wait()
    finally:
        watch.cancel()
        srv.close()
        await _stop_batch(server, loop, stopped)


async def _stop_batch(server: RunnerServer, loop: BatchLoop, stopped: asyncio.Event) -> None:
    """Stop the model thread (it fails its sequences with an error event, after at most the step
    in progress), then give the connections a moment to write those last events."""
    loop.submit(Stop())
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stopped.wait(), timeout=STOP_STEP_TIMEOUT)
    if server.connections:
        await asyncio.wait(set(server.connections), timeout=STOP_FLUSH_TIMEOUT)


async def _exit_with_parent(done: asyncio.Event, parent: int, every: float = 1.0) -> None:
    """A runner never outlives its server: when the parent is gone (reparented), stop."""
    while not done.is_set():
        await asyncio.sleep(every)
        if os.getppid() != parent:
            done.set()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads if args.threads > 0 else max(os.cpu_count() or 1, 1)
    parallel = 1 if args.embedding else max(args.num_parallel, 1)
    # RPC workers count as this CPU: the tested ones are CPUs, and a split must answer as a local run
    cpu_only = offload.gpu_params(args).n_gpu_layers == 0
    args.flash_attn = flash_attn_for(args.flash_attn, cpu_only=cpu_only, kv_cache_type=args.kv_cache_type)
    cfg = ContextConfig(
        n_ctx=args.num_ctx * parallel,
        n_seq=parallel,
        n_batch=min(args.num_batch, args.num_ctx * parallel) if not args.embedding else args.num_ctx,
        threads=threads,
        embedding=args.embedding,
        flash_attn=args.flash_attn,
        kv_cache_type=args.kv_cache_type,
        kv_unified=args.kv_unified,
        threadpool=not args.no_threadpool,
        poll=args.poll,
    )
    try:
        load_log = offload.LoadLog()
        rpc = rpcdev.from_args(args.rpc, args.rpc_split, model_path=args.model, n_ctx=cfg.n_ctx)
        model = LlamaModel(
            args.model, cfg, mmap=args.mmap, lora=args.lora, extra_bufts=not args.no_extra_bufts,
            gpu=offload.gpu_params(args), rpc=rpc,
        )
        model.warmup()
        vision = open_vision(args.mmproj, model, threads)
        drafter = open_draft(args, model)
    except CorralError as exc:
        print(f"error loading model: {exc}", file=sys.stderr, flush=True)
        return 1
    cache = None if args.embedding else _prompt_cache(args, model)
    loop = BatchLoop(model, num_ctx=args.num_ctx, num_parallel=parallel, cache=cache)
    loop.vision = vision
    loop.spec.enabled = not args.no_speculative and can_draft(model)
    loop.spec.drafter = drafter
    loop.spec.lone = not cpu_only
    thread = threading.Thread(target=loop.run, name="llama-batch", daemon=True)
    thread.start()
    try:
        asyncio.run(serve(args, model, loop, {**offload.ready_fields(load_log), **rpcdev.ready_fields(rpc)}))
    finally:
        loop.submit(Stop())  # no-op when serve() stopped it already
        thread.join(timeout=STOP_STEP_TIMEOUT)
        if cache is not None:
            cache.close(CACHE_FLUSH_TIMEOUT)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)
    return 0


def _prompt_cache(args: argparse.Namespace, model: LlamaModel) -> SlotCache | None:
    shape = {
        "num_ctx": args.num_ctx,
        "kv_cache_type": args.kv_cache_type,
        "flash_attn": args.flash_attn,
        "kv_unified": args.kv_unified,
        "lora": list(args.lora),
        "mmproj": list(args.mmproj),  # image KV is keyed by image hash: the projector shapes it
    }
    return open_cache(
        model,
        args.model,
        ram_bytes=args.cache_ram,
        disk_root=args.cache_disk,
        disk_max=args.cache_disk_max,
        options=shape,
    )


def _exit(code: int) -> None:
    """Leave without interpreter finalization: tearing down numpy, the bindings' thousands of ctypes
    objects and a last GC pass costs a few hundred ms of CPU (more on a busy machine) and frees
    nothing the kernel does not take back at once when the process ends."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
