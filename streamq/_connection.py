"""Building redis-py clients from a URL (redis://, rediss://, unix://) or adopting the user's own."""

from __future__ import annotations

import os
import re
from typing import Any

import redis
import redis.asyncio as aioredis

from .errors import ConfigurationError

ENV_URL = "STREAMQ_REDIS_URL"
DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_SOCKET_TIMEOUT_S = (
    10.0  # seconds: a server silent this long is treated as gone (blocking reads get more)
)
DEFAULT_MAX_CONNECTIONS = 64  # per client; callers wait for a free one instead of failing (redis-py#2517)

RedisLike = str | aioredis.Redis | None


def resolve_url(url: str | None) -> str:
    return url or os.environ.get(ENV_URL) or DEFAULT_URL


# The user-info of a URL anywhere in a text: up to the last `@` before the host (a password may contain
# an unencoded `@`, and redis-py, like urllib, splits at the last one), never across a space or a `/`.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s/?#]*)@")
# redis-py also takes `password=` (the usual form for unix:// sockets) and `ssl_password=` as query arguments.
_QUERY_SECRET = re.compile(r"([?&][A-Za-z_]*password=)[^&#\s]*", re.IGNORECASE)


def _hide_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match[2].partition(":")
    return f"{match[1]}{user}:***@" if colon else f"{match[1]}***@"  # a lone name may be a password too


def redact(text: str) -> str:
    """The URL (or a text holding URLs) with every password replaced, for logs and error messages."""
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(_hide_userinfo, text))


def async_client(target: RedisLike) -> tuple[aioredis.Redis, bool]:
    """(client, owned): a client built here from a URL is ours to close; the user's own is not."""
    if isinstance(target, aioredis.Redis):
        return target, False
    if target is not None and not isinstance(target, str):
        raise ConfigurationError(
            f"expected a Redis URL or a redis.asyncio.Redis, got {type(target).__name__}"
        )
    url = resolve_url(target)
    try:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=DEFAULT_MAX_CONNECTIONS, timeout=30,
            socket_timeout=DEFAULT_SOCKET_TIMEOUT_S, socket_connect_timeout=5.0, health_check_interval=30,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {redact(url)!r}: {exc}") from None
    # from_pool: a client built on a pool passed as connection_pool= never closes it, so aclose() would
    # leave every pooled socket open.
    return aioredis.Redis.from_pool(pool), True


def sync_client(target: str | aioredis.Redis | redis.Redis | None) -> redis.Redis:
    """A synchronous client to the same server: for the lease keeper thread and for sync producers."""
    if isinstance(target, redis.Redis):
        return target
    if isinstance(target, aioredis.Redis):
        pool = target.connection_pool
        kwargs: dict[str, Any] = {
            k: v for k, v in pool.connection_kwargs.items()
            if k not in ("connection_class", "retry", "redis_connect_func", "event_dispatcher")
        }  # fmt: skip
        connection_class: type[Any] = redis.Connection
        if isinstance(pool.connection_class, type) and issubclass(
            pool.connection_class, aioredis.SSLConnection
        ):
            connection_class = redis.SSLConnection
        elif isinstance(pool.connection_class, type) and issubclass(
            pool.connection_class, aioredis.UnixDomainSocketConnection
        ):
            connection_class = redis.UnixDomainSocketConnection
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT_S)
        return redis.Redis.from_pool(redis.ConnectionPool(connection_class=connection_class, **kwargs))
    url = resolve_url(target)
    try:
        return redis.Redis.from_url(url, socket_timeout=DEFAULT_SOCKET_TIMEOUT_S, socket_connect_timeout=5.0)
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {redact(url)!r}: {exc}") from None
