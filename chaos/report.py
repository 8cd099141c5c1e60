"""The chaos report: a plain-text summary for people, and the full report as JSON for machines."""

from __future__ import annotations

from pathlib import Path

import msgspec

from .checker import CheckReport
from .run import RunReport


def to_json(report: RunReport) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"


def write_json(report: RunReport, path: str | Path) -> None:
    Path(path).write_bytes(to_json(report))


def _pairs(mapping: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in mapping.items()) or "none"


def render(report: RunReport) -> str:
    c: CheckReport = report.check
    f = c.final
    p = report.publishing
    lines = [
        f"streamq chaos run: {'PASS' if report.ok else 'FAIL'}",
        f"  command      {report.command}",
        f"  server       {report.server}, version {report.server_version}",
        f"  started      {report.started_at}; faults+publishing {report.publish_s} s,"
        f" drain {report.drain_s} s, total {report.total_s} s",
        f"  run dir      {report.run_dir}",
        "",
        "workload",
        f"  published    {c.published} ({_pairs(c.kinds)})",
        f"  ambiguous    {c.ambiguous} in {report.failed_publish_calls} failed calls;"
        f" recovered {c.recovered}, never seen {c.unresolved_ambiguous}",
        f"  invocations  {c.invocations} handler invocations by {report.workers_spawned} worker processes",
        f"  delayed      {p.get('delayed_events', 0)} events in {p.get('delayed_chunks', 0)} chunks"
        f" (delay_ms 0..{report.config.get('max_delay_ms')})",
        f"  dedup keys   {p.get('dedup_events', 0)} events in {p.get('dedup_chunks', 0)} chunks;"
        f" failed calls retried for {p.get('dedup_retried_chunks', 0)} chunks"
        f" ({p.get('dedup_retry_calls', 0)} retries): already written {p.get('dedup_retry_duplicates', 0)},"
        f" new {p.get('dedup_retry_new', 0)}, given up {p.get('dedup_given_up_events', 0)};"
        f" published twice on purpose {p.get('republished_chunks', 0)} chunks:"
        f" duplicates {p.get('republish_duplicates', 0)}, mismatches {p.get('republish_mismatches', 0)}",
        "",
        "faults",
        f"  planned      {_pairs(report.schedule)}",
        f"  done         {_pairs(report.faults_done)}; skipped {_pairs(report.faults_skipped)}",
        f"  self-kills   {_pairs(c.self_kills)}",
        f"  worker exits {_pairs(c.worker_exits)}",
        *([f"  pool         {_pairs(report.pool)}"] if report.pool else []),
        "",
        "results",
        f"  lost         {c.lost}",
        f"  unexpected   {c.unexpected}",
        f"  trimmed      {c.trimmed} (pending entries deleted on purpose by trim_pending)",
        f"  acked        {c.acked}; dead-lettered {c.dead_lettered}",
        f"  duplicated   {c.duplicated} extra successes over {c.duplicated_events} events;"
        f" bound from in-flight entries {c.duplicate_bound}; streamq reclaimed {c.reclaimed}"
        f" + lease_lost {c.lease_lost} (in flight at pauses, restarts, client kills: {c.lease_lost_bound})",
        f"  attempts     max invocations per event {c.max_invocations}, max attempt {c.max_attempt_seen},"
        f" over the limit {c.attempts_over_limit}, same attempt twice {c.same_attempt_twice}",
        f"  dead letters {c.dlq_entries} (expected {c.dlq_expected});"
        f" bystanders {c.bystanders_dead_lettered};"
        f" acked and dead {c.acked_and_dead}",
        f"  final state  pending {f.stream_pending}+{f.retry_pending}, undelivered"
        f" {f.stream_undelivered}+{f.retry_undelivered}, lag {f.stream_lag}/{f.retry_lag},"
        f" delayed {f.delayed}, stream length {f.stream_length}, consumers left {f.consumers}",
        f"  delayed      {c.delayed} published delayed: entered the stream once {c.delayed_once},"
        f" twice or more {c.delayed_twice}, never {c.delayed_never}"
        f" (trimmed while pending by the nemesis {c.delayed_never_trimmed}); ambiguous {c.delayed_ambiguous}",
        f"  republished  {c.republished} of {c.dedup_events} dedup-keyed events",
        f"  retention    trimmed {c.trimmed_by_retention}; deleted_pending {c.deleted_pending}"
        f" (pending entries trimmed by trim_pending {c.trimmed_pending_by_nemesis});"
        f" left scheduled {c.scheduled_left}",
        f"  stats        {_pairs(c.stats)}",
        f"  totals       {_pairs(f.totals)}",
        "",
        "invariants",
    ]
    lines += [f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}" for check in c.checks]
    samples = {
        "lost": c.lost_sample,
        "unexpected": c.unexpected_sample,
        "over attempt limit": c.attempts_over_limit_sample,
        "dlq missing": c.dlq_missing,
        "dlq extra": c.dlq_extra,
        "dlq duplicates": c.dlq_duplicates,
        "dlq bytes mismatch": c.dlq_bytes_mismatch,
        "dlq reason mismatch": c.dlq_reason_mismatch,
        "unexplained exits": c.unexplained_exits,
        "delayed twice": c.delayed_twice_sample,
        "delayed never": c.delayed_never_sample,
        "republished": c.republished_sample,
    }
    for name, sample in samples.items():
        if sample:
            lines.append(f"  {name}: " + "; ".join(sample[:10]))
    return "\n".join(lines) + "\n"
