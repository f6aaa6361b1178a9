"""The soak's verdict fails when it should: lost requests, 5xx for client errors,
unexcused errors, growth beyond the bounds (benchmarks/soak/report.py)."""

from __future__ import annotations

from benchmarks.soak.chaos import ChaosEvent
from benchmarks.soak.outcomes import ERROR, LOST, OK, REJECTED, Outcome, classify
from benchmarks.soak.plan import CHAOS, MIB, STEADY, SoakPlan
from benchmarks.soak.report import Report
from benchmarks.soak.resources import ProcStat, Snapshot


def stat(pid: int = 1, rss: int = 100 * MIB, fds: int = 20, sockets: int = 8) -> ProcStat:
    return ProcStat(pid=pid, rss=rss, fds=fds, sockets=sockets)


def report(outcomes: list[Outcome], events: list[ChaosEvent] = (), **end: ProcStat) -> Report:
    start = Snapshot(stat(), {STEADY: stat(pid=2)})
    finish = Snapshot(end.get("supervisor", stat()), {STEADY: end.get("worker", stat(pid=2))})
    return Report(SoakPlan(clients=4), outcomes, list(events), start, finish, 0.0, (STEADY,))


def ok(kind: str = "ollama.generate.stream", model: str = STEADY) -> Outcome:
    return Outcome(kind, model, 1.0, 2.0, OK, 200)


def test_a_clean_run_passes() -> None:
    assert report([ok(), ok("openai.chat.whole")]).failures() == []


def test_a_lost_request_fails() -> None:
    lost = Outcome("openai.chat.stream", STEADY, 1.0, 2.0, LOST, None, "incomplete: 3 chunks")
    assert report([ok(), ok("openai.chat.whole"), lost]).failures() == [
        "lost (1x): openai.chat.stream lost stream: incomplete: N chunks"
    ]


def test_a_5xx_for_a_client_error_fails() -> None:
    bad = Outcome("bad.option.min_p", STEADY, 1.0, 2.0, ERROR, 500, "boom", (400,))
    (failure,) = report([ok(), bad]).failures()
    assert failure.startswith("client error bad.option.min_p answered 5xx (expected (400,))")


def test_a_client_error_answered_as_expected_passes() -> None:
    bad = Outcome("bad.option.min_p", STEADY, 1.0, 2.0, REJECTED, 400, "min_p", (400,))
    assert report([ok(), bad]).failures() == []


def test_an_error_is_excused_only_on_the_struck_model_inside_the_window() -> None:
    kill = ChaosEvent("sigkill", at=10.0, pid=5, excuses=True, recovered=15.0, gone=10.1)
    inside = Outcome("ollama.chat.stream", CHAOS, 9.0, 11.0, ERROR, None, "runner stopped")
    chat = ok("ollama.chat.whole")
    assert report([chat, inside], [kill]).failures() == []
    later = Outcome("ollama.chat.stream", CHAOS, 16.0, 17.0, ERROR, None, "runner stopped")
    other = Outcome("ollama.chat.stream", STEADY, 9.0, 11.0, ERROR, None, "runner stopped")
    assert len(report([chat, later, other], [kill]).failures()) == 2
    unload = ChaosEvent("unload", at=10.0, pid=6, excuses=False, recovered=15.0, gone=11.0)
    assert len(report([chat, inside], [unload]).failures()) == 1  # an unload cuts nothing


def test_growth_beyond_the_bounds_fails() -> None:
    grown = report([ok()], supervisor=stat(rss=200 * MIB, fds=30)).failures()
    assert [f.split(" grew")[0] for f in grown] == ["supervisor RSS", "supervisor non-socket fds"]
    worker = report([ok()], worker=stat(pid=2, rss=300 * MIB)).failures()
    assert worker == [f"{STEADY} worker RSS grew 200.0M (from 100.0M; bound 128.0M)"]
    replaced = report([ok()], worker=stat(pid=3)).failures()
    assert replaced == [f"the {STEADY} worker, never struck by chaos, did not live to the end"]


def test_sockets_left_to_a_gone_worker_fail() -> None:
    leaky = stat()
    leaky.to_gone = 2
    assert report([ok()], supervisor=leaky).failures() == [
        "supervisor holds 2 socket(s) to workers that are gone"
    ]


def test_a_dialect_that_never_succeeds_fails() -> None:
    failed = Outcome("anthropic.messages.whole", CHAOS, 1.0, 2.0, LOST, None, "cut: reset")
    assert "no successful anthropic.messages request" in report([ok(), failed]).failures()


def test_client_exceptions_are_classified() -> None:
    import asyncio

    import httpx
    import ollama

    assert classify(ollama.ResponseError("boom", -1)) == (ERROR, None, "boom")
    assert classify(ollama.ResponseError('{"error": "no"}', 400)) == (ERROR, 400, "no")
    assert classify(asyncio.TimeoutError())[0] == LOST
    assert classify(httpx.RemoteProtocolError("incomplete chunked read"))[0] == LOST
    assert classify(ValueError("bad json")) == (ERROR, 0, "unreadable answer: ValueError: bad json")
