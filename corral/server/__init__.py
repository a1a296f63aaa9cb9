"""The HTTP server: a FastAPI app built by `create_app` with its collaborators injected."""
