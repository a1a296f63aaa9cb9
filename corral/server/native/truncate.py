"""Fitting a chat into the context window in linear time (spec §1 /api/chat, Ollama's chatPrompt).

The rule is Ollama's: drop the oldest non-system messages until the rendered prompt fits
`num_ctx`, always keeping the system messages and the last message; images count 768 tokens each.
Ollama finds the cut by re-rendering and re-tokenizing the whole remaining conversation once per
dropped message, which is quadratic (3000 short messages took 38 s). Here the conversation is
rendered once, and the cut is searched from the other end: the system messages plus the last
message are rendered and counted, then candidate cuts predicted from sizes are rendered and
counted until the cut is exact or `MAX_CHECKS` candidates have been tried (the best one that fits
is used). A prediction walks from the latest measured cut, costing each message its share of the
tokens measured between the two latest cuts, in proportion to its size (markup included, images
exactly); when predictions stall the bracket is bisected, or the kept part doubled while no
too-long cut is known. Only prompts near `num_ctx` tokens are tokenized: never the whole
conversation unless it is predicted to fit (llama.cpp's tokenizer is itself quadratic in the
number of special tokens, 24 s for 10,000 ChatML turns). Each step awaits (rendering runs in a
worker thread), so a cancelled caller stops between steps.

The ids of the prompt it settles on, when it tokenized that prompt, come back with it (`Fitted.ids`)
so that the runner runs them instead of tokenizing the same text again (counted once).

Does not own rendering (the caller's `render`) nor tokenization (the caller's `tokenize`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from corral.schemas.native import Message

IMAGE_TOKENS = 768
"""What an image costs in the fit, as Ollama's chatPrompt counts it."""
MAX_CHECKS = 10
"""Most candidate cuts rendered and counted after the system-plus-last-message prompt."""

Render = Callable[[list[Message]], str]
Tokenize = Callable[[str], Awaitable[list[int]]]


@dataclass
class Fitted:
    """The prompt to run, its token count (None when too short to need counting), what was kept,
    and the prompt's ids when it was tokenized (special tokens parsed, no BOS: what runs)."""

    prompt: str
    tokens: int | None
    messages: list[Message]
    ids: list[int] | None = None


def message_bytes(msg: Message) -> int:
    """The size of what a template prints for a message, less its role markup."""
    size = len(msg.content.encode()) + len((msg.thinking or "").encode())
    if msg.tool_calls:
        size += len(json.dumps([c.dump() for c in msg.tool_calls], ensure_ascii=False).encode())
    return size


def image_tokens(messages: Sequence[Message]) -> int:
    return IMAGE_TOKENS * sum(len(m.images or ()) for m in messages)


@dataclass
class _Point:
    """A measured cut: the first `cut` droppable messages dropped, what that rendered to, its size
    (with images) and the rendering's ids."""

    cut: int
    prompt: str
    tokens: int
    ids: list[int]


