"""A fake of the model's per-sequence KV state for prompt-cache tests: sequence -> tokens.

`seq_state` returns the tokens as the cache key bytes, `seq_restore` reads them back, `seq_rm`
drops a sequence or its tail; `calls` records saves and restores, and `fail_restore` makes
restores fail as llama.cpp can.
"""

from __future__ import annotations

from corral.engine.llamacpp.promptcache import key_tokens, token_key


class StateModel:
    def __init__(self) -> None:
        self.kv: dict[int, list[int]] = {}
        self.fail_restore = False
        self.calls: list[str] = []

    def seq_state(self, seq: int) -> bytearray:
        self.calls.append("save")
        return bytearray(token_key(self.kv.get(seq, [])))

    def seq_restore(self, seq: int, data: bytearray) -> bool:
        self.calls.append("restore")
        if self.fail_restore:
            return False
        self.kv[seq] = key_tokens(bytes(data))
        return True

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        if p0 < 0:
            self.kv.pop(seq, None)
        else:
            self.kv[seq] = self.kv.get(seq, [])[:p0]
        return True
