"""The one event every contender moves: a ~100-byte msgspec Struct encoded with msgpack.

Measures nothing itself. It fixes the payload so that figures are comparable: the redis-py baselines XADD
``PAYLOAD`` as the single field ``data``; the peers, whose envelopes are JSON, carry ``PAYLOAD_TEXT`` (the
same bytes in base64); streamq encodes an equal ``Reading`` through its own codec.
"""

from __future__ import annotations

import base64

import msgspec

# The stream field the baselines write the payload under (taskiq-redis uses the same name).
PAYLOAD_FIELD = b"data"


class Reading(msgspec.Struct, frozen=True):
    """A sensor reading: a few ints, floats and short strings, 102 bytes as msgpack."""

    device_id: int
    seq: int
    ts_ms: int
    temp_c: float
    humidity: float
    site: str
    status: str


SAMPLE = Reading(
    device_id=40417,
    seq=1234567,
    ts_ms=1767225600000,
    temp_c=21.5,
    humidity=48.25,
    site="plant-7/line-3",
    status="ok",
)

# Built once and reused, as msgspec recommends.
ENCODER = msgspec.msgpack.Encoder()
DECODER = msgspec.msgpack.Decoder(Reading)

PAYLOAD: bytes = ENCODER.encode(SAMPLE)
# For peers whose message envelope is JSON and cannot hold raw bytes.
PAYLOAD_TEXT: str = base64.b64encode(PAYLOAD).decode("ascii")
