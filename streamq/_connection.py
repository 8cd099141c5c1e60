"""Building redis-py clients from a URL (redis://, rediss://, unix://, redis+cluster://) or adopting the
user's own.

A standalone server gives one client. A cluster gives per-slot clients (_cluster.py): code that works on
one stream asks `for_key(client, stream)` for the client of the stream's slot, which on a standalone
server is the client itself; code that runs steps over several streams passes the whole thing to
_wire.run_steps, which routes each command to its slot.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
import redis.cluster

from . import _cluster
from ._cluster import AsyncSlotClients, SyncSlotClients
from .errors import ConfigurationError

ENV_URL = "STREAMQ_REDIS_URL"
DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_SOCKET_TIMEOUT_S = (
    10.0  # seconds: a server silent this long is treated as gone (blocking reads get more)
)
DEFAULT_MAX_CONNECTIONS = 64  # per client; callers wait for a free one instead of failing (redis-py#2517)

RedisLike = str | aioredis.Redis | aioredis.RedisCluster | None
AsyncClient = aioredis.Redis | AsyncSlotClients  # what async_client gives
SyncClient = redis.Redis | SyncSlotClients  # what sync_client gives


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


# The path of a redis:// or rediss:// URL names the database: empty, `/`, or `/` and a number. redis-py
# ignores any other path (`/abc`, `/0/x`) and uses database 0, which would put the data where nobody looks.
_DB_PATH = re.compile(r"/?[0-9]*")


def check_url(url: str) -> str:
    """`url` if its path can name a database; ConfigurationError (before any connection) otherwise. A unix://
    URL's path is the socket's (its database is `?db=N`), so only redis://, rediss:// and cluster URLs are
    checked."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() == "unix":
        return url
    path = urlsplit(url).path
    if not _DB_PATH.fullmatch(path):
        raise ConfigurationError(
            f"bad Redis URL {redact(url)!r}: the path {path!r} is not a database number"
            " (redis://host:6379/0 is database 0)"
        )
    return url


def redact(text: str) -> str:
    """The URL (or a text holding URLs) with every password replaced, for logs and error messages."""
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(_hide_userinfo, text))


def for_key(client: AsyncClient, key: str) -> aioredis.Redis:
    """The plain client that serves `key`: the client itself, or on a cluster the client of its slot."""
    return client if isinstance(client, aioredis.Redis) else client.for_key(key)


def for_key_sync(client: SyncClient, key: str) -> redis.Redis:
    return client if isinstance(client, redis.Redis) else client.for_key(key)


def async_client(target: RedisLike) -> tuple[AsyncClient, bool]:
    """(client, owned): a client built here from a URL is ours to close; the user's own is not (on a
    cluster, the per-slot clients are always ours: closing them leaves the user's cluster client open)."""
    if isinstance(target, aioredis.Redis):
        return target, False
    if isinstance(target, aioredis.RedisCluster):
        return AsyncSlotClients(target, max_connections=DEFAULT_MAX_CONNECTIONS, owns_cluster=False), True
    if target is not None and not isinstance(target, str):
        raise ConfigurationError(
            "expected a Redis URL, a redis.asyncio.Redis or a redis.asyncio.RedisCluster, "
            f"got {type(target).__name__}"
        )
    url = check_url(resolve_url(target))
    if _cluster.is_cluster_url(url):
        try:
            cluster = aioredis.RedisCluster.from_url(
                _cluster.node_url(url), socket_timeout=DEFAULT_SOCKET_TIMEOUT_S, socket_connect_timeout=5.0
            )
        except (ValueError, redis.RedisError) as exc:
            raise ConfigurationError(f"bad Redis Cluster URL {redact(url)!r}: {exc}") from None
        return AsyncSlotClients(cluster, max_connections=DEFAULT_MAX_CONNECTIONS, owns_cluster=True), True
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


def sync_client(
    target: str | aioredis.Redis | redis.Redis | AsyncSlotClients | SyncSlotClients | Any | None,
) -> SyncClient:
    """A synchronous client to the same server or cluster: for the lease keeper thread and for sync
    producers."""
    if isinstance(target, redis.Redis | SyncSlotClients):
        return target
    if isinstance(target, redis.cluster.RedisCluster):
        return SyncSlotClients(target, owns_cluster=False)
    if isinstance(target, AsyncSlotClients):
        return SyncSlotClients(_cluster.sync_twin(target.cluster), owns_cluster=True)
    if isinstance(target, aioredis.RedisCluster):
        return SyncSlotClients(_cluster.sync_twin(target), owns_cluster=True)
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
    url = check_url(resolve_url(target))
    if _cluster.is_cluster_url(url):
        try:
            cluster = redis.cluster.RedisCluster.from_url(
                _cluster.node_url(url), socket_timeout=DEFAULT_SOCKET_TIMEOUT_S, socket_connect_timeout=5.0
            )
        except ValueError as exc:  # a RedisError (no node answers) is the caller's to retry
            raise ConfigurationError(f"bad Redis Cluster URL {redact(url)!r}: {exc}") from None
        return SyncSlotClients(cluster, owns_cluster=True)
    try:
        return redis.Redis.from_url(url, socket_timeout=DEFAULT_SOCKET_TIMEOUT_S, socket_connect_timeout=5.0)
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {redact(url)!r}: {exc}") from None
