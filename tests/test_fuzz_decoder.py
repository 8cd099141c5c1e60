"""Fuzzing the decoding of untrusted payloads: whatever is in a stream, a worker neither crashes nor lies.

Anyone with XADD rights on a stream decides its bytes, so the Decoder is the first thing an attacker (or a
buggy producer in another language) reaches. Every input must end as an event of a declared type or as a
DecodeFailure; a batch must decode exactly as its payloads would one by one (no payload may borrow its
neighbour's bytes); and the helpers that read other stored bytes (retry records, dead-letter previews)
must not raise either. The end-to-end property runs a real burst worker over fuzzed entries on every test
server and checks that exactly the undecodable ones are dead-lettered, byte for byte.

Example counts are bounded so the whole file stays within a few seconds per server.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import msgspec
import pytest
import redis.asyncio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import streamq
from streamq import keys
from streamq._worker.records import RetryRecord, decode_record, encode_record
from streamq.deadletter import DeadLetter, DeadLetters
from streamq.events import PAYLOAD_FIELD, DecodeFailure, Decoder, Encoder

CAP = 4096  # bytes: a small max_event_bytes, so that payloads over it are cheap to make


class Placed(streamq.Event, tag="fuzz.placed"):
    order_id: int
    customer: str
    amount: float = 0.0
    items: list[str] = msgspec.field(default_factory=list)
    meta: dict[str, int] = msgspec.field(default_factory=dict)
    note: str | None = None


class Cancelled(streamq.Event, tag="fuzz.cancelled"):
    order_id: int
    reason: bytes = b""

    def __post_init__(self) -> None:
        # A user's own validation that raises something other than ValueError/TypeError: msgspec lets it
        # through as is, and the Decoder must still turn it into a DecodeFailure.
        if self.order_id < 0:
            raise LookupError(f"no such order {self.order_id}")


class Point(streamq.Event, tag="fuzz.point", array_like=True):
    x: int
    y: int
    label: str = ""


MAP_TYPES = (Placed, Cancelled)
MAP_DECODER = Decoder(list(MAP_TYPES), max_event_bytes=CAP)
ARRAY_DECODER = Decoder([Point], max_event_bytes=CAP)
DECODERS = (MAP_DECODER, ARRAY_DECODER)
ENCODE = Encoder(max_event_bytes=1 << 20).encode
TAGS = ["fuzz.placed", "fuzz.cancelled", "fuzz.point"]
FIELDS = ["type", "order_id", "customer", "amount", "items", "meta", "note", "reason", "x", "y", "label", "z"]

# Nesting deeper than the interpreter's recursion limit: msgspec raises RecursionError, not DecodeError,
# even while skipping a field no event declares. Three kilobytes, under the cap.
DEEP = b"\x91" * 3_000 + b"\xc0"
# A valid Placed with one more field, unknown to it, whose value is DEEP.
_SHALLOW_PLACED = msgspec.msgpack.encode({"type": "fuzz.placed", "order_id": 1, "customer": "a"})
DEEP_UNKNOWN_FIELD = b"\x84" + _SHALLOW_PLACED[1:] + b"\xa2zz" + DEEP
# Strings that are not UTF-8 (msgspec raises UnicodeDecodeError, not DecodeError): in the tag, which every
# event has, and in a str field.
NOT_UTF8_TAG = b"\x82\xa4type\xa1\x80\xa8order_id\x01"
NOT_UTF8_FIELD = b"\x83\xa4type\xabfuzz.placed\xa8order_id\x01\xa8customer\xa1\x80"
# A valid array_like Point with one more trailing element (a newer producer's field), whose value is DEEP.
DEEP_EXTRA_ELEMENT = b"\x95" + msgspec.msgpack.encode(["fuzz.point", 1, 2, ""])[1:] + DEEP


# ------------------------------------------------------------------------------------------- strategies

ext = st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=12))
scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=16) | st.binary(max_size=16) | ext
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=4)
    ),
    max_leaves=10,
)

placed = st.builds(
    Placed,
    order_id=st.integers(-(2**63), 2**63 - 1),
    customer=st.text(max_size=30),
    amount=st.floats(),
    items=st.lists(st.text(max_size=8), max_size=3),
    meta=st.dictionaries(st.text(max_size=6), st.integers(0, 1000), max_size=3),
    note=st.none() | st.text(max_size=10),
)
cancelled = st.builds(Cancelled, order_id=st.integers(0, 2**63 - 1), reason=st.binary(max_size=20))
point = st.builds(Point, x=st.integers(-(2**63), 2**63 - 1), y=st.integers(0, 9), label=st.text(max_size=10))


def _cancelled_payload(order_id: int, reason: bytes = b"") -> bytes:
    """A Cancelled as another producer could write it, including one its __post_init__ refuses."""
    return msgspec.msgpack.encode({"type": "fuzz.cancelled", "order_id": order_id, "reason": reason})


valid_payloads = st.one_of(placed, cancelled, point).map(ENCODE)
refused_by_validator = st.builds(_cancelled_payload, st.integers(-3, -1), st.binary(max_size=8))


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    payload = draw(valid_payloads)
    return payload[: draw(st.integers(0, max(len(payload) - 1, 0)))]


@st.composite
def wrong_structures(draw: st.DrawFn) -> bytes:
    """A known tag (or an unknown one) with fields of random names and types, as a map or an array."""
    tag = draw(st.sampled_from(TAGS) | st.text(max_size=12))
    if draw(st.booleans()):
        fields = draw(st.dictionaries(st.sampled_from(FIELDS), values, max_size=5))
        return msgspec.msgpack.encode({"type": tag, **fields})
    return msgspec.msgpack.encode([tag, *draw(st.lists(values, max_size=4))])


@st.composite
def with_trailing_bytes(draw: st.DrawFn) -> bytes:
    return draw(valid_payloads) + draw(st.binary(min_size=1, max_size=8) | valid_payloads)


around_the_cap = st.integers(CAP - 64, CAP + 64).map(lambda n: ENCODE(Placed(order_id=1, customer="x" * n)))

payloads = st.one_of(
    st.binary(max_size=64),
    around_the_cap,
    values.map(msgspec.msgpack.encode),
    valid_payloads,
    refused_by_validator,
    truncated(),
    wrong_structures(),
    with_trailing_bytes(),
    st.sampled_from([b"", DEEP, DEEP_UNKNOWN_FIELD, DEEP_EXTRA_ELEMENT, NOT_UTF8_TAG, NOT_UTF8_FIELD]),
    st.sampled_from([b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"]),  # claim 4 GiB of elements, bytes
)


@st.composite
def reframed(draw: st.DrawFn) -> list[bytes]:
    """Valid payloads cut at other boundaries: each piece alone is garbage, their concatenation is not."""
    whole = b"".join(draw(st.lists(valid_payloads, min_size=1, max_size=4)))
    cuts = sorted(draw(st.lists(st.integers(0, len(whole)), min_size=1, max_size=4)))
    bounds = [0, *cuts, len(whole)]
    return [whole[a:b] for a, b in itertools.pairwise(bounds)]


batches = st.lists(payloads | st.none(), max_size=8) | reframed()


# ------------------------------------------------------------------------------------------- oracles


def _check_one(decoder: Decoder, payload: bytes, result: object) -> None:
    if isinstance(result, DecodeFailure):
        expected_kind = "oversized" if len(payload) > decoder.max_event_bytes else "undecodable"
        assert result.kind == expected_kind
        assert result.error_type and isinstance(result.message, str)
    else:
        assert type(result) in decoder.event_types, result
        assert len(payload) <= decoder.max_event_bytes


def _same(left: object, right: object) -> bool:
    """Equal outcomes: the same event (compared by encoding, so NaN fields compare), or both failures."""
    if isinstance(left, DecodeFailure) or isinstance(right, DecodeFailure):
        both = isinstance(left, DecodeFailure) and isinstance(right, DecodeFailure)
        return both and left.kind == right.kind  # type: ignore[union-attr]  # both are DecodeFailures
    return type(left) is type(right) and msgspec.msgpack.encode(left) == msgspec.msgpack.encode(right)


# ------------------------------------------------------------------------------------------- properties


@settings(max_examples=400, deadline=None)
@given(payload=payloads)
@example(payload=DEEP_UNKNOWN_FIELD)
@example(payload=DEEP_EXTRA_ELEMENT)
@example(payload=_cancelled_payload(-1))
@example(payload=NOT_UTF8_TAG)
@example(payload=NOT_UTF8_FIELD)
def test_decode_turns_every_input_into_an_event_or_a_failure(payload: bytes) -> None:
    """Decoder.decode never raises: random bytes, wrong structures, truncations, unknown tags, deep nesting,
    a user validator raising, payloads over the cap: each ends as a declared event or a DecodeFailure."""
    for decoder in DECODERS:
        _check_one(decoder, payload, decoder.decode(payload))


@settings(max_examples=100, deadline=None)
@given(event=st.one_of(placed, cancelled, point))
def test_decode_round_trips_every_valid_event_within_the_cap(event: streamq.Event) -> None:
    """What the Encoder writes, the Decoder reads back unchanged (or refuses as oversized, never garbles)."""
    payload = ENCODE(event)
    decoder = ARRAY_DECODER if isinstance(event, Point) else MAP_DECODER
    result = decoder.decode(payload)
    if len(payload) > CAP:
        assert isinstance(result, DecodeFailure) and result.kind == "oversized"
    else:
        assert _same(result, event)


@settings(max_examples=300, deadline=None)
@given(batch=batches)
@example(batch=[b"", ENCODE(Placed(1, "a")) + ENCODE(Placed(2, "b"))])
@example(batch=[ENCODE(Placed(1, "a")) + ENCODE(Placed(2, "b"))[:5], ENCODE(Placed(2, "b"))[5:]])
@example(batch=[ENCODE(Placed(1, "a")), DEEP_UNKNOWN_FIELD, NOT_UTF8_TAG, NOT_UTF8_FIELD])
def test_decode_batch_decodes_exactly_as_one_by_one(batch: list[bytes | None]) -> None:
    """decode_batch gives, for each payload, what decoding it alone gives: the one-call fast path frames the
    payloads end to end, and a payload that is not exactly one msgpack value (truncated, or with trailing
    bytes) must not shift its neighbours' boundaries and make two wrong payloads decode as two events."""
    for decoder in DECODERS:
        results = decoder.decode_batch(batch)
        assert len(results) == len(batch)
        for payload, result in zip(batch, results, strict=True):
            if payload is None:
                assert isinstance(result, DecodeFailure) and result.kind == "undecodable"
                continue
            _check_one(decoder, payload, result)
            assert _same(result, decoder.decode(payload)), (payload, result)


