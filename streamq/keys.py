"""Every Redis key name streamq uses, derived in one place.

The stream's own key is the name the user gives (`orders`), so `XADD orders ...` from any tool reaches
streamq's workers. Everything streamq keeps beside it lives under `streamq:` and carries the stream's
hash tag, so a Lua script may touch the stream and its companions together on Redis Cluster:

    orders                               the stream (user's name, user's data)
    streamq:{orders}:dlq                 dead-letter stream, shared by every group of `orders`
    streamq:{orders}:billing:retry       redeliveries for group `billing` only (retries, replays)
    streamq:{orders}:billing:delayed     sorted set: retries waiting for their backoff, scored by due time
    streamq:{orders}:billing:stats       hash of counters (acked, retried, dead, reclaimed, ...)
    streamq:registry                     set of streams that have had a worker (for `streamq status`)

A stream that already has a hash tag (`{app}orders`) keeps it: `streamq:{app}orders:dlq`.
"""

from __future__ import annotations

import re

from .errors import ConfigurationError

REGISTRY_KEY = "streamq:registry"

# Names end up inside key names, log lines and CLI arguments: keep them printable and free of the
# characters that would confuse a key pattern (ACL globs) or a shell.
_NAME = re.compile(r"^[A-Za-z0-9_.:{}\-]{1,200}$")


def validate_name(kind: str, name: str) -> str:
    """Return `name` if it can be a stream, group or consumer name; raise ConfigurationError otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"{kind} name {name!r} must be 1-200 characters of letters, digits and _ . : - {{ }}"
        )
    return name


def _tagged(stream: str) -> str:
    """The stream name with a cluster hash tag: its own if it has one, else the whole name."""
    start = stream.find("{")
    if start != -1:
        end = stream.find("}", start + 1)
        if end > start + 1:
            return stream
    return "{" + stream + "}"


def dlq_key(stream: str) -> str:
    return f"streamq:{_tagged(stream)}:dlq"


def retry_key(stream: str, group: str) -> str:
    return f"streamq:{_tagged(stream)}:{group}:retry"


def delayed_key(stream: str, group: str) -> str:
    return f"streamq:{_tagged(stream)}:{group}:delayed"


def stats_key(stream: str, group: str) -> str:
    return f"streamq:{_tagged(stream)}:{group}:stats"
