"""Chat templates: Ollama's Go text/template subset, Jinja chat templates, and the built-in table.

Owns: prompt rendering from a model's template (`prompt`), the Go template interpreter
(`gotemplate`), the Jinja path (`jinja`) and the built-in template table with autodetection
(`builtin`). Does not own: tool-call or thinking output parsing, nor the store's template layers.
"""