@settings(max_examples=200, deadline=None)
@given(data=payloads)
@example(data=b"\x96\xa1\x80")  # origin_id is not UTF-8
@example(data=b"\x97" + encode_record(RetryRecord("1-0", 1, 0, 0, "", b"x"))[1:] + DEEP)
def test_retry_records_that_cannot_be_read_are_none(data: bytes) -> None:
    """decode_record (retry entries, replays) returns a RetryRecord or None for any bytes, never raises."""
    record = decode_record(data)
    assert record is None or isinstance(record, RetryRecord)


@settings(max_examples=200, deadline=None)
@given(payload=payloads)
@example(payload=DEEP)
@example(payload=NOT_UTF8_FIELD)
def test_dead_letter_preview_never_raises(payload: bytes) -> None:
    """`streamq dlq show` previews any dead payload as plain data, or shows none; it never fails on one."""
    letter = DeadLetter(
        dlq_id="1-0", stream="s", id="1-0", group="g", consumer="c", attempts=1, reason="undecodable",
        detail="", error_type="", error="", traceback="", first_failure_ms=0, last_failure_ms=0,
        payload=payload,
    )  # fmt: skip
    preview = letter.event_preview()
    msgspec.json.encode(preview)  # what `dlq show --json` prints must be printable
    letter.to_dict()


