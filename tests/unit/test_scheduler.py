"""The scheduler's decisions, with an in-memory worker handle (as Ollama's sched_test.go).

Every behaviour here also has an end-to-end test with real workers; these pin down the
orderings that are hard to provoke on demand: a stop that hangs, a load that is
unloaded, a monitor that sees a worker being stopped.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ollmlx.config import Settings
from ollmlx.errors import StatusError
from ollmlx.serving.runner import WorkerSpec
from ollmlx.serving.scheduler import Scheduler
from ollmlx.store.catalog import StoredModel
from ollmlx.store.names import parse_name
from ollmlx.store.spec import ModelSpec

pytestmark = pytest.mark.asyncio(loop_scope="function")


class FakeWorker:
    """A worker handle whose start, readiness, stop and death the test controls."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.ready = asyncio.Event()
        self.ready.set()
        self.stop_gate = asyncio.Event()  # stop() returns when this is set
        self.stop_gate.set()
        self.exited = asyncio.Event()
        self.fail_load: Exception | None = None
        self.stopping = False
        self.stop_calls = 0
        self.killed = False
        self.problem: str | None = None
        self.memory_bytes = 100
        self.held_bytes = 0
        self.pid = id(self)
        self.stderr_tail = ""

    @property
    def has_exited(self) -> bool:
        return self.exited.is_set()

    async def start(self) -> None:
        pass

    async def wait_until_ready(self) -> None:
        await self.ready.wait()
        if self.fail_load is not None:
            raise self.fail_load
        if self.has_exited:
            raise StatusError("exited while loading")

    async def stop(self) -> None:
        self.stopping = True
        self.stop_calls += 1
        await self.stop_gate.wait()
        self.exited.set()

    def kill(self) -> None:
        self.killed = True
        self.exited.set()

    async def wait_exit(self) -> int:
        await self.exited.wait()
        return -9

    async def health_problem(self, timeout: float) -> str | None:
        return self.problem


class Harness:
    def __init__(self, **settings: object) -> None:
        base = Settings(keep_alive=60.0, health_interval=0.01, memory_budget=1000)
        self.settings = replace(base, **settings)  # type: ignore[arg-type]
        self.workers: list[FakeWorker] = []
        self.next_setup: list[object] = []
        self.scheduler = Scheduler(self.settings, self.spawn)

    def spawn(self, spec: WorkerSpec) -> FakeWorker:  # type: ignore[override]
        worker = FakeWorker(spec)
        if self.next_setup:
            self.next_setup.pop(0)(worker)  # type: ignore[operator]
        self.workers.append(worker)
        return worker

    def workers_of(self, name: str) -> list[FakeWorker]:
        return [w for w in self.workers if w.spec.name == f"{name}:latest"]


def model(name: str, digest: str = "d1") -> StoredModel:
    return StoredModel(
        name=parse_name(name),
        manifest=ModelSpec(),
        model_dir=Path("/nonexistent"),
        adapter_dir=None,
        digest=digest,
        modified_at=datetime.now(timezone.utc),
    )


