"""streamq.events: tags, the codec, batch decoding, size caps and schema evolution."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import redis.asyncio

import streamq
from streamq import keys
from streamq.errors import UnknownEventType
from streamq.events import PAYLOAD_FIELD, DecodeFailure, Decoder, Encoder


class Deposit(streamq.Event, tag="test.events.deposit"):
    account: str
    cents: int


class Withdrawal(streamq.Event, tag="test.events.withdrawal"):
    account: str
    cents: int
    memo: str = ""


class Blob(streamq.Event, tag="test.events.blob"):
    data: bytes


class Untagged(streamq.Event):
    value: int


class SpecialDeposit(Deposit):
    """Inherits Deposit's tag: it would decode as a Deposit, so streamq refuses it."""

    bonus: int = 0


# ------------------------------------------------------------------------------------------------- tags


def test_encoding_an_event_without_a_tag_is_refused() -> None:
    """An Event subclass with no tag of its own cannot be encoded: its type would not survive the trip."""
    with pytest.raises(UnknownEventType, match="no tag"):
        Encoder().encode(Untagged(1))


def test_decoder_for_an_untagged_type_is_refused() -> None:
    """A consumer cannot be built for an untagged type either."""
    with pytest.raises(UnknownEventType, match="no tag"):
        Decoder([Untagged])


def test_handler_for_an_untagged_type_is_refused_when_registered() -> None:
    """The error comes when the app is defined, not later when events arrive."""
    app = streamq.App("redis://127.0.0.1:1/0")

    async def handle(batch: streamq.Batch[Untagged]) -> None:
        return None

    with pytest.raises(UnknownEventType):
        app.consumer("s", group="g")(handle)


def test_inherited_tag_is_refused() -> None:
    """A subclass that inherits its parent's tag is refused on encode and in a decoder."""
    with pytest.raises(UnknownEventType, match="inherits the tag"):
        Encoder().encode(SpecialDeposit("a", 1, 2))
    with pytest.raises(UnknownEventType, match="inherits the tag"):
        Decoder([SpecialDeposit])


def test_tag_travels_in_the_payload() -> None:
    """The tag, not the class name or module, names the type on the wire."""
    payload = Encoder().encode(Deposit("acc-1", 500))
    expected = {"type": "test.events.deposit", "account": "acc-1", "cents": 500}
    assert msgspec.msgpack.decode(payload) == expected


def test_encoding_something_that_is_not_an_event_raises_type_error() -> None:
    """Plain dicts, plain msgspec Structs and other values are refused with TypeError."""
    encoder = Encoder()
    with pytest.raises(TypeError, match="dict"):
        encoder.encode({"account": "a", "cents": 1})  # type: ignore[arg-type]

    class Plain(msgspec.Struct, tag="test.events.plain"):
        x: int

    with pytest.raises(TypeError, match="Plain"):
        encoder.encode(Plain(1))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- decoding


def test_several_types_per_stream_decode_in_one_batch() -> None:
    """A decoder over a union of types decodes a mixed batch into the right classes, in order."""
    events: list[Any] = [Deposit("a", 1), Withdrawal("a", 2, "rent"), Deposit("b", 3), Withdrawal("b", 4)]
    payloads: list[bytes | None] = list(Encoder().encode_many(events))
    decoded = Decoder([Deposit, Withdrawal]).decode_batch(payloads)
    assert decoded == events
    assert [type(e) for e in decoded] == [Deposit, Withdrawal, Deposit, Withdrawal]


def test_decode_batch_isolates_bad_payloads() -> None:
    """Garbage, a missing payload, an unknown tag and a wrong field type each fail alone; the good
    payloads around them still decode."""
    encoder = Encoder()
    good = [Deposit("a", 1), Deposit("b", 2), Deposit("c", 3)]
    payloads: list[bytes | None] = [
        encoder.encode(good[0]),
        b"\xc1\xff not msgpack",
        encoder.encode(good[1]),
        None,
        msgspec.msgpack.encode({"type": "test.events.nobody", "x": 1}),
        msgspec.msgpack.encode({"type": "test.events.deposit", "account": "a", "cents": "lots"}),
        encoder.encode(good[2]),
    ]
    decoded = Decoder([Deposit]).decode_batch(payloads)
    assert [decoded[0], decoded[2], decoded[6]] == good
    failures = [decoded[i] for i in (1, 3, 4, 5)]
    assert all(isinstance(f, DecodeFailure) and f.kind == "undecodable" for f in failures)
    assert failures[1].error_type == "MissingPayload"  # type: ignore[union-attr]


