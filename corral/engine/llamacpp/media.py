"""Images for a model with a projector: llama.cpp's multimodal library (libmtmd) in the runner.

Owns the mtmd context of one runner (`Vision`, loaded from the projector GGUF with the text model),
the turn of a prompt plus images into one token list with image spans (`Vision.prepare`, run on
a worker thread before the request reaches the loop by `prepare_ahead`), and the decoding of those
spans as embeddings inside the batching loop (`Vision.decode_pending`).

Prompt contract (the engine's, see `GenerateParams`): image N of the request goes where the
prompt says `[img-N]` (Ollama's tags); each tag becomes the private mtmd media marker, so text a
user typed cannot forge one, and mtmd adds what the model wants around an image (Gemma 3's
`<start_of_image>`, ...). An image the prompt does not place is a 400, never dropped.

A sequence's prompt is a list of token ids in which each image chunk occupies its `n_tokens`
positions with negative pseudo-ids derived from the image's hash: the loop's prefix cache then
reuses an image's KV for a request that repeats it (multi-turn chat about one picture) and never
for a different image. The loop feeds text runs in its regular steps; an image run is encoded
(`mtmd_encode_chunk`, the vision tower) on a worker thread while the loop keeps stepping the other
sequences, then decoded as embeddings in its own `llama_batch`, one batch-sized piece per loop
iteration between the regular steps, so no sequence waits for another's images. Models whose
images use M-RoPE positions (Qwen2-VL, Qwen2.5-VL) are refused with a 400: positions here are token
indices.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import logging
import re
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, Protocol

import llama_cpp as ll
import llama_cpp.mtmd_cpp as mt
import numpy as np
import numpy.typing as npt

from corral.errors import BadRequestError, CorralError

from .cstruct import new, set_fields
from .loopmodel import LoopModel
from .model import LlamaModel

log = logging.getLogger(__name__)

IMAGE_TAG = re.compile(r"\[img-(\d+)\]")
MARKER = "<__corral_media_5c1f0e__>"
NO_VISION = (
    "this model has no projector layer, so it cannot read images (a vision tower inside the model's own "
    "GGUF, as in Ollama's newer library models, is not readable by llama.cpp: create the model from a "
    "GGUF and its mmproj file)"
)
MROPE = (
    "this model's projector places images with M-RoPE positions (Qwen2-VL / Qwen2.5-VL family), "
    "which corral's batching loop does not support yet"
)
IMAGE_FORMATS = "JPEG, PNG, BMP, GIF, TGA, PSD, HDR and PNM"
_PSEUDO_RANGE = 2**31 - 2
GGML_LOG_WARN, GGML_LOG_CONT = 3, 5
IDLE_WAIT_S = 0.05  # how long the loop waits for an encoder with nothing else to do


def place_images(prompt: str, n_images: int) -> tuple[str, list[int]]:
    """Replace the first `[img-N]` tag of each image with the media marker.

    Returns the text and the image indices in the order their markers appear (the order mtmd
    consumes bitmaps). Tags naming no image stay text; an image without a tag is a 400.
    """
    order: list[int] = []
    seen: set[int] = set()

    def swap(match: re.Match[str]) -> str:
        i = int(match.group(1))
        if i >= n_images or i in seen:
            return match.group(0)
        seen.add(i)
        order.append(i)
        return MARKER

    text = IMAGE_TAG.sub(swap, prompt.replace(MARKER, ""))
    missing = [i for i in range(n_images) if i not in seen]
    if missing:
        raise BadRequestError(
            f"image {missing[0]} is not placed in the prompt: the prompt (after its template) has no "
            f"[img-{missing[0]}] tag for it"
        )
    return text, order


def pseudo_tokens(image_id: str, n: int) -> list[int]:
    """Negative stand-ins for an image's `n` positions, equal only for the same image."""
    h = int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8).digest(), "little")
    return [-1 - (h + i) % _PSEUDO_RANGE for i in range(n)]


@dataclass
class ImageSpan:
    """One image chunk of a prompt: `n_tokens` positions from token index `start`."""

    start: int
    n_tokens: int
    chunk: Any  # const mtmd_input_chunk * (owned by the prompt's chunk list)
    non_causal: bool = False
    embd: npt.NDArray[np.float32] | None = None  # encoded, while decoding is under way
    encoding: Future[npt.NDArray[np.float32]] | None = None  # the vision tower at work on it

    @property
    def end(self) -> int:
        return self.start + self.n_tokens


