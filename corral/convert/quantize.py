"""Driving llama.cpp's quantizer and loader in a child process (see `corral.convert.worker`).

Owns the quantization levels `create --quantize` accepts (Ollama's names, case-insensitive),
which source types may be quantized (F32/F16/BF16, as Ollama), running the child with its
progress streamed back, and turning its failures into clear errors: a failure llama.cpp reports
is a 400 with its last log lines, a crash (signal) a 500. The child is killed if the caller
stops early (a client that went away).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from corral.errors import BadRequestError, CorralError

# Ollama's level names -> llama.cpp's llama_ftype values (llama.h).
QUANT_TYPES: dict[str, int] = {
    "Q4_0": 2,
    "Q4_1": 3,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q8_0": 7,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
}
_ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
QUANTIZABLE = frozenset({"F32", "F16", "BF16"})
NOT_QUANTIZABLE = "quantization is only supported for F16, BF16 and F32 models"
CHECK_TIMEOUT = 600.0


def parse_quant_type(text: str) -> str:
    """The canonical level name (`Q4_K_M`) for a requested one (`q4_k_m`, `q4_K`)."""
    key = text.strip().upper()
    key = _ALIASES.get(key, key)
    if key not in QUANT_TYPES:
        raise BadRequestError(
            f"unsupported quantization type {text} - supported types are {', '.join(QUANT_TYPES)}"
        )
    return key


def check_quantizable(file_type: str) -> None:
    if file_type.upper() not in QUANTIZABLE:
        raise BadRequestError(NOT_QUANTIZABLE)


def _worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "corral.convert.worker", *args]


def _failure(action: str, rc: int, err: IO[bytes]) -> CorralError:
    err.seek(0)
    detail = err.read()[-2000:].decode("utf-8", errors="replace").strip()
    if rc < 0:
        return CorralError(f"{action} crashed (signal {-rc}){': ' + detail if detail else ''}")
    return BadRequestError(f"{action} failed: {detail or f'exit status {rc}'}")


def quantize(src: Path, dst: Path, level: str) -> Iterator[float]:
    """Quantize the GGUF `src` into `dst` at `level` (canonical); yields the fraction done."""
    ftype = QUANT_TYPES[parse_quant_type(level)]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            _worker("quantize", str(src), str(dst), str(ftype)),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
        )
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                parts = raw.decode("ascii", errors="replace").split()
                if len(parts) == 3 and parts[0] == "progress" and parts[1].isdigit() and parts[2].isdigit():
                    yield int(parts[1]) / max(int(parts[2]), 1)
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if rc != 0:
            raise _failure("quantizing the model", rc, err)


def check_loads(path: Path) -> None:
    """Load the GGUF with llama.cpp in a child process; BadRequestError if it does not load."""
    with tempfile.TemporaryFile() as err:
        try:
            rc = subprocess.run(
                _worker("check", str(path)), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=err, timeout=CHECK_TIMEOUT, check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            raise CorralError("verifying the converted model timed out") from None
        if rc != 0:
            raise _failure("verifying the converted model", rc, err)
