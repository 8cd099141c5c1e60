"""The `streamq` command, run in-process through main(argv) against every test server.

Workers run for real (`worker --burst` returns once the stream is drained), so the dead letters that the
dlq commands list, show, replay and purge were made by a worker, not written by hand. The demo runs as a
subprocess, the way people run it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import structlog
from cli_app import Ping
from helpers import wait_until

import streamq._cli_output
import streamq.cli
import streamq.errors
import streamq.exit_codes
from streamq import SyncProducer, keys
from streamq._cli_output import SHOW_FIELD_BYTES
from streamq._connection import ENV_URL
from streamq._demo_app import STREAM_ENV
from streamq._logs import configure_logging
from streamq.cli import ABANDONED, FAILURE, INTERRUPTED, OK, USAGE, main

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = str(Path(__file__).resolve().parent)
DEMO_TIMEOUT_S = 90.0  # the demo takes a few seconds; this only stops a hung one

COMMANDS = [
    [], ["worker"], ["status"], ["dlq"], ["demo"],
    ["dlq", "list"], ["dlq", "show"], ["dlq", "replay"], ["dlq", "purge"],
    ["trim"], ["group"], ["group", "delete"], ["scheduled"], ["scheduled", "list"], ["scheduled", "cancel"],
    ["pause"], ["resume"],
]  # fmt: skip


class Names:
    """This test's stream, group and app module names."""

    def __init__(self, unique: str) -> None:
        self.stream = f"{unique}-orders"
        self.group = f"{unique}-billing"
        self.module = f"cliapp_{unique.replace('-', '_')}"


@pytest.fixture
def names(unique: str) -> Iterator[Names]:
    chosen = Names(unique)
    yield chosen
    sys.modules.pop(chosen.module, None)


