"""The retention run (`python -m chaos.retention`), short: two groups, one stopped for a while, retention
on by default. It passes with streamq's trimmer, and its checks catch a trimmer that trims too far."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio

from chaos import retention
from streamq._wire import retention as retention_wire
from streamq._worker import trimming

PHASES = [("steady", 2.0), ("stalled", 2.0), ("resumed", 2.0)]

pytestmark = pytest.mark.slow


async def test_a_stopped_group_is_waited_for_and_the_stream_shrinks_back(redis_url: str, unique: str) -> None:
    """Every event reaches both groups; nothing either had not acknowledged was ever removed; the stream
    grew while one group was stopped and was trimmed back once it caught up."""
    report = await retention.run(redis_url, rate=400, phases=PHASES, stream=unique)
    assert report.passed, retention.render(report)
    steady, stalled, _ = report.phases
    assert stalled.max_length > steady.max_length  # the stopped group held trimming back
    assert report.final_length < stalled.max_length  # and once it caught up, the stream shrank
    assert report.trimmed > 0 and report.duplicates == {"fast": 0, "slow": 0}


async def test_the_run_catches_a_trimmer_that_removes_unacknowledged_entries(
    redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sabotaged trimmer that cuts at the stream's last entry, whoever has read what, fails the run: the
    snapshots see entries removed before a group acknowledged them, and events go missing."""

    async def trim_too_far(self: Any) -> None:
        client: redis.asyncio.Redis = self.client
        last = await client.xrevrange(self.settings.stream, count=1)
        if last:
            await client.xtrim(self.settings.stream, minid=last[0][0], approximate=False)

    monkeypatch.setattr(trimming.Trimmer, "trim_once", trim_too_far)
    report = await retention.run(redis_url, rate=400, phases=PHASES, stream=unique, drain_s=5.0)
    assert not report.passed
    assert report.early_trims > 0 and report.missing["slow"] > 0


async def test_the_run_catches_a_trimmer_that_falls_behind(
    redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trimmer that removes only a little per call (as `XTRIM MINID ~` without LIMIT does: 10,000
    entries, here one node of 100 a call against 1000 events/s) never removes what it must not, yet the
    stream grows without end: the run fails on its bound, not on its other checks."""
    monkeypatch.setattr(retention_wire, "TRIM_LIMIT", 100)
    monkeypatch.setattr(retention_wire, "MAX_TRIM_CALLS", 1)
    report = await retention.run(redis_url, rate=1000, phases=PHASES, stream=unique, drain_s=2.0)
    assert not report.bounded and not report.passed
    assert report.trimmed > 0 and not report.early_trims and not any(report.missing.values())
