"""The annotation viewer: static files served under ``/viewer/`` (no token needed).

The page (``static/index.html``, ``viewer.js``, ``viewer.css``) and the vendored NiiVue bundle
(``static/vendor/niivue/``) are plain files shipped with the package: no build step and no
internet at run time. They hold no patient data; the page asks the user for an API token,
keeps it in the tab's ``sessionStorage`` and sends it as ``Authorization: Bearer`` to ``/api``.

``create_app`` includes :data:`router`; it serves

- ``GET /`` -> 307 redirect to ``/viewer/``
- ``GET /viewer`` -> 307 redirect to ``/viewer/`` (so relative URLs in the page resolve)
- ``GET /viewer/`` -> ``index.html``
- ``GET /viewer/{path}`` -> the file at ``static/{path}``; 404 for anything that does not
  resolve to a regular file inside ``static/`` (``..``, absolute paths, symlinks out).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Explicit types: the platform's mimetypes table may lack .mjs or map .js to text/plain,
# and browsers refuse to run an ES module served with a non-JavaScript type.
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
_UNKNOWN_MEDIA_TYPE = "application/octet-stream"

# The page talks only to its own origin. WebGL shaders and NiiVue's worker-free bundle need
# nothing beyond 'self'; blob:/data: images are NiiVue's font atlas and thumbnails.
_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' blob: data:; worker-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate on every load so an upgraded package never runs a stale viewer.js.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def resolve_static(path: str) -> Path:
    """The file under ``STATIC_DIR`` that ``path`` names, refusing anything outside it.

    Args:
        path: a URL path relative to ``/viewer/`` (``""`` means ``index.html``).

    Returns:
        The resolved path of a regular file inside ``STATIC_DIR``.

    Raises:
        HTTPException: 404 when the path escapes ``STATIC_DIR`` (``..``,
            an absolute path, a symlink out) or names a folder.
    """
    if path in ("", "/"):
        path = "index.html"
    if "\\" in path or "\x00" in path:
        raise HTTPException(status_code=404, detail="not found")
    candidate = (STATIC_DIR / path).resolve()
    if not candidate.is_relative_to(STATIC_DIR) or not candidate.is_file():
        raise HTTPException(status_code=404, detail="not found")
    return candidate


@router.get("/")
def redirect_root() -> RedirectResponse:
    """Send a browser that opens the server's root to the viewer."""
    return RedirectResponse(url="/viewer/", status_code=307)


@router.get("/viewer")
def redirect_viewer() -> RedirectResponse:
    """Add the trailing slash, so the page's relative URLs resolve under ``/viewer/``."""
    return RedirectResponse(url="/viewer/", status_code=307)


@router.get("/viewer/{path:path}")
def serve_static(path: str) -> FileResponse:
    """A static file of the viewer (``index.html`` for ``/viewer/``); no token needed."""
    file = resolve_static(path)
    media_type = _MEDIA_TYPES.get(file.suffix.lower(), _UNKNOWN_MEDIA_TYPE)
    return FileResponse(file, media_type=media_type, headers=_HEADERS)
