"""The events and the worker app of the cluster chaos run (chaos/cluster.py, chaos/cluster_app.py).

One ordered consumer of a partitioned stream on Redis Cluster. Its settings come from the environment
(STREAMQ_CHAOS_CLUSTER, JSON written by chaos/cluster.py), because a pool's children are fresh interpreters
that import this module and take no arguments of their own. The handler does what an ordered handler
should: it handles the batch in order and stops at the first event that fails (`batch.retry` and return).
Before returning it appends one line per event it looked at to this process's own ledger file, in one
write(), so a SIGKILL cannot undo it:

    uuid  key  seq  pid  attempt  ok  time_ns  index

`ok` is 1 when the event succeeded, 0 when it failed (poison always fails, flaky fails its first attempt).
`time_ns` (the wall clock at the batch's start) and `index` (its place in the batch) order the lines of
all workers on this one machine, which the checker's per-key order check needs.
"""

from __future__ import annotations

import asyncio
import os
import time

import streamq

CONFIG_ENV = "STREAMQ_CHAOS_CLUSTER"
GROUP = "chaos"
OK, FLAKY, POISON = "ok", "flaky", "poison"
LOG_FILE_PREFIX = "cluster-worker-"


class KeyedEvent(streamq.Event, tag="chaos.keyed"):
    uuid: str
    key: str
    seq: int  # its place among its key's events, in publish order
    kind: str  # ok | flaky | poison


def succeeds(kind: str, attempt: int) -> bool:
    return kind == OK or (kind == FLAKY and attempt > 1)


def build_app(config: dict[str, object]) -> streamq.App:
    path = os.path.join(str(config["ledger_dir"]), f"{LOG_FILE_PREFIX}{os.getpid()}.tsv")
    # Never closed: the process's end closes it. Unbuffered, so one write() per batch reaches the kernel.
    ledger = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
    work_s = int(str(config["work_ms"])) / 1000
    app = streamq.App(str(config["url"]))

    @app.consumer(
        str(config["stream"]), group=GROUP, partitions=int(str(config["partitions"])), ordered=True,
        partition_lease_ms=int(str(config["partition_lease_ms"])), lease_ms=int(str(config["lease_ms"])),
        batch_size=int(str(config["batch_size"])), max_attempts=int(str(config["max_attempts"])),
        retry_base_ms=50, retry_max_ms=200, block_ms=100,
    )  # fmt: skip
    async def handle(batch: streamq.Batch[KeyedEvent]) -> None:
        started_ns = time.time_ns()
        lines = []
        failed = None
        for index, message in enumerate(batch):
            event = message.event
            ok = succeeds(event.kind, message.attempt)
            lines.append(
                f"{event.uuid}\t{event.key}\t{event.seq}\t{os.getpid()}\t{message.attempt}\t{int(ok)}"
                f"\t{started_ns}\t{index}\n"
            )
            if not ok:
                failed = message
                break
        if work_s:
            await asyncio.sleep(work_s)
        ledger.write("".join(lines).encode())
        if failed is not None:
            batch.retry(failed)

    return app
