"""Security hardening: least-privilege ACL users, TLS, no pickle, payload caps, credentials kept out of
logs, and the server version floor.

The ACL rules are read from SECURITY.md, so the lines people copy are the lines tested. ACL tests run on a
server of their own per binary (they flush its script cache, so the worker must load streamq's scripts
itself through its restricted user) and check the server's ACL LOG: a denial inside a Lua script or a
pcall would otherwise go unnoticed. Everything runs against real servers except the version comparison of
the too-old-server check, which no server started here can exercise.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import logging
import re
import shlex
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio
import redis.connection
import structlog
from helpers import async_wait_until
from tls_certificates import make_self_signed_tls, supports_tls

import streamq
from streamq import _wire, keys
from streamq import retention as retention_module
from streamq._connection import redact
from streamq._wire import control as wire_control
from streamq._wire import publishing as wire_publishing
from streamq._wire import retention as wire_retention
from streamq._wire import scripts as _scripts
from streamq._worker import consumer as consumer_module
from streamq.cli import FAILURE, OK, main
from streamq.embedded import EmbeddedServer, ServerBinary
from streamq.errors import EventTooLarge, ServerError
from streamq.events import PAYLOAD_FIELD, Encoder
from streamq.inspect import status

SECURITY_MD = Path(__file__).resolve().parents[1] / "SECURITY.md"
ROLES = ("producer", "worker", "operator")
GROUP = "billing"
POISON = b"\xc1 not msgpack"  # 0xc1 is never valid msgpack


class Note(streamq.Event, tag="sec.note"):
    n: int
    text: str = ""


class CliNote(streamq.Event, tag="sec.cli.note"):
    """The event of the app module that the CLI test writes (same tag, so the worker decodes it)."""

    n: int


# ================================================================================================= ACL


def documented_rules(role: str) -> list[list[str]]:
    """The `ACL SETUSER app1-<role> ...` lines of SECURITY.md, each as its rule tokens (name first)."""
    lines = [line.strip() for line in SECURITY_MD.read_text(encoding="utf-8").splitlines()]
    rules = [shlex.split(line)[2:] for line in lines if line.startswith(f"ACL SETUSER app1-{role} ")]
    assert rules, f"SECURITY.md has no ACL SETUSER line for app1-{role}"
    return rules


def create_user(
    admin: redis.Redis, binary: ServerBinary, name: str, password: str, role: str, *, without: str = ""
) -> None:
    """Run SECURITY.md's lines for `role` as user `name` (leaving out the rule `without`, if given)."""
    for rule in documented_rules(role):
        args = [name, *(">" + password if r.startswith(">") else r for r in rule[1:] if r != without)]
        try:
            admin.execute_command("ACL", "SETUSER", *args)
        except redis.ResponseError:
            # SECURITY.md: Redis before 7.2 has no CLIENT SETINFO and refuses the rule; leave it out there.
            if "+client|setinfo" in rule and binary.name == "redis" and binary.version_info < (7, 2):
                continue
            raise


def acl_denials(admin: redis.Redis, users: list[str]) -> list[dict[str, Any]]:
    """ACL LOG entries of these users, as {field: text}."""
    out = []
    for entry in admin.execute_command("ACL", "LOG", 1000):
        fields = entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))
        text = {_s(k): _s(v) for k, v in fields.items()}
        if text["username"] in users:
            out.append({k: text[k] for k in ("username", "reason", "context", "object")})
    return out


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@pytest.fixture(scope="module")
def acl_server(server_binary: ServerBinary | None) -> Iterator[EmbeddedServer]:
    """A server of this module's own: the ACL tests flush its script cache and read its ACL LOG."""
    if server_binary is None:
        pytest.skip(
            "creates users and flushes scripts: needs a server of its own, not STREAMQ_TEST_REDIS_URL"
        )
    with EmbeddedServer(server_binary) as embedded:
        yield embedded


@dataclass
class Users:
    producer: str  # URL with that user's name and password
    worker: str
    operator: str
    names: list[str]


@pytest.fixture
def users(acl_server: EmbeddedServer, server_binary: ServerBinary, unique: str) -> Iterator[Users]:
    """The three documented users, under names of this test's own; deleted afterwards."""
    admin = redis.Redis.from_url(acl_server.url)
    urls: dict[str, str] = {}
    names = []
    try:
        for role in ROLES:
            name, password = f"{unique}-{role}", uuid.uuid4().hex
            create_user(admin, server_binary, name, password, role)
            names.append(name)
            urls[role] = f"redis://{name}:{password}@127.0.0.1:{acl_server.port}/0"
        yield Users(**urls, names=names)
    finally:
        if names:
            admin.execute_command("ACL", "DELUSER", *names)
        admin.close()


