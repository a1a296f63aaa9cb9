"""CORRAL_BACKEND: which llama.cpp build the runners use (corral/engine/llamacpp/backend.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.config import Settings
from corral.engine.llamacpp.backend import Backend, may_have_device, placement_argv, select, variant_dir
from corral.errors import CorralError
from corral.fit import Placement

DEVICES = {
    "all": [{"name": "CPU", "description": "cpu", "kind": "cpu", "registry": "CPU", "free": 1, "total": 1},
            {"name": "Vulkan0", "description": "llvmpipe", "kind": "gpu", "registry": "Vulkan",
             "free": 2 << 30, "total": 2 << 30}],
    "offload": [{"index": 0, "name": "Vulkan0", "description": "llvmpipe", "kind": "gpu",
                 "total": 2 << 30, "free": 2 << 30}],
}


def built(root: Path, variant: str) -> Path:
    path = variant_dir(root, variant)
    (path / "lib").mkdir(parents=True)
    (path / "lib" / "libllama.so").write_bytes(b"")
    (path / "variant.json").write_text("{}")
    return path


def fake_python(tmp_path: Path, answer: dict[str, object]) -> str:
    """A 'python' that answers `-m corral.engine.llamacpp.devices` with a fixed table and records its env."""
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\necho \"$LLAMA_CPP_LIB_PATH\" > {tmp_path}/seen\necho '{json.dumps(answer)}'\n")
    script.chmod(0o755)
    return str(script)


def test_cpu_is_the_wheel() -> None:
    assert select("cpu", Path("/nonexistent")) == Backend()
    assert "LLAMA_CPP_LIB_PATH" not in Backend().env({"PATH": "/bin"})


def test_a_forced_variant_that_is_not_built_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(CorralError, match=r"scripts/build_backend\.sh vulkan"):
        select("vulkan", tmp_path)
    with pytest.raises(CorralError, match="unknown backend"):
        select("metal", tmp_path)


def test_auto_without_builds_is_cpu(tmp_path: Path) -> None:
    assert select("auto", tmp_path, python="/nonexistent/python", environ={}) == Backend()


def test_auto_does_not_probe_a_machine_without_gpu_device_nodes(tmp_path: Path) -> None:
    built(tmp_path, "vulkan")
    # a probe would fail loudly with this python; no probe happens without a device node or
    # GGML_VK_VISIBLE_DEVICES
    if may_have_device("vulkan", {}):
        pytest.skip("this machine has a GPU device node")
    assert select("auto", tmp_path, python="/nonexistent/python", environ={}) == Backend()


def test_auto_takes_a_built_variant_that_finds_a_device(tmp_path: Path) -> None:
    path = built(tmp_path, "vulkan")
    python = fake_python(tmp_path, DEVICES)
    got = select("auto", tmp_path, python=python, environ={"GGML_VK_VISIBLE_DEVICES": "0"})
    assert got.name == "vulkan" and got.lib == path / "lib"
    assert [d.name for d in got.devices] == ["Vulkan0"] and got.devices[0].total == 2 << 30
    assert (tmp_path / "seen").read_text().strip() == str(path / "lib")  # the probe used the build
    env = got.env({})
    assert env["LLAMA_CPP_LIB_PATH"] == env["MTMD_CPP_LIB"] == str(path / "lib")


def test_auto_keeps_the_cpu_build_when_the_variant_finds_nothing(tmp_path: Path) -> None:
    built(tmp_path, "vulkan")
    python = fake_python(tmp_path, {"all": DEVICES["all"][:1], "offload": []})
    assert select("auto", tmp_path, python=python, environ={"GGML_VK_VISIBLE_DEVICES": "0"}) == Backend()


def test_device_nodes_decide_the_probe(tmp_path: Path) -> None:
    assert not may_have_device("cuda", {}, dev=tmp_path)
    assert may_have_device("vulkan", {"GGML_VK_VISIBLE_DEVICES": "0"}, dev=tmp_path)
    (tmp_path / "nvidia0").touch()
    assert may_have_device("cuda", {}, dev=tmp_path) and may_have_device("vulkan", {}, dev=tmp_path)


def test_placement_arguments() -> None:
    assert placement_argv(None) == [] and placement_argv(Placement(0, 31)) == []
    p = Placement(20, 31, tensor_split=(0.75, 0.25))
    assert placement_argv(p) == ["--n-gpu-layers", "20", "--split-mode", "layer", "--main-gpu", "0",
                                 "--tensor-split", "0.750000,0.250000"]


def test_settings() -> None:
    cfg = Settings.from_env({"CORRAL_BACKEND": "vulkan", "CORRAL_GPU_OVERHEAD": "1048576",
                             "CORRAL_GPU_MEMORY_LIMIT": "1073741824", "CORRAL_BACKENDS_DIR": "~/b"})
    assert cfg.backend == "vulkan" and cfg.gpu_overhead == 1 << 20 and cfg.gpu_memory_limit == 1 << 30
    assert cfg.backends_dir == Path("~/b").expanduser()
    with pytest.raises(ValueError, match="unknown backend"):
        Settings.from_env({"CORRAL_BACKEND": "rocm"})


def test_auto_on_macos_uses_the_wheels_metal_device(tmp_path: Path) -> None:
    metal = {"all": [], "offload": [{"index": 0, "name": "MTL0", "description": "Apple M2", "kind": "gpu",
                                     "total": 8 << 30, "free": 6 << 30}]}
    got = select("auto", tmp_path, python=fake_python(tmp_path, metal), environ={}, platform="darwin")
    assert got.lib is None and [d.name for d in got.devices] == ["MTL0"]
    assert select("cpu", tmp_path, python="/nonexistent/python", platform="darwin") == Backend()
