"""The texts `streamq --help` and each command's --help print below the options: examples, mostly.

Kept apart from cli.py, where a hundred lines of examples would stand between the reader and the parser
they belong to.
"""

from __future__ import annotations

from ._cli_output import SHOW_FIELD_BYTES
from ._connection import ENV_URL
from ._pool import CRASH_LOOP_DEATHS, HEALTHY_AFTER_MS, RESTART_BASE_MS, RESTART_MAX_MS
from .exit_codes import ABANDONED, FAILURE, INTERRUPTED, OK, USAGE

EPILOG = f"""\
examples:
  streamq worker myapp.workers:app                run an app's consumers until SIGTERM or Ctrl-C
  streamq worker myapp.workers:app --burst        process everything there is, then exit
  streamq status                                  every stream that has had a worker
  streamq status orders --json
  streamq top                                     the same, live: rates, lag trend, idle consumers
  streamq dlq list orders
  streamq dlq replay orders --all
  streamq inspect orders 1712345678901-0          where one event is, in each group
  streamq publish orders --type order.placed --events myapp.events --data '{{"order_id": 1}}'
  streamq demo                                    the showcase, on a throwaway server
  {ENV_URL}=redis://:secret@redis:6379/0 streamq status

exit codes: {OK} ok, {FAILURE} failure, {USAGE} usage error, {INTERRUPTED} interrupted,
  {ABANDONED} the worker's shutdown grace period ran out (see `streamq worker --help`)
"""

_RESTART_BACKOFF = f"{RESTART_BASE_MS / 1000:g} s, doubling up to {RESTART_MAX_MS / 1000:g} s"
_HEALTHY_S = f"{HEALTHY_AFTER_MS / 1000:g}"

WORKER_EPILOG = f"""\
APP_PATH is module:attribute naming a streamq.App; the current directory is on the import path.
The app's own Redis URL wins; an app built without one (streamq.App()) uses --redis-url.
A server unreachable at start is waited for: --connect-timeout-ms long, by default the app's own
connect_timeout_ms, else 30 s with --burst and for ever without (a worker outlives a server restart).
With --processes N (auto: one per core), a supervisor runs N such workers as child processes and
forwards SIGTERM/SIGINT to each. One that dies is restarted after a backoff ({_RESTART_BACKOFF});
when workers keep dying before running {_HEALTHY_S} s ({CRASH_LOOP_DEATHS} in a row), or one fails
at start, it stops them all and exits {FAILURE}.

examples:
  streamq worker myapp.workers:app
  streamq worker myapp.workers:app --redis-url rediss://:secret@redis.internal:6380/0
  streamq worker myapp.workers:app --burst --log-level debug
  streamq worker myapp.workers:app --connect-timeout-ms 120000
  streamq worker myapp.workers:app --processes auto  one worker per core, restarted if one dies
  streamq worker streamq._demo_app:app             the demo's billing consumer

exit codes:
  {OK}: stopped cleanly (SIGTERM, Ctrl-C, or drained with --burst)
  {FAILURE}: failed: the server unreachable or unusable, the app failed on import, a part failed for good
     (--processes: a worker failed at start, or the workers kept dying: a crash loop)
  {USAGE}: bad arguments, or an APP_PATH that does not load
  {ABANDONED}: the shutdown grace period ran out with batches in flight (they stay pending and are reclaimed)
  {INTERRUPTED}: stopped at once by a second signal (in-flight batches stay pending and are reclaimed)
"""

STATUS_EPILOG = """\
Without STREAM arguments, shows every stream that has had a streamq worker.
PENDING counts entries delivered and not yet settled; LAG those not yet delivered to the group;
RETRIES WAITING those failed and waiting for their backoff. The counters are totals since the group began;
--json gives every one, 0 until it first counts. A STREAM that names a key of another type says which.
--watch refreshes every --interval-ms with rates per second (see `streamq top --help`, the same view).

examples:
  streamq status
  streamq status orders payments
  streamq status orders --json | jq '.[0].groups[0].pending'
  streamq status orders --watch --interval-ms 1000
"""

DLQ_EPILOG = """\
Each stream has one dead-letter stream, shared by its groups; every dead letter names its group.

examples:
  streamq dlq list orders
  streamq dlq show orders 1712345678901-0
  streamq dlq replay orders --all --group billing
  streamq dlq purge orders 1712345678901-0
"""

DLQ_LIST_EPILOG = """\
Pages of --limit dead letters, oldest first. Under the table (on stderr) it says how many there are in
all and, when more follow, the --after to give for the next page. With --group, every group's dead
letters are counted in the total, and it says how many were scanned to find the group's.
--json prints {stream, group, total, scanned, next_after, dead_letters}; next_after is null on the last page.

examples:
  streamq dlq list orders
  streamq dlq list orders --after 1712345678901-0
  streamq dlq list orders --group billing --limit 20
  streamq dlq list orders --json | jq -r '.dead_letters[].dlq_id'
"""

DLQ_SHOW_EPILOG = f"""\
Prints every field: why and when it failed, the error and its traceback, the raw payload as hex and,
when the payload is msgpack, a preview of it decoded as plain data. Each field is cut to its first
{SHOW_FIELD_BYTES} bytes, ending in "... N more bytes, use --full"; --full prints it all. With --json, a cut
field is listed in "truncated" (field: bytes left out), and an event preview too long is left out (null).

examples:
  streamq dlq show orders 1712345678901-0
  streamq dlq show orders 1712345678901-0 --full > letter.txt
  streamq dlq show orders 1712345678901-0 --json --full | jq -r .payload | xxd -r -p > payload.bin
"""

DLQ_REPLAY_EPILOG = f"""\
A replayed event goes back to its own group only, with a fresh set of attempts, and leaves the
dead-letter stream in the same atomic step. Entries with no payload field at all cannot be replayed.
Every DLQ_ID that can be replayed is; the ones that are not dead letters of STREAM are then named, and
so are the ones left (no payload field, another group than --group), and the exit code is {FAILURE}.

examples:
  streamq dlq replay orders 1712345678901-0 1712345678950-0
  streamq dlq replay orders --all
  streamq dlq replay orders --all --group billing
"""

DLQ_PURGE_EPILOG = f"""\
Every DLQ_ID there is deleted; the ones that are not dead letters of STREAM are then named, and the
exit code is {FAILURE}.

examples:
  streamq dlq purge orders 1712345678901-0 1712345678950-0
  streamq dlq purge orders --all --yes
"""

DEMO_EPILOG = f"""\
Publishes order events (some poison, two undecodable), starts a worker and SIGKILLs it mid-batch, then
runs a second worker in burst mode that reclaims the dead worker's entries, retries the failures and
dead-letters the poison. Exits {OK} only if every event ended acknowledged or dead-lettered, nothing pending.
Without --redis-url (or {ENV_URL}) it starts a throwaway server. With a URL it first deletes the
demo stream's previous data (stream demo.orders and its streamq keys; nothing else).

examples:
  streamq demo
  streamq demo --events 2000
  streamq demo --redis-url redis://localhost:6379/0
  streamq demo --redis-url redis://redis:6379/0 --producer-only   what docker-compose's producer runs
"""
