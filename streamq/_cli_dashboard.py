"""The `streamq dashboard` command: serve streamq.dashboard with uvicorn. cli.py calls add_commands.

uvicorn comes with the `dashboard` extra (`pip install 'streamq[dashboard]'`); without it the command says
so and exits 1. Not imported from streamq.cli (which imports this module): exit codes come from
streamq.exit_codes, and errors (a bad name, a bad option) are raised for cli.main to report.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from ._cli_args import positive_int
from ._connection import redact, resolve_url
from .exit_codes import FAILURE, OK, USAGE

ENV_TOKEN = "STREAMQ_DASHBOARD_TOKEN"
ENV_BASIC_AUTH = "STREAMQ_DASHBOARD_BASIC_AUTH"
DEFAULT_HOST = "127.0.0.1"  # this machine only: pass --host 0.0.0.0 to serve others, with auth
DEFAULT_PORT = 8000

DASHBOARD_EPILOG = f"""\
Read-only unless started with --allow-writes, which needs --token or --basic-auth: then the pages offer
replay, purge, pause and resume (POSTs with a CSRF token). The token and the basic-auth pair may come from
${ENV_TOKEN} and ${ENV_BASIC_AUTH} instead, which keeps them out of the process list. Redis is read once
per --refresh-ms whoever is watching. Payloads of dead letters are shown decoded as their event class when
it is importable: --import the modules that define your events.

examples:
  streamq dashboard --port 8000
  streamq dashboard orders payments --import myapp.events
  {ENV_TOKEN}=... streamq dashboard --host 0.0.0.0 --allow-writes
  streamq dashboard --allow-writes --basic-auth ops:secret

mounted in your own Starlette / FastAPI service instead:
  app.mount("/streamq", streamq.dashboard.create_app(REDIS_URL, basic_auth="ops:secret"))
"""


def add_commands(commands: Any, command: Any) -> None:
    """Add `dashboard` to the `streamq` parser: `command(commands, name, help, epilog, run)`."""
    about = "serve a web dashboard of streams, groups, consumers and dead letters"
    dash = command(commands, "dashboard", about, DASHBOARD_EPILOG, cmd_dashboard)
    dash.add_argument("streams", metavar="STREAM", nargs="*", help="default: every known stream")
    dash.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})")
    dash.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default: {DEFAULT_PORT})"
    )
    dash.add_argument(
        "--allow-writes", action="store_true", help="offer replay, purge, pause and resume (needs auth)"
    )
    auth = dash.add_mutually_exclusive_group()
    auth.add_argument("--token", metavar="TOKEN", help=f"require this token (default: ${ENV_TOKEN})")
    auth.add_argument(
        "--basic-auth", metavar="USER:PASSWORD", help=f"require basic auth (default: ${ENV_BASIC_AUTH})"
    )
    dash.add_argument(
        "--refresh-ms", metavar="N", type=positive_int, default=2_000,
        help="how long one read of Redis serves every viewer, and how often pages refresh (default: 2000)",
    )  # fmt: skip
    dash.add_argument(
        "--import", dest="imports", metavar="MODULE", action="append", default=[],
        help="import MODULE first, so that dead letters of its event classes are shown decoded (repeatable)",
    )  # fmt: skip


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print(
            "streamq: error: the dashboard needs uvicorn: pip install 'streamq[dashboard]'", file=sys.stderr
        )
        return FAILURE
    from .dashboard import create_app

    token = args.token or os.environ.get(ENV_TOKEN) or None
    basic = None if token else (args.basic_auth or os.environ.get(ENV_BASIC_AUTH) or None)
    if args.allow_writes and not (token or basic):
        print(
            "streamq dashboard: error: --allow-writes needs --token or --basic-auth (or"
            f" ${ENV_TOKEN} / ${ENV_BASIC_AUTH}): writes are never open to anyone who reaches the port",
            file=sys.stderr,
        )
        return USAGE
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in args.imports:
        importlib.import_module(module)
    url = resolve_url(args.redis_url)
    app = create_app(
        url, streams=args.streams or None, allow_writes=args.allow_writes, token=token, basic_auth=basic,
        refresh_ms=args.refresh_ms,
    )  # fmt: skip
    mode = "writes allowed" if args.allow_writes else "read-only"
    print(f"streamq dashboard on http://{args.host}:{args.port}/ ({mode}, Redis {redact(url)})", flush=True)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="on"
    )
    uvicorn.Server(config).run()
    return OK
