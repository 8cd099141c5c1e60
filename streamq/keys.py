"""Every Redis key name streamq uses, derived in one place.

The stream's own key is the name the user gives (`orders`), so `XADD orders ...` from any tool reaches
streamq's workers. Everything streamq keeps beside it lives under `streamq:` and carries the stream's
hash tag, so a Lua script may touch the stream and its companions together on Redis Cluster:

    orders                               the stream (user's name, user's data)
    streamq:{orders}:dlq                 dead-letter stream, shared by every group of `orders`
    streamq:{orders}:scheduled           sorted set: delayed events (schedule ids) scored by due time
    streamq:{orders}:scheduled-events    hash: schedule id -> the delayed event's entry fields
    streamq:{orders}:dedup               hash: dedup key -> the id its first publish returned
    streamq:{orders}:dedup-expiry        sorted set: dedup key scored by when it expires
    streamq:{orders}:paused              hash: `*` (every group) or a group name -> who paused it, when
    streamq:{orders}:totals              hash of the stream's own counters (trimmed, scheduled, ...)
    streamq:{orders}:partitions          string: the partition count of a partitioned stream (partitions.py)
    streamq:{orders}:metrics-lease       string: the worker that refreshes the stream's gauges (metrics.py)
    streamq:{orders}:billing:retry       redeliveries for group `billing` only (retries, replays)
    streamq:{orders}:billing:delayed     sorted set: retries waiting for their backoff, scored by due time
    streamq:{orders}:billing:stats       hash of counters (acked, retried, dead, reclaimed, ...)
    streamq:{orders}:billing:rate        string: the group's rate limiter (`<next free ms>.<ns>@<rate>`)
    streamq:{orders}:billing:live        sorted set: the group's running workers, by when their word lapses
    streamq:{orders}:billing:members     sorted set: a partitioned group's live workers, by lease expiry
    streamq:{orders}:billing:owners      hash: partition -> the worker that owns it and until when
    streamq:registry                     set of streams that have had a worker (for `streamq status`)

A stream that already has a hash tag (`{app}orders`, `app1:{eu}orders`) keeps its name as it is:
`streamq:{app}orders:dlq`. Redis Cluster hashes a key by its tag, the text between its first `{` and the
first `}` after it when that text is not empty, else by the whole key.

Names that could make two keys collide, or put a companion in another slot than its stream, are refused
(ConfigurationError), never rewritten:

- any name: 1-200 letters, digits and `_ . : - { }`;
- group names: no `:`. The group is the last `:` field before the kind, so `a:b` would read two ways;
- stream names: braces must give the name a hash tag (`a}b`, `{}x`, `a{b` are refused: Redis hashes them
  whole, and no companion can carry a tag equal to a name holding a brace); not a hash tag alone
  (`{orders}`, whose companions would be those of `orders`; `orders` is in the same slot); not under
  `streamq:`, which is streamq's own.

Why no two keys collide, for names that pass: a companion is `streamq:` + P + [`:` + group] + `:` + kind,
where P is `{stream}` for a stream without braces and the stream itself for one with a tag. The kinds
(stream-level `dlq`, `scheduled`, `scheduled-events`, `dedup`, `dedup-expiry`, `paused`, `totals`,
`partitions`, `metrics-lease`; group-level `retry`, `delayed`, `stats`, `rate`, `live`, `members`,
`owners`) end differently, so a key tells its kind; the group holds no `:`, so it is the field before
the kind; P tells the stream, since a tagged stream is never `{` + brace-free + `}`.
No stream name starts with `streamq:`, so no stream is another's companion or the registry.
Why each companion shares its stream's slot: `streamq:` holds no brace, so a tagged stream's first
`{...}` is the companion's too; a stream without braces is the whole tag of `{stream}`.
"""

from __future__ import annotations

import functools
import re
from typing import Literal

from .errors import ConfigurationError

NAMESPACE = "streamq:"  # every key streamq keeps for itself starts with this; no stream name may
REGISTRY_KEY = NAMESPACE + "registry"

NameKind = Literal["stream", "group", "consumer prefix"]

