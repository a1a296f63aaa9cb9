"""corral.convert without llama.cpp: safetensors validation, tokenizer families, the RoPE
permutation, architecture and quantization-level errors, and the GGUF a conversion writes."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from corral.convert import parse_quant_type, plan_conversion
from corral.convert.arch import rope_permute
from corral.convert.quantize import NOT_QUANTIZABLE, check_quantizable
from corral.convert.safetensors import load, read_index
from corral.convert.sentencepiece import parse_model
from corral.convert.vocab import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, load_vocab
from corral.errors import BadRequestError
from tests.tinymodels import MERGES, SPECIALS, byte_chars, tokenizer_files, write_decoder, write_safetensors


# safetensors ----------------------------------------------------------------------------------
def test_safetensors_round_trip_every_float_dtype(tmp_path: Path) -> None:
    values = np.array([[1.5, -2.25, 3.0], [0.0, 1024.0, -0.125]], dtype=np.float32)
    for dtype in ("F32", "F16", "BF16"):
        path = tmp_path / f"{dtype}.safetensors"
        write_safetensors(path, {"w": values, "b": values[0]}, dtype)
        refs = {r.name: r for r in read_index(path)}
        assert refs["w"].shape == (2, 3) and refs["w"].dtype == dtype
        assert np.array_equal(load(refs["w"]), values) and np.array_equal(load(refs["b"]), values[0])


def _raw(header: dict[str, Any], data: bytes, *, declared: int | None = None) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", declared if declared is not None else len(head)) + head + data


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x01\x02", "file too short"),
        (_raw({}, b"", declared=10**6), "header length out of range"),
        (struct.pack("<Q", 4) + b"\xff\xfe{]", "header is not JSON"),
        (_raw({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "truncated"),
        (_raw({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16), "do not match shape"),
        (_raw({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 2]}}, b"\0" * 2), "unsupported dtype"),
        (_raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "overlap"),
        (_raw({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "bad shape"),
    ],
)
def test_corrupt_safetensors_is_a_clear_400(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(BadRequestError, match=f"model.safetensors: not a valid safetensors file: .*{why}"):
        read_index(path)


# tokenizer.model --------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def sentencepiece_model(
    pieces: list[tuple[str, float, int]], *, model_type: int = 2, dummy_prefix: bool = True
) -> bytes:
    body = b"".join(
        _field(1, 2, _field(1, 2, t.encode()) + _field(2, 5, struct.pack("<f", s)) + _field(3, 0, _varint(k)))
        for t, s, k in pieces
    )
    trainer = _field(2, 2, _field(3, 0, _varint(model_type)) + _field(9, 0, _varint(7)))  # + an unknown field
    normalizer = _field(3, 2, _field(1, 2, b"nmt_nfkc") + _field(3, 0, _varint(int(dummy_prefix))))
    return body + trainer + normalizer


PIECES = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("<0x0A>", 0.0, 6), ("▁the", -1.5, 1), ("s", -7.25, 1)]


def test_sentencepiece_model_is_read_exactly() -> None:
    model = parse_model(sentencepiece_model(PIECES, dummy_prefix=False))
    assert model.pieces == PIECES and model.model_type == 2 and model.add_dummy_prefix is False
    with pytest.raises(BadRequestError, match=r"tokenizer\.model: not a valid SentencePiece model"):
        parse_model(sentencepiece_model(PIECES)[:-3])


def test_sentencepiece_vocab_with_added_tokens_and_padding(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model(PIECES))
    decoder = {"6": {"content": "<start_of_turn>", "special": True}, "7": {"content": "▁hi▁there", "special": False}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder, "bos_token": "<s>"}))
    vocab = load_vocab(tmp_path, 10)
    assert vocab.model == "llama" and vocab.add_space_prefix is True
    assert vocab.tokens == ["<unk>", "<s>", "</s>", "<0x0A>", "▁the", "s", "<start_of_turn>", " hi there",
                            "[PAD8]", "[PAD9]"]
    assert vocab.types == [UNKNOWN, CONTROL, CONTROL, BYTE, NORMAL, NORMAL, CONTROL, USER_DEFINED, UNUSED, UNUSED]
    assert vocab.scores is not None and vocab.scores[4:6] == [-1.5, -7.25] and vocab.scores[6] == -1000.0
    unigram = tmp_path / "unigram"
    unigram.mkdir()
    (unigram / "tokenizer.model").write_bytes(sentencepiece_model(PIECES, model_type=1))
    with pytest.raises(BadRequestError, match="only SentencePiece BPE"):
        load_vocab(unigram, 10)


# tokenizer.json ---------------------------------------------------------------------------------
def _tokenizer_dir(tmp_path: Path, tokenizer: dict[str, Any], config: dict[str, Any] | None = None) -> Path:
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config or {}))
    return tmp_path


def test_byte_level_bpe_is_gpt2_with_merges_specials_and_padding(tmp_path: Path) -> None:
    files = tokenizer_files(288)
    src = _tokenizer_dir(tmp_path, files["tokenizer.json"], files["tokenizer_config.json"])
    vocab = load_vocab(src, 288)
    n = 256 + len(MERGES)
    assert vocab.model == "gpt2" and vocab.pre == "gpt-2" and len(vocab.tokens) == 288
    assert vocab.tokens[:256] == byte_chars() and vocab.tokens[n : n + 3] == SPECIALS
    assert vocab.types[n : n + 3] == [CONTROL] * 3 and vocab.types[n + 3 :] == [UNUSED] * (288 - n - 3)
    assert vocab.tokens[-1] == "[PAD287]" and vocab.special.merges == [f"{a} {b}" for a, b in MERGES]
    assert vocab.special.special_token_ids == {"eos": n + 2, "pad": n}
    assert vocab.chat_template is not None and vocab.chat_template.startswith("{% for message in messages %}")
    with pytest.raises(BadRequestError, match="the tokenizer has 267 tokens but the model's embedding has only 100"):
        load_vocab(src, 100)


@pytest.mark.parametrize(
    ("regex", "pre"),
    [
        (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+", "llama-bpe"),
        (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+", "qwen2"),
        (r"\w+", "default"),
    ],
)
def test_bpe_pre_tokenizer_is_named_from_its_regex(tmp_path: Path, regex: str, pre: str) -> None:
    tokenizer = tokenizer_files(288)["tokenizer.json"]
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]}
    assert load_vocab(_tokenizer_dir(tmp_path, tokenizer), 288).pre == pre


def test_wordpiece_is_bert_in_phantom_space_form(tmp_path: Path) -> None:
    vocab_map = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4, "##ing": 5, "!": 6}
    added = [{"id": i, "content": t, "special": True} for t, i in vocab_map.items() if t.startswith("[")]
    post = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "[CLS]"}}, {"Sequence": {"id": "A"}},
                                                      {"SpecialToken": {"id": "[SEP]"}}], "pair": []}
    tokenizer = {"added_tokens": added, "post_processor": post,
                 "model": {"type": "WordPiece", "vocab": vocab_map, "unk_token": "[UNK]"}}
    config = {"cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]", "pad_token": "[PAD]"}
    vocab = load_vocab(_tokenizer_dir(tmp_path, tokenizer, config), 8)
    assert vocab.model == "bert"
    assert vocab.tokens == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "▁hello", "ing", "▁!", "[PAD7]"]
    assert vocab.types[:4] == [CONTROL] * 4 and vocab.types[4:7] == [NORMAL] * 3
    assert vocab.special.special_token_ids == {"bos": 2, "eos": 3, "unk": 1, "sep": 3, "pad": 0}
    assert vocab.special.add_special_token["bos"] and vocab.special.add_special_token["eos"]


def test_byte_fallback_bpe_becomes_scored_sentencepiece(tmp_path: Path) -> None:
    vocab_map = {"<unk>": 0, "<0x41>": 1, "▁": 2, "t": 3, "h": 4, "▁t": 5, "th": 6, "▁th": 7}
    tokenizer = {
        "added_tokens": [{"id": 8, "content": "<eot>", "special": True}],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "model": {"type": "BPE", "byte_fallback": True, "unk_token": "<unk>", "vocab": vocab_map,
                  "merges": ["t h", "▁ t", "▁t h"]},
    }
    vocab = load_vocab(_tokenizer_dir(tmp_path, tokenizer), 9)
    assert vocab.model == "llama" and vocab.add_space_prefix is True
    assert vocab.types == [UNKNOWN, BYTE, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, CONTROL]
    assert vocab.scores == [0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, -2.0, -1000.0]  # "th" is merge 0


def test_unsupported_tokenizer(tmp_path: Path) -> None:
    tokenizer = {"model": {"type": "BPE", "vocab": [["a", 0.0]]}}
    with pytest.raises(BadRequestError, match=r"tokenizer\.json: no model vocabulary"):
        load_vocab(_tokenizer_dir(tmp_path, tokenizer), 4)
    tokenizer = {"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}
    with pytest.raises(BadRequestError, match="unsupported tokenizer model 'Unigram'"):
        load_vocab(_tokenizer_dir(tmp_path, tokenizer), 4)


# RoPE permutation -------------------------------------------------------------------------------
def test_rope_permute_turns_rotate_half_into_interleaved_rope() -> None:
    """Rotating W x the HF way (halves) equals rotating permute(W) x the llama.cpp way (pairs)."""
    rng = np.random.default_rng(3)
    n_head, hd, d = 3, 8, 12
    w, x = rng.normal(size=(n_head * hd, d)), rng.normal(size=d)
    inv = 1.0 / 10000 ** (np.arange(0, hd, 2) / hd)
    angle = 5 * inv  # position 5
    q = (w @ x).reshape(n_head, hd)
    half = np.concatenate([-q[:, hd // 2 :], q[:, : hd // 2]], -1)
    hf = q * np.cos(np.tile(angle, 2)) + half * np.sin(np.tile(angle, 2))
    p = (rope_permute(w, n_head) @ x).reshape(n_head, hd)
    even, odd = p[:, 0::2], p[:, 1::2]
    llama = np.empty_like(p)
    llama[:, 0::2] = even * np.cos(angle) - odd * np.sin(angle)
    llama[:, 1::2] = even * np.sin(angle) + odd * np.cos(angle)
    assert np.allclose(rope_permute(hf.reshape(-1, 1), n_head).reshape(n_head, hd), llama)


# Quantization levels and architectures --------------------------------------------------------
def test_quantization_levels() -> None:
    assert parse_quant_type("q4_k_m") == "Q4_K_M" and parse_quant_type("Q4_K") == "Q4_K_M"
    assert [parse_quant_type(x) for x in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_K_S", "q5_K_M", "q6_K")] == [
        "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K_S", "Q5_K_M", "Q6_K"]
    with pytest.raises(BadRequestError, match=r"^unsupported quantization type q2_X - supported types are Q4_0, "):
        parse_quant_type("q2_X")
    check_quantizable("F16")
    check_quantizable("bf16")
    with pytest.raises(BadRequestError, match=f"^{NOT_QUANTIZABLE}$"):
        check_quantizable("Q4_K_M")


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    write_decoder(tmp_path, "llama")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["FalconForCausalLM"]}))
    with pytest.raises(BadRequestError, match=r'^unsupported architecture "FalconForCausalLM"$'):
        plan_conversion(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(BadRequestError, match=r"config\.json not found"):
        plan_conversion(tmp_path)


def test_unexpected_tensor_is_named(tmp_path: Path) -> None:
    write_decoder(tmp_path, "llama")
    name = "model.layers.9.self_attn.q_proj.weight"  # the model has 2 layers
    write_safetensors(tmp_path / "model-extra.safetensors", {name: np.zeros((2, 2))})
    with pytest.raises(BadRequestError, match=re.escape(f"unexpected tensor {name} for architecture llama")):
        plan_conversion(tmp_path)


def test_gemma3_gguf_has_norms_plus_one_in_f32_and_weights_in_f16(tmp_path: Path) -> None:
    weights = write_decoder(tmp_path, "gemma3", seed=4)
    plan = plan_conversion(tmp_path)
    out = tmp_path / "out.gguf"
    done = list(plan.write(out))
    assert done[-1] == plan.total_bytes and len(done) == len(plan.tensors)
    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    norm = tensors["blk.1.attn_q_norm.weight"]
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32
    assert np.array_equal(np.asarray(norm.data), weights["model.layers.1.self_attn.q_norm.weight"] + 1)
    q = tensors["blk.0.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.F16
    assert np.array_equal(np.asarray(q.data), weights["model.layers.0.self_attn.q_proj.weight"].astype(np.float16))
    fields = {f.name: f.contents() for f in reader.fields.values()}
    assert fields["general.architecture"] == "gemma3" and fields["gemma3.attention.sliding_window"] == 64
    assert fields["gemma3.attention.key_length"] == 64 and fields["general.file_type"] == 1
    assert fields["general.sampling.temp"] == pytest.approx(0.6) and plan.params == {"temperature": 0.6, "top_p": 0.9}
    assert "output.weight" not in tensors  # tied embeddings stay tied
