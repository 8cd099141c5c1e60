"""The process pool behind `streamq worker APP --processes N`: N plain workers, kept running.

Each child is an ordinary `python -m streamq worker APP ...` process, started with subprocess, never a fork
of this one: a worker's event loop (uvloop), Redis connections and threads must not be shared, and a child
that loads the app itself fails exactly as a single worker would, with the same exit codes. The supervisor
imports no user code, holds no connection and runs no thread: it starts children, waits, and decides.

What it decides, and why:

- A child that dies is started again after a jittered backoff (RESTART_BASE_MS doubling to RESTART_MAX_MS
  per death in a row of that slot), reset once a child has run HEALTHY_AFTER_MS: one crash is an accident,
  a crash at every start is not, and restarting at once would spin.
- Crash loop: CRASH_LOOP_DEATHS deaths in a row across the pool, each before the child ran healthily, with
  no child turning healthy in between: the pool stops every child and exits FAILURE, saying so. Restarting
  for ever would hide a broken deployment behind a process list that looks alive.
- Some exits are verdicts, not accidents, and a restart would only repeat them: USAGE (bad arguments, an
  APP_PATH that does not load), FAILURE before the child ran healthily (the app failed on import, a
  configuration error, a refused connection, an unreachable server with a connect timeout), and FAILURE in
  burst mode (a one-shot run reports its failure, it does not retry it). The pool stops every child and
  exits with that code.
- In burst mode a child that exits 0 has drained the streams: its slot is done and is not restarted; the
  pool exits once every slot is done.
- SIGTERM or SIGINT: forwarded to every child as SIGTERM, which a worker treats as it treats SIGINT, and
  which stops a child still starting up without a KeyboardInterrupt traceback. Children settle what they
  hold within their own shutdown_grace_ms. A second signal is forwarded too: children stop at once.
- Metrics (--metrics-port P): each child serves its own port, P + its slot's index (slot_args), and a
  restarted child takes its slot's port again: one scrape target per process, no shared state to merge.
- No orphans. Each child runs in a process group of its own, so a Ctrl-C at a terminal reaches the
  supervisor only (which forwards it once; otherwise every child would see it twice and stop at once).
  Each child asks the kernel for SIGTERM when the supervisor dies (PR_SET_PDEATHSIG, Linux), so even a
  supervisor killed with -9 leaves children that settle and exit; and if the supervisor itself fails
  unexpectedly, it kills each child's process group before the error propagates.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import structlog

from ._backoff import backoff_ms
from .exit_codes import ABANDONED, FAILURE, INTERRUPTED, OK, USAGE

RESTART_BASE_MS = 500  # the first restart of a slot comes 250-500 ms after the death (jittered)
RESTART_MAX_MS = 30_000  # the backoff doubles per death in a row up to this ceiling (15-30 s)
HEALTHY_AFTER_MS = 10_000  # a child running this long is healthy: backoff and crash-loop count reset
CRASH_LOOP_DEATHS = 5  # deaths in a row, none after a healthy run: the pool gives up
POLL_MS = 100  # how often children are checked: bounds how late a death or a signal is acted on

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

log = structlog.get_logger("streamq.pool")


# ---------------------------------------------------------------------------------------------- decisions


class Next(enum.Enum):
    """What to do with a slot whose child has exited."""

    DONE = "done"  # finished: stopped on request, or drained in burst mode
    RESTART = "restart"  # an accident: start it again after a backoff
    GIVE_UP = "give up"  # a verdict every restart would repeat: stop the pool with the child's code


def decide(code: int, *, healthy: bool, burst: bool, stopping: bool) -> Next:
    """The whole restart policy, as a pure function of how a child ended (`code` is Popen's returncode:
    negative for a signal) and what the pool was doing."""
    if stopping:
        return Next.DONE
    if code == USAGE or (code == FAILURE and (burst or not healthy)):
        return Next.GIVE_UP
    if code == OK and burst:
        return Next.DONE
    # Killed (SIGKILL from the OOM killer, a segfault), FAILURE after a healthy run (a part failed for
    # good, e.g. after a long outage), or stopped by a signal sent to it and not to the pool.
    return Next.RESTART


def describe_exit(code: int) -> str:
    """`exit 3` or `killed by SIGKILL`, for log lines."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


