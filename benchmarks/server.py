"""A throwaway Redis server for one benchmark run, so figures never come from (or disturb) a shared server.

Measures nothing. Prefers streamq's own ``streamq.embedded.EmbeddedServer``; when that module is absent (or
cannot start a server) launches ``redis-server`` (or ``valkey-server``) from PATH on a free loopback port,
with persistence off, and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import structlog

log = structlog.get_logger("benchmarks.server")

DEFAULT_START_TIMEOUT_MS = 10_000  # how long a launched server gets to answer PING
DEFAULT_STOP_TIMEOUT_MS = 5_000  # how long it gets to exit on SIGTERM before SIGKILL
SERVER_BINARIES = ("redis-server", "valkey-server")


class ServerUnavailable(RuntimeError):
    """No throwaway server could be started: no embedded server and no binary on PATH."""


@dataclass(frozen=True)
class Server:
    """Where the benchmark's server listens and where it came from."""

    url: str
    source: str


@contextlib.contextmanager
def throwaway_server() -> Iterator[Server]:
    """Start a private server for the duration of the block."""
    with contextlib.ExitStack() as stack:
        server = _try_embedded(stack)
        if server is None:
            server = stack.enter_context(_launch_from_path())
        log.info("server started", url=server.url, source=server.source)
        yield server


def _try_embedded(stack: contextlib.ExitStack) -> Server | None:
    try:
        from streamq.embedded import EmbeddedServer, default_server_binary  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        binary = default_server_binary()
        embedded = stack.enter_context(EmbeddedServer(binary))
        url = str(embedded.url)
        source = f"streamq.embedded: {getattr(binary, 'label', binary)}, pid {getattr(embedded, 'pid', '?')}"
    except (RuntimeError, TypeError, AttributeError, OSError) as exc:
        # No binary (ServerNotFound), a failed start, or an API that moved under us: none of these may cost
        # the benchmark its server while a binary on PATH can still be launched directly.
        log.warning("embedded server unusable, launching from PATH", error=repr(exc))
        return None
    return Server(url=url, source=source)


@contextlib.contextmanager
def _launch_from_path() -> Iterator[Server]:
    binary = next((path for name in SERVER_BINARIES if (path := shutil.which(name))), None)
    if binary is None:
        names = ", ".join(SERVER_BINARIES)
        raise ServerUnavailable(f"none of {names} is on PATH and streamq.embedded has no server either")
    with tempfile.TemporaryDirectory(prefix="streamq-bench-") as workdir:
        port = _free_port()
        argv = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", workdir,
            "--loglevel", "warning",
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_for_ping(proc, port)
            yield Server(url=f"redis://127.0.0.1:{port}/0", source=f"{binary} (pid {proc.pid})")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=DEFAULT_STOP_TIMEOUT_MS / 1000)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_ping(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + DEFAULT_START_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise ServerUnavailable(f"server exited with {proc.returncode}: {stderr.strip()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise ServerUnavailable(f"server on port {port} did not answer PING in {DEFAULT_START_TIMEOUT_MS} ms")
