"""`streamq top` / `status --watch`: rates from counter changes over the server time between readings, the
oldest pending entry's age, consumers with their idle times; redrawn in place on a terminal, plain blocks
or JSON lines otherwise, Ctrl-C a clean exit. And the progress line of long CLI work (dead-letter replay and
purge, trim), with the progress callbacks of DeadLetters.replay/purge it is drawn from.

Counters are moved for real: events published and settled by a real App between two readings, or by a
worker process consuming while the watch runs. STREAMQ_TTY=1 stands for a terminal.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
import redis
import redis.asyncio
from helpers import wait_until
from worker_proc import REPO_ROOT, Job, SpawnWorker

import streamq
from streamq import SyncProducer, keys
from streamq._cli_progress import TTY_ENV
from streamq._cli_watch import frame, read
from streamq._connection import sync_client as make_client
from streamq._wire.partitioning import declare
from streamq.cli import OK, USAGE, main
from streamq.deadletter import PURGE_CHUNK, REPLAY_CHUNK, SyncDeadLetters
from streamq.partitions import partition_stream

FAST: dict[str, Any] = {"lease_ms": 1_000, "block_ms": 50, "retry_base_ms": 0, "batch_size": 500}
HIDE_CURSOR, SHOW_CURSOR, HOME, CLEAR_SCREEN, CLEAR_BELOW = (
    "\x1b[?25l",
    "\x1b[?25h",
    "\x1b[H",
    "\x1b[2J",
    "\x1b[J",
)
ERASE_LINE = "\r\x1b[K"


class Tick(streamq.Event, tag="tests.watch.tick"):
    n: int


def settle(url: str, stream: str, numbers: list[int], *, partitions: int | None = None) -> None:
    """Publish `numbers` (unless partitioned: published already) and run group `g` until idle: a negative
    tick is rejected (dead), 0 fails every attempt (retried once, then dead: max_attempts=2), others acked."""
    if numbers:
        publish(url, stream, numbers)
    app = streamq.App(url)
    extra: dict[str, Any] = {"partitions": partitions} if partitions else {}

    @app.consumer(stream, group="g", max_attempts=2, **FAST, **extra)
    async def handle(event: Tick) -> None:
        if event.n < 0:
            raise streamq.Reject(f"negative {event.n}")
        if event.n == 0:
            raise RuntimeError("zero fails")

    asyncio.run(asyncio.wait_for(app.run_until_idle(), 60))


def publish(url: str, stream: str, numbers: list[int]) -> None:
    with SyncProducer(url) as producer:
        producer.publish_many(stream, [Tick(n) for n in numbers])


def run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what the test printed before (the App's logs) is not the command's
    code = main([*argv, "--redis-url", url])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------- rates


def test_rates_are_the_counters_changes_over_the_server_time_between_two_readings(
    redis_url: str, unique: str
) -> None:
    """Between two readings 5 events are published, 3 acknowledged, 1 retried and 2 dead-lettered: the
    second frame's rates are exactly those changes * 1000 / the server time between the readings; the
    first frame has no rates."""
    settle(redis_url, unique, [1, 2])
    client = make_client(redis_url)
    try:
        first = read(client, redis_url, [unique])
        settle(redis_url, unique, [3, 4, 5, -1, 0])
        second = read(client, redis_url, [unique])
    finally:
        client.close()

    (opening,) = frame(None, first).streams
    assert opening.published == 2 and opening.published_per_s is None
    assert opening.groups[0].acked == 2 and opening.groups[0].acked_per_s is None

    view = frame(first, second)
    assert view.interval_ms == second.time_ms - first.time_ms
    assert view.interval_ms is not None and view.interval_ms > 0
    (st,) = view.streams
    (g,) = st.groups
    assert (st.published, g.acked, g.retried, g.dead) == (7, 5, 1, 2)
    assert st.published_per_s == 5 * 1000 / view.interval_ms
    assert g.acked_per_s == 3 * 1000 / view.interval_ms
    assert g.retried_per_s == 1 * 1000 / view.interval_ms
    assert g.dead_per_s == 2 * 1000 / view.interval_ms
    assert g.lag_per_s == 0.0  # drained at both readings


def test_a_partitioned_stream_publishes_at_the_rate_of_its_partitions_added_up(
    redis_url: str, unique: str
) -> None:
    """`entries-added` of every partition is summed: events published to two partitions between the
    readings count in the stream's rate."""
    asyncio.run(_declare(redis_url, unique, 3))
    client = make_client(redis_url)
    try:
        first = read(client, redis_url, [unique])
        publish(redis_url, partition_stream(unique, 0), [1, 2])
        publish(redis_url, partition_stream(unique, 2), [3])
        second = read(client, redis_url, [unique])
    finally:
        client.close()
    view = frame(first, second)
    (st,) = view.streams
    assert st.partitions == 3 and st.published == 3
    assert view.interval_ms and st.published_per_s == 3 * 1000 / view.interval_ms


