"""Reading a SentencePiece `tokenizer.model` without the sentencepiece package.

The file is a protobuf `ModelProto`; we need only its pieces (text, score, type), the trainer's
model type and the normalizer's `add_dummy_prefix`. Owns a minimal protobuf wire-format decoder
(varints, length-delimited fields, fixed32/64) for exactly those fields; every other field is
skipped. Malformed input raises `BadRequestError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from corral.errors import BadRequestError

# ModelProto / SentencePiece / TrainerSpec / NormalizerSpec field numbers (sentencepiece_model.proto)
_PIECES, _TRAINER, _NORMALIZER = 1, 2, 3
_PIECE_TEXT, _PIECE_SCORE, _PIECE_TYPE = 1, 2, 3
_TRAINER_MODEL_TYPE = 3
_NORMALIZER_ADD_DUMMY_PREFIX = 3

MODEL_TYPE_UNIGRAM, MODEL_TYPE_BPE = 1, 2
NORMAL = 1  # a piece's default type; the values match gguf.TokenType


@dataclass
class SentencePieceModel:
    pieces: list[tuple[str, float, int]]
    model_type: int = MODEL_TYPE_UNIGRAM
    add_dummy_prefix: bool = True


def _bad(why: str) -> BadRequestError:
    return BadRequestError(f"tokenizer.model: not a valid SentencePiece model: {why}")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _bad("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs: an int for varints, bytes for the other wire types."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
            continue
        if wire == 2:
            size, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
        else:
            raise _bad(f"unsupported wire type {wire}")
        if pos + size > len(buf):
            raise _bad("truncated field")
        yield number, buf[pos : pos + size]
        pos += size


def _piece(buf: bytes) -> tuple[str, float, int]:
    text, score, kind = "", 0.0, NORMAL
    for number, value in fields(buf):
        if number == _PIECE_TEXT and isinstance(value, bytes):
            text = value.decode("utf-8", errors="replace")
        elif number == _PIECE_SCORE and isinstance(value, bytes) and len(value) == 4:
            (score,) = struct.unpack("<f", value)
        elif number == _PIECE_TYPE and isinstance(value, int):
            kind = value
    return text, score, kind


def _varint_field(buf: bytes, wanted: int, default: int) -> int:
    for number, value in fields(buf):
        if number == wanted and isinstance(value, int):
            default = value
    return default


def parse_model(data: bytes) -> SentencePieceModel:
    model = SentencePieceModel(pieces=[])
    for number, value in fields(data):
        if not isinstance(value, bytes):
            continue
        if number == _PIECES:
            model.pieces.append(_piece(value))
        elif number == _TRAINER:
            model.model_type = _varint_field(value, _TRAINER_MODEL_TYPE, MODEL_TYPE_UNIGRAM)
        elif number == _NORMALIZER:
            model.add_dummy_prefix = bool(_varint_field(value, _NORMALIZER_ADD_DUMMY_PREFIX, 1))
    if not model.pieces:
        raise _bad("no pieces")
    return model
