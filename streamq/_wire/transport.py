"""The transport: commands packed in RESP, Lua scripts by EVALSHA, raw replies read off one connection.

redis-py stays the client (connections, TLS, auth, reconnects, errors). On the hot path commands are packed
here and raw hiredis replies read without redis-py's response callbacks, because per-command packing and
reply conversion in Python cost more than the server's own work (see benchmarks/RESULTS.md). Nothing here
knows which commands streamq sends: that is commands.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from .._cluster import REDIRECTIONS

Arg = bytes | str | int | float


def _b(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return repr(value).encode() if isinstance(value, float) else str(value).encode()


def pack(*args: Arg) -> bytes:
    """One command in RESP, as the server reads it."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _b(arg)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


_BULK = b"$%d\r\n%s\r\n"


def pack_with_ids(args: Sequence[Arg], ids: Sequence[bytes]) -> bytes:
    """pack(*args, *ids) for a long tail of entry ids, a few times faster than the general loop."""
    head = pack(*args)
    tail = b"".join(map(_BULK.__mod__, zip(map(len, ids), ids, strict=True)))  # no Python frame per id
    return b"*%d%s%s" % (len(args) + len(ids), head[head.index(b"\r\n") :], tail)


class Script:
    """A Lua script run by EVALSHA, loaded on first use and again after the server forgets it."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        SCRIPTS.append(self)

    def pack(self, keys: Sequence[Arg], args: Sequence[Arg], ids: Sequence[bytes] = ()) -> bytes:
        """EVALSHA of this script; `ids` (entry ids) follow `args`, packed in one pass."""
        return pack_with_ids(("EVALSHA", self.sha, len(keys), *keys, *args), ids)


SCRIPTS: list[Script] = []  # every Script made (commands.py makes them): what Link.load_scripts loads


def _is_noscript(reply: object) -> bool:
    # redis-py maps the NOSCRIPT code to NoScriptError and strips it from the message.
    return isinstance(reply, NoScriptError)


# ---------------------------------------------------------------------------------------- connection

try:  # redis-py's own marker for "the reader needs more bytes"; absent if its parser layout changes
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - then every read takes redis-py's regular path
    _NOT_ENOUGH_DATA = None


async def _read_replies(conn: Any, count: int) -> list[Any]:
    """Read `count` replies. With redis-py's hiredis parser, straight from its hiredis reader.

    redis-py's read_response costs a coroutine, a timeout context and several checks per reply, which
    for a pipeline of 1000 XADDs is most of the client's time. Pulling replies from the same hiredis
    reader is equivalent for plain replies; error replies come back as ResponseError values either way.
    Anything unusual (RESP3 push messages, another parser) takes redis-py's own path.
    """
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    fill = getattr(parser, "read_from_socket", None)
    out: list[Any] = []
    if _NOT_ENOUGH_DATA is None or reader is None or fill is None or conn.encoder.decode_responses:
        for _ in range(count):
            try:
                out.append(await conn.read_response(disable_decoding=True, timeout=math.inf))
            except ResponseError as exc:
                out.append(exc)
        return out
    gets = reader.gets
    redirected = getattr(conn, "mark_redirected", None)  # None on a standalone server: nothing to check
    while len(out) < count:
        reply = gets(False)
        if reply is _NOT_ENOUGH_DATA:
            await fill()
            continue
        if isinstance(reply, ConnectionError | redis.exceptions.ConnectionError):
            raise reply
        if type(reply).__name__ == "PushNotification":
            continue  # out-of-band RESP3 push (client tracking); not a reply to our commands
        if redirected is not None and isinstance(reply, REDIRECTIONS):
            redirected()  # a slot connection of a cluster: the next command goes to the slot's node of then
        out.append(reply)
    return out


class Link:
    """One connection borrowed from a redis-py pool and kept by one loop for its whole life.

    Holding the connection spares the pool's per-command bookkeeping on the hot path and lets a blocking
    read own its socket (a BLOCK read would otherwise hold a pooled connection anyway). Commands can be
    sent ahead of their replies (`send`, then `receive` in order), which lets a consumer keep the server
    busy while it handles a batch. On any transport error or timeout the connection is disconnected and
    every owed reply forgotten; the next call reconnects through redis-py.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._conn: Any = None
        self._owed = 0

    @property
    def owed(self) -> int:
        """Replies to commands already sent that nobody has read yet."""
        return self._owed

    async def _connection(self) -> Any:
        if self._conn is None:
            self._conn = await self._client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._owed:
                await self._drop(conn)
            await self._client.connection_pool.release(conn)

    async def abandon(self) -> None:
        """Forget the owed replies by dropping the connection; the next call reconnects."""
        if self._conn is not None:
            await self._drop(self._conn)
        self._owed = 0

    async def _drop(self, conn: Any) -> None:
        # The replies in flight are unknown now: reusing the connection would pair replies with the wrong
        # commands.
        self._owed = 0
        await conn.disconnect(nowait=True)

    async def send(self, payload: bytes, replies: int) -> None:
        """Write packed commands without waiting; their `replies` replies are owed to `receive`."""
        conn = await self._connection()
        try:
            async with asyncio.timeout(conn.socket_timeout):
                await conn.send_packed_command(payload, check_health=False)
        except BaseException:
            await self._drop(conn)
            raise
        self._owed += replies

    async def receive(self, replies: int, *, timeout_s: float | None = None) -> list[Any]:
        """Read the next `replies` owed replies; error replies come back as values.

        `timeout_s` bounds the wait (a blocking read's own BLOCK plus a margin); without it the client's
        socket_timeout does.
        """
        if replies > self._owed:
            raise RuntimeError(f"{replies} replies asked for, {self._owed} owed")
        conn = self._conn
        limit = timeout_s if timeout_s is not None else conn.socket_timeout
        try:
            async with asyncio.timeout(limit):
                out = await _read_replies(conn, replies)
        except BaseException:
            await self._drop(conn)
            raise
        self._owed -= replies
        return out

    async def roundtrip(self, payload: bytes, replies: int, *, timeout_s: float | None = None) -> list[Any]:
        """Send packed commands at once and read their `replies` replies (errors come back as values)."""
        if self._owed:
            raise RuntimeError(f"{self._owed} replies to earlier commands are still owed")
        await self.send(payload, replies)
        return await self.receive(replies, timeout_s=timeout_s)

    async def call(self, *args: Arg, timeout_s: float | None = None) -> Any:
        (reply,) = await self.roundtrip(pack(*args), 1, timeout_s=timeout_s)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def scripts(self, calls: Sequence[bytes]) -> list[Any]:
        """Run packed script calls in one round trip; load the scripts if the server has forgotten them
        (restart, FLUSH) and run the calls again."""
        replies = await self.roundtrip(b"".join(calls), len(calls))
        if any(_is_noscript(r) for r in replies):
            await self.load_scripts()
            replies = await self.roundtrip(b"".join(calls), len(calls))
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def load_scripts(self) -> None:
        await self.roundtrip(b"".join(pack("SCRIPT", "LOAD", s.source) for s in SCRIPTS), len(SCRIPTS))


def roundtrip_sync(
    client: redis.Redis, payload: bytes, replies: int, *, last_reply_within_s: float | None = None
) -> list[Any]:
    """Send packed commands on a blocking client and read their `replies` raw replies (errors as values).

    `last_reply_within_s`: the last reply may take that long (a WAIT's), longer than the client's socket
    timeout allows one read: it is polled for (redis-py's public can_read) before being read.
    """
    pool = client.connection_pool
    conn: Any = pool.get_connection()
    try:
        # A list: the sync connection iterates what it is given, and iterating bytes yields ints.
        conn.send_packed_command([payload], check_health=False)
        out: list[Any] = []
        for n in range(replies):
            if last_reply_within_s is not None and n == replies - 1:
                conn.can_read(timeout=last_reply_within_s)
            try:
                out.append(conn.read_response(disable_decoding=True))
            except ResponseError as exc:
                out.append(exc)
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    return out
