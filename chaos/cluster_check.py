"""The checker of the cluster chaos run (chaos/cluster.py): every event's fate, per-key order, and faults.

Inputs: what the publisher did with each event (acknowledged: the publish call returned, so the primary
and at least one replica had it, `min_replicas=1`; ambiguous: every call that carried it raised), the
workers' ledger lines (chaos/cluster_app.py), the dead letters of every partition, the state of every
partition after the drain, and what the nemesis did. Classes and checks:

    no_loss          an acknowledged event is handled successfully (ok, flaky) or dead-lettered (poison)
    no_unexpected    nothing is handled or dead-lettered that was never planned
    dlq_exact        the dead letters are exactly the poison events published, each once
    ordered_per_key  for each key, the first successful handling of its events follows publish order: the
                     n-th event of a key is never handled for the first time before the (n-1)-th (a poison
                     event never succeeds and drops out; redeliveries after faults are later successes of
                     the same event, so they do not count)
    duplicates_within_bound
                     successes beyond an event's first <= entries held by the workers killed (counted while
                     frozen) + for each killed primary, two batches per partition it served: Redis replicates
                     XACK asynchronously, so the last acknowledgements of a killed primary may be lost with it
                     and their entries delivered again; an ordered partition has at most one batch in flight
    nothing_pending  after the drain, no partition holds a pending or undelivered entry
    workers_healthy  no worker exited unless killed, every worker and pool exited 0 on SIGTERM
    faults_injected  each planned fault really happened: a primary killed and its replica promoted, every
                     partition a killed worker (or pool child) owned taken over by another worker, a worker
                     started mid-run given partitions; a run without them proves nothing
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass

import msgspec

from .cluster_workload import POISON

SAMPLE = 20


@dataclass(frozen=True, slots=True)
class Line:
    """One ledger line of a worker: an event it looked at and what it made of it."""

    uuid: str
    key: str
    seq: int
    pid: int
    attempt: int
    ok: bool
    order: tuple[int, int]  # (wall clock at the batch's start in ns, place in the batch)

    @classmethod
    def parse(cls, text: str) -> Line:
        uuid, key, seq, pid, attempt, ok, time_ns, index = text.split("\t")
        return cls(uuid, key, int(seq), int(pid), int(attempt), ok == "1", (int(time_ns), int(index)))


@dataclass(frozen=True, slots=True)
class Planned:
    uuid: str
    key: str
    seq: int
    kind: str


class Check(msgspec.Struct):
    name: str
    ok: bool
    detail: str


class Fault(msgspec.Struct, kw_only=True):
    kind: str  # kill_worker | kill_pool_child | kill_primary | join
    target: str
    at_s: float  # since the window started
    held: int = 0  # entries the victim held (frozen), or pending on the killed primary's partitions
    partitions: list[int] = []  # what the victim owned / the killed primary served
    done: bool = False  # the fault's effect was seen: taken over, promoted, partitions given
    detail: str = ""


class FinalState(msgspec.Struct, kw_only=True):
    drained: bool
    drain_s: float
    pending: int  # over every partition
    undelivered: int
    per_partition: dict[str, list[int]]  # partition -> [pending, undelivered, length, dead letters]
    exit_codes: dict[str, int | None]  # worker -> exit code on SIGTERM (None: had to be killed)
    unexplained_exits: list[str]


class CheckReport(msgspec.Struct, kw_only=True):
    ok: bool
    checks: list[Check]
    planned: int
    published: int
    ambiguous: int
    recovered: int  # ambiguous, yet handled or dead-lettered
    kinds: dict[str, int]
    invocations: int
    handled: int  # acknowledged events handled successfully at least once
    dead_lettered: int
    lost: int
    lost_sample: list[str]
    unexpected: int
    unexpected_sample: list[str]
    duplicated: int
    duplicate_bound: int
    out_of_order: int
    out_of_order_sample: list[str]
    keys: int


def check(
    planned: list[Planned],
    acknowledged: set[str],
    lines: list[Line],
    dead_letters: list[str],
    faults: list[Fault],
    final: FinalState,
    *,
    batch_size: int,
) -> CheckReport:
    by_uuid = {p.uuid: p for p in planned}
    per_event: dict[str, list[Line]] = defaultdict(list)
    unexpected: list[str] = []
    for line in lines:
        if line.uuid in by_uuid:
            per_event[line.uuid].append(line)
        else:
            unexpected.append(f"handled:{line.uuid}")
    dead: Counter[str] = Counter()
    for uid in dead_letters:
        if uid in by_uuid:
            dead[uid] += 1
        else:
            unexpected.append(f"dlq:{uid}")

    lost: list[str] = []
    handled = recovered = duplicated = 0
    kinds: Counter[str] = Counter()
    for event in planned:
        seen = per_event.get(event.uuid, [])
        successes = sum(1 for line in seen if line.ok)
        duplicated += max(0, successes - 1)
        if event.uuid not in acknowledged:
            recovered += bool(seen or dead[event.uuid])
            continue
        kinds[event.kind] += 1
        handled += successes > 0
        if not (successes or dead[event.uuid]):
            lost.append(f"{event.uuid}({event.kind}, key {event.key} #{event.seq}, {len(seen)} failures)")

    poison = {p.uuid for p in planned if p.kind == POISON and p.uuid in acknowledged}
    maybe_poison = {p.uuid for p in planned if p.kind == POISON}
    missing = sorted(poison - set(dead))
    extra = sorted(uid for uid in dead if uid not in maybe_poison)
    twice = sorted(uid for uid, count in dead.items() if count > 1)

    # Per key: the first success of each event, in the workers' (one machine's) clock order.
    first: dict[str, tuple[tuple[int, int], int, str]] = {}
    for uid, seen in per_event.items():
        wins = [line for line in seen if line.ok]
        if wins:
            best = min(wins, key=lambda line: line.order)
            first[uid] = (best.order, best.seq, best.key)
    by_key: dict[str, list[tuple[tuple[int, int], int]]] = defaultdict(list)
    for order, seq, key in first.values():
        by_key[key].append((order, seq))
    out_of_order: list[str] = []
    for key, handled_in in by_key.items():
        seqs = [seq for _, seq in sorted(handled_in)]
        for before, after in itertools.pairwise(seqs):
            if after < before:
                out_of_order.append(f"key {key}: #{after} handled first after #{before}")

    held = sum(f.held for f in faults if f.kind in ("kill_worker", "kill_pool_child"))
    acks_at_risk = sum(2 * batch_size * len(f.partitions) for f in faults if f.kind == "kill_primary")
    bound = held + acks_at_risk
    by_kind = Counter(f.kind for f in faults)
    not_done = [f"{f.kind} {f.target}: {f.detail}" for f in faults if not f.done]
    bad_stops = {name: code for name, code in final.exit_codes.items() if code != 0}
    checks = [
        Check("no_loss", not lost, f"lost={len(lost)} of {len(acknowledged)} acknowledged"),
        Check("no_unexpected", not unexpected, f"unexpected={len(unexpected)}"),
        Check(
            "dlq_exact",
            not (missing or extra or twice),
            f"poison published={len(poison)} dead letters={len(dead_letters)} missing={len(missing)}"
            f" not poison={len(extra)} twice={len(twice)}",
        ),
        Check(
            "ordered_per_key",
            not out_of_order,
            f"keys={len(by_key)} out of order={len(out_of_order)} {out_of_order[:SAMPLE]}",
        ),
        Check(
            "duplicates_within_bound",
            duplicated <= bound,
            f"duplicated={duplicated} <= held by killed workers={held} + acks at risk on killed"
            f" primaries={acks_at_risk}",
        ),
        Check(
            "nothing_pending",
            final.drained and final.pending == 0 and final.undelivered == 0,
            f"pending={final.pending} undelivered={final.undelivered} drained={final.drained}",
        ),
        Check(
            "workers_healthy",
            not final.unexplained_exits and not bad_stops,
            f"unexplained exits={final.unexplained_exits[:SAMPLE]} bad SIGTERM exits={bad_stops}",
        ),
        Check(
            "faults_injected",
            not not_done
            and by_kind["kill_primary"] >= 1
            and by_kind["kill_worker"] + by_kind["kill_pool_child"] >= 1,
            f"faults={dict(sorted(by_kind.items()))} without effect={not_done}",
        ),
    ]
    return CheckReport(
        ok=all(c.ok for c in checks),
        checks=checks,
        planned=len(planned),
        published=len(acknowledged),
        ambiguous=len(planned) - len(acknowledged),
        recovered=recovered,
        kinds=dict(sorted(kinds.items())),
        invocations=len(lines),
        handled=handled,
        dead_lettered=len(dead_letters),
        lost=len(lost),
        lost_sample=lost[:SAMPLE],
        unexpected=len(unexpected),
        unexpected_sample=unexpected[:SAMPLE],
        duplicated=duplicated,
        duplicate_bound=bound,
        out_of_order=len(out_of_order),
        out_of_order_sample=out_of_order[:SAMPLE],
        keys=len(by_key),
    )
