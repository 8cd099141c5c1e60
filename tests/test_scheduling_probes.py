"""Delayed delivery under hostile input: partitioned streams seen by the tools.

Every wait is a condition with a deadline; nothing asserts on timing.
"""

from __future__ import annotations

import json

import pytest

import streamq
from streamq import scheduling
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
