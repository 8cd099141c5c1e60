"""The checker: Jepsen's total-queue classes plus streamq's own invariants, computed from the ledger.

Inputs are the ledger (what was published, every handler invocation, every fault and self-kill, the final
dead-letter stream) and the final state of Redis after the workers drained and stopped. Classes:

    lost        published (acknowledged by the server) but neither handled successfully and no longer
                pending, nor dead-lettered; must be 0
    trimmed     like lost, but its entry was pending when the nemesis trimmed it on purpose (trim_pending)
    recovered   ambiguous (the publish call raised) yet seen by a handler or in the dead-letter stream
    unexpected  seen by a handler or in the dead-letter stream, never published; must be 0
    duplicated  successful handler invocations beyond the first, per event
    delayed     published with delay_ms: moved into the stream by a worker when due. Its stream entry id is
                whatever `origin_id` its handler invocations and dead letter carry: `entered once` (one id),
                `entered twice` (several ids: a mover appended it again; must be 0) or `never` (no id: lost,
                unless the nemesis trimmed it while pending before a handler logged it)
    republished a dedup-keyed event (its uuid as dedup key) with a stream entry other than the one its
                publish returned, or more than one; or a deliberate second publish of it that did not come
                back a duplicate of the first; must be 0 (a failed call is retried with the same keys, so
                these are never ambiguous)

Invariants: duplicates <= the entries in flight at each kill, stop, server restart and client kill (and
at each failpoint self-kill), and <= streamq's own `reclaimed` + `lease_lost` counters; no event has more
attempt number over max_attempts, nor more invocations than max_attempts + max_deliveries (deliveries
that never settled have a budget of their own in streamq); nothing pending, undelivered or waiting for a
retry at the end; the dead-letter stream holds exactly the poison and the malformed events, byte for byte,
each once, with the expected reason; no bystander is dead-lettered (an event whose handler never failed,
however many crashes it was in flight for); and no worker died unexplained.

Retention and scheduling: every delayed event entered the stream exactly once, no dedup-keyed event was
republished, nothing is left in the stream's scheduled set, retention really ran (the stream's `trimmed`
total is above 0), and no entry was removed while pending except by the nemesis: streamq's
`deleted_pending` counter is at most the pending entries trim_pending removed (as before, those entries are
`trimmed`, not lost, and the nemesis's fault alone may excuse them).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import msgspec

from streamq.settings import DEFAULT_MAX_DELIVERIES

from .faults import CLIENT_KILL, DISRUPTIVE, SERVER_RESTART, STOP, TRIM_PENDING, WORKER_EXIT
from .ledger import AMBIGUOUS, DeadLetterRow, EventRow, Fault, Invocation, Ledger, SelfKill
from .workload import MALFORMED_KINDS, MALFORMED_REASONS, POISON, uuid_in

SAMPLE = 20  # ids quoted per class in the report


class FinalState(msgspec.Struct, kw_only=True):
    """Redis after the drain and the workers' graceful stop."""

    drained: bool
    drain_s: float
    stream_pending: int
    retry_pending: int
    stream_undelivered: int
    retry_undelivered: int
    stream_lag: int | None
    retry_lag: int | None
    delayed: int
    stream_length: int
    retry_length: int
    dlq_length: int
    stats: dict[str, int]
    scheduled: int = 0  # delayed events left in the stream's scheduled set (keys.scheduled_key)
    scheduled_events: int = 0  # fields left in its payload hash (keys.scheduled_events_key)
    totals: dict[str, int] = msgspec.field(default_factory=dict)  # the stream's own counters (trimmed...)
    consumers: int  # consumers left in the group (dead ones are reaped once idle and empty)
    consumers_holding: dict[str, int]  # consumer -> entries it still holds
    pending_ids: list[str]  # stream entries still pending (at most 1000)
    worker_exit_codes: dict[str, int | None]  # pid -> exit code after SIGTERM (None: had to be killed)


class Check(msgspec.Struct):
    name: str
    ok: bool
    detail: str