@dataclass
class MediaPrompt:
    """The image spans of one prompt; owns the mtmd chunk list they point into."""

    spans: list[ImageSpan] = field(default_factory=list)
    chunks: Any = None

    def __post_init__(self) -> None:
        if self.chunks is not None:
            weakref.finalize(self, mt.mtmd_input_chunks_free, self.chunks)

    def text_end(self, pos: int, end: int) -> int:
        """How far from `pos` (at most `end`) the prompt is plain text: `pos` when an image is next."""
        for span in self.spans:
            if span.end > pos:
                return min(end, max(span.start, pos))
        return end

    def pending(self, pos: int) -> ImageSpan | None:
        """The image whose decoding position `pos` is at (its start or inside it)."""
        for span in self.spans:
            if span.start <= pos < span.end:
                return span
        return None

    def align(self, n_cached: int) -> int:
        """A reusable cache length: never part of an image (an image is decoded whole or again)."""
        span = self.pending(n_cached)
        return span.start if span is not None and span.start < n_cached else n_cached


class PromptTokens(list[int]):
    """A prompt's token ids, carrying its image spans through the loop's admission queue."""

    media: MediaPrompt

    def __init__(self, tokens: Iterable[int], media: MediaPrompt) -> None:
        super().__init__(tokens)
        self.media = media


class Slotted(Protocol):
    seq_id: int
    cached: list[int]


class Prefilling(Protocol):
    """What `decode_pending` reads and advances on a sequence of the batching loop."""

    rid: int
    tokens: list[int]
    n_prompt: int
    n_past: int
    next_token: int | None
    media: MediaPrompt | None

    @property
    def slot(self) -> Slotted: ...


