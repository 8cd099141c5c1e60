"""The chaos harness: its checker on hand-made ledgers, and the quick run against every server binary.

The quick run (`python -m chaos --quick --seed 1`) is slow (about a minute per server) but runs in
CI: it is the only test that kills workers at every failpoint, freezes one past its lease, kills -9 the
server and trims pending entries, all while events flow (delayed and dedup-keyed ones among them, with
retention on), and then checks every event's fate. Tiny sabotaged runs (3000 events, a 10 s window, about
15 s each) prove that the checks can fail: each breaks streamq, or the publisher, on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.checker import CheckReport, FinalState, check
from chaos.faults import _freeze
from chaos.fleet import Worker
from chaos.ledger import AMBIGUOUS, PUBLISHED, DeadLetterRow, Ledger, WorkerLog
from chaos.workload import FLAKY, GARBAGE, OK, POISON
from streamq.embedded import ServerBinary

QUICK_TIMEOUT_S = 200  # the quick run takes about 50 s here; a hung run must fail, not stall CI
REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_ATTEMPTS = 5


# --------------------------------------------------------------------------------------------- the checker


def _final(**changes: Any) -> FinalState:
    values: dict[str, Any] = {
        "drained": True, "drain_s": 1.0, "stream_pending": 0, "retry_pending": 0, "stream_undelivered": 0,
        "retry_undelivered": 0, "stream_lag": 0, "retry_lag": 0, "delayed": 0, "stream_length": 0,
        "retry_length": 0, "dlq_length": 0, "stats": {"reclaimed": 0, "lease_lost": 0},
        "totals": {"trimmed": 1}, "consumers": 0, "consumers_holding": {}, "pending_ids": [],
        "worker_exit_codes": {},
    }  # fmt: skip
    values.update(changes)
    return FinalState(**values)


class Scenario:
    """A hand-made ledger: events, the worker lines about them, dead letters, faults."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.ledger = Ledger(tmp_path / "ledger.sqlite")
        self.log = WorkerLog(tmp_path / "worker-1.tsv")
        self.dead: list[DeadLetterRow] = []

    def publish(
        self,
        uid: str,
        kind: str = OK,
        entry_id: str = "1-0",
        status: str = PUBLISHED,
        *,
        delayed: bool = False,
        dedup: bool = False,
        dedup_ok: bool = True,
    ) -> None:
        """A delayed publish returns a schedule id: `entry_id` is then ignored."""
        ids = [f"sched-{uid}" if delayed else entry_id] if status == PUBLISHED else None
        self.ledger.add_events(
            [(uid, 0, kind, 1 if kind == FLAKY else 0, uid.encode())], status, ids, delayed=delayed,
            dedup=dedup, dedup_ok=[dedup_ok],
        )  # fmt: skip

    def handled(self, uid: str, *, ok: bool = True, attempt: int = 1, entry_id: str = "1-0") -> None:
        self.log.invocations([(uid, 0, "c1", attempt, "stream", entry_id, entry_id, ok)])

    def dead_letter(
        self, uid: str, reason: str, attempts: int = MAX_ATTEMPTS, payload: bytes | None = None
    ) -> None:
        signature = uid.encode() if payload is None else payload
        self.dead.append(DeadLetterRow(f"9-{len(self.dead)}", "1-0", reason, attempts, "", signature, True))

    def check(self, final: FinalState | None = None) -> CheckReport:
        self.log.close()
        self.ledger.merge_worker_logs(self.dir)
        self.ledger.set_dead_letters(self.dead)
        try:
            return check(self.ledger, final or _final(), max_attempts=MAX_ATTEMPTS, batch_size=50)
        finally:
            self.ledger.close()


def _failed(report: CheckReport) -> set[str]:
    return {c.name for c in report.checks if not c.ok}


def test_clean_history_passes(tmp_path: Path) -> None:
    """Acked, flaky-then-acked, poison in the DLQ and an unseen ambiguous event: every check passes."""
    s = Scenario(tmp_path)
    s.publish("a")
    s.handled("a")
    s.publish("f", FLAKY, "2-0")
    s.handled("f", ok=False, entry_id="2-0")
    s.handled("f", attempt=2, entry_id="2-0")
    s.publish("p", POISON, "3-0")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        s.handled("p", ok=False, attempt=attempt, entry_id="3-0")
    s.dead_letter("p", "max_attempts")
    s.publish("x", status=AMBIGUOUS)
    report = s.check()
    assert report.ok, report.checks
    assert (report.acked, report.dead_lettered, report.unresolved_ambiguous) == (2, 1, 1)