@pytest.fixture
async def admin(acl_server: EmbeddedServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(acl_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_documented_users_run_the_whole_path_and_nothing_is_denied(
    users: Users, admin: redis.asyncio.Redis, acl_server: EmbeddedServer, unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """With SECURITY.md's users only: the producer publishes (async and sync); a worker acks events, retries
    one, dead-letters a poison payload and a rejected event, renews leases, settles an entry whose lease it
    lost, reclaims that entry, removes idle consumers and itself from the group; the operator reads status,
    replays the rejected event (a second worker run acks it) and purges; the worker's script fallbacks
    (EVAL) work after the script cache is flushed. The server's ACL LOG has no denial for any of the three
    users, inside Lua scripts and pcalls included."""
    await admin.script_flush()  # the worker loads streamq's scripts itself (SCRIPT LOAD, EVAL)
    monkeypatch.setattr(consumer_module, "REAP_CHECK_EVERY_S", 0.0)  # run the idle-consumer sweep each tick
    stream = f"app1:{unique}"

    async with streamq.Producer(users.producer) as producer:
        await producer.publish_many(stream, [Note(n) for n in range(6)])
        await producer.client.xadd(stream, {PAYLOAD_FIELD: POISON})
        assert await producer.client.ping()  # the pool's health checks
    with streamq.SyncProducer(users.producer) as sync_producer:
        sync_producer.publish(stream, Note(6))

    seen: list[tuple[int, int]] = []  # (n, attempt)
    renewals: list[tuple[int, int]] = []  # the lease keeper's (renewals, failures) during the first batch
    replayed = False
    app = streamq.App(users.worker)

    @app.consumer(stream, group=GROUP, lease_ms=300, reap_idle_ms=300, block_ms=50, retry_base_ms=0,
                  retry_max_ms=10)  # fmt: skip
    async def handle(batch: streamq.Batch[Note]) -> None:
        if not renewals:
            keeper = app.consumers[0].lease_keeper  # renews through its own connection, as the worker user
            await async_wait_until(lambda: keeper.renewals or keeper.failures, message="a lease renewal")
            renewals.append((keeper.renewals, keeper.failures))
            # Another consumer takes n=5 over, which this worker then retries: its fenced settle finds
            # it gone from its PEL (and asks XRANGE whether it still exists), then reclaims it once idle
            # for lease_ms. (A success would be acknowledged whoever holds it: no fence to test.)
            (taken,) = [m.entry_id for m in batch if m.event.n == 5]
            await admin.xclaim(stream, GROUP, "thief", 0, [taken], justid=True)
        for message in batch:
            seen.append((message.event.n, message.attempt))
            if message.event.n in (1, 5) and message.attempt == 1:
                batch.retry(message, delay_ms=0)
            elif message.event.n == 2 and not replayed:
                batch.dead_letter(message, "rejected until replayed")

    await app.run(burst=True)
    assert renewals[0][0] >= 1 and renewals[0][1] == 0
    # n=5's first retry was refused (lease lost): reclaimed, it is still on its first attempt (a lost
    # delivery uses no attempt), asks for a retry again, and succeeds on its second attempt.
    expected = [(0, 1), (1, 1), (1, 2), (2, 1), (3, 1), (4, 1), (5, 1), (5, 1), (5, 2), (6, 1)]
    assert sorted(seen) == expected

    operator = redis.asyncio.Redis.from_url(users.operator)
    try:
        assert await operator.ping()
        (state,) = await status(operator)  # every stream of the registry: only this one on this server
        assert state.dead_letters == 2
        stats = state.groups[0].stats
        assert (state.groups[0].pending, stats["retried"], stats["lease_lost"], stats["reclaimed"]) == (
            0,
            2,
            1,
            1,
        )
        dead_letters = streamq.DeadLetters(operator)
        letters = {letter.reason: letter for letter in await dead_letters.list(stream)}
        assert set(letters) == {"undecodable", "rejected"}
        assert letters["undecodable"].payload == POISON
        replayed = True
        await admin.script_flush()  # the replay falls back to EVAL
        assert (await dead_letters.replay(stream, [letters["rejected"].dlq_id])).count == 1
        await app.run(burst=True)
        assert seen.count((2, 1)) == 2  # replayed with a fresh set of attempts, and acknowledged
        assert (await dead_letters.purge(stream, [letters["undecodable"].dlq_id])).count == 1
        assert (await dead_letters.purge(stream)).count == 0  # purge-all: XLEN, then DEL
    finally:
        await operator.aclose()

    worker = redis.asyncio.Redis.from_url(users.worker)
    try:
        # Script fallbacks: with the cache flushed, EVALSHA fails with NOSCRIPT and reap() sends EVAL.
        await admin.xgroup_createconsumer(stream, GROUP, "ghost")
        await admin.script_flush()
        assert await _wire.reap(worker, [stream, keys.retry_key(stream, GROUP)], GROUP, "ghost")
        assert await worker.ping()
    finally:
        await worker.aclose()
    # The idle thief was reaped, each worker removed itself, and the ghost is gone.
    assert await admin.xinfo_consumers(stream, GROUP) == []
    assert (await admin.xpending(stream, GROUP))["pending"] == 0
    assert acl_denials(redis.Redis.from_url(acl_server.url), users.names) == []


async def test_documented_users_run_retention_scheduling_and_control_and_nothing_is_denied(
    users: Users, admin: redis.asyncio.Redis, acl_server: EmbeddedServer, unique: str
) -> None:
    """With SECURITY.md's users only: the producer publishes with dedup keys, a delay and maxlen, lists and
    cancels a delayed event; a worker with a rate limit moves the due one in, handles everything once,
    polls the pause state and trims what it acknowledged; the operator pauses and resumes, reads status,
    trims (dry run too), lists and cancels delayed events and deletes an idle group. The ACL LOG has no
    denial for any of them."""
    from streamq import control, retention
    from streamq.scheduling import cancel_sync, list_scheduled_sync

    stream = f"app1:{unique}"
    await admin.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await admin.xgroup_create(stream, "old", id="$")  # an abandoned group the operator removes
    async with streamq.Producer(users.producer) as producer:
        first = await producer.publish(stream, Note(0), dedup_key="note-0")
        assert await producer.publish(stream, Note(0), dedup_key="note-0") == first
        await producer.publish(stream, Note(1), delay_ms=0)
        later = await producer.publish(stream, Note(2), delay_ms=3_600_000)
        assert [s.schedule_id for s in await producer.scheduled(stream)][-1] == later
        assert await producer.cancel(stream, later)
        await producer.publish(stream, Note(3), maxlen=1_000)
    with streamq.SyncProducer(users.producer) as sync_producer:
        sync_producer.publish(stream, Note(4), dedup_key="note-4", delay_ms=3_600_000)

    operator_url = users.operator
    await retention.delete_group(operator_url, stream, "old")
    await control.pause(operator_url, stream, GROUP, reason="deploy")
    await control.resume(operator_url, stream, GROUP)

    seen: list[int] = []
    app = streamq.App(users.worker)

    @app.consumer(stream, group=GROUP, block_ms=50, rate_limit=1_000, scheduled_poll_ms=20,
                  trim_interval_ms=50)  # fmt: skip
    async def handle(batch: streamq.Batch[Note]) -> None:
        seen.extend(message.event.n for message in batch)

    task = asyncio.create_task(app.run())
    try:

        async def trimmed() -> bool:
            return bool(await admin.hget(keys.totals_key(stream), "trimmed"))

        await async_wait_until(lambda: len(seen) >= 3, message="the events handled")
        await async_wait_until(trimmed, message="a trim by the worker")
    finally:
        app.stop()
        await asyncio.wait_for(task, 15)
    assert sorted(seen) == [0, 1, 3]

    (state,) = await status(operator_url, [stream])
    assert state.scheduled == 1 and state.totals["deduplicated"] == 1 and state.paused == {}
    assert retention.trim_sync(operator_url, stream, dry_run=True).dry_run
    retention.trim_sync(operator_url, stream)
    (waiting,) = list_scheduled_sync(operator_url, stream)
    assert cancel_sync(operator_url, stream, [waiting.schedule_id]) == [True]
    assert acl_denials(redis.Redis.from_url(acl_server.url), users.names) == []


DENIED_TO_WORKER = [
    ("XADD", "app2:orders", "*", "d", "x"),  # another application's stream
    ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "app2:orders", ">"),
    ("HINCRBY", "streamq:{app2:orders}:g:stats", "acked", "1"),  # another application's companions
    ("LPUSH", "app1:anything", "x"),  # a command no worker needs
    ("SMEMBERS", keys.REGISTRY_KEY),
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("KEYS", "*"),
    ("SCRIPT", "FLUSH"),
    ("CLIENT", "LIST"),
    ("REPLICAOF", "NO", "ONE"),
    ("ACL", "SETUSER", "intruder", "on", "nopass", "+@all", "~*"),
    # Lua runs with the caller's permissions: a script reaches nothing the user could not reach itself.
    ("EVAL", "return redis.call('XADD', KEYS[1], '*', 'd', 'x')", "1", "app2:orders"),
    ("EVAL", "return redis.call('FLUSHALL')", "0"),
]
DENIED_TO_PRODUCER = [
    ("XRANGE", "app1:orders", "-", "+"),  # cannot read events
    ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "app1:orders", ">"),
    ("XADD", "streamq:{app1:orders}:g:retry", "*", "r", "x"),  # cannot forge retries or dead letters
    ("XADD", "streamq:{app1:orders}:dlq", "*", "d", "x"),
    ("XADD", "app2:orders", "*", "d", "x"),
    ("DEL", "app1:orders"),
    ("FLUSHALL",),
]


async def test_users_are_confined_to_their_application_and_role(
    users: Users, admin: redis.asyncio.Redis, acl_server: EmbeddedServer
) -> None:
    """The worker user is refused keys outside its application's patterns (also from inside a Lua
    script), FLUSHALL, CONFIG, KEYS, CLIENT, REPLICAOF, ACL and SCRIPT FLUSH; the producer user cannot
    read events, write dead letters or retries, or touch another application. Nothing denied took effect."""
    await admin.xadd("app1:orders", {"d": b"x"})
    for url, commands in ((users.worker, DENIED_TO_WORKER), (users.producer, DENIED_TO_PRODUCER)):
        client = redis.asyncio.Redis.from_url(url)
        try:
            for command in commands:
                with pytest.raises(redis.ResponseError, match=r"(?i)permission|ACL|can't run"):
                    await client.execute_command(*command)
        finally:
            await client.aclose()
    denied = acl_denials(redis.Redis.from_url(acl_server.url), users.names)
    assert {"flushall", "config|set", "acl|setuser", "client|list"} <= {d["object"] for d in denied}
    assert {"app2:orders", "streamq:{app1:orders}:dlq"} <= {
        d["object"] for d in denied if d["reason"] == "key"
    }
    assert any(d["context"] == "lua" for d in denied)
    assert not await admin.exists("app2:orders", "streamq:{app1:orders}:dlq", "streamq:{app1:orders}:g:retry")
    assert await admin.xlen("app1:orders") >= 1
    assert b"intruder" not in await admin.acl_users()
    assert await admin.config_get("maxmemory") != {"maxmemory": "1"}


@pytest.mark.parametrize(
    ("missing", "error"),
    [("+sadd", redis.exceptions.NoPermissionError), ("+zrangebyscore", streamq.ConfigurationError)],
)
async def test_worker_missing_a_permission_fails_naming_it(
    acl_server: EmbeddedServer, server_binary: ServerBinary, unique: str, missing: str, error: type[Exception]
) -> None:
    """A worker whose user lacks one documented rule stops with the server's NOPERM error naming the
    command, instead of retrying or hanging: +sadd is needed at start (it once hung: the retry mover
    swallowed its cancel); +zrangebyscore only by the retry mover's script, once a retry is scheduled (it
    once logged the denial every second while burst mode waited forever for the retry; a denial inside a
    script does not name the command, so streamq names the script's commands)."""
    admin = redis.Redis.from_url(acl_server.url)
    name, password = f"{unique}-partial", uuid.uuid4().hex
    create_user(admin, server_binary, name, password, "worker", without=missing)
    url = f"redis://{name}:{password}@127.0.0.1:{acl_server.port}/0"
    try:
        async with streamq.Producer(acl_server.url) as producer:
            await producer.publish(f"app1:{unique}", Note(n=1))
        app = streamq.App(url)

        @app.consumer(f"app1:{unique}", group=GROUP, block_ms=50, retry_base_ms=0)
        async def handle(batch: streamq.Batch[Note]) -> None:
            raise RuntimeError("fail, to schedule a retry")

        with pytest.raises(error, match=f"(?i){missing[1:]}"):
            async with asyncio.timeout(60):  # a hang fails here instead of stalling the run
                await app.run(burst=True)
    finally:
        admin.execute_command("ACL", "DELUSER", name)
        admin.close()


def _script_commands(source: str, conn: Any) -> set[str]:
    """ACL names of the commands a Lua script calls: quoted upper-case words the server knows as commands
    (`XGROUP', 'DELCONSUMER` as the subcommand xgroup|delconsumer)."""
    words = re.findall(r"'([A-Z][A-Z_]*)'", source)
    candidates = [f"{a}|{b}" for a, b in itertools.pairwise(words)] + words
    conn.send_command("COMMAND", "INFO", *candidates)
    known = {_s(info[0]) for info in conn.read_response() if info is not None}
    subcommands = {name for name in known if "|" in name}
    containers = {name.split("|")[0] for name in subcommands}
    return subcommands | {name for name in known if "|" not in name and name not in containers}


def test_documented_rules_allow_every_command_in_streamqs_scripts(acl_server: EmbeddedServer) -> None:
    """Every command streamq's Lua scripts call is allowed to the role that runs the script (a script runs
    with its caller's permissions), so a command added to a script cannot silently break the ACL lines."""
    allowed = {
        role: {r[1:] for rule in documented_rules(role) for r in rule if r[0] == "+"} for role in ROLES
    }
    runs = {
        "worker": [_scripts.SETTLE, _scripts.RENEW, _scripts.MOVE_DUE, _scripts.REAP, _scripts.RENEW_HELD,
                   _scripts.RELEASE, _scripts.ENSURE_GROUP_AT, _scripts.SET_DELIVERIES,
                   wire_publishing.MOVE_SCHEDULED_SOURCE, wire_retention.TRIM_SOURCE,
                   wire_control.RESERVE_SOURCE],
        "operator": [_scripts.REPLAY, wire_retention.TRIM_SOURCE, wire_retention.DELETE_GROUP_SOURCE,
                     wire_publishing.CANCEL_SOURCE, retention_module._COUNT_RANGE],
        "producer": [wire_publishing.PUBLISH_SOURCE, wire_publishing.CANCEL_SOURCE],
    }  # fmt: skip
    client = redis.Redis.from_url(acl_server.url)
    conn = client.connection_pool.get_connection()
    try:
        for role, sources in runs.items():
            for source in sources:
                called = _script_commands(source, conn)
                assert called, source
                assert called <= allowed[role], (role, called - allowed[role])
    finally:
        client.connection_pool.release(conn)
        client.close()


# ================================================================================================= TLS


@pytest.fixture(scope="module")
def tls_server(
    server_binary: ServerBinary | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedServer]:
    """A server that listens on TLS only (plain port 0), with a throwaway CA."""
    if server_binary is None:
        pytest.skip("starts a TLS server of its own: not with STREAMQ_TEST_REDIS_URL")
    if not supports_tls(server_binary):
        pytest.skip(
            f"{server_binary.label} cannot serve TLS (built without it, or TLS is a module not loaded)"
        )
    tls = make_self_signed_tls(str(tmp_path_factory.mktemp("tls")))
    with EmbeddedServer(server_binary, tls=tls) as embedded:
        yield embedded


def _verified_url(server: EmbeddedServer) -> str:
    assert server.tls is not None
    return f"{server.url}?ssl_ca_certs={quote(server.tls.ca_file)}"


@pytest.mark.parametrize("given", ["url", "client"])
async def test_publish_and_work_over_tls(tls_server: EmbeddedServer, unique: str, given: str) -> None:
    """Over rediss:// with the CA in the URL (or a client built from it), a producer publishes and a burst
    worker handles everything, including the lease keeper's own synchronous connection, which
    connection.sync_client builds from the URL or from the asyncio client's SSL settings. The server has
    no plain port, so every byte went through TLS."""
    url = _verified_url(tls_server)
    target: str | redis.asyncio.Redis = url if given == "url" else redis.asyncio.Redis.from_url(url)
    try:
        async with streamq.Producer(target) as producer:
            await producer.publish_many(unique, [Note(n) for n in range(20)])
        handled: list[int] = []
        renewals: list[tuple[int, int]] = []
        app = streamq.App(target)

        @app.consumer(unique, group=GROUP, lease_ms=300, block_ms=50)
        async def handle(batch: streamq.Batch[Note]) -> None:
            if not renewals:
                keeper = app.consumers[0].lease_keeper
                await async_wait_until(lambda: keeper.renewals or keeper.failures, message="a lease renewal")
                renewals.append((keeper.renewals, keeper.failures))
            handled.extend(message.event.n for message in batch)

        await app.run(burst=True)
        assert sorted(handled) == list(range(20))
        assert renewals[0][0] >= 1 and renewals[0][1] == 0
    finally:
        if isinstance(target, redis.asyncio.Redis):
            await target.aclose()


async def test_tls_verifies_the_server_certificate_by_default(
    tls_server: EmbeddedServer, unique: str
) -> None:
    """Without the CA (not in the system store), producer and worker refuse to connect: certificate
    verification is on unless turned off. Turning it off explicitly connects: verification was the cause."""
    async with streamq.Producer(tls_server.url) as producer:
        with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)certificate verify failed"):
            await producer.publish(unique, Note(1))
    app = streamq.App(tls_server.url)

    @app.consumer(unique, group=GROUP)
    async def handle(batch: streamq.Batch[Note]) -> None:
        return None

    with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)certificate verify failed"):
        await app.run(burst=True)
    async with streamq.Producer(f"{tls_server.url}?ssl_cert_reqs=none") as unverified:
        await unverified.publish(unique, Note(2))


