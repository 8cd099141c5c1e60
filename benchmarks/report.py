"""Presenting benchmark results: the terminal table, the JSON file with every figure, the PNG chart.

Measures nothing. Also records what the figures depend on (machine, server version, library versions),
because a throughput number without its machine is not a result.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec
import redis

from benchmarks.harness import REPO_ROOT, CaseResult

# Distributions whose versions shape the figures; absent ones are left out of the record.
RECORDED_DISTRIBUTIONS = (
    "redis",
    "hiredis",
    "msgspec",
    "uvloop",
    "taskiq",
    "taskiq-redis",
    "faststream",
    "matplotlib",
    "streamq",
)

CONTENDER_COLOURS = {
    "redis-py": "tab:blue",
    "streamq": "tab:red",
    "taskiq": "tab:green",
    "faststream": "tab:orange",
}
TABLE_HEADER = (
    "case", "contender", "op", "batch", "events/s", "spread", "client CPU", "server CPU", "other CPU",
    "peak RSS", "note",
)  # fmt: skip
RIGHT_ALIGNED = {3, 4, 5, 6, 7, 8, 9}
LINE_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))  # (line style, marker) per scenario


class RunMeta(msgspec.Struct):
    """Where and how a run was made."""

    started_at: str
    argv: list[str]
    quick: bool
    repeats: int
    python: str
    machine: str
    nproc: int
    cpu_model: str
    memory_gib: float
    server_url: str
    server_source: str
    server_version: str
    streamq_revision: str  # the commit measured, "+dirty" when streamq/ had uncommitted changes
    versions: dict[str, str]


class Report(msgspec.Struct):
    meta: RunMeta
    results: list[CaseResult]


def describe_run(
    argv: list[str], *, quick: bool, repeats: int, server_url: str, server_source: str
) -> RunMeta:
    return RunMeta(
        started_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        argv=argv,
        quick=quick,
        repeats=repeats,
        python=platform.python_version(),
        machine=platform.platform(),
        nproc=os.cpu_count() or 0,
        cpu_model=_cpu_model(),
        memory_gib=round(_memory_bytes() / 2**30, 1),
        server_url=_redact(server_url),
        server_source=server_source,
        server_version=_server_version(server_url),
        streamq_revision=_streamq_revision(),
        versions=_versions(),
    )


def format_table(meta: RunMeta, results: list[CaseResult]) -> str:
    rows = [TABLE_HEADER]
    for r in results:
        if r.status != "ok":
            rows.append((r.name, r.contender, r.operation, str(r.batch_size), *["-"] * 6, r.note))
            continue
        note = f"{len(r.samples)} repeat(s) of {r.count:,} events"
        if r.rate_ratio is not None:
            note += f"; {r.rate_ratio:.2f}x {r.compare_to}"
        rows.append(
            (
                r.name,
                r.contender,
                r.operation,
                str(r.batch_size),
                _num(r.rate_median),
                _pct(r.spread_pct),
                _pct(r.client_cpu_pct),
                _pct(r.server_cpu_pct),
                _pct(r.other_cpu_pct),
                f"{r.peak_rss_mib:.0f} MiB" if r.peak_rss_mib is not None else "-",
                note,
            )
        )
    lines = [
        f"server {meta.server_version} ({meta.server_source}); {meta.nproc} cores, {meta.cpu_model}; "
        f"python {meta.python}; streamq {meta.streamq_revision}"
    ]
    lines += _aligned(rows, RIGHT_ALIGNED)
    extras = [r for r in results if r.status == "ok" and r.extra]
    if extras:
        lines += ["", "extra figures (median over the repeats):"]
        for r in extras:
            inline, header, groups = _split_extra(r.extra)
            lines.append(f"{r.name}: {r.detail}")
            if inline:
                lines.append("  " + "; ".join(f"{key} {_fig(value)}" for key, value in inline.items()))
            if groups:
                rows = [header, *([label, *(_fig(v) for v in values)] for label, values in groups)]
                lines += ["  " + line for line in _aligned(rows, set(range(1, len(header))), last_free=False)]
    return "\n".join(lines)


def format_markdown(results: list[CaseResult]) -> str:
    """The figures as a Markdown table (and one more per case with extra figures), for RESULTS.md."""
    relative = any(r.rate_ratio is not None for r in results)
    header = "| case | detail | events/s (median) | spread | client CPU | server CPU | other CPU | peak RSS |"
    rule = "|---|---|---:|---:|---:|---:|---:|---:|"
    if relative:
        header += " relative |"
        rule += "---|"
    lines = [header, rule]
    for r in results:
        if r.status != "ok":
            lines.append(f"| {r.name} | {r.detail} | {r.note} | | | | | |" + (" |" if relative else ""))
            continue
        rss = f"{r.peak_rss_mib:.0f} MiB" if r.peak_rss_mib is not None else "-"
        cpu = " | ".join(_pct(v) for v in (r.client_cpu_pct, r.server_cpu_pct, r.other_cpu_pct))
        line = f"| {r.name} | {r.detail} | {_num(r.rate_median)} | {_pct(r.spread_pct)} | {cpu} | {rss} |"
        if relative:
            ratio = f" {r.rate_ratio:.2f}x {r.compare_to} |" if r.rate_ratio is not None else " |"
            line += ratio
        lines.append(line)
    for r in results:
        if r.status != "ok" or not r.extra:
            continue
        inline, header, groups = _split_extra(r.extra)
        lines += ["", f"`{r.name}` (median of {len(r.samples)} repeat(s)):"]
        if inline:
            lines.append(", ".join(f"{key} {_fig(value)}" for key, value in inline.items()))
        if groups:
            lines += ["", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
            lines += [
                "| " + " | ".join([label, *(_fig(v) for v in values)]) + " |" for label, values in groups
            ]
    return "\n".join(lines) + "\n"


def write_json(path: Path, meta: RunMeta, results: list[CaseResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(Report(meta=meta, results=results))) + b"\n")


def write_png(path: Path, meta: RunMeta, results: list[CaseResult]) -> bool:
    """Chart events/s against batch size, publish and consume side by side; False if matplotlib is absent.

    Only cases with ``chart`` set: the one-process throughput scenarios. The system scenarios (end to end,
    scaling, recovery, failure paths, growth) are in the tables, not on an axis of batch sizes.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    for ax, operation in zip(axes, ("publish", "consume"), strict=True):
        charted = [r for r in results if r.operation == operation and r.chart]
        measured = [r for r in charted if r.status == "ok"]
        # One line per scenario (run order: baselines first), coloured by contender; a contender's second
        # and later scenarios (streamq-publish-trim beside streamq-publish) get other line styles.
        styles: dict[str, int] = {}
        for scenario in dict.fromkeys(r.scenario for r in measured):
            points = sorted((r for r in measured if r.scenario == scenario), key=lambda r: r.batch_size)
            contender = points[0].contender
            style = LINE_STYLES[styles.setdefault(contender, 0) % len(LINE_STYLES)]
            styles[contender] += 1
            xs = [r.batch_size for r in points]
            ys = [r.rate_median or 0.0 for r in points]
            errors = [
                [y - (r.rate_min or y) for r, y in zip(points, ys, strict=True)],
                [(r.rate_max or y) - y for r, y in zip(points, ys, strict=True)],
            ]
            ax.errorbar(
                xs,
                ys,
                yerr=errors,
                marker=style[1],
                linestyle=style[0],
                capsize=3,
                label=scenario,
                color=CONTENDER_COLOURS.get(contender),
            )
        pending = list(dict.fromkeys(r.contender for r in charted if r.status != "ok"))
        title = f"{operation}, one process"
        if pending:
            title += f"\n(not measured: {', '.join(pending)})"
        ax.set_title(title)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size (events per pipeline / per read)")
        ax.set_ylabel("events/s (median, bars: min-max)")
        ax.grid(True, which="both", alpha=0.3)
        if measured:
            ax.legend(fontsize="small")
    fig.suptitle(
        f"streamq {meta.streamq_revision} benchmarks: server {meta.server_version}, {meta.nproc} cores, "
        f"{meta.cpu_model}, {meta.repeats} repeat(s){' (quick)' if meta.quick else ''}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _aligned(rows: Sequence[Sequence[str]], right: set[int], last_free: bool = True) -> list[str]:
    """Rows padded into columns; the last column is left ragged when `last_free` (the table's note)."""
    padded = len(rows[0]) - 1 if last_free else len(rows[0])
    widths = [max(len(row[i]) for row in rows) for i in range(padded)]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row[:padded], widths, strict=True))
        ]
        lines.append("  ".join([*cells, *row[padded:]]).rstrip())
    return lines


