"""Per-request LoRA scales in the batching loop (llama-server's `lora` request field).

llama.cpp applies adapters per context (`llama_set_adapters_lora`), not per sequence, so one
`llama_decode` runs every sequence in it with the same scales. This module owns the two rules that
follow, as llama-server does them:

- **One adapter configuration per step.** `select` keeps the sequences of one configuration for
  the next decode and sets the context's scales when they change. Configurations take turns
  (round robin), so concurrent requests with different scales all progress, each at its share.
- **A KV cache is only reused under the scales it was computed with.** `fit` changes a slot plan
  so that a prompt never reuses (or copies) cached tokens computed with other scales.

A request without `lora` runs with every adapter at scale 1.0 (as loaded). The loop calls these
hooks on its own thread; with no adapters loaded they return their input unchanged.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

import llama_cpp as ll

from corral.engine.base import GenerateParams
from corral.errors import BadRequestError, CorralError

from . import slots as sl

Scales = tuple[float, ...]


class _HasParams(Protocol):
    @property
    def params(self) -> GenerateParams: ...


S = TypeVar("S", bound=_HasParams)


class LoraScales:
    """The adapters of one context and the scales currently set on it."""

    def __init__(self, ctx: Any, adapters: Sequence[Any]) -> None:
        self.ctx = ctx
        self.adapters = list(adapters)
        self.default: Scales = tuple(1.0 for _ in self.adapters)
        self.current: Scales = self.default  # what the loader set
        self.slot_keys: dict[int, Scales] = {}  # seq_id -> scales its cached KV was computed with
        self._last: Scales | None = None

    def key(self, params: GenerateParams) -> Scales:
        """The scales a request runs with (checked against the loaded adapters)."""
        want = params.lora
        if want is None:
            return self.default
        if len(want) != len(self.adapters):
            raise BadRequestError(
                f"the request sets scales for {len(want)} LoRA adapters; this model has {len(self.adapters)}"
            )
        return tuple(float(s) for s in want)

    def apply(self, scales: Scales) -> None:
        if scales == self.current:
            return
        n = len(self.adapters)
        arr = (ll.llama_adapter_lora_p_ctypes * n)(*self.adapters)
        vals = (ctypes.c_float * n)(*scales)
        rc = ll.llama_set_adapters_lora(self.ctx, arr, n, vals)
        if rc != 0:
            raise CorralError(f"llama.cpp refused the LoRA scales {list(scales)} (status {rc})")
        self.current = scales

    # --- batching-loop hooks -----------------------------------------------------------------
    def select(self, seqs: list[S]) -> list[S]:
        """The sequences to decode this step: those of one configuration, in turn. Sets the
        context's scales for them."""
        if not self.adapters or not seqs:
            return seqs
        groups: dict[Scales, list[S]] = {}
        for seq in seqs:
            groups.setdefault(self.key(seq.params), []).append(seq)
        if len(groups) == 1:
            (chosen,) = groups
        else:
            order = sorted(groups)
            after = [k for k in order if self._last is not None and k > self._last]
            chosen = after[0] if after else order[0]
        self._last = chosen
        self.apply(chosen)
        return groups[chosen]

    def runnable(self, seqs: Iterable[S]) -> Iterable[S]:
        """The sequences that may decode under the scales set now (for decodes outside `select`,
        such as image pieces); the others wait until `select` gives their configuration a turn."""
        if not self.adapters:
            return seqs
        return [s for s in seqs if self.key(s.params) == self.current]

    def fit(self, plan: sl.SlotPlan, params: GenerateParams) -> sl.SlotPlan:
        """`plan` without reuse of KV computed under other scales; records the slot's new scales.
        Refuses (400) scales that do not fit the loaded adapters, before the request is seated."""
        key = self.key(params)
        if not self.adapters:
            return plan
        own_ok = self.slot_keys.get(plan.slot, self.default) == key
        if getattr(plan, "restore", False):  # a stored KV state: the scales it was computed with are unknown
            plan = sl.SlotPlan(slot=plan.slot, keep=0)
        elif plan.copy_from is not None and self.slot_keys.get(plan.copy_from, self.default) != key:
            plan = sl.SlotPlan(slot=plan.slot, keep=0)
        elif plan.copy_from is None and not own_ok and plan.keep:
            plan = sl.SlotPlan(slot=plan.slot, keep=0)
        self.slot_keys[plan.slot] = key
        return plan
