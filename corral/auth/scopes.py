"""Scopes and the route → scope classification.

Four scopes: `read` (list and inspect models), `infer` (run models), `manage` (change the model
store), `admin` (keys, metrics). `admin` implies every other scope and `manage` implies `read`;
`infer` implies nothing. `GET|HEAD /` is always open (it is the liveness probe), and so are
`GET|HEAD /api/ready` (the readiness probe, which checks `read` itself before naming models) and
`GET|HEAD /ui` and `/ui/*` (the web page's static files; its API calls need their own scopes). A route this
module does not know needs `admin`, so a newly added route is closed until it is classified.
"""

from __future__ import annotations

from corral.errors import BadRequestError

SCOPES = ("read", "infer", "manage", "admin")
_IMPLIES = {"admin": frozenset(SCOPES), "manage": frozenset({"manage", "read"})}

_READ = {"/api/tags", "/api/show", "/api/ps", "/api/version", "/openapi.json", "/docs", "/redoc",
         "/docs/oauth2-redirect"}
_INFER = {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/tokenize",
          "/api/detokenize", "/api/rerank", "/api/ws"}
_MANAGE = {"/api/pull", "/api/create", "/api/copy", "/api/delete", "/api/push"}
_ADMIN_PREFIXES = ("/metrics", "/api/keys", "/admin/")
_READ_METHODS = ("GET", "HEAD")


def parse_scopes(text: str | list[str] | tuple[str, ...]) -> frozenset[str]:
    """Parse `infer,read` (commas or spaces) or a list; unknown scopes are a BadRequestError."""
    items = text.replace(",", " ").split() if isinstance(text, str) else [str(t) for t in text]
    scopes = frozenset(s.strip().lower() for s in items if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown:
        raise BadRequestError(f"unknown scope {', '.join(unknown)}; choose from {', '.join(SCOPES)}")
    if not scopes:
        raise BadRequestError(f"at least one scope is required ({', '.join(SCOPES)})")
    return scopes


def expand(scopes: frozenset[str]) -> frozenset[str]:
    """The scopes granted, with implications applied."""
    out: set[str] = set()
    for scope in scopes:
        out |= _IMPLIES.get(scope, frozenset({scope}))
    return frozenset(out)


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs, or None for the open liveness route."""
    method = method.upper()
    if path in ("/", "/api/ready") and method in _READ_METHODS:
        return None  # liveness and readiness probes; /api/ready names models only for `read`
    if (path == "/ui" or path.startswith("/ui/")) and method in _READ_METHODS:
        return None  # the web page and its static assets: the key prompt must load without a key
    if path in _READ:
        return "read"
    if path in _INFER:
        return "infer"
    if path in _MANAGE or path.startswith("/api/blobs/"):
        return "manage"
    if path.startswith(_ADMIN_PREFIXES):
        return "admin"
    if path == "/v1/models" or path.startswith("/v1/models/"):
        return "read" if method in _READ_METHODS else "admin"
    if path.startswith("/v1/"):
        return "infer"
    if path == "/v2" or path.startswith("/v2/"):
        return "read" if method in _READ_METHODS else "manage"
    return "admin"


def allows(granted: frozenset[str], needed: str) -> bool:
    return needed in expand(granted)
