"""Planning one publish call: its arguments checked, its events encoded and cut into chunks.

Producer and SyncProducer differ only in how they send; what they send is decided here, once, before any
write. A call is refused whole (ConfigurationError, EventTooLarge, a wrong type) rather than half
published, so every check and every encoding happens before the first chunk leaves.

The plan also picks the path. A plain publish (no dedup key, no delay, no trimming) becomes pipelined XADD
chunks and costs nothing beyond encoding; anything else becomes PUBLISH script chunks
(streamq/_wire/publishing.py), one atomic step per chunk.

Headers (`headers=`) are the entry's fields besides the payload field `d`: checked here (names, types,
MAX_HEADERS, MAX_HEADER_BYTES) and encoded once per call, then written beside the payload on either path,
and kept beside a delayed event's payload until it is moved in. An event without headers costs nothing more.

With min_replicas, either path sends a wait (WAIT, or WAITAOF with replica_aof) behind every chunk, in the
chunk's round trip; too few replicas in its reply raise ReplicationTimeout (replication_timeout()).
"""

from __future__ import annotations

import itertools
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from ._wire import ReplicaWait, publishing
from .errors import ConfigurationError, ReplicationTimeout
from .events import Encoder, Event
from .keys import validate_name
from .settings import DAY_MS, MAX_HEADER_BYTES, MAX_HEADER_NAME_CHARS, MAX_HEADERS, ProducerSettings

MAX_DELAY_MS = 3650 * DAY_MS  # ten years: a larger delay is a unit mistake (seconds given as ms * 1000)
MAX_DEDUP_KEY_CHARS = 1_024
MAX_DEDUP_TTL_MS = 365 * DAY_MS  # the same bound ProducerSettings puts on the producer's default
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# publish_many's dedup_key: a callable (event -> key or None) or a sequence of keys aligned with the events.
DedupKeys = Callable[[Event], "str | None"] | Sequence["str | None"] | None
# publish_many's headers: one mapping for every event, a callable (event -> mapping or None), or a sequence of
# mappings (or None) aligned with the events.
Headers = (
    Mapping[str, str]
    | Callable[[Event], "Mapping[str, str] | None"]
    | Sequence["Mapping[str, str] | None"]
    | None
)
# One event's headers as written: name, value, name, value... (UTF-8); () for none.
HeaderFields = tuple[bytes, ...]
HEADER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*")
RESERVED_HEADER_PREFIX = "streamq-"  # names streamq sets itself (streamq-truncated)


class PublishPlan(NamedTuple):
    """One publish call, checked and encoded: the fast path's chunks, or the script's."""

    stream: str
    fast: list[list[bytes]] | None  # payloads for plain XADDs, when nothing asks for the script
    scripted: list[list[publishing.Planned]]  # empty on the fast path
    trim: int | None  # MAXLEN for the script; the fast path never trims
    approximate: bool  # MAXLEN ~ rather than =
    due_mode: str  # '' now, 'd' delay from the server's now, 'a' at an absolute time
    due_value: int
    ttl_ms: int
    fast_headers: list[list[HeaderFields]] | None = None  # the fast chunks' headers, when any event has some

    def packed(self) -> Iterator[bytes]:
        """The PUBLISH call of each scripted chunk, packed as it is about to be sent: only the chunk in
        flight is held twice (planned and packed), not the whole call."""
        for chunk in self.scripted:
            yield publishing.pack_publish(
                self.stream, chunk, ttl_ms=self.ttl_ms, maxlen=self.trim, approximate=self.approximate,
                due_mode=self.due_mode, due_value=self.due_value,
            )  # fmt: skip


class Planner:
    """Plans the calls of one producer: its checked settings and the encoder built from them, once."""

    def __init__(self, settings: ProducerSettings) -> None:
        self.settings = settings
        self.encoder = Encoder(settings.max_event_bytes)
        # What follows every chunk; None: nothing (no min_replicas).
        self.wait = (
            None
            if settings.min_replicas is None
            else ReplicaWait(settings.min_replicas, settings.replica_timeout_ms, settings.replica_aof)
        )

    def plan(
        self,
        stream: str,
        events: Iterable[Event],
        chunk_size: int | None,
        maxlen: int | None,
        *,
        delay_ms: int | None = None,
        at: datetime | None = None,
        dedup_keys: DedupKeys = None,
        dedup_ttl_ms: int | None = None,
        header_fields: list[HeaderFields] | None = None,
    ) -> PublishPlan:
        """The payloads of one publish call cut into chunks, and how to send them; raises before any write.

        `header_fields`: the events' headers, checked (header_fields_for), aligned with `events`."""
        validate_name("stream", stream)
        settings = self.settings
        size, trim = settings.for_call(chunk_size, maxlen)
        due_mode, due_value = check_due(delay_ms, at)
        ttl_ms = settings.dedup_ttl_ms if dedup_ttl_ms is None else check_ttl(dedup_ttl_ms)
        if not isinstance(events, list):
            events = list(events)
        keys = dedup_keys_for(events, dedup_keys)
        # Encode everything first: an event that is too large or of the wrong type fails the call before
        # anything of it is written, instead of leaving half a batch published.
        payloads = self.encoder.encode_many(events)
        approximate = settings.approximate_trim
        if keys is None and not due_mode and trim is None:
            # The fast path: no per-event work beyond encoding, and no script.
            starts = range(0, len(payloads), size)
            chunks = [payloads[start : start + size] for start in starts]
            fast_headers = None
            if header_fields is not None:
                fast_headers = [header_fields[start : start + size] for start in starts]
            return PublishPlan(stream, chunks, [], None, approximate, "", 0, ttl_ms, fast_headers)
        if keys is None:
            keys = [None] * len(payloads)
        fields: Sequence[HeaderFields] = header_fields or [()] * len(payloads)
        planned = [
            publishing.Planned(
                key or "", new_schedule_id() if due_mode else "", payload, h
            )
            for key, payload, h in zip(keys, payloads, fields, strict=True)
        ]
        scripted = [planned[start : start + size] for start in range(0, len(planned), size)]
        return PublishPlan(stream, None, scripted, trim, approximate, due_mode, due_value, ttl_ms)


