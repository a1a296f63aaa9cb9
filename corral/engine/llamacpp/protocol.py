"""The wire protocol between a runner process and its parent (newline-delimited JSON).

One Unix-socket connection per request; closing it cancels the request. The first line a client
sends is the request, `{"op": <op>, ...}` with op one of generate, embed, rerank, tokenize, detokenize, pieces,
status, health, shutdown. A generate request (its prompt: `context` ids, then the `prompt` text or its
ids `prompt_tokens`; see `GenerateParams`) streams `{"text", "logprobs"?}` events and ends with
`{"done": true, "done_reason", "metrics"}`; other ops answer with one JSON object. Any failure is
`{"error": {"status", "message"}}`. This module owns the encoding of requests/events to and from
the dataclasses of `corral.engine.base`; it does no I/O.

A message is one line of at most `MAX_LINE` bytes (both sides' stream limit). That bound is far
above anything the server accepts (its request-body limit, 64 MiB by default): a prompt, a long
`context`, a chat or a schema of any accepted size fits. A longer request is refused by the parent
before it is sent (413); a runner that still receives one answers with the same 413 error.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, fields
from typing import Any

from corral.engine.base import Chunk, GenerateParams, Metrics, TokenLogprob, TopLogprob
from corral.errors import BadRequestError, CorralError, PayloadTooLargeError, error_from_status
from corral.schemas.options import SampleOptions

OPS = frozenset({"generate", "embed", "rerank", "tokenize", "detokenize", "pieces", "status", "health", "shutdown"})
MAX_LINE = 1024 * 1024 * 1024


def too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the request is too large for the model runner ({size} bytes, limit {limit} bytes)")


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise CorralError(f"runner protocol error: {exc}") from None
    if not isinstance(obj, dict):
        raise CorralError("runner protocol error: expected a JSON object")
    return obj


def generate_request(params: GenerateParams) -> dict[str, Any]:
    opts = asdict(params.options)
    opts["stop"] = list(params.options.stop)
    return {
        "op": "generate",
        "prompt": params.prompt,
        **({"context": params.context} if params.context else {}),
        **({"prompt_tokens": params.prompt_tokens} if params.prompt_tokens is not None else {}),
        "options": opts,
        "grammar": params.grammar,
        "logprobs": params.logprobs,
        "top_logprobs": params.top_logprobs,
        "ignore_eos": params.ignore_eos,
        "truncate": params.truncate,
        "shift": params.shift,
        **({"images": [base64.b64encode(i).decode() for i in params.images]} if params.images else {}),
        "lora": list(params.lora) if params.lora is not None else None,
    }


def parse_generate(req: dict[str, Any]) -> GenerateParams:
    known = {f.name for f in fields(SampleOptions)}
    raw = {k: v for k, v in dict(req.get("options") or {}).items() if k in known}
    if "stop" in raw:
        raw["stop"] = tuple(raw["stop"])
    return GenerateParams(
        prompt=str(req.get("prompt", "")),
        context=_ids(req.get("context"), "context") or [],
        prompt_tokens=_ids(req.get("prompt_tokens"), "prompt_tokens"),
        options=SampleOptions(**raw),
        grammar=req.get("grammar"),
        logprobs=bool(req.get("logprobs", False)),
        top_logprobs=int(req.get("top_logprobs", 0)),
        ignore_eos=bool(req.get("ignore_eos", False)),
        truncate=bool(req.get("truncate", True)),
        shift=bool(req.get("shift", True)),
        images=[base64.b64decode(i) for i in req.get("images") or []],
        lora=tuple(float(s) for s in req["lora"]) if req.get("lora") is not None else None,
    )


def _ids(value: Any, name: str) -> list[int] | None:
    """A list of token ids as sent (each id is checked against the vocabulary by the loop)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequestError(f"{name} must be a list of token ids")
    return value


def error_event(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, CorralError):
        return {"error": {"status": exc.status, "message": exc.message}}
    return {"error": {"status": 500, "message": f"{type(exc).__name__}: {exc}"}}


def raise_if_error(event: dict[str, Any]) -> None:
    err = event.get("error")
    if err is not None:
        raise error_from_status(int(err.get("status", 500)), str(err.get("message", "runner error")))


def _logprob_from(d: dict[str, Any]) -> TokenLogprob:
    return TokenLogprob(
        token=d["token"],
        logprob=d["logprob"],
        bytes=list(d.get("bytes", [])),
        top_logprobs=[TopLogprob(**t) for t in d.get("top_logprobs", [])],
    )


def chunk_from_event(event: dict[str, Any]) -> Chunk:
    """Turn one generate event into a Chunk (errors raise their CorralError class)."""
    raise_if_error(event)
    logprobs = [_logprob_from(d) for d in event.get("logprobs", [])]
    if event.get("done"):
        m = event.get("metrics") or {}
        return Chunk(
            text=event.get("text", ""),
            logprobs=logprobs,
            done=True,
            done_reason=event.get("done_reason"),
            metrics=Metrics(**m),
        )
    return Chunk(text=event.get("text", ""), logprobs=logprobs)


def logprob_dict(lp: TokenLogprob) -> dict[str, Any]:
    return asdict(lp)