# ------------------------------------------------------------------------------------------- end to end


async def _run_worker_over(redis_url: str, batch: list[bytes]) -> None:
    stream = f"fuzz-{uuid.uuid4().hex[:10]}"
    group = "g"
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        ids = [(await client.xadd(stream, {PAYLOAD_FIELD: payload})).decode() for payload in batch]
        async with streamq.Producer(redis_url) as producer:
            sentinel_id = await producer.publish(stream, Placed(order_id=7, customer="after the fuzz"))

        handled: dict[str, Any] = {}
        app = streamq.App(redis_url)

        @app.consumer(stream, group=group, max_event_bytes=CAP, block_ms=50, lease_ms=5_000)
        async def handle(batch_in: streamq.Batch[Placed | Cancelled]) -> None:
            for message in batch_in:
                handled[message.id] = message.event

        await app.run(burst=True)  # returns, instead of raising, whatever the entries held

        payload_of = dict(zip(ids, batch, strict=True))
        expected = {entry_id: MAP_DECODER.decode(payload) for entry_id, payload in payload_of.items()}
        good = {i: e for i, e in expected.items() if not isinstance(e, DecodeFailure)}
        bad = {i: e for i, e in expected.items() if isinstance(e, DecodeFailure)}
        assert set(handled) == {*good, sentinel_id}
        for entry_id, event in good.items():
            assert _same(handled[entry_id], event)
        assert handled[sentinel_id] == Placed(order_id=7, customer="after the fuzz")

        letters = {letter.id: letter for letter in await DeadLetters(client).list(stream, count=100)}
        assert set(letters) == set(bad)
        for entry_id, failure in bad.items():
            assert letters[entry_id].payload == payload_of[entry_id]  # byte for byte
            assert letters[entry_id].reason == failure.kind
        assert (await client.xpending(stream, group))["pending"] == 0
    finally:
        await client.delete(stream, keys.dlq_key(stream), keys.stats_key(stream, group),
                            keys.retry_key(stream, group), keys.delayed_key(stream, group))  # fmt: skip
        await client.srem(keys.REGISTRY_KEY, stream)
        await client.aclose()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(payloads, min_size=1, max_size=8) | reframed())
