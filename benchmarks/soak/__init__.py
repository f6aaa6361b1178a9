"""`make soak`: a bounded soak and chaos run against a real `ollmlx serve` (issue 11).

Concurrent clients of every dialect (the official `ollama`, `openai` and `anthropic`
clients, plus raw HTTP for inputs no client would send) run against tiny models while
chaos strikes one model's worker: a SIGKILL, a SIGSTOP (the health monitor must kill
it), and an unload (`keep_alive: 0`) in the middle of the traffic. The run fails when a
request is lost (its stream has no final line and no error line), when a client error
is answered with a 5xx (or any status but its expected one), when a request that no
chaos touched fails, or when the supervisor's or a long-lived worker's memory or file
descriptors grow beyond a bound (see `plan.Bounds`).

    python -m benchmarks.soak --duration 300
"""

from __future__ import annotations

from .plan import Bounds, SoakPlan
from .run import run_soak

__all__ = ["Bounds", "SoakPlan", "run_soak"]
