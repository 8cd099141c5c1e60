"""What operators read: each dead letter logged with its id and reason, authentication failures called
that, and a URL whose path is not a database refused instead of quietly meaning database 0."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import structlog

import streamq
from streamq import keys
from streamq.cli import main
from streamq.errors import ConfigurationError, describe_error


class Box(streamq.Event, tag="test.logs_ops.box"):
    n: int


async def test_every_dead_letter_is_logged_with_its_id_and_reason(redis_url: str, unique: str) -> None:
    """A batch that dead-letters two events logs a `dead-lettered` line for each, naming its entry id and
    its reason (the group is bound to the worker's log lines)."""
    async with streamq.Producer(redis_url) as producer:
        ids = await producer.publish_many(unique, [Box(1), Box(2), Box(3)])
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", block_ms=100, retention=False)
    async def handle(batch: streamq.Batch[Box]) -> None:
        for message in batch:
            if message.event.n != 2:
                batch.dead_letter(message, "bad box")

    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(app.run_until_idle(), 30)
    dead: list[dict[str, Any]] = [line for line in logs if line["event"] == "dead-lettered"]
    assert sorted((line["entry_id"], line["reason"], line["group"]) for line in dead) == [
        (ids[0], "rejected", "g"),
        (ids[2], "rejected", "g"),
    ]


def test_a_url_path_that_is_not_a_database_is_refused(redis_url: str, unique: str) -> None:
    """redis://host:port/abc would connect to database 0 (redis-py ignores such a path): refused before
    connecting, from code and from the command line."""
    parts = urlsplit(redis_url)
    bad = f"{parts.scheme}://{parts.netloc}/abc"
    with pytest.raises(ConfigurationError, match="not a database number"):
        streamq.SyncProducer(bad)
    with pytest.raises(ConfigurationError, match="not a database number"):
        streamq.Producer(bad)
    assert main(["status", unique, "--redis-url", bad]) == 1
    assert main(["status", unique, "--redis-url", f"{parts.scheme}://{parts.netloc}/0"]) == 0


def test_a_refused_password_is_called_an_authentication_failure(
    redis_url: str, sync_client: redis.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong password (WRONGPASS) is reported as `authentication failed`, not as a server that cannot be
    reached, by the command line and in log lines (describe_error)."""
    sync_client.acl_setuser(unique, enabled=True, passwords=["+right"], keys=["*"], commands=["+@all"])
    try:
        parts = urlsplit(redis_url)
        wrong = f"{parts.scheme}://{unique}:wrong@{parts.netloc}/0"
        assert main(["status", keys.validate_name("stream", unique), "--redis-url", wrong]) == 1
        error = capsys.readouterr().err
        assert "authentication failed" in error and "cannot reach" not in error and "wrong@" not in error
        with pytest.raises(redis.AuthenticationError) as caught:
            redis.Redis.from_url(wrong).ping()
        assert describe_error(caught.value).startswith("authentication failed: AuthenticationError")
    finally:
        sync_client.acl_deluser(unique)
