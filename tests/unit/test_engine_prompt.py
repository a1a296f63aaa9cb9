"""A request's prompt ids (`corral.engine.llamacpp.prompt`): context ids run as given, the text is
tokenized only when the server did not already do it, BOS once at the very start where the model
adds one, EOS where it adds one, and bad ids refused before anything reaches llama.cpp."""

from __future__ import annotations

from typing import Any

import pytest

from corral.engine.base import GenerateParams
from corral.engine.llamacpp.prompt import check_ids, prompt_ids
from corral.errors import BadRequestError

BOS, EOS = 1, 2
SPECIAL = {"<s>": BOS, "</s>": EOS}


class WordVocab:
    """llama_tokenize's contract on a toy vocabulary: one id per word (`<s>`/`</s>` are the
    specials, parsed), BOS/EOS around the text with `add_special` as the model says."""

    def __init__(self, *, add_bos: bool = True, add_eos: bool = False, n_vocab: int = 1000) -> None:
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.n_vocab = n_vocab
        self.texts: list[str] = []  # every text tokenized, in order

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        self.texts.append(text)
        ids = [SPECIAL.get(w, 10 + len(w)) for w in text.split()]
        head = [BOS] if add_special and self.add_bos else []
        tail = [EOS] if add_special and self.add_eos else []
        return head + ids + tail


def test_text_prompt_is_what_add_special_gives() -> None:
    for add_bos in (True, False):
        for add_eos in (True, False):
            vocab = WordVocab(add_bos=add_bos, add_eos=add_eos)
            for text in ["a bb ccc", "", "x"]:
                assert prompt_ids(vocab, GenerateParams(prompt=text)) == vocab.tokenize(text, add_special=True)


def test_bos_is_added_once_when_the_text_already_starts_with_it() -> None:
    vocab = WordVocab()
    assert vocab.tokenize("<s> hi", add_special=True) == [BOS, BOS, 12]  # llama.cpp's doubled BOS
    assert prompt_ids(vocab, GenerateParams(prompt="<s> hi")) == [BOS, 12]


def test_context_ids_run_as_given_before_the_text() -> None:
    vocab = WordVocab()
    # ids no text would tokenize to (this vocabulary never gives 7 or 500)
    params = GenerateParams(prompt="aa bbb", context=[7, 500, 7])
    assert prompt_ids(vocab, params) == [BOS, 7, 500, 7, 12, 13]


def test_context_from_an_earlier_answer_keeps_its_one_bos() -> None:
    vocab = WordVocab()
    earlier = [*prompt_ids(vocab, GenerateParams(prompt="first turn")), 40, 41]
    assert earlier[0] == BOS
    ids = prompt_ids(vocab, GenerateParams(prompt="then", context=earlier))
    assert ids == [*earlier, 14] and ids.count(BOS) == 1


def test_no_bos_for_a_model_that_adds_none_and_eos_goes_last() -> None:
    vocab = WordVocab(add_bos=False, add_eos=True)
    assert prompt_ids(vocab, GenerateParams(prompt="aa", context=[5, 6])) == [5, 6, 12, EOS]


def test_given_prompt_tokens_are_not_tokenized_again() -> None:
    vocab = WordVocab()
    ids = prompt_ids(vocab, GenerateParams(prompt="a long rendered chat", prompt_tokens=[30, 31, 32]))
    assert ids == [BOS, 30, 31, 32]
    assert "a long rendered chat" not in vocab.texts  # only the empty text that shows the specials


def test_given_prompt_tokens_after_context() -> None:
    vocab = WordVocab()
    ids = prompt_ids(vocab, GenerateParams(prompt="zz", context=[BOS, 9], prompt_tokens=[30]))
    assert ids == [BOS, 9, 30]


def test_empty_prompt_is_only_the_specials() -> None:
    assert prompt_ids(WordVocab(), GenerateParams(prompt="")) == [BOS]
    assert prompt_ids(WordVocab(add_bos=False), GenerateParams(prompt="")) == []


@pytest.mark.parametrize("bad", [-1, 1000, 2**40, True, 1.0, "3", None])
@pytest.mark.parametrize("where", ["context", "prompt_tokens"])
def test_bad_ids_are_400_naming_the_id(bad: Any, where: str) -> None:
    ids: list[Any] = [5, bad]
    params = GenerateParams(prompt="", context=ids)
    if where == "prompt_tokens":
        params = GenerateParams(prompt="", prompt_tokens=ids)
    with pytest.raises(BadRequestError) as err:
        prompt_ids(WordVocab(n_vocab=1000), params)
    assert err.value.status == 400
    assert err.value.message == f"invalid token id {bad!r}: this model's vocabulary has ids 0 to 999"


def test_check_ids_accepts_the_whole_vocabulary() -> None:
    check_ids([0, 1, 998, 999], 1000)
