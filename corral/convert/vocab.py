"""Tokenizers of a Hugging Face model directory -> GGUF vocabulary, as llama.cpp's converter
writes them, without `transformers` or `sentencepiece`.

Owns the four tokenizer families the supported architectures use:
- `tokenizer.model` (SentencePiece BPE: Llama 2, Mistral, Gemma) -> llama.cpp's "llama" model,
  pieces/scores/types read from the protobuf, added tokens from tokenizer_config.json;
- tokenizer.json byte-level BPE (Llama 3, Qwen2) -> "gpt2" with merges, the pre-tokenizer named by
  matching its split regex against the ones llama.cpp knows;
- tokenizer.json BPE with byte fallback (SentencePiece exported by HF) -> "llama", scores ranked
  from the merges;
- tokenizer.json WordPiece (BERT) -> "bert", in llama.cpp's phantom-space form.
Special tokens, add_bos/add_eos and the chat template come from gguf's `SpecialVocab`. The token
count is padded with `[PADn]` up to the model's embedding rows, as llama.cpp requires.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from corral.convert.jsonfile import read_json
from corral.convert.sentencepiece import MODEL_TYPE_BPE, parse_model
from corral.errors import BadRequestError

log = logging.getLogger(__name__)

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = (int(t) for t in gguf.TokenType)
PHANTOM_SPACE = "\u2581"
# The special token kinds GGUF has keys for (a [CLS] is written as bos, a [SEP] as eos).
_SPECIAL = tuple(
    t for t in ("bos", "eos", "unk", "sep", "pad", "cls", "mask") if hasattr(gguf.GGUFWriter, f"add_{t}_token_id")
)

# Pre-tokenizer split regexes (as tokenizer.json spells them) -> llama.cpp's pre-tokenizer names.
_PRE_BY_REGEX = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+": "qwen2",
}


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model
    tokens: list[str]
    types: list[int]
    special: gguf.SpecialVocab
    scores: list[float] | None = None
    pre: str = "default"
    add_space_prefix: bool | None = None

    @property
    def chat_template(self) -> str | None:
        value = self.special.chat_template
        return value if isinstance(value, str) else None

    def write(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        if self.add_space_prefix is not None:
            w.add_add_space_prefix(self.add_space_prefix)
        self.special.add_to_gguf(w, quiet=True)


def load_vocab(src: Path, n_vocab: int) -> Vocab:
    """The vocabulary of the model in `src`, with exactly `n_vocab` tokens."""
    scores: list[float] | None
    if (src / "tokenizer.model").is_file():
        model, tokens, types, scores, prefix = _sentencepiece(src)
        pre = "default"
    else:
        tok = read_json(src / "tokenizer.json")
        model, tokens, types, scores, prefix, pre = _from_tokenizer_json(tok)
    tokens, types, scores = _pad(tokens, types, scores, n_vocab)
    try:
        special = gguf.SpecialVocab(src, load_merges=model == "gpt2", n_vocab=n_vocab, special_token_types=_SPECIAL)
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as e:
        raise BadRequestError(f"tokenizer files: {e}") from None
    if model == "gpt2" and not special.merges:
        raise BadRequestError("tokenizer.json: a BPE tokenizer without merges")
    return Vocab(model, tokens, types, special, scores, pre, prefix)


def _pad(
    tokens: list[str], types: list[int], scores: list[float] | None, n_vocab: int
) -> tuple[list[str], list[int], list[float] | None]:
    if len(tokens) > n_vocab:
        raise BadRequestError(
            f"the tokenizer has {len(tokens)} tokens but the model's embedding has only {n_vocab} rows"
        )
    extra = range(len(tokens), n_vocab)
    tokens = tokens + [f"[PAD{i}]" for i in extra]
    types = types + [UNUSED] * len(extra)
    if scores is not None:
        scores = scores + [-1000.0] * len(extra)
    return tokens, types, scores


def _looks_special(text: str) -> bool:
    return (text.startswith("<|") and text.endswith("|>")) or (text.startswith("<｜") and text.endswith("｜>"))


# tokenizer.model ------------------------------------------------------------------------------
def _sentencepiece(src: Path) -> tuple[str, list[str], list[int], list[float], bool | None]:
    try:
        data = (src / "tokenizer.model").read_bytes()
    except OSError as e:
        raise BadRequestError(f"tokenizer.model: cannot read: {e}") from None
    sp = parse_model(data)
    if sp.model_type != MODEL_TYPE_BPE:
        raise BadRequestError("tokenizer.model: only SentencePiece BPE tokenizers are supported (not unigram)")
    tokens = [p[0] for p in sp.pieces]
    scores = [p[1] for p in sp.pieces]
    types = [p[2] for p in sp.pieces]
    config = read_json(src / "tokenizer_config.json", required=False) or {}
    decoder = config.get("added_tokens_decoder") or {}
    for key, entry in decoder.items() if isinstance(decoder, dict) else ():
        if not (str(key).isdigit() and isinstance(entry, dict) and isinstance(entry.get("content"), str)):
            continue
        i, text = int(key), entry["content"]
        while len(tokens) <= i:
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-1000.0)
            types.append(UNUSED)
        special = bool(entry.get("special")) or _looks_special(text)
        tokens[i] = text if special else text.replace(PHANTOM_SPACE, " ")
        types[i] = CONTROL if special else USER_DEFINED
        scores[i] = -1000.0
    return "llama", tokens, types, scores, sp.add_dummy_prefix


# tokenizer.json -------------------------------------------------------------------------------
def _from_tokenizer_json(
    tok: Any,
) -> tuple[str, list[str], list[int], list[float] | None, bool | None, str]:
    model = tok.get("model") if isinstance(tok, dict) else None
    kind = model.get("type") if isinstance(model, dict) else None
    if kind not in ("WordPiece", "BPE"):
        raise BadRequestError(f"tokenizer.json: unsupported tokenizer model {kind!r}")
    assert isinstance(model, dict)
    if not isinstance(model.get("vocab"), dict):
        raise BadRequestError("tokenizer.json: no model vocabulary")
    added = {
        a["id"]: a for a in tok.get("added_tokens") or [] if isinstance(a, dict) and isinstance(a.get("id"), int)
    }
    by_id = _by_id(model["vocab"], added)
    if kind == "WordPiece":
        return ("bert", *_wordpiece(by_id, added), None, None, "default")
    if kind == "BPE" and model.get("byte_fallback"):
        tokens, types, scores = _bpe_scored(by_id, added, model)
        return "llama", tokens, types, scores, _adds_space_prefix(tok), "default"
    tokens, types = _bpe(by_id, added)
    return "gpt2", tokens, types, None, None, _bpe_pre(tok)


def _by_id(vocab: dict[str, Any], added: dict[int, dict[str, Any]]) -> list[str | None]:
    ids: dict[int, str] = {i: t for t, i in vocab.items() if isinstance(i, int) and i >= 0}
    ids.update({i: str(a.get("content", "")) for i, a in added.items() if i >= 0})
    out: list[str | None] = [None] * (max(ids) + 1 if ids else 0)
    for i, text in ids.items():
        out[i] = text
    return out


def _added_type(entry: dict[str, Any], text: str) -> int:
    return CONTROL if entry.get("special") or _looks_special(text) else USER_DEFINED


def _bpe(by_id: list[str | None], added: dict[int, dict[str, Any]]) -> tuple[list[str], list[int]]:
    tokens: list[str] = []
    types: list[int] = []
    for i, text in enumerate(by_id):
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(text)
            types.append(_added_type(added[i], text) if i in added else NORMAL)
    return tokens, types


def _bpe_pre(tok: dict[str, Any]) -> str:
    pre = tok.get("pre_tokenizer") or {}
    steps = (pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else [pre]
    steps = [s for s in steps if isinstance(s, dict)]
    for step in steps:
        pattern = step.get("pattern")
        if step.get("type") == "Split" and isinstance(pattern, dict):
            name = _PRE_BY_REGEX.get(str(pattern.get("Regex")))
            if name:
                return name
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    log.warning("unknown pre-tokenizer %s: using llama.cpp's default", kinds)
    return "default"


def _merge_pairs(model: dict[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for m in model.get("merges") or []:
        parts = m.split(" ", 1) if isinstance(m, str) else m
        if isinstance(parts, list) and len(parts) == 2:
            pairs.append((str(parts[0]), str(parts[1])))
    return pairs


def _bpe_scored(
    by_id: list[str | None], added: dict[int, dict[str, Any]], model: dict[str, Any]
) -> tuple[list[str], list[int], list[float]]:
    """SentencePiece-style vocab from an HF BPE with byte fallback: llama.cpp's SPM tokenizer
    merges the pair whose result scores highest, so a token scores minus its merge rank."""
    rank: dict[str, int] = {}
    for r, (a, b) in enumerate(_merge_pairs(model)):
        rank.setdefault(a + b, r)
    unk = model.get("unk_token")
    tokens, types = _bpe(by_id, added)
    scores = [-float(rank.get(t, 0)) for t in tokens]
    for i, text in enumerate(tokens):
        if types[i] in (CONTROL, USER_DEFINED):
            scores[i] = -1000.0
        elif types[i] == UNUSED:
            continue
        elif text == unk:
            types[i] = UNKNOWN
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            types[i] = BYTE
    return tokens, types, scores


def _adds_space_prefix(tok: dict[str, Any]) -> bool:
    """Whether the tokenizer prepends "▁" to the text (a normalizer Prepend, or Metaspace)."""
    found = False

    def walk(node: Any) -> None:
        nonlocal found
        if isinstance(node, dict):
            if node.get("type") == "Prepend" and node.get("prepend") == PHANTOM_SPACE:
                found = True
            if node.get("type") == "Metaspace" and (
                node.get("prepend_scheme") in ("always", "first") or node.get("add_prefix_space")
            ):
                found = True
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tok.get("normalizer"))
    walk(tok.get("pre_tokenizer"))
    return found


def _wordpiece(by_id: list[str | None], added: dict[int, dict[str, Any]]) -> tuple[list[str], list[int]]:
    """BERT's WordPiece in llama.cpp's form: word starts get "▁", "##" continuations lose it."""
    tokens: list[str] = []
    types: list[int] = []
    for i, text in enumerate(by_id):
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        if text.startswith("[") and text.endswith("]"):
            tokens.append(text)
        elif text.startswith("##"):
            tokens.append(text[2:])
        else:
            tokens.append(PHANTOM_SPACE + text)
        types.append(_added_type(added[i], text) if i in added else NORMAL)
    return tokens, types
