"""Structured outputs over real SmolLM2 generations: every output parses and validates.

A corpus of JSON schemas goes through `format` on /api/chat and /api/generate of the shared real
server (4 parallel sequences, so the requests run concurrently); each output must be complete
(`done_reason: stop`, i.e. the grammar finished before `num_predict`), parse, and validate with
`jsonschema`. Also: the grammars corral builds are accepted by llama.cpp's grammar parser.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import pytest

from corral.grammar import json_grammar, schema_to_gbnf, tool_call_grammar, with_thinking
from corral.schemas.native import Tool
from tests.support import ServerProcess, smollm2_path

pytestmark = pytest.mark.integration
MODEL = "smollm2:135m"
SHORT = {"type": "string", "maxLength": 16}

CORPUS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"name": SHORT, "age": {"type": "integer"}}, "required": ["name", "age"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
     "required": ["color", "ok"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": SHORT, "minItems": 2, "maxItems": 3}},
     "required": ["tags"]},
    {"type": "object", "properties": {
        "person": {"type": "object", "properties": {"first": SHORT, "last": SHORT}, "required": ["first", "last"]},
        "address": {"type": "object", "properties": {"city": SHORT, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"]}},
     "required": ["person", "address"]},
    {"type": "object", "properties": {"price": {"type": "number"}, "qty": {"type": "integer", "minimum": 0},
                                      "note": {"type": ["string", "null"], "maxLength": 16}},
     "required": ["price", "qty"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
                                      "optional": SHORT}, "required": ["code"]},
    {"type": "array", "items": {"$ref": "#/$defs/pt"}, "minItems": 1, "maxItems": 2,
     "$defs": {"pt": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                      "required": ["x", "y"]}}},
    {"type": "object", "properties": {"answer": {"anyOf": [{"type": "integer"}, {"const": "unknown"}]},
                                      "date": {"type": "string", "format": "date"}},
     "required": ["answer", "date"]},
]


def _ask(http: httpx.Client, index: int, schema: dict[str, Any]) -> tuple[dict[str, Any], str]:
    options = {"num_predict": 128, "temperature": 0.2, "seed": index}
    prompt = f"Reply with JSON matching this schema: {json.dumps(schema)}"
    if index % 2:
        r = http.post("/api/generate", json={"model": MODEL, "prompt": prompt, "format": schema, "stream": False,
                                             "options": options})
        assert r.status_code == 200, r.text
        return r.json(), r.json()["response"]
    r = http.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                                     "format": schema, "stream": False, "options": options})
    assert r.status_code == 200, r.text
    return r.json(), r.json()["message"]["content"]


def test_schema_corpus_outputs_validate(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=180, trust_env=False) as http, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda item: _ask(http, *item), enumerate(CORPUS)))
    for schema, (body, text) in zip(CORPUS, results, strict=True):
        assert body["done_reason"] == "stop", (schema, text)
        jsonschema.validate(json.loads(text), schema)


def test_format_json_gives_an_object(http: httpx.Client) -> None:
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "List three fruits as JSON.", "format": "json",
                                         "stream": False, "options": {"num_predict": 96, "temperature": 0}})
    assert r.status_code == 200, r.text
    body = r.json()
    if body["done_reason"] == "stop":
        assert isinstance(json.loads(body["response"]), dict)
    else:  # cut by num_predict: still a prefix of an object
        assert body["response"].lstrip().startswith("{")


def test_unsupported_schema_is_400(http: httpx.Client) -> None:
    r = http.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                     "format": {"type": "object", "patternProperties": {"^a": {}}}})
    assert r.status_code == 400
    assert r.json()["error"] == "unsupported JSON schema keyword: patternProperties"


def test_llama_cpp_accepts_every_grammar() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(smollm2_path()).encode(), mp)
    assert model
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        tool = Tool.model_validate({"function": {"name": "f", "parameters": CORPUS[3]}})
        grammars = [json_grammar(), *(schema_to_gbnf(s) for s in CORPUS), tool_call_grammar([tool], "<tool_call>"),
                    tool_call_grammar([tool], None, "f"), with_thinking(json_grammar(), "<think>", "</think>",
                                                                      opened=False)]
        for grammar in grammars:
            assert grammar is not None
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            assert sampler, grammar
            llama_cpp.llama_sampler_free(sampler)
        assert not llama_cpp.llama_sampler_init_grammar(vocab, b"root ::= undefined-rule", b"root")
    finally:
        llama_cpp.llama_model_free(model)
