"""Round-trip "steps", shared by asyncio and blocking callers (the dead-letter tools and status).

An operation is written once, as a generator (`Steps`) that yields the commands of one round trip, is sent
their replies (errors as values, not raised) and returns its result. run_steps and run_steps_sync send
each round trip as one pipeline, replies undecoded; they are the only code that knows whether the client
is asyncio or blocking. adopt_async and adopt_sync check that a caller was given a client of the right
kind (or a URL) and say which class to use instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from redis.client import NEVER_DECODE

from .._connection import async_client, sync_client
from ..errors import ConfigurationError

T = TypeVar("T")
Command = tuple[Any, ...]  # one command's words, e.g. ("XRANGE", key, "-", "+", "COUNT", 100)
Steps = Generator[list[Command], list[Any], T]  # yields a round trip's commands, is sent their replies


async def run_steps(client: aioredis.Redis, steps: Steps[T]) -> T:
    """Run `steps` on an asyncio client: one pipeline per round trip, replies undecoded."""
    replies: list[Any] | None = None
    while True:
        try:
            commands = next(steps) if replies is None else steps.send(replies)
        except StopIteration as done:
            value: T = done.value
            return value
        pipe = client.pipeline(transaction=False)
        for command in commands:
            # NEVER_DECODE: redis-py's per-command switch to skip decoding (its own DUMP uses it).
            pipe.execute_command(*command, **{NEVER_DECODE: []})
        replies = await pipe.execute(raise_on_error=False)


def run_steps_sync(client: redis.Redis, steps: Steps[T]) -> T:
    """Run `steps` on a blocking client: one pipeline per round trip, replies undecoded."""
    replies: list[Any] | None = None
    while True:
        try:
            commands = next(steps) if replies is None else steps.send(replies)
        except StopIteration as done:
            value: T = done.value
            return value
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command, **{NEVER_DECODE: []})  # type: ignore[no-untyped-call]
        replies = pipe.execute(raise_on_error=False)


def checked(replies: list[Any]) -> list[Any]:
    """The replies of a round trip, or the first error among them raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def adopt_async(target: object, user: str, instead: str) -> tuple[aioredis.Redis, bool]:
    """(client, owned) for asyncio code: the user's client (not ours to close), or one built from a URL."""
    if isinstance(target, redis.Redis):
        raise ConfigurationError(
            f"{user} needs a redis.asyncio.Redis or a URL, got a blocking redis.Redis: use {instead}"
        )
    if target is not None and not isinstance(target, str | aioredis.Redis):
        raise ConfigurationError(f"{user} needs a redis.asyncio.Redis or a URL, got {type(target).__name__}")
    return async_client(target)


def adopt_sync(target: object, user: str, instead: str) -> tuple[redis.Redis, bool]:
    """(client, owned) for blocking code: the user's client (not ours to close), or one built from a URL."""
    if isinstance(target, aioredis.Redis):
        raise ConfigurationError(
            f"{user} needs a redis.Redis or a URL, got a redis.asyncio.Redis: use {instead}"
        )
    if isinstance(target, redis.Redis):
        return target, False
    if target is not None and not isinstance(target, str):
        raise ConfigurationError(f"{user} needs a redis.Redis or a URL, got {type(target).__name__}")
    return sync_client(target), True


@contextlib.asynccontextmanager
async def borrowed_async(target: object, user: str, module: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client for one call of `module`.`user`: the caller's, or one built from a URL (or the
    default) and closed afterwards. A blocking client is refused, naming `user`_sync, its twin."""
    connection, owned = adopt_async(target, user, f"{module}.{user}_sync")
    try:
        yield connection
    finally:
        if owned:
            await connection.aclose()


@contextlib.contextmanager
def borrowed_sync(target: object, user: str, module: str) -> Iterator[redis.Redis]:
    """borrowed_async for `module`.`user`_sync, the blocking twin of `user`."""
    connection, owned = adopt_sync(target, f"{user}_sync", f"{module}.{user}")
    try:
        yield connection
    finally:
        if owned:
            connection.close()


async def run_steps_on(target: object, steps: Steps[T], user: str, module: str) -> T:
    """Run `steps` on a client borrowed for `module`.`user` (see borrowed_async)."""
    async with borrowed_async(target, user, module) as connection:
        return await run_steps(connection, steps)


def run_steps_on_sync(target: object, steps: Steps[T], user: str, module: str) -> T:
    """Run `steps` on a blocking client borrowed for `module`.`user`_sync (see borrowed_sync)."""
    with borrowed_sync(target, user, module) as connection:
        return run_steps_sync(connection, steps)
