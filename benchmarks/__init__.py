"""streamq's benchmark harness: ``python -m benchmarks --help``.

One module per contender (``baseline_redispy``, ``scenarios_streamq``, ``peer_taskiq``,
``peer_faststream``), plus streamq's system scenarios (``scenarios_system``: end to end, scaling, recovery,
failure paths, growth, with their helper processes in ``procs``), each listing its cases in ``CASES``;
``harness`` measures them, each repeat in a fresh process; ``report`` prints and writes the figures. Results
and how they were made: benchmarks/RESULTS.md.
"""