_schedule_counter = itertools.count()
_schedule_clock = [0]  # the last microsecond an id was made at: ids never go back with the clock
_schedule_lock = threading.Lock()  # SyncProducer is shared by threads


def new_schedule_id() -> str:
    """`sched-` and 32 hex digits: the time in microseconds, a counter of this process, then randomness.

    Delayed events due at one millisecond are moved in the order of their ids (the scheduled set orders
    equal scores by member), so ids that sort in publish order keep a `publish_many(..., at=T)` in order
    when it enters the stream, as an ordered partition needs; random ids (uuid4) shuffled it. The random
    part keeps ids of different processes apart."""
    with _schedule_lock:
        micros = _schedule_clock[0] = max(_schedule_clock[0], time.time_ns() // 1_000)
        count = next(_schedule_counter)
    return (
        f"{publishing.SCHEDULE_ID_PREFIX}{micros % 16**14:014x}{count % 16**6:06x}"
        f"{secrets.token_hex(6)}"
    )


def replication_timeout(
    stream: str, wait: ReplicaWait, acknowledged: int, ids: list[str], unsent: int
) -> ReplicationTimeout:
    """The error for a chunk fewer than `wait.replicas` replicas confirmed: `ids` is what the call has
    published so far, `unsent` how many of its events come after that chunk, never sent."""
    confirmed = "had fsynced it to their AOF (WAITAOF)" if wait.aof else "had it (WAIT)"
    rest = f"; the call's {unsent} later events were not sent" if unsent else ""
    return ReplicationTimeout(
        f"stream {stream!r}: {acknowledged} of {wait.replicas} replicas {confirmed} within"
        f" {wait.timeout_ms} ms (min_replicas={wait.replicas}, replica_timeout_ms={wait.timeout_ms}). The"
        f" {len(ids)} events sent WERE published on the primary and stay there (their ids are in .ids);"
        f" publishing them again appends them again, unless they have dedup keys{rest}",
        stream=stream, acknowledged=acknowledged, min_replicas=wait.replicas, timeout_ms=wait.timeout_ms,
        aof=wait.aof, ids=list(ids), unsent=unsent,
    )  # fmt: skip


def events_after(chunks: Sequence[Sequence[object]], sent: int) -> int:
    """How many events the chunks after the first `sent` hold."""
    return sum(len(chunk) for chunk in chunks[sent:])


def check_due(delay_ms: int | None, at: datetime | None) -> tuple[str, int]:
    """The script's due mode and value for `delay_ms=` or `at=`: ('', 0) when neither delays the call."""
    if delay_ms is not None and at is not None:
        raise ConfigurationError("give delay_ms or at, not both")
    if delay_ms is not None:
        if not isinstance(delay_ms, int) or isinstance(delay_ms, bool) or not 0 <= delay_ms <= MAX_DELAY_MS:
            raise ConfigurationError(f"delay_ms must be an integer from 0 to {MAX_DELAY_MS}, got {delay_ms}")
        return "d", delay_ms
    if at is not None:
        if not isinstance(at, datetime):
            raise ConfigurationError(f"at must be a datetime, got {type(at).__name__}")
        if at.tzinfo is None or at.utcoffset() is None:
            # A naive datetime is local time to one machine and UTC to another: refuse to guess.
            raise ConfigurationError(
                f"at must be an aware datetime (with a timezone, e.g. datetime.now(UTC)), got naive {at!r}"
            )
        # Epoch ms, which the script compares with the server's clock (TIME), never the caller's.
        return "a", (at - _EPOCH) // timedelta(milliseconds=1)
    return "", 0


def check_ttl(ttl_ms: int) -> int:
    if not isinstance(ttl_ms, int) or isinstance(ttl_ms, bool) or not 1 <= ttl_ms <= MAX_DEDUP_TTL_MS:
        raise ConfigurationError(
            f"dedup_ttl_ms must be an integer from 1 to {MAX_DEDUP_TTL_MS}, got {ttl_ms!r}"
        )
    return ttl_ms


def dedup_keys_for(events: list[Event], given: DedupKeys) -> list[str | None] | None:
    """One dedup key (or None) per event, from a callable or an aligned sequence; None when none has one,
    so a call whose keys are all None stays on the fast path."""
    if given is None:
        return None
    found = per_event(events, given, "dedup_key", "key", "keys")
    for key in found:
        check_dedup_key(key)
    return found if any(key is not None for key in found) else None


def per_event(events: list[Event], given: Any, name: str, what: str, unit: str) -> list[Any]:
    """publish_many's per-event option `name` resolved to one value per event: a callable (event -> `what`
    or None) is called on each, a sequence must be aligned with the events; one string is refused (it
    would be read as a sequence of characters)."""
    if isinstance(given, str | bytes):
        raise ConfigurationError(
            f"publish_many's {name} is a callable (event -> {what} or None) or a sequence of {unit} aligned"
            " with the events, not one string"
        )
    if callable(given):
        return [given(event) for event in events]
    found = list(given)
    if len(found) != len(events):
        raise ConfigurationError(f"{name} has {len(found)} {unit} for {len(events)} events")
    return found


def check_dedup_key(key: object) -> None:
    if key is not None and not (isinstance(key, str) and 0 < len(key) <= MAX_DEDUP_KEY_CHARS):
        raise ConfigurationError(
            f"a dedup key must be None or a string of 1 to {MAX_DEDUP_KEY_CHARS} characters,"
            f" got {_shown(key)}"
        )
    if key is not None:
        try:
            key.encode()
        except UnicodeEncodeError as exc:
            # A lone surrogate fails only when the key is packed, chunk by chunk: after earlier chunks of
            # the call were published. Refused here, with every other check, before anything is written.
            raise ConfigurationError(f"a dedup key must be valid text: {exc}") from None


def _shown(value: object, limit: int = 80) -> str:
    """repr(value), cut short: an error about a megabyte-long key should not carry the megabyte."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... (cut; its repr has {len(text)} characters)"


def header_fields_for(
    events: list[Event], given: Headers, traced: Mapping[str, str] | None = None
) -> list[HeaderFields] | None:
    """The headers of each event, checked and encoded, with the trace context `traced` (tracing.py) added to
    each; None when no event has any, so such a call costs nothing more."""
    if given is None and not traced:
        return None
    extra = _encoded(traced) if traced else ()
    if given is None:
        return [extra] * len(events)
    if isinstance(given, Mapping):
        return [check_headers(given, traced) + extra] * len(events)  # the same headers for every event
    found = per_event(events, given, "headers", "mapping", "entries")
    out = [extra if headers is None else check_headers(headers, traced) + extra for headers in found]
    return out if any(out) else None


def check_headers(headers: object, traced: Mapping[str, str] | None = None) -> HeaderFields:
    """One event's headers, checked, as fields to write; a name also in `traced` is left to the trace's."""
    if not isinstance(headers, Mapping):
        raise ConfigurationError(f"headers must be a mapping of str to str, got {type(headers).__name__}")
    if len(headers) > MAX_HEADERS:
        raise ConfigurationError(f"an event may have at most {MAX_HEADERS} headers, got {len(headers)}")
    flat: list[bytes] = []
    size = 0
    for name, value in headers.items():
        check_header_name(name)
        if not isinstance(value, str):
            raise ConfigurationError(f"header {name!r}: values are str, got {type(value).__name__}")
        if traced and name in traced:
            continue
        try:
            encoded = value.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate
            raise ConfigurationError(f"header {name!r}: the value is not valid text: {exc}") from None
        size += len(name) + len(encoded)  # names are ASCII
        if size > MAX_HEADER_BYTES:
            raise ConfigurationError(
                f"an event's headers may take at most {MAX_HEADER_BYTES} bytes (names and values, UTF-8)"
            )
        flat += (name.encode(), encoded)
    return tuple(flat)


def check_header_name(name: object) -> None:
    if not (
        isinstance(name, str)
        and 0 < len(name) <= MAX_HEADER_NAME_CHARS
        and HEADER_NAME.fullmatch(name)
        and name != "d"
        and not name.startswith(RESERVED_HEADER_PREFIX)
    ):
        raise ConfigurationError(
            f"a header name is a str of 1 to {MAX_HEADER_NAME_CHARS} characters among A-Z a-z 0-9 _ . : / -"
            f" (not starting with . : / -), other than 'd' (the payload's field) and not starting with"
            f" {RESERVED_HEADER_PREFIX!r}; got {name!r}"
        )


def _encoded(headers: Mapping[str, str]) -> HeaderFields:
    return tuple(part for name, value in headers.items() for part in (name.encode(), value.encode()))
