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
from .loopmodel import LoopModel

TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # = llama_token_data

PAIRS = 256 * 256  # keys 0..65535: the first two bytes of a longer token
SINGLE = PAIRS  # + byte: a one-byte token
EMPTY = SINGLE + 256  # no text: the grammar rejects it
EOG = EMPTY + 1
N_KEYS = EOG + 1
BIG_GROUP = 512  # first bytes shared by more tokens than this get a second-byte check
SCAN_SLICE = 8192  # tokens scanned per rejected pick until the table is complete (~40 ms)
_CACHE: weakref.WeakKeyDictionary[LoopModel, VocabPrefixes] = weakref.WeakKeyDictionary()


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


def prefixes_of(model: LoopModel) -> VocabPrefixes:
    """The model's table (kept with the model); see `VocabPrefixes.advance` for when it is ready."""
    got = _CACHE.get(model)
    if got is None:
        got = _CACHE[model] = VocabPrefixes(model.vocab, model.n_vocab)
    return got


class VocabPrefixes:
    """Per model: token prefix keys and the one- and two-byte tokens that probe the grammar.

    Reading every token's text costs ~10 us per token from Python (1.5-4 s for Gemma-3's 262k),
    so the scan is done in slices on the loop thread (`advance`), a few milliseconds at a time,
    by the first rejected picks; they scan the whole vocabulary as before until it is complete.
    """

    def __init__(self, vocab: Any, n_vocab: int) -> None:
        self._vocab = vocab
        self.key = np.full(n_vocab, EMPTY, dtype=np.int32)
        self._one: dict[int, int] = {}  # byte -> a token whose text is that byte
        self._two: dict[int, int] = {}  # two-byte key -> a token whose text is those two bytes
        self._next = 0
        self.ready = False
        self.table = np.zeros(N_KEYS, dtype=bool)

    def advance(self, budget: int) -> bool:
        """Scan up to `budget` more tokens; True once the table is complete."""
        if self.ready:
            return True
        stop = min(self._next + budget, self.key.shape[0])
        buf = ctypes.create_string_buffer(8)
        to_piece, is_eog, vocab, key = ll.llama_token_to_piece, ll.llama_vocab_is_eog, self._vocab, self.key
        for t in range(self._next, stop):
            n = to_piece(vocab, t, buf, 8, 0, True)
            if is_eog(vocab, t):
                key[t] = EOG
            elif n == 1:
                key[t] = SINGLE + buf.raw[0]
                self._one.setdefault(buf.raw[0], t)
            elif n >= 2 or n < 0:  # n < 0: longer than the buffer, which was left unwritten
                if n < 0:
                    big = ctypes.create_string_buffer(-n)
                    to_piece(vocab, t, big, -n, 0, True)
                    head = big.raw[:2]
                else:
                    head = buf.raw[:2]
                key[t] = head[0] * 256 + head[1]
                if n == 2:
                    self._two.setdefault(int(key[t]), t)
        self._next = stop
        if stop == self.key.shape[0]:
            self._finish()
        return self.ready

    def _finish(self) -> None:
        one, two = self._one, self._two
        self.one_bytes = np.array(sorted(one), dtype=np.int64)
        self.one_ids = np.array([one[b] for b in sorted(one)], dtype=np.int64)
        longer = self.key[self.key < PAIRS]
        counts = np.bincount(longer // 256, minlength=256)
        self.two: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = {}
        for b0 in np.flatnonzero(counts > BIG_GROUP).tolist():
            ks = sorted(k for k in two if k // 256 == b0)
            if ks:
                self.two[b0] = (np.array([two[k] for k in ks], dtype=np.int64), np.array(ks, dtype=np.int64))
        self._probe = Candidates(max(256, sum(len(v[0]) for v in self.two.values()), 1))
        self.ready = True

    def _ask(self, grammar: Any, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        c = self._probe
        c.load(ids, np.zeros(ids.shape[0], dtype=np.float32))
        c.apply(grammar)
        return c.logits() > -np.inf

    def possible(self, grammar: Any) -> npt.NDArray[np.int64]:
        """Ids of every token the grammar may accept next (and of the end-of-generation tokens);
        only once `advance` has returned True."""
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
