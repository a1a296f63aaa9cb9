"""Images in prompts: which models may receive them, and where they go in the rendered prompt.

Ollama's rule (server/prompt.go `chatPrompt`): each message's images get `[img-N]` tags, numbered
over the conversation, prefixed to its content or replacing its `[img]` placeholders; the template
then renders the tags wherever it prints the content (Go template or Jinja alike, so a text-only
chat template needs no change), and the runner puts image N where `[img-N]` ends up (see
`corral.engine.llamacpp.media`). Tags are numbered before the conversation is fitted to the
context; `placed` then renumbers the tags left in the final prompt from 0 and keeps only their
images, so the images of dropped messages are not sent. A model without a projector refuses images
with a 400 instead of dropping them.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Any, Protocol

from corral.errors import BadRequestError, CorralError
from corral.gguf import read_gguf
from corral.schemas.native import Message

IMAGE_TAG = re.compile(r"\[img-(\d+)\]")


class HasCapabilities(Protocol):
    capabilities: list[str]


def decode_images(job: HasCapabilities, images: list[str] | None, model: str) -> list[bytes]:
    """The request's base64 images as bytes; a 400 for a model without vision or bad base64."""
    if not images:
        return []
    if "vision" not in job.capabilities:
        raise BadRequestError(f'"{model}" does not support images (the model has no vision projector)')
    try:
        return [base64.b64decode(i.replace("\r", "").replace("\n", ""), validate=True) for i in images]
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f"invalid image data: {exc}") from None


def tag_messages(messages: list[Message]) -> list[Message]:
    """The messages with `[img-N]` tags for their images (numbered over the conversation)."""
    out: list[Message] = []
    n = 0
    for msg in messages:
        if not msg.images:
            out.append(msg)
            continue
        prefix, content = "", msg.content
        for _ in msg.images:
            tag = f"[img-{n}]"
            n += 1
            if "[img]" in content:
                content = content.replace("[img]", tag, 1)
            else:
                prefix += tag
        out.append(msg.model_copy(update={"content": prefix + content}))
    return out


def tag_raw(prompt: str, count: int) -> str:
    """A raw prompt places its images itself with `[img-N]`; one that places none gets them first."""
    if count and not IMAGE_TAG.search(prompt):
        return "".join(f"[img-{i}]" for i in range(count)) + prompt
    return prompt


def placed(prompt: str, images: list[bytes]) -> tuple[str, list[bytes]]:
    """The prompt with its image tags renumbered from 0 in order, and the images they name."""
    if not images:
        return prompt, images
    numbers: dict[int, int] = {}
    kept: list[bytes] = []

    def renumber(match: re.Match[str]) -> str:
        i = int(match.group(1))
        if i >= len(images):
            return match.group(0)
        if i not in numbers:
            numbers[i] = len(kept)
            kept.append(images[i])
        return f"[img-{numbers[i]}]"

    return IMAGE_TAG.sub(renumber, prompt), kept


def projector_info(projectors: list[Path], verbose: bool) -> dict[str, Any] | None:
    """`/api/show` `projector_info`: the first projector's GGUF metadata, like `model_info`."""
    if not projectors:
        return None
    try:
        return read_gguf(projectors[0]).model_info(verbose=verbose)
    except (CorralError, OSError):
        return None
