"""Memory fit: how many layers of a model go to which accelerator (spec: `num_gpu`, `main_gpu`).

Pure arithmetic over two inputs: the model's `Layout` (weight bytes per repeating layer, the output
layer, KV bytes per token per layer, from the GGUF header) and a table of `Device`s with the bytes
each may still use. `fit` returns a `Placement`: `n_gpu_layers` for llama.cpp, the split between
devices and the bytes it expects on each. It assigns layers exactly as llama.cpp's
`llama_model::load_tensors` does (the last `n_gpu_layers` of the `n_layer + 1` layers, the output
layer being the last, so the first offloaded; each device taking a contiguous run in proportion to
its split), so the bytes it
predicts per device are the bytes llama.cpp will allocate, plus an estimate of the compute buffers.

`num_gpu < 0` (the default) offloads as many layers as fit; `num_gpu = N` offloads N layers (999 =
all) whether or not they fit; `main_gpu = i` puts everything on device i alone (llama.cpp's split
mode "none"). Several devices share the layers in proportion to their free memory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from corral.engine.base import LoadSpec, Runner
from corral.errors import BadRequestError
from corral.gguf import GGUFInfo

MiB = 1024**2
GiB = 1024**3
# bytes per element of the K and V caches by cache type (q8_0: 34-byte blocks of 32, q4_0: 18 of 32)
KV_ELEMENT_BYTES = {"": 2.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
COMPUTE_FLOOR = 64 * MiB  # llama.cpp's smallest compute buffer seen on a device, rounded up
_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class Device:
    """One accelerator as ggml reports it; `index` is its position among the accelerators
    (what `main_gpu` counts), `free` the bytes corral may still place on it."""

    index: int
    name: str
    description: str = ""
    kind: str = "gpu"  # gpu | igpu | accel (ggml's device types other than cpu)
    total: int = 0
    free: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "description": self.description,
                "kind": self.kind, "total": self.total, "free": self.free}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Device:
        return cls(int(d["index"]), str(d["name"]), str(d.get("description", "")), str(d.get("kind", "gpu")),
                   int(d.get("total", 0)), int(d.get("free", 0)))


@dataclass(frozen=True)
class Layout:
    """What the fit needs to know about a model (all sizes in bytes)."""

    layer_bytes: tuple[int, ...]  # weights of each repeating layer
    output_bytes: int  # the output head (a second copy of the token embeddings when tied) + its norm
    input_bytes: int  # token embeddings and other tensors llama.cpp keeps on the CPU
    kv_elements: tuple[int, ...]  # K+V elements per token of context, per layer
    n_embd: int = 0
    n_vocab: int = 0
    n_head: int = 0

    @property
    def n_layer(self) -> int:
        return len(self.layer_bytes)

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.output_bytes + self.input_bytes


@dataclass(frozen=True)
class FitRequest:
    """The load options that size a runner."""

    n_ctx: int  # total KV cells (num_ctx x num_parallel)
    n_ubatch: int = 512
    kv_cache_type: str = "f16"
    flash_attn: bool = True
    num_gpu: int = -1
    main_gpu: int | None = None


@dataclass(frozen=True)
class Placement:
    n_gpu_layers: int  # for llama.cpp: the last n of the n_layer + 1 layers (output included)
    total_layers: int
    split_mode: str = "layer"  # layer | none (main_gpu alone)
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()  # per device index; () lets llama.cpp choose
    device_bytes: tuple[tuple[str, int], ...] = ()  # expected bytes per device name
    host_bytes: int = 0
    fits: bool = True
    layers_per_device: tuple[tuple[str, int], ...] = field(default=())

    @property
    def vram(self) -> int:
        return sum(b for _, b in self.device_bytes)

    @property
    def full(self) -> bool:
        return self.n_gpu_layers >= self.total_layers

    def describe(self) -> str:
        if self.n_gpu_layers <= 0:
            return "CPU only"
        where = ", ".join(f"{name} {n} layers {b / GiB:.2f} GiB" for (name, n), (_, b)
                          in zip(self.layers_per_device, self.device_bytes, strict=True))
        return f"{self.n_gpu_layers}/{self.total_layers} layers offloaded ({where})"


def tensor_bytes(type_name: str, shape: Sequence[int]) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    n = 1
    for dim in shape:
        n *= dim
    return int(n // block * size)


def layout_from_gguf(info: GGUFInfo) -> Layout:
    """The `Layout` of a model from its GGUF header (no tensor data is read)."""
    n_layer = info.block_count or 0
    layers = [0] * n_layer
    output = input_ = 0
    token_embd = 0
    has_output = False
    for t in info.tensors:
        size = tensor_bytes(t.type, t.shape)
        m = _BLOCK.match(t.name)
        if m and int(m.group(1)) < n_layer:
            layers[int(m.group(1))] += size
        elif t.name.startswith("output"):
            output += size
            has_output = has_output or t.name == "output.weight"
        else:
            input_ += size
            if t.name == "token_embd.weight":
                token_embd = size
    if not has_output:  # tied embeddings: llama.cpp loads a second copy as the output head
        output += token_embd
    arch = info.architecture
    heads = info.head_count or 1
    head_dim = (info.embedding_length or 0) // heads
    k_len = _int(info.kv.get(f"{arch}.attention.key_length")) or head_dim
    v_len = _int(info.kv.get(f"{arch}.attention.value_length")) or head_dim
    raw = info.kv.get(f"{arch}.attention.head_count_kv", heads)
    kv_heads = [int(h) for h in raw[:n_layer]] if isinstance(raw, list) else [int(raw)] * n_layer
    tokens = info.kv.get("tokenizer.ggml.tokens")
    return Layout(
        layer_bytes=tuple(layers),
        output_bytes=output,
        input_bytes=input_,
        kv_elements=tuple(h * (k_len + v_len) for h in kv_heads),
        n_embd=info.embedding_length or 0,
        n_vocab=len(tokens) if isinstance(tokens, list) else 0,
        n_head=heads,
    )


def _int(value: object) -> int:
    if isinstance(value, list):
        value = max(value) if value else 0
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def compute_bytes(layout: Layout, req: FitRequest, *, output: bool) -> int:
    """Estimate of one device's compute buffer: activations of one ubatch (plus the attention
    scores when flash attention is off, plus the logits on the device holding the output)."""
    ub = req.n_ubatch
    size = ub * layout.n_embd * 4 * 12
    if not req.flash_attn:
        size += ub * req.n_ctx * layout.n_head * 4
    if output:
        size += ub * layout.n_vocab * 4
    return max(size, COMPUTE_FLOOR)


def assign_layers(n_gpu_layers: int, total_layers: int, split: Sequence[float]) -> list[int]:
    """The device index of each of the `total_layers` layers (-1 = CPU), as llama.cpp assigns them."""
    cumulative: list[float] = []
    run = 0.0
    for s in split:
        run += s
        cumulative.append(run)
    cumulative = [c / run for c in cumulative] if run > 0 else cumulative
    start = max(total_layers - n_gpu_layers, 0)
    active = min(n_gpu_layers, total_layers) if split else 0
    out = []
    for il in range(total_layers):
        if il < start or il - start >= active:
            out.append(-1)
            continue
        x = (il - start) / active
        out.append(next((j for j, c in enumerate(cumulative) if c > x), len(cumulative) - 1))
    return out


def _bytes_for(layout: Layout, req: FitRequest, devices: Sequence[Device], split: Sequence[float],
               n: int) -> tuple[list[int], list[int], int]:
    """(bytes per device, layers per device, host bytes) when the last `n` layers are offloaded."""
    total = layout.n_layer + 1
    per_kv = KV_ELEMENT_BYTES.get(req.kv_cache_type, 2.0)
    dev_bytes = [0] * len(devices)
    dev_layers = [0] * len(devices)
    places = assign_layers(n, total, split)  # the output layer is the last: offloaded first
    host = layout.input_bytes + compute_bytes(layout, req, output=places[-1] < 0)
    for il, where in enumerate(places):
        size = layout.output_bytes if il == layout.n_layer else (
            layout.layer_bytes[il] + int(layout.kv_elements[il] * req.n_ctx * per_kv))
        if where < 0:
            host += size
        else:
            dev_bytes[where] += size
            dev_layers[where] += 1
    for j in range(len(devices)):
        if dev_layers[j]:
            dev_bytes[j] += compute_bytes(layout, req, output=places[-1] == j)
    return dev_bytes, dev_layers, host


def fit(layout: Layout, devices: Sequence[Device], req: FitRequest) -> Placement:
    """Choose the layers to offload to `devices` (their `free` is what may be used)."""
    total = layout.n_layer + 1
    if req.main_gpu is not None and devices and not 0 <= req.main_gpu < len(devices):
        raise BadRequestError(f"main_gpu {req.main_gpu} does not exist (this machine has {len(devices)} GPUs)")
    if req.main_gpu is not None and devices:
        used = [devices[req.main_gpu]]
    else:
        used = list(devices)
    if not used or req.num_gpu == 0:
        return _placement(layout, req, used, [], 0)
    split = [float(max(d.free, 0)) for d in used]
    if sum(split) <= 0:
        split = [1.0] * len(used)
    if req.num_gpu > 0:
        return _placement(layout, req, used, split, min(req.num_gpu, total))
    for n in range(total, 0, -1):
        p = _placement(layout, req, used, split, n)
        if p.fits:
            return p
    return _placement(layout, req, used, [], 0)


def _placement(layout: Layout, req: FitRequest, used: Sequence[Device], split: Sequence[float],
               n: int) -> Placement:
    total = layout.n_layer + 1
    if n <= 0:
        _, _, host = _bytes_for(layout, req, [], [], 0)
        return Placement(0, total, host_bytes=host)
    dev_bytes, dev_layers, host = _bytes_for(layout, req, used, split, n)
    single = req.main_gpu is not None
    return Placement(
        n_gpu_layers=n,
        total_layers=total,
        split_mode="none" if single else "layer",
        main_gpu=req.main_gpu if single and req.main_gpu is not None else 0,
        tensor_split=() if single else _split_by_index(used, split),
        device_bytes=tuple((d.name, b) for d, b in zip(used, dev_bytes, strict=True)),
        layers_per_device=tuple((d.name, k) for d, k in zip(used, dev_layers, strict=True)),
        host_bytes=host,
        fits=all(b <= max(d.free, 0) for d, b in zip(used, dev_bytes, strict=True)),
    )


def _split_by_index(used: Sequence[Device], split: Sequence[float]) -> tuple[float, ...]:
    out = [0.0] * (max((d.index for d in used), default=-1) + 1)
    for d, s in zip(used, split, strict=True):
        out[d.index] = s
    total = sum(out)
    return tuple(s / total for s in out) if total > 0 else tuple(out)


def usable(devices: Sequence[Device], *, overhead: int = 0, limit: int = 0,
           used: Mapping[str, int] | None = None) -> list[Device]:
    """The devices with `free` reduced to what corral may place: at most `limit` bytes each (0 =
    no limit; a test cap for devices whose free memory never changes), minus `overhead` kept free,
    minus what corral's loaded runners already hold there (`used`, by device name)."""
    used = used or {}
    out = []
    for d in devices:
        free = min(d.free, limit) if limit > 0 else d.free
        out.append(replace(d, free=max(free - overhead - used.get(d.name, 0), 0)))
    return out


@runtime_checkable
class Accelerated(Protocol):
    """An engine that offloads to accelerators (the scheduler accounts their memory per device)."""

    def devices(self) -> list[Device]:
        """The accelerators, `free` being what may be used when nothing of ours is loaded."""
        ...

    def place(self, spec: LoadSpec, used: Mapping[str, int] | None = None) -> Placement:
        """The placement of `spec` given the bytes already held per device name."""
        ...

    async def load(self, spec: LoadSpec, placement: Placement | None = None) -> Runner: ...
