"""The benchmark harness works end to end: ``python -m benchmarks --quick`` measures and reports.

It proves the harness, not the speed: no timing thresholds, only that every figure was produced, that the
counts add up, and that the reports (JSON, Markdown, PNG) are written. One run covers the redis-py
baselines, one streamq's publish variants, one the system scenarios (end to end, scaling, recovery, failure
paths, growth), one the process pool, each once in quick mode.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streamq.embedded import find_server_binaries

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_RUN_TIMEOUT_S = 100  # the run takes a few seconds; this only stops a hang from eating the suite
NO_SERVER = "no redis-server or valkey-server to measure against"
E2E_PHASES = ("saturation", "10k/s", "30k/s", "50%-of-max", "90%-of-max", "100%-of-max")
LATENCIES = ("p50_ms", "p95_ms", "p99_ms", "max_ms")


def run_quick(tmp_path: Path, scenarios: str, *outputs: str) -> tuple[dict[str, Any], str]:
    """`python -m benchmarks --quick --scenarios ...`; asserts it exits 0; returns its JSON report and the
    table it printed."""
    out = tmp_path / "quick.json"
    argv = [sys.executable, "-m", "benchmarks", "--quick", "--scenarios", scenarios, "--json", str(out)]
    done = subprocess.run(
        [*argv, *outputs],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=QUICK_RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return report, done.stdout


def assert_measured(result: dict[str, Any]) -> None:
    """Every figure a case reports exists and is positive, and the repeat moved what it was asked to."""
    assert result["status"] == "ok", result
    assert result["rate_median"] > 0, result
    assert result["client_cpu_pct"] > 0, result
    assert result["peak_rss_mib"] > 0, result
    (sample,) = result["samples"]
    assert sample["events"] == result["count"] > 0
    assert sample["extra"] == result["extra"]  # one repeat: the median is the figure itself


@pytest.mark.skipif(not find_server_binaries(), reason=NO_SERVER)
def test_quick_run_reports_a_positive_rate_for_every_baseline_case(tmp_path: Path) -> None:
    """--quick on the redis-py baselines exits 0 and writes events/s, CPU and RSS for all 8 cases as JSON."""
    report, _ = run_quick(tmp_path, "baseline-publish,baseline-consume")
    results = report["results"]
    assert sorted(r["name"] for r in results) == sorted(
        [f"baseline-publish[{n}]" for n in (1, 100, 1000)]
        + [f"baseline-consume[{n}]" for n in (1, 10, 100, 500, 1000)]
    )
    for result in results:
        assert_measured(result)
        assert result["extra"] == {}
    assert report["meta"]["server_version"].split()[-1][0].isdigit()
    assert report["meta"]["repeats"] == 1


@pytest.mark.skipif(not find_server_binaries(), reason=NO_SERVER)
def test_quick_run_measures_publish_many_and_trimmed_publishing(tmp_path: Path) -> None:
    """publish_many of one event and trimmed publishing: measured, trimmed, compared with the untrimmed."""
    report, _ = run_quick(
        tmp_path,
        "streamq-publish,streamq-publish-many,streamq-publish-trim,streamq-publish-many-trim",
    )
    results = {r["name"]: r for r in report["results"]}
    assert sorted(results) == sorted(
        [f"streamq-publish[{n}]" for n in (1, 100, 1000)]
        + [f"streamq-publish-trim[{n}]" for n in (1, 100, 1000)]
        + ["streamq-publish-many[1]", "streamq-publish-many-trim[1]"]
    )
    for result in results.values():
        assert_measured(result)
    for name, result in results.items():
        if "trim" in name:
            # The stream started at the cap: every event published was offset by trimming.
            assert 0 < result["extra"]["stream_length_after"] < 100_000 + result["count"]
            assert result["rate_ratio"] > 0
            assert result["compare_to"] == name.replace("-trim", "")


@pytest.mark.skipif(not find_server_binaries(), reason=NO_SERVER)
def test_quick_run_measures_every_system_scenario(tmp_path: Path) -> None:
    """End to end, scaling, recovery, failure paths and growth run in quick mode: figures and counts add up,
    and the extra figures reach the JSON, the Markdown and the table; the chart is still written."""
    markdown = tmp_path / "quick.md"
    png = tmp_path / "quick.png"
    report, table = run_quick(
        tmp_path,
        "streamq-e2e,streamq-scaling,streamq-recovery,streamq-failures,streamq-growth",
        "--markdown",
        str(markdown),
        "--png",
        str(png),
    )
    results = {r["name"]: r for r in report["results"]}
    assert sorted(results) == sorted(
        [
            "streamq-e2e[500]",
            "streamq-scaling[1-worker]",
            "streamq-scaling[2-workers]",
            "streamq-scaling[4-workers]",
            "streamq-recovery[500]",
            "streamq-failures[none]",
            "streamq-failures[retry1%-dead0.1%]",
            "streamq-growth[empty]",
            "streamq-growth[backlog-1M]",
            "streamq-growth[pending-100k]",
        ]
    )
    for result in results.values():
        assert_measured(result)

    e2e = results["streamq-e2e[500]"]["extra"]
    for phase in E2E_PHASES:
        latencies = [e2e[f"{phase}.{figure}"] for figure in LATENCIES]
        assert 0 < latencies[0] <= latencies[1] <= latencies[2] <= latencies[3], (phase, latencies)
        assert e2e[f"{phase}.done_events_s"] > 0
        assert e2e[f"{phase}.sent_events_s"] > 0
        assert e2e[f"{phase}.worker_cpu_pct"] > 0
        assert e2e[f"{phase}.producer_cpu_pct"] > 0
    assert e2e["10k/s.offered_events_s"] == 10_000
    assert e2e["30k/s.offered_events_s"] == 30_000
    maximum = e2e["saturation.done_events_s"]
    assert e2e["50%-of-max.offered_events_s"] == pytest.approx(0.5 * maximum)
    assert e2e["90%-of-max.offered_events_s"] == pytest.approx(0.9 * maximum)

    for workers, name in ((1, "1-worker"), (2, "2-workers"), (4, "4-workers")):
        scaling = results[f"streamq-scaling[{name}]"]
        assert scaling["extra"]["workers"] == workers
        assert scaling["extra"]["per_process_events_s"] == pytest.approx(scaling["rate_median"] / workers)
        assert scaling["extra"]["worker_cpu_pct"] > 0
        if workers > 1:
            assert scaling["rate_ratio"] > 0

    recovery = results["streamq-recovery[500]"]
    assert recovery["extra"]["pending_before"] == recovery["extra"]["reclaimed"] == recovery["count"]

    clean = results["streamq-failures[none]"]
    failing = results["streamq-failures[retry1%-dead0.1%]"]
    n = failing["count"]
    assert (clean["extra"]["retried"], clean["extra"]["dead_lettered"]) == (0, 0)
    assert clean["extra"]["handler_deliveries"] == clean["count"]
    assert failing["extra"]["retried"] == len(range(1, n, 100)) > 0
    assert failing["extra"]["dead_lettered"] == len(range(0, n, 1000)) > 0
    assert failing["extra"]["handler_deliveries"] == n + failing["extra"]["retried"]
    assert failing["rate_ratio"] > 0

    empty = results["streamq-growth[empty]"]
    backlog = results["streamq-growth[backlog-1M]"]
    pending = results["streamq-growth[pending-100k]"]
    assert empty["extra"] == {"stream_entries": empty["count"], "pending_elsewhere": 0}
    assert backlog["extra"]["stream_entries"] > backlog["count"]
    assert backlog["extra"]["pending_elsewhere"] == 0
    assert pending["extra"]["pending_elsewhere"] > 0
    assert pending["extra"]["stream_entries"] == pending["count"] + pending["extra"]["pending_elsewhere"]
    assert backlog["rate_ratio"] > 0 and pending["rate_ratio"] > 0

    assert "extra figures" in table and "100%-of-max" in table
    text = markdown.read_text()
    assert "| 30k/s |" in text and "`streamq-recovery[500]`" in text and "x streamq-growth[empty]" in text
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.stat().st_size > 0


@pytest.mark.skipif(not find_server_binaries(), reason=NO_SERVER)
def test_quick_run_measures_the_process_pool(tmp_path: Path) -> None:
    """`streamq worker --processes N` at N = 1, 2 and auto, with a no-op and a CPU-bound handler: every case
    moves its events through real pools, counts the workers' CPU, and compares N > 1 with N = 1."""
    report, _ = run_quick(tmp_path, "streamq-pool")
    results = {r["name"]: r for r in report["results"]}
    labels = ("1p", "2p", "auto")
    assert sorted(results) == sorted(f"streamq-pool[{h}-{n}]" for h in ("light", "cpu") for n in labels)
    cores = os.cpu_count() or 1
    for name, result in results.items():
        assert_measured(result)
        extra = result["extra"]
        workers = 1 if name.endswith("-1p]") else 2 if name.endswith("-2p]") else cores
        assert extra["processes"] == workers
        assert extra["per_process_events_s"] == pytest.approx(result["rate_median"] / workers)
        assert (extra["work_us_per_event"] > 0) == name.startswith("streamq-pool[cpu")
        if workers > 1 or name.endswith("-auto]"):
            assert result["compare_to"] == name.replace("-2p]", "-1p]").replace("-auto]", "-1p]")
            assert result["rate_ratio"] > 0


