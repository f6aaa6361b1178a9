"""Which worker serves a request, when one starts and when one goes: decided here only.

One table of runner states guarded by one condition. Named steps each make one decision,
after Ollama's server/sched.go: `_get_runner`, `_find_runner_to_unload`, `_release`,
`_unload`. Dependencies come in through `spawn`, so tests can swap the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ..config import Settings
from ..errors import StatusError
from ..store.catalog import StoredModel
from .runner import WorkerProcess, WorkerSpec

log = logging.getLogger("ollmlx.scheduler")

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"


@dataclass(eq=False)
class RunnerRef:
    model: StoredModel
    worker: WorkerProcess
    estimate: int
    slots: asyncio.Semaphore
    ready: asyncio.Future[None] | None = None
    ref_count: int = 0
    keep_alive: float = 300.0
    expires_at: float = math.inf  # time.time() when it unloads; inf while busy or forever
    expiry: asyncio.TimerHandle | None = None
    last_used: float = field(default_factory=time.monotonic)
    watcher: asyncio.Task[None] | None = None

    @property
    def memory_bytes(self) -> int:
        return self.worker.memory_bytes or self.estimate

    @property
    def loaded(self) -> bool:
        return self.ready is not None and self.ready.done() and not self.ready.exception()


@dataclass
class StartFailure:
    """A model whose worker failed to start: no new spawn before `retry_at`."""

    digest: str
    count: int
    retry_at: float
    error: str


MAX_START_BACKOFF = 30.0


@dataclass
class Lease:
    worker: WorkerProcess
    load_duration: int  # nanoseconds spent waiting for the model to load


class Scheduler:
    def __init__(self, settings: Settings, spawn: Callable[[WorkerSpec], WorkerProcess]) -> None:
        self._settings = settings
        self._spawn = spawn
        self._runners: dict[str, RunnerRef] = {}
        self._changed = asyncio.Condition()
        self._pending = 0
        self._closing = False
        self._failures: dict[str, StartFailure] = {}
        self._monitor: asyncio.Task[None] | None = None

    # -- public ------------------------------------------------------------------

    def start(self) -> None:
        """Start the health monitor (needs the running loop)."""
        self._monitor = asyncio.ensure_future(self._monitor_health())

    @contextlib.asynccontextmanager
    async def use(
        self, model: StoredModel, keep_alive: float | None, estimate: int
    ) -> AsyncIterator[Lease]:
        """Hold a loaded worker for one request; queue when all its slots are busy."""
        keep = self._settings.keep_alive if keep_alive is None else keep_alive
        if self._pending >= self._settings.max_queue:
            raise StatusError(QUEUE_FULL, 503)
        self._pending += 1
        started = time.perf_counter_ns()
        try:
            ref = await self._get_runner(model, estimate)
            try:
                await self._wait_ready(ref)
                if ref.slots.locked():
                    log.debug(
                        "request for %s waits for a free slot (%d pending)",
                        model.name.display,
                        self._pending,
                    )
                await ref.slots.acquire()
            except BaseException:
                await self._release(ref, keep, holds_slot=False)
                raise
        finally:
            self._pending -= 1
        try:
            yield Lease(ref.worker, time.perf_counter_ns() - started)
        finally:
            await self._release(ref, keep, holds_slot=True)

    async def load(self, model: StoredModel, keep_alive: float | None, estimate: int) -> int:
        """Load without generating (empty prompt); return the load time in nanoseconds."""
        async with self.use(model, keep_alive, estimate) as lease:
            return lease.load_duration

    async def unload(self, name: str) -> bool:
        async with self._changed:
            ref = self._runners.get(name)
        if ref is None:
            return False
        await self._unload(ref, "requested")
        return True

    def loaded(self) -> list[RunnerRef]:
        """Loaded runners, longest remaining time first (as /api/ps orders them)."""
        refs = [r for r in self._runners.values() if r.loaded]
        return sorted(refs, key=lambda r: r.expires_at, reverse=True)

    async def close(self) -> None:
        self._closing = True
        if self._monitor is not None:
            self._monitor.cancel()
        refs = list(self._runners.values())
        log.info("shutting down: stopping %d worker(s)", len(refs))
        await asyncio.gather(*(self._unload(r, "shutdown") for r in refs))

    # -- decisions ---------------------------------------------------------------

    async def _get_runner(self, model: StoredModel, estimate: int) -> RunnerRef:
        name = model.name.display
        async with self._changed:
            while True:
                ref = self._runners.get(name)
                if ref is not None and ref.worker.has_exited and ref.loaded:
                    self._forget(ref)  # died before its watcher ran: start a new one
                    ref = None
                if ref is not None and ref.model.digest != model.digest:
                    if ref.ref_count == 0:  # the model was re-created: reload it
                        await self._stop_locked(ref, "model changed")
                        continue
                    await self._changed.wait()
                    continue
                if ref is not None:
                    break
                if estimate > self._settings.memory_budget:
                    raise StatusError(
                        f"model {name} needs about {_size(estimate)} but the memory budget is "
                        f"{_size(self._settings.memory_budget)} (OLLMLX_MEMORY_BUDGET)"
                    )
                self._check_start_backoff(model)
                victim = self._find_runner_to_unload(estimate)
                if victim is None:
                    ref = self._start(model, estimate)
                    break
                if victim.ref_count == 0:
                    await self._stop_locked(victim, "evicted to make room")
                    continue
                log.info("waiting for a busy model to finish before loading %s", name)
                await self._changed.wait()
            ref.ref_count += 1
            self._disarm(ref)
            return ref

    def _find_runner_to_unload(self, estimate: int) -> RunnerRef | None:
        """None when the new model fits; else the runner to evict (idle LRU first)."""
        refs = list(self._runners.values())
        used = sum(r.memory_bytes for r in refs)
        fits_count = len(refs) < self._settings.max_loaded_models
        if fits_count and used + estimate <= self._settings.memory_budget:
            return None
        idle = sorted((r for r in refs if r.ref_count == 0), key=lambda r: r.last_used)
        if idle:
            return idle[0]
        return min(refs, key=lambda r: r.last_used) if refs else None

    def _start(self, model: StoredModel, estimate: int) -> RunnerRef:
        spec = WorkerSpec(model.name.display, model.model_dir, model.adapter_dir)
        worker = self._spawn(spec)
        ref = RunnerRef(model, worker, estimate, asyncio.Semaphore(self._settings.num_parallel))
        ref.ready = asyncio.ensure_future(self._load_worker(ref))
        self._runners[spec.name] = ref
        return ref

    def _check_start_backoff(self, model: StoredModel) -> None:
        """A model whose worker keeps failing is not respawned in a tight loop."""
        failure = self._failures.get(model.name.display)
        if failure is None or failure.digest != model.digest:
            return
        wait = failure.retry_at - time.monotonic()
        if wait > 0:
            raise StatusError(f"{failure.error} (next start attempt in {wait:.1f}s)")

    async def _load_worker(self, ref: RunnerRef) -> None:
        name = ref.model.name.display
        try:
            await ref.worker.start()
            await ref.worker.wait_until_ready()
        except BaseException as exc:
            await ref.worker.stop()
            async with self._changed:
                self._forget(ref)
                previous = self._failures.get(name)
                count = previous.count + 1 if previous else 1
                backoff = min(2.0 ** (count - 1), MAX_START_BACKOFF)
                self._failures[name] = StartFailure(
                    ref.model.digest, count, time.monotonic() + backoff, str(exc)
                )
                log.warning("worker for %s failed to start (%d in a row): %s", name, count, exc)
                self._changed.notify_all()
            raise
        self._failures.pop(name, None)
        ref.watcher = asyncio.ensure_future(self._watch_exit(ref))

    async def _watch_exit(self, ref: RunnerRef) -> None:
        """Notice a worker that dies on its own (crash, OOM kill) and forget it."""
        code = await ref.worker.wait_exit()
        async with self._changed:
            if self._runners.get(ref.model.name.display) is not ref:
                return  # stopped by us
            tail = ref.worker.stderr_tail.splitlines()[-3:]
            log.warning(
                "worker pid=%s for %s exited unexpectedly with code %s%s",
                ref.worker.pid,
                ref.model.name.display,
                code,
                (": " + " | ".join(tail)) if tail else "",
            )
            self._forget(ref)
            self._disarm(ref)
            self._changed.notify_all()

    async def _monitor_health(self) -> None:
        """Kill workers that stop answering (hung, or SIGSTOPped); the watcher forgets them."""
        interval, timeout = self._settings.health_interval, self._settings.health_timeout
        while True:
            await asyncio.sleep(interval)
            refs = [r for r in self._runners.values() if r.loaded and not r.worker.has_exited]
            answers = await asyncio.gather(*(r.worker.is_responsive(timeout) for r in refs))
            for ref, responsive in zip(refs, answers, strict=True):
                if not responsive and not ref.worker.has_exited:
                    log.warning(
                        "worker pid=%s for %s did not answer its health check within %gs; "
                        "killing it",
                        ref.worker.pid,
                        ref.model.name.display,
                        timeout,
                    )
                    ref.worker.kill()

    async def _wait_ready(self, ref: RunnerRef) -> None:
        assert ref.ready is not None
        # Shielded: a client that leaves does not abort a load that others may share.
        await asyncio.shield(ref.ready)
        if ref.worker.has_exited:
            raise StatusError(f"model runner for {ref.model.name.display} exited")

    async def _release(self, ref: RunnerRef, keep_alive: float, holds_slot: bool) -> None:
        if holds_slot:
            ref.slots.release()
        async with self._changed:
            ref.ref_count -= 1
            ref.last_used = time.monotonic()
            ref.keep_alive = keep_alive
            if ref.ref_count == 0 and self._runners.get(ref.model.name.display) is ref:
                self._arm(ref)
            self._changed.notify_all()

    def _arm(self, ref: RunnerRef) -> None:
        """Start the expiry timer: the model's last request has ended."""
        if ref.keep_alive < 0:
            ref.expires_at = math.inf
            return
        ref.expires_at = time.time() + ref.keep_alive
        loop = asyncio.get_running_loop()
        ref.expiry = loop.call_later(
            ref.keep_alive, lambda: asyncio.ensure_future(self._expire(ref))
        )

    def _disarm(self, ref: RunnerRef) -> None:
        if ref.expiry is not None:
            ref.expiry.cancel()
            ref.expiry = None
        ref.expires_at = math.inf

    async def _expire(self, ref: RunnerRef) -> None:
        if ref.ref_count == 0:
            await self._unload(ref, f"keep_alive {ref.keep_alive:g}s expired")

    async def _unload(self, ref: RunnerRef, reason: str) -> None:
        async with self._changed:
            if self._runners.get(ref.model.name.display) is not ref:
                return
            await self._stop_locked(ref, reason)

    async def _stop_locked(self, ref: RunnerRef, reason: str) -> None:
        log.info("unloading %s: %s", ref.model.name.display, reason)
        self._forget(ref)
        self._disarm(ref)
        await ref.worker.stop()
        self._changed.notify_all()

    def _forget(self, ref: RunnerRef) -> None:
        if self._runners.get(ref.model.name.display) is ref:
            del self._runners[ref.model.name.display]


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
