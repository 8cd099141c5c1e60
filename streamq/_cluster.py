"""Redis Cluster: one plain client per hash slot, whose connections follow the slot's primary.

Everything streamq keeps for a stream shares the stream's hash tag (keys.py), so every command and script
about one stream goes to one slot, hence to one node. The hot paths (publishing, reading, settling,
renewing) therefore need no cluster client at all: they get an ordinary redis-py client whose connection
pool is bound to the slot. Its connections look the slot's primary up when they connect, and look it up
afresh whenever they reconnect, which they do after a redirection or a lost connection:

- MOVED, ASK, TRYAGAIN, CLUSTERDOWN (a failover or a resharding under way) mark the connection, which
  disconnects before its next command and reconnects to whichever node then owns the slot. The error
  itself reaches the caller as a transient error (_wire.TRANSIENT): the worker retries after a backoff,
  as it does when a standalone server restarts.
- A primary killed outright refuses connections; the retry reconnects, the slot map is read again, and
  once the cluster has promoted a replica the slot's new primary answers.

Commands that span streams (status over every stream, the registry) go through redis-py's own cluster
client, which routes each command of a pipeline to its slot.

URLs: ``redis+cluster://host:port`` (``rediss+cluster://`` for TLS) names any node of the cluster; the
others are discovered. A ``redis.asyncio.RedisCluster`` or ``redis.cluster.RedisCluster`` may be given
instead.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.cluster as sync_cluster
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MasterDownError, MovedError, TryAgainError

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# Replies that mean "this node is not (or not yet) the one for this slot": reconnect and ask again.
REDIRECTIONS = (MovedError, AskError, TryAgainError, ClusterDownError, MasterDownError)
_REFRESH_EVERY_S = 0.1  # at most one slot-map refresh per 100 ms, however many connections ask for one


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def node_url(url: str) -> str:
    """``redis+cluster://h:p`` as the ``redis://h:p`` redis-py's cluster clients take."""
    scheme, sep, rest = url.partition("://")
    return CLUSTER_SCHEMES[scheme.lower()] + sep + rest


def slot_of(key: str) -> int:
    return int(key_slot(key.encode()))


# ---------------------------------------------------------------------------------------- asyncio


