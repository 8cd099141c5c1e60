"""The little HTTP layer the dashboard needs, on bare ASGI: a request read whole, a response sent whole,
a table of routes, and the security headers every response carries.

No web framework: the dashboard mounts in Starlette, FastAPI or any ASGI server, and brings no dependency.
Paths are matched relative to where the app is mounted (ASGI `root_path`), and links are made absolute
with the same prefix, so the pages work at `/` and at `/streamq/` alike.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, urlencode

MAX_BODY_BYTES = 64 * 1024  # a form post is a few ids and a token: anything larger is refused

# No script or style but the app's own files, nothing from elsewhere, never framed, forms post here only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyTooLarge(Exception):
    """A request body over MAX_BODY_BYTES."""


@dataclass
class Request:
    method: str
    path: str  # relative to the mount point, always starting with "/"
    root: str  # the mount point ("" at the root), prefixed to every link
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased; a repeated header's values joined with ", "
    scheme: str
    raw_query: str = ""
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)  # what the route's pattern matched

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def form(self) -> dict[str, list[str]]:
        """The url-encoded form of a POST (empty for any other content type)."""
        kind = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            return {}
        return parse_qs(self.body.decode("utf-8", errors="replace"), keep_blank_values=True)

    def cookies(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for part in self.headers.get("cookie", "").split(";"):
            name, eq, value = part.strip().partition("=")
            if eq and name not in found:
                found[name] = value
        return found

    def url(self, path: str, **query: str | None) -> str:
        """An absolute link to `path` of this app (mount point included), with the query given."""
        shown = {k: v for k, v in query.items() if v not in (None, "")}
        return self.root + path + ("?" + urlencode(shown) if shown else "")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def html(cls, text: str, status: int = 200) -> Response:
        return cls(status=status, body=text.encode())

    @classmethod
    def text(cls, text: str, status: int) -> Response:
        return cls(status=status, body=text.encode(), content_type="text/plain; charset=utf-8")

    @classmethod
    def redirect(cls, location: str) -> Response:
        """303 See Other: after a POST the browser GETs the page (a reload does not post again)."""
        return cls(
            status=303,
            headers=[("location", location)],
            content_type="text/plain; charset=utf-8",
            body=b"see " + location.encode(),
        )


Handler = Callable[[Request], Awaitable[Response]]


def segment(text: str) -> str:
    """A stream name or id as one path segment of a link (`{`, `}` and `/` percent-encoded)."""
    return quote(text, safe=":-_.")


class Router:
    """Routes by method and a path pattern: `{name}` matches one segment, `{name:ref}` a dead-letter id
    (`1712345678901-0` or `3/1712345678901-0`)."""

    _PARTS: ClassVar[dict[str, str]] = {"": r"[^/]+", "ref": r"(?:[0-9]{1,4}/)?[0-9]+-[0-9]+"}

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        def part(match: re.Match[str]) -> str:
            name, _, kind = match.group(1).partition(":")
            return f"(?P<{name}>{self._PARTS[kind]})"

        regex = re.sub(
            r"\{([a-z_]+(?::[a-z]+)?)\}", part, re.escape(pattern).replace(r"\{", "{").replace(r"\}", "}")
        )
        self._routes.append((method, re.compile(regex + r"\Z"), handler))

    def find(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], bool]:
        """(handler, params, path_known): path_known without a handler means the method is not allowed."""
        known = False
        for route_method, regex, handler in self._routes:
            found = regex.match(path)
            if found is None:
                continue
            known = True
            if route_method == method or (route_method == "GET" and method == "HEAD"):
                return handler, found.groupdict(), True
        return None, {}, known


async def read_request(scope: Scope, receive: Receive) -> Request:
    root = str(scope.get("root_path", "")).rstrip("/")
    path = str(scope.get("path", "/"))
    # Starlette's Mount and uvicorn --root-path leave the prefix in `path` (as the ASGI spec says), older
    # servers take it out: match the rest either way.
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    body = b""
    if scope.get("method") == "POST":
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                raise BodyTooLarge
            more = bool(message.get("more_body", False))
    return Request(
        method=str(scope.get("method", "GET")).upper(),
        path=path or "/",
        root=root,
        query=parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=False),
        headers=headers,
        scheme=str(scope.get("scheme", "http")),
        raw_query=scope.get("query_string", b"").decode("latin-1"),
        body=body,
    )


async def send_response(send: Send, response: Response, *, head: bool = False) -> None:
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        *((name.encode(), value.encode()) for name, value in SECURITY_HEADERS),
        *((name.encode(), value.encode("latin-1")) for name, value in response.headers),
    ]
    if not any(name == "cache-control" for name, _ in response.headers):
        headers.append((b"cache-control", b"no-store"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})


def status_text(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"
