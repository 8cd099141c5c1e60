""" "Where is my event": an entry id of a stream, and what became of it in each group.

When streamq.where (its `locate`) is there, the page shows what it finds. Without it, this module looks
for itself, in two round trips: the entry (XRANGE id id, in each partition of a partitioned stream), the
groups' positions, then each group's pending record of it. From those it says, per group: not delivered
yet (past the group's last delivered id), held by a consumer (with its delivery count and idle time), or
delivered and no longer pending (acknowledged, or moved on to the group's retry stream or dead letters).
"""

from __future__ import annotations

import importlib
from typing import Any

import msgspec

from .._wire import Steps, run_steps_on
from ..partitions import partition_stream, recorded_partitions


class GroupFate(msgspec.Struct, kw_only=True):
    group: str
    state: str  # "not delivered" | "pending" | "settled" | "unknown"
    consumer: str = ""
    deliveries: int = 0
    idle_ms: int = 0
    last_delivered_id: str = ""


class Found(msgspec.Struct, kw_only=True):
    stream: str  # the stream that holds it (a partition's own, for a partitioned stream)
    entry_id: str
    fields: dict[str, bytes] | None  # None: no such entry now (never there, trimmed or deleted)
    groups: list[GroupFate]


_PENDING_ONE = "return redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)"


def _s(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)


def _find(stream: str, entry_id: str, group: str | None, partition: int | None) -> Steps[list[Found]]:
    (count,) = yield from recorded_partitions([stream])
    if count is None:
        names = [stream]
    elif partition is not None:
        names = [partition_stream(stream, partition)] if partition < count else []
    else:
        names = [partition_stream(stream, i) for i in range(count)]
    replies = yield [
        c for name in names for c in (("XRANGE", name, entry_id, entry_id), ("XINFO GROUPS", name))
    ]
    found: list[Found] = []
    for n, name in enumerate(names):
        rows, groups = replies[2 * n], replies[2 * n + 1]
        fields = None
        if not isinstance(rows, Exception) and rows:
            raw = rows[0][1]
            pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=False)
            fields = {_s(k): v if isinstance(v, bytes) else _s(v).encode() for k, v in pairs}
        fates = []
        if not isinstance(groups, Exception):
            for info in groups:
                g = _s(info["name"])
                if group is None or g == group:
                    fates.append(
                        GroupFate(group=g, state="unknown", last_delivered_id=_s(info["last-delivered-id"]))
                    )
        if fields is not None or count is None:
            found.append(Found(stream=name, entry_id=entry_id, fields=fields, groups=fates))
    asked = [(f, fate) for f in found for fate in f.groups]
    if asked:
        pending = yield [("EVAL", _PENDING_ONE, 1, f.stream, fate.group, entry_id) for f, fate in asked]
        for (_, fate), reply in zip(asked, pending, strict=True):
            if isinstance(reply, Exception):
                continue
            if reply:
                _, consumer, idle, deliveries = reply[0]
                fate.state, fate.consumer = "pending", _s(consumer)
                fate.idle_ms, fate.deliveries = int(idle), int(deliveries)
            elif _id_key(entry_id) > _id_key(fate.last_delivered_id):
                fate.state = "not delivered"
            else:
                fate.state = "settled"
    return found or [Found(stream=stream, entry_id=entry_id, fields=None, groups=[])]


async def locate_here(
    target: Any, stream: str, entry_id: str, group: str | None, partition: int | None = None
) -> list[Found]:
    """The entry `entry_id` (in `partition` only, if given, of a partitioned stream) and what each group
    (or `group`) has of it."""
    return await run_steps_on(target, _find(stream, entry_id, group, partition), "dashboard", __name__)


def where_module() -> Any | None:
    """streamq.where when it is installed (its `locate` answers the page), else None."""
    try:
        module = importlib.import_module("streamq.where")
    except ImportError:
        return None
    return module if callable(getattr(module, "locate", None)) else None
