"""`corral ps` PROCESSOR column, as `ollama ps` prints it."""

from __future__ import annotations

from corral.cli.run import processor


def test_processor_column() -> None:
    assert processor({"size": 1000, "size_vram": 0}) == "100% CPU"
    assert processor({"size": 1000}) == "100% CPU"
    assert processor({"size": 1000, "size_vram": 1000}) == "100% GPU"
    assert processor({"size": 1000, "size_vram": 520}) == "48%/52% CPU/GPU"
    assert processor({"size": 0, "size_vram": 0}) == "100% CPU"