def test_an_event_never_handled_is_lost(tmp_path: Path) -> None:
    """Published, no successful invocation, not dead-lettered: lost."""
    s = Scenario(tmp_path)
    s.publish("a")
    s.handled("a", ok=False)
    report = s.check()
    assert report.lost == 1
    assert "no_loss" in _failed(report)


def test_a_success_still_pending_is_not_acked(tmp_path: Path) -> None:
    """A successful invocation whose entry is still pending at the end was never acknowledged."""
    s = Scenario(tmp_path)
    s.publish("a", entry_id="5-0")
    s.handled("a", entry_id="5-0")
    report = s.check(_final(stream_pending=1, pending_ids=["5-0"]))
    assert report.lost == 1
    assert {"no_loss", "nothing_pending"} <= _failed(report)


def test_unpublished_events_are_unexpected(tmp_path: Path) -> None:
    """A handler invocation or a dead letter for an event nobody published."""
    s = Scenario(tmp_path)
    s.handled("ghost")
    s.dead_letter("phantom", "undecodable")
    report = s.check()
    assert report.unexpected == 2
    assert "no_unexpected" in _failed(report)


def test_duplicates_beyond_what_was_in_flight_fail(tmp_path: Path) -> None:
    """Two successes of one event with no fault to explain them break both duplicate bounds."""
    s = Scenario(tmp_path)
    s.publish("a")
    s.handled("a")
    s.handled("a", attempt=2)
    report = s.check()
    assert report.duplicated == 1
    assert report.duplicate_bound == 0
    assert {"duplicates_within_inflight_bound", "duplicates_within_streamq_counters"} <= _failed(report)


def test_duplicates_explained_by_a_kill_pass(tmp_path: Path) -> None:
    """A kill with entries in flight and streamq's reclaimed counter account for one duplicate."""
    s = Scenario(tmp_path)
    s.publish("a")
    s.handled("a")
    s.handled("a", attempt=2)
    s.ledger.add_fault("kill", "slot0/pid1", 3)
    report = s.check(_final(stats={"reclaimed": 3, "lease_lost": 0}))
    assert report.ok, report.checks


def test_too_many_invocations_fail(tmp_path: Path) -> None:
    """An attempt number past max_attempts means failed attempts were not counted."""
    s = Scenario(tmp_path)
    s.publish("p", POISON)
    for attempt in range(1, MAX_ATTEMPTS + 2):
        s.handled("p", ok=False, attempt=attempt)
    s.dead_letter("p", "max_attempts", attempts=MAX_ATTEMPTS + 1)
    report = s.check()
    assert "attempts_within_limit" in _failed(report)


def test_dead_letters_must_match_exactly(tmp_path: Path) -> None:
    """A missing poison event, an ok event dead-lettered by its own failures, and changed bytes."""
    s = Scenario(tmp_path)
    s.publish("p", POISON, "1-0")
    s.publish("f", FLAKY, "2-0")
    s.handled("f", ok=False, entry_id="2-0")
    s.dead_letter("f", "rejected", attempts=1)
    s.publish("g", GARBAGE, "3-0")
    s.dead_letter("g", "undecodable", payload=b"\x81\xa4uuid\xa1g")  # {"uuid": "g"}: not the bytes written
    report = s.check()
    assert report.dlq_missing == ["p"]
    assert len(report.dlq_extra) == 1
    assert report.dlq_bytes_mismatch == ["g"]
    assert "dlq_exact" in _failed(report)


def test_bystanders_of_crashes_must_not_be_dead_lettered(tmp_path: Path) -> None:
    """An ok event whose handler never failed must never reach the dead-letter stream, however many
    crashes it was in flight for (streamq counts those against max_deliveries, and isolates repeat
    suspects so that they settle)."""
    s = Scenario(tmp_path)
    s.publish("a", entry_id="1-0")
    s.handled("a", entry_id="1-0")  # succeeded, then its worker died before settling, every time
    s.dead_letter("a", "max_deliveries", attempts=1)
    report = s.check()
    assert report.bystanders_dead_lettered == 1
    assert "no_bystander_dead_lettered" in _failed(report)


