"""The exit codes of `streamq` commands and of `run_app`, in one place (the CLI help quotes them)."""

OK = 0
FAILURE = 1  # the command ran and failed: Redis unreachable, no such dead letter, a part failed for good
USAGE = 2  # bad arguments (argparse's own code for them too), an APP_PATH that does not load
ABANDONED = 3  # the shutdown grace period ran out: batches in flight were left pending, to be reclaimed
INTERRUPTED = 130  # 128 + SIGINT: stopped at once by a second signal, in-flight batches left pending