# ---------------------------------------------------------------------------------------------- children


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel SIGTERM the child when the supervisor dies, however it dies (Linux).

    Not embedded.py's hook: that one SIGKILLs, right for a throwaway server, wrong for a worker holding
    batches it could settle within its grace period. The signal fires when the thread that forked exits:
    the pool forks from the main thread only (it installs signal handlers, which only the main thread can).
    """
    if not sys.platform.startswith("linux"):
        return None
    # Resolved here, in the parent: loading a library between fork and exec is not safe.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent_pid = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


@dataclass
class _Slot:
    """One of the N places a child runs in; a restarted child takes its predecessor's slot."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0  # time.monotonic() when the current child started
    healthy: bool = False  # the current child has run HEALTHY_AFTER_MS
    deaths: int = 0  # deaths in a row of this slot with no healthy run: the backoff's exponent
    restarts: int = 0
    restart_at_s: float | None = None  # a dead child is due to be started again then
    done: bool = False


# ---------------------------------------------------------------------------------------------- the pool


class Pool:
    """Runs `argv` (a whole `python -m streamq worker ...` command) in `processes` children until stopped."""

    def __init__(
        self,
        argv: Sequence[str],
        processes: int,
        *,
        burst: bool = False,
        slot_args: Callable[[int], Sequence[str]] | None = None,
    ) -> None:
        """`slot_args`: what the child of slot i gets after `argv` (its own metrics port, say)."""
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self._argv = list(argv)
        self._slot_args = slot_args
        self._burst = burst
        self._slots = [_Slot(index) for index in range(processes)]
        self._signals_received = 0  # counted by the handler; acted on by the loop, between its steps
        self._signals_seen = 0
        self._stopping = False
        self._interrupted = False  # a second signal: children were told to stop at once
        self._verdict: int | None = None  # the exit code, once the pool gave up (USAGE or FAILURE)
        self._deaths_in_a_row = 0  # across the pool, reset when any child runs healthily
        self._stop_codes: list[int] = []  # how children ended while the pool was stopping

    def run(self) -> int:
        """Start the children and supervise them; returns the pool's exit code (see exit_code())."""
        replaced: dict[signal.Signals, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            replaced[sig] = signal.signal(sig, self._on_signal)
        try:
            for slot in self._slots:
                self._start(slot)
            while not all(slot.done for slot in self._slots):
                self._take_signals()
                self._reap()
                self._restart_due()
                self._note_healthy()
                time.sleep(POLL_MS / 1000)
            code = self.exit_code()
            log.info("worker pool stopped", exit_code=code)
            return code
        finally:
            self._kill_leftovers()
            for sig, handler in replaced.items():
                if handler is not None:  # None: installed outside Python, cannot be put back from it
                    signal.signal(sig, handler)

    def exit_code(self) -> int:
        """The verdict if the pool gave up; else the worst way a child stopped: INTERRUPTED (a second
        signal), ABANDONED (a grace period ran out), FAILURE (a child failed while stopping), else OK.
        A child killed by the forwarded SIGTERM before it installed its handlers held nothing: clean."""
        if self._verdict is not None:
            return self._verdict
        if self._interrupted or INTERRUPTED in self._stop_codes:
            return INTERRUPTED
        if ABANDONED in self._stop_codes:
            return ABANDONED
        if any(code not in (OK, -signal.SIGTERM) for code in self._stop_codes):
            return FAILURE
        return OK

    # ------------------------------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only counted here: a handler runs between any two bytecodes of the loop, which must not see a
        # slot half updated. The loop acts on it within POLL_MS.
        self._signals_received += 1

    def _take_signals(self) -> None:
        if self._signals_seen < self._signals_received and not self._stopping:
            # A child that died just before the signal (within one poll) died before the stop: a death,
            # not a child failing to stop, which would make a clean stop exit 1.
            self._reap()
        while self._signals_seen < self._signals_received:
            self._signals_seen += 1
            if not self._stopping:
                log.info(
                    "stopping: worker processes finish the batches in hand (signal again to stop at once)",
                    processes=self._live(),
                )
                self._stop()
            else:
                log.warning("stopping at once: worker processes give back what they hold",
                            processes=self._live())  # fmt: skip
                self._interrupted = True
                self._signal_children(signal.SIGTERM)  # each child's second signal

    def _stop(self) -> None:
        """Stop every child as one worker stops on its first signal; slots waiting to restart are done."""
        self._stopping = True
        for slot in self._slots:
            if slot.process is None and not slot.done:
                slot.restart_at_s = None
                slot.done = True
        self._signal_children(signal.SIGTERM)

    def _signal_children(self, sig: signal.Signals) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(sig)

    def _live(self) -> int:
        return sum(slot.process is not None for slot in self._slots)

    # ------------------------------------------------------------------------------------------ children

    def _start(self, slot: _Slot) -> None:
        try:
            argv = [*self._argv, *(self._slot_args(slot.index) if self._slot_args is not None else ())]
            slot.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, process_group=0, preexec_fn=_die_with_parent()
            )
        except OSError as exc:  # no such interpreter, out of processes: no restart would do better
            log.error("cannot start a worker process: stopping the pool", slot=slot.index, error=str(exc))
            slot.done = True
            self._give_up(FAILURE)
            return
        slot.started_s = time.monotonic()
        slot.healthy = False
        log.info("worker process started", slot=slot.index, pid=slot.process.pid, restarts=slot.restarts)

    def _reap(self) -> None:
        for slot in self._slots:
            if slot.process is not None and (code := slot.process.poll()) is not None:
                self._on_exit(slot, slot.process.pid, code)

    def _on_exit(self, slot: _Slot, pid: int, code: int) -> None:
        slot.process = None
        ran_s = time.monotonic() - slot.started_s
        healthy = slot.healthy or ran_s >= HEALTHY_AFTER_MS / 1000
        bound = log.bind(slot=slot.index, pid=pid, exit=describe_exit(code), ran_s=round(ran_s, 1),
                         restarts=slot.restarts)  # fmt: skip
        step = decide(code, healthy=healthy, burst=self._burst, stopping=self._stopping)
        if step is Next.DONE:
            slot.done = True
            if self._stopping:
                self._stop_codes.append(code)
            bound.info("worker process exited")
            return
        if step is Next.GIVE_UP:
            slot.done = True
            why = "it cannot start" if code == USAGE else "it failed before running healthily"
            if self._burst and code == FAILURE:
                why = "it failed in burst mode"
            bound.error(f"worker process failed: not restarting it ({why}), stopping the pool")
            self._give_up(code)
            return
        # A death. After a healthy run it starts a fresh count; before one, it adds to the crash loop.
        if healthy:
            slot.deaths = 0
            self._deaths_in_a_row = 0
        else:
            self._deaths_in_a_row += 1
        slot.deaths += 1
        if self._deaths_in_a_row >= CRASH_LOOP_DEATHS:
            slot.done = True
            bound.error(
                "crash loop: worker processes keep dying before running healthily, stopping the pool",
                deaths_in_a_row=self._deaths_in_a_row, healthy_after_ms=HEALTHY_AFTER_MS,
            )  # fmt: skip
            self._give_up(FAILURE)
            return
        delay_ms = backoff_ms(slot.deaths, base_ms=RESTART_BASE_MS, max_ms=RESTART_MAX_MS)
        slot.restart_at_s = time.monotonic() + delay_ms / 1000
        bound.warning("worker process died: restarting it", restart_in_s=round(delay_ms / 1000, 2),
                      deaths_in_a_row=self._deaths_in_a_row)  # fmt: skip

    def _give_up(self, code: int) -> None:
        if self._verdict is None:
            self._verdict = code
        if not self._stopping:
            self._stop()

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.restart_at_s is not None and now >= slot.restart_at_s:
                slot.restart_at_s = None
                slot.restarts += 1
                self._start(slot)

    def _note_healthy(self) -> None:
        """A child that has run HEALTHY_AFTER_MS ends the count of deaths, its slot's and the pool's."""
        now = time.monotonic()
        for slot in self._slots:
            ran_s = now - slot.started_s
            if slot.process is not None and not slot.healthy and ran_s >= HEALTHY_AFTER_MS / 1000:
                slot.healthy = True
                slot.deaths = 0
                self._deaths_in_a_row = 0
                if slot.restarts:
                    log.info("restarted worker process runs healthily", slot=slot.index,
                             pid=slot.process.pid, restarts=slot.restarts)  # fmt: skip

    def _kill_leftovers(self) -> None:
        """Only after an unexpected error in the loop (normally every child has exited by now): kill each
        child's whole process group, so that nothing of the pool outlives it unsupervised."""
        for slot in self._slots:
            if slot.process is not None and slot.process.poll() is None:
                pid = slot.process.pid
                log.error("the pool failed: killing its worker process", slot=slot.index, pid=pid)
                with contextlib.suppress(ProcessLookupError):  # it exited meanwhile: nothing to kill
                    os.killpg(pid, signal.SIGKILL)
                slot.process.wait()


def run_pool(
    argv: Sequence[str],
    processes: int,
    *,
    burst: bool = False,
    slot_args: Callable[[int], Sequence[str]] | None = None,
) -> int:
    """Run `argv` in `processes` supervised children; returns the pool's exit code."""
    return Pool(argv, processes, burst=burst, slot_args=slot_args).run()
