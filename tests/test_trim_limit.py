"""A trim removes everything acknowledged below the cut, however much: `XTRIM MINID ~` without LIMIT stops
after 100 nodes (10,000 entries at the default node size), so a worker trimming once a second fell behind
any stream faster than 10,000 events a second, and the stream grew without end."""

from __future__ import annotations

import redis

from streamq._wire import retention as wire
from streamq.retention import trim_sync


def _fill(client: redis.Redis, stream: str, count: int) -> bytes:
    """`count` entries, all delivered to and acknowledged by group g (it stands after the last)."""
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(stream, {"d": b"x"})
        if n % 5_000 == 4_999:
            pipe.execute()
    pipe.execute()
    last: bytes = client.xrevrange(stream, count=1)[0][0]
    client.xgroup_create(stream, "g", last)
    return last


def test_one_trim_removes_a_backlog_larger_than_xtrims_default_limit(
    sync_client: redis.Redis, unique: str
) -> None:
    _fill(sync_client, unique, 50_000)
    result = trim_sync(sync_client, unique)
    # `~` keeps the node holding the cut (at most stream-node-max-entries, 100 by default).
    assert sync_client.xlen(unique) <= 100
    assert result.removed == 50_000 - sync_client.xlen(unique)


def test_a_backlog_above_one_calls_limit_is_trimmed_in_calls_that_each_stay_under_it(
    sync_client: redis.Redis, unique: str
) -> None:
    total = 2 * wire.TRIM_LIMIT + 20_000
    _fill(sync_client, unique, total)
    before = _script_calls(sync_client)
    reply = wire.trim_sync(sync_client, unique)
    assert sync_client.xlen(unique) <= 100
    assert reply.removed == total - sync_client.xlen(unique) == total - reply.length_after
    # Two calls that each hit the limit, then one that took the rest (and said there was no more).
    assert _script_calls(sync_client) - before == 3


def _script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval"))
