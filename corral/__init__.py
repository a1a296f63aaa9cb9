"""corral: run large language models locally; a drop-in replacement for Ollama.

The public Python surface is small: the HTTP client (`corral.client`), the error type
(`corral.errors.CorralError`) and the wire schemas (`corral.schemas`).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
