"""`streamq status` where probes found it wrong: groups tied at one position, times no datetime holds, and
delayed events waiting for a stream that does not exist yet."""

from __future__ import annotations

import pytest
import redis

import streamq
from streamq._cli_output import format_timestamp
from streamq.cli import main
from streamq.inspect import status_sync
from streamq.retention import holdback_sync


class Later(streamq.Event, tag="test.status_probes.later"):
    n: int


def _status_out(redis_url: str, stream: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["status", stream, "--redis-url", redis_url, "--log-level", "error"]) == 0
    return capsys.readouterr().out


def test_groups_tied_at_one_position_are_named_together(
    redis_url: str, sync_client: redis.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two groups stalled at the same entry keep the same entries: naming one and saying the entries are
    kept "for it alone" would send the operator to delete a group whose deletion frees nothing."""
    for n in range(10):
        sync_client.xadd(unique, {"d": str(n)})
    for group in ("a", "b"):
        sync_client.xgroup_create(unique, group, "0")
        sync_client.xreadgroup(group, "c", {unique: ">"}, count=3)
    sync_client.xgroup_create(unique, "ahead", "$")
    held = holdback_sync(sync_client, unique)
    assert held is not None and (held.group, held.tied) == ("a", ["b"])
    assert "trimming held back by groups a, b: 10 entries kept for them alone" in _status_out(
        redis_url, unique, capsys
    )
    sync_client.xack(unique, "b", *[e[0] for e in sync_client.xrange(unique, count=3)])
    held = holdback_sync(sync_client, unique)
    assert held is not None and (held.group, held.tied) == ("a", [])


def test_times_no_datetime_holds_are_shown_as_numbers() -> None:
    assert format_timestamp(0) == "-"
    assert format_timestamp(1_000).startswith("1970-01-01T00:00:01")
    assert format_timestamp(999_999_999_999_999) == "999999999999999 ms since 1970"


def test_status_of_a_stream_held_back_past_the_year_9999(
    redis_url: str, sync_client: redis.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Entry ids are any numbers a client chose: a stalled group at one past year 9999 is reported, not a
    ValueError out of `streamq status`."""
    sync_client.xadd(unique, {"d": "x"}, id="999999999999999-0")
    sync_client.xgroup_create(unique, "g", "0")
    assert "999999999999999 ms since 1970" in _status_out(redis_url, unique, capsys)


def test_delayed_events_for_a_stream_not_made_yet_are_shown(
    redis_url: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no worker running nothing has made the stream, and its delayed events wait beside it: status is
    where an operator looks for them, so they must be counted there, not hidden behind "no such stream"."""
    with streamq.SyncProducer(redis_url) as producer:
        for n in range(3):
            producer.publish(unique, Later(n=n), delay_ms=3_600_000)
    (shown,) = status_sync(redis_url, [unique])
    assert (shown.exists, shown.scheduled) == (False, 3)
    assert shown.next_scheduled_due_ms is not None
    assert "3 delayed events scheduled, the next due" in _status_out(redis_url, unique, capsys)
