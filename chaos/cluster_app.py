"""The worker of the cluster chaos run: `streamq worker chaos.cluster_app:app [--processes N]`.

A pool's children are fresh interpreters that import this module and take no arguments of their own, so
the settings come from the environment (STREAMQ_CHAOS_CLUSTER, JSON written by chaos/cluster.py). The
consumer and its recording handler are chaos/cluster_workload.py's.
"""

from __future__ import annotations

import json
import os

from .cluster_workload import CONFIG_ENV, build_app

app = build_app(json.loads(os.environ[CONFIG_ENV]))
