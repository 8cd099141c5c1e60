"""`streamq publish`: events from JSON, checked by their class, published as a producer would."""

from __future__ import annotations

import io
import sys
import uuid
from pathlib import Path

import msgspec
import pytest
import redis
from cli_app import Ping

import streamq
from streamq.cli import main


class Parcel(streamq.Event, tag="test.cli_publish.parcel"):
    weight: int
    label: str = ""


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def _payloads(client: redis.Redis, stream: str) -> list[dict[str, object]]:
    return [msgspec.msgpack.decode(fields[b"d"]) for _, fields in client.xrange(stream)]


def test_json_lines_are_checked_by_the_class_and_published(
    redis_url: str, sync_client: redis.Redis, unique: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """JSON lines from stdin become events of the class the tag names (found with --events module), encoded
    as the producer encodes them; the ids are printed one per line."""
    _stdin(monkeypatch, '{"weight": 1}\n\n{"weight": 2, "label": "b", "type": "test.cli_publish.parcel"}\n')
    args = ["publish", unique, "--type", Parcel.__struct_config__.tag, "--events", __name__]
    assert main([*args, "--redis-url", redis_url]) == 0
    ids = capsys.readouterr().out.split()
    assert ids == [i.decode() for i, _ in sync_client.xrange(unique)]
    decoder = msgspec.msgpack.Decoder(Parcel)
    assert [decoder.decode(f[b"d"]) for _, f in sync_client.xrange(unique)] == [Parcel(1), Parcel(2, "b")]


def test_an_invalid_line_publishes_nothing(
    redis_url: str, sync_client: redis.Redis, unique: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A line the class refuses fails the command (exit 1) naming the line and the field, before anything
    is published; a tag no class has is a usage error (exit 2)."""
    _stdin(monkeypatch, '{"weight": 1}\n{"weight": "heavy"}\n')
    args = [
        "publish",
        unique,
        "--type",
        "test.cli_publish.parcel",
        "--events",
        __name__,
        "--redis-url",
        redis_url,
    ]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert "line 2" in error and "$.weight" in error and "nothing was published" in error
    assert sync_client.exists(unique) == 0
    assert main([*args[:3], "test.cli_publish.nobody", *args[4:], "--data", "{}"]) == 2
    assert "no event class tagged" in capsys.readouterr().err
    assert main(["publish", unique, "--type", "x", "--data", "{}", "--redis-url", redis_url]) == 2


def test_raw_json_is_published_as_an_event_of_the_tag(
    redis_url: str, sync_client: redis.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--raw publishes the object unchecked, as a map with the tag under `type`, any field name kept, so a
    worker decodes it with the class; --dedup-key publishes it once; --delay schedules it."""
    tag = f"test.cli_publish.raw-{uuid.uuid4().hex[:8]}"  # a tag of its own: --raw makes an Event class
    data = '{"weight": 7, "odd name": [1, 2]}'
    base = ["publish", unique, "--type", tag, "--raw", "--data", data, "--redis-url", redis_url]
    assert main([*base, "--dedup-key", "k1"]) == 0
    assert main([*base, "--dedup-key", "k1", "--json"]) == 0
    out = capsys.readouterr().out
    first = out.split()[0]
    assert msgspec.json.decode(out[out.index("{") :])["duplicates"] == [first]
    assert _payloads(sync_client, unique) == [{"type": tag, "weight": 7, "odd name": [1, 2]}]
    assert main([*base, "--delay", "600000"]) == 0
    assert capsys.readouterr().out.startswith("sched-")
    assert main([*base[:6], '{"type": "other"}', *base[7:]]) == 1


def test_the_class_is_found_in_the_app(
    redis_url: str, sync_client: redis.Redis, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """--app module:app finds the tag among the event types of the app's consumers and checks the JSON by
    it; an app that does not load is a usage error."""
    module = f"publish_app_{unique.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(f"from cli_app import make_app\napp = make_app({unique!r}, 'g')\n")
    monkeypatch.chdir(tmp_path)
    args = ["publish", unique, "--type", Ping.__struct_config__.tag, "--redis-url", redis_url]
    assert main([*args, "--app", f"{module}:app", "--data", '{"n": 5}']) == 0
    assert main([*args, "--app", f"{module}:app", "--data", '{"n": "five"}']) == 1
    assert "$.n" in capsys.readouterr().err
    assert main([*args, "--app", f"{module}:nothing", "--data", '{"n": 5}']) == 2
    decoder = msgspec.msgpack.Decoder(Ping)
    assert [decoder.decode(f[b"d"]) for _, f in sync_client.xrange(unique)] == [Ping(5)]
