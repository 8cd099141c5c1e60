"""A tiny streamq app for the CLI tests: `streamq worker` imports apps built here.

Each test writes a small module into its own directory (`app = make_app(stream, group)`), so every test
has its own stream and group and the worker's `module:attribute` import from the current directory is
exercised for real.
"""

from __future__ import annotations

import streamq


class Ping(streamq.Event, tag="tests.cli.ping"):
    n: int


def make_app(stream: str, group: str, *, reject_negative: bool = True) -> streamq.App:
    """An app with one consumer that acknowledges pings and, unless told not to, rejects negative ones."""
    app = streamq.App()

    @app.consumer(stream, group=group, batch_size=50, max_attempts=2, lease_ms=1_000, block_ms=100,
                  retry_base_ms=10, retry_max_ms=20)  # fmt: skip
    async def handle(batch: streamq.Batch[Ping]) -> None:
        for message in batch:
            if reject_negative and message.event.n < 0:
                batch.dead_letter(message, f"negative ping {message.event.n}")

    return app
