"""The chaos worker as an app for the process pool: `streamq worker chaos.pool_app:app --processes N`.

The pool starts each child as `python -m streamq worker chaos.pool_app:app`, a fresh interpreter that
imports this module, so a child cannot be handed arguments of its own: it reads the chaos worker's
arguments (the ones `chaos.worker` takes on its command line) from STREAMQ_CHAOS_WORKER_ARGS, which the
harness sets for the supervisor and every child inherits. Each child then builds the same App as
`chaos.worker` (the recording handler, the failpoint seams, any sabotage) and opens its own ledger file,
named by its pid. Its logging is the streamq CLI's, as in any deployment.

Failpoints are read from STREAMQ_CHAOS_FAILPOINTS as in chaos.worker, but in a pool every child inherits
the same value (the harness cannot arm one child and not another), so the pool run leaves it empty.
"""

from __future__ import annotations

import os
import random
import shlex

from .ledger import WorkerLog
from .worker import FAILPOINTS_ENV, LOG_FILE_PREFIX, WORKER_ARGS_ENV, Failpoints, build_app, parse_args

_args = parse_args(shlex.split(os.environ[WORKER_ARGS_ENV]))
# Never closed: the child's process ends it. Each write() is a whole batch's lines, as in chaos.worker.
_log = WorkerLog(os.path.join(_args.ledger_dir, f"{LOG_FILE_PREFIX}{os.getpid()}.tsv"), fsync=_args.fsync)
_armed = Failpoints.parse(os.environ.get(FAILPOINTS_ENV, ""))
_failpoints = Failpoints(_armed, random.Random(_args.seed * 100_003 + os.getpid()), _log)
app = build_app(_args, _log, _failpoints)