# ========================================================================================= never pickle

# Modules that deserialize code or arbitrary objects.
BANNED_MODULES = {
    "pickle",
    "_pickle",
    "cPickle",
    "cloudpickle",
    "dill",
    "shelve",
    "marshal",
    "jsonpickle",
    "joblib",
}


def test_no_pickle_anywhere_in_the_package() -> None:
    """No module of the streamq package imports or uses pickle (or shelve, marshal, dill, cloudpickle,
    jsonpickle, joblib), directly or through importlib/__import__: payloads are data, never code."""
    root = Path(streamq.__file__).resolve().parent
    sources = sorted(root.rglob("*.py"))
    assert len(sources) > 10
    offenders = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(alias.name for alias in node.names)]
            elif isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                function = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                if function in ("import_module", "__import__"):
                    names = [str(node.args[0].value)]
            for name in names:
                if name.split(".")[0] in BANNED_MODULES or "pickle" in name.lower():
                    offenders.append(f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}: {name}")
    assert offenders == []


# ========================================================================================== payload caps


async def test_publish_over_the_cap_writes_nothing(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """An event over max_event_bytes raises EventTooLarge before anything of the call is written: alone, or
    in the middle of publish_many, whatever the chunk size, async or sync; the stream length is unchanged."""
    big = Note(0, "x" * 300)
    async with streamq.Producer(redis_url, max_event_bytes=200) as producer:
        with pytest.raises(EventTooLarge) as raised:
            await producer.publish(unique, big)
        assert (raised.value.limit, raised.value.size > 200) == (200, True)
        assert await client.exists(unique) == 0
        await producer.publish_many(unique, [Note(n) for n in range(3)])
        for chunk_size in (1, 2, 100):
            with pytest.raises(EventTooLarge):
                await producer.publish_many(
                    unique, [Note(10), Note(11), big, Note(12)], chunk_size=chunk_size
                )
            assert await client.xlen(unique) == 3
    with streamq.SyncProducer(sync_client, max_event_bytes=200) as sync_producer:
        for chunk_size in (1, 100):
            with pytest.raises(EventTooLarge):
                sync_producer.publish_many(unique, [Note(20), big, Note(21)], chunk_size=chunk_size)
    assert await client.xlen(unique) == 3


async def test_consumer_dead_letters_an_oversized_entry_without_decoding_it(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """An entry larger than the consumer's max_event_bytes (written by another producer) is dead-lettered
    with reason `oversized` and its bytes intact; the handler never sees it and its neighbours are acked."""
    encode = Encoder(max_event_bytes=1 << 20).encode
    big = encode(Note(2, "x" * 5_000))
    ids = [
        (await client.xadd(unique, {PAYLOAD_FIELD: p})).decode()
        for p in (encode(Note(1)), big, encode(Note(3)))
    ]
    handled: list[str] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group=GROUP, max_event_bytes=1_024, block_ms=50)
    async def handle(batch: streamq.Batch[Note]) -> None:
        handled.extend(message.id for message in batch)

    await app.run(burst=True)
    assert handled == [ids[0], ids[2]]
    (letter,) = await streamq.DeadLetters(client).list(unique)
    assert (letter.id, letter.reason, letter.payload) == (ids[1], "oversized", big)
    assert str(len(big)) in letter.detail
    assert (await client.xpending(unique, GROUP))["pending"] == 0


# ==================================================================================== credentials in logs

PASSWORD = "s3cret-pw"
WRONG_PASSWORD = "wr0ng-pw-never-valid"


@dataclass
class PasswordServer:
    server: EmbeddedServer
    socket_path: str

    @property
    def tcp_url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.server.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=0&password={PASSWORD}"


@pytest.fixture(scope="module")
def password_server(server_binary: ServerBinary | None) -> Iterator[PasswordServer]:
    """A server that wants a password, on TCP and on a unix socket."""
    if server_binary is None:
        pytest.skip("starts a server with requirepass: not with STREAMQ_TEST_REDIS_URL")
    directory = tempfile.mkdtemp(prefix="sq-sec-")  # short: unix socket paths are limited to ~100 bytes
    socket_path = f"{directory}/redis.sock"
    extra = ["--requirepass", PASSWORD, "--unixsocket", socket_path, "--unixsocketperm", "700"]
    try:
        with EmbeddedServer(server_binary, extra_args=extra) as embedded:
            yield PasswordServer(embedded, socket_path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_library_logs_never_contain_the_password(
    password_server: PasswordServer, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A producer and a burst worker (with a failing handler, a poison payload and lease renewals) on a
    password-protected server, then a worker with a wrong password: neither structlog's events nor the
    standard library's log records (redis-py's included) nor the error raised hold either password."""
    caplog.set_level(logging.DEBUG)
    url = password_server.tcp_url
    with structlog.testing.capture_logs() as logs:
        async with streamq.Producer(url) as producer:
            await producer.publish_many(unique, [Note(n) for n in range(5)])
            await producer.client.xadd(unique, {PAYLOAD_FIELD: POISON})
        renewals: list[int] = []
        app = streamq.App(url)

        @app.consumer(unique, group=GROUP, lease_ms=300, block_ms=50, retry_base_ms=0, retry_max_ms=10)
        async def handle(batch: streamq.Batch[Note]) -> None:
            if not renewals:
                keeper = app.consumers[0].lease_keeper
                await async_wait_until(lambda: keeper.renewals or keeper.failures, message="a lease renewal")
                renewals.append(keeper.failures)
            if any(m.event.n == 1 and m.attempt == 1 for m in batch):
                raise RuntimeError("the handler failed once")

        await app.run(burst=True)
        wrong = streamq.App(url.replace(PASSWORD, WRONG_PASSWORD))
        wrong.add_consumer(handle, unique, group=GROUP)
        with pytest.raises(redis.exceptions.AuthenticationError) as refused:
            await wrong.run(burst=True)
    assert renewals == [0]
    dead_lettering = "dead-lettering an event the handler cannot take"
    assert {"connected", "handler failed", dead_lettering} <= {e["event"] for e in logs}
    (connected,) = [e for e in logs if e["event"] == "connected"]
    assert connected["redis"] == f"redis://:***@127.0.0.1:{password_server.server.port}/0"
    written = repr(logs) + caplog.text + str(refused.value) + repr(refused.value)
    assert PASSWORD not in written and WRONG_PASSWORD not in written


CLI_APP = """
import streamq


class Note(streamq.Event, tag="sec.cli.note"):
    n: int


app = streamq.App()


@app.consumer({stream!r}, group="g", block_ms=50)
async def handle(batch: streamq.Batch[Note]) -> None:
    for message in batch:
        if message.event.n < 0:
            batch.dead_letter(message, "negative")
"""


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_cli_never_prints_the_password(
    password_server: PasswordServer, unique: str, transport: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`streamq worker`, `status` and `dlq list` at debug level, given a URL with the password in its
    user-info (tcp) or in its `password=` query argument (unix socket), and `status` with a wrong password:
    stdout and stderr show the URL redacted and never either password."""
    url = password_server.tcp_url if transport == "tcp" else password_server.unix_url
    module = f"secapp_{unique.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(CLI_APP.format(stream=unique), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    with streamq.SyncProducer(password_server.tcp_url) as producer:
        producer.publish_many(unique, [CliNote(1), CliNote(-1), CliNote(2)])

    common = ["--redis-url", url, "--log-level", "debug", "--log-json"]
    assert main(["worker", f"{module}:app", "--burst", "--no-uvloop", *common]) == OK
    assert main(["status", unique, "--json", *common]) == OK
    assert main(["dlq", "list", unique, *common]) == OK
    assert main(["status", unique, "--redis-url", url.replace(PASSWORD, WRONG_PASSWORD)]) == FAILURE
    out, err = capsys.readouterr()
    assert "negative" in out  # the dead letter was listed
    shown = redact(url)
    assert shown != url and shown in err  # the worker's start line and the failure name the server, redacted
    assert PASSWORD not in out + err and WRONG_PASSWORD not in out + err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://alice:s3cret@db:6379/0", "redis://alice:***@db:6379/0"),
        ("redis://:s3cret@db:6379/0", "redis://:***@db:6379/0"),
        ("rediss://alice:s3cret@db:6380/0?ssl_ca_certs=/etc/ca.pem", "rediss://alice:***@db:6380/0?ssl_ca_certs=/etc/ca.pem"),
        ("unix:///run/redis.sock?db=0&password=s3cret", "unix:///run/redis.sock?db=0&password=***"),
        ("unix://alice:s3cret@/run/redis.sock?db=1", "unix://alice:***@/run/redis.sock?db=1"),
        ("redis://db:6379/0?password=s3cret&db=1", "redis://db:6379/0?password=***&db=1"),
        ("rediss://db/0?ssl_keyfile=k.pem&ssl_password=s3cret", "rediss://db/0?ssl_keyfile=k.pem&ssl_password=***"),
        ("redis://alice:s3%40cr%2Fet@db/0", "redis://alice:***@db/0"),
        ("redis://alice:s3@cret@db:6379/0", "redis://alice:***@db:6379/0"),  # redis-py splits at the last @
        ("redis://s3cret@db/0", "redis://***@db/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("cannot reach Redis at redis://:s3cret@db:6379/0: refused; mail ops@example.com",
         "cannot reach Redis at redis://:***@db:6379/0: refused; mail ops@example.com"),
    ],
)  # fmt: skip
def test_redact_hides_every_password_form_redis_py_accepts(url: str, shown: str) -> None:
    """redact() hides the password in user:pass@, :pass@, a lone user-info, the password= and
    ssl_password= query arguments (unix sockets), percent-encoded or with a raw `@`, also inside a longer
    message; URLs without one are left alone."""
    assert redact(url) == shown
    if url.startswith(("redis", "unix")):
        parsed = redis.connection.parse_url(url)
        for secret in (parsed.get("password"), parsed.get("ssl_password")):
            assert secret is None or secret not in redact(url)


