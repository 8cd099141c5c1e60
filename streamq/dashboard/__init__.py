"""A web dashboard for streamq: streams, groups, consumers, dead letters, and where an event is.

Run it (`pip install 'streamq[dashboard]'` brings uvicorn):

    streamq dashboard --port 8000                       # read-only, on 127.0.0.1
    streamq dashboard orders payments --port 8000       # these streams only
    STREAMQ_DASHBOARD_TOKEN=... streamq dashboard --allow-writes --token-from-env

or mount it in your own Starlette / FastAPI service (any ASGI server will do):

    from streamq.dashboard import create_app
    app.mount("/streamq", create_app("redis://localhost:6379/0", basic_auth="ops:secret"))

Pages: the overview (every stream and group: length, lag, pending, the oldest pending entry's age, rates of
the last minutes as small charts, retries waiting, scheduled, pauses, dead letters), a stream's groups and
consumers with the entries each holds (its leases) and who owns which partition, the dead-letter browser
(filter by group and reason; one letter with its error, traceback, attempts and payload, decoded as its
event class when that class is importable here), and "where is my event".

Read-only unless made with allow_writes=True, which needs a token or basic auth: then replay, purge, pause
and resume are POSTs with a CSRF token. Pages are rendered on the server with every value escaped, and use
only the CSS and JS shipped in this package (no CDN); every response carries a Content-Security-Policy
without inline script, and refuses framing.

Redis sees one set of reads per refresh interval (refresh_ms, 2 s by default) whoever is watching: reads
are shared by every viewer (_data.py), and the rates are sampled from those same reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from ..events import Event
from ._app import DashboardApp
from ._data import DEFAULT_REFRESH_MS, DEFAULT_WINDOW_MS

__all__ = ["DEFAULT_REFRESH_MS", "DEFAULT_WINDOW_MS", "DashboardApp", "create_app"]


def create_app(
    redis: str | aioredis.Redis | aioredis.RedisCluster | None = None,
    *,
    streams: Sequence[str] | None = None,
    allow_writes: bool = False,
    token: str | None = None,
    basic_auth: tuple[str, str] | str | None = None,
    refresh_ms: int = DEFAULT_REFRESH_MS,
    window_ms: int = DEFAULT_WINDOW_MS,
    event_types: Sequence[type[Event]] | None = None,
) -> DashboardApp:
    """The dashboard as an ASGI app.

    redis: a URL (None: $STREAMQ_REDIS_URL, else localhost), or a redis.asyncio client of yours (left
    open). streams: the streams shown (default: every stream that has had a worker). allow_writes: offer
    replay, purge, pause and resume; refused (ConfigurationError) without `token` or `basic_auth`
    ("user:password" or a pair). refresh_ms: how long one read of Redis serves every viewer, and how often
    open pages refresh. window_ms: how far back the rate charts go. event_types: the classes payloads are
    decoded as (default: every tagged streamq.Event subclass imported in this process).
    """
    return DashboardApp(
        redis,
        streams=streams,
        allow_writes=allow_writes,
        token=token,
        basic_auth=basic_auth,
        refresh_ms=refresh_ms,
        window_ms=window_ms,
        event_types=event_types,
    )
