"""The compatibility layers, translated to and from the native calls.

OpenAI (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models: openai, openai_stream),
the Responses API (responses, responses_tools) and Anthropic's Messages API (anthropic).
"""
