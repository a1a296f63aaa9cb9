"""Slot bookkeeping and context arithmetic for the batching loop (pure, no llama.cpp calls).

A slot is one llama.cpp sequence id (0..P-1) with the tokens whose KV it currently holds. This
module owns: choosing a slot for a new prompt (longest cached prefix among idle slots, or a copy
of a longer prefix held by any other slot), the prompt truncation rule and the generation-time
context-shift arithmetic of spec §9. It does not touch the KV cache itself; the loop applies the
`SlotPlan` it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.errors import BadRequestError

PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; shorten the "
    "prompt, adjust the context length in settings, or use a model with a longer context length"
)


@dataclass
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)
    busy: bool = False
    last_used: float = 0.0


@dataclass(frozen=True)
class SlotPlan:
    """How to seat a prompt: keep `keep` cached tokens of `slot`, optionally after copying
    `copy_len` tokens from `copy_from` (which then replaces the slot's own cache), or after
    restoring `restore` tokens from the prompt cache into it."""

    slot: int
    keep: int
    copy_from: int | None = None
    copy_len: int = 0
    restore: int = 0

    @property
    def reused(self) -> int:
        if self.restore:
            return self.restore
        return self.copy_len if self.copy_from is not None else self.keep


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_slot(slots: list[Slot], prompt: list[int], min_copy_gain: int = 0, cached: int = 0) -> SlotPlan | None:
    """Pick an idle slot for `prompt`; None when every slot is busy.

    The idle slot with the longest common prefix wins (ties: least recently used). If another
    slot (busy or idle) holds a prefix at least `min_copy_gain` tokens longer, it is copied in
    instead. At most len(prompt)-1 tokens are reused so the last prompt token is always evaluated.
    A copy is not free (with per-sequence KV streams it copies the whole stream and, measured,
    slows later steps), so the batching loop only copies when it saves real prefill work.
    `cached` is the prefix the prompt cache holds: when no slot offers as much, it is restored
    into the idle slot least worth keeping (empty first, then least recently used).
    """
    idle = [s for s in slots if not s.busy]
    if not idle:
        return None
    limit = max(len(prompt) - 1, 0)
    scored = [(min(common_prefix(s.cached, prompt), limit), s) for s in idle]
    best_own = max(n for n, _ in scored)
    coldest = min(idle, key=lambda s: (bool(s.cached), s.last_used))
    held = max(min(common_prefix(s.cached, prompt), limit) for s in slots)
    if min(cached, limit) >= max(best_own + max(min_copy_gain, 1), held + 1):
        return SlotPlan(slot=coldest.seq_id, keep=0, restore=min(cached, limit))
    if best_own == 0:
        chosen = coldest
    else:
        chosen = min((s for n, s in scored if n == best_own), key=lambda s: s.last_used)
    own = min(common_prefix(chosen.cached, prompt), limit)
    donor, donor_len = None, own
    for s in slots:
        if s is chosen:
            continue
        n = min(common_prefix(s.cached, prompt), limit)
        if n > donor_len and n >= own + max(min_copy_gain, 1):
            donor, donor_len = s, n
    if donor is not None:
        return SlotPlan(slot=chosen.seq_id, keep=0, copy_from=donor.seq_id, copy_len=donor_len)
    return SlotPlan(slot=chosen.seq_id, keep=own)


def seat_order(prompts: list[list[int]], slots: list[Slot], cached: list[int]) -> list[int]:
    """The order in which to seat the first waiting prompts that fit in the idle slots now.

    Every one of them gets a slot this round, so the order only decides who picks first: the
    prompts with the most reusable state (an idle slot's prefix or a prompt-cache entry,
    `cached[i]`) first, so that a cold prompt does not take the slot that holds the next turn of
    a conversation. Returns indices into `prompts` (FIFO among equals).
    """
    idle = [s for s in slots if not s.busy]
    n = min(len(prompts), len(idle))

    def warmth(i: int) -> int:
        own = max((common_prefix(s.cached, prompts[i]) for s in idle), default=0)
        return max(own, cached[i] if i < len(cached) else 0)

    head = sorted(range(n), key=lambda i: -warmth(i))
    return head + list(range(n, len(prompts)))


def keep_count(num_keep: int, add_bos: bool, num_ctx: int) -> int:
    """Tokens protected at the start of a sequence on truncation/shift (num_keep + BOS)."""
    keep = max(num_keep, 0) + (1 if add_bos else 0)
    return min(keep, num_ctx - 1)


def truncate_prompt(tokens: list[int], num_ctx: int, keep: int, *, shift: bool) -> list[int]:
    """Apply spec §9 to a prompt longer than num_ctx-1 tokens; other prompts pass unchanged.

    With shift, keep the first `keep` tokens and the tail so the result has
    `num_ctx - max((num_ctx - keep)//2, 1)` tokens; without, raise the spec's 400.
    """
    if len(tokens) <= num_ctx - 1:
        return tokens
    if not shift:
        raise BadRequestError(PROMPT_TOO_LONG)
    target = num_ctx - max((num_ctx - keep) // 2, 1)
    keep = min(keep, target)
    tail = target - keep
    return tokens[:keep] + (tokens[len(tokens) - tail :] if tail > 0 else [])


def shift_discard(num_ctx: int, keep: int) -> int:
    """Tokens dropped after `keep` when a generating sequence reaches num_ctx."""
    return max((num_ctx - keep) // 2, 1)
