"""Delayed delivery under hostile input: partitioned streams and out-of-range due times seen by the tools.

Every wait is a condition with a deadline; nothing asserts on timing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import redis
import redis.asyncio

import streamq
from streamq import keys, scheduling
from streamq.cli import main as cli_main


class Note(streamq.Event, tag="test.scheduling_probes.note"):
    n: int
    text: str = ""


def test_a_partitioned_streams_delayed_events_are_counted_across_its_partitions(
    redis_url: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A partitioned stream's delayed events wait in its partitions: the summary and `scheduled list`'s
    total add them up (both said 0 while the list showed them), and the soonest due time is theirs."""
    with streamq.SyncProducer(redis_url, partitions={unique: 4}) as producer:
        ids = producer.publish_many(unique, [Note(n) for n in range(6)], delay_ms=3_600_000, key=str)
        first = producer.publish(unique, Note(9), delay_ms=1_800_000, key="9")
        assert producer.cancel(unique, ids[0])
    listed = scheduling.list_scheduled_sync(redis_url, unique)
    assert len(listed) == 6 and listed[0].schedule_id == first
    summary = scheduling.scheduled_summary_sync(redis_url, unique)
    assert summary.scheduled_count == 6
    assert summary.next_due_ms == listed[0].due_ms
    assert summary.totals["scheduled"] == 7 and summary.totals["cancelled"] == 1
    assert cli_main(["scheduled", "list", unique, "--redis-url", redis_url, "--json", "--limit", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["total"] == 6 and len(shown["scheduled"]) == 2
    assert cli_main(["scheduled", "list", unique, "--redis-url", redis_url, "--limit", "2"]) == 0
    assert "2 of 6 shown" in capsys.readouterr().err


def test_due_times_past_the_ends_of_the_calendar_do_not_break_listing_or_status(
    redis_url: str, sync_client: redis.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`at=` takes any aware datetime, and one near datetime's ends in another timezone is a due time in
    year 0 or 10000 in UTC; a score written by hand may even be infinite. Each used to make every listing
    of the stream (`scheduled()`, `streamq scheduled list`, table or JSON) fail with a traceback, and the
    summary too for an infinite one. They are shown at the nearest end of the calendar; one due at 0 ms
    (1970-01-01) is shown as such, not as "-"."""
    with streamq.SyncProducer(redis_url) as producer:
        producer.publish(unique, Note(1), at=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))))
        producer.publish(unique, Note(2), at=datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))))
        producer.publish(unique, Note(3), at=datetime(1970, 1, 1, tzinfo=UTC))  # due at 0 ms
    sync_client.zadd(keys.scheduled_key(unique), {"sched-by-hand-low": float("-inf")})
    sync_client.zadd(keys.scheduled_key(unique), {"sched-by-hand-high": float("inf")})
    sync_client.xadd(unique, {"d": b"\x80"})  # so that status reads the stream's delayed events
    listed = scheduling.list_scheduled_sync(redis_url, unique)
    assert len(listed) == 5
    dues = [event.due for event in listed]
    assert dues == sorted(dues)
    assert dues[0] == datetime.min.replace(tzinfo=UTC) and dues[-1].year == 9999
    summary = scheduling.scheduled_summary_sync(redis_url, unique)
    assert summary.scheduled_count == 5 and summary.next_due_ms == listed[0].due_ms
    assert cli_main(["scheduled", "list", unique, "--redis-url", redis_url]) == 0
    table = capsys.readouterr().out
    assert "0001-01-01T00:00:00+00:00" in table and "1970-01-01T00:00:00+00:00" in table
    assert cli_main(["scheduled", "list", unique, "--redis-url", redis_url, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["scheduled"]) == 5
    assert cli_main(["status", unique, "--redis-url", redis_url]) == 0
    capsys.readouterr()
