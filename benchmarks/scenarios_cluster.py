"""Partitioned streams on a local Redis Cluster: consume throughput at 1, 3 and 6 partitions; keyed publish.

Measures events/s of one worker process (streamq's App, in the measuring child) draining a pre-filled
stream, for:
  * streamq-cluster[consume-plain-standalone]: a plain stream on the run's standalone server: the
    reference every other consume case is compared to ("relative");
  * streamq-cluster[consume-6p-standalone]: a stream of 6 partitions on that same server: what partitioning
    costs by itself (6 partition consumers in one worker, the balance round), without a cluster;
  * streamq-cluster[consume-1p|3p|6p-cluster]: a stream of 1, 3 or 6 partitions on a throwaway local cluster
    of 3 primaries (no replicas: the figure is the primaries' work, not replication's), started by
    streamq.embedded_cluster from the same server binary. 1 partition lives on one node, 3 and 6 spread
    over the three (each case prints its spread as ``nodes_used``);
and publish throughput of publish_many (chunks of 100):
  * streamq-cluster[publish-plain-standalone]: no key, a plain stream on the standalone server (reference);
  * streamq-cluster[publish-keyed-6p-cluster]: ``key=`` (1,000 keys) on the 6-partition stream on the
    cluster: each chunk is split by partition and every partition's share sent to its node, in parallel.

The same event count for every case of an operation, a no-op handler (so the worker is bound by streamq's
own reading, decoding and settling), batch_size=100. Pre-filling is server-side and untimed (each
partition gets count/N entries and the group at its start); so are the cluster's start and the worker's
imports. A consume case times the worker from the first batch its handler gets to the last (`start_ms`
reports apart how long the worker took to hand over its first batch: connecting, and for a partitioned
stream the first balance round, which takes every partition); it then stops. Events moved are those the
handler saw, checked against the count.

All of it shares the machine: on the 2-core box of RESULTS.md the three primaries, the worker (and the
standalone server) compete for the same two cores, so the cluster cases measure how the work is split,
not what three machines would do; ``nodes_cpu_pct`` (the primaries' CPU, INFO CPU, over the section) and
the CPU per event of the worker (``client_us_per_event``) and of the server or the primaries together
(``server_us_per_event``) show where the time went. RESULTS.md carries the analysis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import redis
import redis.asyncio

from benchmarks.harness import Case, Probe, RunContext
from benchmarks.scenarios_streamq import _core, _event, _reading_type, entry_fields
from benchmarks.streams import prefill

SCENARIO = "streamq-cluster"
BATCH_SIZE = 100
CHUNK = 100
KEYS = 1_000
CONSUME_COUNT, CONSUME_QUICK = 300_000, 1_200
PUBLISH_COUNT, PUBLISH_QUICK = 300_000, 1_200
STANDALONE, CLUSTER = 0, 1  # options are ints
CONSUME = [("plain-standalone", STANDALONE, 0), ("6p-standalone", STANDALONE, 6)] + [
    (f"{n}p-cluster", CLUSTER, n) for n in (1, 3, 6)
]
PUBLISH = [("plain-standalone", STANDALONE, 0), ("keyed-6p-cluster", CLUSTER, 6)]


def _name(operation: str, variant: str) -> str:
    return f"{SCENARIO}[{operation}-{variant}]"


CASES = [
    Case(
        scenario=SCENARIO,
        contender="streamq",
        operation="consume",
        batch_size=BATCH_SIZE,
        count=CONSUME_COUNT,
        quick_count=CONSUME_QUICK,
        measure="benchmarks.scenarios_cluster:consume",
        variant=f"consume-{variant}",
        options={"where": where, "partitions": partitions},
        chart=False,
        compare_to=_name("consume", "plain-standalone") if partitions else "",
        detail=(
            ("a plain stream" if not partitions else f"{partitions} partitions")
            + (" on the standalone server" if where == STANDALONE else " on a local 3-primary cluster")
            + f", one worker process, batch_size={BATCH_SIZE}, no-op handler"
        ),
    )
    for variant, where, partitions in CONSUME
] + [
    Case(
        scenario=SCENARIO,
        contender="streamq",
        operation="publish",
        batch_size=CHUNK,
        count=PUBLISH_COUNT,
        quick_count=PUBLISH_QUICK,
        measure="benchmarks.scenarios_cluster:publish",
        variant=f"publish-{variant}",
        options={"where": where, "partitions": partitions},
        chart=False,
        compare_to=_name("publish", "plain-standalone") if partitions else "",
        detail=(
            f"publish_many, chunks of {CHUNK}, "
            + (
                "no key, a plain stream on the standalone server"
                if not partitions
                else f"key= ({KEYS} keys), {partitions} partitions on a local 3-primary cluster"
            )
        ),
    )
    for variant, where, partitions in PUBLISH
]


@contextlib.contextmanager
def _cluster(ctx: RunContext) -> Any:
    """A 3-primary cluster for this repeat (None for a standalone case)."""
    if ctx.options["where"] != CLUSTER:
        yield None
        return
    from streamq.embedded import default_server_binary
    from streamq.embedded_cluster import EmbeddedCluster

    with EmbeddedCluster(default_server_binary(), primaries=3, replicas=0) as cluster:
        yield cluster


def _node_url(cluster: Any, key: str) -> str:
    return f"redis://127.0.0.1:{cluster.primary_for(key).port}"


async def _nodes_cpu_s(cluster: Any) -> float:
    total = 0.0
    for node in cluster.nodes:
        client = redis.asyncio.Redis(port=node.port)
        info = await client.info("cpu")
        await client.aclose()
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total


def _cpu_figures(probe: Probe, count: int, nodes_cpu_s: float | None) -> None:
    """CPU per event of the client and of the server(s): unlike events/s, hardly moved by other load on
    the machine, so the figures the on-paper analysis in RESULTS.md starts from."""
    server_s = nodes_cpu_s if nodes_cpu_s is not None else probe.server_cpu_s
    probe.extra["client_us_per_event"] = probe.client_cpu_s / count * 1e6
    if server_s is not None:
        probe.extra["server_us_per_event"] = server_s / count * 1e6
    if nodes_cpu_s is not None:
        probe.extra["nodes_cpu_pct"] = nodes_cpu_s / (probe.wall_s or 1.0) * 100


async def consume(ctx: RunContext, probe: Probe) -> int:
    streamq = _core()
    from streamq.partitions import partition_streams

    partitions = ctx.options["partitions"]
    with _cluster(ctx) as cluster:
        url = ctx.url if cluster is None else cluster.url
        fields = await asyncio.to_thread(entry_fields, ctx.url, ctx.stream)  # it runs its own loop
        names = partition_streams(ctx.stream, partitions) if partitions else [ctx.stream]
        for index, name in enumerate(names):
            share = ctx.count // len(names) + (index < ctx.count % len(names))
            prefill(
                ctx.url if cluster is None else _node_url(cluster, name), name, fields, share, group=ctx.group
            )
        if cluster is not None:
            probe.extra["nodes_used"] = len({cluster.primary_for(name).port for name in names})
        app = streamq.App(url)
        handled = 0
        first_s = last_s = first_cpu_s = 0.0
        done = asyncio.Event()
        options: dict[str, Any] = {"partitions": partitions} if partitions else {}

        @app.consumer(
            ctx.stream, group=ctx.group, events=[_reading_type()], batch_size=ctx.batch_size, **options
        )
        async def handle(batch) -> None:  # type: ignore[no-untyped-def]
            nonlocal handled, first_s, last_s, first_cpu_s
            last_s = time.perf_counter()
            if not first_s:
                first_s, first_cpu_s = last_s, time.process_time()
            handled += len(batch)
            if handled >= ctx.count:
                done.set()

        before = await _nodes_cpu_s(cluster) if cluster is not None else 0.0
        async with probe.measure():
            started_s, started_cpu_s = time.perf_counter(), time.process_time()
            running = asyncio.create_task(app.run())
            await asyncio.wait([running, asyncio.create_task(done.wait())], return_when="FIRST_COMPLETED")
        app.stop()
        await running  # raises what the worker died of, if it did
        # From the first batch handed over to the last: the worker's start (connecting; a partitioned
        # worker's first balance round, which takes the partitions) is reported apart as start_ms.
        probe.narrow_wall(last_s - first_s)
        probe.client_cpu_s -= first_cpu_s - started_cpu_s
        probe.extra["start_ms"] = (first_s - started_s) * 1000
        _cpu_figures(probe, ctx.count, await _nodes_cpu_s(cluster) - before if cluster is not None else None)
    if handled != ctx.count:
        raise RuntimeError(f"handled {handled} of {ctx.count} events")
    return handled


async def publish(ctx: RunContext, probe: Probe) -> int:
    streamq = _core()
    partitions = ctx.options["partitions"]
    warm_up = [_event(seq) for seq in range(CHUNK)]
    events = [_event(seq) for seq in range(ctx.count)]
    with _cluster(ctx) as cluster:
        url = ctx.url if cluster is None else cluster.url
        counts = {ctx.stream: partitions} if partitions else None
        async with streamq.Producer(url, partitions=counts) as producer:
            key: Any = (lambda event: f"k{event.seq % KEYS}") if partitions else None
            # Untimed: connects (to every node), records the partition count, and warms the code paths.
            await producer.publish_many(ctx.stream, warm_up, key=key)
            before = await _nodes_cpu_s(cluster) if cluster is not None else 0.0
            async with probe.measure():
                await producer.publish_many(ctx.stream, events, chunk_size=CHUNK, key=key)
            _cpu_figures(
                probe, ctx.count, await _nodes_cpu_s(cluster) - before if cluster is not None else None
            )
    return ctx.count
