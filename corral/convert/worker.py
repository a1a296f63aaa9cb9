"""Child process for the native steps of a create: `python -m corral.convert.worker <verb> ...`.

- `quantize IN OUT FTYPE`: llama.cpp's own quantizer (`llama_model_quantize` with its default
  params); prints `progress I N` on stdout as llama.cpp starts each tensor.
- `check IN`: loads the model with llama.cpp (CPU, memory-mapped), proving a conversion is
  loadable.
Runs in its own process so that a native crash cannot take the server down. llama.cpp's log is
captured; on failure its last lines go to stderr for the parent to report. Exit status 0 on
success, 1 on a failure llama.cpp reported.
"""

from __future__ import annotations

import ctypes
import re
import sys
from collections import deque
from typing import Any

PROGRESS_RE = re.compile(r"^\[\s*(\d+)\s*/\s*(\d+)\]")
WARN, ERROR, CONT = 3, 4, 5  # ggml_log_level


class _Log:
    """llama.cpp's log callback: complete lines, progress echoed, warnings and errors kept."""

    def __init__(self) -> None:
        self.partial = ""
        self.level = 0
        self.problems: deque[str] = deque(maxlen=6)
        self.tail: deque[str] = deque(maxlen=3)

    def __call__(self, level: int, text: bytes, _user: Any) -> None:
        if level != CONT:
            if self.partial:  # a new message ends the unfinished line before it
                self._line(self.partial)
                self.partial = ""
            self.level = level
        *lines, self.partial = (self.partial + text.decode("utf-8", errors="replace")).split("\n")
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        line = line.strip()
        match = PROGRESS_RE.match(line)
        if match:
            print(f"progress {match.group(1)} {match.group(2)}", flush=True)
        elif line:
            (self.problems if self.level in (WARN, ERROR) else self.tail).append(line)

    def report(self, what: str) -> None:
        lines = [*(self.problems or self.tail), self.partial.strip()]
        print("; ".join([what, *[x for x in lines if x]]), file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    import llama_cpp as ll

    log = _Log()
    callback = ll.llama_log_callback(log)
    ll.llama_log_set(callback, ctypes.c_void_p(0))
    ll.llama_backend_init()
    verb = argv[0] if argv else ""
    if verb == "quantize" and len(argv) == 4:
        params = ll.llama_model_quantize_default_params()
        params.ftype = int(argv[3])
        params.nthread = 0
        if ll.llama_model_quantize(argv[1].encode(), argv[2].encode(), ctypes.byref(params)) != 0:
            log.report("llama.cpp could not quantize the model")
            return 1
        return 0
    if verb == "check" and len(argv) == 2:
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = 0
        mparams.use_extra_bufts = False  # loading is the check: no weight repacking needed
        model = ll.llama_model_load_from_file(argv[1].encode(), mparams)
        if not model:
            log.report("llama.cpp could not load the model")
            return 1
        ll.llama_model_free(model)
        return 0
    print("usage: python -m corral.convert.worker quantize IN OUT FTYPE | check IN", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
