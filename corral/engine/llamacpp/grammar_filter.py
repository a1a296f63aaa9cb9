"""The tokens a grammar could accept next, narrowed cheaply by byte prefixes (an exact superset).

llama.cpp's grammar sampler costs ~150-300 ns per candidate (each token's text is decoded to code
points and walked through the grammar's stacks): 7-15 ms over a 49k vocabulary, on every token
whose unconstrained pick the grammar refused. Acceptance is prefix-closed: when a token's text can
come next, so can its first byte and its first two bytes (a partial UTF-8 sequence passes when
some character it may complete to does). So the grammar is asked about the one-byte tokens, then
about the two-byte tokens under each accepted first byte that many tokens share (the space of the
" word" tokens), and every token whose prefix it refused is dropped before the real check runs on
the rest. Token texts are llama.cpp's grammar view (`special = true`); end-of-generation tokens
always stay (the grammar decides them by its own rule).

Does not sample; see `sampling.py`.
"""

from __future__ import annotations

import ctypes
import weakref
from typing import Any

import llama_cpp as ll
import numpy as np
import numpy.typing as npt

from .cstruct import new
from .model import LlamaModel

TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # = llama_token_data

PAIRS = 256 * 256  # keys 0..65535: the first two bytes of a longer token
SINGLE = PAIRS  # + byte: a one-byte token
EMPTY = SINGLE + 256  # no text: the grammar rejects it
EOG = EMPTY + 1
N_KEYS = EOG + 1
BIG_GROUP = 512  # first bytes shared by more tokens than this get a second-byte check
_CACHE: weakref.WeakKeyDictionary[LlamaModel, VocabPrefixes] = weakref.WeakKeyDictionary()


class Candidates:
    """A `llama_token_data_array` over a numpy buffer we own (filled without a Python loop)."""

    def __init__(self, capacity: int) -> None:
        self.buf = np.zeros(capacity, TOKEN_DATA)
        ptr = ctypes.cast(self.buf.ctypes.data, ctypes.POINTER(ll.llama_token_data))
        self.arr = new(ll.llama_token_data_array, data=ptr, size=0, selected=-1, sorted=False)
        self._ref = ctypes.byref(self.arr)

    def load(self, ids: npt.NDArray[np.int64], logits: npt.NDArray[np.float32]) -> None:
        n = int(ids.shape[0])
        view = self.buf[:n]
        view["id"] = ids
        view["logit"] = logits
        view["p"] = 0.0
        self.arr.size = n
        self.arr.selected = -1
        self.arr.sorted = False

    def apply(self, sampler: Any) -> None:
        ll.llama_sampler_apply(sampler, self._ref)

    def logits(self) -> npt.NDArray[np.float32]:
        return self.buf["logit"][: self.arr.size]

    def n_allowed(self) -> int:
        return int(np.count_nonzero(self.logits() > -np.inf))

    def selected(self) -> int:
        return int(self.buf["id"][self.arr.selected])

    def best(self) -> int:
        """The greedy pick: the first candidate with the highest logit."""
        return int(self.buf["id"][int(np.argmax(self.logits()))])


def prefixes_of(model: LlamaModel) -> VocabPrefixes:
    """The model's table, built on first use (~0.5 s per 50k tokens) and kept with the model."""
    got = _CACHE.get(model)
    if got is None:
        got = _CACHE[model] = VocabPrefixes(model)
    return got


def _scan(model: LlamaModel) -> tuple[npt.NDArray[np.int32], dict[int, int], dict[int, int]]:
    """Each token's prefix key, and one token per one-byte text and per two-byte text."""
    key = np.full(model.n_vocab, EMPTY, dtype=np.int32)
    one: dict[int, int] = {}
    two: dict[int, int] = {}
    eog = set(model.eog_tokens())
    buf = ctypes.create_string_buffer(8)
    to_piece, vocab = ll.llama_token_to_piece, model.vocab
    for t in range(model.n_vocab):
        n = to_piece(vocab, t, buf, 8, 0, True)
        if t in eog:
            key[t] = EOG
        elif n == 1:
            key[t] = SINGLE + buf.raw[0]
            one.setdefault(buf.raw[0], t)
        elif n >= 2 or n < 0:  # n < 0: longer than the buffer (its first bytes are not written)
            if n < 0:
                big = ctypes.create_string_buffer(-n)
                to_piece(vocab, t, big, -n, 0, True)
                head = big.raw[:2]
            else:
                head = buf.raw[:2]
            k = head[0] * 256 + head[1]
            key[t] = k
            if n == 2:
                two.setdefault(k, t)
    return key, one, two


class VocabPrefixes:
    """Per model: token prefix keys and the one- and two-byte tokens that probe the grammar."""

    def __init__(self, model: LlamaModel) -> None:
        self.key, one, two = _scan(model)
        self.one_bytes = np.array(sorted(one), dtype=np.int64)
        self.one_ids = np.array([one[b] for b in sorted(one)], dtype=np.int64)
        longer = self.key[self.key < PAIRS]
        counts = np.bincount(longer // 256, minlength=256)
        self.two: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = {}
        for b0 in np.flatnonzero(counts > BIG_GROUP).tolist():
            ks = sorted(k for k in two if k // 256 == b0)
            if ks:
                self.two[b0] = (np.array([two[k] for k in ks], dtype=np.int64), np.array(ks, dtype=np.int64))
        self.table = np.zeros(N_KEYS, dtype=bool)
        self._probe = Candidates(max(256, sum(len(v[0]) for v in self.two.values()), 1))

    def _ask(self, grammar: Any, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        c = self._probe
        c.load(ids, np.zeros(ids.shape[0], dtype=np.float32))
        c.apply(grammar)
        return c.logits() > -np.inf

    def possible(self, grammar: Any) -> npt.NDArray[np.int64]:
        """Ids of every token the grammar may accept next (and of the end-of-generation tokens)."""
        first = np.ones(256, dtype=bool)  # a byte no one-byte token spells: kept
        first[self.one_bytes] = self._ask(grammar, self.one_ids)
        table = self.table
        table[:PAIRS].reshape(256, 256)[:] = first[:, None]
        table[SINGLE:EMPTY] = first
        table[EMPTY] = False
        table[EOG] = True
        probes = [v for b0, v in self.two.items() if first[b0]]
        if probes:
            ids = np.concatenate([p[0] for p in probes])
            keys = np.concatenate([p[1] for p in probes])
            table[keys] = self._ask(grammar, ids)
        return np.flatnonzero(table[self.key])
