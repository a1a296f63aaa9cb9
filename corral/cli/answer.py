"""Printing a streamed answer (thinking, text, the `--verbose` summary), shared by `run` and the REPL."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from corral.cli.common import err_console as err
from corral.config import Settings
from corral.schemas.native import ChatResponse, GenerateResponse

Answer = TypeVar("Answer", GenerateResponse, ChatResponse)


def print_summary(final: GenerateResponse | ChatResponse) -> None:
    """The `--verbose` timing summary, formatted as Ollama's Metrics.Summary."""
    def dur(ns: int) -> str:
        s = ns / 1e9
        return f"{s * 1000:.6f}ms".rstrip("0") if s < 1 else f"{s:.9f}s".rstrip("0")

    lines = [f"total duration:       {dur(final.total_duration or 0)}",
             f"load duration:        {dur(final.load_duration or 0)}"]
    pc, pd = final.prompt_eval_count or 0, final.prompt_eval_duration or 0
    lines.append(f"prompt eval count:    {pc} token(s)")
    if pd:
        lines += [f"prompt eval duration: {dur(pd)}", f"prompt eval rate:     {pc / (pd / 1e9):.2f} tokens/s"]
    if final.prompt_cache_count is not None:
        lines.append(f"prompt cache count:   {final.prompt_cache_count} token(s)")
    ec, ed = final.eval_count or 0, final.eval_duration or 0
    lines.append(f"eval count:           {ec} token(s)")
    if ed:
        lines += [f"eval duration:        {dur(ed)}", f"eval rate:            {ec / (ed / 1e9):.2f} tokens/s"]
    err.print("\n".join(lines))


def stream_answer(chunks: Iterable[Answer], *, hide_thinking: bool = False) -> Answer | None:
    """Print streamed text as it arrives; return the final chunk (None if the stream had none)."""
    final: Answer | None = None
    thinking = False
    for chunk in chunks:
        if isinstance(chunk, ChatResponse):
            think_text, text = chunk.message.thinking or "", chunk.message.content
        else:
            think_text, text = chunk.thinking or "", chunk.response
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
        if chunk.done:
            final = chunk
    return final


def history_path(cfg: Settings) -> Path | None:
    return None if cfg.nohistory else cfg.home / "history"