class CheckReport(msgspec.Struct, kw_only=True):
    ok: bool
    checks: list[Check]
    # publishing
    published: int
    ambiguous: int
    recovered: int
    unresolved_ambiguous: int
    kinds: dict[str, int]  # published events per kind (ok, flaky, poison, malformed kinds)
    # outcomes
    invocations: int
    acked: int
    dead_lettered: int
    lost: int
    lost_sample: list[str]
    trimmed: int
    trimmed_sample: list[str]
    unexpected: int
    unexpected_sample: list[str]
    # duplicates
    duplicated: int
    duplicated_events: int
    duplicate_bound: int
    reclaimed: int
    lease_lost: int
    lease_lost_bound: (
        int  # entries in flight at pauses, server restarts and client kills (kills cannot settle)
    )
    # attempts
    max_invocations: int
    max_attempt_seen: int
    attempts_over_limit: int
    attempts_over_limit_sample: list[str]
    same_attempt_twice: int
    # dead letters
    dlq_entries: int
    dlq_expected: int
    dlq_missing: list[str]
    dlq_extra: list[str]
    dlq_duplicates: list[str]
    dlq_bytes_mismatch: list[str]
    dlq_reason_mismatch: list[str]
    bystanders_dead_lettered: int  # dead letters of events whose handler never failed: must be 0
    acked_and_dead: int
    # delayed events (published ones; ambiguous ones only count when they entered twice)
    delayed: int
    delayed_ambiguous: int
    delayed_once: int
    delayed_twice: int  # several stream entry ids: must be 0
    delayed_twice_sample: list[str]
    delayed_never: int  # published, never seen, not trimmed by the nemesis: must be 0
    delayed_never_trimmed: int  # never seen because trim_pending removed it while pending
    delayed_never_sample: list[str]
    # dedup-keyed events
    dedup_events: int
    republished: int  # must be 0
    republished_sample: list[str]
    # retention
    scheduled_left: int
    trimmed_by_retention: int  # the stream's `trimmed` total: must be > 0
    deleted_pending: int  # streamq's counter: must be <= trimmed_pending_by_nemesis
    trimmed_pending_by_nemesis: int
    # faults
    faults: dict[str, int]
    self_kills: dict[str, int]
    worker_exits: dict[str, int]  # failpoint | unexplained
    unexplained_exits: list[str]
    final: FinalState
    stats: dict[str, int]


def check(
    ledger: Ledger,
    final: FinalState,
    *,
    max_attempts: int,
    batch_size: int,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
) -> CheckReport:
    return _check(
        ledger.events(), ledger.invocations(), ledger.self_kills(), ledger.faults(), ledger.dead_letters(),
        final, max_attempts=max_attempts, batch_size=batch_size, max_deliveries=max_deliveries,
    )  # fmt: skip