@pytest.mark.skipif(not find_server_binaries(), reason=NO_SERVER)
def test_quick_run_measures_partitions_on_a_local_cluster(tmp_path: Path) -> None:
    """streamq-cluster: a plain stream and 6 partitions on the standalone server, 1, 3 and 6 partitions on a
    local 3-primary cluster, and keyed publishing to the cluster: every case moves its events, the cluster
    cases report the primaries' CPU and how many nodes their partitions live on, and each is compared with
    the standalone plain stream."""
    report, _ = run_quick(tmp_path, "streamq-cluster")
    results = {r["name"]: r for r in report["results"]}
    consume = ("plain-standalone", "6p-standalone", "1p-cluster", "3p-cluster", "6p-cluster")
    publish = ("plain-standalone", "keyed-6p-cluster")
    assert sorted(results) == sorted(
        [f"streamq-cluster[consume-{v}]" for v in consume]
        + [f"streamq-cluster[publish-{v}]" for v in publish]
    )
    for name, result in results.items():
        assert_measured(result)
        extra = result["extra"]
        assert extra["client_us_per_event"] > 0 and extra["server_us_per_event"] > 0
        if "-cluster]" in name:
            assert extra["nodes_cpu_pct"] > 0
        if name.startswith("streamq-cluster[consume"):
            assert extra["start_ms"] > 0
        if "plain-standalone" not in name:
            assert result["compare_to"].endswith("plain-standalone]") and result["rate_ratio"] > 0
    assert results["streamq-cluster[consume-1p-cluster]"]["extra"]["nodes_used"] == 1
    assert results["streamq-cluster[consume-6p-cluster]"]["extra"]["nodes_used"] > 1
