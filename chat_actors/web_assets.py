"""The web client's static files (`chat_actors/web/`) as HTTP routes, with the headers a
browser needs to run them safely and cache them well.

The files are a handful of small texts, read once from package data when the app is built,
so a request never touches the disk. Caching without a build step:
- `index.html` is served at `/` with `Cache-Control: no-cache` and a strong `ETag`: the
  browser revalidates it on every load and gets a 304 when nothing changed;
- the page names its script and stylesheet under `/assets/<build>/...`, where `<build>` is a
  hash of every web file, so those URLs never change meaning and are cached for a year
  (`immutable`); a new release is a new `<build>`, fetched by the next page load. The
  script's relative `import './chat-client.js'` resolves under the same prefix;
- the unversioned `/chat-client.js`, `/app.js`, `/style.css` (what other front ends import)
  are revalidated like the page.

Security: a Content-Security-Policy with no inline script or style, `connect-src` limited to
this HTTP origin and the WebSocket origin the page connects to (another port, so it is named;
it is derived exactly as `GET /api/info` derives `ws_url`), Trusted Types required (a string
handed to `innerHTML` and friends throws instead of becoming markup), no framing, and
`nosniff` / `no-referrer`.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import NotFound

#: the files of chat_actors/web/ that are served, and their media types
WEB_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "chat-client.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "timeline.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
#: served at /<name> and /assets/<build>/<name> (index.html only at /)
ASSETS = tuple(name for name in WEB_FILES if name != "index.html")

REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"

#: CSP host sources cannot hold an IPv6 literal; such a WebSocket origin is named by scheme only
_CSP_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?")


def content_security_policy(ws_url: str) -> str:
    """The page's CSP: nothing inline, connections only to this origin and `ws_url`'s origin."""
    parts = urlsplit(ws_url)
    scheme = parts.scheme if parts.scheme in ("ws", "wss") else "ws"
    ws_source = f"{scheme}://{parts.netloc}" if _CSP_HOST.fullmatch(parts.netloc) else f"{scheme}:"
    return "; ".join((
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        f"connect-src 'self' {ws_source}",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ))


def security_headers(ws_url: str) -> dict[str, str]:
    """Headers every web client response carries (the CSP matters for the page itself)."""
    return {
        "Content-Security-Policy": content_security_policy(ws_url),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    }


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: weak comparison against any listed tag, or `*`."""
    if not if_none_match:
        return False
    bare = etag.removeprefix("W/")
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == bare:
            return True
    return False


class WebAssets:
    """The web files in memory: bodies, ETags, and the build id that versions asset URLs."""

    def __init__(self, files: dict[str, bytes]) -> None:
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name] + b"\0")
        self.build = digest.hexdigest()[:16]
        page = files["index.html"].decode("utf-8")
        # "/app.js" -> "/assets/<build>/app.js" in src= and href= of the page
        names = "|".join(re.escape(name) for name in ASSETS)
        page = re.sub(rf'((?:src|href)=")/({names})"', rf'\1/assets/{self.build}/\2"', page)
        self.bodies = {**files, "index.html": page.encode("utf-8")}
        self.etags = {name: _etag(body) for name, body in self.bodies.items()}

    @classmethod
    def load(cls) -> "WebAssets":
        web = importlib.resources.files("chat_actors").joinpath("web")
        return cls({name: web.joinpath(name).read_bytes() for name in WEB_FILES})

    def response(self, request: Request, name: str, cache_control: str, headers: dict[str, str]) -> Response:
        etag = self.etags[name]
        headers = {**headers, "ETag": etag, "Cache-Control": cache_control}
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(self.bodies[name], media_type=WEB_FILES[name], headers=headers)


def web_routes(ws_url_for: Callable[[Request], str], assets: WebAssets | None = None) -> list[Route]:
    """GET routes for the web client; `ws_url_for(request)` is `/api/info`'s `ws_url`."""
    web = assets or WebAssets.load()

    async def index(request: Request) -> Response:
        return web.response(request, "index.html", REVALIDATE, security_headers(ws_url_for(request)))

    def unversioned(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            return web.response(request, name, REVALIDATE, security_headers(ws_url_for(request)))
        return serve

    async def versioned(request: Request) -> Response:
        name, build = request.path_params["name"], request.path_params["build"]
        if name not in ASSETS or build != web.build:
            # an asset of another release: its content is not here, and must not be cached as it
            raise NotFound(f"no asset {name} in build {build} (this server has build {web.build})")
        return web.response(request, name, IMMUTABLE, security_headers(ws_url_for(request)))

    routes = [Route("/", index, methods=["GET"])]
    routes += [Route(f"/{name}", unversioned(name), methods=["GET"]) for name in ASSETS]
    routes.append(Route("/assets/{build}/{name}", versioned, methods=["GET"]))
    return routes
