"""Go net/http server behaviours both HTTP front ends share (the v3 JSON gateway and the v2 API):
ServeMux's redirect of unclean paths, and noticing that a long-polling client went away."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from aiohttp import web


def client_gone(request: web.Request, interval: float = 0.5) -> asyncio.Future[None]:
    """Resolves when the HTTP client has closed its connection (long streams end then)."""

    async def watch() -> None:
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            await asyncio.sleep(interval)

    return asyncio.ensure_future(watch())


def _clean_path(p: str) -> str:
    """Go's ServeMux cleanPath: path.Clean, keeping a trailing slash."""
    parts: list[str] = []
    for part in p.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    out = "/" + "/".join(parts)
    if p.endswith("/") and out != "/":
        out += "/"
    return out


def unclean_path_redirect(request: web.Request) -> web.Response | None:
    """Go's ServeMux answers a path with "//", "." or ".." elements with a 301 to the clean one."""
    path = request.path
    clean = _clean_path(path)
    if clean == path:
        return None
    location = quote(clean)
    query = request.raw_path.partition("?")[2]
    if query:
        location += "?" + query
    if request.method in ("GET", "HEAD"):
        return web.Response(
            status=301,
            text=f'<a href="{location}">Moved Permanently</a>.\n\n',
            content_type="text/html",
            charset="utf-8",
            headers={"Location": location},
        )
    return web.Response(status=301, headers={"Location": location})