async def _declare(url: str, stream: str, count: int) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        assert await declare(client, keys.partitions_key(stream), count) == count
    finally:
        await client.aclose()


def test_json_lines_show_the_oldest_pending_age_and_each_consumer_with_its_idle_time(
    capsys: pytest.CaptureFixture[str], redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """The oldest entry delivered and not settled is found by its id (one appended a minute ago is at
    least a minute old by the server's clock); every consumer of the group is listed with the entries it
    holds and its idle time; --count 1 prints one JSON line."""
    time_s, micros = sync_client.time()
    minute_ago = f"{time_s * 1000 + micros // 1000 - 60_000}-0"
    sync_client.xadd(unique, {"d": b"x"}, id=minute_ago)
    sync_client.xadd(unique, {"d": b"y"})
    sync_client.xgroup_create(unique, "g", "0")
    sync_client.xreadgroup("g", "holder", {unique: ">"}, count=2)
    sync_client.xgroup_createconsumer(unique, "g", "idler")  # a consumer holding none

    code, out, err = run(capsys, redis_url, "top", unique, "--json", "--count", "1")
    assert code == OK, err
    (line,) = out.splitlines()
    (st,) = json.loads(line)["streams"]
    (g,) = st["groups"]
    assert g["pending"] == 2
    assert g["oldest_pending_id"] == minute_ago
    assert g["oldest_pending_age_ms"] >= 60_000
    consumers = {c["name"]: c for c in g["consumer_details"]}
    assert set(consumers) == {"holder", "idler"}
    assert (consumers["holder"]["pending"], consumers["idler"]["pending"]) == (2, 0)
    assert all(c["idle_ms"] >= 0 for c in consumers.values())


def test_watch_beside_a_consuming_worker_shows_it_and_rates_that_match_the_counters(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    sync_client: redis.Redis,
    unique: str,
    spawn_worker: SpawnWorker,
) -> None:
    """With a worker process consuming, each JSON line's rates are its counters' changes since the line
    before over its interval_ms, and the worker is listed among the group's consumers."""
    with SyncProducer(sync_client) as producer:
        producer.publish_many(unique, [Job(n) for n in range(300)])
    worker = spawn_worker(stream=unique, group="g", ledger=unique, name="watched", batch_size=20, sleep_ms=30)
    wait_until(lambda: _consumers(sync_client, unique), message="the worker to join the group")

    code, out, err = run(capsys, redis_url, "status", unique, "--watch", "--json", "--count", "3",
                         "--interval-ms", "200")  # fmt: skip
    assert code == OK, err
    frames = [json.loads(line) for line in out.splitlines()]
    assert len(frames) == 3
    assert frames[0]["interval_ms"] is None
    for before, after in itertools.pairwise(frames):
        interval = after["interval_ms"]
        assert interval == after["time_ms"] - before["time_ms"] > 0
        (was,), (now,) = before["streams"], after["streams"]
        assert now["published_per_s"] == (now["published"] - was["published"]) * 1000 / interval
        (gw,), (gn,) = was["groups"], now["groups"]
        for counter in ("acked", "retried", "dead"):
            assert gn[f"{counter}_per_s"] == (gn[counter] - gw[counter]) * 1000 / interval
    names = {c["name"] for f in frames for c in f["streams"][0]["groups"][0]["consumer_details"]}
    assert any(name.startswith("watched") for name in names), names
    assert worker.alive()


def _consumers(client: redis.Redis, stream: str) -> int:
    try:
        return len(client.xinfo_consumers(stream, "g"))
    except redis.ResponseError:  # the group is not made yet
        return 0


# ---------------------------------------------------------------------------------------------- output


def test_not_on_a_terminal_each_refresh_is_a_plain_block_with_its_time(
    capsys: pytest.CaptureFixture[str], redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Piped, --count 2 prints two blocks, each headed by its time, and not one escape code."""
    monkeypatch.delenv(TTY_ENV, raising=False)
    settle(redis_url, unique, [1])
    code, out, err = run(capsys, redis_url, "top", unique, "--count", "2", "--interval-ms", "100")
    assert code == OK, err
    assert "\x1b" not in out
    heads = [line for line in out.splitlines() if line.startswith("streamq top  ")]
    assert len(heads) == 2
    assert "(server time)" in heads[0] and "(rates from the next refresh on)" in heads[0]
    assert "rates from" not in heads[1]
    assert sum(line.split()[:2] == [unique, "g"] for line in out.splitlines()) == 2 * 1  # a group row each


def test_on_a_terminal_each_refresh_redraws_the_screen_in_place(
    capsys: pytest.CaptureFixture[str], redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal: the cursor hidden and the screen cleared once, then each refresh from the top left,
    every line cleared to its end and the rest of the screen below it; the cursor shown again at the end."""
    monkeypatch.setenv(TTY_ENV, "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("LINES", "50")
    settle(redis_url, unique, [1])
    code, out, err = run(
        capsys, redis_url, "status", unique, "--watch", "--count", "2", "--interval-ms", "100"
    )
    assert code == OK, err
    assert out.startswith(HIDE_CURSOR + HOME + CLEAR_SCREEN)
    assert out.endswith(CLEAR_BELOW + SHOW_CURSOR)
    redraws = out.split(HOME)[2:]
    assert len(redraws) == 2
    for screen in redraws:
        lines = screen.removesuffix(SHOW_CURSOR).removesuffix(CLEAR_BELOW).split("\n")[:-1]
        assert lines and all(line.endswith("\x1b[K") for line in lines)
        assert any(line.startswith(unique) for line in lines)
    assert out.count(CLEAR_SCREEN) == 1


def test_watch_options_without_watch_and_partitions_with_it_are_usage_errors(
    capsys: pytest.CaptureFixture[str], redis_url: str, unique: str
) -> None:
    assert run(capsys, redis_url, "status", unique, "--count", "2")[0] == USAGE
    assert run(capsys, redis_url, "status", unique, "--interval-ms", "500")[0] == USAGE
    assert run(capsys, redis_url, "status", unique, "--watch", "--partitions", "--count", "1")[0] == USAGE
    assert run(capsys, redis_url, "top", unique, "--interval-ms", "10")[0] == USAGE  # below the minimum


def test_ctrl_c_ends_the_watch_with_exit_code_0(redis_url: str, unique: str) -> None:
    """SIGINT (Ctrl-C) while watching is the way out, not a failure: exit code 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop(TTY_ENV, None)
    command = [sys.executable, "-m", "streamq", "top", unique, "--json", "--interval-ms", "100",
               "--redis-url", redis_url]  # fmt: skip
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT
    ) as watch:
        try:
            assert watch.stdout is not None and watch.stderr is not None
            assert json.loads(watch.stdout.readline())["streams"][0]["stream"] == unique
            watch.send_signal(signal.SIGINT)
            assert watch.wait(30) == OK, watch.stderr.read()
        finally:
            if watch.poll() is None:
                watch.kill()


# ---------------------------------------------------------------------------------------------- progress


def dead_letter(url: str, stream: str, count: int) -> None:
    settle(url, stream, [-1] * count)


def test_replay_and_purge_report_progress_chunk_by_chunk_up_to_the_total(redis_url: str, unique: str) -> None:
    """2500 dead letters: purging 1200 by id reports (0, 1200) then a call per chunk of PURGE_CHUNK, ending
    at (1200, 1200); replaying the other 1300 reports per REPLAY_CHUNK, counting up to (1300, 1300)."""
    dead_letter(redis_url, unique, 2500)
    with SyncDeadLetters(redis_url) as dead:
        ids = [letter.dlq_id for letter in dead.list(unique, count=2500)]
        assert len(ids) == 2500
        purged: list[tuple[int, int]] = []
        result = dead.purge(unique, ids[:1200], progress=lambda done, total: purged.append((done, total)))
        assert result.count == 1200
        assert purged == [(0, 1200), (PURGE_CHUNK, 1200), (1200, 1200)]

        replayed: list[tuple[int, int]] = []
        result = dead.replay(unique, progress=lambda done, total: replayed.append((done, total)))
        assert result.count == 1300
    assert replayed[0] == (0, 1300) and replayed[-1] == (1300, 1300)
    assert {total for _, total in replayed} == {1300}
    dones = [done for done, _ in replayed]
    assert dones == sorted(dones)
    assert len(replayed) >= 1300 // REPLAY_CHUNK  # a call per chunk, not one at the end


def test_replay_of_a_partitioned_stream_reports_its_partitions_added_up(redis_url: str, unique: str) -> None:
    """Partitions replayed side by side report one progress: the whole total from the first call on (never
    a partial one that grows), counting up to it."""
    asyncio.run(_declare(redis_url, unique, 3))
    for index, count in enumerate((150, 40, 260)):
        publish(redis_url, partition_stream(unique, index), [-1] * count)
    settle(redis_url, unique, [], partitions=3)
    calls: list[tuple[int, int]] = []
    with SyncDeadLetters(redis_url) as dead:
        result = dead.replay(unique, progress=lambda done, total: calls.append((done, total)))
    assert result.count == 450
    assert {total for _, total in calls} == {450}
    assert calls[0] == (0, 450) and calls[-1] == (450, 450)
    dones = [done for done, _ in calls]
    assert dones == sorted(dones)


def test_dlq_replay_draws_a_progress_line_on_a_terminal_only(
    capsys: pytest.CaptureFixture[str], redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal, `dlq replay --all` draws `replaying ... done/total` on stderr in place and erases it
    before its report; not on a terminal, stderr gets no progress at all."""
    dead_letter(redis_url, unique, 250)
    monkeypatch.setenv(TTY_ENV, "1")
    code, out, err = run(capsys, redis_url, "dlq", "replay", unique, "--all")
    assert code == OK, err
    assert f"{ERASE_LINE}replaying dead letters of {unique}: 0/250 (0%)" in err
    assert err.endswith(f"replaying dead letters of {unique}: 250/250 (100%){ERASE_LINE}")
    assert out.strip() == f"replayed 250 dead letters of {unique}"

    settle(redis_url, unique, [])  # the replayed ones are rejected again
    monkeypatch.setenv(TTY_ENV, "0")
    code, out, err = run(capsys, redis_url, "dlq", "purge", unique, "--all", "--yes")
    assert code == OK, err
    assert err == ""
    assert out.strip() == f"purged 250 dead letters of {unique}"


def test_trim_draws_a_line_while_it_works_on_a_terminal_only(
    capsys: pytest.CaptureFixture[str], redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settle(redis_url, unique, [1, 2, 3])
    monkeypatch.setenv(TTY_ENV, "1")
    code, out, err = run(capsys, redis_url, "trim", unique)
    assert code == OK, err
    assert err.startswith(f"{ERASE_LINE}trimming {unique} (") and err.endswith(ERASE_LINE)
    assert out.startswith(f"{unique}: trimmed")
    monkeypatch.setenv(TTY_ENV, "0")
    code, out, err = run(capsys, redis_url, "trim", unique, "--dry-run")
    assert (code, err) == (OK, "")


def test_top_help_exits_ok_and_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--help"]) == OK
    out = capsys.readouterr().out
    assert "examples:" in out and "--interval-ms" in out and "--count" in out