# ====================================================================================== server version


class _StubInfo:
    """Stands in for a server's INFO reply, for the version comparison only: no server older than 6.2 can
    be started here, so this is the one place that does not talk to a real server."""

    def __init__(self, version: str) -> None:
        self.version = version

    async def info(self, section: str | None = None) -> dict[str, Any]:
        return {"redis_version": self.version} if section == "server" else {"maxmemory_policy": "noeviction"}


@pytest.mark.parametrize("version", ["2.8.24", "5.0.14", "6.0.20", "6.1.240"])
async def test_check_server_refuses_redis_older_than_6_2(version: str) -> None:
    """Versions before 6.2 (no XAUTOCLAIM; 6.1.240 is a 6.2 release candidate) are refused with a
    ServerError naming the version found and the one needed (unit test with a stub INFO reply)."""
    with pytest.raises(ServerError, match=rf"Redis {re.escape(version)} is too old.*6\.2"):
        await _wire.check_server(_StubInfo(version))  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["6.2.0", "6.2.14", "7.0.15", "7.2.4", "10.0.0", "255.255.255"])
async def test_check_server_accepts_6_2_and_later(version: str) -> None:
    """6.2 and later pass, compared as numbers (10.0 is newer than 6.2; 255.255.255 is an unstable build)
    (unit test with a stub INFO reply)."""
    assert (await _wire.check_server(_StubInfo(version)))["version"] == version  # type: ignore[arg-type]


