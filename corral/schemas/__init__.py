"""Wire types shared by the server and the client (pydantic v2)."""
