"""The chaos workload: the event type, what the handler does with each event, and the malformed entries.

Every event carries a uuid (its identity in the ledger) and a sequence number. Its `kind` tells the handler
how to behave, so the expected end of every event is known in advance:

    ok       the handler succeeds: the event must end acknowledged
    flaky    the handler fails attempts 1..fail_times (1 or 2), then succeeds: it must end acknowledged
    poison   the handler always fails: it must end in the dead-letter stream after max_attempts

Flakiness is keyed on the attempt number, not on a coin toss in the worker: a delivery lost to a crash
counts as an attempt in streamq, so a crash can only shorten an event's run of failures, never lengthen it.

Malformed entries are written with raw XADD, bypassing the producer, and must all be dead-lettered by the
decoder without reaching the handler. Each holds its uuid somewhere in its bytes, so its dead letter can be
matched byte for byte with what was written (its "signature": the `d` field, or the msgpack of the
entry's fields when it has no `d` field, which is what streamq keeps in the dead letter's `raw` field).
"""

from __future__ import annotations

import random
import uuid as uuidlib
from dataclasses import dataclass

import msgspec

from streamq import Event

OK, FLAKY, POISON = "ok", "flaky", "poison"
GARBAGE, OVERSIZED, NO_PAYLOAD_FIELD, UNKNOWN_TAG, WRONG_TYPES = (
    "garbage",
    "oversized",
    "no_payload_field",
    "unknown_tag",
    "wrong_types",
)
MALFORMED_KINDS = (GARBAGE, OVERSIZED, NO_PAYLOAD_FIELD, UNKNOWN_TAG, WRONG_TYPES)
# The dead letter's `reason` each malformed kind must get.
MALFORMED_REASONS = {
    GARBAGE: "undecodable",
    OVERSIZED: "oversized",
    NO_PAYLOAD_FIELD: "undecodable",
    UNKNOWN_TAG: "undecodable",
    WRONG_TYPES: "undecodable",
}


class ChaosEvent(Event, tag="chaos.event"):
    """One event of the chaos run."""

    uuid: str
    seq: int
    kind: str = OK
    fail_times: int = 0  # flaky events: the handler fails attempts 1..fail_times
    pad: str = ""


_encode = msgspec.msgpack.Encoder().encode


def encode(event: ChaosEvent) -> bytes:
    """The payload bytes the producer writes for `event` (msgspec encodes deterministically)."""
    return _encode(event)


def handler_succeeds(event: ChaosEvent, attempt: int) -> bool:
    """What the chaos handler does with this event on this attempt."""
    if event.kind == POISON:
        return False
    if event.kind == FLAKY:
        return attempt > event.fail_times
    return True


def new_uuid(rng: random.Random) -> str:
    return str(uuidlib.UUID(int=rng.getrandbits(128), version=4))


def plan_events(rng: random.Random, count: int, *, poison_rate: float, flaky_rate: float) -> list[ChaosEvent]:
    """`count` events in publishing order, with poison and flaky ones drawn from `rng`."""
    events = []
    for seq in range(count):
        draw = rng.random()
        if draw < poison_rate:
            event = ChaosEvent(uuid=new_uuid(rng), seq=seq, kind=POISON)
        elif draw < poison_rate + flaky_rate:
            event = ChaosEvent(uuid=new_uuid(rng), seq=seq, kind=FLAKY, fail_times=rng.choice((1, 2)))
        else:
            event = ChaosEvent(uuid=new_uuid(rng), seq=seq)
        events.append(event)
    return events


@dataclass(frozen=True, slots=True)
class Malformed:
    """One malformed entry: the fields to XADD, and the bytes its dead letter must keep."""

    uuid: str
    seq: int
    kind: str
    fields: list[bytes]  # flat [field, value, ...] as given to XADD
    signature: bytes  # the dead letter's `d` value, or its `raw` value when there is no `d` field


def malformed(rng: random.Random, kind: str, seq: int, max_event_bytes: int) -> Malformed:
    """A malformed entry of `kind` that streamq must dead-letter without calling the handler."""
    uid = new_uuid(rng)
    if kind == GARBAGE:
        # 0xc1 is the one byte msgpack never uses: no decoder can read past it.
        payload = b"\xc1chaos-garbage:" + uid.encode() + rng.randbytes(16)
    elif kind == OVERSIZED:
        payload = encode(ChaosEvent(uuid=uid, seq=seq, pad="x" * (max_event_bytes + 64)))
    elif kind == UNKNOWN_TAG:
        payload = msgspec.msgpack.encode({"type": "chaos.unknown", "uuid": uid, "seq": seq})
    elif kind == WRONG_TYPES:
        payload = msgspec.msgpack.encode({"type": "chaos.event", "uuid": uid, "seq": "seven", "kind": 3})
    elif kind == NO_PAYLOAD_FIELD:
        fields = [b"x", b"chaos", b"uuid", uid.encode()]
        return Malformed(uid, seq, kind, fields, msgspec.msgpack.encode(fields))
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return Malformed(uid, seq, kind, [b"d", payload], payload)


def uuid_in(signature: bytes) -> str | None:
    """Best effort: the uuid inside a payload that did not match any known signature (for diagnostics)."""
    try:
        data = msgspec.msgpack.decode(signature)
    except msgspec.DecodeError:
        return None
    if isinstance(data, dict) and isinstance(data.get("uuid"), str):
        return str(data["uuid"])
    return None
