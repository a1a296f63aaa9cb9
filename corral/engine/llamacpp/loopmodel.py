"""What the batching loop needs of a model: the protocol in front of `LlamaModel`.

`BatchLoop` (batch.py) and the collaborators it calls on its thread (sampling, the prompt cache,
speculative decoding, LoRA scales) are written against `LoopModel`, which `LlamaModel` satisfies
structurally; a test stands a deterministic fake in its place (tests/fakeloop.py). These are the
same calls as before, not wrappers: the protocol costs nothing per token.

Native handles (`ctx`, `vocab`, `loras`) are part of it because some paths hand them to llama.cpp
directly: a sampler chain (temperature > 0 or repetition penalties), a grammar, LoRA scales. A fake
leaves them None / empty and runs the greedy, grammar-free, adapter-free paths; images need the
real model (media.py's `Vision`, optional in the loop).

Does not define how a model is loaded or what a batch is: see model.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .model import Batch, ContextConfig


class Vocab(Protocol):
    """Tokens and their text."""

    @property
    def n_vocab(self) -> int: ...

    @property
    def add_bos(self) -> bool: ...

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """Token ids of `text`, special tokens parsed, BOS added when the model wants one."""
        ...

    def piece(self, token: int, special: bool = False) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...

    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token id."""
        ...

    def check_tokens(self, tokens: list[int]) -> None:
        """Refuse ids outside the vocabulary (BadRequestError)."""
        ...


class LoopModel(Vocab, Protocol):
    """A model with one context of `cfg.n_seq` KV sequences, decoded one batch at a time."""

    @property
    def cfg(self) -> ContextConfig: ...

    @property
    def batch(self) -> Batch:
        """The one batch the loop fills before each `decode()`."""
        ...

    @property
    def ctx(self) -> Any:
        """The native context (llama.cpp samplers and adapters); None in a fake."""
        ...

    @property
    def vocab(self) -> Any:
        """The native vocabulary (grammars); None in a fake."""
        ...

    @property
    def loras(self) -> Sequence[Any]:
        """Native LoRA adapters on the context (empty: none)."""
        ...

    def decode(self) -> int:
        """Decode `batch`: 0 on success, 1 when the KV cache has no room (nothing stored), other
        values as llama_decode's."""
        ...

    def logits(self, i: int) -> npt.NDArray[np.float32]:
        """The logits row of batch entry `i` of the last decode (it must have asked for them)."""
        ...

    # --- KV sequences -------------------------------------------------------------------------
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Remove positions [p0, p1) of `seq` (negative: open end); False when only a whole
        sequence can be removed (recurrent state)."""
        ...

    def seq_cp(self, src: int, dst: int, n: int) -> None:
        """Give `dst` (empty) the first `n` positions of `src`."""
        ...

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        """Move positions [p0, p1) of `seq` by `delta` (context shift)."""
        ...

    def seq_state(self, seq: int) -> bytearray:
        """A copy of `seq`'s KV state."""
        ...

    def seq_restore(self, seq: int, data: bytearray) -> bool:
        """Load a state from `seq_state` into `seq`, replacing what it held."""
        ...

    def can_shift(self) -> bool: ...