def test_decoder_refuses_oversized_payloads_before_decoding() -> None:
    """A payload above max_event_bytes is an 'oversized' failure, whether alone or in a batch."""
    small = Encoder().encode(Blob(b"x"))
    big = Encoder().encode(Blob(b"x" * 500))
    decoder = Decoder([Blob], max_event_bytes=100)
    failure = decoder.decode(big)
    assert isinstance(failure, DecodeFailure) and failure.kind == "oversized"
    decoded = decoder.decode_batch([small, big, small])
    assert decoded[0] == Blob(b"x") == decoded[2]
    assert isinstance(decoded[1], DecodeFailure) and decoded[1].kind == "oversized"


def test_encoder_enforces_the_size_cap() -> None:
    """An encoded event over max_event_bytes raises EventTooLarge with the sizes."""
    with pytest.raises(streamq.EventTooLarge) as caught:
        Encoder(max_event_bytes=64).encode(Blob(b"y" * 100))
    assert caught.value.limit == 64
    assert caught.value.size > 100


def test_schema_evolution_new_field_with_default_reads_old_payloads() -> None:
    """An event class that gained a field with a default still decodes payloads written before."""

    class OldWithdrawal(msgspec.Struct, tag="test.events.withdrawal"):
        # What the producer's Withdrawal looked like before `memo` was added (a plain Struct, so it does
        # not register as a second Event class with the same tag).
        account: str
        cents: int

    old_payload = msgspec.msgpack.encode(OldWithdrawal("acc", 9))
    assert Decoder([Deposit, Withdrawal]).decode(old_payload) == Withdrawal("acc", 9, "")


def test_unknown_fields_from_newer_producers_are_ignored() -> None:
    """A payload from a newer producer with an extra field still decodes (no forbid_unknown_fields)."""
    newer = msgspec.msgpack.encode(
        {"type": "test.events.deposit", "account": "a", "cents": 1, "currency": "EUR"}
    )
    assert Decoder([Deposit]).decode(newer) == Deposit("a", 1)


# ------------------------------------------------------------------------------------- against a server


async def test_publish_refuses_non_events_and_writes_nothing(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """publish_many with one wrong value raises TypeError before anything of the call is written."""
    async with streamq.Producer(redis_url) as producer:
        with pytest.raises(TypeError):
            await producer.publish_many(unique, [Deposit("a", 1), "not an event"])  # type: ignore[list-item]
        with pytest.raises(TypeError):
            await producer.publish(unique, Untagged(1))
    assert await client.exists(unique) == 0


async def test_oversized_payload_is_dead_lettered_on_consume(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A payload over the consumer's max_event_bytes goes to the dead-letter stream unretried, byte for
    byte, while the normal-sized events around it are handled."""
    async with streamq.Producer(redis_url) as producer:
        ids = await producer.publish_many(unique, [Blob(b"a"), Blob(b"b" * 400), Blob(b"c")])
    seen: list[bytes] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", max_event_bytes=128, lease_ms=1_000, block_ms=100)
    async def handle(batch: streamq.Batch[Blob]) -> None:
        seen.extend(event.data for event in batch.events)

    await app.run_until_idle()
    assert seen == [b"a", b"c"]
    (letter,) = await streamq.DeadLetters(client).list(unique)
    assert (letter.id, letter.reason, letter.attempts) == (ids[1], "oversized", 1)
    (original,) = await client.xrange(unique, min=ids[1], max=ids[1])
    assert letter.payload == original[1][PAYLOAD_FIELD]
    assert int((await client.xpending(unique, "g"))["pending"]) == 0
    assert await client.zcard(keys.delayed_key(unique, "g")) == 0


async def test_mixed_types_reach_one_handler_in_one_batch(redis_url: str, unique: str) -> None:
    """A handler annotated with a union receives events of every listed type from one stream, in order."""
    events: list[Deposit | Withdrawal] = [Deposit("a", 1), Withdrawal("a", 1), Deposit("b", 5)]
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, events)
    batches: list[list[Any]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", lease_ms=1_000, block_ms=100)
    async def handle(batch: streamq.Batch[Deposit | Withdrawal]) -> None:
        batches.append(batch.events)

    await app.run_until_idle()
    assert batches == [events]
