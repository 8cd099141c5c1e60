"""Round-trip "steps", shared by asyncio and blocking callers (the dead-letter tools and status).

An operation is written once, as a generator (`Steps`) that yields the commands of one round trip, is sent
their replies (errors as values, not raised) and returns its result. run_steps and run_steps_sync send
each round trip as one pipeline, replies undecoded; they are the only code that knows whether the client
is asyncio or blocking. adopt_async and adopt_sync check that a caller was given a client of the right
kind (or a URL) and say which class to use instead.

On a Redis Cluster each command goes to the node of its key's slot: the commands of a round trip are
grouped by slot, each group is one pipeline on that slot's client, the groups run at once, and the
replies are put back in order. A command answered with a redirection (MOVED, ASK, TRYAGAIN, CLUSTERDOWN:
the server did not run it) is sent again, once its slot's connection has found the slot's new node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
import redis.cluster
from redis.client import NEVER_DECODE

from .._cluster import REDIRECTIONS, AsyncSlotClients, SyncSlotClients
from .._connection import AsyncClient, SyncClient, async_client, sync_client
from ..errors import ConfigurationError
from ..keys import REGISTRY_KEY

T = TypeVar("T")
Command = tuple[Any, ...]  # one command's words, e.g. ("XRANGE", key, "-", "+", "COUNT", 100)
Steps = Generator[list[Command], list[Any], T]  # yields a round trip's commands, is sent their replies
REDIRECTED_FOR_S = 30.0  # how long a cluster command is re-sent while its slot is redirected (a failover)
_RESEND_PAUSE_S = 0.1


def command_key(command: Command) -> str:
    """The key a command works on, which picks its node on a cluster; a keyless command (TIME) goes to
    the registry's node, as good as any."""
    words = [*str(command[0]).split(), *command[1:]]
    name = words[0].upper()
    if name in ("EVAL", "EVALSHA"):
        at = 3 if int(words[2]) > 0 else None
    elif name in ("XINFO", "XGROUP"):
        at = 2
    elif name in ("TIME", "INFO", "PING"):
        at = None
    else:
        at = 1
    if at is None or at >= len(words):
        return REGISTRY_KEY
    key = words[at]
    return key.decode() if isinstance(key, bytes) else str(key)


def _by_slot(
    clients: AsyncSlotClients | SyncSlotClients, commands: Sequence[Command], indexes: Sequence[int]
) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for index in indexes:
        groups.setdefault(clients.slot_of(command_key(commands[index])), []).append(index)
    return groups


async def run_steps(client: AsyncClient, steps: Steps[T]) -> T:
    """Run `steps` on an asyncio client: one pipeline per round trip (per slot on a cluster), replies
    undecoded."""
    replies: list[Any] | None = None
    while True:
        try:
            commands = next(steps) if replies is None else steps.send(replies)
        except StopIteration as done:
            value: T = done.value
            return value
        if isinstance(client, aioredis.Redis):
            replies = await _pipeline(client, commands)
        else:
            replies = await _routed(client, commands)


async def _pipeline(client: aioredis.Redis, commands: Sequence[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        # NEVER_DECODE: redis-py's per-command switch to skip decoding (its own DUMP uses it).
        pipe.execute_command(*command, **{NEVER_DECODE: []})
    return await pipe.execute(raise_on_error=False)


async def _routed(clients: AsyncSlotClients, commands: Sequence[Command]) -> list[Any]:
    replies: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    deadline = time.monotonic() + REDIRECTED_FOR_S
    while True:
        groups = list(_by_slot(clients, commands, todo).items())
        results = await asyncio.gather(*(
            _pipeline(clients.for_slot(slot), [commands[i] for i in indexes]) for slot, indexes in groups
        ))  # fmt: skip
        todo = []
        for (_, indexes), got in zip(groups, results, strict=True):
            for index, reply in zip(indexes, got, strict=True):
                replies[index] = reply
                if isinstance(reply, REDIRECTIONS):
                    todo.append(index)
        if not todo or time.monotonic() >= deadline:
            return replies
        await asyncio.sleep(_RESEND_PAUSE_S)


def run_steps_sync(client: SyncClient, steps: Steps[T]) -> T:
    """Run `steps` on a blocking client: one pipeline per round trip (per slot on a cluster), replies
    undecoded."""
    replies: list[Any] | None = None
    while True:
        try:
            commands = next(steps) if replies is None else steps.send(replies)
        except StopIteration as done:
            value: T = done.value
            return value
        if isinstance(client, redis.Redis):
            replies = _pipeline_sync(client, commands)
        else:
            replies = _routed_sync(client, commands)


def _pipeline_sync(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command, **{NEVER_DECODE: []})  # type: ignore[no-untyped-call]
    return pipe.execute(raise_on_error=False)


def _routed_sync(clients: SyncSlotClients, commands: Sequence[Command]) -> list[Any]:
    replies: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    deadline = time.monotonic() + REDIRECTED_FOR_S
    while True:
        redirected = []
        for slot, indexes in _by_slot(clients, commands, todo).items():
            got = _pipeline_sync(clients.for_slot(slot), [commands[i] for i in indexes])
            for index, reply in zip(indexes, got, strict=True):
                replies[index] = reply
                if isinstance(reply, REDIRECTIONS):
                    redirected.append(index)
        todo = redirected
        if not todo or time.monotonic() >= deadline:
            return replies
        time.sleep(_RESEND_PAUSE_S)


def checked(replies: list[Any]) -> list[Any]:
    """The replies of a round trip, or the first error among them raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def adopt_async(target: object, user: str, instead: str) -> tuple[AsyncClient, bool]:
    """(client, owned) for asyncio code: the user's client (not ours to close), or one built from a URL."""
    if isinstance(target, redis.Redis | redis.cluster.RedisCluster):
        raise ConfigurationError(
            f"{user} needs a redis.asyncio.Redis or a URL, got a blocking redis.Redis: use {instead}"
        )
    if target is not None and not isinstance(target, str | aioredis.Redis | aioredis.RedisCluster):
        raise ConfigurationError(f"{user} needs a redis.asyncio.Redis or a URL, got {type(target).__name__}")
    return async_client(target)


def adopt_sync(target: object, user: str, instead: str) -> tuple[SyncClient, bool]:
    """(client, owned) for blocking code: the user's client (not ours to close), or one built from a URL."""
    if isinstance(target, aioredis.Redis | aioredis.RedisCluster):
        raise ConfigurationError(
            f"{user} needs a redis.Redis or a URL, got a redis.asyncio.Redis: use {instead}"
        )
    if isinstance(target, redis.Redis):
        return target, False
    if isinstance(target, redis.cluster.RedisCluster):
        return sync_client(target), True  # per-slot clients, ours; the user's cluster client stays open
    if target is not None and not isinstance(target, str):
        raise ConfigurationError(f"{user} needs a redis.Redis or a URL, got {type(target).__name__}")
    return sync_client(target), True


@contextlib.asynccontextmanager
async def borrowed_async(target: object, user: str, module: str) -> AsyncIterator[AsyncClient]:
    """An asyncio client for one call of `module`.`user`: the caller's, or one built from a URL (or the
    default) and closed afterwards. A blocking client is refused, naming `user`_sync, its twin."""
    connection, owned = adopt_async(target, user, f"{module}.{user}_sync")
    try:
        yield connection
    finally:
        if owned:
            await connection.aclose()


@contextlib.contextmanager
def borrowed_sync(target: object, user: str, module: str) -> Iterator[SyncClient]:
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
