"""Printing a streamed answer (thinking, text, the `--verbose` summary), shared by `run` and the REPL."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from corral.cli.common import err_console as err
from corral.config import Settings


def print_summary(final: dict[str, Any]) -> None:
    """The `--verbose` timing summary, formatted as Ollama's Metrics.Summary."""
    def dur(ns: int) -> str:
        s = ns / 1e9
        return f"{s * 1000:.6f}ms".rstrip("0") if s < 1 else f"{s:.9f}s".rstrip("0")

    lines = [f"total duration:       {dur(final.get('total_duration', 0))}",
             f"load duration:        {dur(final.get('load_duration', 0))}"]
    pc, pd = final.get("prompt_eval_count", 0), final.get("prompt_eval_duration", 0)
    lines.append(f"prompt eval count:    {pc} token(s)")
    if pd:
        lines += [f"prompt eval duration: {dur(pd)}", f"prompt eval rate:     {pc / (pd / 1e9):.2f} tokens/s"]
    if "prompt_cache_count" in final:
        lines.append(f"prompt cache count:   {final['prompt_cache_count']} token(s)")
    ec, ed = final.get("eval_count", 0), final.get("eval_duration", 0)
    lines.append(f"eval count:           {ec} token(s)")
    if ed:
        lines += [f"eval duration:        {dur(ed)}", f"eval rate:            {ec / (ed / 1e9):.2f} tokens/s"]
    err.print("\n".join(lines))


def stream_answer(chunks: Any, *, key: str, hide_thinking: bool = False) -> dict[str, Any]:
    """Print streamed text as it arrives; return the final chunk."""
    final: dict[str, Any] = {}
    thinking = False
    for chunk in chunks:
        part = chunk.get("message", {}) if key == "message" else chunk
        think_text = part.get("thinking") or ""
        text = part.get("content" if key == "message" else "response") or ""
        if think_text and not hide_thinking:
            if not thinking:
                sys.stdout.write("Thinking...\n")
                thinking = True
            sys.stdout.write(think_text)
        if text:
            if thinking:
                sys.stdout.write("\n...done thinking.\n\n")
                thinking = False
            sys.stdout.write(text)
        sys.stdout.flush()
        if chunk.get("done"):
            final = chunk
    return final


def history_path(cfg: Settings) -> Path | None:
    return None if cfg.nohistory else cfg.home / "history"
