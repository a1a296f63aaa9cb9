"""Media types of Ollama's manifests (spec §6 "Layer media types").

Owns the string constants only; what each layer means is decided by `corral.store.store`.
"""

from __future__ import annotations

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST = "application/vnd.ollama.manifest.list.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"

_PREFIX = "application/vnd.ollama.image."
MODEL = _PREFIX + "model"
ADAPTER = _PREFIX + "adapter"
PROJECTOR = _PREFIX + "projector"
TEMPLATE = _PREFIX + "template"
PROMPT = _PREFIX + "prompt"  # legacy template layer, read only
SYSTEM = _PREFIX + "system"
PARAMS = _PREFIX + "params"
MESSAGES = _PREFIX + "messages"
LICENSE = _PREFIX + "license"
DRAFT = _PREFIX + "draft"
TENSOR = _PREFIX + "tensor"
JSON = _PREFIX + "json"
EMBED = _PREFIX + "embed"  # obsolete, ignored with a warning

WEIGHT_TYPES = frozenset({MODEL, ADAPTER, PROJECTOR, DRAFT, TENSOR})
