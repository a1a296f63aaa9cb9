"""Image files named in a `corral run` prompt, attached as images for a vision model (Ollama's rule).

A path in the prompt (`./cat.png`, `/tmp/a b.jpg`, `C:\\x.jpeg`; spaces escaped or not) that names an
existing JPEG, PNG or WebP file (at most 100 MB, recognised by its first bytes) is read, removed
from the prompt text and sent base64-encoded in `images`, with `Added image '<path>'` on stderr.
Paths that name no file stay text. Only for models with the `vision` capability (the caller asks).
"""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path
from typing import Any

from corral.client import Client
from corral.errors import BadRequestError

IMAGE_PATH = re.compile(r"(?:[a-zA-Z]:)?(?:\./|/|\\)[\S\\ ]+?\.(?i:jpg|jpeg|png|webp)\b")
MAX_BYTES = 100 * 1024 * 1024


def _kind(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def named_images(prompt: str) -> list[tuple[str, Path]]:
    """The image-looking paths of a prompt that name existing files: (as written, path)."""
    found = []
    for written in IMAGE_PATH.findall(prompt):
        path = Path(written.replace("\\ ", " ").replace("%20", " ")).expanduser()
        if path.is_file():
            found.append((written, path))
    return found


def attach_images(prompt: str) -> tuple[str, list[str]]:
    """The prompt without its image paths, and those images base64-encoded."""
    images: list[str] = []
    for written, path in named_images(prompt):
        if path.stat().st_size > MAX_BYTES:
            raise BadRequestError(f"file size exceeds maximum limit (100MB): {path}")
        data = path.read_bytes()
        if _kind(data[:16]) is None:
            raise BadRequestError(f"invalid image type: {path} is not a JPEG, PNG or WebP image")
        sys.stderr.write(f"Added image '{path}'\n")
        for text in (f"'{path}'", f"'{written}'", written):
            prompt = prompt.replace(text, "")
        images.append(base64.b64encode(data).decode())
    return prompt.strip(), images


def user_message(c: Client, model: str, text: str) -> dict[str, Any]:
    """A user turn for `model`: with the images its text names when the model has vision."""
    msg: dict[str, Any] = {"role": "user", "content": text}
    if named_images(text) and "vision" in (c.show(model).capabilities or []):
        msg["content"], msg["images"] = attach_images(text)
    return msg