class _Fitter:
    def __init__(self, messages: list[Message], render: Render, tokenize: Tokenize, num_ctx: int, full: str) -> None:
        self.messages = messages
        self.render = render
        self.tokenize = tokenize
        self.num_ctx = num_ctx
        self.full = full
        last = len(messages) - 1
        self.droppable = [i for i, m in enumerate(messages) if i < last and m.role != "system"]

    def fits(self, tokens: int) -> bool:
        return tokens < self.num_ctx

    def kept(self, cut: int) -> list[Message]:
        """The conversation without its first `cut` droppable messages."""
        gone = set(self.droppable[:cut])
        return [m for i, m in enumerate(self.messages) if i not in gone]

    async def measure(self, cut: int) -> _Point:
        kept = self.kept(cut)
        prompt = self.full if cut == 0 else await asyncio.to_thread(self.render, kept)
        ids = await self.tokenize(prompt)
        return _Point(cut, prompt, len(ids) + image_tokens(kept), ids)

    def costs(self, p: _Point | None, q: _Point) -> Callable[[int], float]:
        """Estimated tokens of the droppable message at position `k`. With two measured cuts
        `p` < `q`, the messages between them cost `p.tokens - q.tokens` together, shared out by
        size, each with its share of the markup between them; with only `q`, at `q`'s tokens per
        byte (the markup share then comes from the whole conversation's rendering)."""
        start = p.cut if p is not None else 0
        idx = self.droppable[start:q.cut]
        sizes = [message_bytes(self.messages[i]) for i in idx]
        upper = len(p.prompt.encode()) if p is not None else len(self.full.encode())
        markup = max(0.0, (upper - len(q.prompt.encode()) - sum(sizes)) / len(idx))
        if p is not None:
            imgs = sum(image_tokens([self.messages[i]]) for i in idx)
            text_tokens = max(0, p.tokens - q.tokens - imgs)
            weight = sum(sizes) + markup * len(idx)
        else:
            text_tokens = max(1, q.tokens - image_tokens(self.kept(q.cut)))
            weight = len(q.prompt.encode())
        per_byte = text_tokens / weight if weight > 0 else 0.0
        per_message = 0.0 if weight > 0 else text_tokens / len(idx)

        def cost(k: int) -> float:
            msg = self.messages[self.droppable[k]]
            return (message_bytes(msg) + markup) * per_byte + per_message + image_tokens([msg])

        return cost

    def predict(self, p: _Point | None, q: _Point, anchor: _Point) -> int:
        """The smallest cut predicted to fit, walking from `anchor` (a measured cut) with the
        costs `p` and `q` imply: back while messages still fit, or on until enough are dropped."""
        cost = self.costs(p, q)
        total, cut = float(anchor.tokens), anchor.cut
        if self.fits(anchor.tokens):
            while cut > 0 and self.fits(int(total + cost(cut - 1))):
                total += cost(cut - 1)
                cut -= 1
        else:
            while cut < len(self.droppable) and not self.fits(int(total)):
                total -= cost(cut)
                cut += 1
        return cut

    def fallback(self, lo: _Point | None, hi: _Point) -> int:
        """After a stalled prediction: bisect the bracket, or double the kept droppable messages
        while no cut is known to be too long."""
        if lo is not None:
            return (lo.cut + hi.cut) // 2
        kept = len(self.droppable) - hi.cut
        return max(0, hi.cut - kept - 1)

    async def search(self, hi: _Point) -> _Point:
        """The smallest cut that fits, from `hi` (the largest cut, which fits); or the best found
        in `MAX_CHECKS` candidates. A candidate is predicted from the two latest measurements;
        one that did not at least halve the distance (in tokens) to the limit of the measurement
        two before is replaced by `fallback`, so poor predictions cost logarithmically many."""
        lo: _Point | None = None
        recent: list[_Point] = [hi]
        distance = [abs(hi.tokens - self.num_ctx)]
        for _ in range(MAX_CHECKS):
            if hi.cut - (lo.cut if lo is not None else -1) <= 1:
                break
            if len(distance) >= 3 and distance[-1] > distance[-3] / 2:
                cut = self.fallback(lo, hi)
            else:
                pair = sorted(recent[-2:], key=lambda point: point.cut)
                cut = self.predict(pair[0] if len(pair) == 2 else None, pair[-1], recent[-1])
            floor = lo.cut + 1 if lo is not None else 0
            point = await self.measure(min(max(cut, floor), hi.cut - 1))
            if self.fits(point.tokens):
                hi = point
            else:
                lo = point
            recent.append(point)
            distance.append(abs(point.tokens - self.num_ctx))
        return hi

    async def run(self) -> Fitted:
        if not self.droppable:
            ids = await self.tokenize(self.full)
            return Fitted(self.full, len(ids) + image_tokens(self.messages), self.messages, ids)
        best = await self.measure(len(self.droppable))
        if self.fits(best.tokens):
            best = await self.search(best)
        return Fitted(best.prompt, best.tokens, self.kept(best.cut), best.ids)


async def fit_chat(messages: list[Message], render: Render, tokenize: Tokenize, num_ctx: int) -> Fitted:
    """The longest-suffix prompt that fits `num_ctx` (see the module doc), or the system messages
    plus the last message when even that does not fit. `render` runs in a worker thread."""
    full = await asyncio.to_thread(render, list(messages))
    if not messages or len(full.encode()) + 1 + image_tokens(messages) < num_ctx:
        return Fitted(full, None, list(messages))
    return await _Fitter(list(messages), render, tokenize, num_ctx, full).run()
