"""Every exception streamq raises on purpose.

StreamqError
├── ConfigurationError      a setting, name, handler or client that cannot work
│   └── AppLoadError        `streamq worker APP_PATH` names nothing that loads as an App
├── ServerError             the server is unusable (too old, misconfigured)
├── EventTooLarge           an encoded event exceeds the size cap
├── UnknownEventType        an Event subclass without a stable tag, or a clashing tag
├── HandlerOutcome          raised by a handler to choose an outcome
│   ├── Retry               a failed attempt: try this event (or batch) again after a delay
│   ├── Defer               not yet: put this event (or batch) back for later without using an attempt
│   └── Reject              dead-letter this event (or batch) now
├── HandlerTimeout          a handler call ran past handler_timeout_ms (a failed attempt)
├── WorkerFailed            a part of the worker failed for good (a background loop could not recover)
├── BacklogFull             a producer's max_backlog is exceeded past backlog_timeout_ms
├── ReplicationTimeout      published, but fewer than min_replicas replicas confirmed it in time
├── GroupInUse              `group delete` refused: the group has live consumers
└── DeadLetterNotFound      the dead-letter entry to replay or show is gone

describe_error(exc) renders any exception for a log line; connection_failure(exc, where) what a command says
when the server cannot be used (authentication failed, or cannot reach it).
"""

from __future__ import annotations

from redis.exceptions import AuthenticationError, AuthenticationWrongNumberOfArgsError, RedisError


class StreamqError(Exception):
    """Base class of every error streamq raises on purpose."""


class ConfigurationError(StreamqError, ValueError):
    """A setting, a stream or group name, or a client that cannot work."""


class AppLoadError(ConfigurationError):
    """The APP_PATH given to `streamq worker` cannot be imported or is not a streamq.App."""


class ServerError(StreamqError):
    """The Redis server cannot run streamq (too old, or a setting that loses data)."""