class EmbdBatch:
    """A preallocated llama_batch of embeddings (one sequence per entry), numpy-backed."""

    def __init__(self, capacity: int, n_embd: int) -> None:
        self.capacity = capacity
        self.embd = np.zeros((capacity, n_embd), dtype=np.float32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        ptr_t = ctypes.POINTER(ctypes.c_int32)
        base = self.seq.ctypes.data
        self._seq_ptrs = (ptr_t * capacity)(*[ctypes.cast(base + 4 * i, ptr_t) for i in range(capacity)])
        self.struct = new(
            ll.llama_batch,
            n_tokens=0,
            token=ctypes.POINTER(ctypes.c_int32)(),
            embd=self.embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            pos=self.pos.ctypes.data_as(ptr_t),
            n_seq_id=self.n_seq_id.ctypes.data_as(ptr_t),
            seq_id=ctypes.cast(self._seq_ptrs, ctypes.POINTER(ptr_t)),
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )

    def fill(self, rows: npt.NDArray[np.float32], pos0: int, seq: int, want_last: bool) -> None:
        n = rows.shape[0]
        self.embd[:n] = rows
        self.pos[:n] = np.arange(pos0, pos0 + n, dtype=np.int32)
        self.seq[:n] = seq
        self.logits[:n] = 0
        self.logits[n - 1] = 1 if want_last else 0
        self.struct.n_tokens = n


_log_level = [0]


@ll.llama_log_callback  # type: ignore[untyped-decorator]
def _mtmd_log(level: int, text: bytes, _user: Any) -> None:
    """libmtmd's log without its per-request INFO lines (tokenize, encode): warnings and errors."""
    if level != GGML_LOG_CONT:
        _log_level[0] = level
    if _log_level[0] >= GGML_LOG_WARN:
        sys.stderr.write(text.decode(errors="replace"))


class Vision:
    """The mtmd context of a runner (projector + the text model). Loop thread only."""

    def __init__(self, model: LlamaModel, path: str, *, threads: int, warmup: bool = True) -> None:
        mt.mtmd_log_set(_mtmd_log, None)
        mt.mtmd_helper_log_set(_mtmd_log, None)
        params = set_fields(
            mt.mtmd_context_params_default(),
            use_gpu=False,
            n_threads=max(threads, 1),
            print_timings=False,
            media_marker=MARKER.encode(),
            warmup=warmup,
        )
        ctx = mt.mtmd_init_from_file(path.encode(), model.model, params)
        if not ctx:
            raise CorralError(f"unable to load the vision projector {path} for this model (see the runner log)")
        self._params = params  # keeps the marker string alive as long as the context
        self.ctx = ctx
        self.model = model
        if not mt.mtmd_support_vision(ctx):
            self.close()
            raise CorralError(f"the projector {path} has no vision encoder")
        self.mrope = bool(mt.mtmd_decode_use_mrope(ctx))
        self.n_embd = int(ll.llama_model_n_embd_inp(model.model))
        self.batch = EmbdBatch(model.batch.capacity, self.n_embd)
        # one encoder thread: the vision tower runs while the loop decodes (ctypes calls drop the GIL)
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtmd-encode")
        self._lock = threading.Lock()  # one mtmd call at a time: tokenizing (any thread) or encoding
        self._ready: dict[int, tuple[Any, PromptTokens]] = {}  # prepared ahead of the loop, by request

    def stash(self, params: Any) -> None:
        """Prepare a request's prompt and images before it reaches the loop (any thread)."""
        self._ready[id(params)] = (params, self.prepare(params.prompt, params.images))

    def take(self, params: Any) -> PromptTokens | None:
        """What `stash` prepared for this request, if anything."""
        got = self._ready.pop(id(params), None)
        return got[1] if got is not None and got[0] is params else None

    # --- admission ---------------------------------------------------------------------------
    def prepare(self, prompt: str, images: list[bytes], *, add_special: bool = True) -> PromptTokens:
        """Tokenize a prompt with its images into token ids plus image spans (loop thread)."""
        if self.mrope:
            raise BadRequestError(MROPE)
        text, order = place_images(prompt, len(images))
        chunks = mt.mtmd_input_chunks_init()
        media = MediaPrompt(chunks=chunks)
        bitmaps: list[Any] = []
        try:
            data = text.encode()
            inp = new(mt.mtmd_input_text, text=data, text_len=len(data), add_special=add_special, parse_special=True)
            with self._lock:
                bitmaps.extend(self._bitmap(images[i], i) for i in order)
                arr = (mt.mtmd_bitmap_p_ctypes * max(len(bitmaps), 1))(*bitmaps)
                rc = mt.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
        finally:
            for bm in bitmaps:
                mt.mtmd_bitmap_free(bm)
        if rc != 0:
            raise BadRequestError(f"the images could not be prepared for this model (mtmd_tokenize status {rc})")
        return PromptTokens(self._walk(chunks, media), media)

    def _bitmap(self, data: bytes, index: int) -> Any:
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bm = mt.mtmd_helper_bitmap_init_from_buf(self.ctx, buf, len(data), False) if data else None
        if not bm:
            raise BadRequestError(f"image {index} is not an image llama.cpp can read ({IMAGE_FORMATS})")
        if mt.mtmd_bitmap_is_audio(bm):
            mt.mtmd_bitmap_free(bm)
            raise BadRequestError(f"input {index} is audio; this model reads images only")
        return bm

    def _walk(self, chunks: Any, media: MediaPrompt) -> list[int]:
        tokens: list[int] = []
        for i in range(mt.mtmd_input_chunks_size(chunks)):
            chunk = mt.mtmd_input_chunks_get(chunks, i)
            kind = mt.mtmd_input_chunk_get_type(chunk)
            if kind == mt.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                ptr = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens.extend(ptr[i] for i in range(n.value))
                continue
            if kind != mt.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                raise BadRequestError("this model reads images only")
            n_tok = int(mt.mtmd_input_chunk_get_n_tokens(chunk))
            ident = (mt.mtmd_input_chunk_get_id(chunk) or b"").decode() or f"anon-{id(media)}-{i}"
            span = ImageSpan(len(tokens), n_tok, chunk, bool(mt.mtmd_decode_use_non_causal(self.ctx, chunk)))
            media.spans.append(span)
            tokens.extend(pseudo_tokens(ident, n_tok))
        return tokens

    # --- decoding (between the loop's regular steps) --------------------------------------------
    def decode_pending(
        self,
        seqs: Iterable[Prefilling],
        on_logits: Callable[[Any, int], None],
        fail: Callable[[Any, CorralError], None],
    ) -> bool:
        """Advance the oldest sequence whose prompt is at an encoded image by one batch of embeddings.

        Images not yet encoded are handed to the encoder thread (in request order); when every
        sequence here waits for one, this waits a moment for it instead of spinning. When the
        piece ends the prompt, its logits go to `on_logits`. Returns True when something was decoded.
        """
        seqs = list(seqs)
        todo = sorted((q for q in seqs if q.next_token is None and q.media is not None
                       and q.media.pending(q.n_past)), key=lambda q: q.rid)
        ready = [q for q in todo if self._encoded(q, fail)]
        if not ready:
            busy = [f for q in todo if (f := self._span(q).encoding) is not None]
            if busy and len(todo) == len(seqs):
                wait_futures(busy, timeout=IDLE_WAIT_S)
            return False
        seq = ready[0]
        span = self._span(seq)
        try:
            idx = self._decode_piece(seq, span)
        except CorralError as exc:
            span.embd = None
            fail(seq, exc)
            return True
        if idx is not None:
            on_logits(seq, idx)
        return True

    @staticmethod
    def _span(seq: Prefilling) -> ImageSpan:
        span = seq.media.pending(seq.n_past) if seq.media is not None else None
        assert span is not None
        return span

    def _encoded(self, seq: Prefilling, fail: Callable[[Any, CorralError], None]) -> bool:
        """Whether the image `seq` is at has its embeddings; starts or collects its encoding."""
        span = self._span(seq)
        if span.embd is not None:
            return True
        if span.encoding is None:
            span.encoding = self._encoder.submit(self._encode, seq.media, span)
            return False
        if not span.encoding.done():
            return False
        future, span.encoding = span.encoding, None
        try:
            span.embd = future.result()
        except CorralError as exc:
            fail(seq, exc)
            return False
        return True

    def _encode(self, media: MediaPrompt | None, span: ImageSpan) -> npt.NDArray[np.float32]:
        """The vision tower on one image (encoder thread; `media` keeps the chunk alive)."""
        del media
        with self._lock:
            if mt.mtmd_encode_chunk(self.ctx, span.chunk) != 0:
                raise CorralError("the vision encoder failed on this image")
            out = mt.mtmd_get_output_embd(self.ctx)
            return np.ctypeslib.as_array(out, shape=(span.n_tokens, self.n_embd)).copy()

    def _decode_piece(self, seq: Prefilling, span: ImageSpan) -> int | None:
        assert span.embd is not None
        lo = seq.n_past - span.start
        hi = span.n_tokens if span.non_causal else min(span.n_tokens, lo + self.batch.capacity)
        if hi - lo > self.batch.capacity:
            self.batch = EmbdBatch(hi - lo, self.n_embd)  # a non-causal image is decoded whole
        last = span.start + hi == seq.n_prompt
        self.batch.fill(span.embd[lo:hi], seq.n_past, seq.slot.seq_id, want_last=last)
        ctx = self.model.ctx
        if span.non_causal:
            ll.llama_set_causal_attn(ctx, False)
        try:
            rc = int(ll.llama_decode(ctx, self.batch.struct))
        finally:
            if span.non_causal:
                ll.llama_set_causal_attn(ctx, True)
        if rc == 1:
            raise CorralError("the KV cache is full: no room for this request's image")
        if rc != 0:
            raise CorralError(f"llama_decode failed on an image with status {rc}")
        seq.slot.cached.extend(seq.tokens[seq.n_past : span.start + hi])
        seq.n_past = span.start + hi
        if hi == span.n_tokens:
            span.embd = None
        return hi - lo - 1 if last else None

    def close(self) -> None:
        self._encoder.shutdown(wait=True)  # an encode in flight finishes before the context goes
        if self.ctx:
            mt.mtmd_free(self.ctx)
            self.ctx = None


# --- the batching loop's hooks (batch.py) ----------------------------------------------------------
def admit(vision: Vision | None, params: Any, num_ctx: int) -> PromptTokens:
    """The prompt tokens of a request with images, or a 400 saying why it cannot be read.

    An image prompt is never cut (cutting would split or drop an image), so one longer than the
    context is a 400; context shift is off for it (a shift would move image positions), so a
    generation that fills the context ends with "length".
    """
    if vision is None:
        raise BadRequestError(NO_VISION)
    tokens = vision.take(params)
    if tokens is None:
        tokens = vision.prepare(params.prompt, params.images)
    if len(tokens) > num_ctx - 1:
        raise BadRequestError(
            f"the prompt with its images is {len(tokens)} tokens, more than the context window "
            f"num_ctx={num_ctx} holds; raise num_ctx or send fewer or smaller images"
        )
    params.shift = False
    return tokens


async def prepare_ahead(vision: Vision | None, params: Any) -> None:
    """Decode and tokenize a request's images on a worker thread before it reaches the loop, so
    reading and resizing pictures never holds the loop up (a bad image raises its 400 here)."""
    if vision is not None and params.images:
        await asyncio.to_thread(vision.stash, params)


def align(model: LoopModel, slot: Slotted, tokens: list[int], n_past: int) -> int:
    """The reused cache length of a seated prompt, backed off to the start of an image it ends in."""
    if not isinstance(tokens, PromptTokens):
        return n_past
    keep = tokens.media.align(n_past)
    if keep < n_past:
        model.seq_rm(slot.seq_id, keep, -1)
        slot.cached = slot.cached[:keep]
    return keep


def open_vision(paths: list[str], model: LlamaModel, threads: int) -> Vision | None:
    """The runner's `Vision` for its `--mmproj` projectors (none: a text-only runner)."""
    if not paths:
        return None
    if len(paths) > 1:
        raise CorralError(f"a model can have one vision projector; this one has {len(paths)}")
    return Vision(model, paths[0], threads=threads)
