"""Headers: publish(headers=...) on every path (fast, scripted, delayed, partitioned), message.headers on
the consumer (raw entries' extra fields included, bounded), kept in retries, dead letters and replays;
refused at publish when malformed or too large."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio
from helpers import wait_until
from structlog.testing import capture_logs

import streamq
from streamq import keys
from streamq._cli_output import dead_letter_json, format_dead_letter
from streamq._worker.decoding import MAX_READ_HEADER_BYTES, MAX_READ_HEADERS, TRUNCATED_HEADER
from streamq._worker.records import RetryRecord, decode_record, encode_record
from streamq.embedded import EmbeddedServer, ServerBinary
from streamq.errors import ConfigurationError
from streamq.events import PAYLOAD_FIELD
from streamq.partitions import partition_stream
from streamq.settings import MAX_HEADER_BYTES, MAX_HEADERS


class Note(streamq.Event, tag="test.headers.note"):
    n: int


FAST: dict[str, Any] = {"lease_ms": 1_000, "block_ms": 100, "retry_base_ms": 0, "retention": False}


def _fields(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[dict[bytes, bytes]]:
    """Each entry's fields besides the payload."""
    return [{k: v for k, v in fields.items() if k != PAYLOAD_FIELD} for _, fields in entries]


async def _consume(url: str, stream: str, **options: Any) -> list[tuple[int, dict[str, str]]]:
    """Run a group over `stream` until idle; (n, headers) of every message handled, in order."""
    seen: list[tuple[int, dict[str, str]]] = []
    app = streamq.App(url)

    @app.consumer(stream, group="g", **{**FAST, **options})
    async def handle(batch: streamq.Batch[Note]) -> None:
        seen.extend((m.event.n, dict(m.headers)) for m in batch)

    await asyncio.wait_for(app.run_until_idle(), 30)
    return seen


