"""`top_ids`: the exact top-k selection that lets the sampler chain skip the rest of the vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.engine.llamacpp.sampling import top_ids


def reference(logits: np.ndarray, k: int) -> set[int]:
    n = logits.shape[0]
    return set(np.argpartition(logits, n - k)[n - k :].tolist()) if k < n else set(range(n))


@pytest.mark.parametrize("n", [49152, 262144, 151936, 1000, 50])
@pytest.mark.parametrize("k", [1, 20, 40, 256, 1024])
def test_top_ids_match_a_full_partition(n: int, k: int) -> None:
    rng = np.random.default_rng(n * 7 + k)
    logits = (rng.standard_normal(n) * 3).astype(np.float32)
    logits[rng.integers(0, n, 30)] += 12  # a few tokens stand out, as in real logits
    got = top_ids(logits, k)
    assert len(got) == min(k, n)
    assert set(got.tolist()) == reference(logits, k)


def test_top_ids_with_banned_tokens_and_a_flat_tail() -> None:
    logits = np.full(262144, -5.0, dtype=np.float32)
    logits[:10] = np.arange(10, dtype=np.float32)
    logits[[3, 7]] = -np.inf  # banned (ignore_eos)
    got = set(top_ids(logits, 8).tolist())
    assert got == {0, 1, 2, 4, 5, 6, 8, 9}


def test_top_ids_when_all_values_tie_returns_k_ids() -> None:
    logits = np.zeros(49152, dtype=np.float32)
    got = top_ids(logits, 40)
    assert len(got) == 40 and len(set(got.tolist())) == 40


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 5000), st.integers(1, 300), st.integers(0, 2**32 - 1), st.sampled_from([0.5, 3.0, 30.0]))
def test_top_ids_property(n: int, k: int, seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    logits = np.round(rng.standard_normal(n) * scale).astype(np.float32)  # rounding makes ties
    got = top_ids(logits, k)
    assert len(got) == min(k, n) and len(set(got.tolist())) == len(got)
    kth = np.sort(logits)[::-1][min(k, n) - 1]
    # the selected values are the k largest (ties at the k-th value may be broken either way)
    assert np.all(logits[got] >= kth)
    assert np.count_nonzero(logits > kth) <= len(got)
