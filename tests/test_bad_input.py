"""Bad input and bad settings: a server that is not there, entries far over the size cap written around the
producer, settings of the wrong type or range, and several handlers of one stream and group.

Each ends in a stated way: a burst run gives up on an unreachable server with ServerError after
connect_timeout_ms (and `streamq worker --burst` exits non-zero), a waiting worker still obeys SIGTERM,
oversized entries are dead-lettered one read at a time, and settings that cannot work are refused with
ConfigurationError when the app is built.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from helpers import wait_until
from worker_proc import Job, WorkerProcess

import streamq
from streamq import keys
from streamq.cli import main
from streamq.errors import ServerError
from streamq.events import PAYLOAD_FIELD
from streamq.exit_codes import FAILURE


class RouteA(streamq.Event, tag="test.bad_input.route_a"):
    n: int


class RouteB(streamq.Event, tag="test.bad_input.route_b"):
    n: int


class RouteC(streamq.Event, tag="test.bad_input.route_c"):
    """A type published to the stream that no handler of the group takes."""

    n: int


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A local port that refuses connections: bound, so nothing else takes it, but never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# ------------------------------------------------------------------------------------ an absent server


async def test_burst_run_against_an_unreachable_server_ends_with_server_error(
    refusing_port: int, unique: str
) -> None:
    """run_until_idle() against a server nobody listens for gives up once connect_timeout_ms has passed:
    it raises ServerError naming the setting, instead of waiting for ever."""
    app = streamq.App(f"redis://127.0.0.1:{refusing_port}/0", connect_timeout_ms=300)

    @app.consumer(unique, group="g")
    async def handle(batch: streamq.Batch[Job]) -> None:
        return None

    with pytest.raises(ServerError, match="connect_timeout_ms"):
        await asyncio.wait_for(app.run_until_idle(), 30)


def test_worker_burst_against_an_unreachable_server_exits_non_zero(
    refusing_port: int,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`streamq worker APP --burst --connect-timeout-ms N` with a server nobody listens for ends by itself,
    exit code FAILURE, saying on stderr that the server was unreachable."""
    module = "bad_input_app_" + unique.replace("-", "_")
    (tmp_path / f"{module}.py").write_text(
        "import streamq\n"
        "app = streamq.App()\n"
        f"@app.consumer({unique!r}, group='g')\n"
        "async def handle(batch):\n"
        "    return None\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the worker adds the cwd to sys.path: undo that after
    # asyncio's own loop: should the worker wait for ever after all, the per-test timeout can interrupt it
    # (its SIGALRM did not get through uvloop when this was tried against the code before the fix).
    argv = ["worker", f"{module}:app", "--burst", "--connect-timeout-ms", "300", "--no-uvloop",
            "--redis-url", f"redis://127.0.0.1:{refusing_port}/0"]  # fmt: skip
    assert main(argv) == FAILURE
    err = capsys.readouterr().err
    assert "unreachable" in err and "connect_timeout_ms" in err, err


def test_sigterm_while_waiting_for_an_unreachable_server_exits_cleanly(
    refusing_port: int, unique: str, tmp_path: Path
) -> None:
    """A worker process (run_app, signals handled) that is waiting for a server nobody listens for stops
    waiting on SIGTERM and exits 0, rather than being killed by the signal or waiting on."""
    worker = WorkerProcess(
        tmp_path / "worker.log", url=f"redis://127.0.0.1:{refusing_port}/0", stream=unique, group="g",
        ledger=unique,
    )  # fmt: skip
    try:
        wait_until(
            lambda: "redis unavailable at start, retrying" in worker.log(),
            timeout_s=30,
            message="the worker to wait for the server",
        )
        worker.send(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log()
    finally:
        worker.close()


# ---------------------------------------------------------------------------------- oversized entries


async def test_oversized_entries_are_dead_lettered_one_read_at_a_time(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Ten 2 MiB entries appended around the producer, then 30 events, to a consumer with a 64 KiB cap and
    batch_size 8: the ten go to the dead letters as `oversized`, their bytes kept. Once a read holds one,
    the worker reads one entry at a time, and doubles its read with each read that holds none, back to
    batch_size: the events reach the handler in batches of 1, 2, 4, 8, 8 and 7."""
    big = b"\x00" * (2 * 1024 * 1024)
    for _ in range(10):
        await client.xadd(unique, {PAYLOAD_FIELD: big})
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Job(n) for n in range(30)])
    sizes: list[int] = []
    handled: list[int] = []
    app = streamq.App(redis_url)

    # Read-ahead off: a read sent ahead of a batch's decoding would still carry the count from before it.
    @app.consumer(unique, group="g", batch_size=8, max_event_bytes=64 * 1024, read_ahead=False,
                  lease_ms=1_000, block_ms=100)  # fmt: skip
    async def handle(batch: streamq.Batch[Job]) -> None:
        sizes.append(len(batch))
        handled.extend(job.n for job in batch.events)

    try:
        await asyncio.wait_for(app.run_until_idle(), 60)
        assert handled == list(range(30))
        assert sizes == [1, 2, 4, 8, 8, 7]
        assert app.consumers[0].reader.count == 8
        dead = await client.xrange(keys.dlq_key(unique))
        assert [fields[b"reason"] for _, fields in dead] == [b"oversized"] * 10
        assert all(fields[b"d"] == big for _, fields in dead)
        assert app.counts()["dead"] == 10
    finally:
        await client.delete(unique, keys.dlq_key(unique))  # 40 MiB this shared server need not keep


# ------------------------------------------------------------------------------------------- settings


def _register(**settings: Any) -> Callable[[str], None]:
    def build(stream: str) -> None:
        app = streamq.App("redis://127.0.0.1:1/0")

        @app.consumer(stream, group="g", **settings)
        async def handle(batch: streamq.Batch[Job]) -> None:
            return None

    return build


@pytest.mark.parametrize(
    ("build", "setting"),
    [
        (lambda stream: streamq.App(executor_workers=0), "executor_workers"),
        (lambda stream: streamq.App(shutdown_grace_ms=-1), "shutdown_grace_ms"),
        (lambda stream: streamq.App(freeze_gc=1), "freeze_gc"),  # type: ignore[arg-type]
        (_register(read_ahead="yes"), "read_ahead"),
    ],
    ids=["executor_workers=0", "shutdown_grace_ms=-1", "freeze_gc=1", "read_ahead=yes"],
)
def test_settings_that_cannot_work_are_refused_when_the_app_is_built(
    build: Callable[[str], None], setting: str, unique: str
) -> None:
    """A setting out of range or of the wrong type is a ConfigurationError naming it, raised by App(...) or
    by registering the consumer, never accepted to fail (or be silently read as something else) later."""
    with pytest.raises(streamq.ConfigurationError, match=setting):
        build(unique)


# ------------------------------------------------------------------------- handlers of one stream+group


async def test_handlers_of_one_stream_and_group_each_get_their_own_event_type(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Two handlers registered for one stream and group (the second repeating no settings) each receive
    only the events of their own type, in stream order; an event of a type no handler takes cannot be
    decoded by the group and is dead-lettered as `undecodable`, never acknowledged unhandled."""
    got_a: list[int] = []
    got_b: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=10, lease_ms=1_000, block_ms=100)
    async def take_a(batch: streamq.Batch[RouteA]) -> None:
        got_a.extend(event.n for event in batch.events)

    @app.consumer(unique, group="g")
    async def take_b(event: RouteB) -> None:
        got_b.append(event.n)

    kinds = (RouteA, RouteB, RouteC)
    async with streamq.Producer(redis_url) as producer:
        ids = await producer.publish_many(unique, [kinds[n % 3](n) for n in range(9)])
    await asyncio.wait_for(app.run_until_idle(), 30)

    assert got_a == [0, 3, 6]
    assert got_b == [1, 4, 7]
    dead = await client.xrange(keys.dlq_key(unique))
    assert [(f[b"id"].decode(), f[b"reason"]) for _, f in dead] == [
        (ids[n], b"undecodable") for n in (2, 5, 8)
    ]
    assert int((await client.xpending(unique, "g"))["pending"]) == 0


def test_second_registration_with_other_settings_is_refused(unique: str) -> None:
    """Handlers of one stream and group share one consumer, so its settings are given once: a second
    registration repeating them is accepted, one giving different settings is a ConfigurationError."""
    app = streamq.App("redis://127.0.0.1:1/0")

    @app.consumer(unique, group="g", batch_size=10)
    async def take_a(batch: streamq.Batch[RouteA]) -> None:
        return None

    @app.consumer(unique, group="g", batch_size=10)
    async def take_b(batch: streamq.Batch[RouteB]) -> None:
        return None

    async def take_c(batch: streamq.Batch[RouteC]) -> None:
        return None

    with pytest.raises(streamq.ConfigurationError, match="settings once"):
        app.consumer(unique, group="g", batch_size=20)(take_c)
