"""Retention: trimming what every group acknowledged, never more; the max_len cap; dead-letter expiry;
the worker's trimmer; who holds trimming back; `streamq trim` and `streamq group delete`.

Trimming is approximate (whole nodes of about 100 entries), so tests that need something trimmed use
streams of several hundred entries, and assert on what must stay rather than on exact lengths.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
import redis.asyncio
from helpers import async_wait_until, wait_until

import streamq
from streamq import keys
from streamq._wire import retention as wire
from streamq.cli import FAILURE, OK, USAGE, main
from streamq.errors import GroupInUse
from streamq.retention import delete_group, delete_group_sync, holdback, holdback_sync, trim, trim_sync


def _fill(client: redis.Redis, stream: str, n: int) -> list[bytes]:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"n": i})
    return list(pipe.execute())


def _read(client: redis.Redis, stream: str, group: str, count: int, consumer: str = "c") -> list[bytes]:
    reply = client.xreadgroup(group, consumer, {stream: ">"}, count=count)
    return [entry_id for _, entries in reply for entry_id, _ in entries]


def _present(client: redis.Redis, stream: str) -> set[bytes]:
    return {entry_id for entry_id, _ in client.xrange(stream)}


def _totals(client: redis.Redis, stream: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.totals_key(stream)).items()}


# ---------------------------------------------------------------------------------------------- safety


def test_a_group_that_has_not_read_keeps_everything(sync_client: redis.Redis, unique: str) -> None:
    """A group created at the start that has read nothing holds every entry: none is trimmed, however
    far the other group has acknowledged."""
    ids = _fill(sync_client, unique, 500)
    sync_client.xgroup_create(unique, "done", "0")
    sync_client.xgroup_create(unique, "idle", "0")
    sync_client.xack(unique, "done", *_read(sync_client, unique, "done", 500))
    result = trim_sync(sync_client, unique)
    assert (result.removed, result.length_after, result.held_by) == (0, 500, "idle")
    assert _present(sync_client, unique) == set(ids)


def test_entries_read_but_not_acknowledged_stay(sync_client: redis.Redis, unique: str) -> None:
    """Entries delivered and still pending are never trimmed, nor is anything after them."""
    ids = _fill(sync_client, unique, 500)
    sync_client.xgroup_create(unique, "g", "0")
    assert _read(sync_client, unique, "g", 500) == ids
    result = trim_sync(sync_client, unique)
    assert result.removed == 0 and result.safe_id == ids[0].decode()
    assert _present(sync_client, unique) == set(ids)


def test_only_entries_below_the_oldest_pending_one_are_trimmed(sync_client: redis.Redis, unique: str) -> None:
    """With entries acknowledged around a pending one, the trim stops below the oldest pending entry:
    acknowledged entries after it stay too, and so does everything not yet delivered."""
    ids = _fill(sync_client, unique, 1000)
    sync_client.xgroup_create(unique, "g", "0")
    read = _read(sync_client, unique, "g", 800)
    sync_client.xack(unique, "g", *read[:400], *read[401:])  # ids[400] stays pending
    result = trim_sync(sync_client, unique)
    assert result.safe_id == ids[400].decode() and result.held_by == "g"
    assert result.removed > 0
    left = _present(sync_client, unique)
    assert set(ids[400:]) <= left
    assert len(left) == 1000 - result.removed == result.length_after
    assert _totals(sync_client, unique)["trimmed"] == result.removed


def test_a_stream_without_groups_is_never_trimmed(sync_client: redis.Redis, unique: str) -> None:
    """No group has said what it consumed: nothing is trimmed, whatever the keep window."""
    ids = _fill(sync_client, unique, 300)
    result = trim_sync(sync_client, unique)
    assert (result.removed, result.groups, result.safe_id) == (0, 0, None)
    assert _present(sync_client, unique) == set(ids)


def test_a_group_moved_back_keeps_what_it_will_be_given_again(sync_client: redis.Redis, unique: str) -> None:
    """A group set back (XGROUP SETID, as a recreated group is) will be delivered again what follows its
    position, acknowledged before or not: those entries stay."""
    ids = _fill(sync_client, unique, 600)
    sync_client.xgroup_create(unique, "g", "0")
    sync_client.xack(unique, "g", *_read(sync_client, unique, "g", 600)[:400])  # ids[400:] stay pending
    sync_client.xgroup_setid(unique, "g", ids[199])
    result = trim_sync(sync_client, unique)
    assert result.safe_id == ids[200].decode()
    assert set(ids[200:]) <= _present(sync_client, unique)
    assert _read(sync_client, unique, "g", 1000) == ids[200:]


def test_the_keep_window_keeps_recent_acknowledged_entries(sync_client: redis.Redis, unique: str) -> None:
    """keep_acked_ms keeps acknowledged entries appended within the window; older ones go."""
    now_ms = int(time.time() * 1000)
    old = [f"{now_ms - 3_600_000 + i}-0" for i in range(400)]  # an hour ago
    recent = [f"{now_ms - 1_000 + i}-0" for i in range(400)]  # a second ago
    pipe = sync_client.pipeline(transaction=False)
    for entry_id in old + recent:
        pipe.xadd(unique, {"n": 1}, id=entry_id)
    pipe.execute()
    sync_client.xgroup_create(unique, "g", "0")
    sync_client.xack(unique, "g", *_read(sync_client, unique, "g", 800))
    result = trim_sync(sync_client, unique, keep_acked_ms=600_000)
    assert result.removed > 0
    assert result.cut_id is not None and result.cut_id < recent[0]
    assert {i.encode() for i in recent} <= _present(sync_client, unique)
    assert trim_sync(sync_client, unique).removed > 0  # without the window they go too


async def test_racing_trimmers_never_remove_what_a_slow_group_still_needs(
    client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """Many trims racing a slow group that reads and acknowledges in small steps: the slow group is
    delivered every entry, in order, and each of its pending entries is still there when it acknowledges."""
    ids = _fill(sync_client, unique, 3000)
    for group in ("fast", "slow"):
        sync_client.xgroup_create(unique, group, "0")
    sync_client.xack(unique, "fast", *_read(sync_client, unique, "fast", 3000))
    stop = asyncio.Event()
    removed = trims = 0

    async def trimmer() -> None:
        nonlocal removed, trims
        while not stop.is_set():
            removed += (await trim(client, unique)).removed
            trims += 1
            await asyncio.sleep(0)

    async def trims_ran() -> None:
        # At least two trims end after this point, so one began after it: every step of the slow group
        # is raced by trims, however the event loop happens to schedule the tasks.
        seen = trims
        await async_wait_until(lambda: trims >= seen + 2, message="trims to run")

    trimmers = [asyncio.create_task(trimmer()) for _ in range(4)]
    delivered: list[bytes] = []
    missing: list[bytes] = []
    try:
        while len(delivered) < len(ids):
            reply = await client.xreadgroup("slow", "c", {unique: ">"}, count=37)
            batch = [entry_id for _, entries in reply for entry_id, _ in entries]
            assert batch, f"nothing left to read after {len(delivered)} entries"
            delivered += batch
            await trims_ran()  # while these are pending
            for entry_id in batch:
                if not await client.xrange(unique, entry_id, entry_id):
                    missing.append(entry_id)
            await client.xack(unique, "slow", *batch)
            await trims_ran()  # after they were acknowledged, before the next read
    finally:
        stop.set()
        await asyncio.gather(*trimmers)
    assert delivered == ids
    assert missing == []
    # Everything is acknowledged by both groups now: trimming frees it. (Whether the racing trims freed
    # whole nodes before this point depends on where the slow group stood when they ran; on Valkey, in a
    # loaded full run, they once freed none.)
    removed += (await trim(client, unique)).removed
    assert removed > 0


# ---------------------------------------------------------------------------------------------- max_len


def test_max_len_drops_the_oldest_and_counts_them_exactly(sync_client: redis.Redis, unique: str) -> None:
    """Over max_len, acknowledged entries are trimmed first (counted as trimmed) and only then are
    unacknowledged ones dropped, exactly down to max_len, counted and their range reported."""
    ids = _fill(sync_client, unique, 500)
    sync_client.xgroup_create(unique, "g", "0")
    sync_client.xack(unique, "g", *_read(sync_client, unique, "g", 150))
    result = trim_sync(sync_client, unique, max_len=120)
    assert (result.removed, result.dropped, result.length_after) == (150, 230, 120)
    assert (result.dropped_first, result.dropped_until) == (ids[150].decode(), ids[380].decode())
    assert _present(sync_client, unique) == set(ids[380:])
    totals = _totals(sync_client, unique)
    assert (totals["trimmed"], totals["dropped_over_max_len"]) == (150, 230)


def test_max_len_applies_with_retention_off(sync_client: redis.Redis, unique: str) -> None:
    """A worker with retention=False still caps the stream at max_len, and trims nothing else."""
    ids = _fill(sync_client, unique, 300)
    sync_client.xgroup_create(unique, "g", "0")
    sync_client.xack(unique, "g", *_read(sync_client, unique, "g", 300))
    reply = wire.trim_sync(sync_client, unique, retention=False, max_len=250)
    assert (reply.removed, reply.dropped) == (0, 50)
    assert _present(sync_client, unique) == set(ids[50:])


# ---------------------------------------------------------------------------------------------- dead letters


def test_dead_letters_expire_by_age(sync_client: redis.Redis, unique: str) -> None:
    """Dead letters older than dlq_max_age_ms are trimmed (whole nodes), recent ones stay; exact counts."""
    dlq = keys.dlq_key(unique)
    now_ms = int(time.time() * 1000)
    old = [f"{now_ms - 7_200_000 + i}-0" for i in range(400)]
    recent = [f"{now_ms - 1_000 + i}-0" for i in range(50)]
    pipe = sync_client.pipeline(transaction=False)
    for entry_id in old + recent:
        pipe.xadd(dlq, {"reason": "x"}, id=entry_id)
    pipe.execute()
    result = trim_sync(sync_client, unique, dlq_max_age_ms=3_600_000)
    left = _present(sync_client, dlq)
    assert {i.encode() for i in recent} <= left
    assert result.dead_letters_expired == 450 - len(left) > 0
    assert _totals(sync_client, unique)["dead_letters_expired"] == result.dead_letters_expired


def test_dead_letters_are_capped_by_length(sync_client: redis.Redis, unique: str) -> None:
    """The dead-letter stream is cut to about dlq_max_len (never below it), the oldest first."""
    dlq = keys.dlq_key(unique)
    ids = _fill(sync_client, dlq, 1000)
    result = trim_sync(sync_client, unique, dlq_max_len=100)
    length = sync_client.xlen(dlq)
    assert 100 <= length < 1000
    assert result.dead_letters_expired == 1000 - length
    assert _present(sync_client, dlq) == set(ids[-length:])
    assert _totals(sync_client, unique)["dead_letters_expired"] == 1000 - length


# ---------------------------------------------------------------------------------------------- the worker


class Tick(streamq.Event, tag="tests.retention.tick"):
    n: int


async def test_workers_trim_the_stream_while_they_run(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """An app with two groups on one stream keeps it short: once both have acknowledged everything, the
    trimmers bring it down to its last node or so, and count what they trimmed."""
    app = streamq.App(redis_url)
    fast = {"lease_ms": 1_000, "block_ms": 50, "trim_interval_ms": 20}

    @app.consumer(unique, group="a", **fast)
    async def first(batch: streamq.Batch[Tick]) -> None:
        pass

    @app.consumer(unique, group="b", **fast)
    async def second(batch: streamq.Batch[Tick]) -> None:
        pass

    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Tick(n=i) for i in range(2000)])
    running = asyncio.create_task(app.run())
    try:
        for group in ("a", "b"):
            await async_wait_until(
                lambda g=group: _acked(client, unique, g), timeout_s=30, message=f"group {group} to ack all"
            )
        await async_wait_until(
            lambda: _short(client, unique), timeout_s=30, message="the stream to be trimmed below 400"
        )
    finally:
        app.stop()
        await asyncio.wait_for(running, 30)
    assert app.counts()["trimmed"] >= 1600
    assert int(await client.hget(keys.totals_key(unique), "trimmed") or 0) == app.counts()["trimmed"]


async def _acked(client: redis.asyncio.Redis, stream: str, group: str) -> bool:
    return int(await client.hget(keys.stats_key(stream, group), "acked") or 0) == 2000


async def _short(client: redis.asyncio.Redis, stream: str) -> bool:
    return int(await client.xlen(stream)) < 400


# ---------------------------------------------------------------------------------------------- holdback


async def test_a_stalled_group_holds_trimming_back_and_holdback_names_it(
    client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """A group that read and stalled keeps every entry from its oldest pending one; holdback says which
    group, from which id, since when and how many entries it alone keeps."""
    ids = _fill(sync_client, unique, 500)
    for group in ("fast", "stalled"):
        sync_client.xgroup_create(unique, group, "0")
    sync_client.xack(unique, "fast", *_read(sync_client, unique, "fast", 500))
    stalled = _read(sync_client, unique, "stalled", 100)
    result = await trim(client, unique)
    assert (result.removed, result.held_by) == (0, "stalled")
    held = await holdback(client, unique)
    assert held is not None
    assert (held.group, held.reason, held.bound_id, held.kept, held.capped) == (
        "stalled", "pending", ids[0].decode(), 500, False
    )  # fmt: skip
    assert held.since_ms == int(ids[0].split(b"-")[0])
    sync_client.xack(unique, "stalled", *stalled)
    held = holdback_sync(sync_client, unique)
    assert held is not None
    assert (held.group, held.reason, held.kept) == ("stalled", "unread", 400)


def test_holdback_is_none_when_nobody_holds_anything_back(sync_client: redis.Redis, unique: str) -> None:
    """No stream, no group, or every group caught up: holdback has nobody to name."""
    assert holdback_sync(sync_client, unique) is None
    _fill(sync_client, unique, 10)
    assert holdback_sync(sync_client, unique) is None
    sync_client.xgroup_create(unique, "g", "$")
    assert holdback_sync(sync_client, unique) is None


# ---------------------------------------------------------------------------------------------- group delete


def _group_keys(stream: str, group: str) -> list[str]:
    return [keys.retry_key(stream, group), keys.delayed_key(stream, group), keys.stats_key(stream, group),
            keys.rate_key(stream, group)]  # fmt: skip


def _make_group(client: redis.Redis, stream: str, group: str) -> None:
    """A group with a live consumer on the stream and every companion key streamq keeps for it."""
    _fill(client, stream, 5)
    client.xgroup_create(stream, group, "0")
    client.xgroup_create(keys.retry_key(stream, group), group, "0", mkstream=True)
    _read(client, stream, group, 2, consumer="live-one")
    client.zadd(keys.delayed_key(stream, group), {"r": 1})
    client.hset(keys.stats_key(stream, group), "acked", 3)
    client.set(keys.rate_key(stream, group), 1)
    client.hset(keys.paused_key(stream), mapping={group: "x", "other": "y"})


def test_group_delete_refuses_a_group_with_a_live_consumer(
    capsys: pytest.CaptureFixture[str], redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """`group delete` fails, names the live consumer and leaves everything as it was."""
    _make_group(sync_client, unique, "g")
    code = main(["group", "delete", unique, "g", "--redis-url", redis_url])
    err = capsys.readouterr().err
    assert code == FAILURE
    assert "live-one" in err and "force" in err
    assert [g["name"] for g in sync_client.xinfo_groups(unique)] == [b"g"]
    assert all(sync_client.exists(key) for key in _group_keys(unique, "g"))
    with pytest.raises(GroupInUse) as raised:
        delete_group_sync(sync_client, unique, "g")
    assert [name for name, _ in raised.value.live] == ["live-one"]


def test_group_delete_with_force_deletes_the_group_and_its_keys(
    capsys: pytest.CaptureFixture[str], redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """--force deletes the group on both streams and every key of it, and nothing of other groups."""
    _make_group(sync_client, unique, "g")
    code = main(["group", "delete", unique, "g", "--force", "--json", "--redis-url", redis_url])
    out, err = capsys.readouterr()
    assert code == OK, err
    shown = json.loads(out)
    assert (shown["existed"], shown["pending"], shown["forced"]) == (True, 2, True)
    assert sync_client.xinfo_groups(unique) == []
    assert not any(sync_client.exists(key) for key in _group_keys(unique, "g"))
    assert sync_client.hgetall(keys.paused_key(unique)) == {b"other": b"y"}
    assert sync_client.xlen(unique) == 5  # the stream itself is the user's


async def test_group_delete_works_once_its_consumers_are_idle(
    client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """A consumer idle longer than live_idle_ms is no longer live: the delete goes ahead without force."""
    _make_group(sync_client, unique, "g")

    def idle_ms() -> int:
        return int(sync_client.xinfo_consumers(unique, "g")[0]["idle"])

    wait_until(lambda: idle_ms() >= 100, message="the consumer to be idle 100 ms")
    deleted = await delete_group(client, unique, "g", live_idle_ms=100)
    assert (deleted.existed, deleted.forced, deleted.consumers) == (True, False, 1)
    assert await client.xinfo_groups(unique) == []
    assert not any(sync_client.exists(key) for key in _group_keys(unique, "g"))


def test_group_delete_of_a_missing_group_fails(
    capsys: pytest.CaptureFixture[str], redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """A group name that is not there (a typo) is a failure, not a silent success."""
    _fill(sync_client, unique, 1)
    assert main(["group", "delete", unique, "nope", "--redis-url", redis_url]) == FAILURE
    assert f"{unique} has no group nope" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- streamq trim


def test_trim_dry_run_removes_nothing_and_trim_does(
    capsys: pytest.CaptureFixture[str], redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """`trim --dry-run` reports what would go and removes nothing; `trim` then removes it."""
    ids = _fill(sync_client, unique, 500)
    sync_client.xgroup_create(unique, "g", "0")
    sync_client.xack(unique, "g", *_read(sync_client, unique, "g", 500))
    code = main(["trim", unique, "--dry-run", "--json", "--redis-url", redis_url])
    out, err = capsys.readouterr()
    assert code == OK, err
    shown = json.loads(out)
    assert (shown["dry_run"], shown["removed"], shown["held_by"]) == (True, 500, "g")
    assert _present(sync_client, unique) == set(ids)
    assert _totals(sync_client, unique) == {}
    assert main(["trim", unique, "--redis-url", redis_url]) == OK
    out = capsys.readouterr().out
    assert f"{unique}: trimmed " in out
    assert sync_client.xlen(unique) < 500


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, object]]] = []

    def __getattr__(self, level: str) -> object:
        return lambda event, **fields: self.lines.append((level, event, fields))


async def test_the_trimmer_counts_and_warns_about_entries_dropped_over_max_len(
    client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """A worker's trim over max_len counts the dropped entries and logs a warning with their id range;
    acknowledged entries trimmed on the way are counted apart."""
    from streamq._worker.trimming import Trimmer
    from streamq.settings import ConsumerSettings

    ids = _fill(sync_client, unique, 300)
    sync_client.xgroup_create(unique, "g", "0")
    sync_client.xack(unique, "g", *_read(sync_client, unique, "g", 50))
    log, counts = RecordingLog(), {"acked": 0}
    trimmer = Trimmer(client, ConsumerSettings(stream=unique, group="g", max_len=200), log=log, counts=counts)
    await trimmer.trim_once()
    assert counts == {"acked": 0, "trimmed": 50, "dropped_over_max_len": 50}
    (warning,) = [fields for level, _, fields in log.lines if level == "warning"]
    assert (warning["count"], warning["first_id"], warning["kept_from_id"]) == (
        50, ids[50].decode(), ids[100].decode()
    )  # fmt: skip


@pytest.mark.parametrize("command", [["trim"], ["group"], ["group", "delete"]], ids=" ".join)
def test_help_of_the_retention_commands_shows_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == OK
    assert "examples:" in capsys.readouterr().out


def test_trim_refuses_bad_numbers_as_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """A cap of 0 or a negative keep window is refused before anything is sent."""
    assert main(["trim", "s", "--max-len", "0"]) == USAGE
    assert main(["trim", "s", "--keep-acked-ms", "-1"]) == USAGE
    assert main(["group", "delete", "s"]) == USAGE
    assert "Traceback" not in capsys.readouterr().err
