"""The cluster chaos run (`python -m chaos --cluster --quick`): a partitioned, ordered stream on a local
Redis Cluster (3 primaries, 1 replica each, cluster-node-timeout 1000 ms) while primaries and workers die.

For 30 s keyed events are published to 6 partitions with `min_replicas=1`, consumed by two workers and a
`--processes 2` pool, while the nemesis kills a worker, the primary serving most partitions (its replica is
promoted, the killed node comes back as a replica), starts a worker, kills a pool child and another
worker. About 40 s per server binary. The checker requires every acknowledged event handled or
dead-lettered, each key's events handled in publish order, duplicates within what the faults put at risk,
nothing pending, and every worker stopping cleanly.

The test also requires each fault's effect, as the harness observed it, so that it fails if no fault was
really injected: a replica promoted in place of the killed primary (and the killed node back as a replica
in sync), every partition a killed worker owned
taken over by another, the joining worker given a share, and at least one kill with entries in flight.
The checker itself is tested on made-up ledgers too: it must see a loss and an out-of-order key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.cluster_check import Fault, FinalState, Line, Planned, check
from streamq.embedded import ServerBinary

RUN_TIMEOUT_S = 150  # the run takes about 40 s here; a hung run must fail, not stall CI
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_a_partitioned_stream_on_a_cluster_keeps_every_promise_through_failovers_and_rebalances(
    server_binary: ServerBinary | None, tmp_path: Path
) -> None:
    """A primary killed with -9 (its replica promoted), workers and a pool child killed with entries in
    flight (their partitions taken over), a worker joining mid-run (given its share): no acknowledged
    event is lost, the poison events alone are dead-lettered, each once, every key's events are handled
    in publish order, duplicates stay within the bound, and nothing is left pending."""
    if server_binary is None or os.environ.get("STREAMQ_TEST_REDIS_URL"):
        pytest.skip("a local cluster is started from a server binary")
    out, run_dir = tmp_path / "report.json", tmp_path / "run"
    args = [
        sys.executable, "-m", "chaos", "--cluster", "--quick", "--seed", "1", "--json", str(out),
        "--workdir", str(run_dir), "--server-binary", server_binary.path,
    ]  # fmt: skip
    done = subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    context = f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert out.exists(), context
    report = json.loads(out.read_text())
    faults = report["faults"]

    # The faults happened, and did what they should.
    primaries = [f for f in faults if f["kind"] == "kill_primary"]
    assert primaries and all(f["done"] and f["partitions"] for f in primaries), context
    assert all("promoted" in f["detail"] and "a replica in sync" in f["detail"] for f in primaries), context
    kills = [f for f in faults if f["kind"] in ("kill_worker", "kill_pool_child")]
    assert {f["kind"] for f in kills} == {"kill_worker", "kill_pool_child"}, context
    assert all(f["done"] and f["partitions"] for f in kills), context  # owned some, all taken over
    assert sum(f["held"] for f in kills) > 0, context  # rebalanced while work was in flight
    (join,) = [f for f in faults if f["kind"] == "join"]
    assert join["done"] and join["partitions"], context

    check_ = report["check"]
    assert check_["published"] > 0 and check_["kinds"]["poison"] > 0, context
    assert check_["lost"] == 0 and check_["unexpected"] == 0, context
    assert check_["out_of_order"] == 0 and check_["keys"] > 1, context
    assert check_["duplicated"] <= check_["duplicate_bound"], context
    assert report["final"]["drained"] and report["final"]["pending"] == 0, context
    assert set(report["final"]["exit_codes"].values()) == {0}, context
    assert all(c["ok"] for c in check_["checks"]), context
    assert report["ok"] and done.returncode == 0, context


def _final() -> FinalState:
    return FinalState(
        drained=True, drain_s=0.0, pending=0, undelivered=0, per_partition={}, exit_codes={},
        unexplained_exits=[],
    )  # fmt: skip


def test_the_cluster_checker_sees_a_loss_and_a_key_handled_out_of_order() -> None:
    """Made-up ledgers: an acknowledged event never handled is lost; a key whose second event succeeded
    before its first is out of order (a later redelivery of the first does not hide it); a fault whose
    effect was never seen fails the run. The same ledger in order, with nothing lost, passes."""
    planned = [Planned("a0", "a", 0, "ok"), Planned("a1", "a", 1, "ok"), Planned("b0", "b", 0, "ok")]
    faults = [
        Fault(kind="kill_primary", target="node:1", at_s=1.0, partitions=[0], done=True),
        Fault(kind="kill_worker", target="w0", at_s=2.0, held=1, partitions=[1], done=True),
    ]
    in_order = [
        Line("a0", "a", 0, 1, 1, True, (10, 0)),
        Line("a1", "a", 1, 1, 1, True, (10, 1)),
        Line("b0", "b", 0, 1, 1, True, (11, 0)),
        Line("a0", "a", 0, 2, 1, True, (20, 0)),  # a redelivery after a kill: a duplicate, not disorder
    ]
    good = check(planned, {"a0", "a1", "b0"}, in_order, [], faults, _final(), batch_size=10)
    assert good.ok and good.duplicated == 1

    swapped = [
        Line("a1", "a", 1, 1, 1, True, (10, 0)),
        Line("a0", "a", 0, 2, 1, True, (12, 0)),
        Line("a0", "a", 0, 1, 1, True, (13, 0)),
    ]
    unseen = [*faults[:1], Fault(kind="join", target="j", at_s=3.0)]  # no worker kill; a join without effect
    bad = check(planned, {"a0", "a1", "b0"}, swapped, [], unseen, _final(), batch_size=10)
    failed = {c.name for c in bad.checks if not c.ok}
    assert failed == {"no_loss", "ordered_per_key", "faults_injected"}
    assert bad.lost == 1 and bad.out_of_order == 1


def test_the_cluster_run_refuses_options_it_would_ignore(capsys: pytest.CaptureFixture[str]) -> None:
    """`--cluster` starts its own cluster and chooses its own faults: a server URL, a sabotage, a kill
    rhythm or fsync would be silently ignored, so they are refused (exit 2) before anything starts."""
    from chaos.__main__ import main

    assert main(["--cluster", "--quick", "--redis-url", "redis://127.0.0.1:1/0", "--fsync"]) == 2
    assert "does not take --redis-url, --fsync" in capsys.readouterr().err
