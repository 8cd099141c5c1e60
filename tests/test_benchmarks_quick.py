"""The benchmark harness works end to end: ``python -m benchmarks --quick`` measures and reports.

It proves the harness, not the speed: no timing thresholds, only that every figure was produced.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamq.embedded import find_server_binaries

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_RUN_TIMEOUT_S = 100  # the run takes a few seconds; this only stops a hang from eating the suite


@pytest.mark.skipif(not find_server_binaries(), reason="no redis-server or valkey-server to measure against")
def test_quick_run_reports_a_positive_rate_for_every_baseline_case(tmp_path: Path) -> None:
    """--quick on the redis-py baselines exits 0 and writes events/s, CPU and RSS for all 8 cases as JSON."""
    out = tmp_path / "quick.json"
    argv = [
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--scenarios",
        "baseline-publish,baseline-consume",
        "--json",
        str(out),
    ]
    done = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=QUICK_RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads(out.read_text())
    results = report["results"]
    assert sorted(r["name"] for r in results) == sorted(
        [f"baseline-publish[{n}]" for n in (1, 100, 1000)]
        + [f"baseline-consume[{n}]" for n in (1, 10, 100, 500, 1000)]
    )
    for result in results:
        assert result["status"] == "ok", result
        assert result["rate_median"] > 0, result
        assert result["client_cpu_pct"] > 0, result
        assert result["peak_rss_mib"] > 0, result
        (sample,) = result["samples"]
        assert sample["events"] == result["count"] > 0
    assert report["meta"]["server_version"].split()[-1][0].isdigit()
    assert report["meta"]["repeats"] == 1