async def eventually(predicate: object, timeout: float = 2.0) -> bool:
    """Poll until `predicate()` holds (the scheduler's tasks run in between)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)
    return True


async def test_unload_while_busy_waits_for_the_last_request() -> None:
    h = Harness()
    async with h.scheduler.use(model("a"), None, 10) as lease:
        assert await h.scheduler.unload("a:latest")
        await asyncio.sleep(0.02)
        assert not lease.worker.stopping  # type: ignore[attr-defined]
    (worker,) = h.workers
    await eventually(lambda: worker.has_exited)
    assert worker.stop_calls == 1
    assert h.scheduler.loaded() == []


async def test_a_slow_stop_never_delays_another_model() -> None:
    h = Harness()
    async with h.scheduler.use(model("b"), None, 10):
        pass  # b is loaded and idle
    await h.scheduler.load(model("a"), None, 10)
    (worker_a,) = h.workers_of("a")
    worker_a.stop_gate.clear()  # a's process will not exit on its own
    await h.scheduler.unload("a:latest")
    await eventually(lambda: worker_a.stop_calls == 1)
    # b answers while a's stop is still in progress.
    await asyncio.wait_for(h.scheduler.load(model("b"), None, 10), 1)
    assert not worker_a.has_exited
    worker_a.stop_gate.set()
    await eventually(lambda: worker_a.has_exited)


async def test_a_stopping_worker_still_counts_against_memory() -> None:
    h = Harness(memory_budget=150)
    await h.scheduler.load(model("a"), None, 100)
    (worker_a,) = h.workers
    worker_a.stop_gate.clear()
    await h.scheduler.unload("a:latest")
    task = asyncio.ensure_future(h.scheduler.load(model("b"), None, 100))
    await asyncio.sleep(0.05)
    assert not h.workers_of("b")  # b waits: a still holds its memory
    worker_a.stop_gate.set()
    await asyncio.wait_for(task, 2)
    assert len(h.workers_of("b")) == 1


async def test_an_unload_during_the_load_is_not_a_failed_start() -> None:
    h = Harness()
    h.next_setup.append(lambda w: w.ready.clear())  # the first load hangs until stopped
    loading = asyncio.ensure_future(h.scheduler.load(model("a"), None, 10))
    await eventually(lambda: h.workers)
    loading.cancel()  # the client left: the load goes on, shielded, with no request
    with pytest.raises(asyncio.CancelledError):
        await loading
    assert await h.scheduler.unload("a:latest")
    first = h.workers[0]
    await eventually(lambda: first.has_exited)
    first.ready.set()
    # No backoff: the next request starts a worker at once and is served.
    await asyncio.wait_for(h.scheduler.load(model("a"), None, 10), 1)
    assert len(h.workers) == 2


async def test_a_failed_start_backs_off() -> None:
    h = Harness()
    h.next_setup.append(lambda w: setattr(w, "fail_load", StatusError("boom")))
    with pytest.raises(StatusError, match="boom"):
        await h.scheduler.load(model("a"), None, 10)
    with pytest.raises(StatusError, match="next start attempt in"):
        await h.scheduler.load(model("a"), None, 10)
    assert len(h.workers) == 1


async def test_requests_waiting_for_a_slot_move_to_the_replacement() -> None:
    h = Harness(num_parallel=1)
    holder = h.scheduler.use(model("a"), None, 10)
    lease = await holder.__aenter__()
    waiting = asyncio.ensure_future(h.scheduler.load(model("a"), None, 10))
    await asyncio.sleep(0.02)
    lease.worker.kill()  # type: ignore[attr-defined]  # the worker dies under both
    await holder.__aexit__(None, None, None)
    await asyncio.wait_for(waiting, 2)
    assert len(h.workers) == 2 and not h.workers[1].has_exited


async def test_the_monitor_never_kills_a_worker_being_stopped() -> None:
    h = Harness()
    h.scheduler.start()
    try:
        await h.scheduler.load(model("a"), None, 10)
        (worker,) = h.workers
        worker.stop_gate.clear()
        await h.scheduler.unload("a:latest")
        worker.problem = "no answer"  # a stopping worker stops answering
        await asyncio.sleep(0.1)  # several monitor rounds
        assert not worker.killed
        # A live one that stops answering is killed.
        await h.scheduler.load(model("b"), None, 10)
        (other,) = h.workers_of("b")
        other.problem = "no answer"
        await eventually(lambda: other.killed)
        worker.stop_gate.set()
    finally:
        await h.scheduler.close()


async def test_keep_alive_of_a_later_request_wins_over_an_unload() -> None:
    h = Harness()
    async with h.scheduler.use(model("a"), None, 10):
        await h.scheduler.unload("a:latest")
        async with h.scheduler.use(model("a"), 30.0, 10):
            pass  # attached after the unload: its keep_alive is the model's now
    await asyncio.sleep(0.02)
    assert [r.name for r in h.scheduler.loaded()] == ["a:latest"]


async def test_idle_least_recently_used_is_evicted_at_the_model_limit() -> None:
    h = Harness(max_loaded_models=2)
    for name in ("a", "b"):
        await h.scheduler.load(model(name), None, 10)
    await h.scheduler.load(model("a"), None, 10)  # a is now the more recent
    await h.scheduler.load(model("c"), None, 10)
    await eventually(lambda: h.workers_of("b")[0].has_exited)
    assert sorted(r.name for r in h.scheduler.loaded()) == ["a:latest", "c:latest"]


async def test_a_recreated_model_retires_the_old_worker_after_its_requests() -> None:
    h = Harness()
    async with h.scheduler.use(model("a", "d1"), None, 10):
        await h.scheduler.load(model("a", "d2"), None, 10)
        old, new = h.workers
        assert not old.stopping  # its request still runs
    await eventually(lambda: old.has_exited)
    assert not new.has_exited


async def test_a_full_queue_is_a_503() -> None:
    h = Harness(max_queue=1)
    h.next_setup.append(lambda w: w.ready.clear())
    first = asyncio.ensure_future(h.scheduler.load(model("a"), None, 10))
    await eventually(lambda: h.workers)
    with pytest.raises(StatusError) as refused:
        await h.scheduler.load(model("a"), None, 10)
    assert refused.value.status == 503
    h.workers[0].ready.set()
    await asyncio.wait_for(first, 2)


async def test_a_reservation_evicts_idle_models_least_recently_used_first() -> None:
    h = Harness(memory_budget=1000)
    for name in ("a", "b"):
        await h.scheduler.load(model(name), None, 100)
    async with h.scheduler.reserve("the job", 850):
        (a,), (b,) = h.workers_of("a"), h.workers_of("b")
        await eventually(lambda: a.has_exited)
        assert not b.has_exited
        # The held bytes count for loads too: a third model needs b's room.
        await asyncio.wait_for(h.scheduler.load(model("c"), None, 100), 2)
        await eventually(lambda: b.has_exited)
    assert [r.name for r in h.scheduler.loaded()] == ["c:latest"]


async def test_a_reservation_waits_for_a_busy_model_to_finish() -> None:
    h = Harness(memory_budget=150)
    held: list[str] = []

    async def job() -> None:
        async with h.scheduler.reserve("the job", 100) as reservation:
            held.append(reservation.name)

    async with h.scheduler.use(model("a"), None, 100):
        task = asyncio.ensure_future(job())
        await asyncio.sleep(0.05)
        assert not task.done() and not h.workers[0].stopping  # a serves a request
    await asyncio.wait_for(task, 2)  # idle now: evicted, then the job runs
    assert held == ["the job"] and h.workers[0].has_exited


async def test_held_memory_delays_a_load_until_released() -> None:
    h = Harness(memory_budget=150)
    async with h.scheduler.reserve("the job", 100):
        loading = asyncio.ensure_future(h.scheduler.load(model("a"), None, 100))
        await asyncio.sleep(0.05)
        assert not loading.done() and not h.workers
    await asyncio.wait_for(loading, 2)
    assert len(h.workers_of("a")) == 1


async def test_a_reservation_larger_than_the_budget_is_refused_at_once() -> None:
    h = Harness(memory_budget=1000)
    await h.scheduler.load(model("a"), None, 100)
    with pytest.raises(StatusError) as refused:
        async with h.scheduler.reserve("the job", 3000):
            pass
    assert refused.value.status == 400
    assert refused.value.message == (
        "the job needs about 2.9 KiB of memory but the memory budget is 1000 B"
        " (OLLMLX_MEMORY_BUDGET)"
    )
    assert not h.workers[0].stopping  # nothing was evicted for it


async def test_a_cancelled_wait_for_memory_holds_nothing() -> None:
    h = Harness(memory_budget=150)
    async with h.scheduler.use(model("a"), None, 100):
        waiting = asyncio.ensure_future(h.scheduler.reserve("the job", 100).__aenter__())
        await asyncio.sleep(0.02)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    await asyncio.wait_for(h.scheduler.load(model("b"), None, 40), 2)  # room is all free
    assert not h.workers_of("a")[0].stopping


async def test_a_smaller_reservation_lets_a_waiting_load_in() -> None:
    h = Harness(memory_budget=150)
    async with h.scheduler.reserve("the job", 100) as held:
        loading = asyncio.ensure_future(h.scheduler.load(model("a"), None, 100))
        await asyncio.sleep(0.05)
        assert not loading.done()
        await h.scheduler.resize(held, 40)  # the job's own, better estimate
        await asyncio.wait_for(loading, 2)
        assert held.size == 40


async def test_a_larger_reservation_evicts_idle_models_without_waiting() -> None:
    h = Harness(memory_budget=300)
    for name in ("a", "b"):
        await h.scheduler.load(model(name), None, 100)
    async with h.scheduler.use(model("b"), None, 100):  # b is busy: it stays
        async with h.scheduler.reserve("the job", 50) as held:
            await asyncio.wait_for(h.scheduler.resize(held, 250), 1)
            (a,), (b,) = h.workers_of("a"), h.workers_of("b")
            await eventually(lambda: a.has_exited)
            assert not b.stopping  # over budget until b's request ends; nothing waits