class EventTooLarge(StreamqError, ValueError):
    """An encoded event is larger than the configured cap."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"encoded event is {size} bytes, over the {limit}-byte cap (max_event_bytes)")
        self.size = size
        self.limit = limit


class UnknownEventType(StreamqError, TypeError):
    """An Event subclass that has no stable tag of its own, or whose tag another class already uses."""


class HandlerOutcome(StreamqError):
    """Raised by a handler to choose what happens to its event (or its whole batch)."""


class Retry(HandlerOutcome):
    """Try again later: after `delay_ms`, or after the consumer's backoff when it is None."""

    def __init__(self, delay_ms: int | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay_ms = delay_ms
        self.reason = reason


class Defer(HandlerOutcome):
    """Not yet: handle this event again after `delay_ms` without using an attempt (up to max_defer_ms)."""

    def __init__(self, delay_ms: int, reason: str = "deferred") -> None:
        if not isinstance(delay_ms, int) or isinstance(delay_ms, bool) or delay_ms < 0:
            raise ValueError(f"delay_ms must be an integer >= 0, got {delay_ms!r}")
        super().__init__(reason)
        self.delay_ms = delay_ms
        self.reason = reason


class Reject(HandlerOutcome):
    """Give up now: the event goes to the dead-letter stream with `reason`."""

    def __init__(self, reason: str = "rejected by handler") -> None:
        super().__init__(reason)
        self.reason = reason


class HandlerTimeout(StreamqError, TimeoutError):
    """A handler call ran past handler_timeout_ms: every message it left unsettled failed this attempt."""


class WorkerFailed(StreamqError):
    """A part of the worker failed for good (a background loop that kept failing): the worker stops."""


class BacklogFull(StreamqError):
    """The producer's max_backlog is exceeded: the slowest group owes more than that, and it did not drop
    below it within backlog_timeout_ms. Nothing of the call was published.

    The figures are attributes too, for code that backs off or reports: `stream`, `group` (the slowest),
    `backlog` (= `lag` + `pending`), `max_backlog`, `waited_ms`.
    """

    def __init__(
        self,
        message: str,
        *,
        stream: str = "",
        group: str = "",
        backlog: int = 0,
        lag: int = 0,
        pending: int = 0,
        max_backlog: int = 0,
        waited_ms: int = 0,
    ) -> None:
        super().__init__(message)
        self.stream = stream
        self.group = group
        self.backlog = backlog
        self.lag = lag
        self.pending = pending
        self.max_backlog = max_backlog
        self.waited_ms = waited_ms


class ReplicationTimeout(StreamqError):
    """Fewer than min_replicas replicas confirmed a publish within replica_timeout_ms.

    The events WERE published: they are on the primary and stay there (nothing is rolled back), and a
    consumer may already be handling them. Only their copy on the replicas is unconfirmed, so a failover now
    could lose them. Publishing them again appends them again, unless they carry dedup keys.

    The figures are attributes: `stream`, `acknowledged` (replicas that confirmed), `min_replicas` (asked
    for), `timeout_ms`, `aof` (True: confirmed means fsynced to the replica's AOF, WAITAOF), `ids` (what the
    call returned for every event it published, in order: entry ids, or schedule ids when delayed, or the
    first publish's id for a duplicate), and `unsent` (events of the call after the unconfirmed chunk, not
    sent at all).
    """

    def __init__(
        self,
        message: str,
        *,
        stream: str = "",
        acknowledged: int = 0,
        min_replicas: int = 0,
        timeout_ms: int = 0,
        aof: bool = False,
        ids: list[str] | None = None,
        unsent: int = 0,
    ) -> None:
        super().__init__(message)
        self.stream = stream
        self.acknowledged = acknowledged
        self.min_replicas = min_replicas
        self.timeout_ms = timeout_ms
        self.aof = aof
        self.ids = ids if ids is not None else []
        self.unsent = unsent


class DeadLetterNotFound(StreamqError, LookupError):
    """The dead-letter entry does not exist (already replayed or purged)."""


def describe_error(exc: BaseException) -> str:
    """`Type: message` for logs, or the type alone when there is no message; a refused password or user
    starts with `authentication failed:`, so it is not read as a network problem.

    Not repr(): redis-py 8 gives its errors a repr such as `network:ConnectionError`, without the message
    that says what went wrong (refused, which host, timed out).
    """
    message = str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return f"authentication failed: {text}" if is_authentication_failure(exc) else text


def is_authentication_failure(exc: BaseException) -> bool:
    """True when Redis refused the credentials (WRONGPASS, NOAUTH, a disabled user): redis-py raises
    AuthenticationError, a ConnectionError, for these, which is otherwise worded as "cannot reach"."""
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        return True
    return isinstance(exc, RedisError) and str(exc).startswith(("WRONGPASS", "NOAUTH"))


def connection_failure(exc: BaseException, where: str) -> str:
    """What a command says when the server at `where` (a redacted URL) could not be used: authentication
    failed, or it could not be reached."""
    if is_authentication_failure(exc):
        return (
            f"authentication failed at {where}: {exc} (check the user and password in the URL,"
            " or the server's requirepass / ACL)"
        )
    return f"cannot reach Redis at {where}: {exc}"


class GroupInUse(StreamqError):
    """A group was not deleted: some of its consumers are live (read or renewed within live_idle_ms)."""

    def __init__(self, stream: str, group: str, live: list[tuple[str, int]]) -> None:
        shown = ", ".join(f"{name} (idle {idle_ms} ms)" for name, idle_ms in live[:10])
        more = f" and {len(live) - 10} more" if len(live) > 10 else ""
        super().__init__(
            f"group {group!r} of {stream!r} has live consumers: {shown}{more}. Stop its workers first (a"
            " running worker recreates a group deleted under it), or delete it anyway (--force, force=True)"
        )
        self.stream = stream
        self.group = group
        self.live = live
