"""Model conversion: Hugging Face safetensors -> GGUF, and quantization with llama.cpp.

`plan_conversion(dir)` validates a model directory (config.json, *.safetensors, tokenizer files)
and returns a `Conversion` whose `write(path)` streams the GGUF tensor by tensor; `quantize`
and `check_loads` run llama.cpp in a child process. Written with numpy and the `gguf` package
only (no torch, no transformers). Knows nothing of the model store, the server or the engine;
the store's create and bundled imports call it.
"""

from __future__ import annotations

from corral.convert.arch import ARCHITECTURES
from corral.convert.convert import Conversion, plan_conversion
from corral.convert.quantize import (
    NOT_QUANTIZABLE,
    QUANT_TYPES,
    check_loads,
    check_quantizable,
    parse_quant_type,
    quantize,
)

__all__ = [
    "ARCHITECTURES",
    "NOT_QUANTIZABLE",
    "QUANT_TYPES",
    "Conversion",
    "check_loads",
    "check_quantizable",
    "parse_quant_type",
    "plan_conversion",
    "quantize",
]