class Cli:
    """main(argv) with the test server's URL appended, returning (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
        self.capsys = capsys
        self.redis_url = redis_url

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--redis-url", self.redis_url])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == OK, err
        return json.loads(out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], redis_url: str) -> Cli:
    return Cli(capsys, redis_url)


@pytest.fixture
def app_dir(tmp_path: Path, names: Names, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's app module in a directory of its own, made the cwd: the worker imports from there."""
    (tmp_path / f"{names.module}.py").write_text(
        "from cli_app import make_app\n"
        f"app = make_app({names.stream!r}, {names.group!r})\n"
        f"fixed = make_app({names.stream!r}, {names.group!r}, reject_negative=False)\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the worker adds the cwd to sys.path: undo that after
    return tmp_path


def stats(sync_client: redis.Redis, names: Names) -> dict[str, int]:
    raw = sync_client.hgetall(keys.stats_key(names.stream, names.group))
    return {k.decode(): int(v) for k, v in raw.items()}


def id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


# ---------------------------------------------------------------------------------------------- usage


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "streamq")
def test_help_of_every_command_exits_ok_and_shows_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--help` on the program and on every command prints usage with an examples epilog and returns OK."""
    assert main([*command, "--help"]) == OK
    out = capsys.readouterr().out
    assert out.startswith("usage: streamq")
    assert "examples:" in out


def test_missing_commands_unknown_options_and_bad_values_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Argument errors return USAGE (2) with argparse's message, never a traceback."""
    assert main([]) == USAGE
    assert main(["status", "--no-such-option"]) == USAGE
    assert main(["dlq", "list", "s", "--count", "0"]) == USAGE
    assert main(["dlq", "list", "s", "--limit", "0"]) == USAGE
    assert main(["worker", "cli_app:app", "--connect-timeout-ms", "0"]) == USAGE
    assert main(["--log-level", "loud", "status"]) == USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_dead_letter_ids_that_are_not_ids_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """A DLQ_ID (or --after) that is not a whole entry id is a USAGE error before anything is done:
    `1712345678901` alone would be read by XRANGE as every entry of that millisecond."""
    for argv in (
        ["dlq", "show", "s", "1712345678901"],
        ["dlq", "list", "s", "--after", "last"],
        ["dlq", "replay", "s", "1-1", "oops"],
        ["dlq", "purge", "s", "1-1", "1-"],
    ):
        assert main(argv) == USAGE, argv
        assert "is not a dead-letter id" in capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    assert main(["--version"]) == OK
    assert capsys.readouterr().out.startswith("streamq ")


def test_exit_codes_are_the_documented_numbers() -> None:
    """The exit codes are the conventional numbers that scripts test for."""
    assert (OK, FAILURE, USAGE, ABANDONED, INTERRUPTED) == (0, 1, 2, 3, 130)


def test_names_moved_out_of_cli_stay_importable_from_it() -> None:
    """The exit codes (now in exit_codes.py), AppLoadError (now in errors.py) and the table formatters (in
    cli_output.py) are still streamq.cli's public names, where the demo and users' scripts import them
    from; cli_output re-exports the same exit codes."""
    assert all(hasattr(streamq.cli, name) for name in streamq.cli.__all__)
    for name in ["OK", "FAILURE", "USAGE", "ABANDONED", "INTERRUPTED"]:
        assert name in streamq.cli.__all__
        assert getattr(streamq.cli, name) == getattr(streamq.exit_codes, name)
        assert getattr(streamq._cli_output, name) == getattr(streamq.exit_codes, name)
    for name in ["format_table", "format_status", "format_dead_letters"]:
        assert name in streamq.cli.__all__
        assert getattr(streamq.cli, name) is getattr(streamq._cli_output, name)
    assert streamq.cli.AppLoadError is streamq.errors.AppLoadError
    assert issubclass(streamq.cli.AppLoadError, streamq.errors.ConfigurationError)


def test_worker_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """`worker --help` says what each exit code means, ABANDONED (3) included."""
    assert main(["worker", "--help"]) == OK
    out = capsys.readouterr().out
    assert (
        "3: the shutdown grace period ran out with batches in flight (they stay pending and are reclaimed)"
        in out
    )
    assert "130: " in out and "--connect-timeout-ms" in out


def test_unreachable_redis_fails_without_showing_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    """A server refusing connections is a FAILURE with a one-line message that redacts the password."""
    code = main(["status", "s", "--redis-url", "redis://user:hunter2@127.0.0.1:1/0"])
    err = capsys.readouterr().err
    assert code == FAILURE
    assert "cannot reach Redis at redis://user:***@127.0.0.1:1/0" in err
    assert "hunter2" not in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------- logging


def test_json_logs_have_iso_timestamps_levels_and_redacted_urls(capsys: pytest.CaptureFixture[str]) -> None:
    """JSON logging writes one object per line to stderr, filters by level and redacts Redis passwords."""
    configure_logging("info", json=True)
    log = structlog.get_logger("test")
    log.debug("hidden")
    log.info("connected", redis="rediss://app:s3cret@cache:6380/0", note="plain text")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["connected"]
    (line,) = lines
    assert line["redis"] == "rediss://app:***@cache:6380/0"
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]


class _RecordingStderr(io.StringIO):
    """A stderr that remembers each write() call, as the OS would see it with PYTHONUNBUFFERED."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_each_log_line_reaches_stderr_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line and its newline go out in one write(), so the children of a process pool, sharing one
    stderr, cannot interleave halves of their lines when they log at the same instant (print() wrote the
    newline separately, and two children's lines became one unparseable line)."""
    recording = _RecordingStderr()
    monkeypatch.setattr(sys, "stderr", recording)
    configure_logging("info", json=True)
    log = structlog.get_logger("test")
    for n in range(3):
        log.info("stopping", n=n)
    assert len(recording.calls) == 3
    assert all(call.endswith("\n") and call.count("\n") == 1 for call in recording.calls)
    assert [json.loads(call)["n"] for call in recording.calls] == [0, 1, 2]


def test_console_logs_are_text_redacted_and_filtered_by_level(capsys: pytest.CaptureFixture[str]) -> None:
    """Console logging is plain text, still redacted; debug lines show at debug level; bad levels refused."""
    configure_logging("debug", json=False)
    structlog.get_logger("test").debug("probe", url="redis://:pw@h:1/0")
    err = capsys.readouterr().err
    assert "probe" in err and "redis://:***@h:1/0" in err and "pw@" not in err
    assert not err.lstrip().startswith("{")
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("verbose")


# ---------------------------------------------------------------------------------------------- worker


def test_worker_burst_runs_an_app_from_the_current_directory(
    cli: Cli, redis_url: str, sync_client: redis.Redis, names: Names, app_dir: Path
) -> None:
    """`worker module:app --burst` imports the app from the cwd, hands it --redis-url, drains, exits OK."""
    SyncProducer(sync_client).publish_many(names.stream, [Ping(n=i) for i in range(120)])
    code, _, err = cli("worker", f"{names.module}:app", "--burst", "--log-json", "--no-uvloop")
    assert code == OK, err
    assert stats(sync_client, names)["acked"] == 120
    assert sync_client.xpending(names.stream, names.group)["pending"] == 0
    assert sys.modules[names.module].app.redis == redis_url
    events = [json.loads(line)["event"] for line in err.splitlines()]
    assert "worker starting" in events and "worker stopped" in events


def test_worker_connect_timeout_ms_bounds_the_wait_for_an_unreachable_server(
    capsys: pytest.CaptureFixture[str], names: Names, app_dir: Path
) -> None:
    """`worker --connect-timeout-ms N` gives up on a server unreachable at start after N ms (a burst run
    otherwise waits 30 s): FAILURE, saying so."""
    started = time.monotonic()
    code = main(["worker", f"{names.module}:app", "--burst", "--connect-timeout-ms", "300",
                 "--redis-url", "redis://127.0.0.1:1/0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == FAILURE, err
    assert time.monotonic() - started < 15
    assert "unreachable for 300 ms" in err


def test_worker_finishes_and_exits_ok_on_sigterm(
    redis_url: str, sync_client: redis.Redis, names: Names, app_dir: Path
) -> None:
    """A worker run without --burst processes until SIGTERM, then stops cleanly: exit OK, nothing pending."""
    # cli_app lives in tests/, which the worker process would not otherwise find.
    paths = [TESTS_DIR, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, "-m", "streamq", "worker", f"{names.module}:app", "--redis-url", redis_url]
    worker = subprocess.Popen(command, cwd=app_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        SyncProducer(sync_client).publish_many(names.stream, [Ping(n=i) for i in range(10)])
        wait_until(lambda: stats(sync_client, names).get("acked") == 10, timeout_s=30,
                   message="the worker to acknowledge 10 pings")  # fmt: skip
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == OK, err
    assert "stopping: finishing batches in hand" in err
    assert sync_client.xpending(names.stream, names.group)["pending"] == 0


@pytest.mark.parametrize(
    ("app_path", "message"),
    [
        ("no_colon_here", "must look like module:attribute"),
        ("no_such_module_anywhere:app", "cannot import 'no_such_module_anywhere'"),
        ("cli_app:missing", "has no attribute 'missing'"),
        ("cli_app:Ping", "not a streamq.App"),
    ],
)
def test_worker_refuses_an_app_path_that_names_no_app(cli: Cli, app_path: str, message: str) -> None:
    """An APP_PATH that is malformed, unimportable or not an App is a USAGE error naming the problem."""
    code, _, err = cli("worker", app_path, "--burst")
    assert code == USAGE
    assert message in err


# ---------------------------------------------------------------------------------------------- status


def test_status_json_shows_a_stream_after_a_burst_worker(
    cli: Cli, sync_client: redis.Redis, names: Names, app_dir: Path
) -> None:
    """`status STREAM --json` gives length, dead letters and the group's consumers, pending, lag, counters."""
    SyncProducer(sync_client).publish_many(names.stream, [Ping(n=1), Ping(n=-1), Ping(n=2)])
    assert cli("worker", f"{names.module}:app", "--burst")[0] == OK
    (state,) = cli.json("status", names.stream)
    assert state["stream"] == names.stream
    assert state["length"] == 3
    assert state["dead_letters"] == 1
    (group,) = state["groups"]
    assert group["name"] == names.group
    assert group["consumers"] == 0  # a worker that stops holding nothing leaves the group
    assert group["pending"] == 0
    assert group["lag"] in (0, None)  # None: a server that cannot tell
    assert group["retries_waiting"] == 0
    assert group["stats"]["acked"] == 2 and group["stats"]["dead"] == 1

    code, out, _ = cli("status")  # no names: every stream that has had a worker, as a table
    assert code == OK
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["STREAM", "LENGTH", "DEAD"]
    assert any(row.split()[:4] == [names.stream, "3", "1", names.group] for row in rows)


def test_status_of_a_missing_stream_says_so(cli: Cli, names: Names) -> None:
    """A stream that does not exist is shown as such, not as an error."""
    code, out, _ = cli("status", names.stream)
    assert code == OK
    assert "(no such stream)" in out


def test_status_of_a_key_that_is_not_a_stream_names_its_type(
    cli: Cli, sync_client: redis.Redis, names: Names
) -> None:
    """A key that holds something else (a hash, a string) is shown as that, not as a missing stream."""
    sync_client.hset(names.stream, "field", "value")
    sync_client.set(f"{names.stream}-s", "value")
    code, out, _ = cli("status", names.stream, f"{names.stream}-s")
    assert code == OK
    assert f"({names.stream} is a hash, not a stream)" in out
    assert f"({names.stream}-s is a string, not a stream)" in out
    assert "no such stream" not in out
    hash_key, string_key = cli.json("status", names.stream, f"{names.stream}-s")
    assert (hash_key["key_type"], hash_key["exists"], string_key["key_type"]) == ("hash", False, "string")


def test_status_json_shows_every_counter_even_at_zero(
    cli: Cli, sync_client: redis.Redis, names: Names, app_dir: Path
) -> None:
    """`status --json` gives every counter the worker keeps, those still at 0 included (deferred, which
    the worker writes, among them), instead of leaving them out."""
    SyncProducer(sync_client).publish_many(names.stream, [Ping(n=1), Ping(n=2)])
    assert cli("worker", f"{names.module}:app", "--burst")[0] == OK
    ((group,),) = [state["groups"] for state in cli.json("status", names.stream)]
    assert group["stats"] == {
        "acked": 2, "retried": 0, "deferred": 0, "dead": 0, "reclaimed": 0, "lease_lost": 0,
        "deleted_pending": 0,
    }  # fmt: skip
    code, out, _ = cli("status", names.stream)
    assert code == OK
    assert "DEFERRED" in out.splitlines()[0] and "OTHER" not in out  # zeros are no news


# ---------------------------------------------------------------------------------------------- dlq


class DeadLetterIds:
    """Dead-letter ids of the three kinds the fixture makes."""

    def __init__(self, rejected: str, garbage: str, fieldless: str) -> None:
        self.rejected = rejected
        self.garbage = garbage
        self.fieldless = fieldless


@pytest.fixture
def dead_letters(cli: Cli, sync_client: redis.Redis, names: Names, app_dir: Path) -> DeadLetterIds:
    """Three dead letters made by a real worker: a rejected ping, a payload that is no msgpack, no payload."""
    SyncProducer(sync_client).publish_many(names.stream, [Ping(n=1), Ping(n=-7)])
    garbage = sync_client.xadd(names.stream, {"d": b"\xc1poison"}).decode()
    fieldless = sync_client.xadd(names.stream, {"x": b"no d field"}).decode()
    code, _, err = cli("worker", f"{names.module}:app", "--burst")
    assert code == OK, err
    letters = cli.json("dlq", "list", names.stream)["dead_letters"]
    by_event = {letter["id"]: letter for letter in letters}
    assert len(by_event) == 3
    rejected = next(letter for letter in letters if letter["reason"] == "rejected")
    return DeadLetterIds(rejected["dlq_id"], by_event[garbage]["dlq_id"], by_event[fieldless]["dlq_id"])


def test_dlq_list_shows_what_the_worker_dead_lettered(
    cli: Cli, names: Names, dead_letters: DeadLetterIds
) -> None:
    """`dlq list` shows each dead letter's id, group, attempts and reason; --group and --count filter it."""
    code, out, _ = cli("dlq", "list", names.stream)
    assert code == OK
    header, *rows = out.splitlines()
    assert header.split()[:2] == ["DLQ", "ID"]
    made = [dead_letters.rejected, dead_letters.garbage, dead_letters.fieldless]
    assert [row.split()[0] for row in rows] == sorted(made, key=id_order)  # oldest first
    assert sum("undecodable" in row for row in rows) == 2
    assert sum("rejected" in row for row in rows) == 1
    assert all(names.group in row for row in rows)

    assert len(cli.json("dlq", "list", names.stream, "--limit", "1")["dead_letters"]) == 1
    assert len(cli.json("dlq", "list", names.stream, "--count", "1")["dead_letters"]) == 1  # the old name
    code, out, _ = cli("dlq", "list", names.stream, "--group", "other")
    assert code == OK and out.startswith("no dead letters")


def test_dlq_list_pages_and_says_how_many_there_are(
    cli: Cli, names: Names, dead_letters: DeadLetterIds
) -> None:
    """`dlq list --limit N` says under the table (on stderr) how many there are in all, and, when more
    follow, the `--after` that shows the next page; the last page has no such hint. --json carries the
    total and next_after (null on the last page)."""
    made = sorted([dead_letters.rejected, dead_letters.garbage, dead_letters.fieldless], key=id_order)
    code, out, err = cli("dlq", "list", names.stream, "--limit", "2")
    assert code == OK
    assert [row.split()[0] for row in out.splitlines()[1:]] == made[:2]  # stdout: the table alone
    assert f"showing 2 of the 3 dead letters of {names.stream}" in err
    assert f"more: streamq dlq list {names.stream} --limit 2 --after {made[1]}" in err

    code, out, err = cli("dlq", "list", names.stream, "--limit", "2", "--after", made[1])
    assert code == OK
    assert [row.split()[0] for row in out.splitlines()[1:]] == made[2:]
    assert f"showing 1 of the 3 dead letters of {names.stream}" in err and "more:" not in err

    first = cli.json("dlq", "list", names.stream, "--limit", "2")
    assert (first["total"], first["next_after"]) == (3, made[1])
    assert [letter["dlq_id"] for letter in first["dead_letters"]] == made[:2]
    last = cli.json("dlq", "list", names.stream, "--after", made[1])
    assert (last["total"], last["next_after"], len(last["dead_letters"])) == (3, None, 1)


def test_dlq_list_of_a_group_says_how_many_it_scanned(
    cli: Cli, names: Names, dead_letters: DeadLetterIds
) -> None:
    """With --group, `dlq list` says how many of the stream's dead letters (all groups) it scanned to find
    the group's, and its next-page hint keeps the --group."""
    code, _, err = cli("dlq", "list", names.stream, "--group", names.group, "--limit", "1")
    assert code == OK
    assert f"showing 1 of group {names.group}'s dead letters, found among 1 scanned of the 3" in err
    assert f"more: streamq dlq list {names.stream} --group {names.group} --limit 1 --after" in err
    code, out, err = cli("dlq", "list", names.stream, "--group", "other")
    assert code == OK and out.startswith(f"no dead letters for {names.stream} in group other")
    assert "showing 0 of group other's dead letters, found among 3 scanned of the 3" in err
    page = cli.json("dlq", "list", names.stream, "--group", "other")
    assert (page["group"], page["total"], page["scanned"], page["dead_letters"]) == ("other", 3, 3, [])


def test_dlq_show_prints_every_field_with_the_payload_as_hex_and_a_preview(
    cli: Cli, names: Names, dead_letters: DeadLetterIds
) -> None:
    """`dlq show` gives every field; the payload as hex, and decoded as plain msgpack when it is msgpack."""
    rejected = cli.json("dlq", "show", names.stream, dead_letters.rejected)
    assert rejected["reason"] == "rejected"
    assert rejected["detail"] == "negative ping -7"
    assert rejected["group"] == names.group
    assert rejected["attempts"] == 1
    assert bytes.fromhex(rejected["payload"]) == msgspec.msgpack.encode(Ping(n=-7))
    assert rejected["event"] == {"type": "tests.cli.ping", "n": -7}

    garbage = cli.json("dlq", "show", names.stream, dead_letters.garbage)
    assert garbage["reason"] == "undecodable"
    assert garbage["payload"] == b"\xc1poison".hex()
    assert garbage["event"] is None

    fieldless = cli.json("dlq", "show", names.stream, dead_letters.fieldless)
    assert fieldless["payload"] is None
    assert msgspec.msgpack.decode(bytes.fromhex(fieldless["raw_fields"])) == [b"x", b"no d field"]

    code, out, _ = cli("dlq", "show", names.stream, dead_letters.garbage)
    assert code == OK
    fields = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert fields["reason"] == "undecodable"
    assert fields["payload"] == b"\xc1poison".hex()
    assert fields["event"] == "(not msgpack)"


def test_dlq_show_cuts_long_fields_unless_full(
    cli: Cli, sync_client: redis.Redis, names: Names, app_dir: Path
) -> None:
    """`dlq show` prints at most SHOW_FIELD_BYTES of each field (payload, raw fields, event preview), each
    cut one ending in "... N more bytes, use --full"; --full prints them whole. --json cuts the same
    fields, lists them in `truncated` with the bytes left out, and leaves out an event preview too long."""
    big = 10_000
    garbage = sync_client.xadd(names.stream, {"d": b"\xc1" * big}).decode()
    unknown = msgspec.msgpack.encode({"type": "tests.cli.nobody", "blob": "x" * big})
    preview = msgspec.json.encode(msgspec.msgpack.decode(unknown))
    not_ours = sync_client.xadd(names.stream, {"d": unknown}).decode()
    raw = sync_client.xadd(names.stream, {"x": b"y" * big}).decode()
    assert cli("worker", f"{names.module}:app", "--burst")[0] == OK
    dlq_id = {
        letter["id"]: letter["dlq_id"] for letter in cli.json("dlq", "list", names.stream)["dead_letters"]
    }

    code, out, _ = cli("dlq", "show", names.stream, dlq_id[garbage])
    assert code == OK
    fields = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    cut = big - SHOW_FIELD_BYTES
    assert fields["payload"] == "c1" * SHOW_FIELD_BYTES + f" ... {cut} more bytes, use --full"
    assert fields["payload_size"] == str(big)
    assert len(out) < 3 * SHOW_FIELD_BYTES * 2  # not the 20 kB of hex
    code, out, _ = cli("dlq", "show", names.stream, dlq_id[garbage], "--full")
    fields = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert code == OK and fields["payload"] == "c1" * big and "--full" not in out

    code, out, _ = cli("dlq", "show", names.stream, dlq_id[not_ours])
    fields = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert fields["event"] == preview[:SHOW_FIELD_BYTES].decode() + (
        f" ... {len(preview) - SHOW_FIELD_BYTES} more bytes, use --full"
    )
    code, out, _ = cli("dlq", "show", names.stream, dlq_id[raw])
    assert "raw_fields" in out and "more bytes, use --full" in out

    shown = cli.json("dlq", "show", names.stream, dlq_id[not_ours])
    assert shown["truncated"] == {"payload": len(unknown) - SHOW_FIELD_BYTES, "event": len(preview)}
    assert bytes.fromhex(shown["payload"]) == unknown[:SHOW_FIELD_BYTES]
    assert (shown["payload_size"], shown["event"]) == (len(unknown), None)
    whole = cli.json("dlq", "show", names.stream, dlq_id[not_ours], "--full")
    assert whole["truncated"] == {}
    assert bytes.fromhex(whole["payload"]) == unknown
    assert whole["event"] == {"type": "tests.cli.nobody", "blob": "x" * big}


def test_dlq_show_of_an_unknown_id_fails(cli: Cli, names: Names) -> None:
    """Showing a dead letter that does not exist is a FAILURE with a message, not a traceback."""
    code, _, err = cli("dlq", "show", names.stream, "1-1")
    assert code == FAILURE
    assert "no dead letter 1-1" in err


def test_dlq_replay_sends_a_dead_letter_back_to_its_group(
    cli: Cli, sync_client: redis.Redis, names: Names, dead_letters: DeadLetterIds
) -> None:
    """A replayed dead letter leaves the dead-letter stream and is processed again (here: acknowledged)."""
    assert cli("dlq", "replay", names.stream)[0] == USAGE
    assert cli("dlq", "replay", names.stream, dead_letters.rejected, "--all")[0] == USAGE

    code, out, _ = cli("dlq", "replay", names.stream, dead_letters.rejected)
    assert code == OK and out.strip() == f"replayed 1 dead letter of {names.stream}"
    assert sync_client.xlen(keys.dlq_key(names.stream)) == 2

    # The fixed app no longer rejects negative pings: the replayed one is acknowledged this time.
    before = stats(sync_client, names)["acked"]
    assert cli("worker", f"{names.module}:fixed", "--burst")[0] == OK
    assert stats(sync_client, names)["acked"] == before + 1
    assert sync_client.xlen(keys.dlq_key(names.stream)) == 2

    # --all moves what it can; an entry that never had a payload field cannot be replayed and stays.
    code, out, err = cli("dlq", "replay", names.stream, "--all")
    assert code == OK and out.strip() == f"replayed 1 dead letter of {names.stream}"
    assert f"streamq: left {dead_letters.fieldless}: no payload field" in err
    listed = cli.json("dlq", "list", names.stream)["dead_letters"]
    assert [letter["dlq_id"] for letter in listed] == [dead_letters.fieldless]


def test_dlq_replay_and_purge_name_the_ids_not_found_alike_and_fail_after_doing_the_rest(
    cli: Cli, sync_client: redis.Redis, names: Names, dead_letters: DeadLetterIds
) -> None:
    """Given ids some of which are not dead letters of the stream, `dlq replay` and `dlq purge` both do the
    ones there are, then name the others in the same words and exit FAILURE; --json says the same."""
    code, out, replay_err = cli("dlq", "replay", names.stream, "1-1", dead_letters.rejected, "2-2")
    assert code == FAILURE
    assert out.strip() == f"replayed 1 dead letter of {names.stream}"
    code, out, purge_err = cli("dlq", "purge", names.stream, "1-1", dead_letters.garbage, "2-2")
    assert code == FAILURE
    assert out.strip() == f"purged 1 dead letter of {names.stream}"
    assert (
        replay_err
        == purge_err
        == f"streamq: error: not found: 1-1 2-2 (no such dead letter of {names.stream})\n"
    )
    assert sync_client.xlen(keys.dlq_key(names.stream)) == 1  # only the fieldless one is left

    # An id there that cannot be replayed is named with why, and fails the command too.
    code, out, err = cli("dlq", "replay", names.stream, dead_letters.fieldless)
    assert code == FAILURE
    assert out.strip() == f"replayed 0 dead letters of {names.stream}"
    assert f"streamq: error: left {dead_letters.fieldless}: no payload field" in err

    for action in ("replay", "purge"):
        code, out, _ = cli("dlq", action, names.stream, "3-3", "--json")
        assert code == FAILURE
        assert json.loads(out) == {"stream": names.stream, "count": 0, "not_found": ["3-3"], "skipped": {}}
    code, out, _ = cli("dlq", "purge", names.stream, dead_letters.fieldless, "--json")
    assert code == OK and json.loads(out)["count"] == 1


def test_dlq_purge_deletes_by_id_and_all_only_with_yes(
    cli: Cli, sync_client: redis.Redis, names: Names, dead_letters: DeadLetterIds
) -> None:
    """`dlq purge` deletes the ids given; --all is refused without --yes and deletes the rest with it."""
    dlq = keys.dlq_key(names.stream)
    code, out, _ = cli("dlq", "purge", names.stream, dead_letters.garbage)
    assert code == OK and out.strip() == f"purged 1 dead letter of {names.stream}"
    assert sync_client.xlen(dlq) == 2

    code, _, err = cli("dlq", "purge", names.stream, "--all")
    assert code == USAGE and "--yes" in err
    assert sync_client.xlen(dlq) == 2
    assert cli("dlq", "purge", names.stream)[0] == USAGE

    code, out, _ = cli("dlq", "purge", names.stream, "--all", "--yes")
    assert code == OK and out.strip() == f"purged 2 dead letters of {names.stream}"
    assert sync_client.xlen(dlq) == 0


# ---------------------------------------------------------------------------------------------- demo


def python_m_streamq(*argv: str, stream: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, STREAM_ENV: stream}
    env.pop(ENV_URL, None)
    command = [sys.executable, "-m", "streamq", *argv]
    return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s,
                          check=False)  # fmt: skip


def test_demo_accounts_for_every_event_after_a_worker_is_killed(redis_url: str, names: Names) -> None:
    """`python -m streamq demo` publishes, SIGKILLs a worker mid-batch, recovers, exits 0: nothing lost."""
    done = python_m_streamq("demo", "--redis-url", redis_url, "--events", "2000", stream=names.stream,
                            timeout_s=DEMO_TIMEOUT_S)  # fmt: skip
    assert done.returncode == OK, done.stdout + done.stderr
    assert "demo OK: 2007 published = 2000 acknowledged + 7 dead-lettered, 0 pending" in done.stdout
    assert "SIGKILL" in done.stdout
    reclaimed = next(line for line in done.stdout.splitlines() if line.split()[:1] == ["reclaimed"])
    assert int(reclaimed.split()[1]) == 500  # worker #1's whole batch was taken over
    assert "max_attempts: 5, undecodable: 2" in done.stdout


def test_demo_producer_only_publishes_and_starts_no_worker(
    redis_url: str, sync_client: redis.Redis, names: Names
) -> None:
    """`demo --producer-only` (docker-compose's producer) appends the events and creates no consumer group."""
    done = python_m_streamq("demo", "--redis-url", redis_url, "--events", "50", "--producer-only",
                            stream=names.stream, timeout_s=30)  # fmt: skip
    assert done.returncode == OK, done.stdout + done.stderr
    assert sync_client.xlen(names.stream) == 50 + 5 + 2
    assert sync_client.xinfo_groups(names.stream) == []
