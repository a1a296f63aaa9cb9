"""The web chat page: `GET /ui/` and its static assets, shipped in the package (no CDN, no build).

The page and its assets are public (the key prompt must load before a key is known; see
`corral.auth.scopes`); every API call the page makes goes through the normal auth, host and CORS
checks. Only files present in `static/` at import time are served, by exact name, so a request
path never reaches the filesystem. Every answer carries a strict Content-Security-Policy
(`default-src 'self'`: no inline script, no third-party origin) and no-sniff / no-framing headers.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from corral.errors import NotFoundError

router = APIRouter(include_in_schema=False)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, media type) for every servable file in the package's static folder."""
    folder = resources.files(__package__ or "corral.server.ui").joinpath("static")
    out: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in _TYPES:
            out[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return out


ASSETS = _load_assets()


def _asset(name: str) -> Response:
    found = ASSETS.get(name)
    if found is None:
        raise NotFoundError("404 page not found")
    body, media_type = found
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/ui")
async def ui_root() -> Response:
    return RedirectResponse("/ui/", status_code=307, headers=SECURITY_HEADERS)


@router.get("/ui/")
async def ui_index() -> Response:
    return _asset("index.html")


@router.get("/ui/{name}")
async def ui_asset(name: str) -> Response:
    return _asset(name)


__all__ = ["CSP", "router"]
