"""Reranking on a rank-pooling model (llama.cpp's LLAMA_POOLING_TYPE_RANK), as llama-server does it.

A reranker is a cross-encoder: each (query, document) pair is one sequence, and the model's
classification head (`cls.*` tensors) turns it into one score (read where pooled embeddings are).
The pair is laid out by the model's `rerank` template when its GGUF has one
(`tokenizer.chat_template.rerank`, `{query}` / `{document}` placeholders), else as
`[BOS] query [EOS] [SEP] document [EOS]`, each special token only where the vocabulary adds it
(llama-server's `format_prompt_rerank`). Runs on the model thread, one decode per document.
"""

from __future__ import annotations

import base64
from typing import Any

import llama_cpp as ll

from corral.errors import BadRequestError

from .model import LlamaModel, decode_pooled

NOT_RANK = "this model does not support reranking (it has no rank pooling)"
RANK_NO_EMBED = "this model is a reranker: it has no embeddings (use /api/rerank)"


def is_rank(model: LlamaModel) -> bool:
    return int(ll.llama_pooling_type(model.ctx)) == int(ll.LLAMA_POOLING_TYPE_RANK)


def _template(model: LlamaModel) -> str | None:
    raw = ll.llama_model_chat_template(model.model, b"rerank")
    return raw.decode("utf-8", errors="replace") if raw else None


def pair_tokens(model: LlamaModel, query: str, document: str) -> list[int]:
    """The tokens of one (query, document) sequence."""
    template = _template(model)
    if template is not None:
        text = template.replace("{query}", query).replace("{document}", document)
        return model.tokenize(text, add_special=False)
    vocab = model.vocab
    eos = int(ll.llama_vocab_eos(vocab))
    if eos < 0:
        eos = int(ll.llama_vocab_sep(vocab))
    add_eos = bool(ll.llama_vocab_get_add_eos(vocab))
    out: list[int] = [int(ll.llama_vocab_bos(vocab))] if model.add_bos else []
    out += _plain(model, query)
    if add_eos:
        out.append(eos)
    if ll.llama_vocab_get_add_sep(vocab):
        out.append(int(ll.llama_vocab_sep(vocab)))
    out += _plain(model, document)
    if add_eos:
        out.append(eos)
    return out


def _plain(model: LlamaModel, text: str) -> list[int]:
    """Tokens of user text: no special tokens added, none parsed (as llama-server)."""
    return tokenize_text(model, text, add_special=False, parse_special=False)


def tokenize_text(model: LlamaModel, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
    """llama_tokenize with both of its switches (`LlamaModel.tokenize` always parses specials)."""
    data = text.encode()
    cap = len(data) + 8
    buf = (ll.llama_token * cap)()
    n = ll.llama_tokenize(model.vocab, data, len(data), buf, cap, add_special, parse_special)
    if n < 0:
        cap = -n
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(model.vocab, data, len(data), buf, cap, add_special, parse_special)
    return list(buf[:n])


def token_pieces(model: LlamaModel, tokens: list[int]) -> list[str]:
    """Each token's bytes (special tokens as their text), base64 for the runner protocol."""
    model.check_tokens(tokens)
    return [base64.b64encode(model.piece(t, special=True)).decode() for t in tokens]


def _score(model: LlamaModel, tokens: list[int]) -> float:
    n_out = max(int(ll.llama_model_n_cls_out(model.model)), 1)
    return float(decode_pooled(model.ctx, tokens, n_out, "rank score")[0])


def rerank(model: LlamaModel, query: str, documents: list[str], num_ctx: int) -> dict[str, Any]:
    """`{"scores": [...], "prompt_eval_count": n}` for the documents, in their order."""
    if not is_rank(model):
        raise BadRequestError(NOT_RANK)
    scores: list[float] = []
    count = 0
    for i, doc in enumerate(documents):
        tokens = pair_tokens(model, query, doc)
        if not tokens:
            raise BadRequestError("the query and documents are empty")
        if len(tokens) > num_ctx:
            raise BadRequestError(
                f"the query and document {i} are {len(tokens)} tokens, more than the context length ({num_ctx})"
            )
        model.check_tokens(tokens)
        count += len(tokens)
        scores.append(_score(model, tokens))
    return {"scores": scores, "prompt_eval_count": count}