def _split_extra(
    extra: dict[str, float],
) -> tuple[dict[str, float], list[str], list[tuple[str, list[float]]]]:
    """Extra figures as (figures without a group, header, rows): keys "group.figure" make a table with one
    row per group and one column per figure (a figure a group lacks is NaN, shown as "-")."""
    inline: dict[str, float] = {}
    figures: dict[str, None] = {}
    groups: dict[str, dict[str, float]] = {}
    for key, value in extra.items():
        group, _, figure = key.rpartition(".")
        if not group:
            inline[figure] = value
            continue
        figures[figure] = None
        groups.setdefault(group, {})[figure] = value
    # Columns in the order of the group with the most figures (a group lacking one must not push it last).
    widest = max(groups.values(), key=len, default={})
    order = [*widest, *(f for f in figures if f not in widest)]
    rows = [(group, [values.get(f, math.nan) for f in order]) for group, values in groups.items()]
    return inline, ["", *order], rows


def _fig(value: float) -> str:
    """An extra figure: thousands separated when large, three significant digits when small."""
    if math.isnan(value):
        return "-"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _num(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "-"


def _pct(value: float | None) -> str:
    return f"{value:.0f}%" if value is not None else "-"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _server_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    return f"redis {info.get('redis_version', 'unknown')}"


def _streamq_revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "streamq")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def _versions() -> dict[str, str]:
    versions = {}
    for dist in RECORDED_DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
