"""A synthetic LLaVA-style projector GGUF (random weights) and tiny PNG images for the vision tests.

The projector is what llama.cpp's libmtmd loads as `PROJECTOR_TYPE_MLP` (tools/mtmd/clip.cpp): a
CLIP vision tower of `n_embd` width and `blocks` pre-LN blocks over `image_size`² images cut in
`patch_size`² patches, then LLaVA's two-layer MLP (`mm.0` -> GELU -> `mm.2`) to `out_embd`, which
must equal the text model's `n_embd` (576 for SmolLM2-135M). No real vision model exists offline;
random weights are enough to prove that an image reaches the text model and changes its output.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from gguf import GGUFWriter


def write_mmproj(
    path: Path,
    *,
    out_embd: int = 576,
    n_embd: int = 64,
    blocks: int = 2,
    heads: int = 4,
    n_ff: int = 128,
    image_size: int = 64,
    patch_size: int = 16,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)

    def rand(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    n_patches = (image_size // patch_size) ** 2
    w = GGUFWriter(str(path), "clip")
    w.add_string("general.name", "corral test projector")
    w.add_file_type(0)  # F32
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", image_size)
    w.add_uint32("clip.vision.patch_size", patch_size)
    w.add_uint32("clip.vision.embedding_length", n_embd)
    w.add_uint32("clip.vision.feed_forward_length", n_ff)
    w.add_uint32("clip.vision.projection_dim", out_embd)
    w.add_uint32("clip.vision.attention.head_count", heads)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_uint32("clip.vision.block_count", blocks)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    tensors: dict[str, np.ndarray] = {
        "v.patch_embd.weight": rand(n_embd, 3, patch_size, patch_size, scale=0.05),
        "v.patch_embd.bias": rand(n_embd),
        "v.position_embd.weight": rand(n_patches, n_embd),
        "v.pre_ln.weight": np.ones(n_embd, np.float32),
        "v.pre_ln.bias": np.zeros(n_embd, np.float32),
    }
    for i in range(blocks):
        p = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"{p}.{name}.weight"] = rand(n_embd, n_embd)
            tensors[f"{p}.{name}.bias"] = rand(n_embd)
        for name in ("ln1", "ln2"):
            tensors[f"{p}.{name}.weight"] = np.ones(n_embd, np.float32)
            tensors[f"{p}.{name}.bias"] = np.zeros(n_embd, np.float32)
        tensors[f"{p}.ffn_up.weight"] = rand(n_ff, n_embd)
        tensors[f"{p}.ffn_up.bias"] = rand(n_ff)
        tensors[f"{p}.ffn_down.weight"] = rand(n_embd, n_ff)
        tensors[f"{p}.ffn_down.bias"] = rand(n_embd)
    # Embeddings of the same scale as SmolLM2's token embeddings, so that the image is "heard".
    tensors["mm.0.weight"] = rand(out_embd, n_embd, scale=0.1)
    tensors["mm.0.bias"] = rand(out_embd, scale=0.1)
    tensors["mm.2.weight"] = rand(out_embd, out_embd, scale=0.05)
    tensors["mm.2.bias"] = rand(out_embd, scale=0.05)
    for name, value in tensors.items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_gemma3_mmproj(path: Path, *, out_embd: int = 640, n_embd: int = 64, image_size: int = 64,
                        patch_size: int = 4, seed: int = 0) -> Path:
    """A synthetic Gemma 3 projector (`PROJECTOR_TYPE_GEMMA3`): a SigLIP-style tower, 4x4 average
    pooling, RMS norm and a projection to `out_embd` (640 for Gemma 3 270M). mtmd wraps its images in
    `<start_of_image>`/`<end_of_image>` and decodes them with non-causal attention."""
    rng = np.random.default_rng(seed)

    def rand(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    n_patches = (image_size // patch_size) ** 2
    w = GGUFWriter(str(path), "clip")
    w.add_file_type(0)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", "gemma3")
    w.add_bool("clip.use_gelu", True)
    for key, number in (("image_size", image_size), ("patch_size", patch_size), ("embedding_length", n_embd),
                        ("feed_forward_length", 2 * n_embd), ("projection_dim", out_embd),
                        ("attention.head_count", 4), ("block_count", 2)):
        w.add_uint32(f"clip.vision.{key}", number)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    tensors = {
        "v.patch_embd.weight": rand(n_embd, 3, patch_size, patch_size, scale=0.1),
        "v.patch_embd.bias": rand(n_embd),
        "v.position_embd.weight": rand(n_patches, n_embd),
        "v.post_ln.weight": np.ones(n_embd, np.float32),
        "v.post_ln.bias": np.zeros(n_embd, np.float32),
        "mm.soft_emb_norm.weight": np.ones(n_embd, np.float32),
        "mm.input_projection.weight": rand(n_embd, out_embd, scale=0.1),
    }
    for i in range(2):
        p = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"{p}.{name}.weight"] = rand(n_embd, n_embd)
            tensors[f"{p}.{name}.bias"] = rand(n_embd)
        for name in ("ln1", "ln2"):
            tensors[f"{p}.{name}.weight"] = np.ones(n_embd, np.float32)
            tensors[f"{p}.{name}.bias"] = np.zeros(n_embd, np.float32)
        tensors[f"{p}.ffn_up.weight"] = rand(2 * n_embd, n_embd)
        tensors[f"{p}.ffn_up.bias"] = rand(2 * n_embd)
        tensors[f"{p}.ffn_down.weight"] = rand(n_embd, 2 * n_embd)
        tensors[f"{p}.ffn_down.bias"] = rand(n_embd)
    for name, value in tensors.items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def png(width: int, height: int, pixel: tuple[int, int, int] | None = None, *, seed: int = 0) -> bytes:
    """An RGB PNG: one colour, or random pixels from `seed`."""
    if pixel is not None:
        data = np.tile(np.array(pixel, np.uint8), (height, width, 1))
    else:
        data = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + data[y].tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
