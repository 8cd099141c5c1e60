"""The dashboard as one ASGI application: routes, authentication, writes, and the Redis client.

See streamq/dashboard/__init__.py for what it shows and how to run or mount it.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Sequence

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import _cluster, control, keys
from .._connection import redact, resolve_url
from ..deadletter import DeadLetterResult, DeadLetters
from ..errors import ConfigurationError, DeadLetterNotFound
from ..events import Event
from ..inspect import stream_status
from . import _letter_pages, _pages
from ._auth import SESSION_COOKIE, Auth, same_origin
from ._data import DEFAULT_REFRESH_MS, DEFAULT_WINDOW_MS, Rates, SharedReads, read_overview, read_stream
from ._html import layout, when
from ._http import (
    BodyTooLarge,
    Receive,
    Request,
    Response,
    Router,
    Scope,
    Send,
    read_request,
    segment,
    send_response,
)
from ._letters import REASONS, decode_payload, letter_page, show_letter
from ._where import locate_here, where_module

log = structlog.get_logger("streamq.dashboard")

# An entry id, maybe with its partition: "1712345678901-0", "3/1712345678901-0".
_REF = re.compile(r"(?:([0-9]{1,4})/)?([0-9]+-[0-9]+)")
STATIC_FILES = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}
DEFAULT_PAUSE_REASON = "paused from the dashboard"

# What a write did, shown once on the page it redirects to (?done=...&n=...): fixed texts, so a link
# cannot put words of its own on the page.
NOTICES = {
    "replayed": "{n} dead letter(s) sent back to their group",
    "purged": "{n} dead letter(s) deleted",
    "paused": "paused",
    "resumed": "resumed",
    "nothing": "nothing selected",
    "missing": "{n} of the selected dead letters were no longer there",
}


class DashboardApp:
    """The ASGI app: `await app(scope, receive, send)`. Make it with streamq.dashboard.create_app."""

    def __init__(
        self,
        redis: str | aioredis.Redis | aioredis.RedisCluster | None = None,
        *,
        streams: Sequence[str] | None = None,
        allow_writes: bool = False,
        token: str | None = None,
        basic_auth: tuple[str, str] | str | None = None,
        refresh_ms: int = DEFAULT_REFRESH_MS,
        window_ms: int = DEFAULT_WINDOW_MS,
        event_types: Sequence[type[Event]] | None = None,
    ) -> None:
        if isinstance(basic_auth, str):
            user, colon, password = basic_auth.partition(":")
            if not colon:
                raise ConfigurationError("basic auth must be given as user:password")
            basic_auth = (user, password)
        self.auth = Auth(token=token, basic=basic_auth)
        if allow_writes and not self.auth.required:
            raise ConfigurationError(
                "allow_writes needs authentication: give a token or basic auth (replay, purge, pause and"
                " resume must not be open to anyone who reaches the port)"
            )
        if not isinstance(refresh_ms, int) or refresh_ms < 100:
            raise ConfigurationError(f"refresh_ms must be at least 100, got {refresh_ms!r}")
        if not isinstance(window_ms, int) or window_ms < refresh_ms:
            raise ConfigurationError(
                f"window_ms must be at least refresh_ms ({refresh_ms}), got {window_ms!r}"
            )
        self.streams = [keys.validate_name("stream", s) for s in streams] if streams else None
        self.allow_writes = allow_writes
        self.refresh_ms = refresh_ms
        self.event_types = list(event_types) if event_types is not None else None
        self.reads = SharedReads(refresh_ms)
        self.rates = Rates(window_ms)
        self._given = redis
        self._target: aioredis.Redis | aioredis.RedisCluster | None = None
        self._owns_target = False
        self._static = {
            name: importlib.resources.files(__package__).joinpath("static", name).read_bytes()
            for name in STATIC_FILES
        }
        self.router = Router()
        for method, pattern, handler in (
            ("GET", "/", self.overview),
            ("GET", "/stream/{stream}", self.stream),
            ("GET", "/stream/{stream}/dead-letters", self.letters),
            ("GET", "/stream/{stream}/dead-letters/{ref:ref}", self.letter),
            ("POST", "/stream/{stream}/dead-letters/replay", self.replay),
            ("POST", "/stream/{stream}/dead-letters/purge", self.purge),
            ("POST", "/stream/{stream}/pause", self.pause),
            ("POST", "/stream/{stream}/resume", self.resume),
            ("GET", "/where", self.where),
            ("GET", "/login", self.login_form),
            ("POST", "/login", self.login),
            ("POST", "/logout", self.logout),
            ("GET", "/static/{name}", self.static),
        ):
            self.router.add(method, pattern, handler)

    # ------------------------------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        try:
            request = await read_request(scope, receive)
        except BodyTooLarge:
            await send_response(send, Response.text("request body too large", 413))
            return
        response = await self._respond(request)
        await send_response(send, response, head=request.method == "HEAD")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        """Close the Redis client, if it was made here from a URL (a client you gave stays open)."""
        target, self._target = self._target, None
        if target is not None and self._owns_target:
            await target.aclose()

    def target(self) -> aioredis.Redis | aioredis.RedisCluster:
        """The client every read and write goes through, made on first use (in the server's event loop)."""
        if self._target is None:
            given = self._given
            if isinstance(given, aioredis.Redis | aioredis.RedisCluster):
                self._target, self._owns_target = given, False
            else:
                url = resolve_url(given)
                if _cluster.is_cluster_url(url):
                    self._target = aioredis.RedisCluster.from_url(_cluster.node_url(url))
                else:
                    self._target = aioredis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
                self._owns_target = True
        return self._target

    async def _respond(self, request: Request) -> Response:
        handler, params, known = self.router.find(request.method, request.path)
        if handler is None:
            if known:
                return Response(
                    status=405,
                    headers=[("allow", "GET, POST")],
                    body=b"method not allowed",
                    content_type="text/plain; charset=utf-8",
                )
            return self._page(
                request, "Not found", _pages.error_page("Not found", request.path), None, status=404
            )
        request.params = params
        if handler not in (self.static, self.login_form, self.login):
            viewer = self.auth.viewer(request)
            if viewer is None:
                return self._unauthenticated(request)
            request.params["viewer"] = viewer
        try:
            return await handler(request)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("dashboard cannot reach redis", error=redact(str(exc)))
            message = f"cannot reach Redis: {redact(str(exc))}"
            return self._page(
                request,
                "Redis unreachable",
                _pages.error_page("Redis unreachable", message),
                request.params.get("viewer"),
                status=503,
            )
        except DeadLetterNotFound as exc:
            return self._page(
                request,
                "Not found",
                _pages.error_page("Not found", str(exc)),
                request.params.get("viewer"),
                status=404,
            )
        except (ConfigurationError, RedisError) as exc:
            return self._page(
                request,
                "Cannot do that",
                _pages.error_page("Cannot do that", redact(str(exc))),
                request.params.get("viewer"),
                status=400,
            )

    def _unauthenticated(self, request: Request) -> Response:
        if self.auth.basic is not None:
            return Response(
                status=401,
                headers=[("www-authenticate", 'Basic realm="streamq", charset="UTF-8"')],
                body=b"authentication required",
                content_type="text/plain; charset=utf-8",
            )
        if request.method in ("GET", "HEAD"):
            here = request.root + request.path
            query = request.raw_query
            return Response.redirect(request.url("/login", next=here + (f"?{query}" if query else "")))
        return Response.text("authentication required", 401)

    def _page(
        self,
        request: Request,
        title: str,
        body: str,
        viewer: str | None,
        *,
        status: int = 200,
        refresh: bool = False,
    ) -> Response:
        notice = ""
        done = request.arg("done")
        if done in NOTICES:
            count = request.arg("n", "0") or "0"
            notice = NOTICES[done].format(n=int(count) if count.isdigit() else 0)
        csrf = self.auth.csrf_token(viewer) if viewer else ""
        text = layout(
            title,
            body,
            root=request.root,
            refresh_ms=self.refresh_ms if refresh else None,
            writes=self.allow_writes,
            viewer=viewer,
            csrf=csrf,
            notice=notice,
        )
        return Response.html(text, status)

    def _csrf(self, request: Request) -> str:
        return self.auth.csrf_token(request.params["viewer"])

    # ------------------------------------------------------------------------------------------ pages

    async def overview(self, request: Request) -> Response:
        data = await self.reads.get("overview", lambda: read_overview(self.target(), self.streams))
        self.rates.record(data)
        body = _pages.overview(request, data, self.rates)
        return self._page(request, "Overview", body, request.params["viewer"], refresh=True)

    async def stream(self, request: Request) -> Response:
        name = keys.validate_name("stream", request.params["stream"])
        detail = await self.reads.get(("stream", name), lambda: read_stream(self.target(), name))
        body = _pages.stream_page(request, detail, writes=self.allow_writes, csrf=self._csrf(request))
        return self._page(request, name, body, request.params["viewer"], refresh=True)

    async def letters(self, request: Request) -> Response:
        name = keys.validate_name("stream", request.params["stream"])
        group = request.arg("group") or None
        reason = request.arg("reason") or None
        if reason is not None and reason not in REASONS:
            raise ConfigurationError(f"unknown reason {reason!r}: one of {', '.join(REASONS)}")
        after = request.arg("after") or None
        if group is not None:
            keys.validate_name("group", group)
        page = await self.reads.get(
            ("letters", name, group, reason, after),
            lambda: letter_page(self.target(), name, group=group, reason=reason, after=after),
        )
        st = await self.reads.get(("status", name), lambda: stream_status(self.target(), name))
        body = _letter_pages.letters_page(
            request,
            name,
            page,
            groups=[g.name for g in st.groups],
            group=group,
            reason=reason,
            writes=self.allow_writes,
            csrf=self._csrf(request),
        )
        return self._page(request, f"Dead letters of {name}", body, request.params["viewer"])

    async def letter(self, request: Request) -> Response:
        name = keys.validate_name("stream", request.params["stream"])
        ref = request.params["ref"]
        found = await self.reads.get(("letter", name, ref), lambda: show_letter(self.target(), name, ref))
        decoded = decode_payload(found.payload, self.event_types)
        body = _letter_pages.letter_page(
            request, name, found, decoded, writes=self.allow_writes, csrf=self._csrf(request)
        )
        return self._page(request, f"Dead letter {ref}", body, request.params["viewer"])

    async def where(self, request: Request) -> Response:
        stream = (request.arg("stream") or "").strip()
        entry_id = (request.arg("id") or "").strip()
        group = (request.arg("group") or "").strip() or None
        form = _pages.where_form(request, stream, entry_id, group)
        if not stream or not entry_id:
            return self._page(request, "Where is my event", form, request.params["viewer"])
        keys.validate_name("stream", stream)
        if group is not None:
            keys.validate_name("group", group)
        body = form + await self._whereabouts(request, stream, entry_id, group)
        return self._page(request, "Where is my event", body, request.params["viewer"])

    async def _whereabouts(self, request: Request, stream: str, entry_id: str, group: str | None) -> str:
        module = where_module()
        found = _REF.fullmatch(entry_id)
        if module is None and found is None:
            raise ConfigurationError(f"{entry_id!r} is not an entry id (they look like 1712345678901-0)")
        entries = []
        if found is not None:
            partition = int(found.group(1)) if found.group(1) is not None else None
            entries = await locate_here(self.target(), stream, found.group(2), group, partition)
        if module is None:
            return _pages.where_page(request, stream, None, entries, self.event_types)
        whereabouts = await module.locate(self.target(), stream, entry_id, group=group)
        return _pages.where_page(request, stream, whereabouts, entries, self.event_types)

    async def login_form(self, request: Request) -> Response:
        if self.auth.token is None:
            return Response.redirect(request.url("/"))
        body = _pages.login_page(request, self._next(request, request.arg("next")), failed=False)
        return self._page(request, "Log in", body, None)

    async def login(self, request: Request) -> Response:
        if self.auth.token is None:
            return Response.redirect(request.url("/"))
        form = request.form()
        given = (form.get("token") or [""])[0]
        next_url = self._next(request, (form.get("next") or [""])[0])
        if not self.auth.check_token(given):
            log.warning("dashboard login refused")
            return self._page(
                request, "Log in", _pages.login_page(request, next_url, failed=True), None, status=401
            )
        secure = "; Secure" if request.scheme == "https" else ""
        cookie = (
            f"{SESSION_COOKIE}={self.auth.session_value()}; Path={request.root or '/'}; HttpOnly;"
            f" SameSite=Strict{secure}"
        )
        response = Response.redirect(next_url)
        response.headers.append(("set-cookie", cookie))
        return response

    async def logout(self, request: Request) -> Response:
        refused = self._refuse_post(request, write=False)
        if refused is not None:
            return refused
        response = Response.redirect(request.url("/login"))
        response.headers.append(("set-cookie", f"{SESSION_COOKIE}=; Path={request.root or '/'}; Max-Age=0"))
        return response

    def _next(self, request: Request, given: str | None) -> str:
        """Where to go after logging in: a path of this app only (never another site)."""
        home = request.url("/")
        if (
            not given
            or not given.startswith((request.root or "") + "/")
            or given.startswith("//")
            or "\\" in given
        ):
            return home
        return given

    async def static(self, request: Request) -> Response:
        name = request.params["name"]
        if name not in self._static:
            return Response.text("not found", 404)
        return Response(
            body=self._static[name],
            content_type=STATIC_FILES[name],
            headers=[("cache-control", "public, max-age=300")],
        )

    # ------------------------------------------------------------------------------------------ writes

    def _refuse_post(self, request: Request, *, write: bool = True) -> Response | None:
        """A 403 for a write the dashboard may not do, or a POST without its CSRF token; None if fine."""
        if write and not self.allow_writes:
            return Response.text(
                "writes are off: start the dashboard with --allow-writes (and a token or"
                " basic auth) to replay, purge, pause or resume",
                403,
            )
        if not same_origin(request):
            return Response.text("refused: the form was posted from another site", 403)
        given = (request.form().get("csrf") or [""])[0]
        if not self.auth.csrf_ok(request.params["viewer"], given):
            return Response.text("refused: missing or wrong CSRF token (reload the page and try again)", 403)
        return None

    def _done(
        self, request: Request, path: str, done: str, count: int | None = None, **query: str
    ) -> Response:
        self.reads.clear()
        return Response.redirect(
            request.url(path, done=done, n=None if count is None else str(count), **query)
        )

    async def replay(self, request: Request) -> Response:
        return await self._letters_write(request, "replay")

    async def purge(self, request: Request) -> Response:
        return await self._letters_write(request, "purge")

    async def _letters_write(self, request: Request, action: str) -> Response:
        refused = self._refuse_post(request)
        if refused is not None:
            return refused
        name = keys.validate_name("stream", request.params["stream"])
        form = request.form()
        ids = [i for i in form.get("id", []) if i]
        back = f"/stream/{segment(name)}/dead-letters"
        if not ids:
            return self._done(request, back, "nothing")
        dead = DeadLetters(self.target())
        try:
            result: DeadLetterResult = await (
                dead.replay(name, ids) if action == "replay" else dead.purge(name, ids)
            )
        finally:
            await dead.aclose()
        log.info(
            f"dashboard {action}",
            stream=name,
            ids=ids,
            count=result.count,
            not_found=result.not_found,
            viewer=request.params["viewer"],
        )
        if result.not_found and not result.count:
            return self._done(request, back, "missing", len(result.not_found))
        return self._done(request, back, "replayed" if action == "replay" else "purged", result.count)

    async def pause(self, request: Request) -> Response:
        refused = self._refuse_post(request)
        if refused is not None:
            return refused
        name = keys.validate_name("stream", request.params["stream"])
        form = request.form()
        group = (form.get("group") or [""])[0] or None
        reason = (form.get("reason") or [""])[0] or DEFAULT_PAUSE_REASON
        info = await control.pause(self.target(), name, group, reason)
        log.info(
            "dashboard pause",
            stream=name,
            group=group,
            since=when(info.since_ms),
            viewer=request.params["viewer"],
        )
        return self._done(request, f"/stream/{segment(name)}", "paused")

    async def resume(self, request: Request) -> Response:
        refused = self._refuse_post(request)
        if refused is not None:
            return refused
        name = keys.validate_name("stream", request.params["stream"])
        group = (request.form().get("group") or [""])[0] or None
        await control.resume(self.target(), name, group)
        log.info("dashboard resume", stream=name, group=group, viewer=request.params["viewer"])
        return self._done(request, f"/stream/{segment(name)}", "resumed")