def _check(
    events: list[EventRow],
    invocations: list[Invocation],
    self_kills: list[SelfKill],
    faults: list[Fault],
    dead: list[DeadLetterRow],
    final: FinalState,
    *,
    max_attempts: int,
    batch_size: int,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
) -> CheckReport:
    by_uuid = {e.uuid: e for e in events}
    by_signature = {e.signature: e.uuid for e in events}

    per_event: dict[str, list[Invocation]] = defaultdict(list)
    unexpected: list[str] = []
    for inv in invocations:
        if inv.uuid in by_uuid:
            per_event[inv.uuid].append(inv)
        else:
            unexpected.append(f"handler:{inv.uuid}@{inv.entry_id}")

    dlq: dict[str, list[DeadLetterRow]] = defaultdict(list)
    bytes_mismatch: list[str] = []
    for letter in dead:
        found = by_signature.get(letter.signature)
        if found is None:
            guess = uuid_in(letter.signature)
            if guess is not None and guess in by_uuid:
                bytes_mismatch.append(guess)
                dlq[guess].append(letter)
            else:
                unexpected.append(f"dlq:{letter.dlq_id}(id {letter.origin_id})")
            continue
        dlq[found].append(letter)

    pending_ids = set(final.pending_ids)
    trimmed_ids = {i for f in faults if f.kind == TRIM_PENDING for i in f.detail.get("pending_ids", [])}
    # A delayed event trimmed while pending before any handler logged it has no known entry id: the
    # nemesis names the events it trimmed too.
    trimmed_uuids = {u for f in faults if f.kind == TRIM_PENDING for u in f.detail.get("pending_uuids", [])}
    trimmed_by_nemesis = sum(len(f.detail.get("pending_ids", [])) for f in faults if f.kind == TRIM_PENDING)

    # Every stream entry id each event was seen under: handler invocations (`origin_id`: the main stream's
    # entry even for a delivery from the retry stream) and dead letters.
    stream_ids: dict[str, set[str]] = defaultdict(set)
    for uid, seen in per_event.items():
        stream_ids[uid].update(inv.origin_id for inv in seen)
    for uid, letters in dlq.items():
        stream_ids[uid].update(letter.origin_id for letter in letters)

    def entry_of(event: EventRow) -> str | None:
        """The event's stream entry id: as published, or for a delayed event the one it was seen under."""
        if event.entry_id is None and event.delayed and len(stream_ids.get(event.uuid, ())) == 1:
            (only,) = stream_ids[event.uuid]
            return only
        return event.entry_id

    def trimmed_on_purpose(event: EventRow) -> bool:
        return entry_of(event) in trimmed_ids or event.uuid in trimmed_uuids

    delayed_once = delayed_never_trimmed = delayed_ambiguous = 0
    delayed_twice: list[str] = []
    delayed_never: list[str] = []
    republished: list[str] = []
    for event in events:
        ids = stream_ids.get(event.uuid, set())
        label = f"{event.uuid}({event.kind}, entries {sorted(ids)}, calls {event.publish_calls})"
        if event.delayed:
            delayed_ambiguous += event.status == AMBIGUOUS
            if len(ids) > 1:
                delayed_twice.append(label)
            elif event.status == AMBIGUOUS:
                pass
            elif ids:
                delayed_once += 1
            elif event.uuid in trimmed_uuids:
                delayed_never_trimmed += 1
            else:
                delayed_never.append(f"{event.uuid}({event.kind}, {event.schedule_id})")
        elif event.dedup and (
            len(ids) > 1 or (event.entry_id is not None and ids - {event.entry_id}) or not event.dedup_ok
        ):
            republished.append(f"{label}, published as {event.entry_id}, second publish ok {event.dedup_ok}")
        if event.delayed and event.dedup and not event.dedup_ok:
            republished.append(f"{label}: a second publish did not return the first's {event.schedule_id}")

    lost: list[str] = []
    trimmed: list[str] = []
    acked = recovered = unresolved = duplicated = duplicated_events = 0
    kinds: Counter[str] = Counter()
    for event in events:
        seen = per_event.get(event.uuid, [])
        in_dlq = event.uuid in dlq
        if event.status == AMBIGUOUS:
            if seen or in_dlq:
                recovered += 1
            else:
                unresolved += 1
            continue
        kinds[event.kind] += 1
        successes = sum(1 for inv in seen if inv.ok)
        if successes > 1:
            duplicated += successes - 1
            duplicated_events += 1
        entry_id = entry_of(event)
        is_acked = successes > 0 and entry_id not in pending_ids
        acked += is_acked
        if is_acked or in_dlq:
            continue
        label = f"{event.uuid}@{entry_id}({event.kind}{', delayed' if event.delayed else ''})"
        (trimmed if trimmed_on_purpose(event) else lost).append(label)

    # Attempts count the handler failures that were settled (a failure whose worker died before settling
    # it is a lost delivery): attempt numbers never pass max_attempts, and deliveries that never settled
    # have their own budget, so no event gets more than max_attempts + max_deliveries handler calls.
    over_limit = [u for u, seen in per_event.items() if len(seen) > max_attempts + max_deliveries]
    same_attempt = sum(1 for seen in per_event.values() if len({inv.attempt for inv in seen}) < len(seen))
    max_invocations = max((len(seen) for seen in per_event.values()), default=0)
    max_attempt_seen = max((inv.attempt for inv in invocations), default=0)

    # Dead letters: exactly the poison and malformed events, each once, byte for byte.
    expected = {
        e.uuid
        for e in events
        if e.status != AMBIGUOUS
        and (e.kind == POISON or e.kind in MALFORMED_KINDS)
        and not (trimmed_on_purpose(e) and e.uuid not in dlq)
    }
    missing = sorted(expected - set(dlq))
    extra: list[str] = []
    reason_mismatch: list[str] = []
    bystanders: list[str] = []  # dead-lettered although their handler never failed
    for uid, letters in dlq.items():
        event = by_uuid[uid]
        reasons = {letter.reason for letter in letters}
        if event.kind == POISON or event.kind in MALFORMED_KINDS:
            want = "max_attempts" if event.kind == POISON else MALFORMED_REASONS[event.kind]
            if reasons != {want}:
                reason_mismatch.append(f"{uid}({event.kind}: {sorted(reasons)} != {want})")
            continue
        failures = sum(1 for inv in per_event.get(uid, []) if not inv.ok)
        extra.append(f"{uid}({event.kind}: {sorted(reasons)}, {failures} handler failures)")
        if failures == 0:
            bystanders.append(f"{uid}({event.kind}: {sorted(reasons)})")
    dlq_duplicates = sorted(uid for uid, letters in dlq.items() if len(letters) > 1)
    acked_and_dead = sum(1 for uid in dlq if any(inv.ok for inv in per_event.get(uid, [])))

    # Duplicates: bounded by what was in flight whenever a fault could interrupt a batch.
    fault_counts = Counter(f.kind for f in faults)
    bound = sum(
        f.inflight if f.inflight is not None else 2 * batch_size for f in faults if f.kind in DISRUPTIVE
    )
    bound += sum(k.held for k in self_kills)
    pauses = (STOP, SERVER_RESTART, CLIENT_KILL)
    lease_lost_bound = sum(
        f.inflight if f.inflight is not None else 2 * batch_size for f in faults if f.kind in pauses
    )
    reclaimed = final.stats.get("reclaimed", 0)
    lease_lost = final.stats.get("lease_lost", 0)
    deleted_pending = final.stats.get("deleted_pending", 0)
    trimmed_by_retention = final.totals.get("trimmed", 0)
    published_dedup = [e for e in events if e.dedup and e.status != AMBIGUOUS]

    # Worker exits: each must be a failpoint self-kill. Workers ride out server outages, even while starting.
    killed_pids = {k.pid for k in self_kills}
    exits: Counter[str] = Counter()
    unexplained: list[str] = []
    for fault in (f for f in faults if f.kind == WORKER_EXIT):
        pid, code = int(fault.detail["pid"]), int(fault.detail["returncode"])
        if code == -9 and pid in killed_pids:
            exits["failpoint"] += 1
        else:
            exits["unexplained"] += 1
            unexplained.append(f"pid {pid} exit {code}: {fault.detail.get('log_tail', '')[-400:]}")
    bad_stops = {pid: code for pid, code in final.worker_exit_codes.items() if code != 0}
    unexplained += [f"pid {pid} exit {code} after SIGTERM" for pid, code in bad_stops.items()]

    checks = [
        Check("no_loss", not lost, f"lost={len(lost)} (trimmed on purpose: {len(trimmed)})"),
        Check("no_unexpected", not unexpected, f"unexpected={len(unexpected)}"),
        Check(
            "duplicates_within_inflight_bound",
            duplicated <= bound,
            f"duplicated={duplicated} <= in flight at faults={bound}",
        ),
        Check(
            "duplicates_within_streamq_counters",
            duplicated <= reclaimed + lease_lost,
            f"duplicated={duplicated} <= reclaimed={reclaimed} + lease_lost={lease_lost}",
        ),
        Check(
            "attempts_within_limit",
            not over_limit and max_attempt_seen <= max_attempts,
            f"max invocations per event={max_invocations}, max attempt seen={max_attempt_seen},"
            f" max_attempts={max_attempts}, max_deliveries={max_deliveries}",
        ),
        Check(
            "nothing_pending",
            final.drained
            and final.stream_pending == final.retry_pending == 0
            and final.stream_undelivered == final.retry_undelivered == 0
            and final.delayed == 0
            and not final.consumers_holding,
            f"pending={final.stream_pending}+{final.retry_pending} undelivered={final.stream_undelivered}"
            f"+{final.retry_undelivered} delayed={final.delayed} drained={final.drained}",
        ),
        Check(
            "dlq_exact",
            not (missing or extra or dlq_duplicates or bytes_mismatch or reason_mismatch),
            f"expected={len(expected)} entries={len(dead)} missing={len(missing)} extra={len(extra)}"
            f" duplicates={len(dlq_duplicates)} bytes_mismatch={len(bytes_mismatch)}"
            f" reason_mismatch={len(reason_mismatch)}",
        ),
        Check(
            "no_bystander_dead_lettered",
            not bystanders,
            f"dead-lettered without a handler failure={len(bystanders)} {bystanders[:SAMPLE]}",
        ),
        Check("workers_healthy", not unexplained, f"unexplained exits={len(unexplained)}"),
        Check(
            "delayed_entered_once",
            not delayed_twice and not delayed_never,
            f"delayed={sum(e.delayed for e in events if e.status != AMBIGUOUS)} entered once={delayed_once}"
            f" twice or more={len(delayed_twice)} never={len(delayed_never)}"
            f" (trimmed while pending by the nemesis: {delayed_never_trimmed})",
        ),
        Check(
            "no_republished",
            not republished,
            f"dedup-keyed={len(published_dedup)} republished={len(republished)}",
        ),
        Check(
            "scheduled_drained",
            final.scheduled == 0 and final.scheduled_events == 0,
            f"left in the scheduled set={final.scheduled}, payloads left={final.scheduled_events}",
        ),
        Check(
            "retention_ran",
            trimmed_by_retention > 0,
            f"trimmed by retention={trimmed_by_retention}",
        ),
        Check(
            "deleted_pending_explained",
            deleted_pending <= trimmed_by_nemesis,
            f"deleted_pending={deleted_pending}"
            f" <= pending entries trimmed by trim_pending={trimmed_by_nemesis}",
        ),
    ]
    self_kill_counts = Counter(k.failpoint for k in self_kills)
    return CheckReport(
        ok=all(c.ok for c in checks),
        checks=checks,
        published=sum(1 for e in events if e.status != AMBIGUOUS),
        ambiguous=sum(1 for e in events if e.status == AMBIGUOUS),
        recovered=recovered,
        unresolved_ambiguous=unresolved,
        kinds=dict(sorted(kinds.items())),
        invocations=len(invocations),
        acked=acked,
        dead_lettered=len(dead),
        lost=len(lost),
        lost_sample=lost[:SAMPLE],
        trimmed=len(trimmed),
        trimmed_sample=trimmed[:SAMPLE],
        unexpected=len(unexpected),
        unexpected_sample=unexpected[:SAMPLE],
        duplicated=duplicated,
        duplicated_events=duplicated_events,
        duplicate_bound=bound,
        reclaimed=reclaimed,
        lease_lost=lease_lost,
        lease_lost_bound=lease_lost_bound,
        max_invocations=max_invocations,
        max_attempt_seen=max_attempt_seen,
        attempts_over_limit=len(over_limit),
        attempts_over_limit_sample=over_limit[:SAMPLE],
        same_attempt_twice=same_attempt,
        dlq_entries=len(dead),
        dlq_expected=len(expected),
        dlq_missing=missing[:SAMPLE],
        dlq_extra=extra[:SAMPLE],
        dlq_duplicates=dlq_duplicates[:SAMPLE],
        dlq_bytes_mismatch=bytes_mismatch[:SAMPLE],
        dlq_reason_mismatch=reason_mismatch[:SAMPLE],
        bystanders_dead_lettered=len(bystanders),
        acked_and_dead=acked_and_dead,
        delayed=sum(e.delayed for e in events if e.status != AMBIGUOUS),
        delayed_ambiguous=delayed_ambiguous,
        delayed_once=delayed_once,
        delayed_twice=len(delayed_twice),
        delayed_twice_sample=delayed_twice[:SAMPLE],
        delayed_never=len(delayed_never),
        delayed_never_trimmed=delayed_never_trimmed,
        delayed_never_sample=delayed_never[:SAMPLE],
        dedup_events=len(published_dedup),
        republished=len(republished),
        republished_sample=republished[:SAMPLE],
        scheduled_left=final.scheduled,
        trimmed_by_retention=trimmed_by_retention,
        deleted_pending=deleted_pending,
        trimmed_pending_by_nemesis=trimmed_by_nemesis,
        faults=dict(sorted(fault_counts.items())),
        self_kills=dict(sorted(self_kill_counts.items())),
        worker_exits=dict(sorted(exits.items())),
        unexplained_exits=unexplained[:SAMPLE],
        final=final,
        stats=dict(sorted(final.stats.items())),
    )


def to_builtins(report: CheckReport) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(report)
    return data