# Names end up inside key names, log lines and CLI arguments: keep them printable and free of the
# characters that would confuse a key pattern (ACL globs) or a shell.
_NAME = re.compile(r"[A-Za-z0-9_.:{}\-]{1,200}")
# A hash tag as Redis Cluster finds it: the first "{", then the first "}" after it, something between.
_TAG = re.compile(r"\{([^}]+)\}")


def validate_name(kind: NameKind, name: str) -> str:
    """Return `name` if it can be a stream, group or consumer name; raise ConfigurationError otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"{kind} name {name!r} must be 1-200 characters of letters, digits and _ . : - {{ }}"
        )
    if kind == "group" and ":" in name:
        raise ConfigurationError(f"group name {name!r} must not contain ':' (its keys could be another's)")
    if kind == "stream":
        _check_stream(name)
    return name


def _check_stream(name: str) -> None:
    if name.startswith(NAMESPACE):
        raise ConfigurationError(f"stream name {name!r} must not start with {NAMESPACE!r}: streamq's keys")
    if "{" not in name and "}" not in name:
        return
    if hash_tag(name) is None:
        raise ConfigurationError(
            f"stream name {name!r} has braces but no hash tag: use braces only as one {{tag}} with "
            "something inside, or none"
        )
    if name[0] == "{" and name[-1] == "}" and "{" not in name[1:-1] and "}" not in name[1:-1]:
        raise ConfigurationError(
            f"stream name {name!r} is a hash tag alone, so its keys would be those of {name[1:-1]!r}: "
            f"name it {name[1:-1]!r} (the same cluster slot)"
        )


def hash_tag(key: str) -> str | None:
    """The text Redis Cluster hashes `key` by, when it has a hash tag; None when it is hashed whole."""
    start = key.find("{")
    if start == -1:
        return None
    tag = _TAG.match(key, start)
    return tag.group(1) if tag else None


@functools.lru_cache(maxsize=1024)  # settling a batch derives three keys: validate each name once
def _companion_prefix(stream: str) -> str:
    validate_name("stream", stream)
    return NAMESPACE + (stream if hash_tag(stream) is not None else "{" + stream + "}")


@functools.lru_cache(maxsize=1024)
def _group(group: str) -> str:
    return validate_name("group", group)


def dlq_key(stream: str) -> str:
    return f"{_companion_prefix(stream)}:dlq"


def retry_key(stream: str, group: str) -> str:
    return f"{_companion_prefix(stream)}:{_group(group)}:retry"


def delayed_key(stream: str, group: str) -> str:
    return f"{_companion_prefix(stream)}:{_group(group)}:delayed"


def stats_key(stream: str, group: str) -> str:
    return f"{_companion_prefix(stream)}:{_group(group)}:stats"


# Stream-level companions: one per stream, whatever its groups.


def scheduled_key(stream: str) -> str:
    return f"{_companion_prefix(stream)}:scheduled"


def scheduled_events_key(stream: str) -> str:
    return f"{_companion_prefix(stream)}:scheduled-events"


def dedup_index_key(stream: str) -> str:
    return f"{_companion_prefix(stream)}:dedup"


def dedup_expiry_key(stream: str) -> str:
    return f"{_companion_prefix(stream)}:dedup-expiry"


def paused_key(stream: str) -> str:
    return f"{_companion_prefix(stream)}:paused"


def totals_key(stream: str) -> str:
    return f"{_companion_prefix(stream)}:totals"


def metrics_lease_key(stream: str) -> str:
    return f"{_companion_prefix(stream)}:metrics-lease"


def rate_key(stream: str, group: str) -> str:
    return f"{_companion_prefix(stream)}:{_group(group)}:rate"


def live_key(stream: str, group: str) -> str:
    return f"{_companion_prefix(stream)}:{_group(group)}:live"


# A partitioned stream's own keys (beside its partitions, which are streams of their own: partitions.py).


def partitions_key(stream: str) -> str:
    return f"{_companion_prefix(stream)}:partitions"


def members_key(stream: str, group: str) -> str:
    return f"{_companion_prefix(stream)}:{_group(group)}:members"


def owners_key(stream: str, group: str) -> str:
    return f"{_companion_prefix(stream)}:{_group(group)}:owners"