def test_parse_version_reads_numeric_parts() -> None:
    """parse_version keeps the numeric major, minor and patch parts of an INFO version string."""
    assert _wire.parse_version("7.0.15") == (7, 0, 15)
    assert _wire.parse_version("10.2.3.4") == (10, 2, 3)
    assert _wire.parse_version("6.2.0") >= _wire.MIN_SERVER_VERSION > _wire.parse_version("6.0.99")


async def test_check_server_passes_every_real_test_server(client: redis.asyncio.Redis) -> None:
    """Against the real servers the check passes and reports the version INFO gives, which is >= 6.2."""
    found = await _wire.check_server(client)
    assert found["version"] == (await client.info("server"))["redis_version"]
    assert _wire.parse_version(found["version"]) >= _wire.MIN_SERVER_VERSION


async def test_documented_users_run_partitioned_ordered_streams_and_nothing_is_denied(
    users: Users, admin: redis.asyncio.Redis, acl_server: EmbeddedServer, unique: str
) -> None:
    """With SECURITY.md's users only: a worker records a partition count, takes every partition (its
    balancing, release and ordering-gate scripts), retries an event in place and settles; the producer
    reads the count and publishes with keys and a dedup key into the partitions; the operator reads the
    partitions' status. The ACL LOG has no denial for any of them."""
    from streamq.partitions import partition_streams

    stream = f"app1:{unique}"
    seen: list[int] = []
    failed: list[int] = []
    app = streamq.App(users.worker)

    @app.consumer(stream, group=GROUP, partitions=3, ordered=True, partition_lease_ms=600, block_ms=50,
                  retry_base_ms=10, retry_max_ms=20)  # fmt: skip
    async def handle(batch: streamq.Batch[Note]) -> None:
        for message in batch:
            if message.event.n == 3 and not failed:
                failed.append(3)
                batch.retry(message)
                return
            seen.append(message.event.n)

    task = asyncio.create_task(app.run())
    try:
        await async_wait_until(lambda: admin.get(keys.partitions_key(stream)), message="the count recorded")
        async with streamq.Producer(users.producer) as producer:
            await producer.publish_many(stream, [Note(n) for n in range(8)], key=lambda e: f"k{e.n % 2}")
            await producer.publish(stream, Note(8), dedup_key="once")
        with streamq.SyncProducer(users.producer) as sync_producer:
            sync_producer.publish(stream, Note(9), key="k1")
        await async_wait_until(lambda: sorted(seen) == list(range(10)), message="every event handled")
    finally:
        app.stop()
        await asyncio.wait_for(task, 30)
    operator = redis.asyncio.Redis.from_url(users.operator)
    try:
        (state,) = await status(operator, [stream])  # its partitions added up, read through the count
        assert state.partitions == 3 and state.groups[0].stats["acked"] == 10
        assert (
            sum(d.groups[0].stats["acked"] for d in await status(operator, partition_streams(stream, 3)))
            == 10
        )
    finally:
        await operator.aclose()
    assert acl_denials(redis.Redis.from_url(acl_server.url), users.names) == []
