"""A Jepsen-style chaos harness for streamq: `python -m chaos --quick`.

Worker subprocesses (worker.py) consume a stream while a producer (publisher.py) publishes seeded events
(workload.py) and a nemesis (faults.py) kills, freezes and disconnects workers, restarts the server and
trims the stream. Everything that happens is written to a ledger outside Redis (ledger.py); after a
drain, the checker (checker.py) sorts every event into lost / unexpected / duplicated / trimmed /
recovered and tests streamq's invariants; report.py prints the result. run.py ties one run together and
fleet.py keeps the workers at strength.

This is test tooling, kept beside benchmarks/ and out of the streamq wheel: run it from a checkout, at the
repository's root (where `python -m chaos` finds it). This package imports nothing itself, so the worker
subprocess (`python -m chaos.worker`) loads only what it needs. Use `chaos.run` and `chaos.report` directly.
"""
