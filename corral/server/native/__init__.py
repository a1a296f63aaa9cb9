"""Ollama's native API (/api/*) and corral's own extensions to it.

Generation and chat (inference, truncate, chatparse, vision, adapters), embeddings, rerank,
tokenize, the model store's routes (management, modelinfo, uploads), loaded models (ps) and the
WebSocket stream (ws).
"""