async def test_published_headers_reach_the_handler_on_the_fast_path(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """publish(headers=) writes each header as a field beside `d`; the handler reads them as message.headers.
    An event published without headers has none (an empty dict), and its entry only its payload field."""
    async with streamq.Producer(redis_url) as producer:
        await producer.publish(unique, Note(1), headers={"trace_id": "abc", "tenant": "ünï"})
        await producer.publish(unique, Note(2))
        await producer.publish_many(unique, [Note(3), Note(4)], headers=[{"k": "3"}, None])
    entries = await client.xrange(unique)
    assert _fields(entries) == [{b"trace_id": b"abc", b"tenant": "ünï".encode()}, {}, {b"k": b"3"}, {}]
    assert list(entries[1][1]) == [PAYLOAD_FIELD]
    assert await _consume(redis_url, unique) == [
        (1, {"trace_id": "abc", "tenant": "ünï"}),
        (2, {}),
        (3, {"k": "3"}),
        (4, {}),
    ]


def test_publish_many_takes_one_mapping_a_callable_or_an_aligned_sequence(
    redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """As dedup_key: a mapping goes on every event, a callable is asked per event (None: no headers), a
    sequence is aligned with the events; from SyncProducer, chunked, with publish_result too."""
    with streamq.SyncProducer(redis_url, chunk_size=2) as producer:
        producer.publish_many(unique, [Note(1), Note(2), Note(3)], headers={"all": "yes"})
        producer.publish_many(
            unique, [Note(4), Note(5)], headers=lambda e: {"n": str(e.n)} if e.n % 2 == 0 else None
        )
        producer.publish_many_results(unique, [Note(6), Note(7)], headers=[None, {"x": "7"}])
        producer.publish_result(unique, Note(8), headers={"one": "1"})
    assert _fields(sync_client.xrange(unique)) == [
        {b"all": b"yes"}, {b"all": b"yes"}, {b"all": b"yes"}, {b"n": b"4"}, {}, {}, {b"x": b"7"},
        {b"one": b"1"},
    ]  # fmt: skip


async def test_headers_on_the_scripted_paths_dedup_and_maxlen(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Publishes that run the PUBLISH script (a dedup key, maxlen) write the headers too; a duplicate
    writes nothing, its headers included."""
    async with streamq.Producer(redis_url) as producer:
        first = await producer.publish(unique, Note(1), dedup_key="k1", headers={"h": "1"})
        again = await producer.publish(unique, Note(1), dedup_key="k1", headers={"h": "other"})
        await producer.publish_many(unique, [Note(2), Note(3)], maxlen=100, headers=[{"h": "2"}, None])
    assert again == first
    assert _fields(await client.xrange(unique)) == [{b"h": b"1"}, {b"h": b"2"}, {}]


async def test_delayed_events_keep_their_headers_until_moved_in(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A delayed event's headers wait beside its payload and are written with it when it is moved into
    the stream; nothing is left in the scheduled events' hash after the move, or after a cancel."""
    events_key = keys.scheduled_events_key(unique)
    async with streamq.Producer(redis_url) as producer:
        past = datetime.now(UTC) - timedelta(seconds=1)
        due = await producer.publish(unique, Note(1), at=past, headers={"h": "due"})
        plain = await producer.publish(unique, Note(2), at=past)
        later = await producer.publish(unique, Note(3), delay_ms=3_600_000, headers={"h": "later"})
        assert await client.hexists(events_key, later + "#h")
        assert await producer.cancel(unique, later)
    assert sorted(await client.hkeys(events_key)) == sorted(k.encode() for k in (due, due + "#h", plain))
    assert await client.xlen(unique) == 0
    # Equally due, they are moved in schedule id order (random): compare regardless of order.
    assert sorted(await _consume(redis_url, unique)) == [(1, {"h": "due"}), (2, {})]
    assert await client.hlen(events_key) == 0


async def test_a_raw_entrys_extra_fields_are_its_headers(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """An entry another tool wrote (`XADD s * d <payload> trace_id abc`) keeps its extra fields as headers,
    wherever `d` is among them; bytes that are not UTF-8 are decoded with replacement characters."""
    payload = msgspec.msgpack.encode(Note(1))
    await client.xadd(unique, {"d": payload, "trace_id": "abc"})
    await client.xadd(unique, {"first": "1", "d": msgspec.msgpack.encode(Note(2)), "bad": b"\xff\xfe"})
    assert await _consume(redis_url, unique) == [
        (1, {"trace_id": "abc"}),
        (2, {"first": "1", "bad": "\ufffd\ufffd"}),
    ]


async def test_a_raw_entrys_oversized_headers_are_cut_marked_and_logged(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A raw entry with more headers than a consumer keeps (or more bytes of them) is handled all the same,
    with the first headers that fit, `streamq-truncated` saying how many were left out, and a warning."""
    many = {f"h{i}": "v" for i in range(MAX_READ_HEADERS + 5)}
    await client.xadd(unique, {"d": msgspec.msgpack.encode(Note(1)), **many})
    big = {"a": "x" * 100, "b": "y" * MAX_READ_HEADER_BYTES, "c": "z"}
    await client.xadd(unique, {"d": msgspec.msgpack.encode(Note(2)), **big})
    with capture_logs() as logs:
        seen = await _consume(redis_url, unique)
    assert [n for n, _ in seen] == [1, 2]
    first, second = seen[0][1], seen[1][1]
    assert list(first)[:-1] == [f"h{i}" for i in range(MAX_READ_HEADERS)]
    assert first[TRUNCATED_HEADER] == "5"
    assert second == {"a": "x" * 100, TRUNCATED_HEADER: "2"}
    cut = [e for e in logs if e["event"] == "entry headers over the bounds: the first ones kept"]
    assert [e["left_out"] for e in cut] == [5, 2]


async def test_retries_and_dead_letters_keep_the_headers_and_replay_brings_them_back(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A failed event comes back for its retry with its headers; dead-lettered, the dead letter holds them
    (DeadLetter.headers, `dlq show`); replayed, the handler sees them again."""
    async with streamq.Producer(redis_url) as producer:
        await producer.publish(unique, Note(1), headers={"trace_id": "t1"})
    attempts: list[tuple[int, dict[str, str]]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", max_attempts=2, **FAST)
    async def failing(message: streamq.Message[Note]) -> None:
        attempts.append((message.attempt, dict(message.headers)))
        raise ValueError("no")

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert attempts == [(1, {"trace_id": "t1"}), (2, {"trace_id": "t1"})]
    dead = streamq.DeadLetters(client)
    (letter,) = await dead.list(unique)
    assert letter.headers == {"trace_id": "t1"}
    assert "headers:\n  trace_id: t1" in format_dead_letter(letter, None)
    assert dead_letter_json(letter, None)["headers"] == {"trace_id": "t1"}
    assert (await dead.replay(unique)).count == 1
    assert await _consume(redis_url, unique) == [(1, {"trace_id": "t1"})]


def test_retry_records_written_before_headers_still_decode() -> None:
    """RetryRecord grew a headers field at its end: a record without it (an older worker's) decodes with no
    headers, and one with headers round-trips."""
    old = msgspec.msgpack.encode(["1-0", 1, 5, 6, "E: x", b"payload", 0, 0])
    record = decode_record(old)
    assert record is not None and record.headers == {} and record.payload == b"payload"
    new = RetryRecord("1-0", 1, 5, 6, "E: x", b"p", headers={"k": "v"})
    assert decode_record(encode_record(new)) == new


async def test_partitioned_publish_routes_each_events_headers_with_it(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Headers aligned with the events follow each event to its partition."""
    async with streamq.Producer(redis_url, partitions={unique: 2}) as producer:
        keys_ = [f"k{n}" for n in range(6)]
        await producer.publish_many(
            unique, [Note(n) for n in range(6)], key=keys_, headers=[{"n": str(n)} for n in range(6)]
        )
    found: dict[int, bytes] = {}
    for index in range(2):
        for _, fields in await client.xrange(partition_stream(unique, index)):
            found[msgspec.msgpack.decode(fields[PAYLOAD_FIELD], type=Note).n] = fields[b"n"]
    assert found == {n: str(n).encode() for n in range(6)}


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"d": "x"}, "header name"),
        ({"": "x"}, "header name"),
        ({"bad name": "x"}, "header name"),
        ({".dot": "x"}, "header name"),
        ({"streamq-truncated": "1"}, "header name"),
        ({"n" * 129: "x"}, "header name"),
        ({1: "x"}, "header name"),
        ({"k": 1}, "values are str"),
        ({"k": "\ud800"}, "not valid text"),
        ({f"h{i}": "" for i in range(MAX_HEADERS + 1)}, "at most 64 headers"),
        ({"k": "x" * MAX_HEADER_BYTES}, "8192 bytes"),
        ("k=v", "mapping"),
    ],
)
def test_malformed_or_oversized_headers_are_refused_before_anything_is_written(
    headers: Any, why: str, redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """Bad names (empty, `d`, outside the charset, the reserved prefix, too long, not str), values that are
    not str, more than MAX_HEADERS, more than MAX_HEADER_BYTES: ConfigurationError, and the stream stays
    empty, on the fast and the scripted path, for publish and publish_many."""
    with streamq.SyncProducer(redis_url) as producer:
        for call in (
            lambda: producer.publish(unique, Note(1), headers=headers),
            lambda: producer.publish(unique, Note(1), headers=headers, dedup_key="k"),
            lambda: producer.publish_many(unique, [Note(1), Note(2)], headers=[None, headers]),
        ):
            with pytest.raises(ConfigurationError, match=why):
                call()
    assert sync_client.xlen(unique) == 0


def test_misaligned_or_string_headers_for_publish_many_are_refused(redis_url: str, unique: str) -> None:
    """publish_many's headers sequence must have one entry per event, and a str is not a sequence of them."""
    with streamq.SyncProducer(redis_url) as producer:
        with pytest.raises(ConfigurationError, match="2 entries for 3 events"):
            producer.publish_many(unique, [Note(1), Note(2), Note(3)], headers=[None, {"k": "v"}])
        with pytest.raises(ConfigurationError, match="mapping"):
            producer.publish_many(unique, [Note(1)], headers="k")  # type: ignore[arg-type]  # the mistake tested


async def test_headers_at_the_limits_are_accepted(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Exactly MAX_HEADERS headers, and exactly MAX_HEADER_BYTES of them, are published whole."""
    most = {f"h{i:02}": "" for i in range(MAX_HEADERS)}
    biggest = {"k": "x" * (MAX_HEADER_BYTES - 1)}
    async with streamq.Producer(redis_url) as producer:
        await producer.publish(unique, Note(1), headers=most)
        await producer.publish(unique, Note(2), headers=biggest)
    assert await client.xlen(unique) == 2
    seen = await _consume(redis_url, unique)
    assert seen == [(1, most), (2, biggest)]


def test_headers_on_the_replica_waiting_path(server_binary: ServerBinary | None, unique: str) -> None:
    """With min_replicas, the fast path's XADDs and their WAIT go in one payload: the headers are in it, and
    on the replica when the call returns (async and sync producers)."""
    if server_binary is None:
        pytest.skip("needs servers it can start as a primary and a replica")
    with EmbeddedServer(server_binary, extra_args=["--repl-diskless-sync-delay", "0"]) as primary:
        replica_args = ["--replicaof", "127.0.0.1", str(primary.port)]
        with EmbeddedServer(server_binary, extra_args=replica_args) as replica:
            on_replica = redis.Redis.from_url(replica.url)
            try:
                wait_until(
                    lambda: on_replica.info("replication").get("master_link_status") == "up",
                    message="the replica's link to the primary",
                )
                with streamq.SyncProducer(primary.url, min_replicas=1, replica_timeout_ms=10_000) as producer:
                    producer.publish_many(unique, [Note(1), Note(2)], headers=[{"h": "1"}, None])

                async def publish() -> None:
                    async with streamq.Producer(primary.url, min_replicas=1, replica_timeout_ms=10_000) as p:
                        await p.publish(unique, Note(3), headers={"h": "3"})

                asyncio.run(publish())
                assert _fields(on_replica.xrange(unique)) == [{b"h": b"1"}, {}, {b"h": b"3"}]
            finally:
                on_replica.close()
