"""Chaos against one model's worker while the clients run: SIGKILL, SIGSTOP, unload.

Each action records when it struck and when the model answered again. A kill or a stop
excuses the errors of requests to that model which overlap that window (they were on the
worker, or waited for it); an unload excuses nothing: it must never cut a stream.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

import httpx
import psutil

from tests.conftest import Server

from .plan import CHAOS, SoakPlan
from .resources import worker_pids

RECOVERY_TIMEOUT = 90.0  # the model must answer again within this long
STOP_NOTICED = 30.0  # the monitor must kill a SIGSTOPped worker within this long
UNLOAD_TRIES = 15


@dataclass
class ChaosEvent:
    action: str  # sigkill | sigstop | unload
    at: float  # time.monotonic() when it struck
    pid: int
    excuses: bool  # whether errors overlapping [at, recovered] are expected
    recovered: float | None = None  # when the model answered a request again
    gone: float | None = None  # when the struck process was gone (reaped)
    problem: str = ""  # what went wrong with the action itself, if anything

    def window(self) -> tuple[float, float]:
        return self.at, self.recovered if self.recovered is not None else float("inf")


async def _gone(pid: int, timeout: float) -> float | None:
    """When `pid` is no more (exited and reaped by the supervisor), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                raise psutil.NoSuchProcess(pid)  # exited; the reap is checked at the end
        except psutil.NoSuchProcess:
            return time.monotonic()
        await asyncio.sleep(0.05)
    return None


async def _answers(http: httpx.AsyncClient) -> float | None:
    """When the chaos model answered a one-token generate again, or None."""
    body = {"model": CHAOS, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if (await http.post("/api/generate", json=body, timeout=30)).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    return None


async def _unload(http: httpx.AsyncClient, pid: int) -> tuple[str, float | None]:
    """`keep_alive: 0`, asked again each second for up to UNLOAD_TRIES seconds: the model
    goes when its last running request ends, and, as in Ollama, a request that comes
    after the unload and asks to keep the model (every soak request does: the server's
    10m) keeps it. Under steady traffic the count of running requests seldom reaches
    zero, so the unload is asked for until it happens (or the tries are over: not a
    failure, the streams it must never cut are checked either way)."""
    body = {"model": CHAOS, "keep_alive": 0}
    for _ in range(UNLOAD_TRIES):
        reply = await http.post("/api/generate", json=body)
        if reply.status_code != 200 or reply.json().get("done_reason") != "unload":
            return f"unload answered {reply.status_code}: {reply.text[:200]}", None
        gone = await _gone(pid, 1.0)
        if gone is not None:
            return "", gone
    return "", None


async def _strike(server: Server, http: httpx.AsyncClient, action: str) -> ChaosEvent:
    pid = worker_pids(server).get(CHAOS, 0)
    if not pid:
        return ChaosEvent(action, time.monotonic(), 0, False, problem=f"no {CHAOS} worker")
    event = ChaosEvent(action, time.monotonic(), pid, excuses=action != "unload")
    if action == "sigkill":
        os.kill(pid, signal.SIGKILL)
    elif action == "sigstop":
        os.kill(pid, signal.SIGSTOP)
    else:
        event.problem, gone = await _unload(http, pid)
        event.gone, event.recovered = gone, await _answers(http)
        return event
    waited = STOP_NOTICED if action == "sigstop" else RECOVERY_TIMEOUT
    gone, event.recovered = await asyncio.gather(_gone(pid, waited), _answers(http))
    event.gone = gone
    if gone is None:
        event.problem = event.problem or f"worker {pid} still there {waited:g}s after {action}"
    if event.recovered is None:
        event.problem = event.problem or f"{CHAOS} did not answer within {RECOVERY_TIMEOUT:g}s"
    return event


async def run_chaos(server: Server, plan: SoakPlan, started: float) -> list[ChaosEvent]:
    schedule = sorted(
        [(plan.kill_at, "sigkill"), (plan.stop_at, "sigstop"), (plan.unload_at, "unload")]
    )
    events: list[ChaosEvent] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        for fraction, action in schedule:
            delay = started + fraction * plan.duration - time.monotonic()
            await asyncio.sleep(max(delay, 0))
            events.append(await _strike(server, http, action))
    return events


def release_stopped(events: list[ChaosEvent]) -> None:
    """Never leave a stopped process behind, whatever happened."""
    for event in events:
        if event.action == "sigstop" and event.pid:
            try:
                os.kill(event.pid, signal.SIGCONT)
                os.kill(event.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
