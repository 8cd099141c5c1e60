"""The oracle: a ledger kept outside Redis of what was published, handled, faulted and dead-lettered.

Two halves, because writers die differently:
- WorkerLog: each worker process appends one line per handler invocation to its own file, one write()
  per batch before the handler returns. A SIGKILL cannot undo a write() that returned (the data is in the
  kernel's page cache), so no fsync is needed for kills; `fsync=True` also survives a machine crash. Own
  files mean no lock to contend for: a worker frozen by SIGSTOP holds up nobody.
- Ledger: one SQLite database (WAL) written by the harness alone: every publish acknowledged by the server
  (`published`, with its entry id), every chunk whose call raised (`ambiguous`: it may or may not be in the
  stream, Jepsen's "recovered" class when it shows up), malformed entries, faults with what was in flight,
  the final dead-letter stream, and at the end the workers' files merged in.

How each event was published rides along: `delayed` (a delay_ms publish: the call returned a schedule id,
kept in `schedule_id`; its stream entry id is only known from the handlers' `origin_id`), `dedup` (published
with its uuid as dedup key), `publish_calls` (calls that carried it: a failed call retried with the same
dedup keys, or a deliberate second publish of a chunk that had succeeded, counts twice), `duplicate` (the
last call said its key was already known) and `dedup_ok` (False when a deliberate second publish did not
come back as a duplicate of the first, with the first's id).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PUBLISHED, AMBIGUOUS = "published", "ambiguous"
WORKER_LOG_GLOB = "worker-*.tsv"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    uuid TEXT PRIMARY KEY, seq INTEGER, kind TEXT, fail_times INTEGER, status TEXT,
    entry_id TEXT, signature BLOB, t_ms INTEGER,
    delayed INTEGER, schedule_id TEXT, dedup INTEGER, publish_calls INTEGER, duplicate INTEGER,
    dedup_ok INTEGER
);
CREATE TABLE IF NOT EXISTS invocations (
    uuid TEXT, seq INTEGER, pid INTEGER, consumer TEXT, attempt INTEGER, key TEXT,
    entry_id TEXT, origin_id TEXT, ok INTEGER, t_ms INTEGER
);
CREATE TABLE IF NOT EXISTS self_kills (t_ms INTEGER, pid INTEGER, failpoint TEXT, held INTEGER);
CREATE TABLE IF NOT EXISTS faults (
    t_ms INTEGER, kind TEXT, target TEXT, inflight INTEGER, detail TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    dlq_id TEXT, origin_id TEXT, reason TEXT, attempts INTEGER, error_type TEXT, signature BLOB,
    has_payload INTEGER
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class EventRow:
    uuid: str
    seq: int
    kind: str
    fail_times: int
    status: str  # published | ambiguous
    entry_id: str | None  # known for published events only, and not for delayed ones (see schedule_id)
    signature: bytes
    delayed: bool = False  # published with delay_ms: it entered the stream later, moved by a worker
    schedule_id: str | None = None  # what the delayed publish returned (`sched-...`)
    dedup: bool = False  # published with its uuid as dedup key
    publish_calls: int = 1  # calls that carried it (failed ones retried, deliberate second publishes)
    duplicate: bool = False  # the last call found its dedup key known (the first call had written it)
    dedup_ok: bool = True  # a deliberate second publish came back as a duplicate with the first's id


@dataclass(frozen=True, slots=True)
class Invocation:
    """One handler invocation for one event, as the worker wrote it before returning."""

    uuid: str
    pid: int
    consumer: str
    attempt: int
    key: str  # "stream" or "retry": where this delivery came from
    entry_id: str
    origin_id: str
    ok: bool  # the handler let this event succeed (it fails poison and early flaky attempts)


@dataclass(frozen=True, slots=True)
class SelfKill:
    pid: int
    failpoint: str
    held: int  # entries handled but not settled when it died: an upper bound on its duplicates


@dataclass(frozen=True, slots=True)
class Fault:
    t_ms: int
    kind: str
    target: str
    inflight: int | None  # entries pending for the target(s) at that instant; None if unknown
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    dlq_id: str
    origin_id: str
    reason: str
    attempts: int
    error_type: str
    signature: bytes  # its `d` field, else its `raw` field
    has_payload: bool


# ---------------------------------------------------------------------------------------------- workers


class WorkerLog:
    """A worker's append-only ledger file: tab-separated lines, one write() per call."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = str(path)
        self.fsync = fsync
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def invocations(self, rows: Sequence[tuple[str, int, str, int, str, str, str, bool]]) -> None:
        """Rows of (uuid, seq, consumer, attempt, key, entry_id, origin_id, ok)."""
        if not rows:
            return
        pid, t = os.getpid(), now_ms()
        text = "".join(
            f"inv\t{u}\t{seq}\t{pid}\t{consumer}\t{attempt}\t{key}\t{entry}\t{origin}\t{int(ok)}\t{t}\n"
            for u, seq, consumer, attempt, key, entry, origin, ok in rows
        )
        self._write(text)

    def self_kill(self, failpoint: str, held: int) -> None:
        self._write(f"kill\t{os.getpid()}\t{failpoint}\t{held}\t{now_ms()}\n")

    def _write(self, text: str) -> None:
        data = text.encode()
        while data:
            written = os.write(self._fd, data)
            data = data[written:]
        if self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def read_worker_log(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(kind, fields) of each complete line; a line cut short by a kill is skipped."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return  # the process died mid-write: that batch's handler never returned
            kind, *fields = line.rstrip("\n").split("\t")
            yield kind, fields


# ---------------------------------------------------------------------------------------------- harness


class Ledger:
    """The SQLite ledger; only the harness process writes to it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- writing

    def add_events(
        self,
        rows: Iterable[tuple[str, int, str, int, bytes]],
        status: str,
        entry_ids: Sequence[str] | None,
        *,
        delayed: bool = False,
        dedup: bool = False,
        publish_calls: int = 1,
        duplicates: Sequence[bool] | None = None,
        dedup_ok: Sequence[bool] | None = None,
    ) -> None:
        """Rows of (uuid, seq, kind, fail_times, signature); ids as acknowledged, when known: entry ids, or
        schedule ids for a delayed publish."""
        t = now_ms()
        items = list(rows)
        ids: Sequence[str | None] = entry_ids if entry_ids is not None else [None] * len(items)
        dups: Sequence[bool] = duplicates if duplicates is not None else [False] * len(items)
        oks: Sequence[bool] = dedup_ok if dedup_ok is not None else [True] * len(items)
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        u,
                        seq,
                        kind,
                        ft,
                        status,
                        None if delayed else eid,
                        sig,
                        t,
                        int(delayed),
                        eid if delayed else None,
                        int(dedup),
                        publish_calls,
                        int(dup),
                        int(ok),
                    )
                    for (u, seq, kind, ft, sig), eid, dup, ok in zip(items, ids, dups, oks, strict=True)
                ],
            )

    def add_fault(self, kind: str, target: str, inflight: int | None, **detail: Any) -> Fault:
        fault = Fault(now_ms(), kind, target, inflight, detail)
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO faults VALUES (?, ?, ?, ?, ?)",
                (fault.t_ms, kind, target, inflight, json.dumps(detail, sort_keys=True)),
            )
        return fault

    def set_dead_letters(self, rows: Sequence[DeadLetterRow]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM dead_letters")
            self.db.executemany(
                "INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.dlq_id,
                        r.origin_id,
                        r.reason,
                        r.attempts,
                        r.error_type,
                        r.signature,
                        int(r.has_payload),
                    )
                    for r in rows
                ],
            )

    def set_meta(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def merge_worker_logs(self, directory: str | os.PathLike[str]) -> tuple[int, int]:
        """Import every worker file under `directory`; returns (invocations, self kills)."""
        invocations: list[tuple[Any, ...]] = []
        kills: list[tuple[Any, ...]] = []
        for path in sorted(Path(directory).glob(WORKER_LOG_GLOB)):
            for kind, fields in read_worker_log(path):
                if kind == "inv" and len(fields) == 10:
                    u, seq, pid, consumer, attempt, key, entry, origin, ok, t = fields
                    invocations.append(
                        (u, int(seq), int(pid), consumer, int(attempt), key, entry, origin, int(ok), int(t))
                    )
                elif kind == "kill" and len(fields) == 4:
                    pid, failpoint, held, t = fields
                    kills.append((int(t), int(pid), failpoint, int(held)))
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM invocations")
            self.db.execute("DELETE FROM self_kills")
            self.db.executemany("INSERT INTO invocations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", invocations)
            self.db.executemany("INSERT INTO self_kills VALUES (?, ?, ?, ?)", kills)
        return len(invocations), len(kills)

    # -- reading

    def events(self) -> list[EventRow]:
        rows = self.db.execute(
            "SELECT uuid, seq, kind, fail_times, status, entry_id, signature, delayed, schedule_id, dedup,"
            " publish_calls, duplicate, dedup_ok FROM events ORDER BY seq"
        )
        return [
            EventRow(
                u,
                seq,
                kind,
                ft,
                status,
                eid,
                bytes(sig),
                bool(delayed),
                sid,
                bool(dedup),
                calls,
                bool(dup),
                bool(ok),
            )
            for u, seq, kind, ft, status, eid, sig, delayed, sid, dedup, calls, dup, ok in rows
        ]

    def invocations(self) -> list[Invocation]:
        rows = self.db.execute(
            "SELECT uuid, pid, consumer, attempt, key, entry_id, origin_id, ok FROM invocations ORDER BY t_ms"
        )
        return [Invocation(u, pid, c, a, k, e, o, bool(ok)) for u, pid, c, a, k, e, o, ok in rows]

    def self_kills(self) -> list[SelfKill]:
        rows = self.db.execute("SELECT pid, failpoint, held FROM self_kills ORDER BY t_ms")
        return [SelfKill(pid, failpoint, held) for pid, failpoint, held in rows]

    def faults(self) -> list[Fault]:
        rows = self.db.execute("SELECT t_ms, kind, target, inflight, detail FROM faults ORDER BY t_ms")
        return [
            Fault(t, kind, target, inflight, json.loads(detail)) for t, kind, target, inflight, detail in rows
        ]

    def dead_letters(self) -> list[DeadLetterRow]:
        rows = self.db.execute(
            "SELECT dlq_id, origin_id, reason, attempts, error_type, signature, has_payload FROM dead_letters"
        )
        return [DeadLetterRow(d, o, r, a, e, bytes(s), bool(p)) for d, o, r, a, e, s, p in rows]

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row is not None else default
