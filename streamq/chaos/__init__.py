"""A Jepsen-style chaos harness for streamq: `python -m streamq.chaos --quick`.

Worker subprocesses (worker.py) consume a stream while a producer (publisher.py) publishes seeded events
(workload.py) and a nemesis (faults.py) kills, freezes and disconnects workers, restarts the server and
trims the stream. Everything that happens is written to a ledger outside Redis (ledger.py); after a
drain, the checker (checker.py) sorts every event into lost / unexpected / duplicated / trimmed /
recovered and tests streamq's invariants; report.py prints the result. run.py ties one run together and
fleet.py keeps the workers at strength.

Nothing here is imported by `import streamq`, and this package imports nothing itself: the worker
subprocess (`python -m streamq.chaos.worker`) then loads only what it needs, and the harness and its
event type stay out of applications. Use `streamq.chaos.run` and `streamq.chaos.report` directly.
"""