def test_trimmed_events_are_excused(tmp_path: Path) -> None:
    """A pending entry trimmed on purpose is `trimmed`, not lost, and a poison event trimmed that way need
    not reach the dead-letter stream."""
    s = Scenario(tmp_path)
    s.publish("t", entry_id="2-0")
    s.publish("p", POISON, entry_id="3-0")
    s.ledger.add_fault("trim_pending", "stream", 2, minid="3-1", trimmed=2, pending_ids=["2-0", "3-0"])
    report = s.check()
    assert report.ok, report.checks
    assert (report.trimmed, report.lost) == (2, 0)


def test_unexplained_worker_exits_fail(tmp_path: Path) -> None:
    """A worker that died without a failpoint kill, or exited badly after SIGTERM."""
    s = Scenario(tmp_path)
    s.ledger.add_fault("worker_exit", "slot0/pid7", None, pid=7, returncode=1, failpoints="", log_tail="boom")
    report = s.check(_final(worker_exit_codes={"8": 1}))
    assert len(report.unexplained_exits) == 2
    assert "workers_healthy" in _failed(report)


def test_a_delayed_event_handled_once_passes(tmp_path: Path) -> None:
    """A delayed event is known by its schedule id until a handler sees its stream entry: one entry, acked."""
    s = Scenario(tmp_path)
    s.publish("d", delayed=True)
    s.handled("d", entry_id="7-0")
    s.handled("d", entry_id="7-0", attempt=2)  # a duplicate delivery of the same entry is not a second entry
    s.ledger.add_fault("kill", "slot0/pid1", 1)
    report = s.check(_final(stats={"reclaimed": 1, "lease_lost": 0}))
    assert report.ok, report.checks
    assert (report.delayed, report.delayed_once, report.acked) == (1, 1, 1)


def test_a_delayed_event_that_entered_the_stream_twice_fails(tmp_path: Path) -> None:
    """Two stream entry ids for one delayed event: the mover appended it twice."""
    s = Scenario(tmp_path)
    s.publish("d", delayed=True)
    s.handled("d", entry_id="7-0")
    s.handled("d", entry_id="8-0")
    report = s.check()
    assert report.delayed_twice == 1
    assert "delayed_entered_once" in _failed(report)


def test_a_delayed_event_never_seen_fails_unless_trimmed_on_purpose(tmp_path: Path) -> None:
    """A delayed event no handler and no dead letter ever saw is lost and never entered the stream, unless
    trim_pending removed it while pending (named by its uuid: its entry id was never logged)."""
    s = Scenario(tmp_path)
    s.publish("never", delayed=True)
    s.publish("cut", delayed=True)
    s.ledger.add_fault("trim_pending", "stream", 1, minid="5-1", trimmed=1, pending_ids=["5-0"],
                       pending_uuids=["cut"])  # fmt: skip
    report = s.check(_final(stats={"deleted_pending": 1}))
    assert (report.delayed_never, report.delayed_never_trimmed, report.lost, report.trimmed) == (1, 1, 1, 1)
    assert _failed(report) == {"delayed_entered_once", "no_loss"}


def test_a_dedup_keyed_event_with_a_second_entry_is_republished(tmp_path: Path) -> None:
    """A dedup-keyed event seen under an entry other than the one its publish returned, and one whose
    deliberate second publish did not come back as a duplicate: both republished."""
    s = Scenario(tmp_path)
    s.publish("a", entry_id="1-0", dedup=True)
    s.handled("a", entry_id="1-0")
    s.handled("a", entry_id="2-0")
    s.publish("b", entry_id="3-0", dedup=True, dedup_ok=False)
    s.handled("b", entry_id="3-0")
    s.publish("c", entry_id="4-0", dedup=True)
    s.handled("c", entry_id="4-0")
    report = s.check()
    assert report.republished == 2
    assert "no_republished" in _failed(report)


def test_scheduled_leftovers_fail(tmp_path: Path) -> None:
    """Anything left in the stream's scheduled set at the end (its events never entered the stream)."""
    s = Scenario(tmp_path)
    report = s.check(_final(scheduled=1, scheduled_events=1))
    assert _failed(report) == {"scheduled_drained"}


def test_retention_must_have_run(tmp_path: Path) -> None:
    """The stream's `trimmed` total: 0 means no worker's trimmer removed anything."""
    s = Scenario(tmp_path)
    report = s.check(_final(totals={}))
    assert _failed(report) == {"retention_ran"}