class AsyncSlotMap:
    """Which node serves a slot, from a redis-py asyncio cluster client's slot cache, refreshed on demand."""

    def __init__(self, cluster: AsyncRedisCluster) -> None:
        self.cluster = cluster
        self._refreshed_at = 0.0
        self._lock: asyncio.Lock | None = None

    async def address(self, slot: int, *, refresh: bool) -> tuple[str, int]:
        if refresh:
            await self._refresh()
        else:
            await self.cluster.initialize()
        node = self.cluster.nodes_manager.get_node_from_slot(slot)
        return str(node.host), int(node.port)

    async def _refresh(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if time.monotonic() - self._refreshed_at < _REFRESH_EVERY_S:
                return  # another connection refreshed just now
            await self.cluster.initialize()
            await self.cluster.nodes_manager.initialize()
            self._refreshed_at = time.monotonic()


class _SlotBound:
    """What a connection bound to a slot knows: its slot, whether it connected before (a reconnect asks
    the cluster where the slot is now) and whether a reply redirected it (it reconnects before its next
    command)."""

    def __init__(self, *, slot_map: Any, slot: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._slot_map = slot_map
        self._slot = slot
        self._connected_before = False
        self._redirected = False

    def mark_redirected(self) -> None:
        self._redirected = True


class _AsyncSlotConnecting(_SlotBound):
    """Mixed into redis-py's asyncio connection classes: connect to the slot's primary, as of now."""

    _slot_map: AsyncSlotMap

    async def _connect(self) -> None:
        # A reconnect follows a lost connection or a redirection: the slot may have moved.
        address = await self._slot_map.address(self._slot, refresh=self._connected_before)
        self.host, self.port = address
        self._connected_before = True
        await super()._connect()  # type: ignore[misc]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._redirected:
            self._redirected = False
            await self.disconnect()  # type: ignore[attr-defined]
        await super().send_packed_command(command, check_health)  # type: ignore[misc]

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except REDIRECTIONS:
            self._redirected = True
            raise


class AsyncSlotConnection(_AsyncSlotConnecting, aioredis.Connection):
    pass


class AsyncSlotSSLConnection(_AsyncSlotConnecting, aioredis.SSLConnection):
    pass


# What a node connection of the cluster client is built with, passed on to the slot clients' connections.
_PASSED_ON = ("username", "password", "credential_provider", "client_name", "socket_connect_timeout",
              "socket_timeout", "socket_keepalive", "socket_keepalive_options", "health_check_interval",
              "encoding", "encoding_errors", "decode_responses", "protocol")  # fmt: skip


def _node_kwargs(cluster: AsyncRedisCluster | sync_cluster.RedisCluster) -> tuple[dict[str, Any], bool]:
    """(connection kwargs without the address, TLS or not) of the cluster client's nodes."""
    given = cluster.get_connection_kwargs()
    kwargs = {name: given[name] for name in _PASSED_ON if name in given}
    connection_class = given.get("connection_class")
    tls = bool(given.get("ssl")) or (
        isinstance(connection_class, type)
        and issubclass(connection_class, aioredis.SSLConnection | redis.SSLConnection)
    )
    if tls:
        kwargs.update({name: value for name, value in given.items() if name.startswith("ssl_")})
    return kwargs, tls


class AsyncSlotClients:
    """A plain asyncio client per slot (cached), all built on one cluster client."""

    def __init__(self, cluster: AsyncRedisCluster, *, max_connections: int, owns_cluster: bool) -> None:
        self.cluster = cluster
        self._owns_cluster = owns_cluster
        self.slot_map = AsyncSlotMap(cluster)
        self.max_connections = max_connections  # per slot's pool; raise it before the first for_key
        self._clients: dict[int, aioredis.Redis] = {}

    def slot_of(self, key: str) -> int:
        return slot_of(key)

    def for_key(self, key: str) -> aioredis.Redis:
        return self.for_slot(slot_of(key))

    def for_slot(self, slot: int) -> aioredis.Redis:
        client = self._clients.get(slot)
        if client is None:
            kwargs, tls = _node_kwargs(self.cluster)
            pool = aioredis.BlockingConnectionPool(
                connection_class=AsyncSlotSSLConnection if tls else AsyncSlotConnection,
                max_connections=self.max_connections, timeout=30, slot_map=self.slot_map, slot=slot,
                **kwargs,
            )  # fmt: skip
            client = self._clients[slot] = aioredis.Redis.from_pool(pool)
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        if self._owns_cluster:
            await self.cluster.aclose()


# ---------------------------------------------------------------------------------------- blocking


class SyncSlotMap:
    """AsyncSlotMap for blocking clients (the lease keeper's thread, SyncProducer)."""

    def __init__(self, cluster: sync_cluster.RedisCluster) -> None:
        self.cluster = cluster
        self._refreshed_at = 0.0
        self._lock = threading.Lock()

    def address(self, slot: int, *, refresh: bool) -> tuple[str, int]:
        if refresh:
            with self._lock:
                if time.monotonic() - self._refreshed_at >= _REFRESH_EVERY_S:
                    self.cluster.nodes_manager.initialize()
                    self._refreshed_at = time.monotonic()
        node = self.cluster.nodes_manager.get_node_from_slot(slot)
        return str(node.host), int(node.port)


class _SyncSlotConnecting(_SlotBound):
    """_AsyncSlotConnecting for redis-py's blocking connection classes."""

    _slot_map: SyncSlotMap

    def _connect(self) -> Any:
        self.host, self.port = self._slot_map.address(self._slot, refresh=self._connected_before)
        self._connected_before = True
        return super()._connect()  # type: ignore[misc]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._redirected:
            self._redirected = False
            self.disconnect()  # type: ignore[attr-defined]
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except REDIRECTIONS:
            self._redirected = True
            raise


class SyncSlotConnection(_SyncSlotConnecting, redis.Connection):
    pass


class SyncSlotSSLConnection(_SyncSlotConnecting, redis.SSLConnection):
    pass


class SyncSlotClients:
    """AsyncSlotClients for blocking code."""

    def __init__(self, cluster: sync_cluster.RedisCluster, *, owns_cluster: bool) -> None:
        self.cluster = cluster
        self._owns_cluster = owns_cluster
        self.slot_map = SyncSlotMap(cluster)
        self._clients: dict[int, redis.Redis] = {}
        self._lock = threading.Lock()

    def slot_of(self, key: str) -> int:
        return slot_of(key)

    def for_key(self, key: str) -> redis.Redis:
        return self.for_slot(slot_of(key))

    def for_slot(self, slot: int) -> redis.Redis:
        with self._lock:
            client = self._clients.get(slot)
            if client is None:
                kwargs, tls = _node_kwargs(self.cluster)
                pool = redis.ConnectionPool(
                    connection_class=SyncSlotSSLConnection if tls else SyncSlotConnection,
                    slot_map=self.slot_map, slot=slot,
                    **kwargs,
                )  # fmt: skip
                client = self._clients[slot] = redis.Redis.from_pool(pool)
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
        if self._owns_cluster:
            self.cluster.close()


def sync_twin(cluster: AsyncRedisCluster) -> sync_cluster.RedisCluster:
    """A blocking cluster client to the same cluster, with the same credentials and TLS settings."""
    kwargs, tls = _node_kwargs(cluster)
    kwargs.pop("decode_responses", None)
    seeds = [sync_cluster.ClusterNode(str(node.host), int(node.port))  # type: ignore[no-untyped-call]
             for node in cluster.nodes_manager.startup_nodes.values()]  # fmt: skip
    return sync_cluster.RedisCluster(startup_nodes=seeds, ssl=tls, **kwargs)
