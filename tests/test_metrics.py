"""Prometheus metrics, /healthz and /readyz of a worker (streamq/metrics.py, _metrics_server.py).

Every test runs a real App on a real server and reads its port over real HTTP: counters by outcome move
with real events, the histograms are there, the gauges read from Redis match what the stream holds, one
worker of two refreshes those gauges, /healthz fails while the loop is blocked or lease renewals fail, and
/readyz waits for the connection. A pool of two processes serves one port per child.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import structlog
from helpers import async_wait_until, wait_until
from prometheus_client.parser import text_string_to_metric_families

import streamq
from streamq.cli import main
from streamq.embedded import EmbeddedServer
from streamq.errors import ConfigurationError
from streamq.exit_codes import USAGE
from streamq.metrics import METRICS

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


class Job(streamq.Event, tag="tests.metrics.job"):
    n: int
    kind: str = "ok"  # ok, dead, retry (fails its first attempt)


def get(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path from this thread: (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = get(port, "/metrics")
    assert status == 200, body
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(port: int, name: str, **labels: str) -> float | None:
    return samples(port).get((name, frozenset(labels.items())))


async def aget(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, port, path)


async def avalue(port: int, name: str, **labels: str) -> float | None:
    return await asyncio.to_thread(value, port, name, **labels)


@asynccontextmanager
async def running(app: streamq.App) -> AsyncIterator[asyncio.Task[None]]:
    """Run `app` in a task until the block ends; its metrics port is known once it serves."""
    task = asyncio.create_task(app.run())
    try:
        await async_wait_until(
            lambda: app.served_metrics_port is not None or task.done(), message="metrics port"
        )
        if task.done():
            task.result()
        yield task
    finally:
        app.stop()
        await asyncio.wait_for(task, 30)


def quick_app(url: str, **options: Any) -> streamq.App:
    options.setdefault("metrics_port", 0)
    options.setdefault("metrics_host", "127.0.0.1")
    options.setdefault("heartbeat_interval_ms", None)
    return streamq.App(url, **options)


async def test_counters_by_outcome_and_histograms_move_with_real_events(redis_url: str, unique: str) -> None:
    """Acked, retried and dead events show in streamq_events_total by outcome, as the consumer counted them;
    the handler-duration and batch-size histograms count the batches and their events."""
    app = quick_app(redis_url)
    seen: set[int] = set()

    @app.consumer(unique, group="g", batch_size=10, retry_base_ms=10, retry_max_ms=20, max_attempts=3,
                  block_ms=100)  # fmt: skip
    async def handle(batch: streamq.Batch[Job]) -> None:
        for message in batch:
            if message.event.kind == "dead":
                batch.dead_letter(message, "told to")
            elif message.event.kind == "retry" and message.event.n not in seen:
                seen.add(message.event.n)
                batch.retry(message)

    jobs = [Job(n=i) for i in range(20)] + [Job(n=100, kind="dead"), Job(n=101, kind="retry")]
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, jobs)
    async with running(app):
        port = app.served_metrics_port
        assert port is not None
        sg = {"stream": unique, "group": "g"}
        await async_wait_until(
            lambda: avalue(port, "streamq_events_total", outcome="acked", **sg), message="acked counted"
        )
        await async_wait_until(
            lambda: _is(avalue(port, "streamq_events_total", outcome="acked", **sg), 21), message="all acked"
        )
        found = await asyncio.to_thread(samples, port)

        def at(name: str, **labels: str) -> float | None:
            return found.get((name, frozenset({**sg, **labels}.items())))

        assert at("streamq_events_total", outcome="retried") == 1
        assert at("streamq_events_total", outcome="dead") == 1
        assert at("streamq_events_total", outcome="lease_lost") == 0
        counts = app.counts()
        assert at("streamq_events_fetched_total") == counts["fetched"] == 23  # 22 events, one read twice
        assert at("streamq_batches_total") == counts["batches"]
        assert at("streamq_batch_size_events_count") == counts["batches"]
        assert at("streamq_batch_size_events_sum") == counts["fetched"]
        assert at("streamq_handler_duration_seconds_count") == counts["batches"]
        assert at("streamq_handler_duration_seconds_bucket", le="+Inf") == counts["batches"]
        assert at("streamq_events_in_flight") == 0
        assert at("streamq_redis_errors_total") == 0
        assert found[("streamq_lease_renewal_failures_total", frozenset())] == 0


async def _is(got: Any, expected: float) -> bool:
    return (await got) == expected


async def test_gauges_from_redis_show_lag_pending_and_dead_letters(redis_url: str, unique: str) -> None:
    """While the handler holds a first batch of 5 out of 20 events, the gauges read from Redis show 5
    pending, a lag of 15, an oldest pending entry of some age and, once released, the dead letter."""
    app = quick_app(redis_url, metrics_refresh_ms=100)
    gate = asyncio.Event()
    in_handler = asyncio.Event()

    @app.consumer(unique, group="g", batch_size=5, block_ms=100, read_ahead=False)
    async def handle(batch: streamq.Batch[Job]) -> None:
        in_handler.set()
        await gate.wait()
        for message in batch:
            if message.event.kind == "dead":
                batch.dead_letter(message, "told to")

    jobs = [Job(n=0, kind="dead")] + [Job(n=i) for i in range(1, 20)]
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, jobs)
    async with running(app):
        port = app.served_metrics_port
        assert port is not None
        sg = {"stream": unique, "group": "g"}
        await asyncio.wait_for(in_handler.wait(), 10)
        await async_wait_until(
            lambda: _is(avalue(port, "streamq_group_pending", **sg), 5), message="5 pending in the gauge"
        )
        found = await asyncio.to_thread(samples, port)
        assert found[("streamq_group_lag", frozenset(sg.items()))] == 15
        assert found[("streamq_stream_length", frozenset({"stream": unique}.items()))] == 20
        assert found[("streamq_group_consumers", frozenset(sg.items()))] == 1
        assert found[("streamq_group_oldest_pending_age_seconds", frozenset(sg.items()))] >= 0
        assert found[("streamq_events_in_flight", frozenset(sg.items()))] == 5
        assert found[("streamq_batches_in_flight", frozenset(sg.items()))] == 1
        assert found[("streamq_redis_gauges_refresher", frozenset({"stream": unique}.items()))] == 1
        gate.set()
        await async_wait_until(
            lambda: _is(avalue(port, "streamq_stream_dead_letters", stream=unique), 1), message="dead letter"
        )
        await async_wait_until(lambda: _is(avalue(port, "streamq_group_lag", **sg), 0), message="no lag")
        await async_wait_until(
            lambda: _is(avalue(port, "streamq_group_pending", **sg), 0), message="none pending"
        )


async def test_one_worker_of_two_refreshes_the_redis_gauges(redis_url: str, unique: str) -> None:
    """Two workers of one group: exactly one holds the stream's metrics lease and serves the gauges read
    from Redis; once it stops, the other takes over."""

    def build() -> streamq.App:
        app = quick_app(redis_url, metrics_refresh_ms=100)

        @app.consumer(unique, group="g", block_ms=100)
        async def handle(batch: streamq.Batch[Job]) -> None:
            pass

        return app

    first, second = build(), build()
    async with running(first), running(second):
        ports = [first.served_metrics_port, second.served_metrics_port]
        assert None not in ports

        def refreshers() -> list[float | None]:
            return [value(p, "streamq_redis_gauges_refresher", stream=unique) for p in ports]  # type: ignore[arg-type]

        await asyncio.to_thread(wait_until, lambda: sorted(refreshers()) == [0, 1], message="one refresher")
        for _ in range(5):  # several refresh periods: never both, never none once one holds it
            state = await asyncio.to_thread(refreshers)
            assert sorted(state) == [0, 1], state
            lag = [await avalue(p, "streamq_group_lag", stream=unique, group="g") for p in ports]  # type: ignore[arg-type]
            assert [x is not None for x in lag] == [s == 1 for s in state]
            await asyncio.sleep(0.1)
        leader = first if state[0] == 1 else second
        other = second if leader is first else first
        other_port = other.served_metrics_port
        assert other_port is not None
        leader.stop()
        await async_wait_until(
            lambda: _is(avalue(other_port, "streamq_redis_gauges_refresher", stream=unique), 1),
            message="the other worker takes over",
        )


async def test_healthz_fails_while_the_event_loop_is_blocked(redis_url: str, unique: str) -> None:
    """A handler that blocks the event loop (a synchronous call inside `async def`) makes /healthz 503,
    answered meanwhile from the server's own thread; once the loop runs again it is 200."""
    app = quick_app(redis_url, loop_stall_ms=300)
    answers: list[tuple[int, str]] = []

    @app.consumer(unique, group="g", block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        port = app.served_metrics_port
        assert port is not None
        # Blocks the loop until the probe says so (a deadline, not a sleep: wait_until fails after 10 s).
        answers.append(wait_until(lambda: _failing(get(port, "/healthz")), message="/healthz 503"))

    async with running(app):
        port = app.served_metrics_port
        assert port is not None
        assert (await aget(port, "/healthz"))[0] == 200
        async with streamq.Producer(redis_url) as producer:
            await producer.publish(unique, Job(n=1))
        await async_wait_until(lambda: answers, message="the handler's probe")
        assert "event loop stalled" in answers[0][1]
        await async_wait_until(lambda: _status_is(port, "/healthz", 200), message="/healthz 200 again")


def _failing(answer: tuple[int, str]) -> tuple[int, str] | None:
    return answer if answer[0] == 503 else None


async def _status_is(port: int, path: str, status: int) -> bool:
    return (await aget(port, path))[0] == status


async def test_healthz_fails_while_lease_renewals_fail(own_server: EmbeddedServer, unique: str) -> None:
    """With entries held (a handler waiting) and the server stopped, lease renewals fail: /healthz turns 503
    naming them; with the server back, renewals succeed and it is 200 again."""
    app = quick_app(own_server.url)
    gate = asyncio.Event()
    in_handler = asyncio.Event()

    @app.consumer(unique, group="g", lease_ms=600, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        in_handler.set()
        await gate.wait()

    async with streamq.Producer(own_server.url) as producer:
        await producer.publish(unique, Job(n=1))
    async with running(app):
        try:
            port = app.served_metrics_port
            assert port is not None
            await asyncio.wait_for(in_handler.wait(), 10)
            assert (await aget(port, "/healthz"))[0] == 200
            await asyncio.to_thread(own_server.stop)
            _, body = await async_wait_until(
                lambda: _answer_if(port, "/healthz", 503), message="/healthz 503 once renewals fail"
            )
            assert "lease renewals failing" in body
            await asyncio.to_thread(own_server.start)
            await async_wait_until(lambda: _status_is(port, "/healthz", 200), message="/healthz 200 again")
        finally:
            gate.set()  # before stopping: the worker waits for the batch in hand


async def _answer_if(port: int, path: str, status: int) -> tuple[int, str] | None:
    answer = await aget(port, path)
    return answer if answer[0] == status else None


async def test_readyz_waits_for_the_connection(own_server: EmbeddedServer, unique: str) -> None:
    """Started while the server is down, the worker serves /readyz 503 (and /healthz 200: it is alive and
    waiting); once the server is up and the groups exist, /readyz is 200."""
    await asyncio.to_thread(own_server.stop)
    app = quick_app(own_server.url)

    @app.consumer(unique, group="g", block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        pass

    async with running(app):
        port = app.served_metrics_port
        assert port is not None
        status, body = await aget(port, "/readyz")
        assert status == 503 and "not connected" in body
        assert (await aget(port, "/healthz"))[0] == 200
        await asyncio.to_thread(own_server.start)
        await async_wait_until(lambda: _status_is(port, "/readyz", 200), message="/readyz 200")


async def test_metrics_port_without_prometheus_client_fails_at_start(
    redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """metrics_port with prometheus-client missing: a ConfigurationError naming the extra to install, before
    anything connects."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # `import prometheus_client` now fails
    monkeypatch.delitem(sys.modules, "streamq.metrics", raising=False)
    monkeypatch.delattr(streamq, "metrics", raising=False)
    app = quick_app(redis_url)

    @app.consumer(unique, group="g")
    async def handle(batch: streamq.Batch[Job]) -> None:
        pass

    with pytest.raises(ConfigurationError, match=r"pip install 'streamq\[metrics\]'"):
        await app.run()


async def test_no_metrics_port_serves_nothing(redis_url: str, unique: str) -> None:
    """Without metrics_port (the default) no port is served and no histogram is observed."""
    app = streamq.App(redis_url, heartbeat_interval_ms=None)

    @app.consumer(unique, group="g")
    async def handle(batch: streamq.Batch[Job]) -> None:
        pass

    async with streamq.Producer(redis_url) as producer:
        await producer.publish(unique, Job(n=1))
    await app.run_until_idle()
    assert app.served_metrics_port is None
    assert all(consumer.observer is None for consumer in app.consumers)  # type: ignore[union-attr]


def test_every_metric_name_follows_prometheus_conventions() -> None:
    """Counters end in _total, durations in _seconds; every name is streamq_-prefixed; labels are bounded
    (stream, group, outcome only)."""
    for doc in METRICS:
        assert doc.name.startswith("streamq_")
        assert (doc.kind == "counter") == doc.name.endswith("_total"), doc.name
        assert set(doc.labels) <= {"stream", "group", "outcome"}
        if "duration" in doc.name or "age" in doc.name:
            assert doc.name.endswith("_seconds")


def _free_ports(count: int) -> int:
    """A base port with `count` consecutive free ports after it."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65_535:
            continue
        try:
            for offset in range(count):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise AssertionError("no free consecutive ports")


POOL_APP = """
import streamq
from test_metrics import Job

app = streamq.App(heartbeat_interval_ms=None)

@app.consumer({stream!r}, group="g", batch_size=10, block_ms=100)
async def handle(batch: streamq.Batch[Job]) -> None:
    pass
"""


def test_processes_serve_one_port_per_child(tmp_path: Path, redis_url: str, unique: str) -> None:
    """`--processes 2 --metrics-port P`: child 0 serves P, child 1 serves P + 1, each its own counts, which
    add up to every event published."""
    (tmp_path / "metrics_pool_app.py").write_text(POOL_APP.format(stream=unique))
    base = _free_ports(2)
    env = {
        **os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS_DIR), str(REPO_ROOT)]),
        "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    log_path = tmp_path / "pool.log"
    with open(log_path, "wb") as log:
        pool = subprocess.Popen(
            [sys.executable, "-m", "streamq", "worker", "metrics_pool_app:app", "--processes", "2",
             "--metrics-port", str(base), "--metrics-host", "127.0.0.1", "--redis-url", redis_url],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            ports = [base, base + 1]
            wait_until(lambda: all(_ready(p) for p in ports), timeout_s=30, message=f"both ports ({ports})")
            with streamq.SyncProducer(redis_url) as producer:
                producer.publish_many(unique, [Job(n=i) for i in range(200)])

            def acked() -> list[float]:
                return [
                    value(p, "streamq_events_total", stream=unique, group="g", outcome="acked") or 0
                    for p in ports
                ]

            wait_until(lambda: sum(acked()) == 200, timeout_s=30, message="200 acked over both ports")
        finally:
            pool.send_signal(signal.SIGTERM)
            try:
                pool.wait(30)
            except subprocess.TimeoutExpired:
                pool.kill()
                pool.wait()


def _ready(port: int) -> bool:
    try:
        return get(port, "/readyz")[0] == 200
    except OSError:
        return False


def test_cli_metrics_port_must_be_a_port(capsys: pytest.CaptureFixture[str]) -> None:
    """`--metrics-port` takes a port number (0-65535); anything else is a usage error naming the option."""
    for text in ("abc", "-1", "65536"):
        assert main(["worker", "cli_app:app", "--metrics-port", text]) == USAGE
        assert "--metrics-port" in capsys.readouterr().err


async def test_gauges_and_heartbeat_work_under_the_documented_worker_acl(
    own_server: EmbeddedServer, unique: str
) -> None:
    """A worker logged in as SECURITY.md's worker user (with the metrics lease, the gauges and the heartbeat's
    lag) reads every gauge and the lag, and the server denies it nothing (ACL LOG)."""
    import redis
    from test_security import acl_denials, create_user

    admin = redis.Redis.from_url(own_server.url)
    name, password = f"{unique}-worker", "pw-" + unique
    create_user(admin, own_server.binary, name, password, "worker")
    url = f"redis://{name}:{password}@127.0.0.1:{own_server.port}/0"
    stream = f"app1:{unique}"
    app = quick_app(url, metrics_refresh_ms=100, heartbeat_interval_ms=100)

    @app.consumer(stream, group="g", block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        pass

    async with streamq.Producer(own_server.url) as producer:
        await producer.publish_many(stream, [Job(n=i) for i in range(5)])
    with structlog.testing.capture_logs() as logs:
        async with running(app):
            port = app.served_metrics_port
            assert port is not None
            sg = {"stream": stream, "group": "g"}
            await async_wait_until(
                lambda: _is(avalue(port, "streamq_group_lag", **sg), 0), message="lag gauge"
            )
            found = await asyncio.to_thread(samples, port)
            assert found[("streamq_stream_length", frozenset({"stream": stream}.items()))] >= 0
            assert found[("streamq_group_pending", frozenset(sg.items()))] == 0
            await async_wait_until(
                lambda: [
                    line
                    for line in logs
                    if line["event"] == "heartbeat" and line["lag"] == {f"{stream}/g": 0}
                ],
                message="a heartbeat with the lag",
            )
    assert acl_denials(admin, [name]) == []  # stopping too: the lease is given up within the ACL
    assert not [line for line in logs if "metrics" in line["event"] and line["log_level"] == "warning"]
    admin.close()


async def test_reclaimed_events_are_counted_by_outcome(redis_url: str, unique: str) -> None:
    """Entries a dead consumer read and never settled are reclaimed once their lease runs out: they show as
    outcome="reclaimed", and as acked once handled."""
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Job(n=i) for i in range(4)])
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:  # a consumer that reads every entry and dies without settling any
        await raw.xgroup_create(unique, "g", id="0")
        await raw.xreadgroup("g", "dead-worker", {unique: ">"}, count=10)
    finally:
        await raw.aclose()
    app = quick_app(redis_url)

    @app.consumer(unique, group="g", lease_ms=200, reclaim_interval_ms=100, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        pass

    async with running(app):
        port = app.served_metrics_port
        assert port is not None
        sg = {"stream": unique, "group": "g"}
        await async_wait_until(
            lambda: _is(avalue(port, "streamq_events_total", outcome="acked", **sg), 4), message="4 acked"
        )
        assert await avalue(port, "streamq_events_total", outcome="reclaimed", **sg) == 4
