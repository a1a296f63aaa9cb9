"""A generate request's prompt as token ids: `GenerateParams.context` + the prompt text's ids.

The ids of `context` run exactly as given (no trip through text, which loses ids that do not
round-trip: a split multi-byte character, a non-canonical split of a word); the text is tokenized
with special tokens parsed, unless the server already did (`prompt_tokens`, the chat fit's count),
in which case those ids run and the text is not tokenized a second time. The model's special
tokens go around the whole as llama.cpp's `add_special` puts them around a text: its BOS once, at
the very start, only when the model adds one and the ids do not start with it already (a context
returned by an earlier answer does, and so does a template that prints the BOS text); its EOS at the
end for a model that adds one. For a text prompt this is what tokenizing the text with
`add_special` gives (less the doubled BOS llama.cpp warns about).

Every id is checked against the vocabulary before the prompt reaches the loop: llama.cpp aborts the
whole runner process (every request on it) on an id it does not know.
"""

from __future__ import annotations

from typing import Protocol

from corral.engine.base import GenerateParams
from corral.errors import BadRequestError


class Vocab(Protocol):
    """What assembling a prompt needs of a model (`LlamaModel`, the loop's `LoopModel`)."""

    @property
    def n_vocab(self) -> int: ...

    @property
    def add_bos(self) -> bool: ...

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]: ...


def check_ids(ids: list[int], n_vocab: int) -> None:
    """Refuse anything but ints in [0, n_vocab): llama.cpp aborts the whole process on them."""
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_vocab:
            raise BadRequestError(f"invalid token id {t!r}: this model's vocabulary has ids 0 to {n_vocab - 1}")


def specials(model: Vocab) -> tuple[list[int], list[int]]:
    """The ids the model's tokenizer puts before and after a text (`add_special`): BOS, EOS."""
    around = model.tokenize("", add_special=True)
    if model.add_bos and around:
        return around[:1], around[1:]
    return [], around


def with_specials(model: Vocab, ids: list[int]) -> list[int]:
    """`ids` with the model's BOS in front (unless they start with it) and its EOS, if any, behind."""
    head, tail = specials(model)
    if head and ids[:1] == head:
        head = []
    return head + ids + tail if head or tail else ids


def prompt_ids(model: Vocab, params: GenerateParams) -> list[int]:
    """The ids a request runs: context ids, then the prompt's (given or tokenized), BOS/EOS added
    as the model wants (see the module doc). Bad ids are a 400 (`BadRequestError`)."""
    if params.prompt_tokens is not None:
        text = list(params.prompt_tokens)
        check_ids(text, model.n_vocab)
    else:
        text = model.tokenize(params.prompt, add_special=False) if params.prompt else []
    if params.context:
        check_ids(params.context, model.n_vocab)
        return with_specials(model, [*params.context, *text])
    return with_specials(model, text)