def test_deleted_pending_must_be_the_nemesis_alone(tmp_path: Path) -> None:
    """streamq's deleted_pending counter may not exceed the pending entries trim_pending removed: retention
    never trims an entry some group has pending."""
    s = Scenario(tmp_path)
    s.publish("t", entry_id="2-0")
    s.ledger.add_fault("trim_pending", "stream", 1, minid="2-1", trimmed=1, pending_ids=["2-0"])
    report = s.check(_final(stats={"deleted_pending": 2}))
    assert _failed(report) == {"deleted_pending_explained"}
    assert (report.deleted_pending, report.trimmed_pending_by_nemesis) == (2, 1)


# --------------------------------------------------------------------------------------------- the nemesis


def _worker(process: subprocess.Popen[bytes]) -> Worker:
    return Worker(slot=0, generation=1, process=process, failpoints="", started=time.monotonic(), log_path="")


def test_a_victim_that_died_after_it_was_picked_is_skipped_not_fatal() -> None:
    """A failpoint can kill the victim, and the supervisor reap it, between the pick and the SIGSTOP: the
    fault is then skipped instead of aborting the run with ProcessLookupError."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert _freeze(_worker(dead)) is False
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _freeze(_worker(alive)) is True
        os.kill(alive.pid, signal.SIGCONT)
    finally:
        alive.kill()
        alive.wait()


# --------------------------------------------------------------------------------------------- quick run


@pytest.mark.slow
@pytest.mark.timeout(QUICK_TIMEOUT_S + 30)
def test_quick_chaos_run_keeps_every_invariant(server_binary: ServerBinary | None, tmp_path: Path) -> None:
    """Under kills at every failpoint, a pause past the lease, a server kill -9, a CLIENT KILL and trims,
    no acknowledged event is lost, none appears from nowhere, duplicates stay within what was in flight,
    no event fails more than max_attempts times, nothing is left pending, the dead-letter stream holds
    exactly the poison and malformed events, byte for byte, and no bystander of a crash is dead-lettered."""
    out = tmp_path / "report.json"
    args = [
        sys.executable, "-m", "chaos", "--quick", "--seed", "1",
        "--json", str(out), "--workdir", str(tmp_path / "run"),
    ]  # fmt: skip
    if server_binary is None:
        args += ["--redis-url", os.environ["STREAMQ_TEST_REDIS_URL"]]
    else:
        args += ["--server-binary", server_binary.path]
    done = subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S, check=False
    )
    context = f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert out.exists(), context
    report = json.loads(out.read_text())
    check_ = report["check"]
    final = check_["final"]

    # The faults really happened.
    done_faults = report["faults_done"]
    assert done_faults.get("kill", 0) >= 10, context
    assert done_faults.get("stop") == 1, context
    assert done_faults.get("client_kill") == 1, context
    assert done_faults.get("trim_safe") == 1 and done_faults.get("trim_pending") == 1, context
    if server_binary is not None:
        assert done_faults.get("server_restart") == 1, context
    assert sum(check_["self_kills"].values()) >= 1, context

    # Jepsen's classes.
    assert check_["lost"] == 0, context
    assert check_["unexpected"] == 0, context
    assert check_["duplicated"] <= check_["duplicate_bound"], context
    assert check_["duplicated"] <= check_["reclaimed"] + check_["lease_lost"], context
    # Attempts: no attempt number past max_attempts; crashed deliveries have a budget of their own.
    assert check_["attempts_over_limit"] == 0, context
    assert check_["max_attempt_seen"] <= report["config"]["max_attempts"], context
    # Nothing stuck.
    assert final["drained"], context
    assert final["stream_pending"] == final["retry_pending"] == 0, context
    assert final["stream_undelivered"] == final["retry_undelivered"] == 0, context
    assert final["delayed"] == 0, context
    assert final["consumers_holding"] == {}, context
    # The dead-letter stream holds exactly the poison and malformed events, byte for byte, once each.
    assert check_["dlq_expected"] > 0, context
    for field in ("dlq_missing", "dlq_extra", "dlq_duplicates", "dlq_bytes_mismatch", "dlq_reason_mismatch"):
        assert check_[field] == [], f"{field}: {context}"
    # Crash-loop protection: workers were killed every few seconds, and no event whose handler never failed
    # ended in the dead-letter stream.
    assert check_["bystanders_dead_lettered"] == 0, context
    assert check_["unexplained_exits"] == [], context
    # Scheduling, dedup keys and retention: every delayed event entered the stream once, no dedup-keyed
    # event twice, the scheduled set drained, retention trimmed, and only the nemesis removed pending entries.
    assert check_["delayed"] > 0, context
    assert check_["delayed_once"] + check_["delayed_never_trimmed"] == check_["delayed"], context
    assert check_["delayed_twice"] == check_["delayed_never"] == 0, context
    assert check_["dedup_events"] > 0 and check_["republished"] == 0, context
    assert report["publishing"]["republish_duplicates"] > 0, context
    assert check_["scheduled_left"] == 0 and final["scheduled_events"] == 0, context
    assert check_["trimmed_by_retention"] > 0, context
    assert check_["deleted_pending"] <= check_["trimmed_pending_by_nemesis"], context
    assert all(c["ok"] for c in check_["checks"]), context
    assert report["ok"] and done.returncode == 0, context


@pytest.mark.slow
@pytest.mark.timeout(QUICK_TIMEOUT_S + 30)
def test_the_harness_catches_a_consumer_that_drops_retries(tmp_path: Path) -> None:
    """Self-test: workers that acknowledge failed events instead of retrying them (--sabotage) must make the
    run fail with lost flaky events and poison events missing from the dead-letter stream."""
    out = tmp_path / "report.json"
    args = [
        sys.executable, "-m", "chaos", "--quick", "--seed", "2",
        "--events", "3000", "--window-s", "10", "--sabotage", "drop_retries",
        "--json", str(out), "--workdir", str(tmp_path / "run"),
    ]  # fmt: skip
    if url := os.environ.get("STREAMQ_TEST_REDIS_URL"):
        args += ["--redis-url", url]
    done = subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S, check=False
    )
    context = f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    report = json.loads(out.read_text())
    failed = {c["name"] for c in report["check"]["checks"] if not c["ok"]}
    assert done.returncode == 1 and not report["ok"], context
    assert {"no_loss", "dlq_exact"} <= failed, context
    assert report["check"]["lost"] > 0 and report["check"]["dlq_missing"], context


def _sabotaged_run(tmp_path: Path, sabotage: str) -> tuple[dict[str, Any], set[str], str]:
    """A tiny run (3000 events, a 10 s window) with `sabotage`; returns (report, failed checks, context)."""
    out = tmp_path / "report.json"
    args = [
        sys.executable, "-m", "chaos", "--quick", "--seed", "2",
        "--events", "3000", "--window-s", "10", "--sabotage", sabotage,
        "--json", str(out), "--workdir", str(tmp_path / "run"),
    ]  # fmt: skip
    if url := os.environ.get("STREAMQ_TEST_REDIS_URL"):
        args += ["--redis-url", url]
    done = subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S, check=False
    )
    context = f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert out.exists(), context
    report = json.loads(out.read_text())
    assert done.returncode == 1 and not report["ok"], context
    return report, {c["name"] for c in report["check"]["checks"] if not c["ok"]}, context


@pytest.mark.slow
@pytest.mark.timeout(QUICK_TIMEOUT_S + 30)
def test_the_harness_catches_double_moves_republishes_and_leftover_schedules(tmp_path: Path) -> None:
    """Self-test of the scheduling and dedup checks, three sabotages in one run (each breaks one thing):
    double_move (workers append each due delayed event twice), republish_without_dedup (the publisher's
    second publish of a dedup-keyed chunk goes out without its keys) and late_delay (one chunk is delayed
    past the end of the run)."""
    report, failed, context = _sabotaged_run(tmp_path, "double_move,republish_without_dedup,late_delay")
    check_ = report["check"]
    assert {"delayed_entered_once", "no_republished", "scheduled_drained"} <= failed, context
    assert check_["delayed_twice"] > 0, context  # double_move
    assert check_["republished"] > 0, context  # republish_without_dedup
    assert check_["scheduled_left"] > 0 and check_["delayed_never"] > 0, context  # late_delay


@pytest.mark.slow
@pytest.mark.timeout(QUICK_TIMEOUT_S + 30)
def test_the_harness_catches_a_trimmer_that_trims_pending_entries(tmp_path: Path) -> None:
    """Self-test of the retention checks: greedy_trim replaces the workers' trimmer with one that trims
    everything delivered, pending or not, and counts nothing. Pending entries vanish with no nemesis fault
    to explain them, and the stream's `trimmed` total stays 0."""
    report, failed, context = _sabotaged_run(tmp_path, "greedy_trim")
    check_ = report["check"]
    assert "retention_ran" in failed and check_["trimmed_by_retention"] == 0, context
    # What the greedy trims cost depends on timing: pending entries vanish unexplained (counted by the
    # workers as deleted_pending), or entries not yet delivered are gone before any worker read them (lost).
    assert {"deleted_pending_explained", "no_loss"} & failed, context
