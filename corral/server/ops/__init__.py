"""What an operator runs around the APIs.

Authentication and API keys (security, keys_api), rate limits (limits), CORS (cors), address
allowlists (allowlist), body checks (bodycheck), metrics, the request log (requestlog), the
registry endpoints and mirror (registry_api, mirror), readiness (ready), and the hardened HTTP
listener (listener).
"""
