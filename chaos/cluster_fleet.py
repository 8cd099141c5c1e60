"""The workers of the cluster chaos run (chaos/cluster.py): `streamq worker chaos.cluster_app:app` commands.

A worker is one such command, or a pool of them (`--processes N`): its consuming processes are then the
pool's children, which the nemesis may kill one at a time (the pool restarts them). Each command's log
(JSON lines: its own, and its children's) goes to one file; a pool child's death that the nemesis did not
cause, or a command that ends by itself, is an unexplained exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamq

from .cluster_workload import CONFIG_ENV
from .fleet import _die_with_parent
from .pool import _children_of

STOP_TIMEOUT_S = 30.0  # SIGTERM to exit: the app's grace period plus a blocked read
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Worker:
    """One `streamq worker chaos.cluster_app:app` command (a pool when processes > 1)."""

    name: str
    processes: int
    process: subprocess.Popen[bytes]
    log_path: str
    killed: set[int] = field(default_factory=set)  # pids the nemesis killed (the process or children)

    def pids(self) -> list[int]:
        """The processes that consume: the worker itself, or the pool's live children."""
        if self.process.poll() is not None:
            return []
        if self.processes == 1:
            return [self.process.pid]
        return [pid for pid, _ in _children_of(self.process.pid)]

    def children(self) -> list[tuple[int, float]]:
        return _children_of(self.process.pid) if self.process.poll() is None else []


def start_worker(name: str, processes: int, config: dict[str, Any], log_dir: str) -> Worker:
    env = dict(os.environ)
    roots = dict.fromkeys(str(Path(path).resolve().parents[1]) for path in (__file__, streamq.__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*roots, env.get("PYTHONPATH", "")]))
    env[CONFIG_ENV] = json.dumps(config)
    argv = [
        sys.executable,
        "-m",
        "streamq",
        "worker",
        "chaos.cluster_app:app",
        "--log-json",
        "--log-level",
        "info",
    ]
    if processes > 1:
        argv += ["--processes", str(processes)]
    log_path = os.path.join(log_dir, f"{name}.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(),
        )  # fmt: skip
    return Worker(name, processes, process, log_path)


def _pool_deaths(worker: Worker) -> list[int]:
    """Pids of the children the pool's supervisor logged as dead."""
    found = []
    with open(worker.log_path, "rb") as log:
        for line in log:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and str(record.get("event", "")).startswith(
                    "worker process died"
                ):
                    found.append(int(record["pid"]))
    return found


def _tail(path: str, lines: int = 15) -> str:
    with open(path, "rb") as log:
        return b"".join(log.readlines()[-lines:]).decode(errors="replace")


def unexplained_exits(workers: list[Worker]) -> list[str]:
    """Worker commands that ended by themselves, and pool children that died unkilled."""
    out = []
    for worker in workers:
        code = worker.process.poll()
        if code is not None and worker.process.pid not in worker.killed:
            out.append(f"{worker.name} pid {worker.process.pid} exit {code}: {_tail(worker.log_path)}")
        if worker.processes > 1:
            out += [
                f"{worker.name} child {pid} died" for pid in _pool_deaths(worker) if pid not in worker.killed
            ]
    return out


def terminate_all(workers: list[Worker]) -> dict[str, int | None]:
    """SIGTERM every running worker and wait; SIGKILL one that overstays (its code is then None)."""
    codes: dict[str, int | None] = {}
    live = [w for w in workers if w.process.poll() is None]
    for worker in live:
        worker.process.send_signal(signal.SIGTERM)
    for worker in live:
        try:
            codes[f"{worker.name}/pid{worker.process.pid}"] = worker.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for pid in [worker.process.pid, *worker.pids()]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            worker.process.wait()
            codes[f"{worker.name}/pid{worker.process.pid}"] = None
    return codes
