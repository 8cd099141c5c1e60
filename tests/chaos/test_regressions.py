"""Regressions for defects the chaos harness found in the core, one test per defect.

1. Settling entries trimmed while held counted them as lost leases. XAUTOCLAIM run by any consumer of the
   group (whatever its min-idle) drops deleted entries from every consumer's PEL, the live holder's too; the
   holder's settle then found them "not held", counted them in `lease_lost` and warned that another worker
   would process them again, though nobody will (found by trim_pending: lease_lost exceeded what the
   SIGSTOPped worker held).
2. A worker started while the server was down exited at once (App.run's server check did not retry), where
   running workers ride out the same outage: found by server_restart, when a replacement worker was
   starting as the server went down (reported as crash_during_outage). It now waits for the server; a
   connection refused for another reason (TLS, authentication) still fails at once.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis.asyncio
from helpers import async_wait_until

import streamq
from streamq import _wire, keys
from streamq.embedded import EmbeddedServer, ServerBinary


def _plan(
    stream: str, group: str, ids: list[bytes], *, retry_stream: bool = False, outcome: str = "ack"
) -> _wire.SettlePlan:
    """Settle every id as `outcome`: "ack" (the unfenced fast path on a main stream) or "retry" (fenced)."""
    record = b"record"
    return _wire.SettlePlan(
        key=stream,
        delayed_key=keys.delayed_key(stream, group),
        dlq_key=keys.dlq_key(stream),
        stats_key=keys.stats_key(stream, group),
        delete_after_ack=retry_stream,
        min_id=ids[0],
        max_id=ids[-1],
        acks=ids if outcome == "ack" else [],
        retries=[(i, 60_000, record) for i in ids] if outcome == "retry" else [],
        dead=[],
    )


async def _held_by_holder(client: redis.asyncio.Redis, stream: str, group: str) -> list[bytes]:
    ids = [await client.xadd(stream, {"d": b"x"}) for _ in range(3)]
    await client.xgroup_create(stream, group, id="0")
    await client.xreadgroup(group, "holder", {stream: ">"}, count=3)
    return ids


async def _settle(
    client: redis.asyncio.Redis, group: str, plan: _wire.SettlePlan
) -> tuple[_wire.Settled, dict[bytes, bytes]]:
    link = _wire.Link(client)
    try:
        done = await _wire.settle(link, group, "holder", [plan])
    finally:
        await link.close()
    return done, await client.hgetall(plan.stats_key)


@pytest.mark.parametrize("outcome", ["ack", "retry"])
async def test_entries_trimmed_while_held_are_not_lost_leases(
    client: redis.asyncio.Redis, unique: str, outcome: str
) -> None:
    """Two held entries are trimmed and another consumer's XAUTOCLAIM (min-idle one hour: it takes nothing)
    drops them from the holder's PEL; settling the batch (acks, or fenced retries) settles the third and
    reports no lost lease."""
    stream, group = f"{unique}-trimmed", "g"
    ids = await _held_by_holder(client, stream, group)
    assert await client.xtrim(stream, minid=ids[2], approximate=False) == 2
    await client.xautoclaim(stream, group, "other", min_idle_time=3_600_000, start_id="0-0")

    done, stats = await _settle(client, group, _plan(stream, group, ids, outcome=outcome))

    assert done.lost == 0
    assert stats.get(b"lease_lost") is None
    assert stats[b"acked" if outcome == "ack" else b"retried"] == b"1"
    assert (await client.xpending(stream, group))["pending"] == 0


async def test_entries_taken_over_are_still_lost_leases(client: redis.asyncio.Redis, unique: str) -> None:
    """Entries another consumer claimed (they still exist) are lost leases for a fenced settle (a retry
    would create a second copy of the event): they are left to their new holder."""
    stream, group = f"{unique}-claimed", "g"
    ids = await _held_by_holder(client, stream, group)
    await client.xclaim(stream, group, "other", min_idle_time=0, message_ids=ids[:2])

    done, stats = await _settle(client, group, _plan(stream, group, ids, outcome="retry"))

    assert (done.lost, done.lost_ids) == (2, ids[:2])
    assert stats[b"lease_lost"] == b"2"
    assert stats[b"retried"] == b"1"
    assert (await client.xpending(stream, group))["pending"] == 2  # still the other consumer's


@pytest.mark.parametrize("outcome", ["ack", "retry"])
async def test_vanished_retry_entries_are_lost_leases(
    client: redis.asyncio.Redis, unique: str, outcome: str
) -> None:
    """On a retry stream an entry disappears only when another consumer, having taken it over, settled and
    deleted it: for the old holder that is a lost lease, whether it acks (counted) or retries (refused,
    named and counted). The entries it still held are settled and deleted."""
    stream, group = f"{unique}-retry", "g"
    ids = await _held_by_holder(client, stream, group)
    await client.xclaim(stream, group, "other", min_idle_time=0, message_ids=ids[:1])
    await client.xack(stream, group, ids[0])
    await client.xdel(stream, ids[0])

    done, stats = await _settle(client, group, _plan(stream, group, ids, retry_stream=True, outcome=outcome))

    assert done.lost == 1
    assert done.lost_ids == (ids[:1] if outcome == "retry" else [])  # the fast ack path only counts them
    assert stats[b"lease_lost"] == b"1"
    assert await client.xlen(stream) == 0
    assert (await client.xpending(stream, group))["pending"] == 0


class Ping(streamq.Event, tag="test.chaos.regression.ping"):
    n: int


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_an_app_started_during_an_outage_waits_for_the_server(
    server_binary: ServerBinary | None, unique: str
) -> None:
    """App.run() with the server down keeps retrying; once the server is up it consumes as usual."""
    if server_binary is None:
        pytest.skip("needs a server it can start late, but STREAMQ_TEST_REDIS_URL is set")
    server = EmbeddedServer(server_binary, port=_free_port())
    app = streamq.App(f"redis://127.0.0.1:{server.port}/0")
    seen: list[int] = []

    @app.consumer(unique, group="g", block_ms=50)
    async def handle(batch: streamq.Batch[Ping]) -> None:
        seen.extend(event.n for event in batch.events)

    running = asyncio.create_task(app.run())
    try:
        await asyncio.sleep(0.5)
        assert not running.done(), "the app gave up while the server was down"
        server.start()
        async with streamq.Producer(server.url) as producer:
            await producer.publish(unique, Ping(n=7))
        await async_wait_until(lambda: seen == [7], timeout_s=20, message="the event to be handled")
    finally:
        app.stop()
        await asyncio.wait_for(running, 30)
        server.close()
