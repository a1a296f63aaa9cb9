"""The batching loop's LoRA rules (corral.engine.llamacpp.lora) without llama.cpp: one adapter
configuration per decode, configurations in turn, no KV reuse across scales."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from corral.engine.base import GenerateParams
from corral.engine.llamacpp import slots as sl
from corral.engine.llamacpp.lora import LoraScales, Scales
from corral.errors import BadRequestError


class Recording(LoraScales):
    def __init__(self, n: int) -> None:
        super().__init__(None, [object() for _ in range(n)])
        self.applied: list[Scales] = []

    def apply(self, scales: Scales) -> None:
        if scales != self.current:
            self.applied.append(scales)
            self.current = scales


@dataclass
class Seq:
    name: str
    params: GenerateParams


def seq(name: str, lora: tuple[float, ...] | None) -> Seq:
    return Seq(name, GenerateParams(prompt="x", lora=lora))


def test_one_configuration_per_step_in_turn() -> None:
    lora = Recording(1)
    seqs = [seq("a", (0.0,)), seq("b", None), seq("c", (0.0,)), seq("d", (1.0,))]
    picked = [[s.name for s in lora.select(seqs)] for _ in range(4)]
    # (0.0,) and (1.0,) (= None, the loaded scales) alternate; each step keeps one configuration
    assert picked == [["a", "c"], ["b", "d"], ["a", "c"], ["b", "d"]]
    assert lora.applied == [(0.0,), (1.0,), (0.0,), (1.0,)]


def test_a_single_configuration_never_touches_the_context() -> None:
    lora = Recording(2)
    seqs = [seq("a", None), seq("b", (1.0, 1.0))]
    assert [s.name for s in lora.select(seqs)] == ["a", "b"]
    assert lora.applied == []


def test_no_adapters_is_a_pass_through_and_scales_are_refused() -> None:
    lora = Recording(0)
    seqs = [seq("a", None)]
    assert lora.select(seqs) is seqs
    plan = sl.SlotPlan(slot=0, keep=5)
    assert lora.fit(plan, seqs[0].params) is plan
    with pytest.raises(BadRequestError, match="scales for 1 LoRA adapters; this model has 0"):
        lora.fit(plan, GenerateParams(prompt="x", lora=(1.0,)))


def test_kv_is_reused_only_under_the_same_scales() -> None:
    lora = Recording(1)
    one, zero = GenerateParams(prompt="x"), GenerateParams(prompt="x", lora=(0.0,))
    assert lora.fit(sl.SlotPlan(slot=0, keep=7), one) == sl.SlotPlan(slot=0, keep=7)  # loaded scales
    assert lora.fit(sl.SlotPlan(slot=0, keep=7), zero) == sl.SlotPlan(slot=0, keep=0)  # computed at 1.0
    assert lora.fit(sl.SlotPlan(slot=0, keep=7), zero) == sl.SlotPlan(slot=0, keep=7)  # now at 0.0
    copy = sl.SlotPlan(slot=1, keep=0, copy_from=0, copy_len=7)
    assert lora.fit(copy, one) == sl.SlotPlan(slot=1, keep=0)  # slot 0 holds 0.0 KV
    assert lora.fit(sl.SlotPlan(slot=2, keep=0, copy_from=0, copy_len=7), zero) == sl.SlotPlan(
        slot=2, keep=0, copy_from=0, copy_len=7
    )


def test_decodes_outside_select_wait_for_their_configuration() -> None:
    lora = Recording(1)
    seqs = [seq("a", (0.0,)), seq("b", None)]
    assert [s.name for s in lora.runnable(seqs)] == ["b"]  # the loaded scales are set
    lora.select([seqs[0]])
    assert [s.name for s in lora.runnable(seqs)] == ["a"]
    assert list(Recording(0).runnable(seqs)) == seqs


@pytest.mark.parametrize("lora", [None, (0.0, 0.5)])
def test_scales_cross_the_runner_protocol(lora: tuple[float, ...] | None) -> None:
    from corral.engine.llamacpp import protocol as proto

    req = proto.decode(proto.encode(proto.generate_request(GenerateParams(prompt="x", lora=lora))))
    assert proto.parse_generate(req).lora == lora