@example(batch=[b"", ENCODE(Placed(1, "a")) + ENCODE(Placed(2, "b"))])
@example(batch=[NOT_UTF8_TAG, ENCODE(Placed(5, "e")), NOT_UTF8_FIELD])
@example(
    batch=[DEEP_UNKNOWN_FIELD, ENCODE(Placed(3, "c")), _cancelled_payload(-2), ENCODE(Placed(4, "x" * CAP))]
)
def test_burst_worker_dead_letters_exactly_the_undecodable_entries(
    redis_url: str, batch: list[bytes]
) -> None:
    """A real worker over fuzzed entries (XADDed raw): it dead-letters exactly the entries that do not
    decode on their own, with their bytes intact and the reason `undecodable` or `oversized`, hands every
    other one to the handler as the event it holds, acknowledges everything, and goes on to the valid event
    published after them."""
    asyncio.run(_run_worker_over(redis_url, batch))


@pytest.mark.parametrize("decoder", DECODERS, ids=["map", "array_like"])
def test_deep_nesting_under_the_cap_is_a_decode_failure(decoder: Decoder) -> None:
    """A kilobyte of nested arrays (deeper than Python's recursion limit) is refused as undecodable, alone
    and inside a batch of valid events, instead of raising RecursionError out of the worker."""
    deep = DEEP_EXTRA_ELEMENT if decoder is ARRAY_DECODER else DEEP_UNKNOWN_FIELD
    good = ENCODE(Point(1, 2)) if decoder is ARRAY_DECODER else ENCODE(Placed(1, "a"))
    assert len(deep) < decoder.max_event_bytes
    assert not isinstance(decoder.decode(deep[: -len(DEEP)] + b"\xc0"), DecodeFailure)  # shallow: fine
    failure = decoder.decode(deep)
    assert isinstance(failure, DecodeFailure) and failure.kind == "undecodable"
    first, second = decoder.decode_batch([good, deep])
    assert _same(first, decoder.decode(good))
    assert isinstance(second, DecodeFailure) and second.kind == "undecodable"
