"""The pool chaos run (`python -m chaos --quick --pool 3`): a process pool that loses children under load.

The workers are one `streamq worker chaos.pool_app:app --processes 3` command. For 30 s events are
published while the nemesis SIGKILLs a random healthy child every 2-4 s (never the supervisor); then the
supervisor gets SIGTERM with events still in flight, and a second pool drains what is left. The usual
checker then requires every published event acknowledged after a success or dead-lettered, nothing lost,
duplicates within what the killed children held, and every exit explained. About 45 s per server.

The test also reads the supervisor's own log, so that it fails if no child was really killed and
restarted: every pid the nemesis killed must appear in a `worker process died` line as killed by SIGKILL,
and the supervisor must have started replacements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chaos.faults import KILL
from chaos.ledger import Ledger
from chaos.pool import POOL_SIGTERM
from streamq.embedded import ServerBinary

POOL_RUN_TIMEOUT_S = 150  # the run takes about 45 s here; a hung run must fail, not stall CI
REPO_ROOT = Path(__file__).resolve().parents[2]
MIN_KILLS = 3  # a 30 s window allows ~5: the first child turns healthy 10 s in


def pool_log(run_dir: Path, generation: int) -> list[dict[str, Any]]:
    """The JSON lines of one pool's log (its supervisor's and its children's)."""
    records = []
    for line in (run_dir / "logs" / f"pool-gen{generation}.log").read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def events(records: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [r for r in records if str(r.get("event", "")).startswith(event)]


@pytest.mark.slow
@pytest.mark.timeout(POOL_RUN_TIMEOUT_S + 30)
def test_a_pool_losing_children_keeps_every_promise(
    server_binary: ServerBinary | None, tmp_path: Path
) -> None:
    """Children of a pool killed with SIGKILL while events flow are restarted by the supervisor, a SIGTERM
    to the supervisor with events in flight stops every child cleanly, and no event is lost: each published
    event is acknowledged after a success or dead-lettered, duplicates stay within what the killed children
    held, nothing is left pending, and every child's death is one the nemesis caused."""
    out, run_dir = tmp_path / "report.json", tmp_path / "run"
    args = [
        sys.executable, "-m", "chaos", "--quick", "--pool", "3", "--seed", "1",
        "--json", str(out), "--workdir", str(run_dir),
    ]  # fmt: skip
    if server_binary is None:
        args += ["--redis-url", os.environ["STREAMQ_TEST_REDIS_URL"]]
    else:
        args += ["--server-binary", server_binary.path]
    done = subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=POOL_RUN_TIMEOUT_S, check=False
    )
    context = f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert out.exists(), context
    report = json.loads(out.read_text())
    check_ = report["check"]

    # Children were really killed, and the supervisor saw each death and started a replacement.
    ledger = Ledger(run_dir / "ledger.sqlite")
    try:
        faults = ledger.faults()
    finally:
        ledger.close()
    kills = [int(f.detail["pid"]) for f in faults if f.kind == KILL]
    killed = set(kills)
    assert len(kills) == len(killed) == report["faults_done"]["kill"] >= MIN_KILLS, context  # each once
    (sigterm,) = [f for f in faults if f.kind == POOL_SIGTERM]
    first = pool_log(run_dir, 1)
    died = events(first, "worker process died")
    assert {r["pid"] for r in died} == killed, context  # each kill, and only the kills
    assert {r["exit"] for r in died} == {"killed by SIGKILL"}, context
    assert sigterm.detail["pid"] not in killed, context  # children, never the supervisor
    # Each victim had run healthily: its death starts no crash loop, and the pool never gave up.
    assert {r["deaths_in_a_row"] for r in died} == {0}, context
    assert not events(first, "crash loop") and not events(first, "worker process failed"), context
    # One replacement per death, in the dead child's slot (the harness waits for the pool to be back to
    # strength before its SIGTERM).
    restarted = [r for r in events(first, "worker process started") if r["restarts"] > 0]
    assert sorted(r["slot"] for r in restarted) == sorted(r["slot"] for r in died), context
    figures = report["pool"]
    assert figures["children_killed"] == figures["kills_logged_as_deaths"] == len(killed), context

    # The SIGTERM with events in flight: every child of the first pool exited 0, and so did its supervisor.
    assert sigterm.detail["exit_codes"] and set(sigterm.detail["exit_codes"].values()) == {0}, context
    assert len(events(first, "worker process exited")) == 3, context

    # Jepsen's classes and streamq's promises, as in the fleet run.
    assert check_["lost"] == 0 and check_["unexpected"] == 0, context
    assert check_["duplicated"] <= check_["duplicate_bound"], context
    assert check_["duplicated"] <= check_["reclaimed"] + check_["lease_lost"], context
    assert check_["attempts_over_limit"] == 0, context
    assert check_["dlq_expected"] > 0 and check_["dlq_missing"] == check_["dlq_extra"] == [], context
    assert check_["bystanders_dead_lettered"] == 0 and check_["unexplained_exits"] == [], context
    assert check_["final"]["drained"] and check_["final"]["consumers_holding"] == {}, context
    assert all(c["ok"] for c in check_["checks"]), context
    assert report["ok"] and done.returncode == 0, context
