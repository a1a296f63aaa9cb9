"""GPU offload on a real ggml GPU backend (issue 12): the Vulkan build on Mesa's software Vulkan
device (lavapipe, a CPU-type Vulkan device that llama.cpp uses only when GGML_VK_VISIBLE_DEVICES
picks it), or the CUDA build where CORRAL_TEST_GPU_BACKEND=cuda (bench/gpu_check.sh).

One server with a device-memory cap (lavapipe's 2 GiB heap never shrinks, so "does not fit" needs
a cap): SmolLM2 (31 layers with its output) does not fit whole and is split with the CPU; a tiny
random 2-layer model with SmolLM2's tokenizer fits whole (100% GPU) but not beside SmolLM2, so
loading it evicts SmolLM2. Where SmolLM2's package is not installed (the GPU machine of
bench/gpu_check.sh), CORRAL_TEST_GPU_GGUF names a stand-in of its shape (random weights) and
CORRAL_TEST_GPU_TOKENIZER the tokenizer for the tiny model (bench/random_gguf.py).

Offloaded decode on lavapipe runs at a few tokens per second: prompts stay under ~32 tokens and
generations at a few tokens. Skips, saying why, where the build or the
device is missing (`make test` builds the variant where Debian's Vulkan packages can be installed).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.cli.run import processor
from corral.engine.llamacpp.backend import is_built, variant_dir
from tests.support import ROOT, ServerProcess, smollm2_path

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # lavapipe: loads take a minute here

BACKEND = os.environ.get("CORRAL_TEST_GPU_BACKEND", "vulkan")
BACKENDS_DIR = Path(os.environ.get("CORRAL_BACKENDS_DIR") or "~/.cache/corral/backends").expanduser()
MiB = 1024 * 1024
CAP = 200 * MiB  # SmolLM2 needs ~250 MiB for all its layers (with the logits' compute buffer)
TOTAL_LAYERS = 31
OPTIONS: dict[str, Any] = {"temperature": 0, "seed": 1, "num_predict": 4}
STAND_IN = os.environ.get("CORRAL_TEST_GPU_GGUF")  # random weights: answers are noise
SMALL = "small:latest" if STAND_IN else "smollm2:135m"


def _skip_reason() -> str | None:
    if not is_built(variant_dir(BACKENDS_DIR, BACKEND)):
        return (f"no {BACKEND} build of llama.cpp in {BACKENDS_DIR} (make test builds it where Debian's Vulkan "
                f"packages can be installed; or scripts/build_backend.sh {BACKEND})")
    if BACKEND == "vulkan" and not glob.glob("/usr/share/vulkan/icd.d/lvp_icd.*.json"):
        return "Mesa's software Vulkan device (lavapipe, Debian mesa-vulkan-drivers) is not installed"
    return None


def _tiny_model(path: Path) -> Path:
    """A 2-layer random llama with SmolLM2's tokenizer (bench/random_gguf.py): ~30 MiB."""
    spec = importlib.util.spec_from_file_location("random_gguf", ROOT / "bench" / "random_gguf.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tokenizer = mod.read_tokenizer(Path(os.environ.get("CORRAL_TEST_GPU_TOKENIZER") or smollm2_path()))
    mod.write_model(path, tokenizer, layers=2, embd=256, ff=512, heads=4, kv_heads=2, ctx=2048, seed=3)
    return path


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("gpu-home")
    env = {
        "CORRAL_BACKEND": BACKEND,
        "CORRAL_BACKENDS_DIR": str(BACKENDS_DIR),
        "CORRAL_GPU_MEMORY_LIMIT": str(CAP),
        "CORRAL_NUM_PARALLEL": "1",
        "CORRAL_CONTEXT_LENGTH": "512",
        "CORRAL_KEEP_ALIVE": "10m",
        "CORRAL_MAX_LOADED_MODELS": "3",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    if BACKEND == "vulkan":
        env["GGML_VK_VISIBLE_DEVICES"] = "0"
    srv = ServerProcess(home, env).start(timeout=300)
    try:
        if STAND_IN:
            _create(srv, "small", Path(STAND_IN))
        else:
            with httpx.Client(base_url=srv.url, timeout=600, trust_env=False) as c:
                r = c.post("/api/pull", json={"model": "smollm2:135m", "stream": False})
                assert r.status_code == 200, r.text
        _create(srv, "tiny", _tiny_model(home / "tiny.gguf"))
        yield srv
    finally:
        srv.stop()


def _create(srv: ServerProcess, name: str, gguf: Path) -> None:
    modelfile = srv.home / f"{name}.Modelfile"
    modelfile.write_text(f"FROM {gguf}\n")
    out = srv.cli("create", name, "-f", str(modelfile), timeout=300)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def http(gpu: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gpu.url, timeout=600, trust_env=False) as c:
        yield c


def generate(http: httpx.Client, model: str, **options: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": "The capital of France is", "raw": True, "stream": False,
            "options": {**OPTIONS, **options}}
    r = http.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def ps(http: httpx.Client, name: str) -> dict[str, Any]:
    models = {m["name"]: m for m in http.get("/api/ps").json()["models"]}
    assert name in models, models
    return models[name]


def runner_report(srv: ServerProcess) -> tuple[int, int, dict[str, int]]:
    """What llama.cpp said in the newest runner's log: layers offloaded, of how many, and the
    buffer bytes per buffer name."""
    logs = sorted((srv.home / "logs").glob("runner-*.log"), key=lambda p: p.stat().st_mtime)
    text = logs[-1].read_text(errors="replace")
    m = re.findall(r"offloaded (\d+)/(\d+) layers to GPU", text)
    assert m, text[-2000:]
    buffers: dict[str, int] = {}
    for name, mib in re.findall(r"^\w+:\s+(\S+)\s+(?:model|KV|compute|output) buffer size =\s+([0-9.]+) MiB",
                                text, re.M):
        buffers[name] = buffers.get(name, 0) + int(float(mib) * MiB)
    return int(m[-1][0]), int(m[-1][1]), buffers


def test_devices_are_logged_at_start(gpu: ServerProcess) -> None:
    log = gpu.log_tail(20000)
    device = "Vulkan0" if BACKEND == "vulkan" else "CUDA0"
    assert f"inference compute id=0 library={BACKEND} name={device}" in log, log[-3000:]


def test_a_model_larger_than_the_cap_is_split_as_fitted_and_reported(gpu: ServerProcess, http: httpx.Client) -> None:
    out = generate(http, SMALL)
    assert out["eval_count"] > 0 and (out["response"] or STAND_IN)
    layers, total, buffers = runner_report(gpu)
    assert total == TOTAL_LAYERS and 0 < layers < total
    device = sum(b for name, b in buffers.items() if re.fullmatch(r"(Vulkan|CUDA)\d+", name))
    assert 0 < device <= CAP  # what the fit chose is what llama.cpp allocated, within the cap
    log = gpu.log_tail(20000)
    assert f"loaded {SMALL.removesuffix(':latest')}" in log and f"({layers}/{total} layers offloaded" in log
    planned = re.findall(rf"\({layers}/{total} layers offloaded \(\w+ {layers} layers ([0-9.]+) GiB\)\)", log)
    assert planned, log[-3000:]
    estimate = float(planned[-1]) * 1024 * MiB  # the fit's bytes for the device, as the log rounds them
    assert device * 0.95 <= estimate <= device * 1.3, (estimate, device)  # close, and not below llama.cpp's
    m = ps(http, SMALL)
    assert m["size_vram"] == device and m["size"] == sum(buffers.values())
    cpu = round((m["size"] - device) * 100 / m["size"])
    assert processor(m) == f"{cpu}%/{100 - cpu}% CPU/GPU"
    listing = gpu.cli("ps").stdout
    assert f"{cpu}%/{100 - cpu}% CPU/GPU" in listing, listing


def test_a_model_that_fits_runs_fully_offloaded_and_evicts_an_idle_one(gpu: ServerProcess, http: httpx.Client) -> None:
    r = http.post("/api/generate", json={"model": SMALL})  # loaded (at the fitted split) if it is not
    assert r.status_code == 200, r.text
    out = generate(http, "tiny")
    assert out["eval_count"] > 0
    layers, total, buffers = runner_report(gpu)
    assert layers == total == 3
    names = {m["name"] for m in http.get("/api/ps").json()["models"]}
    assert names == {"tiny:latest"}, "SmolLM2 (idle) was evicted for device memory"
    assert "to free GPU memory for tiny" in gpu.log_tail(20000)
    m = ps(http, "tiny:latest")
    assert m["size_vram"] == m["size"] == sum(buffers.values()) and processor(m) == "100% GPU"
    assert "100% GPU" in gpu.cli("ps").stdout


def test_num_gpu_forces_the_layer_count(gpu: ServerProcess, http: httpx.Client) -> None:
    generate(http, SMALL, num_gpu=10)
    layers, total, _ = runner_report(gpu)
    assert (layers, total) == (10, TOTAL_LAYERS)
    assert "CPU/GPU" in processor(ps(http, SMALL))
    cpu_only = generate(http, SMALL, num_gpu=0)
    assert cpu_only["eval_count"] > 0 and (cpu_only["response"] or STAND_IN)
    assert ps(http, SMALL)["size_vram"] == 0 and "100% CPU" in gpu.cli("ps").stdout
